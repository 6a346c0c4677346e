//! Chunks: one 4 KiB page from the page source split into equal blocks, and the descriptor that
//! describes it from outside (in a root-page slot).
//!
//! Two layouts, chosen by the pool's block size (the *stride*):
//!
//! ```text
//! list chunk (stride >= 8): every byte serves blocks; free blocks hold a 16-bit link
//!   0          stride      2*stride                   bump                 capacity*stride  4096
//!   +----------+-----------+-------- ... ------------+--------- ... ------+---- tail ----+
//!   | block 0  | block 1   |                          | never used yet      | (< stride)   |
//!   +----------+-----------+-------- ... ------------+--------- ... ------+--------------+
//!   a free block:  [u16 byte offset of the next free block, 0xFFFF = end][unused ...]
//!
//! tiny chunk (stride 1..=7): a two-level free bitmap in front of the blocks
//!   0        8                      8 + 8*W                                            4096
//!   +--------+----------------------+------------------------------------------------+
//!   |summary | W words of free bits | capacity blocks of `stride` bytes                |
//!   +--------+----------------------+------------------------------------------------+
//!   bit b of word w is set  <=>  block 64*w + b is free;
//!   bit w of summary is set <=>  word w has a set bit       (W <= 57, so one u64 suffices)
//! ```
//!
//! List chunks hand out never-used blocks from a bump cursor and recycled ones from a LIFO free
//! list whose links are byte offsets inside the chunk. Offsets rather than pointers: freeing needs
//! no division (`offset = addr & 4095`), a link is 2 bytes so it fits any block of 8 bytes or
//! more at any alignment (it is read and written unaligned), and a link overwritten by a
//! use-after-free is caught by one bounds check (`link < bump`) before it can send an allocation
//! outside the chunk. Tiny chunks (see [`TINY_LIMIT`]) track free blocks in a bitmap instead (a
//! 1-byte block cannot hold a link): allocation is two trailing-zero counts, free is two bit sets,
//! both O(1); a double free shows up as an already-set bit.
//!
//! Setting up a list chunk is O(1) (cursor and empty list); a tiny chunk writes its bitmap
//! (at most 58 words).

use core::ptr::{self, NonNull};

use crate::source::PAGE_SIZE;

/// End of a chunk free list: no block starts at offset 0xFFFF of a 4096-byte page.
pub const NONE: u16 = u16::MAX;

/// Strides below this use the tiny (bitmap) layout. A 2-byte link would fit blocks of 2 to 7
/// bytes too, but an allocated bitmap for double-free detection would not fit the descriptor
/// (up to 2048 blocks); with the free bitmap in the chunk, tiny chunks detect double frees for
/// free and need no per-size code path beyond this one.
pub const TINY_LIMIT: usize = 8;

/// `kind` byte of a slot that holds a chunk descriptor (see `root`). Slot kinds are distinct,
/// non-zero bytes, so a zeroed or recycled slot is never mistaken for another kind.
pub const KIND_CHUNK: u8 = 0xC7;

/// Which of its chunk lists a chunk is on.
pub mod list {
    /// Some blocks free, some in use.
    pub const PARTIAL: u8 = 1;
    /// No block free.
    pub const FULL: u8 = 2;
    /// No block in use (the reserve).
    pub const EMPTY: u8 = 3;
    /// No block in use, on no list: waiting to be released (`pending`).
    pub const PENDING: u8 = 4;
}

/// How a pool's chunks are cut. Computed once per pool ([`Geometry::new`]); 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Geometry {
    /// Block size in bytes (1..=4096).
    pub stride: u16,
    /// Blocks per chunk.
    pub capacity: u16,
    /// Offset of block 0 in the chunk (0, or the bitmap size for tiny chunks).
    pub first: u16,
    /// Bitmap words of a tiny chunk (0 for list chunks).
    pub words: u16,
    /// `ceil(2^31 / stride)`: `(offset * recip) >> 31 == offset / stride` for every offset
    /// below a page, so block indices need no division.
    pub recip: u32,
    /// Alignment every block honours (largest power of two dividing both stride and `first`).
    pub align: u32,
}

