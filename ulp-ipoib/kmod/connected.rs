// SPDX-License-Identifier: GPL-2.0
//! Connected mode (RFC 4755) in the kernel: the RC connections the core asks for, the
//! CM listener that answers the peers' REQs, and their QPs, buffers and teardown.
//!
//! What the core decides (when to connect, what the private data says, which packets
//! go over a connection) is `ulp_ipoib::interface::connected`; this is the IO. The
//! device has no SRQ under tilde_mlx4, so every connection has its own rings, as
//! ib_ipoib's non-SRQ mode has:
//!
//! - **Active** (ours, per neighbour): `Action::Connect` under the port's lock queues the
//!   request and kicks the work, which makes the CQ, the RC QP (in INIT), a pool of send
//!   buffers and the CM id, and sends the REQ. The REP (in the CM's callback) moves the
//!   QP to RTR and RTS, sends the RTU and tells the core, whose held packets then go out
//!   as `TransmitConnected`: copied into a buffer of the connection's pool and posted.
//! - **Passive** (the peer's): the listener on our service ID takes a REQ the core
//!   accepts, makes the QP with a ring of receive buffers posted, moves it to RTS and
//!   answers with the REP. What arrives goes to the core's `receive_connected` and, as
//!   on UD, to the stack.
//!
//! A connection ends on a DREQ (answered), a REJ or an unanswered REQ/REP, a send that
//! fails, the core's `Disconnect` or the interface's teardown: its table entry moves to
//! a list the work empties, out of every lock and callback, where the CM id is destroyed
//! first (the CM sends what the state needs), then the QP is moved to error and its
//! flushed work requests waited for. Buffers are 64 KiB (`IPOIB_CM_BUF_SIZE` rounded):
//! one IPoIB message each.

use core::time::Duration;

use kernel::prelude::*;
use kernel::sync::Arc;

use rdma_core::cq::{CompletionQueue, PollContext};
use rdma_core::dma::DmaBuffer;
use rdma_core::ib_cm::{CmQpState, Event, IbCmHandler, IbCmId, IbCmRef, ReqPath, Request};
use rdma_core::kernel_api::{monotonic, push_within_capacity, sleep};
use rdma_core::netdev::{Counter, NetDev, PacketType};
use rdma_core::qp::{QueuePair, Queues};
use rdma_core::sa::Path;
use rdma_core::verbs::{Gid as VerbsGid, InitAttr, QpCaps, RemoteAccess, SendOp, WcStatus};
use rdma_core::wr::{CompletionHandler, WorkRequest};

use ulp_ipoib::interface::connected::CM_RECEIVE_MTU;
use ulp_ipoib::interface::{ConnId, ConnectFailed};
use ulp_ipoib::sa::PathRecord;
use ulp_ipoib::wire::cm::{CmData, CmDataRepr, DATA_LEN};
use ulp_ipoib::wire::{encap, Gid};

use super::{now, pop, Edge, Port, DRAIN_LIMIT, NEIGHBOURS, PKEY, PKEY_INDEX};

/// One IPoIB message of a connection: the largest packet and its header.
const CM_BUF_LEN: usize = CM_RECEIVE_MTU as usize;
/// Receive buffers of a passive connection. The peer asks for no RNR retries (ib_ipoib
/// does, as the RFC's draft advised), so one arriving message without a buffer breaks
/// the connection: the ring is ib_ipoib's non-SRQ one, twice its send ring.
const CM_RECV_RING: u32 = 256;
/// Send buffers of an active connection.
const CM_SEND_RING: u32 = 64;
/// Passive connections at once (ib_ipoib's non-SRQ limit is its `max_nonsrq_conn_qp`).
const PASSIVE_MAX: usize = 32;
/// Connections waiting for the work to make them.
const CONNECTS_MAX: usize = 16;
/// Connections waiting for the work to let them go. The work empties the list before it
/// makes connections, so between its runs it holds at most every active connection (one
/// per neighbour, and one the work replaced), the passive ones, and those retired while
/// `PASSIVE_MAX` others were waiting (a new passive one is refused then).
const RETIRED_MAX: usize = NEIGHBOURS + CONNECTS_MAX + 2 * PASSIVE_MAX;
/// Our REQ asks the peer for no transport retries (RFC 4755's advice, ib_ipoib's
/// choice), but for RNR retries without end: a peer whose ring is momentarily empty
/// slows us down instead of breaking the connection.
const REQ_RETRY: u8 = 0;
const REQ_RNR_RETRY: u8 = 7;

