//! The kernel's main job for `cargo run`: a heap workload that exercises every path of the heap —
//! collections on the global allocator, a user pool in the spirit of `kmem_cache_create`, a typed
//! `ObjectPool`, `Box::new_in` on a pool, large buffers and page runs, random churn with every byte
//! patterned and checked — and then proves that every page went back.
//!
//! With several CPUs online it runs on all of them at once ([`crate::smp::run_on_all`]): each CPU
//! builds, checks and frees its own share of the workload (its own collections, pools and churn,
//! with its own seed), all of them against the one global heap at the same time; the heap table
//! at the peak is printed while every CPU holds its share, and the footprint check after the
//! workload covers all of them.
//!
//! It scales to the memory it finds ([`Sizes::for_free_memory`]): the full workload peaks at about
//! 46 MiB of heap, which fits the default 128 MiB of QEMU; with less RAM every count shrinks in
//! proportion, down to the 21 MiB the bootloader needs to start the kernel at all (see
//! `boot/src/memory.rs`), so the demo runs, smaller, at every size that boots instead of failing
//! an allocation.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;

use kheap::ObjectPool;
use kheap_workload::Rng;

use crate::allocator::{self, HEAP};
use crate::memory;
use crate::serial_println;
use crate::smp::{self, MAX_CPUS};

/// Why the workload failed.
#[derive(Debug)]
pub enum WorkloadError {
    /// The heap could not provide memory the workload needed.
    OutOfMemory(&'static str),
    /// A block's contents changed while it was live.
    Corrupted {
        /// The block's address.
        addr: usize,
    },
    /// Pages or frames did not come back after everything was freed.
    NotReturned {
        /// Footprint before the workload.
        before: allocator::Footprint,
        /// Footprint after freeing everything and trimming.
        after: allocator::Footprint,
    },
    /// A user pool could not be created.
    Pool(kheap::PoolError),
    /// A CPU did not report a result for its share.
    DidNotRun {
        /// The CPU's index.
        cpu: usize,
    },
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory(what) => write!(f, "out of memory while {what}"),
            Self::Corrupted { addr } => write!(f, "block at {addr:#x} was corrupted"),
            Self::NotReturned { before, after } => {
                write!(f, "memory not returned: before {before:?}, after {after:?}")
            }
            Self::Pool(e) => write!(f, "user pool: {e}"),
            Self::DidNotRun { cpu } => write!(f, "CPU {cpu} did not run its share"),
        }
    }
}

/// A kernel object of the kind a user pool serves (think `task_struct`).
#[derive(Debug)]
struct Task {
    id: u64,
    name: [u8; 24],
    parent: Option<u64>,
    state: u32,
}

/// The byte pattern a block of id `id` holds at offset `i`.
fn pattern(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(31) as usize ^ i.wrapping_mul(7)) as u8
}

fn fill(block: &mut [u8], id: u64) {
    for (i, b) in block.iter_mut().enumerate() {
        *b = pattern(id, i);
    }
}

fn verify(block: &[u8], id: u64) -> Result<(), WorkloadError> {
    match block
        .iter()
        .enumerate()
        .find(|(i, b)| **b != pattern(id, *i))
    {
        None => Ok(()),
        Some((i, _)) => Err(WorkloadError::Corrupted {
            addr: block.as_ptr() as usize + i,
        }),
    }
}

fn print_heap(title: &str) {
    serial_println!("--- heap statistics: {title} ---");
    match allocator::stats() {
        Some(s) => serial_println!("{s}"),
        None => serial_println!("(heap not initialised)"),
    }
    serial_println!("{}", memory::stats());
    let k = crate::kfence::stats();
    serial_println!(
        "kfence: 1 in {} allocations on a guarded page; {} sampled, {} freed, {} live",
        k.interval,
        k.sampled,
        k.freed,
        k.live
    );
}

/// How much of each thing the workload makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Per mille of the full workload.
    pub permille: u64,
    /// `u64`s pushed onto one growing `Vec`.
    pub numbers: u64,
    /// Entries of the `BTreeMap` of strings.
    pub map_entries: u64,
    /// Entries of the `VecDeque`.
    pub queue: u32,
    /// Objects from the task pool.
    pub tasks: u64,
    /// `Box::new_in` objects on the 12-byte pool.
    pub pool_boxes: u32,
    /// Random allocations of the churn.
    pub churn_allocs: u64,
    /// Live blocks of the churn before it starts freeing.
    pub churn_floor: usize,
}

