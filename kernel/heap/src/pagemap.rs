//! The page map: what every heap page is, found in O(1) from any address inside it.
//!
//! A fixed-depth radix tree keyed by virtual page number, shaped like an x86_64 4-level page table:
//! address bits 47..12 split into four 9-bit indices, each node is one 4 KiB page of 512
//! pointer-sized slots taken from the page source. Interior slots point to the next level; leaf
//! slots hold an [`Entry`]:
//!
//! ```text
//!   leaf slot value            meaning
//!   null                       not a heap page (foreign pointer)
//!   descriptor pointer | 0b00  a chunk; the pointer is its `ChunkDesc` in a root page
//!   root run pointer   | 0b01  a root page; the pointer is the start of its root run
//!   mapping pointer    | 0b10  a page of the large allocator; the pointer is the start of the
//!                              run the large allocator mapped (region or page run)
//! ```
//!
//! Nodes are created when a page in a new 2 MiB (leaf), 1 GiB or 512 GiB window is first
//! recorded, and are unmapped only by [`PageMap::prune`] (called by `Heap::trim`) once they are
//! empty: clearing an entry stays O(1), and a chunk that is mapped and unmapped repeatedly in a
//! new window does not drag a node page through the page source with it.
//!
//! A new node for a chunk or a root page is taken from a *spare*: one zeroed node page that the
//! map keeps mapped ahead of need ([`PageMap::add_spare`]). The heap's back tops the spare up in
//! a slow-path call that maps nothing else (a refill that finds its blocks in mapped chunks, a
//! flush that releases no chunk; see `back::Back::prepare`), so that the call which records a
//! chunk in a new 2 MiB window maps only the chunk's page, not the chunk page and a node page
//! too. The large allocator's runs (recorded through [`Recording`]) map their nodes themselves
//! and leave the spare alone: otherwise the spare mapped again after a page run took it would
//! land on the page right after that run, where the run wants to grow in place. Only when the
//! spare is gone (the first node after `prune`, or two new windows in a row without a quiet call
//! in between, or a new 1 GiB window, which needs two nodes) does recording map a node itself,
//! as before. `prune` unmaps the spare with the empty nodes.
//!
//! Node pages themselves are not recorded in the map (a leaf would otherwise hold the entry of the
//! page it lives in, and could never become empty); a pointer into a node page is therefore
//! "foreign", which is exactly what it is to a caller of `deallocate`. They are counted in
//! [`PageMap::nodes`].
//!
//! Addresses must be 48-bit canonical (x86_64 4-level paging, and every mainstream 64-bit user
//! space); a page source that hands out anything else makes recording fail with
//! [`PageSourceError::OutOfAddressSpace`], and the heap gives those pages back.
//!
//! Strict provenance: stored pointers keep their provenance (tags are set and cleared with
//! `map_addr`). That is what lets the heap hand the large allocator a pointer it may read block
//! headers through: the pointer a caller frees only carries the provenance of its own block (a
//! `Box`'s, under Stacked Borrows, covers exactly the block), while the header lies in front of
//! it; the heap rebuilds the pointer from the recorded mapping start with `with_addr`.

use core::ptr::{self, NonNull};

use crate::chunk::ChunkDesc;
use crate::source::{PAGE_SIZE, PageSource, PageSourceError};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the page map is laid out for 64-bit addresses");

/// Index bits per level: 512 slots of 8 bytes fill one page.
const BITS: u32 = 9;
/// Slots per node.
const FANOUT: usize = 1 << BITS;
/// Levels of the tree: 4 × 9 bits + 12 page-offset bits = 48-bit addresses.
const LEVELS: u32 = 4;
/// Address bits the map covers.
const ADDR_BITS: u32 = LEVELS * BITS + PAGE_SHIFT;
/// `log2(PAGE_SIZE)`: address bits inside a page.
const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();

const TAG_MASK: usize = 0b11;
const TAG_CHUNK: usize = 0b00;
const TAG_ROOT: usize = 0b01;
const TAG_LARGE: usize = 0b10;

/// What a page of the heap is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Not a page of this heap.
    Empty,
    /// A page of the root run starting at this address.
    Root(NonNull<u8>),
    /// A chunk, described by this descriptor.
    Chunk(NonNull<ChunkDesc>),
    /// A page mapped by the large allocator, in the run that starts at this address.
    Large(NonNull<u8>),
}

impl Entry {
    #[inline]
    fn encode(self) -> *mut u8 {
        match self {
            Self::Empty => ptr::null_mut(),
            Self::Root(base) => base.as_ptr().map_addr(|a| a | TAG_ROOT),
            Self::Chunk(desc) => desc.as_ptr().cast::<u8>(),
            Self::Large(run) => run.as_ptr().map_addr(|a| a | TAG_LARGE),
        }
    }

