//! `Checked` over the system allocator and over kheap itself (`Checked<LockedHeap<…>>`, the
//! kernel's stack): red zones, poison, and the reports of bad frees and overflows.

use super::*;
use crate::locked::{LockedHeap, SpinLock};
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};
use crate::testing::ArenaSource;
use core::ptr::NonNull;
use std::alloc::System;
use std::string::{String, ToString};
use std::vec::Vec;

/// The system allocator, handing out zeroed blocks: `Checked` reads a fresh block's bytes
/// (to see whether it carries the freed tag), and in the abstract machine Miri checks, a
/// block fresh from `System.alloc` is uninitialised. Heap pages hold whatever their frame
/// held, which is initialised memory for the hardware.
struct Zeroed;

// SAFETY: forwards to `System`, only replacing `alloc` with `alloc_zeroed`.
unsafe impl GlobalAlloc for Zeroed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The system allocator cannot vet a pointer: the wrapper trusts the caller.
impl CheckBlock for Zeroed {
    fn check_block(&self, _ptr: *mut u8, _layout: Layout) {}
}

static A: Checked<Zeroed> = Checked::new(Zeroed);

#[test]
fn fresh_blocks_are_filled_and_guarded() {
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: valid layout; freed below with it.
    unsafe {
        let p = A.alloc(layout);
        assert!(!p.is_null());
        assert!((0..40).all(|i| p.add(i).read() == FRESH));
        assert!((40..40 + RED_ZONE).all(|i| p.add(i).read() == CANARY));
        A.dealloc(p, layout);
    }
}

#[test]
#[should_panic(expected = "heap overflow")]
fn one_byte_overflow_is_reported() {
    let layout = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: the write one past the end lands in the red zone, which is allocated.
    unsafe {
        let p = A.alloc(layout);
        p.add(24).write(0);
        A.dealloc(p, layout);
    }
}

/// Frees a `System` block when dropped, also while a test's expected panic unwinds.
struct FreeOnDrop(*mut u8, Layout);

impl Drop for FreeOnDrop {
    fn drop(&mut self) {
        // SAFETY: the block was allocated from `System` with this layout.
        unsafe { System.dealloc(self.0, self.1) }
    }
}

#[test]
#[should_panic(expected = "write after free")]
fn write_after_free_is_reported_on_reuse() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let debug = debug_layout(layout).unwrap();
    let SizeClass::Small(class) = class_for(debug) else {
        unreachable!("a 64-byte block is pooled")
    };
    // SAFETY: the "freed" block is kept allocated in the inner allocator, so writing to it
    // is defined; the test drives the check directly as a reused block would.
    unsafe {
        let p = System.alloc_zeroed(debug);
        let _free = FreeOnDrop(p, debug);
        poison(p, CLASS_SIZES[class], true);
        p.add(40).write(1);
        arm(p, layout, debug);
    }
}

#[test]
fn realloc_keeps_contents_and_moves_the_red_zone() {
    let layout = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: valid layouts; every block is freed with its current layout.
    unsafe {
        let p = A.alloc(layout);
        for i in 0..16 {
            p.add(i).write(i as u8);
        }
        let q = A.realloc(p, layout, 100);
        assert!(!q.is_null());
        assert!((0..16).all(|i| q.add(i).read() == i as u8));
        assert!((16..100).all(|i| q.add(i).read() == FRESH));
        assert!((100..100 + RED_ZONE).all(|i| q.add(i).read() == CANARY));
        A.dealloc(q, Layout::from_size_align(100, 8).unwrap());
    }
}

// -----------------------------------------------------------------------------------------
// Over kheap itself (the kernel's stack: `Checked<LockedHeap<…>>`)
// -----------------------------------------------------------------------------------------

type Kheap<S> = Checked<LockedHeap<SpinLock, S>>;

/// A `Checked` kheap over a fresh arena of `pages` pages.
/// A checked kheap over an arena of `pages` pages (at most 512) aligned to 2 MiB: all its pages
/// then share one page-map leaf, so no leaf node is ever mapped between two runs (with an arena
/// that straddles a 2 MiB line, the leaf a page run's last pages need was mapped right after the
/// run, and the run could not grow in place: a test of growing runs failed about once in 200).
fn kheap(pages: usize) -> Kheap<ArenaSource> {
    assert!(pages <= 512);
    let a = Checked::new(LockedHeap::empty());
    a.inner()
        .init(ArenaSource::aligned(pages, 2 << 20))
        .unwrap();
    a
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The message of the panic `f` raises, or `None` if it returns.
fn panic_message(f: impl FnOnce()) -> Option<String> {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).err()?;
    Some(match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "<non-string panic>".to_string(), |s| s.to_string()),
    })
}

