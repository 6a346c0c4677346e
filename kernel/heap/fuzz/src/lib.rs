//! The fuzzing harness of the heap core, shared by the targets in `fuzz_targets/`.
//!
//! A fuzz input decodes (with the `arbitrary` crate) into a [`Scenario`]: an arena size and a
//! sequence of [`Op`]s — allocate, free, reallocate (to any size, or by a small step), create a
//! user pool, allocate from and free to a pool, destroy a pool, trim. [`run`] replays it on a
//! fresh [`Heap`] over a [`FuzzSource`] and checks, after every operation:
//!
//! * every returned block is aligned, and its usable range (`usable_size` for general blocks,
//!   the pool stride for pool blocks) overlaps no other live block;
//! * every usable byte of every block is patterned when it is handed out and checked when it is
//!   freed or reallocated (the kept prefix must survive a move, and the old block must be intact
//!   after a failed reallocation);
//! * [`Heap::check_invariants`] passes, the heap's page count equals the pages the source has
//!   mapped, and its requested-byte count equals the model's;
//! * a failure is an `OutOfPages` error (never a panic), and only happens in an operation during
//!   which the page source actually refused a map;
//! * pool operations answer as the model says: invalid layouts and stale handles are rejected,
//!   a pool with live blocks cannot be destroyed.
//!
//! At the end every block is freed, every pool destroyed and the heap trimmed; then only root
//! runs and the page-map nodes that record them may remain mapped.
//!
//! # Out-of-memory paths
//!
//! Each operation that can map pages carries a byte of failure bits: the `j`-th map call the
//! heap makes during that operation (for `j < 8`) is refused when bit `j` is set, so the fuzzer
//! steers exactly which step of an operation (root run, page-map node, chunk, large region,
//! descriptor run, pool header run) runs out. The arena itself is small in some scenarios
//! ([`Config::arena_pages`]), so real exhaustion happens too.
//!
//! The two targets differ only in their [`Config`]: [`HEAP_OPS`] spreads sizes over every class
//! and the large allocator, [`LARGE_OPS`] concentrates on large blocks (region blocks, the page-run
//! threshold at 64 KiB, page runs, in-place resizes).
//!
//! Two more harnesses live in their own modules: [`pools`] (target `pool_ops`: user pools
//! through `PoolAllocator` and `ObjectPool` on a `LockedHeap` over [`FuzzSource`]) and
//! [`page_source`] (target `page_source_ops`: the kernel's frame allocator, page tables and heap
//! window on the simulated machine of `kernel/host`).

pub mod page_source;
pub mod pools;

use std::alloc::Layout;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use kheap::testing::ArenaSource;
use kheap::{AllocError, Heap, PAGE_SIZE, PageSource, PageSourceError, PoolError, PoolId};

/// What a target varies: the size distribution, the arenas, the step of small resizes.
#[derive(Debug)]
pub struct Config {
    /// Inclusive size ranges; an [`Size`]'s tier picks one (repeat a range to weight it).
    pub size_tiers: &'static [(usize, usize)],
    /// Arena sizes in pages; the scenario picks one. Small arenas make real exhaustion likely.
    pub arena_pages: &'static [usize],
    /// Largest alignment is `1 << max_align_log2`.
    pub max_align_log2: u32,
    /// A [`Op::Resize`] changes the size by `delta * resize_unit` bytes.
    pub resize_unit: isize,
}

/// Sizes up to 384 KiB over every class and the large allocator; alignments up to 64 KiB.
pub const HEAP_OPS: Config = Config {
    size_tiers: &[
        (0, 64),
        (0, 64),
        (65, 512),
        (513, PAGE_SIZE),
        (PAGE_SIZE + 1, 64 * 1024),
        (64 * 1024 + 1, 384 * 1024),
    ],
    // 1 MiB (exhausts within a few large blocks), 8 MiB, 32 MiB.
    arena_pages: &[256, 2048, 8192],
    max_align_log2: 16,
    resize_unit: 1,
};

