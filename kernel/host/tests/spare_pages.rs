//! The heap window's spare pages (`kernel/src/memory/spare_pages.rs`), on the simulated machine:
//! a single-page map maps a batch and keeps the rest as spares, later single pages take them
//! without page-table work, small unmaps become spares up to the bound (no unmap, no flush),
//! spares are released on request (trim) and when frames run short (and the call retried),
//! growth in place takes spares at the wanted address, and a double unmap of a page that
//! became a spare is caught naming it. The machine's exact frame accounting (`check`: every
//! used frame is the bitmap's, a table, a heap page, a spare, …) and the window's own walk
//! (`check_all`: every spare distinct, taken in the buddy, mapped) run after the steps.

use kernel_host::heap_window::HEAP_WINDOW_START;
use kernel_host::sim::Machine;
use kernel_host::spare_pages::{ABSORB_MAX, SPARE_BATCH, SPARE_CAPACITY};
use kheap::source::PageSourceError;

const PAGE: u64 = 4096;

/// A machine with room for a few batches and their tables.
fn machine() -> Machine {
    Machine::new(400)
}

#[test]
fn a_single_page_maps_a_batch_and_the_next_ones_take_its_spares() {
    let mut m = machine();
    let free = m.frame_stats().free;
    let first = m.map_pages(1).unwrap();
    assert_eq!(first, HEAP_WINDOW_START);
    assert_eq!((m.window_mapped(), m.window_spare()), (1, SPARE_BATCH - 1));
    let tables = m.table_frames();
    assert_eq!(
        m.frame_stats().free,
        free - SPARE_BATCH as u64 - tables,
        "one batch of frames and the tables over it"
    );
    m.check_all();
    // The spares come in ascending order, with no frame, table or flush.
    let held = m.frame_stats().free;
    m.clear_tlb();
    for i in 1..SPARE_BATCH as u64 {
        assert_eq!(m.map_pages(1).unwrap(), first + i * PAGE);
        assert_eq!(m.frame_stats().free, held);
        assert_eq!(m.table_frames(), tables);
    }
    assert_eq!(m.window_spare(), 0);
    assert!(m.tlb().pages.is_empty() && m.tlb().all == 0);
    // The next one maps the next aligned batch.
    let next = m.map_pages(1).unwrap();
    assert_eq!(next, first + SPARE_BATCH as u64 * PAGE);
    assert_eq!(m.window_spare(), SPARE_BATCH - 1);
    m.check_all();
}

#[test]
fn runs_of_more_than_one_page_never_take_spares() {
    let mut m = machine();
    let one = m.map_pages(1).unwrap();
    let run = m.map_pages(2).unwrap();
    assert_eq!(m.window_spare(), SPARE_BATCH - 1);
    assert!(
        !(one..one + SPARE_BATCH as u64 * PAGE).contains(&run),
        "a 2-page run at {run:#x} lies in the batch at {one:#x}"
    );
    m.check_all();
}

#[test]
fn an_unmapped_page_becomes_a_spare_and_is_handed_out_again() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    while m.window_spare() > 0 {
        m.map_pages(1).unwrap();
    }
    let frame = m.translate(a).unwrap();
    let free = m.frame_stats().free;
    m.clear_tlb();
    m.unmap_pages(a, 1);
    assert_eq!((m.window_mapped(), m.window_spare()), (SPARE_BATCH - 1, 1));
    assert_eq!(
        m.translate(a),
        Some(frame),
        "still mapped, to the same frame"
    );
    assert_eq!(m.frame_stats().free, free, "no frame freed");
    assert!(m.tlb().pages.is_empty() && m.tlb().all == 0, "no flush");
    m.check_all();
    assert_eq!(m.map_pages(1).unwrap(), a, "the spare first");
    assert_eq!(m.window_spare(), 0);
    m.check_all();
}