impl Sizes {
    /// The full workload.
    pub const FULL: Sizes = Sizes {
        permille: 1000,
        numbers: 1 << 18,
        map_entries: 20_000,
        queue: 50_000,
        tasks: 5_000,
        pool_boxes: 3_000,
        churn_allocs: 20_000,
        churn_floor: 2_000,
    };

    /// Heap bytes the full workload needs at its peak (measured: 11 651 pages mapped, 45.5 MiB),
    /// with room for the page tables, the heap's own pages and kfence's guarded pages.
    const FULL_PEAK_BYTES: u64 = 48 << 20;

    /// The workload that fits in `free_bytes` of free physical memory: the full one if its peak is
    /// at most 40% of it, else every count scaled down in proportion (the churn's live set, which
    /// dominates the peak, grows linearly with its counts).
    pub fn for_free_memory(free_bytes: u64) -> Sizes {
        let budget = free_bytes / 5 * 2;
        let permille = (budget.saturating_mul(1000) / Self::FULL_PEAK_BYTES).clamp(1, 1000);
        let f = Self::FULL;
        let scale = |n: u64| (n * permille / 1000).max(1);
        Sizes {
            permille,
            numbers: scale(f.numbers),
            map_entries: scale(f.map_entries),
            queue: scale(u64::from(f.queue)) as u32,
            tasks: scale(f.tasks),
            pool_boxes: scale(u64::from(f.pool_boxes)) as u32,
            churn_allocs: scale(f.churn_allocs),
            churn_floor: scale(f.churn_floor as u64) as usize,
        }
    }
}

impl Sizes {
    /// One CPU's share when `cpus` CPUs run the workload together: every count divided by
    /// `cpus` (at least 1), so that together they make about what one CPU would alone.
    pub fn share(self, cpus: usize) -> Sizes {
        let cpus = cpus.max(1) as u64;
        let part = |n: u64| (n / cpus).max(1);
        Sizes {
            permille: self.permille,
            numbers: part(self.numbers),
            map_entries: part(self.map_entries),
            queue: part(u64::from(self.queue)) as u32,
            tasks: part(self.tasks),
            pool_boxes: part(u64::from(self.pool_boxes)) as u32,
            churn_allocs: part(self.churn_allocs),
            churn_floor: part(self.churn_floor as u64) as usize,
        }
    }
}

/// Runs the workload at the size that fits the free memory, printing the heap table before, at
/// peak and after.
pub fn run() -> Result<(), WorkloadError> {
    allocator::trim();
    let free = memory::stats().frames_free * 4096;
    let sizes = Sizes::for_free_memory(free);
    if sizes.permille < 1000 {
        serial_println!(
            "workload: {} MiB of memory free, scaled to {}.{}% of the full workload",
            free >> 20,
            sizes.permille / 10,
            sizes.permille % 10
        );
    }
    run_sized(sizes)
}

/// Runs the workload with `sizes`, printing the heap table before, at peak and after.
pub fn run_sized(sizes: Sizes) -> Result<(), WorkloadError> {
    allocator::trim();
    let before = allocator::footprint();
    print_heap("before the workload");

    on_every_cpu(sizes)?;

    allocator::trim();
    allocator::check_invariants();
    let after = allocator::footprint();
    print_heap("after freeing everything (and trim)");
    if after != before {
        return Err(WorkloadError::NotReturned { before, after });
    }
    serial_println!(
        "workload: all memory returned ({} heap pages mapped, {} frames free, as before)",
        after.heap_pages,
        after.free_frames
    );
    Ok(())
}

