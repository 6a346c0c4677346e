//! Running a function on every CPU at once, and the idle loop in which the other CPUs wait for
//! such work.
//!
//! [`run_on_all`] publishes the function, wakes every other online CPU with an IPI, runs the
//! function itself, and returns when every CPU has finished. The other CPUs run it from their idle
//! loop — in thread context with interrupts enabled, on their own stacks — not in the IPI handler,
//! so the function can run for as long as it needs, take interrupts, and allocate.
//!
//! One call at a time: a second caller (on another CPU, or from inside the function) gets
//! [`CallError::Busy`] instead of waiting — waiting would deadlock if the first call waits for
//! the CPU that makes the second.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::{ipi, percpu};

/// Why [`run_on_all`] did not run the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// Another `run_on_all` is in progress (possibly the one this is called from).
    Busy,
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Busy => f.write_str("another run_on_all is in progress"),
        }
    }
}

/// A type-erased `&(dyn Fn() + Sync)`: the fat reference lives on the caller's stack, and this
/// points at it.
type Job = &'static (dyn Fn() + Sync);

/// Held by the caller of [`run_on_all`] for its whole duration.
static BUSY: AtomicBool = AtomicBool::new(false);
/// The job of the current call (set before `SEQ` moves on, cleared after every CPU is done).
static JOB: AtomicPtr<Job> = AtomicPtr::new(core::ptr::null_mut());
/// Incremented once per call; each idle CPU runs the job when it sees a new value.
static SEQ: AtomicU64 = AtomicU64::new(0);
/// CPUs that have finished the current job.
static DONE: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on every online CPU, the caller included, at the same time; returns when every CPU
/// has returned from it. The other CPUs run it with interrupts enabled; the caller runs it as it
/// is (interrupt state unchanged).
///
/// # Errors
///
/// [`CallError::Busy`] if another call is in progress (nothing runs then).
///
/// # Panics
///
/// A panic in `f` on any CPU ends the kernel (as every panic does).
pub fn run_on_all(f: &(dyn Fn() + Sync)) -> Result<(), CallError> {
    if BUSY
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(CallError::Busy);
    }
    // SAFETY: the reference is only used by the other CPUs between the SEQ increment below and
    // their DONE increment, and this function does not return (so `f` stays borrowed) until
    // every one of them has incremented DONE.
    let job: Job = unsafe { core::mem::transmute::<&(dyn Fn() + Sync), Job>(f) };
    let others = percpu::online_count() - 1;
    DONE.store(0, Ordering::SeqCst);
    JOB.store(core::ptr::from_ref(&job).cast_mut(), Ordering::SeqCst);
    SEQ.fetch_add(1, Ordering::SeqCst);
    ipi::send_all_but_self(ipi::WAKE_VECTOR);
    f();
    while DONE.load(Ordering::Acquire) < others {
        core::hint::spin_loop();
    }
    JOB.store(core::ptr::null_mut(), Ordering::SeqCst);
    BUSY.store(false, Ordering::Release);
    Ok(())
}

/// The current call number, for [`idle_loop`]: a CPU reads it *before* it goes online, so that
/// a call that counts it cannot be missed.
pub(crate) fn seq() -> u64 {
    SEQ.load(Ordering::SeqCst)
}

/// The idle loop of an application processor: runs each job published by [`run_on_all`] after
/// call number `seen`, and halts with interrupts enabled in between.
pub(crate) fn idle_loop(mut seen: u64) -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        let seq = SEQ.load(Ordering::SeqCst);
        if seq != seen {
            seen = seq;
            x86_64::instructions::interrupts::enable();
            let job = JOB.load(Ordering::SeqCst);
            // SAFETY: a new SEQ value is published after JOB, and the caller keeps the job alive
            // until this CPU increments DONE (see `run_on_all`).
            if let Some(job) = unsafe { job.as_ref() } {
                job();
            }
            DONE.fetch_add(1, Ordering::AcqRel);
        } else if crate::memory::unmaps_waiting() {
            // Idle time is when the heap's put-off unmaps are done: in bounded steps, with
            // interrupts taken between them (see `memory::finish_unmaps`).
            x86_64::instructions::interrupts::enable();
            crate::memory::finish_unmaps();
        } else {
            // `sti; hlt`: an interrupt arriving between the check and the halt still wakes it.
            x86_64::instructions::interrupts::enable_and_hlt();
        }
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::{CallError, run_on_all};
    use crate::smp;

    /// The library's test kernel boots with QEMU's default single CPU: the SMP layer must then
    /// be the one-CPU kernel of before.
    #[kernel::test]
    fn one_cpu_runs_everything_itself() {
        assert_eq!(smp::online_count(), 1, "{}", smp::summary());
        assert_eq!(smp::cpu_id(), 0);
        assert_eq!(smp::online_mask(), 1);
        assert_eq!(smp::summary().failed().count(), 0);
        let runs = AtomicUsize::new(0);
        run_on_all(&|| {
            assert_eq!(smp::cpu_id(), 0);
            assert_eq!(run_on_all(&|| {}), Err(CallError::Busy));
            runs.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // An unmap on one CPU asks nobody else.
        let before = smp::shootdown::stats().requests;
        smp::shootdown::flush_all();
        assert_eq!(smp::shootdown::stats().requests, before);
    }
}
