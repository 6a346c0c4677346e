//! A simulated machine for host tests and fuzzing: the kernel's frame allocator, page-table
//! walker and heap window, unchanged, over a block of host memory standing for physical RAM.
//!
//! ```text
//!   physical  BASE            BASE + 0x1000        BASE + 0x2000 …
//!             [ root (PML4) ][ "bootloader" PDPT ][ usable frames (the frame allocator's) ]
//!   root slot 0 → that PDPT (as if the bootloader had mapped something in the lowest 512 GiB);
//!   the heap window is where the kernel puts it (PML4 slot 384), tables made on demand.
//! ```
//!
//! [`Machine`] keeps its own account of every frame it handed to someone (window pages, pages of
//! raw runs, frames it holds back to make memory scarce), so [`Machine::check`] can demand an
//! exact frame count: used frames = the allocator's bitmap + the mapper's tables + those. With
//! [`PageTables::audit`] (no linked table of the mapper is empty, their number is the mapper's
//! count) a leaked page-table frame cannot go unnoticed. [`Machine::snapshot`] reads every entry
//! of every table (with its own walker, not the mapper's), to check that a failed call changed
//! nothing.
//!
//! Virtual addresses are only ever page-table indices here: nothing is mapped into the host's
//! address space, so the pages of a run cannot be written to.

extern crate alloc;

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::{fmt, ptr};

use kheap::source::PageSourceError;
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::frame::{BitmapFrameAllocator, FrameStats};
use crate::heap_window::HeapWindow;
use crate::paging::{MapError, PageTables, TableAudit, Tlb, UnmapError};
use crate::regions::{Region, RegionKind, UsableRanges};

/// Simulated physical memory: `len` bytes of host memory standing for physical addresses
/// `base .. base + len`, zeroed.
#[derive(Debug)]
pub struct PhysArena {
    ptr: *mut u8,
    layout: Layout,
    base: u64,
}

impl PhysArena {
    /// `len` zeroed bytes (a multiple of 4096) standing for physical memory from `base`.
    ///
    /// # Panics
    ///
    /// If `len` is zero or the host is out of memory.
    #[must_use]
    pub fn new(base: u64, len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).expect("arena layout");
        assert!(len > 0, "empty arena");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "host out of memory for the arena");
        Self { ptr, layout, base }
    }

    /// The `phys_offset` under which physical address `p` is at `ptr + (p - base)`.
    #[must_use]
    pub fn offset(&self) -> u64 {
        (self.ptr.expose_provenance() as u64).wrapping_sub(self.base)
    }

    /// The first physical address past the arena.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.base + self.layout.size() as u64
    }

    /// The host address of the arena's first byte.
    #[must_use]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for PhysArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A TLB that records the flushes it is asked for.
#[derive(Debug, Default)]
pub struct TlbLog {
    /// Pages flushed one by one, in order.
    pub pages: Vec<u64>,
    /// Full flushes.
    pub all: usize,
}

impl Tlb for TlbLog {
    fn flush_page(&mut self, page: Page) {
        self.pages.push(page.start_address().as_u64());
    }
    fn flush_all(&mut self) {
        self.all += 1;
    }
}

/// Physical address of the simulated root table (the first frame of the arena).
pub const BASE: u64 = 0x10_0000;

/// Flags of raw runs ([`Machine::map_run`]): kernel data.
const RUN_FLAGS: PageTableFlags = PageTableFlags::WRITABLE.union(PageTableFlags::NO_EXECUTE);

