//! The data path of the firmware-managed queues: send doorbells, the special QPs' MLX
//! work requests carried over the cable between the two ports, receives, CQEs, CQ
//! arming and completion events.
//!
//! Today it carries what the subnet manager and the MAD layer need: QP0 and QP1 (MLX
//! transport, `MLX4_QP_ST_MLX`), whose send WQEs hold the packet's LRH, optional GRH,
//! BTH and DETH inline, built by `mlx4_ib`'s `build_mlx_header`, followed by the MAD in
//! gather entries and a 4-byte ICRC slot. The device routes the packet to the port its
//! DLID names (the permissive LID 0xffff crosses the cable, the port's own LID loops
//! back) and scatters it into the destination QP's receive queue behind a 40-byte GRH
//! slot, as for any UD receive.
//!
//! Source: `drivers/infiniband/hw/mlx4/qp.c` (`build_mlx_header`, `set_data_seg`, the QP
//! buffer layout), `cq.c` (`mlx4_ib_poll_one`: the CQE fields a receive fills),
//! `include/linux/mlx4/qp.h` (`struct mlx4_qp_context`, `struct mlx4_wqe_mlx_seg`),
//! `include/linux/mlx4/cq.h` (`struct mlx4_cqe`, `mlx4_cq_arm`), `mlx4.h`
//! (`struct mlx4_cq_context`, `struct mlx4_mpt_entry`).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{Dma, Hca};
use crate::wire::fw::Mailbox;
use crate::wire::{DatagramSeg, EventType, Syndrome};

/// The QP context, CQ context and MPT entry: one definition, the driver's
/// (`wire::fw`).
mod qpc {
    pub use crate::wire::fw::qp_context::*;
    pub use crate::wire::fw::qp_optpar::{
        ACCESS as OPTPAR_ACCESS, PRIMARY_ADDR_PATH as OPTPAR_PRIMARY_ADDR_PATH,
        Q_KEY as OPTPAR_Q_KEY, SCHED_QUEUE as OPTPAR_SCHED_QUEUE,
    };
}
use crate::wire::fw::cq_context as cqc;
mod mpt {
    pub use crate::wire::fw::mpt_entry::*;
}

/// What a memory key is used for: through an lkey, the MPT must grant the local right;
/// through an R_Key, `check_rkey` has checked the remote right already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyUse {
    /// Gathering what a WQE sends.
    LocalRead,
    /// Scattering what arrives (a receive, a READ response, an atomic's old value).
    LocalWrite,
    /// The responder's side of an RDMA or atomic operation.
    Remote,
}

/// CQE layout (`struct mlx4_cqe`, 32 bytes).
mod cqe {
    pub const SIZE: u64 = 32;
    pub const MY_QPN: usize = 0x00;
    pub const IMMED_RSS_INVALID: usize = 0x04;
    pub const G_MLPATH_RQPN: usize = 0x08;
    pub const SL_VID: usize = 0x0c;
    pub const RLID: usize = 0x0e;
    pub const BYTE_CNT: usize = 0x14;
    pub const WQE_INDEX: usize = 0x18;
    pub const OWNER_SR_OPCODE: usize = 0x1f;
    pub const OWNER: u8 = 0x80;
    /// `MLX4_OPCODE_SEND` on the send side, `MLX4_RECV_OPCODE_SEND` on the receive side.
    pub const OPCODE_SEND: u8 = 0x0a;
    pub const RECV_OPCODE_SEND: u8 = 0x01;
    /// `MLX4_CQE_OPCODE_RESIZE`: the last CQE of a buffer a resize replaced.
    pub const OPCODE_RESIZE: u8 = 0x16;
}

/// Multicast LIDs (IBA 4.1.1).
const MULTICAST_LIDS: core::ops::RangeInclusive<u16> = 0xc000..=0xfffe;
/// The destination QP of a multicast datagram.
const MULTICAST_QPN: u32 = 0x00ff_ffff;
/// `MLX4_OPCODE_SEND_IMM`, and its receive-side opcode.
const OPCODE_SEND_IMM: u8 = 0x0b;
const RECV_OPCODE_SEND_IMM: u8 = 0x02;

/// The key of the "no more scatter entries" terminator (`MLX4_INVALID_LKEY`).
pub(super) const INVALID_LKEY: u32 = 0x100;
/// The GRH slot at the start of every UD and MLX receive buffer.
const GRH_BYTES: usize = 40;
/// The permissive LID: directed-route SMPs and their replies.
const PERMISSIVE_LID: u16 = 0xffff;

/// A QP's data path state: where its queues are and how far the device got.
#[derive(Clone, Debug, Default)]
pub(super) struct QpQueues {
    pub st: u8,
    pub port: usize,
    pub qkey: u32,
    pub cqn_send: u32,
    pub cqn_recv: u32,
    pub db_rec_addr: u64,
    pub mtt_offset: u64,
    pub log_page_size: u32,
    pub sq_offset: u64,
    pub log_sq_entries: u32,
    pub log_sq_stride: u32,
    pub rq_offset: u64,
    pub log_rq_entries: u32,
    pub log_rq_stride: u32,
    pub has_rq: bool,
    /// The SRQ its receives come from, when it has no receive queue of its own.
    pub srqn: Option<u32>,
    /// Next send WQE the device takes, and next receive WQE.
    pub sq_next: u32,
    pub rq_next: u32,
    /// RC: the connected QP, the PD, the path's destination LID, the RNR retry count (7:
    /// forever) and the access the responder grants (`params2` RRE, RWE, RAE).
    pub remote_qpn: u32,
    pub pd: u32,
    pub rlid: u16,
    pub rnr_retry: u8,
    pub remote_access: u32,
    /// RNR: the send at `sq_next` waits for a receive, retried this many times so far.
    pub rnr_waiting: Option<u32>,
    /// The UAR page of its send doorbell.
    pub usr_page: u32,
}

