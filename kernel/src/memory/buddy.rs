//! A binary buddy allocator over the page numbers of a fixed virtual window.
//!
//! The heap window (see [`heap_window`](super::heap_window)) is `2^ORDER` pages. This module
//! decides *which* pages of it a request gets; it never touches memory or page tables, so it is
//! pure logic and its unit tests run on the host (`cargo test -p kernel-host`).
//!
//! # Representation
//!
//! A block of order `k` is `2^k` pages starting at a page index that is a multiple of `2^k`
//! (relative to the window start). For every order `k` there is one bit per block of that order,
//! set when the block is free *as a whole at that order*: its pages are free and its buddy (the
//! other half of its parent) is not also free at order `k` — freeing eagerly merges buddies, so
//! every free page is covered by exactly one free block, the largest aligned one possible.
//!
//! Finding *some* free block of an order must not scan, so each order's bitmap is the bottom
//! level of a 64-ary summary tree: a bit at level `l + 1` is set when word `i` of level `l` is
//! non-zero. Setting or clearing a bit touches at most one word per level, finding the first set
//! bit reads one word per level.
//!
//! ```text
//!   order k, level 2:  [ 1 word                ]     bit w set <=> level-1 word w != 0
//!   order k, level 1:  [ ceil(n/64/64) words    ]     bit w set <=> level-0 word w != 0
//!   order k, level 0:  [ ceil(n/64) words       ]     bit i set <=> block i (of 2^k pages) free
//!   (n = 2^(ORDER-k) blocks; one such stack per order 0..=ORDER, packed into one word array)
//! ```
//!
//! A `u64` mask with one bit per order says which orders have any free block, so an allocation
//! finds the smallest sufficient order with one `trailing_zeros`.
//!
//! # Cost
//!
//! * Time: `alloc` and `free` are O(ORDER · levels) word operations (at most ~21 · 4 for the
//!   kernel's 4 GiB window) — independent of how many pages are mapped or free.
//! * Memory: two bits per window page (`2N` block bits over all orders) plus the summary levels
//!   (about 1/63 more), all in the struct itself: 256 KiB + 4 KiB for a 2^20-page window. The
//!   struct is all-zero when empty, so a `static` of it lands in `.bss`.
//!
//! # Requests that are not a power of two
//!
//! `alloc(n)` takes a block of order `ceil(log2 n)` and immediately frees the `2^k - n` pages past
//! the end, so exactly `n` pages are taken. The returned run is therefore aligned to
//! `2^ceil(log2 n)` pages relative to the window start (and, because the kernel aligns the window
//! to its own size, absolutely). `free` accepts any run of pages — for example the unaligned head
//! and tail of an over-sized mapping — and splits it into maximal aligned blocks, each merged with
//! its free buddies.
#![deny(unsafe_code)]

use core::fmt;

/// Most orders a window can have (orders `0..=MAX_ORDER`): `2^36` pages is 256 TiB of window,
/// more than a 4-level page table's 128 TiB half, so no real window exceeds it.
pub const MAX_ORDER: u32 = 36;

/// Most summary levels one order's bitmap can need: `64^7` bits exceeds `2^36` blocks.
const MAX_LEVELS: usize = 7;

/// Bits in one bitmap word.
const WORD_BITS: usize = u64::BITS as usize;

/// Words needed by a summary tree over `bits` bits, and how many levels it has.
const fn tree_size(bits: usize) -> (usize, usize) {
    let mut words = bits.div_ceil(WORD_BITS);
    let mut total = words;
    let mut levels = 1;
    while words > 1 {
        words = words.div_ceil(WORD_BITS);
        total += words;
        levels += 1;
    }
    (total, levels)
}

/// Number of `u64` words of block bitmaps a buddy of `2^order` pages needs; the `WORDS`
/// parameter of [`Buddy`] must equal this.
pub const fn storage_words(order: u32) -> usize {
    let mut k = 0;
    let mut total = 0;
    while k <= order {
        total += tree_size(1 << (order - k)).0;
        k += 1;
    }
    total
}

