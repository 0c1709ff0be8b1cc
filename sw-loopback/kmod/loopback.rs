// SPDX-License-Identifier: GPL-2.0
//! `tilde_loopback.ko`: a software RoCE device whose wire is memory.
//!
//! Every QP of the device reaches every other QP of the same device, and nothing else:
//! what one sends, another receives, by a copy done at post time. It is written on
//! `rdma_core::driver` (the trait that becomes `ib_device_ops`), in safe Rust only: the
//! IB core's objects arrive as typed views, WRs as one enum per opcode, completions go
//! out through a builder, memory is reached through the layer's DMA engine for software
//! devices, and the device's state is behind `rdma_core::sync::IrqSpinLock`. The only
//! edge is the network device binding (`netdev.rs` over `netdev_glue.c`). The port takes
//! its GIDs from the network device the `netdev` parameter names (a `dummy` device
//! serves), so RoCE addressing works as over rxe; it offers no MADs, so no IB CM (and no
//! RDMA CM connections).
//!
//! What it does: RC and UD QPs; SEND (with immediate data or invalidation), RDMA WRITE
//! (with immediate data), RDMA READ, both atomics; fast registration (REG_MR, LOCAL_INV)
//! over page lists; the local DMA key for kernel virtual addresses (DMA addresses of a
//! device without a DMA device are those); RNR waits (a SEND finding no receive waits for
//! one; with no retries it fails); remote access, length and protection errors with the
//! statuses IB gives and both QPs of a connection going to error; flushes in error;
//! resizable CQs with notification. Limits: no SRQ, no user verbs, RNR retry counts of
//! 1-6 wait as "infinite" does (there is no timer), one port.
//!
//! Everything mutable is in one table behind the device lock (interrupts off: CQs are
//! polled in softirq context too), QPs by number, CQs and MRs by index; each IB core
//! object's driver state is its index. Completion handlers are called after the lock is
//! released.

use kernel::prelude::*;
use rdma_core::driver::{
    Access, AhAttr, Arm, Completion, Completions, CoreCaps, Cq, CqDue, CqEvents, Device,
    DeviceAttrs, DeviceSetup, DmaRange, Driver, Grh, Mr, MrKeys, MrPages, MrType, NewCq, NewQp,
    NodeType, Pd, PdId, PortAttrs, PortImmutable, PortSpeed, PortWidth, Qp, QpCaps, QpHandle,
    QpModify, QpState, QpType, RecvWrs, Registration, Remote, SendOp, SendWr, SendWrs, Sge,
    SoftDma,
};
use rdma_core::kernel_api::{clear, errno, push_within_capacity, remove};
use rdma_core::sync::IrqSpinLock;
use rdma_core::verbs::{LinkLayer, Mtu, PhysPortState, PortState, WcOpcode, WcStatus};
use sw_loopback::{port_guid, ud_network_header, NetworkHeader, Route, GRH_LEN};

mod netdev;

use netdev::NetdevGlue;

module! {
    type: LoopbackModule,
    name: "tilde_loopback",
    description: "tilde software RoCE loopback device (Rust, on rdma_core::driver)",
    license: "GPL",
}

/// Device limits.
const MAX_QP: usize = 1024;
const MAX_CQ: usize = MAX_QP;
const MAX_WR: u32 = 4096;
const MAX_SGE: usize = 4;
const MAX_CQE: u32 = 8192;
const MAX_MR: usize = 4096;
const MAX_PAGES: u32 = 512;
const MAX_RD_ATOM: u32 = 16;
/// QP numbers 0 and 1 are the special QPs (which this device does not have).
const FIRST_QPN: usize = 2;
/// The local DMA key: a kernel virtual address (MR index 0 is never used).
const LOCAL_DMA_LKEY: u32 = 0;
/// The largest message (the port's `max_msg_sz`): a longer one fails with a local length
/// error, so no copy under the device lock is longer.
const MAX_MSG: usize = 1 << 31;
/// The largest UD message (the port's MTU).
const UD_MTU: usize = 4096;
/// An RNR retry count that never gives up (IB's encoding).
const RNR_INFINITE: u8 = 7;
/// A Q_Key with this bit set in a UD send means "the sending QP's own".
const QKEY_OWN: u32 = 0x8000_0000;
/// CQ events one call may owe after the lock (a post touches its QP's two CQs and its
/// peer's two; failing waiters, a few more). A CQ that finds no room stays armed, so the
/// next completion notifies it.
const NOTIFY_MAX: usize = 8;

/// The device: its netdev binding, the MAC it took, and everything mutable behind the
/// device lock.
struct SoftDevice {
    netdev: NetdevGlue,
    mac: [u8; 6],
    tables: IrqSpinLock<Tables>,
}

/// A CQ's driver state: its index in [`Tables::cqs`].
struct CqIndex(usize);

/// An MR's driver state: its index in [`Tables::mrs`], the index its keys carry.
struct MrIndex(usize);

impl CqIndex {
    fn index(&self) -> usize {
        self.0
    }
}

impl MrIndex {
    fn index(&self) -> usize {
        self.0
    }
}

/// What a CQ's consumer is owed once the lock is released.
enum Due {
    /// Its completion handler (it was armed and got a completion).
    Completion,
    /// An `IB_EVENT_CQ_ERR` (a CQ of this many entries overran: completions were lost).
    Overrun(usize),
}

/// The CQ events a locked section owes, made after the lock is released: most sections
/// owe none, and pay one test for it.
struct Owed {
    due: [Option<(CqDue, Due)>; NOTIFY_MAX],
    len: usize,
}

impl Owed {
    fn new() -> Self {
        Self {
            due: Default::default(),
            len: 0,
        }
    }

    /// Records `due` for the CQ of `events`; false if there is no room (the caller keeps
    /// it for later).
    fn owe(&mut self, events: &CqEvents, due: Due) -> bool {
        let Some(free) = self.due.get_mut(self.len) else {
            return false;
        };
        // None: the CQ is being destroyed, and is owed nothing more.
        if let Some(call) = events.due() {
            *free = Some((call, due));
            self.len += 1;
        }
        true
    }

    fn deliver(&mut self, dev: &Device<SoftDevice>) {
        if self.len == 0 {
            return;
        }
        for slot in self.due.iter_mut().take(self.len) {
            let Some((call, due)) = slot.take() else {
                continue;
            };
            match due {
                Due::Completion => call.completion(),
                Due::Overrun(capacity) => {
                    pr_err!(
                        "{}: CQ of {} entries overran: completions lost\n",
                        dev.name().as_str(),
                        capacity
                    );
                    call.overrun();
                }
            }
        }
        self.len = 0;
    }
}

/// Runs `section` on the tables under the device lock, then makes the CQ events it owed.
fn locked<R>(dev: &Device<SoftDevice>, section: impl FnOnce(&mut Tables, &mut Owed) -> R) -> R {
    let mut owed = Owed::new();
    let result = section(&mut dev.tables.lock(), &mut owed);
    owed.deliver(dev);
    result
}

