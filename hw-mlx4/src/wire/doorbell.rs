//! Doorbells: the UAR page registers the driver writes by MMIO, and the doorbell records
//! the device reads from host memory.
//!
//! Source: `include/linux/mlx4/doorbell.h` (`MLX4_SEND_DOORBELL`, `MLX4_CQ_DOORBELL`),
//! `include/linux/mlx4/cq.h` (`mlx4_cq_arm`, `mlx4_cq_set_ci`, `MLX4_CQ_DB_REQ_NOT*`),
//! `drivers/infiniband/hw/mlx4/qp.c` (`doorbell_qpn`, the RQ record) and rdma-core
//! `providers/mlx4/qp.c` (BlueFlame).

use super::Be32;

/// Offset of the 32-bit send doorbell in the UAR page.
pub const UAR_SEND_DOORBELL: usize = 0x14;
/// Offset of the 64-bit CQ doorbell in the UAR page.
pub const UAR_CQ_DOORBELL: usize = 0x20;
/// Offset of the first EQ doorbell in an EQ's UAR page; each of the page's four EQs has
/// one, 8 bytes apart (`mlx4_get_eq_uar`).
pub const UAR_EQ_DOORBELL: usize = 0x800;

/// Offset of EQ `eqn`'s consumer-index doorbell in its UAR page.
#[inline]
pub const fn eq_doorbell_offset(eqn: u32) -> usize {
    UAR_EQ_DOORBELL + 8 * (eqn % 4) as usize
}

/// Offset of the first BlueFlame buffer in the BlueFlame page. Consecutive BlueFlame
/// posts alternate between two buffers of `bf_buf_size` bytes.
pub const BLUEFLAME_OFFSET: usize = 0x100;

/// The value written to [`UAR_SEND_DOORBELL`]: the QPN shifted by 8, big-endian
/// (`qp->doorbell_qpn`). BlueFlame WQEs carry the same word in their `bf_qpn` field.
#[inline]
pub const fn send_doorbell_value(qpn: u32) -> u32 {
    qpn << 8
}

/// The QPN a send doorbell value names.
#[inline]
pub const fn send_doorbell_qpn(value: u32) -> u32 {
    value >> 8
}

/// What an armed CQ raises an event for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmCommand {
    /// The next solicited completion (`MLX4_CQ_DB_REQ_NOT_SOL`).
    Solicited,
    /// The next completion of any kind (`MLX4_CQ_DB_REQ_NOT`).
    Next,
}

impl ArmCommand {
    /// Bit position of the command in the doorbell's first word.
    pub const SHIFT: u32 = 24;
    /// The command field: bits 24..27.
    pub const MASK: u32 = 7 << Self::SHIFT;
    /// The command in place in a doorbell or arm word.
    #[inline]
    pub const fn bits(self) -> u32 {
        match self {
            Self::Solicited => 1 << Self::SHIFT,
            Self::Next => 2 << Self::SHIFT,
        }
    }
    /// Decodes the command field of a doorbell or arm word; `None` if it holds neither.
    #[inline]
    pub const fn from_bits(word: u32) -> Option<Self> {
        match (word & Self::MASK) >> Self::SHIFT {
            1 => Some(Self::Solicited),
            2 => Some(Self::Next),
            _ => None,
        }
    }
}

/// The 64-bit CQ doorbell (`mlx4_cq_arm`): arm sequence number, command and CQN, then
/// the consumer index.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct CqDoorbell {
    /// Arm sequence number in bits 28..30, command in bits 24..27, CQN in bits 0..24.
    pub sn_cmd_cqn: Be32,
    /// The consumer index, low 24 bits.
    pub cons_index: Be32,
}

impl CqDoorbell {
    /// Bit position of the arm sequence number.
    pub const SN_SHIFT: u32 = 28;
    /// The arm sequence number is two bits (`arm_sn & 3`).
    pub const SN_MASK: u32 = 3;
    /// The CQN: bits 0..24 of the first word.
    pub const CQN_MASK: u32 = 0x00ff_ffff;
    /// The consumer index is carried in 24 bits.
    pub const CI_MASK: u32 = 0x00ff_ffff;

    /// Packs a doorbell as `mlx4_cq_arm` does, each value masked to its field.
    #[inline]
    pub fn new(arm_sn: u32, cmd: ArmCommand, cqn: u32, cons_index: u32) -> Self {
        Self {
            sn_cmd_cqn: Be32::new(
                (arm_sn & Self::SN_MASK) << Self::SN_SHIFT | cmd.bits() | (cqn & Self::CQN_MASK),
            ),
            cons_index: Be32::new(cons_index & Self::CI_MASK),
        }
    }
    /// The CQN the doorbell names.
    #[inline]
    pub fn cqn(&self) -> u32 {
        self.sn_cmd_cqn.get() & Self::CQN_MASK
    }
    /// The arm sequence number.
    #[inline]
    pub fn arm_sn(&self) -> u32 {
        (self.sn_cmd_cqn.get() >> Self::SN_SHIFT) & Self::SN_MASK
    }
    /// The arm command, if the command field holds one.
    #[inline]
    pub fn command(&self) -> Option<ArmCommand> {
        ArmCommand::from_bits(self.sn_cmd_cqn.get())
    }
}

/// The CQ's doorbell record in host memory (`cq->set_ci_db`, `cq->arm_db`): the
/// consumer index the device may overwrite up to, and the last arm request.
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
pub struct CqDoorbellRecord {
    /// The consumer index, low 24 bits (`mlx4_cq_set_ci`).
    pub set_ci: Be32,
    /// The last arm request, as [`CqDoorbellRecord::arm_word`] packs it.
    pub arm: Be32,
}

impl CqDoorbellRecord {
    /// The `arm` word: the same packing as the doorbell's first word, with the consumer
    /// index in place of the CQN.
    #[inline]
    pub fn arm_word(arm_sn: u32, cmd: ArmCommand, cons_index: u32) -> u32 {
        (arm_sn & CqDoorbell::SN_MASK) << CqDoorbell::SN_SHIFT
            | cmd.bits()
            | (cons_index & CqDoorbell::CI_MASK)
    }
}

/// The receive queue's doorbell record: the low 16 bits of the producer counter.
pub const RQ_DOORBELL_MASK: u32 = 0xffff;
