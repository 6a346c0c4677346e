//! `kheap-bench`: the heap core against its peers, on the host.
//!
//! ```text
//! cargo run --release -p kheap-bench -- [--quick] [--workload NAME]... [--alloc NAME]...
//!                                        [--runs N] [--seed N] [--out DIR]
//! ```
//!
//! Each workload (see the `kheap-workload` crate, shared with the in-kernel benchmark) is generated once and replayed, for every allocator (see
//! `peers`): first an untimed verification pass (`verify`), then `--runs` timed runs with the
//! allocator order rotated between runs, then five passes timing every call with `rdtsc`, each
//! on a fresh allocator: the first as measured, and each call's minimum over the five
//! (`measure::Latency`). Heap efficiency replays an allocation-heavy stream in a fixed 16 MiB
//! budget until the first failed allocation (kheap twice: over a page arena of exactly the
//! budget, and with the budget as a cap on mapped pages, as the kernel runs it). Tables go to
//! stdout; the full run writes `REPORT.md`,
//! `runs.csv` and three SVG plots (`report`, `svg`) to `results/` beside this crate.
//!
//! Beyond the op-list workloads: fixed-size objects (`pools`), talc's own heap-efficiency
//! benchmark (`talc-like`), growing vectors (`vec-growth`, the cache-aliasing pattern) and the
//! threaded section (`threads`: 1 and 2 threads, every contestant shared through `GlobalAlloc`).
//! `--kernel-tail LOG` turns the `tail` rows of a `cargo kbench` log into the in-kernel tail plots.
//! `--model` prints the placement models (`model`): how densely a placement policy could pack the
//! random-align, kernel-mix and talc-like efficiency streams at best, with no allocator behind it.
//!
//! `--quick` is the smoke mode: tiny workloads, verification on, nothing written unless `--out`
//! is given. A unit test runs it, so `cargo test -p kheap-bench` keeps the bench compiling and
//! working.

mod aliasing;
mod arena;
mod measure;
mod model;
mod peers;
mod pools;
mod report;
mod svg;
mod threads;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arena::ArenaMemory;
/// The workload generator, shared with the in-kernel benchmark (`kernel/heap/workload`).
use kheap_workload as workload;
use kheap_workload::bench_alloc::{BenchAlloc, CappedSource};
use kheap_workload::replay::{self, Slots};
use kheap_workload::vec_growth::VecGrowth;
use measure::{Efficiency, Timed};
use peers::{Peer, Visit, with_peer};
use report::{EfficiencyResult, PeerRun, Report, WorkloadResult};
use workload::{Generator, GrowthStream, Mix, Sizes, WORKLOAD_NAMES, Workload};

/// Everything the command line chooses.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    runs: usize,
    workloads: Vec<String>,
    peers: Vec<Peer>,
    seed: u64,
    out: Option<PathBuf>,
    /// Skip the latency and efficiency passes (for profiling the timed replays).
    timing_only: bool,
    /// Plot the tail rows of this kbench log instead of benchmarking.
    kernel_tail: Option<PathBuf>,
    /// Print the placement models' table instead of benchmarking.
    model: bool,
}

/// Sizes and budgets that differ between the full benchmark and the smoke mode.
#[derive(Debug, Clone, Copy)]
struct Limits {
    scale: Sizes,
    /// Arena of the timed runs: big enough that no heap runs out on any workload.
    arena_bytes: usize,
    /// Fixed budget of the heap-efficiency test.
    efficiency_bytes: usize,
    /// Longest a single timed (or latency) replay may run; only linked_list_allocator at large
    /// live sets comes near it.
    replay_budget: Duration,
    /// Longest one heap-efficiency replay may run.
    efficiency_budget: Duration,
    /// Latency passes per allocator and workload, each on a fresh allocator (the per-call
    /// minimum over them is reported beside the first pass: `measure::Latency`).
    latency_passes: usize,
    /// Body ops verified per workload (the scaling levels' setup is always verified in full).
    verify_ops: usize,
    /// The growing vectors, and the region each allocator gets for them.
    vectors: (VecGrowth, usize),
    /// Sizes of the threaded section.
    threads: threads::ThreadSizes,
}

