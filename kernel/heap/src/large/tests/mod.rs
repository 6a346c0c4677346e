//! The large allocator's tests: unit tests of each path over [`ArenaSource`], and a randomized
//! workout against a failing source with every byte of every block checked.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::vec::Vec;

use super::bins::{BIN_LIMIT, FL_COUNT, FL_SHIFT, SL_COUNT, SL_LOG, bin_of, search_bin};
use super::block::{Block, GRANULE, GRANULE_LOG, HEADER, MIN_BLOCK, TAG_SHIFT, USED};
use super::region::{
    EXCESS_REGIONS, IDLE_LIMIT, MAX_REGION, REGION_FULL, REGION_HEADER, REGION_MIN,
};
use super::{LargeAlloc, LargeStats};
use crate::error::{AllocError, InvariantError};
use crate::source::{PAGE_SIZE, PageSourceError};
use crate::testing::{ArenaSource, XorShift64};

mod checks;
mod random;
mod regions;
mod runs;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn pattern_word(seed: u64, index: usize) -> u64 {
    (seed ^ index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17)
}

/// Fills `len` bytes at `ptr` with a pattern derived from `seed`.
fn fill(ptr: NonNull<u8>, len: usize, seed: u64) {
    // SAFETY: the tests call this only on usable bytes of a live allocation.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
    let (words, rest) = bytes.as_chunks_mut::<8>();
    for (i, word) in words.iter_mut().enumerate() {
        *word = pattern_word(seed, i).to_le_bytes();
    }
    let last = pattern_word(seed, len / 8).to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// Checks the pattern of [`fill`] on the first `len` bytes at `ptr`.
fn check(ptr: NonNull<u8>, len: usize, seed: u64) {
    // SAFETY: the tests call this only on usable bytes of a live allocation.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) };
    let (words, rest) = bytes.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let expected = pattern_word(seed, i).to_le_bytes();
        assert_eq!(
            *word,
            expected,
            "block {ptr:p} corrupted near byte {}",
            i * 8
        );
    }
    let last = pattern_word(seed, len / 8).to_le_bytes();
    assert_eq!(
        rest,
        &last[..rest.len()],
        "block {ptr:p} corrupted at its tail"
    );
}

/// Pages the allocator says it holds.
fn held_pages(stats: LargeStats) -> usize {
    stats.region_bytes / PAGE_SIZE + stats.page_run_pages
}

fn alloc(a: &mut LargeAlloc, src: &mut ArenaSource, size: usize, align: usize) -> NonNull<u8> {
    let ptr = a.allocate(src, layout(size, align)).unwrap();
    assert_eq!(ptr.addr().get() % align.max(GRANULE), 0);
    a.check_invariants().unwrap();
    ptr
}

fn free(a: &mut LargeAlloc, src: &mut ArenaSource, ptr: NonNull<u8>, size: usize, align: usize) {
    // SAFETY: the tests free only live allocations, with their layout.
    unsafe { a.deallocate(src, ptr, layout(size, align)) };
    a.check_invariants().unwrap();
}

/// The smallest block size that belongs in bin `(fl, sl)`.
fn bin_floor(fl: usize, sl: usize) -> usize {
    if fl == 0 {
        sl << GRANULE_LOG
    } else {
        let log = fl as u32 + FL_SHIFT - 1;
        (1 << log) + (sl << (log - SL_LOG))
    }
}

#[test]
fn fits_in_root_page_budget() {
    assert!(
        size_of::<LargeAlloc>() <= 1536,
        "{}",
        size_of::<LargeAlloc>()
    );
    assert_eq!(REGION_HEADER, 48);
    assert_eq!(MAX_REGION, 68 * 1024);
}

#[test]
fn bins_partition_sizes_and_search_finds_the_first_fitting_bin() {
    let step = if cfg!(miri) { 16 * 7 } else { GRANULE };
    let mut size = MIN_BLOCK;
    while size < BIN_LIMIT {
        let (fl, sl) = bin_of(size);
        assert!(fl < FL_COUNT && sl < SL_COUNT, "size {size}");
        assert!(bin_floor(fl, sl) <= size, "size {size} below its bin");
        let next = if sl + 1 < SL_COUNT {
            bin_floor(fl, sl + 1)
        } else {
            bin_floor(fl + 1, 0)
        };
        assert!(size < next, "size {size} above its bin");
        if let Some((fl, sl)) = search_bin(size) {
            assert!(
                bin_floor(fl, sl) >= size,
                "search for {size} gives a bin too small"
            );
            let (pfl, psl) = if sl > 0 {
                (fl, sl - 1)
            } else {
                (fl - 1, SL_COUNT - 1)
            };
            assert!(
                bin_floor(pfl, psl) < size,
                "search for {size} skips a fitting bin"
            );
        } else {
            assert!(size > bin_floor(FL_COUNT - 1, SL_COUNT - 1));
        }
        size += step;
    }
}
