//! User pools through their public API: `PoolAllocator` (create, alloc, free, destroy, and the
//! `Allocator` trait) and typed `ObjectPool`s (`PoolBox`, `allocate_raw`/`deallocate_raw`, drop), many
//! pools at once, general blocks in between, page-source refusals chosen by the input; every
//! byte patterned and checked, every drop counted, the heap's invariant checker after every
//! step. See the harness (`src/pools.rs`). Run: `cargo fuzz run pool_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|scenario: kheap_fuzz::pools::Scenario| {
    kheap_fuzz::pools::run(scenario);
});
