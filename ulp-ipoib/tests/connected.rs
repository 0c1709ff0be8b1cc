//! Connected mode (RFC 4755) through the interface core: the mode switch and its MTU,
//! a connection per neighbour made once the path is known, packets held for it and
//! sent in order, the peer's MTU, UD fallbacks and their size limit, failures, the
//! passive side, and teardown on flushes. Packets are numbers; actions are recorded.

use ulp_ipoib::interface::{
    Action, Config, ConnId, ConnectFailed, DropReason, Instant, Interface, Mode, ModeError,
    MtuTooLarge, PacketKind, PortEvent, PortInfo, QueryId, ReceiveError, RejectReason, CM_MTU,
};
use ulp_ipoib::sa::{IbMtu, McMemberRecord, PathRecord};
use ulp_ipoib::wire::cm::{service_id, CmData, CmDataRepr};
use ulp_ipoib::wire::encap::{ETHERTYPE_ARP, ETHERTYPE_IPV4};
use ulp_ipoib::wire::{Gid, HardwareAddress, WireError};

type Iface = Interface<u32, 4, 8, 4, 12, 16>;
type Actions = Vec<Action<u32>>;

const QPN: u32 = 0x48;

fn port_gid() -> Gid {
    Gid::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_000a_0b0c)
}

fn peer_gid(n: u64) -> Gid {
    Gid::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_000b_0000 + n)
}

/// A peer that offers connected mode.
fn rc_peer(n: u64, qpn: u32) -> HardwareAddress {
    HardwareAddress::new(HardwareAddress::FLAG_CONNECTED_MODE, qpn, peer_gid(n))
}

fn at(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

fn run(f: impl FnOnce(&mut dyn FnMut(Action<u32>))) -> Actions {
    let mut actions = Vec::new();
    f(&mut |action| actions.push(action));
    actions
}

fn path_to(dlid: u16) -> PathRecord {
    PathRecord {
        dlid,
        sl: 0,
        rate: 3,
        mtu: IbMtu::Mtu2048,
        packet_life_time: 18,
        hop_limit: 0,
        traffic_class: 0,
        flow_label: 0,
    }
}

fn member() -> McMemberRecord {
    McMemberRecord {
        mlid: 0xc000,
        qkey: 0x0b1b,
        mtu: IbMtu::Mtu2048,
        sl: 0,
        rate: 3,
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 0,
    }
}

fn first_query(actions: &Actions) -> QueryId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Join { query, .. } | Action::SendPathQuery { query, .. } => Some(*query),
            _ => None,
        })
        .expect("a query")
}

fn connects(actions: &Actions) -> Vec<(ConnId, Gid, u64, CmDataRepr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect {
                conn,
                dgid,
                service_id,
                data,
                ..
            } => Some((*conn, *dgid, *service_id, *data)),
            _ => None,
        })
        .collect()
}

fn sent_connected(actions: &Actions) -> Vec<(ConnId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::TransmitConnected { conn, packet } => Some((*conn, *packet)),
            _ => None,
        })
        .collect()
}

fn sent_ud(actions: &Actions) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit { packet, .. } => Some(*packet),
            _ => None,
        })
        .collect()
}

fn drops(actions: &Actions) -> Vec<(u32, DropReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Drop { packet, reason } => Some((*packet, *reason)),
            _ => None,
        })
        .collect()
}

fn capable() -> Config {
    let mut config = Config::new(QPN, 0xffff);
    config.connected_mode = true;
    config
}

/// Up on a 2K fabric (UD MTU 2044) in connected mode.
fn up_connected() -> Iface {
    let mut iface = Iface::new(capable());
    let actions = run(|out| {
        iface.port_event(
            at(0),
            PortEvent::Active(PortInfo {
                lid: 1,
                gid: port_gid(),
                pkey_present: true,
            }),
            out,
        );
        iface.open(at(0), out);
    });
    run(|out| iface.join_complete(at(0), first_query(&actions), Ok(member()), out));
    assert_eq!(iface.set_mode(Mode::Connected, &mut |_| {}), Ok(()));
    iface
}

/// Sends `packet` to `to`, answers its path query, and returns the connection asked
/// for.
fn connecting(iface: &mut Iface, to: HardwareAddress, packet: u32) -> (ConnId, Actions) {
    let mut actions = run(|out| iface.transmit(at(0), to, ETHERTYPE_IPV4, 1000, packet, out));
    let query = first_query(&actions);
    actions.extend(run(|out| {
        iface.path_complete(at(1), query, Ok(path_to(7)), out)
    }));
    let conn = connects(&actions)[0].0;
    (conn, actions)
}

