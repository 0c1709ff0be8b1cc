//! Send and receive work queue entries: the segments a WQE is built from.
//!
//! Source: `include/linux/mlx4/qp.h` (segment structs and flag enums),
//! `include/linux/mlx4/device.h` (`MLX4_OPCODE_*`, `struct mlx4_av`), and rdma-core
//! `providers/mlx4/wqe.h` and `qp.c`, which build the same segments from user space.

use super::{Be16, Be32, Be64};

/// A send WQE is built from 64-byte basic blocks (WQEBBs); the hardware prefetches and
/// the driver stamps in these units (`MLX4_IB_SQ_MIN_WQE_SHIFT` = 6).
pub const WQEBB_SIZE: usize = 64;
/// The `fence_size` and BlueFlame lengths count 16-byte units (`ds`).
pub const DS_SIZE: usize = 16;
/// The hardware reads ahead of the last posted WQE by up to this many bytes, so the
/// driver keeps that much of the ring stamped invalid (`MLX4_IB_MAX_HEADROOM`).
pub const SQ_MAX_HEADROOM: usize = 2048;
/// The first word of every WQEBB but the first of a free WQE (`stamp_send_wqe`): no valid
/// `byte_count` or segment starts with it, so a prefetch of a stale block is harmless.
pub const STAMP_WORD: u32 = 0xffff_ffff;

/// Send opcodes, the low five bits of `owner_opcode` (`MLX4_OPCODE_*`, device.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SendOpcode {
    /// No operation (`MLX4_OPCODE_NOP`).
    Nop = 0x00,
    /// SEND with invalidate (`MLX4_OPCODE_SEND_INVAL`).
    SendInval = 0x01,
    /// RDMA WRITE (`MLX4_OPCODE_RDMA_WRITE`).
    RdmaWrite = 0x08,
    /// RDMA WRITE with immediate (`MLX4_OPCODE_RDMA_WRITE_IMM`).
    RdmaWriteImm = 0x09,
    /// SEND (`MLX4_OPCODE_SEND`).
    Send = 0x0a,
    /// SEND with immediate (`MLX4_OPCODE_SEND_IMM`).
    SendImm = 0x0b,
    /// Large send offload (`MLX4_OPCODE_LSO`).
    Lso = 0x0e,
    /// RDMA READ (`MLX4_OPCODE_RDMA_READ`).
    RdmaRead = 0x10,
    /// Atomic compare-and-swap (`MLX4_OPCODE_ATOMIC_CS`).
    AtomicCmpSwap = 0x11,
    /// Atomic fetch-and-add (`MLX4_OPCODE_ATOMIC_FA`).
    AtomicFetchAdd = 0x12,
    /// Masked atomic compare-and-swap (`MLX4_OPCODE_MASKED_ATOMIC_CS`).
    MaskedAtomicCmpSwap = 0x14,
    /// Masked atomic fetch-and-add (`MLX4_OPCODE_MASKED_ATOMIC_FA`).
    MaskedAtomicFetchAdd = 0x15,
    /// Memory window bind (`MLX4_OPCODE_BIND_MW`).
    BindMw = 0x18,
    /// Fast registration (`IB_WR_REG_MR` in the kernel driver).
    FastReg = 0x19,
    /// Local invalidate (`MLX4_OPCODE_LOCAL_INVAL`).
    LocalInval = 0x1b,
    /// Configuration command (`MLX4_OPCODE_CONFIG_CMD`).
    ConfigCmd = 0x1f,
}

impl SendOpcode {
    /// Decodes the opcode bits of `owner_opcode` or of a send CQE.
    #[inline]
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x00 => Self::Nop,
            0x01 => Self::SendInval,
            0x08 => Self::RdmaWrite,
            0x09 => Self::RdmaWriteImm,
            0x0a => Self::Send,
            0x0b => Self::SendImm,
            0x0e => Self::Lso,
            0x10 => Self::RdmaRead,
            0x11 => Self::AtomicCmpSwap,
            0x12 => Self::AtomicFetchAdd,
            0x14 => Self::MaskedAtomicCmpSwap,
            0x15 => Self::MaskedAtomicFetchAdd,
            0x18 => Self::BindMw,
            0x19 => Self::FastReg,
            0x1b => Self::LocalInval,
            0x1f => Self::ConfigCmd,
            _ => return None,
        })
    }
}

