//! The page mapper: a walker over the active 4-level page tables, reached through the
//! bootloader's mapping of all physical memory.
//!
//! ```text
//!   virtual address  [ sign | p4 (9) | p3 (9) | p2 (9) | p1 (9) | offset (12) ]
//!   CR3 → PML4 ──p4──▶ PDPT ──p3──▶ PD ──p2──▶ PT ──p1──▶ 4 KiB frame
//!   every table is one frame, read and written at `phys_offset + its physical address`
//! ```
//!
//! Why not `x86_64::OffsetPageTable`: that mapper never gives page-table frames back, so a heap
//! that grows and shrinks would leak them. This walker
//!
//! * creates missing tables from the [`BitmapFrameAllocator`] while mapping; a run of fresh pages
//!   counts the frames it needs for pages *and* tables before it changes anything, and any other
//!   failure removes what the call mapped and the tables it made (a failed map changes nothing);
//! * after unmapping, frees every table left empty (PT, then PD, then PDPT; never the PML4), but
//!   only tables that the frame allocator handed out — the bootloader's own tables stay. Whether
//!   a table is empty is one read, not a scan: the entry that links a table this mapper made is
//!   marked [`OWNED`] and carries, in bits 52..=61 (ignored by the MMU in entries that link a
//!   table), how many entries of that table are in use ([`used_entries`]). Every change to an
//!   owned table updates it, and [`PageTables::audit`] checks it against a scan;
//! * flushes the TLB before any frame that a stale translation or paging-structure cache entry
//!   could still point to is reused, and reports exhaustion as an error, never a panic.
//!
//! Runs are processed one page table at a time: one walk per 512 pages, one count update and one
//! emptiness test per table touched, and one flush decision per table (`invlpg` per page for
//! short runs, a CR3 reload for long ones). A run inside one existing page table is mapped after
//! a single walk (the frames it takes are then just its pages). Cost: O(pages in the run),
//! independent of how much is mapped elsewhere, with no O(512) step.
//!
//! Nothing here zeroes the frames of pages (the heap's `alloc_zeroed` zeroes what it hands
//! out); page tables are zeroed when they are made.
//!
//! TLB maintenance goes through the [`Tlb`] trait so that this module is pure logic: the kernel
//! plugs in `invlpg`/CR3 reloads, the host tests a recorder (`cargo test -p kernel-host`).

use core::fmt;
use core::ptr;

use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{Page, PageTableFlags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use super::frame::BitmapFrameAllocator;

/// Entries per page table (9 index bits per level).
const ENTRIES: usize = 512;

/// Runs longer than this are flushed with one full TLB flush instead of one `invlpg` per page:
/// a CR3 reload costs about as much as a few dozen `invlpg`s plus the refills.
const FLUSH_ALL_THRESHOLD: usize = 32;

/// Flags given to intermediate (PML4/PDPT/PD) entries this mapper creates: the leaf entry decides
/// the real permissions, an intermediate level must not restrict them.
const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

/// Marks an entry that links a page table this mapper made (bit 9: ignored by the MMU, free for
/// software). Only such entries carry a [`used_entries`] count, and only such tables are ever
/// freed (and only if the frame allocator also says it handed the frame out).
pub const OWNED: PageTableFlags = PageTableFlags::BIT_9;

/// Marks a leaf entry whose page its owner has given up but that stays mapped for now (bit 10:
/// ignored by the MMU, free for software): the heap window's lazy unmaps
/// (`super::lazy_unmaps`). Set by [`PageTables::mark_run`] and gone with the entry when the page
/// is unmapped; setting it needs no TLB flush, as the MMU never reads it.
pub const MARKED: PageTableFlags = PageTableFlags::BIT_10;

/// `unmap_run`'s mark rule: the mark is not looked at.
const ANY_MARK: u8 = 0;
/// `unmap_run`'s mark rule: no page may carry [`MARKED`].
const NO_MARK: u8 = 1;
/// `unmap_run`'s mark rule: every page must carry [`MARKED`].
const ONLY_MARKED: u8 = 2;

/// First bit of the used-entry count in an [`OWNED`] entry: bits 52..=61, ignored by the MMU in
/// entries that link a table (Intel SDM Vol. 3 §4.5, AMD APM Vol. 2 §5.3: "available"). Ten
/// bits hold 0..=512.
const COUNT_SHIFT: u32 = 52;
/// The used-entry count's bits.
const COUNT_MASK: u64 = 0x3FF << COUNT_SHIFT;

/// The number of entries in use in the table that `link` links, if `link` is an [`OWNED`]
/// entry (a table this mapper made); `None` for any other entry.
#[must_use]
pub fn used_entries(link: &PageTableEntry) -> Option<u64> {
    let flags = link.flags();
    flags
        .contains(OWNED)
        .then_some((flags.bits() & COUNT_MASK) >> COUNT_SHIFT)
}

/// TLB invalidation, as the mapper needs it.
pub trait Tlb {
    /// Invalidates the translation of one page and (as `invlpg` does) all paging-structure
    /// caches.
    fn flush_page(&mut self, page: Page);
    /// Invalidates all non-global translations and paging-structure caches.
    fn flush_all(&mut self);
    /// Invalidates the translations of `count` pages from `start` (and the paging-structure
    /// caches): one request, so that an implementation that must also tell other CPUs (a TLB
    /// shootdown) does so once per run, not once per page.
    fn flush_range(&mut self, start: Page, count: usize) {
        for i in 0..count {
            self.flush_page(start + i as u64);
        }
    }
}

/// Why a page could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The page already has a translation (to `frame`); it was left as it was.
    AlreadyMapped {
        /// The page.
        page: Page,
        /// The frame it is mapped to.
        frame: PhysFrame,
    },
    /// No frame was left for a page table (or, for runs of fresh pages, for a page); nothing
    /// was mapped.
    OutOfFrames,
    /// A huge page (1 GiB or 2 MiB) covers the page; 4 KiB pages cannot be mapped inside it.
    HugePageInTheWay,
    /// The flags ask for something this mapper does not do (a huge page).
    InvalidFlags,
    /// The page belongs to a range that only its owner may map (the heap window and its guard).
    ReservedRange,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyMapped { page, frame } => write!(
                f,
                "page {:#x} is already mapped to frame {:#x}",
                page.start_address().as_u64(),
                frame.start_address().as_u64()
            ),
            Self::OutOfFrames => f.write_str("out of physical frames"),
            Self::HugePageInTheWay => f.write_str("a huge page covers the address"),
            Self::InvalidFlags => f.write_str("unsupported page flags (huge page)"),
            Self::ReservedRange => f.write_str("the page is in the reserved heap window range"),
        }
    }
}

/// Why a page could not be unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapError {
    /// The page has no translation.
    NotMapped {
        /// The page.
        page: Page,
    },
    /// The page is part of a huge page, which this mapper does not split.
    HugePage,
    /// The page belongs to a range that only its owner may unmap (the heap window).
    ReservedRange,
    /// The page carries [`MARKED`]: its owner gave it up already and its unmapping waits
    /// ([`PageTables::unmap_checked_run`] refuses it).
    Marked {
        /// The page.
        page: Page,
    },
    /// The page does not carry [`MARKED`] ([`PageTables::unmap_checked_run`] refuses it).
    NotMarked {
        /// The page.
        page: Page,
    },
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped { page } => {
                write!(f, "page {:#x} is not mapped", page.start_address().as_u64())
            }
            Self::HugePage => f.write_str("the page is part of a huge page"),
            Self::ReservedRange => f.write_str("the page is in the reserved heap window range"),
            Self::Marked { page } => write!(
                f,
                "page {:#x} is marked: it waits to be unmapped already",
                page.start_address().as_u64()
            ),
            Self::NotMarked { page } => write!(
                f,
                "page {:#x} is not marked as waiting to be unmapped",
                page.start_address().as_u64()
            ),
        }
    }
}

/// Why a run's pages are not all mapped, unmarked 4 KiB pages ([`PageTables::check_run`],
/// [`PageTables::mark_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkError {
    /// The page has no translation.
    NotMapped {
        /// The page.
        page: Page,
    },
    /// The page carries [`MARKED`] already.
    Marked {
        /// The page.
        page: Page,
    },
    /// The page is part of a huge page.
    HugePage {
        /// The page.
        page: Page,
    },
}

