//! Running the heap out of memory: allocation returns null (never panics inside the allocator),
//! the kernel keeps running, and after freeing it can allocate again with every page returned.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr;

use kernel::allocator;

kernel::qemu_args!("-m 48M");

kernel::test_kernel!();

/// Allocates blocks of `layout` until the heap says no, chaining each block to the previous one
/// through its first word (so the bookkeeping needs no heap). Returns the chain head and count.
fn allocate_until_null(layout: Layout) -> (*mut u8, usize) {
    let mut head: *mut u8 = ptr::null_mut();
    let mut count = 0;
    loop {
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            return (head, count);
        }
        // SAFETY: `p` is a fresh block of at least 8 bytes aligned to at least 8.
        unsafe {
            p.cast::<*mut u8>().write(head);
            // Touch the last byte too, so every page of the block is really backed.
            p.add(layout.size() - 1).write(0xA5);
        }
        head = p;
        count += 1;
    }
}

fn free_chain(mut head: *mut u8, layout: Layout) -> usize {
    let mut freed = 0;
    while !head.is_null() {
        // SAFETY: every chain member was allocated with `layout` by `allocate_until_null` and its
        // first word holds the next member.
        unsafe {
            let next = head.cast::<*mut u8>().read();
            assert_eq!(
                head.add(layout.size() - 1).read(),
                0xA5,
                "block {head:p} corrupted"
            );
            dealloc(head, layout);
            head = next;
        }
        freed += 1;
    }
    freed
}

fn exhaust_and_recover(layout: Layout) {
    allocator::trim();
    let before = allocator::footprint();
    let (head, count) = allocate_until_null(layout);
    assert!(count > 0, "nothing could be allocated");
    // Still alive after the failure: a small allocation may or may not fit, but must not panic.
    // SAFETY: non-zero size.
    let probe = unsafe { alloc(Layout::new::<u64>()) };
    if !probe.is_null() {
        // SAFETY: allocated just above with this layout.
        unsafe { dealloc(probe, Layout::new::<u64>()) };
    }
    assert_eq!(free_chain(head, layout), count);
    allocator::trim();
    allocator::check_invariants();
    assert_eq!(
        allocator::footprint(),
        before,
        "pages not returned after exhaustion"
    );
    // And the heap works again.
    let (head, again) = allocate_until_null(layout);
    assert!(
        again * 10 >= count * 9,
        "only {again} of {count} blocks fit the second time"
    );
    free_chain(head, layout);
    allocator::trim();
    assert_eq!(allocator::footprint(), before);
}

#[kernel::test]
fn small_blocks_until_null_then_recover() {
    exhaust_and_recover(Layout::from_size_align(64, 8).unwrap());
}

#[kernel::test]
fn page_sized_blocks_until_null_then_recover() {
    exhaust_and_recover(Layout::from_size_align(4096, 4096).unwrap());
}

#[kernel::test]
fn large_blocks_until_null_then_recover() {
    exhaust_and_recover(Layout::from_size_align(200 * 1024, 16).unwrap());
}

#[kernel::test]
fn try_reserve_reports_failure_instead_of_aborting() {
    let mut v: Vec<u8> = Vec::new();
    assert!(
        v.try_reserve(1 << 40).is_err(),
        "a 1 TiB reservation cannot succeed"
    );
    v.try_reserve(1024)
        .expect("a small reservation still works");
}
