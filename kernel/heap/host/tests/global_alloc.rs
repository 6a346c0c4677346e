//! The heap as the `#[global_allocator]` of this whole test binary: the test harness, `std`
//! and every collection below allocate through a `LockedHeap` over a static arena, from
//! several threads at once. Then the heap checks its invariants.
//!
//! Native only. Under Miri's Stacked Borrows a `#[global_allocator]` may write into a block
//! being freed only through the very pointer `dealloc` received while that block's `Box` is
//! still a (weakly protected) function argument, as it is inside `mem::drop` — a known limit of
//! the model for custom allocators (rust-lang/miri#2104, yvt/rlsf#20). The pool path obeys it;
//! the large allocator must reach its block header in front of the block, so it works on a
//! pointer rebuilt from its mapping, and std's own frees trip the check. The heap's unit tests
//! exercise the same paths under Miri through the heap's API, including frees through pointers
//! that cover only the requested bytes.
#![cfg(not(miri))]

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;

use kheap::source::{aligned_offset, aligned_slack};
use kheap::{LockedHeap, PAGE_SIZE, PageSource, PageSourceError, SpinLock};

/// Pages of the static arena (64 MiB natively).
const PAGES: usize = if cfg!(miri) { 2048 } else { 16 * 1024 };

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; PAGES * PAGE_SIZE]>);

// SAFETY: the arena is only reached through `StaticArena`, which lives inside the locked heap.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; PAGES * PAGE_SIZE]));

/// A `const`-constructible first-fit page source over `ARENA` (there can be only one).
struct StaticArena {
    used: [u64; PAGES / 64],
}

impl StaticArena {
    fn is_free(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) == 0
    }

    /// Marks the free run of `count` pages at page `start` (inside the arena) used.
    fn take(&mut self, start: usize, count: usize) -> NonNull<u8> {
        for p in start..start + count {
            self.used[p / 64] |= 1 << (p % 64);
        }
        let base = ARENA.0.get().cast::<u8>();
        // SAFETY: `start + count <= PAGES` (the caller's search): inside the arena.
        unsafe { NonNull::new_unchecked(base.add(start * PAGE_SIZE)) }
    }
}

// SAFETY: runs are disjoint (bitmap), page aligned (the arena is), inside the static arena, and
// only freed through `unmap_pages`; an aligned run starts where `aligned_offset` puts it.
unsafe impl PageSource for StaticArena {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 {
            return Err(PageSourceError::InvalidRequest);
        }
        let mut start = 0;
        while start + count <= PAGES {
            match (start..start + count).find(|&p| !self.is_free(p)) {
                Some(busy) => start = busy + 1,
                None => return Ok(self.take(start, count)),
            }
        }
        Err(PageSourceError::OutOfMemory)
    }

    /// The first free run whose page `aligned_page` is aligned: the candidates are `align`
    /// apart.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        aligned_slack(count, align, aligned_page)?;
        let first = aligned_offset(ARENA.0.get().addr(), align, aligned_page) / PAGE_SIZE;
        let mut start = first;
        while start + count <= PAGES {
            if (start..start + count).all(|p| self.is_free(p)) {
                return Ok(self.take(start, count));
            }
            start += align / PAGE_SIZE;
        }
        Err(PageSourceError::OutOfMemory)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        let first = (ptr.addr().get() - ARENA.0.get().addr()) / PAGE_SIZE;
        for p in first..first + count {
            assert!(
                self.used[p / 64] & (1 << (p % 64)) != 0,
                "unmap of a free page"
            );
            self.used[p / 64] &= !(1 << (p % 64));
        }
    }
}

#[global_allocator]
static HEAP: LockedHeap<SpinLock, StaticArena> = LockedHeap::new(StaticArena {
    used: [0; PAGES / 64],
});

fn check_heap() {
    // Nothing may allocate while the heap is locked: collect, unlock, then assert.
    let guard = HEAP.lock().unwrap();
    let result = guard.check_invariants();
    let stats = guard.stats();
    drop(guard);
    result.unwrap();
    assert!(stats.requested_bytes > 0, "the harness itself allocates");
}

#[test]
fn collections_grow_and_shrink() {
    let n = if cfg!(miri) { 200 } else { 20_000 };
    let mut v: Vec<u64> = Vec::new();
    for i in 0..n {
        v.push(i);
    }
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v.iter().sum::<u64>(), 45);
    let mut s = String::new();
    for i in 0..n / 10 {
        s.push_str(&i.to_string());
    }
    let mut map = BTreeMap::new();
    let mut hash = HashMap::new();
    for i in 0..n {
        map.insert(i, vec![i as u8; (i % 300) as usize]);
        hash.insert(i, i.to_string());
        if i % 3 == 0 {
            map.remove(&(i / 2));
            hash.remove(&(i / 2));
        }
    }
    for (k, v) in &map {
        assert!(v.iter().all(|&b| b == *k as u8));
    }
    for (k, v) in &hash {
        assert_eq!(*v, k.to_string());
    }
    check_heap();
}

#[test]
fn threads_allocate_concurrently() {
    let rounds = if cfg!(miri) { 30 } else { 3000 };
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut boxes: Vec<Box<[u8]>> = Vec::new();
                for i in 0..rounds {
                    let len = (i * 37 + t * 11) % if i % 50 == 0 { 200_000 } else { 700 };
                    boxes.push(vec![t as u8; len].into_boxed_slice());
                    if i % 2 == 0 {
                        let b = boxes.swap_remove((i * 7) % boxes.len());
                        assert!(b.iter().all(|&x| x == t as u8));
                    }
                }
                boxes.len()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    check_heap();
}

#[test]
fn huge_request_fails_with_null() {
    let layout = std::alloc::Layout::from_size_align(PAGES * PAGE_SIZE, 8).unwrap();
    // SAFETY: a valid layout; the result is only compared.
    let p = unsafe { std::alloc::alloc(layout) };
    assert!(p.is_null());
    let v: Result<Vec<u8>, _> = {
        let mut v = Vec::new();
        v.try_reserve_exact(PAGES * PAGE_SIZE).map(|()| v)
    };
    assert!(v.is_err());
    check_heap();
}

/// Over-aligned requests (page runs placed by the arena) come back aligned and usable.
#[test]
fn over_aligned_requests() {
    for align in [64 << 10, 1 << 20, 8 << 20] {
        let layout = std::alloc::Layout::from_size_align(100, align).unwrap();
        // SAFETY: a valid layout; the block is written within its size and freed with it.
        unsafe {
            let p = std::alloc::alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p.addr() % align, 0);
            p.write_bytes(7, 100);
            std::alloc::dealloc(p, layout);
        }
    }
    check_heap();
}

/// Boxes of 1 byte (in 8-byte blocks) and of large sizes come and go.
#[test]
fn small_and_large_boxes() {
    let small: Vec<Box<u8>> = (0..100).map(Box::new).collect();
    let large: Vec<Box<[u8]>> = (0..4)
        .map(|i| vec![i; 5000 + i as usize].into_boxed_slice())
        .collect();
    drop(small);
    drop(large);
    check_heap();
}
