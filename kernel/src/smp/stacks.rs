//! Stacks of the application processors, each with an unmapped guard page below it, mapped in the
//! CPU area through the memory layer (`memory::map` with frames from `memory::allocate_frame`).
//!
//! ```text
//!   CPU_AREA_START + STACKS_OFFSET + index * SLOT_SIZE:
//!   ┌───────┬──────────────────────┬───────┬──────────────────────────────┬─ … unmapped
//!   │ guard │ double-fault stack   │ guard │ kernel stack                 │
//!   │ 4 KiB │ FAULT_STACK_SIZE     │ 4 KiB │ STACK_SIZE                   │
//!   └───────┴──────────────────────┴───────┴──────────────────────────────┴─
//! ```
//!
//! A kernel-stack overflow runs into the guard below it and faults; the fault cannot be pushed on
//! the overflowed stack, so the CPU raises a double fault, which switches to the double-fault
//! stack (IST) — whose own guard stops a runaway handler. The boot CPU keeps the stack the
//! bootloader gave it (with the bootloader's guard page) and the static double-fault stack of
//! [`gdt`](crate::gdt).

use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

use crate::memory::{self, MapError};

/// Offset of the first stack slot in the CPU area (the area's first page holds the local
/// APIC's registers).
const STACKS_OFFSET: u64 = 1 << 20;
/// Bytes of address space per CPU index.
const SLOT_SIZE: u64 = 1 << 20;
/// Size of each kernel stack: as large as the boot CPU's (`BOOTLOADER_CONFIG.kernel_stack_size`),
/// since the same code (deep `BTreeMap` work, tests) may run on any CPU.
pub const STACK_SIZE: u64 = 256 * 1024;
/// Size of each double-fault stack (the handler formats a report and panics; see `gdt`).
pub const FAULT_STACK_SIZE: u64 = 32 * 1024;
const PAGE: u64 = 4096;

const _: () = assert!(2 * PAGE + FAULT_STACK_SIZE + STACK_SIZE <= SLOT_SIZE);

/// The two stacks of one CPU, as `(lowest address, top)` ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStacks {
    /// The kernel stack.
    pub stack: (u64, u64),
    /// The double-fault (IST) stack.
    pub fault_stack: (u64, u64),
}

/// Why a CPU's stacks could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackError {
    /// No free frame for a stack page or a page table.
    OutOfMemory,
    /// The mapper refused a page (something else is mapped in the CPU area).
    Map(MapError),
}

impl core::fmt::Display for StackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory => f.write_str("out of memory for a CPU stack"),
            Self::Map(e) => write!(f, "CPU stack could not be mapped: {e}"),
        }
    }
}

/// The stacks of CPU `index` (mapped or not).
pub fn layout(index: usize) -> CpuStacks {
    let slot = super::CPU_AREA_START + STACKS_OFFSET + index as u64 * SLOT_SIZE;
    let fault_low = slot + PAGE;
    let fault_top = fault_low + FAULT_STACK_SIZE;
    let stack_low = fault_top + PAGE;
    CpuStacks {
        stack: (stack_low, stack_low + STACK_SIZE),
        fault_stack: (fault_low, fault_top),
    }
}

/// Maps the stacks of CPU `index` (fresh frames, writable, not executable), leaving the guards
/// unmapped. On error nothing stays mapped.
///
/// # Errors
///
/// See [`StackError`].
pub fn map(index: usize) -> Result<CpuStacks, StackError> {
    let stacks = layout(index);
    for (n, range) in [stacks.fault_stack, stacks.stack].into_iter().enumerate() {
        if let Err(e) = map_range(range) {
            if n == 1 {
                unmap_range(stacks.fault_stack);
            }
            return Err(e);
        }
    }
    Ok(stacks)
}

/// Unmaps the stacks of a CPU that never ran on them and frees their frames.
///
/// # Safety
///
/// No CPU may be using (or start using) these stacks.
pub unsafe fn unmap(stacks: CpuStacks) {
    unmap_range(stacks.stack);
    unmap_range(stacks.fault_stack);
}

fn pages(range: (u64, u64)) -> impl Iterator<Item = Page> {
    (range.0..range.1)
        .step_by(PAGE as usize)
        .map(|a| Page::containing_address(VirtAddr::new(a)))
}

fn map_range(range: (u64, u64)) -> Result<(), StackError> {
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    for (done, page) in pages(range).enumerate() {
        let result = match memory::allocate_frame() {
            None => Err(StackError::OutOfMemory),
            // SAFETY: the frame is fresh from the frame allocator, and the page belongs to this
            // CPU's stack slot, which nothing else maps or uses.
            Some(frame) => unsafe { memory::map(page, frame, flags) }.map_err(|e| {
                // SAFETY: the frame was not mapped; it is still ours.
                unsafe { memory::deallocate_frame(frame) };
                match e {
                    MapError::OutOfFrames => StackError::OutOfMemory,
                    e => StackError::Map(e),
                }
            }),
        };
        if let Err(e) = result {
            unmap_range((range.0, range.0 + done as u64 * PAGE));
            return Err(e);
        }
    }
    Ok(())
}

fn unmap_range(range: (u64, u64)) {
    for page in pages(range) {
        // SAFETY: these are stack pages mapped by `map_range` that no CPU uses (callers'
        // contracts); their frames came from `allocate_frame`.
        if let Ok(frame) = unsafe { memory::unmap(page) } {
            // SAFETY: as above; the page is unmapped (and shot down) now.
            unsafe { memory::deallocate_frame(frame) };
        }
    }
}
