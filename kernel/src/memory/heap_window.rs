//! The heap window: the virtual range the kernel heap lives in, and `HeapWindow`, the
//! bookkeeping of its pages (which are taken, the spares, the page reserve) through which
//! `KernelPageSource` (`memory::page_source`, the heap's `kheap::PageSource`) maps fresh frames
//! into it.
//!
//! # Layout of the higher half
//!
//! ```text
//!  0xFFFF_8000_0000_0000 ┌──────────────────────────────────────┐ PML4 slots 256..=383
//!                        │ bootloader's dynamic range: kernel    │ (BOOTLOADER_CONFIG's
//!                        │ image, stack, boot info, the mapping  │  dynamic_range_start..end)
//!                        │ of all physical memory               │
//!  0xFFFF_C000_0000_0000 ╞══════════════════════════════════════╡ PML4 slot 384: HEAP_SLOT_START
//!                        │ scratch area, 1 GiB: pages that test │ SCRATCH_START
//!                        │ and benchmark kernels map by hand     │
//!  0xFFFF_C000_4000_0000 ├──────────────────────────────────────┤ HEAP_GUARD_START
//!                        │ guard, 3 GiB, never mapped: a write   │ (its last page:
//!                        │ running below the heap faults here    │  HEAP_GUARD_PAGE)
//!  0xFFFF_C001_0000_0000 ├──────────────────────────────────────┤ HEAP_WINDOW_START
//!                        │ heap window, 4 GiB = 2^20 pages,      │ (aligned to its size)
//!                        │ mapped on demand by KernelPageSource  │
//!  0xFFFF_C002_0000_0000 ├──────────────────────────────────────┤ HEAP_WINDOW_END
//!                        │ never mapped (room to grow the window)│
//!  0xFFFF_C080_0000_0000 ╘══════════════════════════════════════╛ HEAP_SLOT_END
//!                          slot 385: the CPU area (`smp`); slots 386..=511: unused
//! ```
//!
//! The whole of PML4 slot 384 belongs to this module. That makes the "is anything already
//! mapped where the heap goes?" check at init one read (the slot's PML4 entry must be unused),
//! and keeps the bootloader out by configuration: its dynamic mappings stay below
//! `HEAP_SLOT_START` (`dynamic_range_end`). [`map`](super::map) refuses every page of the slot
//! outside the scratch area, so the guard is never mapped.
//!
//! # Choosing pages
//!
//! Which pages of the window a request gets is decided by a [`Buddy`] over the window's 2^20 page
//! numbers (see [`buddy`](super::buddy)): O(1)-bounded per request, freed runs are reusable
//! and merge back, any sub-run of a mapping can be unmapped alone. Its bitmaps live in static
//! memory: 2 bits per window page, 260 KiB for this 4 GiB window (in `.bss`). A run of `n` pages
//! mapped fresh comes out aligned to `n.next_power_of_two()` pages, because the window start is
//! aligned to the window size (a run from the page reserve, below, is only page aligned).
//!
//! The window is 4 GiB: twice the largest memory the tests boot with (2 GiB), so the heap can
//! use all RAM even with fragmented address space. A larger machine needs a larger
//! [`WINDOW_ORDER`] (each doubling doubles the static bitmap).
//!
//! # Spare pages
//!
//! Most of the heap's requests are single pages (chunks), and each used to cost a page-table
//! walk to map and another, with a TLB flush, to unmap. The window keeps a bounded set of *spare*
//! pages ([`spare_pages`](super::spare_pages), at most 32): mapped, taken in the buddy, not the
//! heap's. A single-page `map` takes a spare; with none left it maps an aligned batch of 8 pages
//! in one walk and keeps 7. An `unmap` of at most 8 pages keeps them as spares while there is
//! room (no unmap, no flush); after checking each is the heap's (mapped, not a spare, not
//! waiting to be unmapped), so a double unmap still panics naming the page. Spares serve single
//! pages only (runs need contiguous pages; see the set's docs). They are released — unmapped, flushed on every CPU,
//! frames and pages given back — by `memory::release_spare_pages` (which `allocator::trim`
//! calls), and by every call here, and the frame allocator's `allocate_frame`, that runs short
//! of frames, before it retries: nothing reports out-of-memory while a spare holds a frame.
//! `grow` takes spares lying where a run grows as they are; `remap` refuses a run holding one.
//! Invariant: taken pages = the heap's pages (`mapped`) + the spares + the reserve's pages (ready
//! and tail) + the lazy unmaps' pages; every spare, every ready reserve page and every lazy page
//! is mapped, the reserve's tail is not.
//!
//! # Lazy unmaps
//!
//! A run the spares do not absorb (longer than 8 pages, or with the set full: a region of the
//! large allocator, a short page run) is not unmapped in the heap's call either, if it has at
//! most 32 pages and the [`lazy_unmaps`](super::lazy_unmaps) list a free slot (of 32): its pages
//! are marked in their page-table entries ([`MARKED`], a bit the MMU ignores: one read and one
//! write per page, no flush) and the run is listed; they stay mapped and taken, so nobody else
//! gets them and nobody uses them. The unmap itself — entries cleared, TLB flushed on every CPU, frames
//! freed, pages back to the buddy, 1 700–2 200 instructions for a 17-page region, most of it
//! fixed cost — is done by `memory::finish_unmaps`, in steps of at most 17 pages with the lock
//! dropped between them: an idle CPU's loop, `trim` (with the spares), and any call here (or
//! the frame allocator) short of frames before it retries, so a waiting page never makes a
//! request fail. The mark makes every double unmap exact: an unmap of a marked page, on any
//! path, panics naming it. A longer run, or one that finds the list full, is unmapped at once,
//! as before. A run that grows in place over waiting pages unmaps their runs first.
//!
//! # Page reserve
//!
//! Spares serve single pages; the calls that made the heap's worst case were the ones that map
//! runs: a region of up to 17 pages for a 16–64 KiB block, in the call that needs it. The
//! window keeps a [`page_reserve`](super::page_reserve): a run of pages mapped ahead of need,
//! filled one page per `prepare` (`KernelPageSource`'s `kheap::PageSource::prepare`, which
//! the heap calls in its quiet calls: a refill from mapped chunks, a large allocation from a
//! region it had; and at `Heap::init`, which fills it). A `map` of several pages takes them
//! from the reserve's front when it holds that many (no frame, no table, no flush); a single
//! page takes a spare, then the reserve's front while it holds more than a region needs, then a
//! fresh batch; a run that ends where the reserve starts grows into it. The reserve claims a
//! whole buddy block ([`RESERVE_BLOCK`] pages) at once and maps it a page at a time up to
//! [`RESERVE_TARGET`] pages ahead, so what it hands out is
//! contiguous with what it holds. Its pages are released with the spares (trim, and any call
//! short of frames, which then retries), and `prepare` maps nothing while fewer than
//! [`PREPARE_MIN_FREE_FRAMES`] frames are free: the reserve never holds the last of memory.
//!
//! # Moving runs
//!
//! A heap page run that cannot grow in place is moved rather than copied (`mremap`):
//! `KernelPageSource`'s `remap_pages` takes a free range of the new length from the buddy,
//! maps its tail to fresh frames, and points its head at the old run's frames
//! ([`PageTables::alias_run`](super::paging::PageTables::alias_run): the page-table entries are
//! copied, the bytes are not). `finish_remap` then unmaps the old range without freeing its frames
//! (`unmap_alias_run`, which flushes like any unmap: on every CPU before it returns) and gives its
//! window pages back to the buddy; or, if the heap abandons the move, unmaps the new range. The
//! new range sits at the *end* of its buddy block (not at the start, as `map_pages` runs do), so
//! that the pages after it are a whole neighbouring block rather than the small leftover pieces
//! single-page requests take first: a vector that keeps doubling then grows in place next time. A
//! move costs a page-table write per page instead of a copy of 4 KiB per page plus a fresh
//! frame per page and the old frames' release.
//!
//! # Locking
//!
//! Everything here runs under the global memory lock (`super::with_memory`), taken with
//! interrupts disabled. The heap takes its own lock first and calls in here; this layer never
//! calls the heap (it allocates nothing), so the order heap → memory is never reversed.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use kheap::source::{PAGE_SIZE, PageSourceError, aligned_offset, aligned_slack};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Page, PageTableFlags};

