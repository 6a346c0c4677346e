//! The heap window's lazy unmaps: runs the heap has given back whose unmapping is put off until
//! a moment outside the heap's calls.
//!
//! Unmapping a run of window pages costs page-table writes, a TLB flush, a frame given back per
//! page and the buddy's merges: about 1 700–2 200 instructions for a 17-page region, most of it
//! fixed cost (a 4-page unmap costs most of what a 17-page one does). The heap unmaps inside a
//! free, with interrupts off, so that cost was the kernel's longest free.
//! [`HeapWindow`](super::heap_window) therefore records a run that the spares cannot absorb here
//! instead, while there is room: the pages stay mapped and taken (nobody else can get them, no
//! one uses them), and the work is done later, in bounded steps, by `memory::finish_unmaps`
//! (an idle CPU, a kernel's idle moment, `trim`), or at once by any window call that runs short
//! of frames. A run that does not fit (longer than [`LAZY_MAX_RUN`] pages, or with the list
//! full) is unmapped in the call, as before.
//!
//! A waiting page carries the page tables' software mark (`paging::MARKED`, set by the window
//! when it lists the run), so that a second unmap of it is refused at once, naming the page,
//! with one read of its entry rather than a search of this list. This module is only the
//! container (pure data, no `unsafe`): what a lazy run means, and every rule about unmapping
//! it, is the window's. Page numbers are window page numbers
//! (`< 2^20`), stored as `u32` pairs, so the list is 256 bytes.

#![deny(unsafe_code)]

use core::ops::Range;

/// Most runs waiting at once. Linux's lazy vunmap waits for up to 32 MiB per CPU; here the
/// bound is what a burst of frees between two idle moments may leave (a region is one run).
pub const LAZY_RUNS: usize = 32;

/// Longest run that waits: a region of the large allocator (up to 17 pages) and short page runs.
/// A longer run is unmapped in the free: its cost grows with its pages either way (marking costs
/// about a fifth of unmapping per page), while waiting would keep its frames, and the address
/// space right after growing runs, from the next requests (measured: the kernel's realloc-growth
/// replay took 5% more instructions when runs of up to 1024 pages waited).
pub const LAZY_MAX_RUN: usize = 32;

/// Most pages waiting at once: 4 MiB of frames out of circulation at most, and given back the
/// moment any window call, or the frame allocator, runs short.
pub const LAZY_PAGES: usize = LAZY_RUNS * LAZY_MAX_RUN;

/// Most pages one step of `memory::finish_unmaps` unmaps under the memory lock (with
/// interrupts off): one region's worth, so a step costs what a region's unmap did in a free.
pub const LAZY_STEP: usize = 17;

/// Runs waiting to be unmapped, as page ranges `(first, end)`, in the order they came.
#[derive(Debug, Clone)]
pub struct LazyUnmaps {
    runs: [(u32, u32); LAZY_RUNS],
    len: usize,
    pages: usize,
}