/// Mostly large blocks: region-sized, around the 64 KiB page-run threshold, page runs up to
/// 512 KiB; resizes in steps of 64 bytes (up to 2 MiB either way).
pub const LARGE_OPS: Config = Config {
    size_tiers: &[
        (PAGE_SIZE + 1, 64 * 1024),
        (PAGE_SIZE + 1, 64 * 1024),
        (60 * 1024, 68 * 1024),
        (64 * 1024 + 1, 512 * 1024),
        (0, PAGE_SIZE),
    ],
    // 2 MiB, 16 MiB, 64 MiB.
    arena_pages: &[512, 4096, 16384],
    max_align_log2: 16,
    resize_unit: 64,
};

/// A size: `tier` picks a range of [`Config::size_tiers`], `raw` a size inside it.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Size {
    tier: u8,
    raw: u32,
}

/// Failure bits for one operation: the `j`-th page-source map call of the operation is refused
/// when bit `j` is set (calls after the eighth always go to the arena).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct FailMask(pub u8);

/// One step of a scenario. Indices pick among the live blocks (or pools) modulo their count.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Op {
    /// `allocate` with a size and an alignment of `1 << (align_log2 % (max + 1))`.
    Alloc {
        /// Requested size.
        size: Size,
        /// Alignment exponent.
        align_log2: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `deallocate` (or `pool_deallocate`, for a pool block) of a live block.
    Free {
        /// Which live block.
        index: u16,
    },
    /// `reallocate` a general block to a new size.
    Realloc {
        /// Which general block.
        index: u16,
        /// New size.
        size: Size,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `reallocate` a general block by a small step (same class, in-place large resizes).
    Resize {
        /// Which general block.
        index: u16,
        /// Change in units of [`Config::resize_unit`].
        delta: i16,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `create_pool` with any size (0 and more than a page included) and alignment up to 8 KiB.
    CreatePool {
        /// Object size (taken modulo 4200, so some are too large).
        size: u16,
        /// Alignment exponent, modulo 14 (8 KiB is invalid).
        align_log2: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `pool_allocate` from a pool, live or destroyed.
    PoolAlloc {
        /// Which pool.
        pool: u8,
        /// Map calls to refuse.
        fail: FailMask,
    },
    /// `pool_deallocate` of a live block of a pool.
    PoolFree {
        /// Which pool.
        pool: u8,
        /// Which of its live blocks.
        index: u16,
    },
    /// `destroy_pool` on a pool, live or destroyed.
    DestroyPool {
        /// Which pool.
        pool: u8,
    },
    /// `trim`.
    Trim,
}

/// A fuzz input: the arena (an index into [`Config::arena_pages`]) and the operations.
#[derive(Debug, Arbitrary)]
pub struct Scenario {
    /// Which arena size.
    pub arena: u8,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

/// A page source over an [`ArenaSource`] that refuses the map calls the current operation's
/// [`FailMask`] names, and counts refusals (its own and the arena's) so the harness can tell a
/// justified allocation failure from a spurious one.
#[derive(Debug)]
pub struct FuzzSource {
    arena: ArenaSource,
    /// Failure bits of the current operation.
    mask: Cell<u8>,
    /// Map calls in the current operation so far.
    calls: Cell<u32>,
    /// Map calls refused in the current operation so far.
    refused: Cell<u32>,
}

impl FuzzSource {
    /// A source over a fresh arena of `pages` pages that refuses nothing yet.
    pub fn new(pages: usize) -> Self {
        Self {
            arena: ArenaSource::new(pages),
            mask: Cell::new(0),
            calls: Cell::new(0),
            refused: Cell::new(0),
        }
    }

    /// Starts an operation that refuses the map calls `mask` names.
    pub fn begin(&self, mask: FailMask) {
        self.mask.set(mask.0);
        self.calls.set(0);
        self.refused.set(0);
    }

    /// Map calls refused since [`begin`](Self::begin).
    pub fn refused(&self) -> u32 {
        self.refused.get()
    }

    /// Pages the arena has mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.arena.mapped_pages()
    }

    /// One map call: refused if the current operation's mask names it, else `map` on the arena;
    /// a failure either way is counted as a refusal.
    fn map_with(
        &mut self,
        map: impl FnOnce(&mut ArenaSource) -> Result<NonNull<u8>, PageSourceError>,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let refuse = call < 8 && self.mask.get() & (1 << call) != 0;
        let result = if refuse {
            Err(PageSourceError::OutOfMemory)
        } else {
            map(&mut self.arena)
        };
        if result.is_err() {
            self.refused.set(self.refused.get() + 1);
        }
        result
    }
}

// SAFETY: every successful map or growth is the arena's (which upholds the contract: disjoint,
// page aligned, valid until unmapped); a refusal maps nothing; unmaps and the window are
// forwarded unchanged.
unsafe impl PageSource for FuzzSource {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        self.map_with(|arena| arena.map_pages(count))
    }

    /// A map call like `map_pages` for the failure mask; the arena places the run.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        self.map_with(|arena| arena.map_pages_aligned(count, align, aligned_page))
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: the caller's guarantees are the arena's, which mapped every page we handed out.
        unsafe { self.arena.unmap_pages(ptr, count) }
    }

    /// Counts as a map call for the failure mask; a refused growth is not an allocation failure
    /// (the heap moves the block instead), so it is not counted as a refusal.
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let refuse = call < 8 && self.mask.get() & (1 << call) != 0;
        !refuse && self.arena.grow_pages(ptr, count, extra)
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        self.arena.window()
    }
}

