//! Timing: whole-replay time (ns per call), per-call latency with `rdtsc`, percentiles, memory
//! after a full free, and heap efficiency in a fixed budget — over the replay loop both
//! benchmarks share (`kheap_workload::replay`).
//!
//! The figure of a timed replay is the *thread CPU time* it took (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the bench runs on shared machines, and time spent descheduled while other
//! processes run is not the allocator's cost. Wall time is recorded beside it.
//!
//! Every allocator pays the same harness cost (an op decode and a slot-table access per call);
//! the bump allocator shows what that floor is. Timed runs do not touch the blocks: only the
//! allocator writes to memory.
//!
//! Latency brackets are `lfence; rdtsc; lfence` on both sides of one call
//! (`kheap_workload::tsc::stamp`). `rdtsc` counts TSC reference cycles (constant rate, not core
//! clock cycles). The cost of an empty bracket is measured the same way and reported beside the
//! percentiles; the percentiles themselves are raw (bracket included).

use std::hint::black_box;
use std::time::{Duration, Instant};

use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::latency::Percentiles;
use kheap_workload::replay::{self, Latencies, ReplayError, Slots};
use kheap_workload::tsc::stamp;

use crate::arena::{ArenaMemory, PAGE};
use crate::workload::{GrowthStream, Workload};

/// Why a replay stopped before the end of its ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every op ran.
    Done,
    /// The allocator returned no memory at this op index.
    OutOfMemory(usize),
    /// The time budget ran out after this many ops.
    Budget(usize),
}

/// Memory of a page-backed allocator around a full free.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryUse {
    /// Peak bytes mapped from the page source during the replay.
    pub peak: usize,
    /// Bytes still mapped after every block was freed.
    pub after_free: usize,
    /// Bytes still mapped after `release()` (trim).
    pub after_trim: usize,
    /// Page-source map and unmap calls during the timed calls.
    pub calls: (u64, u64),
}

/// CPU time this thread has consumed so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is unavailable");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One timed replay of a workload's body.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Thread CPU time over the ops that ran, in nanoseconds per call.
    pub ns_per_op: f64,
    /// Wall time over the ops that ran, in nanoseconds per call.
    pub wall_ns_per_op: f64,
    /// How many body ops ran.
    pub ops_done: usize,
    /// Why it ended.
    pub stop: Stop,
    /// Page-source use, for allocators that report it.
    pub memory: Option<MemoryUse>,
}

/// Replays `w` on a fresh allocator: setup (untimed), body (timed), teardown (untimed).
pub fn time_workload<A: BenchAlloc>(a: &mut A, w: &Workload, budget: Option<Duration>) -> Timed {
    let mut slots = Slots::default();
    let started = Instant::now();
    let over = || budget.is_some_and(|b| started.elapsed() > b);
    let clock = || (thread_cpu_time(), Instant::now());
    let calls0 = a.pages().map_or((0, 0), |p| (p.maps, p.unmaps));
    let t = match replay::timed(a, w, usize::MAX, &mut slots, over, clock) {
        Ok(t) => t,
        Err(e) => {
            let _ = slots.teardown::<A, false>(a);
            let stop = match e {
                ReplayError::OutOfMemory { op, .. } => Stop::OutOfMemory(op),
                _ => Stop::OutOfMemory(0),
            };
            return Timed {
                ns_per_op: f64::NAN,
                wall_ns_per_op: f64::NAN,
                ops_done: 0,
                stop,
                memory: None,
            };
        }
    };
    let (cpu, elapsed) = (t.end.0 - t.start.0, t.end.1 - t.start.1);
    let stop = match t.stopped {
        Some(_) => Stop::OutOfMemory(t.ops),
        None if t.ops < w.ops.len() => Stop::Budget(t.ops),
        None => Stop::Done,
    };
    let ops_done = t.ops;
    let memory = a.pages().map(|p| {
        let calls = (p.maps - calls0.0, p.unmaps - calls0.1);
        let _ = slots.teardown::<A, false>(a);
        let after_free = a.pages().map_or(0, |p| p.mapped);
        a.release();
        MemoryUse {
            peak: p.peak * PAGE,
            after_free: after_free * PAGE,
            after_trim: a.pages().map_or(0, |p| p.mapped) * PAGE,
            calls,
        }
    });
    let _ = slots.teardown::<A, false>(a);
    Timed {
        ns_per_op: cpu.as_nanos() as f64 / ops_done.max(1) as f64,
        wall_ns_per_op: elapsed.as_nanos() as f64 / ops_done.max(1) as f64,
        ops_done,
        stop,
        memory,
    }
}

