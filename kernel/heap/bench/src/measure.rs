//! Timing: whole-replay wall time (ns per call), per-call latency with `rdtsc`, percentiles,
//! memory after a full free, and heap efficiency in a fixed budget.
//!
//! The figure of a timed replay is the *thread CPU time* it took (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the bench runs on shared machines, and time spent descheduled while other
//! processes run is not the allocator's cost. Wall time is recorded beside it.
//!
//! Replays share one slot table ([`Slots`]) and one loop ([`run_ops`]), so every allocator pays
//! the same harness cost (an op decode and a table access per call); the bump allocator shows
//! what that floor is. Timed runs do not touch the blocks: only the allocator writes to memory.
//!
//! Latency brackets are `lfence; rdtsc; lfence` on both sides of one call. `rdtsc` counts TSC
//! reference cycles (constant rate, not core clock cycles). The cost of an empty bracket is
//! measured the same way and reported beside the percentiles; the percentiles themselves are
//! raw (bracket included).

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::peers::BenchAlloc;
use crate::workload::{GrowthStream, Mix, Op, Workload};

/// Layout of a workload request.
#[inline(always)]
pub fn layout(size: u32, align_log2: u8) -> Layout {
    // Workloads only produce sizes below 4 GiB and alignments up to 4096, so this never fails.
    Layout::from_size_align(size as usize, 1 << align_log2).expect("workload layouts are valid")
}

/// The replay's slot table: the block held by each slot and its current layout.
#[derive(Debug)]
pub struct Slots {
    ptr: Vec<Option<NonNull<u8>>>,
    size: Vec<u32>,
    align_log2: Vec<u8>,
}

impl Slots {
    /// `n` empty slots.
    pub fn new(n: usize) -> Self {
        Self {
            ptr: vec![None; n],
            size: vec![0; n],
            align_log2: vec![0; n],
        }
    }

    fn grow_to(&mut self, slot: usize) {
        if slot >= self.ptr.len() {
            self.ptr.resize(slot + 1, None);
            self.size.resize(slot + 1, 0);
            self.align_log2.resize(slot + 1, 0);
        }
    }

    /// Live blocks with their layouts, in address order.
    pub fn live_by_address(&self) -> Vec<(NonNull<u8>, Layout)> {
        let mut live: Vec<_> = (0..self.ptr.len())
            .filter_map(|s| Some((self.ptr[s]?, layout(self.size[s], self.align_log2[s]))))
            .collect();
        live.sort_by_key(|(p, _)| p.as_ptr() as usize);
        live
    }

    /// Frees every live block in address order (untimed teardown). Address order keeps
    /// list-based allocators such as linked_list_allocator from turning teardown quadratic.
    pub fn free_all<A: BenchAlloc>(&mut self, a: &mut A) {
        for (p, l) in self.live_by_address() {
            // SAFETY: every pointer in the table is a live block of `a` with its recorded layout.
            unsafe { a.free(p, l) };
        }
        self.ptr.fill(None);
    }
}

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

/// Applies one op. Returns false when an allocation or reallocation failed.
///
/// # Safety
///
/// `slots` must only hold live blocks of `a` (true for any table built by replays against `a`),
/// and `op` must be consistent with it (generated workloads are).
#[inline(always)]
unsafe fn apply<A: BenchAlloc>(a: &mut A, slots: &mut Slots, op: Op) -> bool {
    match op {
        Op::Alloc {
            slot,
            size,
            align_log2,
        } => {
            let s = slot as usize;
            match a.alloc(layout(size, align_log2)) {
                Some(p) => {
                    slots.ptr[s] = Some(p);
                    slots.size[s] = size;
                    slots.align_log2[s] = align_log2;
                    true
                }
                None => false,
            }
        }
        Op::Free { slot } => {
            let s = slot as usize;
            let p = slots.ptr[s].take().expect("workload frees a live slot");
            // SAFETY: `p` is a live block of `a` with this layout (table invariant).
            unsafe { a.free(p, layout(slots.size[s], slots.align_log2[s])) };
            true
        }
        Op::Realloc { slot, new_size } => {
            let s = slot as usize;
            let p = slots.ptr[s].expect("workload reallocs a live slot");
            let old = layout(slots.size[s], slots.align_log2[s]);
            // SAFETY: `p` is live with layout `old` (table invariant); `new_size` is non-zero.
            match unsafe { a.realloc(p, old, new_size as usize) } {
                Some(q) => {
                    slots.ptr[s] = Some(q);
                    slots.size[s] = new_size;
                    true
                }
                None => false,
            }
        }
    }
}

