//! Page runs: a mapping of their own for every request whose footprint reaches
//! [`PAGE_RUN_THRESHOLD`](super::PAGE_RUN_THRESHOLD).
//!
//! ```text
//! run + 0              Mapping node (index links, length = pages * 4096, kind RUN, data offset)
//! run + data - 16      a block header with state RUN (what `deallocate` reads to pick the path),
//!                      its prev_size holding the data offset
//! run + data           user data, ceil((data + size) / 4096) pages in all
//! ```
//!
//! The data starts inside the node's page, at an offset `data` that is a multiple of a cache line
//! and of the request's alignment, from [`RUN_MIN_OFFSET`] to a whole page (a page exactly for an
//! alignment of a page or more). Within the room the run's last page leaves anyway, the offset
//! *rotates* from one run to the next (jemalloc's "cache-oblivious" large allocations): runs that
//! all started at offset 0 of a page would put the same element of equally long buffers in the
//! same cache sets, so a program filling a thousand vectors at once would evict its own stores.
//! The rotation costs no page: the run is as long as it would be at the smallest offset. A
//! power-of-two buffer (the usual `Vec` capacity) leaves a whole page of room, so its offset
//! takes all 64 cache lines of a page in turn.
//!
//! Over-aligned runs are placed by the page source ([`PageSource::map_pages_aligned`]); a run
//! shrinks in place by unmapping its tail pages and grows in place when the source can map the
//! pages right after it ([`PageSource::grow_pages`]); either keeps the data offset. A run that
//! cannot grow in place may be moved by the source ([`PageSource::remap_pages`], `move_run`),
//! which keeps the offset too (not for over-aligned runs: a moved run is only page aligned).

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::LargeAlloc;
use super::block::{Block, HEADER, RUN};
use super::index::{KIND_RUN, Mapping, run_node};
use crate::error::AllocError;
use crate::source::{PAGE_SIZE, PageSource, aligned_slack};

/// Cache-line size: the unit of the data offset's rotation.
pub(super) const LINE: usize = 64;
/// Smallest data offset of a run: the node and the RUN tag fit in front of it.
pub(super) const RUN_MIN_OFFSET: usize = LINE;

// The node and the tag in front of the data fit below the smallest offset.
const _: () = assert!(size_of::<Mapping>() + HEADER <= RUN_MIN_OFFSET);

/// The shape of the `turn`-th run for `size` bytes aligned to `align`: `(pages, data offset)`,
/// or `None` if the byte count overflows.
///
/// The run is as short as the smallest offset allows (`ceil((step + size) / 4096)` pages, `step`
/// being the larger of the alignment and a cache line); the offset is then the
/// `turn mod n`-th of the `n` multiples of `step` (at most a page) that still fit in those pages.
/// An alignment of a page or more puts the data at the second page.
pub(super) fn run_shape(size: usize, align: usize, turn: usize) -> Option<(usize, usize)> {
    let size = size.max(1);
    if align >= PAGE_SIZE {
        let pages = size.div_ceil(PAGE_SIZE).checked_add(1)?;
        return Some((pages, PAGE_SIZE));
    }
    let step = align.max(LINE);
    let pages = size.checked_add(step)?.div_ceil(PAGE_SIZE);
    let room = pages.checked_mul(PAGE_SIZE)? - size;
    let slots = room.min(PAGE_SIZE) / step;
    Some((pages, step * (1 + turn % slots)))
}

