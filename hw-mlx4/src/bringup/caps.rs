//! What the firmware says about itself and the device: QUERY_FW, QUERY_DEV_CAP and
//! QUERY_ADAPTER, parsed from their output mailboxes and checked before the driver sizes
//! anything from them.
//!
//! Follows `mlx4_QUERY_FW`, `mlx4_QUERY_DEV_CAP` and `mlx4_QUERY_ADAPTER` in
//! `drivers/net/ethernet/mellanox/mlx4/fw.c`, and the checks of `mlx4_dev_cap` in
//! `main.c`. The field offsets are [`crate::wire::fw`], shared with the device model.
//! A value the driver cannot use is an [`InvalidCap`] naming the field, never a panic.

use crate::wire::fw::{query_adapter, query_dev_cap as dc, query_fw, query_port, Mailbox};

use super::memory::ICM_PAGE_SIZE;

/// A value reported by the firmware that the driver refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidCap {
    /// The field, as upstream names its offset (`QUERY_DEV_CAP_MAX_QP`, ...).
    pub field: &'static str,
    /// The value read (decoded: a count, not its log, where the field holds a log).
    pub value: u64,
    /// What the driver accepts.
    pub expected: &'static str,
}

fn check(
    field: &'static str,
    value: u64,
    ok: bool,
    expected: &'static str,
) -> Result<(), InvalidCap> {
    if ok {
        Ok(())
    } else {
        Err(InvalidCap {
            field,
            value,
            expected,
        })
    }
}

/// The command interface revisions this driver speaks (`MLX4_COMMAND_INTERFACE_MIN_REV`
/// to `_MAX_REV`).
pub const CMD_IF_REV_SUPPORTED: core::ops::RangeInclusive<u16> = 2..=3;

/// The most ports a ConnectX-3 has (`MLX4_MAX_PORTS`).
pub const MAX_PORTS: u8 = 2;

/// A BAR0 region QUERY_FW points at: the catastrophic error buffer, the clear-interrupt
/// register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// The BAR (0 or 2).
    pub bar: u8,
    /// The offset in it.
    pub offset: u64,
}

/// QUERY_FW's answer (`struct mlx4_fw` and the firmware fields of `mlx4_caps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwInfo {
    /// Major, minor and subminor version.
    pub version: (u16, u16, u16),
    /// The command interface revision.
    pub cmd_if_rev: u16,
    /// How many commands may be outstanding in event mode (`max_cmds`).
    pub max_cmds: u32,
    /// The firmware area the driver must give with MAP_FA, in 4 KiB pages.
    pub fw_pages: u16,
    /// The catastrophic error buffer.
    pub catas: BarRegion,
    /// Its size in 32-bit words.
    pub catas_words: u32,
    /// The clear-interrupt register.
    pub clr_int: BarRegion,
}

/// The BAR a QUERY_FW `*_BAR` byte names: `(bar / 2) << 6` (`mlx4_pci_bar` undone).
fn bar_of(field: &'static str, raw: u8) -> Result<u8, InvalidCap> {
    let bar = (raw >> 6) * 2;
    check(field, u64::from(bar), bar == 0 || bar == 2, "BAR 0 or 2")?;
    Ok(bar)
}

impl FwInfo {
    /// Size of the part of the output mailbox this parser reads.
    pub const OUT_SIZE: usize = query_fw::OUT_SIZE;

