//! Memory management below the heap: physical frames, page tables, and the heap window.
//!
//! ```text
//!   kheap (the heap)                      takes its own lock first, then calls ↓
//!        │  kheap::PageSource::map_pages / unmap_pages
//!   page_source::KernelPageSource        takes the memory lock, calls ↓
//!   heap_window::HeapWindow ──────── buddy::Buddy      which pages of the window   (pure)
//!        │                        ├─ spare_pages     ≤ 32 mapped pages held back  (pure)
//!        │                        ├─ page_reserve    ≤ 512 pages mapped ahead     (pure)
//!        │                        └─ lazy_unmaps     ≤ 32 runs waiting to unmap   (pure)
//!        │  map / unmap runs
//!   paging::PageTables                    4-level walker, frees empty tables   (pure + Tlb)
//!        │  frames for pages and tables
//!   frame::BitmapFrameAllocator           bump cursors + free stack + bitmap   (pure)
//!        │  built from
//!   regions::UsableRanges                 usable frames of the boot memory map (pure)
//! ```
//!
//! One layer talks only to the one below. The modules marked *pure* use no privileged
//! instructions: physical memory is reached through an offset (the bootloader maps all of it at
//! `physical_memory_offset`; the host tests use an arena) and TLB flushes go through a trait, so
//! their unit tests run on the host (`cargo test -p kernel-host`).
//!
//! # State and locking
//!
//! The frame allocator, the page tables and the window live together in one
//! `spin::Mutex<MemoryState>`, taken only through `with_memory`, which disables interrupts for
//! the duration (an interrupt handler that needed memory would otherwise spin forever on a lock
//! its own CPU holds). Lock order: the heap's lock, then this one — never the reverse; nothing in
//! this module allocates from the heap. With several CPUs the one lock makes frames, tables and
//! window safe to use from all of them; every unmap shoots down the other CPUs' TLB entries
//! before its frames are freed (`HardwareTlb`, `smp::shootdown`), by NMI, so a CPU spinning on
//! this lock or the heap's with interrupts off still answers. The state is all-zero until [`init`], so the static
//! (260 KiB, mostly the window's buddy bitmaps) lives in `.bss`.
//!
//! # Cost
//!
//! Frame allocation and free: O(1). Mapping or unmapping a run of `n` pages: O(n) plus O(1) per
//! page table touched, independent of how much else is mapped. The heap's unmaps of runs are
//! lazy (see [`heap_window`]): in its call, one page-table read and write per page; the unmap
//! itself in [`finish_unmaps`], outside the heap's calls. Init: O(regions²) plus zeroing
//! the frame bitmap (`frames / 8` bytes).
//!
//! See [`heap_window`] for the virtual memory layout.

pub mod bench_support;
pub mod buddy;
pub mod frame;
pub mod heap_window;
pub mod lazy_unmaps;
pub mod page_reserve;
pub mod page_source;
pub mod paging;
pub mod regions;
pub mod spare_pages;

use core::fmt;

use bootloader_api::BootInfo;
use bootloader_api::info::{MemoryRegion, MemoryRegionKind, MemoryRegions};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::registers::control::{Cr3, Efer, EferFlags};
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

pub use frame::{BitmapFrameAllocator, FrameInitError, FrameStats};
pub use heap_window::{
    HEAP_GUARD_PAGE, HEAP_GUARD_START, HEAP_SLOT_END, HEAP_SLOT_START, HEAP_WINDOW_END,
    HEAP_WINDOW_PAGES, HEAP_WINDOW_SIZE, HEAP_WINDOW_START, SCRATCH_KFENCE_PAGES, SCRATCH_SIZE,
    SCRATCH_START,
};
pub use page_source::KernelPageSource;
pub use paging::{MapError, TableAudit, UnmapError};
pub use regions::{Bytes, MapSummary};

use heap_window::HeapWindow;
use paging::{PageTables, Tlb};
use regions::{Region, RegionKind, UsableRanges};

/// Why [`init`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryInitError {
    /// The bootloader did not map physical memory (`BOOTLOADER_CONFIG.mappings.physical_memory`
    /// must be set): frames and page tables cannot be reached.
    NoPhysicalMemoryOffset,
    /// The memory map splits usable memory into more ranges than the allocator can track.
    TooManyRegions,
    /// The frame allocator could not be set up (no usable memory, or no room for its bitmap).
    Frames(FrameInitError),
    /// Something is already mapped in the PML4 slot reserved for the heap (the bootloader's
    /// `dynamic_range_end` must be at most [`HEAP_SLOT_START`]).
    HeapSlotInUse {
        /// Start of the reserved slot.
        slot: u64,
    },
    /// [`init`] was called before.
    AlreadyInitialized,
}

