//! "A failed call leaves the tables and the frame count as they were": runs of fresh pages that
//! run out of frames at every possible point — before any page is mapped, right after a 2 MiB,
//! 1 GiB or 512 GiB table boundary, part-way through a table — on the simulated machine, through
//! the mapper (`map_fresh_run`) and through the heap window (`map_pages`, `grow_pages`).
//!
//! Each case tries every number of free frames below what the run needs: the call must fail
//! with a typed error, and every page-table entry of the machine, the frame count, the mapper's
//! table count and the window's bookkeeping must be exactly as before. With exactly enough frames
//! it must succeed, and unmapping must bring back the starting state.

use kernel_host::heap_window::{HEAP_SLOT_END, HEAP_SLOT_START, HEAP_WINDOW_START};
use kernel_host::paging::MapError;
use kernel_host::sim::Machine;
use kheap::source::PageSourceError;

const PAGE: u64 = 4096;
const SPAN_2M: u64 = 1 << 21;
const SPAN_1G: u64 = 1 << 30;

/// Maps `count` raw pages from `start`, which take `needed` frames (pages and new tables): fails
/// cleanly with every smaller number of free frames, fits with exactly `needed`.
fn raw_run_fails_cleanly_until_it_fits(m: &mut Machine, start: u64, count: usize, needed: u64) {
    let before = m.snapshot();
    assert!(before.free_frames >= needed, "the machine is too small");
    for free in 0..needed {
        m.set_free_frames(free);
        let held = m.snapshot();
        assert_eq!(
            m.map_run(start, count),
            Err(MapError::OutOfFrames),
            "{free} of {needed} frames free"
        );
        assert_eq!(
            m.snapshot(),
            held,
            "a run of {count} pages at {start:#x} failing with {free} of {needed} frames free \
             changed the tables or the counts"
        );
        m.check();
    }
    m.set_free_frames(needed);
    m.map_run(start, count)
        .expect("exactly enough frames for the pages and their tables");
    assert_eq!(
        m.frame_stats().free,
        0,
        "the run took exactly {needed} frames"
    );
    m.check();
    m.release_hoard();
    m.unmap_run(start, count).unwrap();
    assert_eq!(m.snapshot(), before, "unmapping gave everything back");
    m.check();
}

#[test]
fn a_run_in_an_empty_slot_fails_before_any_page_is_mapped() {
    let mut m = Machine::new(64);
    // One page needs a PDPT, a PD and a PT first: with 1, 2 or 3 frames free the tables can be
    // made but the page cannot.
    raw_run_fails_cleanly_until_it_fits(&mut m, HEAP_SLOT_START + 5 * PAGE, 1, 3 + 1);
    raw_run_fails_cleanly_until_it_fits(&mut m, HEAP_SLOT_START, 3, 3 + 3);
}

#[test]
fn a_run_failing_right_after_a_2_mib_boundary_leaves_nothing() {
    let mut m = Machine::new(64);
    let boundary = HEAP_SLOT_START + 4 * SPAN_2M;
    // The table before the boundary exists (a page of it is mapped); the one after does not.
    m.map_run(boundary - 20 * PAGE, 1).unwrap();
    raw_run_fails_cleanly_until_it_fits(&mut m, boundary - 10 * PAGE, 20, 20 + 1);
    m.check();
}

#[test]
fn a_run_failing_right_after_a_1_gib_boundary_leaves_nothing() {
    let mut m = Machine::new(64);
    let boundary = HEAP_SLOT_START + 2 * SPAN_1G;
    m.map_run(boundary - 20 * PAGE, 1).unwrap();
    // A new PD and a new PT after the boundary.
    raw_run_fails_cleanly_until_it_fits(&mut m, boundary - 10 * PAGE, 20, 20 + 2);
}

#[test]
fn a_run_failing_right_after_a_512_gib_boundary_leaves_nothing() {
    let mut m = Machine::new(64);
    m.map_run(HEAP_SLOT_END - 20 * PAGE, 1).unwrap();
    // A new PDPT, PD and PT in the next PML4 slot.
    raw_run_fails_cleanly_until_it_fits(&mut m, HEAP_SLOT_END - 10 * PAGE, 20, 20 + 3);
}

#[test]
fn a_run_over_several_fresh_tables_fails_cleanly_at_every_point() {
    let mut m = Machine::new(1100);
    // 3 + 512 + 512 + 3 pages in four fresh PTs, under a fresh PD and PDPT.
    let start = HEAP_SLOT_START + SPAN_2M - 3 * PAGE;
    raw_run_fails_cleanly_until_it_fits(&mut m, start, 1030, 1030 + 6);
}

#[test]
fn a_run_under_the_bootloaders_tables_keeps_them() {
    let mut m = Machine::new(64);
    // Slot 0 has the bootloader's PDPT: the run across its 1 GiB boundary needs two PDs and
    // two PTs, and failing must not touch the PDPT.
    raw_run_fails_cleanly_until_it_fits(&mut m, SPAN_1G - 2 * PAGE, 4, 4 + 4);
    assert!(m.translate(SPAN_1G).is_none());
}

#[test]
fn a_run_meeting_a_mapped_page_after_new_tables_undoes_them() {
    let mut m = Machine::new(1000);
    let base = HEAP_SLOT_START;
    let mapped = base + 2 * SPAN_2M + 5 * PAGE;
    m.map_run(mapped, 1).unwrap();
    let before = m.snapshot();
    // 10 pages before the first boundary (fresh PT), 512 in a fresh PT, then the third PT,
    // whose sixth page is mapped already.
    let start = base + SPAN_2M - 10 * PAGE;
    let r = m.map_run(start, 600);
    assert!(
        matches!(r, Err(MapError::AlreadyMapped { page, .. }) if page.start_address().as_u64() == mapped),
        "{r:?}"
    );
    assert_eq!(m.snapshot(), before);
    m.check();
}

