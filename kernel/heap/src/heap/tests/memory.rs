//! Memory return: exhaustion, trimming, root runs, cached blocks, and the retry after a failure.

use super::*;

#[test]
fn exhaustion_is_an_error_and_recoverable() {
    let sizes = if cfg!(miri) {
        &[100, 5000][..]
    } else {
        &[8, 100, 2048, 5000, 70_000][..]
    };
    for &size in sizes {
        let mut h = heap(if cfg!(miri) { 32 } else { 64 });
        let l = layout(size, 8);
        let mut counts = Vec::new();
        for _ in 0..2 {
            let mut live = Vec::new();
            loop {
                match h.allocate(l) {
                    Ok(p) => live.push(p),
                    Err(AllocError::OutOfPages { layout, .. }) => {
                        assert_eq!(layout, l);
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            h.check_invariants().unwrap();
            counts.push(live.len());
            for p in live {
                // SAFETY: allocated above with `l`.
                unsafe { h.deallocate(p, l) };
            }
            h.trim();
            h.check_invariants().unwrap();
            assert_only_roots_left(&h);
        }
        assert!(counts[0] > 0, "size {size}");
        assert_eq!(counts[0], counts[1], "size {size}");
    }
}

#[test]
fn root_page_failure_is_reported() {
    let mut h = heap(0);
    let e = h.allocate(layout(8, 8));
    assert!(matches!(e, Err(AllocError::OutOfPages { .. })));
    assert!(!h.is_initialized());
    assert_eq!(
        h.create_pool(8, 8),
        Err(PoolError::OutOfPages(PageSourceError::OutOfMemory))
    );
    let mut h = heap(64);
    h.source.fail_after(Some(1)); // the root run maps, its page-map nodes do not
    assert!(h.allocate(layout(8, 8)).is_err());
    assert!(!h.is_initialized());
    assert_eq!(h.source().mapped_pages(), 0);
}

#[test]
fn many_chunks_chain_root_pages() {
    let n = if cfg!(miri) { 150 } else { 1000 };
    let mut h = heap(2 * n);
    let l = layout(4096, 4096);
    let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
    let s = h.stats();
    assert!(s.pages.root > 1);
    assert_eq!(s.pages.chunks, n);
    h.check_invariants().unwrap();
    for p in blocks {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    h.check_invariants().unwrap();
    // Trimming releases every descriptor run but the first.
    assert_only_roots_left(&h);
    // The same workload chains the same number of runs again, and gives them back again.
    let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
    assert_eq!(h.stats().pages.root, s.pages.root);
    h.check_invariants().unwrap();
    for p in blocks {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// The memory-return guarantee: exhausting the heap with small blocks chains descriptor
/// runs and page-map leaves; freeing everything and trimming must bring the heap back to
/// exactly the pages it mapped right after `init`.
#[test]
fn exhausted_with_small_blocks_then_trimmed_maps_what_init_mapped() {
    let (pages, sizes) = if cfg!(miri) {
        (64, &[64][..])
    } else {
        (1024, &[8, 64, 4096][..])
    };
    let mut h = heap(pages);
    h.init().unwrap();
    let init = h.source().mapped_pages();
    let init_pages = h.stats().pages;
    assert_eq!(init_pages.root, FIRST_RUN_PAGES);
    for &size in sizes {
        let l = layout(size, 8);
        let mut live = Vec::new();
        while let Ok(p) = h.allocate(l) {
            live.push(p);
        }
        h.check_invariants().unwrap();
        let full = h.stats();
        assert!(full.pages.root > FIRST_RUN_PAGES, "size {size}: {full}");
        assert!(h.source().mapped_pages() > pages * 9 / 10, "size {size}");
        for p in live {
            // SAFETY: allocated above with `l`.
            unsafe { h.deallocate(p, l) };
        }
        h.check_invariants().unwrap();
        h.trim();
        h.check_invariants().unwrap();
        assert_eq!(h.source().mapped_pages(), init, "size {size}");
        assert_eq!(h.stats().pages, init_pages, "size {size}");
    }
}

#[test]
fn cached_blocks_count_as_free_and_trim_returns_them() {
    let mut h = heap(64);
    let l = layout(48, 8);
    let i = CLASS_SIZES.iter().position(|&c| c == 48).unwrap();
    let blocks: Vec<_> = (0..10).map(|_| h.allocate(l).unwrap()).collect();
    let s = h.stats();
    assert_eq!(s.classes[i].in_use, 10);
    assert_eq!(s.classes[i].cached, MAG_BATCH - 10);
    assert_eq!(s.held_bytes, 10 * 48);
    for &p in &blocks[..4] {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    let s = h.stats();
    assert_eq!(
        (s.classes[i].in_use, s.classes[i].cached),
        (6, MAG_BATCH - 6)
    );
    assert_eq!(s.classes[i].in_use + s.classes[i].free, 4096 / 48);
    assert_eq!((s.requested_bytes, s.held_bytes), (6 * 48, 6 * 48));
    // The most recently freed block comes back first.
    assert_eq!(h.allocate(l).unwrap(), blocks[3]);
    h.trim();
    h.check_invariants().unwrap();
    assert_eq!(h.stats().classes[i].cached, 0);
    assert_eq!(h.stats().classes[i].in_use, 7);
    for p in blocks[4..].iter().chain(&blocks[3..4]) {
        // SAFETY: allocated above (blocks[3] twice, freed once in between).
        unsafe { h.deallocate(*p, l) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// A small heap whose every page is held as a cached (freed) block of the 4096-byte class, so
/// that any request that needs a page fails once.
fn heap_full_of_cached_pages() -> Heap<ArenaSource> {
    let mut h = heap(FIRST_RUN_PAGES + 5 + 12);
    let page = layout(4096, 4096);
    let mut pages = Vec::new();
    while let Ok(p) = h.allocate(page) {
        pages.push(p);
    }
    assert!(pages.len() >= 10, "{}", pages.len());
    for p in pages {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, page) };
    }
    // Every page is still held: as cached blocks of the 4096-byte class.
    assert_eq!(h.source().mapped_pages(), h.source().capacity());
    h
}

/// Blocks cached in one class's magazine must not make another class fail: a page-source
/// failure gives every cache back and tries again.
#[test]
fn a_failed_allocation_drops_the_caches_and_retries() {
    let mut h = heap_full_of_cached_pages();
    let mapped = h.source().mapped_pages();
    let small = layout(64, 8);
    let p = h
        .allocate(small)
        .expect("the cached pages are given back on failure");
    assert!(h.source().mapped_pages() < mapped);
    h.check_invariants().unwrap();
    // SAFETY: allocated above.
    unsafe { h.deallocate(p, small) };
    h.trim();
    assert_only_roots_left(&h);
}

/// The same for a large request, which `allocate_slow` serves inline: its first attempt fails
/// for want of pages, the caches are trimmed, and the second attempt gets the pages.
#[test]
fn a_failed_large_allocation_drops_the_caches_and_retries() {
    let mut h = heap_full_of_cached_pages();
    let large = layout(3000, 8);
    assert_eq!(
        crate::size_class::class_for(large),
        crate::size_class::SizeClass::Large
    );
    let p = h
        .allocate(large)
        .expect("the cached pages are given back on failure");
    fill(p, large.size(), 3);
    h.check_invariants().unwrap();
    check(p, large.size(), 3);
    assert_eq!(h.stats().requested_bytes, large.size());
    // SAFETY: allocated above.
    unsafe { h.deallocate(p, large) };
    h.trim();
    assert_only_roots_left(&h);
}

/// A page source that refuses to hold more than `limit` pages at once: a machine with that
/// much memory.
struct Budget {
    arena: ArenaSource,
    limit: usize,
}

// SAFETY: forwards to `ArenaSource`, whose guarantees carry over; the budget only turns
// some requests into errors.
unsafe impl PageSource for Budget {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if self.arena.mapped_pages() + count > self.limit {
            return Err(PageSourceError::OutOfMemory);
        }
        self.arena.map_pages(count)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: forwarded.
        unsafe { self.arena.unmap_pages(ptr, count) }
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        self.arena.window()
    }
}

/// A chunk that cannot be created can leave an empty root run (chained for its descriptor)
/// and the page-map node that records it. The retry after a failure must give those back
/// too: here a later request fits only with both pages returned.
#[test]
fn the_retry_returns_root_runs_and_map_nodes_a_failed_chunk_left() {
    // 600 pages aligned to 4 MiB: page 512 starts the arena's second 2 MiB, whose page-map
    // leaf is a node of its own (and never a new 1 GiB one).
    let arena = ArenaSource::aligned(600, 4 << 20);
    let mut h = Heap::new(Budget {
        arena,
        limit: usize::MAX,
    });
    h.init().unwrap();
    // The first root run, then the four nodes on its path: pages 0..10.
    assert_eq!(h.source().arena.mapped_pages(), FIRST_RUN_PAGES + 4);
    // A 17-page run at pages 10..27, freed later to leave a hole of exactly its size.
    let hole = layout(16 * PAGE_SIZE, 8);
    let x = h.allocate(hole).unwrap();
    // Every descriptor slot of the first run holds one 4096-byte chunk; a padding run
    // before them makes the last one end at page 512.
    let slots = (FIRST_RUN_PAGES * PAGE_SIZE - STATE_OFFSET - size_of::<HeapState>()) / DESC_SLOT;
    let used = h.source().arena.mapped_pages();
    let padding = layout((512 - used - slots - 1) * PAGE_SIZE, 8);
    let pad = h.allocate(padding).unwrap();
    let page = layout(4096, 8);
    let mut chunks: Vec<_> = (0..slots).map(|_| h.allocate(page).unwrap()).collect();
    assert_eq!(h.source().arena.mapped_pages(), 512);
    assert_eq!(h.stats().pages.root, FIRST_RUN_PAGES);
    let nodes = h.stats().pages.page_map;

    // One more chunk needs a new descriptor run (page 512), a page-map leaf for it (513)
    // and the chunk page: with room for two pages it fails, leaving the first two behind.
    h.source.limit = h.source().arena.mapped_pages() + 2;
    assert!(h.allocate(page).is_err());
    let s = h.stats();
    assert_eq!(
        (s.pages.root, s.pages.page_map),
        (FIRST_RUN_PAGES + 1, nodes + 1),
        "the failed chunk left an empty root run and a map node"
    );

    // 17 pages are needed again, 15 are free, the hole is there: only the two pages the
    // failed chunk left can make up the difference.
    // SAFETY: allocated above with `hole`.
    unsafe { h.deallocate(x, hole) };
    h.source.limit = h.source().arena.mapped_pages() + 15;
    let y = h
        .allocate(hole)
        .expect("the retry gives back the empty root run and its map node");
    h.check_invariants().unwrap();
    let s = h.stats();
    assert_eq!((s.pages.root, s.pages.page_map), (FIRST_RUN_PAGES, nodes));

    h.source.limit = usize::MAX;
    // SAFETY: every block was allocated above with its layout and is freed once.
    unsafe {
        h.deallocate(y, hole);
        h.deallocate(pad, padding);
        for p in chunks.drain(..) {
            h.deallocate(p, page);
        }
    }
    h.trim();
    h.check_invariants().unwrap();
    assert_eq!(h.source().arena.mapped_pages(), h.idle_pages());
}

/// The metadata a new chunk needs (a descriptor slot in a new root run, a page-map node for a
/// new 2 MiB window) is created ahead of need by quiet slow-path calls, so a call that maps a
/// chunk makes exactly one page-source call: a refill of the 4096-byte class maps one page, even
/// across new root runs and new page-map leaves.
#[test]
fn metadata_is_created_before_the_call_that_needs_it() {
    let chunks = if cfg!(miri) { 120 } else { 600 };
    let mut h = heap(chunks + 100);
    let small = layout(16, 8);
    let page = layout(4096, 8);
    let mut live = Vec::new();
    // Warm up: the first root run, its page-map path, a chunk of 16-byte blocks, and a quiet
    // refill from that chunk (which maps the spare page-map node).
    for _ in 0..=MAG_BATCH {
        live.push((h.allocate(small).unwrap(), small));
    }
    assert_eq!(h.live().unwrap().map().spare_nodes(), 1);
    let (mut root_runs, mut leaves) = (h.stats().pages.root, h.stats().pages.page_map);
    for i in 0..chunks {
        for l in [page, small, small] {
            let calls = h.source().map_calls();
            live.push((h.allocate(l).unwrap(), l));
            let made = h.source().map_calls() - calls;
            assert!(made <= 1, "call {i} ({l:?}) made {made} page-source calls");
        }
        let s = h.stats();
        root_runs = root_runs.max(s.pages.root);
        leaves = leaves.max(s.pages.page_map);
    }
    // The test did cross into new root runs.
    assert!(root_runs > FIRST_RUN_PAGES + 1, "{root_runs}");
    h.check_invariants().unwrap();
    for (p, l) in live {
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// A failure while pre-creating metadata is not the caller's failure: the call that tried it
/// succeeds, the heap stays consistent, and a later call that needs the metadata fails cleanly
/// (then succeeds once the source has pages again).
#[test]
fn a_failed_pre_creation_leaves_the_heap_consistent() {
    let mut h = heap(64);
    let small = layout(64, 8);
    let page = layout(4096, 8);
    let first = h.allocate(small).unwrap();
    h.check_invariants().unwrap();
    h.source.fail_after(Some(0));
    // The second refill of the class is served by its chunk and tries to map a spare node.
    let more: Vec<_> = (0..MAG_BATCH).map(|_| h.allocate(small).unwrap()).collect();
    h.check_invariants().unwrap();
    assert_eq!(h.live().unwrap().map().spare_nodes(), 0);
    // A call that needs a page fails cleanly and changes nothing.
    let pages = h.source().mapped_pages();
    assert!(matches!(
        h.allocate(page),
        Err(AllocError::OutOfPages { .. })
    ));
    h.check_invariants().unwrap();
    assert!(h.source().mapped_pages() <= pages);
    h.source.fail_after(None);
    let big = h.allocate(page).unwrap();
    h.check_invariants().unwrap();
    // SAFETY: allocated above with these layouts.
    unsafe {
        h.deallocate(big, page);
        h.deallocate(first, small);
        for p in more {
            h.deallocate(p, small);
        }
    }
    h.trim();
    assert_only_roots_left(&h);
}
