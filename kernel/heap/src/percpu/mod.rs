//! [`PerCpuHeap`]: a per-CPU front of magazines before a shared, locked [`Heap`] (the back).
//!
//! ```text
//!   CPU 0                    CPU 1                    …   (fronts: no lock, no atomic RMW)
//!   ┌─────────────────────┐  ┌─────────────────────┐
//!   │ 36 class magazines  │  │ 36 class magazines  │      a hit pops or pushes here, pinned
//!   │ 4 pool slots        │  │ 4 pool slots        │      (interrupts off / the slot's own lock)
//!   └─────────┬───────────┘  └──────────┬──────────┘
//!             │ refill / flush a batch   │               a miss: the back lock, one batch
//!             ▼                          ▼
//!   ┌──────────────────────────────────────────────┐
//!   │ LockedHeap: Heap (its own magazines, chunks,  │     the back: one lock
//!   │ pools, page map, large allocator, source)     │
//!   └──────────────────────────────────────────────┘
//! ```
//!
//! Each CPU index below `N` has a `CpuFront`: one `Magazine` per general class (the same
//! magazine type as the heap's own, stored in a `ClassMagazines`) and [`FRONT_POOL_SLOTS`]
//! slots, each caching the blocks of one user pool. A block in a front is, for the back, an
//! allocated block: the front gets blocks by allocating them from the back (a class block with
//! the class's own size as layout, so any layout of that class may use it) and gives them back
//! by freeing them, a batch per back-lock hold (a class block that goes to or comes from the
//! back directly, when no front can be pinned, uses the class's layout too, so the back counts
//! every class block at its class size). So the back needs to know nothing of the fronts,
//! its invariant checker and debug checks work unchanged, and a block cached by one CPU is
//! never reachable by another CPU's front.
//!
//! **A hit** (allocation from a non-empty magazine, free into one with room) pins the current
//! CPU's front ([`Cpus::pin`]: interrupts off in the kernel) and touches only that front: the
//! pop or push, the magazine's count (also published in a relaxed atomic for statistics, written
//! with a plain store: no read-modify-write), and the front's requested-bytes balance. A freed
//! block is rebuilt with the provenance of the page source's window (read once from the source);
//! with a source without a window, frees go to the back. A block freed on another CPU than the
//! one that allocated it is simply cached by the freeing CPU, as SLUB does. **A miss** takes the
//! back lock and moves half a magazine (a refill allocates it from the back; a flush frees the
//! oldest half).
//!
//! **Bound.** A class magazine holds at most [`FRONT_CLASS_BYTES`] (8 KiB) of blocks, and at
//! least 2 and at most 64 blocks ([`class_limit`]); a pool slot at most 8 KiB or one block, and
//! at most `POOL_MAG_CAP` (32). All the fronts of one CPU together cache at most
//! [`FRONT_BYTES_PER_CPU`] = 264 992 bytes (the classes' sum, 232 224 bytes, plus 4 × 8 KiB of
//! pool blocks), so `N` CPUs hide at most `N ×` 259 KiB from the back. The front's own storage
//! is `size_of::<CpuFront>()`, under 20 KiB per CPU index (the unit tests keep both numbers true).
//!
//! **Statistics** sum over CPUs: a block cached in a front counts as free and cached in its
//! class or pool (not in use, not held), and each front keeps the balance of the bytes it let
//! callers have against what the back counted for its blocks, so the requested bytes stay exact.
//!
//! **Drains.** [`PerCpuHeap::trim`], [`PerCpuHeap::destroy_pool`] and an allocation the back
//! refuses for want of pages first empty every front (`drain_all`):
//!
//! 1. the caller flushes its own front (pinned, under the back lock), then lets go of both;
//! 2. for each other front that holds blocks: if the platform lets a CPU pin another's front
//!    ([`Cpus::pin_remote`]: the host's slot locks), the drainer flushes it itself; otherwise it
//!    sets the front's *drain* flag and [asks](Cpus::ask) its owner (the kernel: an IPI), which
//!    flushes its own front in the IPI's handler ([`PerCpuHeap::serve_drain`]) — a handler runs
//!    only while its CPU is outside every heap call, since heap calls keep interrupts off — or at
//!    the end of its next heap call, which checks the flag;
//! 3. the drainer [waits](Cpus::wait) for the flags to clear, within the platform's time limit,
//!    serving its own flag meanwhile (two CPUs that drain at once answer each other); then it
//!    retries the allocation on the back, which trims itself before it gives up.
//!
//! Lock order: a front pin, then the back lock (then whatever the page source takes). A drainer
//! holds at most one pin at a time and never holds the back lock while it waits; an owner
//! holding its pin never waits for another front. So the order has no cycle. What a drain
//! guarantees: every front whose owner answers within the wait limit (any CPU that runs with
//! interrupts enabled or calls the heap) is empty when the retry runs; a CPU that keeps
//! interrupts off and makes no heap call for the whole limit keeps its at most
//! `FRONT_BYTES_PER_CPU` bytes.
//!
//! Do not call a `PerCpuHeap` while holding its back's lock (`back().lock()`): the back lock comes
//! after a pin, never before.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::checked::CheckBlock;
use crate::cpu::Cpus;
use crate::debug::{self, Fault, Owner};
use crate::error::{AllocError, InitError, PoolError};
use crate::heap::Heap;
use crate::locked::{HeapGuard, LockedHeap, RawLock};
use crate::magazine::{ClassMagazines, MAG_CAP, Magazine, MagazineStore, POOL_MAG_CAP};
use crate::pool::PoolId;
use crate::size_class::{CLASS_SIZES, NUM_CLASSES, SizeClass, class_for, small_class};
use crate::source::PageSource;
use crate::stats::{BlockStats, HeapStats};