fn peer_data(mtu: u32) -> CmDataRepr {
    CmDataRepr { qpn: 0x51, mtu }
}

#[test]
fn private_data_bytes_and_service_id() {
    // Our REQ: UD QPN 0x48, receive MTU 65524 (IPOIB_CM_BUF_SIZE).
    let mut buf = [0xffu8; 8];
    CmDataRepr {
        qpn: 0x48,
        mtu: 65524,
    }
    .emit(&mut CmData::new_unchecked(&mut buf[..]))
    .unwrap();
    assert_eq!(buf, [0x00, 0x00, 0x00, 0x48, 0x00, 0x00, 0xff, 0xf4]);
    // The QPN's high octet is reserved: ignored on receive.
    let peer = [0xab, 0x00, 0x00, 0x51, 0x00, 0x00, 0x10, 0x04, 0xee];
    let parsed = CmDataRepr::parse(&CmData::new_checked(&peer[..]).unwrap()).unwrap();
    assert_eq!(
        parsed,
        CmDataRepr {
            qpn: 0x51,
            mtu: 4100
        }
    );
    assert_eq!(
        CmDataRepr::parse(&CmData::new_unchecked(&[0, 0, 0, 0x51, 0, 0, 0, 4][..])),
        Err(WireError::CmMtu(4))
    );
    assert_eq!(CmData::new_checked(&peer[..7]), Err(WireError::Truncated));
    assert_eq!(service_id(0x51), 0x1000_0000_0000_0051);
    assert_eq!(service_id(0xab00_0051), 0x1000_0000_0000_0051);
}

#[test]
fn connected_mode_needs_the_capability_and_advertises_it() {
    let mut plain = Iface::new(Config::new(QPN, 0xffff));
    assert_eq!(
        plain.set_mode(Mode::Connected, &mut |_| {}),
        Err(ModeError::NotCapable)
    );
    assert_eq!(plain.mode(), Mode::Datagram);
    let iface = up_connected();
    let address = iface.hardware_address().unwrap();
    assert!(address.connected_mode());
    assert_eq!(address.qpn(), QPN);
}

#[test]
fn the_mode_sets_the_mtu_and_its_limit() {
    let mut iface = Iface::new(capable());
    let actions = run(|out| {
        iface.port_event(
            at(0),
            PortEvent::Active(PortInfo {
                lid: 1,
                gid: port_gid(),
                pkey_present: true,
            }),
            out,
        );
        iface.open(at(0), out);
    });
    run(|out| iface.join_complete(at(0), first_query(&actions), Ok(member()), out));
    assert_eq!(iface.mtu(), Some(2044));
    let actions = run(|out| iface.set_mode(Mode::Connected, out).unwrap());
    assert_eq!(actions, [Action::SetMtu { mtu: CM_MTU }]);
    assert_eq!(CM_MTU, 65520);
    let refused = run(|out| assert_eq!(iface.set_mtu(65521, out), Err(MtuTooLarge { max: 65520 })));
    assert!(refused.is_empty());
    let actions = run(|out| iface.set_mtu(9000, out).unwrap());
    assert_eq!(actions, [Action::SetMtu { mtu: 9000 }]);
    let actions = run(|out| iface.set_mode(Mode::Datagram, out).unwrap());
    assert_eq!(actions, [Action::SetMtu { mtu: 2044 }]);
}

#[test]
fn a_connection_is_made_once_the_path_is_known_and_carries_the_held_packets() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    let actions = run(|out| {
        iface.transmit(at(0), to, ETHERTYPE_IPV4, 1000, 1, out);
        iface.transmit(at(0), to, ETHERTYPE_IPV4, 3000, 2, out);
    });
    assert!(connects(&actions).is_empty(), "no path yet: {actions:?}");
    assert!(sent_ud(&actions).is_empty() && drops(&actions).is_empty());
    let query = first_query(&actions);
    let actions = run(|out| iface.path_complete(at(1), query, Ok(path_to(7)), out));
    let connect = connects(&actions);
    assert_eq!(connect.len(), 1);
    let (conn, dgid, service, data) = connect[0];
    assert_eq!(dgid, peer_gid(1));
    assert_eq!(service, 0x1000_0000_0000_0051);
    assert_eq!(
        data,
        CmDataRepr {
            qpn: QPN,
            mtu: 65524
        }
    );
    assert!(matches!(
        actions.iter().find(|a| matches!(a, Action::Connect { .. })),
        Some(Action::Connect { path, .. }) if *path == path_to(7)
    ));
    assert!(sent_ud(&actions).is_empty());

    let actions = run(|out| iface.connect_complete(at(2), conn, Ok(peer_data(65524)), out));
    assert_eq!(sent_connected(&actions), [(conn, 1), (conn, 2)]);
    let actions = run(|out| iface.transmit(at(3), to, ETHERTYPE_IPV4, 65520, 3, out));
    assert_eq!(sent_connected(&actions), [(conn, 3)]);
    assert_eq!(iface.counters().connects, 1);
}

