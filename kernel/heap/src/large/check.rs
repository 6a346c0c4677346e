//! The large allocator's invariant checker, and its debug check of a free.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use super::LargeAlloc;
use super::block::{Block, END, FREE, GRANULE, HEADER, MIN_BLOCK, RUN, USED};
use super::index::{Index, KIND_REGION, KIND_RUN, Mapping};
use super::region::{EXCESS_REGIONS, IDLE_LIMIT, MAX_REGION, REGION_HEADER, REGION_MIN};
use super::run::{LINE, RUN_MIN_OFFSET};
use crate::error::InvariantError;
use crate::source::PAGE_SIZE;

impl LargeAlloc {
    /// `debug-checks`: panics (naming the address) unless `ptr` is a live allocation that fits
    /// `layout`. Does nothing without the feature.
    #[inline]
    pub(super) fn check_free(&self, ptr: NonNull<u8>, layout: Layout) {
        if !crate::debug::ENABLED {
            return;
        }
        let addr = ptr.addr().get();
        let node = self.index.find_containing(addr);
        if node.is_null() {
            panic!("kheap: double free of large block {addr:#x} (its memory is no longer mapped)");
        }
        let base = node.addr();
        // SAFETY: `node` is indexed, so it is the live node of one of our mappings.
        let (len, kind) = unsafe { ((*node).len, (*node).kind) };
        // SAFETY: as above.
        let data = unsafe { (*node).data };
        let starts_block = if kind == KIND_RUN {
            addr == base + data
        } else {
            addr.is_multiple_of(GRANULE) && addr >= base + REGION_HEADER + HEADER
        };
        if !starts_block {
            panic!("kheap: free of {addr:#x}, which is not the start of a large block");
        }
        let block = Block::from_user(ptr);
        // SAFETY: `block` (`addr - 16`) was just checked to lie in the mapping of `node`.
        let (state, usable) = unsafe {
            match block.checked_state() {
                Some(RUN) => (Some(RUN), len - data),
                state => (state, block.size().saturating_sub(HEADER)),
            }
        };
        match (state, kind) {
            (Some(USED), KIND_REGION) | (Some(RUN), KIND_RUN) => {}
            (Some(FREE), _) => panic!("kheap: double free of large block {addr:#x}"),
            _ => panic!(
                "kheap: double free of large block {addr:#x}, or a pointer that was never \
                 allocated (no live block header)"
            ),
        }
        if usable < layout.size() || !addr.is_multiple_of(layout.align()) {
            panic!(
                "kheap: large block {addr:#x} freed with a layout (size {}, align {}) that does \
                 not match its allocation (usable size {usable})",
                layout.size(),
                layout.align()
            );
        }
    }

