//! Running out of physical memory with 32 MiB of RAM: the frame allocator and the heap window's
//! page source report exhaustion as errors, a failed request maps nothing — also when it runs out
//! right at a page-table boundary, with every number of free frames — and once everything is
//! given back the counters are exactly where they started. The window's spare pages (mapped,
//! not the heap's) are released before the window reports a shortage.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::qemu_args!("-m 32M");

use core::ops::RangeInclusive;
use core::ptr::NonNull;

use kernel::memory::bench_support::FrameHoard;
use kernel::memory::{self, KernelPageSource, MemoryStats};
use kheap::source::{PAGE_SIZE, PageSource, PageSourceError};
use x86_64::structures::paging::PhysFrame;

kernel::test_kernel!();

/// Runs mapped by the test: 32 MiB is at most 128 runs of 64 pages, then fewer than 64 + a few
/// single pages.
const MAX_RUNS: usize = 1024;

/// The test's own list of runs (no heap: the heap lives on the same frames).
static RUNS: spin::Mutex<[(usize, usize); MAX_RUNS]> = spin::Mutex::new([(0, 0); MAX_RUNS]);

#[kernel::test]
fn page_source_runs_dry_without_partial_mappings_and_recovers() {
    memory::release_spare_pages();
    let start = memory::stats();
    let mut source = KernelPageSource::new();
    let mut runs = RUNS.lock();
    let mut count = 0;
    // Big runs first, then single pages to use up the rest.
    for size in [64usize, 1] {
        loop {
            let before = memory::stats();
            match source.map_pages(size) {
                Ok(ptr) => {
                    // Touch every page: the memory must be real.
                    for p in 0..size {
                        // SAFETY: the run is mapped writable for us.
                        unsafe { ptr.as_ptr().add(p * PAGE_SIZE).write_volatile(p as u8) };
                    }
                    runs[count] = (ptr.as_ptr() as usize, size);
                    count += 1;
                }
                Err(error) => {
                    assert_eq!(error, PageSourceError::OutOfMemory);
                    let after = memory::stats();
                    // Nothing mapped for the heap; the spares (left by single-page batches)
                    // were released, with their frames and the tables only they kept.
                    let released = before.window_pages_spare
                        + (before.page_table_frames - after.page_table_frames);
                    assert_eq!(
                        after,
                        MemoryStats {
                            frames_free: before.frames_free + released,
                            frames_used: before.frames_used - released,
                            page_table_frames: after.page_table_frames,
                            window_pages_spare: 0,
                            ..before
                        },
                        "a failed map_pages({size}) changed nothing but the spares"
                    );
                    break;
                }
            }
        }
    }
    let dry = memory::stats();
    assert!(count > 1);
    assert!(dry.window_pages_mapped > start.window_pages_mapped);
    // Whatever is left cannot back even one more page with its page table.
    assert!(
        dry.frames_free <= 3,
        "{} frames still free",
        dry.frames_free
    );
    for &(addr, size) in runs[..count].iter().rev() {
        let ptr = NonNull::new(addr as *mut u8).unwrap();
        // SAFETY: runs mapped above, no longer referenced.
        unsafe { source.unmap_pages(ptr, size) };
    }
    // Single pages given back became spares (up to the bound).
    assert!(memory::stats().window_pages_spare > 0);
    memory::release_spare_pages();
    assert_eq!(
        memory::stats(),
        start,
        "all frames, page tables and window pages came back"
    );
}

