//! Root pages: where the heap keeps everything that is not a block.
//!
//! A *root run* is a run of pages from the page source that starts with a [`RootHeader`] and is
//! otherwise cut into equal *slots*. The heap keeps two chains of runs ([`Roots`]), one per slot
//! kind, so that each is packed at its own size:
//!
//! * descriptor runs: slots of `chunk::DESC_SLOT` bytes, each a chunk descriptor
//!   (`chunk::ChunkDesc`). The first run of this chain also holds the heap state (class chunk
//!   lists, magazines, large allocator, page map root, counters) between its header and its slots;
//! * pool runs: slots of `pool::POOL_SLOT` bytes, each a user pool header (`pool::PoolHeader`),
//!   mapped when the first user pool is created.
//!
//! This module knows neither kind: a chain is made with its slot size, and a slot's owner writes
//! its kind byte.
//!
//! Later runs are one page each. Runs of a chain are linked through `next` in creation order.
//! The chain may end in one *spare* run after its last run (the one whose bump cursor hands out
//! fresh slots): a run mapped ahead of need by [`Roots::add_spare`] once the last run is half used
//! and no freed slot is left, which the heap's back does in a slow-path call that maps nothing
//! else (`back::Back::prepare`). The slot request that finds the last run full then moves on to
//! the spare instead of mapping a page, so the call that maps a new chunk does not also map a
//! root page for its descriptor. Without a spare (the chain grew twice without a quiet call in
//! between), [`Roots::alloc`] maps the run itself, as before.
//! A slot's first byte says what it holds ([`KIND_FREE`], `chunk::KIND_CHUNK`,
//! `pool::KIND_POOL`). Free slots form a LIFO list linked through the slot; fresh runs hand out
//! never-used slots from a bump cursor, so adding a run is O(1). Each run header counts its live
//! slots, so taking and giving back a slot stay O(1) (the run of a slot is its page, or the
//! first run if the slot lies in it).
//!
//! [`Roots::release_empty`] (called by `Heap::trim`) unmaps every run whose slots are all free,
//! except a *pinned* run: one whose slots do not start right after the header because the
//! caller keeps its own data there (the first descriptor run, which holds the heap state). It
//! marks the empty runs, rebuilds the free-slot list without their slots and unlinks them:
//! linear in the number of runs and free slots, which is fine for a call that is rare by design.
//! So the number of root pages follows the live descriptors and pools down again instead of
//! staying at their high-water mark.
//!
//! A pool handle is the address of its slot plus a generation number. Releasing runs keeps
//! handles safe to check: the page map says whether the address is still in a root run at all,
//! and a slot that is reused (in the same or a re-mapped run) holds another kind or a newer
//! generation, so a stale handle never matches.

use core::ptr::{self, NonNull};

use crate::error::InvariantError;
use crate::pagemap::{Entry, PageMap};
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

/// "kheaprt1" in the first 8 bytes of every root run.
pub const ROOT_MAGIC: u64 = u64::from_le_bytes(*b"kheaprt1");

/// Magic of a run that [`Roots::release_empty`] is about to unmap (only seen inside that call).
const RELEASE_MAGIC: u64 = u64::from_le_bytes(*b"kheaprt0");

/// `kind` byte of a free slot.
pub const KIND_FREE: u8 = 0xF5;

/// Header at offset 0 of every root run. 40 bytes.
#[derive(Debug)]
#[repr(C)]
pub struct RootHeader {
    /// [`ROOT_MAGIC`].
    pub magic: u64,
    /// The next run of the chain, or null.
    pub next: *mut RootHeader,
    /// Pages in this run.
    pub pages: u32,
    /// Offset of slot 0 from the start of the run.
    pub slot_offset: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Slots that fit in the run.
    pub slot_count: u32,
    /// Slots handed out at least once (the rest have never been used).
    pub slot_bump: u32,
    /// Slots of this run in use (handed out and not given back).
    pub live: u32,
}

impl RootHeader {
    /// Whether the caller keeps data between the header and the slots (the first descriptor
    /// run holds the heap state there): such a run is never released.
    fn is_pinned(&self) -> bool {
        self.slot_offset as usize != size_of::<RootHeader>()
    }
}

/// A slot on the free list.
#[repr(C)]
struct FreeSlot {
    kind: u8,
    next: *mut FreeSlot,
}

