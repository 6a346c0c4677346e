//! The heap window's page reserve: a run of window pages mapped ahead of need, from which a
//! request of several pages is served without page-table work.
//!
//! The heap's slow calls that map runs were its longest: a region of up to 17 pages for a
//! 16–64 KiB block, a batch of 8 pages when no spare page was left. Every heap call runs with
//! interrupts off, so those calls set the kernel's interrupt latency. The reserve moves that work
//! out of them: [`HeapWindow`](super::heap_window) maps one page at a time into the reserve when
//! the heap says it has a quiet moment (`kheap::PageSource::prepare`: a refill that found its
//! blocks in mapped chunks, a large allocation served from a region the heap had), and a
//! `map_pages(n)` with at least `n` pages in the reserve takes them from its front: a few
//! bookkeeping writes instead of `n` frames and page-table entries. `memory::init` fills it to
//! its target before the first heap call (`memory::fill_page_reserve`, which a kernel may also
//! call after a `trim`, outside any heap call).
//!
//! ```text
//!   block of RESERVE_BLOCK window pages, taken in the buddy as one piece when the reserve starts
//!   ┌──────────────┬───────────────────────┬─────────────────────────────┐
//!   │ handed out   │ ready: mapped, not    │ tail: taken, not mapped yet │
//!   │ (the heap's) │ the heap's (≤ target) │ (mapped a page per prepare) │
//!   └──────────────┴───────────────────────┴─────────────────────────────┘
//!                  ^ first                  ^ first + ready               ^ first + ready + tail
//! ```
//!
//! The whole block is claimed from the buddy at once, so the pages the reserve will map next are
//! never taken by anyone else, and what it hands out is contiguous with what it holds: a run
//! taken from the front that grows in place (a region, a page run) grows into the reserve's next
//! pages, already mapped. When the block is used up, the next `prepare` claims a new one.
//!
//! This module is only the container (pure data, no `unsafe`): mapping, unmapping and the buddy
//! are the window's.

#![deny(unsafe_code)]

/// Pages the reserve keeps mapped ahead of need, at most: 2 MiB of frames. Enough for the
/// largest region the heap maps (17 pages) many times over, so that a burst of them between
/// quiet calls still finds pages, and for a heap building up its live set, when most calls map
/// and few are quiet. Measured (`kernel/heap/bench/results/ANALYSIS.md`): at 128 pages, two
/// 17-page regions of the kernel-like mix still mapped their own pages; at 256, the kernel-like
/// mix's replay used the reserve up at about its 2 900th allocation, while its live set was
/// still growing, and the regions after that mapped 9–16 pages each in the call (up to ~2 300
/// instructions); at 512 no call of that replay maps a region. `prepare` stops when the reserve
/// holds this many.
pub const RESERVE_TARGET: usize = 512;

/// Window pages the reserve claims from the buddy at once (address space only: pages are mapped
/// one at a time, up to [`RESERVE_TARGET`] ahead of the front). 4 MiB of the 4 GiB window:
/// twice the target, so that the ready pages and the next ones to map share a block.
pub const RESERVE_BLOCK: usize = 1024;

/// Ready pages a single-page request leaves in the reserve: one has the spares first, then the
/// reserve's front only while more than this many pages are ready, then a batch of spares. The
/// reserve is there for the runs (a region for a 16–64 KiB block is 17 pages), which nothing
/// else can serve without page-table work; single pages have the spares.
pub const RESERVE_KEEP_FOR_RUNS: usize = 17;

const _: () = {
    assert!(RESERVE_KEEP_FOR_RUNS < RESERVE_TARGET);
    assert!(RESERVE_BLOCK.is_power_of_two());
    assert!(RESERVE_TARGET <= RESERVE_BLOCK);
};

/// The reserve's pages (see the module docs): `ready` mapped pages from `first`, then `tail`
/// pages that are taken but not mapped. Window page numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReserve {
    first: usize,
    ready: usize,
    tail: usize,
    /// The block is used up and could not be extended (the pages after it are taken): the
    /// reserve fills no more until its ready pages are gone.
    stuck: bool,
}

