//! Firmware command mailboxes: byte offsets of the fields the driver and the firmware
//! exchange, named as upstream names them, and a checked reader and writer over a
//! mailbox's bytes. All fields are big-endian.
//!
//! Source: `drivers/net/ethernet/mellanox/mlx4/fw.c` (`QUERY_FW_*`, `QUERY_DEV_CAP_*`,
//! `QUERY_PORT_*`, `QUERY_ADAPTER_*`, `INIT_HCA_*`), `mlx4.h` (`struct mlx4_eq_context`,
//! `struct mlx4_cq_context`, `struct mlx4_mpt_entry`), `include/linux/mlx4/qp.h`
//! (`struct mlx4_qp_context`).

/// Size of a command mailbox (`MLX4_MAILBOX_SIZE`).
pub const MAILBOX_SIZE: usize = 4096;

/// A mailbox's bytes, read and written by field. Accesses outside the bytes read as zero
/// and write nothing, so a short buffer can never make a reader or writer panic; the
/// owner checks the length once (`MAILBOX_SIZE`).
pub struct Mailbox<T>(pub T);

impl<T: AsRef<[u8]>> Mailbox<T> {
    fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.0.as_ref().get(offset..offset.saturating_add(N)) {
            out.copy_from_slice(src);
        }
        out
    }

    /// The byte at `offset`.
    pub fn u8(&self, offset: usize) -> u8 {
        self.bytes::<1>(offset)[0]
    }

    /// The big-endian 16-bit field at `offset`.
    pub fn u16(&self, offset: usize) -> u16 {
        u16::from_be_bytes(self.bytes(offset))
    }

    /// The big-endian 32-bit field at `offset`.
    pub fn u32(&self, offset: usize) -> u32 {
        u32::from_be_bytes(self.bytes(offset))
    }

    /// The big-endian 64-bit field at `offset`.
    pub fn u64(&self, offset: usize) -> u64 {
        u64::from_be_bytes(self.bytes(offset))
    }
}

impl<T: AsMut<[u8]>> Mailbox<T> {
    fn put(&mut self, offset: usize, value: &[u8]) {
        if let Some(dst) = self
            .0
            .as_mut()
            .get_mut(offset..offset.saturating_add(value.len()))
        {
            dst.copy_from_slice(value);
        }
    }

    /// Writes the byte at `offset`.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.put(offset, &[value]);
    }

    /// Writes the big-endian 16-bit field at `offset`.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.put(offset, &value.to_be_bytes());
    }

    /// Writes the big-endian 32-bit field at `offset`.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.put(offset, &value.to_be_bytes());
    }

    /// Writes the big-endian 64-bit field at `offset`.
    pub fn set_u64(&mut self, offset: usize, value: u64) {
        self.put(offset, &value.to_be_bytes());
    }
}

/// QUERY_FW's output (`mlx4_QUERY_FW`). The version is 16-bit major at 0x02, subminor
/// at 0x04, minor at 0x06 (the driver swaps the last two).
#[allow(missing_docs)]
pub mod query_fw {
    pub const OUT_SIZE: usize = 0x100;
    /// Firmware area size in 4 KiB pages (16 bits at the start of the version word).
    pub const SIZE: usize = 0x00;
    pub const VER_MAJOR: usize = 0x02;
    pub const VER_SUBMINOR: usize = 0x04;
    pub const VER_MINOR: usize = 0x06;
    pub const PPF_ID: usize = 0x09;
    pub const CMD_IF_REV: usize = 0x0a;
    /// log2 of the number of commands that may be outstanding.
    pub const MAX_CMD: usize = 0x0f;
    pub const CLR_INT_BASE: usize = 0x20;
    /// BAR of the clear-interrupt register, as `(bar / 2) << 6`.
    pub const CLR_INT_BAR: usize = 0x28;
    pub const ERR_START: usize = 0x30;
    pub const ERR_SIZE: usize = 0x38;
    pub const ERR_BAR: usize = 0x3c;
    pub const COMM_BASE: usize = 0x40;
    pub const COMM_BAR: usize = 0x48;
    pub const CLOCK_OFFSET: usize = 0x50;
    pub const CLOCK_BAR: usize = 0x58;
}

