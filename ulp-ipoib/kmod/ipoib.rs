// SPDX-License-Identifier: GPL-2.0
//! tilde_ipoib: IP over InfiniBand, datagram mode (RFC 4391), as a network interface per
//! InfiniBand port.
//!
//! The protocol is `ulp_ipoib`'s sans-IO [`Interface`]; this module is its kernel glue,
//! in safe Rust over `rdma_core`: an IB client makes one [`PortInterface`] per port of an
//! InfiniBand device (the `port` parameter narrows it to one, `mlx4_0:1`), each with a UD
//! QP, a receive ring, a pool of send buffers, an SA client for joins and path queries,
//! and a netdev. Every input (the stack's open, stop, transmit and multicast list, SA
//! answers, receive completions, port events, the clock) goes to the interface
//! under one lock, and its actions are carried out there, in order: the verbs they need
//! do not sleep. What sleeps (leaving a group, detaching the QP from it, setting the Q_Key)
//! is done outside the lock, by the SA answer's own work or the periodic work.
//!
//! Per packet nothing is allocated but the receive skb: a send is copied into a buffer of
//! the pool, a receive buffer is reposted as soon as its bytes are handed to the stack.
//! Connected mode (RFC 4755, `/sys/class/net/<if>/mode`) is in [`connected`]: an RC
//! connection per neighbour, and a CM listener for the peers'.
//! Not done yet: P_Key sub-interfaces, ICMP for packets too big (see docs/ipoib.md).

use core::time::Duration;

use kernel::prelude::*;
use kernel::sync::Arc;

use rdma_core::ah::AddressHandle;
use rdma_core::client::{Client, Registration as ClientRegistration};
use rdma_core::cq::{CompletionQueue, PollContext};
use rdma_core::device::{Device, DeviceEvent, DeviceRef, EventHandler, EventRegistration};
use rdma_core::dma::DmaBuffer;
use rdma_core::kernel_api::{monotonic, push_within_capacity, sleep};
use rdma_core::netdev::{self, Counter, NetDev, NetDevRef, PacketType, TxPacket};
use rdma_core::pd::ProtectionDomain;
use rdma_core::qp::{PostResult, QueuePair, Queues, UdDest};
use rdma_core::sa::{McMember, Path, SaClient, SaHandler, SaJoin};
use rdma_core::verbs::{
    AddressVector as VerbsAv, Decoded, Gid as VerbsGid, Grh, LinkLayer, PortState, QpCaps, WcStatus,
};
use rdma_core::work::{DelayedWork, Kicker, WorkHandler};
use rdma_core::wr::{CompletionHandler, WorkRequest};

use ulp_ipoib::interface::{
    Action, AhId, Config, ConnId, ConnectFailed, Instant, Interface, Mode, PacketKind, PortEvent,
    PortInfo, QueryFailed, QueryId, ReceiveCompletion, CM_MTU, RECEIVE_HEADROOM,
};
use ulp_ipoib::sa::{AddressVector, IbMtu, JoinState, McMemberRecord, PathRecord};
use ulp_ipoib::wire::encap;
use ulp_ipoib::wire::{Gid, HardwareAddress};

mod connected;

module! {
    type: IpoibModule,
    name: "tilde_ipoib",
    description: "IP over InfiniBand, datagram and connected mode (tilde, Rust)",
    license: "GPL",
}

/// The module's parameters, declared in C (`param.c`): the kernels tilde targets disagree
/// on what Rust's `module!` takes.
mod param {
    extern "C" {
        fn tilde_ipoib_port_wanted(device: *const u8, len: usize, port: u32) -> bool;
        fn tilde_ipoib_connected_mode() -> bool;
    }

    /// Whether `port` of the device `device` gets an interface.
    pub(crate) fn port_wanted(device: &str, port: u32) -> bool {
        // SAFETY: `device` is valid for `len` bytes during the call, which only reads them.
        unsafe { tilde_ipoib_port_wanted(device.as_ptr(), device.len(), port) }
    }

    /// Whether interfaces offer connected mode (`connected_mode=1`).
    pub(crate) fn connected_mode() -> bool {
        // SAFETY: reads a module parameter, which is only written at load.
        unsafe { tilde_ipoib_connected_mode() }
    }
}

/// Paths, neighbours, groups (the broadcast group's included), address handles (enough
/// for every path and group) and packets held while their path or group is resolved.
type Iface = Interface<TxPacket, 128, NEIGHBOURS, 64, 192, 256>;
const NEIGHBOURS: usize = 256;
/// About 48 KiB: written into its allocation as a constant, never built on the stack.
const EMPTY_IFACE: Iface = Iface::empty();
const GROUPS: usize = 64;
const AHS: usize = 192;

/// The P_Key of the default partition (index 0), which every interface uses.
const PKEY: u16 = 0xffff;
const PKEY_INDEX: u16 = 0;
/// Receive buffers: the GRH slot and the largest UD payload (4 KiB IB MTU).
const RECV_RING: u32 = 128;
const RECV_LEN: usize = RECEIVE_HEADROOM - encap::HEADER_LEN + 4096;
/// Send buffers, one per datagram in flight.
const SEND_RING: u32 = 128;
const SEND_LEN: usize = 4096;
/// How long an SA path query may take (ib_ipoib asks for 1 s as well).
const PATH_TIMEOUT_MS: u32 = 1000;
/// The periodic work: timeouts of the core, groups to leave, and the port's state.
const TICK: Duration = Duration::from_millis(100);
const PORT_POLL_TICKS: u32 = 5;
/// The longest teardown waits for SA answers and flushed work requests.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