/// A posted receive.
#[derive(Clone, Copy)]
struct RecvWqe {
    id: u64,
    sges: [Sge; MAX_SGE],
    count: usize,
}

impl RecvWqe {
    fn sges(&self) -> &[Sge] {
        self.sges.get(..self.count).unwrap_or(&[])
    }
}

/// What a send asks, copied out of the consumer's WR (it may run after the post returns,
/// behind an RNR wait).
#[derive(Clone, Copy)]
enum Op {
    Send {
        imm: Option<u32>,
        invalidate: Option<u32>,
    },
    Write {
        remote: Remote,
        imm: Option<u32>,
    },
    Read {
        remote: Remote,
    },
    CompareSwap {
        remote: Remote,
        compare: u64,
        swap: u64,
    },
    FetchAdd {
        remote: Remote,
        add: u64,
    },
    LocalInv {
        key: u32,
    },
    /// The MR's address, length and page size as the consumer set them for this
    /// registration (a ULP may rewrite the address's upper bits between the mapping and
    /// the post, as xprtrdma does).
    RegMr {
        mr: usize,
        key: u32,
        access: Access,
        iova: u64,
        length: u64,
        page_size: u64,
    },
    Datagram {
        route: Route,
        remote_qpn: u32,
        remote_qkey: u32,
        imm: Option<u32>,
    },
}

/// A posted send.
#[derive(Clone, Copy)]
struct SendWqe {
    id: u64,
    opcode: WcOpcode,
    signaled: bool,
    sges: [Sge; MAX_SGE],
    count: usize,
    op: Op,
}

impl SendWqe {
    fn sges(&self) -> &[Sge] {
        self.sges.get(..self.count).unwrap_or(&[])
    }

    /// The requester's completion of it with `status`.
    fn completion(&self, qp: QpHandle, status: WcStatus) -> Completion {
        let bytes = match self.op {
            Op::Read { .. } => self
                .sges()
                .iter()
                .fold(0u32, |sum, s| sum.saturating_add(s.length())),
            Op::CompareSwap { .. } | Op::FetchAdd { .. } => 8,
            _ => 0,
        };
        Completion::new(qp, self.id, status, self.opcode).bytes(bytes)
    }
}

/// A QP's state.
struct QpEntry {
    qp_type: QpType,
    handle: QpHandle,
    pd: PdId,
    sig_all: bool,
    send_cq: usize,
    recv_cq: usize,
    state: QpState,
    dest_qpn: u32,
    qkey: u32,
    access: Access,
    rnr_retry: u8,
    recv: KVec<RecvWqe>,
    /// Sends waiting behind an RNR wait, in order.
    pending: KVec<SendWqe>,
    max_send: usize,
}

impl QpEntry {
    fn receives(&self) -> bool {
        matches!(self.state, QpState::Rtr | QpState::Rts)
    }
}

/// A CQ's state: a ring of completions.
struct CqEntry {
    ring: KVec<Option<Completion>>,
    head: usize,
    len: usize,
    armed: bool,
    overflowed: bool,
    events: CqEvents,
}

impl CqEntry {
    /// Queues `done`; owes the handler call if the CQ was armed.
    fn push(&mut self, owed: &mut Owed, done: Completion) {
        let capacity = self.ring.len();
        if self.len >= capacity {
            // Marked once told: a section owing too much tells at the next overrun.
            if !self.overflowed && owed.owe(&self.events, Due::Overrun(capacity)) {
                self.overflowed = true;
            }
            return;
        }
        let Some(slot) = self
            .head
            .wrapping_add(self.len)
            .checked_rem(capacity)
            .and_then(|tail| self.ring.get_mut(tail))
        else {
            return;
        };
        *slot = Some(done);
        self.len = self.len.saturating_add(1);
        if self.armed && owed.owe(&self.events, Due::Completion) {
            self.armed = false;
        }
    }
}

/// A page list: staged by `map_mr_sg`, made active by REG_MR.
struct PageList {
    pages: KVec<DmaRange>,
    iova: u64,
    length: u64,
    page_size: u64,
}

/// An MR's state: all memory (DMA MR) or a fast-registration page list.
struct MrEntry {
    pd: PdId,
    dma: bool,
    key: u32,
    valid: bool,
    access: Access,
    staged: KVec<DmaRange>,
    active: PageList,
}

/// QPs by number, CQs by index, MRs by key index.
struct Tables {
    qps: KVec<Option<QpEntry>>,
    cqs: KVec<Option<CqEntry>>,
    mrs: KVec<Option<MrEntry>>,
    /// Where the search for a free QP number starts: numbers are handed out in turn, so
    /// a number just freed is not at once another QP's (a late message for the old one
    /// finds nobody).
    next_qpn: usize,
    /// Per MR index, the low byte of the key its last MR got: each new MR of an index
    /// gets the next, so a key of an MR since deregistered reaches no later one.
    mr_generations: KVec<u8>,
}

/// `len` bytes of memory a WR names, validated.
#[derive(Clone, Copy)]
enum Span {
    /// At DMA addresses (the local DMA key, a DMA MR).
    Dma(DmaRange),
    /// At `iova` of MR `mr`'s active page list.
    Mr { mr: usize, iova: u64, len: usize },
}

impl Span {
    fn len(&self) -> usize {
        match *self {
            Self::Dma(range) => range.len(),
            Self::Mr { len, .. } => len,
        }
    }
}

fn total(spans: &[Span]) -> usize {
    spans.iter().fold(0, |sum, s| sum.saturating_add(s.len()))
}

/// A translated scatter/gather list.
struct Spans {
    spans: [Span; MAX_SGE],
    count: usize,
}

impl Spans {
    fn as_slice(&self) -> &[Span] {
        self.spans.get(..self.count).unwrap_or(&[])
    }
}

/// A position in a list of spans, handing out contiguous pieces.
struct Cursor<'s> {
    rest: core::slice::Iter<'s, Span>,
    current: Option<&'s Span>,
    offset: usize,
}

impl<'s> Cursor<'s> {
    fn new(spans: &'s [Span]) -> Self {
        let mut rest = spans.iter();
        let current = rest.next();
        Self {
            rest,
            current,
            offset: 0,
        }
    }

    /// The next contiguous piece, at most `max` bytes, consumed; `None` at the end or
    /// where a page list does not reach.
    fn piece(&mut self, tables: &Tables, max: usize) -> Option<DmaRange> {
        loop {
            let span = self.current?;
            if self.offset < span.len() {
                let contiguous = tables.at(span, self.offset)?;
                let piece = contiguous.sub(0, contiguous.len().min(max))?;
                self.offset = self.offset.saturating_add(piece.len());
                return Some(piece);
            }
            self.current = self.rest.next();
            self.offset = 0;
        }
    }
}

