//! Unit tests: every workload is consistent and deterministic, and the pinned digests show that
//! each benchmark's sequences are the ones its recorded results were measured on.
//!
//! The digests were taken from the two benchmarks' own generators before they were merged into
//! this crate (the host benchmark's at its default seed 1 and at seed 7; the in-kernel one's at
//! its fixed seed), for their quick/smoke and full sizes. A change that alters any sequence fails
//! here; if the change is meant, re-record the benchmarks' results and update the digests.

use super::*;

/// The host benchmark's `--quick` sizes.
const HOST_QUICK: Sizes = Sizes {
    churn_ops: 3_000,
    live_targets: [300, 200, 100],
    realloc_steps: 400,
    realloc_max: 64 << 10,
    scaling_levels: &[100, 1_000],
    scaling_ops: 2_000,
    generator: Generator::WyRand,
};

/// The full sizes (the same in both benchmarks), with the host benchmark's generator.
const HOST_FULL: Sizes = Sizes::FULL;

/// The in-kernel benchmark's smoke sizes.
const KERNEL_SMOKE: Sizes = Sizes {
    churn_ops: 2_000,
    live_targets: [200, 100, 50],
    realloc_steps: 300,
    realloc_max: 64 << 10,
    scaling_levels: &[100, 1_000],
    scaling_ops: 2_000,
    generator: Generator::XorShift64Star,
};

/// The in-kernel benchmark's full sizes.
const KERNEL_FULL: Sizes = Sizes {
    generator: Generator::XorShift64Star,
    ..HOST_FULL
};

/// The in-kernel benchmark's fixed seed.
const KERNEL_SEED: u64 = 0x6b62_656e_6368_2a01;

/// Every workload of `s`, in the benchmarks' order.
fn all(s: &Sizes, seed: u64) -> Vec<Workload> {
    let mut ws = vec![
        small_churn(s, seed),
        kernel_mix(s, seed),
        random_align(s, seed),
        realloc_growth(s, seed),
    ];
    ws.extend(s.scaling_levels.iter().map(|&n| scaling(s, n, seed)));
    ws
}

/// What a workload is pinned to: name, setup length and digest, body length and digest, slots.
type Pin = (&'static str, usize, u64, usize, u64, usize);

/// Checks every workload of `s` at `seed` against `pins` (and, when given, the bump bounds).
fn check_pinned(s: &Sizes, seed: u64, pins: &[Pin], bump: Option<&[usize]>) {
    let ws = all(s, seed);
    assert_eq!(ws.len(), pins.len());
    for (i, (w, &(name, setup_len, setup, ops_len, ops, slots))) in ws.iter().zip(pins).enumerate()
    {
        assert!(w.is_consistent(), "{name}");
        assert_eq!(
            (
                w.name,
                w.setup.len(),
                w.digest().0,
                w.ops.len(),
                w.digest().1,
                w.slots
            ),
            (name, setup_len, setup, ops_len, ops, slots),
            "{name} changed (seed {seed})"
        );
        if let Some(bump) = bump {
            assert_eq!(w.bump_bytes, bump[i], "{name}");
        }
    }
}
// Pinned sequences, one row per workload (see `Pin`); rustfmt would give every field a line.
#[rustfmt::skip]
const HOST_QUICK_SEED1: [Pin; 6] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 3000, 0xb81b_08dc_86f7_9416, 322),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 3000, 0x3270_a655_37a9_4408, 222),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 3000, 0x2fac_49b8_1b10_5541, 118),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 426, 0xbde9_d74f_69b1_ba67, 89),
    ("scaling-1e2", 100, 0x529b_56a8_28ee_bac9, 2000, 0xb7ab_bcfc_0d6a_fc27, 100),
    ("scaling-1e3", 1000, 0x4592_9282_6ce3_1168, 2000, 0xdec4_2759_97c2_d570, 1000),
];

const HOST_QUICK_SEED1_BUMP: [usize; 6] = [184568, 1758493, 2340504, 2519896, 118920, 220240];

