//! Byte-exact encodings of IPoIB's formats against vectors written out by hand from
//! RFC 4391 and from what Linux's ib_ipoib and its helpers (`ip_ib_mc_map`,
//! `ipv6_ib_mc_map`, `ndisc_fill_addr_option`) put on the wire, not from the code under
//! test; and the parsers' refusals of malformed input, by name.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use ulp_ipoib::wire::arp::{ArpOperation, ArpPacket, ArpRepr, IPOIB_ARP_LEN};
use ulp_ipoib::wire::encap::{Frame, FrameRepr, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use ulp_ipoib::wire::grh::{Grh, GrhRepr, NEXT_HEADER_IBA};
use ulp_ipoib::wire::mgid::{with_pkey, IpoibMgid, MgidFamily, Scope};
use ulp_ipoib::wire::ndisc::{NdOption, NdOptionKind, NdOptionRepr};
use ulp_ipoib::wire::{Gid, HardwareAddress, WireError};

/// Bytes from hex, spaces and colons ignored.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn gid(text: &str) -> Gid {
    Gid(hex(text).try_into().unwrap())
}

/// Port GUID 0002:c903:000a:0b0c with the link-local prefix: a ConnectX-3's GID 0.
const PORT_GID: &str = "fe80:0000:0000:0000:0002:c903:000a:0b0c";

#[test]
fn broadcast_mgid_of_the_default_partition() {
    // RFC 4391 §4 with P_Key 0xffff and link-local scope, as `ip maddr` shows it.
    let mgid = IpoibMgid::broadcast(0xffff, Scope::LINK_LOCAL).to_gid();
    assert_eq!(mgid, gid("ff12:401b:ffff:0000:0000:0000:ffff:ffff"));
    let parsed = IpoibMgid::parse(&mgid).unwrap();
    assert!(parsed.is_broadcast());
    assert_eq!(parsed.pkey, 0xffff);
    assert_eq!(parsed.scope, Scope::LINK_LOCAL);
}

#[test]
fn broadcast_hardware_address_is_what_ip_link_shows() {
    // `ip link` on ib0: brd 00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff
    let brd = HardwareAddress::multicast(IpoibMgid::broadcast(0xffff, Scope::LINK_LOCAL).to_gid());
    assert_eq!(
        brd.as_bytes().as_slice(),
        hex("00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff")
    );
    assert_eq!(brd.qpn(), 0xff_ffff);
    assert_eq!(brd.flags(), 0);
    assert!(brd.is_multicast());
}

#[test]
fn broadcast_mgid_carries_the_partition_and_scope() {
    let mgid = IpoibMgid::broadcast(0x8001, Scope::SITE_LOCAL).to_gid();
    assert_eq!(mgid, gid("ff15:401b:8001:0000:0000:0000:ffff:ffff"));
    let global = IpoibMgid::broadcast(0xffff, Scope::GLOBAL).to_gid();
    assert_eq!(global, gid("ff1e:401b:ffff:0000:0000:0000:ffff:ffff"));
}

#[test]
fn ipv4_groups_map_their_low_28_bits() {
    // all-hosts 224.0.0.1
    let all_hosts = IpoibMgid::ipv4(Ipv4Addr::new(224, 0, 0, 1), 0xffff, Scope::LINK_LOCAL);
    assert_eq!(
        all_hosts.to_gid(),
        gid("ff12:401b:ffff:0000:0000:0000:0000:0001")
    );
    // SSDP 239.255.255.250: 0xeffffffa loses its class D prefix 0xe.
    let ssdp = IpoibMgid::ipv4(Ipv4Addr::new(239, 255, 255, 250), 0xffff, Scope::LINK_LOCAL);
    assert_eq!(
        ssdp.to_gid(),
        gid("ff12:401b:ffff:0000:0000:0000:0fff:fffa")
    );
    assert_eq!(ssdp.ipv4_low_bits(), Some(0x0fff_fffa));
    assert!(!ssdp.is_broadcast());
    // 224.1.2.3 and 240.1.2.3 would differ only in the dropped nibble.
    assert_eq!(
        IpoibMgid::ipv4(Ipv4Addr::new(225, 1, 2, 3), 0xffff, Scope::LINK_LOCAL).to_gid(),
        gid("ff12:401b:ffff:0000:0000:0000:0101:0203")
    );
}

