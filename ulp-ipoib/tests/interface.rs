//! The datagram-mode interface core through whole sequences: bring-up (broadcast join
//! before the carrier, MTU from the group), path lookups with bounded queues, the
//! address handle cache, multicast joins and leaves, flushes on port events, timeouts
//! and receive classification. Packets are numbers; every action is recorded.

use std::time::Duration;

use ulp_ipoib::interface::{
    Action, AhId, Config, DropReason, Instant, Interface, PacketKind, PortEvent, PortInfo,
    QueryFailed, QueryId, ReceiveCompletion, ReceiveError,
};
use ulp_ipoib::sa::{AddressVector, GlobalRoute, IbMtu, JoinState, McMemberRecord, PathRecord};
use ulp_ipoib::wire::encap::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use ulp_ipoib::wire::mgid::{IpoibMgid, Scope};
use ulp_ipoib::wire::{Gid, HardwareAddress, WireError};

type Iface = Interface<u32, 4, 8, 4, 12, 16>;
type Actions = Vec<Action<u32>>;

const QPN: u32 = 0x48;
const LID: u16 = 1;
const QKEY: u32 = 0x0b1b;

fn port_gid() -> Gid {
    Gid::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_000a_0b0c)
}

fn peer_gid(n: u64) -> Gid {
    Gid::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_000b_0000 + n)
}

fn peer(n: u64, qpn: u32) -> HardwareAddress {
    HardwareAddress::new(0, qpn, peer_gid(n))
}

fn broadcast_mgid() -> Gid {
    IpoibMgid::broadcast(0xffff, Scope::LINK_LOCAL).to_gid()
}

fn group(n: u32) -> Gid {
    IpoibMgid::ipv4(
        std::net::Ipv4Addr::from(0xe000_0000 + n),
        0xffff,
        Scope::LINK_LOCAL,
    )
    .to_gid()
}

fn port_info() -> PortInfo {
    PortInfo {
        lid: LID,
        gid: port_gid(),
        pkey_present: true,
    }
}

fn member(mlid: u16) -> McMemberRecord {
    McMemberRecord {
        mlid,
        qkey: QKEY,
        mtu: IbMtu::Mtu2048,
        sl: 0,
        rate: 3,
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 0,
    }
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

fn at(millis: u64) -> Instant {
    Instant::from_millis(millis)
}

/// Runs `f` with a recording sink and returns what it recorded.
fn run(f: impl FnOnce(&mut dyn FnMut(Action<u32>))) -> Actions {
    let mut actions = Vec::new();
    f(&mut |action| actions.push(action));
    actions
}

fn joins(actions: &Actions) -> Vec<(QueryId, Gid, JoinState, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Join {
                query,
                mgid,
                state,
                broadcast,
            } => Some((*query, *mgid, *state, broadcast.is_some())),
            _ => None,
        })
        .collect()
}

fn path_queries(actions: &Actions) -> Vec<(QueryId, Gid)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPathQuery { query, dgid, .. } => Some((*query, *dgid)),
            _ => None,
        })
        .collect()
}

fn transmits(actions: &Actions) -> Vec<(AhId, u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit {
                ah, qpn, packet, ..
            } => Some((*ah, *qpn, *packet)),
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

fn created(actions: &Actions) -> Vec<(AhId, AddressVector)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateAh { ah, av } => Some((*ah, *av)),
            _ => None,
        })
        .collect()
}

fn destroyed(actions: &Actions) -> Vec<AhId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DestroyAh { ah } => Some(*ah),
            _ => None,
        })
        .collect()
}

fn leaves(actions: &Actions) -> Vec<Gid> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Leave { mgid } => Some(*mgid),
            _ => None,
        })
        .collect()
}

/// An interface opened on an active port, its broadcast join answered: carrier on.
fn up() -> Iface {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let (query, mgid, ..) = joins(&actions)[0];
    assert_eq!(mgid, broadcast_mgid());
    run(|out| iface.join_complete(at(0), query, Ok(member(0xc000)), out));
    assert!(iface.carrier());
    iface
}

/// Sends `packet` to `to` and answers its path query with `dlid`.
fn resolve(iface: &mut Iface, now: u64, to: HardwareAddress, packet: u32, dlid: u16) -> Actions {
    let mut actions = run(|out| iface.transmit(at(now), to, ETHERTYPE_IPV4, 100, packet, out));
    let (query, _) = path_queries(&actions)[0];
    actions.extend(run(|out| {
        iface.path_complete(at(now), query, Ok(path_to(dlid)), out)
    }));
    actions
}

