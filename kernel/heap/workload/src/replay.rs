//! The one replay loop both benchmarks run a [`Workload`] with, timed or verifying.
//!
//! A replay walks the ops over a slot table ([`Slots`]): an allocation fills its slot, a free
//! empties it, a realloc resizes the block in it. The same [`step`] serves every pass; its
//! `VERIFY` parameter is a constant, so the timed loop compiles to the allocator calls and the
//! table updates alone (only the allocator writes to memory), while the verifying loop also
//!
//! * patterns every block when it is allocated and checks the pattern before it is freed or
//!   resized ([`pattern`]); a realloc must keep the common prefix;
//! * checks that every block honours its alignment and overlaps no other live block (an
//!   address-ordered map of the live ranges).
//!
//! Passes: [`verify`] (untimed, everything checked), [`timed`] (the body between two readings of
//! a clock the benchmark chooses: thread CPU time on the host, the TSC in the kernel),
//! [`latencies`] (every call of the body bracketed by [`stamp`], allocations,
//! frees and reallocs apart) and [`efficiency`] (an endless [`GrowthStream`] until the first
//! refused request, verified as it goes). Whatever is live at the end of a pass is freed by
//! [`Slots::teardown`], in address order (so allocators with address-ordered free lists, like
//! linked_list_allocator, tear down in linear time).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::bench_alloc::BenchAlloc;
use crate::pattern;
use crate::tsc::stamp;
use crate::{GrowthStream, Op, Workload};

/// Ops between two looks at a replay's budget (a clock read is not free).
const BUDGET_CHUNK: usize = 256;

/// Why a replay stopped or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The allocator refused a request.
    OutOfMemory {
        /// Index of the op in its phase.
        op: usize,
        /// Whether it was in the untimed setup.
        setup: bool,
        /// Requested size.
        size: usize,
        /// Requested alignment.
        align: usize,
    },
    /// A block is not aligned as requested.
    Misaligned {
        /// The block's address.
        addr: usize,
        /// The requested alignment.
        align: usize,
    },
    /// A block's pattern changed while the benchmark did not write it: the allocator handed out
    /// overlapping memory, wrote into a live block, or a realloc lost contents.
    Corrupted {
        /// The block's address.
        addr: usize,
        /// Offset of the first wrong byte.
        offset: usize,
        /// The block's size.
        size: usize,
    },
    /// A new block overlaps a live one.
    Overlap {
        /// The new block's address.
        addr: usize,
        /// Its size.
        size: usize,
        /// The live block's address.
        other: usize,
        /// The live block's end.
        other_end: usize,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfMemory {
                op,
                setup,
                size,
                align,
            } => {
                let phase = if setup { "setup op" } else { "op" };
                write!(
                    f,
                    "out of memory at {phase} {op} ({size} bytes, align {align})"
                )
            }
            Self::Misaligned { addr, align } => {
                write!(f, "block {addr:#x} is not aligned to {align}")
            }
            Self::Corrupted { addr, offset, size } => write!(
                f,
                "block {addr:#x} ({size} bytes) corrupted at offset {offset}"
            ),
            Self::Overlap {
                addr,
                size,
                other,
                other_end,
            } => write!(
                f,
                "block [{addr:#x}, {:#x}) overlaps the live block [{other:#x}, {other_end:#x})",
                addr + size
            ),
        }
    }
}

/// The layout of a workload request: sizes below 4 GiB and alignments up to a page, always valid.
#[inline(always)]
pub fn layout(size: u32, align_log2: u8) -> Layout {
    Layout::from_size_align(size as usize, 1 << align_log2).unwrap_or(Layout::new::<u8>())
}

/// The replay's view of one slot: the live block it holds, if any.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ptr: Option<NonNull<u8>>,
    size: u32,
    align_log2: u8,
    /// Pattern tag (verifying passes only). 32 bits keep a slot at 16 bytes, as small as the
    /// timed loop's table can be.
    tag: u32,
}

impl Slot {
    const EMPTY: Self = Self {
        ptr: None,
        size: 0,
        align_log2: 0,
        tag: 0,
    };

