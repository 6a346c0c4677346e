//! Locks for a [`LockedHeap`](crate::LockedHeap) beyond the plain [`SpinLock`](crate::SpinLock):
//!
//! * [`IrqLock`] / [`IrqSpinLock`] (module `irq`): a ticket spinlock that keeps interrupts
//!   disabled while it is held and restores the interrupt flag on release — the lock a kernel
//!   wants whose interrupt handlers allocate, on one CPU or many.
//! * [`LockApi`] (module `raw_mutex`, feature `lock_api`): any `lock_api::RawMutex` (a `spin`,
//!   `parking_lot`-style or your kernel's own) as a [`RawLock`](crate::RawLock); and kheap's own
//!   locks as `lock_api::RawMutex`, so `lock_api::Mutex<kheap::IrqSpinLock, T>` guards your
//!   other data the same way.
//!
//! Which lock:
//!
//! | lock | interrupts | fair | for |
//! | --- | --- | --- | --- |
//! | [`SpinLock`](crate::SpinLock) | left alone | no | host programs, kernels that never allocate in interrupt handlers |
//! | [`IrqSpinLock`] (x86_64) | off while held | yes (tickets) | kernels whose interrupt handlers allocate; SMP |
//! | [`LockApi`]`<R>` | as `R` does | as `R` | a `lock_api` lock you already have |

mod irq;
#[cfg(feature = "lock_api")]
mod raw_mutex;

pub use irq::{Interrupts, IrqLock};
#[cfg(target_arch = "x86_64")]
pub use irq::{IrqSpinLock, X86Interrupts};
#[cfg(feature = "lock_api")]
pub use raw_mutex::LockApi;
