//! Each of the heap's debug checks (`kheap` feature `debug-checks`, on in kernel test builds through
//! the kernel's default feature) fires on the misuse it is for, with a message naming the problem.
//!
//! Every misuse goes through the global allocator (`alloc::alloc::{alloc, dealloc}`) or, for user
//! pools, through the heap's own pool API, exactly as kernel code would make the mistake. Each test
//! keeps a second block of the same kind live next to the one it misuses, so the chunk or region
//! stays mapped and the check (not a page-map miss) is what catches the second free. The messages
//! are those of `kernel/heap/src/debug.rs`. The global allocator adds a red zone to every block
//! (`kheap::Checked`), so the class a misused pointer is looked up in is that of the debug layout;
//! the expected texts leave the class size out where it depends on that. Poisoning and red zones
//! have their own tests in `tests/heap_redzones.rs`.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::alloc::{alloc, dealloc, realloc};
use core::alloc::Layout;
use core::ptr::NonNull;

use kernel::allocator::HEAP;
use kernel::baseline::Baseline;

kernel::test_kernel!();

/// A layout served by the general class of 64-byte blocks.
const CLASS_64: Layout = layout(64, 8);
/// A layout served by the large allocator from a 64 KiB region (below the page-run threshold).
const REGION_BLOCK: Layout = layout(8192, 16);
/// A layout served by the large allocator as a page run of its own (64 KiB and more).
const PAGE_RUN: Layout = layout(100 * 1024, 16);

const fn layout(size: usize, align: usize) -> Layout {
    match Layout::from_size_align(size, align) {
        Ok(l) => l,
        Err(_) => panic!("invalid layout"),
    }
}

/// A fresh block of `layout` from the global allocator. The pointer goes through `black_box`, so
/// the optimiser cannot elide an allocation/free pair (LLVM treats `__rust_alloc` and
/// `__rust_dealloc` as allocation functions) and the heap really sees every call.
fn allocate(layout: Layout) -> *mut u8 {
    // SAFETY: every layout used here has a non-zero size.
    let p = core::hint::black_box(unsafe { alloc(layout) });
    assert!(!p.is_null(), "allocation of {layout:?} failed");
    p
}

/// Allocates two blocks of `layout`: one to misuse and one kept live beside it (deliberately
/// leaked: the test ends in a panic).
fn block_and_neighbour(layout: Layout) -> *mut u8 {
    let keep = allocate(layout);
    let p = allocate(layout);
    core::hint::black_box(keep);
    p
}

fn double_free_class_block() {
    let p = block_and_neighbour(CLASS_64);
    // SAFETY: the first free is valid; the second is the misuse under test.
    unsafe {
        dealloc(p, CLASS_64);
        dealloc(p, CLASS_64);
    }
}

#[kernel::test]
#[should_panic(expected = "kheap: double free of 0x")]
fn double_free_of_a_class_block() {
    double_free_class_block();
}

fn double_free_region_block() {
    let p = block_and_neighbour(REGION_BLOCK);
    // SAFETY: the first free is valid; the second is the misuse under test.
    unsafe {
        dealloc(p, REGION_BLOCK);
        dealloc(p, REGION_BLOCK);
    }
}

#[kernel::test]
#[should_panic(expected = "kheap: double free of large block 0x")]
fn double_free_of_a_large_block() {
    double_free_region_block();
}

fn double_free_page_run() {
    let p = block_and_neighbour(PAGE_RUN);
    // SAFETY: the first free is valid (and unmaps the run); the second is the misuse under test.
    unsafe {
        dealloc(p, PAGE_RUN);
        dealloc(p, PAGE_RUN);
    }
}

#[kernel::test]
#[should_panic(expected = "which is not a heap block")]
fn double_free_of_a_page_run_finds_no_heap_block() {
    double_free_page_run();
}

fn free_stack_address() {
    let local = [0u64; 8];
    let p = core::hint::black_box(local.as_ptr())
        .cast_mut()
        .cast::<u8>();
    // SAFETY: not sound on purpose: the heap never returned this stack address.
    unsafe { dealloc(p, CLASS_64) };
}

