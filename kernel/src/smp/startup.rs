//! Starting the application processors: INIT-SIPI-SIPI through the local APIC, one CPU at a
//! time, and the first Rust code each of them runs.
//!
//! For each CPU of the MADT but the boot CPU, the boot CPU
//!
//! 1. maps its stacks (kernel stack and double-fault stack, each above a guard page), builds its
//!    GDT/TSS and per-CPU area, and offers them in the trampoline's start-up slot;
//! 2. sends INIT, waits 10 ms, sends STARTUP, waits 200 µs, sends STARTUP again and waits 200 µs
//!    (the sequence of the MP specification and Intel SDM vol. 3 §9.4; a CPU that started on the
//!    first STARTUP ignores the second), with the delays measured by the TSC calibrated against
//!    the PIT;
//! 3. waits up to a time limit for the CPU to report online. If it does not, the offer is
//!    withdrawn: a CPU that arrives later halts in the trampoline; the failure is recorded with the
//!    CPU's APIC id, and the kernel goes on with the others (the stacks and index are reused; if
//!    the CPU took its slot but never reported, they stay its own, and that index stays unused).
//!
//! The new CPU (`ap_entry`) sets up its control registers like the boot CPU's, enters its
//! per-CPU area (GS), loads its GDT/TSS and the shared IDT, enables its local APIC, marks itself
//! online and goes to the idle loop, where it runs what [`run_on_all`](super::run_on_all) gives it.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use x86_64::registers::control::{Cr0, Cr4};
use x86_64::structures::paging::PhysFrame;

use super::percpu::{self, MAX_CPUS, PerCpu};
use super::stacks::{self, StackError};
use super::trampoline::{Trampoline, TrampolineError};
use super::{apic, call};
use crate::cpu::clock::{self, Deadline};
use crate::gdt::CpuTables;

/// How long the boot CPU waits for a started CPU to report online, after the second STARTUP.
/// A CPU takes well under a millisecond on hardware and a few under QEMU; the rest is margin
/// for a loaded host.
pub const START_TIMEOUT_MS: u64 = 1000;
/// The INIT-to-STARTUP delay of the MP specification.
const INIT_DELAY_US: u64 = 10_000;
/// The delay after each STARTUP.
const SIPI_DELAY_US: u64 = 200;

/// Why a CPU was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// No frame below 1 MiB was free for the trampoline.
    NoTrampolineFrame,
    /// The trampoline could not be installed.
    Trampoline(TrampolineError),
    /// Its stacks could not be mapped.
    Stacks(StackError),
    /// The heap had no room for its per-CPU area or tables.
    OutOfMemory,
    /// [`MAX_CPUS`] CPUs are online already.
    TooManyCpus,
    /// It did not take its start-up slot within the time limit (it may not exist, or be broken).
    NoAnswer {
        /// The limit, in ms.
        ms: u64,
    },
    /// It took its slot but did not report online within the time limit.
    Silent {
        /// The limit, in ms.
        ms: u64,
    },
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoTrampolineFrame => f.write_str("no free frame below 1 MiB for the trampoline"),
            Self::Trampoline(e) => write!(f, "{e}"),
            Self::Stacks(e) => write!(f, "{e}"),
            Self::OutOfMemory => f.write_str("out of heap memory for its per-CPU data"),
            Self::TooManyCpus => write!(f, "more than {MAX_CPUS} CPUs"),
            Self::NoAnswer { ms } => write!(f, "no answer within {ms} ms"),
            Self::Silent { ms } => write!(f, "started but did not report within {ms} ms"),
        }
    }
}

/// The boot CPU's CR0 and CR4, which every other CPU copies.
static BSP_CR0: AtomicU64 = AtomicU64::new(0);
static BSP_CR4: AtomicU64 = AtomicU64::new(0);
/// Held while a CPU is being started (one at a time: there is one start-up slot).
static STARTING: AtomicBool = AtomicBool::new(false);
/// The index the next CPU to start gets. It moves on when a CPU took its slot (came online, or
/// went silent on its stacks); a CPU that never answered leaves it for the next.
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(1);

/// What a starting CPU receives (its address is the trampoline's argument).
struct Start {
    area: &'static PerCpu,
    tables: &'static CpuTables,
}

