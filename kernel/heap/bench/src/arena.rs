//! The memory every allocator under test gets: one fixed, page-aligned, pre-touched buffer.
//!
//! Design: the bench allocates a single [`ArenaMemory`] at start-up and writes every page of it once,
//! so page faults never land inside a timed region. Each allocator instance then borrows a prefix of
//! it as a [`Region`] for its whole life (allocators run one after another, never side by side).
//!
//! * Peers that manage a flat heap (talc, rlsf, linked_list_allocator, buddy, good_memory_allocator,
//!   bump) are handed the whole region up front.
//! * Allocators that grow by asking for pages (our heap through `kheap::PageSource`, dlmalloc
//!   through `dlmalloc::Allocator`) get them from a [`PageArena`]: the same region cut into 4 KiB
//!   pages with a first-fit page bitmap. It counts mapped pages, which is how the bench reports
//!   "memory returned after a full free" for them.

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;

/// Page size of the arenas; the same as `kheap::PAGE_SIZE` (checked in `peers`).
pub const PAGE: usize = 4096;

/// One page-aligned buffer, written once at creation so that it is backed by real memory.
#[derive(Debug)]
pub struct ArenaMemory {
    base: NonNull<u8>,
    len: usize,
}

impl ArenaMemory {
    /// Allocates `len` bytes (rounded up to whole pages) aligned to 2 MiB and touches every page.
    ///
    /// 2 MiB alignment makes the arena start on the same huge-page boundary in every run, so that
    /// transparent huge pages (if the host uses them) treat every allocator alike.
    pub fn new(len: usize) -> Self {
        const ALIGN: usize = 2 << 20;
        let len = len.div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(len, ALIGN).expect("arena size overflows");
        // SAFETY: `layout` has a non-zero size (callers pass at least one page).
        let raw = unsafe { alloc(layout) };
        let base = NonNull::new(raw).expect("cannot allocate the benchmark arena");
        // SAFETY: `base` points to `len` freshly allocated writable bytes.
        unsafe { base.as_ptr().write_bytes(0, len) };
        Self { base, len }
    }

    /// Size of the buffer in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first `len` bytes of the buffer as a region. The `&mut` borrow is what makes the
    /// region exclusive: nothing else can take a region while the returned one is in use.
    pub fn region(&mut self, len: usize) -> Region {
        assert!(
            len <= self.len,
            "region of {len} bytes exceeds the arena ({})",
            self.len
        );
        Region {
            base: self.base,
            len: len / PAGE * PAGE,
        }
    }
}

impl Drop for ArenaMemory {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, 2 << 20).expect("checked in new");
        // SAFETY: `base` was allocated in `new` with this very layout and is freed only here.
        unsafe { dealloc(self.base.as_ptr(), layout) };
    }
}

/// A page-aligned run of memory handed to exactly one allocator instance.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// First byte (page-aligned).
    pub base: NonNull<u8>,
    /// Length in bytes (a multiple of [`PAGE`]).
    pub len: usize,
}

/// A first-fit page allocator over a [`Region`]: one bit per page, set while mapped.
#[derive(Debug)]
pub struct PageArena {
    region: Region,
    pages: usize,
    bits: Vec<u64>,
    /// No page below this index is free (a search starts here).
    hint: usize,
    mapped: usize,
    peak: usize,
    /// Successful `map` calls so far.
    maps: u64,
    /// `unmap` calls so far.
    unmaps: u64,
}

impl PageArena {
    /// An arena with every page of `region` unmapped.
    pub fn new(region: Region) -> Self {
        let pages = region.len / PAGE;
        Self {
            region,
            pages,
            bits: vec![0; pages.div_ceil(64)],
            hint: 0,
            mapped: 0,
            peak: 0,
            maps: 0,
            unmaps: 0,
        }
    }

    /// The region the arena carves pages from.
    pub fn region(&self) -> Region {
        self.region
    }

    /// Pages mapped now and at most, and the calls so far.
    pub fn page_use(&self) -> kheap_workload::bench_alloc::PageUse {
        kheap_workload::bench_alloc::PageUse {
            mapped: self.mapped,
            peak: self.peak,
            maps: self.maps,
            unmaps: self.unmaps,
        }
    }

