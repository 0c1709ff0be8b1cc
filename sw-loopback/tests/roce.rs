// SPDX-License-Identifier: GPL-2.0
//! The headers tilde_loopback writes ahead of a UD payload, checked field by field as a
//! receiver (`ib_init_ah_attr_from_wc`, `rdma_read_gid_l2_fields`) parses them.

use sw_loopback::{
    is_ipv4_mapped, ones_complement_sum, port_guid, ud_network_header, NetworkHeader, Route,
    GRH_LEN, ROCE_UD_OVERHEAD,
};

fn mapped(a: [u8; 4]) -> [u8; 16] {
    let mut gid = [0u8; 16];
    gid[10] = 0xff;
    gid[11] = 0xff;
    gid[12..].copy_from_slice(&a);
    gid
}

#[test]
fn ipv4_mapped_gids_get_an_ipv4_header_in_the_last_20_bytes() {
    let route = Route {
        sgid: mapped([10, 0, 0, 1]),
        dgid: mapped([10, 0, 0, 2]),
        hop_limit: 64,
        traffic_class: 0x10,
        flow_label: 0xabcde,
    };
    let (area, kind) = ud_network_header(&route, 1000);
    assert_eq!(kind, NetworkHeader::Ipv4);
    assert_eq!(area[..20], [0u8; 20]);
    let ip = &area[20..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[1], 0x10);
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(total, 20 + ROCE_UD_OVERHEAD + 1000);
    assert_eq!(ip[8], 64);
    assert_eq!(ip[9], 17);
    assert_eq!(ip[12..16], [10, 0, 0, 1]);
    assert_eq!(ip[16..20], [10, 0, 0, 2]);
    // A header with a right checksum sums to all ones.
    assert_eq!(ones_complement_sum(ip), 0xffff);
}

#[test]
fn other_gids_get_an_ipv6_header() {
    let mut sgid = [0u8; 16];
    sgid[0] = 0xfe;
    sgid[1] = 0x80;
    sgid[15] = 1;
    let mut dgid = sgid;
    dgid[15] = 2;
    let route = Route {
        sgid,
        dgid,
        hop_limit: 255,
        traffic_class: 0xa0,
        flow_label: 0x12345,
    };
    let (area, kind) = ud_network_header(&route, 256);
    assert_eq!(kind, NetworkHeader::Ipv6);
    let first = u32::from_be_bytes([area[0], area[1], area[2], area[3]]);
    assert_eq!(first >> 28, 6);
    assert_eq!((first >> 20) & 0xff, 0xa0);
    assert_eq!(first & 0xf_ffff, 0x12345);
    assert_eq!(
        u16::from_be_bytes([area[4], area[5]]) as usize,
        ROCE_UD_OVERHEAD + 256
    );
    assert_eq!(area[6], 17);
    assert_eq!(area[7], 255);
    assert_eq!(area[8..24], sgid);
    assert_eq!(area[24..GRH_LEN], dgid);
}

#[test]
fn one_mapped_gid_is_not_enough_for_ipv4() {
    let route = Route {
        sgid: mapped([10, 0, 0, 1]),
        dgid: [0xfe; 16],
        ..Route::default()
    };
    assert!(is_ipv4_mapped(&route.sgid));
    assert!(!is_ipv4_mapped(&route.dgid));
    assert_eq!(ud_network_header(&route, 0).1, NetworkHeader::Ipv6);
}

#[test]
fn port_guid_is_the_modified_eui64_of_the_mac() {
    assert_eq!(
        port_guid([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        0x5054_00ff_fe12_3456
    );
    // The universal/local bit flips both ways.
    assert_eq!(port_guid([0x00, 0, 0, 0, 0, 0]) >> 56, 0x02);
}

#[test]
fn odd_length_sums_pad_with_a_zero_byte() {
    assert_eq!(ones_complement_sum(&[0x12]), 0x1200);
    assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
}
