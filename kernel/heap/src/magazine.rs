//! Magazines: per-class stacks of free blocks that most allocations and frees stop at.
//!
//! Each general size class has a *magazine* in the heap state: up to [`MAG_CAP`] pointers to
//! free blocks of that class, used LIFO. `Heap::allocate` pops the most recently freed block and
//! `Heap::deallocate` pushes the block it is given, so the common call touches the class's
//! magazine and nothing else: not the chunk descriptor, not the pool's lists, and not the block
//! itself (a chunk free writes a link into the block, usually a cache miss for a long-lived
//! object). Only when a magazine runs empty or full does the heap go to the chunks, in batches
//! of [`MAG_BATCH`] blocks:
//!
//! ```text
//!   allocate, magazine empty:  take up to MAG_BATCH blocks from the class's chunks (one new
//!                              chunk at most), then pop
//!   deallocate, magazine full: give the MAG_BATCH oldest blocks back to their chunks (one
//!                              page-map lookup each), keep the newer ones, then push
//! ```
//!
//! Working in batches means a class that alternates between allocation and free around either
//! end does not bounce into a slow path on every call: after a refill or a flush the magazine is
//! [`MAG_BATCH`] blocks away from that end, and a random walk of allocations and frees needs on
//! the order of `MAG_BATCH × (MAG_CAP - MAG_BATCH)` calls to reach an end again.
//!
//! A block in a magazine is still counted as used by its chunk (so the chunk is never released
//! under it), but it is free for the heap: statistics count it as free, not in use, and it is
//! not part of the requested or held bytes. With `debug-checks`, its bit in the chunk's allocated
//! bitmap is clear while it sits in the magazine ("free but cached"): freeing it a second time is
//! caught as a double free at once, and popping it sets the bit again. Pointers are stored with
//! the provenance of their chunk page (rebuilt on free from the descriptor the page map names), so
//! a block handed out again is never reached through the pointer an earlier owner freed.
//!
//! `Heap::trim` empties every magazine into the chunks, so trimming still returns every unused
//! page; so does a failed allocation before it retries (see `Heap::allocate`).
//!
//! The magazines take 18.1 KiB of the heap state (36 classes × 64 pointers plus the counts), which
//! is why the first root run is six pages (see the crate documentation). The hot paths index them
//! without bounds checks: the methods that do take a class index the caller guarantees
//! (`size_class::class_for` only produces indices below `NUM_CLASSES`), and a count never
//! exceeds [`MAG_CAP`].

use core::ptr::{self, NonNull};

use crate::size_class::NUM_CLASSES;

/// Blocks one magazine holds. With 64, a class with random allocations and frees reaches its
/// chunks about once in several hundred calls. Measured on the host benchmark: 32 was slower,
/// 128 (and even 1024) no faster. The blocks a magazine can hide stay bounded: 64 pages for the
/// 4096-byte class, 16 KiB of 256-byte blocks; `Heap::trim` and a failed allocation give them
/// back.
pub const MAG_CAP: usize = 64;

/// Blocks moved at once between a magazine and the chunks: a quarter of a magazine. After a
/// batch the magazine is `MAG_BATCH` away from the end that triggered it; a class whose calls
/// wander at random comes back to an end after about `MAG_BATCH × (MAG_CAP - MAG_BATCH)` calls
/// and then moves `MAG_BATCH` blocks, so it moves `1 / (MAG_CAP - MAG_BATCH)` blocks per call (a
/// half-magazine batch moves `2 / MAG_CAP`), and each move costs a cache miss on a cold block.
/// Measured: a quarter beat a half and an eighth.
pub const MAG_BATCH: usize = MAG_CAP / 4;

/// The magazines of all general classes. Lives in the heap state.
#[derive(Debug)]
#[repr(C)]
pub struct Magazines {
    /// Blocks held by the magazine of each class (at most [`MAG_CAP`]).
    len: [u32; NUM_CLASSES],
    /// `slots[i][..len[i]]`: the free blocks of class `i`, oldest first; never null.
    slots: [[*mut u8; MAG_CAP]; NUM_CLASSES],
}