/// Replays `ops` in chunks, checking the clock between chunks when there is a budget.
#[inline(never)]
pub fn run_ops<A: BenchAlloc>(
    a: &mut A,
    slots: &mut Slots,
    ops: &[Op],
    budget: Option<Duration>,
) -> Stop {
    /// Ops between clock checks: large enough that `Instant::now` is noise, small enough that a
    /// slow allocator overshoots its budget by little.
    const CHUNK: usize = 256;
    let start = Instant::now();
    for (c, chunk) in ops.chunks(CHUNK).enumerate() {
        for (i, &op) in chunk.iter().enumerate() {
            // SAFETY: `slots` was built by replaying the same workload against `a`.
            if !unsafe { apply(a, slots, op) } {
                return Stop::OutOfMemory(c * CHUNK + i);
            }
        }
        if budget.is_some_and(|b| start.elapsed() > b) {
            return Stop::Budget((c + 1) * CHUNK);
        }
    }
    Stop::Done
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
    let mut slots = Slots::new(w.slots);
    if let stop @ (Stop::OutOfMemory(_) | Stop::Budget(_)) = run_ops(a, &mut slots, &w.setup, None)
    {
        return Timed {
            ns_per_op: f64::NAN,
            wall_ns_per_op: f64::NAN,
            ops_done: 0,
            stop,
            memory: None,
        };
    }
    let calls0 = a.page_calls().unwrap_or_default();
    let (cpu0, start) = (thread_cpu_time(), Instant::now());
    let stop = run_ops(a, &mut slots, &w.ops, budget);
    let (cpu, elapsed) = (thread_cpu_time() - cpu0, start.elapsed());
    let ops_done = match stop {
        Stop::Done => w.ops.len(),
        Stop::OutOfMemory(n) | Stop::Budget(n) => n.min(w.ops.len()),
    };
    let memory = a.mapped_bytes().map(|_| {
        let calls1 = a.page_calls().unwrap_or_default();
        let calls = (calls1.0 - calls0.0, calls1.1 - calls0.1);
        let peak = a.peak_mapped_bytes().unwrap_or(0);
        slots.free_all(a);
        let after_free = a.mapped_bytes().unwrap_or(0);
        a.release();
        MemoryUse {
            peak,
            after_free,
            after_trim: a.mapped_bytes().unwrap_or(0),
            calls,
        }
    });
    Timed {
        ns_per_op: cpu.as_nanos() as f64 / ops_done.max(1) as f64,
        wall_ns_per_op: elapsed.as_nanos() as f64 / ops_done.max(1) as f64,
        ops_done,
        stop,
        memory,
    }
}

/// Reads the TSC between two fences, so that the calls being timed neither start before nor
/// drift past the reading.
#[inline(always)]
fn stamp() -> u64 {
    use std::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: `rdtsc` and `lfence` (SSE2, part of the x86_64 baseline) are always available on
    // x86_64 and have no memory effects.
    unsafe {
        _mm_lfence();
        let t = _rdtsc();
        _mm_lfence();
        t
    }
}

/// Percentiles of a set of single-call latencies, in TSC cycles.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// Nearest-rank percentile `q` (0..=1) of sorted samples.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Percentiles {
    /// Summarises samples (sorted in place).
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self {
            p50: percentile(samples, 0.5),
            p99: percentile(samples, 0.99),
            p999: percentile(samples, 0.999),
            max: samples.last().copied().unwrap_or(0),
        }
    }
}