    #[inline]
    fn decode(raw: *mut u8) -> Self {
        match raw.addr() & TAG_MASK {
            _ if raw.is_null() => Self::Empty,
            TAG_CHUNK => NonNull::new(raw.cast::<ChunkDesc>()).map_or(Self::Empty, Self::Chunk),
            TAG_ROOT => {
                NonNull::new(raw.map_addr(|a| a & !TAG_MASK)).map_or(Self::Empty, Self::Root)
            }
            _ => NonNull::new(raw.map_addr(|a| a & !TAG_MASK)).map_or(Self::Empty, Self::Large),
        }
    }
}

/// One node of the tree: a page of slots.
#[repr(C, align(4096))]
struct Node {
    slots: [*mut u8; FANOUT],
}

const _: () = assert!(size_of::<Node>() == PAGE_SIZE);

/// Counts of the entries in the map, by kind (for the invariant checker and statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// Pages of root runs.
    pub root: usize,
    /// Chunk pages.
    pub chunk: usize,
    /// Large-allocator pages.
    pub large: usize,
}

/// The radix tree. Lives in the heap state (first root page); owns its node pages. 40 bytes.
#[derive(Debug)]
pub struct PageMap {
    /// Top-level node, null until the first entry is recorded.
    top: *mut Node,
    /// Node pages currently mapped.
    nodes: usize,
    /// `addr >> HINT_SHIFT` of the last address [`lookup`](Self::lookup) walked to a leaf, or
    /// [`NO_HINT`].
    hint_key: usize,
    /// The level-2 node (whose slots point to leaves) for `hint_key`'s 1 GiB of addresses.
    hint: *mut Node,
    /// A zeroed node page mapped ahead of need (counted in `nodes`), or null: the next node the
    /// tree needs is taken from here (see the module documentation).
    spare: *mut Node,
}

/// Address bits below the 1 GiB covered by one level-2 node (its slots cover 2 MiB each).
const HINT_SHIFT: u32 = 2 * BITS + PAGE_SHIFT;
/// `hint_key` value that no address produces (`addr >> 30` is below `2^34`).
const NO_HINT: usize = usize::MAX;

/// The `LEVELS` slot indices of a canonical address, top level first; `None` if not canonical.
#[inline]
fn indices(addr: usize) -> Option<[usize; LEVELS as usize]> {
    let high = addr >> (ADDR_BITS - 1);
    if high != 0 && high != usize::MAX >> (ADDR_BITS - 1) {
        return None;
    }
    let page = addr >> PAGE_SHIFT;
    let mut out = [0; LEVELS as usize];
    for (level, slot) in out.iter_mut().enumerate() {
        let shift = BITS * (LEVELS - 1 - level as u32);
        *slot = (page >> shift) & (FANOUT - 1);
    }
    Some(out)
}

/// Slots from the page of `addr` to the end of its leaf (1 to `FANOUT`): how many pages from
/// `addr` on one leaf records.
#[inline]
fn leaf_room(addr: usize) -> usize {
    FANOUT - ((addr >> PAGE_SHIFT) & (FANOUT - 1))
}

/// Canonical address of the page at these indices (inverse of [`indices`]).
#[inline]
fn address_of(idx: &[usize; LEVELS as usize]) -> usize {
    let mut page = 0usize;
    for &i in idx {
        page = (page << BITS) | i;
    }
    let addr = page << PAGE_SHIFT;
    // Sign-extend bit 47.
    let shift = usize::BITS - ADDR_BITS;
    (((addr << shift) as isize) >> shift) as usize
}

impl PageMap {
    /// Nodes a map needs to record exactly the `pages` pages from `start`: the top node, plus
    /// at each lower level one node per distinct slot of the level above that the run touches
    /// (a run straddling a 2 MiB, 1 GiB or 512 GiB line needs two at that level).
    pub fn path_nodes(start: usize, pages: usize) -> usize {
        if pages == 0 {
            return 0;
        }
        let first = start >> PAGE_SHIFT;
        let last = first + pages - 1;
        let mut nodes = 1;
        for level in 1..LEVELS {
            // A node at `level` covers `BITS * (LEVELS - level)` bits of page number.
            let shift = BITS * (LEVELS - level);
            nodes += (last >> shift) - (first >> shift) + 1;
        }
        nodes
    }

    /// An empty map; maps nothing.
    pub const fn new() -> Self {
        Self {
            top: ptr::null_mut(),
            nodes: 0,
            hint_key: NO_HINT,
            hint: ptr::null_mut(),
            spare: ptr::null_mut(),
        }
    }

    /// Node pages the map holds (the spare included).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Spare node pages held (0 or 1; counted in [`nodes`](Self::nodes)).
    pub fn spare_nodes(&self) -> usize {
        usize::from(!self.spare.is_null())
    }

