//! Poisoning and red zones: a `GlobalAlloc` wrapper that catches overflows and writes after free.
//!
//! [`Checked<A>`] wraps any `GlobalAlloc` (in the kernel: the `LockedHeap`). With feature
//! `debug-checks` it gives every block a debug layout:
//!
//! ```text
//!   ptr                                  ptr + size            ptr + size + RED_ZONE
//!   ┌────────────────────────────────────┬─────────────────────┐
//!   │ caller's bytes (FRESH on alloc)    │ red zone (CANARY)   │   block of `size + RED_ZONE`
//!   └────────────────────────────────────┴─────────────────────┘
//!   after free:
//!   ┌──────────┬──────────┬──────────────────────────────────────┐
//!   │ 8 B heap │ FREED_TAG│ POISON …                             │
//!   │ link area│ (8 B)    │                                      │
//!   └──────────┴──────────┴──────────────────────────────────────┘
//! ```
//!
//! * **Red zone**: [`RED_ZONE`] bytes of [`CANARY`] after the caller's bytes, checked on free and
//!   realloc: an overflow by even one byte stops with a message naming the block and the byte.
//! * **Fresh fill**: a new block is filled with [`FRESH`], so code that reads memory it never
//!   wrote sees a recognisable pattern rather than stale data.
//! * **Poison**: a freed block is filled with [`POISON`], with [`FREED_TAG`] at offset 8 (the
//!   first 8 bytes are left to the heap, which keeps free-list links there). When a block is
//!   handed out again and still carries the tag, every poisoned byte is checked: a write after
//!   free is reported with the block's address and the offset written. A write that hits the tag
//!   itself makes the block look fresh and goes unnoticed — the check is a debugging aid, not a
//!   proof. Only blocks that `kheap` serves from its size classes carry the tag: there the heap
//!   writes nothing into a free block but its first two bytes, while the large allocator
//!   coalesces free blocks and keeps boundary tags inside them, so its blocks are poisoned but
//!   not checked. Blocks smaller than 16 bytes (plus red zone) carry no tag either.
//!
//! Without `debug-checks` the wrapper forwards every call unchanged and costs nothing.

use core::alloc::{GlobalAlloc, Layout};

use crate::size_class::{CLASS_SIZES, SizeClass, class_for};

/// Bytes of canary after every block.
pub const RED_ZONE: usize = 16;
/// The red zone's byte.
pub const CANARY: u8 = 0xCA;
/// What a freshly allocated block is filled with.
pub const FRESH: u8 = 0xA5;
/// What a freed block is filled with.
pub const POISON: u8 = 0x6B;
/// Marks a poisoned block (at offset 8), so a re-allocation knows to check the poison. The tag
/// stored is this value mixed with the block's address and its class size (see `tag_for`), so
/// stale contents of a recycled frame — a poisoned block of another class, or at another
/// address — never pass for a freed block here.
pub const FREED_TAG: u64 = 0xF4EE_D0B1_0C6B_6B6B;

/// The tag a freed block of `len` poisoned bytes at `ptr` carries.
fn tag_for(ptr: *mut u8, len: usize) -> u64 {
    FREED_TAG ^ ptr.addr() as u64 ^ (len as u64).rotate_left(40)
}
/// Offset of [`FREED_TAG`]: the heap may keep a free-list link in the first 8 bytes.
const TAG_OFFSET: usize = 8;
/// Smallest debug block that carries a tag.
const TAGGED_MIN: usize = TAG_OFFSET + 8;

/// A `GlobalAlloc` wrapper that adds red zones and poisoning (with feature `debug-checks`).
#[derive(Debug)]
pub struct Checked<A> {
    inner: A,
}

impl<A> Checked<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

/// The layout actually requested from the inner allocator for a caller's `layout`: the caller's
/// bytes plus the red zone, rounded up to the whole size class when `kheap` would serve it from a
/// class (so that poisoning the whole class block stays inside the block, whatever the inner
/// allocator is).
fn debug_layout(layout: Layout) -> Option<Layout> {
    if !cfg!(feature = "debug-checks") {
        return Some(layout);
    }
    let padded =
        Layout::from_size_align(layout.size().checked_add(RED_ZONE)?, layout.align()).ok()?;
    match class_for(padded) {
        SizeClass::Small(class) => Layout::from_size_align(CLASS_SIZES[class], layout.align()).ok(),
        SizeClass::Large => Some(padded),
    }
}

