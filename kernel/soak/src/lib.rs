//! Soak test of the kernel heap: millions of random operations through the global allocator, with
//! every byte checked, while the live set swings between a few KiB and most of RAM.
//!
//! Shared by the long run (`cargo soak`, the kernel in `src/main.rs`; see `kernel/heap/SOAK.md`)
//! and the short run in `cargo test` (`tests/heap_soak.rs`). A crate of its own, beside the
//! kernel: it is a stress test of the kernel's heap, not part of the kernel; the footprint check
//! it ends with is the kernel's ([`kernel::baseline`]), shared with the test kernels.
//!
//! # What it does
//!
//! The live set is a list of objects of five kinds, each allocated a different way:
//!
//! * raw blocks from `alloc::alloc::{alloc, alloc_zeroed, realloc, dealloc}` with random sizes
//!   (1 B to [`Config::max_size`]) and alignments (1 B to 64 KiB);
//! * `Box<[u8]>` built from a `Vec` reserved with `try_reserve_exact`;
//! * `Box<[u64; N]>` of three fixed sizes, from a raw allocation handed to `Box::from_raw`;
//! * `Vec<u64>` that grow by `try_reserve` and pushes (the `realloc` path of a collection);
//! * `BTreeMap<u64, u64>` that gain and lose entries (many small node blocks).
//!
//! Every byte of every object holds a pattern derived from the object's id and the byte's offset
//! (words `seed(id) + i * STEP`; map values derived from id and key). It is written when the
//! object is made or grown and checked when it is freed, reallocated or grown; a mismatch panics
//! with the address of the first wrong byte. So a report always says `corruptions: 0`.
//!
//! # Phases
//!
//! The run alternates *growth* and *shrink* phases. A growth phase reads the free physical memory
//! from [`memory::stats`] and sets its target at a random share of it (60–105 % by default,
//! [`Config::grow_percent`]); it favours allocations until the live set reaches the target or an
//! allocation fails (a null pointer or a `try_reserve` error — counted, never fatal). A shrink
//! phase favours frees until the live set is down to a few KiB (or, every other time, to a random
//! fraction of its size). Every allocation the soak makes can
//! fail cleanly except a `BTreeMap` insertion, which has no fallible form: it is only attempted
//! while at least [`INSERT_HEADROOM_FRAMES`] frames are free, far more than one insertion needs.
//!
//! At the end everything is freed and checked, the heap is trimmed, the heap's and the memory
//! layer's invariants are checked, and the footprint ([`allocator::footprint`]) is compared with
//! the one before the run (see [`Baseline`] for what may legitimately stay).
#![no_std]

extern crate alloc;

use alloc::alloc::{alloc, alloc_zeroed, dealloc, realloc};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use kheap_workload::{Generator, Rng};

use kernel::allocator;
use kernel::baseline::{Baseline, BaselineError, INSERT_HEADROOM_FRAMES};
use kernel::memory::{self, Bytes};
use kernel::serial_println;

/// What one soak run does.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Operations to run (each allocation, free, reallocation, vector growth, map insertion or
    /// removal counts as one).
    pub ops: u64,
    /// Seed of the pseudo-random sequence: the same seed and memory size give the same run.
    pub seed: u64,
    /// Largest raw block or `Box<[u8]>`, in bytes (at least 512 KiB: the size tiers end there).
    pub max_size: usize,
    /// Print a progress line every this many operations (0: never).
    pub progress_every: u64,
    /// A growth phase aims at `lo..=hi` percent (drawn at random) of the free memory at its
    /// start; targets beyond 100 are sure to end at a refused allocation.
    pub grow_percent: (usize, usize),
    /// Self-test of the checker: after this many operations, flip one byte of a live object
    /// behind the allocator's back; the run must then panic naming that byte's address.
    pub corrupt_after: Option<u64>,
}

