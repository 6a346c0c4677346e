//! The large allocator's part of [`Heap::visit`](crate::Heap::visit): its mappings in address
//! order, each region followed by its blocks.

use super::LargeAlloc;
use super::block::{Block, FREE, HEADER, RUN};
use super::index::{Index, KIND_REGION, Mapping};
use super::region::REGION_HEADER;
use crate::source::PAGE_SIZE;
use crate::walk::Item;

impl LargeAlloc {
    /// Calls `f` with each region (then its blocks) and each page run, in address order.
    /// Read-only and allocation-free; it trusts the structure (run the checker first on a heap
    /// that may be corrupt).
    pub(crate) fn visit(&self, f: &mut impl FnMut(Item)) {
        let mut node = self.index.first();
        while !node.is_null() {
            // SAFETY: indexed nodes are live mappings of this allocator, which nothing writes
            // while `&self` lives.
            let (len, kind) = unsafe { ((*node).len, (*node).kind) };
            let addr = node.addr();
            if kind == KIND_REGION {
                f(Item::Region { addr, bytes: len });
                self.visit_blocks(node, len, f);
            } else {
                f(Item::PageRun {
                    addr,
                    pages: len / PAGE_SIZE,
                });
            }
            node = Index::successor(node);
        }
    }

    /// The blocks of the region at `region`, `len` bytes long.
    fn visit_blocks(&self, region: *mut Mapping, len: usize, f: &mut impl FnMut(Item)) {
        let base = region.cast::<u8>();
        let end = base.wrapping_add(len - HEADER).addr();
        let mut block = Block(base.wrapping_add(REGION_HEADER));
        // SAFETY: the blocks of a live region tile it from its header to the end sentinel, and
        // each header is checked (state and size) before its size moves the walk on.
        unsafe {
            while block.addr() < end {
                let Some(state) = block.checked_state() else {
                    return;
                };
                let size = block.size();
                if state == RUN || size == 0 || size > end - block.addr() {
                    return;
                }
                f(Item::RegionBlock {
                    addr: block.addr(),
                    bytes: size,
                    free: state == FREE,
                });
                block = block.forward(size);
            }
        }
    }
}
