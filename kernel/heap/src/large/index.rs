//! The mapping index: one intrusive treap of every region and page run.
//!
//! The node at the start of every region and every page run ([`Mapping`]) is an entry of a binary
//! search tree by address, heap-ordered by a hash of the address ([`priority`]). It gives
//! O(log n) expected lookup of the mapping that contains an address, which
//! `LargeAlloc::owns` and the debug checks use so that they never read unmapped memory, and an
//! in-order walk for the invariant checker. The tree lives entirely in the mappings; the
//! allocator keeps only its root.

use core::ptr::{self, NonNull};

use crate::error::InvariantError;
use crate::source::PAGE_SIZE;

/// `Mapping::kind` of a region.
pub(super) const KIND_REGION: usize = 0x4B48_5245_4749_4F4E;
/// `Mapping::kind` of a page run.
pub(super) const KIND_RUN: usize = 0x4B48_5041_4745_5255;

/// The node at offset 0 of every region and page run.
#[repr(C)]
pub(super) struct Mapping {
    /// Child with lower addresses.
    pub(super) left: *mut Mapping,
    /// Child with higher addresses.
    pub(super) right: *mut Mapping,
    /// Parent, null for the root.
    pub(super) parent: *mut Mapping,
    /// Length of the whole mapping in bytes (a multiple of `PAGE_SIZE`).
    pub(super) len: usize,
    /// [`KIND_REGION`] or [`KIND_RUN`].
    pub(super) kind: usize,
    /// A page run's data offset: its user pointer is `node + data` (a multiple of the run's
    /// alignment and of a cache line, in `RUN_MIN_OFFSET..=PAGE_SIZE`; see `run`). 0 for a
    /// region.
    pub(super) data: usize,
}

