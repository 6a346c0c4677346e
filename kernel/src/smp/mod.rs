//! Several CPUs: finding them, starting them, and what they share.
//!
//! ```text
//!   madt        which CPUs exist (ACPI MADT, via the `acpi` crate)        ─┐
//!   apic        this CPU's local APIC (xAPIC, MMIO mapped uncached)        │ init, on the
//!   trampoline  real-mode → long-mode code in a reserved page < 1 MiB      │ boot CPU
//!   stacks      each CPU's kernel and double-fault stacks, guard pages     │
//!   startup     INIT-SIPI-SIPI, one CPU at a time, with a time limit      ─┘
//!   percpu      GS-based per-CPU area: cpu_id(), the online set
//!   ipi         fixed-vector IPIs to one CPU / all others, EOI
//!   call        run_on_all(f) and the idle loop of the other CPUs
//!   shootdown   TLB shootdown by NMI, used by the memory layer's unmap path
//! ```
//!
//! After [`init`], every CPU the MADT lists runs (or was reported by its APIC id as failing to
//! start): [`cpu_id`] gives 0 on the boot CPU and 1, 2, … on the others; [`online_count`] how
//! many there are. The boot CPU goes on with the kernel; the others wait in their idle loop for
//! [`run_on_all`], and run with interrupts enabled. The boot CPU keeps interrupts disabled, as on
//! one CPU, until code enables them; the 8259 is remapped and masked at init, so enabling them lets
//! only IPIs in (and the PIT's, when a test starts it). TLB shootdowns need no enabled
//! interrupts (they are NMIs).
//!
//! # Memory layout
//!
//! The CPU area is PML4 slot 385 ([`CPU_AREA_START`], just above the heap's slot 384; the
//! bootloader's mappings stay below slot 384): its first page maps the local APIC's registers,
//! then each CPU index has a 1 MiB slot with its stacks (see [`stacks`]). The trampoline's page is
//! identity-mapped only while CPUs start.
//!
//! # Locks and interrupts with several CPUs
//!
//! Lock order: a CPU's heap front (interrupts off) → heap lock → memory lock → the shootdown
//! flag (held only while waiting for NMI acknowledgements, which nothing can block). kfence's
//! lock → memory lock. The serial port's lock is a leaf.
//! Every lock that an interrupt handler may want is taken with interrupts disabled, and every
//! wait that happens with interrupts disabled can still answer a TLB shootdown, because
//! shootdowns are NMIs: see [`shootdown`] for why that rules out the deadlock "CPU A holds the
//! heap lock and waits for CPU B's acknowledgement while B spins on the heap lock with interrupts
//! off". Fixed IPIs are never waited for without a limit: a heap drain waits for its drain IPIs
//! to be served at most `allocator::DRAIN_WAIT_MS`, holding no lock. The heap lock's watchdog
//! tells a dead lock (the holder is this CPU) from a busy one (another CPU holds it): see
//! `allocator::IrqSpinLock`.
//!
//! With `-smp 1` (or without ACPI tables), the kernel runs on the boot CPU alone, as before.

pub mod apic;
pub mod call;
pub mod ipi;
pub mod madt;
pub mod percpu;
pub mod shootdown;
pub mod stacks;
pub mod startup;
pub mod trampoline;

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::info::MemoryRegion;
use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

pub use call::{CallError, run_on_all};
pub use percpu::{CpuInfo, MAX_CPUS, cpu, cpu_id, online_count, online_mask};
pub use startup::{START_TIMEOUT_MS, StartError, start_cpu};

/// Start of the CPU area: PML4 slot 385 (see the module docs).
pub const CPU_AREA_START: u64 = 0xFFFF_C080_0000_0000;

/// The trampoline's frame (physical address; 0: none reserved).
static TRAMPOLINE_FRAME: AtomicU64 = AtomicU64::new(0);

/// Why [`init`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmpError {
    /// [`init`] ran before `memory::init`.
    NoMemory,
    /// The local APIC could not be set up.
    Apic(apic::ApicError),
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMemory => f.write_str("smp::init before memory::init"),
            Self::Apic(e) => write!(f, "{e}"),
        }
    }
}

/// Takes the trampoline's page out of the boot memory map (see [`trampoline::reserve`]).
/// Call before `memory::init`.
pub fn reserve_trampoline(regions: &mut [MemoryRegion]) {
    if let Some(frame) = trampoline::reserve(regions) {
        TRAMPOLINE_FRAME.store(frame.start_address().as_u64(), Ordering::Relaxed);
    }
}