#[cfg(test)]
mod tests;

/// Bytes of blocks one class magazine of a front may hold (but at least 2 blocks, and at most
/// `MAG_CAP`): 64 blocks for classes up to 128 bytes, 2 for 4096-byte blocks.
pub const FRONT_CLASS_BYTES: usize = 8 * 1024;

/// Bytes of blocks one pool slot of a front may hold (but at least 1 block, and at most
/// `POOL_MAG_CAP`).
pub const FRONT_POOL_BYTES: usize = 8 * 1024;

/// User pools a front caches blocks of at once (the slot used longest ago is given back to the
/// back when another pool needs one).
pub const FRONT_POOL_SLOTS: usize = 4;

/// Blocks the class-`i` magazine of a front holds at most.
pub const fn class_limit(i: usize) -> usize {
    let n = FRONT_CLASS_BYTES / CLASS_SIZES[i];
    if n < 2 {
        2
    } else if n > MAG_CAP {
        MAG_CAP
    } else {
        n
    }
}

/// [`class_limit`] of every class, computed at compile time (the fast paths index it rather than
/// divide).
const CLASS_LIMITS: [u8; NUM_CLASSES] = {
    let mut t = [0u8; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = class_limit(i) as u8;
        i += 1;
    }
    t
};

/// [`class_limit`] from the table.
#[inline(always)]
fn limit_of(i: usize) -> usize {
    usize::from(CLASS_LIMITS[i])
}

/// Blocks a pool slot holds at most, for blocks of `stride` bytes.
const fn pool_limit(stride: usize) -> usize {
    let n = FRONT_POOL_BYTES / stride;
    if n < 1 {
        1
    } else if n > POOL_MAG_CAP {
        POOL_MAG_CAP
    } else {
        n
    }
}

/// The most bytes of blocks one CPU's front caches: every class magazine at its limit, and
/// every pool slot at [`FRONT_POOL_BYTES`].
pub const FRONT_BYTES_PER_CPU: usize = {
    let mut sum = 0;
    let mut i = 0;
    while i < NUM_CLASSES {
        sum += class_limit(i) * CLASS_SIZES[i];
        i += 1;
    }
    sum + FRONT_POOL_SLOTS * FRONT_POOL_BYTES
};

/// The layout a front allocates class-`i` blocks from the back with: the class size, aligned
/// to 8, which maps back to class `i` (checked by a unit test for every class).
fn class_layout(i: usize) -> Layout {
    // SAFETY: class sizes are non-zero multiples of 8, far below `isize::MAX`.
    unsafe { Layout::from_size_align_unchecked(CLASS_SIZES[i], 8) }
}

/// One user pool's blocks in a front.
struct PoolSlot {
    /// The pool (`PoolId::NONE`: the slot is free). Written only under the back lock.
    id: PoolId,
    /// The pool's object size (what one block counts in requested bytes).
    size: usize,
    /// The pool's block size.
    stride: usize,
    /// Blocks the slot holds at most.
    limit: usize,
    /// When the slot was last used (for the choice of a slot to give up).
    used: u64,
    mag: MagazineStore<POOL_MAG_CAP>,
}

/// The part of a front only its pin holder touches.
struct FrontSlots {
    classes: ClassMagazines,
    pools: [PoolSlot; FRONT_POOL_SLOTS],
    /// Pool calls so far (the clock of `PoolSlot::used`).
    clock: u64,
}

/// One CPU's front: its magazines, and what other CPUs may read of it.
#[repr(C, align(64))]
pub struct CpuFront {
    /// The magazines: only the holder of this front's pin touches them.
    slots: UnsafeCell<FrontSlots>,
    /// Each class magazine's count, published for statistics and drains (stored by the pin
    /// holder with plain relaxed stores).
    counts: [AtomicU32; NUM_CLASSES],
    /// Each pool slot's count, likewise.
    pool_counts: [AtomicU32; FRONT_POOL_SLOTS],
    /// Each pool slot's pool (`PoolId` address and generation), published for statistics;
    /// written under the back lock.
    pool_ids: [(AtomicUsize, AtomicU32); FRONT_POOL_SLOTS],
    /// Bytes callers were given from this front's blocks, less the bytes the back counts for
    /// them (the back counts a class block as its class size while a front or a caller holds it):
    /// the heap's requested bytes are the back's plus every front's balance. Stored by the pin
    /// holder only.
    requested: AtomicIsize,
    /// A drain asked this front's owner to flush it.
    drain: AtomicBool,
}

