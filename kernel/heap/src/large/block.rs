//! Block headers: the 16 bytes in front of every block of a region (and of a page run's data),
//! which double as the boundary tag of the block before.
//!
//! ```text
//! block + 0   prev_size   usize  size of the physically preceding block; 0 = first in region
//! block + 8   size_state  usize  bits 0..4 state (USED, FREE, END or RUN, exactly one bit),
//!                                bits 4..48 block size in bytes (header included, multiple of 16),
//!                                bits 48..64 a check tag derived from the block's address
//! block + 16  payload (a USED block), or the free-list links of a FREE block:
//! block + 16  next_free   *mut u8  next block in the same bin, or null
//! block + 24  prev_free   *mut u8  previous block in the same bin; null = bin head
//! ```

use core::ptr::NonNull;

/// Granule of block addresses and sizes. Every block starts 16-aligned and is a multiple of 16
/// long, so every payload is 16-aligned (what `u128` and SSE values need) and the low four bits
/// of a size word are free to hold the state.
pub(super) const GRANULE: usize = 16;
/// `log2(GRANULE)`.
pub(super) const GRANULE_LOG: u32 = 4;
/// Bytes of a block header: `prev_size` and the size/state word.
pub(super) const HEADER: usize = 16;
/// Smallest block: a header plus the two free-list links every free block must be able to hold.
pub(super) const MIN_BLOCK: usize = 32;

// Headers keep payloads granule-aligned, and a free block holds its two links.
const _: () =
    assert!(HEADER.is_multiple_of(GRANULE) && MIN_BLOCK >= HEADER + 2 * size_of::<usize>());
// The size word packs a 48-bit size, the state and a 16-bit tag.
const _: () = assert!(usize::BITS == 64);

/// State bit: the block is allocated.
pub(super) const USED: usize = 0b0001;
/// State bit: the block is free and in a bin.
pub(super) const FREE: usize = 0b0010;
/// State bit: the region's end sentinel (size 0).
pub(super) const END: usize = 0b0100;
/// State bit: the header in front of a page run's data.
pub(super) const RUN: usize = 0b1000;
/// The state bits of a size word.
const STATE_MASK: usize = GRANULE - 1;
/// Position of the 16-bit check tag in a size word.
pub(super) const TAG_SHIFT: u32 = 48;
/// The size bits of a size word.
const SIZE_MASK: usize = ((1 << TAG_SHIFT) - 1) & !STATE_MASK;

/// The check tag of a header at `addr`: a 16-bit hash of the address, so that a stale or forged
/// header at another address, or a header-shaped pattern in user data, is most likely rejected.
const fn tag(addr: usize) -> usize {
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> TAG_SHIFT) ^ 0x4B48
}

/// The tag of a header at `addr`, in place in the size word.
const fn tag_bits(addr: usize) -> usize {
    tag(addr) << TAG_SHIFT
}

/// A block (or sentinel, or run tag) header at a 16-aligned address inside a mapping.
///
/// Address arithmetic is safe; every accessor that touches memory is `unsafe` and requires that
/// the header (and, for the link accessors, the 16 bytes after it) lies inside a mapping that
/// this allocator owns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Block(pub(super) *mut u8);

impl Block {
    /// The header in front of a user pointer.
    pub(super) fn from_user(ptr: NonNull<u8>) -> Self {
        Self(ptr.as_ptr().wrapping_sub(HEADER))
    }

    pub(super) fn addr(self) -> usize {
        self.0.addr()
    }

    /// The header `n` bytes further on (address arithmetic only).
    pub(super) fn forward(self, n: usize) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// The header `n` bytes before (address arithmetic only).
    pub(super) fn back(self, n: usize) -> Self {
        Self(self.0.wrapping_sub(n))
    }

    /// The user pointer of this block.
    pub(super) fn user(self) -> NonNull<u8> {
        let ptr = self.0.wrapping_add(HEADER);
        // A header lies inside a mapping, which never ends at the top of the address space, so
        // the payload address is not null; the fallback only keeps this function total.
        NonNull::new(ptr).unwrap_or(NonNull::dangling())
    }