use super::buddy::{Buddy, storage_words};
use super::frame::BitmapFrameAllocator;
use super::lazy_unmaps::{LAZY_STEP, LazyUnmaps};
use super::page_reserve::{PageReserve, RESERVE_BLOCK, RESERVE_KEEP_FOR_RUNS, RESERVE_TARGET};
use super::paging::{MARKED, MapError, MarkError, MoveError, PageTables, Tlb, UnmapError};
use super::spare_pages::{ABSORB_MAX, SPARE_BATCH, SPARE_CAPACITY, SparePages};

/// Bytes per page, as a `u64` for address arithmetic.
const PAGE: u64 = PAGE_SIZE as u64;

/// Start of PML4 slot 384, the 512 GiB slot reserved for the heap (see the module diagram).
/// The bootloader's `dynamic_range_end` must not exceed it.
pub const HEAP_SLOT_START: u64 = 0xFFFF_C000_0000_0000;
/// End of the reserved slot (exclusive).
pub const HEAP_SLOT_END: u64 = HEAP_SLOT_START + (1 << 39);

/// Start of the scratch area: pages test and benchmark kernels map by hand (through
/// [`map`](super::map)), and at its top the pages of the sampled guard-page allocator
/// (`kernel/src/kfence.rs`); nothing else uses it.
pub const SCRATCH_START: u64 = HEAP_SLOT_START;
/// Size of the scratch area: 1 GiB.
pub const SCRATCH_SIZE: u64 = 1 << 30;
/// Pages at the top of the scratch area kept for the sampled guard-page allocator: the
/// hand-mapping helpers (`bench_support`) never hand them out.
pub const SCRATCH_KFENCE_PAGES: u64 = 256;

/// The heap window is `2^WINDOW_ORDER` pages.
pub const WINDOW_ORDER: u32 = 20;
/// Size of the heap window in bytes: 4 GiB.
pub const HEAP_WINDOW_SIZE: u64 = PAGE << WINDOW_ORDER;
/// First address of the heap window, aligned to the window size.
pub const HEAP_WINDOW_START: u64 = HEAP_SLOT_START + HEAP_WINDOW_SIZE;
/// End of the heap window (exclusive).
pub const HEAP_WINDOW_END: u64 = HEAP_WINDOW_START + HEAP_WINDOW_SIZE;
/// Number of pages in the heap window.
pub const HEAP_WINDOW_PAGES: usize = 1 << WINDOW_ORDER;

/// Start of the never-mapped guard below the window (it ends at [`HEAP_WINDOW_START`]).
pub const HEAP_GUARD_START: u64 = SCRATCH_START + SCRATCH_SIZE;
/// The page just below the window: the first one a write running downwards out of the heap hits.
pub const HEAP_GUARD_PAGE: u64 = HEAP_WINDOW_START - PAGE;

/// Flags of heap pages: data only, so never executable.
const WINDOW_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::NO_EXECUTE);

const _: () = {
    assert!(
        HEAP_WINDOW_START.is_multiple_of(HEAP_WINDOW_SIZE),
        "window aligned to its size"
    );
    assert!(
        HEAP_GUARD_START < HEAP_WINDOW_START,
        "a guard below the window"
    );
    assert!(
        HEAP_WINDOW_END <= HEAP_SLOT_END,
        "window inside the reserved slot"
    );
};

/// Whether the window's reserve wants pages ([`HeapWindow::wants_prepare`]), published by every
/// window call that changes the reserve, so that the heap can ask on its slow paths without
/// taking the memory lock (`KernelPageSource::wants_prepare`). A stale answer costs one
/// `prepare` that does nothing, or one quiet call that does not fill the reserve.
static WANTS_PREPARE: AtomicBool = AtomicBool::new(false);

/// Whether lazy unmaps are waiting ([`HeapWindow::unmaps_waiting`]), published by every window
/// call that changes them, so that an idle CPU can look without taking the memory lock
/// (`memory::unmaps_waiting`).
static UNMAPS_WAITING: AtomicBool = AtomicBool::new(false);

/// The published [`HeapWindow::unmaps_waiting`] (one relaxed atomic load, no lock).
#[cfg(target_os = "none")]
#[inline]
pub(super) fn unmaps_waiting() -> bool {
    UNMAPS_WAITING.load(Ordering::Relaxed)
}

/// The published [`HeapWindow::wants_prepare`] (one relaxed atomic load, no lock).
#[cfg(target_os = "none")]
#[inline]
pub(super) fn prepare_wanted() -> bool {
    WANTS_PREPARE.load(Ordering::Relaxed)
}

/// Free frames below which `HeapWindow::prepare` maps nothing: 4 MiB, so that the reserve
/// never takes the frames a machine is running out of (a map short of frames releases what the
/// reserve holds, but a reserve refilling in every quiet call would keep taking them back).
pub const PREPARE_MIN_FREE_FRAMES: u64 = 1024;

/// The buddy type sized for the window.
pub type WindowBuddy = Buddy<WINDOW_ORDER, { storage_words(WINDOW_ORDER) }>;

