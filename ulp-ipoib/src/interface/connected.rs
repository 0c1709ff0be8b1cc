//! Connected mode (RFC 4755): unicast IP over an RC connection per neighbour.
//!
//! The interface runs in one of two modes, as `/sys/class/net/<if>/mode` switches
//! ib_ipoib's: datagram (everything over the UD QP) or connected. In connected mode a
//! unicast IPv4 or IPv6 packet to a neighbour whose address carries the connected-mode
//! flag goes over that neighbour's RC connection; everything else (ARP, multicast,
//! neighbours without the flag) still goes over UD, and a packet too long for UD is
//! dropped as [`DropReason::TooBig`] with the UD MTU, for the caller's ICMP.
//!
//! A neighbour's connection is made when the first packet to it finds its path known
//! ([`Action::Connect`]: an RC QP and a CM REQ to the IETF service ID of the
//! neighbour's UD QPN, with our UD QPN and receive MTU as private data); packets wait
//! for it on the neighbour (bounded as on a path) and go out when the REP arrives
//! ([`Interface::connect_complete`]), each checked against the peer's receive MTU. A
//! failed connection drops them; the next packet tries again, as ib_ipoib does after
//! it frees the neighbour. A connection the peer or the fabric ends
//! ([`Interface::connection_closed`]) is made again on the next packet. Forgetting a
//! neighbour (idle, evicted, flushed, mode switched) tears its connection down
//! ([`Action::Disconnect`]).
//!
//! The passive side is the caller's CM listener: [`Interface::accept_connection`]
//! answers a REQ's private data with the REP's, and
//! [`Interface::receive_connected`] classifies what arrives on an RC QP (no GRH slot).

use super::{Action, DropReason, Instant, Interface, Owner, PacketKind, ReceiveError, Received};
use crate::wire::cm::{service_id, CmDataRepr};
use crate::wire::encap::{self, Frame};

/// The largest interface MTU in connected mode (`IPOIB_CM_MTU`: 64 KiB less 16).
pub const CM_MTU: u16 = 0xfff0;
/// The receive MTU a connection advertises: the largest IP packet plus the
/// encapsulation header (`IPOIB_CM_BUF_SIZE`).
pub const CM_RECEIVE_MTU: u32 = CM_MTU as u32 + encap::HEADER_LEN as u32;

/// How unicast IP goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Over the UD QP (RFC 4391).
    Datagram,
    /// Over an RC connection per neighbour that offers it (RFC 4755).
    Connected,
}

/// Why a mode cannot be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeError {
    /// The device cannot run connected mode ([`super::Config::connected_mode`]).
    NotCapable,
}

/// Why a connection request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The interface does not offer connected mode.
    NotCapable,
    /// The interface is not up (no carrier).
    NotUp,
    /// The requester's receive MTU cannot carry the header and a byte.
    BadMtu,
}

/// Names a neighbour's connection: the caller keeps its RC QP and CM ID at `index`.
/// The generation tells a reused slot from its previous occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The neighbour's slot.
    pub index: usize,
    /// Which occupant of the slot.
    pub generation: u32,
}

/// The connection could not be made (a REJ, a CM timeout, a QP that would not move to
/// RTS). The caller has already let go of what it made for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailed;

/// A neighbour's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmState {
    /// None (datagram, or not needed yet).
    Idle,
    /// REQ sent, waiting for the REP.
    Connecting,
    /// Up: messages up to `mtu` bytes (header included) go.
    Connected { mtu: u32 },
}

