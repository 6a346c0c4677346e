//! A randomized workout: allocations, frees and in-place resizes against a failing source.

use super::*;

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    seed: u64,
}

/// Random allocations (sizes 100 B .. `max_size`, alignments 8 .. 64 KiB), frees and
/// in-place resizes against a source that fails one call in `fail_one_in`; every byte of
/// every block is patterned and checked, and the invariants are checked after every
/// operation.
fn random_workout(seed: u64, steps: usize, max_size: usize, arena_pages: usize, fail_one_in: u64) {
    let mut src = ArenaSource::new(arena_pages);
    src.fail_randomly(seed ^ 0xDEAD_BEEF, fail_one_in);
    let mut a = LargeAlloc::new();
    let mut rng = XorShift64::new(seed);
    let mut live: Vec<Live> = Vec::new();
    let max_log = usize::BITS - max_size.leading_zeros();
    let (mut allocs, mut failures, mut resized) = (0, 0, 0);
    for step in 0..steps {
        let action = rng.below(10);
        if live.is_empty() || (action < 5 && live.len() < 48) {
            // Log-uniform sizes, so that small blocks are as well covered as page runs.
            let bits = 7 + rng.below(u64::from(max_log - 6)) as u32;
            let size = (rng.below(1 << bits) as usize).clamp(100, max_size);
            let align_steps = if rng.below(4) == 0 { 14 } else { 4 };
            let align = 8usize << rng.below(align_steps);
            let l = layout(size, align);
            let before = a.stats();
            match a.allocate(&mut src, l) {
                Ok(ptr) => {
                    allocs += 1;
                    assert_eq!(ptr.addr().get() % align, 0);
                    assert!(src.is_mapped(ptr.addr().get()));
                    assert!(a.owns(ptr));
                    // SAFETY: `ptr` is live with layout `l`.
                    assert!(unsafe { a.usable_size(ptr, l) } >= size);
                    let seed = rng.next_u64();
                    fill(ptr, size, seed);
                    live.push(Live {
                        ptr,
                        layout: l,
                        seed,
                    });
                }
                Err(AllocError::OutOfPages { .. }) => {
                    failures += 1;
                    assert_eq!(a.stats(), before, "a failed allocation changed the state");
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        } else if action < 8 {
            let block = live.swap_remove(rng.below(live.len() as u64) as usize);
            check(block.ptr, block.layout.size(), block.seed);
            // SAFETY: the block is live with this layout.
            unsafe { a.deallocate(&mut src, block.ptr, block.layout) };
        } else {
            let i = rng.below(live.len() as u64) as usize;
            let block = &mut live[i];
            let old = block.layout.size();
            let new_size = match rng.below(3) {
                0 => (old / 2).max(100),
                1 => old + rng.below(4096) as usize,
                _ => (rng.below(max_size as u64) as usize).max(100),
            };
            // SAFETY: the block is live with this layout.
            if unsafe { a.resize_in_place(&mut src, block.ptr, block.layout, new_size) } {
                resized += 1;
                check(block.ptr, old.min(new_size), block.seed);
                block.layout = layout(new_size, block.layout.align());
                // SAFETY: as above, with the new layout.
                assert!(unsafe { a.usable_size(block.ptr, block.layout) } >= new_size);
                block.seed = rng.next_u64();
                fill(block.ptr, new_size, block.seed);
            } else {
                check(block.ptr, old, block.seed);
            }
        }
        if let Err(e) = a.check_invariants() {
            panic!("step {step}: {e}");
        }
        assert_eq!(held_pages(a.stats()), src.mapped_pages(), "step {step}");
        if step % 64 == 0 {
            for block in &live {
                check(block.ptr, block.layout.size(), block.seed);
            }
        }
    }
    assert!(
        allocs > steps / 8 && failures > 0 && resized > 0,
        "{allocs} allocations, {failures} failures, {resized} resizes"
    );
    for block in live.drain(..) {
        check(block.ptr, block.layout.size(), block.seed);
        // SAFETY: the block is live with this layout.
        unsafe { a.deallocate(&mut src, block.ptr, block.layout) };
        a.check_invariants().unwrap();
    }
    let s = a.stats();
    assert!(
        s.region_bytes <= IDLE_LIMIT + EXCESS_REGIONS * MAX_REGION
            && a.excess_len <= EXCESS_REGIONS
            && s.page_runs == 0
            && s.live_blocks == 0
            && s.live_bytes == 0
    );
    a.release_cached(&mut src);
    a.check_invariants().unwrap();
    assert_eq!(a.stats(), LargeStats::default());
    assert_eq!(src.mapped_pages(), 0, "pages left mapped");
}

#[test]
fn random_alloc_free_resize_with_a_failing_source() {
    if cfg!(miri) {
        random_workout(1, 100, 80 * 1024, 1024, 3);
    } else {
        for seed in 1..=6 {
            random_workout(seed, 3000, 1 << 20, 32 * 1024, 10);
        }
    }
}
