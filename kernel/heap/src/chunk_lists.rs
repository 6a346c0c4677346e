//! Chunk lists: the chunks of one block size (a general class's, or a user pool's), on the lists
//! that make taking and giving back a block O(1); and the *back* of the heap as a magazine sees it.
//!
//! ```text
//!   ChunkLists ──partial──▶ desc ⇄ desc ⇄ desc     chunks with free and used blocks (LIFO)
//!              ──full─────▶ desc ⇄ desc            chunks with no free block
//!              ──empty────▶ desc                   reserve: no block used (see `reserve_limit`)
//! ```
//!
//! Allocation takes blocks from the head of the partial list (in batches, for a magazine: see
//! [`Back::refill`]); when that list is empty it revives a reserve chunk, and only then maps a new
//! chunk. A chunk whose last free block is
//! taken moves to the full list; a full chunk that gets a block back is pushed at the *head* of
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
//!
//! [`Back`] is what a magazine (the *front*) needs from the rest of the heap: the page source, the
//! descriptor slots and the page map, with the batch operations that move blocks between a
//! magazine and its chunk lists ([`refill`](Back::refill), [`flush`](Back::flush)). They take the
//! magazine and the chunk lists from outside, wherever those live.

use core::ptr::{self, NonNull};

use crate::chunk::{ChunkDesc, FreeFault, Geometry, KIND_CHUNK, list};
use crate::debug::{self, Fault, Owner};
use crate::error::InvariantError;
use crate::magazine::Magazine;
use crate::pagemap::{Entry, PageMap};
use crate::root::Roots;
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

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
    unsafe fn adopt(this: *mut Self, d: NonNull<ChunkDesc>, page: NonNull<u8>) {
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

/// The back of the heap as chunk lists and their magazines reach it: the page source, the root
/// slots of chunk descriptors and the page map. Every operation that takes chunk lists takes them
/// by raw pointer (the descriptors of their chunks point back to them), and every batch operation
/// takes the magazine it fills or empties from outside.
pub struct Back<'a, S: PageSource> {
    /// The heap's page source.
    pub src: &'a mut S,
    /// The heap's chain of descriptor slots.
    pub roots: &'a mut Roots,
    /// The heap's page map.
    pub map: &'a mut PageMap,
}

impl<S: PageSource> core::fmt::Debug for Back<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Back").finish_non_exhaustive()
    }
}

