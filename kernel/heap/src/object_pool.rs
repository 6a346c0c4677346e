//! Typed pools on a shared heap: [`ObjectPool<T>`] hands out [`PoolBox`]es (drop frees), and
//! [`PoolAllocator`] names a user pool of a [`LockedHeap`] and, with feature `allocator-api`,
//! implements `core::alloc::Allocator` so that `Box::new_in(x, &pool)` allocates from it.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::error::{AllocError, PoolError};
use crate::locked::{LockedHeap, RawLock};
use crate::pool::PoolId;
use crate::source::PageSource;

/// A user pool of a [`LockedHeap`], by id: an allocator of its blocks. Copyable; does not
/// destroy the pool when dropped (see [`destroy`](Self::destroy)).
pub struct PoolAllocator<'h, L: RawLock, S: PageSource> {
    heap: &'h LockedHeap<L, S>,
    id: PoolId,
}

impl<L: RawLock, S: PageSource> Clone for PoolAllocator<'_, L, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L: RawLock, S: PageSource> Copy for PoolAllocator<'_, L, S> {}

impl<L: RawLock, S: PageSource> fmt::Debug for PoolAllocator<'_, L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolAllocator")
            .field("id", &self.id)
            .finish()
    }
}

impl<'h, L: RawLock, S: PageSource> PoolAllocator<'h, L, S> {
    /// Creates a pool for blocks of `layout` on `heap`.
    pub fn create(heap: &'h LockedHeap<L, S>, layout: Layout) -> Result<Self, PoolError> {
        let id = heap
            .lock()
            .ok_or(PoolError::Uninitialized)?
            .create_pool(layout.size(), layout.align())?;
        Ok(Self { heap, id })
    }

    /// The allocator of an existing pool `id` of `heap`.
    pub fn new(heap: &'h LockedHeap<L, S>, id: PoolId) -> Self {
        Self { heap, id }
    }

    /// The pool's id.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// The heap the pool belongs to.
    pub fn heap(&self) -> &'h LockedHeap<L, S> {
        self.heap
    }

    /// Allocates one block.
    pub fn allocate_block(&self) -> Result<NonNull<u8>, AllocError> {
        self.heap
            .lock()
            .ok_or(AllocError::Uninitialized)?
            .pool_allocate(self.id)
    }

    /// Frees one block.
    ///
    /// # Safety
    ///
    /// `ptr` must come from this pool and not have been freed since.
    pub unsafe fn deallocate_block(&self, ptr: NonNull<u8>) {
        if let Some(mut heap) = self.heap.lock() {
            // SAFETY: forwarded from the caller.
            unsafe { heap.pool_deallocate(self.id, ptr) };
        }
    }

    /// Destroys the pool (refused while blocks are allocated).
    pub fn destroy(self) -> Result<(), PoolError> {
        self.heap
            .lock()
            .ok_or(PoolError::Uninitialized)?
            .destroy_pool(self.id)
    }
}

#[cfg(feature = "allocator-api")]
// The crate's rust-version does not cover this feature: it needs a toolchain whose
// `core::alloc::Allocator` can be used (nightly).
#[allow(clippy::incompatible_msrv)]
// SAFETY: blocks come from the pool and stay valid until freed: the pool cannot be destroyed
// while any block is allocated, and the allocator borrows the heap, so its copies (which
// all name the same pool) can free each other's blocks. Layouts that do not fit the pool's block
// are refused, so every returned block has `layout.size()` bytes aligned to `layout.align()`.
unsafe impl<L: RawLock, S: PageSource> core::alloc::Allocator for PoolAllocator<'_, L, S> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, core::alloc::AllocError> {
        let mut heap = self.heap.lock().ok_or(core::alloc::AllocError)?;
        let block = heap
            .pool_layout(self.id)
            .map_err(|_| core::alloc::AllocError)?;
        if layout.size() > block.size() || layout.align() > block.align() {
            return Err(core::alloc::AllocError);
        }
        let p = heap
            .pool_allocate(self.id)
            .map_err(|_| core::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, block.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: `Allocator::deallocate`'s contract: `ptr` is a block of this allocator, i.e.
        // of this pool.
        unsafe { self.deallocate_block(ptr) };
    }
}

/// A pool of `T`s. Dropping it destroys the pool if no block is allocated (a leaked
/// [`PoolBox`] keeps it alive).
pub struct ObjectPool<'h, T, L: RawLock, S: PageSource> {
    allocator: PoolAllocator<'h, L, S>,
    _t: PhantomData<fn() -> T>,
}

