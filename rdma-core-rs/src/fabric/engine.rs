// SPDX-License-Identifier: GPL-2.0
//! The fabric's device: QP state machines, queues, regions and the execution of work
//! requests, all under the fabric's one lock; and the CQs that deliver completions
//! outside it.
//!
//! Behaviour follows rxe (what the conformance cases check in the VM): posting a send
//! before RTS or a receive in RESET is `EINVAL`, a full queue is `ENOMEM`; ERR flushes
//! both queues; an RC SEND finding no receive waits for one (RNR) unless the requester
//! allows no RNR retries; a bad key, access or range is a remote access error that moves
//! both ends to ERR; a UD datagram nobody can take is dropped and its send succeeds.

use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::vec::Vec;

use core::sync::atomic::{AtomicBool, Ordering};

use super::{PostedWr, Queues, Result, UdDest, EINVAL, ENOMEM};
use crate::verbs::{
    AtomicOp, PollContext, QpCaps, RemoteAccess, SendOp, WcOpcode, WcStatus, WorkCompletion,
};

/// Bytes of the GRH a UD receive starts with.
const GRH_LEN: usize = 40;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A completion on its way to its handler.
struct Delivery {
    wr: Box<dyn PostedWr>,
    completion: WorkCompletion,
    queues: Arc<Queues>,
}

/// The delivering side of a CQ.
pub(crate) struct CqShared {
    pub(crate) context: PollContext,
    queue: Mutex<VecDeque<Delivery>>,
    ready: Condvar,
    /// One deliverer at a time, as `ib_process_cq_direct` and the IB core's own polling
    /// are: completions reach handlers in CQ order.
    delivering: Mutex<()>,
    stopped: AtomicBool,
}

impl CqShared {
    pub(crate) fn new(context: PollContext) -> Self {
        Self {
            context,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            delivering: Mutex::new(()),
            stopped: AtomicBool::new(false),
        }
    }

    fn push(&self, delivery: Delivery) {
        lock(&self.queue).push_back(delivery);
        self.ready.notify_one();
    }

    /// Hands up to `budget` completions to their handlers; how many.
    pub(crate) fn deliver(&self, budget: u32) -> u32 {
        let Ok(_one) = self.delivering.try_lock() else {
            return 0;
        };
        let mut done = 0;
        while done < budget {
            let Some(Delivery {
                mut wr,
                completion,
                queues,
            }) = lock(&self.queue).pop_front()
            else {
                break;
            };
            wr.set_completion(completion);
            wr.deliver(&queues);
            queues.completed();
            done += 1;
        }
        done
    }

    /// The loop of a softirq or workqueue CQ's thread.
    pub(crate) fn deliver_until_stopped(&self) {
        loop {
            {
                let mut queue = lock(&self.queue);
                while queue.is_empty() && !self.stopped.load(Ordering::Acquire) {
                    queue = self
                        .ready
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if queue.is_empty() {
                    return;
                }
            }
            self.deliver(u32::MAX);
        }
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _queue = lock(&self.queue);
        self.ready.notify_all();
    }
}

/// A send-queue operation.
pub(crate) enum SendKind {
    Rc(SendOp),
    Atomic(AtomicOp),
    Ud(UdDest),
}

/// What a posted WR asks for.
pub(crate) enum Work {
    Recv {
        offset: usize,
        len: usize,
    },
    Send {
        op: SendKind,
        offset: usize,
        len: usize,
    },
    RegMr {
        index: u32,
        key: u32,
        access: RemoteAccess,
    },
    LocalInv {
        rkey: u32,
    },
}

/// A state change of a QP.
pub(crate) enum Modify {
    /// To INIT with the remote access granted and, for UD, the Q_Key.
    Init(RemoteAccess, Option<u32>),
    /// To RTR towards a peer QP.
    Rtr(u32),
    /// To RTS with the RNR retry count.
    Rts(u8),
    Error,
    Reset,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum QpState {
    Reset,
    Init,
    Rtr,
    Rts,
    Err,
}

struct Pending {
    wr: Box<dyn PostedWr>,
    work: Work,
}

pub(crate) struct Qp {
    queues: Arc<Queues>,
    send_cq: Arc<CqShared>,
    recv_cq: Arc<CqShared>,
    max_send: usize,
    max_recv: usize,
    state: QpState,
    access: RemoteAccess,
    qkey: u32,
    dest_qpn: u32,
    rnr_retry: u8,
    sq: VecDeque<Pending>,
    rq: VecDeque<Pending>,
}

impl Qp {
    pub(crate) fn new(
        queues: Arc<Queues>,
        send_cq: Arc<CqShared>,
        recv_cq: Arc<CqShared>,
        caps: &QpCaps,
    ) -> Self {
        Self {
            queues,
            send_cq,
            recv_cq,
            max_send: caps.max_send_wr as usize,
            max_recv: caps.max_recv_wr as usize,
            state: QpState::Reset,
            access: RemoteAccess::default(),
            qkey: 0,
            dest_qpn: 0,
            rnr_retry: 0,
            sq: VecDeque::new(),
            rq: VecDeque::new(),
        }
    }

