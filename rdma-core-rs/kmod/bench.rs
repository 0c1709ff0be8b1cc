// SPDX-License-Identifier: GPL-2.0
//! What the safe verbs API costs: the same RC loops through the safe API and on the raw
//! bindings, in one run, over the same QPs. Loaded with `bench=N`, the module runs this
//! instead of the conformance cases and prints one line per loop:
//! `bench: <loop>: safe <ns>/op, raw <ns>/op, raw/safe <ratio>`. A ratio of 1.000 means
//! the safe layer is free; the target is at least 0.98.

use core::cell::Cell;

use kernel::prelude::*;
use kernel::time::{delay::fsleep, Delta, Instant, Monotonic};
use rdma_core::{
    dma::DmaBuffer,
    mailbox::{Mailbox, ReturnedWr},
    mr::MemoryRegion,
    qp::SendOp,
    sys,
    verbs::WcStatus,
};

use crate::cases::{patterned, rc_pair, register, Failure, Outcome, Rig, READ_WRITE};

/// WRs in flight per round trip of the loops.
const WINDOW: usize = 16;
const SEND_BYTES: usize = 64;
const WRITE_BYTES: usize = 65536;

/// Polls until `want` completions have been delivered (to slots or to the raw handler:
/// both loops wait the same way); busy, with a short sleep every few thousand polls so
/// rxe's own tasks always get a CPU.
fn poll_count(rig: &Rig, want: u32) -> Outcome<()> {
    let mut left = want;
    for spin in 0..10_000_000u32 {
        if left == 0 {
            return Ok(());
        }
        left = left.saturating_sub(rig.cq.poll(64));
        if spin % 4096 == 4095 {
            fsleep(Delta::from_micros(10));
        }
    }
    pr_info!("{}: bench: stalled with {} of {} completions delivered\n", rig.device.name(), want - left, want);
    Err(Failure::Check("benchmark loop stalled"))
}

/// Takes back the WRs tagged `0..n` + `base` (all delivered: `poll_count` saw them), as a
/// user of the safe API does before posting them again, and checks they succeeded.
fn take_all(mailbox: &mut Mailbox, base: u64, n: usize, out: &mut KVec<ReturnedWr>) -> Outcome<()> {
    for tag in base..base + n as u64 {
        let wr = mailbox.try_take(tag)?.ok_or(Failure::Check("a benchmark WR went missing"))?;
        if wr.completion().status != WcStatus::Success {
            return Err(Failure::Check("a benchmark WR failed"));
        }
        out.push(wr, GFP_KERNEL)?;
    }
    Ok(())
}

/// Tags of the receive WRs (the sends are `0..WINDOW`).
const RECV_BASE: u64 = 1000;

/// Nanoseconds per operation of `ops` operations taking `elapsed`.
fn per_op(elapsed: Delta, ops: u32) -> i64 {
    elapsed.as_nanos() / i64::from(ops.max(1))
}

fn sends_safe(rig: &Rig, ops: u32) -> Outcome<i64> {
    let mut mailbox = Mailbox::new()?;
    let mut sends = KVec::with_capacity(WINDOW, GFP_KERNEL)?;
    let mut recvs = KVec::with_capacity(WINDOW, GFP_KERNEL)?;
    for i in 0..WINDOW as u64 {
        sends.push(mailbox.work_request(i, Some(patterned(&rig.device, SEND_BYTES, 1)?))?, GFP_KERNEL)?;
        recvs.push(mailbox.work_request(RECV_BASE + i, Some(DmaBuffer::new(&rig.device, SEND_BYTES)?))?, GFP_KERNEL)?;
    }
    let (a, b) = rc_pair(rig)?;
    let rounds = ops.div_ceil(WINDOW as u32);
    let start = Instant::<Monotonic>::now();
    for _ in 0..rounds {
        for (send, recv) in sends.drain_all().zip(recvs.drain_all()) {
            b.post_recv(recv, 0, SEND_BYTES)?;
            a.post_send(send, SendOp::Send, 0, SEND_BYTES)?;
        }
        poll_count(rig, 2 * WINDOW as u32)?;
        take_all(&mut mailbox, 0, WINDOW, &mut sends)?;
        take_all(&mut mailbox, RECV_BASE, WINDOW, &mut recvs)?;
    }
    Ok(per_op(start.elapsed(), rounds * WINDOW as u32))
}