    /// Parses QUERY_FW's output mailbox.
    pub fn parse(out: &[u8]) -> Result<Self, InvalidCap> {
        let m = Mailbox(out);
        let cmd_if_rev = m.u16(query_fw::CMD_IF_REV);
        check(
            "QUERY_FW_CMD_IF_REV",
            cmd_if_rev.into(),
            CMD_IF_REV_SUPPORTED.contains(&cmd_if_rev),
            "command interface revision 2 or 3",
        )?;
        let fw_pages = m.u16(query_fw::SIZE);
        check(
            "QUERY_FW_SIZE",
            fw_pages.into(),
            fw_pages != 0,
            "a firmware area of at least one page",
        )?;
        let log_max_cmds = m.u8(query_fw::MAX_CMD);
        check(
            "QUERY_FW_MAX_CMD",
            log_max_cmds.into(),
            log_max_cmds <= 8,
            "at most 2^8 outstanding commands",
        )?;
        let catas_words = m.u32(query_fw::ERR_SIZE);
        check(
            "QUERY_FW_ERR_SIZE",
            catas_words.into(),
            catas_words <= 0x100,
            "at most 256 words",
        )?;
        Ok(Self {
            version: (
                m.u16(query_fw::VER_MAJOR),
                m.u16(query_fw::VER_MINOR),
                m.u16(query_fw::VER_SUBMINOR),
            ),
            cmd_if_rev,
            max_cmds: 1 << log_max_cmds,
            fw_pages,
            catas: BarRegion {
                bar: bar_of("QUERY_FW_ERR_BAR", m.u8(query_fw::ERR_BAR))?,
                offset: m.u64(query_fw::ERR_START),
            },
            catas_words,
            clr_int: BarRegion {
                bar: bar_of("QUERY_FW_CLR_INT_BAR", m.u8(query_fw::CLR_INT_BAR))?,
                offset: m.u64(query_fw::CLR_INT_BASE),
            },
        })
    }
}

/// The size of each context entry the firmware keeps in ICM, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySizes {
    /// QP context (`qpc_entry_sz`).
    pub qpc: u32,
    /// RDMA responder context, per outstanding read (`rdmarc_entry_sz`).
    pub rdmarc: u32,
    /// Auxiliary QP context (`aux_entry_sz`).
    pub auxc: u32,
    /// Alternate path context (`altc_entry_sz`).
    pub altc: u32,
    /// EQ context (`eqc_entry_sz`).
    pub eqc: u32,
    /// CQ context (`cqc_entry_sz`).
    pub cqc: u32,
    /// SRQ context (`srq_entry_sz`).
    pub srqc: u32,
    /// Compressed MPT (`cmpt_entry_sz`).
    pub cmpt: u32,
    /// MTT entry (`mtt_entry_sz`).
    pub mtt: u32,
    /// Data MPT (`dmpt_entry_sz`).
    pub dmpt: u32,
}

/// QUERY_DEV_CAP's answer, decoded to counts (`struct mlx4_dev_cap`): what the profile
/// and, later, the verbs layer size themselves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevCaps {
    /// QPs the device supports, and the first ones its firmware keeps.
    pub max_qps: u32,
    /// QPs reserved for the firmware (`reserved_qps_cnt[MLX4_QP_REGION_FW]`).
    pub reserved_qps: u32,
    /// The largest work queue, in WQEs.
    pub max_qp_size: u32,
    /// SRQs supported.
    pub max_srqs: u32,
    /// SRQs reserved.
    pub reserved_srqs: u32,
    /// CQs supported.
    pub max_cqs: u32,
    /// CQs reserved.
    pub reserved_cqs: u32,
    /// The largest CQ, in CQEs.
    pub max_cq_size: u32,
    /// EQs supported.
    pub max_eqs: u32,
    /// EQs reserved.
    pub reserved_eqs: u32,
    /// MPTs (memory keys) supported.
    pub max_mpts: u64,
    /// MPTs reserved.
    pub reserved_mrws: u32,
    /// MTT entries reserved for the firmware.
    pub reserved_mtts: u32,
    /// Ports (1 or 2).
    pub num_ports: u8,
    /// Virtual lanes per port.
    pub max_vl: u8,
    /// The UAR area at the start of BAR2, in bytes.
    pub uar_size: u64,
    /// UARs reserved.
    pub reserved_uars: u8,
    /// The smallest page the device maps, in bytes.
    pub min_page_size: u32,
    /// Scatter entries per send and receive WQE.
    pub max_sq_sg: u8,
    /// Scatter entries per receive WQE.
    pub max_rq_sg: u8,
    /// The largest send WQE, in bytes.
    pub max_sq_desc_size: u16,
    /// The largest receive WQE, in bytes.
    pub max_rq_desc_size: u16,
    /// Multicast groups supported.
    pub max_mcgs: u32,
    /// QPs per multicast group.
    pub max_qp_per_mcg: u32,
    /// PDs supported.
    pub max_pds: u32,
    /// PDs reserved.
    pub reserved_pds: u8,
    /// Context entry sizes.
    pub entry_sizes: EntrySizes,
    /// `MLX4_DEV_CAP_FLAG_*`.
    pub flags: u64,
    /// `MLX4_BMME_FLAG_*`.
    pub bmme_flags: u32,
    /// The reserved L_Key.
    pub reserved_lkey: u32,
    /// The most ICM the device can address, in bytes.
    pub max_icm_size: u64,
}

