//! Magazines: small stacks of free blocks in front of chunk lists, that most allocations and
//! frees stop at.
//!
//! A [`Magazine`] holds up to `CAP` pointers to free blocks of one block size, used LIFO. Every
//! general size class has one of [`MAG_CAP`] blocks in the heap state, and every user pool of
//! 8-byte blocks and more one of [`POOL_MAG_CAP`] blocks in its header: one type, two sizes.
//! A `Magazine` is the count and the slots, borrowed from where they are kept, and all the
//! magazine logic: a [`MagazineStore`] keeps one magazine (a pool's); [`ClassMagazines`] keeps
//! the 36 of the general classes with their counts side by side, so that the fast paths find a
//! class's count at `counts + class × 4` and its slots at `slots + class × 512`, two addresses
//! the processor computes in its load instructions (one struct per class magazine, 520 bytes
//! apart, cost the fast paths an extra multiply before their first load).
//! An allocation pops the most recently freed block and a free pushes the block it is given, so
//! the common call touches the magazine and nothing else: not the chunk descriptor, not the
//! chunk lists, and not the block itself (a chunk free writes a link into the block, usually a
//! cache miss for a long-lived object). Only when a magazine runs empty or full does the heap go
//! to the chunks, bounded so that no single call does much more than another (module `back`):
//!
//! ```text
//!   allocate, magazine empty:  take up to BATCH blocks, at most a page's worth of bytes
//!                              (`back::BATCH_BYTES`: one 4096-byte block, four of 1024), from
//!                              the chunks (one new chunk at most), then pop
//!   deallocate, magazine full: give the block straight back to its chunk (one page-map
//!                              lookup; a chunk it empties waits, pending), the magazine unchanged
//! ```
//!
//! Those are the *back*'s operations (`back::Back::refill` and `give_back_one`), and they take
//! the magazine or the lists from outside: a magazine is usable wherever its store lives (the
//! heap state and pool headers; the per-CPU fronts of `PerCpuHeap` keep theirs in per-CPU data).
//! Refilling in batches means a cache that alternates between allocation and free around the
//! empty end does not bounce into a slow path on every call: after a refill the magazine is
//! `BATCH` blocks away from that end. At the full end there is nothing to bounce: a free past it
//! costs one give-back, and the allocation after it pops a cached block. (Frees used to give
//! the `BATCH` oldest blocks back at once, which made that one call the heap's longest free.)
//!
//! A block in a magazine is still counted as used by its chunk (so the chunk is never released
//! under it), but it is free for the heap: statistics count it as free, not in use, and it is
//! not part of the requested or held bytes. With `debug-checks`, its bit in the chunk's allocated
//! bitmap is clear while it sits in the magazine ("free but cached"): freeing it a second time is
//! caught as a double free at once, and popping it sets the bit again. Pointers are stored with
//! a provenance that covers the whole block (rebuilt on free from the chunk page or the page
//! source's window), so a block handed out again is never reached through the pointer an earlier
//! owner freed.
//!
//! `Heap::trim` empties every magazine into the chunks, so trimming still returns every unused
//! page; so does a failed allocation before it retries (see `Heap::allocate`).
//!
//! The class magazines take 18.1 KiB of the heap state (36 classes × 64 pointers, and the
//! counts), which is why the first root run is six pages (see the crate documentation). Pools of
//! 1–7-byte blocks have none: their chunks track free blocks in a bitmap, which is also what
//! catches a double free there, and a cached block would hide from it.

use core::ptr::{self, NonNull};

use crate::size_class::NUM_CLASSES;

/// Blocks the magazine of a general class holds. With 64, a class with random allocations and
/// frees reaches its chunks about once in several hundred calls. Measured on the host benchmark:
/// 32 was slower, 128 (and even 1024) no faster. The blocks a magazine can hide stay bounded: 64
/// pages for the 4096-byte class, 16 KiB of 256-byte blocks; `Heap::trim` and a failed
/// allocation give them back.
pub const MAG_CAP: usize = 64;

/// Blocks moved at once between a class's magazine and its chunks.
pub const MAG_BATCH: usize = Magazine::<MAG_CAP>::BATCH;

/// Blocks the magazine of a user pool holds. Smaller than a class's: it lives in the pool's
/// header slot, so it sets the slot size (344 bytes: a pool run holds 11 headers), and a pool
/// serves one object type whose owner usually frees and allocates in step.
pub const POOL_MAG_CAP: usize = 32;

/// A LIFO cache of up to `CAP` free blocks of one block size (see the module documentation):
/// the count and the slots of a magazine, borrowed from its store.
///
/// Invariant (kept by every method, and by the stores, whose fields only a `Magazine` writes):
/// the count is at most `CAP`, and the first `count` slots hold blocks (non-null), oldest first.
#[derive(Debug)]
pub struct Magazine<'a, const CAP: usize> {
    len: &'a mut u32,
    slots: &'a mut [*mut u8; CAP],
}

