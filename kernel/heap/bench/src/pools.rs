//! Fixed-size objects: what a dedicated pool (Linux's `kmem_cache`, our `Heap::create_pool` /
//! `ObjectPool`) is for. Many objects of one layout are kept live while the timed calls free a
//! random one and allocate a new one, and four ways of serving them are compared: a kheap user
//! pool, slabmalloc's fixed-size `SCAllocator` (the registry's slab allocator for kernels), and
//! the general allocators of kheap and talc for the same layout.
//!
//! The method is the main benchmark's: every contestant is verified first (every block patterned
//! and checked), then timed `--runs` times with the order rotated; ns per call is thread CPU
//! time; ratios to slabmalloc are taken within each run.

use std::alloc::Layout;
use std::time::Duration;

use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::replay::{self, Slots};

use crate::arena::ArenaMemory;
use crate::measure::{self, Timed};
use crate::peers::{FixedPeer, Visit, with_fixed_peer};
use crate::workload::{self, Workload};

/// Object layouts measured: a small node, a typical kernel object, a larger struct.
pub const OBJECTS: [(u32, u8); 3] = [(16, 3), (64, 3), (192, 3)];

/// Sizes of one fixed-size workload.
#[derive(Debug, Clone, Copy)]
pub struct FixedSizes {
    /// Objects live throughout the timed calls.
    pub live: usize,
    /// Timed calls (half frees, half allocations).
    pub ops: usize,
}

/// One contestant on one object layout.
#[derive(Debug, Clone)]
pub struct FixedRun {
    /// Verification result: calls checked, or what went wrong.
    pub verify: Result<usize, String>,
    /// ns per call of each timed run.
    pub ns: Vec<f64>,
    /// Ratio to slabmalloc within each run.
    pub ratio: Vec<f64>,
    /// Most bytes taken from the page source, for page-backed contestants.
    pub peak_bytes: Option<usize>,
}

/// All contestants on one object layout.
#[derive(Debug, Clone)]
pub struct FixedResult {
    /// Object size in bytes.
    pub size: u32,
    /// Description of the workload.
    pub title: String,
    /// In [`FixedPeer::ALL`] order.
    pub runs: Vec<(FixedPeer, FixedRun)>,
}

struct VerifyVisit<'a>(&'a Workload);
impl Visit for VerifyVisit<'_> {
    type Out = Result<usize, String>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        replay::verify(a, self.0, usize::MAX, &mut Slots::default()).map_err(|e| e.to_string())
    }
}

struct TimeVisit<'a>(&'a Workload, Duration);
impl Visit for TimeVisit<'_> {
    type Out = (Timed, Option<usize>);
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let t = measure::time_workload(a, self.0, Some(self.1));
        (t, t.memory.map(|m| m.peak))
    }
}

/// Runs every contestant on every object layout of [`OBJECTS`].
pub fn bench(
    sizes: FixedSizes,
    runs: usize,
    seed: u64,
    memory: &mut ArenaMemory,
    region: usize,
    budget: Duration,
) -> Vec<FixedResult> {
    OBJECTS
        .iter()
        .map(|&(size, align_log2)| {
            let w =
                workload::fixed_size("fixed-size", size, align_log2, sizes.live, sizes.ops, seed);
            let object = replay::layout(size, align_log2);
            bench_one(&w, object, runs, memory, region, budget)
        })
        .collect()
}

fn bench_one(
    w: &Workload,
    object: Layout,
    runs: usize,
    memory: &mut ArenaMemory,
    region: usize,
    budget: Duration,
) -> FixedResult {
    let mut results: Vec<(FixedPeer, FixedRun)> = FixedPeer::ALL
        .iter()
        .map(|&p| {
            let verify = with_fixed_peer(p, object, memory, region, VerifyVisit(w));
            let run = FixedRun {
                verify,
                ns: Vec::new(),
                ratio: Vec::new(),
                peak_bytes: None,
            };
            (p, run)
        })
        .collect();
    for run in 0..runs {
        let n = results.len();
        let mut run_ns = vec![f64::NAN; n];
        for k in 0..n {
            let i = (k + run) % n; // rotate the order so no contestant always runs first
            let (p, r) = &mut results[i];
            if r.verify.is_err() {
                continue;
            }
            let (t, peak) = with_fixed_peer(*p, object, memory, region, TimeVisit(w, budget));
            if t.ops_done < w.ops.len() {
                r.verify = Err(format!(
                    "stopped after {} of {} calls",
                    t.ops_done,
                    w.ops.len()
                ));
                continue;
            }
            r.ns.push(t.ns_per_op);
            r.peak_bytes = r.peak_bytes.or(peak);
            run_ns[i] = t.ns_per_op;
        }
        let slab = FixedPeer::ALL
            .iter()
            .position(|&p| p == FixedPeer::Slabmalloc)
            .map_or(f64::NAN, |i| run_ns[i]);
        for (i, (_, r)) in results.iter_mut().enumerate() {
            if run_ns[i].is_finite() {
                r.ratio.push(run_ns[i] / slab);
            }
        }
    }
    FixedResult {
        size: object.size() as u32,
        title: w.title.clone(),
        runs: results,
    }
}
