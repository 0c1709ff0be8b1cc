// SPDX-License-Identifier: GPL-2.0
//! RDMA CM on the fabric: the kernel build's `cm` API (`CmId`, `CmEvent`, `ConnParam`)
//! over the fabric's devices, found by their IPv4 addresses (unique in the process).
//!
//! As in the kernel, the owner takes events with [`CmId::next_event`]; a connection
//! request arrives as an owned [`CmId`]; accepting brings both QPs to RTS; the disconnect
//! handshake is DREQ (the peer's `Disconnected`), the peer's own `disconnect` (DREP),
//! then `Disconnected` on the side that began. Private data arrives padded to the CM
//! message's size, as the IB CM pads it (56 bytes in a request, 196 in a reply, 148 in a
//! reject).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::vec::Vec;

use core::net::{Ipv4Addr, SocketAddrV4};
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use super::{
    CompletionQueue, Device, DeviceRef, ProtectionDomain, QueuePair, Result, EINVAL, ENODEV,
    ETIMEDOUT,
};
use crate::verbs::{AddressVector, InitAttr, Mtu, QpCaps, RemoteAccess, RtrAttr, RtsAttr};

/// The IB CM's private data sizes for RDMA CM over TCP port space (after its header).
const REQ_PRIVATE: usize = 56;
const REP_PRIVATE: usize = 196;
const REJ_PRIVATE: usize = 148;
/// `IB_CM_REJ_CONSUMER_DEFINED`, and `IB_CM_REJ_INVALID_SERVICE_ID` (nobody listens).
const REJ_CONSUMER: i32 = 28;
const REJ_NO_LISTENER: i32 = 8;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// A new device address: 10.77.x.y, unique in the process.
pub(super) fn next_address() -> Ipv4Addr {
    let host = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
    let [_, _, x, y] = host.to_be_bytes();
    Ipv4Addr::new(10, 77, x, y)
}

/// Devices by address, and listeners by address and port.
#[derive(Default)]
struct Directory {
    devices: Vec<Weak<Device>>,
    listeners: BTreeMap<(Ipv4Addr, u16), Weak<Shared>>,
}

static DIRECTORY: Mutex<Option<Directory>> = Mutex::new(None);

fn directory() -> MutexGuard<'static, Option<Directory>> {
    lock(&DIRECTORY)
}

pub(super) fn register_device(device: &Arc<Device>) {
    let mut dir = directory();
    let dir = dir.get_or_insert_with(Directory::default);
    dir.devices.retain(|d| d.strong_count() > 0);
    dir.devices.push(Arc::downgrade(device));
}

fn device_at(addr: Ipv4Addr) -> Option<DeviceRef> {
    let dir = directory();
    dir.as_ref()?
        .devices
        .iter()
        .filter_map(Weak::upgrade)
        .find(|d| d.ipv4 == addr)
}

/// An event of a [`CmId`] (the kernel build's `CmEvent`, the variants the fabric has).
pub enum CmEvent {
    AddrResolved,
    AddrError(i32),
    RouteResolved,
    RouteError(i32),
    ConnectRequest(ConnectRequest),
    ConnectResponse,
    ConnectError(i32),
    Unreachable(i32),
    Rejected { reason: i32, private_data: Vec<u8> },
    Established { private_data: Vec<u8> },
    Disconnected,
    DeviceRemoval,
    AddrChange,
    TimewaitExit,
    Other { event: u32, status: i32 },
}

/// A connection request: the new connection's id, and what the peer offered.
pub struct ConnectRequest {
    pub id: CmId,
    pub private_data: Vec<u8>,
    pub initiator_depth: u8,
    pub responder_resources: u8,
}

pub use crate::verbs::ConnParam;

/// What an id shares with its peer and its listener.
struct Shared {
    events: Mutex<VecDeque<CmEvent>>,
    /// The connected peer, and the peer's QP number.
    peer: Mutex<Option<(Weak<Shared>, u32)>>,
    /// This side's QP number, once it has one.
    qpn: AtomicU32,
    /// The peer sent its DREQ (we got `Disconnected`): our `disconnect` answers it.
    peer_disconnected: Mutex<bool>,
    /// Our DREQ went out: the peer's `disconnect` completes the handshake.
    disconnecting: Mutex<bool>,
    /// The QP is connected (the accepting side at `accept`, the connecting side when it
    /// takes `Established`).
    up: Mutex<bool>,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(VecDeque::new()),
            peer: Mutex::new(None),
            qpn: AtomicU32::new(0),
            peer_disconnected: Mutex::new(false),
            disconnecting: Mutex::new(false),
            up: Mutex::new(false),
        })
    }

    fn push(&self, event: CmEvent) {
        lock(&self.events).push_back(event);
    }

    fn peer(&self) -> Option<Arc<Shared>> {
        lock(&self.peer).as_ref().and_then(|(p, _)| p.upgrade())
    }
}