impl<'a, const CAP: usize> Magazine<'a, CAP> {
    /// Blocks a refill moves from the chunks into an empty magazine: a quarter of it (at most a
    /// page's worth of bytes, `back::BATCH_BYTES`). After a refill the magazine is `BATCH` away
    /// from empty; a cache whose calls wander at random comes back there after about
    /// `BATCH × (CAP - BATCH)` calls. Measured (when frees moved batches too): a quarter beat a
    /// half and an eighth. A free into a full magazine moves one block, not a batch.
    pub const BATCH: usize = CAP / 4;

    /// The magazine whose count and slots these are.
    ///
    /// # Safety
    ///
    /// `*len <= CAP`, and the first `*len` slots hold non-null blocks.
    #[inline(always)]
    pub unsafe fn new(len: &'a mut u32, slots: &'a mut [*mut u8; CAP]) -> Self {
        Self { len, slots }
    }

    /// The same magazine, for a shorter borrow (to hand it to a batch operation by value).
    #[inline(always)]
    pub fn reborrow(&mut self) -> Magazine<'_, CAP> {
        Magazine {
            len: self.len,
            slots: self.slots,
        }
    }

    /// Blocks cached.
    #[inline]
    pub fn len(&self) -> usize {
        *self.len as usize
    }

    /// Whether the magazine holds `CAP` blocks.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len() == CAP
    }

    /// The cached blocks, oldest first.
    pub fn cached(&self) -> &[*mut u8] {
        &self.slots[..self.len()]
    }

    /// Takes the most recently cached block, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<NonNull<u8>> {
        let n = self.len.checked_sub(1)? as usize;
        *self.len = n as u32;
        // SAFETY: `n < len <= CAP`, and the first `len` slots hold non-null blocks (invariant).
        Some(unsafe { NonNull::new_unchecked(*self.slots.get_unchecked(n)) })
    }

    /// Caches `block`, unless the magazine is full (then `false`, and nothing changed).
    #[inline]
    #[must_use = "a full magazine does not take the block"]
    pub fn push(&mut self, block: NonNull<u8>) -> bool {
        let n = self.len();
        if n == CAP {
            return false;
        }
        // SAFETY: `n < CAP`.
        unsafe { *self.slots.get_unchecked_mut(n) = block.as_ptr() };
        *self.len += 1;
        true
    }

    /// The free slots a refill writes to: those after the cached blocks, at most `budget` of
    /// them. [`filled`](Self::filled) then records how many it wrote.
    pub fn room(&mut self, budget: usize) -> &mut [*mut u8] {
        let len = self.len();
        let end = len.saturating_add(budget).min(CAP);
        &mut self.slots[len..end]
    }

    /// Records that the first `n` slots of [`room`](Self::room) now hold blocks (non-null).
    pub fn filled(&mut self, n: usize) {
        let len = self.len() + n;
        assert!(len <= CAP);
        debug_assert!(self.slots[self.len()..len].iter().all(|p| !p.is_null()));
        *self.len = len as u32;
    }

    /// Forgets the `n` oldest blocks (at most all; `flush` gives them back to their chunks
    /// first); the newer blocks move down.
    pub fn drop_oldest(&mut self, n: usize) {
        let len = self.len();
        let n = n.min(len);
        self.slots.copy_within(n..len, 0);
        *self.len = (len - n) as u32;
    }
}

/// Where one magazine is kept: its count and its slots.
#[derive(Debug)]
#[repr(C)]
pub struct MagazineStore<const CAP: usize> {
    len: u32,
    slots: [*mut u8; CAP],
}

impl<const CAP: usize> MagazineStore<CAP> {
    /// An empty magazine.
    pub const fn new() -> Self {
        assert!(CAP <= u32::MAX as usize);
        Self {
            len: 0,
            slots: [ptr::null_mut(); CAP],
        }
    }

    /// The magazine.
    #[inline(always)]
    pub fn magazine(&mut self) -> Magazine<'_, CAP> {
        // SAFETY: only a `Magazine` writes the fields, and it keeps their invariant.
        unsafe { Magazine::new(&mut self.len, &mut self.slots) }
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// The cached blocks, oldest first.
    pub fn cached(&self) -> &[*mut u8] {
        &self.slots[..self.len()]
    }
}

impl<const CAP: usize> Default for MagazineStore<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the magazines of the general classes are kept: the counts side by side, then the slots.
#[derive(Debug)]
#[repr(C)]
pub struct ClassMagazines {
    /// Blocks held by the magazine of each class.
    len: [u32; NUM_CLASSES],
    /// `slots[i]`: the slots of class `i`'s magazine.
    slots: [[*mut u8; MAG_CAP]; NUM_CLASSES],
}

