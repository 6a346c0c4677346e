//! The allocators under test, each driven through its own non-global API behind [`BenchAlloc`]
//! (the trait both benchmarks share, from `kheap-workload`; the adapters are the host's, since
//! their memory comes from a host buffer).
//!
//! Every adapter gets its memory from a [`Region`] of the shared, pre-touched arena (see
//! `arena`): flat-heap peers claim the whole region up front; our heap and dlmalloc ask a
//! [`PageArena`] over the region for pages as they grow. The system allocator (glibc `malloc`
//! through `std::alloc::System`) and a bump allocator are reference points, not competitors.
//!
//! Dispatch is static: [`with_peer`] builds one adapter and hands it to a [`Visit`]or whose
//! `visit` is generic over the adapter type, so the timed loops are monomorphised per allocator
//! and pay no dynamic-dispatch cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use kheap_workload::bench_alloc::{BenchAlloc, CountedSource, KheapPool, PageUse, realloc_by_copy};

use crate::arena::{ArenaMemory, PAGE, PageArena, Region};

/// The allocators the bench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Our heap core (`kheap::Heap`) over a page arena.
    Kheap,
    /// talc 5.1.1 (`base::Talc` with the `Manual` source and the default binning).
    Talc,
    /// rlsf 0.2.3 (`Tlsf`, two-level segregated fit).
    Rlsf,
    /// linked_list_allocator 0.10.6 (first fit over an address-ordered hole list).
    LinkedList,
    /// buddy_system_allocator 0.13.0 (`Heap<32>`, power-of-two buddies).
    Buddy,
    /// dlmalloc 0.2.14 over a page arena.
    Dlmalloc,
    /// good_memory_allocator 0.1.7 (dlmalloc-like bins with alignment sub-bins).
    GoodMemory,
    /// Reference: the host's `malloc` (`std::alloc::System`), on memory outside the arena.
    System,
    /// Reference: a bump allocator (free is a no-op).
    Bump,
}

impl Peer {
    /// Every allocator, ours first, references last.
    pub const ALL: [Self; 9] = [
        Self::Kheap,
        Self::Talc,
        Self::Rlsf,
        Self::LinkedList,
        Self::Buddy,
        Self::Dlmalloc,
        Self::GoodMemory,
        Self::System,
        Self::Bump,
    ];

    /// Name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kheap => "kheap",
            Self::Talc => "talc",
            Self::Rlsf => "rlsf",
            Self::LinkedList => "linked_list",
            Self::Buddy => "buddy",
            Self::Dlmalloc => "dlmalloc",
            Self::GoodMemory => "good_memory",
            Self::System => "system",
            Self::Bump => "bump",
        }
    }

    /// Parses a name from [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Reference points (listed, never ranked against the heaps).
    pub fn is_reference(self) -> bool {
        matches!(self, Self::System | Self::Bump)
    }

    /// Whether the allocator lives inside the arena budget (the system allocator does not).
    pub fn uses_arena(self) -> bool {
        self != Self::System
    }
}

/// Something to do with one allocator, generic over its adapter type.
pub trait Visit {
    /// What the visit produces.
    type Out;
    /// Runs with a freshly created allocator.
    fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out;
}

/// Creates `peer` over the first `len` bytes of `memory`, runs `v` on it, and drops it.
pub fn with_peer<V: Visit>(peer: Peer, memory: &mut ArenaMemory, len: usize, v: V) -> V::Out {
    let region = memory.region(len);
    // SAFETY: for every `new` below: `region` comes from the `&mut` borrow of `memory`, which
    // lasts until this function returns; the adapter is dropped before that, so the region is
    // used by this one allocator only and outlives it.
    unsafe {
        match peer {
            Peer::Kheap => {
                const { assert!(kheap::PAGE_SIZE == PAGE) };
                // Initialised before the visit, as the peers claim their arenas before theirs
                // (the one-time setup is not one of the timed calls); a failure shows up as the
                // first allocation's.
                let mut heap = kheap::Heap::new(ArenaSource::new(region));
                let _ = heap.init();
                v.visit(&mut heap)
            }
            Peer::Talc => v.visit(&mut *TalcAlloc::new(region)),
            Peer::Rlsf => v.visit(&mut *RlsfAlloc::new(region)),
            Peer::LinkedList => v.visit(&mut *LinkedListAlloc::new(region)),
            Peer::Buddy => v.visit(&mut *BuddyAlloc::new(region)),
            Peer::Dlmalloc => v.visit(&mut *DlmallocAlloc::new(region)),
            Peer::GoodMemory => v.visit(&mut *GoodMemoryAlloc::new(region)),
            Peer::System => v.visit(&mut SystemAlloc),
            Peer::Bump => v.visit(&mut *BumpAlloc::new(region)),
        }
    }
}