impl fmt::Display for MarkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped { page } => {
                write!(f, "page {:#x} is not mapped", page.start_address().as_u64())
            }
            Self::Marked { page } => write!(
                f,
                "page {:#x} is marked already",
                page.start_address().as_u64()
            ),
            Self::HugePage { page } => write!(
                f,
                "page {:#x} is part of a huge page",
                page.start_address().as_u64()
            ),
        }
    }
}

/// What [`PageTables::audit`] found in the page-table hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableAudit {
    /// Linked tables whose frames the frame allocator handed out: the mapper's own tables.
    pub owned: u64,
    /// Of those, tables with no entry in use. The mapper frees a table as soon as it is empty
    /// (and a failed map removes the tables it made), so each one is a leak.
    pub empty: u64,
    /// Of those, tables whose used-entry count (in the [`OWNED`] entry linking them) differs
    /// from the entries found in use, or whose link is not marked [`OWNED`]: each one would be
    /// freed too early or never.
    pub miscounted: u64,
}

impl TableAudit {
    /// Whether the hierarchy holds exactly `table_frames` tables of the mapper's and none of
    /// them is empty: no page-table frame is lost or kept without a use.
    #[must_use]
    pub fn is_exact(&self, table_frames: u64) -> bool {
        self.owned == table_frames && self.empty == 0 && self.miscounted == 0
    }
}

impl fmt::Display for TableAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} page tables of the mapper linked, {} of them empty, {} miscounted",
            self.owned, self.empty, self.miscounted
        )
    }
}

/// Page-table frames freed by one step, to be returned after the TLB flush (at most PT, PD and
/// PDPT).
#[derive(Default)]
struct Garbage {
    frames: [Option<PhysFrame>; 3],
}

impl Garbage {
    fn push(&mut self, frame: PhysFrame) {
        if let Some(slot) = self.frames.iter_mut().find(|s| s.is_none()) {
            *slot = Some(frame);
        }
    }
}

/// The active page tables (see the module documentation).
#[derive(Debug)]
pub struct PageTables<T> {
    /// Virtual address at which physical address 0 is mapped.
    phys_offset: u64,
    /// Physical address of the PML4.
    root: u64,
    /// Page-table frames this mapper allocated and has not freed.
    table_frames: u64,
    /// TLB maintenance.
    tlb: T,
}

impl<T: Tlb> PageTables<T> {
    /// A mapper that must not be used until replaced by [`new`](Self::new) (for `static`
    /// initializers).
    pub const fn empty(tlb: T) -> Self {
        Self {
            phys_offset: 0,
            root: 0,
            table_frames: 0,
            tlb,
        }
    }

    /// A mapper over the tables rooted at `root`.
    ///
    /// # Safety
    ///
    /// 1. `root` must be the PML4 of the active address space, a valid 4-level hierarchy.
    /// 2. All physical memory holding page tables (and all frames the frame allocator hands out)
    ///    must be mapped readable and writable at `phys_offset + physical address`.
    /// 3. Nothing else may modify these tables while the mapper is in use (one mapper, behind
    ///    a lock).
    pub unsafe fn new(phys_offset: u64, root: PhysFrame, tlb: T) -> Self {
        Self {
            phys_offset,
            root: root.start_address().as_u64(),
            table_frames: 0,
            tlb,
        }
    }

    /// The TLB maintenance object.
    #[must_use]
    pub fn tlb(&self) -> &T {
        &self.tlb
    }

    /// The TLB maintenance object, mutably.
    pub fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// Page-table frames this mapper allocated and still uses.
    #[must_use]
    pub fn table_frames(&self) -> u64 {
        self.table_frames
    }

    /// Walks every table reachable from the root and counts the mapper's own (those whose
    /// frames `frames` handed out) and the empty ones among them. Reads each PML4, PDPT and PD
    /// entry once and scans only the mapper's tables for emptiness: for checks and tests, not
    /// for hot paths.
    #[must_use]
    pub fn audit(&self, frames: &BitmapFrameAllocator) -> TableAudit {
        let mut audit = TableAudit::default();
        self.audit_table(self.root, 4, frames, &mut audit);
        audit
    }

    /// [`audit`](Self::audit) of the table at `table`, which is at `level` (4: PML4 … 2: PD).
    fn audit_table(
        &self,
        table: u64,
        level: u32,
        frames: &BitmapFrameAllocator,
        audit: &mut TableAudit,
    ) {
        for index in 0..ENTRIES {
            // SAFETY: `table` is the root or was reached through present entries of valid tables.
            let entry = unsafe { self.read(table, index) };
            let flags = entry.flags();
            // PDPT and PD entries may map 1 GiB / 2 MiB pages: no table below those.
            if !flags.contains(PageTableFlags::PRESENT)
                || (level < 4 && flags.contains(PageTableFlags::HUGE_PAGE))
            {
                continue;
            }
            let child = entry.addr().as_u64();
            if frames.is_allocated(PhysFrame::containing_address(entry.addr())) {
                audit.owned += 1;
                let used = self.count_used(child);
                if used == 0 {
                    audit.empty += 1;
                }
                if used_entries(&entry) != Some(used) {
                    audit.miscounted += 1;
                }
            }
            if level > 2 {
                self.audit_table(child, level - 1, frames, audit);
            }
        }
    }

    /// Frames that mapping `count` fresh pages from `start` takes: one per page, plus one per
    /// page table (PDPT, PD, PT) the run needs that does not exist yet. Reads one path of
    /// entries per 2 MiB span of the run; changes nothing.
    ///
    /// # Errors
    ///
    /// [`MapError::HugePageInTheWay`] if a huge page covers part of the run.
    pub fn frames_for_run(&self, start: Page, count: usize) -> Result<u64, MapError> {
        let mut needed = count as u64;
        // Per level (PDPT, PD, PT): the virtual-page prefix naming the last table counted as
        // missing, so that a table the run would create is counted once however many spans
        // pass through it (the spans are visited in address order).
        let mut counted = [u64::MAX; 3];
        let mut done = 0;
        while done < count {
            let page = start + done as u64;
            let number = (page.start_address().as_u64() >> 12) & ((1 << 36) - 1);
            let prefixes = [number >> 27, number >> 18, number >> 9];
            let indices = [page.p4_index(), page.p3_index(), page.p2_index()];
            let mut table = Some(self.root);
            for level in 0..3 {
                table = match table {
                    Some(t) => {
                        // SAFETY: `t` is the root or was reached through present entries.
                        let entry = unsafe { self.read(t, usize::from(indices[level])) };
                        let flags = entry.flags();
                        if !flags.contains(PageTableFlags::PRESENT) {
                            None
                        } else if flags.contains(PageTableFlags::HUGE_PAGE) {
                            return Err(MapError::HugePageInTheWay);
                        } else {
                            Some(entry.addr().as_u64())
                        }
                    }
                    None => None,
                };
                if table.is_none() && counted[level] != prefixes[level] {
                    counted[level] = prefixes[level];
                    needed += 1;
                }
            }
            done += (ENTRIES - usize::from(page.p1_index())).min(count - done);
        }
        Ok(needed)
    }

    /// Whether the PML4 entry covering `addr` is unused, i.e. nothing at all is mapped in that
    /// 512 GiB slot.
    #[must_use]
    pub fn top_slot_is_free(&self, addr: VirtAddr) -> bool {
        // SAFETY: the root is a valid table (`new`'s contract); reading an entry is harmless.
        unsafe { self.read(self.root, usize::from(addr.p4_index())) }.is_unused()
    }

    /// The physical address `addr` translates to, following 1 GiB and 2 MiB pages too.
    #[must_use]
    pub fn translate(&self, addr: VirtAddr) -> Option<PhysAddr> {
        let (entry, level) = self.leaf(addr)?;
        let size_bits = 12 + 9 * (3 - level as u32);
        let mask = (1u64 << size_bits) - 1;
        Some(PhysAddr::new(
            (entry.addr().as_u64() & !mask) | (addr.as_u64() & mask),
        ))
    }

    /// The flags of the 4 KiB leaf entry mapping `page`; `None` if it has none (not mapped, or
    /// inside a huge page).
    #[must_use]
    pub fn leaf_flags(&self, page: Page) -> Option<PageTableFlags> {
        match self.leaf(page.start_address())? {
            (entry, 3) => Some(entry.flags()),
            _ => None,
        }
    }

