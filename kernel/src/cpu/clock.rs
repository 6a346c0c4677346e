//! Time: the time-stamp counter, calibrated once against the 8254 PIT.
//!
//! The PIT counts at a fixed, known rate (1.193182 MHz) on every PC, but reading it is slow and
//! it is shared; the TSC is read in a few cycles on every CPU but its rate differs from machine to
//! machine. [`calibrate`] runs PIT channel 2 (the one wired to the speaker gate, which nothing
//! else here uses) as a one-shot of [`CALIBRATION_MS`] and counts TSC ticks across it. From then
//! on [`delay_us`] and [`Deadline`] measure time with the TSC alone, on any CPU: the TSC of every
//! x86_64 CPU QEMU or a current machine offers is invariant and synchronised across CPUs.
//!
//! Used for the INIT/SIPI delays of starting CPUs (10 ms and 200 µs, as the MP specification
//! asks), the start-up timeout, and the lock watchdog. Under QEMU without KVM the TSC follows the
//! host's clock (or guest instructions with `-icount`), and so does the PIT: the calibration keeps
//! the two consistent within one boot, which is all these waits need.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// Input clock of the 8254 PIT in Hz.
const PIT_HZ: u64 = 1_193_182;
/// Length of the calibration: long enough that reading the PIT's end is a small error (one
/// port read, about a µs), short enough not to slow the boot.
pub const CALIBRATION_MS: u64 = 10;
/// What [`ticks_per_us`] assumes before [`calibrate`] ran (a 3 GHz TSC): only a fallback for
/// waits made before the calibration, of which there are none in the init order.
const UNCALIBRATED_TICKS_PER_US: u64 = 3000;

/// TSC ticks per microsecond; 0 until [`calibrate`].
static TICKS_PER_US: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter (not serialising: for waits and timeouts, not for timing short
/// code — see `bench::tsc` for that).
#[inline]
pub fn now() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` only reads a counter; CR4.TSD is clear in this kernel, so it cannot fault.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Measures the TSC rate against PIT channel 2 (takes [`CALIBRATION_MS`]). Call once, on the
/// boot CPU, with interrupts disabled, before anything waits.
pub fn calibrate() {
    let latch = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: port 0x61 bit 0 is the gate of PIT channel 2 and bit 1 the speaker enable (kept
    // off); 0x43/0x42 program channel 2, which nothing else in the kernel uses. Mode 0 ("interrupt
    // on terminal count") raises OUT2 (port 0x61 bit 5) when the count written reaches zero.
    let ticks = unsafe {
        let value = gate.read();
        gate.write((value & !0x02) | 0x01);
        // Channel 2, low byte then high byte, mode 0, binary.
        command.write(0b1011_0000);
        channel2.write((latch & 0xff) as u8);
        channel2.write((latch >> 8) as u8);
        let start = now();
        // Bounded, in case the PIT is absent: 2^32 port reads are far longer than 10 ms anywhere.
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 && spins < 1 << 32 {
            spins += 1;
            core::hint::spin_loop();
        }
        now().wrapping_sub(start)
    };
    let per_us = (ticks / (CALIBRATION_MS * 1000)).max(1);
    TICKS_PER_US.store(per_us, Ordering::Relaxed);
}

/// TSC ticks per microsecond, as calibrated (a 3 GHz guess before [`calibrate`]).
pub fn ticks_per_us() -> u64 {
    match TICKS_PER_US.load(Ordering::Relaxed) {
        0 => UNCALIBRATED_TICKS_PER_US,
        n => n,
    }
}

/// The TSC rate in kHz (for reports).
pub fn tsc_khz() -> u64 {
    ticks_per_us() * 1000
}

/// A point in time, `us` microseconds from now, to wait for.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: u64,
    ticks: u64,
}

impl Deadline {
    /// The deadline `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Self {
            start: now(),
            ticks: us.saturating_mul(ticks_per_us()),
        }
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        now().wrapping_sub(self.start) >= self.ticks
    }

    /// Microseconds since the deadline was set.
    pub fn elapsed_us(&self) -> u64 {
        now().wrapping_sub(self.start) / ticks_per_us()
    }
}

/// Busy-waits at least `us` microseconds.
pub fn delay_us(us: u64) {
    let deadline = Deadline::after_us(us);
    while !deadline.passed() {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadline, delay_us, ticks_per_us};

    #[kernel::test]
    fn the_tsc_is_calibrated_and_delays_wait() {
        assert!(ticks_per_us() > 0);
        let d = Deadline::after_us(2000);
        assert!(!d.passed() || d.elapsed_us() >= 2000);
        delay_us(2000);
        assert!(d.passed(), "a 2 ms delay ended before a 2 ms deadline");
    }
}