/// What executing a send WQE came to.
enum Outcome {
    Done,
    /// The responder has no receive: wait for one.
    RnrWait,
    /// The requester's completion status, and whether the responder's QP fails too.
    Failed(WcStatus, bool),
}

fn new_slots<T>(count: usize) -> Result<KVec<Option<T>>> {
    let mut slots = KVec::with_capacity(count, GFP_KERNEL)?;
    for _ in 0..count {
        slots.push(None, GFP_KERNEL)?;
    }
    Ok(slots)
}

fn slot<T>(slots: &KVec<Option<T>>, index: usize) -> Option<&T> {
    slots.get(index).and_then(Option::as_ref)
}

fn slot_mut<T>(slots: &mut KVec<Option<T>>, index: usize) -> Option<&mut T> {
    slots.get_mut(index).and_then(Option::as_mut)
}

/// Empties slot `index`, handing back what it held (to be dropped outside the lock).
fn take_slot<T>(slots: &mut KVec<Option<T>>, index: usize) -> Option<T> {
    slots.get_mut(index).and_then(Option::take)
}

/// The index of a free slot of `slots` in `range`, in order.
fn free_slot<T>(slots: &KVec<Option<T>>, mut range: impl Iterator<Item = usize>) -> Option<usize> {
    range.find(|&i| slots.get(i).is_some_and(Option::is_none))
}

impl Tables {
    fn new() -> Result<Self> {
        let mut mr_generations = KVec::with_capacity(MAX_MR, GFP_KERNEL)?;
        for _ in 0..MAX_MR {
            mr_generations.push(0u8, GFP_KERNEL)?;
        }
        Ok(Self {
            qps: new_slots(MAX_QP)?,
            cqs: new_slots(MAX_CQ)?,
            mrs: new_slots(MAX_MR)?,
            next_qpn: FIRST_QPN,
            mr_generations,
        })
    }

    fn qp(&self, qpn: u32) -> Option<&QpEntry> {
        slot(&self.qps, qpn as usize)
    }

    fn qp_mut(&mut self, qpn: u32) -> Option<&mut QpEntry> {
        slot_mut(&mut self.qps, qpn as usize)
    }

    /// The MR a key names by its index (its key may be another's: callers compare).
    fn mr_of_key(&self, key: u32) -> Option<&MrEntry> {
        slot(&self.mrs, (key >> 8) as usize)
    }

    fn push_cq(&mut self, cq: usize, owed: &mut Owed, done: Completion) {
        if let Some(cq) = slot_mut(&mut self.cqs, cq) {
            cq.push(owed, done);
        }
    }

    /// The bytes of `span` from `offset` on that are contiguous in memory.
    fn at(&self, span: &Span, offset: usize) -> Option<DmaRange> {
        let left = span.len().checked_sub(offset)?;
        match *span {
            Span::Dma(range) => range.sub(offset, left),
            Span::Mr { mr, iova, .. } => {
                let list = &slot(&self.mrs, mr)?.active;
                let addr = iova.checked_add(offset as u64)?;
                let base = list.iova & !list.page_size.checked_sub(1)?;
                let from_base = addr.checked_sub(base)?;
                let index = usize::try_from(from_base.checked_div(list.page_size)?).ok()?;
                let within = from_base.checked_rem(list.page_size)?;
                let page = list.pages.get(index)?;
                let within = usize::try_from(within).ok()?;
                let contiguous = page.len().checked_sub(within)?.min(left);
                page.sub(within, contiguous)
            }
        }
    }

    /// Copies all of `from` into `to`, from where `to` stands (`to` has room, checked).
    fn copy(&self, dma: &SoftDma<'_>, from: &[Span], to: &mut Cursor<'_>) -> Option<()> {
        let mut source = Cursor::new(from);
        let mut remaining = total(from);
        while remaining > 0 {
            let from = source.piece(self, remaining)?;
            let mut done = 0;
            while done < from.len() {
                let into = to.piece(self, from.len() - done)?;
                if !dma.copy(from.sub(done, into.len())?, into) {
                    return None;
                }
                done += into.len();
            }
            remaining -= from.len();
        }
        Some(())
    }