    /// The present entry that maps `addr` and its level: 3 for a 4 KiB page, 2 or 1 (PD, PDPT)
    /// for a 2 MiB or 1 GiB page; `None` if `addr` is not mapped.
    #[inline]
    fn leaf(&self, addr: VirtAddr) -> Option<(PageTableEntry, usize)> {
        let indices = [
            addr.p4_index(),
            addr.p3_index(),
            addr.p2_index(),
            addr.p1_index(),
        ];
        let mut table = self.root;
        for (level, index) in indices.into_iter().enumerate() {
            // SAFETY: `table` is the root or was reached through present entries of valid tables.
            let entry = unsafe { self.read(table, usize::from(index)) };
            let flags = entry.flags();
            if !flags.contains(PageTableFlags::PRESENT) {
                return None;
            }
            // Level 1 (PDPT) and 2 (PD) entries may map 1 GiB / 2 MiB pages.
            if level == 3
                || ((level == 1 || level == 2) && flags.contains(PageTableFlags::HUGE_PAGE))
            {
                return Some((entry, level));
            }
            table = entry.addr().as_u64();
        }
        None
    }

    /// Checks that every page of the run is a mapped 4 KiB page without [`MARKED`]: one walk
    /// per page table, one read per page.
    ///
    /// # Errors
    ///
    /// The first page that is not ([`MarkError`]).
    pub fn check_run(&self, start: Page, count: usize) -> Result<(), MarkError> {
        self.scan_run(start, count, false)
    }

    /// Sets [`MARKED`] on every page of the run, which must all be mapped 4 KiB pages without
    /// it: one walk per page table, one read and one write per page, no flush (the MMU ignores
    /// the bit). On error nothing changed (the marks this call set are cleared again).
    ///
    /// # Errors
    ///
    /// The first page that is not a mapped, unmarked 4 KiB page ([`MarkError`]).
    pub fn mark_run(&mut self, start: Page, count: usize) -> Result<(), MarkError> {
        let result = self.scan_run(start, count, true);
        if let Err(
            MarkError::NotMapped { page: failed }
            | MarkError::Marked { page: failed }
            | MarkError::HugePage { page: failed },
        ) = result
        {
            // The pages before `failed` were checked and marked by this call.
            self.unmark(start, (failed - start) as usize);
        }
        result
    }

    /// Clears [`MARKED`] on the `count` pages from `start`, which [`mark_run`](Self::mark_run)
    /// marked.
    fn unmark(&mut self, start: Page, count: usize) {
        let mut done = 0;
        while done < count {
            let page = start + done as u64;
            let first = usize::from(page.p1_index());
            let chunk = (ENTRIES - first).min(count - done);
            let pt = self.walk(page).expect("a page marked by this call")[3];
            for index in first..first + chunk {
                // SAFETY: `pt` is a valid page table reached by the walk and `index < 512`;
                // clearing a bit the MMU ignores keeps the hierarchy valid.
                unsafe {
                    let mut entry = self.read(pt, index);
                    entry.set_flags(entry.flags() - MARKED);
                    self.write(pt, index, entry);
                }
            }
            done += chunk;
        }
    }

    /// [`check_run`](Self::check_run), and with `mark` also sets [`MARKED`] on each page that
    /// passes (before the next is checked); stops at the first page that fails. Only
    /// [`mark_run`](Self::mark_run), which holds `&mut self`, passes `mark`. Per page: one read,
    /// one test of two bits, and with `mark` one write.
    fn scan_run(&self, start: Page, count: usize, mark: bool) -> Result<(), MarkError> {
        let mut done = 0;
        while done < count {
            let page = start + done as u64;
            let first = usize::from(page.p1_index());
            let chunk = (ENTRIES - first).min(count - done);
            let pt = match self.walk(page) {
                Ok(path) => path[3],
                Err(UnmapError::HugePage) => return Err(MarkError::HugePage { page }),
                Err(_) => return Err(MarkError::NotMapped { page }),
            };
            // The entries as raw words (`PageTableEntry` is a transparent `u64`): the two bits
            // are tested and the mark set without the entry type's address checks.
            let entries = self.ptr(pt, first).cast::<u64>();
            let (present, marked) = (PageTableFlags::PRESENT.bits(), MARKED.bits());
            for i in 0..chunk {
                // SAFETY: `pt` is a valid page table reached by the walk and `first + i < 512`.
                let entry = unsafe { entries.add(i).read() };
                if entry & (present | marked) != present {
                    let page = page + i as u64;
                    return Err(if entry & present != 0 {
                        MarkError::Marked { page }
                    } else {
                        MarkError::NotMapped { page }
                    });
                }
                if mark {
                    // SAFETY: as the read; setting a bit the MMU ignores keeps the hierarchy
                    // valid, and the caller (`mark_run`) holds the tables mutably.
                    unsafe { entries.add(i).write(entry | marked) };
                }
            }
            done += chunk;
        }
        Ok(())
    }

    /// Maps `page` to `frame` with `flags` (PRESENT is added), creating missing tables.
    ///
    /// # Errors
    ///
    /// [`MapError::AlreadyMapped`], [`MapError::OutOfFrames`] (no frame for a table),
    /// [`MapError::HugePageInTheWay`], [`MapError::InvalidFlags`] (HUGE_PAGE requested). On
    /// error nothing changed.
    ///
    /// # Safety
    ///
    /// The mapping must not break memory safety: `frame` must not be memory that something else
    /// owns and accesses through another mapping in a conflicting way, and the page must not be
    /// one that code relies on staying unmapped.
    pub unsafe fn map(
        &mut self,
        page: Page,
        frame: PhysFrame,
        flags: PageTableFlags,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), MapError> {
        if flags.contains(PageTableFlags::HUGE_PAGE) {
            return Err(MapError::InvalidFlags);
        }
        let path = self.walk_create(page, frames)?;
        let pt = path[3];
        let index = usize::from(page.p1_index());
        // SAFETY: `pt` is a valid page table reached by the walk.
        let entry = unsafe { self.read(pt, index) };
        if entry.flags().contains(PageTableFlags::PRESENT) {
            return Err(MapError::AlreadyMapped {
                page,
                frame: PhysFrame::containing_address(entry.addr()),
            });
        }
        let mut new = PageTableEntry::new();
        new.set_frame(frame, flags | PageTableFlags::PRESENT);
        // SAFETY: writes an entry of a valid table; the caller vouches for the mapping itself.
        unsafe { self.write(pt, index, new) };
        let _ = self.count_add(path[2], usize::from(page.p2_index()), 1);
        Ok(())
    }