/// Smoke mode: tiny, for `cargo test` and quick checks.
const QUICK_SIZES: Sizes = Sizes {
    churn_ops: 3_000,
    live_targets: [300, 200, 100],
    realloc_steps: 400,
    realloc_max: 64 << 10,
    scaling_levels: &[100, 1_000],
    scaling_ops: 2_000,
    // The generator every recorded host result was measured with (`Sizes::FULL`'s).
    generator: Generator::WyRand,
};

impl Limits {
    const FULL: Self = Self {
        scale: Sizes::FULL,
        arena_bytes: 64 << 20,
        efficiency_bytes: 16 << 20,
        replay_budget: Duration::from_secs(2),
        efficiency_budget: Duration::from_secs(10),
        latency_passes: 5,
        verify_ops: 100_000,
        // The vectors end at 128 KiB each (125 MiB together); an allocator that cannot grow them
        // in place leaves the smaller copies behind as holes.
        vectors: (VecGrowth::FULL, 512 << 20),
        threads: threads::ThreadSizes::FULL,
    };
    const QUICK: Self = Self {
        scale: QUICK_SIZES,
        arena_bytes: 8 << 20,
        efficiency_bytes: 1 << 20,
        replay_budget: Duration::from_millis(300),
        efficiency_budget: Duration::from_millis(300),
        latency_passes: 2,
        verify_ops: usize::MAX,
        vectors: (
            VecGrowth {
                vectors: 100,
                elements: 1_000,
            },
            8 << 20,
        ),
        threads: threads::ThreadSizes::QUICK,
    };
}

const USAGE: &str = "\
usage: kheap-bench [options]
  --quick            smoke mode: tiny workloads, verification on, writes only with --out
  --workload NAME    run only this workload (repeatable): small-churn, kernel-mix,
                     random-align, realloc-growth, scaling, pools (fixed-size objects:
                     kheap user pools vs slabmalloc; --alloc does not apply to it),
                     talc-like (talc's heap-efficiency benchmark), vec-growth (growing
                     vectors, the cache-aliasing pattern), threads (1 and 2 threads; its
                     contestants are fixed: kheap-percpu, kheap, talc, rlsf, linked_list,
                     system, mimalloc)
  --alloc NAME       run only this allocator (repeatable): kheap, talc, rlsf, linked_list,
                     buddy, dlmalloc, good_memory, system, bump
  --runs N           timed runs per allocator and workload (default 5; 1 with --quick)
  --seed N           PRNG seed of the workloads (default 1)
  --timing-only      skip the latency and heap-efficiency passes (for profiling)
  --out DIR          where REPORT.md, runs.csv and the plots go
                     (default: kernel/heap/bench/results)
  --kernel-tail LOG  only plot the tail rows of a `cargo kbench` log into
                     kernel_tail_alloc.svg and kernel_tail_free.svg (in --out)
  --model            only print the placement models: how densely a placement policy
                     could pack the random-align, kernel-mix and talc-like efficiency
                     streams at best (no allocator runs; see src/model.rs)
";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        runs: 0,
        workloads: Vec::new(),
        peers: Vec::new(),
        seed: 1,
        out: None,
        timing_only: false,
        kernel_tail: None,
        model: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--timing-only" => o.timing_only = true,
            "--model" => o.model = true,
            "--workload" => {
                let w = value("--workload")?;
                if !WORKLOAD_NAMES.contains(&w.as_str()) && !SECTIONS.contains(&w.as_str()) {
                    return Err(format!("unknown workload {w:?}"));
                }
                o.workloads.push(w);
            }
            "--alloc" => {
                let a = value("--alloc")?;
                o.peers
                    .push(Peer::from_name(&a).ok_or(format!("unknown allocator {a:?}"))?);
            }
            "--runs" => {
                o.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--seed" => {
                o.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--out" => o.out = Some(PathBuf::from(value("--out")?)),
            "--kernel-tail" => o.kernel_tail = Some(PathBuf::from(value("--kernel-tail")?)),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 1 } else { 5 };
    }
    if o.workloads.is_empty() {
        o.workloads = WORKLOAD_NAMES.iter().map(|s| s.to_string()).collect();
        o.workloads.extend(SECTIONS.iter().map(|s| s.to_string()));
    }
    if o.peers.is_empty() {
        o.peers = Peer::ALL.to_vec();
    }
    if o.out.is_none() && !o.quick {
        o.out = Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/results"
        )));
    }
    Ok(o)
}

