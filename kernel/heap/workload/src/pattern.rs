//! The contents the verification passes write into every block and check before it is freed or
//! resized: byte `j` of a block tagged `tag` is byte `j % 8` (little-endian) of the word
//! [`word`]`(tag, j / 8)`. Words differ between neighbouring positions and between tags, so an
//! overlap with another block, a block handed out twice, an allocator writing its metadata into a
//! live block or a realloc that lost or shifted contents all show as a wrong byte.

use core::ptr::NonNull;

/// Pattern word `i` of a block tagged `tag`.
#[inline]
pub const fn word(tag: u64, i: usize) -> u64 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .rotate_left(17)
}

/// Pattern byte at offset `j`.
#[inline]
const fn byte(tag: u64, j: usize) -> u8 {
    word(tag, j / 8).to_le_bytes()[j % 8]
}

/// Writes the pattern of `tag` over bytes `from..len` of the block at `p`.
///
/// # Safety
///
/// `p` must be valid for writes of `len` bytes (any alignment).
pub unsafe fn fill(p: NonNull<u8>, from: usize, len: usize, tag: u64) {
    let mut j = from;
    while j < len && !j.is_multiple_of(8) {
        // SAFETY: `j < len`, inside the block.
        unsafe { p.add(j).write(byte(tag, j)) };
        j += 1;
    }
    while j + 8 <= len {
        // SAFETY: `j + 8 <= len`, inside the block; unaligned writes are allowed.
        unsafe {
            p.add(j)
                .cast::<u64>()
                .write_unaligned(word(tag, j / 8).to_le())
        };
        j += 8;
    }
    while j < len {
        // SAFETY: `j < len`.
        unsafe { p.add(j).write(byte(tag, j)) };
        j += 1;
    }
}

/// Offset of the first of the first `len` bytes at `p` that does not hold the pattern of `tag`.
///
/// # Safety
///
/// `p` must be valid for reads of `len` initialised bytes (any alignment).
pub unsafe fn check(p: NonNull<u8>, len: usize, tag: u64) -> Option<usize> {
    let mut j = 0;
    while j + 8 <= len {
        // SAFETY: `j + 8 <= len`, inside the block.
        let got = unsafe { p.add(j).cast::<u64>().read_unaligned() };
        if got != word(tag, j / 8).to_le() {
            break; // the byte loop below names the first wrong byte
        }
        j += 8;
    }
    while j < len {
        // SAFETY: `j < len`.
        if unsafe { p.add(j).read() } != byte(tag, j) {
            return Some(j);
        }
        j += 1;
    }
    None
}
