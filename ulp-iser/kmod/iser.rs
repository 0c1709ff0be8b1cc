// SPDX-License-Identifier: GPL-2.0
//! `tilde_iser.ko`: an iSER datamover for the kernel's iSCSI initiator, a drop-in for
//! ib_iser.
//!
//! It registers the iSCSI transport `iser` (the tables are C, `transport.c`), so
//! unmodified open-iscsi (`iscsiadm -I iser`) drives it exactly as it drives ib_iser; the
//! two cannot be loaded together. libiscsi keeps the iSCSI session (login through
//! iscsid, CmdSN, tags, error recovery), as it does for ib_iser; this module moves its
//! PDUs over RDMA with `rdma_core`'s safe API and reads and writes the iSER wire with
//! `ulp_iser::wire`:
//!
//! - a connection (`Endpoint`) is an RDMA CM id with one RC QP, one CQ polled in softirq
//!   context, a ring of receive buffers, and one `Slot` per libiscsi task: its send WR,
//!   its REG_MR and LOCAL_INV WRs and its fast-registration region;
//! - a SCSI command maps its scatterlist into the slot's region, posts REG_MR and the
//!   SEND of the iSER header (with the read or write STag), the BHS and any immediate
//!   data; the target moves the data with RDMA READ or WRITE;
//! - the SCSI Response completes the command only once no peer can reach its pages: the
//!   target's SEND with Invalidate of the region's key (isert sends one), or else a
//!   LOCAL_INV that the response waits for. Then the pages are unmapped and libiscsi
//!   completes the command.
//!
//! Everything a connection needs is allocated when it is made: the data path does no
//! allocation. Unsolicited Data-Out PDUs (InitialR2T=No) go by SEND from a shared pool
//! of WRs, their data copied from the command's pages, as ib_iser sends them.
//!
//! libiscsi and the iSCSI class are reached only through the safe binding `iscsi` (its
//! [`iscsi::Transport`] is the transport's callbacks, its types carry libiscsi's locking
//! rules), so the datamover here is safe Rust throughout.

mod iscsi;

use core::net::SocketAddrV4;
use core::time::Duration;

use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::{
    cm::{CmEvent, CmId, CmWatcher, ConnParam, ConnectionLoss},
    cq::{CompletionQueue, PollContext},
    device::{Device, DeviceName},
    dma::{DmaBuffer, DmaDirection},
    kernel_api::{
        atomic::{Acquire, Atomic, Full, Relaxed, Release},
        errno, push_within_capacity, remove, sleep, timed_out,
    },
    mr::SgRegion,
    pd::ProtectionDomain,
    qp::{QpCaps, Queues},
    sync::IrqSpinLock,
    verbs::{RemoteAccess, SendOp, WcStatus},
    wr::{CompletionHandler, WorkRequest},
};
use ulp_iser::datamover::{CommandPlan, CommandShape, PlanError, TargetRdma};
use ulp_iser::wire::{self, opcode, IserCmHeader, IserHeader, ScsiCommand, Stag, BHS_LEN, ISER_HEADER_LEN};
use zerocopy::{FromBytes, IntoBytes};

use iscsi::{
    BackLocked, CleanupTask, Command, Conn, ConnCell, Connecting, Negotiated, Param, ParamUse,
    Refused, TaskEnded, TaskRef, Transport, XmitTask,
};

module! {
    type: IserModule,
    name: "tilde_iser",
    description: "iSER transport for the iSCSI initiator (tilde, Rust)",
    license: "GPL",
}

/// The iSER and iSCSI headers at the start of every message.
const HEADERS_LEN: usize = ISER_HEADER_LEN + BHS_LEN;
/// Data a received PDU may carry: the login phase's 8 KiB (`ISCSI_DEF_MAX_RECV_SEG_LEN`),
/// which also covers sense data, NOP-In pings and text.
const RX_DATA_LEN: usize = 8192;
const RX_LEN: usize = HEADERS_LEN + RX_DATA_LEN;
/// Data a sent PDU may carry: login and text requests, and immediate data (the target's
/// MaxRecvDataSegmentLength; LIO's is 8 KiB).
const TX_DATA_LEN: usize = 8192;
const TX_LEN: usize = HEADERS_LEN + TX_DATA_LEN;
/// libiscsi tasks per session (commands and management) this transport takes.
const TASKS_MAX: u16 = 128;
/// Receives beyond one per task: unsolicited NOP-Ins and Async messages.
const RX_MISC: u32 = 4;
/// Send-queue WRs a task may have posted at once: REG_MR, SEND, LOCAL_INV.
const SEND_WRS_PER_TASK: u32 = 3;
/// Send WRs for unsolicited Data-Out PDUs (InitialR2T=No), shared by a connection's
/// tasks: 64 PDUs of up to 8 KiB in flight.
const DATA_OUT_WRS: usize = 64;
/// Pages one region maps: the host template's 128 entries of 4 KiB, plus one for an
/// unaligned start.
const REGION_PAGES: u32 = 129;
/// The most of a SCSI Response kept while it waits for its region's invalidation: the BHS
/// and up to 256 bytes of sense data.
const HELD_LEN: usize = BHS_LEN + 256;
/// How long each step of connecting may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long stopping a connection waits for its WRs to flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

struct IserModule {
    /// The transport `iser`, unregistered when the module goes.
    transport: Option<iscsi::Registration>,
}

iscsi::iscsi_transport!(Endpoint);

impl kernel::Module for IserModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let transport = iscsi::Registration::new().inspect_err(|_| {
            pr_err!("cannot register the iSCSI transport \"iser\" (is ib_iser loaded, or was memory short?)\n");
        })?;
        pr_info!("iSCSI transport \"iser\" registered\n");
        Ok(Self {
            transport: Some(transport),
        })
    }
}

impl Drop for IserModule {
    fn drop(&mut self) {
        drop(self.transport.take());
        pr_info!("iSCSI transport \"iser\" unregistered\n");
    }
}