impl Magazines {
    /// Empty magazines.
    pub const fn new() -> Self {
        Self {
            len: [0; NUM_CLASSES],
            slots: [[ptr::null_mut(); MAG_CAP]; NUM_CLASSES],
        }
    }

    // The operations below take a raw pointer to the magazines and touch only the count and
    // the slots of one class: a reference to the whole 18 KiB array for every allocation would
    // cost nothing natively but makes every call O(18 KiB) under Miri (a retag is proportional
    // to the size of the referent), and the heap state is reached by raw pointer anyway.

    /// Pointer to the count of class `i`.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines and `i < NUM_CLASSES`.
    #[inline(always)]
    unsafe fn len_ptr(this: *mut Self, i: usize) -> *mut u32 {
        // SAFETY: in bounds of the `len` array (caller).
        unsafe { (&raw mut (*this).len).cast::<u32>().add(i) }
    }

    /// Pointer to slot `n` of class `i`.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines, `i < NUM_CLASSES` and `n < MAG_CAP`.
    #[inline(always)]
    unsafe fn slot_ptr(this: *mut Self, i: usize, n: usize) -> *mut *mut u8 {
        // SAFETY: in bounds of the `slots` array (caller).
        unsafe {
            (&raw mut (*this).slots)
                .cast::<*mut u8>()
                .add(i * MAG_CAP + n)
        }
    }

    /// Blocks cached for class `i`.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines and `i < NUM_CLASSES`.
    #[inline]
    pub unsafe fn len(this: *const Self, i: usize) -> usize {
        // SAFETY: guaranteed by the caller.
        unsafe { *Self::len_ptr(this.cast_mut(), i) as usize }
    }

    /// The cached blocks of class `i`, oldest first.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines that nothing changes while the slice lives, and
    /// `i < NUM_CLASSES`.
    pub unsafe fn cached<'a>(this: *const Self, i: usize) -> &'a [*mut u8] {
        // SAFETY: the first `len` slots of class `i` are initialised and in bounds (caller).
        unsafe {
            let this = this.cast_mut();
            core::slice::from_raw_parts(Self::slot_ptr(this, i, 0), Self::len(this, i))
        }
    }

    /// Takes the most recently cached block of class `i`, if any.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines and `i < NUM_CLASSES`.
    #[inline]
    pub unsafe fn pop(this: *mut Self, i: usize) -> Option<NonNull<u8>> {
        // SAFETY: `i` is in bounds (caller); a count is at most `MAG_CAP`, so `n` indexes a
        // filled slot, and filled slots hold the non-null blocks `push` stored.
        unsafe {
            let len = Self::len_ptr(this, i);
            let n = (*len).checked_sub(1)?;
            *len = n;
            Some(NonNull::new_unchecked(*Self::slot_ptr(this, i, n as usize)))
        }
    }

    /// Caches `block` for class `i`.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines, `i < NUM_CLASSES`, and the magazine must not be
    /// full.
    #[inline]
    pub unsafe fn push(this: *mut Self, i: usize, block: NonNull<u8>) {
        // SAFETY: `i` is in bounds and the count below `MAG_CAP` (caller).
        unsafe {
            let len = Self::len_ptr(this, i);
            debug_assert!((*len as usize) < MAG_CAP);
            *Self::slot_ptr(this, i, *len as usize) = block.as_ptr();
            *len += 1;
        }
    }

    /// Whether the magazine of class `i` is full.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines and `i < NUM_CLASSES`.
    #[inline]
    pub unsafe fn is_full(this: *const Self, i: usize) -> bool {
        // SAFETY: guaranteed by the caller.
        unsafe { Self::len(this, i) == MAG_CAP }
    }

    /// The first `n` slots of class `i`'s magazine, to be filled by a refill (the magazine must
    /// be empty); [`set_len`](Self::set_len) then records how many were filled.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines that nothing else touches while the slice lives,
    /// `i < NUM_CLASSES` and `n <= MAG_CAP`.
    pub unsafe fn refill_room<'a>(this: *mut Self, i: usize, n: usize) -> &'a mut [*mut u8] {
        debug_assert!(n <= MAG_CAP);
        // SAFETY: the slots are in bounds (caller); raw pointers are valid at any value.
        unsafe {
            debug_assert_eq!(Self::len(this, i), 0);
            core::slice::from_raw_parts_mut(Self::slot_ptr(this, i, 0), n)
        }
    }

