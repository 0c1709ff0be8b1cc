// SPDX-License-Identifier: GPL-2.0
//! Completion queues.

use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::{teardown_may_sleep, Device, DeviceRef};
use crate::sys;
use crate::sys::kernel_api::atomic::{Acquire, Atomic, Relaxed, Release};

pub use crate::verbs::PollContext;

/// A completion queue (`ib_alloc_cq`), shared through [`Arc`] by the QPs on it and freed
/// after the last. Each completion goes to the handler of the work request it ends
/// ([`crate::wr::CompletionHandler`]), delivered as its [`PollContext`] says.
pub struct CompletionQueue {
    cq: NonNull<sys::ib_cq>,
    /// The `ib_cq`'s `cq_context` (completion handlers reach it from the CQ), from
    /// `KBox::into_raw`; freed after the CQ, or leaked with it.
    state: NonNull<CqState>,
    context: PollContext,
    /// A direct CQ is polled by one caller at a time, its owner or a QP draining on it,
    /// so its handlers run one at a time as on the IB core's own softirq and workqueue
    /// CQs (and `CqState::delivering` names one task).
    polling: Atomic<bool>,
    device: DeviceRef,
}

/// What the completion path and the QPs on a CQ share.
pub(crate) struct CqState {
    /// The task delivering a completion right now (0 when none): a QP must not drain
    /// from inside its own CQ's handler, where its flushes could never be delivered.
    delivering: Atomic<usize>,
    /// Completions the QPs on the CQ may have outstanding at once, against `capacity`:
    /// an overrun CQ drops completions, and their WRs would never come back.
    reserved: Atomic<u32>,
    /// The CQ's actual size (`ib_cq.cqe`), set once it exists.
    capacity: Atomic<u32>,
}

impl CqState {
    /// Marks the current task as delivering (`true`) or done (`false`).
    pub(crate) fn set_delivering(&self, delivering: bool) {
        let task = if delivering {
            // SAFETY: a pure query of the current task's identity.
            (unsafe { sys::tilde_rdma_current() }) as usize
        } else {
            0
        };
        // Only the delivering task itself compares with its own identity, so program
        // order suffices.
        self.delivering.store(task, Relaxed);
    }
}

