//! Page runs: exact mappings, over-aligned placement, in-place resizing.

use super::*;

#[test]
fn page_runs_map_exactly_what_they_need() {
    let mut src = ArenaSource::new(1024);
    let mut a = LargeAlloc::new();
    // The threshold: 65_535 bytes still go to a region, 65_536 to a run.
    let p = alloc(&mut a, &mut src, 65_536, 8);
    assert_eq!(p.addr().get() % PAGE_SIZE, 0);
    let s = a.stats();
    assert_eq!((s.page_runs, s.page_run_pages, s.regions), (1, 17, 0));
    assert_eq!(src.mapped_pages(), 17);
    fill(p, 65_536, 1);
    // A small block with a large alignment is a run too.
    let q = alloc(&mut a, &mut src, 100, 64 * 1024);
    assert_eq!(a.stats().page_runs, 2);
    assert_eq!(src.mapped_pages(), 17 + 2);
    // An alignment far above the page size: the source places the run, and maps only its
    // pages. (Smaller under Miri, which is slow at patterning bytes.)
    let big = if cfg!(miri) { 1 << 17 } else { 1 << 20 };
    let r = alloc(&mut a, &mut src, big, big);
    assert_eq!(r.addr().get() % big, 0);
    assert_eq!(src.mapped_pages(), 17 + 2 + 1 + big / PAGE_SIZE);
    fill(r, big, 2);
    for ptr in [p, q, r] {
        assert!(a.owns(ptr));
        assert!(!a.owns(NonNull::new(ptr.as_ptr().wrapping_add(PAGE_SIZE)).unwrap()));
        assert!(!a.owns(NonNull::new(ptr.as_ptr().wrapping_sub(PAGE_SIZE)).unwrap()));
    }
    // SAFETY: `r` is live with this layout.
    let usable = unsafe { a.usable_size(r, layout(big, big)) };
    assert_eq!(usable, big);
    check(p, 65_536, 1);
    check(r, big, 2);
    free(&mut a, &mut src, p, 65_536, 8);
    free(&mut a, &mut src, q, 100, 64 * 1024);
    free(&mut a, &mut src, r, big, big);
    assert_eq!(a.stats(), LargeStats::default());
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn resize_in_place_of_page_runs() {
    let mut src = ArenaSource::new(256);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 200_000, 8);
    fill(p, 200_000, 3);
    let pages = src.mapped_pages();
    // SAFETY: `p` is live with the layouts passed.
    unsafe {
        assert!(a.resize_in_place(&mut src, p, layout(200_000, 8), 100_000));
        a.check_invariants().unwrap();
        assert_eq!(src.mapped_pages(), pages - (49 - 25));
        check(p, 100_000, 3);
        // The freed tail is still free: the run grows back in place, contents kept.
        assert!(a.resize_in_place(&mut src, p, layout(100_000, 8), 200_000));
        a.check_invariants().unwrap();
        assert_eq!(src.mapped_pages(), pages);
        assert_eq!(a.stats().page_run_pages, pages);
        check(p, 100_000, 3);
        fill(p, 200_000, 4);
        // A run mapped right after blocks further growth; nothing changes.
        let q = alloc(&mut a, &mut src, 100_000, 8);
        assert_eq!(q.addr().get(), p.addr().get() + 50 * PAGE_SIZE);
        let before = a.stats();
        assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), 300_000));
        assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), usize::MAX));
        assert_eq!(a.stats(), before);
        free(&mut a, &mut src, q, 100_000, 8);
        // A run stays a run below the threshold too, and is still freed as one.
        assert!(a.resize_in_place(&mut src, p, layout(200_000, 8), 1000));
        assert_eq!(a.stats().page_run_pages, 2);
    }
    check(p, 1000, 4);
    free(&mut a, &mut src, p, 1000, 8);
    assert_eq!(src.mapped_pages(), 0);
}