struct IpoibModule {
    _client: ClientRegistration<IpoibClient>,
}

impl kernel::Module for IpoibModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let client = ClientRegistration::register()?;
        pr_info!("registered\n");
        Ok(Self { _client: client })
    }
}

impl Drop for IpoibModule {
    fn drop(&mut self) {
        pr_info!("unloading\n");
    }
}

struct IpoibClient;

rdma_core::ib_client!(IpoibClient, c"tilde_ipoib");

impl Client for IpoibClient {
    type DeviceData = KVec<PortInterface>;

    fn add(device: &Device) -> Result<KVec<PortInterface>> {
        let mut interfaces = KVec::new();
        for port in device.ports() {
            if !param::port_wanted(device.name().as_str(), port) {
                continue;
            }
            let Ok(attr) = device.query_port(port) else {
                continue;
            };
            if !matches!(attr.link_layer, Decoded::Known(LinkLayer::InfiniBand)) {
                continue;
            }
            match PortInterface::new(device, port) {
                Ok(interface) => interfaces.push(interface, GFP_KERNEL)?,
                Err(e) => pr_err!("{}/{}: no interface: {:?}\n", device.name(), port, e),
            }
        }
        if interfaces.is_empty() {
            return Err(ENODEV);
        }
        Ok(interfaces)
    }

    fn remove(_device: &Device, interfaces: KVec<PortInterface>) {
        drop(interfaces);
    }
}

/// The milliseconds of the monotonic clock, the core's time.
fn now() -> Instant {
    Instant::from_millis(u64::try_from(monotonic().as_millis()).unwrap_or(u64::MAX))
}

/// A group membership: the SA's join, and the multicast LID the QP is attached with.
struct Membership {
    mgid: Gid,
    query: u64,
    send_only: bool,
    join: SaJoin<Port>,
    attached: Option<u16>,
}

/// A work request of the send pool.
struct SendSlot {
    port: Arc<Port>,
}

/// A work request of the receive ring.
struct RecvSlot {
    port: Arc<Port>,
}

/// What an action may fail at, to be told to the core once its call has returned.
#[derive(Clone, Copy)]
enum Failure {
    Join(QueryId),
    Path(QueryId),
    Ah(AhId),
    Connect(ConnId),
}

/// Everything the core's actions act on, apart from the core itself.
struct Edge {
    /// Created at an `AhId`'s index, with its generation.
    ahs: KVec<Option<(u32, Arc<AddressHandle>)>>,
    sends: KVec<KBox<WorkRequest<SendSlot>>>,
    joins: KVec<Membership>,
    /// Memberships to leave, outside the lock (leaving sleeps).
    leaving: KVec<Membership>,
    /// Failures to report after the call that caused them (bounded; more are dropped,
    /// and the core's timeouts recover from them).
    failures: KBox<[Option<Failure>; 8]>,
    /// The hardware address the netdev has.
    address: HardwareAddress,
    /// The address the port's GID now gives, when it differs (set by the work).
    new_address: Option<HardwareAddress>,
    queries_in_flight: u32,
    queue_stopped: bool,
    closing: bool,
    /// Connected mode's connections and listener.
    cm: KBox<connected::Connections>,
    /// Runs the periodic work at once (connections are made there): kicked out of the
    /// lock, when an action asked (`kick_wanted`).
    kicker: Option<Kicker>,
    kick_wanted: bool,
    /// Set while the mode is switched: the MTU goes to the stack through `dev_set_mtu`
    /// (RTNL is held), not written under the lock.
    defer_mtu: bool,
}

struct State {
    iface: KBox<Iface>,
    /// The netdev, for the contexts that are not its callbacks; `None` once it goes.
    netdev: Option<NetDevRef>,
    edge: Edge,
}

/// One interface's shared part: what the netdev's callbacks, the completions, the SA
/// answers and the work all reach.
struct Port {
    device: DeviceRef,
    port: u32,
    pd: Arc<ProtectionDomain>,
    qp: QueuePair,
    sa: SaClient,
    state: rdma_core::sync::IrqSpinLock<State>,
    /// The groups the QP is attached to, with how many memberships hold each: two
    /// memberships of a group overlap when a rejoin is answered before the old one is
    /// left, and the QP is attached once (a second attach would be counted by the IB
    /// core and never undone, so the QP could not be destroyed). Taken by the SA's
    /// answers and the work, which may sleep.
    attachments: rdma_core::sync::Mutex<KVec<([u8; 16], u32)>>,
    /// What the core was last told of the port: active, and with which LID.
    port_active: core::sync::atomic::AtomicBool,
    port_lid: core::sync::atomic::AtomicU32,
    /// An event asked for the port to be looked at on the work's next tick.
    poll_soon: core::sync::atomic::AtomicBool,
    ticks: core::sync::atomic::AtomicU32,
}

/// One port's interface: its netdev and periodic work, dropped in order.
struct PortInterface {
    events: Option<EventRegistration<Port>>,
    registration: Option<netdev::Registration<PortHandle>>,
    work: Option<DelayedWork<PortHandle>>,
    port: Arc<Port>,
}

