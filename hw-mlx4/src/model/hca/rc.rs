//! Reliable connected QPs between the device's own ports: SEND (with immediate or
//! invalidation), RDMA WRITE (with immediate), RDMA READ and both atomics, executed at
//! once against the connected QP, with IBA's checks (the R_Key's MPT, its PD, its access
//! and bounds; a receive large enough) and its errors: an error completion on the
//! requester, the QP moved to error and everything after it flushed. A SEND that finds no
//! receive waits and is retried on the device's timer, as the RNR NAK and its retries
//! would; RNR retry count 7 waits forever.
//!
//! Also the rest of the error machinery every transport shares: flush completions for a
//! QP in error (what `ib_drain_qp` waits for) and the timer that finds receives posted to
//! such a QP, since posting a receive rings no doorbell on mlx4 (the RQ doorbell is a
//! record in memory).
//!
//! Source: IBA vol. 1 ch. 9.7 (RC), 10.8 (completion errors), 11.6 (completion
//! semantics); `drivers/infiniband/hw/mlx4/qp.c` (`set_raddr_seg`, `set_atomic_seg`,
//! `set_local_inv_seg`), `cq.c` (`mlx4_ib_poll_one`: opcodes and syndromes);
//! `include/linux/mlx4/device.h` (`MLX4_PERM_*`).

use alloc::format;
use alloc::vec::Vec;

use super::commands::QpStateKind;
use super::datapath::{KeyUse, QpQueues, SendOutcome, SRQ_NEXT_SEG};
use super::{Dma, Hca};
use crate::wire::fw::Mailbox;
use crate::wire::{RecvOpcode, SendOpcode, Syndrome};

/// MPT access bits (`MLX4_PERM_*`), state and flags, and the responder's `params2`
/// remote access enables: the driver's definitions (`wire::fw`).
mod perm {
    pub use crate::wire::fw::mpt_entry::{
        PERM_ATOMIC as ATOMIC, PERM_REMOTE_READ as REMOTE_READ, PERM_REMOTE_WRITE as REMOTE_WRITE,
    };
}

pub(super) mod mpt_flags {
    pub use crate::wire::fw::mpt_entry::{
        FLAG_FREE as FREE, FLAG_PHYSICAL as PHYSICAL, PD_FLAG_FAST_REG as PD_FAST_REG, PERM_MASK,
        STATE_MASK,
    };
}

mod qp_access {
    pub use crate::wire::fw::qp_context::{
        PARAMS2_RAE as ATOMIC, PARAMS2_RRE as READ, PARAMS2_RWE as WRITE,
    };
}

use super::datapath::MAX_MESSAGE;

/// The most pages one fast registration may name (`MLX4_MAX_FAST_REG_PAGES`).
const MAX_FAST_REG_PAGES: u64 = 511;

/// A local gather or scatter entry: length, key, address.
type Sge = (usize, u32, u64);

impl Hca {
    pub(super) fn qp_in_error(&self, qpn: u32) -> bool {
        self.qps
            .get(&qpn)
            .is_some_and(|qp| qp.state == QpStateKind::Error)
    }

    pub(super) fn advance_sq(&mut self, qpn: u32) {
        if let Some(q) = self.qps.get_mut(&qpn).and_then(|qp| qp.queues.as_mut()) {
            q.sq_next = q.sq_next.wrapping_add(1);
            q.rnr_waiting = None;
        }
    }

    pub(super) fn set_rnr_waiting(&mut self, qpn: u32, retries: Option<u32>) {
        if let Some(q) = self.qps.get_mut(&qpn).and_then(|qp| qp.queues.as_mut()) {
            q.rnr_waiting = retries;
        }
    }