/// `--workload` name of the fixed-size object benchmark (module `pools`).
const POOLS: &str = "pools";
/// `--workload` name of talc's heap-efficiency benchmark (an efficiency stream only).
const TALC_LIKE: &str = "talc-like";
/// `--workload` name of the growing vectors (module `aliasing`).
const VEC_GROWTH: &str = "vec-growth";
/// `--workload` name of the threaded section (module `threads`).
const THREADS: &str = "threads";
/// The sections that are not op-list workloads, in report order.
const SECTIONS: [&str; 4] = [POOLS, TALC_LIKE, VEC_GROWTH, THREADS];

/// Largest region the bump allocator is given: a workload that would need more (the realloc
/// workload copies every vector at every doubling, about 1.6 GiB) is not run on it.
const BUMP_CAP: usize = 256 << 20;

/// Region length an allocator gets for a workload: the arena, or what a bump allocator needs.
fn region_len(peer: Peer, w: &Workload, limits: &Limits) -> usize {
    if peer == Peer::Bump {
        limits.arena_bytes.max(w.bump_bytes)
    } else {
        limits.arena_bytes
    }
}

struct VerifyVisit<'a>(&'a Workload, usize);
impl Visit for VerifyVisit<'_> {
    type Out = Result<usize, String>;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
        replay::verify(a, self.0, self.1, &mut Slots::default()).map_err(|e| e.to_string())
    }
}

struct TimeVisit<'a>(&'a Workload, Duration);
impl Visit for TimeVisit<'_> {
    type Out = Timed;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Timed {
        measure::time_workload(a, self.0, Some(self.1))
    }
}

struct LatencyVisit<'a>(&'a Workload, Duration);
impl Visit for LatencyVisit<'_> {
    type Out = replay::Latencies;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> replay::Latencies {
        measure::latency_pass(a, self.0, self.1)
    }
}

/// A heap-efficiency stream: one of the churn mixes (two allocations for every free), or talc's
/// own efficiency benchmark.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Mix(Mix),
    TalcLike,
}

impl Stream {
    /// The stream from its start, with this seed.
    fn open(self, seed: u64) -> GrowthStream {
        match self {
            Self::Mix(mix) => GrowthStream::new(mix, seed),
            Self::TalcLike => GrowthStream::talc_like(seed),
        }
    }
}

struct EfficiencyVisit(Stream, u64, Duration);
impl Visit for EfficiencyVisit {
    type Out = Efficiency;
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Efficiency {
        measure::efficiency(a, self.0.open(self.1), self.2)
    }
}

