//! [`IrqLock`]: a ticket spinlock that disables interrupts while it is held.
//!
//! `lock` saves the interrupt flag and disables interrupts *before* it takes a ticket, and
//! `unlock` releases the lock *before* it restores the flag, so no interrupt handler on the
//! holding CPU ever runs while the lock is held: a handler that allocates cannot spin forever on
//! a lock held by the code it interrupted. Waiters spin with interrupts disabled too (as Linux's
//! `spin_lock_irqsave` does), and are served in arrival order (tickets), so no CPU starves on a
//! busy heap.
//!
//! The interrupt flag is saved in the lock, per acquisition, by the holder; that is why
//! [`RawLock::unlock`] must be called by the holder that locked (which `LockedHeap` does).
//! Re-entering the lock on the CPU that holds it (an allocation from inside the allocator, or a
//! fault handler that allocates while the heap is locked) deadlocks, as with any spinlock; a
//! kernel that wants that reported rather than hung wraps its own lock (this kernel's
//! `allocator.rs` has one with a watchdog).

use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::locked::RawLock;

/// How a lock turns interrupts off and back on (the CPU's: [`X86Interrupts`]; a test's own).
///
/// # Safety
///
/// After [`save_and_disable`](Self::save_and_disable) returns, no interrupt handler may run on
/// this CPU until [`restore`](Self::restore) is called with its result.
pub unsafe trait Interrupts {
    /// Disables interrupts; returns whether they were enabled.
    fn save_and_disable() -> bool;

    /// Enables interrupts again if `enabled`.
    ///
    /// # Safety
    ///
    /// `enabled` must come from the matching `save_and_disable` on this CPU, and nothing that
    /// relies on interrupts being off may still be running.
    unsafe fn restore(enabled: bool);
}

/// x86_64 interrupts: `pushfq`/`pop` to read the flag, `cli`, and `sti` to restore it. Needs
/// ring 0 (in user mode `cli` faults).
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct X86Interrupts;

// SAFETY: `cli` clears the interrupt flag, so no maskable interrupt is taken on this CPU until
// `sti` in `restore`. (NMIs still are: a lock must not be taken in an NMI handler.)
#[cfg(target_arch = "x86_64")]
unsafe impl Interrupts for X86Interrupts {
    #[inline]
    fn save_and_disable() -> bool {
        let flags: u64;
        // SAFETY: reads RFLAGS through the stack and clears IF; touches no other state. Not
        // `nomem`, so the compiler keeps memory accesses after it on this side of it.
        unsafe { core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags) };
        flags & (1 << 9) != 0
    }

    #[inline]
    unsafe fn restore(enabled: bool) {
        if enabled {
            // SAFETY: the caller's guarantee: interrupts were enabled before the matching
            // `save_and_disable` and nothing needs them off any more.
            unsafe { core::arch::asm!("sti") };
        }
    }
}

/// A ticket spinlock that keeps interrupts disabled (through `I`) while it is held. See the
/// module docs; for a kernel on x86_64, use [`IrqSpinLock`].
pub struct IrqLock<I: Interrupts> {
    /// The next ticket to hand out.
    next: AtomicU32,
    /// The ticket being served (the holder's, while held).
    serving: AtomicU32,
    /// Whether interrupts were enabled before the holder locked (written by the holder only).
    saved: AtomicBool,
    _interrupts: PhantomData<fn() -> I>,
}

/// The interrupt-disabling spinlock for x86_64 kernels:
/// `static HEAP: LockedHeap<IrqSpinLock, FixedRegion> = LockedHeap::empty();`.
#[cfg(target_arch = "x86_64")]
pub type IrqSpinLock = IrqLock<X86Interrupts>;

impl<I: Interrupts> core::fmt::Debug for IrqLock<I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let held = self.next.load(Ordering::Relaxed) != self.serving.load(Ordering::Relaxed);
        f.debug_struct("IrqLock").field("held", &held).finish()
    }
}

impl<I: Interrupts> IrqLock<I> {
    /// An unlocked lock.
    pub const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            saved: AtomicBool::new(false),
            _interrupts: PhantomData,
        }
    }

    /// Whether someone holds the lock now (a hint: it may change at once).
    pub fn is_locked(&self) -> bool {
        self.next.load(Ordering::Relaxed) != self.serving.load(Ordering::Relaxed)
    }
}

impl<I: Interrupts> Default for IrqLock<I> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: a holder owns the ticket equal to `serving`; tickets are handed out once each
// (`fetch_add`, or a compare-exchange from `serving` that fails if any ticket is out), and only
// the holder's `unlock` advances `serving` (release), which the next holder reads (acquire): so
// there is one holder at a time and hand-overs synchronise. Interrupts are off (`I`'s contract)
// from before the ticket is taken until after `serving` moves on.
unsafe impl<I: Interrupts> RawLock for IrqLock<I> {
    // Each use of `INIT` is a fresh unlocked lock (the `lock_api` pattern).
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();