impl core::fmt::Debug for CpuFront {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuFront")
            .field("cached_blocks", &self.cached_blocks())
            .finish_non_exhaustive()
    }
}

impl CpuFront {
    const fn new() -> Self {
        Self {
            slots: UnsafeCell::new(FrontSlots {
                classes: ClassMagazines::new(),
                pools: [const {
                    PoolSlot {
                        id: PoolId::NONE,
                        size: 0,
                        stride: 0,
                        limit: 0,
                        used: 0,
                        mag: MagazineStore::new(),
                    }
                }; FRONT_POOL_SLOTS],
                clock: 0,
            }),
            counts: [const { AtomicU32::new(0) }; NUM_CLASSES],
            pool_counts: [const { AtomicU32::new(0) }; FRONT_POOL_SLOTS],
            pool_ids: [const { (AtomicUsize::new(0), AtomicU32::new(0)) }; FRONT_POOL_SLOTS],
            requested: AtomicIsize::new(0),
            drain: AtomicBool::new(false),
        }
    }

    /// Blocks cached (from the published counts).
    pub fn cached_blocks(&self) -> usize {
        let classes: usize = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed) as usize)
            .sum();
        let pools: usize = self
            .pool_counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed) as usize)
            .sum();
        classes + pools
    }

    /// Adds `delta` to the requested-bytes balance (pin holder only: a load and a store).
    #[inline(always)]
    fn add_requested(&self, delta: isize) {
        let r = self.requested.load(Ordering::Relaxed);
        self.requested
            .store(r.wrapping_add(delta), Ordering::Relaxed);
    }

    /// Class `i`'s magazine.
    ///
    /// # Safety
    ///
    /// The caller holds this front's pin (and no other borrow of the magazine lives), `i <
    /// NUM_CLASSES`.
    #[inline(always)]
    unsafe fn class<'a>(&self, i: usize) -> Magazine<'a, MAG_CAP> {
        // SAFETY: the pin gives the caller the slots (caller); `i` is a class index.
        unsafe { ClassMagazines::magazine(&raw mut (*self.slots.get()).classes, i) }
    }

    /// The front's pool slots.
    ///
    /// # Safety
    ///
    /// The caller holds this front's pin, and no other borrow of the pool slots lives.
    #[inline(always)]
    unsafe fn pools<'a>(&self) -> (&'a mut [PoolSlot; FRONT_POOL_SLOTS], &'a mut u64) {
        let s = self.slots.get();
        // SAFETY: the pin gives the caller the slots (caller); two disjoint fields.
        unsafe { (&mut (*s).pools, &mut (*s).clock) }
    }

    /// Pool slot `k`'s pool, as published (for a reader holding the back lock).
    fn pool_id(&self, k: usize) -> PoolId {
        let (addr, generation) = &self.pool_ids[k];
        PoolId::new(
            addr.load(Ordering::Relaxed),
            generation.load(Ordering::Relaxed),
        )
    }
}

/// A [`Heap`] with a per-CPU front (see the module documentation) before a [`LockedHeap`] back,
/// for `N` CPU indices (CPUs of a higher index use the back directly). Usable as the
/// `#[global_allocator]`; user pools go through the fronts with
/// [`pool_allocate`](Self::pool_allocate) / [`pool_deallocate`](Self::pool_deallocate).
pub struct PerCpuHeap<L: RawLock, S: PageSource, C: Cpus, const N: usize> {
    back: LockedHeap<L, S>,
    cpus: C,
    /// The page source's window, read from the source once (`len` 0: not yet, or none).
    window_start: AtomicPtr<u8>,
    window_len: AtomicUsize,
    /// The requested-bytes balance of class blocks that went to or came from the back directly
    /// (no front could be pinned): the back counts every class block at its class size.
    shared_requested: AtomicIsize,
    fronts: [CpuFront; N],
}

// SAFETY: the back is `Sync` under these bounds; a front's slots are touched only by the holder
// of its pin (`Cpus` hands out one pin per index at a time, with acquire/release hand-overs);
// the rest is atomics.
unsafe impl<L: RawLock + Sync, S: PageSource + Send, C: Cpus, const N: usize> Sync
    for PerCpuHeap<L, S, C, N>
{
}

impl<L: RawLock, S: PageSource, C: Cpus, const N: usize> core::fmt::Debug
    for PerCpuHeap<L, S, C, N>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuHeap")
            .field("cpus", &N)
            .finish_non_exhaustive()
    }
}

impl<L: RawLock, S: PageSource, C: Cpus, const N: usize> PerCpuHeap<L, S, C, N> {
    /// A heap without a page source; see [`init`](Self::init).
    pub const fn empty(cpus: C) -> Self {
        Self {
            back: LockedHeap::empty(),
            cpus,
            window_start: AtomicPtr::new(ptr::null_mut()),
            window_len: AtomicUsize::new(0),
            shared_requested: AtomicIsize::new(0),
            fronts: [const { CpuFront::new() }; N],
        }
    }

