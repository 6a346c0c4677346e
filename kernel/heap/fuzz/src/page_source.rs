//! The harness of `page_source_ops`: the kernel's page-source logic — the heap window's buddy
//! and bookkeeping, the frame allocator and the page-table walker — on the simulated machine of
//! `kernel/host` ([`kernel_host::sim::Machine`]: the kernel's own modules over host memory
//! standing for physical RAM).
//!
//! A fuzz input decodes into a [`Scenario`]: a machine size and a sequence of [`PsOp`]s — map a
//! run of the heap window (`map_pages`), grow one in place (`grow_pages`), unmap a whole run or
//! any piece of one, and map or unmap raw runs through the mapper at places where page tables
//! begin and end (2 MiB, 1 GiB and 512 GiB boundaries, under the "bootloader's" tables too).
//! Any operation can first make memory scarce: the machine holds back frames so that only a
//! chosen number stay free, often a few below what the call needs, so that it runs out at every
//! possible point — before the first page, right after a table boundary, part-way through.
//!
//! The window keeps spare pages (mapped, not handed out: `kernel/src/memory/spare_pages.rs`): a
//! single-page map may take one or map a batch, a short unmap may keep its pages as spares, and
//! a call short of frames releases them all before it retries or fails. A longer unmap may
//! leave its run waiting to be unmapped (`kernel/src/memory/lazy_unmaps.rs`: still mapped, still
//! its frames) until a `FinishUnmaps` step or a call short of frames; the harness counts those
//! pages with the spares.
//!
//! After every operation:
//!
//! * a failed call changed nothing: every page-table entry, the frame count, the mapper's table
//!   count and the window's bookkeeping are as before ([`Machine::snapshot`]) — except that a
//!   call short of frames released the spares first (then: no spare left, the heap's pages and
//!   every frame accounted for); and it failed for a reason (`OutOfMemory` only when frames were
//!   short, `OutOfAddressSpace` only when no free run was large enough, `AlreadyMapped` only
//!   over a page that is mapped);
//! * the frames a successful map takes are its pages, the new tables and the new spares, less
//!   those of the spares it used or released;
//! * the accounting is exact ([`Machine::check`]): every used frame is the allocator's bitmap, a
//!   page table, a mapped page, a spare or a held-back frame — no frame leaks — and the mapper's
//!   tables are all linked and none is empty;
//! * a new run's pages translate, each to a frame no other mapped page has;
//! * every page an unmap removed was flushed from the TLB (`invlpg` or a full flush); a window
//!   page it kept as a spare still maps its frame.
//!
//! At the end everything is unmapped and the spares released: the machine must be exactly as it
//! started, and the window's buddy passes its own invariant walk.

use std::collections::HashMap;

use arbitrary::Arbitrary;
use kernel_host::heap_window::{
    HEAP_SLOT_END, HEAP_SLOT_START, HEAP_WINDOW_END, HEAP_WINDOW_START,
};
use kernel_host::paging::{MapError, UnmapError};
use kernel_host::sim::Machine;
use kheap::PageSourceError;

const PAGE: u64 = 4096;

/// Usable frames of the simulated machine: a small one that runs dry at once, one where a few
/// 2 MiB spans fit, and one with room for runs over many page tables.
const MACHINES: [u64; 3] = [48, 700, 3000];

/// Largest run a single operation asks for, in pages (a little over 4 page tables).
const MAX_RUN: u64 = 2100;

/// Where raw runs go: a run starts up to [`MAX_RUN`] pages below or above one of these, which
/// are page-table boundaries outside the heap window. (The scratch area's 2 MiB and 1 GiB boundaries, the end
/// of PML4 slot 384 — a 512 GiB boundary into an empty slot — and 1 GiB in slot 0, under the
/// "bootloader's" PDPT, which the mapper must never free.)
const PLACES: [u64; 4] = [
    HEAP_SLOT_START + 3 * (1 << 21),
    HEAP_SLOT_START + (1 << 30),
    HEAP_SLOT_END,
    1 << 30,
];

/// A number of pages, mostly near a multiple of 512 (a page table's span): `spans % 5` times
/// 512, plus `extra % 64`, minus 32 (at least 0, at most [`MAX_RUN`]). Runs of those sizes end
/// a few pages into a new page table, and raw runs start a few pages before a boundary: where a
/// call that runs out of frames is most likely to stop right after a table boundary.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Pages {
    spans: u8,
    extra: u8,
}

