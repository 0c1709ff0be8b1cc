//! The firmware's commands: what each does to the device's state, and the PRM status it
//! returns. A command the device does not know, or one in the wrong firmware state, is a
//! driver error and a clear status, never a crash.
//!
//! Source: `drivers/net/ethernet/mellanox/mlx4/` (`fw.c`, `icm.c`, `eq.c`, `cq.c`,
//! `qp.c`, `mr.c`, `srq.c`, `mcg.c`, `port.c`) for what the driver sends and reads.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::icm::VpmEntry;
use super::{Dma, EventQueue, FwState, Hca};
use crate::wire::cmd::{opcode, CmdStatus, HcrCommand};
use crate::wire::fw::{
    bmme_flag, dev_cap_flag, eq_context, init_hca, mod_stat_cfg, query_adapter, query_dev_cap,
    query_fw, query_hca, query_port, set_port, Mailbox, Mgm, MAILBOX_SIZE,
};

/// The device's capabilities, as QUERY_DEV_CAP and QUERY_PORT report them: a ConnectX-3
/// with two InfiniBand ports, sized down where the driver sizes its ICM from them.
pub mod caps {
    /// Firmware version 2.42.5000 (the last ConnectX-3 release).
    pub const FW_VERSION: (u16, u16, u16) = (2, 42, 5000);
    /// Command interface revision 3 (`MLX4_COMMAND_INTERFACE_NEW_PORT_CMDS`).
    pub const CMD_IF_REV: u16 = 3;
    /// Firmware area, in 4 KiB pages.
    pub const FW_PAGES: u16 = 16;
    pub const PORTS: u8 = 2;
    pub const LOG_MAX_QP: u8 = 17;
    pub const LOG_RSVD_QP: u8 = 6;
    pub const LOG_MAX_QP_SZ: u8 = 14;
    pub const LOG_MAX_SRQ: u8 = 16;
    pub const LOG_RSVD_SRQ: u8 = 6;
    pub const LOG_MAX_SRQ_SZ: u8 = 15;
    pub const LOG_MAX_CQ: u8 = 16;
    pub const LOG_RSVD_CQ: u8 = 7;
    pub const LOG_MAX_CQ_SZ: u8 = 22;
    pub const LOG_MAX_EQ: u8 = 5;
    pub const LOG_RSVD_EQ: u8 = 2;
    pub const LOG_MAX_MPT: u8 = 24;
    pub const LOG_RSVD_MRW: u8 = 4;
    pub const LOG_RSVD_MTT: u8 = 4;
    pub const RSVD_UARS: u8 = 1;
    /// log2 of the UAR area in MiB: 2 MiB, 512 pages of 4 KiB.
    pub const LOG_UAR_SZ_MB: u8 = 1;
    pub const RSVD_PDS: u8 = 4;
    pub const LOG_MAX_PD: u8 = 17;
    pub const LOG_MAX_MCG: u8 = 13;
    pub const LOG_MAX_QP_MCG: u8 = 7;
    pub const MAX_SG: u8 = 32;
    pub const MAX_DESC_SZ_SQ: u16 = 1008;
    pub const MAX_DESC_SZ_RQ: u16 = 512;
    pub const QPC_ENTRY_SZ: u16 = 256;
    pub const RDMARC_ENTRY_SZ: u16 = 32;
    pub const AUX_ENTRY_SZ: u16 = 64;
    pub const ALTC_ENTRY_SZ: u16 = 128;
    pub const EQC_ENTRY_SZ: u16 = 64;
    pub const CQC_ENTRY_SZ: u16 = 64;
    pub const SRQ_ENTRY_SZ: u16 = 32;
    pub const CMPT_ENTRY_SZ: u16 = 64;
    pub const MTT_ENTRY_SZ: u16 = 8;
    pub const DMPT_ENTRY_SZ: u16 = 64;
    pub const MAX_ICM_SZ: u64 = 1 << 40;
    /// The core clock, in MHz (QUERY_HCA).
    pub const CORE_CLOCK_MHZ: u16 = 427;
    /// IB MTU cap 4096 (5), 4x links, 128 GIDs, 128 P_Keys, VL0..7.
    pub const IB_MTU: u8 = 5;
    pub const PORT_WIDTH: u8 = 3;
    pub const LOG_GIDS: u8 = 7;
    pub const LOG_PKEYS: u8 = 7;
    pub const MAX_VL: u8 = 8;
    /// The board id the driver prints (`board_id`): a ConnectX-3 VPI PSID.
    pub const BOARD_ID: &[u8; 16] = b"MT_1090120019\0\0\0";
}

/// What INIT_HCA told the device about ICM.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct InitHcaParams {
    pub log_num_qps: u8,
    pub log_num_cqs: u8,
    pub log_num_srqs: u8,
    pub log_num_eqs: u8,
    pub log_mpt_sz: u8,
    /// The MTT table's ICM address: MTT offsets in contexts are relative to it.
    pub mtt_base: u64,
    /// The QP, CQ and dMPT context tables' ICM addresses: a context the driver hands
    /// over must lie in ICM it mapped (`mlx4_table_get` before SW2HW/RST2INIT).
    pub qpc_base: u64,
    pub cqc_base: u64,
    pub dmpt_base: u64,
    /// The multicast table: entry size, hash size and whole size, as log2.
    pub log_mc_entry_sz: u8,
    pub log_mc_hash_sz: u8,
    pub log_mc_table_sz: u8,
}

/// A QP's state in the firmware (`enum mlx4_qp_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QpStateKind {
    Reset,
    Init,
    Rtr,
    Rts,
    Sqd,
    Sqer,
    Error,
}

impl QpStateKind {
    /// The PRM's encoding (`enum mlx4_qp_state`).
    pub fn prm_value(self) -> u8 {
        match self {
            Self::Reset => 0,
            Self::Init => 1,
            Self::Rtr => 2,
            Self::Rts => 3,
            Self::Sqer => 4,
            Self::Sqd => 5,
            Self::Error => 6,
        }
    }
}

/// The most VPM entries MAP_FA and MAP_ICM_AUX may hand over, and ICM chunks MAP_ICM
/// may map, in all.
const MAX_VPM_ENTRIES: usize = 4096;
const MAX_ICM_CHUNKS: usize = 1 << 16;

impl Hca {
    pub(super) fn fw_pages(&self) -> u64 {
        self.fw_area
            .iter()
            .map(|e| 1u64.checked_shl(e.log_pages).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add)
    }
}