    /// Walks the index, every bin, every region's blocks and the counters, and reports the first
    /// broken invariant found (see the module documentation for the list). The index is checked
    /// first and the bins next, so that each later pass follows only links already validated.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        // Pass 1: the index, in address order.
        let mut regions = 0;
        let mut region_bytes = 0;
        let mut page_runs = 0;
        let mut page_run_pages = 0;
        let mut run_bytes = 0;
        let mut prev_base = 0usize;
        let mut prev_end = 0usize;
        let limit = self.regions + self.page_runs;
        let mut visited = 0usize;
        let mut node = self.index.first();
        while !node.is_null() {
            visited += 1;
            if visited > limit {
                // Either the counters are low or the links loop: stop the walk either way.
                return Err(InvariantError::CountMismatch {
                    addr: self.addr(),
                    recorded: limit,
                    counted: visited,
                });
            }
            self.index.check_node(node)?;
            let base = node.addr();
            // SAFETY: `check_node` verified that the node is linked into the index, so it is
            // live.
            let (len, kind, data) = unsafe { ((*node).len, (*node).kind, (*node).data) };
            if len == 0 || !len.is_multiple_of(PAGE_SIZE) || !base.is_multiple_of(PAGE_SIZE) {
                return Err(InvariantError::DescriptorCorrupt { addr: base });
            }
            if base < prev_end {
                return Err(InvariantError::Overlap {
                    addr: prev_base,
                    other: base,
                });
            }
            prev_base = base;
            prev_end = base + len;
            match kind {
                KIND_REGION if (REGION_MIN..=MAX_REGION).contains(&len) && data == 0 => {
                    regions += 1;
                    region_bytes += len;
                }
                KIND_RUN => {
                    // The data starts in the node page, at a cache-line multiple past the node.
                    if !(RUN_MIN_OFFSET..=PAGE_SIZE).contains(&data)
                        || !data.is_multiple_of(LINE)
                        || data >= len
                    {
                        return Err(InvariantError::DescriptorCorrupt { addr: base });
                    }
                    let header = Block(node.cast::<u8>().wrapping_add(data - HEADER));
                    // SAFETY: the header lies in the node page (`data <= PAGE_SIZE`).
                    let tag = unsafe { (header.checked_state(), header.prev_size()) };
                    if tag != (Some(RUN), data) {
                        return Err(InvariantError::LargeHeaderCorrupt {
                            addr: header.addr(),
                        });
                    }
                    page_runs += 1;
                    page_run_pages += len / PAGE_SIZE;
                    run_bytes += len - data;
                }
                _ => return Err(InvariantError::DescriptorCorrupt { addr: base }),
            }
            node = Index::successor(node);
        }
        if visited != limit {
            return Err(InvariantError::CountMismatch {
                addr: self.addr(),
                recorded: limit,
                counted: visited,
            });
        }

        // Pass 2: the bins hold only free blocks of the right size inside regions, consistently
        // linked; the bitmaps mark exactly the non-empty bins.
        let binned = self
            .bins
            .check(self.addr(), region_bytes / MIN_BLOCK, |block| {
                let region = self.index.find_containing(block.addr());
                if region.is_null() {
                    return false;
                }
                // SAFETY: `region` is indexed (and checked in pass 1), so its node is readable.
                let (kind, len) = unsafe { ((*region).kind, (*region).len) };
                kind == KIND_REGION
                    && block.addr().is_multiple_of(GRANULE)
                    && block.addr() >= region.addr() + REGION_HEADER
                    && block.addr() + MIN_BLOCK <= region.addr() + len - HEADER
            })?;

        // Pass 3: the blocks of every region.
        let mut free_blocks = 0;
        let mut free_bytes = 0;
        let mut live_blocks = page_runs;
        let mut live_bytes = run_bytes;
        let mut idle_bytes = 0;
        let mut idle_region = 0;
        let mut growing_seen = false;
        let mut node = self.index.first();
        while !node.is_null() {
            // SAFETY: pass 1 validated every indexed node.
            if unsafe { (*node).kind } == KIND_REGION {
                growing_seen |= node == self.growing;
                let walk = self.check_region(node)?;
                free_blocks += walk.free_blocks;
                free_bytes += walk.free_bytes;
                live_blocks += walk.live_blocks;
                live_bytes += walk.live_bytes;
                if walk.wholly_free {
                    // SAFETY: pass 1 validated every indexed node.
                    idle_bytes += unsafe { (*node).len };
                    idle_region = node.addr();
                }
            }
            node = Index::successor(node);
        }
        let excess_bytes = self.check_excess()?;
        if idle_bytes != self.idle_bytes || idle_bytes.saturating_sub(excess_bytes) > IDLE_LIMIT {
            return Err(InvariantError::CachedRegionMismatch { addr: idle_region });
        }
        // The region that grows in place is one of ours.
        if !self.growing.is_null() && !growing_seen {
            return Err(InvariantError::DescriptorCorrupt {
                addr: self.growing.addr(),
            });
        }
        // Every free block was found in its bin, so equal counts mean the bins hold nothing else.
        if binned != free_blocks {
            return Err(InvariantError::BinCorrupt { addr: self.addr() });
        }

