//! Red zones and poisoning of the global allocator (`kheap::Checked`, on with the kernel's
//! default `debug-checks` feature): a one-byte overflow and a write after free are reported with
//! the block's address; fresh blocks carry a recognisable fill.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use core::alloc::Layout;
use core::hint::black_box;

kernel::test_kernel!();

#[kernel::test]
fn fresh_blocks_are_filled_with_the_fresh_pattern() {
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: valid layout; the block is read within its size and freed with its layout. The
    // pointer goes through `black_box`: the compiler knows fresh allocations are uninitialised
    // and would otherwise treat reading the debug fill as undefined.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        assert!((0..100).all(|i| p.add(i).read() == kheap::checked::FRESH));
        dealloc(p, layout);
    }
}

fn overflow_by_one_byte() {
    let layout = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: deliberately not sound: writes one byte past the block (into the red zone, which
    // the debug layout allocated), then frees it so the check runs.
    // `black_box` and a volatile write keep the compiler from deleting the out-of-bounds write.
    unsafe {
        let p = black_box(alloc(layout));
        p.add(24).write_volatile(0x42);
        dealloc(p, layout);
    }
}

#[kernel::test]
#[should_panic(expected = "heap overflow")]
fn one_byte_overflow_is_reported() {
    overflow_by_one_byte();
}

fn write_after_free() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: deliberately not sound: writes into a freed block. The block stays mapped (the
    // heap caches it), and the next allocation of the same class hands it out again.
    // `black_box` and a volatile write keep the compiler from deleting the write after free.
    unsafe {
        let p = black_box(alloc(layout));
        dealloc(p, layout);
        black_box(p).add(40).write_volatile(0x42);
        let q = black_box(alloc(layout));
        dealloc(q, layout);
    }
}

#[kernel::test]
#[should_panic(expected = "write after free")]
fn write_after_free_is_reported() {
    write_after_free();
}
