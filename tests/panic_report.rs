//! The panic report (`kernel::panic`) never waits for a lock: a panic raised while the memory
//! layer's lock or the heap's lock is held is reported and ends the test at once. (A report that
//! waited would hang; the runner would kill the kernel at its time limit and report the test as
//! failed.)

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use core::alloc::Layout;
use core::hint::black_box;

use kernel::memory;

kernel::test_kernel!();

/// A request the heap refuses, so that the report has a "last failed allocation" to show (the
/// main kernel's old report then read the memory statistics with a blocking lock).
fn refuse_an_allocation() {
    let huge = Layout::from_size_align(1 << 40, 8).unwrap();
    // SAFETY: a non-zero size; the result is only compared with null.
    assert!(black_box(unsafe { alloc(huge) }).is_null());
}

fn frame_double_free_inside_the_memory_lock() {
    refuse_an_allocation();
    let frame = memory::allocate_frame().expect("a free frame");
    // SAFETY: the first free is valid; the second is the misuse under test: the frame allocator
    // panics on it while the memory lock is held.
    unsafe {
        memory::deallocate_frame(frame);
        memory::deallocate_frame(frame);
    }
}

#[kernel::test]
#[should_panic(expected = "frame allocator: double free of frame 0x")]
fn a_panic_while_the_memory_lock_is_held_is_reported_at_once() {
    frame_double_free_inside_the_memory_lock();
}

fn heap_double_free_inside_the_heap_lock() {
    refuse_an_allocation();
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a non-zero size; the first free is valid, the second is the misuse under test:
    // the heap's debug checks panic on it with the heap lock held.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(!p.is_null());
        dealloc(p, layout);
        dealloc(p, layout);
    }
}

#[kernel::test]
#[should_panic(expected = "double free of 0x")]
fn a_panic_while_the_heap_lock_is_held_is_reported_at_once() {
    heap_double_free_inside_the_heap_lock();
}