/// The contestants of the threaded section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedPeer {
    /// `kheap::PerCpuHeap<SpinLock, _, ThreadCpus, 2>` over an arena: a per-CPU front (threads
    /// as CPUs) before the locked heap.
    KheapPerCpu,
    /// `kheap::LockedHeap<SpinLock, _>` over an arena.
    Kheap,
    /// talc behind a spinlock.
    Talc,
    /// rlsf behind a spinlock.
    Rlsf,
    /// linked_list_allocator behind a spinlock.
    LinkedList,
    /// The host `malloc` (`std::alloc::System`).
    System,
    /// mimalloc (`mimalloc::MiMalloc`), the per-thread-cache reference.
    Mimalloc,
}

impl SharedPeer {
    /// Every contestant, in table order.
    pub const ALL: [Self; 7] = [
        Self::KheapPerCpu,
        Self::Kheap,
        Self::Talc,
        Self::Rlsf,
        Self::LinkedList,
        Self::System,
        Self::Mimalloc,
    ];

    /// Name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::KheapPerCpu => "kheap-percpu",
            Self::Kheap => "kheap",
            Self::Talc => "talc",
            Self::Rlsf => "rlsf",
            Self::LinkedList => "linked_list",
            Self::System => "system",
            Self::Mimalloc => "mimalloc",
        }
    }
}

/// Something to do with one allocator shared between threads, generic over its `GlobalAlloc`.
pub trait SharedVisit {
    /// What the visit produces.
    type Out;
    /// Runs with a freshly created allocator.
    fn visit<G: GlobalAlloc + Sync>(self, g: &G) -> Self::Out;
}

/// Creates contestant `c` of the threaded section over the first `len` bytes of `memory` (the
/// arena peers behind a spinlock), runs `v` on it, and drops it.
pub fn with_shared<V: SharedVisit>(
    c: SharedPeer,
    memory: &mut ArenaMemory,
    len: usize,
    v: V,
) -> V::Out {
    use kheap_workload::bench_alloc::Locked;
    let region = memory.region(len);
    // SAFETY: for every `new` below: as in `with_peer`, the region is borrowed from `memory` for
    // this call and used by this one allocator, which is dropped before the call returns.
    unsafe {
        match c {
            SharedPeer::KheapPerCpu => {
                let heap: kheap::PerCpuHeap<kheap::SpinLock, ArenaSource, kheap::ThreadCpus, 2> =
                    kheap::PerCpuHeap::new(ArenaSource::new(region), kheap::ThreadCpus::new(2));
                v.visit(&heap)
            }
            SharedPeer::Kheap => {
                let heap: kheap::LockedHeap<kheap::SpinLock, ArenaSource> =
                    kheap::LockedHeap::new(ArenaSource::new(region));
                v.visit(&heap)
            }
            SharedPeer::Talc => v.visit(&Locked::<kheap::SpinLock, _>::new(TalcAlloc::new(region))),
            SharedPeer::Rlsf => v.visit(&Locked::<kheap::SpinLock, _>::new(RlsfAlloc::new(region))),
            SharedPeer::LinkedList => v.visit(&Locked::<kheap::SpinLock, _>::new(
                LinkedListAlloc::new(region),
            )),
            SharedPeer::System => v.visit(&System),
            SharedPeer::Mimalloc => v.visit(&mimalloc::MiMalloc),
        }
    }
}

/// The contestants of the fixed-size object benchmark (`pools`): ways to serve many objects of
/// one layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedPeer {
    /// A kheap user pool for the layout (`Heap::create_pool`, `pool_allocate`, `pool_deallocate`).
    KheapPool,
    /// slabmalloc 0.11.0: one `SCAllocator` of 4 KiB `ObjectPage`s for the layout's size,
    /// refilled with pages from the arena.
    Slabmalloc,
    /// A general allocator of the main benchmark.
    General(Peer),
}

impl FixedPeer {
    /// Every contestant, in table order.
    pub const ALL: [Self; 4] = [
        Self::KheapPool,
        Self::Slabmalloc,
        Self::General(Peer::Kheap),
        Self::General(Peer::Talc),
    ];

