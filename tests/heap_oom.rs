//! Out of memory on a small machine (32 MiB): every way the kernel allocates fails cleanly (a null
//! pointer, a `try_reserve` error), the failure is reported (the heap statistics and the last
//! failed request), the kernel keeps running, and after freeing it allocates again and the heap
//! gives its pages back.
//!
//! `heap_exhaustion.rs` exhausts a 48 MiB machine with one block size at a time; this kernel mixes
//! sizes and alignments, grows vectors until `try_reserve` refuses, and fills a `BTreeMap` whose
//! values are allocated fallibly (its node insertions, which have no fallible form, are guarded by
//! a free-memory check).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr;

use kernel::baseline::{Baseline, INSERT_HEADROOM_FRAMES};
use kernel::memory::bench_support::FrameHoard;
use kernel::{allocator, memory, serial_println};
use kheap_workload::Rng;

kernel::qemu_args!("-m 32M");

kernel::test_kernel!();

/// `alloc(layout)` whose result the optimiser cannot see through. (An allocation used only for a
/// null check may otherwise be elided and assumed to succeed — LLVM treats `__rust_alloc` as an
/// allocation function — which would make a test of a refusal meaningless.)
fn try_alloc(layout: Layout) -> *mut u8 {
    assert_ne!(layout.size(), 0);
    // SAFETY: a non-zero size.
    core::hint::black_box(unsafe { alloc(layout) })
}

/// What the kernel prints when the heap refuses a request: the request, the heap's table and
/// the memory layer's counters. Returns the request for the caller to check.
fn report_failure(what: &str) -> Layout {
    let failed = allocator::last_failure().expect("a refused request is recorded");
    serial_println!(
        "{what}: refused {} bytes aligned to {}",
        failed.size(),
        failed.align()
    );
    serial_println!("{}", allocator::stats().expect("heap initialised"));
    serial_println!("{}", memory::stats());
    failed
}

/// Checks that everything since `before` came back (see `Baseline::check_returned`).
fn assert_returned(before: &Baseline) -> Baseline {
    match before.check_returned() {
        Ok(now) => now,
        Err(e) => panic!("{e}"),
    }
}

/// A chain of raw blocks linked through their first word; the second word records the layout.
/// Needs no heap memory of its own, so it works when the heap has none left.
struct Chain {
    head: *mut u8,
    blocks: usize,
    bytes: usize,
}

/// Every block of a chain holds at least the link and the layout.
const MIN_CHAIN_BLOCK: usize = 16;

/// The byte at offset `i` of a chain block at `addr`.
fn chain_pattern(addr: usize, i: usize) -> u8 {
    ((addr >> 4) ^ i.wrapping_mul(13)) as u8
}

impl Chain {
    const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            blocks: 0,
            bytes: 0,
        }
    }

    /// Allocates a block of `layout` and links it in; `false` if the heap refused.
    fn push(&mut self, layout: Layout) -> bool {
        assert!(layout.size() >= MIN_CHAIN_BLOCK && layout.align() >= 8);
        let p = try_alloc(layout);
        if p.is_null() {
            return false;
        }
        assert_eq!(p.addr() % layout.align(), 0, "{p:p} misaligned");
        // SAFETY: a fresh block of at least 16 bytes aligned to at least 8: the link and the
        // layout fit in front; the rest is patterned.
        unsafe {
            p.cast::<*mut u8>().write(self.head);
            p.add(8)
                .cast::<u64>()
                .write(((layout.size() as u64) << 8) | u64::from(layout.align().trailing_zeros()));
            for i in MIN_CHAIN_BLOCK..layout.size() {
                p.add(i).write(chain_pattern(p.addr(), i));
            }
        }
        self.head = p;
        self.blocks += 1;
        self.bytes += layout.size();
        true
    }

    /// Unlinks and frees the head block, checking every byte of it.
    fn pop(&mut self) -> bool {
        let p = self.head;
        if p.is_null() {
            return false;
        }
        // SAFETY: `p` is a live chain block: link and layout in front, pattern after.
        unsafe {
            self.head = p.cast::<*mut u8>().read();
            let word = p.add(8).cast::<u64>().read();
            let layout = Layout::from_size_align((word >> 8) as usize, 1 << (word & 0xFF))
                .expect("a recorded layout");
            for i in MIN_CHAIN_BLOCK..layout.size() {
                let b = p.add(i).read();
                assert_eq!(
                    b,
                    chain_pattern(p.addr(), i),
                    "byte {i} of block {p:p} corrupted"
                );
            }
            dealloc(p, layout);
            self.blocks -= 1;
            self.bytes -= layout.size();
        }
        true
    }

    fn free_all(&mut self) {
        while self.pop() {}
    }
}

