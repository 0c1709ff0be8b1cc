// SPDX-License-Identifier: GPL-2.0
//! Connection management through the kernel's RDMA CM (`rdma_cm.h`).
//!
//! A [`CmId`] is an owned `rdma_cm_id` with an event queue: the CM's callback turns each
//! event into a [`CmEvent`] and queues it, and the owner takes them with
//! [`CmId::next_event`] in process context, the way user space reads an event channel.
//! Nothing of the owner's runs in the CM's callback, so nothing the owner does can
//! deadlock against the CM's handler lock. A connection request arrives as a new,
//! owned [`CmId`] inside [`CmEvent::ConnectRequest`]; dropping it unaccepted rejects it.
//! An RC QP made with [`CmId::create_qp`] belongs to the id and is drained and destroyed
//! before it.

use core::net::SocketAddrV4;
use core::ptr::NonNull;
use core::time::Duration;

use kernel::error::{from_err_ptr, to_result};
use kernel::ffi::{c_int, c_void};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

use crate::cq::CompletionQueue;
use crate::device::Device;
use crate::pd::ProtectionDomain;
use crate::qp::{QpCaps, QueuePair};
use crate::sys;
use crate::sys::kernel_api::{push_within_capacity, remove, sleep, timed_out};

/// An event of a [`CmId`].
pub enum CmEvent {
    /// `rdma_resolve_addr` found the local device and port for the destination.
    AddrResolved,
    /// Address resolution failed (the errno).
    AddrError(i32),
    /// `rdma_resolve_route` found the path.
    RouteResolved,
    /// Route resolution failed (the errno).
    RouteError(i32),
    /// A peer asks to connect to a listening id.
    ConnectRequest(ConnectRequest),
    /// A reply came to a connect on an id without a QP.
    ConnectResponse,
    /// Connecting failed (the errno or CM status).
    ConnectError(i32),
    /// The peer did not answer.
    Unreachable(i32),
    /// The peer refused.
    Rejected {
        /// The CM's reject reason (`IB_CM_REJ_*`; 28 is the peer's own decision).
        reason: i32,
        /// What the peer said, if anything.
        private_data: KVec<u8>,
    },
    /// The connection is up.
    Established {
        /// The peer's private data (an accept's, on the connecting side).
        private_data: KVec<u8>,
    },
    /// The connection is down: the peer disconnected (answer with
    /// [`CmId::disconnect`], which completes the handshake), or this side's disconnect
    /// was answered.
    Disconnected,
    /// The device is going away: drop the id (its removal waits for that).
    DeviceRemoval,
    /// The local address moved to another device.
    AddrChange,
    /// The connection's time-wait is over.
    TimewaitExit,
    /// An event this API does not model.
    Other {
        /// `enum rdma_cm_event_type`.
        event: u32,
        /// The event's status.
        status: i32,
    },
}

/// A connection request: the new connection's id, and what the peer offered.
pub struct ConnectRequest {
    /// The id of the requested connection: create a QP on it and accept, or reject (or
    /// drop it, which rejects).
    pub id: CmId,
    /// The peer's private data.
    pub private_data: KVec<u8>,
    /// RDMA READs the peer will have outstanding towards us.
    pub initiator_depth: u8,
    /// RDMA READs the peer accepts from us.
    pub responder_resources: u8,
}

pub use crate::verbs::ConnParam;

/// The `struct rdma_conn_param` of `param` (its private data borrowed for the call).
fn conn_param_raw(param: &ConnParam<'_>) -> Result<sys::rdma_conn_param> {
    Ok(sys::rdma_conn_param {
        private_data: param.private_data.as_ptr().cast(),
        private_data_len: u8::try_from(param.private_data.len()).map_err(|_| EINVAL)?,
        responder_resources: param.responder_resources,
        initiator_depth: param.initiator_depth,
        retry_count: param.retry_count,
        rnr_retry_count: param.rnr_retry_count,
        ..Default::default()
    })
}

