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
use crate::measure::{self, RunSeries, Sample, Timed};
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

/// All contestants on one object layout.
#[derive(Debug, Clone)]
pub struct FixedResult {
    /// Object size in bytes.
    pub size: u32,
    /// Description of the workload.
    pub title: String,
    /// In [`FixedPeer::ALL`] order.
    pub runs: Vec<(FixedPeer, RunSeries)>,
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
    let results = measure::rounds(
        &FixedPeer::ALL,
        runs,
        FixedPeer::Slabmalloc,
        memory,
        |memory, p| with_fixed_peer(p, object, memory, region, VerifyVisit(w)),
        |memory, p| {
            let (t, peak) = with_fixed_peer(p, object, memory, region, TimeVisit(w, budget));
            if t.ops_done < w.ops.len() {
                return Err(format!(
                    "stopped after {} of {} calls",
                    t.ops_done,
                    w.ops.len()
                ));
            }
            Ok(Sample {
                ns: t.ns_per_op,
                wall_ns: t.wall_ns_per_op,
                peak_bytes: peak,
            })
        },
    );
    FixedResult {
        size: object.size() as u32,
        title: w.title.clone(),
        runs: results,
    }
}
