// SPDX-License-Identifier: GPL-2.0
//! `tilde_loopback`'s wire, as far as there is one: the network header a RoCEv2 UD
//! receive starts with, and the port GUID a RoCE port makes of its MAC.
//!
//! The device itself (`kmod/loopback.rs`) is a kernel module on `rdma_core::driver`; what
//! it writes into a consumer's buffer is built here, where the host tests check it. The
//! crate is compiled for the host by cargo and for the kernel by the kbuild glue (`Kbuild`
//! at the repository root) with `--cfg tilde_kernel`, from this same source.
// kbuild passes `-Zcrate-attr=no_std` itself.
#![cfg_attr(not(tilde_kernel), no_std)]

/// The GRH area ahead of a UD payload in a receive buffer.
pub const GRH_LEN: usize = 40;
/// RoCEv2 headers after the IP header, counted in the IP length fields: UDP, BTH, DETH
/// and the ICRC.
pub const ROCE_UD_OVERHEAD: usize = 8 + 12 + 8 + 4;
/// The UDP protocol number, RoCEv2's IP payload.
const IPPROTO_UDP: u8 = 17;

/// The global route a UD send carries: its AH's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Route {
    /// The source GID.
    pub sgid: [u8; 16],
    /// The destination GID.
    pub dgid: [u8; 16],
    /// The hop limit (IPv4: the TTL).
    pub hop_limit: u8,
    /// The traffic class (IPv4: the TOS).
    pub traffic_class: u8,
    /// The flow label (IPv6 only).
    pub flow_label: u32,
}

/// The network header in a GRH area.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NetworkHeader {
    /// 20 bytes of zeros, then an IPv4 header (both GIDs IPv4-mapped).
    Ipv4,
    /// An IPv6 header.
    Ipv6,
}

/// Whether a GID is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
pub fn is_ipv4_mapped(gid: &[u8; 16]) -> bool {
    gid[..10].iter().all(|&b| b == 0) && gid[10] == 0xff && gid[11] == 0xff
}

/// The 40-byte GRH area a RoCEv2 UD receive of `payload_len` bytes sent on `route`
/// starts with, as rxe and the RoCE HCAs write it, and which header it holds.
pub fn ud_network_header(route: &Route, payload_len: usize) -> ([u8; GRH_LEN], NetworkHeader) {
    let mut area = [0u8; GRH_LEN];
    if is_ipv4_mapped(&route.sgid) && is_ipv4_mapped(&route.dgid) {
        let (_, ip) = area.split_at_mut(GRH_LEN - 20);
        let total = u16::try_from(20 + ROCE_UD_OVERHEAD + payload_len).unwrap_or(u16::MAX);
        ip[0] = 0x45; // version 4, 5 words
        ip[1] = route.traffic_class;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = route.hop_limit;
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&route.sgid[12..]);
        ip[16..20].copy_from_slice(&route.dgid[12..]);
        let checksum = !ones_complement_sum(ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        return (area, NetworkHeader::Ipv4);
    }
    let first =
        (6u32 << 28) | (u32::from(route.traffic_class) << 20) | (route.flow_label & 0xf_ffff);
    area[..4].copy_from_slice(&first.to_be_bytes());
    let payload = u16::try_from(ROCE_UD_OVERHEAD + payload_len).unwrap_or(u16::MAX);
    area[4..6].copy_from_slice(&payload.to_be_bytes());
    area[6] = IPPROTO_UDP;
    area[7] = route.hop_limit;
    area[8..24].copy_from_slice(&route.sgid);
    area[24..40].copy_from_slice(&route.dgid);
    (area, NetworkHeader::Ipv6)
}

/// The internet checksum's folded one's-complement sum of 16-bit words.
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| match *w {
            [hi, lo] => u32::from(u16::from_be_bytes([hi, lo])),
            [hi] => u32::from(hi) << 8,
            _ => 0,
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The port GUID a RoCE port makes of its MAC: the modified EUI-64.
pub fn port_guid(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}
