//! Operation sequences: generated once from a seeded PRNG, then replayed for every allocator.
//!
//! A [`Workload`] is a flat list of [`Op`]s over numbered *slots* (a slot holds one live block).
//! Generation never looks at addresses, so every allocator sees the identical sequence; the replay
//! keeps the table of pointers. Each workload has an untimed `setup` prefix (the scaling levels use
//! it to build their live set) and a timed body; what is still live after the body is freed by an
//! untimed teardown.
//!
//! The request mixes follow the host benchmark's (`kernel/heap/bench/src/workload.rs`) so the two
//! reports describe the same kinds of work. That file is not included here with `#[path]` because
//! it is written for `std` (`String` names, `format!`, `std::mem::take`, `f64::log10`); this one is
//! `no_std` + `alloc`, uses a xorshift generator and keeps all probabilities in integers (the
//! kernel target has no hardware floating point).

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

/// xorshift64* (Vigna): a seedable generator whose quality is ample for picking sizes and victims.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose output depends only on `seed` (any value, zero included).
    pub const fn new(seed: u64) -> Self {
        // xorshift must not start at zero; mixing in a constant with many set bits avoids it for
        // every seed but one, and that one is remapped.
        let state = seed ^ 0x9e37_79b9_7f4a_7c15;
        Self(if state == 0 { 1 } else { state })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`), by the multiply-high method (no modulo bias worth speaking of).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo) + 1) as u32
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
                // Log-uniform size: a uniform octave 2^3 .. 2^11, then uniform within it.
                let exp = rng.range(3, 11);
                let size = rng.range(1 << exp, (2 << exp) - 1).min(4096);
                (size, rng.range(3, 12) as u8)
            }
        }
    }
}

/// A generated operation sequence.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used in tables (`small-churn`, `scaling-1e4`, …).
    pub name: &'static str,
    /// Untimed prefix (builds the live set of a scaling level).
    pub setup: Vec<Op>,
    /// The timed body.
    pub ops: Vec<Op>,
    /// Size of the slot table (highest slot + 1).
    pub slots: usize,
}

/// Builds an op list while tracking which slots are live.
#[derive(Debug, Default)]
struct Builder {
    ops: Vec<Op>,
    /// Live slots that random frees may pick.
    live: Vec<u32>,
    /// Index of each slot in `live` (`u32::MAX` when the slot is not in it).
    pos: Vec<u32>,
    /// Slots that are empty and can be reused.
    free_slots: Vec<u32>,
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
            (self.pos.len() - 1) as u32
        });
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

    /// One step of a churn around `target` live blocks: the chance to allocate falls linearly from
    /// 1 (empty) through 1/2 (at the target) to 0 (at twice the target), so the live count
    /// mean-reverts to `target` and half the steady-state calls are allocations.
    fn churn_step(&mut self, rng: &mut Rng, mix: Mix, target: usize) {
        // P(alloc) = 1 - live / (2 * target), drawn exactly in integers.
        let span = 2 * target as u64;
        if self.live.is_empty() || rng.below(span) >= self.live.len() as u64 {
            let (size, align) = mix.draw(rng);
            self.alloc(size, align);
        } else {
            self.free_random(rng);
        }
    }

    fn take_ops(&mut self) -> Vec<Op> {
        core::mem::take(&mut self.ops)
    }

    fn finish(self, name: &'static str, setup: Vec<Op>, ops: Vec<Op>) -> Workload {
        Workload {
            name,
            setup,
            ops,
            slots: self.pos.len(),
        }
    }
}

/// How big the generated workloads are.
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
    /// Live-object levels of the scaling workload.
    pub scaling_levels: &'static [usize],
    /// Timed calls at each scaling level.
    pub scaling_ops: usize,
}

fn churn(name: &'static str, mix: Mix, target: usize, ops: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed);
    let mut b = Builder::default();
    for _ in 0..ops {
        b.churn_step(&mut rng, mix, target);
    }
    let body = b.take_ops();
    b.finish(name, Vec::new(), body)
}

/// Small-object churn: 8–512 B (70% 16–128 B), live set mean-reverting to its target.
pub fn small_churn(s: &Sizes, seed: u64) -> Workload {
    churn(
        "small-churn",
        Mix::Small,
        s.live_targets[0],
        s.churn_ops,
        seed ^ 1,
    )
}

/// Kernel-like mix: 85% 32–256 B, 9% 1–4 KiB, 5.5% page-aligned 4 KiB, 0.5% 16–64 KiB.
pub fn kernel_mix(s: &Sizes, seed: u64) -> Workload {
    churn(
        "kernel-mix",
        Mix::Kernel,
        s.live_targets[1],
        s.churn_ops,
        seed ^ 2,
    )
}

/// Random-alignment mix: 8 B–4 KiB log-uniform, alignment 8–4096 uniform.
pub fn random_align(s: &Sizes, seed: u64) -> Workload {
    churn(
        "random-align",
        Mix::RandomAlign,
        s.live_targets[2],
        s.churn_ops,
        seed ^ 3,
    )
}

/// Realloc-heavy growth: eight `Vec`-like buffers grow by doubling from 8 B to `realloc_max`, then
/// are freed and restarted; a quarter of the steps are small-object churn (about 256 live objects)
/// so that growth in place is not trivially available.
pub fn realloc_growth(s: &Sizes, seed: u64) -> Workload {
    /// Number of growing buffers, as in the host benchmark.
    const VECTORS: usize = 8;
    let mut rng = Rng::new(seed ^ 4);
    let mut b = Builder::default();
    let mut vecs: Vec<(u32, u32)> = (0..VECTORS).map(|_| (b.alloc_untracked(8, 3), 8)).collect();
    for _ in 0..s.realloc_steps {
        if rng.below(4) == 0 {
            b.churn_step(&mut rng, Mix::Small, 256);
            continue;
        }
        let v = rng.below(VECTORS as u64) as usize;
        let (slot, cap) = vecs[v];
        if cap >= s.realloc_max {
            b.free(slot);
            vecs[v] = (b.alloc_untracked(8, 3), 8);
        } else {
            b.ops.push(Op::Realloc {
                slot,
                new_size: cap * 2,
            });
            vecs[v].1 = cap * 2;
        }
    }
    let body = b.take_ops();
    b.finish("realloc-growth", Vec::new(), body)
}

/// One scaling level: build `live` small objects (untimed setup), then `ops` timed calls
/// alternating a free of a random live object and a new allocation.
pub fn scaling(live: usize, ops: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed ^ 5 ^ ((live as u64) << 8));
    let mut b = Builder::default();
    for _ in 0..live {
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let setup = b.take_ops();
    for _ in 0..ops / 2 {
        b.free_random(&mut rng);
        let (size, align) = Mix::Small.draw(&mut rng);
        b.alloc(size, align);
    }
    let body = b.take_ops();
    b.finish(scaling_name(live), setup, body)
}

/// Table name of a scaling level.
pub fn scaling_name(live: usize) -> &'static str {
    match live {
        100 => "scaling-1e2",
        1_000 => "scaling-1e3",
        10_000 => "scaling-1e4",
        100_000 => "scaling-1e5",
        1_000_000 => "scaling-1e6",
        _ => "scaling",
    }
}

/// Checks that a workload is replayable: every free or realloc names a live slot and every
/// allocation an empty one, all sizes are non-zero and every alignment is at most a page.
pub fn is_consistent(w: &Workload) -> bool {
    let mut live = alloc::vec![false; w.slots];
    w.setup.iter().chain(&w.ops).all(|op| match *op {
        Op::Alloc {
            slot,
            size,
            align_log2,
        } => {
            let ok = !live[slot as usize] && size > 0 && align_log2 <= 12;
            live[slot as usize] = true;
            ok
        }
        Op::Free { slot } => core::mem::replace(&mut live[slot as usize], false),
        Op::Realloc { slot, new_size } => live[slot as usize] && new_size > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test_case]
    fn generated_workloads_are_consistent_and_deterministic() {
        let s = Sizes {
            churn_ops: 500,
            live_targets: [50, 40, 30],
            realloc_steps: 200,
            realloc_max: 4096,
            scaling_levels: &[100],
            scaling_ops: 200,
        };
        for w in [
            small_churn(&s, 1),
            kernel_mix(&s, 1),
            random_align(&s, 1),
            realloc_growth(&s, 1),
            scaling(100, 200, 1),
        ] {
            assert!(is_consistent(&w), "{}", w.name);
            assert!(!w.ops.is_empty(), "{}", w.name);
        }
        assert_eq!(small_churn(&s, 1).ops, small_churn(&s, 1).ops);
        assert_ne!(small_churn(&s, 1).ops, small_churn(&s, 2).ops);
        assert_eq!(scaling(100, 200, 1).setup.len(), 100);
    }
}
