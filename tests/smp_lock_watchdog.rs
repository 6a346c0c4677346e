//! The heap lock's watchdog with several CPUs (`-smp 2`): a long hold by another CPU is waited
//! for, however long it lasts within the limit; a hold past the limit is reported naming the
//! holder; and re-entering the lock on the CPU that holds it is reported at once.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::allocator::{self, HEAP};
use kernel::cpu::clock;
use kernel::smp;

kernel::qemu_args!("-smp 2 -accel tcg,thread=multi");
kernel::test_kernel!();

/// CPU 1 holds the heap lock for `hold_ms` (or for good with `None`) while CPU 0 allocates.
fn cpu_1_holds_the_heap_lock_while_cpu_0_allocates(hold_ms: Option<u64>) {
    let holding = AtomicBool::new(false);
    smp::run_on_all(&|| {
        if smp::cpu_id() == 1 {
            let guard = HEAP.heap().lock().expect("heap");
            holding.store(true, Ordering::SeqCst);
            match hold_ms {
                Some(ms) => clock::delay_us(ms * 1000),
                None => loop {
                    core::hint::spin_loop();
                },
            }
            drop(guard);
        } else {
            while !holding.load(Ordering::SeqCst) {
                core::hint::spin_loop();
            }
            let start = clock::now();
            let b = Box::new([7u8; 100]);
            let waited_ms = (clock::now() - start) / clock::ticks_per_us() / 1000;
            assert!(b.iter().all(|&x| x == 7));
            kernel::serial_println!("CPU 0 waited {waited_ms} ms for the heap lock");
        }
    })
    .unwrap();
}

#[kernel::test]
fn a_long_hold_by_another_cpu_is_waited_for() {
    // 1.5 s: hundreds of times longer than the old spin-count watchdog (2^20 spins) allowed.
    cpu_1_holds_the_heap_lock_while_cpu_0_allocates(Some(1500));
    allocator::check_invariants();
}

fn stuck_holder() {
    allocator::set_lock_hold_limit_ms(300);
    cpu_1_holds_the_heap_lock_while_cpu_0_allocates(None);
}

#[kernel::test]
#[should_panic(expected = "CPU 1 has held the heap lock for over 300 ms")]
fn a_stuck_holder_is_named() {
    stuck_holder();
}

fn reenter() {
    let _guard = HEAP.heap().lock().expect("heap");
    // Allocating while this CPU holds the heap lock can never succeed.
    core::hint::black_box(Box::new(1u64));
}

#[kernel::test]
#[should_panic(expected = "lock re-entered on the CPU that holds it")]
fn reentry_is_reported_at_once() {
    reenter();
}