/// The window's bookkeeping: which pages are taken, how many are the heap's, which are spares,
/// which the reserve holds.
///
/// Every taken page of the buddy is the heap's (counted in `mapped`), a spare (in `spares`), the
/// reserve's (ready or tail) or waiting to be unmapped (in `lazy`), never two of these: `taken =
/// mapped + spares.len() + reserve.held() + lazy.pages()`. Every taken page is mapped except the
/// reserve's tail.
#[derive(Debug)]
pub(super) struct HeapWindow {
    /// Free/taken page runs of the window.
    runs: WindowBuddy,
    /// Pages mapped and handed to the heap.
    mapped: usize,
    /// Pages mapped but not handed out (see [`spare_pages`](super::spare_pages)).
    spares: SparePages,
    /// Pages mapped ahead of need for multi-page requests, and the block they come from (see
    /// [`page_reserve`](super::page_reserve)).
    reserve: PageReserve,
    /// Runs the heap gave back whose unmapping waits (see [`lazy_unmaps`](super::lazy_unmaps)).
    lazy: LazyUnmaps,
}

/// Why a window operation could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shortage {
    /// No free range of the window fits (releasing spares would not help).
    AddressSpace,
    /// Frames (for pages or page tables) ran out: releasing spares may help.
    Frames,
}

impl From<Shortage> for PageSourceError {
    fn from(shortage: Shortage) -> Self {
        match shortage {
            Shortage::AddressSpace => Self::OutOfAddressSpace,
            Shortage::Frames => Self::OutOfMemory,
        }
    }
}

impl HeapWindow {
    /// A window with no free pages (all-zero, for the `static`); [`reset`](Self::reset) opens it.
    pub(super) const fn empty() -> Self {
        Self {
            runs: WindowBuddy::empty(),
            mapped: 0,
            spares: SparePages::new(),
            reserve: PageReserve::new(),
            lazy: LazyUnmaps::new(),
        }
    }

    /// Makes the whole window free, in place.
    pub(super) fn reset(&mut self) {
        self.runs.reset();
        self.mapped = 0;
        self.spares = SparePages::new();
        self.reserve = PageReserve::new();
        self.lazy = LazyUnmaps::new();
        self.publish();
        self.publish_lazy();
    }

    /// Takes `count` ready pages from the reserve's front (see `PageReserve::take_front`) and
    /// publishes what the reserve now wants.
    fn take_reserved(&mut self, count: usize) -> Option<usize> {
        let first = self.reserve.take_front(count)?;
        self.publish();
        Some(first)
    }

    /// Publishes [`unmaps_waiting`](Self::unmaps_waiting) in [`UNMAPS_WAITING`].
    fn publish_lazy(&self) {
        UNMAPS_WAITING.store(self.unmaps_waiting(), Ordering::Relaxed);
    }

    /// Publishes [`wants_prepare`](Self::wants_prepare) in [`WANTS_PREPARE`].
    fn publish(&self) {
        WANTS_PREPARE.store(self.wants_prepare(), Ordering::Relaxed);
    }

    /// Checks the window's buddy, that exactly the taken pages are the heap's pages, the
    /// spares, the reserve's and the lazy unmaps', and that every spare and every lazy page is a
    /// distinct window page, taken and mapped; panics naming the broken rule. Linear in the
    /// window size (about 2 million bit tests).
    pub(super) fn check_invariants<T: Tlb>(&self, tables: &PageTables<T>) {
        self.runs.check_invariants();
        assert_eq!(
            HEAP_WINDOW_PAGES - self.runs.free_pages(),
            self.mapped + self.spares.len() + self.reserve.held() + self.lazy.pages(),
            "heap window: taken pages differ from the heap's pages plus the spares, the reserve \
             and the lazy unmaps"
        );
        let marked = |page: usize| {
            tables
                .leaf_flags(window_page(page))
                .map(|flags| flags.contains(MARKED))
        };
        let taken = |page: usize, what: &str| {
            assert!(
                self.runs.is_taken(page),
                "heap window: {what} page {:#x} is free in the buddy",
                window_page_addr(page)
            );
        };
        for (i, run) in self.lazy.ranges().enumerate() {
            for page in run {
                let addr = window_page_addr(page);
                taken(page, "lazily unmapped");
                assert_eq!(
                    marked(page),
                    Some(true),
                    "heap window: lazily unmapped page {addr:#x} is not mapped and marked"
                );
                assert!(
                    !self.spares.contains(page) && !self.reserve.overlaps(page, page + 1),
                    "heap window: lazily unmapped page {addr:#x} is also a spare or the reserve's"
                );
                assert!(
                    self.lazy
                        .ranges()
                        .take(i)
                        .all(|other| !other.contains(&page)),
                    "heap window: page {addr:#x} waits to be unmapped twice"
                );
            }
        }
        for page in self.reserve.ready_range().chain(self.reserve.tail_range()) {
            let addr = window_page_addr(page);
            let ready = self.reserve.ready_range().contains(&page);
            taken(page, "reserve");
            assert_eq!(
                tables.translate(VirtAddr::new(addr)).is_some(),
                ready,
                "heap window: reserve page {addr:#x} is {} but {}",
                if ready { "ready" } else { "in the tail" },
                if ready { "not mapped" } else { "mapped" }
            );
            assert!(
                !self.spares.as_slice().contains(&(page as u32)),
                "heap window: reserve page {addr:#x} is also a spare"
            );
            assert_ne!(
                marked(page),
                Some(true),
                "heap window: reserve page {addr:#x} is marked as waiting to be unmapped"
            );
        }
        let spares = self.spares.as_slice();
        for (i, &page) in spares.iter().enumerate() {
            let page = page as usize;
            let addr = window_page_addr(page);
            taken(page, "spare");
            assert_eq!(
                marked(page),
                Some(false),
                "heap window: spare page {addr:#x} is not mapped, or marked as waiting to be \
                 unmapped"
            );
            assert!(
                !spares[..i].contains(&(page as u32)),
                "heap window: spare page {addr:#x} is held twice"
            );
        }
    }

    /// Pages currently mapped and handed to the heap (spares not included).
    pub(super) fn mapped(&self) -> usize {
        self.mapped
    }

    /// Spare pages: mapped, each holding a frame, not handed out.
    pub(super) fn spare(&self) -> usize {
        self.spares.len()
    }

    /// Pages of the reserve that are mapped and ready to be handed out.
    pub(super) fn reserved(&self) -> usize {
        self.reserve.ready()
    }

    /// Pages given back by the heap that wait to be unmapped (see
    /// [`lazy_unmaps`](super::lazy_unmaps)): mapped, each holding a frame.
    pub(super) fn lazy(&self) -> usize {
        self.lazy.pages()
    }

    /// Whether [`finish_unmaps`](Self::finish_unmaps) has work to do.
    pub(super) fn unmaps_waiting(&self) -> bool {
        !self.lazy.is_empty()
    }

