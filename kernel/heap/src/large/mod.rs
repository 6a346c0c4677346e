//! The large allocator: a coalescing, two-level segregated-fit allocator over *regions*, plus
//! *page runs* for very large requests.
//!
//! Every request the size classes do not serve lands here: sizes from just above the largest
//! class up to gigabytes, with any power-of-two alignment. A request takes one of two paths,
//! chosen by its *footprint*, `size + (align > 16 ? align : 0)` (the most a region would have to
//! set aside for it):
//!
//! * footprint below [`PAGE_RUN_THRESHOLD`] (64 KiB): a **block** carved from a region;
//! * otherwise: a **page run** of its own, mapped for it and unmapped when it is freed.
//!
//! # Regions and blocks
//!
//! A region is one run of pages from the [`PageSource`], mapped `max(16 KiB, need)` bytes long
//! (`need` being the request's worst-case block plus the region's own header and end sentinel,
//! rounded up to whole pages; at most 68 KiB given the threshold). When no free block fits a
//! request, the region mapped last grows in place by the pages right after it
//! ([`PageSource::grow_pages`], at least 16 KiB at a time) up to 64 KiB; only when it cannot is a
//! new region mapped. So a call maps four pages or what its own request needs, never a whole
//! 64 KiB region for a small block. A region is tiled by blocks, each starting with a
//! 16-byte header that doubles as the boundary tag of its predecessor:
//!
//! ```text
//! region + 0        Mapping node (index links, length, kind, data = 0)  REGION_HEADER = 48 bytes
//! region + 48       block 0 | block 1 | ... | block n-1                 they tile the region
//! region + len - 16 end sentinel: a header of size 0, state END
//!
//! block + 0   prev_size   usize  size of the physically preceding block; 0 = first in region
//! block + 8   size_state  usize  bits 0..4 state (USED, FREE, END or RUN, exactly one bit),
//!                                bits 4..48 block size in bytes (header included, multiple of 16),
//!                                bits 48..64 a check tag derived from the block's address
//! block + 16  payload: the user pointer of a USED block (16-aligned)
//!             a FREE block keeps its free-list links here:
//! block + 16  next_free   *mut u8  next block in the same bin, or null
//! block + 24  prev_free   *mut u8  previous block in the same bin; null = bin head
//! ```
//!
//! Since `prev_size` is kept up to date for every block (free or used), both neighbours of a block
//! are found in O(1): `block - prev_size` and `block + size`. Freeing marks the block FREE, merges
//! it with a FREE predecessor and/or successor, and bins the result, so no two adjacent blocks are
//! ever both free. The smallest block is 32 bytes (header and two links).
//!
//! # Bins (TLSF)
//!
//! Free blocks sit in doubly-linked lists, one per *bin*, indexed two-level as in TLSF: the first
//! level is the power of two of the size (sizes below 128 bytes share level 0), the second splits
//! each power-of-two range into 8 linear sub-bins. A 32-bit first-level bitmap and one 8-bit
//! bitmap per level say which bins are non-empty, so the smallest non-empty bin whose every block
//! is large enough is found with two bit scans. The searched size is first rounded up to the next
//! sub-bin boundary (the "good fit" of TLSF); before a new region is mapped the exact bin is also
//! probed for a few entries (`PROBE_LIMIT`), which rescues requests just above a sub-bin boundary.
//! An allocation splits the tail off its block when the rest can stand as a block of its own.
//!
//! An alignment above 16 is honoured by searching for `size + align + 16` bytes, placing the block
//! so that its payload is aligned, and returning the leading gap to the bins as a free block. A gap
//! of exactly 16 bytes cannot be a block, so the block then moves up by one more alignment step.
//!
//! # Page runs
//!
//! A page run is one mapping whose first page holds its index node and the start of the data:
//!
//! ```text
//! run + 0             Mapping node (index links, length = pages * 4096, kind RUN, data offset)
//! run + data - 16     a block header with state RUN (what `deallocate` reads to pick the path)
//! run + data          user data; the run is ceil((data + size) / 4096) pages long
//! ```
//!
//! The data offset is a multiple of a cache line and of the alignment, from 64 bytes to a page
//! (a page for an alignment of a page or more), and *rotates* from one run to the next within
//! the room the run's last page leaves anyway (jemalloc's "cache-oblivious" placement): buffers
//! of equal length then do not all put their ends in the same cache sets, and the rotation costs
//! no page. The node page is shared with the data, so a run costs at most one page more than
//! its data. The tag at `ptr - 16` exists in both paths (so freeing never trusts the layout to
//! pick a path or a length) and gives a double-free check. For an alignment above 4096 the run
//! is asked of the page source with [`PageSource::map_pages_aligned`], which places the second
//! page at an aligned address and maps only the run's own pages (a source that cannot choose
//! addresses maps `align / 4096 - 1` more and unmaps the head and tail around the run).
//! Shrinking a run in place unmaps its tail pages; growing in place asks the source for the pages
//! right after it ([`PageSource::grow_pages`]); both keep the offset. A run that cannot grow in
//! place is moved by the source if it can ([`PageSource::remap_pages`]: a kernel moves the frames,
//! not the bytes) with its offset kept, its node and tag rewritten at the new address
//! ([`LargeAlloc::move_grown`]); otherwise the heap allocates, copies and frees.
//!
//! # The mapping index
//!
//! The node at the start of every region and every page run is an entry of one intrusive treap
//! (a binary search tree by address, heap-ordered by a hash of the address) rooted in
//! [`LargeAlloc`]. It gives O(log n) expected lookup of the mapping that contains an address,
//! which [`LargeAlloc::owns`] and the debug checks use so that they never read unmapped memory,
//! and an in-order walk for [`LargeAlloc::check_invariants`]. No metadata lives anywhere but in
//! the mappings themselves and in the fixed-size `LargeAlloc` (under 1 KiB, so it fits the heap's
//! root page).
//!
//! # Returning memory
//!
//! A region whose blocks have all been freed coalesces into one free block spanning it. Such
//! "idle" regions of at most 64 KiB (not one mapped larger for a single block) stay mapped, their
//! block in the bins ready for the next request, up to 512 KiB in all (`region::IDLE_LIMIT`), so
//! that a workload that allocates and frees large blocks in a loop does not map and unmap a
//! region each time (with regions of four pages, unmapping each one as it emptied made the
//! kernel mix's free p99.9 an unmap). A free never unmaps a region: any other wholly free region
//! stays idle too, as an *excess* region (at most `region::EXCESS_REGIONS` of them), still
//! binned and usable, and the next allocation served without mapping unmaps one of them (the
//! index removal and the source's unmap were 500–900 of the ~700–1000 instructions of the
//! kernel's longest frees). Only a free that finds the excess list full unmaps its region
//! itself. [`LargeAlloc::release_cached`] unmaps every idle region (`trim`, and before an
//! allocation fails).
//!
//! # Invariants (checked by [`LargeAlloc::check_invariants`])
//!
//! * The index is a valid treap; mappings do not overlap; each node says REGION or RUN.
//! * Blocks tile each region from `region + 48` to its sentinel; every header has a valid tag and
//!   state; the `prev_size` of each block and of the sentinel is the size of the block before it.
//! * No two physically adjacent blocks are both free.
//! * The free blocks are exactly the entries of the bins, each in the bin of its size; the lists
//!   are consistently doubly linked; the bitmaps mark exactly the non-empty bins.
//! * The wholly free regions are the idle ones (`idle_bytes`); those not on the excess list
//!   take at most `IDLE_LIMIT` bytes; the excess list names distinct idle regions. The growing
//!   region, if any, is an indexed region.
//! * Regions are 16 to 68 KiB long; a page run's data offset is a multiple of 64 in 64..=4096,
//!   below its length, and its tag in front of the data says RUN and holds the offset.
//! * The counters behind [`LargeStats`] match what the walk finds.
//!
//! # Debug checks
//!
//! With the `debug-checks` feature, [`LargeAlloc::deallocate`] first looks the pointer up in the
//! index and reads its header; freeing a block that is already free (or whose mapping is already
//! gone) panics with `kheap: double free of large block 0x...`. Without the feature the check is
//! an empty function. A block freed and merged into its predecessor keeps its FREE header inside
//! the merged block, so a second free of it is caught until that memory is handed out again.
//!
//! All pointers are derived from the pointers the page source returned (`wrapping_add`,
//! `wrapping_sub`), never from integers, so the module runs under Miri's strict provenance. The
//! code assumes a 64-bit `usize` (it is an x86_64 heap): the size word packs a 48-bit size and a
//! 16-bit tag.
//!
//! # Files
//!
//! `block` (the block header), `bins` (the TLSF bins), `index` (the treap of mappings), `region`
//! (regions and their blocks: growth, carve, coalesce, resize), `run` (page runs and their
//! offsets), `check` (the invariant checker and
//! the debug check of a free); this file holds the allocator's state and dispatches each call to
//! the region or the page-run path. The tests are in `tests/`.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

