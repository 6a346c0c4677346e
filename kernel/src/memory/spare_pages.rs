//! The heap window's spare pages: a small, bounded stack of window pages that are mapped (each to
//! a frame of its own), taken in the window's buddy, and not handed to the heap.
//!
//! [`HeapWindow`](super::heap_window) fills it in two ways: a single-page request that finds it
//! empty maps an aligned batch of pages in one page-table walk and keeps all but the first here;
//! and an unmap of a small run puts the run's pages here instead of unmapping them (no page-table
//! write, no TLB flush), while there is room. A single-page request takes a spare first: no
//! page-table work at all. This module is only the container (pure data, no `unsafe`): what a
//! spare means, and every rule about mapping and releasing, is the window's.
//!
//! Page indices are window page numbers (`< 2^20`), stored as `u32` so that the whole set is 128
//! bytes; lookups are linear scans of at most [`SPARE_CAPACITY`] entries.

#![deny(unsafe_code)]

/// Most spare pages the window holds: 128 KiB of frames at most, out of circulation until a
/// single-page request, a trim or an allocation that runs short takes them back. Big enough for
/// a batch ([`SPARE_BATCH`] − 1 pages) plus a few absorbed frees; small enough that a release
/// (a few unmaps, one flush per run) stays cheap.
pub const SPARE_CAPACITY: usize = 32;

/// Pages one single-page request maps when no spare is left: an aligned buddy block, one
/// page-table walk (all in one page table, as the block is aligned and at most 512 pages). The
/// request gets the first, the other `SPARE_BATCH - 1` become spares. Measured in
/// `kernel/heap/bench/results/ANALYSIS.md`, "Heap-window page cache (h14)".
pub const SPARE_BATCH: usize = 8;

/// Longest run an unmap puts among the spares (when there is room for all of it) instead of
/// unmapping it; longer runs are unmapped as before.
pub const ABSORB_MAX: usize = 8;

const _: () = {
    assert!(SPARE_BATCH.is_power_of_two() && SPARE_BATCH > 1);
    assert!(SPARE_BATCH - 1 <= SPARE_CAPACITY);
    assert!(ABSORB_MAX <= SPARE_CAPACITY);
};

/// A bounded stack of window page numbers (see the module docs).
#[derive(Debug, Clone)]
pub struct SparePages {
    pages: [u32; SPARE_CAPACITY],
    len: usize,
}

