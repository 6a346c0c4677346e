//! Unit tests of the per-CPU front (small enough for Miri:
//! `cargo miri test -p kheap-host percpu`).

use std::vec::Vec;

use super::*;
use crate::cpu::{OneCpu, ThreadCpus};
use crate::locked::SpinLock;
use crate::testing::ArenaSource;

type Threads<const N: usize> = PerCpuHeap<SpinLock, ArenaSource, ThreadCpus, N>;

fn threads<const N: usize>(pages: usize, cpus: usize) -> Threads<N> {
    let heap = PerCpuHeap::empty(ThreadCpus::new(cpus));
    heap.init(ArenaSource::new(pages)).unwrap();
    heap
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Every block patterned with its tag, and checked before it is freed.
fn fill(p: NonNull<u8>, size: usize, tag: u8) {
    // SAFETY: a live block of at least `size` bytes.
    unsafe { p.as_ptr().write_bytes(tag, size) };
}

fn check(p: NonNull<u8>, size: usize, tag: u8) {
    // SAFETY: a live block of at least `size` bytes, written by `fill`.
    let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), size) };
    assert!(bytes.iter().all(|&b| b == tag), "block {p:p} corrupted");
}

fn back_pages<const N: usize>(heap: &Threads<N>) -> (usize, usize) {
    let h = heap.back().lock().unwrap();
    (h.source().mapped_pages(), h.idle_pages())
}

#[test]
fn the_documented_bounds_hold() {
    for (i, &size) in CLASS_SIZES.iter().enumerate() {
        assert_eq!(class_for(class_layout(i)), SizeClass::Small(i), "class {i}");
        let limit = class_limit(i);
        assert_eq!(limit_of(i), limit);
        assert!((2..=MAG_CAP).contains(&limit));
        assert!(limit * size <= FRONT_CLASS_BYTES.max(2 * size));
    }
    assert_eq!(class_limit(0), 64);
    assert_eq!(class_limit(NUM_CLASSES - 1), 2);
    assert_eq!(
        FRONT_BYTES_PER_CPU, 264_992,
        "the module docs give this number"
    );
    assert!(
        size_of::<CpuFront>() <= 20 * 1024,
        "the module docs say under 20 KiB"
    );
    assert_eq!(pool_limit(1), POOL_MAG_CAP);
    assert_eq!(pool_limit(4096), 2);
}

#[test]
fn a_hit_stays_in_the_front_and_the_numbers_stay_exact() {
    let heap = threads::<2>(256, 1);
    let a = heap.allocate(layout(100)).unwrap();
    fill(a, 100, 1);
    let s = heap.stats().unwrap();
    assert_eq!(s.requested_bytes, 100);
    let i = 12; // 104-byte blocks
    assert_eq!(CLASS_SIZES[i], 104);
    let batch = class_limit(i) / 2;
    assert_eq!(s.classes[i].in_use, 1);
    assert_eq!(
        s.classes[i].cached,
        batch - 1,
        "the refill's other blocks wait in the front"
    );
    assert_eq!(heap.front(0).unwrap().cached_blocks(), batch - 1);
    // Hits touch nothing behind the front: hold the back lock while they run. (With
    // `debug-checks`, a free first checks the block against the back, under its lock.)
    {
        let held = heap.back().lock().unwrap();
        let b = heap.allocate(layout(97)).unwrap();
        fill(b, 97, 2);
        check(a, 100, 1);
        if debug::ENABLED {
            drop(held);
        }
        // SAFETY: allocated above with this layout.
        unsafe { heap.deallocate(b, layout(97)) };
    }
    // SAFETY: allocated above with this layout.
    unsafe { heap.deallocate(a, layout(100)) };
    let s = heap.stats().unwrap();
    assert_eq!(s.requested_bytes, 0);
    assert_eq!(s.classes[i].in_use, 0);
    assert_eq!(s.classes[i].cached, batch);
    assert_eq!(s.held_bytes, 0);
    heap.check_invariants().unwrap();
    heap.trim();
    assert_eq!(heap.front(0).unwrap().cached_blocks(), 0);
    let (mapped, idle) = back_pages(&heap);
    assert_eq!(
        mapped, idle,
        "trimmed: only the first root run and its map nodes"
    );
}

#[test]
fn a_full_magazine_gives_its_oldest_half_back() {
    let heap = threads::<1>(256, 1);
    let i = NUM_CLASSES - 1; // 4096-byte blocks: a limit of 2
    let l = layout(4096);
    let blocks: Vec<_> = (0..5).map(|_| heap.allocate(l).unwrap()).collect();
    for &b in &blocks {
        // SAFETY: allocated above with this layout, freed once.
        unsafe { heap.deallocate(b, l) };
        assert!(heap.front(0).unwrap().counts[i].load(Ordering::Relaxed) as usize <= 2);
    }
    let s = heap.stats().unwrap();
    assert_eq!(s.classes[i].in_use, 0);
    assert_eq!(s.requested_bytes, 0);
    heap.check_invariants().unwrap();
}