/// A layout of mixed size (16 B to 1 MiB, skewed small) and alignment (8 B to 4 KiB) drawn from
/// `rng`, no larger than `ceiling`.
fn mixed_layout(rng: &mut Rng, ceiling: usize) -> Layout {
    let size = match rng.range_usize(0, 99) {
        0..=49 => rng.range_usize(16, 128),
        50..=79 => rng.range_usize(129, 4096),
        80..=94 => rng.range_usize(4097, 65536),
        _ => rng.range_usize(65537, 1 << 20),
    }
    .min(ceiling);
    let max_log2 = if rng.range_usize(0, 9) == 0 { 12 } else { 4 };
    let align = 1 << rng.range_usize(3, max_log2);
    Layout::from_size_align(size, align).expect("valid layout")
}

/// Allocates mixed sizes until the heap refuses even the smallest: after each refusal the largest
/// size drawn is halved, down to 16 bytes. Returns the chain and the number of refusals.
fn exhaust_with_mixed_sizes(rng: &mut Rng) -> (Chain, usize) {
    let mut chain = Chain::new();
    let mut ceiling = 1 << 20;
    let mut refusals = 0;
    loop {
        let layout = mixed_layout(rng, ceiling);
        if chain.push(layout) {
            continue;
        }
        refusals += 1;
        assert_eq!(
            allocator::last_failure(),
            Some(layout),
            "the refused request is the one recorded"
        );
        if ceiling == MIN_CHAIN_BLOCK {
            return (chain, refusals);
        }
        ceiling = (ceiling / 2).max(MIN_CHAIN_BLOCK);
    }
}

#[kernel::test]
fn mixed_sizes_until_null_then_recover() {
    let before = Baseline::take().expect("heap initialised");
    let mut rng = Rng::new(0x0032_0000_0000_0001);
    let (mut chain, refusals) = exhaust_with_mixed_sizes(&mut rng);
    let failed = report_failure("mixed sizes");
    assert_eq!(
        failed.size(),
        MIN_CHAIN_BLOCK,
        "ended on the smallest request"
    );
    let total = memory::stats().frames_total as usize * 4096;
    serial_println!(
        "mixed sizes: {} blocks, {} bytes live ({}% of RAM) after {refusals} refusals",
        chain.blocks,
        chain.bytes,
        chain.bytes * 100 / total
    );
    assert!(
        chain.bytes > total / 2,
        "only {} of {total} bytes could be allocated",
        chain.bytes
    );

    // Still running, and still refusing cleanly.
    let huge = Layout::from_size_align(8 << 20, 4096).unwrap();
    assert!(try_alloc(huge).is_null(), "8 MiB fit in an exhausted heap");
    assert_eq!(allocator::last_failure(), Some(huge));

    // Free half of the blocks: small requests succeed again.
    let first = chain.bytes;
    let half = chain.blocks / 2;
    for _ in 0..half {
        chain.pop();
    }
    let mut again = Chain::new();
    for _ in 0..1000 {
        assert!(
            again.push(Layout::from_size_align(64, 8).unwrap()),
            "a 64-byte block after freeing half the heap"
        );
    }
    again.free_all();
    chain.free_all();
    let after = assert_returned(&before);
    serial_println!(
        "mixed sizes: recovered; heap pages {} -> {} (bookkeeping {} -> {})",
        before.footprint.heap_pages,
        after.footprint.heap_pages,
        before.bookkeeping_pages,
        after.bookkeeping_pages
    );

    // The whole memory is usable again: a second exhaustion gets about as far.
    let (mut second, _) = exhaust_with_mixed_sizes(&mut rng);
    serial_println!(
        "mixed sizes: second exhaustion {} bytes, first {first}",
        second.bytes
    );
    assert!(
        second.bytes * 10 >= first * 8,
        "second exhaustion got {} bytes, the first {first}",
        second.bytes
    );
    second.free_all();
    assert_returned(&after);
}

