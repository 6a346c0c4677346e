//! Statistics, the walk of every part ([`Heap::visit`]) and the invariant checker: the walks
//! that read the whole heap state.

use super::Heap;
use crate::chunk::KIND_CHUNK;
use crate::error::InvariantError;
use crate::pagemap::{Entry, EntryCounts};
use crate::pool::{KIND_POOL, PoolHeader, PoolId};
use crate::size_class::CLASS_SIZES;
use crate::source::PageSource;
use crate::stats::{BlockStats, HeapStats, MAX_POOL_STATS, PageStats, UserPoolStats};
use crate::walk::{Item, Owner, RootKind};

impl<S: PageSource> Heap<S> {
    /// A snapshot of the heap's numbers. Linear in the number of user pools.
    pub fn stats(&self) -> HeapStats {
        let mut s = HeapStats::default();
        for (i, c) in s.classes.iter_mut().enumerate() {
            c.block_size = CLASS_SIZES[i];
        }
        let Some(st) = self.view() else {
            return s;
        };
        let mut chunks = 0;
        let mut held = 0;
        for (i, (out, lists)) in s.classes.iter_mut().zip(st.classes.iter()).enumerate() {
            *out = BlockStats::of(lists, st.class_cached(i).len());
            chunks += out.chunks;
            held += out.in_use * out.block_size;
        }
        let mut listed = 0;
        for h in pool_headers(st.pools.list) {
            let ps = BlockStats::of(&h.lists, h.mag.len());
            chunks += ps.chunks;
            held += ps.in_use * ps.block_size;
            if listed < MAX_POOL_STATS {
                s.pools[listed] = Some(UserPoolStats {
                    id: PoolId::new(core::ptr::from_ref(h).addr(), h.generation),
                    object_size: h.size as usize,
                    object_align: h.align as usize,
                    blocks: ps,
                });
                listed += 1;
            } else {
                s.other_pools.add(&ps);
            }
        }
        // Chunks waiting to be released still hold their pages.
        chunks += st.pending.len();
        s.user_pools = st.pools.count;
        s.large = st.large.stats();
        held += s.large.live_bytes;
        let root = st.descs.pages() + st.pools.slots.pages();
        s.pages = PageStats {
            root,
            chunks,
            page_map: st.map.nodes(),
            large: st.large_pages,
            total: root + chunks + st.map.nodes() + st.large_pages,
        };
        s.requested_bytes = st.requested;
        s.held_bytes = held;
        s
    }

    /// Calls `f` with every part of the heap (see [`Item`]): the root runs, each chunk of each
    /// class and user pool, the large allocator's regions (each followed by its blocks) and page
    /// runs in address order, and the page map's size. Read-only, allocates nothing, and linear
    /// in the heap's size: what a picture of the heap's occupancy is drawn from. Nothing before
    /// the heap is initialised.
    ///
    /// It follows the heap's lists without checking them: on a heap that may be corrupt, run
    /// [`check_invariants`](Self::check_invariants) first.
    pub fn visit(&self, mut f: impl FnMut(Item)) {
        let Some(st) = self.view() else {
            return;
        };
        for (roots, kind) in [
            (&st.descs, RootKind::Descriptors),
            (&st.pools.slots, RootKind::Pools),
        ] {
            roots.for_each_run(|addr, pages, live, slots| {
                f(Item::RootRun {
                    addr,
                    pages,
                    kind,
                    live,
                    slots,
                });
            });
        }
        let mut chunks = |lists: &crate::chunk_lists::ChunkLists, owner| {
            let (block_size, capacity) = (
                usize::from(lists.geo.stride),
                usize::from(lists.geo.capacity),
            );
            lists.for_each_chunk(|addr, used| {
                f(Item::Chunk {
                    addr,
                    owner,
                    block_size,
                    used,
                    capacity,
                });
            });
        };
        for (i, lists) in st.classes.iter().enumerate() {
            chunks(lists, Owner::Class(i));
        }
        for h in pool_headers(st.pools.list) {
            let id = PoolId::new(core::ptr::from_ref(h).addr(), h.generation);
            chunks(&h.lists, Owner::Pool(id));
        }
        st.large.visit(&mut f);
        f(Item::PageMap {
            nodes: st.map.nodes(),
        });
    }