/// `1 << log`, refusing a log beyond `max_log` (the field's meaningful width).
fn pow2(field: &'static str, log: u8, max_log: u8) -> Result<u64, InvalidCap> {
    check(
        field,
        log.into(),
        log <= max_log,
        "a log2 within the field's range",
    )?;
    Ok(1u64 << log)
}

/// An entry size: a power of two from 1 to 4096 bytes, since tables are packed in ICM by
/// powers of two (`mlx4_make_profile`).
fn entry_size(field: &'static str, raw: u16) -> Result<u32, InvalidCap> {
    check(
        field,
        raw.into(),
        raw.is_power_of_two() && usize::from(raw) <= ICM_PAGE_SIZE,
        "a power of two from 1 to 4096 bytes",
    )?;
    Ok(raw.into())
}

impl DevCaps {
    /// Size of the part of the output mailbox this parser reads.
    pub const OUT_SIZE: usize = dc::OUT_SIZE;

    /// Parses QUERY_DEV_CAP's output mailbox and checks it against what the driver can
    /// use; `uar_bar_size` is the length of BAR2, where the UARs live.
    pub fn parse(out: &[u8], uar_bar_size: u64) -> Result<Self, InvalidCap> {
        let m = Mailbox(out);
        // Counts of QPs, SRQs and CQs are 24-bit numbers in contexts and doorbells.
        let max_qps = pow2("QUERY_DEV_CAP_MAX_QP", m.u8(dc::MAX_QP) & 0x1f, 23)?;
        let reserved_qps = pow2("QUERY_DEV_CAP_RSVD_QP", m.u8(dc::RSVD_QP) & 0xf, 15)?;
        check(
            "QUERY_DEV_CAP_RSVD_QP",
            reserved_qps,
            reserved_qps < max_qps,
            "fewer than QUERY_DEV_CAP_MAX_QP",
        )?;
        let max_srqs = pow2("QUERY_DEV_CAP_MAX_SRQ", m.u8(dc::MAX_SRQ) & 0x1f, 23)?;
        let reserved_srqs = pow2("QUERY_DEV_CAP_RSVD_SRQ", m.u8(dc::RSVD_SRQ) >> 4, 15)?;
        check(
            "QUERY_DEV_CAP_RSVD_SRQ",
            reserved_srqs,
            reserved_srqs < max_srqs,
            "fewer than QUERY_DEV_CAP_MAX_SRQ",
        )?;
        let max_cqs = pow2("QUERY_DEV_CAP_MAX_CQ", m.u8(dc::MAX_CQ) & 0x1f, 23)?;
        let reserved_cqs = pow2("QUERY_DEV_CAP_RSVD_CQ", m.u8(dc::RSVD_CQ) & 0xf, 15)?;
        check(
            "QUERY_DEV_CAP_RSVD_CQ",
            reserved_cqs,
            reserved_cqs < max_cqs,
            "fewer than QUERY_DEV_CAP_MAX_CQ",
        )?;
        let max_eqs = pow2("QUERY_DEV_CAP_MAX_EQ", m.u8(dc::MAX_EQ) & 0xf, 10)?;
        let reserved_eqs = pow2("QUERY_DEV_CAP_RSVD_EQ", m.u8(dc::RSVD_EQ) & 0xf, 10)?;
        check(
            "QUERY_DEV_CAP_RSVD_EQ",
            reserved_eqs,
            reserved_eqs < max_eqs,
            "fewer than QUERY_DEV_CAP_MAX_EQ",
        )?;
        let max_mpts = pow2("QUERY_DEV_CAP_MAX_MPT", m.u8(dc::MAX_MPT) & 0x3f, 32)?;
        let reserved_mrws = pow2("QUERY_DEV_CAP_RSVD_MRW", m.u8(dc::RSVD_MRW) & 0xf, 15)?;
        check(
            "QUERY_DEV_CAP_RSVD_MRW",
            reserved_mrws,
            reserved_mrws < max_mpts,
            "fewer than QUERY_DEV_CAP_MAX_MPT",
        )?;
        let reserved_mtts = pow2("QUERY_DEV_CAP_RSVD_MTT", m.u8(dc::RSVD_MTT) >> 4, 15)?;

        let vl_port = m.u8(dc::VL_PORT);
        let num_ports = vl_port & 0xf;
        check(
            "QUERY_DEV_CAP_VL_PORT",
            num_ports.into(),
            (1..=MAX_PORTS).contains(&num_ports),
            "1 or 2 ports",
        )?;
        // `mlx4_dev_cap`: the device must map pages as small as the host's (ICM pages
        // are 4 KiB), and its UARs must fit in BAR2.
        let min_page_size = pow2("QUERY_DEV_CAP_PAGE_SZ", m.u8(dc::PAGE_SZ), 31)?;
        check(
            "QUERY_DEV_CAP_PAGE_SZ",
            min_page_size,
            min_page_size <= ICM_PAGE_SIZE as u64,
            "at most 4096 bytes",
        )?;
        let uar_size = pow2(
            "QUERY_DEV_CAP_UAR_SZ",
            (m.u8(dc::UAR_SZ) & 0x3f).saturating_add(20),
            40,
        )?;
        check(
            "QUERY_DEV_CAP_UAR_SZ",
            uar_size,
            uar_size <= uar_bar_size,
            "a UAR area within BAR2",
        )?;
        let max_icm_size = m.u64(dc::MAX_ICM_SZ);
        check(
            "QUERY_DEV_CAP_MAX_ICM_SZ",
            max_icm_size,
            max_icm_size >= ICM_PAGE_SIZE as u64,
            "at least one ICM page",
        )?;
        let max_mcgs = pow2("QUERY_DEV_CAP_MAX_MCG", m.u8(dc::MAX_MCG), 24)?;
        let max_qp_per_mcg = pow2("QUERY_DEV_CAP_MAX_QP_MCG", m.u8(dc::MAX_QP_MCG), 24)?;
        let max_pds = pow2("QUERY_DEV_CAP_MAX_PD", m.u8(dc::MAX_PD) & 0x3f, 24)?;
        let max_qp_size = pow2("QUERY_DEV_CAP_MAX_QP_SZ", m.u8(dc::MAX_QP_SZ), 24)?;
        let max_cq_size = pow2("QUERY_DEV_CAP_MAX_CQ_SZ", m.u8(dc::MAX_CQ_SZ), 24)?;

        // Counts were checked to fit their fields above: these conversions cannot fail,
        // and fall back to the refusal rather than panic if they ever did.
        let u32_of = |field: &'static str, v: u64| {
            u32::try_from(v).map_err(|_| InvalidCap {
                field,
                value: v,
                expected: "a 32-bit count",
            })
        };
        Ok(Self {
            max_qps: u32_of("QUERY_DEV_CAP_MAX_QP", max_qps)?,
            reserved_qps: u32_of("QUERY_DEV_CAP_RSVD_QP", reserved_qps)?,
            max_qp_size: u32_of("QUERY_DEV_CAP_MAX_QP_SZ", max_qp_size)?,
            max_srqs: u32_of("QUERY_DEV_CAP_MAX_SRQ", max_srqs)?,
            reserved_srqs: u32_of("QUERY_DEV_CAP_RSVD_SRQ", reserved_srqs)?,
            max_cqs: u32_of("QUERY_DEV_CAP_MAX_CQ", max_cqs)?,
            reserved_cqs: u32_of("QUERY_DEV_CAP_RSVD_CQ", reserved_cqs)?,
            max_cq_size: u32_of("QUERY_DEV_CAP_MAX_CQ_SZ", max_cq_size)?,
            max_eqs: u32_of("QUERY_DEV_CAP_MAX_EQ", max_eqs)?,
            reserved_eqs: u32_of("QUERY_DEV_CAP_RSVD_EQ", reserved_eqs)?,
            max_mpts,
            reserved_mrws: u32_of("QUERY_DEV_CAP_RSVD_MRW", reserved_mrws)?,
            reserved_mtts: u32_of("QUERY_DEV_CAP_RSVD_MTT", reserved_mtts)?,
            num_ports,
            max_vl: vl_port >> 4,
            uar_size,
            reserved_uars: m.u8(dc::RSVD_UAR) >> 4,
            min_page_size: u32_of("QUERY_DEV_CAP_PAGE_SZ", min_page_size)?,
            max_sq_sg: m.u8(dc::MAX_SG_SQ),
            max_rq_sg: m.u8(dc::MAX_SG_RQ),
            max_sq_desc_size: m.u16(dc::MAX_DESC_SZ_SQ),
            max_rq_desc_size: m.u16(dc::MAX_DESC_SZ_RQ),
            max_mcgs: u32_of("QUERY_DEV_CAP_MAX_MCG", max_mcgs)?,
            max_qp_per_mcg: u32_of("QUERY_DEV_CAP_MAX_QP_MCG", max_qp_per_mcg)?,
            max_pds: u32_of("QUERY_DEV_CAP_MAX_PD", max_pds)?,
            reserved_pds: m.u8(dc::RSVD_PD) >> 4,
            entry_sizes: EntrySizes {
                qpc: entry_size("QUERY_DEV_CAP_QPC_ENTRY_SZ", m.u16(dc::QPC_ENTRY_SZ))?,
                rdmarc: entry_size("QUERY_DEV_CAP_RDMARC_ENTRY_SZ", m.u16(dc::RDMARC_ENTRY_SZ))?,
                auxc: entry_size("QUERY_DEV_CAP_AUX_ENTRY_SZ", m.u16(dc::AUX_ENTRY_SZ))?,
                altc: entry_size("QUERY_DEV_CAP_ALTC_ENTRY_SZ", m.u16(dc::ALTC_ENTRY_SZ))?,
                eqc: entry_size("QUERY_DEV_CAP_EQC_ENTRY_SZ", m.u16(dc::EQC_ENTRY_SZ))?,
                cqc: entry_size("QUERY_DEV_CAP_CQC_ENTRY_SZ", m.u16(dc::CQC_ENTRY_SZ))?,
                srqc: entry_size("QUERY_DEV_CAP_SRQ_ENTRY_SZ", m.u16(dc::SRQ_ENTRY_SZ))?,
                cmpt: entry_size("QUERY_DEV_CAP_C_MPT_ENTRY_SZ", m.u16(dc::C_MPT_ENTRY_SZ))?,
                mtt: entry_size("QUERY_DEV_CAP_MTT_ENTRY_SZ", m.u16(dc::MTT_ENTRY_SZ))?,
                dmpt: entry_size("QUERY_DEV_CAP_D_MPT_ENTRY_SZ", m.u16(dc::D_MPT_ENTRY_SZ))?,
            },
            flags: (u64::from(m.u32(dc::EXT_FLAGS)) << 32) | u64::from(m.u32(dc::FLAGS)),
            bmme_flags: m.u32(dc::BMME_FLAGS),
            reserved_lkey: m.u32(dc::RSVD_LKEY),
            max_icm_size,
        })
    }
}

