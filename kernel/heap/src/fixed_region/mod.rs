//! [`FixedRegion`]: a [`PageSource`] over memory that is already mapped — a static array, or a
//! `start..start + size` range a kernel mapped for its heap — so a kernel adopts the heap with
//! one `static` and at most one `init` call.
//!
//! ```text
//!   region as given   ┌─┬──────────┬───────────────────────────────────────────────┬─┐
//!                     │ │ run tree │ pages handed out and back                     │ │
//!                     └─┴──────────┴───────────────────────────────────────────────┴─┘
//!                      ▲  ▲ first page(s): bitmap + summaries     unaligned ends ▲
//!          cut to whole pages            (about 1/4600 of the region)   are not used
//! ```
//!
//! Construction is `const` and touches nothing (a static array has no address at compile
//! time); the first `map_pages` cuts the region to whole pages and writes its bookkeeping, a
//! [run tree](run_tree) (a free-page bitmap with a summary tree over its words), into the
//! region's first pages. So the metadata costs about one page per 18 MiB, the source itself is a
//! few words, and a run of any length is found, taken, grown or given back in
//! O(log pages + length / 64).
//!
//! What the heap's optional [`PageSource`] methods get here: [`window`](PageSource::window) is
//! the region (release builds free small blocks without a page-map lookup),
//! [`grow_pages`](PageSource::grow_pages) takes the pages right after a run when they are free
//! (a growing `realloc` of a large block stays in place), and
//! [`map_pages_aligned`](PageSource::map_pages_aligned) places an over-aligned run on an aligned
//! page and takes only the run.

use core::ptr::NonNull;

use crate::source::{PAGE_SIZE, PageSource, PageSourceError, aligned_offset, aligned_slack};

mod run_tree;

use run_tree::{RunTree, Summary};

/// The run tree over the region's metadata, for a change.
type TreeMut<'a> = RunTree<&'a mut [u64], &'a mut [Summary]>;

/// A [`PageSource`] over a fixed, already mapped region of memory.
///
/// ```
/// use kheap::{FixedRegion, LockedHeap, SpinLock};
///
/// #[repr(C, align(4096))]
/// struct Arena([u8; 1 << 20]);
/// static mut ARENA: Arena = Arena([0; 1 << 20]);
///
/// // SAFETY: the arena is used by this heap alone.
/// static HEAP: LockedHeap<SpinLock, FixedRegion> =
///     LockedHeap::new(unsafe { FixedRegion::array(&raw mut ARENA.0) });
///
/// let mut heap = HEAP.lock().unwrap();
/// let block = heap.allocate(core::alloc::Layout::new::<[u64; 4]>()).unwrap();
/// // SAFETY: allocated just above with this layout.
/// unsafe { heap.deallocate(block, core::alloc::Layout::new::<[u64; 4]>()) };
/// assert_eq!(heap.source().pages(), 255); // 256 pages, one for the run tree
/// ```
///
/// An array of no particular alignment loses the partial pages at its ends (wrap it in a
/// `#[repr(align(4096))]` type, as above, to use all of it).
#[derive(Debug)]
pub struct FixedRegion {
    /// The region as given.
    start: *mut u8,
    size: usize,
    /// Set up on first use.
    layout: Option<Layout>,
    /// Pages handed out now.
    mapped: usize,
}

/// Where things are in the region, worked out on first use.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The first whole page of the region (the run tree's first word).
    meta: NonNull<u8>,
    /// The first page handed out (page 0 of the run tree).
    first: NonNull<u8>,
    /// Pages handed out and back.
    pages: usize,
}

// SAFETY: the source owns the region exclusively (the contract of its constructors); nothing in
// it is tied to a thread.
unsafe impl Send for FixedRegion {}

impl FixedRegion {
    /// A source over the `size` bytes at `start`. Takes nothing yet: the first `map_pages`
    /// sets the region up.
    ///
    /// # Safety
    ///
    /// `start .. start + size` must be memory that is readable and writable (mapped, for a
    /// kernel) for as long as the source or any page it handed out is used, and that nothing
    /// else reads or writes meanwhile: the source and the heap over it own it. (`start` may be
    /// made from an address, `HEAP_START as *mut u8`, where the kernel mapped the range.)
    pub const unsafe fn new(start: *mut u8, size: usize) -> Self {
        Self {
            start,
            size,
            layout: None,
            mapped: 0,
        }
    }

    /// A source over a static array: `unsafe { FixedRegion::array(&raw mut ARENA) }`.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new): the array must not be used by anything else while the source
    /// (or a page it handed out) is in use.
    pub const unsafe fn array<const N: usize>(arena: *mut [u8; N]) -> Self {
        // SAFETY: the caller's guarantees are `new`'s, for the array's `N` bytes.
        unsafe { Self::new(arena.cast(), N) }
    }

