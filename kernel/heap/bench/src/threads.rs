//! The threaded section: 1 and 2 threads sharing one allocator through `GlobalAlloc`.
//!
//! * **per-thread churn**: each thread replays its own small-object churn (its own live set, a
//!   seed of its own; the small-churn workload's shape) through a `Shared` handle;
//! * **producer/consumer**: each thread allocates small blocks and passes them through a bounded
//!   ring to the other thread, which frees them, so every block is freed by the thread that did
//!   not allocate it (with one thread, the ring leads back to the same thread).
//!
//! SharedPeers: kheap-percpu (`PerCpuHeap`: a per-CPU front, threads as CPUs through
//! `ThreadCpus`, before the locked heap), kheap (`LockedHeap`, one spinlock), talc, rlsf and linked_list_allocator
//! each behind a spinlock (`kheap_workload::bench_alloc::Locked`), the host `malloc`, and
//! mimalloc (per-thread caches, the reference). The arena peers get the same pre-touched region;
//! `malloc` and mimalloc take memory from the OS.
//!
//! The figure is aggregate calls per second of wall time from the threads' common start (a
//! barrier) to the last thread's end, the median of `--runs` runs, each on a fresh allocator; and
//! the ratio of the 2-thread figure to the 1-thread one. Every contestant is verified first with
//! two threads: the churn replays pattern and check every block, and each producer/consumer block
//! is patterned by its producer and checked by its consumer. Wall time, not CPU time: a thread
//! that waits for the lock or for the ring is part of the cost. On a 2-core machine that others
//! share, 2 threads are at the mercy of the other load: the report gives the machine's load.

use std::alloc::GlobalAlloc;
use std::ptr::NonNull;
use std::sync::Barrier;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kheap_workload::bench_alloc::Shared;
use kheap_workload::pattern;
use kheap_workload::replay::{self, Slots};
use kheap_workload::{Mix, Rng, Sizes, Workload};

use crate::arena::ArenaMemory;
use crate::measure::median;
use crate::peers::{SharedPeer, SharedVisit, with_shared};
use crate::workload;

/// Sizes of the threaded section.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSizes {
    /// Calls of each thread's churn.
    pub churn_ops: usize,
    /// Live-set target of each thread's churn.
    pub live: usize,
    /// Blocks each producer allocates (each is also freed: twice as many calls).
    pub blocks: usize,
    /// Capacity of each ring.
    pub ring: usize,
}

impl ThreadSizes {
    /// The full run: the small-churn workload's sizes per thread.
    pub const FULL: Self = Self {
        churn_ops: 400_000,
        live: 10_000,
        blocks: 200_000,
        ring: 256,
    };
    /// The smoke run.
    pub const QUICK: Self = Self {
        churn_ops: 3_000,
        live: 300,
        blocks: 2_000,
        ring: 64,
    };
}

/// One contestant on one workload.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The verifying run with 2 threads.
    pub verify: Result<(), String>,
    /// Median aggregate calls per second with 1 and with 2 threads (empty if not verified).
    pub ops_per_s: Vec<f64>,
    /// Every run's figures, `[1 thread, 2 threads]`.
    pub runs: Vec<[f64; 2]>,
}

impl Cell {
    /// The 2-thread / 1-thread ratio of the medians.
    pub fn scaling(&self) -> f64 {
        match self.ops_per_s.as_slice() {
            [one, two] => two / one,
            _ => f64::NAN,
        }
    }
}

/// One contestant.
#[derive(Debug, Clone)]
pub struct Row {
    /// Table name.
    pub name: &'static str,
    /// Per-thread churn.
    pub churn: Cell,
    /// Producer/consumer.
    pub pc: Cell,
}

/// The whole section.
#[derive(Debug, Clone)]
pub struct ThreadsResult {
    /// The sizes it ran with.
    pub sizes: ThreadSizes,
    /// Logical CPUs of the machine.
    pub cpus: usize,
    /// Per contestant.
    pub rows: Vec<Row>,
}

