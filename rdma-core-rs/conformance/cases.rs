// SPDX-License-Identifier: GPL-2.0
//! The verbs conformance cases, one source for both backends of `rdma-core-rs`.
//!
//! The kernel module `tilde_verbs_conformance.ko` runs them against an RDMA device (rxe
//! in the VM, tilde's own mlx4 later) and the host test `tests/conformance.rs` against the
//! software fabric; each includes this file and supplies a module `api` naming the
//! backend's types (the same names on both). What passes over rxe must pass on the
//! fabric, so the host backend cannot drift from the kernel's verbs semantics.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::Deref;
use core::time::Duration;

use crate::api::{
    timed_out, AddressHandle, Arc, CmEvent, CmId, CompletionHandler, CompletionQueue, ConnParam,
    Device, DeviceRef, DmaBuffer, Error, Mailbox, MemoryRegion, PollContext, ProtectionDomain,
    QueuePair, Rejected, Result, ReturnedWr, UdDest, EINVAL,
};
use rdma_core::verbs::{
    AddressVector, AtomicOp, Gid, InitAttr, Mtu, QpCaps, RemoteAccess, RtrAttr, RtsAttr, SendOp,
    WcOpcode, WcStatus,
};

/// Why a case failed.
pub(crate) enum Failure {
    /// A verb returned an error.
    Verb(Error),
    /// A check on the results did not hold.
    Check(&'static str),
    /// A completion had another status than the case expects.
    Status(&'static str, WcStatus),
    /// The case does not apply to the device (why): neither a pass nor a failure.
    Skipped(&'static str),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Verb(error)
    }
}

impl<T: CompletionHandler> From<Rejected<T>> for Failure {
    fn from(rejected: Rejected<T>) -> Self {
        Self::Verb(rejected.error)
    }
}

pub(crate) type CaseResult = core::result::Result<(), Failure>;
pub(crate) type Outcome<T> = core::result::Result<T, Failure>;

/// `Failure::Status` unless `actual` is `expected`.
pub(crate) fn check_status(actual: WcStatus, expected: WcStatus, what: &'static str) -> CaseResult {
    if actual == expected {
        Ok(())
    } else {
        Err(Failure::Status(what, actual))
    }
}

pub(crate) fn check(condition: bool, what: &'static str) -> CaseResult {
    if condition {
        Ok(())
    } else {
        Err(Failure::Check(what))
    }
}

/// What every case needs: the port under test, its GID, the paths from the port to
/// itself, a PD and a direct CQ.
pub(crate) struct Rig {
    pub(crate) device: DeviceRef,
    pub(crate) port: u32,
    pub(crate) gid: Gid,
    /// The path RC QPs take to each other: by LID on InfiniBand, a GRH and MAC on RoCE.
    pub(crate) path: AddressVector,
    /// The path of UD sends, always with a GRH (the cases check the receiver sees it).
    pub(crate) ud_path: AddressVector,
    /// The IPv4 address RDMA CM connects to when the GID table has none: an InfiniBand
    /// port's IPoIB address.
    pub(crate) cm_ipv4: Option<Ipv4Addr>,
    pub(crate) pd: Arc<ProtectionDomain>,
    pub(crate) cq: Arc<CompletionQueue>,
}

/// The rig on `device`'s first port. Fails with `EINVAL` if the port has no path to
/// itself (an InfiniBand port no subnet manager has given a LID, a RoCE port whose GID 0
/// is not link-local).
pub(crate) fn setup(device: &Device, cm_ipv4: Option<Ipv4Addr>) -> Result<Rig> {
    let port = *device.ports().start();
    let attr = device.query_port(port)?;
    let gid = device.query_gid(port, 0)?;
    let path = AddressVector::to_self(&attr, gid, false).ok_or(EINVAL)?;
    let ud_path = AddressVector::to_self(&attr, gid, true).ok_or(EINVAL)?;
    let pd = ProtectionDomain::new(device)?;
    let cq = CompletionQueue::new(device, 256, PollContext::Direct)?;
    Ok(Rig {
        device: device.to_ref()?,
        port,
        gid,
        path,
        ud_path,
        cm_ipv4,
        pd,
        cq,
    })
}

/// Runs every case on the rig, handing each result to `record` with the case's name.
pub(crate) fn run_cases(rig: &Rig, record: &mut dyn FnMut(&str, CaseResult)) {
    record("device_query", device_query(rig));
    record("rc_connect", rc_connect(rig));
    for size in [1usize, 64, 4096, 65536, 1 << 20] {
        let mut case = [0u8; 32];
        record(
            case_name(&mut case, "rc_send_recv_", size),
            rc_send_recv(rig, size),
        );
    }
    record("rc_send_with_imm", rc_send_with_imm(rig));
    record(
        "rc_send_and_recv_cqs_apart",
        rc_send_and_recv_cqs_apart(rig),
    );
    record("rc_drain_flushes_posted_receives", rc_drain_flushes(rig));
    record("frwr_rdma_write", frwr_rdma_write(rig));
    record("frwr_rdma_read", frwr_rdma_read(rig));
    record("frwr_rdma_write_with_imm", frwr_rdma_write_with_imm(rig));
    record(
        "frwr_write_with_imm_waits_for_a_receive",
        frwr_write_with_imm_waits_for_a_receive(rig),
    );
    record(
        "frwr_read_only_region_refuses_write",
        frwr_read_only_region_refuses_write(rig),
    );
    record("frwr_other_pd_refused", frwr_other_pd_refused(rig));
    record("rc_receive_too_small", rc_receive_too_small(rig));
    record(
        "frwr_invalidate_refuses_access",
        frwr_invalidate_refuses_access(rig),
    );
    record(
        "rc_bad_rkey_then_reset_and_reuse",
        rc_bad_rkey_then_reset_and_reuse(rig),
    );
    record("rc_atomics", rc_atomics(rig));
    record(
        "rc_rnr_retry_then_delivery",
        rc_rnr_retry_then_delivery(rig),
    );
    record("rc_rnr_retry_exceeded", rc_rnr_retry_exceeded(rig));
    record("ud_send_with_grh", ud_send_with_grh(rig));
    record("ud_wrong_qkey_dropped", ud_wrong_qkey_dropped(rig));
    record(
        "ud_drain_with_sends_outstanding",
        ud_drain_with_sends_outstanding(rig),
    );
    record(
        "rc_softirq_cq",
        rc_over_cq_context(rig, PollContext::Softirq),
    );
    record(
        "rc_workqueue_cq",
        rc_over_cq_context(rig, PollContext::Workqueue),
    );
    record(
        "rejected_post_hands_the_wr_back",
        rejected_post_hands_the_wr_back(rig),
    );
    record("wrong_qp_type_refused", wrong_qp_type_refused(rig));
    record(
        "qp_dropped_in_reset_and_init",
        qp_dropped_in_reset_and_init(rig),
    );
    record(
        "frwr_reregistration_retires_the_old_key",
        frwr_reregistration(rig),
    );
    // RDMA CM connects through the IB CM, which a device may not offer (tilde's loopback
    // device sends no MADs).
    if rig.device.has_cm(rig.port) {
        record(
            "cm_connect_send_disconnect",
            cm_connect_send_disconnect(rig, 18515),
        );
        record("cm_reject", cm_reject(rig, 18516));
    } else {
        const NO_CM: Failure = Failure::Skipped("the port has no IB CM");
        record("cm_connect_send_disconnect", Err(NO_CM));
        record("cm_reject", Err(NO_CM));
    }
}

/// `prefix` followed by `size` in decimal, in `buf`.
fn case_name<'b>(buf: &'b mut [u8; 32], prefix: &'b str, size: usize) -> &'b str {
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = prefix.len() + digits.len() - start;
    buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
    buf[prefix.len()..len].copy_from_slice(&digits[start..]);
    core::str::from_utf8(&buf[..len]).unwrap_or(prefix)
}

fn device_query(rig: &Rig) -> CaseResult {
    let attr = rig.device.query_port(rig.port)?;
    check(attr.gid_tbl_len > 0, "the port has no GID table")?;
    check(!rig.gid.is_zero(), "GID 0 is unset")?;
    // What the cases need of the device.
    let caps = rig.device.caps();
    check(
        caps.max_qp_wr >= CAPS.max_recv_wr && caps.max_send_sge >= 1,
        "the device's queues are too small",
    )?;
    check(
        caps.max_cqe >= 256 && caps.max_qp_rd_atom >= 1,
        "the device's CQs or RDMA READ depth are too small",
    )?;
    check(
        caps.max_fast_reg_page_list_len >= RDMA_PAGES,
        "the device maps too few pages per registration",
    )?;
    check(caps.atomics, "the device does no atomics")
}

pub(crate) const CAPS: QpCaps = QpCaps {
    max_send_wr: 16,
    max_recv_wr: 32,
    max_send_sge: 1,
    max_recv_sge: 1,
    max_inline_data: 0,
};

/// RNR retries that never give up (the IB encoding of "infinite").
pub(crate) const RNR_FOREVER: u8 = 7;

/// Brings `qp` to RTS towards `peer` over the rig's path to itself (loopback).
pub(crate) fn connect(rig: &Rig, qp: &QueuePair, peer: u32, rnr_retry: u8) -> Result {
    let all = RemoteAccess::READ | RemoteAccess::WRITE | RemoteAccess::ATOMIC;
    qp.modify_to_init(&InitAttr {
        port: rig.port,
        pkey_index: 0,
        remote_access: all,
    })?;
    qp.modify_to_rtr(&RtrAttr {
        port: rig.port,
        path_mtu: Mtu::Mtu1024,
        dest_qp_num: peer,
        rq_psn: 0,
        max_dest_rd_atomic: 1,
        // 0.64 ms (IB encoding 12): RNR waits stay short under TCG.
        min_rnr_timer: 12,
        av: rig.path,
    })?;
    qp.modify_to_rts(&RtsAttr {
        sq_psn: 0,
        timeout: 14,
        retry_cnt: 7,
        rnr_retry,
        max_rd_atomic: 1,
    })
}

/// Two RC QPs on `cq`, connected to each other; `a` gives up after `a_rnr_retry` RNR NAKs.
pub(crate) fn rc_pair_on(
    rig: &Rig,
    cq: &Arc<CompletionQueue>,
    a_rnr_retry: u8,
) -> Result<(QueuePair, QueuePair)> {
    rc_pair_with(rig, &rig.pd, (cq, cq), a_rnr_retry)
}

/// Two RC QPs in `pd`, each sending to `cqs.0` and receiving to `cqs.1`, connected to
/// each other; `a` gives up after `a_rnr_retry` RNR NAKs.
fn rc_pair_with(
    rig: &Rig,
    pd: &Arc<ProtectionDomain>,
    (send_cq, recv_cq): (&Arc<CompletionQueue>, &Arc<CompletionQueue>),
    a_rnr_retry: u8,
) -> Result<(QueuePair, QueuePair)> {
    let a = QueuePair::new_rc(pd, send_cq, recv_cq, &CAPS)?;
    let b = QueuePair::new_rc(pd, send_cq, recv_cq, &CAPS)?;
    connect(rig, &a, b.qp_num(), a_rnr_retry)?;
    connect(rig, &b, a.qp_num(), RNR_FOREVER)?;
    Ok((a, b))
}

/// Two RC QPs on the rig's CQ, connected to each other.
pub(crate) fn rc_pair(rig: &Rig) -> Result<(QueuePair, QueuePair)> {
    rc_pair_on(rig, &rig.cq, RNR_FOREVER)
}

/// Ten seconds is ample for any completion under QEMU TCG.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the WR tagged `tag` to come back to `mailbox`, polling `cq` if it is direct.
pub(crate) fn wait(mailbox: &mut Mailbox, cq: &CompletionQueue, tag: u64) -> Outcome<ReturnedWr> {
    mailbox.wait(tag, cq, TIMEOUT).map_err(|error| {
        if error == timed_out() {
            Failure::Check("no completion within 10 s")
        } else {
            Failure::Verb(error)
        }
    })
}

/// [`wait`], then checks that the WR succeeded with `opcode`.
pub(crate) fn wait_ok(
    mailbox: &mut Mailbox,
    cq: &CompletionQueue,
    tag: u64,
    opcode: WcOpcode,
) -> Outcome<ReturnedWr> {
    let wr = wait(mailbox, cq, tag)?;
    check(
        wr.completion().status == WcStatus::Success,
        "a work request completed with an error",
    )?;
    check(
        wr.completion().opcode == Some(opcode),
        "a completion has the wrong opcode",
    )?;
    Ok(wr)
}

/// Waits for the receive `tag`: successful, and `len` bytes long.
pub(crate) fn wait_recv(
    mailbox: &mut Mailbox,
    cq: &CompletionQueue,
    tag: u64,
    len: usize,
) -> Outcome<ReturnedWr> {
    let wr = wait_ok(mailbox, cq, tag, WcOpcode::Recv)?;
    check(
        wr.completion().byte_len as usize == len,
        "a receive's byte_len is not the length sent",
    )?;
    Ok(wr)
}

/// The buffer a WR came back with.
fn buffer_of(wr: &ReturnedWr) -> Outcome<&DmaBuffer> {
    wr.buffer().ok_or(Failure::Check(
        "a work request came back without its buffer",
    ))
}

/// `len` bytes at `offset` of the buffer a WR came back with.
fn bytes_of(wr: &ReturnedWr, offset: usize, len: usize) -> Outcome<impl Deref<Target = [u8]>> {
    Ok(buffer_of(wr)?.copy_out(offset, len)?)
}

fn rc_connect(rig: &Rig) -> CaseResult {
    let (a, b) = rc_pair(rig)?;
    check(a.qp_num() != b.qp_num(), "two QPs with one number")
}

/// The byte at `i` of the send pattern.
pub(crate) fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) + 7) as u8
}

