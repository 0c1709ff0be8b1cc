// SPDX-License-Identifier: GPL-2.0
//! The parts of the kernel's own API that tilde's code uses and that differ between the
//! kernels it targets, under one name for all of them ("under the tilde").
//!
//! Everything above the binding layer (`rdma_core`'s API, the modules, the ULPs) takes
//! these from here (`rdma_core::kernel_api`), never from `kernel::` directly:
//! - [`atomic`]: the LKMM atomics (`kernel::sync::atomic` where the kernel has it);
//! - [`c_str`]: a C string for the bindings;
//! - [`sleep`] and [`monotonic`]: through C helpers (`fsleep`, `ktime_get_ns`), which
//!   every kernel has, so the Rust side never names `kernel::time`.

use core::time::Duration;

use super::{tilde_rdma_fsleep, tilde_rdma_ktime_ns};

/// Atomics with explicit orderings (`Atomic<T>`, `Acquire`, `Release`, `Relaxed`,
/// `Full`).
pub mod atomic {
    pub use kernel::sync::atomic::{Acquire, Atomic, Full, Relaxed, Release};
}

/// A C string as the bindings take it: a pointer to the kernel's `char`, which is
/// unsigned on every architecture (`-funsigned-char`), unlike `core::ffi::c_char`.
pub const fn c_str(s: &'static core::ffi::CStr) -> *const kernel::ffi::c_char {
    kernel::str::as_char_ptr_in_const_context(s)
}

/// Sleeps for `duration` (`fsleep`: the kernel picks the mechanism for the length).
/// May sleep: process context only.
pub fn sleep(duration: Duration) {
    let micros = usize::try_from(duration.as_micros()).unwrap_or(usize::MAX);
    // SAFETY: `fsleep` only sleeps; callers are in process context (documented).
    unsafe { tilde_rdma_fsleep(micros) };
}

/// The monotonic clock (`ktime_get_ns`), as time since boot.
pub fn monotonic() -> Duration {
    // SAFETY: a pure read of the clock.
    Duration::from_nanos(unsafe { tilde_rdma_ktime_ns() })
}
