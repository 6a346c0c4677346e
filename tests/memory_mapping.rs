//! The page mapper and the heap window's page source in a booted kernel: map, write, read back,
//! unmap, frames and page tables come back; typed errors for double map and unmapped unmap; the
//! heap window is reserved, its pages are writable but never executable.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use kernel::memory::bench_support::{map_scratch, nth_scratch_page, unmap_scratch};
use kernel::memory::{self, KernelPageSource, MapError, UnmapError};
use kheap::source::{PAGE_SIZE, PageSource, PageSourceError};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

kernel::test_kernel!();

const RW_NX: PageTableFlags = PageTableFlags::WRITABLE.union(PageTableFlags::NO_EXECUTE);

#[kernel::test]
fn map_write_read_unmap_gives_everything_back() {
    let before = memory::stats();
    let frame = memory::allocate_frame().expect("a frame");
    let page = nth_scratch_page(5).expect("scratch page");
    // SAFETY: a fresh frame at a scratch page nothing else uses.
    unsafe { memory::map(page, frame, RW_NX) }.expect("map");
    let ptr = page.start_address().as_mut_ptr::<u64>();
    for i in 0..512 {
        // SAFETY: the page is mapped writable and ours.
        unsafe { ptr.add(i).write_volatile(i as u64 * 3) };
    }
    assert_eq!(
        memory::translate(page.start_address() + 8u64),
        Some(frame.start_address() + 8u64)
    );
    // The same bytes through the physical-memory mapping.
    let phys = memory::physical_memory_offset().unwrap() + frame.start_address().as_u64();
    // SAFETY: the frame is mapped twice now, both ours; reading is fine.
    assert_eq!(unsafe { phys.as_ptr::<u64>().add(7).read_volatile() }, 21);
    for i in 0..512 {
        // SAFETY: as above.
        assert_eq!(unsafe { ptr.add(i).read_volatile() }, i as u64 * 3);
    }
    // SAFETY: no reference into the page is kept.
    let back = unsafe { memory::unmap(page) }.expect("unmap");
    assert_eq!(back, frame);
    assert_eq!(memory::translate(page.start_address()), None);
    // SAFETY: the frame is unused again.
    unsafe { memory::deallocate_frame(back) };
    assert_eq!(
        memory::stats(),
        before,
        "frames and page tables all came back"
    );
}

#[kernel::test]
fn map_again_reuses_frame_and_address() {
    let before = memory::stats();
    let page = map_scratch(9).expect("map");
    let first = memory::translate(page.start_address()).unwrap();
    // SAFETY: nothing refers to the page.
    unsafe { unmap_scratch(9) }.expect("unmap");
    let again = map_scratch(9).expect("map again");
    assert_eq!(again, page);
    assert_eq!(
        memory::translate(page.start_address()),
        Some(first),
        "the freed frame is reused"
    );
    // SAFETY: as above.
    unsafe { unmap_scratch(9) }.expect("unmap");
    assert_eq!(memory::stats(), before);
}

#[kernel::test]
fn double_map_is_a_typed_error() {
    let page = map_scratch(1).expect("map");
    let mapped_to = memory::translate(page.start_address()).unwrap();
    let other = memory::allocate_frame().expect("a frame");
    // SAFETY: must fail without mapping anything.
    let result = unsafe { memory::map(page, other, RW_NX) };
    match result {
        Err(MapError::AlreadyMapped { page: p, frame }) => {
            assert_eq!(p, page);
            assert_eq!(frame.start_address(), mapped_to);
        }
        other => panic!("expected AlreadyMapped, got {other:?}"),
    }
    // SAFETY: the frame was never mapped; the page is not referenced.
    unsafe {
        memory::deallocate_frame(other);
        unmap_scratch(1).expect("unmap");
    }
}

#[kernel::test]
fn unmapping_an_unmapped_page_is_a_typed_error() {
    let page = nth_scratch_page(77).unwrap();
    // SAFETY: must fail without unmapping anything.
    let by_hand = unsafe { memory::unmap(page) };
    assert_eq!(by_hand, Err(UnmapError::NotMapped { page }));
    // SAFETY: as above.
    let scratch = unsafe { unmap_scratch(77) };
    assert_eq!(scratch, Err(UnmapError::NotMapped { page }));
}

