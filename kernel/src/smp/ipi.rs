//! Inter-processor interrupts: fixed-vector IPIs to one CPU or to all others, their handlers and
//! end-of-interrupt.
//!
//! Three vectors are the kernel's own:
//!
//! * [`WAKE_VECTOR`] wakes a halted CPU so it looks at its work (used by
//!   [`run_on_all`](super::run_on_all)); the handler only acknowledges.
//! * [`CALL_VECTOR`] runs the hook set with [`set_hook`] in interrupt context on the receiving
//!   CPU (a test uses it to allocate from an interrupt handler on every CPU), and counts.
//! * [`DRAIN_VECTOR`] asks the receiving CPU to flush its heap front (a drain of the per-CPU
//!   heap: `allocator::serve_drain`).
//!
//! A CPU takes a fixed IPI only with interrupts enabled; until then the IPI stays pending in its
//! APIC. Its APIC has one pending bit per vector, so IPIs of one vector that arrive before the
//! first is taken merge into one: count events elsewhere, not by IPIs. Sending never waits for the target to handle it, so it cannot deadlock. (TLB shootdown
//! uses NMIs instead, see [`shootdown`](super::shootdown).) "All but self" is sent to each other
//! *online* CPU by its APIC id, not with the APIC's broadcast shorthand, which would also reach
//! a CPU that failed to start (one that may be halted in the trampoline with no IDT).

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};

use super::apic;
use super::percpu::{self, MAX_CPUS};

/// Vector of the wake-up IPI.
pub const WAKE_VECTOR: u8 = 0xF0;
/// Vector of the hook-running IPI.
pub const CALL_VECTOR: u8 = 0xF1;
/// Vector of the heap-drain IPI: the receiving CPU flushes its heap front if a drain asked
/// (`allocator::serve_drain`).
pub const DRAIN_VECTOR: u8 = 0xF2;

/// The hook [`CALL_VECTOR`] runs (null: none).
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// [`CALL_VECTOR`] interrupts handled, per CPU index.
static RECEIVED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Installs the IPI handlers (and the APIC's spurious-interrupt handler) in `idt`.
pub(crate) fn install(idt: &mut InterruptDescriptorTable) {
    idt[WAKE_VECTOR].set_handler_fn(wake_handler);
    idt[CALL_VECTOR].set_handler_fn(call_handler);
    idt[DRAIN_VECTOR].set_handler_fn(drain_handler);
    idt[apic::SPURIOUS_VECTOR].set_handler_fn(spurious_handler);
}

/// Why an IPI was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiError {
    /// No online CPU has this index.
    NoSuchCpu(usize),
}

impl core::fmt::Display for IpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchCpu(i) => write!(f, "no CPU {i} is online"),
        }
    }
}

/// Sends an IPI with `vector` (32..=255, with a handler in the IDT) to CPU `cpu` (which may be
/// the caller).
///
/// # Errors
///
/// [`IpiError::NoSuchCpu`] if `cpu` is not online.
pub fn send(cpu: usize, vector: u8) -> Result<(), IpiError> {
    let apic_id = percpu::apic_id(cpu).ok_or(IpiError::NoSuchCpu(cpu))?;
    apic::send(apic_id, apic::Delivery::Fixed(vector));
    Ok(())
}

/// Sends an IPI with `vector` to every online CPU but the caller.
pub fn send_all_but_self(vector: u8) {
    let me = percpu::cpu_id();
    for cpu in (0..MAX_CPUS).filter(|&c| c != me) {
        if let Some(apic_id) = percpu::apic_id(cpu) {
            apic::send(apic_id, apic::Delivery::Fixed(vector));
        }
    }
}

/// Sets the function [`CALL_VECTOR`] runs on the receiving CPU, in interrupt context (`None`
/// removes it). The hook must be safe to run in an interrupt handler: it may allocate (the heap
/// lock disables interrupts, so it never finds it held by the code it interrupted).
pub fn set_hook(hook: Option<fn()>) {
    let ptr = hook.map_or(core::ptr::null_mut(), |f| f as *mut ());
    HOOK.store(ptr, Ordering::SeqCst);
}

/// [`CALL_VECTOR`] interrupts CPU `cpu` has handled.
pub fn received(cpu: usize) -> u64 {
    RECEIVED.get(cpu).map_or(0, |c| c.load(Ordering::SeqCst))
}

extern "x86-interrupt" fn wake_handler(_frame: InterruptStackFrame) {
    apic::eoi();
}

extern "x86-interrupt" fn call_handler(_frame: InterruptStackFrame) {
    let hook = HOOK.load(Ordering::SeqCst);
    if !hook.is_null() {
        // SAFETY: HOOK only ever holds null or a `fn()` stored by `set_hook`.
        let hook: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
        hook();
    }
    RECEIVED[percpu::cpu_id()].fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

extern "x86-interrupt" fn drain_handler(_frame: InterruptStackFrame) {
    // Interrupts are off here, and this CPU was outside every heap call (heap calls keep them
    // off): its front is not in use.
    crate::allocator::serve_drain();
    apic::eoi();
}

/// The APIC's spurious interrupt: no EOI (the APIC did not set an in-service bit for it).
extern "x86-interrupt" fn spurious_handler(_frame: InterruptStackFrame) {}
