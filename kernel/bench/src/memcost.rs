//! What the layers below the heap cost: the frame allocator, the page mapper, the heap window.
//!
//! Each operation runs `iterations` times between one pair of counter reads, and is reported as
//! cycles per operation and as a ratio to one plain frame pop (the cheapest thing the memory layer
//! does). Every operation goes through the memory layer's public functions, so it includes what
//! a caller in the kernel pays: taking the memory lock with interrupts disabled, and, for the page
//! mapper, the TLB flush of `invlpg`.
//!
//! * **frame pop** / **frame push**: `iterations` frames allocated in a row, then freed in a row
//!   (so the pops come partly from the free stack, partly from the never-used cursor).
//! * **frame alloc+free**: one frame allocated and freed again, `iterations` times (always the top
//!   of the free stack).
//! * **map+unmap one page**: one page of the memory layer's scratch area mapped to a frame and
//!   unmapped again, twice: with a neighbouring scratch page kept mapped, so its page table stays
//!   and only the leaf entry and its `invlpg` are timed; and alone, where the mapper also creates
//!   (zeroed) and frees the page table and page directory on every round.
//! * **heap window map_pages(1)+unmap_pages(1)**: the heap's page source, i.e. window range
//!   allocation + frame allocation + mapping, and the reverse; and the same for a run of 16
//!   pages in one call each way (**map_pages(16)+unmap_pages(16)**).

use alloc::vec::Vec;
use core::fmt;

use kernel::memory::{self, KernelPageSource, bench_support};
use kheap::source::{PageSource, PageSourceError};
use kheap_workload::tsc::stamp;
use x86_64::structures::paging::PhysFrame;

/// Why a measurement could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemCostError {
    /// The frame allocator ran out of frames.
    OutOfFrames,
    /// The page mapper refused a mapping.
    Map(memory::MapError),
    /// The page mapper refused an unmapping.
    Unmap(memory::UnmapError),
    /// The neighbouring scratch page (which keeps the page table alive) could not be mapped.
    Scratch(memory::MapError),
    /// The heap window's page source refused a page.
    Window(PageSourceError),
}

impl fmt::Display for MemCostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("out of physical frames"),
            Self::Map(e) => write!(f, "page mapper: map: {e}"),
            Self::Unmap(e) => write!(f, "page mapper: unmap: {e}"),
            Self::Scratch(e) => write!(f, "scratch page: {e}"),
            Self::Window(e) => write!(f, "heap window: {e}"),
        }
    }
}

/// One measured operation.
#[derive(Debug, Clone, Copy)]
pub struct CostRow {
    /// What was measured.
    pub name: &'static str,
    /// How many times.
    pub ops: usize,
    /// Cycles for all of them.
    pub cycles: u64,
}

impl CostRow {
    /// Cycles per operation.
    pub fn per_op(&self) -> f64 {
        self.cycles as f64 / self.ops.max(1) as f64
    }
}

/// Every measured operation; the first row is the frame pop the others are compared with.
#[derive(Debug, Clone, Default)]
pub struct MemCosts {
    /// The rows in report order.
    pub rows: Vec<CostRow>,
}

/// Scratch page kept mapped next to the timed one (page 0), so that timing page 0 does not also
/// time the creation and removal of its page table.
const NEIGHBOUR: u64 = 1;

/// Pages of the consecutive run the heap-window rows map and unmap in one call each.
const RUN_PAGES: usize = 16;

