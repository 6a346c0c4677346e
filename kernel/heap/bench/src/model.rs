//! Placement models (`--model`): how densely a *placement policy* could pack the
//! heap-efficiency streams at best, with no allocator behind it.
//!
//! The efficiency benchmark measures a heap; this answers a different question: before building
//! a policy, is the goal inside what the policy allows at all? A model replays the benchmark's
//! own stream ([`GrowthStream`], same mix and seed) and places every request by a policy, with
//! everything a real heap adds left out:
//!
//! * **slabs**: equal blocks in slabs of whole pages (kheap's chunks are slabs of one page, with
//!   its real table: [`class_for`], [`CLASS_SIZES`]); a slab is counted from its first block
//!   taken to its last block given back, with no reserve, no magazine and no metadata pages;
//! * **the coalescing allocator** is a byte counter: each block costs its size rounded up to 16
//!   bytes plus a 16-byte header, and an aligned block a chosen fraction of its alignment (the
//!   gap an aligned placement leaves that no later request fills). It never fragments. Blocks
//!   from [`PAGE_RUN_THRESHOLD`] up are whole pages.
//!
//! The budget counts slab pages and the counter's bytes in pages; the model stops at the first
//! request that would pass it and reports the peak of live requested bytes over the budget, as
//! the benchmark does. Every simplification favours the policy, so a model's figure is an upper
//! bound for any heap that places blocks that way; the *today* rows, against the measured
//! figures, show how far above a real heap the bound lies.
//!
//! The policies are the ones issue 13's packing and free-latency goals ask about (the analysis
//! is in `results/ANALYSIS.md`, "What the remaining goals would cost"):
//!
//! * random alignment: serving over-aligned requests from aligned blocks inside chunks of any
//!   class (the best a one-page slab can do), or sending them to the coalescing allocator;
//! * kernel mix: serving the 1–4 KiB requests the classes turn away from merge-free slab classes
//!   1/8 apart instead of the coalescing allocator (frees that never merge).
//! * talc's benchmark: today's routing, the design's ceiling on that stream (a resize frees the
//!   old block before the new one is placed, as if every resize could reuse its bytes).

use core::alloc::Layout;
use std::fmt::Write as _;

use kheap::size_class::{CLASS_SIZES, SizeClass, class_for};
use kheap_workload::{GrowthStream, Mix, Op};

use crate::Stream;

const PAGE: usize = 4096;

/// Blocks from this size up are page runs in kheap (`kheap`'s large allocator's threshold).
const PAGE_RUN_THRESHOLD: usize = 64 * 1024;

/// Size classes for the 1–4 KiB requests, 1/8 of a power of two apart: 1152 … 2048 by 128,
/// 2304 … 4096 by 256 (the merge-free alternative to the coalescing allocator).
const MID_CLASSES: [usize; 16] = [
    1152, 1280, 1408, 1536, 1664, 1792, 1920, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096,
];

/// One slab: `pages` pages of `block`-byte blocks, the free ones marked in `free`.
#[derive(Debug)]
struct Slab {
    pool: usize,
    free: Vec<u64>,
    free_count: usize,
}

/// Pools of equal blocks in slabs of whole pages.
#[derive(Debug, Default)]
struct Slabs {
    /// Per pool: block size, pages per slab, blocks per slab.
    pools: Vec<(usize, usize, usize)>,
    /// Per pool: slabs with a free block (ids into `slabs`).
    avail: Vec<Vec<usize>>,
    slabs: Vec<Option<Slab>>,
    /// Ids of `slabs` entries that are `None`.
    vacant: Vec<usize>,
    /// Pages of live slabs.
    pages: usize,
}

/// Where a block of the model lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Place {
    /// Block `index` of slab `slab`.
    Slab { slab: usize, index: usize },
    /// In the coalescing allocator, costing these bytes.
    Bytes(usize),
}

impl Slabs {
    /// The pool of `block`-byte blocks in slabs of `pages` pages, created on first use.
    fn pool(&mut self, block: usize, pages: usize) -> usize {
        if let Some(p) = self
            .pools
            .iter()
            .position(|&(b, n, _)| b == block && n == pages)
        {
            return p;
        }
        self.pools.push((block, pages, pages * PAGE / block));
        self.avail.push(Vec::new());
        self.pools.len() - 1
    }

