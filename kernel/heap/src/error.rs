//! Typed errors of the heap's operations. They become a null pointer only at the `GlobalAlloc`
//! boundary (in `locked`).

use core::alloc::Layout;
use core::fmt;

use crate::source::PageSourceError;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The page source could not supply the pages the request needed.
    OutOfPages {
        /// The request that failed.
        layout: Layout,
        /// What the page source said.
        cause: PageSourceError,
    },
    /// The request can never be satisfied: its size rounded up to its alignment and to whole pages
    /// overflows the address space.
    TooLarge {
        /// The request that failed.
        layout: Layout,
    },
    /// The heap has not been given its page source yet (see `LockedHeap::init`).
    Uninitialized,
    /// A pool allocation named a pool that does not exist (never created, or destroyed since).
    NoSuchPool,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfPages { layout, cause } => write!(
                f,
                "cannot allocate {} bytes aligned to {}: {cause}",
                layout.size(),
                layout.align()
            ),
            Self::TooLarge { layout } => write!(
                f,
                "cannot allocate {} bytes aligned to {}: request too large",
                layout.size(),
                layout.align()
            ),
            Self::Uninitialized => f.write_str("heap used before it was initialized"),
            Self::NoSuchPool => f.write_str("allocation from a pool that does not exist"),
        }
    }
}

/// Why `LockedHeap::init` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The heap already has its page source; a second `init` would forget the first one.
    AlreadyInitialized,
    /// The page source could not supply the heap's first root page.
    OutOfPages(PageSourceError),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInitialized => f.write_str("heap initialized twice"),
            Self::OutOfPages(cause) => write!(f, "cannot map the heap's root page: {cause}"),
        }
    }
}

/// Why a user pool could not be created or destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// Block size zero, larger than a chunk, or an alignment that is not a power of two or that a
    /// one-page chunk cannot honour.
    InvalidBlockLayout {
        /// The requested block size.
        size: usize,
        /// The requested block alignment.
        align: usize,
    },
    /// A new root page was needed for the pool header and the page source refused it.
    OutOfPages(PageSourceError),
    /// The pool handle does not name a live pool of this heap.
    NoSuchPool,
    /// The pool still has blocks in use, so destroying it would leave dangling pointers.
    PoolInUse {
        /// Number of blocks still allocated from the pool.
        live_blocks: usize,
    },
    /// The heap has not been given its page source yet (see `LockedHeap::init`).
    Uninitialized,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBlockLayout { size, align } => {
                write!(f, "invalid pool block layout: size {size}, align {align}")
            }
            Self::OutOfPages(cause) => write!(f, "cannot create pool: {cause}"),
            Self::NoSuchPool => f.write_str("no such pool"),
            Self::PoolInUse { live_blocks } => {
                write!(f, "pool still has {live_blocks} live blocks")
            }
            Self::Uninitialized => f.write_str("heap used before it was initialized"),
        }
    }
}

