//! Test support (feature `testing`, and the crate's own tests): a page source over a fixed
//! arena and a small deterministic PRNG, for unit tests, the model-based tests, benchmarks and
//! fuzzing on the host. Works under Miri with `-Zmiri-strict-provenance`: every page pointer is
//! derived from the arena's base pointer.

use core::ptr::{self, NonNull};
use std::alloc::{Layout, alloc, dealloc};
use std::vec::Vec;

use crate::source::{PAGE_SIZE, PageSource, PageSourceError, aligned_offset, aligned_slack};

/// Byte freshly mapped pages are filled with (so code that expects zeroes fails).
pub const MAP_FILL: u8 = 0xA5;
/// Byte unmapped pages are filled with (so stale reads see garbage).
pub const UNMAP_FILL: u8 = 0xDD;

/// xorshift64*: a tiny, fast, seedable PRNG (not for cryptography).
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A [`PageSource`] over one fixed, page-aligned arena from the host allocator, carved by a
/// first-fit page bitmap. It can be told to fail after a number of maps or at random, counts
/// mapped pages, fills pages with [`MAP_FILL`] when mapped and [`UNMAP_FILL`] when unmapped, and
/// panics on an unmap of pages it has not mapped (a heap bug).
#[derive(Debug)]
pub struct ArenaSource {
    base: NonNull<u8>,
    pages: usize,
    /// Alignment of the arena (at least a page).
    align: usize,
    used: Vec<u64>,
    mapped: usize,
    peak: usize,
    map_calls: usize,
    grow_calls: usize,
    remap_calls: usize,
    remaps: bool,
    fail_after: Option<usize>,
    fail_one_in: u64,
    rng: XorShift64,
    hint: usize,
}

// SAFETY: the arena is owned by the source alone; nothing in it is tied to a thread.
unsafe impl Send for ArenaSource {}

impl ArenaSource {
    /// An arena of `pages` pages, all unmapped.
    pub fn new(pages: usize) -> Self {
        Self::aligned(pages, PAGE_SIZE)
    }

    /// An arena of `pages` pages whose first page is aligned to `align` (a power of two, at
    /// least [`PAGE_SIZE`]): where its pages fall relative to 2 MiB or larger lines (page-map
    /// nodes, aligned runs) is then the same in every run.
    pub fn aligned(pages: usize, align: usize) -> Self {
        let align = align.max(PAGE_SIZE);
        let base = if pages == 0 {
            NonNull::<u8>::dangling()
        } else {
            let layout = Layout::from_size_align(pages * PAGE_SIZE, align).expect("arena size");
            // SAFETY: non-zero size.
            NonNull::new(unsafe { alloc(layout) }).expect("host out of memory for the arena")
        };
        Self {
            base,
            pages,
            align,
            used: std::vec![0; pages.div_ceil(64)],
            mapped: 0,
            peak: 0,
            map_calls: 0,
            grow_calls: 0,
            remap_calls: 0,
            remaps: true,
            fail_after: None,
            fail_one_in: 0,
            rng: XorShift64::new(1),
            hint: 0,
        }
    }

    /// After `n` more successful maps, every map fails (`None`: never).
    pub fn fail_after(&mut self, n: Option<usize>) {
        self.fail_after = n;
    }

    /// Each map fails with probability `1 / one_in` (0: never), drawn from a PRNG seeded with
    /// `seed`.
    pub fn fail_randomly(&mut self, seed: u64, one_in: u64) {
        self.rng = XorShift64::new(seed);
        self.fail_one_in = one_in;
    }

    /// Pages currently mapped.
    pub fn mapped_pages(&self) -> usize {
        self.mapped
    }

    /// Most pages ever mapped at once.
    pub fn peak_pages(&self) -> usize {
        self.peak
    }

    /// Successful `map_pages` calls so far.
    pub fn map_calls(&self) -> usize {
        self.map_calls
    }

    /// Successful `grow_pages` calls so far.
    pub fn grow_calls(&self) -> usize {
        self.grow_calls
    }

    /// Successful `remap_pages` calls so far.
    pub fn remap_calls(&self) -> usize {
        self.remap_calls
    }

    /// Whether `remap_pages` moves runs (the default) or always answers `None`, as a source
    /// without the method does.
    pub fn set_remaps(&mut self, on: bool) {
        self.remaps = on;
    }

    /// Size of the arena in pages.
    pub fn capacity(&self) -> usize {
        self.pages
    }

    /// Whether the page holding `addr` is currently mapped.
    pub fn is_mapped(&self, addr: usize) -> bool {
        let Some(off) = addr.checked_sub(self.base.addr().get()) else {
            return false;
        };
        let page = off / PAGE_SIZE;
        page < self.pages && self.bit(page)
    }

