//! The physical frame allocator: 4 KiB frames out of the usable RAM of the boot memory map.
//!
//! # Design
//!
//! Three structures, all O(1) per operation and O(ranges) to set up:
//!
//! * **Bump cursors** over never-used frames. The usable ranges
//!   ([`FrameRange`](super::regions::FrameRange)) are walked in address order; `cursor` is the
//!   next frame never handed out. Nothing is written to a frame before it is handed out, so init
//!   does not touch (or even read) the free memory.
//! * **A free stack** of returned frames, threaded through the frames themselves: the first 8
//!   bytes of each free frame hold the physical address of the next one, reached through the
//!   bootloader's mapping of all physical memory at `phys_offset`. Returned frames are reused
//!   first (most recently freed on top: it is likely still in the cache).
//! * **An allocation bitmap**, one bit per frame from the lowest to the highest usable frame, set
//!   while the frame is handed out. It turns a double free or the free of a frame that never came
//!   from here into an immediate panic that names the frame, instead of a corrupted free stack.
//!   The bitmap lives in frames carved from the front of the first usable range large enough, and
//!   is zeroed at init (one `memset` of `frames / 8` bytes: 64 KiB for 2 GiB of RAM).
//!
//! ```text
//!   usable range 0            usable range 1                     usable range 2
//!   [bitmap|##used##|cursor→ free, never touched ][######|cursor→ ][ never touched ]
//!                                                   free stack: top → frame → frame → 0
//! ```
//!
//! A memory hole between usable ranges costs one bitmap bit per frame of the hole (32 KiB of
//! bitmap per GiB of hole — the PCI hole below 4 GiB is the typical one); in exchange the bit of a
//! frame is found with one subtraction, no search.
//!
//! Frame 0 and everything that is not `Usable` in the memory map (kernel image, page tables,
//! boot info, firmware areas) are excluded by [`UsableRanges`] before this allocator sees them.
//!
//! Counting: `total` is every usable frame of the map; `used` = frames handed out + the bitmap's
//! own frames; `free = total - used`.

use core::fmt;
use core::ptr;

use x86_64::PhysAddr;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};

use super::regions::{FRAME_SIZE, UsableRanges};

/// Physical address used as the free stack's "empty" marker: frame 0 is never usable.
const STACK_END: u64 = 0;

/// Why the frame allocator could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameInitError {
    /// The memory map has no whole usable frame.
    NoUsableMemory,
    /// No usable range is large enough to hold the allocation bitmap (`frames` contiguous
    /// frames).
    BitmapDoesNotFit {
        /// Frames the bitmap needs.
        frames: u64,
    },
}

impl fmt::Display for FrameInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUsableMemory => f.write_str("the memory map has no usable frame"),
            Self::BitmapDoesNotFit { frames } => write!(
                f,
                "no usable range holds the {frames}-frame allocation bitmap contiguously"
            ),
        }
    }
}

/// Frame counts of a [`BitmapFrameAllocator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameStats {
    /// Usable frames in the memory map.
    pub total: u64,
    /// Frames that can still be allocated.
    pub free: u64,
    /// `total - free`: frames handed out plus the bitmap.
    pub used: u64,
    /// Frames holding the allocation bitmap itself (part of `used`).
    pub bitmap: u64,
}

/// The frame allocator (see the module documentation).
#[derive(Debug)]
pub struct BitmapFrameAllocator {
    /// Virtual address at which physical address 0 is mapped (all RAM is mapped from there).
    phys_offset: u64,
    /// Usable frames, with the bitmap's frames already cut from the front of one range.
    ranges: UsableRanges,
    /// Index of the range the bump cursor is in; `ranges.len()` once all are used up.
    cursor_range: usize,
    /// Next never-used frame number in `ranges[cursor_range]`.
    cursor: u64,
    /// Physical address of the most recently freed frame, or [`STACK_END`].
    free_top: u64,
    /// Virtual address of the bitmap's first word.
    bitmap: u64,
    /// Frame number of bit 0.
    bitmap_base: u64,
    /// Frames the bitmap covers (from `bitmap_base`).
    bitmap_span: u64,
    /// Frames the bitmap occupies.
    bitmap_frames: u64,
    /// Usable frames in the memory map (including the bitmap's).
    total: u64,
    /// Frames handed out and not returned.
    allocated: u64,
}

