//! Pages of the scratch area and frames held out of circulation, for the in-kernel benchmark
//! (`kernel/bench`, which times the memory layer's own functions around them) and for test
//! kernels.
//!
//! Every function takes the memory lock once, with interrupts disabled, exactly as the heap's
//! page source does. Scratch pages lie in the scratch area ([`SCRATCH_START`], 1 GiB = 262 144
//! pages), which nothing else uses.
//!
//! Note for timing map/unmap: the mapper frees page tables that an unmap leaves empty. A lone
//! scratch page therefore costs a page-directory and a page-table allocation (and zeroing) on
//! every map, and their frees on every unmap. To time just the leaf entry, keep a neighbouring
//! scratch page mapped (e.g. [`map_scratch`]`(1)`).

use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};

use super::heap_window::{SCRATCH_KFENCE_PAGES, SCRATCH_SIZE, SCRATCH_START};
use super::paging;

/// Number of pages of the scratch area the helpers here hand out (its top
/// [`SCRATCH_KFENCE_PAGES`] are the sampled guard-page allocator's).
pub const SCRATCH_PAGES: u64 = SCRATCH_SIZE / 4096 - SCRATCH_KFENCE_PAGES;

/// Flags of scratch mappings: kernel data.
pub const SCRATCH_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::NO_EXECUTE);

/// Page `index` of the scratch area, or `None` past its end.
#[must_use]
pub fn nth_scratch_page(index: u64) -> Option<Page> {
    (index < SCRATCH_PAGES)
        .then(|| Page::containing_address(VirtAddr::new(SCRATCH_START + index * 4096)))
}

/// Maps scratch page `index` to a fresh frame (allocation and mapping under one lock) and
/// returns the page, writable.
///
/// # Errors
///
/// [`paging::MapError::OutOfFrames`] when no frame is left (for the page or a table),
/// [`paging::MapError::AlreadyMapped`] if the page is mapped already.
///
/// # Panics
///
/// If `index` is not below [`SCRATCH_PAGES`], or before `memory::init`.
pub fn map_scratch(index: u64) -> Result<Page, paging::MapError> {
    let page = nth_scratch_page(index).expect("scratch page index out of range");
    super::with_memory(|m| {
        let (tables, frames) = m.mapper();
        // SAFETY: the scratch area is reserved for this module's callers and this page is not
        // mapped (else the call fails); the run gets a fresh frame nothing else has.
        unsafe { tables.map_fresh_run(page, 1, SCRATCH_FLAGS, frames) }
    })?;
    Ok(page)
}

/// Unmaps scratch page `index` and frees its frame.
///
/// # Errors
///
/// [`paging::UnmapError::NotMapped`] if it is not mapped.
///
/// # Panics
///
/// If `index` is not below [`SCRATCH_PAGES`], or before `memory::init`.
///
/// # Safety
///
/// The page must have been mapped by [`map_scratch`] (so its frame is the allocator's) and
/// nothing may access it afterwards.
pub unsafe fn unmap_scratch(index: u64) -> Result<(), paging::UnmapError> {
    let page = nth_scratch_page(index).expect("scratch page index out of range");
    super::with_memory(|m| {
        let (tables, frames) = m.mapper();
        // SAFETY: the caller guarantees the frame came from the allocator via `map_scratch` and
        // that the page is no longer accessed.
        unsafe { tables.unmap_fresh_run(page, 1, frames) }
    })
}

/// Frames taken out of circulation, for tests that make memory run out at a chosen point:
/// [`keep_free`](Self::keep_free)`(n)` leaves exactly `n` frames free. The frames are chained
/// through their own first words, so the hoard needs no memory of its own; dropping it gives
/// them all back.
#[derive(Debug, Default)]
pub struct FrameHoard {
    /// Physical address of the most recently taken frame (0: none).
    head: u64,
    /// Frames held.
    len: u64,
}

impl FrameHoard {
    /// An empty hoard.
    #[must_use]
    pub const fn new() -> Self {
        Self { head: 0, len: 0 }
    }

    /// Releases the heap window's spare pages (their frames are a reserve the window falls back
    /// on when frames run short, which would hide the shortage), then takes frames until at
    /// most `free` are free (all of them if `free` is 0), under one memory lock.
    ///
    /// # Panics
    ///
    /// Before `memory::init`.
    pub fn keep_free(&mut self, free: u64) {
        super::with_memory(|m| {
            assert!(m.ready, "memory: FrameHoard used before memory::init");
            m.release_spare_pages();
            while m.frames.stats().free > free {
                let Some(frame) = m.frames.allocate() else {
                    break;
                };
                let addr = frame.start_address().as_u64();
                let link = (m.frames.phys_offset() + addr) as *mut u64;
                // SAFETY: the frame is ours now, mapped writable through the physical-memory
                // mapping (the frame allocator's own contract); its first word holds the link.
                unsafe { link.write_volatile(self.head) };
                self.head = addr;
                self.len += 1;
            }
        });
    }

    /// Frames held.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the hoard holds no frame.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives every frame back.
    pub fn release(&mut self) {
        if self.head == 0 {
            return;
        }
        super::with_memory(|m| {
            while self.head != 0 {
                let link = (m.frames.phys_offset() + self.head) as *const u64;
                // SAFETY: a frame of the chain, mapped through the physical-memory mapping.
                let next = unsafe { link.read_volatile() };
                let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(self.head));
                // SAFETY: the frame came from this allocator in `keep_free` and only the chain
                // link was ever written to it.
                unsafe { m.frames.deallocate(frame) };
                self.head = next;
                self.len -= 1;
            }
        });
    }
}

impl Drop for FrameHoard {
    fn drop(&mut self) {
        self.release();
    }
}
