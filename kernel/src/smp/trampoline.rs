//! The real-mode trampoline: the first code an application processor runs.
//!
//! A STARTUP IPI starts a CPU in 16-bit real mode at the start of a 4 KiB page below 1 MiB
//! (`CS = page << 8`, `IP = 0`). The trampoline below takes it straight to 64-bit mode on the
//! kernel's own page tables and jumps to the kernel:
//!
//! ```text
//!  real mode ── claim the start-up slot (lock cmpxchg READY → TAKEN), or halt if withdrawn
//!            ── lgdt (3 descriptors in the trampoline) ── CR4.PAE ── CR3 = kernel's PML4
//!            ── EFER.LME|NXE ── CR0.PE|PG  (now in long mode, compatibility sub-mode)
//!            ── far jmp to the 64-bit selector ── load data segments
//!            ── rsp = its stack, rdi = its start data ── jmp to the kernel's AP entry
//! ```
//!
//! The code is position-independent: 16-bit code addresses its data relative to CS, 64-bit code
//! RIP-relative, and the three absolute addresses it needs (the GDT's base, the far jump's
//! target, the kernel entry) are patched in when it is copied to its page. Paging is turned on
//! while the CPU executes from that page, so the page must also be mapped at its own physical
//! address (an identity mapping) while CPUs start; [`Trampoline`] adds that mapping and removes
//! it afterwards.
//!
//! The page is taken from the bootloader's memory map before the frame allocator is built
//! ([`reserve`]), so nothing else ever gets it. CPUs are started one at a time; the start-up
//! slot (stack, start data, state) is rewritten for each, and the `state` handshake makes sure a
//! CPU that comes up after the kernel gave up waiting for it halts in real mode instead of running
//! on a slot that is gone. (Should it arrive while the *next* CPU's slot is offered, it takes
//! that slot; the kernel entry checks the APIC id and halts it there, and the next CPU is reported
//! as silent.)

use core::arch::global_asm;

use bootloader_api::info::{MemoryRegion, MemoryRegionKind};
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::memory::{self, MapError};

global_asm!(
    ".pushsection .rodata.ap_trampoline, \"a\"",
    ".global ap_trampoline_start",
    ".global ap_tramp_ljmp_target",
    ".global ap_tramp_long",
    ".global ap_tramp_gdt",
    ".global ap_tramp_gdtr_base",
    ".global ap_tramp_cr3",
    ".global ap_tramp_state",
    ".global ap_tramp_stack",
    ".global ap_tramp_arg",
    ".global ap_tramp_entry",
    ".global ap_trampoline_end",
    ".code16",
    "ap_trampoline_start:",
    "    cli",
    "    cld",
    "    mov ax, cs",
    "    mov ds, ax",
    // Claim the start-up slot (READY → TAKEN) before anything else, or halt here, in real mode,
    // if it was withdrawn: a late CPU then never touches paging or the kernel.
    "    mov eax, 1",
    "    mov ecx, 2",
    "    lock cmpxchg dword ptr [AP_TRAMP_STATE_OFFSET], ecx",
    "    jne 4f",
    "    lgdt [AP_TRAMP_GDTR_OFFSET]",
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    "    mov eax, dword ptr [AP_TRAMP_CR3_OFFSET]",
    "    mov cr3, eax",
    "    mov ecx, 0xC0000080",
    "    rdmsr",
    "    or eax, 0x900",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001",
    "    mov cr0, eax",
    // jmp far ptr16:32 (0x66 0xEA offset32 selector16): to the 64-bit code segment.
    "    .byte 0x66, 0xEA",
    "ap_tramp_ljmp_target:",
    "    .long 0",
    "    .word 0x08",
    "4:",
    "    cli",
    "    hlt",
    "    jmp 4b",
    ".code64",
    "ap_tramp_long:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    mov rsp, qword ptr [rip + ap_tramp_stack]",
    "    mov rdi, qword ptr [rip + ap_tramp_arg]",
    "    mov rax, qword ptr [rip + ap_tramp_entry]",
    "    xor ebp, ebp",
    // A zero return address, so that rsp is 8 mod 16 at the entry, as after a call.
    "    push rbp",
    "    jmp rax",
    ".balign 8",
    "ap_tramp_gdt:",
    "    .quad 0",
    // 64-bit code: present, ring 0, code, execute/read, L=1, 4 KiB granularity.
    "    .quad 0x00AF9A000000FFFF",
    // Data: present, ring 0, read/write, 32-bit, 4 KiB granularity.
    "    .quad 0x00CF92000000FFFF",
    "ap_tramp_gdtr:",
    "    .word 23",
    "ap_tramp_gdtr_base:",
    "    .long 0",
    ".balign 8",
    "ap_tramp_cr3:",
    "    .quad 0",
    "ap_tramp_state:",
    "    .long 0",
    "    .long 0",
    "ap_tramp_stack:",
    "    .quad 0",
    "ap_tramp_arg:",
    "    .quad 0",
    "ap_tramp_entry:",
    "    .quad 0",
    "ap_trampoline_end:",
    // Offsets from the start (CS base) for the 16-bit code's memory operands.
    ".set AP_TRAMP_GDTR_OFFSET, ap_tramp_gdtr - ap_trampoline_start",
    ".set AP_TRAMP_CR3_OFFSET, ap_tramp_cr3 - ap_trampoline_start",
    ".set AP_TRAMP_STATE_OFFSET, ap_tramp_state - ap_trampoline_start",
    ".popsection",
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_tramp_ljmp_target: u8;
    static ap_tramp_long: u8;
    static ap_tramp_gdt: u8;
    static ap_tramp_gdtr_base: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_state: u8;
    static ap_tramp_stack: u8;
    static ap_tramp_arg: u8;
    static ap_tramp_entry: u8;
    static ap_trampoline_end: u8;
}