#[test]
fn realloc_in_place_and_across_classes() {
    let heap = threads::<1>(256, 1);
    let p = heap.allocate(layout(20)).unwrap();
    fill(p, 20, 7);
    // SAFETY: a live block with this layout.
    let q = unsafe { heap.reallocate(p, layout(20), 24) }.unwrap();
    assert_eq!(p, q, "same class: in place");
    assert_eq!(heap.stats().unwrap().requested_bytes, 24);
    // SAFETY: as above, now 24 bytes.
    let r = unsafe { heap.reallocate(q, layout(24), 300) }.unwrap();
    check(r, 20, 7);
    assert_eq!(heap.stats().unwrap().requested_bytes, 300);
    // SAFETY: as above; a large block next.
    let big = unsafe { heap.reallocate(r, layout(300), 70_000) }.unwrap();
    check(big, 20, 7);
    // SAFETY: live, with this layout.
    unsafe { heap.deallocate(big, layout(70_000)) };
    assert_eq!(heap.stats().unwrap().requested_bytes, 0);
    heap.check_invariants().unwrap();
}

#[test]
fn a_block_freed_on_another_cpu_is_cached_there() {
    let heap = threads::<2>(256, 2);
    let l = layout(64);
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    std::thread::scope(|s| {
        let heap = &heap;
        s.spawn(move || {
            ThreadCpus::bind(0);
            for k in 0..8u8 {
                let p = heap.allocate(l).unwrap();
                fill(p, 64, k);
                tx.send(p.as_ptr().addr()).unwrap();
            }
        });
        s.spawn(move || {
            ThreadCpus::bind(1);
            for (k, addr) in rx.iter().enumerate() {
                let p = heap
                    .window_block(NonNull::new(core::ptr::without_provenance_mut(addr)).unwrap())
                    .unwrap();
                check(p, 64, k as u8);
                // SAFETY: allocated by the other thread with this layout, freed once.
                unsafe { heap.deallocate(p, l) };
            }
        });
    });
    let i = 7;
    assert_eq!(CLASS_SIZES[i], 64);
    let on1 = heap.front(1).unwrap().counts[i].load(Ordering::Relaxed);
    assert_eq!(on1, 8, "the freeing CPU caches the blocks");
    let s = heap.stats().unwrap();
    assert_eq!((s.classes[i].in_use, s.requested_bytes), (0, 0));
    heap.trim();
    let (mapped, idle) = back_pages(&heap);
    assert_eq!(mapped, idle);
}

#[test]
fn pools_go_through_the_fronts_and_slots_are_given_up_in_turn() {
    let heap = threads::<1>(512, 1);
    let ids: Vec<_> = (0..FRONT_POOL_SLOTS + 2)
        .map(|k| heap.create_pool(24 + 8 * k, 8).unwrap())
        .collect();
    let mut live = Vec::new();
    for round in 0..3 {
        for (k, &id) in ids.iter().enumerate() {
            let p = heap.pool_allocate(id).unwrap();
            fill(p, 24 + 8 * k, (round * 10 + k) as u8);
            live.push((id, p, 24 + 8 * k, (round * 10 + k) as u8));
        }
    }
    let s = heap.stats().unwrap();
    assert_eq!(s.requested_bytes, live.iter().map(|l| l.2).sum::<usize>());
    heap.check_invariants().unwrap();
    for (id, p, size, tag) in live.drain(..) {
        check(p, size, tag);
        // SAFETY: a live block of pool `id`, freed once.
        unsafe { heap.pool_deallocate(id, p) };
    }
    let s = heap.stats().unwrap();
    assert_eq!(s.requested_bytes, 0);
    for p in s.pools.iter().flatten() {
        assert_eq!(p.blocks.in_use, 0, "{}", p.id);
    }
    for id in ids {
        heap.destroy_pool(id).unwrap();
    }
    assert_eq!(
        heap.pool_allocate(PoolId::new(8, 99)),
        Err(AllocError::NoSuchPool)
    );
    heap.trim();
    let (mapped, idle) = back_pages(&heap);
    assert_eq!(mapped, idle);
}

