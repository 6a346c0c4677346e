//! The heap state and [`Live`], the one way the paths reach it.
//!
//! [`HeapState`] lives in the first root run, right after its header. An allocation or free never
//! holds a reference to the whole state (21 KiB, mostly magazines): under the stacked/tree
//! borrows models Miri checks, a mutable reference to it would cover memory other live pointers
//! write (the descriptors point back into the class chunk lists), and retagging it on every call
//! would make each call O(21 KiB) under Miri. Instead an operation gets a [`Live`] — the state's
//! pointer, known to be initialised, plus the page source — and splits it into borrows of the
//! fields it needs, a magazine at a time; the `&mut self` of each split keeps those borrows
//! disjoint. (The read-only walks, statistics and the invariant checker, read the whole state
//! through `&self`.)

use core::ptr::{self, NonNull};

use super::front::{Front, Window};
use crate::back::Back;
use crate::chunk::{DESC_SLOT, Geometry};
use crate::chunk_lists::ChunkLists;
use crate::debug::Owner;
use crate::large::LargeAlloc;
use crate::magazine::{ClassMagazines, MAG_CAP, POOL_MAG_CAP};
use crate::pagemap::{PageMap, Recording};
use crate::pending::PendingChunks;
use crate::pool::{self, POOL_SLOT, PoolHeader, PoolId};
use crate::root::{RootHeader, Roots};
use crate::size_class::{CLASS_SIZES, NUM_CLASSES};
use crate::source::{PAGE_SIZE, PageSource};

/// Everything the heap keeps, in its first root run. The fields every allocation and free
/// touches (`requested`, the window, the page map's cached node, the magazine counts) are kept
/// together in front of the magazine slots.
#[repr(C)]
pub(super) struct HeapState {
    /// The chunks of the general size classes ([`CLASS_SIZES`]).
    pub(super) classes: [ChunkLists; NUM_CLASSES],
    /// Requests no class serves.
    pub(super) large: LargeAlloc,
    /// Root runs of chunk descriptors (the first of them holds this state).
    pub(super) descs: Roots,
    /// The user pools.
    pub(super) pools: Pools,
    /// Pages mapped by the large allocator.
    pub(super) large_pages: usize,
    /// Sum of the requested sizes of live allocations (layout sizes; pool object sizes).
    pub(super) requested: usize,
    /// The page source's window.
    pub(super) window: Window,
    /// Page → what it is.
    pub(super) map: PageMap,
    /// Free blocks cached per general class (module `magazine`).
    pub(super) mags: ClassMagazines,
    /// The user pool named last: a repeated `pool_allocate`/`pool_deallocate` on one pool skips
    /// the page-map lookup that checks its id.
    pub(super) last_pool: LastPool,
    /// Empty chunks waiting to be released (module `pending`).
    pub(super) pending: PendingChunks,
}

/// The user pools' part of the heap state.
#[repr(C)]
pub(super) struct Pools {
    /// Root runs of pool headers.
    pub(super) slots: Roots,
    /// The pools, most recently created first.
    pub(super) list: *mut PoolHeader,
    /// Number of pools.
    pub(super) count: usize,
    /// Generation of the next pool.
    pub(super) next_generation: u32,
}

/// The pool named last, and its header. Cleared when a pool is destroyed, so it only ever names
/// a live pool (`PoolId::NONE` names none).
#[repr(C)]
pub(super) struct LastPool {
    id: PoolId,
    header: *mut PoolHeader,
}

/// Where the heap state starts in the first root run.
pub(super) const STATE_OFFSET: usize =
    size_of::<RootHeader>().next_multiple_of(align_of::<HeapState>());

/// Pages of the first root run: header and heap state, plus room for some descriptor slots.
pub const FIRST_RUN_PAGES: usize =
    (STATE_OFFSET + size_of::<HeapState>() + 8 * DESC_SLOT).div_ceil(PAGE_SIZE);

const _: () = assert!(align_of::<HeapState>() <= PAGE_SIZE);

impl HeapState {
    /// The state of a fresh heap whose first descriptor run is `descs`.
    pub(super) fn new(descs: Roots, window: Option<NonNull<[u8]>>) -> Self {
        Self {
            classes: const {
                let mut lists = [const { ChunkLists::new(Geometry::new(8)) }; NUM_CLASSES];
                let mut i = 0;
                while i < NUM_CLASSES {
                    lists[i] = ChunkLists::new(Geometry::new(CLASS_SIZES[i]));
                    i += 1;
                }
                lists
            },
            large: LargeAlloc::new(),
            descs,
            pools: Pools {
                slots: Roots::empty(POOL_SLOT),
                list: ptr::null_mut(),
                count: 0,
                next_generation: 1,
            },
            large_pages: 0,
            requested: 0,
            window: Window::new(window),
            map: PageMap::new(),
            mags: ClassMagazines::new(),
            last_pool: LastPool {
                id: PoolId::NONE,
                header: ptr::null_mut(),
            },
            pending: PendingChunks::new(),
        }
    }
}