    /// Name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::KheapPool => "kheap pool",
            Self::Slabmalloc => "slabmalloc",
            Self::General(Peer::Kheap) => "kheap (general)",
            Self::General(p) => p.name(),
        }
    }
}

/// Creates `peer` for objects of `object` over the first `len` bytes of `memory`, runs `v` on it,
/// and drops it.
pub fn with_fixed_peer<V: Visit>(
    peer: FixedPeer,
    object: Layout,
    memory: &mut ArenaMemory,
    len: usize,
    v: V,
) -> V::Out {
    match peer {
        FixedPeer::General(p) => with_peer(p, memory, len, v),
        FixedPeer::KheapPool => {
            let region = memory.region(len);
            // As in `with_peer`: the region is borrowed from `memory` for this call and used by
            // this adapter alone, which is dropped before the call returns.
            let pages = ArenaSource::new(region);
            let mut pool = KheapPool::new(pages, object)
                .expect("kheap: create_pool for the benchmark's object layout");
            v.visit(&mut pool)
        }
        FixedPeer::Slabmalloc => {
            let region = memory.region(len);
            // SAFETY: as above.
            v.visit(&mut *unsafe { SlabAlloc::new(region, object) })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Page sources over the arena
// ---------------------------------------------------------------------------------------------

/// A [`PageArena`] as kheap's page source. The adapters read its counts through
/// `Heap::source()`.
#[derive(Debug)]
pub struct ArenaSource(PageArena);

impl ArenaSource {
    /// Pages of `region`, none mapped yet.
    pub fn new(region: Region) -> Self {
        Self(PageArena::new(region))
    }
}

impl CountedSource for ArenaSource {
    fn page_use(&self) -> PageUse {
        self.0.page_use()
    }
}

// SAFETY: the arena's pages belong to the one allocator that owns this source (see `with_peer`:
// the region is lent to it alone), so the source, and the pointers in it, may move to another
// thread with that allocator (the threaded section shares a locked heap between threads).
unsafe impl Send for ArenaSource {}

// SAFETY: a successful `map_pages(n)` returns the start of `n` pages that `PageArena::map` has
// just marked mapped: page-aligned (the region is page-aligned and mapping is page-granular),
// readable and writable (the arena buffer is live for the allocator's whole life, see
// `with_peer`), and handed out to nobody else until `unmap_pages` clears their bits again; an
// aligned run is placed where `aligned_offset` says. `unmap_pages` accepts any sub-run of mapped
// pages.
unsafe impl kheap::PageSource for ArenaSource {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, kheap::PageSourceError> {
        if count == 0 || count.checked_mul(PAGE).is_none() {
            return Err(kheap::PageSourceError::InvalidRequest);
        }
        self.0.map(count).ok_or(kheap::PageSourceError::OutOfMemory)
    }

    /// Places the run on an aligned line of the arena and maps only its pages, as the kernel's
    /// heap window does.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, kheap::PageSourceError> {
        kheap::source::aligned_slack(count, align, aligned_page)?;
        self.0
            .map_aligned(count, align, aligned_page)
            .ok_or(kheap::PageSourceError::OutOfMemory)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        self.0.unmap(ptr, count);
    }

    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        self.0.grow(ptr, count, extra)
    }

    /// Every page comes from the one region, whose pointer covers all of it (the arena buffer is
    /// one allocation), as a kernel heap window would.
    fn window(&self) -> Option<NonNull<[u8]>> {
        let region = self.0.region();
        Some(NonNull::slice_from_raw_parts(region.base, region.len))
    }
}

/// A handle on a [`PageArena`] shared between dlmalloc's system allocator and its adapter (which
/// reads the mapped-page count; dlmalloc does not lend its system allocator back).
#[derive(Debug, Clone)]
struct SharedPages(Rc<RefCell<PageArena>>);

impl SharedPages {
    fn new(region: Region) -> Self {
        Self(Rc::new(RefCell::new(PageArena::new(region))))
    }

    fn page_use(&self) -> PageUse {
        self.0.borrow().page_use()
    }
}

/// dlmalloc's view of the page arena ("system memory" for it).
#[derive(Debug)]
struct DlPages(SharedPages);

// SAFETY: dlmalloc requires `Send` of its system allocator. The bench is single-threaded: a
// `DlPages` (and the `Rc` inside it) is created, used and dropped on one thread and never sent.
unsafe impl Send for DlPages {}

// SAFETY: `alloc` returns fresh, exclusively owned, page-aligned pages from the arena (or null);
// `free`/`free_part` give back only whole pages that dlmalloc got from `alloc`; `remap` only ever
// grows a mapping in place (it returns the same pointer or null), with pages that were free.
unsafe impl dlmalloc::Allocator for DlPages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let pages = size.div_ceil(PAGE);
        match (self.0).0.borrow_mut().map(pages) {
            Some(p) => (p.as_ptr(), pages * PAGE, 0),
            None => (ptr::null_mut(), 0, 0),
        }
    }

    /// Grows an mmapped chunk in place, as the kheap adapter's page source can (moving is left
    /// to dlmalloc, which copies).
    fn remap(&self, ptr: *mut u8, old: usize, new: usize, _can_move: bool) -> *mut u8 {
        let Some(p) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        if new <= old || !old.is_multiple_of(PAGE) || !new.is_multiple_of(PAGE) {
            return ptr::null_mut();
        }
        if (self.0)
            .0
            .borrow_mut()
            .grow(p, old / PAGE, (new - old) / PAGE)
        {
            ptr
        } else {
            ptr::null_mut()
        }
    }

    fn free_part(&self, ptr: *mut u8, oldsize: usize, newsize: usize) -> bool {
        if !newsize.is_multiple_of(PAGE) || !oldsize.is_multiple_of(PAGE) {
            return false;
        }
        let Some(tail) = NonNull::new(ptr.wrapping_add(newsize)) else {
            return false;
        };
        (self.0)
            .0
            .borrow_mut()
            .unmap(tail, (oldsize - newsize) / PAGE);
        true
    }

    fn free(&self, ptr: *mut u8, size: usize) -> bool {
        match NonNull::new(ptr) {
            Some(p) if size.is_multiple_of(PAGE) => {
                (self.0).0.borrow_mut().unmap(p, size / PAGE);
                true
            }
            _ => false,
        }
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        true
    }

    fn allocates_zeros(&self) -> bool {
        false
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

// ---------------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------------

/// A slabmalloc `SCAllocator` for one object layout, refilled with 4 KiB pages of an arena.
struct SlabAlloc {
    slab: slabmalloc::SCAllocator<'static, slabmalloc::ObjectPage<'static>>,
    pages: PageArena,
    object: Layout,
}

impl SlabAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region, object: Layout) -> Box<Self> {
        const { assert!(size_of::<slabmalloc::ObjectPage<'static>>() == PAGE) };
        Box::new(Self {
            slab: slabmalloc::SCAllocator::new(object.size()),
            pages: PageArena::new(region),
            object,
        })
    }
}

impl BenchAlloc for SlabAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if layout != self.object {
            return None;
        }
        if let Ok(p) = self.slab.allocate(layout) {
            return Some(p);
        }
        let page = self.pages.map(1)?;
        // SAFETY: the page is 4 KiB, page aligned, fresh from the arena and ours alone until the
        // adapter (and with it the arena region, which outlives it) is dropped; `refill` writes
        // the page's metadata itself.
        unsafe {
            let page = &mut *page.as_ptr().cast::<slabmalloc::ObjectPage<'static>>();
            self.slab.refill(page);
        }
        self.slab.allocate(layout).ok()
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.slab
            .deallocate(ptr, layout)
            .expect("slabmalloc: deallocate of a block it handed out");
    }

    unsafe fn realloc(&mut self, _: NonNull<u8>, _: Layout, _: usize) -> Option<NonNull<u8>> {
        None
    }

    fn pages(&self) -> Option<PageUse> {
        Some(self.pages.page_use())
    }
}