/// Size of a QP context (`struct mlx4_qp_context`).
const QP_CONTEXT_SIZE: usize = 0xf8;

/// A QP the driver moved out of RESET: its state and the last context it gave.
#[derive(Clone, Debug)]
pub(super) struct QpState {
    pub state: QpStateKind,
    /// Where its queues are and how far the device got (from RST2INIT on).
    pub queues: Option<super::datapath::QpQueues>,
    /// The context as the transitions built it up, for QUERY_QP.
    pub context: Vec<u8>,
}

type Outcome = (CmdStatus, Option<u64>);

impl Hca {
    /// Executes one command.
    pub(super) fn command(&mut self, dma: &dyn Dma, cmd: &HcrCommand) -> Outcome {
        let result = self.dispatch(dma, cmd);
        match result {
            Ok(out) => (CmdStatus::Ok, out),
            Err((status, why)) => {
                self.driver_error(format!(
                    "command {} ({:#x}) in_mod {:#x} op_mod {}: {why} (status {status:?})",
                    opcode_name(cmd.opcode),
                    cmd.opcode,
                    cmd.in_modifier,
                    cmd.op_modifier
                ));
                (status, None)
            }
        }
    }

    fn need(&self, wanted: &[FwState], what: u16) -> Result<(), (CmdStatus, String)> {
        if wanted.contains(&self.fw) {
            Ok(())
        } else {
            Err((
                CmdStatus::BadSysState,
                format!("{} with the firmware {:?}", opcode_name(what), self.fw),
            ))
        }
    }

