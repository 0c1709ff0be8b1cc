// SPDX-License-Identifier: GPL-2.0
//! `tilde_verbs_conformance.ko`: the verbs conformance suite.
//!
//! Runs each case against the RDMA device named by the `device` parameter and prints one
//! result line per case (`tilde_conformance: <device>: <case>: PASS|FAIL ...`), which the
//! VM scenario asserts. The suite is device-agnostic: it runs over rxe today and is what
//! tilde's own mlx4 driver will be run against.

use kernel::prelude::*;
use kernel::time::{delay::fsleep, Delta};
use rdma_core::{
    ah::AddressHandle,
    client::{Client, Registration},
    cq::{CompletionQueue, CompletionSlot, PollContext},
    device::Device,
    dma::DmaBuffer,
    mr::MemoryRegion,
    pd::ProtectionDomain,
    qp::{AtomicOp, InitAttr, QpCaps, QueuePair, RemoteAccess, RtrAttr, RtsAttr, SendOp, UdDest},
    verbs::{Gid, Mtu, WcOpcode, WcStatus, WorkCompletion},
};

module! {
    type: Conformance,
    name: "tilde_verbs_conformance",
    authors: ["tilde developers"],
    description: "tilde verbs conformance suite (Rust)",
    license: "GPL",
    params: {
        bench: u32 {
            default: 0,
            description: "0 runs the conformance cases; N runs the safe-vs-raw benchmark with N operations per loop instead",
        },
    },
}

mod bench;

mod param {
    use kernel::str::{CStr, CStrExt};

    extern "C" {
        fn tilde_conformance_device() -> *const kernel::ffi::c_char;
    }

    /// The `device` parameter (see `conformance_param.c`).
    pub(crate) fn device() -> &'static CStr {
        // SAFETY: the C side returns the charp parameter, a NUL-terminated string that
        // lives (read-only, mode 0444) as long as this module.
        unsafe { CStr::from_char_ptr(tilde_conformance_device()) }
    }
}

/// Finds the device under test when the IB core reports it, and runs the suite on it.
struct Suite;

impl Client for Suite {
    type DeviceData = ();

    fn add(device: &Device) -> Result<()> {
        let name = device.name();
        if name.as_str().as_bytes() != param::device().to_bytes() {
            return Ok(());
        }
        let ops = *module_parameters::bench.value();
        if ops > 0 {
            let port = *device.ports().start();
            match setup(device, port) {
                Ok(rig) => bench::run(&rig, ops),
                Err(error) => pr_info!("{}: bench: setup failed: {:?}\n", name, error),
            }
            return Ok(());
        }
        let mut tally = Tally::default();
        run_suite(device, &mut tally);
        pr_info!("{}: summary: {} passed, {} failed\n", name, tally.passed, tally.failed);
        Ok(())
    }

    fn remove(_device: &Device, _data: ()) {}
}

/// Why a case failed.
pub(crate) enum Failure {
    /// A verb returned an error.
    Verb(Error),
    /// A check on the results did not hold.
    Check(&'static str),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Verb(error)
    }
}

impl From<kernel::alloc::AllocError> for Failure {
    fn from(_: kernel::alloc::AllocError) -> Self {
        Self::Verb(ENOMEM)
    }
}

type CaseResult = core::result::Result<(), Failure>;

fn check(condition: bool, what: &'static str) -> CaseResult {
    if condition {
        Ok(())
    } else {
        Err(Failure::Check(what))
    }
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    /// Prints the one result line per case that the scenario asserts.
    fn record(&mut self, device: &Device, case: &str, result: CaseResult) {
        let name = device.name();
        match result {
            Ok(()) => {
                self.passed += 1;
                pr_info!("{}: {}: PASS\n", name, case);
            }
            Err(Failure::Verb(error)) => {
                self.failed += 1;
                pr_info!("{}: {}: FAIL: verb error {:?}\n", name, case, error);
            }
            Err(Failure::Check(what)) => {
                self.failed += 1;
                pr_info!("{}: {}: FAIL: {}\n", name, case, what);
            }
        }
    }
}

