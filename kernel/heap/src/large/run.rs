//! Page runs: a mapping of their own for every request whose footprint reaches
//! [`PAGE_RUN_THRESHOLD`](super::PAGE_RUN_THRESHOLD).
//!
//! ```text
//! run + 0             Mapping node (index links, length = (1 + data pages) * 4096, kind RUN)
//! run + 4096 - 16     a block header with state RUN (what `deallocate` reads to pick the path)
//! run + 4096          user data, ceil(size / 4096) pages, aligned to the request's alignment
//! ```
//!
//! Over-aligned runs are placed by the page source ([`PageSource::map_pages_aligned`]); a run
//! shrinks in place by unmapping its tail pages and grows in place when the source can map the
//! pages right after it ([`PageSource::grow_pages`]).

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::LargeAlloc;
use super::block::{Block, HEADER, RUN};
use super::index::{KIND_RUN, Mapping, run_node};
use crate::error::AllocError;
use crate::source::{PAGE_SIZE, PageSource, aligned_slack};

impl LargeAlloc {
    /// The page-run path of [`allocate`](Self::allocate).
    pub(super) fn allocate_run<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        let data_pages = layout.size().div_ceil(PAGE_SIZE).max(1);
        let pages = data_pages
            .checked_add(1)
            .ok_or(AllocError::TooLarge { layout })?;
        // A run that could not be placed even in a whole address space (with the slack an
        // aligned placement may have to skip) is too large, rather than out of pages.
        aligned_slack(pages, align.max(PAGE_SIZE), 1)
            .map_err(|_| AllocError::TooLarge { layout })?;
        // The header page, then the data at an `align`-aligned address: the source finds such a
        // range and maps just these pages (for an alignment above a page).
        let mapped = if align > PAGE_SIZE {
            src.map_pages_aligned(pages, align, 1)
        } else {
            src.map_pages(pages)
        };
        let node = mapped
            .map_err(|cause| AllocError::OutOfPages { layout, cause })?
            .as_ptr();
        let data = node.wrapping_add(PAGE_SIZE);
        debug_assert!(data.addr().is_multiple_of(align));
        // SAFETY: the source mapped the `pages` pages at `node` for us alone; the node page and
        // the data pages are written only here.
        unsafe {
            let node = node.cast::<Mapping>();
            node.write(Mapping {
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                parent: ptr::null_mut(),
                len: (1 + data_pages) * PAGE_SIZE,
                kind: KIND_RUN,
            });
            self.index.insert(node);
            let header = Block(data.wrapping_sub(HEADER));
            header.set_prev_size(0);
            header.set(0, RUN);
        }
        self.page_runs += 1;
        self.page_run_pages += 1 + data_pages;
        self.live_blocks += 1;
        self.live_bytes += data_pages * PAGE_SIZE;
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
            let pages = (*node).len / PAGE_SIZE;
            self.index.remove(node);
            self.page_runs -= 1;
            self.page_run_pages -= pages;
            self.live_blocks -= 1;
            self.live_bytes -= (pages - 1) * PAGE_SIZE;
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
        let len = unsafe { (*node).len };
        let data_pages = len / PAGE_SIZE - 1;
        let new_pages = new_size.div_ceil(PAGE_SIZE).max(1);
        if new_pages > data_pages {
            let extra = new_pages - data_pages;
            // SAFETY: `node` is the start of a live mapping of ours, so it is not null.
            let start = unsafe { NonNull::new_unchecked(node.cast::<u8>()) };
            if extra
                .checked_mul(PAGE_SIZE)
                .is_none_or(|b| b > isize::MAX as usize - len)
                || !src.grow_pages(start, len / PAGE_SIZE, extra)
            {
                return false;
            }
            // SAFETY: the node page is mapped (live run); the run now has `extra` more pages.
            unsafe { (*node).len = len + extra * PAGE_SIZE };
            self.page_run_pages += extra;
            self.live_bytes += extra * PAGE_SIZE;
            return true;
        }
        let drop_pages = data_pages - new_pages;
        if drop_pages > 0 {
            // SAFETY: the dropped pages are the run's own tail, beyond the `new_size` bytes the
            // caller keeps using; the node is updated before they go.
            unsafe {
                (*node).len = (1 + new_pages) * PAGE_SIZE;
                let tail = ptr.as_ptr().wrapping_add(new_pages * PAGE_SIZE);
                src.unmap_pages(NonNull::new_unchecked(tail), drop_pages);
            }
            self.page_run_pages -= drop_pages;
            self.live_bytes -= drop_pages * PAGE_SIZE;
        }
        true
    }
}