/// A buffer of `len` bytes filled with the send pattern from `start`.
pub(crate) fn patterned(device: &Device, len: usize, start: usize) -> Outcome<DmaBuffer> {
    let mut buffer = DmaBuffer::new(device, len)?;
    // Filled a chunk at a time from the stack: no allocation beyond the buffer.
    let mut chunk = [0u8; 256];
    let mut offset = 0;
    while offset < len {
        let n = chunk.len().min(len - offset);
        for (i, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(start + offset + i);
        }
        buffer.write(offset, &chunk[..n])?;
        offset += n;
    }
    Ok(buffer)
}

// Mailbox tags of the cases' WRs.
const SEND: u64 = 1;
const RECV: u64 = 2;
pub(crate) const REG: u64 = 3;
pub(crate) const INV: u64 = 4;
const WRITE: u64 = 5;
const READ: u64 = 6;

fn rc_send_recv(rig: &Rig, size: usize) -> CaseResult {
    // A different offset per size, so a receive buffer left over from a smaller case
    // cannot pass for this one.
    let offset = size % 251;
    let mut mailbox = Mailbox::new()?;
    let send = mailbox.work_request(SEND, Some(patterned(&rig.device, size + offset, 0)?))?;
    let recv = mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, size)?))?;
    let (a, b) = rc_pair(rig)?;
    b.post_recv(recv, 0, size)?;
    a.post_send(send, SendOp::Send, offset, size)?;
    let sent = wait(&mut mailbox, &rig.cq, SEND)?;
    let received = wait(&mut mailbox, &rig.cq, RECV)?;
    let (s, r) = (sent.completion(), received.completion());
    check(
        s.status == WcStatus::Success,
        "send completed with an error",
    )?;
    check(
        s.opcode == Some(WcOpcode::Send),
        "send completion has the wrong opcode",
    )?;
    check(
        r.status == WcStatus::Success,
        "receive completed with an error",
    )?;
    check(
        r.opcode == Some(WcOpcode::Recv),
        "receive completion has the wrong opcode",
    )?;
    check(
        r.byte_len as usize == size,
        "receive byte_len is not the size sent",
    )?;
    check(
        r.qp_num == b.qp_num(),
        "receive completion names the wrong QP",
    )?;
    check(r.imm.is_none(), "a plain SEND arrived with immediate data")?;
    check(
        *bytes_of(&received, 0, size)? == *bytes_of(&sent, offset, size)?,
        "received data differs from what was sent",
    )
}

