//! The boot memory map, reduced to what the frame allocator needs: sorted, disjoint ranges of
//! whole usable 4 KiB frames.
//!
//! The bootloader reports regions as byte ranges with a kind. A frame may be handed out only if
//! it lies entirely inside a `Usable` region and inside no other region, and is not frame 0
//! (physical address 0 doubles as "null" and real-mode structures live there). So:
//!
//! 1. every usable region is shrunk to the whole frames inside it (start rounded up, end
//!    rounded down) and merged into a sorted list of frame ranges;
//! 2. every non-usable region is grown to the frames it touches (start rounded down, end rounded
//!    up) and cut out of that list — the bootloader's map should not overlap, but if it ever
//!    does, reserved memory wins;
//! 3. frame 0 is cut out.
//!
//! The list has a fixed capacity ([`MAX_RANGES`]) because it is built before any allocator
//! exists. Building it is O(R²) in the number of regions R (tens on real machines), independent
//! of the amount of memory. This module is pure logic, tested on the host.
#![deny(unsafe_code)]

use core::fmt;

/// Size of a frame (and of a page) in bytes.
pub const FRAME_SIZE: u64 = 4096;

/// Capacity of [`UsableRanges`]: firmware maps have tens of entries (QEMU: under 10; large
/// servers: under 100), so 128 leaves room while keeping the list at 2 KiB.
pub const MAX_RANGES: usize = 128;

/// Physical addresses are at most 52 bits on x86_64; regions beyond are ignored.
const MAX_PHYS: u64 = 1 << 52;

/// What a region of the boot memory map is, as far as this kernel cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM the kernel may use.
    Usable,
    /// RAM holding the kernel, its page tables, stack and boot information.
    Bootloader,
    /// Anything else the firmware reports (reserved, ACPI, MMIO holes...), with its type code.
    Reserved(u32),
}

/// One region of the boot memory map, as a byte range `start .. end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the region holds.
    pub kind: RegionKind,
}

/// A range of frame numbers `start .. end` (frame number = physical address / 4096).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRange {
    /// First frame.
    pub start: u64,
    /// One past the last frame.
    pub end: u64,
}

impl FrameRange {
    /// Number of frames in the range.
    #[must_use]
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range has no frames.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why the usable ranges could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    /// The map splits usable memory into more than [`MAX_RANGES`] ranges.
    TooManyRanges,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyRanges => {
                write!(f, "the memory map has more than {MAX_RANGES} usable ranges")
            }
        }
    }
}

/// Sorted, disjoint, non-adjacent ranges of usable frames (adjacent ranges are merged).
#[derive(Clone, Copy)]
pub struct UsableRanges {
    ranges: [FrameRange; MAX_RANGES],
    len: usize,
}

impl Default for UsableRanges {
    fn default() -> Self {
        Self::new()
    }
}