/// Single-call latencies of a workload, summarised: one pass as measured (raw), and the
/// per-call minimum over every pass.
///
/// A replay is deterministic: on a fresh allocator over the same arena, call `i` of every pass
/// does the same work at the same addresses. What differs between passes is what the machine
/// adds (timer interrupts, preemption on a shared VM, the host's page faults on first touch),
/// so the minimum over a few passes of each call's latency is the allocator's own cost of that
/// call, and its percentiles are repeatable where one pass's p99.9 and max are not (0.1% of
/// 200 000 calls is 200 calls, about what a few interrupts cost). Both are reported.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Allocation calls, first pass.
    pub alloc: Percentiles,
    /// Free calls, first pass.
    pub free: Percentiles,
    /// Realloc calls (when the workload has any), first pass.
    pub realloc: Option<Percentiles>,
    /// Passes the minima are taken over.
    pub passes: usize,
    /// Allocation calls, each at its minimum over the passes.
    pub alloc_min: Percentiles,
    /// Free calls, each at its minimum over the passes.
    pub free_min: Percentiles,
    /// Sorted per-call minima of the allocations, kept for the tail plot.
    pub alloc_sorted: Vec<u64>,
    /// Sorted per-call minima of the frees, kept for the tail plot.
    pub free_sorted: Vec<u64>,
    /// Whether the time budget cut a pass short (the minima cover the calls every pass made).
    pub capped: bool,
}

/// Replays `w` once, timing every call of its body separately; the samples in call order.
pub fn latency_pass<A: BenchAlloc>(a: &mut A, w: &Workload, budget: Duration) -> Latencies {
    let mut slots = Slots::default();
    let mut l = Latencies::default();
    let start = Instant::now();
    replay::latencies(a, w, &mut slots, || start.elapsed() > budget, &mut l);
    l
}

/// Summarises passes of [`latency_pass`] over one workload (at least one).
pub fn latency_of(mut passes: Vec<Latencies>) -> Latency {
    assert!(!passes.is_empty(), "latency_of needs at least one pass");
    let mut alloc_min = per_call_min(passes.iter().map(|l| l.alloc.as_slice()));
    let mut free_min = per_call_min(passes.iter().map(|l| l.free.as_slice()));
    let capped = passes.iter().any(|l| l.capped);
    let first = &mut passes[0];
    Latency {
        alloc: Percentiles::of(&mut first.alloc),
        free: Percentiles::of(&mut first.free),
        realloc: (!first.realloc.is_empty()).then(|| Percentiles::of(&mut first.realloc)),
        passes: passes.len(),
        alloc_min: Percentiles::of(&mut alloc_min),
        free_min: Percentiles::of(&mut free_min),
        alloc_sorted: alloc_min,
        free_sorted: free_min,
        capped,
    }
}

/// Element-wise minimum of sample lists taken in the same call order, over the calls every list
/// has (a pass the budget cut short has fewer).
fn per_call_min<'a>(passes: impl Iterator<Item = &'a [u64]> + Clone) -> Vec<u64> {
    let calls = passes.clone().map(<[u64]>::len).min().unwrap_or(0);
    let mut out: Vec<u64> = vec![u64::MAX; calls];
    for pass in passes {
        for (m, &x) in out.iter_mut().zip(pass) {
            *m = (*m).min(x);
        }
    }
    out
}

/// Cost of the timing bracket itself: percentiles of `stamp(); stamp()` with nothing between,
/// and the TSC's step (the greatest common divisor of the readings; virtual machines often
/// advance the TSC in coarse steps).
pub fn bracket_cost() -> (Percentiles, u64) {
    let mut samples: Vec<u64> = (0..200_000)
        .map(|_| {
            let t0 = stamp();
            black_box(());
            stamp().wrapping_sub(t0)
        })
        .collect();
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let step = samples.iter().fold(0, |g, &s| gcd(g, s));
    (Percentiles::of(&mut samples), step)
}

/// Heap efficiency of one allocator on one stream: the shared figures, or why the verification
/// that runs along failed.
pub type Efficiency = Result<replay::Efficiency, String>;

/// Replays `stream` until the first refused request (or the budget), every block patterned and
/// checked, tracking the peak of live requested bytes. The caller divides by the arena size.
pub fn efficiency<A: BenchAlloc>(
    a: &mut A,
    mut stream: GrowthStream,
    budget: Duration,
) -> Efficiency {
    /// Safety net for an allocator that never fails; far beyond what fits in any budget here.
    const MAX_OPS: usize = 50_000_000;
    let start = Instant::now();
    let mut slots = Slots::default();
    replay::efficiency(a, &mut stream, MAX_OPS, &mut slots, || {
        start.elapsed() > budget
    })
    .map_err(|e| e.to_string())
}

