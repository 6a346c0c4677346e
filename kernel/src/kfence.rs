//! Sampled guard-page allocations, after Linux KFENCE: every Nth heap allocation is placed at the
//! very end of a page of its own, followed by a page that is never mapped. An overflow past the
//! object faults at once, and so does any access after it is freed (its page is unmapped on
//! free); the page-fault handler asks [`report_fault`] to name the allocation.
//!
//! ```text
//!   KFENCE_BASE (top of the memory layer's scratch area; the guard area follows it)
//!   ┌──────────────┬──────────────┬──────────────┬──────────────┬─ … ─┐
//!   │ slot 0 page  │ guard (never │ slot 1 page  │ guard        │     │
//!   │ …      [obj] │ mapped)      │ …      [obj] │              │     │
//!   └──────────────┴──────────────┴──────────────┴──────────────┴─ … ─┘
//! ```
//!
//! Off until [`enable`] is called with a sampling interval. The cost on the allocation path is
//! one atomic increment while enabled (and one relaxed load while disabled); a sampled
//! allocation costs a frame and a mapping. If no slot or frame is free, the allocation simply
//! goes to the heap. Only requests of at most a page, aligned to at most a page, are sampled.

use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::structures::paging::{Page, PageTableFlags, Size4KiB};

use crate::memory::{self, SCRATCH_SIZE, SCRATCH_START};

/// Number of object slots (each an object page plus a guard page).
pub const SLOTS: usize = 64;
const PAGE: u64 = 4096;
/// First slot page: the top `2 * SLOTS` pages of the scratch area, so the last slot's guard is
/// the first page of the never-mapped guard area.
pub const KFENCE_BASE: u64 = SCRATCH_START + SCRATCH_SIZE - 2 * SLOTS as u64 * PAGE;
/// End of the KFENCE area.
pub const KFENCE_END: u64 = SCRATCH_START + SCRATCH_SIZE;

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
        // The object ends at the page end (or as close as its alignment allows).
        let end = page_addr + PAGE;
        let addr = (end - layout.size() as u64) & !(layout.align() as u64 - 1);
        s.slots[index] = Slot {
            live: addr as usize,
            last_addr: addr as usize,
            last_size: layout.size(),
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

/// Describes a page fault at `addr` if it hit the KFENCE area: an out-of-bounds access past an
/// object (into its guard page) or an access to a freed object. Called by the page-fault handler.
pub fn report_fault(addr: usize) -> Option<(&'static str, usize, usize)> {
    if !contains(addr) {
        return None;
    }
    let offset = addr as u64 - KFENCE_BASE;
    let index = (offset / (2 * PAGE)) as usize;
    let in_guard = (offset / PAGE) % 2 == 1;
    // The handler may run while the state lock is held (a fault inside `alloc`/`free` is a bug
    // of this module); never wait for it here.
    let s = STATE.try_lock()?;
    let slot = s.slots[index];
    if in_guard {
        Some(("out-of-bounds access past", slot.last_addr, slot.last_size))
    } else {
        Some(("use-after-free of", slot.last_addr, slot.last_size))
    }
}
