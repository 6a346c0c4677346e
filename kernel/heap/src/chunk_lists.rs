//! Chunk lists: the chunks of one block size (a general class's, or a user pool's), on the lists
//! that make taking and giving back a block O(1).
//!
//! ```text
//!   ChunkLists ──partial──▶ desc ⇄ desc ⇄ desc     chunks with free and used blocks (LIFO)
//!              ──full─────▶ desc ⇄ desc            chunks with no free block
//!              ──empty────▶ desc                   reserve: no block used (see `reserve_limit`)
//! ```
//!
//! Allocation takes blocks from the head of the partial list (in batches, for a magazine: see
//! `back::Back::refill`); when that list is empty it revives a reserve chunk, and only then maps a
//! new chunk (through the back). A chunk whose last free block is taken moves to the full list; a full chunk that gets a block back is pushed at the *head* of
//! the partial list, so the next allocations refill the chunk that was most recently full — the
//! fullest chunk in practice — and leave the others to drain. That is the O(1) approximation of
//! "allocate from the fullest chunk": it keeps the live set dense and lets lightly used chunks
//! empty out and go back to the page source.
//!
//! A chunk whose last block is freed joins the reserve if the reserve holds fewer than
//! [`ChunkLists::reserve_limit`] chunks, otherwise it is returned to the page source at once. The
//! reserve stops a class or pool that oscillates around a chunk boundary from mapping and
//! unmapping a page on every other call. It is sized in blocks ([`RESERVE_BLOCKS`], one magazine
//! batch): one chunk for small blocks, up to 16 for 4096-byte blocks, whose chunks hold a single
//! block each and would otherwise go back and forth to the page source with every batch of a
//! magazine. `Heap::trim` and a failed allocation empty every reserve.

use core::ptr::{self, NonNull};

use crate::chunk::{ChunkDesc, Geometry, KIND_CHUNK, NONE, list};
use crate::error::InvariantError;
use crate::pagemap::{Entry, PageMap};
use crate::source::PAGE_SIZE;

/// Free blocks' worth of empty chunks kept mapped (at least one chunk): a magazine batch, so that
/// a refill after a flush finds its blocks without a page-source call. See the module
/// documentation.
pub const RESERVE_BLOCKS: usize = crate::magazine::MAG_BATCH;

/// The chunks of one block size. 56 bytes.
#[derive(Debug)]
#[repr(C)]
pub struct ChunkLists {
    /// Chunks with free and used blocks; allocation takes from the head.
    partial: *mut ChunkDesc,
    /// Chunks with no free block.
    full: *mut ChunkDesc,
    /// Chunks with no used block (the reserve).
    empty: *mut ChunkDesc,
    /// Blocks in use.
    live: usize,
    /// Chunks (on any of the three lists).
    chunks: u32,
    /// Chunks on the empty list.
    n_empty: u32,
    /// How chunks are cut.
    pub geo: Geometry,
}

/// The numbers of one [`ChunkLists`] (for statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListCounts {
    /// Blocks in use.
    pub live: usize,
    /// Chunks.
    pub chunks: usize,
    /// Free blocks in those chunks.
    pub free: usize,
}

impl ChunkLists {
    /// Empty lists; maps nothing.
    pub const fn new(geo: Geometry) -> Self {
        Self {
            partial: ptr::null_mut(),
            full: ptr::null_mut(),
            empty: ptr::null_mut(),
            live: 0,
            chunks: 0,
            n_empty: 0,
            geo,
        }
    }

    /// Blocks in use, chunks and free blocks.
    pub fn counts(&self) -> ListCounts {
        let chunks = self.chunks as usize;
        ListCounts {
            live: self.live,
            chunks,
            free: chunks * usize::from(self.geo.capacity) - self.live,
        }
    }

    /// Blocks in use.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Empty chunks kept in reserve: as many as hold [`RESERVE_BLOCKS`] blocks, at
    /// least one (16 for 4096-byte blocks, 8 for 2048, 4 for 1024, 1 from 9 blocks per chunk).
    pub fn reserve_limit(&self) -> u32 {
        (RESERVE_BLOCKS / usize::from(self.geo.capacity)).max(1) as u32
    }

