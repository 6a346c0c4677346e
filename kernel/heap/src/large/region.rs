//! Regions: runs of pages from the page source, tiled by blocks, that grow in place.
//!
//! ```text
//! region + 0        Mapping node (index links, length, kind, data = 0)  REGION_HEADER = 48 bytes
//! region + 48       block 0 | block 1 | ... | block n-1                 they tile the region
//! region + len - 16 end sentinel: a header of size 0, state END
//! ```
//!
//! An allocation takes a binned block; when none fits, it grows the region mapped last by the
//! pages right after it ([`PageSource::grow_pages`]), at least [`REGION_MIN`] at a time, up to
//! [`REGION_FULL`], and only when that fails maps a new region of `max(REGION_MIN, need)`. So one
//! call maps at most what its own request needs or four pages, never a whole 64 KiB region for a
//! 200-byte block. The allocation then aligns the payload and splits off the leading gap and the
//! tail when they can stand as blocks; a free merges the block with free neighbours and bins the
//! result, and keeps a region that becomes wholly free idle (beyond the idle limit on the excess
//! list, which quiet allocations unmap; only with that list full does it go back at once).

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::bins::BIN_LIMIT;
use super::block::{Block, END, FREE, GRANULE, HEADER, MIN_BLOCK, USED, block_size_for};
use super::index::{Index, KIND_REGION, Mapping};
use super::{LargeAlloc, PAGE_RUN_THRESHOLD};
use crate::error::AllocError;
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

/// Smallest region, and the least a region grows by: four pages serve a few blocks of the sizes
/// that come here (from ~145 bytes to a few KiB typically) per page-source call, while one call
/// maps no more than four pages for a small request (the latency of the call that maps them).
pub(super) const REGION_MIN: usize = 4 * PAGE_SIZE;
/// Regions grow in place up to this length (16 pages); a larger need maps a region of its own.
pub(super) const REGION_FULL: usize = 64 * 1024;
/// Bytes of wholly free regions kept mapped rather than unmapped when their last block is
/// freed (several small regions or eight full ones): with regions of four pages, unmapping each
/// one that empties made one free in a few hundred pay for an unmap in the kernel mix; with
/// 256 KiB, the mix's 16–64 KiB blocks (a region each) still unmapped 53 regions in the kernel's
/// latency replay and mapped 98 anew, the largest share of its slowest allocations. 512 KiB
/// leaves 11 and 47 (`cargo kbench`'s `attribution` section).
pub(super) const IDLE_LIMIT: usize = 8 * REGION_FULL;
/// Wholly free regions kept beyond [`IDLE_LIMIT`] (the *excess* list), each unmapped by a
/// later allocation that maps nothing, so that no free unmaps a region: in the kernel an unmap
/// made the longest frees (the attribution run of `cargo kbench`). Eight regions of at most
/// [`MAX_REGION`] bound what waits to 544 KiB; a free that finds the list full unmaps its
/// region at once.
pub(super) const EXCESS_REGIONS: usize = 8;
/// Bytes of a region that no block covers: its header and its end sentinel.
pub(super) const REGION_OVERHEAD: usize = REGION_HEADER + HEADER;
/// Bytes at the start of a region taken by its index node, rounded up to the granule.
pub(super) const REGION_HEADER: usize = size_of::<Mapping>().next_multiple_of(GRANULE);
/// The largest free block a region request can need: below the threshold, `size + align`
/// (`size` alone for `align <= 16`) is at most `PAGE_RUN_THRESHOLD - 1`, and the search asks for
/// `round_up(size + HEADER, 16) + align + 16` bytes.
const MAX_REGION_NEED: usize = PAGE_RUN_THRESHOLD + 2 * GRANULE;
/// The largest region ever mapped.
pub(super) const MAX_REGION: usize = region_len_for(MAX_REGION_NEED);

// The whole free space of the largest region must fit the bins.
const _: () = assert!(MAX_REGION - REGION_HEADER - HEADER < BIN_LIMIT);
// Regions are whole pages, and pages keep headers granule-aligned.
const _: () = assert!(REGION_MIN.is_multiple_of(PAGE_SIZE) && PAGE_SIZE.is_multiple_of(GRANULE));
const _: () = assert!(REGION_FULL.is_multiple_of(PAGE_SIZE) && REGION_FULL <= MAX_REGION);

/// Bytes of the region for a free block of `need` bytes: header, block and sentinel in whole
/// pages, at least [`REGION_MIN`].
const fn region_len_for(need: usize) -> usize {
    let len = (REGION_HEADER + need + HEADER).next_multiple_of(PAGE_SIZE);
    if len < REGION_MIN { REGION_MIN } else { len }
}

