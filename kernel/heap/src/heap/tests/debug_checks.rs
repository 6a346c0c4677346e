//! `debug-checks`: invalid frees panic with a message naming the address and the class or pool.

use super::*;

#[test]
#[should_panic(expected = "kheap: double free of")]
fn double_free() {
    let mut h = heap(64);
    let l = layout(64, 8);
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong: the second free is the bug under test.
    unsafe {
        h.deallocate(p, l);
        h.deallocate(p, l);
    }
}

/// The first free put the block in the magazine, and the magazine gave it back to its
/// chunk before the second free: still caught.
#[test]
#[should_panic(expected = "kheap: double free of")]
fn double_free_after_the_magazine_gave_the_block_back() {
    let mut h = heap(64);
    let l = layout(64, 8);
    let blocks: Vec<_> = (0..2 * MAG_CAP).map(|_| h.allocate(l).unwrap()).collect();
    // SAFETY: every block is freed once; then (deliberately wrong) the first again.
    unsafe {
        for &p in &blocks {
            h.deallocate(p, l);
        }
        h.check_invariants().unwrap();
        assert!(h.stats().classes[7].cached < blocks.len());
        h.deallocate(blocks[0], l);
    }
}

/// The block's chunk emptied past the reserve and waits on the pending list, still mapped:
/// a second free of its block is caught all the same.
#[test]
#[should_panic(expected = "kheap: double free of")]
fn double_free_into_a_chunk_pending_release() {
    let mut h = heap(256);
    let l = layout(4096, 4096);
    let reserve = ChunkLists::new(Geometry::new(4096)).reserve_limit() as usize;
    let blocks: Vec<_> = (0..MAG_CAP + reserve + 2)
        .map(|_| h.allocate(l).unwrap())
        .collect();
    // SAFETY: every block is freed once; then (deliberately wrong) the last again.
    unsafe {
        for &p in &blocks {
            h.deallocate(p, l);
        }
        h.check_invariants().unwrap();
        let s = h.stats();
        assert_eq!(
            s.pages.chunks,
            s.classes[35].chunks + 2,
            "two chunks pending"
        );
        h.deallocate(*blocks.last().unwrap(), l);
    }
}

#[test]
#[should_panic(expected = "(class 64 B)")]
fn double_free_names_the_class() {
    double_free();
}

#[test]
#[should_panic(expected = "kheap: free of interior pointer")]
fn interior_pointer() {
    let mut h = heap(64);
    let l = layout(64, 8);
    let p = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(p.add(8), l) };
}

#[test]
#[should_panic(expected = "but it belongs to a pool of 128 B blocks")]
fn wrong_class() {
    let mut h = heap(64);
    let p = h.allocate(layout(128, 8)).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(p, layout(64, 8)) };
}

#[test]
#[should_panic(expected = "which is not a heap block")]
fn foreign_pointer() {
    let mut h = heap(64);
    let _ = h.allocate(layout(8, 8)).unwrap();
    let mut local = 0u64;
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(NonNull::from(&mut local).cast(), layout(8, 8)) };
}

#[test]
#[should_panic(expected = "kheap: double free of large block")]
fn large_double_free() {
    let mut h = heap(64);
    let l = layout(10_000, 8);
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.deallocate(p, l);
        h.deallocate(p, l);
    }
}

#[test]
#[should_panic(expected = "but it is a large block")]
fn large_block_freed_as_small() {
    let mut h = heap(64);
    let p = h.allocate(layout(10_000, 8)).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(p, layout(64, 8)) };
}

#[test]
#[should_panic(expected = "kheap: double free of")]
fn pool_double_free_of_a_cached_block() {
    let mut h = heap(64);
    let id = h.create_pool(48, 16).unwrap();
    let p = h.pool_allocate(id).unwrap();
    // SAFETY: deliberately wrong: the first free puts `p` in the pool's magazine.
    unsafe {
        h.pool_deallocate(id, p);
        h.pool_deallocate(id, p);
    }
}

#[test]
#[should_panic(expected = "kheap: free of interior pointer")]
fn pool_free_of_an_interior_pointer() {
    let mut h = heap(64);
    let id = h.create_pool(48, 16).unwrap();
    let p = h.pool_allocate(id).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.pool_deallocate(id, p.add(8)) };
}

#[test]
#[should_panic(expected = "kheap: double free of")]
fn tiny_pool_double_free() {
    let mut h = heap(64);
    let id = h.create_pool(1, 1).unwrap();
    let p = h.pool_allocate(id).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.pool_deallocate(id, p);
        h.pool_deallocate(id, p);
    }
}

