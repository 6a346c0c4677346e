//! The in-kernel benchmark: our heap against talc and linked_list_allocator, inside QEMU.
//!
//! `cargo run --release --bin kbench` boots a kernel (`kernel/src/bin/kbench.rs`) that calls
//! [`run`]`(`[`Scale::Full`]`)` and prints, over serial:
//!
//! 1. **Throughput**: every workload (small-object churn, kernel-like mix, random alignment,
//!    realloc growth, churn at 1e3/1e4/1e5 live objects — the host benchmark's kinds, see
//!    [`workload`]) replayed on each allocator; cycles per call, and the ratio to talc and to ours.
//! 2. **Single-call latency** of allocations on the kernel-like mix: p50/p99/p99.9/max.
//! 3. **The layers below the heap**: frame pop, frame push, frame alloc+free, map+unmap of one page
//!    through the page mapper, heap-window `map_pages(1)`+`unmap_pages(1)`; cycles per call and the
//!    ratio to one frame pop.
//!
//! # Method
//!
//! * **Same work.** Each workload is generated once from a fixed seed, as a list of slot-numbered
//!   ops, and replayed unchanged on every allocator ([`replay`]).
//! * **Same memory.** Every allocator gets the same budget of pages from the kernel's heap-window
//!   page source ([`KernelPageSource`]): ours maps pages on demand through a source capped at the
//!   budget (so its page-mapping cost is part of its time, as in the running kernel), the peers get
//!   one arena of exactly the budget, mapped before the clock starts ([`peers`]). A fourth row,
//!   `kheap/arena`, runs our heap over pages of such a pre-mapped arena: the difference to `kheap`
//!   is what the frame allocator and page tables cost it.
//! * **Fresh allocator per run.** Every replay (each timed repeat, the verifying replay, the
//!   latency replay) gets a new allocator instance, which gives its memory back afterwards (all
//!   of it for the peers' arenas; for ours, everything but its root run and page-map nodes, since
//!   `kheap::Heap` has no teardown — the table shows how many pages that is).
//! * **Timing.** One `lfence; rdtsc; lfence` pair around a whole replay ([`tsc`]); cycles per op is
//!   the total divided by the number of ops. Each pair is timed [`Sizes::repeats`] times, in
//!   rounds that go over every allocator in turn, and the fastest replay is reported: the first
//!   one also pays for QEMU translating the code, and the host may be busy with other work. Interrupts stay disabled (the kernel never enables them
//!   unless a test starts the timer), so nothing else in the guest runs during a measurement.
//! * **Verification**, untimed, in a separate replay: every block is patterned when allocated and
//!   checked before every free and realloc (see [`replay`]); a realloc must keep the common prefix
//!   and every block must be aligned as asked. A mismatch fails the run.
//! * **linked_list_allocator at 1e5 live objects** is first fit over an address-ordered hole list:
//!   each call walks a list that grows with the live set, so its replay there is capped at
//!   [`Sizes::linked_list_cap_1e5`] ops (and the table marks the capped row); its cycles per op
//!   are for that prefix.
//!
//! Under QEMU without KVM (TCG) the guest's cycle counter measures the emulation, so the absolute
//! numbers describe nothing real: only ratios within one boot mean something. The report says so.
//! On a busy host even those ratios wander from boot to boot; booting with
//! `KERNEL_QEMU_ARGS="-icount shift=0"` makes the counter count guest instructions, which gives
//! the same numbers on every boot (but no cache or memory effects). The report's header says
//! which kind of count it printed ([`tsc::clock`]).

pub mod memcost;
pub mod peers;
pub mod replay;
pub mod report;
pub mod tsc;
pub mod workload;

use alloc::vec::Vec;
use core::fmt;

use kheap::source::{PAGE_SIZE, PageSourceError};

use crate::memory::KernelPageSource;
use crate::serial_println;
use peers::{BenchAlloc, Peer, Visit, with_peer};
use replay::{ReplayError, Slots};
use report::{Cell, LatencyRow, Pages, Row};
use workload::Workload;