impl fmt::Display for MemoryInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPhysicalMemoryOffset => {
                f.write_str("the bootloader did not map physical memory (no offset)")
            }
            Self::TooManyRegions => {
                write!(f, "{}", regions::RegionError::TooManyRanges)
            }
            Self::Frames(e) => write!(f, "frame allocator: {e}"),
            Self::HeapSlotInUse { slot } => write!(
                f,
                "the heap's page-table slot at {slot:#x} is already in use (bootloader dynamic range too large?)"
            ),
            Self::AlreadyInitialized => f.write_str("memory is already initialized"),
        }
    }
}

/// How the other CPUs drop translations this CPU removed: installed by the layer that starts them
/// (`smp::shootdown`), before any other CPU runs, with [`set_remote_flush`]. The memory layer
/// sits below that layer and knows it only through these two functions; until they are
/// installed there is one CPU and nothing to tell.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFlush {
    /// Every other online CPU has dropped its translations of `count` pages from the first,
    /// when this returns.
    pub pages: fn(Page, u64),
    /// Every other online CPU has flushed its whole TLB and paging-structure caches, when this
    /// returns.
    pub all: fn(),
}

/// The installed [`RemoteFlush`] (none while only one CPU runs).
static REMOTE_FLUSH: spin::Once<RemoteFlush> = spin::Once::new();

/// Installs how other CPUs are asked to flush their TLBs (see [`RemoteFlush`]); the first call
/// wins. Must happen before a second CPU can cache translations of the heap window.
pub fn set_remote_flush(remote: RemoteFlush) {
    REMOTE_FLUSH.call_once(|| remote);
}

/// The kernel's TLB: `invlpg` and CR3 reloads on this CPU, then a shootdown on every other online
/// CPU (the installed [`RemoteFlush`]), which returns only when all have flushed too. The page
/// mapper calls it after clearing entries and before it frees their frames, inside the memory
/// lock, so no frame is reused while any CPU can still reach it.
#[derive(Debug, Clone, Copy)]
struct HardwareTlb;

impl Tlb for HardwareTlb {
    fn flush_page(&mut self, page: Page) {
        self.flush_range(page, 1);
    }
    fn flush_all(&mut self) {
        x86_64::instructions::tlb::flush_all();
        if let Some(remote) = REMOTE_FLUSH.get() {
            (remote.all)();
        }
    }
    fn flush_range(&mut self, start: Page, count: usize) {
        for i in 0..count as u64 {
            x86_64::instructions::tlb::flush((start + i).start_address());
        }
        if let Some(remote) = REMOTE_FLUSH.get() {
            (remote.pages)(start, count as u64);
        }
    }
}

/// All memory state, behind [`MEMORY`].
#[derive(Debug)]
struct MemoryState {
    /// Set by [`init`]; until then every part is empty and the tables must not be walked.
    ready: bool,
    frames: BitmapFrameAllocator,
    tables: PageTables<HardwareTlb>,
    window: HeapWindow,
}

impl MemoryState {
    /// The uninitialized state: all-zero, so the static costs no space in the kernel image.
    const EMPTY: Self = Self {
        ready: false,
        frames: BitmapFrameAllocator::empty(),
        tables: PageTables::empty(HardwareTlb),
        window: HeapWindow::empty(),
    };

    /// The window, tables and frames, borrowed separately; `None` before [`init`].
    fn parts(
        &mut self,
    ) -> Option<(
        &mut HeapWindow,
        &mut PageTables<HardwareTlb>,
        &mut BitmapFrameAllocator,
    )> {
        self.ready
            .then_some((&mut self.window, &mut self.tables, &mut self.frames))
    }

    /// The tables and frames for the mapping API, which must not run before [`init`].
    fn mapper(&mut self) -> (&mut PageTables<HardwareTlb>, &mut BitmapFrameAllocator) {
        assert!(self.ready, "memory: page mapping used before memory::init");
        (&mut self.tables, &mut self.frames)
    }
}

static MEMORY: Mutex<MemoryState> = Mutex::new(MemoryState::EMPTY);

