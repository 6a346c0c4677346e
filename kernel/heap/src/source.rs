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
pub unsafe trait PageSource {
    /// Maps `count` contiguous pages and returns the address of the first one.
    ///
    /// Fails (never panics) when memory or address space runs out or `count` is zero; a failed
    /// call leaves nothing mapped.
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError>;

    /// Unmaps `count` contiguous pages starting at `ptr`, giving their memory back.
    ///
    /// Any page-aligned sub-run of an earlier mapping may be unmapped on its own (for example the
    /// unaligned head and tail of an over-sized mapping), and a run that a
    /// [`grow_pages`](Self::grow_pages) call extended may be unmapped in one call.
    ///
    /// # Safety
    ///
    /// Every page in `ptr .. ptr + count * PAGE_SIZE` must currently be mapped by an earlier
    /// successful `map_pages` (or `grow_pages`) call on this same source and must not be unmapped
    /// already, and the caller must hold no live references into those pages.
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
