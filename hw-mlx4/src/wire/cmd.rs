//! The firmware command interface: the Host Command Register (HCR) in BAR0, the command
//! opcodes and the status codes, and the other BAR0 registers a driver touches.
//!
//! Source: `drivers/net/ethernet/mellanox/mlx4/cmd.c` (`HCR_*_OFFSET`, `HCR_*_BIT`,
//! `mlx4_cmd_post`, `cmd_pending`, `mlx4_cmd_poll`, `mlx4_status_to_errno`),
//! `include/linux/mlx4/cmd.h` (`MLX4_CMD_*`), `mlx4.h` (`MLX4_HCR_BASE`,
//! `MLX4_OWNER_BASE`), `reset.c` (`MLX4_RESET_*`, `MLX4_SEM_OFFSET`).
//!
//! The driver writes the HCR as seven big-endian 32-bit words, the last one (status,
//! opcode and the go bit) after a write barrier; a device executes the command when that
//! word arrives with `go` set, and clears `go` when done, with the status in the top byte.

/// Offset of the HCR in BAR0.
pub const HCR_BASE: u64 = 0x8_0680;
/// Size of the HCR: seven 32-bit words.
pub const HCR_SIZE: u64 = 0x1c;
/// Offset in BAR0 of the ownership semaphore: reads 0 to the first function that asks,
/// which then owns the device until it writes 0 back (`mlx4_get_ownership`).
pub const OWNER_BASE: u64 = 0x8_069c;
/// Offset in BAR0 of the reset page (`MLX4_RESET_BASE`).
pub const RESET_BASE: u64 = 0xf_0000;
/// The reset register in the reset page: writing [`RESET_VALUE`] resets the HCA.
pub const RESET_OFFSET: u64 = 0x10;
/// The hardware semaphore in the reset page: reads 0 when the driver may reset.
pub const RESET_SEMAPHORE_OFFSET: u64 = 0x3fc;
/// The value that resets the device (`MLX4_RESET_VALUE`, `swab32(1)`: 1 big-endian).
pub const RESET_VALUE: u32 = 1;

/// Word offsets inside the HCR (`HCR_*_OFFSET`).
pub mod hcr {
    /// `in_param` (64 bits: an immediate or a mailbox's DMA address).
    pub const IN_PARAM: usize = 0x00;
    /// `in_modifier`.
    pub const IN_MODIFIER: usize = 0x08;
    /// `out_param` (64 bits: an immediate result or a mailbox's DMA address).
    pub const OUT_PARAM: usize = 0x0c;
    /// The token, in the top 16 bits; echoed in the completion event.
    pub const TOKEN: usize = 0x14;
    /// Status (top byte), go, e and t bits, op modifier and opcode.
    pub const STATUS: usize = 0x18;
    /// `go`: set by the driver to run the command, cleared by the device when done.
    pub const GO_BIT: u32 = 1 << 23;
    /// `e`: report completion with a command EQE instead of by polling.
    pub const EVENT_BIT: u32 = 1 << 22;
    /// `t`: the toggle; the driver alternates it between commands.
    pub const TOGGLE_BIT: u32 = 1 << 21;
    /// The op modifier: bits 12..16.
    pub const OPMOD_SHIFT: u32 = 12;
    /// The status byte: bits 24..32.
    pub const STATUS_SHIFT: u32 = 24;
}

/// The HCR's contents as the driver wrote them, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcrCommand {
    /// `in_param`.
    pub in_param: u64,
    /// `in_modifier`.
    pub in_modifier: u32,
    /// `out_param` as written (a mailbox address, or where an immediate result goes).
    pub out_param: u64,
    /// The token (top 16 bits of the token word).
    pub token: u16,
    /// The opcode (bits 0..12 of the status word).
    pub opcode: u16,
    /// The op modifier (bits 12..16).
    pub op_modifier: u8,
    /// Completion by event rather than by polling.
    pub event: bool,
    /// The toggle bit.
    pub toggle: bool,
}