use crate::error::AllocError;
use crate::source::{PAGE_SIZE, PageSource};

mod bins;
mod block;
mod check;
mod index;
mod region;
mod run;
#[cfg(test)]
mod tests;
mod walk;

use bins::Bins;
use block::{Block, GRANULE, HEADER, RUN};
use index::{Index, KIND_RUN, Mapping, run_node};

/// Requests whose footprint (size plus alignment padding) reaches this go to page runs. Such a
/// block would fill most of a standard region by itself, so a region would bring no sharing, only
/// split and coalesce work and a leftover fragment; a page run of at least 64 KiB wastes less than
/// one page (the page its index node shares with the start of the data).
pub const PAGE_RUN_THRESHOLD: usize = 64 * 1024;

/// A block that grows to at least this many bytes, and to at least twice its size, gets a page
/// run when it cannot grow where it is, even below [`PAGE_RUN_THRESHOLD`]
/// ([`allocate_for_growth`](LargeAlloc::allocate_for_growth)). 16 KiB is where jemalloc's large
/// (page-granular) sizes begin: a run there wastes less than a page (its data offset and the
/// rounding to whole pages), a quarter of the block at worst, and less for larger blocks.
pub const GROWTH_RUN_MIN: usize = 16 * 1024;

/// Bytes of a region that no block covers: its header and its end sentinel (the blocks a walk
/// reports tile the rest).
#[cfg(test)]
pub(crate) const REGION_OVERHEAD: usize = region::REGION_OVERHEAD;

