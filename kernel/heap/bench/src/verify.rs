//! The untimed verification pass: replays a workload checking what the allocator hands out.
//!
//! * every block is filled with a pattern unique to its allocation, and the pattern is checked
//!   before the block is freed or reallocated (catches overlaps with other blocks and with the
//!   allocator's own metadata);
//! * a reallocated block must keep the old contents up to the smaller size;
//! * no live block may overlap another (an address-ordered map of live ranges);
//! * every block must honour its requested alignment.
//!
//! An allocator that fails is flagged in the tables and not ranked.

use std::collections::BTreeMap;
use std::ptr::NonNull;

use crate::measure::layout;
use crate::peers::BenchAlloc;
use crate::workload::{Op, Workload};

/// The pattern word at word index `i` of a block tagged `tag`.
fn pattern(tag: u64, i: usize) -> u64 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .rotate_left(17)
}

/// Fills `len` bytes at `p` with the pattern of `tag`.
///
/// # Safety
///
/// `p` must be valid for `len` byte writes.
unsafe fn fill(p: NonNull<u8>, len: usize, tag: u64) {
    for i in 0..len.div_ceil(8) {
        let bytes = pattern(tag, i).to_le_bytes();
        let n = (len - i * 8).min(8);
        // SAFETY: `i * 8 + n <= len`, inside the block (caller).
        unsafe {
            p.add(i * 8)
                .copy_from_nonoverlapping(NonNull::from(&bytes).cast(), n)
        };
    }
}

/// Offset of the first byte among the first `len` at `p` that differs from the pattern of `tag`.
///
/// # Safety
///
/// `p` must be valid for `len` byte reads.
unsafe fn check(p: NonNull<u8>, len: usize, tag: u64) -> Option<usize> {
    for i in 0..len.div_ceil(8) {
        let want = pattern(tag, i).to_le_bytes();
        let n = (len - i * 8).min(8);
        let mut got = [0u8; 8];
        // SAFETY: `i * 8 + n <= len`, inside the block (caller).
        unsafe {
            NonNull::from(&mut got)
                .cast::<u8>()
                .copy_from_nonoverlapping(p.add(i * 8), n)
        };
        if let Some(j) = (0..n).find(|&j| got[j] != want[j]) {
            return Some(i * 8 + j);
        }
    }
    None
}

/// What the verifier tracks per slot.
#[derive(Debug, Clone, Copy)]
struct Block {
    ptr: NonNull<u8>,
    size: u32,
    align_log2: u8,
    tag: u64,
}

#[derive(Debug, Default)]
struct Verifier {
    blocks: Vec<Option<Block>>,
    /// Live ranges: start → end.
    ranges: BTreeMap<usize, usize>,
}

impl Verifier {
    fn insert_range(&mut self, b: &Block, what: &str) -> Result<(), String> {
        let (start, end) = (
            b.ptr.as_ptr() as usize,
            b.ptr.as_ptr() as usize + b.size as usize,
        );
        if start % (1usize << b.align_log2) != 0 {
            return Err(format!(
                "{what}: {start:#x} is not aligned to {}",
                1u64 << b.align_log2
            ));
        }
        // The live block with the highest start below `end` is the only one that can overlap
        // without another one overlapping too.
        if let Some((&s, &e)) = self.ranges.range(..end).next_back()
            && e > start
        {
            return Err(format!(
                "{what}: [{start:#x}, {end:#x}) overlaps the live block [{s:#x}, {e:#x})"
            ));
        }
        self.ranges.insert(start, end);
        Ok(())
    }

    fn check_block(b: &Block, len: usize, what: &str) -> Result<(), String> {
        // SAFETY: `b` is a live block of at least `len` bytes (len <= b.size at every call).
        match unsafe { check(b.ptr, len, b.tag) } {
            None => Ok(()),
            Some(off) => Err(format!(
                "{what}: block {:p} ({} B, align {}) corrupted at byte {off}",
                b.ptr,
                b.size,
                1u64 << b.align_log2
            )),
        }
    }

