//! The physical frame allocator in a booted kernel: frames come back, are reused, lie in usable
//! memory, are really RAM, and misuse (double free, freeing reserved memory) panics with the
//! frame's address.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

use bootloader_api::BootInfo;
use bootloader_api::info::MemoryRegionKind;
use kernel::memory::{self, allocate_frame, deallocate_frame};
use x86_64::PhysAddr;
use x86_64::structures::paging::PhysFrame;

kernel::test_kernel!(before_init = record_usable_regions);

/// Most usable regions remembered from the boot memory map.
const MAX_USABLE: usize = 64;

/// The usable regions of the boot memory map, copied before `kernel::init` takes the boot info.
static USABLE: spin::Once<([(u64, u64); MAX_USABLE], usize)> = spin::Once::new();

/// The `before_init` of `kernel::test_kernel!`: runs before `kernel::init` takes the boot info.
fn record_usable_regions(boot_info: &BootInfo) {
    let mut usable = [(0, 0); MAX_USABLE];
    let mut count = 0;
    for r in boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
    {
        usable[count.min(MAX_USABLE - 1)] = (r.start, r.end);
        count += 1;
    }
    assert!(
        count <= MAX_USABLE,
        "more usable regions than the test remembers"
    );
    USABLE.call_once(|| (usable, count));
}

fn in_usable_memory(frame: PhysFrame) -> bool {
    let (regions, count) = USABLE.get().expect("usable regions recorded");
    let start = frame.start_address().as_u64();
    start != 0
        && regions[..*count]
            .iter()
            .any(|&(s, e)| s <= start && start + 4096 <= e)
}

/// Pointer to the first word of `frame` through the physical-memory mapping.
fn frame_word(frame: PhysFrame) -> *mut u64 {
    let offset = memory::physical_memory_offset().expect("memory initialized");
    (offset + frame.start_address().as_u64()).as_mut_ptr()
}

#[kernel::test]
fn stats_add_up() {
    let s = memory::stats();
    assert!(s.frames_total > 0);
    assert_eq!(s.frames_total, s.frames_free + s.frames_used);
    assert!(s.bitmap_frames >= 1);
    assert!(s.frames_used >= s.bitmap_frames + s.page_table_frames);
}

#[kernel::test]
fn frame_comes_back() {
    let before = memory::stats();
    let frame = allocate_frame().expect("a frame");
    assert_eq!(memory::stats().frames_free, before.frames_free - 1);
    // SAFETY: the frame came from the allocator and is not used.
    unsafe { deallocate_frame(frame) };
    assert_eq!(memory::stats(), before);
}

#[kernel::test]
fn freed_frame_is_reused_first() {
    let a = allocate_frame().expect("a frame");
    // SAFETY: unused frame from the allocator.
    unsafe { deallocate_frame(a) };
    let b = allocate_frame().expect("a frame");
    assert_eq!(a, b);
    // SAFETY: unused frame from the allocator.
    unsafe { deallocate_frame(b) };
}

#[kernel::test]
fn frames_are_distinct_usable_ram() {
    const N: usize = 2000;
    let before = memory::stats();
    let mut frames = [PhysFrame::containing_address(PhysAddr::zero()); N];
    for (i, slot) in frames.iter_mut().enumerate() {
        let frame = allocate_frame().expect("a frame");
        assert!(
            in_usable_memory(frame),
            "frame {:#x} outside usable memory",
            frame.start_address()
        );
        // SAFETY: the frame is ours and mapped through the physical-memory mapping.
        unsafe { frame_word(frame).write_volatile(i as u64 ^ 0x5A5A_0000) };
        *slot = frame;
    }
    // Every frame still holds its own pattern: no frame was handed out twice.
    for (i, frame) in frames.iter().enumerate() {
        // SAFETY: as above.
        let word = unsafe { frame_word(*frame).read_volatile() };
        assert_eq!(word, i as u64 ^ 0x5A5A_0000);
    }
    assert_eq!(memory::stats().frames_free, before.frames_free - N as u64);
    for frame in frames {
        // SAFETY: unused frames from the allocator.
        unsafe { deallocate_frame(frame) };
    }
    assert_eq!(memory::stats(), before);
}

fn double_free() {
    let frame = allocate_frame().expect("a frame");
    // SAFETY: not sound on purpose: the second free must panic before it touches anything.
    unsafe {
        deallocate_frame(frame);
        deallocate_frame(frame);
    }
}

#[kernel::test]
#[should_panic(expected = "double free of frame 0x")]
fn double_free_panics_naming_the_frame() {
    double_free();
}

fn free_frame_zero() {
    // SAFETY: not sound on purpose: frame 0 is never usable memory, the free must panic.
    unsafe { deallocate_frame(PhysFrame::containing_address(PhysAddr::zero())) };
}

#[kernel::test]
#[should_panic(expected = "freeing frame 0x0, which is not usable memory")]
fn freeing_reserved_memory_panics() {
    free_frame_zero();
}
