//! User pools' paths: `create_pool`, `pool_allocate`, `pool_deallocate`, `destroy_pool`. A pool of
//! 8-byte blocks and more goes through its magazine exactly as a general class does (module
//! `front`); a pool of 1–7-byte blocks goes straight to its tiny chunks.

use core::alloc::Layout;
use core::ptr::NonNull;

use super::Heap;
use super::state::{Live, PoolRef};
use crate::back::check_block;
use crate::chunk::Geometry;
use crate::chunk_lists::ChunkLists;
use crate::debug::{self, Fault};
use crate::error::{AllocError, PoolError};
use crate::magazine::{MagazineStore, POOL_MAG_CAP};
use crate::pagemap::Entry;
use crate::pool::{self, KIND_POOL, PoolHeader, PoolId};
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

impl<S: PageSource> Heap<S> {
    /// Creates a user pool of blocks that fit `size` bytes aligned to `align` (like Linux
    /// `kmem_cache_create`). Blocks are `size` rounded up to `align` — 1 to 7 byte blocks
    /// included, packed without rounding up to 8. Maps no chunk until the first allocation; may
    /// map a root page for the pool header.
    pub fn create_pool(&mut self, size: usize, align: usize) -> Result<PoolId, PoolError> {
        let invalid = PoolError::InvalidBlockLayout { size, align };
        if size == 0 || !align.is_power_of_two() || align > PAGE_SIZE {
            return Err(invalid);
        }
        let stride = size.next_multiple_of(align);
        if stride > PAGE_SIZE {
            return Err(invalid);
        }
        let mut st = self.live_or_init().map_err(PoolError::OutOfPages)?;
        let (pools, src, map) = st.pools();
        let slot = pools.slots.alloc(src, map).map_err(PoolError::OutOfPages)?;
        let header = slot.cast::<PoolHeader>();
        let generation = pools.next_generation;
        pools.next_generation = generation.wrapping_add(1);
        // SAFETY: the slot is ours and large enough for a pool header.
        unsafe {
            header.write(PoolHeader {
                kind: KIND_POOL,
                generation,
                size: size as u32,
                align: align as u32,
                next: pools.list,
                lists: ChunkLists::new(Geometry::new(stride)),
                mag: MagazineStore::new(),
            });
        }
        pools.list = header.as_ptr();
        pools.count += 1;
        Ok(PoolId::new(slot.addr().get(), generation))
    }

    /// The layout (object size and alignment) pool `id` was created with.
    pub fn pool_layout(&self, id: PoolId) -> Result<Layout, PoolError> {
        let st = self.view().ok_or(PoolError::NoSuchPool)?;
        let header = pool::find(&st.map, id).ok_or(PoolError::NoSuchPool)?;
        // SAFETY: `pool::find` returns only live pool headers; only read.
        let (size, align) = unsafe {
            let h = header.as_ptr();
            ((*h).size as usize, (*h).align as usize)
        };
        Layout::from_size_align(size, align).map_err(|_| PoolError::NoSuchPool)
    }

    /// Allocates one block from pool `id`. O(1) (plus a page-source call for a new chunk).
    /// Pools of 8-byte blocks and more answer from their magazine first, as the general classes
    /// do (refilled from the chunks in batches); 1–7-byte pools go to their chunks directly.
    /// Like [`allocate`](Self::allocate), it trims the heap and tries once more when
    /// the page source refuses.
    #[inline]
    pub fn pool_allocate(&mut self, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        // The fast path, small enough to inline: the pool of the previous call, a cached block.
        if let Some(mut st) = self.live()
            && let Some(pool) = st.last_pool(id)
            && let Some(p) = st.pool_front(pool).take(pool.size())
        {
            return Ok(p);
        }
        self.pool_allocate_slow(id)
    }

    /// [`pool_allocate`](Self::pool_allocate) past its fast path: the id check through the page
    /// map, refills, the retry after trimming.
    #[inline(never)]
    fn pool_allocate_slow(&mut self, id: PoolId) -> Result<NonNull<u8>, AllocError> {
        let mut st = self.live().ok_or(AllocError::NoSuchPool)?;
        let pool = st.pool(id).ok_or(AllocError::NoSuchPool)?;
        // Trimming releases chunks, regions, and root runs and map nodes without a live entry:
        // never the first root run (the state) nor a live pool.
        st.pool_take(pool)
            .or_else(|_| {
                st.trim();
                st.pool_take(pool)
            })
            .map_err(|cause| {
                let (size, align) = pool.object();
                AllocError::OutOfPages {
                    layout: Layout::from_size_align(size, align).unwrap_or(Layout::new::<u8>()),
                    cause,
                }
            })
    }

