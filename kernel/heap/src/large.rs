//! The large allocator: a coalescing, two-level segregated-fit allocator over *regions*, plus
//! *page runs* for very large requests.
//!
//! Every request the size-class pools do not serve lands here: sizes from just above the largest
//! pool class up to gigabytes, with any power-of-two alignment. A request takes one of two paths,
//! chosen by its *footprint*, `size + (align > 16 ? align : 0)` (the most a region would have to
//! set aside for it):
//!
//! * footprint below [`PAGE_RUN_THRESHOLD`] (64 KiB): a **block** carved from a region;
//! * otherwise: a **page run** of its own, mapped for it and unmapped when it is freed.
//!
//! # Regions and blocks
//!
//! A region is one run of pages from the [`PageSource`], `max(64 KiB, need)` bytes long (`need`
//! being the request's worst-case block plus the region's own header and end sentinel, rounded up
//! to whole pages; at most 68 KiB given the threshold). It is tiled by blocks, each starting with a
//! 16-byte header that doubles as the boundary tag of its predecessor:
//!
//! ```text
//! region + 0        Mapping node (index links, length, kind)           REGION_HEADER = 48 bytes
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
//! A page run is a *header page* followed by the data pages; the caller's pointer is the first data
//! page:
//!
//! ```text
//! run + 0             Mapping node (index links, length = (1 + data pages) * 4096, kind RUN)
//! run + 4096 - 16     a block header with state RUN (what `deallocate` reads to pick the path)
//! run + 4096          user data, ceil(size / 4096) pages, aligned to the request's alignment
//! ```
//!
//! The header page costs one page per run, at most 1/17 of the smallest run, and buys a tag at
//! `ptr - 16` in both paths (so freeing never trusts the layout to pick a path or a length), room
//! for the index node, and a double-free check. It never breaks alignment: for an alignment above
//! 4096 the run is asked of the page source with [`PageSource::map_pages_aligned`], which places
//! the data page at an aligned address and maps only the run's own pages (a source that cannot
//! choose addresses maps `align / 4096 - 1` more and unmaps the head and tail around the run).
//! Shrinking a run in place unmaps its tail pages; growing in place asks the source for the pages
//! right after it ([`PageSource::grow_pages`]).
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
//! A region whose blocks have all been freed coalesces into one free block spanning it. The first
//! such region of the standard 64 KiB size is kept as a cache (its block stays in the bins, ready
//! for the next request) so that a workload that allocates and frees one large block in a loop does
//! not map and unmap a region each time; any other wholly free region is unmapped at once. So at
//! most one empty region is ever mapped; [`LargeAlloc::release_cached`] unmaps it too.
//!
//! # Invariants (checked by [`LargeAlloc::check_invariants`])
//!
//! * The index is a valid treap; mappings do not overlap; each node says REGION or RUN.
//! * Blocks tile each region from `region + 48` to its sentinel; every header has a valid tag and
//!   state; the `prev_size` of each block and of the sentinel is the size of the block before it.
//! * No two physically adjacent blocks are both free.
//! * The free blocks are exactly the entries of the bins, each in the bin of its size; the lists
//!   are consistently doubly linked; the bitmaps mark exactly the non-empty bins.
//! * At most one region is wholly free, and it is the cached one.
//! * The counters behind [`LargeStats`] match what the walk finds.
//!
//! # Debug checks
//!
//! With the `debug-checks` feature, [`LargeAlloc::deallocate`] first looks the pointer up in the
//! index and reads its header; freeing a block that is already free (or whose mapping is already
//! gone) panics with `kheap: double free of large block 0x...`. Without the feature none of this
//! code exists. A block freed and merged into its predecessor keeps its FREE header inside the
//! merged block, so a second free of it is caught until that memory is handed out again.
//!
//! All pointers are derived from the pointers the page source returned (`wrapping_add`,
//! `wrapping_sub`), never from integers, so the module runs under Miri's strict provenance. The
//! code assumes a 64-bit `usize` (it is an x86_64 heap): the size word packs a 48-bit size and a
//! 16-bit tag.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

use crate::error::{AllocError, InvariantError};
use crate::source::{PAGE_SIZE, PageSource, PageSourceError, aligned_slack};

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/// Granule of block addresses and sizes. Every block starts 16-aligned and is a multiple of 16
/// long, so every payload is 16-aligned (what `u128` and SSE values need) and the low four bits
/// of a size word are free to hold the state.
const GRANULE: usize = 16;
/// `log2(GRANULE)`.
const GRANULE_LOG: u32 = 4;
/// Bytes of a block header: `prev_size` and the size/state word.
const HEADER: usize = 16;
/// Smallest block: a header plus the two free-list links every free block must be able to hold.
const MIN_BLOCK: usize = 32;

/// Smallest region. 16 pages amortise one page-source call over many blocks of the sizes that
/// come here (from ~145 bytes to a few KiB typically), while an idle, cached region stays cheap.
const REGION_MIN: usize = 64 * 1024;
/// Requests whose footprint (size plus alignment padding) reaches this go to page runs. Such a
/// block would fill most of a standard region by itself, so a region would bring no sharing, only
/// split and coalesce work and a leftover fragment; a page run of at least 64 KiB wastes less than
/// one data page plus its header page (the header page is at most 1/17 of the run).
pub const PAGE_RUN_THRESHOLD: usize = 64 * 1024;

/// `log2` of the number of second-level bins per first-level bin: 8 sub-bins bound the rounding
/// of the good-fit search to 1/8 of a block while keeping the bin array small.
const SL_LOG: u32 = 3;
/// Second-level bins per first-level bin.
const SL_COUNT: usize = 1 << SL_LOG;
/// Sizes below `1 << FL_SHIFT` (128 bytes) all share first-level bin 0, whose sub-bins are then
/// exactly one granule apart.
const FL_SHIFT: u32 = SL_LOG + GRANULE_LOG;
/// First-level bins: enough for every block a region can hold (see the assertion below).
const FL_COUNT: usize = 11;
/// Every binned block is smaller than this (128 KiB).
const BIN_LIMIT: usize = 1 << (FL_SHIFT as usize + FL_COUNT - 1);

/// How many entries of the exact bin are probed for a fit when the good-fit search finds nothing,
/// before a new region is mapped. Small and fixed, so allocation stays O(1).
const PROBE_LIMIT: usize = 8;

/// Bytes at the start of a region taken by its index node, rounded up to the granule.
const REGION_HEADER: usize = size_of::<Mapping>().next_multiple_of(GRANULE);
/// The largest free block a region request can need: below the threshold, `size + align`
/// (`size` alone for `align <= 16`) is at most `PAGE_RUN_THRESHOLD - 1`, and the search asks for
/// `round_up(size + HEADER, 16) + align + 16` bytes.
const MAX_REGION_NEED: usize = PAGE_RUN_THRESHOLD + 2 * GRANULE;
/// The largest region ever mapped.
const MAX_REGION: usize = region_len_for(MAX_REGION_NEED);

// The whole free space of the largest region must fit the bins.
const _: () = assert!(MAX_REGION - REGION_HEADER - HEADER < BIN_LIMIT);
// `LargeAlloc` lives inside the heap's 4 KiB root page, next to other state.
const _: () = assert!(size_of::<LargeAlloc>() <= 1536);
// Regions and page runs are whole pages, and headers keep payloads granule-aligned.
const _: () = assert!(REGION_MIN.is_multiple_of(PAGE_SIZE) && PAGE_SIZE.is_multiple_of(GRANULE));
const _: () =
    assert!(HEADER.is_multiple_of(GRANULE) && MIN_BLOCK >= HEADER + 2 * size_of::<usize>());
// The size word packs a 48-bit size, the state and a 16-bit tag.
const _: () = assert!(usize::BITS == 64);

/// Bytes of the region for a free block of `need` bytes: header, block and sentinel in whole
/// pages, at least [`REGION_MIN`].
const fn region_len_for(need: usize) -> usize {
    let len = (REGION_HEADER + need + HEADER).next_multiple_of(PAGE_SIZE);
    if len < REGION_MIN { REGION_MIN } else { len }
}

// ---------------------------------------------------------------------------------------------
// Block headers
// ---------------------------------------------------------------------------------------------

/// State bit: the block is allocated.
const USED: usize = 0b0001;
/// State bit: the block is free and in a bin.
const FREE: usize = 0b0010;
/// State bit: the region's end sentinel (size 0).
const END: usize = 0b0100;
/// State bit: the header in front of a page run's data.
const RUN: usize = 0b1000;
/// The state bits of a size word.
const STATE_MASK: usize = GRANULE - 1;
/// Position of the 16-bit check tag in a size word.
const TAG_SHIFT: u32 = 48;
/// The size bits of a size word.
const SIZE_MASK: usize = ((1 << TAG_SHIFT) - 1) & !STATE_MASK;

/// The check tag of a header at `addr`: a 16-bit hash of the address, so that a stale or forged
/// header at another address, or a header-shaped pattern in user data, is most likely rejected.
const fn tag(addr: usize) -> usize {
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> TAG_SHIFT) ^ 0x4B48
}

/// A block (or sentinel, or run tag) header at a 16-aligned address inside a mapping.
///
/// Address arithmetic is safe; every accessor that touches memory is `unsafe` and requires that
/// the header (and, for the link accessors, the 16 bytes after it) lies inside a mapping that
/// this allocator owns.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Block(*mut u8);

impl Block {
    /// The header in front of a user pointer.
    fn from_user(ptr: NonNull<u8>) -> Self {
        Self(ptr.as_ptr().wrapping_sub(HEADER))
    }

    fn addr(self) -> usize {
        self.0.addr()
    }

    /// The header `n` bytes further on (address arithmetic only).
    fn forward(self, n: usize) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// The header `n` bytes before (address arithmetic only).
    fn back(self, n: usize) -> Self {
        Self(self.0.wrapping_sub(n))
    }

    /// The user pointer of this block.
    fn user(self) -> NonNull<u8> {
        let ptr = self.0.wrapping_add(HEADER);
        // A header lies inside a mapping, which never ends at the top of the address space, so
        // the payload address is not null; the fallback only keeps this function total.
        NonNull::new(ptr).unwrap_or(NonNull::dangling())
    }

