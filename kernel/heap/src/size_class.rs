//! The general size classes: which class serves a [`Layout`], or whether it goes to the large
//! allocator.
//!
//! There is exactly one mapping, [`class_for`], a `const fn` that accounts for size *and*
//! alignment. Chunks are page aligned and split into equal blocks starting at offset 0, so the
//! alignment of every block of class `c` is the largest power of two dividing `c`; a layout fits a
//! class when the class is at least its size and a multiple of its alignment.
//!
//! The table ([`CLASS_SIZES`]) is chosen so that a one-page chunk leaves a tail of at most 81 bytes
//! (2 % of the page) that no block can use, and so that neighbouring classes are at most ~1/8
//! apart above 64 bytes. A request of 64 bytes or more whose best class would waste more than 1/8
//! of the block goes to the large allocator instead (a 145-byte request, for example, is served
//! there with 16-byte granularity rather than as a 168-byte block), unless its alignment alone
//! forces the waste (alignment greater than size), in which case the smallest aligned class is
//! used.
#![deny(unsafe_code)]

use core::alloc::Layout;

use crate::source::PAGE_SIZE;

/// Block sizes of the general classes, in bytes. Multiples of 8 up to 144 (every allocation of
/// 8-byte-aligned data gets an exact or near-exact fit), then spaced ~1/8 apart, each chosen so
/// that `PAGE_SIZE % size <= 81` (see [`MAX_CHUNK_TAIL`]).
pub const CLASS_SIZES: [usize; NUM_CLASSES] = [
    8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 168, 192, 224,
    256, 288, 312, 336, 368, 408, 448, 512, 584, 680, 816, 1024, 1360, 2048, 4096,
];

/// Number of general size classes.
pub const NUM_CLASSES: usize = 36;

/// Largest unusable tail a class may leave at the end of a one-page chunk: 81 bytes is just under
/// 2 % of a page. (The table does better: its largest tail is 64 bytes, e.g. 4096 - 21 * 192; the
/// unit test checks every class.)
pub const MAX_CHUNK_TAIL: usize = 81;

/// Requests at least this large must not round up by more than 1/8 of the block (below it, the
/// 8-byte spacing of the classes bounds the waste to 7 bytes anyway).
pub const WASTE_RULE_MIN_SIZE: usize = 64;

/// Smallest general block size; smaller requests are rounded up to it (user pools can serve
/// smaller blocks exactly).
pub const MIN_CLASS_SIZE: usize = CLASS_SIZES[0];

/// Largest general block size: one block per chunk. Anything larger is a large request.
pub const MAX_CLASS_SIZE: usize = CLASS_SIZES[NUM_CLASSES - 1];

/// Where a layout is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeClass {
    /// By the general class of this index (into [`CLASS_SIZES`]).
    Small(usize),
    /// By the large allocator.
    Large,
}

/// `LOOKUP[(size + 7) / 8]` is the index of the smallest class `>= size`, for `size` in
/// `1..=MAX_CLASS_SIZE`.
const LOOKUP: [u8; MAX_CLASS_SIZE / 8 + 1] = {
    let mut table = [0u8; MAX_CLASS_SIZE / 8 + 1];
    let mut slot = 0;
    let mut class = 0;
    while slot < table.len() {
        while CLASS_SIZES[class] < slot * 8 {
            class += 1;
        }
        table[slot] = class as u8;
        slot += 1;
    }
    table
};

/// The smallest class `>= size` that is a multiple of `align` (a power of two up to a page), by
/// search; only used to build the tables at compile time.
const fn search(size: usize, align: usize) -> usize {
    let mut index = LOOKUP[size.div_ceil(8)] as usize;
    // Terminates: the last class (4096) is a multiple of every alignment up to a page.
    while !CLASS_SIZES[index].is_multiple_of(align) {
        index += 1;
    }
    index
}

/// Whether the waste rule sends a `size`-byte request aligned to `align` away from `class`.
const fn too_wasteful(size: usize, align: usize, class: usize) -> bool {
    size >= WASTE_RULE_MIN_SIZE && align <= size && class - size > class / 8
}

/// The hot path of [`class_for`]: alignment up to 8 (every class honours it). Entry `b` covers
/// the eight sizes `8b - 7 ..= 8b` (the sizes with `(size + 7) / 8 == b`); its low byte is the
/// class of the bucket and its high byte the position `d` (0..=8) of the first size of the bucket
/// the waste rule lets in: a size with `(size + 7) % 8 >= d` is served by the class, a smaller
/// one (`d` = 8: every size of the bucket) goes to the large allocator. The rule is monotonic in
/// the size within a bucket (same class, less waste as the size grows), so one threshold per
/// bucket is exact. 1 KiB.
const SMALL_ALIGN: [u16; MAX_CLASS_SIZE / 8 + 1] = {
    let mut table = [0u16; MAX_CLASS_SIZE / 8 + 1];
    let mut b = 0;
    while b < table.len() {
        let class = LOOKUP[b] as usize;
        let mut d = 0;
        // Sizes of the bucket in increasing order: 8b - 7 + d (size 0 for bucket 0 counts as 1).
        while d < 8 {
            let size = if 8 * b + d < 7 { 1 } else { 8 * b + d - 7 };
            if !too_wasteful(size, 8, CLASS_SIZES[class]) {
                break;
            }
            d += 1;
        }
        table[b] = (class as u16) | ((d as u16) << 8);
        b += 1;
    }
    table
};

