//! [`Heap`]: the allocator proper, with `&mut self` methods (locking is `locked`'s job).
//!
//! The heap state ([`state::HeapState`]: the class chunk lists and magazines, the large
//! allocator, the page map, the root-run chains and the counters) lives in the first root run,
//! right after its header; the `Heap` value itself is just the page source and a pointer to that
//! state, so it is cheap to construct in a `static` (`Heap::new` is `const` and maps nothing).
//!
//! The heap is a *front* and a *back*. The front is the magazines: one per general class, one
//! per user pool (module `front`, one type for both), which the fast paths pop and push. The back
//! is everything behind them — chunk lists, pool headers, root runs, the page map, the large
//! allocator and the page source — reached in batches through `back::Back`, whose
//! `refill` and `flush` take the magazine they fill or empty from outside.
//!
//! `allocate` and `deallocate` (and their pool twins) are small `#[inline]` fast paths (a class
//! lookup and a magazine pop or push) whose every other case is a call in tail position to an
//! out-of-line slow path: that keeps the fast paths free of register saves and small enough to
//! inline into callers.
//!
//! Files: `state` (the state and [`Live`](state::Live), the one way a path reaches it), `front`
//! (a magazine and what stands behind it), `class` (allocate, deallocate, reallocate),
//! `pools` (user pools), `audit` (statistics and the invariant checker); this file holds the
//! heap value, its setup, and `trim`. The tests are in `tests/`.

use core::ptr::NonNull;

use crate::magazine::{MAG_CAP, POOL_MAG_CAP};
use crate::pagemap::{Entry, PageMap};
use crate::root::Roots;
use crate::size_class::NUM_CLASSES;
use crate::source::{PageSource, PageSourceError};

mod audit;
mod class;
mod front;
mod pools;
mod state;
#[cfg(test)]
mod tests;

pub use state::FIRST_RUN_PAGES;
use state::{HeapState, Live, STATE_OFFSET};

/// A pool/chunk kernel heap over a page source `S`. See the crate documentation for the design.
///
/// All methods take `&mut self`; wrap it in [`LockedHeap`](crate::LockedHeap) to share it.
pub struct Heap<S: PageSource> {
    source: S,
    /// The heap state in the first root run; `None` until the first use. Set once, by
    /// `create_state`, to a state it initialised; the run stays mapped as long as the heap (trim
    /// keeps the first run), and the heap writes it only through `&mut self`.
    state: Option<NonNull<HeapState>>,
}

// SAFETY: the heap exclusively owns every page it got from the source (state, chunks, nodes,
// large pages); nothing in it is tied to a thread, so it can move with its source.
unsafe impl<S: PageSource + Send> Send for Heap<S> {}