// `LargeAlloc` lives inside the heap's first root run, next to other state.
const _: () = assert!(size_of::<LargeAlloc>() <= 1536);

/// The most a region could have to set aside for `layout`: its size plus alignment padding.
fn footprint(layout: Layout) -> usize {
    let padding = if layout.align() > GRANULE {
        layout.align()
    } else {
        0
    };
    layout.size().saturating_add(padding)
}

/// What a free leaves for the page source (see [`LargeAlloc::free_without_source`]).
#[derive(Debug)]
pub(crate) struct Unmap(UnmapKind);

#[derive(Debug)]
enum UnmapKind {
    /// A page run, by its data pointer.
    Run(NonNull<u8>),
    /// A wholly free region, its block in no bin.
    Region(*mut Mapping),
}

/// Counters of a [`LargeAlloc`], for statistics and for the kernel's out-of-memory report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LargeStats {
    /// Regions mapped, including the cached empty one.
    pub regions: usize,
    /// Bytes of all regions.
    pub region_bytes: usize,
    /// Bytes of all free blocks in regions (headers included).
    pub free_bytes: usize,
    /// Size of the largest free block in bytes (header included; its payload is 16 bytes less).
    pub largest_free: usize,
    /// Live allocations: region blocks plus page runs.
    pub live_blocks: usize,
    /// Bytes usable by callers in the live allocations (the sum of their usable sizes).
    pub live_bytes: usize,
    /// Page runs mapped.
    pub page_runs: usize,
    /// Pages of all page runs (each run's node page included).
    pub page_run_pages: usize,
}