/// Heap priority of a node: a bijective hash of its page number, so that mappings handed out at
/// increasing addresses still make a balanced tree (expected depth O(log n)).
fn priority(node: *mut Mapping) -> usize {
    (node.addr() >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The node of the page run whose data starts at `ptr` (address arithmetic only): a run's data
/// starts 64 to 4096 bytes after its page-aligned node, so the node is the page that holds
/// `ptr - 1`.
pub(super) fn run_node(ptr: NonNull<u8>) -> *mut Mapping {
    let offset = (ptr.addr().get() - 1) % PAGE_SIZE + 1;
    ptr.as_ptr().wrapping_sub(offset).cast::<Mapping>()
}

/// The index: the root of the treap of all mappings (null when there is none).
pub(super) struct Index {
    root: *mut Mapping,
}

impl Index {
    /// An empty index.
    pub(super) const fn new() -> Self {
        Self {
            root: ptr::null_mut(),
        }
    }

    /// Adds `node` to the index.
    ///
    /// # Safety
    ///
    /// `node` is the initialised node of a new mapping of ours, not in the index, with null links.
    pub(super) unsafe fn insert(&mut self, node: *mut Mapping) {
        // SAFETY: all nodes reached are nodes of live mappings of ours (index invariant).
        unsafe {
            if self.root.is_null() {
                self.root = node;
                return;
            }
            let mut cur = self.root;
            loop {
                let link = if node.addr() < cur.addr() {
                    &raw mut (*cur).left
                } else {
                    &raw mut (*cur).right
                };
                if (*link).is_null() {
                    *link = node;
                    (*node).parent = cur;
                    break;
                }
                cur = *link;
            }
            while !(*node).parent.is_null() && priority(node) > priority((*node).parent) {
                self.rotate_up(node);
            }
        }
    }

    /// Removes `node` from the index.
    ///
    /// # Safety
    ///
    /// `node` is in the index.
    pub(super) unsafe fn remove(&mut self, node: *mut Mapping) {
        // SAFETY: all nodes reached are nodes of live mappings of ours (index invariant).
        unsafe {
            // Rotate the node down (its higher-priority child up) until it is a leaf.
            loop {
                let (left, right) = ((*node).left, (*node).right);
                let child = match (left.is_null(), right.is_null()) {
                    (true, true) => break,
                    (false, true) => left,
                    (true, false) => right,
                    (false, false) => {
                        if priority(left) > priority(right) {
                            left
                        } else {
                            right
                        }
                    }
                };
                self.rotate_up(child);
            }
            let parent = (*node).parent;
            if parent.is_null() {
                self.root = ptr::null_mut();
            } else if (*parent).left == node {
                (*parent).left = ptr::null_mut();
            } else {
                (*parent).right = ptr::null_mut();
            }
            (*node).parent = ptr::null_mut();
        }
    }

    /// Rotates `node` above its parent.
    ///
    /// # Safety
    ///
    /// `node` is in the index and has a parent.
    unsafe fn rotate_up(&mut self, node: *mut Mapping) {
        // SAFETY: `node`, its parent, its grandparent and the moved subtree are indexed nodes.
        unsafe {
            let parent = (*node).parent;
            let grand = (*parent).parent;
            if (*parent).left == node {
                let moved = (*node).right;
                (*parent).left = moved;
                if !moved.is_null() {
                    (*moved).parent = parent;
                }
                (*node).right = parent;
            } else {
                let moved = (*node).left;
                (*parent).right = moved;
                if !moved.is_null() {
                    (*moved).parent = parent;
                }
                (*node).left = parent;
            }
            (*parent).parent = node;
            (*node).parent = grand;
            if grand.is_null() {
                self.root = node;
            } else if (*grand).left == parent {
                (*grand).left = node;
            } else {
                (*grand).right = node;
            }
        }
    }

    /// The indexed mapping that contains `addr`, or null.
    pub(super) fn find_containing(&self, addr: usize) -> *mut Mapping {
        let mut best = ptr::null_mut::<Mapping>();
        let mut cur = self.root;
        while !cur.is_null() {
            // SAFETY: indexed nodes are live nodes of our mappings.
            cur = unsafe {
                if cur.addr() <= addr {
                    best = cur;
                    (*cur).right
                } else {
                    (*cur).left
                }
            };
        }
        // SAFETY: `best`, if not null, is an indexed node.
        if !best.is_null() && addr - best.addr() < unsafe { (*best).len } {
            best
        } else {
            ptr::null_mut()
        }
    }

    /// The lowest-addressed indexed node, or null.
    pub(super) fn first(&self) -> *mut Mapping {
        let mut cur = self.root;
        // SAFETY: indexed nodes are live nodes of our mappings.
        unsafe {
            while !cur.is_null() && !(*cur).left.is_null() {
                cur = (*cur).left;
            }
        }
        cur
    }

    /// The in-order successor of an indexed node, or null.
    pub(super) fn successor(node: *mut Mapping) -> *mut Mapping {
        // SAFETY: `node` and every node reached through links are indexed, live nodes.
        unsafe {
            if !(*node).right.is_null() {
                let mut cur = (*node).right;
                while !(*cur).left.is_null() {
                    cur = (*cur).left;
                }
                return cur;
            }
            let mut cur = node;
            let mut parent = (*cur).parent;
            while !parent.is_null() && (*parent).right == cur {
                cur = parent;
                parent = (*cur).parent;
            }
            parent
        }
    }

    /// Checks one index node's links and heap order.
    pub(super) fn check_node(&self, node: *mut Mapping) -> Result<(), InvariantError> {
        // SAFETY: `node` was reached from the root through links whose back links are checked
        // here before the walk goes on.
        unsafe {
            let parent = (*node).parent;
            let linked = if parent.is_null() {
                self.root == node
            } else {
                ((*parent).left == node && node.addr() < parent.addr())
                    || ((*parent).right == node && node.addr() > parent.addr())
            };
            let heap_ordered = parent.is_null() || priority(parent) > priority(node);
            let children = [(*node).left, (*node).right]
                .iter()
                .all(|&child| child.is_null() || (*child).parent == node);
            if linked && heap_ordered && children {
                Ok(())
            } else {
                Err(InvariantError::ListCorrupt { addr: node.addr() })
            }
        }
    }
}
