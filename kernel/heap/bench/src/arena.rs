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
//! * A [`PageArena`] also *moves* runs the way the kernel's heap window does (by their memory,
//!   not their bytes): on Linux x86_64, [`PageArena::move_pages`] exchanges the physical pages
//!   behind two ranges of the buffer with three `mremap` calls, so the run's pages appear at the
//!   new address and the free pages that were there take the old address. Every page of the
//!   buffer stays backed and touched (no page faults later, none in timed calls), the bitmap and
//!   the page counts are those of a map of the new run and an unmap of the old one, and the
//!   syscalls are paid inside the timed call that moves — the host's price for moving pages, as
//!   the kernel pays its page-table work. Elsewhere, or if a call fails, the move is a copy.

use std::ptr::{self, NonNull};

/// Page size of the arenas; the same as `kheap::PAGE_SIZE` (checked in `peers`).
pub const PAGE: usize = 4096;

/// One page-aligned buffer, written once at creation so that it is backed by real memory.
#[derive(Debug)]
pub struct ArenaMemory {
    base: NonNull<u8>,
    len: usize,
}

impl ArenaMemory {
    /// Allocates `len` bytes (rounded up to whole pages) aligned to 2 MiB ([`ARENA_ALIGN`]) and
    /// touches every page.
    ///
    /// On Linux x86_64 the buffer is a private anonymous mapping of its own (`mmap`), which is
    /// what [`PageArena::move_pages`] needs to move pages inside it with `mremap`; elsewhere it
    /// comes from the host allocator.
    pub fn new(len: usize) -> Self {
        let len = len.div_ceil(PAGE) * PAGE;
        assert!(len > 0, "the benchmark arena needs at least one page");
        let base = os::allocate(len).expect("cannot allocate the benchmark arena");
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
        // SAFETY: `base` and `len` are what `os::allocate` returned and took in `new`, and the
        // buffer is freed only here.
        unsafe { os::free(self.base, self.len) };
    }
}

/// Alignment of the arena buffer: 2 MiB makes it start on the same huge-page boundary in every
/// run, so that transparent huge pages (if the host uses them) treat every allocator alike.
const ARENA_ALIGN: usize = 2 << 20;