/// Where each order's summary levels live in the word array.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// `offset[k][l]`: index of the first word of level `l` of order `k`.
    offset: [[usize; MAX_LEVELS]; MAX_ORDER as usize + 1],
    /// `levels[k]`: number of levels of order `k` (the last one is a single word).
    levels: [usize; MAX_ORDER as usize + 1],
}

const fn layout(order: u32) -> Layout {
    let mut lay = Layout {
        offset: [[0; MAX_LEVELS]; MAX_ORDER as usize + 1],
        levels: [0; MAX_ORDER as usize + 1],
    };
    let mut next = 0;
    let mut k = 0;
    while k <= order as usize {
        let mut words = (1usize << (order as usize - k)).div_ceil(WORD_BITS);
        let mut l = 0;
        loop {
            lay.offset[k][l] = next;
            next += words;
            l += 1;
            if words == 1 {
                break;
            }
            words = words.div_ceil(WORD_BITS);
        }
        lay.levels[k] = l;
        k += 1;
    }
    lay
}

/// `ceil(log2(n))` for `n >= 1`.
const fn ceil_log2(n: usize) -> u32 {
    if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    }
}

/// A buddy allocator over page indices `0 .. 2^ORDER`.
///
/// `WORDS` must be [`storage_words`]`(ORDER)` (checked at compile time); write the type as
/// `Buddy<20, { storage_words(20) }>`.
pub struct Buddy<const ORDER: u32, const WORDS: usize> {
    /// All orders' summary trees, packed as described by [`Self::LAYOUT`].
    bits: [u64; WORDS],
    /// Number of free blocks per order.
    free_blocks: [usize; MAX_ORDER as usize + 1],
    /// Bit `k` set when order `k` has at least one free block.
    nonempty: u64,
    /// Total free pages (sum over orders of `free_blocks[k] << k`).
    free_pages: usize,
}

impl<const ORDER: u32, const WORDS: usize> Buddy<ORDER, WORDS> {
    /// The word layout, computed at compile time; also where the parameters are checked.
    const LAYOUT: Layout = {
        assert!(ORDER <= MAX_ORDER, "window order above MAX_ORDER");
        assert!(
            WORDS == storage_words(ORDER),
            "WORDS must be storage_words(ORDER)"
        );
        layout(ORDER)
    };

    /// Pages managed: `2^ORDER`.
    pub const PAGES: usize = 1 << ORDER;

    /// A buddy with no free pages (all-zero, so a `static` of it costs no file space). Hand it its
    /// pages with [`free`](Self::free) (or [`reset`](Self::reset)).
    #[must_use]
    pub const fn empty() -> Self {
        let _check: Layout = Self::LAYOUT;
        Self {
            bits: [0; WORDS],
            free_blocks: [0; MAX_ORDER as usize + 1],
            nonempty: 0,
            free_pages: 0,
        }
    }

    /// Makes every page free, in place (the struct is large; never move it around needlessly).
    pub fn reset(&mut self) {
        self.bits.fill(0);
        self.free_blocks = [0; MAX_ORDER as usize + 1];
        self.nonempty = 0;
        self.free_pages = 0;
        self.insert(ORDER, 0);
        self.free_pages = Self::PAGES;
    }

    /// Pages currently free.
    #[must_use]
    pub fn free_pages(&self) -> usize {
        self.free_pages
    }

    /// The largest run one [`alloc`](Self::alloc) can currently return: the size of the
    /// largest free block (a request for `n` pages succeeds iff `n.next_power_of_two()` is at
    /// most this). Zero when nothing is free.
    #[must_use]
    pub fn largest_free_block(&self) -> usize {
        if self.nonempty == 0 {
            0
        } else {
            1 << (63 - self.nonempty.leading_zeros())
        }
    }