#[test]
#[should_panic(expected = "which is not a live pool")]
fn free_to_destroyed_pool() {
    let mut h = heap(64);
    let id = h.create_pool(16, 8).unwrap();
    let p = h.pool_allocate(id).unwrap();
    // SAFETY: freed once, then (deliberately wrong) again after the pool is gone.
    unsafe { h.pool_deallocate(id, p) };
    h.destroy_pool(id).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.pool_deallocate(id, p) };
}

#[test]
#[should_panic(expected = "as pool #2, 16 B blocks, but it belongs to a pool of 16 B")]
fn free_to_the_wrong_pool() {
    let mut h = heap(64);
    let a = h.create_pool(16, 8).unwrap();
    let b = h.create_pool(16, 8).unwrap();
    let p = h.pool_allocate(a).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.pool_deallocate(b, p) };
}

#[test]
#[should_panic(expected = "kheap: double free of")]
fn realloc_of_a_freed_block() {
    let mut h = heap(64);
    let l = layout(32, 8);
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.deallocate(p, l);
        let _ = h.reallocate(p, l, 24);
    }
}

/// An aligned request that `class_for` sends to the large allocator (a 4096-byte class would
/// waste more than 1/8): its double free is caught there and names the block.
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn aligned_large_double_free() {
    let mut h = heap(64);
    let l = layout(2500, 64);
    assert_eq!(
        crate::size_class::class_for(l),
        crate::size_class::SizeClass::Large
    );
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.deallocate(p, l);
        h.deallocate(p, l);
    }
}

/// An aligned class block freed at the inlined fast path (alignment above 8, h12): a double
/// free is caught there and names the class.
#[test]
#[should_panic(expected = "(class 128 B)")]
fn aligned_class_double_free_names_the_class() {
    let mut h = heap(64);
    let l = layout(100, 128);
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.deallocate(p, l);
        h.deallocate(p, l);
    }
}

/// A page-aligned page (the kernel mix's 4096/4096 blocks) freed twice at the inlined fast path.
#[test]
#[should_panic(expected = "kheap: double free of")]
fn page_aligned_class_double_free() {
    let mut h = heap(64);
    let l = layout(4096, 4096);
    let p = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe {
        h.deallocate(p, l);
        h.deallocate(p, l);
    }
}

/// A pointer the heap never gave out, freed with an aligned class layout.
#[test]
#[should_panic(expected = "which is not a heap block")]
fn foreign_pointer_with_an_aligned_layout() {
    let mut h = heap(64);
    let _ = h.allocate(layout(100, 128)).unwrap();
    let mut local = [0u64; 32];
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(NonNull::from(&mut local).cast(), layout(100, 128)) };
}

/// An aligned large block freed with the layout of an aligned class (the wrong layout).
#[test]
#[should_panic(expected = "but it is a large block")]
fn aligned_large_block_freed_as_an_aligned_class_block() {
    let mut h = heap(64);
    let p = h.allocate(layout(2500, 64)).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(p, layout(100, 128)) };
}

/// A large block freed twice after its first free merged it into its free predecessor (h15: the
/// merged-away header is the only thing marked FREE there): caught, naming the block.
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn large_double_free_after_a_merge_into_the_predecessor() {
    let mut h = heap(64);
    let l = layout(2500, 8);
    let a = h.allocate(l).unwrap();
    let b = h.allocate(l).unwrap();
    let _keep = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong: `b` merges into `a`'s free block, then is freed again.
    unsafe {
        h.deallocate(a, l);
        h.deallocate(b, l);
        h.deallocate(b, l);
    }
}

/// A large block freed twice after its first free merged its free successor into it.
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn large_double_free_after_a_merge_with_the_successor() {
    let mut h = heap(64);
    let l = layout(2500, 8);
    let _keep = h.allocate(l).unwrap();
    let a = h.allocate(l).unwrap();
    let b = h.allocate(l).unwrap();
    let _keep2 = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong: `a` absorbs the free `b`, then is freed again.
    unsafe {
        h.deallocate(b, l);
        h.deallocate(a, l);
        h.deallocate(a, l);
    }
}

/// A pointer the heap never gave out, freed with a large layout (the direct large path, h15).
#[test]
#[should_panic(expected = "which is not a heap block")]
fn foreign_pointer_with_a_large_layout() {
    let mut h = heap(64);
    let _ = h.allocate(layout(2500, 8)).unwrap();
    let mut local = [0u64; 32];
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(NonNull::from(&mut local).cast(), layout(2500, 8)) };
}

/// An interior pointer of a live large block, freed with its layout.
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn interior_pointer_of_a_large_block() {
    let mut h = heap(64);
    let l = layout(2500, 8);
    let p = h.allocate(l).unwrap();
    // SAFETY: deliberately wrong.
    unsafe { h.deallocate(p.add(64), l) };
}