impl LargeAlloc {
    /// The region path of [`allocate`](Self::allocate).
    #[inline(always)]
    pub(super) fn allocate_block<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        // The footprint is below the threshold, so none of this overflows (MAX_REGION_NEED).
        let block_size = block_size_for(layout.size()).ok_or(AllocError::TooLarge { layout })?;
        let need = if align > GRANULE {
            block_size + align + GRANULE
        } else {
            block_size
        };
        let block = match self.bins.find(need) {
            Some(block) => {
                // SAFETY: `find_free` returned a block that is in a bin.
                unsafe { self.bins.remove(block) };
                // SAFETY: the block is free, in no bin, and its headers are valid.
                unsafe { self.take_idle(block) };
                block
            }
            None => match self.grow_region(src, need) {
                Some(block) => block,
                None => self
                    .map_region(src, need)
                    .map_err(|cause| AllocError::OutOfPages { layout, cause })?,
            },
        };
        // SAFETY: `block` is a free block of at least `need` bytes that is in no bin.
        Ok(unsafe { self.carve(block, block_size, align) })
    }

    /// Maps a region with one free block of at least `need` bytes and returns that block (not
    /// binned). On failure nothing changes.
    fn map_region<S: PageSource>(
        &mut self,
        src: &mut S,
        need: usize,
    ) -> Result<Block, PageSourceError> {
        let len = region_len_for(need);
        let base = src.map_pages(len / PAGE_SIZE)?.as_ptr();
        let node = base.cast::<Mapping>();
        let first = Block(base.wrapping_add(REGION_HEADER));
        let sentinel = Block(base.wrapping_add(len - HEADER));
        let size = len - REGION_HEADER - HEADER;
        // SAFETY: the source just mapped `len` bytes at `base` for us alone (PageSource
        // contract); the node, the first header and the sentinel lie inside, suitably aligned.
        unsafe {
            node.write(Mapping {
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                parent: ptr::null_mut(),
                len,
                kind: KIND_REGION,
                data: 0,
            });
            self.index.insert(node);
            first.set_prev_size(0);
            first.set(size, FREE);
            sentinel.set_prev_size(size);
            sentinel.set(0, END);
        }
        self.regions += 1;
        self.region_bytes += len;
        self.growing = node;
        Ok(first)
    }

    /// Grows the region mapped last ([`growing`](Self::growing)) in place so that its last block
    /// is free and at least `need` bytes long, and returns that block (not binned); `None` if
    /// there is no such region, it would pass [`REGION_FULL`], or the source cannot map the
    /// pages after it (then no region is grown again until the next is mapped). The growth is
    /// the pages the block lacks, at least [`REGION_MIN`] while the region has room for it.
    fn grow_region<S: PageSource>(&mut self, src: &mut S, need: usize) -> Option<Block> {
        let region = self.growing;
        if region.is_null() {
            return None;
        }
        // SAFETY: `growing` is an indexed region (it is cleared when its region is unmapped);
        // its sentinel and last block are valid headers inside it.
        unsafe {
            let len = (*region).len;
            let base = region.cast::<u8>();
            let sentinel = Block(base.wrapping_add(len - HEADER));
            let last = sentinel.prev().filter(|b| b.state() == FREE);
            let have = last.map_or(0, |b| b.size());
            // The good-fit search may have passed over a last block that is large enough.
            if have >= need {
                let block = last?;
                self.bins.remove(block);
                self.take_idle(block);
                return Some(block);
            }
            let lacking = (need - have).next_multiple_of(PAGE_SIZE);
            let room = REGION_FULL.saturating_sub(len);
            if lacking > room {
                return None;
            }
            let extra = lacking.max(REGION_MIN).min(room);
            let start = NonNull::new_unchecked(base);
            if !src.grow_pages(start, len / PAGE_SIZE, extra / PAGE_SIZE) {
                self.growing = ptr::null_mut();
                return None;
            }
            // The new pages extend the last block if it is free, or follow the old sentinel's
            // place as a block of their own (its `prev_size` already names the block before).
            let block = match last {
                Some(block) => {
                    self.bins.remove(block);
                    self.take_idle(block);
                    block
                }
                None => sentinel,
            };
            let size = have + extra;
            block.set(size, FREE);
            let end = Block(base.wrapping_add(len + extra - HEADER));
            end.set_prev_size(size);
            end.set(0, END);
            (*region).len = len + extra;
            self.region_bytes += extra;
            Some(block)
        }
    }

    /// Does `block` lie in the growing region?
    fn is_growing(&self, block: Block) -> bool {
        let region = self.growing;
        // SAFETY: `growing`, when not null, is an indexed region, whose node is readable.
        !region.is_null() && block.addr().wrapping_sub(region.addr()) < unsafe { (*region).len }
    }

    /// Accounts for taking the free `block`: if it is the only block of its region, that region
    /// was an idle one and is not any more.
    ///
    /// # Safety
    ///
    /// `block` is a free block of a region of ours, with valid headers, taken out of its bin.
    #[inline(always)]
    unsafe fn take_idle(&mut self, block: Block) {
        // SAFETY: the caller's promise; a block starting its region has `prev_size` 0, and the
        // region's node lies `REGION_HEADER` bytes before it.
        unsafe {
            if block.prev_size() == 0 && block.next().state() == END {
                let region = block.back(REGION_HEADER).0.cast::<Mapping>();
                self.idle_bytes -= (*region).len;
                if self.excess_len != 0 {
                    self.forget_excess(region);
                }
            }
        }
    }

    /// Takes `region`, which stops being idle, off the excess list if it is there.
    #[cold]
    #[inline(never)]
    fn forget_excess(&mut self, region: *mut Mapping) {
        let listed = &self.excess[..self.excess_len];
        if let Some(i) = listed.iter().position(|&r| r == region) {
            self.excess_len -= 1;
            self.excess[i] = self.excess[self.excess_len];
        }
    }

    /// Unmaps the excess region listed last, if any: the quiet work of an allocation that
    /// mapped nothing (see [`has_excess`](Self::has_excess)).
    #[cold]
    #[inline(never)]
    pub fn release_excess<S: PageSource>(&mut self, src: &mut S) {
        let Some(n) = self.excess_len.checked_sub(1) else {
            return;
        };
        self.excess_len = n;
        let region = self.excess[n];
        // SAFETY: a listed region is indexed and wholly free, its one block binned (the list's
        // invariant: `take_idle` drops a region that stops being idle, `release_cached` empties
        // the list); once out of its bin nothing refers to the region but its index entry.
        unsafe {
            let first = Block(region.cast::<u8>().wrapping_add(REGION_HEADER));
            self.bins.remove(first);
            self.idle_bytes -= (*region).len;
            self.unmap_region(src, region);
        }
    }

    /// Turns the free, unbinned `block` into a used block of `block_size` bytes whose payload is
    /// aligned to `align`, binning the leading gap and the tail when they can stand as blocks.
    ///
    /// # Safety
    ///
    /// `block` is a free block of a region of ours, in no bin, whose neighbours are not free, of
    /// at least `block_size` bytes (`block_size + align + 16` if `align > 16`).
    #[inline(always)]
    unsafe fn carve(&mut self, block: Block, block_size: usize, align: usize) -> NonNull<u8> {
        // SAFETY: every header touched lies within `block` or is its successor, all in the region
        // (caller's guarantee on the size); the gap and tail pieces are at least MIN_BLOCK bytes.
        unsafe {
            let mut start = block;
            let mut size = block.size();
            if align > GRANULE {
                let payload = (block.addr() + HEADER).next_multiple_of(align);
                let mut gap = payload - HEADER - block.addr();
                if gap != 0 && gap < MIN_BLOCK {
                    gap += align;
                }
                if gap != 0 {
                    // The leading gap stays a free block; its predecessor is not free.
                    block.reset(gap, FREE);
                    self.bins.insert(block);
                    start = block.forward(gap);
                    start.set_prev_size(gap);
                    size -= gap;
                }
            }
            debug_assert!(size >= block_size);
            if size - block_size >= MIN_BLOCK {
                start.set(block_size, USED);
                let tail = start.forward(block_size);
                tail.set_prev_size(block_size);
                tail.set(size - block_size, FREE);
                // The tail's successor was the block's successor, which is not free.
                tail.next().set_prev_size(size - block_size);
                self.bins.insert(tail);
            } else {
                start.set(size, USED);
                start.next().set_prev_size(size);
            }
            self.live_blocks += 1;
            start.user()
        }
    }

    /// Marks `block` free, merges it with free neighbours and bins the result, or, if that
    /// empties the region, keeps the region idle (under the idle limit, or on the excess list)
    /// or, with the excess list full, returns it for the caller to unmap
    /// ([`unmap_region`](Self::unmap_region)). It takes no page source, so the heap's free path
    /// holds no reference to one (and keeps nothing across a call) unless a region goes.
    ///
    /// # Safety
    ///
    /// `block` is a block of a region of ours that is not free and not binned, with valid size
    /// and `prev_size`, and nobody uses its memory any more.
    #[inline(always)]
    pub(super) unsafe fn free_and_coalesce(&mut self, block: Block) -> Option<*mut Mapping> {
        // SAFETY: `block` and its neighbours are headers in the same region (the boundary tags
        // are valid); binned neighbours leave their bins before they are merged.
        unsafe {
            // Each size is read once, before the bins' writes (which the compiler cannot tell
            // apart from the headers). The neighbours' bytes stay counted as free; the freed
            // block's are added once, below.
            let block_size = block.size();
            let mut start = block;
            let mut size = block_size;
            if let Some(prev) = block.prev()
                && prev.state() == FREE
            {
                // With `debug-checks`, this header stays in memory when merged away: a second
                // free of `block` sees FREE. (Unmerged, `block` starts the result and is marked
                // FREE below.) Nothing else reads a header inside a free block.
                if crate::debug::ENABLED {
                    block.reset(block_size, FREE);
                }
                let prev_size = prev.size();
                self.bins.unlink(prev, prev_size);
                size += prev_size;
                start = prev;
            }
            let next = block.forward(block_size);
            if next.state() == FREE {
                let next_size = next.size();
                self.bins.unlink(next, next_size);
                size += next_size;
            }
            self.bins.count_freed(block_size);
            start.reset(size, FREE);
            let after = start.next();
            after.set_prev_size(size);
            if start.prev_size() == 0 && after.state() == END {
                let region = start.back(REGION_HEADER).0.cast::<Mapping>();
                let len = (*region).len;
                if len <= REGION_FULL && self.idle_bytes + len <= IDLE_LIMIT {
                    self.idle_bytes += len;
                    self.bins.link(start, size);
                    return None;
                }
                return self.keep_excess(region, start, size);
            }
            self.bins.link(start, size);
            None
        }
    }

    /// Keeps the wholly free `region` (its one block `block` of `size` bytes, unbinned but
    /// counted as free) idle beyond the limit, on the excess list for a later allocation to
    /// unmap; with the list full, returns it for the caller to unmap now (its bytes no longer
    /// counted as free).
    ///
    /// # Safety
    ///
    /// `region` is a region of ours that is wholly free, not idle, and its block `block` of
    /// `size` bytes is in no bin.
    #[inline(never)]
    unsafe fn keep_excess(
        &mut self,
        region: *mut Mapping,
        block: Block,
        size: usize,
    ) -> Option<*mut Mapping> {
        if self.excess_len >= EXCESS_REGIONS {
            self.bins.count_taken(size);
            return Some(region);
        }
        // SAFETY: guaranteed by the caller.
        unsafe {
            self.excess[self.excess_len] = region;
            self.excess_len += 1;
            self.idle_bytes += (*region).len;
            self.bins.link(block, size);
        }
        None
    }

    /// Removes `region` from the index and gives its pages back to `src`.
    ///
    /// # Safety
    ///
    /// `region` is a region of ours that is wholly free, with its block in no bin.
    pub(super) unsafe fn unmap_region<S: PageSource>(&mut self, src: &mut S, region: *mut Mapping) {
        // SAFETY: the region is ours and indexed; once out of the index, with no binned block,
        // nothing refers to it, so its pages can go back to the source that mapped them.
        unsafe {
            let len = (*region).len;
            if self.growing == region {
                self.growing = ptr::null_mut();
            }
            self.index.remove(region);
            self.regions -= 1;
            self.region_bytes -= len;
            src.unmap_pages(NonNull::new_unchecked(region.cast::<u8>()), len / PAGE_SIZE);
        }
    }

    /// Frees the region block `block` (the region path of [`deallocate`](Self::deallocate));
    /// returns a region that emptied and must be unmapped (see `free_and_coalesce`).
    ///
    /// # Safety
    ///
    /// `block` is the header of a live region block of ours that nobody uses any more.
    #[inline(always)]
    pub(super) unsafe fn free_block(&mut self, block: Block) -> Option<*mut Mapping> {
        self.live_blocks -= 1;
        // SAFETY: guaranteed by the caller.
        unsafe { self.free_and_coalesce(block) }
    }

    /// Resizes the region block `block` in place to hold `new_size` bytes (the region path of
    /// [`resize_in_place`](Self::resize_in_place)): a shrink splits off the tail when it can
    /// stand as a block; a growth absorbs a free successor, and the last block of the growing
    /// region also the pages the region grows by; otherwise it fails.
    ///
    /// # Safety
    ///
    /// `block` is the header of a live region block of ours.
    pub(super) unsafe fn resize_block<S: PageSource>(
        &mut self,
        src: &mut S,
        block: Block,
        new_size: usize,
    ) -> bool {
        let Some(new_block) = block_size_for(new_size) else {
            return false;
        };
        // SAFETY: `block` is a live region block (caller), so it, its successor and the
        // successor's successor are valid headers in the same region, which this allocator owns.
        unsafe {
            let size = block.size();
            if new_block <= size {
                if size - new_block >= MIN_BLOCK {
                    let tail = block.forward(new_block);
                    block.reset(new_block, USED);
                    tail.set_prev_size(new_block);
                    tail.set(size - new_block, USED);
                    // The tail's predecessor is `block`, which is used, so the region does not
                    // become empty: nothing is returned to unmap.
                    let emptied = self.free_and_coalesce(tail);
                    debug_assert!(emptied.is_none());
                }
                return true;
            }
            let mut next = block.next();
            let free_after = if next.state() == FREE { next.size() } else { 0 };
            if size + free_after < new_block {
                // Only the last used block of the growing region can grow past its neighbour:
                // the region grows under it.
                let at_end = next.state() == END || (free_after > 0 && next.next().state() == END);
                if !at_end || !self.is_growing(block) {
                    return false;
                }
                let Some(grown) = self.grow_region(src, new_block - size) else {
                    return false;
                };
                // The grown last block is `block`'s free successor: bin it to absorb it below.
                self.bins.insert(grown);
                next = block.next();
            }
            let total = size + next.size();
            self.bins.remove(next);
            if total - new_block >= MIN_BLOCK {
                block.reset(new_block, USED);
                let tail = block.forward(new_block);
                tail.set_prev_size(new_block);
                tail.set(total - new_block, FREE);
                // The successor of the absorbed block is not free (it was coalesced).
                tail.next().set_prev_size(total - new_block);
                self.bins.insert(tail);
            } else {
                block.reset(total, USED);
                block.next().set_prev_size(total);
            }
            true
        }
    }

    /// Is `ptr` the user pointer of a live block of `region`? (See [`owns`](Self::owns).)
    ///
    /// # Safety
    ///
    /// `region` is the indexed node of one of our regions, and `ptr` lies inside the region.
    pub(super) unsafe fn region_owns(&self, region: *mut Mapping, ptr: NonNull<u8>) -> bool {
        let addr = ptr.addr().get();
        let base = region.addr();
        // SAFETY: the node of a live region (caller).
        let len = unsafe { (*region).len };
        let sentinel = base + len - HEADER;
        if !addr.is_multiple_of(GRANULE) || addr < base + REGION_HEADER + HEADER || addr >= sentinel
        {
            return false;
        }
        let block = Block::from_user(ptr);
        // SAFETY: `block` lies in [region + REGION_HEADER, sentinel), inside the region; the
        // neighbours are checked to lie inside it before they are read.
        unsafe {
            if block.checked_state() != Some(USED) {
                return false;
            }
            let size = block.size();
            if size < MIN_BLOCK || size > sentinel - block.addr() {
                return false;
            }
            if block.next().prev_size() != size {
                return false;
            }
            match block.prev() {
                None => block.addr() == base + REGION_HEADER,
                Some(prev) => {
                    prev.addr() >= base + REGION_HEADER
                        && prev.addr() < block.addr()
                        && prev.checked_state().is_some()
                        && prev.size() == block.addr() - prev.addr()
                }
            }
        }
    }

    /// Unmaps every idle (wholly free) region (when the heap is torn down, or to give memory
    /// back under pressure). A walk of the index, so only on these slow paths.
    pub fn release_cached<S: PageSource>(&mut self, src: &mut S) {
        let mut node = self.index.first();
        while self.idle_bytes > 0 && !node.is_null() {
            // Step on before `node` may leave the index.
            let next = Index::successor(node);
            // SAFETY: indexed nodes are valid; a region's first block and its sentinel are
            // valid headers inside it. An idle region's single block is in a bin; once out of
            // it, nothing refers to the region but its index entry, which `unmap_region` removes.
            unsafe {
                if (*node).kind == KIND_REGION {
                    let first = Block(node.cast::<u8>().wrapping_add(REGION_HEADER));
                    if first.state() == FREE && first.next().state() == END {
                        self.idle_bytes -= (*node).len;
                        self.bins.remove(first);
                        self.unmap_region(src, node);
                    }
                }
            }
            node = next;
        }
        // Every idle region is gone, the excess ones with them.
        debug_assert_eq!(self.idle_bytes, 0);
        self.excess_len = 0;
    }
}