impl<S: PageSource> Back<'_, S> {
    /// Refills `mag` with up to `budget` blocks of `lists` (at most the magazine's free room),
    /// mapping one new chunk if no chunk has a free block. Afterwards the magazine holds at least
    /// one more block, unless the page source failed (then nothing changed). The blocks count as
    /// used by their chunks; with `debug-checks` they are marked free but cached.
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap (not aliased by a live reference) of
    /// list chunks (blocks of 8 bytes and more), and `mag` must cache blocks of `lists` only.
    #[inline(never)]
    pub unsafe fn refill<const CAP: usize>(
        &mut self,
        lists: *mut ChunkLists,
        mag: &mut Magazine<CAP>,
        budget: usize,
    ) -> Result<(), PageSourceError> {
        // SAFETY: guaranteed by the caller.
        let n = unsafe { self.alloc_batch(lists, mag.room(budget)) }?;
        mag.filled(n);
        Ok(())
    }

    /// Gives the `n` oldest blocks of `mag` (at most all) back to their chunks of `lists`, one
    /// page-map lookup each; chunks that empty go to the reserve or back to the page source.
    ///
    /// # Safety
    ///
    /// As for [`refill`](Self::refill); every block in `mag` must be a block of `lists` that its
    /// chunk counts as used, with a provenance covering the block.
    #[inline(never)]
    pub unsafe fn flush<const CAP: usize>(
        &mut self,
        lists: *mut ChunkLists,
        mag: &mut Magazine<CAP>,
        n: usize,
    ) {
        let n = n.min(mag.len());
        // SAFETY: guaranteed by the caller; each block is given back exactly once, as it leaves
        // the magazine here.
        unsafe { self.give_back(lists, &mag.cached()[..n]) };
        mag.drop_oldest(n);
    }

    /// Gives blocks that left a magazine back to their chunks of `lists` (one page-map lookup
    /// each); chunks that empty go to the reserve or back to the page source.
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap; every entry of `blocks` must be a
    /// block of one of their chunks that counts it as used, with a provenance covering the block,
    /// given back exactly once.
    unsafe fn give_back(&mut self, lists: *mut ChunkLists, blocks: &[*mut u8]) {
        // SAFETY: guaranteed by the caller.
        let stride = usize::from(unsafe { (*lists).geo.stride });
        for &b in blocks {
            let Some(p) = NonNull::new(b) else { continue };
            if let Entry::Chunk(d) = self.map.lookup(b.addr()) {
                // SAFETY: the page map names the live descriptor of `b`'s chunk, a chunk of
                // `lists` that counts `b` as used (caller); the block covers `stride` bytes.
                unsafe { self.free_block(lists, d.as_ptr(), p, stride) };
            }
        }
    }

    /// `debug-checks`: marks `p`, a block of `lists` just taken from a magazine, allocated again
    /// (one page-map lookup). Does nothing without the feature.
    ///
    /// # Safety
    ///
    /// `lists` must point to live list-chunk lists of this heap and `p` be a block of one of
    /// their chunks.
    #[inline]
    pub unsafe fn mark_taken(&mut self, lists: *mut ChunkLists, p: NonNull<u8>) {
        if !debug::ENABLED {
            return;
        }
        match self.map.lookup(p.addr().get()) {
            // SAFETY: the page map names the live descriptor of `p`'s chunk; `lists` is live
            // (caller), and only its geometry is read.
            Entry::Chunk(d) => unsafe { (*d.as_ptr()).set_allocated(&(*lists).geo, p, true) },
            other => panic!(
                "kheap: a magazine holds {:#x}, which is not in a chunk ({other:?})",
                p.addr()
            ),
        }
    }

    /// Allocates a block from `lists`, mapping a new chunk if every chunk is full. O(1). (The
    /// path of tiny pools, which have no magazine.)
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap (not aliased by a live reference).
    #[inline]
    pub unsafe fn alloc(&mut self, lists: *mut ChunkLists) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: guaranteed by the caller.
        if let Some(p) = unsafe { (*lists).alloc_cached() } {
            return Ok(p);
        }
        // SAFETY: as above.
        unsafe { self.alloc_new_chunk(lists) }
    }

    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    #[cold]
    unsafe fn alloc_new_chunk(
        &mut self,
        lists: *mut ChunkLists,
    ) -> Result<NonNull<u8>, PageSourceError> {
        // SAFETY: `lists` is live (caller).
        unsafe {
            self.add_chunk(lists)?;
            // The fresh chunk is on the empty list, so this takes its first block.
            Ok((*lists).alloc_cached().unwrap_unchecked())
        }
    }

    /// Fills `out` with up to `out.len()` blocks of `lists` for a magazine (see
    /// [`ChunkLists::alloc_batch`]), mapping one new chunk if no chunk has a free block. Returns
    /// how many blocks it wrote: at least one, unless `out` is empty or the page source fails.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    unsafe fn alloc_batch(
        &mut self,
        lists: *mut ChunkLists,
        out: &mut [*mut u8],
    ) -> Result<usize, PageSourceError> {
        // SAFETY: `lists` is live (caller).
        unsafe {
            let n = (*lists).alloc_batch(out);
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            self.add_chunk(lists)?;
            Ok((*lists).alloc_batch(out))
        }
    }

    /// Maps a new chunk for `lists` (a descriptor slot, a page and its page-map entry) and puts
    /// it on their empty list. On failure nothing is left behind.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    unsafe fn add_chunk(&mut self, lists: *mut ChunkLists) -> Result<(), PageSourceError> {
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
        // SAFETY: `lists` is live (caller); the slot and the page are ours and the page is
        // recorded as this chunk.
        unsafe { ChunkLists::adopt(lists, d, page) };
        Ok(())
    }

    /// Frees `ptr` into `lists`, returning its chunk to the page source if it empties and the
    /// reserve is full. O(1). `owned` is the size the caller asked for (see `ChunkDesc::free`);
    /// `owner` names the class or pool in debug messages. (The path of tiny pools.)
    ///
    /// With `debug-checks`, panics (naming the address and the owner) if `ptr` is not a live
    /// block of `lists`; without, an invalid pointer that the page map does not know is ignored.
    ///
    /// Returns whether a block was freed (false only for an ignored invalid pointer).
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap, and `ptr` must be a block allocated
    /// from them (by a request of `owned` bytes) and not freed since.
    #[inline]
    pub unsafe fn free(
        &mut self,
        lists: *mut ChunkLists,
        ptr: NonNull<u8>,
        owned: usize,
        owner: Owner,
    ) -> bool {
        let d = match self.map.lookup(ptr.addr().get()) {
            Entry::Chunk(d) => d.as_ptr(),
            other => {
                debug::bad_free(ptr, owner, Fault::NotHeap(other));
                return false;
            }
        };
        // SAFETY: `d` is a live descriptor (page map) and `ptr` lies in its page; `lists` is
        // live (caller). The check passes for the block of `lists` the caller vouches for.
        unsafe {
            check_block(d, lists, ptr, owner);
            self.free_block(lists, d, ptr, owned);
        }
        true
    }

    /// Gives block `ptr` of chunk `d` back to `lists` without the debug checks of
    /// [`free`](Self::free) (for blocks the heap itself held, such as a magazine's), returning
    /// the chunk to the page source if it empties and the reserve is full. O(1).
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap, `d` be a chunk of them and `ptr` a
    /// block of that chunk that counts as used, valid for writes of `owned` bytes.
    #[inline]
    unsafe fn free_block(
        &mut self,
        lists: *mut ChunkLists,
        d: *mut ChunkDesc,
        ptr: NonNull<u8>,
        owned: usize,
    ) {
        // SAFETY: guaranteed by the caller.
        if let Some(empty) = unsafe { (*lists).free(d, ptr, owned) } {
            // SAFETY: the lists forgot the chunk; it is ours to release.
            unsafe { self.release(empty) };
        }
    }

    /// Returns a chunk its lists have forgotten to the page source, and its slot to the roots.
    ///
    /// # Safety
    ///
    /// `d` must be a live descriptor that no lists hold any more.
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

    /// Returns every reserve chunk of `lists` to the page source.
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap.
    pub unsafe fn drain_reserve(&mut self, lists: *mut ChunkLists) {
        // SAFETY: guaranteed by the caller.
        while let Some(d) = unsafe { (*lists).take_empty() } {
            // SAFETY: the lists forgot it.
            unsafe { self.release(d) };
        }
    }
}

