// SPDX-License-Identifier: GPL-2.0
//! Work a driver runs later, and again: [`DelayedWork`] over the system workqueue.
//!
//! The kernel crate's workqueue abstractions differ between the kernels tilde targets
//! (7.x has delayed work, 6.12 does not); this is one API over a C helper, the same on
//! both. A driver's periodic check (the mlx4 catastrophic error poll) is the use.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::time::Duration;

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::sync::IrqSpinLock;
use crate::sys;

/// What a [`DelayedWork`] runs, in process context (it may sleep).
pub trait WorkHandler: Send + Sync + 'static {
    /// Runs once; returns when to run again, if at all.
    fn run(&self) -> Option<Duration>;
}

/// `H` run on the system workqueue when scheduled, and again as it asks. Dropping it
/// cancels it, waiting for a run under way.
pub struct DelayedWork<H: WorkHandler> {
    raw: NonNull<sys::tilde_rdma_delayed_work>,
    /// What the work's runs reach; kept until the work is cancelled.
    handler: Arc<H>,
    /// What [`Kicker`]s reach; emptied before the work is cancelled.
    kick: Arc<KickTarget>,
}

/// The work a [`Kicker`] runs, while it exists.
struct KickTarget(IrqSpinLock<Option<NonNull<sys::tilde_rdma_delayed_work>>>);

// SAFETY: the pointer is only used under the lock, while the work exists.
unsafe impl Send for KickTarget {}
// SAFETY: as above.
unsafe impl Sync for KickTarget {}

/// Runs a [`DelayedWork`] at once, from any context, as long as the work exists (after
/// that, kicking does nothing). What the work's handler reaches can hold one without
/// holding the work itself, so no reference cycle keeps the work alive.
#[derive(Clone)]
pub struct Kicker(Arc<KickTarget>);

impl Kicker {
    /// Runs the work as soon as the workqueue can, whether it is scheduled or not.
    pub fn kick(&self) {
        let target = self.0 .0.lock();
        if let Some(raw) = *target {
            // SAFETY: the work exists while the lock holds its pointer (`drop` empties
            // it under the lock before cancelling and freeing the work).
            unsafe { sys::tilde_rdma_delayed_work_kick(raw.as_ptr()) };
        }
    }
}

// SAFETY: the work item is the kernel's; scheduling and cancelling are allowed from any
// process context, and `H` is `Send + Sync`.
unsafe impl<H: WorkHandler> Send for DelayedWork<H> {}
// SAFETY: as above.
unsafe impl<H: WorkHandler> Sync for DelayedWork<H> {}

fn millis(delay: Duration) -> u64 {
    // At least 1 ms (0 means "not again" to the helper), at most about 49 days.
    u64::try_from(delay.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, u64::from(u32::MAX))
}

impl<H: WorkHandler> DelayedWork<H> {
    /// Work that runs `handler`, not scheduled yet.
    pub fn new(handler: Arc<H>) -> Result<Self> {
        let data = core::ptr::from_ref::<H>(&handler)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: `data` points into the `Arc` kept in `Self`, which outlives every run
        // (drop cancels the work first).
        let raw = unsafe { sys::tilde_rdma_delayed_work_new(Some(run_callback::<H>), data) };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        let kick = match crate::irq_spin_lock!(Some(raw))
            .and_then(|lock| Arc::new(KickTarget(lock), GFP_KERNEL).map_err(Into::into))
        {
            Ok(kick) => kick,
            Err(e) => {
                // SAFETY: allocated above, never scheduled.
                unsafe { sys::tilde_rdma_delayed_work_free(raw.as_ptr()) };
                return Err(e);
            }
        };
        Ok(Self { raw, handler, kick })
    }

    /// Runs it after `delay` (unless it is scheduled already).
    pub fn schedule(&self, delay: Duration) {
        // SAFETY: allocated in `new`, alive while `self` is.
        unsafe { sys::tilde_rdma_delayed_work_schedule(self.raw.as_ptr(), millis(delay)) };
    }

    /// A handle that runs the work at once, for as long as it exists.
    pub fn kicker(&self) -> Kicker {
        Kicker(self.kick.clone())
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<H: WorkHandler> Drop for DelayedWork<H> {
    fn drop(&mut self) {
        // No kick reaches the work from here on.
        *self.kick.0.lock() = None;
        // SAFETY: allocated in `new`; the helper cancels (waiting for a run) and frees.
        unsafe { sys::tilde_rdma_delayed_work_free(self.raw.as_ptr()) };
    }
}

/// The work's trampoline for handler type `H`.
///
/// # Safety
///
/// Called by the C work item only, with the `H` its `DelayedWork` keeps alive.
unsafe extern "C" fn run_callback<H: WorkHandler>(data: *mut c_void) -> u64 {
    // SAFETY: see above.
    let handler = unsafe { &*data.cast_const().cast::<H>() };
    handler.run().map_or(0, millis)
}