    /// Whether the map would like a spare node: it has a tree (so it records pages) and no
    /// spare. [`add_spare`](Self::add_spare) maps one.
    pub fn wants_spare(&self) -> bool {
        !self.top.is_null() && self.spare.is_null()
    }

    /// Whether the spare, if any, is still all null slots (for the checker).
    pub fn spare_is_zeroed(&self) -> bool {
        // SAFETY: a non-null spare is a live node page of this map, written by no one.
        self.spare.is_null() || unsafe { (*self.spare).slots.iter().all(|s| s.is_null()) }
    }

    /// Maps and zeroes a node page and keeps it as the spare, which the next node the tree
    /// needs is taken from. One page-source call; on failure nothing changed.
    pub fn add_spare<S: PageSource>(&mut self, src: &mut S) -> Result<(), PageSourceError> {
        if !self.spare.is_null() {
            return Ok(());
        }
        self.spare = self.map_node(src)?;
        Ok(())
    }

    /// What the page containing `addr` is. O(1): four dependent loads.
    #[inline]
    pub fn get(&self, addr: usize) -> Entry {
        let Some(idx) = indices(addr) else {
            return Entry::Empty;
        };
        let mut node = self.top;
        for &i in &idx[..LEVELS as usize - 1] {
            if node.is_null() {
                return Entry::Empty;
            }
            // SAFETY: non-null slots of the tree point to live node pages the map mapped and
            // initialised (all slots written), and only the map writes them.
            node = unsafe { (*node).slots[i] }.cast::<Node>();
        }
        if node.is_null() {
            return Entry::Empty;
        }
        // SAFETY: as above, `node` is a live leaf node.
        Entry::decode(unsafe { (*node).slots[idx[LEVELS as usize - 1]] })
    }

    /// What the page containing `addr` is, like [`get`](Self::get), but through a one-entry
    /// cache of the level-2 node last walked through: when `addr` lies in the same 1 GiB as the
    /// previous lookup (the whole heap, for a heap of less than 1 GiB of addresses), it costs two
    /// dependent loads instead of four. The cache is dropped when [`prune`](Self::prune) unmaps
    /// nodes; nodes are never unmapped otherwise, so a cached node stays valid.
    #[inline]
    pub fn lookup(&mut self, addr: usize) -> Entry {
        match self.lookup_hinted(addr) {
            Some(entry) => entry,
            None => self.lookup_and_cache(addr),
        }
    }

    /// The hit path of [`lookup`](Self::lookup) alone: `None` if `addr` is not in the cached
    /// 1 GiB (then the caller does a full `lookup`). No call, for the hot paths of the heap.
    #[inline]
    pub fn lookup_hinted(&self, addr: usize) -> Option<Entry> {
        if addr >> HINT_SHIFT != self.hint_key {
            return None;
        }
        // SAFETY: `hint` is the live level-2 node of the cached key (see `lookup`); slots hold
        // null or live leaf nodes; the indices are masked into range.
        let leaf = unsafe { (*self.hint).slots[(addr >> (BITS + PAGE_SHIFT)) & (FANOUT - 1)] };
        if leaf.is_null() {
            return Some(Entry::Empty);
        }
        let slot = (addr >> PAGE_SHIFT) & (FANOUT - 1);
        // SAFETY: as above, `leaf` is a live leaf node.
        Some(Entry::decode(unsafe { (*leaf.cast::<Node>()).slots[slot] }))
    }

    /// The miss path of [`lookup`](Self::lookup): a walk that remembers the level-2 node.
    #[inline(never)]
    fn lookup_and_cache(&mut self, addr: usize) -> Entry {
        let Some(idx) = indices(addr) else {
            return Entry::Empty;
        };
        let mut node = self.top;
        for (level, &i) in idx[..LEVELS as usize - 1].iter().enumerate() {
            if node.is_null() {
                return Entry::Empty;
            }
            if level == 2 {
                self.hint_key = addr >> HINT_SHIFT;
                self.hint = node;
            }
            // SAFETY: as in `get`.
            node = unsafe { (*node).slots[i] }.cast::<Node>();
        }
        if node.is_null() {
            return Entry::Empty;
        }
        // SAFETY: as in `get`.
        Entry::decode(unsafe { (*node).slots[idx[LEVELS as usize - 1]] })
    }

    /// A zeroed node page for the tree: the spare if there is one and `spare` allows it,
    /// otherwise a page mapped now.
    fn new_node<S: PageSource>(
        &mut self,
        src: &mut S,
        spare: bool,
    ) -> Result<*mut Node, PageSourceError> {
        if spare && !self.spare.is_null() {
            // The spare was zeroed when it was mapped, and nothing has written it since.
            return Ok(core::mem::replace(&mut self.spare, ptr::null_mut()));
        }
        self.map_node(src)
    }

