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
    /// 32-byte entries: the CQE fills the entry.
    Bytes32,
    /// 64-byte entries: the CQE is the second half of each entry.
    Bytes64,
}

impl CqeStride {
    /// log2 of the entry size in bytes.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            Self::Bytes32 => 5,
            Self::Bytes64 => 6,
        }
    }
    /// Offset of the 32-byte CQE within an entry of this stride.
    #[inline]
    pub const fn cqe_offset(self) -> usize {
        match self {
            Self::Bytes32 => 0,
            Self::Bytes64 => 32,
        }
    }
    /// Offset of the word holding `owner_sr_opcode` (its low byte) within an entry.
    #[inline]
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
    /// Service level in the top bits; on RoCE, the VLAN ID in bits 0..12
    /// (`MLX4_CQE_VID_MASK`).
    pub sl_vid: Be16,
    /// The source LID of a received packet (InfiniBand).
    pub rlid: Be16,
    /// Receive status flags (`MLX4_CQE_STATUS_*`: packet type and checksum results).
    pub status: Be16,
    /// IPv6 extension-header mask of a received packet (Ethernet).
    pub ipv6_ext_mask: u8,
    /// Bad-FCS and encapsulation flags of a received packet (`MLX4_CQE_BAD_FCS`).
    pub badfcs_enc: u8,
    /// Bytes transferred: the length received, or read by an RDMA READ.
    pub byte_cnt: Be32,
    /// The 16-bit WQE counter of the completed WQE.
    pub wqe_index: Be16,
    /// The packet checksum the device computed (Ethernet receive offload).
    pub checksum: Be16,
    /// Reserved.
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
    /// The local QP number in bits 0..24.
    pub my_qpn: Be32,
    /// Reserved.
    pub reserved1: [Be32; 5],
    /// The 16-bit WQE counter of the failed WQE.
    pub wqe_index: Be16,
    /// The vendor-specific error syndrome (`vendor_err_syndrome`).
    pub vendor_err: u8,
    /// The error syndrome (`MLX4_CQE_SYNDROME_*`, see [`Syndrome`]).
    pub syndrome: u8,
    /// Reserved.
    pub reserved2: [u8; 3],
    /// As in [`Cqe`]: owner bit, send bit, and the opcode [`Cqe::OPCODE_ERROR`].
    pub owner_sr_opcode: u8,
}

impl Cqe {
    /// The QPN bits of `vlan_my_qpn` and `g_mlpath_rqpn` (`MLX4_CQE_QPN_MASK`).
    pub const QPN_MASK: u32 = 0x00ff_ffff;
    /// `owner_sr_opcode` bit 7: the owner bit (`MLX4_CQE_OWNER_MASK`).
    pub const OWNER: u8 = 0x80;
    /// `owner_sr_opcode` bit 6: a send (requester) completion (`MLX4_CQE_IS_SEND_MASK`).
    pub const IS_SEND: u8 = 0x40;
    /// `owner_sr_opcode` bits 0..5: the opcode (`MLX4_CQE_OPCODE_MASK`).
    pub const OPCODE_MASK: u8 = 0x1f;
    /// Opcode of an error CQE (`MLX4_CQE_OPCODE_ERROR`).
    pub const OPCODE_ERROR: u8 = 0x1e;
    /// Opcode of the CQE a resize leaves in the old buffer (`MLX4_CQE_OPCODE_RESIZE`).
    pub const OPCODE_RESIZE: u8 = 0x16;
    /// `g_mlpath_rqpn` bit 31: the received packet carried a GRH.
    pub const GRH: u32 = 1 << 31;
    /// The owner byte is the last byte of the 32-bit word at this offset.
    pub const OWNER_WORD_OFFSET: usize = 28;