fn rc_send_with_imm(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let mut message = DmaBuffer::new(&rig.device, 64)?;
    message.write(0, b"immediate")?;
    let send = mailbox.work_request(SEND, Some(message))?;
    let recv = mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 64)?))?;
    let (a, b) = rc_pair(rig)?;
    b.post_recv(recv, 0, 64)?;
    a.post_send(send, SendOp::SendWithImm(0x1234_5678), 0, 9)?;
    wait_ok(&mut mailbox, &rig.cq, SEND, WcOpcode::Send)?;
    let received = wait(&mut mailbox, &rig.cq, RECV)?;
    let r = received.completion();
    check(
        r.status == WcStatus::Success,
        "receive completed with an error",
    )?;
    check(
        r.imm == Some(0x1234_5678),
        "immediate data lost or byte-swapped",
    )?;
    check(r.byte_len == 9, "receive byte_len is not the size sent")?;
    check(
        *bytes_of(&received, 0, 9)? == *b"immediate",
        "received data differs from what was sent",
    )
}

/// A QP's send completions go to its send CQ and its receive completions to its receive
/// CQ: polling one never brings back the other's.
fn rc_send_and_recv_cqs_apart(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let send_cq = CompletionQueue::new(&rig.device, 128, PollContext::Direct)?;
    let recv_cq = CompletionQueue::new(&rig.device, 128, PollContext::Direct)?;
    let (a, b) = rc_pair_with(rig, &rig.pd, (&send_cq, &recv_cq), RNR_FOREVER)?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 64)?))?,
        0,
        64,
    )?;
    a.post_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 64, 23)?))?,
        SendOp::Send,
        0,
        64,
    )?;
    wait_ok(&mut mailbox, &send_cq, SEND, WcOpcode::Send)?;
    let stray = mailbox.wait(RECV, &send_cq, Duration::from_millis(50));
    check(
        matches!(stray, Err(e) if e == timed_out()),
        "a receive completed on the send CQ",
    )?;
    let received = wait_recv(&mut mailbox, &recv_cq, RECV, 64)?;
    check(
        *bytes_of(&received, 0, 64)? == *patterned(&rig.device, 64, 23)?.copy_out(0, 64)?,
        "received data differs from what was sent",
    )
}

fn rc_drain_flushes(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let qp_num = {
        let (a, _b) = rc_pair(rig)?;
        for tag in 0..3 {
            a.post_recv(
                mailbox.work_request(tag, Some(DmaBuffer::new(&rig.device, 64)?))?,
                0,
                64,
            )?;
        }
        check(
            a.outstanding() == 3,
            "the QP does not count its posted receives",
        )?;
        // Dropping the QPs drains them: each posted receive must come back, flushed.
        a.qp_num()
    };
    for tag in 0..3 {
        let wr = mailbox.try_take(tag)?.ok_or(Failure::Check(
            "a posted receive was not handed back by the drain",
        ))?;
        check(
            wr.completion().status == WcStatus::WrFlushError,
            "a drained receive did not flush",
        )?;
        check(
            wr.completion().qp_num == qp_num,
            "a flushed receive names the wrong QP",
        )?;
    }
    Ok(())
}

const RDMA_LEN: usize = 8192;
/// Pages an MR over `RDMA_LEN` bytes may need (an unaligned buffer spans one more).
const RDMA_PAGES: u32 = 4;
pub(crate) const READ_WRITE: RemoteAccess = RemoteAccess::READ.union(RemoteAccess::WRITE);

/// An unregistered region of `RDMA_LEN` zeroed bytes in `pd`.
pub(crate) fn zeroed_region(rig: &Rig, pd: &Arc<ProtectionDomain>) -> Outcome<MemoryRegion> {
    let buffer = DmaBuffer::new(&rig.device, RDMA_LEN)?;
    Ok(MemoryRegion::new(pd, RDMA_PAGES, buffer, 0, RDMA_LEN)?)
}

/// Registers `region` through `qp` for `access` and returns it, registered.
pub(crate) fn register(
    mailbox: &mut Mailbox,
    cq: &CompletionQueue,
    qp: &QueuePair,
    region: MemoryRegion,
    access: RemoteAccess,
) -> Outcome<MemoryRegion> {
    qp.post_reg_mr(mailbox.work_request(REG, None)?, region, access)?;
    let mut done = wait_ok(mailbox, cq, REG, WcOpcode::RegMr)?;
    done.take_region()
        .ok_or(Failure::Check("REG_MR came back without its region"))
}

fn frwr_rdma_write(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let write = mailbox.work_request(WRITE, Some(patterned(&rig.device, RDMA_LEN, 3)?))?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    a.post_send(
        write,
        SendOp::RdmaWrite {
            remote_addr: region.iova(),
            rkey: region.rkey(),
        },
        0,
        RDMA_LEN,
    )?;
    let written = wait_ok(&mut mailbox, &rig.cq, WRITE, WcOpcode::RdmaWrite)?;
    check(
        *region.buffer().copy_out(0, RDMA_LEN)? == *bytes_of(&written, 0, RDMA_LEN)?,
        "the written region differs from the source",
    )
}