/// The buffer's memory and page moves: Linux x86_64 `mmap`/`mremap`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod os {
    use super::{ARENA_ALIGN, PAGE};
    use std::ptr::{self, NonNull};

    /// Maps `len` bytes (a non-zero multiple of [`PAGE`]) of private anonymous memory at a
    /// multiple of [`ARENA_ALIGN`]: maps `len + ARENA_ALIGN` bytes and unmaps the unaligned head
    /// and the tail around the aligned part.
    pub fn allocate(len: usize) -> Option<NonNull<u8>> {
        let total = len.checked_add(ARENA_ALIGN)?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let raw = raw.cast::<u8>();
        let head = (raw as usize).wrapping_neg() & (ARENA_ALIGN - 1);
        let tail = total - head - len;
        // SAFETY: the head and the tail lie inside the mapping just made, which nothing else
        // refers to; what stays is `len` bytes from `raw + head`.
        unsafe {
            if head > 0 {
                libc::munmap(raw.cast(), head);
            }
            if tail > 0 {
                libc::munmap(raw.add(head + len).cast(), tail);
            }
            NonNull::new(raw.add(head))
        }
    }

    /// Unmaps a buffer from [`allocate`] (with whatever pages [`swap`] moved into it).
    ///
    /// # Safety
    ///
    /// `base` and `len` are a buffer `allocate` returned, not freed yet, and nothing refers to
    /// it any more.
    pub unsafe fn free(base: NonNull<u8>, len: usize) {
        // SAFETY: the caller's contract: the whole range is our mapping and unused.
        unsafe { libc::munmap(base.as_ptr().cast(), len) };
    }

    /// Exchanges the physical pages behind `a` and `b` (`len` bytes each, page-aligned,
    /// disjoint, inside one buffer from [`allocate`]) and returns whether it did: afterwards `b`
    /// shows what `a` held and `a` what `b` held, without a byte copied. A scratch range is
    /// reserved (`mmap`, no access), then three `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)` calls
    /// move `b`'s pages to the scratch range, `a`'s to `b`, and the scratch pages to `a` (the
    /// scratch range is gone afterwards). After earlier exchanges a range may span several
    /// mappings (VMAs); Linux 6.17+ moves such a range in one `MREMAP_FIXED` call
    /// (`MREMAP_DONTUNMAP`, which would avoid the holes below, does not).
    ///
    /// Between the calls `b`, then `a`, is briefly a hole in the address space: a mapping made
    /// by another thread at that moment could land there and be replaced by the next call. The
    /// callers exchange pages only where the process has no other thread making mappings (the
    /// single-threaded sections: the threaded section's sources switch moving off).
    ///
    /// Answers `false` (nothing changed) if the scratch range cannot be reserved.
    ///
    /// # Panics
    ///
    /// If an `mremap` call fails: a move of several VMAs can fail half done, after which the
    /// arena's contents cannot be trusted, so the bench stops instead of measuring over it
    /// (never seen: it would take the process's VMA limit, `vm.max_map_count`).
    ///
    /// # Safety
    ///
    /// `a` and `b` are as above, nothing reads or writes either range during the call (the
    /// caller holds the only access to both), and no other thread of the process maps memory
    /// during it.
    pub unsafe fn swap(a: NonNull<u8>, b: NonNull<u8>, len: usize) -> bool {
        debug_assert!(len > 0 && len.is_multiple_of(PAGE));
        let (a, b) = (
            a.as_ptr().cast::<libc::c_void>(),
            b.as_ptr().cast::<libc::c_void>(),
        );
        // SAFETY: a fresh reservation at an address of the kernel's choosing touches no
        // existing memory.
        let scratch = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if scratch == libc::MAP_FAILED {
            return false;
        }
        let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        for (from, to) in [(b, scratch), (a, b), (scratch, a)] {
            // SAFETY: `from` and `to` are `len` bytes of our own private anonymous mappings:
            // page-aligned parts of the arena that no one else accesses (the caller's
            // contract), or the scratch range reserved above. The destination is always the
            // scratch reservation or a range just emptied by the previous call, so no other
            // mapping of the process is replaced (no other thread maps memory meanwhile).
            let moved = unsafe { libc::mremap(from, len, len, fixed, to) };
            assert!(
                moved != libc::MAP_FAILED,
                "arena: mremap of {len} bytes from {from:p} to {to:p} failed ({}): \
                 the arena's pages are no longer where the bench expects them",
                std::io::Error::last_os_error()
            );
        }
        true
    }
}