#[kernel::test]
#[should_panic(expected = "which is not a heap block (class ")]
fn free_of_a_stack_address() {
    free_stack_address();
}

static IN_THE_IMAGE: [u64; 8] = [0; 8];

fn free_static_address() {
    let p = core::hint::black_box(IN_THE_IMAGE.as_ptr())
        .cast_mut()
        .cast::<u8>();
    // SAFETY: not sound on purpose: a static in the kernel image, never returned by the heap.
    unsafe { dealloc(p, CLASS_64) };
}

#[kernel::test]
#[should_panic(expected = "which is not a heap block (class ")]
fn free_of_an_address_in_the_kernel_image() {
    free_static_address();
}

fn free_static_address_as_large() {
    let p = core::hint::black_box(IN_THE_IMAGE.as_ptr())
        .cast_mut()
        .cast::<u8>();
    // SAFETY: not sound on purpose: a static in the kernel image, never returned by the heap.
    unsafe { dealloc(p, REGION_BLOCK) };
}

#[kernel::test]
#[should_panic(expected = "align 16), which is not a heap block")]
fn large_free_of_an_address_in_the_kernel_image() {
    free_static_address_as_large();
}

fn free_interior_pointer() {
    let p = block_and_neighbour(CLASS_64);
    // SAFETY: not sound on purpose: 8 bytes into a live block.
    unsafe { dealloc(p.add(8), CLASS_64) };
}

#[kernel::test]
#[should_panic(expected = "kheap: free of interior pointer 0x")]
fn free_of_an_interior_pointer() {
    free_interior_pointer();
}

fn free_interior_pointer_of_large_block() {
    let p = block_and_neighbour(REGION_BLOCK);
    // SAFETY: the block is ours: zeroed so that no leftover bytes before the interior pointer
    // look like a block header; then the free of an interior pointer is the misuse under test.
    unsafe {
        p.write_bytes(0, REGION_BLOCK.size());
        dealloc(p.add(64), REGION_BLOCK);
    }
}

#[kernel::test]
#[should_panic(expected = "or not a block start")]
fn free_of_an_interior_pointer_of_a_large_block() {
    free_interior_pointer_of_large_block();
}

fn free_with_other_class() {
    let p = block_and_neighbour(CLASS_64);
    // SAFETY: not sound on purpose: a 64-byte class block freed as a 128-byte one.
    unsafe { dealloc(p, layout(128, 8)) };
}

#[kernel::test]
#[should_panic(expected = "B, but it belongs to a pool of")]
fn free_with_a_layout_of_another_class() {
    free_with_other_class();
}

fn free_large_block_as_class() {
    let p = block_and_neighbour(REGION_BLOCK);
    // SAFETY: not sound on purpose: a large block freed with a class layout.
    unsafe { dealloc(p, CLASS_64) };
}

#[kernel::test]
#[should_panic(expected = "B, but it is a large block (wrong layout?)")]
fn free_of_a_large_block_with_a_class_layout() {
    free_large_block_as_class();
}

fn free_class_block_as_large() {
    let p = block_and_neighbour(CLASS_64);
    // SAFETY: not sound on purpose: a class block freed with a large layout.
    unsafe { dealloc(p, REGION_BLOCK) };
}

#[kernel::test]
#[should_panic(expected = "but it is in a chunk or root page (wrong layout?)")]
fn free_of_a_class_block_with_a_large_layout() {
    free_class_block_as_large();
}

fn realloc_freed_block() {
    let p = block_and_neighbour(CLASS_64);
    // SAFETY: the free is valid; reallocating the freed block is the misuse under test.
    unsafe {
        dealloc(p, CLASS_64);
        let _ = realloc(p, CLASS_64, 256);
    }
}

#[kernel::test]
#[should_panic(expected = "kheap: double free of 0x")]
fn realloc_of_a_freed_block() {
    realloc_freed_block();
}

