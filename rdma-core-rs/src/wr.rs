// SPDX-License-Identifier: GPL-2.0
//! Work requests as owned values.
//!
//! A [`WorkRequest`] is a heap allocation holding the WR's `ib_cqe` and everything the
//! device may touch while it is posted: the buffer it gathers from or scatters into, the
//! memory region a REG_MR registers, the address handle a UD send goes to. Posting moves
//! it (`KBox`) into the QP; the completion moves it back, once, to the handler its type
//! names. In between, safe code cannot reach the buffer: use-after-post and a second
//! completion do not type-check. Dropping or leaking anything else (a QP, a CQ) at worst
//! leaks the WR: the device never points at memory that was freed.

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

use crate::ah::AddressHandle;
use crate::cq::CqState;
use crate::dma::{BvecMapping, DmaBuffer};
use crate::mr::{MemoryRegion, SgRegion};
use crate::qp::Queues;
use crate::sys;
use crate::verbs::{WcOpcode, WcStatus, WorkCompletion};

/// What happens when a work request of this type completes.
pub trait CompletionHandler: Sized + Send + 'static {
    /// Called once per posted WR with the WR back, its completion in
    /// [`WorkRequest::completion`], in the context its CQ delivers in (softirq context
    /// for [`crate::cq::PollContext::Softirq`]: no sleeping). `queues` are the queues of
    /// the QP it was posted to; the handler may post again (while the QP drains, posts
    /// are refused and the WR handed back).
    ///
    /// A handler must not drop the last owner of the QP it was called for: the QP's drop
    /// waits for this very handler to return.
    fn complete(wr: KBox<WorkRequest<Self>>, queues: &Queues);
}

/// One work request: its completion entry, what it owns while posted, and the caller's
/// `data` (see the module documentation).
#[repr(C)]
pub struct WorkRequest<T: CompletionHandler> {
    /// First, so that the `ib_cqe` pointer a completion carries is the WR's address.
    cqe: Opaque<sys::ib_cqe>,
    /// Links the WR into a [`crate::mailbox::Mailbox`] once it is handed back there.
    pub(crate) link: Opaque<sys::llist_node>,
    completion: WorkCompletion,
    /// The queues of the QP the WR is posted to, set by the post: the completion counts
    /// itself down there (the completion's own `wc.qp` is not needed, so not trusted).
    pub(crate) queues: *const Queues,
    pub(crate) buffer: Option<DmaBuffer>,
    /// Memory someone else owns, the local side of the WR when it has no `buffer`.
    pub(crate) pages: Option<BvecMapping>,
    pub(crate) region: Option<MemoryRegion>,
    pub(crate) sg_region: Option<SgRegion>,
    pub(crate) ah: Option<Arc<AddressHandle>>,
    data: T,
}

// SAFETY: the `ib_cqe` and the link are plain C data owned by the WR, `queues` only an
// address while the WR is not posted; everything else is `Send` (`T: Send`, the buffer,
// region and handle are).
unsafe impl<T: CompletionHandler> Send for WorkRequest<T> {}
// SAFETY: `&WorkRequest` exposes only `&` access to `Sync` fields and plain data.
unsafe impl<T: CompletionHandler + Sync> Sync for WorkRequest<T> {}

impl<T: CompletionHandler> WorkRequest<T> {
    /// A WR that owns no buffer (REG_MR, LOCAL_INV), carrying `data`.
    pub fn new(data: T) -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                cqe: Opaque::new(sys::ib_cqe {
                    done: Some(work_request_done::<T>),
                }),
                link: Opaque::new(sys::llist_node {
                    next: core::ptr::null_mut(),
                }),
                completion: WorkCompletion::EMPTY,
                queues: core::ptr::null(),
                buffer: None,
                pages: None,
                region: None,
                sg_region: None,
                ah: None,
                data,
            },
            GFP_KERNEL,
        )?)
    }

    /// A WR that owns `buffer`, carrying `data`.
    pub fn with_buffer(buffer: DmaBuffer, data: T) -> Result<KBox<Self>> {
        let mut wr = Self::new(data)?;
        wr.buffer = Some(buffer);
        Ok(wr)
    }

    /// The completion of the WR's last post ([`WorkCompletion::EMPTY`] before one).
    pub fn completion(&self) -> &WorkCompletion {
        &self.completion
    }

    /// The caller's data.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The caller's data, mutably.
    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }

    /// The buffer the WR owns.
    pub fn buffer(&self) -> Option<&DmaBuffer> {
        self.buffer.as_ref()
    }

    /// The buffer the WR owns, to fill before a post.
    pub fn buffer_mut(&mut self) -> Option<&mut DmaBuffer> {
        self.buffer.as_mut()
    }

    /// Gives the WR a buffer, returning the one it had.
    pub fn replace_buffer(&mut self, buffer: Option<DmaBuffer>) -> Option<DmaBuffer> {
        core::mem::replace(&mut self.buffer, buffer)
    }

    /// Gives the WR a mapped bio_vec as its local memory (used when it has no buffer),
    /// returning the one it had: a posted WR owns it until its completion, when the
    /// caller takes it back this way, to unmap it by dropping it.
    pub fn replace_pages(&mut self, pages: Option<BvecMapping>) -> Option<BvecMapping> {
        core::mem::replace(&mut self.pages, pages)
    }

    /// Takes back the memory region a REG_MR carried (registered if it succeeded).
    pub fn take_region(&mut self) -> Option<MemoryRegion> {
        self.region.take()
    }

    /// Takes back the region a REG_MR or LOCAL_INV of an [`SgRegion`] carried.
    pub fn take_sg_region(&mut self) -> Option<SgRegion> {
        self.sg_region.take()
    }

    /// The `ib_cqe` of the WR at `wr`, for the WR being posted.
    ///
    /// # Safety
    ///
    /// `wr` points to a live `WorkRequest<T>`.
    pub(crate) unsafe fn cqe_of(wr: *mut Self) -> *mut sys::ib_cqe {
        // SAFETY: `wr` is live (caller); no reference to it is made. `Opaque<T>` is
        // `repr(transparent)` over `T`, so the field's address is the `ib_cqe`'s.
        unsafe { core::ptr::addr_of!((*wr).cqe).cast_mut().cast() }
    }
}

