//! Printing the benchmark's tables over serial.
//!
//! Ratios are `cycles / reference cycles` of the same workload in the same boot: below 1.00 is
//! faster than the reference. Every number is printed with fixed width so the tables line up in a
//! terminal and in the recorded `kernel/heap/bench/results/KERNEL.md`.

use alloc::vec::Vec;
use core::fmt;

use kernel::serial_println;
use kheap::source::PAGE_SIZE;
use kheap_workload::latency::{Percentiles, TailPoint};
use kheap_workload::replay::ReplayError;

use crate::memcost::MemCosts;
use crate::peers::Peer;
use crate::{BenchError, Scale, Sizes};

/// The warning every report carries, in these exact words.
pub const TCG_NOTE: &str =
    "QEMU without KVM (TCG): absolute cycles are not meaningful, compare ratios within this boot";

/// Outcome of one timed replay.
#[derive(Debug, Clone, Copy)]
pub enum Cell {
    /// The replay ran: total cycles of the timed body and its number of ops.
    Cycles {
        /// Cycles of the whole timed body.
        cycles: u64,
        /// Ops in it.
        ops: usize,
    },
    /// The replay stopped (out of the memory budget).
    Failed(ReplayError),
    /// The allocator's arena could not be mapped.
    NoArena,
}

impl Cell {
    /// Cycles per op, if the replay ran.
    pub fn per_op(&self) -> Option<f64> {
        match *self {
            Self::Cycles { cycles, ops } if ops > 0 => Some(cycles as f64 / ops as f64),
            _ => None,
        }
    }
}

/// One allocator's result on one workload.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Workload name.
    pub workload: &'static str,
    /// The allocator.
    pub peer: Peer,
    /// The timed replay.
    pub cell: Cell,
    /// Whether the timed body was cut short of the workload's full length.
    pub capped: bool,
    /// Pages of the fastest timed replay.
    pub pages: Pages,
    /// The verifying replay.
    pub verified: Result<(), BenchError>,
}

/// Memory an allocator held during and after a timed replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pages {
    /// Most pages held at once (`None` for talc and linked_list, which hold their whole arena;
    /// the pages taken from the arena, for kheap/arena).
    pub peak: Option<usize>,
    /// Pages still held after every block was freed and unused memory given back (`None` for
    /// the fixed-arena allocators).
    pub after_free: Option<usize>,
}

/// Single-call latencies of one allocator, allocations and frees apart (cycles, net of the
/// counter overhead).
#[derive(Debug, Clone)]
pub struct LatencyRow {
    /// The allocator.
    pub peer: Peer,
    /// Allocation calls.
    pub alloc: Percentiles,
    /// Free calls.
    pub free: Percentiles,
    /// The allocations' tail, p90 to max.
    pub alloc_tail: Vec<TailPoint>,
    /// The frees' tail.
    pub free_tail: Vec<TailPoint>,
    /// Why the replay stopped early, if it did.
    pub failed: Option<ReplayError>,
}

/// A ratio `value / reference`, printed as `0.42x` (or `-` when either is missing).
pub(crate) struct Ratio(pub(crate) Option<f64>, pub(crate) Option<f64>);

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(v), Some(r)) if r > 0.0 => {
                let text = alloc::format!("{:.2}x", v / r);
                f.pad(&text)
            }
            _ => f.pad("-"),
        }
    }
}

/// Prints the title block: what runs, the TCG warning, what the counter counts and its overhead,
/// the memory budget.
pub fn header(scale: Scale, sizes: &Sizes, counts_instructions: bool, overhead: u64) {
    serial_println!(
        "kbench: allocator benchmark inside the kernel (scale: {})",
        scale.name()
    );
    serial_println!("NOTE: {TCG_NOTE}.");
    if counts_instructions {
        serial_println!(
            "counter: deterministic, advances with guest instructions (QEMU -icount): every boot \
             prints the same counts; they measure instructions executed, not caches or memory"
        );
    } else {
        serial_println!(
            "counter: time (under TCG: host time spent emulating, so host load adds noise; \
             `-icount shift=0` makes it count instructions instead)"
        );
    }
    serial_println!("rdtsc: lfence-bracketed; empty measurement = {overhead} cycles");
    serial_println!(
        "memory: every allocator gets {} pages ({} MiB) from the heap-window page source. kheap \
         maps them on demand (frame allocation and page tables included in its time); talc and \
         linked_list get one arena of that size mapped before timing; kheap/arena is kheap taking \
         its pages from such an arena (a buddy over pre-mapped pages: no page-table work)",
        sizes.budget_pages,
        (sizes.budget_pages * PAGE_SIZE) >> 20
    );
    serial_println!(
        "verification: a separate untimed replay patterns every block and checks it before free \
         and realloc"
    );
    serial_println!();
}

/// Prints the throughput table's heading.
pub fn throughput_header() {
    serial_println!(
        "== Throughput: cycles per allocator call (ratio = cycles / reference cycles) =="
    );
    serial_println!(
        "{:<15} {:<12} {:>8} {:>11} {:>8} {:>9} {:>6} {:>6}  {}",
        "workload",
        "allocator",
        "ops",
        "cycles/op",
        "vs talc",
        "vs kheap",
        "peak",
        "after",
        "verified"
    );
}