/// MOD_STAT_CFG's input (`mlx4_MOD_STAT_CFG`).
#[allow(missing_docs)]
pub mod mod_stat_cfg {
    /// Whether `PG_SZ` is to be applied.
    pub const PG_SZ_M: usize = 0x002;
    /// log2 of the ICM page size in 4 KiB units.
    pub const PG_SZ: usize = 0x003;
}

/// QUERY_ADAPTER's output (`mlx4_QUERY_ADAPTER`).
#[allow(missing_docs)]
pub mod query_adapter {
    pub const INTA_PIN: usize = 0x10;
    /// The vendor-specific data, where the PSID (board id) sits (`get_board_id`).
    pub const VSD: usize = 0x20;
    /// The board id (PSID) inside the VSD: 16 bytes, each 32-bit word byte-swapped.
    pub const VSD_BOARD_ID: usize = 0xd0;
}

/// QUERY_DEV_CAP's output (`mlx4_QUERY_DEV_CAP`): sizes are mostly log2 in the low bits.
#[allow(missing_docs)]
pub mod query_dev_cap {
    pub const OUT_SIZE: usize = 0x100;
    pub const MAX_SRQ_SZ: usize = 0x10;
    pub const MAX_QP_SZ: usize = 0x11;
    pub const RSVD_QP: usize = 0x12;
    pub const MAX_QP: usize = 0x13;
    pub const RSVD_SRQ: usize = 0x14;
    pub const MAX_SRQ: usize = 0x15;
    pub const MAX_CQ_SZ: usize = 0x19;
    pub const RSVD_CQ: usize = 0x1a;
    pub const MAX_CQ: usize = 0x1b;
    pub const MAX_MPT: usize = 0x1d;
    pub const RSVD_EQ: usize = 0x1e;
    pub const MAX_EQ: usize = 0x1f;
    pub const RSVD_MTT: usize = 0x20;
    pub const MAX_MRW_SZ: usize = 0x21;
    pub const RSVD_MRW: usize = 0x22;
    pub const MAX_MTT_SEG: usize = 0x23;
    pub const NUM_SYS_EQ: usize = 0x26;
    pub const MAX_AV: usize = 0x27;
    pub const MAX_REQ_QP: usize = 0x29;
    pub const MAX_RES_QP: usize = 0x2b;
    pub const MAX_GSO: usize = 0x2d;
    pub const RSS: usize = 0x2e;
    pub const MAX_RDMA: usize = 0x2f;
    pub const RSZ_SRQ: usize = 0x33;
    pub const ACK_DELAY: usize = 0x35;
    pub const MTU_WIDTH: usize = 0x36;
    /// Low nibble: ports; high nibble: VLs.
    pub const VL_PORT: usize = 0x37;
    pub const MAX_MSG_SZ: usize = 0x38;
    pub const MAX_GID: usize = 0x3b;
    pub const RATE_SUPPORT: usize = 0x3c;
    pub const MAX_PKEY: usize = 0x3f;
    pub const EXT_FLAGS: usize = 0x40;
    pub const FLAGS: usize = 0x44;
    /// High nibble: reserved UARs.
    pub const RSVD_UAR: usize = 0x48;
    /// log2 of the UAR area in MiB.
    pub const UAR_SZ: usize = 0x49;
    pub const PAGE_SZ: usize = 0x4b;
    pub const BF: usize = 0x4c;
    pub const LOG_BF_REG_SZ: usize = 0x4d;
    pub const LOG_MAX_BF_REGS_PER_PAGE: usize = 0x4e;
    pub const LOG_MAX_BF_PAGES: usize = 0x4f;
    pub const MAX_SG_SQ: usize = 0x51;
    pub const MAX_DESC_SZ_SQ: usize = 0x52;
    pub const MAX_SG_RQ: usize = 0x55;
    pub const MAX_DESC_SZ_RQ: usize = 0x56;
    pub const MAX_QP_MCG: usize = 0x61;
    pub const RSVD_MCG: usize = 0x62;
    pub const MAX_MCG: usize = 0x63;
    /// High nibble: reserved PDs (a count, not a log).
    pub const RSVD_PD: usize = 0x64;
    pub const MAX_PD: usize = 0x65;
    pub const RSVD_XRC: usize = 0x66;
    pub const MAX_XRC: usize = 0x67;
    pub const RDMARC_ENTRY_SZ: usize = 0x80;
    pub const QPC_ENTRY_SZ: usize = 0x82;
    pub const AUX_ENTRY_SZ: usize = 0x84;
    pub const ALTC_ENTRY_SZ: usize = 0x86;
    pub const EQC_ENTRY_SZ: usize = 0x88;
    pub const CQC_ENTRY_SZ: usize = 0x8a;
    pub const SRQ_ENTRY_SZ: usize = 0x8c;
    pub const C_MPT_ENTRY_SZ: usize = 0x8e;
    pub const MTT_ENTRY_SZ: usize = 0x90;
    pub const D_MPT_ENTRY_SZ: usize = 0x92;
    pub const BMME_FLAGS: usize = 0x94;
    pub const RSVD_LKEY: usize = 0x98;
    pub const MAX_ICM_SZ: usize = 0xa0;
}

