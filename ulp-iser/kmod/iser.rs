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

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use kernel::error::to_result;
use kernel::ffi::{c_char, c_int};
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::{Arc, SpinLock};
use rdma_core::{
    cm::{CmEvent, CmId, CmWatcher, ConnParam, ConnectionLoss},
    cq::{CompletionQueue, PollContext},
    device::{Device, DeviceName},
    dma::{DmaBuffer, DmaDirection, SgMapping},
    kernel_api::{
        atomic::{Acquire, Atomic, Full, Relaxed, Release},
        errno, push_within_capacity, remove, sleep, timed_out,
    },
    mr::SgRegion,
    pd::ProtectionDomain,
    qp::{QpCaps, Queues},
    sys,
    verbs::{RemoteAccess, SendOp, WcStatus},
    wr::{CompletionHandler, WorkRequest},
};
use ulp_iser::datamover::{CommandPlan, CommandShape, PlanError, TargetRdma};
use ulp_iser::wire::{self, opcode, IserCmHeader, IserHeader, ScsiCommand, Stag, BHS_LEN, ISER_HEADER_LEN};
use zerocopy::{FromBytes, IntoBytes};

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
/// `ISCSI_ERR_CONN_FAILED`, `ISCSI_ERR_NO_SCSI_CMD`: what libiscsi is told.
const CONN_FAILED: u32 = sys::iscsi_err_ISCSI_ERR_CONN_FAILED;
const NO_SCSI_CMD: i32 = sys::iscsi_err_ISCSI_ERR_NO_SCSI_CMD as i32;
/// The tag of a PDU no response answers (`RESERVED_ITT`).
const RESERVED_ITT: u32 = 0xffff_ffff;
/// `AF_INET`.
const AF_INET: u16 = 2;

struct IserModule;

impl kernel::Module for IserModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: registers the transport table of transport.c, once per load.
        to_result(unsafe { sys::tilde_iser_register() }).inspect_err(|_| {
            pr_err!("cannot register the iSCSI transport \"iser\" (is ib_iser loaded?)\n");
        })?;
        pr_info!("iSCSI transport \"iser\" registered\n");
        Ok(Self)
    }
}

impl Drop for IserModule {
    fn drop(&mut self) {
        // SAFETY: registered in `init`; the iSCSI class refuses the unload while a
        // session of the transport exists (it holds the module).
        unsafe { sys::tilde_iser_unregister() };
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
    /// For a sent PDU no response answers: the `iscsi_task` to put once it is sent.
    put_task: usize,
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
    task_gone: bool,
}

/// Bytes of a held PDU, aligned as libiscsi reads a `struct iscsi_hdr`.
#[repr(C, align(8))]
struct HeldPdu([u8; HELD_LEN]);

/// What a connection's completion handlers and libiscsi's callbacks share.
#[pin_data]
struct ConnShared {
    device: DeviceName,
    /// The bound `iscsi_conn`, or null: set by bind, cleared by `Endpoint::unbind` once
    /// the QP is flushed (so no handler that tells libiscsi sees a stale one).
    iscsi_conn: Atomic<*mut sys::iscsi_conn>,
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
    #[pin]
    slots: SpinLock<KVec<Slot>>,
    /// Idle Data-Out WRs (capacity `DATA_OUT_WRS`, so putting one back never allocates).
    #[pin]
    data_out: SpinLock<KVec<KBox<WorkRequest<Work>>>>,
}

// SAFETY: the `iscsi_conn` pointer is only passed back to libiscsi, which locks; the rest
// is `Send`/`Sync` or behind the lock.
unsafe impl Send for ConnShared {}
// SAFETY: as above.
unsafe impl Sync for ConnShared {}

/// A response ready to hand to libiscsi, copied out of the lock.
struct Ready {
    pdu: HeldPdu,
    len: usize,
}

impl ConnShared {
    fn new(device: &Device) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                device: device.name(),
                iscsi_conn: Atomic::new(core::ptr::null_mut()),
                stopping: Atomic::new(false),
                failed: Atomic::new(false),
                registered: Atomic::new(0),
                remote_invalidations: Atomic::new(0),
                local_invalidations: Atomic::new(0),
                data_outs: Atomic::new(0),
                borrowed_sends: Atomic::new(0),
                slots <- new_spinlock!(KVec::new()),
                data_out <- new_spinlock!(KVec::new()),
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
        let conn = self.iscsi_conn.load(Acquire);
        if !conn.is_null() {
            // SAFETY: a bound connection stays valid until stop clears it, after which
            // no handler runs (stop flushes the QP first).
            unsafe { sys::iscsi_conn_failure(conn, CONN_FAILED) };
        }
    }