    fn layout(&self) -> Layout {
        layout(self.size, self.align_log2)
    }
}

/// The slot table of a replay, reused between replays to keep allocation out of them.
#[derive(Debug, Default)]
pub struct Slots {
    slots: Vec<Slot>,
    next_tag: u32,
    /// Live ranges, start → end (verifying passes only).
    ranges: BTreeMap<usize, usize>,
}

/// Where an op sits in its workload, for error reports.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// Index in its phase.
    pub index: usize,
    /// In the untimed setup.
    pub setup: bool,
}

impl Slots {
    /// Empties the table and sizes it for `n` slots.
    pub fn reset(&mut self, n: usize) {
        self.slots.clear();
        self.slots.resize(n, Slot::EMPTY);
        self.ranges.clear();
    }

    /// Makes room for slot `slot` (for streams, whose slot count is not known up front).
    pub fn grow_to(&mut self, slot: usize) {
        if slot >= self.slots.len() {
            self.slots.resize(slot + 1, Slot::EMPTY);
        }
    }

    /// Live blocks: how many, and their requested bytes.
    pub fn live(&self) -> (usize, usize) {
        self.slots
            .iter()
            .filter(|s| s.ptr.is_some())
            .fold((0, 0), |(n, b), s| (n + 1, b + s.size as usize))
    }

    fn fresh_tag(&mut self) -> u32 {
        self.next_tag = self.next_tag.wrapping_add(1);
        self.next_tag
    }

    /// Records a new live block (verifying passes): alignment and overlap checks.
    fn insert_range(
        &mut self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
    ) -> Result<(), ReplayError> {
        let (start, end) = (ptr.addr().get(), ptr.addr().get() + size);
        if !start.is_multiple_of(align) {
            return Err(ReplayError::Misaligned { addr: start, align });
        }
        // The live block with the highest start below `end` is the only one that can overlap
        // without another one overlapping too.
        if let Some((&s, &e)) = self.ranges.range(..end).next_back()
            && e > start
        {
            return Err(ReplayError::Overlap {
                addr: start,
                size,
                other: s,
                other_end: e,
            });
        }
        self.ranges.insert(start, end);
        Ok(())
    }

    /// Frees every block still live, in address order; with `VERIFY`, checks each first (and
    /// returns the first corruption, after freeing everything).
    pub fn teardown<A: BenchAlloc, const VERIFY: bool>(
        &mut self,
        a: &mut A,
    ) -> Result<(), ReplayError> {
        let mut live: Vec<Slot> = self
            .slots
            .iter()
            .filter(|s| s.ptr.is_some())
            .copied()
            .collect();
        live.sort_unstable_by_key(|s| s.ptr.map_or(0, |p| p.addr().get()));
        self.slots.iter_mut().for_each(|s| *s = Slot::EMPTY);
        self.ranges.clear();
        let mut result = Ok(());
        for s in &live {
            let Some(ptr) = s.ptr else { continue };
            if VERIFY && result.is_ok() {
                result = check(s, ptr, s.size as usize);
            }
            // SAFETY: the slot held a live block of `a` with this layout; the table was cleared,
            // so each block is freed exactly once.
            unsafe { a.free(ptr, s.layout()) };
        }
        result
    }
}

/// Checks the first `len` bytes of the block of `s`.
fn check(s: &Slot, ptr: NonNull<u8>, len: usize) -> Result<(), ReplayError> {
    // SAFETY: the block is live with at least `len` bytes, all patterned by the verifying pass.
    match unsafe { pattern::check(ptr, len, s.tag.into()) } {
        None => Ok(()),
        Some(offset) => Err(ReplayError::Corrupted {
            addr: ptr.addr().get(),
            offset,
            size: s.size as usize,
        }),
    }
}

