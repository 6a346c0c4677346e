//! Replaying a [`Workload`] against one allocator: timed, verified, or call by call.
//!
//! All three replays share one step function, `step`, generic over `VERIFY`: the timed replay
//! instantiates it without any checking code, so the timed loop is exactly "decode an op, call the
//! allocator, store the pointer"; the verifying replay (never timed) fills every block with a
//! pattern derived from its allocation number when it is allocated, checks the whole pattern before
//! every free and realloc, checks that a realloc kept the common prefix, and checks alignment.
//!
//! Pattern of a block of `n` bytes with allocation number `seq`: the first 8 bytes (when `n >= 8`)
//! hold `HEAD_MAGIC ^ seq`, every other byte holds `fill_byte(seq)`. The head word tells
//! blocks apart even when two fill bytes collide, the fill catches writes anywhere in the block.

use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use super::peers::BenchAlloc;
use super::tsc;
use super::workload::{Op, Workload};

/// Marks the first word of a verified block (an arbitrary odd constant).
const HEAD_MAGIC: u64 = 0x6b68_6561_705f_a5a5;

/// What went wrong during a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// An allocation or realloc failed (the allocator ran out of its memory budget).
    OutOfMemory {
        /// Index of the failing op: in the untimed setup when `setup`, else in the body.
        op: usize,
        /// Whether the op belongs to the setup (building a scaling level's live set).
        setup: bool,
        /// Size requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
    /// A returned block is not aligned as requested.
    Misaligned {
        /// The block's address.
        addr: usize,
        /// The requested alignment.
        align: usize,
    },
    /// A block's pattern changed while the benchmark did not write it: the allocator handed out
    /// overlapping memory or wrote into a live block (or a realloc lost contents).
    Corrupted {
        /// The block's address.
        addr: usize,
        /// Offset of the first wrong byte.
        offset: usize,
        /// The block's size.
        size: usize,
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
        }
    }
}

/// The replay's view of one slot: the live block it holds, if any.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ptr: Option<NonNull<u8>>,
    size: u32,
    align_log2: u8,
    /// Allocation number, the seed of the block's pattern (verifying replay only).
    seq: u32,
}

impl Slot {
    const EMPTY: Self = Self {
        ptr: None,
        size: 0,
        align_log2: 0,
        seq: 0,
    };

    fn layout(&self) -> Layout {
        // The generator only emits non-zero sizes below 4 GiB and alignments up to a page.
        Layout::from_size_align(self.size as usize, 1 << self.align_log2)
            .unwrap_or(Layout::new::<u8>())
    }
}

/// The slot table of a replay, reused between replays to keep allocation out of them.
#[derive(Debug, Default)]
pub struct Slots {
    slots: Vec<Slot>,
    next_seq: u32,
}

impl Slots {
    /// Empties the table and sizes it for `w`.
    fn reset(&mut self, w: &Workload) {
        self.slots.clear();
        self.slots.resize(w.slots, Slot::EMPTY);
    }
}

/// The fill byte of the block with allocation number `seq`.
const fn fill_byte(seq: u32) -> u8 {
    (seq.wrapping_mul(0x9e37_79b1) >> 24) as u8
}

/// Writes the pattern of `slot` over bytes `from..size` of its block.
fn write_pattern(slot: &Slot, from: usize) {
    let Some(ptr) = slot.ptr else { return };
    let size = slot.size as usize;
    let mut from = from;
    if from == 0 && size >= 8 {
        // SAFETY: the block is live, at least 8 bytes, and aligned to at least 8 (every request of
        // the generator is), and the benchmark owns its contents.
        unsafe { ptr.cast::<u64>().write(HEAD_MAGIC ^ u64::from(slot.seq)) };
        from = 8;
    }
    if from < size {
        // SAFETY: `from..size` lies inside the live block, which the benchmark owns.
        unsafe { ptr.add(from).write_bytes(fill_byte(slot.seq), size - from) };
    }
}

/// Checks the pattern of `slot` over bytes `0..len` of its block.
fn check_pattern(slot: &Slot, len: usize) -> Result<(), ReplayError> {
    let Some(ptr) = slot.ptr else { return Ok(()) };
    let corrupted = |offset| ReplayError::Corrupted {
        addr: ptr.addr().get(),
        offset,
        size: slot.size as usize,
    };
    let mut from = 0;
    if len >= 8 && slot.size >= 8 {
        // SAFETY: the block is live with at least 8 bytes, 8-aligned, and was patterned.
        let head = unsafe { ptr.cast::<u64>().read() };
        if head != HEAD_MAGIC ^ u64::from(slot.seq) {
            return Err(corrupted(0));
        }
        from = 8;
    }
    if from < len {
        // SAFETY: `from..len` lies inside the live block; nothing writes it while the slice lives.
        let bytes = unsafe { core::slice::from_raw_parts(ptr.as_ptr().add(from), len - from) };
        let fill = fill_byte(slot.seq);
        let word = u64::from_ne_bytes([fill; 8]);
        let (chunks, tail) = bytes.as_chunks::<8>();
        if let Some(i) = chunks.iter().position(|c| u64::from_ne_bytes(*c) != word) {
            let byte = chunks[i].iter().position(|&b| b != fill).unwrap_or(0);
            return Err(corrupted(from + i * 8 + byte));
        }
        if let Some(pos) = tail.iter().position(|&b| b != fill) {
            return Err(corrupted(from + chunks.len() * 8 + pos));
        }
    }
    Ok(())
}

