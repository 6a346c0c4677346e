//! CPU exceptions end in readable reports: breakpoints resume, page faults name the address, and a
//! kernel stack overflow ends in a double-fault report on the IST stack instead of a silent reset.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::test_kernel!();

#[kernel::test]
fn breakpoint_resumes_execution() {
    x86_64::instructions::interrupts::int3();
}

/// An address in the lower half that nothing maps.
const UNMAPPED: u64 = 0xdead_b000;

fn touch_unmapped() {
    let ptr = UNMAPPED as *mut u64;
    // SAFETY: not sound on purpose — this write must fault; the test passes when the page-fault
    // handler reports it.
    unsafe { ptr.write_volatile(42) };
}

#[kernel::test]
#[should_panic(expected = "PAGE FAULT accessing 0xdeadb000")]
fn page_fault_names_the_address() {
    touch_unmapped();
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let big = [depth; 64];
    core::hint::black_box(&big);
    recurse(depth + 1) + core::hint::black_box(big[3])
}

fn overflow_the_stack() {
    core::hint::black_box(recurse(0));
}

#[kernel::test]
#[should_panic(expected = "DOUBLE FAULT")]
fn stack_overflow_reports_double_fault() {
    overflow_the_stack();
}

#[kernel::test]
fn still_running_after_faults() {
    // Runs after the two should-panic tests: the runner rebooted past them, so this boot started
    // here with a working IDT and stack.
    x86_64::instructions::interrupts::int3();
    assert!(!x86_64::instructions::interrupts::are_enabled());
}