    /// Hands a received PDU (`pdu`: BHS, AHS, data) to libiscsi.
    fn deliver(&self, conn: *mut sys::iscsi_conn, pdu: *mut u8, data_offset: usize, data_len: usize) {
        let Ok(len) = c_int::try_from(data_len) else {
            return self.fail("PDU too long");
        };
        // SAFETY: `conn` is the bound connection (valid, see `fail`); `pdu` points to a
        // complete PDU of `data_offset + data_len` bytes, aligned for `iscsi_hdr`, that
        // libiscsi only reads during the call.
        let rc = unsafe {
            sys::iscsi_complete_pdu(
                conn,
                pdu.cast(),
                pdu.add(data_offset).cast::<c_char>(),
                len,
            )
        };
        if rc != 0 && rc != NO_SCSI_CMD {
            pr_err!("{}: libiscsi refused a PDU: {}\n", self.device, rc);
            // SAFETY: as above.
            unsafe { sys::iscsi_conn_failure(conn, rc as u32) };
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
        let conn = self.iscsi_conn.load(Acquire);
        let len = (completion.byte_len as usize).min(RX_LEN);
        if !conn.is_null() {
            if let Some(buffer) = wr.buffer_mut() {
                let _ = buffer.with_bytes_mut(0, len, |bytes| {
                    self.received_pdu(conn, bytes, completion.invalidated_rkey, queues)
                });
            }
        }
        if let Err(rejected) = queues.post_recv(wr, 0, RX_LEN) {
            if !self.stopping.load(Acquire) {
                pr_err!("{}: reposting a receive failed: {:?}\n", self.device, rejected.error);
            }
        }
    }

    fn received_pdu(
        &self,
        conn: *mut sys::iscsi_conn,
        bytes: &mut [u8],
        invalidated_rkey: Option<u32>,
        queues: &Queues,
    ) {
        let base = bytes.as_mut_ptr();
        let (op, itt, data_offset, data_len) = match wire::parse(bytes) {
            Ok(pdu) => (
                pdu.bhs.opcode(),
                u32::from_ne_bytes(pdu.bhs.itt.to_bytes()),
                // SAFETY: `pdu.data` lies in `bytes`, after the BHS.
                unsafe { pdu.data.as_ptr().offset_from(base) } as usize - ISER_HEADER_LEN,
                pdu.data.len(),
            ),
            Err(_) => return self.fail("malformed PDU from the target"),
        };
        // SAFETY: the BHS starts `ISER_HEADER_LEN` bytes into the message.
        let pdu = unsafe { base.add(ISER_HEADER_LEN) };
        if op != opcode::SCSI_CMD_RSP {
            if invalidated_rkey.is_some() {
                return self.fail("remote invalidation with a PDU that is not a SCSI Response");
            }
            return self.deliver(conn, pdu, data_offset, data_len);
        }
        // SAFETY: `conn` is bound (see `fail`); the lookup only reads its session's table.
        let task = unsafe { sys::iscsi_itt_to_ctask(conn, itt) };
        if task.is_null() {
            // libiscsi knows no such command; it says so itself.
            return self.deliver(conn, pdu, data_offset, data_len);
        }
        // SAFETY: a task of the session; `itt` is its index in the session's pool.
        let index = unsafe { (*task).itt } as usize;
        let now = {
            let mut slots = self.slots.lock();
            let Some(slot) = slots.get_mut(index) else {
                drop(slots);
                return self.fail("response for a task without a slot");
            };
            if let Some(rkey) = invalidated_rkey {
                if slot.key != Some(rkey) {
                    drop(slots);
                    return self.fail("the target invalidated a key that is not the command's");
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
            let now = slot.settle(queues, &self.local_invalidations);
            if !now {
                // SAFETY: the PDU's bytes are `bytes` from the BHS on.
                let whole = unsafe { core::slice::from_raw_parts(pdu, data_offset + data_len) };
                if slot.hold(whole).is_err() {
                    drop(slots);
                    return self.fail("SCSI Response too long to hold");
                }
            }
            now
        };
        if now {
            self.deliver(conn, pdu, data_offset, data_len);
        }
    }

    fn sent(&self, wr: KBox<WorkRequest<Work>>) {
        let completion = *wr.completion();
        let (slot, put_task) = (wr.data().slot, wr.data().put_task);
        if let Some(slot) = self.slots.lock().get_mut(slot) {
            slot.send = Some(wr);
        }
        if completion.status != WcStatus::Success {
            self.fail("a send failed");
            return;
        }
        if put_task != 0 {
            // SAFETY: `xmit` kept the task for this: libiscsi leaves a PDU no response
            // answers to the transport to put once sent.
            unsafe { sys::iscsi_put_task(put_task as *mut sys::iscsi_task) };
        }
    }

    /// A WR of the Data-Out pool is back: from a Data-Out PDU, or from a management PDU
    /// that borrowed it (`send_control`), which may leave its task to put.
    fn data_out_sent(&self, mut wr: KBox<WorkRequest<Work>>) {
        let failed = wr.completion().status != WcStatus::Success;
        let put_task = core::mem::take(&mut wr.data_mut().put_task);
        // Room for every Data-Out WR was reserved at connect.
        if let Err(wr) = push_within_capacity(&mut self.data_out.lock(), wr) {
            drop(wr);
        }
        if failed {
            self.fail("a Data-Out send failed");
            return;
        }
        if put_task != 0 {
            // SAFETY: as in `sent`: `xmit` kept the task for this.
            unsafe { sys::iscsi_put_task(put_task as *mut sys::iscsi_task) };
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
                if core::mem::take(&mut slot.task_gone) {
                    if let Some(region) = slot.region.as_mut() {
                        // SAFETY: the WR failed: the QP is in error, so no peer reaches
                        // the key; and the task is gone, so its pages must go back now
                        // (the region is deregistered with the connection).
                        drop(unsafe { region.release_pages() });
                    }
                }
                None
            } else if slot.held.is_some() {
                slot.settle(queues, &self.local_invalidations)
                    .then(|| slot.take_held())
                    .flatten()
            } else {
                // No response waits. An invalid key's pages go back now; a task that
                // ended while its region was with the device gets its LOCAL_INV now.
                if slot.task_gone {
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
        let conn = self.iscsi_conn.load(Acquire);
        if let (Some(mut ready), false) = (ready, conn.is_null()) {
            let data_offset = BHS_LEN;
            let data_len = ready.len.saturating_sub(BHS_LEN);
            self.deliver(conn, ready.pdu.0.as_mut_ptr(), data_offset, data_len);
        }
    }
}

/// A connection: what `ep->dd_data` points to (and `iscsi_conn->dd_data` while bound).
struct Endpoint {
    shared: Arc<ConnShared>,
    /// Dropped first (it drains and destroys the QP), before the slots are freed.
    cm: Option<CmId>,
    /// The target's address, as iscsid reads it back.
    dst: sys::sockaddr_in,
    /// 0 connecting, 1 established, 2 failed.
    state: Atomic<u32>,
}

const CONNECTING: u32 = 0;
const ESTABLISHED: u32 = 1;
const FAILED: u32 = 2;

impl Endpoint {
    /// Resolves `dst`, creates the QP and its resources, and starts connecting.
    fn connect(dst: SocketAddrV4, raw_dst: sys::sockaddr_in) -> Result<KBox<Self>> {
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
                put_task: 0,
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
                    task_gone: false,
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
                        put_task: 0,
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
                dst: raw_dst,
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
                    put_task: 0,
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
    fn poll(&self, timeout: Duration) -> c_int {
        match self.state.load(Acquire) {
            ESTABLISHED => return 1,
            FAILED => return -1,
            _ => {}
        }
        let Some(cm) = self.cm.as_ref() else {
            return -1;
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
                1
            }
            Err(error) if error == timed_out() => 0,
            Ok(CmEvent::Rejected { reason, .. }) => {
                pr_err!("{}: the target rejected the connection ({})\n", self.shared.device, reason);
                self.state.store(FAILED, Release);
                -1
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
                -1
            }
        }
    }

    /// Unbinds the `iscsi_conn` bound to this endpoint, if any, under libiscsi's locks:
    /// from here on xmit and task cleanup do not find the endpoint.
    fn unbind(&self) {
        let conn = self.shared.iscsi_conn.xchg(core::ptr::null_mut(), Full);
        if !conn.is_null() {
            // SAFETY: the connection was bound to us, and the class keeps it alive until
            // its stop (which comes before or after this, never during).
            unsafe { sys::tilde_iser_unbind(conn, core::ptr::from_ref(self).cast_mut().cast()) };
        }
    }

    /// Moves the QP to error and waits until every WR came back (flushed): after this no
    /// completion handler of the connection runs.
    fn quiesce(&self) {
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
        let slots = {
            // SAFETY: plain bottom-half disabling, paired below; the lock is also taken
            // in softirq context.
            unsafe { sys::tilde_iser_bh_disable() };
            let slots = core::mem::take(&mut *self.shared.slots.lock());
            let data_out = core::mem::take(&mut *self.shared.data_out.lock());
            // SAFETY: paired with the disable above.
            unsafe { sys::tilde_iser_bh_enable() };
            (slots, data_out)
        };
        drop(slots);
    }
}

/// The address of a `sockaddr_in`.
fn endpoint_addr(addr: &sys::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )
}

/// The octets and port of a `sockaddr_in`, for dmesg (the print macros of some kernels
/// take no `core::fmt` types).
fn ipv4(addr: &sys::sockaddr_in) -> ([u8; 4], u16) {
    let addr = endpoint_addr(addr);
    (addr.ip().octets(), addr.port())
}

/// `ERR_PTR(error)`.
fn err_ptr<T>(error: Error) -> *mut T {
    error.to_errno() as isize as *mut T
}

/// The endpoint a bound `iscsi_conn` carries, if any.
///
/// # Safety
///
/// `conn` is a valid `iscsi_conn` of this transport.
unsafe fn endpoint_of<'a>(conn: *mut sys::iscsi_conn) -> Option<&'a Endpoint> {
    // SAFETY: `dd_data` is null or the endpoint bind set; the endpoint clears it under
    // libiscsi's locks (`Endpoint::unbind`) before it is freed, whichever of stop and
    // ep_disconnect comes first, and the callers hold one of those locks or run in the
    // class's serialized process context.
    unsafe { (*conn).dd_data.cast::<Endpoint>().as_ref() }
}

/// The per-task data libiscsi allocates for us: room for the BHS it builds.
#[repr(C, align(8))]
struct TaskData {
    bhs: [u8; BHS_LEN],
}

// The transport's callbacks (see transport.c). Each runs as libiscsi or the iSCSI class
// calls it, with the pointers they pass valid for the call.

/// `create_session`: a SCSI host with one session, its limits from the endpoint.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_session_create(
    ep: *mut sys::iscsi_endpoint,
    cmds_max: u16,
    qdepth: u16,
    initial_cmdsn: u32,
) -> *mut sys::iscsi_cls_session {
    // SAFETY: a non-null `ep` is a live endpoint of ours (the class holds it).
    let Some(endpoint) = (unsafe { ep.as_ref() }).and_then(|ep| {
        // SAFETY: our endpoints' `dd_data` is the `Endpoint`.
        unsafe { ep.dd_data.cast::<Endpoint>().as_ref() }
    }) else {
        pr_err!("a session needs a connected endpoint (open-iscsi 2.0-870 or later)\n");
        return core::ptr::null_mut();
    };
    let Some(device) = endpoint.cm.as_ref().and_then(|cm| cm.device()) else {
        return core::ptr::null_mut();
    };
    // SAFETY: allocates a host of our template.
    let shost = unsafe { sys::tilde_iser_host_alloc() };
    if shost.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: the host is ours until added; the device is valid (the endpoint holds it).
    unsafe {
        (*shost).cmd_per_lun = i16::try_from(qdepth).unwrap_or(i16::MAX);
        (*shost).can_queue = cmds_max.min(TASKS_MAX).into();
        if sys::iscsi_host_add(shost, device.parent()) != 0 {
            sys::iscsi_host_free(shost);
            return core::ptr::null_mut();
        }
    }
    // SAFETY: the host was added; libiscsi sizes the session's pool from `can_queue`.
    let session = unsafe {
        sys::tilde_iser_session_setup(
            shost,
            (*shost).can_queue as u16,
            core::mem::size_of::<TaskData>() as c_int,
            initial_cmdsn,
        )
    };
    if session.is_null() {
        // SAFETY: added above and unused.
        unsafe {
            sys::iscsi_host_remove(shost, false);
            sys::iscsi_host_free(shost);
        }
    }
    session
}

/// `destroy_session`.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_session_destroy(cls_session: *mut sys::iscsi_cls_session) {
    // SAFETY: the class passes a session of ours, whose host was made by `session_create`.
    unsafe {
        let shost = sys::tilde_iscsi_session_to_shost(cls_session);
        sys::iscsi_session_teardown(cls_session);
        sys::iscsi_host_remove(shost, false);
        sys::iscsi_host_free(shost);
    }
}

/// `create_conn`.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_conn_create(
    cls_session: *mut sys::iscsi_cls_session,
    conn_idx: u32,
) -> *mut sys::iscsi_cls_conn {
    // SAFETY: the class passes a session of ours.
    let cls_conn = unsafe { sys::iscsi_conn_setup(cls_session, 0, conn_idx) };
    if !cls_conn.is_null() {
        // SAFETY: a new connection; what it can receive in one PDU is what our receive
        // buffers hold.
        unsafe {
            let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
            (*conn).max_recv_dlength = RX_DATA_LEN as u32;
        }
    }
    cls_conn
}

/// `bind_conn`: joins the connection to the endpoint iscsid connected.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_conn_bind(
    cls_session: *mut sys::iscsi_cls_session,
    cls_conn: *mut sys::iscsi_cls_conn,
    transport_eph: u64,
    is_leading: c_int,
) -> c_int {
    // SAFETY: the class passes its session and connection.
    let rc = unsafe { sys::iscsi_conn_bind(cls_session, cls_conn, is_leading) };
    if rc != 0 {
        return rc;
    }
    // SAFETY: the handle comes from user space: the class looks it up among live
    // endpoints and holds the one it returns until the put below.
    let ep = unsafe { sys::iscsi_lookup_endpoint(transport_eph) };
    if ep.is_null() {
        pr_err!("cannot bind to endpoint {:#x}\n", transport_eph);
        return EINVAL.to_errno();
    }
    // SAFETY: the endpoint is held; its `dd_data` is ours; the connection is the class's.
    let rc = unsafe {
        let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
        match (*ep).dd_data.cast::<Endpoint>().as_ref() {
            Some(endpoint)
                if endpoint.state.load(Acquire) == ESTABLISHED
                    && !endpoint.shared.failed.load(Acquire)
                    && !endpoint.shared.stopping.load(Acquire) =>
            {
                let tasks = (*(*conn).session).cmds_max;
                if tasks > i32::from(TASKS_MAX) {
                    pr_err!("a session of {} tasks is more than {}\n", tasks, TASKS_MAX);
                    EINVAL.to_errno()
                } else {
                    (*conn).dd_data = core::ptr::from_ref(endpoint).cast_mut().cast();
                    endpoint.shared.iscsi_conn.store(conn, Full);
                    // A loss reported between the check and the store found no
                    // connection to tell: undo, and let iscsid reconnect.
                    if endpoint.shared.failed.load(Full) || endpoint.shared.stopping.load(Full) {
                        endpoint.shared.iscsi_conn.store(core::ptr::null_mut(), Full);
                        (*conn).dd_data = core::ptr::null_mut();
                        pr_err!("endpoint {:#x} failed while it was bound\n", transport_eph);
                        EINVAL.to_errno()
                    } else {
                        0
                    }
                }
            }
            _ => {
                pr_err!("endpoint {:#x} is not connected\n", transport_eph);
                EINVAL.to_errno()
            }
        }
    };
    // SAFETY: the reference the lookup took.
    unsafe { sys::iscsi_put_endpoint(ep) };
    rc
}