#[test]
fn the_carrier_waits_for_the_broadcast_join_and_takes_its_mtu() {
    // P_Key 0x7fff: the full-membership bit is set before the group is named.
    let mut iface = Iface::new(Config::new(QPN, 0x7fff));
    let actions = run(|out| iface.open(at(0), out));
    assert!(actions.is_empty(), "no port yet: {actions:?}");
    let actions = run(|out| iface.port_event(at(5), PortEvent::Active(port_info()), out));
    assert_eq!(
        actions[0],
        Action::SetHardwareAddress {
            address: HardwareAddress::new(0, QPN, port_gid())
        }
    );
    let join = joins(&actions);
    assert_eq!(join.len(), 1);
    let (query, mgid, state, copies_broadcast) = join[0];
    assert_eq!(mgid, broadcast_mgid());
    assert_eq!(state, JoinState::FullMember);
    assert!(!copies_broadcast);
    assert!(!iface.carrier());
    assert_eq!(iface.mtu(), None);

    let dropped = run(|out| iface.transmit(at(6), peer(1, 0x50), ETHERTYPE_IPV4, 100, 7, out));
    assert_eq!(drops(&dropped), [(7, DropReason::CarrierOff)]);

    let actions = run(|out| iface.join_complete(at(10), query, Ok(member(0xc000)), out));
    let (ah, av) = created(&actions)[0];
    assert_eq!(
        av,
        AddressVector {
            dlid: 0xc000,
            sl: 0,
            static_rate: 3,
            grh: Some(GlobalRoute {
                dgid: broadcast_mgid(),
                flow_label: 0,
                hop_limit: 0,
                traffic_class: 0
            }),
        }
    );
    assert_eq!(
        actions[1..],
        [Action::SetMtu { mtu: 2044 }, Action::CarrierOn]
    );
    assert_eq!(iface.mtu(), Some(2044));
    assert_eq!(iface.qkey(), Some(QKEY));
    assert!(iface.is_joined(&broadcast_mgid()));

    // Broadcast goes out on the group's handle to the multicast QPN, with the Q_Key.
    let brd = iface.broadcast_address();
    let actions = run(|out| iface.transmit(at(11), brd, ETHERTYPE_ARP, 100, 8, out));
    assert_eq!(
        actions,
        [Action::Transmit {
            ah,
            qpn: 0xff_ffff,
            qkey: QKEY,
            packet: 8
        }]
    );
}

#[test]
fn a_4k_broadcast_group_gives_4092() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let (query, ..) = joins(&actions)[0];
    let mut big = member(0xc000);
    big.mtu = IbMtu::Mtu4096;
    let actions = run(|out| iface.join_complete(at(0), query, Ok(big), out));
    assert!(actions.contains(&Action::SetMtu { mtu: 4092 }));
}

#[test]
fn no_join_without_our_pkey_until_it_appears() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let mut info = port_info();
    info.pkey_present = false;
    let actions = run(|out| {
        iface.open(at(0), out);
        iface.port_event(at(0), PortEvent::Active(info), out);
    });
    assert!(joins(&actions).is_empty());
    let actions = run(|out| iface.port_event(at(1), PortEvent::PkeyChange { present: true }, out));
    assert_eq!(joins(&actions).len(), 1);
}

#[test]
fn unicast_waits_for_its_path_bounded_then_goes_in_order() {
    let mut iface = up();
    let to = peer(1, 0x51);
    let actions = run(|out| {
        for packet in 1..=4 {
            iface.transmit(at(100), to, ETHERTYPE_IPV4, 100, packet, out);
        }
    });
    let queries = path_queries(&actions);
    assert_eq!(queries.len(), 1, "one query per destination: {actions:?}");
    assert!(matches!(
        actions[0],
        Action::SendPathQuery { dgid, sgid, pkey: 0xffff, .. } if dgid == peer_gid(1) && sgid == port_gid()
    ));
    // Three held (IPOIB_MAX_PATH_REC_QUEUE), the fourth dropped and counted.
    assert_eq!(drops(&actions), [(4, DropReason::QueueFull)]);
    assert_eq!(iface.queued(), 3);
    assert_eq!(iface.counters().dropped(DropReason::QueueFull), 1);

    let actions = run(|out| iface.path_complete(at(150), queries[0].0, Ok(path_to(7)), out));
    let (ah, av) = created(&actions)[0];
    assert_eq!(
        av,
        AddressVector {
            dlid: 7,
            sl: 0,
            static_rate: 3,
            grh: None
        }
    );
    assert_eq!(
        transmits(&actions),
        [(ah, 0x51, 1), (ah, 0x51, 2), (ah, 0x51, 3)]
    );
    assert!(actions
        .iter()
        .all(|a| !matches!(a, Action::Transmit { qkey, .. } if *qkey != QKEY)));
    assert_eq!(iface.queued(), 0);

    let actions = run(|out| iface.transmit(at(160), to, ETHERTYPE_IPV6, 100, 5, out));
    assert_eq!(transmits(&actions), [(ah, 0x51, 5)]);
    assert!(path_queries(&actions).is_empty());
}