/// A connection's CQ: room for both of its queues as the driver rounds them up (the QP
/// reserves what it was given, which may be twice what was asked, and a little more).
fn cq_entries(ring: u32) -> u32 {
    2 * ring + 64
}

/// Which id an event is for, in its token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    /// The neighbour slot and the connection's serial (a slot's next connection, with
    /// the same `ConnId`, has another: a late event of the old one cannot end it).
    Active {
        index: usize,
        serial: u32,
    },
    Passive(u32),
}

const TOKEN_ACTIVE: u64 = 1 << 62;
const TOKEN_PASSIVE: u64 = 2 << 62;

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Listener => 0,
            Token::Active { index, serial } => {
                TOKEN_ACTIVE | ((index as u64 & 0x3fff_ffff) << 32) | u64::from(serial)
            }
            Token::Passive(number) => TOKEN_PASSIVE | u64::from(number),
        }
    }

    fn decode(token: u64) -> Self {
        match token >> 62 {
            1 => Token::Active {
                index: ((token >> 32) & 0x3fff_ffff) as usize,
                serial: token as u32,
            },
            2 => Token::Passive(token as u32),
            _ => Token::Listener,
        }
    }
}

/// A connection's CM id, QP and CQ: in the table, and cloned by a callback that uses
/// them. Dropped (which sleeps) only by the work, a CM callback or the teardown.
pub(crate) struct ConnCore {
    id: Option<IbCmId<Port>>,
    qp: QueuePair,
    _cq: Arc<CompletionQueue>,
}

impl ConnCore {
    fn new(id: IbCmId<Port>, qp: QueuePair, cq: Arc<CompletionQueue>) -> Result<Arc<Self>> {
        Ok(Arc::new(
            Self {
                id: Some(id),
                qp,
                _cq: cq,
            },
            GFP_KERNEL,
        )?)
    }

    fn id(&self) -> Option<&IbCmRef> {
        self.id.as_deref()
    }
}

impl Drop for ConnCore {
    fn drop(&mut self) {
        // The id first: no event comes after, and the CM tells the peer (a DREQ when
        // connected, a REJ before). Then every posted work request flushed back.
        drop(self.id.take());
        let _ = self.qp.modify_to_error();
        let start = monotonic();
        while self.qp.outstanding() > 0 && monotonic().saturating_sub(start) < DRAIN_LIMIT {
            sleep(Duration::from_millis(5));
        }
    }
}

/// An active connection in the table: its core and its pool of send buffers.
pub(crate) struct ActiveConn {
    conn: ConnId,
    serial: u32,
    core: Arc<ConnCore>,
    sends: KVec<KBox<WorkRequest<CmSendSlot>>>,
}

/// A connection the core asked for, waiting for the work.
pub(crate) struct PendingConnect {
    conn: ConnId,
    dgid: Gid,
    path: PathRecord,
    service_id: u64,
    data: CmDataRepr,
}

/// What the work lets go of, out of the lock.
pub(crate) enum Retired {
    Active(ActiveConn),
    Passive(Arc<ConnCore>),
}

impl Retired {
    /// Lets go of it: the CM id destroyed, the QP drained. Sleeps.
    pub(crate) fn release(self) {
        match self {
            Retired::Active(active) => drop(active),
            Retired::Passive(core) => drop(core),
        }
    }
}