impl Pages {
    fn get(self) -> usize {
        let pages = i64::from(self.spans % 5) * 512 + i64::from(self.extra % 64) - 32;
        pages.clamp(0, MAX_RUN as i64) as usize
    }
}

/// The most frames a run of `pages` fresh pages can take: its pages, a page table per 2 MiB span
/// it touches, and up to two PDs and two PDPTs (a run crossing a 1 GiB or 512 GiB boundary).
fn most_frames(pages: usize) -> u64 {
    let pages = pages as u64;
    pages + pages.div_ceil(512) + 1 + 2 + 2
}

/// How scarce memory is for one operation.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Scarcity {
    /// All frames free.
    Plenty,
    /// Exactly this many frames free (modulo a little more than the largest need).
    Exactly(u16),
    /// The most the call can need ([`most_frames`]) minus this many (modulo 32): around what it
    /// needs, so that it runs out at or a few pages after a page-table boundary.
    NearNeed(u8),
}

/// One step of a scenario. Indices pick among the live runs modulo their count.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum PsOp {
    /// `map_pages` on the heap window (0 pages is an invalid request).
    Map {
        /// Pages asked for.
        pages: Pages,
        /// Frames available to the call.
        scarcity: Scarcity,
    },
    /// `grow_pages` of a live window run.
    Grow {
        /// Which run.
        run: u8,
        /// Pages to add.
        extra: Pages,
        /// Frames available to the call.
        scarcity: Scarcity,
    },
    /// `unmap_pages` of a piece of a live window run: from `offset` (modulo its length), `len`
    /// pages (modulo what is left, plus one).
    Unmap {
        /// Which run.
        run: u8,
        /// First page of the piece.
        offset: u16,
        /// Pages in the piece.
        len: u16,
    },
    /// One step of `memory::finish_unmaps`: unmaps up to `LAZY_STEP` pages of the runs whose
    /// unmapping waits.
    FinishUnmaps,
    /// The mapper's `map_fresh_run` from `before` pages below a place (or above it, if `after`);
    /// may overlap pages already mapped (then it must fail with `AlreadyMapped` and change
    /// nothing).
    MapRaw {
        /// Which place.
        place: u8,
        /// Pages between the start and the place.
        before: Pages,
        /// Whether the run starts that far above the place instead.
        after: bool,
        /// Pages.
        pages: Pages,
        /// Frames available to the call.
        scarcity: Scarcity,
    },
    /// The mapper's `unmap_fresh_run` of a piece of a raw run mapped before (pages of it may be
    /// gone already: then it stops with `NotMapped` at the first of them).
    UnmapRaw {
        /// Which raw run.
        run: u8,
        /// First page of the piece.
        offset: u16,
        /// Pages in the piece.
        len: u16,
    },
}

/// A fuzz input: the machine (an index into the sizes) and the operations.
#[derive(Debug, Arbitrary)]
pub struct Scenario {
    /// Which machine size.
    pub machine: u8,
    /// The operations, in order.
    pub ops: Vec<PsOp>,
}

/// The machine and what the harness knows is mapped on it.
struct Model {
    m: Machine,
    /// Live window runs, as the page source's user sees them: (address, pages).
    runs: Vec<(u64, usize)>,
    /// Raw runs as mapped (some of their pages may have been unmapped since).
    raw_runs: Vec<(u64, usize)>,
    /// Physical frame → the page mapped to it, for every mapped page (window and raw).
    frames: HashMap<u64, u64>,
    step: usize,
}

impl Model {
    fn new(machine: u8) -> Self {
        Self {
            m: Machine::new(MACHINES[usize::from(machine) % MACHINES.len()]),
            runs: Vec::new(),
            raw_runs: Vec::new(),
            frames: HashMap::new(),
            step: 0,
        }
    }

    /// Holds back frames as `scarcity` says for a call that maps `pages` pages.
    fn make_scarce(&mut self, scarcity: Scarcity, pages: u64) {
        match scarcity {
            Scarcity::Plenty => {}
            Scarcity::Exactly(n) => self.m.set_free_frames(u64::from(n) % (MAX_RUN + 16)),
            Scarcity::NearNeed(d) => self
                .m
                .set_free_frames(most_frames(pages as usize).saturating_sub(u64::from(d % 32))),
        }
    }