/// Device capability flags (`MLX4_DEV_CAP_FLAG_*`, the 64 bits of `EXT_FLAGS:FLAGS`).
#[allow(missing_docs)]
pub mod dev_cap_flag {
    pub const RC: u64 = 1;
    pub const UC: u64 = 1 << 1;
    pub const UD: u64 = 1 << 2;
    pub const SRQ: u64 = 1 << 6;
    pub const BAD_PKEY_CNTR: u64 = 1 << 8;
    pub const BAD_QKEY_CNTR: u64 = 1 << 9;
    pub const ATOMIC: u64 = 1 << 18;
    pub const UD_AV_PORT: u64 = 1 << 20;
    pub const UD_MCAST: u64 = 1 << 21;
}

/// Memory management extension flags (`MLX4_BMME_FLAG_*`).
#[allow(missing_docs)]
pub mod bmme_flag {
    pub const LOCAL_INV: u32 = 1 << 6;
    pub const REMOTE_INV: u32 = 1 << 7;
    pub const FAST_REG_WR: u32 = 1 << 11;
}

/// QUERY_PORT's output (`mlx4_QUERY_PORT`, the new port commands).
#[allow(missing_docs)]
pub mod query_port {
    pub const OUT_SIZE: usize = 0x100;
    /// Bit 7: link up; bits 0..2: supported types (1 = IB, 2 = Ethernet).
    pub const SUPPORTED_TYPE: usize = 0x00;
    /// Low nibble: the IB MTU cap (4 = 2048, 5 = 4096).
    pub const MTU: usize = 0x01;
    pub const ETH_MTU: usize = 0x02;
    /// Low nibble: the link widths supported (1x = 1, 4x = 2, 1x|4x = 3).
    pub const WIDTH: usize = 0x06;
    /// High nibble: log2 GIDs; low nibble: log2 P_Keys.
    pub const MAX_GID_PKEY: usize = 0x07;
    pub const MAX_MACVLAN: usize = 0x0a;
    /// Low nibble: the VL cap.
    pub const MAX_VL: usize = 0x0b;
    pub const MAC: usize = 0x10;
}

/// INIT_HCA's input (`mlx4_INIT_HCA`): where the driver put each context table in ICM.
#[allow(missing_docs)]
pub mod init_hca {
    pub const IN_SIZE: usize = 0x200;
    pub const VERSION: usize = 0x000;
    /// The version this device speaks (`INIT_HCA_VERSION`).
    pub const VERSION_2: u8 = 2;
    pub const FLAGS: usize = 0x014;
    pub const QPC_BASE: usize = 0x030;
    pub const LOG_QP: usize = 0x037;
    pub const SRQC_BASE: usize = 0x048;
    pub const LOG_SRQ: usize = 0x04f;
    pub const CQC_BASE: usize = 0x050;
    pub const LOG_CQ: usize = 0x057;
    pub const EQE_CQE_OFFSETS: usize = 0x058;
    pub const ALTC_BASE: usize = 0x060;
    pub const AUXC_BASE: usize = 0x070;
    pub const EQC_BASE: usize = 0x080;
    pub const LOG_EQ: usize = 0x087;
    pub const RDMARC_BASE: usize = 0x090;
    pub const LOG_RD: usize = 0x097;
    pub const MC_BASE: usize = 0x0c0;
    pub const LOG_MC_ENTRY_SZ: usize = 0x0d3;
    pub const LOG_MC_HASH_SZ: usize = 0x0d7;
    pub const LOG_MC_TABLE_SZ: usize = 0x0db;
    pub const DMPT_BASE: usize = 0x0f0;
    pub const LOG_MPT_SZ: usize = 0x0fb;
    pub const MTT_BASE: usize = 0x100;
    pub const CMPT_BASE: usize = 0x108;
    pub const LOG_UAR_SZ: usize = 0x12a;
    pub const UAR_PAGE_SZ: usize = 0x12b;
}