/// Starts the CPU with local APIC id `apic_id` and returns its index, waiting at most
/// `timeout_ms` for it to report online.
///
/// # Errors
///
/// See [`StartError`]; on error nothing of the attempt stays mapped or allocated, except that
/// a CPU that took its slot and went silent keeps its stacks (it may be running on them).
///
/// # Safety
///
/// `apic_id` must not be the id of a CPU that is running (INIT would reset it): only a CPU that
/// never started, or an id no CPU has.
pub unsafe fn start_cpu(apic_id: u32, timeout_ms: u64) -> Result<usize, StartError> {
    while STARTING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let result = (|| {
        let frame = super::trampoline_frame().ok_or(StartError::NoTrampolineFrame)?;
        // SAFETY: the frame was reserved for the trampoline, and STARTING keeps this the only
        // trampoline in use; `ap_entry` is the AP entry point.
        let mut tramp =
            unsafe { Trampoline::install(frame, ap_entry) }.map_err(StartError::Trampoline)?;
        // SAFETY: the caller vouches for `apic_id`.
        unsafe { start_one(&mut tramp, apic_id, timeout_ms) }
    })();
    STARTING.store(false, Ordering::Release);
    result
}

/// Starts every CPU of `apic_ids` except the caller's; `report` is told each failure.
pub(super) fn start_all(
    frame: Option<PhysFrame>,
    apic_ids: &[u32],
    mut report: impl FnMut(u32, StartError),
) {
    let me = apic::id();
    let mut others = apic_ids.iter().copied().filter(|&id| id != me).peekable();
    if others.peek().is_none() {
        return;
    }
    let Some(frame) = frame else {
        others.for_each(|id| report(id, StartError::NoTrampolineFrame));
        return;
    };
    // SAFETY: the frame was reserved for the trampoline; this runs once, in init, on the boot
    // CPU, before any other start; `ap_entry` is the AP entry point.
    let mut tramp = match unsafe { Trampoline::install(frame, ap_entry) } {
        Ok(t) => t,
        Err(e) => {
            others.for_each(|id| report(id, StartError::Trampoline(e)));
            return;
        }
    };
    for apic_id in others {
        // SAFETY: these are the MADT's CPUs other than this one, none started yet.
        if let Err(e) = unsafe { start_one(&mut tramp, apic_id, START_TIMEOUT_MS) } {
            report(apic_id, e);
        }
    }
}

/// Records the boot CPU's control registers for the others to copy.
pub(super) fn record_boot_cpu() {
    BSP_CR0.store(Cr0::read_raw(), Ordering::Relaxed);
    BSP_CR4.store(Cr4::read_raw(), Ordering::Relaxed);
}

