//! The runner as cargo starts it (`boot/cargo-runner <elf> <test args>`), on files that are not
//! kernels, on made-up kernels that cannot boot, and on the framework's own test kernels through
//! `cargo test`: the errors a user sees, and libtest's options end to end.
//!
//! The made-up kernels are tiny ELF files with a `.bootloader-config` section, which pass the
//! runner's checks; the bootloader then fails on them, which is what some of these tests want.
//! They need QEMU (installed by `boot/setup.sh`, as for every kernel test).

#[path = "../../src/testelf.rs"]
mod testelf;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A scratch directory for this test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("boot-runner-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A made-up kernel called `name` in `dir`, with `sections` besides `.bootloader-config`.
fn fake_kernel(dir: &Path, name: &str, sections: &[(&str, &[u8])]) -> PathBuf {
    let mut all = vec![(".bootloader-config", &b"{}"[..])];
    all.extend_from_slice(sections);
    let elf = testelf::elf(62, &[(testelf::PT_LOAD, b"\xf4", 1)], &all);
    let path = dir.join(name);
    std::fs::write(&path, elf).unwrap();
    path
}

/// Builds the runner once, with its output not captured: on a fresh machine that takes minutes,
/// and `boot/cargo-runner` says so.
fn build_runner() {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        let status = Command::new(workspace().join("boot/cargo-runner"))
            .arg("--build-only")
            .status()
            .unwrap();
        assert!(status.success(), "building the runner failed");
    });
}

/// Runs the runner on `kernel` with `args` and `env` (and no inherited `KERNEL_*` settings).
fn run(kernel: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    build_runner();
    let mut cmd = Command::new(workspace().join("boot/cargo-runner"));
    cmd.arg(kernel).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KERNEL_") || k.starts_with("KTEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// `cargo test <args>` in the workspace (the outer `cargo test` has finished building by now).
fn cargo_test(args: &[&str]) -> Output {
    cargo_test_with(args, &[])
}

/// `cargo test <args>` with `env` (and no inherited `KERNEL_*` settings).
fn cargo_test_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    build_runner();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace()).arg("test").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KERNEL_") || k.starts_with("KTEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

/// Files in `dir` whose names start with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn image_dir() -> PathBuf {
    workspace().join("target/boot-images")
}