/// The heap window's `map_pages(count)` on a fresh machine: fails with `OutOfMemory` and
/// changes nothing with fewer than `needed` frames free, succeeds with exactly `needed`.
fn window_map_fails_cleanly_until_it_fits(m: &mut Machine, count: usize, needed: u64) -> u64 {
    for free in 0..needed {
        m.set_free_frames(free);
        let held = m.snapshot();
        assert_eq!(
            m.map_pages(count),
            Err(PageSourceError::OutOfMemory),
            "{free} of {needed} frames free"
        );
        assert_eq!(
            m.snapshot(),
            held,
            "map_pages({count}) failing with {free} of {needed} frames free changed something"
        );
        m.check();
    }
    m.set_free_frames(needed);
    let addr = m.map_pages(count).expect("exactly enough frames");
    assert_eq!(m.frame_stats().free, 0);
    m.release_hoard();
    m.check();
    addr
}

#[test]
fn window_runs_fail_cleanly_at_every_table_boundary() {
    let mut m = Machine::new(1200);
    let start = m.snapshot();
    // 512 pages at the window start: a PT, plus the window's PD and the slot's PDPT.
    let first = window_map_fails_cleanly_until_it_fits(&mut m, 512, 512 + 3);
    assert_eq!(first, HEAP_WINDOW_START);
    // A single page in the next 2 MiB span: only a new PT, and no page mapped when it fails.
    let single = window_map_fails_cleanly_until_it_fits(&mut m, 1, 1 + 1);
    assert_eq!(single, HEAP_WINDOW_START + SPAN_2M, "the next free block");
    // 513 pages: a 1024-page block over two fresh PTs.
    let pair = window_map_fails_cleanly_until_it_fits(&mut m, 513, 513 + 2);
    assert_eq!(pair, HEAP_WINDOW_START + 2 * SPAN_2M);
    m.unmap_pages(single, 1);
    m.unmap_pages(first, 512);
    m.unmap_pages(pair, 513);
    // The single page became a spare (mapped, not handed out) on its unmap; the long runs were
    // unmapped at once (too long to wait as lazy unmaps).
    assert_eq!(m.window_lazy(), 0);
    assert_eq!(m.release_spare_pages(), 1);
    assert_eq!(m.snapshot(), start);
    m.check_all();
}

#[test]
fn growing_a_run_across_a_table_boundary_fails_cleanly() {
    let mut m = Machine::new(1200);
    let start = m.snapshot();
    let addr = m.map_pages(512).unwrap();
    m.check();
    // The next page is in a fresh 2 MiB span: it needs a PT too.
    for free in 0..2 {
        m.set_free_frames(free);
        let held = m.snapshot();
        assert!(!m.grow_pages(addr, 512, 1), "{free} frames free");
        assert_eq!(
            m.snapshot(),
            held,
            "a refused growth with {free} frames free"
        );
        m.check();
    }
    m.set_free_frames(2);
    assert!(m.grow_pages(addr, 512, 1));
    m.release_hoard();
    // Growing over the next boundary too: 511 + 2 pages, one more PT.
    for free in 0..514 {
        m.set_free_frames(free);
        let held = m.snapshot();
        assert!(!m.grow_pages(addr, 513, 513), "{free} frames free");
        assert_eq!(m.snapshot(), held);
    }
    m.set_free_frames(514);
    assert!(m.grow_pages(addr, 513, 513));
    m.release_hoard();
    m.check();
    m.unmap_pages(addr, 1026);
    assert_eq!(m.snapshot(), start);
    m.check_all();
}

#[test]
fn aligned_runs_map_only_their_pages_and_fail_cleanly() {
    let mut m = Machine::new(64);
    let start = m.snapshot();
    // Eight bytes aligned to 512 MiB with a header page in front: two pages, and the tables of
    // the two 2 MiB spans they straddle (a PDPT, a PD and two PTs) — never the 512 MiB slack.
    let align = 512 << 20;
    let needed = 2 + 4;
    for free in 0..needed {
        m.set_free_frames(free);
        let held = m.snapshot();
        assert_eq!(
            m.map_pages_aligned(2, align, 1),
            Err(PageSourceError::OutOfMemory),
            "{free} of {needed} frames free"
        );
        assert_eq!(
            m.snapshot(),
            held,
            "a refused aligned run changed something"
        );
        m.check();
    }
    m.set_free_frames(needed);
    let addr = m
        .map_pages_aligned(2, align, 1)
        .expect("exactly enough frames");
    assert_eq!(
        (addr + PAGE) % align as u64,
        0,
        "page 1 of the run is aligned"
    );
    assert_eq!(
        m.frame_stats().free,
        0,
        "the run took exactly {needed} frames"
    );
    assert_eq!(m.window_mapped(), 2);
    m.release_hoard();
    m.check();
    assert_eq!(
        m.map_pages_aligned(1, 3 * 4096, 0),
        Err(PageSourceError::InvalidRequest),
        "an alignment that is not a power of two"
    );
    m.unmap_pages(addr, 2);
    // A two-page run becomes spares on its unmap; releasing them gives everything back.
    assert_eq!(m.release_spare_pages(), 2);
    assert_eq!(m.snapshot(), start, "unmapping gave everything back");
    m.check_all();
}
