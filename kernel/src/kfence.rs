//! Sampled guard-page allocations, after Linux KFENCE: every Nth heap allocation is placed in a
//! page of its own between two pages that are never mapped, at the very end of its page or at its
//! very start (alternately, by default): an overflow past an end-placed object or an underflow
//! before a start-placed one faults at once, and so does any access after it is freed (its page
//! is unmapped on free); the page-fault handler asks [`report_fault`] to name the allocation.
//!
//! ```text
//!   KFENCE_START   KFENCE_BASE (the top 2 * SLOTS + 1 pages of the memory layer's     KFENCE_END =
//!   │              │             scratch area)                                       HEAP_GUARD_START
//!   ┌──────────────┬──────────────┬──────────────┬──────────────┬─ … ─┬──────────────┬──────────────┐
//!   │ guard (never │ slot 0 page  │ guard        │ slot 1 page  │     │ slot 63 page │ guard        │ the heap's
//!   │ mapped)      │ …      [obj] │              │ [obj]      … │     │ …      [obj] │              │ guard area
//!   └──────────────┴──────────────┴──────────────┴──────────────┴─ … ─┴──────────────┴──────────────┘
//!   page position:  0              1              2              3          127            128
//! ```
//!
//! Every slot has a guard page on each side; the last slot's upper guard is the top page of the
//! scratch area. The never-mapped guard area below the heap window starts right after it
//! (`HEAP_GUARD_START`); a fault there is not kfence's and gets the plain page-fault report.
//!
//! A fault in a guard page is reported against the nearer of its two neighbours that could have
//! reached it: an end-placed object below it or a start-placed object above it (what Linux does
//! too). Off until [`enable`] is called with a sampling interval. The cost on the allocation
//! path is one atomic increment while enabled (and one relaxed load while disabled); a sampled
//! allocation costs a frame and a mapping. If no slot or frame is free, the allocation simply
//! goes to the heap. Only requests of at most a page, aligned to at most a page, are sampled.

use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::structures::paging::{Page, PageTableFlags, Size4KiB};

use crate::memory::{self, SCRATCH_KFENCE_PAGES, SCRATCH_SIZE, SCRATCH_START};

/// Number of object slots (each an object page plus a guard page).
pub const SLOTS: usize = 64;
const PAGE: u64 = 4096;
/// First slot page. Slot `i`'s page is followed by its guard, so the slots and their upper guards
/// fill the top `2 * SLOTS` pages of the scratch area: the last slot's guard is the scratch
/// area's top page, just below the never-mapped guard area of the heap window.
pub const KFENCE_BASE: u64 = SCRATCH_START + SCRATCH_SIZE - 2 * SLOTS as u64 * PAGE;
/// The guard page below slot 0.
pub const KFENCE_START: u64 = KFENCE_BASE - PAGE;
// The slots and their guards lie in the top of the scratch area that its hand-mapping helpers
// leave alone.
const _: () = assert!(KFENCE_START >= SCRATCH_START + SCRATCH_SIZE - SCRATCH_KFENCE_PAGES * PAGE);
/// End of the KFENCE area (exclusive): the end of the scratch area, where the heap window's
/// guard area begins.
pub const KFENCE_END: u64 = SCRATCH_START + SCRATCH_SIZE;

/// Where a sampled object goes in its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// End and start in turn: catches overflows of half the objects, underflows of the other half.
    Alternate,
    /// At the page end (or as close as its alignment allows): an overflow faults.
    End,
    /// At the page start: an underflow faults.
    Start,
}

/// The [`Placement`] in force: 0 alternate, 1 end, 2 start.
static PLACEMENT: AtomicUsize = AtomicUsize::new(0);

/// Sampling interval (0: off).
static INTERVAL: AtomicUsize = AtomicUsize::new(0);
static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Address of the live object, or 0 if the slot is free.
    live: usize,
    /// Address and size of the last object placed in this slot (kept after free, for reports).
    last_addr: usize,
    last_size: usize,
    /// Whether that object was placed at the page start (else at the end).
    at_start: bool,
}

struct State {
    slots: [Slot; SLOTS],
    sampled: usize,
    freed: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    slots: [Slot {
        live: 0,
        last_addr: 0,
        last_size: 0,
        at_start: false,
    }; SLOTS],
    sampled: 0,
    freed: 0,
});

/// Counters for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KfenceStats {
    /// Sampling interval (0: off).
    pub interval: usize,
    /// Allocations placed in guarded slots so far.
    pub sampled: usize,
    /// Of those, freed.
    pub freed: usize,
    /// Slots in use now.
    pub live: usize,
}

/// Samples every `interval`-th allocation (0 turns sampling off; objects already placed stay
/// guarded until freed).
pub fn enable(interval: usize) {
    INTERVAL.store(interval, Ordering::Relaxed);
}

/// Chooses where sampled objects go from now on ([`Placement::Alternate`] by default).
pub fn set_placement(placement: Placement) {
    let code = match placement {
        Placement::Alternate => 0,
        Placement::End => 1,
        Placement::Start => 2,
    };
    PLACEMENT.store(code, Ordering::Relaxed);
}

/// The current counters.
pub fn stats() -> KfenceStats {
    without_interrupts(|| {
        let s = STATE.lock();
        KfenceStats {
            interval: INTERVAL.load(Ordering::Relaxed),
            sampled: s.sampled,
            freed: s.freed,
            live: s.slots.iter().filter(|sl| sl.live != 0).count(),
        }
    })
}

fn slot_page(index: usize) -> u64 {
    KFENCE_BASE + 2 * index as u64 * PAGE
}

