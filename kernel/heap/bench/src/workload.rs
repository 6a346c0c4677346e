//! Operation sequences: generated once from a seeded PRNG, then replayed for every allocator.
//!
//! A [`Workload`] is a flat list of [`Op`]s over numbered *slots* (a slot holds one live block).
//! Generation never looks at addresses, so the sequence is identical for every allocator; the
//! replay keeps a slot table of pointers. Each workload has an untimed `setup` prefix (used by
//! the scaling levels to build the live set) and a timed `ops` body. Whatever is still live after
//! the body is freed by an untimed teardown.
//!
//! [`GrowthStream`] is the allocation-heavy variant used for heap efficiency: an endless,
//! deterministic stream (two allocations for every free) replayed until the first failure.

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

/// A small, fast, seedable PRNG (wyrand). Quality is ample for picking sizes and victims.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < p
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
                // log-uniform size: uniform exponent in [3, 12], then uniform within the octave.
                let exp = rng.range(3, 11);
                let size = rng.range(1 << exp, (2 << exp) - 1).min(4096);
                (size, rng.range(3, 12) as u8)
            }
        }
    }
}

/// A generated operation sequence and what the replay needs to know about it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used on the command line and in tables (`small-churn`, `scaling-1e4`, …).
    pub name: String,
    /// One-line description for the report.
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

/// Builds an op list while tracking which slots are live, and the bump-arena bound.
#[derive(Debug, Default)]
struct Builder {
    ops: Vec<Op>,
    live: Vec<u32>,
    /// Index of each slot in `live` (`u32::MAX` when the slot is empty).
    pos: Vec<u32>,
    size: Vec<u32>,
    align_log2: Vec<u8>,
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

    /// Allocates a block that random frees never pick (the realloc workload's vectors); it is
    /// freed only by an explicit [`free`](Self::free).
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
    /// 1 (empty) through 1/2 (at target) to 0 (at twice the target), so the live count mean-reverts
    /// to `target` and half the steady-state calls are allocations.
    fn churn_step(&mut self, rng: &mut Rng, mix: Mix, target: usize) {
        let p_alloc = (1.0 - self.live.len() as f64 / (2.0 * target as f64)).clamp(0.0, 1.0);
        if self.live.is_empty() || rng.chance(p_alloc) {
            let (size, align) = mix.draw(rng);
            self.alloc(size, align);
        } else {
            self.free_random(rng);
        }
    }

    fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    fn finish(self, name: &str, title: String, setup: Vec<Op>, ops: Vec<Op>) -> Workload {
        Workload {
            name: name.to_owned(),
            title,
            setup,
            ops,
            slots: self.pos.len(),
            bump_bytes: self.bump_bytes,
        }
    }
}

/// How big the generated workloads are.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Timed calls of the churn workloads (1–3).
    pub churn_ops: usize,
    /// Steps of the realloc workload.
    pub realloc_steps: usize,
    /// Largest vector of the realloc workload, in bytes.
    pub realloc_max: u32,
    /// Live-object levels of the scaling workload.
    pub scaling_levels: &'static [usize],
    /// Timed calls at each scaling level.
    pub scaling_ops: usize,
    /// Live-set targets of small churn, kernel mix and random alignment.
    pub live_targets: [usize; 3],
}

impl Scale {
    /// The full benchmark.
    pub const FULL: Self = Self {
        churn_ops: 400_000,
        realloc_steps: 20_000,
        realloc_max: 1 << 20,
        scaling_levels: &[1_000, 10_000, 100_000],
        scaling_ops: 200_000,
        live_targets: [10_000, 4_000, 2_000],
    };

    /// Smoke mode: tiny, for `cargo test` and quick checks.
    pub const QUICK: Self = Self {
        churn_ops: 3_000,
        realloc_steps: 400,
        realloc_max: 64 << 10,
        scaling_levels: &[100, 1_000],
        scaling_ops: 2_000,
        live_targets: [300, 200, 100],
    };
}

/// Names accepted by `--workload`.
pub const WORKLOAD_NAMES: [&str; 5] = [
    "small-churn",
    "kernel-mix",
    "random-align",
    "realloc-growth",
    "scaling",
];

fn churn(name: &str, title: String, mix: Mix, target: usize, ops: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed);
    let mut b = Builder::default();
    for _ in 0..ops {
        b.churn_step(&mut rng, mix, target);
    }
    let body = b.take_ops();
    b.finish(name, title, Vec::new(), body)
}

/// Workload 1: small-object churn.
pub fn small_churn(scale: &Scale, seed: u64) -> Workload {
    let target = scale.live_targets[0];
    let title = format!(
        "small-object churn: 8–512 B (70% 16–128 B), live set mean-reverting to {target}, {} calls",
        scale.churn_ops
    );
    churn(
        "small-churn",
        title,
        Mix::Small,
        target,
        scale.churn_ops,
        seed ^ 1,
    )
}

/// Workload 2: kernel-like mix.
pub fn kernel_mix(scale: &Scale, seed: u64) -> Workload {
    let target = scale.live_targets[1];
    let title = format!(
        "kernel-like mix: 85% 32–256 B, 9% 1–4 KiB, 5.5% 4 KiB align 4096, 0.5% 16–64 KiB; \
         live set ~{target}, {} calls",
        scale.churn_ops
    );
    churn(
        "kernel-mix",
        title,
        Mix::Kernel,
        target,
        scale.churn_ops,
        seed ^ 2,
    )
}