/// The smallest slot a chain can have: a free slot must hold its list link.
pub const MIN_SLOT: usize = size_of::<FreeSlot>();

const _: () = assert!(size_of::<RootHeader>() == 40);

/// A chain of root runs and the slot allocator over them. Lives in the heap state.
#[derive(Debug)]
pub struct Roots {
    /// First run (holds the heap state).
    first: *mut RootHeader,
    /// Last run (the one whose bump cursor hands out fresh slots).
    last: *mut RootHeader,
    /// Free slots, LIFO.
    free: *mut FreeSlot,
    /// Root runs in the chain.
    runs: usize,
    /// Pages of all root runs.
    pages: usize,
    /// Slots in use.
    live: usize,
    /// Bytes per slot.
    slot_size: usize,
}

impl Roots {
    /// A chain without runs; the first slot request maps one. `slot_size` must be at least
    /// [`MIN_SLOT`].
    pub const fn empty(slot_size: usize) -> Self {
        assert!(slot_size >= MIN_SLOT);
        Self {
            first: ptr::null_mut(),
            last: ptr::null_mut(),
            free: ptr::null_mut(),
            runs: 0,
            pages: 0,
            live: 0,
            slot_size,
        }
    }

    /// Starts the chain with a first run of `pages` pages at `base`, whose slots begin at
    /// `slot_offset` (the bytes between the header and `slot_offset` are the caller's).
    /// `slot_size` must be at least [`MIN_SLOT`].
    ///
    /// # Safety
    ///
    /// `base` must be `pages` pages from the heap's page source that stay mapped as long as the
    /// heap lives, with nothing else using the header or the bytes from `slot_offset` on.
    pub unsafe fn with_first_run(
        base: NonNull<u8>,
        pages: usize,
        slot_offset: usize,
        slot_size: usize,
    ) -> Self {
        assert!(slot_size >= MIN_SLOT);
        let header = base.as_ptr().cast::<RootHeader>();
        // SAFETY: the caller gives us the run; its first bytes are the header.
        unsafe { init_header(header, pages, slot_offset, slot_size) };
        Self {
            first: header,
            last: header,
            free: ptr::null_mut(),
            runs: 1,
            pages,
            live: 0,
            slot_size,
        }
    }