impl UsableRanges {
    /// An empty list.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ranges: [FrameRange { start: 0, end: 0 }; MAX_RANGES],
            len: 0,
        }
    }

    /// Builds the list from a memory map (see the module documentation for the rules).
    ///
    /// # Errors
    ///
    /// [`RegionError::TooManyRanges`] if the result does not fit in [`MAX_RANGES`] entries.
    pub fn from_regions<I>(regions: I) -> Result<Self, RegionError>
    where
        I: Iterator<Item = Region> + Clone,
    {
        let mut list = Self::new();
        for region in regions.clone().filter(|r| r.kind == RegionKind::Usable) {
            let start = region.start.div_ceil(FRAME_SIZE);
            let end = region.end.min(MAX_PHYS) / FRAME_SIZE;
            if start < end {
                list.insert(FrameRange { start, end })?;
            }
        }
        for region in regions.filter(|r| r.kind != RegionKind::Usable) {
            let start = region.start.min(MAX_PHYS) / FRAME_SIZE;
            let end = region.end.min(MAX_PHYS).div_ceil(FRAME_SIZE);
            if start < end {
                list.remove(FrameRange { start, end })?;
            }
        }
        list.remove(FrameRange { start: 0, end: 1 })?;
        Ok(list)
    }

    /// The ranges, sorted by address.
    #[must_use]
    pub fn as_slice(&self) -> &[FrameRange] {
        &self.ranges[..self.len]
    }

    /// The ranges, sorted by address, for in-place trimming by the frame allocator (shrinking a
    /// range keeps the list sorted and disjoint).
    pub fn as_mut_slice(&mut self) -> &mut [FrameRange] {
        &mut self.ranges[..self.len]
    }

    /// Total frames in all ranges.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.as_slice().iter().map(FrameRange::len).sum()
    }

    /// Whether frame number `frame` is in one of the ranges (binary search: O(log R)).
    #[must_use]
    pub fn contains(&self, frame: u64) -> bool {
        let slice = self.as_slice();
        let after = slice.partition_point(|r| r.start <= frame);
        after > 0 && frame < slice[after - 1].end
    }

    /// Adds a range, merging it with ranges it overlaps or touches.
    fn insert(&mut self, new: FrameRange) -> Result<(), RegionError> {
        // First range that ends at or after `new.start` (could merge), and first that starts
        // after `new.end` (cannot).
        let first = self.as_slice().partition_point(|r| r.end < new.start);
        let last = self.as_slice().partition_point(|r| r.start <= new.end);
        if first < last {
            // Merge `first .. last` and `new` into slot `first`, close the gap.
            let merged = FrameRange {
                start: new.start.min(self.ranges[first].start),
                end: new.end.max(self.ranges[last - 1].end),
            };
            self.ranges[first] = merged;
            self.ranges.copy_within(last..self.len, first + 1);
            self.len -= last - first - 1;
        } else {
            if self.len == MAX_RANGES {
                return Err(RegionError::TooManyRanges);
            }
            self.ranges.copy_within(first..self.len, first + 1);
            self.ranges[first] = new;
            self.len += 1;
        }
        Ok(())
    }

    /// Cuts a range out, splitting a range it falls strictly inside.
    fn remove(&mut self, cut: FrameRange) -> Result<(), RegionError> {
        let mut i = self.as_slice().partition_point(|r| r.end <= cut.start);
        while i < self.len && self.ranges[i].start < cut.end {
            let r = self.ranges[i];
            let left = FrameRange {
                start: r.start,
                end: cut.start.max(r.start),
            };
            let right = FrameRange {
                start: cut.end.min(r.end),
                end: r.end,
            };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.ranges.copy_within(i + 1..self.len, i);
                    self.len -= 1;
                }
                (false, true) => {
                    self.ranges[i] = left;
                    i += 1;
                }
                (true, false) => {
                    self.ranges[i] = right;
                    i += 1;
                }
                (false, false) => {
                    if self.len == MAX_RANGES {
                        return Err(RegionError::TooManyRanges);
                    }
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i] = left;
                    self.ranges[i + 1] = right;
                    self.len += 1;
                    i += 2;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for UsableRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Totals of a boot memory map, for the boot report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapSummary {
    /// Number of regions in the map.
    pub regions: usize,
    /// Bytes in `Usable` regions, as reported.
    pub usable_bytes: u64,
    /// Bytes in `Bootloader` regions (kernel image, page tables, stack, boot info).
    pub bootloader_bytes: u64,
    /// Bytes in all other regions (firmware-reserved, ACPI, holes the firmware lists).
    pub reserved_bytes: u64,
    /// Whole frames the frame allocator may use: the usable bytes after rounding each region to
    /// whole frames, cutting out overlaps with other regions and frame 0 (see
    /// [`UsableRanges`]). The allocator's `frames_total` equals this.
    pub usable_frames: u64,
    /// Number of disjoint usable frame ranges.
    pub usable_ranges: usize,
    /// One past the highest usable byte (0 if none).
    pub usable_end: u64,
}

impl MapSummary {
    /// Summarizes a memory map. If the usable ranges overflow [`MAX_RANGES`], `usable_frames`
    /// and `usable_ranges` are 0 (and the frame allocator refuses the map as well).
    pub fn of<I>(regions: I) -> Self
    where
        I: Iterator<Item = Region> + Clone,
    {
        let mut sum = Self::default();
        for r in regions.clone() {
            let len = r.end.saturating_sub(r.start);
            sum.regions += 1;
            match r.kind {
                RegionKind::Usable => {
                    sum.usable_bytes += len;
                    sum.usable_end = sum.usable_end.max(r.end);
                }
                RegionKind::Bootloader => sum.bootloader_bytes += len,
                RegionKind::Reserved(_) => sum.reserved_bytes += len,
            }
        }
        if let Ok(ranges) = UsableRanges::from_regions(regions) {
            sum.usable_frames = ranges.frames();
            sum.usable_ranges = ranges.as_slice().len();
        }
        sum
    }
}

/// Bytes as a short human-readable size (binary units, one decimal).
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        let mut scaled = self.0;
        while scaled >= 1024 * 10 && unit + 1 < UNITS.len() {
            scaled /= 1024;
            unit += 1;
        }
        if unit + 1 < UNITS.len() && scaled >= 1024 {
            // One decimal for values between 1 and 10 of the next unit.
            let tenths = self.0 * 10 / (1u64 << (10 * (unit + 1)));
            return write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1]);
        }
        write!(f, "{scaled} {}", UNITS[unit])
    }
}