fn frwr_rdma_read(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = MemoryRegion::new(
        &rig.pd,
        RDMA_PAGES,
        patterned(&rig.device, RDMA_LEN, 11)?,
        0,
        RDMA_LEN,
    )?;
    let read = mailbox.work_request(READ, Some(DmaBuffer::new(&rig.device, RDMA_LEN)?))?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    // What the region holds before the READ: the READ must bring exactly that and leave
    // the region as it was (a device that copied the other way would make both sides
    // equal, to the reader's zeros).
    let before = region.buffer().copy_out(100, RDMA_LEN - 100)?;
    // Read from 100 bytes into the region, so the iova arithmetic is exercised too.
    a.post_send(
        read,
        SendOp::RdmaRead {
            remote_addr: region.iova() + 100,
            rkey: region.rkey(),
        },
        0,
        RDMA_LEN - 100,
    )?;
    let done = wait_ok(&mut mailbox, &rig.cq, READ, WcOpcode::RdmaRead)?;
    check(
        done.completion().byte_len as usize == RDMA_LEN - 100,
        "the READ's completion does not report the length read",
    )?;
    check(
        *bytes_of(&done, 0, RDMA_LEN - 100)? == *before,
        "the data read differs from the region",
    )?;
    check(
        *region.buffer().copy_out(100, RDMA_LEN - 100)? == *before,
        "the RDMA READ changed the region it read",
    )
}

/// RDMA WRITE with immediate: the data lands in the region, and a receive at the peer
/// completes with the immediate and the length written, its own buffer untouched.
fn frwr_rdma_write_with_imm(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let write = mailbox.work_request(WRITE, Some(patterned(&rig.device, RDMA_LEN, 13)?))?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 16)?))?,
        0,
        16,
    )?;
    let op = SendOp::RdmaWriteWithImm {
        remote_addr: region.iova(),
        rkey: region.rkey(),
        imm: 0xfeed_0001,
    };
    a.post_send(write, op, 0, RDMA_LEN)?;
    let written = wait_ok(&mut mailbox, &rig.cq, WRITE, WcOpcode::RdmaWrite)?;
    let received = wait_ok(&mut mailbox, &rig.cq, RECV, WcOpcode::RecvRdmaWithImm)?;
    let r = received.completion();
    check(
        r.imm == Some(0xfeed_0001),
        "the immediate data was lost or byte-swapped",
    )?;
    check(
        r.byte_len as usize == RDMA_LEN,
        "the receive does not report the length written",
    )?;
    check(
        *bytes_of(&received, 0, 16)? == [0u8; 16],
        "the WRITE's data went into the receive buffer",
    )?;
    check(
        *region.buffer().copy_out(0, RDMA_LEN)? == *bytes_of(&written, 0, RDMA_LEN)?,
        "the written region differs from the source",
    )
}

/// An RDMA WRITE with immediate consumes a receive: with none posted the responder
/// answers RNR and nothing lands, until one is posted; then the data and the receive's
/// completion arrive.
fn frwr_write_with_imm_waits_for_a_receive(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let op = SendOp::RdmaWriteWithImm {
        remote_addr: region.iova(),
        rkey: region.rkey(),
        imm: 0xfeed_0002,
    };
    a.post_send(
        mailbox.work_request(WRITE, Some(patterned(&rig.device, 4096, 19)?))?,
        op,
        0,
        4096,
    )?;
    let early = mailbox.wait(WRITE, &rig.cq, Duration::from_millis(50));
    check(
        matches!(early, Err(e) if e == timed_out()),
        "a WRITE with immediate completed with no receive posted",
    )?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 16)?))?,
        0,
        16,
    )?;
    let written = wait_ok(&mut mailbox, &rig.cq, WRITE, WcOpcode::RdmaWrite)?;
    let received = wait_ok(&mut mailbox, &rig.cq, RECV, WcOpcode::RecvRdmaWithImm)?;
    let r = received.completion();
    check(
        r.imm == Some(0xfeed_0002) && r.byte_len == 4096,
        "the receive does not carry the immediate and the length written",
    )?;
    check(
        *region.buffer().copy_out(0, 4096)? == *bytes_of(&written, 0, 4096)?,
        "the written region differs from the source",
    )
}

/// A region registered for remote READ only refuses an RDMA WRITE: a remote access
/// error, and nothing lands.
fn frwr_read_only_region_refuses_write(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, RemoteAccess::READ)?;
    check(
        write_status(
            &mut mailbox,
            rig,
            &a,
            (region.iova(), region.rkey()),
            256,
            41,
        )? == WcStatus::RemoteAccessError,
        "a write to a read-only region did not fail with a remote access error",
    )?;
    check(
        region.buffer().copy_out(0, 256)?.iter().all(|&b| b == 0),
        "a write to a read-only region landed",
    )
}

/// A region belongs to its PD: a QP of another PD cannot register it (refused at post,
/// the WR and the region handed back) nor reach it with its key (a remote access error
/// at a responder of another PD), while a QP of its own PD can.
fn frwr_other_pd_refused(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let other_pd = ProtectionDomain::new(&rig.device)?;
    let region = zeroed_region(rig, &other_pd)?;
    let (a, b) = rc_pair(rig)?;
    let (c, d) = rc_pair_with(rig, &other_pd, (&rig.cq, &rig.cq), RNR_FOREVER)?;
    let Err(mut rejected) = b.post_reg_mr(mailbox.work_request(REG, None)?, region, READ_WRITE)
    else {
        return Err(Failure::Check("a QP registered a region of another PD"));
    };
    check(
        rejected.error == EINVAL,
        "a registration across PDs was not refused with EINVAL",
    )?;
    let region = rejected.wr.take_region().ok_or(Failure::Check(
        "the refused registration did not hand its region back",
    ))?;
    let region = register(&mut mailbox, &rig.cq, &d, region, READ_WRITE)?;
    let key = (region.iova(), region.rkey());
    check(
        write_status(&mut mailbox, rig, &c, key, 256, 5)? == WcStatus::Success,
        "a write within the region's PD failed",
    )?;
    check(
        write_status(&mut mailbox, rig, &a, key, 256, 77)? == WcStatus::RemoteAccessError,
        "a write through a responder of another PD did not fail with a remote access error",
    )?;
    check(
        *region.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 5)?.copy_out(0, 256)?,
        "a write through a responder of another PD landed",
    )
}

/// A SEND larger than the receive posted for it: both sides fail. Hardware reports a
/// local length error on the receive and a remote invalid request on the send; rxe
/// reports a local QP operation error and a remote operation error (measured). The fabric
/// does as rxe does; either pair is accepted.
fn rc_receive_too_small(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let (a, b) = rc_pair(rig)?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 16)?))?,
        0,
        16,
    )?;
    a.post_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 64, 2)?))?,
        SendOp::Send,
        0,
        64,
    )?;
    let received = wait(&mut mailbox, &rig.cq, RECV)?;
    let sent = wait(&mut mailbox, &rig.cq, SEND)?;
    let status = received.completion().status;
    if status != WcStatus::LocalLengthError {
        check_status(status, WcStatus::LocalQpOperationError, "the short receive")?;
    }
    let status = sent.completion().status;
    if status != WcStatus::RemoteInvalidRequestError {
        check_status(status, WcStatus::RemoteOperationError, "the oversized SEND")?;
    }
    Ok(())
}