/// QUERY_HCA's output: INIT_HCA's layout as the firmware holds it, and the core clock.
#[allow(missing_docs)]
pub mod query_hca {
    /// The core clock in MHz (16 bits, `QUERY_HCA_CORE_CLOCK_OFFSET`).
    pub const CORE_CLOCK: usize = 0x0c;
}

/// SET_PORT's input for an InfiniBand port (op_mod 0, `mlx4_SET_PORT`).
#[allow(missing_docs)]
pub mod set_port {
    /// Bits 22/21/20: change the MTU cap, the VL cap, the P_Key table size.
    pub const FLAGS: usize = 0x00;
    /// Bit 0: reset the Q_Key violation counter (`mlx4_ib_SET_PORT`'s byte 3).
    pub const RESET_QKEY_VIOLS: usize = 0x03;
    /// The port's new PortInfo:CapabilityMask.
    pub const CAPABILITY_MASK: usize = 0x04;
    /// The op modifier of the InfiniBand layout (`MLX4_SET_PORT_IB_OPCODE`).
    pub const IB_OPCODE: u8 = 0;
    /// The mailbox bytes the IB layout uses.
    pub const IN_SIZE: usize = 0x08;
}

/// The EQ context (`struct mlx4_eq_context`, 64 bytes).
#[allow(missing_docs)]
pub mod eq_context {
    pub const FLAGS: usize = 0x00;
    pub const PAGE_OFFSET: usize = 0x0a;
    pub const LOG_EQ_SIZE: usize = 0x0c;
    pub const INTR: usize = 0x17;
    pub const LOG_PAGE_SIZE: usize = 0x18;
    pub const MTT_BASE_ADDR_H: usize = 0x1b;
    pub const MTT_BASE_ADDR_L: usize = 0x1c;
    pub const CONSUMER_INDEX: usize = 0x28;
    pub const PRODUCER_INDEX: usize = 0x2c;
    pub const SIZE: usize = 0x40;
    /// `FLAGS`: status OK (`MLX4_EQ_STATUS_OK`, 0 in bits 28..32) and state armed
    /// (`MLX4_EQ_STATE_ARMED`, 9 in bits 8..12).
    pub const FLAGS_ARMED: u32 = 0x9 << 8;
}

/// The CQ context (`struct mlx4_cq_context`, 64 bytes), SW2HW_CQ's input.
#[allow(missing_docs)]
pub mod cq_context {
    pub const FLAGS: usize = 0x00;
    pub const PAGE_OFFSET: usize = 0x0a;
    /// log2 of the entries in bits 24..29, the UAR page in the low 24 bits.
    pub const LOGSIZE_USRPAGE: usize = 0x0c;
    pub const CQ_PERIOD: usize = 0x10;
    pub const CQ_MAX_COUNT: usize = 0x12;
    pub const COMP_EQN: usize = 0x17;
    /// log2 of the buffer's pages in 4 KiB units (`PAGE_SHIFT - MLX4_ICM_PAGE_SHIFT`).
    pub const LOG_PAGE_SIZE: usize = 0x18;
    pub const MTT_BASE_ADDR_H: usize = 0x1b;
    pub const MTT_BASE_ADDR_L: usize = 0x1c;
    pub const LAST_NOTIFIED_INDEX: usize = 0x20;
    pub const SOLICIT_PRODUCER_INDEX: usize = 0x24;
    pub const CONSUMER_INDEX: usize = 0x28;
    pub const PRODUCER_INDEX: usize = 0x2c;
    pub const DB_REC_ADDR: usize = 0x38;
    pub const SIZE: usize = 0x40;
}