/// `stop_conn`: flushes the QP, stops libiscsi's side, and unbinds.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_conn_stop(cls_conn: *mut sys::iscsi_cls_conn, flag: c_int) {
    // SAFETY: the class passes a connection of ours.
    let conn = unsafe { (*cls_conn).dd_data.cast::<sys::iscsi_conn>() };
    // SAFETY: as above.
    if let Some(endpoint) = unsafe { endpoint_of(conn) } {
        endpoint.quiesce();
    }
    // SAFETY: libiscsi's own stop; its task cleanup may still call `task_cleanup`,
    // which finds the endpoint bound (with its QP flushed).
    unsafe { sys::iscsi_conn_stop(cls_conn, flag) };
    // SAFETY: as above. Handlers of LOCAL_INVs the stop's cleanup posted may still run;
    // they tell libiscsi nothing once `unbind` cleared the connection.
    if let Some(endpoint) = unsafe { endpoint_of(conn) } {
        endpoint.unbind();
    }
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

/// `set_param`: iSER has no digests and no markers; the rest is libiscsi's.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_set_param(
    cls_conn: *mut sys::iscsi_cls_conn,
    param: sys::iscsi_param,
    buf: *mut c_char,
    buflen: c_int,
) -> c_int {
    let must_be_off = matches!(
        param,
        sys::iscsi_param_ISCSI_PARAM_HDRDGST_EN
            | sys::iscsi_param_ISCSI_PARAM_DATADGST_EN
            | sys::iscsi_param_ISCSI_PARAM_IFMARKER_EN
            | sys::iscsi_param_ISCSI_PARAM_OFMARKER_EN
    );
    if param == sys::iscsi_param_ISCSI_PARAM_MAX_RECV_DLENGTH {
        // Fixed by the receive buffers (`create_conn`), as in ib_iser.
        return 0;
    }
    if must_be_off {
        let len = usize::try_from(buflen).unwrap_or(0);
        // SAFETY: the class passes `buflen` readable bytes.
        let text = unsafe { core::slice::from_raw_parts(buf.cast::<u8>().cast_const(), len) };
        if parse_param(text) != Some(0) {
            pr_err!("digests and markers must be negotiated off for iSER (parameter {})\n", param);
            return errno(kernel::bindings::EPROTO).to_errno();
        }
        return 0;
    }
    // SAFETY: libiscsi's own handling of the class's arguments.
    let rc = unsafe { sys::iscsi_set_param(cls_conn, param, buf, buflen) };
    if rc == 0 && param == sys::iscsi_param_ISCSI_PARAM_MAX_XMIT_DLENGTH {
        // The target's limit; sending smaller PDUs is always allowed, and ours carry at
        // most what the send buffers hold, immediate data included.
        // SAFETY: the class's connection, being configured (not started).
        unsafe {
            let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
            (*conn).max_xmit_dlength = (*conn).max_xmit_dlength.min(TX_DATA_LEN as u32);
        }
    }
    rc
}

