// SPDX-License-Identifier: GPL-2.0
//! What the safe verbs API costs: the same RC loops through the safe API and on the raw
//! bindings, in one run. Loaded with `bench=N`, the module runs this instead of the
//! conformance cases and prints one line per loop:
//! `bench: <loop>: safe <ns>/op, raw <ns>/op, raw/safe <ratio>`. A ratio of 1.000 means
//! the safe layer is free; the target is at least 0.98.
//!
//! Each loop is a steady-state ring, the way a ULP runs its queues: a window of WRs is
//! posted, and each completion handler posts its own WR again until the loop's budget is
//! spent. The safe ring's WRs are `WorkRequest`s whose handler reposts through the
//! `&Queues` it is given; the raw ring's are `ib_cqe`s whose `done` reposts with
//! `ib_post_send`/`ib_post_recv` on the bindings. Both are driven by polling the same
//! direct CQ until every completion has been delivered.

use core::cell::Cell;

use kernel::prelude::*;
use kernel::sync::Arc;
use core::time::Duration;
use rdma_core::{
    kernel_api::{
        atomic::{Atomic, Relaxed},
        monotonic, sleep,
    },
    dma::DmaBuffer,
    mr::MemoryRegion,
    qp::{QueuePair, Queues, SendOp},
    sys,
    verbs::WcStatus,
    wr::{CompletionHandler, WorkRequest},
};

use crate::cases::{patterned, rc_pair, register, Failure, Outcome, Rig, READ_WRITE};
use rdma_core::mailbox::Mailbox;

/// SENDs (and receives) in flight.
const WINDOW: usize = 16;
/// RDMA WRITEs in flight.
const WRITE_WINDOW: usize = 4;
const SEND_BYTES: usize = 64;
const WRITE_BYTES: usize = 65536;

/// Polls until `done()` says every completion has been delivered; busy, with a short
/// sleep every few thousand polls so rxe's own tasks always get a CPU.
fn poll_until(rig: &Rig, mut done: impl FnMut() -> bool) -> Outcome<()> {
    for spin in 0..10_000_000u32 {
        if done() {
            return Ok(());
        }
        rig.cq.poll(64);
        if spin % 4096 == 4095 {
            sleep(Duration::from_micros(10));
        }
    }
    Err(Failure::Check("benchmark loop stalled"))
}

/// Nanoseconds per operation of `ops` operations taking `elapsed`.
fn per_op(elapsed: Duration, ops: u32) -> i64 {
    // In 64 bits: the kernel has no 128-bit division (`__udivti3`).
    let nanos = i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX);
    nanos / i64::from(ops.max(1))
}

/// What a ring's WRs do when they complete.
#[derive(Clone, Copy)]
enum Role {
    Send,
    Recv,
    Write { remote_addr: u64, rkey: u32 },
}

/// The safe ring's shared count.
struct SafeTally {
    /// Successful completions.
    completions: Atomic<u32>,
    /// Reposts left, per queue (sends/writes, receives).
    left: [Atomic<i32>; 2],
    failed: Atomic<u32>,
}

/// The safe ring's WR data.
struct SafeRing {
    tally: Arc<SafeTally>,
    role: Role,
}

impl CompletionHandler for SafeRing {
    fn complete(wr: KBox<WorkRequest<Self>>, queues: &Queues) {
        let (tally, role) = (&wr.data().tally, wr.data().role);
        if wr.completion().status != WcStatus::Success {
            tally.failed.add(1, Relaxed);
            return;
        }
        tally.completions.add(1, Relaxed);
        let queue = usize::from(matches!(role, Role::Recv));
        if tally.left[queue].fetch_sub(1, Relaxed) <= 0 {
            return;
        }
        let reposted = match role {
            Role::Send => queues.post_send(wr, SendOp::Send, 0, SEND_BYTES),
            Role::Recv => queues.post_recv(wr, 0, SEND_BYTES),
            Role::Write { remote_addr, rkey } => {
                queues.post_send(wr, SendOp::RdmaWrite { remote_addr, rkey }, 0, WRITE_BYTES)
            }
        };
        if let Err(rejected) = reposted {
            rejected.wr.data().tally.failed.add(1, Relaxed);
        }
    }
}