/// The last element (`KVec::pop` is absent on 6.12).
fn pop<T>(vec: &mut KVec<T>) -> Option<T> {
    let last = vec.len().checked_sub(1)?;
    rdma_core::kernel_api::remove(vec, last)
}

fn ib_mtu(code: u8) -> Option<IbMtu> {
    IbMtu::from_code(code)
}

fn verbs_av(av: &AddressVector) -> VerbsAv {
    VerbsAv::Ib {
        dlid: av.dlid,
        sl: av.sl,
        grh: av.grh.map(|g| Grh {
            sgid_index: 0,
            dgid: VerbsGid(g.dgid.0),
            hop_limit: g.hop_limit,
        }),
    }
}

fn mc_member(mgid: &Gid, record: &McMemberRecord) -> McMember {
    McMember {
        mgid: VerbsGid(mgid.0),
        mlid: record.mlid,
        qkey: record.qkey,
        mtu: record.mtu.code(),
        sl: record.sl,
        rate: record.rate,
        traffic_class: record.traffic_class,
        flow_label: record.flow_label,
        hop_limit: record.hop_limit,
    }
}

impl Edge {
    fn fail(&mut self, failure: Failure) {
        if let Some(slot) = self.failures.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(failure);
        }
    }

    fn take_failure(&mut self) -> Option<Failure> {
        self.failures.iter_mut().find_map(Option::take)
    }

    /// Moves the membership of `mgid`, if any, to the leaving list.
    fn retire(&mut self, mgid: &Gid) {
        while let Some(index) = self.joins.iter().position(|m| m.mgid == *mgid) {
            let membership = rdma_core::kernel_api::remove(&mut self.joins, index);
            let Some(membership) = membership else {
                break;
            };
            if let Err(membership) = push_within_capacity(&mut self.leaving, membership) {
                // Cannot happen (the list holds every membership); leaking it is safe.
                pr_err!("no room to leave a group; keeping the membership\n");
                core::mem::forget(membership);
            }
        }
    }

    /// Carries out one action of the core, in order, under the lock.
    fn act(&mut self, port: &Arc<Port>, dev: Option<&NetDev>, action: Action<TxPacket>) {
        match action {
            Action::Join {
                query,
                mgid,
                state,
                broadcast,
            } => {
                self.retire(&mgid);
                if self.closing {
                    return;
                }
                let send_only = state == JoinState::SendOnly;
                let record = broadcast.map(|b| mc_member(&mgid, &b));
                let joined = port.sa.join(
                    &port.device,
                    port.port,
                    &VerbsGid(mgid.0),
                    &VerbsGid(self.address.gid().0),
                    PKEY,
                    send_only,
                    record.as_ref(),
                    port,
                    query.0,
                );
                let membership = joined.map(|join| Membership {
                    mgid,
                    query: query.0,
                    send_only,
                    join,
                    attached: None,
                });
                match membership.map(|m| push_within_capacity(&mut self.joins, m)) {
                    Ok(Ok(())) => {}
                    Ok(Err(membership)) => {
                        let _ = push_within_capacity(&mut self.leaving, membership);
                        self.fail(Failure::Join(query));
                    }
                    Err(_) => self.fail(Failure::Join(query)),
                }
            }
            Action::Leave { mgid } => self.retire(&mgid),
            Action::SendPathQuery {
                query,
                dgid,
                sgid,
                pkey,
            } => {
                if self.closing {
                    return;
                }
                let sent = port.sa.path_query(
                    &port.device,
                    port.port,
                    &VerbsGid(sgid.0),
                    &VerbsGid(dgid.0),
                    pkey,
                    PATH_TIMEOUT_MS,
                    port,
                    query.0,
                );
                match sent {
                    Ok(()) => self.queries_in_flight = self.queries_in_flight.saturating_add(1),
                    Err(_) => self.fail(Failure::Path(query)),
                }
            }
            // The answer, if one comes, matches nothing in the core any more.
            Action::CancelPathQuery { .. } => {}
            Action::CreateAh { ah, av } => {
                let created = AddressHandle::new_atomic(&port.pd, port.port, &verbs_av(&av));
                match (created, self.ahs.get_mut(ah.index)) {
                    (Ok(handle), Some(slot)) => *slot = Some((ah.generation, handle)),
                    _ => self.fail(Failure::Ah(ah)),
                }
            }
            Action::DestroyAh { ah } => {
                if let Some(slot) = self.ahs.get_mut(ah.index) {
                    if slot
                        .as_ref()
                        .is_some_and(|(generation, _)| *generation == ah.generation)
                    {
                        // Sends in flight keep their own references.
                        *slot = None;
                    }
                }
            }
            Action::Transmit {
                ah,
                qpn,
                qkey,
                packet,
            } => self.transmit(port, dev, ah, qpn, qkey, packet),
            Action::TransmitConnected { conn, packet } => {
                self.transmit_connected(dev, conn, packet)
            }
            Action::Connect {
                conn,
                dgid,
                path,
                service_id,
                data,
            } => self.connect(conn, dgid, path, service_id, data),
            Action::Disconnect { conn } => self.disconnect(conn),
            Action::Drop { packet, .. } => {
                if let Some(dev) = dev {
                    dev.count(Counter::TxDropped);
                }
                drop(packet);
            }
            Action::CarrierOn => {
                if let Some(dev) = dev {
                    dev.set_carrier(true);
                }
            }
            Action::CarrierOff => {
                if let Some(dev) = dev {
                    dev.set_carrier(false);
                }
            }
            Action::SetMtu { mtu } => {
                if self.defer_mtu {
                    return;
                }
                if let Some(dev) = dev {
                    dev.set_mtu(u32::from(mtu));
                }
            }
            Action::SetHardwareAddress { address } => {
                // Setting it takes the netdev's address lock with bottom halves off,
                // which must not nest in this one: the work does it.
                if address != self.address {
                    self.new_address = Some(address);
                }
            }
        }
    }

    fn transmit(
        &mut self,
        port: &Arc<Port>,
        dev: Option<&NetDev>,
        ah: AhId,
        qpn: u32,
        qkey: u32,
        packet: TxPacket,
    ) {
        let handle = self
            .ahs
            .get(ah.index)
            .and_then(Option::as_ref)
            .filter(|(generation, _)| *generation == ah.generation)
            .map(|(_, handle)| handle.clone());
        let Some(handle) = handle else {
            if let Some(dev) = dev {
                dev.count(Counter::TxDropped);
            }
            return;
        };
        let dest = UdDest {
            ah: handle,
            remote_qpn: qpn,
            remote_qkey: qkey,
        };
        let stopped = post_copied(&mut self.sends, dev, packet, |wr, len| {
            port.qp.post_ud_send(wr, &dest, 0, len)
        });
        self.stop_queue_if(stopped, dev);
    }

    /// Stops the interface's queue when a send pool ran dry (`dry`); the next completion
    /// to come back wakes it.
    fn stop_queue_if(&mut self, dry: bool, dev: Option<&NetDev>) {
        if dry && !self.queue_stopped {
            self.queue_stopped = true;
            if let Some(dev) = dev {
                dev.set_queue_running(false);
            }
        }
    }
}