impl Config {
    /// The long run of `cargo soak`: 10 million operations, blocks up to
    /// 4 MiB (page runs of the large allocator), a progress line every million.
    pub const LONG: Self = Self {
        ops: 10_000_000,
        seed: 0x50A4_2026_1126_0001,
        max_size: 4 << 20,
        progress_every: 1_000_000,
        grow_percent: (60, 105),
        corrupt_after: None,
    };

    /// The short run of `tests/heap_soak.rs` (a debug build in QEMU, well under a minute).
    pub const SHORT: Self = Self {
        ops: 200_000,
        seed: 0x50A4_7E57,
        max_size: 1 << 20,
        progress_every: 0,
        grow_percent: (60, 105),
        corrupt_after: None,
    };
}

/// Largest alignment of a raw block: 64 KiB (beyond a page, served by the large allocator).
const MAX_ALIGN_LOG2: u64 = 16;

/// Odd constant added per word of a pattern (a 64-bit golden-ratio-like multiplier), so that
/// neighbouring words, shifted copies and blocks of other ids all differ.
const STEP: u64 = 0xD1B5_4A32_D192_ED03;

/// First pattern word of object `id`.
fn seed(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D
}

/// Pattern word `i` of object `id`.
fn word(id: u64, i: usize) -> u64 {
    seed(id).wrapping_add(STEP.wrapping_mul(i as u64))
}

/// The value map `id` holds for `key`.
fn map_value(id: u64, key: u64) -> u64 {
    seed(id) ^ key.wrapping_mul(STEP)
}

/// The run's PRNG (the benchmarks' shared generator): xorshift64*, started from the state
/// `(seed ^ 0x9e37_79b9_7f4a_7c15) | 1` as the soak always has, so a seed gives the same run as
/// in the recorded results (`kernel/heap/SOAK.md`). Clearing the seed's low bit sets the state's
/// (the constant's low bit is 1), which also keeps the state non-zero as xorshift needs.
fn soak_rng(seed: u64) -> Rng {
    Rng::with_generator(seed & !1, Generator::XorShift64Star)
}

/// Panics with the address of the first byte of `[ptr, ptr + len)` that does not hold object
/// `id`'s pattern (bytes from offset `from`).
#[cold]
#[inline(never)]
fn corrupted(ptr: *const u8, len: usize, id: u64, from: usize) -> ! {
    for off in from..len {
        let expected = word(id, off / 8).to_le_bytes()[off % 8];
        // SAFETY: `off < len`, and the caller's block has `len` readable bytes.
        let got = unsafe { ptr.add(off).read() };
        if got != expected {
            panic!(
                "soak: corruption at {:#x}: byte {off} of object {id} (block {:#x}, {len} bytes) \
                 is {got:#04x}, expected {expected:#04x}",
                ptr.addr() + off,
                ptr.addr()
            );
        }
    }
    panic!(
        "soak: corruption in object {id} (block {:#x}, {len} bytes)",
        ptr.addr()
    );
}

/// Writes object `id`'s pattern into bytes `from..len` of the block at `ptr` (`from` a multiple
/// of 8).
///
/// # Safety
///
/// `ptr` must be valid for writes of `len` bytes (any alignment).
unsafe fn fill(ptr: *mut u8, len: usize, id: u64, from: usize) {
    debug_assert_eq!(from % 8, 0);
    let words = len / 8;
    let mut w = word(id, from / 8);
    for i in from / 8..words {
        // SAFETY: word `i` lies inside the block (`(i + 1) * 8 <= len`).
        unsafe { ptr.cast::<u64>().add(i).write_unaligned(w) };
        w = w.wrapping_add(STEP);
    }
    for (j, byte) in w.to_le_bytes().iter().take(len % 8).enumerate() {
        // SAFETY: `words * 8 + j < len`.
        unsafe { ptr.add(words * 8 + j).write(*byte) };
    }
}