impl BitmapFrameAllocator {
    /// An allocator with no memory (every allocation fails). All-zero, for `static`s.
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            phys_offset: 0,
            ranges: UsableRanges::new(),
            cursor_range: 0,
            cursor: 0,
            free_top: STACK_END,
            bitmap: 0,
            bitmap_base: 0,
            bitmap_span: 0,
            bitmap_frames: 0,
            total: 0,
            allocated: 0,
        }
    }

    /// Sets up the allocator over `ranges`, taking the bitmap's frames from the first range
    /// large enough and zeroing them.
    ///
    /// # Errors
    ///
    /// [`FrameInitError::NoUsableMemory`] if `ranges` is empty,
    /// [`FrameInitError::BitmapDoesNotFit`] if no range can hold the bitmap.
    ///
    /// # Safety
    ///
    /// 1. Every frame in `ranges` must be RAM that nothing else uses now or later: from here on
    ///    the allocator owns it and writes to it.
    /// 2. Physical memory must be mapped readable and writable at virtual address
    ///    `phys_offset + physical address` for all of `ranges`, for as long as the allocator is
    ///    used.
    pub unsafe fn new(phys_offset: u64, mut ranges: UsableRanges) -> Result<Self, FrameInitError> {
        let (Some(first), Some(last)) = (ranges.as_slice().first(), ranges.as_slice().last())
        else {
            return Err(FrameInitError::NoUsableMemory);
        };
        let total = ranges.frames();
        let bitmap_base = first.start;
        let bitmap_span = last.end - bitmap_base;
        let bitmap_words = bitmap_span.div_ceil(u64::BITS as u64);
        let bitmap_frames = (bitmap_words * 8).div_ceil(FRAME_SIZE);
        let Some(home) = ranges
            .as_mut_slice()
            .iter_mut()
            .find(|r| r.len() >= bitmap_frames)
        else {
            return Err(FrameInitError::BitmapDoesNotFit {
                frames: bitmap_frames,
            });
        };
        let bitmap_phys = home.start * FRAME_SIZE;
        home.start += bitmap_frames;
        let bitmap = phys_offset.wrapping_add(bitmap_phys);
        let bitmap_ptr = ptr::with_exposed_provenance_mut::<u64>(bitmap as usize);
        // SAFETY: the bitmap frames are usable RAM this allocator now owns (caller's 1), mapped
        // writable at `phys_offset + bitmap_phys` (caller's 2); `bitmap_words` words fit in
        // `bitmap_frames` frames, and the pointer is 4 KiB-aligned.
        unsafe { ptr::write_bytes(bitmap_ptr, 0, bitmap_words as usize) };
        let cursor = ranges.as_slice()[0].start;
        Ok(Self {
            phys_offset,
            ranges,
            cursor_range: 0,
            cursor,
            free_top: STACK_END,
            bitmap,
            bitmap_base,
            bitmap_span,
            bitmap_frames,
            total,
            allocated: 0,
        })
    }

    /// Frame counts.
    #[must_use]
    pub fn stats(&self) -> FrameStats {
        let used = self.allocated + self.bitmap_frames;
        FrameStats {
            total: self.total,
            free: self.total - used,
            used,
            bitmap: self.bitmap_frames,
        }
    }

    /// The virtual address at which physical memory is mapped.
    #[must_use]
    pub fn phys_offset(&self) -> u64 {
        self.phys_offset
    }

    /// Takes one free frame (returned frames first, then never-used ones). Its contents are
    /// unspecified. `None` when memory is exhausted.
    pub fn allocate(&mut self) -> Option<PhysFrame> {
        let number = if self.free_top != STACK_END {
            self.pop()
        } else {
            self.bump()?
        };
        let (word, mask) = self.bit(number);
        let addr = number * FRAME_SIZE;
        // SAFETY: `bit` returns a word inside the bitmap, which the allocator owns (see `new`).
        let value = unsafe { word.read() };
        assert!(
            value & mask == 0,
            "frame allocator: frame {addr:#x} on the free list is marked allocated (free list corrupted)"
        );
        // SAFETY: as above.
        unsafe { word.write(value | mask) };
        self.allocated += 1;
        Some(PhysFrame::containing_address(PhysAddr::new(addr)))
    }

    /// Gives a frame back.
    ///
    /// # Panics
    ///
    /// If the frame is not usable memory (outside the map's usable ranges, or the bitmap's own
    /// frames) or is not currently allocated (a double free). The message names the frame's
    /// physical address.
    ///
    /// # Safety
    ///
    /// The frame must have come from this allocator and nothing may use it any more (no mapping
    /// of it may be accessed again): it is written to at once.
    pub unsafe fn deallocate(&mut self, frame: PhysFrame) {
        let addr = frame.start_address().as_u64();
        let number = addr / FRAME_SIZE;
        if number.wrapping_sub(self.bitmap_base) >= self.bitmap_span {
            panic!("frame allocator: freeing frame {addr:#x}, which is not usable memory");
        }
        let (word, mask) = self.bit(number);
        // SAFETY: `bit` returns a word inside the bitmap, which the allocator owns.
        let value = unsafe { word.read() };
        if value & mask == 0 {
            if self.ranges.contains(number) {
                panic!("frame allocator: double free of frame {addr:#x} (it is already free)");
            }
            panic!(
                "frame allocator: freeing frame {addr:#x}, which is not usable memory \
                 (reserved, or the allocator's own bitmap)"
            );
        }
        // SAFETY: as above.
        unsafe { word.write(value & !mask) };
        let link = self.frame_ptr(addr);
        // SAFETY: the frame is usable RAM owned by the allocator again (the caller gave it up),
        // mapped writable through the physical-memory mapping (`new`'s contract 2); its first 8
        // bytes become the free-stack link.
        unsafe { link.write(self.free_top) };
        self.free_top = addr;
        self.allocated -= 1;
    }

    /// Whether `frame` is currently handed out by this allocator (O(1)).
    #[must_use]
    pub fn is_allocated(&self, frame: PhysFrame) -> bool {
        let number = frame.start_address().as_u64() / FRAME_SIZE;
        if number.wrapping_sub(self.bitmap_base) >= self.bitmap_span {
            return false;
        }
        let (word, mask) = self.bit(number);
        // SAFETY: `bit` returns a word inside the bitmap, which the allocator owns.
        unsafe { word.read() & mask != 0 }
    }

    /// Pops the free stack (which must not be empty).
    fn pop(&mut self) -> u64 {
        let addr = self.free_top;
        // SAFETY: `addr` is a free frame owned by the allocator, mapped through the
        // physical-memory mapping; `deallocate` wrote the link into its first 8 bytes.
        let next = unsafe { self.frame_ptr(addr).read() };
        debug_assert!(
            next == STACK_END
                || (next.is_multiple_of(FRAME_SIZE)
                    && (next / FRAME_SIZE).wrapping_sub(self.bitmap_base) < self.bitmap_span),
            "frame allocator: free list link {next:#x} in frame {addr:#x} is corrupted"
        );
        self.free_top = next;
        addr / FRAME_SIZE
    }

    /// Takes the next never-used frame, moving to the next range when one is used up
    /// (amortized O(1): the cursor only moves forward).
    fn bump(&mut self) -> Option<u64> {
        let ranges = self.ranges.as_slice();
        while let Some(range) = ranges.get(self.cursor_range) {
            if self.cursor < range.end {
                self.cursor += 1;
                return Some(self.cursor - 1);
            }
            self.cursor_range += 1;
            if let Some(next) = ranges.get(self.cursor_range) {
                self.cursor = next.start;
            }
        }
        None
    }

    /// The bitmap word holding frame `number`'s bit, and the bit's mask. `number` must be in
    /// `bitmap_base .. bitmap_base + bitmap_span`.
    fn bit(&self, number: u64) -> (*mut u64, u64) {
        let index = number - self.bitmap_base;
        debug_assert!(index < self.bitmap_span);
        let word = self.bitmap + (index / u64::BITS as u64) * 8;
        (
            ptr::with_exposed_provenance_mut(word as usize),
            1 << (index % u64::BITS as u64),
        )
    }

    /// Pointer to the first word of the frame at physical address `addr`.
    fn frame_ptr(&self, addr: u64) -> *mut u64 {
        ptr::with_exposed_provenance_mut(self.phys_offset.wrapping_add(addr) as usize)
    }
}