/// Where an op sits in its workload, for error reports.
#[derive(Debug, Clone, Copy)]
struct At {
    index: usize,
    setup: bool,
}

/// Performs the op at `at` on `a`, updating the slot table; with `VERIFY`, patterns and checks.
#[inline(always)]
fn step<A: BenchAlloc, const VERIFY: bool>(
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
            let layout = Layout::from_size_align(size as usize, 1 << align_log2)
                .unwrap_or(Layout::new::<u8>());
            let ptr = a.alloc(layout).ok_or(ReplayError::OutOfMemory {
                op: at.index,
                setup: at.setup,
                size: layout.size(),
                align: layout.align(),
            })?;
            let s = &mut table.slots[slot as usize];
            *s = Slot {
                ptr: Some(ptr),
                size,
                align_log2,
                seq: 0,
            };
            if VERIFY {
                if ptr.addr().get() % layout.align() != 0 {
                    return Err(ReplayError::Misaligned {
                        addr: ptr.addr().get(),
                        align: layout.align(),
                    });
                }
                s.seq = table.next_seq;
                table.next_seq = table.next_seq.wrapping_add(1);
                write_pattern(s, 0);
            }
        }
        Op::Free { slot } => {
            let s = core::mem::replace(&mut table.slots[slot as usize], Slot::EMPTY);
            if let Some(ptr) = s.ptr {
                if VERIFY {
                    check_pattern(&s, s.size as usize)?;
                }
                // SAFETY: the slot held a live block of `a`, allocated (or last reallocated) with
                // exactly this layout; the slot is emptied, so it is freed once.
                unsafe { a.free(ptr, s.layout()) };
            }
        }
        Op::Realloc { slot, new_size } => {
            let s = &mut table.slots[slot as usize];
            if let Some(ptr) = s.ptr {
                if VERIFY {
                    check_pattern(s, s.size as usize)?;
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
                let old_size = s.size as usize;
                s.ptr = Some(new);
                s.size = new_size;
                if VERIFY {
                    if new.addr().get() % (1 << s.align_log2) != 0 {
                        return Err(ReplayError::Misaligned {
                            addr: new.addr().get(),
                            align: 1 << s.align_log2,
                        });
                    }
                    let kept = old_size.min(new_size as usize);
                    check_pattern(s, kept)?;
                    write_pattern(s, kept);
                }
            }
        }
    }
    Ok(())
}

/// Runs `ops` in order; stops at the first failure.
#[inline(always)]
fn run<A: BenchAlloc, const VERIFY: bool>(
    a: &mut A,
    table: &mut Slots,
    ops: &[Op],
    setup: bool,
) -> Result<(), ReplayError> {
    for (index, &op) in ops.iter().enumerate() {
        step::<A, VERIFY>(a, table, At { index, setup }, op)?;
    }
    Ok(())
}

/// Frees every block still live, in address order (so that allocators with address-ordered free
/// lists, like linked_list_allocator, tear down in linear time); with `VERIFY`, checks each first.
fn teardown<A: BenchAlloc, const VERIFY: bool>(
    a: &mut A,
    table: &mut Slots,
) -> Result<(), ReplayError> {
    let mut live: Vec<Slot> = table
        .slots
        .iter()
        .filter(|s| s.ptr.is_some())
        .copied()
        .collect();
    live.sort_unstable_by_key(|s| s.ptr.map_or(0, |p| p.addr().get()));
    table.slots.iter_mut().for_each(|s| *s = Slot::EMPTY);
    let mut result = Ok(());
    for s in &live {
        if VERIFY && result.is_ok() {
            result = check_pattern(s, s.size as usize);
        }
        if let Some(ptr) = s.ptr {
            // SAFETY: the slot held a live block of `a` with this layout; the table was cleared,
            // so each block is freed exactly once.
            unsafe { a.free(ptr, s.layout()) };
        }
    }
    result
}

/// Replays `w` on `a`: setup untimed, then the first `limit` ops of the body timed as one run.
/// Returns the cycles the body took and the number of ops timed. Whatever is live at the end is
/// freed (untimed), also after a failure.
pub fn timed<A: BenchAlloc>(
    a: &mut A,
    w: &Workload,
    limit: usize,
    table: &mut Slots,
) -> Result<(u64, usize), ReplayError> {
    table.reset(w);
    let body = &w.ops[..limit.min(w.ops.len())];
    let result = run::<A, false>(a, table, &w.setup, true).and_then(|()| {
        let start = tsc::read();
        let result = run::<A, false>(a, table, body, false);
        let end = tsc::read();
        result.map(|()| end.wrapping_sub(start))
    });
    teardown::<A, false>(a, table)?;
    result.map(|cycles| (cycles, body.len()))
}

