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