    fn used(&self, page: usize) -> bool {
        self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    /// First free page at or after `from`, if any.
    fn next_free(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        let mut free = !self.bits.get(word)? & (u64::MAX << (from % 64));
        loop {
            if free != 0 {
                let page = word * 64 + free.trailing_zeros() as usize;
                return (page < self.pages).then_some(page);
            }
            word += 1;
            free = !*self.bits.get(word)?;
        }
    }

    fn set(&mut self, first: usize, count: usize, used: bool) {
        for page in first..first + count {
            let (word, bit) = (page / 64, 1u64 << (page % 64));
            if used {
                self.bits[word] |= bit;
            } else {
                self.bits[word] &= !bit;
            }
        }
    }

    /// Maps `count` contiguous pages (first fit) and returns the first one.
    pub fn map(&mut self, count: usize) -> Option<NonNull<u8>> {
        if count == 0 {
            return None;
        }
        let mut start = self.next_free(self.hint)?;
        loop {
            if start + count > self.pages {
                return None;
            }
            match (start..start + count).find(|&p| self.used(p)) {
                None => break,
                Some(used) => start = self.next_free(used + 1)?,
            }
        }
        Some(self.take(start, count))
    }

    /// Maps the free run of `count` pages at page `start` (inside the region) and returns it.
    fn take(&mut self, start: usize, count: usize) -> NonNull<u8> {
        self.set(start, count, true);
        if start == self.hint {
            self.hint = start + count;
        }
        self.mapped += count;
        self.peak = self.peak.max(self.mapped);
        self.maps += 1;
        // SAFETY: `start + count <= pages` (the caller's search), so the offset stays inside the
        // region.
        unsafe { self.region.base.add(start * PAGE) }
    }

    /// Maps `count` contiguous pages whose page `aligned_page` starts at a multiple of `align`
    /// (a power of two, at least a page): the first such free run, found by trying the aligned
    /// lines of the region in turn. Only the run's pages are mapped.
    pub fn map_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Option<NonNull<u8>> {
        kheap::source::aligned_slack(count, align, aligned_page).ok()?;
        let base = self.region.base.as_ptr() as usize;
        let mut start = kheap::source::aligned_offset(base, align, aligned_page) / PAGE;
        while start + count <= self.pages {
            if !(start..start + count).any(|p| self.used(p)) {
                return Some(self.take(start, count));
            }
            start += align / PAGE;
        }
        None
    }

    /// Maps the `extra` pages right after the `count` mapped pages at `ptr`, if all of them are
    /// free, and returns whether it did: a mapping growing in place (the kernel's heap window
    /// does the same with its buddy allocator). Any input gets an answer; `false` changes
    /// nothing.
    pub fn grow(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let Some(offset) = (ptr.as_ptr() as usize).checked_sub(self.region.base.as_ptr() as usize)
        else {
            return false;
        };
        let Some(end) = (offset / PAGE).checked_add(count) else {
            return false;
        };
        if extra == 0
            || !offset.is_multiple_of(PAGE)
            || end.checked_add(extra).is_none_or(|last| last > self.pages)
            || (end..end + extra).any(|p| self.used(p))
        {
            return false;
        }
        self.set(end, extra, true);
        self.mapped += extra;
        self.peak = self.peak.max(self.mapped);
        self.maps += 1;
        true
    }

    /// Unmaps `count` pages starting at `ptr`.
    ///
    /// # Panics
    ///
    /// If the range is not page-aligned, not inside the region, or not fully mapped: that is a
    /// bug in the allocator under test, and the bench must not hide it.
    pub fn unmap(&mut self, ptr: NonNull<u8>, count: usize) {
        let offset = (ptr.as_ptr() as usize)
            .checked_sub(self.region.base.as_ptr() as usize)
            .expect("unmap below the arena");
        assert!(
            offset.is_multiple_of(PAGE),
            "unmap of an unaligned address {ptr:p}"
        );
        let first = offset / PAGE;
        assert!(
            first + count <= self.pages,
            "unmap past the end of the arena"
        );
        assert!(
            (first..first + count).all(|p| self.used(p)),
            "unmap of pages that are not mapped"
        );
        self.set(first, count, false);
        self.hint = self.hint.min(first);
        self.mapped -= count;
        self.unmaps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_holes_and_counts_pages() {
        let mut memory = ArenaMemory::new(64 * PAGE);
        let mut arena = PageArena::new(memory.region(64 * PAGE));
        let a = arena.map(3).unwrap();
        let b = arena.map(2).unwrap();
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 3 * PAGE);
        arena.unmap(a, 3);
        let c = arena.map(4).unwrap(); // does not fit the 3-page hole
        assert_eq!(c.as_ptr() as usize - a.as_ptr() as usize, 5 * PAGE);
        let d = arena.map(3).unwrap(); // fits it exactly
        assert_eq!(d, a);
        assert_eq!(arena.page_use().mapped, 9);
        assert!(arena.map(64).is_none());
        assert_eq!(arena.page_use().peak, 9);
    }
}
