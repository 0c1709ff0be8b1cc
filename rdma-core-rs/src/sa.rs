// SPDX-License-Identifier: GPL-2.0
//! Subnet administration: multicast joins (`ib_sa_join_multicast`) and path record
//! queries (`ib_sa_path_rec_get`), with the records flattened in C (`sys/netdev.c`).
//!
//! Answers go to an [`SaHandler`] shared through [`Arc`]: each request takes a
//! reference along into its C context and gives it back after its last callback, so the
//! handler outlives every answer without the caller counting them. Requests are
//! atomic-safe; leaving a group sleeps.

use core::ffi::{c_int, c_void};
use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::Device;
use crate::sys;
use crate::verbs::Gid;

/// A multicast member record, as the SA answered a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McMember {
    /// The group.
    pub mgid: Gid,
    /// Its multicast LID.
    pub mlid: u16,
    /// The Q_Key its datagrams carry.
    pub qkey: u32,
    /// The IB MTU code (1 = 256 ... 5 = 4096).
    pub mtu: u8,
    /// Service level.
    pub sl: u8,
    /// Static rate code.
    pub rate: u8,
    /// GRH traffic class.
    pub traffic_class: u8,
    /// GRH flow label.
    pub flow_label: u32,
    /// GRH hop limit.
    pub hop_limit: u8,
}

/// A path record, as the SA answered a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The destination LID.
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Static rate code.
    pub rate: u8,
    /// The IB MTU code.
    pub mtu: u8,
    /// The packet life time code (a connection's timeouts grow from it).
    pub packet_life_time: u8,
    /// GRH hop limit (0: no GRH needed).
    pub hop_limit: u8,
    /// GRH traffic class.
    pub traffic_class: u8,
    /// GRH flow label.
    pub flow_label: u32,
}

/// What to do with the SA's answers. Called from the SA's workqueues (process context,
/// but other locks of the IB core may be held: do not wait for SA requests there).
pub trait SaHandler: Send + Sync + 'static {
    /// The answer to the join `id`; a join may be answered again later with an error
    /// (the SA lost the membership). `this` is the handler the join was made with.
    fn join_done(this: &Arc<Self>, id: u64, result: Result<McMember>);
    /// The answer to the path query `id`, once.
    fn path_done(this: &Arc<Self>, id: u64, result: Result<Path>);
}

/// A registered SA client (`ib_sa_register_client`). Dropping it waits for the
/// client's requests to finish; leave its groups first.
pub struct SaClient(NonNull<sys::ib_sa_client>);

// SAFETY: the client is the IB core's, used through functions callable from any thread.
unsafe impl Send for SaClient {}
// SAFETY: as above.
unsafe impl Sync for SaClient {}

impl SaClient {
    /// Registers a client. May sleep.
    pub fn new() -> Result<Self> {
        // SAFETY: allocates and registers; null on failure.
        let raw = unsafe { sys::tilde_rdma_sa_client_new() };
        NonNull::new(raw).map(Self).ok_or(ENOMEM)
    }

    /// Asks to join `mgid` from `port` of `device` as its port GID `port_gid` on `pkey`:
    /// a full member (`send_only` false), or send-only; the broadcast group itself with
    /// `broadcast` `None`, any other group with the broadcast group's record, whose
    /// parameters it must share. The answer goes to `handler` as `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn join<T: SaHandler>(
        &self,
        device: &Device,
        port: u32,
        mgid: &Gid,
        port_gid: &Gid,
        pkey: u16,
        send_only: bool,
        broadcast: Option<&McMember>,
        handler: &Arc<T>,
        id: u64,
    ) -> Result<SaJoin<T>> {
        let record = broadcast.map(|b| sys::tilde_rdma_mcmember {
            mgid: b.mgid.0,
            mlid: b.mlid,
            qkey: b.qkey,
            mtu: b.mtu,
            sl: b.sl,
            rate: b.rate,
            traffic_class: b.traffic_class,
            flow_label: b.flow_label,
            hop_limit: b.hop_limit,
        });
        let record_ptr = record
            .as_ref()
            .map_or(core::ptr::null(), core::ptr::from_ref);
        let context = Arc::into_raw(handler.clone()).cast_mut().cast::<c_void>();
        // SAFETY: the client and device are valid; the byte arrays and the record are
        // read during the call only; `context` is a reference the callback may use until
        // `SaJoin::leave` returns, which then gives it back.
        let raw = unsafe {
            sys::tilde_rdma_sa_join(
                self.0.as_ptr(),
                device.as_raw(),
                port,
                mgid.0.as_ptr(),
                port_gid.0.as_ptr(),
                pkey,
                send_only,
                record_ptr,
                Some(join_callback::<T>),
                context,
                id,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(SaJoin {
                raw,
                context: context.cast::<T>(),
                _handler: PhantomData,
            }),
            None => {
                // SAFETY: the join was not made, so no callback has the reference.
                drop(unsafe { Arc::from_raw(context.cast::<T>()) });
                Err(ENOMEM)
            }
        }
    }

    /// Asks for a path from `sgid` to `dgid` on `pkey`, answered within about
    /// `timeout_ms` to `handler` as `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn path_query<T: SaHandler>(
        &self,
        device: &Device,
        port: u32,
        sgid: &Gid,
        dgid: &Gid,
        pkey: u16,
        timeout_ms: u32,
        handler: &Arc<T>,
        id: u64,
    ) -> Result {
        let context = Arc::into_raw(handler.clone()).cast_mut().cast::<c_void>();
        // SAFETY: as in `join`; the callback runs once and gives the reference back.
        let ret = unsafe {
            sys::tilde_rdma_sa_path_query(
                self.0.as_ptr(),
                device.as_raw(),
                port,
                sgid.0.as_ptr(),
                dgid.0.as_ptr(),
                pkey,
                timeout_ms,
                Some(path_callback::<T>),
                context,
                id,
            )
        };
        if ret != 0 {
            // SAFETY: the query was not sent, so no callback has the reference.
            drop(unsafe { Arc::from_raw(context.cast::<T>()) });
            return Err(Error::from_errno(ret));
        }
        Ok(())
    }
}