/// What every case needs: the port under test, its GID, a PD and a CQ.
pub(crate) struct Rig<'d> {
    pub(crate) device: &'d Device,
    port: u32,
    gid: Gid,
    pub(crate) pd: ProtectionDomain<'d>,
    pub(crate) cq: CompletionQueue<'d>,
}

fn run_suite(device: &Device, tally: &mut Tally) {
    let port = *device.ports().start();
    let rig = match setup(device, port) {
        Ok(rig) => rig,
        Err(error) => {
            tally.record(device, "setup", Err(Failure::Verb(error)));
            return;
        }
    };
    tally.record(device, "device_query", device_query(&rig));
    tally.record(device, "rc_connect", rc_connect(&rig));
    for size in [1usize, 64, 4096, 65536, 1 << 20] {
        let mut case = [0u8; 32];
        let label = case_name(&mut case, "rc_send_recv_", size);
        tally.record(device, label, rc_send_recv(&rig, size));
    }
    tally.record(device, "rc_send_with_imm", rc_send_with_imm(&rig));
    tally.record(device, "rc_drain_flushes_posted_receives", rc_drain_flushes(&rig));
    tally.record(device, "frwr_rdma_write", frwr_rdma_write(&rig));
    tally.record(device, "frwr_rdma_read", frwr_rdma_read(&rig));
    tally.record(device, "frwr_invalidate_refuses_access", frwr_invalidate_refuses_access(&rig));
    tally.record(device, "rc_bad_rkey_then_reset_and_reuse", rc_bad_rkey_then_reset_and_reuse(&rig));
    tally.record(device, "rc_atomics", rc_atomics(&rig));
    tally.record(device, "ud_send_with_grh", ud_send_with_grh(&rig));
    tally.record(device, "ud_drain_with_sends_outstanding", ud_drain_with_sends_outstanding(&rig));
    tally.record(device, "rc_softirq_cq", rc_over_cq_context(&rig, PollContext::Softirq));
    tally.record(device, "rc_workqueue_cq", rc_over_cq_context(&rig, PollContext::Workqueue));
    tally.record(device, "slot_reuse_refused", slot_reuse_refused(&rig));
    tally.record(device, "wrong_qp_type_refused", wrong_qp_type_refused(&rig));
    tally.record(device, "qp_dropped_in_reset", qp_dropped_in_reset(&rig));
    tally.record(device, "frwr_reregistration_retires_the_old_key", frwr_reregistration(&rig));
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

pub(crate) fn setup(device: &Device, port: u32) -> Result<Rig<'_>> {
    let gid = device.query_gid(port, 0)?;
    let pd = ProtectionDomain::new(device)?;
    let cq = CompletionQueue::new(device, 256)?;
    Ok(Rig { device, port, gid, pd, cq })
}

fn device_query(rig: &Rig<'_>) -> CaseResult {
    let attr = rig.device.query_port(rig.port)?;
    check(attr.gid_tbl_len > 0, "the port has no GID table")?;
    check(!rig.gid.is_zero(), "GID 0 is unset")?;
    pr_info!("{}: port {} gid[0] {}\n", rig.device.name(), rig.port, rig.gid);
    Ok(())
}

const CAPS: QpCaps = QpCaps { max_send_wr: 16, max_recv_wr: 16, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0 };

/// Brings `qp` to RTS towards `peer` over the rig's port and GID (loopback).
fn connect(rig: &Rig<'_>, qp: &mut QueuePair<'_>, peer: u32) -> Result {
    let all = RemoteAccess { read: true, write: true, atomic: true };
    qp.modify_to_init(&InitAttr { port: rig.port, pkey_index: 0, remote_access: all })?;
    qp.modify_to_rtr(&RtrAttr {
        port: rig.port,
        path_mtu: Mtu::Mtu1024,
        dest_qp_num: peer,
        rq_psn: 0,
        max_dest_rd_atomic: 1,
        min_rnr_timer: 12,
        sgid_index: 0,
        dgid: rig.gid,
        hop_limit: 64,
        dmac: rig.gid.link_local_mac().ok_or(EINVAL)?,
    })?;
    qp.modify_to_rts(&RtsAttr { sq_psn: 0, timeout: 14, retry_cnt: 7, rnr_retry: 7, max_rd_atomic: 1 })
}

