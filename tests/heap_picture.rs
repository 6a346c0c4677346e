//! The heap picture: a test kernel draws its heap (chunks of several classes and a user pool,
//! large regions with holes, a page run), and the runner writes it as an SVG under
//! `target/heap-pictures/` (boot/host's runner test checks the file).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;

use kernel::{allocator, heap_picture};

kernel::test_kernel!();

#[kernel::test]
fn draws_a_fragmented_heap() {
    let mut small: Vec<Box<[u8; 48]>> = (0..600).map(|i| Box::new([i as u8; 48])).collect();
    // Every other block freed: half-full chunks.
    let mut i = 0;
    small.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    let mut large: Vec<Vec<u8>> = (0..12)
        .map(|i| alloc::vec![i as u8; 3000 + i * 900])
        .collect();
    // Holes in the regions.
    for j in (0..large.len()).step_by(3) {
        large[j] = Vec::new();
    }
    let run = alloc::vec![7u8; 300 * 1024];
    let pool = kheap::ObjectPool::<[u64; 5], _, _>::new(allocator::HEAP.heap()).unwrap();
    let pooled: Vec<_> = (0..50).map(|i| pool.allocate([i; 5]).unwrap()).collect();
    heap_picture::emit("fragmented");
    assert_eq!(small.len(), 300);
    assert_eq!(run[1000] + pooled[3][0] as u8, 10);
    drop((small, large, run, pooled));
}