/// The buffer's memory elsewhere: the host allocator; pages never move (a move is a copy).
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod os {
    use super::ARENA_ALIGN;
    use std::alloc::{Layout, alloc, dealloc};
    use std::ptr::NonNull;

    /// Allocates `len` bytes (non-zero) aligned to [`ARENA_ALIGN`].
    pub fn allocate(len: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(len, ARENA_ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        NonNull::new(unsafe { alloc(layout) })
    }

    /// Frees a buffer from [`allocate`].
    ///
    /// # Safety
    ///
    /// `base` and `len` are a buffer `allocate` returned, not freed yet, and nothing refers to
    /// it any more.
    pub unsafe fn free(base: NonNull<u8>, len: usize) {
        let layout = Layout::from_size_align(len, ARENA_ALIGN).expect("checked in allocate");
        // SAFETY: the caller's contract; `allocate` used this very layout.
        unsafe { dealloc(base.as_ptr(), layout) };
    }

    /// Never exchanges pages here: the caller copies.
    ///
    /// # Safety
    ///
    /// None beyond the Linux version's (kept for the same signature).
    pub unsafe fn swap(_a: NonNull<u8>, _b: NonNull<u8>, _len: usize) -> bool {
        false
    }
}

/// A page-aligned run of memory handed to exactly one allocator instance. Made only by
/// [`ArenaMemory::region`]: a [`PageArena`] moves pages inside it with `mremap`, which is right
/// only for the arena's own mapping.
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
    /// Runs moved by their pages so far (not counting moves that fell back to a copy).
    moves: u64,
    /// Whether runs may be moved ([`remap_start`](Self::remap_start) and
    /// [`move_run`](Self::move_run) answer `None` otherwise): on where the host can move pages,
    /// off after the first failed exchange, and switchable for tests.
    moving: bool,
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
            moves: 0,
            moving: cfg!(all(target_os = "linux", target_arch = "x86_64")),
        }
    }

    /// Switches moving runs by their pages on or off (off: every move is the caller's copy).
    pub fn set_moving(&mut self, on: bool) {
        self.moving = on;
    }

    /// Runs moved by their pages so far.
    pub fn moves(&self) -> u64 {
        self.moves
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

    /// The first page of the run of `count` pages at `ptr`, if it lies inside the region and
    /// every page of it is mapped.
    fn mapped_run(&self, ptr: NonNull<u8>, count: usize) -> Option<usize> {
        let offset = (ptr.as_ptr() as usize).checked_sub(self.region.base.as_ptr() as usize)?;
        let first = offset / PAGE;
        let end = first.checked_add(count)?;
        (count > 0
            && offset.is_multiple_of(PAGE)
            && end <= self.pages
            && (first..end).all(|p| self.used(p)))
        .then_some(first)
    }

    /// Starts moving the mapped run of `count` pages at `ptr` to a new run of `new_count >=
    /// count` pages, as `kheap::PageSource::remap_pages` does: maps the new run (first fit) and
    /// returns it, the old run still mapped and untouched. The pages themselves move in
    /// [`remap_finish`](Self::remap_finish), when the move is kept: until then the new run's
    /// first `count` pages do **not** show the old bytes (see `ArenaSource` in `peers` for why
    /// the heap does not mind). `None` (nothing changed) if moving is off, the input is not a
    /// mapped run, or there is no room.
    pub fn remap_start(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        if !self.moving || new_count < count {
            return None;
        }
        self.mapped_run(ptr, count)?;
        self.map(new_count)
    }

    /// Ends a move that [`remap_start`](Self::remap_start) started. With `keep_new`, the old
    /// run's pages are exchanged with the first `count` pages of the new run (which then shows
    /// the old bytes) and the old run is unmapped; if the exchange fails, the bytes are copied
    /// instead and moving is switched off for the rest of the arena's life. Without it, the new
    /// run is unmapped and the old one was never touched.
    ///
    /// # Safety
    ///
    /// `old`, `count`, `new` and `new_count` are the arguments and the result of a
    /// `remap_start` call on this arena not finished yet, and nothing accesses either run
    /// during the call.
    pub unsafe fn remap_finish(
        &mut self,
        old: NonNull<u8>,
        count: usize,
        new: NonNull<u8>,
        new_count: usize,
        keep_new: bool,
    ) {
        if !keep_new {
            self.unmap(new, new_count);
            return;
        }
        // SAFETY: both runs are mapped by this arena, disjoint (the new one was free when the
        // old one was mapped) and at least `count` pages long; no one accesses them (caller).
        if unsafe { self.exchange(old, new, count) } {
            self.moves += 1;
        } else {
            self.moving = false;
            // SAFETY: as above; plain memory copy between two disjoint mapped runs.
            unsafe { ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), count * PAGE) };
        }
        self.unmap(old, count);
    }

    /// Moves the mapped run of `count` pages at `ptr` to a new run of `new_count >= count`
    /// pages in one step, as `mremap(MREMAP_MAYMOVE)` does (dlmalloc's `remap` hook): maps the
    /// new run, exchanges the old run's pages into its head and unmaps the old run. `None`
    /// (nothing changed: the caller copies) if moving is off, the input is not a mapped run,
    /// there is no room, or the exchange fails.
    ///
    /// # Safety
    ///
    /// Nothing accesses the old run during the call, and the caller uses the new run from then
    /// on instead of the old one.
    pub unsafe fn move_run(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        let new = self.remap_start(ptr, count, new_count)?;
        // SAFETY: the old run is mapped and unused during the call (caller), the new one was
        // mapped just now for us alone; they are disjoint.
        if unsafe { self.exchange(ptr, new, count) } {
            self.moves += 1;
            self.unmap(ptr, count);
            Some(new)
        } else {
            self.moving = false;
            self.unmap(new, new_count);
            None
        }
    }

    /// Exchanges the physical pages of the `count`-page runs at `a` and `b` (see
    /// [`os::swap`]) and returns whether it did; on `false` both runs hold what they held.
    ///
    /// # Safety
    ///
    /// Both runs are mapped by this arena and disjoint, and nothing accesses them during the
    /// call.
    unsafe fn exchange(&mut self, a: NonNull<u8>, b: NonNull<u8>, count: usize) -> bool {
        // SAFETY: both runs are page-aligned, disjoint parts of the one buffer the region comes
        // from (an `ArenaMemory`, mapped by `os::allocate`), untouched during the call (caller).
        unsafe { os::swap(a, b, count * PAGE) }
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