/// How an established connection ended, as a [`CmWatcher`] hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionLoss {
    /// The peer disconnected (or answered this side's disconnect).
    Disconnected,
    /// The device is going away; it waits for the id to be dropped.
    DeviceRemoval,
    /// The local address moved to another device.
    AddrChange,
}

/// Hears of a connection's loss when it happens, where waiting for
/// [`CmId::next_event`] would be too late (a ULP must fail its session at once, not when
/// it next polls). Called in the CM's callback: process context, with the id's handler
/// lock held, so it must not call the CM for this id (nor drop it); the event is still
/// queued as well.
pub trait CmWatcher: Send + Sync {
    /// The connection is lost.
    fn connection_lost(&self, loss: ConnectionLoss);
}

/// The event queue an id's `context` points at, and its watcher.
#[pin_data]
struct CmShared {
    #[pin]
    events: Mutex<KVec<CmEvent>>,
    #[pin]
    watcher: Mutex<Option<Arc<dyn CmWatcher>>>,
}

impl CmShared {
    fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                events <- new_mutex!(KVec::new()),
                watcher <- new_mutex!(None),
            }),
            GFP_KERNEL,
        )
    }
}

/// An RDMA CM id (`rdma_create_id`, RC over the TCP port space), destroyed on drop.
pub struct CmId {
    id: NonNull<sys::rdma_cm_id>,
    /// Also referenced by `id->context` until the id is destroyed.
    shared: Arc<CmShared>,
    /// Destroyed (drained first) before the id.
    qp: Option<QueuePair>,
}

// SAFETY: the RDMA CM allows its calls from any process context; the queue is locked.
unsafe impl Send for CmId {}
// SAFETY: `&CmId` only calls CM functions that lock internally, and reads fields the CM
// sets before the events that announce them.
unsafe impl Sync for CmId {}