/// One allocator's timed runs in a section beside the main table (fixed-size objects, growing
/// vectors).
#[derive(Debug, Clone)]
pub struct RunSeries {
    /// Verification: units checked (calls, pushes), or what went wrong (also a timed run that
    /// stopped early).
    pub verify: Result<usize, String>,
    /// ns per unit (thread CPU time) of each timed run.
    pub ns: Vec<f64>,
    /// ns per unit of wall time of each timed run.
    pub wall_ns: Vec<f64>,
    /// Ratio to the section's reference allocator within each run.
    pub ratio: Vec<f64>,
    /// Most bytes taken from the page source, for page-backed allocators.
    pub peak_bytes: Option<usize>,
}

/// What one timed run of a [`RunSeries`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// ns per unit, thread CPU time.
    pub ns: f64,
    /// ns per unit, wall time.
    pub wall_ns: f64,
    /// Most bytes taken from the page source.
    pub peak_bytes: Option<usize>,
}

/// Verifies every allocator of `peers` with `verify`, then times each verified one `runs` times
/// with `time`, in rounds with the order rotated (so no allocator always runs first); ratios are
/// to `reference` within each round. A timed run that fails marks the allocator failed. Both
/// get `memory` (where the allocators' regions come from).
pub fn rounds<P: Copy + PartialEq>(
    peers: &[P],
    runs: usize,
    reference: P,
    memory: &mut ArenaMemory,
    mut verify: impl FnMut(&mut ArenaMemory, P) -> Result<usize, String>,
    mut time: impl FnMut(&mut ArenaMemory, P) -> Result<Sample, String>,
) -> Vec<(P, RunSeries)> {
    let mut results: Vec<(P, RunSeries)> = peers
        .iter()
        .map(|&p| {
            let series = RunSeries {
                verify: verify(memory, p),
                ns: Vec::new(),
                wall_ns: Vec::new(),
                ratio: Vec::new(),
                peak_bytes: None,
            };
            (p, series)
        })
        .collect();
    for run in 0..runs {
        let n = results.len();
        let mut run_ns = vec![f64::NAN; n];
        for k in 0..n {
            let i = (k + run) % n;
            let (p, r) = &mut results[i];
            if r.verify.is_err() {
                continue;
            }
            match time(memory, *p) {
                Ok(t) => {
                    r.ns.push(t.ns);
                    r.wall_ns.push(t.wall_ns);
                    r.peak_bytes = r.peak_bytes.or(t.peak_bytes);
                    run_ns[i] = t.ns;
                }
                Err(e) => r.verify = Err(e),
            }
        }
        let reference = peers
            .iter()
            .position(|&p| p == reference)
            .map_or(f64::NAN, |i| run_ns[i]);
        for (i, (_, r)) in results.iter_mut().enumerate() {
            if run_ns[i].is_finite() {
                r.ratio.push(run_ns[i] / reference);
            }
        }
    }
    results
}

/// Median of a sample (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_skips_nan_and_averages_the_middle_pair() {
        assert_eq!(median(&[3.0, 1.0, 2.0, f64::NAN]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }

    #[test]
    fn per_call_minima_cover_the_calls_every_pass_made() {
        let a = [5, 9, 1, 7];
        let b = [6, 2, 3];
        let c = [4, 8, 2, 1, 0];
        let m = per_call_min([&a[..], &b[..], &c[..]].into_iter());
        assert_eq!(m, [4, 2, 1]);
        assert!(per_call_min([&a[..], &[][..]].into_iter()).is_empty());
    }

    #[test]
    fn latency_of_reports_the_first_pass_raw_and_the_minima_apart() {
        let pass = |alloc: Vec<u64>, free: Vec<u64>, capped| Latencies {
            alloc,
            free,
            capped,
            ..Latencies::default()
        };
        // A one-call spike in each pass, at a different call: the minima remove both.
        let l = latency_of(vec![
            pass(vec![10, 900, 10, 10], vec![20, 20], false),
            pass(vec![10, 10, 800, 10], vec![20, 700], true),
        ]);
        assert_eq!(l.passes, 2);
        assert!(l.capped);
        assert_eq!(l.alloc.calls, 4);
        assert_eq!(l.alloc.max, 900);
        assert_eq!(l.alloc_min.max, 10);
        assert_eq!(l.free_min.max, 20);
        assert_eq!(l.alloc_sorted, [10, 10, 10, 10]);
        assert!(l.realloc.is_none());
    }
}
