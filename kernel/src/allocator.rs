//! The kernel's `#[global_allocator]`: the `kheap` heap over the heap window's page source, with
//! a per-CPU front.
//!
//! [`HEAP`] is a [`kheap::PerCpuHeap`]: each CPU (index below [`FRONT_CPUS`]) has its own front
//! of magazines, which a hit uses with interrupts off and no lock ([`KernelCpus`]), before the
//! shared back, a [`kheap::LockedHeap`] whose lock ([`IrqSpinLock`]) disables interrupts while it
//! is held, so an interrupt handler that allocates can never spin on a lock held by the code it
//! interrupted. Lock order: a CPU's front (interrupts off), then this heap lock, then the memory
//! layer's lock (taken inside [`KernelPageSource`]); the memory layer never allocates. The
//! lock's watchdog tells a lock this CPU can never get back from one that another CPU holds for
//! a while (see [`IrqSpinLock`]).
//!
//! A drain (trim, destroying a pool, an allocation the back cannot serve) reaches another CPU's
//! front by asking it: an IPI ([`ipi::DRAIN_VECTOR`]) whose handler flushes that CPU's own
//! front ([`serve_drain`]). A handler runs only while its CPU is outside every heap call (heap
//! calls keep interrupts off), and every heap call also serves a pending request at its end; the
//! drainer waits at most [`DRAIN_WAIT_MS`] (see `kheap`'s `PerCpuHeap` for the protocol).
//!
//! Every Nth allocation can be placed on a guarded page instead ([`kfence`], off until
//! `kfence::enable`), so overflows, underflows and use-after-free of sampled objects fault at once.
//!
//! Allocation failures become null at the `GlobalAlloc` boundary; the last failed layout is kept
//! so the panic path (`alloc`'s "memory allocation of N bytes failed") can print it together with
//! the heap statistics.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kheap::{Checked, Cpus, HeapStats, LockedHeap, PerCpuHeap, RawLock};
use x86_64::instructions::interrupts;

use crate::kfence;
use crate::memory::{self, KernelPageSource};
use crate::smp::ipi;

/// The kernel heap. Empty until [`init`].
#[global_allocator]
pub static HEAP: KernelHeap = KernelHeap {
    inner: Checked::new(PerCpuHeap::empty(KernelCpus)),
};

/// CPU indices with a heap front of their own (about 20 KiB of `.bss` each); CPUs of a higher
/// index use the back directly.
pub const FRONT_CPUS: usize = 16;

/// The back of the kernel heap: `kheap` over the heap window, behind an interrupt-disabling lock.
pub type Heap = LockedHeap<IrqSpinLock, KernelPageSource>;

/// The kernel heap: per-CPU fronts before [`Heap`].
pub type FrontHeap = PerCpuHeap<IrqSpinLock, KernelPageSource, KernelCpus, FRONT_CPUS>;

/// The global allocator: the per-CPU heap behind `kheap`'s red-zone and poisoning layer (active
/// with the `debug-checks` feature, a plain pass-through without it), plus a record of the last
/// failed request.
pub struct KernelHeap {
    inner: Checked<FrontHeap>,
}

impl fmt::Debug for KernelHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelHeap").finish_non_exhaustive()
    }
}

impl KernelHeap {
    /// The back, the locked heap behind the fronts, for `kheap::ObjectPool`s, the heap picture
    /// and direct use (its own statistics count blocks cached in fronts as in use).
    pub fn heap(&self) -> &Heap {
        self.inner.inner().back()
    }

    /// The whole heap, fronts included: user pools through the fronts, statistics, trim.
    pub fn front(&self) -> &FrontHeap {
        self.inner.inner()
    }
}

/// How long a drain waits for the other CPUs to flush their fronts, in ms. They answer at once
/// unless they run with interrupts off outside the heap for that long (a vCPU descheduled by a
/// loaded host included); a CPU that does not answer keeps its front's blocks.
pub const DRAIN_WAIT_MS: u64 = 1000;

/// The CPUs as the heap sees them: the index from `smp::cpu_id()`, and a pin that is interrupts
/// off (restored on unpin); a drain asks the other CPUs by IPI.
#[derive(Debug, Clone, Copy)]
pub struct KernelCpus;

