// SPDX-License-Identifier: GPL-2.0
//! The InfiniBand CM (`ib_cm.h`), for protocols that speak it with service IDs of their
//! own (IPoIB's connected mode, RFC 4755), where the RDMA CM's IP port spaces do not fit.
//!
//! An [`IbCmId`] is owned; its events go to an [`IbCmHandler`] shared through `Arc`,
//! called in the CM's own work (process context: it may sleep, and send on the id it
//! is given). Each id carries a token its owner chooses, so one handler tells its ids
//! apart. A REQ to a listening id arrives as a new owned id in [`Event::Request`].
//!
//! The CM forbids destroying an id inside its own callback (`ib_destroy_cm_id` would wait
//! for itself). Dropping an `IbCmId` there is allowed all the same: the id notes which
//! task runs its callback, and a drop from that task leaves the destruction to the CM,
//! which does it when the callback returns (a REQ not answered is then rejected).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::Relaxed};

use kernel::error::{from_err_ptr, to_result};
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::Device;
use crate::qp::QueuePair;
use crate::sa::Path;
use crate::sys;
use crate::verbs::Gid;

/// How much of an event's private data is kept (the IPoIB data is 8 bytes).
pub const PRIVATE_DATA_LEN: usize = 64;

/// The reject reason of a consumer's own decision (`IB_CM_REJ_CONSUMER_DEFINED`).
pub const REJ_CONSUMER_DEFINED: u32 = 28;

/// What happened on an id.
pub enum Event<T: IbCmHandler> {
    /// A REQ to a listening id: the new connection's id (reply with
    /// [`IbCmRef::send_rep`], or drop it, which rejects).
    Request(Request<T>),
    /// The REP to our REQ: move the QP to RTR and RTS, then [`IbCmRef::send_rtu`].
    Reply {
        /// The peer's QPN.
        remote_qpn: u32,
        /// What the peer sent along.
        private_data: [u8; PRIVATE_DATA_LEN],
    },
    /// The RTU to our REP: the connection is up.
    ReadyToUse,
    /// The peer rejected (the CM's reason code).
    Rejected {
        /// `IB_CM_REJ_*`.
        reason: i32,
    },
    /// A REQ, REP or DREQ of ours got no answer after the CM's retries.
    Unanswered {
        /// The MAD's send status.
        status: i32,
    },
    /// The peer disconnects: answer with [`IbCmRef::send_drep`].
    DisconnectRequest,
    /// The peer answered our DREQ.
    DisconnectReply,
    /// The connection's time-wait is over: the id can go.
    TimewaitExit,
    /// An event this API does not model (`enum ib_cm_event_type`).
    Other(u32),
}

/// A REQ: the new id and what the requester offered.
pub struct Request<T: IbCmHandler> {
    /// The requested connection's id.
    pub id: IbCmId<T>,
    /// The requester's QPN.
    pub remote_qpn: u32,
    /// The RNR retry count the requester asked for (a REP mirrors it).
    pub rnr_retry_count: u8,
    /// The port the REQ came in on.
    pub port: u8,
    /// What the requester sent along.
    pub private_data: [u8; PRIVATE_DATA_LEN],
}

/// Receives the events of every id made with it.
pub trait IbCmHandler: Send + Sync + Sized + 'static {
    /// `event` happened on `id`, whose owner gave it `token` (a request's new id starts
    /// with its listener's token). Process context; do not wait for other ids' events.
    fn event(this: &Arc<Self>, id: &IbCmRef, token: u64, event: Event<Self>);
}

/// The QP states the CM gives attributes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmQpState {
    /// RESET → INIT: port, P_Key index, access.
    Init,
    /// INIT → RTR: the path, the peer's QPN and PSN, MTU.
    Rtr,
    /// RTR → RTS: timeouts and retries.
    Rts,
}

/// The path a REQ goes over, as the SA answered it, and its two ends.
#[derive(Clone, Copy, Debug)]
pub struct ReqPath {
    /// Our port's GID (it names the port the connection leaves from).
    pub sgid: Gid,
    /// The peer's GID.
    pub dgid: Gid,
    /// Our port's LID.
    pub slid: u16,
    /// The partition.
    pub pkey: u16,
    /// The SA's answer: the peer's LID, SL, rate, MTU, packet life time (the CM's
    /// timeouts grow from it), GRH fields.
    pub path: Path,
}