#[rustfmt::skip]
const HOST_QUICK_SEED7: [Pin; 6] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 3000, 0x7bc3_b01e_c821_85f3, 343),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 3000, 0x024e_b343_1b4b_54dd, 229),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 3000, 0xe545_1467_ae46_9d93, 114),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 425, 0xd830_8eab_8320_07c5, 101),
    ("scaling-1e2", 100, 0x356b_95af_a1c3_1fb7, 2000, 0x6245_2e4c_af01_c9c9, 100),
    ("scaling-1e3", 1000, 0x8832_11e0_854a_7b51, 2000, 0x4a3d_12a9_e627_4457, 1000),
];

const HOST_QUICK_SEED7_BUMP: [usize; 6] = [174112, 1534664, 2353107, 2410880, 115328, 211336];

#[rustfmt::skip]
const HOST_FULL_SEED1: [Pin; 7] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x828f_b29a_4619_0dd0, 10208),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x2001_c27b_1938_06d9, 4155),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x952d_625f_2222_0fdb, 2113),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 20840, 0x75b2_4db8_97ac_78c3, 295),
    ("scaling-1e3", 1000, 0x4592_9282_6ce3_1168, 200000, 0x1750_79b8_c5ba_f2a4, 1000),
    ("scaling-1e4", 10000, 0xccb1_c3a9_1325_2b6a, 200000, 0x9e32_f78a_20c8_6abe, 10000),
    ("scaling-1e5", 100000, 0x2174_44a3_0771_1788, 200000, 0x4d3c_0682_83b2_d1d6, 100000),
];

const HOST_FULL_SEED1_BUMP: [usize; 7] = [
    22291568, 200831766, 300913423, 1746683808, 10962096, 12004160, 21756176,
];

#[rustfmt::skip]
const HOST_FULL_SEED7: [Pin; 7] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x7ea8_a33e_b3fe_61cf, 10250),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 400000, 0xf3d3_6b48_5794_ca9e, 4132),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x5e51_90ed_0eb0_c78a, 2115),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 20836, 0xfccd_4484_cdd6_557c, 296),
    ("scaling-1e3", 1000, 0x8832_11e0_854a_7b51, 200000, 0x859d_731e_3270_ff2c, 1000),
    ("scaling-1e4", 10000, 0x898d_a359_5abe_4550, 200000, 0xa584_918b_b96e_04ff, 10000),
    ("scaling-1e5", 100000, 0xbbce_468c_0def_2716, 200000, 0x4ddf_6480_2cbd_6ece, 100000),
];

const HOST_FULL_SEED7_BUMP: [usize; 7] = [
    22209792, 202240847, 300915219, 1744005600, 11021064, 11948896, 21774784,
];

#[rustfmt::skip]
const PINS_KERNEL_SMOKE: [Pin; 6] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 2000, 0x623b_ca0b_4f09_1ce6, 214),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 2000, 0x1e73_153b_6522_8785, 123),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 2000, 0x85fe_692a_421d_0919, 65),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 320, 0x9ccb_77e7_bd60_c927, 75),
    ("scaling-1e2", 100, 0x9479_0e37_5ecb_7321, 2000, 0x240a_0069_3a6f_5b6b, 100),
    ("scaling-1e3", 1000, 0xc1ba_75bc_ec57_ca63, 2000, 0xfe58_61a0_2c53_edf8, 1000),
];

#[rustfmt::skip]
const PINS_KERNEL_FULL: [Pin; 7] = [
    ("small-churn", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x2c4c_c5cc_3ea1_8da8, 10154),
    ("kernel-mix", 0, 0xcbf2_9ce4_8422_2325, 400000, 0x5e6d_7a44_3b7b_7c37, 4151),
    ("random-align", 0, 0xcbf2_9ce4_8422_2325, 400000, 0xd0c9_29a8_d8ae_1638, 2099),
    ("realloc-growth", 0, 0xcbf2_9ce4_8422_2325, 20839, 0x4ea2_d3c3_1b02_f287, 293),
    ("scaling-1e3", 1000, 0xc1ba_75bc_ec57_ca63, 200000, 0x6be5_3dfb_8e55_9147, 1000),
    ("scaling-1e4", 10000, 0xfec4_ad75_6f15_ab23, 200000, 0x9a64_53a9_201d_fa66, 10000),
    ("scaling-1e5", 100000, 0x841e_3469_7fdd_6b69, 200000, 0x37bc_eeeb_39c3_9661, 100000),
];