    /// Writes `bytes` (the device's own: a header, an atomic's result) into `to`.
    fn write(&self, dma: &SoftDma<'_>, bytes: &[u8], to: &mut Cursor<'_>) -> Option<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let into = to.piece(self, rest.len())?;
            let (now, later) = (rest.get(..into.len())?, rest.get(into.len()..)?);
            if !dma.write(into, now) {
                return None;
            }
            rest = later;
        }
        Some(())
    }

    /// Translates an SGE list of a QP of `pd` (`write`: the device writes it).
    fn local(&self, pd: PdId, sges: &[Sge], write: bool) -> Option<Spans> {
        let mut spans = Spans {
            spans: [Span::Dma(DmaRange::EMPTY); MAX_SGE],
            count: 0,
        };
        let need = if write {
            Access::LOCAL_WRITE
        } else {
            Access::empty()
        };
        for (sge, span) in sges.iter().zip(spans.spans.iter_mut()) {
            *span = if sge.lkey() == LOCAL_DMA_LKEY {
                Span::Dma(sge.dma_range())
            } else {
                self.translate(pd, sge.lkey(), sge.dma_range(), need)?
            };
            spans.count = spans.count.saturating_add(1);
        }
        Some(spans)
    }

    /// The bytes `posted` names under `key` (its start an address in the key's address
    /// space), if the key is valid, of `pd`, allows `need` and covers them.
    fn translate(&self, pd: PdId, key: u32, posted: DmaRange, need: Access) -> Option<Span> {
        let mr = self.mr_of_key(key)?;
        if !mr.valid || mr.key != key || mr.pd != pd || !mr.access.contains(need) {
            return None;
        }
        if mr.dma {
            // A DMA MR's addresses are DMA addresses.
            return Some(Span::Dma(posted));
        }
        let (addr, len) = (posted.start(), posted.len());
        let list = &mr.active;
        let end = addr.checked_add(len as u64)?;
        if addr < list.iova || end > list.iova.checked_add(list.length)? || list.page_size == 0 {
            return None;
        }
        Some(Span::Mr {
            mr: (key >> 8) as usize,
            iova: addr,
            len,
        })
    }

    /// Moves QP `qpn` to error and flushes what it holds.
    fn fail(&mut self, dma: &SoftDma<'_>, owed: &mut Owed, qpn: u32) {
        let Some(qp) = self.qp_mut(qpn) else {
            return;
        };
        qp.state = QpState::Err;
        let mut recvs = core::mem::take(&mut qp.recv);
        let mut sends = core::mem::take(&mut qp.pending);
        let (handle, send_cq, recv_cq) = (qp.handle, qp.send_cq, qp.recv_cq);
        for wqe in recvs.iter() {
            let done = Completion::new(handle, wqe.id, WcStatus::WrFlushError, WcOpcode::Recv);
            self.push_cq(recv_cq, owed, done);
        }
        for wqe in sends.iter() {
            self.push_cq(
                send_cq,
                owed,
                wqe.completion(handle, WcStatus::WrFlushError),
            );
        }
        // The queues keep their capacity (allocated at create): no allocation here.
        clear(&mut recvs);
        clear(&mut sends);
        if let Some(qp) = self.qp_mut(qpn) {
            qp.recv = recvs;
            qp.pending = sends;
        }
        // Senders waiting on this QP (RNR) get no answer from it any more.
        self.wake_waiters(dma, owed, qpn);
    }

    /// Executes QP `qpn`'s pending sends in order while they can go.
    fn progress(&mut self, dma: &SoftDma<'_>, owed: &mut Owed, qpn: u32) {
        loop {
            let Some(qp) = self.qp(qpn) else {
                return;
            };
            if qp.state != QpState::Rts {
                return;
            }
            let Some(&wqe) = qp.pending.first() else {
                return;
            };
            let (handle, send_cq, sig_all) = (qp.handle, qp.send_cq, qp.sig_all);
            match self.execute(dma, owed, qpn, &wqe) {
                Outcome::RnrWait => return,
                Outcome::Done => {
                    if let Some(qp) = self.qp_mut(qpn) {
                        let _ = remove(&mut qp.pending, 0);
                    }
                    if wqe.signaled || sig_all {
                        self.push_cq(send_cq, owed, wqe.completion(handle, WcStatus::Success));
                    }
                }
                Outcome::Failed(status, responder_too) => {
                    let dest = match self.qp_mut(qpn) {
                        Some(qp) => {
                            let _ = remove(&mut qp.pending, 0);
                            qp.dest_qpn
                        }
                        None => return,
                    };
                    self.push_cq(send_cq, owed, wqe.completion(handle, status));
                    // This QP first: its later sends flush, whatever the peer's failing
                    // wakes.
                    self.fail(dma, owed, qpn);
                    if responder_too && dest != qpn {
                        self.fail(dma, owed, dest);
                    }
                    return;
                }
            }
        }
    }

    /// Lets the RC QPs whose sends wait on QP `qpn` (RNR) try again: when it has gone to
    /// error or away, they fail as a requester whose responder stopped answering does.
    fn wake_waiters(&mut self, dma: &SoftDma<'_>, owed: &mut Owed, qpn: u32) {
        for n in FIRST_QPN..MAX_QP {
            let waiting = self.qps.get(n).and_then(Option::as_ref).is_some_and(|w| {
                w.dest_qpn == qpn && !w.pending.is_empty() && w.qp_type == QpType::Rc
            });
            if waiting && n != qpn as usize {
                self.progress(dma, owed, n as u32);
            }
        }
    }

    /// The responder had no receive: with retries left, wait; with none, fail.
    fn rnr(&self, qpn: u32) -> Outcome {
        match self.qp(qpn) {
            Some(qp) if qp.rnr_retry != 0 => Outcome::RnrWait,
            _ => Outcome::Failed(WcStatus::RnrRetryExceededError, false),
        }
    }

    /// Executes one send WQE of QP `qpn` (not its completion, which the caller makes).
    fn execute(&mut self, dma: &SoftDma<'_>, owed: &mut Owed, qpn: u32, wqe: &SendWqe) -> Outcome {
        let Some(qp) = self.qp(qpn) else {
            return Outcome::Failed(WcStatus::LocalQpOperationError, false);
        };
        let (pd, qp_type, dest) = (qp.pd, qp.qp_type, qp.dest_qpn);
        match wqe.op {
            Op::LocalInv { key } => {
                // The QP's own PD's MRs only, as rxe has it.
                return match slot_mut(&mut self.mrs, (key >> 8) as usize) {
                    Some(mr) if mr.key == key && mr.pd == pd && !mr.dma => {
                        mr.valid = false;
                        Outcome::Done
                    }
                    _ => Outcome::Failed(WcStatus::LocalProtectionError, false),
                };
            }
            Op::RegMr {
                mr,
                key,
                access,
                iova,
                length,
                page_size,
            } => {
                let Some(entry) = slot_mut(&mut self.mrs, mr) else {
                    return Outcome::Failed(WcStatus::LocalProtectionError, false);
                };
                // As IB has it (and rxe): only a free MR, of the QP's PD, with the key's
                // index unchanged.
                if entry.valid || entry.pd != pd || (key >> 8) as usize != mr || entry.dma {
                    return Outcome::Failed(WcStatus::LocalProtectionError, false);
                }
                // The registration takes a copy of the staged pages, which stay for the
                // next REG_MR of the same mapping (both lists have the MR's capacity: no
                // allocation).
                clear(&mut entry.active.pages);
                for &page in entry.staged.iter() {
                    if push_within_capacity(&mut entry.active.pages, page).is_err() {
                        return Outcome::Failed(WcStatus::LocalProtectionError, false);
                    }
                }
                entry.active.iova = iova;
                entry.active.length = length;
                entry.active.page_size = page_size;
                entry.key = key;
                entry.access = access;
                entry.valid = true;
                return Outcome::Done;
            }
            _ => {}
        }
        let reads_into_local = matches!(
            wqe.op,
            Op::Read { .. } | Op::CompareSwap { .. } | Op::FetchAdd { .. }
        );
        let Some(local) = self.local(pd, wqe.sges(), reads_into_local) else {
            return Outcome::Failed(WcStatus::LocalProtectionError, false);
        };
        let local = local.as_slice();
        if total(local) > MAX_MSG {
            return Outcome::Failed(WcStatus::LocalLengthError, false);
        }
        if let Op::Datagram {
            route,
            remote_qpn,
            remote_qkey,
            imm,
        } = wqe.op
        {
            let qkey = if remote_qkey & QKEY_OWN != 0 {
                self.qp(qpn).map_or(0, |qp| qp.qkey)
            } else {
                remote_qkey
            };
            self.deliver_ud(dma, owed, qpn, local, &route, remote_qpn, qkey, imm);
            return Outcome::Done;
        }
        if qp_type != QpType::Rc {
            return Outcome::Failed(WcStatus::LocalQpOperationError, false);
        }
        let Some(peer) = self.qp(dest) else {
            return Outcome::Failed(WcStatus::RetryExceededError, false);
        };
        if peer.qp_type != QpType::Rc || !peer.receives() {
            return Outcome::Failed(WcStatus::RetryExceededError, false);
        }
        let (peer_access, peer_pd, peer_handle, peer_recv_cq) =
            (peer.access, peer.pd, peer.handle, peer.recv_cq);
        let remote = |tables: &Tables, remote: Remote, len: usize, need: Access| {
            if !peer_access.contains(need) {
                return None;
            }
            tables.translate(peer_pd, remote.rkey(), remote.dma_range(len), need)
        };
        match wqe.op {
            Op::Write { remote: at, imm } => {
                let len = total(local);
                let Some(target) = remote(self, at, len, Access::REMOTE_WRITE) else {
                    return Outcome::Failed(WcStatus::RemoteAccessError, true);
                };
                // WRITE with immediate data consumes a receive: none, the requester waits.
                let recv = match imm {
                    Some(_) => match self.qp(dest).and_then(|p| p.recv.first().copied()) {
                        Some(recv) => Some(recv),
                        None => return self.rnr(qpn),
                    },
                    None => None,
                };
                if self.copy(dma, local, &mut Cursor::new(&[target])).is_none() {
                    return Outcome::Failed(WcStatus::RemoteAccessError, true);
                }
                if let (Some(recv), Some(imm)) = (recv, imm) {
                    if let Some(peer) = self.qp_mut(dest) {
                        let _ = remove(&mut peer.recv, 0);
                    }
                    let done = Completion::new(
                        peer_handle,
                        recv.id,
                        WcStatus::Success,
                        WcOpcode::RecvRdmaWithImm,
                    )
                    .bytes(len as u32)
                    .with_imm(imm)
                    .source_qp(qpn);
                    self.push_cq(peer_recv_cq, owed, done);
                }
                Outcome::Done
            }
            Op::Read { remote: at } => {
                let Some(source) = remote(self, at, total(local), Access::REMOTE_READ) else {
                    return Outcome::Failed(WcStatus::RemoteAccessError, true);
                };
                match self.copy(dma, &[source], &mut Cursor::new(local)) {
                    Some(()) => Outcome::Done,
                    None => Outcome::Failed(WcStatus::LocalProtectionError, false),
                }
            }
            Op::CompareSwap { remote: at, .. } | Op::FetchAdd { remote: at, .. } => {
                let word = remote(self, at, 8, Access::REMOTE_ATOMIC)
                    .filter(|_| at.addr() % 8 == 0)
                    .and_then(|span| self.at(&span, 0))
                    .and_then(|contiguous| contiguous.sub(0, 8));
                let Some(word) = word else {
                    return Outcome::Failed(WcStatus::RemoteAccessError, true);
                };
                if total(local) < 8 {
                    return Outcome::Failed(WcStatus::LocalLengthError, false);
                }
                let old = match wqe.op {
                    Op::CompareSwap { compare, swap, .. } => dma.compare_swap(word, compare, swap),
                    Op::FetchAdd { add, .. } => dma.fetch_add(word, add),
                    _ => None,
                };
                let Some(old) = old else {
                    return Outcome::Failed(WcStatus::RemoteAccessError, true);
                };
                match self.write(dma, &old.to_ne_bytes(), &mut Cursor::new(local)) {
                    Some(()) => Outcome::Done,
                    None => Outcome::Failed(WcStatus::LocalProtectionError, false),
                }
            }
            Op::Send { imm, invalidate } => {
                let Some(recv) = self.qp(dest).and_then(|p| p.recv.first().copied()) else {
                    return self.rnr(qpn);
                };
                if let Some(peer) = self.qp_mut(dest) {
                    let _ = remove(&mut peer.recv, 0);
                }
                let len = total(local);
                let target = self.local(peer_pd, recv.sges(), true);
                let status = match &target {
                    Some(t) if total(t.as_slice()) >= len => {
                        match self.copy(dma, local, &mut Cursor::new(t.as_slice())) {
                            Some(()) => WcStatus::Success,
                            None => WcStatus::LocalProtectionError,
                        }
                    }
                    Some(_) => WcStatus::LocalLengthError,
                    None => WcStatus::LocalProtectionError,
                };
                // A SEND with Invalidate names a key of the responder's PD, which it
                // invalidates; any other key is the requester's error (IB class J).
                let invalidates = invalidate.map(|key| {
                    self.mr_of_key(key)
                        .is_some_and(|mr| mr.key == key && mr.pd == peer_pd && !mr.dma)
                });
                let status = match invalidates {
                    Some(false) if status == WcStatus::Success => {
                        WcStatus::RemoteInvalidRequestError
                    }
                    _ => status,
                };
                let done = Completion::new(peer_handle, recv.id, status, WcOpcode::Recv);
                if status != WcStatus::Success {
                    self.push_cq(peer_recv_cq, owed, done);
                    // The responder's QP fails too; `progress` fails the requester's
                    // (which may be the same QP, connected to itself).
                    return Outcome::Failed(WcStatus::RemoteInvalidRequestError, true);
                }
                let mut done = done.bytes(len as u32).source_qp(qpn);
                if let Some(imm) = imm {
                    done = done.with_imm(imm);
                } else if let Some(key) = invalidate {
                    if let Some(mr) = slot_mut(&mut self.mrs, (key >> 8) as usize) {
                        mr.valid = false;
                    }
                    done = done.with_invalidate(key);
                }
                self.push_cq(peer_recv_cq, owed, done);
                Outcome::Done
            }
            _ => Outcome::Failed(WcStatus::LocalQpOperationError, false),
        }
    }

    /// A UD send of QP `qpn`: delivered to QP `remote_qpn` if it exists, takes `qkey` and
    /// has a receive, else dropped (UD is unreliable); the sender completes either way.
    #[allow(clippy::too_many_arguments)]
    fn deliver_ud(
        &mut self,
        dma: &SoftDma<'_>,
        owed: &mut Owed,
        qpn: u32,
        local: &[Span],
        route: &Route,
        remote_qpn: u32,
        qkey: u32,
        imm: Option<u32>,
    ) {
        let len = total(local);
        if len > UD_MTU {
            return;
        }
        let Some(peer) = self.qp(remote_qpn) else {
            return;
        };
        if peer.qp_type != QpType::Ud || !peer.receives() || peer.qkey != qkey {
            return;
        }
        let Some(recv) = peer.recv.first().copied() else {
            return;
        };
        let (peer_pd, peer_handle, peer_recv_cq) = (peer.pd, peer.handle, peer.recv_cq);
        if let Some(peer) = self.qp_mut(remote_qpn) {
            let _ = remove(&mut peer.recv, 0);
        }
        let (header, kind) = ud_network_header(route, len);
        let target = self.local(peer_pd, recv.sges(), true);
        let status = match &target {
            Some(t) if total(t.as_slice()) >= GRH_LEN.saturating_add(len) => {
                let mut into = Cursor::new(t.as_slice());
                match self
                    .write(dma, &header, &mut into)
                    .and_then(|()| self.copy(dma, local, &mut into))
                {
                    Some(()) => WcStatus::Success,
                    None => WcStatus::LocalProtectionError,
                }
            }
            Some(_) => WcStatus::LocalLengthError,
            None => WcStatus::LocalProtectionError,
        };
        let mut done = Completion::new(peer_handle, recv.id, status, WcOpcode::Recv);
        if status == WcStatus::Success {
            let grh = match kind {
                NetworkHeader::Ipv4 => Grh::Ipv4,
                NetworkHeader::Ipv6 => Grh::Ipv6,
            };
            done = done
                .bytes(GRH_LEN.saturating_add(len) as u32)
                .source_qp(qpn)
                .with_grh(grh);
            if let Some(imm) = imm {
                done = done.with_imm(imm);
            }
        }
        self.push_cq(peer_recv_cq, owed, done);
    }
}

