//! Exhaustion: an arena of a few pages, allocations until the heap says no, everything freed,
//! and the same again. Failing is an error, never a panic, and the heap recovers completely.

use std::alloc::Layout;

use kheap::testing::{ArenaSource, XorShift64};
use kheap::{AllocError, FIRST_RUN_PAGES, Heap, PageStats};

fn fill_until_exhausted(
    heap: &mut Heap<ArenaSource>,
    seed: u64,
) -> Vec<(std::ptr::NonNull<u8>, Layout)> {
    let mut rng = XorShift64::new(seed);
    let mut live = Vec::new();
    let mut misses = 0;
    // After the first failure keep trying other sizes: smaller requests may still fit.
    while misses < 50 {
        let size = match rng.below(10) {
            0..=5 => rng.range(1, 256),
            6..=8 => rng.range(257, 4096),
            _ => rng.range(4097, 100_000),
        };
        let layout = Layout::from_size_align(size, 1 << rng.below(6)).unwrap();
        match heap.allocate(layout) {
            Ok(p) => {
                // SAFETY: a fresh block of `size` bytes.
                unsafe { p.as_ptr().write_bytes(0x5A, size) };
                live.push((p, layout));
            }
            Err(AllocError::OutOfPages { layout: l, .. }) => {
                assert_eq!(l, layout);
                misses += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    heap.check_invariants().unwrap();
    live
}

#[test]
fn allocate_until_exhausted_free_all_and_again() {
    let pages = if cfg!(miri) { 48 } else { 256 };
    let mut heap = Heap::new(ArenaSource::new(pages));
    heap.init().unwrap();
    let init = (heap.source().mapped_pages(), heap.stats().pages);
    let mut counts = Vec::new();
    for round in 0..3 {
        let live = fill_until_exhausted(&mut heap, 42);
        assert!(
            heap.source().mapped_pages() > pages * 9 / 10,
            "round {round}: arena not used up"
        );
        counts.push(live.len());
        for (p, layout) in live {
            // SAFETY: allocated above with `layout`.
            unsafe { heap.deallocate(p, layout) };
        }
        heap.trim();
        heap.check_invariants().unwrap();
        // Back to exactly what `init` mapped: the first root run and its page-map nodes.
        assert_eq!(
            (heap.source().mapped_pages(), heap.stats().pages),
            init,
            "round {round}"
        );
    }
    // The heap starts every round in the same state, so the same requests fit the same way.
    assert!(counts[0] > 0);
    assert_eq!(counts[0], counts[1], "{counts:?}");
    assert_eq!(counts[1], counts[2], "{counts:?}");
}

/// What the kernel's exhaustion test checks: small blocks until the heap says no (descriptor
/// runs and page-map leaves pile up), everything freed, a trim, and the heap maps what it mapped
/// right after `init`, for several block sizes in a row.
#[test]
fn small_blocks_until_exhausted_then_trim_maps_what_init_mapped() {
    let (pages, sizes) = if cfg!(miri) {
        (48, &[64][..])
    } else {
        (2048, &[64, 8, 2048, 64][..])
    };
    let mut heap = Heap::new(ArenaSource::new(pages));
    heap.init().unwrap();
    let init_mapped = heap.source().mapped_pages();
    let init: PageStats = heap.stats().pages;
    assert_eq!(init.root, FIRST_RUN_PAGES);
    assert_eq!(init.total, init_mapped);
    for &size in sizes {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let mut live = Vec::new();
        loop {
            match heap.allocate(layout) {
                Ok(p) => live.push(p),
                Err(AllocError::OutOfPages { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let full = heap.stats();
        assert!(
            full.pages.root > init.root,
            "size {size}: no descriptor run chained\n{full}"
        );
        assert!(
            heap.source().mapped_pages() > pages * 9 / 10,
            "size {size}\n{full}"
        );
        heap.check_invariants().unwrap();
        for p in live {
            // SAFETY: allocated above with `layout`.
            unsafe { heap.deallocate(p, layout) };
        }
        heap.trim();
        heap.check_invariants().unwrap();
        assert_eq!(heap.source().mapped_pages(), init_mapped, "size {size}");
        assert_eq!(heap.stats().pages, init, "size {size}");
    }
}

#[test]
fn pools_exhaust_cleanly() {
    // Tiny 3-byte blocks natively; fewer, larger blocks under Miri (slow).
    let (pages, size) = if cfg!(miri) { (12, 96) } else { (32, 3) };
    let mut heap = Heap::new(ArenaSource::new(pages));
    let id = heap.create_pool(size, 1).unwrap();
    let mut blocks = Vec::new();
    loop {
        match heap.pool_allocate(id) {
            Ok(p) => blocks.push(p),
            Err(AllocError::OutOfPages { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    heap.check_invariants().unwrap();
    // Every page of the arena is in use, and every chunk is full.
    let s = heap.stats();
    assert_eq!(heap.source().mapped_pages(), pages, "{s}");
    let pool = s.pools[0].unwrap().blocks;
    assert_eq!((pool.in_use, pool.free), (blocks.len(), 0), "{s}");
    for p in blocks {
        // SAFETY: allocated from `id` above.
        unsafe { heap.pool_deallocate(id, p) };
    }
    heap.destroy_pool(id).unwrap();
    heap.trim();
    heap.check_invariants().unwrap();
}
