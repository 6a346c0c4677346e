//! The allocators under test, each driven through its own non-global API behind [`BenchAlloc`].
//!
//! [`BenchAlloc`] is the trait both benchmarks share (`kheap-workload`); the adapters here are
//! the kernel's, because where the memory comes from differs. All of them get their memory from the same page source (in the kernel: the heap window's
//! [`KernelPageSource`](kernel::memory::KernelPageSource)) and the same budget of pages:
//!
//! * our heap, `kheap::Heap`, asks for pages as it grows, through a [`CappedSource`] that refuses
//!   to map more than the budget (so mapping cost is part of what is measured, as in the kernel);
//! * `talc` and `linked_list_allocator` manage one flat [`Arena`] of exactly the budget, mapped up
//!   front from the same source and unmapped when the allocator is dropped;
//! * `kheap/arena` is our heap again, but over [`ArenaPages`]: pages handed out from an arena
//!   mapped up front, like the peers', by the same buddy allocator the heap window uses. Nothing
//!   is mapped while it runs, so set against plain `kheap` it shows what the frame allocator and
//!   page tables cost the heap, and against talc it compares the allocators alone.
//!
//! Dispatch is static: [`with_peer`] builds one adapter and hands it to a [`Visit`]or whose
//! `visit` is generic over the adapter type, so every timed loop is monomorphised per allocator and
//! pays no dynamic-dispatch cost.

use core::alloc::Layout;
use core::ptr::NonNull;

use kheap::source::{PAGE_SIZE, PageSource, PageSourceError, aligned_offset, aligned_slack};
use kheap_workload::bench_alloc::{
    BenchAlloc, CappedSource, CountedSource, PageUse, realloc_by_copy,
};

use kernel::memory::buddy::{Buddy, storage_words};

/// The allocators the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Our heap core, `kheap::Heap`, over a capped page source.
    Kheap,
    /// talc 5.1.1 (`base::Talc` with the `Manual` source, i.e. a fixed claimed arena).
    Talc,
    /// linked_list_allocator 0.10.6 (first fit over an address-ordered hole list).
    LinkedList,
    /// Our heap core over pages of a pre-mapped arena ([`ArenaPages`]): the heap without the
    /// page-table work.
    KheapArena,
}

impl Peer {
    /// Every allocator, in table order: ours first, then the reference peer, the baseline, and
    /// ours without page mapping.
    pub const ALL: [Self; 4] = [Self::Kheap, Self::Talc, Self::LinkedList, Self::KheapArena];

    /// Name used in tables.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Kheap => "kheap",
            Self::Talc => "talc",
            Self::LinkedList => "linked_list",
            Self::KheapArena => "kheap/arena",
        }
    }
}

/// Something to do with one allocator, generic over its adapter type.
pub trait Visit {
    /// What the visit produces.
    type Out;
    /// Runs with a freshly created allocator.
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out;
}

/// Creates `peer` with `budget_pages` pages of memory from `source`, runs `v` on it, and drops it
/// (which gives every page back to `source`).
pub fn with_peer<S: PageSource, V: Visit>(
    peer: Peer,
    source: S,
    budget_pages: usize,
    v: V,
) -> Result<V::Out, PageSourceError> {
    Ok(match peer {
        Peer::Kheap => visit_kheap(CappedSource::new(source, budget_pages), v),
        Peer::Talc => v.visit(&mut TalcAlloc::new(Arena::map(source, budget_pages)?)),
        Peer::LinkedList => v.visit(&mut LinkedListAlloc::new(Arena::map(source, budget_pages)?)),
        Peer::KheapArena => visit_kheap(ArenaPages::new(Arena::map(source, budget_pages)?)?, v),
    })
}

// -------------------------------------------------------------------------------------------------
// Memory for the allocators
// -------------------------------------------------------------------------------------------------

/// A run of pages mapped up front from a page source, for allocators that manage one flat region.
/// Dropping it unmaps the pages.
#[derive(Debug)]
pub struct Arena<S: PageSource> {
    source: S,
    base: NonNull<u8>,
    pages: usize,
}

impl<S: PageSource> Arena<S> {
    /// Maps `pages` contiguous pages from `source`.
    pub fn map(mut source: S, pages: usize) -> Result<Self, PageSourceError> {
        let base = source.map_pages(pages)?;
        Ok(Self {
            source,
            base,
            pages,
        })
    }

    /// Size of the arena in bytes.
    pub const fn bytes(&self) -> usize {
        self.pages * PAGE_SIZE
    }
}