/// A send WR of a QP of `qp_type`, read into what the device keeps of it: `EINVAL` for
/// an opcode the QP's type does not have (a UD QP only sends datagrams).
fn send_wqe(wr: &SendWr<'_, SoftDevice>, qp_type: QpType) -> Result<SendWqe> {
    let posted = wr.sges()?;
    if posted.len() > MAX_SGE {
        return Err(EINVAL);
    }
    let mut sges = [Sge::default(); MAX_SGE];
    for (slot, sge) in sges.iter_mut().zip(posted) {
        *slot = *sge;
    }
    let op = match wr.op()? {
        SendOp::Send => Op::Send {
            imm: None,
            invalidate: None,
        },
        SendOp::SendWithImm(imm) => Op::Send {
            imm: Some(imm),
            invalidate: None,
        },
        SendOp::SendWithInv(key) => Op::Send {
            imm: None,
            invalidate: Some(key),
        },
        SendOp::Write { remote, imm } => Op::Write { remote, imm },
        SendOp::Read { remote } => Op::Read { remote },
        SendOp::CompareSwap {
            remote,
            compare,
            swap,
        } => Op::CompareSwap {
            remote,
            compare,
            swap,
        },
        SendOp::FetchAdd { remote, add } => Op::FetchAdd { remote, add },
        SendOp::LocalInv { key } => Op::LocalInv { key },
        SendOp::RegMr { mr, key, access } => Op::RegMr {
            mr: mr.index(),
            key,
            access,
            iova: mr.iova(),
            length: mr.length(),
            page_size: u64::from(mr.page_size()),
        },
        SendOp::Datagram {
            ah,
            remote_qpn,
            remote_qkey,
            imm,
            ..
        } => Op::Datagram {
            route: **ah,
            remote_qpn,
            remote_qkey,
            imm,
        },
    };
    if qp_type.is_datagram() != matches!(op, Op::Datagram { .. }) {
        return Err(EINVAL);
    }
    // A datagram is one packet: no longer than the port's MTU.
    let length = posted
        .iter()
        .fold(0usize, |sum, sge| sum.saturating_add(sge.length() as usize));
    if qp_type.is_datagram() && length > UD_MTU {
        return Err(EINVAL);
    }
    Ok(SendWqe {
        id: wr.id(),
        opcode: wr.completion_opcode(),
        signaled: wr.signaled(),
        sges,
        count: posted.len(),
        op,
    })
}

