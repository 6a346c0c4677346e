//! The allocator benchmarks' shared half: the workloads, and the harness that replays them.
//!
//! Both benchmarks use this crate: the host one (`kernel/heap/bench`, with `std`) and the
//! in-kernel one (`kernel/bench`, in QEMU). It is `no_std` + `alloc`, and the generator uses
//! integer arithmetic only, because the kernel target has no hardware floating point;
//! probabilities are exact fractions (see [`Rng::chance`]). What it holds:
//!
//! | module | what |
//! | --- | --- |
//! | this one | the seeded generator: [`Workload`]s of [`Op`]s, [`GrowthStream`]s |
//! | [`bench_alloc`] | [`BenchAlloc`](bench_alloc::BenchAlloc), the one trait every benchmarked allocator is driven through; [`Locked`](bench_alloc::Locked) and [`Shared`](bench_alloc::Shared) for the threaded sections |
//! | [`replay`] | the one replay loop: verifying, timed, per-call latency and heap-efficiency passes |
//! | [`pattern`] | the contents verification writes into every block and checks |
//! | [`latency`] | percentiles and the tail (exceedance) of single-call latencies |
//! | [`vec_growth`] | the cache-aliasing pattern: many `Vec<u64>`-like buffers growing round-robin |
//! | [`tsc`] | the fenced time-stamp counter read both benchmarks time calls with |
//!
//! Each benchmark keeps its own adapters (where the memory comes from differs: a host buffer, the
//! kernel's heap window), its own clock for whole replays and its own reports.
//!
//! # Workloads
//!
//! A [`Workload`] is a flat list of [`Op`]s over numbered *slots* (a slot holds one live block).
//! Generation never looks at addresses, so every allocator sees the identical sequence; the
//! replay keeps the table of pointers. Each workload has an untimed `setup` prefix (the scaling
//! levels use it to build their live set) and a timed body; whatever is still live after the body
//! is freed by an untimed teardown.
//!
//! The workloads ([`small_churn`], [`kernel_mix`], [`random_align`], [`realloc_growth`],
//! [`scaling`]) take a [`Sizes`], so each benchmark chooses its own op counts and live sets.
//! [`GrowthStream`] is the allocation-heavy variant for heap efficiency: an endless,
//! deterministic stream replayed until the first failure (two allocations for every free, or
//! talc's own efficiency benchmark's mix of calls: [`GrowthStream::talc_like`]).
//!
//! # Two generators, one sequence each
//! The two benchmarks were first written with their own generators: the host one with wyrand and
//! a "low draw allocates" churn coin, the in-kernel one with xorshift64* and a "high draw
//! allocates" coin. [`Sizes::generator`] selects one of them ([`Generator`]) so that each
//! benchmark keeps replaying exactly the sequences its recorded results were measured on; the
//! unit tests pin a digest of every workload of both. Everything else (the mixes, the builder, the
//! workload shapes, the seeds' derivation) is shared.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bench_alloc;
pub mod latency;
pub mod pattern;
pub mod replay;
pub mod tsc;
pub mod vec_growth;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// One allocator call of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Allocate `size` bytes aligned to `1 << align_log2` into the (empty) slot.
    Alloc {
        /// Slot that receives the block.
        slot: u32,
        /// Requested size in bytes (never zero).
        size: u32,
        /// log2 of the requested alignment.
        align_log2: u8,
    },
    /// Free the block in the slot.
    Free {
        /// Slot to empty.
        slot: u32,
    },
    /// Resize the block in the slot to `new_size` bytes, keeping its alignment.
    Realloc {
        /// Slot whose block is resized.
        slot: u32,
        /// New size in bytes (never zero).
        new_size: u32,
    },
}

/// Which PRNG algorithm an [`Rng`] runs (and, for the churn workloads, which way the
/// allocate-or-free coin is read; see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// wyrand (Wang Yi): one add and one 64×64→128 multiply per draw. The host benchmark's
    /// sequences; the default of [`Rng::new`].
    WyRand,
    /// xorshift64* (Vigna): three shifts and a multiply per draw. The in-kernel benchmark's
    /// sequences.
    XorShift64Star,
}

/// Added to (xored into) every seed, so that small seeds (0, 1, 2, …) start from well-mixed
/// states: the 64-bit golden ratio, which has about as many set bits as clear ones.
const SEED_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A small, fast, seedable PRNG. Quality is ample for picking sizes and victims; it is not for
/// anything that needs unpredictability.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    generator: Generator,
}