    /// Unmaps up to [`LAZY_STEP`] pages of the lazy unmaps (the newest run's last pages), frees
    /// their frames and gives them back to the buddy; returns how many (0: none waited). One
    /// bounded step, for outside the heap's calls (`memory::finish_unmaps` takes the lock for
    /// each step, so interrupts are taken between them).
    pub(super) fn finish_unmaps<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> usize {
        let Some((first, count)) = self.lazy.take(LAZY_STEP) else {
            return 0;
        };
        self.finish_run(first, count, tables, frames);
        self.publish_lazy();
        count
    }

    /// Unmaps every lazily unmapped run; returns how many pages.
    fn finish_all_unmaps<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> usize {
        let mut pages = 0;
        while let Some((first, count)) = self.lazy.take(usize::MAX) {
            self.finish_run(first, count, tables, frames);
            pages += count;
        }
        self.publish_lazy();
        pages
    }

    /// Unmaps a run taken from the lazy unmaps.
    fn finish_run<T: Tlb>(
        &mut self,
        first: usize,
        count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) {
        // SAFETY: a lazy run is one the heap gave back through `unmap`, whose contract is that
        // the window mapped its pages to frames of `frames` and nobody accesses them any more;
        // they stayed taken and mapped, and nobody else was given them since.
        if let Err(error) = unsafe { self.unmap_now(first, count, true, tables, frames) } {
            panic!(
                "heap window: finishing the lazy unmap of {count} pages at {:#x}: {error}",
                window_page_addr(first)
            );
        }
    }

    /// Whether [`prepare`](Self::prepare) has work to do (the reserve is not full).
    pub(super) fn wants_prepare(&self) -> bool {
        self.reserve.wants_pages() || self.stuck_pages_fit_the_spares()
    }

    /// Whether the reserve is stuck (its block used up, the pages after it taken) with fewer
    /// ready pages than the largest region needs, and the spares can take them all: then
    /// `prepare` hands them over, and the reserve starts a new block at the next.
    fn stuck_pages_fit_the_spares(&self) -> bool {
        let ready = self.reserve.ready();
        self.reserve.is_stuck()
            && ready > 0
            && ready < RESERVE_KEEP_FOR_RUNS
            && ready <= self.spares.room()
    }

    /// Maps one more page into the reserve, or, when it holds none or its block is used up,
    /// claims a new block of [`RESERVE_BLOCK`] window pages instead (one step per call), and
    /// returns whether it did: the bounded work a quiet heap
    /// call does ahead of need (`kheap::PageSource::prepare`). `false`, with nothing changed,
    /// when the reserve is full, or waits for its last ready pages to go, or frames or address
    /// space are short (then the reserve is simply not filled: nothing fails).
    pub(super) fn prepare<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> bool {
        if self.stuck_pages_fit_the_spares() {
            // A stuck reserve serves no run longer than its last ready pages, and waits for
            // single pages to take them before it may start a new block; so many regions
            // would map their pages in the call meanwhile. Its pages become spares instead
            // (mapped single pages, which is what they serve), and the next call starts anew.
            let count = self.reserve.ready();
            let first = self.take_reserved(count).expect("the ready pages");
            for page in (first..first + count).rev() {
                self.spares.push(page);
            }
            return true;
        }
        // Never for the last frames: the reserve is worth its pages only while memory is
        // plentiful (and a map short of frames releases it anyway).
        if !self.reserve.wants_pages() || frames.stats().free < PREPARE_MIN_FREE_FRAMES {
            return false;
        }
        if self.reserve.held() == 0 {
            let Some(first) = self.runs.alloc(RESERVE_BLOCK) else {
                WANTS_PREPARE.store(false, Ordering::Relaxed);
                return false;
            };
            self.reserve.start_block(first, RESERVE_BLOCK);
            // Claiming the block is this call's work; the next one maps its first page (which
            // may need a new page table too: the two together made the longest quiet calls).
            return true;
        } else if let Some(end) = self.reserve.block_end() {
            // The block is used up: extend it by the next block's pages if they are free (the
            // ready pages stay contiguous with what comes next), else stop filling until the
            // ready pages are gone.
            if end + RESERVE_BLOCK <= HEAP_WINDOW_PAGES && self.runs.claim(end, RESERVE_BLOCK) {
                self.reserve.extend_tail(RESERVE_BLOCK);
                return true;
            } else {
                self.reserve.set_stuck();
                self.publish();
                return false;
            }
        }
        let Some(page) = self.reserve.next_to_map() else {
            return false;
        };
        // SAFETY: the page is the reserve's, taken in the buddy and not mapped (its tail): no
        // one references it; the window is reserved for exactly this use.
        match unsafe { tables.map_fresh_run(window_page(page), 1, WINDOW_FLAGS, frames) } {
            Ok(()) => {
                self.reserve.mapped_next();
                self.publish();
                true
            }
            Err(MapError::OutOfFrames) => false,
            Err(error) => panic!(
                "heap window: mapping reserve page {:#x} failed: {error} (window bookkeeping \
                 disagrees with the page tables)",
                window_page_addr(page)
            ),
        }
    }

    /// Fills the reserve up to [`RESERVE_TARGET`] with [`prepare`](Self::prepare) steps (a
    /// block claim, then one page each) until it holds that many, or frames run short, or its
    /// block cannot be extended; returns how many pages it mapped. For outside any heap call
    /// (boot, or a kernel's idle moment): up to `RESERVE_TARGET` page mappings in one call.
    pub(super) fn fill_reserve<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> usize {
        let before = self.reserve.ready();
        // Each step maps one page or claims one block (a new block, or the extension of a used-up
        // one: a few per fill at most), so the bound never stops a fill that makes progress.
        for _ in 0..2 * RESERVE_TARGET + 2 {
            if !self.prepare(tables, frames) {
                break;
            }
        }
        self.reserve.ready() - before
    }

    /// The largest run one request can get now, in pages.
    pub(super) fn largest_free_run(&self) -> usize {
        self.runs.largest_free_block()
    }

    /// Unmaps every spare page (one unmap, with its TLB flush, per run of consecutive spares),
    /// the reserve's ready pages and the lazy unmaps, frees their frames and gives them back to
    /// the buddy, with the reserve's unmapped tail; returns how many mapped pages there were.
    pub(super) fn release_spares<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> usize {
        let (ready, tail) = self.reserve.take_all();
        if !ready.is_empty() {
            let count = ready.len();
            let start = window_page(ready.start);
            // SAFETY: the reserve's ready pages were mapped by `prepare` to fresh frames and
            // never handed out.
            let result = unsafe { tables.unmap_fresh_run(start, count, frames) };
            if let Err(error) = result {
                panic!(
                    "heap window: releasing {count} reserve pages at {:#x}: {error}",
                    window_page_addr(ready.start)
                );
            }
        }
        let held = ready.start..tail.end;
        if !held.is_empty() {
            self.runs.free_taken(held.start, held.len());
        }
        self.publish();
        let released = self.spares.len() + ready.len() + self.finish_all_unmaps(tables, frames);
        let runs = &mut self.runs;
        self.spares.drain_runs(|first, count| {
            // SAFETY: a spare is a window page mapped to a frame of `frames` by `map` that was
            // never handed out, or that the heap gave back through `unmap` and no longer uses.
            if let Err(error) = unsafe { tables.unmap_fresh_run(window_page(first), count, frames) }
            {
                panic!(
                    "heap window: releasing {count} spare pages at {:#x}: {error}",
                    window_page_addr(first)
                );
            }
            runs.free_taken(first, count);
        });
        released
    }