/// The large allocator (see the module documentation).
///
/// It holds only pointers into its own mappings, never into itself, so it may be moved at any
/// time. It takes `&mut self`; locking is the caller's business.
pub struct LargeAlloc {
    /// The free blocks of the regions (and [`LargeStats::free_bytes`]).
    bins: Bins,
    /// Every region and page run.
    index: Index,
    /// Bytes of the wholly free ("idle") regions kept mapped, at most `region::IDLE_LIMIT` (512 KiB).
    idle_bytes: usize,
    /// The region mapped last, which grows in place when no binned block fits; null when it
    /// was unmapped or could not grow.
    growing: *mut Mapping,
    /// See [`LargeStats::regions`].
    regions: usize,
    /// See [`LargeStats::region_bytes`].
    region_bytes: usize,
    /// See [`LargeStats::live_blocks`].
    live_blocks: usize,
    /// Bytes usable by callers in the live page runs (the region blocks' are derived, see
    /// [`live_bytes`](Self::live_bytes), so that no region call counts them).
    run_bytes: usize,
    /// See [`LargeStats::page_runs`].
    page_runs: usize,
    /// See [`LargeStats::page_run_pages`].
    page_run_pages: usize,
    /// Page runs allocated so far (wrapping): picks each run's data offset (see `run`).
    run_turn: usize,
    /// Idle regions kept beyond the idle limit, waiting for a later allocation to unmap them
    /// (see `region::EXCESS_REGIONS`); distinct, wholly free, in the index; the first
    /// `excess_len` entries count.
    excess: [*mut Mapping; region::EXCESS_REGIONS],
    /// See `excess`.
    excess_len: usize,
}

// SAFETY: `LargeAlloc` owns the regions and page runs its pointers lead to (nothing else refers
// to their metadata) and has no thread affinity, so it may move to another thread together with
// them; all access goes through `&mut self` or, for reads, `&self`, serialised by the caller.
unsafe impl Send for LargeAlloc {}

impl Default for LargeAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LargeAlloc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LargeAlloc")
            .field("stats", &self.stats())
            .field("idle_bytes", &self.idle_bytes)
            .finish_non_exhaustive()
    }
}

impl LargeAlloc {
    /// An allocator that holds nothing.
    pub const fn new() -> Self {
        Self {
            bins: Bins::new(),
            index: Index::new(),
            idle_bytes: 0,
            growing: ptr::null_mut(),
            regions: 0,
            region_bytes: 0,
            live_blocks: 0,
            run_bytes: 0,
            page_runs: 0,
            page_run_pages: 0,
            run_turn: 0,
            excess: [ptr::null_mut(); region::EXCESS_REGIONS],
            excess_len: 0,
        }
    }