impl Rng {
    /// A wyrand generator whose output depends only on `seed` (any value, zero included).
    pub const fn new(seed: u64) -> Self {
        Self::with_generator(seed, Generator::WyRand)
    }

    /// A generator of the given algorithm whose output depends only on `seed` (any value).
    pub const fn with_generator(seed: u64, generator: Generator) -> Self {
        let state = seed ^ SEED_MIX;
        let state = match generator {
            Generator::WyRand => state,
            // xorshift must not start at zero (it would stay there); only the seed `SEED_MIX`
            // gets there, and it is remapped.
            Generator::XorShift64Star if state == 0 => 1,
            Generator::XorShift64Star => state,
        };
        Self { state, generator }
    }

    /// The algorithm this generator runs.
    pub const fn generator(&self) -> Generator {
        self.generator
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        match self.generator {
            Generator::WyRand => {
                self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
                let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
                ((t >> 64) as u64) ^ (t as u64)
            }
            Generator::XorShift64Star => {
                let mut x = self.state;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.state = x;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d)
            }
        }
    }

    /// Uniform in `0..n` (`n > 0`), by the multiply-high method (Lemire; no division, and a bias
    /// of at most `n / 2^64`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }

    /// Uniform in `lo..=hi` (`lo <= hi`), for `usize` quantities (sizes, counts, indices).
    pub fn range_usize(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64 + 1) as usize
    }

    /// True with probability `num / den` (`num <= den`, `den > 0`), computed exactly in integers:
    /// the top 53 bits of one draw, read as a fraction of 2^53, are compared with `num / den`.
    ///
    /// (53 bits, not 64, because that is what the host benchmark's earlier floating-point coin
    /// `(draw >> 11) as f64 / 2^53 < p` compared, and its recorded sequences must not change.)
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        u128::from(self.next_u64() >> 11) * u128::from(den) < u128::from(num) << 53
    }
}

/// Which request mix a workload draws its allocations from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// 8–512 B objects, weighted to 16–128 B, 8-byte multiples, align 8.
    Small,
    /// Mostly 32–256 B objects, some 1–4 KiB buffers (a third of them page-aligned 4 KiB pages),
    /// rare 16–64 KiB buffers.
    Kernel,
    /// Sizes log-uniform in 8 B–4 KiB, alignment uniform over 8, 16, …, 4096.
    RandomAlign,
    /// talc's benchmark distribution (`generate_size` / `generate_align` in its `benches`): a cap
    /// uniform in 16..10 000, then a size uniform in 4..cap (so small sizes are favoured); the
    /// alignment is 8 shifted left by half the trailing zeros of a random 16-bit number: 8 B 75%,
    /// 16 B 19%, 32 B 5%, … up to 2 KiB.
    TalcLike,
}

impl Mix {
    /// Draws one request: `(size, align_log2)`.
    pub fn draw(self, rng: &mut Rng) -> (u32, u8) {
        match self {
            Self::Small => {
                let size = match rng.below(100) {
                    0..70 => rng.range(2, 16) * 8, // 16–128 B: the bulk of kernel objects
                    70..85 => rng.range(1, 2) * 8, // 8–16 B
                    _ => rng.range(17, 64) * 8,    // 136–512 B
                };
                (size, 3)
            }
            Self::Kernel => match rng.below(1000) {
                0..600 => (rng.range(4, 16) * 8, 3),     // 32–128 B objects
                600..850 => (rng.range(17, 32) * 8, 3),  // 136–256 B objects
                850..940 => (rng.range(1024, 4096), 3),  // 1–4 KiB byte buffers
                940..995 => (4096, 12),                  // page-aligned 4 KiB pages
                _ => (rng.range(16 << 10, 64 << 10), 3), // rare 16–64 KiB buffers
            },
            Self::RandomAlign => {
                // Log-uniform size: a uniform octave 2^3 .. 2^11, then uniform within it.
                let exp = rng.range(3, 11);
                let size = rng.range(1 << exp, (2 << exp) - 1).min(4096);
                (size, rng.range(3, 12) as u8)
            }
            Self::TalcLike => {
                let cap = rng.range(16, 9_999);
                let size = rng.range(4, cap - 1);
                let bits = rng.next_u64() as u16;
                (size, 3 + (bits.trailing_zeros() / 2) as u8)
            }
        }
    }
}