/// Checks that bytes `0..len` of the block at `ptr` hold object `id`'s pattern; panics with the
/// address of the first wrong byte.
///
/// # Safety
///
/// `ptr` must be valid for reads of `len` initialised bytes (any alignment).
unsafe fn verify(ptr: *const u8, len: usize, id: u64) {
    let words = len / 8;
    let mut w = seed(id);
    for i in 0..words {
        // SAFETY: word `i` lies inside the block.
        if unsafe { ptr.cast::<u64>().add(i).read_unaligned() } != w {
            corrupted(ptr, len, id, i * 8);
        }
        w = w.wrapping_add(STEP);
    }
    for (j, byte) in w.to_le_bytes().iter().take(len % 8).enumerate() {
        // SAFETY: `words * 8 + j < len`.
        if unsafe { ptr.add(words * 8 + j).read() } != *byte {
            corrupted(ptr, len, id, words * 8);
        }
    }
}

/// Checks a word slice against object `id`'s pattern.
fn verify_words(words: &[u64], id: u64) {
    // SAFETY: a slice of initialised words is readable as bytes.
    unsafe { verify(words.as_ptr().cast(), size_of_val(words), id) };
}

/// One live object of the soak.
#[derive(Debug)]
enum Kind {
    /// A raw block from `alloc`/`alloc_zeroed`/`realloc`, freed with `dealloc`.
    Raw {
        ptr: NonNull<u8>,
        layout: Layout,
    },
    /// A byte box.
    Bytes(Box<[u8]>),
    /// A typed box, three sizes (two general classes and a large block).
    Small(Box<[u64; 3]>),
    Medium(Box<[u64; 40]>),
    Large(Box<[u64; 700]>),
    /// A growing vector.
    Words(Vec<u64>),
    /// A map from keys to `map_value(id, key)`.
    Map(BTreeMap<u64, u64>),
}

#[derive(Debug)]
struct Object {
    id: u64,
    kind: Kind,
}

impl Object {
    /// Bytes the object holds from the heap, as the soak counts its live set (requested sizes;
    /// vector capacity; 16 bytes per map entry, leaving out node overhead).
    fn bytes(&self) -> usize {
        match &self.kind {
            Kind::Raw { layout, .. } => layout.size(),
            Kind::Bytes(b) => b.len(),
            Kind::Small(_) => size_of::<[u64; 3]>(),
            Kind::Medium(_) => size_of::<[u64; 40]>(),
            Kind::Large(_) => size_of::<[u64; 700]>(),
            Kind::Words(v) => v.capacity() * size_of::<u64>(),
            Kind::Map(m) => m.len() * 2 * size_of::<u64>(),
        }
    }

    /// Checks every byte (or entry) of the object.
    fn verify(&self) {
        let id = self.id;
        match &self.kind {
            // SAFETY: a live raw block of `layout.size()` bytes, fully patterned.
            Kind::Raw { ptr, layout } => unsafe { verify(ptr.as_ptr(), layout.size(), id) },
            // SAFETY: a live, initialised byte slice.
            Kind::Bytes(b) => unsafe { verify(b.as_ptr(), b.len(), id) },
            Kind::Small(b) => verify_words(&**b, id),
            Kind::Medium(b) => verify_words(&**b, id),
            Kind::Large(b) => verify_words(&**b, id),
            Kind::Words(v) => verify_words(v, id),
            Kind::Map(m) => {
                for (k, v) in m {
                    if *v != map_value(id, *k) {
                        panic!(
                            "soak: corruption at {:#x}: map {id}, key {k} holds {v:#x}, expected \
                             {:#x}",
                            core::ptr::from_ref(v).addr(),
                            map_value(id, *k)
                        );
                    }
                }
            }
        }
    }