/// QUERY_ADAPTER's answer (`struct mlx4_adapter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterInfo {
    /// The INTx pin.
    pub inta_pin: u8,
    /// The board id (PSID), NUL-padded ASCII.
    pub board_id: [u8; 16],
}

impl AdapterInfo {
    /// The board id as text: up to its first NUL, `"?"` if that is not printable ASCII.
    pub fn board_id_str(&self) -> &str {
        let len = self
            .board_id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.board_id.len());
        let id = self.board_id.get(..len).unwrap_or_default();
        if id.iter().all(|b| b.is_ascii_graphic()) {
            core::str::from_utf8(id).unwrap_or("?")
        } else {
            "?"
        }
    }

    /// Size of the part of the output mailbox this parser reads.
    pub const OUT_SIZE: usize = query_adapter::VSD + query_adapter::VSD_BOARD_ID + 16;

    /// Parses QUERY_ADAPTER's output mailbox. The firmware stores the board id with each
    /// 32-bit word byte-swapped (`get_board_id`).
    pub fn parse(out: &[u8]) -> Self {
        let m = Mailbox(out);
        let mut board_id = [0u8; 16];
        let base = query_adapter::VSD + query_adapter::VSD_BOARD_ID;
        for (i, word) in board_id.chunks_exact_mut(4).enumerate() {
            word.copy_from_slice(&m.u32(base + 4 * i).to_le_bytes());
        }
        Self {
            inta_pin: m.u8(query_adapter::INTA_PIN),
            board_id,
        }
    }
}

