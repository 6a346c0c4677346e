//! Poisoning and red zones: a `GlobalAlloc` wrapper that catches overflows and writes after free.
//!
//! [`Checked<A>`] wraps a `GlobalAlloc` that can vet a pointer ([`CheckBlock`]; in the kernel:
//! the `LockedHeap`). With feature `debug-checks` it gives every block a debug layout:
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
//! * **Vetting first**: on free and realloc the inner allocator checks the pointer
//!   ([`CheckBlock::check_block`]) before the wrapper reads or writes the block, so a double free,
//!   an interior or foreign pointer, or a block whose chunk is unmapped gets the heap's own
//!   message, and no poison lands in a neighbouring block or an unmapped page.
//! * **Red zone**: [`RED_ZONE`] bytes of [`CANARY`] after the caller's bytes, checked on free and
//!   realloc for every block — class blocks, large-allocator blocks and page runs alike: an
//!   overflow by even one byte stops with a message naming the block and the byte. The block is
//!   freed before the report, so the heap stays whole.
//! * **Fresh fill**: a new block is filled with [`FRESH`], so code that reads memory it never
//!   wrote sees a recognisable pattern rather than stale data.
//! * **Poison**: a freed block is filled with [`POISON`], with [`FREED_TAG`] at offset 8 (the
//!   first 8 bytes are left to the heap, which keeps free-list links there). When a block is
//!   handed out again and still carries the tag, every poisoned byte is checked: a write after
//!   free is reported with the block's address and the offset written. A write that hits the tag
//!   itself makes the block look fresh and goes unnoticed — the check is a debugging aid, not a
//!   proof. Only blocks that `kheap` serves from its size classes carry the tag: there the heap
//!   writes nothing into a free block but its first two bytes, while the large allocator
//!   coalesces free blocks and keeps boundary tags inside them, so its region blocks are poisoned
//!   but not checked, and its page runs (unmapped on free) are not poisoned at all. Blocks
//!   smaller than 16 bytes (plus red zone) carry no tag either.
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

/// What [`Checked`] needs from the allocator it wraps, besides `GlobalAlloc`: a way to vet a
/// pointer before the wrapper reads the block's red zone or poisons it.
///
/// A bad free (a double free, an interior or foreign pointer, a block whose chunk went back to
/// the page source) must be reported in the allocator's own words *before* the wrapper touches
/// the memory the pointer names: the poison meant for a block at an interior pointer would land
/// in the next block, and reading the red zone of a block whose page is unmapped faults.
///
/// [`LockedHeap`](crate::LockedHeap) implements it with the heap's own checks (feature
/// `debug-checks`); an allocator that cannot tell does nothing, and the wrapper then trusts the
/// caller as `GlobalAlloc` does.
pub trait CheckBlock: GlobalAlloc {
    /// Panics, with a message naming `ptr`, unless it is a live block this allocator handed out
    /// for `layout` (the wrapper passes the layout it allocated with). Returns normally for a
    /// live block, and must not read or write memory it does not own while deciding.
    fn check_block(&self, ptr: *mut u8, layout: Layout);
}

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

/// Large blocks below this debug size are poisoned when freed. Larger ones are page runs, which
/// the heap unmaps at once (a later access faults anyway), so filling them would only cost time.
const POISON_LARGE_LIMIT: usize = crate::large::PAGE_RUN_THRESHOLD;

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
unsafe impl<A: CheckBlock> GlobalAlloc for Checked<A> {
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
        // The allocator vets the pointer before anything here reads or writes the block.
        self.inner.check_block(ptr, debug);
        // SAFETY: `ptr` is a live block of `debug.size()` bytes: the caller's contract, and the
        // allocator's check just now for a caller that broke it.
        unsafe {
            if let Some(damage) = red_zone_damage(ptr, layout.size()) {
                // Freed first, so that the heap stays whole after the report.
                self.inner.dealloc(ptr, debug);
                report_overflow(ptr.addr(), layout.size(), damage);
            }
            match class_for(debug) {
                // A class block is poisoned whole: a later request of the same class may be
                // longer than this one and will check every byte up to its own length.
                SizeClass::Small(class) => poison(ptr, CLASS_SIZES[class], true),
                SizeClass::Large if debug.size() < POISON_LARGE_LIMIT => {
                    poison(ptr, debug.size(), false);
                }
                SizeClass::Large => {}
            }
            self.inner.dealloc(ptr, debug);
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
        self.inner.check_block(ptr, old);
        // SAFETY: as in `dealloc`: a live block of `old.size()` bytes.
        if let Some(damage) = unsafe { red_zone_damage(ptr, layout.size()) } {
            // SAFETY: forwarded; the inner allocator gets the layout it allocated with.
            unsafe { self.inner.dealloc(ptr, old) };
            report_overflow(ptr.addr(), layout.size(), damage);
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
mod tests;