impl Geometry {
    /// Geometry for blocks of `stride` bytes (`1..=PAGE_SIZE`).
    pub const fn new(stride: usize) -> Self {
        assert!(stride >= 1 && stride <= PAGE_SIZE);
        let recip = ((1u64 << 31).div_ceil(stride as u64)) as u32;
        if stride >= TINY_LIMIT {
            let align = crate::size_class::block_align(stride);
            return Self {
                stride: stride as u16,
                capacity: (PAGE_SIZE / stride) as u16,
                first: 0,
                words: 0,
                recip,
                align: align as u32,
            };
        }
        // Largest n with 8 (summary) + 8 * ceil(n / 64) (bitmap) + n * stride <= PAGE_SIZE.
        let mut n = (PAGE_SIZE - 8) / stride;
        while 8 + 8 * n.div_ceil(64) + n * stride > PAGE_SIZE {
            n -= 1;
        }
        let words = n.div_ceil(64);
        let first = 8 + 8 * words;
        let align = crate::size_class::block_align(stride);
        let first_align = 1usize << first.trailing_zeros();
        Self {
            stride: stride as u16,
            capacity: n as u16,
            first: first as u16,
            words: words as u16,
            recip,
            align: if align < first_align {
                align
            } else {
                first_align
            } as u32,
        }
    }

    /// Whether chunks use the bitmap layout.
    #[inline]
    pub const fn is_tiny(&self) -> bool {
        self.words != 0
    }

    /// `offset / stride` for `offset < PAGE_SIZE`, without a division.
    #[inline]
    pub const fn index_of(&self, offset: usize) -> usize {
        ((offset as u64 * self.recip as u64) >> 31) as usize
    }
}

/// Slot size of descriptor runs (module `root`): one chunk descriptor, in 8-byte units (32 bytes;
/// 104 with `debug-checks`, for [`ChunkDebug`]).
pub const DESC_SLOT: usize = size_of::<ChunkDesc>().next_multiple_of(8);

/// Out-of-line description of one chunk; lives in a root-page slot. 32 bytes (104 with
/// `debug-checks`).
#[derive(Debug)]
#[repr(C)]
pub struct ChunkDesc {
    /// [`KIND_CHUNK`] (shared first byte of every slot kind).
    pub kind: u8,
    /// Which list of the pool holds the chunk (see [`list`]).
    pub list: u8,
    /// List chunks: byte offset of the first free block, or [`NONE`].
    pub free: u16,
    /// List chunks: byte offset of the first never-used block.
    pub bump: u16,
    /// Blocks in use.
    pub used: u16,
    /// The chunk page.
    pub page: *mut u8,
    /// Next chunk on the same list.
    pub next: *mut ChunkDesc,
    /// Previous chunk on the same list.
    pub prev: *mut ChunkDesc,
    /// What the debug checks know of the chunk (nothing, in 0 bytes, without `debug-checks`).
    pub debug: ChunkDebug,
}

/// What `debug-checks` records in a chunk descriptor: the chunk's owner (to catch frees to the
/// wrong class or pool, which release builds know only from the request) and an allocated bitmap
/// of a list chunk's blocks (to catch double frees; a tiny chunk's free bitmap does that itself).
/// A block that sits in a magazine is marked free here ("free but cached").
#[cfg(feature = "debug-checks")]
#[derive(Debug)]
#[repr(C)]
pub struct ChunkDebug {
    /// The chunk lists the chunk belongs to, as an address compared for identity (the layer
    /// above knows its type).
    owner: *const (),
    /// Bit i set <=> block i of a list chunk is allocated (<= 512 blocks).
    allocated: [u64; 8],
}

/// Without `debug-checks` a descriptor records nothing for the checks: every method below is
/// empty or answers "unknown".
#[cfg(not(feature = "debug-checks"))]
#[derive(Debug)]
#[repr(C)]
pub struct ChunkDebug;

#[cfg(feature = "debug-checks")]
impl ChunkDebug {
    /// A fresh chunk of `owner`, no block allocated.
    #[inline]
    pub const fn new(owner: *const ()) -> Self {
        Self {
            owner,
            allocated: [0; 8],
        }
    }

    /// The owner recorded at creation.
    #[inline]
    pub fn owner(&self) -> Option<*const ()> {
        Some(self.owner)
    }

    /// Marks block `index` allocated (`true`) or free.
    #[inline]
    pub fn mark(&mut self, index: usize, allocated: bool) {
        let bit = 1u64 << (index % 64);
        if allocated {
            self.allocated[index / 64] |= bit;
        } else {
            self.allocated[index / 64] &= !bit;
        }
    }