/// Seed of every generated workload: fixed, so every boot replays identical sequences.
const SEED: u64 = 0x6b62_656e_6368_2a01;

/// How much work a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Tiny op counts: every code path once, in seconds (for a kernel test).
    Smoke,
    /// The recorded benchmark (the host benchmark's full op counts; a few minutes under TCG).
    Full,
}

/// Op counts and memory of one [`Scale`].
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Workload sizes.
    pub workloads: workload::Sizes,
    /// Timed ops of linked_list_allocator at the largest scaling level (1e5 live objects in the
    /// full run), where each of its calls walks a hole list as long as a fraction of the live set.
    pub linked_list_cap_1e5: usize,
    /// Pages each allocator may use (its arena, or its capped page source).
    pub budget_pages: usize,
    /// Iterations of each frame / page-table measurement.
    pub memcost_iterations: usize,
    /// Timed replays of each (workload, allocator) pair, in rounds over all allocators; the
    /// fastest is reported. The first one also pays for QEMU translating the allocator's code
    /// (TCG compiles guest code on first execution), and the host is shared, so a single replay
    /// would be noisy.
    pub repeats: usize,
}

impl Scale {
    /// The op counts of this scale.
    pub const fn sizes(self) -> Sizes {
        match self {
            Self::Smoke => Sizes {
                workloads: workload::Sizes {
                    churn_ops: 2_000,
                    live_targets: [200, 100, 50],
                    realloc_steps: 300,
                    realloc_max: 64 << 10,
                    scaling_levels: &[100, 1_000],
                    scaling_ops: 2_000,
                },
                linked_list_cap_1e5: 1_000,
                // 8 MiB: the smoke workloads hold well under 2 MiB at their peak.
                budget_pages: (8 << 20) / PAGE_SIZE,
                memcost_iterations: 256,
                repeats: 2,
            },
            Self::Full => Sizes {
                workloads: workload::Sizes {
                    churn_ops: 400_000,
                    live_targets: [10_000, 4_000, 2_000],
                    realloc_steps: 20_000,
                    realloc_max: 1 << 20,
                    scaling_levels: &[1_000, 10_000, 100_000],
                    scaling_ops: 200_000,
                },
                linked_list_cap_1e5: 10_000,
                // 64 MiB: the largest live sets (1e5 small objects ≈ 10 MiB; eight vectors of up
                // to 1 MiB plus their copies while growing) with room for the peers' fragmentation.
                budget_pages: (64 << 20) / PAGE_SIZE,
                memcost_iterations: 20_000,
                repeats: 5,
            },
        }
    }

    /// Name printed in the report.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Smoke => "smoke",
            Self::Full => "full",
        }
    }
}

/// Why a benchmark run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchError {
    /// The page source could not map an allocator's arena.
    Arena {
        /// The allocator the arena was for.
        allocator: &'static str,
        /// What the page source said.
        cause: PageSourceError,
    },
    /// The verifying replay found a wrong block (corrupted, misaligned) or ran out of memory where
    /// the timed replay did not.
    Verify {
        /// The workload.
        workload: &'static str,
        /// The allocator.
        allocator: &'static str,
        /// What was wrong.
        error: ReplayError,
    },
    /// A workload generator produced an inconsistent sequence (a bug in the generator).
    BadWorkload {
        /// The workload.
        workload: &'static str,
    },
    /// A measurement of the frame allocator or page tables failed.
    Memory(memcost::MemCostError),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Arena { allocator, cause } => {
                write!(f, "cannot map the arena of {allocator}: {cause}")
            }
            Self::Verify {
                workload,
                allocator,
                error,
            } => {
                write!(
                    f,
                    "verification of {allocator} on {workload} failed: {error}"
                )
            }
            Self::BadWorkload { workload } => {
                write!(f, "workload {workload} is inconsistent (generator bug)")
            }
            Self::Memory(e) => write!(f, "frame/page-table measurement failed: {e}"),
        }
    }
}