/// The control segment that starts every send WQE (`struct mlx4_wqe_ctrl_seg`).
///
/// `owner_opcode` is written last: its top bit hands the WQE to the hardware. The second
/// word is either `vlan_tag`/`ins_vlan`/`fence_size` or, for BlueFlame, `bf_qpn`.
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
pub struct CtrlSeg {
    /// Owner bit 31, the BlueFlame WQE counter in bits 8..24, the opcode in bits 0..5.
    pub owner_opcode: Be32,
    /// The VLAN tag to insert; in a BlueFlame WQE, bits 8..24 of the QPN (`bf_qpn`).
    pub vlan_tag: Be16,
    /// VLAN insertion flags; in a BlueFlame WQE, bits 0..8 of the QPN (`bf_qpn`).
    pub ins_vlan: u8,
    /// The fence bit ([`CtrlSeg::FENCE`]) and the WQE size in 16-byte units.
    pub fence_size: u8,
    /// Flags in the low byte (completion, solicited event, strong ordering); the high 24
    /// bits are the SRC remote buffer.
    pub srcrb_flags: Be32,
    /// Immediate data, or the rkey to invalidate for SEND_WITH_INV.
    pub imm: Be32,
}

impl CtrlSeg {
    /// `owner_opcode` bit 31: set on odd laps of the ring (`ind & wqe_cnt`).
    pub const OWNER: u32 = 1 << 31;
    /// `owner_opcode` bits 0..5: the [`SendOpcode`].
    pub const OPCODE_MASK: u32 = 0x1f;
    /// `owner_opcode` bits 8..24 carry the WQE counter when the WQE goes by BlueFlame.
    pub const BF_COUNTER_SHIFT: u32 = 8;
    /// `fence_size` bit 6: wait for prior RDMA READs and atomics (`MLX4_WQE_CTRL_FENCE`).
    pub const FENCE: u8 = 1 << 6;
    /// `fence_size` bits 0..6: the WQE size in 16-byte units.
    pub const SIZE_MASK: u8 = 0x3f;
    /// `srcrb_flags`: generate a CQE (`MLX4_WQE_CTRL_CQ_UPDATE`).
    pub const CQ_UPDATE: u32 = 3 << 2;
    /// `srcrb_flags`: solicited event at the responder (`MLX4_WQE_CTRL_SOLICITED`).
    pub const SOLICITED: u32 = 1 << 1;
    /// `srcrb_flags`: strong ordering, required by LOCAL_INV and BIND_MW.
    pub const STRONG_ORDER: u32 = 1 << 7;

    /// The `owner_opcode` word for `opcode` posted at producer counter `index` of a ring
    /// of `wqe_cnt` entries.
    #[inline]
    pub const fn owner_opcode_for(opcode: SendOpcode, index: u32, wqe_cnt: u32) -> u32 {
        let owner = if index & wqe_cnt != 0 { Self::OWNER } else { 0 };
        owner | opcode as u32
    }

    /// Turns the control segment into a BlueFlame one (rdma-core `mlx4_post_send`): the
    /// WQE counter goes into `owner_opcode` bits 8..24, and the second word carries the
    /// send doorbell value (QPN << 8) beside `fence_size`, so the device needs nothing
    /// but the 64-byte copy to the BlueFlame buffer.
    #[inline]
    pub fn set_blueflame(&mut self, doorbell_qpn: u32, wqe_counter: u16) {
        let owner_opcode =
            self.owner_opcode.get() | u32::from(wqe_counter) << Self::BF_COUNTER_SHIFT;
        self.owner_opcode = Be32::new(owner_opcode);
        let qpn = doorbell_qpn >> 8;
        self.vlan_tag = Be16::new((qpn >> 8) as u16);
        self.ins_vlan = qpn as u8;
    }

    /// Sets the second word in one store: `bf_qpn` (the send doorbell value, `QPN << 8`,
    /// in a BlueFlame WQE; 0, no VLAN insertion, otherwise) beside `fence_size`.
    #[inline]
    pub fn set_qpn_fence_size(&mut self, bf_qpn: u32, fence_size: u8) {
        let word = (bf_qpn & !0xff | u32::from(fence_size)).to_be_bytes();
        if let Some(field) = zerocopy::IntoBytes::as_mut_bytes(self).get_mut(4..8) {
            field.copy_from_slice(&word);
        }
    }