#[test]
fn a_routed_path_gets_a_grh() {
    let mut iface = up();
    let actions = run(|out| iface.transmit(at(0), peer(1, 0x51), ETHERTYPE_IPV4, 100, 1, out));
    let (query, _) = path_queries(&actions)[0];
    let mut routed = path_to(9);
    routed.hop_limit = 4;
    routed.flow_label = 0x12345;
    let actions = run(|out| iface.path_complete(at(1), query, Ok(routed), out));
    let (_, av) = created(&actions)[0];
    assert_eq!(
        av.grh,
        Some(GlobalRoute {
            dgid: peer_gid(1),
            flow_label: 0x12345,
            hop_limit: 4,
            traffic_class: 0
        })
    );
}

#[test]
fn a_path_query_that_times_out_drops_its_packets_and_its_late_answer_is_ignored() {
    let mut iface = up();
    let to = peer(1, 0x51);
    let actions = run(|out| {
        iface.transmit(at(1000), to, ETHERTYPE_IPV4, 100, 1, out);
        iface.transmit(at(1200), to, ETHERTYPE_IPV4, 100, 2, out);
    });
    let (query, _) = path_queries(&actions)[0];
    assert_eq!(iface.poll_timeout(), Some(at(2000)));
    let early = run(|out| iface.handle_timeout(at(1999), out));
    assert!(early.is_empty(), "{early:?}");
    let actions = run(|out| iface.handle_timeout(at(2000), out));
    assert_eq!(
        actions,
        [
            Action::CancelPathQuery { query },
            Action::Drop {
                packet: 1,
                reason: DropReason::PathQueryTimedOut
            },
            Action::Drop {
                packet: 2,
                reason: DropReason::PathQueryTimedOut
            },
        ]
    );
    assert_eq!(iface.counters().path_query_failures, 1);

    let late = run(|out| iface.path_complete(at(2100), query, Ok(path_to(7)), out));
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(iface.counters().stale_answers, 1);

    // The next packet asks again.
    let actions = run(|out| iface.transmit(at(2200), to, ETHERTYPE_IPV4, 100, 3, out));
    assert_eq!(path_queries(&actions).len(), 1);
    assert_ne!(path_queries(&actions)[0].0, query);
}

#[test]
fn a_failed_path_query_drops_its_packets() {
    let mut iface = up();
    let actions = run(|out| iface.transmit(at(0), peer(1, 0x51), ETHERTYPE_IPV4, 100, 1, out));
    let (query, _) = path_queries(&actions)[0];
    let actions = run(|out| iface.path_complete(at(5), query, Err(QueryFailed), out));
    assert_eq!(drops(&actions), [(1, DropReason::PathQueryFailed)]);
    assert_eq!(iface.counters().dropped(DropReason::PathQueryFailed), 1);
    assert_eq!(
        iface.poll_timeout(),
        Some(at(60_000)),
        "only the neighbour's age is left"
    );
}

#[test]
fn destinations_with_the_same_address_vector_share_one_handle() {
    let mut iface = up();
    let first = resolve(&mut iface, 0, peer(1, 0x51), 1, 7);
    let second = resolve(&mut iface, 0, peer(2, 0x52), 2, 7);
    let (ah, _) = created(&first)[0];
    assert!(created(&second).is_empty(), "{second:?}");
    assert_eq!(transmits(&second), [(ah, 0x52, 2)]);
    let third = resolve(&mut iface, 0, peer(3, 0x53), 3, 8);
    assert_eq!(created(&third).len(), 1);
    // Broadcast's handle, dlid 7's and dlid 8's.
    assert_eq!(iface.address_handles(), 3);

    // A port error destroys each handle once.
    let actions = run(|out| iface.port_event(at(1), PortEvent::Error, out));
    let mut gone = destroyed(&actions);
    gone.sort_by_key(|ah| ah.index);
    assert_eq!(gone.len(), 3, "{actions:?}");
    assert!(gone.contains(&ah));
    assert_eq!(iface.address_handles(), 0);
}

#[test]
fn neighbours_are_keyed_by_the_whole_address_and_share_the_path_of_their_gid() {
    let mut iface = up();
    let a = peer(1, 0x51);
    let b = peer(1, 0x61);
    let actions = run(|out| {
        iface.transmit(at(0), a, ETHERTYPE_IPV4, 100, 1, out);
        iface.transmit(at(0), b, ETHERTYPE_IPV4, 100, 2, out);
    });
    assert_eq!(path_queries(&actions).len(), 1);
    assert_eq!(iface.neighbours(), 2);
    assert_eq!(iface.paths(), 1);
    let (query, _) = path_queries(&actions)[0];
    let actions = run(|out| iface.path_complete(at(1), query, Ok(path_to(7)), out));
    let sent: Vec<(u32, u32)> = transmits(&actions).iter().map(|t| (t.1, t.2)).collect();
    assert_eq!(sent, [(0x51, 1), (0x61, 2)]);
}

