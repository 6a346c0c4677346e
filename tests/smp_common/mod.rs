//! The heap and the memory layer on every CPU at once: the scenarios shared by the test kernels
//! `smp_heap` (`-smp 2`) and `smp_heap_4` (`-smp 4`), each run through `smp::run_on_all` so that
//! all CPUs work at the same time. Every block is patterned and checked, and each scenario ends
//! with every heap page and frame given back after a trim.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kernel::allocator::{self, HEAP};
use kernel::cpu::clock::Deadline;
use kernel::cpu::probe;
use kernel::memory::{self, KernelPageSource};
use kernel::smp::{self, MAX_CPUS, ipi};
use kheap::PageSource;
use kheap_workload::Rng;
use spin::Mutex;
use x86_64::VirtAddr;
use x86_64::structures::paging::PhysFrame;

const PAGE: usize = 4096;

/// Runs `workload`, then checks that every heap page and every frame it took came back.
fn returns_everything(workload: impl FnOnce()) {
    allocator::trim();
    let before = allocator::footprint();
    workload();
    allocator::trim();
    allocator::check_invariants();
    memory::check_invariants();
    let after = allocator::footprint();
    assert_eq!(
        after, before,
        "heap footprint (heap pages, free frames) not restored: before {before:?}, after {after:?}"
    );
}

/// The byte at `i` of the block tagged `tag`.
fn pattern(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8 ^ (i as u8)
}

/// A raw heap block, patterned with its tag.
struct Block {
    ptr: *mut u8,
    layout: Layout,
    tag: u64,
}

// SAFETY: a Block owns its heap memory exclusively; the global allocator may free it on any CPU.
unsafe impl Send for Block {}

impl Block {
    fn new(size: usize, align: usize, tag: u64) -> Self {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: the size is non-zero.
        let ptr = unsafe { alloc::alloc::alloc(layout) };
        assert!(
            !ptr.is_null(),
            "allocation of {size} B aligned {align} failed"
        );
        assert!(ptr.addr().is_multiple_of(align), "misaligned block");
        for i in 0..size {
            // SAFETY: inside the block just allocated.
            unsafe { ptr.add(i).write(pattern(tag, i)) };
        }
        Self { ptr, layout, tag }
    }

