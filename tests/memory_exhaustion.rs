//! Running out of physical memory with 32 MiB of RAM: the frame allocator and the heap window's
//! page source report exhaustion as errors, a failed request maps nothing, and once everything is
//! given back the counters are exactly where they started.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::qemu_args!("-m 32M");

use core::ptr::NonNull;

use kernel::memory::{self, KernelPageSource};
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
                    assert_eq!(
                        memory::stats(),
                        before,
                        "a failed map_pages({size}) changed nothing"
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
    assert_eq!(
        memory::stats(),
        start,
        "all frames, page tables and window pages came back"
    );
}

#[kernel::test]
fn frame_allocator_runs_dry_and_recovers() {
    let start = memory::stats();
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
    assert_eq!(count, start.frames_free, "every free frame was handed out");
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