#[test]
fn arp_resolves_a_path_without_a_neighbour_and_other_ethertypes_are_dropped() {
    let mut iface = up();
    let actions = run(|out| iface.transmit(at(0), peer(1, 0x51), ETHERTYPE_ARP, 100, 1, out));
    assert_eq!(path_queries(&actions).len(), 1);
    assert_eq!(iface.neighbours(), 0);
    assert_eq!(iface.paths(), 1);
    let actions = run(|out| iface.transmit(at(0), peer(1, 0x51), 0x88cc, 100, 2, out));
    assert_eq!(drops(&actions), [(2, DropReason::UnsupportedEthertype)]);
}

#[test]
fn a_destination_beyond_the_path_table_is_dropped_when_every_path_is_busy() {
    let mut iface = up(); // 4 path slots, each looked up with packets held.
    let actions = run(|out| {
        for n in 0..4u32 {
            iface.transmit(at(0), peer(n.into(), 0x51), ETHERTYPE_IPV4, 100, n, out);
        }
    });
    assert!(drops(&actions).is_empty());
    let actions = run(|out| iface.transmit(at(0), peer(9, 0x51), ETHERTYPE_IPV4, 100, 99, out));
    assert_eq!(drops(&actions), [(99, DropReason::PathTableFull)]);
}

#[test]
fn the_pool_of_held_packets_is_bounded_across_destinations() {
    // Room for 4 held packets in all, 3 per path.
    let mut iface: Interface<u32, 4, 8, 4, 12, 4> = Interface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    run(|out| iface.join_complete(at(0), joins(&actions)[0].0, Ok(member(0xc000)), out));
    let actions = run(|out| {
        for packet in 0..3 {
            iface.transmit(at(0), peer(1, 0x51), ETHERTYPE_IPV4, 100, packet, out);
        }
        for packet in 10..13 {
            iface.transmit(at(0), peer(2, 0x52), ETHERTYPE_IPV4, 100, packet, out);
        }
    });
    assert_eq!(
        drops(&actions),
        [(11, DropReason::QueueFull), (12, DropReason::QueueFull)]
    );
    assert_eq!(iface.queued(), 4);
}

#[test]
fn a_group_holds_at_most_its_limit_while_joined() {
    let mut config = Config::new(QPN, 0xffff);
    config.group_queue_limit = 2;
    let mut iface = Iface::new(config);
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    run(|out| iface.join_complete(at(0), joins(&actions)[0].0, Ok(member(0xc000)), out));
    let to = HardwareAddress::multicast(group(3));
    let actions = run(|out| {
        for packet in 1..=3 {
            iface.transmit(at(1), to, ETHERTYPE_IPV4, 100, packet, out);
        }
    });
    assert_eq!(joins(&actions).len(), 1);
    assert_eq!(drops(&actions), [(3, DropReason::QueueFull)]);
}

#[test]
fn a_full_path_table_evicts_the_least_recently_used_resolved_path() {
    let mut iface = up();
    let mut handles = Vec::new();
    for n in 0..4u16 {
        let actions = resolve(
            &mut iface,
            u64::from(n) * 10,
            peer(n.into(), 0x51),
            n.into(),
            100 + n,
        );
        handles.push(created(&actions)[0].0);
    }
    // Peer 0 used again: peer 1 is now the least recently used.
    run(|out| iface.transmit(at(50), peer(0, 0x51), ETHERTYPE_IPV4, 100, 10, out));
    let actions = run(|out| iface.transmit(at(60), peer(8, 0x51), ETHERTYPE_IPV4, 100, 11, out));
    assert_eq!(destroyed(&actions), [handles[1]]);
    assert_eq!(path_queries(&actions)[0].1, peer_gid(8));
    assert_eq!(iface.paths(), 4);
}

#[test]
fn the_stack_multicast_list_is_joined_after_broadcast_and_left_when_dropped() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
        iface.set_multicast_list(at(0), [group(1), port_gid()], out);
    });
    // Only the broadcast join: the listed group waits for its parameters; the unicast
    // GID in the list is skipped.
    let join = joins(&actions);
    assert_eq!(join.len(), 1);
    let actions = run(|out| iface.join_complete(at(1), join[0].0, Ok(member(0xc000)), out));
    let join = joins(&actions);
    assert_eq!(join.len(), 1, "{actions:?}");
    let (query, mgid, state, copies_broadcast) = join[0];
    assert_eq!(
        (mgid, state, copies_broadcast),
        (group(1), JoinState::FullMember, true)
    );
    assert!(matches!(
        actions.iter().find(|a| matches!(a, Action::Join { .. })),
        Some(Action::Join { broadcast: Some(b), .. }) if *b == member(0xc000)
    ));
    let actions = run(|out| iface.join_complete(at(2), query, Ok(member(0xc001)), out));
    let (ah, _) = created(&actions)[0];
    assert!(iface.is_joined(&group(1)));

    let actions = run(|out| iface.set_multicast_list(at(3), [group(2)], out));
    assert_eq!(leaves(&actions), [group(1)]);
    assert_eq!(destroyed(&actions), [ah]);
    assert_eq!(joins(&actions)[0].1, group(2));
    assert!(!iface.is_joined(&group(1)));
    // The broadcast group is never left by the list.
    assert!(iface.is_joined(&broadcast_mgid()));
}

