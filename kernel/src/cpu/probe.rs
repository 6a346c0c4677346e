//! Reads that may fault: [`read_u64`] returns `Err` instead of ending the kernel when the address
//! is not mapped, like Linux's exception-table fixups (`copy_from_kernel_nofault`).
//!
//! The read is one instruction in a small assembly function; the page-fault handler asks
//! [`fixup`] whether the faulting instruction is that one and, if so, resumes at a landing pad
//! that returns "faulted". Nothing else is recorded, so a probe is safe on every CPU at once.
//! Tests use it to prove that an access *must* fault (the TLB shootdown test: a CPU's next read
//! of a page another CPU unmapped).

use core::arch::global_asm;

/// Result of the assembly probe, returned in `rax:rdx` by the System V ABI.
#[repr(C)]
struct RawProbe {
    value: u64,
    faulted: u64,
}

global_asm!(
    ".pushsection .text.kernel_probe, \"ax\"",
    ".global kernel_probe_read_u64",
    ".global kernel_probe_read_u64_insn",
    ".global kernel_probe_read_u64_fixup",
    "kernel_probe_read_u64:",
    "    xor edx, edx",
    "kernel_probe_read_u64_insn:",
    "    mov rax, qword ptr [rdi]",
    "    ret",
    "kernel_probe_read_u64_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".popsection",
);

unsafe extern "sysv64" {
    fn kernel_probe_read_u64(addr: u64) -> RawProbe;
    static kernel_probe_read_u64_insn: u8;
    static kernel_probe_read_u64_fixup: u8;
}

/// A probed read found no mapping at `addr` (a page fault was taken and handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The address that was read.
    pub addr: u64,
}

/// Reads the `u64` at `addr`, or reports that reading it faulted.
///
/// # Safety
///
/// If `addr` is mapped, it must be valid to read 8 bytes there (not device memory with side
/// effects, aligned, and not racing a write in a way Rust forbids — other CPUs may write it with
/// atomics or not at all). An unmapped address is fine: that is what the function is for.
pub unsafe fn read_u64(addr: u64) -> Result<u64, Fault> {
    // SAFETY: the function reads 8 bytes at `addr` (the caller's contract covers a mapped
    // address; an unmapped one faults and the page-fault handler resumes at the fixup, which
    // returns with `faulted` set). It touches no other memory and follows the System V ABI.
    let raw = unsafe { kernel_probe_read_u64(addr) };
    if raw.faulted != 0 {
        Err(Fault { addr })
    } else {
        Ok(raw.value)
    }
}

/// Where to resume after a page fault at instruction `rip`, if that instruction is a probe's
/// read. Called by the page-fault handler before it treats the fault as fatal.
pub fn fixup(rip: u64) -> Option<u64> {
    let insn = (&raw const kernel_probe_read_u64_insn) as u64;
    let landing = (&raw const kernel_probe_read_u64_fixup) as u64;
    (rip == insn).then_some(landing)
}

#[cfg(test)]
mod tests {
    use super::{Fault, read_u64};

    #[kernel::test]
    fn a_probe_reads_mapped_memory_and_survives_unmapped_memory() {
        let value = core::hint::black_box(0x1234_5678_9abc_def0u64);
        // SAFETY: a live local.
        assert_eq!(unsafe { read_u64(&raw const value as u64) }, Ok(value));
        let guard = crate::memory::HEAP_GUARD_PAGE;
        // SAFETY: the heap's guard page is never mapped: the read faults and is reported.
        let result = unsafe { read_u64(guard + 8) };
        assert_eq!(result, Err(Fault { addr: guard + 8 }));
        // And again, to show the first fault left nothing behind.
        // SAFETY: as above.
        assert!(unsafe { read_u64(guard) }.is_err());
    }
}