    /// Pages the source hands out (the whole pages of the region less the run tree's); 0 until
    /// the first `map_pages` has set the region up.
    pub fn pages(&self) -> usize {
        self.layout.map_or(0, |l| l.pages)
    }

    /// Pages handed out now.
    pub fn mapped_pages(&self) -> usize {
        self.mapped
    }

    /// Pages free now (all of them before the first use).
    pub fn free_pages(&self) -> usize {
        match self.layout {
            Some(l) => l.pages - self.mapped,
            None => self.usable_pages(),
        }
    }

    /// The longest run of free pages (before the first use: every page the region will have).
    pub fn largest_free_run(&self) -> usize {
        match self.tree() {
            Some(t) => t.largest_free(),
            None => self.usable_pages(),
        }
    }

    /// Calls `f(start, length)` for each run of free pages, in address order (for pictures and
    /// reports; O(pages / 64)).
    pub fn for_each_free_run(&self, mut f: impl FnMut(NonNull<u8>, usize)) {
        let (Some(t), Some(l)) = (self.tree(), self.layout) else {
            // Not set up yet: all of it will be free.
            if let Some(l) = self.plan() {
                f(l.first, l.pages);
            }
            return;
        };
        for (start, len) in t.free_runs() {
            // SAFETY: `start` is a page of the tree, inside the region.
            f(unsafe { l.first.add(start * PAGE_SIZE) }, len);
        }
    }

    /// The region cut to whole pages: its first page and page count.
    fn whole_pages(&self) -> (usize, usize) {
        let addr = self.start.addr();
        let skip = addr.wrapping_neg() % PAGE_SIZE;
        let pages = self.size.saturating_sub(skip) / PAGE_SIZE;
        if pages == 0 { (0, 0) } else { (skip, pages) }
    }

    /// Pages a region of this size hands out once the run tree is carved off.
    fn usable_pages(&self) -> usize {
        split(self.whole_pages().1).1
    }

    /// The run tree, if the region is set up, to read.
    fn tree(&self) -> Option<RunTree<&[u64], &[Summary]>> {
        let l = self.layout?;
        let (words, nodes) = meta_parts(l);
        // SAFETY: `setup` formatted the metadata of `l` (so every word and node is initialised)
        // and the source owns it; `&self` keeps the `&mut self` methods, the only writers, from
        // running while these shared slices live.
        Some(unsafe { RunTree::new(words.as_ref(), nodes.as_ref(), l.pages) })
    }

    /// The run tree for a change, setting the region up on first use.
    fn tree_mut(&mut self) -> Option<(TreeMut<'_>, Layout)> {
        if self.layout.is_none() {
            self.setup();
        }
        let l = self.layout?;
        let (mut words, mut nodes) = meta_parts(l);
        // SAFETY: as in `tree`; `&mut self` makes these the only slices of the metadata.
        Some((
            unsafe { RunTree::new(words.as_mut(), nodes.as_mut(), l.pages) },
            l,
        ))
    }

    /// Where the run tree and the pages go: the region cut to whole pages, the tree at its
    /// start. `None` if no page would be left to hand out.
    fn plan(&self) -> Option<Layout> {
        let (skip, whole) = self.whole_pages();
        let (meta_pages, pages) = split(whole);
        if pages == 0 {
            return None;
        }
        // SAFETY: `skip + whole * PAGE_SIZE <= size`, so both pointers lie in the region (and
        // are not null: the region is memory).
        let (meta, first) = unsafe {
            let meta = NonNull::new_unchecked(self.start.add(skip));
            (meta, meta.add(meta_pages * PAGE_SIZE))
        };
        Some(Layout { meta, first, pages })
    }

    /// Carves the run tree off the region's start ([`plan`](Self::plan)) and formats it.
    #[cold]
    fn setup(&mut self) {
        let Some(layout) = self.plan() else {
            return;
        };
        let pages = layout.pages;
        let (mut words, mut nodes) = meta_parts(layout);
        // SAFETY: the metadata pages are ours (the constructor's contract) and nothing else
        // refers to them; every bit pattern is a valid `u64` and `Summary`, and `format` writes
        // every word and node before any is read.
        let mut tree = unsafe { RunTree::new(words.as_mut(), nodes.as_mut(), pages) };
        tree.format();
        self.layout = Some(layout);
    }

    /// The index of the page at `ptr`, if it is a page of this source.
    fn index_of(l: Layout, ptr: NonNull<u8>) -> Option<usize> {
        let off = ptr.addr().get().checked_sub(l.first.addr().get())?;
        (off % PAGE_SIZE == 0 && off / PAGE_SIZE < l.pages).then_some(off / PAGE_SIZE)
    }

    /// Takes pages `start..start + count` (free), counts them and returns the first.
    fn take(&mut self, start: usize, count: usize) -> NonNull<u8> {
        let Some((mut tree, l)) = self.tree_mut() else {
            unreachable!("pages are taken from a set-up region");
        };
        tree.set(start, count, false);
        self.mapped += count;
        // SAFETY: the run lies inside the tree's pages, inside the region.
        unsafe { l.first.add(start * PAGE_SIZE) }
    }

