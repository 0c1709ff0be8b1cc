//! The resources an IB device is built from, created through the firmware: ICM mapped
//! on demand, MTT ranges, memory regions (MPTs), CQs, QPs and their state machine, and
//! MADs through MAD_IFC.
//!
//! Follows `drivers/net/ethernet/mellanox/mlx4/`: `icm.c` (`mlx4_table_get`,
//! `mlx4_table_put`: the 256 KiB table chunk an entry lives in is allocated and mapped
//! with MAP_ICM when its first user comes, unmapped with UNMAP_ICM and freed when its
//! last goes; chunks mapped at probe stay), `mr.c` (`mlx4_mtt_init`,
//! `mlx4_write_mtt_chunk`, `mlx4_mr_alloc`, `mlx4_mr_enable`: SW2HW_MPT with a
//! `struct mlx4_mpt_entry`; `mlx4_mr_free`: HW2SW_MPT), `cq.c` (`mlx4_cq_alloc`:
//! SW2HW_CQ with a `struct mlx4_cq_context`; `mlx4_cq_free`: HW2SW_CQ), `qp.c`
//! (`mlx4_qp_reserve_range`, `mlx4_qp_alloc_icm`, `mlx4_qp_modify` with a
//! `struct mlx4_qp_context` and the optional-parameter mask, `mlx4_CONF_SPECIAL_QP`), and
//! `drivers/infiniband/hw/mlx4/mad.c` (`mlx4_MAD_IFC`).
//!
//! Every creation records what it acquired in the object it returns, and unwinds through
//! the same release path when a later step fails; the release goes on past a failed
//! command, and memory the device may still use (its HW2SW or UNMAP_ICM failed) is
//! leaked, never freed, and counted ([`Mlx4Core::leaked_blocks`]).
//!
//! Queue buffers are one block of 2^n 4 KiB pages (naturally aligned, so contiguous for
//! the CPU), described to the device by one MTT entry per page; each queue's doorbell
//! record is a page of its own (upstream packs them in `mlx4_db` pages).

use crate::wire::cmd::opcode;
use crate::wire::fw::{
    cq_context, mad, mpt_entry, node_info, port_info, qp_context, qp_optpar, Mailbox, MAILBOX_SIZE,
};

use super::bitmap::IdBitmap;
use super::caps::{DevCaps, InvalidCap};
use super::cmd::{CmdError, Command};
use super::memory::{AllocError, Chunk, ICM_PAGE_SHIFT, ICM_PAGE_SIZE, MAX_CHUNK_LOG_PAGES};
use super::probe::{leak, Mlx4Core, Platform, ProbeError, Step};
use super::profile::{IcmLayout, Resource, CMPT_SHIFT};

/// Table chunks mapped on demand that the core can hold at once.
pub const DEMAND_CHUNKS: usize = 32;
/// The ICM table chunk (`MLX4_TABLE_CHUNK_SIZE`).
const TABLE_CHUNK_SIZE: u64 = (ICM_PAGE_SIZE as u64) << MAX_CHUNK_LOG_PAGES;
/// Capacity of the CQ, QP and MPT number tables, in 64-bit words.
pub(super) const CQN_WORDS: usize = 8;
pub(super) const QPN_WORDS: usize = 64;
pub(super) const MPT_WORDS: usize = 32;
/// The most CQs the core's number table holds.
pub const MAX_CQS: usize = CQN_WORDS * 64;
/// The most QPs the core's number table holds.
pub const MAX_QPS: usize = QPN_WORDS * 64;
/// The most MPTs (MRs) the core's number table holds.
pub const MAX_MPTS: usize = MPT_WORDS * 64;
/// Special QPs: QP0 and QP1 of each port, and the proxies, 8 from the base
/// (`mlx4_init_qp_table`).
pub const SPECIAL_QPS: u32 = 8;
/// An MTT entry's present bit (`MLX4_MTT_FLAG_PRESENT`).
const MTT_PRESENT: u64 = 1;
/// The largest queue buffer: 2^9 pages (2 MiB), one physically contiguous allocation
/// (a CQ of 64 Ki entries: what the kernel's IPoIB asks for its receive CQ when the
/// device has no SRQ, 128 connections of 256 receives).
pub const MAX_QUEUE_LOG_PAGES: u32 = 9;
/// CQEs are 32 bytes.
const CQE_SHIFT: u32 = 5;
/// The IB MTU of a connected QP: 2048 (`IB_MTU_2048`).
const IB_MTU_2048: u8 = 4;
/// log2 of the largest message (`MLX4_IB` uses 31).
const LOG_MAX_MSG: u8 = 31;

/// A table chunk mapped on demand, and how many objects use it.
#[derive(Debug)]
pub(super) struct DemandChunk<B> {
    chunk: Chunk<B>,
    refs: u32,
}

/// Where a table (or a cMPT region) lies in ICM: its base and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IcmSpan {
    base: u64,
    size: u64,
}

/// A range of MTT entries (`struct mlx4_mtt`): the first entry and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mtt {
    /// The first entry, an index into the MTT table.
    pub first: u32,
    /// Entries (a power of two, aligned to itself).
    pub count: u32,
    /// log2 of the page each entry describes, in bytes.
    pub page_shift: u32,
}

impl Mtt {
    /// The MTT base address a context or MPT names: the first entry's offset in the MTT
    /// table, `mtt_entry_size` bytes each (`mlx4_mtt_addr`).
    fn address(&self, mtt_entry_size: u32) -> u64 {
        u64::from(self.first).saturating_mul(mtt_entry_size.into())
    }
}

/// DMA memory of a queue: the block and its bus address.
#[derive(Debug)]
pub struct QueueMemory<B> {
    /// The platform's handle.
    pub block: B,
    /// Where the device reaches it.
    pub bus_address: u64,
    /// Its size, as log2 of 4 KiB pages.
    pub log_pages: u32,
}

/// A memory region: its MPT and, unless physical, its MTT range.
#[derive(Debug)]
pub struct MemoryRegion {
    /// The MPT index.
    pub index: u32,
    /// Its lkey (and rkey): `hw_index_to_key(index)`.
    pub key: u32,
    /// The MTT entries of a region over pages; `None` for the DMA MR.
    pub mtt: Option<Mtt>,
    icm: bool,
    in_hardware: bool,
}

/// The access a region grants (`MLX4_PERM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrAccess(pub u32);

impl MrAccess {
    /// Local read and write.
    pub const LOCAL: Self = Self(mpt_entry::PERM_LOCAL_READ | mpt_entry::PERM_LOCAL_WRITE);
    /// Everything: local, remote read and write, atomics.
    pub const ALL: Self = Self(
        mpt_entry::PERM_LOCAL_READ
            | mpt_entry::PERM_LOCAL_WRITE
            | mpt_entry::PERM_REMOTE_READ
            | mpt_entry::PERM_REMOTE_WRITE
            | mpt_entry::PERM_ATOMIC,
    );
}

/// What a region over pages covers: `length` bytes at `iova`, in `pages` (bus
/// addresses) of `1 << page_shift` bytes, the first holding `iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRegion<'a> {
    /// The region's first address, as the QPs name it.
    pub iova: u64,
    /// Its length in bytes.
    pub length: u64,
    /// The pages' bus addresses.
    pub pages: &'a [u64],
    /// log2 of the page size (12 or more).
    pub page_shift: u32,
}

/// A CQ in hardware: its number, its buffer and doorbell record, its MTT.
#[derive(Debug)]
pub struct CompletionQueue<B> {
    /// The CQ number.
    pub cqn: u32,
    /// log2 of its 32-byte entries.
    pub log_entries: u32,
    /// The CQE buffer.
    pub buffer: Option<QueueMemory<B>>,
    /// The doorbell record page: the consumer index at 0, the arm word at 4.
    pub doorbell: Option<QueueMemory<B>>,
    mtt: Option<Mtt>,
    icm: bool,
    in_hardware: bool,
}

/// A QP's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpTransport {
    /// Reliable connected.
    Rc,
    /// Unreliable datagram.
    Ud,
    /// The special QPs' raw transport (`MLX4_QP_ST_MLX`): the driver writes each
    /// packet's headers into the WQE (QP0 and QP1).
    Mlx,
}

impl QpTransport {
    fn st(self) -> u8 {
        match self {
            Self::Rc => qp_context::ST_RC,
            Self::Ud => qp_context::ST_UD,
            Self::Mlx => qp_context::ST_MLX,
        }
    }
}

/// A QP's state as the driver drove it (`enum mlx4_qp_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// RESET: the device holds no context.
    Reset,
    /// INIT.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Error.
    Error,
}

/// What a QP is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpConfig {
    /// RC or UD.
    pub transport: QpTransport,
    /// log2 of the send WQEs, and of their size in bytes (6..=11).
    pub log_sq_entries: u32,
    /// log2 of the send WQE size in bytes.
    pub log_sq_stride: u32,
    /// log2 of the receive WQEs, and of their size in bytes (4..=11).
    pub log_rq_entries: u32,
    /// log2 of the receive WQE size in bytes.
    pub log_rq_stride: u32,
    /// The protection domain.
    pub pd: u32,
    /// The CQ of send completions.
    pub send_cqn: u32,
    /// The CQ of receive completions.
    pub recv_cqn: u32,
}