/// Prints the rows of one workload (every allocator); `budget` is the arena of the fixed-arena
/// allocators, in pages.
pub fn throughput_rows(rows: &[Row], budget: usize) {
    let per_op = |peer: Peer| {
        rows.iter()
            .find(|r| r.peer == peer)
            .and_then(|r| r.cell.per_op())
    };
    let talc = per_op(Peer::Talc);
    let ours = per_op(Peer::Kheap);
    for (i, row) in rows.iter().enumerate() {
        let name = if i == 0 { row.workload } else { "" };
        let verified = match &row.verified {
            Ok(()) => alloc::string::String::from("ok"),
            Err(e) => alloc::format!("FAILED: {e}"),
        };
        match row.cell {
            Cell::Cycles { ops, .. } => {
                let v = row.cell.per_op();
                let mark = if row.capped { "*" } else { "" };
                let after = match row.pages.after_free {
                    Some(pages) => alloc::format!("{pages}"),
                    None => alloc::string::String::from("-"),
                };
                let peak = row.pages.peak.unwrap_or(budget);
                serial_println!(
                    "{:<15} {:<12} {:>7}{:1} {:>11.1} {:>8} {:>9} {:>6} {:>6}  {}",
                    name,
                    row.peer.name(),
                    ops,
                    mark,
                    v.unwrap_or(0.0),
                    Ratio(v, talc),
                    Ratio(v, ours),
                    peak,
                    after,
                    verified
                );
            }
            Cell::Failed(e) => serial_println!(
                "{:<15} {:<12} {}; verified: {}",
                name,
                row.peer.name(),
                e,
                verified
            ),
            Cell::NoArena => {
                serial_println!(
                    "{:<15} {:<12} no arena: {}",
                    name,
                    row.peer.name(),
                    verified
                )
            }
        }
    }
}

/// Prints the notes under the throughput table; `capped` if some row was cut short.
pub fn throughput_footer(sizes: &Sizes, capped: bool) {
    if capped {
        serial_println!(
            "* linked_list_allocator capped at {} timed ops at the largest scaling level: first fit \
         walks an address-ordered hole list that grows with the live set, so a full replay would \
         take far longer than the whole benchmark; its cycles/op are for that prefix.",
            sizes.linked_list_cap_1e5
        );
    }
    serial_println!(
        "peak / after: pages held at most, and after freeing every block and `trim` (kheap and \
         kheap/arena take pages on demand; talc and linked_list hold their fixed arena \
         throughout). kheap::Heap has no \
         teardown, so the pages left after trim (root run, page-map nodes) stay mapped when an \
         instance is dropped."
    );
    serial_println!();
}

/// Prints the latency percentiles, allocations and frees apart, then the tails as `tail` rows:
/// `tail <alloc|free> <allocator> <cycles> <calls at least that slow> <calls>`, from p90 to the
/// maximum (what `kheap-bench --kernel-tail` plots).
pub fn latency(rows: &[LatencyRow], overhead: u64) {
    serial_println!(
        "== Single calls, kernel-like mix: cycles per call (minus {overhead} cycles of counter \
         overhead), allocations and frees apart =="
    );
    serial_println!(
        "{:<12} {:<5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "allocator",
        "call",
        "calls",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max"
    );
    for r in rows {
        for (call, p) in [("alloc", &r.alloc), ("free", &r.free)] {
            serial_println!(
                "{:<12} {:<5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
                r.peer.name(),
                call,
                p.calls,
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max
            );
        }
        if let Some(e) = r.failed {
            serial_println!("  ({} stopped early: {e})", r.peer.name());
        }
    }
    serial_println!(
        "(latency includes kheap's page mapping when a call needs a new chunk or run, and its \
         unmapping when a free empties one)"
    );
    serial_println!("tail rows: call, allocator, cycles, calls at least that slow, calls");
    for r in rows {
        for (call, points) in [("alloc", &r.alloc_tail), ("free", &r.free_tail)] {
            for p in points {
                serial_println!(
                    "tail {call} {} {} {} {}",
                    r.peer.name(),
                    p.ticks,
                    p.calls,
                    p.of
                );
            }
        }
    }
    serial_println!();
}

/// Prints the frame allocator and page-table costs.
pub fn memory_costs(costs: &MemCosts) {
    serial_println!(
        "== Frame allocator and page tables: cycles per operation (ratio to one frame pop) =="
    );
    serial_println!(
        "{:<44} {:>8} {:>11} {:>13}",
        "operation",
        "ops",
        "cycles/op",
        "vs frame pop"
    );
    let pop = costs.rows.first().map(|r| r.per_op());
    for r in &costs.rows {
        let v = Some(r.per_op());
        serial_println!(
            "{:<44} {:>8} {:>11.1} {:>13}",
            r.name,
            r.ops,
            r.per_op(),
            Ratio(v, pop)
        );
    }
    serial_println!();
}