/// A generated operation sequence and what the replay needs to know about it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used on command lines and in tables (`small-churn`, `scaling-1e4`, …).
    pub name: &'static str,
    /// One-line description for reports.
    pub title: String,
    /// Untimed prefix (builds the live set of a scaling level).
    pub setup: Vec<Op>,
    /// The timed body.
    pub ops: Vec<Op>,
    /// Size of the slot table (highest slot + 1).
    pub slots: usize,
    /// Bytes a bump allocator consumes replaying setup and body (sizes plus worst-case padding).
    pub bump_bytes: usize,
}

impl Workload {
    /// Whether the workload is replayable: every free or realloc names a live slot and every
    /// allocation an empty one, all sizes are non-zero and every alignment is at most a page.
    pub fn is_consistent(&self) -> bool {
        let mut live = alloc::vec![false; self.slots];
        self.setup.iter().chain(&self.ops).all(|op| match *op {
            Op::Alloc {
                slot,
                size,
                align_log2,
            } => {
                !core::mem::replace(&mut live[slot as usize], true) && size > 0 && align_log2 <= 12
            }
            Op::Free { slot } => core::mem::replace(&mut live[slot as usize], false),
            Op::Realloc { slot, new_size } => live[slot as usize] && new_size > 0,
        })
    }

    /// A 64-bit digest (FNV-1a) of the setup and of the body, to show that two builds generate
    /// the same sequences.
    pub fn digest(&self) -> (u64, u64) {
        (digest(&self.setup), digest(&self.ops))
    }
}

/// FNV-1a over every field of every op (little-endian `u64`s: a tag, then the fields in order).
pub fn digest(ops: &[Op]) -> u64 {
    /// FNV-1a's 64-bit offset basis and prime.
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = BASIS;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    for op in ops {
        match *op {
            Op::Alloc {
                slot,
                size,
                align_log2,
            } => [0, slot.into(), size.into(), align_log2.into()]
                .into_iter()
                .for_each(&mut eat),
            Op::Free { slot } => [1, slot.into()].into_iter().for_each(&mut eat),
            Op::Realloc { slot, new_size } => [2, slot.into(), new_size.into()]
                .into_iter()
                .for_each(&mut eat),
        }
    }
    h
}

/// Builds an op list while tracking which slots are live, and the bump-arena bound.
#[derive(Debug, Default)]
struct Builder {
    ops: Vec<Op>,
    /// Live slots that random frees may pick.
    live: Vec<u32>,
    /// Index of each slot in `live` (`u32::MAX` when the slot is not in it).
    pos: Vec<u32>,
    /// Requested size of each slot's block (stale once the slot is empty).
    size: Vec<u32>,
    /// Alignment of each slot's block (stale once the slot is empty).
    align_log2: Vec<u8>,
    /// Slots that are empty and can be reused.
    free_slots: Vec<u32>,
    bump_bytes: usize,
}

impl Builder {
    fn alloc(&mut self, size: u32, align_log2: u8) -> u32 {
        let slot = self.alloc_untracked(size, align_log2);
        self.pos[slot as usize] = self.live.len() as u32;
        self.live.push(slot);
        slot
    }

