//! The in-kernel benchmark runs end to end at smoke scale: every workload on every allocator,
//! timed and verified, the latency percentiles, the frame/page-table costs, the fixed-size
//! objects, the growing vectors, heap efficiency and the several-CPU section (one CPU here), and
//! the attribution of kheap's calls. It asserts only that every replay verified and every call
//! was classified (benchmarks never assert on timings).

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use kernel_bench::{SEED, Scale, workload};

// The smoke budget is 8 MiB per allocator; 128 MiB leaves the kernel heap and frames room.
kernel::qemu_args!("-m 128M");

kernel::test_kernel!();

/// The shared generator, built for the kernel target (integer-only, no FPU), yields replayable
/// sequences at the smoke scale.
#[kernel::test]
fn smoke_workloads_are_consistent() {
    let w = &Scale::Smoke.sizes().workloads;
    let mut all = alloc::vec![
        workload::small_churn(w, SEED),
        workload::kernel_mix(w, SEED),
        workload::random_align(w, SEED),
        workload::realloc_growth(w, SEED),
    ];
    all.extend(
        w.scaling_levels
            .iter()
            .map(|&n| workload::scaling(w, n, SEED)),
    );
    for wl in &all {
        assert!(wl.is_consistent(), "{}", wl.name);
        assert!(!wl.ops.is_empty(), "{}", wl.name);
    }
    assert_eq!(
        workload::small_churn(w, SEED).digest(),
        workload::small_churn(w, SEED).digest()
    );
}

#[kernel::test]
fn smoke_benchmark_verifies_every_allocator() {
    if let Err(e) = kernel_bench::run(Scale::Smoke) {
        panic!("benchmark failed: {e}");
    }
}

/// The `attribution` section classifies every call of its replays, and reaches the paths it
/// tells apart: magazine hits, refills and the large allocator in the kernel mix (its 2000 calls
/// are too few to fill a magazine and flush it), reallocs in realloc growth.
#[kernel::test]
fn smoke_attribution_classifies_every_call() {
    let w = &Scale::Smoke.sizes().workloads;
    let all = match kernel_bench::run_attribution(Scale::Smoke) {
        Ok(all) => all,
        Err(e) => panic!("attribution failed: {e}"),
    };
    let ops = [
        workload::kernel_mix(w, SEED).ops.len(),
        workload::random_align(w, SEED).ops.len(),
        workload::realloc_growth(w, SEED).ops.len(),
    ];
    assert_eq!(all.len(), ops.len());
    for (&(name, s), ops) in all.iter().zip(ops) {
        assert_eq!(s.calls, ops, "{name}: {s:?}");
        assert_eq!(
            s.magazine + s.refill + s.give_back + s.large + s.realloc + s.other,
            s.calls,
            "{name}: {s:?}"
        );
        assert_eq!(s.other, 0, "{name}: {s:?}");
    }
    let (mix, growth) = (all[0].1, all[2].1);
    assert!(
        mix.magazine > 0 && mix.refill > 0 && mix.large > 0,
        "{mix:?}"
    );
    assert_eq!(mix.realloc, 0, "the mix has no reallocs: {mix:?}");
    assert!(growth.realloc > 0, "{growth:?}");
}