/// talc with a manually claimed arena.
struct TalcAlloc {
    talc: talc::base::Talc<talc::source::Manual, talc::DefaultBinning>,
}

// SAFETY: talc's pointers all lead into the region lent to this adapter alone (see `with_peer`),
// so the adapter may move to another thread; the threaded section shares it behind a lock.
unsafe impl Send for TalcAlloc {}

impl TalcAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let mut this = Box::new(Self {
            talc: talc::base::Talc::new(talc::source::Manual),
        });
        // SAFETY: the region is valid and exclusively ours for the adapter's life (caller), and
        // `Manual` allows manual heap management.
        let end = unsafe { this.talc.claim(region.base.as_ptr(), region.len) };
        end.expect("talc refused the arena");
        this
    }
}

impl BenchAlloc for TalcAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: bench requests never have a zero size (trait contract).
        unsafe { self.talc.allocate(layout) }
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` was allocated by this talc with `layout`.
        unsafe { self.talc.deallocate(ptr.as_ptr(), layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` is live with layout `old` and `new` is non-zero.
        unsafe {
            if self.talc.try_realloc_in_place(ptr.as_ptr(), old, new) {
                Some(ptr)
            } else {
                realloc_by_copy(self, ptr, old, new)
            }
        }
    }
}

/// rlsf's TLSF: 28 first-level classes (blocks up to 8 GiB, so a single arena-sized free block
/// fits), 32 second-level classes per first level.
type RlsfTlsf = rlsf::Tlsf<'static, u32, u32, 28, 32>;