    fn dispatch(
        &mut self,
        dma: &dyn Dma,
        cmd: &HcrCommand,
    ) -> Result<Option<u64>, (CmdStatus, String)> {
        use FwState::*;
        let running = [Running, Initialized];
        match cmd.opcode {
            opcode::QUERY_FW => {
                let mut out = Mailbox(vec![0u8; query_fw::OUT_SIZE]);
                let (major, minor, subminor) = caps::FW_VERSION;
                out.set_u16(query_fw::SIZE, caps::FW_PAGES);
                out.set_u16(query_fw::VER_MAJOR, major);
                out.set_u16(query_fw::VER_SUBMINOR, subminor);
                out.set_u16(query_fw::VER_MINOR, minor);
                out.set_u16(query_fw::CMD_IF_REV, caps::CMD_IF_REV);
                out.set_u8(query_fw::MAX_CMD, 4);
                out.set_u64(query_fw::ERR_START, super::layout::CATAS_OFFSET);
                out.set_u32(query_fw::ERR_SIZE, super::layout::CATAS_WORDS);
                out.set_u8(query_fw::ERR_BAR, 0);
                out.set_u64(query_fw::CLR_INT_BASE, super::layout::CLR_INT_OFFSET);
                out.set_u8(query_fw::CLR_INT_BAR, 0);
                self.write_out(dma, cmd, &out.0)?;
                Ok(None)
            }
            opcode::MAP_FA => {
                self.need(&[Reset, FwMapped], cmd.opcode)?;
                let entries = self.vpm(dma, cmd)?;
                if self.fw_area.len() + entries.len() > MAX_VPM_ENTRIES {
                    return Err((
                        CmdStatus::ExceedsLimit,
                        "more firmware area than the device needs".into(),
                    ));
                }
                self.fw_area.extend(entries);
                let pages = self.fw_pages();
                if pages >= u64::from(caps::FW_PAGES) {
                    self.fw = FwMapped;
                }
                Ok(None)
            }
            opcode::RUN_FW => {
                self.need(&[FwMapped], cmd.opcode)?;
                self.fw = Running;
                let pages = self.fw_pages();
                self.info(format!(
                    "firmware running ({} KiB firmware area)",
                    pages.saturating_mul(4)
                ));
                Ok(None)
            }
            opcode::MOD_STAT_CFG => {
                self.need(&running, cmd.opcode)?;
                // The driver overrides the ICM page size to 4 KiB (`mlx4_init_fw`:
                // `log_pg_sz_m` set, `log_pg_sz` 0), the only one this device has.
                let inbox = self.read_in(dma, cmd)?;
                let m = Mailbox(&inbox[..]);
                let (mask, log_pg_sz) = (m.u8(mod_stat_cfg::PG_SZ_M), m.u8(mod_stat_cfg::PG_SZ));
                if mask != 0 && log_pg_sz != 0 {
                    return Err((
                        CmdStatus::BadParam,
                        format!("MOD_STAT_CFG asks for ICM pages of 2^{} * 4 KiB", log_pg_sz),
                    ));
                }
                Ok(None)
            }
            opcode::UNMAP_FA => {
                self.need(&[Running, FwMapped], cmd.opcode)?;
                // The firmware stops, and forgets the ICM it was given; a driver unmaps
                // that first (`mlx4_close_hca` before `mlx4_close_fw`), or its pages
                // stay pinned for nothing.
                if self.icm.chunks() > 0 || !self.icm_aux.is_empty() {
                    self.driver_error(format!(
                        "UNMAP_FA with {} ICM chunks and {} auxiliary ICM chunks still mapped",
                        self.icm.chunks(),
                        self.icm_aux.len()
                    ));
                    self.icm = super::IcmMap::default();
                    self.icm_aux.clear();
                }
                self.fw_area.clear();
                self.fw = Reset;
                Ok(None)
            }
            opcode::QUERY_ADAPTER => {
                self.need(&running, cmd.opcode)?;
                let mut out = Mailbox(vec![0u8; 0x100]);
                out.set_u8(query_adapter::INTA_PIN, 0);
                for (i, word) in caps::BOARD_ID.chunks_exact(4).enumerate() {
                    // The firmware byte-swaps each word of the board id (`get_board_id`).
                    let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    out.set_u32(
                        query_adapter::VSD + query_adapter::VSD_BOARD_ID + 4 * i,
                        word,
                    );
                }
                self.write_out(dma, cmd, &out.0)?;
                Ok(None)
            }
            opcode::QUERY_DEV_CAP => {
                self.need(&running, cmd.opcode)?;
                let out = dev_cap();
                self.write_out(dma, cmd, &out.0)?;
                Ok(None)
            }
            opcode::QUERY_PORT => {
                self.need(&running, cmd.opcode)?;
                self.port_index(cmd.in_modifier)?;
                let mut out = Mailbox(vec![0u8; query_port::OUT_SIZE]);
                // Link up, InfiniBand only.
                out.set_u8(query_port::SUPPORTED_TYPE, 0x80 | 0x01);
                out.set_u8(query_port::MTU, caps::IB_MTU);
                out.set_u8(query_port::WIDTH, caps::PORT_WIDTH);
                out.set_u8(
                    query_port::MAX_GID_PKEY,
                    (caps::LOG_GIDS << 4) | caps::LOG_PKEYS,
                );
                out.set_u8(query_port::MAX_VL, caps::MAX_VL);
                self.write_out(dma, cmd, &out.0)?;
                Ok(None)
            }
            opcode::SET_ICM_SIZE => {
                self.need(&running, cmd.opcode)?;
                // One auxiliary page per 1 MiB of ICM, at least one.
                let aux_pages = (cmd.in_param >> 20).max(1);
                Ok(Some(aux_pages))
            }
            opcode::MAP_ICM_AUX => {
                self.need(&running, cmd.opcode)?;
                let entries = self.vpm(dma, cmd)?;
                if self.icm_aux.len() + entries.len() > MAX_VPM_ENTRIES {
                    return Err((
                        CmdStatus::ExceedsLimit,
                        "more auxiliary ICM than SET_ICM_SIZE asked for".into(),
                    ));
                }
                self.icm_aux.extend(entries);
                Ok(None)
            }
            opcode::UNMAP_ICM_AUX => {
                self.need(&running, cmd.opcode)?;
                self.icm_aux.clear();
                Ok(None)
            }
            opcode::MAP_ICM => {
                self.need(&running, cmd.opcode)?;
                let entries = self.vpm(dma, cmd)?;
                if self.icm.chunks() + entries.len() > MAX_ICM_CHUNKS {
                    return Err((
                        CmdStatus::ExceedsLimit,
                        "more ICM chunks than the device tracks".into(),
                    ));
                }
                for entry in &entries {
                    self.icm.map(entry).map_err(|e| {
                        (
                            CmdStatus::IcmError,
                            format!("MAP_ICM at {:#x}: {e}", entry.virt),
                        )
                    })?;
                }
                Ok(None)
            }
            opcode::UNMAP_ICM => {
                self.need(&running, cmd.opcode)?;
                let chunks = self.icm.unmap(cmd.in_param, u64::from(cmd.in_modifier));
                if chunks == 0 {
                    return Err((
                        CmdStatus::IcmError,
                        format!(
                            "UNMAP_ICM of {} pages at {:#x}: nothing mapped there",
                            cmd.in_modifier, cmd.in_param
                        ),
                    ));
                }
                Ok(None)
            }
            opcode::INIT_HCA => {
                self.need(&[Running], cmd.opcode)?;
                let inbox = self.read_in(dma, cmd)?;
                let m = Mailbox(&inbox[..]);
                let version = m.u8(init_hca::VERSION);
                if version != init_hca::VERSION_2 {
                    return Err((
                        CmdStatus::BadParam,
                        format!("INIT_HCA version {version}, the device speaks 2"),
                    ));
                }
                // The context tables' bases live in ICM the driver mapped; the device
                // keeps its contexts itself and needs only the sizes (a context table's
                // log size is the low byte of its base) and the MTT table, which the
                // driver writes into ICM directly.
                let params = InitHcaParams {
                    log_num_qps: m.u8(init_hca::LOG_QP) & 0x1f,
                    log_num_cqs: m.u8(init_hca::LOG_CQ) & 0x1f,
                    log_num_srqs: m.u8(init_hca::LOG_SRQ) & 0x1f,
                    log_num_eqs: m.u8(init_hca::LOG_EQ) & 0x1f,
                    log_mpt_sz: m.u8(init_hca::LOG_MPT_SZ) & 0x3f,
                    mtt_base: m.u64(init_hca::MTT_BASE),
                    qpc_base: m.u64(init_hca::QPC_BASE) & !0xfff,
                    cqc_base: m.u64(init_hca::CQC_BASE) & !0xfff,
                    dmpt_base: m.u64(init_hca::DMPT_BASE),
                    log_mc_entry_sz: m.u8(init_hca::LOG_MC_ENTRY_SZ) & 0x1f,
                    log_mc_hash_sz: m.u8(init_hca::LOG_MC_HASH_SZ) & 0x1f,
                    log_mc_table_sz: m.u8(init_hca::LOG_MC_TABLE_SZ) & 0x1f,
                };
                // mlx4_core sizes its profile itself (2^18 QPs, 2^19 MPTs on a small guest),
                // beyond what QUERY_DEV_CAP offers; the device takes up to these.
                if params.log_num_qps > 20
                    || params.log_num_cqs > 20
                    || params.log_num_srqs > 20
                    || params.log_num_eqs > 10
                    || params.log_mpt_sz > 22
                    || params.log_mc_entry_sz > 12
                    || params.log_mc_hash_sz > 16
                    || params.log_mc_table_sz > 16
                {
                    return Err((
                        CmdStatus::ExceedsLimit,
                        format!("INIT_HCA asks for more than QUERY_DEV_CAP offers: {params:?}"),
                    ));
                }
                self.info(format!(
                    "INIT_HCA: 2^{} QPs, 2^{} CQs, 2^{} EQs, 2^{} MPTs, MTT at ICM {:#x}",
                    params.log_num_qps,
                    params.log_num_cqs,
                    params.log_num_eqs,
                    params.log_mpt_sz,
                    params.mtt_base
                ));
                self.init = Some(params);
                self.init_hca_mailbox = inbox;
                self.fw = Initialized;
                Ok(None)
            }
            opcode::CLOSE_HCA => {
                self.need(&[Initialized], cmd.opcode)?;
                self.init = None;
                self.eqs.clear();
                self.cq_states.clear();
                self.mcg.clear();
                self.qps.clear();
                // The ports close with the HCA: a new INIT_HCA starts them over.
                self.sma = super::Sma::new();
                self.ports_up = [false; 2];
                self.special_qp_base = None;
                self.cq_doorbell_high = None;
                self.mpts.clear();
                self.srqs.clear();
                self.srq_states.clear();
                // ICM stays mapped: the driver unmaps it after CLOSE_HCA.
                self.fw = Running;
                Ok(None)
            }
            opcode::NOP => {
                self.need(&running, cmd.opcode)?;
                Ok(None)
            }
            opcode::SW2HW_EQ => {
                self.need(&[Initialized], cmd.opcode)?;
                self.sw2hw_eq(dma, cmd)?;
                Ok(None)
            }
            opcode::HW2SW_EQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let eqn = cmd.in_modifier & 0x3ff;
                self.eqs.remove(&eqn).ok_or_else(|| {
                    (
                        CmdStatus::BadResourceState,
                        format!("EQ {eqn} is not in hardware"),
                    )
                })?;
                Ok(None)
            }
            opcode::MAP_EQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let eqn = cmd.in_modifier & 0x3ff;
                let unmap = cmd.in_modifier & (1 << 31) != 0;
                if !self.eqs.contains_key(&eqn) {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("MAP_EQ to EQ {eqn}, not in hardware"),
                    ));
                }
                for (&n, eq) in self.eqs.iter_mut() {
                    if n == eqn {
                        if unmap {
                            eq.event_mask &= !cmd.in_param;
                        } else {
                            eq.event_mask |= cmd.in_param;
                        }
                    } else if !unmap {
                        // An event type goes to one EQ: mapping it here moves it.
                        eq.event_mask &= !cmd.in_param;
                    }
                }
                Ok(None)
            }
            opcode::SW2HW_CQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let cqn = cmd.in_modifier & 0x00ff_ffff;
                self.check_index("CQ", cqn, self.init.map_or(0, |i| i.log_num_cqs))?;
                if self.cq_states.contains_key(&cqn) {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("CQ {cqn:#x} is already in hardware"),
                    ));
                }
                let init = self.init.unwrap_or_default();
                self.context_mapped("CQ", cqn, init.cqc_base, caps::CQC_ENTRY_SZ)?;
                let inbox = self.read_in(dma, cmd)?;
                let cq = super::datapath::CqState::from_context(&inbox);
                if cq.log_size > super::datapath::MAX_LOG_QUEUE_ENTRIES {
                    return Err((
                        CmdStatus::BadParam,
                        format!("CQ {cqn:#x} of 2^{} entries", cq.log_size),
                    ));
                }
                if !self.eqs.contains_key(&cq.comp_eqn) {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("CQ {cqn:#x} names EQ {}, not in hardware", cq.comp_eqn),
                    ));
                }
                self.init_cq_buffer(dma, &cq)
                    .map_err(|e| (CmdStatus::BadParam, format!("CQ {cqn:#x}: {e}")))?;
                self.cq_states.insert(cqn, cq);
                Ok(None)
            }
            opcode::HW2SW_CQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let cqn = cmd.in_modifier & 0x00ff_ffff;
                if self.cq_states.remove(&cqn).is_none() {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("CQ {cqn:#x} is not in hardware"),
                    ));
                }
                Ok(None)
            }
            opcode::MODIFY_CQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let cqn = cmd.in_modifier & 0x00ff_ffff;
                if !self.cq_states.contains_key(&cqn) {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("CQ {cqn:#x} is not in hardware"),
                    ));
                }
                let inbox = self.read_in(dma, cmd)?;
                match cmd.op_modifier {
                    // Resize (`mlx4_cq_resize`): the new buffer from the RESIZE CQE on.
                    0 => self
                        .resize_cq(dma, cqn, &inbox)
                        .map_err(|e| (CmdStatus::BadParam, format!("CQ {cqn:#x}: {e}")))?,
                    // Moderation (`mlx4_cq_modify`): the count and period only ever delay
                    // an event, and the device raises each at once; accepted as is.
                    1 => {}
                    other => {
                        return Err((
                            CmdStatus::BadParam,
                            format!("MODIFY_CQ of CQ {cqn:#x} with op_modifier {other}"),
                        ))
                    }
                }
                Ok(None)
            }
            opcode::SW2HW_MPT | opcode::SW2HW_SRQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let inbox = self.read_in(dma, cmd)?;
                let index = cmd.in_modifier & 0x00ff_ffff;
                let init = self.init.unwrap_or_default();
                if cmd.opcode == opcode::SW2HW_MPT {
                    self.check_index("MPT", index, init.log_mpt_sz)?;
                    self.context_mapped("MPT", index, init.dmpt_base, caps::DMPT_ENTRY_SZ)?;
                } else {
                    self.check_index("SRQ", index, init.log_num_srqs)?;
                }
                let table = match cmd.opcode {
                    opcode::SW2HW_MPT => &mut self.mpts,
                    _ => &mut self.srqs,
                };
                if table.contains_key(&index) {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("object {index:#x} is already in hardware"),
                    ));
                }
                let context = inbox.get(..0x100).map(<[u8]>::to_vec).unwrap_or_default();
                if cmd.opcode == opcode::SW2HW_SRQ {
                    self.srq_states
                        .insert(index, super::datapath::SrqState::from_context(&context));
                }
                table.insert(index, context);
                Ok(None)
            }
            opcode::HW2SW_MPT | opcode::HW2SW_SRQ => {
                self.need(&[Initialized], cmd.opcode)?;
                let index = cmd.in_modifier & 0x00ff_ffff;
                let table = match cmd.opcode {
                    opcode::HW2SW_MPT => &mut self.mpts,
                    _ => &mut self.srqs,
                };
                if table.remove(&index).is_none() {
                    return Err((
                        CmdStatus::BadResourceState,
                        format!("object {index:#x} is not in hardware"),
                    ));
                }
                if cmd.opcode == opcode::HW2SW_SRQ {
                    self.srq_states.remove(&index);
                }
                Ok(None)
            }
            opcode::RST2INIT_QP
            | opcode::INIT2INIT_QP
            | opcode::INIT2RTR_QP
            | opcode::RTR2RTS_QP
            | opcode::RTS2RTS_QP
            | opcode::SQERR2RTS_QP
            | opcode::TO_ERR_QP
            | opcode::RTS2SQD_QP
            | opcode::SQD2SQD_QP
            | opcode::SQD2RTS_QP
            | opcode::TO_RST_QP => {
                self.need(&[Initialized], cmd.opcode)?;
                self.modify_qp(dma, cmd)?;
                Ok(None)
            }
            opcode::QUERY_QP => {
                self.need(&[Initialized], cmd.opcode)?;
                let qpn = cmd.in_modifier & 0x00ff_ffff;
                // The mailbox as the transitions take it: 8 bytes, then the context, with
                // the state in the flags' top nibble (`mlx4_qp_query`).
                let mut out = vec![0u8; 8 + QP_CONTEXT_SIZE];
                let (state, context) = match self.qps.get(&qpn) {
                    Some(qp) => (qp.state, qp.context.clone()),
                    None => (QpStateKind::Reset, Vec::new()),
                };
                for (dst, src) in out[8..].iter_mut().zip(&context) {
                    *dst = *src;
                }
                out[8] = (out[8] & 0x0f) | (state.prm_value() << 4);
                self.write_out(dma, cmd, &out)?;
                Ok(None)
            }
            opcode::CONF_SPECIAL_QP => {
                self.need(&[Initialized], cmd.opcode)?;
                self.special_qp_base = Some(cmd.in_modifier & 0x00ff_ffff);
                Ok(None)
            }
            opcode::INIT_PORT | opcode::CLOSE_PORT => {
                self.need(&[Initialized], cmd.opcode)?;
                let port = self.port_index(cmd.in_modifier)?;
                let up = cmd.opcode == opcode::INIT_PORT;
                self.ports_up[port] = up;
                self.sma.set_port_enabled(port, up);
                Ok(None)
            }
            opcode::SET_PORT => {
                self.need(&running, cmd.opcode)?;
                let port = self.port_index(cmd.in_modifier & 0xff)?;
                if cmd.op_modifier != 0 {
                    return Err((
                        CmdStatus::BadOp,
                        format!(
                            "SET_PORT op_mod {} (Ethernet) on an InfiniBand port",
                            cmd.op_modifier
                        ),
                    ));
                }
                // The IB layout (`mlx4_SET_PORT`, `mlx4_ib_SET_PORT`): the capability
                // mask PortInfo reports, at 0x04.
                let inbox = self.read_in(dma, cmd)?;
                self.sma
                    .set_capability_mask(port, Mailbox(&inbox[..]).u32(set_port::CAPABILITY_MASK));
                Ok(None)
            }
            opcode::MAD_IFC => {
                self.need(&running, cmd.opcode)?;
                let port = self.port_index(cmd.in_modifier & 0xffff)?;
                let inbox = self.read_in(dma, cmd)?;
                let mut reply = [0u8; 256];
                let mad = inbox.get(..256).unwrap_or(&[]);
                match self.sma.process(port, mad, &mut reply) {
                    Ok(()) => {
                        self.write_out(dma, cmd, &reply)?;
                        Ok(None)
                    }
                    Err(why) => Err((CmdStatus::BadPacket, why)),
                }
            }
            opcode::QUERY_HCA => {
                self.need(&[Initialized], cmd.opcode)?;
                // What INIT_HCA set, and the core clock in MHz at 0x0c (read after each
                // INIT_PORT, `mlx4_hca_core_clock_update`): a ConnectX-3's 427 MHz.
                let mut out = Mailbox(self.init_hca_mailbox.clone());
                out.set_u16(query_hca::CORE_CLOCK, caps::CORE_CLOCK_MHZ);
                self.write_out(dma, cmd, out.0.get(..init_hca::IN_SIZE).unwrap_or(&[]))?;
                Ok(None)
            }
            opcode::MGID_HASH => {
                self.need(&[Initialized], cmd.opcode)?;
                // The hash of a group's GID picks its first entry in the table's hash
                // part; any function will do as long as it is the same every time.
                let inbox = self.read_in(dma, cmd)?;
                let mut gid = [0u8; 16];
                if let Some(src) = inbox.get(..16) {
                    gid.copy_from_slice(src);
                }
                Ok(Some(u64::from(self.mgid_hash(&gid))))
            }
            opcode::READ_MCG | opcode::WRITE_MCG => {
                self.need(&[Initialized], cmd.opcode)?;
                let init = self.init.unwrap_or_default();
                let index = cmd.in_modifier;
                self.check_index("MCG entry", index, init.log_mc_table_sz)?;
                let entry_size = (1usize << init.log_mc_entry_sz).min(MAILBOX_SIZE);
                if cmd.opcode == opcode::READ_MCG {
                    let entry = self
                        .mcg
                        .get(&index)
                        .cloned()
                        .unwrap_or_else(|| vec![0; entry_size]);
                    self.write_out(dma, cmd, &entry)?;
                } else {
                    let mut entry = self.read_in(dma, cmd)?;
                    entry.truncate(entry_size);
                    if entry.iter().all(|&b| b == 0) {
                        self.mcg.remove(&index);
                    } else {
                        self.mcg.insert(index, entry);
                    }
                }
                Ok(None)
            }
            opcode::DIAG_RPRT => {
                self.need(&[Initialized], cmd.opcode)?;
                // Transport and completion-interface error counters (op_mod 2,
                // `MLX4_OP_MOD_QUERY_TRANSPORT_CI_ERRORS`, read by mlx4_ib's hw
                // counters): the device counts none of those errors, so all are zero.
                if cmd.op_modifier != 2 {
                    return Err((
                        CmdStatus::BadParam,
                        format!("DIAG_RPRT op_mod {}: only 2 is reported", cmd.op_modifier),
                    ));
                }
                self.write_out(dma, cmd, &[0u8; 0x200])?;
                Ok(None)
            }
            other => Err((
                CmdStatus::BadOp,
                format!("{} is not implemented by this device", opcode_name(other)),
            )),
        }
    }

    fn check_index(
        &self,
        what: &str,
        index: u32,
        log_count: u8,
    ) -> Result<(), (CmdStatus, String)> {
        if u64::from(index) < 1u64 << log_count {
            Ok(())
        } else {
            Err((
                CmdStatus::BadIndex,
                format!("{what} {index:#x} beyond the 2^{log_count} INIT_HCA made"),
            ))
        }
    }

    /// A context the firmware is to keep must lie in mapped ICM: real firmware would
    /// take an ICM fault on it (the driver maps it with `mlx4_table_get` first).
    fn context_mapped(
        &self,
        what: &str,
        index: u32,
        base: u64,
        entry_size: u16,
    ) -> Result<(), (CmdStatus, String)> {
        let address = base.wrapping_add(u64::from(index) * u64::from(entry_size));
        match self.icm.translate(address) {
            Some((_, contiguous)) if contiguous >= u64::from(entry_size) => Ok(()),
            _ => Err((
                CmdStatus::IcmError,
                format!("{what} {index:#x}: its context at ICM {address:#x} is not mapped"),
            )),
        }
    }

    fn port_index(&self, in_modifier: u32) -> Result<usize, (CmdStatus, String)> {
        match in_modifier {
            1 | 2 => Ok(in_modifier as usize - 1),
            other => Err((
                CmdStatus::BadIndex,
                format!("port {other} (the device has 1 and 2)"),
            )),
        }
    }

    fn read_in(&mut self, dma: &dyn Dma, cmd: &HcrCommand) -> Result<Vec<u8>, (CmdStatus, String)> {
        let mut inbox = vec![0u8; MAILBOX_SIZE];
        dma.read(cmd.in_param, &mut inbox).map_err(|f| {
            (
                CmdStatus::InternalError,
                format!("input mailbox at {:#x} is outside mapped memory", f.address),
            )
        })?;
        Ok(inbox)
    }

    fn write_out(
        &mut self,
        dma: &dyn Dma,
        cmd: &HcrCommand,
        data: &[u8],
    ) -> Result<(), (CmdStatus, String)> {
        dma.write(cmd.out_param, data).map_err(|f| {
            (
                CmdStatus::InternalError,
                format!(
                    "output mailbox at {:#x} is outside mapped memory",
                    f.address
                ),
            )
        })
    }

    fn vpm(
        &mut self,
        dma: &dyn Dma,
        cmd: &HcrCommand,
    ) -> Result<Vec<VpmEntry>, (CmdStatus, String)> {
        let inbox = self.read_in(dma, cmd)?;
        VpmEntry::parse_all(&inbox, cmd.in_modifier).map_err(|e| {
            (
                CmdStatus::BadParam,
                format!("{e} ({} entries)", cmd.in_modifier),
            )
        })
    }

    fn sw2hw_eq(&mut self, dma: &dyn Dma, cmd: &HcrCommand) -> Result<(), (CmdStatus, String)> {
        let eqn = cmd.in_modifier & 0x3ff;
        let init = self
            .init
            .ok_or((CmdStatus::BadSysState, String::from("no INIT_HCA")))?;
        if eqn >= 1 << init.log_num_eqs {
            return Err((
                CmdStatus::BadIndex,
                format!("EQ {eqn} beyond 2^{} EQs", init.log_num_eqs),
            ));
        }
        if self.eqs.contains_key(&eqn) {
            return Err((
                CmdStatus::BadResourceState,
                format!("EQ {eqn} is already in hardware"),
            ));
        }
        let inbox = self.read_in(dma, cmd)?;
        let m = Mailbox(&inbox[..]);
        let log_size = u32::from(m.u8(eq_context::LOG_EQ_SIZE) & 0x1f);
        if log_size > super::datapath::MAX_LOG_QUEUE_ENTRIES {
            return Err((
                CmdStatus::BadParam,
                format!("EQ {eqn} of 2^{log_size} entries"),
            ));
        }
        if m.u16(eq_context::PAGE_OFFSET) != 0 {
            return Err((
                CmdStatus::BadParam,
                format!("EQ {eqn} starts inside its first page"),
            ));
        }
        if u16::from(m.u8(eq_context::INTR)) >= super::layout::MSIX_VECTORS {
            return Err((
                CmdStatus::BadParam,
                format!("EQ {eqn} on MSI-X vector {}", m.u8(eq_context::INTR)),
            ));
        }
        let eq = EventQueue {
            log_size,
            intr: u16::from(m.u8(eq_context::INTR)),
            mtt_offset: (u64::from(m.u8(eq_context::MTT_BASE_ADDR_H)) << 32)
                | u64::from(m.u32(eq_context::MTT_BASE_ADDR_L)),
            log_page_size: u32::from(m.u8(eq_context::LOG_PAGE_SIZE) & 0x1f),
            producer: m.u32(eq_context::PRODUCER_INDEX) & 0x00ff_ffff,
            consumer: m.u32(eq_context::CONSUMER_INDEX) & 0x00ff_ffff,
            // `MLX4_EQ_STATE_ARMED` in the flags: the driver creates EQs armed.
            armed: m.u32(eq_context::FLAGS) & (0xf << 8) == eq_context::FLAGS_ARMED,
            event_mask: 0,
        };
        // The hardware owns every entry of a new EQ: set the owner bit of each, as the
        // firmware does (the driver's `next_eqe_sw` expects it; its pages come zeroed).
        let nent = 1u64 << log_size;
        self.own_queue(dma, eq.mtt_offset, eq.log_page_size, log_size, 0)
            .map_err(|e| (CmdStatus::BadParam, format!("EQ {eqn}: {e}")))?;
        self.info(format!(
            "EQ {eqn}: {} entries, vector {}{}",
            nent,
            eq.intr,
            if eq.armed { ", armed" } else { "" }
        ));
        self.eqs.insert(eqn, eq);
        Ok(())
    }

    fn modify_qp(&mut self, dma: &dyn Dma, cmd: &HcrCommand) -> Result<(), (CmdStatus, String)> {
        use QpStateKind::*;
        let qpn = cmd.in_modifier & 0x00ff_ffff;
        self.check_index("QP", qpn, self.init.map_or(0, |i| i.log_num_qps))?;
        let current = self.qps.get(&qpn).map_or(Reset, |qp| qp.state);
        if cmd.opcode == opcode::RST2INIT_QP {
            let init = self.init.unwrap_or_default();
            self.context_mapped("QP", qpn, init.qpc_base, caps::QPC_ENTRY_SZ)?;
        }
        let (from, to): (&[QpStateKind], QpStateKind) = match cmd.opcode {
            opcode::RST2INIT_QP => (&[Reset], Init),
            opcode::INIT2INIT_QP => (&[Init], Init),
            opcode::INIT2RTR_QP => (&[Init], Rtr),
            opcode::RTR2RTS_QP => (&[Rtr], Rts),
            opcode::RTS2RTS_QP => (&[Rts], Rts),
            opcode::SQERR2RTS_QP => (&[Sqer], Rts),
            opcode::RTS2SQD_QP => (&[Rts], Sqd),
            opcode::SQD2SQD_QP => (&[Sqd], Sqd),
            opcode::SQD2RTS_QP => (&[Sqd], Rts),
            opcode::TO_ERR_QP => (&[Reset, Init, Rtr, Rts, Sqd, Sqer, Error], Error),
            _ => (&[Reset, Init, Rtr, Rts, Sqd, Sqer, Error], Reset),
        };
        if !from.contains(&current) {
            return Err((
                CmdStatus::BadQpState,
                format!("QP {qpn:#x} is {current:?}, the transition wants {from:?}"),
            ));
        }
        if to == Reset {
            self.qps.remove(&qpn);
            return Ok(());
        }
        let mut queues = self.qps.get(&qpn).and_then(|qp| qp.queues.clone());
        let mut merged = self
            .qps
            .get(&qpn)
            .map(|qp| qp.context.clone())
            .unwrap_or_default();
        if cmd.opcode != opcode::TO_ERR_QP {
            // The mailbox: the optional-parameter mask, 4 reserved bytes, the context.
            let inbox = self.read_in(dma, cmd)?;
            let optpar = Mailbox(&inbox[..]).u32(0);
            let context = inbox.get(8..).unwrap_or(&[]);
            if cmd.opcode == opcode::RST2INIT_QP {
                queues = Some(super::datapath::QpQueues::from_context(context));
                merged = context.get(..QP_CONTEXT_SIZE).unwrap_or(context).to_vec();
            } else {
                if let Some(q) = queues.as_mut() {
                    q.update(context, optpar, cmd.opcode == opcode::INIT2RTR_QP);
                }
                // A later transition's mailbox holds only what it changes; the rest is
                // zero (its optional-parameter mask says which fields count).
                for (kept, new) in merged.iter_mut().zip(context) {
                    if *new != 0 {
                        *kept = *new;
                    }
                }
                // A field under its optional parameter is taken whole, zero bytes too.
                if optpar & crate::wire::fw::qp_optpar::Q_KEY != 0 {
                    let at = crate::wire::fw::qp_context::QKEY;
                    if let (Some(kept), Some(new)) =
                        (merged.get_mut(at..at + 4), context.get(at..at + 4))
                    {
                        kept.copy_from_slice(new);
                    }
                }
            }
        }
        self.qps.insert(
            qpn,
            QpState {
                state: to,
                queues,
                context: merged,
            },
        );
        if to == Error {
            // Every WQE the QP holds completes as a flush (what `ib_drain_qp` waits for).
            self.enter_error(dma, qpn);
        } else if to == Rts {
            // WQEs posted before RTS go out now.
            self.send_doorbell(dma, qpn);
        }
        Ok(())
    }
}

