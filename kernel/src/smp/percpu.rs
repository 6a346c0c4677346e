//! The per-CPU area and the registry of CPUs: which CPUs are online, their APIC ids, their
//! stacks, and [`cpu_id`].
//!
//! Each CPU's GS base points at its own [`PerCpu`] (the boot CPU's is a static, set at the very
//! start of `kernel::init`; each application processor's is leaked from the heap before it
//! starts). The CPU index is the first word there, so [`cpu_id`] is one `mov` from `gs:0`.
//! Indices are dense: 0 is the boot CPU, 1.. the others in the order they came up (the one
//! exception: a CPU that started but never reported keeps its index unused).
//!
//! The online set is a bit mask ([`MAX_CPUS`] bits) that only grows: a CPU sets its bit when it
//! can take part (GDT, IDT and per-CPU area loaded) and never leaves. The TLB shootdown reads it
//! to know whom to ask (see [`shootdown`](super::shootdown) for the ordering argument).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

/// The most CPUs the kernel runs on (the width of the online mask); CPUs beyond it stay off.
pub const MAX_CPUS: usize = 64;

/// One CPU's own data, reached through its GS base.
#[repr(C)]
#[derive(Debug)]
pub struct PerCpu {
    /// The CPU index ([`cpu_id`]); must stay the first field (read at `gs:0`).
    index: usize,
    /// Its local APIC id.
    apic_id: u32,
    /// Its kernel stack: `stack.0..stack.1` (lowest address, top); the page below is a guard.
    /// For the boot CPU: the stack the bootloader gave it (0..0 when not known).
    stack: (u64, u64),
    /// Its double-fault stack, likewise.
    fault_stack: (u64, u64),
}

impl PerCpu {
    /// The area of CPU `index`.
    pub const fn new(
        index: usize,
        apic_id: u32,
        stack: (u64, u64),
        fault_stack: (u64, u64),
    ) -> Self {
        Self {
            index,
            apic_id,
            stack,
            fault_stack,
        }
    }
}

/// What the registry knows of one online CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    /// Its index ([`cpu_id`] on it).
    pub index: usize,
    /// Its local APIC id.
    pub apic_id: u32,
    /// Its kernel stack, lowest address to top (exclusive); `(0, 0)` if unknown (the boot CPU's
    /// bootloader stack).
    pub stack: (u64, u64),
    /// Its double-fault stack, likewise.
    pub fault_stack: (u64, u64),
}

/// The boot CPU's area (its APIC id is filled in by [`set_bsp_apic_id`]).
static BSP: PerCpuCell = PerCpuCell(core::cell::UnsafeCell::new(PerCpu::new(
    0,
    0,
    (0, 0),
    (0, 0),
)));

/// The boot CPU's area lives in a static but is written once (its APIC id) before any other CPU
/// runs; afterwards it is only read.
struct PerCpuCell(core::cell::UnsafeCell<PerCpu>);

// SAFETY: written only by `set_bsp_apic_id` on the boot CPU before any other CPU starts (the
// application processors are started after it, with a release/acquire hand-over through the
// startup data), read-only afterwards.
unsafe impl Sync for PerCpuCell {}

/// Set once GS holds a per-CPU area on the boot CPU; until then [`cpu_id`] answers 0 without
/// reading GS (only the boot CPU runs then).
static READY: AtomicBool = AtomicBool::new(false);
/// Each online CPU's area, by index.
static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// Bit `i` set: CPU `i` is online.
static ONLINE: AtomicU64 = AtomicU64::new(0);
/// Number of online CPUs.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Points the boot CPU's GS base at its area and marks it online as CPU 0. First step of
/// `kernel::init`, so that [`cpu_id`] works everywhere after it.
pub fn init_bsp() {
    let area = BSP.0.get();
    // GS is not used for anything else in this kernel (no user mode, no swapgs); the area is a
    // static, valid for the kernel's life.
    GsBase::write(VirtAddr::from_ptr(area));
    CPUS[0].store(area, Ordering::Release);
    if ONLINE.fetch_or(1, Ordering::SeqCst) & 1 == 0 {
        COUNT.fetch_add(1, Ordering::SeqCst);
    }
    READY.store(true, Ordering::Release);
}

/// Records the boot CPU's APIC id (once it is known from the local APIC).
pub fn set_bsp_apic_id(apic_id: u32) {
    // SAFETY: see `PerCpuCell`: only the boot CPU runs (no application processor has been
    // started yet), and nothing holds a reference into the area across this write.
    unsafe { (*BSP.0.get()).apic_id = apic_id };
}

/// Makes `area` this CPU's per-CPU area (its GS base), so that [`cpu_id`] answers its index.
/// The first thing an application processor does in the kernel.
///
/// # Safety
///
/// `area` must be valid for the rest of the kernel's life, describe this CPU, and have an index
/// no other CPU uses.
pub unsafe fn enter(area: &'static PerCpu) {
    let ptr = core::ptr::from_ref(area).cast_mut();
    // GS is used for nothing else; the area outlives the kernel (caller's contract).
    GsBase::write(VirtAddr::from_ptr(ptr));
}

/// Marks the calling CPU (which has [`enter`]ed `area`) online, then flushes its TLB. Called by
/// an application processor once its GDT, TSS and IDT are loaded (so it can take NMIs and IPIs).
pub fn mark_online(area: &'static PerCpu) {
    let ptr = core::ptr::from_ref(area).cast_mut();
    CPUS[area.index].store(ptr, Ordering::Release);
    // SeqCst: the shootdown's "clear entries, then read ONLINE" and this "set bit, then flush"
    // must not both miss each other (see `shootdown`).
    ONLINE.fetch_or(1 << area.index, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
    x86_64::instructions::tlb::flush_all();
}

/// The local APIC id `area` describes.
pub fn apic_id_of(area: &PerCpu) -> u32 {
    area.apic_id
}

/// This CPU's index: 0 for the boot CPU, then 1, 2, … in the order the others came up.
#[inline]
pub fn cpu_id() -> usize {
    if !READY.load(Ordering::Relaxed) {
        return 0;
    }
    let index: usize;
    // SAFETY: READY is set only after this CPU's GS base points at its `PerCpu` (the boot CPU
    // sets it in `init_bsp`; application processors write GS before running any code that calls
    // this), whose first field is the index.
    unsafe {
        core::arch::asm!(
            "mov {}, gs:[0]",
            out(reg) index,
            options(nostack, preserves_flags, readonly)
        );
    }
    index
}

/// Number of CPUs online.
pub fn online_count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// The online CPUs as a bit mask (bit `i`: CPU `i`).
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::SeqCst)
}

/// What the registry knows of CPU `index`, if it is online.
pub fn cpu(index: usize) -> Option<CpuInfo> {
    let area = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: a non-null entry points at a `PerCpu` that lives for the kernel's life and is no
    // longer written (the boot CPU's APIC id is written before other CPUs start).
    let area = unsafe { area.as_ref()? };
    Some(CpuInfo {
        index: area.index,
        apic_id: area.apic_id,
        stack: area.stack,
        fault_stack: area.fault_stack,
    })
}

/// The local APIC id of CPU `index` (if online).
pub fn apic_id(index: usize) -> Option<u32> {
    cpu(index).map(|c| c.apic_id)
}