    /// Runs `op`; if it failed for want of frames while spares, the reserve or lazy unmaps hold
    /// some, releases them and runs it once more (every window call that takes frames goes
    /// through here, so nothing reports out-of-memory while a spare holds a frame). `op` must
    /// change nothing when it fails.
    #[inline]
    fn releasing_spares_if_short<T: Tlb, R>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
        mut op: impl FnMut(
            &mut Self,
            &mut PageTables<T>,
            &mut BitmapFrameAllocator,
        ) -> Result<R, Shortage>,
    ) -> Result<R, Shortage> {
        match op(self, tables, frames) {
            Err(Shortage::Frames) if self.holds_frames() => {
                self.release_spares(tables, frames);
                op(self, tables, frames)
            }
            result => result,
        }
    }

    /// Whether spares, the reserve or lazy unmaps hold pages that releasing would give back.
    fn holds_frames(&self) -> bool {
        !self.spares.is_empty() || self.reserve.held() > 0 || !self.lazy.is_empty()
    }

    /// Maps `count` pages at a free run of the window: a single page is a spare if there is
    /// one, else the reserve's next page if it holds more than the runs need
    /// ([`RESERVE_KEEP_FOR_RUNS`](super::page_reserve::RESERVE_KEEP_FOR_RUNS)), else
    /// the first of a fresh batch of [`SPARE_BATCH`]
    /// (the rest become spares); a run is the reserve's front if it holds enough ready pages,
    /// else fresh frames at a free run.
    ///
    /// # Errors
    ///
    /// `OutOfAddressSpace` if no free run is large enough, `OutOfMemory` if frames (for pages or
    /// page tables) run out even after the spares were released; in both cases nothing stays
    /// mapped or taken.
    pub(super) fn map<T: Tlb>(
        &mut self,
        count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 {
            return Err(PageSourceError::InvalidRequest);
        }
        if count > HEAP_WINDOW_PAGES {
            return Err(PageSourceError::OutOfAddressSpace);
        }
        let first = if count == 1 {
            match self.spares.pop() {
                Some(page) => page,
                None if self.reserve.serves_single_pages() => {
                    self.take_reserved(1).expect("a ready page")
                }
                // No spare: then there is none to release on failure either; short of frames,
                // a page the reserve holds for runs is better than a refusal.
                None => match self.map_batch(tables, frames) {
                    Ok(page) => page,
                    Err(Shortage::Frames) if self.reserve.ready() > 0 => {
                        self.take_reserved(1).expect("a ready page")
                    }
                    Err(Shortage::Frames) if !self.lazy.is_empty() => {
                        self.finish_all_unmaps(tables, frames);
                        self.map_batch(tables, frames)
                            .map_err(PageSourceError::from)?
                    }
                    Err(shortage) => return Err(shortage.into()),
                },
            }
        } else if let Some(first) = self.take_reserved(count) {
            first
        } else {
            self.releasing_spares_if_short(tables, frames, |window, tables, frames| {
                window.map_fresh(count, tables, frames)
            })?
        };
        self.mapped += count;
        Ok(window_ptr(first))
    }

    /// One page for a single-page request when there is no spare: an aligned block of
    /// [`SPARE_BATCH`] pages mapped in one call, its first page for the request, the rest pushed
    /// as spares (so that the next requests take them in ascending order). Falls back to one
    /// page when the block or its frames are not to be had.
    fn map_batch<T: Tlb>(
        &mut self,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<usize, Shortage> {
        debug_assert!(
            self.spares.is_empty(),
            "a batch is mapped only with no spare left"
        );
        if let Ok(first) = self.map_fresh(SPARE_BATCH, tables, frames) {
            for page in (first + 1..first + SPARE_BATCH).rev() {
                self.spares.push(page);
            }
            return Ok(first);
        }
        self.map_fresh(1, tables, frames)
    }

    /// Takes a free run of `count` pages from the buddy and maps it to fresh frames; returns
    /// its first page. Counts nothing: the caller decides whose the pages are.
    fn map_fresh<T: Tlb>(
        &mut self,
        count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<usize, Shortage> {
        // Address space first: a request no free run can hold is `OutOfAddressSpace` whatever
        // RAM there is.
        let first = self.runs.alloc(count).ok_or(Shortage::AddressSpace)?;
        // Cheap early answer. The exact one is the mapper's: it counts the frames for the pages
        // and for the page tables the run needs before it maps anything.
        if frames.stats().free < count as u64 {
            // Taken a moment ago: no double-free check needed.
            self.runs.free_taken(first, count);
            return Err(Shortage::Frames);
        }
        let start = window_page(first);
        // SAFETY: the run was free in the buddy, so no page of it is mapped or referenced; the
        // window is reserved for exactly this use.
        match unsafe { tables.map_fresh_run(start, count, WINDOW_FLAGS, frames) } {
            Ok(()) => Ok(first),
            Err(MapError::OutOfFrames) => {
                // Taken a moment ago: no double-free check needed.
                self.runs.free_taken(first, count);
                Err(Shortage::Frames)
            }
            Err(error) => panic!(
                "heap window: mapping {count} pages at {:#x} failed: {error} \
                 (window bookkeeping disagrees with the page tables)",
                start.start_address().as_u64()
            ),
        }
    }

    /// Maps the `extra` window pages right after the `count` pages at `addr`, if each is free or
    /// a spare, and returns whether it did (on `false` nothing changed): a run growing in
    /// place. Free pages get fresh frames; spares are taken as they are (already mapped). Any
    /// input is answered; one that is not a run inside the window, or would leave it, gets
    /// `false`.
    pub(super) fn grow<T: Tlb>(
        &mut self,
        addr: u64,
        count: usize,
        extra: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> bool {
        self.releasing_spares_if_short(tables, frames, |window, tables, frames| {
            window.grow_once(addr, count, extra, tables, frames)
        })
        .is_ok()
    }

    /// [`grow`](Self::grow) without the release-and-retry.
    fn grow_once<T: Tlb>(
        &mut self,
        addr: u64,
        count: usize,
        extra: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), Shortage> {
        if !(HEAP_WINDOW_START..HEAP_WINDOW_END).contains(&addr) || !addr.is_multiple_of(PAGE) {
            return Err(Shortage::AddressSpace);
        }
        let first = ((addr - HEAP_WINDOW_START) / PAGE) as usize;
        let Some(end) = first.checked_add(count) else {
            return Err(Shortage::AddressSpace);
        };
        if extra == 0 || end > HEAP_WINDOW_PAGES || extra > HEAP_WINDOW_PAGES - end {
            return Err(Shortage::AddressSpace);
        }
        if let Some((_, tail)) = self.reserve.front_for(end, extra) {
            // The run ends where the reserve starts (it was the reserve's front): it grows into
            // the reserve's ready pages, then into its tail, which is already claimed.
            if tail > 0 {
                let start = self.reserve.tail_range().start;
                // SAFETY: tail pages are the reserve's, taken and not mapped: nobody references
                // them.
                match unsafe {
                    tables.map_fresh_run(window_page(start), tail, WINDOW_FLAGS, frames)
                } {
                    Ok(()) => {}
                    Err(MapError::OutOfFrames) => return Err(Shortage::Frames),
                    Err(error) => panic!(
                        "heap window: growing the run at {addr:#x} into the reserve at {:#x} \
                         failed: {error} (window bookkeeping disagrees with the page tables)",
                        window_page_addr(start)
                    ),
                }
            }
            self.reserve.give_front(extra);
            self.mapped += extra;
            self.publish();
            return Ok(());
        }
        if self.lazy.overlaps(end, end + extra) {
            // Pages the heap gave back lie where the run grows, still mapped: their runs are
            // unmapped now (the work their frees put off), so that the run can grow over them as
            // over free pages. First the check that the growth can succeed at all (no page there
            // is anyone else's), so that a refused growth changes nothing.
            let blocked = (end..end + extra).any(|page| {
                self.runs.is_taken(page) && !self.spares.contains(page) && !self.lazy.contains(page)
            });
            if blocked {
                return Err(Shortage::AddressSpace);
            }
            while let Some((first, count)) = self.lazy.take_overlapping(end, end + extra) {
                self.finish_run(first, count, tables, frames);
            }
            self.publish_lazy();
        }
        let mut spares = [0; SPARE_CAPACITY];
        let n = self.spares.in_range(end, end + extra, &mut spares);
        // The free gaps between the spares (all of the range when there is none).
        let gaps = || {
            let mut from = end;
            spares[..n]
                .iter()
                .map(|&s| s as usize)
                .chain(core::iter::once(end + extra))
                .map(move |to| {
                    let gap = (from, to - from);
                    from = to + 1;
                    gap
                })
                .filter(|&(_, len)| len > 0)
        };
        let fresh = extra - n;
        // As in `map_fresh`: a cheap early answer; the mapper checks pages and tables exactly.
        if frames.stats().free < fresh as u64 {
            return Err(Shortage::Frames);
        }
        // Claim every gap, or none.
        for (claimed, (start, len)) in gaps().enumerate() {
            if !self.runs.claim(start, len) {
                for (start, len) in gaps().take(claimed) {
                    self.runs.free_taken(start, len);
                }
                return Err(Shortage::AddressSpace);
            }
        }
        // Map every gap, or none.
        for (done, (start, len)) in gaps().enumerate() {
            // SAFETY: the buddy just gave us these window pages, so none is mapped or
            // referenced; the window is reserved for exactly this use.
            match unsafe { tables.map_fresh_run(window_page(start), len, WINDOW_FLAGS, frames) } {
                Ok(()) => {}
                Err(MapError::OutOfFrames) => {
                    for (start, len) in gaps().take(done) {
                        // SAFETY: mapped just above to fresh frames, seen by nobody.
                        let undo =
                            unsafe { tables.unmap_fresh_run(window_page(start), len, frames) };
                        debug_assert!(undo.is_ok(), "undoing a grow's pages failed: {undo:?}");
                    }
                    for (start, len) in gaps() {
                        self.runs.free_taken(start, len);
                    }
                    return Err(Shortage::Frames);
                }
                Err(error) => panic!(
                    "heap window: growing the run at {addr:#x} by {extra} pages at {:#x} \
                     failed: {error} (window bookkeeping disagrees with the page tables)",
                    window_page_addr(start)
                ),
            }
        }
        self.spares.remove_range(end, end + extra);
        self.mapped += extra;
        Ok(())
    }

    /// Maps `count` pages of fresh frames at a free run of the window whose page `aligned_page`
    /// starts at a multiple of `align` (a power of two, at least a page): address space is
    /// reserved for the run and the slack an aligned placement may skip, but only the run's own
    /// pages are mapped, so a 512 MiB alignment costs two frames, not 512 MiB of them. (The
    /// reserved range is a buddy block of at least twice the alignment for a run of more than
    /// one page, and the run sits in its middle: while it lives, that block stays split.)
    ///
    /// # Errors
    ///
    /// `InvalidRequest` for arguments [`kheap::source::aligned_slack`] rejects,
    /// `OutOfAddressSpace` if no free range can hold the run and its slack, `OutOfMemory` if
    /// frames run out even after the spares were released; in every case nothing stays mapped
    /// or taken.
    pub(super) fn map_aligned<T: Tlb>(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let slack = aligned_slack(count, align, aligned_page)?;
        let total = count + slack;
        if total > HEAP_WINDOW_PAGES {
            return Err(PageSourceError::OutOfAddressSpace);
        }
        let once =
            |window: &mut Self, tables: &mut PageTables<T>, frames: &mut BitmapFrameAllocator| {
                // The buddy finds a free range of `total` pages, in which the aligned run lies; the
                // range goes straight back (nothing can take it meanwhile: the memory lock is held),
                // and the run alone is then claimed and mapped, as a run growing from nothing would
                // be. The range was free, so it holds no spare: all of the run gets fresh frames.
                let reserved = window.runs.alloc(total).ok_or(Shortage::AddressSpace)?;
                window.runs.free_taken(reserved, total);
                let addr = window_page_addr(reserved);
                let start = addr + aligned_offset(addr as usize, align, aligned_page) as u64;
                window
                    .grow_once(start, 0, count, tables, frames)
                    .map(|()| start)
            };
        let start = self.releasing_spares_if_short(tables, frames, once)?;
        // The window is in the higher half: its addresses are never null.
        Ok(NonNull::new(VirtAddr::new(start).as_mut_ptr::<u8>())
            .expect("heap window address is not null"))
    }

    /// Gives back `count` pages from `addr`: a run of at most [`ABSORB_MAX`] pages becomes
    /// spares while there is room for all of it (nothing is unmapped or flushed: the pages stay
    /// mapped to their frames); any other run is unmapped, its frames freed and its pages
    /// returned to the buddy.
    ///
    /// # Panics
    ///
    /// If the run is not page-aligned, leaves the window, or has a page that is not the heap's
    /// (not mapped, or a spare already: a double unmap): the message names the address.
    ///
    /// # Safety
    ///
    /// The pages must have been mapped by [`map`](Self::map) and nothing may access them after
    /// this call.
    pub(super) unsafe fn unmap<T: Tlb>(
        &mut self,
        addr: u64,
        count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) {
        if count == 0 {
            return;
        }
        let in_window = (HEAP_WINDOW_START..HEAP_WINDOW_END).contains(&addr)
            && (count as u64) <= (HEAP_WINDOW_END - addr) / PAGE;
        assert!(
            in_window && addr.is_multiple_of(PAGE),
            "heap window: unmap_pages({addr:#x}, {count}) is not a page run inside the window"
        );
        let first = ((addr - HEAP_WINDOW_START) / PAGE) as usize;
        assert!(
            !self.reserve.overlaps(first, first + count),
            "heap window: unmap_pages({addr:#x}, {count}): the run overlaps the page reserve, \
             which is not the heap's (unmapped twice?)"
        );
        if count <= ABSORB_MAX && count <= self.spares.room() {
            // Every page must be the heap's: not a spare (one scan of the set for the run),
            // mapped and not waiting to be unmapped (the page tables say so: `MARKED` on a
            // waiting one). That is the check the unmap below makes, so a double unmap panics
            // here as it does there, naming the page.
            if let Some(spare) = self.spares.any_in(first, first + count) {
                refuse_unmap(
                    addr,
                    count,
                    MarkError::NotMapped {
                        page: window_page(spare),
                    },
                );
            }
            for page in (first..first + count).map(window_page) {
                match tables.leaf_flags(page) {
                    Some(flags) if !flags.contains(MARKED) => {}
                    Some(_) => refuse_unmap(addr, count, MarkError::Marked { page }),
                    None => refuse_unmap(addr, count, MarkError::NotMapped { page }),
                }
            }
            for page in (first..first + count).rev() {
                self.spares.push(page);
            }
            self.mapped -= count;
            return;
        }
        // SAFETY: forwarded (the caller's contract).
        unsafe { self.unmap_long(addr, first, count, tables, frames) }
    }

    /// [`unmap`](Self::unmap) of a run the spares do not absorb: listed as a lazy unmap if
    /// there is room, else unmapped now. (Out of line: a chunk's page, the common unmap, stays
    /// short.)
    ///
    /// # Safety
    ///
    /// As for [`unmap`](Self::unmap); `first` is the window page of `addr`, checked by it.
    #[inline(never)]
    unsafe fn unmap_long<T: Tlb>(
        &mut self,
        addr: u64,
        first: usize,
        count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) {
        // A spare inside the run would be unmapped below while still on the stack: refuse it
        // as the double unmap it is.
        if let Some(spare) = self.spares.any_in(first, first + count) {
            panic!(
                "heap window: unmap_pages({addr:#x}, {count}): page {:#x} is a spare, not the \
                 heap's (unmapped twice?)",
                window_page_addr(spare)
            );
        }
        if self.lazy.has_room(count) {
            // Unmapped later (see `lazy_unmaps`): every page must be the heap's now (not a
            // spare, above; mapped and not waiting already), and is marked as waiting, so that
            // a second unmap of it is refused here, naming the page.
            if let Err(error) = tables.mark_run(window_page(first), count) {
                refuse_unmap(addr, count, error);
            }
            self.lazy.push(first, count);
            self.mapped -= count;
            self.publish_lazy();
            return;
        }
        // SAFETY: the caller guarantees the pages were mapped by `map` (so their frames came from
        // `frames`) and are no longer accessed. The unmap refuses a page that is not mapped, or
        // that waits to be unmapped already (it would be unmapped again when its run is
        // finished): a double unmap, refused as above.
        match unsafe { self.unmap_now(first, count, false, tables, frames) } {
            Ok(()) => self.mapped -= count,
            Err(UnmapError::NotMapped { page }) => {
                refuse_unmap(addr, count, MarkError::NotMapped { page })
            }
            Err(UnmapError::Marked { page }) => {
                refuse_unmap(addr, count, MarkError::Marked { page })
            }
            Err(error) => panic!("heap window: unmap_pages({addr:#x}, {count}): {error}"),
        }
    }

    /// Unmaps the `count` taken pages at window page `first` (which must carry the page tables'
    /// `MARKED` exactly if `marked`: a lazy run's pages; with no lazy run, no page has it and it
    /// is not looked at), frees their frames and gives the pages back to the buddy. On an error
    /// (a double unmap) the buddy is left as it was and the pages before the failing one are
    /// unmapped.
    ///
    /// # Safety
    ///
    /// The pages were mapped to frames of `frames` by this window, and nothing accesses them
    /// any more.
    unsafe fn unmap_now<T: Tlb>(
        &mut self,
        first: usize,
        count: usize,
        marked: bool,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), UnmapError> {
        let start = window_page(first);
        // SAFETY: guaranteed by the caller.
        unsafe {
            if marked || !self.lazy.is_empty() {
                tables.unmap_checked_run(start, count, marked, frames)
            } else {
                tables.unmap_fresh_run(start, count, frames)
            }
        }?;
        // Every page of the run was mapped (the unmap above fails on the first that is not), and
        // a window page is mapped exactly while the buddy has it taken: the buddy's own
        // double-free check could find nothing more.
        self.runs.free_taken(first, count);
        Ok(())
    }
}

// Moving runs (`mremap`): kept apart from `map`, `grow` and `unmap` above.
impl HeapWindow {
    /// Starts moving the run of `count` window pages at `addr` to a free run of `new_count`
    /// pages: the first `count` pages of the new run map the old run's frames (both runs show
    /// the same memory until [`finish_remap`](Self::finish_remap)), the rest fresh frames.
    /// Returns the new run, or `None` (nothing changed) for a run that is not mapped window
    /// pages, when `new_count < count`, and when address space or frames run out.
    #[cfg_attr(
        not(target_os = "none"),
        expect(
            dead_code,
            reason = "only the kernel's page source moves runs; tested in QEMU (tests/heap_remap.rs)"
        )
    )]
    pub(super) fn remap<T: Tlb>(
        &mut self,
        addr: u64,
        count: usize,
        new_count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Option<NonNull<u8>> {
        self.releasing_spares_if_short(tables, frames, |window, tables, frames| {
            window.remap_once(addr, count, new_count, tables, frames)
        })
        .ok()
    }

    /// [`remap`](Self::remap) without the release-and-retry.
    #[cfg_attr(
        not(target_os = "none"),
        expect(dead_code, reason = "used by `remap` only")
    )]
    fn remap_once<T: Tlb>(
        &mut self,
        addr: u64,
        count: usize,
        new_count: usize,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<NonNull<u8>, Shortage> {
        let in_window = (HEAP_WINDOW_START..HEAP_WINDOW_END).contains(&addr)
            && addr.is_multiple_of(PAGE)
            && count > 0
            && (count as u64) <= (HEAP_WINDOW_END - addr) / PAGE;
        if !in_window || new_count < count || new_count > HEAP_WINDOW_PAGES {
            return Err(Shortage::AddressSpace);
        }
        // A spare is mapped but not the heap's: a run holding one is not a run the heap has.
        let first = ((addr - HEAP_WINDOW_START) / PAGE) as usize;
        if self.spares.any_in(first, first + count).is_some() {
            return Err(Shortage::AddressSpace);
        }
        let extra = new_count - count;
        // As in `map_fresh`: a cheap early answer; the mapper checks pages and tables exactly.
        if frames.stats().free < extra as u64 {
            return Err(Shortage::Frames);
        }
        let first = self
            .take_run_at_block_end(new_count)
            .ok_or(Shortage::AddressSpace)?;
        let start = window_page(first);
        if extra > 0 {
            // SAFETY: the buddy just gave us these window pages, so none is mapped or
            // referenced; the window is reserved for exactly this use.
            match unsafe { tables.map_fresh_run(start + count as u64, extra, WINDOW_FLAGS, frames) }
            {
                Ok(()) => {}
                Err(MapError::OutOfFrames) => {
                    // Taken a moment ago: no double-free check needed.
                    self.runs.free_taken(first, new_count);
                    return Err(Shortage::Frames);
                }
                Err(error) => panic!(
                    "heap window: mapping {extra} pages at {:#x} to move a run failed: {error} \
                     (window bookkeeping disagrees with the page tables)",
                    (start + count as u64).start_address().as_u64()
                ),
            }
        }
        let from = Page::containing_address(VirtAddr::new(addr));
        // SAFETY: the destination was free in the buddy (reserved for us); the caller ends the
        // move with `finish_remap`, which unmaps one of the two runs before the caller relies
        // on the other.
        if let Err(error) = unsafe { tables.alias_run(from, start, count, frames) } {
            if extra > 0 {
                // SAFETY: the fresh pages mapped just above, seen by nobody.
                let undo = unsafe { tables.unmap_fresh_run(start + count as u64, extra, frames) };
                debug_assert!(
                    undo.is_ok(),
                    "undoing a remap's fresh pages failed: {undo:?}"
                );
            }
            // Taken a moment ago: no double-free check needed.
            self.runs.free_taken(first, new_count);
            return Err(match error {
                MoveError::Destination(MapError::OutOfFrames) => Shortage::Frames,
                _ => Shortage::AddressSpace,
            });
        }
        self.mapped += new_count;
        Ok(window_ptr(first))
    }

    /// Takes `count` window pages at the *end* of a free buddy block of
    /// `count.next_power_of_two()` pages (the block's head goes back to the buddy): the pages
    /// right after the run are then the start of the neighbouring block, of the same order or
    /// larger, which single-page requests leave alone while smaller blocks are free, so a run
    /// that keeps growing (a moved vector) finds them free; at the start of its block, the
    /// run would be followed by the block's small leftover pieces, the first ones single pages
    /// take.
    #[cfg_attr(
        not(target_os = "none"),
        expect(dead_code, reason = "used by `remap` only")
    )]
    fn take_run_at_block_end(&mut self, count: usize) -> Option<usize> {
        let block = count.checked_next_power_of_two()?;
        let first = self.runs.alloc(block)?;
        let head = block - count;
        if head > 0 {
            // Taken a moment ago with the block: no double-free check needed.
            self.runs.free_taken(first, head);
        }
        Some(first + head)
    }

    /// Ends a move [`remap`](Self::remap) started: with `keep_new`, unmaps the old run (its
    /// frames now belong to the new one) and frees its window pages; otherwise unmaps the new
    /// run (its fresh frames are freed, the aliased ones stay the old run's).
    ///
    /// # Panics
    ///
    /// If a run is not mapped as `remap` left it (the message names the address).
    ///
    /// # Safety
    ///
    /// The runs are the arguments and the result of a successful `remap` not finished yet, and
    /// nothing accesses the run that goes after this call.
    #[cfg_attr(
        not(target_os = "none"),
        expect(
            dead_code,
            reason = "only the kernel's page source moves runs; tested in QEMU (tests/heap_remap.rs)"
        )
    )]
    pub(super) unsafe fn finish_remap<T: Tlb>(
        &mut self,
        (old, count): (u64, usize),
        (new, new_count): (u64, usize),
        keep_new: bool,
        tables: &mut PageTables<T>,
        frames: &mut BitmapFrameAllocator,
    ) {
        let (gone, gone_count) = if keep_new {
            (old, count)
        } else {
            (new, new_count)
        };
        let start = Page::containing_address(VirtAddr::new(gone));
        // SAFETY: the caller's contract: both runs are mapped as `remap` left them and the one
        // that goes is no longer accessed; its first `count` pages share frames with the
        // other run, which keeps them, and the fresh tail of a new run that goes is ours.
        let result = unsafe {
            tables.unmap_alias_run(start, count, frames).and_then(|()| {
                tables.unmap_fresh_run(start + count as u64, gone_count - count, frames)
            })
        };
        if let Err(error) = result {
            panic!("heap window: finishing the move of the run at {old:#x} to {new:#x}: {error}");
        }
        // Every page of the run was just found mapped: no double-free check needed.
        self.runs
            .free_taken(((gone - HEAP_WINDOW_START) / PAGE) as usize, gone_count);
        self.mapped -= gone_count;
    }
}

