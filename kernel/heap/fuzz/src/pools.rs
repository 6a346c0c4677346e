//! The harness of `pool_ops`: user pools through their public API on a [`LockedHeap`] — untyped
//! [`PoolAllocator`]s (create, alloc, free, destroy, and `core::alloc::Allocator`, what
//! `Box::new_in(x, &handle)` uses) and typed [`ObjectPool`]s ([`PoolBox`] with `into_raw`,
//! `into_inner` and drop, `allocate_raw`/`deallocate_raw`, and dropping the pool) — with many pools at
//! once, general blocks from the same heap in between, and page-source refusals chosen by the
//! input ([`FailMask`], as in the other targets).
//!
//! After every operation:
//!
//! * every block is aligned to its pool's alignment and overlaps no other live block (pool or
//!   general); every byte of every untyped block is patterned when handed out and checked when
//!   freed; every typed value carries its own pattern, checked when it is dropped;
//! * every typed value is dropped exactly once: when its box is dropped or freed, when
//!   `into_inner` hands it back, and when a failed `allocate` gives it back (the count is checked);
//! * the heap's invariant checker passes (through the lock), its page count equals the pages the
//!   source mapped, its requested bytes and its number of user pools equal the model's;
//! * a failure is `OutOfPages` and only happens when the page source refused a map; invalid
//!   layouts and stale handles (of destroyed pools) are refused; a pool with live blocks is not
//!   destroyed (`PoolInUse` with the right count), and an `ObjectPool` dropped with live blocks
//!   leaves its pool alive.
//!
//! At the end every block is freed and every pool destroyed, the heap trimmed: only its root runs
//! and their page-map nodes may stay mapped.

use core::alloc::Allocator;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use kheap::{
    AllocError, LockedHeap, ObjectPool, PAGE_SIZE, PoolBox, PoolError, PoolAllocator, SpinLock,
};

use crate::{FailMask, FuzzSource};

/// The heap under test.
type FuzzHeap = LockedHeap<SpinLock, FuzzSource>;
/// An untyped pool of it.
type Handle<'h> = PoolAllocator<'h, SpinLock, FuzzSource>;

/// Arena sizes in pages: 1 MiB runs dry after a few dozen pools, 16 MiB rarely.
const ARENAS: [usize; 2] = [256, 4096];

/// Most pools a scenario creates (live or destroyed).
const MAX_POOLS: usize = 160;

/// Typed values dropped so far (the harness runs one scenario at a time).
static DROPS: AtomicU64 = AtomicU64::new(0);

