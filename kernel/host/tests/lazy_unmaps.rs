//! The heap window's lazy unmaps (`kernel/src/memory/lazy_unmaps.rs`), on the simulated
//! machine: a run the spares cannot absorb stays mapped and taken (no page-table write, no
//! flush, no frame freed) until `finish_unmaps` unmaps it in bounded steps; a run that does not
//! fit the list is unmapped at once; a window call short of frames, and the release of the
//! spares (trim), finish the waiting runs first; a double unmap is caught naming the page,
//! whether the run still waits or was finished. The machine's exact frame accounting (`check`)
//! and the window's own walk (`check_all`: every waiting page taken, mapped, held once) run
//! after the steps.

use kernel_host::lazy_unmaps::{LAZY_MAX_RUN, LAZY_RUNS, LAZY_STEP};
use kernel_host::sim::Machine;
use kernel_host::spare_pages::ABSORB_MAX;

const PAGE: u64 = 4096;

fn machine() -> Machine {
    Machine::new(4000)
}

#[test]
fn a_long_run_waits_and_is_unmapped_in_bounded_steps() {
    let mut m = machine();
    let count = LAZY_MAX_RUN;
    let run = m.map_pages(count).unwrap();
    let frames: Vec<u64> = (0..count as u64)
        .map(|i| m.translate(run + i * PAGE).unwrap())
        .collect();
    let free = m.frame_stats().free;
    m.clear_tlb();
    m.unmap_pages(run, count);
    assert_eq!((m.window_mapped(), m.window_lazy()), (0, count));
    assert_eq!(m.frame_stats().free, free, "no frame freed yet");
    assert!(m.tlb().pages.is_empty() && m.tlb().all == 0, "no flush yet");
    for (i, &frame) in frames.iter().enumerate() {
        assert_eq!(
            m.translate(run + i as u64 * PAGE),
            Some(frame),
            "still mapped"
        );
    }
    m.check_all();
    // Steps of at most LAZY_STEP pages, from the run's end.
    let mut steps = Vec::new();
    loop {
        let step = m.finish_unmaps_step();
        if step == 0 {
            break;
        }
        steps.push(step);
        m.check_all();
    }
    assert_eq!(steps, [LAZY_STEP, LAZY_MAX_RUN - LAZY_STEP]);
    assert_eq!(m.window_lazy(), 0);
    assert!(
        m.frame_stats().free >= free + count as u64,
        "the frames came back"
    );
    assert_eq!(
        m.tlb().pages.len(),
        count,
        "each page flushed once unmapped"
    );
    for i in 0..count as u64 {
        assert_eq!(m.translate(run + i * PAGE), None);
    }
    // The pages are the window's again: the same run can be had.
    assert_eq!(m.map_pages(count).unwrap(), run);
    m.check_all();
}

#[test]
fn runs_that_do_not_fit_the_list_are_unmapped_at_once() {
    let mut m = machine();
    // LAZY_RUNS runs too long for the spares fill the list's run slots.
    let len = ABSORB_MAX + 1;
    let runs: Vec<u64> = (0..=LAZY_RUNS).map(|_| m.map_pages(len).unwrap()).collect();
    for &run in &runs[..LAZY_RUNS] {
        m.unmap_pages(run, len);
    }
    assert_eq!(m.window_lazy(), LAZY_RUNS * len);
    m.clear_tlb();
    m.unmap_pages(runs[LAZY_RUNS], len);
    assert_eq!(m.window_lazy(), LAZY_RUNS * len, "no slot left");
    assert_eq!(m.translate(runs[LAZY_RUNS]), None, "unmapped in the call");
    assert_eq!(m.tlb().pages.len(), len, "and flushed");
    m.check_all();
    assert_eq!(m.finish_unmaps(), LAZY_RUNS * len);
    // A run longer than LAZY_MAX_RUN is unmapped at once too.
    let big = m.map_pages(LAZY_MAX_RUN + 1).unwrap();
    m.unmap_pages(big, LAZY_MAX_RUN + 1);
    assert_eq!(m.window_lazy(), 0);
    assert_eq!(m.translate(big), None);
    m.check_all();
}

