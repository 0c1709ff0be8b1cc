//! The packet headers of a UD SEND as the special QPs' MLX transport carries them: the
//! driver writes LRH, optional GRH, BTH and DETH inline in the WQE (IBA 7.7, 8.3, 9.2,
//! 9.3.3; `include/rdma/ib_pack.h`, packed as `ib_ud_header_pack` packs them), after the
//! MLX segment that replaces the control segment (`struct mlx4_wqe_mlx_seg`).

use zerocopy::IntoBytes;

use super::{Be16, Be32};

/// The MLX segment: the control segment of a special QP's WQE (`struct
/// mlx4_wqe_mlx_seg`), the same 16 bytes with the packet's routing in place of the
/// control segment's SRC remote buffer and immediate data.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
)]
#[repr(C)]
pub struct MlxSeg {
    /// Owner bit 31 and the opcode (SEND), as the control segment's.
    pub owner_opcode: Be32,
    /// The scheduling priority (RoCE), reserved.
    pub sched_prio: Be16,
    /// Reserved.
    pub rsvd: u8,
    /// The WQE size in 16-byte units.
    pub size: u8,
    /// [`MlxSeg::VL15`], [`MlxSeg::SLR`], the SL in bits 8..12, the completion bits.
    pub flags: Be32,
    /// The destination LID.
    pub rlid: Be16,
    /// Reserved.
    pub rsvd2: [u8; 2],
}

impl MlxSeg {
    /// `flags`: send on VL15 (QP0's SMPs, `MLX4_WQE_MLX_VL15`).
    pub const VL15: u32 = 1 << 17;
    /// `flags`: the SLID is the header's, not the port's LID with the header's path bits
    /// (the permissive LID of directed-route SMPs, `MLX4_WQE_MLX_SLR`).
    pub const SLR: u32 = 1 << 16;
    /// `flags`: the SL's shift.
    pub const SL_SHIFT: u32 = 8;
}

/// The local route header (IBA 7.7), 8 bytes.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
)]
#[repr(C)]
pub struct Lrh {
    /// The VL in the high nibble, the link version (0) in the low.
    pub vl_lver: u8,
    /// The SL in the high nibble, the next header ([`Lrh::LNH_LOCAL`] or
    /// [`Lrh::LNH_GLOBAL`]) in the low two bits.
    pub sl_lnh: u8,
    /// The destination LID.
    pub dlid: Be16,
    /// The packet's length in 4-byte words, LRH to ICRC (11 bits).
    pub packet_length: Be16,
    /// The source LID.
    pub slid: Be16,
}

impl Lrh {
    /// Next header: a BTH (`IB_LNH_IBA_LOCAL`).
    pub const LNH_LOCAL: u8 = 2;
    /// Next header: a GRH (`IB_LNH_IBA_GLOBAL`).
    pub const LNH_GLOBAL: u8 = 3;
}

/// The global route header (IBA 8.3), 40 bytes.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
)]
#[repr(C)]
pub struct Grh {
    /// IP version 6 in bits 28..32, the traffic class in 20..28, the flow label below.
    pub version_tclass_flow: Be32,
    /// The bytes after the GRH, to the ICRC included.
    pub payload_length: Be16,
    /// The next header: a BTH (`IB_GRH_NEXT_HDR`, 0x1b).
    pub next_header: u8,
    /// The hop limit.
    pub hop_limit: u8,
    /// The source GID.
    pub sgid: [u8; 16],
    /// The destination GID.
    pub dgid: [u8; 16],
}

/// The base transport header (IBA 9.2), 12 bytes.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
)]
#[repr(C)]
pub struct Bth {
    /// The opcode ([`Bth::UD_SEND_ONLY`]).
    pub opcode: u8,
    /// Solicited event (bit 7), migration (6), pad count (4..6), transport version.
    pub se_m_pad_tver: u8,
    /// The P_Key.
    pub pkey: Be16,
    /// Reserved.
    pub rsvd: u8,
    /// The destination QP, 24 bits big-endian.
    pub dest_qp: [u8; 3],
    /// Acknowledge request (bit 7), reserved.
    pub ack: u8,
    /// The packet sequence number, 24 bits big-endian.
    pub psn: [u8; 3],
}

impl Bth {
    /// UD SEND Only (`IB_OPCODE_UD_SEND_ONLY`).
    pub const UD_SEND_ONLY: u8 = 0x64;
    /// `se_m_pad_tver`: solicited event.
    pub const SOLICITED: u8 = 1 << 7;
}

