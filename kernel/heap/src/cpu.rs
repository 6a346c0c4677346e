//! CPUs as the per-CPU heap ([`PerCpuHeap`](crate::PerCpuHeap)) sees them: the [`Cpus`] trait
//! (the current CPU's index, a pin that keeps its front to the caller, and how a drain reaches
//! another CPU's front), [`OneCpu`], and with feature `testing` `ThreadCpus` (host threads as
//! CPUs). The kernel's implementation (interrupts off, `cpu_id()`, a drain IPI) lives in the
//! kernel (`kernel/src/allocator.rs`).

use core::sync::atomic::{AtomicBool, Ordering};

/// The CPUs a [`PerCpuHeap`](crate::PerCpuHeap) serves: which front the running code may use, and
/// how a drain reaches the fronts of the others.
///
/// Each CPU index `i` names one front. A *pin* of index `i` is what gives its holder that front:
/// the running CPU's own one ([`pin`](Self::pin): interrupts off in a kernel, a slot lock on the
/// host), or another CPU's ([`pin_remote`](Self::pin_remote), where the platform allows it).
///
/// # Safety
///
/// While a pin of index `i` lives (from [`pin`](Self::pin) or [`pin_remote`](Self::pin_remote)
/// until [`unpin`](Self::unpin)), no other pin of index `i` may be handed out, on any CPU or in any
/// interrupt handler, and the holder must not be interrupted by code that uses the heap on the
/// same CPU (a kernel: interrupts off; NMI handlers must not allocate). Handing a pin over must
/// synchronise (acquire/release) with its previous release, so a front is seen consistently by
/// its next holder.
pub unsafe trait Cpus: Sync {
    /// What keeps a front pinned (e.g. the saved interrupt flag).
    type Pin;

    /// Pins the front of the CPU running this: its index and the pin, or `None` when no front
    /// may be used now (the heap then goes to its shared, locked back directly).
    fn pin(&self) -> Option<(usize, Self::Pin)>;

    /// Releases a pin.
    fn unpin(&self, pin: Self::Pin);

    /// Pins the front of CPU `cpu` for a drain running on another CPU, waiting while its owner
    /// is inside a heap call; `None` if the platform lets only the owner touch its front (the
    /// drain then [`ask`](Self::ask)s it). The default: `None`.
    fn pin_remote(&self, cpu: usize) -> Option<Self::Pin> {
        let _ = cpu;
        None
    }

    /// Asks CPU `cpu` to call [`PerCpuHeap::serve_drain`](crate::PerCpuHeap::serve_drain) soon
    /// (a kernel: an IPI whose handler does it). The front's owner also serves a pending request
    /// at the end of its next heap call. The default does nothing.
    fn ask(&self, cpu: usize) {
        let _ = cpu;
    }

    /// Waits, within the platform's time limit, until `pending()` is false, calling `serve_own()`
    /// on every round (so that two CPUs draining at once answer each other). Called without a pin
    /// and without the heap lock. The default returns at once.
    fn wait(&self, pending: &dyn Fn() -> bool, serve_own: &dyn Fn()) {
        let _ = (pending, serve_own);
    }
}

/// A small spinlock that never waits in `try_pin` (a front slot's lock).
#[derive(Debug)]
struct SlotLock(AtomicBool);