    /// Records the pages of a run that was just mapped: each translates, to a frame no other
    /// mapped page has.
    fn record_mapped(&mut self, addr: u64, pages: usize) {
        for i in 0..pages as u64 {
            let page = addr + i * PAGE;
            let Some(frame) = self.m.translate(page) else {
                panic!(
                    "step {}: page {page:#x} of a new run is not mapped",
                    self.step
                );
            };
            if let Some(other) = self.frames.insert(frame, page) {
                panic!(
                    "step {}: frame {frame:#x} of page {page:#x} is mapped at {other:#x} too",
                    self.step
                );
            }
        }
    }

    /// Forgets the frames of `pages` pages from `addr`, which were just unmapped, and checks that
    /// each was flushed from the TLB.
    fn record_unmapped(&mut self, addr: u64, pages: usize, frames: &[u64]) {
        let tlb = self.m.tlb();
        for (i, frame) in frames.iter().enumerate().take(pages) {
            let page = addr + i as u64 * PAGE;
            assert!(
                self.m.translate(page).is_none(),
                "step {}: page {page:#x} still mapped after its unmap",
                self.step
            );
            assert!(
                tlb.all > 0 || tlb.pages.contains(&page),
                "step {}: page {page:#x} unmapped without a TLB flush",
                self.step
            );
            assert_eq!(self.frames.remove(frame), Some(page), "step {}", self.step);
        }
    }

    /// Forgets the frames of `pages` window pages from `addr`, which were just given back: each
    /// is either unmapped and flushed, or kept as a spare, still mapping its frame.
    fn record_given_back(&mut self, addr: u64, pages: usize, frames: &[u64]) {
        let tlb = self.m.tlb();
        for (i, frame) in frames.iter().enumerate().take(pages) {
            let page = addr + i as u64 * PAGE;
            match self.m.translate(page) {
                None => assert!(
                    tlb.all > 0 || tlb.pages.contains(&page),
                    "step {}: page {page:#x} unmapped without a TLB flush",
                    self.step
                ),
                Some(now) => assert_eq!(
                    now, *frame,
                    "step {}: spare page {page:#x} maps another frame",
                    self.step
                ),
            }
            assert_eq!(self.frames.remove(frame), Some(page), "step {}", self.step);
        }
    }

    /// The frames `pages` mapped pages from `addr` translate to.
    fn frames_of(&self, addr: u64, pages: usize) -> Vec<u64> {
        (0..pages as u64)
            .map(|i| self.m.translate(addr + i * PAGE).expect("a mapped page"))
            .collect()
    }

    fn map(&mut self, pages: usize, scarcity: Scarcity) {
        self.make_scarce(scarcity, pages as u64);
        let before = self.m.snapshot();
        match self.m.map_pages(pages) {
            Ok(addr) => {
                assert!(pages > 0, "step {}: map_pages(0) succeeded", self.step);
                assert!(
                    addr.is_multiple_of(PAGE)
                        && addr >= HEAP_WINDOW_START
                        && addr + pages as u64 * PAGE <= HEAP_WINDOW_END,
                    "step {}: run {addr:#x} + {pages} pages outside the window",
                    self.step
                );
                assert_eq!(self.m.window_mapped(), before.window_mapped + pages);
                // Frames held by tables and spares (with the pages waiting to be unmapped, as in
                // the snapshot) before and after, and the new pages'.
                let held = |free: u64, tables: u64, spares: usize| free + tables + spares as u64;
                assert_eq!(
                    held(
                        self.m.frame_stats().free,
                        self.m.table_frames(),
                        self.m.window_spare() + self.m.window_lazy()
                    ) + pages as u64,
                    held(before.free_frames, before.table_frames, before.window_spare),
                    "step {}: frames taken by {pages} pages, tables and spares",
                    self.step
                );
                self.record_mapped(addr, pages);
                self.runs.push((addr, pages));
            }
            Err(e) => {
                self.unchanged_but_spares(&before, "map_pages");
                match e {
                    PageSourceError::InvalidRequest => assert_eq!(pages, 0),
                    PageSourceError::OutOfAddressSpace => assert!(
                        pages > before.window_largest_run,
                        "step {}: out of address space for {pages} pages with a free run of {}",
                        self.step,
                        before.window_largest_run
                    ),
                    PageSourceError::OutOfMemory => {
                        // Measured after the spares were released.
                        let free = self.m.frame_stats().free;
                        assert!(
                            free < most_frames(pages),
                            "step {}: {pages} pages refused with {free} frames free",
                            self.step
                        );
                    }
                    #[allow(unreachable_patterns)]
                    other => panic!("step {}: map_pages failed with {other:?}", self.step),
                }
            }
        }
    }