/// The datagram extended transport header (IBA 9.3.3), 8 bytes.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
)]
#[repr(C)]
pub struct Deth {
    /// The Q_Key.
    pub qkey: Be32,
    /// Reserved.
    pub rsvd: u8,
    /// The source QP, 24 bits big-endian.
    pub src_qp: [u8; 3],
}

/// The largest header an MLX WQE carries: LRH, GRH, BTH, DETH.
pub const UD_HEADER_MAX: usize =
    size_of::<Lrh>() + size_of::<Grh>() + size_of::<Bth>() + size_of::<Deth>();

/// The ICRC's 4 bytes, which the device computes (an inline segment reserves them).
pub const ICRC_BYTES: usize = 4;

/// The permissive LID (directed-route SMPs, `IB_LID_PERMISSIVE`).
pub const PERMISSIVE_LID: u16 = 0xffff;

/// The global route of a packet, for its GRH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalRoute {
    /// The traffic class.
    pub traffic_class: u8,
    /// The flow label (20 bits).
    pub flow_label: u32,
    /// The hop limit.
    pub hop_limit: u8,
    /// The source GID.
    pub sgid: [u8; 16],
    /// The destination GID.
    pub dgid: [u8; 16],
}

/// What a UD SEND's headers say (`struct ib_ud_header` as `build_mlx_header` fills it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdHeader {
    /// The VL (15 for QP0).
    pub vl: u8,
    /// The SL.
    pub sl: u8,
    /// The destination LID.
    pub dlid: u16,
    /// The source LID: the path bits (the device adds the port's LID), or the permissive
    /// LID with [`MlxSeg::SLR`].
    pub slid: u16,
    /// The GRH, if the packet has one.
    pub grh: Option<GlobalRoute>,
    /// Whether the responder raises a solicited event.
    pub solicited: bool,
    /// The P_Key.
    pub pkey: u16,
    /// The destination QP.
    pub dest_qp: u32,
    /// The PSN.
    pub psn: u32,
    /// The Q_Key.
    pub qkey: u32,
    /// The source QP (0 or 1).
    pub src_qp: u32,
    /// The payload's length in bytes (the MAD's).
    pub payload_len: u32,
}

/// The low 24 bits of `value`, big-endian.
fn be24(value: u32) -> [u8; 3] {
    let [_, a, b, c] = value.to_be_bytes();
    [a, b, c]
}

impl UdHeader {
    /// Packs the headers into `out` as `ib_ud_header_pack` does; the bytes written.
    pub fn pack(&self, out: &mut [u8; UD_HEADER_MAX]) -> usize {
        let pad = (4 - (self.payload_len & 3)) & 3;
        let grh_bytes = if self.grh.is_some() {
            size_of::<Grh>()
        } else {
            0
        };
        let transport = size_of::<Bth>() + size_of::<Deth>();
        // LRH to ICRC, in words; at most 4 KiB payloads, so 11 bits hold it.
        let words = (size_of::<Lrh>() + grh_bytes + transport) as u32
            + self.payload_len.saturating_add(pad)
            + ICRC_BYTES as u32;
        let lrh = Lrh {
            vl_lver: self.vl << 4,
            sl_lnh: (self.sl << 4)
                | if self.grh.is_some() {
                    Lrh::LNH_GLOBAL
                } else {
                    Lrh::LNH_LOCAL
                },
            dlid: Be16::new(self.dlid),
            packet_length: Be16::new(((words / 4) & 0x7ff) as u16),
            slid: Be16::new(self.slid),
        };
        let bth = Bth {
            opcode: Bth::UD_SEND_ONLY,
            se_m_pad_tver: if self.solicited { Bth::SOLICITED } else { 0 } | ((pad as u8) << 4),
            pkey: Be16::new(self.pkey),
            rsvd: 0,
            dest_qp: be24(self.dest_qp),
            ack: 0,
            psn: be24(self.psn),
        };
        let deth = Deth {
            qkey: Be32::new(self.qkey),
            rsvd: 0,
            src_qp: be24(self.src_qp),
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(slot) = out.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
            at += bytes.len();
        };
        put(lrh.as_bytes());
        if let Some(route) = &self.grh {
            let payload_length =
                (transport as u32 + self.payload_len + pad + ICRC_BYTES as u32) as u16;
            let grh = Grh {
                version_tclass_flow: Be32::new(
                    (6 << 28)
                        | (u32::from(route.traffic_class) << 20)
                        | (route.flow_label & 0x000f_ffff),
                ),
                payload_length: Be16::new(payload_length),
                next_header: 0x1b,
                hop_limit: route.hop_limit,
                sgid: route.sgid,
                dgid: route.dgid,
            };
            put(grh.as_bytes());
        }
        put(bth.as_bytes());
        put(deth.as_bytes());
        at
    }
}