/// Runs the safe ring: `window` WRs of `role` on `qp` (and as many receives on `peer`
/// for SENDs) until `ops` operations completed; nanoseconds per operation.
fn safe_ring(rig: &Rig, qp: &QueuePair, peer: &QueuePair, role: Role, window: usize, ops: u32) -> Outcome<i64> {
    let receives = matches!(role, Role::Send);
    let left = i32::try_from(ops).map_err(|_| EINVAL)? - window as i32;
    let tally = Arc::new(
        SafeTally {
            completions: Atomic::new(0),
            left: [Atomic::new(left), Atomic::new(if receives { left } else { 0 })],
            failed: Atomic::new(0),
        },
        GFP_KERNEL,
    )?;
    let bytes = if receives { SEND_BYTES } else { WRITE_BYTES };
    let mut wrs = KVec::with_capacity(2 * window, GFP_KERNEL)?;
    for _ in 0..window {
        let data = SafeRing { tally: tally.clone(), role };
        wrs.push((WorkRequest::with_buffer(patterned(&rig.device, bytes, 1)?, data)?, role), GFP_KERNEL)?;
        if receives {
            let data = SafeRing { tally: tally.clone(), role: Role::Recv };
            wrs.push((WorkRequest::with_buffer(DmaBuffer::new(&rig.device, bytes)?, data)?, Role::Recv), GFP_KERNEL)?;
        }
    }
    let want = if receives { 2 * ops } else { ops };
    let start = monotonic();
    while let Some((wr, role)) = rdma_core::kernel_api::remove(&mut wrs, 0) {
        match role {
            Role::Send => qp.post_send(wr, SendOp::Send, 0, bytes)?,
            Role::Recv => peer.post_recv(wr, 0, bytes)?,
            Role::Write { remote_addr, rkey } => qp.post_send(wr, SendOp::RdmaWrite { remote_addr, rkey }, 0, bytes)?,
        }
    }
    poll_until(rig, || tally.completions.load(Relaxed) >= want || tally.failed.load(Relaxed) > 0)?;
    let ns = per_op(monotonic() - start, ops);
    if tally.failed.load(Relaxed) > 0 {
        return Err(Failure::Check("a safe benchmark WR failed"));
    }
    Ok(ns)
}

/// The raw ring's shared count: plain cells, as a C ULP on a direct CQ would keep it.
struct RawTally {
    /// WRs handed to the driver, and completions of any status: equal when none is left.
    posted: Cell<u32>,
    finished: Cell<u32>,
    completions: Cell<u32>,
    left: [Cell<i32>; 2],
    failed: Cell<u32>,
}

/// One raw WR: its `ib_cqe` first, then what reposting it needs.
#[repr(C)]
struct RawRing {
    cqe: sys::ib_cqe,
    qp: *mut sys::ib_qp,
    sge: sys::ib_sge,
    role: Role,
    tally: *const RawTally,
}

