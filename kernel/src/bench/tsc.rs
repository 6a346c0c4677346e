//! Cycle counting with the time-stamp counter.
//!
//! `rdtsc` is not a serialising instruction: the CPU may start it before earlier instructions have
//! finished, or let later ones start before it has read the counter. Both reads are therefore
//! bracketed by `lfence` (which waits for every earlier instruction to complete locally and keeps
//! later ones from starting), as Intel's and AMD's manuals recommend for timing short code. The asm
//! blocks also omit `nomem`, so they are compiler barriers: the optimiser cannot move the timed
//! memory operations across a read.
//!
//! Under QEMU without KVM (TCG) the guest TSC follows the host's clock, so a count measures how long
//! the *emulation* took: only ratios between counts taken in the same boot mean something.

use core::arch::asm;

/// Reads the time-stamp counter, fenced on both sides.
#[inline(always)]
pub fn read() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `lfence` and `rdtsc` only order instructions and read a counter; CR4.TSD is clear
    // in this kernel (the bootloader leaves it clear and nothing sets it), so `rdtsc` cannot fault
    // at ring 0 anyway. No stack is used and no flags change.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            "lfence",
            out("eax") lo,
            out("edx") hi,
            options(nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Cycles between two [`read`]s around nothing: the fixed cost that every measurement includes.
/// The minimum of many tries, so that one-off disturbances do not inflate it.
pub fn overhead() -> u64 {
    /// Enough tries for the minimum to settle; each costs two counter reads.
    const TRIES: usize = 1000;
    (0..TRIES)
        .map(|_| {
            let start = read();
            read().wrapping_sub(start)
        })
        .min()
        .unwrap_or(0)
}
