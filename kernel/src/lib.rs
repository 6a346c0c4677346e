#![no_std]
#![cfg_attr(test, no_main)]
pub fn hello() {}
#[cfg(test)]
bootloader_api::entry_point!(tmain);
#[cfg(test)]
fn tmain(_b: &'static mut bootloader_api::BootInfo) -> ! { loop {} }
#[cfg(test)]
#[panic_handler]
fn p(_: &core::panic::PanicInfo) -> ! { loop {} }