/// The data MPT entry (`struct mlx4_mpt_entry`, 64 bytes), SW2HW_MPT's input.
#[allow(missing_docs)]
pub mod mpt_entry {
    pub const FLAGS: usize = 0x00;
    pub const QPN: usize = 0x04;
    /// The key in the hardware's order (`key_to_hw_index`: the index, rotated).
    pub const KEY: usize = 0x08;
    /// The PD in the low 24 bits, with `PD_FLAG_*`.
    pub const PD_FLAGS: usize = 0x0c;
    pub const START: usize = 0x10;
    pub const LENGTH: usize = 0x18;
    pub const LKEY: usize = 0x20;
    pub const MTT_ADDR: usize = 0x2c;
    pub const MTT_SZ: usize = 0x34;
    /// log2 of the page size in bytes.
    pub const ENTITY_SIZE: usize = 0x38;
    pub const FIRST_BYTE_OFFSET: usize = 0x3c;
    pub const SIZE: usize = 0x40;
    /// `MLX4_MPT_FLAG_*`.
    pub const FLAG_SW_OWNS: u32 = 0xf << 28;
    pub const FLAG_FREE: u32 = 0x3 << 28;
    pub const FLAG_MIO: u32 = 1 << 17;
    pub const FLAG_BIND_ENABLE: u32 = 1 << 15;
    pub const FLAG_PHYSICAL: u32 = 1 << 9;
    pub const FLAG_REGION: u32 = 1 << 8;
    /// The state bits of `FLAGS`.
    pub const STATE_MASK: u32 = 0xf << 28;
    /// `MLX4_PERM_*`, in `FLAGS`.
    pub const PERM_LOCAL_READ: u32 = 1 << 10;
    pub const PERM_LOCAL_WRITE: u32 = 1 << 11;
    pub const PERM_REMOTE_READ: u32 = 1 << 12;
    pub const PERM_REMOTE_WRITE: u32 = 1 << 13;
    pub const PERM_ATOMIC: u32 = 1 << 14;
    pub const PERM_MASK: u32 = 0xfc00;
    /// `MLX4_MPT_PD_FLAG_*`, in `PD_FLAGS`.
    pub const PD_FLAG_FAST_REG: u32 = 1 << 27;
    /// Remote access enabled (`MLX4_MPT_PD_FLAG_RAE`).
    pub const PD_FLAG_RAE: u32 = 1 << 28;
    pub const PD_FLAG_EN_INV: u32 = 3 << 24;

    /// `key_to_hw_index`: the key as the MPT and the MTT index hold it.
    pub const fn key_to_hw_index(key: u32) -> u32 {
        key.rotate_left(24)
    }

    /// `hw_index_to_key`: the key of MPT index `index`.
    pub const fn hw_index_to_key(index: u32) -> u32 {
        index.rotate_right(24)
    }
}

