//! Leaving QEMU with a status through its `isa-debug-exit` device.
//!
//! The runner starts QEMU with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`. Writing value `v` to
//! that port ends QEMU with process status `(v << 1) | 1`. The runner maps the statuses back; a QEMU
//! that ends *without* a write here (triple fault + `-no-reboot`) is always treated as a failure.

use x86_64::instructions::port::Port;

/// I/O port of QEMU's `isa-debug-exit` device (must match the runner's `iobase`).
const DEBUG_EXIT_PORT: u16 = 0xF4;

/// The codes the kernel leaves QEMU with; the runner in `boot/` knows the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum QemuExitCode {
    /// The kernel finished its work (or all its tests ran): QEMU exits with status 33.
    Success = 0x10,
    /// The kernel failed (panic, fault): QEMU exits with status 35.
    Failed = 0x11,
    /// A test kernel stopped early after reporting one test's outcome; the runner reboots it to go on
    /// with the next test: QEMU exits with status 37.
    Resume = 0x12,
}

/// Ends the QEMU session with `code`.
pub fn exit_qemu(code: QemuExitCode) -> ! {
    // SAFETY: port 0xF4 is QEMU's debug-exit device, configured by the runner; writing to it has no
    // effect other than ending the virtual machine. On hardware without it, the write is ignored and
    // we halt below.
    unsafe {
        Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32);
    }
    halt_forever()
}

/// Halts the CPU for good (interrupts off).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
