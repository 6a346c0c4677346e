//! The in-kernel benchmark runs end to end at smoke scale: every workload on every allocator,
//! timed and verified, the latency percentiles and the frame/page-table costs. It asserts only that
//! every replay verified (benchmarks never assert on timings).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use kernel::bench::Scale;

// The smoke budget is 8 MiB per allocator; 128 MiB leaves the kernel heap and frames room.
kernel::qemu_args!("-m 128M");

kernel::test_kernel!();

#[kernel::test]
fn smoke_benchmark_verifies_every_allocator() {
    if let Err(e) = kernel::bench::run(Scale::Smoke) {
        panic!("benchmark failed: {e}");
    }
}