impl<T, L: RawLock, S: PageSource> fmt::Debug for ObjectPool<'_, T, L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectPool")
            .field("id", &self.allocator.id)
            .finish()
    }
}

impl<'h, T, L: RawLock, S: PageSource> ObjectPool<'h, T, L, S> {
    /// Creates a pool whose blocks fit a `T` (zero-sized types take 1-byte blocks).
    pub fn new(heap: &'h LockedHeap<L, S>) -> Result<Self, PoolError> {
        let layout = Layout::new::<T>();
        let layout =
            Layout::from_size_align(layout.size().max(1), layout.align()).map_err(|_| {
                PoolError::InvalidBlockLayout {
                    size: layout.size(),
                    align: layout.align(),
                }
            })?;
        Ok(Self {
            allocator: PoolAllocator::create(heap, layout)?,
            _t: PhantomData,
        })
    }

    /// The pool's allocator (e.g. for `Box::new_in`).
    pub fn allocator(&self) -> PoolAllocator<'h, L, S> {
        self.allocator
    }

    /// Moves `value` into a new block. On failure `value` is dropped.
    pub fn allocate(&self, value: T) -> Result<PoolBox<'_, T, L, S>, AllocError> {
        let ptr = self.allocate_raw(value)?;
        Ok(PoolBox {
            ptr,
            allocator: self.allocator,
            _owns: PhantomData,
        })
    }

    /// Moves `value` into a new block and returns the raw pointer; free it with
    /// [`deallocate_raw`](Self::deallocate_raw).
    pub fn allocate_raw(&self, value: T) -> Result<NonNull<T>, AllocError> {
        let ptr = self.allocator.allocate_block()?.cast::<T>();
        // SAFETY: the block fits a `T` (size and alignment) and is ours.
        unsafe { ptr.as_ptr().write(value) };
        Ok(ptr)
    }

    /// Drops the `T` at `ptr` and frees its block.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`allocate_raw`](Self::allocate_raw) (or [`PoolBox::into_raw`]) of this
    /// pool, hold a live `T`, and not have been freed since.
    pub unsafe fn deallocate_raw(&self, ptr: NonNull<T>) {
        // SAFETY: forwarded from the caller.
        unsafe {
            ptr.as_ptr().drop_in_place();
            self.allocator.deallocate_block(ptr.cast());
        }
    }

    /// Drops the value and frees the block (the same as dropping `b`).
    pub fn deallocate(&self, b: PoolBox<'_, T, L, S>) {
        drop(b);
    }
}

impl<T, L: RawLock, S: PageSource> Drop for ObjectPool<'_, T, L, S> {
    fn drop(&mut self) {
        // A pool with leaked blocks stays; there is nobody to report the error to.
        let _ = self.allocator.destroy();
    }
}

/// A `T` in a block of an [`ObjectPool`]; dropping it drops the `T` and frees the block.
pub struct PoolBox<'p, T, L: RawLock, S: PageSource> {
    ptr: NonNull<T>,
    allocator: PoolAllocator<'p, L, S>,
    _owns: PhantomData<T>,
}

// SAFETY: a `PoolBox` owns its `T` like a `Box` does; freeing goes through the locked heap,
// which is shareable when it is `Sync`.
unsafe impl<T: Send, L: RawLock, S: PageSource> Send for PoolBox<'_, T, L, S> where
    LockedHeap<L, S>: Sync
{
}

// SAFETY: shared access to a `PoolBox` only gives `&T`.
unsafe impl<T: Sync, L: RawLock, S: PageSource> Sync for PoolBox<'_, T, L, S> where
    LockedHeap<L, S>: Sync
{
}

impl<'p, T, L: RawLock, S: PageSource> PoolBox<'p, T, L, S> {
    /// Moves the value out and frees the block.
    pub fn into_inner(b: Self) -> T {
        let b = ManuallyDrop::new(b);
        // SAFETY: the block holds a live `T` that nobody else owns; it is read once, then the
        // block is freed without dropping it again.
        unsafe {
            let value = b.ptr.as_ptr().read();
            b.allocator.deallocate_block(b.ptr.cast());
            value
        }
    }

    /// Gives up ownership without freeing: the block stays allocated until passed to
    /// [`ObjectPool::deallocate_raw`].
    pub fn into_raw(b: Self) -> NonNull<T> {
        ManuallyDrop::new(b).ptr
    }
}