    /// Maps and zeroes one node page.
    fn map_node<S: PageSource>(&mut self, src: &mut S) -> Result<*mut Node, PageSourceError> {
        let page = src.map_pages(1)?.cast::<Node>();
        // SAFETY: the source just handed us one page, page aligned, exclusively ours; writing
        // zeroes makes every slot a null pointer.
        unsafe { page.as_ptr().write_bytes(0, 1) };
        self.nodes += 1;
        Ok(page.as_ptr())
    }

    /// The leaf slot for `addr`, creating missing nodes on the way if `src` is given (from the
    /// spare first if `spare`).
    fn slot<S: PageSource>(
        &mut self,
        src: Option<&mut S>,
        addr: usize,
        spare: bool,
    ) -> Result<*mut *mut u8, PageSourceError> {
        let idx = indices(addr).ok_or(PageSourceError::OutOfAddressSpace)?;
        let mut src = src;
        if self.top.is_null() {
            let s = src.as_deref_mut().ok_or(PageSourceError::InvalidRequest)?;
            self.top = self.new_node(s, spare)?;
        }
        let mut node = self.top;
        for &i in &idx[..LEVELS as usize - 1] {
            // SAFETY: `node` is a live node page of this map (see `get`); the slot pointer is
            // in bounds (`i < FANOUT`).
            let slot = unsafe { &raw mut (*node).slots[i] };
            // SAFETY: `slot` points into a live node.
            let mut next = unsafe { *slot }.cast::<Node>();
            if next.is_null() {
                let s = src.as_deref_mut().ok_or(PageSourceError::InvalidRequest)?;
                next = self.new_node(s, spare)?;
                // SAFETY: `slot` points into a live node; only the map writes nodes.
                unsafe { *slot = next.cast::<u8>() };
            }
            node = next;
        }
        // SAFETY: `node` is a live leaf node; the index is in bounds.
        Ok(unsafe { &raw mut (*node).slots[idx[LEVELS as usize - 1]] })
    }

