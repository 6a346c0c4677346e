//! Host build of the kernel's pure-logic modules, for their unit tests and for fuzzing.
//!
//! The kernel builds for `x86_64-unknown-none`, where there is no test harness. The modules of
//! `kernel/src/memory` that use no privileged instructions are compiled here a second time, for
//! the host, so that `cargo test` (or `cargo test -p kernel-host`) runs their `#[cfg(test)]`
//! tests: the window buddy allocator, the memory-map reduction, the frame allocator (over a
//! simulated physical memory arena), the page-table walker (over simulated tables, with a
//! recording TLB) and the heap window's bookkeeping (`KernelPageSource`, which takes the
//! kernel's memory lock, is left out).
//!
//! [`sim`] puts them together as a simulated machine, for the integration tests in `tests/` and
//! the fuzz target `page_source_ops` (`kernel/heap/fuzz`).
//!
//! Each module is included with `#[path]` at the crate root, so a module's `super::` reaches its
//! siblings here just as it does inside `kernel::memory`.
#![cfg_attr(not(test), no_std)]

#[path = "../src/memory/buddy.rs"]
pub mod buddy;
#[path = "../src/memory/frame.rs"]
pub mod frame;
#[path = "../src/memory/heap_window.rs"]
pub mod heap_window;
#[path = "../src/memory/lazy_unmaps.rs"]
pub mod lazy_unmaps;
#[path = "../src/memory/page_reserve.rs"]
pub mod page_reserve;
#[path = "../src/memory/paging.rs"]
pub mod paging;
#[path = "../src/memory/regions.rs"]
pub mod regions;
pub mod sim;
#[path = "../src/memory/spare_pages.rs"]
pub mod spare_pages;