/// Single-call latencies of one replay.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Allocation calls.
    pub alloc: Percentiles,
    /// Free calls.
    pub free: Percentiles,
    /// Realloc calls (when the workload has any).
    pub realloc: Option<Percentiles>,
    /// Sorted allocation latencies, kept for the CDF plot.
    pub alloc_sorted: Vec<u64>,
    /// Whether the time budget cut the replay short.
    pub capped: bool,
}

/// Replays `w` timing every call of its body separately.
pub fn latency_workload<A: BenchAlloc>(a: &mut A, w: &Workload, budget: Duration) -> Latency {
    let mut slots = Slots::new(w.slots);
    run_ops(a, &mut slots, &w.setup, None);
    let (mut allocs, mut frees, mut reallocs) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    let mut capped = false;
    for (i, &op) in w.ops.iter().enumerate() {
        let t0 = stamp();
        // SAFETY: `slots` was built by replaying this workload against `a`.
        let ok = unsafe { apply(a, &mut slots, op) };
        let dt = stamp().wrapping_sub(t0);
        if !ok {
            break;
        }
        match op {
            Op::Alloc { .. } => allocs.push(dt),
            Op::Free { .. } => frees.push(dt),
            Op::Realloc { .. } => reallocs.push(dt),
        }
        if i % 256 == 255 && start.elapsed() > budget {
            capped = true;
            break;
        }
    }
    slots.free_all(a);
    let alloc = Percentiles::of(&mut allocs);
    Latency {
        alloc,
        free: Percentiles::of(&mut frees),
        realloc: (!reallocs.is_empty()).then(|| Percentiles::of(&mut reallocs)),
        alloc_sorted: allocs,
        capped,
    }
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

/// Heap efficiency of one allocator on one mix.
#[derive(Debug, Clone, Copy)]
pub struct Efficiency {
    /// Most requested bytes live at once before the first failed allocation.
    pub peak_live: usize,
    /// Calls made before stopping.
    pub ops: usize,
    /// False when stopped by the time or op budget instead of a failed allocation (then
    /// `peak_live` is only a lower bound).
    pub failed: bool,
}

/// Replays the allocation-heavy stream of `mix` until the first failed allocation (or the
/// budget), tracking the peak of live requested bytes. The caller divides by the arena size.
pub fn efficiency<A: BenchAlloc>(a: &mut A, mix: Mix, seed: u64, budget: Duration) -> Efficiency {
    /// Safety net for an allocator that never fails; far beyond what fits in any budget here.
    const MAX_OPS: usize = 50_000_000;
    let mut stream = GrowthStream::new(mix, seed);
    let mut slots = Slots::new(0);
    let mut peak_live = 0;
    let start = Instant::now();
    let mut result = Efficiency {
        peak_live: 0,
        ops: MAX_OPS,
        failed: false,
    };
    for i in 0..MAX_OPS {
        let (op, live) = stream.next_op();
        if let Op::Alloc { slot, .. } = op {
            slots.grow_to(slot as usize);
        }
        // SAFETY: `slots` holds exactly the blocks this stream allocated from `a`.
        if !unsafe { apply(a, &mut slots, op) } {
            peak_live = peak_live.max(stream.live_bytes_before(op));
            result = Efficiency {
                peak_live,
                ops: i,
                failed: true,
            };
            break;
        }
        peak_live = peak_live.max(live);
        if i % 1024 == 1023 && start.elapsed() > budget {
            result = Efficiency {
                peak_live,
                ops: i + 1,
                failed: false,
            };
            break;
        }
    }
    result.peak_live = peak_live;
    slots.free_all(a);
    result
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
    fn percentiles_use_nearest_rank() {
        let mut s: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut s);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(median(&[3.0, 1.0, 2.0, f64::NAN]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
