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

/// A source with work to do ahead of need (`PageSource::prepare`): it wants `want` more
/// `prepare` calls, and counts them and its page-source calls.
struct Preparing {
    arena: ArenaSource,
    want: usize,
    prepared: usize,
    calls: usize,
}

// SAFETY: forwards to `ArenaSource`, whose guarantees carry over; `prepare` maps nothing.
unsafe impl PageSource for Preparing {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        self.calls += 1;
        self.arena.map_pages(count)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        self.calls += 1;
        // SAFETY: forwarded.
        unsafe { self.arena.unmap_pages(ptr, count) }
    }

    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        self.calls += 1;
        self.arena.grow_pages(ptr, count, extra)
    }

    fn wants_prepare(&self) -> bool {
        self.want > 0
    }

    fn prepare(&mut self) -> bool {
        assert!(self.want > 0, "prepare called though the source wants none");
        self.want -= 1;
        self.prepared += 1;
        true
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        self.arena.window()
    }
}

/// `init` lets the source do all it wants ahead of need; after it, `prepare` comes at most once
/// per call, only in allocations that made no other page-source call (a refill from mapped
/// chunks, a large block from a region the heap had), never in a free, and never when the source
/// wants nothing.
#[test]
fn prepare_runs_at_init_and_in_quiet_allocations_only() {
    let mut h = Heap::new(Preparing {
        arena: ArenaSource::aligned(4096, 16 << 20),
        want: 5,
        prepared: 0,
        calls: 0,
    });
    h.init().unwrap();
    assert_eq!(
        (h.source().want, h.source().prepared),
        (0, 5),
        "init fills it all"
    );
    h.source.want = usize::MAX;
    let mut rng = crate::testing::XorShift64::new(7);
    let mut live: Vec<(NonNull<u8>, Layout)> = Vec::new();
    let (mut quiet_small, mut quiet_large) = (0, 0);
    for step in 0..20_000 {
        let (calls, prepared) = (h.source().calls, h.source().prepared);
        if live.len() < 300 && rng.below(3) != 0 || live.is_empty() {
            let size = match rng.below(10) {
                0 => 1500 + rng.below(2000) as usize,
                1 if step % 7 == 0 => 20_000 + rng.below(40_000) as usize,
                _ => 16 + rng.below(240) as usize,
            };
            let l = layout(size, 8);
            let p = h.allocate(l).unwrap();
            let (dc, dp) = (h.source().calls - calls, h.source().prepared - prepared);
            assert!(dp <= 1, "one prepare per call at most");
            assert!(
                dc == 0 || dp == 0,
                "a call that mapped does not prepare too"
            );
            if dp == 1 {
                if size > 1024 {
                    quiet_large += 1;
                } else {
                    quiet_small += 1;
                }
            }
            live.push((p, l));
        } else {
            let (p, l) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: allocated above with `l`, freed once.
            unsafe { h.deallocate(p, l) };
            assert_eq!(h.source().prepared, prepared, "frees never prepare");
        }
    }
    assert!(
        quiet_small > 0 && quiet_large > 0,
        "{quiet_small} / {quiet_large}"
    );
    // A source that wants nothing is never asked.
    h.source.want = 0;
    let prepared = h.source().prepared;
    for (p, l) in live.drain(..) {
        // SAFETY: as above.
        unsafe { h.deallocate(p, l) };
        let again = h.allocate(l).unwrap();
        // SAFETY: just allocated.
        unsafe { h.deallocate(again, l) };
    }
    assert_eq!(h.source().prepared, prepared);
    h.trim();
    h.check_invariants().unwrap();
}