/// The byte a value or block of id `id` holds at offset `i`.
fn pattern(id: u64, i: usize) -> u8 {
    ((id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        ^ (i as u8).wrapping_mul(29)
        ^ ((i >> 8) as u8).wrapping_mul(11)
}

/// A value that checks its own bytes when dropped and counts the drop.
#[derive(Debug)]
pub struct Tracked {
    id: u64,
    words: [u64; 5],
}

impl Tracked {
    fn new(id: u64) -> Self {
        Self {
            id,
            words: core::array::from_fn(|i| id.wrapping_mul(0x0100_0000_01B3) ^ i as u64),
        }
    }
    fn check(&self) {
        for (i, &w) in self.words.iter().enumerate() {
            assert_eq!(
                w,
                self.id.wrapping_mul(0x0100_0000_01B3) ^ i as u64,
                "tracked value {}: word {i} changed",
                self.id
            );
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.check();
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// An over-aligned value (1 KiB blocks aligned to 512 bytes).
#[derive(Debug)]
#[repr(align(512))]
pub struct Wide {
    id: u64,
    bytes: [u8; 700],
}

impl Wide {
    fn new(id: u64) -> Self {
        Self {
            id,
            bytes: core::array::from_fn(|i| pattern(id, i)),
        }
    }
    fn check(&self) {
        if let Some(i) = (0..self.bytes.len()).find(|&i| self.bytes[i] != pattern(self.id, i)) {
            panic!("wide value {}: byte {i} changed", self.id);
        }
    }
}

impl Drop for Wide {
    fn drop(&mut self) {
        self.check();
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// One step of a scenario. Indices pick among pools or live blocks modulo their count.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PoolOp {
    /// `PoolAllocator::create` with size `size % 4200` and alignment `1 << (align_log2 % 14)`
    /// (zero, more than a page and 8 KiB alignment are invalid).
    Create {
        /// Block size.
        size: u16,
        /// Alignment exponent.
        align_log2: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `ObjectPool::new` for [`Tracked`], [`Wide`] or `()` (`kind % 3`).
    CreateTyped {
        /// Which type.
        kind: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// One block from a pool: for a handle `allocate_block()`; for a typed pool (by `how % 4`) `allocate`
    /// kept through `PoolBox::into_raw`, `allocate_raw`, `allocate` then `into_inner`, or `allocate`
    /// then dropping the box.
    Alloc {
        /// Which pool.
        pool: u8,
        /// Which way.
        how: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `Allocator::allocate` through a pool's handle with a layout of `size % 4300` bytes
    /// (at least 1) aligned to `1 << (align_log2 % 13)`: refused if it does not fit the pool's
    /// blocks.
    AllocVia {
        /// Which pool.
        pool: u8,
        /// Requested size.
        size: u16,
        /// Alignment exponent.
        align_log2: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// Frees a live block the way it was allocated.
    Free {
        /// Which block.
        index: u16,
    },
    /// Destroys a pool: `PoolAllocator::destroy`, or for a typed pool dropping the `ObjectPool`
    /// (or, while it has blocks, `destroy` on its handle, which must refuse).
    Destroy {
        /// Which pool.
        pool: u8,
    },
    /// A general block of `size % 6000 + 1` bytes through the heap's `GlobalAlloc`.
    General {
        /// Requested size.
        size: u16,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `trim`.
    Trim,
}

/// A fuzz input: the arena and the operations.
#[derive(Debug, Arbitrary)]
pub struct Scenario {
    /// Which arena size.
    pub arena: u8,
    /// The operations, in order.
    pub ops: Vec<PoolOp>,
}

/// A typed pool.
enum Typed<'h> {
    Tracked(ObjectPool<'h, Tracked, SpinLock, FuzzSource>),
    Wide(ObjectPool<'h, Wide, SpinLock, FuzzSource>),
    Unit(ObjectPool<'h, (), SpinLock, FuzzSource>),
}

/// A pool in the model.
struct PoolModel<'h> {
    handle: Handle<'h>,
    /// The `ObjectPool`, for typed pools until it is dropped.
    typed: Option<Typed<'h>>,
    /// The block layout it was created with.
    layout: Layout,
    live: usize,
    destroyed: bool,
}

/// How a live block was allocated, hence how it is freed and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `PoolAllocator::alloc`: untyped, every byte of the block patterned.
    Handle,
    /// `Allocator::allocate` with this layout: its bytes patterned.
    Allocator(Layout),
    /// A typed value, freed with `deallocate_raw` (which drops it).
    Typed,
    /// A general block through `GlobalAlloc` with this layout.
    General(Layout),
}

/// A live block.
#[derive(Debug, Clone, Copy)]
struct Live {
    ptr: NonNull<u8>,
    /// Pool index (unused for general blocks).
    pool: usize,
    route: Route,
    /// Bytes patterned (untyped blocks) or the value's size (typed).
    len: usize,
    /// Requested bytes, as the heap counts them.
    requested: usize,
    id: u64,
}

struct Model<'h> {
    heap: &'h FuzzHeap,
    pools: Vec<PoolModel<'h>>,
    live: Vec<Live>,
    /// Start → (end, id) of every live block.
    ranges: BTreeMap<usize, (usize, u64)>,
    requested: usize,
    next_id: u64,
    /// Typed values that must have been dropped by now.
    drops: u64,
    step: usize,
}

impl<'h> Model<'h> {
    fn source_refused(&self) -> u32 {
        self.heap.lock().expect("initialised").source().refused()
    }

    fn begin(&self, mask: FailMask) {
        self.heap.lock().expect("initialised").source().begin(mask);
    }

    /// An allocation failed: for lack of pages, with a refusal behind it.
    fn failed(&self, what: &str) {
        assert!(
            self.source_refused() > 0,
            "step {}: {what} failed although the page source refused nothing",
            self.step
        );
    }

    /// Records a new live block: alignment, no overlap, pattern (untyped).
    fn insert(&mut self, b: Live, align: usize) {
        let start = b.ptr.addr().get();
        assert_eq!(
            start % align,
            0,
            "step {}: {start:#x} not aligned to {align}",
            self.step
        );
        let end = start + b.len.max(1);
        if let Some((&s, &(e, id))) = self.ranges.range(..=start).next_back() {
            assert!(
                e <= start,
                "step {}: [{start:#x}, {end:#x}) overlaps block {id} [{s:#x}, {e:#x})",
                self.step
            );
        }
        if let Some((&s, &(e, id))) = self.ranges.range(start..).next() {
            assert!(
                s >= end,
                "step {}: [{start:#x}, {end:#x}) overlaps block {id} [{s:#x}, {e:#x})",
                self.step
            );
        }
        self.ranges.insert(start, (end, b.id));
        if b.route != Route::Typed {
            // SAFETY: a fresh block of at least `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), b.len) };
            for (i, x) in bytes.iter_mut().enumerate() {
                *x = pattern(b.id, i);
            }
        }
        self.requested += b.requested;
        self.live.push(b);
    }

    fn verify(&self, b: &Live) {
        if b.route == Route::Typed {
            return;
        }
        // SAFETY: a live block of at least `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), b.len) };
        if let Some(i) = (0..b.len).find(|&i| bytes[i] != pattern(b.id, i)) {
            panic!(
                "step {}: byte {i} of block {} at {:p} ({:?}) is {:#04x}, expected {:#04x}",
                self.step,
                b.id,
                b.ptr,
                b.route,
                bytes[i],
                pattern(b.id, i)
            );
        }
    }

    fn create(&mut self, size: usize, align: usize) {
        let Ok(layout) = Layout::from_size_align(size, align) else {
            return;
        };
        let valid = size != 0 && align <= PAGE_SIZE && size.next_multiple_of(align) <= PAGE_SIZE;
        match PoolAllocator::create(self.heap, layout) {
            Ok(handle) => {
                assert!(valid, "step {}: pool {layout:?} accepted", self.step);
                self.pools.push(PoolModel {
                    handle,
                    typed: None,
                    layout,
                    live: 0,
                    destroyed: false,
                });
            }
            Err(PoolError::InvalidBlockLayout { .. }) => {
                assert!(!valid, "step {}: pool {layout:?} refused", self.step);
            }
            Err(PoolError::OutOfPages(_)) => {
                assert!(valid, "step {}: invalid pool got to the pages", self.step);
                self.failed("create");
            }
            Err(e) => panic!("step {}: create {layout:?}: {e:?}", self.step),
        }
    }

    fn create_typed(&mut self, kind: u8) {
        let made = match kind % 3 {
            0 => ObjectPool::new(self.heap).map(|p| (Layout::new::<Tracked>(), Typed::Tracked(p))),
            1 => ObjectPool::new(self.heap).map(|p| (Layout::new::<Wide>(), Typed::Wide(p))),
            _ => ObjectPool::new(self.heap).map(|p| (Layout::new::<u8>(), Typed::Unit(p))),
        };
        match made {
            Ok((layout, typed)) => {
                let handle = match &typed {
                    Typed::Tracked(p) => p.allocator(),
                    Typed::Wide(p) => p.allocator(),
                    Typed::Unit(p) => p.allocator(),
                };
                self.pools.push(PoolModel {
                    handle,
                    typed: Some(typed),
                    layout,
                    live: 0,
                    destroyed: false,
                });
            }
            Err(PoolError::OutOfPages(_)) => self.failed("ObjectPool::new"),
            Err(e) => panic!("step {}: ObjectPool::new: {e:?}", self.step),
        }
    }

    fn alloc(&mut self, p: usize, how: u8) {
        let id = self.next_id;
        self.next_id += 1;
        let (layout, destroyed) = (self.pools[p].layout, self.pools[p].destroyed);
        let drops_before = self.drops;
        // The block, and whether it stays live; `None` for a refusal.
        let result: Result<Option<NonNull<u8>>, ()> = match &self.pools[p].typed {
            None => match self.pools[p].handle.allocate_block() {
                Ok(ptr) => {
                    assert!(!destroyed, "step {}: destroyed pool allocated", self.step);
                    Ok(Some(ptr))
                }
                Err(AllocError::NoSuchPool) => {
                    assert!(destroyed, "step {}: live pool not found", self.step);
                    return;
                }
                Err(AllocError::OutOfPages { .. }) => Err(()),
                Err(e) => panic!("step {}: pool alloc: {e:?}", self.step),
            },
            Some(Typed::Tracked(pool)) => {
                typed_alloc(pool, Tracked::new(id), how, Tracked::check, &mut self.drops)
            }
            Some(Typed::Wide(pool)) => {
                typed_alloc(pool, Wide::new(id), how, Wide::check, &mut self.drops)
            }
            Some(Typed::Unit(pool)) => typed_alloc(pool, (), how, |_| {}, &mut self.drops),
        };
        match result {
            Ok(Some(ptr)) => {
                let typed = self.pools[p].typed.is_some();
                let b = Live {
                    ptr,
                    pool: p,
                    route: if typed { Route::Typed } else { Route::Handle },
                    len: if typed {
                        layout.size()
                    } else {
                        layout.size().next_multiple_of(layout.align())
                    },
                    requested: layout.size().max(1),
                    id,
                };
                self.pools[p].live += 1;
                self.insert(b, layout.align());
            }
            Ok(None) => {
                // Allocated and given back at once (`into_inner` or a dropped box); its drop
                // is counted (but for `()`, which has no drop).
                assert!(self.drops <= drops_before + 1);
            }
            Err(()) => {
                self.failed("pool alloc");
            }
        }
    }

    fn alloc_via(&mut self, p: usize, size: usize, align: usize) {
        let pool = &self.pools[p];
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        let fits = !pool.destroyed && size <= pool.layout.size() && align <= pool.layout.align();
        match pool.handle.allocate(layout) {
            Ok(block) => {
                assert!(
                    fits,
                    "step {}: {layout:?} from a pool of {:?}",
                    self.step, pool.layout
                );
                assert!(block.len() >= size);
                let id = self.next_id;
                self.next_id += 1;
                let b = Live {
                    ptr: block.cast(),
                    pool: p,
                    route: Route::Allocator(layout),
                    len: size,
                    requested: pool.layout.size(),
                    id,
                };
                self.pools[p].live += 1;
                self.insert(b, align);
            }
            Err(_) => {
                if fits {
                    self.failed("Allocator::allocate");
                }
            }
        }
    }

    fn free(&mut self, index: usize) {
        let b = self.live.swap_remove(index);
        assert!(self.ranges.remove(&b.ptr.addr().get()).is_some());
        self.requested -= b.requested;
        self.verify(&b);
        match b.route {
            Route::General(layout) => {
                // SAFETY: allocated by this heap with this layout, freed once.
                unsafe { self.heap.dealloc(b.ptr.as_ptr(), layout) };
                return;
            }
            // SAFETY: allocated from this pool's handle, freed once.
            Route::Handle => unsafe { self.pools[b.pool].handle.deallocate_block(b.ptr) },
            // SAFETY: allocated through this handle's `Allocator` with this layout.
            Route::Allocator(layout) => unsafe {
                self.pools[b.pool].handle.deallocate(b.ptr, layout)
            },
            Route::Typed => {
                if !matches!(self.pools[b.pool].typed, Some(Typed::Unit(_))) {
                    self.drops += 1;
                }
                // SAFETY: a live value of this pool's type from `allocate_raw`/`into_raw`, freed
                // once; a typed block always has its `ObjectPool` (it is not dropped while the
                // pool has blocks).
                unsafe {
                    match self.pools[b.pool].typed.as_ref().expect("typed pool") {
                        Typed::Tracked(pool) => pool.deallocate_raw(b.ptr.cast()),
                        Typed::Wide(pool) => pool.deallocate_raw(b.ptr.cast()),
                        Typed::Unit(pool) => pool.deallocate_raw(b.ptr.cast()),
                    }
                }
            }
        }
        self.pools[b.pool].live -= 1;
    }

    fn destroy(&mut self, p: usize) {
        let (live, destroyed) = (self.pools[p].live, self.pools[p].destroyed);
        if self.pools[p].typed.is_some() && live == 0 {
            // Dropping the `ObjectPool` destroys its (empty) pool.
            self.pools[p].typed = None;
            self.pools[p].destroyed = true;
            assert_eq!(self.pools[p].handle.allocate_block(), Err(AllocError::NoSuchPool));
            return;
        }
        match self.pools[p].handle.destroy() {
            Ok(()) => {
                assert!(
                    !destroyed && live == 0,
                    "step {}: pool destroyed",
                    self.step
                );
                self.pools[p].destroyed = true;
            }
            Err(PoolError::NoSuchPool) => assert!(destroyed, "step {}: pool lost", self.step),
            Err(PoolError::PoolInUse { live_blocks }) => {
                assert!(!destroyed, "step {}", self.step);
                assert_eq!(live_blocks, live, "step {}: live blocks", self.step);
            }
            Err(e) => panic!("step {}: destroy: {e:?}", self.step),
        }
    }

    fn general(&mut self, size: usize) {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size.
        let ptr = unsafe { self.heap.alloc(layout) };
        match NonNull::new(ptr) {
            Some(ptr) => {
                let id = self.next_id;
                self.next_id += 1;
                let b = Live {
                    ptr,
                    pool: usize::MAX,
                    route: Route::General(layout),
                    len: size,
                    requested: size,
                    id,
                };
                self.insert(b, 8);
            }
            None => self.failed("GlobalAlloc::alloc"),
        }
    }

    fn apply(&mut self, op: PoolOp) {
        let mask = match op {
            PoolOp::Create { fail, .. }
            | PoolOp::CreateTyped { fail, .. }
            | PoolOp::Alloc { fail, .. }
            | PoolOp::AllocVia { fail, .. }
            | PoolOp::General { fail, .. } => fail,
            _ => FailMask(0),
        };
        self.begin(mask);
        let pools = self.pools.len();
        match op {
            PoolOp::Create {
                size, align_log2, ..
            } => {
                if pools < MAX_POOLS {
                    self.create(usize::from(size) % 4200, 1 << (align_log2 % 14));
                }
            }
            PoolOp::CreateTyped { kind, .. } => {
                if pools < MAX_POOLS {
                    self.create_typed(kind);
                }
            }
            PoolOp::Alloc { pool, how, .. } => {
                if pools > 0 {
                    self.alloc(usize::from(pool) % pools, how);
                }
            }
            PoolOp::AllocVia {
                pool,
                size,
                align_log2,
                ..
            } => {
                if pools > 0 {
                    let size = (usize::from(size) % 4300).max(1);
                    self.alloc_via(usize::from(pool) % pools, size, 1 << (align_log2 % 13));
                }
            }
            PoolOp::Free { index } => {
                if !self.live.is_empty() {
                    self.free(usize::from(index) % self.live.len());
                }
            }
            PoolOp::Destroy { pool } => {
                if pools > 0 {
                    self.destroy(usize::from(pool) % pools);
                }
            }
            PoolOp::General { size, .. } => self.general(usize::from(size) % 6000 + 1),
            PoolOp::Trim => self.heap.lock().expect("initialised").trim(),
        }
        self.check();
        self.step += 1;
    }

    fn check(&self) {
        let heap = self.heap.lock().expect("initialised");
        if let Err(e) = heap.check_invariants() {
            panic!(
                "step {}: invariant broken: {e}\n{}",
                self.step,
                heap.stats()
            );
        }
        let s = heap.stats();
        assert_eq!(
            s.pages.total,
            heap.source().mapped_pages(),
            "step {}\n{s}",
            self.step
        );
        assert_eq!(
            s.requested_bytes, self.requested,
            "step {}: requested bytes\n{s}",
            self.step
        );
        let pools = self.pools.iter().filter(|p| !p.destroyed).count();
        assert_eq!(s.user_pools, pools, "step {}: user pools\n{s}", self.step);
        drop(heap);
        assert_eq!(
            DROPS.load(Ordering::Relaxed),
            self.drops,
            "step {}: drops",
            self.step
        );
    }

    fn finish(mut self) {
        self.begin(FailMask(0));
        while !self.live.is_empty() {
            self.free(self.live.len() - 1);
        }
        for p in 0..self.pools.len() {
            if !self.pools[p].destroyed {
                self.destroy(p);
                assert!(self.pools[p].destroyed, "an empty pool is destroyed");
            }
        }
        self.check();
        let mut heap = self.heap.lock().expect("initialised");
        heap.trim();
        let s = heap.stats();
        assert_eq!(s.requested_bytes, 0);
        assert_eq!(
            heap.source().mapped_pages(),
            s.pages.root + s.pages.page_map,
            "only root runs and page-map nodes may stay mapped after trim\n{s}"
        );
    }
}

/// Allocates `value` from a typed pool the way `how % 4` says; `Ok(Some(ptr))` if it stays
/// live, `Ok(None)` if it was handed back at once, `Err(())` if refused (the value is dropped
/// then too). Counts the drops it causes in `drops`.
fn typed_alloc<T>(
    pool: &ObjectPool<'_, T, SpinLock, FuzzSource>,
    value: T,
    how: u8,
    check: fn(&T),
    drops: &mut u64,
) -> Result<Option<NonNull<u8>>, ()> {
    // Zero-sized values are not counted (they have no drop glue here).
    let counted = u64::from(core::mem::needs_drop::<T>());
    let refused = |e: AllocError, drops: &mut u64| {
        assert!(
            matches!(e, AllocError::OutOfPages { .. }),
            "typed alloc: {e:?}"
        );
        *drops += counted;
        Err(())
    };
    match how % 4 {
        0 => match pool.allocate(value) {
            Ok(b) => {
                check(&b);
                Ok(Some(PoolBox::into_raw(b).cast()))
            }
            Err(e) => refused(e, drops),
        },
        1 => match pool.allocate_raw(value) {
            Ok(ptr) => Ok(Some(ptr.cast())),
            Err(e) => refused(e, drops),
        },
        2 => match pool.allocate(value) {
            Ok(b) => {
                let v = PoolBox::into_inner(b);
                check(&v);
                drop(v);
                *drops += counted;
                Ok(None)
            }
            Err(e) => refused(e, drops),
        },
        _ => match pool.allocate(value) {
            Ok(b) => {
                check(&b);
                drop(b);
                *drops += counted;
                Ok(None)
            }
            Err(e) => refused(e, drops),
        },
    }
}

/// Replays `scenario` on a fresh heap, panicking on the first discrepancy.
pub fn run(scenario: Scenario) {
    DROPS.store(0, Ordering::Relaxed);
    let pages = ARENAS[usize::from(scenario.arena) % ARENAS.len()];
    let heap: FuzzHeap = LockedHeap::empty();
    heap.init(FuzzSource::new(pages))
        .expect("the first root run");
    let mut model = Model {
        heap: &heap,
        pools: Vec::new(),
        live: Vec::new(),
        ranges: BTreeMap::new(),
        requested: 0,
        next_id: 1,
        drops: 0,
        step: 0,
    };
    for op in scenario.ops {
        model.apply(op);
    }
    model.finish();
}