/// Whom a live block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The general allocator, with the block's layout alignment.
    General { align: usize },
    /// A user pool (index into `Model::pools`).
    Pool(usize),
}

/// A live block in the model.
#[derive(Debug, Clone, Copy)]
struct Block {
    ptr: NonNull<u8>,
    /// Requested size.
    size: usize,
    /// Bytes patterned and owned (usable size, or the pool stride).
    usable: usize,
    id: u64,
    owner: Owner,
}

/// A user pool in the model.
#[derive(Debug)]
struct PoolModel {
    id: PoolId,
    size: usize,
    align: usize,
    live: usize,
    destroyed: bool,
}

/// The byte a block of id `id` holds at offset `i` (varies with the id, with the offset, and
/// every 256 bytes, so a shifted or swapped copy does not match).
fn pattern(id: u64, i: usize) -> u8 {
    ((id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        ^ (i as u8).wrapping_mul(31)
        ^ ((i >> 8) as u8).wrapping_mul(7)
}

fn fill(b: &Block) {
    // SAFETY: the block is live and owns `usable` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(b.ptr.as_ptr(), b.usable) };
    for (i, byte) in s.iter_mut().enumerate() {
        *byte = pattern(b.id, i);
    }
}

fn verify(b: &Block, len: usize, what: &str) {
    // SAFETY: the block is live (or was, for a moved block's prefix checked at its new place)
    // and owns at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), len) };
    if let Some(i) = s
        .iter()
        .enumerate()
        .position(|(i, &x)| x != pattern(b.id, i))
    {
        panic!(
            "{what}: byte {i} of block {} at {:#x} (size {}, usable {}) is {:#04x}, expected {:#04x}",
            b.id,
            b.ptr.addr(),
            b.size,
            b.usable,
            s[i],
            pattern(b.id, i)
        );
    }
}

/// The heap under test and everything the harness knows it should hold.
struct Model<'c> {
    cfg: &'c Config,
    heap: Heap<FuzzSource>,
    live: Vec<Block>,
    /// Start → (end, id) of every live block's usable range, to catch overlaps.
    ranges: BTreeMap<usize, (usize, u64)>,
    pools: Vec<PoolModel>,
    /// Sum of the requested sizes of live blocks.
    requested: usize,
    next_id: u64,
    step: usize,
}

impl<'c> Model<'c> {
    fn new(cfg: &'c Config, arena: u8) -> Self {
        let pages = cfg.arena_pages[usize::from(arena) % cfg.arena_pages.len()];
        Self {
            cfg,
            heap: Heap::new(FuzzSource::new(pages)),
            live: Vec::new(),
            ranges: BTreeMap::new(),
            pools: Vec::new(),
            requested: 0,
            next_id: 1,
            step: 0,
        }
    }

    fn size(&self, s: Size) -> usize {
        let (lo, hi) = self.cfg.size_tiers[usize::from(s.tier) % self.cfg.size_tiers.len()];
        lo + s.raw as usize % (hi - lo + 1)
    }

    fn align(&self, log2: u8) -> usize {
        1 << (u32::from(log2) % (self.cfg.max_align_log2 + 1))
    }

    /// Records a block the heap just handed out: alignment, no overlap, then its pattern.
    fn insert(&mut self, b: Block, align: usize) {
        let start = b.ptr.addr().get();
        assert_eq!(
            start % align,
            0,
            "step {}: block {} at {start:#x} not aligned to {align}",
            self.step,
            b.id
        );
        let end = start + b.usable.max(1);
        if let Some((&s, &(e, id))) = self.ranges.range(..=start).next_back() {
            assert!(
                e <= start,
                "step {}: block {} [{start:#x}..{end:#x}) overlaps block {id} [{s:#x}..{e:#x})",
                self.step,
                b.id
            );
        }
        if let Some((&s, &(e, id))) = self.ranges.range(start..).next() {
            assert!(
                s >= end,
                "step {}: block {} [{start:#x}..{end:#x}) overlaps block {id} [{s:#x}..{e:#x})",
                self.step,
                b.id
            );
        }
        self.ranges.insert(start, (end, b.id));
        self.requested += b.size;
        fill(&b);
        self.live.push(b);
    }

    /// Forgets live block `index` (its bytes are checked by the caller as appropriate).
    fn forget(&mut self, index: usize) -> Block {
        let b = self.live.swap_remove(index);
        assert!(self.ranges.remove(&b.ptr.addr().get()).is_some());
        self.requested -= b.size;
        b
    }

    /// An allocation failed: it must be for lack of pages, with a refusal behind it.
    fn failed(&self, e: AllocError, what: &str) {
        assert!(
            matches!(e, AllocError::OutOfPages { .. }),
            "step {}: {what} failed with {e:?}",
            self.step
        );
        assert!(
            self.heap.source().refused() > 0,
            "step {}: {what} failed ({e}) although the page source refused nothing",
            self.step
        );
    }

    fn general_usable(&self, ptr: NonNull<u8>, size: usize, align: usize) -> usize {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: `ptr` is a live block of this heap allocated with `layout`.
        let usable = unsafe { self.heap.usable_size(ptr, layout) };
        assert!(
            usable >= size,
            "step {}: usable size {usable} of {ptr:p} below its size {size}",
            self.step
        );
        usable
    }

    fn alloc(&mut self, size: usize, align: usize) {
        let layout = Layout::from_size_align(size, align).unwrap();
        match self.heap.allocate(layout) {
            Ok(ptr) => {
                let usable = self.general_usable(ptr, size, align);
                let b = Block {
                    ptr,
                    size,
                    usable,
                    id: self.next_id,
                    owner: Owner::General { align },
                };
                self.next_id += 1;
                self.insert(b, align);
            }
            Err(e) => self.failed(e, "allocate"),
        }
    }

    fn free(&mut self, index: usize) {
        let b = self.forget(index);
        verify(&b, b.usable, "free");
        match b.owner {
            Owner::General { align } => {
                let layout = Layout::from_size_align(b.size, align).unwrap();
                // SAFETY: allocated by this heap with this layout, freed once.
                unsafe { self.heap.deallocate(b.ptr, layout) };
            }
            Owner::Pool(p) => {
                // SAFETY: allocated from this pool, which is live (it has a live block), once.
                unsafe { self.heap.pool_deallocate(self.pools[p].id, b.ptr) };
                self.pools[p].live -= 1;
            }
        }
    }

    /// Index into `live` of the `nth` (modulo their count) general block, if there is one.
    fn nth_general(&self, nth: u16) -> Option<usize> {
        let general = |b: &&Block| matches!(b.owner, Owner::General { .. });
        let count = self.live.iter().filter(general).count();
        if count == 0 {
            return None;
        }
        let nth = usize::from(nth) % count;
        self.live
            .iter()
            .enumerate()
            .filter(|(_, b)| general(b))
            .nth(nth)
            .map(|(i, _)| i)
    }

    fn realloc(&mut self, index: usize, new_size: usize) {
        let old = self.live[index];
        let Owner::General { align } = old.owner else {
            unreachable!("only general blocks are reallocated")
        };
        verify(&old, old.usable, "before realloc");
        let layout = Layout::from_size_align(old.size, align).unwrap();
        // SAFETY: a live block of this heap with this layout.
        match unsafe { self.heap.reallocate(old.ptr, layout, new_size) } {
            Ok(ptr) => {
                self.forget(index);
                let usable = self.general_usable(ptr, new_size, align);
                let moved = Block {
                    ptr,
                    size: new_size,
                    usable,
                    ..old
                };
                // The requested prefix must have survived (in place or copied).
                verify(&moved, old.size.min(new_size), "kept prefix after realloc");
                self.insert(moved, align);
            }
            Err(e) => {
                self.failed(e, "reallocate");
                verify(&old, old.usable, "old block after a failed realloc");
            }
        }
    }

    fn create_pool(&mut self, size: usize, align: usize) {
        let valid = size != 0 && align <= PAGE_SIZE && size.next_multiple_of(align) <= PAGE_SIZE;
        match self.heap.create_pool(size, align) {
            Ok(id) => {
                assert!(valid, "step {}: pool ({size}, {align}) accepted", self.step);
                let layout = self.heap.pool_layout(id).expect("layout of a new pool");
                assert_eq!((layout.size(), layout.align()), (size, align));
                self.pools.push(PoolModel {
                    id,
                    size,
                    align,
                    live: 0,
                    destroyed: false,
                });
            }
            Err(PoolError::InvalidBlockLayout { .. }) => {
                assert!(!valid, "step {}: pool ({size}, {align}) refused", self.step);
            }
            Err(PoolError::OutOfPages(_)) => {
                assert!(valid, "step {}: invalid pool got to the pages", self.step);
                assert!(
                    self.heap.source().refused() > 0,
                    "step {}: create_pool out of pages although nothing was refused",
                    self.step
                );
            }
            Err(e) => panic!("step {}: create_pool failed with {e:?}", self.step),
        }
    }

    fn pool_allocate(&mut self, p: usize) {
        let (id, size, align, destroyed) = {
            let m = &self.pools[p];
            (m.id, m.size, m.align, m.destroyed)
        };
        match self.heap.pool_allocate(id) {
            Ok(ptr) => {
                assert!(!destroyed, "step {}: destroyed {id} allocated", self.step);
                let b = Block {
                    ptr,
                    size,
                    usable: size.next_multiple_of(align),
                    id: self.next_id,
                    owner: Owner::Pool(p),
                };
                self.next_id += 1;
                self.pools[p].live += 1;
                self.insert(b, align);
            }
            Err(AllocError::NoSuchPool) => {
                assert!(destroyed, "step {}: live {id} not found", self.step);
            }
            Err(e) => {
                assert!(!destroyed, "step {}: destroyed {id}: {e:?}", self.step);
                self.failed(e, "pool_allocate");
            }
        }
    }

    fn destroy_pool(&mut self, p: usize) {
        let m = &self.pools[p];
        let (id, live, destroyed) = (m.id, m.live, m.destroyed);
        let result = self.heap.destroy_pool(id);
        match result {
            Ok(()) => {
                assert!(
                    !destroyed && live == 0,
                    "step {}: {id} destroyed",
                    self.step
                );
                self.pools[p].destroyed = true;
                assert_eq!(self.heap.pool_layout(id), Err(PoolError::NoSuchPool));
            }
            Err(PoolError::NoSuchPool) => assert!(destroyed, "step {}: {id} lost", self.step),
            Err(PoolError::PoolInUse { live_blocks }) => {
                assert!(!destroyed, "step {}: destroyed {id} in use", self.step);
                assert_eq!(live_blocks, live, "step {}: live blocks of {id}", self.step);
            }
            Err(e) => panic!("step {}: destroy_pool({id}) failed with {e:?}", self.step),
        }
    }

    fn apply(&mut self, op: Op) {
        let mask = match op {
            Op::Alloc { fail, .. }
            | Op::Realloc { fail, .. }
            | Op::Resize { fail, .. }
            | Op::CreatePool { fail, .. }
            | Op::PoolAlloc { fail, .. } => fail,
            _ => FailMask(0),
        };
        self.heap.source().begin(mask);
        match op {
            Op::Alloc {
                size, align_log2, ..
            } => self.alloc(self.size(size), self.align(align_log2)),
            Op::Free { index } => {
                if !self.live.is_empty() {
                    self.free(usize::from(index) % self.live.len());
                }
            }
            Op::Realloc { index, size, .. } => {
                if let Some(i) = self.nth_general(index) {
                    self.realloc(i, self.size(size));
                }
            }
            Op::Resize { index, delta, .. } => {
                if let Some(i) = self.nth_general(index) {
                    let step = isize::from(delta) * self.cfg.resize_unit;
                    let new_size = self.live[i].size.saturating_add_signed(step);
                    self.realloc(i, new_size);
                }
            }
            Op::CreatePool {
                size, align_log2, ..
            } => self.create_pool(usize::from(size) % 4200, 1 << (align_log2 % 14)),
            Op::PoolAlloc { pool, .. } => {
                if !self.pools.is_empty() {
                    self.pool_allocate(usize::from(pool) % self.pools.len());
                }
            }
            Op::PoolFree { pool, index } => {
                if !self.pools.is_empty() {
                    let p = usize::from(pool) % self.pools.len();
                    let mine = |b: &&Block| b.owner == Owner::Pool(p);
                    let count = self.live.iter().filter(mine).count();
                    if count > 0 {
                        let nth = usize::from(index) % count;
                        let (i, _) = self
                            .live
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| mine(b))
                            .nth(nth)
                            .unwrap();
                        self.free(i);
                    }
                }
            }
            Op::DestroyPool { pool } => {
                if !self.pools.is_empty() {
                    self.destroy_pool(usize::from(pool) % self.pools.len());
                }
            }
            Op::Trim => self.heap.trim(),
        }
        self.check();
        self.step += 1;
    }

    /// The checks after every step: the heap's own invariant walk and its counters.
    fn check(&self) {
        if let Err(e) = self.heap.check_invariants() {
            panic!(
                "step {}: invariant broken: {e}\n{}",
                self.step,
                self.heap.stats()
            );
        }
        if !self.heap.is_initialized() {
            assert_eq!(self.heap.source().mapped_pages(), 0);
            return;
        }
        let s = self.heap.stats();
        assert_eq!(
            s.pages.total,
            self.heap.source().mapped_pages(),
            "step {}: heap page count against the source\n{s}",
            self.step
        );
        assert_eq!(
            s.requested_bytes, self.requested,
            "step {}: requested bytes\n{s}",
            self.step
        );
        assert!(s.held_bytes >= s.requested_bytes, "step {}\n{s}", self.step);
    }

    /// Frees everything, destroys every pool, trims: only root runs and their page-map nodes
    /// may stay mapped.
    fn finish(mut self) {
        self.heap.source().begin(FailMask(0));
        while !self.live.is_empty() {
            self.free(self.live.len() - 1);
        }
        for p in 0..self.pools.len() {
            if !self.pools[p].destroyed {
                self.destroy_pool(p);
            }
        }
        self.heap.trim();
        self.check();
        if self.heap.is_initialized() {
            let s = self.heap.stats();
            assert_eq!(s.requested_bytes, 0);
            assert_eq!(
                self.heap.source().mapped_pages(),
                s.pages.root + s.pages.page_map,
                "only root runs and page-map nodes may stay mapped after trim\n{s}"
            );
            // Each root page needs at most the three lower levels of its path, plus the top.
            assert!(s.pages.page_map <= 1 + 3 * s.pages.root, "{s}");
        }
    }
}

/// Replays `scenario` on a fresh heap configured by `cfg`, panicking on the first discrepancy.
pub fn run(cfg: &Config, scenario: Scenario) {
    let mut model = Model::new(cfg, scenario.arena);
    for op in scenario.ops {
        model.apply(op);
    }
    model.finish();
}
