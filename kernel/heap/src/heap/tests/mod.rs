//! The heap's tests: the general classes, user pools, memory return and the retry after a
//! failure, sources without a window or placement, and (with `debug-checks`) invalid frees.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::vec::Vec;

use super::state::{HeapState, STATE_OFFSET};
use super::{FIRST_RUN_PAGES, Heap};
use crate::chunk::{DESC_SLOT, Geometry};
use crate::chunk_lists::ChunkLists;
use crate::error::{AllocError, PoolError};
use crate::large::LargeAlloc;
use crate::magazine::{ClassMagazines, MAG_BATCH, MAG_CAP, MagazineStore, POOL_MAG_CAP};
use crate::pagemap::PageMap;
use crate::pending::{PENDING_CHUNKS, PendingChunks};
use crate::pool::POOL_SLOT;
use crate::size_class::CLASS_SIZES;
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};
use crate::stats::MAX_POOL_STATS;
use crate::testing::ArenaSource;

mod aligned;
mod classes;
#[cfg(feature = "debug-checks")]
mod debug_checks;
mod large_paths;
mod memory;
mod pools;
mod remap;
mod sources;
mod walk;

/// A heap over an arena of `pages` pages, aligned to its size rounded up to a power of two (at
/// least 2 MiB): the arena then lies in as few page-map windows as it can, the same ones in every
/// run, so the pages and map calls the tests count do not depend on where the host put it.
fn heap(pages: usize) -> Heap<ArenaSource> {
    let align = (pages * PAGE_SIZE).next_power_of_two().max(2 << 20);
    Heap::new(ArenaSource::aligned(pages, align))
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Pages that must stay mapped when no block is allocated and everything is trimmed: the
/// first root run and the page-map nodes on its path, as right after `init`.
fn assert_only_roots_left(h: &Heap<ArenaSource>) {
    let s = h.stats();
    h.check_invariants().unwrap();
    assert_eq!(s.pages.chunks, 0);
    assert_eq!(s.pages.large, 0);
    assert_eq!(s.pages.root, FIRST_RUN_PAGES, "{s}");
    assert_eq!(s.pages.root + s.pages.page_map, h.idle_pages(), "{s}");
    assert_eq!(h.source().mapped_pages(), h.idle_pages());
    assert_eq!(s.pages.total, h.source().mapped_pages());
    assert_eq!(s.requested_bytes, 0);
    assert_eq!(s.held_bytes, 0);
}

/// `seed + i` for `i` in `0..256`; blocks are filled and checked a period at a time (one
/// memcpy/memcmp each: cheap under Miri, where byte loops are slow).
fn period(seed: u8) -> [u8; 256] {
    core::array::from_fn(|i| seed.wrapping_add(i as u8))
}

fn fill(p: NonNull<u8>, len: usize, seed: u8) {
    let pat = period(seed);
    // SAFETY: the block has at least `len` bytes.
    let s = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) };
    for chunk in s.chunks_mut(256) {
        chunk.copy_from_slice(&pat[..chunk.len()]);
    }
}

fn check(p: NonNull<u8>, len: usize, seed: u8) {
    let pat = period(seed);
    // SAFETY: the block has at least `len` bytes.
    let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), len) };
    for chunk in s.chunks(256) {
        assert!(
            chunk == &pat[..chunk.len()],
            "block {:#x} was overwritten",
            p.addr()
        );
    }
}

#[test]
fn root_page_layout_matches_the_crate_docs() {
    use core::mem::offset_of;
    let msg = "the root page layout changed: update the table in lib.rs";
    assert_eq!(STATE_OFFSET, 40, "{msg}");
    assert_eq!(size_of::<ChunkLists>(), 56, "{msg}");
    assert_eq!(offset_of!(HeapState, classes), 0, "{msg}");
    assert_eq!(offset_of!(HeapState, large), 2016, "{msg}");
    assert_eq!(size_of::<LargeAlloc>(), 880, "{msg}");
    assert_eq!(offset_of!(HeapState, descs), 2896, "{msg}");
    assert_eq!(offset_of!(HeapState, pools), 2952, "{msg}");
    assert_eq!(offset_of!(HeapState, large_pages), 3032, "{msg}");
    assert_eq!(offset_of!(HeapState, requested), 3040, "{msg}");
    assert_eq!(offset_of!(HeapState, window), 3048, "{msg}");
    assert_eq!(offset_of!(HeapState, map), 3064, "{msg}");
    assert_eq!(size_of::<PageMap>(), 40, "{msg}");
    assert_eq!(offset_of!(HeapState, mags), 3104, "{msg}");
    assert_eq!(size_of::<ClassMagazines>(), 36 * 4 + 36 * 64 * 8, "{msg}");
    assert_eq!(offset_of!(HeapState, last_pool), 21680, "{msg}");
    assert_eq!(offset_of!(HeapState, pending), 21704, "{msg}");
    assert_eq!(size_of::<PendingChunks>(), 16, "{msg}");
    assert_eq!(size_of::<HeapState>(), 21720, "{msg}");
    assert_eq!(FIRST_RUN_PAGES, 6, "{msg}");
    let debug = cfg!(feature = "debug-checks");
    assert_eq!(DESC_SLOT, if debug { 104 } else { 32 }, "{msg}");
    assert_eq!(POOL_SLOT, 344, "{msg}");
    assert_eq!(
        size_of::<MagazineStore<POOL_MAG_CAP>>(),
        8 + 32 * 8,
        "{msg}"
    );
    let first_slots =
        (FIRST_RUN_PAGES * PAGE_SIZE - STATE_OFFSET - size_of::<HeapState>()) / DESC_SLOT;
    assert_eq!(first_slots, if debug { 27 } else { 88 }, "{msg}");
    assert_eq!(
        (PAGE_SIZE - 40) / DESC_SLOT,
        if debug { 39 } else { 126 },
        "{msg}"
    );
    assert_eq!((PAGE_SIZE - 40) / POOL_SLOT, 11, "{msg}");
    let g1 = Geometry::new(1);
    let g7 = Geometry::new(7);
    assert_eq!(
        (g1.words, g1.capacity, g7.words, g7.capacity),
        (57, 3632, 9, 573),
        "{msg}"
    );
}