/// Verifies, times and latency-profiles every allocator on one workload.
fn bench_workload(
    w: &Workload,
    o: &Options,
    limits: &Limits,
    memory: &mut ArenaMemory,
) -> WorkloadResult {
    let started = Instant::now();
    let mut results: Vec<(Peer, PeerRun)> = o
        .peers
        .iter()
        .map(|&p| {
            let len = region_len(p, w, limits);
            if len > BUMP_CAP {
                return (
                    p,
                    PeerRun::skipped(format!("needs a {} MiB arena", len >> 20)),
                );
            }
            (
                p,
                PeerRun::new(with_peer(p, memory, len, VerifyVisit(w, limits.verify_ops))),
            )
        })
        .collect();
    for run in 0..o.runs {
        let n = results.len();
        let mut run_ns = vec![f64::NAN; n];
        for k in 0..n {
            let i = (k + run) % n; // rotate the order so no allocator always runs first
            let (p, r) = &mut results[i];
            if r.verify.is_err() || r.oom || r.skipped.is_some() {
                continue;
            }
            let t = with_peer(
                *p,
                memory,
                region_len(*p, w, limits),
                TimeVisit(w, limits.replay_budget),
            );
            if let measure::Stop::OutOfMemory(_) = t.stop {
                r.oom = true;
                continue;
            }
            r.ns.push(t.ns_per_op);
            r.wall_ns.push(t.wall_ns_per_op);
            r.ops_done = r.ops_done.min(t.ops_done);
            r.memory = r.memory.or(t.memory);
            run_ns[i] = t.ns_per_op;
        }
        let talc = o
            .peers
            .iter()
            .position(|&p| p == Peer::Talc)
            .map(|i| run_ns[i]);
        for (i, (_, r)) in results.iter_mut().enumerate() {
            if run_ns[i].is_finite() {
                r.ratio_to_talc
                    .push(talc.map_or(f64::NAN, |t| run_ns[i] / t));
            }
        }
    }
    for (p, r) in &mut results {
        if r.ok() && !o.timing_only {
            let passes = (0..limits.latency_passes.max(1))
                .map(|_| {
                    with_peer(
                        *p,
                        memory,
                        region_len(*p, w, limits),
                        LatencyVisit(w, limits.replay_budget),
                    )
                })
                .collect();
            r.latency = Some(measure::latency_of(passes));
        }
    }
    eprintln!(
        "  {:<15} {:>6.1} s",
        w.name,
        started.elapsed().as_secs_f64()
    );
    WorkloadResult {
        name: w.name.into(),
        title: w.title.clone(),
        ops: w.ops.len(),
        peers: results,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))?
                .split(':')
                .nth(1)
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "rustc ?".into(), |s| s.trim().to_string());
    format!("{cpu}, {cores} logical CPUs, Linux {os}, {rustc}, release profile")
}

/// The commit the bench was built from, and whether the heap's sources differed from it.
fn code_version() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (no git)".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--", "../src"]).is_some_and(|s| !s.trim().is_empty());
    format!(
        "commit {}; kernel/heap/src {}",
        head.trim(),
        if dirty {
            "had uncommitted changes"
        } else {
            "as committed"
        }
    )
}