impl Hca {
    /// The bucket of the multicast table's hash part where `gid`'s chain starts
    /// (MGID_HASH). The device's own hash function is not documented; any will do as
    /// long as the driver asks the device for it, which is what this checks.
    fn mgid_hash(&self, gid: &[u8; 16]) -> u32 {
        let init = self.init.unwrap_or_default();
        let hash = gid.iter().fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        hash & ((1u32 << init.log_mc_hash_sz) - 1)
    }

    /// The QPs attached to InfiniBand multicast group `mgid`, found as the device finds
    /// them: from the bucket MGID_HASH names along the chain of `next_gid_index` links
    /// (`struct mlx4_mgm`, [`Mgm`]), to the first entry of the group. A group written
    /// anywhere else is not found, as on the hardware. The walk ends at an empty entry
    /// or after as many links as the table has entries (a chain that loops).
    pub fn multicast_members(&self, mgid: &[u8; 16]) -> Vec<u32> {
        let init = self.init.unwrap_or_default();
        let mut index = self.mgid_hash(mgid);
        for _ in 0..1u32 << init.log_mc_table_sz {
            let Some(entry) = self.mcg.get(&index).map(|e| Mgm(&e[..])) else {
                break;
            };
            if entry.is_group(mgid, Mgm::PROT_IB) {
                // No more members than the entry holds, or a group may have.
                let most = Mgm::slots(entry.0.len()).min(1 << caps::LOG_MAX_QP_MCG);
                return entry.member_qpns(most).collect();
            }
            if entry.members() == 0 {
                break;
            }
            index = entry.next_index();
            if index == 0 {
                break;
            }
        }
        Vec::new()
    }
}

