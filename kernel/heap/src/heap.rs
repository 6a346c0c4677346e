//! [`Heap`]: the allocator proper, with `&mut self` methods (locking is `locked`'s job).
//!
//! The heap state ([`HeapState`]: the general pools, their magazines, the large allocator, the
//! page map, the root-run chain and the counters) lives in the first root run, right after its
//! header; the `Heap` value itself is just the page source and a pointer to that state, so it is
//! cheap to construct in a `static` (`Heap::new` is `const` and maps nothing).
//!
//! `allocate` and `deallocate` are small `#[inline]` fast paths (a class lookup and a magazine
//! pop or push) whose every other case is a call in tail position to an out-of-line slow path:
//! that keeps the fast paths free of register saves and small enough to inline into callers.
//!
//! The state is reached through a raw pointer and split into disjoint field borrows for each
//! operation (pools are addressed by raw pointer, descriptors through root slots, magazine slots
//! one class at a time), so no reference ever spans memory another live pointer writes — which
//! keeps the code sound under the stacked/tree borrows models that Miri checks.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use crate::chunk::{ChunkDesc, Geometry, KIND_CHUNK};
use crate::debug::{self, Owner};
use crate::error::{AllocError, InvariantError, PoolError};
use crate::large::LargeAlloc;
use crate::magazine::{MAG_BATCH, MAG_CAP, Magazines, POOL_MAG_BATCH, POOL_MAG_CAP, PoolMagazine};
use crate::pagemap::{Entry, PageMap, Recording};
use crate::pool::{Ctx, KIND_POOL, Pool, UserPool};
use crate::root::{DESC_SLOT, POOL_SLOT, RootHeader, Roots};
use crate::size_class::{CLASS_SIZES, NUM_CLASSES, SizeClass, class_for, common_class};
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};
use crate::stats::{HeapStats, MAX_POOL_STATS, PageStats, PoolStats, UserPoolStats};

/// Names a user pool of a heap: the address of its header slot plus a generation number, so a
/// handle to a destroyed pool is recognised as stale (in O(1)) even if the slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId {
    addr: usize,
    generation: u32,
}

impl PoolId {
    /// The pool's generation number (unique among the pools a heap has created, until it
    /// wraps after 2^32 pools); shown in statistics and debug messages as `pool #n`.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl core::fmt::Display for PoolId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "pool #{}", self.generation)
    }
}

/// Everything the heap keeps, in its first root run. The fields every allocation and free
/// touches (`requested`, the page map's cached node, the magazine counts) are kept together in
/// front of the magazine slots.
#[repr(C)]
pub struct HeapState {
    /// The general size classes ([`CLASS_SIZES`]).
    classes: [Pool; NUM_CLASSES],
    /// Requests no class serves.
    large: LargeAlloc,
    /// Root runs of chunk descriptors (the first of them holds this state).
    descs: Roots,
    /// Root runs of user pool headers.
    pools: Roots,
    /// User pools, most recently created first.
    user_pools: *mut UserPool,
    /// Number of user pools.
    user_pool_count: usize,
    /// Generation of the next user pool.
    next_generation: u32,
    /// Pages mapped by the large allocator.
    large_pages: usize,
    /// Sum of the requested sizes of live allocations (layout sizes; pool object sizes).
    requested: usize,
    /// Start of the page source's window ([`PageSource::window`]), or null.
    window: *mut u8,
    /// Bytes in the window (0 without one).
    window_len: usize,
    /// Page → what it is.
    map: PageMap,
    /// Free blocks cached per general class (module `magazine`).
    mags: Magazines,
    /// The user pool named last, and its header: a repeated `pool_alloc`/`pool_free` on one
    /// pool skips the page-map lookup that checks its id. Cleared when a pool is destroyed, so
    /// it only ever names a live pool (an `addr` of 0 names none).
    last_pool: PoolId,
    /// Header of `last_pool`.
    last_pool_header: *mut UserPool,
}

/// Where the heap state starts in the first root run.
const STATE_OFFSET: usize = size_of::<RootHeader>().next_multiple_of(align_of::<HeapState>());

/// Pages of the first root run: header and heap state, plus room for some slots.
pub const FIRST_RUN_PAGES: usize =
    (STATE_OFFSET + size_of::<HeapState>() + 8 * DESC_SLOT).div_ceil(PAGE_SIZE);

const _: () = assert!(align_of::<HeapState>() <= PAGE_SIZE);

impl HeapState {
    fn new(descs: Roots, window: Option<NonNull<[u8]>>) -> Self {
        Self {
            classes: const {
                let mut pools = [const { Pool::new(Geometry::new(8)) }; NUM_CLASSES];
                let mut i = 0;
                while i < NUM_CLASSES {
                    pools[i] = Pool::new(Geometry::new(CLASS_SIZES[i]));
                    i += 1;
                }
                pools
            },
            large: LargeAlloc::new(),
            map: PageMap::new(),
            descs,
            pools: Roots::empty(POOL_SLOT),
            user_pools: ptr::null_mut(),
            user_pool_count: 0,
            next_generation: 1,
            requested: 0,
            large_pages: 0,
            window: window.map_or(ptr::null_mut(), |w| w.as_ptr().cast()),
            window_len: window.map_or(0, |w| w.len()),
            mags: Magazines::new(),
            last_pool: PoolId {
                addr: 0,
                generation: 0,
            },
            last_pool_header: ptr::null_mut(),
        }
    }
}

/// The general pool of class `i`.
///
/// # Safety
///
/// `st` must be the live heap state and `i < NUM_CLASSES`.
unsafe fn class_pool(st: *mut HeapState, i: usize) -> *mut Pool {
    // SAFETY: guaranteed by the caller.
    unsafe { (&raw mut (*st).classes).cast::<Pool>().add(i) }
}

/// A pool/chunk kernel heap over a page source `S`. See the crate documentation for the design.
///
/// All methods take `&mut self`; wrap it in [`LockedHeap`](crate::LockedHeap) to share it.
pub struct Heap<S: PageSource> {
    source: S,
    /// The heap state in the first root run; null until the first use.
    state: *mut HeapState,
}

// SAFETY: the heap exclusively owns every page it got from the source (state, chunks, nodes,
// large pages); nothing in it is tied to a thread, so it can move with its source.
unsafe impl<S: PageSource + Send> Send for Heap<S> {}

impl<S: PageSource> core::fmt::Debug for Heap<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("initialized", &!self.state.is_null())
            .finish_non_exhaustive()
    }
}

impl<S: PageSource> Heap<S> {
    /// A heap over `source`. Maps nothing: the root run is mapped by [`init`](Self::init) or
    /// on first use.
    pub const fn new(source: S) -> Self {
        Self {
            source,
            state: ptr::null_mut(),
        }
    }

    /// Maps the first root run now (otherwise the first request does). Idempotent.
    pub fn init(&mut self) -> Result<(), PageSourceError> {
        self.state().map(|_| ())
    }

    /// Whether the root run is mapped.
    pub fn is_initialized(&self) -> bool {
        !self.state.is_null()
    }

    /// Pages the heap keeps mapped while it holds no block and no user pool, once trimmed:
    /// the first root run and the page-map nodes on its path (4 to 7, depending on which
    /// 2 MiB, 1 GiB and 512 GiB lines the run straddles). 0 before the heap is initialised.
    pub fn idle_pages(&self) -> usize {
        if self.state.is_null() {
            return 0;
        }
        let base = self.state.addr() - STATE_OFFSET;
        FIRST_RUN_PAGES + PageMap::path_nodes(base, FIRST_RUN_PAGES)
    }

    /// The page source (for its own statistics).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The heap state, mapping the first root run on first use.
    fn state(&mut self) -> Result<*mut HeapState, PageSourceError> {
        if !self.state.is_null() {
            return Ok(self.state);
        }
        self.create_state()
    }

    #[cold]
    fn create_state(&mut self) -> Result<*mut HeapState, PageSourceError> {
        let base = self.source.map_pages(FIRST_RUN_PAGES)?;
        // SAFETY: the run is ours (fresh from the source) and large enough for the header,
        // the state at `STATE_OFFSET` (aligned: the run is page aligned) and the slots after.
        let st = unsafe {
            let descs = Roots::with_first_run(
                base,
                FIRST_RUN_PAGES,
                STATE_OFFSET + size_of::<HeapState>(),
                DESC_SLOT,
            );
            let st = base.as_ptr().add(STATE_OFFSET).cast::<HeapState>();
            st.write(HeapState::new(descs, self.source.window()));
            st
        };
        // SAFETY: `st` was just initialised; `map` is a field of it.
        let map = unsafe { &mut (*st).map };
        if let Err(e) = map.set_run(&mut self.source, base, FIRST_RUN_PAGES, Entry::Root(base)) {
            map.prune(&mut self.source);
            // SAFETY: the run is ours and nothing refers to it any more.
            unsafe { self.source.unmap_pages(base, FIRST_RUN_PAGES) };
            return Err(e);
        }
        self.state = st;
        Ok(st)
    }