/// Runs the whole benchmark at `scale` and prints its report over serial. Returns the first
/// verification or setup failure (after printing everything that could be measured).
pub fn run(scale: Scale) -> Result<(), BenchError> {
    let sizes = scale.sizes();
    let overhead = tsc::overhead();
    report::header(scale, &sizes, tsc::clock(), overhead);

    let mut slots = Slots::default();
    let mut first_error = None;
    let mut any_capped = false;

    // 1. Throughput, one workload at a time (only one op list is in memory at once).
    report::throughput_header();
    let w = &sizes.workloads;
    let levels = w.scaling_levels;
    let largest = levels.last().copied().unwrap_or(0);
    let generators = 4 + levels.len();
    for g in 0..generators {
        let workload = match g {
            0 => workload::small_churn(w, SEED),
            1 => workload::kernel_mix(w, SEED),
            2 => workload::random_align(w, SEED),
            3 => workload::realloc_growth(w, SEED),
            _ => workload::scaling(levels[g - 4], w.scaling_ops, SEED),
        };
        if !workload::is_consistent(&workload) {
            first_error.get_or_insert(BenchError::BadWorkload {
                workload: workload.name,
            });
            continue;
        }
        let is_largest_level = g >= 4 && levels[g - 4] == largest && largest >= 100_000;
        let limit_of = |peer| {
            if peer == Peer::LinkedList && is_largest_level {
                sizes.linked_list_cap_1e5
            } else {
                usize::MAX
            }
        };
        let mut rows = Peer::ALL.map(|peer| Row {
            workload: workload.name,
            peer,
            cell: Cell::NoArena,
            capped: limit_of(peer) < workload.ops.len(),
            pages: Pages::default(),
            verified: Ok(()),
        });
        // Rounds go over every allocator in turn, so that a busy spell of the host slows one
        // round of each rather than every repeat of one allocator.
        for _ in 0..sizes.repeats.max(1) {
            for row in &mut rows {
                // A replay that ran out of memory does so every time; a missing arena stays
                // missing: no point repeating either.
                if row.verified.is_ok() && !matches!(row.cell, Cell::Failed(_)) {
                    time_round(row, &workload, limit_of(row.peer), &sizes, &mut slots);
                }
            }
        }
        for row in &mut rows {
            if row.verified.is_ok() {
                verify_row(row, &workload, limit_of(row.peer), &sizes, &mut slots);
            }
            any_capped |= row.capped;
            if let Err(e) = row.verified {
                first_error.get_or_insert(e);
            }
        }
        report::throughput_rows(&rows);
    }
    report::throughput_footer(&sizes, any_capped);

    // 2. Single-call latency on the kernel-like mix.
    let mix = workload::kernel_mix(w, SEED);
    let mut samples = Vec::new();
    let mut latency = Vec::with_capacity(Peer::ALL.len());
    for peer in Peer::ALL {
        match latency_row(peer, &mix, &sizes, overhead, &mut slots, &mut samples) {
            Ok(row) => latency.push(row),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(mix);
    drop(samples);
    report::latency(&latency, overhead);

    // 3. The frame allocator and the page tables.
    match memcost::measure(sizes.memcost_iterations) {
        Ok(costs) => report::memory_costs(&costs),
        Err(e) => {
            serial_println!("frame/page-table measurement failed: {e}");
            first_error.get_or_insert(BenchError::Memory(e));
        }
    }

    match first_error {
        None => {
            serial_println!("kbench: done, every replay verified");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// One timed replay of `w` (first `limit` body ops) on a fresh instance of `row.peer`; keeps it
/// in `row` if it is the first or the fastest so far.
fn time_round(row: &mut Row, w: &Workload, limit: usize, sizes: &Sizes, slots: &mut Slots) {
    /// Timed replay, then the allocator's page counts.
    struct Timed<'a> {
        w: &'a Workload,
        limit: usize,
        slots: &'a mut Slots,
    }
    impl Visit for Timed<'_> {
        type Out = (Result<(u64, usize), ReplayError>, Pages);
        fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
            let r = replay::timed(a, self.w, self.limit, self.slots);
            let peak = a.peak_pages();
            (
                r,
                Pages {
                    peak,
                    after_free: a.release(),
                },
            )
        }
    }

    let timed = Timed { w, limit, slots };
    let (result, pages) = match with_peer(row.peer, KernelPageSource, sizes.budget_pages, timed) {
        Ok(out) => out,
        Err(cause) => {
            row.verified = Err(BenchError::Arena {
                allocator: row.peer.name(),
                cause,
            });
            return;
        }
    };
    let cell = match result {
        Ok((cycles, ops)) => Cell::Cycles { cycles, ops },
        Err(e) => Cell::Failed(e),
    };
    let keep = match (row.cell, cell) {
        (Cell::Cycles { cycles: best, .. }, Cell::Cycles { cycles, .. }) => cycles < best,
        (Cell::NoArena, _) => true,
        _ => false,
    };
    if keep {
        row.cell = cell;
        row.pages = pages;
    }
}

/// The verifying replay of `w` (first `limit` body ops) on a fresh instance of `row.peer`.
fn verify_row(row: &mut Row, w: &Workload, limit: usize, sizes: &Sizes, slots: &mut Slots) {
    /// Verifying replay.
    struct Verify<'a> {
        w: &'a Workload,
        limit: usize,
        slots: &'a mut Slots,
    }
    impl Visit for Verify<'_> {
        type Out = Result<(), ReplayError>;
        fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
            replay::verify(a, self.w, self.limit, self.slots)
        }
    }

    let (peer, verify) = (row.peer, Verify { w, limit, slots });
    row.verified = match with_peer(peer, KernelPageSource, sizes.budget_pages, verify) {
        Ok(Ok(())) => Ok(()),
        // Running out of the budget is a result (shown in the table), not a failure, when the
        // timed replay ran out too.
        Ok(Err(ReplayError::OutOfMemory { .. }))
            if matches!(row.cell, Cell::Failed(ReplayError::OutOfMemory { .. })) =>
        {
            Ok(())
        }
        Ok(Err(error)) => Err(BenchError::Verify {
            workload: w.name,
            allocator: peer.name(),
            error,
        }),
        Err(cause) => Err(BenchError::Arena {
            allocator: peer.name(),
            cause,
        }),
    };
}