/// The port's connections, under its lock (in `Edge`).
pub(crate) struct Connections {
    listener: Option<IbCmId<Port>>,
    /// Indexed by the neighbour slot of the `ConnId`.
    active: KVec<Option<ActiveConn>>,
    passive: KVec<(u32, Arc<ConnCore>)>,
    /// Numbers each connection made, active or passive, for its token.
    next_serial: u32,
    connects: KVec<PendingConnect>,
    /// The connection the work is making, and whether it was cancelled meanwhile.
    creating: Option<(ConnId, bool)>,
    retired: KVec<Retired>,
}

impl Connections {
    /// Boxed: the interface's state is built on the stack of the IB client's `add`.
    pub(crate) fn new() -> Result<KBox<Self>> {
        let mut active = KVec::with_capacity(NEIGHBOURS, GFP_KERNEL)?;
        for _ in 0..NEIGHBOURS {
            active.push(None, GFP_KERNEL)?;
        }
        let connections = Self {
            listener: None,
            active,
            passive: KVec::with_capacity(PASSIVE_MAX, GFP_KERNEL)?,
            next_serial: 0,
            connects: KVec::with_capacity(CONNECTS_MAX, GFP_KERNEL)?,
            creating: None,
            retired: KVec::with_capacity(RETIRED_MAX, GFP_KERNEL)?,
        };
        Ok(KBox::new(connections, GFP_KERNEL)?)
    }

    fn retire(&mut self, retired: Retired) {
        if let Err(retired) = push_within_capacity(&mut self.retired, retired) {
            // Cannot happen (`RETIRED_MAX`); leaking it is safe.
            pr_err!("no room to retire a connection; keeping it\n");
            core::mem::forget(retired);
        }
    }

    /// Takes the active connection `conn` out of the table, if it is there.
    fn take_active(&mut self, conn: ConnId) -> Option<ActiveConn> {
        let slot = self.active.get_mut(conn.index)?;
        if slot.as_ref().is_some_and(|a| a.conn == conn) {
            slot.take()
        } else {
            None
        }
    }

    /// Takes the active connection with token serial `serial` at `index` out of the
    /// table, if it is still there.
    fn take_serial(&mut self, index: usize, serial: u32) -> Option<ActiveConn> {
        let slot = self.active.get_mut(index)?;
        if slot.as_ref().is_some_and(|a| a.serial == serial) {
            slot.take()
        } else {
            None
        }
    }

    fn serial(&mut self) -> u32 {
        self.next_serial = self.next_serial.wrapping_add(1);
        self.next_serial
    }

    fn take_passive(&mut self, number: u32) -> Option<Arc<ConnCore>> {
        let index = self.passive.iter().position(|(n, _)| *n == number)?;
        rdma_core::kernel_api::remove(&mut self.passive, index).map(|(_, core)| core)
    }

    /// The listener, for the teardown: dropped first (that waits for REQs in their
    /// callbacks), then [`Connections::take_all`].
    pub(crate) fn take_listener(&mut self) -> Option<IbCmId<Port>> {
        self.listener.take()
    }

    /// Every connection, for the teardown.
    pub(crate) fn take_all(&mut self) -> KVec<Retired> {
        for index in 0..self.active.len() {
            if let Some(active) = self.active.get_mut(index).and_then(Option::take) {
                self.retire(Retired::Active(active));
            }
        }
        while let Some((_, core)) = pop(&mut self.passive) {
            self.retire(Retired::Passive(core));
        }
        rdma_core::kernel_api::clear(&mut self.connects);
        core::mem::replace(&mut self.retired, KVec::new())
    }
}

impl Edge {
    /// `Action::Connect`: queued for the work (connections are made in process context).
    pub(super) fn connect(
        &mut self,
        conn: ConnId,
        dgid: Gid,
        path: PathRecord,
        service_id: u64,
        data: CmDataRepr,
    ) {
        let pending = PendingConnect {
            conn,
            dgid,
            path,
            service_id,
            data,
        };
        if self.closing || push_within_capacity(&mut self.cm.connects, pending).is_err() {
            self.fail(super::Failure::Connect(conn));
            return;
        }
        self.kick_wanted = true;
    }

