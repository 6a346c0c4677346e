//! Sampled guard pages (`kernel::kfence`): sampled objects end at a page boundary followed by an
//! unmapped page, or start at one preceded by an unmapped page, so an overflow or an underflow
//! faults at once with a report naming the allocation; freed objects are unmapped, so a use after
//! free faults too; and sampling is harmless otherwise.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::hint::black_box;

use kernel::{allocator, kfence};

kernel::test_kernel!();

#[kernel::test]
fn sampled_objects_work_and_their_pages_come_back() {
    allocator::trim();
    let before = allocator::footprint();
    let start = kfence::stats();
    kfence::enable(3);
    let mut boxes: Vec<Box<[u8]>> = Vec::new();
    for i in 0..600usize {
        boxes.push(alloc::vec![i as u8; 1 + (i * 37) % 2000].into_boxed_slice());
    }
    let during = kfence::stats();
    assert!(
        during.sampled > start.sampled + 20,
        "too few sampled: {during:?}"
    );
    assert!(during.live > 0);
    for (i, b) in boxes.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8), "block {i} corrupted");
    }
    // By default sampled objects alternate between the start and the end of their page.
    let guarded = |at_start: bool| {
        boxes
            .iter()
            .filter(|b| kfence::contains(b.as_ptr().addr()))
            .filter(|b| {
                let (start, end) = (b.as_ptr().addr(), b.as_ptr().addr() + b.len());
                if at_start {
                    start % 4096 == 0
                } else {
                    end % 4096 == 0
                }
            })
            .count()
    };
    assert!(
        guarded(true) > 5 && guarded(false) > 5,
        "both placements are used"
    );
    // Growing through realloc moves sampled objects out of their slots correctly.
    let mut v: Vec<u32> = Vec::new();
    for i in 0..5000 {
        v.push(i);
    }
    assert!(v.iter().copied().eq(0..5000));
    drop(v);
    drop(boxes);
    kfence::enable(0);
    assert_eq!(kfence::stats().live, 0);
    allocator::trim();
    assert_eq!(
        allocator::footprint(),
        before,
        "frames or pages not returned"
    );
}

fn overflow_past_a_sampled_object() {
    kfence::set_placement(kfence::Placement::End);
    kfence::enable(1);
    let layout = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: deliberately not sound: writes one byte past the object, which must fault.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(kfence::contains(p.addr()), "the allocation was not sampled");
        p.add(24).write_volatile(1);
    }
}

#[kernel::test]
#[should_panic(expected = "kfence: out-of-bounds access past the 24-byte allocation at 0x")]
fn overflow_past_a_sampled_object_faults() {
    overflow_past_a_sampled_object();
}

fn underflow_before_a_sampled_object() {
    kfence::set_placement(kfence::Placement::Start);
    kfence::enable(1);
    let layout = Layout::from_size_align(40, 8).unwrap();
    // SAFETY: deliberately not sound: writes one byte before the object, which must fault.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(kfence::contains(p.addr()), "the allocation was not sampled");
        p.sub(1).write_volatile(1);
    }
}

#[kernel::test]
#[should_panic(expected = "kfence: out-of-bounds access before the 40-byte allocation at 0x")]
fn underflow_before_a_sampled_object_faults() {
    underflow_before_a_sampled_object();
}

fn use_after_free_of_a_sampled_object() {
    kfence::enable(1);
    let layout = Layout::from_size_align(100, 4).unwrap();
    // SAFETY: deliberately not sound: reads the object after freeing it, which must fault.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(kfence::contains(p.addr()), "the allocation was not sampled");
        dealloc(p, layout);
        black_box(black_box(p).read_volatile());
    }
}

#[kernel::test]
#[should_panic(expected = "kfence: use-after-free of the 100-byte allocation at 0x")]
fn use_after_free_of_a_sampled_object_faults() {
    use_after_free_of_a_sampled_object();
}

fn double_free_of_a_sampled_object() {
    kfence::enable(1);
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: deliberately not sound: frees the object twice.
    unsafe {
        let p = black_box(alloc(layout));
        assert!(kfence::contains(p.addr()), "the allocation was not sampled");
        dealloc(p, layout);
        dealloc(p, layout);
    }
}

#[kernel::test]
#[should_panic(expected = "kheap: double free of 0x")]
fn double_free_of_a_sampled_object_is_reported() {
    double_free_of_a_sampled_object();
}
