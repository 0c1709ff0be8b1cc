// SPDX-License-Identifier: GPL-2.0
//! Completion queues and per-WR completion slots.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStrExt;
use kernel::types::Opaque;

use crate::device::Device;
use crate::sys;
use crate::verbs::{WcOpcode, WcStatus, WorkCompletion};

/// A completion queue polled by its owner (`ib_alloc_cq`, `IB_POLL_DIRECT`), freed on
/// drop. Each completion goes to the [`CompletionSlot`] its WR named.
pub struct CompletionQueue<'d> {
    cq: NonNull<sys::ib_cq>,
    _device: PhantomData<&'d Device>,
}

impl<'d> CompletionQueue<'d> {
    /// A CQ with room for `entries` completions.
    pub fn new(device: &'d Device, entries: u32) -> Result<Self> {
        let entries = i32::try_from(entries).map_err(|_| EINVAL)?;
        // SAFETY: the device is valid for 'd; no private data; the caller name is static.
        let cq = from_err_ptr(unsafe {
            sys::__ib_alloc_cq(
                device.as_raw(),
                core::ptr::null_mut(),
                entries,
                0,
                sys::ib_poll_context_IB_POLL_DIRECT,
                c"tilde_rdma".as_char_ptr(),
            )
        })?;
        let cq = NonNull::new(cq).ok_or(ENOMEM)?;
        Ok(Self {
            cq,
            _device: PhantomData,
        })
    }

    /// Delivers up to `budget` completions to their slots; returns how many.
    pub fn poll(&self, budget: u32) -> u32 {
        let budget = i32::try_from(budget).unwrap_or(i32::MAX);
        // SAFETY: the CQ is valid and in direct mode; every WR posted to a QP on it names
        // a slot that outlives the QP (see `QueuePair`), so each callback finds its slot.
        let done = unsafe { sys::ib_process_cq_direct(self.cq.as_ptr(), budget) };
        u32::try_from(done).unwrap_or(0)
    }

    /// The `ib_cq`, for the raw bindings (benchmarks).
    pub fn as_raw(&self) -> *mut sys::ib_cq {
        self.cq.as_ptr()
    }
}

impl Drop for CompletionQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: the CQ is valid, and no QP uses it: QPs borrow their CQs.
        unsafe { sys::ib_free_cq(self.cq.as_ptr()) };
    }
}

/// Where one WR's completion lands (an `ib_cqe`). A slot is borrowed by the WR for the
/// lifetime of its QP, so it cannot move or go away while the device may complete into it.
#[repr(C)]
pub struct CompletionSlot {
    /// First, so that the `ib_cqe` pointer a completion carries is the slot's address.
    cqe: Opaque<sys::ib_cqe>,
    completion: Cell<Option<WorkCompletion>>,
    /// Whether the WR posted with this slot is a send-queue WR (see `QueuePair`'s count
    /// of outstanding sends).
    send: Cell<bool>,
}

impl Default for CompletionSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl CompletionSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        Self {
            cqe: Opaque::new(sys::ib_cqe {
                done: Some(slot_done),
            }),
            completion: Cell::new(None),
            send: Cell::new(false),
        }
    }

    /// The completion, once the CQ has delivered it; taking it empties the slot for reuse.
    pub fn take(&self) -> Option<WorkCompletion> {
        self.completion.take()
    }

    pub(crate) fn as_cqe(&self) -> *mut sys::ib_cqe {
        self.cqe.get()
    }

    pub(crate) fn mark(&self, send: bool) {
        self.send.set(send);
    }
}

/// `ib_cqe.done`: stores the completion in its slot.
///
/// # Safety
///
/// Called by the IB core only, with a valid `ib_wc` whose `wr_cqe` is a slot's `ib_cqe`.
unsafe extern "C" fn slot_done(_cq: *mut sys::ib_cq, wc: *mut sys::ib_wc) {
    // SAFETY: the IB core calls `done` with a valid completion whose `wr_cqe` is the
    // `ib_cqe` of the slot the WR was posted with; `CompletionSlot` is `repr(C)` with the
    // `ib_cqe` first, and the slot is alive (it outlives its QP). Completions of a
    // direct-mode CQ are delivered in the poller's context, the same that reads slots.
    unsafe {
        let wc = &*wc;
        let slot = &*wc.__bindgen_anon_1.wr_cqe.cast::<CompletionSlot>();
        let qp_num = if wc.qp.is_null() { 0 } else { (*wc.qp).qp_num };
        slot.completion.set(Some(work_completion(wc, qp_num)));
        // A send-queue WR is no longer outstanding: `qp_context` is the QP's count of
        // them (set by `QueuePair`), updated in this same context.
        if slot.send.get() && !wc.qp.is_null() {
            let sends = (*wc.qp).qp_context.cast::<Cell<u32>>().cast_const();
            if let Some(sends) = sends.as_ref() {
                sends.set(sends.get().saturating_sub(1));
            }
        }
    }
}

fn work_completion(wc: &sys::ib_wc, qp_num: u32) -> WorkCompletion {
    let flags = wc.wc_flags as u32;
    // SAFETY: `ex` is a union of two `u32`s; reading either is always defined.
    let ex = unsafe { wc.ex.imm_data };
    WorkCompletion {
        status: WcStatus::from_raw(wc.status).unwrap_or(WcStatus::GeneralError),
        opcode: WcOpcode::from_raw(wc.opcode),
        byte_len: wc.byte_len,
        imm: (flags & sys::ib_wc_flags_IB_WC_WITH_IMM != 0).then(|| u32::from_be(ex)),
        invalidated_rkey: (flags & sys::ib_wc_flags_IB_WC_WITH_INVALIDATE != 0).then_some(ex),
        qp_num,
        src_qp: wc.src_qp,
        grh: flags & sys::ib_wc_flags_IB_WC_GRH != 0,
        vendor_err: wc.vendor_err,
    }
}