#[test]
fn ipv6_groups_map_their_low_80_bits() {
    let all_nodes = IpoibMgid::ipv6("ff02::1".parse().unwrap(), 0xffff, Scope::LINK_LOCAL);
    assert_eq!(
        all_nodes.to_gid(),
        gid("ff12:601b:ffff:0000:0000:0000:0000:0001")
    );
    // The solicited-node group of fe80::2:c903:a:b0c.
    let solicited: Ipv6Addr = "ff02::1:ff0a:b0c".parse().unwrap();
    let mgid = IpoibMgid::ipv6(solicited, 0xffff, Scope::LINK_LOCAL);
    assert_eq!(
        mgid.to_gid(),
        gid("ff12:601b:ffff:0000:0000:0001:ff0a:0b0c")
    );
    assert_eq!(
        IpoibMgid::parse(&mgid.to_gid()).unwrap().family,
        MgidFamily::Ipv6
    );
    assert_eq!(mgid.ipv4_low_bits(), None);
}

#[test]
fn mgid_parser_refuses_what_is_not_an_ipoib_group() {
    assert_eq!(
        IpoibMgid::parse(&gid(PORT_GID)),
        Err(WireError::NotMulticast)
    );
    assert_eq!(
        IpoibMgid::parse(&gid("ff02:401b:ffff:0000:0000:0000:ffff:ffff")),
        Err(WireError::NotTransient(0))
    );
    assert_eq!(
        IpoibMgid::parse(&gid("ff12:a01b:ffff:0000:0000:0000:0000:0001")),
        Err(WireError::NotIpoibSignature(0xa01b))
    );
}

#[test]
fn pkey_of_a_multicast_destination_is_rewritten() {
    let stack_built = gid("ff12:401b:0000:0000:0000:0000:ffff:ffff");
    assert_eq!(
        with_pkey(stack_built, 0xffff),
        gid("ff12:401b:ffff:0000:0000:0000:ffff:ffff")
    );
}

#[test]
fn unicast_hardware_address_fields() {
    // `ip link`: link/infiniband 80:00:00:48:fe:80:...:0b:0c with connected mode on.
    let bytes = hex("80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:0b:0c");
    let addr = HardwareAddress::from_bytes(&bytes).unwrap();
    assert!(addr.connected_mode());
    assert_eq!(addr.qpn(), 0x48);
    assert_eq!(addr.gid(), gid(PORT_GID));
    assert_eq!(
        HardwareAddress::new(HardwareAddress::FLAG_CONNECTED_MODE, 0x48, gid(PORT_GID)),
        addr
    );
    assert_eq!(addr.with_flags(0).as_bytes()[0], 0);
    assert_eq!(addr.with_flags(0).qpn(), 0x48);
}