#[test]
fn host_quick_sequences_are_unchanged() {
    check_pinned(
        &HOST_QUICK,
        1,
        &HOST_QUICK_SEED1,
        Some(&HOST_QUICK_SEED1_BUMP),
    );
    check_pinned(
        &HOST_QUICK,
        7,
        &HOST_QUICK_SEED7,
        Some(&HOST_QUICK_SEED7_BUMP),
    );
}

#[test]
fn host_full_sequences_are_unchanged() {
    check_pinned(&HOST_FULL, 1, &HOST_FULL_SEED1, Some(&HOST_FULL_SEED1_BUMP));
    check_pinned(&HOST_FULL, 7, &HOST_FULL_SEED7, Some(&HOST_FULL_SEED7_BUMP));
}

#[test]
fn kernel_sequences_are_unchanged() {
    check_pinned(&KERNEL_SMOKE, KERNEL_SEED, &PINS_KERNEL_SMOKE, None);
    check_pinned(&KERNEL_FULL, KERNEL_SEED, &PINS_KERNEL_FULL, None);
}

#[test]
fn growth_streams_are_unchanged() {
    /// (mix, seed, digest of the first 300 000 ops, sum of the live bytes after each of them).
    const PINS: [(Mix, u64, u64, u64); 6] = [
        (Mix::Small, 1, 0x0001_0c31_b894_b74b, 1514715595056),
        (Mix::Small, 7, 0xc37c_eade_499e_4ea4, 1520971882848),
        (Mix::Kernel, 1, 0x3f98_e385_bd31_9ec2, 11548294276512),
        (Mix::Kernel, 7, 0x88fe_ed3b_098e_0f0e, 11261199322284),
        (Mix::RandomAlign, 1, 0x91c1_bdfd_3c89_601b, 10196154410030),
        (Mix::RandomAlign, 7, 0x1012_0432_7922_7188, 10134382164524),
    ];
    for (mix, seed, pinned, pinned_live_sum) in PINS {
        let mut stream = GrowthStream::new(mix, seed);
        let mut ops = Vec::new();
        let mut live_sum = 0u64;
        for _ in 0..300_000 {
            let (op, live) = stream.next_op();
            ops.push(op);
            live_sum = live_sum.wrapping_add(live as u64);
        }
        assert_eq!(
            (digest(&ops), live_sum),
            (pinned, pinned_live_sum),
            "{mix:?} seed {seed}"
        );
    }
}

#[test]
fn workloads_are_deterministic_and_consistent() {
    for s in [HOST_QUICK, KERNEL_SMOKE] {
        for w in all(&s, 7) {
            assert!(w.is_consistent(), "{}", w.name);
            assert!(!w.ops.is_empty(), "{}", w.name);
            assert!(!w.title.is_empty(), "{}", w.name);
        }
        assert_eq!(small_churn(&s, 7).ops, small_churn(&s, 7).ops);
        assert_ne!(small_churn(&s, 7).ops, small_churn(&s, 8).ops);
        assert_eq!(scaling(&s, 100, 7).setup.len(), 100);
    }
    assert_eq!(scaling_name(100_000), "scaling-1e5");
    assert_eq!(scaling_name(10), "scaling-1e1");
    assert_eq!(scaling_name(1), "scaling");
    assert_eq!(scaling_name(2_000), "scaling");
}

#[test]
fn growth_stream_tracks_live_bytes() {
    let mut stream = GrowthStream::new(Mix::Kernel, 1);
    let mut model = std::collections::HashMap::new();
    for _ in 0..10_000 {
        let (op, live) = stream.next_op();
        match op {
            Op::Alloc { slot, size, .. } => {
                model.insert(slot, size as usize);
            }
            Op::Free { slot } => {
                model.remove(&slot).unwrap();
            }
            Op::Realloc { .. } => unreachable!(),
        }
        assert_eq!(live, model.values().sum::<usize>());
    }
}

#[test]
fn chance_is_exact() {
    // The coin compares the draw's top 53 bits with num/den: chance(1, 4) is true exactly for
    // draws below 2^62, like `below(4) == 0`.
    for seed in 0..64 {
        let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
        for _ in 0..1_000 {
            assert_eq!(a.chance(1, 4), b.below(4) == 0);
        }
    }
    let mut rng = Rng::new(3);
    assert!((0..1_000).all(|_| rng.chance(1, 1) && !rng.chance(0, 1)));
    // About two thirds, over many draws.
    let hits = (0..30_000).filter(|_| rng.chance(2, 3)).count();
    assert!((19_000..21_000).contains(&hits), "{hits}");
}

