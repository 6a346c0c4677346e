//! Pools: one block size each, a set of chunks, and the lists that make alloc and free O(1).
//!
//! ```text
//!   Pool ──partial──▶ desc ⇄ desc ⇄ desc     chunks with free and used blocks (LIFO)
//!        ──full─────▶ desc ⇄ desc            chunks with no free block
//!        ──empty────▶ desc                   reserve: no block used (see `reserve_limit`)
//! ```
//!
//! Allocation takes a block from the head of the partial list (a general class takes a batch of
//! blocks for its magazine, see `magazine`); when that list is empty it revives a reserve chunk,
//! and only then maps a new chunk. A chunk whose last free block is
//! taken moves to the full list; a full chunk that gets a block back is pushed at the *head* of
//! the partial list, so the next allocations refill the chunk that was most recently full — the
//! fullest chunk in practice — and leave the others to drain. That is the O(1) approximation of
//! "allocate from the fullest chunk": it keeps the live set dense and lets lightly used chunks
//! empty out and go back to the page source.
//!
//! A chunk whose last block is freed joins the pool's reserve if the reserve holds fewer than
//! [`Pool::reserve_limit`] chunks, otherwise it is returned to the page source at once. The
//! reserve stops a pool that oscillates around a chunk boundary from mapping and unmapping a page
//! on every other call. It is sized in blocks ([`RESERVE_BLOCKS`], one magazine batch): one
//! chunk for pools of small blocks, up to 16 for 4096-byte blocks, whose chunks hold a single
//! block each and would otherwise go back and forth to the page source with every batch of a
//! magazine. `Heap::trim` and a failed allocation empty every reserve.

use core::ptr::{self, NonNull};

#[cfg(feature = "debug-checks")]
use crate::chunk::FreeFault;
use crate::chunk::{ChunkDesc, Geometry, list};
use crate::debug::{self, Owner};
use crate::error::InvariantError;
use crate::magazine::PoolMagazine;
use crate::pagemap::{Entry, PageMap};
use crate::root::Roots;
use crate::source::{PageSource, PageSourceError};

/// Free blocks' worth of empty chunks a pool keeps mapped (at least one chunk): a magazine batch,
/// so that a refill after a flush finds its blocks without a page-source call. See the module
/// documentation.
pub const RESERVE_BLOCKS: usize = crate::magazine::MAG_BATCH;

/// `kind` byte of a slot that holds a user pool header.
pub const KIND_POOL: u8 = 0xB3;

/// A pool: the chunks of one block size. 56 bytes.
#[derive(Debug)]
#[repr(C)]
pub struct Pool {
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

/// A user pool (created by `Heap::create_pool`): a pool plus its identity. Lives in a root slot.
#[derive(Debug)]
#[repr(C)]
pub struct UserPool {
    /// [`KIND_POOL`].
    pub kind: u8,
    /// Generation: distinguishes this pool from earlier pools that used the same slot.
    pub generation: u32,
    /// Object size the pool was created with.
    pub size: u32,
    /// Object alignment the pool was created with.
    pub align: u32,
    /// Next user pool of the heap (singly linked; creation is LIFO, destruction walks).
    pub next: *mut UserPool,
    /// The pool itself.
    pub pool: Pool,
    /// Free blocks cached in front of the pool's chunks (unused for 1–7-byte blocks).
    pub mag: PoolMagazine,
}

/// Per-pool numbers (also used for statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Blocks in use.
    pub live: usize,
    /// Chunks.
    pub chunks: usize,
    /// Free blocks in those chunks.
    pub free: usize,
}

impl Pool {
    /// An empty pool; maps nothing.
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
    pub fn counts(&self) -> PoolCounts {
        let chunks = self.chunks as usize;
        PoolCounts {
            live: self.live,
            chunks,
            free: chunks * usize::from(self.geo.capacity) - self.live,
        }
    }

    /// Blocks in use.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Empty chunks the pool keeps in reserve: as many as hold [`RESERVE_BLOCKS`] blocks, at
    /// least one (16 for 4096-byte blocks, 8 for 2048, 4 for 1024, 1 from 9 blocks per chunk).
    pub fn reserve_limit(&self) -> u32 {
        (RESERVE_BLOCKS / usize::from(self.geo.capacity)).max(1) as u32
    }