/// The raw loop's completion handler: an `ib_cqe` whose `done` counts.
#[repr(C)]
struct RawCounter {
    cqe: sys::ib_cqe,
    count: Cell<u32>,
}

/// `ib_cqe.done` for the raw loops.
///
/// # Safety
///
/// Called by the IB core with a completion whose `wr_cqe` is a live `RawCounter`'s.
unsafe extern "C" fn raw_done(_cq: *mut sys::ib_cq, wc: *mut sys::ib_wc) {
    // SAFETY: as the function's contract says; `RawCounter` is `repr(C)` with the
    // `ib_cqe` first, and it is read in this same (direct polling) context.
    unsafe {
        let counter = &*(*wc).__bindgen_anon_1.wr_cqe.cast::<RawCounter>();
        counter.count.set(counter.count.get() + 1);
    }
}

fn sends_raw(rig: &Rig, ops: u32) -> Outcome<i64> {
    let send = patterned(&rig.device, SEND_BYTES, 1)?;
    let recv = DmaBuffer::new(&rig.device, SEND_BYTES * WINDOW)?;
    let counter = RawCounter { cqe: sys::ib_cqe { done: Some(raw_done) }, count: Cell::new(0) };
    let cqe = core::ptr::from_ref(&counter.cqe).cast_mut();
    let lkey = rig.pd.local_dma_lkey();
    let send_addr = send.dma_addr(0, SEND_BYTES).ok_or(Failure::Check("send buffer"))?;
    let (a, b) = rc_pair(rig)?;
    let rounds = ops.div_ceil(WINDOW as u32);
    let start = Instant::<Monotonic>::now();
    for _ in 0..rounds {
        for i in 0..WINDOW {
            let recv_addr = recv.dma_addr(i * SEND_BYTES, SEND_BYTES).ok_or(Failure::Check("recv buffer"))?;
            let mut recv_sge = sys::ib_sge { addr: recv_addr, length: SEND_BYTES as u32, lkey };
            let recv_wr = sys::ib_recv_wr {
                next: core::ptr::null_mut(),
                __bindgen_anon_1: sys::ib_recv_wr__bindgen_ty_1 { wr_cqe: cqe },
                sg_list: &mut recv_sge,
                num_sge: 1,
            };
            let mut send_sge = sys::ib_sge { addr: send_addr, length: SEND_BYTES as u32, lkey };
            let send_wr = sys::ib_send_wr {
                __bindgen_anon_1: sys::ib_send_wr__bindgen_ty_1 { wr_cqe: cqe },
                sg_list: &mut send_sge,
                num_sge: 1,
                opcode: sys::ib_wr_opcode_IB_WR_SEND,
                send_flags: sys::ib_send_flags_IB_SEND_SIGNALED,
                ..Default::default()
            };
            // SAFETY: the QPs are live; the WRs live across the calls; the buffers and
            // the counter outlive the QPs, which drain before they go.
            let posted = unsafe {
                sys::tilde_rdma_post_recv(b.as_raw(), &recv_wr, core::ptr::null_mut()) == 0
                    && sys::tilde_rdma_post_send(a.as_raw(), &send_wr, core::ptr::null_mut()) == 0
            };
            if !posted {
                return Err(Failure::Check("a raw post failed"));
            }
        }
        poll_count(rig, 2 * WINDOW as u32)?;
    }
    let ns = per_op(start.elapsed(), rounds * WINDOW as u32);
    if counter.count.get() != rounds * 2 * WINDOW as u32 {
        return Err(Failure::Check("the raw handler missed completions"));
    }
    drop((a, b));
    Ok(ns)
}