#[test]
fn encapsulation_header_bytes() {
    let mut buf = [0xaau8; 6];
    FrameRepr {
        ethertype: ETHERTYPE_IPV6,
    }
    .emit(&mut Frame::new_unchecked(&mut buf[..]))
    .unwrap();
    assert_eq!(buf, [0x86, 0xdd, 0x00, 0x00, 0xaa, 0xaa]);
    // Reserved bits set by a peer are ignored (RFC 4391 §6).
    let frame = Frame::new_checked(&[0x08, 0x00, 0x12, 0x34, 0x45][..]).unwrap();
    assert_eq!(
        FrameRepr::parse(&frame),
        Ok(FrameRepr {
            ethertype: ETHERTYPE_IPV4
        })
    );
    assert_eq!(frame.reserved(), 0x1234);
    assert_eq!(frame.payload(), &[0x45]);
    assert_eq!(
        Frame::new_checked(&[0x08, 0x00, 0x00][..]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        FrameRepr { ethertype: 1 }.emit(&mut Frame::new_unchecked(&mut [0u8; 3][..])),
        Err(WireError::BufferTooSmall)
    );
}

/// The GRH of a broadcast datagram from PORT_GID: version 6, traffic class 0x12, flow
/// label 0x34567, payload 0x5c, next header 0x1b, hop limit 0x40.
const GRH_BYTES: &str = "6123 4567 005c 1b40
    fe80 0000 0000 0000 0002 c903 000a 0b0c
    ff12 401b ffff 0000 0000 0000 ffff ffff";

#[test]
fn grh_fields_and_emit() {
    let bytes = hex(GRH_BYTES);
    let grh = Grh::new_checked(&bytes[..]).unwrap();
    let repr = GrhRepr::parse(&grh).unwrap();
    assert_eq!(grh.version(), 6);
    assert_eq!(repr.traffic_class, 0x12);
    assert_eq!(repr.flow_label, 0x34567);
    assert_eq!(repr.payload_len, 0x5c);
    assert_eq!(repr.next_header, NEXT_HEADER_IBA);
    assert_eq!(repr.hop_limit, 0x40);
    assert_eq!(repr.sgid, gid(PORT_GID));
    assert_eq!(repr.dgid, gid("ff12:401b:ffff:0000:0000:0000:ffff:ffff"));
    let mut out = [0u8; 40];
    repr.emit(&mut Grh::new_unchecked(&mut out[..])).unwrap();
    assert_eq!(out.as_slice(), bytes);
}

#[test]
fn grh_refusals() {
    let mut bytes = hex(GRH_BYTES);
    assert_eq!(Grh::new_checked(&bytes[..39]), Err(WireError::Truncated));
    bytes[0] = 0x40;
    let grh = Grh::new_checked(&bytes[..]).unwrap();
    assert_eq!(GrhRepr::parse(&grh), Err(WireError::GrhVersion(4)));
}

/// An ARP request from 10.0.0.1 (PORT_GID, QPN 0x48, connected mode) for 10.0.0.2.
const ARP_REQUEST: &str = "0020 0800 14 04 0001
    80000048 fe800000000000000002c903000a0b0c  0a000001
    00000000 00000000000000000000000000000000  0a000002";

fn arp_request() -> ArpRepr {
    ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: HardwareAddress::new(0x80, 0x48, gid(PORT_GID)),
        source_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
        target_hardware_addr: HardwareAddress([0; 20]),
        target_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
    }
}

#[test]
fn arp_request_bytes() {
    let mut buf = [0u8; IPOIB_ARP_LEN];
    arp_request()
        .emit(&mut ArpPacket::new_unchecked(&mut buf[..]))
        .unwrap();
    assert_eq!(buf.as_slice(), hex(ARP_REQUEST));
    let packet = ArpPacket::new_checked(&buf[..]).unwrap();
    assert_eq!(ArpRepr::parse(&packet), Ok(arp_request()));
    assert_eq!(packet.hardware_type(), 32);
    assert_eq!(packet.packet_len(), 56);
}

#[test]
fn arp_refusals_name_the_field() {
    let good = hex(ARP_REQUEST);
    let refused = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        ArpRepr::parse(&ArpPacket::new_unchecked(&bytes[..]))
    };
    assert_eq!(refused(0, &[0, 1]), Err(WireError::ArpHardwareType(1)));
    assert_eq!(refused(4, &[6]), Err(WireError::ArpHardwareLength(6)));
    assert_eq!(
        refused(2, &[0x86, 0xdd]),
        Err(WireError::ArpProtocolType(0x86dd))
    );
    assert_eq!(refused(5, &[16]), Err(WireError::ArpProtocolLength(16)));
    assert_eq!(
        ArpRepr::parse(&ArpPacket::new_unchecked(&good[..55])),
        Err(WireError::Truncated)
    );
    assert_eq!(
        ArpPacket::new_checked(&good[..55]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        ArpPacket::new_checked(&good[..7]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        arp_request().emit(&mut ArpPacket::new_unchecked(&mut [0u8; 55][..])),
        Err(WireError::BufferTooSmall)
    );
}

#[test]
fn unknown_arp_operations_are_carried() {
    let mut bytes = hex(ARP_REQUEST);
    bytes[7] = 8; // InARP request
    let repr = ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()).unwrap();
    assert_eq!(repr.operation, ArpOperation::Unknown(8));
    assert_eq!(u16::from(ArpOperation::Reply), 2);
}

/// A source link-layer address option: type 1, length 3, two reserved octets, the
/// 20-byte address (what Linux's ndisc writes for ARPHRD_INFINIBAND).
const ND_SOURCE: &str = "01 03 0000 00000048 fe800000000000000002c903000a0b0c";