impl PageReserve {
    /// An empty reserve (holds no page, claims no block).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            first: 0,
            ready: 0,
            tail: 0,
            stuck: false,
        }
    }

    /// Mapped pages ready to be handed out.
    #[must_use]
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Pages claimed but not mapped yet.
    #[must_use]
    pub fn tail(&self) -> usize {
        self.tail
    }

    /// Every page the reserve holds in the buddy: ready and tail.
    #[must_use]
    pub fn held(&self) -> usize {
        self.ready + self.tail
    }

    /// The reserve's mapped pages, `first..first + ready`.
    #[must_use]
    pub fn ready_range(&self) -> core::ops::Range<usize> {
        self.first..self.first + self.ready
    }

    /// The pages claimed but not mapped, right after the ready ones.
    #[must_use]
    pub fn tail_range(&self) -> core::ops::Range<usize> {
        self.first + self.ready..self.first + self.ready + self.tail
    }

    /// Whether a `prepare` would do something: fewer than [`RESERVE_TARGET`] pages ready, and
    /// not [`stuck`](Self::is_stuck).
    #[must_use]
    pub fn wants_pages(&self) -> bool {
        self.ready < RESERVE_TARGET && !self.stuck
    }

    /// Whether the block is used up and could not be extended: the reserve then waits for its
    /// ready pages to be taken (single pages take them too, see [`RESERVE_KEEP_FOR_RUNS`]) and
    /// starts a new block when it is empty.
    #[must_use]
    pub fn is_stuck(&self) -> bool {
        self.stuck
    }

    /// Whether a single page may come from the reserve: while it holds more ready pages than
    /// the runs need, or when it is stuck (then its pages are only in the way).
    #[must_use]
    pub fn serves_single_pages(&self) -> bool {
        self.ready > RESERVE_KEEP_FOR_RUNS || (self.stuck && self.ready > 0)
    }

    /// The page right after the block (where an extension would start), if the reserve holds
    /// pages and has no tail left.
    #[must_use]
    pub fn block_end(&self) -> Option<usize> {
        (self.tail == 0 && self.ready > 0).then_some(self.first + self.ready)
    }

    /// The `len` pages right after the block were claimed: they are its new tail.
    pub fn extend_tail(&mut self, len: usize) {
        assert_eq!(
            self.tail, 0,
            "page reserve: extended while it still has a tail"
        );
        self.tail = len;
    }

    /// The pages after the block are taken: fill no more until empty.
    pub fn set_stuck(&mut self) {
        self.stuck = true;
    }

    /// Whether the pages `start..end` overlap anything the reserve holds.
    #[must_use]
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        let held = self.first..self.first + self.held();
        !held.is_empty() && start < held.end && held.start < end
    }

    /// The first tail page: the page the next `prepare` maps (`None` without a tail).
    #[must_use]
    pub fn next_to_map(&self) -> Option<usize> {
        (self.tail > 0).then_some(self.first + self.ready)
    }

    /// A new block `first..first + len`, all of it tail. Only when the reserve holds nothing.
    pub fn start_block(&mut self, first: usize, len: usize) {
        assert_eq!(
            self.held(),
            0,
            "page reserve: a new block while holding pages"
        );
        *self = Self {
            first,
            ready: 0,
            tail: len,
            stuck: false,
        };
    }

    /// The first tail page is mapped now: it becomes ready.
    pub fn mapped_next(&mut self) {
        assert!(self.tail > 0, "page reserve: no tail page to map");
        self.ready += 1;
        self.tail -= 1;
    }

    /// Takes `count` ready pages from the front, if there are that many: their first page. The
    /// pages are the caller's from then on (still mapped, still taken in the buddy).
    pub fn take_front(&mut self, count: usize) -> Option<usize> {
        if count == 0 || count > self.ready {
            return None;
        }
        let first = self.first;
        self.first += count;
        self.ready -= count;
        if self.held() == 0 {
            // Empty: a new block may start.
            self.stuck = false;
        }
        Some(first)
    }

    /// For a run that ends at page `end` and grows by `extra` pages: if the reserve starts right
    /// there, how many of the run's new pages are ready (mapped) and how many are tail (taken,
    /// to be mapped by the caller); `None` if the reserve does not start at `end` or holds fewer
    /// than `extra` pages. Changes nothing: [`give_front`](Self::give_front) does.
    #[must_use]
    pub fn front_for(&self, end: usize, extra: usize) -> Option<(usize, usize)> {
        if extra == 0 || end != self.first || extra > self.held() {
            return None;
        }
        let ready = extra.min(self.ready);
        Some((ready, extra - ready))
    }

    /// Hands the first `count` held pages (ready ones first, then tail ones the caller has just
    /// mapped) to the run that ends where the reserve starts.
    pub fn give_front(&mut self, count: usize) {
        assert!(
            count <= self.held(),
            "page reserve: giving more than it holds"
        );
        let from_tail = count.saturating_sub(self.ready);
        self.first += count;
        self.ready -= count - from_tail;
        self.tail -= from_tail;
        if self.held() == 0 {
            self.stuck = false;
        }
    }

    /// Empties the reserve: its ready range and its tail range, for the caller to unmap and free.
    pub fn take_all(&mut self) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        let ranges = (self.ready_range(), self.tail_range());
        *self = Self::new();
        ranges
    }
}