#[test]
fn sending_to_an_unjoined_group_joins_it_send_only() {
    let mut iface = up();
    let to = HardwareAddress::multicast(group(5));
    let actions = run(|out| {
        iface.transmit(at(0), to, ETHERTYPE_IPV4, 100, 1, out);
        iface.transmit(at(0), to, ETHERTYPE_IPV4, 100, 2, out);
    });
    let join = joins(&actions);
    assert_eq!(join.len(), 1);
    assert_eq!(join[0].2, JoinState::SendOnly);
    let actions = run(|out| iface.join_complete(at(1), join[0].0, Ok(member(0xc005)), out));
    let (ah, _) = created(&actions)[0];
    assert_eq!(
        transmits(&actions),
        [(ah, 0xff_ffff, 1), (ah, 0xff_ffff, 2)]
    );

    // A failed send-only join drops its packets and forgets the group.
    let other = HardwareAddress::multicast(group(6));
    let actions = run(|out| iface.transmit(at(2), other, ETHERTYPE_IPV4, 100, 3, out));
    let query = joins(&actions)[0].0;
    let actions = run(|out| iface.join_complete(at(3), query, Err(QueryFailed), out));
    assert_eq!(drops(&actions), [(3, DropReason::JoinFailed)]);
    let actions = run(|out| iface.transmit(at(4), other, ETHERTYPE_IPV4, 100, 4, out));
    assert_eq!(joins(&actions).len(), 1, "joined again on next use");
}

#[test]
fn a_multicast_destination_with_another_pkey_is_this_links_group() {
    let mut iface = up();
    let stack_built = IpoibMgid::broadcast(0x0000, Scope::LINK_LOCAL).to_gid();
    let actions = run(|out| {
        iface.transmit(
            at(0),
            HardwareAddress::multicast(stack_built),
            ETHERTYPE_IPV4,
            100,
            1,
            out,
        )
    });
    assert_eq!(transmits(&actions).len(), 1, "{actions:?}");
    assert!(joins(&actions).is_empty());
}

#[test]
fn a_failed_broadcast_join_is_retried_with_doubling_backoff() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let mut query = joins(&actions)[0].0;
    let mut now = 0;
    for expected_wait in [1000, 2000, 4000, 8000, 16_000, 16_000] {
        run(|out| iface.join_complete(at(now), query, Err(QueryFailed), out));
        assert!(!iface.carrier());
        assert_eq!(iface.poll_timeout(), Some(at(now + expected_wait)));
        now += expected_wait;
        let actions = run(|out| iface.handle_timeout(at(now), out));
        let join = joins(&actions);
        assert_eq!(join.len(), 1);
        assert_eq!(join[0].1, broadcast_mgid());
        query = join[0].0;
    }
    run(|out| iface.join_complete(at(now), query, Ok(member(0xc000)), out));
    assert!(iface.carrier());
    assert_eq!(iface.counters().join_failures, 6);
}

#[test]
fn a_port_error_flushes_everything_and_port_active_rejoins() {
    let mut iface = up();
    run(|out| iface.set_multicast_list(at(0), [group(1)], out));
    let listed = iface.counters().joins;
    resolve(&mut iface, 0, peer(1, 0x51), 1, 7);
    let held = run(|out| iface.transmit(at(1), peer(2, 0x52), ETHERTYPE_IPV4, 100, 2, out));
    let (pending, _) = path_queries(&held)[0];

    let actions = run(|out| iface.port_event(at(2), PortEvent::Error, out));
    assert_eq!(actions[0], Action::CarrierOff);
    assert!(actions.contains(&Action::CancelPathQuery { query: pending }));
    assert_eq!(drops(&actions), [(2, DropReason::Flushed)]);
    let mut left = leaves(&actions);
    left.sort();
    let mut expected = vec![broadcast_mgid(), group(1)];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(iface.address_handles(), 0);
    assert_eq!(
        (iface.paths(), iface.neighbours(), iface.queued()),
        (0, 0, 0)
    );
    assert!(joins(&actions).is_empty(), "the port is down");
    let late = run(|out| iface.path_complete(at(3), pending, Ok(path_to(9)), out));
    assert!(late.is_empty());

    let actions = run(|out| iface.port_event(at(10), PortEvent::Active(port_info()), out));
    let join = joins(&actions);
    assert_eq!(join.len(), 1);
    assert_eq!(join[0].1, broadcast_mgid());
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetHardwareAddress { .. })),
        "same GID, same address"
    );
    let actions = run(|out| iface.join_complete(at(11), join[0].0, Ok(member(0xc000)), out));
    assert!(actions.contains(&Action::CarrierOn));
    assert_eq!(
        joins(&actions)[0].1,
        group(1),
        "the listed group is joined again"
    );
    assert_eq!(iface.counters().joins, listed + 2);
}

