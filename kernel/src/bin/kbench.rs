//! The in-kernel benchmark (being written).
#![no_std]
#![no_main]

bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(_boot_info: &'static mut bootloader_api::BootInfo) -> ! {
    kernel::serial_println!("kbench: not written yet");
    kernel::qemu::exit_qemu(kernel::qemu::QemuExitCode::Failed)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    kernel::serial_println!("KERNEL PANIC: {info}");
    kernel::qemu::exit_qemu(kernel::qemu::QemuExitCode::Failed)
}
