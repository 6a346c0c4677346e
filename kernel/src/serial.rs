//! The serial console on COM1: where every line the kernel prints goes (QEMU puts it on the terminal).
//!
//! Printing is safe from any context. The port lock is only ever taken with interrupts disabled, so an
//! interrupt handler can never find it held by the code it interrupted. If the lock is held anyway —
//! which on this single-CPU kernel means a fault or panic happened *while printing* — the printer
//! falls back to writing the UART registers directly instead of deadlocking.

use core::fmt::{self, Write};

use spin::{Lazy, Mutex};
use uart_16550::SerialPort;
use x86_64::instructions::interrupts;

/// I/O port base of COM1, the first serial port, which QEMU's `-serial stdio` connects.
const COM1: u16 = 0x3F8;

static PORT: Lazy<Mutex<SerialPort>> = Lazy::new(|| {
    // SAFETY: COM1 is the standard first serial port of the PC platform; nothing else in the kernel
    // drives these I/O ports, and `Lazy` runs this initialisation exactly once.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    Mutex::new(port)
});

/// Initialises COM1 now (it is otherwise initialised on first use).
pub fn init() {
    Lazy::force(&PORT);
}

/// Writes formatted text to the serial console; used by [`serial_print!`](crate::serial_print).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    interrupts::without_interrupts(|| {
        if let Some(mut port) = PORT.try_lock() {
            let _ = port.write_fmt(args);
        } else {
            // The lock is held by code that faulted or panicked mid-print on this CPU: it will never
            // be released, so write through a fresh handle to the same (already initialised) UART.
            // SAFETY: the holder of the lock cannot run again before this write completes (we are
            // on the same CPU with interrupts disabled), so the two handles never race.
            let mut emergency = unsafe { SerialPort::new(COM1) };
            let _ = emergency.write_fmt(args);
        }
    });
}

/// Prints to the serial console (COM1).
#[macro_export]
macro_rules! serial_print {
    ($($arg:tt)*) => {
        $crate::serial::_print(format_args!($($arg)*))
    };
}

/// Prints to the serial console (COM1), with a newline.
#[macro_export]
macro_rules! serial_println {
    () => ($crate::serial_print!("\n"));
    ($($arg:tt)*) => ($crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))));
}