impl SlotLock {
    const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn lock(&self) {
        while !self.try_lock() {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One CPU (index 0), for a heap used by one processor: the front is guarded by a flag, so a
/// re-entrant call (an interrupt handler that allocates while the interrupted code is inside
/// the front) finds it taken and goes to the locked back instead, and a drain from another
/// thread waits for the flag. With a back lock that disables interrupts (`IrqSpinLock`), interrupt
/// handlers may then allocate: the back is never locked by the code they interrupt.
#[derive(Debug)]
pub struct OneCpu {
    busy: SlotLock,
}

impl OneCpu {
    /// The one CPU.
    pub const fn new() -> Self {
        Self {
            busy: SlotLock::new(),
        }
    }
}

impl Default for OneCpu {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: a pin is the `busy` flag, taken by an acquiring compare-exchange and released by a
// release store: at most one pin exists, and hand-overs synchronise. A re-entrant `pin` finds
// the flag taken and returns `None`.
unsafe impl Cpus for OneCpu {
    type Pin = ();

    fn pin(&self) -> Option<(usize, ())> {
        self.busy.try_lock().then_some((0, ()))
    }

    fn unpin(&self, (): ()) {
        self.busy.unlock();
    }

    fn pin_remote(&self, cpu: usize) -> Option<()> {
        (cpu == 0).then(|| self.busy.lock())
    }
}

#[cfg(any(test, feature = "testing"))]
pub use threads::{MAX_THREAD_CPUS, ThreadCpus};

#[cfg(any(test, feature = "testing"))]
mod threads {
    use core::cell::Cell;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::{Cpus, SlotLock};

    /// The most CPUs a [`ThreadCpus`] has.
    pub const MAX_THREAD_CPUS: usize = 64;

    /// Threads numbered in the order they first use a [`ThreadCpus`] heap (or [`bind`]).
    static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

    std::thread_local! {
        /// This thread's number (`usize::MAX`: not yet given).
        static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
        /// The CPU this thread last ran on, and the address of the `ThreadCpus` that said so
        /// (saves the division of `current` on every call).
        static LAST: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    /// Host threads as CPUs (feature `testing`): thread number `t` (in the order threads first
    /// use the heap, or as set with [`ThreadCpus::bind`]) runs on CPU `t % cpus`. Each CPU's front
    /// has a slot lock, which `pin` takes (so threads sharing a CPU take turns) and which a drain
    /// takes too ([`Cpus::pin_remote`]): a drain on the host simply flushes every front itself,
    /// one at a time, which is sound (and Miri-clean) and needs no help from the owners.
    #[derive(Debug)]
    pub struct ThreadCpus {
        cpus: usize,
        slots: [SlotLock; MAX_THREAD_CPUS],
    }

    impl ThreadCpus {
        /// `cpus` CPUs (1 to [`MAX_THREAD_CPUS`]; clamped).
        pub const fn new(cpus: usize) -> Self {
            let cpus = if cpus == 0 {
                1
            } else if cpus > MAX_THREAD_CPUS {
                MAX_THREAD_CPUS
            } else {
                cpus
            };
            Self {
                cpus,
                slots: [const { SlotLock::new() }; MAX_THREAD_CPUS],
            }
        }

        /// Gives the calling thread number `thread` (so it runs on CPU `thread % cpus`).
        pub fn bind(thread: usize) {
            THREAD.with(|t| t.set(thread));
            LAST.with(|l| l.set((0, 0)));
        }

        /// The CPU the calling thread runs on.
        #[inline]
        pub fn current(&self) -> usize {
            let me = core::ptr::from_ref(self).addr();
            let (who, cpu) = LAST.with(Cell::get);
            // (A `ThreadCpus` at the address of an earlier one may have fewer CPUs: any index
            // below `cpus` is a valid answer, a larger one is not.)
            if who == me && cpu < self.cpus {
                return cpu;
            }
            let t = THREAD.with(|t| {
                if t.get() == usize::MAX {
                    t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
                }
                t.get()
            });
            let cpu = t % self.cpus;
            LAST.with(|l| l.set((me, cpu)));
            cpu
        }
    }

    // SAFETY: a pin of CPU `i` is slot lock `i`, taken by an acquiring compare-exchange and
    // released by a release store, by `pin` and `pin_remote` alike: one pin per index at a
    // time, and hand-overs synchronise. Threads have no interrupts to re-enter the heap.
    unsafe impl Cpus for ThreadCpus {
        type Pin = usize;

        fn pin(&self) -> Option<(usize, usize)> {
            let cpu = self.current();
            self.slots[cpu].lock();
            Some((cpu, cpu))
        }

        fn unpin(&self, cpu: usize) {
            self.slots[cpu].unlock();
        }

        fn pin_remote(&self, cpu: usize) -> Option<usize> {
            let slot = self.slots.get(cpu).filter(|_| cpu < self.cpus)?;
            slot.lock();
            Some(cpu)
        }
    }
}
