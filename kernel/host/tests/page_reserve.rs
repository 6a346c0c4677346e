//! The heap window's page reserve (`kernel/src/memory/page_reserve.rs`), on the simulated
//! machine: `prepare` claims a block of window pages, then maps one page per call into it up to
//! its target; a run of several pages
//! (and a single page with no spare) then comes from its front with no frame, no table and no
//! flush; a run taken from the front grows in place into the reserve's next pages (ready ones,
//! then its claimed tail); the reserve is released with the spares (trim) and when frames run
//! short (and the call retried); an unmap that reaches into it panics naming the run. The
//! machine's frame accounting (`check`) and the window's own walk (`check_all`: every reserve
//! page taken, the ready ones mapped, the tail not) run after the steps.

use kernel_host::heap_window::{HEAP_WINDOW_START, PREPARE_MIN_FREE_FRAMES};
use kernel_host::page_reserve::{RESERVE_BLOCK, RESERVE_KEEP_FOR_RUNS, RESERVE_TARGET};
use kernel_host::sim::Machine;
use kernel_host::spare_pages::{SPARE_BATCH, SPARE_CAPACITY};

const PAGE: u64 = 4096;

/// A machine with room for the reserve, a few runs and their tables.
fn machine() -> Machine {
    Machine::new(3000)
}

/// Fills the reserve to its target; returns the free frames before.
fn fill(m: &mut Machine) -> u64 {
    let free = m.frame_stats().free;
    let mut calls = 0;
    while m.wants_prepare() {
        assert!(
            m.prepare(),
            "prepare made no progress while it wanted pages"
        );
        calls += 1;
        // One call per page, and one per block claimed.
        assert!(calls <= RESERVE_TARGET + 1, "prepare kept wanting pages");
    }
    assert!(!m.prepare(), "a full reserve does nothing");
    assert_eq!(m.window_reserved(), RESERVE_TARGET);
    m.check_all();
    free
}

#[test]
fn prepare_fills_a_page_at_a_time_up_to_the_target() {
    let mut m = machine();
    assert!(m.wants_prepare(), "an empty reserve wants pages");
    let free = m.frame_stats().free;
    let tables = m.table_frames();
    m.clear_tlb();
    // The first call claims a block of window pages, and maps nothing.
    assert!(m.prepare());
    assert_eq!(m.window_reserved(), 0);
    assert_eq!(m.frame_stats().free, free);
    m.check_all();
    assert!(m.prepare());
    assert_eq!(m.window_reserved(), 1);
    let new_tables = m.table_frames() - tables;
    assert_eq!(
        m.frame_stats().free,
        free - 1 - new_tables,
        "one frame per call"
    );
    assert!(m.prepare());
    assert_eq!(m.frame_stats().free, free - 2 - new_tables);
    assert_eq!(m.window_mapped(), 0, "reserve pages are not the heap's");
    assert!(
        m.tlb().pages.is_empty() && m.tlb().all == 0,
        "mapping flushes nothing"
    );
    m.check_all();
    fill(&mut m);
}

#[test]
fn runs_and_single_pages_come_from_the_front_without_page_table_work() {
    let mut m = machine();
    fill(&mut m);
    let held = m.frame_stats().free;
    let tables = m.table_frames();
    m.clear_tlb();
    let run = m.map_pages(17).unwrap();
    assert_eq!(
        run, HEAP_WINDOW_START,
        "the reserve's block is the window's first"
    );
    let one = m.map_pages(1).unwrap();
    assert_eq!(one, run + 17 * PAGE, "no spare: the reserve's next page");
    assert_eq!(m.frame_stats().free, held, "no frame taken");
    assert_eq!(m.table_frames(), tables);
    assert!(m.tlb().pages.is_empty() && m.tlb().all == 0);
    assert_eq!(m.window_mapped(), 18);
    assert_eq!(m.window_reserved(), RESERVE_TARGET - 18);
    assert_eq!(m.window_spare(), 0, "no batch of spares was mapped");
    m.check_all();
    // A run larger than what is ready maps fresh frames elsewhere, as before.
    let big = m.map_pages(RESERVE_TARGET).unwrap();
    assert!(big >= HEAP_WINDOW_START + RESERVE_BLOCK as u64 * PAGE);
    assert_eq!(m.window_reserved(), RESERVE_TARGET - 18);
    m.check_all();
    // The pages are the heap's like any others: unmapped one by one or as runs.
    m.unmap_pages(big, RESERVE_TARGET);
    m.unmap_pages(one, 1);
    m.unmap_pages(run, 17);
    m.check_all();
}

