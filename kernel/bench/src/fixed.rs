//! Fixed-size objects inside the kernel: a kheap user pool (the `kmem_cache`-style API) against
//! slabmalloc's fixed-size `SCAllocator`, and against the general allocators of kheap and talc,
//! for objects of one layout. Same method as the main table: the same op list for every
//! contestant ([`workload::fixed_size`]: a live set of one size, then random free + alloc pairs),
//! the same page budget from the heap window, a fresh instance per replay, the fastest of
//! [`Sizes::repeats`](super::Sizes) timed replays, and an untimed verifying replay.

use core::alloc::Layout;
use core::ptr::NonNull;

use kheap::source::{PAGE_SIZE, PageSource, PageSourceError};

use kernel::memory::KernelPageSource;
use kernel::serial_println;
use kheap_workload::bench_alloc::{BenchAlloc, CountedSource, KheapPool, PageUse};
use kheap_workload::replay::{self, Slots};

use crate::peers::{Peer, Visit, with_peer};
use crate::{BenchError, SEED, Sizes, workload};
use kheap_workload::bench_alloc::CappedSource;

/// Object layouts measured: a small node, a typical kernel object, a larger struct.
const OBJECTS: [(u32, u8); 3] = [(16, 3), (64, 3), (192, 3)];

/// The contestants, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contestant {
    KheapPool,
    Slabmalloc,
    General(Peer),
}

const ALL: [Contestant; 4] = [
    Contestant::KheapPool,
    Contestant::Slabmalloc,
    Contestant::General(Peer::Kheap),
    Contestant::General(Peer::Talc),
];

impl Contestant {
    const fn name(self) -> &'static str {
        match self {
            Self::KheapPool => "kheap pool",
            Self::Slabmalloc => "slabmalloc",
            Self::General(Peer::Kheap) => "kheap (general)",
            Self::General(p) => p.name(),
        }
    }
}

/// slabmalloc's `SCAllocator` for one layout, refilled one page at a time from a capped
/// heap-window source; its pages are unmapped when it is dropped.
struct SlabAlloc {
    slab: slabmalloc::SCAllocator<'static, slabmalloc::ObjectPage<'static>>,
    source: CappedSource<KernelPageSource>,
    /// Pages handed to the slab, to unmap on drop (slabmalloc keeps them, empty or not).
    pages: alloc::vec::Vec<NonNull<u8>>,
    object: Layout,
}

impl Drop for SlabAlloc {
    fn drop(&mut self) {
        for &page in &self.pages {
            // SAFETY: each page was mapped by `source` for the slab and is used by nothing once
            // the slab is dropped (every block was freed by the replay's teardown, and the slab
            // is not used again).
            unsafe { self.source.unmap_pages(page, 1) };
        }
    }
}

impl BenchAlloc for SlabAlloc {
    // Always inlined into the replay loop, as the general allocators' adapters are: under TCG a
    // call and return cost far more time than their two instructions.
    #[inline(always)]
    fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if layout != self.object {
            return None;
        }
        if let Ok(p) = self.slab.allocate(layout) {
            return Some(p);
        }
        let page = self.source.map_pages(1).ok()?;
        self.pages.push(page);
        // SAFETY: a fresh, page-aligned 4 KiB page, ours alone until the adapter drops it (after
        // the slab is done with it); `refill` writes the page's metadata itself.
        unsafe {
            let page = &mut *page.as_ptr().cast::<slabmalloc::ObjectPage<'static>>();
            self.slab.refill(page);
        }
        self.slab.allocate(layout).ok()
    }

    #[inline(always)]
    unsafe fn free(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // A block it handed out is always accepted (slabmalloc 0.11 never fails a deallocate).
        let _ = self.slab.deallocate(ptr, layout);
    }

    unsafe fn realloc(&mut self, _: NonNull<u8>, _: Layout, _: usize) -> Option<NonNull<u8>> {
        None
    }

    fn pages(&self) -> Option<PageUse> {
        Some(self.source.page_use())
    }
}

