//! TLB shootdown: after a CPU removes translations, every other online CPU drops its cached copies
//! before the frames behind them can be reused.
//!
//! # What it guarantees
//!
//! When [`flush_pages`] or [`flush_all`] returns, every CPU that was online when it was called has
//! invalidated the named translations (or all of them) and the paging-structure caches, so no CPU
//! can reach the old frames through the old entries any more. The memory layer calls it from its
//! `Tlb` implementation, inside its lock, right after clearing entries and before the frames
//! (pages or page tables) go back to the frame allocator — and no one can take a frame from the
//! allocator while that lock is held. So a frame is never handed out again while any CPU can still
//! reach it through a stale translation. A CPU that reads an unmapped heap page afterwards faults.
//! Several pages of one unmap are sent as one request (the page mapper flushes one run per page
//! table: a range of up to [`RANGE_LIMIT`] pages, or everything).
//!
//! # Why it cannot deadlock: NMIs
//!
//! The request is an NMI, not a maskable interrupt. The CPU that unmaps holds the memory lock and
//! usually the heap lock, with interrupts disabled, and waits for every other CPU's acknowledgement.
//! Those CPUs may themselves be spinning, interrupts disabled, on the very locks it holds (the heap
//! lock, the memory lock) — a maskable IPI would never be taken and both would wait forever. An
//! NMI is taken even with interrupts disabled, so every online CPU answers whatever it is doing.
//! The handler takes no lock and waits for nothing (atomics and `invlpg`/CR3 only), so it is safe
//! at any instruction, inside any lock. Requests are serialised by a flag (and in practice
//! by the memory lock); a CPU spinning for it still answers the holder's NMIs.
//!
//! # Ordering against CPUs coming online
//!
//! The sender clears the entries, then reads the online mask (SeqCst); a starting CPU sets its
//! online bit (SeqCst), then flushes its whole TLB. Either the sender sees the bit and asks that
//! CPU, or the CPU's flush comes after the entries were cleared; both drop the stale entries.
//!
//! A CPU that never acknowledges within [`ACK_LIMIT_US`] (it cannot happen unless a CPU is dead)
//! is named in a panic rather than waited for forever.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::structures::paging::Page;

use super::{apic, percpu};
use crate::cpu::clock::Deadline;

/// Longest range flushed page by page on the receiving side; longer ones reload CR3.
pub const RANGE_LIMIT: u64 = 32;
/// How long the sender waits for acknowledgements before declaring a CPU dead: far beyond any
/// NMI latency, even for a vCPU thread descheduled by a loaded host.
pub const ACK_LIMIT_US: u64 = 30_000_000;

/// Serialises requests: held from publishing a request until every acknowledgement is in.
static SHOOTDOWN: AtomicBool = AtomicBool::new(false);
/// The request: first page address and page count (0: flush everything).
static START: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
/// CPUs that have not acknowledged the current request yet (bit per CPU index).
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Requests sent, and NMIs that carried no request for the CPU that took them.
static REQUESTS: AtomicUsize = AtomicUsize::new(0);
static STRAY_NMIS: AtomicUsize = AtomicUsize::new(0);

/// Counters, for tests and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShootdownStats {
    /// Shootdown requests sent to at least one other CPU.
    pub requests: usize,
    /// NMIs that carried no request for the CPU that took them.
    pub stray_nmis: usize,
}

/// The counters.
pub fn stats() -> ShootdownStats {
    ShootdownStats {
        requests: REQUESTS.load(Ordering::Relaxed),
        stray_nmis: STRAY_NMIS.load(Ordering::Relaxed),
    }
}

/// Has every other online CPU invalidate `count` pages from `start` (the calling CPU flushes its
/// own TLB itself). Returns once all have acknowledged.
pub fn flush_pages(start: Page, count: u64) {
    if count == 0 {
        return;
    }
    if count > RANGE_LIMIT {
        return flush_all();
    }
    shoot(start.start_address().as_u64(), count);
}

/// Has every other online CPU invalidate all its (non-global) translations. Returns once all
/// have acknowledged.
pub fn flush_all() {
    shoot(0, 0);
}

fn shoot(start: u64, count: u64) {
    let me = percpu::cpu_id();
    // Cheap exit for one CPU (and before any other CPU is online).
    if percpu::online_mask() & !(1 << me) == 0 {
        return;
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        while SHOOTDOWN
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // The entries were cleared before this; SeqCst orders that against reading the mask
        // (see "Ordering against CPUs coming online").
        let targets = percpu::online_mask() & !(1 << me);
        START.store(start, Ordering::Relaxed);
        COUNT.store(count, Ordering::Relaxed);
        PENDING.store(targets, Ordering::SeqCst);
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        for cpu in bits(targets) {
            if let Some(apic_id) = percpu::apic_id(cpu) {
                apic::send(apic_id, apic::Delivery::Nmi);
            }
        }
        let deadline = Deadline::after_us(ACK_LIMIT_US);
        while PENDING.load(Ordering::Acquire) != 0 {
            if deadline.passed() {
                let missing = PENDING.load(Ordering::Acquire);
                SHOOTDOWN.store(false, Ordering::Release);
                panic!(
                    "TLB shootdown: CPUs {missing:#b} (mask) did not acknowledge within {} s",
                    ACK_LIMIT_US / 1_000_000
                );
            }
            core::hint::spin_loop();
        }
        SHOOTDOWN.store(false, Ordering::Release);
    });
}

/// The indices of the set bits of `mask`.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        (mask != 0).then(|| {
            let bit = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            bit
        })
    })
}

/// The NMI handler's part: if a request is pending for this CPU, flush and acknowledge.
/// Returns whether there was one. Takes no lock: safe at any instruction.
pub(crate) fn handle_nmi() -> bool {
    let bit = 1u64 << percpu::cpu_id();
    if PENDING.load(Ordering::Acquire) & bit == 0 {
        STRAY_NMIS.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let start = START.load(Ordering::Relaxed);
    let count = COUNT.load(Ordering::Relaxed);
    if count == 0 {
        x86_64::instructions::tlb::flush_all();
    } else {
        for i in 0..count {
            x86_64::instructions::tlb::flush(VirtAddr::new(start + i * 4096));
        }
    }
    PENDING.fetch_and(!bit, Ordering::AcqRel);
    true
}