    /// The offset of the first wrong byte, if any.
    fn check(&self) -> Option<usize> {
        // SAFETY: the block is live and `size` bytes long.
        (0..self.layout.size()).find(|&i| unsafe { self.ptr.add(i).read() } != pattern(self.tag, i))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`, freed once.
        unsafe { alloc::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// A size and alignment from `rng`: mostly small, some of a few pages, a few page runs.
fn draw(rng: &mut Rng) -> (usize, usize) {
    let r = rng.next_u64();
    let size = match r % 100 {
        0..90 => 1 + (r >> 8) as usize % 512,
        90..98 => 512 + (r >> 8) as usize % 8192,
        _ => 8192 + (r >> 8) as usize % 90_000,
    };
    let align = 1 << ((r >> 40) % 13);
    (size, align)
}

/// Each CPU's share of `total` operations: the same work in all for any CPU count, so that
/// `-smp 4` on a 2-core host takes about as long as `-smp 2`.
fn share(total: usize) -> usize {
    total / smp::online_count()
}

fn tag(cpu: usize, n: usize) -> u64 {
    ((cpu as u64) << 40) | n as u64
}

#[kernel::test]
fn all_cpus_allocate_and_free_at_once() {
    let ops = share(24_000);
    const LIVE: usize = 300;
    let corrupt = AtomicUsize::new(0);
    returns_everything(|| {
        smp::run_on_all(&|| {
            let cpu = smp::cpu_id();
            let mut rng = Rng::new(0x5eed + cpu as u64);
            let mut live: Vec<Block> = Vec::with_capacity(LIVE);
            for n in 0..ops {
                if live.len() < LIVE && (live.is_empty() || rng.next_u64() % 3 != 0) {
                    let (size, align) = draw(&mut rng);
                    live.push(Block::new(size, align, tag(cpu, n)));
                } else {
                    let b = live.swap_remove(rng.next_u64() as usize % live.len());
                    if b.check().is_some() {
                        corrupt.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            for b in live {
                if b.check().is_some() {
                    corrupt.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    });
    assert_eq!(
        corrupt.load(Ordering::SeqCst),
        0,
        "blocks changed under their owner"
    );
}

#[kernel::test]
fn blocks_allocated_on_one_cpu_are_freed_on_another() {
    let per_cpu = share(8000);
    /// Blocks in flight per ring at most.
    const DEPTH: usize = 64;
    let n = smp::online_count();
    let errors = AtomicUsize::new(0);
    let freed_remote = AtomicUsize::new(0);
    returns_everything(|| {
        // Ring `i` carries blocks to CPU `i`, from CPU `i - 1`.
        let rings: Vec<Mutex<VecDeque<Block>>> = (0..n)
            .map(|_| Mutex::new(VecDeque::with_capacity(DEPTH)))
            .collect();
        smp::run_on_all(&|| {
            let cpu = smp::cpu_id();
            let next = (cpu + 1) % n;
            let prev = (cpu + n - 1) % n;
            let mut rng = Rng::new(0xface + cpu as u64);
            let (mut sent, mut got) = (0, 0);
            while sent < per_cpu || got < per_cpu {
                if sent < per_cpu && rings[next].lock().len() < DEPTH {
                    let (size, align) = draw(&mut rng);
                    let block = Block::new(size, align, tag(cpu, sent));
                    rings[next].lock().push_back(block);
                    sent += 1;
                }
                let received = rings[cpu].lock().pop_front();
                if let Some(block) = received {
                    if block.tag >> 40 != prev as u64 || block.check().is_some() {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    // Freed here, allocated on `prev`.
                    drop(block);
                    freed_remote.fetch_add(1, Ordering::SeqCst);
                    got += 1;
                }
            }
        })
        .unwrap();
        assert!(rings.iter().all(|r| r.lock().is_empty()));
    });
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "blocks arrived changed or from the wrong CPU"
    );
    assert_eq!(freed_remote.load(Ordering::SeqCst), n * per_cpu);
}

/// A pooled object: its own tag, repeated.
type Obj = [u64; 5];

#[kernel::test]
fn user_pools_are_shared_by_every_cpu() {
    let ops = share(12_000);
    let n = smp::online_count();
    let errors = AtomicUsize::new(0);
    returns_everything(|| {
        let pool = kheap::ObjectPool::<Obj, _, _>::new(HEAP.heap()).expect("pool");
        let handoff: Vec<Mutex<Vec<kheap::PoolBox<'_, Obj, _, _>>>> = (0..n)
            .map(|_| Mutex::new(Vec::with_capacity(ops)))
            .collect();
        smp::run_on_all(&|| {
            let cpu = smp::cpu_id();
            let mut rng = Rng::new(0x9001 + cpu as u64);
            let mut live = Vec::with_capacity(256);
            for i in 0..ops {
                let t = tag(cpu, i);
                if live.len() < 256 && rng.next_u64() % 4 != 0 {
                    live.push((t, pool.allocate([t; 5]).expect("pool block")));
                } else if let Some((t, b)) = live.pop() {
                    if *b != [t; 5] {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    // Every other block is freed by the next CPU.
                    if i % 2 == 0 {
                        handoff[(cpu + 1) % n].lock().push(b);
                    }
                }
            }
            for (t, b) in live {
                if *b != [t; 5] {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
        // Each CPU frees what the previous one handed it.
        smp::run_on_all(&|| {
            let mine = core::mem::take(&mut *handoff[smp::cpu_id()].lock());
            for b in mine {
                let t = b[0];
                if *b != [t; 5] {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
        drop(handoff);
        drop(pool);
    });
    assert_eq!(errors.load(Ordering::SeqCst), 0, "pooled objects changed");
}

static IRQ_ALLOCS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static IRQ_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Runs in the call-IPI handler: allocates a few blocks, checks them, frees them.
fn allocating_ipi() {
    let cpu = smp::cpu_id();
    let k = IRQ_ALLOCS[cpu].fetch_add(1, Ordering::SeqCst);
    let blocks: [Block; 4] = core::array::from_fn(|j| {
        Block::new(
            [24, 200, 1500, 9000][j] + (k as usize % 7),
            8,
            tag(cpu, k as usize * 4 + j),
        )
    });
    if blocks.iter().any(|b| b.check().is_some()) {
        IRQ_ERRORS.fetch_add(1, Ordering::SeqCst);
    }
}

#[kernel::test]
fn interrupt_handlers_allocate_on_every_cpu() {
    /// Interrupt-side allocation rounds each CPU must see.
    const WANT: u64 = 100;
    let n = smp::online_count();
    let corrupt = AtomicUsize::new(0);
    let all_done = AtomicBool::new(false);
    let base: [u64; MAX_CPUS] = core::array::from_fn(|i| IRQ_ALLOCS[i].load(Ordering::SeqCst));
    returns_everything(|| {
        ipi::set_hook(Some(allocating_ipi));
        smp::run_on_all(&|| {
            let cpu = smp::cpu_id();
            // The other CPUs run jobs with interrupts enabled; the boot CPU (the caller) keeps
            // its own state, disabled by default: enable them for this job.
            let was_enabled = x86_64::instructions::interrupts::are_enabled();
            x86_64::instructions::interrupts::enable();
            let next = (cpu + 1) % n;
            // The CPUs interrupt each other in step: one sends its k-th IPI to `next` only when
            // `next` has handled all but one of the earlier ones and this CPU has itself handled
            // at least k - 2 (from the CPU before it). Unpaced, an IPI every 8 allocations, each
            // handler a dozen kilobytes of allocation and checking, can keep a CPU whose vCPU
            // fell a little behind in its handler for good: its own loop, and so its IPIs back,
            // starve, the other runs ever faster, and the test waits for interrupts that never
            // come (seen under multi-threaded TCG when the heap window's layout changed). IPIs
            // that merge in an APIC count once, so a CPU that waited 1024 iterations sends anyway.
            let (next_base, own_base) = (ipi::received(next), ipi::received(cpu));
            let (mut sent, mut last_sent) = (0u64, 0usize);
            let mut live: VecDeque<Block> = VecDeque::with_capacity(200);
            let mut i = 0usize;
            // Until every CPU had its interrupts (bounded, in case IPIs are lost).
            while !all_done.load(Ordering::SeqCst) && i < 400_000 {
                live.push_back(Block::new(1 + (i * 37) % 700, 8, tag(cpu, i)));
                if live.len() > 150 {
                    let b = live.pop_front().unwrap();
                    if b.check().is_some() {
                        corrupt.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let handled_there = ipi::received(next) - next_base;
                let handled_here = ipi::received(cpu) - own_base;
                if i % 8 == 0
                    && handled_there + 2 > sent
                    && (handled_here + 2 > sent || i - last_sent > 1024)
                {
                    ipi::send(next, ipi::CALL_VECTOR).unwrap();
                    sent += 1;
                    last_sent = i;
                }
                if cpu == 0
                    && i % 64 == 0
                    && (0..n).all(|c| IRQ_ALLOCS[c].load(Ordering::SeqCst) >= base[c] + WANT)
                {
                    all_done.store(true, Ordering::SeqCst);
                }
                i += 1;
            }
            for b in live {
                if b.check().is_some() {
                    corrupt.fetch_add(1, Ordering::SeqCst);
                }
            }
            if !was_enabled {
                x86_64::instructions::interrupts::disable();
            }
        })
        .unwrap();
        ipi::set_hook(None);
    });
    for (cpu, b) in base.iter().enumerate().take(n) {
        let got = IRQ_ALLOCS[cpu].load(Ordering::SeqCst) - b;
        assert!(
            got >= WANT,
            "CPU {cpu}: only {got} interrupt handlers allocated"
        );
    }
    assert_eq!(
        IRQ_ERRORS.load(Ordering::SeqCst),
        0,
        "interrupt-side blocks corrupted"
    );
    assert_eq!(
        corrupt.load(Ordering::SeqCst),
        0,
        "main-loop blocks corrupted"
    );
}

/// What the readers should find in the pages before they are unmapped, and what the reused
/// frames hold afterwards.
const OLD: u64 = 0x0a0a_0a0a_0a0a_0a0a;
const NEW: u64 = 0x5eed_5eed_5eed_5eed;

/// One round of the shootdown scenario: CPU 0 maps `pages` heap-window pages (or, with
/// `through_heap`, gets them as a page run of the global heap), the other CPUs read every page
/// (so their TLBs hold the translations), CPU 0 unmaps them and takes their frames again from
/// the frame allocator and fills them with new contents; then every other CPU reads the pages
/// again. Each such read must fault. Returns the stale reads seen (address, value).
fn shootdown_round(pages: usize, through_heap: bool) -> Vec<(u64, u64)> {
    let n = smp::online_count();
    let addr = AtomicU64::new(0);
    let read = AtomicUsize::new(0);
    let unmapped = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    // Room for every stale read, made now: a reader must not allocate after the unmap either.
    let stale: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::with_capacity(pages * MAX_CPUS));
    smp::run_on_all(&|| {
        if smp::cpu_id() == 0 {
            let mut heap_block: Option<Vec<u64>> = None;
            let base = if through_heap {
                let v = alloc::vec![OLD; pages * PAGE / 8];
                let p = v.as_ptr() as u64;
                heap_block = Some(v);
                p
            } else {
                let p = KernelPageSource::new().map_pages(pages).expect("pages");
                for i in 0..pages * PAGE / 8 {
                    // SAFETY: inside the run just mapped.
                    unsafe { p.cast::<u64>().as_ptr().add(i).write(OLD) };
                }
                p.as_ptr() as u64
            };
            let first = base.next_multiple_of(PAGE as u64);
            let count = (pages - usize::from(first != base)) as u64;
            addr.store(first | count, Ordering::SeqCst);
            let frames: Vec<PhysFrame> = (0..count)
                .map(|i| {
                    PhysFrame::containing_address(
                        memory::translate(VirtAddr::new(first + i * PAGE as u64)).unwrap(),
                    )
                })
                .collect();
            // Nothing may allocate from the unmap until the readers are done: a new heap page
            // could take the unmapped addresses or frames again (a read of it would not be a
            // stale one), so the list of frames taken back is allocated now.
            let limit = 4 * frames.len() + 16;
            let mut taken = Vec::with_capacity(limit);
            let deadline = Deadline::after_us(10_000_000);
            while read.load(Ordering::SeqCst) < n - 1 {
                assert!(!deadline.passed(), "readers did not read");
                core::hint::spin_loop();
            }
            if let Some(v) = heap_block.take() {
                drop(v);
                allocator::trim();
            } else {
                // SAFETY: the run was mapped above and nothing holds references into it.
                unsafe {
                    KernelPageSource::new()
                        .unmap_pages(core::ptr::NonNull::new(base as *mut u8).unwrap(), pages)
                };
                // A short run stays mapped as spares of the window: releasing them is the
                // unmap (and shootdown) this round checks. (`trim`, above, releases them too.)
                memory::release_spare_pages();
            }
            for i in 0..count {
                assert!(
                    memory::translate(VirtAddr::new(first + i * PAGE as u64)).is_none(),
                    "page still mapped"
                );
            }
            // Take the frames back from the frame allocator and give them new contents.
            let offset = memory::physical_memory_offset().unwrap().as_u64();
            let mut reused = 0;
            while reused < frames.len() && taken.len() < limit {
                let f = memory::allocate_frame().expect("frame");
                if frames.contains(&f) {
                    let p = (offset + f.start_address().as_u64()) as *mut u64;
                    for i in 0..PAGE / 8 {
                        // SAFETY: the frame is ours again; the physical-memory mapping maps it.
                        unsafe { p.add(i).write_volatile(NEW) };
                    }
                    reused += 1;
                }
                taken.push(f);
            }
            assert_eq!(
                reused,
                frames.len(),
                "the unmapped frames were not handed out again"
            );
            unmapped.store(true, Ordering::SeqCst);
            while done.load(Ordering::SeqCst) < n - 1 {
                core::hint::spin_loop();
            }
            for i in 0..count {
                assert!(
                    memory::translate(VirtAddr::new(first + i * PAGE as u64)).is_none(),
                    "the page was mapped again while the readers read (the test is void)"
                );
            }
            for f in taken {
                // SAFETY: taken above, no longer used by anyone.
                unsafe { memory::deallocate_frame(f) };
            }
        } else {
            let mut a;
            while {
                a = addr.load(Ordering::SeqCst);
                a == 0
            } {
                core::hint::spin_loop();
            }
            let (first, count) = (a & !(PAGE as u64 - 1), a & (PAGE as u64 - 1));
            for i in 0..count {
                // SAFETY: the page is mapped and holds plain data until CPU 0 sees `read`.
                let v = unsafe { probe::read_u64(first + i * PAGE as u64) };
                assert_eq!(
                    v,
                    Ok(OLD),
                    "CPU {} read page {i} before the unmap",
                    smp::cpu_id()
                );
            }
            read.fetch_add(1, Ordering::SeqCst);
            while !unmapped.load(Ordering::SeqCst) {
                core::hint::spin_loop();
            }
            for i in 0..count {
                let page = first + i * PAGE as u64;
                // SAFETY: the page is unmapped (a fault is the expected outcome); were a stale
                // translation used, it would read plain data in a frame CPU 0 filled.
                if let Ok(v) = unsafe { probe::read_u64(page) } {
                    let mut stale = stale.lock();
                    if stale.len() < stale.capacity() {
                        stale.push((page, v));
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    stale.into_inner()
}

#[kernel::test]
fn unmapped_heap_pages_fault_on_every_cpu_and_never_show_the_reused_frame() {
    returns_everything(|| {
        let before = smp::shootdown::stats();
        // One page, a short run (flushed page by page), a long one (flushed whole), and a page
        // run of the global heap given back by trim.
        for round in 0..share(12) {
            for (pages, through_heap) in [(1, false), (5, false), (40, false), (24, true)] {
                let stale = shootdown_round(pages, through_heap);
                assert!(
                    stale.is_empty(),
                    "round {round}, {pages} pages{}: stale translations read {} (value {:#x} at {:#x}; new contents are {NEW:#x})",
                    if through_heap { " (global heap)" } else { "" },
                    stale.len(),
                    stale[0].1,
                    stale[0].0
                );
            }
        }
        assert!(
            smp::shootdown::stats().requests > before.requests,
            "no shootdown was sent"
        );
    });
}

/// The `cargo run` boot workload, at a tenth of its size, on every CPU at once: each CPU builds,
/// checks and frees its own share, and every page comes back (`run_sized` checks the footprint).
#[kernel::test]
fn the_boot_workload_runs_on_every_cpu_at_once() {
    let sizes = kernel::workload::Sizes::for_free_memory(12 << 20);
    assert!(sizes.permille < 200, "{sizes:?}");
    if let Err(e) = kernel::workload::run_sized(sizes) {
        panic!("boot workload on {} CPUs: {e}", smp::online_count());
    }
}

/// A block of user pool `pool` (an index into the test's pools), patterned with its tag.
struct PoolBlock {
    pool: usize,
    ptr: *mut u8,
    size: usize,
    tag: u64,
}

// SAFETY: a PoolBlock owns its pool block exclusively; the heap may free it on any CPU.
unsafe impl Send for PoolBlock {}

impl PoolBlock {
    fn ok(&self) -> bool {
        // SAFETY: the block is live and `size` bytes long.
        (0..self.size).all(|i| unsafe { self.ptr.add(i).read() } == pattern(self.tag, i))
    }
}

#[kernel::test]
fn user_pools_go_through_every_cpus_front() {
    let ops = share(12_000);
    let n = smp::online_count();
    let errors = AtomicUsize::new(0);
    returns_everything(|| {
        let heap = HEAP.front();
        let pools: Vec<(kheap::PoolId, usize)> = [24usize, 100, 3000]
            .iter()
            .map(|&size| (heap.create_pool(size, 8).expect("pool"), size))
            .collect();
        let handoff: Vec<Mutex<Vec<PoolBlock>>> = (0..n)
            .map(|_| Mutex::new(Vec::with_capacity(ops)))
            .collect();
        let free = |b: PoolBlock| {
            if !b.ok() {
                errors.fetch_add(1, Ordering::SeqCst);
            }
            // SAFETY: a live block of this pool, freed once.
            unsafe {
                heap.pool_deallocate(pools[b.pool].0, core::ptr::NonNull::new(b.ptr).unwrap())
            };
        };
        smp::run_on_all(&|| {
            let cpu = smp::cpu_id();
            let mut rng = Rng::new(0x7001 + cpu as u64);
            let mut live: Vec<PoolBlock> = Vec::with_capacity(128);
            for i in 0..ops {
                let k = rng.next_u64() as usize % pools.len();
                if live.len() < 128 && rng.next_u64() % 3 != 0 {
                    let (id, size) = pools[k];
                    let ptr = heap.pool_allocate(id).expect("pool block").as_ptr();
                    let t = tag(cpu, i);
                    for j in 0..size {
                        // SAFETY: inside the block just allocated.
                        unsafe { ptr.add(j).write(pattern(t, j)) };
                    }
                    live.push(PoolBlock {
                        pool: k,
                        ptr,
                        size,
                        tag: t,
                    });
                } else if let Some(b) = live.pop() {
                    // Every other block is freed by the next CPU.
                    if i % 2 == 0 {
                        handoff[(cpu + 1) % n].lock().push(b);
                    } else {
                        free(b);
                    }
                }
            }
            live.into_iter().for_each(free);
        })
        .unwrap();
        smp::run_on_all(&|| {
            let mine = core::mem::take(&mut *handoff[smp::cpu_id()].lock());
            mine.into_iter().for_each(free);
        })
        .unwrap();
        drop(handoff);
        for (id, _) in pools {
            heap.destroy_pool(id)
                .expect("every block freed, every front drained");
        }
    });
    assert_eq!(errors.load(Ordering::SeqCst), 0, "pool blocks changed");
}

/// The blocks of the drain test: a class size also with the red zones of `debug-checks` (1360-byte
/// blocks, 3 per chunk: a front keeps at most 6).
const PARK_SIZE: usize = 1000;

/// Allocates `PARK_SIZE` blocks until the heap refuses (at most `out.len()`); returns how many.
fn fill_pages(out: &mut [*mut u8]) -> usize {
    let page = Layout::from_size_align(PARK_SIZE, 8).unwrap();
    for (n, slot) in out.iter_mut().enumerate() {
        // SAFETY: a non-zero size. `black_box`: the refusal must really be asked for.
        let p = core::hint::black_box(unsafe { alloc::alloc::alloc(page) });
        if p.is_null() {
            return n;
        }
        *slot = p;
    }
    out.len()
}

fn free_pages(blocks: &[*mut u8]) {
    let page = Layout::from_size_align(PARK_SIZE, 8).unwrap();
    for &p in blocks {
        // SAFETY: allocated by `fill_pages` with this layout, freed once.
        unsafe { alloc::alloc::dealloc(p, page) };
    }
}

#[kernel::test]
fn memory_parked_in_another_cpus_front_is_drained_when_memory_runs_out() {
    const MAX: usize = 512;
    let taken = AtomicUsize::new(0);
    let parked = AtomicUsize::new(0);
    returns_everything(|| {
        let mut hoard = memory::bench_support::FrameHoard::new();
        hoard.keep_free(64);
        // Nothing of this CPU's front should be needed by the others' drains meanwhile.
        HEAP.front().flush_local();
        // CPU 1 takes every block it can, then frees them all: its front keeps some.
        smp::run_on_all(&|| {
            if smp::cpu_id() != 1 {
                return;
            }
            let mut blocks = [core::ptr::null_mut(); MAX];
            let n = fill_pages(&mut blocks);
            free_pages(&blocks[..n]);
            taken.store(n, Ordering::SeqCst);
            let front = HEAP.front().front(1).expect("CPU 1 has a front");
            parked.store(front.cached_blocks(), Ordering::SeqCst);
        })
        .unwrap();
        let taken = taken.load(Ordering::SeqCst);
        assert!(taken > 8 && taken < MAX, "CPU 1 took {taken} blocks");
        assert!(
            parked.load(Ordering::SeqCst) > 0,
            "CPU 1's front keeps blocks"
        );
        // This CPU gets as many: the blocks parked in CPU 1's front are drained.
        let mut blocks = [core::ptr::null_mut(); MAX];
        let n = fill_pages(&mut blocks);
        let left = HEAP.front().front(1).unwrap().cached_blocks();
        free_pages(&blocks[..n]);
        hoard.release();
        assert!(n + 1 >= taken, "CPU 0 got {n} blocks, CPU 1 had {taken}");
        assert_eq!(left, 0, "CPU 1's front drained");
    });
}