#[test]
fn a_run_from_the_front_grows_into_the_reserve_ready_pages_then_its_tail() {
    let mut m = machine();
    fill(&mut m);
    let run = m.map_pages(4).unwrap();
    let held = m.frame_stats().free;
    // Into ready pages: no frame.
    assert!(m.grow_pages(run, 4, 8));
    assert_eq!(m.frame_stats().free, held);
    assert_eq!(m.window_reserved(), RESERVE_TARGET - 12);
    m.check_all();
    // Past the ready pages, into the claimed tail: the tail pages get fresh frames.
    let ready = m.window_reserved();
    assert!(m.grow_pages(run, 12, ready + 5));
    assert_eq!(m.window_reserved(), 0);
    assert_eq!(m.window_mapped(), 12 + ready + 5);
    assert!(m.frame_stats().free <= held - 5);
    m.check_all();
    // The reserve goes on from where the run stopped.
    let len = 12 + ready + 5;
    assert!(m.prepare());
    assert!(m.translate(run + len as u64 * PAGE).is_some());
    assert_eq!(m.window_reserved(), 1);
    // Further than the block holds: the run grows into free pages after it, as any run.
    m.release_spare_pages();
    let beyond = RESERVE_BLOCK - len + 3;
    assert!(m.grow_pages(run, len, beyond));
    m.check_all();
    m.unmap_pages(run, len + beyond);
    m.check_all();
}

#[test]
fn a_used_up_block_is_extended_when_the_next_one_is_free() {
    let mut m = Machine::new(6000);
    fill(&mut m);
    // Take pages and refill until the first block is used up.
    let mut taken = 0;
    while taken + 16 <= RESERVE_BLOCK {
        let p = m.map_pages(16).unwrap();
        assert_eq!(p, HEAP_WINDOW_START + taken as u64 * PAGE, "contiguous");
        taken += 16;
        fill(&mut m);
    }
    // Still contiguous past the first block's end.
    let p = m.map_pages(16).unwrap();
    assert_eq!(p, HEAP_WINDOW_START + taken as u64 * PAGE);
    m.check_all();
}

#[test]
fn a_stuck_reserve_hands_its_last_pages_to_the_spares_and_starts_anew() {
    let mut m = Machine::new(6000);
    fill(&mut m);
    // A run longer than the reserve holds is mapped fresh, right after the reserve's block:
    // the block cannot be extended when it is used up.
    let single = m.map_pages(RESERVE_TARGET + 1).unwrap();
    assert_eq!(single, HEAP_WINDOW_START + RESERVE_BLOCK as u64 * PAGE);
    // Runs of 16 from the front, refilling, until the block is used up: the reserve is stuck
    // with its last ready pages; once they are too few for a region, the next quiet call hands
    // them to the spares (no page-table work, no flush), and the reserve starts a new block.
    let mut handed = None;
    let mut stalled = false;
    let mut taken = 0;
    while handed.is_none() {
        assert!(
            taken + 16 <= RESERVE_BLOCK,
            "the block ran out without a hand-over"
        );
        m.map_pages(16).unwrap();
        taken += 16;
        while m.window_reserved() < RESERVE_TARGET && m.wants_prepare() {
            let (ready, spares, free) =
                (m.window_reserved(), m.window_spare(), m.frame_stats().free);
            m.clear_tlb();
            if !m.prepare() {
                // The call that finds the next block taken marks the reserve stuck and maps
                // nothing; only that one.
                assert!(!stalled, "prepare stalled twice");
                stalled = true;
                continue;
            }
            if m.window_spare() > spares {
                assert_eq!(m.window_reserved(), 0);
                assert_eq!(m.window_spare(), spares + ready);
                assert_eq!(m.frame_stats().free, free);
                assert!(m.tlb().pages.is_empty() && m.tlb().all == 0);
                m.check_all();
                handed = Some(ready);
                break;
            }
        }
    }
    // What the block had left once used up and too short for a region (the pages stay in the
    // reserve while they can serve one), and no more than the spares hold.
    assert_eq!(handed, Some(RESERVE_BLOCK - taken));
    assert!(RESERVE_BLOCK - taken < RESERVE_KEEP_FOR_RUNS);
    assert!(RESERVE_BLOCK - taken <= SPARE_CAPACITY);
    // A new block, filled again.
    fill(&mut m);
    let run = m.map_pages(16).unwrap();
    assert!(run > single, "from the new block");
    m.check_all();
}

