//! The per-CPU heap (`PerCpuHeap` with `ThreadCpus`: host threads as CPUs) under several threads
//! at once: random churn with every block patterned and checked, a producer/consumer pipeline
//! whose blocks are freed by another thread than the one that allocated them, user pools used
//! from every thread, and an allocation that succeeds only because memory parked in another
//! thread's front is drained. Each test ends with everything freed, the heap trimmed back to its
//! idle pages and its invariants checked. Small enough for Miri
//! (`cargo miri test -p kheap-host --test percpu_threads`).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Barrier, mpsc};

use kheap::testing::{ArenaSource, XorShift64 as Rng};
use kheap::{PerCpuHeap, PoolId, SpinLock, ThreadCpus};

type Heap = PerCpuHeap<SpinLock, ArenaSource, ThreadCpus, 4>;

fn heap(pages: usize, cpus: usize) -> Heap {
    let heap = PerCpuHeap::empty(ThreadCpus::new(cpus));
    heap.init(ArenaSource::new(pages)).unwrap();
    heap
}

fn rounds(native: usize) -> usize {
    if cfg!(miri) { native / 100 } else { native }
}

/// A live block, patterned with its tag; may move to another thread.
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
    tag: u64,
}

// SAFETY: a `Block` owns its heap memory exclusively; the heap may free it on any thread.
unsafe impl Send for Block {}

fn byte(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8 ^ i as u8
}

impl Block {
    fn write(&self) {
        for i in 0..self.layout.size() {
            // SAFETY: the block has `layout.size()` bytes.
            unsafe { self.ptr.as_ptr().add(i).write(byte(self.tag, i)) };
        }
    }

    fn check(&self) {
        for i in 0..self.layout.size() {
            // SAFETY: as in `write`.
            let b = unsafe { self.ptr.as_ptr().add(i).read() };
            assert_eq!(b, byte(self.tag, i), "block {:p} byte {i}", self.ptr);
        }
    }

    fn alloc(heap: &Heap, size: usize, align: usize, tag: u64) -> Self {
        let layout = Layout::from_size_align(size, align).unwrap();
        let ptr = heap.allocate(layout).expect("the arena is large enough");
        assert_eq!(ptr.as_ptr().addr() % align, 0);
        let b = Self { ptr, layout, tag };
        b.write();
        b
    }

    fn free(self, heap: &Heap) {
        self.check();
        // SAFETY: allocated from `heap` with this layout, freed once.
        unsafe { heap.deallocate(self.ptr, self.layout) };
    }
}

fn draw(rng: &mut Rng) -> (usize, usize) {
    // Under Miri, which checks every byte written, large blocks stay small.
    let large = if cfg!(miri) { 5000 } else { 20_000 };
    let size = match rng.below(16) {
        0 => rng.range(4097, large),
        1..=3 => rng.range(257, 4096),
        _ => rng.range(1, 256),
    };
    let align = [1, 8, 8, 16, 64][rng.below(5) as usize];
    (size, align)
}

/// After the workload: everything freed, the heap trims back to its idle pages.
fn all_back(heap: &Heap) {
    heap.trim();
    heap.check_invariants().unwrap();
    let s = heap.stats().unwrap();
    assert_eq!((s.requested_bytes, s.held_bytes), (0, 0), "{s}");
    let h = heap.back().lock().unwrap();
    assert_eq!(h.source().mapped_pages(), h.idle_pages());
}

#[test]
fn threads_churn_at_once_with_every_block_checked() {
    // Five threads on four CPUs: two of them share a front and take turns.
    let heap = heap(4096, 4);
    std::thread::scope(|s| {
        for t in 0..5u64 {
            let heap = &heap;
            s.spawn(move || {
                ThreadCpus::bind(t as usize);
                let mut rng = Rng::new(t + 1);
                let mut live: Vec<Block> = Vec::new();
                for n in 0..rounds(4000) {
                    if live.len() < 64 && rng.below(3) != 0 {
                        let (size, align) = draw(&mut rng);
                        live.push(Block::alloc(heap, size, align, t << 32 | n as u64));
                    } else if !live.is_empty() {
                        let b = live.swap_remove(rng.below(live.len() as u64) as usize);
                        if rng.below(4) == 0 {
                            b.check();
                            let new = draw(&mut rng).0;
                            // SAFETY: a live block of this layout.
                            let p = unsafe { heap.reallocate(b.ptr, b.layout, new) }.unwrap();
                            let kept = b.layout.size().min(new);
                            for i in 0..kept {
                                // SAFETY: the new block has at least `kept` bytes.
                                assert_eq!(unsafe { p.as_ptr().add(i).read() }, byte(b.tag, i));
                            }
                            let layout = Layout::from_size_align(new, b.layout.align()).unwrap();
                            let moved = Block {
                                ptr: p,
                                layout,
                                tag: b.tag ^ 1,
                            };
                            moved.write();
                            live.push(moved);
                        } else {
                            b.free(heap);
                        }
                    }
                }
                for b in live {
                    b.free(heap);
                }
            });
        }
    });
    all_back(&heap);
}