impl QpQueues {
    /// The queues a RST2INIT context describes (`mlx4_ib`'s buffer layout: the queue with
    /// the larger stride first).
    pub fn from_context(context: &[u8]) -> Self {
        let m = Mailbox(context);
        let rq = m.u8(qpc::RQ_SIZE_STRIDE);
        let sq = m.u8(qpc::SQ_SIZE_STRIDE);
        let log_rq_entries = u32::from((rq >> 3) & 0xf);
        let log_rq_stride = u32::from(rq & 7) + 4;
        let log_sq_entries = u32::from((sq >> 3) & 0xf);
        let log_sq_stride = u32::from(sq & 7) + 4;
        // A QP without a receive queue of its own takes its receives from an SRQ
        // (`srqn` bit 24); every other QP has one of at least one WQE.
        let has_rq = m.u32(qpc::SRQN) & (1 << 24) == 0;
        let srqn = (!has_rq).then(|| m.u32(qpc::SRQN) & 0x00ff_ffff);
        let rq_bytes = if has_rq {
            1u64 << (log_rq_entries + log_rq_stride)
        } else {
            0
        };
        let sq_bytes = 1u64 << (log_sq_entries + log_sq_stride);
        let (rq_offset, sq_offset) = if log_rq_stride > log_sq_stride {
            (0, rq_bytes)
        } else {
            (sq_bytes, 0)
        };
        let mut queues = Self {
            st: ((m.u32(qpc::FLAGS) >> 16) & 0xff) as u8,
            db_rec_addr: m.u64(qpc::DB_REC_ADDR),
            mtt_offset: (u64::from(m.u8(qpc::MTT_BASE_ADDR_H)) << 32)
                | u64::from(m.u32(qpc::MTT_BASE_ADDR_L)),
            log_page_size: u32::from(m.u8(qpc::LOG_PAGE_SIZE) & 0x3f),
            sq_offset,
            log_sq_entries,
            log_sq_stride,
            rq_offset,
            log_rq_entries,
            log_rq_stride,
            has_rq,
            srqn,
            usr_page: m.u32(qpc::USR_PAGE) & 0x00ff_ffff,
            ..Self::default()
        };
        queues.update(context, u32::MAX, true);
        queues
    }

    /// Takes what a later transition's context changes: the CQs always, the Q_Key and the
    /// port when the optional parameters (or the transition) say so.
    pub fn update(&mut self, context: &[u8], optpar: u32, path: bool) {
        let m = Mailbox(context);
        self.cqn_send = m.u32(qpc::CQN_SEND) & 0x00ff_ffff;
        self.cqn_recv = m.u32(qpc::CQN_RECV) & 0x00ff_ffff;
        if optpar & qpc::OPTPAR_Q_KEY != 0 {
            self.qkey = m.u32(qpc::QKEY);
        }
        if path || optpar & (qpc::OPTPAR_PRIMARY_ADDR_PATH | qpc::OPTPAR_SCHED_QUEUE) != 0 {
            let sched = m.u8(qpc::PRI_PATH + qpc::PATH_SCHED_QUEUE);
            self.port = usize::from((sched >> 6) & 1);
        }
        if path {
            self.remote_qpn = m.u32(qpc::REMOTE_QPN) & 0x00ff_ffff;
            self.rlid = m.u16(qpc::PRI_PATH + qpc::PATH_RLID);
        }
        let pd = m.u32(qpc::PD) & 0x00ff_ffff;
        if pd != 0 {
            self.pd = pd;
        }
        let params1 = m.u32(qpc::PARAMS1);
        if params1 != 0 {
            self.rnr_retry = ((params1 >> 13) & 7) as u8;
        }
        // RST2INIT takes them with the context (`from_context`); a later transition
        // under its optional parameters, as mlx4_ib always sends them.
        if optpar & qpc::OPTPAR_ACCESS != 0 {
            self.remote_access = m.u32(qpc::PARAMS2) & (7 << 13);
        }
        let _ = (qpc::PATH_SIZE, qpc::SIZE);
    }
}

/// An SRQ's device state (`struct mlx4_srq_context`, SW2HW_SRQ). Its WQEs are a linked
/// list the driver keeps: each starts with a 16-byte "next" segment naming the WQE after
/// it (`next_wqe_index`), then its scatter entries. The device takes them in that order
/// from WQE 0, as many as the doorbell record's count (of WQEs posted) is ahead of its own
/// count; a completion names the WQE by index, and the driver links it back at the tail.
#[derive(Clone, Debug, Default)]
pub(super) struct SrqState {
    pub log_size: u32,
    pub log_stride: u32,
    pub mtt_offset: u64,
    pub log_page_size: u32,
    pub db_rec_addr: u64,
    /// The WQE the device takes next, and how many it took.
    pub next: u32,
    pub taken: u32,
}

/// The "next" segment at the start of an SRQ WQE (`struct mlx4_wqe_srq_next_seg`).
pub(super) const SRQ_NEXT_SEG: usize = 16;

mod srqc {
    pub const STATE_LOGSIZE_SRQN: usize = 0x00;
    pub const LOGSTRIDE: usize = 0x04;
    pub const LOG_PAGE_SIZE: usize = 0x10;
    pub const MTT_BASE_ADDR_H: usize = 0x13;
    pub const MTT_BASE_ADDR_L: usize = 0x14;
    pub const DB_REC_ADDR: usize = 0x28;
}

impl SrqState {
    pub fn from_context(context: &[u8]) -> Self {
        let m = Mailbox(context);
        Self {
            log_size: (m.u32(srqc::STATE_LOGSIZE_SRQN) >> 24) & 0x1f,
            log_stride: u32::from(m.u8(srqc::LOGSTRIDE) & 7) + 4,
            mtt_offset: (u64::from(m.u8(srqc::MTT_BASE_ADDR_H)) << 32)
                | u64::from(m.u32(srqc::MTT_BASE_ADDR_L)),
            log_page_size: u32::from(m.u8(srqc::LOG_PAGE_SIZE) & 0x3f),
            db_rec_addr: m.u64(srqc::DB_REC_ADDR),
            next: 0,
            taken: 0,
        }
    }
}

/// A CQ's device state.
#[derive(Clone, Debug, Default)]
pub(super) struct CqState {
    pub log_size: u32,
    pub comp_eqn: u32,
    pub mtt_offset: u64,
    pub log_page_size: u32,
    pub db_rec_addr: u64,
    pub producer: u32,
    /// `REQ_NOT` (2) or `REQ_NOT_SOL` (1) when armed, else 0.
    pub armed: u32,
    /// The UAR page of its doorbell.
    pub uar_page: u32,
    /// Completion events raised so far: the driver counts them too (`arm_sn`, from 1),
    /// and names the count in each arm request.
    pub events: u32,
}

impl CqState {
    /// Disarms the CQ for the event it raises now; the EQ the event goes to.
    fn fire(&mut self) -> u32 {
        self.armed = 0;
        self.events = self.events.wrapping_add(1);
        self.comp_eqn
    }

    /// The sequence number an arm request made since the last event carries.
    fn arm_sn(&self) -> u32 {
        self.events.wrapping_add(1) & 3
    }
}