#[test]
fn a_lid_change_flushes_like_a_port_error_and_rejoins_at_once() {
    let mut iface = up();
    resolve(&mut iface, 0, peer(1, 0x51), 1, 7);
    let actions = run(|out| iface.port_event(at(1), PortEvent::LidChange { lid: 9 }, out));
    assert_eq!(actions[0], Action::CarrierOff);
    assert_eq!(destroyed(&actions).len(), 2);
    assert_eq!(joins(&actions).len(), 1);
    assert_eq!(iface.paths(), 0);
}

#[test]
fn a_client_reregister_keeps_the_carrier_and_stale_paths_carry_traffic_while_asked_again() {
    let mut iface = up();
    let to = peer(1, 0x51);
    let first = resolve(&mut iface, 0, to, 1, 7);
    let (old_ah, _) = created(&first)[0];

    let actions = run(|out| iface.port_event(at(10), PortEvent::ClientReregister, out));
    assert!(!actions.contains(&Action::CarrierOff));
    assert!(iface.carrier());
    assert_eq!(leaves(&actions), [broadcast_mgid()]);
    let join = joins(&actions);
    assert_eq!(join[0].1, broadcast_mgid());

    // Unicast goes on with the old handle, and the path is asked for again.
    let actions = run(|out| iface.transmit(at(11), to, ETHERTYPE_IPV4, 100, 2, out));
    assert_eq!(transmits(&actions), [(old_ah, 0x51, 2)]);
    let (query, _) = path_queries(&actions)[0];
    // Only one query while it is in flight.
    let again = run(|out| iface.transmit(at(12), to, ETHERTYPE_IPV4, 100, 3, out));
    assert!(path_queries(&again).is_empty());

    // The SM moved the destination: a new handle, the old one destroyed after.
    let actions = run(|out| iface.path_complete(at(13), query, Ok(path_to(70)), out));
    let (new_ah, av) = created(&actions)[0];
    assert_eq!(av.dlid, 70);
    assert_eq!(destroyed(&actions), [old_ah]);
    let actions = run(|out| iface.transmit(at(14), to, ETHERTYPE_IPV4, 100, 4, out));
    assert_eq!(transmits(&actions), [(new_ah, 0x51, 4)]);
    assert!(path_queries(&actions).is_empty());

    // Leaving destroyed the broadcast group's handle; the rejoin makes it again.
    let actions = run(|out| iface.join_complete(at(15), join[0].0, Ok(member(0xc000)), out));
    assert_eq!(created(&actions).len(), 1);
    assert!(!actions.contains(&Action::CarrierOn), "it never went off");
}

#[test]
fn a_gid_change_announces_the_new_address() {
    let mut iface = up();
    let new_gid = Gid::from_parts(0xfe80_0000_0000_0000, 0x1111);
    let actions = run(|out| iface.port_event(at(1), PortEvent::GidChange { gid: new_gid }, out));
    assert_eq!(
        actions[0],
        Action::SetHardwareAddress {
            address: HardwareAddress::new(0, QPN, new_gid)
        }
    );
    assert_eq!(joins(&actions).len(), 1);
}

#[test]
fn a_pkey_removed_takes_the_interface_down_until_it_returns() {
    let mut iface = up();
    let actions = run(|out| iface.port_event(at(1), PortEvent::PkeyChange { present: false }, out));
    assert_eq!(actions[0], Action::CarrierOff);
    assert!(joins(&actions).is_empty());
    let actions = run(|out| iface.port_event(at(2), PortEvent::PkeyChange { present: true }, out));
    assert_eq!(joins(&actions).len(), 1);
}

#[test]
fn an_answer_to_a_join_abandoned_by_a_flush_is_ignored() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let stale = joins(&actions)[0].0;
    let actions = run(|out| iface.port_event(at(1), PortEvent::ClientReregister, out));
    assert_eq!(
        leaves(&actions),
        [broadcast_mgid()],
        "the join in flight is given up"
    );
    let fresh = joins(&actions)[0].0;
    let actions = run(|out| iface.join_complete(at(2), stale, Ok(member(0xc000)), out));
    assert!(actions.is_empty());
    assert!(!iface.carrier());
    run(|out| iface.join_complete(at(3), fresh, Ok(member(0xc000)), out));
    assert!(iface.carrier());
}

#[test]
fn stop_lets_everything_go_and_open_comes_back() {
    let mut iface = up();
    resolve(&mut iface, 0, peer(1, 0x51), 1, 7);
    let actions = run(|out| iface.stop(at(1), out));
    assert_eq!(actions[0], Action::CarrierOff);
    assert_eq!(iface.address_handles(), 0);
    assert!(joins(&actions).is_empty());
    let actions = run(|out| iface.open(at(2), out));
    assert_eq!(joins(&actions).len(), 1);
}