    fn lock(&self) {
        let enabled = I::save_and_disable();
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        while self.serving.load(Ordering::Acquire) != ticket {
            core::hint::spin_loop();
        }
        self.saved.store(enabled, Ordering::Relaxed);
    }

    fn try_lock(&self) -> bool {
        let enabled = I::save_and_disable();
        let now = self.serving.load(Ordering::Acquire);
        let free = self
            .next
            .compare_exchange(
                now,
                now.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok();
        if free {
            self.saved.store(enabled, Ordering::Relaxed);
        } else {
            // SAFETY: from the `save_and_disable` just above; nothing was taken.
            unsafe { I::restore(enabled) };
        }
        free
    }

    unsafe fn unlock(&self) {
        let enabled = self.saved.load(Ordering::Relaxed);
        self.serving.fetch_add(1, Ordering::Release);
        // SAFETY: the caller holds the lock it took with `lock`/`try_lock`, which saved
        // `enabled` from its `save_and_disable`; the lock is released, so nothing needs
        // interrupts off any more.
        unsafe { I::restore(enabled) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LockedHeap;
    use crate::testing::ArenaSource;
    use core::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;
    use std::vec::Vec;

    std::thread_local! {
        /// This thread's stand-in for the interrupt flag, and a count of the times it was
        /// turned back on.
        static ENABLED: Cell<bool> = const { Cell::new(true) };
    }

    /// Interrupts of a test thread: a thread-local flag.
    struct FakeInterrupts;

    // SAFETY: nothing runs "in an interrupt handler" in these tests; the flag records what a
    // CPU would do.
    unsafe impl Interrupts for FakeInterrupts {
        fn save_and_disable() -> bool {
            ENABLED.with(|e| e.replace(false))
        }

        unsafe fn restore(enabled: bool) {
            if enabled {
                ENABLED.with(|e| e.set(true));
            }
        }
    }

    fn enabled() -> bool {
        ENABLED.with(Cell::get)
    }

    #[test]
    fn interrupts_are_off_while_held_and_restored_as_they_were() {
        let lock = IrqLock::<FakeInterrupts>::new();
        assert!(enabled());
        lock.lock();
        assert!(!enabled() && lock.is_locked());
        assert!(!lock.try_lock(), "held");
        assert!(!enabled(), "a failed try leaves them as they were (off)");
        // SAFETY: locked above by this thread.
        unsafe { lock.unlock() };
        assert!(enabled() && !lock.is_locked());
        // Taken with interrupts already off: they stay off after the release.
        ENABLED.with(|e| e.set(false));
        assert!(lock.try_lock());
        // SAFETY: taken just above.
        unsafe { lock.unlock() };
        assert!(!enabled());
        ENABLED.with(|e| e.set(true));
        assert!(lock.try_lock() && !enabled());
        // SAFETY: taken just above.
        unsafe { lock.unlock() };
        assert!(enabled());
    }

    #[test]
    fn threads_take_turns_on_a_heap_behind_the_lock() {
        let heap: LockedHeap<IrqLock<FakeInterrupts>, ArenaSource> = LockedHeap::empty();
        heap.init(ArenaSource::new(1024)).unwrap();
        let counter = IrqLock::<FakeInterrupts>::new();
        let total = core::cell::UnsafeCell::new(0usize);
        struct Shared<'a>(&'a core::cell::UnsafeCell<usize>);
        // SAFETY: `total` is only touched with `counter` held.
        unsafe impl Sync for Shared<'_> {}
        let shared = Shared(&total);
        let rounds = if cfg!(miri) { 30 } else { 3000 };
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (heap, counter, shared) = (&heap, &counter, &shared);
                s.spawn(move || {
                    let mut live = Vec::new();
                    for i in 0..rounds {
                        let layout = Layout::from_size_align(8 + (i + t) % 200, 8).unwrap();
                        // SAFETY: a valid layout; freed with it below.
                        let p = unsafe { heap.alloc(layout) };
                        assert!(!p.is_null() && enabled());
                        live.push((p, layout));
                        if i % 2 == 0 {
                            let (p, layout) = live.swap_remove(0);
                            // SAFETY: a live block of this heap with this layout.
                            unsafe { heap.dealloc(p, layout) };
                        }
                        counter.lock();
                        // SAFETY: `counter` is held.
                        unsafe { *shared.0.get() += 1 };
                        // SAFETY: locked just above.
                        unsafe { counter.unlock() };
                    }
                    for (p, layout) in live {
                        // SAFETY: as above.
                        unsafe { heap.dealloc(p, layout) };
                    }
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * rounds);
        let h = heap.try_lock().unwrap();
        assert_eq!(h.stats().requested_bytes, 0);
        h.check_invariants().unwrap();
    }
}