/// `debug-checks`: panics (naming `ptr` and `owner`) unless `ptr` is a live block of `lists` in
/// chunk `d`. Does nothing without the feature.
///
/// # Safety
///
/// `d` must be a live descriptor whose page holds `ptr`; `lists` must be live.
#[inline]
pub unsafe fn check_block(
    d: *mut ChunkDesc,
    lists: *mut ChunkLists,
    ptr: NonNull<u8>,
    owner: Owner,
) {
    if !debug::ENABLED {
        return;
    }
    // SAFETY: guaranteed by the caller.
    let (recorded, geo) = unsafe { ((*d).debug.owner(), (*lists).geo) };
    if let Some(actual) = recorded
        && actual != lists.cast_const().cast()
    {
        // SAFETY: the owner recorded in a live descriptor is the live chunk lists holding it;
        // only its geometry is read.
        let size = usize::from(unsafe { (*actual.cast::<ChunkLists>()).geo.stride });
        debug::bad_free(ptr, owner, Fault::WrongPool { size });
    }
    // SAFETY: guaranteed by the caller.
    match unsafe { (*d).check_live(&geo, ptr) } {
        Ok(()) => {}
        Err(FreeFault::Interior { block }) => debug::bad_free(ptr, owner, Fault::Interior(block)),
        Err(FreeFault::NotAllocated) => debug::bad_free(ptr, owner, Fault::DoubleFree),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::DESC_SLOT;
    use crate::testing::ArenaSource;

    /// The back's batch operations take any magazine and any chunk lists from outside: here
    /// both live on the stack, with a descriptor chain and a page map of their own.
    #[test]
    fn the_back_refills_and_flushes_a_magazine_it_does_not_own() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let mut roots = Roots::empty(DESC_SLOT);
        let mut lists = ChunkLists::new(Geometry::new(64));
        let l = &raw mut lists;
        let mut mag = Magazine::<8>::new();
        let mut back = Back {
            src: &mut src,
            roots: &mut roots,
            map: &mut map,
        };
        // SAFETY: `l` points to chunk lists of 64-byte blocks that only this test uses, through
        // `l`; the magazine caches blocks of them only; every flushed block came from a refill.
        unsafe {
            back.refill(l, &mut mag, 5).unwrap();
            assert_eq!(mag.len(), 5);
            // A budget beyond the magazine's room fills the room.
            back.refill(l, &mut mag, 100).unwrap();
            assert_eq!(mag.len(), 8);
            assert_eq!((*l).counts().live, 8, "cached blocks count as used");
            (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
            let oldest = mag.cached()[..3].to_vec();
            back.flush(l, &mut mag, 3);
            assert_eq!(mag.len(), 5);
            assert!(oldest.iter().all(|p| !mag.cached().contains(p)));
            assert_eq!((*l).counts().live, 5);
            (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
            // Emptied, the chunk waits in the reserve; draining it gives its page back.
            back.flush(l, &mut mag, usize::MAX);
            assert_eq!(mag.len(), 0);
            assert_eq!(
                (*l).counts(),
                ListCounts {
                    live: 0,
                    chunks: 1,
                    free: 64
                }
            );
            back.drain_reserve(l);
            assert_eq!((*l).counts().chunks, 0);
            (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
            // A page source that refuses leaves the magazine as it was.
            back.src.fail_after(Some(0));
            assert!(back.refill(l, &mut mag, 5).is_err());
            assert_eq!(mag.len(), 0);
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
    }
}