/// Frames [`reserve_trampoline`] took out of the boot memory map (0 or 1): the frame allocator
/// has that many fewer than the map's usable frames.
pub fn reserved_frames() -> u64 {
    u64::from(trampoline_frame().is_some())
}

/// The frame [`reserve_trampoline`] took, if any.
pub(crate) fn trampoline_frame() -> Option<PhysFrame> {
    match TRAMPOLINE_FRAME.load(Ordering::Relaxed) {
        0 => None,
        addr => Some(PhysFrame::containing_address(PhysAddr::new(addr))),
    }
}

/// What [`init`] found and did, for the boot report.
#[derive(Debug, Clone, Copy)]
struct Startup {
    /// Why the CPU list could not be read (then only the boot CPU runs).
    madt: Option<madt::MadtError>,
    /// Processors of the MADT left out (beyond `MAX_CPUS` or not addressable in xAPIC mode).
    skipped: usize,
    failed: [(u32, Option<StartError>); MAX_CPUS],
    failed_len: usize,
}

static STARTUP: spin::Mutex<Startup> = spin::Mutex::new(Startup {
    madt: None,
    skipped: 0,
    failed: [(0, None); MAX_CPUS],
    failed_len: 0,
});

/// Brings up every CPU: masks the 8259, reads the MADT, maps and enables the local APIC, and
/// starts the other CPUs (each failure is recorded for [`summary`], and the others go on). Call
/// once, on the boot CPU, after the heap is up; its interrupt flag is left as it was.
///
/// # Errors
///
/// See [`SmpError`]. A missing MADT is not an error: the kernel runs on the boot CPU alone.
pub fn init(rsdp: Option<u64>) -> Result<(), SmpError> {
    crate::timer::mask_legacy_pic();
    // Before any other CPU can cache a translation: unmaps shoot down every online CPU's TLB.
    crate::memory::set_remote_flush(crate::memory::RemoteFlush {
        pages: shootdown::flush_pages,
        all: shootdown::flush_all,
    });
    let phys_offset = crate::memory::physical_memory_offset()
        .ok_or(SmpError::NoMemory)?
        .as_u64();
    let cpus = madt::cpus(rsdp, phys_offset);
    let lapic_phys = match &cpus {
        Ok(list) => list.lapic_phys,
        Err(_) => apic_base_from_msr(),
    };
    apic::map(lapic_phys).map_err(SmpError::Apic)?;
    apic::enable();
    percpu::set_bsp_apic_id(apic::id());
    startup::record_boot_cpu();
    match cpus {
        Ok(list) => {
            STARTUP.lock().skipped = list.skipped;
            startup::start_all(trampoline_frame(), list.apic_ids(), |apic_id, error| {
                let mut s = STARTUP.lock();
                let n = s.failed_len;
                if n < MAX_CPUS {
                    s.failed[n] = (apic_id, Some(error));
                    s.failed_len += 1;
                }
            });
        }
        Err(e) => STARTUP.lock().madt = Some(e),
    }
    Ok(())
}

/// The local APIC's physical address from the IA32_APIC_BASE MSR (when there is no MADT).
fn apic_base_from_msr() -> u64 {
    // SAFETY: IA32_APIC_BASE (0x1B) exists on every x86_64 CPU; reading it has no side effects.
    let value = unsafe { x86_64::registers::model_specific::Msr::new(0x1B).read() };
    value & 0x000F_FFFF_FFFF_F000
}

/// The boot report's CPU lines: `cpus: N online`, then one line per CPU that did not start.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    online: usize,
    startup: Startup,
}

/// What [`init`] achieved.
pub fn summary() -> Summary {
    Summary {
        online: online_count(),
        startup: *STARTUP.lock(),
    }
}

impl Summary {
    /// CPUs online.
    pub fn online(&self) -> usize {
        self.online
    }

    /// APIC ids of the CPUs that did not start, with the reason.
    pub fn failed(&self) -> impl Iterator<Item = (u32, StartError)> + '_ {
        self.startup.failed[..self.startup.failed_len]
            .iter()
            .filter_map(|&(id, e)| Some((id, e?)))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus: {} online", self.online)?;
        if let Some(e) = self.startup.madt {
            write!(f, " (other CPUs not looked for: {e})")?;
        }
        if self.startup.skipped > 0 {
            write!(
                f,
                ", {} more not supported (beyond {MAX_CPUS} or x2APIC-only)",
                self.startup.skipped
            )?;
        }
        for (apic_id, error) in self.failed() {
            write!(f, "\ncpu with APIC id {apic_id} did not start: {error}")?;
        }
        Ok(())
    }
}
