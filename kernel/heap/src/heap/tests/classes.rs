//! The general classes: every class and alignment, provenance of frees, chunk lists, reallocation.

use super::*;

#[test]
fn new_maps_nothing_until_first_use() {
    let mut h = heap(64);
    assert!(!h.is_initialized());
    assert_eq!(h.source().mapped_pages(), 0);
    h.check_invariants().unwrap();
    assert_eq!(h.stats().pages.total, 0);
    let p = h.allocate(layout(8, 8)).unwrap();
    assert!(h.is_initialized());
    let s = h.stats();
    assert_eq!(s.pages.root, FIRST_RUN_PAGES);
    assert_eq!(s.pages.chunks, 1);
    assert_eq!(s.pages.total, h.source().mapped_pages());
    h.check_invariants().unwrap();
    // SAFETY: allocated above with this layout.
    unsafe { h.deallocate(p, layout(8, 8)) };
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn every_class_at_every_alignment() {
    let mut h = heap(if cfg!(miri) { 512 } else { 4096 });
    let mut live = Vec::new();
    // Miri: every class, but fewer alignments and sizes.
    let step = if cfg!(miri) { 8 } else { 2 };
    for (i, &c) in CLASS_SIZES.iter().enumerate() {
        let mut align = 1;
        while align <= PAGE_SIZE {
            let sizes = if cfg!(miri) {
                &[c][..]
            } else {
                &[c, c - c / 8, 1][..]
            };
            for &size in sizes {
                let l = layout(size, align);
                let p = h.allocate(l).unwrap();
                assert_eq!(p.addr().get() % align, 0);
                fill(p, size, i as u8);
                live.push((p, l, i as u8));
            }
            align *= step;
        }
        // (Under Miri the walk costs more than the allocations; once at the end suffices.)
        if !cfg!(miri) {
            h.check_invariants().unwrap();
        }
    }
    let s = h.stats();
    assert_eq!(
        s.requested_bytes,
        live.iter().map(|(_, l, _)| l.size()).sum::<usize>()
    );
    for (p, l, seed) in live.drain(..).rev() {
        check(p, l.size(), seed);
        // SAFETY: allocated above with this layout.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    h.trim();
    h.check_invariants().unwrap();
    assert_only_roots_left(&h);
}

/// Regression (found by Miri): the pointer a caller frees may carry the provenance of only
/// the bytes it asked for (a `Box`'s does, under Stacked Borrows), so freeing must not write
/// a 2-byte link through it for a 1-byte request, nor read the large allocator's header in
/// front of the block through it.
#[test]
fn frees_through_pointers_that_cover_only_the_request() {
    let mut h = heap(128);
    for size in [1, 2, 100, 5000, 70_000] {
        let l = layout(size, 1);
        let p = h.allocate(l).unwrap();
        // SAFETY: a fresh block of at least `size` bytes; the slice covers exactly `size`.
        let bytes = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), size) };
        let narrow = NonNull::from(bytes).cast::<u8>();
        // SAFETY: allocated above with `l`; `narrow` is the same address.
        unsafe { h.deallocate(narrow, l) };
    }
    h.check_invariants().unwrap();
}

#[test]
fn zero_sized_layouts_get_a_block() {
    let mut h = heap(64);
    let a = h.allocate(layout(0, 1)).unwrap();
    let b = h.allocate(layout(0, 64)).unwrap();
    assert_ne!(a, b);
    assert_eq!(b.addr().get() % 64, 0);
    // SAFETY: allocated above with these layouts.
    unsafe {
        h.deallocate(a, layout(0, 1));
        h.deallocate(b, layout(0, 64));
    }
    h.check_invariants().unwrap();
}

