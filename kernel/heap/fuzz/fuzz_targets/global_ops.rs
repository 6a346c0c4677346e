//! The heap as the kernel uses it: `Checked<LockedHeap<SpinLock, ArenaSource>>` driven through
//! `GlobalAlloc` (alloc, alloc_zeroed, dealloc, realloc), as `Box`/`Vec` would. Every block is
//! patterned on allocation and checked before it is freed or reallocated (and a zeroed block
//! must read zero); no two live blocks overlap; every pointer is aligned; after each operation
//! the heap's invariant checker runs through the lock. A null result is only allowed when the
//! arena cannot hold the request (a small arena is chosen sometimes); at the end everything is
//! freed and trimmed, and only the first root run and its page-map nodes stay mapped. With the
//! default `debug-checks` feature the `Checked` layer adds red zones and poisoning, whose own
//! checks then run on every free and reallocation. Run: `cargo fuzz run global_ops`.

#![no_main]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use kheap::testing::ArenaSource;
use kheap::{Checked, LockedHeap, SpinLock};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum GOp {
    Alloc {
        size: u32,
        align_log2: u8,
        zeroed: bool,
    },
    Free {
        index: u16,
    },
    Realloc {
        index: u16,
        new_size: u32,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    small_arena: bool,
    ops: Vec<GOp>,
}

/// Largest request: past the 64 KiB page-run threshold, small enough to pattern quickly.
const MAX_SIZE: u32 = 200_000;

fn pattern(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
}

struct Live {
    ptr: *mut u8,
    layout: Layout,
    id: u64,
}

fn fill(b: &Live) {
    for i in 0..b.layout.size() {
        // SAFETY: the block is live with `layout.size()` bytes.
        unsafe { b.ptr.add(i).write(pattern(b.id, i)) };
    }
}

fn check(b: &Live, len: usize) {
    for i in 0..len {
        // SAFETY: the block is live with at least `len` bytes.
        let got = unsafe { b.ptr.add(i).read() };
        assert_eq!(got, pattern(b.id, i), "block {:p} byte {i} changed", b.ptr);
    }
}

fuzz_target!(|input: Input| {
    // 300 operations of at most 200 000 bytes fit in 128 MiB whatever the alignment.
    let pages = if input.small_arena { 256 } else { 32 * 1024 };
    let heap: Checked<LockedHeap<SpinLock, ArenaSource>> = Checked::new(LockedHeap::empty());
    heap.inner()
        .init(ArenaSource::new(pages))
        .expect("root run");
    let idle = heap.inner().lock().expect("initialised").idle_pages();
    let mut live: Vec<Live> = Vec::new();
    let mut ranges: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_id = 0u64;
    let insert = |ranges: &mut BTreeMap<usize, usize>, p: *mut u8, len: usize| {
        let start = p.addr();
        if let Some((&s, &l)) = ranges.range(..start + len).next_back() {
            assert!(
                s + l <= start,
                "{p:p} overlaps the live block at {s:#x} ({l} bytes)"
            );
        }
        ranges.insert(start, len);
    };
    for op in input.ops.into_iter().take(300) {
        match op {
            GOp::Alloc {
                size,
                align_log2,
                zeroed,
            } => {
                let size = (size % MAX_SIZE).max(1) as usize;
                let layout = Layout::from_size_align(size, 1 << (align_log2 % 14)).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe {
                    if zeroed {
                        heap.alloc_zeroed(layout)
                    } else {
                        heap.alloc(layout)
                    }
                };
                if p.is_null() {
                    assert!(
                        input.small_arena,
                        "allocation of {layout:?} failed in a large arena"
                    );
                    continue;
                }
                assert!(
                    p.addr().is_multiple_of(layout.align()),
                    "{p:p} misaligned for {layout:?}"
                );
                if zeroed {
                    // SAFETY: a fresh block of `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                    assert!(bytes.iter().all(|&b| b == 0), "not zeroed");
                }
                insert(&mut ranges, p, size);
                let b = Live {
                    ptr: p,
                    layout,
                    id: next_id,
                };
                next_id += 1;
                fill(&b);
                live.push(b);
            }
            GOp::Free { index } => {
                if live.is_empty() {
                    continue;
                }
                let b = live.swap_remove(index as usize % live.len());
                check(&b, b.layout.size());
                ranges.remove(&b.ptr.addr());
                // SAFETY: a live block of this heap with this layout.
                unsafe { heap.dealloc(b.ptr, b.layout) };
            }
            GOp::Realloc { index, new_size } => {
                if live.is_empty() {
                    continue;
                }
                let i = index as usize % live.len();
                let new_size = (new_size % MAX_SIZE).max(1) as usize;
                let old = &live[i];
                check(old, old.layout.size());
                // SAFETY: a live block with this layout; the new size is non-zero and small.
                let q = unsafe { heap.realloc(old.ptr, old.layout, new_size) };
                if q.is_null() {
                    assert!(
                        input.small_arena,
                        "realloc to {new_size} failed in a large arena"
                    );
                    check(old, old.layout.size());
                    continue;
                }
                let kept = old.layout.size().min(new_size);
                let moved = Live {
                    ptr: q,
                    layout: Layout::from_size_align(new_size, old.layout.align()).unwrap(),
                    id: old.id,
                };
                check(&moved, kept);
                ranges.remove(&old.ptr.addr());
                insert(&mut ranges, q, new_size);
                let b = Live {
                    id: next_id,
                    ..moved
                };
                next_id += 1;
                fill(&b);
                live[i] = b;
            }
        }
        let guard = heap.inner().lock().expect("initialised");
        guard.check_invariants().expect("heap invariants");
    }
    for b in live.drain(..) {
        check(&b, b.layout.size());
        // SAFETY: a live block of this heap with this layout.
        unsafe { heap.dealloc(b.ptr, b.layout) };
    }
    let mut guard = heap.inner().lock().expect("initialised");
    guard.trim();
    guard
        .check_invariants()
        .expect("heap invariants after trim");
    assert_eq!(
        guard.source().mapped_pages(),
        idle,
        "pages left after freeing everything"
    );
});