/// Every page-table entry in use, as `(table's physical address, index, raw entry)`, in walk
/// order, plus the counters: equal snapshots mean equal page tables and equal frame counts.
/// (Its `Debug` prints the counters and the number of entries, not every entry.)
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Free frames.
    pub free_frames: u64,
    /// The mapper's count of its tables.
    pub table_frames: u64,
    /// Heap-window pages mapped and handed out.
    pub window_mapped: usize,
    /// Heap-window pages mapped but not the heap's that a call short of frames releases: the
    /// spares and the runs waiting to be unmapped (lazy unmaps).
    pub window_spare: usize,
    /// The largest run the window's buddy can hand out.
    pub window_largest_run: usize,
    /// Every entry in use in every reachable table.
    pub entries: Vec<(u64, u16, u64)>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A cheap fingerprint of the entries, so that two different tables rarely print alike.
        let fingerprint = self.entries.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, e| {
            (h ^ e.0 ^ (u64::from(e.1) << 52) ^ e.2).wrapping_mul(0x0100_0000_01b3)
        });
        f.debug_struct("Snapshot")
            .field("free_frames", &self.free_frames)
            .field("table_frames", &self.table_frames)
            .field("window_mapped", &self.window_mapped)
            .field("window_spare", &self.window_spare)
            .field("window_largest_run", &self.window_largest_run)
            .field("entries", &self.entries.len())
            .field("fingerprint", &format_args!("{fingerprint:#018x}"))
            .finish()
    }
}

/// The bare simulated machine: `usable_frames` frames of RAM (one becomes the frame allocator's
/// bitmap) after a root table at [`BASE`] and a "bootloader" PDPT at `BASE + 0x1000`, linked from
/// root slot 0 (as if the bootloader had mapped something in the lowest 512 GiB); a frame
/// allocator over the usable frames and a mapper over the tables, with `tlb`.
///
/// The allocator and the mapper point into the arena: keep it alive while they are used.
///
/// # Panics
///
/// If `usable_frames` is zero.
pub fn boot<T: Tlb>(
    usable_frames: u64,
    tlb: T,
) -> (PhysArena, BitmapFrameAllocator, PageTables<T>) {
    let len = (usable_frames + 2) * 0x1000;
    let arena = PhysArena::new(BASE, len as usize);
    let map = [
        Region {
            start: BASE,
            end: BASE + 0x2000,
            kind: RegionKind::Bootloader,
        },
        Region {
            start: BASE + 0x2000,
            end: BASE + len,
            kind: RegionKind::Usable,
        },
    ];
    let ranges = UsableRanges::from_regions(map.iter().copied()).expect("one range");
    // SAFETY: the arena backs the whole map and is used by nothing else; the caller keeps it
    // alive while the allocator is used.
    let frames =
        unsafe { BitmapFrameAllocator::new(arena.offset(), ranges) }.expect("the bitmap fits");
    // Root slot 0 → the "bootloader" PDPT at BASE + 0x1000 (both zeroed by the arena).
    let link = (BASE + 0x1000) | (PageTableFlags::PRESENT | PageTableFlags::WRITABLE).bits();
    // SAFETY: the root table is the arena's first 4 KiB, which is 4096-aligned.
    unsafe { arena.as_mut_ptr().cast::<u64>().write(link) };
    let root = PhysFrame::containing_address(PhysAddr::new(BASE));
    // SAFETY: 1. the root is a valid (zeroed but for slot 0, which links a zeroed PDPT)
    // hierarchy; 2. all of the simulated physical memory is at `arena.offset()`; 3. this mapper
    // is the only one over these tables.
    let tables = unsafe { PageTables::new(arena.offset(), root, tlb) };
    (arena, frames, tables)
}

/// The simulated machine (see the module docs).
#[derive(Debug)]
pub struct Machine {
    frames: BitmapFrameAllocator,
    tables: PageTables<TlbLog>,
    window: Box<HeapWindow>,
    /// Frames taken out of circulation by [`set_free_frames`](Self::set_free_frames).
    hoard: Vec<PhysFrame>,
    /// Pages mapped by [`map_run`](Self::map_run), by address.
    raw_pages: BTreeSet<u64>,
    /// Declared last: dropped after everything that points into it.
    arena: PhysArena,
}