impl<S: PageSource> Drop for Arena<S> {
    fn drop(&mut self) {
        // SAFETY: the pages were mapped by `map` on this very source and are unmapped only here;
        // the allocator that used them is dropped before its arena (it is declared first in the
        // adapters that own both), so nothing refers to them any more.
        unsafe { self.source.unmap_pages(self.base, self.pages) };
    }
}

/// Largest arena [`ArenaPages`] can manage, as a power of two: 2^17 pages = 512 MiB, the budget
/// of the full run's largest workload (the growing vectors).
const ARENA_ORDER: u32 = 17;

/// The buddy allocator over an arena's page indices (the heap window's algorithm, smaller).
type ArenaBuddy = Buddy<ARENA_ORDER, { storage_words(ARENA_ORDER) }>;

/// A page source over a pre-mapped [`Arena`]: runs of its pages handed out by a buddy allocator.
/// "Mapping" a page only takes it from the buddy; no frame or page table is touched.
#[derive(Debug)]
pub struct ArenaPages<S: PageSource> {
    arena: Arena<S>,
    /// Boxed: the bitmaps are a few KiB, and the struct must not be moved needlessly.
    buddy: alloc::boxed::Box<ArenaBuddy>,
    mapped: usize,
    peak: usize,
}

impl<S: PageSource> ArenaPages<S> {
    /// Hands out the pages of `arena`; fails with [`PageSourceError::InvalidRequest`] if it has
    /// more than `2^ARENA_ORDER` pages.
    pub fn new(arena: Arena<S>) -> Result<Self, PageSourceError> {
        if arena.pages > ArenaBuddy::PAGES {
            return Err(PageSourceError::InvalidRequest);
        }
        let mut buddy = alloc::boxed::Box::new(ArenaBuddy::empty());
        buddy.free(0, arena.pages);
        Ok(Self {
            arena,
            buddy,
            mapped: 0,
            peak: 0,
        })
    }
}

// SAFETY: a successful `map_pages(n)` returns page `first` of the arena for a run of `n` pages
// the buddy has just marked taken: page-aligned (the arena is), readable and writable (the arena
// stays mapped while `self` lives), and handed to nobody else until `unmap_pages` returns it to
// the buddy (an aligned run is placed where `aligned_offset` says). `unmap_pages` accepts any
// sub-run, as the buddy's `free` does.
unsafe impl<S: PageSource> PageSource for ArenaPages<S> {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 {
            return Err(PageSourceError::InvalidRequest);
        }
        let first = self
            .buddy
            .alloc(count)
            .ok_or(PageSourceError::OutOfMemory)?;
        self.mapped += count;
        self.peak = self.peak.max(self.mapped);
        // SAFETY: the buddy only hands out runs inside `0..arena.pages`, so the offset stays
        // inside the arena.
        Ok(unsafe { self.arena.base.add(first * PAGE_SIZE) })
    }

    /// Reserves a buddy range that holds an aligned run (as the heap window does), gives it back
    /// and claims just the run.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let total = count + aligned_slack(count, align, aligned_page)?;
        let reserved = self
            .buddy
            .alloc(total)
            .ok_or(PageSourceError::OutOfMemory)?;
        self.buddy.free(reserved, total);
        let base = self.arena.base.addr().get() + reserved * PAGE_SIZE;
        let first = reserved + aligned_offset(base, align, aligned_page) / PAGE_SIZE;
        if !self.buddy.claim(first, count) {
            return Err(PageSourceError::OutOfMemory);
        }
        self.mapped += count;
        self.peak = self.peak.max(self.mapped);
        // SAFETY: the claimed run lies inside the reserved range, which the buddy only hands out
        // inside `0..arena.pages`.
        Ok(unsafe { self.arena.base.add(first * PAGE_SIZE) })
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        let first = (ptr.addr().get() - self.arena.base.addr().get()) / PAGE_SIZE;
        self.buddy.free(first, count);
        self.mapped -= count;
    }

    /// Claims the arena pages after the run from the buddy, if they are free.
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let Some(offset) = ptr.addr().get().checked_sub(self.arena.base.addr().get()) else {
            return false;
        };
        // The buddy never holds pages past the arena as free, so it refuses those itself.
        let Some(end) = (offset / PAGE_SIZE).checked_add(count) else {
            return false;
        };
        if !offset.is_multiple_of(PAGE_SIZE) || !self.buddy.claim(end, extra) {
            return false;
        }
        self.mapped += extra;
        self.peak = self.peak.max(self.mapped);
        true
    }

    /// The arena: every page this source hands out lies in it.
    fn window(&self) -> Option<NonNull<[u8]>> {
        Some(NonNull::slice_from_raw_parts(
            self.arena.base,
            self.arena.bytes(),
        ))
    }
}