    fn step<A: BenchAlloc>(&mut self, a: &mut A, op: Op, tag: u64) -> Result<(), String> {
        match op {
            Op::Alloc {
                slot,
                size,
                align_log2,
            } => {
                let what = format!("alloc({size}, align {})", 1u64 << align_log2);
                let ptr = a
                    .alloc(layout(size, align_log2))
                    .ok_or(format!("{what}: out of memory"))?;
                let b = Block {
                    ptr,
                    size,
                    align_log2,
                    tag,
                };
                self.insert_range(&b, &what)?;
                // SAFETY: a fresh block of `size` bytes.
                unsafe { fill(ptr, size as usize, tag) };
                self.blocks[slot as usize] = Some(b);
            }
            Op::Free { slot } => {
                let b = self.blocks[slot as usize]
                    .take()
                    .expect("workload frees a live slot");
                Self::check_block(&b, b.size as usize, "before free")?;
                self.ranges.remove(&(b.ptr.as_ptr() as usize));
                // SAFETY: `b` is a live block of `a` with this layout.
                unsafe { a.free(b.ptr, layout(b.size, b.align_log2)) };
            }
            Op::Realloc { slot, new_size } => {
                let old = self.blocks[slot as usize].expect("workload reallocs a live slot");
                Self::check_block(&old, old.size as usize, "before realloc")?;
                let what = format!("realloc({} -> {new_size})", old.size);
                // SAFETY: `old` is a live block of `a` with this layout; `new_size` is non-zero.
                let ptr = unsafe {
                    a.realloc(old.ptr, layout(old.size, old.align_log2), new_size as usize)
                }
                .ok_or(format!("{what}: out of memory"))?;
                self.ranges.remove(&(old.ptr.as_ptr() as usize));
                let moved = Block {
                    ptr,
                    size: new_size,
                    align_log2: old.align_log2,
                    tag: old.tag,
                };
                self.insert_range(&moved, &what)?;
                Self::check_block(
                    &moved,
                    old.size.min(new_size) as usize,
                    &format!("{what}: kept contents"),
                )?;
                let fresh = Block { tag, ..moved };
                // SAFETY: a live block of `new_size` bytes.
                unsafe { fill(ptr, new_size as usize, tag) };
                self.blocks[slot as usize] = Some(fresh);
            }
        }
        Ok(())
    }
}

/// Verifies `a` over `w` (setup and at most `max_ops` body ops), then frees everything left,
/// checking each block first. Returns how many ops were checked.
pub fn verify<A: BenchAlloc>(a: &mut A, w: &Workload, max_ops: usize) -> Result<usize, String> {
    let mut v = Verifier {
        blocks: vec![None; w.slots],
        ranges: BTreeMap::new(),
    };
    let body = &w.ops[..w.ops.len().min(max_ops)];
    for (i, &op) in w.setup.iter().chain(body).enumerate() {
        v.step(a, op, i as u64 + 1)
            .map_err(|e| format!("{}, op {i}: {e}", a.name()))?;
    }
    let mut live: Vec<Block> = v.blocks.iter().flatten().copied().collect();
    live.sort_by_key(|b| b.ptr.as_ptr() as usize);
    for b in live {
        Verifier::check_block(&b, b.size as usize, "teardown")?;
        // SAFETY: `b` is a live block of `a` with this layout.
        unsafe { a.free(b.ptr, layout(b.size, b.align_log2)) };
    }
    Ok(w.setup.len() + body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_detects_damage() {
        let mut buf = vec![0u64; 8];
        let p = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` has 64 bytes.
        unsafe {
            fill(p, 61, 42);
            assert_eq!(check(p, 61, 42), None);
            assert_eq!(check(p, 61, 43), Some(0));
            *p.add(60).as_ptr() ^= 1;
            assert_eq!(check(p, 61, 42), Some(60));
            assert_eq!(check(p, 60, 42), None);
        }
    }
}