impl Machine {
    /// A machine with `usable_frames` frames of usable RAM (one of them becomes the frame
    /// allocator's bitmap), an empty heap window and no page mapped but the "bootloader" PDPT.
    ///
    /// # Panics
    ///
    /// If `usable_frames` is zero.
    #[must_use]
    pub fn new(usable_frames: u64) -> Self {
        let (arena, frames, tables) = boot(usable_frames, TlbLog::default());
        // 260 KiB, as in the kernel's `static` (built on the stack first: fine for the host).
        let mut window = Box::new(HeapWindow::empty());
        window.reset();
        Self {
            frames,
            tables,
            window,
            hoard: Vec::new(),
            raw_pages: BTreeSet::new(),
            arena,
        }
    }

    /// The frame allocator's counts.
    #[must_use]
    pub fn frame_stats(&self) -> FrameStats {
        self.frames.stats()
    }

    /// The mapper's count of its page-table frames.
    #[must_use]
    pub fn table_frames(&self) -> u64 {
        self.tables.table_frames()
    }

    /// Heap-window pages mapped and handed out (spares not included).
    #[must_use]
    pub fn window_mapped(&self) -> usize {
        self.window.mapped()
    }

    /// Heap-window pages mapped and held as spares.
    #[must_use]
    pub fn window_spare(&self) -> usize {
        self.window.spare()
    }

    /// Heap-window pages mapped ahead of need in the page reserve.
    #[must_use]
    pub fn window_reserved(&self) -> usize {
        self.window.reserved()
    }

    /// Heap-window pages the heap gave back that wait to be unmapped (lazy unmaps).
    #[must_use]
    pub fn window_lazy(&self) -> usize {
        self.window.lazy()
    }

    /// The kernel's `memory::finish_unmaps`, all steps in one go: unmaps the runs that wait;
    /// how many pages.
    pub fn finish_unmaps(&mut self) -> usize {
        let mut pages = 0;
        loop {
            let step = self
                .window
                .finish_unmaps(&mut self.tables, &mut self.frames);
            if step == 0 {
                return pages;
            }
            pages += step;
        }
    }

    /// One step of [`finish_unmaps`](Self::finish_unmaps) (at most `LAZY_STEP` pages); how
    /// many pages.
    pub fn finish_unmaps_step(&mut self) -> usize {
        self.window
            .finish_unmaps(&mut self.tables, &mut self.frames)
    }

    /// The kernel page source's `wants_prepare`: whether the reserve is below its target.
    #[must_use]
    pub fn wants_prepare(&self) -> bool {
        self.window.wants_prepare()
    }

    /// The kernel page source's `prepare`: maps one page into the reserve; whether it did.
    pub fn prepare(&mut self) -> bool {
        self.window.prepare(&mut self.tables, &mut self.frames)
    }

    /// The kernel's `memory::fill_page_reserve`: fills the reserve to its target in one call;
    /// how many pages it mapped.
    pub fn fill_reserve(&mut self) -> usize {
        self.window.fill_reserve(&mut self.tables, &mut self.frames)
    }

    /// The kernel's `memory::release_spare_pages`: unmaps the window's spare pages and frees
    /// their frames; how many there were.
    pub fn release_spare_pages(&mut self) -> usize {
        self.window
            .release_spares(&mut self.tables, &mut self.frames)
    }

    /// The flushes recorded so far.
    #[must_use]
    pub fn tlb(&self) -> &TlbLog {
        self.tables.tlb()
    }

    /// Forgets the recorded flushes.
    pub fn clear_tlb(&mut self) {
        let tlb = self.tables.tlb_mut();
        tlb.pages.clear();
        tlb.all = 0;
    }

    /// Pages mapped by raw runs.
    #[must_use]
    pub fn raw_pages(&self) -> &BTreeSet<u64> {
        &self.raw_pages
    }

    /// The physical address `addr` translates to.
    #[must_use]
    pub fn translate(&self, addr: u64) -> Option<u64> {
        self.tables
            .translate(VirtAddr::new(addr))
            .map(PhysAddr::as_u64)
    }

    /// The kernel page source's `map_pages(count)`: maps `count` fresh pages in the heap window
    /// and returns the address of the first.
    ///
    /// # Errors
    ///
    /// As the kernel's: `InvalidRequest` (0 pages), `OutOfAddressSpace`, `OutOfMemory`.
    pub fn map_pages(&mut self, count: usize) -> Result<u64, PageSourceError> {
        self.window
            .map(count, &mut self.tables, &mut self.frames)
            .map(|p| p.as_ptr() as u64)
    }