    /// The local QP number.
    #[inline]
    pub fn qpn(&self) -> u32 {
        self.vlan_my_qpn.get() & Self::QPN_MASK
    }
    /// Whether this completes a send queue WQE.
    #[inline]
    pub fn is_send(&self) -> bool {
        self.owner_sr_opcode & Self::IS_SEND != 0
    }
    /// The opcode: a send opcode (`MLX4_OPCODE_*`) or a [`RecvOpcode`], as
    /// [`Cqe::is_send`] says.
    #[inline]
    pub fn opcode_bits(&self) -> u8 {
        self.owner_sr_opcode & Self::OPCODE_MASK
    }
    /// Whether this is an error CQE, to be read as an [`ErrorCqe`].
    #[inline]
    pub fn is_error(&self) -> bool {
        self.opcode_bits() == Self::OPCODE_ERROR
    }
    /// The remote QP number of a receive completion.
    #[inline]
    pub fn remote_qpn(&self) -> u32 {
        self.g_mlpath_rqpn.get() & Self::QPN_MASK
    }
    /// The owner bit expected on an entry the hardware has written on lap `cons_index /
    /// entries`: software owns the CQE when the two agree (`get_sw_cqe`).
    #[inline]
    pub const fn sw_owner_bit(cons_index: u32, entries: u32) -> bool {
        cons_index & entries != 0
    }
}

/// Receive completion opcodes (`MLX4_RECV_OPCODE_*`, device.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecvOpcode {
    /// RDMA WRITE with immediate (`MLX4_RECV_OPCODE_RDMA_WRITE_IMM`).
    RdmaWriteImm = 0x00,
    /// SEND (`MLX4_RECV_OPCODE_SEND`).
    Send = 0x01,
    /// SEND with immediate (`MLX4_RECV_OPCODE_SEND_IMM`).
    SendImm = 0x02,
    /// SEND with invalidate (`MLX4_RECV_OPCODE_SEND_INVAL`).
    SendInval = 0x03,
}

impl RecvOpcode {
    /// Decodes the opcode bits of a receive CQE; `None` for any other value.
    #[inline]
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
    /// Local length error (`MLX4_CQE_SYNDROME_LOCAL_LENGTH_ERR`).
    LocalLengthErr = 0x01,
    /// Local QP operation error (`MLX4_CQE_SYNDROME_LOCAL_QP_OP_ERR`).
    LocalQpOpErr = 0x02,
    /// Local protection error (`MLX4_CQE_SYNDROME_LOCAL_PROT_ERR`).
    LocalProtErr = 0x04,
    /// WR flushed, the QP being in error (`MLX4_CQE_SYNDROME_WR_FLUSH_ERR`).
    WrFlushErr = 0x05,
    /// Memory window bind error (`MLX4_CQE_SYNDROME_MW_BIND_ERR`).
    MwBindErr = 0x06,
    /// Bad response (`MLX4_CQE_SYNDROME_BAD_RESP_ERR`).
    BadRespErr = 0x10,
    /// Local access error (`MLX4_CQE_SYNDROME_LOCAL_ACCESS_ERR`).
    LocalAccessErr = 0x11,
    /// Remote invalid request (`MLX4_CQE_SYNDROME_REMOTE_INVAL_REQ_ERR`).
    RemoteInvalReqErr = 0x12,
    /// Remote access error (`MLX4_CQE_SYNDROME_REMOTE_ACCESS_ERR`).
    RemoteAccessErr = 0x13,
    /// Remote operation error (`MLX4_CQE_SYNDROME_REMOTE_OP_ERR`).
    RemoteOpErr = 0x14,
    /// Transport retry count exceeded (`MLX4_CQE_SYNDROME_TRANSPORT_RETRY_EXC_ERR`).
    TransportRetryExcErr = 0x15,
    /// RNR retry count exceeded (`MLX4_CQE_SYNDROME_RNR_RETRY_EXC_ERR`).
    RnrRetryExcErr = 0x16,
    /// Remote aborted (`MLX4_CQE_SYNDROME_REMOTE_ABORTED_ERR`).
    RemoteAbortedErr = 0x22,
}

impl Syndrome {
    /// Decodes an error CQE's `syndrome`; `None` for any other value.
    #[inline]
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
