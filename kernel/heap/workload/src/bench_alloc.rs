//! The one interface every benchmarked allocator is driven through, and the adapters both
//! benchmarks share.
//!
//! * [`BenchAlloc`]: allocate, free and resize over a [`Layout`], plus the page counts of
//!   allocators that take their memory a page at a time. Each benchmark has its own adapters for
//!   its peers (they differ in where the memory comes from: a host buffer, the kernel's heap
//!   window); the replay, verification and measurement code in this crate is written once against
//!   this trait.
//! * [`realloc_by_copy`]: `realloc` for allocators that have none.
//! * [`Locked`]: an adapter behind a [`RawLock`], as a `GlobalAlloc` that threads (or CPUs) share;
//!   [`Shared`]: any `GlobalAlloc` seen as a [`BenchAlloc`], for the threaded sections.
//! * kheap itself, the same in both benchmarks: `kheap::Heap` over any [`CountedSource`] is a
//!   [`BenchAlloc`], and [`KheapPool`] is a user pool for one object layout. Each benchmark
//!   supplies the page source; [`CappedSource`] caps and counts any of them (a heap-efficiency
//!   budget: the pages held are limited, not where they lie).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};

use kheap::{Heap, PageSource, PageSourceError, PoolId, RawLock};

/// Pages an allocator that grows a page at a time has taken from its page source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageUse {
    /// Pages mapped now.
    pub mapped: usize,
    /// Most pages mapped at once.
    pub peak: usize,
    /// Successful map calls so far.
    pub maps: u64,
    /// Unmap calls so far.
    pub unmaps: u64,
}

/// What the benchmarks need from an allocator. Every request has a non-zero size.
pub trait BenchAlloc {
    /// Allocates a block for `layout`; `None` when out of memory (or, for a fixed-size pool, for
    /// a layout it does not serve).
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>>;

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block returned by this allocator's `alloc` or `realloc` for `layout`
    /// (the layout most recently requested for it).
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout);

    /// Resizes a block to `new_size` bytes with the same alignment, keeping its contents up to the
    /// smaller size. On `None` the old block is still live and unchanged. The default allocates,
    /// copies and frees ([`realloc_by_copy`]).
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free), with `old` the block's current layout; `new_size` is non-zero
    /// and, rounded up to `old.align()`, does not overflow `isize`.
    unsafe fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>>
    where
        Self: Sized,
    {
        // SAFETY: forwarded contract.
        unsafe { realloc_by_copy(self, ptr, old, new_size) }
    }

    /// Pages taken from the page source, for allocators that grow a page at a time (`None` for
    /// those that own one fixed arena from the start).
    fn pages(&self) -> Option<PageUse> {
        None
    }

    /// Gives memory it no longer needs back to its page source, where it can (`trim`).
    fn release(&mut self) {}
}

/// A boxed allocator (adapters that must not move once set up live in a box).
impl<A: BenchAlloc> BenchAlloc for alloc::boxed::Box<A> {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        (**self).alloc(layout)
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { (**self).free(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract.
        unsafe { (**self).realloc(ptr, old, new_size) }
    }

    fn pages(&self) -> Option<PageUse> {
        (**self).pages()
    }

    fn release(&mut self) {
        (**self).release();
    }
}

/// `realloc` for allocators without one (or whose in-place attempt failed): allocate, copy, free.
///
/// # Safety
///
/// The contract of [`BenchAlloc::realloc`].
pub unsafe fn realloc_by_copy<A: BenchAlloc>(
    a: &mut A,
    ptr: NonNull<u8>,
    old: Layout,
    new_size: usize,
) -> Option<NonNull<u8>> {
    let new_layout = Layout::from_size_align(new_size, old.align()).ok()?;
    let new = a.alloc(new_layout)?;
    // SAFETY:
    // 1. `ptr` is live with `old.size()` bytes (caller's contract) and `new` is a fresh block of
    //    `new_size` bytes, so both ranges are valid for the copied length.
    // 2. A fresh block cannot overlap a live one.
    // 3. `ptr` is live with layout `old`, as `free` requires, and is not used afterwards.
    unsafe {
        ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old.size().min(new_size));
        a.free(ptr, old);
    }
    Some(new)
}

/// A [`BenchAlloc`] behind a lock: one allocator shared by several threads (or CPUs) through
/// [`GlobalAlloc`], the way talc's `Talck` or linked_list_allocator's `LockedHeap` are used.
/// Every call takes the lock for exactly its own duration.
pub struct Locked<L: RawLock, A> {
    lock: L,
    inner: UnsafeCell<A>,
}

impl<L: RawLock, A> core::fmt::Debug for Locked<L, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Locked").finish_non_exhaustive()
    }
}