    /// Whether block `index` is marked allocated.
    #[inline]
    pub fn is_allocated(&self, index: usize) -> Option<bool> {
        Some(self.allocated[index / 64] & (1 << (index % 64)) != 0)
    }

    /// Blocks marked allocated.
    pub fn allocated_count(&self) -> Option<usize> {
        Some(self.allocated.iter().map(|w| w.count_ones() as usize).sum())
    }
}

#[cfg(not(feature = "debug-checks"))]
impl ChunkDebug {
    /// Records nothing.
    #[inline(always)]
    pub const fn new(_owner: *const ()) -> Self {
        Self
    }

    /// Unknown.
    #[inline(always)]
    pub fn owner(&self) -> Option<*const ()> {
        None
    }

    /// Records nothing.
    #[inline(always)]
    pub fn mark(&mut self, _index: usize, _allocated: bool) {}

    /// Unknown.
    #[inline(always)]
    pub fn is_allocated(&self, _index: usize) -> Option<bool> {
        None
    }

    /// Unknown.
    pub fn allocated_count(&self) -> Option<usize> {
        None
    }
}

/// Why a pointer handed to free is not a live block of the chunk it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeFault {
    /// The pointer is inside a block (or in a tiny chunk's bitmap), not at its start.
    Interior {
        /// Start of the block it points into (the chunk page for the bitmap).
        block: usize,
    },
    /// The block is not allocated (double free, or never handed out).
    NotAllocated,
}

impl ChunkDesc {
    /// Sets up a descriptor for a fresh chunk `page` of `owner` (the chunk lists it joins, for
    /// the debug checks), in the slot at `this`.
    ///
    /// # Safety
    ///
    /// `this` must be a writable, exclusively owned descriptor slot; `page` must be a whole page
    /// the caller owns, with `geo` the geometry of `owner`'s chunks.
    pub unsafe fn init(this: *mut Self, page: NonNull<u8>, owner: *const (), geo: &Geometry) {
        // SAFETY: the caller guarantees `this` is writable and ours.
        unsafe {
            this.write(Self {
                kind: KIND_CHUNK,
                list: 0,
                free: NONE,
                bump: 0,
                used: 0,
                page: page.as_ptr(),
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                debug: ChunkDebug::new(owner),
            });
        }
        if geo.is_tiny() {
            let words = page.as_ptr().cast::<u64>();
            let n = usize::from(geo.capacity);
            let w = usize::from(geo.words);
            // SAFETY: the page is ours and page aligned; `1 + w` words fit in front of the
            // blocks (see `Geometry::new`).
            unsafe {
                words.write(if w == 64 { u64::MAX } else { (1u64 << w) - 1 });
                for i in 0..w {
                    let bits = (n - 64 * i).min(64);
                    let word = if bits == 64 {
                        u64::MAX
                    } else {
                        (1u64 << bits) - 1
                    };
                    words.add(1 + i).write(word);
                }
            }
        }
    }

    /// Whether no block is free.
    #[inline]
    pub fn is_full(&self, geo: &Geometry) -> bool {
        self.used == geo.capacity
    }

    /// Takes one free block. O(1).
    ///
    /// # Safety
    ///
    /// `self` must describe a live chunk of geometry `geo` that is not full.
    #[inline]
    pub unsafe fn alloc(&mut self, geo: &Geometry) -> NonNull<u8> {
        debug_assert!(self.used < geo.capacity);
        let offset = if geo.is_tiny() {
            // SAFETY: the caller guarantees a live tiny chunk of `geo` with a free block.
            unsafe { self.alloc_tiny(geo) }
        } else if self.free != NONE {
            let offset = usize::from(self.free);
            // SAFETY: `offset` is below `bump` (checked when it was linked in, or it is the
            // offset of a block freed into this chunk), so a 2-byte link at it is inside the page.
            let next = unsafe { self.page.add(offset).cast::<u16>().read_unaligned() };
            if next != NONE && next >= self.bump {
                corrupt_link(self.page, offset, next);
            }
            self.free = next;
            offset
        } else {
            let offset = self.bump;
            self.bump += geo.stride;
            usize::from(offset)
        };
        self.used += 1;
        if !geo.is_tiny() {
            self.debug.mark(geo.index_of(offset), true);
        }
        // SAFETY: `offset` is the start of a block inside the page.
        unsafe { NonNull::new_unchecked(self.page.add(offset)) }
    }