    fn bit(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }

    fn set(&mut self, page: usize, on: bool) {
        if on {
            self.used[page / 64] |= 1 << (page % 64);
        } else {
            self.used[page / 64] &= !(1 << (page % 64));
        }
    }

    /// Whether the failure injection refuses this call (counting it against `fail_after`).
    fn refuse(&mut self) -> bool {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                return true;
            }
            *n -= 1;
        }
        self.fail_one_in != 0 && self.rng.one_in(self.fail_one_in)
    }

    /// Maps the free run of `count` pages at page `start` (inside the arena) and returns it.
    fn take(&mut self, start: usize, count: usize) -> NonNull<u8> {
        for p in start..start + count {
            self.set(p, true);
        }
        self.hint = start + count;
        self.mapped += count;
        self.peak = self.peak.max(self.mapped);
        self.map_calls += 1;
        // SAFETY: `start + count <= pages` (the caller's search), so the run is inside the arena.
        let run = unsafe { self.base.add(start * PAGE_SIZE) };
        // SAFETY: the run is inside the arena and now ours to hand out.
        unsafe { run.as_ptr().write_bytes(MAP_FILL, count * PAGE_SIZE) };
        run
    }

    /// The first page of the run of `count` pages at `ptr`, if every one of them is mapped.
    fn mapped_run(&self, ptr: NonNull<u8>, count: usize) -> Option<usize> {
        let off = ptr.addr().get().checked_sub(self.base.addr().get())?;
        let first = off / PAGE_SIZE;
        let end = first.checked_add(count)?;
        (off.is_multiple_of(PAGE_SIZE) && count > 0 && end <= self.pages)
            .then_some(first)
            .filter(|_| (first..end).all(|p| self.bit(p)))
    }

    /// First run of `count` free pages at or after `from`.
    fn find(&self, from: usize, count: usize) -> Option<usize> {
        let mut start = from;
        let mut i = from;
        while i < self.pages {
            if i % 64 == 0 && self.used[i / 64] == u64::MAX {
                i += 64;
                start = i;
                continue;
            }
            if self.bit(i) {
                start = i + 1;
            } else if i + 1 - start == count {
                return Some(start);
            }
            i += 1;
        }
        None
    }
}

impl Drop for ArenaSource {
    fn drop(&mut self) {
        if self.pages != 0 {
            let layout = Layout::from_size_align(self.pages * PAGE_SIZE, self.align).unwrap();
            // SAFETY: allocated in `aligned` with this layout.
            unsafe { dealloc(self.base.as_ptr(), layout) };
        }
    }
}