/// RDMA WRITEs `len` bytes of the send pattern to `rkey` at `remote_addr` through `qp`
/// and returns the completion status.
/// The status of an RDMA WRITE of `len` bytes of `patterned(.., seed)` to `rkey` at
/// `remote_addr`. Cases give a refused write another seed than the last one that
/// landed, so that memory unchanged shows that nothing of it landed.
pub(crate) fn write_status(
    mailbox: &mut Mailbox,
    rig: &Rig,
    qp: &QueuePair,
    (remote_addr, rkey): (u64, u32),
    len: usize,
    seed: usize,
) -> Outcome<WcStatus> {
    let write = mailbox.work_request(WRITE, Some(patterned(&rig.device, len, seed)?))?;
    qp.post_send(write, SendOp::RdmaWrite { remote_addr, rkey }, 0, len)?;
    Ok(wait(mailbox, &rig.cq, WRITE)?.completion().status)
}

/// LOCAL_INV retires the key it names, and only that one: another region stays
/// reachable.
fn frwr_invalidate_refuses_access(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let (region, other) = (zeroed_region(rig, &rig.pd)?, zeroed_region(rig, &rig.pd)?);
    let (a, b) = rc_pair(rig)?;
    let other = register(&mut mailbox, &rig.cq, &b, other, READ_WRITE)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let (iova, rkey) = (region.iova(), region.rkey());
    check(
        write_status(&mut mailbox, rig, &a, (iova, rkey), 256, 5)? == WcStatus::Success,
        "a write to a registered region failed",
    )?;
    b.post_local_inv(mailbox.work_request(INV, None)?, rkey)?;
    wait_ok(&mut mailbox, &rig.cq, INV, WcOpcode::LocalInvalidate)?;
    check(
        write_status(&mut mailbox, rig, &a, (iova, rkey), 256, 77)? == WcStatus::RemoteAccessError,
        "a write to an invalidated region did not fail with a remote access error",
    )?;
    check(
        *region.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 5)?.copy_out(0, 256)?,
        "a write to an invalidated region landed",
    )?;
    // The refused write took the QPs to ERR; a fresh pair still reaches the other region.
    drop((a, b));
    let (c, _d) = rc_pair(rig)?;
    let other_key = (other.iova(), other.rkey());
    check(
        write_status(&mut mailbox, rig, &c, other_key, 256, 6)? == WcStatus::Success,
        "invalidating one key retired another region's",
    )?;
    check(
        *other.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 6)?.copy_out(0, 256)?,
        "the write to the other region did not land",
    )
}

fn rc_bad_rkey_then_reset_and_reuse(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let (mut a, mut b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    // A key no region has: the responder refuses, the requester's QP goes to error.
    let status = write_status(
        &mut mailbox,
        rig,
        &a,
        (region.iova(), region.rkey() ^ 0x8000_0000),
        256,
        77,
    )?;
    check(
        status == WcStatus::RemoteAccessError,
        "a bad rkey did not give a remote access error",
    )?;
    check(
        region.buffer().copy_out(0, 256)?.iter().all(|&b| b == 0),
        "a write with a bad rkey landed",
    )?;
    // Reset both ends and bring them up again: the same QPs carry traffic.
    a.reset()?;
    b.reset()?;
    connect(rig, &a, b.qp_num(), RNR_FOREVER)?;
    connect(rig, &b, a.qp_num(), RNR_FOREVER)?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 256)?))?,
        0,
        256,
    )?;
    a.post_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 256, 9)?))?,
        SendOp::Send,
        0,
        256,
    )?;
    let sent = wait_ok(&mut mailbox, &rig.cq, SEND, WcOpcode::Send)?;
    let received = wait_recv(&mut mailbox, &rig.cq, RECV, 256)?;
    check(
        *bytes_of(&received, 0, 256)? == *bytes_of(&sent, 0, 256)?,
        "data after reset and reuse differs",
    )
}

/// The 8 bytes at `offset` of `buffer`, in the CPU's byte order.
fn read_u64(buffer: &DmaBuffer, offset: usize) -> Outcome<u64> {
    let bytes = &*buffer.copy_out(offset, 8)?;
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| Failure::Check("short read"))?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Posts `op` through `qp` and returns the old value it fetched.
fn atomic(
    mailbox: &mut Mailbox,
    rig: &Rig,
    qp: &QueuePair,
    op: AtomicOp,
    opcode: WcOpcode,
) -> Outcome<u64> {
    qp.post_atomic(
        mailbox.work_request(SEND, Some(DmaBuffer::new(&rig.device, 8)?))?,
        op,
        0,
    )?;
    let done = wait_ok(mailbox, &rig.cq, SEND, opcode)?;
    check(
        done.completion().byte_len == 8,
        "an atomic's completion does not report 8 bytes",
    )?;
    read_u64(buffer_of(&done)?, 0)
}

/// Which byte order a device's atomics read remote memory in: the verbs leave it to the
/// device (rxe uses the CPU's; a ConnectX-3 treats the 8 bytes as big-endian, as the IB
/// wire does, and ConnectX-4 made host order an option). The results a requester gets
/// back are the memory's old bytes, in the same order.
#[derive(Clone, Copy)]
enum AtomicOrder {
    Cpu,
    BigEndian,
}

impl AtomicOrder {
    /// The value of 8 bytes of memory (read in the CPU's order) as the device sees them.
    fn value(self, ne: u64) -> u64 {
        match self {
            AtomicOrder::Cpu => ne,
            AtomicOrder::BigEndian => u64::from_be_bytes(ne.to_ne_bytes()),
        }
    }
}

fn rc_atomics(rig: &Rig) -> CaseResult {
    // A start value with the same bytes in both orders, so the first fetch-and-add's
    // result tells which one the device uses, and every check after holds either way.
    const START: u64 = 0x0101_0101_0101_0101;
    let mut mailbox = Mailbox::new()?;
    let mut target = DmaBuffer::new(&rig.device, 64)?;
    target.write(8, &START.to_ne_bytes())?;
    let region = MemoryRegion::new(&rig.pd, 1, target, 0, 64)?;
    let (a, b) = rc_pair(rig)?;
    let region = register(
        &mut mailbox,
        &rig.cq,
        &b,
        region,
        RemoteAccess::READ | RemoteAccess::WRITE | RemoteAccess::ATOMIC,
    )?;
    let (remote_addr, rkey) = (region.iova() + 8, region.rkey());
    let old = atomic(
        &mut mailbox,
        rig,
        &a,
        AtomicOp::FetchAndAdd {
            remote_addr,
            rkey,
            add: 2,
        },
        WcOpcode::FetchAdd,
    )?;
    check(old == START, "fetch-and-add returned the wrong old value")?;
    let added = read_u64(region.buffer(), 8)?;
    let order = if added == START + 2 {
        AtomicOrder::Cpu
    } else if AtomicOrder::BigEndian.value(added) == START + 2 {
        AtomicOrder::BigEndian
    } else {
        return Err(Failure::Check(
            "fetch-and-add did not add 2 in either byte order",
        ));
    };
    // A compare that fails leaves START + 2 and returns it; one that matches writes 99.
    let miss = AtomicOp::CompareAndSwap {
        remote_addr,
        rkey,
        compare: 7,
        swap: 99,
    };
    check(
        order.value(atomic(&mut mailbox, rig, &a, miss, WcOpcode::CompSwap)?) == START + 2,
        "a failed compare-and-swap returned the wrong old value",
    )?;
    check(
        read_u64(region.buffer(), 8)? == added,
        "a failed compare-and-swap changed memory",
    )?;
    let hit = AtomicOp::CompareAndSwap {
        remote_addr,
        rkey,
        compare: START + 2,
        swap: 99,
    };
    check(
        order.value(atomic(&mut mailbox, rig, &a, hit, WcOpcode::CompSwap)?) == START + 2,
        "compare-and-swap returned the wrong old value",
    )?;
    check(
        order.value(read_u64(region.buffer(), 8)?) == 99,
        "compare-and-swap did not write the new value",
    )
}