// SAFETY: `allocate` returns each frame at most once until it is deallocated (the bitmap check
// in `allocate` enforces it), and only frames from the usable ranges, which `new`'s caller gave
// to this allocator exclusively.
unsafe impl FrameAllocator<Size4KiB> for BitmapFrameAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.allocate()
    }
}

impl FrameDeallocator<Size4KiB> for BitmapFrameAllocator {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the trait's contract (the frame is unused) is `deallocate`'s contract.
        unsafe { self.deallocate(frame) }
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::super::regions::{Region, RegionKind};
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    // Simulated physical memory, from the host build's simulated machine (`kernel/host`).
    use super::super::sim::PhysArena;

    fn usable(start: u64, end: u64) -> Region {
        Region {
            start,
            end,
            kind: RegionKind::Usable,
        }
    }

    fn allocator(arena: &PhysArena, map: &[Region]) -> BitmapFrameAllocator {
        let ranges = UsableRanges::from_regions(map.iter().copied()).unwrap();
        // SAFETY: the arena backs every usable frame of `map` (the tests keep the map inside
        // it) and lives as long as the allocator in each test.
        unsafe { BitmapFrameAllocator::new(arena.offset(), ranges) }.unwrap()
    }

    fn frame(addr: u64) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new(addr))
    }

    #[test]
    fn hands_out_every_usable_frame_once() {
        let arena = PhysArena::new(0x10_0000, 0x10_0000);
        let mut a = allocator(
            &arena,
            &[usable(0x10_0000, 0x14_0000), usable(0x18_0000, 0x20_0000)],
        );
        let s = a.stats();
        assert_eq!(s.total, 64 + 128);
        assert_eq!(s.bitmap, 1);
        assert_eq!(s.free, s.total - 1);
        let mut seen = HashSet::new();
        while let Some(f) = a.allocate() {
            let addr = f.start_address().as_u64();
            assert!(
                (0x10_1000..0x14_0000).contains(&addr) || (0x18_0000..0x20_0000).contains(&addr)
            );
            assert!(seen.insert(addr), "frame {addr:#x} handed out twice");
            assert!(a.is_allocated(f));
        }
        assert_eq!(seen.len() as u64, s.free);
        assert_eq!(a.stats().free, 0);
        for addr in &seen {
            // SAFETY: every frame came from `a` and is not used.
            unsafe { a.deallocate(frame(*addr)) };
        }
        assert_eq!(a.stats(), s);
    }

    #[test]
    fn freed_frames_are_reused_most_recent_first() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        let f1 = a.allocate().unwrap();
        let f2 = a.allocate().unwrap();
        let f3 = a.allocate().unwrap();
        // SAFETY: frames from `a`, unused.
        unsafe {
            a.deallocate(f1);
            a.deallocate(f3);
        }
        assert_eq!(a.allocate(), Some(f3));
        assert_eq!(a.allocate(), Some(f1));
        assert!(!a.is_allocated(frame(f2.start_address().as_u64() + 0x1000 * 2)));
    }

    #[test]
    fn the_bitmap_is_zeroed_even_over_garbage() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        // SAFETY: the arena is 0x4_0000 bytes long.
        unsafe { ptr::write_bytes(arena.as_mut_ptr(), 0xAB, 0x4_0000) };
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        let f = a.allocate().unwrap();
        // SAFETY: frame from `a`.
        unsafe { a.deallocate(f) };
    }

    #[test]
    #[should_panic(expected = "double free of frame 0x101000")]
    fn double_free_names_the_frame() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        let f = a.allocate().unwrap();
        assert_eq!(f.start_address().as_u64(), 0x10_1000);
        // SAFETY: deliberately wrong: the second free must panic before touching anything.
        unsafe {
            a.deallocate(f);
            a.deallocate(f);
        }
    }

    #[test]
    #[should_panic(expected = "double free of frame 0x120000")]
    fn freeing_a_never_allocated_frame_panics() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        // SAFETY: deliberately wrong.
        unsafe { a.deallocate(frame(0x12_0000)) };
    }

    #[test]
    #[should_panic(expected = "freeing frame 0x500000, which is not usable memory")]
    fn freeing_a_foreign_frame_panics() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        // SAFETY: deliberately wrong.
        unsafe { a.deallocate(frame(0x50_0000)) };
    }

    #[test]
    #[should_panic(expected = "freeing frame 0x100000, which is not usable memory (reserved")]
    fn freeing_the_bitmap_frame_panics() {
        let arena = PhysArena::new(0x10_0000, 0x4_0000);
        let mut a = allocator(&arena, &[usable(0x10_0000, 0x14_0000)]);
        // SAFETY: deliberately wrong.
        unsafe { a.deallocate(frame(0x10_0000)) };
    }

    #[test]
    #[should_panic(expected = "freeing frame 0x150000, which is not usable memory (reserved")]
    fn freeing_a_frame_in_a_hole_panics() {
        let arena = PhysArena::new(0x10_0000, 0x10_0000);
        let mut a = allocator(
            &arena,
            &[usable(0x10_0000, 0x14_0000), usable(0x18_0000, 0x20_0000)],
        );
        // SAFETY: deliberately wrong.
        unsafe { a.deallocate(frame(0x15_0000)) };
    }

    #[test]
    fn no_usable_memory_and_no_room_for_the_bitmap_are_errors() {
        let arena = PhysArena::new(0x10_0000, 0x1_0000);
        // SAFETY: nothing is accessed for these maps.
        let r = unsafe { BitmapFrameAllocator::new(arena.offset(), UsableRanges::new()) };
        assert_eq!(r.unwrap_err(), FrameInitError::NoUsableMemory);
        // Two one-frame ranges 2^40 bytes apart need a 8-frame bitmap; no range holds it.
        let map = [
            usable(0x10_0000, 0x10_1000),
            usable(1 << 40, (1 << 40) + 0x1000),
        ];
        let ranges = UsableRanges::from_regions(map.iter().copied()).unwrap();
        // SAFETY: as above: the bitmap does not fit, nothing is written.
        let r = unsafe { BitmapFrameAllocator::new(arena.offset(), ranges) };
        assert_eq!(
            r.unwrap_err(),
            FrameInitError::BitmapDoesNotFit { frames: 8192 }
        );
    }

    #[test]
    fn random_alloc_free_keeps_counts() {
        let arena = PhysArena::new(0x10_0000, 0x20_0000);
        let mut a = allocator(
            &arena,
            &[usable(0x10_0000, 0x20_0000), usable(0x28_0000, 0x30_0000)],
        );
        assert!(arena.end() >= 0x30_0000);
        let start = a.stats();
        let mut live: Vec<PhysFrame> = Vec::new();
        let mut x = 0x1234_5678_u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || live.is_empty() {
                if let Some(f) = a.allocate() {
                    assert!(!live.contains(&f));
                    live.push(f);
                }
            } else {
                let f = live.swap_remove((x as usize / 3) % live.len());
                // SAFETY: frame from `a`, unused.
                unsafe { a.deallocate(f) };
            }
            assert_eq!(a.stats().free, start.free - live.len() as u64);
        }
        for f in live {
            // SAFETY: frame from `a`, unused.
            unsafe { a.deallocate(f) };
        }
        assert_eq!(a.stats(), start);
    }
}