/// The page with index `index` of the window.
/// Panics for an `unmap_pages(addr, count)` whose run holds a page that is not the heap's, naming
/// the page.
#[cold]
#[inline(never)]
#[track_caller]
fn refuse_unmap(addr: u64, count: usize, error: MarkError) -> ! {
    match error {
        MarkError::NotMapped { page } => panic!(
            "heap window: unmap_pages({addr:#x}, {count}): page {:#x} is not mapped for the heap \
             (unmapped twice?)",
            page.start_address().as_u64()
        ),
        MarkError::Marked { page } => panic!(
            "heap window: unmap_pages({addr:#x}, {count}): page {:#x} already waits to be \
             unmapped (unmapped twice?)",
            page.start_address().as_u64()
        ),
        MarkError::HugePage { .. } => {
            panic!("heap window: unmap_pages({addr:#x}, {count}): {error}")
        }
    }
}

fn window_page(index: usize) -> Page {
    Page::containing_address(VirtAddr::new(window_page_addr(index)))
}

/// The address of the page with index `index` of the window.
fn window_page_addr(index: usize) -> u64 {
    HEAP_WINDOW_START + index as u64 * PAGE
}

/// The page with index `index` of the window, as the pointer `map` returns.
fn window_ptr(index: usize) -> NonNull<u8> {
    // The window is in the higher half: its addresses are never null.
    NonNull::new(VirtAddr::new(window_page_addr(index)).as_mut_ptr::<u8>())
        .expect("heap window address is not null")
}