/// `ib_cqe.done` of every `WorkRequest<T>`: hands the WR back to `T`'s handler.
///
/// # Safety
///
/// Called by the IB core only, once per WR, with a valid `ib_wc` whose `wr_cqe` is the
/// `ib_cqe` of a `WorkRequest<T>` leaked by a post of [`Queues`], and the CQ it was
/// polled from, one of that QP's (whose `cq_context` is its `CqState`).
unsafe extern "C" fn work_request_done<T: CompletionHandler>(
    cq: *mut sys::ib_cq,
    wc: *mut sys::ib_wc,
) {
    // SAFETY: the IB core passes a valid completion for the duration of the call.
    let wc = unsafe { &*wc };
    // SAFETY: `wr_cqe` is the member a kernel consumer's completion carries.
    let cqe = unsafe { wc.__bindgen_anon_1.wr_cqe };
    // SAFETY: the cqe is the first field of a `repr(C)` `WorkRequest<T>` whose box a post
    // leaked (`KBox::into_raw`); the IB core completes each WR once, so the box is
    // reclaimed once.
    let mut wr = unsafe { KBox::from_raw(cqe.cast::<WorkRequest<T>>()) };
    wr.completion = work_completion(wc);
    if wr.completion.status == WcStatus::Success
        && wr.completion.opcode == Some(WcOpcode::LocalInvalidate)
    {
        if let Some(region) = wr.sg_region.as_mut() {
            region.invalidated();
        }
    }
    let queues = wr.queues;
    // SAFETY: the CQ is valid while it delivers; its context is the `CqState` that
    // `CompletionQueue` gave it, freed only after the CQ.
    let state = unsafe { (*cq).cq_context.cast::<CqState>().cast_const().as_ref() };
    if let Some(state) = state {
        state.set_delivering(true);
    }
    // SAFETY: the post set `queues` to the QP's `Queues`, which the QP frees only once
    // this WR is counted complete, below.
    T::complete(wr, unsafe { &*queues });
    if let Some(state) = state {
        state.set_delivering(false);
    }
    // Last: once the count says so, the QP may be destroyed.
    // SAFETY: as above; nothing touches the QP after this.
    unsafe { Queues::completed(queues) };
}

fn work_completion(wc: &sys::ib_wc) -> WorkCompletion {
    let flags = wc.wc_flags as u32;
    // SAFETY: `ex` is a union of two `u32`s; reading either is always defined.
    let ex = unsafe { wc.ex.imm_data };
    let qp_num = if wc.qp.is_null() {
        0
    } else {
        // SAFETY: a non-null `wc.qp` is the live QP the WR was posted to.
        unsafe { (*wc.qp).qp_num }
    };
    WorkCompletion {
        status: WcStatus::from_raw(wc.status).unwrap_or(WcStatus::GeneralError),
        opcode: WcOpcode::from_raw(wc.opcode),
        byte_len: wc.byte_len,
        imm: (flags & sys::ib_wc_flags_IB_WC_WITH_IMM != 0).then(|| u32::from_be(ex)),
        invalidated_rkey: (flags & sys::ib_wc_flags_IB_WC_WITH_INVALIDATE != 0).then_some(ex),
        qp_num,
        src_qp: wc.src_qp,
        slid: u16::try_from(wc.slid).unwrap_or(u16::MAX),
        grh: flags & sys::ib_wc_flags_IB_WC_GRH != 0,
        vendor_err: wc.vendor_err,
    }
}