/// Runs one share of the workload on every online CPU at once (the whole of it with one CPU):
/// every CPU builds its share, all wait until every share is built (the heap's peak, printed
/// once), then each checks and frees its own. The summaries are printed in CPU order afterwards.
fn on_every_cpu(sizes: Sizes) -> Result<(), WorkloadError> {
    let cpus = smp::online_count();
    let share = sizes.share(cpus);
    let built = Barrier::new(cpus);
    let printed = Barrier::new(cpus);
    let results: [Mutex<Option<Result<String, WorkloadError>>>; MAX_CPUS] =
        [const { Mutex::new(None) }; MAX_CPUS];
    let job = || {
        let cpu = smp::cpu_id();
        // Every CPU reaches both barriers, also when its share failed, so none waits forever.
        let live = Live::build(share, cpu as u64);
        built.wait();
        if cpu == 0 {
            print_heap("at peak, everything live");
            crate::heap_picture::emit_if_requested("at peak");
        }
        printed.wait();
        let result = live.and_then(|live| {
            live.verify()?;
            Ok(live.summary())
        });
        *results[cpu].lock() = Some(result);
    };
    if cpus == 1 {
        job();
    } else {
        // Only the boot workload calls `run_on_all` here, so it is never busy.
        smp::run_on_all(&job).expect("run_on_all is not in use during the boot workload");
        serial_println!("workload: ran on {cpus} CPUs at once, one share each");
    }
    allocator::check_invariants();
    for (cpu, slot) in results.iter().enumerate().take(cpus) {
        match slot.lock().take() {
            Some(Ok(summary)) if cpus == 1 => serial_println!("workload: {summary}"),
            Some(Ok(summary)) => serial_println!("workload: CPU {cpu}: {summary}"),
            Some(Err(e)) => return Err(e),
            None => return Err(WorkloadError::DidNotRun { cpu }),
        }
    }
    Ok(())
}

/// A one-shot meeting point for `n` CPUs: [`wait`](Self::wait) returns once all `n` have called
/// it.
struct Barrier {
    n: usize,
    arrived: AtomicUsize,
}