    /// Takes `count` contiguous free pages and returns the index of the first one, aligned to
    /// `count.next_power_of_two()`. `None` if `count` is zero or no free block of that size
    /// exists.
    pub fn alloc(&mut self, count: usize) -> Option<usize> {
        if count == 0 || count > Self::PAGES {
            return None;
        }
        let want = ceil_log2(count);
        let candidates = self.nonempty & !((1u64 << want) - 1);
        if candidates == 0 {
            return None;
        }
        let mut order = candidates.trailing_zeros();
        let block = self.find_first(order)?;
        self.remove(order, block);
        let start = block << order;
        // Split down to the wanted order, freeing the upper half at each step.
        while order > want {
            order -= 1;
            self.insert(order, (start >> order) | 1);
        }
        self.free_pages -= 1 << want;
        // Give back the pages past `count` at the end of the block.
        let end = start + count;
        let tail = (1usize << want) - count;
        if tail > 0 {
            // Taken a moment ago with the block: no double-free check needed.
            self.free_run(end, tail, false);
        }
        Some(start)
    }

    /// Takes exactly the pages `start .. start + count` if every one of them is free, and
    /// returns whether it did (on `false` nothing changed). This is how a mapped run grows in
    /// place: it claims the pages right after itself. Each free block overlapping the range is
    /// taken whole and the parts of it outside the range are freed again, so the cost is
    /// O(ORDER) per block touched, not per page.
    pub fn claim(&mut self, start: usize, count: usize) -> bool {
        if count == 0 || start >= Self::PAGES || count > Self::PAGES - start {
            return false;
        }
        let end = start + count;
        // Every page must be free before anything changes.
        let mut page = start;
        while page < end {
            match self.free_block_covering(page) {
                Some((order, block)) => page = (block + 1) << order,
                None => return false,
            }
        }
        let mut page = start;
        while page < end {
            let (order, block) = self
                .free_block_covering(page)
                .expect("buddy: a page checked free above is taken");
            self.remove(order, block);
            self.free_pages -= 1 << order;
            let (lo, hi) = (block << order, (block + 1) << order);
            // The pieces outside the range go back; they cannot merge into a block covering a
            // claimed page, since those are taken now.
            // (Taken a moment ago with the block: no double-free check needed.)
            if lo < start {
                self.free_run(lo, start - lo, false);
            }
            if hi > end {
                self.free_run(end, hi - end, false);
            }
            page = hi;
        }
        true
    }

    /// Whether `page` is taken (inside the window and covered by no free block). O(ORDER).
    #[must_use]
    pub fn is_taken(&self, page: usize) -> bool {
        page < Self::PAGES && self.free_block_covering(page).is_none()
    }

    /// The free block covering `page`, as `(order, block index)`, or `None` if it is taken.
    fn free_block_covering(&self, page: usize) -> Option<(u32, usize)> {
        (0..=ORDER)
            .map(|order| (order, page >> order))
            .find(|&(order, block)| self.is_free(order, block))
    }

    /// Returns the pages `start .. start + count` (any run, aligned or not) to the free pool,
    /// merging each piece with its free buddies.
    ///
    /// # Panics
    ///
    /// If the run leaves the window, or a piece of it is found to be free already (a double
    /// free). The double-free check is O(ORDER) per piece and catches any piece whose first page
    /// is covered by a free block; the page tables catch the rest first (unmapping an unmapped
    /// page fails before the run gets here).
    pub fn free(&mut self, start: usize, count: usize) {
        self.free_run(start, count, true);
    }

    /// [`free`](Self::free) for a run whose every page the caller has just proved taken by a
    /// check at least as strong as the double-free check (the heap window: every page of the
    /// run was mapped in the page tables, and a window page is mapped exactly while it is
    /// taken): the O(ORDER) check per piece runs in debug builds only. (About 170 of the ~240
    /// instructions of freeing one page.) The range check stays.
    ///
    /// # Panics
    ///
    /// If the run leaves the window; in debug builds also as [`free`](Self::free).
    pub fn free_taken(&mut self, start: usize, count: usize) {
        self.free_run(start, count, cfg!(debug_assertions));
    }