    fn grow(&mut self, run: usize, extra: usize, scarcity: Scarcity) {
        let (addr, pages) = self.runs[run];
        self.make_scarce(scarcity, extra as u64);
        let before = self.m.snapshot();
        if self.m.grow_pages(addr, pages, extra) {
            assert!(extra > 0);
            assert_eq!(self.m.window_mapped(), before.window_mapped + extra);
            self.record_mapped(addr + pages as u64 * PAGE, extra);
            self.runs[run].1 += extra;
        } else {
            self.unchanged_but_spares(&before, "grow_pages");
        }
    }

    fn unmap(&mut self, run: usize, offset: u16, len: u16) {
        let (addr, pages) = self.runs.swap_remove(run);
        let first = usize::from(offset) % pages;
        let count = usize::from(len) % (pages - first) + 1;
        let start = addr + first as u64 * PAGE;
        let frames = self.frames_of(start, count);
        let before = self.m.snapshot();
        self.m.clear_tlb();
        self.m.unmap_pages(start, count);
        assert_eq!(self.m.window_mapped(), before.window_mapped - count);
        self.record_given_back(start, count, &frames);
        if first > 0 {
            self.runs.push((addr, first));
        }
        if first + count < pages {
            self.runs
                .push((start + count as u64 * PAGE, pages - first - count));
        }
    }

    fn map_raw(&mut self, place: u8, before: Pages, after: bool, pages: usize, scarcity: Scarcity) {
        let base = PLACES[usize::from(place) % PLACES.len()];
        let distance = before.get() as u64 * PAGE;
        let start = if after {
            base + distance
        } else {
            base - distance
        };
        self.make_scarce(scarcity, pages as u64);
        let before = self.m.snapshot();
        match self.m.map_run(start, pages) {
            Ok(()) => {
                self.record_mapped(start, pages);
                if pages > 0 {
                    self.raw_runs.push((start, pages));
                }
            }
            Err(e) => {
                self.unchanged(&before, "map_fresh_run");
                match e {
                    MapError::OutOfFrames => assert!(
                        before.free_frames < most_frames(pages),
                        "step {}: {pages} raw pages refused with {} frames free",
                        self.step,
                        before.free_frames
                    ),
                    MapError::AlreadyMapped { page, .. } => {
                        let page = page.start_address().as_u64();
                        assert!(
                            (start..start + pages as u64 * PAGE).contains(&page)
                                && self.frames.values().any(|&p| p == page),
                            "step {}: {page:#x} reported as mapped",
                            self.step
                        );
                    }
                    other => panic!("step {}: map_fresh_run failed with {other:?}", self.step),
                }
            }
        }
    }

    fn unmap_raw(&mut self, run: usize, offset: u16, len: u16) {
        let (addr, pages) = self.raw_runs[run];
        let first = usize::from(offset) % pages;
        let count = usize::from(len) % (pages - first) + 1;
        let start = addr + first as u64 * PAGE;
        // The pages up to the first one that is no longer mapped are what gets unmapped.
        let mapped = (0..count as u64)
            .take_while(|i| self.m.translate(start + i * PAGE).is_some())
            .count();
        let frames = self.frames_of(start, mapped);
        self.m.clear_tlb();
        let result = self.m.unmap_run(start, count);
        if mapped == count {
            assert_eq!(result, Ok(()), "step {}", self.step);
        } else {
            let missing = start + mapped as u64 * PAGE;
            assert!(
                matches!(result, Err(UnmapError::NotMapped { page })
                    if page.start_address().as_u64() == missing),
                "step {}: {result:?}, expected NotMapped at {missing:#x}",
                self.step
            );
        }
        self.record_unmapped(start, mapped, &frames);
        if self
            .m
            .raw_pages()
            .range(addr..addr + pages as u64 * PAGE)
            .next()
            .is_none()
        {
            self.raw_runs.swap_remove(run);
        }
    }

