//! The bins: free region blocks in doubly-linked lists, one per size range, indexed two-level as
//! in TLSF.
//!
//! The first level is the power of two of the size (sizes below 128 bytes share level 0), the
//! second splits each power-of-two range into [`SL_COUNT`] linear sub-bins. A 32-bit first-level
//! bitmap and one 8-bit bitmap per level say which bins are non-empty, so the smallest non-empty
//! bin whose every block is large enough is found with two bit scans. The searched size is first
//! rounded up to the next sub-bin boundary (the "good fit" of TLSF); when that finds nothing, the
//! exact bin is also probed for a few entries ([`PROBE_LIMIT`]), which rescues requests just above
//! a sub-bin boundary before a new region is mapped.

use core::ptr;

use super::block::{Block, FREE, GRANULE_LOG};
use crate::error::InvariantError;

/// `log2` of the number of second-level bins per first-level bin: 8 sub-bins bound the rounding
/// of the good-fit search to 1/8 of a block while keeping the bin array small.
pub(super) const SL_LOG: u32 = 3;
/// Second-level bins per first-level bin.
pub(super) const SL_COUNT: usize = 1 << SL_LOG;
/// Sizes below `1 << FL_SHIFT` (128 bytes) all share first-level bin 0, whose sub-bins are then
/// exactly one granule apart.
pub(super) const FL_SHIFT: u32 = SL_LOG + GRANULE_LOG;
/// First-level bins: enough for every block a region can hold (asserted where regions are sized).
pub(super) const FL_COUNT: usize = 11;
/// Every binned block is smaller than this (128 KiB).
pub(super) const BIN_LIMIT: usize = 1 << (FL_SHIFT as usize + FL_COUNT - 1);

/// How many entries of the exact bin are probed for a fit when the good-fit search finds nothing,
/// before a new region is mapped. Small and fixed, so allocation stays O(1).
const PROBE_LIMIT: usize = 8;

/// The bin a free block of `size` bytes belongs in: `(first level, second level)`.
pub(super) const fn bin_of(size: usize) -> (usize, usize) {
    if size < (1 << FL_SHIFT) {
        (0, size >> GRANULE_LOG)
    } else {
        let log = usize::BITS - 1 - size.leading_zeros();
        let fl = (log - FL_SHIFT + 1) as usize;
        let sl = (size >> (log - SL_LOG)) - SL_COUNT;
        (fl, sl)
    }
}

/// The first bin all of whose blocks are at least `size` bytes, or `None` if there is none.
pub(super) const fn search_bin(size: usize) -> Option<(usize, usize)> {
    let rounded = if size < (1 << FL_SHIFT) {
        size
    } else {
        let log = usize::BITS - 1 - size.leading_zeros();
        match size.checked_add((1 << (log - SL_LOG)) - 1) {
            Some(n) => n,
            None => return None,
        }
    };
    let (fl, sl) = bin_of(rounded);
    if fl < FL_COUNT { Some((fl, sl)) } else { None }
}

/// The free lists of the regions' blocks, their bitmaps, and the bytes they hold.
pub(super) struct Bins {
    /// Bit `fl` set iff `sl_bitmap[fl] != 0`.
    fl_bitmap: u32,
    /// Bit `sl` of entry `fl` set iff `heads[fl][sl]` is not null.
    sl_bitmap: [u8; FL_COUNT],
    /// Heads of the free lists (block header addresses), null when empty.
    heads: [[*mut u8; SL_COUNT]; FL_COUNT],
    /// Bytes of all binned blocks (headers included).
    free_bytes: usize,
}