/// Sends `packet` with a work request of `pool`: copied into its buffer and posted with
/// `post` (the buffer, the length). Counts what happened; whether the pool is now empty.
fn post_copied<T: CompletionHandler>(
    pool: &mut KVec<KBox<WorkRequest<T>>>,
    dev: Option<&NetDev>,
    packet: TxPacket,
    post: impl FnOnce(KBox<WorkRequest<T>>, usize) -> PostResult<T>,
) -> bool {
    let count = |counter| {
        if let Some(dev) = dev {
            dev.count(counter);
        }
    };
    let Some(mut wr) = pop(pool) else {
        count(Counter::TxDropped);
        return true;
    };
    let copied = match wr.buffer_mut() {
        Some(buffer) => buffer
            .with_bytes_mut(0, buffer.len(), |bytes| packet.copy_to(bytes))
            .and_then(|copied| copied),
        None => Err(EINVAL),
    };
    let Ok(len) = copied else {
        count(Counter::TxDropped);
        let _ = push_within_capacity(pool, wr);
        return pool.is_empty();
    };
    match post(wr, len) {
        Ok(()) => {
            count(Counter::Sent(u32::try_from(len).unwrap_or(u32::MAX)));
            packet.sent();
        }
        Err(rejected) => {
            count(Counter::TxError);
            let _ = push_within_capacity(pool, rejected.wr);
        }
    }
    pool.is_empty()
}

impl Port {
    /// Runs `input` on the core under the lock, carrying out its actions, then tells the
    /// core what failed. `dev` is the netdev when called from one of its callbacks.
    fn drive(
        self: &Arc<Self>,
        dev: Option<&NetDev>,
        input: impl FnOnce(&mut Iface, &mut dyn FnMut(Action<TxPacket>)),
    ) {
        let mut guard = self.state.lock();
        let State {
            iface,
            netdev,
            edge,
            ..
        } = &mut *guard;
        let dev = dev.or(netdev.as_deref());
        input(iface, &mut |action| edge.act(self, dev, action));
        // Each report may fail again (a rejoin that cannot be sent): bounded, as the
        // failure list is.
        for _ in 0..16 {
            let Some(failure) = edge.take_failure() else {
                break;
            };
            let now = now();
            let out = &mut |action| edge.act(self, dev, action);
            match failure {
                Failure::Join(query) => iface.join_complete(now, query, Err(QueryFailed), out),
                Failure::Path(query) => iface.path_complete(now, query, Err(QueryFailed), out),
                Failure::Ah(ah) => iface.ah_create_failed(now, ah, out),
                Failure::Connect(conn) => {
                    iface.connect_complete(now, conn, Err(ConnectFailed), out)
                }
            }
        }
        // The work's own lock is not taken under this one.
        let kicker = if core::mem::take(&mut edge.kick_wanted) {
            edge.kicker.clone()
        } else {
            None
        };
        drop(guard);
        if let Some(kicker) = kicker {
            kicker.kick();
        }
    }

