//! A small x86_64 kernel whose job is to run, and prove, the `kheap` kernel heap.
//!
//! Init order (see [`init`]): serial console → GDT/TSS → per-CPU area → IDT → TSC calibration →
//! physical frames and page tables (minus the page the CPU trampoline needs) → heap → the other
//! CPUs. Each step that can fail returns a typed error.

#![no_std]
#![cfg_attr(test, no_main)]
#![feature(custom_test_frameworks)]
#![feature(abi_x86_interrupt)]
#![test_runner(crate::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;
// Lets `#[kernel::test]`'s expansion name this crate as `::kernel` in the library's own tests too.
extern crate self as kernel;

pub mod allocator;
pub mod baseline;
pub mod cpu;
pub mod fw_cfg;
pub mod gdt;
pub mod heap_picture;
pub mod interrupts;
pub mod kfence;
mod leak;
pub mod memory;
pub mod panic;
pub mod qemu;
pub mod serial;
pub mod smp;
pub mod testing;
pub mod timer;
pub mod workload;

/// Marks a test function of a test kernel: `#[kernel::test]`, optionally followed by
/// `#[should_panic(expected = "…")]` or `#[ignore = "…"]` (see [`testing`]).
pub use kernel_macros::test;

use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};

/// The bootloader configuration every kernel of this crate (the main kernel and each test kernel)
/// is built with: the whole of physical memory mapped at an offset the bootloader picks (the frame
/// allocator and page-table code reach physical frames through it), and a larger kernel stack.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // Keep the bootloader's own dynamic mappings (physical-memory map, boot info, stack) below the
    // top-level page-table slot that the memory layer reserves for the heap window.
    config.mappings.dynamic_range_start = Some(0xFFFF_8000_0000_0000);
    config.mappings.dynamic_range_end = Some(memory::HEAP_SLOT_START);
    // Deep recursion in tests (and BTreeMap-heavy workloads) want more than the default 80 KiB.
    config.kernel_stack_size = 256 * 1024;
    config
};

/// Why kernel initialisation failed.
#[derive(Debug)]
pub enum InitError {
    /// The frame allocator, page tables or heap window could not be set up.
    Memory(memory::MemoryInitError),
    /// The heap could not map its first root page.
    Heap(allocator::HeapInitError),
    /// The local APIC could not be set up (the other CPUs' own failures are not errors: they
    /// are reported in `smp::summary`).
    Smp(smp::SmpError),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Memory(e) => write!(f, "memory: {e}"),
            Self::Heap(e) => write!(f, "{e}"),
            Self::Smp(e) => write!(f, "smp: {e}"),
        }
    }
}

/// Brings the kernel up, in this order: serial console, GDT and TSS, the boot CPU's per-CPU area
/// (so `smp::cpu_id` works from here on), IDT, TSC calibration (for the CPU start-up delays and
/// the lock watchdog), physical frames and page tables (after taking the CPU trampoline's page
/// out of the memory map), heap, and last every other CPU (`smp::init`). The boot CPU's
/// interrupts stay disabled; the other CPUs wait for work with theirs enabled.
pub fn init(boot_info: &'static mut BootInfo) -> Result<(), InitError> {
    serial::init();
    gdt::init();
    smp::percpu::init_bsp();
    interrupts::init();
    cpu::clock::calibrate();
    smp::reserve_trampoline(&mut boot_info.memory_regions);
    memory::init(boot_info).map_err(InitError::Memory)?;
    allocator::init().map_err(InitError::Heap)?;
    smp::init(boot_info.rsdp_addr.into_option()).map_err(InitError::Smp)?;
    Ok(())
}

/// Boots this kernel with extra QEMU arguments, e.g. `kernel::qemu_args!("-m 32M");` at the top
/// level of a test kernel. The runner reads them from the ELF section `.kernel_qemu_args`.
#[macro_export]
macro_rules! qemu_args {
    ($args:literal) => {
        #[used]
        #[unsafe(link_section = ".kernel_qemu_args")]
        static KERNEL_QEMU_ARGS: [u8; $args.len()] = {
            let src = $args.as_bytes();
            let mut out = [0u8; $args.len()];
            let mut i = 0;
            while i < out.len() {
                out[i] = src[i];
                i += 1;
            }
            out
        };
    };
}

// The library's own unit tests (`#[kernel::test]`s in its modules) form a test kernel too.
#[cfg(test)]
crate::test_kernel!();