/// The QP context (`struct mlx4_qp_context`, 0xf8 bytes; `struct mlx4_qp_path` at
/// `PRI_PATH` and `ALT_PATH`), in the modify mailbox after the 8-byte
/// optional-parameter header (`OPTPAR`, then 4 reserved bytes).
#[allow(missing_docs)]
pub mod qp_context {
    /// Offset of the context in a modify mailbox.
    pub const MAILBOX_OFFSET: usize = 0x08;
    /// Offset of the optional-parameter mask in a modify mailbox.
    pub const OPTPAR: usize = 0x00;
    /// The transport in bits 16..24, the path-migration state in bits 11..13, the QP
    /// state (QUERY_QP) in bits 28..32.
    pub const FLAGS: usize = 0x00;
    pub const PD: usize = 0x04;
    /// The path MTU in bits 5..8, log2 of the largest message in bits 0..5.
    pub const MTU_MSGMAX: usize = 0x08;
    /// log2 of the entries in bits 3..7, log2 of the stride minus 4 in bits 0..3.
    pub const RQ_SIZE_STRIDE: usize = 0x09;
    pub const SQ_SIZE_STRIDE: usize = 0x0a;
    /// The UAR page whose send doorbell the QP's driver rings (low 24 bits).
    pub const USR_PAGE: usize = 0x0c;
    pub const LOCAL_QPN: usize = 0x10;
    pub const REMOTE_QPN: usize = 0x14;
    pub const PRI_PATH: usize = 0x18;
    pub const ALT_PATH: usize = 0x44;
    /// Size of a path (`struct mlx4_qp_path`).
    pub const PATH_SIZE: usize = 0x2c;
    /// In a path: the P_Key index, the source path bits, the destination LID, the ACK
    /// timeout (bits 3..8), the GID index, the hop limit, and `sched_queue` (bit 6: the
    /// port minus one; `0x83` is the IB default scheduling queue).
    pub const PATH_PKEY_INDEX: usize = 0x03;
    pub const PATH_GRH_MYLMC: usize = 0x05;
    pub const PATH_RLID: usize = 0x06;
    pub const PATH_ACKTO: usize = 0x08;
    pub const PATH_MGID_INDEX: usize = 0x09;
    pub const PATH_SCHED_QUEUE: usize = 0x20;
    /// ACK request frequency (bits 28..32), retry count (16..19), RNR retry (13..16),
    /// SRA max (21..24).
    pub const PARAMS1: usize = 0x70;
    pub const NEXT_SEND_PSN: usize = 0x78;
    pub const CQN_SEND: usize = 0x7c;
    pub const LAST_ACKED_PSN: usize = 0x88;
    /// Bits 15, 14, 13: remote read, write and atomic enable; RRA max in 21..24; the
    /// minimum RNR NAK timer in the next word's 24..29.
    pub const PARAMS2: usize = 0x90;
    pub const RNR_NEXTRECVPSN: usize = 0x94;
    pub const CQN_RECV: usize = 0x9c;
    pub const DB_REC_ADDR: usize = 0xa0;
    pub const QKEY: usize = 0xa8;
    /// Bit 24: the QP takes its receives from the SRQ in the low 24 bits.
    pub const SRQN: usize = 0xac;
    pub const LOG_PAGE_SIZE: usize = 0xc8;
    pub const MTT_BASE_ADDR_H: usize = 0xcb;
    pub const MTT_BASE_ADDR_L: usize = 0xcc;
    pub const SIZE: usize = 0xf8;
    /// `MLX4_QP_ST_*`, `FLAGS` bits 16..24.
    pub const ST_RC: u8 = 0;
    pub const ST_UC: u8 = 1;
    pub const ST_UD: u8 = 3;
    pub const ST_MLX: u8 = 7;
    /// `MLX4_QP_PM_MIGRATED`, in `FLAGS`.
    pub const PM_MIGRATED: u32 = 3 << 11;
    /// `MLX4_QP_BIT_*` in `PARAMS2`.
    pub const PARAMS2_RRE: u32 = 1 << 15;
    pub const PARAMS2_RWE: u32 = 1 << 14;
    pub const PARAMS2_RAE: u32 = 1 << 13;
    /// The three together.
    pub const PARAMS2_ACCESS: u32 = PARAMS2_RRE | PARAMS2_RWE | PARAMS2_RAE;
    /// `SRQN`'s bit that says "receives come from an SRQ".
    pub const SRQN_USE_SRQ: u32 = 1 << 24;
    /// `MLX4_IB_DEFAULT_SCHED_QUEUE`, with the port bit (6) clear.
    pub const SCHED_QUEUE_IB_DEFAULT: u8 = 0x83;
    /// QP0's (`MLX4_IB_DEFAULT_QP0_SCHED_QUEUE`).
    pub const SCHED_QUEUE_QP0: u8 = 0x3f;
}

/// The optional-parameter mask of a QP modify (`enum mlx4_qp_optpar`).
#[allow(missing_docs)]
pub mod qp_optpar {
    pub const ALT_ADDR_PATH: u32 = 1 << 0;
    pub const RRE: u32 = 1 << 1;
    pub const RAE: u32 = 1 << 2;
    pub const RWE: u32 = 1 << 3;
    pub const PKEY_INDEX: u32 = 1 << 4;
    pub const Q_KEY: u32 = 1 << 5;
    pub const RNR_TIMEOUT: u32 = 1 << 6;
    pub const PRIMARY_ADDR_PATH: u32 = 1 << 7;
    pub const SRA_MAX: u32 = 1 << 8;
    pub const RRA_MAX: u32 = 1 << 9;
    pub const PM_STATE: u32 = 1 << 10;
    pub const RETRY_COUNT: u32 = 1 << 12;
    pub const RNR_RETRY: u32 = 1 << 13;
    pub const ACK_TIMEOUT: u32 = 1 << 14;
    pub const SCHED_QUEUE: u32 = 1 << 16;
    pub const COUNTER_INDEX: u32 = 1 << 20;
    /// Any of the three remote access enables.
    pub const ACCESS: u32 = RRE | RAE | RWE;
}