    /// [`free`](Self::free), with the double-free check if `check`.
    fn free_run(&mut self, start: usize, count: usize, check: bool) {
        assert!(
            start < Self::PAGES && count <= Self::PAGES - start,
            "buddy: freeing pages {start}..{} outside the {}-page window",
            start.wrapping_add(count),
            Self::PAGES
        );
        let mut page = start;
        let mut left = count;
        while left > 0 {
            // The largest aligned block starting at `page` that fits in what is left.
            let align = if page == 0 {
                ORDER
            } else {
                page.trailing_zeros().min(ORDER)
            };
            let fit = usize::BITS - 1 - left.leading_zeros();
            let order = align.min(fit);
            if check {
                self.check_taken(page, order);
            }
            self.free_block(page, order);
            page += 1 << order;
            left -= 1 << order;
        }
    }

    /// Panics if a free block covers `page` (freeing the block of `order` there would be a
    /// double free). O(ORDER).
    fn check_taken(&self, page: usize, order: u32) {
        for k in 0..=ORDER {
            if self.is_free(k, page >> k) {
                panic!(
                    "buddy: double free of pages {page}..{} (page {page} is already free)",
                    page + (1 << order)
                );
            }
        }
    }

    /// Frees one aligned block (checked taken, or known to be) and merges it upwards with free
    /// buddies.
    fn free_block(&mut self, page: usize, order: u32) {
        self.free_pages += 1 << order;
        let mut order = order;
        let mut block = page >> order;
        while order < ORDER && self.is_free(order, block ^ 1) {
            self.remove(order, block ^ 1);
            block >>= 1;
            order += 1;
        }
        self.insert(order, block);
    }

    /// Whether block `block` of order `order` is free at that order.
    fn is_free(&self, order: u32, block: usize) -> bool {
        let word = Self::LAYOUT.offset[order as usize][0] + block / WORD_BITS;
        self.bits[word] & (1 << (block % WORD_BITS)) != 0
    }

    /// Marks a block free at its order (it must not be already).
    fn insert(&mut self, order: u32, block: usize) {
        let k = order as usize;
        let mut index = block;
        for level in 0..Self::LAYOUT.levels[k] {
            let word = Self::LAYOUT.offset[k][level] + index / WORD_BITS;
            let was = self.bits[word];
            self.bits[word] = was | (1 << (index % WORD_BITS));
            if was != 0 {
                break; // Upper levels already record this word as non-empty.
            }
            index /= WORD_BITS;
        }
        self.free_blocks[k] += 1;
        self.nonempty |= 1 << order;
    }

    /// Marks a free block as taken (it must be free at this order).
    fn remove(&mut self, order: u32, block: usize) {
        let k = order as usize;
        let mut index = block;
        for level in 0..Self::LAYOUT.levels[k] {
            let word = Self::LAYOUT.offset[k][level] + index / WORD_BITS;
            let now = self.bits[word] & !(1 << (index % WORD_BITS));
            self.bits[word] = now;
            if now != 0 {
                break; // The word still has free blocks: upper levels stay set.
            }
            index /= WORD_BITS;
        }
        self.free_blocks[k] -= 1;
        if self.free_blocks[k] == 0 {
            self.nonempty &= !(1 << order);
        }
    }

    /// Index of the lowest free block of `order`, reading one word per level.
    fn find_first(&self, order: u32) -> Option<usize> {
        let k = order as usize;
        let levels = Self::LAYOUT.levels[k];
        let mut index = 0;
        for level in (0..levels).rev() {
            let word = self.bits[Self::LAYOUT.offset[k][level] + index];
            if word == 0 {
                return None;
            }
            index = index * WORD_BITS + word.trailing_zeros() as usize;
        }
        Some(index)
    }