#[test]
fn the_peers_receive_mtu_bounds_what_goes() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    let (conn, _) = connecting(&mut iface, to, 1);
    // The peer takes 4100 bytes with the header: IP packets up to 4096.
    let actions = run(|out| iface.transmit(at(2), to, ETHERTYPE_IPV4, 5000, 2, out));
    assert!(drops(&actions).is_empty(), "held while connecting");
    let actions = run(|out| iface.connect_complete(at(3), conn, Ok(peer_data(4100)), out));
    assert_eq!(sent_connected(&actions), [(conn, 1)]);
    assert_eq!(drops(&actions), [(2, DropReason::TooBig { mtu: 4096 })]);
    let actions = run(|out| {
        iface.transmit(at(4), to, ETHERTYPE_IPV4, 4096, 3, out);
        iface.transmit(at(4), to, ETHERTYPE_IPV4, 4097, 4, out);
    });
    assert_eq!(sent_connected(&actions), [(conn, 3)]);
    assert_eq!(drops(&actions), [(4, DropReason::TooBig { mtu: 4096 })]);
}

#[test]
fn ud_still_carries_arp_multicast_and_peers_without_the_flag_within_the_ud_mtu() {
    let mut iface = up_connected();
    let plain = HardwareAddress::new(0, 0x61, peer_gid(2));
    let actions = run(|out| iface.transmit(at(0), plain, ETHERTYPE_IPV4, 2044, 1, out));
    let query = first_query(&actions);
    let actions = run(|out| iface.path_complete(at(1), query, Ok(path_to(8)), out));
    assert_eq!(sent_ud(&actions), [1]);
    assert!(connects(&actions).is_empty());
    let actions = run(|out| iface.transmit(at(2), plain, ETHERTYPE_IPV4, 2045, 2, out));
    assert_eq!(drops(&actions), [(2, DropReason::TooBig { mtu: 2044 })]);
    let brd = iface.broadcast_address();
    let actions = run(|out| {
        iface.transmit(at(3), brd, ETHERTYPE_IPV4, 3000, 3, out);
        iface.transmit(at(3), brd, ETHERTYPE_IPV4, 100, 4, out);
    });
    assert_eq!(drops(&actions), [(3, DropReason::TooBig { mtu: 2044 })]);
    assert_eq!(sent_ud(&actions), [4]);
    // ARP to a peer that offers connected mode goes over UD.
    let actions = run(|out| iface.transmit(at(4), rc_peer(2, 0x61), ETHERTYPE_ARP, 56, 5, out));
    assert_eq!(sent_ud(&actions), [5]);
    assert!(connects(&actions).is_empty());
}

#[test]
fn a_failed_connection_drops_what_waited_and_the_next_packet_tries_again() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    let (conn, _) = connecting(&mut iface, to, 1);
    let actions = run(|out| iface.connect_complete(at(2), conn, Err(ConnectFailed), out));
    assert_eq!(drops(&actions), [(1, DropReason::ConnectFailed)]);
    assert_eq!(iface.counters().connect_failures, 1);
    let actions = run(|out| iface.transmit(at(3), to, ETHERTYPE_IPV4, 100, 2, out));
    assert_eq!(connects(&actions).len(), 1);
    // A REP whose MTU cannot carry the header is a failure too.
    let conn = connects(&actions)[0].0;
    let actions = run(|out| iface.connect_complete(at(4), conn, Ok(peer_data(4)), out));
    assert_eq!(drops(&actions), [(2, DropReason::ConnectFailed)]);
}

#[test]
fn a_closed_connection_is_made_again_on_the_next_packet() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    let (conn, _) = connecting(&mut iface, to, 1);
    run(|out| iface.connect_complete(at(2), conn, Ok(peer_data(65524)), out));
    let actions = run(|out| iface.connection_closed(at(3), conn, out));
    assert!(actions.is_empty());
    let actions = run(|out| iface.transmit(at(4), to, ETHERTYPE_IPV4, 100, 2, out));
    assert_eq!(connects(&actions).len(), 1);
    assert!(sent_connected(&actions).is_empty());
    // Closed while connecting: what waited is dropped.
    let conn = connects(&actions)[0].0;
    let actions = run(|out| iface.connection_closed(at(5), conn, out));
    assert_eq!(drops(&actions), [(2, DropReason::ConnectionLost)]);
    // A late REP for it matches nothing.
    let late = run(|out| iface.connect_complete(at(6), conn, Ok(peer_data(65524)), out));
    assert!(late.is_empty());
    assert_eq!(iface.counters().stale_answers, 1);
}