/// Asserts that `f` panics with a heap-overflow report of a `size`-byte block at `p`.
fn assert_overflow_reported(p: *mut u8, size: usize, what: &str, f: impl FnOnce()) {
    let msg = panic_message(f).unwrap_or_else(|| panic!("{what}: the overflow went unnoticed"));
    assert!(msg.contains("heap overflow"), "{what}: {msg}");
    let block = std::format!("{size}-byte block at {:#x}", p.addr());
    assert!(msg.contains(&block), "{what}: {msg}");
}

/// After a report, the heap must still be whole and hold nothing (the damaged block was freed
/// before the report).
fn assert_heap_empty<S: PageSource>(a: &Kheap<S>, what: &str) {
    let h = a.inner().lock().unwrap();
    h.check_invariants().unwrap();
    assert_eq!(h.stats().requested_bytes, 0, "{what}");
}

/// Request sizes that take every path of the heap: a class block (24, padded to 40), a large
/// region block for a mid size that the waste rule sends there (130, padded to 146), a large
/// region block (5000) and a page run (70 000).
const SIZES: [usize; 4] = [24, 130, 5000, 70_000];

#[test]
fn one_byte_overflow_is_reported_for_every_size() {
    for size in SIZES {
        let a = kheap(256);
        let l = layout(size);
        // SAFETY: a valid layout. The write one past the end lands in the red zone, which
        // the debug layout allocated.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        {
            let s = a.inner().lock().unwrap().stats();
            let path = (s.large.live_blocks - s.large.page_runs, s.large.page_runs);
            let expect = match size {
                24 => (0, 0),
                70_000 => (0, 1),
                _ => (1, 0),
            };
            assert_eq!(
                path, expect,
                "size {size} takes the path it is meant to test"
            );
        }
        // SAFETY: see above; the block is freed once, with its layout.
        unsafe { p.add(size).write(0x42) };
        let what = std::format!("size {size}");
        // SAFETY: `p` is live with `l`.
        assert_overflow_reported(p, size, &what, || unsafe { a.dealloc(p, l) });
        assert_heap_empty(&a, &what);
    }
}

/// `realloc` checks the old block's red zone and puts a new one after the new size, whether
/// the block grows or shrinks, in place or by moving.
#[test]
fn one_byte_overflow_is_reported_across_realloc() {
    // (old size, new size, resized in place?)
    let cases = [
        (20, 24, true),         // class block, same class
        (24, 20, true),         // class block, same class
        (5000, 6000, true),     // region block absorbs its free successor
        (5000, 4500, true),     // region block splits off its tail
        (70_000, 80_000, true), // page run grows into the pages after it
        (70_000, 66_000, true), // page run unmaps its tail
        (70_000, 130, true),    // page run down to one data page
        (24, 5000, false),      // class block to a region block
        (130, 70_000, false),   // region block to a page run
        (5000, 24, false),      // region block to a class block
        (130, 24, false),       // region block to a class block
    ];
    for (old, new, in_place) in cases {
        // The old block overflows, then is resized: the resize reports it.
        let a = kheap(256);
        let what = std::format!("{old} -> {new}, overflow before");
        // SAFETY: valid layouts; the one-byte write lands in the red zone; the block is
        // resized once with its layout.
        unsafe {
            let p = a.alloc(layout(old));
            assert!(!p.is_null(), "{what}");
            p.add(old).write(0x42);
            assert_overflow_reported(p, old, &what, || {
                a.realloc(p, layout(old), new);
            });
        }
        assert_heap_empty(&a, &what);

        // The resized block overflows, then is freed: the free reports it.
        let a = kheap(256);
        let what = std::format!("{old} -> {new}, overflow after");
        // SAFETY: as above; the resized block has `new` bytes and a red zone after them.
        unsafe {
            let p = a.alloc(layout(old));
            assert!(!p.is_null(), "{what}");
            let q = a.realloc(p, layout(old), new);
            assert!(!q.is_null(), "{what}");
            assert_eq!(q == p, in_place, "{what}: in place?");
            assert!(
                (0..old.min(new)).all(|i| q.add(i).read() == FRESH),
                "{what}"
            );
            q.add(new).write(0x42);
            assert_overflow_reported(q, new, &what, || a.dealloc(q, layout(new)));
        }
        assert_heap_empty(&a, &what);
    }
}