impl<S: PageSource> CountedSource for ArenaPages<S> {
    fn page_use(&self) -> PageUse {
        PageUse {
            mapped: self.mapped,
            peak: self.peak,
            ..PageUse::default()
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Adapters
// -------------------------------------------------------------------------------------------------

/// Our heap core over a counted page source: `kheap::Heap`, which is a [`BenchAlloc`] itself;
/// trimmed when the visit is done, so the next allocator starts from the same free memory
/// (`kheap::Heap` has no teardown of its own: its root run and page-map nodes stay mapped, a few
/// pages). The heap is initialised (`Heap::init`: its first root run and that run's page-map
/// path) before the visit, as the peers claim their arenas before theirs: otherwise the first
/// timed call pays the heap's one-time setup, and the single-call maximum is that setup. If
/// `init` fails, the first allocation tries again and reports the failure.
fn visit_kheap<S: CountedSource, V: Visit>(source: S, v: V) -> V::Out {
    let mut heap = kheap::Heap::new(source);
    let _ = heap.init();
    let out = v.visit(&mut heap);
    heap.trim();
    out
}

/// talc over a claimed arena. Field order matters: the allocator is dropped before its arena.
pub struct TalcAlloc<S: PageSource> {
    talc: talc::base::Talc<talc::source::Manual, talc::DefaultBinning>,
    /// The memory talc manages, unmapped when this is dropped (after `talc`).
    _arena: Arena<S>,
}

// SAFETY: talc's raw pointers all point into the arena, which this value owns (and which is
// only unmapped when it is dropped); nothing else refers to that memory, so the whole may move to
// another CPU, where the several-CPU section uses it behind a lock.
unsafe impl<S: PageSource + Send> Send for TalcAlloc<S> {}

impl<S: PageSource> core::fmt::Debug for TalcAlloc<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TalcAlloc").finish_non_exhaustive()
    }
}

impl<S: PageSource> TalcAlloc<S> {
    /// talc managing all of `arena`.
    pub fn new(arena: Arena<S>) -> Self {
        let mut talc = talc::base::Talc::new(talc::source::Manual);
        // SAFETY: the arena is mapped, exclusively ours, and outlives the allocator (it is dropped
        // after it, see the field order); `Manual` allows manual heap management. A budget of at
        // least one page is far above `talc::min_first_heap_size`, so the claim cannot fail.
        let claimed = unsafe { talc.claim(arena.base.as_ptr(), arena.bytes()) };
        debug_assert!(
            claimed.is_some(),
            "talc refused a {}-byte arena",
            arena.bytes()
        );
        Self {
            talc,
            _arena: arena,
        }
    }
}

impl<S: PageSource> BenchAlloc for TalcAlloc<S> {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: benchmark requests never have a zero size (trait contract).
        unsafe { self.talc.allocate(layout) }
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` was allocated by this talc with `layout`.
        unsafe { self.talc.deallocate(ptr.as_ptr(), layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` is live with layout `old` and `new` is non-zero; on a
        // failed in-place attempt the block is unchanged, as `realloc_by_copy` requires.
        unsafe {
            if self.talc.try_realloc_in_place(ptr.as_ptr(), old, new) {
                Some(ptr)
            } else {
                realloc_by_copy(self, ptr, old, new)
            }
        }
    }
}

/// linked_list_allocator's first-fit heap over an arena. Field order: heap before arena.
struct LinkedListAlloc<S: PageSource> {
    heap: linked_list_allocator::Heap,
    /// The memory the heap manages, unmapped when this is dropped (after `heap`).
    _arena: Arena<S>,
}

impl<S: PageSource> LinkedListAlloc<S> {
    fn new(arena: Arena<S>) -> Self {
        let mut heap = linked_list_allocator::Heap::empty();
        // SAFETY: the arena is mapped, exclusively ours, and outlives the heap (dropped after it),
        // and it is larger than `Heap::MIN_SIZE`.
        unsafe { heap.init(arena.base.as_ptr(), arena.bytes()) };
        Self {
            heap,
            _arena: arena,
        }
    }
}

impl<S: PageSource> BenchAlloc for LinkedListAlloc<S> {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.heap.allocate_first_fit(layout).ok()
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` was allocated by this heap with `layout`.
        unsafe { self.heap.deallocate(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract (linked_list_allocator has no resize of its own).
        unsafe { realloc_by_copy(self, ptr, old, new) }
    }
}