    /// Checks the object and frees it.
    fn free(self) {
        self.verify();
        if let Kind::Raw { ptr, layout } = self.kind {
            // SAFETY: allocated by the global allocator with `layout`, freed once (the object is
            // consumed).
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
        // Every other kind frees itself on drop.
    }
}

/// A typed box of `[u64; N]` filled with object `id`'s pattern, or `None` if the allocator
/// refused (there is no stable fallible `Box::new`, so this allocates raw and adopts the block).
fn try_box<const N: usize>(id: u64) -> Option<Box<[u64; N]>> {
    let layout = Layout::new::<[u64; N]>();
    // SAFETY: `N > 0` at every call site, so the layout has a non-zero size.
    let p = unsafe { alloc(layout) }.cast::<[u64; N]>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh block of the array's layout; writing every word initialises it, so
    // the box owns a valid array and frees it with the same layout.
    unsafe {
        fill(p.cast(), size_of::<[u64; N]>(), id, 0);
        Some(Box::from_raw(p))
    }
}

/// What a soak run saw. Printed by its `Display`.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Operations run.
    pub ops: u64,
    /// Allocations that succeeded (every kind; vector growths and map insertions excluded).
    pub allocations: u64,
    /// Objects freed (during the run and at the end).
    pub frees: u64,
    /// Raw `realloc` calls that succeeded.
    pub reallocations: u64,
    /// Vector growths (`try_reserve` plus pushes) that succeeded.
    pub vec_growths: u64,
    /// Map insertions.
    pub map_inserts: u64,
    /// Map insertions skipped because fewer than [`INSERT_HEADROOM_FRAMES`] frames were free.
    pub map_inserts_skipped: u64,
    /// Allocation requests the heap refused (null pointers and `try_reserve` errors).
    pub failures: u64,
    /// Growth phases that ended at a refused allocation rather than at their target.
    pub growth_stopped_by_failure: u64,
    /// Growth and shrink phases run.
    pub phases: u64,
    /// Largest live set, in bytes (as `Object::bytes` counts).
    pub peak_live_bytes: usize,
    /// Most objects live at once.
    pub peak_live_objects: usize,
    /// Most heap-window pages mapped at the end of a growth phase.
    pub peak_heap_pages: u64,
    /// Physical frames of the machine.
    pub frames_total: u64,
    /// What the heap held before the run (after a trim).
    pub before: Baseline,
    /// What it held after everything was freed and the heap trimmed.
    pub after: Baseline,
}

impl Report {
    /// Pages the heap gave back to the memory layer between its peak and the end.
    pub fn pages_returned(&self) -> u64 {
        self.peak_heap_pages
            .saturating_sub(self.after.footprint.heap_pages)
    }

    /// Heap pages still mapped after the run beyond those mapped before it (root-run and
    /// page-map pages only: [`Baseline::check_returned`] checked that).
    pub fn pages_kept(&self) -> u64 {
        self.after
            .footprint
            .heap_pages
            .saturating_sub(self.before.footprint.heap_pages)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: {} ops: {} allocations, {} frees, {} reallocations, {} vector growths, {} map \
             inserts ({} skipped for headroom), in {} phases",
            self.ops,
            self.allocations,
            self.frees,
            self.reallocations,
            self.vec_growths,
            self.map_inserts,
            self.map_inserts_skipped,
            self.phases
        )?;
        writeln!(
            f,
            "soak: peak live {} ({} bytes) in {} objects; peak heap {} pages ({}) of {} frames \
             ({})",
            Bytes(self.peak_live_bytes as u64),
            self.peak_live_bytes,
            self.peak_live_objects,
            self.peak_heap_pages,
            Bytes(self.peak_heap_pages * 4096),
            self.frames_total,
            Bytes(self.frames_total * 4096)
        )?;
        writeln!(
            f,
            "soak: allocation failures seen: {} ({} growth phases stopped by one)",
            self.failures, self.growth_stopped_by_failure
        )?;
        writeln!(
            f,
            "soak: footprint before {:?}, after free + trim {:?}",
            self.before.footprint, self.after.footprint
        )?;
        writeln!(
            f,
            "soak: pages returned: {} (peak {} -> {} heap pages); kept beyond the start: {} \
             (heap root-run + page-map pages {} before, {} after)",
            self.pages_returned(),
            self.peak_heap_pages,
            self.after.footprint.heap_pages,
            self.pages_kept(),
            self.before.bookkeeping_pages,
            self.after.bookkeeping_pages
        )?;
        write!(f, "soak: corruptions: 0")
    }
}

