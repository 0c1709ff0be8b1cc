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
    pub reserved1: u8,
    pub event_type: u8,
    pub reserved2: u8,
    pub subtype: u8,
    pub event: [Be32; 6],
    pub reserved3: [u8; 3],
    /// Bit 7: owner.
    pub owner: u8,
}

impl Eqe {
    pub const OWNER: u8 = 0x80;
    pub const OBJECT_MASK: u32 = 0x00ff_ffff;
    /// The owner byte is the last byte of the 32-bit word at this offset.
    pub const OWNER_WORD_OFFSET: usize = 28;

    /// The CQN, QPN or SRQN the event is about (the first word of the union).
    pub fn object(&self) -> u32 {
        self.event[0].get() & Self::OBJECT_MASK
    }
}

/// Event types (`MLX4_EVENT_TYPE_*`); only those the fast path and the model produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventType {
    Completion = 0x00,
    PathMigrated = 0x01,
    CommEstablished = 0x02,
    SqDrained = 0x03,
    CqError = 0x04,
    WqCatastrophicError = 0x05,
    PortChange = 0x09,
    Command = 0x0a,
    SrqLimit = 0x14,
}

impl EventType {
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
pub const fn eq_set_ci_word(cons_index: u32, arm: bool) -> u32 {
    (cons_index & 0x00ff_ffff) | if arm { 1 << 31 } else { 0 }
}
