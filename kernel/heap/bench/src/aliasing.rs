//! Growing vectors on the host: the cache-aliasing pattern of issue 13 (many `Vec<u64>`-like
//! buffers grown round-robin, `kheap_workload::vec_growth`), on every allocator over the same
//! pre-touched region. Each allocator is verified first (every element written and checked after
//! every growth and before the free), then timed `--runs` times with the order rotated
//! (`measure::rounds`); the figure is thread CPU time per push (the growths included), the ratio
//! to talc is taken within each run.

use std::time::Instant;

use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::vec_growth::{Buffers, VecGrowth};

use crate::arena::ArenaMemory;
use crate::measure::{self, RunSeries, Sample, thread_cpu_time};
use crate::peers::{Peer, Visit, with_peer};

/// The growing vectors on every allocator.
#[derive(Debug, Clone)]
pub struct VecResult {
    /// The shape of the workload.
    pub shape: VecGrowth,
    /// Bytes of the region each allocator got.
    pub region: usize,
    /// Per allocator, in `--alloc` order.
    pub peers: Vec<(Peer, RunSeries)>,
}

struct Verify(VecGrowth);
impl Visit for Verify {
    type Out = Result<usize, String>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let mut b = Buffers::new(self.0);
        let pushed = b.push_all::<A, true>(a, self.0);
        let freed = b.free_all::<A, true>(a);
        pushed.and(freed).map_err(|e| e.to_string())?;
        Ok(self.0.pushes())
    }
}

struct Time(VecGrowth);
impl Visit for Time {
    /// ns per push (CPU and wall) and the peak bytes.
    type Out = Result<Sample, String>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let mut b = Buffers::new(self.0);
        let (cpu0, wall0) = (thread_cpu_time(), Instant::now());
        let pushed = b.push_all::<A, false>(a, self.0);
        let (cpu, wall) = (thread_cpu_time() - cpu0, wall0.elapsed());
        let peak = a.pages().map(|p| p.peak * crate::arena::PAGE);
        let _ = b.free_all::<A, false>(a);
        let pushes = self.0.pushes().max(1) as f64;
        pushed.map_err(|e| e.to_string())?;
        Ok(Sample {
            ns: cpu.as_nanos() as f64 / pushes,
            wall_ns: wall.as_nanos() as f64 / pushes,
            peak_bytes: peak,
        })
    }
}

/// Runs the growing vectors on every allocator of `peers` with `region` bytes each.
pub fn bench(
    shape: VecGrowth,
    peers: &[Peer],
    runs: usize,
    memory: &mut ArenaMemory,
    region: usize,
) -> VecResult {
    let peers = measure::rounds(
        peers,
        runs,
        Peer::Talc,
        memory,
        |memory, p| with_peer(p, memory, region, Verify(shape)),
        |memory, p| with_peer(p, memory, region, Time(shape)),
    );
    VecResult {
        shape,
        region,
        peers,
    }
}
