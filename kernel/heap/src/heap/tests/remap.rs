//! Page runs moved by the page source (`PageSource::remap_pages`) when they cannot grow in
//! place: success, a source that refuses, and a move abandoned half-way (the page map could not
//! record the new run), each leaving the heap consistent and the bytes where they were.

use super::*;

/// A heap with a run of `size` bytes patterned with `seed`, and a blocker run mapped right
/// after it, so that growing it cannot be done in place.
fn blocked_run(h: &mut Heap<ArenaSource>, size: usize, seed: u8) -> (NonNull<u8>, NonNull<u8>) {
    let p = h.allocate(layout(size, 8)).unwrap();
    fill(p, size, seed);
    let blocker = h.allocate(layout(70_000, 8)).unwrap();
    let next_page = (p.addr().get() + size).next_multiple_of(PAGE_SIZE);
    assert!(
        h.source().is_mapped(next_page),
        "the page after the run is taken"
    );
    (p, blocker)
}

#[test]
fn a_blocked_page_run_is_moved_by_the_source_and_keeps_its_bytes() {
    // At the start of a 2 MiB window, so the moved run lands in the leaf the heap already has.
    // In an arena the host placed anywhere, the run could reach into the next window, whose
    // leaf node the move maps: one more map call (a CI run failed that way).
    let mut h = Heap::new(ArenaSource::aligned(1024, 2 << 20));
    let (p, blocker) = blocked_run(&mut h, 100_000, 3);
    let maps = h.source().map_calls();
    let pages = h.source().mapped_pages();
    let nodes = h.stats().pages.page_map;
    // SAFETY: live block of 100_000 bytes.
    let q = unsafe { h.reallocate(p, layout(100_000, 8), 300_000) }.unwrap();
    assert_ne!(p, q);
    assert_eq!(h.source().remap_calls(), 1);
    assert_eq!(
        h.stats().pages.page_map,
        nodes,
        "no page-map node was needed"
    );
    assert_eq!(
        h.source().map_calls(),
        maps,
        "moved, not allocated and copied"
    );
    assert_eq!(
        (q.addr().get() - 1) % PAGE_SIZE,
        (p.addr().get() - 1) % PAGE_SIZE,
        "the data keeps its offset in the first page"
    );
    assert!(!h.source().is_mapped(p.addr().get()), "the old run is gone");
    // 25 pages (64 + 100_000 bytes at most) became the 74 that 300_000 bytes need.
    assert_eq!(h.source().mapped_pages(), pages + 74 - 25);
    check(q, 100_000, 3);
    fill(q, 300_000, 4);
    h.check_invariants().unwrap();
    assert_eq!(h.stats().requested_bytes, 370_000);
    // SAFETY: live blocks with these layouts.
    unsafe {
        h.deallocate(blocker, layout(70_000, 8));
        h.deallocate(q, layout(300_000, 8));
    }
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn a_refused_move_falls_back_to_a_copy_or_fails_cleanly() {
    let mut h = heap(1024);
    let (p, blocker) = blocked_run(&mut h, 100_000, 5);
    // Every call of the source refused: neither the move nor the copy can happen.
    h.source.fail_after(Some(0));
    let pages = h.source().mapped_pages();
    // SAFETY: live block of 100_000 bytes.
    let e = unsafe { h.reallocate(p, layout(100_000, 8), 300_000) };
    assert!(matches!(e, Err(AllocError::OutOfPages { .. })), "{e:?}");
    assert_eq!(h.source().remap_calls(), 0);
    assert_eq!(h.source().mapped_pages(), pages);
    check(p, 100_000, 5);
    h.check_invariants().unwrap();
    // A source that does not move runs: the block is allocated anew and copied.
    h.source.fail_after(None);
    h.source.set_remaps(false);
    // SAFETY: live block of 100_000 bytes.
    let q = unsafe { h.reallocate(p, layout(100_000, 8), 300_000) }.unwrap();
    assert_ne!(p, q);
    assert_eq!(h.source().remap_calls(), 0);
    check(q, 100_000, 5);
    h.check_invariants().unwrap();
    // SAFETY: live blocks with these layouts.
    unsafe {
        h.deallocate(blocker, layout(70_000, 8));
        h.deallocate(q, layout(300_000, 8));
    }
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn a_move_the_page_map_cannot_record_is_abandoned() {
    // An arena of two 2 MiB windows of the page map: the moved run reaches into the second,
    // whose leaf node does not exist yet.
    let mut h = Heap::new(ArenaSource::aligned(1024, 2 << 20));
    let (p, blocker) = blocked_run(&mut h, 100_000, 7);
    let nodes = h.stats().pages.page_map;
    let pages = h.source().mapped_pages();
    // The move itself is allowed, the page-map node the new run needs is not.
    h.source.fail_after(Some(1));
    // SAFETY: live block of 100_000 bytes.
    let e = unsafe { h.reallocate(p, layout(100_000, 8), 2_400_000) };
    assert!(matches!(e, Err(AllocError::OutOfPages { .. })), "{e:?}");
    assert_eq!(h.source().remap_calls(), 1, "the source moved the run");
    assert_eq!(
        h.source().mapped_pages(),
        pages,
        "and the new run went again"
    );
    assert_eq!(h.stats().pages.page_map, nodes);
    check(p, 100_000, 7);
    h.check_invariants().unwrap();
    // Once the node can be mapped, the same move goes through.
    h.source.fail_after(None);
    // SAFETY: live block of 100_000 bytes.
    let q = unsafe { h.reallocate(p, layout(100_000, 8), 2_400_000) }.unwrap();
    assert_eq!(h.source().remap_calls(), 2);
    check(q, 100_000, 7);
    fill(q, 2_400_000, 8);
    h.check_invariants().unwrap();
    // SAFETY: live blocks with these layouts.
    unsafe {
        h.deallocate(blocker, layout(70_000, 8));
        h.deallocate(q, layout(2_400_000, 8));
    }
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn over_aligned_runs_are_copied_not_moved() {
    let mut h = heap(1024);
    let l = layout(100_000, 8192);
    let p = h.allocate(l).unwrap();
    fill(p, 100_000, 9);
    let blocker = h.allocate(layout(70_000, 8)).unwrap();
    // SAFETY: live block with layout `l`.
    let q = unsafe { h.reallocate(p, l, 300_000) }.unwrap();
    assert!(q.addr().get().is_multiple_of(8192));
    assert_eq!(h.source().remap_calls(), 0);
    check(q, 100_000, 9);
    h.check_invariants().unwrap();
    // SAFETY: live blocks with these layouts.
    unsafe {
        h.deallocate(blocker, layout(70_000, 8));
        h.deallocate(q, layout(300_000, 8192));
    }
}