impl LargeAlloc {
    /// The page-run path of [`allocate`](Self::allocate).
    pub(super) fn allocate_run<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        let (pages, offset) = run_shape(layout.size(), align, self.run_turn)
            .ok_or(AllocError::TooLarge { layout })?;
        // A run that could not be placed even in a whole address space (with the slack an
        // aligned placement may have to skip) is too large, rather than out of pages.
        aligned_slack(pages, align.max(PAGE_SIZE), 1)
            .map_err(|_| AllocError::TooLarge { layout })?;
        // For an alignment above a page: the node page, then the data at an `align`-aligned
        // address; the source finds such a range and maps just these pages.
        let mapped = if align > PAGE_SIZE {
            src.map_pages_aligned(pages, align, 1)
        } else {
            src.map_pages(pages)
        };
        let node = mapped
            .map_err(|cause| AllocError::OutOfPages { layout, cause })?
            .as_ptr();
        self.run_turn = self.run_turn.wrapping_add(1);
        let data = node.wrapping_add(offset);
        debug_assert!(data.addr().is_multiple_of(align));
        let len = pages * PAGE_SIZE;
        // SAFETY: the source mapped the `pages` pages at `node` for us alone; the node and the
        // tag lie in front of the data (RUN_MIN_OFFSET), all inside the first page.
        unsafe {
            let node = node.cast::<Mapping>();
            node.write(Mapping {
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                parent: ptr::null_mut(),
                len,
                kind: KIND_RUN,
                data: offset,
            });
            self.index.insert(node);
            let header = Block(data.wrapping_sub(HEADER));
            header.set_prev_size(offset);
            header.set(0, RUN);
        }
        self.page_runs += 1;
        self.page_run_pages += pages;
        self.live_blocks += 1;
        self.run_bytes += len - offset;
        // SAFETY: `data` is inside the mapping `src` returned, so it is not null.
        Ok(unsafe { NonNull::new_unchecked(data) })
    }

    /// Frees the page run whose data starts at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is the data pointer of a live page run of ours that nobody uses any more.
    pub(super) unsafe fn free_run<S: PageSource>(&mut self, src: &mut S, ptr: NonNull<u8>) {
        let node = run_node(ptr);
        // SAFETY: the node page is mapped (live run); once out of the index the run is referred
        // to by nothing, so its pages go back to the source.
        unsafe {
            let len = (*node).len;
            let pages = len / PAGE_SIZE;
            self.index.remove(node);
            self.page_runs -= 1;
            self.page_run_pages -= pages;
            self.live_blocks -= 1;
            self.run_bytes -= len - (*node).data;
            src.unmap_pages(NonNull::new_unchecked(node.cast::<u8>()), pages);
        }
    }

    /// Resizes a page run in place: shrinking unmaps its tail pages; growing asks the source to
    /// map the pages right after it ([`PageSource::grow_pages`]) and fails if it cannot.
    ///
    /// # Safety
    ///
    /// `ptr` is the data pointer of a live page run of ours.
    pub(super) unsafe fn resize_run<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> bool {
        let node = run_node(ptr);
        // SAFETY: the node page is mapped (live run).
        let (len, offset) = unsafe { ((*node).len, (*node).data) };
        let pages = len / PAGE_SIZE;
        // The data keeps its offset: the run needs the pages up to `offset + new_size`.
        let Some(new_pages) = new_size
            .max(1)
            .checked_add(offset)
            .map(|end| end.div_ceil(PAGE_SIZE))
        else {
            return false;
        };
        if new_pages > pages {
            let extra = new_pages - pages;
            // SAFETY: `node` is the start of a live mapping of ours, so it is not null.
            let start = unsafe { NonNull::new_unchecked(node.cast::<u8>()) };
            if new_pages
                .checked_mul(PAGE_SIZE)
                .is_none_or(|b| b > isize::MAX as usize)
                || !src.grow_pages(start, pages, extra)
            {
                return false;
            }
            // SAFETY: the node page is mapped (live run); the run now has `extra` more pages.
            unsafe { (*node).len = len + extra * PAGE_SIZE };
            self.page_run_pages += extra;
            self.run_bytes += extra * PAGE_SIZE;
            return true;
        }
        let drop_pages = pages - new_pages;
        if drop_pages > 0 {
            // SAFETY: the dropped pages are the run's own tail, beyond the `offset + new_size`
            // bytes the caller keeps using (`new_pages >= 1`: the node page stays); the node is
            // updated before they go.
            unsafe {
                (*node).len = new_pages * PAGE_SIZE;
                let tail = node.cast::<u8>().wrapping_add(new_pages * PAGE_SIZE);
                src.unmap_pages(NonNull::new_unchecked(tail), drop_pages);
            }
            self.page_run_pages -= drop_pages;
            self.run_bytes -= drop_pages * PAGE_SIZE;
        }
        true
    }

    /// Moves a page run that cannot grow in place to a new run of the pages `new_size` needs,
    /// through the source's [`PageSource::remap_pages`] (a kernel moves the frames instead of
    /// the bytes), and returns the new data pointer; `None` if the source does not move runs,
    /// has no room, or the run is over-aligned (a moved run is only page aligned). The data
    /// keeps its offset in the first page, so the rotation of cache lines carries over.
    ///
    /// # Safety
    ///
    /// `ptr` is the data pointer of a live page run of ours, and `new_size` is more than its
    /// usable size.
    pub(super) unsafe fn move_run<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let node = run_node(ptr);
        // SAFETY: the node page is mapped (live run).
        let (len, offset) = unsafe { ((*node).len, (*node).data) };
        // An offset of a page is an alignment of a page or more: the data must stay aligned.
        if offset >= PAGE_SIZE {
            return None;
        }
        let pages = len / PAGE_SIZE;
        let new_pages = new_size
            .checked_add(offset)
            .map(|end| end.div_ceil(PAGE_SIZE))
            .filter(|&p| {
                p > pages
                    && p.checked_mul(PAGE_SIZE)
                        .is_some_and(|b| b <= isize::MAX as usize)
            })?;
        // SAFETY: `node` is the start of a live mapping of ours, so it is not null.
        let old = unsafe { NonNull::new_unchecked(node.cast::<u8>()) };
        let new = src.remap_pages(old, pages, new_pages)?;
        let new_node = new.as_ptr().cast::<Mapping>();
        let data = new.as_ptr().wrapping_add(offset);
        // SAFETY: 1. the old run is still mapped until `finish_remap`, so its node may be
        // unlinked from the index (which writes its neighbours, and may write it: whether that
        // shows in the new run does not matter, its node is rewritten below); 2. the move is
        // then kept; the caller gave the old run up and the index no longer names it; 3. the
        // new run's first page holds the old node page's bytes and is ours alone, so its node
        // and the tag in front of the data (whose check bits depend on the address) are
        // rewritten there.
        unsafe {
            self.index.remove(node);
            src.finish_remap(old, pages, new, new_pages, true);
            new_node.write(Mapping {
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                parent: ptr::null_mut(),
                len: new_pages * PAGE_SIZE,
                kind: KIND_RUN,
                data: offset,
            });
            self.index.insert(new_node);
            let header = Block(data.wrapping_sub(HEADER));
            header.set_prev_size(offset);
            header.set(0, RUN);
        }
        let extra = new_pages - pages;
        self.page_run_pages += extra;
        self.run_bytes += extra * PAGE_SIZE;
        // SAFETY: `data` lies inside the run the source returned, so it is not null.
        Some(unsafe { NonNull::new_unchecked(data) })
    }
}
