//! A run tree: which of `n` pages are free, and where the first run of `k` free pages starts,
//! in O(log n).
//!
//! The pages are a bitmap (`words`, bit `i % 64` of word `i / 64` set = page `i` free) with a
//! summary tree over its words: a complete binary tree in an array (`nodes[1]` the root, the
//! children of `j` at `2j` and `2j + 1`, the leaves at `nodes[L..2L]` for the `L` words rounded
//! up to a power of two), whose node holds three counts of the pages it spans:
//!
//! ```text
//!   pre   free pages at its start        ┌────────── span of a node ──────────┐
//!   suf   free pages at its end          │111100001111111110000000111111111111│
//!   max   the longest free run in it      pre=4        max=12 (= suf here)
//! ```
//!
//! The first fit for `k` pages walks down from the root: into the left child if its `max` is at
//! least `k`, else the run that straddles the middle (`left.suf + right.pre >= k`), else into the
//! right child; in a leaf, the word itself is searched. Marking a run free or used rewrites its
//! words and then the summaries of their ancestors, level by level: O(run / 64 + log n).
//!
//! Pages past `n` (the tail of the last word, and padding leaves) are never free, so no run
//! reaches them. Everything here is safe code over two slices; [`FixedRegion`](super::FixedRegion)
//! carves those slices out of the region's first pages.
#![deny(unsafe_code)]

/// Pages per bitmap word.
const WORD_PAGES: usize = 64;

/// The summary of a node (or a leaf word): free pages at its start, at its end, and the longest
/// free run within it. `u32`: a region of up to 2^32 pages (16 TiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub(super) struct Summary {
    pre: u32,
    suf: u32,
    max: u32,
}

impl Summary {
    /// The summary of one bitmap word.
    fn of_word(w: u64) -> Self {
        Self {
            pre: w.trailing_ones(),
            suf: w.leading_ones(),
            max: longest_ones(w),
        }
    }

    /// The summary of two adjacent halves of `half` pages each.
    fn join(l: Self, r: Self, half: u32) -> Self {
        Self {
            pre: if l.pre == half { half + r.pre } else { l.pre },
            suf: if r.suf == half { half + l.suf } else { r.suf },
            max: l.max.max(r.max).max(l.suf + r.pre),
        }
    }
}

/// The longest run of set bits in `w`.
fn longest_ones(mut w: u64) -> u32 {
    let mut n = 0;
    while w != 0 {
        // Each step shortens every run of ones by one.
        w &= w << 1;
        n += 1;
    }
    n
}

/// The first bit at which `k` (1..=64) consecutive set bits of `w` start, if any.
fn first_run_in_word(w: u64, k: usize) -> Option<usize> {
    // After the loop, bit i of `m` is set iff bits i..i+k of `w` are all set.
    let mut m = w;
    let mut have = 1;
    while have < k {
        let step = have.min(k - have);
        m &= m >> step;
        have += step;
    }
    (m != 0).then(|| m.trailing_zeros() as usize)
}

/// Words of bitmap and nodes of summary that a tree over `pages` pages needs.
pub(super) const fn shape(pages: usize) -> (usize, usize) {
    let words = pages.div_ceil(WORD_PAGES);
    let leaves = if words == 0 {
        1
    } else {
        words.next_power_of_two()
    };
    (words, 2 * leaves)
}

/// Bytes of metadata (words, then nodes) a tree over `pages` pages needs.
pub(super) const fn meta_bytes(pages: usize) -> usize {
    let (words, nodes) = shape(pages);
    words * size_of::<u64>() + nodes * size_of::<Summary>()
}

/// The run tree over its metadata: `&[u64]`/`&[Summary]` to read, `&mut` slices to change.
pub(super) struct RunTree<W, N> {
    words: W,
    nodes: N,
    pages: usize,
}

impl<W: AsRef<[u64]>, N: AsRef<[Summary]>> RunTree<W, N> {
    /// A tree over `pages` pages in metadata laid out by [`shape`], as it is (set up by an
    /// earlier [`format`](Self::format)).
    pub(super) fn new(words: W, nodes: N, pages: usize) -> Self {
        debug_assert_eq!((words.as_ref().len(), nodes.as_ref().len()), shape(pages));
        Self {
            words,
            nodes,
            pages,
        }
    }

    fn w(&self) -> &[u64] {
        self.words.as_ref()
    }

    fn n(&self) -> &[Summary] {
        self.nodes.as_ref()
    }

    /// Number of leaves (a power of two).
    fn leaves(&self) -> usize {
        self.n().len() / 2
    }

    /// The longest run of free pages.
    pub(super) fn largest_free(&self) -> usize {
        self.n()[1].max as usize
    }

    /// Whether page `i` is free.
    pub(super) fn is_free(&self, i: usize) -> bool {
        i < self.pages && self.w()[i / WORD_PAGES] & (1 << (i % WORD_PAGES)) != 0
    }