    /// Takes up to `out.len()` never-used blocks of a list chunk from its bump cursor, in address
    /// order, for a magazine: addresses written one after the other, no link followed. Returns
    /// how many (fewer when the chunk runs out). Their `debug-checks` bits stay clear, as for
    /// any block that goes to a magazine ("free but cached"), and clear they are: no block past
    /// the cursor was ever allocated.
    ///
    /// Only while the free list is empty: then every block not in use lies past the cursor.
    #[inline]
    pub fn alloc_fresh(&mut self, geo: &Geometry, out: &mut [*mut u8]) -> usize {
        debug_assert!(!geo.is_tiny() && self.free == NONE);
        let n = out.len().min(usize::from(geo.capacity - self.used));
        let stride = usize::from(geo.stride);
        let mut offset = usize::from(self.bump);
        for slot in &mut out[..n] {
            // `offset` stays below `capacity * stride <= PAGE_SIZE` for the `n` blocks that
            // are left, so the pointer is inside the page (`wrapping_add` keeps it unsafe-free).
            *slot = self.page.wrapping_add(offset);
            offset += stride;
        }
        // Both fit: at most `capacity * stride <= PAGE_SIZE` and `capacity`.
        self.bump = offset as u16;
        self.used += n as u16;
        n
    }

    /// `debug-checks`: sets or clears the allocated bit of block `ptr` of this list chunk, to
    /// mark a block that moves into a magazine as free (but cached) and one that leaves it as
    /// allocated again. Does nothing without the feature.
    #[inline]
    pub fn set_allocated(&mut self, geo: &Geometry, ptr: NonNull<u8>, on: bool) {
        debug_assert!(!geo.is_tiny());
        self.debug
            .mark(geo.index_of(ptr.addr().get() & (PAGE_SIZE - 1)), on);
    }

    /// # Safety
    ///
    /// As for [`alloc`](Self::alloc), and the chunk is tiny.
    unsafe fn alloc_tiny(&mut self, geo: &Geometry) -> usize {
        let words = self.page.cast::<u64>();
        // SAFETY: a tiny chunk starts with its summary word and `geo.words` bitmap words.
        unsafe {
            let summary = words.read();
            if summary == 0 {
                corrupt_link(self.page, 0, 0);
            }
            let w = summary.trailing_zeros() as usize;
            let word = words.add(1 + w).read();
            let b = word.trailing_zeros() as usize;
            let rest = word & (word - 1);
            words.add(1 + w).write(rest);
            if rest == 0 {
                words.write(summary & !(1 << w));
            }
            usize::from(geo.first) + (64 * w + b) * usize::from(geo.stride)
        }
    }

    /// Checks, without changing anything, that `ptr` (inside this chunk) is the start of an
    /// allocated block. List chunks can only tell allocated from free with `debug-checks`.
    ///
    /// # Safety
    ///
    /// `self` must describe a live chunk of geometry `geo` and `ptr` must lie in its page.
    pub unsafe fn check_live(&self, geo: &Geometry, ptr: NonNull<u8>) -> Result<(), FreeFault> {
        let offset = ptr.addr().get() & (PAGE_SIZE - 1);
        let page = self.page.addr();
        let first = usize::from(geo.first);
        if offset < first {
            return Err(FreeFault::Interior { block: page });
        }
        let index = geo.index_of(offset - first);
        let start = first + index * usize::from(geo.stride);
        if start != offset {
            return Err(FreeFault::Interior {
                block: page + start,
            });
        }
        if index >= usize::from(geo.capacity) {
            // Inside the tail no block covers.
            return Err(FreeFault::Interior {
                block: page + start,
            });
        }
        if geo.is_tiny() {
            let words = self.page.cast::<u64>();
            // SAFETY: a tiny chunk has `geo.words` bitmap words after its summary, and
            // `index < capacity <= 64 * words`.
            let word = unsafe { words.add(1 + index / 64).read() };
            if word & (1 << (index % 64)) != 0 {
                return Err(FreeFault::NotAllocated);
            }
            return Ok(());
        }
        if offset >= usize::from(self.bump) || self.debug.is_allocated(index) == Some(false) {
            return Err(FreeFault::NotAllocated);
        }
        Ok(())
    }