/// `start_conn`: checks that the negotiated first burst fits the Data-Out pool, then
/// libiscsi's start.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_conn_start(cls_conn: *mut sys::iscsi_cls_conn) -> c_int {
    // SAFETY: the class passes a bound connection of ours, configured by set_param.
    let (conn, session) = unsafe {
        let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
        (conn, (*conn).session)
    };
    // SAFETY: as above.
    let (initial_r2t, first_burst, max_xmit) = unsafe {
        (
            (*session).initial_r2t_en != 0,
            (*session).first_burst as usize,
            (*conn).max_xmit_dlength as usize,
        )
    };
    if !initial_r2t {
        let per_command = first_burst.div_ceil(max_xmit.max(1));
        if per_command > DATA_OUT_WRS {
            pr_err!(
                "a first burst of {} bytes takes {} Data-Out PDUs of {}, more than the {} this transport keeps\n",
                first_burst,
                per_command,
                max_xmit,
                DATA_OUT_WRS
            );
            return EINVAL.to_errno();
        }
    }
    // SAFETY: libiscsi's own start of the class's connection.
    unsafe { sys::iscsi_conn_start(cls_conn) }
}

/// `get_ep_param`: the target's address and port.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_get_ep_param(
    ep: *mut sys::iscsi_endpoint,
    param: sys::iscsi_param,
    buf: *mut c_char,
) -> c_int {
    if param != sys::iscsi_param_ISCSI_PARAM_CONN_PORT
        && param != sys::iscsi_param_ISCSI_PARAM_CONN_ADDRESS
    {
        return errno(kernel::bindings::ENOSYS).to_errno();
    }
    // SAFETY: the class passes a live endpoint of ours.
    let Some(endpoint) = (unsafe { (*ep).dd_data.cast::<Endpoint>().as_ref() }) else {
        return errno(kernel::bindings::ENOTCONN).to_errno();
    };
    let mut storage = sys::__kernel_sockaddr_storage::default();
    // SAFETY: a `sockaddr_in` fits the storage, which is aligned for any address.
    unsafe {
        core::ptr::from_mut(&mut storage)
            .cast::<sys::sockaddr_in>()
            .write(endpoint.dst)
    };
    // SAFETY: libiscsi formats the address into the class's page-sized `buf`.
    unsafe { sys::iscsi_conn_get_addr_param(core::ptr::from_mut(&mut storage).cast(), param, buf) }
}