    /// Takes a block from a chunk already mapped, or `None` if every chunk is full. O(1).
    ///
    /// # Safety
    ///
    /// The lists must be intact (only this module changes them).
    #[inline]
    pub unsafe fn alloc_cached(&mut self) -> Option<NonNull<u8>> {
        let mut d = self.partial;
        if d.is_null() {
            d = self.empty;
            if d.is_null() {
                return None;
            }
            // SAFETY: `d` heads the empty list.
            unsafe { unlink(&mut self.empty, d) };
            self.n_empty -= 1;
            // SAFETY: as above; a reserve chunk is not full.
            let p = unsafe { self.take_from(d) };
            return Some(p);
        }
        // SAFETY: members of the partial list are live, non-full chunks of these lists.
        let p = unsafe { (*d).alloc(&self.geo) };
        // SAFETY: as above.
        if unsafe { (*d).is_full(&self.geo) } {
            // SAFETY: `d` is on the partial list.
            unsafe {
                unlink(&mut self.partial, d);
                push(&mut self.full, d, list::FULL);
            }
        }
        self.live += 1;
        Some(p)
    }

    /// Allocates from `d` (off every list, not full) and puts it on the right list.
    ///
    /// # Safety
    ///
    /// `d` must be a live chunk of these lists, on no list, not full.
    unsafe fn take_from(&mut self, d: *mut ChunkDesc) -> NonNull<u8> {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let p = (*d).alloc(&self.geo);
            if (*d).is_full(&self.geo) {
                push(&mut self.full, d, list::FULL);
            } else {
                push(&mut self.partial, d, list::PARTIAL);
            }
            self.live += 1;
            p
        }
    }

    /// Adopts a fresh chunk (descriptor slot `d`, page `page`) onto the empty list, from where
    /// the allocation that asked for it takes its blocks at once (so the reserve may hold one
    /// chunk more than [`reserve_limit`](Self::reserve_limit) for the length of that call).
    ///
    /// # Safety
    ///
    /// `this` must point to live chunk lists; `d` a descriptor slot and `page` a page the caller
    /// hands over, `page` recorded in the page map as `Entry::Chunk(d)`.
    pub unsafe fn adopt(this: *mut Self, d: NonNull<ChunkDesc>, page: NonNull<u8>) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            ChunkDesc::init(d.as_ptr(), page, this.cast_const().cast(), &(*this).geo);
            (*this).chunks += 1;
            push(&mut (*this).empty, d.as_ptr(), list::EMPTY);
            (*this).n_empty += 1;
        }
    }

    /// Takes up to `out.len()` blocks from the chunks already mapped (partial chunks first, then
    /// the reserve) for a magazine, and returns how many it wrote to `out`. O(n).
    /// The blocks count as used by their chunks; with `debug-checks` they stay marked free in
    /// the allocated bitmaps (free but cached, see `magazine`).
    ///
    /// # Safety
    ///
    /// The lists must be intact (only this module changes them).
    pub unsafe fn alloc_batch(&mut self, out: &mut [*mut u8]) -> usize {
        let geo = self.geo;
        let mut n = 0;
        while n < out.len() {
            let mut d = self.partial;
            if d.is_null() {
                d = self.empty;
                if d.is_null() {
                    break;
                }
                // SAFETY: `d` heads the empty list; it moves to the partial list and is taken
                // from below (a reserve chunk is not full), so it never stays there empty.
                unsafe {
                    unlink(&mut self.empty, d);
                    push(&mut self.partial, d, list::PARTIAL);
                }
                self.n_empty -= 1;
            }
            // SAFETY: members of the partial list are live, non-full chunks of these lists.
            let desc = unsafe { &mut *d };
            if !geo.is_tiny() && desc.free == NONE && out.len() - n > 1 {
                // Nothing freed to reuse: a run of never-used blocks (a new chunk's refill). A
                // single block takes the loop below, which costs less for one.
                n += desc.alloc_fresh(&geo, &mut out[n..]);
            }
            while n < out.len() && !desc.is_full(&geo) {
                // SAFETY: as above; the chunk is not full.
                let p = unsafe { desc.alloc(&geo) };
                // Free but cached (the `debug-checks` bitmap).
                desc.set_allocated(&geo, p, false);
                out[n] = p.as_ptr();
                n += 1;
            }
            if desc.is_full(&geo) {
                // SAFETY: `d` is on the partial list.
                unsafe {
                    unlink(&mut self.partial, d);
                    push(&mut self.full, d, list::FULL);
                }
            }
        }
        self.live += n;
        n
    }

    /// Gives `ptr` back to its chunk `d`. Returns the chunk if it became empty and must be
    /// released (the reserve is full); the lists have forgotten it then. O(1).
    ///
    /// # Safety
    ///
    /// `d` must be a live chunk of these lists and `ptr` an allocated block of it, valid for
    /// writes of `owned` bytes.
    #[inline]
    pub unsafe fn free(
        &mut self,
        d: *mut ChunkDesc,
        ptr: NonNull<u8>,
        owned: usize,
    ) -> Option<NonNull<ChunkDesc>> {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let was_full = (*d).is_full(&self.geo);
            (*d).free(&self.geo, ptr, owned);
            self.live -= 1;
            if (*d).used == 0 {
                unlink(
                    if was_full {
                        &mut self.full
                    } else {
                        &mut self.partial
                    },
                    d,
                );
                if self.n_empty < self.reserve_limit() {
                    push(&mut self.empty, d, list::EMPTY);
                    self.n_empty += 1;
                    return None;
                }
                self.chunks -= 1;
                return NonNull::new(d);
            }
            if was_full {
                unlink(&mut self.full, d);
                push(&mut self.partial, d, list::PARTIAL);
            }
        }
        None
    }

    /// Removes one reserve chunk for release, if any.
    pub fn take_empty(&mut self) -> Option<NonNull<ChunkDesc>> {
        let d = NonNull::new(self.empty)?;
        // SAFETY: `d` heads the empty list.
        unsafe { unlink(&mut self.empty, d.as_ptr()) };
        self.n_empty -= 1;
        self.chunks -= 1;
        Some(d)
    }

    /// Calls `f` with each chunk's page address and blocks in use: the partial, then the full,
    /// then the empty list (read-only; for [`Heap::visit`](crate::Heap::visit)).
    pub fn for_each_chunk(&self, mut f: impl FnMut(usize, usize)) {
        for head in [self.partial, self.full, self.empty] {
            let mut d = head;
            while !d.is_null() {
                // SAFETY: list members are descriptor slots of live root runs, which nothing
                // writes while `&self` lives.
                let desc = unsafe { &*d };
                f(desc.page.addr(), usize::from(desc.used));
                d = desc.next;
            }
        }
    }

    /// Checks the lists and counters; `this` is their own address (what their descriptors'
    /// debug owner must be) and `cached` the blocks their magazine holds (none for a tiny
    /// pool). Calls `chunk(desc)` for every chunk. Linear in chunks, blocks and cached
    /// blocks.
    ///
    /// Every cached block must be the start of a block handed out of a chunk of these lists, not
    /// on that chunk's free list, not cached twice, and (with `debug-checks`) not marked
    /// allocated; a chunk's used count covers its allocated and its cached blocks.
    pub fn check(
        &self,
        this: *const ChunkLists,
        map: &PageMap,
        cached: &[*mut u8],
        mut chunk: impl FnMut(NonNull<ChunkDesc>),
    ) -> Result<(), InvariantError> {
        let addr = this.addr();
        let mut chunks = 0;
        let mut live = 0;
        let mut cached_seen = 0;
        let cap = self.geo.capacity;
        for (head, tag) in [
            (self.partial, list::PARTIAL),
            (self.full, list::FULL),
            (self.empty, list::EMPTY),
        ] {
            let mut prev = ptr::null_mut();
            let mut d = head;
            let mut on_list = 0u32;
            while let Some(nn) = NonNull::new(d) {
                // SAFETY: list members are descriptor slots of live root runs.
                let desc = unsafe { &*d };
                let da = d.addr();
                let foreign = desc.debug.owner().is_some_and(|o| o != this.cast());
                if desc.kind != KIND_CHUNK || foreign {
                    return Err(InvariantError::DescriptorCorrupt { addr: da });
                }
                if desc.prev != prev || desc.list != tag {
                    return Err(InvariantError::ListCorrupt { addr: da });
                }
                let ok = match tag {
                    list::PARTIAL => desc.used > 0 && desc.used < cap,
                    list::FULL => desc.used == cap,
                    _ => desc.used == 0,
                };
                if !ok {
                    return Err(InvariantError::ListCorrupt { addr: da });
                }
                if map.get(desc.page.addr()) != Entry::Chunk(nn)
                    || desc.page.addr() % PAGE_SIZE != 0
                {
                    return Err(InvariantError::PageMapMismatch {
                        addr: desc.page.addr(),
                    });
                }
                // The cached blocks in this chunk, as a bitmap of block indices (list chunks
                // have at most 512 blocks; a magazine never holds tiny-chunk blocks).
                let page = desc.page.addr();
                let mut cached_here = [0u64; 8];
                let mut here = 0;
                for &p in cached {
                    if p.addr() & !(PAGE_SIZE - 1) != page {
                        continue;
                    }
                    let offset = p.addr() - page;
                    let index = self.geo.index_of(offset);
                    let bit = 1u64 << (index % 64);
                    if self.geo.is_tiny()
                        || offset % usize::from(self.geo.stride) != 0
                        || offset >= usize::from(desc.bump)
                        || cached_here[index / 64] & bit != 0
                        || desc.debug.is_allocated(index) == Some(true)
                    {
                        return Err(InvariantError::FreeListCorrupt { addr: p.addr() });
                    }
                    cached_here[index / 64] |= bit;
                    here += 1;
                }
                cached_seen += here;
                let mut on_free_list_and_cached = None;
                // SAFETY: a live chunk of these lists's geometry.
                let free = unsafe {
                    desc.for_each_free(&self.geo, |offset| {
                        let index = self.geo.index_of(offset);
                        if here > 0 && cached_here[index / 64] & (1 << (index % 64)) != 0 {
                            on_free_list_and_cached = Some(page + offset);
                        }
                    })
                }
                .map_err(|addr| InvariantError::FreeListCorrupt { addr })?;
                if let Some(addr) = on_free_list_and_cached {
                    return Err(InvariantError::FreeListCorrupt { addr });
                }
                let touched = desc.touched_blocks(&self.geo);
                if free + usize::from(desc.used) != touched || touched > usize::from(cap) {
                    return Err(InvariantError::CountMismatch {
                        addr: da,
                        recorded: usize::from(desc.used),
                        counted: touched - free.min(touched),
                    });
                }
                if !self.geo.is_tiny()
                    && let Some(marked) = desc.debug.allocated_count()
                    && marked + here != usize::from(desc.used)
                {
                    return Err(InvariantError::CountMismatch {
                        addr: da,
                        recorded: usize::from(desc.used),
                        counted: marked + here,
                    });
                }
                chunk(nn);
                live += usize::from(desc.used);
                chunks += 1;
                on_list += 1;
                if chunks > self.chunks as usize {
                    return Err(InvariantError::ListCorrupt { addr: da });
                }
                prev = d;
                d = desc.next;
            }
            if tag == list::EMPTY && (on_list != self.n_empty || on_list > self.reserve_limit()) {
                return Err(InvariantError::CountMismatch {
                    addr,
                    recorded: self.n_empty as usize,
                    counted: on_list as usize,
                });
            }
        }
        for (recorded, counted) in [
            (self.chunks as usize, chunks),
            (self.live, live),
            (cached.len(), cached_seen),
        ] {
            if recorded != counted {
                return Err(InvariantError::CountMismatch {
                    addr,
                    recorded,
                    counted,
                });
            }
        }
        Ok(())
    }
}

/// Pushes `d` at the head of `head`'s list and tags it.
///
/// # Safety
///
/// `d` must be a live descriptor on no list; `head`'s members must be live.
unsafe fn push(head: &mut *mut ChunkDesc, d: *mut ChunkDesc, tag: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*d).prev = ptr::null_mut();
        (*d).next = *head;
        (*d).list = tag;
        if let Some(h) = head.as_mut() {
            h.prev = d;
        }
    }
    *head = d;
}

/// Unlinks `d` from `head`'s list.
///
/// # Safety
///
/// `d` must be a member of `head`'s list, whose members are live.
unsafe fn unlink(head: &mut *mut ChunkDesc, d: *mut ChunkDesc) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let (prev, next) = ((*d).prev, (*d).next);
        match prev.as_mut() {
            Some(p) => p.next = next,
            None => *head = next,
        }
        if let Some(n) = next.as_mut() {
            n.prev = prev;
        }
        (*d).next = ptr::null_mut();
        (*d).prev = ptr::null_mut();
    }
}