// SAFETY: a pin of CPU `i` is only handed out on CPU `i` (`cpu_id`), with interrupts off until
// it is released: no interrupt handler on that CPU can run meanwhile (NMI handlers never
// allocate), and no other CPU gets a pin of index `i` (`pin_remote` is never offered). A front is
// only ever touched by its own CPU, so hand-overs need no synchronisation beyond program order.
unsafe impl Cpus for KernelCpus {
    /// Whether interrupts were enabled before the pin.
    type Pin = bool;

    #[inline(always)]
    fn pin(&self) -> Option<(usize, bool)> {
        let was_enabled = interrupts::are_enabled();
        interrupts::disable();
        Some((crate::smp::cpu_id(), was_enabled))
    }

    #[inline(always)]
    fn unpin(&self, was_enabled: bool) {
        if was_enabled {
            interrupts::enable();
        }
    }

    fn ask(&self, cpu: usize) {
        // An offline CPU has no front in use: nothing to ask.
        let _ = ipi::send(cpu, ipi::DRAIN_VECTOR);
    }

    fn wait(&self, pending: &dyn Fn() -> bool, serve_own: &dyn Fn()) {
        let deadline = crate::cpu::clock::Deadline::after_us(DRAIN_WAIT_MS * 1000);
        while pending() && !deadline.passed() {
            serve_own();
            core::hint::spin_loop();
        }
    }
}

/// Flushes this CPU's heap front if a drain asked for it (the drain IPI's handler).
pub fn serve_drain() {
    HEAP.front().serve_drain();
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

// SAFETY: every call is forwarded unchanged to `PerCpuHeap`, whose `GlobalAlloc` implementation
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
    HEAP.front()
        .init(KernelPageSource::new())
        .map_err(HeapInitError)
}

/// The heap's statistics, summed over the back and every CPU's front (`None` before [`init`]).
pub fn stats() -> Option<HeapStats> {
    HEAP.front().stats()
}

/// The heap's statistics without waiting for the heap lock: `None` if it is held (for panic and
/// allocation-failure reports, which may run while the heap is locked) or before [`init`].
/// One attempt to take the lock, so it never blocks, also with several CPUs.
pub fn try_stats() -> Option<HeapStats> {
    HEAP.front().try_stats()
}

/// Drains every CPU's front, then gives every cached empty chunk and region back to the page
/// source, and finally has the page source release its spare pages
/// ([`memory::release_spare_pages`]), so that all the heap no longer uses is back in the frame
/// allocator.
pub fn trim() {
    HEAP.front().trim();
    memory::release_spare_pages();
}

