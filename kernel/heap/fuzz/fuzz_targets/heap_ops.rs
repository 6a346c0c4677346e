//! Arbitrary sequences of every heap operation, sizes over every class and the large allocator
//! (up to 384 KiB), alignments up to 64 KiB, page-source refusals chosen by the input. See the
//! harness (`src/lib.rs`) for what is checked. Run: `cargo fuzz run heap_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|scenario: kheap_fuzz::Scenario| {
    kheap_fuzz::run(&kheap_fuzz::HEAP_OPS, scenario);
});