#[test]
fn a_pool_in_use_on_another_cpu_cannot_be_destroyed_but_its_cached_blocks_do_not_count() {
    let heap = threads::<2>(256, 2);
    let id = heap.create_pool(40, 8).unwrap();
    let kept = std::thread::scope(|s| {
        s.spawn(|| {
            ThreadCpus::bind(1);
            let a = heap.pool_allocate(id).unwrap();
            let b = heap.pool_allocate(id).unwrap();
            // SAFETY: a live block of the pool, freed once.
            unsafe { heap.pool_deallocate(id, b) };
            a.as_ptr().addr()
        })
        .join()
        .unwrap()
    });
    ThreadCpus::bind(0);
    assert_eq!(
        heap.destroy_pool(id),
        Err(PoolError::PoolInUse { live_blocks: 1 })
    );
    let a = heap
        .window_block(NonNull::new(core::ptr::without_provenance_mut(kept)).unwrap())
        .unwrap();
    // SAFETY: the live block of the pool allocated above, freed once (on another CPU).
    unsafe { heap.pool_deallocate(id, a) };
    heap.destroy_pool(id).unwrap();
}

/// Allocates 4096-byte blocks on this thread's CPU until the heap refuses, patterning each.
fn fill_up<const N: usize>(heap: &Threads<N>) -> Vec<NonNull<u8>> {
    let mut got = Vec::new();
    while let Ok(p) = heap.allocate(layout(4096)) {
        fill(p, 4096, got.len() as u8);
        got.push(p);
    }
    got
}

fn free_all<const N: usize>(heap: &Threads<N>, got: Vec<NonNull<u8>>) {
    for (k, p) in got.into_iter().enumerate() {
        check(p, 4096, k as u8);
        // SAFETY: allocated by `fill_up` with this layout.
        unsafe { heap.deallocate(p, layout(4096)) };
    }
}

#[test]
fn an_allocation_drains_memory_parked_in_another_cpus_front() {
    let pages = if cfg!(miri) { 20 } else { 40 };
    // How many pages one CPU gets from this heap while nothing is parked anywhere. The same heap
    // and arena as below: another arena may straddle a page-map boundary and need one more
    // page-map node, so its count can differ by one.
    let heap = threads::<2>(pages, 2);
    ThreadCpus::bind(0);
    let baseline = fill_up(&heap);
    let expected = baseline.len();
    assert!(expected > 8);
    free_all(&heap, baseline);
    heap.trim();
    // CPU 1 takes every page, then frees it all: its front keeps some blocks.
    let (got_on_1, parked) = std::thread::scope(|s| {
        s.spawn(|| {
            ThreadCpus::bind(1);
            let got = fill_up(&heap);
            let n = got.len();
            free_all(&heap, got);
            (n, heap.front(1).unwrap().cached_blocks())
        })
        .join()
        .unwrap()
    });
    assert_eq!(got_on_1, expected);
    assert!(parked > 0, "parked in CPU 1's front");
    // CPU 0 still gets every page: the blocks parked in CPU 1's front are drained.
    let got = fill_up(&heap);
    assert_eq!(heap.front(1).unwrap().cached_blocks(), 0, "drained");
    assert_eq!(got.len(), expected);
    free_all(&heap, got);
    heap.trim();
    heap.check_invariants().unwrap();
    let (mapped, idle) = back_pages(&heap);
    assert_eq!(mapped, idle);
}

#[test]
fn one_cpu_falls_back_to_the_back_when_its_front_is_pinned() {
    let heap: PerCpuHeap<SpinLock, ArenaSource, OneCpu, 1> =
        PerCpuHeap::new(ArenaSource::new(128), OneCpu::new());
    let (cpu, pin) = heap.cpus().pin().unwrap();
    assert_eq!(cpu, 0);
    // As an interrupt handler would find it: the front is taken, the back serves.
    let p = heap.allocate(layout(32)).unwrap();
    assert_eq!(heap.front(0).unwrap().cached_blocks(), 0);
    heap.cpus().unpin(pin);
    // SAFETY: allocated above with this layout.
    unsafe { heap.deallocate(p, layout(32)) };
    assert_eq!(heap.front(0).unwrap().cached_blocks(), 1);
    assert_eq!(heap.stats().unwrap().requested_bytes, 0);
    heap.trim();
    heap.check_invariants().unwrap();
}

#[test]
#[cfg_attr(feature = "debug-checks", should_panic(expected = "double free"))]
fn a_double_free_into_the_front_is_caught() {
    let heap = threads::<1>(64, 1);
    let p = heap.allocate(layout(48)).unwrap();
    // SAFETY: the first free is valid; the second is the bug under test (with `debug-checks`
    // it panics before touching anything; without, the test stops here).
    unsafe {
        heap.deallocate(p, layout(48));
        if debug::ENABLED {
            heap.deallocate(p, layout(48));
        }
    }
}