impl SparePages {
    /// No spares.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            pages: [0; SPARE_CAPACITY],
            len: 0,
        }
    }

    /// Spares held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no spare.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    #[must_use]
    pub fn room(&self) -> usize {
        SPARE_CAPACITY - self.len
    }

    /// The spares, most recently pushed last.
    #[must_use]
    pub fn as_slice(&self) -> &[u32] {
        &self.pages[..self.len]
    }

    /// Whether `page` is a spare.
    #[must_use]
    pub fn contains(&self, page: usize) -> bool {
        self.as_slice().iter().any(|&p| p as usize == page)
    }

    /// A spare in `start .. end`, if there is one (the first found: no order).
    ///
    /// The common answer is "none", after a look at every spare: that look is one subtraction
    /// and one compare per spare with no branch (`p - start < end - start`, wrapping), about
    /// half the instructions of an early-exit range test in the kernel's scalar code.
    #[must_use]
    pub fn any_in(&self, start: usize, end: usize) -> Option<usize> {
        let first = u32::try_from(start).ok()?;
        let len = u32::try_from(end.saturating_sub(start)).unwrap_or(u32::MAX);
        let inside = |&p: &u32| p.wrapping_sub(first) < len;
        let hits = self.as_slice().iter().filter(|p| inside(p)).count();
        if hits == 0 {
            return None;
        }
        self.as_slice()
            .iter()
            .find(|p| inside(p))
            .map(|&p| p as usize)
    }

    /// Adds `page`.
    ///
    /// # Panics
    ///
    /// If the set is full or `page` does not fit in a `u32` (callers check [`room`](Self::room);
    /// window pages are below 2^20).
    pub fn push(&mut self, page: usize) {
        assert!(
            self.len < SPARE_CAPACITY,
            "spare pages: pushed to a full set"
        );
        self.pages[self.len] = u32::try_from(page).expect("window page number fits in u32");
        self.len += 1;
    }

    /// Takes the most recently pushed spare.
    pub fn pop(&mut self) -> Option<usize> {
        self.len = self.len.checked_sub(1)?;
        Some(self.pages[self.len] as usize)
    }

    /// Removes every spare in `start .. end` and returns how many there were.
    pub fn remove_range(&mut self, start: usize, end: usize) -> usize {
        let before = self.len;
        let mut kept = 0;
        for i in 0..self.len {
            let page = self.pages[i];
            if !(start..end).contains(&(page as usize)) {
                self.pages[kept] = page;
                kept += 1;
            }
        }
        self.len = kept;
        before - kept
    }

    /// The spares in `start .. end`, ascending, written to the front of `out`; returns how
    /// many.
    pub fn in_range(&self, start: usize, end: usize, out: &mut [u32; SPARE_CAPACITY]) -> usize {
        let mut n = 0;
        for &page in self.as_slice() {
            if (start..end).contains(&(page as usize)) {
                out[n] = page;
                n += 1;
            }
        }
        out[..n].sort_unstable();
        n
    }

    /// Empties the set and returns its pages, ascending, as maximal runs of consecutive pages
    /// `(first, count)` through `each`.
    pub fn drain_runs(&mut self, mut each: impl FnMut(usize, usize)) {
        let pages = &mut self.pages[..self.len];
        pages.sort_unstable();
        let mut i = 0;
        while i < pages.len() {
            let first = pages[i] as usize;
            let mut count = 1;
            while i + count < pages.len() && pages[i + count] as usize == first + count {
                count += 1;
            }
            each(first, count);
            i += count;
        }
        self.len = 0;
    }
}

impl Default for SparePages {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    use super::*;

    #[test]
    fn push_pop_is_last_in_first_out() {
        let mut s = SparePages::new();
        s.push(5);
        s.push(9);
        assert_eq!((s.len(), s.room()), (2, SPARE_CAPACITY - 2));
        assert!(s.contains(5) && s.contains(9) && !s.contains(6));
        assert_eq!(s.pop(), Some(9));
        assert_eq!(s.pop(), Some(5));
        assert_eq!(s.pop(), None);
        assert!(s.is_empty());
    }

    #[test]
    #[should_panic(expected = "full set")]
    fn a_full_set_refuses_a_push() {
        let mut s = SparePages::new();
        for p in 0..=SPARE_CAPACITY {
            s.push(p);
        }
    }

    #[test]
    fn range_queries_and_removal() {
        let mut s = SparePages::new();
        for p in [40, 3, 12, 10, 11, 41] {
            s.push(p);
        }
        let mut out = [0; SPARE_CAPACITY];
        assert_eq!(s.in_range(10, 13, &mut out), 3);
        assert_eq!(out[..3], [10, 11, 12]);
        assert!(s.any_in(10, 13).is_some_and(|p| (10..13).contains(&p)));
        assert_eq!(s.any_in(13, 40), None);
        assert_eq!(s.any_in(41, 42), Some(41));
        assert_eq!(s.any_in(0, 3), None);
        assert_eq!(s.any_in(3, 3), None, "an empty range");
        assert_eq!(s.any_in(0, usize::MAX), Some(40));
        assert_eq!(s.remove_range(10, 13), 3);
        assert_eq!(s.as_slice(), [40, 3, 41]);
        assert_eq!(s.remove_range(100, 200), 0);
    }

    #[test]
    fn drain_gives_maximal_ascending_runs() {
        let mut s = SparePages::new();
        for p in [7, 1, 2, 9, 8, 3, 20] {
            s.push(p);
        }
        let mut runs = Vec::new();
        s.drain_runs(|first, count| runs.push((first, count)));
        assert_eq!(runs, [(1, 3), (7, 3), (20, 1)]);
        assert!(s.is_empty());
    }
}
