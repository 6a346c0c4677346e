//! Sharing a heap: a raw-lock trait, a spinlock, and [`LockedHeap`] (which implements
//! [`GlobalAlloc`]).
//!
//! The lock rule: every operation on a [`Heap`] inside a `LockedHeap` runs between one
//! [`RawLock::lock`] and the matching [`RawLock::unlock`], called by the same holder, strictly
//! paired and never nested (a [`HeapGuard`] does both). The heap never takes another lock, so
//! there is no lock order to respect; the page source is called with the heap lock held, so a
//! page source must not allocate from this heap. A kernel that allocates from interrupt handlers
//! plugs in a lock that disables interrupts in `lock` (saving the previous state) and restores it
//! in `unlock` — which is why the pairing matters.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::checked::CheckBlock;
use crate::error::InitError;
use crate::heap::Heap;
use crate::source::PageSource;

/// A lock without data, in the style of `lock_api::RawMutex`.
///
/// # Safety
///
/// Implementations must provide mutual exclusion: between a return from [`lock`](Self::lock)
/// and the matching [`unlock`](Self::unlock), no other call to `lock` on the same lock may
/// return, on any CPU or in any interrupt handler; and `lock` must synchronise-with the
/// previous `unlock` (acquire/release), so the protected data is seen consistently.
pub unsafe trait RawLock {
    /// An unlocked lock (for `const` construction of a [`LockedHeap`]).
    const INIT: Self;

    /// Acquires the lock, waiting as long as needed.
    fn lock(&self);

    /// Acquires the lock if that needs no waiting, and says whether it did (like `lock` then,
    /// to be released with [`unlock`](Self::unlock)). Used by [`LockedHeap::try_lock`], e.g. for
    /// a panic report that must never wait for the heap.
    ///
    /// The default cannot try: it never acquires the lock and returns `false` (so
    /// `LockedHeap::try_lock` always says "busy"). Every lock of this crate implements it.
    fn try_lock(&self) -> bool {
        false
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// The caller must hold the lock, acquired by its own matching call to
    /// [`lock`](Self::lock) (locks may save per-acquisition state such as the interrupt flag).
    unsafe fn unlock(&self);
}

/// A plain test-and-test-and-set spinlock. Does not disable interrupts: fine for the host and
/// for kernels that never allocate in interrupt handlers.
#[derive(Debug)]
pub struct SpinLock {
    locked: AtomicBool,
}

// SAFETY: `lock` returns only after swapping `false` for `true` with acquire ordering, and only
// `unlock` (release) stores `false`, so at most one holder exists and hand-overs synchronise.
unsafe impl RawLock for SpinLock {
    // An associated const with interior mutability is the point here: each use creates a fresh,
    // unlocked lock (the `lock_api` pattern).
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        locked: AtomicBool::new(false),
    };

    fn lock(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    fn try_lock(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// A [`Heap`] behind a [`RawLock`], usable as the `#[global_allocator]`.
///
/// It starts empty (`const`); [`init`](Self::init) gives it its page source. Until then every
/// allocation fails (null from `GlobalAlloc`).
pub struct LockedHeap<L: RawLock, S: PageSource> {
    lock: L,
    heap: UnsafeCell<Option<Heap<S>>>,
}

// SAFETY: the heap is only reached through `lock()`, which holds `L` (mutual exclusion, see
// `RawLock`) for the guard's lifetime; the heap may then be used from any thread, so it must be
// `Send`.
unsafe impl<L: RawLock + Sync, S: PageSource + Send> Sync for LockedHeap<L, S> {}

impl<L: RawLock, S: PageSource> core::fmt::Debug for LockedHeap<L, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LockedHeap").finish_non_exhaustive()
    }
}

/// Holds the raw lock; releases it on drop.
///
/// Not `Send` (the raw-pointer marker), as `lock_api`'s guards are not: the [`RawLock`] rule says
/// the holder that locked must be the one that unlocks (a lock that disables interrupts restores
/// the flag it saved on its own CPU), so the release may not move to another thread.
struct Held<'a, L: RawLock>(&'a L, PhantomData<*mut ()>);

impl<'a, L: RawLock> Held<'a, L> {
    fn new(lock: &'a L) -> Self {
        lock.lock();
        Self(lock, PhantomData)
    }

    fn try_new(lock: &'a L) -> Option<Self> {
        lock.try_lock().then_some(Self(lock, PhantomData))
    }
}

impl<L: RawLock> Drop for Held<'_, L> {
    fn drop(&mut self) {
        // SAFETY: `Held::new` acquired the lock and this is its only release.
        unsafe { self.0.unlock() };
    }
}

