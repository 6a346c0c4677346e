//! The heap soak test, long version: `cargo soak` (`cargo run --release -p kernel-soak`).
//!
//! Boots with 256 MiB of RAM, brings the kernel up as usual, runs [`kernel_soak::run`] with
//! [`Config::LONG`] (10 million random operations, the live set swinging between a few KiB and
//! most of RAM, every byte checked) and leaves QEMU with success only if nothing was corrupted and
//! every page came back. `kernel/heap/SOAK.md` holds a recorded run.
//!
//! The number of operations and the seed can be changed without rebuilding through QEMU's fw_cfg,
//! e.g. `KERNEL_QEMU_ARGS="-fw_cfg name=opt/soak/ops,string=1000000" cargo soak`
//! (and `opt/soak/seed`). A long run needs more than the runner's default limit of 15
//! minutes for one boot: set `KERNEL_TIMEOUT` (seconds).

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::qemu::{QemuExitCode, exit_qemu};
use kernel::{allocator, memory, serial_println};
use kernel_soak::Config;

kernel::qemu_args!("-m 256M");

bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

/// fw_cfg file with the number of operations (decimal).
const OPS_FILE: &str = "opt/soak/ops";
/// fw_cfg file with the seed (decimal).
const SEED_FILE: &str = "opt/soak/seed";

/// A decimal number from fw_cfg file `name`: `Ok(None)` if there is no such file.
fn fw_cfg_number(name: &str) -> Result<Option<u64>, ()> {
    let mut buf = [0u8; 24];
    match kernel::fw_cfg::read_file(name, &mut buf) {
        None => Ok(None),
        Some(bytes) => core::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(()),
    }
}

fn main(boot_info: &'static mut BootInfo) -> ! {
    if let Err(e) = kernel::init(boot_info) {
        serial_println!("soak: kernel init failed: {e}");
        exit_qemu(QemuExitCode::Failed);
    }
    let mut cfg = Config::LONG;
    for (file, field) in [(OPS_FILE, &mut cfg.ops), (SEED_FILE, &mut cfg.seed)] {
        match fw_cfg_number(file) {
            Ok(Some(n)) => *field = n,
            Ok(None) => {}
            Err(()) => {
                serial_println!("soak: {file} is not a decimal number");
                exit_qemu(QemuExitCode::Failed);
            }
        }
    }
    serial_println!(
        "soak: {} ops, seed {:#x}, blocks up to {} bytes",
        cfg.ops,
        cfg.seed,
        cfg.max_size
    );
    serial_println!("{}", memory::stats());
    match kernel_soak::run(&cfg) {
        Ok(report) => {
            serial_println!("{report}");
            if let Some(stats) = allocator::stats() {
                serial_println!("{stats}");
            }
            serial_println!("soak: passed");
            exit_qemu(QemuExitCode::Success)
        }
        Err(e) => {
            serial_println!("soak: FAILED: {e}");
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