/// Which way the live set is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Favour allocations until the live set reaches `target` bytes or an allocation fails.
    Grow { target: usize },
    /// Favour frees until the live set is at most `target` bytes.
    Shrink { target: usize },
}

/// The run's state.
struct Soak {
    cfg: Config,
    rng: Rng,
    live: Vec<Object>,
    live_bytes: usize,
    next_id: u64,
    phase: Phase,
    report: Report,
}

impl Soak {
    /// A size for a raw block or byte box: skewed small, up to `max_size`.
    fn size(&mut self) -> usize {
        let max = self.cfg.max_size;
        match self.rng.below(1000) {
            0..=499 => self.rng.range_usize(1, 128),
            500..=799 => self.rng.range_usize(129, 4096),
            800..=949 => self.rng.range_usize(4097, 65536.min(max)),
            950..=994 => self.rng.range_usize(65537.min(max), (512 << 10).min(max)),
            _ => self.rng.range_usize((512 << 10).min(max), max),
        }
    }

    /// An alignment: mostly up to 16 bytes, sometimes up to a page, rarely up to 64 KiB.
    fn align(&mut self) -> usize {
        let log2 = match self.rng.below(100) {
            0..=79 => self.rng.below(5),
            80..=97 => self.rng.range_usize(5, 12) as u64,
            _ => self.rng.range_usize(13, MAX_ALIGN_LOG2 as usize) as u64,
        };
        1 << log2
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A refused allocation: counted; a growth phase ends here.
    fn failed(&mut self) {
        self.report.failures += 1;
        if let Phase::Grow { .. } = self.phase {
            self.report.growth_stopped_by_failure += 1;
            self.start_shrink();
        }
    }

    /// Adds an object to the live set and says whether it did (the list itself grows fallibly:
    /// if it cannot, the object is freed again and the refusal counted).
    fn adopt(&mut self, obj: Object) -> bool {
        if self.live.try_reserve(1).is_err() {
            obj.free();
            self.failed();
            return false;
        }
        self.report.allocations += 1;
        self.live_bytes += obj.bytes();
        self.live.push(obj);
        self.note_peak();
        true
    }

    fn note_peak(&mut self) {
        self.report.peak_live_bytes = self.report.peak_live_bytes.max(self.live_bytes);
        self.report.peak_live_objects = self.report.peak_live_objects.max(self.live.len());
    }

    fn alloc_raw(&mut self) {
        let (size, align) = (self.size(), self.align());
        let layout = Layout::from_size_align(size, align).expect("soak layouts are valid");
        let zeroed = self.rng.below(10) == 0;
        // SAFETY: `size >= 1`.
        let p = unsafe {
            if zeroed {
                alloc_zeroed(layout)
            } else {
                alloc(layout)
            }
        };
        let Some(ptr) = NonNull::new(p) else {
            return self.failed();
        };
        assert_eq!(
            ptr.addr().get() % align,
            0,
            "soak: {ptr:p} not aligned to {align}"
        );
        let id = self.fresh_id();
        if zeroed {
            // SAFETY: a fresh block of `size` bytes.
            let bytes = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), size) };
            if let Some(i) = bytes.iter().position(|&b| b != 0) {
                panic!("soak: alloc_zeroed block {ptr:p} has a non-zero byte at offset {i}");
            }
        }
        // SAFETY: a fresh block of `size` bytes.
        unsafe { fill(ptr.as_ptr(), size, id, 0) };
        self.adopt(Object {
            id,
            kind: Kind::Raw { ptr, layout },
        });
    }

    fn alloc_bytes(&mut self) {
        let size = self.size();
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(size).is_err() {
            return self.failed();
        }
        let id = self.fresh_id();
        // SAFETY: the vector has capacity for `size` bytes; they are all initialised by `fill`
        // before the length covers them.
        unsafe {
            fill(v.as_mut_ptr(), size, id, 0);
            v.set_len(size);
        }
        // An exact reservation has no spare capacity, so `into_boxed_slice` does not reallocate
        // (which could fail without a fallible form).
        assert_eq!(
            v.capacity(),
            size,
            "soak: try_reserve_exact gave spare capacity"
        );
        self.adopt(Object {
            id,
            kind: Kind::Bytes(v.into_boxed_slice()),
        });
    }

    fn alloc_typed(&mut self) {
        let id = self.fresh_id();
        let kind = match self.rng.below(3) {
            0 => try_box::<3>(id).map(Kind::Small),
            1 => try_box::<40>(id).map(Kind::Medium),
            _ => try_box::<700>(id).map(Kind::Large),
        };
        match kind {
            Some(kind) => {
                self.adopt(Object { id, kind });
            }
            None => self.failed(),
        }
    }

    fn new_vec(&mut self) {
        let id = self.fresh_id();
        let n = self.rng.range_usize(1, 64);
        let mut v = Vec::new();
        if v.try_reserve(n).is_err() {
            return self.failed();
        }
        v.extend((0..n).map(|i| word(id, i)));
        self.adopt(Object {
            id,
            kind: Kind::Words(v),
        });
    }

    fn new_map(&mut self) {
        let id = self.fresh_id();
        let map = Object {
            id,
            kind: Kind::Map(BTreeMap::new()),
        };
        if self.adopt(map) {
            // An empty map allocates nothing; fill it a little.
            let i = self.live.len() - 1;
            for _ in 0..self.rng.range_usize(1, 16) {
                self.map_insert(i);
            }
        }
    }

    /// Some live object of a kind `pick` selects, if there is one among a few random tries.
    fn find(&mut self, pick: fn(&Kind) -> bool) -> Option<usize> {
        for _ in 0..8 {
            if self.live.is_empty() {
                return None;
            }
            let i = self.rng.below(self.live.len() as u64) as usize;
            if pick(&self.live[i].kind) {
                return Some(i);
            }
        }
        None
    }

    fn grow_vec(&mut self, i: usize) {
        let id = self.live[i].id;
        let extra = self.rng.range_usize(1, 4096);
        let Kind::Words(v) = &mut self.live[i].kind else {
            unreachable!("grow_vec on a vector")
        };
        verify_words(v, id);
        let before = v.capacity();
        if v.try_reserve(extra).is_err() {
            return self.failed();
        }
        let len = v.len();
        v.extend((len..len + extra).map(|k| word(id, k)));
        let after = v.capacity();
        self.live_bytes += (after - before) * size_of::<u64>();
        self.report.vec_growths += 1;
        self.note_peak();
    }

    fn map_insert(&mut self, i: usize) {
        let m = memory::stats();
        if m.frames_free < INSERT_HEADROOM_FRAMES
            || m.window_largest_free_run < INSERT_HEADROOM_FRAMES
        {
            self.report.map_inserts_skipped += 1;
            return;
        }
        let key = self.rng.next_u64();
        let id = self.live[i].id;
        let Kind::Map(map) = &mut self.live[i].kind else {
            unreachable!("map_insert on a map")
        };
        if map.insert(key, map_value(id, key)).is_none() {
            self.live_bytes += 2 * size_of::<u64>();
        }
        self.report.map_inserts += 1;
        self.note_peak();
    }

    fn map_remove(&mut self, i: usize) {
        let id = self.live[i].id;
        let pivot = self.rng.next_u64();
        let Kind::Map(map) = &mut self.live[i].kind else {
            unreachable!("map_remove on a map")
        };
        let key = map
            .range(pivot..)
            .next()
            .or_else(|| map.iter().next())
            .map(|(k, _)| *k);
        if let Some(key) = key {
            let v = map.remove(&key).expect("the key was just found");
            assert_eq!(v, map_value(id, key), "soak: map {id} key {key} corrupted");
            self.live_bytes -= 2 * size_of::<u64>();
        }
    }

    fn realloc_raw(&mut self, i: usize) {
        let Kind::Raw { ptr, layout } = self.live[i].kind else {
            unreachable!("realloc_raw on a raw block")
        };
        let id = self.live[i].id;
        let new_size = if self.rng.below(3) == 0 {
            // Small changes: often the same class, or an in-place resize of a large block.
            layout
                .size()
                .saturating_add_signed(self.rng.range_usize(0, 512) as isize - 256)
                .max(1)
        } else {
            self.size()
        };
        // SAFETY: a live raw block of `layout.size()` bytes, fully patterned.
        unsafe { verify(ptr.as_ptr(), layout.size(), id) };
        // SAFETY: `ptr` was allocated with `layout`; `new_size` is non-zero and, rounded up to
        // the alignment (at most 64 KiB), far below `isize::MAX`.
        let p = unsafe { realloc(ptr.as_ptr(), layout, new_size) };
        let Some(moved) = NonNull::new(p) else {
            // The old block must be untouched and still ours.
            // SAFETY: as above.
            unsafe { verify(ptr.as_ptr(), layout.size(), id) };
            return self.failed();
        };
        let kept = layout.size().min(new_size);
        // SAFETY: the new block has `new_size >= kept` bytes, the first `kept` copied.
        unsafe {
            verify(moved.as_ptr(), kept, id);
            fill(moved.as_ptr(), new_size, id, kept / 8 * 8);
        }
        let new_layout = Layout::from_size_align(new_size, layout.align()).expect("valid");
        self.live[i].kind = Kind::Raw {
            ptr: moved,
            layout: new_layout,
        };
        self.live_bytes = self.live_bytes - layout.size() + new_size;
        self.report.reallocations += 1;
        self.note_peak();
    }

    fn free_random(&mut self) {
        if self.live.is_empty() {
            return;
        }
        let i = self.rng.below(self.live.len() as u64) as usize;
        let obj = self.live.swap_remove(i);
        self.live_bytes -= obj.bytes();
        obj.free();
        self.report.frees += 1;
    }

    /// An allocation of a random kind.
    fn allocate(&mut self) {
        match self.rng.below(100) {
            0..=54 => self.alloc_raw(),
            55..=69 => self.alloc_bytes(),
            70..=84 => self.alloc_typed(),
            85..=94 => self.new_vec(),
            _ => self.new_map(),
        }
    }

    /// A change to an existing object: reallocation, vector growth, map insertion or removal.
    fn modify(&mut self, growing: bool) {
        match self.rng.below(4) {
            0 | 1 => {
                if let Some(i) = self.find(|k| matches!(k, Kind::Raw { .. })) {
                    self.realloc_raw(i);
                }
            }
            2 => {
                if let Some(i) = self.find(|k| matches!(k, Kind::Words(_))) {
                    self.grow_vec(i);
                }
            }
            _ => {
                if let Some(i) = self.find(|k| matches!(k, Kind::Map(_))) {
                    if growing {
                        self.map_insert(i);
                    } else {
                        self.map_remove(i);
                    }
                }
            }
        }
    }

    fn start_grow(&mut self) {
        let free = memory::stats().frames_free as usize * 4096;
        let (lo, hi) = self.cfg.grow_percent;
        let percent = self.rng.range_usize(lo, hi);
        self.phase = Phase::Grow {
            target: self.live_bytes + free / 100 * percent,
        };
        self.report.phases += 1;
    }

    fn start_shrink(&mut self) {
        let heap_pages = allocator::footprint().heap_pages;
        self.report.peak_heap_pages = self.report.peak_heap_pages.max(heap_pages);
        // Every other shrink phase goes down to a few KiB, the others to 5-60 % of the live set
        // (`phases` is odd here: growth phases are the odd-numbered ones).
        let target = if self.report.phases / 2 % 2 == 0 {
            self.rng.range_usize(0, 16 << 10)
        } else {
            self.live_bytes / 100 * self.rng.range_usize(5, 60)
        };
        self.phase = Phase::Shrink { target };
        self.report.phases += 1;
    }

    fn step(&mut self) {
        match self.phase {
            Phase::Grow { target } if self.live_bytes >= target => self.start_shrink(),
            Phase::Shrink { target } if self.live_bytes <= target => self.start_grow(),
            _ => {}
        }
        let growing = matches!(self.phase, Phase::Grow { .. });
        let roll = self.rng.below(100);
        // Growth: 60 % allocations, 20 % frees, 20 % changes; shrinking: 20 / 60 / 20.
        let (alloc_below, free_below) = if growing { (60, 80) } else { (20, 80) };
        if roll < alloc_below {
            self.allocate();
        } else if roll < free_below {
            self.free_random();
        } else {
            self.modify(growing);
        }
    }

    /// Flips the middle byte of the first live raw block or byte box (for [`Config::corrupt_after`]).
    fn corrupt_one_byte(&mut self) {
        for obj in &mut self.live {
            let (ptr, len) = match &mut obj.kind {
                Kind::Raw { ptr, layout } => (ptr.as_ptr(), layout.size()),
                Kind::Bytes(b) => (b.as_mut_ptr(), b.len()),
                _ => continue,
            };
            // SAFETY: the block is live and has `len >= 1` bytes.
            unsafe { *ptr.add(len / 2) ^= 0x40 };
            serial_println!("soak: flipped a bit at {:#x}", ptr.addr() + len / 2);
            return;
        }
    }

    fn progress(&self, ops: u64) {
        let phase = match self.phase {
            Phase::Grow { .. } => "grow",
            Phase::Shrink { .. } => "shrink",
        };
        let f = allocator::footprint();
        serial_println!(
            "soak: {ops} ops, phase {} ({phase}), live {} in {} objects, heap {} pages, {} frames \
             free, {} failures",
            self.report.phases,
            Bytes(self.live_bytes as u64),
            self.live.len(),
            f.heap_pages,
            f.free_frames,
            self.report.failures
        );
    }
}