impl SoftDevice {
    /// Posts one send WR of `qp`.
    fn post_send_one(dev: &Device<Self>, qp: &Qp<Self>, wr: &SendWr<'_, Self>) -> Result {
        let qpn = qp.num();
        // In error every WR flushes, whatever it is (`ib_drain_sq` posts an RDMA WRITE
        // with no address, on UD QPs too): before any check of its contents.
        let in_error = dev
            .tables
            .lock()
            .qp(qpn)
            .map(|qp| qp.state == QpState::Err)
            .ok_or(EINVAL)?;
        if in_error {
            return locked(dev, |tables, owed| {
                let qp = tables.qp(qpn).ok_or(EINVAL)?;
                let done = Completion::new(
                    qp.handle,
                    wr.id(),
                    WcStatus::WrFlushError,
                    wr.completion_opcode(),
                );
                let send_cq = qp.send_cq;
                tables.push_cq(send_cq, owed, done);
                Ok(())
            });
        }
        let wqe = send_wqe(wr, qp.qp_type())?;
        let dma = dev.dma();
        locked(dev, |tables, owed| {
            let qp = tables.qp_mut(qpn).ok_or(EINVAL)?;
            match qp.state {
                QpState::Rts => {}
                QpState::Err => {
                    let done = wqe.completion(qp.handle, WcStatus::WrFlushError);
                    let send_cq = qp.send_cq;
                    tables.push_cq(send_cq, owed, done);
                    return Ok(());
                }
                _ => return Err(EINVAL),
            }
            if qp.pending.len() >= qp.max_send.max(1) {
                return Err(ENOMEM);
            }
            // Behind the waiting ones, in order; `progress` runs it when its turn comes.
            push_within_capacity(&mut qp.pending, wqe).map_err(|_| ENOMEM)?;
            tables.progress(&dma, owed, qpn);
            Ok(())
        })
    }

    /// An MR of `pd`: all memory (`dma`) or a page list of up to `max_pages`.
    fn new_mr(
        dev: &Device<Self>,
        pd: PdId,
        dma: bool,
        access: Access,
        max_pages: u32,
    ) -> Result<(MrIndex, MrKeys)> {
        let capacity = max_pages as usize;
        let staged = KVec::with_capacity(capacity, GFP_KERNEL)?;
        let active = PageList {
            pages: KVec::with_capacity(capacity, GFP_KERNEL)?,
            iova: 0,
            length: 0,
            page_size: 0,
        };
        let mut tables = dev.tables.lock();
        // Index 0 is the local DMA key's.
        let index = free_slot(&tables.mrs, 1..MAX_MR).ok_or(ENOMEM)?;
        let generation = tables.mr_generations.get_mut(index).ok_or(ENOMEM)?;
        *generation = generation.wrapping_add(1);
        let key = ((index as u32) << 8) | u32::from(*generation);
        let slot = tables.mrs.get_mut(index).ok_or(ENOMEM)?;
        *slot = Some(MrEntry {
            pd,
            dma,
            key,
            valid: dma,
            access,
            staged,
            active,
        });
        Ok((
            MrIndex(index),
            MrKeys {
                lkey: key,
                rkey: key,
            },
        ))
    }
}

/// A zeroed completion ring of `capacity` entries.
fn ring(capacity: usize) -> Result<KVec<Option<Completion>>> {
    new_slots(capacity)
}

impl Driver for SoftDevice {
    type Pd = ();
    type Cq = CqIndex;
    type Qp = ();
    type Ah = Route;
    type Mr = MrIndex;

    fn query_device(dev: &Device<Self>, attrs: &mut DeviceAttrs<'_>) -> Result {
        let sge = MAX_SGE as u32;
        let (qps, cqs, mrs) = (MAX_QP as u32, MAX_CQ as u32, MAX_MR as u32);
        attrs
            .sys_image_guid(port_guid(dev.mac))
            .max_mr_size(u64::MAX)
            .page_size_cap(0xffff_f000)
            .qp_limits(qps - FIRST_QPN as u32, MAX_WR, sge, sge, sge)
            .cq_limits(cqs, MAX_CQE)
            .object_limits(mrs - 1, qps, qps, 1, MAX_PAGES)
            .read_atomic_limits(MAX_RD_ATOM, MAX_RD_ATOM, MAX_RD_ATOM * qps)
            .mem_mgt_extensions()
            .local_dma_lkey()
            .atomics_within_device();
        Ok(())
    }

