//! The large allocator's paths through the heap (issue 13): aligned requests at every alignment
//! up to several pages, `reallocate` across every boundary (class, region, page run) in place and
//! by copy, page runs at rotating offsets found again by their frees, and region growth on
//! exhaustion.

use super::*;

/// Every alignment from 1 to 16 KiB with sizes around the class, region and page-run
/// boundaries: each block is aligned, every byte of it is patterned, no two overlap (all stay
/// live together and are checked at the end), and every free finds its block.
#[test]
fn aligned_requests_at_every_alignment_keep_every_byte() {
    let mut h = heap(if cfg!(miri) { 1024 } else { 8192 });
    let sizes: &[usize] = if cfg!(miri) {
        &[1, 100, 4097, 65_536]
    } else {
        &[
            1, 15, 100, 1000, 4095, 4096, 4097, 9000, 65_535, 65_536, 70_001,
        ]
    };
    let mut live = Vec::new();
    let mut seed = 0u8;
    let mut align = 1;
    while align <= 4 * PAGE_SIZE {
        for &size in sizes {
            let l = layout(size, align);
            let p = h.allocate(l).unwrap();
            assert!(p.addr().get().is_multiple_of(align), "{size} / {align}");
            // SAFETY: live with layout `l`.
            assert!(unsafe { h.usable_size(p, l) } >= size);
            seed = seed.wrapping_add(37);
            fill(p, size, seed);
            live.push((p, l, seed));
        }
        h.check_invariants().unwrap();
        align *= 2;
    }
    for &(p, l, seed) in &live {
        check(p, l.size(), seed);
    }
    for (p, l, _) in live {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    h.trim();
    assert_only_roots_left(&h);
}

/// `reallocate` growing and shrinking across the class / region / page-run boundaries (in place
/// or by copy, whichever the neighbours allow), each step checking the bytes kept, then
/// patterning the whole new size; a page run always shrinks in place.
#[test]
fn reallocate_across_every_boundary_keeps_the_bytes() {
    let mut h = heap(1024);
    let steps: &[usize] = &[
        8, 4096, 4097, 6000, 16_000, 65_535, 65_536, 65_600, 131_072, 300_000, 70_000, 65_535,
        5000, 4096, 100,
    ];
    for &align in &[8, 64, 4096] {
        let mut size = 1;
        let mut p = h.allocate(layout(size, align)).unwrap();
        fill(p, size, 1);
        for (i, &new) in steps.iter().enumerate() {
            let seed = i as u8 + 2;
            // SAFETY: `p` is live with `(size, align)`.
            let q = unsafe { h.reallocate(p, layout(size, align), new) }.unwrap();
            assert!(q.addr().get().is_multiple_of(align));
            check(q, size.min(new), seed - 1);
            fill(q, new, seed);
            h.check_invariants().unwrap();
            if size >= 65_536 && new < size {
                assert_eq!(q, p, "a page run shrinks in place");
            }
            (p, size) = (q, new);
        }
        // SAFETY: live with this layout.
        unsafe { h.deallocate(p, layout(size, align)) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// Page runs of one size start at different offsets of their first page (so equal buffers do
/// not alias in the cache), each inside its own run; frees find them through the page map, and
/// every page goes back.
#[test]
fn page_runs_at_rotating_offsets_are_freed_and_unmapped() {
    let mut h = heap(2048);
    h.init().unwrap();
    let count = if cfg!(miri) { 4 } else { 40 };
    let l = layout(1 << 16, 8);
    let before = h.stats().pages;
    let runs: Vec<_> = (0..count).map(|_| h.allocate(l).unwrap()).collect();
    let mut offsets: Vec<usize> = runs.iter().map(|p| p.addr().get() % PAGE_SIZE).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), count, "every run at its own offset");
    // 64 KiB of data and the offset fit in 17 pages: the offset costs no page.
    assert_eq!(h.stats().pages.large, count * 17);
    for (i, &p) in runs.iter().enumerate() {
        fill(p, l.size(), i as u8);
    }
    for (i, &p) in runs.iter().enumerate() {
        check(p, l.size(), i as u8);
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    assert_eq!(h.stats().pages.large, before.large);
    h.trim();
    assert_only_roots_left(&h);
}

/// A free that empties a region beyond the idle limit unmaps nothing: the region waits,
/// mapped and usable, and each later large allocation that maps nothing unmaps one waiting
/// region; `trim` unmaps what is left.
#[test]
fn regions_emptied_beyond_the_idle_limit_go_back_in_later_quiet_allocations() {
    let mut h = heap(1024);
    h.init().unwrap();
    // Blocks that fill a 64 KiB region each: more regions than the idle limit keeps.
    let l = layout(60_000, 8);
    let count = 512 * 1024 / (64 * 1024) + 3;
    let blocks: Vec<_> = (0..count).map(|_| h.allocate(l).unwrap()).collect();
    let mapped = h.stats().pages.large;
    assert_eq!(h.stats().large.regions, count);
    for (i, &p) in blocks.iter().enumerate() {
        fill(p, l.size(), i as u8);
    }
    for (i, &p) in blocks.iter().enumerate() {
        check(p, l.size(), i as u8);
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
        h.check_invariants().unwrap();
    }
    assert_eq!(h.stats().pages.large, mapped, "no free unmapped a region");
    // Large allocations served by the idle regions: each unmaps one waiting region, until
    // none waits (two or three: the first allocation may take a waiting region for itself).
    let small = layout(5000, 8);
    let mut again = Vec::new();
    let mut released = 0;
    loop {
        let (regions, pages) = (h.stats().large.regions, h.source().mapped_pages());
        again.push(h.allocate(small).unwrap());
        h.check_invariants().unwrap();
        if h.source().mapped_pages() == pages {
            assert_eq!(h.stats().large.regions, regions);
            break;
        }
        assert_eq!(h.stats().large.regions, regions - 1);
        released += 1;
    }
    assert!((2..=3).contains(&released), "{released}");
    assert!(h.stats().large.region_bytes <= (512 + 64) * 1024);
    for p in again {
        // SAFETY: allocated above with `small`.
        unsafe { h.deallocate(p, small) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// Chunk pages that wait to be released right after a page run do not stop it from growing in
/// place: the growth that finds them in its way releases what waits and tries again.
#[test]
fn a_page_run_grows_over_chunks_pending_release() {
    let mut h = heap(1024);
    h.init().unwrap();
    let run_layout = layout(100_000, 8);
    let run = h.allocate(run_layout).unwrap();
    fill(run, run_layout.size(), 3);
    // Page-sized blocks, one chunk each, on the pages after the run (the arena is first fit).
    let l = layout(4096, 4096);
    let reserve = ChunkLists::new(Geometry::new(4096)).reserve_limit() as usize;
    let blocks: Vec<_> = (0..MAG_CAP + reserve + PENDING_CHUNKS)
        .map(|_| h.allocate(l).unwrap())
        .collect();
    let run_end = run.addr().get() - run.addr().get() % PAGE_SIZE + 25 * PAGE_SIZE;
    assert!(blocks.iter().any(|p| p.addr().get() == run_end));
    // Freed in reverse, the first blocks are the last freed: their chunks wait to be
    // released, the one right after the run among them.
    for &p in blocks.iter().rev() {
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    let s = h.stats();
    assert_eq!(s.pages.chunks, s.classes[35].chunks + PENDING_CHUNKS);
    // SAFETY: `run` is live with `run_layout`.
    let grown = unsafe { h.reallocate(run, run_layout, 150_000) }.unwrap();
    assert_eq!(grown, run, "grown in place");
    check(grown, run_layout.size(), 3);
    let s = h.stats();
    assert_eq!(
        s.pages.chunks, s.classes[35].chunks,
        "nothing waits any more"
    );
    h.check_invariants().unwrap();
    // SAFETY: live with the new size.
    unsafe { h.deallocate(grown, layout(150_000, 8)) };
    h.trim();
    assert_only_roots_left(&h);
}

/// Large blocks until the source is exhausted: regions grow and are mapped until nothing fits,
/// and then the allocation fails with `OutOfPages` (a null pointer through `GlobalAlloc`),
/// leaving a consistent heap whose blocks are intact and all come back.
#[test]
fn region_growth_until_exhaustion_fails_cleanly() {
    let mut h = heap(96);
    let l = layout(3000, 8);
    let mut live = Vec::new();
    let err = loop {
        match h.allocate(l) {
            Ok(p) => {
                fill(p, l.size(), live.len() as u8);
                live.push(p);
            }
            Err(e) => break e,
        }
        assert!(
            live.len() < 96 * 2,
            "an arena of 96 pages holds fewer blocks"
        );
    };
    assert!(matches!(err, AllocError::OutOfPages { .. }), "{err:?}");
    assert!(live.len() > 70, "{} blocks", live.len());
    h.check_invariants().unwrap();
    assert!(h.stats().large.regions >= 2);
    for (i, &p) in live.iter().enumerate() {
        check(p, l.size(), i as u8);
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// Large frees go from `Heap::deallocate` straight to the large allocator (h15:
/// `deallocate_large`, no class mapping on the way): every way a freed region block can merge —
/// with neither neighbour, its predecessor, its successor, both, and the merge that empties the
/// region (which is kept as an idle region, then trimmed) — with every live block patterned and
/// checked, the invariant checker and the requested-bytes count after every call.
#[test]
fn large_frees_through_the_heap_merge_every_way() {
    let mut h = heap(256);
    // A size the classes do not serve: a 4096-byte class would waste more than 1/8.
    let l = layout(2500, 8);
    assert_eq!(
        crate::size_class::class_for(l),
        crate::size_class::SizeClass::Large
    );
    // Five neighbours in one region: [a b c d e] and the region's free tail after them.
    let blocks: Vec<NonNull<u8>> = (0..5).map(|_| h.allocate(l).unwrap()).collect();
    for pair in blocks.windows(2) {
        assert!(pair[0] < pair[1], "blocks of one region follow each other");
    }
    for (i, &p) in blocks.iter().enumerate() {
        fill(p, l.size(), i as u8 * 41);
    }
    let mut live: Vec<bool> = vec![true; blocks.len()];
    // b: no free neighbour; c: merges with its predecessor (b); e: with its successor (the
    // free tail); d: with both (b+c before, e+tail after); a: with its successor, which empties
    // the region.
    for i in [1, 2, 4, 3, 0] {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { h.deallocate(blocks[i], l) };
        live[i] = false;
        h.check_invariants().unwrap();
        let still: usize = live.iter().filter(|&&l| l).count();
        assert_eq!(h.stats().requested_bytes, still * l.size());
        for (j, &p) in blocks.iter().enumerate() {
            if live[j] {
                check(p, l.size(), j as u8 * 41);
            }
        }
    }
    // The emptied region stays mapped as an idle region, and serves the next request.
    assert!(h.stats().pages.large > 0);
    let again = h.allocate(l).unwrap();
    assert_eq!(again, blocks[0], "the idle region's first block is reused");
    // SAFETY: allocated just above with `l`.
    unsafe { h.deallocate(again, l) };
    h.trim();
    assert_only_roots_left(&h);
}

/// The large paths of `allocate` and `deallocate` (h15) with aligned layouts, page runs and
/// region blocks mixed, interleaved with class blocks: every byte checked before each free and
/// the invariants after every call.
#[test]
fn large_and_class_calls_interleave() {
    let mut h = heap(if cfg!(miri) { 512 } else { 2048 });
    let layouts = [
        layout(2500, 8),
        layout(64, 8),
        layout(3000, 64),
        layout(70_000, 8),
        layout(4096, 4096),
        layout(9000, 1024),
        layout(200, 16),
    ];
    let rounds = if cfg!(miri) { 2 } else { 6 };
    let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
    let mut seed = 0u8;
    for round in 0..rounds {
        for &l in &layouts {
            let p = h.allocate(l).unwrap();
            assert!(p.addr().get().is_multiple_of(l.align()));
            seed = seed.wrapping_add(29);
            fill(p, l.size(), seed);
            live.push((p, l, seed));
            h.check_invariants().unwrap();
        }
        // Free every other block, from a different end each round.
        let mut i = round % 2;
        while i < live.len() {
            let (p, l, s) = live.remove(i);
            check(p, l.size(), s);
            // SAFETY: allocated above with `l`, freed once.
            unsafe { h.deallocate(p, l) };
            h.check_invariants().unwrap();
            i += 1;
        }
    }
    for (p, l, s) in live {
        check(p, l.size(), s);
        // SAFETY: allocated above with `l`, freed once.
        unsafe { h.deallocate(p, l) };
        h.check_invariants().unwrap();
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// The page run a doubling block gets when it cannot grow where it is
/// (`LargeAlloc::allocate_for_growth`): an 8 KiB region block with a neighbour that doubles to
/// 16 KiB moves to a page run (5 pages: 16 KiB and the data offset), keeping its bytes; the run
/// then doubles to 32 KiB and 64 KiB in place, since the pages after it are free.
#[test]
fn a_doubling_block_that_cannot_grow_in_place_moves_to_a_page_run() {
    let mut h = heap(1024);
    h.source.set_remaps(false);
    let first = layout(8192, 8);
    let p = h.allocate(first).unwrap();
    let neighbour = layout(8192, 8);
    let n = h.allocate(neighbour).unwrap();
    fill(p, first.size(), 7);
    fill(n, neighbour.size(), 8);
    assert_eq!(h.stats().large.page_runs, 0, "both are region blocks");
    let region_pages = h.stats().pages.large;
    // SAFETY: `p` is live with `first`.
    let q = unsafe { h.reallocate(p, first, 16_384) }.unwrap();
    assert_ne!(q, p, "the neighbour is in the way: the block moved");
    assert_eq!(h.stats().large.page_runs, 1, "into a page run");
    assert_eq!(
        h.stats().pages.large - region_pages,
        5,
        "of 5 pages, beside the region (which keeps the neighbour)"
    );
    check(q, first.size(), 7);
    fill(q, 16_384, 9);
    h.check_invariants().unwrap();
    let mut size = 16_384;
    for new in [32_768, 65_536] {
        // SAFETY: `q` is live with `(size, 8)`.
        let r = unsafe { h.reallocate(q, layout(size, 8), new) }.unwrap();
        assert_eq!(
            r, q,
            "a run doubles in place while the pages after it are free"
        );
        check(r, size, 9);
        fill(r, new, 9);
        h.check_invariants().unwrap();
        size = new;
    }
    assert_eq!(h.stats().large.page_runs, 1);
    check(n, neighbour.size(), 8);
    // SAFETY: both live with these layouts, freed once.
    unsafe {
        h.deallocate(q, layout(size, 8));
        h.deallocate(n, neighbour);
    }
    h.trim();
    assert_only_roots_left(&h);
}

/// Growth that the page-run rule leaves alone stays in a region: to less than twice the size
/// (10 KiB to 16 KiB), and to less than 16 KiB (6 KiB to 12 KiB). And when the run cannot be
/// mapped, the block is allocated as usual (a region block) rather than the call failing.
#[test]
fn growth_outside_the_page_run_rule_stays_in_a_region() {
    let mut h = heap(1024);
    h.source.set_remaps(false);
    for (from, to) in [(10_240, 16_384), (6144, 12_288)] {
        let p = h.allocate(layout(from, 8)).unwrap();
        let n = h.allocate(layout(from, 8)).unwrap();
        fill(p, from, 3);
        // SAFETY: `p` is live with `(from, 8)`.
        let q = unsafe { h.reallocate(p, layout(from, 8), to) }.unwrap();
        assert_ne!(q, p, "the neighbour is in the way: the block moved");
        assert_eq!(
            h.stats().large.page_runs,
            0,
            "{from} -> {to} stays in a region"
        );
        check(q, from, 3);
        h.check_invariants().unwrap();
        // SAFETY: both live with these layouts, freed once.
        unsafe {
            h.deallocate(q, layout(to, 8));
            h.deallocate(n, layout(from, 8));
        }
    }
    // A doubling block whose run the source refuses: the region path serves it (the region
    // the blocks above used is still mapped and has room).
    let p = h.allocate(layout(8192, 8)).unwrap();
    let n = h.allocate(layout(8192, 8)).unwrap();
    fill(p, 8192, 4);
    h.source.fail_after(Some(0));
    // SAFETY: `p` is live with `(8192, 8)`.
    let q = unsafe { h.reallocate(p, layout(8192, 8), 16_384) }.unwrap();
    h.source.fail_after(None);
    assert_ne!(q, p);
    assert_eq!(h.stats().large.page_runs, 0, "no run could be mapped");
    check(q, 8192, 4);
    h.check_invariants().unwrap();
    // SAFETY: both live with these layouts, freed once.
    unsafe {
        h.deallocate(q, layout(16_384, 8));
        h.deallocate(n, layout(8192, 8));
    }
    h.trim();
    assert_only_roots_left(&h);
}