impl Bins {
    /// Empty bins.
    pub(super) const fn new() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [[ptr::null_mut(); SL_COUNT]; FL_COUNT],
            free_bytes: 0,
        }
    }

    /// Bytes of all binned blocks (headers included).
    pub(super) fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    /// A binned free block of at least `need` bytes, or `None`.
    #[inline(always)]
    pub(super) fn find(&self, need: usize) -> Option<Block> {
        if let Some((fl, sl)) = search_bin(need) {
            let sl_map = self.sl_bitmap[fl] & (u8::MAX << sl);
            let found = if sl_map != 0 {
                Some((fl, sl_map.trailing_zeros() as usize))
            } else {
                let fl_map = self.fl_bitmap & (u32::MAX << (fl + 1));
                (fl_map != 0).then(|| {
                    let fl = fl_map.trailing_zeros() as usize;
                    // SAFETY: the first-level bitmap marks only bins below `FL_COUNT`.
                    let map = unsafe { *self.sl_bitmap.get_unchecked(fl) };
                    (fl, map.trailing_zeros() as usize)
                })
            };
            if let Some((fl, sl)) = found {
                debug_assert!(fl < FL_COUNT && sl < SL_COUNT);
                // SAFETY: a marked bin: `fl < FL_COUNT`, and `sl` is a set bit of a `u8`.
                return Some(Block(unsafe {
                    *self.heads.get_unchecked(fl).get_unchecked(sl)
                }));
            }
        }
        // The good fit failed: a few blocks of the exact bin may still be large enough.
        let (fl, sl) = bin_of(need);
        if fl >= FL_COUNT {
            return None;
        }
        let mut cur = self.heads[fl][sl];
        for _ in 0..PROBE_LIMIT {
            if cur.is_null() {
                break;
            }
            let block = Block(cur);
            // SAFETY: bins hold only free blocks of the allocator's regions.
            unsafe {
                if block.size() >= need {
                    return Some(block);
                }
                cur = block.next_free();
            }
        }
        None
    }

    /// Puts the free block `block` at the head of the bin of its size, and counts its bytes.
    ///
    /// # Safety
    ///
    /// `block` is a free block of a region of the allocator, in no bin, with its final size
    /// written.
    #[inline]
    pub(super) unsafe fn insert(&mut self, block: Block) {
        // SAFETY: forwarded; the size is the block's own.
        unsafe {
            let size = block.size();
            self.link(block, size);
            self.free_bytes += size;
        }
    }

    /// Takes the free block `block` out of its bin, and its bytes out of the count.
    ///
    /// # Safety
    ///
    /// `block` is in the bin of its (unchanged) size.
    #[inline]
    pub(super) unsafe fn remove(&mut self, block: Block) {
        // SAFETY: forwarded; the size is the block's own.
        unsafe {
            let size = block.size();
            self.unlink(block, size);
            self.free_bytes -= size;
        }
    }

    /// [`insert`](Self::insert) without the count: for a free that merges blocks and counts
    /// the bytes it frees once ([`count_freed`](Self::count_freed)).
    ///
    /// # Safety
    ///
    /// As for [`insert`](Self::insert), and `size` is `block.size()`.
    #[inline]
    pub(super) unsafe fn link(&mut self, block: Block, size: usize) {
        // SAFETY: `block` and the current head (if any) are free blocks of our regions.
        // SAFETY (the unchecked indices): a region block is smaller than `BIN_LIMIT` (asserted
        // where regions are sized), so its bin exists: `fl < FL_COUNT`, and `sl < SL_COUNT`
        // always.
        unsafe {
            debug_assert_eq!(size, block.size());
            let (fl, sl) = bin_of(size);
            debug_assert!(fl < FL_COUNT && sl < SL_COUNT);
            let slot = self.heads.get_unchecked_mut(fl).get_unchecked_mut(sl);
            let head = *slot;
            *slot = block.0;
            block.set_next_free(head);
            block.set_prev_free(ptr::null_mut());
            if head.is_null() {
                // The bin was empty, so it is not marked yet; a non-empty bin's bits are
                // already set (a bin is marked exactly when it has a head), which spares most
                // links the two read-modify-writes.
                *self.sl_bitmap.get_unchecked_mut(fl) |= 1 << sl;
                self.fl_bitmap |= 1 << fl;
            } else {
                Block(head).set_prev_free(block.0);
            }
        }
    }

    /// [`remove`](Self::remove) without the count, of a block whose size the caller has read
    /// already (`size`): for a free that merges the block into its neighbour, whose bytes stay
    /// free.
    ///
    /// # Safety
    ///
    /// As for [`remove`](Self::remove), and `size` is `block.size()`.
    #[inline]
    pub(super) unsafe fn unlink(&mut self, block: Block, size: usize) {
        // SAFETY: `block` and its list neighbours are binned free blocks of our regions; the
        // unchecked indices are those of the bin `block` is in (see `link`).
        unsafe {
            debug_assert_eq!(size, block.size());
            let next = block.next_free();
            let prev = block.prev_free();
            if !next.is_null() {
                Block(next).set_prev_free(prev);
            }
            if prev.is_null() {
                // Only a list head needs its bin (a block within a list is unlinked by its
                // neighbours alone).
                let (fl, sl) = bin_of(size);
                debug_assert!(fl < FL_COUNT && sl < SL_COUNT);
                *self.heads.get_unchecked_mut(fl).get_unchecked_mut(sl) = next;
                if next.is_null() {
                    let map = self.sl_bitmap.get_unchecked_mut(fl);
                    *map &= !(1 << sl);
                    if *map == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            } else {
                Block(prev).set_next_free(next);
            }
        }
    }

    /// Counts `n` bytes freed into blocks that are (or are about to be) [linked](Self::link).
    #[inline]
    pub(super) fn count_freed(&mut self, n: usize) {
        self.free_bytes += n;
    }

    /// Takes `n` counted bytes out of the count (a merged block that goes back unbinned).
    #[inline]
    pub(super) fn count_taken(&mut self, n: usize) {
        self.free_bytes -= n;
    }

    /// Size of the largest free block: the largest in the highest non-empty bin.
    pub(super) fn largest(&self) -> usize {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = (u32::BITS - 1 - self.fl_bitmap.leading_zeros()) as usize;
        let sl = (u8::BITS - 1 - self.sl_bitmap[fl].leading_zeros()) as usize;
        let mut largest = 0;
        let mut cur = self.heads[fl][sl];
        while !cur.is_null() {
            let block = Block(cur);
            // SAFETY: bins hold only free blocks of our regions.
            unsafe {
                largest = largest.max(block.size());
                cur = block.next_free();
            }
        }
        largest
    }

    /// Checks every bin for the invariant checker: each listed block is a free block of the
    /// bin's size that `in_region` accepts (it lies in a region's block area: checked before its
    /// header is read), the lists are consistently doubly linked and hold at most `max_blocks`
    /// blocks in all, and the bitmaps mark exactly the non-empty bins. Returns the number of
    /// binned blocks; errors about the bins themselves name `addr`.
    pub(super) fn check(
        &self,
        addr: usize,
        max_blocks: usize,
        in_region: impl Fn(Block) -> bool,
    ) -> Result<usize, InvariantError> {
        let mut binned = 0usize;
        for fl in 0..FL_COUNT {
            for sl in 0..SL_COUNT {
                let head = self.heads[fl][sl];
                let bit = self.sl_bitmap[fl] & (1 << sl) != 0;
                if bit == head.is_null() {
                    return Err(InvariantError::BinCorrupt { addr });
                }
                let mut prev = ptr::null_mut::<u8>();
                let mut cur = head;
                while !cur.is_null() {
                    binned += 1;
                    if binned > max_blocks {
                        return Err(InvariantError::ListCorrupt { addr: cur.addr() });
                    }
                    let block = Block(cur);
                    if !in_region(block) {
                        return Err(InvariantError::ListCorrupt { addr: block.addr() });
                    }
                    // SAFETY: `in_region` checked that the block's header and links lie inside
                    // the block area of one of our regions.
                    unsafe {
                        if block.checked_state() != Some(FREE) || bin_of(block.size()) != (fl, sl) {
                            return Err(InvariantError::BinCorrupt { addr: block.addr() });
                        }
                        if block.prev_free() != prev {
                            return Err(InvariantError::ListCorrupt { addr: block.addr() });
                        }
                        prev = cur;
                        cur = block.next_free();
                    }
                }
            }
            let fl_bit = self.fl_bitmap & (1 << fl) != 0;
            if fl_bit != (self.sl_bitmap[fl] != 0) {
                return Err(InvariantError::BinCorrupt { addr });
            }
        }
        if self.fl_bitmap >> FL_COUNT != 0 {
            return Err(InvariantError::BinCorrupt { addr });
        }
        Ok(binned)
    }

    /// Is the free block `block` (of `size` bytes) in the bin of its size?
    ///
    /// # Safety
    ///
    /// The bins passed [`check`](Self::check) and have not changed since (so every list entry
    /// is a free block of a region and every list ends).
    pub(super) unsafe fn contains(&self, block: Block, size: usize) -> bool {
        let (fl, sl) = bin_of(size);
        if fl >= FL_COUNT {
            return false;
        }
        let mut cur = self.heads[fl][sl];
        while !cur.is_null() {
            if cur == block.0 {
                return true;
            }
            // SAFETY: a checked bin entry is a free block of one of our regions (caller).
            cur = unsafe { Block(cur).next_free() };
        }
        false
    }

    /// Free blocks in the bins (walks the lists).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let mut n = 0;
        for &head in self.heads.iter().flatten() {
            let mut cur = head;
            while !cur.is_null() {
                n += 1;
                // SAFETY: bins hold free blocks of live regions.
                cur = unsafe { Block(cur).next_free() };
            }
        }
        n
    }
}
