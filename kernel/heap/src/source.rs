//! The heap's only way to get memory: a source of 4 KiB pages (the kernel's `mmap`/`munmap`).

use core::fmt;
use core::ptr::NonNull;

/// Size of one page, the unit in which the heap asks its [`PageSource`] for memory.
pub const PAGE_SIZE: usize = 4096;

/// Why a [`PageSource`] could not map pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSourceError {
    /// No physical memory (frames) is left to back the pages.
    OutOfMemory,
    /// The virtual window the source maps into has no free run of the requested length.
    OutOfAddressSpace,
    /// The request itself is unusable (zero pages, or a length whose byte size overflows).
    InvalidRequest,
}

impl fmt::Display for PageSourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory => f.write_str("out of physical memory"),
            Self::OutOfAddressSpace => {
                f.write_str("out of virtual address space in the heap window")
            }
            Self::InvalidRequest => f.write_str("invalid page request"),
        }
    }
}

/// Checks the arguments of a [`PageSource::map_pages_aligned`] call and returns its *slack*:
/// `align / PAGE_SIZE - 1` pages, so that any run of `count` + slack pages contains a run of
/// `count` pages whose page `aligned_page` starts at a multiple of `align`.
///
/// Fails with [`PageSourceError::InvalidRequest`] unless `count > 0`, `aligned_page < count`,
/// `align` is a power of two of at least [`PAGE_SIZE`], and `count` + slack pages fit in
/// `isize::MAX` bytes.
pub fn aligned_slack(
    count: usize,
    align: usize,
    aligned_page: usize,
) -> Result<usize, PageSourceError> {
    if count == 0 || aligned_page >= count || !align.is_power_of_two() || align < PAGE_SIZE {
        return Err(PageSourceError::InvalidRequest);
    }
    let slack = align / PAGE_SIZE - 1;
    count
        .checked_add(slack)
        .and_then(|pages| pages.checked_mul(PAGE_SIZE))
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .map(|_| slack)
        .ok_or(PageSourceError::InvalidRequest)
}

/// Bytes from the page address `start` to the first address at or after it where a run would
/// have its page `aligned_page` at a multiple of `align` (a power of two): less than `align`.
pub const fn aligned_offset(start: usize, align: usize, aligned_page: usize) -> usize {
    start
        .wrapping_add(aligned_page.wrapping_mul(PAGE_SIZE))
        .wrapping_neg()
        & (align - 1)
}

/// A source of page-aligned, contiguous runs of 4 KiB pages.
///
/// In a kernel this maps fresh physical frames into a heap window; on the host it can be `mmap` or
/// a fixed arena. The heap never touches page tables itself: this trait is the whole interface.
///
/// # Safety
///
/// An implementation must guarantee that a successful [`map_pages`](Self::map_pages)`(n)` returns a
/// pointer that is aligned to [`PAGE_SIZE`] and is the start of `n * PAGE_SIZE` bytes that are
/// readable and writable, not aliased by anything else, and that stay valid until they are passed
/// back through [`unmap_pages`](Self::unmap_pages). The contents of freshly mapped pages are
/// unspecified (callers must not assume zeroes).
///
/// An implementation that overrides [`window`](Self::window) to return `Some(w)` must return the
/// same `w` for its whole life, every page it maps must lie inside `w`, and every byte of a
/// mapped page must be accessible through a pointer derived from `w` as well as through the
/// pointer `map_pages` returned (true of a kernel window whose pointers are made from addresses,
/// and of an arena whose pages are carved from one allocation).
///
/// An implementation that overrides [`map_pages_aligned`](Self::map_pages_aligned) must give
/// its runs every guarantee of a `map_pages(count)` run, and page `aligned_page` of a run it
/// returns must start at a multiple of `align` (the heap hands that address out as a block of
/// that alignment).
///
/// An implementation that overrides [`remap_pages`](Self::remap_pages) must, on `Some(new)`,
/// return the start of `new_count` page-aligned pages inside its window (if it has one), the
/// first `count` of them holding the old run's bytes, and once [`finish_remap`](Self::finish_remap)
/// keeps the new run, give the whole of it every guarantee of a `map_pages(new_count)` run.
pub unsafe trait PageSource {
    /// Maps `count` contiguous pages and returns the address of the first one.
    ///
    /// Fails (never panics) when memory or address space runs out or `count` is zero; a failed
    /// call leaves nothing mapped.
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError>;

