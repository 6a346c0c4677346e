//! User pools (like Linux `kmem_cache`): what [`Heap::create_pool`](crate::Heap::create_pool)
//! makes, named by a [`PoolId`], kept in a [`PoolHeader`] in a root slot.
//!
//! A pool serves blocks of one size and alignment, any from 1 to 4096 bytes (1–7-byte blocks are
//! packed without rounding up, in tiny chunks). Its header holds its identity, its chunk lists
//! and, for blocks of 8 bytes and more, a magazine of [`POOL_MAG_CAP`] blocks in front of them.
//!
//! A [`PoolId`] is the address of the header's slot plus a generation number: checking one is a
//! page-map lookup (is the address in a root run of pool slots?) and two loads (is the slot a pool
//! header of that generation?), so an id of a destroyed pool is recognised as stale in O(1), even
//! after its slot was reused.

use core::fmt;
use core::ptr::NonNull;

use crate::chunk_lists::ChunkLists;
use crate::magazine::{MagazineStore, POOL_MAG_CAP};
use crate::pagemap::{Entry, PageMap};
use crate::root::Roots;

/// Names a user pool of a heap: the address of its header slot plus a generation number, so an
/// id of a destroyed pool is recognised as stale (in O(1)) even if the slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId {
    addr: usize,
    generation: u32,
}

impl PoolId {
    /// The id no pool has (the heap's cache of the last pool named uses it for "none").
    pub(crate) const NONE: Self = Self {
        addr: 0,
        generation: 0,
    };

    /// The id of the pool whose header is at `addr`, of this generation.
    pub(crate) fn new(addr: usize, generation: u32) -> Self {
        Self { addr, generation }
    }

    /// The address of the pool's header slot.
    pub(crate) fn addr(&self) -> usize {
        self.addr
    }

    /// The pool's generation number (unique among the pools a heap has created, until it
    /// wraps after 2^32 pools); shown in statistics and debug messages as `pool #n`.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool #{}", self.generation)
    }
}

/// `kind` byte of a slot that holds a pool header (see `root`).
pub const KIND_POOL: u8 = 0xB3;

/// Slot size of pool runs (module `root`): one pool header (344 bytes).
pub const POOL_SLOT: usize = size_of::<PoolHeader>().next_multiple_of(8);

/// A user pool: its identity, its chunk lists and its magazine. Lives in a root slot.
#[derive(Debug)]
#[repr(C)]
pub struct PoolHeader {
    /// [`KIND_POOL`].
    pub kind: u8,
    /// Generation: distinguishes this pool from earlier pools that used the same slot.
    pub generation: u32,
    /// Object size the pool was created with.
    pub size: u32,
    /// Object alignment the pool was created with.
    pub align: u32,
    /// Next pool of the heap (singly linked; creation is LIFO, destruction walks).
    pub next: *mut PoolHeader,
    /// The pool's chunks.
    pub lists: ChunkLists,
    /// Free blocks cached in front of the chunks (unused for 1–7-byte blocks).
    pub mag: MagazineStore<POOL_MAG_CAP>,
}

/// The header of the live pool `id` names, if any, given the heap's page map: the map says
/// whether `id`'s address lies in a root run at all, the run's header whether it is a run of pool
/// slots and the address a slot start, and the slot whether it holds a pool header of `id`'s
/// generation. O(1); reads nothing but the heap's own metadata, so any id may be checked.
#[inline]
pub fn find(map: &PageMap, id: PoolId) -> Option<NonNull<PoolHeader>> {
    let Entry::Root(run) = map
        .lookup_hinted(id.addr)
        .unwrap_or_else(|| map.get(id.addr))
    else {
        return None;
    };
    // SAFETY: the page map says `run` is a live root run.
    let slot = unsafe { Roots::slot_at(run, id.addr, POOL_SLOT) }?;
    let header = slot.cast::<PoolHeader>();
    // SAFETY: a slot handed out at least once starts with its kind byte; only a pool header's
    // generation is read further.
    let live = unsafe {
        let h = header.as_ptr();
        (*h).kind == KIND_POOL && (*h).generation == id.generation
    };
    live.then_some(header)
}
