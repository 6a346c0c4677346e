//! User pools: ids, magazines, tiny pools, statistics.

use super::*;

#[test]
fn user_pools() {
    let mut h = heap(512);
    assert!(matches!(
        h.create_pool(0, 8),
        Err(PoolError::InvalidBlockLayout { .. })
    ));
    assert!(matches!(
        h.create_pool(8, 3),
        Err(PoolError::InvalidBlockLayout { .. })
    ));
    assert!(matches!(
        h.create_pool(8, 8192),
        Err(PoolError::InvalidBlockLayout { .. })
    ));
    assert!(matches!(
        h.create_pool(4097, 1),
        Err(PoolError::InvalidBlockLayout { .. })
    ));
    let a = h.create_pool(24, 8).unwrap();
    let b = h.create_pool(3, 1).unwrap();
    let c = h.create_pool(4096, 4096).unwrap();
    assert_eq!(h.pool_layout(b).unwrap(), layout(3, 1));
    assert_eq!(h.stats().pages.chunks, 0, "pools are lazy");
    let n = if cfg!(miri) { 150 } else { 3000 };
    let mut live = Vec::new();
    for i in 0..n {
        for (id, size) in [(a, 24), (b, 3)] {
            let p = h.pool_allocate(id).unwrap();
            fill(p, size, i as u8);
            live.push((id, p, size, i as u8));
        }
    }
    let p = h.pool_allocate(c).unwrap();
    assert_eq!(p.addr().get() % 4096, 0);
    h.check_invariants().unwrap();
    let s = h.stats();
    assert_eq!(s.user_pools, 3);
    let sb = s.pools.iter().flatten().find(|u| u.id == b).unwrap();
    assert_eq!(sb.blocks.in_use, n);
    assert_eq!(sb.blocks.block_size, 3);
    assert_eq!(
        sb.blocks.chunks,
        n.div_ceil(usize::from(Geometry::new(3).capacity))
    );
    assert_eq!(
        h.destroy_pool(a),
        Err(PoolError::PoolInUse { live_blocks: n })
    );
    for (id, p, size, seed) in live.drain(..) {
        check(p, size, seed);
        // SAFETY: allocated above from `id`.
        unsafe { h.pool_deallocate(id, p) };
    }
    // SAFETY: allocated above from `c`.
    unsafe { h.pool_deallocate(c, p) };
    h.check_invariants().unwrap();
    for id in [a, b, c] {
        h.destroy_pool(id).unwrap();
        assert_eq!(h.destroy_pool(id), Err(PoolError::NoSuchPool));
        assert_eq!(h.pool_allocate(id), Err(AllocError::NoSuchPool));
        h.check_invariants().unwrap();
    }
    // A new pool reuses the slot but not the identity.
    let d = h.create_pool(24, 8).unwrap();
    assert_ne!(d, a);
    assert_eq!(h.pool_allocate(a), Err(AllocError::NoSuchPool));
    h.destroy_pool(d).unwrap();
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn user_pool_magazines_cache_freed_blocks() {
    let mut h = heap(256);
    let a = h.create_pool(40, 8).unwrap();
    let b = h.create_pool(64, 64).unwrap();
    // A freed block comes back first (LIFO), from the magazine, with no chunk work.
    let p = h.pool_allocate(a).unwrap();
    // SAFETY: allocated above from `a`.
    unsafe { h.pool_deallocate(a, p) };
    assert_eq!(h.pool_allocate(a).unwrap(), p);
    // Alternating pools (the id cache switches) keep their blocks apart.
    let q = h.pool_allocate(b).unwrap();
    assert_eq!(q.addr().get() % 64, 0);
    // SAFETY: allocated above from `b`, then `a`.
    unsafe {
        h.pool_deallocate(b, q);
        h.pool_deallocate(a, p);
    }
    assert_eq!(h.pool_allocate(b).unwrap(), q);
    // More frees than a magazine holds: the oldest go back to their chunks.
    let blocks: Vec<_> = (0..3 * POOL_MAG_CAP)
        .map(|i| {
            let p = h.pool_allocate(a).unwrap();
            fill(p, 40, i as u8);
            p
        })
        .collect();
    for (i, &p) in blocks.iter().enumerate() {
        check(p, 40, i as u8);
        // SAFETY: allocated above from `a`.
        unsafe { h.pool_deallocate(a, p) };
        h.check_invariants().unwrap();
    }
    let s = h.stats();
    let sa = s.pools.iter().flatten().find(|u| u.id == a).unwrap();
    assert_eq!(sa.blocks.in_use, 0, "cached blocks count as free");
    assert!(sa.blocks.cached > 0 && sa.blocks.cached <= POOL_MAG_CAP);
    // Destroying a pool whose blocks sit in its magazine works and gives its chunks back.
    h.destroy_pool(a).unwrap();
    assert_eq!(h.pool_allocate(a), Err(AllocError::NoSuchPool));
    // SAFETY: allocated above from `b`.
    unsafe { h.pool_deallocate(b, q) };
    h.trim();
    let s = h.stats();
    let sb = s.pools.iter().flatten().find(|u| u.id == b).unwrap();
    assert_eq!(
        (sb.blocks.cached, sb.blocks.chunks),
        (0, 0),
        "trim empties pool magazines"
    );
    h.destroy_pool(b).unwrap();
    h.trim();
    assert_only_roots_left(&h);
}

#[test]
fn tiny_pools_pack_blocks_below_eight_bytes() {
    let mut h = heap(256);
    let sizes = if cfg!(miri) {
        &[7][..]
    } else {
        &[1, 2, 3, 4, 5, 6, 7][..]
    };
    for &size in sizes {
        let id = h.create_pool(size, 1).unwrap();
        let cap = usize::from(Geometry::new(size).capacity);
        let blocks: Vec<_> = (0..cap + 1).map(|_| h.pool_allocate(id).unwrap()).collect();
        let mut addrs: Vec<_> = blocks.iter().map(|p| p.addr().get()).collect();
        addrs.sort();
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= size));
        assert_eq!(h.stats().pools[0].unwrap().blocks.chunks, 2);
        assert!(
            cap * size > PAGE_SIZE * 85 / 100,
            "size {size}: {cap} blocks"
        );
        for (i, p) in blocks.iter().enumerate() {
            fill(*p, size, i as u8);
        }
        for (i, p) in blocks.iter().enumerate() {
            check(*p, size, i as u8);
            // SAFETY: allocated above from `id`.
            unsafe { h.pool_deallocate(id, *p) };
        }
        h.check_invariants().unwrap();
        h.destroy_pool(id).unwrap();
    }
}

#[test]
fn many_user_pools_are_summarised() {
    let mut h = heap(512);
    let ids: Vec<_> = (0..MAX_POOL_STATS + 5)
        .map(|i| h.create_pool(8 + i, 8).unwrap())
        .collect();
    for &id in &ids {
        let _ = h.pool_allocate(id).unwrap();
    }
    let s = h.stats();
    assert_eq!(s.user_pools, ids.len());
    assert!(s.pools.iter().all(Option::is_some));
    assert_eq!(s.other_pools.in_use, 5);
    assert_eq!(s.other_pools.chunks, 5);
    h.check_invariants().unwrap();
}