    /// Maps `count` contiguous pages whose page `aligned_page` (counting from 0) starts at a
    /// multiple of `align`, and returns the address of the first page: a run for data with a
    /// large alignment, with `aligned_page` pages of bookkeeping in front of it (the heap's
    /// over-aligned page runs put one page, holding their index node, before their data).
    ///
    /// Fails (never panics) when memory or address space runs out, and when the request is
    /// invalid (see [`aligned_slack`]: `align` a power of two of at least [`PAGE_SIZE`],
    /// `aligned_page < count`); a failed call leaves nothing mapped. The run carries the
    /// guarantees of a [`map_pages`](Self::map_pages) run, and its sub-runs may be unmapped
    /// alone in the same way.
    ///
    /// The default maps `count` + [`aligned_slack`] pages with `map_pages` (such a run always
    /// contains a suitable one) and unmaps the head and tail around the aligned part: right for
    /// every source, but it needs memory for the whole slack while it works — for a 512 MiB
    /// alignment, 512 MiB of it. A source that chooses the addresses itself should override it
    /// to find a suitably aligned free range and map only the `count` pages.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let slack = aligned_slack(count, align, aligned_page)?;
        let base = self.map_pages(count + slack)?;
        let head = aligned_offset(base.addr().get(), align, aligned_page) / PAGE_SIZE;
        let tail = slack - head;
        // SAFETY: the `count + slack` pages at `base` were just mapped for us and nothing refers
        // into them. `head <= slack`, so the aligned run and the head and tail around it lie
        // inside the mapping; the head and tail are sub-runs of it, which the contract lets us
        // unmap on their own.
        unsafe {
            let start = base.add(head * PAGE_SIZE);
            if head > 0 {
                self.unmap_pages(base, head);
            }
            if tail > 0 {
                self.unmap_pages(start.add(count * PAGE_SIZE), tail);
            }
            Ok(start)
        }
    }

    /// Unmaps `count` contiguous pages starting at `ptr`, giving their memory back.
    ///
    /// Any page-aligned sub-run of an earlier mapping may be unmapped on its own (for example the
    /// unaligned head and tail of an over-sized mapping), and a run that a
    /// [`grow_pages`](Self::grow_pages) call extended may be unmapped in one call.
    ///
    /// # Safety
    ///
    /// Every page in `ptr .. ptr + count * PAGE_SIZE` must currently be mapped by an earlier
    /// successful `map_pages` (or `map_pages_aligned` or `grow_pages`) call on this same source
    /// and must not be unmapped already, and the caller must hold no live references into those
    /// pages.
    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize);

    /// Extends the run of `count` pages at `ptr` in place: maps the `extra` pages that follow it,
    /// if they are free, and returns whether it did. On `false` nothing changed. The default
    /// never grows (the heap then moves the block, as it would anyway).
    ///
    /// The heap calls it only for a run it mapped and still holds; an implementation must still
    /// return `false`, never panic or map elsewhere, for a run it does not recognise (outside
    /// its range, or extending past it), since answering costs it nothing.
    ///
    /// On `true`, the pages `ptr + count * PAGE_SIZE .. ptr + (count + extra) * PAGE_SIZE` carry
    /// the same guarantees as a fresh `map_pages` run, and are also reachable through pointers
    /// derived from `ptr`: the grown run may be used, and unmapped, as one.
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let _ = (ptr, count, extra);
        false
    }

    /// Starts moving the run of `count` pages at `ptr` to a new place, `new_count >= count`
    /// pages long, without copying its bytes where the source can move the memory itself (a
    /// kernel moves the frames: `mremap`). Returns the new run, or `None` (nothing changed)
    /// when the source does not move runs — the default — or has no room, or the input is not
    /// a run it mapped.
    ///
    /// On `Some(new)`: the first `count` pages of the `new_count` pages at `new` show the bytes
    /// of the old run (the same memory seen at a second address, or a copy), the rest are fresh
    /// pages as from `map_pages`; the old run is still mapped. The caller then ends the move
    /// with [`finish_remap`](Self::finish_remap): keeping the new run (the old one goes,
    /// without its memory being given back twice) or the old one (the new one goes). Until
    /// then, what it writes to one run may or may not show in the other (a second view does, a
    /// copy does not): it must not rely on either. Once the move is kept, the new run has every
    /// guarantee of a `map_pages(new_count)` run.
    ///
    /// The heap calls it only for a run it mapped and still holds (the whole mapping, as
    /// `map_pages`, `map_pages_aligned` or a `grow_pages` that extended it returned it); an
    /// implementation must still return `None`, never panic, for a run it does not recognise.
    /// The new run starts at a page boundary only: a source need not keep a larger alignment.
    fn remap_pages(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        let _ = (ptr, count, new_count);
        None
    }

    /// Ends a move that [`remap_pages`](Self::remap_pages) started: with `keep_new`, the old
    /// run at `old` is gone and the `new_count` pages at `new` hold its bytes (and may be
    /// unmapped as one run, or in sub-runs, later); without it, the new run is gone and the
    /// old one is as it was. The default does nothing (its `remap_pages` never succeeds).
    ///
    /// # Safety
    ///
    /// `old`, `count`, `new` and `new_count` are the arguments and the result of a successful
    /// `remap_pages` call on this source that has not been finished yet, and the caller holds no
    /// live references into the run that goes.
    unsafe fn finish_remap(
        &mut self,
        old: NonNull<u8>,
        count: usize,
        new: NonNull<u8>,
        new_count: usize,
        keep_new: bool,
    ) {
        let _ = (old, count, new, new_count, keep_new);
    }

    /// Whether the source has work it would like to do ahead of need in
    /// [`prepare`](Self::prepare) (a reserve of pages mapped ahead of time that is not full, say).
    /// `false` by default. The heap asks on its slow paths, so an answer must be cheap: a field
    /// or an atomic read, no lock.
    #[inline]
    fn wants_prepare(&self) -> bool {
        false
    }

    /// Does a bounded piece of work ahead of need, so that later `map_pages` calls have less to
    /// do in one go: a kernel maps one more page into a reserve of pages mapped ahead of time,
    /// from which its `map_pages` then hands out runs without page-table work. Returns whether it
    /// did anything (`false` when it has nothing to do or cannot, short of memory for example).
    /// The default does nothing.
    ///
    /// The heap calls it at most once per heap call, only in an allocation that made no other
    /// page-source call (a refill that found its blocks in mapped chunks, a large allocation
    /// served from a region it already had; never in a free), and only when
    /// [`wants_prepare`](Self::wants_prepare) says so; and in [`Heap::init`](crate::Heap::init)
    /// until it returns `false` or the source wants no more. So whatever one call does here is
    /// added to a call that was cheap: it should cost about as much as mapping one page.
    ///
    /// Whatever it holds ahead of need must still be given back when memory runs short: a
    /// source must not fail a `map_pages` for want of memory its reserve holds.
    fn prepare(&mut self) -> bool {
        false
    }

    /// The fixed range of addresses all pages of this source come from, if there is one (a
    /// kernel's heap window, an arena), as a pointer to the whole range. `None` by default.
    ///
    /// The heap reads it once, when it maps its first root run. With a window, a release build
    /// (no `debug-checks`) frees a small block without a page-map lookup: the block pointer it
    /// caches is rebuilt from the window pointer, which covers the whole block (the caller's
    /// pointer may cover only the bytes it asked for). Without one, the pointer is rebuilt from
    /// the block's chunk page, which takes a page-map lookup per free.
    fn window(&self) -> Option<NonNull<[u8]>> {
        None
    }
}