#[kernel::test]
fn frame_allocator_runs_dry_and_recovers() {
    let spares = memory::stats().window_pages_spare;
    let mut start = memory::stats();
    let offset = memory::physical_memory_offset().unwrap();
    // Chain every frame through its first word: the list needs no memory of its own.
    let mut head: Option<PhysFrame> = None;
    let mut count = 0u64;
    while let Some(frame) = memory::allocate_frame() {
        let word = (offset + frame.start_address().as_u64()).as_mut_ptr::<u64>();
        let link = head.map_or(0, |f| f.start_address().as_u64());
        // SAFETY: the frame is ours, reached through the physical-memory mapping.
        unsafe { word.write_volatile(link) };
        head = Some(frame);
        count += 1;
    }
    // The window's spares were released when the frames ran out, and their frames handed out
    // too (with those of any page table only they kept).
    let after = memory::stats();
    let tables = start.page_table_frames - after.page_table_frames;
    assert_eq!(after.window_pages_spare, 0);
    assert_eq!(
        count,
        start.frames_free + spares + tables,
        "every free frame was handed out"
    );
    start.frames_free += spares + tables;
    start.frames_used -= spares + tables;
    start.page_table_frames -= tables;
    start.window_pages_spare = 0;
    assert_eq!(memory::stats().frames_free, 0);
    assert!(memory::allocate_frame().is_none());
    while let Some(frame) = head {
        let word = (offset + frame.start_address().as_u64()).as_ptr::<u64>();
        // SAFETY: as above.
        let next = unsafe { word.read_volatile() };
        head = (next != 0).then(|| PhysFrame::containing_address(x86_64::PhysAddr::new(next)));
        // SAFETY: the frame came from the allocator and is no longer used.
        unsafe { memory::deallocate_frame(frame) };
    }
    assert_eq!(memory::stats(), start);
}

/// Memory counters, with the page-table audit checked: every table of the mapper is linked and
/// holds something.
fn audited_stats() -> MemoryStats {
    let stats = memory::stats();
    let audit = memory::page_table_audit();
    assert!(
        audit.is_exact(stats.page_table_frames),
        "{audit}, the mapper counts {}",
        stats.page_table_frames
    );
    stats
}

/// Tries `attempt` with each number of free frames in `frees`, fewest first, until it succeeds:
/// every failure must leave the memory counters (frames, page tables, window) exactly as they
/// were. Returns how many frames it took.
fn fails_cleanly_until_it_fits(
    what: &str,
    frees: RangeInclusive<u64>,
    mut attempt: impl FnMut() -> bool,
) -> u64 {
    let mut hoard = FrameHoard::new();
    let limit = *frees.end();
    for free in frees {
        hoard.keep_free(free);
        let before = audited_stats();
        let done = attempt();
        if done {
            hoard.release();
            return free;
        }
        let after = audited_stats();
        hoard.release();
        assert_eq!(
            after, before,
            "{what} failing with {free} frames free changed the memory counters"
        );
    }
    panic!("{what} did not succeed with {limit} frames free");
}

#[kernel::test]
fn failed_maps_at_page_table_boundaries_change_nothing() {
    let start = audited_stats();
    let mut source = KernelPageSource::new();
    // A 512-page run fills one 2 MiB span (runs are aligned to their size).
    let run = source.map_pages(512).expect("2 MiB");
    // Growing it by one page goes into the next span, where nothing is mapped: the page needs a
    // new page table, and a failure maps no page of that span.
    let took = fails_cleanly_until_it_fits("growing a full 2 MiB run by a page", 0..=8, || {
        source.grow_pages(run, 512, 1)
    });
    assert!(
        (1..=3).contains(&took),
        "{took} frames for a page and its table"
    );
    // 513 pages span two fresh page tables: running out right after the boundary (with 514 or
    // 515 frames free: the first table, 512 pages and the second table), or just before it.
    let mut pair = None;
    let frees = 500..=520;
    let took = fails_cleanly_until_it_fits("mapping 513 pages over two page tables", frees, || {
        pair = source.map_pages(513).ok();
        pair.is_some()
    });
    assert!((515..=516).contains(&took), "{took} frames for 513 pages");
    // SAFETY: the runs mapped above, never referenced.
    unsafe {
        source.unmap_pages(pair.unwrap(), 513);
        source.unmap_pages(run, 513);
    }
    assert_eq!(audited_stats(), start, "everything came back");
}
