//! The front: a magazine in front of its chunk lists, for one operation.
//!
//! A general class and a user pool cache free blocks the same way, so both go through one
//! [`Front`]: the magazine, the chunk lists it caches blocks of, and what an operation may need
//! behind them — the [`Back`] (refills in batches, give-backs one block at a time), the heap's
//! requested-bytes counter and the page source's [`Window`]. The fast paths are
//! [`take`](Front::take) and [`freed_block_fast`](Front::freed_block_fast) +
//! [`cache`](Front::cache); everything else is a slow path.

use core::ptr::NonNull;

use crate::back::{Back, check_block};
use crate::chunk::ChunkDesc;
use crate::chunk_lists::ChunkLists;
use crate::debug::{self, Fault, Owner};
use crate::magazine::Magazine;
use crate::pagemap::{Entry, PageMap};
use crate::pending::PendingChunks;
use crate::root::Roots;
use crate::source::{PageSource, PageSourceError};

/// The page source's window ([`PageSource::window`]): every page it maps lies inside, and a
/// pointer rebuilt from the window's start covers the whole block whatever the caller's pointer
/// covered. Empty (null, 0) for a source without one.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(super) struct Window {
    start: *mut u8,
    len: usize,
}

impl Window {
    /// The window of a source (empty for `None`).
    pub(super) fn new(window: Option<NonNull<[u8]>>) -> Self {
        match window {
            Some(w) => Self {
                start: w.as_ptr().cast(),
                len: w.len(),
            },
            None => Self {
                start: core::ptr::null_mut(),
                len: 0,
            },
        }
    }

    /// `ptr` rebuilt from the window's start, if it lies inside the window.
    #[inline(always)]
    pub(super) fn block(self, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        (ptr.addr().get().wrapping_sub(self.start.addr()) < self.len)
            // SAFETY: the window is not null when it has a length.
            .then(|| unsafe { NonNull::new_unchecked(self.start) }.with_addr(ptr.addr()))
    }
}

/// One magazine and what stands behind it (see the module documentation).
///
/// Invariant (what [`new`](Self::new) is given): `lists` are live list-chunk lists of the heap
/// whose back, counter and window these are, and `mag` caches blocks of `lists` only, each
/// counted as used by its chunk and held with a provenance that covers the block.
pub(super) struct Front<'a, S: PageSource, const CAP: usize> {
    mag: Magazine<'a, CAP>,
    lists: *mut ChunkLists,
    /// Names the class or pool in debug messages.
    owner: Owner,
    /// The back, by its parts: a `Back` is made for each call that needs one, so that no
    /// pointer into this struct escapes and it stays in registers.
    src: &'a mut S,
    roots: &'a mut Roots,
    map: &'a mut PageMap,
    pending: &'a mut PendingChunks,
    requested: &'a mut usize,
    window: Window,
}

impl<'a, S: PageSource, const CAP: usize> Front<'a, S, CAP> {
    /// # Safety
    ///
    /// The invariant of [`Front`] holds for these parts.
    #[inline(always)]
    pub(super) unsafe fn new(
        mag: Magazine<'a, CAP>,
        lists: *mut ChunkLists,
        owner: Owner,
        back: Back<'a, S>,
        requested: &'a mut usize,
        window: Window,
    ) -> Self {
        Self {
            mag,
            lists,
            owner,
            src: back.src,
            roots: back.roots,
            map: back.map,
            pending: back.pending,
            requested,
            window,
        }
    }

    /// The chunk lists behind the magazine.
    pub(super) fn lists(&self) -> *mut ChunkLists {
        self.lists
    }