    fn query_port(dev: &Device<Self>, port: u32, attrs: &mut PortAttrs<'_>) -> Result {
        if port != 1 {
            return Err(EINVAL);
        }
        if dev.netdev.port_up(dev) {
            attrs.state(PortState::Active, PhysPortState::LinkUp);
        } else {
            attrs.state(PortState::Down, PhysPortState::Disabled);
        }
        attrs
            .mtu(Mtu::Mtu4096, Mtu::Mtu4096)
            .tables(16, 1)
            .max_msg_size(MAX_MSG as u32)
            .link(PortWidth::X4, PortSpeed::Edr);
        Ok(())
    }

    fn port_immutable(_dev: &Device<Self>, port: u32, immutable: &mut PortImmutable<'_>) -> Result {
        if port != 1 {
            return Err(EINVAL);
        }
        // RoCEv2 without MADs: GIDs from the netdev, no GSI QP, no IB CM.
        // ETH_AH: UD receive completions carry RoCE addresses (`ib_init_ah_attr_from_wc`
        // reads the network header by them).
        immutable
            .core_caps(CoreCaps::ROCE_UDP_ENCAP | CoreCaps::ETH_AH)
            .tables(16, 1)
            .max_mad_size(0);
        Ok(())
    }

    fn link_layer(_dev: &Device<Self>, _port: u32) -> LinkLayer {
        LinkLayer::Ethernet
    }

    fn query_pkey(_dev: &Device<Self>, port: u32, index: u16) -> Result<u16> {
        if port != 1 || index != 0 {
            return Err(EINVAL);
        }
        Ok(0xffff)
    }

    fn alloc_pd(_dev: &Device<Self>) -> Result {
        Ok(())
    }

    fn create_cq(dev: &Device<Self>, cq: &mut NewCq<'_>) -> Result<CqIndex> {
        let requested = cq.requested();
        if requested == 0 || requested > MAX_CQE || cq.flags() != 0 {
            return Err(EINVAL);
        }
        let entry = CqEntry {
            ring: ring(requested as usize)?,
            head: 0,
            len: 0,
            armed: false,
            overflowed: false,
            events: cq.events().clone(),
        };
        let mut tables = dev.tables.lock();
        let index = free_slot(&tables.cqs, 0..MAX_CQ).ok_or(ENOMEM)?;
        let slot = tables.cqs.get_mut(index).ok_or(ENOMEM)?;
        *slot = Some(entry);
        drop(tables);
        cq.set_entries(requested);
        Ok(CqIndex(index))
    }

    fn resize_cq(dev: &Device<Self>, cq: &Cq<Self>, entries: u32) -> Result<u32> {
        if entries == 0 || entries > MAX_CQE {
            return Err(EINVAL);
        }
        let mut ring = ring(entries as usize)?;
        let mut tables = dev.tables.lock();
        let state = slot_mut(&mut tables.cqs, cq.index()).ok_or(EINVAL)?;
        if state.len > ring.len() {
            return Err(EINVAL);
        }
        let old = state.ring.len();
        for (i, slot) in ring.iter_mut().take(state.len).enumerate() {
            *slot = state
                .head
                .wrapping_add(i)
                .checked_rem(old)
                .and_then(|at| take_slot(&mut state.ring, at));
        }
        core::mem::swap(&mut state.ring, &mut ring);
        state.head = 0;
        drop(tables);
        // The old ring is freed outside the lock.
        drop(ring);
        Ok(entries)
    }

    fn destroy_cq(dev: &Device<Self>, cq: &Cq<Self>) {
        let entry = take_slot(&mut dev.tables.lock().cqs, cq.index());
        // Freed outside the lock; the layer ends the CQ's events after this.
        drop(entry);
    }

    fn poll_cq(dev: &Device<Self>, cq: &Cq<Self>, out: &mut Completions<'_>) {
        let mut tables = dev.tables.lock();
        let Some(state) = slot_mut(&mut tables.cqs, cq.index()) else {
            return;
        };
        let capacity = state.ring.len();
        while out.room() > 0 && state.len > 0 && capacity > 0 {
            if let Some(done) = take_slot(&mut state.ring, state.head) {
                out.push(&done);
            }
            state.head = state
                .head
                .wrapping_add(1)
                .checked_rem(capacity)
                .unwrap_or(0);
            state.len -= 1;
        }
    }

    fn req_notify_cq(dev: &Device<Self>, cq: &Cq<Self>, arm: Arm) -> Result<bool> {
        let mut tables = dev.tables.lock();
        let state = slot_mut(&mut tables.cqs, cq.index()).ok_or(EINVAL)?;
        if arm.arms() {
            state.armed = true;
        }
        Ok(arm.report_missed() && state.len > 0)
    }

    fn create_qp(dev: &Device<Self>, qp: &mut NewQp<'_, Self>) -> Result {
        let qp_type = qp.qp_type();
        if !matches!(qp_type, QpType::Rc | QpType::Ud) || qp.create_flags() != 0 {
            return Err(errno(kernel::bindings::EOPNOTSUPP));
        }
        let caps = qp.caps();
        let (Some(send_cq), Some(recv_cq)) = (qp.send_cq(), qp.recv_cq()) else {
            return Err(EINVAL);
        };
        if qp.has_srq()
            || caps.max_send_wr > MAX_WR
            || caps.max_recv_wr > MAX_WR
            || caps.max_send_sge as usize > MAX_SGE
            || caps.max_recv_sge as usize > MAX_SGE
            || caps.max_inline_data > 0
        {
            return Err(EINVAL);
        }
        let entry = QpEntry {
            qp_type,
            handle: qp.handle(),
            pd: qp.pd_id(),
            sig_all: qp.signals_all(),
            send_cq: send_cq.index(),
            recv_cq: recv_cq.index(),
            state: QpState::Reset,
            dest_qpn: 0,
            qkey: 0,
            access: Access::empty(),
            rnr_retry: 0,
            recv: KVec::with_capacity(caps.max_recv_wr.max(1) as usize, GFP_KERNEL)?,
            pending: KVec::with_capacity(caps.max_send_wr.max(1) as usize, GFP_KERNEL)?,
            max_send: caps.max_send_wr as usize,
        };
        let mut tables = dev.tables.lock();
        let start = tables.next_qpn.clamp(FIRST_QPN, MAX_QP - 1);
        let qpn = free_slot(
            &tables.qps,
            Iterator::chain(start..MAX_QP, FIRST_QPN..start),
        )
        .ok_or(ENOMEM)?;
        tables.next_qpn = qpn.saturating_add(1);
        let slot = tables.qps.get_mut(qpn).ok_or(ENOMEM)?;
        *slot = Some(entry);
        drop(tables);
        qp.set_num(qpn as u32);
        qp.set_caps(QpCaps {
            max_send_sge: MAX_SGE as u32,
            max_recv_sge: MAX_SGE as u32,
            ..caps
        });
        Ok(())
    }