/// What a posted WR of a connection is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Recv,
    Send,
    Reg,
    Inv,
    DataOut,
}

/// The data of every WR of a connection.
struct Work {
    conn: Arc<ConnShared>,
    kind: Kind,
    /// The task slot the WR belongs to (unused for receives).
    slot: usize,
    /// For a sent PDU no response answers: its task, kept until the PDU is sent. Taken
    /// out and dropped outside every lock (the put may take libiscsi's `back_lock`).
    put_task: Option<TaskRef>,
}

/// A libiscsi task's RDMA resources. Each WR and the region is here when idle, and with
/// the device while posted.
struct Slot {
    send: Option<KBox<WorkRequest<Work>>>,
    reg: Option<KBox<WorkRequest<Work>>>,
    inv: Option<KBox<WorkRequest<Work>>>,
    region: Option<SgRegion>,
    /// A SCSI Response (BHS and data) that waits for `region` to be invalidated.
    held: Option<usize>,
    held_bytes: HeldPdu,
    /// The key of the command's registration, while it may be valid.
    key: Option<u32>,
    /// The target invalidated `key` (SEND with Invalidate) while the region was still
    /// with the device (its REG_MR completion not yet delivered): applied when it is back.
    remotely_invalidated: bool,
    /// The task ended (libiscsi's cleanup) while its region was with the device.
    task_gone: Option<TaskEnded>,
}

/// Bytes of a held PDU, aligned as libiscsi reads a `struct iscsi_hdr`.
#[repr(C, align(8))]
struct HeldPdu([u8; HELD_LEN]);

/// What a connection's completion handlers and libiscsi's callbacks share.
#[pin_data]
struct ConnShared {
    device: DeviceName,
    /// The bound libiscsi connection: set by bind, cleared by the unbind that follows
    /// `quiesce`.
    conn: ConnCell,
    /// Set when the connection is being stopped: WR errors are then expected.
    stopping: Atomic<bool>,
    /// Set by the first failure: libiscsi is told once, dmesg says why once.
    failed: Atomic<bool>,
    /// Commands whose data was registered for the target's RDMA, and how their keys
    /// ended: by the target's SEND with Invalidate, or by our LOCAL_INV (dmesg shows the
    /// counts when the connection ends).
    registered: Atomic<u64>,
    remote_invalidations: Atomic<u64>,
    local_invalidations: Atomic<u64>,
    /// Unsolicited Data-Out PDUs sent.
    data_outs: Atomic<u64>,
    /// Management PDUs sent in a WR of the Data-Out pool, their task's own SEND WR not
    /// back yet (`send_control`).
    borrowed_sends: Atomic<u64>,
    /// Taken in the completion handler, which runs in softirq (the CQ is polled there),
    /// so taken everywhere with interrupts off: a plain spinlock held in process context
    /// could be wanted again by the softirq on the same CPU (lockdep on the debug kernel).
    slots: IrqSpinLock<KVec<Slot>>,
    /// Idle Data-Out WRs (capacity `DATA_OUT_WRS`, so putting one back never allocates).
    data_out: IrqSpinLock<KVec<KBox<WorkRequest<Work>>>>,
}

/// A response ready to hand to libiscsi, copied out of the lock.
struct Ready {
    pdu: HeldPdu,
    len: usize,
}

impl ConnShared {
    fn new(device: &Device) -> Result<Arc<Self>> {
        let slots = rdma_core::irq_spin_lock!(KVec::new())?;
        let data_out = rdma_core::irq_spin_lock!(KVec::new())?;
        Arc::pin_init(
            pin_init!(Self {
                device: device.name(),
                conn: ConnCell::new(),
                stopping: Atomic::new(false),
                failed: Atomic::new(false),
                registered: Atomic::new(0),
                remote_invalidations: Atomic::new(0),
                local_invalidations: Atomic::new(0),
                data_outs: Atomic::new(0),
                borrowed_sends: Atomic::new(0),
                slots,
                data_out,
            }),
            GFP_KERNEL,
        )
    }

    /// Fails the bound connection (libiscsi starts recovery), unless it is stopping.
    fn fail(&self, why: &str) {
        if self.stopping.load(Acquire) || self.failed.xchg(true, Full) {
            return;
        }
        pr_err!("{}: connection failed: {}\n", self.device, why);
        self.tell_libiscsi();
    }

    /// [`ConnShared::fail`] for a work request that completed in error, naming its status
    /// (the log line says why: a retry count exceeded under load reads differently from a
    /// protection error).
    fn fail_completion(&self, what: &str, status: WcStatus) {
        if self.stopping.load(Acquire) || self.failed.xchg(true, Full) {
            return;
        }
        pr_err!("{}: connection failed: {} ({})\n", self.device, what, status);
        self.tell_libiscsi();
    }

    /// Like [`ConnShared::fail`], for an end that is no error of either side (the peer
    /// disconnects after a logout, say).
    fn lost(&self, why: &str) {
        if self.stopping.load(Acquire) || self.failed.xchg(true, Full) {
            return;
        }
        pr_info!("{}: connection lost: {}\n", self.device, why);
        self.tell_libiscsi();
    }

    fn tell_libiscsi(&self) {
        self.conn.with(|conn| conn.fail());
    }

    /// Fails the connection if libiscsi refused a PDU it was handed. Not under
    /// `back_lock`.
    fn delivered(&self, conn: &Conn<'_>, result: Result<(), Refused>) {
        if let Err(refused) = result {
            pr_err!("{}: libiscsi refused a PDU: {}\n", self.device, refused.code());
            conn.refused(refused);
        }
    }
}