#[test]
fn xorshift_never_sticks_at_zero() {
    let mut rng = Rng::with_generator(SEED_MIX, Generator::XorShift64Star);
    assert!((0..100).any(|_| rng.next_u64() != 0));
    let mut rng = Rng::with_generator(5, Generator::XorShift64Star);
    let x = rng.range_usize(10, 20);
    assert!((10..=20).contains(&x));
}

// -------------------------------------------------------------------------------------------------
// The shared harness: replay, verification, latency summaries, the new workloads
// -------------------------------------------------------------------------------------------------

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use crate::bench_alloc::{BenchAlloc, Locked, Shared};
use crate::latency::{Percentiles, tail};
use crate::replay::{self, ReplayError, Slots};
use crate::vec_growth::{Buffers, VecGrowth};

/// The host's `malloc`, counting live blocks.
#[derive(Default)]
struct Malloc {
    live: usize,
}

impl BenchAlloc for Malloc {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.live += 1;
        // SAFETY: benchmark layouts have a non-zero size.
        NonNull::new(unsafe { System.alloc(layout) })
    }
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        self.live -= 1;
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
}

/// A broken allocator: every block is the same buffer, so two live blocks overlap.
struct Overlapping {
    buf: NonNull<u8>,
}

impl BenchAlloc for Overlapping {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        (layout.size() <= 4096).then_some(self.buf)
    }
    unsafe fn free(&mut self, _ptr: NonNull<u8>, _layout: Layout) {}
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, _: Layout, new: usize) -> Option<NonNull<u8>> {
        (new <= 4096).then_some(ptr)
    }
}

/// A broken realloc: it moves the block but copies one byte too few.
struct ShortCopy(Malloc);

impl BenchAlloc for ShortCopy {
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.0.alloc(layout)
    }
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.free(ptr, layout) }
    }
    unsafe fn realloc(&mut self, ptr: NonNull<u8>, old: Layout, new: usize) -> Option<NonNull<u8>> {
        let new_block = self.alloc(Layout::from_size_align(new, old.align()).ok()?)?;
        let kept = old.size().min(new);
        // SAFETY: both blocks are live and at least `kept` bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr(), new_block.as_ptr(), kept - 1);
            new_block.add(kept - 1).write(!ptr.add(kept - 1).read());
            self.free(ptr, old);
        }
        Some(new_block)
    }
}

fn two_blocks() -> Workload {
    Workload {
        name: "overlap",
        title: String::new(),
        setup: Vec::new(),
        ops: vec![
            Op::Alloc {
                slot: 0,
                size: 64,
                align_log2: 3,
            },
            Op::Alloc {
                slot: 1,
                size: 64,
                align_log2: 3,
            },
            Op::Free { slot: 0 },
            Op::Free { slot: 1 },
        ],
        slots: 2,
        bump_bytes: 2 * (64 + 8),
    }
}

#[test]
fn verification_catches_overlapping_blocks() {
    let mut buf = vec![0u64; 1024];
    let mut a = Overlapping {
        buf: NonNull::from(&mut buf[..]).cast(),
    };
    let mut slots = Slots::default();
    let result = replay::verify(&mut a, &two_blocks(), usize::MAX, &mut slots);
    assert!(
        matches!(result, Err(ReplayError::Overlap { .. })),
        "{result:?}"
    );
    // The timed replay does not look at contents: it runs through.
    let t = replay::timed(
        &mut a,
        &two_blocks(),
        usize::MAX,
        &mut slots,
        replay::unlimited,
        || 0,
    )
    .unwrap();
    assert_eq!((t.ops, t.stopped), (4, None));
}

#[test]
fn verification_catches_a_realloc_that_loses_contents() {
    let s = HOST_QUICK;
    let w = realloc_growth(&s, 1);
    let mut slots = Slots::default();
    let good = replay::verify(&mut Malloc::default(), &w, usize::MAX, &mut slots);
    assert_eq!(good, Ok(w.setup.len() + w.ops.len()));
    let mut bad = ShortCopy(Malloc::default());
    let result = replay::verify(&mut bad, &w, usize::MAX, &mut slots);
    assert!(
        matches!(result, Err(ReplayError::Corrupted { .. })),
        "{result:?}"
    );
    assert_eq!(
        bad.0.live, 0,
        "a failed verification still frees everything"
    );
}