    /// A heap over `source`, mapping nothing until first use.
    pub const fn new(source: S, cpus: C) -> Self {
        Self {
            back: LockedHeap::new(source),
            cpus,
            window_start: AtomicPtr::new(ptr::null_mut()),
            window_len: AtomicUsize::new(0),
            shared_requested: AtomicIsize::new(0),
            fronts: [const { CpuFront::new() }; N],
        }
    }

    /// Gives the heap its page source and maps its first root run.
    pub fn init(&self, source: S) -> Result<(), InitError> {
        self.back.init(source)?;
        if let Some(h) = self.back.lock() {
            self.learn_window(&h);
        }
        Ok(())
    }

    /// The back: the locked heap behind the fronts (for `ObjectPool`s, the heap picture, and
    /// anything that needs the whole heap; its own statistics do not count the fronts).
    pub fn back(&self) -> &LockedHeap<L, S> {
        &self.back
    }

    /// The CPUs.
    pub fn cpus(&self) -> &C {
        &self.cpus
    }

    /// CPU `cpu`'s front (for its numbers), if `cpu < N`.
    pub fn front(&self, cpu: usize) -> Option<&CpuFront> {
        self.fronts.get(cpu)
    }

    /// Records the page source's window (once; it never changes).
    fn learn_window(&self, h: &Heap<S>) {
        if self.window_len.load(Ordering::Relaxed) != 0 {
            return;
        }
        if let Some(w) = h.source().window() {
            self.window_start
                .store(w.as_ptr().cast::<u8>(), Ordering::Relaxed);
            self.window_len.store(w.len(), Ordering::Release);
        }
    }

    /// `ptr` rebuilt from the window's start (a provenance that covers the whole block), if it
    /// lies in the window.
    #[inline(always)]
    fn window_block(&self, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        let len = self.window_len.load(Ordering::Acquire);
        let start = self.window_start.load(Ordering::Relaxed);
        let inside = ptr.addr().get().wrapping_sub(start.addr()) < len;
        // SAFETY: a window with a length has a non-null start.
        inside.then(|| unsafe { NonNull::new_unchecked(start) }.with_addr(ptr.addr()))
    }

