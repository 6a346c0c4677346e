//! The time-stamp counter, read the same way by both benchmarks.
//!
//! `rdtsc` is not a serialising instruction: the CPU may start it before earlier instructions have
//! finished, or let later ones start before it has read the counter. Each read is therefore
//! bracketed by `lfence` (which waits for every earlier instruction to complete locally and keeps
//! later ones from starting), as Intel's and AMD's manuals recommend for timing short code. The asm
//! block omits `nomem`, so it is also a compiler barrier: the optimiser cannot move the timed
//! memory operations across a read. Inline assembly rather than `core::arch`'s intrinsics, because
//! `_mm_lfence` is an SSE2 intrinsic and the kernel target is built without SSE.
//!
//! On the host the counter runs at a constant reference rate (TSC cycles, not core cycles). Under
//! QEMU without KVM (TCG) the guest's counter follows the host clock, or, with `-icount shift=0`,
//! counts guest instructions ([`counts_instructions`] tells the two apart).

use core::arch::asm;

/// Reads the time-stamp counter, fenced on both sides.
#[inline(always)]
pub fn stamp() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `lfence` and `rdtsc` only order instructions and read a counter, which user mode
    // may read on Linux and which this repository's kernel never hides (CR4.TSD stays clear). No
    // stack is used and no flags change.
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

/// Counter ticks between two [`stamp`]s around nothing: the fixed cost every bracket includes.
/// The minimum of many tries, so that one-off disturbances do not inflate it.
pub fn overhead() -> u64 {
    /// Enough tries for the minimum to settle; each costs two counter reads.
    const TRIES: usize = 1000;
    (0..TRIES)
        .map(|_| {
            let start = stamp();
            stamp().wrapping_sub(start)
        })
        .min()
        .unwrap_or(0)
}

/// Whether the counter advances with instructions executed (QEMU's `-icount`) rather than with
/// time: the same short loop, timed a few times, then reads the same count every time.
pub fn counts_instructions() -> bool {
    /// Iterations of the calibration loop: long enough that real time never repeats exactly.
    const SPINS: u64 = 1000;
    /// Timed runs compared (after one that lets QEMU translate the loop).
    const RUNS: usize = 4;
    let mut counts = [0u64; RUNS + 1];
    for count in &mut counts {
        *count = timed_spin(SPINS);
    }
    counts[1..].iter().all(|&c| c == counts[1])
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