#[test]
fn pattern_check_names_the_first_wrong_byte() {
    let mut buf = [0u64; 16];
    let p = NonNull::from(&mut buf[..]).cast::<u8>();
    // SAFETY: the buffer has 128 bytes.
    unsafe {
        crate::pattern::fill(p, 0, 100, 7);
        assert_eq!(crate::pattern::check(p, 100, 7), None);
        assert_eq!(crate::pattern::check(p, 100, 8), Some(0));
        *p.add(61).as_ptr() ^= 1;
        assert_eq!(crate::pattern::check(p, 100, 7), Some(61));
        assert_eq!(crate::pattern::check(p, 60, 7), None);
        // Refilling from an unaligned offset continues the same pattern.
        crate::pattern::fill(p, 61, 100, 7);
        assert_eq!(crate::pattern::check(p, 100, 7), None);
    }
}

#[test]
fn percentiles_are_nearest_rank_and_the_tail_ends_at_the_maximum() {
    let mut s: Vec<u64> = (1..=1000).rev().collect();
    let p = Percentiles::of(&mut s);
    assert_eq!(
        (p.calls, p.p50, p.p90, p.p99, p.p999, p.max),
        (1000, 500, 900, 990, 999, 1000)
    );
    assert_eq!(p.net_of(600).p50, 0);
    let t = tail(&s, 0);
    assert_eq!(t.first().map(|p| (p.ticks, p.calls)), Some((901, 100)));
    assert_eq!(t.last().map(|p| (p.ticks, p.calls)), Some((1000, 1)));
    assert!(
        t.windows(2)
            .all(|w| w[0].ticks <= w[1].ticks && w[0].calls > w[1].calls)
    );
    assert!(tail(&[], 0).is_empty());
}

#[test]
fn talc_like_mix_follows_talcs_distribution() {
    let mut rng = Rng::new(3);
    let n = 100_000;
    let mut align8 = 0;
    for _ in 0..n {
        let (size, align) = Mix::TalcLike.draw(&mut rng);
        assert!((4..9_998).contains(&size), "{size}");
        assert!((3..=11).contains(&align), "{align}");
        align8 += usize::from(align == 3);
    }
    // 75% of talc's alignments are the pointer size.
    assert!((73_000..77_000).contains(&align8), "{align8}");
    let mut stream = GrowthStream::talc_like(1);
    let mut model = std::collections::HashMap::new();
    let mut reallocs = 0;
    for _ in 0..10_000 {
        let before = model.values().sum::<usize>();
        let (op, live) = stream.next_op();
        assert_eq!(stream.live_bytes_before(), before);
        match op {
            Op::Alloc { slot, size, .. } => {
                model.insert(slot, size as usize);
            }
            Op::Free { slot } => {
                model.remove(&slot).unwrap();
            }
            Op::Realloc { slot, new_size } => {
                assert!(new_size < 100_000);
                *model.get_mut(&slot).unwrap() = new_size as usize;
                reallocs += 1;
            }
        }
        assert_eq!(live, model.values().sum::<usize>());
    }
    assert!((3_500..4_500).contains(&reallocs), "{reallocs}");
}

#[test]
fn efficiency_stops_at_the_first_refusal_and_verifies() {
    /// `malloc` with a budget of requested bytes.
    struct Budget(Malloc, usize);
    impl BenchAlloc for Budget {
        fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
            let left = self.1.checked_sub(layout.size())?;
            self.1 = left;
            self.0.alloc(layout)
        }
        unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
            self.1 += layout.size();
            // SAFETY: forwarded contract.
            unsafe { self.0.free(ptr, layout) }
        }
    }
    let mut a = Budget(Malloc::default(), 1 << 20);
    let mut slots = Slots::default();
    let mut stream = GrowthStream::talc_like(5);
    let e = replay::efficiency(
        &mut a,
        &mut stream,
        1_000_000,
        &mut slots,
        replay::unlimited,
    )
    .unwrap();
    assert!(e.failed);
    // A perfect packer holds everything up to its budget.
    assert!(
        e.peak_live > (1 << 20) - 100_000 && e.peak_live <= 1 << 20,
        "{e:?}"
    );
    assert_eq!(a.0.live, 0);
}