/// Workload 3: random-alignment mix.
pub fn random_align(scale: &Scale, seed: u64) -> Workload {
    let target = scale.live_targets[2];
    let title = format!(
        "random alignment: 8 B–4 KiB log-uniform, align 8–4096 uniform; live set ~{target}, {} calls",
        scale.churn_ops
    );
    churn(
        "random-align",
        title,
        Mix::RandomAlign,
        target,
        scale.churn_ops,
        seed ^ 3,
    )
}

/// Workload 4: realloc-heavy growth. Eight `Vec`-like buffers grow by doubling from 8 B to
/// `realloc_max`, then are freed and restarted; a quarter of the steps are small-object churn
/// (about 256 live objects) so that growth in place is not trivially available.
pub fn realloc_growth(scale: &Scale, seed: u64) -> Workload {
    const VECTORS: usize = 8;
    let mut rng = Rng::new(seed ^ 4);
    let mut b = Builder::default();
    let mut vecs: Vec<(u32, u32)> = (0..VECTORS).map(|_| (b.alloc_untracked(8, 3), 8)).collect();
    for _ in 0..scale.realloc_steps {
        if rng.chance(0.25) {
            b.churn_step(&mut rng, Mix::Small, 256);
            continue;
        }
        let v = rng.below(VECTORS as u64) as usize;
        let (slot, cap) = vecs[v];
        if cap >= scale.realloc_max {
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
        scale.realloc_max >> 10,
        scale.realloc_steps
    );
    b.finish("realloc-growth", title, Vec::new(), body)
}

/// Workload 5: one scaling level — build `live` small objects (untimed), then `ops` timed calls
/// alternating a free of a random live object and a new allocation.
pub fn scaling(scale: &Scale, live: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed ^ 5 ^ (live as u64) << 8);
    let mut b = Builder::default();
    for _ in 0..live {
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let setup = b.take_ops();
    for _ in 0..scale.scaling_ops / 2 {
        b.free_random(&mut rng);
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let body = b.take_ops();
    let title = format!(
        "scaling: {live} live small objects, {} free/alloc calls",
        scale.scaling_ops
    );
    b.finish(&scaling_name(live), title, setup, body)
}

/// Table name of a scaling level (`scaling-1e4`).
pub fn scaling_name(live: usize) -> String {
    let exp = (live as f64).log10().round() as u32;
    if 10usize.pow(exp) == live {
        format!("scaling-1e{exp}")
    } else {
        format!("scaling-{live}")
    }
}

/// The allocation-heavy stream of one mix for the heap-efficiency test: two allocations for
/// every free (victims chosen at random), endless and deterministic in its seed.
#[derive(Debug)]
pub struct GrowthStream {
    rng: Rng,
    mix: Mix,
    b: Builder,
    live_bytes: usize,
}

impl GrowthStream {
    /// A stream of `mix` requests.
    pub fn new(mix: Mix, seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xeff ^ mix as u64),
            mix,
            b: Builder::default(),
            live_bytes: 0,
        }
    }

    /// The next call, and the requested bytes live once it has completed.
    pub fn next_op(&mut self) -> (Op, usize) {
        if self.b.live.is_empty() || self.rng.chance(2.0 / 3.0) {
            let (size, align) = self.mix.draw(&mut self.rng);
            self.b.alloc(size, align);
            self.live_bytes += size as usize;
        } else {
            let victim = self.b.live[self.rng.below(self.b.live.len() as u64) as usize];
            self.live_bytes -= self.b.size[victim as usize] as usize;
            self.b.free(victim);
        }
        let op = self.b.ops.pop().expect("an op was just pushed");
        (op, self.live_bytes)
    }

    /// Requested bytes live before the pending allocation `op` (used when it fails).
    pub fn live_bytes_before(&self, op: Op) -> usize {
        match op {
            Op::Alloc { size, .. } => self.live_bytes - size as usize,
            _ => self.live_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a workload against a model of the slot table: every free/realloc names a live
    /// slot, every alloc an empty one.
    fn check_consistent(w: &Workload) {
        let mut live = vec![false; w.slots];
        for op in w.setup.iter().chain(&w.ops) {
            match *op {
                Op::Alloc { slot, size, .. } => {
                    assert!(!live[slot as usize] && size > 0);
                    live[slot as usize] = true;
                }
                Op::Free { slot } => {
                    assert!(live[slot as usize]);
                    live[slot as usize] = false;
                }
                Op::Realloc { slot, new_size } => assert!(live[slot as usize] && new_size > 0),
            }
        }
    }

    #[test]
    fn workloads_are_deterministic_and_consistent() {
        let s = Scale::QUICK;
        for w in [
            small_churn(&s, 7),
            kernel_mix(&s, 7),
            random_align(&s, 7),
            realloc_growth(&s, 7),
        ] {
            check_consistent(&w);
            assert!(!w.ops.is_empty());
        }
        assert_eq!(small_churn(&s, 7).ops, small_churn(&s, 7).ops);
        assert_ne!(small_churn(&s, 7).ops, small_churn(&s, 8).ops);
        let level = scaling(&s, 100, 7);
        check_consistent(&level);
        assert_eq!(level.setup.len(), 100);
        assert_eq!(scaling_name(100_000), "scaling-1e5");
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
}