#[test]
fn absorption_stops_at_the_bound_and_the_rest_waits_to_be_unmapped() {
    let mut m = Machine::new(1200);
    // Single pages: (capacity - batch + 1) leave spares; map enough pages to fill the set.
    let pages: Vec<u64> = (0..SPARE_CAPACITY + 8)
        .map(|_| m.map_pages(1).unwrap())
        .collect();
    let spare0 = m.window_spare();
    let mut absorbed = 0;
    for &p in &pages {
        let before = m.window_spare();
        m.clear_tlb();
        m.unmap_pages(p, 1);
        if before < SPARE_CAPACITY {
            assert_eq!(m.window_spare(), before + 1, "room left: absorbed");
            assert!(m.translate(p).is_some());
            absorbed += 1;
        } else {
            // A full set: the page waits to be unmapped (lazy unmaps), still mapped, no flush.
            assert_eq!(m.window_spare(), SPARE_CAPACITY, "the bound holds");
            assert!(m.translate(p).is_some(), "a full set: left mapped");
            assert!(m.tlb().pages.is_empty(), "no flush yet");
        }
        m.check();
    }
    assert_eq!(absorbed, SPARE_CAPACITY - spare0);
    let waiting = pages.len() - absorbed;
    assert_eq!(m.window_lazy(), waiting);
    m.check_all();
    m.clear_tlb();
    assert_eq!(m.finish_unmaps(), waiting);
    assert_eq!(m.tlb().pages.len(), waiting, "each flushed when unmapped");
    for &p in &pages[absorbed..] {
        assert_eq!(m.translate(p), None, "unmapped by the finish");
    }
    m.check_all();
    // A run longer than ABSORB_MAX is not absorbed even with room: it waits to be unmapped.
    assert_eq!(m.release_spare_pages(), SPARE_CAPACITY);
    let long = m.map_pages(ABSORB_MAX + 1).unwrap();
    m.clear_tlb();
    m.unmap_pages(long, ABSORB_MAX + 1);
    assert_eq!((m.window_spare(), m.window_lazy()), (0, ABSORB_MAX + 1));
    assert_eq!(m.finish_unmaps(), ABSORB_MAX + 1);
    assert_eq!(m.tlb().pages.len(), ABSORB_MAX + 1);
    // A run of ABSORB_MAX pages with room is absorbed whole.
    let short = m.map_pages(ABSORB_MAX).unwrap();
    m.unmap_pages(short, ABSORB_MAX);
    assert_eq!(m.window_spare(), ABSORB_MAX);
    m.check_all();
}

#[test]
fn releasing_spares_gives_everything_back() {
    let mut m = machine();
    let start = m.snapshot();
    let a = m.map_pages(1).unwrap();
    let b = m.map_pages(3).unwrap();
    m.unmap_pages(a, 1);
    m.unmap_pages(b, 3);
    assert_eq!(m.window_mapped(), 0);
    assert_eq!(m.window_spare(), SPARE_BATCH + 3);
    m.check_all();
    m.clear_tlb();
    assert_eq!(m.release_spare_pages(), SPARE_BATCH + 3);
    // Every released page was flushed.
    for page in (0..SPARE_BATCH as u64)
        .map(|i| a + i * PAGE)
        .chain([b, b + PAGE, b + 2 * PAGE])
    {
        assert!(
            m.tlb().pages.contains(&page),
            "{page:#x} released without a flush"
        );
        assert_eq!(m.translate(page), None);
    }
    assert_eq!(
        m.snapshot(),
        start,
        "back to the start: frames, tables, buddy"
    );
    assert_eq!(m.release_spare_pages(), 0);
    m.check_all();
}

#[test]
fn a_single_page_with_no_frame_free_takes_a_spare() {
    let mut m = machine();
    m.map_pages(1).unwrap();
    m.set_free_frames(0);
    assert!(m.map_pages(1).is_ok());
    assert_eq!(m.window_spare(), SPARE_BATCH - 2);
    m.release_hoard();
    m.check_all();
}

#[test]
fn a_batch_short_of_frames_maps_one_page() {
    let mut m = machine();
    // The window's first page needs a PDPT, a PD and a PT, plus its frame: 4 frames, fewer than
    // a batch needs.
    m.set_free_frames(4);
    let a = m.map_pages(1).unwrap();
    assert_eq!((m.window_mapped(), m.window_spare()), (1, 0));
    assert_eq!(m.frame_stats().free, 0);
    m.release_hoard();
    m.unmap_pages(a, 1);
    m.check_all();
}

#[test]
fn a_run_short_of_frames_releases_the_spares_and_retries() {
    let mut m = machine();
    m.map_pages(1).unwrap();
    let spares = m.window_spare() as u64;
    // A run of a batch's length lands in the same page table (the heap page keeps it): exactly
    // enough frames once the spares' frames are back.
    let count = SPARE_BATCH;
    m.set_free_frames(count as u64 - spares);
    let run = m.map_pages(count).expect("the spares' frames make room");
    assert_eq!(m.window_spare(), 0);
    assert_eq!(m.window_mapped(), 1 + count);
    assert_eq!(m.frame_stats().free, 0);
    m.release_hoard();
    m.check_all();
    m.unmap_pages(run, count);
    m.check_all();
}

