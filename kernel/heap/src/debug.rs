//! Debug checks (feature `debug-checks`): catching invalid frees at the point of the bug.
//!
//! With the feature on, every free is checked before it touches any list or magazine:
//!
//! * the pointer must lie in a page the heap owns, of the right kind (chunk for a class or pool
//!   free, large page for a large free) — one page-map lookup;
//! * it must belong to the pool the layout or pool handle names (the chunk descriptor's pool);
//! * it must be the start of a block (not an interior pointer);
//! * the block must be allocated: list chunks keep a 512-bit allocated bitmap in the descriptor
//!   (set on alloc, cleared on free), tiny chunks use their free bitmap, and the large allocator
//!   checks its block header. A block a general class's magazine holds is marked free in the
//!   bitmap while it is cached (the heap sets the bit again when it hands the block out), so a
//!   second free of it is caught whether it is still cached or already back in its chunk.
//!
//! A failed check panics with a message that names the address, the class or pool, and what is
//! wrong, e.g. `kheap: double free of 0x5000 (class 64 B)`. All checks are O(1).
//!
//! With the feature off, [`bad_free`] compiles to nothing and the descriptor has no bitmap.
//!
//! This module is where further debugging aids belong (poisoning freed blocks, red zones,
//! sampled guard pages): they hook into the same free and alloc paths.
#![deny(unsafe_code)]

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::pagemap::Entry;
#[cfg(feature = "debug-checks")]
use crate::pool::Pool;

/// Who a free was addressed to, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A general size class of this block size.
    Class {
        /// Block size in bytes.
        size: usize,
    },
    /// A user pool.
    Pool {
        /// The pool's generation number (its id).
        generation: u32,
        /// Block size in bytes.
        size: usize,
    },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Class { size } => write!(f, "class {size} B"),
            Self::Pool { generation, size } => write!(f, "pool #{generation}, {size} B blocks"),
        }
    }
}

/// What is wrong with a free.
#[cfg_attr(not(feature = "debug-checks"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The page is not a chunk page; the entry says what it is.
    NotHeap(Entry),
    /// The block belongs to another pool.
    #[cfg(feature = "debug-checks")]
    WrongPool(*mut Pool),
    /// Not the start of a block; the block starts here.
    Interior(usize),
    /// The block is not allocated.
    DoubleFree,
}

/// Reports an invalid free of a class or pool block: panics with `debug-checks`, does nothing
/// without (the caller then leaves the heap untouched).
#[inline(always)]
pub fn bad_free(ptr: NonNull<u8>, owner: Owner, fault: Fault) {
    #[cfg(feature = "debug-checks")]
    report(ptr, owner, fault);
    #[cfg(not(feature = "debug-checks"))]
    let _ = (ptr, owner, fault);
}

#[cfg(feature = "debug-checks")]
#[cold]
#[inline(never)]
#[track_caller]
fn report(ptr: NonNull<u8>, owner: Owner, fault: Fault) -> ! {
    let addr = ptr.addr().get();
    match fault {
        Fault::NotHeap(Entry::Empty) => {
            panic!("kheap: free of {addr:#x}, which is not a heap block ({owner})")
        }
        Fault::NotHeap(Entry::Root(_)) => {
            panic!("kheap: free of {addr:#x}, which points into a heap root page ({owner})")
        }
        Fault::NotHeap(_) => {
            panic!("kheap: free of {addr:#x} as {owner}, but it is a large block (wrong layout?)")
        }
        Fault::WrongPool(actual) => {
            // SAFETY: `actual` is the pool recorded in a live chunk descriptor, so it is live;
            // only its geometry is read.
            #[allow(unsafe_code)]
            let size = unsafe { (*actual).geo.stride };
            panic!(
                "kheap: free of {addr:#x} as {owner}, but it belongs to a pool of {size} B blocks \
                 (wrong layout or pool?)"
            )
        }
        Fault::Interior(block) => panic!(
            "kheap: free of interior pointer {addr:#x} ({owner}, block starts at {block:#x})"
        ),
        Fault::DoubleFree => panic!("kheap: double free of {addr:#x} ({owner})"),
    }
}

/// Reports an invalid free of a large block: panics with `debug-checks`.
#[inline(always)]
pub fn bad_large_free(ptr: NonNull<u8>, layout: Layout, entry: Entry) {
    #[cfg(feature = "debug-checks")]
    report_large(ptr, layout, entry);
    #[cfg(not(feature = "debug-checks"))]
    let _ = (ptr, layout, entry);
}

#[cfg(feature = "debug-checks")]
#[cold]
#[inline(never)]
#[track_caller]
fn report_large(ptr: NonNull<u8>, layout: Layout, entry: Entry) -> ! {
    let addr = ptr.addr().get();
    let (size, align) = (layout.size(), layout.align());
    match entry {
        Entry::Large(_) => panic!(
            "kheap: double free of large block {addr:#x} (size {size}, align {align}), or not a \
             block start"
        ),
        Entry::Empty => panic!(
            "kheap: free of {addr:#x} (size {size}, align {align}), which is not a heap block"
        ),
        _ => panic!(
            "kheap: free of {addr:#x} as a large block (size {size}, align {align}), but it is in \
             a chunk or root page (wrong layout?)"
        ),
    }
}

/// Whether the debug checks are compiled in (feature `debug-checks`). Checks written as
/// `if !ENABLED { return; }` hooks cost nothing without the feature.
pub const ENABLED: bool = cfg!(feature = "debug-checks");