/// Whether `addr` lies in the KFENCE area (objects and guards).
pub fn contains(addr: usize) -> bool {
    (KFENCE_BASE..KFENCE_END).contains(&(addr as u64))
}

/// Places `layout` in a guarded slot if this allocation is sampled; `None` means "use the heap".
pub fn alloc(layout: Layout) -> Option<*mut u8> {
    let interval = INTERVAL.load(Ordering::Relaxed);
    if interval == 0 || layout.size() as u64 > PAGE || layout.align() as u64 > PAGE {
        return None;
    }
    if !COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(interval)
    {
        return None;
    }
    without_interrupts(|| {
        let mut s = STATE.lock();
        let index = s.slots.iter().position(|sl| sl.live == 0)?;
        let page_addr = slot_page(index);
        let frame = memory::allocate_frame()?;
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(page_addr));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        // SAFETY: the frame is fresh from the frame allocator and the slot page is ours alone
        // (free slot, inside the scratch area's KFENCE part, which nothing else maps).
        if unsafe { memory::map(page, frame, flags) }.is_err() {
            // SAFETY: the frame was never mapped and is ours.
            unsafe { memory::deallocate_frame(frame) };
            return None;
        }
        let at_start = match PLACEMENT.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => s.sampled % 2 == 1,
        };
        // At the page start (aligned for any alignment up to a page), or ending at the page end
        // (or as close as its alignment allows).
        let addr = if at_start {
            page_addr
        } else {
            (page_addr + PAGE - layout.size() as u64) & !(layout.align() as u64 - 1)
        };
        s.slots[index] = Slot {
            live: addr as usize,
            last_addr: addr as usize,
            last_size: layout.size(),
            at_start,
        };
        s.sampled += 1;
        Some(addr as *mut u8)
    })
}

/// Frees a KFENCE object (`ptr` in the KFENCE area): unmaps its page, so later accesses fault.
///
/// # Panics
///
/// If `ptr` is not the start of a live KFENCE object (double free, interior pointer).
///
/// # Safety
///
/// `ptr` came from [`alloc()`] and the caller will not touch the object again.
pub unsafe fn free(ptr: *mut u8) {
    let addr = ptr as usize;
    without_interrupts(|| {
        let mut s = STATE.lock();
        let index = ((addr as u64 - KFENCE_BASE) / (2 * PAGE)) as usize;
        let slot = s.slots[index];
        if slot.live != addr {
            drop(s);
            if slot.live == 0 && slot.last_addr == addr {
                panic!(
                    "kheap: double free of 0x{addr:x} (kfence object of {} B)",
                    slot.last_size
                );
            }
            panic!(
                "kheap: free of 0x{addr:x}, which is not a live kfence object (interior pointer?)"
            );
        }
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(slot_page(index)));
        // SAFETY: the slot's page was mapped by `alloc`; the caller gives the object up.
        match unsafe { memory::unmap(page) } {
            // SAFETY: the frame came from `allocate_frame` in `alloc` and is no longer mapped.
            Ok(frame) => unsafe { memory::deallocate_frame(frame) },
            Err(e) => panic!(
                "kfence: slot page {:#x} could not be unmapped: {e:?}",
                slot_page(index)
            ),
        }
        s.slots[index].live = 0;
        s.freed += 1;
    });
}

/// The usable size of a live KFENCE object (its requested size).
pub fn size_of(ptr: *mut u8) -> Option<usize> {
    let addr = ptr as usize;
    without_interrupts(|| {
        let s = STATE.lock();
        let index = ((addr as u64 - KFENCE_BASE) / (2 * PAGE)) as usize;
        let slot = s.slots.get(index)?;
        (slot.live == addr).then_some(slot.last_size)
    })
}

/// Describes a page fault at `addr` if it hit the KFENCE area: an out-of-bounds access past or
/// before an object (into a guard page) or an access to a freed object. Called by the page-fault
/// handler.
pub fn report_fault(addr: usize) -> Option<(&'static str, usize, usize)> {
    let addr = addr as u64;
    // From the guard below slot 0 to the guard above the last slot, which is the area's last
    // page. (The page after it, the heap window's guard area, is not kfence's: an overflow of
    // the last slot faults in that slot's guard first.)
    if !(KFENCE_START..KFENCE_END).contains(&addr) {
        return None;
    }
    // Pages from KFENCE_START: guards at even positions 0..=2 * SLOTS, slot `i` at position
    // `2i + 1`; so `position / 2` is at most SLOTS, and below SLOTS for a slot page.
    let position = (addr - KFENCE_START) / PAGE;
    // The handler may run while the state lock is held (a fault inside `alloc`/`free` is a bug
    // of this module); never wait for it here.
    let s = STATE.try_lock()?;
    if position % 2 == 1 {
        let slot = s.slots[(position / 2) as usize];
        return Some(("use-after-free of", slot.last_addr, slot.last_size));
    }
    // A guard page: between the slot below (its end-placed object overflows into it) and the slot
    // above (its start-placed object underflows into it). Prefer the one on the faulting half.
    let below = position
        .checked_sub(2)
        .map(|p| s.slots[(p / 2) as usize])
        .filter(|sl| sl.last_size != 0 && !sl.at_start);
    let above = s
        .slots
        .get((position / 2) as usize)
        .filter(|sl| sl.last_size != 0 && sl.at_start);
    let past = below.map(|sl| ("out-of-bounds access past", sl.last_addr, sl.last_size));
    let before = above.map(|sl| ("out-of-bounds access before", sl.last_addr, sl.last_size));
    if (addr - KFENCE_START) % PAGE < PAGE / 2 {
        past.or(before)
    } else {
        before.or(past)
    }
}