#[test]
fn idle_neighbours_are_forgotten() {
    let mut iface = up();
    resolve(&mut iface, 0, peer(1, 0x51), 1, 7);
    assert_eq!(iface.neighbours(), 1);
    assert_eq!(iface.poll_timeout(), Some(at(60_000)));
    run(|out| iface.handle_timeout(at(59_999), out));
    assert_eq!(iface.neighbours(), 1);
    run(|out| iface.handle_timeout(at(60_000), out));
    assert_eq!(iface.neighbours(), 0);
    assert_eq!(iface.poll_timeout(), None);
}

#[test]
fn a_handle_the_caller_could_not_create_sends_the_path_back_to_the_sa() {
    let mut iface = up();
    let to = peer(1, 0x51);
    let actions = run(|out| {
        iface.transmit(at(0), to, ETHERTYPE_IPV4, 100, 1, out);
    });
    let (query, _) = path_queries(&actions)[0];
    let mut ah = None;
    let mut sent = Vec::new();
    // The caller creates the handle when told; here it fails, and it tells the core
    // before going on with the actions that name the handle.
    let actions = run(|out| iface.path_complete(at(1), query, Ok(path_to(7)), out));
    for action in &actions {
        match action {
            Action::CreateAh { ah: id, .. } => ah = Some(*id),
            Action::Transmit { packet, .. } => sent.push(*packet),
            _ => {}
        }
    }
    let ah = ah.unwrap();
    let actions = run(|out| iface.ah_create_failed(at(1), ah, out));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(iface.address_handles(), 1, "only broadcast's");
    let actions = run(|out| iface.transmit(at(2), to, ETHERTYPE_IPV4, 100, 2, out));
    assert_eq!(path_queries(&actions).len(), 1);
    assert!(transmits(&actions).is_empty());
}

fn receive_buffer(grh: Option<(Gid, Gid)>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 40];
    if let Some((sgid, dgid)) = grh {
        buf[0] = 0x60;
        buf[6] = 0x1b;
        buf[8..24].copy_from_slice(&sgid.0);
        buf[24..40].copy_from_slice(&dgid.0);
    }
    buf.extend_from_slice(&ethertype.to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(payload);
    buf
}

#[test]
fn receive_classifies_by_destination_gid_and_names_the_sender() {
    let mut iface = up();
    let from = ReceiveCompletion {
        src_qp: 0x51,
        slid: 7,
        grh: true,
    };
    let buf = receive_buffer(
        Some((peer_gid(1), broadcast_mgid())),
        ETHERTYPE_ARP,
        b"who-has",
    );
    let got = iface.receive(from, &buf).unwrap();
    assert_eq!(got.kind, PacketKind::Broadcast);
    assert_eq!(got.ethertype, ETHERTYPE_ARP);
    assert_eq!(got.payload, b"who-has");
    assert_eq!(got.source, Some(HardwareAddress::new(0, 0x51, peer_gid(1))));

    let buf = receive_buffer(Some((peer_gid(1), group(1))), ETHERTYPE_IPV4, b"m");
    assert_eq!(
        iface.receive(from, &buf).unwrap().kind,
        PacketKind::Multicast
    );

    let no_grh = ReceiveCompletion { grh: false, ..from };
    let buf = receive_buffer(None, ETHERTYPE_IPV6, b"u");
    let got = iface.receive(no_grh, &buf).unwrap();
    assert_eq!((got.kind, got.source), (PacketKind::Host, None));
    assert_eq!(iface.counters().received, 3);
}

#[test]
fn receive_refuses_our_own_multicast_and_malformed_frames() {
    let mut iface = up();
    let ours = ReceiveCompletion {
        src_qp: QPN,
        slid: LID,
        grh: true,
    };
    let buf = receive_buffer(Some((port_gid(), broadcast_mgid())), ETHERTYPE_IPV4, b"x");
    assert_eq!(iface.receive(ours, &buf), Err(ReceiveError::LoopedBack));
    // Same LID and QPN behind a router (another port GUID) is someone else.
    let routed = receive_buffer(Some((peer_gid(4), broadcast_mgid())), ETHERTYPE_IPV4, b"x");
    assert!(iface.receive(ours, &routed).is_ok());

    let from = ReceiveCompletion {
        src_qp: 0x51,
        slid: 7,
        grh: true,
    };
    let buf = receive_buffer(Some((peer_gid(1), broadcast_mgid())), ETHERTYPE_IPV4, b"");
    assert_eq!(
        iface.receive(from, &buf[..43]),
        Err(ReceiveError::Malformed(WireError::Truncated))
    );
    assert_eq!(
        iface.receive(from, &buf[..30]),
        Err(ReceiveError::Malformed(WireError::Truncated))
    );
    let mut bad_grh = buf.clone();
    bad_grh[0] = 0x40;
    assert_eq!(
        iface.receive(from, &bad_grh),
        Err(ReceiveError::Malformed(WireError::GrhVersion(4)))
    );
    // Without the GRH flag the slot is not read.
    assert!(iface
        .receive(ReceiveCompletion { grh: false, ..from }, &bad_grh)
        .is_ok());
    assert_eq!(iface.counters().receive_malformed, 3);
    assert_eq!(iface.counters().receive_looped_back, 1);
}