// SAFETY: the inner allocator is only reached between `lock` and `unlock` of `L` (mutual
// exclusion, see `RawLock`), so at most one thread uses it at a time; it must be `Send` to be used
// from several threads in turn.
unsafe impl<L: RawLock + Sync, A: Send> Sync for Locked<L, A> {}

impl<L: RawLock, A: BenchAlloc> Locked<L, A> {
    /// `inner` behind a fresh lock.
    pub const fn new(inner: A) -> Self {
        Self {
            lock: L::INIT,
            inner: UnsafeCell::new(inner),
        }
    }

    /// Runs `f` on the allocator with the lock held.
    pub fn with<R>(&self, f: impl FnOnce(&mut A) -> R) -> R {
        self.lock.lock();
        // SAFETY: the lock is held, so this is the only reference to the allocator until `unlock`.
        let r = f(unsafe { &mut *self.inner.get() });
        // SAFETY: locked just above by this very call.
        unsafe { self.lock.unlock() };
        r
    }

    /// The allocator, without locking (for setup and teardown, when no thread shares it).
    pub fn get_mut(&mut self) -> &mut A {
        self.inner.get_mut()
    }
}

// SAFETY: every call is forwarded to the inner allocator under the lock; `BenchAlloc` has the
// same contract as `GlobalAlloc` (blocks fit and are aligned, each handed out once), and a failure
// becomes null here.
unsafe impl<L: RawLock, A: BenchAlloc> GlobalAlloc for Locked<L, A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|a| a.alloc(layout))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: a live block of this allocator.
            self.with(|a| unsafe { a.free(ptr, layout) });
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(ptr) = NonNull::new(ptr) else {
            return ptr::null_mut();
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract: a live block with `layout`, a valid size.
        self.with(|a| unsafe { a.realloc(ptr, layout, new_size) })
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

/// Any [`GlobalAlloc`] seen as a [`BenchAlloc`]: the handle each thread of a threaded run
/// replays through. Generic over what the allocator exposes as a `GlobalAlloc`, so a locked heap,
/// a per-CPU front or the host's `malloc` are driven alike.
#[derive(Debug)]
pub struct Shared<'a, G: ?Sized>(pub &'a G);

impl<G: GlobalAlloc + ?Sized> BenchAlloc for Shared<'_, G> {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: benchmark layouts have a non-zero size.
        NonNull::new(unsafe { self.0.alloc(layout) })
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: a live block of this allocator with `layout`.
        unsafe { self.0.dealloc(ptr.as_ptr(), layout) }
    }

    #[inline]
    unsafe fn realloc(
        &mut self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract.
        NonNull::new(unsafe { self.0.realloc(ptr.as_ptr(), old, new_size) })
    }
}

/// A page source that counts the pages it has handed out (the benchmarks' sources for kheap).
pub trait CountedSource: PageSource {
    /// Pages mapped now and at most, and the calls so far.
    fn page_use(&self) -> PageUse;
}

/// A page source that refuses to hold more than `cap` pages at once, and counts what it holds.
#[derive(Debug)]
pub struct CappedSource<S> {
    inner: S,
    cap: usize,
    mapped: usize,
    peak: usize,
    maps: u64,
    unmaps: u64,
}

impl<S: PageSource> CappedSource<S> {
    /// `inner`, limited to `cap` pages mapped at any time.
    pub const fn new(inner: S, cap: usize) -> Self {
        Self {
            inner,
            cap,
            mapped: 0,
            peak: 0,
            maps: 0,
            unmaps: 0,
        }
    }
}

impl<S: PageSource> CappedSource<S> {
    /// Pages held after mapping `count` more, if the cap allows it.
    fn admit(&self, count: usize) -> Result<usize, PageSourceError> {
        let total = self
            .mapped
            .checked_add(count)
            .ok_or(PageSourceError::InvalidRequest)?;
        if total > self.cap {
            return Err(PageSourceError::OutOfMemory);
        }
        Ok(total)
    }

    /// Records a successful map that brought the pages held to `total`.
    fn took(&mut self, total: usize) {
        self.mapped = total;
        self.peak = self.peak.max(total);
        self.maps += 1;
    }
}

impl<S: PageSource> CountedSource for CappedSource<S> {
    fn page_use(&self) -> PageUse {
        PageUse {
            mapped: self.mapped,
            peak: self.peak,
            maps: self.maps,
            unmaps: self.unmaps,
        }
    }
}