// SAFETY: runs handed out are disjoint (the bitmap), page aligned (the arena is), inside the
// arena (which lives as long as the source), and freed only through `unmap_pages`; an aligned
// run starts where `aligned_offset` says its page `aligned_page` is aligned.
unsafe impl PageSource for ArenaSource {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 {
            return Err(PageSourceError::InvalidRequest);
        }
        if self.refuse() {
            return Err(PageSourceError::OutOfMemory);
        }
        if count > self.pages - self.mapped {
            return Err(PageSourceError::OutOfMemory);
        }
        let start = match self.find(self.hint, count) {
            Some(s) => s,
            None => self
                .find(0, count)
                .ok_or(PageSourceError::OutOfAddressSpace)?,
        };
        Ok(self.take(start, count))
    }

    /// The first free run of the arena whose page `aligned_page` is aligned (candidates are
    /// `align` apart, so the search is short); only its `count` pages are mapped.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        aligned_slack(count, align, aligned_page)?;
        if self.refuse() {
            return Err(PageSourceError::OutOfMemory);
        }
        if count > self.pages - self.mapped {
            return Err(PageSourceError::OutOfMemory);
        }
        let step = align / PAGE_SIZE;
        let mut start = aligned_offset(self.base.addr().get(), align, aligned_page) / PAGE_SIZE;
        while start + count <= self.pages {
            if (start..start + count).all(|p| !self.bit(p)) {
                return Ok(self.take(start, count));
            }
            start += step;
        }
        Err(PageSourceError::OutOfAddressSpace)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        let off = ptr
            .addr()
            .get()
            .checked_sub(self.base.addr().get())
            .expect("unmap of a page outside the arena");
        assert_eq!(
            off % PAGE_SIZE,
            0,
            "unmap of an unaligned pointer {:#x}",
            ptr.addr()
        );
        let first = off / PAGE_SIZE;
        assert!(first + count <= self.pages, "unmap beyond the arena");
        for p in first..first + count {
            assert!(self.bit(p), "unmap of page {p} that is not mapped");
            self.set(p, false);
        }
        self.mapped -= count;
        self.hint = self.hint.min(first);
        // SAFETY: the pages are inside the arena; the caller holds no references into them.
        unsafe { ptr.as_ptr().write_bytes(UNMAP_FILL, count * PAGE_SIZE) };
    }

    /// Maps the `extra` pages after the run if they are all free (and the failure injection,
    /// which applies here too, lets it). Every page of the arena derives from its base pointer,
    /// so the grown pages are reachable from `ptr`.
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let Some(off) = ptr.addr().get().checked_sub(self.base.addr().get()) else {
            return false;
        };
        if !off.is_multiple_of(PAGE_SIZE) || extra == 0 {
            return false;
        }
        let Some(end) = (off / PAGE_SIZE).checked_add(count) else {
            return false;
        };
        if end.checked_add(extra).is_none_or(|last| last > self.pages)
            || (end..end + extra).any(|p| self.bit(p))
        {
            return false;
        }
        if self.refuse() {
            return false;
        }
        for p in end..end + extra {
            self.set(p, true);
        }
        self.mapped += extra;
        self.peak = self.peak.max(self.mapped);
        self.grow_calls += 1;
        // SAFETY: `end + extra <= pages`: the new pages are inside the arena and now ours.
        unsafe {
            self.base
                .as_ptr()
                .add(end * PAGE_SIZE)
                .write_bytes(MAP_FILL, extra * PAGE_SIZE);
        }
        true
    }

    /// Moves by copying (plain memory has no frames to move): maps a free run of `new_count`
    /// pages (first fit, failure injection applies) and copies the old run's pages into it.
    /// Answers `None` for a run that is not wholly mapped, and when remaps are switched off.
    fn remap_pages(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        let first = self.mapped_run(ptr, count)?;
        if !self.remaps || new_count < count || new_count > self.pages - self.mapped {
            return None;
        }
        if self.refuse() {
            return None;
        }
        let start = self
            .find(self.hint, new_count)
            .or_else(|| self.find(0, new_count))?;
        let map_calls = self.map_calls;
        let new = self.take(start, new_count);
        self.map_calls = map_calls;
        self.remap_calls += 1;
        // SAFETY: both runs are inside the arena and disjoint (the new one was free, the old
        // one mapped), and the old one holds `count` pages.
        unsafe {
            ptr::copy_nonoverlapping(
                self.base.as_ptr().add(first * PAGE_SIZE),
                new.as_ptr(),
                count * PAGE_SIZE,
            );
        }
        Some(new)
    }

    unsafe fn finish_remap(
        &mut self,
        old: NonNull<u8>,
        count: usize,
        new: NonNull<u8>,
        new_count: usize,
        keep_new: bool,
    ) {
        // SAFETY: both runs are mapped (the caller's contract) and the one that goes is given
        // up by the caller.
        unsafe {
            if keep_new {
                self.unmap_pages(old, count);
            } else {
                self.unmap_pages(new, new_count);
            }
        }
    }

    /// The whole arena: one allocation from the host allocator, from whose base pointer every
    /// page is derived.
    fn window(&self) -> Option<NonNull<[u8]>> {
        (self.pages != 0).then(|| NonNull::slice_from_raw_parts(self.base, self.pages * PAGE_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_maps_disjoint_runs_and_reuses_holes() {
        let mut a = ArenaSource::new(70);
        let x = a.map_pages(3).unwrap();
        let y = a.map_pages(64).unwrap();
        assert_eq!(y.addr().get() - x.addr().get(), 3 * PAGE_SIZE);
        assert_eq!(x.addr().get() % PAGE_SIZE, 0);
        assert!(a.map_pages(4).is_err());
        // SAFETY: mapped above.
        unsafe { a.unmap_pages(x, 2) };
        assert_eq!(a.mapped_pages(), 65);
        assert_eq!(a.map_pages(2).unwrap(), x);
        a.fail_after(Some(0));
        assert!(a.map_pages(1).is_err());
        a.fail_after(None);
        a.fail_randomly(3, 1);
        assert!(a.map_pages(1).is_err());
    }

    #[test]
    fn prng_is_deterministic_and_in_range() {
        let mut r = XorShift64::new(7);
        let mut s = XorShift64::new(7);
        for _ in 0..1000 {
            let v = r.range(3, 9);
            assert!((3..=9).contains(&v));
            assert_eq!(v, s.range(3, 9));
        }
    }
}