/// Checks a block handed out by the inner allocator before the caller sees it: if it carries
/// the freed tag of a `poisoned`-byte class block at this address, its first `len` bytes must
/// still be poison.
///
/// # Safety
///
/// `ptr` must point to `len` readable bytes, and `len <= poisoned`.
unsafe fn check_poison(ptr: *mut u8, len: usize, poisoned: usize) {
    if len < TAGGED_MIN {
        return;
    }
    // SAFETY: `TAG_OFFSET + 8 <= len` bytes are readable (caller); unaligned read.
    let tag = unsafe { ptr.add(TAG_OFFSET).cast::<u64>().read_unaligned() };
    if tag != tag_for(ptr, poisoned) {
        return;
    }
    for i in TAGGED_MIN..len {
        // SAFETY: `i < len`.
        let b = unsafe { ptr.add(i).read() };
        if b != POISON {
            panic!(
                "kheap: write after free: byte {:#x} (offset {i} of the freed {len}-byte block at \
                 {:#x}) is {b:#04x}, not poison {POISON:#04x}",
                ptr.addr() + i,
                ptr.addr()
            );
        }
    }
}

/// Fills a freed block with poison, and with the freed tag if `tag` (see the module docs).
///
/// # Safety
///
/// `ptr` must point to `len` writable bytes.
unsafe fn poison(ptr: *mut u8, len: usize, tag: bool) {
    // SAFETY: `len` writable bytes (caller).
    unsafe { ptr.write_bytes(POISON, len) };
    if tag && len >= TAGGED_MIN {
        // SAFETY: `TAG_OFFSET + 8 <= len`; unaligned write.
        unsafe {
            ptr.add(TAG_OFFSET)
                .cast::<u64>()
                .write_unaligned(tag_for(ptr, len))
        };
    }
}

/// The first overwritten red-zone byte after the caller's `size` bytes, if any: its offset
/// past the end and its value.
///
/// # Safety
///
/// `ptr` must point to `size + RED_ZONE` readable bytes.
unsafe fn red_zone_damage(ptr: *mut u8, size: usize) -> Option<(usize, u8)> {
    (0..RED_ZONE).find_map(|i| {
        // SAFETY: `size + i < size + RED_ZONE`.
        let b = unsafe { ptr.add(size + i).read() };
        (b != CANARY).then_some((i + 1, b))
    })
}

/// Reports a red-zone overwrite found by [`red_zone_damage`].
fn report_overflow(addr: usize, size: usize, (past, value): (usize, u8)) -> ! {
    panic!(
        "kheap: heap overflow: byte {:#x}, {past} past the end of the {size}-byte block at \
         {addr:#x}, was overwritten ({value:#04x})",
        addr + size + past - 1
    );
}

/// Prepares a block the inner allocator just returned: poison check, fresh fill, red zone.
///
/// # Safety
///
/// `ptr` must point to `debug.size()` writable bytes, where `debug` is the debug layout of the
/// caller's `layout`.
unsafe fn arm(ptr: *mut u8, layout: Layout, debug: Layout) {
    let size = layout.size();
    // SAFETY: forwarded from the caller; a class block holds at least `debug.size()` bytes.
    unsafe {
        if let SizeClass::Small(class) = class_for(debug) {
            check_poison(ptr, debug.size(), CLASS_SIZES[class]);
        }
        ptr.write_bytes(FRESH, size);
        ptr.add(size).write_bytes(CANARY, RED_ZONE);
    }
}