/// Posts the raw WR `ring`; whether the driver took it.
///
/// # Safety
///
/// `ring` is live and stays put until its completion; its QP is live.
unsafe fn raw_post(ring: *mut RawRing) -> bool {
    // SAFETY: as the function's contract says; the WRs built here live across the calls.
    unsafe {
        let cqe = core::ptr::addr_of_mut!((*ring).cqe);
        let sge = core::ptr::addr_of_mut!((*ring).sge);
        match (*ring).role {
            Role::Recv => {
                let wr = sys::ib_recv_wr {
                    next: core::ptr::null_mut(),
                    __bindgen_anon_1: sys::ib_recv_wr__bindgen_ty_1 { wr_cqe: cqe },
                    sg_list: sge,
                    num_sge: 1,
                };
                sys::tilde_rdma_post_recv((*ring).qp, &wr, core::ptr::null_mut()) == 0
                    && count_posted(ring)
            }
            role => {
                let (opcode, remote_addr, rkey) = match role {
                    Role::Write { remote_addr, rkey } => (sys::ib_wr_opcode_IB_WR_RDMA_WRITE, remote_addr, rkey),
                    _ => (sys::ib_wr_opcode_IB_WR_SEND, 0, 0),
                };
                let wr = sys::ib_rdma_wr {
                    wr: sys::ib_send_wr {
                        __bindgen_anon_1: sys::ib_send_wr__bindgen_ty_1 { wr_cqe: cqe },
                        sg_list: sge,
                        num_sge: 1,
                        opcode,
                        send_flags: sys::ib_send_flags_IB_SEND_SIGNALED,
                        ..Default::default()
                    },
                    remote_addr,
                    rkey,
                };
                sys::tilde_rdma_post_send((*ring).qp, &wr.wr, core::ptr::null_mut()) == 0
                    && count_posted(ring)
            }
        }
    }
}

/// Counts a raw WR the driver took; always true.
///
/// # Safety
///
/// `ring` is live, and so is its tally.
unsafe fn count_posted(ring: *const RawRing) -> bool {
    // SAFETY: as the function's contract says.
    let tally = unsafe { &*(*ring).tally };
    tally.posted.set(tally.posted.get() + 1);
    true
}

/// `ib_cqe.done` of the raw ring: counts, and reposts while the budget lasts.
///
/// # Safety
///
/// Called by the IB core, polling the direct CQ in the benchmark's own context, with a
/// completion whose `wr_cqe` is a live `RawRing`'s.
unsafe extern "C" fn raw_done(_cq: *mut sys::ib_cq, wc: *mut sys::ib_wc) {
    // SAFETY: as the function's contract says; `RawRing` is `repr(C)` with the `ib_cqe`
    // first; its tally outlives the ring.
    unsafe {
        let ring = (*wc).__bindgen_anon_1.wr_cqe.cast::<RawRing>();
        let tally = &*(*ring).tally;
        tally.finished.set(tally.finished.get() + 1);
        if (*wc).status != 0 {
            tally.failed.set(tally.failed.get() + 1);
            return;
        }
        tally.completions.set(tally.completions.get() + 1);
        let left = &tally.left[usize::from(matches!((*ring).role, Role::Recv))];
        left.set(left.get() - 1);
        if left.get() < 0 {
            return;
        }
        if !raw_post(ring) {
            tally.failed.set(tally.failed.get() + 1);
        }
    }
}

/// The raw twin of [`safe_ring`], on the bindings, over the QPs' raw handles.
fn raw_ring(rig: &Rig, qp: &QueuePair, peer: &QueuePair, role: Role, window: usize, ops: u32) -> Outcome<i64> {
    let receives = matches!(role, Role::Send);
    let left = i32::try_from(ops).map_err(|_| EINVAL)? - window as i32;
    let tally = RawTally {
        posted: Cell::new(0),
        finished: Cell::new(0),
        completions: Cell::new(0),
        left: [Cell::new(left), Cell::new(if receives { left } else { 0 })],
        failed: Cell::new(0),
    };
    let bytes = if receives { SEND_BYTES } else { WRITE_BYTES };
    let source = patterned(&rig.device, bytes, 1)?;
    let sink = DmaBuffer::new(&rig.device, bytes * window)?;
    let lkey = rig.pd.local_dma_lkey();
    let mut rings = KVec::with_capacity(2 * window, GFP_KERNEL)?;
    for i in 0..window {
        let sge = sys::ib_sge { addr: source.dma_addr(0, bytes).ok_or(EINVAL)?, length: bytes as u32, lkey };
        let ring = RawRing { cqe: sys::ib_cqe { done: Some(raw_done) }, qp: qp.as_raw(), sge, role, tally: &tally };
        rings.push(ring, GFP_KERNEL)?;
        if receives {
            let addr = sink.dma_addr(i * bytes, bytes).ok_or(EINVAL)?;
            let sge = sys::ib_sge { addr, length: bytes as u32, lkey };
            let ring = RawRing { cqe: sys::ib_cqe { done: Some(raw_done) }, qp: peer.as_raw(), sge, role: Role::Recv, tally: &tally };
            rings.push(ring, GFP_KERNEL)?;
        }
    }
    let want = if receives { 2 * ops } else { ops };
    let start = monotonic();
    for ring in rings.iter_mut() {
        // SAFETY: the ring entries stay put (the vector is not touched until they are all
        // done) and the QPs are live.
        if !unsafe { raw_post(ring) } {
            return Err(Failure::Check("a raw post failed"));
        }
    }
    let outcome = poll_until(rig, || tally.completions.get() >= want || tally.failed.get() > 0);
    let ns = per_op(monotonic() - start, ops);
    if outcome.is_err() || tally.failed.get() > 0 {
        // Raw WRs still posted point into `rings`, `tally` and the buffers, and the QPs'
        // drain does not know them: flush them here before those go.
        let _ = (qp.modify_to_error(), peer.modify_to_error());
        poll_until(rig, || tally.finished.get() == tally.posted.get())?;
    }
    outcome?;
    if tally.failed.get() > 0 {
        return Err(Failure::Check("a raw benchmark WR failed"));
    }
    Ok(ns)
}