/// Runs `f` on the memory state with the lock held and interrupts disabled.
fn with_memory<R>(f: impl FnOnce(&mut MemoryState) -> R) -> R {
    without_interrupts(|| f(&mut MEMORY.lock()))
}

/// A bootloader memory region in this module's terms.
fn region(r: &MemoryRegion) -> Region {
    let kind = match r.kind {
        MemoryRegionKind::Usable => RegionKind::Usable,
        MemoryRegionKind::Bootloader => RegionKind::Bootloader,
        MemoryRegionKind::UnknownBios(code) | MemoryRegionKind::UnknownUefi(code) => {
            RegionKind::Reserved(code)
        }
        // `MemoryRegionKind` is non-exhaustive: anything new is not ours to use.
        _ => RegionKind::Reserved(u32::MAX),
    };
    Region {
        start: r.start,
        end: r.end,
        kind,
    }
}

/// Sets up the frame allocator from the boot memory map, the page mapper over the active
/// tables, and the heap window. Prints nothing.
///
/// Also turns on no-execute support (EFER.NXE) if the bootloader has not, since heap pages are
/// mapped NO_EXECUTE.
///
/// # Errors
///
/// See [`MemoryInitError`].
pub fn init(boot_info: &BootInfo) -> Result<(), MemoryInitError> {
    let phys_offset = boot_info
        .physical_memory_offset
        .into_option()
        .ok_or(MemoryInitError::NoPhysicalMemoryOffset)?;
    let ranges = UsableRanges::from_regions(boot_info.memory_regions.iter().map(region))
        .map_err(|_| MemoryInitError::TooManyRegions)?;
    with_memory(|memory| {
        if memory.ready {
            return Err(MemoryInitError::AlreadyInitialized);
        }
        if !Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE) {
            // SAFETY: setting NXE only gives the NO_EXECUTE bit of page-table entries its meaning;
            // no active entry can have that bit set while NXE is off (it would be a reserved bit
            // and fault on use), so nothing that runs now stops being executable.
            unsafe { Efer::update(|flags| flags.insert(EferFlags::NO_EXECUTE_ENABLE)) };
        }
        let (root, _) = Cr3::read();
        // SAFETY: 1. CR3 holds the active PML4, which the bootloader built as a valid 4-level
        // hierarchy; 2. the bootloader maps all physical memory at `phys_offset`; 3. this is the
        // only mapper, and it lives behind the memory lock.
        let tables = unsafe { PageTables::new(phys_offset, root, HardwareTlb) };
        if !tables.top_slot_is_free(VirtAddr::new(HEAP_SLOT_START)) {
            return Err(MemoryInitError::HeapSlotInUse {
                slot: HEAP_SLOT_START,
            });
        }
        // SAFETY: 1. the ranges are the `Usable` frames of the boot memory map, which nothing
        // uses once the kernel runs (the bootloader marks its own allocations `Bootloader`), and
        // this is the only allocator built from them (`ready` was false); 2. all physical memory
        // is mapped at `phys_offset` for the kernel's lifetime.
        let frames = unsafe { BitmapFrameAllocator::new(phys_offset, ranges) }
            .map_err(MemoryInitError::Frames)?;
        memory.frames = frames;
        memory.tables = tables;
        memory.window.reset();
        memory.ready = true;
        // The heap's first calls find the reserve full, as later ones do after quiet calls.
        memory.fill_page_reserve();
        Ok(())
    })
}

/// The virtual address at which all physical memory is mapped, once [`init`] ran.
#[must_use]
pub fn physical_memory_offset() -> Option<VirtAddr> {
    with_memory(|m| m.ready.then(|| VirtAddr::new(m.frames.phys_offset())))
}

/// Summarizes a boot memory map for the boot report.
#[must_use]
pub fn memory_map_summary(regions: &MemoryRegions) -> MapSummary {
    MapSummary::of(regions.iter().map(region))
}

/// Takes one free physical frame (contents unspecified); `None` when memory is exhausted (after
/// the heap window's spare pages were released) or before [`init`].
#[must_use]
pub fn allocate_frame() -> Option<PhysFrame> {
    with_memory(|m| {
        m.frames
            .allocate()
            .or_else(|| m.allocate_frame_after_release())
    })
}