#[test]
fn host_programs_and_other_files_are_refused() {
    let out = run(Path::new("/bin/true"), &[], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_contains(&err, "/bin/true: a program for the host, not a kernel");
    assert!(!Path::new("/bin/true.bios.img").exists());

    let dir = scratch("refused");
    let script = dir.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let err = text(&run(&script, &[], &[]).stderr);
    assert_contains(&err, "not an ELF file");
    let err = text(&run(&dir.join("missing"), &[], &[]).stderr);
    assert_contains(&err, "cannot read kernel");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn qemu_failing_to_start_is_reported_with_its_message_and_leaves_no_image() {
    let dir = scratch("qemu-bogus");
    let name = format!("bogus-{}", std::process::id());
    let kernel = fake_kernel(&dir, &name, &[]);
    let out = run(&kernel, &[], &[("KERNEL_QEMU_ARGS", "-bogus")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_contains(
        &err,
        "error: QEMU failed to start (exit status 1): qemu-system-x86_64: -bogus: invalid option",
    );
    assert!(!err.contains("triple fault"), "{err}");
    // Nothing next to the input, nothing left under target/.
    assert_eq!(files_starting(&dir, ""), std::slice::from_ref(&name));
    assert_eq!(files_starting(&image_dir(), &name), Vec::<String>::new());

    // KERNEL_KEEP_IMAGE keeps it, under target/.
    let out = run(
        &kernel,
        &[],
        &[("KERNEL_QEMU_ARGS", "-bogus"), ("KERNEL_KEEP_IMAGE", "1")],
    );
    let kept = image_dir().join(format!("{name}.bios.img"));
    assert_contains(
        &text(&out.stderr),
        &format!("disk image kept at {}", kept.display()),
    );
    assert!(kept.is_file());
    std::fs::remove_file(kept).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bootloader_that_stops_silently_is_reported_at_once() {
    // The bootloader cannot read the made-up kernel's configuration and panics before its logger
    // is up: no serial output, nothing on the text screen, the CPU halted for good. The runner
    // says so instead of waiting for KERNEL_BOOT_TIMEOUT.
    let dir = scratch("bootloader-stops");
    let kernel = fake_kernel(&dir, "unloadable", &[]);
    let out = run(&kernel, &[], &[("KERNEL_BOOT_TIMEOUT", "120")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_contains(
        &err,
        "error: the machine stopped (CPU halted with interrupts off) before",
    );
    assert!(!err.contains("no output"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn too_little_memory_is_diagnosed_with_the_memory_needed() {
    // With 16 MiB the bootloader's second stage cannot copy the kernel to 16 MiB and panics on the
    // VGA screen, which the runner reads through QMP.
    let dir = scratch("small-ram");
    let kernel = fake_kernel(&dir, "small-ram", &[]);
    let out = run(
        &kernel,
        &[],
        &[
            ("KERNEL_QEMU_ARGS", "-m 16M"),
            ("KERNEL_BOOT_TIMEOUT", "120"),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_contains(
        &err,
        "the bootloader panicked before starting the kernel; the screen shows:",
    );
    assert_contains(&err, "PANIC");
    assert_contains(
        &err,
        "QEMU had 16 MiB of RAM; this kernel needs about 21 MiB",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The `.ktest_list` record of one test, as `#[kernel::test]` writes it.
fn record(name: &str, line: u32, flags: &str) -> String {
    format!("\x01fake::{name}\x1ftests/fake.rs\x1f{line}\x1f1\x1f{flags}\x1f\x02")
}

#[test]
fn list_filters_and_ignored_need_no_boot() {
    let dir = scratch("list");
    let list = record("second", 20, "") + &record("first", 10, "") + &record("slow", 30, "i");
    let kernel = fake_kernel(&dir, "tests", &[(".ktest_list", list.as_bytes())]);
    // If any of these booted, QEMU would fail on the bogus argument.
    let env = [("KERNEL_QEMU_ARGS", "-bogus"), ("KTEST_TIMEOUT", "0")];

    let out = run(&kernel, &["--list"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "first: test\nsecond: test\nslow: test\n\n3 tests, 0 benchmarks\n"
    );
    let out = run(&kernel, &["--list", "--ignored"], &env);
    assert_eq!(text(&out.stdout), "slow: test\n\n1 test, 0 benchmarks\n");

    let out = run(&kernel, &["--skip", "s"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_contains(
        &stdout,
        "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored;",
    );
    assert_contains(&stdout, "; 3 filtered out; finished in ");
    let out = run(&kernel, &["slow"], &env);
    assert_contains(
        &text(&out.stdout),
        "\nrunning 1 test\ntest slow ... ignored\n",
    );
    assert_contains(&text(&out.stdout), "0 passed; 0 failed; 1 ignored");
    let out = run(&kernel, &["--exact", "firs"], &env);
    assert_contains(&text(&out.stdout), "running 0 tests");

    let out = run(&kernel, &["--frobnicate"], &env);
    assert!(!out.status.success());
    assert_contains(&text(&out.stderr), "unrecognized option `--frobnicate`");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_settings_are_refused_with_the_variable_named() {
    let dir = scratch("settings");
    let kernel = fake_kernel(&dir, "plain", &[]);
    let out = run(&kernel, &[], &[("KERNEL_TIMEOUT", "soon")]);
    assert!(!out.status.success());
    assert_contains(
        &text(&out.stderr),
        "KERNEL_TIMEOUT=\"soon\": expected a whole number of seconds (0 for no limit)",
    );
    let out = run(&kernel, &[], &[("KERNEL_KEEP_IMAGE", "please")]);
    assert_contains(
        &text(&out.stderr),
        "KERNEL_KEEP_IMAGE=\"please\": expected 1",
    );
    // A misspelt variable is pointed out. A plain kernel given test arguments is one test named
    // after its file: filtered out here, listed by `--list`.
    let out = run(&kernel, &["heap"], &[("KERNEL_TIMOUT", "5")]);
    let err = text(&out.stderr);
    assert_contains(
        &err,
        "warning: the runner does not know the variable KERNEL_TIMOUT",
    );
    assert!(out.status.success(), "{err}");
    assert_contains(&text(&out.stdout), "running 0 tests");
    assert_contains(&text(&out.stdout), "; 1 filtered out;");
    let out = run(&kernel, &["--list"], &[]);
    assert_eq!(text(&out.stdout), "plain: test\n\n1 test, 0 benchmarks\n");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_test_kernel_draws_its_heap_as_an_svg_on_request() {
    let svg_of = |out: &Output| -> Vec<std::path::PathBuf> {
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("heap picture: "))
            .map(std::path::PathBuf::from)
            .collect()
    };
    // The test draws one itself; the picture lines stay out of the output.
    let out = cargo_test(&["--test", "heap_picture"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("@@kheap-picture"), "{stdout}");
    let paths = svg_of(&out);
    assert_eq!(paths.len(), 1, "{stdout}");
    assert!(
        paths[0].ends_with("target/heap-pictures/heap_picture-1.svg"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("kheap: heap_picture — fragmented"));
    assert!(
        svg.contains("class-") && svg.contains("(40 B)"),
        "chunk rows"
    );
    assert!(svg.contains("<title>free: "), "a hole in a region");
    assert!(svg.contains("<title>page run "));
    // KERNEL_HEAP_PICTURE=1: one more, after the tests.
    let out = cargo_test_with(&["--test", "heap_picture"], &[("KERNEL_HEAP_PICTURE", "1")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paths = svg_of(&out);
    assert_eq!(paths.len(), 2, "{}", text(&out.stdout));
    let last = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(last.contains("after the tests"));
}

#[test]
fn cargo_test_list_and_filters_reach_a_real_test_kernel() {
    let out = cargo_test(&["--test", "test_framework", "--", "--list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "zz_last_by_name_runs_first: test\naa_ignored_test_is_not_run: test\n\
         mm_runs_second: test\nbb_runs_third: test\nshould_panic_passes_on_any_panic: test\n\
         should_panic_passes_when_the_message_contains_the_expected_text: test\n\
         should_panic_takes_the_short_form_too: test\n\
         tests_after_should_panic_tests_still_run: test\n\n8 tests, 0 benchmarks\n"
    );

    let out = cargo_test(&["--test", "test_framework", "--", "runs_", "--skip", "zz"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_contains(
        &stdout,
        "running 2 tests\ntest mm_runs_second ... ok\ntest bb_runs_third ... ok\n",
    );
    assert_contains(
        &stdout,
        "2 passed; 0 failed; 0 ignored; 0 measured; 6 filtered out",
    );
}

#[test]
fn a_bootloader_panic_on_serial_is_reported_with_the_memory_needed() {
    // At 20 MiB the bootloader's last stage runs out of frames mapping physical memory and panics;
    // it logs that on serial (the runner keeps its error messages).
    let out = cargo_test_with(
        &["--test", "test_framework"],
        &[("KERNEL_QEMU_ARGS", "-m 20M")],
    );
    assert_eq!(out.status.code(), Some(101));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_contains(&stdout, "ERROR: panicked at");
    assert_contains(&stdout, "FrameAllocationFailed");
    assert_contains(
        &stderr,
        "error: test kernel failed outside any test: the bootloader panicked before starting the \
         kernel (its message is above)",
    );
    assert_contains(&stderr, "QEMU had 20 MiB of RAM; this kernel needs about ");
    assert_contains(&stdout, "failures:\n    <kernel outside tests>");
}

#[test]
fn cargo_test_reports_each_kind_of_failure_by_name() {
    let out = cargo_test(&["--test", "test_framework_failures", "--", "--ignored"]);
    assert_eq!(out.status.code(), Some(101));
    let stdout = text(&out.stdout);
    for line in [
        "running 4 tests\n",
        // The panic report (kernel/src/panic.rs) follows the message with the memory state.
        "panicked at tests/test_framework_failures.rs:16:5:\nthis test fails\n",
        "test a_panicking_test_fails ... FAILED\n",
        "note: test did not panic as expected\n\
         test a_should_panic_test_that_returns_fails - should panic ... FAILED\n",
        "note: panic did not contain expected string `another message`\n\
         test a_should_panic_test_with_the_wrong_message_fails - should panic ... FAILED\n",
        "test a_test_after_the_failures_passes ... ok\n",
        "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
    ] {
        assert_contains(&stdout, line);
    }
}