/// Runs the soak: `cfg.ops` random operations, then frees everything and checks that it came
/// back (see [`Baseline`]).
///
/// # Errors
///
/// [`BaselineError`] if the heap is not initialised or the memory did not come back.
///
/// # Panics
///
/// On the first corrupted byte (with its address), if an invariant checker fails, and if
/// `cfg.max_size` is below 512 KiB.
pub fn run(cfg: &Config) -> Result<Report, BaselineError> {
    assert!(cfg.max_size >= 512 << 10, "soak: max_size below 512 KiB");
    let before = Baseline::take()?;
    let mut soak = Soak {
        cfg: *cfg,
        rng: soak_rng(cfg.seed),
        live: Vec::new(),
        live_bytes: 0,
        next_id: 0,
        phase: Phase::Shrink { target: 0 },
        report: Report {
            ops: 0,
            allocations: 0,
            frees: 0,
            reallocations: 0,
            vec_growths: 0,
            map_inserts: 0,
            map_inserts_skipped: 0,
            failures: 0,
            growth_stopped_by_failure: 0,
            phases: 0,
            peak_live_bytes: 0,
            peak_live_objects: 0,
            peak_heap_pages: before.footprint.heap_pages,
            frames_total: memory::stats().frames_total,
            before,
            after: before,
        },
    };
    soak.start_grow();
    for op in 1..=cfg.ops {
        soak.step();
        if cfg.corrupt_after == Some(op) {
            soak.corrupt_one_byte();
        }
        if cfg.progress_every != 0 && op % cfg.progress_every == 0 {
            soak.progress(op);
        }
    }
    soak.report.ops = cfg.ops;
    let heap_pages = allocator::footprint().heap_pages;
    soak.report.peak_heap_pages = soak.report.peak_heap_pages.max(heap_pages);

    let mut report = soak.report;
    for obj in core::mem::take(&mut soak.live) {
        obj.free();
        report.frees += 1;
    }
    report.after = before.check_returned()?;
    Ok(report)
}