/// Slot states of the start-up handshake (the `state` word).
const EMPTY: u32 = 0;
/// The slot holds a CPU's stack and index; the next CPU to arrive may take it.
const READY: u32 = 1;
/// A CPU took the slot (it runs on its stack now).
const TAKEN: u32 = 2;
/// The kernel stopped waiting; a CPU arriving now halts.
const WITHDRAWN: u32 = 3;

const PAGE: u64 = 4096;
/// Real-mode code can only start below 1 MiB.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// Offset of a trampoline symbol from its start.
fn offset(symbol: *const u8) -> u64 {
    symbol as u64 - (&raw const ap_trampoline_start) as u64
}

/// Takes one usable 4 KiB frame below 1 MiB (not frame 0) out of the boot memory map, by moving
/// the start of its region past it, so that the frame allocator never hands it out. `None` if
/// there is none (then no other CPU can be started). Call before `memory::init`.
pub fn reserve(regions: &mut [MemoryRegion]) -> Option<PhysFrame> {
    for region in regions.iter_mut() {
        if region.kind != MemoryRegionKind::Usable {
            continue;
        }
        let frame = region.start.next_multiple_of(PAGE).max(PAGE);
        if frame + PAGE <= region.end.min(LOW_MEMORY_END) {
            region.start = frame + PAGE;
            return Some(PhysFrame::containing_address(PhysAddr::new(frame)));
        }
    }
    None
}

/// Why the trampoline could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrampolineError {
    /// The kernel's PML4 lies above 4 GiB: real-mode code cannot load it into CR3.
    TablesAbove4GiB,
    /// The identity mapping of the trampoline page could not be made.
    Map(MapError),
}

impl core::fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TablesAbove4GiB => f.write_str("the kernel's page tables are above 4 GiB"),
            Self::Map(e) => write!(f, "the trampoline page could not be identity-mapped: {e}"),
        }
    }
}

/// The trampoline, copied to its page and identity-mapped, ready to start CPUs one at a time.
#[derive(Debug)]
pub struct Trampoline {
    frame: PhysFrame,
    /// The trampoline's bytes, through the physical-memory mapping.
    base: *mut u8,
    /// Whether the identity mapping was made here (else it existed already, and stays).
    mapped_here: bool,
    /// Whether a CPU took a slot without reporting: it may still run in the page, so the
    /// identity mapping stays for good.
    late_cpu_possible: bool,
}