/// Performs `op` on `a`, updating the table; with `VERIFY`, patterns and checks (see the module
/// documentation).
#[inline(always)]
pub fn step<A: BenchAlloc, const VERIFY: bool>(
    a: &mut A,
    table: &mut Slots,
    at: At,
    op: Op,
) -> Result<(), ReplayError> {
    match op {
        Op::Alloc {
            slot,
            size,
            align_log2,
        } => {
            let l = layout(size, align_log2);
            let ptr = a.alloc(l).ok_or(ReplayError::OutOfMemory {
                op: at.index,
                setup: at.setup,
                size: l.size(),
                align: l.align(),
            })?;
            let tag = if VERIFY { table.fresh_tag() } else { 0 };
            table.slots[slot as usize] = Slot {
                ptr: Some(ptr),
                size,
                align_log2,
                tag,
            };
            if VERIFY {
                table.insert_range(ptr, l.size(), l.align())?;
                // SAFETY: a fresh block of `size` bytes, owned by the replay.
                unsafe { pattern::fill(ptr, 0, size as usize, tag.into()) };
            }
        }
        Op::Free { slot } => {
            let s = core::mem::replace(&mut table.slots[slot as usize], Slot::EMPTY);
            if let Some(ptr) = s.ptr {
                if VERIFY {
                    check(&s, ptr, s.size as usize)?;
                    table.ranges.remove(&ptr.addr().get());
                }
                // SAFETY: the slot held a live block of `a`, allocated (or last reallocated) with
                // exactly this layout; the slot is emptied, so it is freed once.
                unsafe { a.free(ptr, s.layout()) };
            }
        }
        Op::Realloc { slot, new_size } => {
            let s = table.slots[slot as usize];
            if let Some(ptr) = s.ptr {
                if VERIFY {
                    check(&s, ptr, s.size as usize)?;
                }
                // SAFETY: the slot holds a live block of `a` with this layout, `new_size` is
                // non-zero and far below `isize::MAX` (it is a `u32`).
                let new = unsafe { a.realloc(ptr, s.layout(), new_size as usize) }.ok_or(
                    ReplayError::OutOfMemory {
                        op: at.index,
                        setup: at.setup,
                        size: new_size as usize,
                        align: 1 << s.align_log2,
                    },
                )?;
                let slot = &mut table.slots[slot as usize];
                slot.ptr = Some(new);
                slot.size = new_size;
                if VERIFY {
                    let moved = *slot;
                    table.ranges.remove(&ptr.addr().get());
                    table.insert_range(new, new_size as usize, 1 << s.align_log2)?;
                    let kept = (s.size).min(new_size) as usize;
                    check(&moved, new, kept)?;
                    // SAFETY: the block is live with `new_size` bytes.
                    unsafe { pattern::fill(new, kept, new_size as usize, moved.tag.into()) };
                }
            }
        }
    }
    Ok(())
}

/// Runs `ops` in order, asking `over_budget` every few hundred ops whether to stop; returns
/// how many ran (all of them, or fewer when the budget said stop), or the first failure.
#[inline(always)]
pub fn run<A: BenchAlloc, const VERIFY: bool>(
    a: &mut A,
    table: &mut Slots,
    ops: &[Op],
    setup: bool,
    mut over_budget: impl FnMut() -> bool,
) -> Result<usize, ReplayError> {
    for (c, chunk) in ops.chunks(BUDGET_CHUNK).enumerate() {
        for (i, &op) in chunk.iter().enumerate() {
            let at = At {
                index: c * BUDGET_CHUNK + i,
                setup,
            };
            step::<A, VERIFY>(a, table, at, op)?;
        }
        if over_budget() {
            return Ok(((c + 1) * BUDGET_CHUNK).min(ops.len()));
        }
    }
    Ok(ops.len())
}

/// Never over budget.
pub const fn unlimited() -> bool {
    false
}

/// Replays the setup and the first `limit` body ops of `w` on `a` with every block patterned and
/// checked, then checks and frees what is left. Returns how many ops were checked.
pub fn verify<A: BenchAlloc>(
    a: &mut A,
    w: &Workload,
    limit: usize,
    table: &mut Slots,
) -> Result<usize, ReplayError> {
    table.reset(w.slots);
    let body = &w.ops[..limit.min(w.ops.len())];
    let result = run::<A, true>(a, table, &w.setup, true, unlimited)
        .and_then(|n| Ok(n + run::<A, true>(a, table, body, false, unlimited)?));
    let end = table.teardown::<A, true>(a);
    let n = result?;
    end.map(|()| n)
}

