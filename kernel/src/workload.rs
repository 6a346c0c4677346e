//! The kernel's main job for `cargo run`: a heap workload that exercises every path of the heap —
//! collections on the global allocator, a user pool in the spirit of `kmem_cache_create`, a typed
//! `ObjectPool`, `Box::new_in` on a pool, large buffers and page runs, random churn with every byte
//! patterned and checked — and then proves that every page went back.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use kheap::ObjectPool;
use kheap_workload::Rng;

use crate::allocator::{self, HEAP};
use crate::memory;
use crate::serial_println;

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

/// Runs the workload, printing the heap table before, at peak and after.
pub fn run() -> Result<(), WorkloadError> {
    allocator::trim();
    let before = allocator::footprint();
    print_heap("before the workload");

    {
        let live = Live::build()?;
        print_heap("at peak, everything live");
        live.verify()?;
        allocator::check_invariants();
        serial_println!("workload: {}", live.summary());
    }

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

/// Everything the workload keeps alive at its peak.
struct Live {
    numbers: Vec<u64>,
    map: BTreeMap<u64, String>,
    queue: VecDeque<u32>,
    churned: Vec<(u64, Box<[u8]>)>,
    tasks: usize,
    pool_boxes: usize,
    churn_ops: usize,
}

impl Live {
    fn build() -> Result<Self, WorkloadError> {
        let heap = HEAP.heap();

        // A growing vector (MiBs, through the large allocator and page runs).
        let mut numbers = Vec::new();
        for i in 0..(1u64 << 18) {
            numbers.push(i.wrapping_mul(0x9E37_79B9));
        }

        // A map of strings: many small blocks in the general classes.
        let mut map = BTreeMap::new();
        for i in 0..20_000u64 {
            let mut s = String::new();
            let _ = write!(s, "object-{i}");
            map.insert(i * 7, s);
        }

        let mut queue = VecDeque::new();
        for i in 0..50_000u32 {
            queue.push_back(i);
        }

        // A user pool of kernel objects, like `kmem_cache_create("task", ...)`.
        let tasks = ObjectPool::<Task, _, _>::new(heap).map_err(WorkloadError::Pool)?;
        let mut task_boxes = Vec::new();
        for id in 0..5_000u64 {
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
        for i in 0..3_000u32 {
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
        let mut rng = Rng::new(0x1234_5678_9ABC_DEF1);
        let mut churned: Vec<(u64, Box<[u8]>)> = Vec::new();
        let mut churn_ops = 0;
        for id in 0..20_000u64 {
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
            if churned.len() > 2_000 && rng.below(2) == 0 {
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
        if self.queue.iter().copied().ne(0..50_000u32) {
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