/// What the id's `context` points at.
struct Context<T> {
    handler: Arc<T>,
    token: AtomicU64,
    /// The task running this id's callback, else null.
    in_callback: AtomicPtr<c_void>,
    /// Dropped inside its callback: the CM destroys the id when the callback returns.
    orphaned: AtomicBool,
}

/// An id borrowed: what can be sent on it.
pub struct IbCmRef {
    raw: NonNull<sys::ib_cm_id>,
}

/// An owned CM id; dropping it destroys it (the CM sends what the state needs: a REJ, a
/// DREQ) once its callbacks are over.
pub struct IbCmId<T: IbCmHandler> {
    id: IbCmRef,
    context: NonNull<Context<T>>,
}

// SAFETY: the CM's ids may be used from any process context; the context is shared
// through atomics and an `Arc` of a `Send + Sync` handler.
unsafe impl<T: IbCmHandler> Send for IbCmId<T> {}
// SAFETY: as above.
unsafe impl<T: IbCmHandler> Sync for IbCmId<T> {}

impl<T: IbCmHandler> core::ops::Deref for IbCmId<T> {
    type Target = IbCmRef;

    fn deref(&self) -> &IbCmRef {
        &self.id
    }
}

impl<T: IbCmHandler> IbCmId<T> {
    /// A new id on `device`, its events to `handler` with `token`. May sleep.
    pub fn new(device: &Device, handler: Arc<T>, token: u64) -> Result<Self> {
        let context = KBox::new(
            Context {
                handler,
                token: AtomicU64::new(token),
                in_callback: AtomicPtr::new(core::ptr::null_mut()),
                orphaned: AtomicBool::new(false),
            },
            GFP_KERNEL,
        )?;
        let context = NonNull::from(KBox::leak(context));
        // SAFETY: the device is valid; the handler is this type's trampoline and the
        // context the box it expects, freed only after the id is destroyed.
        let raw = unsafe {
            sys::ib_create_cm_id(
                device.as_raw(),
                Some(trampoline::<T>),
                context.as_ptr().cast(),
            )
        };
        match from_err_ptr(raw).map(NonNull::new) {
            Ok(Some(raw)) => Ok(Self {
                id: IbCmRef { raw },
                context,
            }),
            failed => {
                // SAFETY: leaked above; the CM never saw it.
                drop(unsafe { KBox::from_raw(context.as_ptr()) });
                Err(failed.err().unwrap_or(ENOMEM))
            }
        }
    }

    /// Changes the token the id's next events carry.
    pub fn set_token(&self, token: u64) {
        // SAFETY: the context lives as long as the id (type invariant).
        unsafe { self.context.as_ref() }.token.store(token, Relaxed);
    }
}

impl<T: IbCmHandler> Drop for IbCmId<T> {
    fn drop(&mut self) {
        // SAFETY: the context lives until the id is destroyed, below or by the CM.
        let context = unsafe { self.context.as_ref() };
        // SAFETY: no precondition.
        let me = unsafe { sys::tilde_ib_cm_current() };
        if context.in_callback.load(Relaxed) == me {
            // Inside this id's callback: the trampoline has the CM destroy it.
            context.orphaned.store(true, Relaxed);
            return;
        }
        // SAFETY: the id is ours and not in a callback on this task; destroying waits
        // for callbacks on other tasks, after which nothing reads the context.
        unsafe {
            sys::ib_destroy_cm_id(self.id.raw.as_ptr());
            drop(KBox::from_raw(self.context.as_ptr()));
        }
    }
}

impl IbCmRef {
    /// Listens for REQs to `service_id`.
    pub fn listen(&self, service_id: u64) -> Result {
        // SAFETY: the id is valid while borrowed.
        to_result(unsafe { sys::tilde_ib_cm_listen(self.raw.as_ptr(), service_id) })
    }