#[kernel::test]
fn vec_growth_until_try_reserve_fails() {
    let before = Baseline::take().expect("heap initialised");
    let mut v: Vec<u64> = Vec::new();
    // Double until the heap refuses.
    let err = loop {
        let extra = v.capacity().max(512);
        if let Err(e) = v.try_reserve(extra) {
            break e;
        }
        let len = v.len();
        v.extend((len..v.capacity()).map(|i| i as u64 * 3));
    };
    serial_println!("vec doubling: try_reserve failed: {err}");
    let failed = report_failure("vec doubling");
    assert!(
        failed.size() > v.capacity() * 8,
        "the refused request ({failed:?}) is the grown buffer"
    );
    let doubled = v.capacity();
    // Then grow in smaller and smaller exact steps until even one page is refused. (A vector
    // this large is a page run, and page runs never grow in place: each step needs the old and
    // the new buffer at once, so on a small machine every step may be refused.)
    let mut step = doubled / 2;
    let mut refusals = 1;
    while step >= 512 {
        match v.try_reserve_exact(step) {
            Ok(()) => {
                let len = v.len();
                v.extend((len..v.capacity()).map(|i| i as u64 * 3));
            }
            Err(_) => {
                refusals += 1;
                step /= 2;
            }
        }
    }
    serial_println!(
        "vec: {} bytes by doubling, {} bytes after exact steps ({refusals} refusals)",
        doubled * 8,
        v.capacity() * 8
    );
    assert!(v.capacity() >= doubled);
    assert!(
        v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3),
        "vector contents survived the refusals"
    );
    // The kernel goes on: a small vector can still be made once the big one is gone.
    let cap = v.capacity();
    drop(v);
    let mut w: Vec<u64> = Vec::new();
    w.try_reserve_exact(cap / 2)
        .expect("half the largest vector after freeing it");
    drop(w);
    assert_returned(&before);
}

#[kernel::test]
fn btreemap_insertion_with_guards_until_memory_runs_out() {
    let before = Baseline::take().expect("heap initialised");
    let mut map: BTreeMap<u64, Box<[u8]>> = BTreeMap::new();
    let value = |key: u64, len: usize| -> Option<Box<[u8]>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len).ok()?;
        v.extend((0..len).map(|i| (key as usize ^ i) as u8));
        Some(v.into_boxed_slice())
    };
    let mut key = 0u64;
    let mut refused = false;
    loop {
        let Some(val) = value(key, 1000) else {
            refused = true;
            break;
        };
        // `insert` may allocate a node and has no fallible form: only insert with headroom.
        if memory::stats().frames_free < INSERT_HEADROOM_FRAMES {
            break;
        }
        map.insert(key, val);
        key += 1;
    }
    // Fill what the guard left with raw blocks until the heap refuses, the map still live.
    let mut fill = Chain::new();
    let mut size = 64 << 10;
    while size >= MIN_CHAIN_BLOCK {
        if !fill.push(Layout::from_size_align(size, 8).unwrap()) {
            refused = true;
            size /= 2;
        }
    }
    assert!(refused, "memory never ran out");
    report_failure("btreemap");
    serial_println!(
        "btreemap: {} entries of 1000 bytes, then {} bytes in {} raw blocks",
        map.len(),
        fill.bytes,
        fill.blocks
    );
    assert!(map.len() > 1000);
    for (k, v) in &map {
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &b)| b == (*k as usize ^ i) as u8),
            "value of key {k} corrupted"
        );
    }
    // After freeing the filler, the map grows again.
    fill.free_all();
    for _ in 0..100 {
        let val = value(key, 1000).expect("room after freeing the filler");
        map.insert(key, val);
        key += 1;
    }
    drop(map);
    assert_returned(&before);
}