    /// The send doorbell value a BlueFlame WQE carries (`bf_qpn` without `fence_size`).
    #[inline]
    pub fn blueflame_qpn(&self) -> u32 {
        (u32::from(self.vlan_tag.get()) << 8 | u32::from(self.ins_vlan)) << 8
    }

    /// The size in 16-byte units this WQE claims.
    #[inline]
    pub fn size_ds(&self) -> usize {
        (self.fence_size & Self::SIZE_MASK) as usize
    }

    /// The opcode bits of `owner_opcode`.
    #[inline]
    pub fn opcode_bits(&self) -> u8 {
        (self.owner_opcode.get() & Self::OPCODE_MASK) as u8
    }
}

/// Remote address segment of RDMA and atomic WQEs (`struct mlx4_wqe_raddr_seg`).
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
pub struct RaddrSeg {
    /// The remote virtual address.
    pub raddr: Be64,
    /// The remote key.
    pub rkey: Be32,
    /// Reserved.
    pub reserved: Be32,
}

/// Atomic operands (`struct mlx4_wqe_atomic_seg`): compare-and-swap puts the swap value
/// in `swap_add` and the comparand in `compare`; fetch-and-add the addend in `swap_add`.
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
pub struct AtomicSeg {
    /// The swap value (compare-and-swap) or the addend (fetch-and-add).
    pub swap_add: Be64,
    /// The value compared with (compare-and-swap).
    pub compare: Be64,
}

/// The address vector of a UD destination (`struct mlx4_av`), built once per address
/// handle and copied into each UD WQE.
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
pub struct AddressVector {
    /// Port number in bits 24..32, PD number below.
    pub port_pd: Be32,
    /// Reserved.
    pub reserved1: u8,
    /// Bit 7: a GRH follows (required on RoCE); bits 0..7: source path bits.
    pub g_slid: u8,
    /// The destination LID (InfiniBand).
    pub dlid: Be16,
    /// Reserved.
    pub reserved2: u8,
    /// Index of the source GID in the port's GID table.
    pub gid_index: u8,
    /// The static rate (injection rate limit) of the path.
    pub stat_rate: u8,
    /// The GRH hop limit.
    pub hop_limit: u8,
    /// SL in bits 28..32, traffic class in 20..28, flow label in 0..20.
    pub sl_tclass_flowlabel: Be32,
    /// The destination GID, used with a GRH.
    pub dgid: [u8; 16],
}

impl AddressVector {
    /// `port_pd` bits 24..32: the port number.
    pub const PORT_SHIFT: u32 = 24;
    /// `port_pd` bits 0..24: the PD number.
    pub const PD_MASK: u32 = 0x00ff_ffff;
    /// `g_slid` bit 7: a GRH follows.
    pub const GRH_PRESENT: u8 = 1 << 7;
    /// `sl_tclass_flowlabel` bits 28..32: the service level.
    pub const SL_SHIFT: u32 = 28;
    /// `sl_tclass_flowlabel` bits 20..28: the traffic class.
    pub const TCLASS_SHIFT: u32 = 20;
    /// `sl_tclass_flowlabel` bits 0..20: the flow label.
    pub const FLOW_LABEL_MASK: u32 = 0x000f_ffff;

    /// The port number.
    #[inline]
    pub fn port(&self) -> u8 {
        (self.port_pd.get() >> Self::PORT_SHIFT) as u8
    }
    /// The PD number.
    #[inline]
    pub fn pd(&self) -> u32 {
        self.port_pd.get() & Self::PD_MASK
    }
    /// Whether a GRH follows.
    #[inline]
    pub fn has_grh(&self) -> bool {
        self.g_slid & Self::GRH_PRESENT != 0
    }
}

/// The UD destination segment (`struct mlx4_wqe_datagram_seg`).
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
pub struct DatagramSeg {
    /// The destination's address vector (`av`).
    pub av: AddressVector,
    /// The destination QP number.
    pub dqpn: Be32,
    /// The destination's Q_Key.
    pub qkey: Be32,
    /// The VLAN tag on RoCE.
    pub vlan: Be16,
    /// The destination MAC on RoCE.
    pub mac: [u8; 6],
}