    /// `Action::Disconnect`: the connection leaves the table (or the queue) for the work.
    pub(super) fn disconnect(&mut self, conn: ConnId) {
        let cm = &mut self.cm;
        if let Some(index) = cm.connects.iter().position(|c| c.conn == conn) {
            let _ = rdma_core::kernel_api::remove(&mut cm.connects, index);
        }
        if let Some((creating, cancelled)) = cm.creating.as_mut() {
            if *creating == conn {
                *cancelled = true;
            }
        }
        if let Some(active) = cm.take_active(conn) {
            cm.retire(Retired::Active(active));
            self.kick_wanted = true;
        }
    }

    /// `Action::TransmitConnected`: copied into a buffer of the connection's pool and
    /// posted as a SEND.
    pub(super) fn transmit_connected(
        &mut self,
        dev: Option<&NetDev>,
        conn: ConnId,
        packet: rdma_core::netdev::TxPacket,
    ) {
        let Some(active) = self
            .cm
            .active
            .get_mut(conn.index)
            .and_then(Option::as_mut)
            .filter(|a| a.conn == conn)
        else {
            if let Some(dev) = dev {
                dev.count(Counter::TxDropped);
            }
            return;
        };
        let core = &active.core;
        let dry = super::post_copied(&mut active.sends, dev, packet, |wr, len| {
            core.qp.post_send(wr, SendOp::Send, 0, len)
        });
        self.stop_queue_if(dry, dev);
    }
}

impl Port {
    /// Listens for the peers' REQs to our service ID. May sleep.
    pub(super) fn listen(self: &Arc<Self>, qpn: u32) -> Result {
        let id = IbCmId::new(&self.device, self.clone(), Token::Listener.encode())?;
        id.listen(ulp_ipoib::wire::cm::service_id(qpn))?;
        self.state.lock().edge.cm.listener = Some(id);
        Ok(())
    }

    /// The work's part: makes the connections asked for, lets go of the retired ones.
    /// Sleeps.
    pub(super) fn service_connections(self: &Arc<Self>) {
        self.release_retired();
        loop {
            let pending = {
                let mut guard = self.state.lock();
                let cm = &mut guard.edge.cm;
                let pending = if cm.connects.is_empty() {
                    None
                } else {
                    rdma_core::kernel_api::remove(&mut cm.connects, 0)
                };
                if let Some(p) = &pending {
                    cm.creating = Some((p.conn, false));
                }
                pending
            };
            let Some(pending) = pending else {
                break;
            };
            self.start_connect(pending);
        }
        self.release_retired();
    }

    /// Lets go of the retired connections. Sleeps.
    fn release_retired(&self) {
        loop {
            let retired = pop(&mut self.state.lock().edge.cm.retired);
            let Some(retired) = retired else {
                break;
            };
            // Out of the lock: destroying the id and draining the QP sleep.
            retired.release();
        }
    }

