//! The host-side runner: `cargo run` and `cargo test` hand it a kernel ELF (through
//! `boot/cargo-runner`, see `.cargo/config.toml`).
//!
//! It checks that the file is a kernel for this target, wraps it in a bootable disk image with the
//! `bootloader` crate (under `target/boot-images/`, deleted afterwards unless `KERNEL_KEEP_IMAGE`
//! is set), boots it in QEMU with the serial port on the terminal, and turns QEMU's end into a
//! process status.
//!
//! For test kernels it is the test harness, as libtest is for host tests. It reads the kernel's
//! test list from the ELF section `.ktest_list` (written by `#[kernel::test]`, see
//! `kernel/src/testing.rs`) and applies cargo's test arguments to it before booting: name filters,
//! `--exact`, `--skip`, `--ignored`, `--include-ignored`, `--list`, `-q`. It passes the chosen
//! tests to the kernel through fw_cfg, speaks the `@@ktest` protocol, prints cargo-style results,
//! reboots the kernel past a failed test, kills a test that hangs, and prints `test result: ...`.
//! A kernel none of whose tests is selected is not booted at all.
//!
//! Boot failures are told apart: QEMU failing to start (its own message is shown), the bootloader
//! panicking (read from the serial port, or from the VGA text screen through QEMU's QMP socket for
//! the early stage that prints only there — with the memory this kernel needs if RAM was short), no
//! output at all within `KERNEL_BOOT_TIMEOUT`, a reset (triple fault), and a time-out.
//!
//! Options come from the environment (see [`options`] and `README.md`).
//!
//! Modules: [`options`] (arguments and environment), [`elf`] (is this a kernel?), [`catalog`]
//! (the test list, selection, `--list`), [`protocol`] (the `@@ktest` lines), [`memory`] (RAM given,
//! RAM needed), [`qemu`] (the QEMU process, its output, the QMP screen dump), [`session`] (one
//! `cargo run` or `cargo test` of a kernel: boots, results, the summary), [`paths`] (where images
//! and pictures go), [`picture`] (heap pictures: the kernel's occupancy lines drawn as SVGs under
//! `target/heap-pictures/`).

pub mod catalog;
pub mod elf;
pub mod memory;
pub mod options;
pub mod paths;
pub mod picture;
pub mod protocol;
pub mod qemu;
pub mod session;
#[cfg(test)]
mod testelf;