#[test]
fn flushes_and_mode_switches_tear_connections_down() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    let (conn, _) = connecting(&mut iface, to, 1);
    run(|out| iface.connect_complete(at(2), conn, Ok(peer_data(65524)), out));
    let actions = run(|out| iface.set_mode(Mode::Datagram, out).unwrap());
    assert!(actions.contains(&Action::Disconnect { conn }));
    assert_eq!(iface.neighbours(), 0);

    let mut iface = up_connected();
    let (conn, _) = connecting(&mut iface, to, 1);
    let actions = run(|out| iface.port_event(at(3), PortEvent::Error, out));
    assert!(actions.contains(&Action::Disconnect { conn }));
    assert_eq!(drops(&actions), [(1, DropReason::Flushed)]);
    // The REP for the torn-down connection is ignored.
    let late = run(|out| iface.connect_complete(at(4), conn, Ok(peer_data(65524)), out));
    assert!(late.is_empty());

    // An idle neighbour's connection goes with it.
    let mut iface = up_connected();
    let (conn, _) = connecting(&mut iface, to, 1);
    run(|out| iface.connect_complete(at(2), conn, Ok(peer_data(65524)), out));
    let actions = run(|out| iface.handle_timeout(at(60_000), out));
    assert!(actions.contains(&Action::Disconnect { conn }));
}

#[test]
fn a_path_that_times_out_drops_what_waited_to_connect() {
    let mut iface = up_connected();
    let to = rc_peer(1, 0x51);
    run(|out| iface.transmit(at(0), to, ETHERTYPE_IPV4, 100, 1, out));
    let actions = run(|out| iface.handle_timeout(at(1000), out));
    assert_eq!(drops(&actions), [(1, DropReason::PathQueryTimedOut)]);
}

#[test]
fn the_passive_side_answers_with_our_qpn_and_receive_mtu() {
    let request = CmDataRepr {
        qpn: 0x51,
        mtu: 65524,
    };
    let plain = Iface::new(Config::new(QPN, 0xffff));
    assert_eq!(
        plain.accept_connection(&request),
        Err(RejectReason::NotCapable)
    );
    let down = Iface::new(capable());
    assert_eq!(down.accept_connection(&request), Err(RejectReason::NotUp));
    let iface = up_connected();
    assert_eq!(
        iface.accept_connection(&request),
        Ok(CmDataRepr {
            qpn: QPN,
            mtu: 65524
        })
    );
    assert_eq!(
        iface.accept_connection(&CmDataRepr { qpn: 0x51, mtu: 3 }),
        Err(RejectReason::BadMtu)
    );
}

#[test]
fn a_message_on_a_connection_has_no_grh_slot() {
    let mut iface = up_connected();
    let got = iface
        .receive_connected(&[0x08, 0x00, 0x00, 0x00, 0x45, 0x00])
        .unwrap();
    assert_eq!(got.ethertype, ETHERTYPE_IPV4);
    assert_eq!(got.payload, &[0x45, 0x00]);
    assert_eq!((got.kind, got.source), (PacketKind::Host, None));
    assert_eq!(
        iface.receive_connected(&[0x08, 0x00, 0x00]),
        Err(ReceiveError::Malformed(WireError::Truncated))
    );
}

#[test]
fn a_late_rep_does_not_connect_the_next_neighbour_in_the_same_slot() {
    let mut iface = up_connected();
    let (old, _) = connecting(&mut iface, rc_peer(1, 0x51), 1);
    run(|out| iface.set_mode(Mode::Datagram, out).unwrap());
    run(|out| iface.set_mode(Mode::Connected, out).unwrap());
    let (new, _) = connecting(&mut iface, rc_peer(2, 0x52), 2);
    assert_eq!(new.index, old.index, "the slot is reused");
    assert_ne!(new.generation, old.generation);
    let late = run(|out| iface.connect_complete(at(5), old, Ok(peer_data(65524)), out));
    assert!(late.is_empty(), "{late:?}");
    let actions = run(|out| iface.connect_complete(at(6), new, Ok(peer_data(65524)), out));
    assert_eq!(sent_connected(&actions), [(new, 2)]);
}
