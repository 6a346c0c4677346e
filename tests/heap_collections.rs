//! The kernel heap as `#[global_allocator]`: the `alloc` collections work on it, and after a
//! workload every chunk and page goes back (heap pages and free frames return to where they were).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use kernel::allocator;

kernel::test_kernel!();

/// Runs `workload`, then checks that the heap gave back every page it took for it and that the
/// free-frame count is back where it started.
fn returns_everything(workload: impl FnOnce()) {
    allocator::trim();
    let before = allocator::footprint();
    workload();
    allocator::trim();
    allocator::check_invariants();
    let after = allocator::footprint();
    assert_eq!(
        after, before,
        "heap footprint (heap pages, free frames) not restored: before {before:?}, after {after:?}"
    );
}

#[kernel::test]
fn box_holds_a_value() {
    returns_everything(|| {
        let a = Box::new(41u64);
        let b = Box::new([7u8; 3000]);
        assert_eq!(*a + 1, 42);
        assert!(b.iter().all(|&x| x == 7));
    });
}

#[kernel::test]
fn vec_grows_to_several_mib() {
    returns_everything(|| {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..(4 << 20) / 8 {
            v.push(i as u64 ^ 0x5A5A);
        }
        assert_eq!(v.len(), 512 * 1024);
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, i as u64 ^ 0x5A5A);
        }
    });
}

#[kernel::test]
fn string_formatting_and_growth() {
    returns_everything(|| {
        let mut s = String::new();
        for i in 0..10_000 {
            write!(s, "{i},").unwrap();
        }
        assert!(s.starts_with("0,1,2,3,"));
        assert!(s.ends_with("9998,9999,"));
        assert_eq!(s.matches(',').count(), 10_000);
    });
}

#[kernel::test]
fn btreemap_with_100k_entries() {
    returns_everything(|| {
        let mut map = BTreeMap::new();
        for i in 0u64..100_000 {
            map.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i);
        }
        assert_eq!(map.len(), 100_000);
        for i in (0u64..100_000).step_by(97) {
            assert_eq!(map.get(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15)), Some(&i));
        }
        for i in (0u64..100_000).step_by(2) {
            map.remove(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert_eq!(map.len(), 50_000);
    });
}

#[kernel::test]
fn vecdeque_with_100k_elements() {
    returns_everything(|| {
        let mut q = VecDeque::new();
        for i in 0u32..100_000 {
            if i % 2 == 0 {
                q.push_back(i);
            } else {
                q.push_front(i);
            }
        }
        assert_eq!(q.len(), 100_000);
        let mut sum = 0u64;
        while let Some(x) = q.pop_front() {
            sum += u64::from(x);
        }
        assert_eq!(sum, (0u64..100_000).sum());
    });
}

#[kernel::test]
fn many_long_lived_and_short_lived_objects() {
    returns_everything(|| {
        let mut long_lived: Vec<Box<[u8]>> = Vec::new();
        for round in 0..200usize {
            // A few long-lived objects of assorted sizes per round ...
            for k in 0..20usize {
                let size = 1 + (round * 31 + k * 17) % 700;
                long_lived.push(alloc::vec![(round + k) as u8; size].into_boxed_slice());
            }
            // ... among many short-lived ones.
            let short: Vec<Box<[u8]>> = (0..100usize)
                .map(|k| alloc::vec![k as u8; 8 + (k * 13) % 300].into_boxed_slice())
                .collect();
            for (k, b) in short.iter().enumerate() {
                assert!(b.iter().all(|&x| x == k as u8));
            }
        }
        for (i, b) in long_lived.iter().enumerate() {
            let (round, k) = (i / 20, i % 20);
            assert!(b.iter().all(|&x| x == (round + k) as u8));
        }
    });
}