    /// Records `entry` for the `count` pages starting at `start`, taking a node the tree needs
    /// from the spare first, mapping nodes as needed. Chunks, root runs and the large
    /// allocator's regions and runs alike take the spare: the call that maps them then maps no
    /// node of its own, and a quiet call pre-creates the next spare (`Back::prepare`). (Runs
    /// used to leave it alone, so that the spare mapped again would not land right after a run
    /// that wants to grow in place; measured again with runs for growing vectors, realloc growth
    /// over the host arena moved by 1–2%, within its noise, while a region needing a node cost
    /// the kernel ~2 400–3 300 instructions in one call: see the benchmark's ANALYSIS.md.)
    ///
    /// On failure nothing is recorded (nodes mapped on the way stay until [`prune`](Self::prune)).
    pub fn set_run<S: PageSource>(
        &mut self,
        src: &mut S,
        start: NonNull<u8>,
        count: usize,
        entry: Entry,
    ) -> Result<(), PageSourceError> {
        let raw = entry.encode();
        if count == 1 {
            // A chunk or a root page: one slot, no loop.
            let slot = self.slot(Some(src), start.addr().get(), true)?;
            // SAFETY: `slot` returns a pointer into a live leaf node.
            unsafe { *slot = raw };
            return Ok(());
        }
        let mut i = 0;
        while i < count {
            let addr = start.addr().get().wrapping_add(i * PAGE_SIZE);
            match self.slot(Some(&mut *src), addr, true) {
                Ok(slot) => {
                    // One walk per leaf: the run's pages in this leaf are consecutive slots.
                    let n = leaf_room(addr).min(count - i);
                    for k in 0..n {
                        // SAFETY: `slot` points into a live leaf node's slot array, and the `n`
                        // slots from it are inside that array (`leaf_room`).
                        unsafe { *slot.add(k) = raw };
                    }
                    i += n;
                }
                Err(e) => {
                    self.clear_run(start, i);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Records `entry` for one page.
    pub fn set<S: PageSource>(
        &mut self,
        src: &mut S,
        page: NonNull<u8>,
        entry: Entry,
    ) -> Result<(), PageSourceError> {
        self.set_run(src, page, 1, entry)
    }

    /// Forgets the `count` pages starting at `start` (pages not recorded are ignored). O(count),
    /// one walk per leaf.
    pub fn clear_run(&mut self, start: NonNull<u8>, count: usize) {
        let mut i = 0;
        while i < count {
            let addr = start.addr().get().wrapping_add(i * PAGE_SIZE);
            let n = leaf_room(addr).min(count - i);
            // A missing node means none of these pages is recorded.
            if let Ok(slot) = self.slot::<NoSource>(None, addr, false) {
                for k in 0..n {
                    // SAFETY: as in `record`: `n` slots from `slot` in one live leaf.
                    unsafe { *slot.add(k) = ptr::null_mut() };
                }
            }
            i += n;
        }
    }

    /// Unmaps the spare and every node that holds no entries (bottom up). Linear in the number
    /// of nodes.
    pub fn prune<S: PageSource>(&mut self, src: &mut S) {
        self.hint_key = NO_HINT;
        self.hint = ptr::null_mut();
        if let Some(spare) = NonNull::new(core::mem::replace(&mut self.spare, ptr::null_mut())) {
            // SAFETY: the spare is a node page `map_node` mapped as one page of `src`, which
            // nothing points to but `self.spare`.
            unsafe { src.unmap_pages(spare.cast(), 1) };
            self.nodes -= 1;
        }
        if self.top.is_null() {
            return;
        }
        // SAFETY: `top` is a live node at level 0.
        if unsafe { self.prune_node(src, self.top, 0) } {
            // SAFETY: the top node is empty and nothing points to it but `self.top`.
            unsafe { src.unmap_pages(NonNull::new_unchecked(self.top).cast(), 1) };
            self.nodes -= 1;
            self.top = ptr::null_mut();
        }
    }

    /// Prunes the children of `node` (at `level`) and returns whether it is now empty.
    ///
    /// # Safety
    ///
    /// `node` must be a live node of this map at `level`.
    unsafe fn prune_node<S: PageSource>(
        &mut self,
        src: &mut S,
        node: *mut Node,
        level: u32,
    ) -> bool {
        let mut empty = true;
        for i in 0..FANOUT {
            // SAFETY: `node` is live (caller); `i` is in bounds.
            let child = unsafe { (*node).slots[i] };
            if child.is_null() {
                continue;
            }
            if level + 1 == LEVELS {
                empty = false;
                continue;
            }
            let child = child.cast::<Node>();
            // SAFETY: non-null interior slots point to live nodes of the next level.
            if unsafe { self.prune_node(src, child, level + 1) } {
                // SAFETY: the child is empty and only this slot points to it; it was mapped
                // by `new_node` as one page of `src`.
                unsafe {
                    (*node).slots[i] = ptr::null_mut();
                    src.unmap_pages(NonNull::new_unchecked(child).cast(), 1);
                }
                self.nodes -= 1;
            } else {
                empty = false;
            }
        }
        empty
    }

    /// Calls `f(page address, entry)` for every recorded page, in address order of the key.
    /// Returns the number of nodes seen (for the checker).
    pub fn for_each(&self, mut f: impl FnMut(usize, Entry)) -> usize {
        if self.top.is_null() {
            return 0;
        }
        let mut idx = [0; LEVELS as usize];
        // SAFETY: `top` is a live level-0 node.
        unsafe { self.walk(self.top, 0, &mut idx, &mut f) }
    }

    /// # Safety
    ///
    /// `node` must be a live node of this map at `level`.
    unsafe fn walk(
        &self,
        node: *mut Node,
        level: u32,
        idx: &mut [usize; LEVELS as usize],
        f: &mut impl FnMut(usize, Entry),
    ) -> usize {
        let mut nodes = 1;
        for i in 0..FANOUT {
            // SAFETY: `node` is live (caller); `i` is in bounds.
            let slot = unsafe { (*node).slots[i] };
            if slot.is_null() {
                continue;
            }
            idx[level as usize] = i;
            if level + 1 == LEVELS {
                f(address_of(idx), Entry::decode(slot));
            } else {
                // SAFETY: non-null interior slots point to live nodes of the next level.
                nodes += unsafe { self.walk(slot.cast(), level + 1, idx, f) };
            }
        }
        nodes
    }

    /// Counts the entries by kind. Linear in the number of nodes.
    #[cfg(test)]
    pub fn count(&self) -> EntryCounts {
        let mut c = EntryCounts::default();
        self.for_each(|_, e| match e {
            Entry::Root(_) => c.root += 1,
            Entry::Chunk(_) => c.chunk += 1,
            Entry::Large(_) => c.large += 1,
            Entry::Empty => {}
        });
        c
    }
}

impl Default for PageMap {
    fn default() -> Self {
        Self::new()
    }
}

/// A page source that is never called: lets `slot` be used without one (lookups for clearing).
struct NoSource;

// SAFETY: `map_pages` never succeeds, so there is nothing to guarantee about returned pages.
unsafe impl PageSource for NoSource {
    fn map_pages(&mut self, _count: usize) -> Result<NonNull<u8>, PageSourceError> {
        Err(PageSourceError::InvalidRequest)
    }

    unsafe fn unmap_pages(&mut self, _ptr: NonNull<u8>, _count: usize) {}
}

/// A page source that records every page it maps in the page map (as [`Entry::Large`] with the
/// run's start) and
/// forgets every page it unmaps: the large allocator gets its pages through it, so that the map
/// stays complete without the large allocator knowing about it. It also counts the pages.
pub struct Recording<'a, S: PageSource> {
    /// The heap's page source.
    pub src: &'a mut S,
    /// The heap's page map.
    pub map: &'a mut PageMap,
    /// Pages currently mapped through this wrapper (the heap's large-page counter).
    pub pages: &'a mut usize,
}

impl<S: PageSource> core::fmt::Debug for Recording<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Recording")
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl<S: PageSource> Recording<'_, S> {
    /// Records the `count` pages at `start`, just mapped by the wrapped source, as one large
    /// mapping; if that fails (no page for a map node), unmaps them again.
    fn record(&mut self, start: NonNull<u8>, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        if let Err(e) = self
            .map
            .set_run(self.src, start, count, Entry::Large(start))
        {
            // SAFETY: the caller mapped exactly these pages just now and handed out nothing.
            unsafe { self.src.unmap_pages(start, count) };
            return Err(e);
        }
        *self.pages += count;
        Ok(start)
    }
}

// SAFETY: pages come from the wrapped source unchanged, so its guarantees carry over; a page is
// unmapped only when the caller gives it back.
unsafe impl<S: PageSource> PageSource for Recording<'_, S> {
    fn map_pages(&mut self, count: usize) -> Result<NonNull<u8>, PageSourceError> {
        let start = self.src.map_pages(count)?;
        self.record(start, count)
    }

    /// Asks the wrapped source for the aligned run (so that its own way of placing it is used,
    /// not the default's over-sized mapping) and records it.
    fn map_pages_aligned(
        &mut self,
        count: usize,
        align: usize,
        aligned_page: usize,
    ) -> Result<NonNull<u8>, PageSourceError> {
        let start = self.src.map_pages_aligned(count, align, aligned_page)?;
        self.record(start, count)
    }

    unsafe fn unmap_pages(&mut self, ptr: NonNull<u8>, count: usize) {
        self.map.clear_run(ptr, count);
        *self.pages -= count;
        // SAFETY: forwarded; the caller guarantees the pages are ours and mapped.
        unsafe { self.src.unmap_pages(ptr, count) };
    }

    #[inline]
    fn wants_prepare(&self) -> bool {
        self.src.wants_prepare()
    }

    fn prepare(&mut self) -> bool {
        self.src.prepare()
    }

    /// Grows through the wrapped source and records the new pages as part of the run at `ptr`
    /// (the caller passes the start of the mapping its page-map entries name). If recording
    /// fails (no page for a map node), the new pages are unmapped again and the answer is `false`.
    fn grow_pages(&mut self, ptr: NonNull<u8>, count: usize, extra: usize) -> bool {
        if !self.src.grow_pages(ptr, count, extra) {
            return false;
        }
        let tail = ptr.as_ptr().wrapping_add(count * PAGE_SIZE);
        // SAFETY: the source just mapped `extra` pages right after the run, so `tail` is a
        // mapped page and not null.
        let tail = unsafe { NonNull::new_unchecked(tail) };
        if self
            .map
            .set_run(self.src, tail, extra, Entry::Large(ptr))
            .is_err()
        {
            // SAFETY: we mapped exactly these pages just now and handed out nothing.
            unsafe { self.src.unmap_pages(tail, extra) };
            return false;
        }
        *self.pages += extra;
        true
    }

    /// Moves through the wrapped source and records the new run (as its own mapping) before
    /// answering; if recording fails (no page for a map node), the move is abandoned and the
    /// answer is `None`. The old run's entries go when the move is kept.
    fn remap_pages(
        &mut self,
        ptr: NonNull<u8>,
        count: usize,
        new_count: usize,
    ) -> Option<NonNull<u8>> {
        let new = self.src.remap_pages(ptr, count, new_count)?;
        if self
            .map
            .set_run(self.src, new, new_count, Entry::Large(new))
            .is_err()
        {
            // SAFETY: the move just started and nothing was written to either run; the new
            // run goes, the old one stays as it was.
            unsafe { self.src.finish_remap(ptr, count, new, new_count, false) };
            return None;
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
        if keep_new {
            self.map.clear_run(old, count);
            *self.pages = *self.pages - count + new_count;
        } else {
            self.map.clear_run(new, new_count);
        }
        // SAFETY: forwarded; the caller's guarantees are the wrapped source's.
        unsafe { self.src.finish_remap(old, count, new, new_count, keep_new) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ArenaSource;

    #[test]
    fn index_round_trip() {
        for addr in [
            0usize,
            0x1000,
            0x7fff_ffff_f000,
            0xffff_8000_0000_0000,
            0xffff_ffff_ffff_f000,
        ] {
            let idx = indices(addr).unwrap();
            assert_eq!(address_of(&idx), addr);
        }
        assert!(indices(0x0000_8000_0000_0000).is_none());
        assert!(indices(0x1234_0000_0000_0000).is_none());
    }

    #[test]
    fn path_nodes_counts_the_nodes_a_run_needs() {
        const GIB: usize = 1 << 30;
        let mut src = ArenaSource::new(64);
        for (start, expect) in [
            (0x1000, 4),
            (0x20_0000 - 0x3000, 5),
            (GIB - 0x1000, 6),
            (0x80_0000_0000 - 0x1000, 7),
            (0xffff_8000_0000_0000, 4),
        ] {
            assert_eq!(PageMap::path_nodes(start, 6), expect, "{start:#x}");
            // The pages are only recorded, never touched: any canonical address will do.
            let page = NonNull::new(ptr::without_provenance_mut::<u8>(start)).unwrap();
            let mut map = PageMap::new();
            map.set_run(&mut src, page, 6, Entry::Large(page)).unwrap();
            assert_eq!(map.nodes(), expect, "{start:#x}");
            map.clear_run(page, 6);
            map.prune(&mut src);
            assert_eq!(map.nodes(), 0);
            assert_eq!(src.mapped_pages(), 0);
        }
        assert_eq!(PageMap::path_nodes(0x1000, 0), 0);
    }

    #[test]
    fn runs_across_leaves_record_and_clear_exactly_their_pages() {
        // Runs that start and end at every kind of place relative to 2 MiB and 1 GiB lines
        // (recorded and cleared one leaf at a time): exactly their pages change, checked page by
        // page, with a page on each side. The pages are only recorded: any address will do.
        const MIB2: usize = 2 << 20;
        const GIB: usize = 1 << 30;
        let mut src = ArenaSource::new(64);
        for (start, pages) in [
            (GIB - MIB2, 512),
            (GIB - MIB2, 513),
            (GIB - 0x1000, 2),
            (GIB - 3 * 0x1000, 1030),
            (GIB + 0x5000, 511),
            (GIB + 0x5000, 1),
        ] {
            let page = |i: usize| start + i * PAGE_SIZE;
            let nn = |a: usize| NonNull::new(ptr::without_provenance_mut::<u8>(a)).unwrap();
            let at = |i: usize| nn(page(i));
            let before = start - PAGE_SIZE;
            let mut map = PageMap::new();
            let e = Entry::Large(at(0));
            // A neighbour on each side, recorded apart.
            map.set(&mut src, nn(before), Entry::Root(at(0))).unwrap();
            map.set(&mut src, at(pages), Entry::Root(at(0))).unwrap();
            map.set_run(&mut src, at(0), pages, e).unwrap();
            assert_eq!(map.nodes(), PageMap::path_nodes(before, pages + 2));
            for i in 0..pages {
                assert_eq!(map.get(page(i) + 7), e, "{start:#x}+{pages}: page {i}");
            }
            // Clear the middle, leaving a page at each end of the run.
            if pages > 2 {
                map.clear_run(at(1), pages - 2);
                assert_eq!(map.get(page(0)), e);
                assert_eq!(map.get(page(pages - 1)), e);
                for i in 1..pages - 1 {
                    assert_eq!(map.get(page(i)), Entry::Empty, "{start:#x}+{pages}: {i}");
                }
            }
            map.clear_run(at(0), pages);
            let counts = map.count();
            assert_eq!((counts.root, counts.large), (2, 0), "{start:#x}+{pages}");
            assert_eq!(map.get(page(pages)), Entry::Root(at(0)));
            map.clear_run(nn(before), pages + 2);
            map.prune(&mut src);
            assert_eq!(map.nodes(), 0);
        }
        // Clearing over a gap without nodes (a whole leaf never recorded) skips it.
        let mut map = PageMap::new();
        let base = 4 * GIB;
        let at = |a: usize| NonNull::new(ptr::without_provenance_mut::<u8>(a)).unwrap();
        map.set(&mut src, at(base), Entry::Large(at(base))).unwrap();
        map.set(&mut src, at(base + 2 * MIB2), Entry::Large(at(base)))
            .unwrap();
        map.clear_run(at(base), 2 * 512 + 1);
        assert_eq!(map.count(), EntryCounts::default());
        map.prune(&mut src);
        assert_eq!(map.nodes(), 0);
        assert_eq!(src.mapped_pages(), 0);
    }

    #[test]
    fn set_get_clear_prune() {
        let mut src = ArenaSource::new(64);
        let mut map = PageMap::new();
        let a = src.map_pages(3).unwrap();
        assert_eq!(map.get(a.addr().get()), Entry::Empty);
        map.set_run(&mut src, a, 3, Entry::Large(a)).unwrap();
        let nodes = map.nodes();
        assert!(nodes >= 4);
        for i in 0..3 {
            assert_eq!(
                map.get(a.addr().get() + i * PAGE_SIZE + 123),
                Entry::Large(a)
            );
        }
        assert_eq!(map.get(a.addr().get() + 3 * PAGE_SIZE), Entry::Empty);
        map.set(&mut src, a, Entry::Root(a)).unwrap();
        assert_eq!(map.get(a.addr().get() + 5), Entry::Root(a));
        assert_eq!(
            map.count(),
            EntryCounts {
                root: 1,
                chunk: 0,
                large: 2
            }
        );
        map.clear_run(a, 3);
        assert_eq!(map.count(), EntryCounts::default());
        assert_eq!(map.nodes(), nodes);
        assert_eq!(src.mapped_pages(), 3 + nodes);
        map.prune(&mut src);
        assert_eq!(map.nodes(), 0);
        assert_eq!(src.mapped_pages(), 3);
    }

    /// A node the tree needs is taken from the spare: recording a page in a new 2 MiB window
    /// makes no page-source call then. `prune` unmaps the spare.
    #[test]
    fn a_new_window_takes_the_spare_node_without_mapping() {
        const MIB2: usize = 2 << 20;
        let mut src = ArenaSource::new(8);
        let mut map = PageMap::new();
        let page = |addr: usize| NonNull::new(ptr::without_provenance_mut::<u8>(addr)).unwrap();
        assert!(!map.wants_spare(), "no tree, no spare");
        map.set(&mut src, page(MIB2), Entry::Large(page(MIB2)))
            .unwrap();
        assert_eq!(map.nodes(), 4);
        assert!(map.wants_spare());
        map.add_spare(&mut src).unwrap();
        assert!(!map.wants_spare());
        assert_eq!((map.nodes(), map.spare_nodes()), (5, 1));
        assert!(map.spare_is_zeroed());
        // A run of several pages (a large allocator's region or run) takes it too.
        let calls = src.map_calls();
        map.set_run(&mut src, page(5 * MIB2), 3, Entry::Large(page(5 * MIB2)))
            .unwrap();
        assert_eq!(src.map_calls(), calls);
        assert_eq!((map.nodes(), map.spare_nodes()), (5, 0));
        assert_eq!(
            map.get(5 * MIB2 + 2 * PAGE_SIZE),
            Entry::Large(page(5 * MIB2))
        );
        map.clear_run(page(5 * MIB2), 3);
        map.prune(&mut src);
        assert_eq!((map.nodes(), map.spare_nodes()), (4, 0));
        map.add_spare(&mut src).unwrap();
        let calls = src.map_calls();
        // The next 2 MiB window needs one leaf node: the spare.
        map.set(&mut src, page(2 * MIB2), Entry::Large(page(2 * MIB2)))
            .unwrap();
        assert_eq!(src.map_calls(), calls);
        assert_eq!((map.nodes(), map.spare_nodes()), (5, 0));
        assert_eq!(map.get(2 * MIB2 + 8), Entry::Large(page(2 * MIB2)));
        assert_eq!(map.for_each(|_, _| {}), 5);
        // Without a spare the map maps the node itself.
        map.set(&mut src, page(3 * MIB2), Entry::Large(page(3 * MIB2)))
            .unwrap();
        assert_eq!(src.map_calls(), calls + 1);
        map.add_spare(&mut src).unwrap();
        assert_eq!(src.mapped_pages(), 7);
        for i in 1..4 {
            map.clear_run(page(i * MIB2), 1);
        }
        map.prune(&mut src);
        assert_eq!((map.nodes(), map.spare_nodes()), (0, 0));
        assert_eq!(src.mapped_pages(), 0);
        // A spare that cannot be mapped leaves the map as it was.
        map.set(&mut src, page(MIB2), Entry::Large(page(MIB2)))
            .unwrap();
        src.fail_after(Some(0));
        assert!(map.add_spare(&mut src).is_err());
        assert_eq!((map.nodes(), map.spare_nodes()), (4, 0));
    }

    #[test]
    fn failed_set_records_nothing() {
        let mut src = ArenaSource::new(64);
        let a = src.map_pages(2).unwrap();
        src.fail_after(Some(0));
        let mut map = PageMap::new();
        assert!(map.set_run(&mut src, a, 2, Entry::Large(a)).is_err());
        assert_eq!(map.get(a.addr().get()), Entry::Empty);
        assert_eq!(map.nodes(), 0);
    }
}