impl Drop for SaClient {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; unregistering waits for its requests.
        unsafe { sys::tilde_rdma_sa_client_free(self.0.as_ptr()) }
    }
}

/// A join made (or being made); [`SaJoin::leave`] leaves the group.
pub struct SaJoin<T: SaHandler> {
    raw: NonNull<sys::tilde_rdma_join>,
    context: *const T,
    _handler: PhantomData<Arc<T>>,
}

// SAFETY: the join is the IB core's; leaving is allowed from any thread that may sleep.
unsafe impl<T: SaHandler> Send for SaJoin<T> {}

impl<T: SaHandler> SaJoin<T> {
    /// Leaves the group (or cancels the join); no answer comes after. Sleeps: from
    /// atomic context the membership is leaked instead, with a log line.
    pub fn leave(self) {
        drop(self);
    }
}

impl<T: SaHandler> Drop for SaJoin<T> {
    fn drop(&mut self) {
        // SAFETY: a pure query of the current context.
        if !unsafe { sys::tilde_rdma_may_sleep() } {
            pr_err!("an SA join dropped in atomic context; leaking the membership\n");
            return;
        }
        // SAFETY: made in `SaClient::join`, freed once; after it no callback runs, so
        // the handler reference the callbacks used is ours to give back.
        unsafe {
            sys::tilde_rdma_sa_leave(self.raw.as_ptr());
            drop(Arc::from_raw(self.context));
        }
    }
}

fn status(status: c_int) -> Result {
    kernel::error::to_result(status)
}

/// # Safety
///
/// Called by netdev.c with the context `SaClient::join::<T>` gave it, while the join
/// lives; `rec` is valid for the call.
unsafe extern "C" fn join_callback<T: SaHandler>(
    context: *mut c_void,
    id: u64,
    result: c_int,
    rec: *const sys::tilde_rdma_mcmember,
) {
    // SAFETY: see above: the reference taken for the join is live until it is left, and
    // stays the join's (not dropped here).
    let handler = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(context.cast::<T>()) });
    // SAFETY: `rec` is valid for the call.
    let rec = unsafe { &*rec };
    let result = status(result).map(|()| McMember {
        mgid: Gid(rec.mgid),
        mlid: rec.mlid,
        qkey: rec.qkey,
        mtu: rec.mtu,
        sl: rec.sl,
        rate: rec.rate,
        traffic_class: rec.traffic_class,
        flow_label: rec.flow_label,
        hop_limit: rec.hop_limit,
    });
    T::join_done(&handler, id, result);
}

/// # Safety
///
/// Called by netdev.c once per query `SaClient::path_query::<T>` sent, with its context;
/// `path` is valid for the call.
unsafe extern "C" fn path_callback<T: SaHandler>(
    context: *mut c_void,
    id: u64,
    result: c_int,
    path: *const sys::tilde_rdma_path,
) {
    // SAFETY: the reference the query took, given back here, once.
    let handler = unsafe { Arc::from_raw(context.cast::<T>()) };
    // SAFETY: `path` is valid for the call.
    let path = unsafe { &*path };
    let result = status(result).map(|()| Path {
        dlid: path.dlid,
        sl: path.sl,
        rate: path.rate,
        mtu: path.mtu,
        packet_life_time: path.packet_life_time,
        hop_limit: path.hop_limit,
        traffic_class: path.traffic_class,
        flow_label: path.flow_label,
    });
    T::path_done(&handler, id, result);
}