#[kernel::test]
fn request_beyond_free_memory_fails_without_side_effects() {
    let before = Baseline::take().expect("heap initialised");
    let free = memory::stats().frames_free as usize * 4096;
    for (size, align) in [(free + (1 << 20), 4096), (free / 2 * 3, 16), (1 << 40, 8)] {
        let layout = Layout::from_size_align(size, align).unwrap();
        assert!(
            try_alloc(layout).is_null(),
            "{size} bytes fit in {free} free bytes"
        );
        assert_eq!(allocator::last_failure(), Some(layout));
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve_exact(size).is_err());
        // Nothing of the failed attempt stays mapped, not even bookkeeping.
        allocator::trim();
        assert_eq!(allocator::footprint(), before.footprint);
    }
    report_failure("beyond free memory");
    // And a request that fits still succeeds.
    let fits = Layout::from_size_align(free / 4, 4096).unwrap();
    let p = try_alloc(fits);
    assert!(!p.is_null(), "a quarter of free memory");
    // SAFETY: allocated just above with this layout.
    unsafe { dealloc(p, fits) };
    assert_returned(&before);
}

/// The heap running out of frames right at a page-table boundary: a block of about 2 MiB is a
/// page run of a little more than 512 pages (its size plus the heap's own overhead), so it spans
/// two page tables the memory layer must make. For a few sizes around that and every number of
/// free frames just below what the block takes, the refusal leaves nothing behind — no page, no
/// page-table frame (`Baseline::check_returned` audits the tables) — and with enough frames the
/// block fits.
#[kernel::test]
fn refusals_at_a_page_table_boundary_leave_no_page_table_behind() {
    let mut before = Baseline::take().expect("heap initialised");
    let mut hoard = FrameHoard::new();
    for pages_less in 0..3 {
        let layout = Layout::from_size_align((2 << 20) - pages_less * 4096, 8).unwrap();
        // What the block takes with memory to spare: pages, page tables, heap bookkeeping (not
        // the spare pages the window keeps from a single-page batch: `keep_free` below
        // releases those, and a batch short of frames maps one page).
        memory::release_spare_pages();
        let free = memory::stats().frames_free;
        let p = try_alloc(layout);
        assert!(!p.is_null(), "2 MiB on a 32 MiB machine");
        let now = memory::stats();
        let needed = free - now.frames_free - now.window_pages_spare;
        // SAFETY: allocated just above with this layout.
        unsafe { dealloc(p, layout) };
        before = assert_returned(&before);
        let mut refused = 0;
        for free in needed - 4..=needed {
            hoard.keep_free(free);
            let p = try_alloc(layout);
            if p.is_null() {
                refused += 1;
            } else {
                // SAFETY: allocated just above with this layout.
                unsafe { dealloc(p, layout) };
            }
            hoard.release();
            if let Err(e) = before.check_returned() {
                panic!(
                    "after trying {} bytes with {free} frames free: {e}",
                    layout.size()
                );
            }
        }
        serial_println!(
            "page-table boundary: {} bytes take {needed} frames; with {} to {needed} free, \
             {refused} of 5 tries refused",
            layout.size(),
            needed - 4
        );
        assert!(refused > 0, "memory never ran out");
    }
}