#[test]
fn out_of_memory_is_reported_only_with_no_spare_left() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    m.set_free_frames(0);
    let heap_pages = m.window_mapped();
    assert_eq!(m.map_pages(64), Err(PageSourceError::OutOfMemory));
    assert_eq!(m.window_spare(), 0, "released before giving up");
    assert_eq!(m.window_mapped(), heap_pages, "the heap's pages untouched");
    assert!(m.translate(a).is_some());
    m.check();
    m.release_hoard();
    m.check_all();
}

#[test]
fn growing_in_place_takes_the_spares_at_the_wanted_address() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    let frames: Vec<u64> = (1..4).map(|i| m.translate(a + i * PAGE).unwrap()).collect();
    let free = m.frame_stats().free;
    assert!(m.grow_pages(a, 1, 3), "pages 1..4 are spares");
    assert_eq!(m.frame_stats().free, free, "no fresh frame for spares");
    assert_eq!(
        (1..4)
            .map(|i| m.translate(a + i * PAGE).unwrap())
            .collect::<Vec<_>>(),
        frames
    );
    assert_eq!((m.window_mapped(), m.window_spare()), (4, SPARE_BATCH - 4));
    m.check_all();
    // Over the batch's last spares and free pages past it: only the free ones get frames.
    let extra = 2 * SPARE_BATCH;
    let spares = m.window_spare();
    assert!(m.grow_pages(a, 4, extra));
    assert_eq!(m.window_spare(), 0);
    assert_eq!(m.window_mapped(), 4 + extra);
    assert_eq!(m.frame_stats().free, free - (extra - spares) as u64);
    m.check_all();
    m.unmap_pages(a, 4 + extra);
    assert_eq!(
        (m.window_spare(), m.window_lazy()),
        (0, 4 + extra),
        "a long run is not absorbed: it waits to be unmapped"
    );
    assert_eq!(m.release_spare_pages(), 4 + extra);
    m.check_all();
}

#[test]
fn a_grow_over_spares_and_used_pages_changes_nothing() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    // Page 2 of the batch goes to someone else; page 1 stays a spare.
    let pages: Vec<u64> = (0..SPARE_BATCH - 1)
        .map(|_| m.map_pages(1).unwrap())
        .collect();
    for &p in pages.iter().filter(|&&p| p != a + 2 * PAGE) {
        m.unmap_pages(p, 1);
    }
    let held = m.snapshot();
    assert!(!m.grow_pages(a, 1, 3), "page 2 is the heap's");
    assert_eq!(m.snapshot(), held);
    m.check_all();
}

#[test]
fn a_grow_short_of_frames_releases_spares_and_fails_cleanly() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    // Pages 1..8 are spares; 8 more past the batch need fresh frames, and none is free.
    m.set_free_frames(0);
    let heap_pages = m.window_mapped();
    assert!(!m.grow_pages(a, 1, 2 * SPARE_BATCH));
    assert_eq!(m.window_spare(), 0, "released for the retry");
    assert_eq!(m.window_mapped(), heap_pages);
    assert!(m.translate(a).is_some() && m.translate(a + PAGE).is_none());
    m.check();
    m.release_hoard();
    m.check_all();
}

#[test]
#[should_panic(expected = "is not mapped for the heap (unmapped twice?)")]
fn unmapping_a_spare_again_is_caught() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    m.unmap_pages(a, 1);
    m.unmap_pages(a, 1);
}

#[test]
#[should_panic(expected = "is a spare, not the heap's")]
fn a_long_unmap_over_a_spare_is_caught() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    // `a + PAGE` is a spare: a long run over it was never the heap's.
    m.unmap_pages(a, ABSORB_MAX + 1);
}

#[test]
#[should_panic(expected = "0xffffc00100000000 is not mapped for the heap")]
fn unmapping_a_released_page_again_names_it() {
    let mut m = machine();
    let a = m.map_pages(1).unwrap();
    m.unmap_pages(a, 1);
    m.release_spare_pages();
    m.unmap_pages(a, 1);
}