#[test]
fn a_run_map_short_of_frames_finishes_the_waiting_unmaps_and_retries() {
    let mut m = machine();
    let old = m.map_pages(LAZY_MAX_RUN).unwrap();
    m.unmap_pages(old, LAZY_MAX_RUN);
    assert_eq!(m.window_lazy(), LAZY_MAX_RUN);
    // No free frame: only the waiting run's frames can serve the request.
    m.set_free_frames(0);
    let new = m.map_pages(20).expect("the waiting run's frames");
    assert_eq!(m.window_lazy(), 0, "finished before the retry");
    assert_eq!(m.window_mapped(), 20);
    m.check_all();
    m.unmap_pages(new, 20);
    m.release_hoard();
    m.check_all();
}

#[test]
fn a_single_page_short_of_frames_finishes_the_waiting_unmaps() {
    let mut m = machine();
    let old = m.map_pages(ABSORB_MAX + 1).unwrap();
    m.unmap_pages(old, ABSORB_MAX + 1);
    // No spare, no reserve page, no free frame: the batch for a single page needs the
    // waiting run's frames.
    assert_eq!(m.release_spare_pages(), ABSORB_MAX + 1);
    let old = m.map_pages(ABSORB_MAX + 1).unwrap();
    m.unmap_pages(old, ABSORB_MAX + 1);
    assert_eq!((m.window_spare(), m.window_reserved()), (0, 0));
    m.set_free_frames(0);
    m.map_pages(1).expect("the waiting run's frames");
    assert_eq!(m.window_lazy(), 0);
    m.check_all();
    m.release_hoard();
}

#[test]
#[should_panic(expected = "already waits to be unmapped (unmapped twice?)")]
fn a_double_unmap_of_a_waiting_run_panics_naming_the_page() {
    let mut m = machine();
    let run = m.map_pages(20).unwrap();
    m.unmap_pages(run, 20);
    // Its second half, again.
    m.unmap_pages(run + 10 * PAGE, 10);
}

#[test]
#[should_panic(expected = "is not mapped for the heap (unmapped twice?)")]
fn a_double_unmap_after_the_finish_panics_naming_the_page() {
    let mut m = machine();
    let run = m.map_pages(20).unwrap();
    m.unmap_pages(run, 20);
    assert_eq!(m.finish_unmaps(), 20);
    m.unmap_pages(run, 20);
}

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn every_path_refuses_a_waiting_page_naming_it() {
    // The machine is deterministic: this is where the run of each case lands.
    let run = machine().map_pages(32).unwrap();
    // A short run (the spares' path), a run whose later page waits (the lazy path), and a run
    // unmapped at once because the list is full.
    for (case, refused) in [(0, 20), (1, 16), (2, 16)] {
        let message = panic_message(move || {
            let mut m = machine();
            assert_eq!(m.map_pages(32).unwrap(), run);
            m.unmap_pages(run + 16 * PAGE, 16);
            match case {
                0 => m.unmap_pages(run + 20 * PAGE, 1),
                // Pages 0..16 are the heap's, 16.. wait.
                1 => m.unmap_pages(run, 18),
                _ => {
                    let len = ABSORB_MAX + 1;
                    for _ in 1..LAZY_RUNS {
                        let other = m.map_pages(len).unwrap();
                        m.unmap_pages(other, len);
                    }
                    m.unmap_pages(run + 15 * PAGE, 2);
                }
            }
        });
        let expected = format!(
            "page {:#x} already waits to be unmapped (unmapped twice?)",
            run + refused * PAGE
        );
        assert!(message.contains(&expected), "case {case}: {message}");
    }
}

#[test]
fn a_run_grows_over_waiting_pages_after_unmapping_them_and_a_refused_growth_changes_nothing() {
    let mut m = machine();
    let run = m.map_pages(16).unwrap();
    let next = m.map_pages(16).unwrap();
    assert_eq!(next, run + 16 * PAGE, "the neighbouring block");
    // The run shrinks to 3 pages: its 13 last wait to be unmapped.
    m.unmap_pages(run + 3 * PAGE, 13);
    assert_eq!(m.window_lazy(), 13);
    // Growing into the neighbour is refused before anything changes.
    let held = m.snapshot();
    assert!(!m.grow_pages(run, 3, 20));
    assert_eq!(m.snapshot(), held);
    assert_eq!(m.window_lazy(), 13);
    // Growing over the waiting pages unmaps them (their frames go back) and maps fresh ones.
    assert!(m.grow_pages(run, 3, 5));
    assert_eq!((m.window_lazy(), m.window_mapped()), (0, 8 + 16));
    for i in 0..8 {
        assert!(m.translate(run + i * PAGE).is_some());
    }
    for i in 8..16 {
        assert_eq!(m.translate(run + i * PAGE), None, "unmapped with their run");
    }
    m.check_all();
}