    /// The first (lowest) run of `k` free pages, `k >= 1`.
    pub(super) fn first_fit(&self, k: usize) -> Option<usize> {
        if k == 0 || k > self.largest_free() {
            return None;
        }
        let mut j = 1;
        let mut start = 0;
        let mut span = self.leaves() * WORD_PAGES;
        while j < self.leaves() {
            let (l, r) = (self.n()[2 * j], self.n()[2 * j + 1]);
            span /= 2;
            if l.max as usize >= k {
                j *= 2;
            } else if (l.suf + r.pre) as usize >= k {
                return Some(start + span - l.suf as usize);
            } else {
                j = 2 * j + 1;
                start += span;
            }
        }
        let w = self.w()[j - self.leaves()];
        first_run_in_word(w, k).map(|bit| start + bit)
    }

    /// Whether all of pages `start..start + count` are free (false if they leave the tree).
    /// O(count / 64).
    pub(super) fn all_free(&self, start: usize, count: usize) -> bool {
        self.all(start, count, true)
    }

    /// Whether all of pages `start..start + count` are used (and inside the tree).
    pub(super) fn all_used(&self, start: usize, count: usize) -> bool {
        self.all(start, count, false)
    }

    fn all(&self, start: usize, count: usize, free: bool) -> bool {
        let Some(end) = start.checked_add(count).filter(|&e| e <= self.pages) else {
            return false;
        };
        let mut i = start;
        while i < end {
            let bit = i % WORD_PAGES;
            let n = (WORD_PAGES - bit).min(end - i);
            let mask = ones(n) << bit;
            let w = self.w()[i / WORD_PAGES];
            let bits = if free { w } else { !w };
            if bits & mask != mask {
                return false;
            }
            i += n;
        }
        true
    }

    /// The free runs in page order, as `(start, length)` (for the heap picture and the tests).
    pub(super) fn free_runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut i = 0;
        core::iter::from_fn(move || {
            while i < self.pages && !self.is_free(i) {
                // Skip whole used words at once.
                if i % WORD_PAGES == 0 && self.w()[i / WORD_PAGES] == 0 {
                    i += WORD_PAGES;
                } else {
                    i += 1;
                }
            }
            if i >= self.pages {
                return None;
            }
            let start = i;
            while i < self.pages && self.is_free(i) {
                if i % WORD_PAGES == 0 && self.w()[i / WORD_PAGES] == u64::MAX {
                    i += WORD_PAGES;
                } else {
                    i += 1;
                }
            }
            let end = i.min(self.pages);
            i = end;
            Some((start, end - start))
        })
    }
}

impl<W: AsRef<[u64]> + AsMut<[u64]>, N: AsRef<[Summary]> + AsMut<[Summary]>> RunTree<W, N> {
    /// Marks every page free (and every bit past `pages` used) and builds the summaries.
    pub(super) fn format(&mut self) {
        let full = self.pages / WORD_PAGES;
        self.words.as_mut()[..full].fill(u64::MAX);
        if let Some(last) = self.words.as_mut().get_mut(full) {
            *last = (1u64 << (self.pages % WORD_PAGES)) - 1;
        }
        let leaves = self.leaves();
        for j in 0..leaves {
            let w = self.words.as_ref().get(j).copied().unwrap_or(0);
            self.nodes.as_mut()[leaves + j] = Summary::of_word(w);
        }
        self.update(0, leaves - 1);
    }

    /// Recomputes the ancestors of leaves `lo..=hi` (leaf indices), level by level.
    fn update(&mut self, lo: usize, hi: usize) {
        let (mut lo, mut hi) = (self.leaves() + lo, self.leaves() + hi);
        let mut half = WORD_PAGES as u32;
        while lo > 1 {
            lo /= 2;
            hi /= 2;
            for j in lo..=hi {
                let n = self.nodes.as_mut();
                n[j] = Summary::join(n[2 * j], n[2 * j + 1], half);
            }
            half *= 2;
        }
    }

    /// Marks pages `start..start + count` used (`free == false`) or free, then updates the
    /// summaries. The range must lie inside the tree.
    pub(super) fn set(&mut self, start: usize, count: usize, free: bool) {
        debug_assert!(count > 0 && start + count <= self.pages);
        let end = start + count;
        let mut i = start;
        while i < end {
            let bit = i % WORD_PAGES;
            let n = (WORD_PAGES - bit).min(end - i);
            let mask = ones(n) << bit;
            let w = &mut self.words.as_mut()[i / WORD_PAGES];
            if free {
                *w |= mask;
            } else {
                *w &= !mask;
            }
            i += n;
        }
        let (lo, hi) = (start / WORD_PAGES, (end - 1) / WORD_PAGES);
        let leaves = self.leaves();
        for j in lo..=hi {
            let s = Summary::of_word(self.w()[j]);
            self.nodes.as_mut()[leaves + j] = s;
        }
        self.update(lo, hi);
    }
}