/// The 1-minute load average (how busy the shared machine was).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, H. Hinnant's algorithm).
fn utc_date() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Runs the benchmark described by `o` and returns its report.
fn run(o: &Options, args: &[String]) -> Report {
    let limits = if o.quick { Limits::QUICK } else { Limits::FULL };
    let s = &limits.scale;
    let mut workloads = Vec::new();
    for name in &o.workloads {
        match name.as_str() {
            POOLS | TALC_LIKE | VEC_GROWTH | THREADS => {}
            "small-churn" => workloads.push(workload::small_churn(s, o.seed)),
            "kernel-mix" => workloads.push(workload::kernel_mix(s, o.seed)),
            "random-align" => workloads.push(workload::random_align(s, o.seed)),
            "realloc-growth" => workloads.push(workload::realloc_growth(s, o.seed)),
            "scaling" => workloads.extend(
                s.scaling_levels
                    .iter()
                    .map(|&n| workload::scaling(s, n, o.seed)),
            ),
            _ => unreachable!("names are checked when parsing"),
        }
    }
    let load_start = load_average();
    let bump_max = workloads
        .iter()
        .map(|w| w.bump_bytes)
        .filter(|&b| b <= BUMP_CAP)
        .max()
        .unwrap_or(0);
    let vec_bytes = if o.workloads.iter().any(|w| w == VEC_GROWTH) {
        limits.vectors.1
    } else {
        0
    };
    let mut memory = ArenaMemory::new(
        limits
            .arena_bytes
            .max(limits.efficiency_bytes)
            .max(bump_max)
            .max(vec_bytes),
    );
    eprintln!("arena {} MiB; bracket and workloads:", memory.len() >> 20);
    let (bracket, tsc_step) = measure::bracket_cost();
    let results: Vec<WorkloadResult> = workloads
        .iter()
        .map(|w| bench_workload(w, o, &limits, &mut memory))
        .collect();

    let mut efficiency = Vec::new();
    for (name, stream) in [
        ("small-churn", Stream::Mix(Mix::Small)),
        ("kernel-mix", Stream::Mix(Mix::Kernel)),
        ("random-align", Stream::Mix(Mix::RandomAlign)),
        (TALC_LIKE, Stream::TalcLike),
    ] {
        if o.timing_only || !o.workloads.iter().any(|w| w == name) {
            continue;
        }
        let started = Instant::now();
        let peers = o
            .peers
            .iter()
            .filter(|p| p.uses_arena())
            .map(|&p| {
                let v = EfficiencyVisit(stream, o.seed, limits.efficiency_budget);
                (p, with_peer(p, &mut memory, limits.efficiency_bytes, v))
            })
            .collect();
        // kheap again in the kernel's model: the same budget as a cap on mapped pages, over an
        // arena with room to place the runs (as `cargo kbench` caps the heap window).
        let kheap_window = o.peers.contains(&Peer::Kheap).then(|| {
            let len = limits.arena_bytes.max(limits.efficiency_bytes);
            let source = CappedSource::new(
                peers::ArenaSource::new(memory.region(len)),
                limits.efficiency_bytes / arena::PAGE,
            );
            let mut heap = kheap::Heap::new(source);
            let _ = heap.init();
            EfficiencyVisit(stream, o.seed, limits.efficiency_budget).visit(&mut heap)
        });
        eprintln!(
            "  efficiency {:<15} {:>6.1} s",
            name,
            started.elapsed().as_secs_f64()
        );
        efficiency.push(EfficiencyResult {
            name: name.into(),
            peers,
            kheap_window,
        });
    }
    let pools = if o.workloads.iter().any(|w| w == POOLS) {
        let started = Instant::now();
        let sizes = if o.quick {
            pools::FixedSizes {
                live: 200,
                ops: 2_000,
            }
        } else {
            pools::FixedSizes {
                live: 10_000,
                ops: 400_000,
            }
        };
        let r = pools::bench(
            sizes,
            o.runs,
            o.seed,
            &mut memory,
            limits.arena_bytes,
            limits.replay_budget,
        );
        eprintln!(
            "  {:<24} {:>6.1} s",
            "pools",
            started.elapsed().as_secs_f64()
        );
        r
    } else {
        Vec::new()
    };
    let vec_growth = o.workloads.iter().any(|w| w == VEC_GROWTH).then(|| {
        let started = Instant::now();
        let (shape, region) = limits.vectors;
        let r = aliasing::bench(shape, &o.peers, o.runs, &mut memory, region);
        eprintln!(
            "  {:<24} {:>6.1} s",
            VEC_GROWTH,
            started.elapsed().as_secs_f64()
        );
        r
    });
    let threads = o.workloads.iter().any(|w| w == THREADS).then(|| {
        let started = Instant::now();
        let r = threads::bench(
            limits.threads,
            o.runs,
            o.seed,
            &mut memory,
            limits.arena_bytes,
        );
        eprintln!(
            "  {:<24} {:>6.1} s",
            THREADS,
            started.elapsed().as_secs_f64()
        );
        r
    });
    Report {
        command: format!(
            "cargo run{} -p kheap-bench --{}",
            if cfg!(debug_assertions) {
                ""
            } else {
                " --release"
            },
            args.iter().map(|a| format!(" {a}")).collect::<String>()
        ),
        code: code_version(),
        machine: format!(
            "{}; load average {load_start} at start, {} at end",
            machine(),
            load_average()
        ),
        date: utc_date(),
        runs: o.runs,
        quick: o.quick,
        seed: o.seed,
        arena_bytes: limits.arena_bytes,
        efficiency_bytes: limits.efficiency_bytes,
        budget_secs: limits.replay_budget.as_secs_f64(),
        bracket,
        tsc_step,
        workloads: results,
        efficiency,
        pools,
        vec_growth,
        threads,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprint!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Some(log) = &o.kernel_tail {
        let dir = o.out.clone().unwrap_or_else(|| PathBuf::from("."));
        match report::kernel_tail_plots(log, &dir) {
            Ok(n) => eprintln!("wrote the tails of {n} allocators to {}", dir.display()),
            Err(e) => {
                eprintln!("error: {}: {e}", log.display());
                std::process::exit(1);
            }
        }
        return;
    }
    if o.model {
        let started = Instant::now();
        // The full benchmark's efficiency budget; a stream fills it in well under a million
        // calls, the cap only bounds a policy that never would.
        print!(
            "{}",
            model::table(Limits::FULL.efficiency_bytes, 10_000_000)
        );
        eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
        return;
    }
    if cfg!(debug_assertions) && !o.quick {
        eprintln!("warning: a debug build; timings are meaningless (use --release)");
    }
    let started = Instant::now();
    let report = run(&o, &args);
    print!("{}", report.tables());
    if let Some(dir) = &o.out {
        if let Err(e) = report.write(dir) {
            eprintln!("error: cannot write results to {}: {e}", dir.display());
            std::process::exit(1);
        }
        eprintln!("wrote {}", dir.join("REPORT.md").display());
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smoke mode end to end: every allocator verified and timed on tiny workloads, tables
    /// and files produced. Asserts on correctness only, never on timings.
    #[test]
    fn quick_mode_runs_everything() {
        let dir = std::env::temp_dir().join(format!("kheap-bench-smoke-{}", std::process::id()));
        let args: Vec<String> = ["--quick", "--out", dir.to_str().unwrap()]
            .map(String::from)
            .to_vec();
        let o = parse_args(&args).unwrap();
        let report = run(&o, &args);
        for w in &report.workloads {
            for (p, r) in &w.peers {
                assert!(
                    r.verify.is_ok(),
                    "{} failed verification on {}: {:?}",
                    p.name(),
                    w.name,
                    r.verify
                );
                assert!(
                    r.skipped.is_none(),
                    "{} was skipped on {}",
                    p.name(),
                    w.name
                );
                assert!(r.ok(), "{} was not timed on {}", p.name(), w.name);
            }
        }
        assert_eq!(report.workloads.len(), 4 + QUICK_SIZES.scaling_levels.len());
        assert_eq!(report.efficiency.len(), 4);
        for e in &report.efficiency {
            for (p, r) in &e.peers {
                assert!(
                    r.is_ok(),
                    "{} failed verification on {}: {r:?}",
                    p.name(),
                    e.name
                );
            }
        }
        let vectors = report.vec_growth.as_ref().unwrap();
        for (p, r) in &vectors.peers {
            assert!(r.verify.is_ok(), "{}: {:?}", p.name(), r.verify);
            assert!(!r.ns.is_empty(), "{} was not timed on vec-growth", p.name());
        }
        let threads = report.threads.as_ref().unwrap();
        assert_eq!(threads.rows.len(), peers::SharedPeer::ALL.len());
        for row in &threads.rows {
            for cell in [&row.churn, &row.pc] {
                assert!(cell.verify.is_ok(), "{}: {:?}", row.name, cell.verify);
                assert_eq!(cell.ops_per_s.len(), 2, "{}: one and two threads", row.name);
            }
        }
        report.write(&dir).unwrap();
        for f in [
            "REPORT.md",
            "runs.csv",
            "ns_per_op.svg",
            "tail_alloc.svg",
            "tail_free.svg",
            "scaling.svg",
        ] {
            assert!(dir.join(f).metadata().unwrap().len() > 0, "{f} is empty");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arguments_parse_and_reject() {
        let o = parse_args(&[
            "--workload".into(),
            "scaling".into(),
            "--runs".into(),
            "3".into(),
        ])
        .unwrap();
        assert_eq!(
            (o.workloads.as_slice(), o.runs, o.quick),
            (&["scaling".to_string()][..], 3, false)
        );
        assert!(o.out.is_some());
        assert!(parse_args(&["--quick".into()]).unwrap().out.is_none());
        assert!(parse_args(&["--workload".into(), "nope".into()]).is_err());
        assert!(parse_args(&["--alloc".into()]).is_err());
        assert_eq!(utc_date().len(), 10);
    }
}