        let counters = [
            (self.regions, regions),
            (self.region_bytes, region_bytes),
            (self.bins.free_bytes(), free_bytes),
            (self.live_blocks, live_blocks),
            (self.live_bytes(), live_bytes),
            (self.page_runs, page_runs),
            (self.page_run_pages, page_run_pages),
        ];
        if let Some(&(recorded, counted)) = counters.iter().find(|&&(kept, found)| kept != found) {
            return Err(InvariantError::CountMismatch {
                addr: self.addr(),
                recorded,
                counted,
            });
        }
        Ok(())
    }

    /// Checks the excess list (distinct regions of the index, each wholly free) and returns
    /// their bytes. Runs after pass 1, which validated every indexed node.
    fn check_excess(&self) -> Result<usize, InvariantError> {
        if self.excess_len > EXCESS_REGIONS {
            return Err(InvariantError::CachedRegionMismatch { addr: self.addr() });
        }
        let listed = &self.excess[..self.excess_len];
        let mut bytes = 0;
        for (i, &region) in listed.iter().enumerate() {
            let bad = Err(InvariantError::CachedRegionMismatch {
                addr: region.addr(),
            });
            if self.index.find_containing(region.addr()) != region || listed[..i].contains(&region)
            {
                return bad;
            }
            // SAFETY: `region` is indexed, so its node and, for a region, its first header and
            // sentinel (checked by pass 3's walk of it) are readable.
            unsafe {
                if (*region).kind != KIND_REGION {
                    return bad;
                }
                let first = Block(region.cast::<u8>().wrapping_add(REGION_HEADER));
                if first.state() != FREE || first.next().state() != END {
                    return bad;
                }
                bytes += (*region).len;
            }
        }
        Ok(bytes)
    }

    /// Address of this allocator (for errors about its own fields).
    fn addr(&self) -> usize {
        ptr::from_ref(self).addr()
    }

    /// Walks the blocks of one region.
    fn check_region(&self, region: *mut Mapping) -> Result<RegionWalk, InvariantError> {
        let mut walk = RegionWalk::default();
        let base = region.cast::<u8>();
        // SAFETY: `region` is an indexed region, so its `len` bytes are ours; every header read
        // is first checked to lie at or before the sentinel position.
        unsafe {
            let len = (*region).len;
            let end = Block(base.wrapping_add(len - HEADER));
            let mut block = Block(base.wrapping_add(REGION_HEADER));
            let mut prev_size = 0;
            let mut prev_free = false;
            let mut blocks = 0;
            loop {
                let Some(state) = block.checked_state() else {
                    return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                };
                if block.prev_size() != prev_size {
                    return Err(InvariantError::BoundaryTagMismatch { addr: block.addr() });
                }
                if state == END {
                    if block != end {
                        return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                    }
                    break;
                }
                let size = block.size();
                if size < MIN_BLOCK
                    || !size.is_multiple_of(GRANULE)
                    || size > end.addr() - block.addr()
                {
                    return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() });
                }
                match state {
                    FREE => {
                        if prev_free {
                            return Err(InvariantError::NotCoalesced {
                                addr: block.addr() - prev_size,
                            });
                        }
                        // (The bins passed their check in pass 2 and do not change here.)
                        if !self.bins.contains(block, size) {
                            return Err(InvariantError::BinCorrupt { addr: block.addr() });
                        }
                        walk.free_blocks += 1;
                        walk.free_bytes += size;
                    }
                    USED => {
                        walk.live_blocks += 1;
                        walk.live_bytes += size - HEADER;
                    }
                    _ => return Err(InvariantError::LargeHeaderCorrupt { addr: block.addr() }),
                }
                prev_free = state == FREE;
                prev_size = size;
                blocks += 1;
                block = block.forward(size);
            }
            walk.wholly_free = blocks == 1 && walk.free_blocks == 1;
        }
        Ok(walk)
    }
}

/// What [`LargeAlloc::check_region`] found in one region.
#[derive(Default)]
struct RegionWalk {
    free_blocks: usize,
    free_bytes: usize,
    live_blocks: usize,
    live_bytes: usize,
    wholly_free: bool,
}