    /// Unmaps `page`, flushes its translation and returns its frame (which is not freed);
    /// tables left empty are freed.
    ///
    /// # Errors
    ///
    /// [`UnmapError::NotMapped`], [`UnmapError::HugePage`]; nothing changed then.
    ///
    /// # Safety
    ///
    /// Nothing may access the page after this call (no live references into it).
    pub unsafe fn unmap(
        &mut self,
        page: Page,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<PhysFrame, UnmapError> {
        let mut taken = None;
        // SAFETY: the caller's contract is `unmap_run`'s.
        unsafe { self.unmap_run::<ANY_MARK>(page, 1, frames, |_, frame| taken = Some(frame)) }?;
        taken.ok_or(UnmapError::NotMapped { page })
    }

    /// Maps `count` pages from `start` to fresh frames from `frames`, all with `flags`
    /// (PRESENT added).
    ///
    /// # Errors
    ///
    /// [`MapError::OutOfFrames`] when there are fewer free frames than the pages plus the
    /// page tables the run needs ([`frames_for_run`](Self::frames_for_run)),
    /// [`MapError::AlreadyMapped`] if a page of the run is mapped already,
    /// [`MapError::HugePageInTheWay`], [`MapError::InvalidFlags`]. A failed call leaves the
    /// tables and the frame count as they were:
    ///
    /// 1. Every frame the run takes, for pages and for new tables, is counted before anything
    ///    changes, so running out of frames is found before the first table is made. (Counting
    ///    reads one path of entries per 2 MiB span; the frame allocator's free count is exact,
    ///    and nothing else allocates while we hold it.)
    /// 2. An error found part-way (a page that is already mapped) unmaps the pages this call
    ///    mapped, which frees the tables they emptied, and then frees the tables of the span
    ///    where it stopped if they are empty (made by this call, with no page of it mapped).
    ///
    /// # Safety
    ///
    /// The pages must be ones that code relies on staying unmapped only if this call fails
    /// (typically: a virtual range reserved for exactly this purpose).
    pub unsafe fn map_fresh_run(
        &mut self,
        start: Page,
        count: usize,
        flags: PageTableFlags,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), MapError> {
        if flags.contains(PageTableFlags::HUGE_PAGE) {
            return Err(MapError::InvalidFlags);
        }
        // A run inside one page table that exists already (the common case: a heap growing by
        // a page) takes exactly its pages' frames, and the walk that shows it is the one the
        // mapping uses. Any other run counts its new tables first (`frames_for_run`).
        let first = usize::from(start.p1_index());
        let mut known = if count <= ENTRIES - first {
            self.walk(start).ok()
        } else {
            None
        };
        let needed = match known {
            Some(_) => count as u64,
            None => self.frames_for_run(start, count)?,
        };
        if frames.stats().free < needed {
            return Err(MapError::OutOfFrames);
        }
        let flags = flags | PageTableFlags::PRESENT;
        let mut done = 0;
        let mut result = Ok(());
        while done < count {
            let page = start + done as u64;
            let first = usize::from(page.p1_index());
            let chunk = (ENTRIES - first).min(count - done);
            let path = match known.take() {
                Some(path) => path,
                None => match self.walk_create(page, frames) {
                    Ok(path) => path,
                    Err(error) => {
                        result = Err(error);
                        break;
                    }
                },
            };
            let pt = path[3];
            let mut written = 0;
            for index in first..first + chunk {
                // SAFETY: `pt` is a valid page table reached by the walk.
                let entry = unsafe { self.read(pt, index) };
                if entry.flags().contains(PageTableFlags::PRESENT) {
                    result = Err(MapError::AlreadyMapped {
                        page: page + written as u64,
                        frame: PhysFrame::containing_address(entry.addr()),
                    });
                    break;
                }
                let Some(frame) = frames.allocate() else {
                    result = Err(MapError::OutOfFrames);
                    break;
                };
                let mut new = PageTableEntry::new();
                new.set_frame(frame, flags);
                // SAFETY: writes an entry of a valid table to a page the caller reserved.
                unsafe { self.write(pt, index, new) };
                written += 1;
            }
            // One count update per page table, for the entries written into it.
            let _ = self.count_add(path[2], usize::from(page.p2_index()), written as i64);
            done += written;
            if result.is_err() {
                break;
            }
        }
        if result.is_err() {
            // SAFETY: exactly the pages this call mapped, to frames nothing else has seen.
            let undo = unsafe { self.unmap_fresh_run(start, done, frames) };
            debug_assert!(undo.is_ok(), "undoing a partial run failed: {undo:?}");
            // The span the run stopped in may have tables this call made and no page of the
            // run: the unmap above never walked there.
            self.free_empty_tables(start + done as u64, frames);
        }
        result
    }

    /// Frees the tables on the path to `page` that are empty and the frame allocator's (PT,
    /// then PD, then PDPT; none if the path is incomplete), after one full TLB flush.
    fn free_empty_tables(&mut self, page: Page, frames: &mut BitmapFrameAllocator) {
        let Ok(path) = self.walk(page) else {
            return;
        };
        let garbage = self.reclaim(path, page, frames);
        if garbage.frames[0].is_none() {
            return;
        }
        self.tlb.flush_all();
        for frame in garbage.frames.into_iter().flatten() {
            // SAFETY: the table is empty, unlinked by `reclaim` and flushed from the
            // paging-structure caches; it came from `frames` (checked in `reclaim`).
            unsafe { frames.deallocate(frame) };
            self.table_frames -= 1;
        }
    }

    /// Unmaps `count` pages from `start`, flushes them and frees their frames to `frames`, then
    /// frees tables left empty.
    ///
    /// # Errors
    ///
    /// [`UnmapError::NotMapped`] naming the first page of the run that is not mapped (the pages
    /// before it have been unmapped and freed), [`UnmapError::HugePage`].
    ///
    /// # Safety
    ///
    /// Every page must map a frame that came from `frames` and that nothing else uses, and
    /// nothing may access the pages after this call.
    pub unsafe fn unmap_fresh_run(
        &mut self,
        start: Page,
        count: usize,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), UnmapError> {
        // SAFETY: the frames are ours to free (caller's contract), and are freed only after
        // their entries are cleared; the flush follows before `unmap_run` returns and before
        // anything can reuse them (we hold `&mut` to the allocator throughout).
        unsafe {
            self.unmap_run::<ANY_MARK>(start, count, frames, |frames, frame| {
                frames.deallocate(frame)
            })
        }
    }

    /// [`unmap_fresh_run`](Self::unmap_fresh_run) that also requires every page to carry
    /// [`MARKED`] if `marked` (a run [`mark_run`](Self::mark_run) marked), or not to if not.
    /// ([`unmap_fresh_run`](Self::unmap_fresh_run) does not look at the mark.)
    ///
    /// # Errors
    ///
    /// As [`unmap_fresh_run`](Self::unmap_fresh_run), and [`UnmapError::NotMarked`] or
    /// [`UnmapError::Marked`] naming the first page whose mark is not as required (the pages
    /// before it have been unmapped and freed).
    ///
    /// # Safety
    ///
    /// As [`unmap_fresh_run`](Self::unmap_fresh_run).
    pub unsafe fn unmap_checked_run(
        &mut self,
        start: Page,
        count: usize,
        marked: bool,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), UnmapError> {
        // SAFETY: as in `unmap_fresh_run` (the caller's contract is the same).
        unsafe {
            if marked {
                self.unmap_run::<ONLY_MARKED>(start, count, frames, |frames, frame| {
                    frames.deallocate(frame)
                })
            } else {
                self.unmap_run::<NO_MARK>(start, count, frames, |frames, frame| {
                    frames.deallocate(frame)
                })
            }
        }
    }

    /// Unmaps a run one page table at a time, handing each frame to `sink`; every page must be
    /// mapped, and carry [`MARKED`] as `MARKS` says ([`ANY_MARK`], [`NO_MARK`],
    /// [`ONLY_MARKED`]; a constant, so that the common case tests one bit per page as before
    /// marks existed).
    ///
    /// # Safety
    ///
    /// Nothing may access the pages after this call.
    unsafe fn unmap_run<const MARKS: u8>(
        &mut self,
        start: Page,
        count: usize,
        frames: &mut BitmapFrameAllocator,
        mut sink: impl FnMut(&mut BitmapFrameAllocator, PhysFrame),
    ) -> Result<(), UnmapError> {
        // The bits every entry must show: present, and with `marks` the mark as required.
        let present = PageTableFlags::PRESENT.bits();
        let (test, want) = match MARKS {
            NO_MARK => (present | MARKED.bits(), present),
            ONLY_MARKED => (present | MARKED.bits(), present | MARKED.bits()),
            _ => (present, present),
        };
        let mut done = 0;
        while done < count {
            let page = start + done as u64;
            let first = usize::from(page.p1_index());
            let chunk = (ENTRIES - first).min(count - done);
            let path = self.walk(page)?;
            let pt = path[3];
            let mut cleared = 0;
            let mut error = None;
            for index in first..first + chunk {
                // SAFETY: `pt` is a valid page table reached by the walk.
                let entry = unsafe { self.read(pt, index) };
                let flags = entry.flags();
                if flags.bits() & test != want {
                    let page = start + (done + cleared) as u64;
                    error = Some(if !flags.contains(PageTableFlags::PRESENT) {
                        UnmapError::NotMapped { page }
                    } else if MARKS == ONLY_MARKED {
                        UnmapError::NotMarked { page }
                    } else {
                        UnmapError::Marked { page }
                    });
                    break;
                }
                // SAFETY: clears an entry of a valid table; the caller gave the page up.
                unsafe { self.write(pt, index, PageTableEntry::new()) };
                sink(frames, PhysFrame::containing_address(entry.addr()));
                cleared += 1;
            }
            let left = self.count_add(path[2], usize::from(page.p2_index()), -(cleared as i64));
            // Only a page table this call emptied (or, if it cleared nothing, one found empty)
            // can start a reclaim: the count just computed answers without another read.
            let garbage = if cleared == 0 || left == Some(0) {
                self.reclaim(path, page, frames)
            } else {
                Garbage::default()
            };
            if cleared > FLUSH_ALL_THRESHOLD {
                self.tlb.flush_all();
            } else {
                self.tlb.flush_range(page, cleared);
                if cleared == 0 && garbage.frames[0].is_some() {
                    self.tlb.flush_all();
                }
            }
            for frame in garbage.frames.into_iter().flatten() {
                // SAFETY: the table is unlinked and the flush above dropped any cached copy of
                // the entries that pointed to it; it came from `frames` (checked in `reclaim`).
                unsafe { frames.deallocate(frame) };
                self.table_frames -= 1;
            }
            if let Some(error) = error {
                return Err(error);
            }
            done += cleared;
        }
        Ok(())
    }

    /// Physical addresses of the PML4, PDPT, PD and PT on the way to `page`.
    fn walk(&self, page: Page) -> Result<[u64; 4], UnmapError> {
        let indices = [page.p4_index(), page.p3_index(), page.p2_index()];
        let mut path = [self.root, 0, 0, 0];
        for (level, index) in indices.into_iter().enumerate() {
            // SAFETY: `path[level]` is the root or was reached through present entries.
            let entry = unsafe { self.read(path[level], usize::from(index)) };
            let flags = entry.flags();
            if !flags.contains(PageTableFlags::PRESENT) {
                return Err(UnmapError::NotMapped { page });
            }
            if flags.contains(PageTableFlags::HUGE_PAGE) {
                return Err(UnmapError::HugePage);
            }
            path[level + 1] = entry.addr().as_u64();
        }
        Ok(path)
    }

    /// Walks to the PT of `page`, creating missing tables; returns the physical addresses of
    /// the PML4, PDPT, PD and PT on the way. A table it makes is linked by an [`OWNED`] entry
    /// with a count of 0, and the count of the table it is linked into goes up by one. On
    /// failure the tables created by this call are removed again.
    fn walk_create(
        &mut self,
        page: Page,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<[u64; 4], MapError> {
        let indices = [page.p4_index(), page.p3_index(), page.p2_index()].map(usize::from);
        let mut path = [self.root, 0, 0, 0];
        let mut created: [Option<PhysFrame>; 3] = [None; 3];
        for level in 0..3 {
            let (table, index) = (path[level], indices[level]);
            // SAFETY: `table` is the root or was reached through present entries.
            let entry = unsafe { self.read(table, index) };
            let flags = entry.flags();
            if flags.contains(PageTableFlags::PRESENT) {
                if flags.contains(PageTableFlags::HUGE_PAGE) {
                    // Only pre-existing tables can hold a huge page: nothing was created.
                    return Err(MapError::HugePageInTheWay);
                }
                path[level + 1] = entry.addr().as_u64();
                continue;
            }
            let Some(frame) = frames.allocate() else {
                self.undo_created(path, indices, &created, frames);
                return Err(MapError::OutOfFrames);
            };
            let new_table = frame.start_address().as_u64();
            // SAFETY: the frame is fresh from the allocator, mapped writable through the
            // physical-memory mapping (`new`'s contract 2), and 4 KiB long.
            unsafe { ptr::write_bytes(self.ptr(new_table, 0), 0, ENTRIES) };
            let mut link = PageTableEntry::new();
            link.set_frame(frame, TABLE_FLAGS | OWNED);
            // SAFETY: links a zeroed table into an unused entry of a valid table.
            unsafe { self.write(table, index, link) };
            if level > 0 {
                let _ = self.count_add(path[level - 1], indices[level - 1], 1);
            }
            self.table_frames += 1;
            created[level] = Some(frame);
            path[level + 1] = new_table;
        }
        Ok(path)
    }

    /// Unlinks and frees the tables a failed [`walk_create`](Self::walk_create) made on `path`
    /// (deepest first, each unlink counted in the table it was linked into).
    fn undo_created(
        &mut self,
        path: [u64; 4],
        indices: [usize; 3],
        created: &[Option<PhysFrame>; 3],
        frames: &mut BitmapFrameAllocator,
    ) {
        if created.iter().all(Option::is_none) {
            return;
        }
        for level in (0..3).rev() {
            if created[level].is_some() {
                // SAFETY: clears the entry this call set in a valid table.
                unsafe { self.write(path[level], indices[level], PageTableEntry::new()) };
                if level > 0 {
                    let _ = self.count_add(path[level - 1], indices[level - 1], -1);
                }
            }
        }
        self.tlb.flush_all();
        for &frame in created.iter().flatten() {
            // SAFETY: the (empty) table came from `frames` moments ago, is unlinked and flushed.
            unsafe { frames.deallocate(frame) };
            self.table_frames -= 1;
        }
    }

    /// After entries of the PT at `path[3]` were cleared (and counted): unlinks that PT if its
    /// count says it is empty, then its PD, then its PDPT, each only if it is [`OWNED`], empty
    /// and handed out by `frames`. One read per level, no scan. Returns the unlinked frames, to
    /// be freed after the TLB flush.
    fn reclaim(&mut self, path: [u64; 4], page: Page, frames: &BitmapFrameAllocator) -> Garbage {
        let indices = [page.p4_index(), page.p3_index(), page.p2_index()].map(usize::from);
        let mut garbage = Garbage::default();
        for level in (1..4).rev() {
            let (parent, index) = (path[level - 1], indices[level - 1]);
            // SAFETY: `parent` is a valid table on the walked path.
            let link = unsafe { self.read(parent, index) };
            if used_entries(&link) != Some(0) {
                break;
            }
            let frame = PhysFrame::containing_address(link.addr());
            if !frames.is_allocated(frame) {
                break;
            }
            // SAFETY: clears the parent entry of an empty table this mapper allocated.
            unsafe { self.write(parent, index, PageTableEntry::new()) };
            if level > 1 {
                let _ = self.count_add(path[level - 2], indices[level - 2], -1);
            }
            garbage.push(frame);
        }
        garbage
    }

    /// Adds `delta` to the used-entry count carried by entry `index` of `table`, if that entry
    /// is [`OWNED`] (it links a table this mapper made), and returns the new count; any other
    /// entry is left as it is (`None`, as for a `delta` of 0).
    ///
    /// # Panics
    ///
    /// If the count would leave 0..=512 (the bookkeeping is broken: freeing by it could free a
    /// table in use); the message names the table.
    fn count_add(&mut self, table: u64, index: usize, delta: i64) -> Option<u64> {
        if delta == 0 {
            return None;
        }
        debug_assert!(index < ENTRIES);
        // Raw bits, not `PageTableEntry` accessors: this runs for every map and unmap, and
        // `addr()` reads the crate's physical-address mask from a static.
        let entry = self.ptr(table, index).cast::<u64>();
        // SAFETY: `table` is a valid page table on a walked path and `index < 512`: the entry
        // is mapped through the physical-memory mapping (`new`'s contract 2).
        let raw = unsafe { entry.read() };
        if raw & OWNED.bits() == 0 {
            return None;
        }
        let count = ((raw & COUNT_MASK) >> COUNT_SHIFT) as i64 + delta;
        assert!(
            (0..=ENTRIES as i64).contains(&count),
            "page table at {:#x}: used-entry count {count} out of range",
            raw & 0x000F_FFFF_FFFF_F000
        );
        // SAFETY: as above; changes only bits the MMU ignores in an entry that links a table.
        unsafe { entry.write((raw & !COUNT_MASK) | ((count as u64) << COUNT_SHIFT)) };
        Some(count as u64)
    }

    /// Entries in use in the table (512 reads): for [`audit`](Self::audit), not hot paths.
    fn count_used(&self, table: u64) -> u64 {
        // SAFETY: `table` is a valid page table.
        (0..ENTRIES)
            .filter(|&i| !unsafe { self.read(table, i) }.is_unused())
            .count() as u64
    }

    /// Pointer to entry `index` of the table at physical address `table`.
    fn ptr(&self, table: u64, index: usize) -> *mut PageTableEntry {
        let addr =
            self.phys_offset.wrapping_add(table) as usize + index * size_of::<PageTableEntry>();
        ptr::with_exposed_provenance_mut(addr)
    }

    /// Reads an entry.
    ///
    /// # Safety
    ///
    /// `table` must be the physical address of a page table and `index < 512`.
    unsafe fn read(&self, table: u64, index: usize) -> PageTableEntry {
        debug_assert!(index < ENTRIES);
        // SAFETY: the table is mapped through the physical-memory mapping (`new`'s contract 2);
        // the caller guarantees it is a table and the index is in range.
        unsafe { self.ptr(table, index).read() }
    }

    /// Writes an entry.
    ///
    /// # Safety
    ///
    /// As [`read`](Self::read), and the write must keep the hierarchy valid.
    unsafe fn write(&mut self, table: u64, index: usize, entry: PageTableEntry) {
        debug_assert!(index < ENTRIES);
        // SAFETY: as in `read`; the caller guarantees the new value is valid.
        unsafe { self.ptr(table, index).write(entry) }
    }
}

/// Why a run could not be moved to another address ([`PageTables::alias_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// A page of the run to move has no translation (or is part of a huge page).
    Source(UnmapError),
    /// The destination could not be mapped (a page already mapped, no frame for a table, a
    /// huge page in the way).
    Destination(MapError),
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(error) => write!(f, "the run to move: {error}"),
            Self::Destination(error) => write!(f, "the destination: {error}"),
        }
    }
}