/// An interior-pointer free is reported by the heap before the wrapper writes anything: the
/// poison meant for a block at the bad pointer would land in the next block.
#[test]
fn interior_free_leaves_the_neighbour_alone() {
    let a = kheap(64);
    let l = layout(24);
    // Two blocks of one chunk, 40 bytes apart (24 bytes padded to the 40-byte class).
    // SAFETY: valid layout.
    let mut blocks: Vec<*mut u8> = (0..8).map(|_| unsafe { a.alloc(l) }).collect();
    blocks.sort();
    let i = blocks
        .windows(2)
        .position(|w| w[1].addr() - w[0].addr() == 40)
        .expect("neighbouring blocks");
    let (first, next) = (blocks[i], blocks[i + 1]);
    // The neighbour holds bytes that look like a red zone (user data may be anything).
    // SAFETY: `next` is live with 24 bytes.
    unsafe { next.write_bytes(CANARY, 24) };
    // SAFETY: deliberately wrong: `first + 16` is inside `first`, not a block start.
    let msg = panic_message(|| unsafe { a.dealloc(first.add(16), l) })
        .expect("the interior free is reported");
    assert!(msg.contains("interior pointer"), "{msg}");
    // SAFETY: `next` is live with 24 bytes and a red zone after them.
    unsafe {
        assert!(
            (0..24).all(|j| next.add(j).read() == CANARY),
            "the neighbour was overwritten"
        );
        for p in blocks {
            a.dealloc(p, l);
        }
    }
    assert_heap_empty(&a, "after the interior free");
}

/// An arena whose unmapped pages hold [`CANARY`] bytes, so that a red-zone check that reads
/// them passes: what a stray write into an unmapped page would look like on the host, where
/// the arena's unmapped pages stay readable (in the kernel, the read itself faults).
struct CanaryWhenUnmapped(ArenaSource);

// SAFETY: forwards to `ArenaSource`, whose guarantees carry over; refilling pages the caller
// gave back touches only arena memory nobody uses.
unsafe impl PageSource for CanaryWhenUnmapped {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        self.0.map_pages(count)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: forwarded; the pages stay arena memory, unused by anyone.
        unsafe {
            self.0.unmap_pages(ptr, count);
            ptr.as_ptr().write_bytes(CANARY, count * PAGE_SIZE);
        }
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        self.0.window()
    }
}

/// Freeing a block again after its chunk went back to the page source is reported by the
/// heap, and the wrapper neither reads nor writes the page first.
#[test]
fn free_in_an_unmapped_chunk_gets_the_heaps_message() {
    let a: Kheap<CanaryWhenUnmapped> = Checked::new(LockedHeap::empty());
    a.inner()
        .init(CanaryWhenUnmapped(ArenaSource::new(64)))
        .unwrap();
    let l = layout(100);
    // SAFETY: valid layout; freed once here.
    let p = unsafe { a.alloc(l) };
    // SAFETY: `p` is live with `l`.
    unsafe { a.dealloc(p, l) };
    {
        let mut h = a.inner().lock().unwrap();
        h.trim();
        assert!(!h.source().0.is_mapped(p.addr()), "the chunk is unmapped");
    }
    // SAFETY: deliberately wrong: a second free, into a page the heap no longer has.
    let msg = panic_message(|| unsafe { a.dealloc(p, l) }).expect("the free is reported");
    assert!(msg.contains("which is not a heap block"), "{msg}");
    let page = p.with_addr(p.addr() & !(PAGE_SIZE - 1));
    // SAFETY: the page is still arena memory (unmapped for the heap, not for the host).
    let untouched = (0..PAGE_SIZE).all(|i| unsafe { page.add(i).read() } == CANARY);
    assert!(untouched, "the unmapped page was written");
}