/// Two RC QPs on the rig, connected to each other.
pub(crate) fn rc_pair<'a>(rig: &'a Rig<'_>) -> Result<(QueuePair<'a>, QueuePair<'a>)> {
    let mut a = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let mut b = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let (a_num, b_num) = (a.qp_num(), b.qp_num());
    connect(rig, &mut a, b_num)?;
    connect(rig, &mut b, a_num)?;
    Ok((a, b))
}

/// Polls the CQ until `slot` has its completion; rxe completes from its own tasks, so
/// the wait sleeps between polls. Ten seconds is ample under QEMU TCG.
fn wait(rig: &Rig<'_>, slot: &CompletionSlot) -> core::result::Result<WorkCompletion, Failure> {
    wait_on(&rig.cq, slot)
}

/// As [`wait`], on any CQ: a direct one is polled, the others deliver by themselves.
fn wait_on(cq: &CompletionQueue<'_>, slot: &CompletionSlot) -> core::result::Result<WorkCompletion, Failure> {
    for _ in 0..20_000 {
        cq.poll(64);
        if let Some(completion) = slot.take() {
            return Ok(completion);
        }
        fsleep(Delta::from_micros(500));
    }
    Err(Failure::Check("no completion within 10 s"))
}

fn rc_connect(rig: &Rig<'_>) -> CaseResult {
    let (a, b) = rc_pair(rig)?;
    check(a.qp_num() != b.qp_num(), "two QPs with one number")
}

/// The byte at `i` of the send pattern.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) + 7) as u8
}

fn rc_send_recv(rig: &Rig<'_>, size: usize) -> CaseResult {
    // A different offset per size, so a receive buffer left over from a smaller case
    // cannot pass for this one.
    let offset = size % 251;
    let mut send = DmaBuffer::new(rig.device, size + offset)?;
    let mut bytes = KVec::with_capacity(size + offset, GFP_KERNEL)?;
    for i in 0..size + offset {
        bytes.push(pattern(i), GFP_KERNEL)?;
    }
    send.write(0, &bytes)?;
    let recv = DmaBuffer::new(rig.device, size)?;
    let (send_done, recv_done) = (CompletionSlot::new(), CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_recv(&recv_done, &recv, 0, size)?;
    a.post_send(&send_done, SendOp::Send, &send, offset, size)?;
    let sent = wait(rig, &send_done)?;
    let received = wait(rig, &recv_done)?;
    check(sent.status == WcStatus::Success, "send completed with an error")?;
    check(sent.opcode == Some(WcOpcode::Send), "send completion has the wrong opcode")?;
    check(received.status == WcStatus::Success, "receive completed with an error")?;
    check(received.opcode == Some(WcOpcode::Recv), "receive completion has the wrong opcode")?;
    check(received.byte_len as usize == size, "receive byte_len is not the size sent")?;
    check(received.qp_num == b.qp_num(), "receive completion names the wrong QP")?;
    check(received.imm.is_none(), "a plain SEND arrived with immediate data")?;
    check(*recv.copy_out(0, size)? == *send.copy_out(offset, size)?, "received data differs from what was sent")
}

fn rc_send_with_imm(rig: &Rig<'_>) -> CaseResult {
    let mut send = DmaBuffer::new(rig.device, 64)?;
    send.write(0, b"immediate")?;
    let recv = DmaBuffer::new(rig.device, 64)?;
    let (send_done, recv_done) = (CompletionSlot::new(), CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_recv(&recv_done, &recv, 0, 64)?;
    a.post_send(&send_done, SendOp::SendWithImm(0x1234_5678), &send, 0, 9)?;
    check(wait(rig, &send_done)?.status == WcStatus::Success, "send completed with an error")?;
    let received = wait(rig, &recv_done)?;
    check(received.status == WcStatus::Success, "receive completed with an error")?;
    check(received.imm == Some(0x1234_5678), "immediate data lost or byte-swapped")?;
    check(received.byte_len == 9, "receive byte_len is not the size sent")?;
    check(*recv.copy_out(0, 9)? == *b"immediate", "received data differs from what was sent")
}

fn rc_drain_flushes(rig: &Rig<'_>) -> CaseResult {
    let recv = DmaBuffer::new(rig.device, 256)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    {
        let (a, _b) = rc_pair(rig)?;
        for (i, slot) in slots.iter().enumerate() {
            a.post_recv(slot, &recv, i * 64, 64)?;
        }
        // Dropping the QPs drains them: each posted receive must complete, flushed.
    }
    for slot in &slots {
        let completion = slot.take().ok_or(Failure::Check("a posted receive never completed"))?;
        check(completion.status == WcStatus::WrFlushError, "a drained receive did not flush")?;
    }
    Ok(())
}
rdma_core::ib_client!(Suite, c"tilde_conformance");

struct Conformance {
    _registration: Registration<Suite>,
}

impl kernel::Module for Conformance {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let registration = Registration::register()?;
        Ok(Self { _registration: registration })
    }
}

/// A buffer of `len` bytes filled with the send pattern from `start`.
pub(crate) fn patterned<'d>(device: &'d Device, len: usize, start: usize) -> core::result::Result<DmaBuffer<'d>, Failure> {
    let mut buffer = DmaBuffer::new(device, len)?;
    let mut bytes = KVec::with_capacity(len, GFP_KERNEL)?;
    for i in 0..len {
        bytes.push(pattern(start + i), GFP_KERNEL)?;
    }
    buffer.write(0, &bytes)?;
    Ok(buffer)
}