    /// A receive completion's bytes, handed to the stack when the core accepts them.
    fn receive(&self, completion: ReceiveCompletion, bytes: &[u8]) {
        let (netdev, accepted) = {
            let mut guard = self.state.lock();
            let State { iface, netdev, .. } = &mut *guard;
            let accepted = iface
                .receive(completion, bytes)
                .ok()
                .map(|r| (r.ethertype, r.kind, r.payload.len()));
            (netdev.clone(), accepted)
        };
        let Some(netdev) = netdev else {
            return;
        };
        let Some((ethertype, kind, len)) = accepted else {
            netdev.count(Counter::RxDropped);
            return;
        };
        let kind = match kind {
            PacketKind::Host => PacketType::Host,
            PacketKind::Multicast => PacketType::Multicast,
            PacketKind::Broadcast => PacketType::Broadcast,
        };
        // The core's payload is the frame after the GRH slot and the header.
        let payload = RECEIVE_HEADROOM
            .checked_add(len)
            .and_then(|end| bytes.get(RECEIVE_HEADROOM..end));
        if let Some(payload) = payload {
            // A failure is counted by the netdev (no memory for the skb).
            let _ = netdev.receive(payload, ethertype, kind);
        }
    }

    /// A send work request is back: into the pool, and the queue runs again.
    fn recycle(&self, wr: KBox<WorkRequest<SendSlot>>) {
        let netdev = {
            let mut guard = self.state.lock();
            let State { netdev, edge, .. } = &mut *guard;
            // The pool has room for every work request there is.
            let _ = push_within_capacity(&mut edge.sends, wr);
            if edge.queue_stopped && !edge.closing {
                edge.queue_stopped = false;
                netdev.clone()
            } else {
                None
            }
        };
        if let Some(netdev) = netdev {
            netdev.set_queue_running(true);
        }
    }

    /// A membership of `mgid` holds the QP's attachment to it: attached at the first.
    /// Sleeps.
    fn attach(&self, mgid: &VerbsGid, mlid: u16) -> Result {
        let mut table = self.attachments.lock();
        if let Some((_, holders)) = table.iter_mut().find(|(gid, _)| *gid == mgid.0) {
            *holders += 1;
            return Ok(());
        }
        self.qp.attach_mcast(mgid, mlid)?;
        if let Err(e) = table.push((mgid.0, 1), GFP_KERNEL) {
            let _ = self.qp.detach_mcast(mgid, mlid);
            return Err(e.into());
        }
        Ok(())
    }

    /// A membership of `mgid` lets the attachment go: detached at the last. Sleeps.
    fn detach(&self, mgid: &VerbsGid, mlid: u16) {
        let mut table = self.attachments.lock();
        let Some(index) = table.iter().position(|(gid, _)| *gid == mgid.0) else {
            return;
        };
        if let Some((_, holders)) = table.get_mut(index) {
            *holders = holders.saturating_sub(1);
            if *holders > 0 {
                return;
            }
        }
        let _ = rdma_core::kernel_api::remove(&mut table, index);
        if let Err(e) = self.qp.detach_mcast(mgid, mlid) {
            pr_err!("detaching from a group failed: {:?}\n", e);
        }
    }

    /// Leaves the groups waiting to be left: detached, then the SA told. Sleeps.
    fn leave_groups(&self) {
        loop {
            let membership = pop(&mut self.state.lock().edge.leaving);
            let Some(membership) = membership else {
                break;
            };
            if let Some(mlid) = membership.attached {
                self.detach(&VerbsGid(membership.mgid.0), mlid);
            }
            membership.join.leave();
        }
    }

    /// The port's state, fed to the core when it changed (its activity or its LID).
    /// Sleeps.
    fn poll_port(self: &Arc<Self>) {
        use core::sync::atomic::Ordering::Relaxed;
        let Ok(attr) = self.device.query_port(self.port) else {
            return;
        };
        let active = matches!(attr.state, Decoded::Known(PortState::Active));
        let was = self.port_active.swap(active, Relaxed);
        let lid = u16::try_from(attr.lid).unwrap_or(0);
        let old_lid = self.port_lid.swap(u32::from(lid), Relaxed);
        let event = match (was, active) {
            (false, true) => {
                let Ok(gid) = self.device.query_gid(self.port, 0) else {
                    self.port_active.store(false, Relaxed);
                    return;
                };
                PortEvent::Active(PortInfo {
                    lid,
                    gid: Gid(gid.0),
                    pkey_present: true,
                })
            }
            (true, false) => PortEvent::Error,
            (true, true) if old_lid != u32::from(lid) => PortEvent::LidChange { lid },
            _ => return,
        };
        pr_info!(
            "{}/{}: port {}, LID {}\n",
            self.device.name(),
            self.port,
            if active { "active" } else { "down" },
            lid
        );
        self.drive(None, |iface, out| iface.port_event(now(), event, out));
    }

    /// A new hardware address (the port's GID changed), set outside the lock.
    fn update_address(&self) {
        let (netdev, address) = {
            let mut guard = self.state.lock();
            let State { netdev, edge, .. } = &mut *guard;
            let Some(address) = edge.new_address.take() else {
                return;
            };
            edge.address = address;
            (netdev.clone(), address)
        };
        if let Some(netdev) = netdev {
            netdev.set_address(address.as_bytes());
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // The last reference: every work request, SA request and membership gave theirs
        // back (the scenarios look for this line after rmmod).
        pr_info!("{}/{}: released\n", self.device.name(), self.port);
    }
}

/// What the netdev and the periodic work hold: the port's `Arc`, which the core's
/// actions take references of (SA requests carry one along).
struct PortHandle(Arc<Port>);

impl netdev::Driver for PortHandle {
    fn open(&self, dev: &NetDev) -> Result {
        self.0.drive(Some(dev), |iface, out| iface.open(now(), out));
        Ok(())
    }