    /// Walks every bit and counter and panics, naming the broken rule, if any invariant does not
    /// hold. Linear in the window size: for tests and debugging only.
    pub fn check_invariants(&self) {
        let mut covered_pages = 0usize;
        let mut nonempty = 0u64;
        for order in 0..=ORDER {
            let k = order as usize;
            let blocks = 1usize << (ORDER - order);
            let mut count = 0;
            for block in 0..blocks {
                if !self.is_free(order, block) {
                    continue;
                }
                count += 1;
                if order < ORDER {
                    assert!(
                        !self.is_free(order, block ^ 1),
                        "buddy: blocks {block} and its buddy both free at order {order}"
                    );
                }
                for upper in order + 1..=ORDER {
                    assert!(
                        !self.is_free(upper, block >> (upper - order)),
                        "buddy: block {block} of order {order} inside a free block of order {upper}"
                    );
                }
            }
            assert_eq!(
                count, self.free_blocks[k],
                "buddy: free count of order {order}"
            );
            if count > 0 {
                nonempty |= 1 << order;
            }
            covered_pages += count << order;
            // Summary levels: bit set exactly when the word below is non-zero.
            for level in 1..Self::LAYOUT.levels[k] {
                let below = Self::LAYOUT.offset[k][level - 1];
                let words_below = Self::LAYOUT.offset[k][level] - below;
                for w in 0..words_below {
                    let set = self.bits[below + w] != 0;
                    let word = self.bits[Self::LAYOUT.offset[k][level] + w / WORD_BITS];
                    assert_eq!(
                        word & (1 << (w % WORD_BITS)) != 0,
                        set,
                        "buddy: summary bit {w} of order {order} level {level}"
                    );
                }
            }
            // Bits past the last block (orders with fewer than 64 blocks) stay clear.
            if blocks < WORD_BITS {
                let word = self.bits[Self::LAYOUT.offset[k][0]];
                assert_eq!(
                    word >> blocks,
                    0,
                    "buddy: stray bits past the blocks of order {order}"
                );
            }
        }
        assert_eq!(nonempty, self.nonempty, "buddy: non-empty order mask");
        assert_eq!(covered_pages, self.free_pages, "buddy: free page count");
    }
}

