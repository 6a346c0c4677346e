//! Several CPUs: the local-churn workload on every CPU at once against the same on one CPU, kheap
//! and talc side by side, each behind the kernel's interrupt-disabling lock
//! ([`IrqSpinLock`]), in the same boot.
//!
//! Each CPU replays its own small-object churn (its own live set, the host benchmark's small-churn
//! sizes, a seed of its own) through a [`Shared`] handle on one allocator:
//!
//! * **kheap**: a second heap of the kernel heap's own type, `kheap::PerCpuHeap<IrqSpinLock, _,
//!   KernelCpus, FRONT_CPUS>` (a per-CPU front before the locked back), over the heap window,
//!   capped at the budget; one static heap per run (two fronts of 16 CPUs do not fit a stack),
//!   drained on every CPU and trimmed after it;
//! * **talc**: `talc::base::Talc` over a pre-mapped arena, behind an [`IrqSpinLock`]
//!   ([`Locked`]).
//!
//! The work is started on every CPU with `kernel::smp::run_on_all`; the CPUs meet at a barrier,
//! the boot CPU reads the counter when it is released and again when the last CPU has finished,
//! so the figure is aggregate calls per cycle of the whole group. One CPU runs the same per-CPU
//! workload alone (the others return at once). With one CPU online the section says so and prints
//! the one-CPU figures only. A verifying run on all CPUs (every block patterned and checked)
//! follows the timed ones. Under `-icount` QEMU cannot run the vCPUs in parallel (multi-threaded
//! TCG refuses it), so this section is meant for `-smp 2 -accel tcg,thread=multi` with the time
//! counter.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use kernel::allocator::{FRONT_CPUS, IrqSpinLock, KernelCpus};
use kernel::memory::KernelPageSource;
use kernel::serial_println;
use kernel::smp;
use kheap::PerCpuHeap;
use kheap_workload::bench_alloc::{Locked, Shared};
use kheap_workload::replay::{self, ReplayError, Slots};
use kheap_workload::tsc::stamp;
use kheap_workload::{Sizes as WorkloadSizes, Workload};

use crate::peers::{Arena, TalcAlloc};
use crate::report::Ratio;
use crate::{BenchError, SEED, Sizes, workload};
use kheap_workload::bench_alloc::CappedSource;

/// The kheap contestant: the kernel heap's type, over its own capped view of the heap window.
type KheapPerCpu = PerCpuHeap<IrqSpinLock, CappedSource<KernelPageSource>, KernelCpus, FRONT_CPUS>;

/// The kheap heaps of the runs (a heap cannot be given a second source): one per run of the
/// section (one CPU, then all).
static KHEAPS: [KheapPerCpu; 2] = [const { PerCpuHeap::empty(KernelCpus) }; 2];
/// The next unused of [`KHEAPS`].
static NEXT_KHEAP: AtomicUsize = AtomicUsize::new(0);
/// The talc contestant.
type TalcLocked = Locked<IrqSpinLock, TalcAlloc<KernelPageSource>>;

/// The contestants, in table order.
const CONTESTANTS: [&str; 2] = ["kheap", "talc"];

/// What every CPU of one run reports back (the first failure, if any).
struct Outcome {
    error: spin::Mutex<Option<ReplayError>>,
    arrived: AtomicUsize,
    finished: AtomicUsize,
}

/// Runs `each(cpu)` on the first `cpus` CPUs at once, started together at a barrier; returns the
/// counter ticks from the release of the barrier to the last CPU's finish, as the boot CPU sees
/// them, or the first failure.
fn on_cpus(
    cpus: usize,
    each: &(dyn Fn(usize) -> Result<(), ReplayError> + Sync),
) -> Result<Result<u64, ReplayError>, BenchError> {
    let outcome = Outcome {
        error: spin::Mutex::new(None),
        arrived: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    };
    let ticks = AtomicUsize::new(0);
    smp::run_on_all(&|| {
        let me = smp::cpu_id();
        if me >= cpus {
            return;
        }
        outcome.arrived.fetch_add(1, Ordering::AcqRel);
        while outcome.arrived.load(Ordering::Acquire) < cpus {
            core::hint::spin_loop();
        }
        let start = stamp();
        if let Err(e) = each(me) {
            outcome.error.lock().get_or_insert(e);
        }
        outcome.finished.fetch_add(1, Ordering::AcqRel);
        if me == 0 {
            while outcome.finished.load(Ordering::Acquire) < cpus {
                core::hint::spin_loop();
            }
            ticks.store(stamp().wrapping_sub(start) as usize, Ordering::Release);
        }
    })
    .map_err(BenchError::Smp)?;
    Ok(match outcome.error.into_inner() {
        Some(e) => Err(e),
        None => Ok(ticks.load(Ordering::Acquire) as u64),
    })
}

