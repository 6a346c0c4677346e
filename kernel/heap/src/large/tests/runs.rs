//! Page runs: exact mappings, over-aligned placement, in-place resizing.

use super::super::run::{LINE, RUN_MIN_OFFSET, run_shape};
use super::*;

/// The page-aligned start of the run whose data is at `ptr` (its node page).
fn run_start(ptr: NonNull<u8>) -> usize {
    (ptr.addr().get() - 1) & !(PAGE_SIZE - 1)
}

#[test]
fn page_runs_map_exactly_what_they_need() {
    let mut src = ArenaSource::new(1024);
    let mut a = LargeAlloc::new();
    // The threshold: 65_535 bytes still go to a region, 65_536 to a run.
    let p = alloc(&mut a, &mut src, 65_536, 8);
    // The first run's data starts one cache line into its node page.
    assert_eq!(p.addr().get() % PAGE_SIZE, RUN_MIN_OFFSET);
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
        assert_eq!(run_start(q), run_start(p) + 49 * PAGE_SIZE);
        let before = a.stats();
        assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), 300_000));
        assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), usize::MAX));
        assert_eq!(a.stats(), before);
        free(&mut a, &mut src, q, 100_000, 8);
        // A run stays a run below the threshold too, and is still freed as one.
        assert!(a.resize_in_place(&mut src, p, layout(200_000, 8), 1000));
        assert_eq!(a.stats().page_run_pages, 1);
    }
    check(p, 1000, 4);
    free(&mut a, &mut src, p, 1000, 8);
    assert_eq!(src.mapped_pages(), 0);
}

/// The shape of a run: as few pages as the smallest offset allows, an offset that is a multiple
/// of a cache line and of the alignment, inside the node page, and data that ends inside the run;
/// the offsets of successive turns cover every such position.
#[test]
fn run_shapes_rotate_the_offset_without_costing_pages() {
    let sizes: &[usize] = &[
        1,
        4000,
        61_440,
        65_536,
        65_537,
        17 * PAGE_SIZE - 64,
        17 * PAGE_SIZE - 65,
        100_000,
        1 << 20,
    ];
    let mut align = 1;
    while align <= 8 * PAGE_SIZE {
        for &size in sizes {
            let step = align.clamp(LINE, PAGE_SIZE);
            let minimal = if align >= PAGE_SIZE {
                1 + size.div_ceil(PAGE_SIZE)
            } else {
                (size + step).div_ceil(PAGE_SIZE)
            };
            let mut seen = Vec::new();
            // 70 turns pass every one of the at most 64 offsets.
            for turn in 0..70 {
                let (pages, offset) = run_shape(size, align, turn).unwrap();
                assert_eq!(pages, minimal, "size {size} align {align}");
                assert!((RUN_MIN_OFFSET..=PAGE_SIZE).contains(&offset));
                assert!(offset.is_multiple_of(step));
                assert!(offset + size <= pages * PAGE_SIZE);
                if !seen.contains(&offset) {
                    seen.push(offset);
                }
            }
            // Every fitting multiple of the step within a page is used.
            let room = (minimal * PAGE_SIZE - size).min(PAGE_SIZE);
            let expected = if align >= PAGE_SIZE { 1 } else { room / step };
            assert_eq!(seen.len(), expected, "size {size} align {align}");
        }
        // Every alignment natively; every fourth under Miri (slow).
        align *= if cfg!(miri) { 16 } else { 2 };
    }
    assert_eq!(run_shape(usize::MAX - 10, 8, 0), None);
    // A power-of-two buffer takes all 64 cache lines of a page in turn.
    let offsets: Vec<usize> = (0..64)
        .map(|t| run_shape(1 << 16, 8, t).unwrap().1)
        .collect();
    assert_eq!(offsets, (1..=64).map(|k| k * LINE).collect::<Vec<_>>());
}

/// Runs of one size land at rotating offsets of their pages, each inside its own run, aligned
/// as asked; every byte is theirs; they are found again by `owns`, grow and shrink in place with
/// their offset and contents, and their pages all go back when they are freed.
#[test]
fn offset_runs_stay_inside_their_runs_and_unmap_on_free() {
    let count = if cfg!(miri) { 6 } else { 64 };
    let mut src = ArenaSource::new(count * 40 + 64);
    let mut a = LargeAlloc::new();
    let mut runs = Vec::new();
    for i in 0..count {
        let align = [8, 64, 256, 4096][i % 4];
        let size = 65_536;
        let p = alloc(&mut a, &mut src, size, align);
        assert!(p.addr().get().is_multiple_of(align));
        fill(p, size, i as u64);
        runs.push((p, size, align));
    }
    // Rotation: the align-8 runs (every fourth) all start at different offsets of their page.
    let mut offsets: Vec<usize> = runs
        .iter()
        .filter(|r| r.2 == 8)
        .map(|r| r.0.addr().get() % PAGE_SIZE)
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), count.div_ceil(4));
    let mapped: usize = runs
        .iter()
        .map(|&(_, size, align)| run_shape(size, align, 0).unwrap().0)
        .sum();
    assert_eq!(src.mapped_pages(), mapped);
    for (i, &(p, size, align)) in runs.iter().enumerate() {
        check(p, size, i as u64);
        assert!(a.owns(p));
        for delta in [LINE, 16, PAGE_SIZE] {
            let before = p.as_ptr().wrapping_sub(delta);
            let after = p.as_ptr().wrapping_add(delta);
            assert!(!a.owns(NonNull::new(before).unwrap()));
            assert!(!a.owns(NonNull::new(after).unwrap()));
        }
        // SAFETY: live with this layout.
        let usable = unsafe { a.usable_size(p, layout(size, align)) };
        assert!(usable >= size && usable < size + PAGE_SIZE);
        // The usable bytes end at the end of the run.
        assert_eq!((p.addr().get() + usable) % PAGE_SIZE, 0);
    }
    // Shrink and grow back in place (the pages after the last run are free): same offset,
    // contents kept.
    let (p, size, align) = runs.pop().unwrap();
    // SAFETY: `p` is live with the layouts passed.
    unsafe {
        assert!(a.resize_in_place(&mut src, p, layout(size, align), 5000));
        a.check_invariants().unwrap();
        check(p, 5000, (count - 1) as u64);
        assert!(a.resize_in_place(&mut src, p, layout(5000, align), 300_000));
        a.check_invariants().unwrap();
    }
    check(p, 5000, (count - 1) as u64);
    fill(p, 300_000, 99);
    assert_eq!(
        a.stats().page_run_pages,
        mapped - run_shape(size, align, 0).unwrap().0
            + (p.addr().get() - run_start(p) + 300_000).div_ceil(PAGE_SIZE)
    );
    check(p, 300_000, 99);
    free(&mut a, &mut src, p, 300_000, align);
    for (i, &(p, size, align)) in runs.iter().enumerate() {
        check(p, size, i as u64);
        free(&mut a, &mut src, p, size, align);
    }
    assert_eq!(a.stats(), LargeStats::default());
    assert_eq!(src.mapped_pages(), 0);
}