/// Exclusive access to the heap of a [`LockedHeap`]; releases the lock when dropped.
///
/// A guard is not `Send`: it must be dropped by the thread (or CPU) that took it, since
/// [`RawLock::unlock`] must be called by the holder that locked (see [`RawLock`]). This does not
/// compile:
///
/// ```compile_fail,E0277
/// fn assert_send<T: Send>() {}
/// fn guard_is_send<S: kheap::PageSource + Send>() {
///     assert_send::<kheap::HeapGuard<'static, kheap::SpinLock, S>>();
/// }
/// ```
///
/// (whereas the heap itself may be shared: `LockedHeap<SpinLock, S>` is `Sync` for a `Send`
/// source). Nor is it `Sync`, as the heap it lends is not.
pub struct HeapGuard<'a, L: RawLock, S: PageSource> {
    /// The heap, exclusively ours while `_held` holds the lock. A pointer, not a `&mut`: a guard
    /// passed by value to a function that drops it (`drop(guard)`) would otherwise keep a
    /// protected unique reference alive after the unlock inside that call, which another thread
    /// that takes the lock meanwhile would violate (Stacked Borrows; Miri reports it).
    heap: NonNull<Heap<S>>,
    _held: Held<'a, L>,
    _heap: PhantomData<&'a mut Heap<S>>,
}

impl<L: RawLock, S: PageSource> core::fmt::Debug for HeapGuard<'_, L, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeapGuard").finish_non_exhaustive()
    }
}

impl<L: RawLock, S: PageSource> Deref for HeapGuard<'_, L, S> {
    type Target = Heap<S>;

    fn deref(&self) -> &Heap<S> {
        // SAFETY: the guard holds the lock, so the heap is ours (see `guard`); the reference
        // borrows the guard.
        unsafe { self.heap.as_ref() }
    }
}

impl<L: RawLock, S: PageSource> DerefMut for HeapGuard<'_, L, S> {
    fn deref_mut(&mut self) -> &mut Heap<S> {
        // SAFETY: as in `deref`, mutably borrowing the guard.
        unsafe { self.heap.as_mut() }
    }
}

impl<L: RawLock, S: PageSource> LockedHeap<L, S> {
    /// A heap without a page source; see [`init`](Self::init).
    pub const fn empty() -> Self {
        Self {
            lock: L::INIT,
            heap: UnsafeCell::new(None),
        }
    }

    /// A heap over `source`, mapping nothing until first use (for sources that can be built in
    /// a `const` context).
    pub const fn new(source: S) -> Self {
        Self {
            lock: L::INIT,
            heap: UnsafeCell::new(Some(Heap::new(source))),
        }
    }

    /// Gives the heap its page source and maps its first root run.
    pub fn init(&self, source: S) -> Result<(), InitError> {
        let _held = Held::new(&self.lock);
        // SAFETY: we hold the lock, so this is the only reference to the heap.
        let slot = unsafe { &mut *self.heap.get() };
        if slot.is_some() {
            return Err(InitError::AlreadyInitialized);
        }
        let mut heap = Heap::new(source);
        heap.init().map_err(InitError::OutOfPages)?;
        *slot = Some(heap);
        Ok(())
    }

    /// Locks the heap; `None` (after releasing the lock) if it has no page source yet.
    pub fn lock(&self) -> Option<HeapGuard<'_, L, S>> {
        self.guard(Held::new(&self.lock))
    }

    /// Locks the heap if the lock is free now, without waiting: `None` if it is held (or the
    /// lock cannot try, see [`RawLock::try_lock`]) or the heap has no page source yet. For
    /// reports that must never block, such as a panic handler's heap statistics.
    pub fn try_lock(&self) -> Option<HeapGuard<'_, L, S>> {
        self.guard(Held::try_new(&self.lock)?)
    }

    fn guard<'a>(&'a self, held: Held<'a, L>) -> Option<HeapGuard<'a, L, S>> {
        // SAFETY: we hold the lock until `held` drops, and the guard keeps it; so this is the
        // only reference to the heap while it lives.
        let slot = unsafe { &mut *self.heap.get() };
        Some(HeapGuard {
            heap: NonNull::from(slot.as_mut()?),
            _held: held,
            _heap: PhantomData,
        })
    }
}