#[test]
fn release_gives_back_the_ready_pages_and_the_tail() {
    let mut m = machine();
    let free = m.frame_stats().free;
    let tables = m.table_frames();
    fill(&mut m);
    let _ = m.map_pages(3).unwrap();
    assert_eq!(m.release_spare_pages(), RESERVE_TARGET - 3);
    assert_eq!(m.window_reserved(), 0);
    assert!(m.wants_prepare(), "empty again: it wants pages");
    m.check_all();
    m.unmap_pages(HEAP_WINDOW_START, 3);
    m.release_spare_pages();
    assert_eq!(m.frame_stats().free, free, "every frame back");
    assert_eq!(m.table_frames(), tables);
    m.check_all();
}

#[test]
fn a_map_short_of_frames_releases_the_reserve_and_retries() {
    let mut m = machine();
    fill(&mut m);
    // Fewer free frames than a run longer than the reserve needs: the first try fails, the
    // reserve's frames are released, the retry maps the run.
    m.set_free_frames(10);
    let p = m
        .map_pages(RESERVE_TARGET + 4)
        .expect("released and retried");
    assert_eq!(m.window_reserved(), 0);
    assert_eq!(m.window_mapped(), RESERVE_TARGET + 4);
    m.check_all();
    m.unmap_pages(p, RESERVE_TARGET + 4);
    assert_eq!(m.window_lazy(), 0, "too long to wait: unmapped at once");
    m.release_hoard();
    m.check_all();
    // Refused even after the release: nothing mapped, and the reserve's frames are free.
    fill(&mut m);
    m.set_free_frames(0);
    let error = m
        .map_pages(RESERVE_TARGET + 16)
        .expect_err("no memory for it");
    assert_eq!(error, kheap::source::PageSourceError::OutOfMemory);
    assert_eq!((m.window_mapped(), m.window_reserved()), (0, 0));
    // (And the table only the reserve's pages used, if any.)
    assert!(m.frame_stats().free >= RESERVE_TARGET as u64);
    m.release_hoard();
    m.check_all();
}

#[test]
fn fill_reserve_maps_up_to_the_target_in_one_call() {
    let mut m = machine();
    assert_eq!(m.fill_reserve(), RESERVE_TARGET);
    assert_eq!(m.window_reserved(), RESERVE_TARGET);
    assert!(!m.wants_prepare());
    m.check_all();
    // Full: nothing to do.
    assert_eq!(m.fill_reserve(), 0);
    // After a run took pages from the front, it maps just what is missing (the block's tail
    // still has them).
    m.map_pages(17).unwrap();
    assert_eq!(m.fill_reserve(), 17);
    assert_eq!(m.window_reserved(), RESERVE_TARGET);
    m.check_all();
    // Released with the spares, then filled again from a new block.
    m.release_spare_pages();
    assert_eq!(m.window_reserved(), 0);
    assert_eq!(m.fill_reserve(), RESERVE_TARGET);
    m.check_all();
}

#[test]
fn fill_reserve_short_of_frames_maps_nothing() {
    let mut m = machine();
    m.set_free_frames(PREPARE_MIN_FREE_FRAMES - 1);
    assert_eq!(m.fill_reserve(), 0);
    assert_eq!(m.window_reserved(), 0);
    m.release_hoard();
    assert_eq!(m.fill_reserve(), RESERVE_TARGET);
    m.check_all();
}

#[test]
fn prepare_short_of_frames_does_nothing() {
    let mut m = machine();
    m.set_free_frames(PREPARE_MIN_FREE_FRAMES - 1);
    assert!(!m.prepare(), "the last frames are not the reserve's");
    assert_eq!(m.window_reserved(), 0);
    m.release_hoard();
    assert!(m.prepare());
    m.check_all();
}

#[test]
fn a_single_page_short_of_frames_takes_a_page_kept_for_runs() {
    let mut m = machine();
    fill(&mut m);
    let kept = kernel_host::page_reserve::RESERVE_KEEP_FOR_RUNS;
    let run = m.map_pages(RESERVE_TARGET - kept).unwrap();
    assert_eq!(m.window_reserved(), kept);
    m.set_free_frames(0);
    let page = m
        .map_pages(1)
        .expect("the reserve's page rather than a refusal");
    assert_eq!(page, run + (RESERVE_TARGET - kept) as u64 * PAGE);
    assert_eq!(m.window_reserved(), kept - 1);
    m.release_hoard();
    m.check_all();
}

#[test]
#[should_panic(expected = "overlaps the page reserve")]
fn an_unmap_reaching_into_the_reserve_panics() {
    let mut m = machine();
    fill(&mut m);
    let run = m.map_pages(2).unwrap();
    m.unmap_pages(run, 3);
}

#[test]
fn without_a_reserve_a_single_page_still_maps_a_batch() {
    let mut m = machine();
    m.map_pages(1).unwrap();
    assert_eq!(m.window_spare(), SPARE_BATCH - 1);
    assert_eq!(m.window_reserved(), 0);
    m.check_all();
}
