//! The panic report: one for every kernel of this crate — the main kernel, the test kernels
//! (through [`testing::panic_handler`](crate::testing::panic_handler)), the soak and the
//! benchmark kernel. Each `#[panic_handler]` calls [`report`] and then decides how to leave QEMU.
//!
//! A panic can come from anywhere: from inside the memory layer with its lock held (a frame or
//! buddy double free, the heap window's unmap assertion, a fault while writing a free frame's
//! link), from inside the heap with its lock held, from a fault handler, or while printing. On
//! this kernel's CPU nothing will ever release a lock the panicking code held, so the report
//! **never waits for a lock**:
//!
//! * the memory and heap statistics are read with try-locks; when a lock is held, the report
//!   says so instead of printing them;
//! * serial output falls back to the bare UART when its lock is held (see
//!   [`serial`](crate::serial));
//! * it allocates nothing (the heap may be what failed).
//!
//! A panic inside the report itself (a second panic while the first is being reported) prints one
//! line and leaves QEMU with failure at once, rather than recursing.
//!
//! ```text
//! KERNEL PANIC: panicked at kernel/src/memory/frame.rs:LINE:COLUMN:
//! frame allocator: double free of frame 0x2a3000 (it is already free)
//! last failed allocation: 16777216 bytes aligned to 8
//! heap: statistics not shown: the heap lock is held (the panic may have happened inside the heap), or there is no heap yet
//! memory: statistics not shown: the memory lock is held (the panic happened inside the memory layer)
//! ```

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::qemu::{QemuExitCode, exit_qemu};
use crate::{allocator, memory, serial_print, serial_println};

/// How much [`report`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The panic (location and message), the last refused allocation, the heap's statistics
    /// after a refused allocation, and the memory layer's counters.
    Full,
    /// One line with the memory layer's and the heap's page counts, or the locks that kept them
    /// from being read: for panics that are the expected outcome of a test.
    Brief,
}

/// Set by the first [`report`]: a second one is a panic inside the panic path.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Prints the panic report (see the module docs) without ever waiting for a lock.
///
/// If a report is already under way — the report itself panicked — prints the new panic on one
/// line and leaves QEMU with [`QemuExitCode::Failed`].
pub fn report(info: &PanicInfo<'_>, detail: Detail) {
    if REPORTING.swap(true, Ordering::AcqRel) {
        serial_println!("KERNEL PANIC while reporting a panic: {info}");
        exit_qemu(QemuExitCode::Failed);
    }
    let memory = memory::try_stats();
    match detail {
        Detail::Full => {
            serial_println!("KERNEL PANIC: {info}");
            if let Some(layout) = allocator::last_failure() {
                serial_println!(
                    "last failed allocation: {} bytes aligned to {}",
                    layout.size(),
                    layout.align()
                );
                // The heap's table is long: it is worth printing when the heap refused something.
                match allocator::try_stats() {
                    Some(stats) => serial_println!("{stats}"),
                    None => serial_println!("heap: statistics not shown: {HEAP_HELD}"),
                }
            }
            match memory {
                Some(stats) => serial_println!("{stats}"),
                None => serial_println!("memory: statistics not shown: {MEMORY_HELD}"),
            }
        }
        Detail::Brief => {
            match memory {
                Some(m) => serial_print!(
                    "panic report: {} of {} frames free, {} page-table frames; ",
                    m.frames_free,
                    m.frames_total,
                    m.page_table_frames
                ),
                None => serial_print!("panic report: memory not shown: {MEMORY_HELD}; "),
            }
            match allocator::try_stats() {
                Some(heap) => serial_println!("heap: {} pages", heap.pages.total),
                None => serial_println!("heap not shown: {HEAP_HELD}"),
            }
        }
    }
}

/// Why the heap's statistics are missing.
const HEAP_HELD: &str = "the heap lock is held (the panic may have happened inside the heap), \
                         or there is no heap yet";

/// Why the memory layer's statistics are missing.
const MEMORY_HELD: &str = "the memory lock is held (the panic happened inside the memory layer)";