/// A SEND that finds no receive posted is NAKed (RNR) and retried: it stays outstanding
/// until a receive is posted, then arrives.
fn rc_rnr_retry_then_delivery(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let (a, b) = rc_pair(rig)?;
    a.post_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 128, 8)?))?,
        SendOp::Send,
        0,
        128,
    )?;
    let early = mailbox.wait(SEND, &rig.cq, Duration::from_millis(50));
    check(
        matches!(early, Err(e) if e == timed_out()),
        "a SEND completed with no receive posted",
    )?;
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 128)?))?,
        0,
        128,
    )?;
    let sent = wait_ok(&mut mailbox, &rig.cq, SEND, WcOpcode::Send)?;
    let received = wait_recv(&mut mailbox, &rig.cq, RECV, 128)?;
    check(
        *bytes_of(&received, 0, 128)? == *bytes_of(&sent, 0, 128)?,
        "data after RNR retries differs",
    )
}

/// With no RNR retries allowed, a SEND that finds no receive fails with
/// `RnrRetryExceededError`.
fn rc_rnr_retry_exceeded(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let (a, _b) = rc_pair_on(rig, &rig.cq, 0)?;
    a.post_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 64, 8)?))?,
        SendOp::Send,
        0,
        64,
    )?;
    let status = wait(&mut mailbox, &rig.cq, SEND)?.completion().status;
    check(
        status == WcStatus::RnrRetryExceededError,
        "a SEND without retries did not fail with RNR retry exceeded",
    )
}

/// The GRH a UD receive starts with.
const GRH_LEN: usize = 40;
const QKEY: u32 = 0x1111_2222;

/// An address handle for the rig's own port, with a GRH (loopback).
pub(crate) fn loopback_ah(rig: &Rig) -> Outcome<Arc<AddressHandle>> {
    Ok(AddressHandle::new(&rig.pd, rig.port, &rig.ud_path)?)
}

fn ud_send_with_grh(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let ah = loopback_ah(rig)?;
    let a = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let b = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    a.modify_ud_to_rts(rig.port, 0, QKEY)?;
    b.modify_ud_to_rts(rig.port, 0, QKEY)?;
    // A receive the GRH and the payload fill exactly.
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, GRH_LEN + 200)?))?,
        0,
        GRH_LEN + 200,
    )?;
    let dest = UdDest {
        ah,
        remote_qpn: b.qp_num(),
        remote_qkey: QKEY,
    };
    a.post_ud_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 200, 17)?))?,
        &dest,
        0,
        200,
    )?;
    let sent = wait_ok(&mut mailbox, &rig.cq, SEND, WcOpcode::Send)?;
    let received = wait(&mut mailbox, &rig.cq, RECV)?;
    let r = received.completion();
    check(
        r.status == WcStatus::Success,
        "the UD receive completed with an error",
    )?;
    check(r.grh, "the UD receive has no GRH")?;
    check(
        r.byte_len as usize == GRH_LEN + 200,
        "the UD receive length is not GRH + payload",
    )?;
    check(
        r.src_qp == a.qp_num(),
        "the UD receive names the wrong source QP",
    )?;
    // The GRH's destination GID (its last 16 bytes) is the one the AH named.
    check(
        *bytes_of(&received, 24, 16)? == rig.gid.0[..],
        "the GRH does not carry the destination GID",
    )?;
    check(
        *bytes_of(&received, GRH_LEN, 200)? == *bytes_of(&sent, 0, 200)?,
        "the UD payload differs",
    )
}

/// A datagram carrying another Q_Key than the receiver's is dropped (IBA 10.2.5) while
/// its send succeeds; the next, with the right key, takes the receive.
fn ud_wrong_qkey_dropped(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let a = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let b = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    a.modify_ud_to_rts(rig.port, 0, QKEY)?;
    b.modify_ud_to_rts(rig.port, 0, QKEY)?;
    // Room to spare: the datagram need not fill the receive.
    b.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, GRH_LEN + 128)?))?,
        0,
        GRH_LEN + 128,
    )?;
    let mut dest = UdDest {
        ah: loopback_ah(rig)?,
        remote_qpn: b.qp_num(),
        // The high bit clear: a key of its own, not "the sender QP's" (IBA 10.2.5).
        remote_qkey: QKEY ^ 0x0101,
    };
    a.post_ud_send(
        mailbox.work_request(SEND, Some(patterned(&rig.device, 64, 29)?))?,
        &dest,
        0,
        64,
    )?;
    wait_ok(&mut mailbox, &rig.cq, SEND, WcOpcode::Send)?;
    dest.remote_qkey = QKEY;
    a.post_ud_send(
        mailbox.work_request(WRITE, Some(patterned(&rig.device, 64, 31)?))?,
        &dest,
        0,
        64,
    )?;
    let sent = wait_ok(&mut mailbox, &rig.cq, WRITE, WcOpcode::Send)?;
    let received = wait_recv(&mut mailbox, &rig.cq, RECV, GRH_LEN + 64)?;
    check(
        *bytes_of(&received, GRH_LEN, 64)? == *bytes_of(&sent, 0, 64)?,
        "the receive holds the datagram with the wrong Q_Key",
    )
}

fn ud_drain_with_sends_outstanding(rig: &Rig) -> CaseResult {
    // A receive posted and never matched, and sends to a QP number nobody has: dropping
    // the QP must hand all of them back (flushed or sent), the AH with them.
    let mut mailbox = Mailbox::new()?;
    {
        let a = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
        a.modify_ud_to_rts(rig.port, 0, QKEY)?;
        a.post_recv(
            mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, GRH_LEN + 64)?))?,
            0,
            GRH_LEN + 64,
        )?;
        let nowhere = UdDest {
            ah: loopback_ah(rig)?,
            remote_qpn: 0x00ff_fff0,
            remote_qkey: QKEY,
        };
        for tag in [SEND, WRITE] {
            a.post_ud_send(
                mailbox.work_request(tag, Some(patterned(&rig.device, 64, 1)?))?,
                &nowhere,
                0,
                64,
            )?;
        }
    }
    let recv = mailbox
        .try_take(RECV)?
        .ok_or(Failure::Check("the receive was not handed back"))?;
    check(
        recv.completion().status == WcStatus::WrFlushError,
        "the receive was not flushed",
    )?;
    check(
        mailbox.try_take(SEND)?.is_some() && mailbox.try_take(WRITE)?.is_some(),
        "a send was not handed back",
    )
}