    /// A send completion (`owner_sr_opcode`: the send bit and the WQE's opcode).
    pub(super) fn send_cqe(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        cqn: u32,
        index: u32,
        opcode: u8,
        byte_len: u32,
    ) {
        let mut c = [0u8; 32];
        c[0..4].copy_from_slice(&qpn.to_be_bytes());
        c[0x14..0x18].copy_from_slice(&byte_len.to_be_bytes());
        c[0x18..0x1a].copy_from_slice(&((index & 0xffff) as u16).to_be_bytes());
        // `MLX4_CQE_IS_SEND_MASK` and the WQE's opcode.
        c[0x1f] = 0x40 | (opcode & 0x1f);
        self.write_cqe(dma, cqn, c);
    }

    /// An error completion (`struct mlx4_err_cqe`).
    fn error_cqe(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        cqn: u32,
        index: u32,
        syndrome: Syndrome,
        send: bool,
    ) {
        if syndrome != Syndrome::WrFlushErr {
            self.info(alloc::format!(
                "QP {qpn:#x}: {} WQE {index} completes in error: {syndrome:?}",
                if send { "send" } else { "receive" }
            ));
        }
        let mut c = [0u8; 32];
        c[0..4].copy_from_slice(&qpn.to_be_bytes());
        c[0x18..0x1a].copy_from_slice(&((index & 0xffff) as u16).to_be_bytes());
        c[0x1b] = syndrome as u8;
        // `MLX4_CQE_OPCODE_ERROR`, with the send bit for the send queue's.
        c[0x1f] = 0x1e | if send { 0x40 } else { 0 };
        self.write_cqe(dma, cqn, c);
    }

    /// A flush completion of send (or receive) WQE `index`.
    pub(super) fn flush_cqe(&mut self, dma: &dyn Dma, qpn: u32, cqn: u32, index: u32, send: bool) {
        self.error_cqe(dma, qpn, cqn, index, Syndrome::WrFlushErr, send);
    }

    /// A send WQE failed: its error completion, the QP to error, the rest flushed.
    pub(super) fn fail_qp(&mut self, dma: &dyn Dma, qpn: u32, index: u32, syndrome: Syndrome) {
        let Some(cqn) = self
            .qps
            .get(&qpn)
            .and_then(|qp| qp.queues.as_ref())
            .map(|q| q.cqn_send)
        else {
            return;
        };
        self.error_cqe(dma, qpn, cqn, index, syndrome, true);
        self.enter_error(dma, qpn);
    }

