//! The heap and the memory layer on two CPUs at once (`-smp 2`, multi-threaded TCG): see
//! `smp_common` for the scenarios (concurrent alloc/free, blocks freed on another CPU than the one
//! that allocated them, user pools, allocation in interrupt handlers, TLB shootdown).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

mod smp_common;

kernel::qemu_args!("-smp 2 -accel tcg,thread=multi");
kernel::test_kernel!();

#[kernel::test]
fn two_cpus_are_online() {
    assert_eq!(kernel::smp::online_count(), 2, "{}", kernel::smp::summary());
}