struct RlsfAlloc {
    tlsf: RlsfTlsf,
}

// SAFETY: as for `TalcAlloc`: the TLSF's pointers lead into this adapter's own region.
unsafe impl Send for RlsfAlloc {}

impl RlsfAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let mut this = Box::new(Self {
            tlsf: RlsfTlsf::new(),
        });
        let block = NonNull::slice_from_raw_parts(region.base, region.len);
        // SAFETY: the block is valid, exclusively owned by this TLSF, and outlives it (caller).
        let taken = unsafe { this.tlsf.insert_free_block_ptr(block) };
        taken.expect("rlsf refused the arena");
        this
    }
}

impl BenchAlloc for RlsfAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.tlsf.allocate(layout)
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` was allocated by this TLSF with `layout.align()`.
        unsafe { self.tlsf.deallocate(ptr, layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(new, old.align()).ok()?;
        // SAFETY: forwarded contract: `ptr` is live and was allocated with this alignment.
        unsafe { self.tlsf.reallocate(ptr, layout) }
    }
}

/// linked_list_allocator's first-fit heap.
struct LinkedListAlloc {
    heap: linked_list_allocator::Heap,
}

// SAFETY: as for `TalcAlloc`: the hole list lies in this adapter's own region.
unsafe impl Send for LinkedListAlloc {}

impl LinkedListAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let mut this = Box::new(Self {
            heap: linked_list_allocator::Heap::empty(),
        });
        // SAFETY: the region is valid and exclusively owned for the heap's life (caller).
        unsafe { this.heap.init(region.base.as_ptr(), region.len) };
        this
    }
}

impl BenchAlloc for LinkedListAlloc {
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
        // SAFETY: forwarded contract.
        unsafe { realloc_by_copy(self, ptr, old, new) }
    }
}

/// buddy_system_allocator with orders up to 2^31 bytes.
struct BuddyAlloc {
    heap: buddy_system_allocator::Heap<32>,
}

impl BuddyAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let mut this = Box::new(Self {
            heap: buddy_system_allocator::Heap::new(),
        });
        // SAFETY: the region is valid, exclusively owned for the heap's life, and added once.
        unsafe { this.heap.init(region.base.as_ptr() as usize, region.len) };
        this
    }
}

impl BenchAlloc for BuddyAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.heap.alloc(layout).ok()
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` was allocated by this heap with `layout`.
        unsafe { self.heap.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract.
        unsafe { realloc_by_copy(self, ptr, old, new) }
    }
}

/// dlmalloc with the page arena as its system allocator.
struct DlmallocAlloc {
    dl: dlmalloc::Dlmalloc<DlPages>,
    pages: SharedPages,
}

impl DlmallocAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let pages = SharedPages::new(region);
        let dl = dlmalloc::Dlmalloc::new_with_allocator(DlPages(pages.clone()));
        Box::new(Self { dl, pages })
    }
}

impl BenchAlloc for DlmallocAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: `layout` is a valid layout with a non-zero size, as `malloc` requires.
        NonNull::new(unsafe { self.dl.malloc(layout.size(), layout.align()) })
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` came from this dlmalloc with this size and alignment.
        unsafe { self.dl.free(ptr.as_ptr(), layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` is live with `old`; `new` is non-zero. dlmalloc keeps
        // the original alignment when `old.align()` exceeds its natural alignment.
        NonNull::new(unsafe { self.dl.realloc(ptr.as_ptr(), old.size(), old.align(), new) })
    }

    fn pages(&self) -> Option<PageUse> {
        Some(self.pages.page_use())
    }

    fn release(&mut self) {
        // SAFETY: `trim` has no preconditions beyond a consistent heap.
        unsafe { self.dl.trim(0) };
    }
}