/// WRITEs in flight per round trip of the write loops.
const WRITE_WINDOW: usize = 4;

/// RDMA WRITE throughput, safe or raw: `ops` writes of 64 KiB into an FRWR region.
fn writes(rig: &Rig, ops: u32, raw: bool) -> Outcome<i64> {
    let mut mailbox = Mailbox::new()?;
    let source = patterned(&rig.device, WRITE_BYTES, 5)?;
    let source_addr = source.dma_addr(0, WRITE_BYTES).ok_or(Failure::Check("source buffer"))?;
    let mut writes = KVec::with_capacity(WRITE_WINDOW, GFP_KERNEL)?;
    for i in 0..WRITE_WINDOW as u64 {
        writes.push(mailbox.work_request(i, Some(patterned(&rig.device, WRITE_BYTES, 5)?))?, GFP_KERNEL)?;
    }
    let target = DmaBuffer::new(&rig.device, WRITE_BYTES)?;
    let region = MemoryRegion::new(&rig.pd, (WRITE_BYTES / 4096) as u32 + 1, target, 0, WRITE_BYTES)?;
    let counter = RawCounter { cqe: sys::ib_cqe { done: Some(raw_done) }, count: Cell::new(0) };
    let cqe = core::ptr::from_ref(&counter.cqe).cast_mut();
    let lkey = rig.pd.local_dma_lkey();
    let (a, b) = rc_pair(rig)?;
    let region = register(&mut mailbox, &rig.cq, &b, region, READ_WRITE)?;
    let write = SendOp::RdmaWrite { remote_addr: region.iova(), rkey: region.rkey() };
    let rounds = ops.div_ceil(WRITE_WINDOW as u32);
    let start = Instant::<Monotonic>::now();
    for _ in 0..rounds {
        if raw {
            for _ in 0..WRITE_WINDOW {
                let mut sge = sys::ib_sge { addr: source_addr, length: WRITE_BYTES as u32, lkey };
                let wr = sys::ib_rdma_wr {
                    wr: sys::ib_send_wr {
                        __bindgen_anon_1: sys::ib_send_wr__bindgen_ty_1 { wr_cqe: cqe },
                        sg_list: &mut sge,
                        num_sge: 1,
                        opcode: sys::ib_wr_opcode_IB_WR_RDMA_WRITE,
                        send_flags: sys::ib_send_flags_IB_SEND_SIGNALED,
                        ..Default::default()
                    },
                    remote_addr: region.iova(),
                    rkey: region.rkey(),
                };
                // SAFETY: the QP is live; the WR lives across the call; the buffers and
                // the counter outlive the QP, which drains before it goes.
                if unsafe { sys::tilde_rdma_post_send(a.as_raw(), &wr.wr, core::ptr::null_mut()) } != 0 {
                    return Err(Failure::Check("a raw post failed"));
                }
            }
            poll_count(rig, WRITE_WINDOW as u32)?;
        } else {
            for wr in writes.drain_all() {
                a.post_send(wr, write, 0, WRITE_BYTES)?;
            }
            poll_count(rig, WRITE_WINDOW as u32)?;
            take_all(&mut mailbox, 0, WRITE_WINDOW, &mut writes)?;
        }
    }
    let ns = per_op(start.elapsed(), rounds * WRITE_WINDOW as u32);
    // The raw loop's WRs must be gone before `counter` and `source` are.
    drop((a, b));
    Ok(ns)
}

/// Runs `safe` and `raw` alternately twice and keeps each one's best, so drift favours
/// neither; prints the line the scenario looks for.
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
    compare(rig, "rc_send_64B", ops, |raw| if raw { sends_raw(rig, ops) } else { sends_safe(rig, ops) });
    compare(rig, "rdma_write_64KiB", ops / 4, |raw| writes(rig, ops / 4, raw));
}