fn padded(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(out.len().max(size), 0);
    out
}

/// An RDMA CM id on the fabric.
pub struct CmId {
    shared: Arc<Shared>,
    /// Set by `bind` or `resolve_addr`, once (as the kernel's `id->device`).
    device: OnceLock<DeviceRef>,
    local: Mutex<Option<SocketAddrV4>>,
    remote: Mutex<Option<SocketAddrV4>>,
    listening: Mutex<Option<(Ipv4Addr, u16)>>,
    /// A connection request's id: the connecting side, until accepted or rejected.
    request: Mutex<Option<Weak<Shared>>>,
    qp: Option<QueuePair>,
}

impl CmId {
    /// A new id for RC connections.
    pub fn new_rc() -> Result<Self> {
        Ok(Self {
            shared: Shared::new(),
            device: OnceLock::new(),
            local: Mutex::new(None),
            remote: Mutex::new(None),
            listening: Mutex::new(None),
            request: Mutex::new(None),
            qp: None,
        })
    }

    /// The device the id is bound to.
    pub fn device(&self) -> Option<&Device> {
        self.device.get().map(|d| &**d)
    }

    fn set_device(&self, device: DeviceRef) -> Result {
        if self.device.get().is_some_and(|d| !d.is(&device)) {
            return Err(EINVAL);
        }
        let _ = self.device.set(device);
        Ok(())
    }

    /// The port: the fabric's devices have one.
    pub fn port(&self) -> u32 {
        1
    }

    /// Binds to a local address (a device's).
    pub fn bind(&self, addr: SocketAddrV4) -> Result {
        self.set_device(device_at(*addr.ip()).ok_or(ENODEV)?)?;
        *lock(&self.local) = Some(addr);
        Ok(())
    }

    /// Listens on the bound address.
    pub fn listen(&self, _backlog: u32) -> Result {
        let local = (*lock(&self.local)).ok_or(EINVAL)?;
        let key = (*local.ip(), local.port());
        let mut dir = directory();
        let dir = dir.get_or_insert_with(Directory::default);
        // A listener's drop takes its entry out.
        if dir.listeners.contains_key(&key) {
            return Err(super::Error(98)); // EADDRINUSE
        }
        dir.listeners.insert(key, Arc::downgrade(&self.shared));
        *lock(&self.listening) = Some(key);
        Ok(())
    }

    /// Resolves `dst` to the device that reaches it (`AddrResolved`).
    pub fn resolve_addr(&self, dst: SocketAddrV4, _timeout: Duration) -> Result {
        match device_at(*dst.ip()) {
            Some(device) => {
                self.set_device(device)?;
                *lock(&self.remote) = Some(dst);
                self.shared.push(CmEvent::AddrResolved);
            }
            None => self.shared.push(CmEvent::AddrError(-(ETIMEDOUT.0))),
        }
        Ok(())
    }

    /// Resolves the path (`RouteResolved`).
    pub fn resolve_route(&self, _timeout: Duration) -> Result {
        if lock(&self.remote).is_none() {
            return Err(EINVAL);
        }
        self.shared.push(CmEvent::RouteResolved);
        Ok(())
    }