    /// # Safety
    ///
    /// The 16 bytes at `self` lie inside a mapping of this allocator.
    unsafe fn prev_size(self) -> usize {
        // SAFETY: the caller guarantees the header is mapped; it is 16-aligned.
        unsafe { self.0.cast::<usize>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::prev_size`], and the allocator has exclusive use of the header.
    unsafe fn set_prev_size(self, size: usize) {
        // SAFETY: the caller guarantees the header is mapped and ours to write; it is aligned.
        unsafe { self.0.cast::<usize>().write(size) }
    }

    /// The raw size/state word.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn word(self) -> usize {
        // SAFETY: the caller guarantees the header is mapped; offset 8 is within it and aligned.
        unsafe { self.0.wrapping_add(8).cast::<usize>().read() }
    }

    /// Writes the size/state word, with the tag of this address.
    ///
    /// # Safety
    ///
    /// As for [`Block::set_prev_size`].
    unsafe fn set(self, size: usize, state: usize) {
        debug_assert!(size & !SIZE_MASK == 0 && state & !STATE_MASK == 0);
        let word = size | state | (tag(self.addr()) << TAG_SHIFT);
        // SAFETY: the caller guarantees the header is mapped and ours to write; it is aligned.
        unsafe { self.0.wrapping_add(8).cast::<usize>().write(word) }
    }

    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn size(self) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { self.word() & SIZE_MASK }
    }

    /// The state bits, trusted (no tag check).
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn state(self) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { self.word() & STATE_MASK }
    }

    /// The state, if the header is well-formed: the right tag for its address and exactly one
    /// state bit set.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn checked_state(self) -> Option<usize> {
        // SAFETY: forwarded from the caller.
        let word = unsafe { self.word() };
        let state = word & STATE_MASK;
        (word >> TAG_SHIFT == tag(self.addr()) && state.is_power_of_two()).then_some(state)
    }

    /// The physically next block (or sentinel).
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn next(self) -> Self {
        // SAFETY: forwarded from the caller.
        self.forward(unsafe { self.size() })
    }

    /// The physically previous block, or `None` for the first block of a region.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn prev(self) -> Option<Self> {
        // SAFETY: forwarded from the caller.
        let prev_size = unsafe { self.prev_size() };
        (prev_size != 0).then(|| self.back(prev_size))
    }

    /// # Safety
    ///
    /// `self` is a free block (so at least [`MIN_BLOCK`] bytes) inside a mapping of this
    /// allocator.
    unsafe fn next_free(self) -> *mut u8 {
        // SAFETY: a free block is at least MIN_BLOCK bytes, so offset 16 holds the link.
        unsafe { self.0.wrapping_add(HEADER).cast::<*mut u8>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::next_free`].
    unsafe fn prev_free(self) -> *mut u8 {
        // SAFETY: a free block is at least MIN_BLOCK bytes, so offset 24 holds the link.
        unsafe { self.0.wrapping_add(HEADER + 8).cast::<*mut u8>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::next_free`], and the block is the allocator's to write.
    unsafe fn set_next_free(self, next: *mut u8) {
        // SAFETY: see `next_free`; the caller guarantees exclusive use.
        unsafe { self.0.wrapping_add(HEADER).cast::<*mut u8>().write(next) }
    }

    /// # Safety
    ///
    /// As for [`Block::set_next_free`].
    unsafe fn set_prev_free(self, prev: *mut u8) {
        // SAFETY: see `prev_free`; the caller guarantees exclusive use.
        unsafe {
            self.0
                .wrapping_add(HEADER + 8)
                .cast::<*mut u8>()
                .write(prev)
        }
    }
}

/// Block size (header included) for a payload of `size` bytes, or `None` if that overflows.
const fn block_size_for(size: usize) -> Option<usize> {
    match size.checked_add(HEADER + GRANULE - 1) {
        Some(n) => {
            let n = n & !(GRANULE - 1);
            Some(if n < MIN_BLOCK { MIN_BLOCK } else { n })
        }
        None => None,
    }
}

/// The most a region could have to set aside for `layout`: its size plus alignment padding.
fn footprint(layout: Layout) -> usize {
    let padding = if layout.align() > GRANULE {
        layout.align()
    } else {
        0
    };
    layout.size().saturating_add(padding)
}

// ---------------------------------------------------------------------------------------------
// Bin mapping (TLSF)
// ---------------------------------------------------------------------------------------------

/// The bin a free block of `size` bytes belongs in: `(first level, second level)`.
const fn bin_of(size: usize) -> (usize, usize) {
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
const fn search_bin(size: usize) -> Option<(usize, usize)> {
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

// ---------------------------------------------------------------------------------------------
// The mapping index: an intrusive treap of regions and page runs
// ---------------------------------------------------------------------------------------------

/// `Mapping::kind` of a region.
const KIND_REGION: usize = 0x4B48_5245_4749_4F4E;
/// `Mapping::kind` of a page run.
const KIND_RUN: usize = 0x4B48_5041_4745_5255;

/// The node at offset 0 of every region and page run.
#[repr(C)]
struct Mapping {
    /// Child with lower addresses.
    left: *mut Mapping,
    /// Child with higher addresses.
    right: *mut Mapping,
    /// Parent, null for the root.
    parent: *mut Mapping,
    /// Length of the whole mapping in bytes (a multiple of `PAGE_SIZE`).
    len: usize,
    /// [`KIND_REGION`] or [`KIND_RUN`].
    kind: usize,
}

/// Heap priority of a node: a bijective hash of its page number, so that mappings handed out at
/// increasing addresses still make a balanced tree (expected depth O(log n)).
fn priority(node: *mut Mapping) -> usize {
    (node.addr() >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The node of the page run whose data starts at `ptr` (address arithmetic only).
fn run_node(ptr: NonNull<u8>) -> *mut Mapping {
    ptr.as_ptr().wrapping_sub(PAGE_SIZE).cast::<Mapping>()
}

// ---------------------------------------------------------------------------------------------
// The allocator
// ---------------------------------------------------------------------------------------------

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
    /// Pages of all page runs, each run's header page included.
    pub page_run_pages: usize,
}

/// The large allocator (see the module documentation).
///
/// It holds only pointers into its own mappings, never into itself, so it may be moved at any
/// time. It takes `&mut self`; locking is the caller's business.
pub struct LargeAlloc {
    /// Bit `fl` set iff `sl_bitmap[fl] != 0`.
    fl_bitmap: u32,
    /// Bit `sl` of entry `fl` set iff `bins[fl][sl]` is not null.
    sl_bitmap: [u8; FL_COUNT],
    /// Heads of the free lists (block header addresses), null when empty.
    bins: [[*mut u8; SL_COUNT]; FL_COUNT],
    /// Root of the index of all regions and page runs.
    root: *mut Mapping,
    /// The wholly free region kept mapped, or null.
    cached: *mut Mapping,
    /// See [`LargeStats::regions`].
    regions: usize,
    /// See [`LargeStats::region_bytes`].
    region_bytes: usize,
    /// See [`LargeStats::free_bytes`].
    free_bytes: usize,
    /// See [`LargeStats::live_blocks`].
    live_blocks: usize,
    /// See [`LargeStats::live_bytes`].
    live_bytes: usize,
    /// See [`LargeStats::page_runs`].
    page_runs: usize,
    /// See [`LargeStats::page_run_pages`].
    page_run_pages: usize,
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
            .field("cached_region", &self.cached)
            .finish_non_exhaustive()
    }
}

impl LargeAlloc {
    /// An allocator that holds nothing.
    pub const fn new() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            bins: [[ptr::null_mut(); SL_COUNT]; FL_COUNT],
            root: ptr::null_mut(),
            cached: ptr::null_mut(),
            regions: 0,
            region_bytes: 0,
            free_bytes: 0,
            live_blocks: 0,
            live_bytes: 0,
            page_runs: 0,
            page_run_pages: 0,
        }
    }

    /// Allocates a block for `layout`, mapping a region or a page run from `src` if needed.
    ///
    /// Fails with [`AllocError::TooLarge`] if the page count overflows and with
    /// [`AllocError::OutOfPages`] if `src` refuses; a failed call changes nothing.
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

    /// Frees a block or page run.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`allocate`](Self::allocate) on this allocator (with the same `src`) with
    /// this `layout` (or with the size of its last successful
    /// [`resize_in_place`](Self::resize_in_place)), and has not been freed yet.
    pub unsafe fn deallocate<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        layout: Layout,
    ) {
        #[cfg(feature = "debug-checks")]
        self.check_free(ptr, layout);
        #[cfg(not(feature = "debug-checks"))]
        let _ = layout;
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller), so its header at `ptr - 16` is mapped: in its region,
        // or at the end of its run's header page.
        let state = unsafe { block.state() };
        if state == RUN {
            // SAFETY: the header says `ptr` is the data of a live page run (caller's guarantee).
            unsafe { self.free_run(src, ptr) }
        } else {
            // SAFETY: `ptr` is a live region block (caller's guarantee) whose header is `block`.
            unsafe {
                let size = block.size();
                self.live_blocks -= 1;
                self.live_bytes -= size - HEADER;
                self.free_and_coalesce(src, block);
            }
        }
    }

    /// Tries to resize the allocation at `ptr` in place to `new_size` bytes. On success (`true`)
    /// it has at least `new_size` usable bytes and the same alignment, and is from then on
    /// described by a layout of `new_size` bytes; on failure (`false`) nothing changed.
    ///
    /// Region blocks shrink by splitting off their tail (when it can stand as a block) and grow by
    /// absorbing a free successor. Page runs shrink by unmapping tail pages and grow when the
    /// page source can map the pages right after them ([`PageSource::grow_pages`]).
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    #[must_use = "on `false` the allocation was not resized"]
    pub unsafe fn resize_in_place<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> bool {
        let _ = layout;
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller), so its header is mapped (see `deallocate`).
        if unsafe { block.state() } == RUN {
            // SAFETY: `ptr` is the data of a live page run.
            return unsafe { self.resize_run(src, ptr, new_size) };
        }
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
                    block.set(new_block, USED);
                    tail.set_prev_size(new_block);
                    tail.set(size - new_block, USED);
                    self.live_bytes -= size - new_block;
                    // The tail's predecessor is `block`, which is used, so the region does not
                    // become empty and `src` is not needed.
                    self.free_and_coalesce(src, tail);
                }
                return true;
            }
            let next = block.next();
            if next.state() != FREE {
                return false;
            }
            let total = size + next.size();
            if total < new_block {
                return false;
            }
            self.remove_free(next);
            if total - new_block >= MIN_BLOCK {
                block.set(new_block, USED);
                let tail = block.forward(new_block);
                tail.set_prev_size(new_block);
                tail.set(total - new_block, FREE);
                // The successor of the absorbed block is not free (it was coalesced).
                tail.next().set_prev_size(total - new_block);
                self.insert_free(tail);
                self.live_bytes += new_block - size;
            } else {
                block.set(total, USED);
                block.next().set_prev_size(total);
                self.live_bytes += total - size;
            }
            true
        }
    }

    /// Current counters (and the largest free block, found from the bitmaps).
    pub fn stats(&self) -> LargeStats {
        LargeStats {
            regions: self.regions,
            region_bytes: self.region_bytes,
            free_bytes: self.free_bytes,
            largest_free: self.largest_free(),
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes,
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
        let addr = ptr.addr().get();
        let node = self.find_containing(addr);
        if node.is_null() {
            return false;
        }
        // SAFETY: `node` is in the index, so it is the live node of a mapping of ours.
        let (len, kind) = unsafe { ((*node).len, (*node).kind) };
        let base = node.addr();
        if kind == KIND_RUN {
            return addr == base + PAGE_SIZE;
        }
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

    /// Usable size of a live allocation: at least `layout.size()`.
    ///
    /// # Safety
    ///
    /// As for [`deallocate`](Self::deallocate).
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>, layout: Layout) -> usize {
        let _ = layout;
        let block = Block::from_user(ptr);
        // SAFETY: `ptr` is live (caller): its header is mapped and, for a run, so is the node
        // one page before `ptr`.
        unsafe {
            if block.state() == RUN {
                (*run_node(ptr)).len - PAGE_SIZE
            } else {
                block.size() - HEADER
            }
        }
    }

    /// Unmaps the cached empty region, if any (when the heap is torn down, or to give memory back
    /// under pressure).
    pub fn release_cached<S: PageSource>(&mut self, src: &mut S) {
        let region = self.cached;
        if region.is_null() {
            return;
        }
        self.cached = ptr::null_mut();
        let first = Block(region.cast::<u8>().wrapping_add(REGION_HEADER));
        // SAFETY: the cached region is mapped and wholly free; its single block `first` is in a
        // bin. Once out of the bin, nothing refers to the region but its index entry, which
        // `unmap_region` removes.
        unsafe {
            self.remove_free(first);
            self.unmap_region(src, region);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Region blocks
    // -----------------------------------------------------------------------------------------

    /// The region path of [`allocate`](Self::allocate).
    fn allocate_block<S: PageSource>(
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
        let block = match self.find_free(need) {
            Some(block) => {
                // SAFETY: `find_free` returned a block that is in a bin.
                unsafe { self.remove_free(block) };
                if !self.cached.is_null() && block.addr() == self.cached.addr() + REGION_HEADER {
                    // The cached region's only block is taken: the region is no longer empty.
                    self.cached = ptr::null_mut();
                }
                block
            }
            None => self
                .map_region(src, need)
                .map_err(|cause| AllocError::OutOfPages { layout, cause })?,
        };
        // SAFETY: `block` is a free block of at least `need` bytes that is in no bin.
        Ok(unsafe { self.carve(block, block_size, align) })
    }

    /// A binned free block of at least `need` bytes, or `None`.
    fn find_free(&self, need: usize) -> Option<Block> {
        if let Some((fl, sl)) = search_bin(need) {
            let sl_map = self.sl_bitmap[fl] & (u8::MAX << sl);
            let found = if sl_map != 0 {
                Some((fl, sl_map.trailing_zeros() as usize))
            } else {
                let fl_map = self.fl_bitmap & (u32::MAX << (fl + 1));
                (fl_map != 0).then(|| {
                    let fl = fl_map.trailing_zeros() as usize;
                    (fl, self.sl_bitmap[fl].trailing_zeros() as usize)
                })
            };
            if let Some((fl, sl)) = found {
                return Some(Block(self.bins[fl][sl]));
            }
        }
        // The good fit failed: a few blocks of the exact bin may still be large enough.
        let (fl, sl) = bin_of(need);
        if fl >= FL_COUNT {
            return None;
        }
        let mut cur = self.bins[fl][sl];
        for _ in 0..PROBE_LIMIT {
            if cur.is_null() {
                break;
            }
            let block = Block(cur);
            // SAFETY: bins hold only free blocks of our regions.
            unsafe {
                if block.size() >= need {
                    return Some(block);
                }
                cur = block.next_free();
            }
        }
        None
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
            });
            self.index_insert(node);
            first.set_prev_size(0);
            first.set(size, FREE);
            sentinel.set_prev_size(size);
            sentinel.set(0, END);
        }
        self.regions += 1;
        self.region_bytes += len;
        Ok(first)
    }

    /// Turns the free, unbinned `block` into a used block of `block_size` bytes whose payload is
    /// aligned to `align`, binning the leading gap and the tail when they can stand as blocks.
    ///
    /// # Safety
    ///
    /// `block` is a free block of a region of ours, in no bin, whose neighbours are not free, of
    /// at least `block_size` bytes (`block_size + align + 16` if `align > 16`).
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
                    block.set(gap, FREE);
                    self.insert_free(block);
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
                self.insert_free(tail);
            } else {
                start.set(size, USED);
                start.next().set_prev_size(size);
            }
            self.live_blocks += 1;
            self.live_bytes += start.size() - HEADER;
            start.user()
        }
    }

    /// Marks `block` free, merges it with free neighbours and bins the result, or, if that
    /// empties the region, caches or unmaps the region.
    ///
    /// # Safety
    ///
    /// `block` is a block of a region of ours that is not free and not binned, with valid size
    /// and `prev_size`, and nobody uses its memory any more.
    unsafe fn free_and_coalesce<S: PageSource>(&mut self, src: &mut S, block: Block) {
        // SAFETY: `block` and its neighbours are headers in the same region (the boundary tags
        // are valid); binned neighbours leave their bins before they are merged.
        unsafe {
            let mut start = block;
            let mut size = block.size();
            // This header stays in memory when merged away: a second free of `block` sees FREE.
            block.set(size, FREE);
            if let Some(prev) = block.prev()
                && prev.state() == FREE
            {
                self.remove_free(prev);
                size += prev.size();
                start = prev;
            }
            let next = block.next();
            if next.state() == FREE {
                self.remove_free(next);
                size += next.size();
            }
            start.set(size, FREE);
            let after = start.next();
            after.set_prev_size(size);
            if start.prev_size() == 0 && after.state() == END {
                let region = start.back(REGION_HEADER).0.cast::<Mapping>();
                if self.cached.is_null() && (*region).len == REGION_MIN {
                    self.cached = region;
                    self.insert_free(start);
                } else {
                    self.unmap_region(src, region);
                }
            } else {
                self.insert_free(start);
            }
        }
    }

    /// Removes `region` from the index and gives its pages back to `src`.
    ///
    /// # Safety
    ///
    /// `region` is a region of ours that is wholly free, with its block in no bin.
    unsafe fn unmap_region<S: PageSource>(&mut self, src: &mut S, region: *mut Mapping) {
        // SAFETY: the region is ours and indexed; once out of the index, with no binned block,
        // nothing refers to it, so its pages can go back to the source that mapped them.
        unsafe {
            let len = (*region).len;
            self.index_remove(region);
            self.regions -= 1;
            self.region_bytes -= len;
            src.unmap_pages(NonNull::new_unchecked(region.cast::<u8>()), len / PAGE_SIZE);
        }
    }

    /// Puts the free block `block` at the head of the bin of its size.
    ///
    /// # Safety
    ///
    /// `block` is a free block of a region of ours, in no bin, with its final size written.
    unsafe fn insert_free(&mut self, block: Block) {
        // SAFETY: `block` and the current head (if any) are free blocks of our regions.
        unsafe {
            let size = block.size();
            let (fl, sl) = bin_of(size);
            let head = self.bins[fl][sl];
            block.set_next_free(head);
            block.set_prev_free(ptr::null_mut());
            if !head.is_null() {
                Block(head).set_prev_free(block.0);
            }
            self.bins[fl][sl] = block.0;
            self.sl_bitmap[fl] |= 1 << sl;
            self.fl_bitmap |= 1 << fl;
            self.free_bytes += size;
        }
    }

    /// Takes the free block `block` out of its bin.
    ///
    /// # Safety
    ///
    /// `block` is in the bin of its (unchanged) size.
    unsafe fn remove_free(&mut self, block: Block) {
        // SAFETY: `block` and its list neighbours are binned free blocks of our regions.
        unsafe {
            let size = block.size();
            let (fl, sl) = bin_of(size);
            let next = block.next_free();
            let prev = block.prev_free();
            if !next.is_null() {
                Block(next).set_prev_free(prev);
            }
            if prev.is_null() {
                self.bins[fl][sl] = next;
                if next.is_null() {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            } else {
                Block(prev).set_next_free(next);
            }
            self.free_bytes -= size;
        }
    }

    /// Size of the largest free block: the largest in the highest non-empty bin.
    fn largest_free(&self) -> usize {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = (u32::BITS - 1 - self.fl_bitmap.leading_zeros()) as usize;
        let sl = (u8::BITS - 1 - self.sl_bitmap[fl].leading_zeros()) as usize;
        let mut largest = 0;
        let mut cur = self.bins[fl][sl];
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

    // -----------------------------------------------------------------------------------------
    // Page runs
    // -----------------------------------------------------------------------------------------

    /// The page-run path of [`allocate`](Self::allocate).
    fn allocate_run<S: PageSource>(
        &mut self,
        src: &mut S,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        let data_pages = layout.size().div_ceil(PAGE_SIZE).max(1);
        let pages = data_pages
            .checked_add(1)
            .ok_or(AllocError::TooLarge { layout })?;
        // A run that could not be placed even in a whole address space (with the slack an
        // aligned placement may have to skip) is too large, rather than out of pages.
        aligned_slack(pages, align.max(PAGE_SIZE), 1)
            .map_err(|_| AllocError::TooLarge { layout })?;
        // The header page, then the data at an `align`-aligned address: the source finds such a
        // range and maps just these pages (for an alignment above a page).
        let mapped = if align > PAGE_SIZE {
            src.map_pages_aligned(pages, align, 1)
        } else {
            src.map_pages(pages)
        };
        let node = mapped
            .map_err(|cause| AllocError::OutOfPages { layout, cause })?
            .as_ptr();
        let data = node.wrapping_add(PAGE_SIZE);
        debug_assert!(data.addr().is_multiple_of(align));
        // SAFETY: the source mapped the `pages` pages at `node` for us alone; the node page and
        // the data pages are written only here.
        unsafe {
            let node = node.cast::<Mapping>();
            node.write(Mapping {
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                parent: ptr::null_mut(),
                len: (1 + data_pages) * PAGE_SIZE,
                kind: KIND_RUN,
            });
            self.index_insert(node);
            let header = Block(data.wrapping_sub(HEADER));
            header.set_prev_size(0);
            header.set(0, RUN);
        }
        self.page_runs += 1;
        self.page_run_pages += 1 + data_pages;
        self.live_blocks += 1;
        self.live_bytes += data_pages * PAGE_SIZE;
        // SAFETY: `data` is inside the mapping `src` returned, so it is not null.
        Ok(unsafe { NonNull::new_unchecked(data) })
    }

    /// Frees the page run whose data starts at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is the data pointer of a live page run of ours that nobody uses any more.
    unsafe fn free_run<S: PageSource>(&mut self, src: &mut S, ptr: NonNull<u8>) {
        let node = run_node(ptr);
        // SAFETY: the node page is mapped (live run); once out of the index the run is referred
        // to by nothing, so its pages go back to the source.
        unsafe {
            let pages = (*node).len / PAGE_SIZE;
            self.index_remove(node);
            self.page_runs -= 1;
            self.page_run_pages -= pages;
            self.live_blocks -= 1;
            self.live_bytes -= (pages - 1) * PAGE_SIZE;
            src.unmap_pages(NonNull::new_unchecked(node.cast::<u8>()), pages);
        }
    }

    /// Resizes a page run in place: shrinking unmaps its tail pages; growing asks the source to
    /// map the pages right after it ([`PageSource::grow_pages`]) and fails if it cannot.
    ///
    /// # Safety
    ///
    /// `ptr` is the data pointer of a live page run of ours.
    unsafe fn resize_run<S: PageSource>(
        &mut self,
        src: &mut S,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> bool {
        let node = run_node(ptr);
        // SAFETY: the node page is mapped (live run).
        let len = unsafe { (*node).len };
        let data_pages = len / PAGE_SIZE - 1;
        let new_pages = new_size.div_ceil(PAGE_SIZE).max(1);
        if new_pages > data_pages {
            let extra = new_pages - data_pages;
            // SAFETY: `node` is the start of a live mapping of ours, so it is not null.
            let start = unsafe { NonNull::new_unchecked(node.cast::<u8>()) };
            if extra
                .checked_mul(PAGE_SIZE)
                .is_none_or(|b| b > isize::MAX as usize - len)
                || !src.grow_pages(start, len / PAGE_SIZE, extra)
            {
                return false;
            }
            // SAFETY: the node page is mapped (live run); the run now has `extra` more pages.
            unsafe { (*node).len = len + extra * PAGE_SIZE };
            self.page_run_pages += extra;
            self.live_bytes += extra * PAGE_SIZE;
            return true;
        }
        let drop_pages = data_pages - new_pages;
        if drop_pages > 0 {
            // SAFETY: the dropped pages are the run's own tail, beyond the `new_size` bytes the
            // caller keeps using; the node is updated before they go.
            unsafe {
                (*node).len = (1 + new_pages) * PAGE_SIZE;
                let tail = ptr.as_ptr().wrapping_add(new_pages * PAGE_SIZE);
                src.unmap_pages(NonNull::new_unchecked(tail), drop_pages);
            }
            self.page_run_pages -= drop_pages;
            self.live_bytes -= drop_pages * PAGE_SIZE;
        }
        true
    }

    // -----------------------------------------------------------------------------------------
    // The index
    // -----------------------------------------------------------------------------------------

    /// Adds `node` to the index.
    ///
    /// # Safety
    ///
    /// `node` is the initialised node of a new mapping of ours, not in the index, with null links.
    unsafe fn index_insert(&mut self, node: *mut Mapping) {
        // SAFETY: all nodes reached are nodes of live mappings of ours (index invariant).
        unsafe {
            if self.root.is_null() {
                self.root = node;
                return;
            }
            let mut cur = self.root;
            loop {
                let link = if node.addr() < cur.addr() {
                    &raw mut (*cur).left
                } else {
                    &raw mut (*cur).right
                };
                if (*link).is_null() {
                    *link = node;
                    (*node).parent = cur;
                    break;
                }
                cur = *link;
            }
            while !(*node).parent.is_null() && priority(node) > priority((*node).parent) {
                self.rotate_up(node);
            }
        }
    }

    /// Removes `node` from the index.
    ///
    /// # Safety
    ///
    /// `node` is in the index.
    unsafe fn index_remove(&mut self, node: *mut Mapping) {
        // SAFETY: all nodes reached are nodes of live mappings of ours (index invariant).
        unsafe {
            // Rotate the node down (its higher-priority child up) until it is a leaf.
            loop {
                let (left, right) = ((*node).left, (*node).right);
                let child = match (left.is_null(), right.is_null()) {
                    (true, true) => break,
                    (false, true) => left,
                    (true, false) => right,
                    (false, false) => {
                        if priority(left) > priority(right) {
                            left
                        } else {
                            right
                        }
                    }
                };
                self.rotate_up(child);
            }
            let parent = (*node).parent;
            if parent.is_null() {
                self.root = ptr::null_mut();
            } else if (*parent).left == node {
                (*parent).left = ptr::null_mut();
            } else {
                (*parent).right = ptr::null_mut();
            }
            (*node).parent = ptr::null_mut();
        }
    }

    /// Rotates `node` above its parent.
    ///
    /// # Safety
    ///
    /// `node` is in the index and has a parent.
    unsafe fn rotate_up(&mut self, node: *mut Mapping) {
        // SAFETY: `node`, its parent, its grandparent and the moved subtree are indexed nodes.
        unsafe {
            let parent = (*node).parent;
            let grand = (*parent).parent;
            if (*parent).left == node {
                let moved = (*node).right;
                (*parent).left = moved;
                if !moved.is_null() {
                    (*moved).parent = parent;
                }
                (*node).right = parent;
            } else {
                let moved = (*node).left;
                (*parent).right = moved;
                if !moved.is_null() {
                    (*moved).parent = parent;
                }
                (*node).left = parent;
            }
            (*parent).parent = node;
            (*node).parent = grand;
            if grand.is_null() {
                self.root = node;
            } else if (*grand).left == parent {
                (*grand).left = node;
            } else {
                (*grand).right = node;
            }
        }
    }

    /// The indexed mapping that contains `addr`, or null.
    fn find_containing(&self, addr: usize) -> *mut Mapping {
        let mut best = ptr::null_mut::<Mapping>();
        let mut cur = self.root;
        while !cur.is_null() {
            // SAFETY: indexed nodes are live nodes of our mappings.
            cur = unsafe {
                if cur.addr() <= addr {
                    best = cur;
                    (*cur).right
                } else {
                    (*cur).left
                }
            };
        }
        // SAFETY: `best`, if not null, is an indexed node.
        if !best.is_null() && addr - best.addr() < unsafe { (*best).len } {
            best
        } else {
            ptr::null_mut()
        }
    }

    /// The lowest-addressed indexed node, or null.
    fn first_node(&self) -> *mut Mapping {
        let mut cur = self.root;
        // SAFETY: indexed nodes are live nodes of our mappings.
        unsafe {
            while !cur.is_null() && !(*cur).left.is_null() {
                cur = (*cur).left;
            }
        }
        cur
    }

    /// The in-order successor of an indexed node, or null.
    fn successor(node: *mut Mapping) -> *mut Mapping {
        // SAFETY: `node` and every node reached through links are indexed, live nodes.
        unsafe {
            if !(*node).right.is_null() {
                let mut cur = (*node).right;
                while !(*cur).left.is_null() {
                    cur = (*cur).left;
                }
                return cur;
            }
            let mut cur = node;
            let mut parent = (*cur).parent;
            while !parent.is_null() && (*parent).right == cur {
                cur = parent;
                parent = (*cur).parent;
            }
            parent
        }
    }

    // -----------------------------------------------------------------------------------------
    // Debug checks
    // -----------------------------------------------------------------------------------------

    /// Panics (naming the address) unless `ptr` is a live allocation that fits `layout`.
    #[cfg(feature = "debug-checks")]
    fn check_free(&self, ptr: NonNull<u8>, layout: Layout) {
        let addr = ptr.addr().get();
        let node = self.find_containing(addr);
        if node.is_null() {
            panic!("kheap: double free of large block {addr:#x} (its memory is no longer mapped)");
        }
        let base = node.addr();
        // SAFETY: `node` is indexed, so it is the live node of one of our mappings.
        let (len, kind) = unsafe { ((*node).len, (*node).kind) };
        let starts_block = if kind == KIND_RUN {
            addr == base + PAGE_SIZE
        } else {
            addr.is_multiple_of(GRANULE) && addr >= base + REGION_HEADER + HEADER
        };
        if !starts_block {
            panic!("kheap: free of {addr:#x}, which is not the start of a large block");
        }
        let block = Block::from_user(ptr);
        // SAFETY: `block` (`addr - 16`) was just checked to lie in the mapping of `node`.
        let (state, usable) = unsafe {
            match block.checked_state() {
                Some(RUN) => (Some(RUN), len - PAGE_SIZE),
                state => (state, block.size().saturating_sub(HEADER)),
            }
        };
        match (state, kind) {
            (Some(USED), KIND_REGION) | (Some(RUN), KIND_RUN) => {}
            (Some(FREE), _) => panic!("kheap: double free of large block {addr:#x}"),
            _ => panic!(
                "kheap: double free of large block {addr:#x}, or a pointer that was never \
                 allocated (no live block header)"
            ),
        }
        if usable < layout.size() || !addr.is_multiple_of(layout.align()) {
            panic!(
                "kheap: large block {addr:#x} freed with a layout (size {}, align {}) that does \
                 not match its allocation (usable size {usable})",
                layout.size(),
                layout.align()
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Invariant checker
    // -----------------------------------------------------------------------------------------

    /// Walks the index, every bin, every region's blocks and the counters, and reports the first
    /// broken invariant found (see the module documentation for the list). The index is checked
    /// first and the bins next, so that each later pass follows only links already validated.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        // Pass 1: the index, in address order.
        let mut regions = 0;
        let mut region_bytes = 0;
        let mut page_runs = 0;
        let mut page_run_pages = 0;
        let mut run_bytes = 0;
        let mut prev_base = 0usize;
        let mut prev_end = 0usize;
        let limit = self.regions + self.page_runs;
        let mut visited = 0usize;
        let mut node = self.first_node();
        while !node.is_null() {
            visited += 1;
            if visited > limit {
                // Either the counters are low or the links loop: stop the walk either way.
                return Err(InvariantError::CountMismatch {
                    addr: self.addr(),
                    recorded: limit,
                    counted: visited,
                });
            }
            self.check_node(node)?;
            let base = node.addr();
            // SAFETY: `check_node` verified that the node is linked into the index, so it is
            // live.
            let (len, kind) = unsafe { ((*node).len, (*node).kind) };
            if len == 0 || !len.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
                return Err(InvariantError::DescriptorCorrupt { addr: base });
            }
            if base < prev_end {
                return Err(InvariantError::Overlap {
                    addr: prev_base,
                    other: base,
                });
            }
            prev_base = base;
            prev_end = base + len;
            match kind {
                KIND_REGION if len >= REGION_MIN => {
                    regions += 1;
                    region_bytes += len;
                }
                KIND_RUN => {
                    let header = Block(node.cast::<u8>().wrapping_add(PAGE_SIZE - HEADER));
                    // SAFETY: `len` is at least a page, so the header is in the node page.
                    if len < 2 * PAGE_SIZE || unsafe { header.checked_state() } != Some(RUN) {
                        return Err(InvariantError::LargeHeaderCorrupt {
                            addr: header.addr(),
                        });
                    }
                    page_runs += 1;
                    page_run_pages += len / PAGE_SIZE;
                    run_bytes += len - PAGE_SIZE;
                }
                _ => return Err(InvariantError::DescriptorCorrupt { addr: base }),
            }
            node = Self::successor(node);
        }
        if visited != limit {
            return Err(InvariantError::CountMismatch {
                addr: self.addr(),
                recorded: limit,
                counted: visited,
            });
        }

        // Pass 2: the bins hold only free blocks of the right size inside regions, consistently
        // linked; the bitmaps mark exactly the non-empty bins.
        let max_free_blocks = region_bytes / MIN_BLOCK;
        let mut binned = 0usize;
        for fl in 0..FL_COUNT {
            for sl in 0..SL_COUNT {
                let head = self.bins[fl][sl];
                let bit = self.sl_bitmap[fl] & (1 << sl) != 0;
                if bit == head.is_null() {
                    return Err(InvariantError::BinCorrupt { addr: self.addr() });
                }
                let mut prev = ptr::null_mut::<u8>();
                let mut cur = head;
                while !cur.is_null() {
                    binned += 1;
                    if binned > max_free_blocks {
                        return Err(InvariantError::ListCorrupt { addr: cur.addr() });
                    }
                    let block = Block(cur);
                    let region = self.find_containing(block.addr());
                    // SAFETY: `region` is indexed (if not null); the block's header and links are
                    // checked to lie inside its block area before they are read.
                    unsafe {
                        if region.is_null()
                            || (*region).kind != KIND_REGION
                            || !block.addr().is_multiple_of(GRANULE)
                            || block.addr() < region.addr() + REGION_HEADER
                            || block.addr() + MIN_BLOCK > region.addr() + (*region).len - HEADER
                        {
                            return Err(InvariantError::ListCorrupt { addr: block.addr() });
                        }
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
                return Err(InvariantError::BinCorrupt { addr: self.addr() });
            }
        }
        if self.fl_bitmap >> FL_COUNT != 0 {
            return Err(InvariantError::BinCorrupt { addr: self.addr() });
        }

        // Pass 3: the blocks of every region.
        let mut free_blocks = 0;
        let mut free_bytes = 0;
        let mut live_blocks = page_runs;
        let mut live_bytes = run_bytes;
        let mut cached_seen = false;
        let mut node = self.first_node();
        while !node.is_null() {
            // SAFETY: pass 1 validated every indexed node.
            if unsafe { (*node).kind } == KIND_REGION {
                let walk = self.check_region(node)?;
                free_blocks += walk.free_blocks;
                free_bytes += walk.free_bytes;
                live_blocks += walk.live_blocks;
                live_bytes += walk.live_bytes;
                if walk.wholly_free {
                    if node != self.cached {
                        return Err(InvariantError::CachedRegionMismatch { addr: node.addr() });
                    }
                    cached_seen = true;
                }
            }
            node = Self::successor(node);
        }
        if !self.cached.is_null() && !cached_seen {
            return Err(InvariantError::CachedRegionMismatch {
                addr: self.cached.addr(),
            });
        }
        // Every free block was found in its bin, so equal counts mean the bins hold nothing else.
        if binned != free_blocks {
            return Err(InvariantError::BinCorrupt { addr: self.addr() });
        }

        let counters = [
            (self.regions, regions),
            (self.region_bytes, region_bytes),
            (self.free_bytes, free_bytes),
            (self.live_blocks, live_blocks),
            (self.live_bytes, live_bytes),
            (self.page_runs, page_runs),
            (self.page_run_pages, page_run_pages),
        ];
        if let Some(&(recorded, counted)) = counters.iter().find(|&&(kept, found)| kept != found) {
            return Err(InvariantError::CountMismatch {
                addr: self.addr(),
                recorded,
                counted,
            });
        }
        Ok(())
    }

    /// Address of this allocator (for errors about its own fields).
    fn addr(&self) -> usize {
        ptr::from_ref(self).addr()
    }

    /// Checks one index node's links and heap order.
    fn check_node(&self, node: *mut Mapping) -> Result<(), InvariantError> {
        // SAFETY: `node` was reached from the root through links whose back links are checked
        // here before the walk goes on.
        unsafe {
            let parent = (*node).parent;
            let linked = if parent.is_null() {
                self.root == node
            } else {
                ((*parent).left == node && node.addr() < parent.addr())
                    || ((*parent).right == node && node.addr() > parent.addr())
            };
            let heap_ordered = parent.is_null() || priority(parent) > priority(node);
            let children = [(*node).left, (*node).right]
                .iter()
                .all(|&child| child.is_null() || (*child).parent == node);
            if linked && heap_ordered && children {
                Ok(())
            } else {
                Err(InvariantError::ListCorrupt { addr: node.addr() })
            }
        }
    }

    /// Walks the blocks of one region.
    fn check_region(&self, region: *mut Mapping) -> Result<RegionWalk, InvariantError> {
        let mut walk = RegionWalk::default();
        let base = region.cast::<u8>();
        // SAFETY: `region` is an indexed region, so its `len` bytes are ours; every header read
        // is first checked to lie at or before the sentinel position.
        unsafe {
            let len = (*region).len;
            let end = Block(base.wrapping_add(len - HEADER));
            let mut block = Block(base.wrapping_add(REGION_HEADER));
            let mut prev_size = 0;
            let mut prev_free = false;
            let mut blocks = 0;
            loop {
                let Some(state) = block.checked_state() else {
                    return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                };
                if block.prev_size() != prev_size {
                    return Err(InvariantError::BoundaryTagMismatch { addr: block.addr() });
                }
                if state == END {
                    if block != end {
                        return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                    }
                    break;
                }
                let size = block.size();
                if size < MIN_BLOCK
                    || !size.is_multiple_of(GRANULE)
                    || size > end.addr() - block.addr()
                {
                    return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                }
                match state {
                    FREE => {
                        if prev_free {
                            return Err(InvariantError::NotCoalesced {
                                addr: block.addr() - prev_size,
                            });
                        }
                        if !self.in_bin(block, size) {
                            return Err(InvariantError::BinCorrupt { addr: block.addr() });
                        }
                        walk.free_blocks += 1;
                        walk.free_bytes += size;
                    }
                    USED => {
                        walk.live_blocks += 1;
                        walk.live_bytes += size - HEADER;
                    }
                    _ => return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() }),
                }
                prev_free = state == FREE;
                prev_size = size;
                blocks += 1;
                block = block.forward(size);
            }
            walk.wholly_free = blocks == 1 && walk.free_blocks == 1;
        }
        Ok(walk)
    }

    /// Is the free block `block` (of `size` bytes) in the bin of its size?
    fn in_bin(&self, block: Block, size: usize) -> bool {
        let (fl, sl) = bin_of(size);
        if fl >= FL_COUNT {
            return false;
        }
        let mut cur = self.bins[fl][sl];
        while !cur.is_null() {
            if cur == block.0 {
                return true;
            }
            // SAFETY: `check_invariants` validated every bin entry (and that the lists end)
            // before it walks regions, so `cur` is a free block of one of our regions.
            cur = unsafe { Block(cur).next_free() };
        }
        false
    }
}

/// What [`LargeAlloc::check_region`] found in one region.
#[derive(Default)]
struct RegionWalk {
    free_blocks: usize,
    free_bytes: usize,
    live_blocks: usize,
    live_bytes: usize,
    wholly_free: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::aligned_offset;
    use std::vec::Vec;

    // -------------------------------------------------------------------------------------
    // A page source over one fixed arena
    // -------------------------------------------------------------------------------------

    /// Hands out page runs (first fit) from one `std` allocation, tracks which pages are
    /// mapped, fills fresh pages with garbage and unmapped ones with poison, and can fail on
    /// purpose.
    struct Arena {
        base: *mut u8,
        mapped: Vec<bool>,
        mapped_count: usize,
        map_calls: usize,
        /// Fail one `map_pages` call in this many (0 = never).
        fail_one_in: u64,
        rng: Rng,
    }

    impl Arena {
        fn new(pages: usize) -> Self {
            let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: the layout has a non-zero size.
            let base = unsafe { std::alloc::alloc(layout) };
            assert!(!base.is_null());
            Self {
                base,
                mapped: vec![false; pages],
                mapped_count: 0,
                map_calls: 0,
                fail_one_in: 0,
                rng: Rng(0x1234_5678),
            }
        }

        fn contains(&self, ptr: NonNull<u8>) -> bool {
            let offset = ptr.addr().get().wrapping_sub(self.base.addr());
            offset < self.mapped.len() * PAGE_SIZE
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            let layout = Layout::from_size_align(self.mapped.len() * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.base, layout) };
        }
    }

    // SAFETY: runs are page-aligned pieces of one allocation, each handed out to one caller at a
    // time (the `mapped` bitmap), valid until unmapped or until the arena is dropped, which the
    // tests do only after they stopped using the memory.
    unsafe impl PageSource for Arena {
        fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
            if count == 0 {
                return Err(PageSourceError::InvalidRequest);
            }
            if self.fail_one_in != 0 && self.rng.below(self.fail_one_in) == 0 {
                return Err(PageSourceError::OutOfMemory);
            }
            let mut run = 0;
            for i in 0..self.mapped.len() {
                if self.mapped[i] {
                    run = 0;
                    continue;
                }
                run += 1;
                if run == count {
                    let start = i + 1 - count;
                    self.mapped[start..=i].iter_mut().for_each(|m| *m = true);
                    self.mapped_count += count;
                    self.map_calls += 1;
                    let ptr = self.base.wrapping_add(start * PAGE_SIZE);
                    // SAFETY: the pages are inside the arena and were not mapped.
                    unsafe { ptr.write_bytes(0xA5, count * PAGE_SIZE) };
                    return Ok(NonNull::new(ptr).unwrap());
                }
            }
            Err(PageSourceError::OutOfAddressSpace)
        }

        /// The first free run whose page `aligned_page` is aligned; maps only its pages.
        fn map_pages_aligned(
            &mut self,
            count: usize,
            align: usize,
            aligned_page: usize,
        ) -> Result<NonNull<u8>, PageSourceError> {
            aligned_slack(count, align, aligned_page)?;
            if self.fail_one_in != 0 && self.rng.below(self.fail_one_in) == 0 {
                return Err(PageSourceError::OutOfMemory);
            }
            let mut start = aligned_offset(self.base.addr(), align, aligned_page) / PAGE_SIZE;
            while start + count <= self.mapped.len() {
                if !self.mapped[start..start + count].contains(&true) {
                    self.mapped[start..start + count].fill(true);
                    self.mapped_count += count;
                    self.map_calls += 1;
                    let ptr = self.base.wrapping_add(start * PAGE_SIZE);
                    // SAFETY: the pages are inside the arena and were not mapped.
                    unsafe { ptr.write_bytes(0xA5, count * PAGE_SIZE) };
                    return Ok(NonNull::new(ptr).unwrap());
                }
                start += align / PAGE_SIZE;
            }
            Err(PageSourceError::OutOfAddressSpace)
        }

        unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
            let offset = ptr.addr().get() - self.base.addr();
            assert_eq!(offset % PAGE_SIZE, 0, "unmap of an unaligned address");
            let first = offset / PAGE_SIZE;
            for page in &mut self.mapped[first..first + count] {
                assert!(*page, "unmap of a page that is not mapped");
                *page = false;
            }
            self.mapped_count -= count;
            // SAFETY: the pages are inside the arena; the caller no longer uses them.
            unsafe { ptr.as_ptr().write_bytes(0xDD, count * PAGE_SIZE) };
        }

        fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
            let end = (ptr.addr().get() - self.base.addr()) / PAGE_SIZE + count;
            if end + extra > self.mapped.len() || self.mapped[end..end + extra].contains(&true) {
                return false;
            }
            self.mapped[end..end + extra].fill(true);
            self.mapped_count += extra;
            let tail = self.base.wrapping_add(end * PAGE_SIZE);
            // SAFETY: the pages are inside the arena and were not mapped.
            unsafe { tail.write_bytes(0xA5, extra * PAGE_SIZE) };
            true
        }
    }

    /// xorshift64*.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    // -------------------------------------------------------------------------------------
    // Helpers
    // -------------------------------------------------------------------------------------

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn pattern_word(seed: u64, index: usize) -> u64 {
        (seed ^ index as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17)
    }

    /// Fills `len` bytes at `ptr` with a pattern derived from `seed`.
    fn fill(ptr: NonNull<u8>, len: usize, seed: u64) {
        // SAFETY: the tests call this only on usable bytes of a live allocation.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
        let (words, rest) = bytes.as_chunks_mut::<8>();
        for (i, word) in words.iter_mut().enumerate() {
            *word = pattern_word(seed, i).to_le_bytes();
        }
        let last = pattern_word(seed, len / 8).to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// Checks the pattern of [`fill`] on the first `len` bytes at `ptr`.
    fn check(ptr: NonNull<u8>, len: usize, seed: u64) {
        // SAFETY: the tests call this only on usable bytes of a live allocation.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) };
        let (words, rest) = bytes.as_chunks::<8>();
        for (i, word) in words.iter().enumerate() {
            let expected = pattern_word(seed, i).to_le_bytes();
            assert_eq!(
                *word,
                expected,
                "block {ptr:p} corrupted near byte {}",
                i * 8
            );
        }
        let last = pattern_word(seed, len / 8).to_le_bytes();
        assert_eq!(
            rest,
            &last[..rest.len()],
            "block {ptr:p} corrupted at its tail"
        );
    }

    /// Pages the allocator says it holds.
    fn held_pages(stats: LargeStats) -> usize {
        stats.region_bytes / PAGE_SIZE + stats.page_run_pages
    }

    fn alloc(a: &mut LargeAlloc, src: &mut Arena, size: usize, align: usize) -> NonNull<u8> {
        let ptr = a.allocate(src, layout(size, align)).unwrap();
        assert_eq!(ptr.addr().get() % align.max(GRANULE), 0);
        a.check_invariants().unwrap();
        ptr
    }

    fn free(a: &mut LargeAlloc, src: &mut Arena, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: the tests free only live allocations, with their layout.
        unsafe { a.deallocate(src, ptr, layout(size, align)) };
        a.check_invariants().unwrap();
    }

    /// Free blocks in the bins (walks the lists).
    fn binned(a: &LargeAlloc) -> usize {
        let mut n = 0;
        for &head in a.bins.iter().flatten() {
            let mut cur = head;
            while !cur.is_null() {
                n += 1;
                // SAFETY: bins hold free blocks of live regions.
                cur = unsafe { Block(cur).next_free() };
            }
        }
        n
    }

    /// The smallest block size that belongs in bin `(fl, sl)`.
    fn bin_floor(fl: usize, sl: usize) -> usize {
        if fl == 0 {
            sl << GRANULE_LOG
        } else {
            let log = fl as u32 + FL_SHIFT - 1;
            (1 << log) + (sl << (log - SL_LOG))
        }
    }

    // -------------------------------------------------------------------------------------
    // Unit tests
    // -------------------------------------------------------------------------------------

    #[test]
    fn fits_in_root_page_budget() {
        assert!(
            size_of::<LargeAlloc>() <= 1536,
            "{}",
            size_of::<LargeAlloc>()
        );
        assert_eq!(REGION_HEADER, 48);
        assert_eq!(MAX_REGION, 68 * 1024);
    }

    #[test]
    fn bins_partition_sizes_and_search_finds_the_first_fitting_bin() {
        let step = if cfg!(miri) { 16 * 7 } else { GRANULE };
        let mut size = MIN_BLOCK;
        while size < BIN_LIMIT {
            let (fl, sl) = bin_of(size);
            assert!(fl < FL_COUNT && sl < SL_COUNT, "size {size}");
            assert!(bin_floor(fl, sl) <= size, "size {size} below its bin");
            let next = if sl + 1 < SL_COUNT {
                bin_floor(fl, sl + 1)
            } else {
                bin_floor(fl + 1, 0)
            };
            assert!(size < next, "size {size} above its bin");
            if let Some((fl, sl)) = search_bin(size) {
                assert!(
                    bin_floor(fl, sl) >= size,
                    "search for {size} gives a bin too small"
                );
                let (pfl, psl) = if sl > 0 {
                    (fl, sl - 1)
                } else {
                    (fl - 1, SL_COUNT - 1)
                };
                assert!(
                    bin_floor(pfl, psl) < size,
                    "search for {size} skips a fitting bin"
                );
            } else {
                assert!(size > bin_floor(FL_COUNT - 1, SL_COUNT - 1));
            }
            size += step;
        }
    }

    #[test]
    fn split_leaves_one_free_tail() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let s = a.stats();
        assert_eq!(s.regions, 1);
        assert_eq!(s.region_bytes, REGION_MIN);
        assert_eq!(s.live_blocks, 1);
        assert_eq!(s.live_bytes, 1008);
        assert_eq!(s.free_bytes, REGION_MIN - REGION_HEADER - HEADER - 1024);
        assert_eq!(s.largest_free, s.free_bytes);
        assert_eq!(binned(&a), 1);
        // SAFETY: `p` is live with this layout.
        assert_eq!(unsafe { a.usable_size(p, layout(1000, 8)) }, 1008);
        // The second block follows the first directly.
        let q = alloc(&mut a, &mut src, 200, 8);
        assert_eq!(q.addr().get() - p.addr().get(), 1024);
        free(&mut a, &mut src, q, 200, 8);
        free(&mut a, &mut src, p, 1000, 8);
    }

    #[test]
    fn free_coalesces_with_both_neighbours() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let x = alloc(&mut a, &mut src, 1000, 8);
        let y = alloc(&mut a, &mut src, 1000, 8);
        let z = alloc(&mut a, &mut src, 1000, 8);
        let w = alloc(&mut a, &mut src, 1000, 8);
        free(&mut a, &mut src, x, 1000, 8);
        assert_eq!(binned(&a), 2);
        free(&mut a, &mut src, z, 1000, 8);
        assert_eq!(binned(&a), 3);
        // y merges with x before it and z after it.
        free(&mut a, &mut src, y, 1000, 8);
        assert_eq!(binned(&a), 2);
        assert_eq!(
            a.stats().largest_free,
            REGION_MIN - REGION_HEADER - HEADER - 4 * 1024
        );
        // w merges with both sides too, emptying the region, which is cached.
        free(&mut a, &mut src, w, 1000, 8);
        assert_eq!(binned(&a), 1);
        let s = a.stats();
        assert_eq!((s.regions, s.live_blocks, s.live_bytes), (1, 0, 0));
        assert_eq!(s.free_bytes, REGION_MIN - REGION_HEADER - HEADER);
        a.release_cached(&mut src);
        a.check_invariants().unwrap();
        assert_eq!(a.stats(), LargeStats::default());
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn aligned_blocks_leave_their_gap_free() {
        let mut src = Arena::new(256);
        let mut a = LargeAlloc::new();
        let mut live = Vec::new();
        for shift in 5..=15 {
            let align = 1 << shift;
            let size = 200 + shift * 8;
            let p = alloc(&mut a, &mut src, size, align);
            fill(p, size, shift as u64);
            live.push((p, size, align));
        }
        for &(p, size, align) in &live {
            check(p, size, align.trailing_zeros() as u64);
            assert!(a.owns(p));
        }
        for (p, size, align) in live {
            free(&mut a, &mut src, p, size, align);
        }
        assert_eq!(a.stats().live_blocks, 0);
        assert!(a.stats().regions <= 1);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn a_sixteen_byte_gap_moves_the_block_up_by_one_alignment() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        // A 1024-byte block at region + 48 and a 48-byte one leave the free block at
        // region + 1120; the next 64-aligned payload, region + 1152, would leave a 16-byte gap,
        // too small for a block, so the block moves up to make the gap 16 + 64 bytes.
        let p = alloc(&mut a, &mut src, 1000, 8);
        let q = alloc(&mut a, &mut src, 32, 8);
        let r = alloc(&mut a, &mut src, 300, 64);
        assert_eq!(r.addr().get() % 64, 0);
        let gap = r.addr().get() - HEADER - (q.addr().get() + 32);
        assert_eq!(gap, 80);
        assert_eq!(binned(&a), 2);
        free(&mut a, &mut src, p, 1000, 8);
        free(&mut a, &mut src, q, 32, 8);
        free(&mut a, &mut src, r, 300, 64);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn wholly_free_regions_are_returned_but_one_is_cached() {
        let mut src = Arena::new(256);
        let mut a = LargeAlloc::new();
        let live: Vec<_> = (0..24).map(|_| alloc(&mut a, &mut src, 6000, 8)).collect();
        assert!(a.stats().regions >= 2);
        for p in live {
            free(&mut a, &mut src, p, 6000, 8);
        }
        assert_eq!(a.stats().regions, 1);
        assert_eq!(src.mapped_count, REGION_MIN / PAGE_SIZE);
        // The cached region serves the next request without a new mapping.
        let calls = src.map_calls;
        let p = alloc(&mut a, &mut src, 5000, 8);
        assert_eq!(src.map_calls, calls);
        free(&mut a, &mut src, p, 5000, 8);
        a.release_cached(&mut src);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
        assert_eq!(a.stats(), LargeStats::default());
    }

    #[test]
    fn oversize_regions_are_never_cached() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        // Footprint just below the threshold: the block needs more than a standard region.
        let p = alloc(&mut a, &mut src, 65_500, 8);
        assert_eq!(a.stats().region_bytes, 68 * 1024);
        assert_eq!(a.stats().page_runs, 0);
        free(&mut a, &mut src, p, 65_500, 8);
        assert_eq!(a.stats().regions, 0);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn probe_reuses_the_cached_region_just_above_a_sub_bin_boundary() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 500, 8);
        free(&mut a, &mut src, p, 500, 8);
        let calls = src.map_calls;
        // Needs a 62_000-byte block: the good-fit search rounds that past the bin of the cached
        // 65_472-byte block.
        assert!(search_bin(62_000).unwrap() > bin_of(REGION_MIN - REGION_HEADER - HEADER));
        let size = 62_000 - HEADER;
        let q = alloc(&mut a, &mut src, size, 8);
        assert_eq!(src.map_calls, calls);
        free(&mut a, &mut src, q, size, 8);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn page_runs_map_exactly_what_they_need() {
        let mut src = Arena::new(1024);
        let mut a = LargeAlloc::new();
        // The threshold: 65_535 bytes still go to a region, 65_536 to a run.
        let p = alloc(&mut a, &mut src, 65_536, 8);
        assert_eq!(p.addr().get() % PAGE_SIZE, 0);
        let s = a.stats();
        assert_eq!((s.page_runs, s.page_run_pages, s.regions), (1, 17, 0));
        assert_eq!(src.mapped_count, 17);
        fill(p, 65_536, 1);
        // A small block with a large alignment is a run too.
        let q = alloc(&mut a, &mut src, 100, 64 * 1024);
        assert_eq!(a.stats().page_runs, 2);
        assert_eq!(src.mapped_count, 17 + 2);
        // An alignment far above the page size: the source places the run, and maps only its
        // pages. (Smaller under Miri, which is slow at patterning bytes.)
        let big = if cfg!(miri) { 1 << 17 } else { 1 << 20 };
        let r = alloc(&mut a, &mut src, big, big);
        assert_eq!(r.addr().get() % big, 0);
        assert_eq!(src.mapped_count, 17 + 2 + 1 + big / PAGE_SIZE);
        fill(r, big, 2);
        for ptr in [p, q, r] {
            assert!(a.owns(ptr));
            assert!(!a.owns(NonNull::new(ptr.as_ptr().wrapping_add(PAGE_SIZE)).unwrap()));
            assert!(!a.owns(NonNull::new(ptr.as_ptr().wrapping_sub(PAGE_SIZE)).unwrap()));
        }
        // SAFETY: `r` is live with this layout.
        let usable = unsafe { a.usable_size(r, layout(big, big)) };
        assert_eq!(usable, big);
        check(p, 65_536, 1);
        check(r, big, 2);
        free(&mut a, &mut src, p, 65_536, 8);
        free(&mut a, &mut src, q, 100, 64 * 1024);
        free(&mut a, &mut src, r, big, big);
        assert_eq!(a.stats(), LargeStats::default());
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn resize_in_place_of_region_blocks() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 4000, 8);
        let q = alloc(&mut a, &mut src, 1000, 8);
        fill(p, 4000, 7);
        // SAFETY: `p` and `q` are live with the layouts passed.
        unsafe {
            // Shrink: the tail becomes a free block (its successor q is used).
            assert!(a.resize_in_place(&mut src, p, layout(4000, 8), 1000));
            a.check_invariants().unwrap();
            assert_eq!(a.usable_size(p, layout(1000, 8)), 1008);
            check(p, 1000, 7);
            // Grow back into the freed tail.
            assert!(a.resize_in_place(&mut src, p, layout(1000, 8), 3000));
            a.check_invariants().unwrap();
            assert!(a.usable_size(p, layout(3000, 8)) >= 3000);
            check(p, 1000, 7);
            // Growing past the used successor fails and changes nothing.
            let before = a.stats();
            assert!(!a.resize_in_place(&mut src, p, layout(3000, 8), 5000));
            assert!(!a.resize_in_place(&mut src, p, layout(3000, 8), usize::MAX));
            assert_eq!(a.stats(), before);
            // q grows into the free rest of the region.
            assert!(a.resize_in_place(&mut src, q, layout(1000, 8), 30_000));
            a.check_invariants().unwrap();
            // A shrink too small to split off a block is a no-op success.
            assert!(a.resize_in_place(&mut src, q, layout(30_000, 8), 29_990));
            a.check_invariants().unwrap();
        }
        free(&mut a, &mut src, p, 3000, 8);
        free(&mut a, &mut src, q, 29_990, 8);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn resize_in_place_of_page_runs() {
        let mut src = Arena::new(256);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 200_000, 8);
        fill(p, 200_000, 3);
        let pages = src.mapped_count;
        // SAFETY: `p` is live with the layouts passed.
        unsafe {
            assert!(a.resize_in_place(&mut src, p, layout(200_000, 8), 100_000));
            a.check_invariants().unwrap();
            assert_eq!(src.mapped_count, pages - (49 - 25));
            check(p, 100_000, 3);
            // The freed tail is still free: the run grows back in place, contents kept.
            assert!(a.resize_in_place(&mut src, p, layout(100_000, 8), 200_000));
            a.check_invariants().unwrap();
            assert_eq!(src.mapped_count, pages);
            assert_eq!(a.stats().page_run_pages, pages);
            check(p, 100_000, 3);
            fill(p, 200_000, 4);
            // A run mapped right after blocks further growth; nothing changes.
            let q = alloc(&mut a, &mut src, 100_000, 8);
            assert_eq!(q.addr().get(), p.addr().get() + 50 * PAGE_SIZE);
            let before = a.stats();
            assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), 300_000));
            assert!(!a.resize_in_place(&mut src, p, layout(200_000, 8), usize::MAX));
            assert_eq!(a.stats(), before);
            free(&mut a, &mut src, q, 100_000, 8);
            // A run stays a run below the threshold too, and is still freed as one.
            assert!(a.resize_in_place(&mut src, p, layout(200_000, 8), 1000));
            assert_eq!(a.stats().page_run_pages, 2);
        }
        check(p, 1000, 4);
        free(&mut a, &mut src, p, 1000, 8);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn failures_change_nothing() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let before = a.stats();
        src.fail_one_in = 1;
        // Served from the existing region: no page source call.
        let q = alloc(&mut a, &mut src, 1000, 8);
        free(&mut a, &mut src, q, 1000, 8);
        assert_eq!(a.stats(), before);
        for (size, align) in [(65_000, 8), (31_700, 32_768), (1 << 20, 8), (100, 1 << 20)] {
            let l = layout(size, align);
            let err = a.allocate(&mut src, l).unwrap_err();
            let cause = PageSourceError::OutOfMemory;
            assert_eq!(err, AllocError::OutOfPages { layout: l, cause });
            assert_eq!(a.stats(), before);
            a.check_invariants().unwrap();
        }
        // The arena is too small: the source runs out of address space.
        src.fail_one_in = 0;
        let err = a.allocate(&mut src, layout(1 << 24, 8)).unwrap_err();
        assert!(matches!(
            err,
            AllocError::OutOfPages {
                cause: PageSourceError::OutOfAddressSpace,
                ..
            }
        ));
        // Sizes whose page count overflows.
        let huge = [
            layout(isize::MAX as usize & !(PAGE_SIZE - 1), PAGE_SIZE),
            layout(1 << 62, 1 << 62),
        ];
        for l in huge {
            assert_eq!(
                a.allocate(&mut src, l),
                Err(AllocError::TooLarge { layout: l })
            );
        }
        assert_eq!(a.stats(), before);
        free(&mut a, &mut src, p, 1000, 8);
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn owns_recognises_only_live_block_starts() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let q = alloc(&mut a, &mut src, 1000, 4096);
        assert!(a.owns(p) && a.owns(q));
        let region = NonNull::new(p.as_ptr().wrapping_sub(REGION_HEADER + HEADER)).unwrap();
        assert!(!a.owns(region));
        assert!(!a.owns(NonNull::new(p.as_ptr().wrapping_add(16)).unwrap()));
        assert!(!a.owns(NonNull::new(p.as_ptr().wrapping_add(1)).unwrap()));
        let elsewhere = 0u128;
        assert!(!a.owns(NonNull::from(&elsewhere).cast()));
        free(&mut a, &mut src, p, 1000, 8);
        assert!(!a.owns(p));
        assert!(a.owns(q));
        free(&mut a, &mut src, q, 1000, 4096);
        a.release_cached(&mut src);
        assert!(!a.owns(q));
    }

    #[test]
    fn many_regions_keep_the_index_valid() {
        let n = if cfg!(miri) { 12 } else { 100 };
        let mut src = Arena::new(n * 16 + 16);
        let mut a = LargeAlloc::new();
        // 40 KB blocks: one per region.
        let mut live: Vec<_> = (0..n).map(|_| alloc(&mut a, &mut src, 40_000, 8)).collect();
        assert_eq!(a.stats().regions, n);
        let mut rng = Rng(99);
        while !live.is_empty() {
            let p = live.swap_remove(rng.below(live.len() as u64) as usize);
            assert!(a.owns(p));
            free(&mut a, &mut src, p, 40_000, 8);
        }
        a.release_cached(&mut src);
        assert_eq!(src.mapped_count, 0);
    }

    #[test]
    fn checker_reports_damage() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let q = alloc(&mut a, &mut src, 1000, 8);
        let header = Block::from_user(q);
        let word = header.0.wrapping_add(8).cast::<usize>();
        // SAFETY: `q` is live and its header is ours to damage; it is restored before q is
        // freed.
        unsafe {
            let saved = word.read();
            header.set(2048, USED);
            assert!(a.check_invariants().is_err());
            word.write(saved ^ (1 << TAG_SHIFT));
            let addr = header.addr();
            assert_eq!(
                a.check_invariants(),
                Err(InvariantError::LargeHeaderCorrupt { addr })
            );
            word.write(saved);
        }
        a.live_bytes += 1;
        assert!(matches!(
            a.check_invariants(),
            Err(InvariantError::CountMismatch { .. })
        ));
        a.live_bytes -= 1;
        a.check_invariants().unwrap();
        free(&mut a, &mut src, p, 1000, 8);
        free(&mut a, &mut src, q, 1000, 8);
        a.release_cached(&mut src);
    }

    #[cfg(feature = "debug-checks")]
    #[test]
    #[should_panic(expected = "kheap: double free of large block 0x")]
    fn double_free_of_a_block_is_caught() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let _q = alloc(&mut a, &mut src, 1000, 8);
        free(&mut a, &mut src, p, 1000, 8);
        free(&mut a, &mut src, p, 1000, 8);
    }

    #[cfg(feature = "debug-checks")]
    #[test]
    #[should_panic(expected = "kheap: double free of large block 0x")]
    fn double_free_of_a_merged_block_is_caught() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 1000, 8);
        let q = alloc(&mut a, &mut src, 1000, 8);
        let _r = alloc(&mut a, &mut src, 1000, 8);
        free(&mut a, &mut src, p, 1000, 8);
        // q merges into p's free block.
        free(&mut a, &mut src, q, 1000, 8);
        free(&mut a, &mut src, q, 1000, 8);
    }

    #[cfg(feature = "debug-checks")]
    #[test]
    #[should_panic(expected = "kheap: double free of large block 0x")]
    fn double_free_of_a_page_run_is_caught() {
        let mut src = Arena::new(64);
        let mut a = LargeAlloc::new();
        let p = alloc(&mut a, &mut src, 100_000, 8);
        free(&mut a, &mut src, p, 100_000, 8);
        free(&mut a, &mut src, p, 100_000, 8);
    }

    // -------------------------------------------------------------------------------------
    // Randomized test
    // -------------------------------------------------------------------------------------

    struct Live {
        ptr: NonNull<u8>,
        layout: Layout,
        seed: u64,
    }

    /// Random allocations (sizes 100 B .. `max_size`, alignments 8 .. 64 KiB), frees and
    /// in-place resizes against a source that fails one call in `fail_one_in`; every byte of
    /// every block is patterned and checked, and the invariants are checked after every
    /// operation.
    fn random_workout(
        seed: u64,
        steps: usize,
        max_size: usize,
        arena_pages: usize,
        fail_one_in: u64,
    ) {
        let mut src = Arena::new(arena_pages);
        src.fail_one_in = fail_one_in;
        src.rng = Rng(seed ^ 0xDEAD_BEEF);
        let mut a = LargeAlloc::new();
        let mut rng = Rng(seed);
        let mut live: Vec<Live> = Vec::new();
        let max_log = usize::BITS - max_size.leading_zeros();
        let (mut allocs, mut failures, mut resized) = (0, 0, 0);
        for step in 0..steps {
            let action = rng.below(10);
            if live.is_empty() || (action < 5 && live.len() < 48) {
                // Log-uniform sizes, so that small blocks are as well covered as page runs.
                let bits = 7 + rng.below(u64::from(max_log - 6)) as u32;
                let size = (rng.below(1 << bits) as usize).clamp(100, max_size);
                let align_steps = if rng.below(4) == 0 { 14 } else { 4 };
                let align = 8usize << rng.below(align_steps);
                let l = layout(size, align);
                let before = a.stats();
                match a.allocate(&mut src, l) {
                    Ok(ptr) => {
                        allocs += 1;
                        assert_eq!(ptr.addr().get() % align, 0);
                        assert!(src.contains(ptr));
                        assert!(a.owns(ptr));
                        // SAFETY: `ptr` is live with layout `l`.
                        assert!(unsafe { a.usable_size(ptr, l) } >= size);
                        let seed = rng.next();
                        fill(ptr, size, seed);
                        live.push(Live {
                            ptr,
                            layout: l,
                            seed,
                        });
                    }
                    Err(AllocError::OutOfPages { .. }) => {
                        failures += 1;
                        assert_eq!(a.stats(), before, "a failed allocation changed the state");
                    }
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            } else if action < 8 {
                let block = live.swap_remove(rng.below(live.len() as u64) as usize);
                check(block.ptr, block.layout.size(), block.seed);
                // SAFETY: the block is live with this layout.
                unsafe { a.deallocate(&mut src, block.ptr, block.layout) };
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let block = &mut live[i];
                let old = block.layout.size();
                let new_size = match rng.below(3) {
                    0 => (old / 2).max(100),
                    1 => old + rng.below(4096) as usize,
                    _ => (rng.below(max_size as u64) as usize).max(100),
                };
                // SAFETY: the block is live with this layout.
                if unsafe { a.resize_in_place(&mut src, block.ptr, block.layout, new_size) } {
                    resized += 1;
                    check(block.ptr, old.min(new_size), block.seed);
                    block.layout = layout(new_size, block.layout.align());
                    // SAFETY: as above, with the new layout.
                    assert!(unsafe { a.usable_size(block.ptr, block.layout) } >= new_size);
                    block.seed = rng.next();
                    fill(block.ptr, new_size, block.seed);
                } else {
                    check(block.ptr, old, block.seed);
                }
            }
            if let Err(e) = a.check_invariants() {
                panic!("step {step}: {e}");
            }
            assert_eq!(held_pages(a.stats()), src.mapped_count, "step {step}");
            if step % 64 == 0 {
                for block in &live {
                    check(block.ptr, block.layout.size(), block.seed);
                }
            }
        }
        assert!(
            allocs > steps / 8 && failures > 0 && resized > 0,
            "{allocs} allocations, {failures} failures, {resized} resizes"
        );
        for block in live.drain(..) {
            check(block.ptr, block.layout.size(), block.seed);
            // SAFETY: the block is live with this layout.
            unsafe { a.deallocate(&mut src, block.ptr, block.layout) };
            a.check_invariants().unwrap();
        }
        let s = a.stats();
        assert!(s.regions <= 1 && s.page_runs == 0 && s.live_blocks == 0 && s.live_bytes == 0);
        a.release_cached(&mut src);
        a.check_invariants().unwrap();
        assert_eq!(a.stats(), LargeStats::default());
        assert_eq!(src.mapped_count, 0, "pages left mapped");
    }

    #[test]
    fn random_alloc_free_resize_with_a_failing_source() {
        if cfg!(miri) {
            random_workout(1, 100, 80 * 1024, 1024, 3);
        } else {
            for seed in 1..=6 {
                random_workout(seed, 3000, 1 << 20, 32 * 1024, 10);
            }
        }
    }
}