    /// Pages held by root runs.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Calls `f(run address, pages, live slots, slots)` for each run of the chain, first to last
    /// (read-only; for [`Heap::visit`](crate::Heap::visit)).
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut run = self.first;
        while !run.is_null() {
            // SAFETY: runs of the chain are live, and nothing writes them while `&self` lives.
            let h = unsafe { &*run };
            f(
                run.addr(),
                h.pages as usize,
                h.live as usize,
                h.slot_count as usize,
            );
            run = h.next;
        }
    }

    /// Slots in use.
    #[cfg(test)]
    pub fn live_slots(&self) -> usize {
        self.live
    }

    /// Whether the chain would like a spare run: it has runs, none after the last, no freed
    /// slot, and the last run has handed out at least half of its slots.
    pub fn wants_spare(&self) -> bool {
        // SAFETY: a non-null `last` is a live run of the chain.
        self.free.is_null()
            && !self.last.is_null()
            && unsafe {
                (*self.last).next.is_null() && (*self.last).slot_bump * 2 >= (*self.last).slot_count
            }
    }

    /// Maps a one-page run and chains it after the last run as the spare, which the next slot
    /// request that finds the last run full moves on to. One page-source call (and the page-map
    /// entry, from the map's spare node if it needs a node); on failure nothing changed.
    pub fn add_spare<S: PageSource>(
        &mut self,
        src: &mut S,
        map: &mut PageMap,
    ) -> Result<(), PageSourceError> {
        if self.last.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null `last` is a live run of the chain.
        if unsafe { !(*self.last).next.is_null() } {
            return Ok(());
        }
        let header = self.map_run(src, map)?;
        // SAFETY: `last` is live; the new run is not yet linked.
        unsafe { (*self.last).next = header };
        Ok(())
    }

    /// Maps a one-page run, records it in `map` and counts it; the caller links it.
    fn map_run<S: PageSource>(
        &mut self,
        src: &mut S,
        map: &mut PageMap,
    ) -> Result<*mut RootHeader, PageSourceError> {
        let page = src.map_pages(1)?;
        if let Err(e) = map.set(src, page, Entry::Root(page)) {
            // SAFETY: mapped just now, nothing handed out.
            unsafe { src.unmap_pages(page, 1) };
            return Err(e);
        }
        let header = page.as_ptr().cast::<RootHeader>();
        // SAFETY: a fresh page of ours.
        unsafe { init_header(header, 1, size_of::<RootHeader>(), self.slot_size) };
        self.runs += 1;
        self.pages += 1;
        Ok(header)
    }

    /// Takes a slot (its contents are unspecified; the caller writes its kind). O(1); when every
    /// slot is taken, moves on to the spare run if there is one, otherwise maps and chains a new
    /// one-page root run.
    pub fn alloc<S: PageSource>(
        &mut self,
        src: &mut S,
        map: &mut PageMap,
    ) -> Result<NonNull<u8>, PageSourceError> {
        if let Some(slot) = NonNull::new(self.free) {
            // SAFETY: slots on the free list are slots of our live runs with a `FreeSlot` in
            // them; `run_of` finds their run.
            unsafe {
                self.free = (*slot.as_ptr()).next;
                (*self.run_of(slot.cast())).live += 1;
            }
            self.live += 1;
            return Ok(slot.cast());
        }
        // SAFETY: a non-null `last` is a live run of the chain.
        let full =
            self.last.is_null() || unsafe { (*self.last).slot_bump == (*self.last).slot_count };
        if full {
            // SAFETY: a non-null `last` is a live run of the chain; a run after it is the spare,
            // live and unused.
            let spare = match unsafe { self.last.as_ref() } {
                Some(last) => last.next,
                None => ptr::null_mut(),
            };
            if spare.is_null() {
                let header = self.map_run(src, map)?;
                // SAFETY: a non-null `last` is a live run; the new run is not yet linked.
                match unsafe { self.last.as_mut() } {
                    Some(last) => last.next = header,
                    None => self.first = header,
                }
                self.last = header;
            } else {
                self.last = spare;
            }
        }
        let last = self.last;
        // SAFETY: `last` is live and has a never-used slot at `slot_bump`, inside the run.
        let slot = unsafe {
            let offset = (*last).slot_offset as usize + (*last).slot_bump as usize * self.slot_size;
            (*last).slot_bump += 1;
            (*last).live += 1;
            NonNull::new_unchecked(last.cast::<u8>().add(offset))
        };
        self.live += 1;
        Ok(slot)
    }

    /// Gives a slot back. O(1).
    ///
    /// # Safety
    ///
    /// `slot` must come from [`alloc`](Self::alloc) of these roots and not be freed already;
    /// nothing may use its old contents afterwards.
    pub unsafe fn free(&mut self, slot: NonNull<u8>) {
        let s = slot.as_ptr().cast::<FreeSlot>();
        // SAFETY: the slot is ours again; it is large and aligned enough for a `FreeSlot`; its
        // run is live and counts it.
        unsafe {
            s.write(FreeSlot {
                kind: KIND_FREE,
                next: self.free,
            });
            (*self.run_of(slot)).live -= 1;
        }
        self.free = s;
        self.live -= 1;
    }

    /// The run holding `slot`: the first run if the slot lies in it (it may span several pages),
    /// otherwise the slot's page (every later run is one page). O(1).
    fn run_of(&self, slot: NonNull<u8>) -> *mut RootHeader {
        let first = self.first;
        if !first.is_null() {
            // SAFETY: a non-null `first` is a live run, so its header is readable.
            let len = unsafe { (*first).pages } as usize * PAGE_SIZE;
            if slot.addr().get().wrapping_sub(first.addr()) < len {
                return first;
            }
        }
        slot.as_ptr()
            .map_addr(|a| a & !(PAGE_SIZE - 1))
            .cast::<RootHeader>()
    }

    /// Unmaps every run without a live slot, except a pinned one (see the module docs), forgets
    /// their pages in `map` and drops their slots from the free list. Returns the pages released.
    /// Linear in the number of runs and free slots.
    pub fn release_empty<S: PageSource>(&mut self, src: &mut S, map: &mut PageMap) -> usize {
        // 1. Mark the runs to release.
        let mut marked = 0;
        let mut run = self.first;
        while !run.is_null() {
            // SAFETY: runs of the chain are live and only the heap writes their headers.
            let h = unsafe { &mut *run };
            if h.live == 0 && !h.is_pinned() {
                h.magic = RELEASE_MAGIC;
                marked += 1;
            }
            run = h.next;
        }
        if marked == 0 {
            return 0;
        }
        // 2. Drop their slots from the free list, keeping the order of the others.
        let mut link: *mut *mut FreeSlot = &raw mut self.free;
        // SAFETY: `link` points at `self.free` or at the `next` field of a free slot of a live
        // run; free slots and run headers (`run_of`) of the chain are live until step 3.
        unsafe {
            while let Some(slot) = NonNull::new(*link) {
                if (*self.run_of(slot.cast())).magic == RELEASE_MAGIC {
                    *link = (*slot.as_ptr()).next;
                } else {
                    link = &raw mut (*slot.as_ptr()).next;
                }
            }
        }
        // 3. Unlink and unmap them.
        let mut released = 0;
        let mut last = ptr::null_mut();
        let mut link: *mut *mut RootHeader = &raw mut self.first;
        // SAFETY: `link` points at `self.first` or at the `next` field of a kept live run. A
        // marked run has no live slot and none of its free slots is listed any more, so nothing
        // refers into it: it is ours to unmap, as the `pages` pages it was mapped with.
        unsafe {
            while let Some(r) = NonNull::new(*link) {
                let h = r.as_ptr();
                if (*h).magic == RELEASE_MAGIC {
                    *link = (*h).next;
                    let pages = (*h).pages as usize;
                    map.clear_run(r.cast(), pages);
                    src.unmap_pages(r.cast(), pages);
                    self.runs -= 1;
                    self.pages -= pages;
                    released += pages;
                } else {
                    last = h;
                    link = &raw mut (*h).next;
                }
            }
        }
        self.last = last;
        released
    }

    /// The slot at `addr` inside the root run starting at `base`, if the run's slots are
    /// `slot_size` bytes (a run of that chain) and `addr` is exactly the start of a slot handed
    /// out at least once. O(1); inlined, so a constant `slot_size` makes the division a
    /// multiplication.
    ///
    /// # Safety
    ///
    /// `base` must be the start of a live root run of this heap (as the page map records it).
    #[inline]
    pub unsafe fn slot_at(base: NonNull<u8>, addr: usize, slot_size: usize) -> Option<NonNull<u8>> {
        let header = base.as_ptr().cast::<RootHeader>();
        // SAFETY: `base` is a live root run, so its header is readable.
        let h = unsafe { &*header };
        if h.magic != ROOT_MAGIC || h.slot_size as usize != slot_size || slot_size == 0 {
            return None;
        }
        let offset = addr.checked_sub(base.addr().get())?;
        let rel = offset.checked_sub(h.slot_offset as usize)?;
        if rel % slot_size != 0 || rel / slot_size >= h.slot_bump as usize {
            return None;
        }
        // SAFETY: in bounds of the run (below `slot_offset + slot_bump * SLOT_SIZE`).
        Some(unsafe { base.add(offset) })
    }

    /// Checks the chain and the slot accounting, calling `f(kind, slot)` for every slot handed
    /// out at least once, except free ones. Linear in the number of slots.
    pub fn check(
        &self,
        map: &PageMap,
        mut f: impl FnMut(u8, NonNull<u8>) -> Result<(), InvariantError>,
    ) -> Result<(), InvariantError> {
        let mut run = self.first;
        let (mut runs, mut pages, mut live, mut free) = (0, 0, 0, 0);
        let mut last: *mut RootHeader = ptr::null_mut();
        // Runs seen after `self.last`: at most one, the unused spare.
        let mut spares = 0;
        while let Some(r) = NonNull::new(run) {
            // SAFETY: runs of the chain are live.
            let h = unsafe { &*run };
            let addr = r.addr().get();
            let bad = InvariantError::RootPageCorrupt { addr };
            let end = h.slot_offset as usize + h.slot_count as usize * self.slot_size;
            // Every run but the first is one unpinned page (what `run_of` relies on).
            let later = runs > 0 && (h.pages != 1 || h.is_pinned());
            if h.magic != ROOT_MAGIC
                || h.slot_size as usize != self.slot_size
                || h.slot_bump > h.slot_count
                || end > h.pages as usize * PAGE_SIZE
                || h.pages == 0
                || later
            {
                return Err(bad);
            }
            for p in 0..h.pages as usize {
                if map.get(addr + p * PAGE_SIZE) != Entry::Root(r.cast()) {
                    return Err(InvariantError::PageMapMismatch {
                        addr: addr + p * PAGE_SIZE,
                    });
                }
            }
            let mut run_live = 0;
            for i in 0..h.slot_bump as usize {
                // SAFETY: slot `i < slot_bump` lies inside the run.
                let slot = unsafe {
                    r.cast::<u8>()
                        .add(h.slot_offset as usize + i * self.slot_size)
                };
                // SAFETY: every handed-out slot starts with its kind byte, written when it was
                // handed out or freed.
                let kind = unsafe { slot.as_ptr().read() };
                if kind == KIND_FREE {
                    free += 1;
                } else {
                    run_live += 1;
                    f(kind, slot)?;
                }
            }
            if h.live as usize != run_live {
                return Err(InvariantError::CountMismatch {
                    addr,
                    recorded: h.live as usize,
                    counted: run_live,
                });
            }
            if !last.is_null() && (last == self.last || spares > 0) {
                // A run after the last one is the spare: unused, and there is one at most.
                spares += 1;
                if spares > 1 || h.slot_bump != 0 || h.live != 0 {
                    return Err(bad);
                }
            } else {
                last = run;
            }
            live += run_live;
            runs += 1;
            pages += h.pages as usize;
            run = h.next;
        }
        if last != self.last {
            return Err(InvariantError::RootPageCorrupt {
                addr: self.last.addr(),
            });
        }
        let mut listed = 0;
        let mut s = self.free;
        while let Some(slot) = NonNull::new(s) {
            // A listed slot must lie in a root run of this chain's slot size, as the page map
            // records it, before it is read.
            let run = self.run_of(slot.cast());
            let in_chain = NonNull::new(run).is_some_and(|r| {
                map.get(s.addr()) == Entry::Root(r.cast())
                    // SAFETY: the page map says `run` is a live root run.
                    && unsafe { (*run).slot_size } as usize == self.slot_size
            });
            if !in_chain {
                return Err(InvariantError::FreeListCorrupt { addr: s.addr() });
            }
            // SAFETY: free-list members are free slots of our runs (checked just above).
            let fs = unsafe { &*s };
            if fs.kind != KIND_FREE || listed > free {
                return Err(InvariantError::FreeListCorrupt { addr: s.addr() });
            }
            listed += 1;
            s = fs.next;
        }
        let first = self.first.addr();
        if runs == 0 && !self.last.is_null() {
            return Err(InvariantError::RootPageCorrupt { addr: first });
        }
        for (recorded, counted) in [
            (self.runs, runs),
            (self.pages, pages),
            (self.live, live),
            (free, listed),
        ] {
            if recorded != counted {
                return Err(InvariantError::CountMismatch {
                    addr: first,
                    recorded,
                    counted,
                });
            }
        }
        Ok(())
    }
}