/// A broken heap invariant, found by a `check_invariants` walk (`Heap::check_invariants` and the
/// large allocator's checker). Every variant names the address where the walk noticed the problem
/// (a block, a chunk page, a descriptor, a root page or a region), so that a report can be matched
/// against a memory dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantError {
    /// A root page's header is damaged: wrong magic, a slot cursor beyond the page, or a broken
    /// chain of root pages.
    RootPageCorrupt {
        /// Address of the root page.
        addr: usize,
    },
    /// A metadata slot (chunk descriptor or pool header) holds an impossible value: unknown kind,
    /// a chunk cursor beyond the chunk, a descriptor that names the wrong pool.
    DescriptorCorrupt {
        /// Address of the descriptor or pool header.
        addr: usize,
    },
    /// A free list of blocks leaves its chunk or region, is misaligned for its block size, loops,
    /// or links a block that is in use.
    FreeListCorrupt {
        /// Address of the offending link (the block that holds it, or the chunk if it is the head).
        addr: usize,
    },
    /// A doubly linked list (a pool's partial/full/empty chunk list, a bin of the large allocator)
    /// has a `prev` link that does not point back, or holds a member that does not belong on it.
    ListCorrupt {
        /// Address of the list member where the damage was seen.
        addr: usize,
    },
    /// A counter disagrees with what the walk counted.
    CountMismatch {
        /// Address of the structure that holds the counter.
        addr: usize,
        /// The value the counter holds.
        recorded: usize,
        /// The value the walk found.
        counted: usize,
    },
    /// Two blocks, chunks or regions that must be disjoint overlap.
    Overlap {
        /// Start of the first one.
        addr: usize,
        /// Start of the one it overlaps.
        other: usize,
    },
    /// The page map does not describe a page the way its owner does (a chunk whose page-map entry
    /// names another descriptor, a mapped page the map does not know, or an entry for a page that
    /// nobody owns).
    PageMapMismatch {
        /// Address of the page.
        addr: usize,
    },
    /// A block is not aligned as its size class or pool promises.
    Misaligned {
        /// Address of the block.
        addr: usize,
        /// The alignment it should have.
        align: usize,
    },
    /// A large block's header is damaged: wrong magic or state, or a size that runs past its
    /// region.
    LargeHeaderCorrupt {
        /// Address of the block header.
        addr: usize,
    },
    /// A large block's boundary tag (footer or the next block's prev-size) disagrees with its
    /// header.
    BoundaryTagMismatch {
        /// Address of the block.
        addr: usize,
    },
    /// Two free large blocks are neighbours, so a free did not coalesce.
    NotCoalesced {
        /// Address of the first of the two blocks.
        addr: usize,
    },
    /// A free large block sits in the wrong bin, a bin holds a block in use, or the bin bitmap
    /// disagrees with which bins are empty.
    BinCorrupt {
        /// Address of the block (or of the allocator, for a bitmap mismatch).
        addr: usize,
    },
    /// The bytes of the large allocator's wholly free regions differ from what it records as
    /// idle, or pass its idle limit.
    CachedRegionMismatch {
        /// Address of the region.
        addr: usize,
    },
}

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::RootPageCorrupt { addr } => write!(f, "root page {addr:#x} is corrupt"),
            Self::DescriptorCorrupt { addr } => {
                write!(f, "descriptor or pool header {addr:#x} is corrupt")
            }
            Self::FreeListCorrupt { addr } => write!(f, "free list corrupt at {addr:#x}"),
            Self::ListCorrupt { addr } => write!(f, "list corrupt at {addr:#x}"),
            Self::CountMismatch {
                addr,
                recorded,
                counted,
            } => write!(
                f,
                "counter at {addr:#x} records {recorded} but the walk counted {counted}"
            ),
            Self::Overlap { addr, other } => write!(f, "{addr:#x} overlaps {other:#x}"),
            Self::PageMapMismatch { addr } => {
                write!(f, "page map entry of page {addr:#x} is wrong")
            }
            Self::Misaligned { addr, align } => {
                write!(f, "block {addr:#x} is not aligned to {align}")
            }
            Self::LargeHeaderCorrupt { addr } => {
                write!(f, "large block header {addr:#x} is corrupt")
            }
            Self::BoundaryTagMismatch { addr } => {
                write!(
                    f,
                    "boundary tag of large block {addr:#x} disagrees with its header"
                )
            }
            Self::NotCoalesced { addr } => {
                write!(
                    f,
                    "free large block {addr:#x} has a free neighbour (not coalesced)"
                )
            }
            Self::BinCorrupt { addr } => write!(f, "large-allocator bin corrupt at {addr:#x}"),
            Self::CachedRegionMismatch { addr } => write!(
                f,
                "large-allocator idle regions (last seen {addr:#x}) do not match the idle byte \
                 count, or pass the idle limit"
            ),
        }
    }
}