/// A bounded single-producer single-consumer ring of blocks (pointer, size and pattern tag).
struct Ring {
    ptrs: Box<[AtomicPtr<u8>]>,
    /// `size << 32 | tag` of each slot.
    meta: Box<[AtomicU64]>,
    /// Next slot to read (the consumer's).
    head: AtomicUsize,
    /// Next slot to write (the producer's).
    tail: AtomicUsize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            ptrs: (0..capacity).map(|_| AtomicPtr::default()).collect(),
            meta: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    /// Whether the producer may push.
    fn has_room(&self) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        tail - self.head.load(Ordering::Acquire) < self.ptrs.len()
    }

    /// Pushes a block (the producer only, after `has_room`).
    fn push(&self, p: NonNull<u8>, size: u32, tag: u32) {
        let tail = self.tail.load(Ordering::Relaxed);
        let i = tail % self.ptrs.len();
        self.ptrs[i].store(p.as_ptr(), Ordering::Relaxed);
        self.meta[i].store(u64::from(size) << 32 | u64::from(tag), Ordering::Relaxed);
        self.tail.store(tail + 1, Ordering::Release);
    }

    /// Pops a block (the consumer only).
    fn pop(&self) -> Option<(NonNull<u8>, u32, u32)> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let i = head % self.ptrs.len();
        let p = NonNull::new(self.ptrs[i].load(Ordering::Relaxed))?;
        let meta = self.meta[i].load(Ordering::Relaxed);
        self.head.store(head + 1, Ordering::Release);
        Some((p, (meta >> 32) as u32, meta as u32))
    }
}

/// One thread of the producer/consumer workload: allocates `blocks` blocks into `out` and frees
/// as many from `inn`. With `VERIFY`, patterns each block and checks what it frees.
fn produce_consume<G: GlobalAlloc, const VERIFY: bool>(
    g: &G,
    out: &Ring,
    inn: &Ring,
    blocks: usize,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (mut made, mut freed) = (0, 0);
    let mut idle = 0u32;
    while made < blocks || freed < blocks {
        let mut progress = false;
        if made < blocks && out.has_room() {
            let (size, align_log2) = Mix::Small.draw(&mut rng);
            let layout = replay::layout(size, align_log2);
            // SAFETY: a non-zero size.
            let p = NonNull::new(unsafe { g.alloc(layout) })
                .ok_or_else(|| format!("out of memory at block {made} ({size} B)"))?;
            let tag = made as u32;
            if VERIFY {
                // SAFETY: a fresh block of `size` bytes.
                unsafe { pattern::fill(p, 0, size as usize, u64::from(tag) ^ seed) };
            }
            out.push(p, size, tag);
            made += 1;
            progress = true;
        }
        if let Some((p, size, tag)) = inn.pop() {
            if VERIFY {
                // The producer's seed is this one's with the low bit flipped (see `pc_run`), or
                // this one's with a single thread.
                let producer = if std::ptr::eq(out, inn) {
                    seed
                } else {
                    seed ^ 1
                };
                // SAFETY: a live block of `size` bytes, patterned by its producer.
                let wrong = unsafe { pattern::check(p, size as usize, u64::from(tag) ^ producer) };
                if let Some(off) = wrong {
                    return Err(format!(
                        "block {p:p} ({size} B) from the other thread corrupted at byte {off}"
                    ));
                }
            }
            // SAFETY: a live block of `g`, allocated with this layout (align 8 for every size of
            // the small mix) by the producer, freed once (it left the ring).
            unsafe { g.dealloc(p.as_ptr(), replay::layout(size, 3)) };
            freed += 1;
            progress = true;
        }
        if progress {
            idle = 0;
        } else {
            // The other thread is behind (or descheduled: the machine is shared): spin a little,
            // then let it have the core.
            idle += 1;
            if idle < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
    Ok(())
}

/// Runs `work(thread)` on `threads` threads started together; returns the wall time from the
/// earliest thread's start to the last thread's end (each thread reads the clock itself, so a
/// descheduled main thread cannot shorten the span), or the first failure.
fn on_threads(
    threads: usize,
    work: &(dyn Fn(usize) -> Result<(), String> + Sync),
) -> Result<Duration, String> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let r = work(t);
                    (start, Instant::now(), r)
                })
            })
            .collect();
        let mut span: Option<(Instant, Instant)> = None;
        for h in handles {
            let (start, end, r) = h.join().map_err(|_| "thread panicked".to_string())?;
            r?;
            span = Some(span.map_or((start, end), |(s0, e0)| (s0.min(start), e0.max(end))));
        }
        Ok(span.map_or(Duration::ZERO, |(start, end)| end - start))
    })
}