/// RC traffic over a CQ that the IB core polls itself (softirq or workqueue): the WRs
/// come back from that context.
fn rc_over_cq_context(rig: &Rig, context: PollContext) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let cq = CompletionQueue::new(&rig.device, 128, context)?;
    let (a, b) = rc_pair_on(rig, &cq, RNR_FOREVER)?;
    let mut send = mailbox.work_request(SEND, Some(patterned(&rig.device, 4096, 21)?))?;
    let mut recv = mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 4096)?))?;
    // Twice, reposting the WRs that came back (a WR is reusable once it is handed back),
    // the second time with other bytes: the receive must hold the second message.
    for round in 0..2 {
        if round == 1 {
            let fresh = patterned(&rig.device, 4096, 99)?;
            let bytes = fresh.copy_out(0, 4096)?;
            send.buffer_mut()
                .ok_or(Failure::Check("the SEND came back without its buffer"))?
                .write(0, &bytes)?;
        }
        b.post_recv(recv, 0, 4096)?;
        a.post_send(send, SendOp::Send, 0, 4096)?;
        send = wait_ok(&mut mailbox, &cq, SEND, WcOpcode::Send)?;
        recv = wait_recv(&mut mailbox, &cq, RECV, 4096)?;
        check(
            *bytes_of(&recv, 0, 4096)? == *bytes_of(&send, 0, 4096)?,
            "received data differs from what was sent",
        )?;
    }
    Ok(())
}

/// A post the QP cannot take hands the WR back with its buffer, and nothing is counted
/// as posted.
fn rejected_post_hands_the_wr_back(rig: &Rig) -> CaseResult {
    let mailbox = Mailbox::new()?;
    let (a, _b) = rc_pair(rig)?;
    let wr = mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 64)?))?;
    // 64 bytes at offset 32 run past the 64-byte buffer.
    let Err(rejected) = a.post_recv(wr, 32, 64) else {
        return Err(Failure::Check(
            "a receive past the end of its buffer was posted",
        ));
    };
    check(
        rejected.error == EINVAL,
        "an out-of-bounds receive was not refused with EINVAL",
    )?;
    check(
        rejected.wr.data().tag() == RECV && rejected.wr.buffer().is_some(),
        "the refused WR came back without its buffer",
    )?;
    check(a.outstanding() == 0, "a refused WR was counted as posted")?;
    // The same WR, within bounds, is taken.
    a.post_recv(rejected.wr, 0, 64)?;
    check(a.outstanding() == 1, "a posted WR was not counted")
}

/// A WR built for one transport is refused on the other (it would make the driver read
/// fields the WR does not have), and comes back.
fn wrong_qp_type_refused(rig: &Rig) -> CaseResult {
    let mailbox = Mailbox::new()?;
    let ud = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    ud.modify_ud_to_rts(rig.port, 0, QKEY)?;
    let (rc, _peer) = rc_pair(rig)?;
    let wr = mailbox.work_request(SEND, Some(patterned(&rig.device, 64, 4)?))?;
    let Err(rejected) = ud.post_send(wr, SendOp::Send, 0, 64) else {
        return Err(Failure::Check("an RC send was posted on a UD QP"));
    };
    check(
        rejected.error == EINVAL,
        "an RC send on a UD QP was not refused with EINVAL",
    )?;
    let dest = UdDest {
        ah: loopback_ah(rig)?,
        remote_qpn: ud.qp_num(),
        remote_qkey: QKEY,
    };
    let Err(rejected) = rc.post_ud_send(rejected.wr, &dest, 0, 64) else {
        return Err(Failure::Check("a UD send was posted on an RC QP"));
    };
    check(
        rejected.error == EINVAL,
        "a UD send on an RC QP was not refused with EINVAL",
    )?;
    check(
        rc.outstanding() == 0 && ud.outstanding() == 0,
        "a refused WR was counted as posted",
    )
}

/// QPs that never left RESET, or went back to it, are dropped without a drain (RESET to
/// ERR is not a transition); one in INIT with receives posted drains them.
fn qp_dropped_in_reset_and_init(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let fresh = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let fresh_ud = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let (mut a, _b) = rc_pair(rig)?;
    a.reset()?;
    let in_init = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    in_init.modify_to_init(&InitAttr {
        port: rig.port,
        pkey_index: 0,
        remote_access: READ_WRITE,
    })?;
    in_init.post_recv(
        mailbox.work_request(RECV, Some(DmaBuffer::new(&rig.device, 64)?))?,
        0,
        64,
    )?;
    drop((fresh, fresh_ud, a, in_init));
    let recv = mailbox.try_take(RECV)?.ok_or(Failure::Check(
        "a receive posted in INIT was not handed back",
    ))?;
    check(
        recv.completion().status == WcStatus::WrFlushError,
        "a receive posted in INIT was not flushed",
    )
}

/// Registering a region again gives it a new key: the old one is refused, the new one
/// works.
fn frwr_reregistration(rig: &Rig) -> CaseResult {
    let mut mailbox = Mailbox::new()?;
    let region = zeroed_region(rig, &rig.pd)?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let old_key = region.rkey();
    b.post_local_inv(mailbox.work_request(INV, None)?, old_key)?;
    wait_ok(&mut mailbox, &rig.cq, INV, WcOpcode::LocalInvalidate)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let new_key = region.rkey();
    check(new_key != old_key, "re-registration kept the old key")?;
    check(
        write_status(&mut mailbox, rig, &a, (region.iova(), new_key), 256, 5)? == WcStatus::Success,
        "a write with the new key failed",
    )?;
    check(
        *region.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 5)?.copy_out(0, 256)?,
        "the write with the new key did not land",
    )?;
    check(
        write_status(&mut mailbox, rig, &a, (region.iova(), old_key), 256, 77)?
            == WcStatus::RemoteAccessError,
        "the retired key was accepted",
    )?;
    check(
        *region.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 5)?.copy_out(0, 256)?,
        "a write with the retired key landed",
    )
}

// RDMA CM: both ends run here, over the device's own IPv4 address (RoCE puts it in the
// GID table, and so does the fabric; an InfiniBand port's is its IPoIB interface's, which
// the rig is given).

/// How long any one RDMA CM step may take under QEMU TCG.
const CM_STEP: Duration = Duration::from_secs(5);

/// The first IPv4 address in the port's GID table, else the one the rig was given.
fn local_ipv4(rig: &Rig) -> Outcome<Ipv4Addr> {
    let entries = rig.device.query_port(rig.port)?.gid_tbl_len.min(32);
    (0..entries)
        .filter_map(|index| rig.device.query_gid(rig.port, index).ok())
        .find_map(|gid| gid.ipv4())
        .or(rig.cm_ipv4)
        .ok_or(Failure::Check(
            "the port has no IPv4 GID and no IPoIB address was given",
        ))
}

/// The next event of `id`; `waiting_for` names it for the failure if none comes.
fn event(id: &CmId, waiting_for: &'static str) -> Outcome<CmEvent> {
    id.next_event(CM_STEP).map_err(|error| {
        if error == timed_out() {
            Failure::Check(waiting_for)
        } else {
            Failure::Verb(error)
        }
    })
}