/// Runs `v` on a fresh `c` for objects of `object`, with `budget` pages.
fn with_contestant<V: Visit>(
    c: Contestant,
    object: Layout,
    budget: usize,
    v: V,
) -> Result<V::Out, PageSourceError> {
    match c {
        Contestant::General(p) => with_peer(p, KernelPageSource, budget, v),
        Contestant::KheapPool => {
            let source = CappedSource::new(KernelPageSource, budget);
            let mut pool = KheapPool::new(source, object).map_err(|e| match e {
                kheap::PoolError::OutOfPages(cause) => cause,
                _ => PageSourceError::InvalidRequest,
            })?;
            Ok(v.visit(&mut pool))
        }
        Contestant::Slabmalloc => {
            const { assert!(size_of::<slabmalloc::ObjectPage<'static>>() == PAGE_SIZE) };
            Ok(v.visit(&mut SlabAlloc {
                slab: slabmalloc::SCAllocator::new(object.size()),
                source: CappedSource::new(KernelPageSource, budget),
                pages: alloc::vec::Vec::new(),
                object,
            }))
        }
    }
}

/// Best timed replay (cycles, ops) and peak pages, or why there is none.
type Cell = Result<(u64, usize, usize), &'static str>;

/// Measures every contestant on every object layout and prints the table. Returns the first
/// failure: an arena that could not be mapped, or a replay that did not verify.
pub fn run(sizes: &Sizes, live: usize, ops: usize, slots: &mut Slots) -> Result<(), BenchError> {
    struct Timed<'a>(&'a workload::Workload, &'a mut Slots, usize);
    impl Visit for Timed<'_> {
        type Out = (Result<(u64, usize), replay::ReplayError>, usize);
        fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
            let r = crate::time_replay(a, self.0, usize::MAX, self.1);
            (r, a.pages().map_or(self.2, |p| p.peak))
        }
    }
    struct Verify<'a>(&'a workload::Workload, &'a mut Slots);
    impl Visit for Verify<'_> {
        type Out = Result<usize, replay::ReplayError>;
        fn visit<A: BenchAlloc>(self, a: &mut A) -> Self::Out {
            replay::verify(a, self.0, usize::MAX, self.1)
        }
    }

    serial_println!();
    serial_println!(
        "== Fixed-size objects (user pools, kmem_cache-style): cycles per call (ratio to slabmalloc) =="
    );
    serial_println!(
        "{live} live objects of one size, then {ops} calls freeing a random one and allocating a new one"
    );
    serial_println!(
        "{:<18}{:>22}{:>22}{:>22}",
        "contestant",
        "16 B",
        "64 B",
        "192 B"
    );
    let mut cells: [[Cell; OBJECTS.len()]; ALL.len()] =
        [[Err("not run"); OBJECTS.len()]; ALL.len()];
    let mut first_error = None;
    for (k, &(size, align_log2)) in OBJECTS.iter().enumerate() {
        let w = workload::fixed_size("fixed-size", size, align_log2, live, ops, SEED);
        let object = Layout::from_size_align(size as usize, 1 << align_log2)
            .expect("the object layouts are valid");
        for _ in 0..sizes.repeats.max(1) {
            for (c, &contestant) in ALL.iter().enumerate() {
                let (result, peak) = match with_contestant(
                    contestant,
                    object,
                    sizes.budget_pages,
                    Timed(&w, slots, sizes.budget_pages),
                ) {
                    Ok(out) => out,
                    Err(cause) => {
                        cells[c][k] = Err("no memory");
                        first_error.get_or_insert(BenchError::Arena {
                            allocator: contestant.name(),
                            cause,
                        });
                        continue;
                    }
                };
                cells[c][k] = match (result, cells[c][k]) {
                    (Ok((cycles, _)), Ok((best, ..))) if cycles >= best => cells[c][k],
                    (Ok((cycles, n)), _) => Ok((cycles, n, peak)),
                    (Err(_), _) => Err("failed"),
                };
            }
        }
        for (c, &contestant) in ALL.iter().enumerate() {
            let verified =
                with_contestant(contestant, object, sizes.budget_pages, Verify(&w, slots));
            let error = match verified {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => BenchError::Verify {
                    workload: w.name,
                    allocator: contestant.name(),
                    error,
                },
                Err(cause) => BenchError::Arena {
                    allocator: contestant.name(),
                    cause,
                },
            };
            cells[c][k] = Err("NOT VERIFIED");
            first_error.get_or_insert(error);
        }
    }
    let per_op = |cell: &Cell| cell.map(|(cycles, n, _)| cycles as f64 / n.max(1) as f64);
    for (c, &contestant) in ALL.iter().enumerate() {
        let mut line = alloc::string::String::new();
        for k in 0..OBJECTS.len() {
            let text = match (per_op(&cells[c][k]), per_op(&cells[1][k]), cells[c][k]) {
                (Ok(x), Ok(slab), Ok((.., peak))) => {
                    alloc::format!("{x:.1} ({:.2}x) {peak:>4}p", x / slab)
                }
                (Ok(x), _, _) => alloc::format!("{x:.1}"),
                (Err(e), ..) => e.into(),
            };
            line.push_str(&alloc::format!("{text:>22}"));
        }
        serial_println!("{:<18}{line}", contestant.name());
    }
    serial_println!(
        "(p: most pages held; every contestant but talc takes its pages from the heap window on \
         demand; talc gets its arena up front)"
    );
    first_error.map_or(Ok(()), Err)
}