    /// Splits the state for a pool operation.
    ///
    /// # Safety
    ///
    /// `st` must be this heap's live state; the returned borrows must not overlap other live
    /// borrows of `descs` or `map`.
    unsafe fn ctx(st: *mut HeapState, src: &mut S) -> Ctx<'_, S> {
        // SAFETY: guaranteed by the caller; `descs` and `map` are disjoint fields.
        unsafe {
            Ctx {
                src,
                roots: &mut (*st).descs,
                map: &mut (*st).map,
            }
        }
    }

    /// Splits the state for a large-allocator operation: the allocator and a page source that
    /// records its pages.
    ///
    /// # Safety
    ///
    /// As for [`ctx`](Self::ctx).
    unsafe fn large(st: *mut HeapState, src: &mut S) -> (&mut LargeAlloc, Recording<'_, S>) {
        // SAFETY: guaranteed by the caller; `large`, `map` and `large_pages` are disjoint fields.
        unsafe {
            (
                &mut (*st).large,
                Recording {
                    src,
                    map: &mut (*st).map,
                    pages: &mut (*st).large_pages,
                },
            )
        }
    }

    /// Allocates a block for `layout`. O(1) for class sizes (plus a page-source call when a
    /// pool needs a new chunk); large requests cost what the large allocator costs.
    ///
    /// A class-sized request is served from the class's magazine when it holds a block (the
    /// fast path: a table lookup and a pop); otherwise the magazine is refilled from the chunks
    /// first. If the page source refuses pages, the heap is [trimmed](Self::trim) — every cache
    /// (magazines, reserve chunks, the large allocator's cached region) is given back, and so are
    /// root runs and page-map nodes without a live entry (such as those a chunk that could not be
    /// created left) — and the request is tried once more, so a failure means the memory is
    /// really gone, not held by the heap.
    #[inline]
    pub fn allocate(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let st = self.state;
        if !st.is_null()
            && let Some(i) = common_class(layout)
            // SAFETY: `st` is live and `i` a class index.
            && let Some(p) = unsafe { Self::pop(st, i) }
        {
            // SAFETY: `st` is live.
            unsafe { (*st).requested += layout.size() };
            return Ok(p);
        }
        self.allocate_slow(layout)
    }

    /// Everything but the magazine hit: first use, refills, large requests, and the retry after
    /// trimming.
    #[inline(never)]
    fn allocate_slow(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        match self.allocate_uncached(layout) {
            Err(AllocError::OutOfPages { .. }) if !self.state.is_null() => {
                self.trim();
                self.allocate_uncached(layout)
            }
            result => result,
        }
    }

    fn allocate_uncached(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let st = self
            .state()
            .map_err(|cause| AllocError::OutOfPages { layout, cause })?;
        let p = match class_for(layout) {
            // SAFETY: `st` is live and `i` a class index; a successful refill leaves at least
            // one block in the magazine.
            SizeClass::Small(i) => unsafe {
                match Self::pop(st, i) {
                    Some(p) => p,
                    None => {
                        self.refill(st, i)
                            .map_err(|cause| AllocError::OutOfPages { layout, cause })?;
                        Self::pop(st, i).unwrap_unchecked()
                    }
                }
            },
            SizeClass::Large => {
                // SAFETY: `st` is live.
                let (large, mut rec) = unsafe { Self::large(st, &mut self.source) };
                large.allocate(&mut rec, layout)?
            }
        };
        // SAFETY: `st` is live.
        unsafe { (*st).requested += layout.size() };
        Ok(p)
    }

    /// Takes the most recently cached block of class `i` from its magazine; with `debug-checks`
    /// marks it allocated again.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `i < NUM_CLASSES`.
    #[inline]
    unsafe fn pop(st: *mut HeapState, i: usize) -> Option<NonNull<u8>> {
        // SAFETY: guaranteed by the caller.
        let p = unsafe { Magazines::pop(&raw mut (*st).mags, i) }?;
        #[cfg(feature = "debug-checks")]
        // SAFETY: as above; a cached block is a block of class `i`.
        unsafe {
            Self::mark_cached_block(st, i, p, true)
        };
        Some(p)
    }

    /// `debug-checks`: sets (`allocated`) or clears the allocated bit of the cached block `p` of
    /// class `i`.
    ///
    /// # Safety
    ///
    /// `st` must be the live state, `i < NUM_CLASSES`, and `p` a block of a chunk of class `i`.
    #[cfg(feature = "debug-checks")]
    unsafe fn mark_cached_block(st: *mut HeapState, i: usize, p: NonNull<u8>, allocated: bool) {
        // SAFETY: guaranteed by the caller.
        unsafe { Self::mark_cached(st, class_pool(st, i), p, allocated) }
    }

    /// `debug-checks`: sets (`allocated`) or clears the allocated bit of block `p`, cached in
    /// the magazine of `pool` (a class or a user pool).
    ///
    /// # Safety
    ///
    /// `st` must be the live state, `pool` a live list-chunk pool of it, and `p` a block of one
    /// of its chunks.
    #[cfg(feature = "debug-checks")]
    unsafe fn mark_cached(st: *mut HeapState, pool: *mut Pool, p: NonNull<u8>, allocated: bool) {
        // SAFETY: guaranteed by the caller; `map` and the pool are disjoint.
        unsafe {
            match (*st).map.lookup(p.addr().get()) {
                Entry::Chunk(d) => (*d.as_ptr()).set_allocated(&(*pool).geo, p, allocated),
                other => panic!(
                    "kheap: a magazine of {}-byte blocks holds {:#x}, which is not in a chunk \
                     ({other:?})",
                    (*pool).geo.stride,
                    p.addr()
                ),
            }
        }
    }

    /// Refills the (empty) magazine of class `i` with up to [`MAG_BATCH`] blocks from the
    /// class's chunks, mapping one new chunk if none has a free block.
    ///
    /// # Safety
    ///
    /// `st` must be the live state, `i < NUM_CLASSES`, and the magazine of class `i` empty.
    #[inline(never)]
    unsafe fn refill(&mut self, st: *mut HeapState, i: usize) -> Result<(), PageSourceError> {
        // SAFETY: guaranteed by the caller; the magazines, the class pools and the fields `ctx`
        // borrows (`descs`, `map`) are disjoint.
        unsafe {
            let mags = &raw mut (*st).mags;
            let room = Magazines::refill_room(mags, i, MAG_BATCH);
            let n = Self::ctx(st, &mut self.source).alloc_batch(class_pool(st, i), room)?;
            Magazines::set_len(mags, i, n);
        }
        Ok(())
    }

    /// Gives the `n` oldest blocks of class `i`'s magazine back to their chunks (one page-map
    /// lookup each); chunks that empty go to the reserve or back to the page source.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `i < NUM_CLASSES`.
    #[inline(never)]
    unsafe fn flush(&mut self, st: *mut HeapState, i: usize, n: usize) {
        // SAFETY: guaranteed by the caller; the magazines, the class pools and the fields `ctx`
        // borrows are disjoint. Every cached block is a block of a live chunk of class `i` that
        // counts it as used (so the chunk was not released under it), with the provenance of
        // its chunk page; it is given back exactly once, as it leaves the magazine here.
        unsafe {
            let (blocks, n) = Magazines::take_oldest(&raw mut (*st).mags, i, n);
            self.give_back(st, class_pool(st, i), &blocks[..n]);
        }
    }

    /// Gives blocks that left a magazine back to their chunks of `pool` (one page-map lookup
    /// each); chunks that empty go to the reserve or back to the page source.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `pool` a live list-chunk pool of it; every non-null entry
    /// of `blocks` a block of one of its chunks that counts it as used, with a provenance covering
    /// the block, given back exactly once.
    unsafe fn give_back(&mut self, st: *mut HeapState, pool: *mut Pool, blocks: &[*mut u8]) {
        // SAFETY: guaranteed by the caller; the pool and the fields `ctx` borrows are disjoint.
        unsafe {
            let stride = usize::from((*pool).geo.stride);
            let mut ctx = Self::ctx(st, &mut self.source);
            for &b in blocks {
                let Some(p) = NonNull::new(b) else { continue };
                if let Entry::Chunk(d) = ctx.map.lookup(b.addr()) {
                    ctx.free_block(pool, d.as_ptr(), p, stride);
                }
            }
        }
    }

    /// Empties every magazine into the chunks and returns every reserve chunk and the large
    /// allocator's cached region to the page source. O(classes × [`MAG_CAP`] + user pools).
    fn drop_caches(&mut self) {
        let st = self.state;
        if st.is_null() {
            return;
        }
        // SAFETY: `st` is live; pools are reached by raw pointer, disjoint from `descs`/`map`.
        unsafe {
            for i in 0..NUM_CLASSES {
                self.flush(st, i, MAG_CAP);
                Self::ctx(st, &mut self.source).drain_reserve(class_pool(st, i));
            }
            let mut up = (*st).user_pools;
            while !up.is_null() {
                self.pool_flush(st, up, POOL_MAG_CAP);
                Self::ctx(st, &mut self.source).drain_reserve(&raw mut (*up).pool);
                up = (*up).next;
            }
            let (large, mut rec) = Self::large(st, &mut self.source);
            large.release_cached(&mut rec);
        }
    }

    /// Frees a block.
    ///
    /// A class-sized block goes to its class's magazine; when the magazine is full, its older
    /// half goes back to the chunks first. The pointer the magazine keeps is rebuilt with a
    /// provenance that covers the whole block: that of the page source's window
    /// ([`PageSource::window`]) in a release build whose source has one (no lookup at all), and
    /// otherwise that of the block's chunk page, found with one page-map lookup.
    ///
    /// With `debug-checks`, a pointer that is not a live block of the class (or large block)
    /// `layout` maps to panics with a message naming it. Without, freeing anything else is
    /// undefined behaviour, except that a pointer outside the window (for a source without a
    /// window: outside every chunk and large-allocator page) is ignored.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`allocate`](Self::allocate) (or `reallocate`) of this heap with
    /// this `layout` (for `reallocate`: the new size and the old alignment), and must not have
    /// been freed since.
    #[inline]
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let st = self.state;
        if !st.is_null()
            && let Some(i) = common_class(layout)
            // SAFETY: `st` is live and `i` a class index; the caller vouches for `ptr`.
            && let Some(block) = unsafe { Self::freed_block(st, i, ptr) }
        {
            // SAFETY: as above; `block` is `ptr`, checked (with `debug-checks`) and with the
            // provenance of its chunk or window.
            unsafe { self.cache_freed(st, i, block, layout.size()) };
            return;
        }
        // A call in tail position only (a page-map cache miss included), so that the fast path
        // above needs no saved registers.
        // SAFETY: forwarded.
        unsafe { self.deallocate_slow(ptr, layout) }
    }

    /// The fast path's view of a freed block of class `i`: `ptr` rebuilt with a provenance that
    /// covers the whole block, or `None` to take the slow path.
    ///
    /// A release build rebuilds the pointer from the page source's window and looks nothing up;
    /// a pointer outside the window (every pointer, for a source without one) takes the slow
    /// path, which looks the page up. Keeping this path to a compare lets the compiler inline
    /// `deallocate` into its callers, which is worth more than the lookup it saves. With
    /// `debug-checks` the page map names the chunk (a cache miss of the page map also takes the
    /// slow path), and the block is checked (a live block of the class) and marked free but
    /// cached.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `i < NUM_CLASSES`; without `debug-checks`, `ptr` must be
    /// an allocated block of class `i`.
    #[inline(always)]
    unsafe fn freed_block(st: *mut HeapState, i: usize, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        #[cfg(not(feature = "debug-checks"))]
        // SAFETY: `st` is live (caller).
        unsafe {
            let _ = i;
            Self::window_block(st, ptr)
        }
        #[cfg(feature = "debug-checks")]
        // SAFETY: `st` is live; the page map names the live descriptor of the chunk holding
        // `ptr`, if any.
        unsafe {
            let Some(Entry::Chunk(d)) = (*st).map.lookup_hinted(ptr.addr().get()) else {
                return None;
            };
            Some(Self::chunk_block(st, i, d.as_ptr(), ptr))
        }
    }

    /// `ptr` rebuilt from the page source's window, if it lies inside it: then the pointer covers
    /// the whole block whatever the caller's pointer covered (`PageSource::window`'s contract).
    /// Release builds only: with `debug-checks` every free is checked through the page map.
    ///
    /// # Safety
    ///
    /// `st` must be the live state.
    #[cfg(not(feature = "debug-checks"))]
    #[inline(always)]
    unsafe fn window_block(st: *mut HeapState, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        // SAFETY: `st` is live (caller); the window is not null when it has a length.
        unsafe {
            let window = (*st).window;
            (ptr.addr().get().wrapping_sub(window.addr()) < (*st).window_len)
                .then(|| NonNull::new_unchecked(window).with_addr(ptr.addr()))
        }
    }

    /// `ptr` in chunk `d` rebuilt from the chunk's page pointer; with `debug-checks`, first
    /// checked to be a live block of class `i` and marked free but cached.
    ///
    /// # Safety
    ///
    /// `st` must be the live state, `i < NUM_CLASSES`, `d` the live descriptor of the chunk
    /// holding `ptr`; without `debug-checks`, `ptr` must be an allocated block of class `i`.
    #[inline(always)]
    unsafe fn chunk_block(
        st: *mut HeapState,
        i: usize,
        d: *mut ChunkDesc,
        ptr: NonNull<u8>,
    ) -> NonNull<u8> {
        let owner = Owner::Class {
            size: CLASS_SIZES[i],
        };
        // SAFETY: guaranteed by the caller; the class pool is live.
        unsafe { Self::pool_chunk_block(class_pool(st, i), d, ptr, owner) }
    }

    /// `ptr` in chunk `d` of `pool` rebuilt from the chunk's page pointer; with `debug-checks`,
    /// first checked to be a live block of the pool (`owner` names it in the message) and marked
    /// free but cached.
    ///
    /// # Safety
    ///
    /// `pool` must be a live list-chunk pool and `d` the live descriptor of the chunk holding
    /// `ptr`; without `debug-checks`, `ptr` must be an allocated block of `pool`.
    #[inline(always)]
    unsafe fn pool_chunk_block(
        pool: *mut Pool,
        d: *mut ChunkDesc,
        ptr: NonNull<u8>,
        owner: Owner,
    ) -> NonNull<u8> {
        #[cfg(feature = "debug-checks")]
        // SAFETY: `d` is live and its page holds `ptr`; the pool is live. After the check `ptr`
        // is an allocated block of the pool, so its bit may be cleared.
        unsafe {
            crate::pool::check_block(d, pool, ptr, owner);
            (*d).set_allocated(&(*pool).geo, ptr, false);
        }
        #[cfg(not(feature = "debug-checks"))]
        let _ = (pool, owner);
        // SAFETY: `d` is live (caller); its page pointer covers the whole chunk, so the block
        // rebuilt from it is valid for the whole block whatever the caller's pointer covered.
        unsafe { NonNull::new_unchecked((*d).page.with_addr(ptr.addr().get())) }
    }

    /// Caches a freed block of class `i` (of `size` requested bytes) in the class's magazine.
    ///
    /// # Safety
    ///
    /// `st` must be the live state, `i < NUM_CLASSES`, and `block` a block of class `i` the
    /// caller gives up, with a provenance covering the block (see `freed_block`).
    #[inline(always)]
    unsafe fn cache_freed(
        &mut self,
        st: *mut HeapState,
        i: usize,
        block: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: `st` is live and `i` a class index (caller).
        unsafe {
            let mags = &raw mut (*st).mags;
            if Magazines::is_full(mags, i) {
                // A call in tail position: the fast path below needs no saved registers.
                return self.flush_and_push(st, i, block, size);
            }
            Magazines::push(mags, i, block);
            (*st).requested -= size;
        }
    }

    /// [`cache_freed`](Self::cache_freed) with a full magazine: gives its older half back to
    /// the chunks, then caches `block`.
    ///
    /// # Safety
    ///
    /// As for `cache_freed`.
    #[inline(never)]
    unsafe fn flush_and_push(
        &mut self,
        st: *mut HeapState,
        i: usize,
        block: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            self.flush(st, i, MAG_BATCH);
            Magazines::push(&raw mut (*st).mags, i, block);
            (*st).requested -= size;
        }
    }

    /// Frees what the fast path does not: large blocks, and (with `debug-checks`, a panic)
    /// pointers that are not in a chunk page.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    #[inline(never)]
    unsafe fn deallocate_slow(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let st = self.state;
        if st.is_null() {
            debug::bad_large_free(ptr, layout, Entry::Empty);
            return;
        }
        match class_for(layout) {
            SizeClass::Small(i) => {
                // SAFETY: `st` is live.
                let entry = unsafe { (*st).map.lookup(ptr.addr().get()) };
                match entry {
                    // SAFETY: `st` is live, `i` a class index, `d` the live descriptor of the
                    // chunk holding `ptr`; the caller vouches for the rest.
                    Entry::Chunk(d) => unsafe {
                        let block = Self::chunk_block(st, i, d.as_ptr(), ptr);
                        self.cache_freed(st, i, block, layout.size())
                    },
                    other => debug::bad_free(
                        ptr,
                        Owner::Class {
                            size: CLASS_SIZES[i],
                        },
                        debug::Fault::NotHeap(other),
                    ),
                }
            }
            SizeClass::Large => {
                // SAFETY: `st` is live.
                let (large, mut rec) = unsafe { Self::large(st, &mut self.source) };
                match large_block(rec.map, ptr) {
                    Some(block) => {
                        #[cfg(feature = "debug-checks")]
                        check_large(rec.map, large, ptr, layout);
                        // SAFETY: the caller guarantees `ptr` is a live large block of this
                        // layout; `block` is the same address.
                        unsafe { large.deallocate(&mut rec, block, layout) };
                        // SAFETY: `st` is live.
                        unsafe { (*st).requested -= layout.size() };
                    }
                    None => {
                        debug::bad_large_free(ptr, layout, rec.map.lookup(ptr.addr().get()));
                    }
                }
            }
        }
    }

    /// Resizes a block to `new_size` bytes (same alignment): in place when the new size maps to
    /// the same class, or when the large allocator can resize it in place; otherwise allocate,
    /// copy, free. On failure the old block is untouched and still owned by the caller.
    ///
    /// A `new_size` that cannot form a layout with the old alignment fails with `TooLarge`
    /// (carrying the old layout).
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate) with `old`.
    pub unsafe fn reallocate(
        &mut self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let new = Layout::from_size_align(new_size, old.align())
            .map_err(|_| AllocError::TooLarge { layout: old })?;
        let st = self.state;
        if st.is_null() {
            return Err(AllocError::Uninitialized);
        }
        #[cfg(feature = "debug-checks")]
        // SAFETY: `st` is live.
        unsafe {
            self.check_live(st, ptr, old)
        };
        match (class_for(old), class_for(new)) {
            (SizeClass::Small(a), SizeClass::Small(b)) if a == b => {
                // SAFETY: `st` is live.
                unsafe { (*st).requested = (*st).requested - old.size() + new_size };
                return Ok(ptr);
            }
            (SizeClass::Large, SizeClass::Large) => {
                // SAFETY: `st` is live; the caller vouches for `ptr` and `old`.
                let resized = unsafe {
                    let (large, mut rec) = Self::large(st, &mut self.source);
                    large_block(rec.map, ptr)
                        .filter(|&block| large.resize_in_place(&mut rec, block, old, new_size))
                };
                if let Some(block) = resized {
                    // SAFETY: `st` is live.
                    unsafe { (*st).requested = (*st).requested - old.size() + new_size };
                    return Ok(block);
                }
            }
            _ => {}
        }
        let fresh = self.allocate(new)?;
        // SAFETY: both blocks are live and distinct; the old one has `old.size()` readable
        // bytes and the new one `new_size` writable bytes.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old.size().min(new_size));
            self.deallocate(ptr, old);
        }
        Ok(fresh)
    }

    /// `debug-checks`: panics, with the message [`deallocate`](Self::deallocate) would give,
    /// unless `ptr` is a live block allocated with `layout`. Reads nothing but the heap's own
    /// metadata (the page map says what a page is before its descriptor or header is read), so
    /// any pointer may be checked: the red-zone wrapper ([`Checked`](crate::Checked)) asks before
    /// it touches a block.
    #[cfg(feature = "debug-checks")]
    pub(crate) fn check_allocated(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let st = self.state;
        if st.is_null() {
            debug::bad_large_free(ptr, layout, Entry::Empty);
            return;
        }
        // SAFETY: `st` is live.
        unsafe { self.check_live(st, ptr, layout) }
    }

    /// `debug-checks`: panics unless `ptr` is a live block for `layout`.
    ///
    /// # Safety
    ///
    /// `st` must be the live state.
    #[cfg(feature = "debug-checks")]
    unsafe fn check_live(&mut self, st: *mut HeapState, ptr: NonNull<u8>, layout: Layout) {
        match class_for(layout) {
            SizeClass::Small(i) => {
                let owner = Owner::Class {
                    size: CLASS_SIZES[i],
                };
                // SAFETY: `st` is live.
                let entry = unsafe { (*st).map.get(ptr.addr().get()) };
                match entry {
                    // SAFETY: a live descriptor whose page holds `ptr`; a live class pool.
                    Entry::Chunk(d) => unsafe {
                        crate::pool::check_block(d.as_ptr(), class_pool(st, i), ptr, owner)
                    },
                    other => debug::bad_free(ptr, owner, debug::Fault::NotHeap(other)),
                }
            }
            SizeClass::Large => {
                // SAFETY: `st` is live.
                let (large, rec) = unsafe { Self::large(st, &mut self.source) };
                check_large(rec.map, large, ptr, layout);
            }
        }
    }

    /// Bytes usable in the block at `ptr` (at least `layout.size()`).
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of this heap allocated with `layout`.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>, layout: Layout) -> usize {
        match class_for(layout) {
            SizeClass::Small(i) => CLASS_SIZES[i],
            SizeClass::Large => {
                // SAFETY: the state is live (a block exists); only read.
                let st = unsafe { &*self.state };
                let block = large_block_in(st.map.get(ptr.addr().get()), ptr).unwrap_or(ptr);
                // SAFETY: the caller vouches for the block; `block` is the same address.
                unsafe { st.large.usable_size(block, layout) }
            }
        }
    }

    /// Creates a user pool of blocks that fit `size` bytes aligned to `align` (like Linux
    /// `kmem_cache_create`). Blocks are `size` rounded up to `align` — 1 to 7 byte blocks
    /// included, packed without rounding up to 8. Maps no chunk until the first allocation; may
    /// map a root page for the pool header.
    pub fn create_pool(&mut self, size: usize, align: usize) -> Result<PoolId, PoolError> {
        let invalid = PoolError::InvalidBlockLayout { size, align };
        if size == 0 || !align.is_power_of_two() || align > PAGE_SIZE {
            return Err(invalid);
        }
        let stride = size.next_multiple_of(align);
        if stride > PAGE_SIZE {
            return Err(invalid);
        }
        let st = self.state().map_err(PoolError::OutOfPages)?;
        // SAFETY: `st` is live; `pools` and `map` are disjoint fields.
        let slot = unsafe { (*st).pools.alloc(&mut self.source, &mut (*st).map) }
            .map_err(PoolError::OutOfPages)?;
        let up = slot.cast::<UserPool>().as_ptr();
        // SAFETY: `st` is live; the slot is ours and large enough for a pool header.
        let generation = unsafe {
            let generation = (*st).next_generation;
            (*st).next_generation = generation.wrapping_add(1);
            up.write(UserPool {
                kind: KIND_POOL,
                generation,
                size: size as u32,
                align: align as u32,
                next: (*st).user_pools,
                pool: Pool::new(Geometry::new(stride)),
                mag: PoolMagazine::new(),
            });
            (*st).user_pools = up;
            (*st).user_pool_count += 1;
            generation
        };
        Ok(PoolId {
            addr: slot.addr().get(),
            generation,
        })
    }

    /// The user pool `id` names, if it is live. O(1): a compare when `id` named the pool of the
    /// previous pool call, else a page-map lookup and two loads.
    #[inline]
    fn user_pool(&self, id: PoolId) -> Option<*mut UserPool> {
        let st = self.state;
        if st.is_null() {
            return None;
        }
        // SAFETY: `st` is live; the cache names a live pool or none (`addr` 0, which no id has).
        unsafe {
            if (*st).last_pool == id {
                return Some((*st).last_pool_header);
            }
        }
        self.user_pool_lookup(st, id)
    }

    /// [`user_pool`](Self::user_pool) past the cache: checks `id` through the page map and
    /// remembers the pool it names.
    #[inline(never)]
    fn user_pool_lookup(&self, st: *mut HeapState, id: PoolId) -> Option<*mut UserPool> {
        // SAFETY: `st` is live.
        let map = unsafe { &(*st).map };
        let Entry::Root(run) = map
            .lookup_hinted(id.addr)
            .unwrap_or_else(|| map.get(id.addr))
        else {
            return None;
        };
        // SAFETY: the page map says `run` is a live root run.
        let slot = unsafe { Roots::slot_at(run, id.addr, POOL_SLOT) }?;
        let up = slot.cast::<UserPool>().as_ptr();
        // SAFETY: a slot handed out at least once starts with its kind byte; only a pool slot
        // is read further.
        let live = unsafe { (*up).kind == KIND_POOL && (*up).generation == id.generation };
        if !live {
            return None;
        }
        // SAFETY: `st` is live (the caller's); nothing borrows these fields now.
        unsafe {
            (*st).last_pool = id;
            (*st).last_pool_header = up;
        }
        Some(up)
    }

    /// The layout (object size and alignment) pool `id` was created with.
    pub fn pool_layout(&self, id: PoolId) -> Result<Layout, PoolError> {
        let up = self.user_pool(id).ok_or(PoolError::NoSuchPool)?;
        // SAFETY: a live pool header.
        let (size, align) = unsafe { ((*up).size as usize, (*up).align as usize) };
        Layout::from_size_align(size, align).map_err(|_| PoolError::NoSuchPool)
    }

    /// Allocates one block from pool `id`. O(1) (plus a page-source call for a new chunk).
    /// Pools of 8-byte blocks and more answer from their magazine first, as the general classes
    /// do (refilled from the chunks in batches); 1–7-byte pools go to their chunks directly.
    /// Like [`allocate`](Self::allocate), it trims the heap and tries once more when
    /// the page source refuses.
    #[inline]
    pub fn pool_alloc(&mut self, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        let st = self.state;
        // The fast path, small enough to inline: the pool of the previous call, a cached block.
        // SAFETY: `st` is live when not null; the id cache names a live pool or none.
        unsafe {
            if !st.is_null() && (*st).last_pool == id {
                let up = (*st).last_pool_header;
                if let Some(p) = Self::pool_pop(st, up) {
                    (*st).requested += (*up).size as usize;
                    return Ok(p);
                }
            }
        }
        self.pool_alloc_slow(id)
    }

    /// [`pool_alloc`](Self::pool_alloc) past its fast path: the id check through the page map,
    /// refills, the retry after trimming.
    #[inline(never)]
    fn pool_alloc_slow(&mut self, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        let up = self.user_pool(id).ok_or(AllocError::NoSuchPool)?;
        let st = self.state;
        // SAFETY: `up` is a live pool header (in a root slot, disjoint from the state), and
        // `st` the live state (the pool exists).
        let p = match unsafe { Self::pool_pop(st, up) } {
            Some(p) => p,
            // SAFETY: as above; trimming releases chunks, regions, and root runs and map
            // nodes without a live entry: never the first root run (the state) nor a live pool.
            None => unsafe {
                self.pool_alloc_uncached(st, up).or_else(|_| {
                    self.trim();
                    self.pool_alloc_uncached(st, up)
                })
            }
            .map_err(|cause| {
                // SAFETY: as above.
                let (size, align) = unsafe { ((*up).size as usize, (*up).align as usize) };
                AllocError::OutOfPages {
                    layout: Layout::from_size_align(size, align).unwrap_or(Layout::new::<u8>()),
                    cause,
                }
            })?,
        };
        // SAFETY: `st` is live; `up` a live pool header.
        unsafe { (*st).requested += (*up).size as usize };
        Ok(p)
    }

    /// Takes the most recently cached block of pool `up`'s magazine; with `debug-checks` marks
    /// it allocated again.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `up` a live pool header of it.
    #[inline]
    unsafe fn pool_pop(st: *mut HeapState, up: *mut UserPool) -> Option<NonNull<u8>> {
        // SAFETY: guaranteed by the caller; the header is not otherwise borrowed.
        let p = unsafe { (*up).mag.pop() }?;
        #[cfg(feature = "debug-checks")]
        // SAFETY: as above; a cached block is a block of the pool.
        unsafe {
            Self::mark_cached(st, &raw mut (*up).pool, p, true)
        };
        #[cfg(not(feature = "debug-checks"))]
        let _ = st;
        Some(p)
    }

    /// A block for pool `up` from its chunks: for a pool with a magazine, a refill of
    /// [`POOL_MAG_BATCH`] blocks (mapping one chunk at most) and then a pop.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `up` a live pool header of it with an empty magazine.
    #[inline(never)]
    unsafe fn pool_alloc_uncached(
        &mut self,
        st: *mut HeapState,
        up: *mut UserPool,
    ) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: guaranteed by the caller; the pool header lies in a root slot, disjoint from
        // the state fields `ctx` borrows.
        unsafe {
            let pool = &raw mut (*up).pool;
            if (*pool).geo.is_tiny() {
                return Self::ctx(st, &mut self.source).alloc(pool);
            }
            let room = (*up).mag.refill_room();
            let n = Self::ctx(st, &mut self.source).alloc_batch(pool, room)?;
            (*up).mag.set_len(n);
            // A successful refill wrote at least one block.
            Ok(Self::pool_pop(st, up).unwrap_unchecked())
        }
    }

    /// Gives the `n` oldest blocks of pool `up`'s magazine back to their chunks.
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `up` a live pool header of it.
    #[inline(never)]
    unsafe fn pool_flush(&mut self, st: *mut HeapState, up: *mut UserPool, n: usize) {
        // SAFETY: guaranteed by the caller. Every cached block is a block of a live chunk of the
        // pool that counts it as used, with the provenance of its chunk page (or the window);
        // it is given back exactly once, as it leaves the magazine here.
        unsafe {
            let (blocks, n) = (*up).mag.take_oldest(n);
            self.give_back(st, &raw mut (*up).pool, &blocks[..n]);
        }
    }

    /// Frees a block of pool `id`.
    ///
    /// With `debug-checks`, a stale pool or a pointer that is not a live block of the pool
    /// panics with a message naming both.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`pool_alloc`](Self::pool_alloc)`(id)` of this heap and not have
    /// been freed since.
    #[inline]
    pub unsafe fn pool_free(&mut self, id: PoolId, ptr: NonNull<u8>) {
        // The fast path of a release build, small enough to inline: the pool of the previous
        // call, a block inside the page source's window, room in the magazine.
        #[cfg(not(feature = "debug-checks"))]
        // SAFETY: `st` is live when not null; the id cache names a live pool or none; a block
        // inside the window may be reached through the window pointer (`PageSource`'s
        // contract), and the caller vouches that `ptr` is a block of the pool.
        unsafe {
            let st = self.state;
            if !st.is_null() && (*st).last_pool == id {
                let up = (*st).last_pool_header;
                if !(*up).pool.geo.is_tiny()
                    && let Some(block) = Self::window_block(st, ptr)
                    && (*up).mag.push(block)
                {
                    (*st).requested -= (*up).size as usize;
                    return;
                }
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.pool_free_slow(id, ptr) }
    }

    /// [`pool_free`](Self::pool_free) past its fast path.
    ///
    /// # Safety
    ///
    /// As for `pool_free`.
    #[inline(never)]
    unsafe fn pool_free_slow(&mut self, id: PoolId, ptr: NonNull<u8>) {
        let Some(up) = self.user_pool(id) else {
            #[cfg(feature = "debug-checks")]
            panic!(
                "kheap: pool_free of {:#x} to {id}, which is not a live pool of this heap",
                ptr.addr()
            );
            #[cfg(not(feature = "debug-checks"))]
            return;
        };
        let st = self.state;
        // SAFETY: `up` is a live pool header.
        let (pool, size) = unsafe { (&raw mut (*up).pool, (*up).size as usize) };
        let owner = Owner::Pool {
            generation: id.generation,
            // SAFETY: as above.
            size: usize::from(unsafe { (*pool).geo.stride }),
        };
        // SAFETY: as above.
        if unsafe { (*pool).geo.is_tiny() } {
            // SAFETY: `st` is live; the caller vouches for `ptr`.
            if unsafe { Self::ctx(st, &mut self.source).free(pool, ptr, size, owner) } {
                // SAFETY: `st` is live.
                unsafe { (*st).requested -= size };
            }
            return;
        }
        // SAFETY: `st` is live, `pool` a live pool of it; the caller vouches for `ptr`.
        let Some(block) = (unsafe { Self::pool_freed_block(st, pool, ptr, owner) }) else {
            return;
        };
        // SAFETY: `up` is a live pool header and `st` the live state; `block` is a block of the
        // pool that its chunk counts as used, given up by the caller.
        unsafe {
            if !(*up).mag.push(block) {
                self.pool_flush(st, up, POOL_MAG_BATCH);
                (*up).mag.push(block);
            }
            (*st).requested -= size;
        }
    }

    /// The block of pool `pool` at `ptr`, rebuilt with a provenance covering the whole block
    /// (the window's in a release build whose source has one, else its chunk page's); with
    /// `debug-checks`, first checked to be a live block of the pool and marked free but cached.
    /// `None` for a pointer outside every chunk (with `debug-checks`: a panic naming it).
    ///
    /// # Safety
    ///
    /// `st` must be the live state and `pool` a live list-chunk pool of it; without
    /// `debug-checks`, `ptr` must be an allocated block of the pool.
    unsafe fn pool_freed_block(
        st: *mut HeapState,
        pool: *mut Pool,
        ptr: NonNull<u8>,
        owner: Owner,
    ) -> Option<NonNull<u8>> {
        #[cfg(not(feature = "debug-checks"))]
        // SAFETY: `st` is live (caller); the caller vouches that `ptr` is a block.
        if let Some(block) = unsafe { Self::window_block(st, ptr) } {
            return Some(block);
        }
        // SAFETY: `st` is live; the page map names the live descriptor of the chunk holding
        // `ptr`, if any; `pool` is live (caller).
        unsafe {
            match (*st).map.lookup(ptr.addr().get()) {
                Entry::Chunk(d) => Some(Self::pool_chunk_block(pool, d.as_ptr(), ptr, owner)),
                other => {
                    debug::bad_free(ptr, owner, debug::Fault::NotHeap(other));
                    None
                }
            }
        }
    }

    /// Destroys pool `id`, returning its chunks to the page source. Refuses while any block of
    /// the pool is allocated. Afterwards `id` is stale: every use of it fails with `NoSuchPool`.
    pub fn destroy_pool(&mut self, id: PoolId) -> Result<(), PoolError> {
        let up = self.user_pool(id).ok_or(PoolError::NoSuchPool)?;
        let st = self.state;
        // SAFETY: `up` is a live pool header and `st` the live state; the pool's reserve is
        // released before its slot, and the slot is unlinked before it is freed.
        unsafe {
            self.pool_flush(st, up, POOL_MAG_CAP);
            let live = (*up).pool.live();
            if live > 0 {
                return Err(PoolError::PoolInUse { live_blocks: live });
            }
            Self::ctx(st, &mut self.source).drain_reserve(&raw mut (*up).pool);
            let mut link: *mut *mut UserPool = &raw mut (*st).user_pools;
            while !(*link).is_null() && *link != up {
                link = &raw mut (**link).next;
            }
            if *link == up {
                *link = (*up).next;
            }
            (*st).user_pool_count -= 1;
            (*st).last_pool = PoolId {
                addr: 0,
                generation: 0,
            };
            (*st).last_pool_header = ptr::null_mut();
            (*st).pools.free(NonNull::new_unchecked(up).cast());
        }
        Ok(())
    }

    /// Returns every page the heap does not need for live blocks to the page source: the
    /// magazines are emptied into their chunks, every reserve chunk and the large allocator's
    /// cached region are unmapped, then every root run that no longer holds a live descriptor or
    /// pool header (the first one excepted), then every page-map node that records nothing.
    ///
    /// After every block is freed (and every user pool destroyed) and the heap is trimmed, it
    /// maps exactly what [`init`](Self::init) mapped: the first root run and the page-map nodes
    /// that record it. Linear in the number of root slots and page-map nodes (plus
    /// `NUM_CLASSES` × `MAG_CAP` cached blocks): meant for rare calls, such as after a workload or
    /// under memory pressure, not for every free.
    pub fn trim(&mut self) {
        let st = self.state;
        if st.is_null() {
            return;
        }
        self.drop_caches();
        // SAFETY: `st` is live; `descs`, `pools` and `map` are disjoint fields. Every chunk that
        // is still mapped holds a live block, so its descriptor slot is live and its run stays.
        unsafe {
            (*st).descs.release_empty(&mut self.source, &mut (*st).map);
            (*st).pools.release_empty(&mut self.source, &mut (*st).map);
            (*st).map.prune(&mut self.source);
        }
    }

    /// A snapshot of the heap's numbers. Linear in the number of user pools.
    pub fn stats(&self) -> HeapStats {
        let mut s = HeapStats::default();
        let st = self.state;
        for (i, c) in s.classes.iter_mut().enumerate() {
            c.block_size = CLASS_SIZES[i];
        }
        if st.is_null() {
            return s;
        }
        // SAFETY: `st` is live; only reads.
        let st = unsafe { &*st };
        let mut chunks = 0;
        let mut held = 0;
        for (i, (out, pool)) in s.classes.iter_mut().zip(st.classes.iter()).enumerate() {
            // SAFETY: the magazines are live and `i` a class index.
            let cached = unsafe { Magazines::len(&raw const st.mags, i) };
            *out = PoolStats::of(pool, cached);
            chunks += out.chunks;
            held += out.in_use * out.block_size;
        }
        let mut up = st.user_pools;
        let mut listed = 0;
        while !up.is_null() {
            // SAFETY: members of the user pool list are live pool headers.
            let u = unsafe { &*up };
            let ps = PoolStats::of(&u.pool, u.mag.len());
            chunks += ps.chunks;
            held += ps.in_use * ps.block_size;
            if listed < MAX_POOL_STATS {
                s.pools[listed] = Some(UserPoolStats {
                    id: PoolId {
                        addr: up.addr(),
                        generation: u.generation,
                    },
                    object_size: u.size as usize,
                    object_align: u.align as usize,
                    pool: ps,
                });
                listed += 1;
            } else {
                s.other_pools.add(&ps);
            }
            up = u.next;
        }
        s.user_pools = st.user_pool_count;
        s.large = st.large.stats();
        held += s.large.live_bytes;
        let root = st.descs.pages() + st.pools.pages();
        s.pages = PageStats {
            root,
            chunks,
            page_map: st.map.nodes(),
            large: st.large_pages,
            total: root + chunks + st.map.nodes() + st.large_pages,
        };
        s.requested_bytes = st.requested;
        s.held_bytes = held;
        s
    }

    /// Walks every structure of the heap and checks its invariants: the root-run chain and slot
    /// accounting, every pool's partial/full/empty lists, every chunk's free list (bounds,
    /// alignment, no cycles, counts), the page map against the chunks and root runs, the
    /// counters, and the large allocator's own checker. Linear in the heap's size.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let st = self.state;
        if st.is_null() {
            return Ok(());
        }
        // SAFETY: `st` is live; only reads.
        let s = unsafe { &*st };
        let (mut chunk_slots, mut pool_slots) = (0, 0);
        s.descs.check(&s.map, |kind, slot| {
            if kind != KIND_CHUNK {
                return Err(InvariantError::DescriptorCorrupt {
                    addr: slot.addr().get(),
                });
            }
            chunk_slots += 1;
            Ok(())
        })?;
        s.pools.check(&s.map, |kind, slot| {
            if kind != KIND_POOL {
                return Err(InvariantError::DescriptorCorrupt {
                    addr: slot.addr().get(),
                });
            }
            pool_slots += 1;
            Ok(())
        })?;
        let mut chunks = 0;
        let mut held = 0;
        for (i, pool) in s.classes.iter().enumerate() {
            // SAFETY: `st` is live and `i` a class index (only the address is used).
            let this = unsafe { class_pool(st, i) };
            // SAFETY: the magazines are live, not changed during the walk, and `i` a class index.
            let cached = unsafe { Magazines::cached(&raw const s.mags, i) };
            pool.check(this, &s.map, cached, |_| chunks += 1)?;
            held += (pool.live() - cached.len()) * CLASS_SIZES[i];
        }
        let mut up = s.user_pools;
        let mut pools = 0;
        while !up.is_null() {
            // SAFETY: members of the user pool list are live pool headers.
            let u = unsafe { &*up };
            if u.kind != KIND_POOL || pools >= pool_slots {
                return Err(InvariantError::DescriptorCorrupt { addr: up.addr() });
            }
            let cached = u.mag.cached();
            u.pool
                .check(&raw const u.pool, &s.map, cached, |_| chunks += 1)?;
            held += (u.pool.live() - cached.len()) * usize::from(u.pool.geo.stride);
            pools += 1;
            up = u.next;
        }
        let addr = st.addr();
        let large = s.large.stats();
        held += large.live_bytes;
        let mut counts = crate::pagemap::EntryCounts::default();
        let nodes = s.map.for_each(|_, e| match e {
            Entry::Root(_) => counts.root += 1,
            Entry::Chunk(_) => counts.chunk += 1,
            Entry::Large(_) => counts.large += 1,
            Entry::Empty => {}
        });
        for (recorded, counted) in [
            (s.user_pool_count, pools),
            (pool_slots, pools),
            (chunk_slots, chunks),
            (counts.chunk, chunks),
            (counts.root, s.descs.pages() + s.pools.pages()),
            (s.large_pages, counts.large),
            (s.map.nodes(), nodes),
        ] {
            if recorded != counted {
                return Err(InvariantError::CountMismatch {
                    addr,
                    recorded,
                    counted,
                });
            }
        }
        if s.requested > held {
            return Err(InvariantError::CountMismatch {
                addr,
                recorded: s.requested,
                counted: held,
            });
        }
        s.large.check_invariants()
    }
}