impl Barrier {
    const fn new(n: usize) -> Self {
        Self {
            n,
            arrived: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < self.n {
            core::hint::spin_loop();
        }
    }
}

/// Everything the workload keeps alive at its peak.
struct Live {
    numbers: Vec<u64>,
    map: BTreeMap<u64, String>,
    queue: VecDeque<u32>,
    queue_len: u32,
    churned: Vec<(u64, Box<[u8]>)>,
    tasks: usize,
    pool_boxes: usize,
    churn_ops: usize,
}

impl Live {
    fn build(sizes: Sizes, cpu: u64) -> Result<Self, WorkloadError> {
        let heap = HEAP.heap();

        // A growing vector (MiBs, through the large allocator and page runs).
        let mut numbers = Vec::new();
        for i in 0..sizes.numbers {
            numbers.push(i.wrapping_mul(0x9E37_79B9));
        }

        // A map of strings: many small blocks in the general classes.
        let mut map = BTreeMap::new();
        for i in 0..sizes.map_entries {
            let mut s = String::new();
            let _ = write!(s, "object-{i}");
            map.insert(i * 7, s);
        }

        let mut queue = VecDeque::new();
        for i in 0..sizes.queue {
            queue.push_back(i);
        }

        // A user pool of kernel objects, like `kmem_cache_create("task", ...)`.
        let tasks = ObjectPool::<Task, _, _>::new(heap).map_err(WorkloadError::Pool)?;
        let mut task_boxes = Vec::new();
        for id in 0..sizes.tasks {
            let t = Task {
                id,
                name: [b'a' + (id % 26) as u8; 24],
                parent: id.checked_sub(1),
                state: (id % 3) as u32,
            };
            task_boxes.push(
                tasks
                    .allocate(t)
                    .map_err(|_| WorkloadError::OutOfMemory("task pool"))?,
            );
        }
        for (i, t) in task_boxes.iter().enumerate() {
            if t.id != i as u64
                || t.parent != (i as u64).checked_sub(1)
                || t.state != (i % 3) as u32
            {
                return Err(WorkloadError::Corrupted {
                    addr: &**t as *const Task as usize,
                });
            }
            if t.name[0] != b'a' + (i % 26) as u8 {
                return Err(WorkloadError::Corrupted {
                    addr: t.name.as_ptr() as usize,
                });
            }
        }
        let task_count = task_boxes.len();

        // `Box::new_in` on a pool of 12-byte objects (a block size below every general class).
        let small = kheap::PoolAllocator::create(heap, core::alloc::Layout::new::<[u32; 3]>())
            .map_err(WorkloadError::Pool)?;
        let mut boxes: Vec<Box<[u32; 3], _>> = Vec::new();
        for i in 0..sizes.pool_boxes {
            boxes.push(Box::new_in([i, i ^ 0xFFFF, i.wrapping_mul(3)], small));
        }
        for (i, b) in boxes.iter().enumerate() {
            let i = i as u32;
            if **b != [i, i ^ 0xFFFF, i.wrapping_mul(3)] {
                return Err(WorkloadError::Corrupted {
                    addr: &**b as *const [u32; 3] as usize,
                });
            }
        }
        let pool_boxes = boxes.len();
        drop(boxes);
        small.destroy().map_err(WorkloadError::Pool)?;
        drop(task_boxes);
        drop(tasks);

        // Random churn: sizes from 1 B to 256 KiB, every byte patterned and checked on free. The
        // seeded generator (shared with the benchmarks) makes every run the same.
        // Each CPU has a seed of its own.
        let mut rng = Rng::new(0x1234_5678_9ABC_DEF1 ^ cpu.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut churned: Vec<(u64, Box<[u8]>)> = Vec::new();
        let mut churn_ops = 0;
        for id in 0..sizes.churn_allocs {
            let size = match rng.below(100) {
                0..=69 => 1 + rng.below(256),
                70..=94 => 257 + rng.below(4096),
                95..=98 => 4097 + rng.below(60_000),
                _ => 65_536 + rng.below(200_000),
            } as usize;
            let mut block = alloc::vec![0u8; size].into_boxed_slice();
            fill(&mut block, id);
            churned.push((id, block));
            churn_ops += 1;
            if churned.len() > sizes.churn_floor && rng.below(2) == 0 {
                let victim = rng.below(churned.len() as u64) as usize;
                let (vid, block) = churned.swap_remove(victim);
                verify(&block, vid)?;
                churn_ops += 1;
            }
        }
        Ok(Self {
            numbers,
            map,
            queue,
            queue_len: sizes.queue,
            churned,
            tasks: task_count,
            pool_boxes,
            churn_ops,
        })
    }

    fn verify(&self) -> Result<(), WorkloadError> {
        for (i, n) in self.numbers.iter().enumerate() {
            if *n != (i as u64).wrapping_mul(0x9E37_79B9) {
                return Err(WorkloadError::Corrupted {
                    addr: n as *const u64 as usize,
                });
            }
        }
        for (k, v) in &self.map {
            let mut expect = String::new();
            let _ = write!(expect, "object-{}", k / 7);
            if *v != expect {
                return Err(WorkloadError::Corrupted {
                    addr: v.as_ptr() as usize,
                });
            }
        }
        if self.queue.iter().copied().ne(0..self.queue_len) {
            return Err(WorkloadError::Corrupted {
                addr: self.queue.as_slices().0.as_ptr() as usize,
            });
        }
        for (id, block) in &self.churned {
            verify(block, *id)?;
        }
        Ok(())
    }

    fn summary(&self) -> String {
        alloc::format!(
            "checked Vec of {} u64, BTreeMap of {} strings, VecDeque of {}, {} pooled tasks, \
             {} Box::new_in pool objects, {} random alloc/free ops ({} blocks live, all bytes verified)",
            self.numbers.len(),
            self.map.len(),
            self.queue.len(),
            self.tasks,
            self.pool_boxes,
            self.churn_ops,
            self.churned.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Sizes;

    #[kernel::test]
    fn the_full_workload_fits_qemus_default_memory() {
        // What the kernel finds free at `-m 128M`.
        assert_eq!(Sizes::for_free_memory(122 << 20), Sizes::FULL);
    }

    #[kernel::test]
    fn shares_split_every_count_between_cpus() {
        let one = Sizes::FULL.share(1);
        assert_eq!(one, Sizes::FULL);
        let four = Sizes::FULL.share(4);
        assert_eq!(four.numbers, Sizes::FULL.numbers / 4);
        assert_eq!(four.churn_allocs, Sizes::FULL.churn_allocs / 4);
        let tiny = Sizes::for_free_memory(0).share(8);
        assert!(tiny.tasks >= 1 && tiny.queue >= 1 && tiny.churn_floor >= 1);
    }

    #[kernel::test]
    fn less_memory_scales_every_count_down() {
        // About what is free at `-m 21M`, the least the bootloader starts the kernel with.
        let small = Sizes::for_free_memory(14 << 20);
        assert!(small.permille < 150, "{small:?}");
        assert!(small.churn_allocs < Sizes::FULL.churn_allocs / 5);
        assert!(small.numbers < Sizes::FULL.numbers / 5);
        let tiny = Sizes::for_free_memory(0);
        assert_eq!(tiny.permille, 1);
        assert!(tiny.tasks >= 1 && tiny.queue >= 1 && tiny.churn_floor >= 1);
    }
}