/// One INIT-SIPI-SIPI start (see the module docs).
///
/// # Safety
///
/// As for [`start_cpu`].
unsafe fn start_one(
    tramp: &mut Trampoline,
    apic_id: u32,
    timeout_ms: u64,
) -> Result<usize, StartError> {
    let index = NEXT_INDEX.load(Ordering::Relaxed);
    if index >= MAX_CPUS {
        return Err(StartError::TooManyCpus);
    }
    let cpu_stacks = stacks::map(index).map_err(StartError::Stacks)?;
    let Some((area, tables, start)) = per_cpu_data(index, apic_id, cpu_stacks) else {
        // SAFETY: mapped just above, used by no CPU.
        unsafe { stacks::unmap(cpu_stacks) };
        return Err(StartError::OutOfMemory);
    };
    tramp.offer(cpu_stacks.stack.1, core::ptr::from_ref(start) as usize);

    apic::send(apic_id, apic::Delivery::InitAssert);
    apic::send(apic_id, apic::Delivery::InitDeassert);
    clock::delay_us(INIT_DELAY_US);
    for _ in 0..2 {
        apic::send(apic_id, apic::Delivery::Startup(tramp.vector()));
        clock::delay_us(SIPI_DELAY_US);
    }
    let online = |limit: &Deadline| {
        while percpu::cpu(index).is_none() {
            if limit.passed() {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    };
    if online(&Deadline::after_us(timeout_ms * 1000)) {
        NEXT_INDEX.store(index + 1, Ordering::Relaxed);
        return Ok(index);
    }
    if tramp.withdraw() {
        // It never took the slot: nothing of this attempt is in use.
        // SAFETY: no CPU has seen the data or the stacks (the slot was withdrawn before anyone
        // took it).
        unsafe {
            free_per_cpu_data(area, tables, start);
            stacks::unmap(cpu_stacks);
        }
        return Err(StartError::NoAnswer { ms: timeout_ms });
    }
    // It took the slot just now: its index and stacks are its own. Give it as long again.
    NEXT_INDEX.store(index + 1, Ordering::Relaxed);
    if online(&Deadline::after_us(timeout_ms * 1000)) {
        Ok(index)
    } else {
        Err(StartError::Silent { ms: 2 * timeout_ms })
    }
}

/// The per-CPU area, GDT/TSS and start data of CPU `index`, leaked on the heap (`None`, with
/// nothing allocated, if the heap is exhausted).
fn per_cpu_data(
    index: usize,
    apic_id: u32,
    cpu_stacks: stacks::CpuStacks,
) -> Option<(&'static PerCpu, &'static CpuTables, &'static Start)> {
    let area: &'static PerCpu = crate::leak::try_leak(PerCpu::new(
        index,
        apic_id,
        cpu_stacks.stack,
        cpu_stacks.fault_stack,
    ))?;
    let Some(tables) = CpuTables::leak(cpu_stacks.fault_stack.1) else {
        // SAFETY: leaked just above, seen by nobody.
        drop(unsafe { alloc::boxed::Box::from_raw(core::ptr::from_ref(area).cast_mut()) });
        return None;
    };
    match crate::leak::try_leak(Start { area, tables }) {
        Some(start) => Some((area, tables, start)),
        None => {
            // SAFETY: leaked just above, seen by nobody.
            unsafe {
                drop(alloc::boxed::Box::from_raw(
                    core::ptr::from_ref(area).cast_mut(),
                ));
                CpuTables::free(tables);
            }
            None
        }
    }
}

/// Frees what [`per_cpu_data`] leaked.
///
/// # Safety
///
/// No CPU has seen or will see any of it.
unsafe fn free_per_cpu_data(
    area: &'static PerCpu,
    tables: &'static CpuTables,
    start: &'static Start,
) {
    // SAFETY: all three are leaked heap blocks of their types' layouts, unused (caller's
    // contract).
    unsafe {
        drop(alloc::boxed::Box::from_raw(
            core::ptr::from_ref(start).cast_mut(),
        ));
        drop(alloc::boxed::Box::from_raw(
            core::ptr::from_ref(area).cast_mut(),
        ));
        CpuTables::free(tables);
    }
}

/// The first Rust code of an application processor, entered from the trampoline on its own
/// stack with interrupts disabled; `arg` is the address of its [`Start`].
extern "sysv64" fn ap_entry(arg: u64) -> ! {
    // SAFETY: the trampoline passes the `Start` that `start_one` leaked for the slot this CPU
    // took.
    let start: &'static Start = unsafe { &*(arg as *const Start) };
    if apic::id() != percpu::apic_id_of(start.area) {
        // A CPU that answered a withdrawn start so late that it took the slot meant for the next
        // CPU: the area describes another CPU. Stay off; the kernel reports that start as silent.
        loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        }
    }
    // SAFETY: the boot CPU's values, valid on this CPU too (same model under QEMU and on any
    // machine that starts all CPUs alike); paging and long mode are already on, and the bits
    // the trampoline set (PE, PG, PAE) are set in these too.
    unsafe {
        Cr0::write_raw(BSP_CR0.load(Ordering::Relaxed));
        Cr4::write_raw(BSP_CR4.load(Ordering::Relaxed));
    }
    // SAFETY: the area lives for good, describes this CPU, and its index is used by no other.
    unsafe { percpu::enter(start.area) };
    start.tables.load();
    crate::interrupts::init();
    apic::enable();
    // Read before going online, so that no `run_on_all` counting this CPU can be missed.
    let seen = call::seq();
    percpu::mark_online(start.area);
    call::idle_loop(seen)
}