    /// The error for a request of `count` pages that found no run.
    fn refusal(&self, count: usize) -> PageSourceError {
        if count > self.free_pages() {
            PageSourceError::OutOfMemory
        } else {
            PageSourceError::OutOfAddressSpace
        }
    }
}

/// How many of `whole` pages the run tree takes, and how many are left to hand out.
const fn split(whole: usize) -> (usize, usize) {
    // meta(p) grows with p, so the largest p with meta(p) fitting in `whole - p` pages is found
    // by counting meta pages up: a handful of steps (one meta page covers ~18 MiB).
    let mut meta = 1;
    while meta < whole {
        let pages = whole - meta;
        if run_tree::meta_bytes(pages) <= meta * PAGE_SIZE {
            return (meta, pages);
        }
        meta += 1;
    }
    (whole, 0)
}

/// The run tree's two arrays in the metadata pages of `l`: the bitmap words, then the
/// summaries.
fn meta_parts(l: Layout) -> (NonNull<[u64]>, NonNull<[Summary]>) {
    let (words, nodes) = run_tree::shape(l.pages);
    let w = l.meta.cast::<u64>();
    // SAFETY: `split` reserved `meta_bytes(pages)` bytes at `l.meta` for exactly these two
    // arrays, so `words` words in, the nodes are still inside the metadata pages. Alignment:
    // the metadata starts on a page, and the nodes (4-byte aligned) follow whole `u64`s.
    let n = unsafe { w.add(words) }.cast::<Summary>();
    (
        NonNull::slice_from_raw_parts(w, words),
        NonNull::slice_from_raw_parts(n, nodes),
    )
}

// SAFETY: (1) every run handed out is a run of free pages of the tree, marked used before it is
// returned, so runs never overlap and no page is handed out twice until it is given back; (2)
// the pages lie inside the region, which the constructor's contract makes readable, writable
// and exclusively ours, and they are disjoint from the run tree's pages; (3) every page pointer
// is derived from the region pointer given to the constructor, and so is `window`, which covers
// every page handed out and never changes; (4) `map_pages_aligned` returns a run whose page
// `aligned_page` starts at a multiple of `align` (see the arithmetic there).
unsafe impl PageSource for FixedRegion {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if count == 0 {
            return Err(PageSourceError::InvalidRequest);
        }
        let Some((tree, _)) = self.tree_mut() else {
            return Err(PageSourceError::OutOfMemory);
        };
        match tree.first_fit(count) {
            Some(start) => Ok(self.take(start, count)),
            None => Err(self.refusal(count)),
        }
    }

    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let slack = aligned_slack(count, align, aligned_page)?;
        let Some((tree, l)) = self.tree_mut() else {
            return Err(PageSourceError::OutOfMemory);
        };
        let step = align / PAGE_SIZE;
        // The pages `s` where a run may start: page `s + aligned_page` is aligned.
        let phase = aligned_offset(l.first.addr().get(), align, aligned_page) / PAGE_SIZE;
        // Any free run of `count + slack` pages holds one (O(log pages))...
        let start = match tree.first_fit(count + slack) {
            Some(s) => Some(s + (phase + step - s % step) % step),
            // ... else try each aligned place in turn (a big alignment in a fragmented region).
            None => (phase..l.pages)
                .step_by(step)
                .find(|&s| tree.all_free(s, count)),
        };
        match start {
            Some(s) => Ok(self.take(s, count)),
            None => Err(self.refusal(count)),
        }
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        let Some((mut tree, l)) = self.tree_mut() else {
            return;
        };
        let Some(start) = Self::index_of(l, ptr) else {
            debug_assert!(
                false,
                "FixedRegion: unmap of {ptr:p}, not a page of the region"
            );
            return;
        };
        if count == 0 || !tree.all_used(start, count) {
            debug_assert!(
                count == 0,
                "FixedRegion: unmap of {count} pages at {ptr:p}, not all mapped"
            );
            return;
        }
        tree.set(start, count, true);
        self.mapped -= count;
    }

    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        let Some((tree, l)) = self.tree_mut() else {
            return false;
        };
        let Some(end) = Self::index_of(l, ptr).and_then(|s| s.checked_add(count)) else {
            return false;
        };
        if extra == 0 || !tree.all_free(end, extra) {
            return false;
        }
        self.take(end, extra);
        true
    }

    fn window(&self) -> Option<NonNull<[u8]>> {
        let (skip, whole) = self.whole_pages();
        if whole == 0 {
            return None;
        }
        // SAFETY: `skip` bytes in, the region still has `whole` pages.
        let first = unsafe { NonNull::new_unchecked(self.start.add(skip)) };
        Some(NonNull::slice_from_raw_parts(first, whole * PAGE_SIZE))
    }
}

#[cfg(test)]
mod tests;