#[kernel::test]
fn heap_window_and_guard_cannot_be_mapped_by_hand() {
    let frame = memory::allocate_frame().unwrap();
    for addr in [
        memory::HEAP_GUARD_PAGE,
        memory::HEAP_GUARD_START,
        memory::HEAP_WINDOW_START,
    ] {
        let page = Page::containing_address(VirtAddr::new(addr));
        // SAFETY: must be refused, mapping nothing.
        let mapped = unsafe { memory::map(page, frame, RW_NX) };
        assert_eq!(mapped, Err(MapError::ReservedRange));
        // SAFETY: must be refused, unmapping nothing.
        let unmapped = unsafe { memory::unmap(page) };
        assert_eq!(unmapped, Err(UnmapError::ReservedRange));
    }
    // SAFETY: never mapped.
    unsafe { memory::deallocate_frame(frame) };
}

#[kernel::test]
fn kernel_code_and_stack_translate() {
    let code = kernel::init as *const () as u64;
    assert!(memory::translate(VirtAddr::new(code)).is_some());
    let local = 7u64;
    let stack = core::ptr::addr_of!(local) as u64;
    assert!(memory::translate(VirtAddr::new(stack)).is_some());
}

#[kernel::test]
fn page_source_maps_aligned_writable_runs_and_takes_sub_runs_back() {
    memory::release_spare_pages();
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    let ptr = source.map_pages(3).expect("3 pages");
    let addr = ptr.as_ptr() as u64;
    assert!((memory::HEAP_WINDOW_START..memory::HEAP_WINDOW_END).contains(&addr));
    assert_eq!(
        addr % (4 * PAGE_SIZE as u64),
        0,
        "aligned to the next power of two"
    );
    let after = memory::stats();
    assert_eq!(after.window_pages_mapped, before.window_pages_mapped + 3);
    assert!(after.frames_free <= before.frames_free - 3);
    // SAFETY: 3 pages mapped writable for us.
    unsafe {
        core::ptr::write_bytes(ptr.as_ptr(), 0xA5, 3 * PAGE_SIZE);
        assert_eq!(ptr.as_ptr().add(3 * PAGE_SIZE - 1).read_volatile(), 0xA5);
    }
    // Middle page first, then head and tail. A page given back becomes a spare of the window
    // (still mapped, not the heap's) until the spares are released.
    let spares = memory::stats().window_pages_spare;
    // SAFETY: sub-runs of the mapping above, not referenced any more.
    unsafe {
        source.unmap_pages(ptr.add(PAGE_SIZE), 1);
        assert_eq!(memory::stats().window_pages_spare, spares + 1);
        memory::release_spare_pages();
        assert_eq!(memory::translate(VirtAddr::new(addr + 4096)), None);
        assert!(memory::translate(VirtAddr::new(addr)).is_some());
        source.unmap_pages(ptr, 1);
        source.unmap_pages(ptr.add(2 * PAGE_SIZE), 1);
    }
    memory::release_spare_pages();
    memory::check_invariants();
    assert_eq!(memory::stats(), before);
    memory::check_invariants();
}

#[kernel::test]
fn page_source_window_is_the_heap_window_and_holds_its_pages() {
    let mut source = KernelPageSource::new();
    let window = source
        .window()
        .expect("the kernel's page source has a window");
    assert_eq!(
        window.cast::<u8>().as_ptr() as u64,
        memory::HEAP_WINDOW_START
    );
    assert_eq!(
        window.len() as u64,
        memory::HEAP_WINDOW_END - memory::HEAP_WINDOW_START
    );
    let run = source.map_pages(2).unwrap();
    let offset = run.as_ptr() as u64 - memory::HEAP_WINDOW_START;
    assert!(offset + 2 * PAGE_SIZE as u64 <= window.len() as u64);
    // SAFETY: the run above, unreferenced.
    unsafe { source.unmap_pages(run, 2) };
}