/// Times `f` run `n` times as one measurement, after one untimed run (which lets QEMU translate
/// the code, and brings it and its data into the caches).
fn time<E>(n: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<u64, E> {
    f()?;
    let start = stamp();
    for _ in 0..n {
        f()?;
    }
    let end = stamp();
    Ok(end.wrapping_sub(start))
}

/// Measures every operation `iterations` times.
pub fn measure(iterations: usize) -> Result<MemCosts, MemCostError> {
    let n = iterations.max(1);
    let mut costs = MemCosts::default();
    let mut push = |name, cycles| {
        costs.rows.push(CostRow {
            name,
            ops: n,
            cycles,
        })
    };

    // Frame pop, then frame push, of the same `n` frames. One round of the pair first, untimed,
    // for the same reason as in `time`.
    let warm = memory::allocate_frame().ok_or(MemCostError::OutOfFrames)?;
    // SAFETY: the frame was just allocated and nothing refers to it.
    unsafe { memory::deallocate_frame(warm) };
    let mut frames = Vec::with_capacity(n);
    let start = stamp();
    for _ in 0..n {
        match memory::allocate_frame() {
            Some(frame) => frames.push(frame),
            None => break,
        }
    }
    let popped = stamp().wrapping_sub(start);
    if frames.len() < n {
        free_all(&mut frames);
        return Err(MemCostError::OutOfFrames);
    }
    let start = stamp();
    free_all(&mut frames);
    let pushed = stamp().wrapping_sub(start);
    push("frame pop (alloc)", popped);
    push("frame push (free)", pushed);

    // Alloc + free of one frame.
    let pair = time(n, || {
        let frame = memory::allocate_frame().ok_or(MemCostError::OutOfFrames)?;
        // SAFETY: the frame was just allocated and nothing else refers to it.
        unsafe { memory::deallocate_frame(frame) };
        Ok(())
    })?;
    push("frame alloc+free", pair);

    // Map + unmap of one page through the page mapper: first with a neighbouring scratch page
    // mapped, so the page table stays (the leaf entry and the `invlpg`), then alone, so every
    // round also allocates, zeroes and frees the page table and page directory it needs.
    let page = bench_support::nth_scratch_page(0).expect("the scratch area has a page 0");
    let frame = memory::allocate_frame().ok_or(MemCostError::OutOfFrames)?;
    let mut map_unmap = || -> Result<(), MemCostError> {
        // SAFETY: the scratch page is reserved for benchmarks and unmapped between rounds;
        // `frame` is owned here and mapped at most once at a time.
        unsafe {
            memory::map(page, frame, bench_support::SCRATCH_FLAGS).map_err(MemCostError::Map)?;
            memory::unmap(page).map_err(MemCostError::Unmap)?;
        }
        Ok(())
    };
    let leaf = match bench_support::map_scratch(NEIGHBOUR) {
        Ok(_) => {
            let cycles = time(n, &mut map_unmap);
            // SAFETY: the neighbour was mapped by `map_scratch` just above and nothing uses it.
            let unmapped = unsafe { bench_support::unmap_scratch(NEIGHBOUR) };
            debug_assert!(unmapped.is_ok(), "scratch neighbour vanished: {unmapped:?}");
            cycles.map_err(|e| (e, true))
        }
        Err(e) => Err((MemCostError::Scratch(e), false)),
    };
    let cold = leaf.is_ok().then(|| time(n, &mut map_unmap));
    // SAFETY: the frame is not mapped any more (every round unmapped it, or the map failed and
    // left it unmapped) and nothing refers to it.
    unsafe { memory::deallocate_frame(frame) };
    let leaf = leaf.map_err(|(e, _)| e)?;
    push("map+unmap one page (page mapper, table kept)", leaf);
    if let Some(cold) = cold {
        push("map+unmap one page (page mapper, tables too)", cold?);
    }

    // Heap window page source.
    let mut source = KernelPageSource;
    let window = time(n, || {
        let ptr = source.map_pages(1).map_err(MemCostError::Window)?;
        // SAFETY: the page was just mapped by this source and nothing refers to it.
        unsafe { source.unmap_pages(ptr, 1) };
        Ok(())
    })?;
    push("heap window map_pages(1)+unmap_pages(1)", window);
    // A run of consecutive pages, as a large-allocator region takes them: one call each way.
    let run = time(n, || {
        let ptr = source.map_pages(RUN_PAGES).map_err(MemCostError::Window)?;
        // SAFETY: the pages were just mapped by this source and nothing refers to them.
        unsafe { source.unmap_pages(ptr, RUN_PAGES) };
        Ok(())
    })?;
    push("heap window map_pages(16)+unmap_pages(16)", run);
    Ok(costs)
}

/// Gives back every frame in `frames`.
fn free_all(frames: &mut Vec<PhysFrame>) {
    for frame in frames.drain(..) {
        // SAFETY: each frame was allocated by `frame_alloc` and is not mapped or referenced.
        unsafe { memory::deallocate_frame(frame) };
    }
}