/// Creates contestant `c` with `budget` pages, runs `f` on it, and gives its memory back.
fn with_contestant<R>(
    c: usize,
    budget: usize,
    f: impl FnOnce(&(dyn core::alloc::GlobalAlloc + Sync)) -> R,
) -> Result<R, BenchError> {
    if c == 0 {
        let arena_error = || BenchError::Arena {
            allocator: CONTESTANTS[0],
            cause: kheap::PageSourceError::OutOfMemory,
        };
        let heap = KHEAPS
            .get(NEXT_KHEAP.fetch_add(1, Ordering::Relaxed))
            .ok_or_else(arena_error)?;
        heap.init(CappedSource::new(KernelPageSource, budget))
            .map_err(|_| arena_error())?;
        let r = f(heap);
        // Every block was freed: each CPU flushes its front, then the empty chunks go back too
        // (the root run and page-map nodes stay mapped: `kheap::Heap` has no teardown).
        smp::run_on_all(&|| heap.flush_local()).map_err(BenchError::Smp)?;
        heap.trim();
        Ok(r)
    } else {
        let arena = Arena::map(KernelPageSource, budget).map_err(|cause| BenchError::Arena {
            allocator: CONTESTANTS[1],
            cause,
        })?;
        let talc: TalcLocked = Locked::new(TalcAlloc::new(arena));
        Ok(f(&talc))
    }
}

/// Runs and prints the section; returns the first failure.
pub fn run(sizes: &Sizes) -> Result<(), BenchError> {
    let online = smp::online_count();
    let (ops, live) = sizes.smp;
    let shape = WorkloadSizes {
        churn_ops: ops,
        live_targets: [live, live, live],
        ..sizes.workloads
    };
    // One workload per CPU, generated before anything is timed.
    let per_cpu: Vec<Workload> = (0..online)
        .map(|cpu| workload::small_churn(&shape, SEED ^ ((cpu as u64 + 1) << 40)))
        .collect();
    serial_println!(
        "== Several CPUs: small-object churn on each CPU (own live set ~{live}, {ops} calls per \
         CPU), kheap as the kernel's heap type (per-CPU fronts before a locked back), talc \
         behind the kernel's IRQ-disabling spinlock; aggregate calls over the cycles from the \
         common start to the last CPU's finish =="
    );
    serial_println!("cpus: {online} online");
    if online == 1 {
        serial_println!(
            "(one CPU online: one-CPU figures only; boot with KERNEL_QEMU_ARGS=\"-smp 2 -accel \
             tcg,thread=multi\" for the comparison)"
        );
    }
    serial_println!(
        "{:<8} {:>5} {:>10} {:>15} {:>16}  verified",
        "heap",
        "cpus",
        "calls",
        "cycles/call agg",
        "throughput vs 1"
    );
    let counts: Vec<usize> = if online > 1 {
        alloc::vec![1, online]
    } else {
        alloc::vec![1]
    };
    let mut first_error = None;
    for (c, name) in CONTESTANTS.iter().enumerate() {
        let mut one_cpu = None;
        for &cpus in &counts {
            let timed = |a: &(dyn core::alloc::GlobalAlloc + Sync)| -> Result<_, BenchError> {
                let mut best: Option<u64> = None;
                for _ in 0..sizes.repeats.max(1) {
                    let run = on_cpus(cpus, &|cpu| {
                        let mut slots = Slots::default();
                        let t = replay::timed(
                            &mut Shared(a),
                            &per_cpu[cpu],
                            usize::MAX,
                            &mut slots,
                            replay::unlimited,
                            || (),
                        );
                        let _ = slots.teardown::<_, false>(&mut Shared(a));
                        match t?.stopped {
                            Some(e) => Err(e),
                            None => Ok(()),
                        }
                    })?;
                    let ticks = run.map_err(|error| BenchError::Verify {
                        workload: "smp-churn",
                        allocator: name,
                        error,
                    })?;
                    best = Some(best.map_or(ticks, |b| b.min(ticks)));
                }
                let verified = on_cpus(cpus, &|cpu| {
                    let mut slots = Slots::default();
                    replay::verify(&mut Shared(a), &per_cpu[cpu], usize::MAX, &mut slots)
                        .map(|_| ())
                })?;
                verified.map_err(|error| BenchError::Verify {
                    workload: "smp-churn",
                    allocator: name,
                    error,
                })?;
                Ok(best.unwrap_or(0))
            };
            let result = with_contestant(c, sizes.budget_pages, timed).and_then(|r| r);
            match result {
                Ok(ticks) => {
                    let calls = ops * cpus;
                    let per_call = ticks as f64 / calls.max(1) as f64;
                    let throughput = calls as f64 / (ticks.max(1) as f64);
                    if cpus == 1 {
                        one_cpu = Some(throughput);
                    }
                    serial_println!(
                        "{:<8} {:>5} {:>10} {:>15.1} {:>16}  ok",
                        name,
                        cpus,
                        calls,
                        per_call,
                        Ratio(Some(throughput), one_cpu)
                    );
                }
                Err(e) => {
                    serial_println!("{:<8} {:>5} FAILED: {e}", name, cpus);
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    serial_println!(
        "(throughput vs 1: aggregate calls per cycle over the one-CPU figure of the same heap; \
         the fastest of {} timed runs each)",
        sizes.repeats.max(1)
    );
    serial_println!();
    first_error.map_or(Ok(()), Err)
}