    /// A failed window call must have left everything as it was, except that when it ran short
    /// of frames it released the spares first: then no spare is left, the heap's pages are as
    /// they were, and their frames (and tables only they kept) are free.
    fn unchanged_but_spares(&self, before: &kernel_host::sim::Snapshot, what: &str) {
        let now = self.m.snapshot();
        if now == *before {
            return;
        }
        assert!(
            before.window_spare > 0
                && now.window_spare == 0
                && now.window_mapped == before.window_mapped
                && now.free_frames + now.table_frames
                    == before.free_frames + before.table_frames + before.window_spare as u64,
            "step {}: a failed {what} changed more than the spares: before {before:?}, after {now:?}",
            self.step
        );
    }

    /// A failed call must have left everything as it was.
    fn unchanged(&self, before: &kernel_host::sim::Snapshot, what: &str) {
        let now = self.m.snapshot();
        assert!(
            now == *before,
            "step {}: a failed {what} changed the machine: before {before:?}, after {now:?}",
            self.step
        );
    }

    fn apply(&mut self, op: PsOp) {
        match op {
            PsOp::Map { pages, scarcity } => self.map(pages.get(), scarcity),
            PsOp::Grow {
                run,
                extra,
                scarcity,
            } => {
                if !self.runs.is_empty() {
                    let run = usize::from(run) % self.runs.len();
                    self.grow(run, extra.get(), scarcity);
                }
            }
            PsOp::Unmap { run, offset, len } => {
                if !self.runs.is_empty() {
                    self.unmap(usize::from(run) % self.runs.len(), offset, len);
                }
            }
            PsOp::MapRaw {
                place,
                before,
                after,
                pages,
                scarcity,
            } => self.map_raw(place, before, after, pages.get(), scarcity),
            PsOp::UnmapRaw { run, offset, len } => {
                if !self.raw_runs.is_empty() {
                    self.unmap_raw(usize::from(run) % self.raw_runs.len(), offset, len);
                }
            }
            PsOp::FinishUnmaps => {
                let waiting = self.m.window_lazy();
                let free = self.m.frame_stats().free;
                let step = self.m.finish_unmaps_step();
                assert!(
                    step <= waiting.min(kernel_host::lazy_unmaps::LAZY_STEP)
                        && (step > 0) == (waiting > 0),
                    "step {}: finishing unmapped {step} of {waiting} waiting pages",
                    self.step
                );
                assert_eq!(self.m.window_lazy(), waiting - step);
                assert!(
                    self.m.frame_stats().free >= free + step as u64,
                    "step {}: the finished pages' frames came back",
                    self.step
                );
            }
        }
        self.m.release_hoard();
        self.m.check();
        assert_eq!(
            self.frames.len(),
            self.m.window_mapped() + self.m.raw_pages().len(),
            "step {}: mapped pages against the model",
            self.step
        );
        self.step += 1;
    }

    /// Unmaps everything: the machine must be as it started.
    fn finish(mut self, start: &kernel_host::sim::Snapshot) {
        while let Some(&(_, pages)) = self.runs.last() {
            // The whole run: `len` is taken modulo the pages left, plus one.
            self.unmap(self.runs.len() - 1, 0, (pages - 1) as u16);
        }
        // Raw pages, in stretches of consecutive pages.
        let pages: Vec<u64> = self.m.raw_pages().iter().copied().collect();
        let mut i = 0;
        while i < pages.len() {
            let mut n = 1;
            while i + n < pages.len() && pages[i + n] == pages[i] + n as u64 * PAGE {
                n += 1;
            }
            let frames = self.frames_of(pages[i], n);
            self.m.clear_tlb();
            assert_eq!(self.m.unmap_run(pages[i], n), Ok(()));
            self.record_unmapped(pages[i], n, &frames);
            i += n;
        }
        self.raw_runs.clear();
        self.m.release_spare_pages();
        // (Not `check_all`: the window's full walk costs more than the rest of a scenario. With
        // nothing mapped, the snapshot's "largest free run" must be the whole window again,
        // which only a buddy with every page free and merged can say.)
        let now = self.m.snapshot();
        assert!(
            now == *start,
            "everything unmapped, but the machine differs: start {start:?}, end {now:?}"
        );
    }
}

/// Replays `scenario` on a fresh simulated machine, panicking on the first discrepancy.
pub fn run(scenario: Scenario) {
    let mut model = Model::new(scenario.machine);
    let start = model.m.snapshot();
    for op in scenario.ops {
        model.apply(op);
    }
    model.finish(&start);
}