    /// Allocates a block that random frees never pick (the realloc workload's vectors); only an
    /// explicit [`free`](Self::free) frees it.
    fn alloc_untracked(&mut self, size: u32, align_log2: u8) -> u32 {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.pos.push(u32::MAX);
            self.size.push(0);
            self.align_log2.push(0);
            (self.pos.len() - 1) as u32
        });
        let s = slot as usize;
        self.size[s] = size;
        self.align_log2[s] = align_log2;
        self.bump_bytes += size as usize + (1usize << align_log2);
        self.ops.push(Op::Alloc {
            slot,
            size,
            align_log2,
        });
        slot
    }

    fn free(&mut self, slot: u32) {
        let s = slot as usize;
        if self.pos[s] != u32::MAX {
            let at = self.pos[s] as usize;
            self.live.swap_remove(at);
            if let Some(&moved) = self.live.get(at) {
                self.pos[moved as usize] = at as u32;
            }
            self.pos[s] = u32::MAX;
        }
        self.free_slots.push(slot);
        self.ops.push(Op::Free { slot });
    }

    fn free_random(&mut self, rng: &mut Rng) {
        let victim = self.live[rng.below(self.live.len() as u64) as usize];
        self.free(victim);
    }

    fn realloc(&mut self, slot: u32, new_size: u32) {
        self.size[slot as usize] = new_size;
        self.bump_bytes += new_size as usize + (1usize << self.align_log2[slot as usize]);
        self.ops.push(Op::Realloc { slot, new_size });
    }

    /// One step of a churn around `target` live blocks: the chance to allocate falls linearly from
    /// 1 (empty) through 1/2 (at the target) to 0 (at twice the target), so the live count
    /// mean-reverts to `target` and half the steady-state calls are allocations.
    fn churn_step(&mut self, rng: &mut Rng, mix: Mix, target: usize) {
        let live = self.live.len() as u64;
        let span = 2 * target as u64;
        // P(alloc) = 1 - live / span, clamped at 0. The two generators read their draw from
        // opposite ends (see the crate docs); either way the probability is the same.
        let alloc = live == 0
            || match rng.generator() {
                Generator::WyRand => rng.chance(span.saturating_sub(live), span),
                Generator::XorShift64Star => rng.below(span) >= live,
            };
        if alloc {
            let (size, align) = mix.draw(rng);
            self.alloc(size, align);
        } else {
            self.free_random(rng);
        }
    }

    fn take_ops(&mut self) -> Vec<Op> {
        core::mem::take(&mut self.ops)
    }

    fn finish(self, name: &'static str, title: String, setup: Vec<Op>, ops: Vec<Op>) -> Workload {
        Workload {
            name,
            title,
            setup,
            ops,
            slots: self.pos.len(),
            bump_bytes: self.bump_bytes,
        }
    }
}

/// How big the generated workloads are, and which generator draws them. Each benchmark has its
/// own (the host benchmark's full and quick modes, the in-kernel benchmark's full and smoke
/// scales).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Timed calls of each churn workload (small, kernel mix, random alignment).
    pub churn_ops: usize,
    /// Live-set targets of small churn, kernel mix and random alignment.
    pub live_targets: [usize; 3],
    /// Steps of the realloc workload.
    pub realloc_steps: usize,
    /// Largest vector of the realloc workload, in bytes.
    pub realloc_max: u32,
    /// Live-object levels of the scaling workload: powers of ten, so that each level has its own
    /// name ([`scaling_name`]).
    pub scaling_levels: &'static [usize],
    /// Timed calls at each scaling level.
    pub scaling_ops: usize,
    /// The PRNG the sequences are drawn with: not a size, but with the seed it fixes the sequence.
    pub generator: Generator,
}

impl Sizes {
    /// The full benchmark's sizes. Both benchmarks run these (the in-kernel one with its own
    /// generator: `Sizes { generator: …, ..Sizes::FULL }`), so that their reports describe the
    /// same amount of work.
    pub const FULL: Self = Self {
        churn_ops: 400_000,
        live_targets: [10_000, 4_000, 2_000],
        realloc_steps: 20_000,
        realloc_max: 1 << 20,
        scaling_levels: &[1_000, 10_000, 100_000],
        scaling_ops: 200_000,
        generator: Generator::WyRand,
    };
}

/// Names of the workload families (`scaling` stands for all of its levels), for command lines.
pub const WORKLOAD_NAMES: [&str; 5] = [
    "small-churn",
    "kernel-mix",
    "random-align",
    "realloc-growth",
    "scaling",
];

/// A churn workload: `ops` churn steps of `mix` around `target` live blocks.
fn churn(
    s: &Sizes,
    name: &'static str,
    title: String,
    mix: Mix,
    target: usize,
    seed: u64,
) -> Workload {
    let mut rng = Rng::with_generator(seed, s.generator);
    let mut b = Builder::default();
    for _ in 0..s.churn_ops {
        b.churn_step(&mut rng, mix, target);
    }
    let body = b.take_ops();
    b.finish(name, title, Vec::new(), body)
}

/// Workload 1: small-object churn: 8–512 B (70% 16–128 B), live set mean-reverting to its target.
pub fn small_churn(s: &Sizes, seed: u64) -> Workload {
    let target = s.live_targets[0];
    let title = format!(
        "small-object churn: 8–512 B (70% 16–128 B), live set mean-reverting to {target}, {} calls",
        s.churn_ops
    );
    churn(s, "small-churn", title, Mix::Small, target, seed ^ 1)
}

