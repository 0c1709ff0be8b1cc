//! Event queue entries.
//!
//! Source: `include/linux/mlx4/device.h` (`struct mlx4_eqe`, `MLX4_EVENT_TYPE_*`) and
//! `drivers/net/ethernet/mellanox/mlx4/eq.c` (`next_eqe_sw`, `eq_set_ci`).

use super::Be32;

/// Size of an EQE at the default EQE stride.
pub const EQE_SIZE: usize = 32;

/// An event queue entry (`struct mlx4_eqe`). The 24 bytes of `event` are a union whose
/// first word names the object: the CQN of completion and CQ error events, the QPN of QP
/// events.
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
pub struct Eqe {
    /// Reserved.
    pub reserved1: u8,
    /// The event type (`type`, `MLX4_EVENT_TYPE_*`; see [`EventType`]).
    pub event_type: u8,
    /// Reserved.
    pub reserved2: u8,
    /// The event subtype, which qualifies some event types.
    pub subtype: u8,
    /// The `event` union; its first word names the object (see [`Eqe::object`]).
    pub event: [Be32; 6],
    /// Reserved here; upstream, `slave_id` then `reserved3[2]`.
    pub reserved3: [u8; 3],
    /// Bit 7: owner.
    pub owner: u8,
}

impl Eqe {
    /// `owner` bit 7: the owner bit.
    pub const OWNER: u8 = 0x80;
    /// The object number in the union's first word: bits 0..24.
    pub const OBJECT_MASK: u32 = 0x00ff_ffff;
    /// The owner byte is the last byte of the 32-bit word at this offset.
    pub const OWNER_WORD_OFFSET: usize = 28;

    /// The CQN, QPN or SRQN the event is about (the first word of the union).
    #[inline]
    pub fn object(&self) -> u32 {
        self.event[0].get() & Self::OBJECT_MASK
    }
}

/// Event types (`MLX4_EVENT_TYPE_*`); only those the fast path and the model produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventType {
    /// A CQ has a new completion (`MLX4_EVENT_TYPE_COMP`).
    Completion = 0x00,
    /// A QP migrated to its alternate path (`MLX4_EVENT_TYPE_PATH_MIG`).
    PathMigrated = 0x01,
    /// Communication established on a QP (`MLX4_EVENT_TYPE_COMM_EST`).
    CommEstablished = 0x02,
    /// A QP's send queue drained (`MLX4_EVENT_TYPE_SQ_DRAINED`).
    SqDrained = 0x03,
    /// A CQ error (`MLX4_EVENT_TYPE_CQ_ERROR`).
    CqError = 0x04,
    /// A catastrophic error on a QP's work queue (`MLX4_EVENT_TYPE_WQ_CATAS_ERROR`).
    WqCatastrophicError = 0x05,
    /// A port changed state (`MLX4_EVENT_TYPE_PORT_CHANGE`).
    PortChange = 0x09,
    /// A firmware command completed (`MLX4_EVENT_TYPE_CMD`).
    Command = 0x0a,
    /// An SRQ fell below its limit (`MLX4_EVENT_TYPE_SRQ_LIMIT`).
    SrqLimit = 0x14,
}

impl EventType {
    /// Decodes `event_type`; `None` for types not listed here.
    #[inline]
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x00 => Self::Completion,
            0x01 => Self::PathMigrated,
            0x02 => Self::CommEstablished,
            0x03 => Self::SqDrained,
            0x04 => Self::CqError,
            0x05 => Self::WqCatastrophicError,
            0x09 => Self::PortChange,
            0x0a => Self::Command,
            0x14 => Self::SrqLimit,
            _ => return None,
        })
    }
}

/// The EQ consumer-index doorbell word (`eq_set_ci`): the index, and bit 31 to re-arm.
#[inline]
pub const fn eq_set_ci_word(cons_index: u32, arm: bool) -> u32 {
    (cons_index & 0x00ff_ffff) | if arm { 1 << 31 } else { 0 }
}
