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
//! the *emulation* took, host load included: only ratios between counts taken in the same boot
//! mean something. With `-icount shift=0` QEMU advances the guest clock by guest instructions
//! instead, so counts become deterministic instruction counts (blind to caches and memory);
//! [`clock`] tells the two apart so the report can say which one it printed.

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

/// What the time-stamp counter advances with, as far as a measurement can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Every run of a fixed instruction sequence reads the same count: QEMU with `-icount`,
    /// where the guest's clock advances by guest instructions retired (one tick per instruction
    /// with `shift=0`). Counts are deterministic, but say nothing about caches or memory.
    Instructions,
    /// Counts vary from run to run: time (host time as seen through TCG, or real cycles).
    Time,
}

/// Tells [`Clock::Instructions`] from [`Clock::Time`] by timing the same short loop a few times.
pub fn clock() -> Clock {
    /// Iterations of the calibration loop: long enough that real time never repeats exactly.
    const SPINS: u64 = 1000;
    /// Timed runs compared (after one that lets QEMU translate the loop).
    const RUNS: usize = 4;
    let mut counts = [0u64; RUNS + 1];
    for count in &mut counts {
        *count = timed_spin(SPINS);
    }
    if counts[1..].iter().all(|&c| c == counts[1]) {
        Clock::Instructions
    } else {
        Clock::Time
    }
}

/// Counter ticks across a countdown loop of `spins` iterations. Reads, loop and fences are one
/// asm block, so that the instructions between the two reads are the same on every call.
fn timed_spin(spins: u64) -> u64 {
    let (start_lo, start_hi, end_lo, end_hi): (u64, u64, u64, u64);
    // SAFETY: fences, counter reads and a register-only countdown loop: no memory, no stack.
    // The loop changes the flags, so `preserves_flags` is not claimed.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            "lfence",
            "mov {start_lo}, rax",
            "mov {start_hi}, rdx",
            "2:",
            "dec {left}",
            "jnz 2b",
            "lfence",
            "rdtsc",
            "lfence",
            left = inout(reg) spins => _,
            start_lo = out(reg) start_lo,
            start_hi = out(reg) start_hi,
            out("rax") end_lo,
            out("rdx") end_hi,
            options(nomem, nostack),
        );
    }
    let start = (start_hi << 32) | (start_lo & 0xffff_ffff);
    let end = (end_hi << 32) | (end_lo & 0xffff_ffff);
    end.wrapping_sub(start)
}