impl HcrCommand {
    /// Decodes the seven big-endian words of the HCR.
    pub fn decode(hcr: &[u8; HCR_SIZE as usize]) -> Self {
        let word = |offset: usize| {
            let mut bytes = [0u8; 4];
            if let Some(src) = hcr.get(offset..offset + 4) {
                bytes.copy_from_slice(src);
            }
            u32::from_be_bytes(bytes)
        };
        let status = word(hcr::STATUS);
        Self {
            in_param: (u64::from(word(hcr::IN_PARAM)) << 32) | u64::from(word(hcr::IN_PARAM + 4)),
            in_modifier: word(hcr::IN_MODIFIER),
            out_param: (u64::from(word(hcr::OUT_PARAM)) << 32)
                | u64::from(word(hcr::OUT_PARAM + 4)),
            token: (word(hcr::TOKEN) >> 16) as u16,
            opcode: (status & 0xfff) as u16,
            op_modifier: ((status >> hcr::OPMOD_SHIFT) & 0xf) as u8,
            event: status & hcr::EVENT_BIT != 0,
            toggle: status & hcr::TOGGLE_BIT != 0,
        }
    }
}

/// Command opcodes (`MLX4_CMD_*` in `include/linux/mlx4/cmd.h`).
pub mod opcode {
    #![allow(missing_docs)] // The names are upstream's; cmd.h documents none of them.
    pub const SYS_EN: u16 = 0x1;
    pub const SYS_DIS: u16 = 0x2;
    pub const MAP_FA: u16 = 0xfff;
    pub const UNMAP_FA: u16 = 0xffe;
    pub const RUN_FW: u16 = 0xff6;
    pub const MOD_STAT_CFG: u16 = 0x34;
    pub const QUERY_DEV_CAP: u16 = 0x3;
    pub const QUERY_FW: u16 = 0x4;
    pub const ENABLE_LAM: u16 = 0xff8;
    pub const DISABLE_LAM: u16 = 0xff7;
    pub const QUERY_DDR: u16 = 0x5;
    pub const QUERY_ADAPTER: u16 = 0x6;
    pub const INIT_HCA: u16 = 0x7;
    pub const CLOSE_HCA: u16 = 0x8;
    pub const INIT_PORT: u16 = 0x9;
    pub const CLOSE_PORT: u16 = 0xa;
    pub const QUERY_HCA: u16 = 0xb;
    pub const QUERY_PORT: u16 = 0x43;
    pub const SENSE_PORT: u16 = 0x4d;
    pub const HW_HEALTH_CHECK: u16 = 0x50;
    pub const SET_PORT: u16 = 0xc;
    pub const SET_NODE: u16 = 0x5a;
    pub const QUERY_FUNC: u16 = 0x68;
    pub const MAP_ICM: u16 = 0xffa;
    pub const UNMAP_ICM: u16 = 0xff9;
    pub const MAP_ICM_AUX: u16 = 0xffc;
    pub const UNMAP_ICM_AUX: u16 = 0xffb;
    pub const SET_ICM_SIZE: u16 = 0xffd;
    pub const ACCESS_REG: u16 = 0x3b;
    pub const GET_OP_REQ: u16 = 0x59;
    pub const SW2HW_MPT: u16 = 0xd;
    pub const QUERY_MPT: u16 = 0xe;
    pub const HW2SW_MPT: u16 = 0xf;
    pub const READ_MTT: u16 = 0x10;
    pub const WRITE_MTT: u16 = 0x11;
    pub const SYNC_TPT: u16 = 0x2f;
    pub const MAP_EQ: u16 = 0x12;
    pub const SW2HW_EQ: u16 = 0x13;
    pub const HW2SW_EQ: u16 = 0x14;
    pub const QUERY_EQ: u16 = 0x15;
    pub const SW2HW_CQ: u16 = 0x16;
    pub const HW2SW_CQ: u16 = 0x17;
    pub const QUERY_CQ: u16 = 0x18;
    pub const MODIFY_CQ: u16 = 0x2c;
    pub const SW2HW_SRQ: u16 = 0x35;
    pub const HW2SW_SRQ: u16 = 0x36;
    pub const QUERY_SRQ: u16 = 0x37;
    pub const ARM_SRQ: u16 = 0x40;
    pub const RST2INIT_QP: u16 = 0x19;
    pub const INIT2RTR_QP: u16 = 0x1a;
    pub const RTR2RTS_QP: u16 = 0x1b;
    pub const RTS2RTS_QP: u16 = 0x1c;
    pub const SQERR2RTS_QP: u16 = 0x1d;
    pub const TO_ERR_QP: u16 = 0x1e;
    pub const RTS2SQD_QP: u16 = 0x1f;
    pub const SQD2SQD_QP: u16 = 0x38;
    pub const SQD2RTS_QP: u16 = 0x20;
    pub const TO_RST_QP: u16 = 0x21;
    pub const QUERY_QP: u16 = 0x22;
    pub const INIT2INIT_QP: u16 = 0x2d;
    pub const CONF_SPECIAL_QP: u16 = 0x23;
    pub const MAD_IFC: u16 = 0x24;
    pub const MAD_DEMUX: u16 = 0x203;
    pub const READ_MCG: u16 = 0x25;
    pub const WRITE_MCG: u16 = 0x26;
    pub const MGID_HASH: u16 = 0x27;
    pub const DIAG_RPRT: u16 = 0x30;
    pub const NOP: u16 = 0x31;
    pub const QUERY_IF_STAT: u16 = 0x54;
    pub const SET_IF_STAT: u16 = 0x55;
}