    /// Takes a block from a chunk the pool already has, or `None` if every chunk is full. O(1).
    ///
    /// # Safety
    ///
    /// The pool's lists must be intact (only this module changes them).
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
        // SAFETY: members of the partial list are live, non-full chunks of this pool.
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
    /// `d` must be a live chunk of this pool, on no list, not full.
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
    /// `this` must point to a live pool; `d` a descriptor slot and `page` a page the caller
    /// hands over, `page` recorded in the page map as `Entry::Chunk(d)`.
    unsafe fn adopt(this: *mut Self, d: NonNull<ChunkDesc>, page: NonNull<u8>) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            ChunkDesc::init(d.as_ptr(), page, this, &(*this).geo);
            (*this).chunks += 1;
            push(&mut (*this).empty, d.as_ptr(), list::EMPTY);
            (*this).n_empty += 1;
        }
    }

    /// Takes up to `out.len()` blocks from the chunks the pool already has (partial chunks
    /// first, then the reserve) for a magazine, and returns how many it wrote to `out`. O(n).
    /// The blocks count as used by their chunks; with `debug-checks` they stay marked free in
    /// the allocated bitmaps (free but cached, see `magazine`).
    ///
    /// # Safety
    ///
    /// The pool's lists must be intact (only this module changes them).
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
            // SAFETY: members of the partial list are live, non-full chunks of this pool.
            let desc = unsafe { &mut *d };
            while n < out.len() && !desc.is_full(&geo) {
                // SAFETY: as above; the chunk is not full.
                let p = unsafe { desc.alloc(&geo) };
                #[cfg(feature = "debug-checks")]
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
    /// released (the reserve is full); the pool has forgotten it then. O(1).
    ///
    /// # Safety
    ///
    /// `d` must be a live chunk of this pool and `ptr` an allocated block of it, valid for
    /// writes of `owned` bytes.
    #[inline]
    unsafe fn free(
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
    fn take_empty(&mut self) -> Option<NonNull<ChunkDesc>> {
        let d = NonNull::new(self.empty)?;
        // SAFETY: `d` heads the empty list.
        unsafe { unlink(&mut self.empty, d.as_ptr()) };
        self.n_empty -= 1;
        self.chunks -= 1;
        Some(d)
    }

    /// Checks this pool's lists and counters; `this` is the pool's own address (what its
    /// descriptors must point back to) and `cached` the blocks its magazine holds (empty for a
    /// user pool). Calls `chunk(desc)` for every chunk. Linear in chunks, blocks and cached
    /// blocks.
    ///
    /// Every cached block must be the start of a block handed out of a chunk of this pool, not
    /// on that chunk's free list, not cached twice, and (with `debug-checks`) not marked
    /// allocated; a chunk's used count covers its allocated and its cached blocks.
    pub fn check(
        &self,
        this: *const Pool,
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
                if desc.kind != crate::chunk::KIND_CHUNK {
                    return Err(InvariantError::DescriptorCorrupt { addr: da });
                }
                #[cfg(feature = "debug-checks")]
                if desc.pool.cast_const() != this {
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
                    || desc.page.addr() % crate::source::PAGE_SIZE != 0
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
                    if p.addr() & !(crate::source::PAGE_SIZE - 1) != page {
                        continue;
                    }
                    let offset = p.addr() - page;
                    let index = self.geo.index_of(offset);
                    let bit = 1u64 << (index % 64);
                    if self.geo.is_tiny()
                        || offset % usize::from(self.geo.stride) != 0
                        || offset >= usize::from(desc.bump)
                        || cached_here[index / 64] & bit != 0
                    {
                        return Err(InvariantError::FreeListCorrupt { addr: p.addr() });
                    }
                    #[cfg(feature = "debug-checks")]
                    if desc.allocated[index / 64] & bit != 0 {
                        return Err(InvariantError::FreeListCorrupt { addr: p.addr() });
                    }
                    cached_here[index / 64] |= bit;
                    here += 1;
                }
                cached_seen += here;
                let mut on_free_list_and_cached = None;
                // SAFETY: a live chunk of this pool's geometry.
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
                #[cfg(feature = "debug-checks")]
                if !self.geo.is_tiny() {
                    let marked: u32 = desc.allocated.iter().map(|w| w.count_ones()).sum();
                    if marked as usize + here != usize::from(desc.used) {
                        return Err(InvariantError::CountMismatch {
                            addr: da,
                            recorded: usize::from(desc.used),
                            counted: marked as usize + here,
                        });
                    }
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

/// What a pool needs from the rest of the heap to get and return chunks: the page source, the
/// root slots (for descriptors) and the page map.
pub struct Ctx<'a, S: PageSource> {
    /// The heap's page source.
    pub src: &'a mut S,
    /// The heap's root runs.
    pub roots: &'a mut Roots,
    /// The heap's page map.
    pub map: &'a mut PageMap,
}

impl<S: PageSource> core::fmt::Debug for Ctx<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

impl<S: PageSource> Ctx<'_, S> {
    /// Allocates a block from `pool`, mapping a new chunk if every chunk is full. O(1).
    ///
    /// # Safety
    ///
    /// `pool` must point to a live pool of this heap (not aliased by a live reference).
    #[inline]
    pub unsafe fn alloc(&mut self, pool: *mut Pool) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: guaranteed by the caller.
        if let Some(p) = unsafe { (*pool).alloc_cached() } {
            return Ok(p);
        }
        // SAFETY: as above.
        unsafe { self.alloc_new_chunk(pool) }
    }

    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    #[cold]
    unsafe fn alloc_new_chunk(&mut self, pool: *mut Pool) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: `pool` is live (caller).
        unsafe {
            self.add_chunk(pool)?;
            // The fresh chunk is on the empty list, so this takes its first block.
            Ok((*pool).alloc_cached().unwrap_unchecked())
        }
    }

    /// Fills `out` with up to `out.len()` blocks of `pool` for a magazine (see
    /// [`Pool::alloc_batch`]), mapping one new chunk if the pool has no free block. Returns how
    /// many blocks it wrote: at least one, unless the page source fails.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    pub unsafe fn alloc_batch(
        &mut self,
        pool: *mut Pool,
        out: &mut [*mut u8],
    ) -> Result<usize, PageSourceError> {
        // SAFETY: `pool` is live (caller).
        unsafe {
            let n = (*pool).alloc_batch(out);
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            self.add_chunk(pool)?;
            Ok((*pool).alloc_batch(out))
        }
    }

    /// Maps a new chunk for `pool` (a descriptor slot, a page and its page-map entry) and puts
    /// it on the pool's empty list. On failure nothing is left behind.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    unsafe fn add_chunk(&mut self, pool: *mut Pool) -> Result<(), PageSourceError> {
        let slot = self.roots.alloc(self.src, self.map)?;
        let page = match self.src.map_pages(1) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: taken just above, unused.
                unsafe { self.roots.free(slot) };
                return Err(e);
            }
        };
        let d = slot.cast::<ChunkDesc>();
        if let Err(e) = self.map.set(self.src, page, Entry::Chunk(d)) {
            // SAFETY: both taken just above, unused.
            unsafe {
                self.src.unmap_pages(page, 1);
                self.roots.free(slot);
            }
            return Err(e);
        }
        // SAFETY: `pool` is live (caller); the slot and the page are ours and the page is
        // recorded as this chunk.
        unsafe { Pool::adopt(pool, d, page) };
        Ok(())
    }

    /// Frees `ptr` into `pool`, returning its chunk to the page source if it empties and the
    /// reserve is full. O(1). `owned` is the size the caller asked for (see
    /// `ChunkDesc::free`); `owner` names the pool in debug messages.
    ///
    /// With `debug-checks`, panics (naming the address and the pool) if `ptr` is not a live block
    /// of `pool`; without, an invalid pointer that the page map does not know is ignored.
    ///
    /// # Safety
    ///
    /// `pool` must point to a live pool of this heap, and `ptr` must be a block allocated from it
    /// (by a request of `owned` bytes) and not freed since.
    ///
    /// Returns whether a block was freed (false only for an ignored invalid pointer).
    #[inline]
    pub unsafe fn free(
        &mut self,
        pool: *mut Pool,
        ptr: NonNull<u8>,
        owned: usize,
        owner: Owner,
    ) -> bool {
        let d = match self.map.lookup(ptr.addr().get()) {
            Entry::Chunk(d) => d.as_ptr(),
            other => {
                debug::bad_free(ptr, owner, debug::Fault::NotHeap(other));
                return false;
            }
        };
        #[cfg(feature = "debug-checks")]
        // SAFETY: `d` is a live descriptor (page map) and `ptr` lies in its page; `pool` is live.
        unsafe {
            check_block(d, pool, ptr, owner)
        };
        // SAFETY: `d` is a chunk of `pool` holding `ptr` (caller, checked above with
        // `debug-checks`).
        if let Some(empty) = unsafe { (*pool).free(d, ptr, owned) } {
            // SAFETY: the pool forgot the chunk; it is ours to release.
            unsafe { self.release(empty) };
        }
        true
    }

    /// Gives block `ptr` of chunk `d` back to `pool` without the debug checks of
    /// [`free`](Self::free) (for blocks the heap itself held, such as a magazine's), returning
    /// the chunk to the page source if it empties and the reserve is full. O(1).
    ///
    /// # Safety
    ///
    /// `pool` must point to a live pool of this heap, `d` be a chunk of it and `ptr` a block of
    /// that chunk that counts as used, valid for writes of `owned` bytes.
    #[inline]
    pub unsafe fn free_block(
        &mut self,
        pool: *mut Pool,
        d: *mut ChunkDesc,
        ptr: NonNull<u8>,
        owned: usize,
    ) {
        // SAFETY: guaranteed by the caller.
        if let Some(empty) = unsafe { (*pool).free(d, ptr, owned) } {
            // SAFETY: the pool forgot the chunk; it is ours to release.
            unsafe { self.release(empty) };
        }
    }

    /// Returns a chunk the pool has forgotten to the page source and its slot to the roots.
    ///
    /// # Safety
    ///
    /// `d` must be a live descriptor that no pool lists any more.
    unsafe fn release(&mut self, d: NonNull<ChunkDesc>) {
        // SAFETY: guaranteed by the caller.
        let page = unsafe { (*d.as_ptr()).page };
        // SAFETY: descriptors always hold their (non-null) chunk page.
        let page = unsafe { NonNull::new_unchecked(page) };
        self.map.clear_run(page, 1);
        // SAFETY: the chunk is one page of our source, no block of it is in use, and the
        // descriptor slot is no longer referenced.
        unsafe {
            self.src.unmap_pages(page, 1);
            self.roots.free(d.cast());
        }
    }

    /// Returns every reserve chunk of `pool` to the page source.
    ///
    /// # Safety
    ///
    /// `pool` must point to a live pool of this heap.
    pub unsafe fn drain_reserve(&mut self, pool: *mut Pool) {
        // SAFETY: guaranteed by the caller.
        while let Some(d) = unsafe { (*pool).take_empty() } {
            // SAFETY: the pool forgot it.
            unsafe { self.release(d) };
        }
    }
}

/// `debug-checks`: verifies that `ptr` is a live block of `pool` in chunk `d`, or panics.
///
/// # Safety
///
/// `d` must be a live descriptor whose page holds `ptr`; `pool` must be live.
#[cfg(feature = "debug-checks")]
pub unsafe fn check_block(d: *mut ChunkDesc, pool: *mut Pool, ptr: NonNull<u8>, owner: Owner) {
    // SAFETY: guaranteed by the caller.
    let (actual, geo) = unsafe { ((*d).pool, (*pool).geo) };
    if actual != pool {
        debug::bad_free(ptr, owner, debug::Fault::WrongPool(actual));
    }
    // SAFETY: guaranteed by the caller.
    match unsafe { (*d).check_live(&geo, ptr) } {
        Ok(()) => {}
        Err(FreeFault::Interior { block }) => {
            debug::bad_free(ptr, owner, debug::Fault::Interior(block))
        }
        Err(FreeFault::NotAllocated) => debug::bad_free(ptr, owner, debug::Fault::DoubleFree),
    }
}
