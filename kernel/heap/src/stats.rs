//! Heap statistics: a plain `Copy` snapshot of fixed size (no allocation), so the kernel can
//! take and print it while the heap is locked, exhausted or broken.
//!
//! `Display` prints a table in the spirit of `/proc/slabinfo`: one line per general class and
//! per user pool that holds chunks, then the page, byte and large-allocator totals.
#![deny(unsafe_code)]

use core::fmt;

use crate::chunk_lists::ChunkLists;
use crate::large::LargeStats;
use crate::pool::PoolId;
use crate::size_class::NUM_CLASSES;

/// User pools listed one by one in [`HeapStats::pools`]; the rest are summed in
/// [`HeapStats::other_pools`] (keeps the snapshot a fixed size).
pub const MAX_POOL_STATS: usize = 16;

/// Numbers of the blocks of one size: a general class's, or a user pool's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Block size in bytes.
    pub block_size: usize,
    /// Blocks allocated.
    pub in_use: usize,
    /// Free blocks in its chunks (the cached ones included).
    pub free: usize,
    /// Of the free blocks, those held in its magazine.
    pub cached: usize,
    /// Chunks.
    pub chunks: usize,
    /// Pages those chunks occupy (one per chunk).
    pub pages: usize,
}

impl BlockStats {
    /// The numbers of `lists`, of whose blocks handed out of chunks `cached` sit in a magazine.
    pub(crate) fn of(lists: &ChunkLists, cached: usize) -> Self {
        let c = lists.counts();
        Self {
            block_size: usize::from(lists.geo.stride),
            in_use: c.live - cached,
            free: c.free + cached,
            cached,
            chunks: c.chunks,
            pages: c.chunks,
        }
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.in_use += other.in_use;
        self.free += other.free;
        self.cached += other.cached;
        self.chunks += other.chunks;
        self.pages += other.pages;
    }
}

/// Numbers of one user pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPoolStats {
    /// The pool.
    pub id: PoolId,
    /// Object size it was created with.
    pub object_size: usize,
    /// Object alignment it was created with.
    pub object_align: usize,
    /// Its blocks and chunks.
    pub blocks: BlockStats,
}

/// Pages the heap holds from its page source, by use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Root runs (heap state, descriptors, pool headers).
    pub root: usize,
    /// Chunks of all pools, with the empty ones waiting to be released.
    pub chunks: usize,
    /// Page-map nodes.
    pub page_map: usize,
    /// Large-allocator regions and page runs.
    pub large: usize,
    /// All of the above.
    pub total: usize,
}

/// A snapshot of the heap (see [`Heap::stats`](crate::Heap::stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// The general size classes, in class order.
    pub classes: [BlockStats; NUM_CLASSES],
    /// The first [`MAX_POOL_STATS`] user pools (most recently created first).
    pub pools: [Option<UserPoolStats>; MAX_POOL_STATS],
    /// Number of user pools.
    pub user_pools: usize,
    /// Sum over the user pools not listed in `pools` (`block_size` is 0).
    pub other_pools: BlockStats,
    /// Pages held, by use.
    pub pages: PageStats,
    /// Sum of the sizes requested by live allocations (layout sizes, pool object sizes).
    pub requested_bytes: usize,
    /// Bytes those allocations hold: block sizes, plus the usable size of large blocks.
    pub held_bytes: usize,
    /// The large allocator's numbers (free bytes, largest free block, regions, page runs).
    pub large: LargeStats,
}

impl Default for HeapStats {
    fn default() -> Self {
        Self {
            classes: [BlockStats::default(); NUM_CLASSES],
            pools: [None; MAX_POOL_STATS],
            user_pools: 0,
            other_pools: BlockStats::default(),
            pages: PageStats::default(),
            requested_bytes: 0,
            held_bytes: 0,
            large: LargeStats::default(),
        }
    }
}

/// `part / whole` in tenths of a percent, printed as `12.3%`.
struct Percent(usize, usize);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            return f.write_str("-");
        }
        let permille = (self.0 as u128 * 1000 / self.1 as u128) as usize;
        write!(f, "{}.{}%", permille / 10, permille % 10)
    }
}

/// A row label formatted on the stack (no allocation), truncated to its capacity.
struct Label {
    bytes: [u8; 32],
    len: usize,
}

impl fmt::Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Truncates; `as_str` drops a character cut in half.
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Label {
    fn new(args: fmt::Arguments<'_>) -> Self {
        let mut l = Self {
            bytes: [0; 32],
            len: 0,
        };
        let _ = fmt::Write::write_fmt(&mut l, args);
        l
    }

    fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.bytes[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

fn row(f: &mut fmt::Formatter<'_>, name: fmt::Arguments<'_>, p: &BlockStats) -> fmt::Result {
    writeln!(
        f,
        "{:<18} {:>6} {:>10} {:>10} {:>7} {:>8} {:>8} {:>7}",
        Label::new(name).as_str(),
        p.block_size,
        p.in_use,
        p.free,
        p.cached,
        p.chunks,
        p.pages,
        Percent(p.in_use, p.in_use + p.free)
    )
}

impl fmt::Display for HeapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<18} {:>6} {:>10} {:>10} {:>7} {:>8} {:>8} {:>7}",
            "# name", "block", "in-use", "free", "cached", "chunks", "pages", "used"
        )?;
        for p in self.classes.iter().filter(|p| p.chunks > 0) {
            row(f, format_args!("class-{}", p.block_size), p)?;
        }
        for u in self.pools.iter().flatten().filter(|u| u.blocks.chunks > 0) {
            row(
                f,
                format_args!(
                    "pool#{} ({}/{})",
                    u.id.generation(),
                    u.object_size,
                    u.object_align
                ),
                &u.blocks,
            )?;
        }
        if self.other_pools.chunks > 0 {
            row(f, format_args!("other pools"), &self.other_pools)?;
        }
        let p = &self.pages;
        writeln!(
            f,
            "pages: {} ({} KiB): root {}, chunks {}, page map {}, large {}",
            p.total,
            p.total * 4,
            p.root,
            p.chunks,
            p.page_map,
            p.large
        )?;
        writeln!(
            f,
            "bytes: {} requested, {} held ({} of held is rounding), {} user pools",
            self.requested_bytes,
            self.held_bytes,
            Percent(
                self.held_bytes.saturating_sub(self.requested_bytes),
                self.held_bytes
            ),
            self.user_pools
        )?;
        let l = &self.large;
        writeln!(
            f,
            "large: {} blocks ({} B usable); {} regions ({} B, {} B free, largest free {} B); \
             {} page runs ({} pages)",
            l.live_blocks,
            l.live_bytes,
            l.regions,
            l.region_bytes,
            l.free_bytes,
            l.largest_free,
            l.page_runs,
            l.page_run_pages
        )
    }
}