/// Replays the setup and the first `limit` ops of `w`'s body on `a` with every block patterned and
/// checked (see the module documentation), then checks and frees what is left.
pub fn verify<A: BenchAlloc>(
    a: &mut A,
    w: &Workload,
    limit: usize,
    table: &mut Slots,
) -> Result<(), ReplayError> {
    table.reset(w);
    let body = &w.ops[..limit.min(w.ops.len())];
    let result = run::<A, true>(a, table, &w.setup, true)
        .and_then(|()| run::<A, true>(a, table, body, false));
    let end = teardown::<A, true>(a, table);
    result.and(end)
}

/// Replays `w`'s body on `a`, timing each allocation call on its own; frees and reallocs run
/// untimed between them. Pushes one sample per allocation onto `samples` (cycles, minus the
/// counter overhead `overhead`, saturated to `u32`).
pub fn alloc_latencies<A: BenchAlloc>(
    a: &mut A,
    w: &Workload,
    table: &mut Slots,
    overhead: u64,
    samples: &mut Vec<u32>,
) -> Result<(), ReplayError> {
    table.reset(w);
    let result = run::<A, false>(a, table, &w.setup, true).and_then(|()| {
        for (index, &op) in w.ops.iter().enumerate() {
            if let Op::Alloc { .. } = op {
                let start = tsc::read();
                let r = step::<A, false>(
                    a,
                    table,
                    At {
                        index,
                        setup: false,
                    },
                    op,
                );
                let end = tsc::read();
                r?;
                let cycles = end.wrapping_sub(start).saturating_sub(overhead);
                samples.push(u32::try_from(cycles).unwrap_or(u32::MAX));
            } else {
                step::<A, false>(
                    a,
                    table,
                    At {
                        index,
                        setup: false,
                    },
                    op,
                )?;
            }
        }
        Ok(())
    });
    teardown::<A, false>(a, table)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken allocator: every block is the same 8 KiB buffer, so two live blocks overlap.
    struct Overlapping {
        buf: NonNull<u8>,
    }

    impl BenchAlloc for Overlapping {
        fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
            (layout.size() <= 4096).then_some(self.buf)
        }
        unsafe fn free(&mut self, _ptr: NonNull<u8>, _layout: Layout) {}
        unsafe fn realloc(
            &mut self,
            ptr: NonNull<u8>,
            _: Layout,
            new: usize,
        ) -> Option<NonNull<u8>> {
            (new <= 4096).then_some(ptr)
        }
        fn peak_pages(&self) -> usize {
            0
        }
    }

    #[kernel::test]
    fn verification_catches_overlapping_blocks() {
        let mut buf = alloc::vec![0u64; 1024];
        let mut a = Overlapping {
            buf: NonNull::from(&mut buf[..]).cast(),
        };
        let w = Workload {
            name: "overlap",
            title: alloc::string::String::new(),
            setup: Vec::new(),
            ops: alloc::vec![
                Op::Alloc {
                    slot: 0,
                    size: 64,
                    align_log2: 3
                },
                Op::Alloc {
                    slot: 1,
                    size: 64,
                    align_log2: 3
                },
                Op::Free { slot: 0 },
                Op::Free { slot: 1 },
            ],
            slots: 2,
            bump_bytes: 2 * (64 + 8),
        };
        let mut slots = Slots::default();
        let result = verify(&mut a, &w, usize::MAX, &mut slots);
        assert!(
            matches!(result, Err(ReplayError::Corrupted { offset: 0, .. })),
            "{result:?}"
        );
        // The timed replay does not look at contents: it runs through.
        assert!(timed(&mut a, &w, usize::MAX, &mut slots).is_ok());
    }

    #[kernel::test]
    fn pattern_check_names_the_first_wrong_byte() {
        let mut buf = alloc::vec![0u64; 16];
        let ptr = NonNull::from(&mut buf[..]).cast::<u8>();
        let slot = Slot {
            ptr: Some(ptr),
            size: 100,
            align_log2: 3,
            seq: 7,
        };
        write_pattern(&slot, 0);
        assert_eq!(check_pattern(&slot, 100), Ok(()));
        // SAFETY: offset 61 lies inside the 128-byte buffer.
        unsafe { ptr.add(61).write(!fill_byte(7)) };
        assert_eq!(
            check_pattern(&slot, 100),
            Err(ReplayError::Corrupted {
                addr: ptr.addr().get(),
                offset: 61,
                size: 100
            })
        );
        assert_eq!(check_pattern(&slot, 60), Ok(()));
    }
}