/// A user pool of the heap whose id was checked: its header is live (until `destroy_pool`).
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolRef(NonNull<PoolHeader>);

impl PoolRef {
    /// # Safety
    ///
    /// `header` must be the header of a live pool of this heap.
    unsafe fn new(header: NonNull<PoolHeader>) -> Self {
        Self(header)
    }

    /// The header.
    pub(super) fn header(self) -> NonNull<PoolHeader> {
        self.0
    }

    /// The pool's chunk lists.
    pub(super) fn lists(self) -> *mut ChunkLists {
        // SAFETY: a field of the live header (the type's invariant); no reference is made.
        unsafe { &raw mut (*self.0.as_ptr()).lists }
    }

    /// The object size and alignment the pool was created with.
    pub(super) fn object(self) -> (usize, usize) {
        // SAFETY: the header is live (the type's invariant); only read.
        unsafe {
            let h = self.0.as_ptr();
            ((*h).size as usize, (*h).align as usize)
        }
    }

    /// The object size the pool was created with: what one block counts in requested bytes.
    #[inline(always)]
    pub(super) fn size(self) -> usize {
        self.object().0
    }

    /// Whether the pool's blocks are 1–7 bytes (tiny chunks, no magazine).
    #[inline(always)]
    pub(super) fn is_tiny(self) -> bool {
        // SAFETY: the header is live (the type's invariant); only read.
        unsafe { (*self.0.as_ptr()).lists.geo.is_tiny() }
    }

    /// The next pool of the heap's list, if any.
    pub(super) fn next(self) -> Option<PoolRef> {
        // SAFETY: the header is live (the type's invariant), and so are the members of the
        // heap's pool list it links to.
        unsafe { NonNull::new((*self.0.as_ptr()).next).map(|h| PoolRef::new(h)) }
    }

    /// How debug messages name the pool.
    pub(super) fn owner(self) -> Owner {
        // SAFETY: the header is live (the type's invariant); only read.
        unsafe {
            let h = self.0.as_ptr();
            Owner::Pool {
                generation: (*h).generation,
                size: usize::from((*h).lists.geo.stride),
            }
        }
    }
}

/// The state of an initialised heap and its page source, for one operation.
///
/// Invariant (what [`new`](Self::new) is given): `st` points to an initialised [`HeapState`]
/// whose pages come from `src` and stay mapped for `'h`, and nothing but this handle reaches the
/// state during `'h`. Every method below splits it into borrows of disjoint fields, under the
/// `&mut self` (or `&self`) of the call; that is what the `SAFETY` notes below mean by "the
/// invariant".
pub(super) struct Live<'h, S: PageSource> {
    st: NonNull<HeapState>,
    src: &'h mut S,
}

impl<'h, S: PageSource> Live<'h, S> {
    /// # Safety
    ///
    /// The invariant of [`Live`] holds for `st` and `src`.
    #[inline(always)]
    pub(super) unsafe fn new(st: NonNull<HeapState>, src: &'h mut S) -> Self {
        Self { st, src }
    }

    #[inline(always)]
    fn raw(&self) -> *mut HeapState {
        self.st.as_ptr()
    }

    /// The requested-bytes counter.
    #[inline(always)]
    pub(super) fn requested(&mut self) -> &mut usize {
        // SAFETY: a field of the live state (the invariant).
        unsafe { &mut (*self.raw()).requested }
    }

    /// The page map.
    #[inline(always)]
    pub(super) fn map(&mut self) -> &mut PageMap {
        // SAFETY: a field of the live state (the invariant).
        unsafe { &mut (*self.raw()).map }
    }