    /// Sends a REQ for an RC connection of `qp_num` over `path` to `service_id`, with
    /// `private_data` (at most 92 bytes) and the retry counts the QPs will use.
    pub fn send_req(
        &self,
        path: &ReqPath,
        service_id: u64,
        qp_num: u32,
        private_data: &[u8],
        retry_count: u8,
        rnr_retry_count: u8,
    ) -> Result {
        let len = u8::try_from(private_data.len()).map_err(|_| EINVAL)?;
        let answer = &path.path;
        let flat = sys::tilde_ib_cm_path {
            sgid: path.sgid.0,
            dgid: path.dgid.0,
            slid: path.slid,
            pkey: path.pkey,
            path: sys::tilde_rdma_path {
                dlid: answer.dlid,
                sl: answer.sl,
                rate: answer.rate,
                mtu: answer.mtu,
                packet_life_time: answer.packet_life_time,
                hop_limit: answer.hop_limit,
                traffic_class: answer.traffic_class,
                flow_label: answer.flow_label,
            },
        };
        // SAFETY: the id is valid; `flat` and `private_data` live through the call,
        // which copies them into the MAD.
        to_result(unsafe {
            sys::tilde_ib_cm_send_req(
                self.raw.as_ptr(),
                &flat,
                service_id,
                qp_num,
                0,
                private_data.as_ptr().cast(),
                len,
                retry_count,
                rnr_retry_count,
            )
        })
    }

    /// Answers a REQ with a REP for `qp_num`.
    pub fn send_rep(&self, qp_num: u32, rnr_retry_count: u8, private_data: &[u8]) -> Result {
        let len = u8::try_from(private_data.len()).map_err(|_| EINVAL)?;
        // SAFETY: as in `send_req`.
        to_result(unsafe {
            sys::tilde_ib_cm_send_rep(
                self.raw.as_ptr(),
                qp_num,
                0,
                rnr_retry_count,
                private_data.as_ptr().cast(),
                len,
            )
        })
    }

    /// Completes our side of the handshake after a REP.
    pub fn send_rtu(&self) -> Result {
        // SAFETY: the id is valid; no private data.
        to_result(unsafe { sys::ib_send_cm_rtu(self.raw.as_ptr(), core::ptr::null(), 0) })
    }

    /// Asks the peer to disconnect.
    pub fn send_dreq(&self) -> Result {
        // SAFETY: as above.
        to_result(unsafe { sys::ib_send_cm_dreq(self.raw.as_ptr(), core::ptr::null(), 0) })
    }

    /// Answers the peer's DREQ.
    pub fn send_drep(&self) -> Result {
        // SAFETY: as above.
        to_result(unsafe { sys::ib_send_cm_drep(self.raw.as_ptr(), core::ptr::null(), 0) })
    }

    /// Rejects a REQ (or a REP) with `reason`.
    pub fn reject(&self, reason: u32) -> Result {
        // SAFETY: as above; no ARI, no private data.
        to_result(unsafe {
            sys::ib_send_cm_rej(
                self.raw.as_ptr(),
                reason,
                core::ptr::null_mut(),
                0,
                core::ptr::null(),
                0,
            )
        })
    }

    /// Moves `qp` to `state` with the attributes the CM derives from this connection.
    /// May sleep.
    pub fn modify_qp(&self, qp: &QueuePair, state: CmQpState) -> Result {
        let state = match state {
            CmQpState::Init => sys::ib_qp_state_IB_QPS_INIT,
            CmQpState::Rtr => sys::ib_qp_state_IB_QPS_RTR,
            CmQpState::Rts => sys::ib_qp_state_IB_QPS_RTS,
        };
        // SAFETY: the id and the QP are valid during the call.
        to_result(unsafe { sys::tilde_ib_cm_modify_qp(self.raw.as_ptr(), qp.as_raw(), state) })
    }
}

