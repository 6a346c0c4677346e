//! Page sources without a window or without placement of aligned runs.

use super::*;

/// A page source without a window (`PageSource::window` is `None`), like the kernel's
/// today: every small free looks its page up (in release builds too).
struct NoWindow(ArenaSource);

// SAFETY: forwards to `ArenaSource`, whose guarantees carry over; no window is claimed.
unsafe impl PageSource for NoWindow {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        self.0.map_pages(count)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: forwarded.
        unsafe { self.0.unmap_pages(ptr, count) }
    }
}

/// An over-aligned page run maps its own pages only — a header page and the data — and never
/// the slack an aligned placement skips: the page source finds an aligned free range
/// ([`PageSource::map_pages_aligned`]), so nothing beyond the run is mapped even for a moment.
#[test]
fn over_aligned_page_runs_map_only_their_pages() {
    // Up to 512 MiB natively (the arena is host virtual memory, touched only where mapped).
    let aligns: &[usize] = if cfg!(miri) {
        &[64 << 10, 1 << 20]
    } else {
        &[64 << 10, 1 << 20, 4 << 20, 1 << 29]
    };
    for &align in aligns {
        let mut h = heap(align / PAGE_SIZE + 64);
        h.init().unwrap();
        for size in [8, 3 * PAGE_SIZE + 1] {
            let l = layout(size, align);
            let before = h.stats().pages;
            let p = h.allocate(l).unwrap();
            assert_eq!(p.addr().get() % align, 0, "align {align:#x}");
            let s = h.stats().pages;
            let data = size.div_ceil(PAGE_SIZE);
            assert_eq!(s.large, 1 + data, "align {align:#x}, size {size}");
            assert_eq!(
                s.total - before.total,
                1 + data + s.page_map - before.page_map
            );
            // Nothing more was ever mapped than is mapped now.
            assert_eq!(h.source().peak_pages(), h.source().mapped_pages());
            fill(p, size, 3);
            check(p, size, 3);
            h.check_invariants().unwrap();
            // SAFETY: allocated above with `l`.
            unsafe { h.deallocate(p, l) };
            h.trim();
            assert_only_roots_left(&h);
        }
    }
}

/// A source that cannot place runs itself (the trait's default `map_pages_aligned`) still
/// gives an aligned run, and the slack it maps for the search goes back at once.
#[test]
fn over_aligned_page_runs_from_a_source_without_placement() {
    let align = 1 << 20;
    // An arena aligned to 2 MiB: the run then lies in the page-map leaf of the root run. (When
    // it lay in the next one, recording it mapped a leaf after the peak, and the peak fell one
    // page short of `total + slack`: the test failed for about half the arena addresses.)
    let mut h = Heap::new(NoWindow(ArenaSource::aligned(
        2 * align / PAGE_SIZE,
        2 << 20,
    )));
    h.init().unwrap();
    let l = layout(8, align);
    let p = h.allocate(l).unwrap();
    assert_eq!(p.addr().get() % align, 0);
    let s = h.stats();
    assert_eq!(s.pages.large, 2);
    assert_eq!(h.source().0.mapped_pages(), s.pages.total);
    // The search mapped the slack for a moment.
    assert!(h.source().0.peak_pages() >= s.pages.total + align / PAGE_SIZE - 1);
    h.check_invariants().unwrap();
    // SAFETY: allocated above with `l`.
    unsafe { h.deallocate(p, l) };
    h.trim();
    h.check_invariants().unwrap();
    assert_eq!(h.source().0.mapped_pages(), h.idle_pages());
}

#[test]
fn sources_without_a_window_work_the_same() {
    let mut h = Heap::new(NoWindow(ArenaSource::new(512)));
    let mut rng = crate::testing::XorShift64::new(5);
    let mut live = Vec::new();
    let rounds = if cfg!(miri) { 300 } else { 20_000 };
    for round in 0..rounds {
        if live.len() < 200 && (live.is_empty() || rng.one_in(2)) {
            let l = layout(rng.range(1, 600), 1 << rng.below(4));
            let p = h.allocate(l).unwrap();
            fill(p, l.size(), round as u8);
            live.push((p, l, round as u8));
        } else {
            let (p, l, seed) = live.swap_remove(rng.below(live.len() as u64) as usize);
            check(p, l.size(), seed);
            // SAFETY: allocated above with `l`.
            unsafe { h.deallocate(p, l) };
        }
        if round % 1000 == 0 {
            h.check_invariants().unwrap();
        }
    }
    for (p, l, _) in live {
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
    }
    h.trim();
    h.check_invariants().unwrap();
    let s = h.stats();
    assert_eq!((s.pages.root, s.pages.chunks), (FIRST_RUN_PAGES, 0));
    assert_eq!(h.source().0.mapped_pages(), s.pages.total);
}
