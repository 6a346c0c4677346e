//! Where kheap's calls spend their time: the latency section's replay of a workload (the
//! kernel-like mix, random alignment, realloc growth) on kheap over the heap window, with the
//! heap's and the window's counters read before and after every call (outside the timed
//! bracket), and the calls grouped by what they did.
//!
//! Run it alone with
//! `KERNEL_QEMU_ARGS="-icount shift=0 -fw_cfg name=opt/kbench/only,string=attribution" cargo kbench`.
//! Each row is one kind of call: which path served it (a magazine hit, a refill of a class, a
//! free into a full magazine that gave its block back to the chunk, the large allocator), how many page-source calls it made, and what changed in pages
//! (chunks, heap-window spares, regions, page runs, page-map nodes, root runs). `share` is the
//! row's part of all the replay's cycles (for the workloads judged by their mean). Two columns
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

use kheap_workload::bench_alloc::CappedSource;

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
    /// A free into a full magazine: its block went straight back to its chunk.
    GiveBack,
    /// The large allocator.
    Large,
    /// A realloc that kept its block (the same class, or a large block resized in place).
    InPlace,
    /// A realloc that moved its block (allocate, copy, free; or a page run moved by the source).
    Moved,
    /// Anything else (a call whose counters moved some other way).
    Other,
}

impl Path {
    const fn name(self) -> &'static str {
        match self {
            Self::Magazine => "magazine",
            Self::Refill => "refill",
            Self::GiveBack => "give-back",
            Self::Large => "large",
            Self::InPlace => "in-place",
            Self::Moved => "moved",
            Self::Other => "other",
        }
    }
}

/// What a call did: the grouping key of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    call: Call,
    path: Path,
    /// The request size rounded up to a power of two (allocations and reallocs; 0 for frees).
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

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Alloc,
    Free,
    Realloc,
}

impl Call {
    const ALL: [Self; 3] = [Self::Alloc, Self::Free, Self::Realloc];

    const fn of(op: Op) -> Self {
        match op {
            Op::Alloc { .. } => Self::Alloc,
            Op::Free { .. } => Self::Free,
            Op::Realloc { .. } => Self::Realloc,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Alloc => "alloc",
            Self::Free => "free",
            Self::Realloc => "realloc",
        }
    }
}

/// `after - before` of two counters, as a signed number.
fn delta(before: usize, after: usize) -> i64 {
    after as i64 - before as i64
}

