//! [`KernelPageSource`]: the heap's `kheap::PageSource`, a unit handle over the global memory
//! state that takes the memory lock (interrupts off) and hands each call to the heap window's
//! bookkeeping (`HeapWindow`: which window pages, the spares and the page reserve; see
//! [`heap_window`] for the layout and the policies). Kernel builds only: the
//! host build of the window (`kernel/host`) drives `HeapWindow` over simulated memory instead.

use core::ptr::NonNull;

use kheap::source::{PAGE_SIZE, PageSource, PageSourceError};
use x86_64::VirtAddr;

use super::heap_window::{self, HEAP_WINDOW_SIZE, HEAP_WINDOW_START};

/// The heap's page source: maps fresh frames into the heap window (see
/// [`heap_window`]).
///
/// A unit handle over the global memory state; every call takes the memory lock with interrupts
/// disabled. It never allocates from the heap, so the heap may call it with its own lock held.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPageSource;

impl KernelPageSource {
    /// A handle to the heap window.
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

// SAFETY: `map_pages` returns the start of `count` pages of the heap window that it has just
// mapped PRESENT | WRITABLE to frames fresh from the frame allocator: page-aligned, readable and
// writable, and aliased by nothing (the buddy hands each window page to one run, the frame
// allocator each frame to one page, and nothing else maps window pages). They stay mapped until
// `unmap_pages` is called for them. `map_pages_aligned` maps its run the same way, at the start
// `aligned_offset` computes for page `aligned_page` to be aligned.
unsafe impl PageSource for KernelPageSource {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 || count.checked_mul(PAGE_SIZE).is_none() {
            return Err(PageSourceError::InvalidRequest);
        }
        super::with_memory(|memory| match memory.parts() {
            Some((window, tables, frames)) => window.map(count, tables, frames),
            None => Err(PageSourceError::OutOfMemory),
        })
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        let addr = ptr.as_ptr() as u64;
        super::with_memory(|memory| {
            let (window, tables, frames) = memory
                .parts()
                .expect("heap window: unmap_pages before memory::init");
            // SAFETY: the trait's contract (pages mapped by `map_pages`, no live references) is
            // `HeapWindow::unmap`'s.
            unsafe { window.unmap(addr, count, tables, frames) }
        });
    }

    /// Places the run in the window so that its page `aligned_page` is aligned, and maps only
    /// the run (see `HeapWindow::map_aligned`).
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        super::with_memory(|memory| match memory.parts() {
            Some((window, tables, frames)) => {
                window.map_aligned(count, align, aligned_page, tables, frames)
            }
            None => Err(PageSourceError::OutOfMemory),
        })
    }

    /// Grows a run of the window in place when the pages after it are free (the buddy claims
    /// them and they are mapped to fresh frames, as `map_pages` would).
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let addr = ptr.as_ptr() as u64;
        super::with_memory(|memory| match memory.parts() {
            Some((window, tables, frames)) => window.grow(addr, count, extra, tables, frames),
            None => false,
        })
    }

    /// Moves a run of the window to a free range of `new_count` pages by moving its frames
    /// (page-table entries), not its bytes; the extra pages get fresh frames (see
    /// `HeapWindow::remap`). `None` for anything but mapped window pages.
    fn remap_pages(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        let addr = ptr.as_ptr() as u64;
        super::with_memory(|memory| match memory.parts() {
            Some((window, tables, frames)) => window.remap(addr, count, new_count, tables, frames),
            None => None,
        })
    }

    /// Unmaps the run that goes (with the usual TLB shootdown), keeping the moved frames.
    unsafe fn finish_remap(
        &mut self,
        old: NonNull<u8>,
        count: usize,
        new: NonNull<u8>,
        new_count: usize,
        keep_new: bool,
    ) {
        let (old, new) = (old.as_ptr() as u64, new.as_ptr() as u64);
        super::with_memory(|memory| {
            let (window, tables, frames) = memory
                .parts()
                .expect("heap window: finish_remap before memory::init");
            // SAFETY: the trait's contract is `HeapWindow::finish_remap`'s.
            unsafe { window.finish_remap((old, count), (new, new_count), keep_new, tables, frames) }
        });
    }

    /// Whether the window's page reserve is below its target (one atomic read, no lock).
    #[inline]
    fn wants_prepare(&self) -> bool {
        heap_window::prepare_wanted()
    }

    /// Maps one page into the window's page reserve (see `HeapWindow::prepare`).
    fn prepare(&mut self) -> bool {
        super::with_memory(|memory| match memory.parts() {
            Some((window, tables, frames)) => window.prepare(tables, frames),
            None => false,
        })
    }

    /// The whole heap window: every page `map_pages` returns lies in it. With it, a release
    /// build of the heap frees a small block without a page-map lookup.
    fn window(&self) -> Option<NonNull<[u8]>> {
        let start = VirtAddr::new(HEAP_WINDOW_START).as_mut_ptr::<u8>();
        let start = NonNull::new(start)?;
        Some(NonNull::slice_from_raw_parts(
            start,
            HEAP_WINDOW_SIZE as usize,
        ))
    }
}
