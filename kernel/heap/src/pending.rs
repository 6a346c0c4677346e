//! Chunks waiting to be released: the empty chunks a free did not give back to the page source.
//!
//! A free that empties a chunk whose lists already keep their reserve of empty chunks used to
//! give the chunk's page back in the call: its page-map entry cleared, the page unmapped, its
//! descriptor slot freed, several times the cost of the free itself (and a kernel's unmap on top).
//! Now the free only pushes the chunk's descriptor here, and a later call that has time to spare
//! releases it: a refill that mapped nothing (one chunk per refill, see `Back::refill`), a
//! page run's growth that found no room (all of them, before it tries again: their pages may
//! be the ones it needs), or [`Heap::trim`](crate::Heap::trim) (all of them). Before that, a
//! class or pool that needs a new chunk takes a waiting one instead of mapping a page (the
//! chunk the free would have unmapped serves again, as an empty page of the page source's
//! would have). A free that finds the list full releases the chunk itself, as before, so at
//! most [`PENDING_CHUNKS`] pages wait.
//!
//! A waiting chunk keeps its descriptor slot and its page-map entry (so a second free of one of
//! its blocks is still caught by the debug checks: its blocks are all marked free) and is on no
//! chunk list; the list is threaded through the descriptors' `next` links, and their list tag
//! says [`list::PENDING`](crate::chunk::list::PENDING).

use core::ptr::{self, NonNull};

use crate::chunk::{ChunkDesc, KIND_CHUNK, list};
use crate::error::InvariantError;
use crate::pagemap::{Entry, PageMap};

/// The most chunks that wait to be released (16 pages, 64 KiB).
pub const PENDING_CHUNKS: usize = 16;

/// The chunks waiting to be released (see the module documentation).
#[derive(Debug)]
#[repr(C)]
pub struct PendingChunks {
    /// The chunk pushed last; the others follow through `next`.
    head: *mut ChunkDesc,
    /// How many wait.
    len: usize,
}

impl PendingChunks {
    /// No chunk waiting.
    pub const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// How many chunks wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Lets `d` wait, unless [`PENDING_CHUNKS`] already do (then `false`, and nothing changed).
    ///
    /// # Safety
    ///
    /// `d` must be the live descriptor of an empty chunk that no chunk lists hold.
    #[inline]
    pub unsafe fn push(&mut self, d: NonNull<ChunkDesc>) -> bool {
        if self.len >= PENDING_CHUNKS {
            return false;
        }
        let d = d.as_ptr();
        // SAFETY: `d` is live and on no list (caller), so its links are ours to set.
        unsafe {
            (*d).list = list::PENDING;
            (*d).prev = ptr::null_mut();
            (*d).next = self.head;
        }
        self.head = d;
        self.len += 1;
        true
    }

    /// Takes the chunk pushed last, if any, for release.
    #[inline]
    pub fn pop(&mut self) -> Option<NonNull<ChunkDesc>> {
        let d = NonNull::new(self.head)?;
        // SAFETY: members are live descriptors (`push`).
        unsafe {
            self.head = (*d.as_ptr()).next;
            (*d.as_ptr()).next = ptr::null_mut();
        }
        self.len -= 1;
        Some(d)
    }

    /// Checks the list: at most [`PENDING_CHUNKS`] members, as many as counted, each a chunk
    /// descriptor tagged as waiting, with no block in use, whose page the page map names as its
    /// chunk. Returns how many wait.
    pub fn check(&self, map: &PageMap) -> Result<usize, InvariantError> {
        let mut d = self.head;
        let mut n = 0;
        while !d.is_null() {
            if n >= self.len.min(PENDING_CHUNKS) {
                return Err(InvariantError::ListCorrupt { addr: d.addr() });
            }
            // SAFETY: members are live descriptors (`push`); the walk is bounded by the count.
            let (kind, tag, used, page, next) =
                unsafe { ((*d).kind, (*d).list, (*d).used, (*d).page, (*d).next) };
            let recorded = matches!(map.get(page.addr()), Entry::Chunk(c) if c.as_ptr() == d);
            if kind != KIND_CHUNK || tag != list::PENDING || used != 0 || !recorded {
                return Err(InvariantError::DescriptorCorrupt { addr: d.addr() });
            }
            n += 1;
            d = next;
        }
        if n != self.len {
            return Err(InvariantError::CountMismatch {
                addr: ptr::from_ref(self).addr(),
                recorded: self.len,
                counted: n,
            });
        }
        Ok(n)
    }
}

impl Default for PendingChunks {
    fn default() -> Self {
        Self::new()
    }
}
