//! Red zones and poisoning of the global allocator (`kheap::Checked`, on with the kernel's
//! default `debug-checks` feature): a one-byte overflow and a write after free are reported with
//! the block's address, for every path of the heap (a class block, a large-allocator block, a
//! page run) and across `realloc`; fresh blocks carry a recognisable fill; a free in a chunk the
//! heap has unmapped gets the heap's message, not a page fault.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc, realloc};
use core::alloc::Layout;
use core::hint::black_box;

use kernel::allocator;

kernel::test_kernel!();

#[kernel::test]
fn fresh_blocks_are_filled_with_the_fresh_pattern() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: valid layout; the block is read within its size and freed with its layout. The
    // pointer goes through `black_box`: the compiler knows fresh allocations are uninitialised
    // and would otherwise treat reading the debug fill as undefined.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        assert!((0..100).all(|i| p.add(i).read() == kheap::checked::FRESH));
        dealloc(p, layout);
    }
}

/// Allocates `size` bytes, writes one byte past them, and frees the block.
fn overflow_by_one_byte(size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: deliberately not sound: writes one byte past the block (into the red zone, which
    // the debug layout allocated), then frees it so the check runs.
    // `black_box` and a volatile write keep the compiler from deleting the out-of-bounds write.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        p.add(size).write_volatile(0x42);
        dealloc(p, layout);
    }
}

// A class block (24 bytes, padded to the 40-byte class).
#[kernel::test]
#[should_panic(expected = "heap overflow")]
fn one_byte_overflow_is_reported() {
    overflow_by_one_byte(24);
}

// A mid size that the size classes' waste rule sends to the large allocator (146 with its red
// zone).
#[kernel::test]
#[should_panic(expected = "1 past the end of the 130-byte block")]
fn overflow_of_a_mid_size_large_block_is_reported() {
    overflow_by_one_byte(130);
}

// A block of a large-allocator region.
#[kernel::test]
#[should_panic(expected = "1 past the end of the 5000-byte block")]
fn overflow_of_a_region_block_is_reported() {
    overflow_by_one_byte(5000);
}

// A page run.
#[kernel::test]
#[should_panic(expected = "1 past the end of the 70000-byte block")]
fn overflow_of_a_page_run_is_reported() {
    overflow_by_one_byte(70_000);
}

/// Allocates `old` bytes, overflows them by one byte, then resizes the block to `new` bytes.
fn overflow_then_realloc(old: usize, new: usize) {
    let layout = Layout::from_size_align(old, 8).unwrap();
    // SAFETY: deliberately not sound, as in `overflow_by_one_byte`; the resize runs the check.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        p.add(old).write_volatile(0x42);
        let q = realloc(p, layout, new);
        dealloc(q, Layout::from_size_align(new, 8).unwrap());
    }
}

/// Allocates `old` bytes, resizes the block to `new` bytes (checking whether that happened in
/// place), overflows the result by one byte and frees it.
fn realloc_then_overflow(old: usize, new: usize, in_place: bool) {
    let layout = Layout::from_size_align(old, 8).unwrap();
    // SAFETY: deliberately not sound, as in `overflow_by_one_byte`; the free runs the check.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        let q = black_box(realloc(p, layout, new));
        assert!(!q.is_null());
        assert_eq!(q == p, in_place, "realloc {old} -> {new}: in place?");
        q.add(new).write_volatile(0x42);
        dealloc(q, Layout::from_size_align(new, 8).unwrap());
    }
}

// Growing a region block into a page run: the old block's red zone is checked first.
#[kernel::test]
#[should_panic(expected = "1 past the end of the 5000-byte block")]
fn overflow_before_a_growing_realloc_is_reported() {
    overflow_then_realloc(5000, 70_000);
}

// A page run shrunk in place (its tail pages unmapped) gets a red zone after its new size.
#[kernel::test]
#[should_panic(expected = "1 past the end of the 66000-byte block")]
fn overflow_after_a_shrinking_realloc_is_reported() {
    realloc_then_overflow(70_000, 66_000, true);
}

// A class block moved to a region block.
#[kernel::test]
#[should_panic(expected = "1 past the end of the 5000-byte block")]
fn overflow_after_a_moving_realloc_is_reported() {
    realloc_then_overflow(24, 5000, false);
}

/// Frees a block a second time after the heap gave its chunk back to the page source: the
/// red-zone layer must let the heap vet the pointer before it reads the (unmapped) red zone.
fn free_in_an_unmapped_chunk() {
    // 4080 bytes and the red zone fill a 4096-byte class block: a chunk of its own.
    let layout = Layout::from_size_align(4080, 8).unwrap();
    // SAFETY: valid layout; freed once, then (deliberately wrong) once more after its chunk is
    // unmapped.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        dealloc(p, layout);
        allocator::trim();
        dealloc(black_box(p), layout);
    }
}

#[kernel::test]
#[should_panic(expected = "which is not a heap block")]
fn free_in_an_unmapped_chunk_gets_the_heaps_message() {
    free_in_an_unmapped_chunk();
}

fn write_after_free() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: deliberately not sound: writes into a freed block. The block stays mapped (the
    // heap caches it), and the next allocation of the same class hands it out again.
    // `black_box` and a volatile write keep the compiler from deleting the write after free.
    unsafe {
        let p = black_box(alloc(layout));
        dealloc(p, layout);
        black_box(p).add(40).write_volatile(0x42);
        let q = black_box(alloc(layout));
        dealloc(q, layout);
    }
}

#[kernel::test]
#[should_panic(expected = "write after free")]
fn write_after_free_is_reported() {
    write_after_free();
}
