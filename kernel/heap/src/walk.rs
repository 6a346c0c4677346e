//! What [`Heap::visit`](crate::Heap::visit) reports: one [`Item`] per root run, chunk, large
//! region, region block and page run — the heap's occupancy, for pictures and reports.
//!
//! Items are plain `Copy` values with addresses as numbers (nothing to dereference), produced
//! during a read-only walk that allocates nothing, so a kernel can print them over serial while
//! it holds the heap lock.
#![deny(unsafe_code)]

use crate::pool::PoolId;

/// Who a chunk serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A general size class (its index in [`size_class::CLASS_SIZES`](crate::size_class::CLASS_SIZES)).
    Class(usize),
    /// A user pool.
    Pool(PoolId),
}

/// Which chain a root run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// The chunk-descriptor chain (its first run also holds the heap state).
    Descriptors,
    /// The pool-header chain.
    Pools,
}

/// One part of the heap, in the order [`Heap::visit`](crate::Heap::visit) walks them: root runs,
/// then the chunks of each class and pool, then the large allocator's mappings in address order
/// (each region followed by its blocks), then the page map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A root run: `pages` pages at `addr`, with `live` of its `slots` slots in use.
    RootRun {
        /// Address of the run.
        addr: usize,
        /// Its length in pages.
        pages: usize,
        /// Its chain.
        kind: RootKind,
        /// Slots in use.
        live: usize,
        /// Slots it has room for.
        slots: usize,
    },
    /// A chunk: the page at `addr`, cut into `capacity` blocks of `block_size` bytes, `used` of
    /// them handed out (blocks a magazine holds count as used here: they keep the chunk).
    Chunk {
        /// Address of the chunk page.
        addr: usize,
        /// The class or pool it serves.
        owner: Owner,
        /// Block size (stride) in bytes.
        block_size: usize,
        /// Blocks handed out.
        used: usize,
        /// Blocks it holds.
        capacity: usize,
    },
    /// A large-allocator region of `bytes` bytes at `addr`; its blocks follow as
    /// [`Item::RegionBlock`]s.
    Region {
        /// Address of the region (its header).
        addr: usize,
        /// Its length in bytes.
        bytes: usize,
    },
    /// One block of the region reported last: `bytes` bytes (header included) at `addr`, free or
    /// in use. The blocks of a region tile it, after the region's header.
    RegionBlock {
        /// Address of the block (its header).
        addr: usize,
        /// Its size in bytes, header included.
        bytes: usize,
        /// Whether it is free (a hole).
        free: bool,
    },
    /// A page run of the large allocator: `pages` pages at `addr`; the first holds the run's
    /// bookkeeping (64 bytes) and, unless the run is aligned to a page or more, the start of its
    /// data.
    PageRun {
        /// Address of the run.
        addr: usize,
        /// Its length in pages, the first included.
        pages: usize,
    },
    /// The page map: `nodes` pages of radix-tree nodes.
    PageMap {
        /// Its nodes (one page each).
        nodes: usize,
    },
}