impl CmId {
    /// A new id for RC connections in the initial network namespace.
    pub fn new_rc() -> Result<Self> {
        let shared = CmShared::new()?;
        let context = Arc::into_raw(shared.clone()).cast_mut().cast();
        // SAFETY: `init_net` is static; the handler is ours; `context` is a counted
        // reference that the handler borrows and `drop` gives back after the id is gone.
        let id = from_err_ptr(unsafe {
            sys::__rdma_create_kernel_id(
                sys::tilde_rdma_init_net(),
                Some(cm_event_handler),
                context,
                sys::rdma_ucm_port_space_RDMA_PS_TCP,
                sys::ib_qp_type_IB_QPT_RC,
                sys::kernel_api::c_str(c"tilde_rdma"),
            )
        });
        let id = match id.map(NonNull::new) {
            Ok(Some(id)) => id,
            failed => {
                // SAFETY: no id holds `context`: it is the reference taken above.
                drop(unsafe { Arc::from_raw(context.cast::<CmShared>().cast_const()) });
                return Err(failed.err().unwrap_or(ENOMEM));
            }
        };
        Ok(Self {
            id,
            shared,
            qp: None,
        })
    }

    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.id.as_ptr()
    }

    /// The device the id is bound to, once an address is resolved or bound to one.
    pub fn device(&self) -> Option<&Device> {
        // SAFETY: the id is valid; `device` is set when the id binds to a device and
        // stays until it is destroyed (the CM holds the device meanwhile).
        let device = unsafe { (*self.raw()).device };
        // SAFETY: a non-null `device` is registered while the id is bound to it.
        (!device.is_null()).then(|| unsafe { Device::from_raw(device) })
    }

    /// The port the id is bound to.
    pub fn port(&self) -> u32 {
        // SAFETY: the id is valid.
        unsafe { (*self.raw()).port_num }
    }

    /// Binds to a local address; with port 0 the CM picks one.
    pub fn bind(&self, addr: SocketAddrV4) -> Result {
        let mut storage = SockaddrStorage::new(addr);
        // SAFETY: the id is valid; `storage` holds a `sockaddr_in` for the call.
        to_result(unsafe { sys::rdma_bind_addr(self.raw(), storage.as_sockaddr()) })
    }

    /// Listens on the bound address for connection requests ([`CmEvent::ConnectRequest`]).
    pub fn listen(&self, backlog: u32) -> Result {
        let backlog = i32::try_from(backlog).map_err(|_| EINVAL)?;
        // SAFETY: the id is valid.
        to_result(unsafe { sys::rdma_listen(self.raw(), backlog) })
    }

    /// Starts resolving `dst` to a local device and port ([`CmEvent::AddrResolved`]).
    pub fn resolve_addr(&self, dst: SocketAddrV4, timeout: Duration) -> Result {
        let mut storage = SockaddrStorage::new(dst);
        let timeout_ms = usize::try_from(timeout.as_millis()).map_err(|_| EINVAL)?;
        // SAFETY: the id is valid; `storage` holds a `sockaddr_in`, which the CM copies.
        to_result(unsafe {
            sys::rdma_resolve_addr(
                self.raw(),
                core::ptr::null_mut(),
                storage.as_sockaddr(),
                timeout_ms,
            )
        })
    }

    /// Starts resolving the path to the resolved address ([`CmEvent::RouteResolved`]).
    pub fn resolve_route(&self, timeout: Duration) -> Result {
        let timeout_ms = usize::try_from(timeout.as_millis()).map_err(|_| EINVAL)?;
        // SAFETY: the id is valid.
        to_result(unsafe { sys::rdma_resolve_route(self.raw(), timeout_ms) })
    }

    /// Creates the id's RC QP in `pd` on the id's device; the CM moves it through its
    /// states as the connection goes.
    pub fn create_qp(
        &mut self,
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result {
        if self.qp.is_some() || !self.device().is_some_and(|device| device.is(pd.device())) {
            return Err(EINVAL);
        }
        self.qp = Some(QueuePair::new_cm(self.id, pd, send_cq, recv_cq, caps)?);
        Ok(())
    }

    /// The id's QP, once created.
    pub fn qp(&self) -> Option<&QueuePair> {
        self.qp.as_ref()
    }

    /// Connects to the resolved peer ([`CmEvent::Established`], or an error event).
    pub fn connect(&self, param: &ConnParam<'_>) -> Result {
        let mut raw = conn_param_raw(param)?;
        // SAFETY: the id is valid; `raw` and its private data live across the call, which
        // copies them.
        to_result(unsafe { sys::rdma_connect(self.raw(), &mut raw) })
    }

    /// Accepts the connection request this id came with.
    pub fn accept(&self, param: &ConnParam<'_>) -> Result {
        let mut raw = conn_param_raw(param)?;
        // SAFETY: the id is valid; `rdma_accept` must run under the id's handler lock
        // (it asserts so), which outside a CM callback the caller takes itself.
        to_result(unsafe {
            sys::rdma_lock_handler(self.raw());
            let ret = sys::rdma_accept(self.raw(), &mut raw);
            sys::rdma_unlock_handler(self.raw());
            ret
        })
    }

    /// Rejects the connection request this id came with, telling the peer
    /// `private_data` (reason `IB_CM_REJ_CONSUMER_DEFINED`).
    pub fn reject(&self, private_data: &[u8]) -> Result {
        let len = u8::try_from(private_data.len()).map_err(|_| EINVAL)?;
        // SAFETY: the id is valid; the data lives across the call, which copies it.
        to_result(unsafe {
            sys::rdma_reject(
                self.raw(),
                private_data.as_ptr().cast(),
                len,
                sys::ib_cm_rej_reason_IB_CM_REJ_CONSUMER_DEFINED as u8,
            )
        })
    }

    /// Disconnects ([`CmEvent::Disconnected`] on both sides).
    pub fn disconnect(&self) -> Result {
        // SAFETY: the id is valid.
        to_result(unsafe { sys::rdma_disconnect(self.raw()) })
    }

    /// Has `watcher` told of the connection's loss from now on (replacing any earlier
    /// one), until the id is dropped.
    pub fn watch(&self, watcher: Arc<dyn CmWatcher>) {
        *self.shared.watcher.lock() = Some(watcher);
    }

    /// The oldest event not taken yet, waiting up to `timeout` for one; `ETIMEDOUT` if
    /// none comes.
    pub fn next_event(&self, timeout: Duration) -> Result<CmEvent> {
        let step = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        loop {
            {
                let mut events = self.shared.events.lock();
                if !events.is_empty() {
                    return remove(&mut events, 0).ok_or(EINVAL);
                }
            }
            if waited >= timeout {
                return Err(timed_out());
            }
            sleep(step);
            waited += step;
        }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // The QP first: drained, then destroyed through the CM (`rdma_destroy_qp`).
        drop(self.qp.take());
        // SAFETY: the id is valid and destroyed once; when this returns no callback runs
        // for it any more.
        unsafe { sys::rdma_destroy_id(self.raw()) };
        // SAFETY: the reference `new_rc` (or the connect request) gave `id->context`.
        drop(unsafe { Arc::from_raw(core::ptr::from_ref::<CmShared>(&self.shared)) });
        // Events still queued go with `shared`: a request's id is destroyed (which
        // rejects it) here in process context, never inside a CM callback.
    }
}

