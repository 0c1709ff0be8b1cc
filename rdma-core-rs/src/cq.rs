// SPDX-License-Identifier: GPL-2.0
//! Completion queues.

use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStrExt;
use kernel::sync::atomic::{Acquire, Atomic, Release};
use kernel::sync::Arc;

use crate::device::{teardown_may_sleep, Device, DeviceRef};
use crate::sys;

pub use crate::verbs::PollContext;

/// A completion queue (`ib_alloc_cq`), shared through [`Arc`] by the QPs on it and freed
/// after the last. Each completion goes to the handler of the work request it ends
/// ([`crate::wr::CompletionHandler`]), delivered as its [`PollContext`] says.
pub struct CompletionQueue {
    cq: NonNull<sys::ib_cq>,
    context: PollContext,
    /// A direct CQ is polled by one caller at a time (`ib_process_cq_direct` is not
    /// reentrant): its owner, or a QP draining on it.
    polling: Atomic<bool>,
    device: DeviceRef,
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
        // SAFETY: the device is valid (we hold a reference); no private data; the caller
        // name is static.
        let cq = from_err_ptr(unsafe {
            sys::__ib_alloc_cq(
                device.as_raw(),
                core::ptr::null_mut(),
                entries,
                0,
                poll_ctx,
                c"tilde_rdma".as_char_ptr(),
            )
        })?;
        let cq = NonNull::new(cq).ok_or(ENOMEM)?;
        let cq = Self {
            cq,
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

    /// The `ib_cq`, for the raw bindings (benchmarks).
    pub fn as_raw(&self) -> *mut sys::ib_cq {
        self.cq.as_ptr()
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        if !teardown_may_sleep(&self.device, "a CQ") {
            return;
        }
        // SAFETY: the CQ is valid, and no QP uses it: each QP holds an `Arc` of its CQs.
        unsafe { sys::ib_free_cq(self.cq.as_ptr()) };
    }
}