/// QUERY_DEV_CAP's answer.
fn dev_cap() -> Mailbox<Vec<u8>> {
    use caps::*;
    use query_dev_cap as f;
    let mut m = Mailbox(vec![0u8; f::OUT_SIZE]);
    m.set_u8(f::MAX_SRQ_SZ, LOG_MAX_SRQ_SZ);
    m.set_u8(f::MAX_QP_SZ, LOG_MAX_QP_SZ);
    m.set_u8(f::RSVD_QP, LOG_RSVD_QP);
    m.set_u8(f::MAX_QP, LOG_MAX_QP);
    m.set_u8(f::RSVD_SRQ, LOG_RSVD_SRQ << 4);
    m.set_u8(f::MAX_SRQ, LOG_MAX_SRQ);
    m.set_u8(f::MAX_CQ_SZ, LOG_MAX_CQ_SZ);
    m.set_u8(f::RSVD_CQ, LOG_RSVD_CQ);
    m.set_u8(f::MAX_CQ, LOG_MAX_CQ);
    m.set_u8(f::MAX_MPT, LOG_MAX_MPT);
    m.set_u8(f::RSVD_EQ, LOG_RSVD_EQ);
    m.set_u8(f::MAX_EQ, LOG_MAX_EQ);
    m.set_u8(f::RSVD_MTT, LOG_RSVD_MTT << 4);
    m.set_u8(f::MAX_MRW_SZ, 0x3f);
    m.set_u8(f::RSVD_MRW, LOG_RSVD_MRW);
    m.set_u8(f::MAX_MTT_SEG, 0x1e);
    m.set_u8(f::MAX_REQ_QP, 4);
    m.set_u8(f::MAX_RES_QP, 4);
    m.set_u8(f::MAX_RDMA, 0x14);
    m.set_u8(f::ACK_DELAY, 15);
    m.set_u8(f::MTU_WIDTH, (IB_MTU << 4) | PORT_WIDTH);
    m.set_u8(f::VL_PORT, (MAX_VL << 4) | PORTS);
    m.set_u8(f::MAX_MSG_SZ, 31);
    m.set_u8(f::MAX_GID, LOG_GIDS);
    m.set_u8(f::MAX_PKEY, LOG_PKEYS);
    let flags = dev_cap_flag::RC
        | dev_cap_flag::UD
        | dev_cap_flag::SRQ
        | dev_cap_flag::BAD_PKEY_CNTR
        | dev_cap_flag::BAD_QKEY_CNTR
        | dev_cap_flag::ATOMIC
        | dev_cap_flag::UD_MCAST;
    m.set_u32(f::EXT_FLAGS, (flags >> 32) as u32);
    m.set_u32(f::FLAGS, flags as u32);
    m.set_u8(f::RSVD_UAR, RSVD_UARS << 4);
    m.set_u8(f::UAR_SZ, LOG_UAR_SZ_MB);
    m.set_u8(f::PAGE_SZ, 12);
    m.set_u8(f::MAX_SG_SQ, MAX_SG);
    m.set_u16(f::MAX_DESC_SZ_SQ, MAX_DESC_SZ_SQ);
    m.set_u8(f::MAX_SG_RQ, MAX_SG);
    m.set_u16(f::MAX_DESC_SZ_RQ, MAX_DESC_SZ_RQ);
    m.set_u8(f::MAX_QP_MCG, LOG_MAX_QP_MCG);
    m.set_u8(f::MAX_MCG, LOG_MAX_MCG);
    m.set_u8(f::RSVD_PD, RSVD_PDS << 4);
    m.set_u8(f::MAX_PD, LOG_MAX_PD);
    m.set_u8(f::MAX_XRC, 16);
    m.set_u16(f::RDMARC_ENTRY_SZ, RDMARC_ENTRY_SZ);
    m.set_u16(f::QPC_ENTRY_SZ, QPC_ENTRY_SZ);
    m.set_u16(f::AUX_ENTRY_SZ, AUX_ENTRY_SZ);
    m.set_u16(f::ALTC_ENTRY_SZ, ALTC_ENTRY_SZ);
    m.set_u16(f::EQC_ENTRY_SZ, EQC_ENTRY_SZ);
    m.set_u16(f::CQC_ENTRY_SZ, CQC_ENTRY_SZ);
    m.set_u16(f::SRQ_ENTRY_SZ, SRQ_ENTRY_SZ);
    m.set_u16(f::C_MPT_ENTRY_SZ, CMPT_ENTRY_SZ);
    m.set_u16(f::MTT_ENTRY_SZ, MTT_ENTRY_SZ);
    m.set_u16(f::D_MPT_ENTRY_SZ, DMPT_ENTRY_SZ);
    m.set_u32(
        f::BMME_FLAGS,
        bmme_flag::LOCAL_INV | bmme_flag::REMOTE_INV | bmme_flag::FAST_REG_WR,
    );
    m.set_u64(f::MAX_ICM_SZ, MAX_ICM_SZ);
    m
}

