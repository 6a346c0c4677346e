//! Aligned requests (issue 13, h12): every layout is served where `class_for` routes it — an
//! aligned class, now at the magazine's inlined fast path (`size_class::small_class`), or the
//! large allocator — and freed with its layout by the same route.

use super::*;
use crate::size_class::{SizeClass, class_for};
use crate::testing::XorShift64;

/// Sizes on both sides of the waste rule (145 and 2500 go large at small alignments), over-aligned
/// sizes, class sizes, and one beyond the classes.
const SIZES: &[usize] = &[
    1, 8, 15, 100, 145, 200, 230, 255, 256, 900, 1000, 1900, 2500, 3600, 4096, 5000,
];

/// Where a fresh allocation went, from the statistics: the class whose in-use count grew, or
/// the large allocator.
fn route_of(before: &crate::HeapStats, after: &crate::HeapStats) -> SizeClass {
    if after.large.live_blocks == before.large.live_blocks + 1 {
        return SizeClass::Large;
    }
    let i = (0..CLASS_SIZES.len())
        .find(|&i| after.classes[i].in_use == before.classes[i].in_use + 1)
        .expect("the allocation is in a class or in the large allocator");
    SizeClass::Small(i)
}

/// Every alignment from 16 to a page (16, 256 and 4096 under Miri) with sizes on both sides of
/// the routing rule: each block lands on the route `class_for` names (the aligned class, or the
/// large allocator when the class would waste more than 1/8 of a block at least as large as the
/// alignment), is aligned, keeps its pattern while all stay live, and is freed with its layout;
/// the invariants hold after every call (after every alignment and at the end under Miri) and
/// nothing is left after trim.
#[test]
fn every_alignment_takes_its_route_and_frees_with_its_layout() {
    let mut h = heap(if cfg!(miri) { 512 } else { 2048 });
    let sizes: &[usize] = if cfg!(miri) { &[8, 145, 2500] } else { SIZES };
    let mut live = Vec::new();
    let mut seed = 0u8;
    let mut large = 0;
    let mut align = 16;
    while align <= PAGE_SIZE {
        for &size in sizes {
            let l = layout(size, align);
            let before = h.stats();
            let p = h.allocate(l).unwrap();
            let route = route_of(&before, &h.stats());
            assert_eq!(route, class_for(l), "{size} / {align}");
            if route == SizeClass::Large {
                large += 1;
            } else {
                assert!(size <= 4096 && align <= PAGE_SIZE);
            }
            assert!(p.addr().get().is_multiple_of(align), "{size} / {align}");
            // SAFETY: live with layout `l`.
            assert!(unsafe { h.usable_size(p, l) } >= size);
            seed = seed.wrapping_add(37);
            fill(p, size, seed);
            live.push((p, l, seed));
            if !cfg!(miri) {
                h.check_invariants().unwrap();
            }
        }
        h.check_invariants().unwrap();
        // Under Miri (slow), every fourth alignment: 16, 256, 4096.
        align *= if cfg!(miri) { 16 } else { 2 };
    }
    assert!(large > 0 && large < live.len(), "both routes are taken");
    for &(p, l, seed) in &live {
        check(p, l.size(), seed);
    }
    // Free in an interleaved order (odd positions first), so that gaps and tails coalesce both
    // ways.
    let (odd, even): (Vec<_>, Vec<_>) = live.iter().enumerate().partition(|(i, _)| i % 2 == 1);
    for (_, &(p, l, seed)) in odd.into_iter().chain(even) {
        check(p, l.size(), seed);
        // SAFETY: allocated above with `l`, freed once.
        unsafe { h.deallocate(p, l) };
        if !cfg!(miri) {
            h.check_invariants().unwrap();
        }
    }
    h.check_invariants().unwrap();
    h.trim();
    assert_only_roots_left(&h);
}

/// The random-alignment workload's distribution (sizes log-uniform in 8 B–4 KiB, alignment
/// uniform over 8..=4096) in churn: every block patterned and checked before its free, the
/// alignment checked, the invariants after every call; `reallocate` of aligned blocks too
/// (across both routes).
#[test]
fn random_alignment_churn_keeps_every_byte() {
    let mut h = heap(if cfg!(miri) { 512 } else { 4096 });
    let mut rng = XorShift64::new(12);
    let steps = if cfg!(miri) { 80 } else { 6000 };
    let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
    for step in 0..steps {
        let target = if cfg!(miri) { 16 } else { 200 };
        if live.len() < target && !rng.one_in(3) || live.is_empty() {
            let exp = rng.range(3, 11);
            let size = rng.range(1 << exp, (2 << exp) - 1).min(4096);
            let align = 1 << rng.range(3, 12);
            let l = layout(size, align);
            let p = h.allocate(l).unwrap();
            assert!(p.addr().get().is_multiple_of(align), "{size} / {align}");
            let seed = step as u8;
            fill(p, size, seed);
            live.push((p, l, seed));
        } else {
            let k = rng.below(live.len() as u64) as usize;
            let (p, l, seed) = live.swap_remove(k);
            check(p, l.size(), seed);
            if rng.one_in(4) {
                let new_size = rng.range(1, 4096);
                // SAFETY: live with `l`; on success the old block is gone.
                let q = unsafe { h.reallocate(p, l, new_size) }.unwrap();
                let nl = layout(new_size, l.align());
                assert!(q.addr().get().is_multiple_of(l.align()));
                check(q, l.size().min(new_size), seed);
                fill(q, new_size, seed);
                live.push((q, nl, seed));
            } else {
                // SAFETY: allocated with `l`, freed once.
                unsafe { h.deallocate(p, l) };
            }
        }
        if !cfg!(miri) || step % 16 == 0 {
            h.check_invariants().unwrap();
        }
    }
    for (p, l, seed) in live {
        check(p, l.size(), seed);
        // SAFETY: allocated with `l`, freed once.
        unsafe { h.deallocate(p, l) };
    }
    h.check_invariants().unwrap();
    h.trim();
    assert_only_roots_left(&h);
}