impl<T, L: RawLock, S: PageSource> Deref for PoolBox<'_, T, L, S> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the block holds a live `T` owned by this box.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, L: RawLock, S: PageSource> DerefMut for PoolBox<'_, T, L, S> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the block holds a live `T` owned (exclusively) by this box.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: fmt::Debug, L: RawLock, S: PageSource> fmt::Debug for PoolBox<'_, T, L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T, L: RawLock, S: PageSource> Drop for PoolBox<'_, T, L, S> {
    fn drop(&mut self) {
        // SAFETY: the box owns a live `T` in a block of its pool; dropped once, freed once.
        unsafe {
            self.ptr.as_ptr().drop_in_place();
            self.allocator.deallocate_block(self.ptr.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locked::SpinLock;
    use crate::testing::ArenaSource;
    use std::rc::Rc;

    type Heap = LockedHeap<SpinLock, ArenaSource>;

    fn heap() -> Heap {
        let h = Heap::empty();
        h.init(ArenaSource::new(256)).unwrap();
        h
    }

    #[test]
    fn boxes_drop_and_free() {
        let heap = heap();
        let counter = Rc::new(());
        {
            let pool = ObjectPool::<(Rc<()>, u64), _, _>::new(&heap).unwrap();
            let mut boxes = std::vec::Vec::new();
            for i in 0..100 {
                boxes.push(pool.allocate((counter.clone(), i)).unwrap());
            }
            assert_eq!(Rc::strong_count(&counter), 101);
            assert_eq!(boxes[7].1, 7);
            boxes[7].1 = 70;
            assert_eq!(boxes[7].1, 70);
            let b = boxes.pop().unwrap();
            let (rc, v) = PoolBox::into_inner(b);
            assert_eq!(v, 99);
            drop(rc);
            let raw = PoolBox::into_raw(boxes.pop().unwrap());
            // SAFETY: from this pool, live.
            unsafe { pool.deallocate_raw(raw) };
            pool.deallocate(boxes.pop().unwrap());
            drop(boxes);
            assert_eq!(Rc::strong_count(&counter), 1);
            let g = heap.lock().unwrap();
            g.check_invariants().unwrap();
            assert_eq!(g.stats().user_pools, 1);
        }
        let g = heap.lock().unwrap();
        assert_eq!(g.stats().user_pools, 0);
        g.check_invariants().unwrap();
    }

    #[test]
    fn tiny_and_zero_sized_objects() {
        let heap = heap();
        let bytes = ObjectPool::<u8, _, _>::new(&heap).unwrap();
        let units = ObjectPool::<(), _, _>::new(&heap).unwrap();
        let mut v = std::vec::Vec::new();
        for i in 0..if cfg!(miri) { 500 } else { 5000u32 } {
            v.push(bytes.allocate(i as u8).unwrap());
        }
        for (i, b) in v.iter().enumerate() {
            assert_eq!(**b, i as u8);
        }
        let u = units.allocate(()).unwrap();
        drop(u);
        drop(v);
        heap.lock().unwrap().check_invariants().unwrap();
    }

    #[test]
    fn leaked_box_keeps_the_pool() {
        let heap = heap();
        let pool = ObjectPool::<u32, _, _>::new(&heap).unwrap();
        let raw = PoolBox::into_raw(pool.allocate(5).unwrap());
        let allocator = pool.allocator();
        drop(pool);
        assert_eq!(
            allocator.destroy(),
            Err(PoolError::PoolInUse { live_blocks: 1 })
        );
        // SAFETY: a live block of this pool; `u32` needs no drop.
        unsafe { allocator.deallocate_block(raw.cast()) };
        allocator.destroy().unwrap();
        assert_eq!(allocator.destroy(), Err(PoolError::NoSuchPool));
    }

    #[cfg(feature = "allocator-api")]
    #[test]
    fn box_new_in_pool() {
        extern crate alloc;
        use alloc::boxed::Box;
        use core::alloc::Allocator;

        let heap = heap();
        let pool = PoolAllocator::create(&heap, Layout::new::<[u64; 3]>()).unwrap();
        {
            let b = Box::new_in([1u64, 2, 3], &pool);
            assert_eq!(b[2], 3);
            let small = Box::new_in(7u16, pool);
            assert_eq!(*small, 7);
            assert!(Box::try_new_in([0u64; 4], &pool).is_err());
            assert!(
                pool.allocate(Layout::from_size_align(8, 64).unwrap())
                    .is_err()
            );
            assert_eq!(
                heap.lock().unwrap().stats().pools[0].unwrap().blocks.in_use,
                2
            );
        }
        assert_eq!(
            heap.lock().unwrap().stats().pools[0].unwrap().blocks.in_use,
            0
        );
        pool.destroy().unwrap();
        assert!(Box::try_new_in(1u8, &pool).is_err());
    }
}