/// `ep_connect`: starts an RDMA CM connection to `dst_addr` (IPv4).
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_ep_connect(
    _shost: *mut sys::Scsi_Host,
    dst_addr: *mut sys::sockaddr,
    _non_blocking: c_int,
) -> *mut sys::iscsi_endpoint {
    // SAFETY: the class passes a socket address of at least `sockaddr` size.
    if unsafe { (*dst_addr).sa_family } != AF_INET {
        pr_err!("only IPv4 targets are supported\n");
        return err_ptr(errno(kernel::bindings::EAFNOSUPPORT));
    }
    // SAFETY: an `AF_INET` address is a `sockaddr_in` (the class copied a whole
    // `sockaddr_storage`).
    let raw = unsafe { dst_addr.cast::<sys::sockaddr_in>().read_unaligned() };
    let dst = endpoint_addr(&raw);
    // SAFETY: plain module reference counting; the class holds the module during this
    // call, so the get cannot race the unload.
    if !unsafe { sys::tilde_iser_module_get() } {
        return err_ptr(ENODEV);
    }
    let endpoint = match Endpoint::connect(dst, raw) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            // SAFETY: the reference taken above.
            unsafe { sys::tilde_iser_module_put() };
            let (ip, port) = ipv4(&raw);
            pr_err!(
                "connecting to {}.{}.{}.{}:{} failed: {:?}\n",
                ip[0],
                ip[1],
                ip[2],
                ip[3],
                port,
                error
            );
            return err_ptr(error);
        }
    };
    // SAFETY: a new endpoint with no private data of the class's.
    let ep = unsafe { sys::iscsi_create_endpoint(0) };
    if ep.is_null() {
        drop(endpoint);
        // SAFETY: the reference taken above, now that nothing of the endpoint is left.
        unsafe { sys::tilde_iser_module_put() };
        return err_ptr(ENOMEM);
    }
    // SAFETY: the endpoint is ours until `ep_disconnect`, which frees this box.
    unsafe { (*ep).dd_data = KBox::into_raw(endpoint).cast() };
    ep
}