impl<const ORDER: u32, const WORDS: usize> fmt::Debug for Buddy<ORDER, WORDS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buddy")
            .field("pages", &Self::PAGES)
            .field("free_pages", &self.free_pages)
            .field("largest_free_block", &self.largest_free_block())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    type Small = Buddy<6, { storage_words(6) }>;
    type Medium = Buddy<13, { storage_words(13) }>;

    fn full<const O: u32, const W: usize>() -> Box<Buddy<O, W>> {
        let mut b = Box::new(Buddy::<O, W>::empty());
        b.reset();
        b
    }

    #[test]
    fn layout_sizes() {
        // 64 pages: orders 0..=6 each fit in one word.
        assert_eq!(storage_words(6), 7);
        // 2^13 pages: order 0 has 128 + 2 + 1 words.
        assert_eq!(tree_size(1 << 13), (131, 3));
        // The kernel's window: 256 KiB of block bits plus summaries.
        let words = storage_words(20);
        assert!(words * 8 < 256 * 1024 + 8 * 1024, "{words} words");
    }

    #[test]
    fn empty_has_nothing() {
        let mut b = Box::new(Small::empty());
        assert_eq!(b.alloc(1), None);
        assert_eq!(b.free_pages(), 0);
        b.check_invariants();
    }

    #[test]
    fn whole_window_then_nothing() {
        let mut b = full::<6, { storage_words(6) }>();
        assert_eq!(b.alloc(64), Some(0));
        assert_eq!(b.alloc(1), None);
        b.free(0, 64);
        b.check_invariants();
        assert_eq!(b.largest_free_block(), 64);
    }

    #[test]
    fn zero_and_oversized_requests_fail() {
        let mut b = full::<6, { storage_words(6) }>();
        assert_eq!(b.alloc(0), None);
        assert_eq!(b.alloc(65), None);
        assert_eq!(b.free_pages(), 64);
    }

    #[test]
    fn odd_sizes_take_exactly_their_pages() {
        let mut b = full::<6, { storage_words(6) }>();
        let a = b.alloc(3).unwrap();
        assert_eq!(a % 4, 0);
        assert_eq!(b.free_pages(), 61);
        b.check_invariants();
        // The page after the 3-page run is free and usable on its own.
        let c = b.alloc(1).unwrap();
        assert_eq!(c, a + 3);
        b.free(a, 3);
        b.free(c, 1);
        b.check_invariants();
        assert_eq!(b.largest_free_block(), 64);
    }

    #[test]
    fn sub_runs_free_independently_and_merge_back() {
        let mut b = full::<6, { storage_words(6) }>();
        let a = b.alloc(16).unwrap();
        b.free(a + 5, 7); // middle
        b.check_invariants();
        b.free(a, 5); // head
        b.check_invariants();
        b.free(a + 12, 4); // tail
        b.check_invariants();
        assert_eq!(b.free_pages(), 64);
        assert_eq!(b.largest_free_block(), 64);
    }

    #[test]
    fn claim_takes_exactly_the_range_or_nothing() {
        let mut b = full::<6, { storage_words(6) }>();
        // A run of 5 pages (block of 8 at 0; pages 5..8 freed again).
        assert_eq!(b.alloc(5), Some(0));
        // Grow it in place by 3 (the freed tail) and then by 8 more (splitting block 8..16).
        assert!(b.claim(5, 3));
        assert!(b.claim(8, 8));
        b.check_invariants();
        assert_eq!(b.free_pages(), 64 - 16);
        // Taken, out of range or empty: refused, nothing changes.
        assert!(!b.claim(15, 2));
        assert!(!b.claim(60, 5));
        assert!(!b.claim(64, 1));
        assert!(!b.claim(20, 0));
        assert_eq!(b.free_pages(), 64 - 16);
        // An unaligned claim in the middle of a big free block leaves both sides free.
        assert!(b.claim(21, 10));
        b.check_invariants();
        assert_eq!(b.free_pages(), 64 - 26);
        // A claim reaching over a taken page is refused whole.
        assert!(!b.claim(17, 10));
        b.free(0, 16);
        b.free(21, 10);
        b.check_invariants();
        assert_eq!(b.free_pages(), 64);
        assert_eq!(b.alloc(64), Some(0));
    }

    #[test]
    fn freed_range_is_reused() {
        let mut b = full::<6, { storage_words(6) }>();
        let a = b.alloc(8).unwrap();
        let _other = b.alloc(8).unwrap();
        b.free(a, 8);
        assert_eq!(b.alloc(8), Some(a));
    }

    #[test]
    fn free_taken_merges_like_free() {
        let mut b = full::<4, { storage_words(4) }>();
        let a = b.alloc(3).unwrap();
        let c = b.alloc(5).unwrap();
        b.free_taken(a, 3);
        b.free_taken(c + 1, 4);
        b.free_taken(c, 1);
        b.check_invariants();
        assert_eq!(b.free_pages(), 16);
        assert_eq!(b.largest_free_block(), 16, "everything merged back");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "double free")]
    fn free_taken_still_checks_in_debug_builds() {
        let mut b = full::<4, { storage_words(4) }>();
        let a = b.alloc(2).unwrap();
        b.free_taken(a, 2);
        b.free_taken(a, 2);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut b = full::<6, { storage_words(6) }>();
        let a = b.alloc(4).unwrap();
        b.free(a, 4);
        b.free(a, 4);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn free_outside_window_panics() {
        let mut b = full::<6, { storage_words(6) }>();
        b.free(60, 8);
    }

    #[test]
    fn kernel_sized_window_allocates_in_constant_steps() {
        type Kernel = Buddy<20, { storage_words(20) }>;
        let mut b = full::<20, { storage_words(20) }>();
        let mut runs = Vec::new();
        for i in 0..2000usize {
            let n = 1 + (i * 7919) % 37;
            runs.push((b.alloc(n).unwrap(), n));
        }
        for (s, n) in runs.drain(..).rev() {
            b.free(s, n);
        }
        assert_eq!(b.free_pages(), Kernel::PAGES);
        assert_eq!(b.largest_free_block(), Kernel::PAGES);
    }

    /// A xorshift generator: deterministic, no dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Model-based random test: a `Vec<bool>` of page states is the model. Every allocation must
    /// be in range, over free pages and aligned; it must fail exactly when the model has no free
    /// aligned block of the rounded-up size; frees of random sub-runs of live runs must keep the
    /// invariants.
    #[test]
    fn random_actions_match_model() {
        const O: u32 = 9;
        let pages = 1usize << O;
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut b = full::<O, { storage_words(O) }>();
            let mut model = vec![false; pages]; // true = taken
            let mut live: Vec<(usize, usize)> = Vec::new();
            for _ in 0..3000 {
                if !live.is_empty() && rng.below(5) == 0 {
                    // Grow a live run in place by claiming the pages after it.
                    let i = rng.below(live.len() as u64) as usize;
                    let (s, n) = live[i];
                    let extra = 1 + rng.below(32) as usize;
                    let end = s + n;
                    let possible =
                        end + extra <= pages && model[end..end + extra].iter().all(|t| !t);
                    assert_eq!(b.claim(end, extra), possible, "claim({end}, {extra})");
                    if possible {
                        model[end..end + extra].fill(true);
                        live[i].1 += extra;
                    }
                } else if live.is_empty() || rng.below(3) != 0 {
                    let n = match rng.below(4) {
                        0 => 1,
                        1 => 1 + rng.below(8) as usize,
                        2 => 1 + rng.below(64) as usize,
                        _ => 1 + rng.below(pages as u64 / 2) as usize,
                    };
                    let size = n.next_power_of_two();
                    let possible = (0..pages / size)
                        .any(|blk| model[blk * size..(blk + 1) * size].iter().all(|t| !t));
                    match b.alloc(n) {
                        Some(s) => {
                            assert!(possible);
                            assert_eq!(s % size, 0, "alignment");
                            assert!(s + n <= pages);
                            for p in &mut model[s..s + n] {
                                assert!(!*p, "page handed out twice");
                                *p = true;
                            }
                            live.push((s, n));
                        }
                        None => assert!(!possible, "alloc({n}) failed with a free block"),
                    }
                } else {
                    let i = rng.below(live.len() as u64) as usize;
                    let (s, n) = live.swap_remove(i);
                    // Free a random sub-run; the remaining head and tail stay live.
                    let off = rng.below(n as u64) as usize;
                    let len = 1 + rng.below((n - off) as u64) as usize;
                    b.free(s + off, len);
                    for p in &mut model[s + off..s + off + len] {
                        *p = false;
                    }
                    if off > 0 {
                        live.push((s, off));
                    }
                    if off + len < n {
                        live.push((s + off + len, n - off - len));
                    }
                }
                b.check_invariants();
                let free_model = model.iter().filter(|t| !**t).count();
                assert_eq!(b.free_pages(), free_model);
            }
            for (s, n) in live {
                b.free(s, n);
            }
            b.check_invariants();
            assert_eq!(b.largest_free_block(), pages);
        }
    }

    #[test]
    fn medium_window_fills_with_single_pages() {
        let mut b = full::<13, { storage_words(13) }>();
        for i in 0..Medium::PAGES {
            assert_eq!(b.alloc(1), Some(i));
        }
        assert_eq!(b.alloc(1), None);
        b.check_invariants();
        for i in (0..Medium::PAGES).step_by(2) {
            b.free(i, 1);
        }
        b.check_invariants();
        assert_eq!(b.largest_free_block(), 1);
        assert_eq!(b.alloc(2), None);
        for i in (1..Medium::PAGES).step_by(2) {
            b.free(i, 1);
        }
        assert_eq!(b.largest_free_block(), Medium::PAGES);
    }
}