/// `n` (0..=64) low bits set.
fn ones(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1 << n) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift64;
    use std::vec;
    use std::vec::Vec;

    fn tree_over(pages: usize) -> (Vec<u64>, Vec<Summary>) {
        let (w, n) = shape(pages);
        (vec![0; w], vec![Summary::default(); n])
    }

    /// The model: the first run of `k` `true`s.
    fn model_fit(free: &[bool], k: usize) -> Option<usize> {
        let mut run = 0;
        for (i, &f) in free.iter().enumerate() {
            run = if f { run + 1 } else { 0 };
            if run == k {
                return Some(i + 1 - k);
            }
        }
        None
    }

    fn model_longest(free: &[bool]) -> usize {
        free.split(|f| !f).map(<[bool]>::len).max().unwrap_or(0)
    }

    #[test]
    fn word_helpers() {
        assert_eq!(longest_ones(0), 0);
        assert_eq!(longest_ones(u64::MAX), 64);
        assert_eq!(longest_ones(0b1110_1111_0011), 4);
        assert_eq!(first_run_in_word(0b1110_1111_0011, 4), Some(4));
        assert_eq!(first_run_in_word(0b1110_1111_0011, 5), None);
        assert_eq!(first_run_in_word(u64::MAX, 64), Some(0));
        assert_eq!(first_run_in_word(u64::MAX << 1, 63), Some(1));
        assert_eq!(first_run_in_word(u64::MAX << 1, 64), None);
        assert_eq!(ones(0), 0);
        assert_eq!(ones(64), u64::MAX);
    }

    #[test]
    fn fresh_tree_is_one_free_run() {
        for pages in [0, 1, 63, 64, 65, 200, 1000] {
            let (mut w, mut n) = tree_over(pages);
            let mut t = RunTree::new(&mut w, &mut n, pages);
            t.format();
            assert_eq!(t.largest_free(), pages);
            assert_eq!(t.first_fit(pages), (pages > 0).then_some(0));
            assert_eq!(t.first_fit(pages + 1), None);
            let runs: Vec<_> = t.free_runs().collect();
            assert_eq!(runs, if pages > 0 { vec![(0, pages)] } else { vec![] });
        }
    }

    #[test]
    fn a_run_straddling_words_and_subtrees_is_found() {
        let (mut w, mut n) = tree_over(512);
        let mut t = RunTree::new(&mut w, &mut n, 512);
        t.format();
        t.set(0, 512, false);
        t.set(250, 20, true); // across the words at 256, and the root's two halves
        t.set(300, 10, true);
        assert_eq!(t.largest_free(), 20);
        assert_eq!(t.first_fit(11), Some(250));
        assert_eq!(t.first_fit(10), Some(250));
        assert_eq!(t.first_fit(21), None);
        t.set(250, 20, false);
        assert_eq!(t.first_fit(10), Some(300));
        assert_eq!(t.free_runs().collect::<Vec<_>>(), vec![(300, 10)]);
        assert!(t.all_free(300, 10) && !t.all_free(299, 2) && !t.all_free(305, 10));
        assert!(t.all_used(0, 300) && !t.all_used(290, 11) && !t.all_used(500, 20));
    }

    /// Random marks against a `Vec<bool>`: the first fit, the longest run and the free runs
    /// agree after every step.
    #[test]
    fn random_marks_agree_with_the_model() {
        let mut rng = XorShift64::new(7);
        let rounds = if cfg!(miri) { 60 } else { 3000 };
        for pages in [1, 64, 130, 777] {
            let (mut w, mut n) = tree_over(pages);
            let mut t = RunTree::new(&mut w, &mut n, pages);
            t.format();
            let mut model = vec![true; pages];
            for _ in 0..rounds {
                let start = rng.range(0, pages - 1);
                let count = rng.range(1, (pages - start).min(150));
                let free = rng.one_in(2);
                t.set(start, count, free);
                model[start..start + count].fill(free);
                assert_eq!(t.largest_free(), model_longest(&model));
                let k = rng.range(1, 200);
                assert_eq!(t.first_fit(k), model_fit(&model, k), "k {k}");
                let s = rng.range(0, pages - 1);
                let c = rng.range(1, 100);
                let inside = s + c <= pages;
                assert_eq!(
                    t.all_free(s, c),
                    inside && model[s..s + c].iter().all(|&f| f)
                );
                assert_eq!(
                    t.all_used(s, c),
                    inside && model[s..s + c].iter().all(|&f| !f)
                );
            }
            let mut runs = Vec::new();
            let mut i = 0;
            while i < pages {
                if model[i] {
                    let s = i;
                    while i < pages && model[i] {
                        i += 1;
                    }
                    runs.push((s, i - s));
                } else {
                    i += 1;
                }
            }
            assert_eq!(t.free_runs().collect::<Vec<_>>(), runs);
        }
    }

    #[test]
    fn metadata_is_small() {
        // 4 GiB of pages: 16 Ki words and 32 Ki nodes, 512 KiB (1/8192 of the region).
        assert_eq!(meta_bytes(1 << 20), (1 << 14) * 8 + (1 << 15) * 12);
        assert_eq!(meta_bytes(1), 8 + 2 * 12);
    }
}
