//! The general allocator's paths: `allocate`, `deallocate`, `reallocate`, `usable_size`, and the
//! debug check of a pointer before it is touched.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::Heap;
use super::state::Live;
use crate::back::check_block;
use crate::debug::{self, Fault, Owner};
use crate::error::AllocError;
use crate::large::LargeAlloc;
use crate::pagemap::Entry;
use crate::size_class::{CLASS_SIZES, SizeClass, class_for, small_class};
use crate::source::PageSource;

impl<S: PageSource> Heap<S> {
    /// Allocates a block for `layout`. O(1) for class sizes (plus a page-source call when a
    /// class needs a new chunk); large requests cost what the large allocator costs.
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
        if let Some(mut st) = self.live()
            && let Some(i) = small_class(layout)
            // SAFETY: `small_class` returns class indices.
            && let Some(p) = unsafe { st.class(i) }.take(layout.size())
        {
            return Ok(p);
        }
        self.allocate_slow(layout)
    }

    /// Everything but the magazine hit, on an initialised heap: a refill, or a large request
    /// served by one inlined copy of the large allocator's region path (search and carve,
    /// without a call between them). First use, and a request the page source refuses pages
    /// for, take [`allocate_retrying`](Self::allocate_retrying).
    #[inline(never)]
    fn allocate_slow(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let tried = match self.live() {
            Some(mut st) => match st.allocate_uncached(layout) {
                Err(AllocError::OutOfPages { .. }) => true,
                result => return result,
            },
            None => false,
        };
        self.allocate_retrying(layout, tried)
    }

    /// First use (the first root run is mapped), and the retry after a refusal: every cache is
    /// [trimmed](Self::trim) and the request tried once more. `tried`: the request already
    /// failed once for want of pages (so it is not tried again before the trim).
    #[inline(never)]
    fn allocate_retrying(
        &mut self,
        layout: Layout,
        tried: bool,
    ) -> Result<NonNull<u8>, AllocError> {
        let mut st = self
            .live_or_init()
            .map_err(|cause| AllocError::OutOfPages { layout, cause })?;
        if !tried {
            match st.allocate_uncached(layout) {
                Err(AllocError::OutOfPages { .. }) => {}
                result => return result,
            }
        }
        st.trim();
        st.allocate_uncached(layout)
    }

    /// Frees a block.
    ///
    /// A class-sized block goes to its class's magazine; when the magazine is full, the block
    /// goes straight back to its chunk instead (one block: a free never moves a batch). The pointer the magazine keeps is rebuilt with a
    /// provenance that covers the whole block: that of the page source's window
    /// ([`PageSource::window`]) in a release build whose source has one (no lookup at all), and
    /// otherwise that of the block's chunk page, found with one page-map lookup. A large block
    /// (a layout no class serves) goes from here straight to the large allocator, in one
    /// out-of-line call that holds the whole large free path.
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
        if let Some(mut st) = self.live() {
            let Some(i) = small_class(layout) else {
                // A call in tail position, as below.
                // SAFETY: forwarded; `small_class` says `layout` is a large layout, and the
                // heap is initialised (`live` said so).
                return unsafe { self.deallocate_large(ptr, layout) };
            };
            // SAFETY: `small_class` returns class indices.
            let mut class = unsafe { st.class(i) };
            // SAFETY: the caller vouches that `ptr` is an allocated block of class `i`.
            if let Some(block) = unsafe { class.freed_block_fast(ptr) } {
                if !class.cache(block, layout.size()) {
                    // A call in tail position, as below.
                    // SAFETY: `block` is the caller's block, checked, with a provenance
                    // covering it.
                    return unsafe { self.free_past_full_magazine(i, block, layout.size()) };
                }
                return;
            }
        }
        // A call in tail position only (a page-map cache miss included), so that the fast path
        // above needs no saved registers.
        // SAFETY: forwarded.
        unsafe { self.deallocate_slow(ptr, layout) }
    }

    /// [`deallocate`](Self::deallocate) into a full magazine: `block` goes straight back to its
    /// chunk (one page-map lookup; the magazine keeps its blocks).
    ///
    /// # Safety
    ///
    /// `i < NUM_CLASSES`, and `block` is a block of class `i` the caller gives up, that its
    /// chunk counts as used, with a provenance covering the block.
    #[inline(never)]
    unsafe fn free_past_full_magazine(&mut self, i: usize, block: NonNull<u8>, size: usize) {
        if let Some(mut st) = self.live() {
            // SAFETY: guaranteed by the caller.
            unsafe { st.class(i).give(block, size) };
        }
    }

    /// Frees what the fast path does not: class blocks outside the window or the page map's
    /// cached node, and (with `debug-checks`, a panic) pointers that are no such block, or
    /// anything freed into a heap that was never initialised. The pointer is looked up once, and
    /// the free goes where the entry says. (Large blocks take
    /// [`deallocate_large`](Self::deallocate_large); `class_for` is total, so a large layout
    /// that reaches this function takes the same path.)
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    #[inline(never)]
    unsafe fn deallocate_slow(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some(mut st) = self.live() else {
            return debug::bad_large_free(ptr, layout, Entry::Empty);
        };
        match class_for(layout) {
            SizeClass::Small(i) => {
                // SAFETY: `class_for` returns class indices.
                let mut class = unsafe { st.class(i) };
                // SAFETY: the caller vouches that `ptr` is an allocated block of class `i`; the
                // block `freed_block` returns is that block, checked, given up by the caller.
                unsafe {
                    if let Some(block) = class.freed_block(ptr) {
                        class.give(block, layout.size());
                    }
                }
            }
            // SAFETY: forwarded; `class_for` says `layout` is a large layout.
            SizeClass::Large => unsafe { st.deallocate_large(ptr, layout) },
        }
    }

    /// Frees a large block on an initialised heap (what [`deallocate`](Self::deallocate) does
    /// when `small_class` names no class): no class mapping again, one call into the large
    /// allocator, whose free path is inlined here.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate), `layout` is one the classes do not serve, and
    /// the heap is initialised.
    #[inline(never)]
    unsafe fn deallocate_large(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: initialised (caller); the rest is forwarded.
        unsafe { self.live_initialised().deallocate_large(ptr, layout) }
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
        let Some(mut st) = self.live() else {
            return Err(AllocError::Uninitialized);
        };
        st.check_live(ptr, old);
        // Where a block that does not resize in place goes: a page run for a doubling vector
        // (see `allocate_for_growth`), otherwise a usual allocation.
        let mut grown = None;
        match (class_for(old), class_for(new)) {
            (SizeClass::Small(a), SizeClass::Small(b)) if a == b => {
                *st.requested() = *st.requested() - old.size() + new_size;
                return Ok(ptr);
            }
            (SizeClass::Large, SizeClass::Large) => {
                let block = st.large_block(ptr, old);
                let mut resized = block.filter(|&b| {
                    // SAFETY: the caller vouches for `ptr` and `old`; `b` is the same address.
                    unsafe { st.resize_large(b, old, new_size) }
                });
                // Pages that wait to be released (empty chunks, regions beyond the idle limit)
                // may be the ones a page run would grow into: a page run's growth that failed
                // releases them all and tries once more (a call that would move or copy the
                // run anyway: at least 64 KiB, or a doubling from 16 KiB).
                if resized.is_none()
                    && new_size > old.size()
                    // SAFETY: the caller vouches for `ptr`; `b` is the same address.
                    && block.is_some_and(|b| unsafe { st.large().0.is_page_run(b) })
                    && st.release_waiting()
                {
                    resized = block.filter(|&b| {
                        // SAFETY: as above.
                        unsafe { st.resize_large(b, old, new_size) }
                    });
                }
                let (large, mut rec) = st.large();
                // A page run that cannot grow in place is moved by the page source if it can
                // (the frames, not the bytes), before falling back to allocate, copy and free.
                let resized = resized.or_else(|| {
                    block.and_then(|block| {
                        // SAFETY: as above; it did not resize in place, so it is growing.
                        unsafe { large.move_grown(&mut rec, block, new_size) }
                    })
                });
                if let Some(block) = resized {
                    *st.requested() = *st.requested() - old.size() + new_size;
                    return Ok(block);
                }
                if block.is_some() && new_size > old.size() {
                    grown = large.allocate_for_growth(&mut rec, new, old.size());
                    if grown.is_some() {
                        *st.requested() += new_size;
                    }
                }
            }
            _ => {}
        }
        let fresh = match grown {
            Some(fresh) => fresh,
            None => self.allocate(new)?,
        };
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
    /// it touches a block. Does nothing without the feature.
    pub(crate) fn check_allocated(&mut self, ptr: NonNull<u8>, layout: Layout) {
        match self.live() {
            Some(mut st) => st.check_live(ptr, layout),
            None => debug::bad_large_free(ptr, layout, Entry::Empty),
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
                let Some(st) = self.view() else {
                    return layout.size();
                };
                let block = match st.map.get(ptr.addr().get()) {
                    Entry::Large(run) => run.with_addr(ptr.addr()),
                    _ => ptr,
                };
                // SAFETY: the caller vouches for the block; `block` is the same address.
                unsafe { st.large.usable_size(block, layout) }
            }
        }
    }
}