/// Per-thread churn on `threads` threads: calls per second, or the failure.
fn churn_run<G: GlobalAlloc + Sync>(
    g: &G,
    ws: &[Workload],
    threads: usize,
    verify: bool,
) -> Result<f64, String> {
    let elapsed = on_threads(threads, &|t| {
        let mut slots = Slots::default();
        let a = &mut Shared(g);
        if verify {
            return replay::verify(a, &ws[t], usize::MAX, &mut slots)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let r = replay::timed(a, &ws[t], usize::MAX, &mut slots, replay::unlimited, || ());
        let _ = slots.teardown::<_, false>(a);
        match r.map_err(|e| e.to_string())?.stopped {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    })?;
    let calls: usize = ws[..threads].iter().map(|w| w.ops.len()).sum();
    Ok(calls as f64 / elapsed.as_secs_f64())
}

/// Producer/consumer on `threads` threads: calls per second, or the failure.
fn pc_run<G: GlobalAlloc + Sync>(
    g: &G,
    sizes: ThreadSizes,
    threads: usize,
    seed: u64,
    verify: bool,
) -> Result<f64, String> {
    let rings = [Ring::new(sizes.ring), Ring::new(sizes.ring)];
    let elapsed = on_threads(threads, &|t| {
        let out = &rings[t];
        let inn = &rings[(t + 1) % threads];
        let seed = (seed << 1) | t as u64;
        if verify {
            produce_consume::<G, true>(g, out, inn, sizes.blocks, seed)
        } else {
            produce_consume::<G, false>(g, out, inn, sizes.blocks, seed)
        }
    })?;
    Ok((2 * sizes.blocks * threads) as f64 / elapsed.as_secs_f64())
}

/// Which measurement one visit makes.
#[derive(Clone, Copy)]
enum Job<'a> {
    Churn(&'a [Workload], usize, bool),
    Pc(ThreadSizes, usize, u64, bool),
}

impl SharedVisit for Job<'_> {
    type Out = Result<f64, String>;
    fn visit<G: GlobalAlloc + Sync>(self, g: &G) -> Self::Out {
        match self {
            Self::Churn(ws, threads, verify) => churn_run(g, ws, threads, verify),
            Self::Pc(sizes, threads, seed, verify) => pc_run(g, sizes, threads, seed, verify),
        }
    }
}

/// One contestant on one workload: verified with two threads, then `runs` times timed with one
/// and with two threads, each on a fresh allocator.
fn cell<'w>(
    c: SharedPeer,
    memory: &mut ArenaMemory,
    region: usize,
    runs: usize,
    job: &dyn Fn(usize, bool) -> Job<'w>,
) -> Cell {
    let verify = with_shared(c, memory, region, job(2, true)).map(|_| ());
    let mut all = Vec::new();
    if verify.is_ok() {
        for _ in 0..runs {
            let one = with_shared(c, memory, region, job(1, false));
            let two = with_shared(c, memory, region, job(2, false));
            if let (Ok(one), Ok(two)) = (one, two) {
                all.push([one, two]);
            }
        }
    }
    let ops_per_s = if all.is_empty() {
        Vec::new()
    } else {
        vec![
            median(&all.iter().map(|r| r[0]).collect::<Vec<_>>()),
            median(&all.iter().map(|r| r[1]).collect::<Vec<_>>()),
        ]
    };
    Cell {
        verify,
        ops_per_s,
        runs: all,
    }
}

/// Runs the section: every contestant verified, then timed `runs` times.
pub fn bench(
    sizes: ThreadSizes,
    runs: usize,
    seed: u64,
    memory: &mut ArenaMemory,
    region: usize,
) -> ThreadsResult {
    let shape = Sizes {
        churn_ops: sizes.churn_ops,
        live_targets: [sizes.live; 3],
        ..Sizes::FULL
    };
    let ws: Vec<Workload> = (0..2)
        .map(|t| workload::small_churn(&shape, seed ^ ((t as u64 + 1) << 40)))
        .collect();
    let rows = SharedPeer::ALL
        .into_iter()
        .map(|c| Row {
            name: c.name(),
            churn: cell(c, memory, region, runs, &|threads, verify| {
                Job::Churn(&ws, threads, verify)
            }),
            pc: cell(c, memory, region, runs, &|threads, verify| {
                Job::Pc(sizes, threads, seed, verify)
            }),
        })
        .collect();
    ThreadsResult {
        sizes,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows,
    }
}