/// Unmaps the heap window's spare pages (mapped pages held for the heap's next single-page
/// requests, see [`spare_pages`]), the pages of its reserve (mapped ahead of need, see
/// [`page_reserve`]) and the runs waiting to be unmapped (see [`lazy_unmaps`]), and frees
/// their frames; returns how many there were. The
/// heap's [`trim`](crate::allocator::trim) calls it after giving its own empty pages back, and
/// every allocation here that runs out of frames calls it before it reports the shortage.
pub fn release_spare_pages() -> usize {
    with_memory(MemoryState::release_spare_pages)
}

/// Unmaps the runs of heap pages whose unmapping the heap's frees left waiting (see
/// [`lazy_unmaps`]), frees their frames and gives their pages back to the window, and returns
/// how many pages. For outside the heap's calls: an idle CPU does it (`smp`'s idle loop), and
/// a kernel may call it at any quiet moment. It works in steps of at most
/// [`LAZY_STEP`](lazy_unmaps::LAZY_STEP) pages, each under the memory lock with interrupts
/// off, so interrupts wait at most one step's unmap, never the whole list.
pub fn finish_unmaps() -> usize {
    let mut pages = 0;
    loop {
        let step = with_memory(|m| match m.parts() {
            Some((window, tables, frames)) => window.finish_unmaps(tables, frames),
            None => 0,
        });
        if step == 0 {
            return pages;
        }
        pages += step;
    }
}

/// Whether runs wait for [`finish_unmaps`] (one relaxed atomic load, no lock: an idle loop's
/// check).
#[must_use]
pub fn unmaps_waiting() -> bool {
    heap_window::unmaps_waiting()
}

/// Fills the heap window's page reserve (pages mapped ahead of the heap's multi-page requests,
/// see [`page_reserve`]) up to its target, and returns how many pages it mapped (0 before
/// [`init`], when it is full, or when fewer than
/// [`PREPARE_MIN_FREE_FRAMES`](heap_window::PREPARE_MIN_FREE_FRAMES) frames are free).
///
/// [`init`] fills it. Quiet heap calls refill it a page at a time, and [`release_spare_pages`]
/// (so [`trim`](crate::allocator::trim)) empties it: a kernel that trims and then expects a
/// burst of allocations calls this first, so that the burst's calls take their runs from the
/// reserve instead of mapping them (up to [`RESERVE_TARGET`](page_reserve::RESERVE_TARGET)
/// page mappings in this one call, with the memory lock held).
pub fn fill_page_reserve() -> usize {
    with_memory(MemoryState::fill_page_reserve)
}

/// Gives a frame back to the frame allocator.
///
/// # Panics
///
/// If the frame is not allocated (double free) or not usable memory; the message names it.
///
/// # Safety
///
/// The frame must have come from [`allocate_frame`] and must no longer be used or mapped.
pub unsafe fn deallocate_frame(frame: PhysFrame) {
    // SAFETY: the caller's contract is the allocator's.
    with_memory(|m| unsafe { m.frames.deallocate(frame) });
}

/// Whether `page` lies in the reserved heap slot but outside the scratch area.
fn reserved(page: Page) -> bool {
    let addr = page.start_address().as_u64();
    (HEAP_SLOT_START..HEAP_SLOT_END).contains(&addr)
        && !(SCRATCH_START..SCRATCH_START + SCRATCH_SIZE).contains(&addr)
}

/// Maps `page` to `frame` with `flags` (PRESENT added) in the active page tables.
///
/// # Errors
///
/// [`MapError::AlreadyMapped`], [`MapError::OutOfFrames`] (no frame for a page table),
/// [`MapError::HugePageInTheWay`], [`MapError::InvalidFlags`], and
/// [`MapError::ReservedRange`] for pages of the heap window and its guard. Nothing changes on
/// error.
///
/// # Panics
///
/// If called before [`init`].
///
/// # Safety
///
/// The new mapping must not break memory safety: `frame` must not be memory something else
/// owns (use a frame from [`allocate_frame`]), and nothing may rely on `page` being unmapped.
pub unsafe fn map(page: Page, frame: PhysFrame, flags: PageTableFlags) -> Result<(), MapError> {
    if reserved(page) {
        return Err(MapError::ReservedRange);
    }
    with_memory(|m| {
        let (tables, frames) = m.mapper();
        // SAFETY: the caller vouches for the mapping.
        match unsafe { tables.map(page, frame, flags, frames) } {
            // SAFETY: as above; the failed call changed nothing.
            Err(MapError::OutOfFrames) => unsafe { m.map_after_release(page, frame, flags) },
            result => result,
        }
    })
}

