//! Debug checks (feature `debug-checks`): catching invalid frees at the point of the bug.
//!
//! With the feature on, every free is checked before it touches any list or magazine:
//!
//! * the pointer must lie in a page the heap owns, of the right kind (chunk for a class or pool
//!   free, large page for a large free) — one page-map lookup;
//! * it must belong to the class or pool the layout or pool id names (the chunk descriptor
//!   records its owner);
//! * it must be the start of a block (not an interior pointer);
//! * the block must be allocated: list chunks keep a 512-bit allocated bitmap in the descriptor
//!   (set on alloc, cleared on free), tiny chunks use their free bitmap, and the large allocator
//!   checks its block header. A block a magazine holds is marked free in the bitmap while it is
//!   cached (the heap sets the bit again when it hands the block out), so a second free of it is
//!   caught whether it is still cached or already back in its chunk.
//!
//! A failed check panics with a message that names the address, the class or pool, and what is
//! wrong, e.g. `kheap: double free of 0x5000 (class 64 B)`. All checks are O(1).
//!
//! The checks are *hooks*: functions that the allocation and free paths call unconditionally and
//! that do nothing without the feature, so those paths carry no `cfg`. A hook starts with
//! `if !ENABLED { return; }` (its code compiles either way and folds away without the feature);
//! only `chunk::ChunkDebug`, the descriptor's owner and allocated bitmap, has two definitions,
//! the one without the feature taking no bytes. This module holds the reports; each layer keeps
//! the hooks that read its own data: `ChunkDebug`, `back::check_block` and
//! `Back::mark_taken` (a block against its chunk), the large allocator's `check_free`, and the
//! heap's check of a pointer before `reallocate` and for the red-zone wrapper.
//!
//! This module is where further debugging aids belong (poisoning freed blocks, red zones,
//! sampled guard pages): they hook into the same free and alloc paths.
#![deny(unsafe_code)]

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::pagemap::Entry;

/// Whether the debug checks are compiled in (feature `debug-checks`). A hook whose code compiles
/// either way starts with `if !ENABLED { return; }` and costs nothing without the feature.
pub const ENABLED: bool = cfg!(feature = "debug-checks");

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
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The page is not a chunk page; the entry says what it is.
    NotHeap(Entry),
    /// The block belongs to another class or pool, whose blocks are this many bytes.
    WrongPool {
        /// Block size of the owner.
        size: usize,
    },
    /// Not the start of a block; the block starts here.
    Interior(usize),
    /// The block is not allocated.
    DoubleFree,
}

/// An invalid free of a class or pool block, as its report says it.
struct BadFree {
    ptr: NonNull<u8>,
    owner: Owner,
    fault: Fault,
}

impl fmt::Display for BadFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (addr, owner) = (self.ptr.addr().get(), self.owner);
        match self.fault {
            Fault::NotHeap(Entry::Empty) => {
                write!(
                    f,
                    "kheap: free of {addr:#x}, which is not a heap block ({owner})"
                )
            }
            Fault::NotHeap(Entry::Root(_)) => write!(
                f,
                "kheap: free of {addr:#x}, which points into a heap root page ({owner})"
            ),
            Fault::NotHeap(_) => write!(
                f,
                "kheap: free of {addr:#x} as {owner}, but it is a large block (wrong layout?)"
            ),
            Fault::WrongPool { size } => write!(
                f,
                "kheap: free of {addr:#x} as {owner}, but it belongs to a pool of {size} B blocks \
                 (wrong layout or pool?)"
            ),
            Fault::Interior(block) => write!(
                f,
                "kheap: free of interior pointer {addr:#x} ({owner}, block starts at {block:#x})"
            ),
            Fault::DoubleFree => write!(f, "kheap: double free of {addr:#x} ({owner})"),
        }
    }
}

/// An invalid free of a large block (`entry`: what the page map says its page is), as its
/// report says it.
struct BadLargeFree {
    ptr: NonNull<u8>,
    layout: Layout,
    entry: Entry,
}

impl fmt::Display for BadLargeFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.ptr.addr().get();
        let (size, align) = (self.layout.size(), self.layout.align());
        match self.entry {
            Entry::Large(_) => write!(
                f,
                "kheap: double free of large block {addr:#x} (size {size}, align {align}), or not \
                 a block start"
            ),
            Entry::Empty => write!(
                f,
                "kheap: free of {addr:#x} (size {size}, align {align}), which is not a heap block"
            ),
            _ => write!(
                f,
                "kheap: free of {addr:#x} as a large block (size {size}, align {align}), but it is \
                 in a chunk or root page (wrong layout?)"
            ),
        }
    }
}

/// Reports an invalid free of a class or pool block: panics with `debug-checks`, does nothing
/// without (the caller then leaves the heap untouched).
#[inline(always)]
pub fn bad_free(ptr: NonNull<u8>, owner: Owner, fault: Fault) {
    if ENABLED {
        report(BadFree { ptr, owner, fault });
    }
}

/// Reports an invalid free of a large block (`entry`: what the page map says its page is):
/// panics with `debug-checks`, does nothing without.
#[inline(always)]
pub fn bad_large_free(ptr: NonNull<u8>, layout: Layout, entry: Entry) {
    if ENABLED {
        report(BadLargeFree { ptr, layout, entry });
    }
}

/// Reports a free to a pool (of this generation) that is not live: panics with `debug-checks`,
/// does nothing without.
#[inline(always)]
pub fn bad_pool(ptr: NonNull<u8>, generation: u32) {
    if ENABLED {
        report(format_args!(
            "kheap: free of {:#x} to pool #{generation}, which is not a live pool of this heap",
            ptr.addr()
        ));
    }
}

/// The panic of a failed check, out of line.
#[cold]
#[inline(never)]
fn report(what: impl fmt::Display) -> ! {
    panic!("{what}")
}