#[kernel::test]
fn page_source_grows_runs_in_place_when_the_next_pages_are_free() {
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    // Keep 3 pages of a 16-page run: the 13 after them are the heap's no more. They wait to be
    // unmapped (a lazy unmap), and the growth over them unmaps them first.
    let run = source.map_pages(16).unwrap();
    // SAFETY: a sub-run of the mapping above, unreferenced.
    unsafe { source.unmap_pages(run.add(3 * PAGE_SIZE), 13) };
    assert_eq!(
        memory::stats().window_pages_lazy,
        before.window_pages_lazy + 13
    );
    assert!(source.grow_pages(run, 3, 1));
    assert_eq!(memory::stats().window_pages_lazy, before.window_pages_lazy);
    assert!(source.grow_pages(run, 4, 4));
    assert!(source.grow_pages(run, 8, 2));
    assert_eq!(
        memory::stats().window_pages_mapped,
        before.window_pages_mapped + 10
    );
    // SAFETY: 10 pages mapped writable for us (3 + 1 + 4 + 2).
    unsafe {
        core::ptr::write_bytes(run.as_ptr(), 0x5A, 10 * PAGE_SIZE);
        assert_eq!(run.as_ptr().add(10 * PAGE_SIZE - 1).read_volatile(), 0x5A);
        // Give page 8 back: page 9, still mapped, now blocks growing past one page.
        source.unmap_pages(run.add(8 * PAGE_SIZE), 1);
    }
    let blocked = memory::stats();
    assert!(!source.grow_pages(run, 8, 2));
    // Not a run of the window, or past its end: refused, not a panic.
    assert!(!source.grow_pages(core::ptr::NonNull::dangling(), 1, 1));
    let last_page = memory::HEAP_WINDOW_END - PAGE_SIZE as u64;
    let last_page = core::ptr::NonNull::new(last_page as *mut u8).unwrap();
    assert!(!source.grow_pages(last_page, 1, 1));
    assert_eq!(memory::stats(), blocked);
    assert!(source.grow_pages(run, 8, 1));
    // SAFETY: the 10 pages above, unreferenced; the grown run is unmapped as one (lazily:
    // finished here).
    unsafe { source.unmap_pages(run, 10) };
    memory::finish_unmaps();
    assert_eq!(memory::stats(), before);
    memory::check_invariants();
}

#[kernel::test]
fn page_source_reuses_freed_address_space() {
    let mut source = KernelPageSource::new();
    // Longer than the runs an unmap keeps as spares: really unmapped, once the lazy unmap is
    // finished.
    let pages = 2 * memory::spare_pages::ABSORB_MAX;
    let a = source.map_pages(pages).unwrap();
    // SAFETY: the run above, unreferenced.
    unsafe { source.unmap_pages(a, pages) };
    assert!(memory::unmaps_waiting());
    assert_eq!(memory::finish_unmaps(), pages);
    assert!(!memory::unmaps_waiting());
    let b = source.map_pages(pages).unwrap();
    assert_eq!(a, b);
    // SAFETY: as above.
    unsafe { source.unmap_pages(b, pages) };
}

#[kernel::test]
fn page_source_rejects_bad_requests() {
    let mut source = KernelPageSource::new();
    assert_eq!(source.map_pages(0), Err(PageSourceError::InvalidRequest));
    assert_eq!(
        source.map_pages(memory::HEAP_WINDOW_PAGES + 1),
        Err(PageSourceError::OutOfAddressSpace)
    );
    assert_eq!(
        source.map_pages(usize::MAX),
        Err(PageSourceError::InvalidRequest)
    );
}

#[kernel::test]
fn page_source_reports_a_full_window_as_out_of_address_space() {
    memory::release_spare_pages();
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    // With any page of the window in use, no run of the whole window is free (the request is
    // checked against the window before frames are counted, so this needs no RAM).
    let one = source.map_pages(1).unwrap();
    assert_eq!(
        source.map_pages(memory::HEAP_WINDOW_PAGES),
        Err(PageSourceError::OutOfAddressSpace)
    );
    // Half the window is free as one run, but there is not that much RAM.
    let half = memory::HEAP_WINDOW_PAGES / 2;
    assert!(memory::stats().frames_free < half as u64);
    assert_eq!(source.map_pages(half), Err(PageSourceError::OutOfMemory));
    assert_eq!(
        memory::stats().window_pages_spare,
        0,
        "the spares were released before the window gave up"
    );
    // SAFETY: the page above, unreferenced.
    unsafe { source.unmap_pages(one, 1) };
    memory::release_spare_pages();
    assert_eq!(memory::stats(), before);
}

fn execute_heap_page() {
    let mut source = KernelPageSource::new();
    let ptr = source.map_pages(1).expect("a page");
    // SAFETY: not sound on purpose: `ret` written to a NO_EXECUTE page and called must fault
    // with an instruction-fetch page fault.
    unsafe {
        ptr.as_ptr().write_volatile(0xC3);
        let f: extern "C" fn() = core::mem::transmute(ptr.as_ptr());
        f();
    }
}

#[kernel::test]
#[should_panic(expected = "INSTRUCTION_FETCH")]
fn heap_pages_are_not_executable() {
    execute_heap_page();
}