impl CqState {
    pub fn from_context(context: &[u8]) -> Self {
        let m = Mailbox(context);
        Self {
            log_size: (m.u32(cqc::LOGSIZE_USRPAGE) >> 24) & 0x1f,
            comp_eqn: u32::from(m.u8(cqc::COMP_EQN)),
            mtt_offset: (u64::from(m.u8(cqc::MTT_BASE_ADDR_H)) << 32)
                | u64::from(m.u32(cqc::MTT_BASE_ADDR_L)),
            log_page_size: u32::from(m.u8(cqc::LOG_PAGE_SIZE) & 0x3f),
            db_rec_addr: m.u64(cqc::DB_REC_ADDR),
            producer: 0,
            armed: 0,
            uar_page: m.u32(cqc::LOGSIZE_USRPAGE) & 0x00ff_ffff,
            events: 0,
        }
    }
}

/// A packet on the cable: the headers the LRH, BTH and DETH carried, and the payload.
#[derive(Clone, Debug)]
struct Packet {
    /// The QP that sent it (kept from multicast loopback to itself).
    sender_qpn: u32,
    /// Immediate data of a SEND with immediate.
    imm: Option<u32>,
    dlid: u16,
    slid: u16,
    sl: u8,
    vl15: bool,
    dest_qp: u32,
    src_qp: u32,
    pkey: u16,
    qkey: u32,
    grh: Option<[u8; GRH_BYTES]>,
    payload: Vec<u8>,
}

impl Packet {
    /// Its size on the wire, LRH to ICRC (the VCRC not counted, as IBA's data counters).
    fn wire_bytes(&self) -> usize {
        8 + self.grh.map_or(0, |_| GRH_BYTES) + 12 + 8 + self.payload.len() + 4
    }
}

/// What became of a send WQE.
pub(super) enum SendOutcome {
    /// A datagram went out (whether it asked for a completion).
    Sent(bool),
    /// An RC operation completed: its completion's opcode and byte count.
    Completed {
        signaled: bool,
        opcode: u8,
        byte_len: u32,
    },
    /// The responder has no receive posted: retry later.
    ReceiverNotReady,
    /// The operation failed with this syndrome; the QP goes to error.
    Failed(Syndrome),
}

/// Device timer ticks per RNR retry (the retry count's unit, about 10 ms at 1 ms ticks).
const RNR_TICKS_PER_RETRY: u32 = 10;

/// The most entries an EQ or a CQ may have: 2^22 (of 32 bytes, 128 MiB), a
/// ConnectX-3's limit; more is a driver mistake, refused before the device walks it.
pub(super) const MAX_LOG_QUEUE_ENTRIES: u32 = 22;
/// The largest payload of a datagram (the ports' MTU).
const MAX_DATAGRAM: usize = 4096;
/// The most one message may gather (a WQE's gather list could name up to 2^31 bytes per
/// entry; the device refuses rather than buffers that).
pub(super) const MAX_MESSAGE: usize = 16 << 20;

/// The shift of a queue's pages: `log_page_size` is in 4 KiB units, and pages beyond
/// 1 GiB are refused.
pub(super) fn page_shift(log_page_size: u32) -> Result<u32, String> {
    let shift = log_page_size + super::icm::ICM_PAGE_SHIFT;
    if shift > 30 {
        return Err(format!("pages of 2^{shift} bytes"));
    }
    Ok(shift)
}

/// Why a WQE could not be executed.
type WqeError = String;

impl Hca {
    /// The bus address of byte `offset` of a buffer described by MTT entries.
    pub(super) fn buffer_address(
        &self,
        dma: &dyn Dma,
        mtt_offset: u64,
        log_page_size: u32,
        offset: u64,
    ) -> Result<u64, String> {
        let page_shift = page_shift(log_page_size)?;
        let page = offset >> page_shift;
        let entry = self.mtt_entry(
            dma,
            mtt_offset.wrapping_add(page.wrapping_mul(super::MTT_ENTRY_SIZE)),
        )?;
        Ok(entry.wrapping_add(offset & ((1u64 << page_shift) - 1)))
    }