    /// The kernel page source's `map_pages_aligned(count, align, aligned_page)`: maps `count`
    /// fresh pages whose page `aligned_page` starts at a multiple of `align`, reserving (not
    /// mapping) the slack, and returns the address of the first.
    ///
    /// # Errors
    ///
    /// As the kernel's: `InvalidRequest`, `OutOfAddressSpace`, `OutOfMemory`.
    pub fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<u64, PageSourceError> {
        self.window
            .map_aligned(
                count,
                align,
                aligned_page,
                &mut self.tables,
                &mut self.frames,
            )
            .map(|p| p.as_ptr() as u64)
    }

    /// The kernel page source's `grow_pages`: maps the `extra` window pages after the `count`
    /// pages at `addr` if they are free; whether it did.
    pub fn grow_pages(&mut self, addr: u64, count: usize, extra: usize) -> bool {
        self.window
            .grow(addr, count, extra, &mut self.tables, &mut self.frames)
    }

    /// The kernel page source's `unmap_pages`.
    ///
    /// # Panics
    ///
    /// As the kernel's, if the run is not mapped in the window.
    pub fn unmap_pages(&mut self, addr: u64, count: usize) {
        // SAFETY: the window's pages are only page-table entries here: nothing can access them.
        unsafe {
            self.window
                .unmap(addr, count, &mut self.tables, &mut self.frames)
        };
    }

    /// The mapper's `map_fresh_run` outside the window: `count` pages from `start` to fresh
    /// frames.
    ///
    /// # Errors
    ///
    /// The mapper's; then nothing changed.
    ///
    /// # Panics
    ///
    /// If `start` is not a page-aligned canonical address, or the run leaves its half of the
    /// address space.
    pub fn map_run(&mut self, start: u64, count: usize) -> Result<(), MapError> {
        let first = page(start);
        // SAFETY: simulated tables: nothing relies on any page being unmapped.
        unsafe {
            self.tables
                .map_fresh_run(first, count, RUN_FLAGS, &mut self.frames)
        }?;
        for i in 0..count as u64 {
            self.raw_pages.insert(start + i * 4096);
        }
        Ok(())
    }

    /// The mapper's `unmap_fresh_run` of pages mapped by [`map_run`](Self::map_run).
    ///
    /// # Errors
    ///
    /// The mapper's: `NotMapped` names the first page not mapped (the pages before it are
    /// unmapped).
    ///
    /// # Panics
    ///
    /// If a page of the run is mapped but not by `map_run` (its frame would be freed to an
    /// allocator it did not come from, in the harness's books).
    pub fn unmap_run(&mut self, start: u64, count: usize) -> Result<(), UnmapError> {
        for i in 0..count as u64 {
            let addr = start + i * 4096;
            if !self.raw_pages.contains(&addr) {
                assert!(
                    self.translate(addr).is_none(),
                    "unmap_run over page {addr:#x}, which a raw run did not map"
                );
                break;
            }
        }
        // SAFETY: the pages up to the first unmapped one were mapped by `map_run` to frames of
        // this allocator (checked above); simulated memory: nothing accesses them.
        let result = unsafe {
            self.tables
                .unmap_fresh_run(page(start), count, &mut self.frames)
        };
        let done = match result {
            Ok(()) => count as u64,
            Err(
                UnmapError::NotMapped { page }
                | UnmapError::Marked { page }
                | UnmapError::NotMarked { page },
            ) => (page.start_address().as_u64() - start) / 4096,
            Err(UnmapError::HugePage | UnmapError::ReservedRange) => 0,
        };
        for i in 0..done {
            self.raw_pages.remove(&(start + i * 4096));
        }
        result
    }