/// Unmaps `page`, flushes its TLB entry and returns the frame it mapped (not freed: give it back
/// with [`deallocate_frame`] if it came from [`allocate_frame`]). Page tables left empty are
/// freed.
///
/// # Errors
///
/// [`UnmapError::NotMapped`], [`UnmapError::HugePage`], [`UnmapError::ReservedRange`] for the
/// heap window (unmap heap pages through the page source).
///
/// # Panics
///
/// If called before [`init`].
///
/// # Safety
///
/// Nothing may access the page afterwards.
pub unsafe fn unmap(page: Page) -> Result<PhysFrame, UnmapError> {
    if reserved(page) {
        return Err(UnmapError::ReservedRange);
    }
    with_memory(|m| {
        let (tables, frames) = m.mapper();
        // SAFETY: the caller guarantees nothing accesses the page any more.
        unsafe { tables.unmap(page, frames) }
    })
}

/// The physical address `addr` maps to in the active tables (4 KiB, 2 MiB and 1 GiB pages).
///
/// # Panics
///
/// If called before [`init`].
#[must_use]
pub fn translate(addr: VirtAddr) -> Option<PhysAddr> {
    with_memory(|m| m.mapper().0.translate(addr))
}

/// Counters of all memory layers, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Usable 4 KiB frames in the boot memory map.
    pub frames_total: u64,
    /// Frames that can still be allocated.
    pub frames_free: u64,
    /// `frames_total - frames_free`: everything handed out, page tables and the bitmap included.
    pub frames_used: u64,
    /// Frames holding the frame allocator's bitmap (part of `frames_used`).
    pub bitmap_frames: u64,
    /// Page-table frames allocated by the mapper and still in use (part of `frames_used`).
    pub page_table_frames: u64,
    /// First address of the heap window.
    pub window_start: u64,
    /// Pages in the heap window.
    pub window_pages: u64,
    /// Pages of the heap window currently mapped and handed to the heap (spares not included).
    pub window_pages_mapped: u64,
    /// Pages of the heap window mapped but not the heap's: the spares (see [`spare_pages`]),
    /// the page reserve's (`window_pages_reserved`) and those waiting to be unmapped
    /// (`window_pages_lazy`). Each holds a frame (counted in `frames_used`) until the heap takes
    /// it or [`release_spare_pages`] (or, for the lazy ones, [`finish_unmaps`]) unmaps it.
    pub window_pages_spare: u64,
    /// Of `window_pages_spare`, the pages mapped ahead of need in the window's page reserve
    /// (see [`page_reserve`]), which a `map_pages` of several pages takes without page-table
    /// work.
    pub window_pages_reserved: u64,
    /// Of `window_pages_spare`, the pages the heap gave back whose unmapping waits (see
    /// [`lazy_unmaps`]) for [`finish_unmaps`].
    pub window_pages_lazy: u64,
    /// The largest run one `map_pages` call can get now, in pages.
    pub window_largest_free_run: u64,
}

impl fmt::Display for MemoryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = |frames: u64| Bytes(frames * regions::FRAME_SIZE);
        writeln!(
            f,
            "physical frames: {} total ({}), {} free ({}), {} used ({})",
            self.frames_total,
            bytes(self.frames_total),
            self.frames_free,
            bytes(self.frames_free),
            self.frames_used,
            bytes(self.frames_used)
        )?;
        writeln!(
            f,
            "  used includes {} bitmap and {} page-table frames",
            self.bitmap_frames, self.page_table_frames
        )?;
        write!(
            f,
            "heap window {:#x}..{:#x}: {} of {} pages mapped ({} of {}), {} spare, largest free run {} pages",
            self.window_start,
            self.window_start + self.window_pages * regions::FRAME_SIZE,
            self.window_pages_mapped,
            self.window_pages,
            bytes(self.window_pages_mapped),
            bytes(self.window_pages),
            self.window_pages_spare,
            self.window_largest_free_run
        )
    }
}