fn sends(rig: &Rig, ops: u32, raw: bool) -> Outcome<i64> {
    let (a, b) = rc_pair(rig)?;
    if raw {
        raw_ring(rig, &a, &b, Role::Send, WINDOW, ops)
    } else {
        safe_ring(rig, &a, &b, Role::Send, WINDOW, ops)
    }
}

fn writes(rig: &Rig, ops: u32, raw: bool) -> Outcome<i64> {
    let mut mailbox = Mailbox::new()?;
    let target = DmaBuffer::new(&rig.device, WRITE_BYTES)?;
    let region = MemoryRegion::new(&rig.pd, (WRITE_BYTES / 4096) as u32 + 1, target, 0, WRITE_BYTES)?;
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let role = Role::Write { remote_addr: region.iova(), rkey: region.rkey() };
    if raw {
        raw_ring(rig, &a, &b, role, WRITE_WINDOW, ops)
    } else {
        safe_ring(rig, &a, &b, role, WRITE_WINDOW, ops)
    }
}

fn compare(rig: &Rig, label: &str, ops: u32, mut measure: impl FnMut(bool) -> Outcome<i64>) {
    let name = rig.device.name();
    let mut best = [i64::MAX; 2];
    for _ in 0..2 {
        match (measure(false), measure(true)) {
            (Ok(safe), Ok(raw)) => {
                best[0] = best[0].min(safe);
                best[1] = best[1].min(raw);
            }
            (Err(failure), _) | (_, Err(failure)) => {
                match failure {
                    Failure::Verb(error) => pr_info!("{}: bench: {}: FAIL: verb error {:?}\n", name, label, error),
                    Failure::Check(what) => pr_info!("{}: bench: {}: FAIL: {}\n", name, label, what),
                    Failure::Status(what, status) => {
                        pr_info!("{}: bench: {}: FAIL: {} completed with status {}\n", name, label, what, status)
                    }
                    Failure::Skipped(why) => pr_info!("{}: bench: {}: FAIL: skipped: {}\n", name, label, why),
                }
                return;
            }
        }
    }
    let [safe, raw] = best;
    let ratio_milli = if safe > 0 { raw * 1000 / safe } else { 0 };
    pr_info!(
        "{}: bench: {} x {}: safe {} ns/op, raw {} ns/op, raw/safe {}.{:03}\n",
        name,
        label,
        ops,
        safe,
        raw,
        ratio_milli / 1000,
        ratio_milli % 1000
    );
}

pub(crate) fn run(rig: &Rig, ops: u32) {
    compare(rig, "rc_send_64B", ops, |raw| sends(rig, ops, raw));
    compare(rig, "rdma_write_64KiB", ops / 4, |raw| writes(rig, ops / 4, raw));
}
