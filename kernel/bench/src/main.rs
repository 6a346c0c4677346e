//! The in-kernel allocator benchmark: `cargo kbench` (`cargo run --release -p kernel-bench`).
//!
//! Boots with 1 GiB of RAM (the 1e5-object runs, the growing vectors and the peers' arenas need
//! room), brings the kernel up as usual, runs [`kernel_bench::run`] and leaves QEMU with success
//! if every replay verified. The report goes to the serial console;
//! `kernel/heap/bench/results/KERNEL.md` holds recorded runs.
//!
//! The scale can be chosen without rebuilding through QEMU's fw_cfg, e.g.
//! `KERNEL_QEMU_ARGS="-fw_cfg name=opt/kbench/scale,string=smoke" cargo kbench` (`full`, the
//! default, or `smoke`), and so can the sections: `-fw_cfg name=opt/kbench/only,string=smp` runs
//! only the several-CPU section (with `-smp 2 -accel tcg,thread=multi`); `throughput`, `latency`
//! `memory` (frame allocator, page mapper, heap window) and `efficiency` (on the heap window as
//! boot left it) run one section each, and `attribution` groups kheap's calls in the latency
//! replay by what they did. Adding
//! `-icount shift=0` to `KERNEL_QEMU_ARGS` makes the counts deterministic instruction counts (see
//! `kernel_bench`).

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::qemu::{QemuExitCode, exit_qemu};
use kernel::serial_println;
use kernel_bench::{Scale, Sections};

kernel::qemu_args!("-m 1G");

bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

/// fw_cfg file that selects the scale.
const SCALE_FILE: &str = "opt/kbench/scale";
/// fw_cfg file that selects the sections.
const ONLY_FILE: &str = "opt/kbench/only";

fn main(boot_info: &'static mut BootInfo) -> ! {
    if let Err(e) = kernel::init(boot_info) {
        serial_println!("kbench: kernel init failed: {e}");
        exit_qemu(QemuExitCode::Failed);
    }
    let mut buf = [0u8; 16];
    let scale = match kernel::fw_cfg::read_file(SCALE_FILE, &mut buf) {
        None | Some(b"full") => Scale::Full,
        Some(b"smoke") => Scale::Smoke,
        Some(other) => {
            serial_println!(
                "kbench: unknown scale {:?} in {SCALE_FILE}",
                other.escape_ascii()
            );
            exit_qemu(QemuExitCode::Failed);
        }
    };
    let mut buf = [0u8; 16];
    let sections = match kernel::fw_cfg::read_file(ONLY_FILE, &mut buf) {
        None | Some(b"all") => Sections::All,
        Some(b"smp") => Sections::Smp,
        Some(b"throughput") => Sections::Throughput,
        Some(b"latency") => Sections::Latency,
        Some(b"memory") => Sections::Memory,
        Some(b"attribution") => Sections::Attribution,
        Some(b"efficiency") => Sections::Efficiency,
        Some(other) => {
            serial_println!(
                "kbench: unknown section {:?} in {ONLY_FILE}",
                other.escape_ascii()
            );
            exit_qemu(QemuExitCode::Failed);
        }
    };
    match kernel_bench::run_sections(scale, sections) {
        Ok(()) => exit_qemu(QemuExitCode::Success),
        Err(e) => {
            serial_println!("kbench: FAILED: {e}");
            exit_qemu(QemuExitCode::Failed)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Never waits for a lock: the panic may have happened inside the heap or the memory layer.
    kernel::panic::report(info, kernel::panic::Detail::Full);
    exit_qemu(QemuExitCode::Failed)
}