#[test]
fn vec_growth_pushes_and_checks_every_element() {
    let shape = VecGrowth {
        vectors: 10,
        elements: 100,
    };
    assert_eq!(shape.final_bytes(), 128 * 8);
    let mut a = Malloc::default();
    let mut b = Buffers::default();
    b.push_all::<_, true>(&mut a, shape).unwrap();
    assert_eq!(a.live, 10);
    b.free_all::<_, true>(&mut a).unwrap();
    assert_eq!(a.live, 0);
    let mut bad = ShortCopy(Malloc::default());
    let r = b.push_all::<_, true>(&mut bad, shape);
    assert!(matches!(r, Err(ReplayError::Corrupted { .. })), "{r:?}");
    b.free_all::<_, false>(&mut bad).unwrap();
    assert_eq!(bad.0.live, 0);
}

#[test]
fn locked_and_shared_adapters_replay_from_threads() {
    let heap: Locked<kheap::SpinLock, Malloc> = Locked::new(Malloc::default());
    let s = HOST_QUICK;
    std::thread::scope(|scope| {
        for seed in 0..2 {
            let heap = &heap;
            scope.spawn(move || {
                let w = small_churn(&s, seed);
                let mut slots = Slots::default();
                let n = replay::verify(&mut Shared(heap), &w, usize::MAX, &mut slots).unwrap();
                assert_eq!(n, w.ops.len());
            });
        }
    });
    assert_eq!(heap.with(|m| m.live), 0);
    // SAFETY: a fresh block of 8 bytes is freed with its layout.
    unsafe {
        let l = Layout::new::<u64>();
        let p = heap.alloc(l);
        assert!(!p.is_null());
        heap.dealloc(p, l);
    }
}

#[test]
fn attributed_replay_probes_around_every_body_call() {
    // The probe reads the live count: each allocation must see it go up by one, each free down
    // by one, and the calls must come in the body's order, after the setup.
    let w = kernel_mix(&KERNEL_SMOKE, 7);
    let mut a = Malloc::default();
    let mut slots = Slots::default();
    let mut seen = Vec::new();
    replay::attributed(
        &mut a,
        &w,
        &mut slots,
        |m: &Malloc| m.live,
        |op, _, moved, before, after| {
            assert!(!moved || matches!(op, Op::Realloc { .. }));
            let step = after as isize - before as isize;
            match op {
                Op::Alloc { .. } => assert_eq!(step, 1),
                Op::Free { .. } => assert_eq!(step, -1),
                Op::Realloc { .. } => assert_eq!(step, 0),
            }
            seen.push(op);
        },
    )
    .unwrap();
    assert_eq!(seen, w.ops);
    assert_eq!(a.live, 0, "the teardown freed every block");
    // `moved` tells a realloc that returned another address: the default realloc (allocate,
    // copy, free) always does.
    let g = realloc_growth(&KERNEL_SMOKE, 7);
    let (mut reallocs, mut moves) = (0, 0);
    replay::attributed(
        &mut a,
        &g,
        &mut slots,
        |_| (),
        |op, _, moved, (), ()| {
            reallocs += usize::from(matches!(op, Op::Realloc { .. }));
            moves += usize::from(moved);
        },
    )
    .unwrap();
    assert!(reallocs > 0);
    assert_eq!(moves, reallocs);
    // A refused request stops the pass and is returned, the blocks so far given back.
    struct Refusing(Malloc, usize);
    impl BenchAlloc for Refusing {
        fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
            self.1 = self.1.checked_sub(1)?;
            self.0.alloc(layout)
        }
        unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
            // SAFETY: forwarded contract.
            unsafe { self.0.free(ptr, layout) }
        }
    }
    let mut r = Refusing(Malloc::default(), w.setup.len() + 10);
    let e = replay::attributed(&mut r, &w, &mut slots, |_| (), |_, _, _, (), ()| {});
    assert!(
        matches!(e, Err(ReplayError::OutOfMemory { setup: false, .. })),
        "{e:?}"
    );
    assert_eq!(r.0.live, 0);
}