    fn start_connect(self: &Arc<Self>, pending: PendingConnect) {
        let conn = pending.conn;
        let serial = self.state.lock().edge.cm.serial();
        let made = self.make_active(conn, serial);
        let (made, lid, sgid) = {
            let mut guard = self.state.lock();
            let edge = &mut guard.edge;
            let cancelled = edge.cm.creating.take().is_some_and(|(_, c)| c) || edge.closing;
            let lid = self.port_lid.load(core::sync::atomic::Ordering::Relaxed);
            let sgid = edge.address.gid();
            let made = match made {
                Ok(active) if cancelled => {
                    edge.cm.retire(Retired::Active(active));
                    return;
                }
                Ok(active) => {
                    let core = active.core.clone();
                    if let Some(slot) = edge.cm.active.get_mut(conn.index) {
                        if let Some(old) = slot.replace(active) {
                            edge.cm.retire(Retired::Active(old));
                        }
                    }
                    Ok(core)
                }
                Err(e) => Err(e),
            };
            (made, lid, sgid)
        };
        let sent = made.and_then(|core| {
            let path = &pending.path;
            let req_path = ReqPath {
                sgid: VerbsGid(sgid.0),
                dgid: VerbsGid(pending.dgid.0),
                slid: u16::try_from(lid).unwrap_or(0),
                pkey: PKEY,
                path: Path {
                    dlid: path.dlid,
                    sl: path.sl,
                    rate: path.rate,
                    mtu: path.mtu.code(),
                    packet_life_time: path.packet_life_time,
                    hop_limit: path.hop_limit,
                    traffic_class: path.traffic_class,
                    flow_label: path.flow_label,
                },
            };
            let mut data = [0u8; DATA_LEN];
            pending
                .data
                .emit(&mut CmData::new_unchecked(&mut data[..]))
                .map_err(|_| EINVAL)?;
            let id = core.id().ok_or(EINVAL)?;
            id.send_req(
                &req_path,
                pending.service_id,
                core.qp.qp_num(),
                &data,
                REQ_RETRY,
                REQ_RNR_RETRY,
            )
        });
        if let Err(e) = sent {
            pr_warn!(
                "{}/{}: no connection to QPN {:#x}: {:?}\n",
                self.device.name(),
                self.port,
                pending.service_id & 0x00ff_ffff,
                e
            );
            let known = self
                .state
                .lock()
                .edge
                .cm
                .active
                .get(conn.index)
                .and_then(Option::as_ref)
                .is_some_and(|a| a.serial == serial);
            if known {
                self.end_active(conn.index, serial, Err(ConnectFailed));
            } else {
                // Nothing was made: the core hears of it all the same.
                self.drive(None, |iface, out| {
                    iface.connect_complete(now(), conn, Err(ConnectFailed), out)
                });
            }
        }
    }