    /// Records that class `i`'s magazine holds its first `n` slots (all non-null).
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines, `i < NUM_CLASSES`, and the first `n` slots of the
    /// class must hold blocks.
    pub unsafe fn set_len(this: *mut Self, i: usize, n: usize) {
        assert!(n <= MAG_CAP);
        // SAFETY: guaranteed by the caller.
        unsafe { *Self::len_ptr(this, i) = n as u32 };
    }

    /// Removes the `n` oldest blocks of class `i` (at most all of them) and returns them, in a
    /// copy, oldest first, with their number; the newer blocks move down.
    ///
    /// # Safety
    ///
    /// `this` must point to live magazines and `i < NUM_CLASSES`.
    pub unsafe fn take_oldest(this: *mut Self, i: usize, n: usize) -> ([*mut u8; MAG_CAP], usize) {
        // SAFETY: the slots of class `i` are in bounds (caller); the copies stay inside them.
        unsafe {
            let len = Self::len(this, i);
            let n = n.min(len);
            let mut out = [ptr::null_mut(); MAG_CAP];
            let slots = Self::slot_ptr(this, i, 0);
            ptr::copy_nonoverlapping(slots, out.as_mut_ptr(), n);
            ptr::copy(slots.add(n), slots, len - n);
            *Self::len_ptr(this, i) = (len - n) as u32;
            (out, n)
        }
    }
}

/// Blocks the magazine of one user pool holds (pools of 8-byte blocks and more; see
/// [`PoolMagazine`]). Smaller than a class magazine: it lives in the pool's header slot, so it
/// sets the slot size (344 bytes: a pool run holds 11 headers), and a pool serves one object type whose
/// owner usually frees and allocates in step.
pub const POOL_MAG_CAP: usize = 32;

/// Blocks moved at once between a pool's magazine and its chunks: a quarter, as for the classes.
pub const POOL_MAG_BATCH: usize = POOL_MAG_CAP / 4;

/// The magazine of one user pool: the same LIFO cache of free blocks as a class's, kept in the
/// pool header. Pools of 1–7-byte blocks do not use it: their chunks track free blocks in a
/// bitmap, which is also what catches a double free there, and a cached block would hide from it.
#[derive(Debug)]
#[repr(C)]
pub struct PoolMagazine {
    /// Blocks held (at most [`POOL_MAG_CAP`]).
    len: u32,
    /// `slots[..len]`: the free blocks, oldest first; never null.
    slots: [*mut u8; POOL_MAG_CAP],
}

impl PoolMagazine {
    /// An empty magazine.
    pub const fn new() -> Self {
        Self {
            len: 0,
            slots: [ptr::null_mut(); POOL_MAG_CAP],
        }
    }

    /// Blocks cached.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// The cached blocks, oldest first.
    pub fn cached(&self) -> &[*mut u8] {
        &self.slots[..self.len()]
    }

    /// Takes the most recently cached block, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<NonNull<u8>> {
        let n = self.len.checked_sub(1)?;
        self.len = n;
        NonNull::new(self.slots[n as usize])
    }

    /// Caches `block`, unless the magazine is full (then `false`, and nothing changed).
    #[inline]
    pub fn push(&mut self, block: NonNull<u8>) -> bool {
        let n = self.len();
        if n == POOL_MAG_CAP {
            return false;
        }
        self.slots[n] = block.as_ptr();
        self.len += 1;
        true
    }

    /// The slots a refill of an empty magazine writes to; [`set_len`](Self::set_len) then
    /// records how many it filled.
    pub fn refill_room(&mut self) -> &mut [*mut u8] {
        debug_assert_eq!(self.len, 0);
        &mut self.slots[..POOL_MAG_BATCH]
    }

    /// Records that the first `n` slots hold blocks (non-null).
    pub fn set_len(&mut self, n: usize) {
        assert!(n <= POOL_MAG_CAP);
        self.len = n as u32;
    }

    /// Removes the `n` oldest blocks (at most all) and returns them, in a copy, oldest first,
    /// with their number; the newer blocks move down.
    pub fn take_oldest(&mut self, n: usize) -> ([*mut u8; POOL_MAG_CAP], usize) {
        let len = self.len();
        let n = n.min(len);
        let mut out = [ptr::null_mut(); POOL_MAG_CAP];
        out[..n].copy_from_slice(&self.slots[..n]);
        self.slots.copy_within(n..len, 0);
        self.len = (len - n) as u32;
        (out, n)
    }
}

