//! Hostile bytes for every IPoIB parser, and for the interface core's receive path and
//! its answers to a peer-controlled sequence of events: each must end in a parse, a
//! refusal or an action, never a panic or an out-of-bounds access; and what parses must
//! emit back to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulp_ipoib::interface::{
    Action, Config, ConnId, ConnectFailed, Instant, Interface, Mode, PortEvent, PortInfo,
    QueryFailed, QueryId, ReceiveCompletion,
};
use ulp_ipoib::sa::{IbMtu, McMemberRecord, PathRecord};
use ulp_ipoib::wire::arp::{ArpPacket, ArpRepr, IPOIB_ARP_LEN};
use ulp_ipoib::wire::cm::{CmData, CmDataRepr};
use ulp_ipoib::wire::encap::{Frame, FrameRepr};
use ulp_ipoib::wire::grh::{Grh, GrhRepr};
use ulp_ipoib::wire::mgid::IpoibMgid;
use ulp_ipoib::wire::ndisc::{NdOption, NdOptionRepr};
use ulp_ipoib::wire::{Gid, HardwareAddress};

fn parsers(data: &[u8]) {
    if let Ok(frame) = Frame::new_checked(data) {
        let _ = (FrameRepr::parse(&frame), frame.payload());
    }
    if let Ok(grh) = Grh::new_checked(data) {
        if let Ok(repr) = GrhRepr::parse(&grh) {
            let mut out = [0u8; 40];
            repr.emit(&mut Grh::new_unchecked(&mut out[..])).unwrap();
            assert_eq!(GrhRepr::parse(&Grh::new_unchecked(&out[..])), Ok(repr));
        }
    }
    let arp = ArpPacket::new_unchecked(data);
    let _ = (
        arp.source_protocol_addr(),
        arp.target_hardware_addr(),
        arp.check_len(),
    );
    if let Ok(repr) = ArpRepr::parse(&arp) {
        let mut out = [0u8; IPOIB_ARP_LEN];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
    if let Ok(repr) = NdOptionRepr::parse(&NdOption::new_unchecked(data)) {
        let mut out = [0u8; 24];
        repr.emit(&mut NdOption::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            NdOptionRepr::parse(&NdOption::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
    if let Ok(repr) = CmDataRepr::parse(&CmData::new_unchecked(data)) {
        let mut out = [0u8; 8];
        repr.emit(&mut CmData::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            CmDataRepr::parse(&CmData::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
    if let Ok(address) = HardwareAddress::from_bytes(data) {
        if let Ok(mgid) = IpoibMgid::parse(&address.gid()) {
            assert_eq!(mgid.to_gid(), address.gid());
        }
    }
}

type Iface = Interface<u32, 4, 8, 4, 12, 16>;

fn member(mtu: u8) -> McMemberRecord {
    McMemberRecord {
        mlid: 0xc000,
        qkey: 0x0b1b,
        mtu: IbMtu::from_code(mtu % 6).unwrap_or(IbMtu::Mtu256),
        sl: 0,
        rate: 3,
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 0,
    }
}

/// Drives the core with events chosen by the input: 4 bytes per step.
fn sequence(data: &[u8]) {
    let gid = Gid::from_parts(0xfe80 << 48, 0x0002_c903_000a_0b0c);
    let mut config = Config::new(0x48, 0xffff);
    config.connected_mode = true;
    let mut iface = Iface::new(config);
    let mut queries: Vec<QueryId> = Vec::new();
    let mut conns: Vec<ConnId> = Vec::new();
    // How many times each packet came back (sent or dropped): exactly once in the end.
    let mut returned = vec![0u32; data.len() / 4 + 1];
    let mut sink = |action: Action<u32>| match action {
        Action::Join { query, .. } | Action::SendPathQuery { query, .. } => queries.push(query),
        _ => {}
    };
    let info = PortInfo {
        lid: 1,
        gid,
        pkey_present: true,
    };
    iface.port_event(Instant::from_millis(0), PortEvent::Active(info), &mut sink);
    iface.open(Instant::from_millis(0), &mut sink);
    drop(sink);
    let mut now = 0u64;
    for (packet, step) in data.chunks_exact(4).enumerate() {
        let (op, a, b, c) = (step[0], step[1], step[2], step[3]);
        now += u64::from(c) * 16;
        let at = Instant::from_millis(now);
        let mut pending = Vec::new();
        let mut connecting = Vec::new();
        let mut back = Vec::new();
        let mut sink = |action: Action<u32>| match action {
            Action::Join { query, .. } | Action::SendPathQuery { query, .. } => pending.push(query),
            Action::Connect { conn, .. } => connecting.push(conn),
            Action::Transmit { packet, .. }
            | Action::TransmitConnected { packet, .. }
            | Action::Drop { packet, .. } => back.push(packet),
            _ => {}
        };
        let pick_conn = |n: u8| {
            conns
                .get(usize::from(n) % conns.len().max(1))
                .copied()
                .unwrap_or(ConnId {
                    index: usize::from(n % 10),
                    generation: u32::from(n),
                })
        };
        let peer = HardwareAddress::new(
            a & 0x80,
            u32::from(b),
            Gid::from_parts(0xfe80 << 48, u64::from(a % 6)),
        );
        let pick = |n: u8| {
            queries
                .get(usize::from(n) % queries.len().max(1))
                .copied()
                .unwrap_or(QueryId(u64::from(n)))
        };
        match op % 16 {
            0 => iface.transmit(
                at,
                peer,
                0x0800,
                usize::from(c) * 8,
                packet as u32,
                &mut sink,
            ),
            1 => iface.transmit(
                at,
                peer,
                u16::from(b) << 8,
                usize::from(c) * 8,
                packet as u32,
                &mut sink,
            ),
            2 => {
                let group = Gid([
                    0xff,
                    0x12,
                    0x40,
                    0x1b,
                    0xff,
                    0xff,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    a % 4,
                    b,
                ]);
                iface.transmit(
                    at,
                    HardwareAddress::multicast(group),
                    0x0800,
                    usize::from(c) * 8,
                    packet as u32,
                    &mut sink,
                )
            }
            3 => iface.join_complete(
                at,
                pick(a),
                if b % 4 == 0 {
                    Err(QueryFailed)
                } else {
                    Ok(member(b))
                },
                &mut sink,
            ),
            4 => {
                let record = PathRecord {
                    dlid: u16::from(b),
                    sl: 0,
                    rate: 3,
                    mtu: IbMtu::Mtu2048,
                    packet_life_time: 18,
                    hop_limit: a % 3,
                    traffic_class: 0,
                    flow_label: 0,
                };
                iface.path_complete(
                    at,
                    pick(a),
                    if b % 5 == 0 {
                        Err(QueryFailed)
                    } else {
                        Ok(record)
                    },
                    &mut sink,
                )
            }
            5 => iface.handle_timeout(at, &mut sink),
            6 => {
                let event = match a % 7 {
                    0 => PortEvent::Active(info),
                    1 => PortEvent::Error,
                    2 => PortEvent::LidChange { lid: u16::from(b) },
                    3 => PortEvent::SmChange,
                    4 => PortEvent::ClientReregister,
                    5 => PortEvent::PkeyChange {
                        present: b % 2 == 0,
                    },
                    _ => PortEvent::GidChange {
                        gid: Gid::from_parts(0xfe80 << 48, u64::from(b)),
                    },
                };
                iface.port_event(at, event, &mut sink)
            }
            7 => {
                let groups = (0..a % 5).map(|n| {
                    Gid([
                        0xff, 0x12, 0x40, 0x1b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, n, b,
                    ])
                });
                iface.set_multicast_list(at, groups, &mut sink)
            }
            8 => iface.stop(at, &mut sink),
            9 => iface.open(at, &mut sink),
            10 => {
                let ah = ulp_ipoib::interface::AhId {
                    index: usize::from(a % 16),
                    generation: u32::from(b),
                };
                iface.ah_create_failed(at, ah, &mut sink)
            }
            11 => {
                let mode = if a % 2 == 0 {
                    Mode::Connected
                } else {
                    Mode::Datagram
                };
                let _ = iface.set_mode(mode, &mut sink);
            }
            12 => {
                let result = if b % 4 == 0 {
                    Err(ConnectFailed)
                } else {
                    Ok(CmDataRepr {
                        qpn: u32::from(a),
                        mtu: u32::from(b) * 300,
                    })
                };
                iface.connect_complete(at, pick_conn(a), result, &mut sink)
            }
            13 => iface.connection_closed(at, pick_conn(a), &mut sink),
            14 => {
                let _ = iface.receive_connected(data);
                let _ = iface.accept_connection(&CmDataRepr {
                    qpn: u32::from(a),
                    mtu: u32::from(b),
                });
                let _ = iface.set_mtu(u16::from_be_bytes([a, b]), &mut sink);
            }
            _ => {
                let completion = ReceiveCompletion {
                    src_qp: u32::from(a),
                    slid: u16::from(b),
                    grh: c % 2 == 0,
                };
                let _ = iface.receive(completion, data);
            }
        }
        queries.extend(pending);
        conns.extend(connecting);
        for packet in back {
            if let Some(count) = returned.get_mut(packet as usize) {
                *count += 1;
            }
        }
        // Invariants the tables must keep whatever the order of events.
        assert!(iface.queued() <= 16);
        assert!(iface.paths() <= 4 && iface.neighbours() <= 8 && iface.address_handles() <= 12);
        if iface.carrier() {
            assert!(iface.qkey().is_some() && iface.mtu().is_some());
        }
    }
    // Stopping lets every held packet go: each packet handed in came back once.
    let mut back = Vec::new();
    iface.stop(
        Instant::from_millis(now),
        &mut |action: Action<u32>| match action {
            Action::Transmit { packet, .. }
            | Action::TransmitConnected { packet, .. }
            | Action::Drop { packet, .. } => back.push(packet),
            _ => {}
        },
    );
    for packet in back {
        if let Some(count) = returned.get_mut(packet as usize) {
            *count += 1;
        }
    }
    assert_eq!(iface.queued(), 0);
    for (packet, step) in data.chunks_exact(4).enumerate() {
        let handed_in = matches!(step[0] % 16, 0..=2);
        let expected = u32::from(handed_in);
        assert_eq!(
            returned.get(packet).copied(),
            Some(expected),
            "packet {packet}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    parsers(data);
    sequence(data);
});