impl<
        P,
        const PATHS: usize,
        const NEIGHBOURS: usize,
        const GROUPS: usize,
        const AHS: usize,
        const QUEUED: usize,
    > Interface<P, PATHS, NEIGHBOURS, GROUPS, AHS, QUEUED>
{
    /// The mode unicast IP goes in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches the mode (`/sys/class/net/<if>/mode`): every path and neighbour is
    /// flushed (connections torn down, held packets dropped), as ib_ipoib's
    /// `ipoib_set_mode` does; connected mode takes the MTU up to [`CM_MTU`], datagram
    /// mode back down to the broadcast group's.
    pub fn set_mode(
        &mut self,
        mode: Mode,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) -> Result<(), ModeError> {
        if mode == Mode::Connected && !self.config.connected_mode {
            return Err(ModeError::NotCapable);
        }
        if mode == self.mode {
            return Ok(());
        }
        for index in 0..PATHS {
            self.remove_path(index, DropReason::Flushed, out);
        }
        self.mode = mode;
        self.admin_mtu = match mode {
            Mode::Connected => CM_MTU,
            Mode::Datagram => self.admin_mtu.min(super::MAX_UD_MTU),
        };
        self.apply_mtu(out);
        Ok(())
    }

    /// The CM answered the connection `conn`: the REP's private data, or a failure.
    pub fn connect_complete(
        &mut self,
        _now: Instant,
        conn: ConnId,
        result: Result<CmDataRepr, ConnectFailed>,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(neighbour) = self
            .neighbours
            .get_mut(conn.index)
            .filter(|n| n.generation == conn.generation && n.cm == CmState::Connecting)
        else {
            self.counters.stale_answers += 1;
            return;
        };
        let peer_mtu = match result {
            Ok(peer) if peer.mtu > encap::HEADER_LEN as u32 => peer.mtu,
            _ => {
                neighbour.cm = CmState::Idle;
                self.counters.connect_failures += 1;
                return self.drop_queued(
                    Owner::Neighbour(conn.index),
                    DropReason::ConnectFailed,
                    out,
                );
            }
        };
        let mtu = peer_mtu.min(CM_RECEIVE_MTU);
        neighbour.cm = CmState::Connected { mtu };
        let largest = largest_packet(mtu);
        let counters = &mut self.counters;
        self.queue.take_where(
            |queued| queued.owner == Owner::Neighbour(conn.index),
            |queued| {
                if queued.len > usize::from(largest) {
                    let reason = DropReason::TooBig { mtu: largest };
                    counters.count_drop(reason);
                    out(Action::Drop {
                        packet: queued.packet,
                        reason,
                    });
                } else {
                    counters.transmitted += 1;
                    out(Action::TransmitConnected {
                        conn,
                        packet: queued.packet,
                    });
                }
            },
        );
    }

    /// The connection `conn` ended (a DREQ from the peer, a QP error): the caller has
    /// let go of it; packets waiting for it are dropped, and the next packet to the
    /// neighbour connects again.
    pub fn connection_closed(
        &mut self,
        _now: Instant,
        conn: ConnId,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(neighbour) = self
            .neighbours
            .get_mut(conn.index)
            .filter(|n| n.generation == conn.generation && n.cm != CmState::Idle)
        else {
            self.counters.stale_answers += 1;
            return;
        };
        neighbour.cm = CmState::Idle;
        self.drop_queued(
            Owner::Neighbour(conn.index),
            DropReason::ConnectionLost,
            out,
        );
    }

    /// A CM REQ to our service ID with `request` as private data: the REP's private
    /// data (our UD QPN and receive MTU), or why to reject it. The passive side
    /// listens whatever the mode, as ib_ipoib's does, once the interface is up.
    pub fn accept_connection(&self, request: &CmDataRepr) -> Result<CmDataRepr, RejectReason> {
        if !self.config.connected_mode {
            return Err(RejectReason::NotCapable);
        }
        if !self.carrier {
            return Err(RejectReason::NotUp);
        }
        if request.mtu <= encap::HEADER_LEN as u32 {
            return Err(RejectReason::BadMtu);
        }
        Ok(CmDataRepr {
            qpn: self.config.qpn,
            mtu: CM_RECEIVE_MTU,
        })
    }

    /// Classifies a message received on a connection's RC QP: the encapsulation header
    /// and the packet, no GRH slot. The sender is the connection's peer, which the
    /// caller knows.
    pub fn receive_connected<'a>(
        &mut self,
        buffer: &'a [u8],
    ) -> Result<Received<'a>, ReceiveError> {
        match Frame::new_checked(buffer) {
            Ok(frame) => {
                self.counters.received += 1;
                Ok(Received {
                    ethertype: frame.ethertype(),
                    kind: PacketKind::Host,
                    source: None,
                    payload: buffer.get(encap::HEADER_LEN..).unwrap_or(&[]),
                })
            }
            Err(error) => {
                self.counters.receive_malformed += 1;
                Err(ReceiveError::Malformed(error))
            }
        }
    }

    /// Sends `packet` to the neighbour at `index` over its connection, making the
    /// connection (or first the path) when there is none.
    pub(super) fn send_connected(
        &mut self,
        now: Instant,
        index: usize,
        path: usize,
        len: usize,
        packet: P,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(neighbour) = self.neighbours.get(index) else {
            return self.drop_packet(packet, DropReason::Flushed, out);
        };
        let conn = ConnId {
            index,
            generation: neighbour.generation,
        };
        let qpn = neighbour.address.qpn();
        match neighbour.cm {
            CmState::Connected { mtu } => {
                let largest = largest_packet(mtu);
                if len > usize::from(largest) {
                    return self.drop_packet(packet, DropReason::TooBig { mtu: largest }, out);
                }
                self.counters.transmitted += 1;
                out(Action::TransmitConnected { conn, packet });
            }
            CmState::Connecting => {
                let limit = self.config.path_queue_limit;
                self.hold(Owner::Neighbour(index), qpn, len, limit, packet, out);
            }
            CmState::Idle => {
                let limit = self.config.path_queue_limit;
                self.hold(Owner::Neighbour(index), qpn, len, limit, packet, out);
                let (known, stale_unasked) = self.paths.get(path).map_or((false, false), |p| {
                    (p.record.is_some(), !p.valid && p.query.is_none())
                });
                if stale_unasked {
                    self.start_path_query(now, path, out);
                }
                if known {
                    self.start_connect(index, path, out);
                }
            }
        }
    }

    /// After the path at `path` was answered: every neighbour going by it that waits
    /// to connect, with packets held, connects.
    pub(super) fn connect_waiting_neighbours(
        &mut self,
        path: usize,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        for index in 0..NEIGHBOURS {
            let waiting = self.neighbours.get(index).is_some_and(|n| {
                n.path == path
                    && n.cm == CmState::Idle
                    && self.queue.count(|q| q.owner == Owner::Neighbour(index)) > 0
            });
            if waiting {
                self.start_connect(index, path, out);
            }
        }
    }

    fn start_connect(
        &mut self,
        index: usize,
        path: usize,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some((dgid, record)) = self
            .paths
            .get(path)
            .and_then(|p| p.record.map(|record| (p.dgid, record)))
        else {
            return;
        };
        let qpn = self.config.qpn;
        let Some(neighbour) = self.neighbours.get_mut(index) else {
            return;
        };
        neighbour.cm = CmState::Connecting;
        self.counters.connects += 1;
        out(Action::Connect {
            conn: ConnId {
                index,
                generation: neighbour.generation,
            },
            dgid,
            path: record,
            service_id: service_id(neighbour.address.qpn()),
            data: CmDataRepr {
                qpn,
                mtu: CM_RECEIVE_MTU,
            },
        });
    }
}

/// The largest IP packet a connection whose receive MTU is `mtu` takes.
fn largest_packet(mtu: u32) -> u16 {
    let largest = mtu.saturating_sub(encap::HEADER_LEN as u32);
    u16::try_from(largest).unwrap_or(u16::MAX)
}
