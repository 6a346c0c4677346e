//! The GDT and TSS: a kernel code segment and a separate, known-good stack for double faults.
//!
//! A kernel stack overflow runs into the guard page the bootloader leaves below the stack. The CPU
//! then cannot push the page-fault frame, which escalates to a double fault; the double-fault entry
//! switches to the IST stack below, so the handler runs and reports instead of triple-faulting.

use spin::Lazy;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

/// Size of the double-fault stack: the handler formats and prints a report, and the panic path
/// it calls needs a few KiB more.
const DOUBLE_FAULT_STACK_SIZE: usize = 32 * 1024;

/// The double-fault stack's memory; only its address is used (by the CPU, through the TSS).
#[repr(align(16))]
#[allow(dead_code)]
struct Stack([u8; DOUBLE_FAULT_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_SIZE]);

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    let start = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
    // Stacks grow down: the IST entry is the stack's top.
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] =
        start + DOUBLE_FAULT_STACK_SIZE as u64;
    tss
});

struct Gdt {
    table: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static GDT: Lazy<Gdt> = Lazy::new(|| {
    let mut table = GlobalDescriptorTable::new();
    let code = table.append(Descriptor::kernel_code_segment());
    let data = table.append(Descriptor::kernel_data_segment());
    let tss = table.append(Descriptor::tss_segment(&TSS));
    Gdt {
        table,
        code,
        data,
        tss,
    }
});

/// Loads the GDT, reloads the segment registers and loads the TSS.
pub fn init() {
    GDT.table.load();
    // SAFETY: the selectors come from the GDT just loaded, which lives in a static for the rest of
    // the kernel's life; the code selector is a 64-bit kernel code segment, the data selector a
    // kernel data segment, and the TSS selector describes the static TSS above.
    unsafe {
        CS::set_reg(GDT.code);
        SS::set_reg(GDT.data);
        DS::set_reg(GDT.data);
        ES::set_reg(GDT.data);
        load_tss(GDT.tss);
    }
}