// SAFETY: the wrapper asks the inner allocator for `size + RED_ZONE` bytes with the caller's
// alignment and hands out the start, so the caller's bytes lie inside a block the inner
// allocator owns; every free and realloc passes the inner allocator the same debug layout it
// allocated with. Without `debug-checks`, calls are forwarded unchanged.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Checked<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !cfg!(feature = "debug-checks") {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.alloc(layout) };
        }
        let Some(debug) = debug_layout(layout) else {
            return core::ptr::null_mut();
        };
        // SAFETY: `debug` has a non-zero size.
        let p = unsafe { self.inner.alloc(debug) };
        if !p.is_null() {
            // SAFETY: the inner allocator returned `debug.size()` bytes.
            unsafe { arm(p, layout, debug) };
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `alloc` returned at least `layout.size()` bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !cfg!(feature = "debug-checks") {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.dealloc(ptr, layout) };
        }
        let debug = debug_layout(layout).expect("layout was allocatable");
        // Large blocks are handed straight back: a bad pointer may name unmapped memory, and
        // only the heap can tell (its own checks report it).
        let SizeClass::Small(class) = class_for(debug) else {
            // SAFETY: forwarded; the inner allocator gets the layout it allocated with.
            return unsafe { self.inner.dealloc(ptr, debug) };
        };
        // SAFETY: a class-sized `ptr` lies in a chunk page if it is valid; an invalid one (a
        // double free, a foreign or interior pointer) is at worst read here, and the heap's own
        // checks in `inner.dealloc` name the fault before an overflow is reported.
        unsafe {
            match red_zone_damage(ptr, layout.size()) {
                None => {
                    // A class block is poisoned whole: a later request of the same class may be
                    // longer than this one and will check every byte up to its own length.
                    poison(ptr, CLASS_SIZES[class], true);
                    self.inner.dealloc(ptr, debug);
                }
                Some(damage) => {
                    // The heap first: if the pointer was not a live block, it says so.
                    self.inner.dealloc(ptr, debug);
                    report_overflow(ptr.addr(), layout.size(), damage);
                }
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !cfg!(feature = "debug-checks") {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        let (Some(old), Some(new)) = (
            debug_layout(layout),
            Layout::from_size_align(new_size, layout.align())
                .ok()
                .and_then(debug_layout),
        ) else {
            return core::ptr::null_mut();
        };
        if let SizeClass::Small(_) = class_for(old) {
            // SAFETY: as in `dealloc`: the heap vets the pointer before an overflow is reported.
            if let Some(damage) = unsafe { red_zone_damage(ptr, layout.size()) } {
                // SAFETY: forwarded; the inner allocator gets the layout it allocated with.
                unsafe { self.inner.dealloc(ptr, old) };
                report_overflow(ptr.addr(), layout.size(), damage);
            }
        }
        // SAFETY: forwarded; the inner allocator sees its own layouts.
        let p = unsafe { self.inner.realloc(ptr, old, new.size()) };
        if !p.is_null() {
            // SAFETY: `p` has `new.size()` bytes; the first `min(old, new)` caller bytes were
            // copied by the inner allocator. Bytes beyond the old size get the fresh fill.
            unsafe {
                if new_size > layout.size() {
                    p.add(layout.size())
                        .write_bytes(FRESH, new_size - layout.size());
                }
                p.add(new_size).write_bytes(CANARY, RED_ZONE);
            }
        }
        p
    }
}

#[cfg(all(test, feature = "debug-checks"))]
mod tests {
    use super::*;
    use std::alloc::System;

    /// The system allocator, handing out zeroed blocks: `Checked` reads a fresh block's bytes
    /// (to see whether it carries the freed tag), and in the abstract machine Miri checks, a
    /// block fresh from `System.alloc` is uninitialised. Heap pages hold whatever their frame
    /// held, which is initialised memory for the hardware.
    struct Zeroed;

    // SAFETY: forwards to `System`, only replacing `alloc` with `alloc_zeroed`.
    unsafe impl GlobalAlloc for Zeroed {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    static A: Checked<Zeroed> = Checked::new(Zeroed);

    #[test]
    fn fresh_blocks_are_filled_and_guarded() {
        let layout = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: valid layout; freed below with it.
        unsafe {
            let p = A.alloc(layout);
            assert!(!p.is_null());
            assert!((0..40).all(|i| p.add(i).read() == FRESH));
            assert!((40..40 + RED_ZONE).all(|i| p.add(i).read() == CANARY));
            A.dealloc(p, layout);
        }
    }

    #[test]
    #[should_panic(expected = "heap overflow")]
    fn one_byte_overflow_is_reported() {
        let layout = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: the write one past the end lands in the red zone, which is allocated.
        unsafe {
            let p = A.alloc(layout);
            p.add(24).write(0);
            A.dealloc(p, layout);
        }
    }

    /// Frees a `System` block when dropped, also while a test's expected panic unwinds.
    struct FreeOnDrop(*mut u8, Layout);

    impl Drop for FreeOnDrop {
        fn drop(&mut self) {
            // SAFETY: the block was allocated from `System` with this layout.
            unsafe { System.dealloc(self.0, self.1) }
        }
    }

    #[test]
    #[should_panic(expected = "write after free")]
    fn write_after_free_is_reported_on_reuse() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        let debug = debug_layout(layout).unwrap();
        let SizeClass::Small(class) = class_for(debug) else {
            unreachable!("a 64-byte block is pooled")
        };
        // SAFETY: the "freed" block is kept allocated in the inner allocator, so writing to it
        // is defined; the test drives the check directly as a reused block would.
        unsafe {
            let p = System.alloc_zeroed(debug);
            let _free = FreeOnDrop(p, debug);
            poison(p, CLASS_SIZES[class], true);
            p.add(40).write(1);
            arm(p, layout, debug);
        }
    }

    #[test]
    fn realloc_keeps_contents_and_moves_the_red_zone() {
        let layout = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: valid layouts; every block is freed with its current layout.
        unsafe {
            let p = A.alloc(layout);
            for i in 0..16 {
                p.add(i).write(i as u8);
            }
            let q = A.realloc(p, layout, 100);
            assert!(!q.is_null());
            assert!((0..16).all(|i| q.add(i).read() == i as u8));
            assert!((16..100).all(|i| q.add(i).read() == FRESH));
            assert!((100..100 + RED_ZONE).all(|i| q.add(i).read() == CANARY));
            A.dealloc(q, Layout::from_size_align(100, 8).unwrap());
        }
    }
}