/// Alignments from 16 to a page, like [`SMALL_ALIGN`]: entry `LARGE_ALIGN[b][log2(align) - 4]`
/// covers the sixteen sizes `16b - 15 ..= 16b` (the sizes with `(size + 15) / 16 == b`); its low
/// byte is the smallest class at least `16b` that is a multiple of `align` (such a class is a
/// multiple of 16, so it is the same for the whole bucket), its high byte the position `d`
/// (0..=16) of the first size of the bucket the waste rule lets in: a size with
/// `(size + 15) % 16 >= d` is served by the class, a smaller one goes to the large allocator.
/// Within a bucket the rule only ever turns a size away below a threshold: it applies from 64
/// bytes and from the alignment on, which a bucket reaches at its last size (a multiple of 16),
/// where the class is exactly that size; and beyond that the waste falls as the size grows.
/// Laid out bucket-major, 16 alignments per bucket, so that a lookup's index is the bucket's
/// bytes `(size + 15) & !15` with the alignment's column in its low bits (no multiply); columns 9
/// to 15 (alignments above a page) are never read: they only let a lookup mask its column
/// instead of checking it. 8.2 KiB.
const LARGE_ALIGN: [[u16; 16]; MAX_CLASS_SIZE / 16 + 1] = {
    let mut table = [[0u16; 16]; MAX_CLASS_SIZE / 16 + 1];
    let mut a = 0;
    while a < 9 {
        let align = 16 << a;
        let mut b = 0;
        while b < MAX_CLASS_SIZE / 16 + 1 {
            let class = search(if b == 0 { 1 } else { 16 * b }, align);
            let mut d = 0;
            // Sizes of the bucket in increasing order: 16b - 15 + d (size 0 for bucket 0 counts
            // as 1).
            while d < 16 {
                let size = if 16 * b + d < 15 { 1 } else { 16 * b + d - 15 };
                if !too_wasteful(size, align, CLASS_SIZES[class]) {
                    break;
                }
                d += 1;
            }
            table[b][a] = (class as u16) | ((d as u16) << 8);
            b += 1;
        }
        a += 1;
    }
    table
};

/// Maps a layout to the general class that serves it, or to [`SizeClass::Large`].
///
/// The rule: the smallest class `c` with `c >= size` and `c % align == 0`; and when
/// `size >= 64`, `c - size <= c / 8`, unless `align > size` (then the alignment, not the size,
/// forces the waste and the aligned class is still the cheapest place for the block). Layouts
/// larger than [`MAX_CLASS_SIZE`] or aligned beyond a page are large. A zero size counts as 1.
///
/// No loop and no division: for alignments up to 8 (nearly every request) one load from a 1 KiB
/// table answers, waste rule included; larger alignments take one load from a second table, which
/// folds the waste rule in the same way (see [`small_class`]).
#[inline]
pub const fn class_for(layout: Layout) -> SizeClass {
    match small_class(layout) {
        Some(index) => SizeClass::Small(index),
        None => SizeClass::Large,
    }
}

/// The common case of [`class_for`]: the class of a layout aligned to at most 8 bytes that a
/// class serves, or `None` when `class_for` has to decide (a larger alignment, or a large
/// request). Two compares and one load; [`small_class`] answers every alignment as cheaply for
/// these layouts.
#[inline(always)]
pub const fn common_class(layout: Layout) -> Option<usize> {
    if layout.align() > 8 {
        return None;
    }
    small_class(layout)
}

/// The class of `layout`, if a class serves it: [`class_for`] as an `Option`, for the heap's
/// fast paths. Alignments up to 8 cost a size compare, an alignment compare and one load from
/// the 1 KiB table; a larger one (up to a page) one more compare and a load from the aligned
/// table, with no call, no bounds check and no test repeated, so that an aligned class
/// block is allocated and freed at the magazine nearly like any other (measured in
/// `kernel/heap/bench/results/ANALYSIS.md`, "Aligned requests and frees (h12)" and "Inlined
/// large paths, one aligned lookup").
#[inline(always)]
pub const fn small_class(layout: Layout) -> Option<usize> {
    let size = layout.size();
    let align = layout.align();
    if size > MAX_CLASS_SIZE {
        return None;
    }
    if align <= 8 {
        let entry = SMALL_ALIGN[(size + 7) >> 3];
        return if ((size + 7) & 7) as u16 >= entry >> 8 {
            Some((entry & 0xFF) as usize)
        } else {
            None
        };
    }
    if align > PAGE_SIZE {
        return None;
    }
    // 16 ..= 4096: columns 0 ..= 8 (the mask only spares the bounds check).
    let entry = LARGE_ALIGN[(size + 15) >> 4][(align.trailing_zeros() as usize - 4) & 15];
    if ((size + 15) & 15) as u16 >= entry >> 8 {
        Some((entry & 0xFF) as usize)
    } else {
        None
    }
}