/// Upstream's name of an opcode, for logs.
pub fn opcode_name(op: u16) -> &'static str {
    match op {
        opcode::SYS_EN => "SYS_EN",
        opcode::MAP_FA => "MAP_FA",
        opcode::UNMAP_FA => "UNMAP_FA",
        opcode::RUN_FW => "RUN_FW",
        opcode::MOD_STAT_CFG => "MOD_STAT_CFG",
        opcode::QUERY_DEV_CAP => "QUERY_DEV_CAP",
        opcode::QUERY_FW => "QUERY_FW",
        opcode::QUERY_ADAPTER => "QUERY_ADAPTER",
        opcode::INIT_HCA => "INIT_HCA",
        opcode::CLOSE_HCA => "CLOSE_HCA",
        opcode::INIT_PORT => "INIT_PORT",
        opcode::CLOSE_PORT => "CLOSE_PORT",
        opcode::QUERY_HCA => "QUERY_HCA",
        opcode::QUERY_PORT => "QUERY_PORT",
        opcode::SENSE_PORT => "SENSE_PORT",
        opcode::HW_HEALTH_CHECK => "HW_HEALTH_CHECK",
        opcode::SET_PORT => "SET_PORT",
        opcode::SET_NODE => "SET_NODE",
        opcode::QUERY_FUNC => "QUERY_FUNC",
        opcode::MAP_ICM => "MAP_ICM",
        opcode::UNMAP_ICM => "UNMAP_ICM",
        opcode::MAP_ICM_AUX => "MAP_ICM_AUX",
        opcode::UNMAP_ICM_AUX => "UNMAP_ICM_AUX",
        opcode::SET_ICM_SIZE => "SET_ICM_SIZE",
        opcode::ACCESS_REG => "ACCESS_REG",
        opcode::GET_OP_REQ => "GET_OP_REQ",
        opcode::SW2HW_MPT => "SW2HW_MPT",
        opcode::QUERY_MPT => "QUERY_MPT",
        opcode::HW2SW_MPT => "HW2SW_MPT",
        opcode::READ_MTT => "READ_MTT",
        opcode::WRITE_MTT => "WRITE_MTT",
        opcode::SYNC_TPT => "SYNC_TPT",
        opcode::MAP_EQ => "MAP_EQ",
        opcode::SW2HW_EQ => "SW2HW_EQ",
        opcode::HW2SW_EQ => "HW2SW_EQ",
        opcode::QUERY_EQ => "QUERY_EQ",
        opcode::SW2HW_CQ => "SW2HW_CQ",
        opcode::HW2SW_CQ => "HW2SW_CQ",
        opcode::QUERY_CQ => "QUERY_CQ",
        opcode::MODIFY_CQ => "MODIFY_CQ",
        opcode::SW2HW_SRQ => "SW2HW_SRQ",
        opcode::HW2SW_SRQ => "HW2SW_SRQ",
        opcode::QUERY_SRQ => "QUERY_SRQ",
        opcode::ARM_SRQ => "ARM_SRQ",
        opcode::RST2INIT_QP => "RST2INIT_QP",
        opcode::INIT2RTR_QP => "INIT2RTR_QP",
        opcode::RTR2RTS_QP => "RTR2RTS_QP",
        opcode::RTS2RTS_QP => "RTS2RTS_QP",
        opcode::SQERR2RTS_QP => "SQERR2RTS_QP",
        opcode::TO_ERR_QP => "2ERR_QP",
        opcode::RTS2SQD_QP => "RTS2SQD_QP",
        opcode::SQD2SQD_QP => "SQD2SQD_QP",
        opcode::SQD2RTS_QP => "SQD2RTS_QP",
        opcode::TO_RST_QP => "2RST_QP",
        opcode::QUERY_QP => "QUERY_QP",
        opcode::INIT2INIT_QP => "INIT2INIT_QP",
        opcode::CONF_SPECIAL_QP => "CONF_SPECIAL_QP",
        opcode::MAD_IFC => "MAD_IFC",
        opcode::MAD_DEMUX => "MAD_DEMUX",
        opcode::READ_MCG => "READ_MCG",
        opcode::WRITE_MCG => "WRITE_MCG",
        opcode::MGID_HASH => "MGID_HASH",
        opcode::DIAG_RPRT => "DIAG_RPRT",
        opcode::NOP => "NOP",
        opcode::QUERY_IF_STAT => "QUERY_IF_STAT",
        opcode::SET_IF_STAT => "SET_IF_STAT",
        _ => "an unknown opcode",
    }
}
