//! The kernel's page-source logic on the host: the heap window's buddy and bookkeeping, the frame
//! allocator and the page-table walker over simulated physical memory (`kernel/host`), with
//! memory made scarce at chosen points. A failed call must leave every table entry and count as
//! it was; no frame may leak. See the harness (`src/page_source.rs`) for every check. Run:
//! `cargo fuzz run page_source_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|scenario: kheap_fuzz::page_source::Scenario| {
    kheap_fuzz::page_source::run(scenario);
});