/// Workload 2: kernel-like mix: 85% 32–256 B, 9% 1–4 KiB, 5.5% page-aligned 4 KiB, 0.5% 16–64 KiB.
pub fn kernel_mix(s: &Sizes, seed: u64) -> Workload {
    let target = s.live_targets[1];
    let title = format!(
        "kernel-like mix: 85% 32–256 B, 9% 1–4 KiB, 5.5% 4 KiB align 4096, 0.5% 16–64 KiB; \
         live set ~{target}, {} calls",
        s.churn_ops
    );
    churn(s, "kernel-mix", title, Mix::Kernel, target, seed ^ 2)
}

/// Workload 3: random-alignment mix: 8 B–4 KiB log-uniform, alignment 8–4096 uniform.
pub fn random_align(s: &Sizes, seed: u64) -> Workload {
    let target = s.live_targets[2];
    let title = format!(
        "random alignment: 8 B–4 KiB log-uniform, align 8–4096 uniform; live set ~{target}, {} calls",
        s.churn_ops
    );
    churn(s, "random-align", title, Mix::RandomAlign, target, seed ^ 3)
}

/// Workload 4: realloc-heavy growth. Eight `Vec`-like buffers grow by doubling from 8 B to
/// `realloc_max`, then are freed and restarted; a quarter of the steps are small-object churn
/// (about 256 live objects) so that growth in place is not trivially available.
pub fn realloc_growth(s: &Sizes, seed: u64) -> Workload {
    /// Number of growing buffers.
    const VECTORS: usize = 8;
    /// Live small objects the interleaved churn keeps around the vectors.
    const CHURN_TARGET: usize = 256;
    let mut rng = Rng::with_generator(seed ^ 4, s.generator);
    let mut b = Builder::default();
    let mut vecs: Vec<(u32, u32)> = (0..VECTORS).map(|_| (b.alloc_untracked(8, 3), 8)).collect();
    for _ in 0..s.realloc_steps {
        // One step in four: `below(4) == 0` is true exactly for draws below 2^62, the same draws
        // as the host benchmark's earlier `chance(0.25)`.
        if rng.below(4) == 0 {
            b.churn_step(&mut rng, Mix::Small, CHURN_TARGET);
            continue;
        }
        let v = rng.below(VECTORS as u64) as usize;
        let (slot, cap) = vecs[v];
        if cap >= s.realloc_max {
            b.free(slot);
            vecs[v] = (b.alloc_untracked(8, 3), 8);
        } else {
            b.realloc(slot, cap * 2);
            vecs[v].1 = cap * 2;
        }
    }
    let body = b.take_ops();
    let title = format!(
        "realloc growth: {VECTORS} vectors doubling 8 B → {} KiB, interleaved with small churn, {} steps",
        s.realloc_max >> 10,
        s.realloc_steps
    );
    b.finish("realloc-growth", title, Vec::new(), body)
}