/// `ep_poll`: 1 connected, 0 not yet, negative failed.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_ep_poll(ep: *mut sys::iscsi_endpoint, timeout_ms: c_int) -> c_int {
    // SAFETY: the class passes a live endpoint of ours.
    let Some(endpoint) = (unsafe { (*ep).dd_data.cast::<Endpoint>().as_ref() }) else {
        return -1;
    };
    let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
    endpoint.poll(timeout)
}

/// `ep_disconnect`: tears the connection down and frees the endpoint.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_ep_disconnect(ep: *mut sys::iscsi_endpoint) {
    // SAFETY: the class passes a live endpoint of ours and never uses it again. Its
    // connection may still be bound: the iSCSI class disconnects a bound endpoint before
    // it stops the connection (`iscsi_if_stop_conn`, `iscsi_cleanup_conn_work_fn`), so
    // the endpoint unbinds itself before it is freed; the later stop finds no endpoint.
    // Dropping it deregisters every region before libiscsi fails the tasks and returns
    // their pages.
    unsafe {
        let endpoint = (*ep).dd_data.cast::<Endpoint>();
        (*ep).dd_data = core::ptr::null_mut();
        if !endpoint.is_null() {
            let endpoint = KBox::from_raw(endpoint);
            endpoint.quiesce();
            endpoint.unbind();
            drop(endpoint);
            sys::iscsi_destroy_endpoint(ep);
            // The reference `ep_connect` took, last: no callback of the endpoint is left
            // (the class holds the module while it calls us).
            sys::tilde_iser_module_put();
        } else {
            sys::iscsi_destroy_endpoint(ep);
        }
    }
}

/// `init_task`: only checks the connection is bound.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_task_init(task: *mut sys::iscsi_task) -> c_int {
    // SAFETY: libiscsi passes a task of a connection of ours.
    match unsafe { endpoint_of((*task).conn) } {
        Some(_) => 0,
        None => ENODEV.to_errno(),
    }
}

/// `alloc_pdu`: libiscsi builds the BHS in the task's data; `xmit` copies it out.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_pdu_alloc(task: *mut sys::iscsi_task, _opcode: u8) -> c_int {
    // SAFETY: the task's `dd_data` is a `TaskData` (`session_create` sized it).
    unsafe {
        (*task).hdr = (*task).dd_data.cast();
        (*task).hdr_max = BHS_LEN as u16;
    }
    0
}

