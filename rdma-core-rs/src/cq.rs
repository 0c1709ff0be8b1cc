// SPDX-License-Identifier: GPL-2.0
//! Completion queues and per-WR completion slots.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStrExt;
use kernel::sync::atomic::{Acquire, Atomic, Relaxed, Release};
use kernel::types::Opaque;

use crate::device::Device;
use crate::sys;
use crate::verbs::{WcOpcode, WcStatus, WorkCompletion};

/// How a CQ's completions are delivered to their slots (`enum ib_poll_context`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollContext {
    /// By [`CompletionQueue::poll`], in the caller's context (`IB_POLL_DIRECT`).
    Direct,
    /// By the IB core from softirq context (`IB_POLL_SOFTIRQ`).
    Softirq,
    /// By the IB core from a workqueue (`IB_POLL_WORKQUEUE`).
    Workqueue,
}

/// A completion queue (`ib_alloc_cq`), freed on drop. Each completion goes to the
/// [`CompletionSlot`] its WR named, delivered as its [`PollContext`] says.
pub struct CompletionQueue<'d> {
    cq: NonNull<sys::ib_cq>,
    context: PollContext,
    device: &'d Device,
}

impl<'d> CompletionQueue<'d> {
    /// A CQ with room for `entries` completions, polled by its owner.
    pub fn new(device: &'d Device, entries: u32) -> Result<Self> {
        Self::with_context(device, entries, PollContext::Direct)
    }

    /// A CQ with room for `entries` completions, delivered in `context`.
    pub fn with_context(device: &'d Device, entries: u32, context: PollContext) -> Result<Self> {
        let entries = i32::try_from(entries).map_err(|_| EINVAL)?;
        let poll_ctx = match context {
            PollContext::Direct => sys::ib_poll_context_IB_POLL_DIRECT,
            PollContext::Softirq => sys::ib_poll_context_IB_POLL_SOFTIRQ,
            PollContext::Workqueue => sys::ib_poll_context_IB_POLL_WORKQUEUE,
        };
        // SAFETY: the device is valid for 'd; no private data; the caller name is static.
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
        Ok(Self {
            cq,
            context,
            device,
        })
    }

    /// The device the CQ belongs to.
    pub fn device(&self) -> &'d Device {
        self.device
    }

    /// How this CQ's completions are delivered.
    pub fn context(&self) -> PollContext {
        self.context
    }

    /// Delivers up to `budget` completions to their slots and returns how many, on a
    /// direct CQ; other CQs deliver by themselves, and this returns 0.
    pub fn poll(&self, budget: u32) -> u32 {
        if self.context != PollContext::Direct {
            return 0;
        }
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
///
/// A slot carries one WR at a time: posting claims it (EMPTY → POSTED; a slot already
/// posted, or holding a completion not yet taken, is refused with `EBUSY`), the
/// completion fills it (→ DONE, from whatever context the CQ delivers in), and
/// [`CompletionSlot::take`] empties it (→ READING → EMPTY). So a completion is reported
/// once, and no two WRs ever complete into one slot.
#[repr(C)]
pub struct CompletionSlot {
    /// First, so that the `ib_cqe` pointer a completion carries is the slot's address.
    cqe: Opaque<sys::ib_cqe>,
    state: Atomic<u32>,
    /// Whether the posted WR is a send-queue WR (see `QueuePair`'s count of them).
    send: Atomic<u32>,
    completion: UnsafeCell<WorkCompletion>,
}

const EMPTY: u32 = 0;
const POSTED: u32 = 1;
const DONE: u32 = 2;
const READING: u32 = 3;

// SAFETY: `completion` is written only by the completion of the WR that claimed the slot
// (POSTED → DONE) and read only by the one `take` that moved it DONE → READING; the
// state's release/acquire orders the two. Everything else is atomic or immutable.
unsafe impl Sync for CompletionSlot {}
// SAFETY: nothing in a slot is tied to a thread.
unsafe impl Send for CompletionSlot {}

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
            state: Atomic::new(EMPTY),
            send: Atomic::new(0),
            completion: UnsafeCell::new(WorkCompletion::EMPTY),
        }
    }

    /// The completion, once delivered; taking it empties the slot for the next WR.
    pub fn take(&self) -> Option<WorkCompletion> {
        self.state.cmpxchg(DONE, READING, Acquire).ok()?;
        // SAFETY: READING gives this call the completion exclusively (see `Sync`).
        let completion = unsafe { *self.completion.get() };
        self.state.store(EMPTY, Release);
        Some(completion)
    }

    /// Whether a WR posted with this slot has not completed yet.
    pub fn is_posted(&self) -> bool {
        self.state.load(Acquire) == POSTED
    }

    /// Claims the slot for a WR about to be posted; `EBUSY` if it is in use.
    pub(crate) fn claim(&self, send: bool) -> Result {
        // Acquire pairs with the release that emptied the slot.
        self.state
            .cmpxchg(EMPTY, POSTED, Acquire)
            .map_err(|_| EBUSY)?;
        self.send.store(u32::from(send), Relaxed);
        Ok(())
    }

    /// Gives back a claim whose WR was not posted after all.
    pub(crate) fn unclaim(&self) {
        self.state.store(EMPTY, Release);
    }

    pub(crate) fn as_cqe(&self) -> *mut sys::ib_cqe {
        self.cqe.get()
    }
}

/// `ib_cqe.done`: stores the completion in its slot.
///
/// # Safety
///
/// Called by the IB core only, with a valid `ib_wc` whose `wr_cqe` is a slot's `ib_cqe`.
unsafe extern "C" fn slot_done(_cq: *mut sys::ib_cq, wc: *mut sys::ib_wc) {
    // SAFETY: the IB core calls `done` with a valid completion whose `wr_cqe` is the
    // `ib_cqe` of the slot the WR claimed; `CompletionSlot` is `repr(C)` with the `ib_cqe`
    // first, and the slot is alive (it outlives its QP). The slot is POSTED, so this call
    // alone writes its completion.
    unsafe {
        let wc = &*wc;
        let slot = &*wc.__bindgen_anon_1.wr_cqe.cast::<CompletionSlot>();
        let qp_num = if wc.qp.is_null() { 0 } else { (*wc.qp).qp_num };
        *slot.completion.get() = work_completion(wc, qp_num);
        // A send-queue WR is no longer outstanding: `qp_context` is the QP's count.
        if slot.send.load(Relaxed) != 0 && !wc.qp.is_null() {
            if let Some(sends) = (*wc.qp)
                .qp_context
                .cast::<Atomic<u32>>()
                .cast_const()
                .as_ref()
            {
                sends.fetch_sub(1u32, Release);
            }
        }
        slot.state.store(DONE, Release);
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
