//! The kernel binary: boots, reports what it was given, runs its main job, exits QEMU.

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::qemu::{QemuExitCode, exit_qemu};
use kernel::serial_println;

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    serial_println!("kernel {} booting", env!("CARGO_PKG_VERSION"));
    if let Err(e) = kernel::init(boot_info) {
        serial_println!("kernel init failed: {e}");
        exit_qemu(QemuExitCode::Failed);
    }
    serial_println!("kernel finished");
    exit_qemu(QemuExitCode::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial_println!("KERNEL PANIC: {info}");
    exit_qemu(QemuExitCode::Failed)
}