#[test]
fn partial_list_is_lifo_and_chunks_fill_before_new_ones() {
    let mut h = heap(64);
    let l = layout(64, 8);
    let blocks: Vec<_> = (0..128).map(|_| h.allocate(l).unwrap()).collect();
    assert_eq!(h.stats().pages.chunks, 2);
    // Free one block of the first (full) chunk and one of the second: the next allocation
    // refills the chunk that most recently became partial.
    // SAFETY: allocated above.
    unsafe {
        h.deallocate(blocks[5], l);
        h.deallocate(blocks[70], l);
    }
    assert_eq!(h.allocate(l).unwrap(), blocks[70]);
    assert_eq!(h.allocate(l).unwrap(), blocks[5]);
    assert_eq!(h.stats().pages.chunks, 2);
    h.check_invariants().unwrap();
}

#[test]
fn empty_chunks_go_back_beyond_the_reserve() {
    let mut h = heap(256);
    let l = layout(2048, 8);
    let i = CLASS_SIZES.iter().position(|&c| c == 2048).unwrap();
    let reserve = ChunkLists::new(Geometry::new(2048)).reserve_limit() as usize;
    // Enough blocks that the chunks the frees empty fill the reserve and the pending list, and
    // four more go back at once.
    let n = MAG_CAP + 2 * (reserve + PENDING_CHUNKS + 4);
    let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
    assert_eq!(h.stats().pages.chunks, n / 2);
    for &p in &blocks {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    // The magazine took the first MAG_CAP blocks freed; each free after that found it full
    // and gave its block straight back to its chunk. Refills took one fresh chunk (two blocks)
    // at a time, so blocks 2k and 2k + 1 share a chunk, and the blocks given back (the last
    // ones freed) emptied whole chunks: the reserve keeps some of them, the pending list the
    // next ones (still mapped, on no list), and the rest went back to the page source, one
    // per free.
    let s = h.stats();
    let c = s.classes[i];
    assert_eq!(c.in_use, 0, "{s}");
    assert_eq!(c.cached, MAG_CAP, "{s}");
    let given_back = n - c.cached;
    assert_eq!(c.chunks, c.cached.div_ceil(2) + reserve, "{s}");
    assert_eq!(c.free, 2 * c.chunks);
    assert_eq!(s.pages.chunks, c.chunks + PENDING_CHUNKS);
    assert_eq!(
        s.pages.chunks,
        n / 2 - (given_back / 2 - reserve - PENDING_CHUNKS)
    );
    // Everything still mapped is reused without mapping a chunk (a quiet refill may map
    // metadata ahead of need, or release a pending chunk instead).
    let again: Vec<_> = (0..c.free).map(|_| h.allocate(l).unwrap()).collect();
    let after = h.stats();
    assert_eq!(after.classes[i].chunks, c.chunks);
    assert!(after.pages.chunks < s.pages.chunks && after.pages.chunks >= c.chunks);
    h.check_invariants().unwrap();
    for p in again {
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn reallocate_in_place_and_by_moving() {
    let mut h = heap(1024);
    let l = layout(100, 8);
    let p = h.allocate(l).unwrap();
    fill(p, 100, 1);
    // 100 -> 104: same class (104), in place.
    // SAFETY: live block with layout `l`.
    let q = unsafe { h.reallocate(p, l, 104) }.unwrap();
    assert_eq!(p, q);
    // 104 -> 1000: moves, contents kept.
    // SAFETY: live block of size 104.
    let r = unsafe { h.reallocate(q, layout(104, 8), 1000) }.unwrap();
    assert_ne!(r, q);
    check(r, 100, 1);
    // Grow into the large allocator and back down.
    // SAFETY: live block of size 1000.
    let s = unsafe { h.reallocate(r, layout(1000, 8), 100_000) }.unwrap();
    check(s, 100, 1);
    // SAFETY: live block of size 100_000.
    let t = unsafe { h.reallocate(s, layout(100_000, 8), 90_000) }.unwrap();
    check(t, 100, 1);
    // SAFETY: live block of size 90_000.
    let u = unsafe { h.reallocate(t, layout(90_000, 8), 10) }.unwrap();
    check(u, 10, 1);
    h.check_invariants().unwrap();
    assert_eq!(h.stats().requested_bytes, 10);
    // SAFETY: live block of size 10.
    unsafe { h.deallocate(u, layout(10, 8)) };
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn page_runs_grow_in_place_when_the_next_pages_are_free() {
    let mut h = heap(1024);
    // Map and free a run of the final size first: its pages are free again, and the page-map
    // nodes that cover them stay (until `trim`), so growing into them maps nothing else
    // (where those nodes would land depends on the arena's address).
    let big = h.allocate(layout(400_000, 8)).unwrap();
    // SAFETY: live block of 400_000 bytes.
    unsafe { h.deallocate(big, layout(400_000, 8)) };
    let p = h.allocate(layout(100_000, 8)).unwrap();
    // (Each run's data starts at its own offset into the run's first page.)
    let run_start = |p: NonNull<u8>| (p.addr().get() - 1) & !(PAGE_SIZE - 1);
    assert_eq!(
        run_start(p),
        run_start(big),
        "first fit: the freed run's start"
    );
    fill(p, 100_000, 5);
    let before = h.stats().pages.large;
    // SAFETY: live block of 100_000 bytes.
    let q = unsafe { h.reallocate(p, layout(100_000, 8), 400_000) }.unwrap();
    assert_eq!(p, q, "the pages after the run were free: no move");
    assert_eq!(h.source().grow_calls(), 1);
    assert_eq!(h.stats().pages.large, before + 400_000 / PAGE_SIZE + 1 - 25);
    check(q, 100_000, 5);
    fill(q, 400_000, 6);
    h.check_invariants().unwrap();
    // With something mapped right after the run (first fit puts the next run there, unless
    // a page-map node took that page), growing moves the block instead.
    let blocker = h.allocate(layout(70_000, 8)).unwrap();
    let blocked = h
        .source()
        .is_mapped(q.addr().get() + 400_000usize.next_multiple_of(PAGE_SIZE));
    // SAFETY: live block of 400_000 bytes.
    let r = unsafe { h.reallocate(q, layout(400_000, 8), 800_000) }.unwrap();
    assert!(blocked, "the page after the run is taken");
    assert_ne!(r, q);
    check(r, 400_000, 6);
    h.check_invariants().unwrap();
    assert_eq!(h.stats().requested_bytes, 870_000);
    // SAFETY: live blocks with these layouts.
    unsafe {
        h.deallocate(blocker, layout(70_000, 8));
        h.deallocate(r, layout(800_000, 8));
    }
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn failed_reallocate_leaves_the_block_alone() {
    let mut h = heap(1024);
    let l = layout(64, 8);
    let p = h.allocate(l).unwrap();
    fill(p, 64, 9);
    h.source.fail_after(Some(0));
    // SAFETY: live block with layout `l`.
    let e = unsafe { h.reallocate(p, l, 8000) };
    assert!(matches!(e, Err(AllocError::OutOfPages { .. })), "{e:?}");
    // SAFETY: as above.
    let e = unsafe { h.reallocate(p, l, usize::MAX - 10) };
    assert!(matches!(e, Err(AllocError::TooLarge { .. })), "{e:?}");
    check(p, 64, 9);
    h.check_invariants().unwrap();
    h.source.fail_after(None);
    // SAFETY: still live with layout `l`.
    unsafe { h.deallocate(p, l) };
    h.check_invariants().unwrap();
}

#[test]
fn stats_table_prints() {
    let mut h = heap(512);
    let id = h.create_pool(40, 8).unwrap();
    let _ = h.pool_allocate(id).unwrap();
    let _ = h.allocate(layout(64, 8)).unwrap();
    let _ = h.allocate(layout(10_000, 8)).unwrap();
    let s = h.stats();
    let text = std::format!("{s}");
    assert!(text.contains("class-64"), "{text}");
    assert!(text.contains("pool#1 (40/8)"), "{text}");
    assert!(!text.contains("class-8 "), "{text}");
    assert!(text.contains("large: 1 blocks"), "{text}");
    assert_eq!(s.requested_bytes, 40 + 64 + 10_000);
    assert!(s.held_bytes >= s.requested_bytes);
    std::println!("{text}");
}