    /// The CQ, the RC QP in INIT, the send pool and the CM id of an active connection.
    fn make_active(self: &Arc<Self>, conn: ConnId, serial: u32) -> Result<ActiveConn> {
        let cq =
            CompletionQueue::new(&self.device, cq_entries(CM_SEND_RING), PollContext::Softirq)?;
        let caps = QpCaps {
            max_send_wr: CM_SEND_RING,
            max_recv_wr: 1,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp = QueuePair::new_rc(&self.pd, &cq, &cq, &caps)?;
        qp.modify_to_init(&InitAttr {
            port: self.port,
            pkey_index: PKEY_INDEX,
            remote_access: RemoteAccess::empty(),
        })?;
        let mut sends = KVec::with_capacity(CM_SEND_RING as usize, GFP_KERNEL)?;
        for _ in 0..CM_SEND_RING {
            let buffer = DmaBuffer::new(&self.device, CM_BUF_LEN)?;
            let slot = CmSendSlot {
                port: self.clone(),
                index: conn.index,
                serial,
            };
            sends.push(WorkRequest::with_buffer(buffer, slot)?, GFP_KERNEL)?;
        }
        let token = Token::Active {
            index: conn.index,
            serial,
        };
        let id = IbCmId::new(&self.device, self.clone(), token.encode())?;
        let core = ConnCore::new(id, qp, cq)?;
        Ok(ActiveConn {
            conn,
            serial,
            core,
            sends,
        })
    }

    /// Ends the active connection `serial` at `index`, if it is still there: out of the
    /// table, and the core told (a failed connect, or a connection lost).
    fn end_active(self: &Arc<Self>, index: usize, serial: u32, result: Result<(), ConnectFailed>) {
        let conn = {
            let mut guard = self.state.lock();
            let edge = &mut guard.edge;
            let Some(active) = edge.cm.take_serial(index, serial) else {
                return;
            };
            let conn = active.conn;
            edge.cm.retire(Retired::Active(active));
            // `drive` below kicks the work, out of the lock.
            edge.kick_wanted = true;
            conn
        };
        self.drive(None, |iface, out| match result {
            Err(failed) => iface.connect_complete(now(), conn, Err(failed), out),
            Ok(()) => iface.connection_closed(now(), conn, out),
        });
    }

    fn end_passive(&self, number: u32) {
        let kicker = {
            let mut guard = self.state.lock();
            let edge = &mut guard.edge;
            let core = edge.cm.take_passive(number);
            core.and_then(|core| {
                edge.cm.retire(Retired::Passive(core));
                edge.kicker.clone()
            })
        };
        if let Some(kicker) = kicker {
            kicker.kick();
        }
    }

    /// The REP to our REQ: RTR, RTS, RTU, and the core's held packets go.
    fn established(self: &Arc<Self>, index: usize, serial: u32, private_data: &[u8]) {
        let found = {
            let guard = self.state.lock();
            guard
                .edge
                .cm
                .active
                .get(index)
                .and_then(Option::as_ref)
                .filter(|a| a.serial == serial)
                .map(|a| (a.conn, a.core.clone()))
        };
        let Some((conn, core)) = found else {
            return;
        };
        let peer = private_data
            .get(..DATA_LEN)
            .and_then(|bytes| CmDataRepr::parse(&CmData::new_unchecked(bytes)).ok());
        let ready = match (peer, core.id()) {
            (Some(peer), Some(id)) => id
                .modify_qp(&core.qp, CmQpState::Rtr)
                .and_then(|()| id.modify_qp(&core.qp, CmQpState::Rts))
                .and_then(|()| id.send_rtu())
                .map(|()| peer),
            _ => Err(EINVAL),
        };
        match ready {
            Ok(peer) => {
                pr_info!(
                    "{}/{}: connected to QPN {:#x} (its receive MTU {})\n",
                    self.device.name(),
                    self.port,
                    peer.qpn & 0x00ff_ffff,
                    peer.mtu
                );
                self.drive(None, |iface, out| {
                    iface.connect_complete(now(), conn, Ok(peer), out)
                });
            }
            Err(e) => {
                pr_warn!(
                    "{}/{}: the REP of QPN {:#x}'s connection failed: {:?}\n",
                    self.device.name(),
                    self.port,
                    core.qp.qp_num(),
                    e
                );
                if let Some(id) = core.id() {
                    let _ = id.reject(rdma_core::ib_cm::REJ_CONSUMER_DEFINED);
                }
                drop(core);
                self.end_active(index, serial, Err(ConnectFailed));
            }
        }
    }

    /// A peer's REQ: accepted when the core says so, with a QP whose ring is posted.
    fn accept(self: &Arc<Self>, request: Request<Port>) {
        let asked = request
            .private_data
            .get(..DATA_LEN)
            .and_then(|bytes| CmDataRepr::parse(&CmData::new_unchecked(bytes)).ok());
        let answer = {
            let guard = self.state.lock();
            match asked {
                _ if guard.edge.closing => None,
                Some(asked) => guard.iface.accept_connection(&asked).ok(),
                None => None,
            }
        };
        let Some(answer) = answer else {
            // Dropping the new id inside its callback has the CM reject the REQ.
            return;
        };
        let number = self.state.lock().edge.cm.serial();
        let Request {
            id,
            rnr_retry_count,
            remote_qpn,
            ..
        } = request;
        let core = match self.make_passive(id, number) {
            Ok(core) => core,
            Err(e) => {
                pr_warn!(
                    "{}/{}: refused a connection from QP {:#x}: {:?}\n",
                    self.device.name(),
                    self.port,
                    remote_qpn,
                    e
                );
                return;
            }
        };
        let mut data = [0u8; DATA_LEN];
        if answer
            .emit(&mut CmData::new_unchecked(&mut data[..]))
            .is_err()
        {
            return;
        }
        let stored = {
            let mut guard = self.state.lock();
            let edge = &mut guard.edge;
            // Peers that connect and disconnect faster than the work lets their
            // connections go wait (their REQ is rejected) until it has.
            !edge.closing
                && edge.cm.retired.len() < PASSIVE_MAX
                && push_within_capacity(&mut edge.cm.passive, (number, core.clone())).is_ok()
        };
        if !stored {
            pr_warn!(
                "{}/{}: no room for another connection (at most {} at once): refused QP {:#x}\n",
                self.device.name(),
                self.port,
                PASSIVE_MAX,
                remote_qpn
            );
            return;
        }
        let replied = core
            .id()
            .ok_or(EINVAL)
            .and_then(|id| id.send_rep(core.qp.qp_num(), rnr_retry_count, &data));
        if let Err(e) = replied {
            pr_warn!(
                "{}/{}: REP failed: {:?}\n",
                self.device.name(),
                self.port,
                e
            );
            self.end_passive(number);
        }
    }

    /// A passive connection's CQ, QP (through INIT, its ring posted, RTR and RTS, with
    /// the attributes the REQ gave) on the REQ's id.
    fn make_passive(self: &Arc<Self>, id: IbCmId<Port>, number: u32) -> Result<Arc<ConnCore>> {
        let cq =
            CompletionQueue::new(&self.device, cq_entries(CM_RECV_RING), PollContext::Softirq)?;
        let caps = QpCaps {
            max_send_wr: 1,
            max_recv_wr: CM_RECV_RING,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp = QueuePair::new_rc(&self.pd, &cq, &cq, &caps)
            .inspect_err(|e| self.step_failed("create", *e))?;
        id.set_token(Token::Passive(number).encode());
        let core = ConnCore::new(id, qp, cq)?;
        let id = core.id().ok_or(EINVAL)?;
        id.modify_qp(&core.qp, CmQpState::Init)
            .inspect_err(|e| self.step_failed("INIT", *e))?;
        for _ in 0..CM_RECV_RING {
            let buffer = DmaBuffer::new(&self.device, CM_BUF_LEN)?;
            let wr = WorkRequest::with_buffer(buffer, CmRecvSlot { port: self.clone() })?;
            core.qp
                .post_recv(wr, 0, CM_BUF_LEN)
                .map_err(Error::from)
                .inspect_err(|e| self.step_failed("receive", *e))?;
        }
        id.modify_qp(&core.qp, CmQpState::Rtr)
            .inspect_err(|e| self.step_failed("RTR", *e))?;
        id.modify_qp(&core.qp, CmQpState::Rts)
            .inspect_err(|e| self.step_failed("RTS", *e))?;
        Ok(core)
    }

    /// Names the step of a connection's QP that failed, and how.
    fn step_failed(&self, step: &str, error: Error) {
        pr_warn!(
            "{}/{}: a connection's QP: {} failed: {:?}\n",
            self.device.name(),
            self.port,
            step,
            error
        );
    }

    /// A message of a passive connection: to the stack when the core accepts it.
    fn receive_connected(&self, bytes: &[u8]) {
        let (netdev, accepted) = {
            let mut guard = self.state.lock();
            let super::State { iface, netdev, .. } = &mut *guard;
            let accepted = iface
                .receive_connected(bytes)
                .ok()
                .map(|r| (r.ethertype, r.payload.len()));
            (netdev.clone(), accepted)
        };
        let Some(netdev) = netdev else {
            return;
        };
        let payload = accepted.and_then(|(ethertype, len)| {
            let end = encap::HEADER_LEN.checked_add(len)?;
            Some((ethertype, bytes.get(encap::HEADER_LEN..end)?))
        });
        match payload {
            // A failure is counted by the netdev (no memory for the skb).
            Some((ethertype, payload)) => {
                let _ = netdev.receive(payload, ethertype, PacketType::Host);
            }
            None => netdev.count(Counter::RxDropped),
        }
    }

    /// A send buffer is back: into its connection's pool (or freed with a connection
    /// gone), and the queue runs again.
    fn recycle_connected(&self, wr: KBox<WorkRequest<CmSendSlot>>) {
        let (index, serial) = (wr.data().index, wr.data().serial);
        let (netdev, orphan) = {
            let mut guard = self.state.lock();
            let super::State { netdev, edge, .. } = &mut *guard;
            let pool = edge
                .cm
                .active
                .get_mut(index)
                .and_then(Option::as_mut)
                .filter(|a| a.serial == serial)
                .map(|a| &mut a.sends);
            let orphan = match pool {
                Some(pool) => push_within_capacity(pool, wr).err(),
                None => Some(wr),
            };
            let wake = edge.queue_stopped && !edge.closing;
            if wake {
                edge.queue_stopped = false;
            }
            (if wake { netdev.clone() } else { None }, orphan)
        };
        // Freed out of the lock (its DMA buffer).
        drop(orphan);
        if let Some(netdev) = netdev {
            netdev.set_queue_running(true);
        }
    }
}

impl IbCmHandler for Port {
    fn event(this: &Arc<Self>, id: &IbCmRef, token: u64, event: Event<Self>) {
        let token = Token::decode(token);
        match (token, event) {
            (Token::Listener, Event::Request(request)) => this.accept(request),
            (Token::Active { index, serial }, Event::Reply { private_data, .. }) => {
                this.established(index, serial, &private_data)
            }
            (_, Event::ReadyToUse) => {}
            (Token::Active { index, serial }, Event::Rejected { reason }) => {
                pr_info!(
                    "{}/{}: connection rejected (reason {})\n",
                    this.device.name(),
                    this.port,
                    reason
                );
                this.end_active(index, serial, Err(ConnectFailed));
            }
            (Token::Active { index, serial }, Event::Unanswered { .. }) => {
                this.end_active(index, serial, Err(ConnectFailed))
            }
            (token, Event::DisconnectRequest) => {
                let _ = id.send_drep();
                match token {
                    Token::Active { index, serial } => this.end_active(index, serial, Ok(())),
                    Token::Passive(number) => this.end_passive(number),
                    Token::Listener => {}
                }
            }
            (Token::Active { index, serial }, Event::TimewaitExit) => {
                this.end_active(index, serial, Ok(()))
            }
            (Token::Passive(number), Event::TimewaitExit | Event::Rejected { .. })
            | (Token::Passive(number), Event::Unanswered { .. }) => this.end_passive(number),
            // A request's id dropped here is destroyed (and the REQ rejected) by the CM.
            _ => {}
        }
    }
}

/// A send buffer of an active connection.
pub(crate) struct CmSendSlot {
    port: Arc<Port>,
    index: usize,
    serial: u32,
}

/// A receive buffer of a passive connection.
struct CmRecvSlot {
    port: Arc<Port>,
}

impl CompletionHandler for CmSendSlot {
    fn complete(wr: KBox<WorkRequest<Self>>, _queues: &Queues) {
        let port = wr.data().port.clone();
        let (index, serial) = (wr.data().index, wr.data().serial);
        let status = wr.completion().status;
        port.recycle_connected(wr);
        if status != WcStatus::Success && status != WcStatus::WrFlushError {
            // The QP is in error: the connection is over; the next packet makes another.
            let netdev = port.state.lock().netdev.clone();
            if let Some(netdev) = netdev {
                netdev.count(Counter::TxError);
            }
            port.end_active(index, serial, Ok(()));
        }
    }
}

impl CompletionHandler for CmRecvSlot {
    fn complete(mut wr: KBox<WorkRequest<Self>>, queues: &Queues) {
        let completion = *wr.completion();
        if completion.status != WcStatus::Success {
            // Flushed (the connection is going) or broken: the ring goes with the QP.
            return;
        }
        let port = wr.data().port.clone();
        let len = usize::try_from(completion.byte_len).unwrap_or(0);
        if let Some(buffer) = wr.buffer_mut() {
            let len = len.min(buffer.len());
            let _ = buffer.with_bytes_mut(0, len, |bytes| port.receive_connected(bytes));
        }
        if let Err(rejected) = queues.post_recv(wr, 0, CM_BUF_LEN) {
            drop(rejected.wr);
        }
    }
}
