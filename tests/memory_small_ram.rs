//! Booting with 32 MiB of RAM: the frame allocator's totals match the boot memory map, and the
//! heap window still works.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

kernel::qemu_args!("-m 32M");

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;
use kernel::memory::{self, KernelPageSource, MapSummary};
use kheap::source::{PAGE_SIZE, PageSource};

kernel::test_kernel!(before_init = record_memory_map);

/// What the memory map said, recorded before `kernel::init` takes the boot info: the summary,
/// and the usable frames counted here independently (whole frames, frame 0 excluded).
static MAP: spin::Once<(MapSummary, u64)> = spin::Once::new();

/// The `before_init` of `kernel::test_kernel!`: runs before `kernel::init` takes the boot info.
fn record_memory_map(boot_info: &BootInfo) {
    let summary = memory::memory_map_summary(&boot_info.memory_regions);
    let frames = boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| {
            let first = r.start.max(4096).div_ceil(4096);
            let end = r.end / 4096;
            end.saturating_sub(first)
        })
        .sum();
    MAP.call_once(|| (summary, frames));
}

#[kernel::test]
fn totals_match_the_memory_map() {
    let (summary, counted) = *MAP.get().unwrap();
    let s = memory::stats();
    // The page the other CPUs start in is taken out of the map before the frame allocator.
    let reserved = kernel::smp::reserved_frames();
    assert_eq!(s.frames_total + reserved, summary.usable_frames);
    assert_eq!(s.frames_total + reserved, counted);
    assert_eq!(s.frames_total, s.frames_free + s.frames_used);
    assert!(summary.usable_bytes <= 32 << 20);
    // Most of the 32 MiB is usable: the kernel image, stack and boot info take a few MiB.
    assert!(
        s.frames_total * 4096 > 20 << 20,
        "{} usable frames",
        s.frames_total
    );
    // 8192 frames need a 1 KiB bitmap: one frame.
    assert_eq!(s.bitmap_frames, 1);
}

#[kernel::test]
fn heap_window_works_with_little_ram() {
    // Pages the window holds ahead of need (its spares and page reserve, which a run of 256
    // pages may be taken from) go first: the run below must come from fresh frames and go back
    // to them, so that the counts before and after are comparable.
    memory::release_spare_pages();
    let before = memory::stats();
    let mut source = KernelPageSource::new();
    let pages = 256; // 1 MiB
    let ptr = source.map_pages(pages).expect("1 MiB");
    // SAFETY: mapped writable for us.
    unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0x3C, pages * PAGE_SIZE) };
    // SAFETY: the run above, unreferenced.
    unsafe { source.unmap_pages(ptr, pages) };
    assert_eq!(memory::stats(), before);
}
