//! The kernel's `#[global_allocator]`: the `kheap` heap over the heap window's page source.
//!
//! [`HEAP`] is a [`kheap::LockedHeap`] whose lock ([`IrqSpinLock`]) disables interrupts while it is
//! held, so an interrupt handler that allocates can never spin on a lock held by the code it
//! interrupted. Lock order: this heap lock, then the memory layer's lock (taken inside
//! [`KernelPageSource`]); the memory layer never allocates.
//!
//! Every Nth allocation can be placed on a guarded page instead ([`kfence`], off until
//! `kfence::enable`), so overflows, underflows and use-after-free of sampled objects fault at once.
//!
//! Allocation failures become null at the `GlobalAlloc` boundary; the last failed layout is kept
//! so the panic path (`alloc`'s "memory allocation of N bytes failed") can print it together with
//! the heap statistics.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kheap::{Checked, HeapStats, LockedHeap, RawLock};
use x86_64::instructions::interrupts;

use crate::kfence;
use crate::memory::{self, KernelPageSource};

/// The kernel heap. Empty until [`init`].
#[global_allocator]
pub static HEAP: KernelHeap = KernelHeap {
    inner: Checked::new(LockedHeap::empty()),
};

/// The kernel's heap type: `kheap` over the heap window, behind an interrupt-disabling lock.
pub type Heap = LockedHeap<IrqSpinLock, KernelPageSource>;

/// The global allocator: the locked heap behind `kheap`'s red-zone and poisoning layer (active
/// with the `debug-checks` feature, a plain pass-through without it), plus a record of the last
/// failed request.
pub struct KernelHeap {
    inner: Checked<Heap>,
}

impl fmt::Debug for KernelHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelHeap").finish_non_exhaustive()
    }
}

impl KernelHeap {
    /// The locked heap itself, for pools (`kheap::ObjectPool::new(HEAP.heap())`) and stats.
    pub fn heap(&self) -> &Heap {
        self.inner.inner()
    }
}

/// Size and alignment of the most recent allocation that failed (0 if none).
static LAST_FAILED_SIZE: AtomicUsize = AtomicUsize::new(0);
static LAST_FAILED_ALIGN: AtomicUsize = AtomicUsize::new(0);

fn record_failure(layout: Layout) {
    LAST_FAILED_SIZE.store(layout.size(), Ordering::Relaxed);
    LAST_FAILED_ALIGN.store(layout.align(), Ordering::Relaxed);
}

/// The most recent allocation request that the heap refused, if any.
pub fn last_failure() -> Option<Layout> {
    let size = LAST_FAILED_SIZE.load(Ordering::Relaxed);
    let align = LAST_FAILED_ALIGN.load(Ordering::Relaxed);
    (align != 0).then(|| Layout::from_size_align(size, align).ok())?
}

// SAFETY: every call is forwarded unchanged to `LockedHeap`, whose `GlobalAlloc` implementation
// upholds the contract; the wrapper only records failed layouts on the side.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(p) = kfence::alloc(layout) {
            return p;
        }
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.inner.alloc(layout) };
        if p.is_null() {
            record_failure(layout);
        }
        after_operation();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if kfence::contains(ptr.addr()) {
            // SAFETY: a pointer in the KFENCE area can only have come from `kfence::alloc`.
            return unsafe { kfence::free(ptr) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) };
        after_operation();
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if kfence::contains(ptr.addr()) {
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return core::ptr::null_mut();
            };
            // SAFETY: `new_layout` has a non-zero size (GlobalAlloc::realloc's contract).
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks hold at least the copied length and do not overlap; the
                // old object came from `kfence::alloc` and is given up here.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    kfence::free(ptr);
                }
            }
            return new;
        }
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // `new_size` with the old alignment is what could not be had.
            if let Ok(l) = Layout::from_size_align(new_size, layout.align()) {
                record_failure(l);
            }
        }
        after_operation();
        p
    }
}

/// With the `heap-invariants` feature, walks the whole heap after every operation.
#[inline(always)]
fn after_operation() {
    if cfg!(feature = "heap-invariants") {
        check_invariants();
    }
}