/// A timed replay's readings; the blocks still live are in the table (the caller reads the
/// allocator's memory, then calls [`Slots::teardown`]).
#[derive(Debug, Clone, Copy)]
pub struct Timed<T> {
    /// Clock before the body.
    pub start: T,
    /// Clock after it.
    pub end: T,
    /// Body ops that ran.
    pub ops: usize,
    /// Why the body stopped early, if it did for lack of memory.
    pub stopped: Option<ReplayError>,
}

/// Replays `w` on `a`: the setup untimed, then the first `limit` body ops between two readings of
/// `clock` (asking `over_budget` every few hundred ops whether to stop). A setup that fails is an
/// error (nothing was timed); a body that runs out of memory is reported in
/// [`Timed::stopped`]. Leaves the blocks live in `table`.
pub fn timed<A: BenchAlloc, T>(
    a: &mut A,
    w: &Workload,
    limit: usize,
    table: &mut Slots,
    over_budget: impl FnMut() -> bool,
    mut clock: impl FnMut() -> T,
) -> Result<Timed<T>, ReplayError> {
    table.reset(w.slots);
    run::<A, false>(a, table, &w.setup, true, unlimited)?;
    let body = &w.ops[..limit.min(w.ops.len())];
    let start = clock();
    let result = run::<A, false>(a, table, body, false, over_budget);
    let end = clock();
    let (ops, stopped) = match result {
        Ok(n) => (n, None),
        Err(e) => match e {
            ReplayError::OutOfMemory { op, .. } => (op, Some(e)),
            _ => (0, Some(e)),
        },
    };
    Ok(Timed {
        start,
        end,
        ops,
        stopped,
    })
}

/// Single-call latencies of one replay, raw counter ticks (the bracket's own cost included).
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Allocation calls.
    pub alloc: Vec<u64>,
    /// Free calls.
    pub free: Vec<u64>,
    /// Realloc calls.
    pub realloc: Vec<u64>,
    /// The budget cut the replay short.
    pub capped: bool,
    /// The replay stopped at a refused request.
    pub failed: Option<ReplayError>,
}

impl Latencies {
    /// Empties the sample lists, keeping their memory.
    pub fn clear(&mut self) {
        self.alloc.clear();
        self.free.clear();
        self.realloc.clear();
        self.capped = false;
        self.failed = None;
    }
}

/// Replays `w`'s body on `a` timing every call on its own with [`stamp`] (the setup untimed),
/// into `out` (cleared first); stops early when `over_budget` says so (asked every few hundred
/// ops). Everything live at the end is freed.
pub fn latencies<A: BenchAlloc>(
    a: &mut A,
    w: &Workload,
    table: &mut Slots,
    mut over_budget: impl FnMut() -> bool,
    out: &mut Latencies,
) {
    out.clear();
    table.reset(w.slots);
    if let Err(e) = run::<A, false>(a, table, &w.setup, true, unlimited) {
        out.failed = Some(e);
    } else {
        for (index, &op) in w.ops.iter().enumerate() {
            let at = At {
                index,
                setup: false,
            };
            // One bracket per kind of call, so that inside it the compiler knows which kind `step`
            // performs (the dispatch on the op stays outside the timed code).
            let (r, samples) = match op {
                Op::Alloc { .. } => (timed_step(a, table, at, op), &mut out.alloc),
                Op::Free { .. } => (timed_step(a, table, at, op), &mut out.free),
                Op::Realloc { .. } => (timed_step(a, table, at, op), &mut out.realloc),
            };
            match r {
                Ok(dt) => samples.push(dt),
                Err(e) => {
                    out.failed = Some(e);
                    break;
                }
            }
            if index % BUDGET_CHUNK == BUDGET_CHUNK - 1 && over_budget() {
                out.capped = true;
                break;
            }
        }
    }
    // The timed pass does not look at contents, so the teardown cannot fail.
    let _ = table.teardown::<A, false>(a);
}