    /// Allocates a block for `layout`, mapping a region or a page run from `src` if needed.
    ///
    /// Fails with [`AllocError::TooLarge`] if the page count overflows and with
    /// [`AllocError::OutOfPages`] if `src` refuses; a failed call changes nothing.
    #[inline(always)]
    pub fn allocate<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        if footprint(layout) >= PAGE_RUN_THRESHOLD {
            self.allocate_run(src, layout)
        } else {
            self.allocate_block(src, layout)
        }
    }

    /// A page run for the new home of a live block of `old_size` bytes that is growing to
    /// `layout` and could not grow where it is ([`resize_in_place`](Self::resize_in_place) and
    /// [`move_grown`](Self::move_grown) said no), for the caller to copy the block into; `None`
    /// when the rule below does not apply or the source cannot map the run (the caller then
    /// allocates as usual).
    ///
    /// The rule: a block that at least doubles, to `GROWTH_RUN_MIN` (16 KiB) or more, but
    /// below the page-run threshold (64 KiB), and aligned to at most a page: a vector growing
    /// the way `Vec` does, most likely. A run grows in place whenever the pages after it are
    /// free (and a kernel's page source can move it without copying), where a region block
    /// grows only into a free neighbour, so the vector's next doublings are likely to need no
    /// copy. Measured on the host's realloc-growth workload: kheap copied every 16 and 32 KiB
    /// buffer it grew, talc only about half of them (see the benchmark's ANALYSIS.md).
    pub fn allocate_for_growth<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
        old_size: usize,
    ) -> Option<NonNull<u8>> {
        let size = layout.size();
        if size < GROWTH_RUN_MIN
            || size < old_size.saturating_mul(2)
            || footprint(layout) >= PAGE_RUN_THRESHOLD
            || layout.align() > PAGE_SIZE
        {
            return None;
        }
        self.allocate_run(src, layout).ok()
    }

    /// Frees a block or page run.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`allocate`](Self::allocate) on this allocator (with the same `src`) with
    /// this `layout` (or with the size of its last successful
    /// [`resize_in_place`](Self::resize_in_place)), and has not been freed yet.
    #[inline]
    pub unsafe fn deallocate<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        layout: Layout,
    ) {
        // SAFETY: forwarded.
        unsafe {
            if let Some(rest) = self.free_without_source(ptr, layout) {
                self.finish_free(src, rest);
            }
        }
    }

    /// [`deallocate`](Self::deallocate) up to the page source: a region block is freed (and
    /// merged, binned, its region kept idle); what must go back to the source is returned, for
    /// [`finish_free`](Self::finish_free): a page run, or a region that emptied with the excess
    /// list full. Always inlined into the heap's one large free path, which then holds no page
    /// source (nor anything to keep across a call) unless pages go back.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    #[inline(always)]
    pub(crate) unsafe fn free_without_source(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Option<Unmap> {
        self.check_free(ptr, layout);
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller), so its header at `ptr - 16` is mapped: in its region,
        // or just before the data in its run's node page; the header says which.
        unsafe {
            if block.state() == RUN {
                return Some(Unmap(UnmapKind::Run(ptr)));
            }
            self.free_block(block)
                .map(|region| Unmap(UnmapKind::Region(region)))
        }
    }

    /// Gives back to `src` what [`free_without_source`](Self::free_without_source) returned.
    ///
    /// # Safety
    ///
    /// `rest` came from `free_without_source` on this allocator, with the same `src`.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn finish_free<S: PageSource>(&mut self, src: &mut S, rest: Unmap) {
        // SAFETY: a run's data pointer that was live until this free, or a wholly free region
        // whose block is in no bin (`free_and_coalesce`).
        unsafe {
            match rest.0 {
                UnmapKind::Run(ptr) => self.free_run(src, ptr),
                UnmapKind::Region(region) => self.unmap_region(src, region),
            }
        }
    }

    /// Tries to resize the allocation at `ptr` in place to `new_size` bytes. On success (`true`)
    /// it has at least `new_size` usable bytes and the same alignment, and is from then on
    /// described by a layout of `new_size` bytes; on failure (`false`) nothing changed.
    ///
    /// Region blocks shrink by splitting off their tail (when it can stand as a block) and grow by
    /// absorbing a free successor (the last block of the region that grows in place also by the
    /// pages the region grows by). Page runs shrink by unmapping tail pages and grow when the
    /// page source can map the pages right after them ([`PageSource::grow_pages`]).
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate), with `_layout` the allocation's layout.
    #[must_use = "on `false` the allocation was not resized"]
    pub unsafe fn resize_in_place<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        _layout: Layout,
        new_size: usize,
    ) -> bool {
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller), so its header is mapped (see `deallocate`) and says
        // whether `ptr` is the data of a page run or a region block.
        unsafe {
            if block.state() == RUN {
                self.resize_run(src, ptr, new_size)
            } else {
                self.resize_block(src, block, new_size)
            }
        }
    }

    /// Moves a page run that [`resize_in_place`](Self::resize_in_place) could not grow to a
    /// new run of `new_size` bytes without copying them, if the page source can move runs
    /// ([`PageSource::remap_pages`]), and returns its new data pointer; on `None` nothing
    /// changed (a region block, an over-aligned run, or a source that cannot move).
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this allocator (as for [`deallocate`](Self::deallocate)), and
    /// `new_size` is more than its usable size.
    pub unsafe fn move_grown<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: `ptr` is live (caller), so its header is mapped and says whether it is the
        // data of a page run; the rest is the caller's contract.
        unsafe {
            if Block::from_user(ptr).state() != RUN {
                return None;
            }
            self.move_run(src, ptr, new_size)
        }
    }

    /// Whether the live allocation at `ptr` is a page run (rather than a region block).
    ///
    /// # Safety
    ///
    /// `ptr` is a live allocation of this allocator.
    #[inline]
    pub(crate) unsafe fn is_page_run(&self, ptr: NonNull<u8>) -> bool {
        // SAFETY: `ptr` is live (caller), so its header at `ptr - 16` is mapped.
        unsafe { Block::from_user(ptr).state() == RUN }
    }

    /// Whether wholly free regions wait beyond the idle limit for
    /// [`release_excess`](Self::release_excess) to unmap them, the quiet work of an allocation
    /// that mapped nothing: a free never unmaps a region while the excess list has room.
    #[inline]
    pub fn has_excess(&self) -> bool {
        self.excess_len != 0
    }

    /// [`LargeStats::live_bytes`]: the page runs' usable bytes, counted, and the region
    /// blocks', derived. Every byte of a region is its header, its end sentinel, a free block
    /// (counted by the bins) or a used block, whose usable bytes are its size less its header.
    fn live_bytes(&self) -> usize {
        // Wrapping, so that the checker reports damaged counters rather than overflowing.
        let region_blocks = self.live_blocks.wrapping_sub(self.page_runs);
        self.run_bytes
            .wrapping_add(self.region_bytes)
            .wrapping_sub(self.regions * region::REGION_OVERHEAD)
            .wrapping_sub(self.bins.free_bytes())
            .wrapping_sub(region_blocks.wrapping_mul(HEADER))
    }

    /// Current counters (and the largest free block, found from the bitmaps).
    pub fn stats(&self) -> LargeStats {
        LargeStats {
            regions: self.regions,
            region_bytes: self.region_bytes,
            free_bytes: self.bins.free_bytes(),
            largest_free: self.bins.largest(),
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes(),
            page_runs: self.page_runs,
            page_run_pages: self.page_run_pages,
        }
    }

    /// Is `ptr` the user pointer of a live block or page run of this allocator?
    ///
    /// Looks `ptr` up in the index first (O(log n) expected), so it never reads outside this
    /// allocator's mappings, whatever `ptr` is. For a region it then checks the header at
    /// `ptr - 16` (tag, USED state, size within the region) and that both neighbours agree with it
    /// through their boundary tags; only user data that forges a whole consistent header at the
    /// right address could fool it.
    pub fn owns(&self, ptr: NonNull<u8>) -> bool {
        let node = self.index.find_containing(ptr.addr().get());
        if node.is_null() {
            return false;
        }
        // SAFETY: `node` is in the index, so it is the live node of a mapping of ours.
        if unsafe { (*node).kind } == KIND_RUN {
            // SAFETY: as above.
            return ptr.addr().get() == node.addr() + unsafe { (*node).data };
        }
        // SAFETY: as above; a node that is not a run's is a region's.
        unsafe { self.region_owns(node, ptr) }
    }

    /// Usable size of a live allocation: at least `layout.size()`.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate), with `_layout` the allocation's layout.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>, _layout: Layout) -> usize {
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller): its header is mapped and, for a run, so is the node
        // in the page that holds `ptr - 1`.
        unsafe {
            if block.state() == RUN {
                let node = run_node(ptr);
                (*node).len - (*node).data
            } else {
                block.size() - HEADER
            }
        }
    }
}