/// Block alignment of a block of `size` bytes at offset `k * size` of a page-aligned chunk: the
/// largest power of two dividing `size`, capped at a page.
pub const fn block_align(size: usize) -> usize {
    let natural = 1usize << size.trailing_zeros();
    if natural > PAGE_SIZE {
        PAGE_SIZE
    } else {
        natural
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule, spelled out as a search over the table, to compare the fast path against.
    fn reference(size: usize, align: usize) -> SizeClass {
        let size = size.max(1);
        if size > MAX_CLASS_SIZE || align > PAGE_SIZE {
            return SizeClass::Large;
        }
        for (i, &c) in CLASS_SIZES.iter().enumerate() {
            if c >= size && c % align == 0 {
                let ok = size < WASTE_RULE_MIN_SIZE || align > size || c - size <= c / 8;
                return if ok {
                    SizeClass::Small(i)
                } else {
                    SizeClass::Large
                };
            }
        }
        SizeClass::Large
    }

    #[test]
    fn table_is_sorted_and_every_class_leaves_a_small_tail() {
        assert_eq!(CLASS_SIZES.len(), NUM_CLASSES);
        for w in CLASS_SIZES.windows(2) {
            assert!(w[0] < w[1]);
        }
        for &c in &CLASS_SIZES {
            assert_eq!(c % 8, 0, "class {c} must keep 8-byte alignment");
            let tail = PAGE_SIZE % c;
            assert!(tail <= MAX_CHUNK_TAIL, "class {c} leaves {tail} bytes");
            assert!(tail * 50 <= PAGE_SIZE, "class {c} wastes more than 2%");
        }
    }

    /// Every size natively; a sample under Miri (slow).
    const SIZE_STEP: usize = if cfg!(miri) { 41 } else { 1 };

    #[test]
    fn every_size_and_alignment_matches_the_rule() {
        let mut align = 1;
        while align <= 2 * PAGE_SIZE {
            for size in (0..=MAX_CLASS_SIZE + 16).step_by(SIZE_STEP) {
                let layout = Layout::from_size_align(size, align).unwrap();
                assert_eq!(class_for(layout), reference(size, align), "{size} {align}");
                let small = match reference(size, align) {
                    SizeClass::Small(i) => Some(i),
                    SizeClass::Large => None,
                };
                assert_eq!(small_class(layout), small, "{size} {align}");
                let common = if align <= 8 { small } else { None };
                assert_eq!(common_class(layout), common, "{size} {align}");
            }
            align *= 2;
        }
    }

    #[test]
    fn sizes_from_64_map_within_an_eighth_or_go_large() {
        let mut align = 1;
        while align <= PAGE_SIZE {
            for size in (64..=MAX_CLASS_SIZE).step_by(SIZE_STEP) {
                let layout = Layout::from_size_align(size, align).unwrap();
                match class_for(layout) {
                    SizeClass::Small(i) => {
                        let c = CLASS_SIZES[i];
                        assert!(c >= size && c.is_multiple_of(align));
                        assert!(block_align(c) >= align);
                        if align <= size {
                            assert!((c - size) * 8 <= c, "{size}/{align} -> {c}");
                        }
                    }
                    SizeClass::Large => {
                        // Large only if no aligned class is within 1/8.
                        assert!(align <= size);
                        assert!(
                            CLASS_SIZES
                                .iter()
                                .all(|&c| c < size || c % align != 0 || (c - size) * 8 > c)
                        );
                    }
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn examples() {
        let l = |s, a| class_for(Layout::from_size_align(s, a).unwrap());
        let small = |c: usize| SizeClass::Small(CLASS_SIZES.iter().position(|&x| x == c).unwrap());
        assert_eq!(l(0, 1), small(8));
        assert_eq!(l(1, 1), small(8));
        assert_eq!(l(9, 8), small(16));
        assert_eq!(l(24, 16), small(32));
        assert_eq!(l(145, 8), SizeClass::Large);
        assert_eq!(l(146, 8), SizeClass::Large);
        assert_eq!(l(147, 8), small(168));
        assert_eq!(l(168, 8), small(168));
        assert_eq!(l(8, 4096), small(4096));
        assert_eq!(l(100, 128), small(128));
        assert_eq!(l(100, 64), SizeClass::Large);
        assert_eq!(l(4096, 4096), small(4096));
        assert_eq!(l(4097, 1), SizeClass::Large);
        assert_eq!(l(8, 8192), SizeClass::Large);
    }

    #[test]
    fn block_alignment() {
        assert_eq!(block_align(8), 8);
        assert_eq!(block_align(24), 8);
        assert_eq!(block_align(48), 16);
        assert_eq!(block_align(4096), 4096);
        assert_eq!(block_align(3), 1);
    }
}