/// Walks every heap structure and panics with the first broken invariant.
pub fn check_invariants() {
    if let Err(e) = HEAP.front().check_invariants() {
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
/// interrupt state on release, so the heap can be used from interrupt handlers, with a watchdog
/// that tells a dead lock from a busy one.
///
/// # The watchdog
///
/// The lock records which CPU holds it and counts its acquisitions. A waiter then knows:
///
/// * **The holder is this CPU**: the lock can never be released (interrupts are off while it is
///   held, so the holder is code this CPU will never return to: an allocation from inside the
///   allocator, or a fault while the heap was locked). That is certain at once, so it is reported
///   at once (a panic), rather than hanging silently. This was the only case on one
///   CPU, and it still needs no timeout.
/// * **Another CPU holds it**: that CPU is running and will release it; only how long it may take
///   is unknown (a `trim` of a large heap, an invariant check, a burst of TLB shootdowns, a vCPU
///   descheduled by a loaded host). The waiter measures *per acquisition*: its clock restarts
///   whenever the acquisition count moves, so waiting behind many short holds never adds up — with
///   any number of CPUs, each hold is judged alone. Only one single hold longer than
///   [`HOLD_LIMIT_S`] (by the TSC, calibrated against the PIT) is reported (a panic naming the
///   holder's CPU): no heap operation comes near it, so it means the holder is stuck (e.g. in an
///   endless loop with the lock held).
///
/// The NMI-based TLB shootdown is what makes "another CPU will release it" true: a holder waiting
/// for this CPU's acknowledgement gets it even while this CPU spins here with interrupts off.
#[derive(Debug)]
pub struct IrqSpinLock {
    /// Index of the holding CPU, or [`FREE`].
    owner: AtomicUsize,
    /// Acquisitions so far (the watchdog's measure of progress).
    acquisitions: AtomicUsize,
    /// Interrupt flag of the current holder before it locked.
    saved_if: AtomicBool,
}

/// `IrqSpinLock::owner` of a free lock.
const FREE: usize = usize::MAX;

/// The longest one hold of the lock by another CPU may last before the watchdog calls it stuck,
/// in seconds (the default of [`set_lock_hold_limit_ms`]). Heap operations take micro- to
/// milliseconds (a full trim or invariant walk of a large heap under TCG, well under a second);
/// this leaves two orders of magnitude for a loaded host, and still fires long before a test's
/// time limit.
pub const HOLD_LIMIT_S: u64 = 30;

/// The watchdog's limit in force, in ms.
static HOLD_LIMIT_MS: AtomicU64 = AtomicU64::new(HOLD_LIMIT_S * 1000);

/// Sets how long one hold of the heap lock by another CPU may last before a waiter reports the
/// holder as stuck (default [`HOLD_LIMIT_S`]); for tests of the watchdog.
pub fn set_lock_hold_limit_ms(ms: u64) {
    HOLD_LIMIT_MS.store(ms, Ordering::Relaxed);
}

/// Spins between two looks at the clock (reading the TSC costs more than a spin).
const SPINS_PER_CHECK: u32 = 1024;

impl IrqSpinLock {
    /// Called while the lock is held by `holder` (not this CPU): panics, naming the holder, if
    /// one single hold has lasted longer than the limit ([`set_lock_hold_limit_ms`]).
    fn watch(
        &self,
        holder: usize,
        watched: &mut Option<(usize, usize, crate::cpu::clock::Deadline)>,
    ) {
        let acquisitions = self.acquisitions.load(Ordering::Relaxed);
        match watched {
            Some((who, count, deadline)) if *who == holder && *count == acquisitions => {
                if deadline.passed() {
                    // Interrupts are off; the panic path does not take the heap lock.
                    panic!(
                        "kernel heap: CPU {holder} has held the heap lock for over {} ms \
                         (acquisition {acquisitions}) while CPU {} waits: the holder is stuck",
                        HOLD_LIMIT_MS.load(Ordering::Relaxed),
                        crate::smp::cpu_id()
                    );
                }
            }
            _ => {
                *watched = Some((
                    holder,
                    acquisitions,
                    crate::cpu::clock::Deadline::after_us(
                        HOLD_LIMIT_MS.load(Ordering::Relaxed) * 1000,
                    ),
                ));
            }
        }
    }
}

// SAFETY: `lock` returns only after atomically swapping `FREE` for its CPU index (acquire), and
// only `unlock` (release) stores `FREE`; so there is at most one holder and hand-overs
// synchronise. Interrupts stay disabled from before the swap until after the release, so no
// handler on this CPU can run while the lock is held.
unsafe impl RawLock for IrqSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        owner: AtomicUsize::new(FREE),
        acquisitions: AtomicUsize::new(0),
        saved_if: AtomicBool::new(false),
    };

    fn lock(&self) {
        let was_enabled = interrupts::are_enabled();
        interrupts::disable();
        let me = crate::smp::cpu_id();
        let mut spins = 0u32;
        let mut watched = None;
        loop {
            match self
                .owner
                .compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(holder) if holder == me => {
                    // The panic path does not take the heap lock (reports use `try_stats`).
                    panic!(
                        "kernel heap: lock re-entered on the CPU that holds it (CPU {me}: \
                         allocation inside the allocator, or a fault while the heap was locked)"
                    );
                }
                // A spurious failure of the weak exchange: just try again.
                Err(FREE) => {}
                Err(holder) => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(SPINS_PER_CHECK) {
                        self.watch(holder, &mut watched);
                    }
                }
            }
            core::hint::spin_loop();
        }
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        self.saved_if.store(was_enabled, Ordering::Relaxed);
    }

    fn try_lock(&self) -> bool {
        let was_enabled = interrupts::are_enabled();
        interrupts::disable();
        let me = crate::smp::cpu_id();
        if self
            .owner
            .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if was_enabled {
                interrupts::enable();
            }
            return false;
        }
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        self.saved_if.store(was_enabled, Ordering::Relaxed);
        true
    }

    unsafe fn unlock(&self) {
        let restore = self.saved_if.load(Ordering::Relaxed);
        self.owner.store(FREE, Ordering::Release);
        if restore {
            interrupts::enable();
        }
    }
}