impl Slot {
    /// The response may complete now: the region's pages are unmapped, or it had none.
    /// Otherwise starts what makes that true (a LOCAL_INV) and returns `false`; its
    /// completion (or the REG_MR's) tries again.
    fn settle(&mut self, queues: &Queues, local_invalidations: &Atomic<u64>) -> bool {
        let Some(region) = self.region.as_mut() else {
            // With the device (REG_MR or LOCAL_INV): its completion settles.
            return false;
        };
        if !region.is_valid() {
            drop(region.unmap());
            return true;
        }
        if self.inv.is_none() {
            // Its LOCAL_INV WR is with the device (cannot happen while the region is
            // here: they travel together); the region stays.
            return false;
        }
        let (Some(region), Some(inv)) = (self.region.take(), self.inv.take()) else {
            return false;
        };
        match queues.post_invalidate(inv, region) {
            Ok(()) => local_invalidations.add(1, Relaxed),
            Err(mut rejected) => {
                // The QP is failing; the region stays valid and is freed with the
                // connection.
                self.region = rejected.wr.take_sg_region();
                self.inv = Some(rejected.wr);
            }
        }
        false
    }

    /// Keeps a response until its region is invalidated.
    fn hold(&mut self, pdu: &[u8]) -> Result {
        let target = self.held_bytes.0.get_mut(..pdu.len()).ok_or(errno(kernel::bindings::EMSGSIZE))?;
        target.copy_from_slice(pdu);
        self.held = Some(pdu.len());
        Ok(())
    }

    fn take_held(&mut self) -> Option<Ready> {
        let len = self.held.take()?;
        let mut ready = Ready {
            pdu: HeldPdu([0; HELD_LEN]),
            len,
        };
        ready.pdu.0.get_mut(..len)?.copy_from_slice(self.held_bytes.0.get(..len)?);
        Some(ready)
    }
}

impl CmWatcher for ConnShared {
    fn connection_lost(&self, loss: ConnectionLoss) {
        self.lost(match loss {
            ConnectionLoss::Disconnected => "the target disconnected",
            ConnectionLoss::DeviceRemoval => "the RDMA device is going away",
            ConnectionLoss::AddrChange => "the local address moved to another device",
        });
    }
}

impl CompletionHandler for Work {
    fn complete(wr: KBox<WorkRequest<Self>>, queues: &Queues) {
        let conn = wr.data().conn.clone();
        match wr.data().kind {
            Kind::Recv => conn.received(wr, queues),
            Kind::Send => conn.sent(wr),
            Kind::DataOut => conn.data_out_sent(wr),
            Kind::Reg | Kind::Inv => conn.region_back(wr, queues),
        }
    }
}

/// How a SCSI Response went, decided under `back_lock` and acted on after it.
enum Response {
    /// Handed to libiscsi (which completed the command).
    Delivered(Result<(), Refused>),
    /// Kept until the command's region is invalidated.
    Held,
    /// The connection must fail.
    Failed(&'static str),
}

impl ConnShared {
    fn received(&self, mut wr: KBox<WorkRequest<Work>>, queues: &Queues) {
        let completion = *wr.completion();
        if completion.status == WcStatus::WrFlushError {
            // Flushed while not stopping: the QP went to error (the peer disconnected).
            return self.lost("receives flushed");
        }
        if completion.status != WcStatus::Success {
            return self.fail("a receive failed");
        }
        let len = (completion.byte_len as usize).min(RX_LEN);
        if let Some(buffer) = wr.buffer_mut() {
            let _ = buffer.with_bytes_mut(0, len, |bytes| {
                self.conn.with(|conn| {
                    self.received_pdu(conn, bytes, completion.invalidated_rkey, queues)
                })
            });
        }
        if let Err(rejected) = queues.post_recv(wr, 0, RX_LEN) {
            if !self.stopping.load(Acquire) {
                pr_err!("{}: reposting a receive failed: {:?}\n", self.device, rejected.error);
            }
        }
    }

    fn received_pdu(
        &self,
        conn: &Conn<'_>,
        bytes: &mut [u8],
        invalidated_rkey: Option<u32>,
        queues: &Queues,
    ) {
        let (op, itt, data_offset, data_len) = match wire::parse(bytes) {
            Ok(pdu) => (
                pdu.bhs.opcode(),
                u32::from_ne_bytes(pdu.bhs.itt.to_bytes()),
                // From the BHS: the AHS, then the data.
                BHS_LEN + pdu.ahs.len(),
                pdu.data.len(),
            ),
            Err(_) => return self.fail("malformed PDU from the target"),
        };
        // The PDU from its BHS to the end of its data (without padding).
        let Some(pdu) = bytes.get_mut(ISER_HEADER_LEN..ISER_HEADER_LEN + data_offset + data_len)
        else {
            return self.fail("malformed PDU from the target");
        };
        if op != opcode::SCSI_CMD_RSP {
            if invalidated_rkey.is_some() {
                return self.fail("remote invalidation with a PDU that is not a SCSI Response");
            }
            return self.delivered(conn, conn.complete_pdu(pdu, data_offset));
        }
        // The command's lookup and its completion under one hold of `back_lock`, so the
        // task cannot end in between.
        let response = conn.back_locked(|back| {
            self.response(back, pdu, data_offset, itt, invalidated_rkey, queues)
        });
        match response {
            Response::Delivered(result) => self.delivered(conn, result),
            Response::Held => {}
            Response::Failed(why) => self.fail(why),
        }
    }

    /// A SCSI Response: completes its command once no peer can reach the command's
    /// pages, or holds it until then.
    fn response(
        &self,
        back: &BackLocked<'_>,
        pdu: &mut [u8],
        data_offset: usize,
        itt: u32,
        invalidated_rkey: Option<u32>,
        queues: &Queues,
    ) -> Response {
        let Some(index) = back.task_index(itt) else {
            // libiscsi knows no such command; it says so itself.
            return Response::Delivered(back.complete_pdu(pdu, data_offset));
        };
        {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(index) else {
                return Response::Failed("response for a task without a slot");
            };
            if let Some(rkey) = invalidated_rkey {
                if slot.key != Some(rkey) {
                    return Response::Failed("the target invalidated a key that is not the command's");
                }
                match slot.region.as_mut() {
                    // The region is here: it takes note itself.
                    Some(region) => {
                        region.invalidated_by(rkey);
                        slot.key = None;
                    }
                    // Its REG_MR completion comes later (rxe completes local work late).
                    None => slot.remotely_invalidated = true,
                }
                self.remote_invalidations.add(1, Relaxed);
            }
            if !slot.settle(queues, &self.local_invalidations) {
                if slot.hold(pdu).is_err() {
                    return Response::Failed("SCSI Response too long to hold");
                }
                return Response::Held;
            }
        }
        // Completing the command runs its cleanup, which takes the slots' lock.
        Response::Delivered(back.complete_pdu(pdu, data_offset))
    }