/// Why the heap could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInitError(pub kheap::InitError);

impl fmt::Display for HeapInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "heap: {:?}", self.0)
    }
}

/// Gives the heap its page source (the heap window) and maps its first root page. Call after
/// `memory::init`.
pub fn init() -> Result<(), HeapInitError> {
    HEAP.heap()
        .init(KernelPageSource::new())
        .map_err(HeapInitError)
}

/// The heap's statistics (`None` before [`init`]).
pub fn stats() -> Option<HeapStats> {
    HEAP.heap().lock().map(|h| h.stats())
}

/// The heap's statistics without waiting for the heap lock: `None` if it is held (for panic and
/// allocation-failure reports, which may run while the heap is locked) or before [`init`].
pub fn try_stats() -> Option<HeapStats> {
    if LOCKS_HELD.load(Ordering::Acquire) != 0 {
        return None;
    }
    stats()
}

/// Gives every cached empty chunk and region back to the page source.
pub fn trim() {
    if let Some(mut h) = HEAP.heap().lock() {
        h.trim();
    }
}

/// Walks every heap structure and panics with the first broken invariant.
pub fn check_invariants() {
    if let Some(Err(e)) = HEAP.heap().lock().map(|h| h.check_invariants()) {
        panic!("heap invariant broken: {e}");
    }
}

/// What the heap holds of the machine's memory: pages mapped in the heap window and free frames.
/// After a workload is freed and [`trim`] is called, it must be back where it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Pages mapped in the heap window.
    pub heap_pages: u64,
    /// Physical frames still free.
    pub free_frames: u64,
}

/// The current [`Footprint`].
pub fn footprint() -> Footprint {
    let m = memory::stats();
    Footprint {
        heap_pages: m.window_pages_mapped,
        free_frames: m.frames_free,
    }
}

/// A spinlock that keeps interrupts disabled while it is held and restores the previous
/// interrupt state on release, so the heap can be used from interrupt handlers.
///
/// The kernel runs on one CPU: finding the lock held with interrupts off means it is held by code
/// this CPU can never return to (an allocation from inside the allocator, or a fault while the
/// heap was locked). That is reported and the kernel stops, rather than hanging silently.
#[derive(Debug)]
pub struct IrqSpinLock {
    locked: AtomicBool,
    /// Interrupt flag of the current holder before it locked.
    saved_if: AtomicBool,
}

/// Number of [`IrqSpinLock`]s currently held. The heap's lock is the only one, so non-zero means
/// "the heap is locked" — which a panic report must not wait for.
static LOCKS_HELD: AtomicUsize = AtomicUsize::new(0);

/// Spins this often before declaring the lock dead (a live holder on one CPU cannot exist).
const DEADLOCK_SPINS: u32 = 1 << 20;

// SAFETY: `lock` returns only after atomically swapping `false` for `true` (acquire), and only
// `unlock` (release) stores `false`; so there is at most one holder and hand-overs synchronise.
// Interrupts stay disabled from before the swap until after the release, so no handler on this
// CPU can run while the lock is held.
unsafe impl RawLock for IrqSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        locked: AtomicBool::new(false),
        saved_if: AtomicBool::new(false),
    };

    fn lock(&self) {
        let was_enabled = interrupts::are_enabled();
        interrupts::disable();
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins == DEADLOCK_SPINS {
                crate::serial_println!(
                    "kernel heap: lock re-entered on the CPU that holds it \
                     (allocation inside the allocator, or a fault while the heap was locked)"
                );
                crate::qemu::exit_qemu(crate::qemu::QemuExitCode::Failed);
            }
            core::hint::spin_loop();
        }
        self.saved_if.store(was_enabled, Ordering::Relaxed);
        LOCKS_HELD.fetch_add(1, Ordering::AcqRel);
    }

    unsafe fn unlock(&self) {
        let restore = self.saved_if.load(Ordering::Relaxed);
        LOCKS_HELD.fetch_sub(1, Ordering::AcqRel);
        self.locked.store(false, Ordering::Release);
        if restore {
            interrupts::enable();
        }
    }
}