/// A QP: its number, its buffer (the queue with the larger stride first) and doorbell
/// record (the receive producer counter at 0), its MTT and state.
#[derive(Debug)]
pub struct QueuePair<B> {
    /// The QP number.
    pub qpn: u32,
    /// What it was created with.
    pub config: QpConfig,
    /// The buffer of both queues.
    pub buffer: Option<QueueMemory<B>>,
    /// The doorbell record page.
    pub doorbell: Option<QueueMemory<B>>,
    /// Byte offsets of the send and receive queues in the buffer.
    pub sq_offset: u64,
    /// See `sq_offset`.
    pub rq_offset: u64,
    /// Its state in the device.
    pub state: QpState,
    mtt: Option<Mtt>,
    icm: bool,
    /// Its number belongs to a range reserved by [`Mlx4Core::reserve_qp_range`].
    from_range: bool,
}

/// What QUERY_QP reads of a QP's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpContextQuery {
    /// The PRM's state: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 4 SQER, 5 SQD, 6 ERR.
    pub state: u8,
    /// The Q_Key.
    pub qkey: u32,
    /// The destination QP (RC).
    pub remote_qpn: u32,
    /// The primary path's destination LID.
    pub dlid: u16,
    /// The next PSN sent, and the next expected.
    pub sq_psn: u32,
    /// See `sq_psn`.
    pub rq_psn: u32,
    /// The primary path's P_Key index.
    pub pkey_index: u8,
    /// The port (1 or 2).
    pub port: u8,
    /// The MTU code (`IB_MTU_*`).
    pub mtu: u8,
}

/// The path and parameters INIT2RTR gives a QP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpPath {
    /// The port, 1 or 2.
    pub port: u8,
    /// The P_Key index.
    pub pkey_index: u8,
    /// RC: the destination LID and QP, the receive PSN; UD: unused.
    pub dlid: u16,
    /// The connected QP (RC).
    pub remote_qpn: u32,
    /// The first PSN expected (RC).
    pub rq_psn: u32,
    /// The Q_Key (UD).
    pub qkey: u32,
    /// The remote access granted (RC): `qp_context::PARAMS2_*` bits.
    pub remote_access: u32,
}

impl QpPath {
    /// An RC path on `port` to QP `remote_qpn` at `dlid`, P_Key index 0, receive PSN 0,
    /// remote read, write and atomics granted.
    pub fn rc(port: u8, dlid: u16, remote_qpn: u32) -> Self {
        Self {
            port,
            pkey_index: 0,
            dlid,
            remote_qpn,
            rq_psn: 0,
            qkey: 0,
            remote_access: qp_context::PARAMS2_ACCESS,
        }
    }
}

/// The buffer and MTT a CQ resize replaced ([`Mlx4Core::resize_cq`]).
#[derive(Debug)]
pub struct ResizedCq<B> {
    /// The old buffer: still holds CQEs until the consumer moved them.
    pub buffer: Option<QueueMemory<B>>,
    mtt: Option<Mtt>,
}

/// An RC requester's retry counts (`params1` of the QP context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpRetries {
    /// Retries after a transport timeout (0..7).
    pub retry_count: u8,
    /// Retries after an RNR NAK (0..7, 7: forever).
    pub rnr_retry: u8,
}

impl QpRetries {
    /// Seven of each: RNR retries forever.
    pub const FOREVER: Self = Self {
        retry_count: 7,
        rnr_retry: 7,
    };
}

/// PortInfo as MAD_IFC answers a Get, the fields the IB device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The port's LID.
    pub lid: u16,
    /// The SM's LID.
    pub sm_lid: u16,
    /// The subnet prefix.
    pub gid_prefix: u64,
    /// The capability mask.
    pub capability_mask: u32,
    /// The logical state (1 DOWN .. 5 ACTIVE_DEFER).
    pub state: u8,
    /// The physical state (1..7).
    pub phys_state: u8,
    /// The LMC.
    pub lmc: u8,
    /// The active width.
    pub width_active: u8,
    /// The active lane speed (PortInfo:LinkSpeedActive, 1 SDR, 2 DDR, 4 QDR).
    pub speed_active: u8,
    /// The SM's SL.
    pub sm_sl: u8,
    /// The subnet timeout the SM set.
    pub subnet_timeout: u8,
    /// The largest MTU the port supports and the one the link runs (IB MTU codes, 1 256
    /// .. 5 4096).
    pub mtu_cap: u8,
    /// The neighbour MTU: the link's active MTU.
    pub mtu_active: u8,
    /// The data VLs the port supports (VLCap: 1 VL0, 2 VL0-1, 3 VL0-3 ...).
    pub vl_cap: u8,
}

impl PortInfo {
    /// Parses a MAD_IFC answer to Get(PortInfo) of `port`: a GetResp of the LID-routed
    /// SMP class with status 0, for PortInfo, whose fields are in range.
    pub fn parse(answer: &[u8]) -> Result<Self, InvalidCap> {
        check_get_resp(answer, mad::ATTR_PORT_INFO, "PortInfo (0x0015)")?;
        let m = Mailbox(answer);
        let refuse = |field, value: u64, expected| {
            Err(InvalidCap {
                field,
                value,
                expected,
            })
        };
        let at = |o: usize| mad::SMP_DATA.saturating_add(o);
        let state = m.u8(at(port_info::SPEED_STATE)) & 0xf;
        if !(1..=5).contains(&state) {
            return refuse("PORT_INFO_PORT_STATE", state.into(), "1..5");
        }
        let phys_state = m.u8(at(port_info::PHYS_STATE)) >> 4;
        if !(1..=7).contains(&phys_state) {
            return refuse("PORT_INFO_PHYS_STATE", phys_state.into(), "1..7");
        }
        Ok(Self {
            lid: m.u16(at(port_info::LID)),
            sm_lid: m.u16(at(port_info::SM_LID)),
            gid_prefix: m.u64(at(port_info::GID_PREFIX)),
            capability_mask: m.u32(at(port_info::CAP_MASK)),
            state,
            phys_state,
            lmc: m.u8(at(port_info::LMC)) & 7,
            width_active: m.u8(at(port_info::WIDTH_ACTIVE)),
            speed_active: m.u8(at(port_info::SPEED_ACTIVE)) >> 4,
            sm_sl: m.u8(at(port_info::MTU_SMSL)) & 0xf,
            subnet_timeout: m.u8(at(port_info::SUBNET_TIMEOUT)) & 0x1f,
            mtu_cap: m.u8(at(port_info::MTU_CAP)) & 0xf,
            mtu_active: m.u8(at(port_info::MTU_SMSL)) >> 4,
            vl_cap: m.u8(at(port_info::VL_CAP)) >> 4,
        })
    }
}

/// NodeInfo (IBA 14.2.5.3) as MAD_IFC answers a Get: what the IB device names itself by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The system image GUID.
    pub sys_image_guid: u64,
    /// The node GUID.
    pub node_guid: u64,
    /// The PCI device ID the SMA reports.
    pub device_id: u16,
    /// The device revision.
    pub revision: u32,
}

impl NodeInfo {
    /// Parses a MAD_IFC answer to Get(NodeInfo).
    pub fn parse(answer: &[u8]) -> Result<Self, InvalidCap> {
        check_get_resp(answer, mad::ATTR_NODE_INFO, "NodeInfo (0x0011)")?;
        let m = Mailbox(answer);
        let at = |o: usize| mad::SMP_DATA.saturating_add(o);
        Ok(Self {
            sys_image_guid: m.u64(at(node_info::SYS_IMAGE_GUID)),
            node_guid: m.u64(at(node_info::NODE_GUID)),
            device_id: m.u16(at(node_info::DEVICE_ID)),
            revision: m.u32(at(node_info::REVISION)),
        })
    }
}

/// Checks that `answer` is a GetResp of the LID-routed SMP class with status 0 for
/// attribute `attr` (`what` names it), at least a MAD long.
fn check_get_resp(answer: &[u8], attr: u16, what: &'static str) -> Result<(), InvalidCap> {
    let refuse = |field, value: u64, expected| {
        Err(InvalidCap {
            field,
            value,
            expected,
        })
    };
    if answer.len() < mad::SIZE {
        return refuse("MAD_IFC_LENGTH", answer.len() as u64, "a 256-byte MAD");
    }
    let m = Mailbox(answer);
    if m.u8(mad::MGMT_CLASS) != mad::CLASS_SUBN_LID_ROUTED {
        return refuse(
            "MAD_MGMT_CLASS",
            m.u8(mad::MGMT_CLASS).into(),
            "the LID-routed SMP class (0x01)",
        );
    }
    if m.u8(mad::METHOD) != mad::METHOD_GET_RESP {
        return refuse("MAD_METHOD", m.u8(mad::METHOD).into(), "GetResp (0x81)");
    }
    let status = m.u16(mad::STATUS) & 0x7fff;
    if status != 0 {
        return refuse("MAD_STATUS", status.into(), "0");
    }
    if m.u16(mad::ATTR_ID) != attr {
        return refuse("MAD_ATTR_ID", m.u16(mad::ATTR_ID).into(), what);
    }
    Ok(())
}

fn exhausted(step: Step) -> ProbeError {
    ProbeError::Exhausted { step }
}

fn no_memory(step: Step) -> ProbeError {
    ProbeError::Memory {
        step,
        error: AllocError::NoMemory,
    }
}

/// Keeps the first error of a release that goes on.
fn keep(first: &mut Option<ProbeError>, error: ProbeError) {
    if first.is_none() {
        *first = Some(error);
    }
}