// SAFETY: every method takes the lock for the whole heap operation; the heap returns blocks of
// at least `layout.size()` bytes aligned to `layout.align()`, never hands out a block twice, and
// reports every failure as an error, which becomes null here.
unsafe impl<L: RawLock, S: PageSource> GlobalAlloc for LockedHeap<L, S> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.lock() {
            Some(mut heap) => heap
                .allocate(layout)
                .map_or(ptr::null_mut(), NonNull::as_ptr),
            None => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(mut heap), Some(ptr)) = (self.lock(), NonNull::new(ptr)) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` was allocated by this allocator
            // with `layout`.
            unsafe { heap.deallocate(ptr, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (Some(mut heap), Some(ptr)) = (self.lock(), NonNull::new(ptr)) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract: `ptr` is a live block of this allocator
        // with `layout`.
        unsafe { heap.reallocate(ptr, layout, new_size) }.map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

/// The heap's own checks (feature `debug-checks`; without it, nothing is checked): a pointer
/// that is not a live block for `layout` panics with the message a free of it would give.
impl<L: RawLock, S: PageSource> CheckBlock for LockedHeap<L, S> {
    fn check_block(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else {
            return;
        };
        if !crate::debug::ENABLED {
            return;
        }
        match self.lock() {
            Some(mut heap) => heap.check_allocated(ptr, layout),
            None => crate::debug::bad_large_free(ptr, layout, crate::pagemap::Entry::Empty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ArenaSource;
    use std::vec::Vec;

    #[test]
    fn empty_heap_fails_cleanly() {
        let heap: LockedHeap<SpinLock, ArenaSource> = LockedHeap::empty();
        assert!(heap.lock().is_none());
        let layout = Layout::new::<u64>();
        // SAFETY: a valid layout; the result is only compared.
        assert!(unsafe { heap.alloc(layout) }.is_null());
        heap.init(ArenaSource::new(64)).unwrap();
        assert_eq!(
            heap.init(ArenaSource::new(1)),
            Err(InitError::AlreadyInitialized)
        );
        // SAFETY: a valid layout; the block is freed with it.
        unsafe {
            let p = heap.alloc(layout);
            assert!(!p.is_null());
            heap.dealloc(p, layout);
        }
    }

    #[test]
    fn try_lock_never_waits() {
        let heap: LockedHeap<SpinLock, ArenaSource> = LockedHeap::empty();
        assert!(heap.try_lock().is_none(), "no page source yet");
        heap.init(ArenaSource::new(64)).unwrap();
        let held = heap.lock().unwrap();
        assert!(heap.try_lock().is_none(), "held: busy, not a deadlock");
        drop(held);
        let guard = heap.try_lock().expect("free: taken");
        assert!(heap.try_lock().is_none());
        drop(guard);
        assert!(heap.lock().is_some(), "released on drop");
    }

    #[test]
    fn a_lock_that_cannot_try_says_busy() {
        struct NoTry(SpinLock);
        // SAFETY: forwards to `SpinLock`, leaving `try_lock` at its default.
        unsafe impl RawLock for NoTry {
            #[allow(clippy::declare_interior_mutable_const)]
            const INIT: Self = Self(SpinLock::INIT);
            fn lock(&self) {
                self.0.lock();
            }
            unsafe fn unlock(&self) {
                // SAFETY: forwarded from the caller.
                unsafe { self.0.unlock() };
            }
        }
        let heap: LockedHeap<NoTry, ArenaSource> = LockedHeap::empty();
        heap.init(ArenaSource::new(64)).unwrap();
        assert!(heap.try_lock().is_none());
        assert!(heap.lock().is_some());
    }

    #[test]
    fn init_reports_exhaustion() {
        let heap: LockedHeap<SpinLock, ArenaSource> = LockedHeap::empty();
        assert!(matches!(
            heap.init(ArenaSource::new(0)),
            Err(InitError::OutOfPages(_))
        ));
        assert!(heap.lock().is_none());
    }

    /// Regression: `drop(guard)` unlocks inside `mem::drop`, while the guard is that call's
    /// argument; a thread that takes the lock meanwhile must not meet a protected `&mut` to the
    /// heap (Miri reported Stacked Borrows UB before the guard held a pointer).
    #[test]
    fn a_guard_dropped_by_value_hands_the_heap_over_cleanly() {
        let heap: LockedHeap<SpinLock, ArenaSource> = LockedHeap::empty();
        heap.init(ArenaSource::new(64)).unwrap();
        let layout = Layout::new::<u64>();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let mut guard = heap.lock().unwrap();
                        let p = guard.allocate(layout).unwrap();
                        // SAFETY: allocated just above with this layout.
                        unsafe { guard.deallocate(p, layout) };
                        drop(guard);
                    }
                });
            }
        });
        heap.lock().unwrap().check_invariants().unwrap();
    }

    #[test]
    fn threads_share_the_heap() {
        let heap: LockedHeap<SpinLock, ArenaSource> = LockedHeap::empty();
        heap.init(ArenaSource::new(2048)).unwrap();
        let rounds = if cfg!(miri) { 20 } else { 2000 };
        std::thread::scope(|s| {
            for t in 0..4usize {
                let heap = &heap;
                s.spawn(move || {
                    let mut live = Vec::new();
                    for i in 0..rounds {
                        let layout = Layout::from_size_align(8 + (i * 7 + t) % 300, 8).unwrap();
                        // SAFETY: a valid layout; blocks are freed with it below.
                        let p = unsafe { heap.alloc(layout) };
                        assert!(!p.is_null());
                        // SAFETY: the block has `layout.size()` bytes.
                        unsafe { p.write_bytes(t as u8, layout.size()) };
                        live.push((p, layout));
                        if i % 3 == 0 {
                            let (p, layout) = live.swap_remove(i % live.len());
                            // SAFETY: live block of this heap with this layout.
                            unsafe {
                                assert_eq!(*p.add(layout.size() - 1), t as u8);
                                heap.dealloc(p, layout);
                            }
                        }
                    }
                    for (p, layout) in live {
                        // SAFETY: live block of this heap with this layout.
                        unsafe { heap.dealloc(p, layout) };
                    }
                });
            }
        });
        let guard = heap.lock().unwrap();
        guard.check_invariants().unwrap();
        assert_eq!(guard.stats().requested_bytes, 0);
    }
}
