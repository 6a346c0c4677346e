//! The local APIC in xAPIC mode: its registers are a 4 KiB page of memory-mapped I/O, the same
//! physical page on every CPU (each CPU sees its own APIC there).
//!
//! [`map`] maps that page once, uncached (`NO_CACHE | WRITE_THROUGH`: register reads and writes
//! must reach the device, in order), at the start of the CPU area (see [`super::CPU_AREA_START`]);
//! [`enable`] turns the APIC on for the calling CPU. The rest are the operations the kernel
//! needs: its id, end-of-interrupt, and the interrupt command register for IPIs (INIT, STARTUP,
//! NMI and fixed vectors). x2APIC (MSR access) is not used: QEMU's TCG does not offer it.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::memory::{self, MapError};

/// Register offsets (Intel SDM vol. 3, table "Local APIC Register Address Map").
const ID: u64 = 0x20;
const TPR: u64 = 0x80;
const EOI: u64 = 0xB0;
const SVR: u64 = 0xF0;
const ESR: u64 = 0x280;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;

/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// ICR bit 12: the previous IPI has not been accepted yet.
const ICR_PENDING: u32 = 1 << 12;
/// ICR bit 14: level assert (must be set for everything but INIT de-assert).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR bit 15: level-triggered (only INIT de-assert uses it).
const ICR_LEVEL: u32 = 1 << 15;

/// The vector of the APIC's spurious interrupts (low 4 bits all ones, as older APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Virtual address of the mapped register page; 0 until [`map`].
static BASE: AtomicU64 = AtomicU64::new(0);

/// What an IPI asks the target to do (the ICR's delivery mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// An interrupt with this vector (32..=255).
    Fixed(u8),
    /// A non-maskable interrupt (vector 2, taken even with interrupts disabled).
    Nmi,
    /// INIT, level assert: the target resets and waits for a STARTUP.
    InitAssert,
    /// INIT, level de-assert (required by old APICs after an INIT assert, harmless on new ones).
    InitDeassert,
    /// STARTUP: the target starts in real mode at `page << 12`, CS = `page << 8`, IP = 0.
    Startup(u8),
}

impl Delivery {
    /// The ICR low word for this delivery (physical destination mode, no shorthand).
    fn icr_low(self) -> u32 {
        match self {
            Self::Fixed(vector) => u32::from(vector) | ICR_ASSERT,
            Self::Nmi => (0b100 << 8) | ICR_ASSERT,
            Self::InitAssert => (0b101 << 8) | ICR_ASSERT | ICR_LEVEL,
            Self::InitDeassert => (0b101 << 8) | ICR_LEVEL,
            Self::Startup(page) => u32::from(page) | (0b110 << 8) | ICR_ASSERT,
        }
    }
}

/// Why the local APIC could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// Its register page could not be mapped.
    Map(MapError),
    /// No frame for a page table of the CPU area.
    OutOfMemory,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "local APIC registers could not be mapped: {e}"),
            Self::OutOfMemory => f.write_str("no memory to map the local APIC registers"),
        }
    }
}

/// Maps the local APIC's register page (physical address `phys`, from the MADT) uncached at
/// the start of the CPU area. Once, on the boot CPU, after `memory::init`.
///
/// # Errors
///
/// [`ApicError::Map`] if the page cannot be mapped (already mapped to something else, no frame
/// for a page table).
pub fn map(phys: u64) -> Result<(), ApicError> {
    let virt = super::CPU_AREA_START;
    let page = Page::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH
        | PageTableFlags::NO_EXECUTE;
    // SAFETY: the frame is the APIC's register page (device memory no allocator hands out: it is
    // not in the usable part of the memory map), and the page is the first of the CPU area, which
    // only this module maps.
    match unsafe { memory::map(page, frame, flags) } {
        Ok(()) => {}
        Err(MapError::AlreadyMapped { frame: f, .. }) if f == frame => {}
        Err(MapError::OutOfFrames) => return Err(ApicError::OutOfMemory),
        Err(e) => return Err(ApicError::Map(e)),
    }
    BASE.store(virt + (phys & 0xfff), Ordering::Release);
    Ok(())
}

/// Whether [`map`] has run.
pub fn is_mapped() -> bool {
    BASE.load(Ordering::Acquire) != 0
}

fn read(reg: u64) -> u32 {
    let base = BASE.load(Ordering::Acquire);
    debug_assert!(base != 0, "local APIC used before apic::map");
    // SAFETY: `base` is the uncached mapping of the APIC's register page made by `map` (or the
    // assertion above fires); `reg` is a register offset inside it, 16-byte aligned.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(reg: u64, value: u32) {
    let base = BASE.load(Ordering::Acquire);
    debug_assert!(base != 0, "local APIC used before apic::map");
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

/// Turns the calling CPU's local APIC on: software enable with the spurious vector, accept
/// every priority, clear the error status. The LVT entries are left as the firmware set them
/// (on the boot CPU, LINT0 carries the 8259's interrupts).
pub fn enable() {
    write(SVR, u32::from(SPURIOUS_VECTOR) | SVR_ENABLE);
    write(TPR, 0);
    // The ESR is updated by a write, then read.
    write(ESR, 0);
    let _ = read(ESR);
}

/// The calling CPU's local APIC id.
pub fn id() -> u32 {
    read(ID) >> 24
}

/// Signals the end of the interrupt being handled (not for NMIs or spurious interrupts).
pub fn eoi() {
    write(EOI, 0);
}

/// Sends an IPI to the CPU whose local APIC id is `apic_id`. Waits (briefly) until the APIC
/// has accepted the previous one; does not wait for the target to handle it.
pub fn send(apic_id: u32, delivery: Delivery) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // The ICR is two registers: nothing on this CPU may write them in between (interrupts
        // are off; the NMI handler sends nothing).
        while read(ICR_LOW) & ICR_PENDING != 0 {
            core::hint::spin_loop();
        }
        write(ICR_HIGH, apic_id << 24);
        write(ICR_LOW, delivery.icr_low());
        while read(ICR_LOW) & ICR_PENDING != 0 {
            core::hint::spin_loop();
        }
    });
}
