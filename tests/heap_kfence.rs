//! Sampled guard pages (`kernel::kfence`): sampled objects end at a page boundary followed by an
//! unmapped page, or start at one preceded by an unmapped page, so an overflow or an underflow
//! faults at once with a report naming the allocation; freed objects are unmapped, so a use after
//! free faults too; and sampling is harmless otherwise. Faults at each edge of the kfence area
//! (the guard below slot 0, the first and the last slot, the guard above the last slot) are
//! reported against the right object, and one just past the area, at the start of the heap
//! window's guard, is an ordinary page fault.

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

use kernel::kfence::{KFENCE_BASE, KFENCE_END, KFENCE_START, SLOTS};
use kernel::memory::HEAP_GUARD_START;
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

/// Size of the objects that fill every slot in the edge tests.
const EDGE_OBJECT: usize = 48;

/// Fills every kfence slot with a 48-byte object, in slot order: slot 0's at the start of its
/// page, every other one at the end. Returns the objects, `[0]` in slot 0.
fn fill_every_slot() -> [*mut u8; SLOTS] {
    assert_eq!(kfence::stats().live, 0, "kfence slots in use");
    let layout = Layout::from_size_align(EDGE_OBJECT, 8).unwrap();
    let mut objects = [core::ptr::null_mut(); SLOTS];
    kfence::enable(1);
    for (i, object) in objects.iter_mut().enumerate() {
        kfence::set_placement(if i == 0 {
            kfence::Placement::Start
        } else {
            kfence::Placement::End
        });
        // SAFETY: a non-zero size.
        *object = black_box(unsafe { alloc(layout) });
        assert!(
            kfence::contains(object.addr()),
            "object {i} was not sampled"
        );
    }
    kfence::enable(0);
    kfence::set_placement(kfence::Placement::Alternate);
    assert_eq!(
        objects[0].addr() as u64,
        KFENCE_BASE,
        "slot 0, at its page start"
    );
    assert_eq!(
        objects[SLOTS - 1].addr() as u64,
        KFENCE_END - 4096 - EDGE_OBJECT as u64,
        "the last slot, at its page end"
    );
    objects
}

#[kernel::test]
fn faults_at_each_edge_of_the_kfence_area_name_the_right_object() {
    allocator::trim();
    let before = allocator::footprint();
    let objects = fill_every_slot();
    let (first, last) = (objects[0].addr(), objects[SLOTS - 1].addr());
    let report = |addr: u64| kfence::report_fault(addr as usize);
    // Outside the area: below its first guard, and the heap window's guard right after it.
    assert_eq!(KFENCE_END, HEAP_GUARD_START);
    assert_eq!(report(KFENCE_START - 1), None);
    assert_eq!(
        report(HEAP_GUARD_START),
        None,
        "the heap guard's first byte"
    );
    assert_eq!(report(HEAP_GUARD_START + 4095), None);
    assert_eq!(report(HEAP_GUARD_START + 4096), None);
    // The guard below slot 0: an underflow of its start-placed object.
    for addr in [KFENCE_START, KFENCE_START + 4095] {
        assert_eq!(
            report(addr),
            Some(("out-of-bounds access before", first, EDGE_OBJECT)),
            "{addr:#x}"
        );
    }
    // The first and the last slot's pages (faults there happen after a free).
    assert_eq!(
        report(KFENCE_BASE + 17),
        Some(("use-after-free of", first, EDGE_OBJECT))
    );
    assert_eq!(
        report(KFENCE_END - 2 * 4096),
        Some(("use-after-free of", last, EDGE_OBJECT))
    );
    // The guard above the last slot, the area's last page: an overflow of its end-placed object.
    for addr in [KFENCE_END - 4096, KFENCE_END - 1] {
        assert_eq!(
            report(addr),
            Some(("out-of-bounds access past", last, EDGE_OBJECT)),
            "{addr:#x}"
        );
    }
    let layout = Layout::from_size_align(EDGE_OBJECT, 8).unwrap();
    for object in objects {
        // SAFETY: allocated by `fill_every_slot` with this layout, not used again.
        unsafe { dealloc(object, layout) };
    }
    assert_eq!(kfence::stats().live, 0);
    allocator::trim();
    assert_eq!(allocator::footprint(), before, "slot pages not returned");
}

fn overflow_past_the_last_slot() {
    let objects = fill_every_slot();
    // SAFETY: deliberately not sound: writes one byte past the last slot's object, into the
    // guard page that is the kfence area's last page.
    unsafe { objects[SLOTS - 1].add(EDGE_OBJECT).write_volatile(1) };
}

#[kernel::test]
#[should_panic(
    expected = "kfence: out-of-bounds access past the 48-byte allocation at 0xffffc0003fffefd0"
)]
fn overflow_past_the_last_slot_faults() {
    overflow_past_the_last_slot();
}

fn access_at_the_heap_guard_start() {
    let p = HEAP_GUARD_START as *mut u8;
    // SAFETY: deliberately not sound: the heap window's guard area is never mapped.
    unsafe { black_box(p).write_volatile(1) };
}

#[kernel::test]
#[should_panic(expected = "EXCEPTION: PAGE FAULT accessing 0xffffc00040000000")]
fn a_fault_at_the_heap_guard_start_is_a_plain_page_fault() {
    access_at_the_heap_guard_start();
}