/// The CM's callback for ids of handler type `T`.
///
/// # Safety
///
/// Called by the CM only, for an id made by [`IbCmId::new`] (or a REQ's new id, whose
/// context is still its listener's), with a valid event.
unsafe extern "C" fn trampoline<T: IbCmHandler>(
    raw: *mut sys::ib_cm_id,
    event: *const sys::ib_cm_event,
) -> c_int {
    let Some(raw) = NonNull::new(raw) else {
        return 0;
    };
    let mut flat = sys::tilde_ib_cm_event::default();
    // SAFETY: the CM passes a valid event.
    unsafe { sys::tilde_ib_cm_flatten(event, &mut flat) };
    // SAFETY: the id's context is a `Context<T>` (ours, or its listener's for a REQ),
    // alive until the id is destroyed, which waits for this callback.
    let context_ptr = unsafe { (*raw.as_ptr()).context }.cast::<Context<T>>();
    let Some(context_ptr) = NonNull::new(context_ptr) else {
        return 0;
    };
    // SAFETY: as above.
    let context = unsafe { context_ptr.as_ref() };
    // SAFETY: no precondition.
    let me = unsafe { sys::tilde_ib_cm_current() };
    let id_ref = IbCmRef { raw };
    let token = context.token.load(Relaxed);
    let kind = flat.event;
    if kind == sys::ib_cm_event_type_IB_CM_REQ_RECEIVED {
        // The new id gets a context of its own before anything else can reach it (the
        // CM runs one id's callbacks one at a time).
        let Ok(own) = KBox::new(
            Context {
                handler: context.handler.clone(),
                token: AtomicU64::new(token),
                in_callback: AtomicPtr::new(me),
                orphaned: AtomicBool::new(false),
            },
            GFP_KERNEL,
        ) else {
            // The CM destroys the new id and rejects the REQ.
            return ENOMEM.to_errno();
        };
        let own = NonNull::from(KBox::leak(own));
        // SAFETY: the id is the CM's new one, in its REQ callback; its context is ours
        // to set (ib_ipoib's `ipoib_cm_req_handler` does the same).
        unsafe { (*raw.as_ptr()).context = own.as_ptr().cast() };
        let request = Request {
            id: IbCmId {
                id: IbCmRef { raw },
                context: own,
            },
            remote_qpn: flat.remote_qpn,
            rnr_retry_count: flat.rnr_retry_count,
            port: flat.port,
            private_data: flat.private_data,
        };
        T::event(
            &context.handler.clone(),
            &id_ref,
            token,
            Event::Request(request),
        );
        return finish(own);
    }
    let event = match kind {
        sys::ib_cm_event_type_IB_CM_REP_RECEIVED => Event::Reply {
            remote_qpn: flat.remote_qpn,
            private_data: flat.private_data,
        },
        sys::ib_cm_event_type_IB_CM_RTU_RECEIVED | sys::ib_cm_event_type_IB_CM_USER_ESTABLISHED => {
            Event::ReadyToUse
        }
        sys::ib_cm_event_type_IB_CM_REJ_RECEIVED => Event::Rejected {
            reason: flat.status,
        },
        sys::ib_cm_event_type_IB_CM_REQ_ERROR
        | sys::ib_cm_event_type_IB_CM_REP_ERROR
        | sys::ib_cm_event_type_IB_CM_DREQ_ERROR => Event::Unanswered {
            status: flat.status,
        },
        sys::ib_cm_event_type_IB_CM_DREQ_RECEIVED => Event::DisconnectRequest,
        sys::ib_cm_event_type_IB_CM_DREP_RECEIVED => Event::DisconnectReply,
        sys::ib_cm_event_type_IB_CM_TIMEWAIT_EXIT => Event::TimewaitExit,
        other => Event::Other(other),
    };
    context.in_callback.store(me, Relaxed);
    let handler = context.handler.clone();
    T::event(&handler, &id_ref, token, event);
    finish(context_ptr)
}

/// After a callback: an id dropped inside it is destroyed by the CM (a nonzero return),
/// its context freed here.
fn finish<T>(context: NonNull<Context<T>>) -> c_int {
    // SAFETY: the context is alive: only this function frees it while a callback runs.
    let orphaned = unsafe { context.as_ref() }.orphaned.load(Relaxed);
    if orphaned {
        // SAFETY: the owner dropped the id; the CM destroys it on our return and calls
        // no callback after, so nothing reads the context again.
        drop(unsafe { KBox::from_raw(context.as_ptr()) });
        return 1;
    }
    // SAFETY: as above.
    unsafe { context.as_ref() }
        .in_callback
        .store(core::ptr::null_mut(), Relaxed);
    0
}
