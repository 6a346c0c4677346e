//! The back of the heap, as the magazines (the *front*) reach it: the page source, the descriptor
//! slots and the page map, with the operations that move blocks between a magazine and its chunk
//! lists ([`Back::refill`], [`Back::give_back_one`], [`Back::flush`]), the direct paths of pools
//! without a magazine, and the debug check of a block against its chunk ([`check_block`]).
//!
//! Every operation takes the chunk lists it works on, and every batch operation the magazine it
//! fills or empties, from outside: a magazine of the heap state or of a pool header. A CPU's
//! front ([`PerCpuHeap`](crate::PerCpuHeap)) does not come here: it allocates and frees its
//! batches through the locked heap, whose own magazines then refill and give back through these
//! calls.
//!
//! # What one call may do
//!
//! Every heap call runs with interrupts off in a kernel, so the work of any one call is bounded,
//! not just its average:
//!
//! * a refill ([`Back::refill`]) takes at most [`BATCH_BYTES`] of blocks (one chunk's worth: 16
//!   blocks up to 256 bytes, 8 of 512, 4 of 1024, 2 of 2048, one 4096-byte block), from the
//!   chunks already mapped, and maps at most one new chunk, only when none has a free block;
//! * a free into a full magazine ([`Back::give_back_one`]) gives that one block back to its
//!   chunk: one page-map lookup. Frees never move batches: a batch of 16 given back in one call
//!   (the flush this replaced, with a shift of the magazine and metadata pre-created after it)
//!   was the heap's longest free, up to ~2 200 instructions in the kernel against 179–667 for
//!   one block (`cargo kbench`'s attribution run);
//! * a chunk that empties while its lists keep their reserve of empty chunks is not released in
//!   that free: it waits on the heap's list of [pending](crate::pending) chunks (16 at most; a
//!   free that finds the list full releases its chunk itself), and a refill that mapped nothing
//!   releases one (its page-map entry, its page, its slot: ~400 instructions in the kernel,
//!   which made the frees that emptied a chunk cost 535–678 where the others cost 179–221);
//! * the metadata a new chunk needs — a descriptor slot in a root run, a page-map node when the
//!   chunk lies in a new 2 MiB window — is created ahead of need, one page at a time, by
//!   [`Back::prepare`] in a refill that mapped no chunk. The call that maps a chunk then maps
//!   that one page only. (If no quiet call came in between, the call maps the metadata itself:
//!   at most one root page and the page-map nodes of one entry.) A refill that maps nothing and
//!   needs no metadata gives the page source its turn instead ([`PageSource::prepare`]: the
//!   kernel maps one page into its reserve of pages mapped ahead of need), as does a large
//!   allocation from a region the heap already had; a free never does (a free stays the
//!   cheaper call).
//!
//! [`Back::flush`] gives back exactly what it is asked (for `trim` and pool destruction, which
//! must empty a magazine), with no such bound.

use core::ptr::NonNull;

use crate::chunk::{ChunkDesc, FreeFault};
use crate::chunk_lists::ChunkLists;
use crate::debug::{self, Fault, Owner};
use crate::magazine::Magazine;
use crate::pagemap::{Entry, PageMap};
use crate::pending::PendingChunks;
use crate::root::Roots;
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

/// Bytes of blocks that one refill takes, at most: one chunk's worth. A budget in blocks alone
/// (a quarter magazine, 16) let a refill of 4096-byte blocks take 16 chunks (16 reserve chunks
/// moved, and 16 pages hidden in the magazine); in bytes, classes up to 256 bytes still take 16
/// blocks and the 4096-byte class takes one.
pub const BATCH_BYTES: usize = PAGE_SIZE;

/// Blocks of `stride` bytes that one batch moves: `budget`, but no more than [`BATCH_BYTES`]
/// hold (and at least one, if `budget` is not 0).
#[inline]
pub const fn batch_blocks(stride: usize, budget: usize) -> usize {
    let fit = BATCH_BYTES / stride;
    let fit = if fit == 0 { 1 } else { fit };
    if budget < fit { budget } else { fit }
}

/// The back of the heap as chunk lists and their magazines reach it: the page source, the root
/// slots of chunk descriptors and the page map. Every operation that takes chunk lists takes them
/// by raw pointer (the descriptors of their chunks point back to them), and every batch operation
/// takes the magazine it fills or empties from outside (by value: a magazine is a borrow of its
/// count and slots, two pointers).
pub struct Back<'a, S: PageSource> {
    /// The heap's page source.
    pub src: &'a mut S,
    /// The heap's chain of descriptor slots.
    pub roots: &'a mut Roots,
    /// The heap's page map.
    pub map: &'a mut PageMap,
    /// The heap's chunks waiting to be released.
    pub pending: &'a mut PendingChunks,
}

