//! The periodic timer: the legacy 8259 PIC and the 8254 PIT, off until [`start`] is called.
//!
//! The boot CPU runs with interrupts disabled by default. [`mask_legacy_pic`] (run by `smp::init`)
//! moves the 8259's vectors past the CPU exceptions and masks every line, so that code may enable
//! interrupts (the other CPUs run with them enabled, to take IPIs) without the 8259's BIOS vectors
//! landing on exception handlers. Tests that need interrupt pressure (for example an interrupt
//! handler that allocates while the main loop allocates too) call [`start`] with a hook that runs
//! on every tick; the PIT's interrupts reach the boot CPU only.

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use x86_64::instructions::port::Port;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};

/// Vector of IRQ 0 after remapping the master PIC past the 32 CPU exception vectors.
const TIMER_VECTOR: u8 = 32;
const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xA0;
const PIC2_DATA: u16 = 0xA1;
/// End-of-interrupt command for the 8259.
const PIC_EOI: u8 = 0x20;
/// Input clock of the 8254 PIT in Hz.
const PIT_HZ: u32 = 1_193_182;

static TICKS: AtomicU64 = AtomicU64::new(0);
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the timer's interrupt handler in `idt` (done while building the IDT), and handlers
/// for the 8259's spurious interrupts (IRQ 7 and 15, which a masked PIC can still raise).
pub(crate) fn install(idt: &mut InterruptDescriptorTable) {
    idt[TIMER_VECTOR].set_handler_fn(timer_handler);
    idt[TIMER_VECTOR + 7].set_handler_fn(spurious_master_handler);
    idt[TIMER_VECTOR + 15].set_handler_fn(spurious_slave_handler);
}

/// Remaps the two 8259s to vectors 32..=47 (IRQ `n` → `32 + n`) with the lines `master_mask` and
/// `slave_mask` masked (a set bit masks a line).
fn remap_pic(master_mask: u8, slave_mask: u8) {
    // SAFETY: these are the standard PC ports of the 8259 PICs, which nothing else in the kernel
    // programs. The sequence is the documented ICW1..ICW4 initialisation (remapping IRQ 0-15 to
    // vectors 32-47, away from CPU exceptions), then the masks.
    unsafe {
        let mut cmd1 = Port::<u8>::new(PIC1_CMD);
        let mut data1 = Port::<u8>::new(PIC1_DATA);
        let mut cmd2 = Port::<u8>::new(PIC2_CMD);
        let mut data2 = Port::<u8>::new(PIC2_DATA);
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(TIMER_VECTOR);
        data2.write(TIMER_VECTOR + 8);
        data1.write(4);
        data2.write(2);
        data1.write(0x01);
        data2.write(0x01);
        data1.write(master_mask);
        data2.write(slave_mask);
    }
}

/// Remaps the 8259s past the CPU exceptions and masks all their lines, so that enabling
/// interrupts lets only the local APIC's interrupts (IPIs) in.
pub fn mask_legacy_pic() {
    remap_pic(0xFF, 0xFF);
}

/// Number of timer interrupts handled since [`start`].
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Starts the PIT at about `hz` interrupts per second, calling `hook` from the interrupt handler on
/// every tick, and enables interrupts.
pub fn start(hz: u32, hook: fn()) {
    HOOK.store(hook as *mut (), Ordering::SeqCst);
    let divisor = (PIT_HZ / hz.max(19)).min(u32::from(u16::MAX)) as u16;
    // Every IRQ masked but the timer.
    remap_pic(0xFE, 0xFF);
    // SAFETY: the standard ports of the 8254 PIT, which nothing else in the kernel programs
    // (channel 2, which `cpu::clock` calibrates with, is separate): channel 0 in rate-generator
    // mode.
    unsafe {
        Port::<u8>::new(0x43).write(0x34);
        let mut ch0 = Port::<u8>::new(0x40);
        ch0.write((divisor & 0xFF) as u8);
        ch0.write((divisor >> 8) as u8);
    }
    x86_64::instructions::interrupts::enable();
}

/// Stops the timer: masks IRQ 0 and disables interrupts.
pub fn stop() {
    x86_64::instructions::interrupts::disable();
    // SAFETY: writing the master PIC's mask register only masks IRQ lines.
    unsafe { Port::<u8>::new(PIC1_DATA).write(0xFF) };
    HOOK.store(core::ptr::null_mut(), Ordering::SeqCst);
}

/// A spurious IRQ 7 from the master 8259: no EOI (nothing is in service).
extern "x86-interrupt" fn spurious_master_handler(_frame: InterruptStackFrame) {}

/// A spurious IRQ 15 from the slave 8259: EOI to the master only (its cascade line was in
/// service), none to the slave.
extern "x86-interrupt" fn spurious_slave_handler(_frame: InterruptStackFrame) {
    // SAFETY: acknowledging the cascade IRQ at the master PIC.
    unsafe { Port::<u8>::new(PIC1_CMD).write(PIC_EOI) };
}

extern "x86-interrupt" fn timer_handler(_frame: InterruptStackFrame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    let hook = HOOK.load(Ordering::SeqCst);
    if !hook.is_null() {
        // SAFETY: HOOK only ever holds null or a `fn()` stored by `start`.
        let hook: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
        hook();
    }
    // SAFETY: acknowledging IRQ 0 at the master PIC, which raised this interrupt.
    unsafe { Port::<u8>::new(PIC1_CMD).write(PIC_EOI) };
}