    /// The back as chunk lists reach it: the source, the descriptor roots and the page map.
    #[inline(always)]
    pub(super) fn back(&mut self) -> Back<'_, S> {
        let st = self.raw();
        // SAFETY: disjoint fields of the live state (the invariant).
        unsafe {
            Back {
                src: self.src,
                roots: &mut (*st).descs,
                map: &mut (*st).map,
                pending: &mut (*st).pending,
            }
        }
    }

    /// The page source's window.
    #[inline(always)]
    pub(super) fn window(&self) -> Window {
        // SAFETY: a field of the live state (the invariant).
        unsafe { (*self.raw()).window }
    }

    /// The large allocator, and a page source that records its pages in the page map.
    #[inline(always)]
    pub(super) fn large(&mut self) -> (&mut LargeAlloc, Recording<'_, S>) {
        let st = self.raw();
        // SAFETY: disjoint fields of the live state (the invariant).
        unsafe {
            (
                &mut (*st).large,
                Recording {
                    src: self.src,
                    map: &mut (*st).map,
                    pages: &mut (*st).large_pages,
                },
            )
        }
    }

    /// The user pools' part of the state, with the source and the page map (to take and give
    /// back header slots).
    pub(super) fn pools(&mut self) -> (&mut Pools, &mut S, &mut PageMap) {
        let st = self.raw();
        // SAFETY: disjoint fields of the live state (the invariant).
        unsafe { (&mut (*st).pools, self.src, &mut (*st).map) }
    }

    /// The descriptor roots, with the source and the page map.
    pub(super) fn descs(&mut self) -> (&mut Roots, &mut S, &mut PageMap) {
        let st = self.raw();
        // SAFETY: disjoint fields of the live state (the invariant).
        unsafe { (&mut (*st).descs, self.src, &mut (*st).map) }
    }

    /// The front of general class `i`: its magazine and chunk lists.
    ///
    /// # Safety
    ///
    /// `i < NUM_CLASSES` (what `size_class::class_for` returns).
    #[inline(always)]
    pub(super) unsafe fn class(&mut self, i: usize) -> Front<'_, S, MAG_CAP> {
        let st = self.raw();
        // SAFETY: `i` is in bounds (caller); disjoint fields of the live state (the invariant),
        // the magazine and the chunk lists of one class; the class's magazine caches blocks of
        // its lists only.
        unsafe {
            let mag = ClassMagazines::magazine(&raw mut (*st).mags, i);
            let lists = (&raw mut (*st).classes).cast::<ChunkLists>().add(i);
            let owner = Owner::Class {
                size: *CLASS_SIZES.get_unchecked(i),
            };
            let back = Back {
                src: self.src,
                roots: &mut (*st).descs,
                map: &mut (*st).map,
                pending: &mut (*st).pending,
            };
            Front::new(mag, lists, owner, back, &mut (*st).requested, (*st).window)
        }
    }

    /// The front of a user pool: its magazine and chunk lists (a pool of 1–7-byte blocks has an
    /// empty magazine that it never uses).
    #[inline(always)]
    pub(super) fn pool_front(&mut self, pool: PoolRef) -> Front<'_, S, POOL_MAG_CAP> {
        let st = self.raw();
        let h = pool.header().as_ptr();
        // SAFETY: the header is live (`PoolRef`) and lies in a root slot, disjoint from the
        // state's fields (the invariant); its magazine caches blocks of its lists only.
        unsafe {
            let back = Back {
                src: self.src,
                roots: &mut (*st).descs,
                map: &mut (*st).map,
                pending: &mut (*st).pending,
            };
            Front::new(
                (*h).mag.magazine(),
                pool.lists(),
                pool.owner(),
                back,
                &mut (*st).requested,
                (*st).window,
            )
        }
    }

    /// The pool `id` names if it is the pool named last (a compare, for the fast paths).
    #[inline(always)]
    pub(super) fn last_pool(&self, id: PoolId) -> Option<PoolRef> {
        // SAFETY: a field of the live state (the invariant), only read.
        let last = unsafe { &(*self.raw()).last_pool };
        if last.id != id {
            return None;
        }
        // SAFETY: the cache names a live pool or none, and no id equals `PoolId::NONE`'s.
        Some(unsafe { PoolRef::new(NonNull::new_unchecked(last.header)) })
    }

    /// The pool `id` names, if it is live: the cached compare, else the id check through the
    /// page map (a lookup and two loads), which then remembers the pool. O(1).
    #[inline]
    pub(super) fn pool(&mut self, id: PoolId) -> Option<PoolRef> {
        if let Some(pool) = self.last_pool(id) {
            return Some(pool);
        }
        self.find_pool(id)
    }

    #[inline(never)]
    fn find_pool(&mut self, id: PoolId) -> Option<PoolRef> {
        let header = pool::find(self.map(), id)?;
        // SAFETY: a field of the live state (the invariant).
        let last = unsafe { &mut (*self.raw()).last_pool };
        *last = LastPool {
            id,
            header: header.as_ptr(),
        };
        // SAFETY: `pool::find` returns only headers of live pools.
        Some(unsafe { PoolRef::new(header) })
    }

    /// The most recently created pool, if any (the head of the heap's pool list).
    pub(super) fn first_pool(&mut self) -> Option<PoolRef> {
        let head = self.pools().0.list;
        // SAFETY: members of the heap's pool list are live pool headers.
        NonNull::new(head).map(|h| unsafe { PoolRef::new(h) })
    }

    /// Forgets the pool named last (before a pool is destroyed).
    pub(super) fn forget_last_pool(&mut self) {
        // SAFETY: a field of the live state (the invariant).
        unsafe {
            (*self.raw()).last_pool = LastPool {
                id: PoolId::NONE,
                header: ptr::null_mut(),
            };
        }
    }
}

/// The magazines and pool headers a [`HeapState`] holds, for the walks of statistics and the
/// invariant checker (which hold a shared reference to the whole state).
impl HeapState {
    /// Class `i`'s chunk lists (their address is what their descriptors point back to).
    pub(super) fn class_lists(&self, i: usize) -> *const ChunkLists {
        &raw const self.classes[i]
    }

    /// The blocks class `i`'s magazine holds.
    pub(super) fn class_cached(&self, i: usize) -> &[*mut u8] {
        self.mags.cached(i)
    }
}