    /// The back, locked; `Uninitialized` before `init`.
    fn locked(&self) -> Result<HeapGuard<'_, L, S>, AllocError> {
        let h = self.back.lock().ok_or(AllocError::Uninitialized)?;
        self.learn_window(&h);
        Ok(h)
    }

    /// Pins the current CPU's front, if it has one.
    #[inline(always)]
    fn pin(&self) -> Option<(usize, C::Pin)> {
        let (cpu, pin) = self.cpus.pin()?;
        if cpu < N {
            return Some((cpu, pin));
        }
        self.cpus.unpin(pin);
        None
    }

    /// Ends a pinned call: serves a pending drain request, then unpins.
    #[inline(always)]
    fn unpin(&self, cpu: usize, pin: C::Pin) {
        if self.fronts[cpu].drain.load(Ordering::Relaxed) {
            self.serve_pinned(cpu);
        }
        self.cpus.unpin(pin);
    }

    // ----- the general allocator -----

    /// Allocates a block for `layout`: a class size from the current CPU's front (refilled from
    /// the back on a miss), anything else from the back. If the back has no pages left, every
    /// CPU's front is drained and the back tried once more.
    #[inline]
    pub fn allocate(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        if let Some(i) = small_class(layout)
            && let Some((cpu, pin)) = self.pin()
        {
            let f = &self.fronts[cpu];
            // SAFETY: pinned; `i` is a class index.
            let mut mag = unsafe { f.class(i) };
            let r = match mag.pop() {
                Some(p) => {
                    f.counts[i].store(mag.len() as u32, Ordering::Relaxed);
                    f.add_requested(layout.size() as isize);
                    Ok(p)
                }
                None => self.refill_and_take(cpu, i, layout.size()),
            };
            self.unpin(cpu, pin);
            return match r {
                Ok(p) => Ok(p),
                Err(AllocError::OutOfPages { .. }) => self.allocate_after_drain(layout),
                Err(e) => Err(e),
            };
        }
        self.back_allocate(layout)
    }

    /// Allocates from the back directly: a class block with its class's layout (so the back
    /// counts every class block at its class size, whoever frees it), the balance kept aside.
    #[inline(never)]
    fn back_allocate(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let mut h = self.locked()?;
        match class_for(layout) {
            SizeClass::Small(i) => {
                let p = h.allocate(class_layout(i))?;
                let delta = layout.size() as isize - CLASS_SIZES[i] as isize;
                self.shared_requested.fetch_add(delta, Ordering::Relaxed);
                Ok(p)
            }
            SizeClass::Large => h.allocate(layout),
        }
    }

    /// Frees to the back directly (see [`back_allocate`](Self::back_allocate)).
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    #[inline(never)]
    unsafe fn back_deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let Some(mut h) = self.back.lock() else {
            return;
        };
        match class_for(layout) {
            SizeClass::Small(i) => {
                // SAFETY: the caller's block, of class `i`, which the back counts at its class
                // size.
                unsafe { h.deallocate(ptr, class_layout(i)) };
                let delta = CLASS_SIZES[i] as isize - layout.size() as isize;
                self.shared_requested.fetch_add(delta, Ordering::Relaxed);
            }
            // SAFETY: forwarded.
            SizeClass::Large => unsafe { h.deallocate(ptr, layout) },
        }
    }

    /// A miss: refills class `i`'s magazine of front `cpu` with half its limit from the back,
    /// and takes one block.
    #[inline(never)]
    fn refill_and_take(
        &self,
        cpu: usize,
        i: usize,
        size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let f = &self.fronts[cpu];
        let mut h = self.locked()?;
        // SAFETY: pinned by the caller; `i` is a class index.
        let mut mag = unsafe { f.class(i) };
        let want = (limit_of(i) / 2).max(1);
        let layout = class_layout(i);
        let mut got = 0;
        while got < want {
            match h.allocate(layout) {
                Ok(p) => {
                    let pushed = mag.push(p);
                    debug_assert!(pushed, "an empty magazine has room for half its limit");
                    got += 1;
                }
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            }
        }
        drop(h);
        let p = mag.pop().ok_or(AllocError::Uninitialized)?;
        f.counts[i].store(mag.len() as u32, Ordering::Relaxed);
        f.add_requested(size as isize - (got * CLASS_SIZES[i]) as isize);
        Ok(p)
    }

    /// The allocation the back refused, once every front is drained.
    #[cold]
    fn allocate_after_drain(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.drain_all();
        self.back_allocate(layout)
    }

    /// Frees a block: a class block goes to the current CPU's front (its oldest half to the back
    /// first if the magazine is full), anything else to the back.
    ///
    /// With `debug-checks`, the block is first checked against the back (a live block of its
    /// class, under the back lock) and against this CPU's front (a double free into it), and a
    /// bad free panics naming the address; a double free of a block cached by another CPU's
    /// front is caught when that front gives the block back.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of this heap allocated with `layout` (by any CPU).
    #[inline]
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if let Some(i) = small_class(layout)
            && let Some(block) = self.window_block(ptr)
            && let Some((cpu, pin)) = self.pin()
        {
            let f = &self.fronts[cpu];
            if debug::ENABLED {
                self.check_class_free(cpu, i, ptr, layout);
            }
            // SAFETY: pinned; `i` is a class index. This borrow ends before the flush makes its
            // own.
            let full = unsafe { f.class(i) }.len() >= limit_of(i);
            if full {
                self.flush_class(cpu, i, (limit_of(i) / 2).max(1));
            }
            // SAFETY: as above.
            let mut mag = unsafe { f.class(i) };
            let pushed = mag.push(block);
            debug_assert!(pushed, "a magazine below its limit has room");
            f.counts[i].store(mag.len() as u32, Ordering::Relaxed);
            f.add_requested(-(layout.size() as isize));
            self.unpin(cpu, pin);
            return;
        }
        // SAFETY: forwarded (the back counts every front's blocks as allocated).
        unsafe { self.back_deallocate(ptr, layout) };
    }

    /// `debug-checks`: panics unless `ptr` is a live block of class `i` that front `cpu` does
    /// not hold.
    #[cold]
    fn check_class_free(&self, cpu: usize, i: usize, ptr: NonNull<u8>, layout: Layout) {
        if let Some(mut h) = self.back.lock() {
            h.check_allocated(ptr, layout);
        }
        // SAFETY: pinned by the caller; `i` is a class index.
        let mag = unsafe { self.fronts[cpu].class(i) };
        if mag.cached().contains(&ptr.as_ptr()) {
            let owner = Owner::Class {
                size: CLASS_SIZES[i],
            };
            debug::bad_free(ptr, owner, Fault::DoubleFree);
        }
    }

    /// Gives the `n` oldest blocks of class `i`'s magazine of front `cpu` back to the back.
    #[inline(never)]
    fn flush_class(&self, cpu: usize, i: usize, n: usize) {
        let f = &self.fronts[cpu];
        // SAFETY: pinned by the caller; `i` is a class index.
        let mut mag = unsafe { f.class(i) };
        let n = n.min(mag.len());
        if n == 0 {
            return;
        }
        let Some(mut h) = self.back.lock() else {
            return;
        };
        for &b in &mag.cached()[..n] {
            // SAFETY: a front holds only blocks it allocated from the back with the class
            // layout, each once, with a provenance covering the block.
            unsafe { h.deallocate(NonNull::new_unchecked(b), class_layout(i)) };
        }
        drop(h);
        mag.drop_oldest(n);
        f.counts[i].store(mag.len() as u32, Ordering::Relaxed);
        f.add_requested((n * CLASS_SIZES[i]) as isize);
    }

    /// Resizes a block: in place if the new size is of the same class (or the back resizes a
    /// large block in place), else allocate, copy, free. On failure the old block is untouched.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate) with `old`.
    pub unsafe fn reallocate(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let new = Layout::from_size_align(new_size, old.align())
            .map_err(|_| AllocError::TooLarge { layout: old })?;
        match (class_for(old), class_for(new)) {
            (SizeClass::Small(a), SizeClass::Small(b)) if a == b => {
                if debug::ENABLED
                    && let Some(mut h) = self.back.lock()
                {
                    h.check_allocated(ptr, old);
                }
                let delta = new_size as isize - old.size() as isize;
                match self.pin() {
                    Some((cpu, pin)) => {
                        self.fronts[cpu].add_requested(delta);
                        self.unpin(cpu, pin);
                    }
                    None => {
                        self.shared_requested.fetch_add(delta, Ordering::Relaxed);
                    }
                }
                Ok(ptr)
            }
            // SAFETY: forwarded; a large block never sits in a front.
            (SizeClass::Large, SizeClass::Large) => unsafe {
                self.locked()?.reallocate(ptr, old, new_size)
            },
            _ => {
                let fresh = self.allocate(new)?;
                // SAFETY: both blocks are live and distinct, with `old.size()` readable and
                // `new_size` writable bytes; the old block is then given up.
                unsafe {
                    ptr::copy_nonoverlapping(
                        ptr.as_ptr(),
                        fresh.as_ptr(),
                        old.size().min(new_size),
                    );
                    self.deallocate(ptr, old);
                }
                Ok(fresh)
            }
        }
    }

    // ----- user pools -----

    /// Creates a user pool (on the back; see [`Heap::create_pool`]).
    pub fn create_pool(&self, size: usize, align: usize) -> Result<PoolId, PoolError> {
        self.back
            .lock()
            .ok_or(PoolError::NoSuchPool)?
            .create_pool(size, align)
    }

    /// Allocates a block of pool `id` from the current CPU's front (a slot of the pool, refilled
    /// from the back on a miss), draining every front and retrying once if the back has no pages.
    pub fn pool_allocate(&self, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        if let Some((cpu, pin)) = self.pin() {
            let r = self.pool_take(cpu, id);
            self.unpin(cpu, pin);
            return match r {
                Ok(p) => Ok(p),
                Err(AllocError::OutOfPages { .. }) => {
                    self.drain_all();
                    self.locked()?.pool_allocate(id)
                }
                Err(e) => Err(e),
            };
        }
        self.locked()?.pool_allocate(id)
    }

    /// [`pool_allocate`](Self::pool_allocate) on pinned front `cpu`.
    fn pool_take(&self, cpu: usize, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        let f = &self.fronts[cpu];
        // SAFETY: pinned by the caller.
        let (pools, clock) = unsafe { f.pools() };
        *clock += 1;
        if let Some(k) = pools.iter().position(|s| s.id == id) {
            let slot = &mut pools[k];
            slot.used = *clock;
            if let Some(p) = slot.mag.magazine().pop() {
                f.pool_counts[k].store(slot.mag.len() as u32, Ordering::Relaxed);
                f.add_requested(slot.size as isize);
                return Ok(p);
            }
        }
        self.pool_refill_and_take(cpu, id)
    }

    /// A pool miss: finds or frees a slot for pool `id` (giving the slot used longest ago back
    /// to the back), refills it with half its limit, and takes one block.
    #[inline(never)]
    fn pool_refill_and_take(&self, cpu: usize, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        let f = &self.fronts[cpu];
        let mut h = self.locked()?;
        // SAFETY: pinned by the caller.
        let (pools, clock) = unsafe { f.pools() };
        let k = match pools.iter().position(|s| s.id == id) {
            Some(k) => k,
            None => {
                let layout = h.pool_layout(id).map_err(|_| AllocError::NoSuchPool)?;
                let k = (0..FRONT_POOL_SLOTS)
                    .min_by_key(|&k| (pools[k].id != PoolId::NONE, pools[k].used))
                    .unwrap_or(0);
                let slot = &mut pools[k];
                self.give_pool_slot(&mut h, f, k, slot);
                let stride = layout.size().next_multiple_of(layout.align());
                slot.id = id;
                f.pool_ids[k].0.store(id.addr(), Ordering::Relaxed);
                f.pool_ids[k].1.store(id.generation(), Ordering::Relaxed);
                slot.size = layout.size();
                slot.stride = stride;
                slot.limit = pool_limit(stride);
                k
            }
        };
        let slot = &mut pools[k];
        slot.used = *clock;
        let mut mag = slot.mag.magazine();
        let want = (slot.limit / 2).max(1);
        let mut got = 0;
        while got < want {
            match h.pool_allocate(id) {
                Ok(p) => {
                    let pushed = mag.push(p);
                    debug_assert!(pushed, "an empty slot has room for half its limit");
                    got += 1;
                }
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            }
        }
        drop(h);
        let p = mag.pop().ok_or(AllocError::NoSuchPool)?;
        f.pool_counts[k].store(mag.len() as u32, Ordering::Relaxed);
        f.add_requested(slot.size as isize - (got * slot.size) as isize);
        Ok(p)
    }

    /// Gives every block of pool slot `k` of front `f` back to the back (locked as `h`).
    fn give_pool_slot(&self, h: &mut Heap<S>, f: &CpuFront, k: usize, slot: &mut PoolSlot) {
        let mut mag = slot.mag.magazine();
        let n = mag.len();
        for &b in mag.cached() {
            // SAFETY: a slot holds only blocks it allocated from its pool, each once.
            unsafe { h.pool_deallocate(slot.id, NonNull::new_unchecked(b)) };
        }
        mag.drop_oldest(n);
        f.pool_counts[k].store(0, Ordering::Relaxed);
        f.add_requested((n * slot.size) as isize);
    }

    /// Frees a block of pool `id` into the current CPU's front (a slot of the pool, if it has
    /// one with room, else the slot's oldest half goes back first); without a slot of that pool,
    /// to the back.
    ///
    /// With `debug-checks`, as [`deallocate`](Self::deallocate): checked against the back and
    /// against this CPU's slot.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of pool `id` of this heap (allocated by any CPU).
    pub unsafe fn pool_deallocate(&self, id: PoolId, ptr: NonNull<u8>) {
        if let Some(block) = self.window_block(ptr)
            && let Some((cpu, pin)) = self.pin()
        {
            let f = &self.fronts[cpu];
            // SAFETY: pinned.
            let (pools, _) = unsafe { f.pools() };
            if let Some(k) = pools.iter().position(|s| s.id == id) {
                let slot = &mut pools[k];
                if debug::ENABLED {
                    self.check_pool_free(slot, ptr);
                }
                if slot.mag.len() >= slot.limit
                    && let Some(mut h) = self.back.lock()
                {
                    let mut mag = slot.mag.magazine();
                    let n = (slot.limit / 2).max(1).min(mag.len());
                    for &b in &mag.cached()[..n] {
                        // SAFETY: a slot holds only blocks of its pool, each once.
                        unsafe { h.pool_deallocate(id, NonNull::new_unchecked(b)) };
                    }
                    mag.drop_oldest(n);
                    f.add_requested((n * slot.size) as isize);
                }
                if slot.mag.len() < slot.limit {
                    let pushed = slot.mag.magazine().push(block);
                    debug_assert!(pushed);
                    f.pool_counts[k].store(slot.mag.len() as u32, Ordering::Relaxed);
                    f.add_requested(-(slot.size as isize));
                    self.unpin(cpu, pin);
                    return;
                }
            }
            self.unpin(cpu, pin);
        }
        if let Some(mut h) = self.back.lock() {
            // SAFETY: forwarded.
            unsafe { h.pool_deallocate(id, ptr) };
        }
    }

    /// `debug-checks`: panics unless `ptr` is a live block of the slot's pool that the slot does
    /// not hold.
    #[cold]
    fn check_pool_free(&self, slot: &PoolSlot, ptr: NonNull<u8>) {
        if slot.mag.cached().contains(&ptr.as_ptr()) {
            let owner = Owner::Pool {
                generation: slot.id.generation(),
                size: slot.stride,
            };
            debug::bad_free(ptr, owner, Fault::DoubleFree);
        }
        if let Some(mut h) = self.back.lock() {
            h.check_pool_block(slot.id, ptr);
        }
    }

    /// Destroys pool `id` once every front has given its blocks back (see
    /// [`Heap::destroy_pool`]).
    pub fn destroy_pool(&self, id: PoolId) -> Result<(), PoolError> {
        self.drain_all();
        self.back
            .lock()
            .ok_or(PoolError::NoSuchPool)?
            .destroy_pool(id)
    }

    // ----- drains, trim, statistics -----

    /// Empties every CPU's front into the back (see the module documentation for the
    /// protocol). Call without a pin and without the back lock.
    pub fn drain_all(&self) {
        let mut own = None;
        if let Some((cpu, pin)) = self.pin() {
            self.flush_front(cpu);
            self.fronts[cpu].drain.store(false, Ordering::Release);
            self.cpus.unpin(pin);
            own = Some(cpu);
        }
        let mut asked = false;
        for cpu in (0..N).filter(|&c| Some(c) != own) {
            if self.fronts[cpu].cached_blocks() == 0 {
                continue;
            }
            if let Some(pin) = self.cpus.pin_remote(cpu) {
                self.flush_front(cpu);
                self.cpus.unpin(pin);
                continue;
            }
            self.fronts[cpu].drain.store(true, Ordering::Release);
            self.cpus.ask(cpu);
            asked = true;
        }
        if asked {
            let pending = || {
                self.fronts
                    .iter()
                    .enumerate()
                    .any(|(c, f)| Some(c) != own && f.drain.load(Ordering::Acquire))
            };
            self.cpus.wait(&pending, &|| self.serve_drain());
        }
    }

    /// Flushes the current CPU's front if a drain asked for it (the kernel calls this from its
    /// drain IPI's handler; every heap call also does it at its end).
    pub fn serve_drain(&self) {
        if let Some((cpu, pin)) = self.pin() {
            if self.fronts[cpu].drain.load(Ordering::Acquire) {
                self.serve_pinned(cpu);
            }
            self.cpus.unpin(pin);
        }
    }

    /// Flushes the current CPU's front into the back, asked or not (for an owner that drains a
    /// heap CPU by CPU itself, e.g. with a call on every CPU).
    pub fn flush_local(&self) {
        if let Some((cpu, pin)) = self.pin() {
            self.serve_pinned(cpu);
            self.cpus.unpin(pin);
        }
    }

    #[cold]
    #[inline(never)]
    fn serve_pinned(&self, cpu: usize) {
        self.flush_front(cpu);
        self.fronts[cpu].drain.store(false, Ordering::Release);
    }

    /// Gives every block of front `cpu` back to the back.
    fn flush_front(&self, cpu: usize) {
        let f = &self.fronts[cpu];
        let Some(mut h) = self.back.lock() else {
            return;
        };
        for i in 0..NUM_CLASSES {
            // SAFETY: the caller holds front `cpu`'s pin; `i` is a class index.
            let mut mag = unsafe { f.class(i) };
            let n = mag.len();
            if n == 0 {
                continue;
            }
            for &b in mag.cached() {
                // SAFETY: as in `flush_class`.
                unsafe { h.deallocate(NonNull::new_unchecked(b), class_layout(i)) };
            }
            mag.drop_oldest(n);
            f.counts[i].store(0, Ordering::Relaxed);
            f.add_requested((n * CLASS_SIZES[i]) as isize);
        }
        // SAFETY: the caller holds the pin.
        let (pools, _) = unsafe { f.pools() };
        for (k, slot) in pools.iter_mut().enumerate() {
            self.give_pool_slot(&mut h, f, k, slot);
        }
    }

    /// Drains every front, then trims the back (see [`Heap::trim`]).
    pub fn trim(&self) {
        self.drain_all();
        if let Some(mut h) = self.back.lock() {
            h.trim();
        }
    }

    /// The heap's numbers, summed over the back and every front (see the module documentation);
    /// `None` before `init`.
    pub fn stats(&self) -> Option<HeapStats> {
        let h = self.back.lock()?;
        Some(self.with_fronts(h.stats()))
    }

    /// [`stats`](Self::stats) without waiting for the back lock: `None` if it is held.
    pub fn try_stats(&self) -> Option<HeapStats> {
        let h = self.back.try_lock()?;
        Some(self.with_fronts(h.stats()))
    }

    /// The back's numbers with every front's cached blocks moved from "in use" to "free, cached",
    /// and its requested-bytes balance added. Called with the back lock held.
    fn with_fronts(&self, mut s: HeapStats) -> HeapStats {
        let mut requested =
            s.requested_bytes as isize + self.shared_requested.load(Ordering::Relaxed);
        let cache = |b: &mut BlockStats, n: usize| -> usize {
            let n = n.min(b.in_use);
            b.in_use -= n;
            b.free += n;
            b.cached += n;
            n * b.block_size
        };
        for f in &self.fronts {
            requested += f.requested.load(Ordering::Relaxed);
            for (i, c) in f.counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed) as usize;
                s.held_bytes -= cache(&mut s.classes[i], n).min(s.held_bytes);
            }
            for (k, c) in f.pool_counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed) as usize;
                if n == 0 {
                    continue;
                }
                let id = f.pool_id(k);
                let listed = s.pools.iter_mut().flatten().find(|p| p.id == id);
                let bytes = match listed {
                    Some(p) => cache(&mut p.blocks, n),
                    None => cache(&mut s.other_pools, n),
                };
                s.held_bytes -= bytes.min(s.held_bytes);
            }
        }
        s.requested_bytes = requested.max(0) as usize;
        s
    }

    /// Checks the back's invariants, and that no front holds more than its limits.
    pub fn check_invariants(&self) -> Result<(), crate::InvariantError> {
        let Some(h) = self.back.lock() else {
            return Ok(());
        };
        for f in &self.fronts {
            for (i, c) in f.counts.iter().enumerate() {
                let n = c.load(Ordering::Relaxed) as usize;
                if n > limit_of(i) {
                    return Err(crate::InvariantError::CountMismatch {
                        addr: core::ptr::from_ref(f).addr(),
                        recorded: n,
                        counted: limit_of(i),
                    });
                }
            }
        }
        h.check_invariants()
    }
}

// SAFETY: every block comes from the back (directly or through a front, which holds each block
// once and hands it to one caller), so blocks have the layout's size and alignment and are never
// handed out twice; failures become null.
unsafe impl<L: RawLock, S: PageSource, C: Cpus, const N: usize> GlobalAlloc
    for PerCpuHeap<L, S, C, N>
{
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract.
            unsafe { self.deallocate(ptr, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(ptr) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract.
        unsafe { self.reallocate(ptr, layout, new_size) }.map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

/// The back's checks, plus (for a class block) this CPU's front: a block the front holds is
/// a double free (feature `debug-checks`; without it, nothing is checked).
impl<L: RawLock, S: PageSource, C: Cpus, const N: usize> CheckBlock for PerCpuHeap<L, S, C, N> {
    fn check_block(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else {
            return;
        };
        if !debug::ENABLED {
            return;
        }
        if let SizeClass::Small(i) = class_for(layout)
            && let Some((cpu, pin)) = self.pin()
        {
            self.check_class_free(cpu, i, p, layout);
            self.cpus.unpin(pin);
            return;
        }
        self.back.check_block(ptr, layout);
    }
}