impl<S: PageSource> core::fmt::Debug for Back<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Back").finish_non_exhaustive()
    }
}

impl<S: PageSource> Back<'_, S> {
    /// Refills `mag` with up to `budget` blocks of `lists`, at most [`BATCH_BYTES`] of them (see
    /// [`batch_blocks`]) and at most the magazine's free room, mapping one new chunk if no chunk
    /// has a free block. Afterwards the magazine holds at least one more block, unless the page
    /// source failed (then nothing changed). The blocks count as used by their chunks; with
    /// `debug-checks` they are marked free but cached. A refill that maps no chunk pre-creates
    /// metadata ([`prepare`](Self::prepare)) instead.
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap (not aliased by a live reference) of
    /// list chunks (blocks of 8 bytes and more), and `mag` must cache blocks of `lists` only.
    #[inline(never)]
    pub unsafe fn refill<const CAP: usize>(
        &mut self,
        lists: *mut ChunkLists,
        mut mag: Magazine<'_, CAP>,
        budget: usize,
    ) -> Result<(), PageSourceError> {
        // SAFETY: guaranteed by the caller.
        let stride = usize::from(unsafe { (*lists).geo.stride });
        // SAFETY: guaranteed by the caller.
        let (n, mapped) =
            unsafe { self.alloc_batch(lists, mag.room(batch_blocks(stride, budget))) }?;
        mag.filled(n);
        if !mapped && !self.prepare() {
            if self.src.wants_prepare() {
                // Nothing of the heap's own to pre-create: the source's turn (one page of its
                // reserve, say; see `PageSource::prepare`). Refills only, not flushes: a flush
                // already moves up to 16 blocks, and a free should stay the cheaper call.
                let _ = self.src.prepare();
            } else {
                // Then a chunk a free left waiting goes back.
                self.release_pending();
            }
        }
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
        mut mag: Magazine<'_, CAP>,
        n: usize,
    ) {
        let n = n.min(mag.len());
        // SAFETY: guaranteed by the caller; each block is given back exactly once, as it leaves
        // the magazine here.
        unsafe { self.give_back(lists, &mag.cached()[..n]) };
        mag.drop_oldest(n);
    }

    /// Pre-creates, one page at most, the metadata a new chunk of this back may need: a spare
    /// root run of descriptor slots once the last run is half used, otherwise a spare page-map
    /// node if the map has none (see `pagemap` and `root`). Called by refills that made no
    /// page-source call of their own, so that the call which maps a chunk maps only its page. A
    /// failure changes nothing: the call that needs the metadata then maps it itself (and fails
    /// cleanly if it cannot). Returns whether it tried (whether the call made, or
    /// attempted, a page-source call).
    #[inline]
    pub fn prepare(&mut self) -> bool {
        // Descriptor runs first: they are needed every 126 chunks (39 with `debug-checks`),
        // page-map leaves every 512 pages.
        if self.roots.wants_spare() {
            let _ = self.roots.add_spare(self.src, self.map);
        } else if self.map.wants_spare() {
            let _ = self.map.add_spare(self.src);
        } else {
            return false;
        }
        true
    }

    /// Releases one [pending](crate::pending) chunk, if any waits (a refill's quiet work).
    /// Returns whether it released one.
    #[inline]
    pub fn release_pending(&mut self) -> bool {
        match self.pending.pop() {
            // SAFETY: a pending chunk is empty and on no lists (`PendingChunks::push`).
            Some(d) => unsafe { self.release_now(d) },
            None => return false,
        }
        true
    }

    /// Releases every [pending](crate::pending) chunk (`trim`, a page run's blocked growth);
    /// returns whether there was any.
    pub fn release_all_pending(&mut self) -> bool {
        let any = self.release_pending();
        while self.release_pending() {}
        any
    }

    /// Gives one block back to its chunk of `lists` (one page-map lookup), what a free into a
    /// full magazine does; a chunk that empties goes to the reserve or to the pending chunks
    /// (with those full, back to the page source: one page at most).
    ///
    /// # Safety
    ///
    /// `lists` must point to live chunk lists of this heap; `block` must be a block of one of
    /// their chunks that counts it as used, with a provenance covering the block, given back
    /// once.
    #[inline(never)]
    pub unsafe fn give_back_one(&mut self, lists: *mut ChunkLists, block: NonNull<u8>) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.give_back(lists, &[block.as_ptr()]) }
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
    /// how many blocks it wrote — at least one, unless `out` is empty or the page source fails —
    /// and whether it mapped a chunk.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    unsafe fn alloc_batch(
        &mut self,
        lists: *mut ChunkLists,
        out: &mut [*mut u8],
    ) -> Result<(usize, bool), PageSourceError> {
        // SAFETY: `lists` is live (caller).
        unsafe {
            let n = (*lists).alloc_batch(out);
            if n > 0 || out.is_empty() {
                return Ok((n, false));
            }
            self.add_chunk(lists)?;
            Ok(((*lists).alloc_batch(out), true))
        }
    }

    /// Maps a new chunk for `lists` (a descriptor slot, a page and its page-map entry) and puts
    /// it on their empty list. On failure nothing is left behind.
    ///
    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc).
    unsafe fn add_chunk(&mut self, lists: *mut ChunkLists) -> Result<(), PageSourceError> {
        // A chunk waiting to be released is a mapped empty page with its slot and its page-map
        // entry: it serves as the new chunk, of whatever class or pool, with nothing mapped.
        if let Some(d) = self.pending.pop() {
            // SAFETY: a pending descriptor is live, empty and on no lists, and the page map
            // records its page as its chunk; `lists` is live (caller).
            unsafe {
                let page = NonNull::new_unchecked((*d.as_ptr()).page);
                ChunkLists::adopt(lists, d, page);
            }
            return Ok(());
        }
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
    /// the chunk to the page source if it empties and the reserve is full (then `true`). O(1).
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
    ) -> bool {
        // SAFETY: guaranteed by the caller.
        if let Some(empty) = unsafe { (*lists).free(d, ptr, owned) } {
            // SAFETY: the lists forgot the chunk; it is ours to release.
            unsafe { self.release(empty) };
            return true;
        }
        false
    }

    /// Lets a chunk its lists have forgotten wait for release on the [pending](crate::pending)
    /// list, or, with the list full, releases it now.
    ///
    /// # Safety
    ///
    /// `d` must be the live descriptor of an empty chunk that no lists hold any more.
    #[cold]
    #[inline(never)]
    unsafe fn release(&mut self, d: NonNull<ChunkDesc>) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            if !self.pending.push(d) {
                self.release_now(d);
            }
        }
    }

    /// Returns a chunk its lists have forgotten to the page source, and its slot to the roots.
    ///
    /// # Safety
    ///
    /// `d` must be a live descriptor that no lists hold any more.
    unsafe fn release_now(&mut self, d: NonNull<ChunkDesc>) {
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
            unsafe { self.release_now(d) };
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
    use crate::chunk::{DESC_SLOT, Geometry};
    use crate::chunk_lists::ListCounts;
    use crate::magazine::{MAG_BATCH, MAG_CAP, MagazineStore};
    use crate::pending::PENDING_CHUNKS;
    use crate::source::PAGE_SIZE;
    use crate::testing::ArenaSource;

    /// What the back's tests run on: a page source, a page map, a descriptor chain and chunk
    /// lists of one block size.
    struct Parts {
        src: ArenaSource,
        map: PageMap,
        roots: Roots,
        lists: ChunkLists,
        pending: PendingChunks,
    }

    impl Parts {
        fn new(stride: usize) -> Self {
            Self {
                // 2 MiB aligned: every page lies under one page-map leaf.
                src: ArenaSource::aligned(64, 2 << 20),
                map: PageMap::new(),
                roots: Roots::empty(DESC_SLOT),
                lists: ChunkLists::new(Geometry::new(stride)),
                pending: PendingChunks::new(),
            }
        }

        fn back(&mut self) -> (Back<'_, ArenaSource>, *mut ChunkLists) {
            let back = Back {
                src: &mut self.src,
                roots: &mut self.roots,
                map: &mut self.map,
                pending: &mut self.pending,
            };
            (back, &raw mut self.lists)
        }
    }

    #[test]
    fn batch_blocks_is_one_chunks_worth() {
        for (stride, blocks) in [
            (8, 16),
            (256, 16),
            (320, 12),
            (512, 8),
            (1024, 4),
            (4096, 1),
        ] {
            assert_eq!(batch_blocks(stride, MAG_BATCH), blocks, "{stride}");
        }
        assert_eq!(batch_blocks(64, 3), 3);
        assert_eq!(batch_blocks(4096, 0), 0);
    }

    /// A refill takes at most a chunk's worth of bytes: one 4096-byte block (one new chunk, one
    /// page mapped), four of 1024 bytes, sixteen of 64. A refill served by mapped chunks maps no
    /// chunk and pre-creates a spare page-map node instead.
    #[test]
    fn a_refill_takes_one_chunks_worth_and_maps_one_page() {
        for (stride, blocks) in [(64, 16), (1024, 4), (2048, 2), (4096, 1)] {
            let mut parts = Parts::new(stride);
            let mut store = MagazineStore::<MAG_CAP>::new();
            let mut mag = store.magazine();
            let (mut back, l) = parts.back();
            // SAFETY: `l` points to chunk lists only this test uses; the magazine caches their
            // blocks only.
            unsafe {
                back.refill(l, mag.reborrow(), MAG_BATCH).unwrap();
                assert_eq!(mag.len(), blocks, "{stride}");
                let (calls, pages) = (back.src.map_calls(), back.src.mapped_pages());
                back.refill(l, mag.reborrow(), MAG_BATCH).unwrap();
                assert_eq!(mag.len(), 2 * blocks, "{stride}");
                // A new chunk for the big blocks (the chunk page only); the spare page-map node
                // for the small ones, whose first chunk still had free blocks.
                assert_eq!(back.src.map_calls(), calls + 1, "{stride}");
                assert_eq!(back.src.mapped_pages(), pages + 1, "{stride}");
                assert_eq!(
                    back.map.spare_nodes(),
                    usize::from(stride == 64),
                    "{stride}"
                );
                (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
                back.flush(l, mag.reborrow(), usize::MAX);
                back.drain_reserve(l);
            }
            assert_eq!(parts.lists.counts().chunks, 0);
        }
    }

    /// A block given back (a free into a full magazine) returns to its chunk; a chunk it
    /// empties joins the reserve while the reserve has room, then waits on the pending list
    /// (no page released in the call) while that has room, and is released at once after that:
    /// one page at most per call. A refill that maps nothing releases one waiting chunk.
    #[test]
    fn a_block_given_back_returns_to_its_chunk() {
        let mut parts = Parts::new(64);
        let (mut back, l) = parts.back();
        let owner = Owner::Class { size: 64 };
        let reserve = parts_reserve(64);
        let mut store = MagazineStore::<MAG_CAP>::new();
        let mut mag = store.magazine();
        // SAFETY: `l` points to chunk lists only this test uses; every block is freed once,
        // marked free but cached first as a front does with a block it gives back.
        unsafe {
            // Full chunks of 64 blocks; keep one block of each.
            let chunks = reserve + PENDING_CHUNKS + 2;
            let blocks: std::vec::Vec<_> =
                (0..chunks * 64).map(|_| back.alloc(l).unwrap()).collect();
            assert_eq!((*l).counts().chunks, chunks);
            for (i, &p) in blocks.iter().enumerate() {
                if i % 64 != 0 {
                    assert!(back.free(l, p, 64, owner));
                }
            }
            for (k, &p) in blocks.iter().step_by(64).enumerate() {
                let Entry::Chunk(d) = back.map.lookup(p.addr().get()) else {
                    panic!("not a chunk")
                };
                (*d.as_ptr()).set_allocated(&(*l).geo, p, false);
                let pages = back.src.mapped_pages();
                back.give_back_one(l, p);
                // The reserve takes the first empty chunks, the pending list the next ones; then
                // each one goes back at once.
                let released = usize::from(k >= reserve + PENDING_CHUNKS);
                assert_eq!(back.src.mapped_pages(), pages - released, "chunk {k}");
                let waiting = (k + 1).saturating_sub(reserve).min(PENDING_CHUNKS);
                assert_eq!(back.pending.len(), waiting, "chunk {k}");
                assert_eq!(back.pending.check(back.map), Ok(waiting));
                (*l).check(l, back.map, &[], |_| {}).unwrap();
            }
            assert_eq!((*l).counts().chunks, reserve);
            // A refill served by the reserve maps nothing; with no metadata to pre-create, it
            // releases one waiting chunk.
            back.map.add_spare(back.src).unwrap();
            let pages = back.src.mapped_pages();
            back.refill(l, mag.reborrow(), MAG_BATCH).unwrap();
            assert_eq!(back.src.mapped_pages(), pages - 1);
            assert_eq!(back.pending.len(), PENDING_CHUNKS - 1);
            back.release_all_pending();
            assert_eq!(back.src.mapped_pages(), pages - PENDING_CHUNKS);
            assert_eq!(back.pending.check(back.map), Ok(0));
            back.flush(l, mag.reborrow(), usize::MAX);
            back.drain_reserve(l);
        }
        assert_eq!(parts.lists.counts().chunks, 0);
    }

    /// Blocks of 4096 bytes given back one at a time: each empties its chunk, so past the
    /// reserve and the pending list every give-back releases one page, never more.
    #[test]
    fn page_blocks_given_back_release_one_page_each() {
        let mut parts = Parts::new(PAGE_SIZE);
        let mut store = MagazineStore::<MAG_CAP>::new();
        let mut mag = store.magazine();
        let (mut back, l) = parts.back();
        let reserve = parts_reserve(PAGE_SIZE);
        let total = reserve + PENDING_CHUNKS + 4;
        // SAFETY: as in the test above; the blocks came from refills, so they are marked free
        // but cached already.
        unsafe {
            for _ in 0..total {
                back.refill(l, mag.reborrow(), MAG_BATCH).unwrap();
            }
            assert_eq!(mag.len(), total, "one block per refill");
            let blocks: std::vec::Vec<_> = mag.cached().to_vec();
            mag.drop_oldest(blocks.len());
            for (k, &b) in blocks.iter().enumerate() {
                let pages = back.src.mapped_pages();
                back.give_back_one(l, NonNull::new(b).unwrap());
                let released = usize::from(k >= reserve + PENDING_CHUNKS);
                assert_eq!(back.src.mapped_pages(), pages - released, "block {k}");
            }
            (*l).check(l, back.map, &[], |_| {}).unwrap();
            assert_eq!(back.pending.check(back.map), Ok(PENDING_CHUNKS));
            // With the reserve gone, a new chunk is a waiting one: nothing is mapped.
            back.drain_reserve(l);
            let (calls, pages) = (back.src.map_calls(), back.src.mapped_pages());
            let p = back.alloc(l).unwrap();
            assert_eq!(
                (back.src.map_calls(), back.src.mapped_pages()),
                (calls, pages)
            );
            assert_eq!(back.pending.check(back.map), Ok(PENDING_CHUNKS - 1));
            (*l).check(l, back.map, &[], |_| {}).unwrap();
            assert!(back.free(l, p, PAGE_SIZE, Owner::Class { size: PAGE_SIZE }));
            back.release_all_pending();
            back.drain_reserve(l);
            assert_eq!(back.src.mapped_pages(), pages - PENDING_CHUNKS);
        }
        assert_eq!(parts.lists.counts().chunks, 0);
    }

    /// Empty chunks the reserve of `stride`-byte lists keeps.
    fn parts_reserve(stride: usize) -> usize {
        ChunkLists::new(Geometry::new(stride)).reserve_limit() as usize
    }

    /// The back's batch operations take any magazine and any chunk lists from outside: here
    /// both live on the stack, with a descriptor chain and a page map of their own.
    #[test]
    fn the_back_refills_and_flushes_a_magazine_it_does_not_own() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let mut roots = Roots::empty(DESC_SLOT);
        let mut lists = ChunkLists::new(Geometry::new(64));
        let l = &raw mut lists;
        let mut store = MagazineStore::<8>::new();
        let mut mag = store.magazine();
        let mut pending = PendingChunks::new();
        let mut back = Back {
            src: &mut src,
            roots: &mut roots,
            map: &mut map,
            pending: &mut pending,
        };
        // SAFETY: `l` points to chunk lists of 64-byte blocks that only this test uses, through
        // `l`; the magazine caches blocks of them only; every flushed block came from a refill.
        unsafe {
            back.refill(l, mag.reborrow(), 5).unwrap();
            assert_eq!(mag.len(), 5);
            // A budget beyond the magazine's room fills the room.
            back.refill(l, mag.reborrow(), 100).unwrap();
            assert_eq!(mag.len(), 8);
            assert_eq!((*l).counts().live, 8, "cached blocks count as used");
            (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
            let oldest = mag.cached()[..3].to_vec();
            back.flush(l, mag.reborrow(), 3);
            assert_eq!(mag.len(), 5);
            assert!(oldest.iter().all(|p| !mag.cached().contains(p)));
            assert_eq!((*l).counts().live, 5);
            (*l).check(l, back.map, mag.cached(), |_| {}).unwrap();
            // Emptied, the chunk waits in the reserve; draining it gives its page back.
            back.flush(l, mag.reborrow(), usize::MAX);
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
            assert!(back.refill(l, mag.reborrow(), 5).is_err());
            assert_eq!(mag.len(), 0);
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
    }
}