impl Trampoline {
    /// Copies the trampoline to `frame`, patches in its addresses, the kernel's page tables and
    /// `entry`, and maps the page at its own physical address.
    ///
    /// # Errors
    ///
    /// See [`TrampolineError`].
    ///
    /// # Safety
    ///
    /// `frame` must come from [`reserve`] (below 1 MiB, owned by nobody else), and be used for no
    /// other `Trampoline` at the same time. `entry` must be a function that can run as the first
    /// code of a CPU on its own stack, with its CPU index in `rdi`.
    pub unsafe fn install(
        frame: PhysFrame,
        entry: extern "sysv64" fn(u64) -> !,
    ) -> Result<Self, TrampolineError> {
        let (pml4, _) = x86_64::registers::control::Cr3::read();
        let cr3 = pml4.start_address().as_u64();
        if cr3 >= 1 << 32 {
            return Err(TrampolineError::TablesAbove4GiB);
        }
        let phys_offset = memory::physical_memory_offset()
            .expect("smp: trampoline installed before memory::init")
            .as_u64();
        let phys = frame.start_address().as_u64();
        let base = (phys_offset + phys) as *mut u8;
        let start = &raw const ap_trampoline_start;
        let len = offset(&raw const ap_trampoline_end) as usize;
        assert!(len <= PAGE as usize, "the trampoline fits a page");
        // SAFETY: the frame is ours (caller's contract) and mapped writable at `base` through the
        // physical-memory mapping; the source is the trampoline's `len` bytes in the kernel image.
        unsafe { core::ptr::copy_nonoverlapping(start, base, len) };
        let tramp = Self {
            frame,
            base,
            mapped_here: false,
            late_cpu_possible: false,
        };
        // The absolute addresses are physical = identity-mapped virtual addresses, all < 1 MiB.
        tramp.write_u32(
            &raw const ap_tramp_gdtr_base,
            (phys + offset(&raw const ap_tramp_gdt)) as u32,
        );
        tramp.write_u32(
            &raw const ap_tramp_ljmp_target,
            (phys + offset(&raw const ap_tramp_long)) as u32,
        );
        tramp.write_u64(&raw const ap_tramp_cr3, cr3);
        tramp.write_u64(&raw const ap_tramp_entry, entry as usize as u64);
        tramp.write_u32(&raw const ap_tramp_state, EMPTY);
        let page = Page::containing_address(VirtAddr::new(phys));
        // Executable (the code runs here) and writable (the state word is claimed here).
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        // SAFETY: the frame is the trampoline's own; a low-half page at its physical address is
        // used by nothing else in this kernel (the kernel lives in the higher half).
        let mapped_here = match unsafe { memory::map(page, frame, flags) } {
            Ok(()) => true,
            Err(MapError::AlreadyMapped { frame: f, .. }) if f == frame => false,
            Err(e) => return Err(TrampolineError::Map(e)),
        };
        Ok(Self {
            mapped_here,
            ..tramp
        })
    }

    /// The STARTUP IPI's vector: the page number of the trampoline.
    pub fn vector(&self) -> u8 {
        (self.frame.start_address().as_u64() / PAGE) as u8
    }

    /// Offers the start-up slot to the next CPU that arrives: it will run on the stack whose top
    /// is `stack_top` with `index` as its argument.
    pub fn offer(&mut self, stack_top: u64, index: usize) {
        self.write_u64(&raw const ap_tramp_stack, stack_top);
        self.write_u64(&raw const ap_tramp_arg, index as u64);
        self.state()
            .store(READY, core::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a CPU has taken the slot offered last.
    pub fn taken(&self) -> bool {
        self.state().load(core::sync::atomic::Ordering::SeqCst) == TAKEN
    }

    /// Withdraws the offer if no CPU has taken it; returns `false` if one has (it is running
    /// on the offered stack then, and may still need the identity mapping: it stays for good). A
    /// CPU that arrives after a withdrawal halts in real mode, in the page (which is never
    /// reused).
    pub fn withdraw(&mut self) -> bool {
        use core::sync::atomic::Ordering;
        let withdrawn = self
            .state()
            .compare_exchange(READY, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if !withdrawn {
            self.late_cpu_possible = true;
        }
        withdrawn
    }

    fn state(&self) -> &core::sync::atomic::AtomicU32 {
        let ptr = self
            .field(&raw const ap_tramp_state)
            .cast::<core::sync::atomic::AtomicU32>();
        // SAFETY: the state word is 4-aligned (it follows an 8-aligned quad), inside the
        // trampoline's page, which lives as long as `self` (and longer); other CPUs access it
        // only atomically (`lock cmpxchg`).
        unsafe { &*ptr }
    }

    fn field(&self, symbol: *const u8) -> *mut u8 {
        // SAFETY: `symbol` is one of the trampoline's symbols, so the offset is inside the
        // copied bytes, inside the page at `base`.
        unsafe { self.base.add(offset(symbol) as usize) }
    }

    fn write_u32(&self, symbol: *const u8, value: u32) {
        // SAFETY: a field of the trampoline (see `field`); only the boot CPU writes these, while
        // no other CPU reads the slot (before READY is published).
        unsafe { self.field(symbol).cast::<u32>().write_unaligned(value) }
    }

    fn write_u64(&self, symbol: *const u8, value: u64) {
        // SAFETY: as in `write_u32`.
        unsafe { self.field(symbol).cast::<u64>().write_unaligned(value) }
    }
}

impl Drop for Trampoline {
    /// Removes the identity mapping, unless a CPU may still arrive (see [`Trampoline::withdraw`]).
    /// The frame itself stays out of the frame allocator either way.
    fn drop(&mut self) {
        if self.mapped_here && !self.late_cpu_possible {
            let page = Page::containing_address(VirtAddr::new(self.frame.start_address().as_u64()));
            // SAFETY: every CPU that took a slot has left the trampoline (each reported in
            // after jumping to the kernel); a CPU arriving now halts in real mode, before
            // paging, so it never uses this mapping.
            let _ = unsafe { memory::unmap(page) };
        }
    }
}