// Moving runs of pages (`mremap`): the frames change address, the bytes stay where they are.
// Kept apart from the map and unmap paths above; it reuses their walks and their flush rule.
impl<T: Tlb> PageTables<T> {
    /// Maps the `count` pages from `to` to the frames (and with the flags) that the `count`
    /// pages from `from` map, leaving `from` mapped too: the two runs then show the same
    /// memory. Creates the page tables the destination needs.
    ///
    /// # Errors
    ///
    /// [`MoveError::Destination`] with [`MapError::OutOfFrames`] when there are fewer free
    /// frames than the destination's new tables (counted before anything changes), or another
    /// `MapError` if a destination page is mapped already; [`MoveError::Source`] if a page of
    /// `from` is not mapped. A failed call leaves the tables as they were: the destination pages
    /// it mapped are unmapped again (their frames stay the source's) and tables it made freed.
    ///
    /// # Safety
    ///
    /// The destination must be a range reserved for this use, and before the caller lets
    /// anything use memory through both runs it must unmap one of them with
    /// [`unmap_alias_run`](Self::unmap_alias_run) (the frames then belong to the other alone).
    pub unsafe fn alias_run(
        &mut self,
        from: Page,
        to: Page,
        count: usize,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), MoveError> {
        let tables = self
            .frames_for_run(to, count)
            .map_err(MoveError::Destination)?
            - count as u64;
        if frames.stats().free < tables {
            return Err(MoveError::Destination(MapError::OutOfFrames));
        }
        let mut done = 0;
        let mut result = Ok(());
        let mut src_pt = 0;
        'chunks: while done < count {
            let page = to + done as u64;
            let first = usize::from(page.p1_index());
            let chunk = (ENTRIES - first).min(count - done);
            let path = match self.walk_create(page, frames) {
                Ok(path) => path,
                Err(error) => {
                    result = Err(MoveError::Destination(error));
                    break;
                }
            };
            let pt = path[3];
            for index in first..first + chunk {
                let source = from + done as u64;
                if done == 0 || usize::from(source.p1_index()) == 0 {
                    src_pt = match self.walk(source) {
                        Ok(path) => path[3],
                        Err(error) => {
                            result = Err(MoveError::Source(error));
                            break 'chunks;
                        }
                    };
                }
                // SAFETY: `src_pt` and `pt` are valid page tables reached by walks.
                let (old, entry) = unsafe {
                    (
                        self.read(src_pt, usize::from(source.p1_index())),
                        self.read(pt, index),
                    )
                };
                if !old.flags().contains(PageTableFlags::PRESENT) {
                    result = Err(MoveError::Source(UnmapError::NotMapped { page: source }));
                    break 'chunks;
                }
                if entry.flags().contains(PageTableFlags::PRESENT) {
                    result = Err(MoveError::Destination(MapError::AlreadyMapped {
                        page: to + done as u64,
                        frame: PhysFrame::containing_address(entry.addr()),
                    }));
                    break 'chunks;
                }
                // SAFETY: writes an entry of a valid table, in a range the caller reserved, to
                // a frame whose other mapping the caller removes before the memory is used.
                unsafe { self.write(pt, index, old) };
                // The destination table's used-entry count (the undo below takes it down again).
                let _ = self.count_add(path[2], usize::from(page.p2_index()), 1);
                done += 1;
            }
        }
        if result.is_err() {
            // SAFETY: exactly the destination pages this call mapped; their frames are the
            // source's and are not freed.
            let undo = unsafe { self.unmap_alias_run(to, done, frames) };
            debug_assert!(undo.is_ok(), "undoing a partial alias failed: {undo:?}");
            self.free_empty_tables(to + done as u64, frames);
        }
        result
    }

    /// Unmaps `count` pages from `start` and flushes them (on every CPU, as any unmap does)
    /// without freeing their frames, which another mapping keeps ([`alias_run`](Self::alias_run));
    /// tables left empty are freed.
    ///
    /// # Errors
    ///
    /// As [`unmap_fresh_run`](Self::unmap_fresh_run).
    ///
    /// # Safety
    ///
    /// Every frame of the run must stay mapped elsewhere (or be otherwise owned), and nothing
    /// may access the pages through this run after this call.
    pub unsafe fn unmap_alias_run(
        &mut self,
        start: Page,
        count: usize,
        frames: &mut BitmapFrameAllocator,
    ) -> Result<(), UnmapError> {
        // SAFETY: the caller's contract; the frames are handed to a sink that keeps them.
        unsafe { self.unmap_run::<ANY_MARK>(start, count, frames, |_, _| {}) }
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::super::sim::{BASE, PhysArena};
    use super::*;
    use std::vec::Vec;

    /// Records flushes.
    #[derive(Debug, Default)]
    struct Recorder {
        pages: Vec<u64>,
        all: usize,
    }
    impl Tlb for Recorder {
        fn flush_page(&mut self, page: Page) {
            self.pages.push(page.start_address().as_u64());
        }
        fn flush_all(&mut self) {
            self.all += 1;
        }
    }

    const RW: PageTableFlags = PageTableFlags::WRITABLE.union(PageTableFlags::NO_EXECUTE);

    struct World {
        _arena: PhysArena,
        frames: BitmapFrameAllocator,
        tables: PageTables<Recorder>,
    }

    /// Simulated machine (`kernel/host`'s `sim::boot`): `frames` usable frames after a root
    /// table at `BASE` (frame 0x100) and a "bootloader" PDPT at `BASE + 0x1000`, linked from
    /// root slot 0 (as if the bootloader had mapped something in the lowest 512 GiB).
    fn world(usable_frames: u64) -> World {
        let (arena, frames, tables) = super::super::sim::boot(usable_frames, Recorder::default());
        World {
            _arena: arena,
            frames,
            tables,
        }
    }

    fn page(addr: u64) -> Page {
        Page::containing_address(VirtAddr::new(addr))
    }

    const HIGH: u64 = 0xFFFF_C000_0000_0000;

    #[test]
    fn map_translate_unmap_round_trip() {
        let mut w = world(64);
        let free = w.frames.stats().free;
        let f = w.frames.allocate().unwrap();
        let p = page(HIGH + 0x5000);
        // SAFETY: simulated tables; the frame is fresh.
        unsafe { w.tables.map(p, f, RW, &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 3, "PDPT, PD and PT created");
        assert_eq!(w.frames.stats().free, free - 4);
        assert_eq!(
            w.tables.translate(VirtAddr::new(HIGH + 0x5123)),
            Some(f.start_address() + 0x123)
        );
        assert_eq!(w.tables.translate(VirtAddr::new(HIGH + 0x6000)), None);
        assert!(!w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
        // SAFETY: nothing uses the page.
        let back = unsafe { w.tables.unmap(p, &mut w.frames) }.unwrap();
        assert_eq!(back, f);
        assert_eq!(w.tables.translate(VirtAddr::new(HIGH + 0x5000)), None);
        assert_eq!(w.tables.table_frames(), 0, "empty tables freed");
        assert!(w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
        assert!(w.tables.tlb.pages.contains(&(HIGH + 0x5000)));
        // SAFETY: the frame is unused again.
        unsafe { w.frames.deallocate(back) };
        assert_eq!(w.frames.stats().free, free);
    }

    #[test]
    fn double_map_and_unmapped_unmap_are_typed_errors() {
        let mut w = world(64);
        let f = w.frames.allocate().unwrap();
        let g = w.frames.allocate().unwrap();
        let p = page(HIGH);
        // SAFETY: simulated tables.
        unsafe { w.tables.map(p, f, RW, &mut w.frames) }.unwrap();
        let free = w.frames.stats().free;
        // SAFETY: simulated tables.
        let again = unsafe { w.tables.map(p, g, RW, &mut w.frames) };
        assert_eq!(again, Err(MapError::AlreadyMapped { page: p, frame: f }));
        assert_eq!(w.frames.stats().free, free);
        // SAFETY: simulated tables.
        let none = unsafe { w.tables.unmap(page(HIGH + 0x1000), &mut w.frames) };
        assert_eq!(
            none,
            Err(UnmapError::NotMapped {
                page: page(HIGH + 0x1000)
            })
        );
        // SAFETY: simulated tables.
        let none = unsafe { w.tables.unmap(page(HIGH + (1 << 30)), &mut w.frames) };
        assert_eq!(
            none,
            Err(UnmapError::NotMapped {
                page: page(HIGH + (1 << 30))
            })
        );
        assert_eq!(w.tables.table_frames(), 3);
        // SAFETY: simulated tables.
        let huge = unsafe {
            w.tables.map(
                page(HIGH + 0x2000),
                g,
                RW | PageTableFlags::HUGE_PAGE,
                &mut w.frames,
            )
        };
        assert_eq!(huge, Err(MapError::InvalidFlags));
    }

    #[test]
    fn bootloader_tables_are_never_freed() {
        let mut w = world(64);
        let f = w.frames.allocate().unwrap();
        let p = page(0x4000_0000); // slot 0: under the "bootloader" PDPT
        // SAFETY: simulated tables.
        unsafe { w.tables.map(p, f, RW, &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 2, "PD and PT only");
        // SAFETY: simulated tables.
        unsafe { w.tables.unmap(p, &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 0);
        assert!(
            !w.tables.top_slot_is_free(VirtAddr::new(0)),
            "bootloader PDPT kept"
        );
    }

    #[test]
    fn huge_pages_translate_and_block_mapping() {
        let mut w = world(64);
        // A 2 MiB page at 0x20_0000 in slot 0: PD entry with HUGE_PAGE.
        let pd = w.frames.allocate().unwrap();
        // SAFETY: zero the fresh PD through the arena mapping.
        unsafe { ptr::write_bytes(w.tables.ptr(pd.start_address().as_u64(), 0), 0, ENTRIES) };
        let mut link = PageTableEntry::new();
        link.set_frame(pd, TABLE_FLAGS);
        // SAFETY: simulated tables.
        unsafe { w.tables.write(BASE + 0x1000, 0, link) };
        let mut huge = PageTableEntry::new();
        huge.set_addr(
            PhysAddr::new(0x4000_0000),
            TABLE_FLAGS | PageTableFlags::HUGE_PAGE,
        );
        // SAFETY: simulated tables.
        unsafe { w.tables.write(pd.start_address().as_u64(), 1, huge) };
        assert_eq!(
            w.tables.translate(VirtAddr::new(0x20_1234)),
            Some(PhysAddr::new(0x4000_1234))
        );
        let f = w.frames.allocate().unwrap();
        // SAFETY: simulated tables.
        let r = unsafe { w.tables.map(page(0x20_3000), f, RW, &mut w.frames) };
        assert_eq!(r, Err(MapError::HugePageInTheWay));
        // SAFETY: simulated tables.
        let r = unsafe { w.tables.unmap(page(0x20_3000), &mut w.frames) };
        assert_eq!(r, Err(UnmapError::HugePage));
    }

    #[test]
    fn runs_span_tables_and_give_everything_back() {
        let mut w = world(2048);
        let free = w.frames.stats().free;
        // 1500 pages starting 10 pages before a 2 MiB boundary: 4 page tables.
        let start = page(HIGH + (1 << 21) - 10 * 0x1000);
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(start, 1500, RW, &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 2 + 4);
        assert_eq!(w.frames.stats().free, free - 1500 - 6);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1500u64 {
            let pa = w.tables.translate((start + i).start_address()).unwrap();
            assert!(seen.insert(pa.as_u64()));
        }
        // Unmap a middle piece, then the rest.
        // SAFETY: pages mapped by the run above.
        unsafe { w.tables.unmap_fresh_run(start + 600, 100, &mut w.frames) }.unwrap();
        assert!(w.tables.tlb.all >= 1, "long runs flush everything");
        assert_eq!(w.tables.translate((start + 650).start_address()), None);
        // SAFETY: as above.
        unsafe {
            w.tables.unmap_fresh_run(start, 600, &mut w.frames).unwrap();
            w.tables
                .unmap_fresh_run(start + 700, 800, &mut w.frames)
                .unwrap();
        }
        assert_eq!(w.tables.table_frames(), 0);
        assert_eq!(w.frames.stats().free, free);
        assert!(w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
    }

    #[test]
    fn marks_are_checked_set_across_tables_and_undone_on_failure() {
        let mut w = world(64);
        // 6 pages from 3 pages before a 2 MiB boundary: two page tables.
        let start = page(HIGH + (1 << 21) - 3 * 0x1000);
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(start, 6, RW, &mut w.frames) }.unwrap();
        let frames: Vec<_> = (0..6u64)
            .map(|i| w.tables.translate((start + i).start_address()))
            .collect();
        assert_eq!(w.tables.check_run(start, 6), Ok(()));
        assert_eq!(w.tables.mark_run(start + 1, 4), Ok(()));
        w.tables.tlb.pages.clear();
        let marked = |w: &World, i: u64| {
            w.tables
                .leaf_flags(start + i)
                .is_some_and(|flags| flags.contains(MARKED))
        };
        assert_eq!(
            (0..6).map(|i| marked(&w, i)).collect::<Vec<_>>(),
            [false, true, true, true, true, false]
        );
        // Marks change no translation, need no flush, and keep the other flags.
        for i in 0..6u64 {
            assert_eq!(
                w.tables.translate((start + i).start_address()),
                frames[i as usize]
            );
            assert!(w.tables.leaf_flags(start + i).unwrap().contains(RW));
        }
        assert!(w.tables.tlb.pages.is_empty() && w.tables.tlb.all == 0);
        // A marked page fails a check and a second mark, which then changes nothing.
        assert_eq!(
            w.tables.check_run(start, 6),
            Err(MarkError::Marked { page: start + 1 })
        );
        assert_eq!(
            w.tables.mark_run(start, 3),
            Err(MarkError::Marked { page: start + 1 })
        );
        assert!(!marked(&w, 0), "the mark set before the failure is undone");
        // So does an unmapped page, after marks across the table boundary.
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(start + 6, 1, RW, &mut w.frames) }.unwrap();
        assert_eq!(
            w.tables.mark_run(start + 5, 3),
            Err(MarkError::NotMapped { page: start + 7 })
        );
        assert!(!marked(&w, 5) && !marked(&w, 6));
        assert_eq!(w.tables.leaf_flags(start + 7), None);
        // A checked unmap refuses pages whose mark is not as asked (each after
        // unmapping the pages before the one it names), and unmapping takes the marks with the
        // entries.
        // SAFETY: pages mapped above, unused.
        unsafe {
            assert_eq!(
                w.tables.unmap_checked_run(start, 2, false, &mut w.frames),
                Err(UnmapError::Marked { page: start + 1 })
            );
            assert_eq!(
                w.tables
                    .unmap_checked_run(start + 1, 5, true, &mut w.frames),
                Err(UnmapError::NotMarked { page: start + 5 })
            );
            w.tables
                .unmap_fresh_run(start + 5, 2, &mut w.frames)
                .unwrap();
        }
        assert_eq!(w.tables.leaf_flags(start + 1), None);
        assert_eq!(w.tables.table_frames(), 0);
    }

    #[test]
    fn exhaustion_leaves_nothing_behind() {
        let mut w = world(600);
        let free = w.frames.stats().free;
        let start = page(HIGH);
        // SAFETY: simulated tables, reserved range.
        let r = unsafe { w.tables.map_fresh_run(start, 1000, RW, &mut w.frames) };
        assert_eq!(r, Err(MapError::OutOfFrames));
        assert_eq!(w.frames.stats().free, free);
        assert_eq!(w.tables.table_frames(), 0);
        assert!(w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
        // Exactly what fits: free - 4 tables (PDPT, PD, 2 PTs).
        let fit = (free - 4) as usize;
        // SAFETY: as above.
        unsafe { w.tables.map_fresh_run(start, fit, RW, &mut w.frames) }.unwrap();
        assert_eq!(w.frames.stats().free, 0);
        // One more page needs a frame: typed error, nothing changes.
        // SAFETY: as above.
        let r = unsafe {
            w.tables
                .map_fresh_run(start + fit as u64, 1, RW, &mut w.frames)
        };
        assert_eq!(r, Err(MapError::OutOfFrames));
        // SAFETY: as above.
        unsafe { w.tables.unmap_fresh_run(start, fit, &mut w.frames) }.unwrap();
        assert_eq!(w.frames.stats().free, free);
    }

    #[test]
    fn table_exhaustion_undoes_created_tables() {
        let mut w = world(3); // two allocatable frames (the bitmap takes one)
        let f = w.frames.allocate().unwrap();
        // One frame left: the PDPT can be made, the PD cannot.
        // SAFETY: simulated tables.
        let r = unsafe { w.tables.map(page(HIGH), f, RW, &mut w.frames) };
        assert_eq!(r, Err(MapError::OutOfFrames));
        assert_eq!(w.tables.table_frames(), 0);
        assert!(w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
        assert_eq!(w.frames.stats().free, 1);
        assert!(w.frames.allocate().is_some(), "the PDPT frame came back");
    }

    /// The used-entry count of the page table that maps `page` (read from the PD entry).
    fn pt_count(w: &World, page: Page) -> Option<u64> {
        let path = w.tables.walk(page).ok()?;
        // SAFETY: `path[2]` is the PD on the walked path.
        let link = unsafe { w.tables.read(path[2], usize::from(page.p2_index())) };
        used_entries(&link)
    }

    #[test]
    fn counts_follow_maps_and_unmaps_and_empty_tables_go_in_one_read() {
        let mut w = world(64);
        let free = w.frames.stats().free;
        // The last entry of a page table alone, then the first: emptiness must not depend on
        // where the used entries are (the old scan stopped at the first used entry).
        let last = page(HIGH + 511 * 0x1000);
        let first = page(HIGH);
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(last, 1, RW, &mut w.frames) }.unwrap();
        assert_eq!(pt_count(&w, last), Some(1));
        // SAFETY: as above.
        unsafe { w.tables.map_fresh_run(first, 3, RW, &mut w.frames) }.unwrap();
        assert_eq!(pt_count(&w, last), Some(4));
        assert!(w.tables.audit(&w.frames).is_exact(3));
        // SAFETY: pages mapped above, used by nothing.
        unsafe { w.tables.unmap_fresh_run(first, 3, &mut w.frames) }.unwrap();
        assert_eq!(
            pt_count(&w, last),
            Some(1),
            "the table stays for its last entry"
        );
        assert_eq!(w.tables.table_frames(), 3);
        // SAFETY: as above.
        unsafe { w.tables.unmap_fresh_run(last, 1, &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 0, "PT, PD and PDPT freed");
        assert_eq!(w.frames.stats().free, free, "every frame came back");
        assert!(w.tables.top_slot_is_free(VirtAddr::new(HIGH)));
        // The single-page API keeps the same counts.
        let f = w.frames.allocate().unwrap();
        // SAFETY: simulated tables; the frame is fresh.
        unsafe { w.tables.map(page(HIGH + 0x7000), f, RW, &mut w.frames) }.unwrap();
        assert_eq!(pt_count(&w, page(HIGH + 0x7000)), Some(1));
        assert!(w.tables.audit(&w.frames).is_exact(3));
        // SAFETY: nothing uses the page.
        let back = unsafe { w.tables.unmap(page(HIGH + 0x7000), &mut w.frames) }.unwrap();
        assert_eq!(w.tables.table_frames(), 0);
        // SAFETY: the frame is unused again.
        unsafe { w.frames.deallocate(back) };
        assert_eq!(w.frames.stats().free, free);
    }

    #[test]
    fn counts_of_upper_tables_count_linked_tables() {
        let mut w = world(2048);
        // Three page tables under one PD: the PD's count (in the PDPT entry) is 3.
        let start = page(HIGH + (1 << 21) - 0x1000);
        // SAFETY: simulated tables, reserved range.
        unsafe {
            w.tables
                .map_fresh_run(start, 1 + 512 + 1, RW, &mut w.frames)
        }
        .unwrap();
        let path = w.tables.walk(start).unwrap();
        // SAFETY: `path[1]` is the PDPT on the walked path.
        let pd_link = unsafe { w.tables.read(path[1], usize::from(start.p3_index())) };
        assert_eq!(used_entries(&pd_link), Some(3));
        // SAFETY: `path[0]` is the root.
        let pdpt_link = unsafe { w.tables.read(path[0], usize::from(start.p4_index())) };
        assert_eq!(used_entries(&pdpt_link), Some(1));
        assert_eq!(pt_count(&w, start), Some(1));
        assert_eq!(pt_count(&w, start + 1), Some(512));
        // SAFETY: the run mapped above.
        unsafe { w.tables.unmap_fresh_run(start + 1, 512, &mut w.frames) }.unwrap();
        // SAFETY: as above.
        let pd_link = unsafe { w.tables.read(path[1], usize::from(start.p3_index())) };
        assert_eq!(used_entries(&pd_link), Some(2), "the full table went");
        assert!(w.tables.audit(&w.frames).is_exact(4));
    }

    #[test]
    fn a_run_failing_part_way_undoes_its_pages_tables_and_counts() {
        let mut w = world(2048);
        let start = page(HIGH + (1 << 21) - 4 * 0x1000);
        // A page in the second table is mapped already: the run maps 4 + 5 pages first.
        let blocker = start + 9;
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(blocker, 1, RW, &mut w.frames) }.unwrap();
        let free = w.frames.stats().free;
        let tables = w.tables.table_frames();
        // SAFETY: as above.
        let r = unsafe { w.tables.map_fresh_run(start, 20, RW, &mut w.frames) };
        assert!(matches!(r, Err(MapError::AlreadyMapped { page, .. }) if page == blocker));
        assert_eq!(
            w.frames.stats().free,
            free,
            "frames of the undone pages came back"
        );
        assert_eq!(
            w.tables.table_frames(),
            tables,
            "the table the run made went"
        );
        assert_eq!(pt_count(&w, blocker), Some(1));
        assert_eq!(pt_count(&w, start), None, "the first span's table is gone");
        assert!(w.tables.audit(&w.frames).is_exact(tables));
    }

    #[test]
    fn the_audit_finds_a_wrong_count() {
        let mut w = world(64);
        let p = page(HIGH + 0x3000);
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(p, 2, RW, &mut w.frames) }.unwrap();
        assert!(w.tables.audit(&w.frames).is_exact(3));
        let path = w.tables.walk(p).unwrap();
        let _ = w.tables.count_add(path[2], usize::from(p.p2_index()), 1);
        let audit = w.tables.audit(&w.frames);
        assert_eq!(audit.miscounted, 1);
        assert!(!audit.is_exact(3));
        let _ = w.tables.count_add(path[2], usize::from(p.p2_index()), -1);
        assert!(w.tables.audit(&w.frames).is_exact(3));
    }

    #[test]
    fn unmapping_a_hole_in_a_run_reports_the_first_missing_page() {
        let mut w = world(64);
        let start = page(HIGH);
        // SAFETY: simulated tables, reserved range.
        unsafe { w.tables.map_fresh_run(start, 8, RW, &mut w.frames) }.unwrap();
        // SAFETY: as above.
        unsafe { w.tables.unmap_fresh_run(start + 3, 1, &mut w.frames) }.unwrap();
        // SAFETY: as above.
        let r = unsafe { w.tables.unmap_fresh_run(start, 8, &mut w.frames) };
        assert_eq!(r, Err(UnmapError::NotMapped { page: start + 3 }));
        assert_eq!(
            w.tables.translate(start.start_address()),
            None,
            "pages before the hole went"
        );
        assert!(w.tables.translate((start + 4).start_address()).is_some());
    }
}
