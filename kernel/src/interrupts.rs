//! The IDT: CPU exception handlers that turn faults into readable reports.
//!
//! Every fatal exception prints what happened (for a page fault: the address from CR2, the error
//! code and the instruction pointer) and then panics, so the panic path — which in test kernels
//! decides whether the fault was expected — sees it like any other failure. A page fault at a
//! probing read ([`cpu::probe`](crate::cpu::probe)) is not fatal: it resumes at the probe's
//! fixup.
//!
//! One IDT serves every CPU (each loads it: [`init`]). Besides the exceptions it holds the NMI
//! handler (TLB shootdown requests, see `smp::shootdown`), the IPI vectors (`smp::ipi`), the
//! local APIC's spurious vector, and the 8259's vectors (`timer`).

use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use crate::gdt;

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.breakpoint.set_handler_fn(breakpoint_handler);
    idt.page_fault.set_handler_fn(page_fault_handler);
    idt.general_protection_fault
        .set_handler_fn(general_protection_handler);
    idt.invalid_opcode.set_handler_fn(invalid_opcode_handler);
    idt.non_maskable_interrupt.set_handler_fn(nmi_handler);
    // SAFETY: the IST index names the double-fault stack that `gdt::init` installs in the TSS
    // before interrupts are enabled or any fault can occur; no other handler uses that stack.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault_handler)
            .set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    crate::timer::install(&mut idt);
    crate::smp::ipi::install(&mut idt);
    idt
});

/// Loads the IDT on the calling CPU. Call after [`gdt::init`] (or, on another CPU, after loading
/// its own GDT and TSS).
pub fn init() {
    IDT.load();
}

extern "x86-interrupt" fn breakpoint_handler(frame: InterruptStackFrame) {
    crate::serial_println!(
        "EXCEPTION: BREAKPOINT at {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn page_fault_handler(
    mut frame: InterruptStackFrame,
    code: PageFaultErrorCode,
) {
    if let Some(landing) = crate::cpu::probe::fixup(frame.instruction_pointer.as_u64()) {
        // SAFETY: the probe's read is one instruction of `cpu::probe`'s assembly function, and
        // its fixup is a landing pad of the same function that expects exactly this state
        // (same stack, same registers but the result it sets); only RIP changes.
        unsafe {
            frame
                .as_mut()
                .update(|f| f.instruction_pointer = x86_64::VirtAddr::new(landing));
        }
        return;
    }
    let addr = Cr2::read_raw();
    if let Some((what, obj, size)) = crate::kfence::report_fault(addr as usize) {
        panic!(
            "kfence: {what} the {size}-byte allocation at {obj:#x}: access at {addr:#x} \
             (error code {:#x}) at rip {:#x}",
            code.bits(),
            frame.instruction_pointer.as_u64()
        );
    }
    panic!(
        "EXCEPTION: PAGE FAULT accessing {addr:#x} (error code {:#x}: {code:?}) at rip {:#x}",
        code.bits(),
        frame.instruction_pointer.as_u64()
    );
}

/// NMIs carry TLB shootdown requests. Any other NMI (a hardware error, a watchdog) is counted
/// and otherwise ignored: this handler must not take locks or print, since it can interrupt
/// any code, including code holding the serial port's lock.
extern "x86-interrupt" fn nmi_handler(_frame: InterruptStackFrame) {
    crate::smp::shootdown::handle_nmi();
}

extern "x86-interrupt" fn general_protection_handler(frame: InterruptStackFrame, code: u64) {
    panic!(
        "EXCEPTION: GENERAL PROTECTION FAULT (error code {code:#x}) at rip {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn invalid_opcode_handler(frame: InterruptStackFrame) {
    panic!(
        "EXCEPTION: INVALID OPCODE at rip {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn double_fault_handler(frame: InterruptStackFrame, _code: u64) -> ! {
    panic!(
        "EXCEPTION: DOUBLE FAULT at rip {:#x}, rsp {:#x} (kernel stack overflow?)",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64()
    );
}