    /// Takes frames out of circulation, or gives back ones taken before, until exactly `free`
    /// frames are free (or as close as possible). Lets a test or fuzz input choose the point at
    /// which a call runs out of memory.
    pub fn set_free_frames(&mut self, free: u64) {
        while self.frames.stats().free > free {
            match self.frames.allocate() {
                Some(frame) => self.hoard.push(frame),
                None => break,
            }
        }
        while self.frames.stats().free < free {
            let Some(frame) = self.hoard.pop() else { break };
            // SAFETY: the frame came from this allocator and nothing uses it.
            unsafe { self.frames.deallocate(frame) };
        }
    }

    /// Gives back every frame [`set_free_frames`](Self::set_free_frames) took.
    pub fn release_hoard(&mut self) {
        self.set_free_frames(u64::MAX);
    }

    /// The mapper's audit of its tables.
    #[must_use]
    pub fn audit(&self) -> TableAudit {
        self.tables.audit(&self.frames)
    }

    /// Checks the exact accounting (cheap, no window walk): the mapper's tables are all linked
    /// and non-empty, and every used frame is the bitmap's, a table, a window page, a spare,
    /// a reserve page, a page waiting to be unmapped, a raw page or a held-back frame. Panics
    /// naming the broken rule.
    pub fn check(&self) {
        let audit = self.audit();
        assert!(
            audit.is_exact(self.tables.table_frames()),
            "page tables: {audit}, the mapper counts {}",
            self.tables.table_frames()
        );
        let s = self.frames.stats();
        let accounted = s.bitmap
            + self.tables.table_frames()
            + self.window.mapped() as u64
            + self.window.spare() as u64
            + self.window.reserved() as u64
            + self.window.lazy() as u64
            + self.raw_pages.len() as u64
            + self.hoard.len() as u64;
        assert_eq!(
            s.used,
            accounted,
            "frames: {} used, but bitmap {} + tables {} + window pages {} + spares {} + reserve {} + lazy {} + raw pages {} + held {}",
            s.used,
            s.bitmap,
            self.tables.table_frames(),
            self.window.mapped(),
            self.window.spare(),
            self.window.reserved(),
            self.window.lazy(),
            self.raw_pages.len(),
            self.hoard.len()
        );
    }

    /// [`check`](Self::check) plus the window's own invariants (linear in the window's 2^20
    /// pages: a few milliseconds).
    pub fn check_all(&self) {
        self.check();
        self.window.check_invariants(&self.tables);
    }

    /// Every entry in use in every table reachable from the root, and the counters.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut entries = Vec::new();
        self.collect(BASE, 4, &mut entries);
        Snapshot {
            free_frames: self.frames.stats().free,
            table_frames: self.tables.table_frames(),
            window_mapped: self.window.mapped(),
            window_spare: self.window.spare() + self.window.lazy(),
            window_largest_run: self.window.largest_free_run(),
            entries,
        }
    }

    /// Appends the entries in use of the table at physical `table` (at `level`, 4 = PML4) and
    /// of the tables below it.
    fn collect(&self, table: u64, level: u32, out: &mut Vec<(u64, u16, u64)>) {
        assert!(
            (BASE..self.arena.end()).contains(&table),
            "table {table:#x} outside the simulated memory"
        );
        let base = self
            .arena
            .as_mut_ptr()
            .wrapping_add((table - BASE) as usize);
        for index in 0..512u16 {
            // SAFETY: `table` is a frame inside the arena (checked above), 4 KiB long and
            // aligned; entries are 8 bytes.
            let raw = unsafe { ptr::read(base.cast::<u64>().add(usize::from(index))) };
            if raw == 0 {
                continue;
            }
            out.push((table, index, raw));
            let flags = PageTableFlags::from_bits_truncate(raw);
            if level > 1
                && flags.contains(PageTableFlags::PRESENT)
                && !(level < 4 && flags.contains(PageTableFlags::HUGE_PAGE))
            {
                self.collect(raw & 0x000F_FFFF_FFFF_F000, level - 1, out);
            }
        }
    }
}

/// The page at `addr`.
///
/// # Panics
///
/// If `addr` is not canonical.
fn page(addr: u64) -> Page {
    Page::containing_address(VirtAddr::new(addr))
}