    fn stop(&self, dev: &NetDev) {
        self.0.drive(Some(dev), |iface, out| iface.stop(now(), out));
    }

    fn start_xmit(&self, dev: &NetDev, packet: TxPacket) {
        let destination = HardwareAddress(*packet.destination());
        let ethertype = packet.ethertype();
        let len = packet.len().saturating_sub(encap::HEADER_LEN);
        self.0.drive(Some(dev), |iface, out| {
            iface.transmit(now(), destination, ethertype, len, packet, out)
        });
    }

    fn change_mtu(&self, dev: &NetDev, mtu: u32) -> Result<u32> {
        let asked = u16::try_from(mtu).map_err(|_| EINVAL)?;
        let mut taken = Err(EINVAL);
        self.0.drive(Some(dev), |iface, out| {
            if iface.set_mtu(asked, out).is_ok() {
                // In datagram mode the broadcast group's MTU caps what is asked; before
                // the group is joined the interface takes it as asked.
                taken = Ok(iface.mtu().map_or(mtu, u32::from));
            }
        });
        taken
    }

    fn connected_mode(&self, _dev: &NetDev) -> Result<bool> {
        Ok(self.0.state.lock().iface.mode() == Mode::Connected)
    }

    fn set_connected_mode(&self, dev: &NetDev, connected: bool) -> Result<u32> {
        let mode = if connected {
            Mode::Connected
        } else {
            Mode::Datagram
        };
        let mut switched = Err(EINVAL);
        self.0.state.lock().edge.defer_mtu = true;
        self.0.drive(Some(dev), |iface, out| {
            switched = iface.set_mode(mode, out).map_err(|_| EINVAL);
        });
        self.0.state.lock().edge.defer_mtu = false;
        switched?;
        pr_info!(
            "{}: {} mode\n",
            dev.name(),
            if connected { "connected" } else { "datagram" }
        );
        let iface_mtu = self.0.state.lock().iface.mtu();
        // Before the broadcast group is joined, datagram mode has no MTU yet.
        Ok(iface_mtu.map_or(u32::from(CM_MTU), u32::from))
    }

    fn set_rx_mode(&self, dev: &NetDev) {
        // The stack's groups (IPv4 all-hosts, IPv6 solicited-node ...): a few at most,
        // and the core refuses beyond its group table anyway.
        let mut gids = [[0u8; 16]; 32];
        let n = dev.multicast_list(&mut gids);
        let list = gids.iter().take(n).map(|gid| Gid(*gid));
        self.0.drive(Some(dev), |iface, out| {
            iface.set_multicast_list(now(), list, out)
        });
    }
}

impl SaHandler for Port {
    fn join_done(this: &Arc<Self>, id: u64, result: Result<McMember>) {
        let record = match result {
            Ok(member) => {
                let found = {
                    let guard = this.state.lock();
                    guard
                        .edge
                        .joins
                        .iter()
                        .find(|m| m.query == id)
                        .map(|m| m.send_only)
                };
                let Some(send_only) = found else {
                    return;
                };
                let Some(mtu) = ib_mtu(member.mtu) else {
                    return this.drive(None, |iface, out| {
                        iface.join_complete(now(), QueryId(id), Err(QueryFailed), out)
                    });
                };
                if !send_only {
                    // Every group of the link shares the broadcast group's Q_Key; the QP
                    // takes it before the first join completes, and receives the group's
                    // datagrams once attached (both sleep: outside the lock).
                    if let Err(e) = this.qp.set_qkey(member.qkey) {
                        pr_err!("setting the Q_Key failed: {:?}\n", e);
                    }
                    if let Err(e) = this.attach(&member.mgid, member.mlid) {
                        pr_err!("attaching to a group failed: {:?}\n", e);
                    } else {
                        let recorded = {
                            let mut guard = this.state.lock();
                            let edge = &mut guard.edge;
                            // Left meanwhile: detached when it is, by whoever leaves it.
                            let membership = match edge.joins.iter_mut().find(|m| m.query == id) {
                                Some(membership) => Some(membership),
                                None => edge.leaving.iter_mut().find(|m| m.query == id),
                            };
                            membership.map(|m| m.attached = Some(member.mlid)).is_some()
                        };
                        if !recorded {
                            // Already left (a flush retired it while the join was
                            // answered): nobody else will detach, and an attached QP
                            // cannot be destroyed.
                            this.detach(&member.mgid, member.mlid);
                        }
                    }
                }
                Ok(McMemberRecord {
                    mlid: member.mlid,
                    qkey: member.qkey,
                    mtu,
                    sl: member.sl,
                    rate: member.rate,
                    traffic_class: member.traffic_class,
                    flow_label: member.flow_label,
                    hop_limit: member.hop_limit,
                })
            }
            Err(e) => {
                // The SA may not answer yet (EAGAIN while the port's SM handle is made
                // again after a port event): a group listened to is joined again after
                // its backoff, as ib_ipoib does (`join_failed` in the core).
                pr_info!(
                    "join {}: no membership yet ({:?}); joined again after the backoff\n",
                    id,
                    e
                );
                Err(QueryFailed)
            }
        };
        this.drive(None, |iface, out| {
            iface.join_complete(now(), QueryId(id), record, out)
        });
    }