// SAFETY: every successful `map_pages` (or `remap_pages`) is a successful call of `inner`, which
// upholds the trait's guarantees; `unmap_pages` and `finish_remap` forward exactly the caller's
// (equally constrained) arguments. The cap only turns some requests into errors (or `None`),
// which the trait allows.
unsafe impl<S: PageSource> PageSource for CappedSource<S> {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        let total = self.admit(count)?;
        let ptr = self.inner.map_pages(count)?;
        self.took(total);
        Ok(ptr)
    }

    /// The inner source places the run; the cap counts only the run's pages.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let total = self.admit(count)?;
        let ptr = self.inner.map_pages_aligned(count, align, aligned_page)?;
        self.took(total);
        Ok(ptr)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        // SAFETY: forwarded contract: the pages were mapped by an earlier `map_pages` of this
        // source, hence of `inner`, and are not referenced any more.
        unsafe { self.inner.unmap_pages(ptr, count) };
        self.mapped -= count;
        self.unmaps += 1;
    }

    /// The inner source's reserve is its own (the kernel's heap window's, shared by every heap
    /// over it): filling it maps nothing for the heap, so the cap does not count it.
    #[inline]
    fn wants_prepare(&self) -> bool {
        self.inner.wants_prepare()
    }

    fn prepare(&mut self) -> bool {
        self.inner.prepare()
    }

    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let Ok(total) = self.admit(extra) else {
            return false;
        };
        if !self.inner.grow_pages(ptr, count, extra) {
            return false;
        }
        self.took(total);
        true
    }

    /// The inner source moves the run; the cap counts the pages the move adds (the moved
    /// pages keep their memory), admitted before the move starts.
    fn remap_pages(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        self.admit(new_count.checked_sub(count)?).ok()?;
        self.inner.remap_pages(ptr, count, new_count)
    }

    unsafe fn finish_remap(
        &mut self,
        old: NonNull<u8>,
        count: usize,
        new: NonNull<u8>,
        new_count: usize,
        keep_new: bool,
    ) {
        // SAFETY: forwarded contract: the move was started by `inner.remap_pages` above.
        unsafe {
            self.inner
                .finish_remap(old, count, new, new_count, keep_new)
        };
        if keep_new {
            self.took(self.mapped - count + new_count);
        }
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        self.inner.window()
    }
}

/// Our heap core, driven through its own (non-global) API.
impl<S: CountedSource> BenchAlloc for Heap<S> {
    #[inline]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.allocate(layout).ok()
    }

    #[inline]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract: `ptr` is a live block of this heap with `layout`.
        unsafe { self.deallocate(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded contract: `ptr` is live with layout `old`, `new` is non-zero.
        unsafe { self.reallocate(ptr, old, new).ok() }
    }

    fn pages(&self) -> Option<PageUse> {
        Some(self.source().page_use())
    }

    fn release(&mut self) {
        self.trim();
    }
}

/// A kheap user pool for one object layout (the `kmem_cache`-style API) over its own heap.
/// Requests of any other layout are refused (`None`): the pool serves exactly one. Dropping it
/// destroys the pool and trims the heap (every block must have been freed).
pub struct KheapPool<S: PageSource> {
    heap: Heap<S>,
    pool: PoolId,
    object: Layout,
}

impl<S: PageSource> core::fmt::Debug for KheapPool<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KheapPool")
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

impl<S: PageSource> KheapPool<S> {
    /// A fresh heap over `source` with one user pool for `object`.
    ///
    /// # Errors
    ///
    /// What `Heap::create_pool` says (no page for the pool's header, an unsupported layout).
    pub fn new(source: S, object: Layout) -> Result<Self, kheap::PoolError> {
        let mut heap = Heap::new(source);
        let pool = heap.create_pool(object.size(), object.align())?;
        Ok(Self { heap, pool, object })
    }
}

impl<S: PageSource> Drop for KheapPool<S> {
    fn drop(&mut self) {
        // Every block was freed by the replay's teardown: the pool's chunks go back, then the
        // heap's reserves (its root run and page-map nodes stay: `kheap::Heap` has no teardown).
        let _ = self.heap.destroy_pool(self.pool);
        self.heap.trim();
    }
}

impl<S: CountedSource> BenchAlloc for KheapPool<S> {
    // Always inlined into the replay loop, as the general allocators' adapters are: under TCG a
    // call and return cost far more time than their two instructions.
    #[inline(always)]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if layout != self.object {
            return None;
        }
        self.heap.pool_allocate(self.pool).ok()
    }

    #[inline(always)]
    unsafe fn free(&mut self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: forwarded contract: `ptr` is a live block of this adapter, hence of the pool.
        unsafe { self.heap.pool_deallocate(self.pool, ptr) }
    }

    unsafe fn realloc(&mut self, _: NonNull<u8>, _: Layout, _: usize) -> Option<NonNull<u8>> {
        None
    }

    fn pages(&self) -> Option<PageUse> {
        Some(self.heap.source().page_use())
    }
}