    fn new_slab(&mut self, pool: usize) -> usize {
        let (_, pages, blocks) = self.pools[pool];
        let mut free = vec![0u64; blocks.div_ceil(64)];
        for i in 0..blocks {
            free[i / 64] |= 1 << (i % 64);
        }
        let slab = Slab {
            pool,
            free,
            free_count: blocks,
        };
        let id = match self.vacant.pop() {
            Some(id) => {
                self.slabs[id] = Some(slab);
                id
            }
            None => {
                self.slabs.push(Some(slab));
                self.slabs.len() - 1
            }
        };
        self.pages += pages;
        self.avail[pool].push(id);
        id
    }

    fn slab(&mut self, id: usize) -> &mut Slab {
        self.slabs[id].as_mut().expect("a live slab")
    }

    /// Takes block `index` of slab `id` (free).
    fn take_at(&mut self, id: usize, index: usize) -> Place {
        let slab = self.slab(id);
        debug_assert!(slab.free[index / 64] & (1 << (index % 64)) != 0);
        slab.free[index / 64] &= !(1 << (index % 64));
        slab.free_count -= 1;
        if slab.free_count == 0 {
            let pool = slab.pool;
            self.avail[pool].retain(|&s| s != id);
        }
        Place::Slab { slab: id, index }
    }

    /// Any free block of `pool`, a new slab's if none: the least aligned free block of the
    /// newest slab with room when `spare_aligned` (keeping aligned blocks for aligned
    /// requests), otherwise its lowest.
    fn take(&mut self, pool: usize, spare_aligned: bool) -> Place {
        let id = match self.avail[pool].last() {
            Some(&id) => id,
            None => self.new_slab(pool),
        };
        let block = self.pools[pool].0;
        let slab = self.slab(id);
        let free = (0..slab.free.len() * 64).filter(|&i| slab.free[i / 64] & (1 << (i % 64)) != 0);
        let index = if spare_aligned {
            free.min_by_key(|&i| {
                let offset = i * block;
                if offset == 0 {
                    u32::MAX
                } else {
                    offset.trailing_zeros()
                }
            })
        } else {
            free.into_iter().next()
        }
        .expect("a slab with room has a free block");
        self.take_at(id, index)
    }

    /// A free block at an offset that is a multiple of `align` in any slab of `pool`.
    fn take_aligned(&mut self, pool: usize, align: usize) -> Option<Place> {
        let block = self.pools[pool].0;
        let found = self.avail[pool].iter().find_map(|&id| {
            let slab = self.slabs[id].as_ref().expect("a live slab");
            (0..slab.free.len() * 64)
                .find(|&i| {
                    slab.free[i / 64] & (1 << (i % 64)) != 0 && (i * block).is_multiple_of(align)
                })
                .map(|i| (id, i))
        });
        found.map(|(id, i)| self.take_at(id, i))
    }

    /// Gives back block `index` of slab `id`; an empty slab is released.
    fn give(&mut self, id: usize, index: usize) {
        let slab = self.slab(id);
        debug_assert!(slab.free[index / 64] & (1 << (index % 64)) == 0);
        slab.free[index / 64] |= 1 << (index % 64);
        slab.free_count += 1;
        let (pool, count) = (slab.pool, slab.free_count);
        let (_, pages, blocks) = self.pools[pool];
        if count == 1 {
            self.avail[pool].push(id);
        }
        if count == blocks {
            self.avail[pool].retain(|&s| s != id);
            self.slabs[id] = None;
            self.vacant.push(id);
            self.pages -= pages;
        }
    }
}

/// A placement policy of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// kheap's routing ([`class_for`]); the rest to the coalescing allocator, which loses
    /// `align_loss` of an alignment above 16 per block.
    Today { align_loss: f64 },
    /// As today, but a request whose class is a larger block than its size's class only for
    /// its alignment, wasting more than 1/8 of it ([`over_aligned`]), takes any free block at an aligned offset in a chunk of a class from its
    /// size's class up to that class (found by a search over every chunk), or else the first
    /// block of a new chunk of its size's class.
    AlignedInChunks { align_loss: f64 },
    /// As today, but every such over-aligned request ([`over_aligned`]) aligned to at least
    /// `min_align` goes to the coalescing allocator, which loses `align_loss` of its alignment.
    OverAlignedToCoalescing { align_loss: f64, min_align: usize },
    /// As today, but the 1–4 KiB requests the classes turn away take merge-free slab classes
    /// 1/8 apart ([`MID_CLASSES`]) in slabs of `slab_pages` pages.
    MidSlabs { slab_pages: usize },
}

