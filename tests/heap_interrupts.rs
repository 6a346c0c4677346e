//! The heap under interrupt pressure: a timer interrupt allocates and frees while the main loop
//! allocates and frees too. The heap lock disables interrupts while held, so there must be no
//! deadlock, and every block must keep its contents.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::{allocator, timer};

kernel::test_kernel!();

static HANDLER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static HANDLER_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Runs in the timer interrupt: allocates a few blocks of assorted sizes, checks them, frees them.
fn allocating_tick() {
    let n = HANDLER_ALLOCS.fetch_add(1, Ordering::Relaxed);
    let mut blocks: [Option<Box<[u8]>>; 4] = [None, None, None, None];
    for (k, slot) in blocks.iter_mut().enumerate() {
        let size = [24, 200, 1500, 9000][k] + (n as usize % 7);
        let fill = (n as u8).wrapping_add(k as u8);
        *slot = Some(alloc::vec![fill; size].into_boxed_slice());
    }
    for (k, slot) in blocks.iter().enumerate() {
        let fill = (n as u8).wrapping_add(k as u8);
        if !slot.as_ref().is_some_and(|b| b.iter().all(|&x| x == fill)) {
            HANDLER_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[kernel::test]
fn timer_interrupt_allocates_while_main_loop_allocates() {
    allocator::trim();
    let before = allocator::footprint();
    timer::start(1000, allocating_tick);
    let mut live: Vec<(u32, Box<[u32]>)> = Vec::new();
    let mut i = 0u32;
    // Run until enough interrupts hit the allocator (bounded, in case the timer never fires).
    while (HANDLER_ALLOCS.load(Ordering::Relaxed) < 300 || i < 20_000) && i < 2_000_000 {
        let len = 1 + (i as usize * 37) % 300;
        live.push((i, alloc::vec![i; len].into_boxed_slice()));
        if live.len() > 500 {
            let (id, b) = live.swap_remove((i as usize * 7919) % live.len());
            assert!(b.iter().all(|&x| x == id), "main-loop block {id} corrupted");
        }
        i += 1;
    }
    timer::stop();
    for (id, b) in &live {
        assert!(b.iter().all(|x| x == id), "main-loop block {id} corrupted");
    }
    drop(live);
    let ticks = HANDLER_ALLOCS.load(Ordering::Relaxed);
    assert!(
        ticks >= 300,
        "only {ticks} timer interrupts ran the allocator"
    );
    assert_eq!(
        HANDLER_ERRORS.load(Ordering::Relaxed),
        0,
        "interrupt-side blocks corrupted"
    );
    allocator::trim();
    allocator::check_invariants();
    assert_eq!(allocator::footprint(), before);
    kernel::serial_println!("{ticks} interrupts allocated while the main loop ran {i} iterations");
}
