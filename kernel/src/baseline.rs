//! What the heap and the memory layer hold at one moment, and the check that a workload gave it
//! all back: [`Baseline::take`] before, [`Baseline::check_returned`] after (which also audits the
//! page tables and runs both invariant checkers). The soak (`kernel/soak`) and the test kernels
//! that exhaust memory use it.

use core::fmt;

use crate::allocator::{self, Footprint};
use crate::memory;

/// Free frames to keep before an allocation that has no fallible form (a `BTreeMap` insertion)
/// in a workload that runs the heap close to exhaustion: an insertion splits at most one node per level
/// (a few blocks of a few hundred bytes: a few chunk pages, plus page-map, page-table and
/// descriptor pages), so 64 frames (256 KiB) leave a wide margin, and the insertion, which has no
/// fallible form, cannot run the heap out of memory.
pub const INSERT_HEADROOM_FRAMES: u64 = 64;

/// What the heap and the memory layer hold at one moment (after a trim), so that a workload can
/// check afterwards that it gave everything back. Used by the soak (`kernel/soak`) and by test kernels
/// (`tests/heap_oom.rs`, `tests/heap_debug_checks.rs`).
///
/// # What must come back
///
/// After the workload's blocks are freed and the heap trimmed, the heap must hold exactly the
/// chunk pages, large pages and requested bytes it held at the baseline. The heap's root runs are
/// never unmapped (see the `kheap` crate docs), and a workload that had many chunks live needed
/// more descriptor root pages and page-map nodes to record them, so the heap may keep exactly as
/// many more pages as its root-run and page-map counts grew by, and no other page; the free-frame
/// count must have dropped by exactly those kept pages plus the change in page-table frames. This
/// tolerance is measured, not guessed: if the heap comes to release those pages on trim, the kept
/// count is simply 0.
///
/// Page-table frames are counted exactly too: the memory layer's
/// [`page_table_audit`](memory::page_table_audit) must find exactly as many of the mapper's tables
/// linked as it counts, and none of them empty — so every page-table frame still taken maps a
/// page that is still mapped (a table left behind by a failed or undone mapping is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    /// Heap-window pages and free frames.
    pub footprint: Footprint,
    /// Heap chunk pages.
    pub chunk_pages: usize,
    /// Heap large-allocator pages.
    pub large_pages: usize,
    /// Heap root-run plus page-map pages.
    pub bookkeeping_pages: usize,
    /// Requested bytes of the heap's live blocks.
    pub requested_bytes: usize,
    /// Page-table frames of the memory layer.
    pub page_table_frames: u64,
}

impl Baseline {
    /// Trims the heap and records what it and the memory layer hold.
    ///
    /// # Errors
    ///
    /// [`BaselineError::NoHeap`] before the heap is initialised.
    pub fn take() -> Result<Self, BaselineError> {
        allocator::trim();
        let stats = allocator::stats().ok_or(BaselineError::NoHeap)?;
        Ok(Self {
            footprint: allocator::footprint(),
            chunk_pages: stats.pages.chunks,
            large_pages: stats.pages.large,
            bookkeeping_pages: stats.pages.root + stats.pages.page_map,
            requested_bytes: stats.requested_bytes,
            page_table_frames: memory::stats().page_table_frames,
        })
    }

    /// Trims the heap, runs the heap's and the memory layer's invariant checkers, and checks
    /// that everything since `self` came back (see the type's docs). Returns the new baseline.
    ///
    /// # Errors
    ///
    /// [`BaselineError::NotEmpty`] if the heap holds more chunk or large pages or requested bytes;
    /// [`BaselineError::NotReturned`] if more heap pages or frames stayed taken than its bookkeeping
    /// and the page tables account for; [`BaselineError::PageTables`] if a page-table frame is
    /// taken without holding a mapping.
    ///
    /// # Panics
    ///
    /// If an invariant checker finds a broken invariant.
    pub fn check_returned(&self) -> Result<Self, BaselineError> {
        let now = Self::take()?;
        let audit = memory::page_table_audit();
        if !audit.is_exact(now.page_table_frames) {
            return Err(BaselineError::PageTables {
                audit,
                counted: now.page_table_frames,
            });
        }
        allocator::check_invariants();
        memory::check_invariants();
        if (now.chunk_pages, now.large_pages, now.requested_bytes)
            != (self.chunk_pages, self.large_pages, self.requested_bytes)
        {
            return Err(BaselineError::NotEmpty {
                before: *self,
                after: now,
            });
        }
        let bookkeeping_growth = now.bookkeeping_pages as i64 - self.bookkeeping_pages as i64;
        let page_table_growth = now.page_table_frames as i64 - self.page_table_frames as i64;
        let kept = now.footprint.heap_pages as i64 - self.footprint.heap_pages as i64;
        let frames_taken = self.footprint.free_frames as i64 - now.footprint.free_frames as i64;
        if kept != bookkeeping_growth || frames_taken != kept + page_table_growth {
            return Err(BaselineError::NotReturned {
                before: *self,
                after: now,
            });
        }
        Ok(now)
    }
}

/// Why a [`Baseline`] could not be taken, or what did not come back.
#[derive(Debug, Clone, Copy)]
pub enum BaselineError {
    /// The heap has not been initialised.
    NoHeap,
    /// After everything was freed and the heap trimmed, it still held more chunk pages, large
    /// pages or requested bytes than at the baseline.
    NotEmpty {
        /// The baseline.
        before: Baseline,
        /// What the heap holds now.
        after: Baseline,
    },
    /// More heap pages stayed mapped than the heap's root-run and page-map pages grew by, or the
    /// free frames do not match the pages and page tables kept.
    NotReturned {
        /// The baseline.
        before: Baseline,
        /// What the heap and the memory layer hold now.
        after: Baseline,
    },
    /// The page tables hold a table of the mapper's that maps nothing (empty), or the mapper
    /// counts more or fewer table frames than are linked: a page-table frame leaked or lost.
    PageTables {
        /// What the walk of the page tables found.
        audit: memory::TableAudit,
        /// The mapper's count of its table frames.
        counted: u64,
    },
}

impl fmt::Display for BaselineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeap => f.write_str("the heap is not initialised"),
            Self::NotEmpty { before, after } => write!(
                f,
                "heap not empty after freeing everything and trimming: before {before:?}, \
                 after {after:?}"
            ),
            Self::NotReturned { before, after } => {
                write!(f, "memory not returned: before {before:?}, after {after:?}")
            }
            Self::PageTables { audit, counted } => write!(
                f,
                "page-table frames not accounted for: {audit}, the mapper counts {counted}"
            ),
        }
    }
}