/// # Safety
///
/// `header` must be the writable start of a run of `pages` pages.
unsafe fn init_header(header: *mut RootHeader, pages: usize, slot_offset: usize, slot_size: usize) {
    let slot_offset = slot_offset.next_multiple_of(8);
    let slot_count = (pages * PAGE_SIZE).saturating_sub(slot_offset) / slot_size;
    // SAFETY: guaranteed by the caller.
    unsafe {
        header.write(RootHeader {
            magic: ROOT_MAGIC,
            next: ptr::null_mut(),
            pages: pages as u32,
            slot_offset: slot_offset as u32,
            slot_size: slot_size as u32,
            slot_count: slot_count as u32,
            slot_bump: 0,
            live: 0,
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ArenaSource;

    /// Two slot sizes (those of chunk descriptors and of pool headers, in a release build).
    const DESC_SLOT: usize = 32;
    const POOL_SLOT: usize = 344;

    #[test]
    fn slots_recycle_and_chain_new_runs() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let base = src.map_pages(1).unwrap();
        map.set(&mut src, base, Entry::Root(base)).unwrap();
        // SAFETY: `base` is a fresh page of ours.
        let mut roots = unsafe { Roots::with_first_run(base, 1, 1024, DESC_SLOT) };
        let per_page = (PAGE_SIZE - 40) / DESC_SLOT;
        let mut slots = std::vec::Vec::new();
        let n = (PAGE_SIZE - 1024) / DESC_SLOT + 2 * per_page + 1;
        for _ in 0..n {
            let s = roots.alloc(&mut src, &mut map).unwrap();
            // SAFETY: a slot we own.
            unsafe { s.as_ptr().write(0x11) };
            slots.push(s);
        }
        assert_eq!(roots.pages(), 4);
        assert_eq!(roots.live_slots(), n);
        roots.check(&map, |_, _| Ok(())).unwrap();
        // Every slot is findable from its root run, and nothing else is.
        for &s in &slots {
            let Entry::Root(run) = map.get(s.addr().get()) else {
                panic!()
            };
            // SAFETY: `run` is a live root run per the page map.
            let at = |addr, size| unsafe { Roots::slot_at(run, addr, size) };
            assert_eq!(at(s.addr().get(), DESC_SLOT), Some(s));
            assert_eq!(at(s.addr().get() + 8, DESC_SLOT), None);
            // A run of descriptor slots is not a run of pool slots.
            assert_eq!(at(s.addr().get(), POOL_SLOT), None);
        }
        for &s in slots.iter().rev().take(10) {
            // SAFETY: allocated above, freed once.
            unsafe { roots.free(s) };
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
        for _ in 0..10 {
            let s = roots.alloc(&mut src, &mut map).unwrap();
            // SAFETY: a slot we own.
            unsafe { s.as_ptr().write(0x11) };
        }
        assert_eq!(roots.pages(), 4);
        roots.check(&map, |_, _| Ok(())).unwrap();
    }

    /// The spare run is mapped ahead of need once the last run is half used, and the slot
    /// request that finds the last run full moves on to it without a page-source call.
    #[test]
    fn a_spare_run_is_chained_ahead_of_need_and_used_without_mapping() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let base = src.map_pages(1).unwrap();
        map.set(&mut src, base, Entry::Root(base)).unwrap();
        // SAFETY: `base` is a fresh page of ours; the caller's bytes (to 1024) pin it.
        let mut roots = unsafe { Roots::with_first_run(base, 1, 1024, DESC_SLOT) };
        let first = (PAGE_SIZE - 1024) / DESC_SLOT;
        let take = |roots: &mut Roots, src: &mut ArenaSource, map: &mut PageMap| {
            let s = roots.alloc(src, map).unwrap();
            // SAFETY: a slot we own.
            unsafe { s.as_ptr().write(0x11) };
            s
        };
        let mut slots = std::vec::Vec::new();
        while !roots.wants_spare() {
            slots.push(take(&mut roots, &mut src, &mut map));
        }
        assert_eq!(slots.len(), first.div_ceil(2), "wanted once half used");
        roots.add_spare(&mut src, &mut map).unwrap();
        assert!(!roots.wants_spare());
        assert_eq!(roots.pages(), 2);
        roots.check(&map, |_, _| Ok(())).unwrap();
        // A second spare is not added.
        let calls = src.map_calls();
        roots.add_spare(&mut src, &mut map).unwrap();
        assert_eq!(src.map_calls(), calls);
        // The rest of the first run, then the spare: no page-source call.
        while slots.len() < first + 1 {
            slots.push(take(&mut roots, &mut src, &mut map));
        }
        assert_eq!(src.map_calls(), calls);
        assert_eq!(roots.pages(), 2);
        roots.check(&map, |_, _| Ok(())).unwrap();
        // A freed slot is reused before any spare is wanted.
        // SAFETY: allocated above, freed once.
        unsafe { roots.free(slots.pop().unwrap()) };
        assert!(!roots.wants_spare());
        // An unused spare is released by `release_empty`, like any empty run.
        for s in slots.drain(first.div_ceil(2)..) {
            // SAFETY: allocated above, freed once.
            unsafe { roots.free(s) };
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
        assert_eq!(roots.release_empty(&mut src, &mut map), 1);
        roots.check(&map, |_, _| Ok(())).unwrap();
        assert_eq!(roots.pages(), 1);
        // Without a spare, a full chain still maps a run itself.
        while roots.pages() == 1 {
            slots.push(take(&mut roots, &mut src, &mut map));
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
    }

    #[test]
    fn empty_runs_are_released_except_the_pinned_first() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let base = src.map_pages(1).unwrap();
        map.set(&mut src, base, Entry::Root(base)).unwrap();
        // SAFETY: `base` is a fresh page of ours; the caller's bytes (to 1024) pin it.
        let mut roots = unsafe { Roots::with_first_run(base, 1, 1024, DESC_SLOT) };
        let first = (PAGE_SIZE - 1024) / DESC_SLOT;
        let per_page = (PAGE_SIZE - 40) / DESC_SLOT;
        let mut slots = std::vec::Vec::new();
        for _ in 0..first + 3 * per_page {
            let s = roots.alloc(&mut src, &mut map).unwrap();
            // SAFETY: a slot we own.
            unsafe { s.as_ptr().write(0x11) };
            slots.push(s);
        }
        assert_eq!(roots.pages(), 4);
        // Nothing to release while every run has a live slot.
        assert_eq!(roots.release_empty(&mut src, &mut map), 0);
        // Empty the first and the third later run, and half of the second.
        let runs: std::vec::Vec<_> = (0..3)
            .map(|r| first + r * per_page..first + (r + 1) * per_page)
            .collect();
        for i in runs[0]
            .clone()
            .chain(runs[2].clone())
            .chain(runs[1].clone().step_by(2))
        {
            // SAFETY: allocated above, freed once.
            unsafe { roots.free(slots[i]) };
        }
        roots.check(&map, |_, _| Ok(())).unwrap();
        let mapped = src.mapped_pages();
        assert_eq!(roots.release_empty(&mut src, &mut map), 2);
        assert_eq!((roots.pages(), src.mapped_pages()), (2, mapped - 2));
        roots.check(&map, |_, _| Ok(())).unwrap();
        assert_eq!(map.count().root, 2);
        // The free slots left are those of the half-empty run; then a new run is chained.
        for _ in 0..per_page.div_ceil(2) + 1 {
            let s = roots.alloc(&mut src, &mut map).unwrap();
            // SAFETY: a slot we own.
            unsafe { s.as_ptr().write(0x11) };
        }
        assert_eq!(roots.pages(), 3);
        roots.check(&map, |_, _| Ok(())).unwrap();
        // Freeing everything releases every run but the pinned first one.
        let mut run = roots.first;
        while !run.is_null() {
            // SAFETY: runs of the chain are live; mark every handed-out slot free for the test
            // by freeing the ones still live.
            let h = unsafe { &*run };
            for i in 0..h.slot_bump as usize {
                // SAFETY: slot `i < slot_bump` lies in the run.
                let slot = unsafe {
                    NonNull::new_unchecked(run.cast::<u8>())
                        .add(h.slot_offset as usize + i * DESC_SLOT)
                };
                // SAFETY: the kind byte of a handed-out slot is readable.
                if unsafe { slot.as_ptr().read() } != KIND_FREE {
                    // SAFETY: a live slot of these roots, freed once.
                    unsafe { roots.free(slot) };
                }
            }
            run = h.next;
        }
        assert_eq!(roots.release_empty(&mut src, &mut map), 2);
        assert_eq!(roots.pages(), 1);
        roots.check(&map, |_, _| Ok(())).unwrap();
        assert_eq!(src.mapped_pages(), 1 + map.nodes());
    }

    #[test]
    fn empty_chain_maps_its_first_run_lazily() {
        let mut src = ArenaSource::new(8);
        let mut map = PageMap::new();
        let mut roots = Roots::empty(POOL_SLOT);
        roots.check(&map, |_, _| Ok(())).unwrap();
        assert_eq!(roots.pages(), 0);
        let s = roots.alloc(&mut src, &mut map).unwrap();
        // SAFETY: a slot we own.
        unsafe { s.as_ptr().write(0x22) };
        assert_eq!(roots.pages(), 1);
        roots.check(&map, |_, _| Ok(())).unwrap();
        let Entry::Root(run) = map.get(s.addr().get()) else {
            panic!()
        };
        // SAFETY: a live root run per the page map.
        let found = unsafe { Roots::slot_at(run, s.addr().get(), POOL_SLOT) };
        assert_eq!(found, Some(s));
    }
}
