#![no_std]
#![no_main]
use x86_64::instructions::port::Port;
bootloader_api::entry_point!(kmain);
fn kmain(_b: &'static mut bootloader_api::BootInfo) -> ! {
    let mut s = unsafe { uart_16550::SerialPort::new(0x3f8) };
    s.init();
    use core::fmt::Write;
    writeln!(s, "hello from kernel").unwrap();
    unsafe { Port::<u32>::new(0xf4).write(0x10) };
    loop {}
}
#[panic_handler]
fn p(_: &core::panic::PanicInfo) -> ! { loop {} }