    /// Gives a block back. O(1). `owned` is how many bytes from `ptr` the caller's pointer may
    /// access (the size it asked for).
    ///
    /// The free-list link is written through `ptr` itself when it covers the link's 2 bytes,
    /// and through the chunk's page pointer otherwise (a 1-byte request in an 8-byte block).
    /// Writing through the caller's pointer is what the Stacked Borrows model requires when that
    /// pointer belongs to a `Box` that is still a (weakly protected) function argument while it
    /// is freed; a pointer rebuilt from the page would be a foreign write to the box.
    ///
    /// # Safety
    ///
    /// `self` must describe a live chunk of geometry `geo`; `ptr` must be the start of a block
    /// of it that is allocated, valid for writes of `owned` bytes.
    #[inline]
    pub unsafe fn free(&mut self, geo: &Geometry, ptr: NonNull<u8>, owned: usize) {
        let offset = ptr.addr().get() & (PAGE_SIZE - 1);
        debug_assert!(self.used > 0);
        self.used -= 1;
        if geo.is_tiny() {
            let index = geo.index_of(offset - usize::from(geo.first));
            let (w, b) = (index / 64, index % 64);
            let words = self.page.cast::<u64>();
            // SAFETY: a tiny chunk has its summary and `geo.words` bitmap words in front;
            // `index < capacity` because `ptr` is a block of this chunk.
            unsafe {
                let word = words.add(1 + w).read();
                words.add(1 + w).write(word | 1 << b);
                words.write(words.read() | 1 << w);
            }
            return;
        }
        self.debug.mark(geo.index_of(offset), false);
        let link = if owned >= 2 {
            ptr.as_ptr()
        } else {
            // SAFETY: `offset` is inside our page.
            unsafe { self.page.add(offset) }
        };
        // SAFETY: `link` is the start of a block of at least 8 bytes inside our page, so a
        // 2-byte link fits, and it may write those 2 bytes (see above); the block is free from
        // now on, so the heap may write it.
        unsafe { link.cast::<u16>().write_unaligned(self.free) };
        self.free = offset as u16;
    }

    /// Walks the chunk's free blocks for the invariant checker: calls `f(offset)` for each,
    /// and fails on a link that leaves the chunk, is not a block start, or repeats.
    ///
    /// # Safety
    ///
    /// `self` must describe a live chunk of geometry `geo`.
    pub unsafe fn for_each_free(
        &self,
        geo: &Geometry,
        mut f: impl FnMut(usize),
    ) -> Result<usize, usize> {
        let stride = usize::from(geo.stride);
        let first = usize::from(geo.first);
        let mut seen = [0u64; 64];
        let mut count = 0;
        if geo.is_tiny() {
            let words = self.page.cast::<u64>();
            // SAFETY: a tiny chunk starts with its summary and bitmap words.
            let summary = unsafe { words.read() };
            for w in 0..usize::from(geo.words) {
                // SAFETY: as above.
                let word = unsafe { words.add(1 + w).read() };
                if (word != 0) != (summary & (1 << w) != 0) {
                    return Err(self.page.addr());
                }
                for b in 0..64 {
                    if word & (1 << b) != 0 {
                        let index = 64 * w + b;
                        if index >= usize::from(geo.capacity) {
                            return Err(self.page.addr() + 8 + 8 * w);
                        }
                        f(first + index * stride);
                        count += 1;
                    }
                }
            }
            if summary >> geo.words != 0 {
                return Err(self.page.addr());
            }
            return Ok(count);
        }
        let mut link = self.free;
        let mut from = self.page.addr();
        while link != NONE {
            let offset = usize::from(link);
            if offset >= usize::from(self.bump) || offset % stride != 0 {
                return Err(from);
            }
            let index = offset / stride;
            if seen[index / 64] & (1 << (index % 64)) != 0 {
                return Err(from);
            }
            seen[index / 64] |= 1 << (index % 64);
            f(offset);
            count += 1;
            from = self.page.addr() + offset;
            // SAFETY: `offset` is a block start below `bump`, inside the page.
            link = unsafe { self.page.add(offset).cast::<u16>().read_unaligned() };
        }
        Ok(count)
    }

    /// Blocks ever handed out (list chunks: below the bump cursor; tiny chunks: all).
    pub fn touched_blocks(&self, geo: &Geometry) -> usize {
        if geo.is_tiny() {
            usize::from(geo.capacity)
        } else {
            usize::from(self.bump) / usize::from(geo.stride)
        }
    }
}