const RDMA_LEN: usize = 8192;
/// Pages an MR over `RDMA_LEN` bytes may need (an unaligned buffer spans one more).
const RDMA_PAGES: u32 = 4;
pub(crate) const READ_WRITE: RemoteAccess = RemoteAccess { read: true, write: true, atomic: false };

/// Waits for `slot` and checks that it succeeded with `opcode`.
fn wait_ok(rig: &Rig<'_>, slot: &CompletionSlot, opcode: WcOpcode) -> CaseResult {
    let completion = wait(rig, slot)?;
    check(completion.status == WcStatus::Success, "a work request completed with an error")?;
    check(completion.opcode == Some(opcode), "a completion has the wrong opcode")
}

fn frwr_rdma_write(rig: &Rig<'_>) -> CaseResult {
    let local = patterned(rig.device, RDMA_LEN, 3)?;
    let target = DmaBuffer::new(rig.device, RDMA_LEN)?;
    let mr = MemoryRegion::new(&rig.pd, RDMA_PAGES, &target, 0, RDMA_LEN)?;
    let (reg_done, write_done) = (CompletionSlot::new(), CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_reg_mr(&reg_done, &mr, READ_WRITE)?;
    wait_ok(rig, &reg_done, WcOpcode::RegMr)?;
    let write = SendOp::RdmaWrite { remote_addr: mr.iova(), rkey: mr.rkey() };
    a.post_send(&write_done, write, &local, 0, RDMA_LEN)?;
    wait_ok(rig, &write_done, WcOpcode::RdmaWrite)?;
    check(*target.copy_out(0, RDMA_LEN)? == *local.copy_out(0, RDMA_LEN)?, "the written region differs from the source")
}

fn frwr_rdma_read(rig: &Rig<'_>) -> CaseResult {
    let source = patterned(rig.device, RDMA_LEN, 11)?;
    let local = DmaBuffer::new(rig.device, RDMA_LEN)?;
    let mr = MemoryRegion::new(&rig.pd, RDMA_PAGES, &source, 0, RDMA_LEN)?;
    let (reg_done, read_done) = (CompletionSlot::new(), CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_reg_mr(&reg_done, &mr, READ_WRITE)?;
    wait_ok(rig, &reg_done, WcOpcode::RegMr)?;
    // Read from 100 bytes into the region, so the iova arithmetic is exercised too.
    let read = SendOp::RdmaRead { remote_addr: mr.iova() + 100, rkey: mr.rkey() };
    a.post_send(&read_done, read, &local, 0, RDMA_LEN - 100)?;
    wait_ok(rig, &read_done, WcOpcode::RdmaRead)?;
    check(
        *local.copy_out(0, RDMA_LEN - 100)? == *source.copy_out(100, RDMA_LEN - 100)?,
        "the data read differs from the region",
    )
}

fn frwr_invalidate_refuses_access(rig: &Rig<'_>) -> CaseResult {
    let local = patterned(rig.device, 256, 5)?;
    let target = DmaBuffer::new(rig.device, RDMA_LEN)?;
    let mr = MemoryRegion::new(&rig.pd, RDMA_PAGES, &target, 0, RDMA_LEN)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    let (a, b) = rc_pair(rig)?;
    b.post_reg_mr(&slots[0], &mr, READ_WRITE)?;
    wait_ok(rig, &slots[0], WcOpcode::RegMr)?;
    let write = SendOp::RdmaWrite { remote_addr: mr.iova(), rkey: mr.rkey() };
    a.post_send(&slots[1], write, &local, 0, 256)?;
    wait_ok(rig, &slots[1], WcOpcode::RdmaWrite)?;
    b.post_local_inv(&slots[2], mr.rkey())?;
    wait_ok(rig, &slots[2], WcOpcode::LocalInvalidate)?;
    a.post_send(&slots[3], write, &local, 0, 256)?;
    let refused = wait(rig, &slots[3])?;
    check(
        refused.status == WcStatus::RemoteAccessError,
        "a write to an invalidated region did not fail with a remote access error",
    )
}

fn rc_bad_rkey_then_reset_and_reuse(rig: &Rig<'_>) -> CaseResult {
    let local = patterned(rig.device, 256, 9)?;
    let target = DmaBuffer::new(rig.device, RDMA_LEN)?;
    let recv = DmaBuffer::new(rig.device, 256)?;
    let mr = MemoryRegion::new(&rig.pd, RDMA_PAGES, &target, 0, RDMA_LEN)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    let (mut a, mut b) = rc_pair(rig)?;
    b.post_reg_mr(&slots[0], &mr, READ_WRITE)?;
    wait_ok(rig, &slots[0], WcOpcode::RegMr)?;
    // A key no region has: the responder refuses, the requester's QP goes to error.
    let bogus = SendOp::RdmaWrite { remote_addr: mr.iova(), rkey: mr.rkey() ^ 0x8000_0000 };
    a.post_send(&slots[1], bogus, &local, 0, 256)?;
    let refused = wait(rig, &slots[1])?;
    check(refused.status == WcStatus::RemoteAccessError, "a bad rkey did not give a remote access error")?;
    // Reset both ends and bring them up again: the same QPs carry traffic.
    a.modify_to_reset()?;
    b.modify_to_reset()?;
    let (a_num, b_num) = (a.qp_num(), b.qp_num());
    connect(rig, &mut a, b_num)?;
    connect(rig, &mut b, a_num)?;
    b.post_recv(&slots[2], &recv, 0, 256)?;
    a.post_send(&slots[3], SendOp::Send, &local, 0, 256)?;
    wait_ok(rig, &slots[3], WcOpcode::Send)?;
    wait_ok(rig, &slots[2], WcOpcode::Recv)?;
    check(*recv.copy_out(0, 256)? == *local.copy_out(0, 256)?, "data after reset and reuse differs")
}

/// The 8 bytes at `offset` of `buffer`, in the CPU's byte order.
fn read_u64(buffer: &DmaBuffer<'_>, offset: usize) -> core::result::Result<u64, Failure> {
    let bytes = &*buffer.copy_out(offset, 8)?;
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| Failure::Check("short read"))?;
    Ok(u64::from_ne_bytes(bytes))
}

fn rc_atomics(rig: &Rig<'_>) -> CaseResult {
    let mut target = DmaBuffer::new(rig.device, 64)?;
    target.write(8, &40u64.to_ne_bytes())?;
    let old = DmaBuffer::new(rig.device, 64)?;
    let mr = MemoryRegion::new(&rig.pd, 1, &target, 0, 64)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    let (a, b) = rc_pair(rig)?;
    let atomic = RemoteAccess { read: true, write: true, atomic: true };
    b.post_reg_mr(&slots[0], &mr, atomic)?;
    wait_ok(rig, &slots[0], WcOpcode::RegMr)?;
    let (remote_addr, rkey) = (mr.iova() + 8, mr.rkey());
    // 40 + 2 = 42, returning 40.
    a.post_atomic(&slots[1], AtomicOp::FetchAndAdd { remote_addr, rkey, add: 2 }, &old, 0)?;
    wait_ok(rig, &slots[1], WcOpcode::FetchAdd)?;
    check(read_u64(&old, 0)? == 40, "fetch-and-add returned the wrong old value")?;
    // A compare that fails leaves 42 and returns it; one that matches writes 99.
    let miss = AtomicOp::CompareAndSwap { remote_addr, rkey, compare: 7, swap: 99 };
    a.post_atomic(&slots[2], miss, &old, 8)?;
    wait_ok(rig, &slots[2], WcOpcode::CompSwap)?;
    check(read_u64(&old, 8)? == 42, "a failed compare-and-swap returned the wrong old value")?;
    check(read_u64(&target, 8)? == 42, "a failed compare-and-swap changed memory")?;
    let hit = AtomicOp::CompareAndSwap { remote_addr, rkey, compare: 42, swap: 99 };
    a.post_atomic(&slots[3], hit, &old, 16)?;
    wait_ok(rig, &slots[3], WcOpcode::CompSwap)?;
    check(read_u64(&old, 16)? == 42, "compare-and-swap returned the wrong old value")?;
    check(read_u64(&target, 8)? == 99, "compare-and-swap did not write the new value")
}

/// The GRH a UD receive starts with.
const GRH_LEN: usize = 40;

fn ud_send_with_grh(rig: &Rig<'_>) -> CaseResult {
    const QKEY: u32 = 0x1111_2222;
    let message = patterned(rig.device, 200, 17)?;
    let recv = DmaBuffer::new(rig.device, GRH_LEN + 256)?;
    let dmac = rig.gid.link_local_mac().ok_or(Failure::Check("GID 0 is not link-local"))?;
    let ah = AddressHandle::new(&rig.pd, rig.port, 0, rig.gid, dmac)?;
    let (send_done, recv_done) = (CompletionSlot::new(), CompletionSlot::new());
    let mut a = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let mut b = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    a.modify_ud_to_rts(rig.port, 0, QKEY)?;
    b.modify_ud_to_rts(rig.port, 0, QKEY)?;
    b.post_recv(&recv_done, &recv, 0, GRH_LEN + 256)?;
    let dest = UdDest { ah: &ah, remote_qpn: b.qp_num(), remote_qkey: QKEY };
    a.post_ud_send(&send_done, &dest, &message, 0, 200)?;
    wait_ok(rig, &send_done, WcOpcode::Send)?;
    let received = wait(rig, &recv_done)?;
    check(received.status == WcStatus::Success, "the UD receive completed with an error")?;
    check(received.grh, "the UD receive has no GRH on RoCE")?;
    check(received.byte_len as usize == GRH_LEN + 200, "the UD receive length is not GRH + payload")?;
    check(received.src_qp == a.qp_num(), "the UD receive names the wrong source QP")?;
    // The GRH's destination GID (its last 16 bytes) is the one the AH named.
    check(*recv.copy_out(24, 16)? == rig.gid.0[..], "the GRH does not carry the destination GID")?;
    check(*recv.copy_out(GRH_LEN, 200)? == *message.copy_out(0, 200)?, "the UD payload differs")
}

fn ud_drain_with_sends_outstanding(rig: &Rig<'_>) -> CaseResult {
    // A receive posted and never matched, and sends to a QP number nobody has: dropping
    // the QP must complete all of them (flushed or sent) without the generic drain.
    const QKEY: u32 = 0x1111_2222;
    let message = patterned(rig.device, 64, 1)?;
    let recv = DmaBuffer::new(rig.device, GRH_LEN + 64)?;
    let dmac = rig.gid.link_local_mac().ok_or(Failure::Check("GID 0 is not link-local"))?;
    let ah = AddressHandle::new(&rig.pd, rig.port, 0, rig.gid, dmac)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    {
        let mut a = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
        a.modify_ud_to_rts(rig.port, 0, QKEY)?;
        a.post_recv(&slots[0], &recv, 0, GRH_LEN + 64)?;
        let nowhere = UdDest { ah: &ah, remote_qpn: 0x00ff_fff0, remote_qkey: QKEY };
        a.post_ud_send(&slots[1], &nowhere, &message, 0, 64)?;
        a.post_ud_send(&slots[2], &nowhere, &message, 0, 64)?;
    }
    check(slots[0].take().map(|c| c.status) == Some(WcStatus::WrFlushError), "the receive was not flushed")?;
    check(slots[1].take().is_some() && slots[2].take().is_some(), "a send never completed")
}

/// RC traffic over a CQ that the IB core polls itself (softirq or workqueue): the
/// completions reach their slots from that context.
fn rc_over_cq_context(rig: &Rig<'_>, context: PollContext) -> CaseResult {
    let cq = CompletionQueue::with_context(rig.device, 64, context)?;
    let send = patterned(rig.device, 4096, 21)?;
    let recv = DmaBuffer::new(rig.device, 4096)?;
    let slots = [CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new(), CompletionSlot::new()];
    let mut a = QueuePair::new_rc(&rig.pd, &cq, &cq, &CAPS)?;
    let mut b = QueuePair::new_rc(&rig.pd, &cq, &cq, &CAPS)?;
    let (a_num, b_num) = (a.qp_num(), b.qp_num());
    connect(rig, &mut a, b_num)?;
    connect(rig, &mut b, a_num)?;
    for round in 0..2 {
        let (send_slot, recv_slot) = (&slots[round * 2], &slots[round * 2 + 1]);
        b.post_recv(recv_slot, &recv, 0, 4096)?;
        a.post_send(send_slot, SendOp::Send, &send, 0, 4096)?;
        let sent = wait_on(&cq, send_slot)?;
        let received = wait_on(&cq, recv_slot)?;
        check(sent.status == WcStatus::Success && received.status == WcStatus::Success, "a WR failed")?;
        check(received.byte_len == 4096, "receive byte_len is not the size sent")?;
    }
    check(*recv.copy_out(0, 4096)? == *send.copy_out(0, 4096)?, "received data differs from what was sent")
}

/// A slot carries one WR at a time: posting with a slot whose WR has not completed, or
/// whose completion was not taken, is refused, and the refused WR is not posted.
fn slot_reuse_refused(rig: &Rig<'_>) -> CaseResult {
    let recv = DmaBuffer::new(rig.device, 128)?;
    let send = patterned(rig.device, 64, 2)?;
    let (recv_slot, send_slot) = (CompletionSlot::new(), CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_recv(&recv_slot, &recv, 0, 64)?;
    check(recv_slot.is_posted(), "a posted slot does not say so")?;
    check(b.post_recv(&recv_slot, &recv, 64, 64) == Err(EBUSY), "a posted slot was posted again")?;
    a.post_send(&send_slot, SendOp::Send, &send, 0, 64)?;
    // Completed but not taken: still busy.
    poll_for(rig, || !send_slot.is_posted() && !recv_slot.is_posted())?;
    check(a.post_send(&send_slot, SendOp::Send, &send, 0, 64) == Err(EBUSY), "an untaken slot was reused")?;
    check(send_slot.take().is_some() && recv_slot.take().is_some(), "a completion went missing")?;
    check(send_slot.take().is_none(), "a completion was reported twice")
}

/// Polls the rig's CQ until `done()` holds, sleeping between polls.
fn poll_for(rig: &Rig<'_>, mut done: impl FnMut() -> bool) -> CaseResult {
    for _ in 0..20_000 {
        rig.cq.poll(64);
        if done() {
            return Ok(());
        }
        fsleep(Delta::from_micros(500));
    }
    Err(Failure::Check("no completion within 10 s"))
}

/// A WR built for one transport is refused on the other (it would make the driver read
/// fields the WR does not have), and the slot stays free.
fn wrong_qp_type_refused(rig: &Rig<'_>) -> CaseResult {
    let buffer = patterned(rig.device, 64, 4)?;
    let dmac = rig.gid.link_local_mac().ok_or(Failure::Check("GID 0 is not link-local"))?;
    let ah = AddressHandle::new(&rig.pd, rig.port, 0, rig.gid, dmac)?;
    let slot = CompletionSlot::new();
    let mut ud = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    ud.modify_ud_to_rts(rig.port, 0, 0x1111_2222)?;
    let (rc, _peer) = rc_pair(rig)?;
    check(ud.post_send(&slot, SendOp::Send, &buffer, 0, 64) == Err(EINVAL), "an RC send was posted on a UD QP")?;
    let dest = UdDest { ah: &ah, remote_qpn: ud.qp_num(), remote_qkey: 0x1111_2222 };
    check(rc.post_ud_send(&slot, &dest, &buffer, 0, 64) == Err(EINVAL), "a UD send was posted on an RC QP")?;
    check(!slot.is_posted(), "a refused WR left its slot claimed")
}

/// QPs that never left RESET, or went back to it, are dropped without a drain (which
/// cannot leave RESET and would WARN).
fn qp_dropped_in_reset(rig: &Rig<'_>) -> CaseResult {
    let fresh = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let fresh_ud = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let (mut a, _b) = rc_pair(rig)?;
    a.modify_to_reset()?;
    drop((fresh, fresh_ud, a));
    Ok(())
}

/// Registering a region again gives it a new key: the old one is refused, the new one
/// works.
fn frwr_reregistration(rig: &Rig<'_>) -> CaseResult {
    let local = patterned(rig.device, 256, 6)?;
    let target = DmaBuffer::new(rig.device, RDMA_LEN)?;
    let mr = MemoryRegion::new(&rig.pd, RDMA_PAGES, &target, 0, RDMA_LEN)?;
    let slots: [CompletionSlot; 6] = core::array::from_fn(|_| CompletionSlot::new());
    let (a, b) = rc_pair(rig)?;
    b.post_reg_mr(&slots[0], &mr, READ_WRITE)?;
    wait_ok(rig, &slots[0], WcOpcode::RegMr)?;
    let old_key = mr.rkey();
    b.post_local_inv(&slots[1], old_key)?;
    wait_ok(rig, &slots[1], WcOpcode::LocalInvalidate)?;
    b.post_reg_mr(&slots[2], &mr, READ_WRITE)?;
    wait_ok(rig, &slots[2], WcOpcode::RegMr)?;
    let new_key = mr.rkey();
    check(new_key != old_key, "re-registration kept the old key")?;
    a.post_send(&slots[3], SendOp::RdmaWrite { remote_addr: mr.iova(), rkey: new_key }, &local, 0, 256)?;
    wait_ok(rig, &slots[3], WcOpcode::RdmaWrite)?;
    check(*target.copy_out(0, 256)? == *local.copy_out(0, 256)?, "the write with the new key did not land")?;
    a.post_send(&slots[4], SendOp::RdmaWrite { remote_addr: mr.iova(), rkey: old_key }, &local, 0, 256)?;
    let refused = wait(rig, &slots[4])?;
    check(refused.status == WcStatus::RemoteAccessError, "the retired key was accepted")
}