fn param(private_data: &[u8]) -> ConnParam<'_> {
    ConnParam {
        private_data,
        responder_resources: 1,
        initiator_depth: 1,
        retry_count: 7,
        rnr_retry_count: 7,
    }
}

/// A listening id on `addr`.
pub(crate) fn listener(addr: SocketAddrV4) -> Outcome<CmId> {
    let id = CmId::new_rc()?;
    id.bind(addr)?;
    id.listen(4)?;
    Ok(id)
}

/// An id with its address and route resolved to `addr` and a QP on the rig.
fn resolved(rig: &Rig, addr: SocketAddrV4) -> Outcome<CmId> {
    let mut id = CmId::new_rc()?;
    id.resolve_addr(addr, CM_STEP)?;
    check(
        matches!(
            event(&id, "no ADDR_RESOLVED within 5 s")?,
            CmEvent::AddrResolved
        ),
        "address resolution failed",
    )?;
    id.resolve_route(CM_STEP)?;
    check(
        matches!(
            event(&id, "no ROUTE_RESOLVED within 5 s")?,
            CmEvent::RouteResolved
        ),
        "route resolution failed",
    )?;
    check(
        id.device().is_some_and(|device| device.is(&rig.device)),
        "the CM chose another device",
    )?;
    id.create_qp(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    Ok(id)
}

/// The connect request a listener gets, checked to carry `private_data`.
fn request(listener: &CmId, private_data: &[u8]) -> Outcome<CmId> {
    let CmEvent::ConnectRequest(request) = event(listener, "no CONNECT_REQUEST within 5 s")? else {
        return Err(Failure::Check("the listener got no connect request"));
    };
    check_private_data(
        &request.private_data,
        private_data,
        REQ_PRIVATE,
        "the request's private data is not what was sent, padded",
    )?;
    Ok(request.id)
}

/// The private data the IB CM carries after RDMA CM's header: a request's, a reply's, a
/// reject's (`IB_CM_*_PRIVATE_DATA_SIZE` less the 36-byte `cma_hdr` in a request).
const REQ_PRIVATE: usize = 56;
const REP_PRIVATE: usize = 196;
const REJ_PRIVATE: usize = 148;

/// Private data arrives padded with zeros to the CM message's size.
fn check_private_data(received: &[u8], sent: &[u8], size: usize, what: &'static str) -> CaseResult {
    check(
        received.len() == size
            && received.starts_with(sent)
            && received[sent.len()..].iter().all(|&b| b == 0),
        what,
    )
}

fn cm_connect_send_disconnect(rig: &Rig, port: u16) -> CaseResult {
    let addr = SocketAddrV4::new(local_ipv4(rig)?, port);
    let mut mailbox = Mailbox::new()?;
    let listen = listener(addr)?;
    let client = resolved(rig, addr)?;
    client.connect(&param(b"tilde-cm hello"))?;
    let mut server = request(&listen, b"tilde-cm hello")?;
    server.create_qp(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let server_qp = server
        .qp()
        .ok_or(Failure::Check("the accepted id has no QP"))?;
    server_qp.post_recv(
        mailbox.work_request(2, Some(DmaBuffer::new(&rig.device, 64)?))?,
        0,
        64,
    )?;
    server.accept(&param(b"tilde-cm welcome"))?;
    let CmEvent::Established { private_data } =
        event(&client, "no ESTABLISHED on the connecting side within 5 s")?
    else {
        return Err(Failure::Check("the connecting side was not established"));
    };
    check_private_data(
        &private_data,
        b"tilde-cm welcome",
        REP_PRIVATE,
        "the reply's private data is not what was sent, padded",
    )?;
    check(
        matches!(
            event(&server, "no ESTABLISHED on the accepting side within 5 s")?,
            CmEvent::Established { .. }
        ),
        "the accepting side was not established",
    )?;
    let client_qp = client
        .qp()
        .ok_or(Failure::Check("the connecting id has no QP"))?;
    client_qp.post_send(
        mailbox.work_request(1, Some(patterned(&rig.device, 64, 3)?))?,
        SendOp::Send,
        0,
        64,
    )?;
    let sent = mailbox.wait(1, &rig.cq, CM_STEP)?;
    let received = mailbox.wait(2, &rig.cq, CM_STEP)?;
    check(
        sent.completion().status == WcStatus::Success,
        "the SEND over the CM connection failed",
    )?;
    check(
        received.completion().opcode == Some(WcOpcode::Recv),
        "the receive over the CM connection failed",
    )?;
    let (Some(sent), Some(received)) = (sent.buffer(), received.buffer()) else {
        return Err(Failure::Check(
            "a work request came back without its buffer",
        ));
    };
    check(
        *received.copy_out(0, 64)? == *sent.copy_out(0, 64)?,
        "data over the CM connection differs",
    )?;
    // The CM grants the peer remote access (the responder resources asked for): an RDMA
    // WRITE into a region the accepting side registers lands.
    let region = MemoryRegion::new(&rig.pd, 1, DmaBuffer::new(&rig.device, 256)?, 0, 256)?;
    let region = register(&mut mailbox, &rig.cq, server_qp, region, READ_WRITE)?;
    let key = (region.iova(), region.rkey());
    check(
        write_status(&mut mailbox, rig, client_qp, key, 256, 43)? == WcStatus::Success,
        "an RDMA WRITE over the CM connection failed",
    )?;
    check(
        *region.buffer().copy_out(0, 256)? == *patterned(&rig.device, 256, 43)?.copy_out(0, 256)?,
        "the RDMA WRITE over the CM connection did not land",
    )?;
    // The CM's disconnect handshake: DREQ, the peer's DISCONNECTED, its own disconnect
    // (the DREP), then DISCONNECTED on the side that began.
    client.disconnect()?;
    check(
        matches!(
            event(&server, "no DISCONNECTED on the peer within 5 s")?,
            CmEvent::Disconnected
        ),
        "the peer got no DISCONNECTED",
    )?;
    server.disconnect()?;
    check(
        matches!(
            event(
                &client,
                "no DISCONNECTED on the disconnecting side within 5 s"
            )?,
            CmEvent::Disconnected
        ),
        "the disconnecting side got no DISCONNECTED",
    )
}

fn cm_reject(rig: &Rig, port: u16) -> CaseResult {
    let addr = SocketAddrV4::new(local_ipv4(rig)?, port);
    let listen = listener(addr)?;
    let client = resolved(rig, addr)?;
    client.connect(&param(b"tilde-cm please"))?;
    let refused = request(&listen, b"tilde-cm please")?;
    refused.reject(b"tilde-cm no")?;
    let CmEvent::Rejected {
        reason,
        private_data,
    } = event(&client, "no REJECTED within 5 s")?
    else {
        return Err(Failure::Check(
            "the connecting side was not told of the reject",
        ));
    };
    // IB_CM_REJ_CONSUMER_DEFINED: the peer's own decision.
    check(
        reason == 28,
        "the reject does not carry the consumer-defined reason",
    )?;
    check_private_data(
        &private_data,
        b"tilde-cm no",
        REJ_PRIVATE,
        "the reject's private data is not what was sent, padded",
    )
}