impl<S: PageSource> Live<'_, S> {
    /// [`LargeAlloc::resize_in_place`] of a large block.
    ///
    /// # Safety
    ///
    /// As for [`LargeAlloc::resize_in_place`].
    unsafe fn resize_large(&mut self, block: NonNull<u8>, old: Layout, new_size: usize) -> bool {
        let (large, mut rec) = self.large();
        // SAFETY: forwarded.
        unsafe { large.resize_in_place(&mut rec, block, old, new_size) }
    }

    /// Releases every page that waits to be released: the pending chunks and the large
    /// allocator's excess regions. Returns whether there was any.
    pub(super) fn release_waiting(&mut self) -> bool {
        let chunks = self.back().release_all_pending();
        let (large, mut rec) = self.large();
        let regions = large.has_excess();
        while large.has_excess() {
            large.release_excess(&mut rec);
        }
        chunks || regions
    }

    /// The large-block free of [`Heap::deallocate`]: the block rebuilt with its mapping's
    /// provenance (after the debug check), freed, and its bytes counted out.
    ///
    /// # Safety
    ///
    /// As for [`Heap::deallocate`], and `layout` is one the classes do not serve.
    #[inline(always)]
    unsafe fn deallocate_large(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some(block) = self.large_block(ptr, layout) else {
            return;
        };
        *self.requested() -= layout.size();
        let (large, _) = self.large();
        // SAFETY: the caller guarantees `ptr` is a live large block of this layout; `block` is
        // the same address.
        if let Some(rest) = unsafe { large.free_without_source(block, layout) } {
            let (large, mut rec) = self.large();
            // SAFETY: what this free left, on the same allocator and source.
            unsafe { large.finish_free(&mut rec, rest) };
        }
    }

    /// [`Heap::allocate`] past the magazine's fast path, on an initialised heap. Inlined into
    /// `allocate_slow` (and `allocate_retrying`), and the large allocator's region path into
    /// it: one call from the fast path to the large allocator's search and carve.
    #[inline(always)]
    fn allocate_uncached(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        match class_for(layout) {
            SizeClass::Small(i) => {
                // SAFETY: `class_for` returns class indices.
                let mut class = unsafe { self.class(i) };
                match class.take(layout.size()) {
                    Some(p) => Ok(p),
                    None => class
                        .refill_and_take(layout.size())
                        .map_err(|cause| AllocError::OutOfPages { layout, cause }),
                }
            }
            SizeClass::Large => {
                let (large, mut rec) = self.large();
                let pages = *rec.pages;
                let p = large.allocate(&mut rec, layout)?;
                // Served from a region the heap already had (no page mapped or unmapped): a
                // quiet call, which unmaps one region a free left beyond the idle limit, or
                // else lets the source work ahead of need (`PageSource::prepare`).
                if *rec.pages == pages {
                    if large.has_excess() {
                        large.release_excess(&mut rec);
                    } else if rec.src.wants_prepare() {
                        let _ = rec.src.prepare();
                    }
                }
                *self.requested() += layout.size();
                Ok(p)
            }
        }
    }

    /// The large block at `ptr` with a provenance that covers its mapping (the large allocator
    /// reads its header and neighbours): rebuilt from the page source's window in a release
    /// build whose source has one (no lookup), otherwise from the mapping's start that the page
    /// map records. `None` (after the debug report) if the page map names no large mapping.
    #[inline]
    fn large_block(&mut self, ptr: NonNull<u8>, layout: Layout) -> Option<NonNull<u8>> {
        if !debug::ENABLED
            && let Some(block) = self.window().block(ptr)
        {
            return Some(block);
        }
        let (large, rec) = self.large();
        let entry = rec.map.lookup(ptr.addr().get());
        let Entry::Large(run) = entry else {
            debug::bad_large_free(ptr, layout, entry);
            return None;
        };
        check_large(large, ptr, layout, entry);
        Some(run.with_addr(ptr.addr()))
    }

    /// `debug-checks`: panics unless `ptr` is a live block for `layout` (see
    /// [`Heap::check_allocated`]). Does nothing without the feature.
    pub(super) fn check_live(&mut self, ptr: NonNull<u8>, layout: Layout) {
        if !debug::ENABLED {
            return;
        }
        match class_for(layout) {
            SizeClass::Small(i) => {
                let owner = Owner::Class {
                    size: CLASS_SIZES[i],
                };
                // SAFETY: `class_for` returns class indices.
                let lists = unsafe { self.class(i) }.lists();
                match self.map().get(ptr.addr().get()) {
                    // SAFETY: a live descriptor whose page holds `ptr`; live class lists.
                    Entry::Chunk(d) => unsafe { check_block(d.as_ptr(), lists, ptr, owner) },
                    other => debug::bad_free(ptr, owner, Fault::NotHeap(other)),
                }
            }
            SizeClass::Large => {
                let (large, rec) = self.large();
                let entry = rec.map.get(ptr.addr().get());
                check_large(large, ptr, layout, entry);
            }
        }
    }
}

/// `debug-checks`: panics unless `ptr`, whose page the page map records as `entry`, is a live
/// block of the large allocator. Does nothing without the feature.
fn check_large(large: &LargeAlloc, ptr: NonNull<u8>, layout: Layout, entry: Entry) {
    if !debug::ENABLED {
        return;
    }
    match entry {
        Entry::Large(run) if large.owns(run.with_addr(ptr.addr())) => {}
        _ => debug::bad_large_free(ptr, layout, entry),
    }
}