    /// # Safety
    ///
    /// The 16 bytes at `self` lie inside a mapping of this allocator.
    pub(super) unsafe fn prev_size(self) -> usize {
        // SAFETY: the caller guarantees the header is mapped; it is 16-aligned.
        unsafe { self.0.cast::<usize>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::prev_size`], and the allocator has exclusive use of the header.
    pub(super) unsafe fn set_prev_size(self, size: usize) {
        // SAFETY: the caller guarantees the header is mapped and ours to write; it is aligned.
        unsafe { self.0.cast::<usize>().write(size) }
    }

    /// The raw size/state word.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    unsafe fn word(self) -> usize {
        // SAFETY: the caller guarantees the header is mapped; offset 8 is within it and aligned.
        unsafe { self.0.wrapping_add(8).cast::<usize>().read() }
    }

    /// Writes the size/state word, with the tag of this address.
    ///
    /// # Safety
    ///
    /// As for [`Block::set_prev_size`].
    pub(super) unsafe fn set(self, size: usize, state: usize) {
        debug_assert!(size & !SIZE_MASK == 0 && state & !STATE_MASK == 0);
        let word = size | state | tag_bits(self.addr());
        // SAFETY: the caller guarantees the header is mapped and ours to write; it is aligned.
        unsafe { self.0.wrapping_add(8).cast::<usize>().write(word) }
    }

    /// Rewrites the size and state of a header [`set`](Self::set) wrote, keeping its tag (which
    /// depends on the address only): no tag to compute.
    ///
    /// # Safety
    ///
    /// As for [`Block::set_prev_size`], and the header holds a word `set` wrote at this address.
    pub(super) unsafe fn reset(self, size: usize, state: usize) {
        debug_assert!(size & !SIZE_MASK == 0 && state & !STATE_MASK == 0);
        // SAFETY: forwarded from the caller.
        unsafe {
            let tag = self.word() & !(SIZE_MASK | STATE_MASK);
            debug_assert!(tag == tag_bits(self.addr()));
            self.0
                .wrapping_add(8)
                .cast::<usize>()
                .write(tag | size | state);
        }
    }

    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    pub(super) unsafe fn size(self) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { self.word() & SIZE_MASK }
    }

    /// The state bits, trusted (no tag check).
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    pub(super) unsafe fn state(self) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe { self.word() & STATE_MASK }
    }

    /// The state, if the header is well-formed: the right tag for its address and exactly one
    /// state bit set.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    pub(super) unsafe fn checked_state(self) -> Option<usize> {
        // SAFETY: forwarded from the caller.
        let word = unsafe { self.word() };
        let state = word & STATE_MASK;
        (word >> TAG_SHIFT == tag(self.addr()) && state.is_power_of_two()).then_some(state)
    }

    /// The physically next block (or sentinel).
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    pub(super) unsafe fn next(self) -> Self {
        // SAFETY: forwarded from the caller.
        self.forward(unsafe { self.size() })
    }

    /// The physically previous block, or `None` for the first block of a region.
    ///
    /// # Safety
    ///
    /// As for [`Block::prev_size`].
    pub(super) unsafe fn prev(self) -> Option<Self> {
        // SAFETY: forwarded from the caller.
        let prev_size = unsafe { self.prev_size() };
        (prev_size != 0).then(|| self.back(prev_size))
    }

    /// # Safety
    ///
    /// `self` is a free block (so at least [`MIN_BLOCK`] bytes) inside a mapping of this
    /// allocator.
    pub(super) unsafe fn next_free(self) -> *mut u8 {
        // SAFETY: a free block is at least MIN_BLOCK bytes, so offset 16 holds the link.
        unsafe { self.0.wrapping_add(HEADER).cast::<*mut u8>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::next_free`].
    pub(super) unsafe fn prev_free(self) -> *mut u8 {
        // SAFETY: a free block is at least MIN_BLOCK bytes, so offset 24 holds the link.
        unsafe { self.0.wrapping_add(HEADER + 8).cast::<*mut u8>().read() }
    }

    /// # Safety
    ///
    /// As for [`Block::next_free`], and the block is the allocator's to write.
    pub(super) unsafe fn set_next_free(self, next: *mut u8) {
        // SAFETY: see `next_free`; the caller guarantees exclusive use.
        unsafe { self.0.wrapping_add(HEADER).cast::<*mut u8>().write(next) }
    }

    /// # Safety
    ///
    /// As for [`Block::set_next_free`].
    pub(super) unsafe fn set_prev_free(self, prev: *mut u8) {
        // SAFETY: see `prev_free`; the caller guarantees exclusive use.
        unsafe {
            self.0
                .wrapping_add(HEADER + 8)
                .cast::<*mut u8>()
                .write(prev)
        }
    }
}

/// Block size (header included) for a payload of `size` bytes, or `None` if that overflows.
pub(super) const fn block_size_for(size: usize) -> Option<usize> {
    match size.checked_add(HEADER + GRANULE - 1) {
        Some(n) => {
            let n = n & !(GRANULE - 1);
            Some(if n < MIN_BLOCK { MIN_BLOCK } else { n })
        }
        None => None,
    }
}