    /// Frees a block of pool `id`.
    ///
    /// With `debug-checks`, a stale pool or a pointer that is not a live block of the pool
    /// panics with a message naming both.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`pool_allocate`](Self::pool_allocate)`(id)` of this heap and not have
    /// been freed since.
    #[inline]
    pub unsafe fn pool_deallocate(&mut self, id: PoolId, ptr: NonNull<u8>) {
        // The fast path, small enough to inline: the pool of the previous call, room in its
        // magazine, a block inside the page source's window (with `debug-checks`: the page map's
        // cached node, and the block checked).
        if let Some(mut st) = self.live()
            && let Some(pool) = st.last_pool(id)
            && !pool.is_tiny()
        {
            let mut front = st.pool_front(pool);
            // SAFETY: the caller vouches that `ptr` is an allocated block of the pool.
            if let Some(block) = unsafe { front.freed_block_fast(ptr) } {
                if !front.cache(block, pool.size()) {
                    // SAFETY: `block` is the caller's block, checked, with a provenance
                    // covering it.
                    return unsafe { self.pool_free_past_full_magazine(pool, block) };
                }
                return;
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.pool_deallocate_slow(id, ptr) }
    }

    /// [`pool_deallocate`](Self::pool_deallocate) into a full magazine: `block` goes straight
    /// back to its chunk (one page-map lookup; the magazine keeps its blocks).
    ///
    /// # Safety
    ///
    /// `pool` is a live pool of this heap, and `block` a block of it the caller gives up, that
    /// its chunk counts as used, with a provenance covering the block.
    #[inline(never)]
    unsafe fn pool_free_past_full_magazine(&mut self, pool: PoolRef, block: NonNull<u8>) {
        if let Some(mut st) = self.live() {
            // SAFETY: guaranteed by the caller.
            unsafe { st.pool_front(pool).give(block, pool.size()) };
        }
    }

    /// [`pool_deallocate`](Self::pool_deallocate) past its fast path.
    ///
    /// # Safety
    ///
    /// As for `pool_deallocate`.
    #[inline(never)]
    unsafe fn pool_deallocate_slow(&mut self, id: PoolId, ptr: NonNull<u8>) {
        let Some(mut st) = self.live() else {
            return debug::bad_pool(ptr, id.generation());
        };
        let Some(pool) = st.pool(id) else {
            return debug::bad_pool(ptr, id.generation());
        };
        let size = pool.size();
        if pool.is_tiny() {
            // SAFETY: the pool's chunk lists are live; the caller vouches for `ptr`.
            if unsafe { st.back().free(pool.lists(), ptr, size, pool.owner()) } {
                *st.requested() -= size;
            }
            return;
        }
        let mut front = st.pool_front(pool);
        // SAFETY: the caller vouches that `ptr` is an allocated block of the pool; the block
        // `freed_block` returns is that block, checked, given up by the caller.
        unsafe {
            if let Some(block) = front.freed_block(ptr) {
                front.give(block, size);
            }
        }
    }

    /// `debug-checks`: panics, with the message [`pool_deallocate`](Self::pool_deallocate) would
    /// give, unless `ptr` is a live block of pool `id` (for a cache in front of the heap that
    /// checks a block before it keeps it). Does nothing without the feature.
    pub(crate) fn check_pool_block(&mut self, id: PoolId, ptr: NonNull<u8>) {
        if !debug::ENABLED {
            return;
        }
        let Some(mut st) = self.live() else {
            return debug::bad_pool(ptr, id.generation());
        };
        let Some(pool) = st.pool(id) else {
            return debug::bad_pool(ptr, id.generation());
        };
        match st.map().get(ptr.addr().get()) {
            // SAFETY: the page map names a live descriptor whose page holds `ptr`; the pool's
            // chunk lists are live.
            Entry::Chunk(d) => unsafe { check_block(d.as_ptr(), pool.lists(), ptr, pool.owner()) },
            other => debug::bad_free(ptr, pool.owner(), Fault::NotHeap(other)),
        }
    }

    /// Destroys pool `id`, returning its chunks to the page source. Refuses while any block of
    /// the pool is allocated. Afterwards `id` is stale: every use of it fails with `NoSuchPool`.
    pub fn destroy_pool(&mut self, id: PoolId) -> Result<(), PoolError> {
        let mut st = self.live().ok_or(PoolError::NoSuchPool)?;
        let pool = st.pool(id).ok_or(PoolError::NoSuchPool)?;
        let mut front = st.pool_front(pool);
        front.flush(POOL_MAG_CAP);
        // SAFETY: the pool's chunk lists are live.
        let live = unsafe { (*pool.lists()).live() };
        if live > 0 {
            return Err(PoolError::PoolInUse { live_blocks: live });
        }
        // SAFETY: as above; the reserve is released before the slot.
        unsafe { front.back().drain_reserve(pool.lists()) };
        st.forget_last_pool();
        let (pools, _, _) = st.pools();
        let header = pool.header().as_ptr();
        let mut link: *mut *mut PoolHeader = &raw mut pools.list;
        // SAFETY: `link` points at the list head or at the `next` field of a member of the
        // list, and members are live headers; the header is unlinked before its slot is freed,
        // and nothing refers to it afterwards.
        unsafe {
            while !(*link).is_null() && *link != header {
                link = &raw mut (**link).next;
            }
            if *link == header {
                *link = (*header).next;
            }
            pools.count -= 1;
            pools.slots.free(pool.header().cast());
        }
        Ok(())
    }
}

impl<S: PageSource> Live<'_, S> {
    /// A block of `pool`, counted as its object size in requested bytes: from the magazine, else
    /// from a refill of a batch of blocks (mapping one chunk at most); for a 1–7-byte
    /// pool, from its chunks directly.
    fn pool_take(&mut self, pool: PoolRef) -> Result<NonNull<u8>, PageSourceError> {
        let size = pool.size();
        if pool.is_tiny() {
            // SAFETY: the pool's chunk lists are live.
            let p = unsafe { self.back().alloc(pool.lists()) }?;
            *self.requested() += size;
            return Ok(p);
        }
        let mut front = self.pool_front(pool);
        match front.take(size) {
            Some(p) => Ok(p),
            None => front.refill_and_take(size),
        }
    }
}