impl LazyUnmaps {
    /// No run waiting.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            runs: [(0, 0); LAZY_RUNS],
            len: 0,
            pages: 0,
        }
    }

    /// Pages waiting.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Whether no run is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a run of `count` pages may wait: at most [`LAZY_MAX_RUN`] pages, with a free slot.
    #[must_use]
    pub fn has_room(&self, count: usize) -> bool {
        self.len < LAZY_RUNS && count <= LAZY_MAX_RUN
    }

    /// The waiting runs, as page ranges.
    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.runs[..self.len]
            .iter()
            .map(|&(first, end)| first as usize..end as usize)
    }

    /// Whether a waiting run holds a page of `start .. end` (a scan of the list: for growth in
    /// place, not for unmaps, which read the page tables' mark instead).
    #[must_use]
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        self.ranges().any(|run| run.start < end && start < run.end)
    }

    /// Whether a waiting run holds `page`.
    #[must_use]
    pub fn contains(&self, page: usize) -> bool {
        self.ranges().any(|run| run.contains(&page))
    }

    /// Takes a whole waiting run that holds a page of `start .. end`, if there is one, as
    /// `(first, count)`.
    pub fn take_overlapping(&mut self, start: usize, end: usize) -> Option<(usize, usize)> {
        let i = self
            .ranges()
            .position(|run| run.start < end && start < run.end)?;
        let (first, last) = self.runs[i];
        self.runs.copy_within(i + 1..self.len, i);
        self.len -= 1;
        let count = (last - first) as usize;
        self.pages -= count;
        Some((first as usize, count))
    }

    /// Adds the run of `count` pages at `first`.
    ///
    /// # Panics
    ///
    /// If it does not fit (callers check [`has_room`](Self::has_room)), is empty, or does not
    /// fit in `u32` page numbers (window pages are below 2^20).
    pub fn push(&mut self, first: usize, count: usize) {
        assert!(
            count > 0 && self.has_room(count),
            "lazy unmaps: a run of {count} pages does not fit"
        );
        let first32 = u32::try_from(first).expect("window page number fits in u32");
        let end32 = u32::try_from(first + count).expect("window page number fits in u32");
        self.runs[self.len] = (first32, end32);
        self.len += 1;
        self.pages += count;
    }

    /// Takes up to `max` pages (at least one) from the end of the newest run, and returns them
    /// as `(first, count)`; the rest of the run stays waiting. `None` when nothing waits.
    pub fn take(&mut self, max: usize) -> Option<(usize, usize)> {
        let last = self.len.checked_sub(1)?;
        let (first, end) = self.runs[last];
        let taken = ((end - first) as usize).min(max.max(1));
        let left_end = end - taken as u32;
        if left_end == first {
            self.len = last;
        } else {
            self.runs[last].1 = left_end;
        }
        self.pages -= taken;
        Some((left_end as usize, taken))
    }
}

impl Default for LazyUnmaps {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_newest_first_in_steps_from_their_end() {
        let mut l = LazyUnmaps::new();
        assert!(l.is_empty() && l.take(4).is_none());
        l.push(100, 17);
        l.push(10, 3);
        assert_eq!(l.pages(), 20);
        assert_eq!(l.take(8), Some((10, 3)), "the newest run, whole");
        assert_eq!(l.take(8), Some((109, 8)), "the end of the older one");
        assert_eq!(l.take(8), Some((101, 8)));
        assert_eq!(l.take(0), Some((100, 1)), "a step takes at least one page");
        assert!(l.is_empty() && l.pages() == 0);
    }

    #[test]
    fn ranges_follow_pushes_and_partial_takes() {
        let mut l = LazyUnmaps::new();
        l.push(100, 17);
        l.push(10, 3);
        assert_eq!(l.ranges().collect::<Vec<_>>(), [100..117, 10..13]);
        l.take(1);
        assert_eq!(l.ranges().collect::<Vec<_>>(), [100..117, 10..12]);
    }

    #[test]
    fn overlapping_runs_are_found_and_taken_whole() {
        let mut l = LazyUnmaps::new();
        l.push(100, 17);
        l.push(10, 3);
        l.push(50, 2);
        assert!(!l.overlaps(13, 50) && !l.overlaps(117, 200));
        assert!(l.overlaps(0, 11) && l.overlaps(116, 117));
        assert!(l.contains(12) && !l.contains(13));
        assert_eq!(l.take_overlapping(0, 11), Some((10, 3)));
        assert_eq!(l.pages(), 19);
        assert_eq!(
            l.ranges().collect::<Vec<_>>(),
            [100..117, 50..52],
            "order kept"
        );
        assert_eq!(l.take_overlapping(13, 50), None);
        assert_eq!(l.take_overlapping(116, 300), Some((100, 17)));
        assert_eq!(l.take(usize::MAX), Some((50, 2)));
        assert!(l.is_empty());
    }

    #[test]
    fn both_bounds_limit_what_fits() {
        let mut l = LazyUnmaps::new();
        assert!(l.has_room(LAZY_MAX_RUN) && !l.has_room(LAZY_MAX_RUN + 1));
        for run in 0..LAZY_RUNS {
            l.push(run * LAZY_MAX_RUN, LAZY_MAX_RUN);
        }
        assert_eq!(l.pages(), LAZY_PAGES);
        assert!(!l.has_room(1), "every run slot is used");
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_push_past_the_bound_panics() {
        let mut l = LazyUnmaps::new();
        l.push(0, LAZY_MAX_RUN + 1);
    }
}