    fn sent(&self, mut wr: KBox<WorkRequest<Work>>) {
        let completion = *wr.completion();
        let put_task = wr.data_mut().put_task.take();
        let slot = wr.data().slot;
        if let Some(slot) = self.slots.lock().get_mut(slot) {
            slot.send = Some(wr);
        }
        // The task may go now (a PDU no response answers), sent or not.
        drop(put_task);
        if completion.status != WcStatus::Success {
            self.fail_completion("a send failed", completion.status);
        }
    }

    /// A WR of the Data-Out pool is back: from a Data-Out PDU, or from a management PDU
    /// that borrowed it (`send_control`), which may hold its task.
    fn data_out_sent(&self, mut wr: KBox<WorkRequest<Work>>) {
        let status = wr.completion().status;
        let put_task = wr.data_mut().put_task.take();
        // Room for every Data-Out WR was reserved at connect.
        if let Err(wr) = push_within_capacity(&mut self.data_out.lock(), wr) {
            drop(wr);
        }
        drop(put_task);
        if status != WcStatus::Success {
            self.fail_completion("a Data-Out send failed", status);
        }
    }

    /// A REG_MR or LOCAL_INV gave its region back.
    fn region_back(&self, mut wr: KBox<WorkRequest<Work>>, queues: &Queues) {
        let completion = *wr.completion();
        let region = wr.take_sg_region();
        let (index, kind) = (wr.data().slot, wr.data().kind);
        let ready = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(index) else {
                return;
            };
            slot.region = region;
            if kind == Kind::Reg {
                slot.reg = Some(wr);
                if core::mem::take(&mut slot.remotely_invalidated) {
                    if let (Some(region), Some(key)) = (slot.region.as_mut(), slot.key.take()) {
                        region.invalidated_by(key);
                    }
                }
            } else {
                slot.inv = Some(wr);
                slot.key = None;
            }
            if completion.status != WcStatus::Success {
                // The QP is in error; a task that is gone needs its pages back now (the
                // region is deregistered with the connection).
                if let (Some(ended), Some(region)) = (slot.task_gone.take(), slot.region.as_mut()) {
                    drop(ended.release_pages(region));
                }
                None
            } else if slot.held.is_some() {
                slot.settle(queues, &self.local_invalidations)
                    .then(|| slot.take_held())
                    .flatten()
            } else {
                // No response waits. An invalid key's pages go back now; a task that
                // ended while its region was with the device gets its LOCAL_INV now.
                if slot.task_gone.is_some() {
                    slot.settle(queues, &self.local_invalidations);
                } else if let Some(region) = slot.region.as_mut() {
                    if !region.is_valid() {
                        drop(region.unmap());
                    }
                }
                None
            }
        };
        if completion.status != WcStatus::Success {
            self.fail("a memory registration or invalidation failed");
            return;
        }
        if let Some(mut ready) = ready {
            self.conn.with(|conn| {
                if let Some(pdu) = ready.pdu.0.get_mut(..ready.len) {
                    self.delivered(conn, conn.complete_pdu(pdu, BHS_LEN));
                }
            });
        }
    }
}

/// A connection: what `ep->dd_data` points to (and `iscsi_conn->dd_data` while bound).
struct Endpoint {
    shared: Arc<ConnShared>,
    /// Dropped first (it drains and destroys the QP), before the slots are freed.
    cm: Option<CmId>,
    /// The target's address, as iscsid reads it back.
    dst: SocketAddrV4,
    /// 0 connecting, 1 established, 2 failed.
    state: Atomic<u32>,
}

const CONNECTING: u32 = 0;
const ESTABLISHED: u32 = 1;
const FAILED: u32 = 2;