impl<S: PageSource> core::fmt::Debug for Heap<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("initialized", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: PageSource> Heap<S> {
    /// A heap over `source`. Maps nothing: the root run is mapped by [`init`](Self::init) or
    /// on first use.
    pub const fn new(source: S) -> Self {
        Self {
            source,
            state: None,
        }
    }

    /// Maps the first root run now (otherwise the first request does), and lets the page
    /// source do all the work it wants to do ahead of need ([`PageSource::prepare`], until it
    /// wants no more or can do no more: a kernel's reserve of mapped pages is filled here
    /// rather than a page at a time by the first calls). Idempotent.
    pub fn init(&mut self) -> Result<(), PageSourceError> {
        self.live_or_init()?;
        // Bounded, whatever the source answers: a reserve is a few dozen pages.
        for _ in 0..1024 {
            if !(self.source.wants_prepare() && self.source.prepare()) {
                break;
            }
        }
        Ok(())
    }

    /// Whether the root run is mapped.
    pub fn is_initialized(&self) -> bool {
        self.state.is_some()
    }

    /// Pages the heap keeps mapped while it holds no block and no user pool, once trimmed:
    /// the first root run and the page-map nodes on its path (4 to 7, depending on which
    /// 2 MiB, 1 GiB and 512 GiB lines the run straddles). 0 before the heap is initialised.
    pub fn idle_pages(&self) -> usize {
        let Some(st) = self.state else {
            return 0;
        };
        let base = st.addr().get() - STATE_OFFSET;
        FIRST_RUN_PAGES + PageMap::path_nodes(base, FIRST_RUN_PAGES)
    }

    /// The page source (for its own statistics).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The state of an initialised heap, for one operation: the one place a path gets it.
    #[inline(always)]
    fn live(&mut self) -> Option<Live<'_, S>> {
        let st = self.state?;
        // SAFETY: `state` names the initialised state of this heap, mapped from `source` for as
        // long as the heap lives (see the field), and `&mut self` makes the handle the only way
        // to it while the handle lives.
        Some(unsafe { Live::new(st, &mut self.source) })
    }

    /// [`live`](Self::live) of a heap the caller knows is initialised (a path that
    /// [`live`](Self::live) already admitted, continued out of line): no second test.
    ///
    /// # Safety
    ///
    /// The heap is initialised (`live` returned `Some` before, and nothing since can have
    /// uninitialised it: a heap is never uninitialised while it lives).
    #[inline(always)]
    unsafe fn live_initialised(&mut self) -> Live<'_, S> {
        // SAFETY: initialised (caller).
        let st = unsafe { self.state.unwrap_unchecked() };
        // SAFETY: as in `live`.
        unsafe { Live::new(st, &mut self.source) }
    }

    /// The state, read-only (statistics, the invariant checker, lookups of `&self` methods).
    fn view(&self) -> Option<&HeapState> {
        // SAFETY: as in `live`; the heap writes its state only through `&mut self`, so nothing
        // writes it while `&self` (and so the reference) lives.
        self.state.map(|st| unsafe { st.as_ref() })
    }

    /// [`live`](Self::live), mapping the first root run on first use.
    fn live_or_init(&mut self) -> Result<Live<'_, S>, PageSourceError> {
        if self.state.is_none() {
            self.create_state()?;
        }
        self.live().ok_or(PageSourceError::InvalidRequest)
    }

    #[cold]
    fn create_state(&mut self) -> Result<(), PageSourceError> {
        let base = self.source.map_pages(FIRST_RUN_PAGES)?;
        // SAFETY: the run is ours (fresh from the source) and large enough for the header,
        // the state at `STATE_OFFSET` (aligned: the run is page aligned) and the slots after.
        let st = unsafe {
            let descs = Roots::with_first_run(
                base,
                FIRST_RUN_PAGES,
                STATE_OFFSET + size_of::<HeapState>(),
                crate::chunk::DESC_SLOT,
            );
            let st = base.add(STATE_OFFSET).cast::<HeapState>();
            st.write(HeapState::new(descs, self.source.window()));
            st
        };
        // SAFETY: `st` was just initialised and nothing else refers to it.
        let map = unsafe { &mut (*st.as_ptr()).map };
        if let Err(e) = map.set_run(&mut self.source, base, FIRST_RUN_PAGES, Entry::Root(base)) {
            map.prune(&mut self.source);
            // SAFETY: the run is ours and nothing refers to it any more.
            unsafe { self.source.unmap_pages(base, FIRST_RUN_PAGES) };
            return Err(e);
        }
        self.state = Some(st);
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
        if let Some(mut st) = self.live() {
            st.trim();
        }
    }
}

impl<S: PageSource> Live<'_, S> {
    /// [`Heap::trim`].
    pub(super) fn trim(&mut self) {
        self.drop_caches();
        // Every chunk that is still mapped holds a live block, so its descriptor slot is live
        // and its run stays.
        let (descs, src, map) = self.descs();
        descs.release_empty(src, map);
        let (pools, src, map) = self.pools();
        pools.slots.release_empty(src, map);
        map.prune(src);
    }

    /// Empties every magazine into the chunks and returns every reserve chunk, every pending
    /// chunk and the large allocator's idle regions to the page source. O(classes × [`MAG_CAP`] + user pools).
    fn drop_caches(&mut self) {
        for i in 0..NUM_CLASSES {
            // SAFETY: `i` is a class index.
            let mut class = unsafe { self.class(i) };
            class.flush(MAG_CAP);
            let lists = class.lists();
            // SAFETY: the class's chunk lists are live.
            unsafe { class.back().drain_reserve(lists) };
        }
        let mut next = self.first_pool();
        while let Some(pool) = next {
            let mut front = self.pool_front(pool);
            front.flush(POOL_MAG_CAP);
            // SAFETY: the pool's chunk lists are live.
            unsafe { front.back().drain_reserve(pool.lists()) };
            next = pool.next();
        }
        self.back().release_all_pending();
        let (large, mut rec) = self.large();
        large.release_cached(&mut rec);
    }
}