impl Default for PageReserve {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    use super::*;

    #[test]
    fn fills_a_page_at_a_time_and_hands_out_from_the_front() {
        let mut r = PageReserve::new();
        assert!(r.wants_pages());
        assert_eq!(r.next_to_map(), None);
        r.start_block(1024, RESERVE_BLOCK);
        for i in 0..RESERVE_TARGET {
            assert!(r.wants_pages());
            assert_eq!(r.next_to_map(), Some(1024 + i));
            r.mapped_next();
        }
        assert!(!r.wants_pages(), "full at the target");
        assert_eq!(r.take_front(RESERVE_TARGET + 1), None);
        assert_eq!(r.take_front(0), None);
        assert_eq!(r.take_front(17), Some(1024));
        assert_eq!(r.ready_range(), 1041..1024 + RESERVE_TARGET);
        assert_eq!(r.tail_range(), 1024 + RESERVE_TARGET..1024 + RESERVE_BLOCK);
        assert!(r.wants_pages());
        assert_eq!(r.held(), RESERVE_BLOCK - 17);
    }

    #[test]
    fn a_used_up_block_waits_for_its_ready_pages_to_go() {
        let mut r = PageReserve::new();
        r.start_block(0, 4);
        for _ in 0..4 {
            r.mapped_next();
        }
        assert_eq!(r.tail(), 0);
        assert!(r.wants_pages(), "no tail left, but it may be extended");
        assert_eq!(r.block_end(), Some(4));
        assert!(!r.serves_single_pages());
        r.set_stuck();
        assert!(!r.wants_pages(), "stuck: nothing to map until it is empty");
        assert!(
            r.serves_single_pages(),
            "stuck: its pages go to single pages too"
        );
        assert_eq!(r.take_front(3), Some(0));
        assert!(r.is_stuck());
        assert_eq!(r.take_front(1), Some(3));
        assert!(r.wants_pages(), "empty: a new block is wanted");
        assert!(!r.is_stuck());
        assert_eq!(r.held(), 0);
        assert_eq!(r.block_end(), None);
    }

    #[test]
    fn an_extended_block_maps_on_into_its_new_tail() {
        let mut r = PageReserve::new();
        r.start_block(0, 2);
        r.mapped_next();
        r.mapped_next();
        assert_eq!(r.next_to_map(), None);
        r.extend_tail(8);
        assert_eq!(r.next_to_map(), Some(2));
        assert_eq!(r.tail_range(), 2..10);
    }

    #[test]
    fn a_run_growing_at_the_front_takes_ready_pages_then_tail() {
        let mut r = PageReserve::new();
        r.start_block(100, 16);
        for _ in 0..3 {
            r.mapped_next();
        }
        assert_eq!(r.front_for(99, 2), None, "not where the reserve starts");
        assert_eq!(r.front_for(100, 17), None, "more than it holds");
        assert_eq!(r.front_for(100, 0), None);
        assert_eq!(r.front_for(100, 2), Some((2, 0)));
        assert_eq!(r.front_for(100, 5), Some((3, 2)));
        r.give_front(5);
        assert_eq!((r.ready(), r.tail()), (0, 11));
        assert_eq!(r.tail_range(), 105..116);
        assert_eq!(r.next_to_map(), Some(105));
    }

    #[test]
    fn overlaps_covers_ready_and_tail_and_nothing_when_empty() {
        let mut r = PageReserve::new();
        assert!(!r.overlaps(0, usize::MAX));
        r.start_block(10, 8);
        r.mapped_next();
        assert!(r.overlaps(9, 11));
        assert!(r.overlaps(17, 18));
        assert!(!r.overlaps(18, 20));
        assert!(!r.overlaps(0, 10));
        let (ready, tail) = r.take_all();
        assert_eq!((ready, tail), (10..11, 11..18));
        assert_eq!(r, PageReserve::new());
    }

    #[test]
    #[should_panic(expected = "a new block while holding pages")]
    fn a_second_block_while_holding_one_panics() {
        let mut r = PageReserve::new();
        r.start_block(0, 8);
        r.start_block(8, 8);
    }
}
