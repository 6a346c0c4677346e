//! The serial console on COM1: where every line the kernel prints goes (QEMU puts it on the terminal).
//!
//! Printing is safe from any context and from every CPU; each call prints whole (a line of
//! `serial_println!` is never interleaved with another CPU's). The port lock is only ever taken
//! with interrupts disabled, so an interrupt handler can never find it held by the code it
//! interrupted. The lock records its holder's CPU: if this CPU holds it anyway — a fault or panic
//! happened *while printing* — the printer falls back to writing the UART registers directly
//! instead of deadlocking; if another CPU holds it, the printer waits for its line to end.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

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

/// The CPU index holding the port lock, or `usize::MAX`.
static HOLDER: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Writes formatted text to the serial console; used by [`serial_print!`](crate::serial_print).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    interrupts::without_interrupts(|| {
        let me = crate::smp::cpu_id();
        loop {
            if let Some(mut port) = PORT.try_lock() {
                HOLDER.store(me, Ordering::Relaxed);
                let _ = port.write_fmt(args);
                HOLDER.store(usize::MAX, Ordering::Relaxed);
                return;
            }
            if HOLDER.load(Ordering::Relaxed) == me {
                // This CPU holds the lock: code that faulted or panicked mid-print, which will
                // never release it. Write through a fresh handle to the same (already
                // initialised) UART.
                // SAFETY: the holder cannot run again before this write completes (it is this
                // CPU, with interrupts disabled), so the two handles never race on this CPU;
                // other CPUs wait for the lock.
                let mut emergency = unsafe { SerialPort::new(COM1) };
                let _ = emergency.write_fmt(args);
                return;
            }
            core::hint::spin_loop();
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