#[test]
fn instants_saturate() {
    assert_eq!(
        Instant::from_millis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
        Instant::from_millis(u64::MAX)
    );
}

#[test]
fn an_unused_send_only_group_is_left() {
    let mut iface = up();
    let to = HardwareAddress::multicast(group(5));
    let actions = run(|out| iface.transmit(at(1000), to, ETHERTYPE_IPV4, 100, 1, out));
    let query = joins(&actions)[0].0;
    let actions = run(|out| iface.join_complete(at(1001), query, Ok(member(0xc005)), out));
    let (ah, _) = created(&actions)[0];
    run(|out| iface.transmit(at(5000), to, ETHERTYPE_IPV4, 100, 2, out));
    assert_eq!(iface.poll_timeout(), Some(at(65_000)));
    let early = run(|out| iface.handle_timeout(at(64_999), out));
    assert!(leaves(&early).is_empty());
    let actions = run(|out| iface.handle_timeout(at(65_000), out));
    assert_eq!(leaves(&actions), [group(5)]);
    assert_eq!(destroyed(&actions), [ah]);
    assert!(!iface.is_joined(&group(5)));
    // A listened group is not aged.
    run(|out| iface.set_multicast_list(at(65_000), [group(6)], out));
    let actions = run(|out| iface.handle_timeout(at(500_000), out));
    assert!(leaves(&actions).is_empty(), "{actions:?}");
}

#[test]
fn the_mtu_is_the_smaller_of_the_administrators_and_the_groups() {
    let mut iface = Iface::new(Config::new(QPN, 0xffff));
    // Asked before the group is joined: applied when it is.
    let early = run(|out| assert_eq!(iface.set_mtu(1500, out), Ok(())));
    assert!(early.is_empty());
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let actions =
        run(|out| iface.join_complete(at(0), joins(&actions)[0].0, Ok(member(0xc000)), out));
    assert!(actions.contains(&Action::SetMtu { mtu: 1500 }));
    // Above the group's 2044: the group's.
    let actions = run(|out| iface.set_mtu(4000, out).unwrap());
    assert_eq!(actions, [Action::SetMtu { mtu: 2044 }]);
    assert_eq!(iface.mtu(), Some(2044));
    let refused = run(|out| {
        assert_eq!(
            iface.set_mtu(4093, out),
            Err(ulp_ipoib::interface::MtuTooLarge { max: 4092 })
        )
    });
    assert!(refused.is_empty());
    assert_eq!(iface.mtu(), Some(2044));
}

#[test]
fn a_huge_backoff_saturates_at_its_maximum() {
    let mut config = Config::new(QPN, 0xffff);
    config.join_backoff = Duration::from_secs(u64::MAX / 2 + 1);
    config.join_backoff_max = Duration::MAX;
    let mut iface = Iface::new(config);
    let actions = run(|out| {
        iface.port_event(at(0), PortEvent::Active(port_info()), out);
        iface.open(at(0), out);
    });
    let query = joins(&actions)[0].0;
    run(|out| iface.join_complete(at(0), query, Err(QueryFailed), out));
    assert_eq!(iface.poll_timeout(), Some(Instant::from_millis(u64::MAX)));
    let actions = run(|out| iface.handle_timeout(Instant::from_millis(u64::MAX), out));
    let query = joins(&actions)[0].0;
    run(|out| iface.join_complete(at(0), query, Err(QueryFailed), out));
    assert_eq!(iface.counters().join_failures, 2);
}

#[test]
fn a_group_handle_the_caller_could_not_create_leaves_and_rejoins_after_the_backoff() {
    let mut iface = up();
    let actions = run(|out| iface.set_multicast_list(at(0), [group(1)], out));
    let query = joins(&actions)[0].0;
    let actions = run(|out| iface.join_complete(at(10), query, Ok(member(0xc001)), out));
    let (ah, _) = created(&actions)[0];
    let actions = run(|out| iface.ah_create_failed(at(10), ah, out));
    assert_eq!(leaves(&actions), [group(1)]);
    assert!(
        destroyed(&actions).is_empty(),
        "never created, nothing to destroy"
    );
    assert!(!iface.is_joined(&group(1)));
    assert_eq!(iface.counters().join_failures, 1);
    assert_eq!(iface.poll_timeout(), Some(at(1010)));
    let actions = run(|out| iface.handle_timeout(at(1010), out));
    assert_eq!(joins(&actions)[0].1, group(1));
}
