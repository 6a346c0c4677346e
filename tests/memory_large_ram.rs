//! Booting with 2 GiB of RAM: every frame can be allocated and given back, and a large heap-window
//! run spanning many page tables maps and unmaps cleanly.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::qemu_args!("-m 2G");

use kernel::memory::{self, KernelPageSource};
use kheap::source::{PAGE_SIZE, PageSource};
use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

kernel::test_kernel!();

#[kernel::test]
fn nearly_two_gib_are_usable() {
    let s = memory::stats();
    assert!(
        s.frames_total * 4096 > (2u64 << 30) - (64 << 20),
        "{} frames",
        s.frames_total
    );
    assert!(s.frames_total * 4096 <= 2u64 << 30);
    // One bit per frame up to 2 GiB: 64 KiB, 16 frames.
    assert!(
        (15..=17).contains(&s.bitmap_frames),
        "{} bitmap frames",
        s.bitmap_frames
    );
}

#[kernel::test]
fn every_frame_can_be_allocated_and_freed() {
    // The heap window's spare pages hold frames the allocator would release when it runs dry.
    memory::release_spare_pages();
    let start = memory::stats();
    let offset = memory::physical_memory_offset().unwrap();
    let mut head = 0u64;
    let mut count = 0u64;
    while let Some(frame) = memory::allocate_frame() {
        let addr = frame.start_address().as_u64();
        // SAFETY: the frame is ours, reached through the physical-memory mapping.
        unsafe { (offset + addr).as_mut_ptr::<u64>().write_volatile(head) };
        head = addr;
        count += 1;
    }
    assert_eq!(count, start.frames_free);
    while head != 0 {
        // SAFETY: as above.
        let next = unsafe { (offset + head).as_ptr::<u64>().read_volatile() };
        // SAFETY: the frame came from the allocator and is no longer used.
        unsafe { memory::deallocate_frame(PhysFrame::containing_address(PhysAddr::new(head))) };
        head = next;
    }
    assert_eq!(memory::stats(), start);
}

#[kernel::test]
fn a_256_mib_run_maps_and_unmaps() {
    let before = memory::stats();
    let pages = 65_536;
    let mut source = KernelPageSource::new();
    let ptr = source.map_pages(pages).expect("256 MiB");
    let mapped = memory::stats();
    assert_eq!(
        mapped.window_pages_mapped,
        before.window_pages_mapped + pages as u64
    );
    // 128 page tables + a page directory (its PDPT may already exist).
    let tables = mapped.page_table_frames - before.page_table_frames;
    assert!((128..=130).contains(&tables), "{tables} page-table frames");
    // Every one of them is linked and maps something.
    let audit = memory::page_table_audit();
    assert!(audit.is_exact(mapped.page_table_frames), "{audit}");
    for p in 0..pages {
        // SAFETY: mapped writable for us.
        unsafe {
            ptr.as_ptr()
                .add(p * PAGE_SIZE + p % PAGE_SIZE)
                .write_volatile(p as u8)
        };
    }
    for p in (0..pages).step_by(97) {
        // SAFETY: as above.
        let v = unsafe {
            ptr.as_ptr()
                .add(p * PAGE_SIZE + p % PAGE_SIZE)
                .read_volatile()
        };
        assert_eq!(v, p as u8);
    }
    // SAFETY: the run above, unreferenced.
    unsafe { source.unmap_pages(ptr, pages) };
    assert_eq!(memory::stats(), before);
}