    /// Reads one WQE of `len` bytes at byte `offset` of a QP's buffer, through its MTT.
    /// A WQE never crosses a page: strides are powers of two of at most 2 KiB
    /// (`QpQueues::from_context`), each queue starts at a multiple of its stride (the
    /// queue with the larger stride first), and pages are 4 KiB or more.
    pub(super) fn read_wqe(
        &self,
        dma: &dyn Dma,
        mtt_offset: u64,
        log_page_size: u32,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, String> {
        let address = self.buffer_address(dma, mtt_offset, log_page_size, offset)?;
        let mut out = vec![0u8; len];
        dma.read(address, &mut out)
            .map_err(|f| format!("read at {:#x} outside mapped memory", f.address))?;
        Ok(out)
    }

    /// The bus address of `len` bytes at `va` under memory key `key`, through its MPT:
    /// physical MPTs pass the address through, others translate by their MTT.
    pub(super) fn key_address(
        &self,
        dma: &dyn Dma,
        key: u32,
        va: u64,
        len: usize,
        usage: KeyUse,
    ) -> Result<u64, String> {
        let init = self.init.as_ref().ok_or("a memory key before INIT_HCA")?;
        let index = (key >> 8) & ((1u32 << init.log_mpt_sz) - 1);
        let entry = self
            .mpts
            .get(&index)
            .ok_or_else(|| format!("lkey {key:#x}: MPT {index:#x} is not in hardware"))?;
        let m = Mailbox(&entry[..]);
        if m.u32(mpt::KEY) != key.rotate_left(24) {
            return Err(format!("lkey {key:#x}: MPT {index:#x} holds another key"));
        }
        let flags = m.u32(mpt::FLAGS);
        if flags & super::rc::mpt_flags::STATE_MASK == super::rc::mpt_flags::FREE {
            return Err(format!("lkey {key:#x}: MPT {index:#x} is invalidated"));
        }
        let (right, name) = match usage {
            KeyUse::LocalRead => (mpt::PERM_LOCAL_READ, "local read"),
            KeyUse::LocalWrite => (mpt::PERM_LOCAL_WRITE, "local write"),
            KeyUse::Remote => (0, ""),
        };
        if flags & right != right {
            return Err(format!("lkey {key:#x}: MPT {index:#x} grants no {name}"));
        }
        let start = m.u64(mpt::START);
        let length = m.u64(mpt::LENGTH);
        let end = va.checked_add(len as u64).ok_or("address overflow")?;
        if flags & mpt::FLAG_PHYSICAL != 0 {
            return Ok(va);
        }
        if va < start || end > start.saturating_add(length) {
            return Err(format!(
                "lkey {key:#x}: {va:#x}+{len:#x} outside the region {start:#x}+{length:#x}"
            ));
        }
        let page_shift = m.u32(mpt::ENTITY_SIZE) & 0x3f;
        if !(12..=40).contains(&page_shift) {
            return Err(format!(
                "lkey {key:#x}: MPT {index:#x} has pages of 2^{page_shift} bytes"
            ));
        }
        let base = start & !((1u64 << page_shift) - 1);
        let offset = va - base;
        let log_page = page_shift.saturating_sub(super::icm::ICM_PAGE_SHIFT);
        // The gather entry may cross pages; the caller reads page by page.
        self.buffer_address(dma, m.u64(mpt::MTT_ADDR), log_page, offset)
    }

    /// Copies `len` bytes from `va` under `key` into `out`, page by page.
    pub(super) fn gather(
        &self,
        dma: &dyn Dma,
        (key, usage): (u32, KeyUse),
        va: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut done = 0usize;
        while done < len {
            let at = va + done as u64;
            let chunk = ((4096 - (at & 4095)) as usize).min(len - done);
            let address = self.key_address(dma, key, at, chunk, usage)?;
            let mut buf = vec![0u8; chunk];
            dma.read(address, &mut buf)
                .map_err(|f| format!("gather at {:#x} outside mapped memory", f.address))?;
            out.extend_from_slice(&buf);
            done += chunk;
        }
        Ok(())
    }

    /// Copies `data` to `va` under `key`, page by page.
    pub(super) fn scatter(
        &self,
        dma: &dyn Dma,
        (key, usage): (u32, KeyUse),
        va: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let mut done = 0usize;
        while done < data.len() {
            let at = va + done as u64;
            let chunk = ((4096 - (at & 4095)) as usize).min(data.len() - done);
            let address = self.key_address(dma, key, at, chunk, usage)?;
            dma.write(address, &data[done..done + chunk])
                .map_err(|f| format!("scatter at {:#x} outside mapped memory", f.address))?;
            done += chunk;
        }
        Ok(())
    }

    /// A send doorbell for QP `qpn`: executes every WQE the driver handed over.
    pub(super) fn send_doorbell(&mut self, dma: &dyn Dma, qpn: u32) {
        let Some(queues) = self.qps.get(&qpn).and_then(|qp| qp.queues.clone()) else {
            self.driver_error(format!(
                "send doorbell for QP {qpn:#x}, which is not in INIT or later"
            ));
            return;
        };
        let entries = 1u32 << queues.log_sq_entries;
        // Bounded: at most one lap per doorbell.
        for _ in 0..entries {
            let index = self
                .qps
                .get(&qpn)
                .and_then(|qp| qp.queues.as_ref())
                .map_or(0, |q| q.sq_next);
            let offset =
                queues.sq_offset + (u64::from(index & (entries - 1)) << queues.log_sq_stride);
            let wqe = match self.read_wqe(
                dma,
                queues.mtt_offset,
                queues.log_page_size,
                offset,
                1 << queues.log_sq_stride,
            ) {
                Ok(wqe) => wqe,
                Err(e) => {
                    self.driver_error(format!("QP {qpn:#x} send WQE {index}: {e}"));
                    return;
                }
            };
            let owner = wqe.first().copied().unwrap_or(0) & 0x80 != 0;
            if owner != (index & entries != 0) {
                break;
            }
            let state = self.qps.get(&qpn).map(|qp| qp.state);
            if !matches!(
                state,
                Some(super::commands::QpStateKind::Rts | super::commands::QpStateKind::Error)
            ) {
                // Only RTS sends (and a QP in error flushes); the WQEs wait for RTS.
                return;
            }
            if self.qp_in_error(qpn) {
                // A QP in error flushes what it is handed.
                self.advance_sq(qpn);
                self.flush_cqe(dma, qpn, queues.cqn_send, index, true);
                continue;
            }
            let outcome = match queues.st {
                qpc::ST_MLX => self.execute_mlx(dma, qpn, &queues, &wqe),
                qpc::ST_UD => self.execute_ud(dma, qpn, &queues, &wqe),
                qpc::ST_RC => Ok(self.execute_rc(dma, qpn, &queues, &wqe)),
                st => Err(format!(
                    "transport {st} has no data path in this device yet"
                )),
            };
            match outcome {
                Ok(SendOutcome::Sent(signaled)) => {
                    self.advance_sq(qpn);
                    if signaled {
                        let opcode = wqe.get(3).copied().unwrap_or(0) & 0x1f;
                        self.send_cqe(dma, qpn, queues.cqn_send, index, opcode, 0);
                    }
                }
                Ok(SendOutcome::Completed {
                    signaled,
                    opcode,
                    byte_len,
                }) => {
                    self.advance_sq(qpn);
                    if signaled {
                        self.send_cqe(dma, qpn, queues.cqn_send, index, opcode, byte_len);
                    }
                }
                Ok(SendOutcome::ReceiverNotReady) => {
                    let retries = queues.rnr_waiting.map_or(0, |n| n + 1);
                    // 7 retries forever; otherwise the count, each a tick of the
                    // device's timer (about a millisecond) apart.
                    if queues.rnr_retry != 7
                        && retries >= u32::from(queues.rnr_retry) * RNR_TICKS_PER_RETRY
                    {
                        self.set_rnr_waiting(qpn, None);
                        self.advance_sq(qpn);
                        self.fail_qp(dma, qpn, index, Syndrome::RnrRetryExcErr);
                    } else {
                        self.set_rnr_waiting(qpn, Some(retries));
                    }
                    return;
                }
                Ok(SendOutcome::Failed(syndrome)) => {
                    self.advance_sq(qpn);
                    self.fail_qp(dma, qpn, index, syndrome);
                    return;
                }
                Err(e) => {
                    self.advance_sq(qpn);
                    self.driver_error(format!("QP {qpn:#x} send WQE {index}: {e}"));
                    self.fail_qp(dma, qpn, index, Syndrome::LocalQpOpErr);
                    return;
                }
            }
        }
    }

    /// An MLX WQE: the packet's headers inline, the payload gathered, the ICRC slot
    /// dropped. Returns whether the WQE asked for a completion.
    fn execute_mlx(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        queues: &QpQueues,
        wqe: &[u8],
    ) -> Result<SendOutcome, WqeError> {
        let m = Mailbox(wqe);
        let size = usize::from(m.u8(7) & 0x3f) * 16;
        if size < 32 || size > wqe.len() {
            return Err(format!("WQE size {size} for a {}-byte stride", wqe.len()));
        }
        let flags = m.u32(8);
        let signaled = flags & (3 << 2) != 0;
        let vl15 = flags & (1 << 17) != 0;
        let slr = flags & (1 << 16) != 0;
        let sl = ((flags >> 8) & 0xf) as u8;
        // A gather entry the key does not cover is the consumer's mistake: a local
        // protection error, as on the hardware.
        let Ok(bytes) = self.gather_segments(dma, wqe, 16, size) else {
            return Ok(SendOutcome::Failed(Syndrome::LocalProtErr));
        };
        // LRH (8), optional GRH (40), BTH (12), DETH (8), payload, ICRC (4).
        let lrh = bytes.get(..8).ok_or("no LRH")?;
        let lnh = lrh[1] & 3;
        let dlid = u16::from_be_bytes([lrh[2], lrh[3]]);
        let header_slid = u16::from_be_bytes([lrh[6], lrh[7]]);
        let mut at = 8;
        let grh = if lnh == 3 {
            let g: [u8; GRH_BYTES] = bytes
                .get(8..48)
                .and_then(|g| g.try_into().ok())
                .ok_or("short GRH")?;
            at += GRH_BYTES;
            Some(g)
        } else {
            None
        };
        let bth = bytes.get(at..at + 12).ok_or("no BTH")?;
        let pkey = u16::from_be_bytes([bth[2], bth[3]]);
        let dest_qp = u32::from_be_bytes([0, bth[5], bth[6], bth[7]]);
        let deth = bytes.get(at + 12..at + 20).ok_or("no DETH")?;
        let qkey = u32::from_be_bytes([deth[0], deth[1], deth[2], deth[3]]);
        let src_qp = u32::from_be_bytes([0, deth[5], deth[6], deth[7]]);
        let end = bytes.len().checked_sub(4).ok_or("no ICRC slot")?;
        let payload = bytes
            .get(at + 20..end)
            .ok_or("payload shorter than its headers")?
            .to_vec();
        let port = queues.port;
        // The driver puts only the path bits in the SLID unless SLR: the device adds the
        // port's LID.
        let slid = if slr {
            header_slid
        } else {
            self.sma.lid(port) | (header_slid & 0x7f)
        };
        let packet = Packet {
            sender_qpn: qpn,
            imm: None,
            dlid,
            slid,
            sl,
            vl15,
            dest_qp,
            src_qp,
            pkey,
            qkey,
            grh,
            payload,
        };
        self.route(dma, port, packet);
        Ok(SendOutcome::Sent(signaled))
    }

    /// The bytes a WQE's segments from `from` to `size` carry: inline segments (bit 31
    /// of the first word, `MLX4_INLINE_SEG`) and gather entries, in order.
    pub(super) fn gather_segments(
        &self,
        dma: &dyn Dma,
        wqe: &[u8],
        from: usize,
        size: usize,
    ) -> Result<Vec<u8>, WqeError> {
        let m = Mailbox(wqe);
        // Only what the WQE's size covers: what follows in the stride is stale.
        let segments = wqe.get(..size).ok_or("a WQE larger than its stride")?;
        let mut bytes = Vec::new();
        let mut at = from;
        // Segments start at multiples of 16 (`from` is one, and an inline segment is
        // padded to the next), as does `size`: a gather entry begun is a whole one.
        while at < size {
            let word = m.u32(at);
            if word & (1 << 31) != 0 {
                let len = (word & 0x3ff) as usize;
                let data = segments
                    .get(at + 4..at + 4 + len)
                    .ok_or("inline segment past the WQE")?;
                bytes.extend_from_slice(data);
                at = (at + 4 + len + 15) & !15;
            } else {
                let len = word as usize;
                let key = m.u32(at + 4);
                let addr = m.u64(at + 8);
                if len > MAX_MESSAGE.saturating_sub(bytes.len()) {
                    return Err(format!("a message over {MAX_MESSAGE} bytes"));
                }
                self.gather(dma, (key, KeyUse::LocalRead), addr, len, &mut bytes)?;
                at += 16;
            }
        }
        Ok(bytes)
    }

    /// A UD WQE (`build` in `mlx4_ib_post_send` for `IB_QPT_UD`): the control segment,
    /// the datagram segment with its address vector, then the payload. The device builds
    /// the LRH, the GRH when the address vector asks for one, the BTH and the DETH.
    fn execute_ud(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        queues: &QpQueues,
        wqe: &[u8],
    ) -> Result<SendOutcome, WqeError> {
        use zerocopy::FromBytes;
        let m = Mailbox(wqe);
        let size = usize::from(m.u8(7) & 0x3f) * 16;
        if size < 64 || size > wqe.len() {
            return Err(format!(
                "UD WQE size {size} for a {}-byte stride",
                wqe.len()
            ));
        }
        let opcode = m.u8(3) & 0x1f;
        let imm = match opcode {
            cqe::OPCODE_SEND => None,
            OPCODE_SEND_IMM => Some(m.u32(12)),
            other => return Err(format!("opcode {other:#x} on a UD QP")),
        };
        let signaled = m.u32(8) & (3 << 2) != 0;
        let (seg, _) = DatagramSeg::read_from_prefix(wqe.get(16..).unwrap_or(&[]))
            .map_err(|_| "no datagram segment")?;
        let Ok(payload) = self.gather_segments(dma, wqe, 64, size) else {
            return Ok(SendOutcome::Failed(Syndrome::LocalProtErr));
        };
        if payload.len() > MAX_DATAGRAM {
            return Ok(SendOutcome::Failed(Syndrome::LocalLengthErr));
        }
        let port = queues.port;
        let av = seg.av;
        let flow = av.sl_tclass_flowlabel.get();
        let qkey = match seg.qkey.get() {
            // A Q_Key with the high bit set means the QP's own (IBA 10.2.5).
            q if q & 0x8000_0000 != 0 => queues.qkey,
            q => q,
        };
        let grh = av.has_grh().then(|| {
            let mut g = [0u8; GRH_BYTES];
            let word0 = (6u32 << 28) | (flow & 0x0fff_ffff);
            g[..4].copy_from_slice(&word0.to_be_bytes());
            let paylen = (12 + 8 + payload.len() + 4) as u16;
            g[4..6].copy_from_slice(&paylen.to_be_bytes());
            g[6] = 0x1b; // next header: IBA transport
            g[7] = av.hop_limit;
            g[8..16].copy_from_slice(&self.sma.gid_prefix(port).to_be_bytes());
            g[16..24].copy_from_slice(&self.sma.port_guid(port).to_be_bytes());
            g[24..40].copy_from_slice(&av.dgid);
            g
        });
        let packet = Packet {
            sender_qpn: qpn,
            imm,
            dlid: av.dlid.get(),
            slid: self.sma.lid(port) | u16::from(av.g_slid & 0x7f),
            sl: (flow >> 28) as u8,
            vl15: false,
            dest_qp: seg.dqpn.get() & 0x00ff_ffff,
            src_qp: qpn,
            pkey: 0xffff,
            qkey,
            grh,
            payload,
        };
        self.route(dma, port, packet);
        Ok(SendOutcome::Sent(signaled))
    }

    /// Puts a packet sent on `port` on the cable or back on the port, by its DLID.
    fn route(&mut self, dma: &dyn Dma, port: usize, packet: Packet) {
        let peer = 1 - port;
        let wire_bytes = packet.wire_bytes();
        self.sma.count_xmit(port, wire_bytes);
        let link_up = self.sma.link_up();
        let owns = |hca: &Hca, p: usize| {
            let lid = hca.sma.lid(p);
            lid != 0 && (packet.dlid & !hca.sma.lmc_mask(p)) == lid
        };
        if (MULTICAST_LIDS).contains(&packet.dlid) {
            // Multicast: over the cable to the other port's members, and back to this
            // port's members other than the sender (IBA 10.5.2.2, loopback of multicast).
            if link_up {
                self.deliver(dma, peer, packet.clone());
            }
            self.deliver(dma, port, packet);
            return;
        }
        let target = if packet.dlid == PERMISSIVE_LID {
            link_up.then_some(peer)
        } else if owns(self, port) {
            Some(port)
        } else if owns(self, peer) && link_up {
            Some(peer)
        } else {
            None
        };
        let Some(target) = target else {
            self.packets_dropped += 1;
            return;
        };
        self.deliver(dma, target, packet);
    }

    /// Delivers a packet to QP0 or QP1 of `port` (the special QPs' numbers from
    /// CONF_SPECIAL_QP: QP0 of port p at base + p - 1, QP1 at base + 2 + p - 1).
    fn deliver(&mut self, dma: &dyn Dma, port: usize, packet: Packet) {
        let (bytes, vl15) = (packet.wire_bytes(), packet.vl15);
        let delivered = self.receive(dma, port, packet);
        self.sma.count_rcv(port, bytes, delivered, vl15);
        if delivered {
            self.packets_delivered += 1;
        } else {
            self.packets_dropped += 1;
        }
    }

    /// Takes a packet into the receive queues of the QPs it is for (the multicast
    /// group's members on `port`, or the one QP it names); false if none takes it.
    fn receive(&mut self, dma: &dyn Dma, port: usize, packet: Packet) -> bool {
        if MULTICAST_LIDS.contains(&packet.dlid) {
            let Some(mgid) = packet.grh.map(|g| {
                let mut mgid = [0u8; 16];
                mgid.copy_from_slice(&g[24..40]);
                mgid
            }) else {
                return false;
            };
            let mut taken = false;
            for qpn in self.multicast_members(&mgid) {
                let on_port = self
                    .qps
                    .get(&qpn)
                    .and_then(|qp| qp.queues.as_ref())
                    .is_some_and(|q| q.port == port);
                if on_port && qpn != packet.sender_qpn && packet.dest_qp == MULTICAST_QPN {
                    taken |= self.receive_on(dma, qpn, port, &packet);
                }
            }
            return taken;
        }
        let qpn = match (packet.dest_qp, packet.vl15) {
            (0, true) | (1, false) => {
                let Some(base) = self.special_qp_base else {
                    return false;
                };
                base + 2 * packet.dest_qp + port as u32
            }
            (_, true) => return false,
            (qpn, false) => {
                // An ordinary UD QP: it must be on this port.
                let on_port = self
                    .qps
                    .get(&qpn)
                    .and_then(|qp| qp.queues.as_ref())
                    .is_some_and(|q| q.port == port && q.st == qpc::ST_UD);
                if !on_port {
                    return false;
                }
                qpn
            }
        };
        self.receive_on(dma, qpn, port, &packet)
    }

    /// Takes a packet into QP `qpn`'s receive queue.
    fn receive_on(&mut self, dma: &dyn Dma, qpn: u32, port: usize, packet: &Packet) -> bool {
        let Some(queues) = self.qps.get(&qpn).and_then(|qp| {
            matches!(
                qp.state,
                super::commands::QpStateKind::Rtr | super::commands::QpStateKind::Rts
            )
            .then(|| qp.queues.clone())
            .flatten()
        }) else {
            return false;
        };
        // QP0 takes any Q_Key; QP1 and UD QPs only their own.
        if !queues.has_rq || (packet.dest_qp != 0 && packet.qkey != queues.qkey) {
            return false;
        }
        // Is a receive posted? The doorbell record's first word counts them.
        let mut record = [0u8; 4];
        if dma.read(queues.db_rec_addr, &mut record).is_err() {
            self.driver_error(format!(
                "QP {qpn:#x}: RQ doorbell record at {:#x} outside mapped memory",
                queues.db_rec_addr
            ));
            return false;
        }
        let posted = (u32::from_be_bytes(record) & 0xffff) as u16;
        let index = queues.rq_next;
        if posted == (index & 0xffff) as u16 {
            // No receive: a datagram is dropped, as on the wire.
            return false;
        }
        let entries = 1u32 << queues.log_rq_entries;
        let offset = queues.rq_offset + (u64::from(index & (entries - 1)) << queues.log_rq_stride);
        let wqe = match self.read_wqe(
            dma,
            queues.mtt_offset,
            queues.log_page_size,
            offset,
            1 << queues.log_rq_stride,
        ) {
            Ok(wqe) => wqe,
            Err(e) => {
                self.driver_error(format!("QP {qpn:#x} receive WQE {index}: {e}"));
                return false;
            }
        };
        if let Some(q) = self.qps.get_mut(&qpn).and_then(|qp| qp.queues.as_mut()) {
            q.rq_next = q.rq_next.wrapping_add(1);
        }
        // The receive buffer: the GRH slot (written only when the packet had a GRH),
        // then the payload, scattered over the WQE's entries in order.
        let mut message = vec![0u8; GRH_BYTES];
        if let Some(grh) = &packet.grh {
            message.copy_from_slice(grh);
        }
        message.extend_from_slice(&packet.payload);
        let m = Mailbox(&wqe[..]);
        let mut done = 0usize;
        let mut capacity = 0usize;
        for at in (0..wqe.len()).step_by(16) {
            let len = m.u32(at) as usize;
            let key = m.u32(at + 4);
            let addr = m.u64(at + 8);
            if key == INVALID_LKEY {
                break;
            }
            capacity += len;
            let take = len.min(message.len() - done);
            // Without a GRH the slot is left as it was: skip what of it this entry holds.
            let skip = if packet.grh.is_none() {
                GRH_BYTES.saturating_sub(done).min(take)
            } else {
                0
            };
            if let Err(e) = self.scatter(
                dma,
                (key, KeyUse::LocalWrite),
                addr.wrapping_add(skip as u64),
                &message[done + skip..done + take],
            ) {
                self.driver_error(format!("QP {qpn:#x} receive WQE {index}: {e}"));
                return false;
            }
            done += take;
        }
        if done < message.len() {
            // A receive too small: a local length error in the hardware; for MADs the
            // buffers are always 296 bytes, so this is a driver mistake.
            self.driver_error(format!(
                "QP {qpn:#x} receive WQE {index}: {} bytes into {capacity}",
                message.len()
            ));
            return false;
        }
        let mut c = [0u8; 32];
        c[cqe::MY_QPN..cqe::MY_QPN + 4].copy_from_slice(&qpn.to_be_bytes());
        // P_Key index: the index of the packet's P_Key in the port's table.
        let pkey_index = self.sma.pkey_index(port, packet.pkey).unwrap_or(0);
        c[cqe::IMMED_RSS_INVALID..cqe::IMMED_RSS_INVALID + 4]
            .copy_from_slice(&u32::from(pkey_index).to_be_bytes());
        let path_bits = if packet.dlid == PERMISSIVE_LID {
            0
        } else {
            u32::from(packet.dlid & self.sma.lmc_mask(port))
        };
        let g_mlpath_rqpn = (u32::from(packet.grh.is_some()) << 31)
            | (path_bits << 24)
            | (packet.src_qp & 0x00ff_ffff);
        c[cqe::G_MLPATH_RQPN..cqe::G_MLPATH_RQPN + 4].copy_from_slice(&g_mlpath_rqpn.to_be_bytes());
        c[cqe::SL_VID..cqe::SL_VID + 2]
            .copy_from_slice(&(u16::from(packet.sl) << 12).to_be_bytes());
        c[cqe::RLID..cqe::RLID + 2].copy_from_slice(&packet.slid.to_be_bytes());
        c[cqe::BYTE_CNT..cqe::BYTE_CNT + 4].copy_from_slice(&(message.len() as u32).to_be_bytes());
        c[cqe::WQE_INDEX..cqe::WQE_INDEX + 2]
            .copy_from_slice(&((index & 0xffff) as u16).to_be_bytes());
        c[cqe::OWNER_SR_OPCODE] = match packet.imm {
            Some(imm) => {
                c[cqe::IMMED_RSS_INVALID..cqe::IMMED_RSS_INVALID + 4]
                    .copy_from_slice(&imm.to_be_bytes());
                RECV_OPCODE_SEND_IMM
            }
            None => cqe::RECV_OPCODE_SEND,
        };
        self.write_cqe(dma, queues.cqn_recv, c);
        true
    }

    /// Writes a CQE (owner bit by lap) and, if the CQ is armed, the completion event.
    pub(super) fn write_cqe(&mut self, dma: &dyn Dma, cqn: u32, mut c: [u8; 32]) {
        let Some(cq) = self.cq_states.get(&cqn).cloned() else {
            self.driver_error(format!(
                "a completion for CQ {cqn:#x}, which is not in hardware"
            ));
            return;
        };
        let size = 1u32 << cq.log_size;
        let mut record = [0u8; 4];
        let consumer = match dma.read(cq.db_rec_addr, &mut record) {
            Ok(()) => u32::from_be_bytes(record) & 0x00ff_ffff,
            Err(f) => {
                self.driver_error(format!(
                    "CQ {cqn:#x}: doorbell record at {:#x} outside mapped memory",
                    f.address
                ));
                return;
            }
        };
        if (cq.producer.wrapping_sub(consumer) & 0x00ff_ffff) >= size {
            self.driver_error(format!(
                "CQ {cqn:#x} overrun: producer {} consumer {consumer}",
                cq.producer
            ));
            return;
        }
        if cq.producer & size != 0 {
            c[cqe::OWNER_SR_OPCODE] |= cqe::OWNER;
        }
        let offset = u64::from(cq.producer & (size - 1)) * cqe::SIZE;
        let address = match self.buffer_address(dma, cq.mtt_offset, cq.log_page_size, offset) {
            Ok(a) => a,
            Err(e) => {
                self.driver_error(format!("CQ {cqn:#x}: {e}"));
                return;
            }
        };
        // The body first, the owner byte last: the driver polls the owner bit.
        let (body, owner) = c.split_at(31);
        if dma.write(address, body).is_err() || dma.write(address + 31, owner).is_err() {
            self.driver_error(format!(
                "CQ {cqn:#x}: CQE write at {address:#x} outside mapped memory"
            ));
            return;
        }
        let mut event_eq = None;
        if let Some(state) = self.cq_states.get_mut(&cqn) {
            state.producer = state.producer.wrapping_add(1);
            if state.armed != 0 {
                event_eq = Some(state.fire());
            }
        }
        if let Some(eqn) = event_eq {
            self.completion_event(dma, eqn, cqn);
        }
    }

    fn completion_event(&mut self, dma: &dyn Dma, eqn: u32, cqn: u32) {
        let mut event = [0u8; 24];
        event[..4].copy_from_slice(&cqn.to_be_bytes());
        self.post_event_to(dma, eqn, EventType::Completion as u8, 0, &event);
    }

    /// The CQ doorbell (`mlx4_cq_arm`): word 0 `sn << 28 | cmd | cqn`, word 1 the
    /// consumer index. Armed with completions not yet consumed, the CQ raises its event
    /// at once (the driver reports no missed events itself).
    pub(super) fn cq_doorbell(&mut self, dma: &dyn Dma, word0: u32, consumer: u32) {
        let cqn = word0 & 0x00ff_ffff;
        let cmd = (word0 >> 24) & 7;
        let Some(cq) = self.cq_states.get_mut(&cqn) else {
            self.driver_error(format!(
                "CQ doorbell for CQ {cqn:#x}, which is not in hardware"
            ));
            return;
        };
        if cmd != 1 && cmd != 2 {
            return;
        }
        if cq.producer & 0x00ff_ffff != consumer & 0x00ff_ffff {
            let eqn = cq.fire();
            self.completion_event(dma, eqn, cqn);
        } else {
            cq.armed = cmd;
        }
    }

    /// A doorbell of UAR page `page` whose value may have replaced earlier ones: a
    /// transport that watches the mapped UAR pages sees only the last value written to a
    /// register that every QP (or CQ) of the page shares. So a send doorbell makes every
    /// QP of the page look at its SQ (the WQEs' owner bits say what is new), and a CQ
    /// doorbell makes every CQ of the page read its arm request from its doorbell record
    /// (`arm_db`, which the driver writes before the doorbell: `mlx4_cq_arm`), taken
    /// only if it names the events so far (a request the last event answered is spent).
    pub(super) fn page_doorbell(&mut self, dma: &dyn Dma, page: u32, send: bool) {
        if send {
            let qpns: Vec<u32> = self
                .qps
                .iter()
                .filter(|(_, qp)| qp.queues.as_ref().is_some_and(|q| q.usr_page == page))
                .map(|(&qpn, _)| qpn)
                .collect();
            for qpn in qpns {
                self.send_doorbell(dma, qpn);
            }
            return;
        }
        let cqns: Vec<u32> = self
            .cq_states
            .iter()
            .filter(|(_, cq)| cq.uar_page == page)
            .map(|(&cqn, _)| cqn)
            .collect();
        for cqn in cqns {
            let Some(cq) = self.cq_states.get(&cqn) else {
                continue;
            };
            let mut record = [0u8; 4];
            if let Err(f) = dma.read(cq.db_rec_addr + 4, &mut record) {
                self.driver_error(format!(
                    "CQ {cqn:#x}: arm doorbell record at {:#x} outside mapped memory",
                    f.address
                ));
                continue;
            }
            let request = u32::from_be_bytes(record);
            let cmd = (request >> 24) & 7;
            if (cmd == 1 || cmd == 2) && request >> 28 == cq.arm_sn() {
                let word0 = (request & 0xff00_0000) | cqn;
                self.cq_doorbell(dma, word0, request & 0x00ff_ffff);
            }
        }
    }

    /// MODIFY_CQ's resize: the old buffer ends with a RESIZE CQE at the producer index
    /// (no event: the driver looks for it under its lock, `mlx4_ib_cq_resize_copy_cqes`),
    /// and the device goes on at the next index in the new buffer, whose entries it owns
    /// from there; the driver copies what was outstanding into it itself. Refused, with
    /// nothing changed, if the new size cannot hold what is outstanding.
    pub(super) fn resize_cq(
        &mut self,
        dma: &dyn Dma,
        cqn: u32,
        context: &[u8],
    ) -> Result<(), String> {
        let new = CqState::from_context(context);
        if new.log_size > MAX_LOG_QUEUE_ENTRIES {
            return Err(format!("a resize to 2^{} entries", new.log_size));
        }
        let Some(old) = self.cq_states.get(&cqn).cloned() else {
            return Err("not in hardware".into());
        };
        let mut record = [0u8; 4];
        dma.read(old.db_rec_addr, &mut record)
            .map_err(|f| format!("doorbell record at {:#x} outside mapped memory", f.address))?;
        let consumer = u32::from_be_bytes(record) & 0x00ff_ffff;
        let outstanding = old.producer.wrapping_sub(consumer) & 0x00ff_ffff;
        if outstanding + 1 >= 1 << new.log_size {
            return Err(format!(
                "a resize to {} entries with {outstanding} completions outstanding",
                1u32 << new.log_size
            ));
        }
        let next = u64::from(old.producer.wrapping_add(1) & 0x00ff_ffff);
        self.own_queue(dma, new.mtt_offset, new.log_page_size, new.log_size, next)?;
        let mut resize = [0u8; 32];
        resize[cqe::OWNER_SR_OPCODE] = cqe::OPCODE_RESIZE;
        let armed = old.armed;
        if let Some(state) = self.cq_states.get_mut(&cqn) {
            // Written without an event: disarmed for the one CQE, then as it was.
            state.armed = 0;
        }
        self.write_cqe(dma, cqn, resize);
        if let Some(state) = self.cq_states.get_mut(&cqn) {
            state.armed = armed;
            state.log_size = new.log_size;
            state.mtt_offset = new.mtt_offset;
            state.log_page_size = new.log_page_size;
        }
        Ok(())
    }

    /// Sets the owner bit of every CQE of a new CQ: the hardware owns them until it
    /// writes them (the driver's buffer comes zeroed, `MLX4_DEV_CAP_FLAG2_SW_CQ_INIT` is
    /// not offered).
    pub(super) fn init_cq_buffer(&mut self, dma: &dyn Dma, cq: &CqState) -> Result<(), String> {
        self.own_queue(dma, cq.mtt_offset, cq.log_page_size, cq.log_size, 0)
    }

    /// Hands every entry of a new EQ or CQ (2^`log_entries` entries of 32 bytes, the
    /// owner bit in each one's last byte) to the hardware, 4 KiB at a time: the queue's
    /// contents before that mean nothing. `next` is the index the device writes next
    /// (0 for a new queue; a resized CQ goes on from where the old buffer stopped): an
    /// entry is the hardware's while its owner bit is not what the driver expects for
    /// the index due there, `(index & entries) != 0`. Every caller has refused more than
    /// `MAX_LOG_QUEUE_ENTRIES` already.
    pub(super) fn own_queue(
        &mut self,
        dma: &dyn Dma,
        mtt_offset: u64,
        log_page_size: u32,
        log_entries: u32,
        next: u64,
    ) -> Result<(), String> {
        let entries = 1u64 << log_entries.min(MAX_LOG_QUEUE_ENTRIES);
        let total = entries * cqe::SIZE;
        // A 4 KiB image of owned entries, written piece by piece (pages are 4 KiB or
        // more, so a piece never crosses one).
        const PIECE: u64 = 4096;
        let mut image = [0u8; PIECE as usize];
        let step = cqe::SIZE as usize;
        // The whole queue if it is smaller than a piece, else whole pieces.
        let len = total.min(PIECE);
        let mut offset = 0;
        while offset < total {
            for (i, owner) in image[..len as usize]
                .iter_mut()
                .enumerate()
                .skip(step - 1)
                .step_by(step)
            {
                let position = (offset + i as u64) / cqe::SIZE;
                // The index due at `position`: the first at or after `next`.
                let due = next + (position.wrapping_sub(next) & (entries - 1));
                *owner = if due & entries == 0 { cqe::OWNER } else { 0 };
            }
            let address = self.buffer_address(dma, mtt_offset, log_page_size, offset)?;
            dma.write(address, &image[..len as usize])
                .map_err(|f| format!("queue page at {:#x} outside mapped memory", f.address))?;
            offset += len;
        }
        Ok(())
    }
}