/// `xmit_task`: sends the task's PDU (a SCSI command with its registration, or a
/// management PDU). Runs under libiscsi's `frwd_lock`: no sleeping.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_task_xmit(task: *mut sys::iscsi_task) -> c_int {
    // SAFETY: libiscsi passes a prepared task of a connection of ours.
    let (conn, sc) = unsafe { ((*task).conn, (*task).sc) };
    // SAFETY: as above.
    let Some(endpoint) = (unsafe { endpoint_of(conn) }) else {
        return ENODEV.to_errno();
    };
    let Some(queues) = endpoint.queues() else {
        return ENODEV.to_errno();
    };
    if endpoint.shared.stopping.load(Acquire) {
        return ENODEV.to_errno();
    }
    // SAFETY: `hdr` is the task's BHS (`pdu_alloc`), built by libiscsi.
    let bhs = unsafe { &*(*task).hdr.cast::<[u8; BHS_LEN]>() };
    // SAFETY: the task's index in the session's pool, below `cmds_max` (checked at bind).
    let index = unsafe { (*task).itt } as usize;
    let result = if sc.is_null() {
        // SAFETY: `data` holds `data_count` bytes of the PDU's data segment (or none).
        let data = unsafe {
            match (*task).data_count {
                0 => &[][..],
                n => core::slice::from_raw_parts((*task).data.cast::<u8>(), n as usize),
            }
        };
        // SAFETY: the BHS's tag field, as libiscsi wrote it.
        let itt = unsafe { (*(*task).hdr).itt };
        let put_task = if itt == RESERVED_ITT { task as usize } else { 0 };
        endpoint.send_control(queues, index, bhs, data, put_task)
    } else {
        // SAFETY: a SCSI task: the command and the data libiscsi counted are valid.
        unsafe { endpoint.send_command(queues, task, sc, index, bhs) }
    };
    match result {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
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
        put_task: usize,
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
    ///
    /// # Safety
    ///
    /// `task` is a prepared SCSI task of this connection and `sc` its command.
    unsafe fn send_command(
        &self,
        queues: &Queues,
        task: *mut sys::iscsi_task,
        sc: *mut sys::scsi_cmnd,
        index: usize,
        bhs: &[u8; BHS_LEN],
    ) -> Result {
        let flags = wire::Bhs::ref_from_bytes(bhs)
            .map(|bhs| bhs.flags)
            .map_err(|_| EINVAL)?;
        // SAFETY: the task is prepared and the command valid (caller): libiscsi counted
        // its immediate data and, for a write, the unsolicited Data-Out after it.
        let (shape, sgl, nents) = unsafe {
            (
                CommandShape {
                    read: flags & ScsiCommand::FLAG_READ != 0,
                    write: flags & ScsiCommand::FLAG_WRITE != 0,
                    buffer_len: sys::tilde_scsi_bufflen(sc) as usize,
                    immediate: (*task).imm_count as usize,
                    unsolicited: (*task).unsol_r2t.data_length as usize,
                    max_data_segment: (*(*task).conn).max_xmit_dlength as usize,
                    send_capacity: TX_DATA_LEN,
                },
                sys::tilde_scsi_sglist(sc),
                sys::tilde_scsi_sg_count(sc),
            )
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
            slot.task_gone = false;
            let send = slot.send.take().ok_or(EAGAIN)?;
            let taken = if rdma {
                slot.region.take().zip(slot.reg.take())
            } else {
                None
            };
            (send, taken)
        };
        send.data_mut().put_task = 0;
        let len = HEADERS_LEN + imm;
        let filled = send.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(ISER_HEADER_LEN, BHS_LEN + imm, |bytes| {
                let (bhs_out, data_out) = bytes.split_at_mut(BHS_LEN);
                bhs_out.copy_from_slice(bhs);
                if data_out.is_empty() {
                    return imm;
                }
                // SAFETY: the command's scatterlist is valid (caller); `data_out` has
                // room for `imm` bytes.
                unsafe {
                    sys::sg_pcopy_to_buffer(sgl, nents, data_out.as_mut_ptr().cast(), imm, 0)
                }
            })
        });
        let mut stags = (None, None);
        let registered = match (filled, taken) {
            (Ok(copied), taken) if copied == imm => match taken {
                Some((region, reg)) => self.register(queues, &plan, region, reg, index, sgl, nents),
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
            // SAFETY: as above.
            if let Err(error) = unsafe { self.send_data_out(queues, task, sgl, nents) } {
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
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        queues: &Queues,
        plan: &CommandPlan,
        mut region: SgRegion,
        reg: KBox<WorkRequest<Work>>,
        index: usize,
        sgl: *mut sys::scatterlist,
        nents: u32,
    ) -> Result<Option<(Option<Stag>, Option<Stag>)>> {
        let (direction, access) = match plan.rdma {
            Some(TargetRdma::Writes) => (DmaDirection::FromDevice, RemoteAccess::WRITE),
            _ => (DmaDirection::ToDevice, RemoteAccess::READ),
        };
        // SAFETY: the command's scatterlist stays valid and its pages allocated until the
        // command completes, which waits for the region to give them back (or, for a
        // command that ends early, for `task_cleanup` to take them).
        let pages = unsafe { SgMapping::new(queues.device(), sgl, nents, direction) };
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

    /// Sends the task's next unsolicited Data-Out PDU, its data copied from the command's
    /// scatterlist.
    ///
    /// # Safety
    ///
    /// `task` is a SCSI task of this connection with unsolicited data left, and
    /// `sgl`/`nents` its command's scatterlist.
    unsafe fn send_data_out(
        &self,
        queues: &Queues,
        task: *mut sys::iscsi_task,
        sgl: *mut sys::scatterlist,
        nents: u32,
    ) -> Result {
        let mut hdr = sys::iscsi_data::default();
        // SAFETY: the task is valid (caller); libiscsi fills `hdr` and advances the
        // sequence (DataSN).
        unsafe { sys::iscsi_prep_data_out_pdu(task, &mut (*task).unsol_r2t, &mut hdr) };
        // SAFETY: `iscsi_data` is the 48-byte BHS, plain bytes.
        let bhs = unsafe {
            &*core::ptr::from_ref(&hdr).cast::<[u8; BHS_LEN]>()
        };
        let (offset, len) = match wire::DataOut::ref_from_bytes(bhs) {
            Ok(view) => (view.offset.get() as usize, view.dlength.get()),
            Err(_) => return Err(EINVAL),
        };
        let give_back = |task: *mut sys::iscsi_task| {
            // SAFETY: undoes this PDU's DataSN, as ib_iser does, for a retry.
            unsafe { (*task).unsol_r2t.datasn -= 1 };
        };
        if len > TX_DATA_LEN {
            give_back(task);
            pr_err!("{}: a {} byte Data-Out does not fit\n", self.shared.device, len);
            return Err(errno(kernel::bindings::EMSGSIZE));
        }
        // `send_command` made sure of enough idle WRs before it sent the command.
        let Some(mut wr) = remove(&mut self.shared.data_out.lock(), 0) else {
            give_back(task);
            return Err(ENOMEM);
        };
        let header = IserHeader::control(None, None);
        let total = HEADERS_LEN + len;
        let filled = wr.buffer_mut().ok_or(EINVAL).and_then(|buffer| {
            buffer.with_bytes_mut(0, total, |bytes| {
                let (iser, rest) = bytes.split_at_mut(ISER_HEADER_LEN);
                iser.copy_from_slice(header.as_bytes());
                let (bhs_out, data_out) = rest.split_at_mut(BHS_LEN);
                bhs_out.copy_from_slice(bhs);
                let Ok(skip) = isize::try_from(offset) else {
                    return 0;
                };
                // SAFETY: the command's scatterlist is valid (caller); `data_out` has
                // room for `len` bytes.
                unsafe { sys::sg_pcopy_to_buffer(sgl, nents, data_out.as_mut_ptr().cast(), len, skip) }
            })
        });
        if !matches!(filled, Ok(copied) if copied == len) {
            give_back(task);
            if let Err(wr) = push_within_capacity(&mut self.shared.data_out.lock(), wr) {
                drop(wr);
            }
            return Err(EIO);
        }
        if let Err(rejected) = queues.post_send(wr, SendOp::Send, 0, total) {
            give_back(task);
            if let Err(wr) = push_within_capacity(&mut self.shared.data_out.lock(), rejected.wr) {
                drop(wr);
            }
            return Err(rejected.error);
        }
        // SAFETY: as above: the sequence's progress is the transport's to keep.
        unsafe { (*task).unsol_r2t.sent += (*task).unsol_r2t.data_count };
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
        match send.data().kind {
            Kind::DataOut => {
                send.data_mut().put_task = 0;
                // Room for every Data-Out WR was reserved at connect.
                if let Err(wr) = push_within_capacity(&mut self.data_out.lock(), send) {
                    drop(wr);
                }
            }
            _ => self.put_send(send.data().slot, send),
        }
    }
}

/// `cleanup_task`: a task ends (completed, aborted or failed). A region still valid is
/// invalidated; its pages are unmapped once that completes.
///
/// # Safety
///
/// Called through the transport table only, with the pointers valid for the call.
#[no_mangle]
unsafe extern "C" fn tilde_iser_task_cleanup(task: *mut sys::iscsi_task) {
    // SAFETY: libiscsi passes a task of a connection of ours, under its `back_lock`.
    let (conn, sc, index) = unsafe { ((*task).conn, (*task).sc, (*task).itt as usize) };
    if sc.is_null() {
        return;
    }
    // SAFETY: as above.
    let Some(endpoint) = (unsafe { endpoint_of(conn) }) else {
        return;
    };
    let Some(queues) = endpoint.queues() else {
        return;
    };
    let mut slots = endpoint.shared.slots.lock();
    let Some(slot) = slots.get_mut(index) else {
        return;
    };
    slot.held = None;
    match slot.region.as_mut() {
        Some(region) if region.is_valid() => {
            // The command ends now and its pages go back to the SCSI layer when this
            // returns, so they are unmapped now; the key is invalidated after (settle).
            // SAFETY: the task ended without a response that settled it: its connection
            // is stopping (the QP flushed in error: no peer reaches the key), or task
            // management ended it, after which the target moves none of its data
            // (RFC 7143 §11.5.1). The same window ib_iser's cleanup has.
            drop(unsafe { region.release_pages() });
            slot.settle(queues, &endpoint.shared.local_invalidations);
        }
        Some(region) => drop(region.unmap()),
        // With the device (REG_MR or LOCAL_INV): settled when it comes back.
        None => slot.task_gone = true,
    }
}
