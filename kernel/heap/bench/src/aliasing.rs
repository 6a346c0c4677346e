//! Growing vectors on the host: the cache-aliasing pattern of issue 13 (many `Vec<u64>`-like
//! buffers grown round-robin, `kheap_workload::vec_growth`), on every allocator over the same
//! pre-touched region. Each allocator is verified first (every element written and checked after
//! every growth and before the free), then timed `--runs` times with the order rotated; the figure
//! is thread CPU time per push (the growths included), the ratio to talc is taken within each
//! run.

use std::time::Instant;

use kheap_workload::bench_alloc::BenchAlloc;
use kheap_workload::vec_growth::{Buffers, VecGrowth};

use crate::arena::ArenaMemory;
use crate::measure::thread_cpu_time;
use crate::peers::{Peer, Visit, with_peer};

/// One allocator on the growing vectors.
#[derive(Debug, Clone)]
pub struct VecRun {
    /// The verifying run: ok, or what went wrong.
    pub verify: Result<(), String>,
    /// ns per push (thread CPU time) of each timed run.
    pub ns: Vec<f64>,
    /// ns per push of wall time of each timed run.
    pub wall_ns: Vec<f64>,
    /// Ratio to talc within each run.
    pub ratio: Vec<f64>,
    /// Most bytes taken from the page source, for page-backed allocators.
    pub peak_bytes: Option<usize>,
}

/// The growing vectors on every allocator.
#[derive(Debug, Clone)]
pub struct VecResult {
    /// The shape of the workload.
    pub shape: VecGrowth,
    /// Bytes of the region each allocator got.
    pub region: usize,
    /// Per allocator, in `--alloc` order.
    pub peers: Vec<(Peer, VecRun)>,
}

struct Verify(VecGrowth);
impl Visit for Verify {
    type Out = Result<(), String>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let mut b = Buffers::default();
        let pushed = b.push_all::<A, true>(a, self.0);
        let freed = b.free_all::<A, true>(a);
        pushed.and(freed).map_err(|e| e.to_string())
    }
}

struct Time(VecGrowth);
impl Visit for Time {
    /// CPU ns and wall ns of all pushes, and the peak bytes.
    type Out = (Result<(f64, f64), String>, Option<usize>);
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        let mut b = Buffers::new(self.0);
        let (cpu0, wall0) = (thread_cpu_time(), Instant::now());
        let pushed = b.push_all::<A, false>(a, self.0);
        let (cpu, wall) = (thread_cpu_time() - cpu0, wall0.elapsed());
        let peak = a.pages().map(|p| p.peak * crate::arena::PAGE);
        let _ = b.free_all::<A, false>(a);
        let r = pushed
            .map(|()| (cpu.as_nanos() as f64, wall.as_nanos() as f64))
            .map_err(|e| e.to_string());
        (r, peak)
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
    let pushes = shape.pushes().max(1) as f64;
    let mut results: Vec<(Peer, VecRun)> = peers
        .iter()
        .map(|&p| {
            let run = VecRun {
                verify: with_peer(p, memory, region, Verify(shape)),
                ns: Vec::new(),
                wall_ns: Vec::new(),
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
            let i = (k + run) % n; // rotate the order so no allocator always runs first
            let (p, r) = &mut results[i];
            if r.verify.is_err() {
                continue;
            }
            match with_peer(*p, memory, region, Time(shape)) {
                (Ok((cpu, wall)), peak) => {
                    r.ns.push(cpu / pushes);
                    r.wall_ns.push(wall / pushes);
                    r.peak_bytes = r.peak_bytes.or(peak);
                    run_ns[i] = cpu / pushes;
                }
                (Err(e), _) => r.verify = Err(e),
            }
        }
        let talc = peers
            .iter()
            .position(|&p| p == Peer::Talc)
            .map_or(f64::NAN, |i| run_ns[i]);
        for (i, (_, r)) in results.iter_mut().enumerate() {
            if run_ns[i].is_finite() {
                r.ratio.push(run_ns[i] / talc);
            }
        }
    }
    VecResult {
        shape,
        region,
        peers: results,
    }
}