/// A MAD as MAD_IFC carries it (256 bytes in, 256 out): the common MAD header and, for
/// an SMP, the attribute data at `SMP_DATA` (IBA 13.4.3, 14.2.1.1).
#[allow(missing_docs)]
pub mod mad {
    pub const SIZE: usize = 256;
    pub const BASE_VERSION: usize = 0x00;
    pub const MGMT_CLASS: usize = 0x01;
    pub const CLASS_VERSION: usize = 0x02;
    pub const METHOD: usize = 0x03;
    pub const STATUS: usize = 0x04;
    pub const TID: usize = 0x08;
    pub const ATTR_ID: usize = 0x10;
    pub const ATTR_MOD: usize = 0x14;
    /// A LID-routed SMP's data.
    pub const SMP_DATA: usize = 0x40;
    pub const CLASS_SUBN_LID_ROUTED: u8 = 0x01;
    pub const METHOD_GET: u8 = 0x01;
    pub const METHOD_SET: u8 = 0x02;
    pub const METHOD_GET_RESP: u8 = 0x81;
    pub const ATTR_NODE_INFO: u16 = 0x0011;
    pub const ATTR_PORT_INFO: u16 = 0x0015;
    pub const ATTR_GUID_INFO: u16 = 0x0014;
    pub const ATTR_PKEY_TABLE: u16 = 0x0016;
}

/// NodeInfo (IBA 14.2.5.3): byte offsets in its data, at a SMP's data.
#[allow(missing_docs)]
pub mod node_info {
    pub const SYS_IMAGE_GUID: usize = 4;
    pub const NODE_GUID: usize = 12;
    pub const PORT_GUID: usize = 20;
    pub const DEVICE_ID: usize = 30;
    pub const REVISION: usize = 32;
}

/// PortInfo (IBA 14.2.5.6): byte offsets in its 64 bytes, at a SMP's data.
#[allow(missing_docs)]
pub mod port_info {
    pub const GID_PREFIX: usize = 8;
    pub const LID: usize = 16;
    pub const SM_LID: usize = 18;
    pub const CAP_MASK: usize = 20;
    pub const LOCAL_PORT: usize = 28;
    pub const WIDTH_ENABLED: usize = 29;
    pub const WIDTH_SUPPORTED: usize = 30;
    pub const WIDTH_ACTIVE: usize = 31;
    /// High nibble: speeds supported; low nibble: the port state.
    pub const SPEED_STATE: usize = 32;
    /// High nibble: the physical state; low nibble: the down default.
    pub const PHYS_STATE: usize = 33;
    /// Low 3 bits: LMC.
    pub const LMC: usize = 34;
    /// High nibble: speed active; low nibble: speed enabled.
    pub const SPEED_ACTIVE: usize = 35;
    /// High nibble: neighbor MTU; low nibble: master SM SL.
    pub const MTU_SMSL: usize = 36;
    /// High nibble: VL cap.
    pub const VL_CAP: usize = 37;
    /// Low nibble: the MTU cap.
    pub const MTU_CAP: usize = 41;
    /// High nibble: operational VLs.
    pub const OPER_VLS: usize = 43;
    pub const GUID_CAP: usize = 50;
    /// Low 5 bits: the subnet timeout; bit 7: client reregister.
    pub const SUBNET_TIMEOUT: usize = 51;
}

/// A multicast group entry (`struct mlx4_mgm`), as READ_MCG and WRITE_MCG move it: one
/// link of a hash chain that starts at the bucket MGID_HASH names (the table's first
/// half; the second half, the AMGM, holds the chains' continuations).
///
/// The view is over the entry's bytes; reads and writes outside them read zero and
/// write nothing, as [`Mailbox`]'s do, so a short entry cannot make either side panic.
pub struct Mgm<T>(pub T);