/// Workload 5: one scaling level — build `live` small objects (untimed setup), then
/// `s.scaling_ops` timed calls alternating a free of a random live object and a new allocation.
pub fn scaling(s: &Sizes, live: usize, seed: u64) -> Workload {
    let mut rng = Rng::with_generator(seed ^ 5 ^ ((live as u64) << 8), s.generator);
    let mut b = Builder::default();
    for _ in 0..live {
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let setup = b.take_ops();
    for _ in 0..s.scaling_ops / 2 {
        b.free_random(&mut rng);
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let body = b.take_ops();
    let title = format!(
        "scaling: {live} live small objects, {} free/alloc calls",
        s.scaling_ops
    );
    b.finish(scaling_name(live), title, setup, body)
}

/// Fixed-size objects, the load a dedicated pool (`kmem_cache`-style) serves: build `live`
/// objects of `size` bytes aligned to `1 << align_log2` (untimed setup), then `ops` timed calls
/// alternating a free of a random live object and a new allocation of the same size.
pub fn fixed_size(
    name: &'static str,
    size: u32,
    align_log2: u8,
    live: usize,
    ops: usize,
    seed: u64,
) -> Workload {
    let mut rng = Rng::new(seed ^ 6 ^ (u64::from(size) << 8));
    let mut b = Builder::default();
    for _ in 0..live {
        b.alloc(size, align_log2);
    }
    let setup = b.take_ops();
    for _ in 0..ops / 2 {
        b.free_random(&mut rng);
        b.alloc(size, align_log2);
    }
    let body = b.take_ops();
    let title = format!(
        "fixed-size objects: {live} live objects of {size} B (align {}), {ops} free/alloc calls",
        1u32 << align_log2
    );
    b.finish(name, title, setup, body)
}

/// Table name of a scaling level (`scaling-1e4`); `scaling` for a level that is not a power of
/// ten from 10 to 10^9.
pub fn scaling_name(live: usize) -> &'static str {
    /// `NAMES[k]` names the level 10^k.
    const NAMES: [&str; 10] = [
        "scaling",
        "scaling-1e1",
        "scaling-1e2",
        "scaling-1e3",
        "scaling-1e4",
        "scaling-1e5",
        "scaling-1e6",
        "scaling-1e7",
        "scaling-1e8",
        "scaling-1e9",
    ];
    (1..NAMES.len())
        .find(|&k| 10usize.checked_pow(k as u32) == Some(live))
        .map_or("scaling", |k| NAMES[k])
}

/// The allocation-heavy stream of the heap-efficiency test: endless, deterministic in its seed
/// (wyrand), victims chosen at random.
#[derive(Debug)]
pub struct GrowthStream {
    rng: Rng,
    mix: Mix,
    kind: StreamKind,
    b: Builder,
    live_bytes: usize,
    /// Requested bytes live before the most recent op.
    before: usize,
}

/// Which calls a [`GrowthStream`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    /// Two allocations for every free.
    TwoToOne,
    /// talc's own heap-efficiency benchmark (`benches/src/heap_efficiency.rs` in the talc
    /// repository): of ten calls, five allocate, one frees and four resize a random live block to
    /// a size uniform in 1 B..100 KB, keeping its alignment.
    TalcLike,
}

/// Largest size (exclusive) a talc-like stream resizes a block to: ten times talc's largest
/// allocation, as its benchmark does.
const TALC_REALLOC_MAX: u32 = 100_000;

impl GrowthStream {
    /// A stream of `mix` requests, two allocations for every free.
    pub fn new(mix: Mix, seed: u64) -> Self {
        Self::with_kind(mix, StreamKind::TwoToOne, seed)
    }

    /// talc's heap-efficiency benchmark: [`Mix::TalcLike`] requests, and of ten calls five
    /// allocations, one free and four reallocs to 1 B..100 KB.
    pub fn talc_like(seed: u64) -> Self {
        Self::with_kind(Mix::TalcLike, StreamKind::TalcLike, seed)
    }

    fn with_kind(mix: Mix, kind: StreamKind, seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xeff ^ mix as u64),
            mix,
            kind,
            b: Builder::default(),
            live_bytes: 0,
            before: 0,
        }
    }

    /// The next call, and the requested bytes live once it has completed.
    pub fn next_op(&mut self) -> (Op, usize) {
        self.before = self.live_bytes;
        let (alloc, free) = match self.kind {
            StreamKind::TwoToOne => {
                let alloc = self.b.live.is_empty() || self.rng.chance(2, 3);
                (alloc, !alloc)
            }
            StreamKind::TalcLike => {
                let action = self.rng.below(10);
                let alloc = self.b.live.is_empty() || action <= 4;
                (alloc, !alloc && action == 5)
            }
        };
        if alloc {
            let (size, align) = self.mix.draw(&mut self.rng);
            self.b.alloc(size, align);
            self.live_bytes += size as usize;
        } else {
            let victim = self.b.live[self.rng.below(self.b.live.len() as u64) as usize];
            let old = self.b.size[victim as usize] as usize;
            if free {
                self.live_bytes -= old;
                self.b.free(victim);
            } else {
                let new_size = self.rng.range(1, TALC_REALLOC_MAX - 1);
                self.live_bytes = self.live_bytes - old + new_size as usize;
                self.b.realloc(victim, new_size);
            }
        }
        let op = self.b.ops.pop().expect("an op was just pushed");
        (op, self.live_bytes)
    }

    /// Requested bytes live before the most recent op (what counts when that op is refused).
    pub fn live_bytes_before(&self) -> usize {
        self.before
    }
}

#[cfg(test)]
mod tests;
