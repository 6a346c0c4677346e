//! The kernel page source moves a heap-window run (`PageSource::remap_pages`) by moving its
//! page-table entries: the new run maps the old run's frames (plus fresh ones for the extra
//! pages), the old range is unmapped when the move is kept, nothing is lost when it is
//! abandoned, and pointers that are not mapped window runs are refused.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use core::ptr::NonNull;

use kernel::memory::{self, KernelPageSource};
use kheap::source::{PAGE_SIZE, PageSource};
use x86_64::{PhysAddr, VirtAddr};

kernel::test_kernel!();

/// The physical address of page `i` of the run at `p`, if it is mapped.
fn frame(p: NonNull<u8>, i: usize) -> Option<PhysAddr> {
    memory::translate(VirtAddr::new((p.as_ptr() as u64) + (i * PAGE_SIZE) as u64))
}

/// Writes a pattern (seeded by `seed`) over `pages` pages at `p`.
fn fill(p: NonNull<u8>, pages: usize, seed: u8) {
    for i in 0..pages * PAGE_SIZE / 8 {
        // SAFETY: the caller maps `pages` pages at `p`.
        unsafe {
            p.cast::<u64>()
                .add(i)
                .write_volatile(i as u64 ^ u64::from(seed))
        };
    }
}

/// Checks the pattern `fill` wrote.
fn check(p: NonNull<u8>, pages: usize, seed: u8) {
    for i in 0..pages * PAGE_SIZE / 8 {
        // SAFETY: the caller maps `pages` pages at `p`.
        let v = unsafe { p.cast::<u64>().add(i).read_volatile() };
        assert_eq!(
            v,
            i as u64 ^ u64::from(seed),
            "word {i} of the run at {p:p}"
        );
    }
}

#[kernel::test]
fn a_kept_move_gives_the_frames_to_the_new_run() {
    memory::release_spare_pages();
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    let old = source.map_pages(3).unwrap();
    fill(old, 3, 1);
    let frames = [0, 1, 2].map(|i| frame(old, i).unwrap());
    let new = source.remap_pages(old, 3, 5).expect("the window has room");
    assert_ne!(new, old);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(frame(new, i), Some(*f), "page {i} maps the old run's frame");
        assert_eq!(
            frame(old, i),
            Some(*f),
            "the old run stays until the move ends"
        );
    }
    assert!(frame(new, 3).is_some() && frame(new, 4).is_some());
    // SAFETY: the move started above; nothing was written since, and the old run is not
    // used after this.
    unsafe { source.finish_remap(old, 3, new, 5, true) };
    for i in 0..3 {
        assert_eq!(frame(old, i), None, "page {i} of the old range is unmapped");
    }
    check(new, 3, 1);
    fill(new, 5, 2);
    check(new, 5, 2);
    memory::check_invariants();
    // SAFETY: mapped by the kept move; not used afterwards.
    unsafe { source.unmap_pages(new, 5) };
    memory::check_invariants();
    // A short run given back becomes spares of the window.
    assert_eq!(memory::release_spare_pages(), 5);
    assert_eq!(
        memory::stats(),
        before,
        "every frame, table and window page came back"
    );
}

#[kernel::test]
fn an_abandoned_move_leaves_the_old_run_as_it_was() {
    memory::release_spare_pages();
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    let old = source.map_pages(4).unwrap();
    fill(old, 4, 3);
    let frames = [0, 1, 2, 3].map(|i| frame(old, i).unwrap());
    let new = source.remap_pages(old, 4, 9).unwrap();
    // SAFETY: the move started above; nothing was written since; the new run is not used.
    unsafe { source.finish_remap(old, 4, new, 9, false) };
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(frame(old, i), Some(*f));
    }
    for i in 0..9 {
        assert_eq!(
            frame(new, i),
            None,
            "page {i} of the abandoned run is unmapped"
        );
    }
    check(old, 4, 3);
    // SAFETY: mapped above; not used afterwards.
    unsafe { source.unmap_pages(old, 4) };
    memory::check_invariants();
    assert_eq!(memory::release_spare_pages(), 4);
    assert_eq!(memory::stats(), before);
}

#[kernel::test]
fn foreign_pointers_and_unmapped_pages_are_refused() {
    let mut source = KernelPageSource::new();
    let mut local = [0u64; 512];
    let stack = NonNull::from(&mut local).cast::<u8>();
    let aligned = NonNull::new(((stack.as_ptr() as usize) & !(PAGE_SIZE - 1)) as *mut u8).unwrap();
    // Four pages, the last two unmapped again: the run is two mapped pages followed by two
    // unmapped ones that nothing takes meanwhile.
    let run = source.map_pages(4).unwrap();
    // SAFETY: the last two pages of the run mapped above, not used.
    let after = unsafe { run.add(2 * PAGE_SIZE) };
    // SAFETY: as above.
    unsafe { source.unmap_pages(after, 2) };
    // They are spares of the window now: mapped, but not the heap's, so not a run to move.
    assert_eq!(source.remap_pages(after, 1, 2), None, "a spare page");
    assert_eq!(
        source.remap_pages(run, 3, 4),
        None,
        "a run over a spare page"
    );
    memory::release_spare_pages();
    let before = memory::stats();
    assert_eq!(source.remap_pages(aligned, 1, 2), None, "not a window page");
    // SAFETY: an address inside the run, one byte past its start: not page aligned.
    let inside = unsafe { run.add(1) };
    assert_eq!(source.remap_pages(inside, 1, 2), None, "not page aligned");
    assert_eq!(
        source.remap_pages(run, 2, 1),
        None,
        "shrinking is not a move"
    );
    assert_eq!(
        source.remap_pages(after, 1, 2),
        None,
        "an unmapped window page"
    );
    assert_eq!(
        source.remap_pages(run, 3, 4),
        None,
        "a run reaching past the mapping: its last page is not mapped"
    );
    assert_eq!(memory::stats(), before, "nothing changed");
    memory::check_invariants();
    // SAFETY: mapped above; not used afterwards.
    unsafe { source.unmap_pages(run, 2) };
}