#[test]
fn nd_option_bytes() {
    let repr = NdOptionRepr {
        kind: NdOptionKind::Source,
        address: HardwareAddress::new(0, 0x48, gid(PORT_GID)),
    };
    let mut buf = [0xffu8; 24];
    repr.emit(&mut NdOption::new_unchecked(&mut buf[..]))
        .unwrap();
    assert_eq!(buf.as_slice(), hex(ND_SOURCE));
    assert_eq!(
        NdOptionRepr::parse(&NdOption::new_checked(&buf[..]).unwrap()),
        Ok(repr)
    );
    let mut target = hex(ND_SOURCE);
    target[0] = 2;
    target[2] = 0x5a; // reserved: ignored on receive
    let parsed = NdOptionRepr::parse(&NdOption::new_checked(&target[..]).unwrap()).unwrap();
    assert_eq!(parsed.kind, NdOptionKind::Target);
    assert_eq!(parsed.address.qpn(), 0x48);
}

#[test]
fn nd_option_refusals() {
    let good = hex(ND_SOURCE);
    let mut wrong_length = good.clone();
    wrong_length[1] = 1; // an Ethernet-sized option
    assert_eq!(
        NdOptionRepr::parse(&NdOption::new_unchecked(&wrong_length[..])),
        Err(WireError::NdOptionLength(1))
    );
    let mut wrong_type = good.clone();
    wrong_type[0] = 3; // prefix information
    assert_eq!(
        NdOptionRepr::parse(&NdOption::new_unchecked(&wrong_type[..])),
        Err(WireError::NdOptionType(3))
    );
    assert_eq!(
        NdOptionRepr::parse(&NdOption::new_unchecked(&good[..23])),
        Err(WireError::Truncated)
    );
    assert_eq!(
        NdOption::new_checked(&good[..23]),
        Err(WireError::Truncated)
    );
}

fn any_gid() -> impl Strategy<Value = Gid> {
    any::<[u8; 16]>().prop_map(Gid)
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = Frame::new_checked(&bytes[..]).map(|f| FrameRepr::parse(&f));
        let _ = Grh::new_checked(&bytes[..]).map(|g| GrhRepr::parse(&g));
        let _ = ArpRepr::parse(&ArpPacket::new_unchecked(&bytes[..]));
        let unchecked = ArpPacket::new_unchecked(&bytes[..]);
        let _ = (unchecked.source_hardware_addr(), unchecked.target_protocol_addr());
        let _ = NdOptionRepr::parse(&NdOption::new_unchecked(&bytes[..]));
        let _ = HardwareAddress::from_bytes(&bytes);
        if bytes.len() >= 16 {
            let _ = IpoibMgid::parse(&Gid(bytes[..16].try_into().unwrap()));
        }
    }

    #[test]
    fn mgids_round_trip(pkey in any::<u16>(), scope in 0u8..16, group in any::<[u8; 10]>(), v6 in any::<bool>()) {
        let mgid = IpoibMgid {
            scope: Scope::new(scope).unwrap(),
            family: if v6 { MgidFamily::Ipv6 } else { MgidFamily::Ipv4 },
            pkey,
            group,
        };
        prop_assert_eq!(IpoibMgid::parse(&mgid.to_gid()), Ok(mgid));
    }

    #[test]
    fn grh_round_trips(tc in any::<u8>(), flow in 0u32..0x10_0000, len in any::<u16>(), next in any::<u8>(), hops in any::<u8>(), sgid in any_gid(), dgid in any_gid()) {
        let repr = GrhRepr { traffic_class: tc, flow_label: flow, payload_len: len, next_header: next, hop_limit: hops, sgid, dgid };
        let mut buf = [0u8; 40];
        repr.emit(&mut Grh::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(GrhRepr::parse(&Grh::new_checked(&buf[..]).unwrap()), Ok(repr));
    }

    #[test]
    fn arp_round_trips(op in any::<u16>(), sha in any::<[u8; 20]>(), spa in any::<u32>(), tha in any::<[u8; 20]>(), tpa in any::<u32>()) {
        let repr = ArpRepr {
            operation: ArpOperation::from(op),
            source_hardware_addr: HardwareAddress(sha),
            source_protocol_addr: Ipv4Addr::from(spa),
            target_hardware_addr: HardwareAddress(tha),
            target_protocol_addr: Ipv4Addr::from(tpa),
        };
        let mut buf = [0u8; IPOIB_ARP_LEN];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()), Ok(repr));
    }
}