fn pool_free_to_wrong_pool() {
    let mut heap = HEAP.heap().lock().expect("heap initialised");
    // Two pools of the same block size: only the pool check can tell them apart.
    let a = heap.create_pool(48, 8).expect("pool a");
    let b = heap.create_pool(48, 8).expect("pool b");
    let keep = heap.pool_allocate(a).expect("block of pool a");
    let p = heap.pool_allocate(a).expect("block of pool a");
    core::hint::black_box(keep);
    // SAFETY: not sound on purpose: a block of pool `a` returned to pool `b`.
    unsafe { heap.pool_deallocate(b, p) };
}

#[kernel::test]
#[should_panic(
    expected = "48 B blocks, but it belongs to a pool of 48 B blocks (wrong layout or pool?)"
)]
fn pool_free_to_the_wrong_pool() {
    pool_free_to_wrong_pool();
}

fn pool_free_of_class_block() {
    let p = NonNull::new(block_and_neighbour(CLASS_64)).expect("non-null");
    let mut heap = HEAP.heap().lock().expect("heap initialised");
    let pool = heap.create_pool(64, 8).expect("pool");
    let keep = heap.pool_allocate(pool).expect("block");
    core::hint::black_box(keep);
    // SAFETY: not sound on purpose: a general-class block returned to a user pool.
    unsafe { heap.pool_deallocate(pool, p) };
}

#[kernel::test]
#[should_panic(expected = "64 B blocks, but it belongs to a pool of")]
fn pool_free_of_a_general_class_block() {
    pool_free_of_class_block();
}

fn pool_double_free_tiny() {
    let mut heap = HEAP.heap().lock().expect("heap initialised");
    // 3-byte blocks: a tiny chunk, whose free bitmap is what catches the double free.
    let pool = heap.create_pool(3, 1).expect("pool");
    let keep = heap.pool_allocate(pool).expect("block");
    let p = heap.pool_allocate(pool).expect("block");
    core::hint::black_box(keep);
    // SAFETY: the first free is valid; the second is the misuse under test.
    unsafe {
        heap.pool_deallocate(pool, p);
        heap.pool_deallocate(pool, p);
    }
}

#[kernel::test]
#[should_panic(expected = "kheap: double free of 0x")]
fn double_free_of_a_tiny_pool_block() {
    pool_double_free_tiny();
}

fn pool_free_to_destroyed_pool() {
    let mut heap = HEAP.heap().lock().expect("heap initialised");
    let pool = heap.create_pool(24, 8).expect("pool");
    let p = heap.pool_allocate(pool).expect("block");
    // SAFETY: valid: the block came from this pool.
    unsafe { heap.pool_deallocate(pool, p) };
    heap.destroy_pool(pool)
        .expect("an empty pool can be destroyed");
    // SAFETY: not sound on purpose: the pool no longer exists.
    unsafe { heap.pool_deallocate(pool, p) };
}

#[kernel::test]
#[should_panic(expected = "which is not a live pool of this heap")]
fn pool_free_to_a_destroyed_pool() {
    pool_free_to_destroyed_pool();
}

/// The checks stay quiet for correct use: every kind of block freed once, with its own layout or
/// pool, and the heap is consistent and gives every page back (but for the root page it maps for
/// user-pool headers, which it keeps by design: see `kernel::baseline::Baseline`).
#[kernel::test]
fn correct_frees_pass_every_check() {
    let before = Baseline::take().expect("heap initialised");
    for layout in [
        CLASS_64,
        layout(1, 1),
        layout(4096, 4096),
        REGION_BLOCK,
        PAGE_RUN,
    ] {
        let a = allocate(layout);
        let b = allocate(layout);
        // SAFETY: each block freed once, with the layout it was allocated with.
        unsafe {
            dealloc(b, layout);
            dealloc(a, layout);
        }
    }
    {
        let mut heap = HEAP.heap().lock().expect("heap initialised");
        let pool = heap.create_pool(3, 1).expect("pool");
        let p = heap.pool_allocate(pool).expect("block");
        // SAFETY: a block of this pool, freed once.
        unsafe { heap.pool_deallocate(pool, p) };
        heap.destroy_pool(pool).expect("destroy");
    }
    if let Err(e) = before.check_returned() {
        panic!("{e}");
    }
}
