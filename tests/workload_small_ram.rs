//! The `cargo run` workload at the least memory the bootloader starts this kernel with: it scales
//! itself down to what it finds free (see `kernel::workload::Sizes`) instead of failing an
//! allocation, checks every byte and gives every page back.
//!
//! The bootloader needs 16 MiB + the kernel file + its loaded size + about 4.25 MiB
//! (`boot/src/memory.rs`): 21 MiB for the `cargo run` kernel, 22 MiB for this one (measured: at
//! `-m 21M` the bootloader runs out of frames). If the kernel grows past that, the runner says how
//! much it needs.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::qemu_args!("-m 22M");

use kernel::workload::{self, Sizes};
use kernel::{kfence, memory};

kernel::test_kernel!();

#[kernel::test]
fn the_workload_scales_down_to_the_smallest_machine() {
    let free = memory::stats().frames_free * 4096;
    assert!(free < 20 << 20, "{free} bytes free: not a small machine");
    assert!(Sizes::for_free_memory(free).permille < 200);
    // As `cargo run` does it: one allocation in 50 on a guarded page.
    kfence::enable(50);
    let result = workload::run();
    kfence::enable(0);
    if let Err(e) = result {
        panic!("workload failed: {e}");
    }
}