    /// The back behind the magazine.
    #[inline(always)]
    pub(super) fn back(&mut self) -> Back<'_, S> {
        Back {
            src: self.src,
            roots: self.roots,
            map: self.map,
            pending: self.pending,
        }
    }

    /// The allocation fast path: the most recently cached block, counted as `size` requested
    /// bytes (with `debug-checks`, marked allocated again).
    #[inline(always)]
    pub(super) fn take(&mut self, size: usize) -> Option<NonNull<u8>> {
        let p = self.mag.pop()?;
        let lists = self.lists;
        // SAFETY: `lists` are live and `p` is a block of theirs (the invariant).
        unsafe { self.back().mark_taken(lists, p) };
        *self.requested += size;
        Some(p)
    }

    /// Refills the (empty) magazine with a batch of blocks from the chunks (at most a chunk's
    /// worth, see `Back::refill`), mapping one chunk at most, and takes one, counted as `size`
    /// requested bytes.
    #[inline]
    pub(super) fn refill_and_take(&mut self, size: usize) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: `lists` are live list-chunk lists and `mag` caches their blocks (invariant).
        unsafe {
            Back {
                src: self.src,
                roots: self.roots,
                map: self.map,
                pending: self.pending,
            }
            .refill(self.lists, self.mag.reborrow(), Magazine::<CAP>::BATCH)
        }?;
        // A successful refill leaves at least one block in the magazine.
        self.take(size).ok_or(PageSourceError::InvalidRequest)
    }

    /// The free fast path's view of a freed block: `ptr` rebuilt with a provenance that covers
    /// the whole block, or `None` to take the slow path.
    ///
    /// A release build rebuilds the pointer from the page source's window and looks nothing up;
    /// a pointer outside the window (every pointer, for a source without one) takes the slow
    /// path, which looks the page up. Keeping this path to a compare lets the compiler inline the
    /// free into its callers, which is worth more than the lookup it saves. With `debug-checks`
    /// the page map names the chunk (a miss of its cached node takes the slow path), and the
    /// block is checked (a live block of these lists) and marked free but cached.
    ///
    /// # Safety
    ///
    /// Without `debug-checks`, `ptr` must be an allocated block of the lists.
    #[inline(always)]
    pub(super) unsafe fn freed_block_fast(&mut self, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        if !debug::ENABLED {
            return self.window.block(ptr);
        }
        let Some(Entry::Chunk(d)) = self.map.lookup_hinted(ptr.addr().get()) else {
            return None;
        };
        // SAFETY: the page map names the live descriptor of the chunk holding `ptr`.
        Some(unsafe { self.chunk_block(d.as_ptr(), ptr) })
    }

    /// [`freed_block_fast`](Self::freed_block_fast) with a full page-map lookup where the
    /// window does not answer; `None` (after the debug report) for a pointer in no chunk.
    ///
    /// # Safety
    ///
    /// As for `freed_block_fast`.
    #[inline]
    pub(super) unsafe fn freed_block(&mut self, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        if !debug::ENABLED
            && let Some(block) = self.window.block(ptr)
        {
            return Some(block);
        }
        match self.map.lookup(ptr.addr().get()) {
            // SAFETY: the page map names the live descriptor of the chunk holding `ptr`.
            Entry::Chunk(d) => Some(unsafe { self.chunk_block(d.as_ptr(), ptr) }),
            other => {
                debug::bad_free(ptr, self.owner, Fault::NotHeap(other));
                None
            }
        }
    }

    /// `ptr` in chunk `d` rebuilt from the chunk's page pointer; with `debug-checks`, first
    /// checked to be a live block of the lists and marked free but cached.
    ///
    /// # Safety
    ///
    /// `d` must be the live descriptor of the chunk holding `ptr`; without `debug-checks`, `ptr`
    /// must be an allocated block of the lists.
    #[inline(always)]
    unsafe fn chunk_block(&mut self, d: *mut ChunkDesc, ptr: NonNull<u8>) -> NonNull<u8> {
        // SAFETY: `d` is live and its page holds `ptr`; the lists are live (invariant). After the
        // check `ptr` is an allocated block of the lists, so its bit may be cleared. The page
        // pointer covers the whole chunk, so the rebuilt block is valid for the whole block.
        unsafe {
            check_block(d, self.lists, ptr, self.owner);
            (*d).set_allocated(&(*self.lists).geo, ptr, false);
            NonNull::new_unchecked((*d).page.with_addr(ptr.addr().get()))
        }
    }

    /// The free fast path's end: caches `block` in the magazine and counts `size` requested
    /// bytes out, unless the magazine is full (then `false`, and nothing changed).
    #[inline(always)]
    #[must_use = "a full magazine does not take the block"]
    pub(super) fn cache(&mut self, block: NonNull<u8>, size: usize) -> bool {
        if !self.mag.push(block) {
            return false;
        }
        *self.requested -= size;
        true
    }

    /// Caches `block`, or, if the magazine is full, gives it straight back to its chunk
    /// (`Back::give_back_one`: one page-map lookup; a chunk it empties waits to be released),
    /// and counts `size` requested bytes out. A free never moves a batch: a full magazine
    /// keeps its blocks, which the allocations after it take; a run of frees past a full
    /// magazine costs one give-back each, the same work a batch flush did per block without
    /// the flush's one long call (16 give-backs, a shift of the magazine, and metadata
    /// pre-created after them).
    ///
    /// # Safety
    ///
    /// `block` is a block of the lists the caller gives up, that its chunk counts as used, with
    /// a provenance covering the block (from [`freed_block`](Self::freed_block)).
    #[inline]
    pub(super) unsafe fn give(&mut self, block: NonNull<u8>, size: usize) {
        if self.mag.is_full() {
            // SAFETY: the caller's promise: `block` is a block of the live lists, counted as
            // used by its chunk, with a provenance covering it.
            unsafe {
                Back {
                    src: self.src,
                    roots: self.roots,
                    map: self.map,
                    pending: self.pending,
                }
                .give_back_one(self.lists, block)
            };
            *self.requested -= size;
            return;
        }
        let cached = self.cache(block, size);
        debug_assert!(cached, "a magazine that is not full has room");
    }

    /// Gives the `n` oldest blocks of the magazine (at most all) back to their chunks.
    #[inline]
    pub(super) fn flush(&mut self, n: usize) {
        // SAFETY: the invariant: live lists, and every cached block is theirs, counted as used,
        // with a provenance covering it.
        unsafe {
            Back {
                src: self.src,
                roots: self.roots,
                map: self.map,
                pending: self.pending,
            }
            .flush(self.lists, self.mag.reborrow(), n)
        };
    }
}
