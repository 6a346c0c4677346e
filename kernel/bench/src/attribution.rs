//! Where kheap's slow calls come from: the latency section's replay of the kernel-like mix on
//! kheap over the heap window, with the heap's and the window's counters read before and after
//! every call (outside the timed bracket), and the calls grouped by what they did.
//!
//! Run it alone with
//! `KERNEL_QEMU_ARGS="-icount shift=0 -fw_cfg name=opt/kbench/only,string=attribution" cargo kbench`.
//! Each row is one kind of call: which path served it (a magazine hit, a refill or a flush of a
//! class, the large allocator), how many page-source calls it made, and what changed in pages
//! (chunks, heap-window spares, regions, page runs, page-map nodes, root runs). Two columns
//! count the calls of a row above a mark: `>=kheap` kheap's own p99.9 for that kind of call (the
//! rows with a count there set the percentile), `>talc` talc's p99.9 from a replay of the same
//! mix in the same boot (for kheap's p99.9 to be at most talc's, fewer than one call in a
//! thousand of each kind may be above it).

use alloc::vec::Vec;

use kernel::memory::KernelPageSource;
use kernel::serial_println;
use kheap::Heap;
use kheap_workload::bench_alloc::CountedSource;
use kheap_workload::latency::percentile;
use kheap_workload::replay::{self, ReplayError, Slots};
use kheap_workload::{Op, Workload};

use crate::peers::CappedSource;

/// The counters read around each call.
#[derive(Debug, Clone, Copy)]
struct Probe {
    maps: u64,
    unmaps: u64,
    spare: u64,
    chunks: usize,
    cached: usize,
    live_large: usize,
    regions: usize,
    region_bytes: usize,
    runs: usize,
    nodes: usize,
    root: usize,
}

impl Probe {
    fn read<S: CountedSource>(heap: &Heap<S>) -> Self {
        let s = heap.stats();
        let use_ = heap.source().page_use();
        Self {
            maps: use_.maps,
            unmaps: use_.unmaps,
            spare: kernel::memory::stats().window_pages_spare,
            chunks: s.pages.chunks,
            cached: s.classes.iter().map(|c| c.cached).sum(),
            live_large: s.large.live_blocks,
            regions: s.large.regions,
            region_bytes: s.large.region_bytes,
            runs: s.large.page_runs,
            nodes: s.pages.page_map,
            root: s.pages.root,
        }
    }
}

/// Which path served a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// A magazine hit: one block in or out of the CPU's cache, nothing else.
    Magazine,
    /// An allocation that refilled its class's magazine.
    Refill,
    /// A free that flushed part of its class's magazine.
    Flush,
    /// The large allocator.
    Large,
    /// Anything else (a realloc, a call whose counters moved some other way).
    Other,
}

impl Path {
    const fn name(self) -> &'static str {
        match self {
            Self::Magazine => "magazine",
            Self::Refill => "refill",
            Self::Flush => "flush",
            Self::Large => "large",
            Self::Other => "other",
        }
    }
}

/// What a call did: the grouping key of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    alloc: bool,
    path: Path,
    /// The request size rounded up to a power of two (allocations; 0 for frees).
    size: u32,
    maps: i64,
    unmaps: i64,
    spare: i64,
    chunks: i64,
    regions: i64,
    region_grew: bool,
    runs: i64,
    nodes: i64,
    root: i64,
}

/// `after - before` of two counters, as a signed number.
fn delta(before: usize, after: usize) -> i64 {
    after as i64 - before as i64
}

impl Kind {
    fn of(op: Op, b: &Probe, a: &Probe) -> Self {
        let alloc = matches!(op, Op::Alloc { .. });
        let cached = delta(b.cached, a.cached);
        let large = a.live_large != b.live_large
            || a.regions != b.regions
            || a.region_bytes != b.region_bytes
            || a.runs != b.runs;
        let path = match op {
            Op::Realloc { .. } => Path::Other,
            _ if large => Path::Large,
            Op::Alloc { .. } if cached == -1 => Path::Magazine,
            Op::Alloc { .. } if cached >= 0 => Path::Refill,
            Op::Free { .. } if cached == 1 => Path::Magazine,
            Op::Free { .. } if cached <= 0 => Path::Flush,
            _ => Path::Other,
        };
        let size = match op {
            Op::Alloc { size, .. } => size.next_power_of_two(),
            _ => 0,
        };
        Self {
            alloc,
            path,
            size,
            maps: (a.maps - b.maps) as i64,
            unmaps: (a.unmaps - b.unmaps) as i64,
            spare: a.spare as i64 - b.spare as i64,
            chunks: delta(b.chunks, a.chunks),
            regions: delta(b.regions, a.regions),
            region_grew: a.region_bytes > b.region_bytes && a.regions == b.regions,
            runs: delta(b.runs, a.runs),
            nodes: delta(b.nodes, a.nodes),
            root: delta(b.root, a.root),
        }
    }
}