    /// Walks every structure of the heap and checks its invariants: the root-run chain and slot
    /// accounting, every chunk lists' partial/full/empty lists, the chunks pending release, every chunk's free list (bounds,
    /// alignment, no cycles, counts), every magazine, the page map against the chunks and root
    /// runs, the counters, and the large allocator's own checker. Linear in the heap's size.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let Some(s) = self.view() else {
            return Ok(());
        };
        let (mut chunk_slots, mut pool_slots) = (0, 0);
        s.descs.check(&s.map, |kind, slot| {
            if kind != KIND_CHUNK {
                return Err(InvariantError::DescriptorCorrupt {
                    addr: slot.addr().get(),
                });
            }
            chunk_slots += 1;
            Ok(())
        })?;
        s.pools.slots.check(&s.map, |kind, slot| {
            if kind != KIND_POOL {
                return Err(InvariantError::DescriptorCorrupt {
                    addr: slot.addr().get(),
                });
            }
            pool_slots += 1;
            Ok(())
        })?;
        let mut chunks = 0;
        let mut held = 0;
        for (i, lists) in s.classes.iter().enumerate() {
            let cached = s.class_cached(i);
            lists.check(s.class_lists(i), &s.map, cached, |_| chunks += 1)?;
            held += (lists.live() - cached.len()) * CLASS_SIZES[i];
        }
        let mut pools = 0;
        for h in pool_headers(s.pools.list) {
            if h.kind != KIND_POOL || pools >= pool_slots {
                let addr = core::ptr::from_ref(h).addr();
                return Err(InvariantError::DescriptorCorrupt { addr });
            }
            let cached = h.mag.cached();
            h.lists
                .check(&raw const h.lists, &s.map, cached, |_| chunks += 1)?;
            held += (h.lists.live() - cached.len()) * usize::from(h.lists.geo.stride);
            pools += 1;
        }
        chunks += s.pending.check(&s.map)?;
        let addr = core::ptr::from_ref(s).addr();
        let large = s.large.stats();
        held += large.live_bytes;
        let mut counts = EntryCounts::default();
        let nodes = s.map.for_each(|_, e| match e {
            Entry::Root(_) => counts.root += 1,
            Entry::Chunk(_) => counts.chunk += 1,
            Entry::Large(_) => counts.large += 1,
            Entry::Empty => {}
        });
        for (recorded, counted) in [
            (s.pools.count, pools),
            (pool_slots, pools),
            (chunk_slots, chunks),
            (counts.chunk, chunks),
            (counts.root, s.descs.pages() + s.pools.slots.pages()),
            (s.large_pages, counts.large),
            (s.map.nodes(), nodes + s.map.spare_nodes()),
        ] {
            if recorded != counted {
                return Err(InvariantError::CountMismatch {
                    addr,
                    recorded,
                    counted,
                });
            }
        }
        if !s.map.spare_is_zeroed() {
            return Err(InvariantError::PageMapMismatch { addr });
        }
        if s.requested > held {
            return Err(InvariantError::CountMismatch {
                addr,
                recorded: s.requested,
                counted: held,
            });
        }
        s.large.check_invariants()
    }
}

/// The headers of the heap's pool list starting at `head`, for the read-only walks (the
/// checker stops a walk that runs longer than the pool slots).
fn pool_headers<'a>(head: *mut PoolHeader) -> impl Iterator<Item = &'a PoolHeader> {
    let mut next = head;
    core::iter::from_fn(move || {
        // SAFETY: members of the heap's pool list are live pool headers, which nothing writes
        // while the walk's `&self` borrow of the heap lives.
        let h = unsafe { next.as_ref() }?;
        next = h.next;
        Some(h)
    })
}