    fn complete(&self, pending: Pending, completion: WorkCompletion) {
        let cq = match pending.work {
            Work::Recv { .. } => &self.recv_cq,
            _ => &self.send_cq,
        };
        cq.push(Delivery {
            wr: pending.wr,
            completion,
            queues: self.queues.clone(),
        });
    }

    /// To ERR: every posted WR completes, flushed.
    fn fail(&mut self) {
        self.state = QpState::Err;
        let flushed: Vec<Pending> = self.sq.drain(..).chain(self.rq.drain(..)).collect();
        for pending in flushed {
            let completion = completion(WcStatus::WrFlushError, None, self.queues.qp_num());
            self.complete(pending, completion);
        }
    }
}

fn completion(status: WcStatus, opcode: Option<WcOpcode>, qp_num: u32) -> WorkCompletion {
    WorkCompletion {
        status,
        opcode,
        qp_num,
        ..WorkCompletion::EMPTY
    }
}

/// A fast-registration region as the device sees it.
struct Region {
    pd_id: u64,
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Where the region starts in `bytes`, and its address and length for peers.
    offset: usize,
    iova: u64,
    len: usize,
    key: u32,
    valid: bool,
    access: RemoteAccess,
}

/// What a remote operation needs of a region.
#[derive(Clone, Copy)]
enum Need {
    Read,
    Write,
    Atomic,
}

#[derive(Default)]
pub(crate) struct State {
    qps: BTreeMap<u32, Qp>,
    regions: BTreeMap<u32, Region>,
    last_qpn: u32,
    last_region: u32,
}

/// What executing a send-queue WR came to.
enum Step {
    Done,
    /// RNR: the peer has no receive posted yet.
    Wait(Pending),
}

impl State {
    pub(crate) fn next_qpn(&mut self) -> u32 {
        // Like rxe, QP numbers start above the special QPs.
        self.last_qpn = self.last_qpn.max(16) + 1;
        self.last_qpn
    }

    pub(crate) fn live_objects(&self) -> super::LiveObjects {
        super::LiveObjects {
            qps: self.qps.len(),
            regions: self.regions.len(),
        }
    }

    /// The remote access a QP grants its peer.
    #[cfg(test)]
    pub(crate) fn remote_access(&self, qpn: u32) -> Option<RemoteAccess> {
        self.qps.get(&qpn).map(|qp| qp.access)
    }

    pub(crate) fn add_qp(&mut self, qp: Qp) {
        self.qps.insert(qp.queues.qp_num(), qp);
    }

    pub(crate) fn remove_qp(&mut self, qpn: u32) {
        self.qps.remove(&qpn);
    }

    pub(crate) fn add_region(
        &mut self,
        pd_id: u64,
        bytes: Arc<Mutex<Vec<u8>>>,
        offset: usize,
        iova: u64,
        len: usize,
    ) -> u32 {
        self.last_region += 1;
        let index = self.last_region;
        self.regions.insert(
            index,
            Region {
                pd_id,
                bytes,
                offset,
                iova,
                len,
                key: 0,
                valid: false,
                access: RemoteAccess::default(),
            },
        );
        index
    }

    pub(crate) fn remove_region(&mut self, index: u32) {
        self.regions.remove(&index);
    }

    /// Whether `qpn` takes `work` now (rxe's checks at post time).
    pub(crate) fn admit(&self, qpn: u32, work: &Work) -> Result {
        let qp = self.qps.get(&qpn).ok_or(EINVAL)?;
        match work {
            Work::Recv { .. } => {
                if qp.state == QpState::Reset {
                    return Err(EINVAL);
                }
                if qp.rq.len() >= qp.max_recv {
                    return Err(ENOMEM);
                }
            }
            _ => {
                if qp.state < QpState::Rts {
                    return Err(EINVAL);
                }
                if qp.sq.len() >= qp.max_send {
                    return Err(ENOMEM);
                }
            }
        }
        Ok(())
    }