/// Walks the memory layer's bookkeeping and panics, naming the broken rule, if it is
/// inconsistent: the window's buddy bitmaps and counters, mapped pages against taken pages,
/// frame counts against what the window and the page tables hold, and the page tables
/// themselves ([`page_table_audit`]: exactly the mapper's count of tables linked, none empty).
/// Linear in the window size: for tests and debugging, not for hot paths.
pub fn check_invariants() {
    with_memory(|m| {
        if !m.ready {
            return;
        }
        m.window.check_invariants(&m.tables);
        let audit = m.tables.audit(&m.frames);
        assert!(
            audit.is_exact(m.tables.table_frames()),
            "memory: page tables: {audit}, but the mapper counts {} (a leaked, lost or miscounted table)",
            m.tables.table_frames()
        );
        let s = m.stats();
        assert_eq!(
            s.frames_total,
            s.frames_free + s.frames_used,
            "memory: frame counts"
        );
        assert!(
            s.frames_used
                >= s.bitmap_frames
                    + s.page_table_frames
                    + s.window_pages_mapped
                    + s.window_pages_spare,
            "memory: fewer frames used than the bitmap, page tables, heap pages and spares hold"
        );
    });
}

/// Walks the page tables and counts the mapper's own tables linked in them, and the empty ones
/// among them ([`TableAudit`]). Every footprint check compares it with
/// [`MemoryStats::page_table_frames`]: equal, and no empty table, means that every page-table
/// frame in use holds a mapping (none leaked, none lost). A default (all-zero) audit before
/// [`init`].
#[must_use]
pub fn page_table_audit() -> TableAudit {
    with_memory(|m| {
        if m.ready {
            m.tables.audit(&m.frames)
        } else {
            TableAudit::default()
        }
    })
}

/// A snapshot of all memory counters (all zero but the window's geometry before [`init`]).
#[must_use]
pub fn stats() -> MemoryStats {
    with_memory(|m| m.stats())
}

/// Like [`stats`], but `None` instead of waiting if the memory lock is held — for panic and
/// fault paths, which may run while this CPU holds the lock (waiting would hang forever).
#[must_use]
pub fn try_stats() -> Option<MemoryStats> {
    without_interrupts(|| MEMORY.try_lock().map(|m| m.stats()))
}

impl MemoryState {
    /// The frame allocator ran dry: releases the window's spares and tries once more. (Out of
    /// line: the common path stays as short as it was.)
    #[cold]
    #[inline(never)]
    fn allocate_frame_after_release(&mut self) -> Option<PhysFrame> {
        (self.release_spare_pages() > 0)
            .then(|| self.frames.allocate())
            .flatten()
    }

    /// [`map`] ran out of frames (for a page table): releases the window's spares and tries
    /// once more. (Out of line, as above.)
    ///
    /// # Safety
    ///
    /// As [`map`]'s.
    #[cold]
    #[inline(never)]
    unsafe fn map_after_release(
        &mut self,
        page: Page,
        frame: PhysFrame,
        flags: PageTableFlags,
    ) -> Result<(), MapError> {
        if self.release_spare_pages() == 0 {
            return Err(MapError::OutOfFrames);
        }
        let (tables, frames) = self.mapper();
        // SAFETY: the caller's contract is `map`'s.
        unsafe { tables.map(page, frame, flags, frames) }
    }

    /// [`fill_page_reserve`] with the lock held (0 before [`init`]).
    fn fill_page_reserve(&mut self) -> usize {
        match self.parts() {
            Some((window, tables, frames)) => window.fill_reserve(tables, frames),
            None => 0,
        }
    }

    /// [`release_spare_pages`] with the lock held (0 before [`init`]).
    fn release_spare_pages(&mut self) -> usize {
        match self.parts() {
            Some((window, tables, frames)) => window.release_spares(tables, frames),
            None => 0,
        }
    }

    fn stats(&self) -> MemoryStats {
        let frames = self.frames.stats();
        MemoryStats {
            frames_total: frames.total,
            frames_free: frames.free,
            frames_used: frames.used,
            bitmap_frames: frames.bitmap,
            page_table_frames: self.tables.table_frames(),
            window_start: HEAP_WINDOW_START,
            window_pages: HEAP_WINDOW_PAGES as u64,
            window_pages_mapped: self.window.mapped() as u64,
            window_pages_spare: (self.window.spare() + self.window.reserved() + self.window.lazy())
                as u64,
            window_pages_reserved: self.window.reserved() as u64,
            window_pages_lazy: self.window.lazy() as u64,
            window_largest_free_run: self.window.largest_free_run() as u64,
        }
    }
}
