//! Failures that change nothing, ownership checks, the index under many regions, the
//! invariant checker, and (with `debug-checks`) double frees.

use super::*;

#[test]
fn failures_change_nothing() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let before = a.stats();
    src.fail_randomly(1, 1);
    // Served from the existing region: no page source call.
    let q = alloc(&mut a, &mut src, 1000, 8);
    free(&mut a, &mut src, q, 1000, 8);
    assert_eq!(a.stats(), before);
    for (size, align) in [(65_000, 8), (31_700, 32_768), (1 << 20, 8), (100, 1 << 20)] {
        let l = layout(size, align);
        let err = a.allocate(&mut src, l).unwrap_err();
        let cause = PageSourceError::OutOfMemory;
        assert_eq!(err, AllocError::OutOfPages { layout: l, cause });
        assert_eq!(a.stats(), before);
        a.check_invariants().unwrap();
    }
    // The arena is too small: the source refuses.
    src.fail_randomly(1, 0);
    let err = a.allocate(&mut src, layout(1 << 24, 8)).unwrap_err();
    assert!(matches!(err, AllocError::OutOfPages { .. }), "{err:?}");
    // Sizes whose page count overflows.
    let huge = [
        layout(isize::MAX as usize & !(PAGE_SIZE - 1), PAGE_SIZE),
        layout(1 << 62, 1 << 62),
    ];
    for l in huge {
        assert_eq!(
            a.allocate(&mut src, l),
            Err(AllocError::TooLarge { layout: l })
        );
    }
    assert_eq!(a.stats(), before);
    free(&mut a, &mut src, p, 1000, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn owns_recognises_only_live_block_starts() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let q = alloc(&mut a, &mut src, 1000, 4096);
    assert!(a.owns(p) && a.owns(q));
    let region = NonNull::new(p.as_ptr().wrapping_sub(REGION_HEADER + HEADER)).unwrap();
    assert!(!a.owns(region));
    assert!(!a.owns(NonNull::new(p.as_ptr().wrapping_add(16)).unwrap()));
    assert!(!a.owns(NonNull::new(p.as_ptr().wrapping_add(1)).unwrap()));
    let elsewhere = 0u128;
    assert!(!a.owns(NonNull::from(&elsewhere).cast()));
    free(&mut a, &mut src, p, 1000, 8);
    assert!(!a.owns(p));
    assert!(a.owns(q));
    free(&mut a, &mut src, q, 1000, 4096);
    a.release_cached(&mut src);
    assert!(!a.owns(q));
}

#[test]
fn many_regions_keep_the_index_valid() {
    let n = if cfg!(miri) { 12 } else { 100 };
    let mut src = ArenaSource::new(n * 16 + 16);
    let mut a = LargeAlloc::new();
    // 40 KB blocks: one per region.
    let mut live: Vec<_> = (0..n).map(|_| alloc(&mut a, &mut src, 40_000, 8)).collect();
    assert_eq!(a.stats().regions, n);
    let mut rng = XorShift64::new(99);
    while !live.is_empty() {
        let p = live.swap_remove(rng.below(live.len() as u64) as usize);
        assert!(a.owns(p));
        free(&mut a, &mut src, p, 40_000, 8);
    }
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}

#[test]
fn checker_reports_damage() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let q = alloc(&mut a, &mut src, 1000, 8);
    let header = Block::from_user(q);
    let word = header.0.wrapping_add(8).cast::<usize>();
    // SAFETY: `q` is live and its header is ours to damage; it is restored before q is
    // freed.
    unsafe {
        let saved = word.read();
        header.set(2048, USED);
        assert!(a.check_invariants().is_err());
        word.write(saved ^ (1 << TAG_SHIFT));
        let addr = header.addr();
        assert_eq!(
            a.check_invariants(),
            Err(InvariantError::LargeHeaderCorrupt { addr })
        );
        word.write(saved);
    }
    // The live bytes the statistics derive disagree with the walk's.
    a.run_bytes += 1;
    assert!(matches!(
        a.check_invariants(),
        Err(InvariantError::CountMismatch { .. })
    ));
    a.run_bytes -= 1;
    a.check_invariants().unwrap();
    free(&mut a, &mut src, p, 1000, 8);
    free(&mut a, &mut src, q, 1000, 8);
    a.release_cached(&mut src);
}

#[cfg(feature = "debug-checks")]
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn double_free_of_a_block_is_caught() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let _q = alloc(&mut a, &mut src, 1000, 8);
    free(&mut a, &mut src, p, 1000, 8);
    free(&mut a, &mut src, p, 1000, 8);
}

#[cfg(feature = "debug-checks")]
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn double_free_of_a_merged_block_is_caught() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 1000, 8);
    let q = alloc(&mut a, &mut src, 1000, 8);
    let _r = alloc(&mut a, &mut src, 1000, 8);
    free(&mut a, &mut src, p, 1000, 8);
    // q merges into p's free block.
    free(&mut a, &mut src, q, 1000, 8);
    free(&mut a, &mut src, q, 1000, 8);
}

#[cfg(feature = "debug-checks")]
#[test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn double_free_of_a_page_run_is_caught() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 100_000, 8);
    free(&mut a, &mut src, p, 100_000, 8);
    free(&mut a, &mut src, p, 100_000, 8);
}

/// The checker knows the state this allocator gained for issue 13: a page run's data offset
/// (node field and tag) and the growing region.
#[test]
fn checker_reports_a_bad_run_offset_and_a_stray_growing_region() {
    let mut src = ArenaSource::new(64);
    let mut a = LargeAlloc::new();
    let p = alloc(&mut a, &mut src, 100_000, 8);
    let node = super::super::index::run_node(p);
    // SAFETY: `p` is a live run; its node and tag are ours to damage, and are restored before
    // the run is freed.
    unsafe {
        let data = (*node).data;
        for bad in [data + 16, 0, 2 * PAGE_SIZE] {
            (*node).data = bad;
            assert!(a.check_invariants().is_err(), "offset {bad}");
        }
        (*node).data = data;
        let tag = Block::from_user(p);
        tag.set_prev_size(data + 64);
        let addr = tag.addr();
        assert_eq!(
            a.check_invariants(),
            Err(InvariantError::LargeHeaderCorrupt { addr })
        );
        tag.set_prev_size(data);
    }
    a.check_invariants().unwrap();
    // A growing region that is not one of ours (here: the run).
    let q = alloc(&mut a, &mut src, 1000, 8);
    let growing = a.growing;
    a.growing = node;
    assert!(a.check_invariants().is_err());
    a.growing = growing;
    a.check_invariants().unwrap();
    free(&mut a, &mut src, q, 1000, 8);
    free(&mut a, &mut src, p, 100_000, 8);
    a.release_cached(&mut src);
    assert_eq!(src.mapped_pages(), 0);
}