/// How many calls of the replay went each way (what [`run`] printed, summed over the rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Calls classified: every call of the replay's body.
    pub calls: usize,
    /// Magazine hits (allocations and frees).
    pub magazine: usize,
    /// Allocations that refilled a magazine.
    pub refill: usize,
    /// Frees that flushed part of a magazine.
    pub flush: usize,
    /// Calls of the large allocator.
    pub large: usize,
    /// Anything else.
    pub other: usize,
}

/// Replays `mix` on a fresh kheap over the heap window (capped at `budget_pages`, as in the
/// latency section) and prints the calls grouped by [`Kind`], with their counts (minus `overhead`
/// cycles of counter overhead) and how many are above `talc`'s p99.9 (allocation, free).
///
/// # Errors
///
/// The request kheap refused, if any (the table then covers the calls before it).
pub fn run(
    mix: &Workload,
    budget_pages: usize,
    overhead: u64,
    talc: (u64, u64),
    slots: &mut Slots,
) -> Result<Summary, ReplayError> {
    // Reserved up front: the record closure must not allocate, since the kernel's own heap
    // shares the heap window (and its spare pages) with the measured one.
    let mut calls: Vec<(Kind, u64)> = Vec::with_capacity(mix.ops.len());
    let mut heap = Heap::new(CappedSource::new(KernelPageSource, budget_pages));
    let _ = heap.init();
    let result = replay::attributed(
        &mut heap,
        mix,
        slots,
        Probe::read,
        |op, ticks, before, after| {
            if calls.len() < calls.capacity() {
                calls.push((
                    Kind::of(op, &before, &after),
                    ticks.saturating_sub(overhead),
                ));
            }
        },
    );
    heap.trim();
    report(&mut calls, overhead, talc);
    let mut sum = Summary {
        calls: calls.len(),
        ..Summary::default()
    };
    for (k, _) in &calls {
        *match k.path {
            Path::Magazine => &mut sum.magazine,
            Path::Refill => &mut sum.refill,
            Path::Flush => &mut sum.flush,
            Path::Large => &mut sum.large,
            Path::Other => &mut sum.other,
        } += 1;
    }
    result.map(|()| sum)
}

/// Prints the table (sorts `calls` in place).
fn report(calls: &mut [(Kind, u64)], overhead: u64, talc: (u64, u64)) {
    let p999 = |alloc: bool| {
        let mut v: Vec<u64> = calls
            .iter()
            .filter(|(k, _)| k.alloc == alloc)
            .map(|&(_, t)| t)
            .collect();
        v.sort_unstable();
        percentile(&v, 999)
    };
    let (alloc_p999, free_p999) = (p999(true), p999(false));
    serial_println!(
        "== Where kheap's calls go, kernel-like mix over the heap window: cycles per call (minus \
         {overhead} cycles of counter overhead) =="
    );
    serial_println!(
        "kheap's p99.9: alloc {alloc_p999}, free {free_p999}; talc's: alloc {}, free {}; deltas are after - before the call \
         (maps/unmaps: page-source calls; spare: heap-window spare pages, shared with the kernel's \
         own heap; region+: a region grew in place)",
        talc.0,
        talc.1
    );
    serial_println!(
        "{:<5} {:<8} {:>6} {:>4} {:>6} {:>5} {:>6} {:>7} {:>4} {:>5} {:>4} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6}",
        "call",
        "path",
        "size",
        "maps",
        "unmaps",
        "spare",
        "chunks",
        "regions",
        "runs",
        "nodes",
        "root",
        "calls",
        "min",
        "p50",
        "max",
        ">=kheap",
        ">talc"
    );
    calls.sort_unstable();
    for group in calls.chunk_by(|a, b| a.0 == b.0) {
        let k = group[0].0;
        let times: Vec<u64> = group.iter().map(|&(_, t)| t).collect();
        let limit = if k.alloc { alloc_p999 } else { free_p999 };
        let over = times.iter().filter(|&&t| t >= limit).count();
        let mark = if k.alloc { talc.0 } else { talc.1 };
        let above_talc = times.iter().filter(|&&t| t > mark).count();
        let regions = if k.region_grew {
            alloc::format!("{}+", k.regions)
        } else {
            alloc::format!("{}", k.regions)
        };
        serial_println!(
            "{:<5} {:<8} {:>6} {:>4} {:>6} {:>5} {:>6} {:>7} {:>4} {:>5} {:>4} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6}",
            if k.alloc { "alloc" } else { "free" },
            k.path.name(),
            k.size,
            k.maps,
            k.unmaps,
            k.spare,
            k.chunks,
            regions,
            k.runs,
            k.nodes,
            k.root,
            times.len(),
            times[0],
            percentile(&times, 500),
            times[times.len() - 1],
            over,
            above_talc
        );
    }
}