impl Kind {
    fn of(op: Op, moved: bool, b: &Probe, a: &Probe) -> Self {
        let cached = delta(b.cached, a.cached);
        let large = a.live_large != b.live_large
            || a.regions != b.regions
            || a.region_bytes != b.region_bytes
            || a.runs != b.runs;
        let path = match op {
            Op::Realloc { .. } if moved => Path::Moved,
            Op::Realloc { .. } => Path::InPlace,
            _ if large => Path::Large,
            Op::Alloc { .. } if cached == -1 => Path::Magazine,
            Op::Alloc { .. } if cached >= 0 => Path::Refill,
            Op::Free { .. } if cached == 1 => Path::Magazine,
            Op::Free { .. } if cached <= 0 => Path::GiveBack,
            _ => Path::Other,
        };
        let size = match op {
            Op::Alloc { size, .. } => size.next_power_of_two(),
            Op::Realloc { new_size, .. } => new_size.next_power_of_two(),
            Op::Free { .. } => 0,
        };
        Self {
            call: Call::of(op),
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
    /// Frees into a full magazine, whose block went back to its chunk.
    pub give_back: usize,
    /// Calls of the large allocator.
    pub large: usize,
    /// Reallocs (in place or moved).
    pub realloc: usize,
    /// Anything else.
    pub other: usize,
}

/// Replays `w` on a fresh kheap over the heap window (capped at `budget_pages`, as in the
/// latency section) and prints the calls grouped by what they did, with their counts (minus `overhead`
/// cycles of counter overhead) and how many are above `talc`'s p99.9 (allocation, free).
///
/// # Errors
///
/// The request kheap refused, if any (the table then covers the calls before it).
pub fn run(
    w: &Workload,
    budget_pages: usize,
    overhead: u64,
    talc: (u64, u64),
    slots: &mut Slots,
) -> Result<Summary, ReplayError> {
    // Reserved up front: the record closure must not allocate, since the kernel's own heap
    // shares the heap window (and its spare pages) with the measured one.
    let mut calls: Vec<(Kind, u64)> = Vec::with_capacity(w.ops.len());
    let mut heap = Heap::new(CappedSource::new(KernelPageSource, budget_pages));
    let _ = heap.init();
    let result = replay::attributed(
        &mut heap,
        w,
        slots,
        Probe::read,
        |op, ticks, moved, before, after| {
            if calls.len() < calls.capacity() {
                calls.push((
                    Kind::of(op, moved, &before, &after),
                    ticks.saturating_sub(overhead),
                ));
            }
        },
    );
    heap.trim();
    report(w.name, &mut calls, overhead, talc);
    let mut sum = Summary {
        calls: calls.len(),
        ..Summary::default()
    };
    for (k, _) in &calls {
        *match k.path {
            Path::Magazine => &mut sum.magazine,
            Path::Refill => &mut sum.refill,
            Path::GiveBack => &mut sum.give_back,
            Path::Large => &mut sum.large,
            Path::InPlace | Path::Moved => &mut sum.realloc,
            Path::Other => &mut sum.other,
        } += 1;
    }
    result.map(|()| sum)
}

/// `part / whole` in tenths of a percent, printed as `12.3%`.
struct Share(u64, u64);

impl core::fmt::Display for Share {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let permille = (u128::from(self.0) * 1000)
            .checked_div(u128::from(self.1))
            .unwrap_or(0);
        f.pad(&alloc::format!("{}.{}%", permille / 10, permille % 10))
    }
}

/// Prints the table of workload `name` (sorts `calls` in place).
fn report(name: &str, calls: &mut [(Kind, u64)], overhead: u64, talc: (u64, u64)) {
    let p999 = Call::ALL.map(|call| {
        let mut v: Vec<u64> = calls
            .iter()
            .filter(|(k, _)| k.call == call)
            .map(|&(_, t)| t)
            .collect();
        v.sort_unstable();
        percentile(&v, 999)
    });
    let total: u64 = calls.iter().map(|&(_, t)| t).sum();
    serial_println!(
        "== Where kheap's calls go, {name}, over the heap window: cycles per call (minus \
         {overhead} cycles of counter overhead) =="
    );
    serial_println!(
        "kheap's p99.9: alloc {}, free {}, realloc {}; talc's: alloc {}, free {}; deltas are \
         after - before the call (maps/unmaps: page-source calls; spare: heap-window spare \
         pages, shared with the kernel's own heap; region+: a region grew in place); {total} \
         cycles in all",
        p999[0],
        p999[1],
        p999[2],
        talc.0,
        talc.1
    );
    serial_println!(
        "{:<7} {:<9} {:>5} {:>4} {:>6} {:>5} {:>6} {:>7} {:>4} {:>5} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}",
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
        "share",
        ">=kheap",
        ">talc"
    );
    calls.sort_unstable();
    for group in calls.chunk_by(|a, b| a.0 == b.0) {
        let k = group[0].0;
        let times: Vec<u64> = group.iter().map(|&(_, t)| t).collect();
        let limit = p999[k.call as usize];
        let over = times.iter().filter(|&&t| t >= limit).count();
        let above_talc = match k.call {
            Call::Alloc => Some(talc.0),
            Call::Free => Some(talc.1),
            Call::Realloc => None,
        }
        .map(|mark| times.iter().filter(|&&t| t > mark).count());
        let regions = if k.region_grew {
            alloc::format!("{}+", k.regions)
        } else {
            alloc::format!("{}", k.regions)
        };
        let share = Share(times.iter().sum(), total);
        serial_println!(
            "{:<7} {:<9} {:>5} {:>4} {:>6} {:>5} {:>6} {:>7} {:>4} {:>5} {:>4} {:>8} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6}",
            k.call.name(),
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
            share,
            over,
            above_talc.map_or(alloc::string::String::from("-"), |n| alloc::format!("{n}"))
        );
    }
}