/// The body of `w` called one op at a time as in [`latencies`], with `probe` read before and
/// after every call, outside the bracket: `record(op, ticks, moved, before, after)` sees each
/// call (`moved`: a realloc returned another address), for finding out what the slow ones did
/// (pages mapped, chunks made, blocks moved). Stops at the first refused request and returns it.
///
/// # Errors
///
/// The first request the allocator refused, in the setup or the body.
pub fn attributed<A: BenchAlloc, P>(
    a: &mut A,
    w: &Workload,
    table: &mut Slots,
    mut probe: impl FnMut(&A) -> P,
    mut record: impl FnMut(Op, u64, bool, P, P),
) -> Result<(), ReplayError> {
    table.reset(w.slots);
    let mut result = run::<A, false>(a, table, &w.setup, true, unlimited).map(|_| ());
    if result.is_ok() {
        for (index, &op) in w.ops.iter().enumerate() {
            let at = At {
                index,
                setup: false,
            };
            let before = probe(a);
            let (r, old) = match op {
                Op::Alloc { .. } => (timed_step(a, table, at, op), None),
                Op::Free { .. } => (timed_step(a, table, at, op), None),
                Op::Realloc { slot, .. } => {
                    let old = table.slots[slot as usize].ptr;
                    (timed_step(a, table, at, op), old)
                }
            };
            let moved = match op {
                Op::Realloc { slot, .. } => table.slots[slot as usize].ptr != old,
                _ => false,
            };
            match r {
                Ok(dt) => record(op, dt, moved, before, probe(a)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // The pass does not look at contents, so the teardown cannot fail.
    let _ = table.teardown::<A, false>(a);
    result
}

/// One untimed-harness [`step`] between two [`stamp`]s: its counter ticks, or its failure.
#[inline(always)]
fn timed_step<A: BenchAlloc>(
    a: &mut A,
    table: &mut Slots,
    at: At,
    op: Op,
) -> Result<u64, ReplayError> {
    let t0 = stamp();
    let r = step::<A, false>(a, table, at, op);
    let dt = stamp().wrapping_sub(t0);
    r.map(|()| dt)
}

/// Heap efficiency of one allocator on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Efficiency {
    /// Most requested bytes live at once before the first refused request.
    pub peak_live: usize,
    /// Calls made before stopping.
    pub ops: usize,
    /// False when stopped by the time or op budget instead of a refused request (then
    /// `peak_live` is only a lower bound).
    pub failed: bool,
}

/// Replays `stream` on `a` until the first refused request (or `max_ops`, or `over_budget`),
/// tracking the peak of live requested bytes; every block is patterned and checked as in
/// [`verify`] (nothing here is timed). The caller divides by the memory the allocator had.
pub fn efficiency<A: BenchAlloc>(
    a: &mut A,
    stream: &mut GrowthStream,
    max_ops: usize,
    table: &mut Slots,
    mut over_budget: impl FnMut() -> bool,
) -> Result<Efficiency, ReplayError> {
    table.reset(0);
    let mut peak_live = 0;
    let mut result = Efficiency {
        peak_live: 0,
        ops: max_ops,
        failed: false,
    };
    for index in 0..max_ops {
        let (op, live) = stream.next_op();
        if let Op::Alloc { slot, .. } = op {
            table.grow_to(slot as usize);
        }
        let at = At {
            index,
            setup: false,
        };
        match step::<A, true>(a, table, at, op) {
            Ok(()) => {}
            Err(ReplayError::OutOfMemory { .. }) => {
                peak_live = peak_live.max(stream.live_bytes_before());
                result = Efficiency {
                    peak_live,
                    ops: index,
                    failed: true,
                };
                break;
            }
            Err(e) => {
                let _ = table.teardown::<A, false>(a);
                return Err(e);
            }
        }
        peak_live = peak_live.max(live);
        if index % 1024 == 1023 && over_budget() {
            result.ops = index + 1;
            break;
        }
    }
    result.peak_live = peak_live;
    table.teardown::<A, true>(a)?;
    Ok(result)
}