/// Command status codes (`CMD_STAT_*` in `cmd.c`), in the HCR's top byte and in the
/// command EQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CmdStatus {
    /// Command completed successfully.
    Ok = 0x00,
    /// Internal error (such as a bus error) occurred while processing the command.
    InternalError = 0x01,
    /// Operation/command not supported or opcode modifier not supported.
    BadOp = 0x02,
    /// Parameter not supported or out of range.
    BadParam = 0x03,
    /// System not enabled or in a bad state.
    BadSysState = 0x04,
    /// Attempt to access a reserved or unallocated resource.
    BadResource = 0x05,
    /// The requested resource is busy.
    ResourceBusy = 0x06,
    /// The required capability exceeds the device's limits.
    ExceedsLimit = 0x08,
    /// The resource is not in the appropriate state or ownership.
    BadResourceState = 0x09,
    /// The index is out of range.
    BadIndex = 0x0a,
    /// The firmware image is corrupted.
    BadNvmem = 0x0b,
    /// An error in ICM mapping (for instance, an unmapped ICM page was touched).
    IcmError = 0x0c,
    /// Attempt to modify a QP or EE that is not in the presumed state.
    BadQpState = 0x10,
    /// A bad segment parameter (address or size).
    BadSegmentParam = 0x20,
    /// Memory region has memory windows bound to it.
    RegionBound = 0x21,
    /// HCA local attached memory not present.
    LamNotPresent = 0x22,
    /// A bad management packet (silently discarded).
    BadPacket = 0x30,
    /// More outstanding CQEs in the CQ than the new CQ size.
    BadSize = 0x40,
}

impl CmdStatus {
    /// The status a firmware reported in the HCR's top byte or a command EQE, if it is
    /// one the PRM names (`mlx4_status_to_errno` maps the same set).
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            0x00 => Self::Ok,
            0x01 => Self::InternalError,
            0x02 => Self::BadOp,
            0x03 => Self::BadParam,
            0x04 => Self::BadSysState,
            0x05 => Self::BadResource,
            0x06 => Self::ResourceBusy,
            0x08 => Self::ExceedsLimit,
            0x09 => Self::BadResourceState,
            0x0a => Self::BadIndex,
            0x0b => Self::BadNvmem,
            0x0c => Self::IcmError,
            0x10 => Self::BadQpState,
            0x20 => Self::BadSegmentParam,
            0x21 => Self::RegionBound,
            0x22 => Self::LamNotPresent,
            0x30 => Self::BadPacket,
            0x40 => Self::BadSize,
            _ => return None,
        })
    }
}
