//! The test framework itself (`#[kernel::test]`, `kernel::testing`, the runner in `boot/`): tests
//! run in source order, not in the alphabetical order rustc hands them over in; `#[ignore]`d tests
//! are reported and not run; `#[should_panic]` in its three forms passes on a matching panic.
//! `tests/test_framework_failures.rs` holds the failing cases, which `boot/host/tests` runs.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use core::sync::atomic::{AtomicUsize, Ordering};

kernel::test_kernel!();

/// The source position (1, 2, 3) of the ordered test that ran last in this boot.
static LAST: AtomicUsize = AtomicUsize::new(0);

/// Checks that no ordered test below `position` in the file ran after one above it: with the tests
/// run in alphabetical order (`aa`, `bb`, `mm`, `zz`) this fails; run alone (filtered) it passes.
fn runs_at(position: usize, name: &str) {
    let last = LAST.swap(position, Ordering::SeqCst);
    assert!(
        last < position,
        "{name} (test {position} in the file) ran after test {last}"
    );
}

#[kernel::test]
fn zz_last_by_name_runs_first() {
    runs_at(1, "zz_last_by_name_runs_first");
}

#[kernel::test]
#[ignore = "would fail if it ran: ignored tests are not run"]
fn aa_ignored_test_is_not_run() {
    panic!("an #[ignore]d test ran");
}

#[kernel::test]
fn mm_runs_second() {
    runs_at(2, "mm_runs_second");
}

#[kernel::test]
fn bb_runs_third() {
    runs_at(3, "bb_runs_third");
}

// The should-panic tests end their boot (the runner boots again after each), so they come after
// the ordered ones.

#[kernel::test]
#[should_panic]
fn should_panic_passes_on_any_panic() {
    panic!("any message");
}

#[kernel::test]
#[should_panic(expected = "the words we expect")]
fn should_panic_passes_when_the_message_contains_the_expected_text() {
    panic!("a message with the words we expect in it");
}

#[kernel::test]
#[should_panic = "short form"]
fn should_panic_takes_the_short_form_too() {
    panic!("the short form works");
}

#[kernel::test]
fn tests_after_should_panic_tests_still_run() {
    // A fresh boot started here: the ordered tests ran in an earlier boot.
    assert_eq!(LAST.load(Ordering::SeqCst), 0);
}