/// A `sockaddr_in` in storage the size of `struct sockaddr_storage`.
#[repr(C, align(8))]
struct SockaddrStorage([u8; 128]);

impl SockaddrStorage {
    fn new(addr: SocketAddrV4) -> Self {
        let mut storage = Self([0; 128]);
        // SAFETY: the storage is 128 bytes, more than a `sockaddr_in`, and writable.
        unsafe {
            sys::tilde_rdma_fill_sockaddr_in(
                storage.0.as_mut_ptr().cast(),
                u32::from_be_bytes(addr.ip().octets()).to_be(),
                addr.port().to_be(),
            )
        };
        storage
    }

    fn as_sockaddr(&mut self) -> *mut sys::sockaddr {
        self.0.as_mut_ptr().cast()
    }
}

/// Copies `len` bytes of private data out of a CM event.
fn private_data(data: *const c_void, len: u8) -> Result<KVec<u8>> {
    let mut out = KVec::new();
    if !data.is_null() && len > 0 {
        // SAFETY: the CM hands `len` readable bytes at `data` for the callback's duration.
        let bytes = unsafe { core::slice::from_raw_parts(data.cast::<u8>(), usize::from(len)) };
        out.extend_from_slice(bytes, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Turns a CM event into a [`CmEvent`] for `id`'s queue; for a connection request also
/// gives the new id its own queue.
///
/// # Safety
///
/// Called in a CM callback for `id` with a valid `event`, `id->context` being the
/// `CmShared` of the id's owner (for a request: of the listener).
unsafe fn convert(id: *mut sys::rdma_cm_id, event: &sys::rdma_cm_event) -> Result<CmEvent> {
    let status = event.status;
    // SAFETY: `conn` is the member of the parameter union for connection events; the
    // other events leave it zeroed (`event = {}` in the CM), which reads as no data.
    let conn = unsafe { event.param.conn };
    Ok(match event.event {
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_RESOLVED => CmEvent::AddrResolved,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_ERROR => CmEvent::AddrError(status),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_RESOLVED => CmEvent::RouteResolved,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_ERROR => CmEvent::RouteError(status),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_REQUEST => {
            let private_data = private_data(conn.private_data, conn.private_data_len)?;
            let shared = CmShared::new()?;
            // The new id inherited the listener's context; from here on it has its own.
            // The CM holds the new id's handler lock during this callback, so no other
            // event of it can race this store.
            // SAFETY: `id` is the new connection's id, valid.
            unsafe { (*id).context = Arc::into_raw(shared.clone()).cast_mut().cast() };
            CmEvent::ConnectRequest(ConnectRequest {
                id: CmId {
                    // SAFETY: the CM passes a non-null id.
                    id: unsafe { NonNull::new_unchecked(id) },
                    shared,
                    qp: None,
                },
                private_data,
                initiator_depth: conn.initiator_depth,
                responder_resources: conn.responder_resources,
            })
        }
        sys::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_RESPONSE => CmEvent::ConnectResponse,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_ERROR => CmEvent::ConnectError(status),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_UNREACHABLE => CmEvent::Unreachable(status),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_REJECTED => CmEvent::Rejected {
            reason: status,
            private_data: private_data(conn.private_data, conn.private_data_len)?,
        },
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ESTABLISHED => CmEvent::Established {
            private_data: private_data(conn.private_data, conn.private_data_len)?,
        },
        sys::rdma_cm_event_type_RDMA_CM_EVENT_DISCONNECTED => CmEvent::Disconnected,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_DEVICE_REMOVAL => CmEvent::DeviceRemoval,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_CHANGE => CmEvent::AddrChange,
        sys::rdma_cm_event_type_RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEvent::TimewaitExit,
        other => CmEvent::Other {
            event: other,
            status,
        },
    })
}

/// `rdma_cm_event_handler` of every [`CmId`]: queues the event for the owner.
///
/// # Safety
///
/// Called by the RDMA CM in process context, with the id's handler lock held, for an id
/// created by [`CmId::new_rc`] or a request to one.
unsafe extern "C" fn cm_event_handler(
    id: *mut sys::rdma_cm_id,
    event: *mut sys::rdma_cm_event,
) -> c_int {
    // SAFETY: the CM passes a valid id and event for the duration of the call.
    let (context, event) = unsafe { ((*id).context, &*event) };
    // SAFETY: the id's context is a counted `CmShared` reference of its owner (or, for a
    // request, of the listener) that outlives the id's callbacks (`CmId::drop`).
    let Some(queue) = (unsafe { context.cast::<CmShared>().cast_const().as_ref() }) else {
        return 0;
    };
    let is_request = event.event == sys::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_REQUEST;
    let loss = match event.event {
        sys::rdma_cm_event_type_RDMA_CM_EVENT_DISCONNECTED => Some(ConnectionLoss::Disconnected),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_DEVICE_REMOVAL => Some(ConnectionLoss::DeviceRemoval),
        sys::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_CHANGE => Some(ConnectionLoss::AddrChange),
        _ => None,
    };
    if let Some(loss) = loss {
        if let Some(watcher) = queue.watcher.lock().as_ref() {
            watcher.connection_lost(loss);
        }
    }
    // SAFETY: as this function's contract says.
    match unsafe { convert(id, event) } {
        Ok(converted) => {
            let mut events = queue.events.lock();
            if events.reserve(1, GFP_KERNEL).is_ok() {
                // Room was just reserved: this push takes it.
                if let Err(unqueued) = push_within_capacity(&mut events, converted) {
                    drop(unqueued);
                }
                return 0;
            }
            drop(events);
            pr_err!("tilde_rdma: no memory to queue an RDMA CM event; dropped\n");
            if let CmEvent::ConnectRequest(request) = converted {
                // The request's id must not be destroyed in its own callback: give its
                // queue back and let the CM destroy the id (non-zero return).
                let ConnectRequest { id, .. } = request;
                let shared = id.shared.clone();
                core::mem::forget(id);
                // SAFETY: the reference `convert` stored in the new id's context.
                drop(unsafe { Arc::from_raw(core::ptr::from_ref::<CmShared>(&shared)) });
                return ENOMEM.to_errno();
            }
            0
        }
        Err(error) => {
            pr_err!(
                "tilde_rdma: RDMA CM event {} lost: {:?}\n",
                event.event,
                error
            );
            // A request we could not take is refused: a non-zero return makes the CM
            // destroy the new id.
            if is_request {
                error.to_errno()
            } else {
                0
            }
        }
    }
}
