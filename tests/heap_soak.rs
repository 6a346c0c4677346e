//! The heap soak test, short version (the long one is `cargo soak`): random
//! operations through `Box`, `Vec`, `BTreeMap` and raw `alloc`/`realloc`/`dealloc`, every byte
//! checked, the live set swinging between a few KiB and most of the machine's memory, and every
//! page back at the end. See `kernel_soak`.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use kernel::serial_println;
use kernel_soak::{self as soak, Config, Report};

// Small enough that a debug build fills most of it several times within the test's time.
kernel::qemu_args!("-m 64M");

kernel::test_kernel!();

fn run(cfg: &Config) -> Report {
    match soak::run(cfg) {
        Ok(report) => {
            serial_println!("{report}");
            report
        }
        Err(e) => panic!("soak failed: {e}"),
    }
}

#[kernel::test]
fn random_operations_fill_most_of_ram_and_give_it_back() {
    let cfg = Config::SHORT;
    let report = run(&cfg);
    assert_eq!(report.ops, cfg.ops);
    assert_eq!(report.frees, report.allocations, "every object freed");
    let ram = report.frames_total as usize * 4096;
    assert!(
        report.peak_live_bytes > ram / 2,
        "the live set peaked at {} bytes of {ram}: it never grew to most of RAM",
        report.peak_live_bytes
    );
    assert!(
        report.phases >= 3,
        "only {} phases: the live set must grow, shrink and grow again",
        report.phases
    );
    assert!(report.reallocations > 0 && report.vec_growths > 0 && report.map_inserts > 0);
    // The heap really mapped most of the machine at the peak, and gave it back: what it still
    // holds beyond the start is its own bookkeeping (`kernel::baseline::Baseline` checked the accounting).
    assert!(report.peak_heap_pages > report.frames_total / 2);
    assert_eq!(
        report.pages_kept() as usize,
        report.after.bookkeeping_pages - report.before.bookkeeping_pages
    );
}

#[kernel::test]
fn growth_stops_gracefully_when_memory_runs_out() {
    // Every growth phase aims beyond the free memory, so each ends at a refused allocation.
    let cfg = Config {
        ops: 60_000,
        seed: 0x00F0_0D0F_F00D,
        grow_percent: (110, 130),
        ..Config::SHORT
    };
    let report = run(&cfg);
    assert!(report.failures > 0, "no allocation was ever refused");
    assert!(
        report.growth_stopped_by_failure > 0,
        "no growth phase ended at a refusal"
    );
    assert!(
        report.phases >= 3,
        "only {} phases: growth must stop, shrink, and grow again",
        report.phases
    );
}

/// The checker itself works: a byte changed behind the allocator's back is found, and the panic
/// names its address.
fn corrupted_byte_is_found() {
    let cfg = Config {
        ops: 20_000,
        corrupt_after: Some(10_000),
        ..Config::SHORT
    };
    let _ = soak::run(&cfg);
}

#[kernel::test]
#[should_panic(expected = "soak: corruption at 0x")]
fn a_corrupted_byte_is_found_and_named() {
    corrupted_byte_is_found();
}
