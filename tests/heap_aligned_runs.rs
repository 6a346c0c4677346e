//! Over-aligned requests on a small machine (32 MiB): a page run whose data must start at a
//! large alignment (up to 1 GiB) is placed by the heap window, which reserves the address range
//! and maps only the run's own pages. A few bytes at a 512 MiB alignment cost a header page and a
//! data page (plus the page tables and heap page-map nodes for a new part of the window), not the
//! 512 MiB of slack that an over-sized mapping would take, which this machine does not have.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use core::alloc::Layout;
use core::hint::black_box;

use kernel::allocator::{self, Footprint};
use kernel::memory;

kernel::qemu_args!("-m 32M");

kernel::test_kernel!();

/// Most frames an over-aligned run may take beyond its own pages. Its header page lies just
/// below an aligned line and its data just above, so with an alignment of 1 GiB or more it
/// straddles a 1 GiB line: on each side a heap page-map leaf and level-2 node, and a page table
/// and page directory for a part of the window never mapped before.
const BOOKKEEPING_FRAMES: u64 = 8;

/// Bytes the red-zone layer (`kheap::Checked`, with the default `debug-checks`) adds to each
/// request.
const RED_ZONE: usize = if cfg!(feature = "debug-checks") {
    kheap::checked::RED_ZONE
} else {
    0
};

/// Allocates `size` bytes aligned to `align`, checks the block (aligned, writable, a page run of
/// exactly its own pages, little memory used), frees it and checks that everything came back.
fn aligned_run(size: usize, align: usize) {
    allocator::trim();
    let before = allocator::footprint();
    let runs_before = allocator::stats().unwrap().pages.large;
    let layout = Layout::from_size_align(size, align).unwrap();
    // SAFETY: a valid layout; the block is written within its size and freed with it.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null(), "{size} bytes aligned to {align:#x} refused");
        assert_eq!(p.addr() % align, 0);
        p.write_bytes(0x5A, size);
        assert_eq!(p.add(size - 1).read_volatile(), 0x5A);

        let data_pages = (size + RED_ZONE).div_ceil(4096);
        let stats = allocator::stats().unwrap();
        assert_eq!(
            stats.pages.large - runs_before,
            1 + data_pages,
            "the run is a header page and its data pages"
        );
        let now = allocator::footprint();
        // Frames the window keeps as spares (a single-page map takes a batch) are not the
        // run's: `trim` gives them back below.
        let spares = memory::stats().window_pages_spare;
        let frames = before.free_frames - now.free_frames - spares;
        assert!(
            frames <= (1 + data_pages) as u64 + BOOKKEEPING_FRAMES,
            "{size} bytes aligned to {align:#x} took {frames} frames"
        );
        dealloc(p, layout);
    }
    allocator::trim();
    allocator::check_invariants();
    let after: Footprint = allocator::footprint();
    assert_eq!(after, before, "everything came back");
}

#[kernel::test]
fn eight_bytes_aligned_to_512_mib_take_two_pages() {
    aligned_run(8, 512 << 20);
}

#[kernel::test]
fn eight_bytes_aligned_to_1_gib_take_two_pages() {
    aligned_run(8, 1 << 30);
}

#[kernel::test]
fn a_few_pages_aligned_to_64_mib() {
    aligned_run(3 * 4096 + 1, 64 << 20);
}

#[kernel::test]
fn three_mib_aligned_to_4_mib() {
    aligned_run(3 << 20, 4 << 20);
}

/// Several over-aligned runs live at once, each on its own aligned line of the window.
#[kernel::test]
fn several_runs_aligned_to_64_mib_live_together() {
    allocator::trim();
    let before = allocator::footprint();
    let layout = Layout::from_size_align(100, 64 << 20).unwrap();
    let mut blocks = [core::ptr::null_mut::<u8>(); 8];
    // SAFETY: a valid layout; each block is written within its size and freed once with it.
    unsafe {
        for (i, b) in blocks.iter_mut().enumerate() {
            *b = black_box(alloc(layout));
            assert!(!b.is_null(), "run {i} refused");
            assert_eq!(b.addr() % (64 << 20), 0);
            b.write_bytes(i as u8, 100);
        }
        for (i, b) in blocks.iter().enumerate() {
            assert!((0..100).all(|j| b.add(j).read() == i as u8));
            dealloc(*b, layout);
        }
    }
    allocator::trim();
    allocator::check_invariants();
    assert_eq!(allocator::footprint(), before, "everything came back");
}
