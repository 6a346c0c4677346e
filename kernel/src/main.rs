//! The kernel binary: boots, reports the memory it was given, runs the heap workload, and leaves
//! QEMU with success only if everything checked out and every page came back.

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::qemu::{QemuExitCode, exit_qemu};
use kernel::{memory, serial_println, workload};

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    serial_println!(
        "kernel {} booting (bootloader_api {}.{}.{})",
        env!("CARGO_PKG_VERSION"),
        boot_info.api_version.version_major(),
        boot_info.api_version.version_minor(),
        boot_info.api_version.version_patch()
    );
    serial_println!("{}", memory::memory_map_summary(&boot_info.memory_regions));
    if let Err(e) = kernel::init(boot_info) {
        serial_println!("kernel init failed: {e}");
        exit_qemu(QemuExitCode::Failed);
    }
    serial_println!("heap: initialised over the heap window");
    serial_println!("{}", kernel::smp::summary());
    // Guard-page sampling (KFENCE-style) of one allocation in 50 during the workload.
    kernel::kfence::enable(50);
    // A picture of the heap at the workload's peak (the runner writes it as an SVG).
    kernel::heap_picture::want_by_default();
    if let Err(e) = workload::run() {
        serial_println!("workload FAILED: {e}");
        exit_qemu(QemuExitCode::Failed);
    }
    serial_println!("kernel finished");
    exit_qemu(QemuExitCode::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Never waits for a lock: the panic may have happened inside the heap or the memory layer.
    kernel::panic::report(info, kernel::panic::Detail::Full);
    exit_qemu(QemuExitCode::Failed)
}