/// Single-call allocation latencies of `peer` on `w`, summarised as percentiles.
fn latency_row(
    peer: Peer,
    w: &Workload,
    sizes: &Sizes,
    overhead: u64,
    slots: &mut Slots,
    samples: &mut Vec<u32>,
) -> Result<LatencyRow, BenchError> {
    /// Per-call replay into `samples`.
    struct Latency<'a> {
        w: &'a Workload,
        overhead: u64,
        slots: &'a mut Slots,
        samples: &'a mut Vec<u32>,
    }
    impl Visit for Latency<'_> {
        type Out = Result<(), ReplayError>;
        fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
            replay::alloc_latencies(a, self.w, self.slots, self.overhead, self.samples)
        }
    }

    samples.clear();
    let allocs = w
        .ops
        .iter()
        .filter(|op| matches!(op, workload::Op::Alloc { .. }))
        .count();
    samples.reserve(allocs);
    let visit = Latency {
        w,
        overhead,
        slots,
        samples: &mut *samples,
    };
    let result = with_peer(peer, KernelPageSource, sizes.budget_pages, visit).map_err(|cause| {
        BenchError::Arena {
            allocator: peer.name(),
            cause,
        }
    })?;
    samples.sort_unstable();
    Ok(LatencyRow::new(peer, samples, result.err()))
}
