//! Completion queue entries.
//!
//! Source: `include/linux/mlx4/cq.h` (`struct mlx4_cqe`, `struct mlx4_err_cqe`, the
//! `MLX4_CQE_*` masks and syndromes), `include/linux/mlx4/device.h` (receive opcodes),
//! rdma-core `providers/mlx4/cq.c` (`get_sw_cqe`, `mlx4_handle_error_cqe`).
//!
//! A CQE is 32 bytes. A CQ created with 64-byte entries keeps the same 32-byte CQE in the
//! second half of each entry, and the owner bit is read there.

use super::{Be16, Be32};

/// Size of the CQE proper; also the smaller of the two CQ strides.
pub const CQE_SIZE: usize = 32;

/// The two CQ entry strides a ConnectX-3 supports (`dev->caps.cqe_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CqeStride {
    Bytes32,
    Bytes64,
}

impl CqeStride {
    pub const fn shift(self) -> u32 {
        match self {
            Self::Bytes32 => 5,
            Self::Bytes64 => 6,
        }
    }
    /// Offset of the 32-byte CQE within an entry of this stride.
    pub const fn cqe_offset(self) -> usize {
        match self {
            Self::Bytes32 => 0,
            Self::Bytes64 => 32,
        }
    }
    /// Offset of the word holding `owner_sr_opcode` (its low byte) within an entry.
    pub const fn owner_word_offset(self) -> usize {
        self.cqe_offset() + Cqe::OWNER_WORD_OFFSET
    }
}

/// A successful completion (`struct mlx4_cqe`).
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
)]
#[repr(C)]
pub struct Cqe {
    /// The local QP number in bits 0..24.
    pub vlan_my_qpn: Be32,
    /// Immediate data (kept in wire order), or the invalidated rkey.
    pub immed_rss_invalid: Be32,
    /// Bit 31: GRH present; bits 24..31: path bits; bits 0..24: remote QPN.
    pub g_mlpath_rqpn: Be32,
    pub sl_vid: Be16,
    pub rlid: Be16,
    pub status: Be16,
    pub ipv6_ext_mask: u8,
    pub badfcs_enc: u8,
    pub byte_cnt: Be32,
    /// The 16-bit WQE counter of the completed WQE.
    pub wqe_index: Be16,
    pub checksum: Be16,
    pub reserved: [u8; 3],
    /// Bit 7 owner, bit 6 send (requester) completion, bits 0..5 opcode.
    pub owner_sr_opcode: u8,
}

/// An error completion (`struct mlx4_err_cqe`): same size and owner byte as [`Cqe`],
/// opcode [`Cqe::OPCODE_ERROR`].
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
)]
#[repr(C)]
pub struct ErrorCqe {
    pub my_qpn: Be32,
    pub reserved1: [Be32; 5],
    pub wqe_index: Be16,
    pub vendor_err: u8,
    pub syndrome: u8,
    pub reserved2: [u8; 3],
    pub owner_sr_opcode: u8,
}

impl Cqe {
    pub const QPN_MASK: u32 = 0x00ff_ffff;
    pub const OWNER: u8 = 0x80;
    pub const IS_SEND: u8 = 0x40;
    pub const OPCODE_MASK: u8 = 0x1f;
    /// Opcode of an error CQE (`MLX4_CQE_OPCODE_ERROR`).
    pub const OPCODE_ERROR: u8 = 0x1e;
    /// `g_mlpath_rqpn` bit 31: the received packet carried a GRH.
    pub const GRH: u32 = 1 << 31;
    /// The owner byte is the last byte of the 32-bit word at this offset.
    pub const OWNER_WORD_OFFSET: usize = 28;

    pub fn qpn(&self) -> u32 {
        self.vlan_my_qpn.get() & Self::QPN_MASK
    }
    pub fn is_send(&self) -> bool {
        self.owner_sr_opcode & Self::IS_SEND != 0
    }
    pub fn opcode_bits(&self) -> u8 {
        self.owner_sr_opcode & Self::OPCODE_MASK
    }
    pub fn is_error(&self) -> bool {
        self.opcode_bits() == Self::OPCODE_ERROR
    }
    pub fn remote_qpn(&self) -> u32 {
        self.g_mlpath_rqpn.get() & Self::QPN_MASK
    }
    /// The owner bit expected on an entry the hardware has written on lap `cons_index /
    /// entries`: software owns the CQE when the two agree (`get_sw_cqe`).
    pub const fn sw_owner_bit(cons_index: u32, entries: u32) -> bool {
        cons_index & entries != 0
    }
}

/// Receive completion opcodes (`MLX4_RECV_OPCODE_*`, device.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecvOpcode {
    RdmaWriteImm = 0x00,
    Send = 0x01,
    SendImm = 0x02,
    SendInval = 0x03,
}

impl RecvOpcode {
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x00 => Self::RdmaWriteImm,
            0x01 => Self::Send,
            0x02 => Self::SendImm,
            0x03 => Self::SendInval,
            _ => return None,
        })
    }
}

/// The `syndrome` of an error CQE (`MLX4_CQE_SYNDROME_*`, cq.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Syndrome {
    LocalLengthErr = 0x01,
    LocalQpOpErr = 0x02,
    LocalProtErr = 0x04,
    WrFlushErr = 0x05,
    MwBindErr = 0x06,
    BadRespErr = 0x10,
    LocalAccessErr = 0x11,
    RemoteInvalReqErr = 0x12,
    RemoteAccessErr = 0x13,
    RemoteOpErr = 0x14,
    TransportRetryExcErr = 0x15,
    RnrRetryExcErr = 0x16,
    RemoteAbortedErr = 0x22,
}

impl Syndrome {
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x01 => Self::LocalLengthErr,
            0x02 => Self::LocalQpOpErr,
            0x04 => Self::LocalProtErr,
            0x05 => Self::WrFlushErr,
            0x06 => Self::MwBindErr,
            0x10 => Self::BadRespErr,
            0x11 => Self::LocalAccessErr,
            0x12 => Self::RemoteInvalReqErr,
            0x13 => Self::RemoteAccessErr,
            0x14 => Self::RemoteOpErr,
            0x15 => Self::TransportRetryExcErr,
            0x16 => Self::RnrRetryExcErr,
            0x22 => Self::RemoteAbortedErr,
            _ => return None,
        })
    }
}