/// What one model run found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelRun {
    /// Peak live requested bytes over the budget, before the first request past it.
    pub efficiency: f64,
    /// Share of the allocations the coalescing allocator took.
    pub coalescing_share: f64,
    /// Calls replayed.
    pub calls: usize,
}

/// Bytes the coalescing allocator spends on a block of `size` bytes aligned to `align`.
fn coalescing_cost(size: usize, align: usize, align_loss: f64) -> usize {
    if size >= PAGE_RUN_THRESHOLD {
        return (size + 16).div_ceil(PAGE) * PAGE;
    }
    let gap = if align > 16 {
        (align as f64 * align_loss) as usize
    } else {
        0
    };
    size.next_multiple_of(16) + 16 + gap
}

/// Index of the smallest class at least `size` (any alignment).
fn size_class(size: usize) -> usize {
    CLASS_SIZES
        .iter()
        .position(|&c| c >= size)
        .expect("a class-sized request")
}

/// Replays an efficiency stream under `policy` in a budget of `budget` bytes, for at most
/// `max_calls` calls. A realloc (talc's benchmark) frees the old block before it places the new
/// one, as if every resize could reuse the old block's bytes: the model's upper bound.
pub fn run(policy: Policy, mut stream: GrowthStream, budget: usize, max_calls: usize) -> ModelRun {
    let mut slabs = Slabs::default();
    let mut coalescing = 0usize;
    // Per slot: the live block's place and alignment.
    let mut places: Vec<Option<(Place, usize)>> = Vec::new();
    let (mut allocs, mut to_coalescing) = (0usize, 0usize);
    let mut peak = 0usize;
    let mut calls = 0;
    while calls < max_calls {
        let (op, live) = stream.next_op();
        let (slot, size, align) = match op {
            Op::Alloc {
                slot,
                size,
                align_log2,
            } => (slot as usize, size as usize, 1usize << align_log2),
            Op::Free { slot } => {
                let (old, _) = places[slot as usize]
                    .take()
                    .expect("the stream frees live slots");
                release(&mut slabs, &mut coalescing, old);
                peak = peak.max(live);
                calls += 1;
                continue;
            }
            Op::Realloc { slot, new_size } => {
                let (old, align) = places[slot as usize]
                    .take()
                    .expect("the stream resizes live slots");
                release(&mut slabs, &mut coalescing, old);
                (slot as usize, new_size as usize, align)
            }
        };
        let place = place(policy, &mut slabs, size, align);
        allocs += 1;
        if let Place::Bytes(b) = place {
            coalescing += b;
            to_coalescing += 1;
        }
        if slabs.pages * PAGE + coalescing.next_multiple_of(PAGE) > budget {
            break;
        }
        if places.len() <= slot {
            places.resize(slot + 1, None);
        }
        places[slot] = Some((place, align));
        peak = peak.max(live);
        calls += 1;
    }
    ModelRun {
        efficiency: peak as f64 / budget as f64,
        coalescing_share: to_coalescing as f64 / allocs.max(1) as f64,
        calls,
    }
}

/// Gives back the block at `place`.
fn release(slabs: &mut Slabs, coalescing: &mut usize, place: Place) {
    match place {
        Place::Bytes(b) => *coalescing -= b,
        Place::Slab { slab, index } => slabs.give(slab, index),
    }
}

/// Whether class `c` serves a `size`-byte request only for its alignment, at a waste the
/// classes' own rule would not accept: `c` is larger than the size's class, and more than 1/8
/// of its block is left over.
fn over_aligned(size: usize, c: usize) -> bool {
    c > size_class(size) && CLASS_SIZES[c] - size > CLASS_SIZES[c] / 8
}