/// A free-list link points outside the blocks handed out so far: a write after free. Continuing
/// would hand out memory outside the chunk, so stop here.
#[cold]
#[inline(never)]
fn corrupt_link(page: *mut u8, offset: usize, link: u16) -> ! {
    panic!(
        "kheap: free list of chunk {:#x} is corrupt: block at offset {offset:#x} links to {link:#x} \
         (write after free?)",
        page.addr()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::CLASS_SIZES;
    use crate::source::PageSource;
    use crate::testing::ArenaSource;

    #[test]
    fn reciprocal_division_is_exact() {
        // Exhaustive natively; under Miri (slow) a few strides with every seventh offset.
        let (strides, step) = if cfg!(miri) {
            (&[1, 3, 7, 8, 24, 168, 1360, 4095, 4096][..], 7)
        } else {
            (&[][..], 1)
        };
        let all: std::vec::Vec<usize> = (1..=PAGE_SIZE).collect();
        let strides = if strides.is_empty() {
            &all[..]
        } else {
            strides
        };
        for &stride in strides {
            let g = Geometry::new(stride);
            for offset in (0..PAGE_SIZE).step_by(step) {
                assert_eq!(g.index_of(offset), offset / stride, "{offset} / {stride}");
            }
        }
    }

    #[test]
    fn geometry() {
        let g = Geometry::new(8);
        assert_eq!((g.capacity, g.first, g.align), (512, 0, 8));
        let g = Geometry::new(2048);
        assert_eq!(g.capacity, 2);
        let g = Geometry::new(4096);
        assert_eq!((g.capacity, g.align), (1, 4096));
        for s in 1..TINY_LIMIT {
            let g = Geometry::new(s);
            assert!(g.is_tiny());
            assert!(g.words <= 57);
            let used = usize::from(g.first) + usize::from(g.capacity) * s;
            assert!(used <= PAGE_SIZE && used + s + 8 > PAGE_SIZE, "stride {s}");
            assert_eq!(usize::from(g.first) % 8, 0);
        }
        assert_eq!(Geometry::new(1).capacity, 3632);
        for &c in &CLASS_SIZES {
            assert!(!Geometry::new(c).is_tiny());
        }
    }

    fn chunk_round_trip(stride: usize) {
        let mut src = ArenaSource::new(4);
        let page = src.map_pages(1).unwrap();
        let geo = Geometry::new(stride);
        let mut slot = core::mem::MaybeUninit::<ChunkDesc>::uninit();
        // SAFETY: the slot is ours, the page is ours.
        unsafe { ChunkDesc::init(slot.as_mut_ptr(), page, ptr::null(), &geo) };
        // SAFETY: initialised just above.
        let d = unsafe { slot.assume_init_mut() };
        let n = usize::from(geo.capacity);
        let mut blocks = std::vec::Vec::new();
        for _ in 0..n {
            // SAFETY: not full.
            let p = unsafe { d.alloc(&geo) };
            assert_eq!(p.addr().get() % geo.align as usize, 0);
            // SAFETY: live block of our chunk.
            unsafe { d.check_live(&geo, p) }.unwrap();
            blocks.push(p);
        }
        assert!(d.is_full(&geo));
        let mut addrs: std::vec::Vec<_> = blocks.iter().map(|p| p.addr().get()).collect();
        addrs.sort();
        for w in addrs.windows(2) {
            assert!(w[1] - w[0] >= stride);
        }
        assert!(addrs[n - 1] + stride <= page.addr().get() + PAGE_SIZE);
        // Free every other block, check the walk, reallocate.
        for p in blocks.iter().step_by(2) {
            // SAFETY: allocated above, freed once.
            unsafe { d.free(&geo, *p, stride) };
            if geo.is_tiny() || cfg!(feature = "debug-checks") {
                // SAFETY: a pointer into our chunk.
                let state = unsafe { d.check_live(&geo, *p) };
                assert_eq!(state, Err(FreeFault::NotAllocated));
            }
        }
        // SAFETY: live chunk.
        let free = unsafe { d.for_each_free(&geo, |_| {}) }.unwrap();
        assert_eq!(free, n.div_ceil(2));
        assert_eq!(usize::from(d.used), n / 2);
        for _ in 0..free {
            // SAFETY: not full.
            unsafe { d.alloc(&geo) };
        }
        assert!(d.is_full(&geo));
        if stride > 1 {
            let inner = NonNull::new(blocks[0].as_ptr().wrapping_add(1)).unwrap();
            // SAFETY: a pointer into our chunk.
            let state = unsafe { d.check_live(&geo, inner) };
            assert!(matches!(state, Err(FreeFault::Interior { .. })));
        }
    }

    #[test]
    fn every_class_and_tiny_size_round_trips() {
        // Under Miri (slow): a sample of the sizes.
        let step = if cfg!(miri) { 5 } else { 1 };
        for s in (1..TINY_LIMIT).step_by(step) {
            chunk_round_trip(s);
        }
        for &c in CLASS_SIZES.iter().step_by(step) {
            chunk_round_trip(c);
        }
        chunk_round_trip(9);
        chunk_round_trip(4095);
    }

    #[test]
    fn fresh_runs_hand_out_what_single_allocations_would() {
        // For list strides: a chunk filled by `alloc_fresh` in runs of 1, 5 and 16 ends as one
        // filled by `alloc`: same blocks in the same order, same cursor and count, and then full.
        for stride in [8, 24, 48, 256, 320, 1360, 2048, 4096] {
            let geo = Geometry::new(stride);
            let mut src = ArenaSource::new(2);
            let pages = [src.map_pages(1).unwrap(), src.map_pages(1).unwrap()];
            let mut slots = [const { core::mem::MaybeUninit::<ChunkDesc>::uninit() }; 2];
            for (slot, page) in slots.iter_mut().zip(pages) {
                // SAFETY: the slot and the page are ours.
                unsafe { ChunkDesc::init(slot.as_mut_ptr(), page, ptr::null(), &geo) };
            }
            // SAFETY: both initialised just above.
            let [one, run] = unsafe { slots.map(|s| s.assume_init()) };
            let (mut one, mut run) = (one, run);
            let n = usize::from(geo.capacity);
            let offset = |p: *mut u8, page: NonNull<u8>| p.addr() - page.addr().get();
            let mut singles = std::vec::Vec::new();
            for _ in 0..n {
                // SAFETY: not full.
                singles.push(offset(unsafe { one.alloc(&geo) }.as_ptr(), pages[0]));
            }
            let mut runs = std::vec::Vec::new();
            let mut out = [ptr::null_mut(); 16];
            for want in [1, 5, 16].into_iter().cycle() {
                let got = run.alloc_fresh(&geo, &mut out[..want]);
                assert!(got == want || run.is_full(&geo), "stride {stride}");
                runs.extend(out[..got].iter().map(|&p| offset(p, pages[1])));
                if run.is_full(&geo) {
                    break;
                }
            }
            assert_eq!(runs, singles, "stride {stride}");
            assert_eq!((run.bump, run.used), (one.bump, one.used));
            assert_eq!(
                run.alloc_fresh(&geo, &mut out),
                0,
                "a full chunk gives none"
            );
            // A block from a run is "free but cached" until the magazine hands it out, which
            // marks it allocated: then it is a live block of the chunk, freed as such.
            let p = NonNull::new(pages[1].as_ptr().wrapping_add(runs[0])).unwrap();
            if cfg!(feature = "debug-checks") {
                // SAFETY: a pointer into our chunk.
                let state = unsafe { run.check_live(&geo, p) };
                assert_eq!(state, Err(FreeFault::NotAllocated));
            }
            run.set_allocated(&geo, p, true);
            // SAFETY: a pointer into our chunk.
            unsafe { run.check_live(&geo, p) }.unwrap();
            // SAFETY: allocated above, freed once.
            unsafe { run.free(&geo, p, stride) };
            assert_eq!(usize::from(run.used), n - 1);
        }
    }

    #[test]
    #[should_panic(expected = "is corrupt")]
    fn corrupted_link_is_caught() {
        let mut src = ArenaSource::new(4);
        let page = src.map_pages(1).unwrap();
        let geo = Geometry::new(64);
        let mut slot = core::mem::MaybeUninit::<ChunkDesc>::uninit();
        // SAFETY: the slot is ours, the page is ours.
        unsafe { ChunkDesc::init(slot.as_mut_ptr(), page, ptr::null(), &geo) };
        // SAFETY: initialised above.
        let d = unsafe { slot.assume_init_mut() };
        // SAFETY: not full; then freeing the allocated blocks.
        unsafe {
            let a = d.alloc(&geo);
            let b = d.alloc(&geo);
            d.free(&geo, a, 64);
            d.free(&geo, b, 64);
            // Write after free: clobber b's link.
            b.as_ptr().cast::<u16>().write_unaligned(0x0ff0);
            d.alloc(&geo);
            d.alloc(&geo);
        }
    }
}