/// QUERY_PORT's answer for an InfiniBand port (`mlx4_QUERY_PORT`, the IB part of
/// `mlx4_dev_port`), checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCaps {
    /// The port number (1-based).
    pub port: u8,
    /// Whether the link is up.
    pub link_up: bool,
    /// The IB MTU cap (`IB_MTU_256` 1 to `IB_MTU_4096` 5).
    pub ib_mtu_cap: u8,
    /// The link widths supported (1x = 1, 4x = 2, 8x = 4, 12x = 8, or'ed).
    pub width_cap: u8,
    /// GID table entries.
    pub gid_table_len: u32,
    /// P_Key table entries.
    pub pkey_table_len: u32,
    /// The VL cap.
    pub max_vl: u8,
}

impl PortCaps {
    /// Size of the part of the output mailbox this parser reads.
    pub const OUT_SIZE: usize = query_port::OUT_SIZE;

    /// Parses QUERY_PORT's output mailbox for port `port`; a port that cannot run
    /// InfiniBand, or reports caps outside the IB ranges, is refused.
    pub fn parse(port: u8, out: &[u8]) -> Result<Self, InvalidCap> {
        let m = Mailbox(out);
        let supported = m.u8(query_port::SUPPORTED_TYPE);
        check(
            "QUERY_PORT_SUPPORTED_TYPE",
            supported.into(),
            supported & 0x1 != 0,
            "an InfiniBand-capable port",
        )?;
        let ib_mtu_cap = m.u8(query_port::MTU) & 0xf;
        check(
            "QUERY_PORT_MTU",
            ib_mtu_cap.into(),
            (1..=5).contains(&ib_mtu_cap),
            "an IB MTU from 256 (1) to 4096 (5)",
        )?;
        let width_cap = m.u8(query_port::WIDTH) & 0xf;
        check(
            "QUERY_PORT_WIDTH",
            width_cap.into(),
            width_cap != 0,
            "at least one link width",
        )?;
        let gid_pkey = m.u8(query_port::MAX_GID_PKEY);
        let gid_table_len = pow2("QUERY_PORT_MAX_GID", gid_pkey >> 4, 7)? as u32;
        let pkey_table_len = pow2("QUERY_PORT_MAX_PKEY", gid_pkey & 0xf, 15)? as u32;
        let max_vl = m.u8(query_port::MAX_VL) & 0xf;
        check(
            "QUERY_PORT_MAX_VL",
            max_vl.into(),
            (1..=15).contains(&max_vl),
            "1 to 15 VLs",
        )?;
        Ok(Self {
            port,
            link_up: supported & 0x80 != 0,
            ib_mtu_cap,
            width_cap,
            gid_table_len,
            pkey_table_len,
            max_vl,
        })
    }
}