    fn path_done(this: &Arc<Self>, id: u64, result: Result<Path>) {
        let record = result
            .ok()
            .and_then(|path| {
                Some(PathRecord {
                    dlid: path.dlid,
                    sl: path.sl,
                    rate: path.rate,
                    mtu: ib_mtu(path.mtu)?,
                    packet_life_time: path.packet_life_time,
                    hop_limit: path.hop_limit,
                    traffic_class: path.traffic_class,
                    flow_label: path.flow_label,
                })
            })
            .ok_or(QueryFailed);
        this.drive(None, |iface, out| {
            iface.path_complete(now(), QueryId(id), record, out)
        });
        let mut guard = this.state.lock();
        guard.edge.queries_in_flight = guard.edge.queries_in_flight.saturating_sub(1);
    }
}

impl EventHandler for Port {
    fn event(this: &Arc<Self>, event: DeviceEvent) {
        use rdma_core::sys as ib;
        if event.port != Some(this.port) {
            return;
        }
        let port_event = match event.kind {
            ib::ib_event_type_IB_EVENT_SM_CHANGE => PortEvent::SmChange,
            ib::ib_event_type_IB_EVENT_CLIENT_REREGISTER => PortEvent::ClientReregister,
            ib::ib_event_type_IB_EVENT_PORT_ERR => {
                this.port_active
                    .store(false, core::sync::atomic::Ordering::Relaxed);
                PortEvent::Error
            }
            // What the port now is takes a query, which sleeps: the work looks.
            _ => {
                this.poll_soon
                    .store(true, core::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        pr_info!("{}/{}: {}\n", this.device.name(), this.port, event.name());
        this.drive(None, |iface, out| iface.port_event(now(), port_event, out));
    }
}

impl WorkHandler for PortHandle {
    fn run(&self) -> Option<Duration> {
        let port = &self.0;
        port.leave_groups();
        let ticks = port
            .ticks
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        let soon = port
            .poll_soon
            .swap(false, core::sync::atomic::Ordering::Relaxed);
        if soon || ticks % PORT_POLL_TICKS == 0 {
            port.poll_port();
        }
        port.update_address();
        port.service_connections();
        port.drive(None, |iface, out| iface.handle_timeout(now(), out));
        Some(TICK)
    }
}

impl PortInterface {
    fn new(device: &Device, port_num: u32) -> Result<Self> {
        let gid = device.query_gid(port_num, 0)?;
        let pd = ProtectionDomain::new(device)?;
        let cq = CompletionQueue::new(device, SEND_RING + RECV_RING, PollContext::Softirq)?;
        let caps = QpCaps {
            max_send_wr: SEND_RING,
            max_recv_wr: RECV_RING,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp = QueuePair::new_ud(&pd, &cq, &cq, &caps)?;
        qp.modify_ud_to_rts(port_num, PKEY_INDEX, 0)?;
        let qpn = qp.qp_num();
        let sa = SaClient::new()?;
        let mut iface = KBox::write(KBox::new_uninit(GFP_KERNEL)?, EMPTY_IFACE);
        let mut config = Config::new(qpn, PKEY);
        // RC QPs and the CM listener (below): the address offers connected mode.
        config.connected_mode = param::connected_mode();
        iface.configure(config);
        let flags = if config.connected_mode {
            HardwareAddress::FLAG_CONNECTED_MODE
        } else {
            0
        };
        let address = HardwareAddress::new(flags, qpn, Gid(gid.0));
        let broadcast = iface.broadcast_address();
        let mut ahs = KVec::with_capacity(AHS, GFP_KERNEL)?;
        for _ in 0..AHS {
            ahs.push(None, GFP_KERNEL)?;
        }
        let state = State {
            iface,
            netdev: None,
            edge: Edge {
                ahs,
                sends: KVec::with_capacity(SEND_RING as usize, GFP_KERNEL)?,
                joins: KVec::with_capacity(2 * GROUPS, GFP_KERNEL)?,
                leaving: KVec::with_capacity(4 * GROUPS, GFP_KERNEL)?,
                failures: KBox::new([None; 8], GFP_KERNEL)?,
                address,
                new_address: None,
                queries_in_flight: 0,
                queue_stopped: false,
                closing: false,
                cm: connected::Connections::new()?,
                kicker: None,
                kick_wanted: false,
                defer_mtu: false,
            },
        };
        let port = Arc::new(
            Port {
                device: device.to_ref()?,
                port: port_num,
                pd,
                qp,
                sa,
                state: rdma_core::irq_spin_lock!(state)?,
                attachments: rdma_core::mutex!(KVec::new())?,
                port_active: core::sync::atomic::AtomicBool::new(false),
                port_lid: core::sync::atomic::AtomicU32::new(0),
                poll_soon: core::sync::atomic::AtomicBool::new(false),
                ticks: core::sync::atomic::AtomicU32::new(0),
            },
            GFP_KERNEL,
        )?;
        // From here on, a failure drops `interface`, whose teardown undoes all of it.
        let mut interface = PortInterface {
            events: None,
            registration: None,
            work: None,
            port,
        };
        let port = &interface.port;
        for _ in 0..RECV_RING {
            let buffer = DmaBuffer::new(device, RECV_LEN)?;
            let wr = WorkRequest::with_buffer(buffer, RecvSlot { port: port.clone() })?;
            port.qp.post_recv(wr, 0, RECV_LEN)?;
        }
        for _ in 0..SEND_RING {
            let buffer = DmaBuffer::new(device, SEND_LEN)?;
            let wr = WorkRequest::with_buffer(buffer, SendSlot { port: port.clone() })?;
            let mut guard = port.state.lock();
            if push_within_capacity(&mut guard.edge.sends, wr).is_err() {
                return Err(ENOMEM);
            }
        }
        if config.connected_mode {
            port.listen(qpn)?;
        }
        let handle = Arc::new(PortHandle(port.clone()), GFP_KERNEL)?;
        let config = netdev::Config {
            name: c"ib%d",
            driver: c"tilde_ipoib",
            device,
            address: address.0,
            broadcast: broadcast.0,
            // Datagram mode on a 2 KiB fabric until the broadcast group says otherwise.
            mtu: 2044,
            // Connected mode's when offered; datagram mode refuses more than the group's.
            max_mtu: u32::from(if config.connected_mode {
                CM_MTU
            } else {
                ulp_ipoib::interface::MAX_UD_MTU
            }),
            tx_queue_len: 2 * SEND_RING,
        };
        let registration = netdev::Registration::new(&config, handle.clone())?;
        let netdev = registration.netdev().to_ref();
        pr_info!(
            "{}/{}: {} (QPN {:#x})\n",
            device.name(),
            port_num,
            netdev.name(),
            qpn
        );
        port.state.lock().netdev = Some(netdev);
        interface.registration = Some(registration);
        let work = DelayedWork::new(handle)?;
        port.state.lock().edge.kicker = Some(work.kicker());
        work.schedule(Duration::from_millis(1));
        interface.work = Some(work);
        interface.events = Some(EventRegistration::new(device, interface.port.clone())?);
        Ok(interface)
    }
}

impl Drop for PortInterface {
    fn drop(&mut self) {
        let port = &self.port;
        let netdev = {
            let mut guard = port.state.lock();
            guard.edge.closing = true;
            guard.netdev.take()
        };
        drop(netdev);
        self.events = None;
        // Unregistering stops the interface (the core lets everything go) and waits for
        // the netdev's callbacks; then the work, which is cancelled and waited for.
        self.registration = None;
        self.work = None;
        // Connected mode: the listener (its drop waits for REQs in their callbacks),
        // then every connection, each destroyed and drained out of the lock.
        let listener = port.state.lock().edge.cm.take_listener();
        drop(listener);
        let mut retired = port.state.lock().edge.cm.take_all();
        while let Some(connection) = pop(&mut retired) {
            connection.release();
        }
        // Every membership, left; no SA answer comes for them after.
        {
            let mut guard = port.state.lock();
            let edge = &mut guard.edge;
            while let Some(membership) = pop(&mut edge.joins) {
                if let Err(membership) = push_within_capacity(&mut edge.leaving, membership) {
                    core::mem::forget(membership);
                }
            }
        }
        port.leave_groups();
        // Path queries still out answer within their timeout.
        let start = monotonic();
        while port.state.lock().edge.queries_in_flight > 0
            && monotonic().saturating_sub(start) < DRAIN_LIMIT
        {
            sleep(Duration::from_millis(10));
        }
        // Every work request flushed back (each holds a reference to `port`).
        let _ = port.qp.modify_to_error();
        while port.qp.outstanding() > 0 && monotonic().saturating_sub(start) < DRAIN_LIMIT {
            sleep(Duration::from_millis(10));
        }
        let (sends, ahs) = {
            let mut guard = port.state.lock();
            let edge = &mut guard.edge;
            (
                core::mem::replace(&mut edge.sends, KVec::new()),
                core::mem::replace(&mut edge.ahs, KVec::new()),
            )
        };
        drop(sends);
        drop(ahs);
    }
}

impl CompletionHandler for SendSlot {
    fn complete(wr: KBox<WorkRequest<Self>>, _queues: &Queues) {
        let port = wr.data().port.clone();
        let status = wr.completion().status;
        if status != WcStatus::Success && status != WcStatus::WrFlushError {
            let netdev = port.state.lock().netdev.clone();
            if let Some(netdev) = netdev {
                netdev.count(Counter::TxError);
            }
        }
        port.recycle(wr);
    }
}

impl CompletionHandler for RecvSlot {
    fn complete(mut wr: KBox<WorkRequest<Self>>, queues: &Queues) {
        let completion = *wr.completion();
        if completion.status == WcStatus::WrFlushError {
            // The QP is going: the ring goes with it.
            return;
        }
        if completion.status == WcStatus::Success {
            let port = wr.data().port.clone();
            let len = usize::try_from(completion.byte_len).unwrap_or(0);
            let receive = ReceiveCompletion {
                src_qp: completion.src_qp,
                slid: completion.slid,
                grh: completion.grh,
            };
            if let Some(buffer) = wr.buffer_mut() {
                let len = len.min(buffer.len());
                let _ = buffer.with_bytes_mut(0, len, |bytes| port.receive(receive, bytes));
            }
        }
        if let Err(rejected) = queues.post_recv(wr, 0, RECV_LEN) {
            drop(rejected.wr);
        }
    }
}
