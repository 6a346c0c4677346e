//! Tests that fail on purpose, each in a way the framework must report as a failure by name. All
//! are `#[ignore]`d, so `cargo test` only lists them as ignored; `boot/host/tests/runner.rs` runs
//! them with `cargo test --test test_framework_failures -- --ignored` and checks the report.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::test_kernel!();

#[kernel::test]
#[ignore = "fails on purpose (boot/host/tests/runner.rs)"]
fn a_panicking_test_fails() {
    panic!("this test fails");
}

#[kernel::test]
#[ignore = "fails on purpose (boot/host/tests/runner.rs)"]
#[should_panic]
fn a_should_panic_test_that_returns_fails() {}

#[kernel::test]
#[ignore = "fails on purpose (boot/host/tests/runner.rs)"]
#[should_panic(expected = "another message")]
fn a_should_panic_test_with_the_wrong_message_fails() {
    panic!("not the expected one");
}

#[kernel::test]
#[ignore = "passes: tests after failures still run"]
fn a_test_after_the_failures_passes() {}