    /// Moves a QP to error and flushes every WQE it holds (the 2ERR command, or an
    /// error completion).
    pub(super) fn enter_error(&mut self, dma: &dyn Dma, qpn: u32) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        qp.state = QpStateKind::Error;
        if qp.queues.is_none() {
            // RESET to ERR: the QP never had a context, so no queue to flush.
            return;
        }
        self.flush_receives(dma, qpn);
        self.send_doorbell(dma, qpn);
    }

    /// Flushes the receives posted to a QP in error (the record says how many).
    fn flush_receives(&mut self, dma: &dyn Dma, qpn: u32) {
        let Some(q) = self.qps.get(&qpn).and_then(|qp| qp.queues.clone()) else {
            return;
        };
        if !q.has_rq {
            return;
        }
        let mut record = [0u8; 4];
        if dma.read(q.db_rec_addr, &mut record).is_err() {
            return;
        }
        let posted = u32::from_be_bytes(record) & 0xffff;
        let pending = posted.wrapping_sub(q.rq_next) & 0xffff;
        for i in 0..pending.min(1 << q.log_rq_entries) {
            self.flush_cqe(dma, qpn, q.cqn_recv, q.rq_next.wrapping_add(i), false);
        }
        if let Some(q) = self.qps.get_mut(&qpn).and_then(|qp| qp.queues.as_mut()) {
            q.rq_next = q.rq_next.wrapping_add(pending.min(1 << q.log_rq_entries));
        }
    }

    /// Whether the device's timer has work: sends waiting for a receive, or QPs in
    /// error whose new receives must be flushed.
    pub fn needs_tick(&self) -> bool {
        self.qps.values().any(|qp| {
            qp.state == QpStateKind::Error
                || qp.queues.as_ref().is_some_and(|q| q.rnr_waiting.is_some())
        })
    }

    /// The device's timer (about every millisecond, from the transport): retries sends
    /// that met RNR, flushes receives posted to QPs in error.
    pub fn tick(&mut self, dma: &dyn Dma) {
        let waiting: Vec<u32> = self
            .qps
            .iter()
            .filter(|(_, qp)| qp.queues.as_ref().is_some_and(|q| q.rnr_waiting.is_some()))
            .map(|(&n, _)| n)
            .collect();
        for qpn in waiting {
            self.send_doorbell(dma, qpn);
        }
        let failed: Vec<u32> = self
            .qps
            .iter()
            .filter(|(_, qp)| qp.state == QpStateKind::Error)
            .map(|(&n, _)| n)
            .collect();
        for qpn in failed {
            self.flush_receives(dma, qpn);
        }
    }

    /// The gather or scatter entries of a WQE from byte `from` to `size`.
    fn sges(wqe: &[u8], from: usize, size: usize) -> Vec<Sge> {
        let m = Mailbox(wqe);
        (from..size.saturating_sub(15))
            .step_by(16)
            .map(|at| (m.u32(at) as usize, m.u32(at + 4), m.u64(at + 8)))
            // The list ends at the first entry with the invalid key (`MLX4_INVALID_LKEY`).
            .take_while(|&(_, key, _)| key != super::datapath::INVALID_LKEY)
            .collect()
    }

    /// Reads the bytes a gather list names (or its inline data).
    fn gather_list(
        &self,
        dma: &dyn Dma,
        wqe: &[u8],
        from: usize,
        size: usize,
    ) -> Result<Vec<u8>, Syndrome> {
        let total: usize = Self::sges(wqe, from, size).iter().map(|s| s.0).sum();
        if total > MAX_MESSAGE {
            return Err(Syndrome::LocalLengthErr);
        }
        self.gather_segments(dma, wqe, from, size)
            .map_err(|_| Syndrome::LocalProtErr)
    }

    /// Writes `data` over a scatter list; too small a list is a length error.
    fn scatter_list(&self, dma: &dyn Dma, sges: &[Sge], data: &[u8]) -> Result<(), Syndrome> {
        let mut done = 0;
        for &(len, key, addr) in sges {
            if done == data.len() {
                break;
            }
            let take = len.min(data.len() - done);
            self.scatter(
                dma,
                (key, KeyUse::LocalWrite),
                addr,
                &data[done..done + take],
            )
            .map_err(|_| Syndrome::LocalProtErr)?;
            done += take;
        }
        if done < data.len() {
            return Err(Syndrome::LocalLengthErr);
        }
        Ok(())
    }

    /// Checks an R_Key for `len` bytes at `va` with `access`, against the responder's PD
    /// and the access its QP grants.
    fn check_rkey(
        &self,
        responder: &QpQueues,
        rkey: u32,
        va: u64,
        len: usize,
        access: u32,
        qp_access: u32,
    ) -> Result<(), Syndrome> {
        if responder.remote_access & qp_access == 0 {
            return Err(Syndrome::RemoteAccessErr);
        }
        let init = self.init.as_ref().ok_or(Syndrome::RemoteAccessErr)?;
        let index = (rkey >> 8) & ((1u32 << init.log_mpt_sz) - 1);
        let entry = self.mpts.get(&index).ok_or(Syndrome::RemoteAccessErr)?;
        let m = Mailbox(&entry[..]);
        let key = m.u32(0x08);
        let pd = m.u32(0x0c) & 0x00ff_ffff;
        let flags = m.u32(0x00);
        let start = m.u64(0x10);
        let length = m.u64(0x18);
        let end = va
            .checked_add(len as u64)
            .ok_or(Syndrome::RemoteAccessErr)?;
        // The MPT holds the key in the hardware's order (`key_to_hw_index`: the 8-bit
        // variant on top of the 24-bit index).
        if key != rkey.rotate_left(24)
            || pd != responder.pd
            || flags & access == 0
            || flags & mpt_flags::STATE_MASK == mpt_flags::FREE
        {
            return Err(Syndrome::RemoteAccessErr);
        }
        if va < start || end > start.saturating_add(length) {
            return Err(Syndrome::RemoteAccessErr);
        }
        Ok(())
    }

    /// The connected QP of an RC requester, if it is there and reachable.
    fn responder(&self, requester: u32, queues: &QpQueues) -> Option<QpQueues> {
        let qp = self.qps.get(&queues.remote_qpn)?;
        let q = qp.queues.as_ref()?;
        let ready = matches!(qp.state, QpStateKind::Rtr | QpStateKind::Rts);
        // The path's LID must lead to the responder's port: its own or, over the cable,
        // the other one.
        let reaches =
            self.sma.lid(q.port) == queues.rlid && (q.port == queues.port || self.sma.link_up());
        (ready && reaches && q.st == 0 && q.remote_qpn == requester).then(|| q.clone())
    }

    /// Executes an RC send WQE.
    pub(super) fn execute_rc(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        queues: &QpQueues,
        wqe: &[u8],
    ) -> SendOutcome {
        let m = Mailbox(wqe);
        let size = usize::from(m.u8(7) & 0x3f) * 16;
        if size < 16 || size > wqe.len() {
            return SendOutcome::Failed(Syndrome::LocalQpOpErr);
        }
        let opcode_bits = m.u8(3) & 0x1f;
        let signaled = m.u32(8) & (3 << 2) != 0;
        let immediate = m.u32(12);
        let Some(opcode) = SendOpcode::from_bits(opcode_bits) else {
            return SendOutcome::Failed(Syndrome::LocalQpOpErr);
        };
        let done = |byte_len: u32| SendOutcome::Completed {
            signaled,
            opcode: opcode_bits,
            byte_len,
        };
        match opcode {
            SendOpcode::Nop => return done(0),
            SendOpcode::FastReg => {
                return match self.fast_register(dma, queues, wqe) {
                    Ok(()) => done(0),
                    Err(s) => SendOutcome::Failed(s),
                }
            }
            SendOpcode::LocalInval => {
                return match self.invalidate(m.u32(16 + 8), queues.pd) {
                    Ok(()) => done(0),
                    Err(s) => SendOutcome::Failed(s),
                }
            }
            _ => {}
        }
        let Some(responder) = self.responder(qpn, queues) else {
            // Nobody answers on that path: the transport's retries run out.
            return SendOutcome::Failed(Syndrome::TransportRetryExcErr);
        };
        let outcome = self.execute_rc_remote(
            dma, qpn, queues, &responder, wqe, opcode, size, signaled, immediate,
        );
        // What crossed the link, as the port counters see it: the message and its
        // headers (LRH, BTH and the extended header, ICRC, VCRC) one way; a READ's or
        // atomic's response the other.
        if let SendOutcome::Completed { byte_len, .. } = &outcome {
            let request = 8 + 12 + 16 + 4 + 2;
            let sent = self.last_rc_payload + request;
            self.sma.count_xmit(queues.port, sent);
            self.sma.count_rcv(responder.port, sent, true, false);
            if *byte_len > 0 {
                let response = *byte_len as usize + request;
                self.sma.count_xmit(responder.port, response);
                self.sma.count_rcv(queues.port, response, true, false);
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_rc_remote(
        &mut self,
        dma: &dyn Dma,
        qpn: u32,
        queues: &QpQueues,
        responder: &QpQueues,
        wqe: &[u8],
        opcode: SendOpcode,
        size: usize,
        signaled: bool,
        immediate: u32,
    ) -> SendOutcome {
        let m = Mailbox(wqe);
        let opcode_bits = opcode as u8;
        let done = |byte_len: u32| SendOutcome::Completed {
            signaled,
            opcode: opcode_bits,
            byte_len,
        };
        let responder = responder.clone();
        let rqpn = queues.remote_qpn;
        self.last_rc_payload = 0;
        match opcode {
            SendOpcode::Send | SendOpcode::SendImm | SendOpcode::SendInval => {
                let data = match self.gather_list(dma, wqe, 16, size) {
                    Ok(d) => d,
                    Err(s) => return SendOutcome::Failed(s),
                };
                self.last_rc_payload = data.len();
                let (recv_opcode, word) = match opcode {
                    SendOpcode::SendImm => (RecvOpcode::SendImm, immediate),
                    SendOpcode::SendInval => {
                        // The key named is invalidated at the responder, which must own
                        // it (its PD), before the receive completes.
                        if !self.receive_posted(dma, &responder) {
                            return SendOutcome::ReceiverNotReady;
                        }
                        if self.invalidate(immediate, responder.pd).is_err() {
                            return SendOutcome::Failed(Syndrome::RemoteInvalReqErr);
                        }
                        (RecvOpcode::SendInval, immediate)
                    }
                    _ => (RecvOpcode::Send, 0),
                };
                let arrival = Arrival {
                    scatter: &data,
                    byte_cnt: data.len(),
                    opcode: recv_opcode,
                    word,
                };
                match self.rc_receive(dma, rqpn, &responder, qpn, queues, arrival) {
                    Ok(true) => done(0),
                    Ok(false) => SendOutcome::ReceiverNotReady,
                    Err(_) => SendOutcome::Failed(Syndrome::RemoteInvalReqErr),
                }
            }
            SendOpcode::RdmaWrite | SendOpcode::RdmaWriteImm => {
                let raddr = m.u64(16);
                let rkey = m.u32(24);
                let data = match self.gather_list(dma, wqe, 32, size) {
                    Ok(d) => d,
                    Err(s) => return SendOutcome::Failed(s),
                };
                self.last_rc_payload = data.len();
                if opcode == SendOpcode::RdmaWriteImm && !self.receive_posted(dma, &responder) {
                    return SendOutcome::ReceiverNotReady;
                }
                if let Err(s) = self.check_rkey(
                    &responder,
                    rkey,
                    raddr,
                    data.len(),
                    perm::REMOTE_WRITE,
                    qp_access::WRITE,
                ) {
                    return SendOutcome::Failed(s);
                }
                if self
                    .scatter(dma, (rkey, KeyUse::Remote), raddr, &data)
                    .is_err()
                {
                    return SendOutcome::Failed(Syndrome::RemoteAccessErr);
                }
                if opcode == SendOpcode::RdmaWriteImm {
                    match self.rc_receive(
                        dma,
                        rqpn,
                        &responder,
                        qpn,
                        queues,
                        Arrival {
                            scatter: &[],
                            byte_cnt: data.len(),
                            opcode: RecvOpcode::RdmaWriteImm,
                            word: immediate,
                        },
                    ) {
                        Ok(true) => {}
                        Ok(false) => return SendOutcome::ReceiverNotReady,
                        Err(_) => return SendOutcome::Failed(Syndrome::RemoteInvalReqErr),
                    }
                }
                done(0)
            }
            SendOpcode::RdmaRead => {
                let raddr = m.u64(16);
                let rkey = m.u32(24);
                let sges = Self::sges(wqe, 32, size);
                let len: usize = sges.iter().map(|s| s.0).sum();
                if len > MAX_MESSAGE {
                    return SendOutcome::Failed(Syndrome::LocalLengthErr);
                }
                if let Err(s) = self.check_rkey(
                    &responder,
                    rkey,
                    raddr,
                    len,
                    perm::REMOTE_READ,
                    qp_access::READ,
                ) {
                    return SendOutcome::Failed(s);
                }
                let mut data = Vec::with_capacity(len);
                if self
                    .gather(dma, (rkey, KeyUse::Remote), raddr, len, &mut data)
                    .is_err()
                {
                    return SendOutcome::Failed(Syndrome::RemoteAccessErr);
                }
                match self.scatter_list(dma, &sges, &data) {
                    Ok(()) => done(len as u32),
                    Err(s) => SendOutcome::Failed(s),
                }
            }
            SendOpcode::AtomicCmpSwap | SendOpcode::AtomicFetchAdd => {
                let raddr = m.u64(16);
                let rkey = m.u32(24);
                let (swap_add, compare) = (m.u64(32), m.u64(40));
                let sges = Self::sges(wqe, 48, size);
                if !raddr.is_multiple_of(8) {
                    return SendOutcome::Failed(Syndrome::RemoteInvalReqErr);
                }
                if let Err(s) =
                    self.check_rkey(&responder, rkey, raddr, 8, perm::ATOMIC, qp_access::ATOMIC)
                {
                    return SendOutcome::Failed(s);
                }
                let mut old = Vec::with_capacity(8);
                if self
                    .gather(dma, (rkey, KeyUse::Remote), raddr, 8, &mut old)
                    .is_err()
                {
                    return SendOutcome::Failed(Syndrome::RemoteAccessErr);
                }
                let value = old
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let new = if opcode == SendOpcode::AtomicCmpSwap {
                    (value == compare).then_some(swap_add)
                } else {
                    Some(value.wrapping_add(swap_add))
                };
                if let Some(new) = new {
                    if self
                        .scatter(dma, (rkey, KeyUse::Remote), raddr, &new.to_be_bytes())
                        .is_err()
                    {
                        return SendOutcome::Failed(Syndrome::RemoteAccessErr);
                    }
                }
                match self.scatter_list(dma, &sges, &old) {
                    Ok(()) => done(8),
                    Err(s) => SendOutcome::Failed(s),
                }
            }
            // Masked atomics and memory windows: not modelled; the requester sees a local
            // QP operation error.
            _ => SendOutcome::Failed(Syndrome::LocalQpOpErr),
        }
    }

    /// A fast-registration WQE (`set_reg_seg`: `struct mlx4_wqe_fmr_seg` at 16): the MPT
    /// its key names, a fast-register MPT of the QP's PD, takes the new key, address,
    /// length, page size and access, and its MTT entries take the page list the WQE
    /// points at (written into ICM, where the MPT's translation reads them).
    fn fast_register(
        &mut self,
        dma: &dyn Dma,
        queues: &QpQueues,
        wqe: &[u8],
    ) -> Result<(), Syndrome> {
        let m = Mailbox(wqe);
        let (access, key, list) = (m.u32(16), m.u32(20), m.u64(24));
        let (start, length, page_shift) = (m.u64(32), m.u64(40), m.u32(52) & 0x3f);
        let init = self.init.as_ref().ok_or(Syndrome::LocalProtErr)?;
        let index = (key >> 8) & ((1u32 << init.log_mpt_sz) - 1);
        let entry = self.mpts.get(&index).ok_or(Syndrome::LocalProtErr)?;
        let e = Mailbox(&entry[..]);
        if e.u32(0x0c) & 0x00ff_ffff != queues.pd || e.u32(0x0c) & mpt_flags::PD_FAST_REG == 0 {
            return Err(Syndrome::LocalProtErr);
        }
        if !(12..=30).contains(&page_shift) {
            return Err(Syndrome::LocalQpOpErr);
        }
        let page = 1u64 << page_shift;
        let pages = (start & (page - 1))
            .checked_add(length)
            .and_then(|n| n.checked_add(page - 1))
            .ok_or(Syndrome::LocalQpOpErr)?
            >> page_shift;
        // No more pages than the MPT's MTT range holds (`mtt_sz`).
        // ... nor than a fast registration may name (`MLX4_MAX_FAST_REG_PAGES`).
        if pages > u64::from(e.u32(0x34)) || pages > MAX_FAST_REG_PAGES {
            return Err(Syndrome::LocalQpOpErr);
        }
        let mtt_offset = e.u64(0x2c);
        let mtt_base = init.mtt_base;
        for i in 0..pages {
            let mut raw = [0u8; 8];
            let entry = list.checked_add(8 * i).ok_or(Syndrome::LocalProtErr)?;
            dma.read(entry, &mut raw)
                .map_err(|_| Syndrome::LocalProtErr)?;
            let virt = mtt_base
                .checked_add(mtt_offset)
                .and_then(|v| v.checked_add(8 * i))
                .ok_or(Syndrome::LocalQpOpErr)?;
            let (phys, _) = self.icm.translate(virt).ok_or(Syndrome::LocalQpOpErr)?;
            dma.write(phys, &raw).map_err(|_| Syndrome::LocalQpOpErr)?;
        }
        let perms = [
            (1 << 28, 1u32 << 11), // local write
            (1 << 29, perm::REMOTE_READ),
            (1 << 30, perm::REMOTE_WRITE),
            (1 << 31, perm::ATOMIC),
        ];
        let granted = perms
            .iter()
            .filter(|(wqe_bit, _)| access & wqe_bit != 0)
            .fold(1u32 << 10, |acc, (_, mpt_bit)| acc | mpt_bit);
        let entry = self.mpts.get_mut(&index).ok_or(Syndrome::LocalProtErr)?;
        let mut e = Mailbox(&mut entry[..]);
        let flags =
            e.u32(0x00) & !(mpt_flags::STATE_MASK | mpt_flags::PERM_MASK | mpt_flags::PHYSICAL);
        e.set_u32(0x00, flags | granted);
        e.set_u32(0x08, key.rotate_left(24));
        e.set_u64(0x10, start);
        e.set_u64(0x18, length);
        e.set_u32(0x38, page_shift);
        Ok(())
    }

    /// Invalidates the memory key `key` of PD `pd` (LOCAL_INV, or a SEND with
    /// invalidate at the responder): its MPT returns to the free state, and no access
    /// by the key succeeds until it is registered again.
    fn invalidate(&mut self, key: u32, pd: u32) -> Result<(), Syndrome> {
        let init = self.init.as_ref().ok_or(Syndrome::LocalProtErr)?;
        let index = (key >> 8) & ((1u32 << init.log_mpt_sz) - 1);
        let entry = self.mpts.get_mut(&index).ok_or(Syndrome::LocalProtErr)?;
        let mut e = Mailbox(&mut entry[..]);
        if e.u32(0x08) != key.rotate_left(24) || e.u32(0x0c) & 0x00ff_ffff != pd {
            return Err(Syndrome::LocalProtErr);
        }
        let flags = e.u32(0x00);
        e.set_u32(0x00, (flags & !mpt_flags::STATE_MASK) | mpt_flags::FREE);
        Ok(())
    }

    /// Whether the responder has a receive posted (in its own queue, or in its SRQ).
    fn receive_posted(&self, dma: &dyn Dma, responder: &QpQueues) -> bool {
        let (record_addr, taken) = match responder.srqn {
            Some(srqn) => match self.srq_states.get(&srqn) {
                Some(srq) => (srq.db_rec_addr, srq.taken),
                None => return false,
            },
            None => (responder.db_rec_addr, responder.rq_next),
        };
        let mut record = [0u8; 4];
        dma.read(record_addr, &mut record).is_ok()
            && (u32::from_be_bytes(record) & 0xffff) != (taken & 0xffff)
    }

    /// Takes the responder's next receive WQE (`receive_posted` said there is one): its
    /// index, as the CQE names it, and its scatter entries.
    fn take_receive(
        &mut self,
        dma: &dyn Dma,
        rqpn: u32,
        responder: &QpQueues,
    ) -> Result<(u32, Vec<Sge>), ()> {
        if let Some(srqn) = responder.srqn {
            let Some(srq) = self.srq_states.get(&srqn).cloned() else {
                self.driver_error(format!("QP {rqpn:#x}: SRQ {srqn:#x} is not in hardware"));
                return Err(());
            };
            let entries = 1u32 << srq.log_size;
            let index = srq.next & (entries - 1);
            let wqe = match self.read_wqe(
                dma,
                srq.mtt_offset,
                srq.log_page_size,
                u64::from(index) << srq.log_stride,
                1 << srq.log_stride,
            ) {
                Ok(wqe) => wqe,
                Err(e) => {
                    self.driver_error(format!("SRQ {srqn:#x} WQE {index}: {e}"));
                    return Err(());
                }
            };
            let next = u32::from(Mailbox(&wqe).u16(2));
            if let Some(state) = self.srq_states.get_mut(&srqn) {
                state.next = next & (entries - 1);
                state.taken = state.taken.wrapping_add(1);
            }
            let sges = Self::sges(&wqe, SRQ_NEXT_SEG, wqe.len());
            return Ok((index, sges));
        }
        let index = responder.rq_next;
        let entries = 1u32 << responder.log_rq_entries;
        let offset =
            responder.rq_offset + (u64::from(index & (entries - 1)) << responder.log_rq_stride);
        let wqe = match self.read_wqe(
            dma,
            responder.mtt_offset,
            responder.log_page_size,
            offset,
            1 << responder.log_rq_stride,
        ) {
            Ok(wqe) => wqe,
            Err(e) => {
                self.driver_error(format!("QP {rqpn:#x} receive WQE {index}: {e}"));
                return Err(());
            }
        };
        if let Some(q) = self.qps.get_mut(&rqpn).and_then(|qp| qp.queues.as_mut()) {
            q.rq_next = q.rq_next.wrapping_add(1);
        }
        Ok((index, Self::sges(&wqe, 0, wqe.len())))
    }

    /// Delivers an RC message into the responder's next receive: `Ok(false)` when none is
    /// posted (RNR), `Err` when it does not fit (the receive completes with a local
    /// length error and the responder goes to error).
    #[allow(clippy::too_many_arguments)]
    fn rc_receive(
        &mut self,
        dma: &dyn Dma,
        rqpn: u32,
        responder: &QpQueues,
        requester: u32,
        requester_queues: &QpQueues,
        arrival: Arrival<'_>,
    ) -> Result<bool, ()> {
        let Arrival {
            scatter: data,
            byte_cnt,
            opcode,
            word,
        } = arrival;
        if !(responder.has_rq || responder.srqn.is_some()) || !self.receive_posted(dma, responder) {
            return Ok(false);
        }
        let (index, sges) = self.take_receive(dma, rqpn, responder)?;
        if let Err(syndrome) = self.scatter_list(dma, &sges, data) {
            self.error_cqe(dma, rqpn, responder.cqn_recv, index, syndrome, false);
            if rqpn == requester {
                // A QP connected to itself: its send queue is flushed once the
                // requester's failed WQE is retired.
                if let Some(qp) = self.qps.get_mut(&rqpn) {
                    qp.state = QpStateKind::Error;
                }
            } else {
                self.enter_error(dma, rqpn);
            }
            return Err(());
        }
        let mut c = [0u8; 32];
        c[0..4].copy_from_slice(&rqpn.to_be_bytes());
        c[4..8].copy_from_slice(&word.to_be_bytes());
        c[8..12].copy_from_slice(&(requester & 0x00ff_ffff).to_be_bytes());
        c[0x0e..0x10].copy_from_slice(&self.sma.lid(requester_queues.port).to_be_bytes());
        c[0x14..0x18].copy_from_slice(&(byte_cnt as u32).to_be_bytes());
        c[0x18..0x1a].copy_from_slice(&((index & 0xffff) as u16).to_be_bytes());
        c[0x1f] = opcode as u8;
        self.write_cqe(dma, responder.cqn_recv, c);
        Ok(true)
    }
}

/// What reaches a responder's receive queue: the bytes to scatter into the receive (a
/// SEND's payload; nothing for an RDMA WRITE with immediate, whose data went to the
/// rkey), the length the CQE reports (the message's, either way: IBA 11.4.2.1, and
/// mlx4's `byte_cnt`), and the opcode and immediate or invalidated key.
struct Arrival<'a> {
    scatter: &'a [u8],
    byte_cnt: usize,
    opcode: RecvOpcode,
    word: u32,
}