// SAFETY: the `ib_cq` is used through the IB core's CQ API, which serialises delivery
// itself for softirq and workqueue CQs; direct polling is serialised by `polling`.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// A CQ with room for `entries` completions, delivered in `context`.
    pub fn new(device: &Device, entries: u32, context: PollContext) -> Result<Arc<Self>> {
        let device = device.to_ref()?;
        let entries = i32::try_from(entries).map_err(|_| EINVAL)?;
        let poll_ctx = match context {
            PollContext::Direct => sys::ib_poll_context_IB_POLL_DIRECT,
            PollContext::Softirq => sys::ib_poll_context_IB_POLL_SOFTIRQ,
            PollContext::Workqueue => sys::ib_poll_context_IB_POLL_WORKQUEUE,
        };
        let state = KBox::new(
            CqState {
                delivering: Atomic::new(0),
                reserved: Atomic::new(0),
                capacity: Atomic::new(0),
            },
            GFP_KERNEL,
        )?;
        let state = NonNull::from(KBox::leak(state));
        let cq_context = state.as_ptr().cast();
        // SAFETY: the device is valid (we hold a reference); `context` points into a box
        // that lives as long as the CQ; the caller name is static.
        let cq = from_err_ptr(unsafe {
            sys::__ib_alloc_cq(
                device.as_raw(),
                cq_context,
                entries,
                0,
                poll_ctx,
                sys::kernel_api::c_str(c"tilde_rdma"),
            )
        });
        let Some(cq) = cq.ok().and_then(NonNull::new) else {
            // SAFETY: from `KBox::leak` above; no CQ points at it.
            drop(unsafe { KBox::from_raw(state.as_ptr()) });
            return Err(cq.err().unwrap_or(ENOMEM));
        };
        // SAFETY: the CQ was just allocated; `cqe` is its actual size.
        let capacity = u32::try_from(unsafe { (*cq.as_ptr()).cqe }).unwrap_or(0);
        // SAFETY: `state` is live (freed only by `drop`) and only ever shared.
        unsafe { state.as_ref() }.capacity.store(capacity, Relaxed);
        let cq = Self {
            cq,
            state,
            context,
            polling: Atomic::new(false),
            device,
        };
        Ok(Arc::new(cq, GFP_KERNEL)?)
    }

    /// The device the CQ belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How this CQ's completions are delivered.
    pub fn context(&self) -> PollContext {
        self.context
    }

    /// How many completions the CQ holds (`ib_cq.cqe`, at least what was asked for):
    /// what the QPs on it may have outstanding together.
    pub fn capacity(&self) -> u32 {
        self.state().capacity.load(Relaxed)
    }

    /// Grows the CQ to hold at least `entries` completions (`ib_resize_cq`), so that more
    /// QPs, or deeper ones, fit on it. May sleep.
    ///
    /// Only growing: QPs reserved room against the current size and may have that many
    /// completions outstanding, so a smaller `entries` is `EINVAL`. `EOPNOTSUPP` where the
    /// device cannot resize, and on kernels whose IB core no longer lets kernel consumers
    /// resize at all ([`sys::c_api::CQ_RESIZE`] is false there); the CQ is unchanged then.
    pub fn resize(&self, entries: u32) -> Result {
        let capacity = self.capacity();
        if entries < capacity {
            pr_err!(
                "{}: CQ of {} entries cannot shrink to {}: completions may be outstanding\n",
                self.device.name(),
                capacity,
                entries
            );
            return Err(EINVAL);
        }
        let entries = i32::try_from(entries).map_err(|_| EINVAL)?;
        // SAFETY: the CQ is valid while `self` lives, and a kernel CQ; callers may sleep
        // (documented). The driver serialises a resize with polling itself.
        unsafe { sys::c_api::resize_cq(self.cq.as_ptr(), entries) }?;
        // SAFETY: the CQ is valid; the driver updated `cqe` to the new actual size.
        let resized = u32::try_from(unsafe { (*self.cq.as_ptr()).cqe }).unwrap_or(0);
        // Reservations made meanwhile checked against the old size, which is smaller; of
        // two racing resizes the larger size stays.
        let mut current = self.state().capacity.load(Relaxed);
        while current < resized {
            match self.state().capacity.cmpxchg(current, resized, Relaxed) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        Ok(())
    }

    /// Delivers up to `budget` completions to their handlers and returns how many, on a
    /// direct CQ; other CQs deliver by themselves, and a direct CQ being polled elsewhere
    /// at the moment delivers there: both return 0.
    pub fn poll(&self, budget: u32) -> u32 {
        if self.context != PollContext::Direct {
            return 0;
        }
        if self.polling.cmpxchg(false, true, Acquire).is_err() {
            return 0;
        }
        let budget = i32::try_from(budget).unwrap_or(i32::MAX);
        // SAFETY: the CQ is valid and in direct mode, polled only here (`polling`); every
        // WR on a QP of this CQ is owned by the device until its handler gets it back, so
        // each completion finds its `ib_cqe`.
        let done = unsafe { sys::ib_process_cq_direct(self.cq.as_ptr(), budget) };
        self.polling.store(false, Release);
        u32::try_from(done).unwrap_or(0)
    }

    /// Reserves room for `entries` more outstanding completions; `EINVAL` if the CQ
    /// cannot take them.
    pub(crate) fn reserve(&self, entries: u32) -> Result {
        let capacity = self.state().capacity.load(Relaxed);
        let mut reserved = self.state().reserved.load(Relaxed);
        loop {
            let wanted = reserved.checked_add(entries).filter(|&w| w <= capacity);
            let Some(wanted) = wanted else {
                pr_err!(
                    "{}: CQ of {} entries cannot take {} more outstanding completions ({} reserved)\n",
                    self.device.name(),
                    capacity,
                    entries,
                    reserved
                );
                return Err(EINVAL);
            };
            match self.state().reserved.cmpxchg(reserved, wanted, Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => reserved = current,
            }
        }
    }

    /// Gives back what [`CompletionQueue::reserve`] took.
    pub(crate) fn unreserve(&self, entries: u32) {
        self.state().reserved.fetch_sub(entries, Relaxed);
    }

    fn state(&self) -> &CqState {
        // SAFETY: `state` is live until `drop` (type invariant) and only ever shared.
        unsafe { self.state.as_ref() }
    }

    /// Whether the current task is delivering one of this CQ's completions.
    pub(crate) fn delivering_here(&self) -> bool {
        let delivering = self.state().delivering.load(Relaxed);
        // SAFETY: a pure query of the current task's identity.
        delivering != 0 && delivering == (unsafe { sys::tilde_rdma_current() }) as usize
    }

    /// The `ib_cq`, for the raw bindings (benchmarks).
    pub fn as_raw(&self) -> *mut sys::ib_cq {
        self.cq.as_ptr()
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        if !teardown_may_sleep(&self.device, "a CQ") {
            // The CQ stays, and so does the state its completions reach.
            return;
        }
        // SAFETY: the CQ is valid, and no QP uses it: each QP holds an `Arc` of its CQs.
        unsafe { sys::ib_free_cq(self.cq.as_ptr()) };
        // SAFETY: from `KBox::leak` in `new`; the CQ that pointed at it is gone.
        drop(unsafe { KBox::from_raw(self.state.as_ptr()) });
    }
}
