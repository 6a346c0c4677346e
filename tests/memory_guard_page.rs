//! The heap window is fenced: the guard page below it and the first page above it are never
//! mapped, so a write running out of the heap faults with a report naming the address.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use kernel::memory;
use x86_64::VirtAddr;

kernel::test_kernel!();

#[kernel::test]
fn guard_and_window_edges_are_unmapped() {
    assert_eq!(memory::HEAP_GUARD_PAGE, 0xFFFF_C000_FFFF_F000);
    assert_eq!(
        memory::translate(VirtAddr::new(memory::HEAP_GUARD_PAGE)),
        None
    );
    assert_eq!(
        memory::translate(VirtAddr::new(memory::HEAP_GUARD_START)),
        None
    );
    assert_eq!(
        memory::translate(VirtAddr::new(memory::HEAP_WINDOW_END)),
        None
    );
}

fn write_guard_page() {
    let ptr = (memory::HEAP_GUARD_PAGE + 0xff8) as *mut u64;
    // SAFETY: not sound on purpose: the guard page is never mapped, this write must fault.
    unsafe { ptr.write_volatile(1) };
}

#[kernel::test]
#[should_panic(expected = "PAGE FAULT accessing 0xffffc000fffffff8")]
fn write_below_the_heap_window_faults() {
    write_guard_page();
}

fn write_past_window_end() {
    let ptr = memory::HEAP_WINDOW_END as *mut u8;
    // SAFETY: not sound on purpose: nothing is mapped above the window, this write must fault.
    unsafe { ptr.write_volatile(1) };
}

#[kernel::test]
#[should_panic(expected = "PAGE FAULT accessing 0xffffc00200000000")]
fn write_above_the_heap_window_faults() {
    write_past_window_end();
}