fn done(first: Option<ProbeError>) -> Result<(), ProbeError> {
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

impl<B> Mlx4Core<B> {
    fn device(&self) -> Result<(DevCaps, IcmLayout), ProbeError> {
        let info = self.info().ok_or(exhausted(Step::Tables))?;
        Ok((info.caps, info.layout))
    }

    /// Sets up the CQ, QP and MPT number tables (`mlx4_init_cq_table`,
    /// `mlx4_init_qp_table`, `mlx4_init_mr_table`): numbers above the reserved ones,
    /// QPs above the special QPs too.
    pub(super) fn init_object_tables(
        &mut self,
        caps: &DevCaps,
        layout: &IcmLayout,
    ) -> Result<(), ProbeError> {
        let cqns = IdBitmap::new(layout.num_cqs.into(), caps.reserved_cqs.into())
            .map_err(|_| exhausted(Step::Tables))?;
        // `base_sqpn` = the reserved QPs aligned to 8; the special QPs follow.
        let base_sqpn = caps.reserved_qps.div_ceil(8).saturating_mul(8);
        let qpns = IdBitmap::new(
            layout.num_qps.into(),
            u64::from(base_sqpn).saturating_add(SPECIAL_QPS.into()),
        )
        .map_err(|_| exhausted(Step::Tables))?;
        let mpts = IdBitmap::new(layout.num_mpts, caps.reserved_mrws.into())
            .map_err(|_| exhausted(Step::Tables))?;
        self.cqns = Some(cqns);
        self.qpns = Some(qpns);
        self.mpt_indices = Some(mpts);
        self.mcg = super::mcg::McgTable::new(layout, caps.max_qp_per_mcg);
        self.base_sqpn = base_sqpn;
        Ok(())
    }

    /// Drops the number tables (their objects must be gone: the device forgets them at
    /// CLOSE_HCA).
    pub(super) fn drop_object_tables(&mut self) {
        self.cqns = None;
        self.qpns = None;
        self.mpt_indices = None;
        self.mcg = None;
    }

    /// Blocks deliberately leaked by object releases whose command failed.
    pub fn leaked_blocks(&self) -> usize {
        self.leaked_objects
    }

    /// MTT entries allocated now (the async EQ's included).
    pub fn mtt_entries_in_use(&self) -> u32 {
        self.mtts.as_ref().map_or(0, IdBitmap::in_use)
    }

    /// CQ, QP and MPT numbers handed out now.
    pub fn objects_in_use(&self) -> (u32, u32, u32) {
        let used = |t: Option<u32>| t.unwrap_or(0);
        (
            used(self.cqns.as_ref().map(IdBitmap::in_use)),
            used(self.qpns.as_ref().map(IdBitmap::in_use)),
            used(self.mpt_indices.as_ref().map(IdBitmap::in_use)),
        )
    }

    /// Table chunks mapped on demand now.
    pub fn demand_chunks(&self) -> usize {
        self.demand.iter().flatten().count()
    }

    // ---- ICM on demand -------------------------------------------------------------

    fn span(resource: Resource, layout: &IcmLayout) -> IcmSpan {
        let t = layout.table(resource);
        IcmSpan {
            base: t.base,
            size: t.size,
        }
    }

    /// The cMPT region of `region` (0 QPs, 2 CQs), `mlx4_init_icm`'s `cmpt_base`.
    fn cmpt_span(region: u64, num: u64, caps: &DevCaps, layout: &IcmLayout) -> IcmSpan {
        let entry = u64::from(caps.entry_sizes.cmpt);
        IcmSpan {
            base: layout
                .table(Resource::Cmpt)
                .base
                .wrapping_add(region.wrapping_mul(entry) << CMPT_SHIFT),
            size: num.saturating_mul(entry),
        }
    }

    /// `mlx4_table_get` of entry `index` of `entry_size` bytes (or the range of `count`).
    fn table_get<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        span: IcmSpan,
        entry_size: u64,
        index: u64,
        count: u64,
    ) -> Result<(), ProbeError> {
        let (first, last) =
            Self::chunk_range(span, entry_size, index, count).ok_or(exhausted(step))?;
        let mut chunk = first;
        while chunk <= last {
            if let Err(e) = self.chunk_get(p, step, span, chunk) {
                // Unwind the chunks taken so far.
                let mut back = first;
                while back < chunk {
                    let _ = self.chunk_put(p, span, back);
                    back += 1;
                }
                return Err(e);
            }
            chunk += 1;
        }
        Ok(())
    }

    /// `mlx4_table_put` of what `table_get` took.
    fn table_put<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        span: IcmSpan,
        entry_size: u64,
        index: u64,
        count: u64,
    ) -> Result<(), ProbeError> {
        let Some((first, last)) = Self::chunk_range(span, entry_size, index, count) else {
            return Ok(());
        };
        let mut result = None;
        let mut chunk = first;
        while chunk <= last {
            if let Err(e) = self.chunk_put(p, span, chunk) {
                keep(&mut result, e);
            }
            chunk += 1;
        }
        done(result)
    }

    /// The chunk size of a table: 256 KiB, or the table rounded up to a page if smaller.
    fn chunk_size(span: IcmSpan) -> u64 {
        let page = ICM_PAGE_SIZE as u64;
        TABLE_CHUNK_SIZE.min(span.size.div_ceil(page).saturating_mul(page))
    }

    fn chunk_range(span: IcmSpan, entry_size: u64, index: u64, count: u64) -> Option<(u64, u64)> {
        let start = index.checked_mul(entry_size)?;
        let len = count.checked_mul(entry_size)?;
        let end = start.checked_add(len)?.checked_sub(1)?;
        if end >= span.size {
            return None;
        }
        let size = Self::chunk_size(span);
        Some((start.checked_div(size)?, end.checked_div(size)?))
    }

    fn chunk_get<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        span: IcmSpan,
        chunk: u64,
    ) -> Result<(), ProbeError> {
        let size = Self::chunk_size(span);
        let address = span.base.wrapping_add(chunk.wrapping_mul(size));
        // Mapped at probe (the reserved entries' chunks): held for the HCA's life.
        if self.icm.iter_from(0).any(|c| {
            c.mapped
                && c.icm_address <= address
                && address < c.icm_address.saturating_add(c.pages() << ICM_PAGE_SHIFT)
        }) {
            return Ok(());
        }
        if let Some(d) = self
            .demand
            .iter_mut()
            .flatten()
            .find(|d| d.chunk.icm_address == address)
        {
            d.refs = d.refs.checked_add(1).ok_or(exhausted(step))?;
            return Ok(());
        }
        let slot = self
            .demand
            .iter()
            .position(Option::is_none)
            .ok_or(ProbeError::Memory {
                step,
                error: AllocError::TooManyChunks,
            })?;
        let log_pages = (size >> ICM_PAGE_SHIFT).checked_ilog2().unwrap_or(0);
        let block = p.alloc(log_pages).ok_or(no_memory(step))?;
        let bus_address = p.bus_address(&block);
        if bus_address & size.wrapping_sub(1) != 0 {
            p.free(block);
            return Err(ProbeError::Memory {
                step,
                error: AllocError::Misaligned,
            });
        }
        let mut chunk = Chunk {
            block,
            bus_address,
            log_pages,
            icm_address: address,
            mapped: false,
        };
        let vpm = chunk.vpm_entry();
        if let Err(e) = self.write_inbox(p, &vpm) {
            p.free(chunk.block);
            return Err(e);
        }
        let cmd = Command::new(opcode::MAP_ICM)
            .in_param(self.inbox_address())
            .in_modifier(1);
        if let Err(e) = self.command(p, step, cmd) {
            p.free(chunk.block);
            return Err(e);
        }
        chunk.mapped = true;
        if let Some(s) = self.demand.get_mut(slot) {
            *s = Some(DemandChunk { chunk, refs: 1 });
        }
        Ok(())
    }

    fn chunk_put<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        span: IcmSpan,
        chunk: u64,
    ) -> Result<(), ProbeError> {
        let size = Self::chunk_size(span);
        let address = span.base.wrapping_add(chunk.wrapping_mul(size));
        let Some(slot) = self
            .demand
            .iter_mut()
            .find(|d| d.as_ref().is_some_and(|d| d.chunk.icm_address == address))
        else {
            // A chunk mapped at probe.
            return Ok(());
        };
        if let Some(d) = slot.as_mut() {
            d.refs = d.refs.saturating_sub(1);
            if d.refs > 0 {
                return Ok(());
            }
        }
        let Some(d) = slot.take() else {
            return Ok(());
        };
        self.unmap_demand_chunk(p, d.chunk)
    }

    fn unmap_demand_chunk<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        chunk: Chunk<B>,
    ) -> Result<(), ProbeError> {
        let cmd = Command::new(opcode::UNMAP_ICM)
            .in_param(chunk.icm_address)
            .in_modifier(chunk.pages() as u32);
        match self.command(p, Step::UnmapIcm, cmd) {
            Ok(_) => {
                p.free(chunk.block);
                Ok(())
            }
            Err(e) => {
                self.leaked_objects = self.leaked_objects.saturating_add(leak(chunk));
                Err(e)
            }
        }
    }

    /// Unmaps every chunk still mapped on demand (the teardown, after CLOSE_HCA);
    /// returns the chunks leaked and notes the first failure.
    pub(super) fn release_demand<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        failure: &mut Option<(Step, CmdError)>,
    ) -> usize {
        let mut leaked = 0;
        for index in 0..DEMAND_CHUNKS {
            let Some(d) = self.demand.get_mut(index).and_then(Option::take) else {
                continue;
            };
            let cmd = Command::new(opcode::UNMAP_ICM)
                .in_param(d.chunk.icm_address)
                .in_modifier(d.chunk.pages() as u32);
            match self.cmd.exec(p, &cmd) {
                Ok(()) => p.free(d.chunk.block),
                Err(error) => {
                    super::probe::note(failure, Step::UnmapIcm, error);
                    leaked += leak(d.chunk);
                }
            }
        }
        leaked
    }

    // ---- MTT -----------------------------------------------------------------------

    /// `mlx4_mtt_init`: `count` entries (rounded up to a power of two, aligned to it,
    /// as the buddy allocator hands them out), their ICM mapped.
    pub fn alloc_mtt<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        count: u32,
        page_shift: u32,
    ) -> Result<Mtt, ProbeError> {
        let step = Step::Mtt;
        let (caps, layout) = self.device()?;
        let count = count
            .max(1)
            .checked_next_power_of_two()
            .ok_or(exhausted(step))?;
        let first = self
            .mtts
            .as_mut()
            .and_then(|m| m.alloc_range(count, count))
            .ok_or(exhausted(step))?;
        let span = Self::span(Resource::Mtt, &layout);
        let entry = u64::from(caps.entry_sizes.mtt);
        if let Err(e) = self.table_get(p, step, span, entry, first.into(), count.into()) {
            if let Some(m) = self.mtts.as_mut() {
                m.free_range(first, count);
            }
            return Err(e);
        }
        Ok(Mtt {
            first,
            count,
            page_shift,
        })
    }

    /// `mlx4_mtt_cleanup`.
    pub fn free_mtt<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mtt: Mtt,
    ) -> Result<(), ProbeError> {
        let (caps, layout) = self.device()?;
        let span = Self::span(Resource::Mtt, &layout);
        let entry = u64::from(caps.entry_sizes.mtt);
        let result = self.table_put(p, span, entry, mtt.first.into(), mtt.count.into());
        if let Some(m) = self.mtts.as_mut() {
            m.free_range(mtt.first, mtt.count);
        }
        result
    }

    /// `mlx4_write_mtt`: writes the pages' bus addresses (with the present bit) into
    /// entries `mtt.first + start ..` through the CPU, into the MTT table's ICM.
    pub fn write_mtt_pages<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mtt: &Mtt,
        start: u32,
        pages: &[u64],
    ) -> Result<(), ProbeError> {
        let (caps, layout) = self.device()?;
        let base = layout.table(Resource::Mtt).base;
        let entry_size = u64::from(caps.entry_sizes.mtt);
        for (i, &address) in pages.iter().enumerate() {
            let offset = u32::try_from(i)
                .ok()
                .and_then(|i| i.checked_add(start))
                .filter(|&o| o < mtt.count)
                .ok_or(ProbeError::MttNotMapped { entry: mtt.first })?;
            let entry = mtt.first.saturating_add(offset);
            self.write_mtt_entry(p, base, entry_size, entry, address)?;
        }
        Ok(())
    }

    /// Writes one MTT entry into whichever mapped chunk (probe's or on demand) holds it.
    pub(super) fn write_mtt_entry<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mtt_base: u64,
        entry_size: u64,
        entry: u32,
        bus_address: u64,
    ) -> Result<(), ProbeError> {
        let missing = ProbeError::MttNotMapped { entry };
        let address = u64::from(entry)
            .checked_mul(entry_size)
            .and_then(|o| o.checked_add(mtt_base))
            .ok_or(missing)?;
        let holds = |c: &Chunk<B>| {
            let size = c.pages() << ICM_PAGE_SHIFT;
            c.mapped
                && address >= c.icm_address
                && address.saturating_add(entry_size) <= c.icm_address.saturating_add(size)
        };
        let chunk = self
            .icm
            .iter_from(0)
            .find(|c| holds(c))
            .or_else(|| {
                self.demand
                    .iter()
                    .flatten()
                    .map(|d| &d.chunk)
                    .find(|c| holds(c))
            })
            .ok_or(missing)?;
        let offset = usize::try_from(address - chunk.icm_address).map_err(|_| missing)?;
        let value = (bus_address | MTT_PRESENT).to_be_bytes();
        if p.write(&chunk.block, offset, &value) {
            Ok(())
        } else {
            Err(missing)
        }
    }

    // ---- Memory regions ------------------------------------------------------------

    /// The DMA MR (`mlx4_ib_get_dma_mr`): physical, over all of memory, local access;
    /// its key is the local DMA lkey.
    pub fn create_dma_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        pd: u32,
        access: MrAccess,
    ) -> Result<MemoryRegion, ProbeError> {
        self.create_mr(p, pd, access, 0, u64::MAX, None, false)
    }

    /// A fast-registration region for up to `max_pages` pages (`mlx4_ib_alloc_mr`): an
    /// MPT in the free state with the fast-register flag and an MTT range of its own,
    /// which REG_MR WQEs fill from their page lists.
    pub fn create_fast_reg_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        pd: u32,
        max_pages: u32,
    ) -> Result<MemoryRegion, ProbeError> {
        let mtt = self.alloc_mtt(p, max_pages.max(1), 0)?;
        self.create_mr(p, pd, MrAccess(0), 0, 0, Some(mtt), true)
    }

    /// A region over pages (`mlx4_mr_alloc`, `mlx4_write_mtt`, `mlx4_mr_enable`).
    pub fn create_page_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        pd: u32,
        access: MrAccess,
        region: &PageRegion<'_>,
    ) -> Result<MemoryRegion, ProbeError> {
        let count = u32::try_from(region.pages.len()).map_err(|_| exhausted(Step::Mtt))?;
        let mtt = self.alloc_mtt(p, count, region.page_shift)?;
        if let Err(e) = self.write_mtt_pages(p, &mtt, 0, region.pages) {
            let _ = self.free_mtt(p, mtt);
            return Err(e);
        }
        self.create_mr(p, pd, access, region.iova, region.length, Some(mtt), false)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        pd: u32,
        access: MrAccess,
        iova: u64,
        length: u64,
        mtt: Option<Mtt>,
        fast_reg: bool,
    ) -> Result<MemoryRegion, ProbeError> {
        let step = Step::Sw2HwMpt;
        let Some(index) = self.mpt_indices.as_mut().and_then(IdBitmap::alloc) else {
            if let Some(mtt) = mtt {
                let _ = self.free_mtt(p, mtt);
            }
            return Err(exhausted(step));
        };
        let mut mr = MemoryRegion {
            index,
            key: mpt_entry::hw_index_to_key(index),
            mtt,
            icm: false,
            in_hardware: false,
        };
        match self.enable_mr(p, &mut mr, pd, access, (iova, length), fast_reg) {
            Ok(()) => Ok(mr),
            Err(e) => {
                let _ = self.destroy_mr(p, mr);
                Err(e)
            }
        }
    }

    fn enable_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mr: &mut MemoryRegion,
        pd: u32,
        access: MrAccess,
        (iova, length): (u64, u64),
        fast_reg: bool,
    ) -> Result<(), ProbeError> {
        let step = Step::Sw2HwMpt;
        let (caps, layout) = self.device()?;
        let span = Self::span(Resource::Dmpt, &layout);
        self.table_get(
            p,
            step,
            span,
            caps.entry_sizes.dmpt.into(),
            mr.index.into(),
            1,
        )?;
        mr.icm = true;

        let mut entry = [0u8; mpt_entry::SIZE];
        let mut m = Mailbox(&mut entry[..]);
        let mut flags =
            mpt_entry::FLAG_MIO | mpt_entry::FLAG_REGION | (access.0 & mpt_entry::PERM_MASK);
        m.set_u32(mpt_entry::KEY, mpt_entry::key_to_hw_index(mr.key));
        m.set_u32(
            mpt_entry::PD_FLAGS,
            (pd & 0x00ff_ffff) | mpt_entry::PD_FLAG_EN_INV,
        );
        m.set_u64(mpt_entry::START, iova);
        m.set_u64(mpt_entry::LENGTH, length);
        match &mr.mtt {
            None => {
                flags |= mpt_entry::FLAG_PHYSICAL;
                m.set_u32(mpt_entry::ENTITY_SIZE, 12);
            }
            Some(mtt) => {
                let address = mtt.address(caps.entry_sizes.mtt);
                m.set_u64(mpt_entry::MTT_ADDR, address);
                m.set_u32(mpt_entry::ENTITY_SIZE, mtt.page_shift);
                if fast_reg {
                    // Free until a REG_MR fills it (`mlx4_mr_enable` with page shift 0).
                    flags |= mpt_entry::FLAG_FREE;
                    m.set_u32(
                        mpt_entry::PD_FLAGS,
                        (pd & 0x00ff_ffff)
                            | mpt_entry::PD_FLAG_EN_INV
                            | mpt_entry::PD_FLAG_FAST_REG
                            | mpt_entry::PD_FLAG_RAE,
                    );
                    m.set_u32(mpt_entry::MTT_SZ, mtt.count);
                }
            }
        }
        m.set_u32(mpt_entry::FLAGS, flags);
        self.write_inbox(p, &entry)?;
        let cmd = Command::new(opcode::SW2HW_MPT)
            .in_param(self.inbox_address())
            .in_modifier(mr.index);
        self.command(p, step, cmd)?;
        mr.in_hardware = true;
        Ok(())
    }

    /// `mlx4_mr_free`: HW2SW_MPT, the ICM and MTT put back, the index freed. A region
    /// the device keeps (HW2SW_MPT failed) keeps its MTT and ICM: its index is not
    /// reused.
    pub fn destroy_mr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mr: MemoryRegion,
    ) -> Result<(), ProbeError> {
        let mut first = None;
        if mr.in_hardware {
            let cmd = Command::new(opcode::HW2SW_MPT)
                .in_modifier(mr.index)
                .op_modifier(1);
            if let Err(e) = self.command(p, Step::Hw2SwMpt, cmd) {
                self.leaked_objects = self.leaked_objects.saturating_add(1);
                return Err(e);
            }
        }
        if mr.icm {
            let (caps, layout) = self.device()?;
            let span = Self::span(Resource::Dmpt, &layout);
            if let Err(e) =
                self.table_put(p, span, caps.entry_sizes.dmpt.into(), mr.index.into(), 1)
            {
                keep(&mut first, e);
            }
        }
        if let Some(mtt) = mr.mtt {
            if let Err(e) = self.free_mtt(p, mtt) {
                keep(&mut first, e);
            }
        }
        if let Some(t) = self.mpt_indices.as_mut() {
            t.free(mr.index);
        }
        done(first)
    }

    // ---- Queue memory ----------------------------------------------------------------

    fn alloc_queue_memory<P: Platform<Block = B>>(
        p: &mut P,
        step: Step,
        log_pages: u32,
    ) -> Result<QueueMemory<B>, ProbeError> {
        if log_pages > MAX_QUEUE_LOG_PAGES {
            return Err(exhausted(step));
        }
        let block = p.alloc(log_pages).ok_or(no_memory(step))?;
        let bus_address = p.bus_address(&block);
        Ok(QueueMemory {
            block,
            bus_address,
            log_pages,
        })
    }

    /// An MTT over a queue buffer's 4 KiB pages, written.
    fn queue_mtt<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        bus_address: u64,
        log_pages: u32,
    ) -> Result<Mtt, ProbeError> {
        let pages = 1u32 << log_pages.min(MAX_QUEUE_LOG_PAGES);
        let mtt = self.alloc_mtt(p, pages, ICM_PAGE_SHIFT)?;
        // A few pages at a time: the list stays small on the stack.
        let mut written = 0;
        while written < pages {
            let mut addresses = [0u64; 16];
            let count = (pages - written).min(addresses.len() as u32);
            for (i, a) in addresses.iter_mut().enumerate().take(count as usize) {
                *a = bus_address.wrapping_add((u64::from(written) + i as u64) << ICM_PAGE_SHIFT);
            }
            let list = addresses.get(..count as usize).unwrap_or(&[]);
            if let Err(e) = self.write_mtt_pages(p, &mtt, written, list) {
                let _ = self.free_mtt(p, mtt);
                return Err(e);
            }
            written += count;
        }
        Ok(mtt)
    }

    fn free_queue_memory<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        memory: Option<QueueMemory<B>>,
        device_keeps: bool,
    ) {
        if let Some(m) = memory {
            if device_keeps {
                core::mem::forget(m.block);
                self.leaked_objects = self.leaked_objects.saturating_add(1);
            } else {
                p.free(m.block);
            }
        }
    }

    // ---- CQs -----------------------------------------------------------------------

    /// `mlx4_cq_alloc` as `mlx4_ib_create_cq` drives it: a CQ of `2^log_entries` 32-byte
    /// CQEs reporting to EQ `eqn`, its doorbell on UAR page `uar`.
    pub fn create_cq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        log_entries: u32,
        eqn: u32,
        uar: u32,
    ) -> Result<CompletionQueue<B>, ProbeError> {
        let step = Step::Sw2HwCq;
        let (caps, _) = self.device()?;
        if log_entries > caps.max_cq_size.checked_ilog2().unwrap_or(0) {
            return Err(exhausted(step));
        }
        let cqn = self
            .cqns
            .as_mut()
            .and_then(IdBitmap::alloc)
            .ok_or(exhausted(step))?;
        let mut cq = CompletionQueue {
            cqn,
            log_entries,
            buffer: None,
            doorbell: None,
            mtt: None,
            icm: false,
            in_hardware: false,
        };
        match self.enable_cq(p, &mut cq, eqn, uar) {
            Ok(()) => Ok(cq),
            Err(e) => {
                let _ = self.destroy_cq(p, cq);
                Err(e)
            }
        }
    }

    fn enable_cq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        cq: &mut CompletionQueue<B>,
        eqn: u32,
        uar: u32,
    ) -> Result<(), ProbeError> {
        let step = Step::Sw2HwCq;
        let (caps, layout) = self.device()?;
        // `mlx4_cq_alloc_icm`: the CQ context and its cMPT.
        let span = Self::span(Resource::Cqc, &layout);
        self.table_get(p, step, span, caps.entry_sizes.cqc.into(), cq.cqn.into(), 1)?;
        cq.icm = true;
        let cmpt = Self::cmpt_span(2, layout.num_cqs.into(), &caps, &layout);
        if let Err(e) = self.table_get(
            p,
            step,
            cmpt,
            caps.entry_sizes.cmpt.into(),
            cq.cqn.into(),
            1,
        ) {
            let _ = self.table_put(p, span, caps.entry_sizes.cqc.into(), cq.cqn.into(), 1);
            cq.icm = false;
            return Err(e);
        }

        let bytes_shift = cq.log_entries.saturating_add(CQE_SHIFT);
        let log_pages = bytes_shift.saturating_sub(ICM_PAGE_SHIFT);
        let buffer = Self::alloc_queue_memory(p, Step::QueueMemory, log_pages)?;
        let (buffer_address, buffer_pages) = (buffer.bus_address, buffer.log_pages);
        cq.buffer = Some(buffer);
        let doorbell = Self::alloc_queue_memory(p, Step::QueueMemory, 0)?;
        let db_address = doorbell.bus_address;
        cq.doorbell = Some(doorbell);
        let mtt = self.queue_mtt(p, buffer_address, buffer_pages)?;
        cq.mtt = Some(mtt);

        let mut context = [0u8; cq_context::SIZE];
        let mut m = Mailbox(&mut context[..]);
        m.set_u32(
            cq_context::LOGSIZE_USRPAGE,
            (cq.log_entries << 24) | (uar & 0x00ff_ffff),
        );
        m.set_u8(cq_context::COMP_EQN, eqn as u8);
        m.set_u8(cq_context::LOG_PAGE_SIZE, 0);
        let mtt_address = mtt.address(caps.entry_sizes.mtt);
        m.set_u8(cq_context::MTT_BASE_ADDR_H, (mtt_address >> 32) as u8);
        m.set_u32(cq_context::MTT_BASE_ADDR_L, mtt_address as u32);
        m.set_u64(cq_context::DB_REC_ADDR, db_address);
        self.write_inbox(p, &context)?;
        let cmd = Command::new(opcode::SW2HW_CQ)
            .in_param(self.inbox_address())
            .in_modifier(cq.cqn);
        self.command(p, step, cmd)?;
        cq.in_hardware = true;
        Ok(())
    }

    /// `mlx4_cq_resize`: a new buffer of `2^log_entries` CQEs, with its MTT, given to the
    /// device by MODIFY_CQ. The device writes a RESIZE CQE into the old buffer and the
    /// next CQEs into the new one; the old buffer and MTT come back, for
    /// [`Mlx4Core::free_resized_cq`] once the CQEs still in them have been moved
    /// (`fastpath::cq::CompletionQueue::resize`). On failure the CQ is as it was.
    pub fn resize_cq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        cq: &mut CompletionQueue<B>,
        log_entries: u32,
    ) -> Result<ResizedCq<B>, ProbeError> {
        let step = Step::ResizeCq;
        let (caps, _) = self.device()?;
        if log_entries > caps.max_cq_size.checked_ilog2().unwrap_or(0) {
            return Err(exhausted(step));
        }
        let log_pages = log_entries
            .saturating_add(CQE_SHIFT)
            .saturating_sub(ICM_PAGE_SHIFT);
        let buffer = Self::alloc_queue_memory(p, Step::QueueMemory, log_pages)?;
        let mtt = match self.queue_mtt(p, buffer.bus_address, buffer.log_pages) {
            Ok(mtt) => mtt,
            Err(e) => {
                p.free(buffer.block);
                return Err(e);
            }
        };
        let mut context = [0u8; cq_context::SIZE];
        let mut m = Mailbox(&mut context[..]);
        m.set_u32(cq_context::LOGSIZE_USRPAGE, log_entries << 24);
        m.set_u8(cq_context::LOG_PAGE_SIZE, 0);
        let mtt_address = mtt.address(caps.entry_sizes.mtt);
        m.set_u8(cq_context::MTT_BASE_ADDR_H, (mtt_address >> 32) as u8);
        m.set_u32(cq_context::MTT_BASE_ADDR_L, mtt_address as u32);
        let resized = self.write_inbox(p, &context).and_then(|()| {
            let cmd = Command::new(opcode::MODIFY_CQ)
                .in_param(self.inbox_address())
                .in_modifier(cq.cqn)
                .op_modifier(0);
            self.command(p, step, cmd)
        });
        if let Err(e) = resized {
            // The device did not take the new buffer (a command that failed changed
            // nothing): it goes back.
            let _ = self.free_mtt(p, mtt);
            p.free(buffer.block);
            return Err(e);
        }
        let old_buffer = cq.buffer.replace(buffer);
        let old_mtt = cq.mtt.replace(mtt);
        cq.log_entries = log_entries;
        Ok(ResizedCq {
            buffer: old_buffer,
            mtt: old_mtt,
        })
    }

    /// Frees what a resize replaced, once nothing reads it any more.
    pub fn free_resized_cq<P: Platform<Block = B>>(&mut self, p: &mut P, old: ResizedCq<B>) {
        if let Some(mtt) = old.mtt {
            let _ = self.free_mtt(p, mtt);
        }
        self.free_queue_memory(p, old.buffer, false);
    }

    /// `mlx4_cq_free`: HW2SW_CQ, then everything it held. A CQ the device keeps keeps
    /// its memory (leaked), its ICM and its number.
    pub fn destroy_cq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        cq: CompletionQueue<B>,
    ) -> Result<(), ProbeError> {
        let mut first = None;
        if cq.in_hardware {
            let cmd = Command::new(opcode::HW2SW_CQ).in_modifier(cq.cqn);
            if let Err(e) = self.command(p, Step::Hw2SwCq, cmd) {
                self.free_queue_memory(p, cq.buffer, true);
                self.free_queue_memory(p, cq.doorbell, true);
                return Err(e);
            }
        }
        if let Some(mtt) = cq.mtt {
            if let Err(e) = self.free_mtt(p, mtt) {
                keep(&mut first, e);
            }
        }
        self.free_queue_memory(p, cq.buffer, false);
        self.free_queue_memory(p, cq.doorbell, false);
        if cq.icm {
            let (caps, layout) = self.device()?;
            let cmpt = Self::cmpt_span(2, layout.num_cqs.into(), &caps, &layout);
            if let Err(e) = self.table_put(p, cmpt, caps.entry_sizes.cmpt.into(), cq.cqn.into(), 1)
            {
                keep(&mut first, e);
            }
            let span = Self::span(Resource::Cqc, &layout);
            if let Err(e) = self.table_put(p, span, caps.entry_sizes.cqc.into(), cq.cqn.into(), 1) {
                keep(&mut first, e);
            }
        }
        if let Some(t) = self.cqns.as_mut() {
            t.free(cq.cqn);
        }
        done(first)
    }

    // ---- QPs -----------------------------------------------------------------------

    /// A QP in RESET (`mlx4_ib`'s `create_qp_common`: the number, `mlx4_qp_alloc_icm`'s
    /// five tables, the buffer, its doorbell record and MTT). The device learns of it at
    /// RST2INIT.
    pub fn create_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        config: QpConfig,
    ) -> Result<QueuePair<B>, ProbeError> {
        Self::check_qp_config(&self.device()?.0, &config)?;
        let qpn = self
            .qpns
            .as_mut()
            .and_then(IdBitmap::alloc)
            .ok_or(exhausted(Step::QpMemory))?;
        self.create_qp_numbered(p, qpn, false, config)
    }

    /// A special QP of `port` (1 or 2): QP0 (`gsi` false, the SMI's) or QP1 (the GSI's),
    /// at the number CONF_SPECIAL_QP gave it (base + port - 1, QP1s after the two QP0s;
    /// `mlx4_ib`'s `create_qp_common` for `IB_QPT_SMI` and `IB_QPT_GSI`). Its transport
    /// must be [`QpTransport::Mlx`].
    pub fn create_special_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        gsi: bool,
        config: QpConfig,
    ) -> Result<QueuePair<B>, ProbeError> {
        let caps = self.device()?.0;
        Self::check_qp_config(&caps, &config)?;
        if config.transport != QpTransport::Mlx || !(1..=caps.num_ports.min(2)).contains(&port) {
            return Err(exhausted(Step::QpMemory));
        }
        let qpn = self.special_qpn(port, gsi);
        self.create_qp_numbered(p, qpn, true, config)
    }

    /// The number of `port`'s QP0, or QP1 if `gsi`.
    pub fn special_qpn(&self, port: u8, gsi: bool) -> u32 {
        self.base_sqpn + u32::from(gsi) * 2 + u32::from(port.saturating_sub(1))
    }

    fn is_qp0(&self, qpn: u32) -> bool {
        qpn == self.base_sqpn || qpn == self.base_sqpn + 1
    }

    /// `mlx4_qp_reserve_range`: `count` QP numbers aligned to `align` (RSS ranges, or
    /// any QP whose number the caller picks); `None` when none is left.
    pub fn reserve_qp_range(&mut self, count: u32, align: u32) -> Option<u32> {
        self.qpns.as_mut()?.alloc_range(count, align)
    }

    /// `mlx4_qp_release_range`.
    pub fn release_qp_range(&mut self, first: u32, count: u32) -> bool {
        self.qpns
            .as_mut()
            .is_some_and(|t| t.free_range(first, count))
    }

    /// A QP with number `qpn` from a range [`Mlx4Core::reserve_qp_range`] gave; the
    /// number stays reserved after the QP is destroyed.
    pub fn create_qp_in_range<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qpn: u32,
        config: QpConfig,
    ) -> Result<QueuePair<B>, ProbeError> {
        Self::check_qp_config(&self.device()?.0, &config)?;
        self.create_qp_numbered(p, qpn, true, config)
    }

    fn check_qp_config(caps: &DevCaps, config: &QpConfig) -> Result<(), ProbeError> {
        let step = Step::QpMemory;
        let sq_ok = (6..=11).contains(&config.log_sq_stride) && config.log_sq_entries <= 15;
        let rq_ok = (4..=11).contains(&config.log_rq_stride) && config.log_rq_entries <= 15;
        let fits = |log: u32| 1u32.checked_shl(log).is_some_and(|n| n <= caps.max_qp_size);
        let fits = fits(config.log_sq_entries) && fits(config.log_rq_entries);
        if sq_ok && rq_ok && fits {
            Ok(())
        } else {
            Err(exhausted(step))
        }
    }

    fn create_qp_numbered<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qpn: u32,
        from_range: bool,
        config: QpConfig,
    ) -> Result<QueuePair<B>, ProbeError> {
        let sq_bytes = 1u64 << (config.log_sq_entries + config.log_sq_stride);
        let rq_bytes = 1u64 << (config.log_rq_entries + config.log_rq_stride);
        // The queue with the larger stride first, so each starts at a multiple of its
        // stride (`mlx4_ib`'s `set_kernel_sq_size` layout).
        let (rq_offset, sq_offset) = if config.log_rq_stride > config.log_sq_stride {
            (0, rq_bytes)
        } else {
            (sq_bytes, 0)
        };
        let mut qp = QueuePair {
            qpn,
            config,
            buffer: None,
            doorbell: None,
            sq_offset,
            rq_offset,
            state: QpState::Reset,
            mtt: None,
            icm: false,
            from_range,
        };
        match self.prepare_qp(p, &mut qp, sq_bytes.saturating_add(rq_bytes)) {
            Ok(()) => Ok(qp),
            Err(e) => {
                let _ = self.destroy_qp(p, qp);
                Err(e)
            }
        }
    }

    /// The QP's tables: QPC, AUXC, ALTC, RDMARC (`2^log_rd` entries per QP) and its
    /// cMPT, as `mlx4_qp_alloc_icm` takes them.
    fn qp_spans(caps: &DevCaps, layout: &IcmLayout) -> [(IcmSpan, u64, u64); 5] {
        let t = |r: Resource| {
            let t = layout.table(r);
            IcmSpan {
                base: t.base,
                size: t.size,
            }
        };
        let sizes = &caps.entry_sizes;
        let rd = 1u64 << layout.log_rd_per_qp.min(31);
        [
            (t(Resource::Qpc), sizes.qpc.into(), 1),
            (t(Resource::Auxc), sizes.auxc.into(), 1),
            (t(Resource::Altc), sizes.altc.into(), 1),
            (
                t(Resource::Rdmarc),
                u64::from(sizes.rdmarc).saturating_mul(rd),
                1,
            ),
            (
                Self::cmpt_span(0, layout.num_qps.into(), caps, layout),
                sizes.cmpt.into(),
                1,
            ),
        ]
    }

    fn prepare_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        bytes: u64,
    ) -> Result<(), ProbeError> {
        let step = Step::QpMemory;
        let (caps, layout) = self.device()?;
        let spans = Self::qp_spans(&caps, &layout);
        for (i, &(span, entry, count)) in spans.iter().enumerate() {
            if let Err(e) = self.table_get(p, step, span, entry, qp.qpn.into(), count) {
                for &(span, entry, count) in spans.iter().take(i) {
                    let _ = self.table_put(p, span, entry, qp.qpn.into(), count);
                }
                return Err(e);
            }
        }
        qp.icm = true;
        let log_bytes = bytes.checked_next_power_of_two().map_or(64, u64::ilog2);
        let log_pages = log_bytes.saturating_sub(ICM_PAGE_SHIFT);
        let buffer = Self::alloc_queue_memory(p, Step::QueueMemory, log_pages)?;
        let (address, pages) = (buffer.bus_address, buffer.log_pages);
        // Every send WQE software-owned on lap 0 (owner bit set), before the device can
        // look (`mlx4_ib`'s `RESET -> INIT` ownership init): a zeroed WQE would read as
        // one posted.
        let stride = 1usize << qp.config.log_sq_stride;
        for index in 0..1usize << qp.config.log_sq_entries {
            let at = usize::try_from(qp.sq_offset)
                .ok()
                .and_then(|o| o.checked_add(index.checked_mul(stride)?));
            let written = at.is_some_and(|at| p.write(&buffer.block, at, &[0x80]));
            if !written {
                p.free(buffer.block);
                return Err(ProbeError::MailboxAccess);
            }
        }
        qp.buffer = Some(buffer);
        qp.doorbell = Some(Self::alloc_queue_memory(p, Step::QueueMemory, 0)?);
        qp.mtt = Some(self.queue_mtt(p, address, pages)?);
        Ok(())
    }

    /// The context every transition carries (`__mlx4_ib_modify_qp` fills these each
    /// time): transport, sizes, UAR, PD, CQs, doorbell record, MTT, the port's
    /// scheduling queue.
    fn qp_base_context(
        &self,
        qp: &QueuePair<B>,
        port: u8,
        uar: u32,
    ) -> Result<[u8; qp_context::MAILBOX_OFFSET + qp_context::SIZE], ProbeError> {
        let (caps, _) = self.device()?;
        let c = &qp.config;
        let mut mailbox = [0u8; qp_context::MAILBOX_OFFSET + qp_context::SIZE];
        let (_, context) = mailbox.split_at_mut(qp_context::MAILBOX_OFFSET);
        let mut m = Mailbox(context);
        m.set_u32(
            qp_context::FLAGS,
            (u32::from(c.transport.st()) << 16) | qp_context::PM_MIGRATED,
        );
        m.set_u32(qp_context::PD, c.pd & 0x00ff_ffff);
        let mtu_msgmax = match c.transport {
            QpTransport::Rc => (IB_MTU_2048 << 5) | LOG_MAX_MSG,
            // UD and the special QPs: IB_MTU_4096 and 2^11-byte messages (`mlx4_ib`'s
            // UD, SMI and GSI cases).
            QpTransport::Ud | QpTransport::Mlx => (5 << 5) | 11,
        };
        m.set_u8(qp_context::MTU_MSGMAX, mtu_msgmax);
        m.set_u8(
            qp_context::RQ_SIZE_STRIDE,
            ((c.log_rq_entries as u8) << 3) | (c.log_rq_stride.saturating_sub(4) as u8 & 7),
        );
        m.set_u8(
            qp_context::SQ_SIZE_STRIDE,
            ((c.log_sq_entries as u8) << 3) | (c.log_sq_stride.saturating_sub(4) as u8 & 7),
        );
        m.set_u32(qp_context::USR_PAGE, uar & 0x00ff_ffff);
        m.set_u32(qp_context::LOCAL_QPN, qp.qpn);
        m.set_u32(qp_context::CQN_SEND, c.send_cqn & 0x00ff_ffff);
        m.set_u32(qp_context::CQN_RECV, c.recv_cqn & 0x00ff_ffff);
        if let Some(db) = qp.doorbell.as_ref() {
            m.set_u64(qp_context::DB_REC_ADDR, db.bus_address);
        }
        if let Some(mtt) = qp.mtt.as_ref() {
            let address = mtt.address(caps.entry_sizes.mtt);
            m.set_u8(qp_context::LOG_PAGE_SIZE, 0);
            m.set_u8(qp_context::MTT_BASE_ADDR_H, (address >> 32) as u8);
            m.set_u32(qp_context::MTT_BASE_ADDR_L, address as u32);
        }
        let port_bit = (port.saturating_sub(1) & 1) << 6;
        // QP0 sends on VL15, its own scheduling queue (`MLX4_IB_DEFAULT_QP0_SCHED_QUEUE`).
        let sched_queue = if c.transport == QpTransport::Mlx && self.is_qp0(qp.qpn) {
            qp_context::SCHED_QUEUE_QP0
        } else {
            qp_context::SCHED_QUEUE_IB_DEFAULT
        };
        m.set_u8(
            qp_context::PRI_PATH + qp_context::PATH_SCHED_QUEUE,
            sched_queue | port_bit,
        );
        Ok(mailbox)
    }

    fn modify_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        op: u16,
        mailbox: &[u8],
        to: QpState,
    ) -> Result<(), ProbeError> {
        let step = Step::ModifyQp(op);
        self.write_inbox(p, mailbox)?;
        let cmd = Command::new(op)
            .in_param(self.inbox_address())
            .in_modifier(qp.qpn);
        self.command(p, step, cmd)?;
        qp.state = to;
        Ok(())
    }

    /// RST2INIT: the port, P_Key index, Q_Key (UD) and remote access (RC).
    pub fn qp_to_init<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        path: &QpPath,
        uar: u32,
    ) -> Result<(), ProbeError> {
        self.qp_init_transition(p, qp, path, uar, QpState::Reset, opcode::RST2INIT_QP)
    }

    /// INIT2INIT: the port, P_Key index, and the remote access (RC) or Q_Key (UD) again,
    /// under their optional parameters (`mlx4_ib`'s for `IB_QP_PORT`, `IB_QP_PKEY_INDEX`,
    /// `IB_QP_ACCESS_FLAGS`, `IB_QP_QKEY`): what the RDMA CM sends before INIT2RTR.
    pub fn qp_init_to_init<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        path: &QpPath,
        uar: u32,
    ) -> Result<(), ProbeError> {
        self.qp_init_transition(p, qp, path, uar, QpState::Init, opcode::INIT2INIT_QP)
    }

    /// RST2INIT or INIT2INIT from `from`: the same context, the optional-parameter mask
    /// naming what it sets (RST2INIT takes the whole context and ignores the mask).
    fn qp_init_transition<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        path: &QpPath,
        uar: u32,
        from: QpState,
        op: u16,
    ) -> Result<(), ProbeError> {
        if qp.state != from {
            return Err(ProbeError::QpState { qpn: qp.qpn });
        }
        let mut mailbox = self.qp_base_context(qp, path.port, uar)?;
        let (header, context) = mailbox.split_at_mut(qp_context::MAILBOX_OFFSET);
        let mut m = Mailbox(context);
        m.set_u8(
            qp_context::PRI_PATH + qp_context::PATH_PKEY_INDEX,
            path.pkey_index,
        );
        let optpar = qp_optpar::PKEY_INDEX
            | qp_optpar::SCHED_QUEUE
            | match qp.config.transport {
                QpTransport::Rc => {
                    m.set_u32(
                        qp_context::PARAMS2,
                        path.remote_access & qp_context::PARAMS2_ACCESS,
                    );
                    qp_optpar::ACCESS
                }
                QpTransport::Ud | QpTransport::Mlx => {
                    m.set_u32(qp_context::QKEY, path.qkey);
                    qp_optpar::Q_KEY
                }
            };
        if op == opcode::INIT2INIT_QP {
            Mailbox(header).set_u32(qp_context::OPTPAR, optpar);
        }
        self.modify_qp(p, qp, op, &mailbox, QpState::Init)
    }

    /// INIT2RTR: RC: the destination LID and QP, the receive PSN, the MTU; UD: nothing
    /// new (the Q_Key again under its optional parameter).
    pub fn qp_to_rtr<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        path: &QpPath,
        uar: u32,
    ) -> Result<(), ProbeError> {
        if qp.state != QpState::Init {
            return Err(ProbeError::QpState { qpn: qp.qpn });
        }
        let mut mailbox = self.qp_base_context(qp, path.port, uar)?;
        let (header, context) = mailbox.split_at_mut(qp_context::MAILBOX_OFFSET);
        let mut m = Mailbox(context);
        m.set_u8(
            qp_context::PRI_PATH + qp_context::PATH_PKEY_INDEX,
            path.pkey_index,
        );
        let optpar = match qp.config.transport {
            QpTransport::Rc => {
                m.set_u32(qp_context::REMOTE_QPN, path.remote_qpn & 0x00ff_ffff);
                m.set_u16(qp_context::PRI_PATH + qp_context::PATH_RLID, path.dlid);
                // ACK timeout 14 (about 67 ms) in bits 3..8.
                m.set_u8(qp_context::PRI_PATH + qp_context::PATH_ACKTO, 14 << 3);
                m.set_u32(
                    qp_context::RNR_NEXTRECVPSN,
                    (12 << 24) | (path.rq_psn & 0x00ff_ffff),
                );
                m.set_u32(
                    qp_context::PARAMS2,
                    path.remote_access & qp_context::PARAMS2_ACCESS,
                );
                qp_optpar::ACCESS
            }
            QpTransport::Ud | QpTransport::Mlx => {
                m.set_u32(qp_context::QKEY, path.qkey);
                qp_optpar::Q_KEY
            }
        };
        Mailbox(header).set_u32(qp_context::OPTPAR, optpar);
        self.modify_qp(p, qp, opcode::INIT2RTR_QP, &mailbox, QpState::Rtr)
    }

    /// RTR2RTS: the send PSN, retry counts (7, 7: RNR retries forever).
    pub fn qp_to_rts<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        port: u8,
        sq_psn: u32,
        uar: u32,
    ) -> Result<(), ProbeError> {
        self.qp_to_rts_with_retries(p, qp, port, sq_psn, QpRetries::FOREVER, uar)
    }

    /// As [`Mlx4Core::qp_to_rts`], with the RC requester's retry counts (`IB_QP_RETRY_CNT`,
    /// `IB_QP_RNR_RETRY`; 7 RNR retries mean forever).
    pub fn qp_to_rts_with_retries<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        port: u8,
        sq_psn: u32,
        retries: QpRetries,
        uar: u32,
    ) -> Result<(), ProbeError> {
        if qp.state != QpState::Rtr {
            return Err(ProbeError::QpState { qpn: qp.qpn });
        }
        let mut mailbox = self.qp_base_context(qp, port, uar)?;
        let (_, context) = mailbox.split_at_mut(qp_context::MAILBOX_OFFSET);
        let mut m = Mailbox(context);
        m.set_u32(qp_context::NEXT_SEND_PSN, sq_psn & 0x00ff_ffff);
        if qp.config.transport == QpTransport::Rc {
            m.set_u32(
                qp_context::PARAMS1,
                (u32::from(retries.retry_count & 7) << 16)
                    | (u32::from(retries.rnr_retry & 7) << 13),
            );
            m.set_u8(qp_context::PRI_PATH + qp_context::PATH_ACKTO, 14 << 3);
        }
        self.modify_qp(p, qp, opcode::RTR2RTS_QP, &mailbox, QpState::Rts)
    }

    /// RTS2RTS of a UD or special QP with a new Q_Key (`IB_QP_QKEY` alone: what the
    /// kernel's IPoIB sets when it learns the broadcast group's).
    pub fn qp_set_qkey<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
        port: u8,
        qkey: u32,
        uar: u32,
    ) -> Result<(), ProbeError> {
        if qp.state != QpState::Rts || qp.config.transport == QpTransport::Rc {
            return Err(ProbeError::QpState { qpn: qp.qpn });
        }
        let mut mailbox = self.qp_base_context(qp, port, uar)?;
        let (header, context) = mailbox.split_at_mut(qp_context::MAILBOX_OFFSET);
        Mailbox(context).set_u32(qp_context::QKEY, qkey);
        Mailbox(header).set_u32(qp_context::OPTPAR, qp_optpar::Q_KEY);
        self.modify_qp(p, qp, opcode::RTS2RTS_QP, &mailbox, QpState::Rts)
    }

    /// QUERY_QP (`mlx4_qp_query`): the QP's context as the device has it now, with its
    /// state (a QP the device moved to an error state on its own reads so).
    pub fn query_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &QueuePair<B>,
    ) -> Result<QpContextQuery, ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = Command::new(opcode::QUERY_QP)
            .in_modifier(qp.qpn)
            .out_param(outbox.bus_address);
        self.command(p, Step::ModifyQp(opcode::QUERY_QP), cmd)?;
        let mut out = [0u8; qp_context::MAILBOX_OFFSET + qp_context::SIZE];
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if !p.read(&outbox.block, 0, &mut out) {
            return Err(ProbeError::MailboxAccess);
        }
        let (_, context) = out.split_at(qp_context::MAILBOX_OFFSET);
        let m = Mailbox(context);
        Ok(QpContextQuery {
            state: m.u8(qp_context::FLAGS) >> 4,
            qkey: m.u32(qp_context::QKEY),
            remote_qpn: m.u32(qp_context::REMOTE_QPN) & 0x00ff_ffff,
            dlid: m.u16(qp_context::PRI_PATH + qp_context::PATH_RLID),
            sq_psn: m.u32(qp_context::NEXT_SEND_PSN) & 0x00ff_ffff,
            rq_psn: m.u32(qp_context::RNR_NEXTRECVPSN) & 0x00ff_ffff,
            pkey_index: m.u8(qp_context::PRI_PATH + qp_context::PATH_PKEY_INDEX),
            port: ((m.u8(qp_context::PRI_PATH + qp_context::PATH_SCHED_QUEUE) >> 6) & 1) + 1,
            mtu: m.u8(qp_context::MTU_MSGMAX) >> 5,
        })
    }

    /// 2ERR: every outstanding WQE completes flushed.
    pub fn qp_to_error<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
    ) -> Result<(), ProbeError> {
        if qp.state == QpState::Reset {
            return Err(ProbeError::QpState { qpn: qp.qpn });
        }
        let mailbox = [0u8; qp_context::MAILBOX_OFFSET + qp_context::SIZE];
        self.modify_qp(p, qp, opcode::TO_ERR_QP, &mailbox, QpState::Error)
    }

    /// 2RST (`mlx4_qp_modify` to RESET: no mailbox, op modifier 2).
    pub fn qp_to_reset<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        qp: &mut QueuePair<B>,
    ) -> Result<(), ProbeError> {
        if qp.state == QpState::Reset {
            return Ok(());
        }
        let cmd = Command::new(opcode::TO_RST_QP)
            .in_modifier(qp.qpn)
            .op_modifier(2);
        self.command(p, Step::ModifyQp(opcode::TO_RST_QP), cmd)?;
        qp.state = QpState::Reset;
        Ok(())
    }

    /// `destroy_qp_common`: 2RST if the device holds it, then everything it held. A QP
    /// the device keeps (2RST failed) keeps its memory (leaked), ICM and number.
    pub fn destroy_qp<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mut qp: QueuePair<B>,
    ) -> Result<(), ProbeError> {
        let mut first = None;
        if let Err(e) = self.qp_to_reset(p, &mut qp) {
            self.free_queue_memory(p, qp.buffer, true);
            self.free_queue_memory(p, qp.doorbell, true);
            return Err(e);
        }
        if let Some(mtt) = qp.mtt {
            if let Err(e) = self.free_mtt(p, mtt) {
                keep(&mut first, e);
            }
        }
        self.free_queue_memory(p, qp.buffer, false);
        self.free_queue_memory(p, qp.doorbell, false);
        if qp.icm {
            let (caps, layout) = self.device()?;
            for &(span, entry, count) in Self::qp_spans(&caps, &layout).iter().rev() {
                if let Err(e) = self.table_put(p, span, entry, qp.qpn.into(), count) {
                    keep(&mut first, e);
                }
            }
        }
        if !qp.from_range {
            if let Some(t) = self.qpns.as_mut() {
                t.free(qp.qpn);
            }
        }
        done(first)
    }

    /// `mlx4_CONF_SPECIAL_QP`: the special QPs from `base_sqpn` (`mlx4_init_qp_table`).
    pub fn conf_special_qps<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<u32, ProbeError> {
        let cmd = Command::new(opcode::CONF_SPECIAL_QP).in_modifier(self.base_sqpn);
        self.command(p, Step::ConfSpecialQp, cmd)?;
        Ok(self.base_sqpn)
    }

    // ---- MAD_IFC -------------------------------------------------------------------

    /// `mlx4_MAD_IFC`: hands `mad` to the port's SMA and returns its answer
    /// (`MLX4_MAD_IFC_IGNORE_KEYS`, as the driver's own queries do).
    pub fn mad_ifc<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        mad_in: &[u8; mad::SIZE],
        mad_out: &mut [u8; mad::SIZE],
    ) -> Result<(), ProbeError> {
        self.write_inbox(p, mad_in)?;
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = Command::new(opcode::MAD_IFC)
            .in_param(self.inbox_address())
            .out_param(outbox.bus_address)
            .in_modifier(port.into())
            .op_modifier(MAD_IFC_IGNORE_KEYS);
        self.command(p, Step::MadIfc(port), cmd)?;
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if p.read(&outbox.block, 0, mad_out) {
            Ok(())
        } else {
            Err(ProbeError::MailboxAccess)
        }
    }

    /// A Get SMP of `attr` with modifier `attr_mod` to `port`'s SMA, its answer in
    /// `answer` (as `mlx4_MAD_IFC` with `init_query_mad`).
    fn smp_get<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        attr: u16,
        attr_mod: u32,
        answer: &mut [u8; mad::SIZE],
    ) -> Result<(), ProbeError> {
        let mut smp = [0u8; mad::SIZE];
        let mut m = Mailbox(&mut smp[..]);
        m.set_u8(mad::BASE_VERSION, 1);
        m.set_u8(mad::MGMT_CLASS, mad::CLASS_SUBN_LID_ROUTED);
        m.set_u8(mad::CLASS_VERSION, 1);
        m.set_u8(mad::METHOD, mad::METHOD_GET);
        m.set_u16(mad::ATTR_ID, attr);
        m.set_u32(mad::ATTR_MOD, attr_mod);
        self.mad_ifc(p, port, &smp, answer)
    }

    /// Get(PortInfo) of `port` through MAD_IFC, parsed (`mlx4_ib_query_port`).
    pub fn query_port_info<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
    ) -> Result<PortInfo, ProbeError> {
        let mut answer = [0u8; mad::SIZE];
        self.smp_get(p, port, mad::ATTR_PORT_INFO, port.into(), &mut answer)?;
        PortInfo::parse(&answer).map_err(ProbeError::InvalidCap)
    }

    /// Get(NodeInfo) through port 1's SMA (`init_node_data`).
    pub fn query_node_info<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<NodeInfo, ProbeError> {
        let mut answer = [0u8; mad::SIZE];
        self.smp_get(p, 1, mad::ATTR_NODE_INFO, 0, &mut answer)?;
        NodeInfo::parse(&answer).map_err(ProbeError::InvalidCap)
    }

    /// GUID `index` of `port`'s GUIDInfo table (8 GUIDs a block), through MAD_IFC
    /// (`__mlx4_ib_query_gid`: the port's GID is its subnet prefix and this GUID).
    pub fn query_guid<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        index: u32,
    ) -> Result<u64, ProbeError> {
        let mut answer = [0u8; mad::SIZE];
        self.smp_get(p, port, mad::ATTR_GUID_INFO, index / 8, &mut answer)?;
        check_get_resp(&answer, mad::ATTR_GUID_INFO, "GUIDInfo (0x0014)")
            .map_err(ProbeError::InvalidCap)?;
        let offset = (index % 8) as usize * 8;
        Ok(Mailbox(&answer[..]).u64(mad::SMP_DATA.saturating_add(offset)))
    }

    /// Block `block` of `port`'s P_Key table: 32 P_Keys, through MAD_IFC.
    pub fn query_pkey_block<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        block: u32,
    ) -> Result<[u16; 32], ProbeError> {
        let mut answer = [0u8; mad::SIZE];
        self.smp_get(p, port, mad::ATTR_PKEY_TABLE, block, &mut answer)?;
        check_get_resp(&answer, mad::ATTR_PKEY_TABLE, "P_KeyTable (0x0016)")
            .map_err(ProbeError::InvalidCap)?;
        let m = Mailbox(&answer[..]);
        let mut pkeys = [0u16; 32];
        for (i, pkey) in pkeys.iter_mut().enumerate() {
            *pkey = m.u16(mad::SMP_DATA.saturating_add(i * 2));
        }
        Ok(pkeys)
    }
}

/// `MLX4_MAD_IFC_IGNORE_KEYS`: M_Key and B_Key checks off.
const MAD_IFC_IGNORE_KEYS: u8 = 3;

const _: () = assert!(mad::SIZE <= MAILBOX_SIZE);