impl Mgm<()> {
    const NEXT_GID_INDEX: usize = 0x00;
    const MEMBERS_COUNT: usize = 0x04;
    const GID: usize = 0x10;
    const QP: usize = 0x20;
    /// The member count's bits; the top two are the protocol.
    const COUNT_MASK: u32 = 0x00ff_ffff;
    const PROT_SHIFT: u32 = 30;
    /// `next_gid_index` holds the next entry's index shifted by 6.
    const NEXT_SHIFT: u32 = 6;
    /// A member's QP number (`MGM_QPN_MASK`).
    pub const QPN_MASK: u32 = 0x00ff_ffff;
    /// A member's bit: no copy of its own multicast sends (`MGM_BLCK_LB_BIT`).
    pub const BLOCK_LOOPBACK: u32 = 1 << 30;
    /// The protocol of an InfiniBand group (`MLX4_PROT_IB_IPV6`).
    pub const PROT_IB: u8 = 0;

    /// Member slots in an entry of `entry_size` bytes (`mlx4_get_qp_per_mgm`).
    pub const fn slots(entry_size: usize) -> usize {
        (entry_size.saturating_sub(Self::QP)) / 4
    }
}

impl<T: AsRef<[u8]>> Mgm<T> {
    fn field(&self) -> Mailbox<&[u8]> {
        Mailbox(self.0.as_ref())
    }

    /// The next entry of the chain; 0 ends it (entry 0 is a bucket, never a link).
    pub fn next_index(&self) -> u32 {
        self.field().u32(Mgm::NEXT_GID_INDEX) >> Mgm::NEXT_SHIFT
    }

    /// Members; 0 is an empty entry.
    pub fn members(&self) -> u32 {
        self.field().u32(Mgm::MEMBERS_COUNT) & Mgm::COUNT_MASK
    }

    /// The group's protocol ([`Mgm::PROT_IB`] for InfiniBand).
    pub fn protocol(&self) -> u8 {
        (self.field().u32(Mgm::MEMBERS_COUNT) >> Mgm::PROT_SHIFT) as u8
    }

    /// The group's GID.
    pub fn gid(&self) -> [u8; 16] {
        let mut gid = [0u8; 16];
        if let Some(src) = self.0.as_ref().get(Mgm::GID..Mgm::GID + 16) {
            gid.copy_from_slice(src);
        }
        gid
    }

    /// Whether this is `gid`'s entry for `protocol`, with members.
    pub fn is_group(&self, gid: &[u8; 16], protocol: u8) -> bool {
        self.members() != 0 && self.protocol() == protocol && self.gid() == *gid
    }

    /// Member slot `slot` as written: the QP number and the loopback bit.
    pub fn member(&self, slot: usize) -> u32 {
        self.field()
            .u32(Mgm::QP.saturating_add(slot.saturating_mul(4)))
    }

    /// The members' QP numbers, in slot order; at most `most`.
    pub fn member_qpns(&self, most: usize) -> impl Iterator<Item = u32> + '_ {
        let count = (self.members() as usize).min(most);
        (0..count).map(move |slot| self.member(slot) & Mgm::QPN_MASK)
    }

    /// The slot holding QP `qpn`, if it is a member.
    pub fn slot_of(&self, qpn: u32) -> Option<usize> {
        (0..self.members() as usize).find(|&slot| self.member(slot) & Mgm::QPN_MASK == qpn)
    }
}

impl<T: AsMut<[u8]>> Mgm<T> {
    fn field_mut(&mut self) -> Mailbox<&mut [u8]> {
        Mailbox(self.0.as_mut())
    }

    /// Links the entry to `index` (0: the chain ends here).
    pub fn set_next_index(&mut self, index: u32) {
        self.field_mut()
            .set_u32(Mgm::NEXT_GID_INDEX, index << Mgm::NEXT_SHIFT);
    }

    /// Sets the member count and the protocol.
    pub fn set_members(&mut self, count: u32, protocol: u8) {
        let word = (count & Mgm::COUNT_MASK) | (u32::from(protocol) << Mgm::PROT_SHIFT);
        self.field_mut().set_u32(Mgm::MEMBERS_COUNT, word);
    }

    /// Sets the group's GID.
    pub fn set_gid(&mut self, gid: &[u8; 16]) {
        self.field_mut().put(Mgm::GID, gid);
    }

    /// Writes member slot `slot`.
    pub fn set_member(&mut self, slot: usize, value: u32) {
        self.field_mut()
            .set_u32(Mgm::QP.saturating_add(slot.saturating_mul(4)), value);
    }
}