impl ClassMagazines {
    /// Empty magazines.
    pub const fn new() -> Self {
        Self {
            len: [0; NUM_CLASSES],
            slots: [[ptr::null_mut(); MAG_CAP]; NUM_CLASSES],
        }
    }

    /// The magazine of class `i`. Takes a raw pointer and borrows one class's count and slots:
    /// a reference to all 18 KiB for every allocation would cost nothing natively but makes every
    /// call O(18 KiB) under Miri (a retag is proportional to the size of the referent).
    ///
    /// # Safety
    ///
    /// `this` must point to live class magazines that nothing else borrows for `'a`, and
    /// `i < NUM_CLASSES`.
    #[inline(always)]
    pub unsafe fn magazine<'a>(this: *mut Self, i: usize) -> Magazine<'a, MAG_CAP> {
        // SAFETY: `i` is in bounds (caller), so both pointers stay inside the arrays; only a
        // `Magazine` writes the fields, and it keeps their invariant.
        unsafe {
            let len = &mut *(&raw mut (*this).len).cast::<u32>().add(i);
            let slots = &mut *(&raw mut (*this).slots).cast::<[*mut u8; MAG_CAP]>().add(i);
            Magazine::new(len, slots)
        }
    }

    /// The blocks class `i`'s magazine holds, oldest first.
    pub fn cached(&self, i: usize) -> &[*mut u8] {
        &self.slots[i][..self.len[i] as usize]
    }
}

impl Default for ClassMagazines {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize) -> (std::vec::Vec<u64>, std::vec::Vec<NonNull<u8>>) {
        let mut storage = std::vec![0u64; n];
        let ptrs = storage
            .iter_mut()
            .map(|b| NonNull::from(b).cast::<u8>())
            .collect();
        (storage, ptrs)
    }

    fn lifo_and_oldest_first<const CAP: usize>(mut m: Magazine<'_, CAP>) {
        let (_storage, ptrs) = blocks(CAP + 1);
        let raw = |p: &[NonNull<u8>]| p.iter().map(|p| p.as_ptr()).collect::<std::vec::Vec<_>>();
        assert_eq!(m.pop(), None);
        for &p in &ptrs[..CAP] {
            assert!(!m.is_full());
            assert!(m.push(p));
        }
        assert!(m.is_full());
        assert!(!m.push(ptrs[CAP]), "full");
        assert_eq!(m.len(), CAP);
        let batch = Magazine::<CAP>::BATCH;
        assert_eq!(&m.cached()[..batch], &raw(&ptrs[..batch])[..]);
        m.drop_oldest(batch);
        assert_eq!(m.cached(), &raw(&ptrs[batch..CAP])[..]);
        assert_eq!(m.pop(), Some(ptrs[CAP - 1]));
        assert!(m.push(ptrs[CAP]));
        assert_eq!(m.pop(), Some(ptrs[CAP]));
        assert_eq!(m.len(), CAP - batch - 1);
        m.drop_oldest(CAP);
        assert_eq!(m.len(), 0);
        assert_eq!(m.pop(), None);
        // A refill writes into the room after the cached blocks, at most its budget.
        assert!(m.push(ptrs[0]));
        let room = m.room(batch);
        assert_eq!(room.len(), batch);
        room[0] = ptrs[1].as_ptr();
        room[1] = ptrs[2].as_ptr();
        m.filled(2);
        assert_eq!(m.pop(), Some(ptrs[2]));
        assert_eq!(m.pop(), Some(ptrs[1]));
        assert_eq!(m.pop(), Some(ptrs[0]));
        assert_eq!(m.room(2 * CAP).len(), CAP);
    }

    #[test]
    fn class_magazines_are_lifo_and_flush_oldest_first() {
        let mut mags = ClassMagazines::new();
        // SAFETY: `mags` is live and borrowed by nothing else; 3 and 5 are class indices.
        let (m, other) = unsafe {
            let this = &raw mut mags;
            (
                ClassMagazines::magazine(this, 3),
                ClassMagazines::magazine(this, 5),
            )
        };
        lifo_and_oldest_first(m);
        assert_eq!(other.len(), 0, "each class has its own magazine");
        assert_eq!(MAG_BATCH, 16);
        assert!(mags.cached(3).is_empty());
    }

    #[test]
    fn pool_magazines_are_lifo_and_flush_oldest_first() {
        let mut store = MagazineStore::<POOL_MAG_CAP>::new();
        lifo_and_oldest_first(store.magazine());
        assert_eq!(store.len(), 0);
        assert_eq!(Magazine::<POOL_MAG_CAP>::BATCH, 8);
    }
}