impl fmt::Display for MapSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory map: {} regions", self.regions)?;
        writeln!(
            f,
            "  usable      {:>10} in {} ranges, {} frames of 4 KiB (up to {:#x})",
            Bytes(self.usable_bytes),
            self.usable_ranges,
            self.usable_frames,
            self.usable_end
        )?;
        writeln!(f, "  bootloader  {:>10}", Bytes(self.bootloader_bytes))?;
        write!(f, "  reserved    {:>10}", Bytes(self.reserved_bytes))
    }
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn usable(start: u64, end: u64) -> Region {
        Region {
            start,
            end,
            kind: RegionKind::Usable,
        }
    }
    fn reserved(start: u64, end: u64) -> Region {
        Region {
            start,
            end,
            kind: RegionKind::Reserved(2),
        }
    }
    fn ranges(regions: &[Region]) -> Vec<(u64, u64)> {
        UsableRanges::from_regions(regions.iter().copied())
            .unwrap()
            .as_slice()
            .iter()
            .map(|r| (r.start, r.end))
            .collect()
    }

    #[test]
    fn partial_frames_and_frame_zero_are_dropped() {
        assert_eq!(ranges(&[usable(0, 0x9_fc00)]), [(1, 0x9f)]);
        assert_eq!(ranges(&[usable(0x1001, 0x3fff)]), [(2, 3)]);
        assert_eq!(ranges(&[usable(0x1800, 0x1fff)]), []);
    }

    #[test]
    fn unsorted_adjacent_regions_merge() {
        let map = [
            usable(0x5000, 0x8000),
            usable(0x1000, 0x3000),
            usable(0x3000, 0x5000),
        ];
        assert_eq!(ranges(&map), [(1, 8)]);
    }

    #[test]
    fn a_region_bridging_two_ranges_merges_all() {
        // The middle region covers whole frames 2..4 only; it still closes the gap.
        let map = [
            usable(0x1000, 0x2000),
            usable(0x4000, 0x5000),
            usable(0x1800, 0x4800),
        ];
        assert_eq!(ranges(&map), [(1, 5)]);
        let map = [
            usable(0x1000, 0x2000),
            usable(0x6000, 0x7000),
            usable(0x3000, 0x4000),
        ];
        assert_eq!(ranges(&map), [(1, 2), (3, 4), (6, 7)]);
    }

    #[test]
    fn reserved_overlap_wins() {
        let map = [usable(0x1000, 0x10000), reserved(0x3800, 0x5001)];
        assert_eq!(ranges(&map), [(1, 3), (6, 16)]);
        let map = [
            usable(0x1000, 0x10000),
            reserved(0, 0x2000),
            reserved(0xf000, 0x20000),
        ];
        assert_eq!(ranges(&map), [(2, 15)]);
        let map = [usable(0x1000, 0x4000), reserved(0, 0x10000)];
        assert_eq!(ranges(&map), []);
    }

    #[test]
    fn typical_bios_map() {
        let map = [
            usable(0, 0x9fc00),
            reserved(0x9fc00, 0xa0000),
            reserved(0xf0000, 0x100000),
            usable(0x100000, 0x400000),
            Region {
                start: 0x400000,
                end: 0x800000,
                kind: RegionKind::Bootloader,
            },
            usable(0x800000, 0x1ffe0000),
            reserved(0x1ffe0000, 0x20000000),
            reserved(0xfffc0000, 0x1_0000_0000),
        ];
        let r = UsableRanges::from_regions(map.iter().copied()).unwrap();
        assert_eq!(r.as_slice().len(), 3);
        assert_eq!(r.frames(), 0x9e + 0x300 + (0x1ffe0 - 0x800));
        assert!(r.contains(1));
        assert!(!r.contains(0));
        assert!(!r.contains(0x9f));
        assert!(r.contains(0x100));
        assert!(!r.contains(0x400));
        assert!(r.contains(0x1ffdf));
        assert!(!r.contains(0x1ffe0));
        let s = MapSummary::of(map.iter().copied());
        assert_eq!(s.regions, 8);
        assert_eq!(s.usable_frames, r.frames());
        assert_eq!(s.bootloader_bytes, 0x400000);
        assert_eq!(s.usable_end, 0x1ffe0000);
        let text = format!("{s}");
        assert!(text.contains("8 regions"), "{text}");
    }

    #[test]
    fn too_many_ranges_is_an_error() {
        let map: Vec<Region> = (0..MAX_RANGES as u64 + 1)
            .map(|i| usable((2 * i + 1) * 0x1000, (2 * i + 2) * 0x1000))
            .collect();
        assert_eq!(
            UsableRanges::from_regions(map.iter().copied()).unwrap_err(),
            RegionError::TooManyRanges
        );
        // Splitting the last free slot by a reservation also reports it.
        let mut map: Vec<Region> = (0..MAX_RANGES as u64)
            .map(|i| usable((4 * i + 1) * 0x1000, (4 * i + 4) * 0x1000))
            .collect();
        map.push(reserved(0x2000, 0x3000));
        assert_eq!(
            UsableRanges::from_regions(map.iter().copied()).unwrap_err(),
            RegionError::TooManyRanges
        );
    }

    #[test]
    fn bytes_display() {
        assert_eq!(format!("{}", Bytes(512)), "512 B");
        assert_eq!(format!("{}", Bytes(4096)), "4.0 KiB");
        assert_eq!(format!("{}", Bytes(32 * 1024 * 1024)), "32 MiB");
        assert_eq!(format!("{}", Bytes(3 * 1024 * 1024 / 2)), "1.5 MiB");
    }
}