/// Fast registration of a memory region (`struct mlx4_wqe_fmr_seg`, opcode FMR; the
/// kernel builds it in `set_reg_seg` for `IB_WR_REG_MR`).
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
pub struct FastRegSeg {
    /// Access rights, `FastRegSeg::PERM_*`.
    pub flags: Be32,
    /// The key being registered.
    pub mem_key: Be32,
    /// DMA address of the page list: big-endian page addresses, each with
    /// [`FastRegSeg::PAGE_PRESENT`] set (`MLX4_MTT_FLAG_PRESENT`).
    pub buf_list: Be64,
    /// The start address (IOVA) of the region.
    pub start_addr: Be64,
    /// The length of the region in bytes.
    pub reg_len: Be64,
    /// Offset; written as zero, as the kernel's `set_reg_seg` does.
    pub offset: Be32,
    /// log2 of the page size.
    pub page_size: Be32,
    /// Reserved.
    pub reserved: [Be32; 2],
}

impl FastRegSeg {
    /// `flags`: local read (`MLX4_WQE_FMR_PERM_LOCAL_READ`).
    pub const PERM_LOCAL_READ: u32 = 1 << 27;
    /// `flags`: local write (`MLX4_WQE_FMR_PERM_LOCAL_WRITE`).
    pub const PERM_LOCAL_WRITE: u32 = 1 << 28;
    /// `flags`: remote read (`MLX4_WQE_FMR_AND_BIND_PERM_REMOTE_READ`).
    pub const PERM_REMOTE_READ: u32 = 1 << 29;
    /// `flags`: remote write (`MLX4_WQE_FMR_AND_BIND_PERM_REMOTE_WRITE`).
    pub const PERM_REMOTE_WRITE: u32 = 1 << 30;
    /// `flags`: remote atomics (`MLX4_WQE_FMR_AND_BIND_PERM_ATOMIC`).
    pub const PERM_ATOMIC: u32 = 1 << 31;
    /// Set in each page-list entry (`MLX4_MTT_FLAG_PRESENT`).
    pub const PAGE_PRESENT: u64 = 1;
}

/// Local invalidation (`struct mlx4_wqe_local_inval_seg`).
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
pub struct LocalInvalSeg {
    /// Reserved.
    pub reserved1: Be64,
    /// The key to invalidate.
    pub mem_key: Be32,
    /// Reserved.
    pub reserved2: Be32,
    /// Reserved.
    pub reserved3: [Be64; 2],
}

/// A scatter/gather entry (`struct mlx4_wqe_data_seg`), in send WQEs and as the receive
/// WQE's scatter list.
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
pub struct DataSeg {
    /// The segment's length in bytes; see [`DataSeg::ZERO_LENGTH`] and
    /// [`DataSeg::MAX_LENGTH`].
    pub byte_count: Be32,
    /// The local key of the memory region.
    pub lkey: Be32,
    /// The DMA address of the data.
    pub addr: Be64,
}

impl DataSeg {
    /// A zero-length gather entry is written as this `byte_count` (rdma-core
    /// `set_data_seg`): zero would mean 2 GiB to the hardware.
    pub const ZERO_LENGTH: u32 = 0x8000_0000;
    /// The lkey that ends a receive scatter list shorter than the WQE
    /// (`MLX4_INVALID_LKEY`).
    pub const INVALID_LKEY: u32 = 0x100;
    /// The longest gather entry: bit 31 of `byte_count` would mark the segment inline.
    pub const MAX_LENGTH: u32 = 0x7fff_ffff;
}

/// The 4-byte header of an inline data segment (`struct mlx4_wqe_inline_seg`); the data
/// follows it. No inline segment may cross a 64-byte boundary, so longer inline payloads
/// are split into several segments.
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
pub struct InlineSeg {
    /// [`InlineSeg::INLINE`] and the length of the data that follows.
    pub byte_count: Be32,
}

impl InlineSeg {
    /// `byte_count` bit 31 marks the segment inline (`MLX4_INLINE_SEG`).
    pub const INLINE: u32 = 1 << 31;
    /// `byte_count` bits 0..10: the data length.
    pub const LEN_MASK: u32 = 0x3ff;
    /// Inline segments do not cross this alignment (`MLX4_INLINE_ALIGN`).
    pub const ALIGN: usize = 64;
}