    /// Queues an admitted WR; on a QP in ERR it completes at once, flushed (as rxe
    /// flushes what is posted after the error).
    pub(crate) fn enqueue(&mut self, qpn: u32, wr: Box<dyn PostedWr>, work: Work) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            let pending = Pending { wr, work };
            if qp.state == QpState::Err {
                let flushed = completion(WcStatus::WrFlushError, None, qpn);
                qp.complete(pending, flushed);
                return;
            }
            match pending.work {
                Work::Recv { .. } => qp.rq.push_back(pending),
                _ => qp.sq.push_back(pending),
            }
        }
    }

    pub(crate) fn modify(&mut self, qpn: u32, change: Modify) -> Result {
        let qp = self.qps.get_mut(&qpn).ok_or(EINVAL)?;
        let from = qp.state;
        match change {
            Modify::Init(access, qkey) if matches!(from, QpState::Reset | QpState::Init) => {
                qp.access = access;
                qp.qkey = qkey.unwrap_or(qp.qkey);
                qp.state = QpState::Init;
            }
            Modify::Rtr(dest_qpn) if from == QpState::Init => {
                qp.dest_qpn = dest_qpn;
                qp.state = QpState::Rtr;
            }
            Modify::Rts(rnr_retry) if matches!(from, QpState::Rtr | QpState::Rts) => {
                qp.rnr_retry = rnr_retry;
                qp.state = QpState::Rts;
            }
            Modify::Error if from != QpState::Reset => qp.fail(),
            Modify::Reset => {
                // RESET discards without completions; the API drains first.
                qp.sq.clear();
                qp.rq.clear();
                qp.state = QpState::Reset;
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// Executes send queues until nothing more can move.
    pub(crate) fn progress(&mut self) {
        loop {
            let mut moved = false;
            let qpns: Vec<u32> = self.qps.keys().copied().collect();
            for qpn in qpns {
                while let Some(pending) = self.next_send(qpn) {
                    match self.execute(qpn, pending) {
                        Step::Done => moved = true,
                        Step::Wait(pending) => {
                            if let Some(qp) = self.qps.get_mut(&qpn) {
                                qp.sq.push_front(pending);
                            }
                            break;
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The next send-queue WR of an RTS QP.
    fn next_send(&mut self, qpn: u32) -> Option<Pending> {
        let qp = self.qps.get_mut(&qpn)?;
        if qp.state != QpState::Rts {
            return None;
        }
        qp.sq.pop_front()
    }

    /// Completes `pending` on `qpn` with `status`; an error moves the QP to ERR.
    fn finish(&mut self, qpn: u32, pending: Pending, mut completion: WorkCompletion) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        completion.qp_num = qpn;
        let failed = completion.status != WcStatus::Success;
        qp.complete(pending, completion);
        if failed {
            qp.fail();
        }
    }

    fn fail_qp(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.fail();
        }
    }

    fn execute(&mut self, qpn: u32, pending: Pending) -> Step {
        let (op, offset, len) = match &pending.work {
            Work::Send { op, offset, len } => (op, *offset, *len),
            Work::RegMr { index, key, access } => {
                let (index, key, access) = (*index, *key, *access);
                let status = self.register(index, key, access);
                self.finish(qpn, pending, completion(status, Some(WcOpcode::RegMr), qpn));
                return Step::Done;
            }
            Work::LocalInv { rkey } => {
                let rkey = *rkey;
                let status = match self.regions.values_mut().find(|r| r.valid && r.key == rkey) {
                    Some(region) => {
                        region.valid = false;
                        WcStatus::Success
                    }
                    None => WcStatus::LocalQpOperationError,
                };
                let opcode = Some(WcOpcode::LocalInvalidate);
                self.finish(qpn, pending, completion(status, opcode, qpn));
                return Step::Done;
            }
            Work::Recv { .. } => return Step::Done,
        };
        match op {
            SendKind::Ud(dest) => {
                let dest = dest.clone();
                self.ud_send(qpn, pending, &dest, offset, len)
            }
            SendKind::Rc(SendOp::Send) => self.rc_send(qpn, pending, None, offset, len),
            SendKind::Rc(SendOp::SendWithImm(imm)) => {
                let imm = *imm;
                self.rc_send(qpn, pending, Some(imm), offset, len)
            }
            SendKind::Rc(SendOp::RdmaWrite { remote_addr, rkey }) => {
                let (addr, rkey) = (*remote_addr, *rkey);
                self.rdma(qpn, pending, addr, rkey, offset, len, Need::Write)
            }
            SendKind::Rc(SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            }) => {
                let (addr, rkey, imm) = (*remote_addr, *rkey, *imm);
                self.rdma_write_with_imm(qpn, pending, addr, rkey, imm, offset, len)
            }
            SendKind::Rc(SendOp::RdmaRead { remote_addr, rkey }) => {
                let (addr, rkey) = (*remote_addr, *rkey);
                self.rdma(qpn, pending, addr, rkey, offset, len, Need::Read)
            }
            SendKind::Atomic(atomic) => {
                let atomic = *atomic;
                self.atomic(qpn, pending, atomic, offset)
            }
        }
    }

    /// A REG_MR: the post checked that the region is of the QP's PD.
    fn register(&mut self, index: u32, key: u32, access: RemoteAccess) -> WcStatus {
        match self.regions.get_mut(&index) {
            Some(region) => {
                region.key = key;
                region.access = access;
                region.valid = true;
                WcStatus::Success
            }
            _ => WcStatus::LocalProtectionError,
        }
    }

    /// The connected peer of an RC QP, if it can receive.
    fn rc_peer(&self, qpn: u32) -> Option<u32> {
        let dest = self.qps.get(&qpn)?.dest_qpn;
        let peer = self.qps.get(&dest)?;
        (peer.queues.rc && matches!(peer.state, QpState::Rtr | QpState::Rts)).then_some(dest)
    }

    fn rc_send(
        &mut self,
        qpn: u32,
        pending: Pending,
        imm: Option<u32>,
        offset: usize,
        len: usize,
    ) -> Step {
        let opcode = Some(WcOpcode::Send);
        let Some(peer) = self.rc_peer(qpn) else {
            // Nobody answers: the requester retries, then gives up.
            let status = WcStatus::RetryExceededError;
            self.finish(qpn, pending, completion(status, opcode, qpn));
            return Step::Done;
        };
        let recv = self.qps.get_mut(&peer).and_then(|p| p.rq.pop_front());
        let Some(recv) = recv else {
            let rnr_retry = self.qps.get(&qpn).map_or(0, |qp| qp.rnr_retry);
            if rnr_retry == 0 {
                let status = WcStatus::RnrRetryExceededError;
                self.finish(qpn, pending, completion(status, opcode, qpn));
                return Step::Done;
            }
            return Step::Wait(pending);
        };
        let Work::Recv {
            offset: recv_offset,
            len: recv_len,
        } = recv.work
        else {
            return Step::Wait(pending);
        };
        if len > recv_len {
            // rxe's status for a receive too small (`RESPST_ERR_LENGTH`); the IB spec's
            // would be a local length error.
            let status = WcStatus::LocalQpOperationError;
            self.finish(peer, recv, completion(status, Some(WcOpcode::Recv), peer));
            let status = WcStatus::RemoteOperationError;
            self.finish(qpn, pending, completion(status, opcode, qpn));
            return Step::Done;
        }
        copy(
            pending.wr.as_ref(),
            offset,
            recv.wr.as_ref(),
            recv_offset,
            len,
        );
        // No source QP: rxe gives one only to datagrams (their DETH names it).
        let received = WorkCompletion {
            byte_len: len as u32,
            imm,
            ..completion(WcStatus::Success, Some(WcOpcode::Recv), peer)
        };
        self.finish(peer, recv, received);
        self.finish(qpn, pending, completion(WcStatus::Success, opcode, qpn));
        Step::Done
    }

    fn ud_send(
        &mut self,
        qpn: u32,
        pending: Pending,
        dest: &UdDest,
        offset: usize,
        len: usize,
    ) -> Step {
        let sent = completion(WcStatus::Success, Some(WcOpcode::Send), qpn);
        let sgid = dest.ah.device().gid;
        let takes = self.qps.get(&dest.remote_qpn).is_some_and(|peer| {
            !peer.queues.rc
                && peer.state >= QpState::Rtr
                && peer.state != QpState::Err
                && peer.qkey == dest.remote_qkey
        });
        let recv = if takes {
            self.qps
                .get_mut(&dest.remote_qpn)
                .and_then(|peer| peer.rq.pop_front())
        } else {
            None
        };
        // A datagram nobody takes is dropped; the send still succeeds.
        let Some(recv) = recv else {
            self.finish(qpn, pending, sent);
            return Step::Done;
        };
        let peer = dest.remote_qpn;
        let Work::Recv {
            offset: recv_offset,
            len: recv_len,
        } = recv.work
        else {
            self.finish(qpn, pending, sent);
            return Step::Done;
        };
        let received = if GRH_LEN + len > recv_len {
            completion(WcStatus::LocalLengthError, Some(WcOpcode::Recv), peer)
        } else {
            let mut grh = [0u8; GRH_LEN];
            grh[0] = 0x60;
            grh[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            grh[6] = 0x11;
            grh[7] = 64;
            grh[8..24].copy_from_slice(&sgid.0);
            grh[24..40].copy_from_slice(&dest.ah.dgid.0);
            if let Some(buffer) = recv.wr.buffer() {
                let _ = buffer
                    .lock()
                    .get_mut(recv_offset..recv_offset + GRH_LEN)
                    .map(|b| b.copy_from_slice(&grh));
            }
            copy(
                pending.wr.as_ref(),
                offset,
                recv.wr.as_ref(),
                recv_offset + GRH_LEN,
                len,
            );
            WorkCompletion {
                byte_len: (GRH_LEN + len) as u32,
                src_qp: qpn,
                grh: true,
                ..completion(WcStatus::Success, Some(WcOpcode::Recv), peer)
            }
        };
        // A UD receive error does not move the QP to ERR.
        if let Some(qp) = self.qps.get(&peer) {
            qp.complete(recv, received);
        }
        self.finish(qpn, pending, sent);
        Step::Done
    }

    /// The region a peer's `rkey` names, checked for `need` over `addr..addr + len` as
    /// the responder QP `peer` sees it; its bytes and the offset of `addr` in them.
    fn check_region(
        &self,
        peer: u32,
        rkey: u32,
        addr: u64,
        len: usize,
        need: Need,
    ) -> Option<(Arc<Mutex<Vec<u8>>>, usize)> {
        let qp = self.qps.get(&peer)?;
        let region = self.regions.values().find(|r| r.valid && r.key == rkey)?;
        let right = match need {
            Need::Read => RemoteAccess::READ,
            Need::Write => RemoteAccess::WRITE,
            Need::Atomic => RemoteAccess::ATOMIC,
        };
        let granted = |access: RemoteAccess| access.contains(right);
        if region.pd_id != qp.queues.pd_id || !granted(region.access) || !granted(qp.access) {
            return None;
        }
        let start = addr.checked_sub(region.iova)?;
        let end = start.checked_add(len as u64)?;
        if end > region.len as u64 {
            return None;
        }
        Some((region.bytes.clone(), region.offset + start as usize))
    }

    #[allow(clippy::too_many_arguments)]
    fn rdma(
        &mut self,
        qpn: u32,
        pending: Pending,
        addr: u64,
        rkey: u32,
        offset: usize,
        len: usize,
        need: Need,
    ) -> Step {
        let opcode = Some(match need {
            Need::Read => WcOpcode::RdmaRead,
            _ => WcOpcode::RdmaWrite,
        });
        let Some(peer) = self.rc_peer(qpn) else {
            let status = WcStatus::RetryExceededError;
            self.finish(qpn, pending, completion(status, opcode, qpn));
            return Step::Done;
        };
        let Some((bytes, at)) = self.check_region(peer, rkey, addr, len, need) else {
            self.remote_access_error(qpn, peer, pending, opcode);
            return Step::Done;
        };
        if let Some(local) = pending.wr.buffer() {
            let mut local = local.lock();
            let mut remote = lock(&bytes);
            match need {
                Need::Read => local[offset..offset + len].copy_from_slice(&remote[at..at + len]),
                _ => remote[at..at + len].copy_from_slice(&local[offset..offset + len]),
            }
        }
        let done = WorkCompletion {
            byte_len: if matches!(need, Need::Read) {
                len as u32
            } else {
                0
            },
            ..completion(WcStatus::Success, opcode, qpn)
        };
        self.finish(qpn, pending, done);
        Step::Done
    }

    /// An RDMA WRITE that also consumes a receive at the peer: waits (RNR) for one
    /// first, like a SEND, then places the data like a WRITE.
    #[allow(clippy::too_many_arguments)]
    fn rdma_write_with_imm(
        &mut self,
        qpn: u32,
        pending: Pending,
        addr: u64,
        rkey: u32,
        imm: u32,
        offset: usize,
        len: usize,
    ) -> Step {
        let opcode = Some(WcOpcode::RdmaWrite);
        let Some(peer) = self.rc_peer(qpn) else {
            let status = WcStatus::RetryExceededError;
            self.finish(qpn, pending, completion(status, opcode, qpn));
            return Step::Done;
        };
        if self.qps.get(&peer).is_some_and(|p| p.rq.is_empty()) {
            if self.qps.get(&qpn).map_or(0, |qp| qp.rnr_retry) == 0 {
                let status = WcStatus::RnrRetryExceededError;
                self.finish(qpn, pending, completion(status, opcode, qpn));
                return Step::Done;
            }
            return Step::Wait(pending);
        }
        let Some((bytes, at)) = self.check_region(peer, rkey, addr, len, Need::Write) else {
            self.remote_access_error(qpn, peer, pending, opcode);
            return Step::Done;
        };
        if let Some(local) = pending.wr.buffer() {
            lock(&bytes)[at..at + len].copy_from_slice(&local.lock()[offset..offset + len]);
        }
        if let Some(recv) = self.qps.get_mut(&peer).and_then(|p| p.rq.pop_front()) {
            let received = WorkCompletion {
                byte_len: len as u32,
                imm: Some(imm),
                ..completion(WcStatus::Success, Some(WcOpcode::RecvRdmaWithImm), peer)
            };
            self.finish(peer, recv, received);
        }
        self.finish(qpn, pending, completion(WcStatus::Success, opcode, qpn));
        Step::Done
    }

    fn atomic(&mut self, qpn: u32, pending: Pending, op: AtomicOp, offset: usize) -> Step {
        let (addr, rkey, opcode) = match op {
            AtomicOp::CompareAndSwap {
                remote_addr, rkey, ..
            } => (remote_addr, rkey, WcOpcode::CompSwap),
            AtomicOp::FetchAndAdd {
                remote_addr, rkey, ..
            } => (remote_addr, rkey, WcOpcode::FetchAdd),
        };
        let Some(peer) = self.rc_peer(qpn) else {
            let status = WcStatus::RetryExceededError;
            self.finish(qpn, pending, completion(status, Some(opcode), qpn));
            return Step::Done;
        };
        let Some((bytes, at)) = self.check_region(peer, rkey, addr, 8, Need::Atomic) else {
            self.remote_access_error(qpn, peer, pending, Some(opcode));
            return Step::Done;
        };
        let old = {
            let mut remote = lock(&bytes);
            let word = &mut remote[at..at + 8];
            let old = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
            let new = match op {
                AtomicOp::CompareAndSwap { compare, swap, .. } => {
                    if old == compare {
                        swap
                    } else {
                        old
                    }
                }
                AtomicOp::FetchAndAdd { add, .. } => old.wrapping_add(add),
            };
            word.copy_from_slice(&new.to_ne_bytes());
            old
        };
        if let Some(local) = pending.wr.buffer() {
            local.lock()[offset..offset + 8].copy_from_slice(&old.to_ne_bytes());
        }
        let done = WorkCompletion {
            byte_len: 8,
            ..completion(WcStatus::Success, Some(opcode), qpn)
        };
        self.finish(qpn, pending, done);
        Step::Done
    }

    /// The responder refuses a key, access or range: NAK, both ends to ERR.
    fn remote_access_error(
        &mut self,
        qpn: u32,
        peer: u32,
        pending: Pending,
        opcode: Option<WcOpcode>,
    ) {
        let status = WcStatus::RemoteAccessError;
        self.finish(qpn, pending, completion(status, opcode, qpn));
        self.fail_qp(peer);
    }
}

/// Copies `len` bytes from a WR's buffer at `from` to another's at `to` (bounds were
/// checked at post).
fn copy(source: &dyn PostedWr, from: usize, target: &dyn PostedWr, to: usize, len: usize) {
    let (Some(source), Some(target)) = (source.buffer(), target.buffer()) else {
        return;
    };
    let bytes: Vec<u8> = source.lock()[from..from + len].to_vec();
    target.lock()[to..to + len].copy_from_slice(&bytes);
}
