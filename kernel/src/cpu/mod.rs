//! The CPU this code runs on, as seen from one CPU at a time: its clock (the time-stamp counter,
//! calibrated against the PIT) and memory reads that may fault without ending the kernel.
//!
//! Everything about *several* CPUs (which exist, starting them, per-CPU areas, IPIs, TLB
//! shootdown) is in [`smp`](crate::smp).

pub mod clock;
pub mod probe;
