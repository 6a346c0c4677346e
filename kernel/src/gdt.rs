//! The GDT and TSS: a kernel code segment and a separate, known-good stack for double faults.
//!
//! A kernel stack overflow runs into the guard page the bootloader leaves below the stack. The CPU
//! then cannot push the page-fault frame, which escalates to a double fault; the double-fault entry
//! switches to the IST stack below, so the handler runs and reports instead of triple-faulting.
//!
//! Every CPU has its own GDT and TSS (a TSS is marked busy when loaded, and each CPU needs its
//! own double-fault stack). The boot CPU's are statics, loaded by [`init`] before the heap exists;
//! each other CPU's are allocated by [`CpuTables::leak`] on the heap and live for good, with the
//! double-fault stack that `smp::stacks` mapped for it. All use the same selectors and the same
//! IST index, so the one IDT serves every CPU.

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

/// Loads the boot CPU's GDT, reloads the segment registers and loads its TSS.
pub fn init() {
    load(&GDT);
}

/// The GDT and TSS of one application processor.
pub struct CpuTables {
    gdt: Gdt,
    tss: &'static TaskStateSegment,
}

impl core::fmt::Debug for CpuTables {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuTables").finish_non_exhaustive()
    }
}

impl CpuTables {
    /// Builds a GDT and TSS for an application processor, with `fault_stack_top` as its
    /// double-fault stack, on the heap. They are leaked: a CPU keeps them for good. Built by
    /// the CPU that starts it, so that the new CPU allocates nothing before its IDT is loaded.
    /// `None` if the heap is exhausted (nothing stays allocated then).
    pub fn leak(fault_stack_top: u64) -> Option<&'static Self> {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = VirtAddr::new(fault_stack_top);
        let tss: &'static TaskStateSegment = crate::leak::try_leak(tss)?;
        let mut table = GlobalDescriptorTable::new();
        let code = table.append(Descriptor::kernel_code_segment());
        let data = table.append(Descriptor::kernel_data_segment());
        let tss_selector = table.append(Descriptor::tss_segment(tss));
        let tables = crate::leak::try_leak(Self {
            gdt: Gdt {
                table,
                code,
                data,
                tss: tss_selector,
            },
            tss,
        });
        if tables.is_none() {
            // SAFETY: leaked just above (a heap block of the TSS's layout), referred to by
            // nothing that lives on.
            drop(unsafe { alloc::boxed::Box::from_raw(core::ptr::from_ref(tss).cast_mut()) });
        }
        tables.map(|t| &*t)
    }

    /// Loads these tables on the calling CPU (an application processor, once).
    pub fn load(&'static self) {
        load(&self.gdt);
    }

    /// Frees tables made by [`leak`](Self::leak) that no CPU ever loaded.
    ///
    /// # Safety
    ///
    /// `tables` came from `leak`, no CPU has loaded them or will, and nothing else refers to
    /// them.
    pub unsafe fn free(tables: &'static Self) {
        let tables = core::ptr::from_ref(tables).cast_mut();
        // SAFETY: both were leaked boxes (caller's contract), unused by any CPU.
        unsafe {
            let tss = core::ptr::from_ref((*tables).tss).cast_mut();
            drop(alloc::boxed::Box::from_raw(tables));
            drop(alloc::boxed::Box::from_raw(tss));
        }
    }
}

fn load(gdt: &'static Gdt) {
    gdt.table.load();
    // SAFETY: the selectors come from the GDT just loaded, which lives for the rest of the
    // kernel's life (a static or leaked); the code selector is a 64-bit kernel code segment, the
    // data selector a kernel data segment, and the TSS selector describes this CPU's own TSS,
    // loaded by no other CPU.
    unsafe {
        CS::set_reg(gdt.code);
        SS::set_reg(gdt.data);
        DS::set_reg(gdt.data);
        ES::set_reg(gdt.data);
        load_tss(gdt.tss);
    }
}
