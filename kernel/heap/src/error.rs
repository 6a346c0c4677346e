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
        }
    }
}
