//! `lock_api` interop (feature `lock_api`): [`LockApi`] makes any `lock_api::RawMutex` a
//! [`RawLock`], and kheap's own locks are `lock_api::RawMutex`es.
//!
//! A wrapper rather than a blanket `impl<R: RawMutex> RawLock for R`: with the blanket impl,
//! turning the feature on would make every downstream `impl RawLock for T` where `T` is also a
//! `RawMutex` a coherence conflict — a feature must only add, never break.

use crate::lock::irq::{Interrupts, IrqLock};
use crate::locked::{RawLock, SpinLock};

/// A `lock_api::RawMutex` as the lock of a [`LockedHeap`](crate::LockedHeap), e.g.
/// `LockedHeap<LockApi<spin::mutex::SpinMutex<()>>, FixedRegion>`.
#[derive(Debug)]
pub struct LockApi<R>(R);

impl<R: lock_api::RawMutex> LockApi<R> {
    /// The wrapped lock.
    pub fn inner(&self) -> &R {
        &self.0
    }
}

// SAFETY: `lock_api::RawMutex` is an unsafe trait whose implementations guarantee mutual
// exclusion between `lock` (or a successful `try_lock`) and `unlock`, with acquire/release
// ordering — what `RawLock` asks for; the wrapper forwards each call unchanged.
unsafe impl<R: lock_api::RawMutex> RawLock for LockApi<R> {
    // Each use is a fresh unlocked lock, as `R::INIT` is.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self(<R as lock_api::RawMutex>::INIT);

    fn lock(&self) {
        lock_api::RawMutex::lock(&self.0);
    }

    fn try_lock(&self) -> bool {
        lock_api::RawMutex::try_lock(&self.0)
    }

    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock (`RawLock::unlock`'s contract is `RawMutex`'s).
        unsafe { lock_api::RawMutex::unlock(&self.0) };
    }
}

// SAFETY: forwards to `SpinLock`'s `RawLock` implementation, which guarantees mutual exclusion
// with acquire/release ordering.
unsafe impl lock_api::RawMutex for SpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = <Self as RawLock>::INIT;
    type GuardMarker = lock_api::GuardSend;

    fn lock(&self) {
        RawLock::lock(self);
    }

    fn try_lock(&self) -> bool {
        RawLock::try_lock(self)
    }

    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock.
        unsafe { RawLock::unlock(self) };
    }
}

// SAFETY: forwards to `IrqLock`'s `RawLock` implementation. Its guards may not move to another
// CPU (the interrupt flag is restored where it was saved): `GuardNoSend`.
unsafe impl<I: Interrupts> lock_api::RawMutex for IrqLock<I> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self::new();
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        RawLock::lock(self);
    }

    fn try_lock(&self) -> bool {
        RawLock::try_lock(self)
    }

    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock, taken on this CPU (the guard is not `Send`).
        unsafe { RawLock::unlock(self) };
    }

    fn is_locked(&self) -> bool {
        IrqLock::is_locked(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LockedHeap;
    use crate::testing::ArenaSource;
    use core::alloc::{GlobalAlloc, Layout};

    #[test]
    fn a_spin_mutex_guards_a_heap() {
        type Spin = spin::mutex::SpinMutex<()>;
        let heap: LockedHeap<LockApi<Spin>, ArenaSource> = LockedHeap::empty();
        heap.init(ArenaSource::new(64)).unwrap();
        let layout = Layout::new::<[u8; 40]>();
        // SAFETY: a valid layout; the block is freed with it.
        unsafe {
            let p = heap.alloc(layout);
            assert!(!p.is_null());
            heap.dealloc(p, layout);
        }
        let held = heap.lock().unwrap();
        assert!(
            heap.try_lock().is_none(),
            "held: try_lock says so instead of waiting"
        );
        drop(held);
        assert!(heap.try_lock().is_some());
    }

    #[test]
    fn kheap_locks_guard_other_data_through_lock_api() {
        let m: lock_api::Mutex<SpinLock, u32> = lock_api::Mutex::new(1);
        *m.lock() += 1;
        assert!(m.try_lock().is_some());
        let g = m.lock();
        assert!(m.try_lock().is_none());
        assert_eq!(*g, 2);
    }
}