    /// Creates the id's RC QP in `pd`.
    pub fn create_qp(
        &mut self,
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result {
        if self.qp.is_some() || !self.device().is_some_and(|d| d.is(pd.device())) {
            return Err(EINVAL);
        }
        let qp = QueuePair::new_rc(pd, send_cq, recv_cq, caps)?;
        // As `rdma_create_qp` does: INIT at once, so receives can be posted before the
        // connection is up.
        qp.modify_to_init(&InitAttr {
            port: 1,
            pkey_index: 0,
            remote_access: RemoteAccess::READ | RemoteAccess::WRITE | RemoteAccess::ATOMIC,
        })?;
        self.shared.qpn.store(qp.qp_num(), Ordering::Release);
        self.qp = Some(qp);
        Ok(())
    }

    /// The id's QP, once created.
    pub fn qp(&self) -> Option<&QueuePair> {
        self.qp.as_ref()
    }

    /// Connects to the resolved peer.
    pub fn connect(&self, param: &ConnParam<'_>) -> Result {
        let remote = (*lock(&self.remote)).ok_or(EINVAL)?;
        if self.qp.is_none() {
            return Err(EINVAL);
        }
        let listener = directory()
            .as_ref()
            .and_then(|d| d.listeners.get(&(*remote.ip(), remote.port())).cloned())
            .and_then(|l| l.upgrade());
        let Some(listener) = listener else {
            self.shared.push(CmEvent::Rejected {
                reason: REJ_NO_LISTENER,
                private_data: Vec::new(),
            });
            return Ok(());
        };
        let device = OnceLock::new();
        if let Some(d) = device_at(*remote.ip()) {
            let _ = device.set(d);
        }
        let child = CmId {
            shared: Shared::new(),
            device,
            local: Mutex::new(Some(remote)),
            remote: Mutex::new(None),
            listening: Mutex::new(None),
            request: Mutex::new(Some(Arc::downgrade(&self.shared))),
            qp: None,
        };
        listener.push(CmEvent::ConnectRequest(ConnectRequest {
            id: child,
            private_data: padded(param.private_data, REQ_PRIVATE),
            initiator_depth: param.initiator_depth,
            responder_resources: param.responder_resources,
        }));
        Ok(())
    }

    /// Accepts the connection request this id came with: both QPs to RTS.
    pub fn accept(&self, param: &ConnParam<'_>) -> Result {
        let client = lock(&self.request)
            .take()
            .and_then(|c| c.upgrade())
            .ok_or(EINVAL)?;
        let qp = self.qp.as_ref().ok_or(EINVAL)?;
        let client_qpn = client.qpn.load(Ordering::Acquire);
        let device = self.device().ok_or(EINVAL)?;
        bring_up(qp, device, client_qpn)?;
        *lock(&self.shared.up) = true;
        *lock(&self.shared.peer) = Some((Arc::downgrade(&client), client_qpn));
        *lock(&client.peer) = Some((Arc::downgrade(&self.shared), qp.qp_num()));
        // The connecting side's QP comes up when it sees the reply.
        client.push(CmEvent::Established {
            private_data: padded(param.private_data, REP_PRIVATE),
        });
        self.shared.push(CmEvent::Established {
            private_data: Vec::new(),
        });
        Ok(())
    }

    /// Rejects the connection request this id came with.
    pub fn reject(&self, private_data: &[u8]) -> Result {
        let client = lock(&self.request)
            .take()
            .and_then(|c| c.upgrade())
            .ok_or(EINVAL)?;
        client.push(CmEvent::Rejected {
            reason: REJ_CONSUMER,
            private_data: padded(private_data, REJ_PRIVATE),
        });
        Ok(())
    }

    /// Disconnects: moves the QP to ERR and tells the peer.
    pub fn disconnect(&self) -> Result {
        if let Some(qp) = &self.qp {
            let _ = qp.modify_to_error();
        }
        let peer = self.shared.peer().ok_or(EINVAL)?;
        let answering = std::mem::replace(&mut *lock(&self.shared.peer_disconnected), true);
        if answering {
            // Our DREP: the side that began sees its DISCONNECTED now.
            if std::mem::take(&mut *lock(&peer.disconnecting)) {
                peer.push(CmEvent::Disconnected);
            }
        } else {
            *lock(&self.shared.disconnecting) = true;
            *lock(&peer.peer_disconnected) = true;
            peer.push(CmEvent::Disconnected);
        }
        Ok(())
    }

    /// The oldest event not taken yet, waiting up to `timeout`; `ETIMEDOUT` if none.
    pub fn next_event(&self, timeout: Duration) -> Result<CmEvent> {
        let start = std::time::Instant::now();
        loop {
            let event = lock(&self.shared.events).pop_front();
            if let Some(event) = event {
                // The reply reached the connecting side: its QP comes up now.
                if matches!(event, CmEvent::Established { .. }) {
                    self.come_up()?;
                }
                return Ok(event);
            }
            if start.elapsed() >= timeout {
                return Err(ETIMEDOUT);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl CmId {
    fn come_up(&self) -> Result {
        let mut up = lock(&self.shared.up);
        if *up {
            return Ok(());
        }
        let peer_qpn = lock(&self.shared.peer).as_ref().map(|(_, qpn)| *qpn);
        if let (Some(qp), Some(peer_qpn), Some(device)) = (&self.qp, peer_qpn, self.device()) {
            bring_up(qp, device, peer_qpn)?;
            *up = true;
        }
        Ok(())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        drop(self.qp.take());
        if let Some(key) = *lock(&self.listening) {
            if let Some(dir) = directory().as_mut() {
                dir.listeners.remove(&key);
            }
        }
    }
}

/// A CM QP (in INIT since `create_qp`) through RTR and RTS towards `peer_qpn`, as the
/// kernel's CM does.
fn bring_up(qp: &QueuePair, device: &Device, peer_qpn: u32) -> Result {
    let av = AddressVector::to_self(&device.query_port(1)?, device.query_gid(1, 0)?, true)
        .ok_or(EINVAL)?;
    qp.modify_to_rtr(&RtrAttr {
        port: 1,
        path_mtu: Mtu::Mtu1024,
        dest_qp_num: peer_qpn,
        rq_psn: 0,
        max_dest_rd_atomic: 1,
        min_rnr_timer: 12,
        av,
    })?;
    qp.modify_to_rts(&RtsAttr {
        sq_psn: 0,
        timeout: 14,
        retry_cnt: 7,
        rnr_retry: 7,
        max_rd_atomic: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::{Fabric, PollContext};

    fn at(device: &Device, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(device.ipv4, port)
    }

    /// Every device stays reachable by its address as more are added; an address no
    /// device has resolves to ADDR_ERROR with -ETIMEDOUT.
    #[test]
    fn addresses_resolve_to_their_devices() {
        let fabric = Fabric::new();
        let first = fabric.add_device("cm_first", [0x02, 0, 0, 0, 2, 1]);
        let second = fabric.add_device("cm_second", [0x02, 0, 0, 0, 2, 2]);
        for device in [&first, &second] {
            let id = CmId::new_rc().unwrap();
            id.resolve_addr(at(device, 1), Duration::from_secs(1))
                .unwrap();
            let event = id.next_event(Duration::from_secs(1)).unwrap();
            assert!(matches!(event, CmEvent::AddrResolved));
            assert!(id.device().unwrap().is(device));
            assert_eq!(id.port(), 1);
        }
        let id = CmId::new_rc().unwrap();
        let nowhere = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 1);
        id.resolve_addr(nowhere, Duration::from_secs(1)).unwrap();
        let event = id.next_event(Duration::from_secs(1)).unwrap();
        assert!(matches!(event, CmEvent::AddrError(-110)));
        assert!(id.device().is_none());
    }

    /// An id bound to a device resolves addresses of that device only.
    #[test]
    fn a_bound_id_keeps_its_device() {
        let fabric = Fabric::new();
        let first = fabric.add_device("cm_bound", [0x02, 0, 0, 0, 2, 3]);
        let second = fabric.add_device("cm_other", [0x02, 0, 0, 0, 2, 4]);
        let id = CmId::new_rc().unwrap();
        id.bind(at(&first, 7)).unwrap();
        id.resolve_addr(at(&first, 8), Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            id.resolve_addr(at(&second, 8), Duration::from_secs(1))
                .err(),
            Some(EINVAL)
        );
    }

    /// One listener per address and port, until it is dropped.
    #[test]
    fn a_port_has_one_listener_until_it_is_dropped() {
        let fabric = Fabric::new();
        let device = fabric.add_device("cm_listen", [0x02, 0, 0, 0, 2, 5]);
        let listener = || {
            let id = CmId::new_rc().unwrap();
            id.bind(at(&device, 4791)).unwrap();
            id
        };
        let first = listener();
        first.listen(1).unwrap();
        let second = listener();
        assert_eq!(second.listen(1).err(), Some(crate::fabric::Error(98)));
        drop(first);
        second.listen(1).unwrap();
    }

    /// An id makes one QP, and only in a PD of its device; the QP grants the peer remote
    /// READ, WRITE and atomics, as the CM sets up a connection with responder resources.
    #[test]
    fn an_id_makes_one_qp_on_its_device() {
        let fabric = Fabric::new();
        let device = fabric.add_device("cm_qp", [0x02, 0, 0, 0, 2, 6]);
        let pd = ProtectionDomain::new(&device).unwrap();
        let cq = CompletionQueue::new(&device, 64, PollContext::Direct).unwrap();
        let caps = QpCaps {
            max_send_wr: 2,
            max_recv_wr: 2,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let mut id = CmId::new_rc().unwrap();
        assert_eq!(id.create_qp(&pd, &cq, &cq, &caps).err(), Some(EINVAL));
        id.bind(at(&device, 9)).unwrap();
        id.create_qp(&pd, &cq, &cq, &caps).unwrap();
        assert_eq!(id.create_qp(&pd, &cq, &cq, &caps).err(), Some(EINVAL));
        let qpn = id.qp().unwrap().qp_num();
        let state = fabric.lock();
        assert_eq!(
            state.remote_access(qpn),
            Some(RemoteAccess::READ | RemoteAccess::WRITE | RemoteAccess::ATOMIC)
        );
    }

    /// Private data is padded with zeros to the CM message's size, never cut.
    #[test]
    fn private_data_is_padded_not_cut() {
        assert_eq!(padded(b"ab", 4), b"ab\0\0");
        assert_eq!(padded(b"abcdef", 4), b"abcdef");
    }

    /// `next_event` waits its whole timeout before it gives up.
    #[test]
    fn next_event_waits_its_timeout() {
        let id = CmId::new_rc().unwrap();
        let start = std::time::Instant::now();
        assert_eq!(
            id.next_event(Duration::from_millis(30)).err(),
            Some(ETIMEDOUT)
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
