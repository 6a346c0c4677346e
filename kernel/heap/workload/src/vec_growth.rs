//! The cache-aliasing pattern: many `Vec<u64>`-like buffers growing round-robin, one push each in
//! turn, the way a program fills a thousand vectors at once.
//!
//! A push writes one `u64` at the end of its buffer; a full buffer grows like `Vec<u64>`: the
//! first push allocates room for 4 elements, and each growth `realloc`s to twice the capacity. So
//! the buffers pass through every size class up to their final capacity (10 000 elements end at
//! 16 384, 128 KiB), and the pushes go to a thousand places in memory at once: if the allocator
//! puts every large buffer at the same offset within a page, those stores all fall into the same
//! cache sets and evict each other.
//!
//! The figure is time per push (the reallocs included); the buffers are freed untimed. The
//! verifying run writes and checks the same values: element `i` of buffer `v` holds
//! [`value`]`(v, i)`, checked after every growth (the moved prefix) and before the free.

use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use crate::bench_alloc::BenchAlloc;
use crate::replay::ReplayError;

/// The shape of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VecGrowth {
    /// Buffers growing side by side.
    pub vectors: usize,
    /// Elements pushed onto each.
    pub elements: usize,
}

impl VecGrowth {
    /// The pattern as issue 13 describes it: 1000 buffers of `u64` grown to 10 000 elements.
    pub const FULL: Self = Self {
        vectors: 1000,
        elements: 10_000,
    };

    /// Pushes in one run.
    pub const fn pushes(&self) -> usize {
        self.vectors * self.elements
    }

    /// Bytes every buffer ends with (its final capacity).
    pub const fn final_bytes(&self) -> usize {
        capacity_for(self.elements) * 8
    }
}

/// The capacity a `Vec<u64>` has after `n` pushes (n > 0): 4, then doubling.
const fn capacity_for(n: usize) -> usize {
    let mut cap = 4;
    while cap < n {
        cap *= 2;
    }
    cap
}

/// The value element `i` of buffer `v` holds.
#[inline(always)]
pub const fn value(v: usize, i: usize) -> u64 {
    ((v as u64) << 32) | i as u64
}

/// One growing buffer.
#[derive(Debug, Clone, Copy)]
struct Buf {
    ptr: Option<NonNull<u64>>,
    cap: usize,
    len: usize,
}

/// The buffers of one run (kept between runs to keep allocation out of the timed loop).
#[derive(Debug, Default)]
pub struct Buffers {
    bufs: Vec<Buf>,
}

/// The layout of a buffer of `cap` elements.
fn layout_of(cap: usize) -> Layout {
    Layout::array::<u64>(cap).unwrap_or(Layout::new::<u64>())
}

impl Buffers {
    /// Room for the buffers of `shape`, so that no run allocates its table while it is timed.
    pub fn new(shape: VecGrowth) -> Self {
        Self {
            bufs: Vec::with_capacity(shape.vectors),
        }
    }

    /// Runs the pushes of `shape` on `a` from empty buffers; with `VERIFY`, checks alignment and
    /// every kept element after each growth. On a refused growth the buffers stay as they are
    /// (free them with [`free_all`](Self::free_all)).
    #[inline(never)]
    pub fn push_all<A: BenchAlloc, const VERIFY: bool>(
        &mut self,
        a: &mut A,
        shape: VecGrowth,
    ) -> Result<(), ReplayError> {
        self.bufs.clear();
        self.bufs.resize(
            shape.vectors,
            Buf {
                ptr: None,
                cap: 0,
                len: 0,
            },
        );
        for i in 0..shape.elements {
            for (v, b) in self.bufs.iter_mut().enumerate() {
                if b.len == b.cap {
                    grow::<A, VERIFY>(a, b, v, i)?;
                }
                let Some(p) = b.ptr else { continue };
                // SAFETY: `len < cap`, so the element lies inside the live block of `cap`
                // elements, which the benchmark owns.
                unsafe { p.add(b.len).write(value(v, i)) };
                b.len += 1;
            }
        }
        Ok(())
    }

    /// Frees every buffer; with `VERIFY`, checks every element first (and returns the first
    /// wrong one, after freeing everything).
    pub fn free_all<A: BenchAlloc, const VERIFY: bool>(
        &mut self,
        a: &mut A,
    ) -> Result<(), ReplayError> {
        let mut result = Ok(());
        for (v, b) in self.bufs.iter_mut().enumerate() {
            let Some(p) = b.ptr.take() else { continue };
            if VERIFY && result.is_ok() {
                result = check(p, v, b.len, b.cap);
            }
            // SAFETY: a live block of `a` with exactly this layout, freed once (`take` above).
            unsafe { a.free(p.cast(), layout_of(b.cap)) };
        }
        result
    }
}

/// Grows buffer `v` (full, with `i` elements) to twice its capacity, or to 4 elements.
#[cold]
fn grow<A: BenchAlloc, const VERIFY: bool>(
    a: &mut A,
    b: &mut Buf,
    v: usize,
    i: usize,
) -> Result<(), ReplayError> {
    let new_cap = if b.cap == 0 { 4 } else { b.cap * 2 };
    let new_layout = layout_of(new_cap);
    let oom = ReplayError::OutOfMemory {
        op: i,
        setup: false,
        size: new_layout.size(),
        align: new_layout.align(),
    };
    let new = match b.ptr {
        None => a.alloc(new_layout).ok_or(oom)?,
        Some(p) => {
            // SAFETY: a live block of `a` with the layout of `b.cap` elements; the new size is
            // non-zero and small.
            unsafe { a.realloc(p.cast(), layout_of(b.cap), new_layout.size()) }.ok_or(oom)?
        }
    };
    b.ptr = Some(new.cast());
    b.cap = new_cap;
    if VERIFY {
        if !new.addr().get().is_multiple_of(8) {
            return Err(ReplayError::Misaligned {
                addr: new.addr().get(),
                align: 8,
            });
        }
        check(new.cast(), v, b.len, new_cap)?;
    }
    Ok(())
}

/// Checks the first `len` elements of buffer `v` at `p` (of `cap` elements).
fn check(p: NonNull<u64>, v: usize, len: usize, cap: usize) -> Result<(), ReplayError> {
    for i in 0..len {
        // SAFETY: `i < len <= cap`: an element the run has written.
        if unsafe { p.add(i).read() } != value(v, i) {
            return Err(ReplayError::Corrupted {
                addr: p.addr().get(),
                offset: i * 8,
                size: cap * 8,
            });
        }
    }
    Ok(())
}