/// good_memory_allocator. Its heap keeps pointers into the `Allocator` struct itself, so the
/// struct is boxed before `init` and never moves afterwards.
struct GoodMemoryAlloc {
    heap: good_memory_allocator::Allocator,
}

impl GoodMemoryAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        let mut this = Box::new(Self {
            heap: good_memory_allocator::Allocator::empty(),
        });
        // SAFETY: the region is valid and exclusively owned (caller); the allocator sits in a
        // box that is not moved out of until it is dropped.
        unsafe { this.heap.init(region.base.as_ptr() as usize, region.len) };
        this
    }
}

impl BenchAlloc for GoodMemoryAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the heap is initialised and `layout` has a non-zero size.
        NonNull::new(unsafe { self.heap.alloc(layout) })
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: forwarded contract: `ptr` is a live block of this heap.
        unsafe { self.heap.dealloc(ptr.as_ptr()) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` is live with layout `old`, `new` is non-zero.
        NonNull::new(unsafe { self.heap.realloc(ptr.as_ptr(), old, new) })
    }
}

/// The host `malloc`, as a reference point.
struct SystemAlloc;

impl BenchAlloc for SystemAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: `layout` has a non-zero size.
        NonNull::new(unsafe { System.alloc(layout) })
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` came from `System` with `old`; `new` is non-zero and
        // does not overflow when rounded to the alignment.
        NonNull::new(unsafe { System.realloc(ptr.as_ptr(), old, new) })
    }
}

/// A bump allocator: the floor of what an allocator can cost. It never reuses memory, except
/// that the most recent block can grow or shrink in place.
struct BumpAlloc {
    region: Region,
    /// Offset of the first unused byte.
    top: usize,
    /// Offset of the most recent block (the one that may be resized in place).
    last: usize,
}

impl BumpAlloc {
    /// # Safety
    ///
    /// `region` must be valid, unused by anything else, and outlive the adapter.
    unsafe fn new(region: Region) -> Box<Self> {
        Box::new(Self {
            region,
            top: 0,
            last: usize::MAX,
        })
    }
}

impl BenchAlloc for BumpAlloc {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let base = self.region.base.as_ptr() as usize;
        let start = (base + self.top).checked_next_multiple_of(layout.align())? - base;
        let end = start.checked_add(layout.size())?;
        if end > self.region.len {
            return None;
        }
        self.last = start;
        self.top = end;
        // SAFETY: `start < region.len`, so the offset stays inside the region.
        Some(unsafe { self.region.base.add(start) })
    }

    #[inline]
    unsafe fn free(&mut self, _ptr: NonNull<u8>, _layout: Layout) {}

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        let offset = ptr.as_ptr() as usize - self.region.base.as_ptr() as usize;
        if offset == self.last && offset + new <= self.region.len {
            self.top = offset + new;
            return Some(ptr);
        }
        // SAFETY: forwarded contract.
        unsafe { realloc_by_copy(self, ptr, old, new) }
    }
}

#[cfg(test)]
mod tests {
    use kheap::PageSource;
    use kheap_workload::bench_alloc::CappedSource;

    use super::*;

    #[test]
    fn a_capped_arena_refuses_past_its_cap_and_counts_what_it_gives_back() {
        let mut memory = ArenaMemory::new(64 * PAGE);
        let mut src = CappedSource::new(ArenaSource::new(memory.region(64 * PAGE)), 4);
        let run = src.map_pages(3).expect("3 of 4 pages");
        assert!(matches!(
            src.map_pages(2),
            Err(kheap::PageSourceError::OutOfMemory)
        ));
        // Growth counts against the cap too, and the arena has room after the run.
        assert!(src.grow_pages(run, 3, 1));
        assert!(!src.grow_pages(run, 4, 1));
        assert!(src.map_pages_aligned(1, 2 * PAGE, 0).is_err());
        // SAFETY: the run's 4 pages were mapped above and nothing refers to them.
        unsafe { src.unmap_pages(run, 4) };
        assert_eq!(src.page_use().mapped, 0);
        // The cap is on pages held, not on the arena: 4 pages fit again, anywhere.
        let again = src.map_pages(4).expect("the cap is free again");
        // SAFETY: as above.
        unsafe { src.unmap_pages(again, 4) };
    }
}