/// Places one request.
fn place(policy: Policy, slabs: &mut Slabs, size: usize, align: usize) -> Place {
    let layout = Layout::from_size_align(size, align).expect("a valid benchmark layout");
    let class = match class_for(layout) {
        SizeClass::Small(i) => Some(i),
        SizeClass::Large => None,
    };
    match (policy, class) {
        (Policy::Today { align_loss }, None)
        | (Policy::AlignedInChunks { align_loss }, None)
        | (Policy::OverAlignedToCoalescing { align_loss, .. }, None) => {
            Place::Bytes(coalescing_cost(size, align, align_loss))
        }
        (Policy::MidSlabs { slab_pages }, None) => match MID_CLASSES.iter().find(|&&c| c >= size) {
            Some(&block) if align <= 16 => {
                let pool = slabs.pool(block, slab_pages);
                slabs.take(pool, false)
            }
            _ => Place::Bytes(coalescing_cost(size, align, 0.5)),
        },
        (Policy::AlignedInChunks { .. }, Some(c)) if over_aligned(size, c) => {
            for &block in &CLASS_SIZES[size_class(size)..=c] {
                let pool = slabs.pool(block, 1);
                if let Some(p) = slabs.take_aligned(pool, align) {
                    return p;
                }
            }
            // A new chunk of the size's class: its first block is page aligned.
            let pool = slabs.pool(CLASS_SIZES[size_class(size)], 1);
            let id = slabs.new_slab(pool);
            slabs.take_at(id, 0)
        }
        (
            Policy::OverAlignedToCoalescing {
                align_loss,
                min_align,
            },
            Some(c),
        ) if align >= min_align && over_aligned(size, c) => {
            Place::Bytes(coalescing_cost(size, align, align_loss))
        }
        (policy, Some(c)) => {
            let pool = slabs.pool(CLASS_SIZES[c], 1);
            slabs.take(pool, matches!(policy, Policy::AlignedInChunks { .. }))
        }
    }
}

/// The name of a model row's stream.
fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Mix(Mix::RandomAlign) => "random-align",
        Stream::Mix(Mix::Kernel) => "kernel-mix",
        Stream::Mix(Mix::Small) => "small-churn",
        Stream::Mix(Mix::TalcLike) | Stream::TalcLike => "talc-like",
    }
}

