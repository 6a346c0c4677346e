//! Every CPU QEMU gives the kernel comes up (`-smp 4`, multi-threaded TCG): distinct CPU ids,
//! each on its own stack above a guard page, IPIs reach every CPU, `run_on_all` runs everywhere,
//! a CPU that does not answer is reported and the others go on, and a stack overflow on another
//! CPU is caught by its guard page and double-fault stack.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kernel::cpu::clock::Deadline;
use kernel::smp::{self, ipi};
use x86_64::VirtAddr;

kernel::qemu_args!("-smp 4 -accel tcg,thread=multi");
kernel::test_kernel!();

const CPUS: usize = 4;
const PAGE: u64 = 4096;

fn stack_pointer() -> u64 {
    let rsp: u64;
    // SAFETY: reads the stack pointer register; no memory, no flags.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
    };
    rsp
}

#[kernel::test]
fn every_cpu_comes_online_with_a_distinct_id() {
    let summary = smp::summary();
    kernel::serial_println!("{summary}");
    assert_eq!(smp::online_count(), CPUS, "{summary}");
    assert_eq!(summary.failed().count(), 0, "{summary}");
    assert_eq!(smp::cpu_id(), 0, "the boot CPU is CPU 0");
    let seen = AtomicU64::new(0);
    let runs = AtomicUsize::new(0);
    smp::run_on_all(&|| {
        let bit = 1u64 << smp::cpu_id();
        assert_eq!(
            seen.fetch_or(bit, Ordering::SeqCst) & bit,
            0,
            "cpu_id {} twice",
            smp::cpu_id()
        );
        runs.fetch_add(1, Ordering::SeqCst);
    })
    .expect("run_on_all");
    assert_eq!(runs.load(Ordering::SeqCst), CPUS);
    assert_eq!(seen.load(Ordering::SeqCst), (1 << CPUS) - 1);
    let mut apic_ids = [u32::MAX; CPUS];
    for i in 0..CPUS {
        let info = smp::cpu(i).expect("cpu online");
        assert_eq!(info.index, i);
        assert!(
            !apic_ids[..i].contains(&info.apic_id),
            "APIC id {} twice",
            info.apic_id
        );
        apic_ids[i] = info.apic_id;
    }
    assert_eq!(smp::online_mask(), (1 << CPUS) - 1);
}

#[kernel::test]
fn each_cpu_runs_on_its_own_stack_above_a_guard_page() {
    let rsp: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];
    smp::run_on_all(&|| rsp[smp::cpu_id()].store(stack_pointer(), Ordering::SeqCst)).unwrap();
    let rsp: [u64; CPUS] = core::array::from_fn(|i| rsp[i].load(Ordering::SeqCst));
    for cpu in 1..CPUS {
        let info = smp::cpu(cpu).unwrap();
        let (low, top) = info.stack;
        assert!(
            (low..top).contains(&rsp[cpu]),
            "CPU {cpu} runs at {:#x}, not on its stack {low:#x}..{top:#x}",
            rsp[cpu]
        );
        for (name, (l, t)) in [("kernel", info.stack), ("double-fault", info.fault_stack)] {
            assert!(
                kernel::memory::translate(VirtAddr::new(l)).is_some(),
                "CPU {cpu}: {name} stack mapped"
            );
            assert!(
                kernel::memory::translate(VirtAddr::new(t - 8)).is_some(),
                "CPU {cpu}: {name} stack top mapped"
            );
            assert!(
                kernel::memory::translate(VirtAddr::new(l - PAGE)).is_none(),
                "CPU {cpu}: the page below its {name} stack is a guard (unmapped)"
            );
        }
        for (other, &sp) in rsp.iter().enumerate() {
            if other != cpu {
                assert!(
                    !(low..top).contains(&sp),
                    "CPU {other} runs on CPU {cpu}'s stack"
                );
            }
        }
    }
}

static CALLS: AtomicU64 = AtomicU64::new(0);

fn count_call() {
    CALLS.fetch_add(1, Ordering::SeqCst);
}

/// Waits until CPU `cpu` has handled `want` call IPIs in all (bounded, so a lost IPI fails).
fn wait_received(cpu: usize, want: u64) {
    let deadline = Deadline::after_us(5_000_000);
    while ipi::received(cpu) < want {
        assert!(
            !deadline.passed(),
            "CPU {cpu} handled {} of {want} IPIs",
            ipi::received(cpu)
        );
        core::hint::spin_loop();
    }
}

#[kernel::test]
fn ipis_reach_every_cpu() {
    // The boot CPU takes IPIs only with interrupts enabled (they are disabled by default).
    x86_64::instructions::interrupts::enable();
    ipi::set_hook(Some(count_call));
    let base: [u64; CPUS] = core::array::from_fn(ipi::received);
    // To one CPU at a time, the sender itself included.
    for (cpu, &b) in base.iter().enumerate() {
        ipi::send(cpu, ipi::CALL_VECTOR).expect("send");
        wait_received(cpu, b + 1);
    }
    // From each CPU in turn to all the others. (One at a time: IPIs of the same vector that
    // reach a CPU together may merge, since its APIC has one pending bit per vector.)
    for sender in 0..CPUS {
        smp::run_on_all(&|| {
            if smp::cpu_id() == sender {
                ipi::send_all_but_self(ipi::CALL_VECTOR);
            }
        })
        .unwrap();
        for (cpu, &b) in base.iter().enumerate() {
            let from_others = (sender + 1 - usize::from(cpu <= sender)) as u64;
            wait_received(cpu, b + 1 + from_others);
        }
    }
    assert!(
        ipi::send(CPUS + 3, ipi::CALL_VECTOR).is_err(),
        "no such CPU"
    );
    ipi::set_hook(None);
    x86_64::instructions::interrupts::disable();
    assert!(CALLS.load(Ordering::SeqCst) >= 2 * CPUS as u64 - 1 + CPUS as u64);
}

#[kernel::test]
fn run_on_all_refuses_a_nested_call() {
    let nested = AtomicUsize::new(0);
    smp::run_on_all(&|| {
        if smp::run_on_all(&|| {}) == Err(smp::CallError::Busy) {
            nested.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(nested.load(Ordering::SeqCst), CPUS);
}

#[kernel::test]
fn a_cpu_that_does_not_answer_is_reported_and_the_others_go_on() {
    kernel::allocator::trim();
    let before = kernel::allocator::footprint();
    // No CPU has APIC id 0x7e under QEMU's -smp 4 (ids 0..=3).
    // SAFETY: no running CPU has this id.
    let result = unsafe { smp::start_cpu(0x7e, 50) };
    assert_eq!(result, Err(smp::StartError::NoAnswer { ms: 50 }));
    assert_eq!(smp::online_count(), CPUS);
    let runs = AtomicUsize::new(0);
    smp::run_on_all(&|| {
        runs.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), CPUS);
    // The attempt's stacks, tables, start data and the trampoline's identity mapping were all
    // given back (a CPU answering late would halt in real mode, before paging).
    kernel::allocator::trim();
    assert_eq!(kernel::allocator::footprint(), before);
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    core::hint::black_box(&frame);
    recurse(depth + 1) + frame[3]
}

fn overflow_on_cpu_1() {
    let _ = smp::run_on_all(&|| {
        if smp::cpu_id() == 1 {
            core::hint::black_box(recurse(0));
        }
    });
}

#[kernel::test]
#[should_panic(expected = "DOUBLE FAULT")]
fn stack_overflow_on_another_cpu_hits_its_guard_page() {
    overflow_on_cpu_1();
}