#[test]
fn blocks_allocated_on_one_thread_are_freed_on_another() {
    let heap = heap(2048, 2);
    let per_producer = rounds(3000);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (tx, rx) = mpsc::sync_channel::<Block>(64);
            let heap = &heap;
            s.spawn(move || {
                ThreadCpus::bind(t as usize);
                let mut rng = Rng::new(t + 10);
                for n in 0..per_producer {
                    let size = rng.range(1, 600);
                    tx.send(Block::alloc(heap, size, 8, t << 32 | n as u64))
                        .unwrap();
                }
            });
            s.spawn(move || {
                // The consumer of producer `t` runs on the other CPU.
                ThreadCpus::bind(1 - t as usize);
                let mut got = 0;
                for b in rx {
                    b.free(heap);
                    got += 1;
                }
                assert_eq!(got, per_producer);
            });
        }
    });
    all_back(&heap);
}

#[test]
fn user_pools_are_used_from_every_thread() {
    let heap = heap(2048, 3);
    let sizes = [3usize, 24, 96, 700, 4000];
    let pools: Vec<(PoolId, usize)> = sizes
        .iter()
        .map(|&size| (heap.create_pool(size, 1).unwrap(), size))
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, Block)>();
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (heap, pools, tx, rx) = (&heap, &pools, tx.clone(), &rx);
            s.spawn(move || {
                ThreadCpus::bind(t as usize);
                let mut rng = Rng::new(t + 20);
                let mut live: Vec<(usize, Block)> = Vec::new();
                for n in 0..rounds(3000) {
                    let k = rng.below(pools.len() as u64) as usize;
                    let (id, size) = pools[k];
                    if live.len() < 48 && rng.below(2) == 0 {
                        let ptr = heap.pool_allocate(id).unwrap();
                        let layout = Layout::from_size_align(size, 1).unwrap();
                        let b = Block {
                            ptr,
                            layout,
                            tag: t << 32 | n as u64,
                        };
                        b.write();
                        live.push((k, b));
                    } else if let Some(i) = live.len().checked_sub(1) {
                        let (k, b) = live.swap_remove(rng.below(i as u64 + 1) as usize);
                        if rng.below(3) == 0 {
                            // Handed to whichever thread takes it next.
                            tx.send((k, b)).unwrap();
                        } else {
                            b.check();
                            // SAFETY: a live block of pool `k`, freed once.
                            unsafe { heap.pool_deallocate(pools[k].0, b.ptr) };
                        }
                    }
                    if let Ok((k, b)) = rx.lock().unwrap().try_recv() {
                        b.check();
                        // SAFETY: a live block of pool `k` from another thread, freed once.
                        unsafe { heap.pool_deallocate(pools[k].0, b.ptr) };
                    }
                }
                for (k, b) in live {
                    b.check();
                    // SAFETY: as above.
                    unsafe { heap.pool_deallocate(pools[k].0, b.ptr) };
                }
            });
        }
    });
    drop(tx);
    for (k, b) in rx.into_inner().unwrap() {
        b.check();
        // SAFETY: as above.
        unsafe { heap.pool_deallocate(pools[k].0, b.ptr) };
    }
    for (id, _) in pools {
        heap.destroy_pool(id).unwrap();
    }
    all_back(&heap);
}

/// Allocates `layout` blocks on this thread's CPU until the heap refuses.
fn fill_up(heap: &Heap, layout: Layout) -> Vec<NonNull<u8>> {
    std::iter::from_fn(|| heap.allocate(layout).ok()).collect()
}

fn free_all(heap: &Heap, layout: Layout, blocks: Vec<NonNull<u8>>) {
    for p in blocks {
        // SAFETY: allocated by `fill_up` with this layout, freed once.
        unsafe { heap.deallocate(p, layout) };
    }
}

#[test]
fn memory_parked_in_another_threads_front_never_makes_an_allocation_fail() {
    let pages = if cfg!(miri) { 24 } else { 64 };
    let page = Layout::from_size_align(4096, 4096).unwrap();
    let half = Layout::from_size_align(2048, 8).unwrap();
    // What one CPU gets from this heap while nothing is parked anywhere (the same heap and
    // arena as below: another arena may straddle a page-map boundary and need another node).
    let heap = heap(pages, 2);
    ThreadCpus::bind(0);
    let baseline = fill_up(&heap, page);
    let baseline_pages = baseline.len();
    free_all(&heap, page, baseline);
    heap.trim();
    let parked = Barrier::new(2);
    let done = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            ThreadCpus::bind(1);
            // Take every page in 2048-byte blocks, free them all: this CPU's front keeps some.
            let got = fill_up(&heap, half);
            free_all(&heap, half, got);
            assert!(heap.front(1).unwrap().cached_blocks() > 0);
            parked.wait();
            // Stays alive (and away from the heap) while the other thread allocates.
            done.wait();
        });
        parked.wait();
        let got = fill_up(&heap, page);
        let left_in_front = heap.front(1).unwrap().cached_blocks();
        let pages_got = got.len();
        free_all(&heap, page, got);
        // Let the other thread go before asserting, so a failure reports instead of hanging.
        done.wait();
        assert_eq!(left_in_front, 0, "drained");
        assert_eq!(
            pages_got, baseline_pages,
            "every page, as with nothing parked"
        );
    });
    all_back(&heap);
}
