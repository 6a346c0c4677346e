//! Region blocks: splitting, coalescing, alignment gaps, the cached region, in-place resizing.

use super::*;
use crate::source::PageSource;

#[test]
fn split_leaves_one_free_tail() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let s = a.stats();
    assert_eq!(s.regions, 1);
    assert_eq!(s.region_bytes, REGION_MIN);
    assert_eq!(s.live_blocks, 1);
    assert_eq!(s.live_bytes, 1008);
    assert_eq!(s.free_bytes, REGION_MIN - REGION_HEADER - HEADER - 1024);
    assert_eq!(s.largest_free, s.free_bytes);
    assert_eq!(a.bins.len(), 1);
    // SAFETY: `p` is live with this layout.
    assert_eq!(unsafe { a.usable_size(p, layout(1000, 8)) }, 1008);
    // The second block follows the first directly.
    let q = alloc(&mut a, &mut src, 200, 8);
    assert_eq!(q.addr().get() - p.addr().get(), 1024);
    free(&mut a, &mut src, q, 200, 8);
    free(&mut a, &mut src, p, 1000, 8);
}

#[test]
fn free_coalesces_with_both_neighbours() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let x = alloc(&mut a, &mut src, 1000, 8);
    let y = alloc(&mut a, &mut src, 1000, 8);
    let z = alloc(&mut a, &mut src, 1000, 8);
    let w = alloc(&mut a, &mut src, 1000, 8);
    free(&mut a, &mut src, x, 1000, 8);
    assert_eq!(a.bins.len(), 2);
    free(&mut a, &mut src, z, 1000, 8);
    assert_eq!(a.bins.len(), 3);
    // y merges with x before it and z after it.
    free(&mut a, &mut src, y, 1000, 8);
    assert_eq!(a.bins.len(), 2);
    assert_eq!(
        a.stats().largest_free,
        REGION_MIN - REGION_HEADER - HEADER - 4 * 1024
    );
    // w merges with both sides too, emptying the region, which is cached.
    free(&mut a, &mut src, w, 1000, 8);
    assert_eq!(a.bins.len(), 1);
    let s = a.stats();
    assert_eq!((s.regions, s.live_blocks, s.live_bytes), (1, 0, 0));
    assert_eq!(s.free_bytes, REGION_MIN - REGION_HEADER - HEADER);
    a.release_cached(&mut src);
    a.check_invariants().unwrap();
    assert_eq!(a.stats(), LargeStats::default());
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn aligned_blocks_leave_their_gap_free() {
    let mut src = ArenaSource::new(256);
    let mut a = LargeAlloc::new();
    let mut live = Vec::new();
    for shift in 5..=15 {
        let align = 1 << shift;
        let size = 200 + shift * 8;
        let p = alloc(&mut a, &mut src, size, align);
        fill(p, size, shift as u64);
        live.push((p, size, align));
    }
    for &(p, size, align) in &live {
        check(p, size, align.trailing_zeros() as u64);
        assert!(a.owns(p));
    }
    for (p, size, align) in live {
        free(&mut a, &mut src, p, size, align);
    }
    assert_eq!(a.stats().live_blocks, 0);
    assert!(a.stats().region_bytes <= IDLE_LIMIT);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn a_sixteen_byte_gap_moves_the_block_up_by_one_alignment() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    // A 1024-byte block at region + 48 and a 48-byte one leave the free block at
    // region + 1120; the next 64-aligned payload, region + 1152, would leave a 16-byte gap,
    // too small for a block, so the block moves up to make the gap 16 + 64 bytes.
    let p = alloc(&mut a, &mut src, 1000, 8);
    let q = alloc(&mut a, &mut src, 32, 8);
    let r = alloc(&mut a, &mut src, 300, 64);
    assert_eq!(r.addr().get() % 64, 0);
    let gap = r.addr().get() - HEADER - (q.addr().get() + 32);
    assert_eq!(gap, 80);
    assert_eq!(a.bins.len(), 2);
    free(&mut a, &mut src, p, 1000, 8);
    free(&mut a, &mut src, q, 32, 8);
    free(&mut a, &mut src, r, 300, 64);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn wholly_free_regions_are_kept_up_to_the_idle_limit() {
    let mut src = ArenaSource::new(512);
    let mut a = LargeAlloc::new();
    // More regions than the idle limit and the excess list hold, each filled by one block that
    // needs all of it.
    let idle = IDLE_LIMIT / REGION_FULL;
    let n = idle + EXCESS_REGIONS + 2;
    let live: Vec<_> = (0..n).map(|_| alloc(&mut a, &mut src, 60_000, 8)).collect();
    assert_eq!(a.stats().regions, n);
    let region = a.stats().region_bytes / n;
    assert!(region <= REGION_FULL);
    for (k, p) in live.into_iter().enumerate() {
        let (regions, pages) = (a.stats().regions, src.mapped_pages());
        free(&mut a, &mut src, p, 60_000, 8);
        a.check_invariants().unwrap();
        // The first regions to empty stay idle up to the limit, the next ones wait on the
        // excess list (no free unmaps while it has room), and the last ones go back at once.
        let unmapped = usize::from(k >= idle + EXCESS_REGIONS);
        assert_eq!(a.stats().regions, regions - unmapped, "region {k}");
        assert_eq!(src.mapped_pages(), pages - unmapped * region / PAGE_SIZE);
        assert_eq!(
            a.excess_len,
            (k + 1).saturating_sub(idle).min(EXCESS_REGIONS)
        );
    }
    let s = a.stats();
    assert_eq!(s.regions, idle + EXCESS_REGIONS);
    assert_eq!(src.mapped_pages(), s.region_bytes / PAGE_SIZE);
    // An idle region serves the next request without a new mapping, and stops being idle (off
    // the excess list if it was there).
    let calls = src.map_calls();
    let p = alloc(&mut a, &mut src, 5000, 8);
    assert_eq!(src.map_calls(), calls);
    assert_eq!(a.stats().regions, idle + EXCESS_REGIONS);
    a.check_invariants().unwrap();
    // The heap's quiet calls unmap the excess regions one at a time, until none is left.
    while a.has_excess() {
        let (regions, pages) = (a.stats().regions, src.mapped_pages());
        a.release_excess(&mut src);
        assert_eq!(a.stats().regions, regions - 1);
        assert_eq!(src.mapped_pages(), pages - region / PAGE_SIZE);
        a.check_invariants().unwrap();
    }
    assert!(a.stats().region_bytes <= IDLE_LIMIT + region);
    free(&mut a, &mut src, p, 5000, 8);
    a.check_invariants().unwrap();
    a.release_cached(&mut src);
    a.check_invariants().unwrap();
    assert_eq!(a.excess_len, 0);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
    assert_eq!(a.stats(), LargeStats::default());
}

#[test]
fn small_regions_share_the_idle_limit() {
    let mut src = ArenaSource::new(512);
    let mut a = LargeAlloc::new();
    // Regions of the smallest size, one block each, until the idle limit is passed.
    let n = IDLE_LIMIT / REGION_MIN + 2;
    let size = REGION_MIN - 256;
    let live: Vec<_> = (0..n).map(|_| alloc(&mut a, &mut src, size, 8)).collect();
    for p in live.into_iter().rev() {
        free(&mut a, &mut src, p, size, 8);
        a.check_invariants().unwrap();
    }
    // Every region stays mapped: those past the limit wait as excess (the checker above
    // holds the others to the limit).
    assert_eq!(a.stats().region_bytes, n * REGION_MIN);
    assert!(a.excess_len > 0);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
    assert_eq!(a.stats(), LargeStats::default());
}

#[test]
fn oversize_regions_wait_as_excess() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let q = alloc(&mut a, &mut src, 1000, 8);
    // Footprint just below the threshold: the block needs more than a standard region.
    let p = alloc(&mut a, &mut src, 65_500, 8);
    assert_eq!(a.stats().region_bytes, REGION_MIN + 68 * 1024);
    assert_eq!(a.stats().page_runs, 0);
    // Freed, it is never kept as an idle region under the limit: it waits as excess, mapped,
    // until a quiet call unmaps it.
    free(&mut a, &mut src, p, 65_500, 8);
    a.check_invariants().unwrap();
    assert_eq!((a.stats().regions, a.excess_len), (2, 1));
    let r = alloc(&mut a, &mut src, 500, 8);
    a.release_excess(&mut src);
    assert_eq!((a.stats().regions, a.excess_len), (1, 0));
    assert_eq!(src.mapped_pages(), REGION_MIN / PAGE_SIZE);
    a.check_invariants().unwrap();
    free(&mut a, &mut src, r, 500, 8);
    free(&mut a, &mut src, q, 1000, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn probe_reuses_the_cached_region_just_above_a_sub_bin_boundary() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    // A block that needs a whole 64 KiB region, freed: the region is cached.
    let p = alloc(&mut a, &mut src, 63_000, 8);
    assert_eq!(a.stats().region_bytes, REGION_FULL);
    free(&mut a, &mut src, p, 63_000, 8);
    let calls = (src.map_calls(), src.grow_calls());
    // Needs a 62_000-byte block: the good-fit search rounds that past the bin of the cached
    // 65_472-byte block.
    assert!(search_bin(62_000).unwrap() > bin_of(REGION_FULL - REGION_HEADER - HEADER));
    let size = 62_000 - HEADER;
    let q = alloc(&mut a, &mut src, size, 8);
    assert_eq!((src.map_calls(), src.grow_calls()), calls);
    free(&mut a, &mut src, q, size, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn resize_in_place_of_region_blocks() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 4000, 8);
    let q = alloc(&mut a, &mut src, 1000, 8);
    fill(p, 4000, 7);
    // SAFETY: `p` and `q` are live with the layouts passed.
    unsafe {
        // Shrink: the tail becomes a free block (its successor q is used).
        assert!(a.resize_in_place(&mut src, p, layout(4000, 8), 1000));
        a.check_invariants().unwrap();
        assert_eq!(a.usable_size(p, layout(1000, 8)), 1008);
        check(p, 1000, 7);
        // Grow back into the freed tail.
        assert!(a.resize_in_place(&mut src, p, layout(1000, 8), 3000));
        a.check_invariants().unwrap();
        assert!(a.usable_size(p, layout(3000, 8)) >= 3000);
        check(p, 1000, 7);
        // Growing past the used successor fails and changes nothing.
        let before = a.stats();
        assert!(!a.resize_in_place(&mut src, p, layout(3000, 8), 5000));
        assert!(!a.resize_in_place(&mut src, p, layout(3000, 8), usize::MAX));
        assert_eq!(a.stats(), before);
        // q grows into the free rest of the region, and the region grows under it by the five
        // pages q still lacks.
        assert_eq!(a.stats().region_bytes, REGION_MIN);
        let grows = src.grow_calls();
        assert!(a.resize_in_place(&mut src, q, layout(1000, 8), 30_000));
        assert_eq!(a.stats().region_bytes, REGION_MIN + 5 * PAGE_SIZE);
        assert_eq!(src.grow_calls(), grows + 1);
        a.check_invariants().unwrap();
        // A shrink too small to split off a block is a no-op success.
        assert!(a.resize_in_place(&mut src, q, layout(30_000, 8), 29_990));
        a.check_invariants().unwrap();
    }
    free(&mut a, &mut src, p, 3000, 8);
    free(&mut a, &mut src, q, 29_990, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

/// A small request maps four pages, not a whole 64 KiB region; later requests grow that region
/// in place (a few pages per call) up to 64 KiB, and only then is a new region mapped. No call
/// maps more than four pages or what its own block needs.
#[test]
fn regions_start_small_and_grow_in_place() {
    let mut src = ArenaSource::new(256);
    let mut a = LargeAlloc::new();
    let mut live = Vec::new();
    let mut most = 0;
    for i in 0..40 {
        let size = [2000, 1500, 3000, 5000][i % 4];
        let before = src.mapped_pages();
        let p = alloc(&mut a, &mut src, size, 8);
        let added = src.mapped_pages() - before;
        most = most.max(added);
        assert!(
            added <= (REGION_MIN / PAGE_SIZE).max(size.div_ceil(PAGE_SIZE) + 1),
            "call {i} mapped {added} pages"
        );
        fill(p, size, i as u64);
        live.push((p, size));
        if i == 0 {
            assert_eq!(a.stats().region_bytes, REGION_MIN);
            assert_eq!(src.map_calls(), 1);
        }
    }
    assert_eq!(most, REGION_MIN / PAGE_SIZE);
    let s = a.stats();
    // 40 blocks of ~2.9 KiB fill two 64 KiB regions, mapped with two calls and grown in between.
    assert_eq!(s.regions, 2);
    assert_eq!(src.map_calls(), 2);
    assert!(src.grow_calls() >= 3, "{} grows", src.grow_calls());
    assert!(s.region_bytes <= 2 * REGION_FULL);
    for (i, &(p, size)) in live.iter().enumerate() {
        check(p, size, i as u64);
        free(&mut a, &mut src, p, size, 8);
    }
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
    assert_eq!(a.stats(), LargeStats::default());
}

/// When the pages after the growing region are taken, a new region is mapped instead; when
/// neither growth nor a new region can be had, the allocation fails cleanly, changing nothing,
/// and the next request that fits the free pages works.
#[test]
fn a_region_that_cannot_grow_is_left_and_exhaustion_fails_cleanly() {
    let mut src = ArenaSource::new(16);
    let mut a = LargeAlloc::new();
    // Region A: pages 0-3; a foreign page right after it blocks its growth.
    let p = alloc(&mut a, &mut src, 3000, 8);
    let blocker = src.map_pages(1).unwrap();
    // A's free 13 KiB cannot hold this block, and A cannot grow: region B, pages 5-8.
    let q = alloc(&mut a, &mut src, 14_000, 8);
    assert_eq!(
        a.stats().regions,
        2,
        "a second region, the first could not grow"
    );
    assert_eq!(src.grow_calls(), 0);
    assert_eq!(src.mapped_pages(), 4 + 1 + 4);
    fill(q, 14_000, 1);
    // Seven pages are left: B could grow by seven, but not by the ten this block needs, and a
    // new region of ten pages does not fit either.
    let before = (a.stats(), src.mapped_pages());
    let e = a.allocate(&mut src, layout(40_000, 8));
    assert!(matches!(e, Err(AllocError::OutOfPages { .. })), "{e:?}");
    assert_eq!((a.stats(), src.mapped_pages()), before);
    a.check_invariants().unwrap();
    check(q, 14_000, 1);
    // A request that five pages serve still works.
    let r = alloc(&mut a, &mut src, 20_000, 8);
    assert_eq!(a.stats().regions, 3);
    fill(r, 20_000, 2);
    // SAFETY: `blocker` was mapped above and is not used.
    unsafe { src.unmap_pages(blocker, 1) };
    check(q, 14_000, 1);
    check(r, 20_000, 2);
    for (ptr, size) in [(p, 3000), (q, 14_000), (r, 20_000)] {
        free(&mut a, &mut src, ptr, size, 8);
    }
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

/// Near its full length a region grows by what room is left (less than four pages) rather than
/// refusing and leaving that room unused.
#[test]
fn a_region_fills_its_last_pages_before_another_is_mapped() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    // A fresh region of ten pages, grown by four for the second block: fourteen.
    let p = alloc(&mut a, &mut src, 40_000, 8);
    assert_eq!(a.stats().region_bytes, 10 * PAGE_SIZE);
    let q = alloc(&mut a, &mut src, 13_000, 8);
    assert_eq!(a.stats().region_bytes, 14 * PAGE_SIZE);
    // The third block lacks two pages; two pages of room are left, and they are what it gets.
    let r = alloc(&mut a, &mut src, 9000, 8);
    let s = a.stats();
    assert_eq!((s.regions, s.region_bytes), (1, REGION_FULL));
    assert_eq!(src.map_calls(), 1);
    for (ptr, size) in [(p, 40_000), (q, 13_000), (r, 9000)] {
        fill(ptr, size, size as u64);
    }
    for (ptr, size) in [(p, 40_000), (q, 13_000), (r, 9000)] {
        check(ptr, size, size as u64);
        free(&mut a, &mut src, ptr, size, 8);
    }
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

/// A region waiting on the excess list holds its pages: a page run cannot grow into them until
/// the region goes (the heap's growth path releases what waits, then tries again).
#[test]
fn a_waiting_region_holds_its_pages_until_released() {
    let mut src = ArenaSource::new(512);
    let mut a = LargeAlloc::new();
    let run = alloc(&mut a, &mut src, 100_000, 8);
    fill(run, 100_000, 7);
    // Regions mapped after the run (first fit: the first one right after it), filling the
    // idle limit and one more.
    let n = IDLE_LIMIT / REGION_FULL + 1;
    let blocks: Vec<_> = (0..n).map(|_| alloc(&mut a, &mut src, 60_000, 8)).collect();
    // The run's node starts its first page; 100 000 bytes and the data offset take 25 pages.
    let run_end = run.addr().get() - run.addr().get() % PAGE_SIZE + 25 * PAGE_SIZE;
    assert_eq!(blocks[0].addr().get() - REGION_HEADER - HEADER, run_end);
    // Freed last, the first region finds the idle limit reached and waits as excess.
    for &p in blocks.iter().rev() {
        free(&mut a, &mut src, p, 60_000, 8);
    }
    assert_eq!(a.excess_len, 1);
    let regions = a.stats().regions;
    // SAFETY: `run` is live with 100 000 bytes.
    assert!(!unsafe { a.resize_in_place(&mut src, run, layout(100_000, 8), 150_000) });
    a.release_excess(&mut src);
    // SAFETY: as above.
    assert!(unsafe { a.resize_in_place(&mut src, run, layout(100_000, 8), 150_000) });
    check(run, 100_000, 7);
    assert_eq!((a.stats().regions, a.excess_len), (regions - 1, 0));
    a.check_invariants().unwrap();
    free(&mut a, &mut src, run, 150_000, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}
