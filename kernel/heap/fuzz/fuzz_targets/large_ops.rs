//! The heap-operation sequences of `heap_ops`, with sizes concentrated on the large allocator:
//! region blocks, the 64 KiB page-run threshold, page runs up to 512 KiB, and resizes in 64-byte
//! steps (in-place growth and shrinking, coalescing). Run: `cargo fuzz run large_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|scenario: kheap_fuzz::Scenario| {
    kheap_fuzz::run(&kheap_fuzz::LARGE_OPS, scenario);
});