impl Endpoint {
    /// Resolves `dst`, creates the QP and its resources, and starts connecting.
    fn connect(dst: SocketAddrV4) -> Result<KBox<Self>> {
        let mut cm = CmId::new_rc()?;
        cm.resolve_addr(dst, RESOLVE_TIMEOUT)?;
        match cm.next_event(RESOLVE_TIMEOUT)? {
            CmEvent::AddrResolved => {}
            _ => return Err(errno(kernel::bindings::EHOSTUNREACH)),
        }
        cm.resolve_route(RESOLVE_TIMEOUT)?;
        match cm.next_event(RESOLVE_TIMEOUT)? {
            CmEvent::RouteResolved => {}
            _ => return Err(errno(kernel::bindings::ENETUNREACH)),
        }
        // A reference of our own: `cm` is mutated below.
        let device = cm.device().ok_or(ENODEV)?.to_ref()?;
        let device = &*device;
        let shared = ConnShared::new(device)?;
        let pd = ProtectionDomain::new(device)?;
        let caps = QpCaps {
            max_send_wr: u32::from(TASKS_MAX) * SEND_WRS_PER_TASK + DATA_OUT_WRS as u32,
            max_recv_wr: u32::from(TASKS_MAX) + RX_MISC,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let cq = CompletionQueue::new(
            device,
            caps.max_send_wr + caps.max_recv_wr,
            PollContext::Softirq,
        )?;
        let responder_resources = u8::try_from(device.caps().max_qp_rd_atom).unwrap_or(u8::MAX);
        let mut slots = KVec::with_capacity(usize::from(TASKS_MAX), GFP_KERNEL)?;
        for index in 0..usize::from(TASKS_MAX) {
            let work = |kind| Work {
                conn: shared.clone(),
                kind,
                slot: index,
                put_task: None,
            };
            slots.push(
                Slot {
                    send: Some(WorkRequest::with_buffer(
                        DmaBuffer::new(device, TX_LEN)?,
                        work(Kind::Send),
                    )?),
                    reg: Some(WorkRequest::new(work(Kind::Reg))?),
                    inv: Some(WorkRequest::new(work(Kind::Inv))?),
                    region: Some(SgRegion::new(&pd, REGION_PAGES)?),
                    held: None,
                    held_bytes: HeldPdu([0; HELD_LEN]),
                    key: None,
                    remotely_invalidated: false,
                    task_gone: None,
                },
                GFP_KERNEL,
            )?;
        }
        let mut data_out = KVec::with_capacity(DATA_OUT_WRS, GFP_KERNEL)?;
        for _ in 0..DATA_OUT_WRS {
            data_out.push(
                WorkRequest::with_buffer(
                    DmaBuffer::new(device, TX_LEN)?,
                    Work {
                        conn: shared.clone(),
                        kind: Kind::DataOut,
                        slot: 0,
                        put_task: None,
                    },
                )?,
                GFP_KERNEL,
            )?;
        }
        cm.create_qp(&pd, &cq, &cq, &caps)?;
        let endpoint = KBox::new(
            Self {
                shared: shared.clone(),
                cm: Some(cm),
                dst,
                state: Atomic::new(CONNECTING),
            },
            GFP_KERNEL,
        )?;
        // From here on, dropping `endpoint` tears everything down in order, the WRs'
        // references to `shared` included (until here they were only local).
        *shared.slots.lock() = slots;
        *shared.data_out.lock() = data_out;
        let queues = endpoint.queues().ok_or(EINVAL)?;
        for _ in 0..caps.max_recv_wr {
            let wr = WorkRequest::with_buffer(
                DmaBuffer::new(device, RX_LEN)?,
                Work {
                    conn: shared.clone(),
                    kind: Kind::Recv,
                    slot: 0,
                    put_task: None,
                },
            )?;
            queues.post_recv(wr, 0, RX_LEN).map_err(|rejected| rejected.error)?;
        }
        let private = IserCmHeader {
            flags: IserCmHeader::ZBVA_NOT_SUPPORTED,
            rsvd: [0; 3],
        };
        let cm = endpoint.cm.as_ref().ok_or(EINVAL)?;
        cm.watch(shared.clone());
        cm.connect(&ConnParam {
            private_data: private.as_bytes(),
            responder_resources,
            initiator_depth: 1,
            retry_count: 7,
            rnr_retry_count: 6,
        })?;
        Ok(endpoint)
    }

    fn queues(&self) -> Option<&Queues> {
        Some(self.cm.as_ref()?.qp()?)
    }

    /// Waits up to `timeout` for the connection: 1 up, 0 not yet, negative failed.
    fn wait_established(&self, timeout: Duration) -> Connecting {
        match self.state.load(Acquire) {
            ESTABLISHED => return Connecting::Connected,
            FAILED => return Connecting::Failed,
            _ => {}
        }
        let Some(cm) = self.cm.as_ref() else {
            return Connecting::Failed;
        };
        match cm.next_event(timeout) {
            Ok(CmEvent::Established { .. }) => {
                self.state.store(ESTABLISHED, Release);
                let (ip, port) = ipv4(&self.dst);
                pr_info!(
                    "{}: connected to {}.{}.{}.{}:{}\n",
                    self.shared.device,
                    ip[0],
                    ip[1],
                    ip[2],
                    ip[3],
                    port
                );
                Connecting::Connected
            }
            Err(error) if error == timed_out() => Connecting::NotYet,
            Ok(CmEvent::Rejected { reason, .. }) => {
                pr_err!("{}: the target rejected the connection ({})\n", self.shared.device, reason);
                self.state.store(FAILED, Release);
                Connecting::Failed
            }
            _ => {
                let (ip, port) = ipv4(&self.dst);
                pr_err!(
                    "{}: connecting to {}.{}.{}.{}:{} failed\n",
                    self.shared.device,
                    ip[0],
                    ip[1],
                    ip[2],
                    ip[3],
                    port
                );
                self.state.store(FAILED, Release);
                Connecting::Failed
            }
        }
    }

    /// Moves the QP to error and waits until every WR came back (flushed): after this no
    /// completion handler of the connection runs.
    fn flush(&self) {
        self.shared.stopping.store(true, Release);
        let Some(cm) = self.cm.as_ref() else {
            return;
        };
        if let Some(qp) = cm.qp() {
            let _ = qp.modify_to_error();
        }
        let _ = cm.disconnect();
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(1);
        while self.queues().is_some_and(|queues| queues.outstanding() > 0) {
            if waited >= FLUSH_TIMEOUT {
                pr_err!("{}: WRs did not flush in {:?}\n", self.shared.device, FLUSH_TIMEOUT);
                return;
            }
            sleep(step);
            waited += step;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Release);
        if self.state.load(Acquire) == ESTABLISHED {
            let (ip, port) = ipv4(&self.dst);
            pr_info!(
                "{}: disconnected from {}.{}.{}.{}:{}: {} commands registered, {} keys invalidated by the target, {} by LOCAL_INV, {} unsolicited Data-Out PDUs, {} management PDUs in a pool WR\n",
                self.shared.device,
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                port,
                self.shared.registered.load(Relaxed),
                self.shared.remote_invalidations.load(Relaxed),
                self.shared.local_invalidations.load(Relaxed),
                self.shared.data_outs.load(Relaxed),
                self.shared.borrowed_sends.load(Relaxed)
            );
        }
        // Drains and destroys the QP: every WR comes back to its handler first.
        drop(self.cm.take());
        // The slots' WRs hold the shared state: break the cycle, and free the regions
        // (which may sleep) outside the lock.
        // The locks are also taken in softirq context.
        let slots = iscsi::with_bh_disabled(|| {
            let slots = core::mem::take(&mut *self.shared.slots.lock());
            let data_out = core::mem::take(&mut *self.shared.data_out.lock());
            (slots, data_out)
        });
        drop(slots);
    }
}

/// The octets and port of an address, for dmesg (the print macros of some kernels take
/// no `core::fmt` types).
fn ipv4(addr: &SocketAddrV4) -> ([u8; 4], u16) {
    (addr.ip().octets(), addr.port())
}

/// The integer a parameter's text starts with (iscsid writes decimal).
fn parse_param(text: &[u8]) -> Option<u32> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit());
    let mut value: u32 = 0;
    let mut any = false;
    for digit in digits {
        value = value.checked_mul(10)?.checked_add(u32::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

// The transport's callbacks, through the binding (`iscsi`), as libiscsi and the iSCSI
// class make them.
impl Transport for Endpoint {
    const TASKS_MAX: u16 = TASKS_MAX;
    /// Fixed by the receive buffers, as in ib_iser.
    const MAX_RECV_DLENGTH: u32 = RX_DATA_LEN as u32;
    /// Ours carry at most what the send buffers hold, immediate data included.
    const MAX_XMIT_DLENGTH: u32 = TX_DATA_LEN as u32;

    fn connect(dst: SocketAddrV4) -> Result<KBox<Self>> {
        Endpoint::connect(dst).inspect_err(|error| {
            let (ip, port) = ipv4(&dst);
            pr_err!(
                "connecting to {}.{}.{}.{}:{} failed: {:?}\n",
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                port,
                error
            );
        })
    }

    fn poll(&self, timeout: Duration) -> Connecting {
        self.wait_established(timeout)
    }

    fn destination(&self) -> SocketAddrV4 {
        self.dst
    }

    fn device(&self) -> Option<&Device> {
        self.cm.as_ref()?.device()
    }

    fn conn_cell(&self) -> &ConnCell {
        &self.shared.conn
    }

    fn bindable(&self) -> bool {
        self.state.load(Acquire) == ESTABLISHED
            && !self.shared.failed.load(Full)
            && !self.shared.stopping.load(Full)
    }

    /// Flushes the QP: no completion handler runs after, so none tells libiscsi of a
    /// connection being stopped; task cleanup still finds the endpoint bound.
    fn quiesce(&self) {
        self.flush();
    }

    /// iSER has no digests and no markers; the rest is libiscsi's.
    fn set_param(param: Param, value: &[u8]) -> Result<ParamUse> {
        if param == Param::MAX_RECV_DLENGTH {
            // Fixed by the receive buffers (`MAX_RECV_DLENGTH`), as in ib_iser.
            return Ok(ParamUse::Fixed);
        }
        let must_be_off = [
            Param::HEADER_DIGEST,
            Param::DATA_DIGEST,
            Param::IF_MARKER,
            Param::OF_MARKER,
        ]
        .contains(&param);
        if !must_be_off {
            return Ok(ParamUse::Libiscsi);
        }
        if parse_param(value) != Some(0) {
            pr_err!(
                "digests and markers must be negotiated off for iSER (parameter {})\n",
                param.raw()
            );
            return Err(errno(kernel::bindings::EPROTO));
        }
        Ok(ParamUse::Fixed)
    }

    /// The negotiated first burst must fit the Data-Out pool.
    fn start(negotiated: &Negotiated) -> Result {
        if negotiated.initial_r2t {
            return Ok(());
        }
        let max_xmit = negotiated.max_xmit_dlength;
        let per_command = negotiated.first_burst.div_ceil(max_xmit.max(1));
        if per_command > DATA_OUT_WRS {
            pr_err!(
                "a first burst of {} bytes takes {} Data-Out PDUs of {}, more than the {} this transport keeps\n",
                negotiated.first_burst,
                per_command,
                max_xmit,
                DATA_OUT_WRS
            );
            return Err(EINVAL);
        }
        Ok(())
    }

    /// Sends the task's PDU: a SCSI command with its registration, or a management PDU.
    /// Under libiscsi's `frwd_lock`: no sleeping, and nothing half-sent on an error.
    fn xmit(&self, mut task: XmitTask<'_>) -> Result {
        let queues = self.queues().ok_or(ENODEV)?;
        if self.shared.stopping.load(Acquire) {
            return Err(ENODEV);
        }
        let index = task.index();
        let bhs = *task.bhs();
        match task.command() {
            Some(mut command) => self.send_command(queues, &mut command, index, &bhs),
            None => {
                let hold = task.hold_until_sent();
                self.send_control(queues, index, &bhs, task.data(), hold)
            }
        }
    }

    /// A task ends (completed, aborted or failed), under `back_lock`. A region still
    /// valid is invalidated; its pages are unmapped once that completes.
    fn cleanup(&self, task: CleanupTask<'_>) {
        if !task.is_command() {
            return;
        }
        let Some(queues) = self.queues() else {
            return;
        };
        let mut slots = self.shared.slots.lock();
        let Some(slot) = slots.get_mut(task.index()) else {
            return;
        };
        slot.held = None;
        match slot.region.as_mut() {
            Some(region) if region.is_valid() => {
                // The command ends now and its pages go back to the SCSI layer when this
                // returns, so they are unmapped now; the key is invalidated after
                // (settle). The task's end is what allows it (`TaskEnded`).
                drop(task.ended().release_pages(region));
                slot.settle(queues, &self.shared.local_invalidations);
            }
            Some(region) => drop(region.unmap()),
            // With the device (REG_MR or LOCAL_INV): settled when it comes back.
            None => slot.task_gone = Some(task.ended()),
        }
    }
}

impl Endpoint {
    /// Sends a management PDU: the iSER header, `bhs` and `data`.
    fn send_control(
        &self,
        queues: &Queues,
        index: usize,
        bhs: &[u8; BHS_LEN],
        data: &[u8],
        put_task: Option<TaskRef>,
    ) -> Result {
        if data.len() > TX_DATA_LEN {
            pr_err!("{}: a {} byte PDU data segment is too long\n", self.shared.device, data.len());
            return Err(errno(kernel::bindings::EMSGSIZE));
        }
        let own = self.shared.slots.lock().get_mut(index).ok_or(EINVAL)?.send.take();
        // libiscsi reuses a task once its response is in, which can come before the
        // completion of the task's previous SEND is handled: the login task, stage after
        // stage, with iscsid answering at once. Such a PDU goes in an idle WR of the
        // Data-Out pool (xmit runs under the session's lock, so no command is counting
        // on the pool meanwhile), which its completion gives back to the pool.
        let mut send = match own {
            Some(send) => send,
            None => {
                let send = remove(&mut self.shared.data_out.lock(), 0).ok_or(EAGAIN)?;
                self.shared.borrowed_sends.add(1, Relaxed);
                send
            }
        };
        let header = IserHeader::control(None, None);
        let len = HEADERS_LEN + data.len();
        let filled = send.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(0, len, |bytes| {
                let (iser, rest) = bytes.split_at_mut(ISER_HEADER_LEN);
                iser.copy_from_slice(header.as_bytes());
                let (bhs_out, data_out) = rest.split_at_mut(BHS_LEN);
                bhs_out.copy_from_slice(bhs);
                data_out.copy_from_slice(data);
            })
        });
        send.data_mut().put_task = put_task;
        if let Err(error) = filled {
            self.shared.give_back(send);
            return Err(error);
        }
        queues.post_send(send, SendOp::Send, 0, len).map_err(|rejected| {
            self.shared.give_back(rejected.wr);
            rejected.error
        })
    }

    /// Sends a SCSI command: registers its data for the target's RDMA (unless all of it
    /// goes as immediate data), then the SEND with the STag and any immediate data.
    fn send_command(
        &self,
        queues: &Queues,
        command: &mut Command<'_>,
        index: usize,
        bhs: &[u8; BHS_LEN],
    ) -> Result {
        let flags = wire::Bhs::ref_from_bytes(bhs)
            .map(|bhs| bhs.flags)
            .map_err(|_| EINVAL)?;
        // libiscsi counted the immediate data and, for a write, the unsolicited Data-Out
        // after it.
        let shape = CommandShape {
            read: flags & ScsiCommand::FLAG_READ != 0,
            write: flags & ScsiCommand::FLAG_WRITE != 0,
            buffer_len: command.buffer_len(),
            immediate: command.immediate(),
            unsolicited: command.unsolicited(),
            max_data_segment: command.max_data_segment(),
            send_capacity: TX_DATA_LEN,
        };
        let plan = CommandPlan::new(&shape).map_err(|error| {
            pr_err!(
                "{}: cannot send a command of {} bytes ({} immediate, {} unsolicited): {}\n",
                self.shared.device,
                shape.buffer_len,
                shape.immediate,
                shape.unsolicited,
                match error {
                    PlanError::Bidirectional => "bidirectional commands are not supported",
                    PlanError::ImmediateTooLong => "immediate data too long",
                    PlanError::UnsolicitedOutOfRange => "unsolicited data out of range",
                }
            );
            EINVAL
        })?;
        let imm = plan.immediate;
        // Every Data-Out WR the command needs must be idle now: once its SEND is posted,
        // the command cannot be handed back to libiscsi (xmit runs under the session's
        // lock, so nothing else takes from the pool meanwhile).
        if plan.data_out_pdus > 0 && self.shared.data_out.lock().len() < plan.data_out_pdus {
            return Err(EAGAIN);
        }
        let rdma = plan.rdma.is_some();
        // Everything that can fail comes before the REG_MR post: after it the command's
        // region is with the device, and after the SEND the command is the target's.
        let (mut send, taken) = {
            let mut slots = self.shared.slots.lock();
            let slot = slots.get_mut(index).ok_or(EINVAL)?;
            if slot.send.is_none()
                || slot.reg.is_none()
                || slot.inv.is_none()
                || slot.region.is_none()
            {
                // The slot's last command is not settled yet (its WRs or region are with
                // the device): libiscsi requeues this one.
                return Err(EAGAIN);
            }
            slot.held = None;
            slot.key = None;
            slot.remotely_invalidated = false;
            slot.task_gone = None;
            let send = slot.send.take().ok_or(EAGAIN)?;
            let taken = if rdma {
                slot.region.take().zip(slot.reg.take())
            } else {
                None
            };
            (send, taken)
        };
        let len = HEADERS_LEN + imm;
        let filled = send.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(ISER_HEADER_LEN, BHS_LEN + imm, |bytes| {
                let (bhs_out, data_out) = bytes.split_at_mut(BHS_LEN);
                bhs_out.copy_from_slice(bhs);
                if data_out.is_empty() {
                    return imm;
                }
                command.copy_data(0, data_out)
            })
        });
        let mut stags = (None, None);
        let registered = match (filled, taken) {
            (Ok(copied), taken) if copied == imm => match taken {
                Some((region, reg)) => self.register(queues, &plan, region, reg, index, command),
                None => Ok(None),
            },
            (_, taken) => {
                if let Some((region, reg)) = taken {
                    self.shared.put_region(index, region, reg);
                }
                Err(EIO)
            }
        };
        match registered {
            Ok(Some(pair)) => stags = pair,
            Ok(None) => {}
            Err(error) => {
                self.shared.put_send(index, send);
                return Err(error);
            }
        }
        let header = IserHeader::control(stags.0, stags.1);
        let written = send.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(0, ISER_HEADER_LEN, |iser| iser.copy_from_slice(header.as_bytes()))
        });
        // From here on the command's pages are registered: handing the command back to
        // libiscsi would have it mapped again before this mapping ends. A failure here
        // (the QP in error, so the connection is failing) leaves the command to the
        // connection's recovery, which fails it after the endpoint is torn down.
        if written.is_err() {
            self.shared.put_send(index, send);
            pr_err!("{}: a command's SEND was not built\n", self.shared.device);
            return Ok(());
        }
        if let Err(rejected) = queues.post_send(send, SendOp::Send, 0, len) {
            self.shared.put_send(index, rejected.wr);
            if !self.shared.stopping.load(Acquire) {
                pr_err!("{}: a command's SEND was refused: {:?}\n", self.shared.device, rejected.error);
            }
            return Ok(());
        }
        // libiscsi prepares each Data-Out PDU's header, as many as the plan counted. The
        // command is the target's now: an error here must not make libiscsi send it again
        // (under a CmdSN it reuses). A post fails only while the QP drains, that is while
        // the connection is stopping and its tasks are failed anyway.
        for _ in 0..plan.data_out_pdus {
            if let Err(error) = self.send_data_out(queues, command) {
                pr_err!(
                    "{}: a Data-Out after its command was not sent: {:?}\n",
                    self.shared.device,
                    error
                );
                break;
            }
        }
        Ok(())
    }

    /// Maps the command's pages into the slot's region and posts its REG_MR; the STags
    /// for the iSER header. On failure the region and WR are back in the slot.
    fn register(
        &self,
        queues: &Queues,
        plan: &CommandPlan,
        mut region: SgRegion,
        reg: KBox<WorkRequest<Work>>,
        index: usize,
        command: &Command<'_>,
    ) -> Result<Option<(Option<Stag>, Option<Stag>)>> {
        let (direction, access) = match plan.rdma {
            Some(TargetRdma::Writes) => (DmaDirection::FromDevice, RemoteAccess::WRITE),
            _ => (DmaDirection::ToDevice, RemoteAccess::READ),
        };
        // The command completes only once the region gave the pages back (or, for a
        // command that ends early, once `cleanup` took them).
        let pages = command.map_pages(queues.device(), direction);
        if let Err(error) = pages.and_then(|pages| region.map(pages).map_err(|(error, _)| error)) {
            self.shared.put_region(index, region, reg);
            return Err(error);
        }
        let va = region.iova();
        match queues.post_reg_sg(reg, region, access) {
            Ok(key) => {
                self.shared.registered.add(1, Relaxed);
                if let Some(slot) = self.shared.slots.lock().get_mut(index) {
                    slot.key = Some(key);
                }
                Ok(Some(plan.stags(key, va)))
            }
            Err(mut rejected) => {
                // Never posted: the key is not valid, the pages go back.
                let mut region = rejected.wr.take_sg_region();
                if let Some(region) = region.as_mut() {
                    drop(region.unmap());
                }
                match region {
                    Some(region) => self.shared.put_region(index, region, rejected.wr),
                    None => drop(rejected.wr),
                }
                Err(rejected.error)
            }
        }
    }

    /// Sends the command's next unsolicited Data-Out PDU, its data copied from the
    /// command's pages.
    fn send_data_out(&self, queues: &Queues, command: &mut Command<'_>) -> Result {
        // Dropped unsent, it gives its DataSN back for a retry, as ib_iser does.
        let data_out = command.next_data_out();
        let (offset, len) = match wire::DataOut::ref_from_bytes(data_out.bhs()) {
            Ok(view) => (view.offset.get() as usize, view.dlength.get()),
            Err(_) => return Err(EINVAL),
        };
        if len > TX_DATA_LEN {
            pr_err!("{}: a {} byte Data-Out does not fit\n", self.shared.device, len);
            return Err(errno(kernel::bindings::EMSGSIZE));
        }
        // `send_command` made sure of enough idle WRs before it sent the command.
        let Some(mut wr) = remove(&mut self.shared.data_out.lock(), 0) else {
            return Err(ENOMEM);
        };
        let header = IserHeader::control(None, None);
        let total = HEADERS_LEN + len;
        let filled = wr.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(0, total, |bytes| {
                let (iser, rest) = bytes.split_at_mut(ISER_HEADER_LEN);
                iser.copy_from_slice(header.as_bytes());
                let (bhs_out, data) = rest.split_at_mut(BHS_LEN);
                bhs_out.copy_from_slice(data_out.bhs());
                data_out.copy_data(offset, data)
            })
        });
        if !matches!(filled, Ok(copied) if copied == len) {
            if let Err(wr) = push_within_capacity(&mut self.shared.data_out.lock(), wr) {
                drop(wr);
            }
            return Err(EIO);
        }
        if let Err(rejected) = queues.post_send(wr, SendOp::Send, 0, total) {
            if let Err(wr) = push_within_capacity(&mut self.shared.data_out.lock(), rejected.wr) {
                drop(wr);
            }
            return Err(rejected.error);
        }
        data_out.sent();
        self.shared.data_outs.add(1, Relaxed);
        Ok(())
    }
}

impl ConnShared {
    fn put_region(&self, index: usize, region: SgRegion, reg: KBox<WorkRequest<Work>>) {
        if let Some(slot) = self.slots.lock().get_mut(index) {
            slot.region = Some(region);
            slot.reg = Some(reg);
        }
    }

    fn put_send(&self, index: usize, send: KBox<WorkRequest<Work>>) {
        if let Some(slot) = self.slots.lock().get_mut(index) {
            slot.send = Some(send);
        }
    }

    /// Gives an unposted SEND WR back where it came from: its slot, or the Data-Out pool.
    fn give_back(&self, mut send: KBox<WorkRequest<Work>>) {
        // Not sent: the task it held may go, once the WR is back (outside the locks).
        let put_task = send.data_mut().put_task.take();
        match send.data().kind {
            Kind::DataOut => {
                // Room for every Data-Out WR was reserved at connect.
                if let Err(wr) = push_within_capacity(&mut self.data_out.lock(), send) {
                    drop(wr);
                }
            }
            _ => self.put_send(send.data().slot, send),
        }
        drop(put_task);
    }
}