    fn modify_qp(dev: &Device<Self>, qp: &Qp<Self>, change: &QpModify<'_>) -> Result {
        let qpn = qp.num();
        let dma = dev.dma();
        locked(dev, |tables, owed| {
            let qp = tables.qp_mut(qpn).ok_or(EINVAL)?;
            let next = change.transition(qp.state)?;
            if change.port().is_some_and(|port| port != 1) {
                return Err(EINVAL);
            }
            if let Some(access) = change.access() {
                qp.access = access;
            }
            if let Some(qkey) = change.qkey() {
                qp.qkey = qkey;
            }
            if let Some(dest) = change.dest_qpn() {
                qp.dest_qpn = dest;
            }
            if let Some(retry) = change.rnr_retry() {
                qp.rnr_retry = retry.min(RNR_INFINITE);
            }
            match next {
                Some(QpState::Reset) => {
                    clear(&mut qp.recv);
                    clear(&mut qp.pending);
                    qp.state = QpState::Reset;
                }
                Some(QpState::Err) => tables.fail(&dma, owed, qpn),
                Some(state) => qp.state = state,
                None => {}
            }
            Ok(())
        })
    }

    fn destroy_qp(dev: &Device<Self>, qp: &Qp<Self>) {
        let qpn = qp.num();
        let dma = dev.dma();
        let entry = locked(dev, |tables, owed| {
            let entry = take_slot(&mut tables.qps, qpn as usize);
            // Senders waiting on it (RNR) find nobody now: their retries end.
            tables.wake_waiters(&dma, owed, qpn);
            entry
        });
        // Its queues are freed outside the lock.
        drop(entry);
    }

    fn post_send(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut SendWrs<'_, Self>) -> Result {
        for wr in wrs {
            Self::post_send_one(dev, qp, &wr)?;
        }
        Ok(())
    }

    fn post_recv(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut RecvWrs<'_>) -> Result {
        let qpn = qp.num();
        let dma = dev.dma();
        for wr in wrs {
            let posted = wr.sges()?;
            if posted.len() > MAX_SGE {
                return Err(EINVAL);
            }
            let mut wqe = RecvWqe {
                id: wr.id(),
                sges: [Sge::default(); MAX_SGE],
                count: posted.len(),
            };
            for (slot, sge) in wqe.sges.iter_mut().zip(posted) {
                *slot = *sge;
            }
            locked(dev, |tables, owed| {
                let qp = tables.qp_mut(qpn).ok_or(EINVAL)?;
                match qp.state {
                    QpState::Reset => return Err(EINVAL),
                    QpState::Err => {
                        let done = Completion::new(
                            qp.handle,
                            wqe.id,
                            WcStatus::WrFlushError,
                            WcOpcode::Recv,
                        );
                        let recv_cq = qp.recv_cq;
                        tables.push_cq(recv_cq, owed, done);
                        return Ok(());
                    }
                    _ => {}
                }
                push_within_capacity(&mut qp.recv, wqe).map_err(|_| ENOMEM)?;
                // A sender waiting for this receive (RNR) goes on: the peer, or this QP
                // connected to itself.
                if qp.qp_type == QpType::Rc {
                    let dest = qp.dest_qpn;
                    if dest == qpn {
                        tables.progress(&dma, owed, qpn);
                    } else if tables.qp(dest).is_some_and(|peer| peer.dest_qpn == qpn) {
                        tables.progress(&dma, owed, dest);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn create_ah(_dev: &Device<Self>, attr: &AhAttr<'_>) -> Result<Route> {
        let route = attr.route().ok_or(EINVAL)?;
        let sgid = route.sgid.ok_or(EINVAL)?;
        Ok(Route {
            sgid: sgid.0,
            dgid: route.dgid.0,
            hop_limit: route.hop_limit,
            traffic_class: route.traffic_class,
            flow_label: route.flow_label,
        })
    }

    fn get_dma_mr(dev: &Device<Self>, pd: &Pd<Self>, access: Access) -> Result<(MrIndex, MrKeys)> {
        Self::new_mr(dev, pd.id(), true, access, 0)
    }

    fn alloc_mr(
        dev: &Device<Self>,
        pd: &Pd<Self>,
        mr_type: MrType,
        max_pages: u32,
    ) -> Result<(MrIndex, MrKeys)> {
        if mr_type != MrType::MemReg || max_pages == 0 || max_pages > MAX_PAGES {
            return Err(EINVAL);
        }
        Self::new_mr(dev, pd.id(), false, Access::empty(), max_pages)
    }

    fn map_mr_sg(dev: &Device<Self>, mr: &Mr<Self>, pages: MrPages<'_, Self>) -> Result<u32> {
        let mut tables = dev.tables.lock();
        let entry = slot_mut(&mut tables.mrs, mr.index()).ok_or(EINVAL)?;
        if entry.dma {
            return Err(EINVAL);
        }
        // Only the staged list changes: a registration in force keeps its own copy.
        clear(&mut entry.staged);
        let staged = &mut entry.staged;
        pages.map(|page| push_within_capacity(staged, page).map_err(|_| ENOMEM))
    }

    fn dereg_mr(dev: &Device<Self>, mr: &Mr<Self>) {
        let entry = take_slot(&mut dev.tables.lock().mrs, mr.index());
        // Its page lists are freed outside the lock.
        drop(entry);
    }
}

struct LoopbackModule {
    /// Unregisters the device on drop, then drops its state (the netdev binding with it).
    registration: Option<Registration<SoftDevice>>,
}

impl kernel::Module for LoopbackModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let device = SoftDevice {
            netdev: NetdevGlue::new()?,
            mac: [0; 6],
            tables: rdma_core::irq_spin_lock!(Tables::new()?)?,
        };
        let registration = Registration::new(
            module,
            device,
            c"tilde_lo%d",
            |setup: &mut DeviceSetup<'_>, state: &mut SoftDevice| {
                // The port count first: binding the netdev sets up the port data.
                setup.node_type(NodeType::Ca);
                setup.ports(1);
                setup.comp_vectors(1);
                setup.local_dma_lkey(LOCAL_DMA_LKEY);
                state.mac = state.netdev.attach(setup)?;
                setup.node_guid(port_guid(state.mac));
                Ok(())
            },
        )?;
        pr_info!(
            "{}: registered: RoCE loopback device\n",
            registration.name().as_str()
        );
        Ok(Self {
            registration: Some(registration),
        })
    }
}

impl Drop for LoopbackModule {
    fn drop(&mut self) {
        drop(self.registration.take());
        pr_info!("unloaded\n");
    }
}