/// `ptr` rebuilt with the provenance of the large-allocator mapping the page map records for
/// its page, or `None` if its page is not a large-allocator page.
///
/// The large allocator reads block headers in front of the block; the pointer a caller frees
/// may only carry the provenance of the block itself (a `Box`'s does, under Stacked Borrows),
/// so the heap never hands the caller's pointer on as is.
fn large_block(map: &mut PageMap, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
    large_block_in(map.lookup(ptr.addr().get()), ptr)
}

/// [`large_block`] given the page-map entry of `ptr`'s page.
fn large_block_in(entry: Entry, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
    match entry {
        Entry::Large(run) => Some(run.with_addr(ptr.addr())),
        _ => None,
    }
}

/// `debug-checks`: panics unless `ptr` is a live large block.
#[cfg(feature = "debug-checks")]
fn check_large(map: &mut PageMap, large: &LargeAlloc, ptr: NonNull<u8>, layout: Layout) {
    match large_block(map, ptr) {
        Some(block) if large.owns(block) => {}
        _ => debug::bad_large_free(ptr, layout, map.get(ptr.addr().get())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ArenaSource;
    use std::vec::Vec;

    fn heap(pages: usize) -> Heap<ArenaSource> {
        Heap::new(ArenaSource::new(pages))
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Pages that must stay mapped when no block is allocated and everything is trimmed: the
    /// first root run and the page-map nodes on its path, as right after `init`.
    fn assert_only_roots_left(h: &Heap<ArenaSource>) {
        let s = h.stats();
        h.check_invariants().unwrap();
        assert_eq!(s.pages.chunks, 0);
        assert_eq!(s.pages.large, 0);
        assert_eq!(s.pages.root, FIRST_RUN_PAGES, "{s}");
        assert_eq!(s.pages.root + s.pages.page_map, h.idle_pages(), "{s}");
        assert_eq!(h.source().mapped_pages(), h.idle_pages());
        assert_eq!(s.pages.total, h.source().mapped_pages());
        assert_eq!(s.requested_bytes, 0);
        assert_eq!(s.held_bytes, 0);
    }

    /// `seed + i` for `i` in `0..256`; blocks are filled and checked a period at a time (one
    /// memcpy/memcmp each: cheap under Miri, where byte loops are slow).
    fn period(seed: u8) -> [u8; 256] {
        core::array::from_fn(|i| seed.wrapping_add(i as u8))
    }

    fn fill(p: NonNull<u8>, len: usize, seed: u8) {
        let pat = period(seed);
        // SAFETY: the block has at least `len` bytes.
        let s = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) };
        for chunk in s.chunks_mut(256) {
            chunk.copy_from_slice(&pat[..chunk.len()]);
        }
    }

    fn check(p: NonNull<u8>, len: usize, seed: u8) {
        let pat = period(seed);
        // SAFETY: the block has at least `len` bytes.
        let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), len) };
        for chunk in s.chunks(256) {
            assert!(
                chunk == &pat[..chunk.len()],
                "block {:#x} was overwritten",
                p.addr()
            );
        }
    }

    #[test]
    fn root_page_layout_matches_the_crate_docs() {
        use core::mem::offset_of;
        let msg = "the root page layout changed: update the table in lib.rs";
        assert_eq!(STATE_OFFSET, 40, "{msg}");
        assert_eq!(size_of::<Pool>(), 56, "{msg}");
        assert_eq!(offset_of!(HeapState, classes), 0, "{msg}");
        assert_eq!(offset_of!(HeapState, large), 2016, "{msg}");
        assert_eq!(size_of::<LargeAlloc>(), 792, "{msg}");
        assert_eq!(offset_of!(HeapState, descs), 2808, "{msg}");
        assert_eq!(offset_of!(HeapState, pools), 2864, "{msg}");
        assert_eq!(offset_of!(HeapState, user_pools), 2920, "{msg}");
        assert_eq!(offset_of!(HeapState, requested), 2952, "{msg}");
        assert_eq!(offset_of!(HeapState, window), 2960, "{msg}");
        assert_eq!(offset_of!(HeapState, map), 2976, "{msg}");
        assert_eq!(size_of::<PageMap>(), 32, "{msg}");
        assert_eq!(offset_of!(HeapState, mags), 3008, "{msg}");
        assert_eq!(size_of::<Magazines>(), 36 * 4 + 36 * 64 * 8, "{msg}");
        assert_eq!(offset_of!(HeapState, last_pool), 21584, "{msg}");
        assert_eq!(size_of::<HeapState>(), 21608, "{msg}");
        assert_eq!(FIRST_RUN_PAGES, 6, "{msg}");
        let debug = cfg!(feature = "debug-checks");
        assert_eq!(DESC_SLOT, if debug { 104 } else { 32 }, "{msg}");
        assert_eq!(POOL_SLOT, 344, "{msg}");
        let first_slots =
            (FIRST_RUN_PAGES * PAGE_SIZE - STATE_OFFSET - size_of::<HeapState>()) / DESC_SLOT;
        assert_eq!(first_slots, if debug { 28 } else { 91 }, "{msg}");
        assert_eq!(
            (PAGE_SIZE - 40) / DESC_SLOT,
            if debug { 39 } else { 126 },
            "{msg}"
        );
        assert_eq!((PAGE_SIZE - 40) / POOL_SLOT, 11, "{msg}");
        let g1 = Geometry::new(1);
        let g7 = Geometry::new(7);
        assert_eq!(
            (g1.words, g1.capacity, g7.words, g7.capacity),
            (57, 3632, 9, 573),
            "{msg}"
        );
    }

    #[test]
    fn new_maps_nothing_until_first_use() {
        let mut h = heap(64);
        assert!(!h.is_initialized());
        assert_eq!(h.source().mapped_pages(), 0);
        h.check_invariants().unwrap();
        assert_eq!(h.stats().pages.total, 0);
        let p = h.allocate(layout(8, 8)).unwrap();
        assert!(h.is_initialized());
        let s = h.stats();
        assert_eq!(s.pages.root, FIRST_RUN_PAGES);
        assert_eq!(s.pages.chunks, 1);
        assert_eq!(s.pages.total, h.source().mapped_pages());
        h.check_invariants().unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { h.deallocate(p, layout(8, 8)) };
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn every_class_at_every_alignment() {
        let mut h = heap(if cfg!(miri) { 512 } else { 4096 });
        let mut live = Vec::new();
        // Miri: every class, but fewer alignments and sizes.
        let step = if cfg!(miri) { 8 } else { 2 };
        for (i, &c) in CLASS_SIZES.iter().enumerate() {
            let mut align = 1;
            while align <= PAGE_SIZE {
                let sizes = if cfg!(miri) {
                    &[c][..]
                } else {
                    &[c, c - c / 8, 1][..]
                };
                for &size in sizes {
                    let l = layout(size, align);
                    let p = h.allocate(l).unwrap();
                    assert_eq!(p.addr().get() % align, 0);
                    fill(p, size, i as u8);
                    live.push((p, l, i as u8));
                }
                align *= step;
            }
            // (Under Miri the walk costs more than the allocations; once at the end suffices.)
            if !cfg!(miri) {
                h.check_invariants().unwrap();
            }
        }
        let s = h.stats();
        assert_eq!(
            s.requested_bytes,
            live.iter().map(|(_, l, _)| l.size()).sum::<usize>()
        );
        for (p, l, seed) in live.drain(..).rev() {
            check(p, l.size(), seed);
            // SAFETY: allocated above with this layout.
            unsafe { h.deallocate(p, l) };
        }
        h.check_invariants().unwrap();
        h.trim();
        h.check_invariants().unwrap();
        assert_only_roots_left(&h);
    }

    /// Regression (found by Miri): the pointer a caller frees may carry the provenance of only
    /// the bytes it asked for (a `Box`'s does, under Stacked Borrows), so freeing must not write
    /// a 2-byte link through it for a 1-byte request, nor read the large allocator's header in
    /// front of the block through it.
    #[test]
    fn frees_through_pointers_that_cover_only_the_request() {
        let mut h = heap(128);
        for size in [1, 2, 100, 5000, 70_000] {
            let l = layout(size, 1);
            let p = h.allocate(l).unwrap();
            // SAFETY: a fresh block of at least `size` bytes; the slice covers exactly `size`.
            let bytes = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), size) };
            let narrow = NonNull::from(bytes).cast::<u8>();
            // SAFETY: allocated above with `l`; `narrow` is the same address.
            unsafe { h.deallocate(narrow, l) };
        }
        h.check_invariants().unwrap();
    }

    #[test]
    fn zero_sized_layouts_get_a_block() {
        let mut h = heap(64);
        let a = h.allocate(layout(0, 1)).unwrap();
        let b = h.allocate(layout(0, 64)).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.addr().get() % 64, 0);
        // SAFETY: allocated above with these layouts.
        unsafe {
            h.deallocate(a, layout(0, 1));
            h.deallocate(b, layout(0, 64));
        }
        h.check_invariants().unwrap();
    }

    #[test]
    fn partial_list_is_lifo_and_chunks_fill_before_new_ones() {
        let mut h = heap(64);
        let l = layout(64, 8);
        let blocks: Vec<_> = (0..128).map(|_| h.allocate(l).unwrap()).collect();
        assert_eq!(h.stats().pages.chunks, 2);
        // Free one block of the first (full) chunk and one of the second: the next allocation
        // refills the chunk that most recently became partial.
        // SAFETY: allocated above.
        unsafe {
            h.deallocate(blocks[5], l);
            h.deallocate(blocks[70], l);
        }
        assert_eq!(h.allocate(l).unwrap(), blocks[70]);
        assert_eq!(h.allocate(l).unwrap(), blocks[5]);
        assert_eq!(h.stats().pages.chunks, 2);
        h.check_invariants().unwrap();
    }

    #[test]
    fn empty_chunks_go_back_beyond_the_reserve() {
        let mut h = heap(256);
        let l = layout(2048, 8);
        let i = CLASS_SIZES.iter().position(|&c| c == 2048).unwrap();
        let n = 100;
        let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
        assert_eq!(h.stats().pages.chunks, n / 2);
        for &p in &blocks {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, l) };
        }
        h.check_invariants().unwrap();
        // The magazine took every block; each time it was full it gave its MAG_BATCH oldest
        // blocks back. Refills took one fresh chunk (two blocks) at a time, so blocks 2k and
        // 2k + 1 share a chunk, and the flushed blocks (the first ones freed) emptied whole
        // chunks: the reserve keeps some of them, the rest went back to the page source.
        let flushed = (n - MAG_CAP).div_ceil(MAG_BATCH) * MAG_BATCH;
        let s = h.stats();
        let c = s.classes[i];
        assert_eq!((c.in_use, c.cached), (0, n - flushed), "{s}");
        let reserve = Pool::new(Geometry::new(2048)).reserve_limit() as usize;
        assert_eq!(
            c.chunks,
            (n - flushed) / 2 + reserve.min(flushed / 2),
            "{s}"
        );
        assert_eq!(c.free, 2 * c.chunks);
        assert_eq!(s.pages.chunks, c.chunks);
        // Everything still mapped is reused without a page-source call.
        let calls = h.source().map_calls();
        let again: Vec<_> = (0..c.free).map(|_| h.allocate(l).unwrap()).collect();
        assert_eq!(h.source().map_calls(), calls);
        for p in again {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, l) };
        }
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn reallocate_in_place_and_by_moving() {
        let mut h = heap(1024);
        let l = layout(100, 8);
        let p = h.allocate(l).unwrap();
        fill(p, 100, 1);
        // 100 -> 104: same class (104), in place.
        // SAFETY: live block with layout `l`.
        let q = unsafe { h.reallocate(p, l, 104) }.unwrap();
        assert_eq!(p, q);
        // 104 -> 1000: moves, contents kept.
        // SAFETY: live block of size 104.
        let r = unsafe { h.reallocate(q, layout(104, 8), 1000) }.unwrap();
        assert_ne!(r, q);
        check(r, 100, 1);
        // Grow into the large allocator and back down.
        // SAFETY: live block of size 1000.
        let s = unsafe { h.reallocate(r, layout(1000, 8), 100_000) }.unwrap();
        check(s, 100, 1);
        // SAFETY: live block of size 100_000.
        let t = unsafe { h.reallocate(s, layout(100_000, 8), 90_000) }.unwrap();
        check(t, 100, 1);
        // SAFETY: live block of size 90_000.
        let u = unsafe { h.reallocate(t, layout(90_000, 8), 10) }.unwrap();
        check(u, 10, 1);
        h.check_invariants().unwrap();
        assert_eq!(h.stats().requested_bytes, 10);
        // SAFETY: live block of size 10.
        unsafe { h.deallocate(u, layout(10, 8)) };
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn page_runs_grow_in_place_when_the_next_pages_are_free() {
        let mut h = heap(1024);
        // Map and free a run of the final size first: its pages are free again, and the page-map
        // nodes that cover them stay (until `trim`), so growing into them maps nothing else
        // (where those nodes would land depends on the arena's address).
        let big = h.allocate(layout(400_000, 8)).unwrap();
        // SAFETY: live block of 400_000 bytes.
        unsafe { h.deallocate(big, layout(400_000, 8)) };
        let p = h.allocate(layout(100_000, 8)).unwrap();
        assert_eq!(p, big, "first fit: the freed run's start");
        fill(p, 100_000, 5);
        let before = h.stats().pages.large;
        // SAFETY: live block of 100_000 bytes.
        let q = unsafe { h.reallocate(p, layout(100_000, 8), 400_000) }.unwrap();
        assert_eq!(p, q, "the pages after the run were free: no move");
        assert_eq!(h.source().grow_calls(), 1);
        assert_eq!(h.stats().pages.large, before + 400_000 / PAGE_SIZE + 1 - 25);
        check(q, 100_000, 5);
        fill(q, 400_000, 6);
        h.check_invariants().unwrap();
        // With something mapped right after the run (first fit puts the next run there, unless
        // a page-map node took that page), growing moves the block instead.
        let blocker = h.allocate(layout(70_000, 8)).unwrap();
        let blocked = h
            .source()
            .is_mapped(q.addr().get() + 400_000usize.next_multiple_of(PAGE_SIZE));
        // SAFETY: live block of 400_000 bytes.
        let r = unsafe { h.reallocate(q, layout(400_000, 8), 800_000) }.unwrap();
        assert!(blocked, "the page after the run is taken");
        assert_ne!(r, q);
        check(r, 400_000, 6);
        h.check_invariants().unwrap();
        assert_eq!(h.stats().requested_bytes, 870_000);
        // SAFETY: live blocks with these layouts.
        unsafe {
            h.deallocate(blocker, layout(70_000, 8));
            h.deallocate(r, layout(800_000, 8));
        }
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn failed_reallocate_leaves_the_block_alone() {
        let mut h = heap(1024);
        let l = layout(64, 8);
        let p = h.allocate(l).unwrap();
        fill(p, 64, 9);
        h.source.fail_after(Some(0));
        // SAFETY: live block with layout `l`.
        let e = unsafe { h.reallocate(p, l, 8000) };
        assert!(matches!(e, Err(AllocError::OutOfPages { .. })), "{e:?}");
        // SAFETY: as above.
        let e = unsafe { h.reallocate(p, l, usize::MAX - 10) };
        assert!(matches!(e, Err(AllocError::TooLarge { .. })), "{e:?}");
        check(p, 64, 9);
        h.check_invariants().unwrap();
        h.source.fail_after(None);
        // SAFETY: still live with layout `l`.
        unsafe { h.deallocate(p, l) };
        h.check_invariants().unwrap();
    }

    #[test]
    fn exhaustion_is_an_error_and_recoverable() {
        let sizes = if cfg!(miri) {
            &[100, 5000][..]
        } else {
            &[8, 100, 2048, 5000, 70_000][..]
        };
        for &size in sizes {
            let mut h = heap(if cfg!(miri) { 32 } else { 64 });
            let l = layout(size, 8);
            let mut counts = Vec::new();
            for _ in 0..2 {
                let mut live = Vec::new();
                loop {
                    match h.allocate(l) {
                        Ok(p) => live.push(p),
                        Err(AllocError::OutOfPages { layout, .. }) => {
                            assert_eq!(layout, l);
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                h.check_invariants().unwrap();
                counts.push(live.len());
                for p in live {
                    // SAFETY: allocated above with `l`.
                    unsafe { h.deallocate(p, l) };
                }
                h.trim();
                h.check_invariants().unwrap();
                assert_only_roots_left(&h);
            }
            assert!(counts[0] > 0, "size {size}");
            assert_eq!(counts[0], counts[1], "size {size}");
        }
    }

    #[test]
    fn root_page_failure_is_reported() {
        let mut h = heap(0);
        let e = h.allocate(layout(8, 8));
        assert!(matches!(e, Err(AllocError::OutOfPages { .. })));
        assert!(!h.is_initialized());
        assert_eq!(
            h.create_pool(8, 8),
            Err(PoolError::OutOfPages(PageSourceError::OutOfMemory))
        );
        let mut h = heap(64);
        h.source.fail_after(Some(1)); // the root run maps, its page-map nodes do not
        assert!(h.allocate(layout(8, 8)).is_err());
        assert!(!h.is_initialized());
        assert_eq!(h.source().mapped_pages(), 0);
    }

    #[test]
    fn many_chunks_chain_root_pages() {
        let n = if cfg!(miri) { 150 } else { 1000 };
        let mut h = heap(2 * n);
        let l = layout(4096, 4096);
        let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
        let s = h.stats();
        assert!(s.pages.root > 1);
        assert_eq!(s.pages.chunks, n);
        h.check_invariants().unwrap();
        for p in blocks {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, l) };
        }
        h.trim();
        h.check_invariants().unwrap();
        // Trimming releases every descriptor run but the first.
        assert_only_roots_left(&h);
        // The same workload chains the same number of runs again, and gives them back again.
        let blocks: Vec<_> = (0..n).map(|_| h.allocate(l).unwrap()).collect();
        assert_eq!(h.stats().pages.root, s.pages.root);
        h.check_invariants().unwrap();
        for p in blocks {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, l) };
        }
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn user_pools() {
        let mut h = heap(512);
        assert!(matches!(
            h.create_pool(0, 8),
            Err(PoolError::InvalidBlockLayout { .. })
        ));
        assert!(matches!(
            h.create_pool(8, 3),
            Err(PoolError::InvalidBlockLayout { .. })
        ));
        assert!(matches!(
            h.create_pool(8, 8192),
            Err(PoolError::InvalidBlockLayout { .. })
        ));
        assert!(matches!(
            h.create_pool(4097, 1),
            Err(PoolError::InvalidBlockLayout { .. })
        ));
        let a = h.create_pool(24, 8).unwrap();
        let b = h.create_pool(3, 1).unwrap();
        let c = h.create_pool(4096, 4096).unwrap();
        assert_eq!(h.pool_layout(b).unwrap(), layout(3, 1));
        assert_eq!(h.stats().pages.chunks, 0, "pools are lazy");
        let n = if cfg!(miri) { 150 } else { 3000 };
        let mut live = Vec::new();
        for i in 0..n {
            for (id, size) in [(a, 24), (b, 3)] {
                let p = h.pool_alloc(id).unwrap();
                fill(p, size, i as u8);
                live.push((id, p, size, i as u8));
            }
        }
        let p = h.pool_alloc(c).unwrap();
        assert_eq!(p.addr().get() % 4096, 0);
        h.check_invariants().unwrap();
        let s = h.stats();
        assert_eq!(s.user_pools, 3);
        let sb = s.pools.iter().flatten().find(|u| u.id == b).unwrap();
        assert_eq!(sb.pool.in_use, n);
        assert_eq!(sb.pool.block_size, 3);
        assert_eq!(
            sb.pool.chunks,
            n.div_ceil(usize::from(Geometry::new(3).capacity))
        );
        assert_eq!(
            h.destroy_pool(a),
            Err(PoolError::PoolInUse { live_blocks: n })
        );
        for (id, p, size, seed) in live.drain(..) {
            check(p, size, seed);
            // SAFETY: allocated above from `id`.
            unsafe { h.pool_free(id, p) };
        }
        // SAFETY: allocated above from `c`.
        unsafe { h.pool_free(c, p) };
        h.check_invariants().unwrap();
        for id in [a, b, c] {
            h.destroy_pool(id).unwrap();
            assert_eq!(h.destroy_pool(id), Err(PoolError::NoSuchPool));
            assert_eq!(h.pool_alloc(id), Err(AllocError::NoSuchPool));
            h.check_invariants().unwrap();
        }
        // A new pool reuses the slot but not the identity.
        let d = h.create_pool(24, 8).unwrap();
        assert_ne!(d, a);
        assert_eq!(h.pool_alloc(a), Err(AllocError::NoSuchPool));
        h.destroy_pool(d).unwrap();
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn user_pool_magazines_cache_freed_blocks() {
        let mut h = heap(256);
        let a = h.create_pool(40, 8).unwrap();
        let b = h.create_pool(64, 64).unwrap();
        // A freed block comes back first (LIFO), from the magazine, with no chunk work.
        let p = h.pool_alloc(a).unwrap();
        // SAFETY: allocated above from `a`.
        unsafe { h.pool_free(a, p) };
        assert_eq!(h.pool_alloc(a).unwrap(), p);
        // Alternating pools (the id cache switches) keep their blocks apart.
        let q = h.pool_alloc(b).unwrap();
        assert_eq!(q.addr().get() % 64, 0);
        // SAFETY: allocated above from `b`, then `a`.
        unsafe {
            h.pool_free(b, q);
            h.pool_free(a, p);
        }
        assert_eq!(h.pool_alloc(b).unwrap(), q);
        // More frees than a magazine holds: the oldest go back to their chunks.
        let blocks: Vec<_> = (0..3 * POOL_MAG_CAP)
            .map(|i| {
                let p = h.pool_alloc(a).unwrap();
                fill(p, 40, i as u8);
                p
            })
            .collect();
        for (i, &p) in blocks.iter().enumerate() {
            check(p, 40, i as u8);
            // SAFETY: allocated above from `a`.
            unsafe { h.pool_free(a, p) };
            h.check_invariants().unwrap();
        }
        let s = h.stats();
        let sa = s.pools.iter().flatten().find(|u| u.id == a).unwrap();
        assert_eq!(sa.pool.in_use, 0, "cached blocks count as free");
        assert!(sa.pool.cached > 0 && sa.pool.cached <= POOL_MAG_CAP);
        // Destroying a pool whose blocks sit in its magazine works and gives its chunks back.
        h.destroy_pool(a).unwrap();
        assert_eq!(h.pool_alloc(a), Err(AllocError::NoSuchPool));
        // SAFETY: allocated above from `b`.
        unsafe { h.pool_free(b, q) };
        h.trim();
        let s = h.stats();
        let sb = s.pools.iter().flatten().find(|u| u.id == b).unwrap();
        assert_eq!(
            (sb.pool.cached, sb.pool.chunks),
            (0, 0),
            "trim empties pool magazines"
        );
        h.destroy_pool(b).unwrap();
        h.trim();
        assert_only_roots_left(&h);
    }

    #[test]
    fn tiny_pools_pack_blocks_below_eight_bytes() {
        let mut h = heap(256);
        let sizes = if cfg!(miri) {
            &[7][..]
        } else {
            &[1, 2, 3, 4, 5, 6, 7][..]
        };
        for &size in sizes {
            let id = h.create_pool(size, 1).unwrap();
            let cap = usize::from(Geometry::new(size).capacity);
            let blocks: Vec<_> = (0..cap + 1).map(|_| h.pool_alloc(id).unwrap()).collect();
            let mut addrs: Vec<_> = blocks.iter().map(|p| p.addr().get()).collect();
            addrs.sort();
            assert!(addrs.windows(2).all(|w| w[1] - w[0] >= size));
            assert_eq!(h.stats().pools[0].unwrap().pool.chunks, 2);
            assert!(
                cap * size > PAGE_SIZE * 85 / 100,
                "size {size}: {cap} blocks"
            );
            for (i, p) in blocks.iter().enumerate() {
                fill(*p, size, i as u8);
            }
            for (i, p) in blocks.iter().enumerate() {
                check(*p, size, i as u8);
                // SAFETY: allocated above from `id`.
                unsafe { h.pool_free(id, *p) };
            }
            h.check_invariants().unwrap();
            h.destroy_pool(id).unwrap();
        }
    }

    #[test]
    fn stats_table_prints() {
        let mut h = heap(512);
        let id = h.create_pool(40, 8).unwrap();
        let _ = h.pool_alloc(id).unwrap();
        let _ = h.allocate(layout(64, 8)).unwrap();
        let _ = h.allocate(layout(10_000, 8)).unwrap();
        let s = h.stats();
        let text = std::format!("{s}");
        assert!(text.contains("class-64"), "{text}");
        assert!(text.contains("pool#1 (40/8)"), "{text}");
        assert!(!text.contains("class-8 "), "{text}");
        assert!(text.contains("large: 1 blocks"), "{text}");
        assert_eq!(s.requested_bytes, 40 + 64 + 10_000);
        assert!(s.held_bytes >= s.requested_bytes);
        std::println!("{text}");
    }

    #[test]
    fn many_user_pools_are_summarised() {
        let mut h = heap(512);
        let ids: Vec<_> = (0..MAX_POOL_STATS + 5)
            .map(|i| h.create_pool(8 + i, 8).unwrap())
            .collect();
        for &id in &ids {
            let _ = h.pool_alloc(id).unwrap();
        }
        let s = h.stats();
        assert_eq!(s.user_pools, ids.len());
        assert!(s.pools.iter().all(Option::is_some));
        assert_eq!(s.other_pools.in_use, 5);
        assert_eq!(s.other_pools.chunks, 5);
        h.check_invariants().unwrap();
    }

    /// The memory-return guarantee: exhausting the heap with small blocks chains descriptor
    /// runs and page-map leaves; freeing everything and trimming must bring the heap back to
    /// exactly the pages it mapped right after `init`.
    #[test]
    fn exhausted_with_small_blocks_then_trimmed_maps_what_init_mapped() {
        let (pages, sizes) = if cfg!(miri) {
            (64, &[64][..])
        } else {
            (1024, &[8, 64, 4096][..])
        };
        let mut h = heap(pages);
        h.init().unwrap();
        let init = h.source().mapped_pages();
        let init_pages = h.stats().pages;
        assert_eq!(init_pages.root, FIRST_RUN_PAGES);
        for &size in sizes {
            let l = layout(size, 8);
            let mut live = Vec::new();
            while let Ok(p) = h.allocate(l) {
                live.push(p);
            }
            h.check_invariants().unwrap();
            let full = h.stats();
            assert!(full.pages.root > FIRST_RUN_PAGES, "size {size}: {full}");
            assert!(h.source().mapped_pages() > pages * 9 / 10, "size {size}");
            for p in live {
                // SAFETY: allocated above with `l`.
                unsafe { h.deallocate(p, l) };
            }
            h.check_invariants().unwrap();
            h.trim();
            h.check_invariants().unwrap();
            assert_eq!(h.source().mapped_pages(), init, "size {size}");
            assert_eq!(h.stats().pages, init_pages, "size {size}");
        }
    }

    #[test]
    fn cached_blocks_count_as_free_and_trim_returns_them() {
        let mut h = heap(64);
        let l = layout(48, 8);
        let i = CLASS_SIZES.iter().position(|&c| c == 48).unwrap();
        let blocks: Vec<_> = (0..10).map(|_| h.allocate(l).unwrap()).collect();
        let s = h.stats();
        assert_eq!(s.classes[i].in_use, 10);
        assert_eq!(s.classes[i].cached, MAG_BATCH - 10);
        assert_eq!(s.held_bytes, 10 * 48);
        for &p in &blocks[..4] {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, l) };
        }
        h.check_invariants().unwrap();
        let s = h.stats();
        assert_eq!(
            (s.classes[i].in_use, s.classes[i].cached),
            (6, MAG_BATCH - 6)
        );
        assert_eq!(s.classes[i].in_use + s.classes[i].free, 4096 / 48);
        assert_eq!((s.requested_bytes, s.held_bytes), (6 * 48, 6 * 48));
        // The most recently freed block comes back first.
        assert_eq!(h.allocate(l).unwrap(), blocks[3]);
        h.trim();
        h.check_invariants().unwrap();
        assert_eq!(h.stats().classes[i].cached, 0);
        assert_eq!(h.stats().classes[i].in_use, 7);
        for p in blocks[4..].iter().chain(&blocks[3..4]) {
            // SAFETY: allocated above (blocks[3] twice, freed once in between).
            unsafe { h.deallocate(*p, l) };
        }
        h.trim();
        assert_only_roots_left(&h);
    }

    /// Blocks cached in one class's magazine must not make another class fail: a page-source
    /// failure gives every cache back and tries again.
    #[test]
    fn a_failed_allocation_drops_the_caches_and_retries() {
        let mut h = heap(FIRST_RUN_PAGES + 5 + 12);
        let page = layout(4096, 4096);
        let mut pages = Vec::new();
        while let Ok(p) = h.allocate(page) {
            pages.push(p);
        }
        assert!(pages.len() >= 10, "{}", pages.len());
        for p in pages.drain(..) {
            // SAFETY: allocated above.
            unsafe { h.deallocate(p, page) };
        }
        // Every page is still held: as cached blocks of the 4096-byte class.
        let mapped = h.source().mapped_pages();
        assert_eq!(mapped, h.source().capacity());
        let small = layout(64, 8);
        let p = h
            .allocate(small)
            .expect("the cached pages are given back on failure");
        assert!(h.source().mapped_pages() < mapped);
        h.check_invariants().unwrap();
        // SAFETY: allocated above.
        unsafe { h.deallocate(p, small) };
        h.trim();
        assert_only_roots_left(&h);
    }

    /// A page source that refuses to hold more than `limit` pages at once: a machine with that
    /// much memory.
    struct Budget {
        arena: ArenaSource,
        limit: usize,
    }

    // SAFETY: forwards to `ArenaSource`, whose guarantees carry over; the budget only turns
    // some requests into errors.
    unsafe impl PageSource for Budget {
        fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
            if self.arena.mapped_pages() + count > self.limit {
                return Err(PageSourceError::OutOfMemory);
            }
            self.arena.map_pages(count)
        }

        unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
            // SAFETY: forwarded.
            unsafe { self.arena.unmap_pages(ptr, count) }
        }

        fn window(&self) -> Option<NonNull<[u8]>> {
            self.arena.window()
        }
    }

    /// A chunk that cannot be created can leave an empty root run (chained for its descriptor)
    /// and the page-map node that records it. The retry after a failure must give those back
    /// too: here a later request fits only with both pages returned.
    #[test]
    fn the_retry_returns_root_runs_and_map_nodes_a_failed_chunk_left() {
        // 600 pages aligned to 4 MiB: page 512 starts the arena's second 2 MiB, whose page-map
        // leaf is a node of its own (and never a new 1 GiB one).
        let arena = ArenaSource::aligned(600, 4 << 20);
        let mut h = Heap::new(Budget {
            arena,
            limit: usize::MAX,
        });
        h.init().unwrap();
        // The first root run, then the four nodes on its path: pages 0..10.
        assert_eq!(h.source().arena.mapped_pages(), FIRST_RUN_PAGES + 4);
        // A 17-page run at pages 10..27, freed later to leave a hole of exactly its size.
        let hole = layout(16 * PAGE_SIZE, 8);
        let x = h.allocate(hole).unwrap();
        // Every descriptor slot of the first run holds one 4096-byte chunk; a padding run
        // before them makes the last one end at page 512.
        let slots =
            (FIRST_RUN_PAGES * PAGE_SIZE - STATE_OFFSET - size_of::<HeapState>()) / DESC_SLOT;
        let used = h.source().arena.mapped_pages();
        let padding = layout((512 - used - slots - 1) * PAGE_SIZE, 8);
        let pad = h.allocate(padding).unwrap();
        let page = layout(4096, 8);
        let mut chunks: Vec<_> = (0..slots).map(|_| h.allocate(page).unwrap()).collect();
        assert_eq!(h.source().arena.mapped_pages(), 512);
        assert_eq!(h.stats().pages.root, FIRST_RUN_PAGES);
        let nodes = h.stats().pages.page_map;

        // One more chunk needs a new descriptor run (page 512), a page-map leaf for it (513)
        // and the chunk page: with room for two pages it fails, leaving the first two behind.
        h.source.limit = h.source().arena.mapped_pages() + 2;
        assert!(h.allocate(page).is_err());
        let s = h.stats();
        assert_eq!(
            (s.pages.root, s.pages.page_map),
            (FIRST_RUN_PAGES + 1, nodes + 1),
            "the failed chunk left an empty root run and a map node"
        );

        // 17 pages are needed again, 15 are free, the hole is there: only the two pages the
        // failed chunk left can make up the difference.
        // SAFETY: allocated above with `hole`.
        unsafe { h.deallocate(x, hole) };
        h.source.limit = h.source().arena.mapped_pages() + 15;
        let y = h
            .allocate(hole)
            .expect("the retry gives back the empty root run and its map node");
        h.check_invariants().unwrap();
        let s = h.stats();
        assert_eq!((s.pages.root, s.pages.page_map), (FIRST_RUN_PAGES, nodes));

        h.source.limit = usize::MAX;
        // SAFETY: every block was allocated above with its layout and is freed once.
        unsafe {
            h.deallocate(y, hole);
            h.deallocate(pad, padding);
            for p in chunks.drain(..) {
                h.deallocate(p, page);
            }
        }
        h.trim();
        h.check_invariants().unwrap();
        assert_eq!(h.source().arena.mapped_pages(), h.idle_pages());
    }

    /// A page source without a window (`PageSource::window` is `None`), like the kernel's
    /// today: every small free looks its page up (in release builds too).
    struct NoWindow(ArenaSource);

    // SAFETY: forwards to `ArenaSource`, whose guarantees carry over; no window is claimed.
    unsafe impl PageSource for NoWindow {
        fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
            self.0.map_pages(count)
        }

        unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
            // SAFETY: forwarded.
            unsafe { self.0.unmap_pages(ptr, count) }
        }
    }

    /// An over-aligned page run maps its own pages only — a header page and the data — and never
    /// the slack an aligned placement skips: the page source finds an aligned free range
    /// ([`PageSource::map_pages_aligned`]), so nothing beyond the run is mapped even for a moment.
    #[test]
    fn over_aligned_page_runs_map_only_their_pages() {
        // Up to 512 MiB natively (the arena is host virtual memory, touched only where mapped).
        let aligns: &[usize] = if cfg!(miri) {
            &[64 << 10, 1 << 20]
        } else {
            &[64 << 10, 1 << 20, 4 << 20, 1 << 29]
        };
        for &align in aligns {
            let mut h = heap(align / PAGE_SIZE + 64);
            h.init().unwrap();
            for size in [8, 3 * PAGE_SIZE + 1] {
                let l = layout(size, align);
                let before = h.stats().pages;
                let p = h.allocate(l).unwrap();
                assert_eq!(p.addr().get() % align, 0, "align {align:#x}");
                let s = h.stats().pages;
                let data = size.div_ceil(PAGE_SIZE);
                assert_eq!(s.large, 1 + data, "align {align:#x}, size {size}");
                assert_eq!(
                    s.total - before.total,
                    1 + data + s.page_map - before.page_map
                );
                // Nothing more was ever mapped than is mapped now.
                assert_eq!(h.source().peak_pages(), h.source().mapped_pages());
                fill(p, size, 3);
                check(p, size, 3);
                h.check_invariants().unwrap();
                // SAFETY: allocated above with `l`.
                unsafe { h.deallocate(p, l) };
                h.trim();
                assert_only_roots_left(&h);
            }
        }
    }

    /// A source that cannot place runs itself (the trait's default `map_pages_aligned`) still
    /// gives an aligned run, and the slack it maps for the search goes back at once.
    #[test]
    fn over_aligned_page_runs_from_a_source_without_placement() {
        let align = 1 << 20;
        let mut h = Heap::new(NoWindow(ArenaSource::new(2 * align / PAGE_SIZE)));
        h.init().unwrap();
        let l = layout(8, align);
        let p = h.allocate(l).unwrap();
        assert_eq!(p.addr().get() % align, 0);
        let s = h.stats();
        assert_eq!(s.pages.large, 2);
        assert_eq!(h.source().0.mapped_pages(), s.pages.total);
        // The search mapped the slack for a moment.
        assert!(h.source().0.peak_pages() >= s.pages.total + align / PAGE_SIZE - 1);
        h.check_invariants().unwrap();
        // SAFETY: allocated above with `l`.
        unsafe { h.deallocate(p, l) };
        h.trim();
        h.check_invariants().unwrap();
        assert_eq!(h.source().0.mapped_pages(), h.idle_pages());
    }

    #[test]
    fn sources_without_a_window_work_the_same() {
        let mut h = Heap::new(NoWindow(ArenaSource::new(512)));
        let mut rng = crate::testing::XorShift64::new(5);
        let mut live = Vec::new();
        let rounds = if cfg!(miri) { 300 } else { 20_000 };
        for round in 0..rounds {
            if live.len() < 200 && (live.is_empty() || rng.one_in(2)) {
                let l = layout(rng.range(1, 600), 1 << rng.below(4));
                let p = h.allocate(l).unwrap();
                fill(p, l.size(), round as u8);
                live.push((p, l, round as u8));
            } else {
                let (p, l, seed) = live.swap_remove(rng.below(live.len() as u64) as usize);
                check(p, l.size(), seed);
                // SAFETY: allocated above with `l`.
                unsafe { h.deallocate(p, l) };
            }
            if round % 1000 == 0 {
                h.check_invariants().unwrap();
            }
        }
        for (p, l, _) in live {
            // SAFETY: allocated above with `l`.
            unsafe { h.deallocate(p, l) };
        }
        h.trim();
        h.check_invariants().unwrap();
        let s = h.stats();
        assert_eq!((s.pages.root, s.pages.chunks), (FIRST_RUN_PAGES, 0));
        assert_eq!(h.source().0.mapped_pages(), s.pages.total);
    }

    #[cfg(feature = "debug-checks")]
    mod debug_checks {
        use super::*;

        #[test]
        #[should_panic(expected = "kheap: double free of")]
        fn double_free() {
            let mut h = heap(64);
            let l = layout(64, 8);
            let p = h.allocate(l).unwrap();
            let _keep = h.allocate(l).unwrap();
            // SAFETY: deliberately wrong: the second free is the bug under test.
            unsafe {
                h.deallocate(p, l);
                h.deallocate(p, l);
            }
        }

        /// The first free put the block in the magazine, and the magazine gave it back to its
        /// chunk before the second free: still caught.
        #[test]
        #[should_panic(expected = "kheap: double free of")]
        fn double_free_after_the_magazine_gave_the_block_back() {
            let mut h = heap(64);
            let l = layout(64, 8);
            let blocks: Vec<_> = (0..2 * MAG_CAP).map(|_| h.allocate(l).unwrap()).collect();
            // SAFETY: every block is freed once; then (deliberately wrong) the first again.
            unsafe {
                for &p in &blocks {
                    h.deallocate(p, l);
                }
                h.check_invariants().unwrap();
                assert!(h.stats().classes[7].cached < blocks.len());
                h.deallocate(blocks[0], l);
            }
        }

        #[test]
        #[should_panic(expected = "(class 64 B)")]
        fn double_free_names_the_class() {
            double_free();
        }

        #[test]
        #[should_panic(expected = "kheap: free of interior pointer")]
        fn interior_pointer() {
            let mut h = heap(64);
            let l = layout(64, 8);
            let p = h.allocate(l).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.deallocate(p.add(8), l) };
        }

        #[test]
        #[should_panic(expected = "but it belongs to a pool of 128 B blocks")]
        fn wrong_class() {
            let mut h = heap(64);
            let p = h.allocate(layout(128, 8)).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.deallocate(p, layout(64, 8)) };
        }

        #[test]
        #[should_panic(expected = "which is not a heap block")]
        fn foreign_pointer() {
            let mut h = heap(64);
            let _ = h.allocate(layout(8, 8)).unwrap();
            let mut local = 0u64;
            // SAFETY: deliberately wrong.
            unsafe { h.deallocate(NonNull::from(&mut local).cast(), layout(8, 8)) };
        }

        #[test]
        #[should_panic(expected = "kheap: double free of large block")]
        fn large_double_free() {
            let mut h = heap(64);
            let l = layout(10_000, 8);
            let p = h.allocate(l).unwrap();
            let _keep = h.allocate(l).unwrap();
            // SAFETY: deliberately wrong.
            unsafe {
                h.deallocate(p, l);
                h.deallocate(p, l);
            }
        }

        #[test]
        #[should_panic(expected = "but it is a large block")]
        fn large_block_freed_as_small() {
            let mut h = heap(64);
            let p = h.allocate(layout(10_000, 8)).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.deallocate(p, layout(64, 8)) };
        }

        #[test]
        #[should_panic(expected = "kheap: double free of")]
        fn pool_double_free_of_a_cached_block() {
            let mut h = heap(64);
            let id = h.create_pool(48, 16).unwrap();
            let p = h.pool_alloc(id).unwrap();
            // SAFETY: deliberately wrong: the first free puts `p` in the pool's magazine.
            unsafe {
                h.pool_free(id, p);
                h.pool_free(id, p);
            }
        }

        #[test]
        #[should_panic(expected = "kheap: free of interior pointer")]
        fn pool_free_of_an_interior_pointer() {
            let mut h = heap(64);
            let id = h.create_pool(48, 16).unwrap();
            let p = h.pool_alloc(id).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.pool_free(id, p.add(8)) };
        }

        #[test]
        #[should_panic(expected = "kheap: double free of")]
        fn tiny_pool_double_free() {
            let mut h = heap(64);
            let id = h.create_pool(1, 1).unwrap();
            let p = h.pool_alloc(id).unwrap();
            // SAFETY: deliberately wrong.
            unsafe {
                h.pool_free(id, p);
                h.pool_free(id, p);
            }
        }

        #[test]
        #[should_panic(expected = "which is not a live pool")]
        fn free_to_destroyed_pool() {
            let mut h = heap(64);
            let id = h.create_pool(16, 8).unwrap();
            let p = h.pool_alloc(id).unwrap();
            // SAFETY: freed once, then (deliberately wrong) again after the pool is gone.
            unsafe { h.pool_free(id, p) };
            h.destroy_pool(id).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.pool_free(id, p) };
        }

        #[test]
        #[should_panic(expected = "as pool #2, 16 B blocks, but it belongs to a pool of 16 B")]
        fn free_to_the_wrong_pool() {
            let mut h = heap(64);
            let a = h.create_pool(16, 8).unwrap();
            let b = h.create_pool(16, 8).unwrap();
            let p = h.pool_alloc(a).unwrap();
            // SAFETY: deliberately wrong.
            unsafe { h.pool_free(b, p) };
        }

        #[test]
        #[should_panic(expected = "kheap: double free of")]
        fn realloc_of_a_freed_block() {
            let mut h = heap(64);
            let l = layout(32, 8);
            let p = h.allocate(l).unwrap();
            let _keep = h.allocate(l).unwrap();
            // SAFETY: deliberately wrong.
            unsafe {
                h.deallocate(p, l);
                let _ = h.reallocate(p, l, 24);
            }
        }
    }
}