/// The model table for `--model`: each policy on the random-alignment, kernel-mix and
/// talc-like streams, seeds 1 and 2, in `budget` bytes.
pub fn table(budget: usize, max_calls: usize) -> String {
    const RA: Stream = Stream::Mix(Mix::RandomAlign);
    const KM: Stream = Stream::Mix(Mix::Kernel);
    let rows: [(&str, Stream, Policy); 11] = [
        (
            "today's routing; coalescing loses 1/2 an alignment",
            RA,
            Policy::Today { align_loss: 0.5 },
        ),
        (
            "over-aligned: any aligned block in any chunk (ideal search)",
            RA,
            Policy::AlignedInChunks { align_loss: 0.5 },
        ),
        (
            "over-aligned to coalescing, losing 1/2 an alignment",
            RA,
            Policy::OverAlignedToCoalescing {
                align_loss: 0.5,
                min_align: 16,
            },
        ),
        (
            "over-aligned to coalescing, losing 1/4 of an alignment",
            RA,
            Policy::OverAlignedToCoalescing {
                align_loss: 0.25,
                min_align: 16,
            },
        ),
        (
            "over-aligned to 1 KiB or more to coalescing, losing 1/4",
            RA,
            Policy::OverAlignedToCoalescing {
                align_loss: 0.25,
                min_align: 1024,
            },
        ),
        (
            "over-aligned to coalescing, losing nothing",
            RA,
            Policy::OverAlignedToCoalescing {
                align_loss: 0.0,
                min_align: 16,
            },
        ),
        (
            "today's routing (coalescing never fragments)",
            KM,
            Policy::Today { align_loss: 0.5 },
        ),
        (
            "1–4 KiB in merge-free classes, 2-page slabs",
            KM,
            Policy::MidSlabs { slab_pages: 2 },
        ),
        (
            "1–4 KiB in merge-free classes, 4-page slabs",
            KM,
            Policy::MidSlabs { slab_pages: 4 },
        ),
        (
            "1–4 KiB in merge-free classes, 8-page slabs",
            KM,
            Policy::MidSlabs { slab_pages: 8 },
        ),
        (
            "today's routing (coalescing never fragments; a resize reuses its old bytes)",
            Stream::TalcLike,
            Policy::Today { align_loss: 0.5 },
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "placement models: peak live requested bytes / {:.2} MiB budget (seeds 1 and 2), share of allocations to the coalescing allocator\n",
        budget as f64 / (1 << 20) as f64
    );
    let _ = writeln!(
        out,
        "| stream | policy | seed 1 | seed 2 | to coalescing |\n| --- | --- | ---: | ---: | ---: |"
    );
    for (name, stream, policy) in rows {
        let a = run(policy, stream.open(1), budget, max_calls);
        let b = run(policy, stream.open(2), budget, max_calls);
        let stream = stream_name(stream);
        let _ = writeln!(
            out,
            "| {stream} | {name} | {:.1}% | {:.1}% | {:.1}% |",
            100.0 * a.efficiency,
            100.0 * b.efficiency,
            100.0 * a.coalescing_share
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slab bookkeeping: blocks taken are distinct, aligned ones sit at aligned offsets, and a
    /// slab's pages are counted until its last block comes back.
    #[test]
    fn slabs_hand_out_distinct_aligned_blocks_and_release_empty_slabs() {
        let mut s = Slabs::default();
        let pool = s.pool(16, 1);
        let taken: Vec<Place> = (0..256).map(|_| s.take(pool, true)).collect();
        assert_eq!(s.pages, 1, "256 blocks of 16 bytes fill exactly one page");
        let mut seen = std::collections::HashSet::new();
        for p in &taken {
            assert!(seen.insert(*p), "block {p:?} handed out twice");
        }
        // Sparing aligned blocks: the page-aligned block 0 is the last one taken.
        assert_eq!(taken[255], Place::Slab { slab: 0, index: 0 });
        for p in &taken {
            let Place::Slab { slab, index } = *p else {
                unreachable!()
            };
            s.give(slab, index);
        }
        assert_eq!(s.pages, 0, "an empty slab is released");
        // Aligned takes: every one at a multiple of 1024 (4 per page of 16-byte blocks), found
        // though other blocks of the slab are taken (the least aligned ones first).
        for _ in 0..4 {
            s.take(pool, true);
        }
        let mut aligned = 0;
        while let Some(Place::Slab { index, .. }) = s.take_aligned(pool, 1024) {
            assert_eq!(index * 16 % 1024, 0);
            aligned += 1;
        }
        assert_eq!(
            aligned, 4,
            "a page of 16-byte blocks has four 1024-aligned ones"
        );
    }

    #[test]
    fn coalescing_cost_rounds_adds_the_header_and_the_alignment_loss() {
        assert_eq!(coalescing_cost(1, 8, 0.5), 32);
        assert_eq!(coalescing_cost(1100, 8, 0.5), 1104 + 16);
        assert_eq!(coalescing_cost(100, 4096, 0.25), 112 + 16 + 1024);
        assert_eq!(coalescing_cost(64 * 1024, 8, 0.5), 17 * PAGE);
    }

    /// A short model run frees, resizes and places consistently (no slot placed twice, no free
    /// of an empty slot: `run` would panic), stops inside the budget, and the policies route as
    /// they say: the one that sends the 1–4 KiB requests the classes reject to slabs sends fewer
    /// to the coalescing allocator, the one that sends over-aligned requests there more.
    #[test]
    fn model_runs_stay_in_budget_and_route_as_their_policy_says() {
        let budget = 1 << 20;
        let run7 = |policy, stream: Stream| run(policy, stream.open(7), budget, 200_000);
        for policy in [
            Policy::Today { align_loss: 0.5 },
            Policy::AlignedInChunks { align_loss: 0.5 },
            Policy::OverAlignedToCoalescing {
                align_loss: 0.25,
                min_align: 16,
            },
            Policy::MidSlabs { slab_pages: 4 },
        ] {
            for stream in [
                Stream::Mix(Mix::RandomAlign),
                Stream::Mix(Mix::Kernel),
                Stream::TalcLike,
            ] {
                let r = run7(policy, stream);
                assert!(
                    r.efficiency > 0.0 && r.efficiency <= 1.0,
                    "{policy:?} {stream:?}: {r:?}"
                );
                assert!(
                    r.calls < 200_000,
                    "{policy:?} {stream:?} never filled the budget"
                );
            }
        }
        let today = Policy::Today { align_loss: 0.5 };
        let kernel = Stream::Mix(Mix::Kernel);
        let slabs = run7(Policy::MidSlabs { slab_pages: 4 }, kernel);
        assert!(slabs.coalescing_share < run7(today, kernel).coalescing_share);
        let aligned = Stream::Mix(Mix::RandomAlign);
        let over = Policy::OverAlignedToCoalescing {
            align_loss: 0.5,
            min_align: 16,
        };
        assert!(run7(over, aligned).coalescing_share > run7(today, aligned).coalescing_share);
    }
}