impl Default for PoolMagazine {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Magazines {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_magazine_is_lifo_and_flushes_oldest_first() {
        let mut blocks = [0u64; POOL_MAG_CAP + 1];
        let ptrs: std::vec::Vec<NonNull<u8>> = blocks
            .iter_mut()
            .map(|b| NonNull::from(b).cast::<u8>())
            .collect();
        let mut m = PoolMagazine::new();
        assert_eq!(m.pop(), None);
        for &p in &ptrs[..POOL_MAG_CAP] {
            assert!(m.push(p));
        }
        assert!(!m.push(ptrs[POOL_MAG_CAP]), "full");
        assert_eq!(m.len(), POOL_MAG_CAP);
        let (old, n) = m.take_oldest(POOL_MAG_BATCH);
        assert_eq!(n, POOL_MAG_BATCH);
        assert_eq!(old[0], ptrs[0].as_ptr());
        assert_eq!(m.cached()[0], ptrs[POOL_MAG_BATCH].as_ptr());
        assert_eq!(m.pop(), Some(ptrs[POOL_MAG_CAP - 1]));
        let (_, n) = m.take_oldest(POOL_MAG_CAP);
        assert_eq!(n, POOL_MAG_CAP - POOL_MAG_BATCH - 1);
        assert_eq!(m.pop(), None);
        let room = m.refill_room();
        room[0] = ptrs[3].as_ptr();
        m.set_len(1);
        assert_eq!(m.pop(), Some(ptrs[3]));
    }

    #[test]
    fn lifo_and_oldest_first_flush() {
        let mut mags = Magazines::new();
        let m = &raw mut mags;
        let mut blocks = [0u64; MAG_CAP + 1];
        let ptrs: std::vec::Vec<NonNull<u8>> = blocks
            .iter_mut()
            .map(|b| NonNull::from(b).cast::<u8>())
            .collect();
        let raw = |p: &[NonNull<u8>]| p.iter().map(|p| p.as_ptr()).collect::<std::vec::Vec<_>>();
        // SAFETY: `m` points to live magazines used only through it; class 3 is in bounds;
        // every push below finds room (checked by `is_full`).
        unsafe {
            assert_eq!(Magazines::pop(m, 3), None);
            for &p in &ptrs[..MAG_CAP] {
                assert!(!Magazines::is_full(m, 3));
                Magazines::push(m, 3, p);
            }
            assert!(Magazines::is_full(m, 3));
            assert_eq!(Magazines::len(m, 3), MAG_CAP);
            assert_eq!(Magazines::len(m, 2), 0);
            let (old, n) = Magazines::take_oldest(m, 3, MAG_BATCH);
            assert_eq!(&old[..n], &raw(&ptrs[..MAG_BATCH])[..]);
            assert_eq!(Magazines::cached(m, 3), &raw(&ptrs[MAG_BATCH..MAG_CAP])[..]);
            assert_eq!(Magazines::pop(m, 3), Some(ptrs[MAG_CAP - 1]));
            Magazines::push(m, 3, ptrs[MAG_CAP]);
            assert_eq!(Magazines::pop(m, 3), Some(ptrs[MAG_CAP]));
            let (_, n) = Magazines::take_oldest(m, 3, MAG_CAP);
            assert_eq!(n, MAG_CAP - MAG_BATCH - 1);
            assert_eq!(Magazines::len(m, 3), 0);
            assert_eq!(Magazines::pop(m, 3), None);
            let room = Magazines::refill_room(m, 5, MAG_BATCH);
            room[0] = ptrs[0].as_ptr();
            room[1] = ptrs[1].as_ptr();
            Magazines::set_len(m, 5, 2);
            assert_eq!(Magazines::pop(m, 5), Some(ptrs[1]));
        }
    }
}
