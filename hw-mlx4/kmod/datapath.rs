// SPDX-License-Identifier: GPL-2.0
//! The probe's data-path check: tilde's fast path moves bytes through the device.
//!
//! Before the device is offered to anyone, the probe creates through the firmware what a
//! SEND needs (a PD, the DMA MR, a CQ on the first completion EQ, two RC QPs connected to
//! each other on port 1), builds the fast path's rings and doorbell records over the
//! very DMA blocks the core gave the device and its UAR page in BAR2, arms the CQ,
//! posts a receive and a signaled SEND, and requires: the completion event by MSI-X on
//! the completion EQ's vector, dispatched to the CQ by the EQ walk; both CQEs polled by
//! the fast path, successful, with the QPs, opcodes and length; the bytes where the
//! receive put them. Then traffic: 2048 SENDs of 4 KiB in chains of 8 (the queues and
//! the CQ wrap 32 times), every completion and every byte checked, timed. Then everything is destroyed
//! through the firmware again. Its first part is the
//! host test `a_send_moves_bytes_between_two_rc_qps_created_through_the_firmware` on
//! the kernel's memory, MMIO and interrupts.

use core::time::Duration;

use hw_mlx4::bringup::memory::HostMemory;
use hw_mlx4::bringup::objects::{
    CompletionQueue, MemoryRegion, MrAccess, QpConfig, QpPath, QpTransport, QueuePair,
};
use hw_mlx4::bringup::probe::{Mlx4Core, ProbeError};
use hw_mlx4::fastpath::cq::{CompletionQueue as FastCq, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
use hw_mlx4::ring::MemoryRing;
use hw_mlx4::wire::ArmCommand;
use hw_mlx4::wr::{
    Completion, Payload, RecvWr, SendFlags, SendOp, SendWr, Sge, WcOpcode, WcStatus,
};
use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::kernel_api;
use rdma_core::pci::Bar;

use crate::hca::{Block, Edge};
use crate::platform::{KernelDoorbellRecord, KernelPlatform, KernelRing, QueueMemory, Uar};
use crate::wr_ids::WrIds;

/// What the check moved.
pub(crate) struct Report {
    pub(crate) bytes: usize,
    pub(crate) sender: u32,
    pub(crate) receiver: u32,
    pub(crate) cqn: u32,
    /// The traffic phase: messages, bytes, and how long they took.
    pub(crate) messages: usize,
    pub(crate) traffic_bytes: usize,
    pub(crate) traffic_time: Duration,
}

/// The message sent.
const MESSAGE: &[u8] = b"tilde_mlx4: bytes moved by the fast path through the device";
/// Where the message sits in the data block, and where the receive puts it.
const SEND_OFFSET: u64 = 0x100;
const RECV_OFFSET: u64 = 0x1040;
/// The receive buffer's length.
const RECV_LEN: u32 = 256;
/// log2 of the CQ's 32-byte entries.
const CQ_LOG_ENTRIES: u32 = 7;
/// The traffic phase: messages of 4 KiB, in chains of 8, 2048 of them (8 MiB: the
/// queues wrap 32 times, the CQ 32 times).
const MESSAGE_SIZE: usize = 4096;
const BATCH: usize = 8;
const MESSAGES: usize = 2048;
/// Where the batch's messages are written, and where they land, in the data block.
const SOURCE_AREA: usize = 0x2_0000;
const DESTINATION_AREA: usize = 0x4_0000;
/// The data block: 2^7 pages (512 KiB).
const DATA_LOG_PAGES: u32 = 7;
/// How long one batch may take to complete.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes written or checked at a time (the stack is small).
const CHUNK: usize = 256;
/// The queues: 64 send WQEs of 64 bytes, 64 receive WQEs of 16.
const QP_CONFIG: (u32, u32, u32, u32) = (6, 6, 6, 4);
/// How long the completion's interrupt may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the check created, each given back by [`Made::release`] whatever happened.
#[derive(Default)]
struct Made {
    pd: Option<u32>,
    mr: Option<MemoryRegion>,
    cq: Option<CompletionQueue<Block>>,
    qps: [Option<QueuePair<Block>>; 2],
    data: Option<Block>,
}

impl Made {
    /// Destroys what was created, QPs first; the first failure is returned, the rest
    /// still released.
    fn release(&mut self, core: &mut Mlx4Core<Block>, edge: &mut Edge<'_>) -> Result {
        let mut first: Result = Ok(());
        let mut note = |r: core::result::Result<(), ProbeError>| {
            if let Err(e) = r {
                pr_err!("data-path check: release failed: {:?}\n", e);
                if first.is_ok() {
                    first = Err(EIO);
                }
            }
        };
        for qp in self.qps.iter_mut().filter_map(Option::take) {
            note(core.destroy_qp(edge, qp));
        }
        if let Some(cq) = self.cq.take() {
            note(core.destroy_cq(edge, cq));
        }
        if let Some(mr) = self.mr.take() {
            note(core.destroy_mr(edge, mr));
        }
        if let Some(pd) = self.pd.take() {
            core.free_pd(pd);
        }
        if let Some(data) = self.data.take() {
            edge.free(data);
        }
        first
    }
}

/// Completion events the first completion EQ's interrupt handler delivered.
#[derive(Clone, Copy)]
pub(crate) struct CompletionEvents {
    /// How many.
    pub(crate) count: u32,
    /// The CQ the last one named.
    pub(crate) last_cqn: u32,
    /// EQEs refused (not a completion, or an unknown CQ).
    pub(crate) refused: u32,
}

/// Runs the check (see the module's doc); `completion_events` reads what the first
/// completion EQ's interrupt handler delivered.
pub(crate) fn send_between_two_qps(
    core: &mut Mlx4Core<Block>,
    edge: &mut Edge<'_>,
    bar2: &Arc<Bar>,
    completion_events: &dyn Fn() -> CompletionEvents,
) -> Result<Report> {
    let mut made = Made::default();
    let result = run(core, edge, bar2, completion_events, &mut made);
    let released = made.release(core, edge);
    let report = result?;
    released?;
    Ok(report)
}

fn step<T>(what: &str, r: core::result::Result<T, ProbeError>) -> Result<T> {
    r.map_err(|e| {
        pr_err!("data-path check: {} failed: {:?}\n", what, e);
        EIO
    })
}

fn check(what: &str, ok: bool) -> Result {
    if ok {
        Ok(())
    } else {
        pr_err!("data-path check: {}\n", what);
        Err(EIO)
    }
}

fn rc_path(remote_qpn: u32) -> QpPath {
    QpPath::rc(1, 0, remote_qpn)
}

/// A ring of `1 << log_entries` entries of `1 << shift` bytes at `offset` of `block`.
pub(crate) fn ring_in(
    block: &Block,
    offset: u64,
    log_entries: u32,
    shift: u32,
) -> Result<KernelRing> {
    let offset = usize::try_from(offset).map_err(|_| EINVAL)?;
    let size = 1usize
        .checked_shl(log_entries.checked_add(shift).ok_or(EINVAL)?)
        .ok_or(EINVAL)?;
    MemoryRing::new(
        QueueMemory::in_block(block, offset, size)?,
        log_entries,
        shift,
    )
    .ok_or(EINVAL)
}

/// The fast path's queues of a QP the core created: its rings inside the QP's buffer,
/// its receive doorbell record in its doorbell page.
pub(crate) fn queues_of(
    qp: &QueuePair<Block>,
    caps: SendQueueCaps,
    qp_type: QpType,
) -> Result<(
    SendQueueState<KernelPlatform>,
    RecvQueueState<KernelPlatform>,
)> {
    let buffer = &qp.buffer.as_ref().ok_or(EINVAL)?.block;
    let doorbell = &qp.doorbell.as_ref().ok_or(EINVAL)?.block;
    let c = qp.config;
    let refused = |e| {
        pr_err!(
            "QP {:#x}: queue refused by the fast path: {:?}\n",
            qp.qpn,
            e
        );
        EINVAL
    };
    let sq = SendQueueState::new(
        ring_in(buffer, qp.sq_offset, c.log_sq_entries, c.log_sq_stride)?,
        WrIds::new(1 << c.log_sq_entries)?,
        qp_type,
        caps,
    )
    .map_err(refused)?;
    let rq = RecvQueueState::new(
        ring_in(buffer, qp.rq_offset, c.log_rq_entries, c.log_rq_stride)?,
        WrIds::new(1 << c.log_rq_entries)?,
        KernelDoorbellRecord::in_block(doorbell, 0)?,
    )
    .map_err(refused)?;
    Ok((sq, rq))
}

/// The fast path's view of one of the check's QPs.
fn fast_qp(qp: &QueuePair<Block>) -> Result<QueuePairState<KernelPlatform>> {
    let caps = SendQueueCaps {
        max_sge: 2,
        max_inline: 0,
        signal_all: false,
    };
    let (sq, rq) = queues_of(qp, caps, QpType::Rc)?;
    Ok(QueuePairState::new(qp.qpn, sq, rq))
}

// Out of line: its locals are many, and `bring_up`'s frame must stay within the limit.
#[inline(never)]
fn run(
    core: &mut Mlx4Core<Block>,
    edge: &mut Edge<'_>,
    bar2: &Arc<Bar>,
    completion_events: &dyn Fn() -> CompletionEvents,
    made: &mut Made,
) -> Result<Report> {
    let uar_index = core.driver_uar().ok_or(EINVAL)?;
    let eqn = core.comp_eqn(0).ok_or(EINVAL)?;
    let pd = *made.pd.insert(core.alloc_pd().ok_or(ENOSPC)?);
    let lkey = made
        .mr
        .insert(step(
            "DMA MR",
            core.create_dma_mr(edge, pd, MrAccess::LOCAL),
        )?)
        .key;
    let data = made
        .data
        .insert(edge.alloc(DATA_LOG_PAGES).ok_or(ENOMEM)?)
        .clone();
    let cq = made.cq.insert(step(
        "CQ",
        core.create_cq(edge, CQ_LOG_ENTRIES, eqn, uar_index),
    )?);
    let cqn = cq.cqn;
    let (log_sq_entries, log_sq_stride, log_rq_entries, log_rq_stride) = QP_CONFIG;
    let config = QpConfig {
        transport: QpTransport::Rc,
        log_sq_entries,
        log_sq_stride,
        log_rq_entries,
        log_rq_stride,
        pd,
        send_cqn: cqn,
        recv_cqn: cqn,
    };
    for slot in made.qps.iter_mut() {
        *slot = Some(step("QP", core.create_qp(edge, config))?);
    }
    let [Some(a), Some(b)] = &mut made.qps else {
        return Err(EINVAL);
    };
    let (qpn_a, qpn_b) = (a.qpn, b.qpn);
    for (qp, remote) in [(a, qpn_b), (b, qpn_a)] {
        step(
            "RST2INIT",
            core.qp_to_init(edge, qp, &rc_path(remote), uar_index),
        )?;
        step(
            "INIT2RTR",
            core.qp_to_rtr(edge, qp, &rc_path(remote), uar_index),
        )?;
        step("RTR2RTS", core.qp_to_rts(edge, qp, 1, 0, uar_index))?;
    }

    // The fast path over the same memory, and the driver's UAR page.
    let uar = Uar::in_bar(bar2, uar_index)?;
    let cq_buffer = &made
        .cq
        .as_ref()
        .and_then(|c| c.buffer.as_ref())
        .ok_or(EINVAL)?
        .block;
    let cq_doorbell = &made
        .cq
        .as_ref()
        .and_then(|c| c.doorbell.as_ref())
        .ok_or(EINVAL)?
        .block;
    let mut fast_cq = FastCq::<KernelPlatform>::new(
        cqn,
        ring_in(cq_buffer, 0, CQ_LOG_ENTRIES, 5)?,
        CqDoorbells {
            set_ci: KernelDoorbellRecord::in_block(cq_doorbell, 0)?,
            arm: KernelDoorbellRecord::in_block(cq_doorbell, 4)?,
        },
    )
    .map_err(|e| {
        pr_err!("data-path check: CQ refused: {:?}\n", e);
        EINVAL
    })?;
    let [Some(a), Some(b)] = &made.qps else {
        return Err(EINVAL);
    };
    let (sender, receiver) = (a.qpn, b.qpn);
    let mut fa = fast_qp(a)?;
    let mut fb = fast_qp(b)?;

    // Armed for the next completion, as `ib_req_notify_cq` would.
    fast_cq.arm(&uar, ArmCommand::Next);
    let events_before = completion_events();
    let bus = data.bus_address();
    data.write(SEND_OFFSET as usize, MESSAGE).ok_or(EINVAL)?;
    let posted = {
        let (_, mut rq, _) = fb.split(&uar);
        let sge = [Sge {
            addr: bus + RECV_OFFSET,
            length: RECV_LEN,
            lkey,
        }];
        rq.post(&[RecvWr {
            wr_id: 0xb0b,
            sges: &sge,
        }])
    }
    .and_then(|()| {
        let (mut sq, _, _) = fa.split(&uar);
        let sge = [Sge {
            addr: bus + SEND_OFFSET,
            length: MESSAGE.len() as u32,
            lkey,
        }];
        sq.post(&[SendWr::new(
            0xa0a,
            SendOp::Send,
            Payload::Gather(&sge),
            SendFlags::SIGNALED,
        )])
    });
    if let Err(e) = posted {
        pr_err!("data-path check: post refused: {:?}\n", e);
        return Err(EIO);
    }

    // The completion event: the interrupt handler of the completion EQ's vector walks
    // that EQ and hands the event to the CQ it names.
    let deadline = kernel_api::monotonic() + EVENT_TIMEOUT;
    while completion_events().count == events_before.count && kernel_api::monotonic() < deadline {
        kernel_api::sleep(Duration::from_millis(1));
    }
    let events = completion_events();
    check(
        "no completion event from the completion EQ's interrupt handler within 1 s",
        events.count != events_before.count,
    )?;
    check(
        "the completion EQ did not name the CQ, once",
        events.count == events_before.count.wrapping_add(1)
            && events.last_cqn == cqn
            && events.refused == events_before.refused,
    )?;
    fast_cq.event_delivered();

    let (_, _, ca) = fa.split(&uar);
    let (_, _, cb) = fb.split(&uar);
    let mut out = [Completion::EMPTY; 4];
    let polled = fast_cq.poll(&[ca, cb], &mut out).map_err(|e| {
        pr_err!("data-path check: poll failed: {:?}\n", e);
        EIO
    })?;
    let completions = out.get(..polled).unwrap_or_default();
    let send = completions.iter().find(|c| c.wr_id == 0xa0a);
    let recv = completions.iter().find(|c| c.wr_id == 0xb0b);
    check(
        "the SEND did not complete successfully from the sender",
        polled == 2
            && send.is_some_and(|c| {
                (c.status, c.opcode, c.qpn) == (WcStatus::Success, WcOpcode::Send, sender)
            }),
    )?;
    check(
        "the receive did not complete with the message from the sender",
        recv.is_some_and(|c| {
            (c.status, c.opcode, c.qpn, c.byte_len, c.src_qp)
                == (
                    WcStatus::Success,
                    WcOpcode::Recv,
                    receiver,
                    MESSAGE.len() as u32,
                    sender,
                )
        }),
    )?;
    let mut received = [0u8; MESSAGE.len()];
    data.read(RECV_OFFSET as usize, &mut received)
        .ok_or(EINVAL)?;
    check(
        "the received bytes differ from the sent",
        received == MESSAGE,
    )?;
    let start = kernel_api::monotonic();
    for batch in 0..MESSAGES / BATCH {
        traffic_batch(&mut fast_cq, &mut fa, &mut fb, &uar, &data, lkey, batch)?;
    }
    let traffic_time = kernel_api::monotonic().saturating_sub(start);
    Ok(Report {
        bytes: MESSAGE.len(),
        sender,
        receiver,
        cqn,
        messages: MESSAGES,
        traffic_bytes: MESSAGES * MESSAGE_SIZE,
        traffic_time,
    })
}

/// Byte `offset` of message `index`: a pattern that differs between messages, so a
/// message landing twice, or a stale one, is seen.
fn pattern(index: usize, offset: usize) -> u8 {
    (index.wrapping_mul(131).wrapping_add(offset.wrapping_mul(7)) ^ 0x5a) as u8
}

/// Writes message `index` into slot `slot` of the source area, or checks that slot of
/// the destination area holds it.
#[inline(never)]
fn fill_or_check(data: &Block, slot: usize, index: usize, fill: bool) -> Result {
    let mut chunk = [0u8; CHUNK];
    for start in (0..MESSAGE_SIZE).step_by(CHUNK) {
        if fill {
            for (i, byte) in chunk.iter_mut().enumerate() {
                *byte = pattern(index, start + i);
            }
            data.write(SOURCE_AREA + slot * MESSAGE_SIZE + start, &chunk)
                .ok_or(EINVAL)?;
        } else {
            data.read(DESTINATION_AREA + slot * MESSAGE_SIZE + start, &mut chunk)
                .ok_or(EINVAL)?;
            let intact = chunk
                .iter()
                .enumerate()
                .all(|(i, &byte)| byte == pattern(index, start + i));
            if !intact {
                pr_err!(
                    "data-path check: message {} arrived with other bytes than were sent\n",
                    index
                );
                return Err(EIO);
            }
        }
    }
    Ok(())
}

/// One batch of the traffic phase: `BATCH` receives posted on the receiver, `BATCH`
/// signaled SENDs posted as one chain (one doorbell) on the sender, the CQ polled until
/// all `2 * BATCH` completions came, each checked, then every message's bytes.
#[inline(never)]
fn traffic_batch(
    cq: &mut FastCq<KernelPlatform>,
    fa: &mut QueuePairState<KernelPlatform>,
    fb: &mut QueuePairState<KernelPlatform>,
    uar: &Uar,
    data: &Block,
    lkey: u32,
    batch: usize,
) -> Result {
    let bus = data.bus_address();
    let first = batch * BATCH;
    for slot in 0..BATCH {
        fill_or_check(data, slot, first + slot, true)?;
    }
    let slot_address = |area: usize, slot: usize| bus + (area + slot * MESSAGE_SIZE) as u64;
    let recv_sges: [[Sge; 1]; BATCH] = core::array::from_fn(|slot| {
        [Sge {
            addr: slot_address(DESTINATION_AREA, slot),
            length: MESSAGE_SIZE as u32,
            lkey,
        }]
    });
    let send_sges: [[Sge; 1]; BATCH] = core::array::from_fn(|slot| {
        [Sge {
            addr: slot_address(SOURCE_AREA, slot),
            length: MESSAGE_SIZE as u32,
            lkey,
        }]
    });
    let receives: [RecvWr<'_>; BATCH] = core::array::from_fn(|slot| RecvWr {
        wr_id: (first + slot) as u64,
        sges: recv_sges.get(slot).map_or(&[][..], |s| &s[..]),
    });
    let sends: [SendWr<'_>; BATCH] = core::array::from_fn(|slot| {
        SendWr::new(
            (first + slot) as u64,
            SendOp::Send,
            Payload::Gather(send_sges.get(slot).map_or(&[][..], |s| &s[..])),
            SendFlags::SIGNALED,
        )
    });
    let (sender, receiver) = (fa.qpn(), fb.qpn());
    let posted = fb
        .split(uar)
        .1
        .post(&receives)
        .and_then(|()| fa.split(uar).0.post(&sends));
    if let Err(e) = posted {
        pr_err!("data-path check: batch {} refused: {:?}\n", batch, e);
        return Err(EIO);
    }

    let deadline = kernel_api::monotonic() + BATCH_TIMEOUT;
    let mut sends_done = 0;
    let mut receives_done = 0;
    while sends_done + receives_done < 2 * BATCH {
        let (_, _, ca) = fa.split(uar);
        let (_, _, cb) = fb.split(uar);
        let mut out = [Completion::EMPTY; BATCH];
        let polled = cq.poll(&[ca, cb], &mut out).map_err(|e| {
            pr_err!("data-path check: poll failed: {:?}\n", e);
            EIO
        })?;
        for c in out.get(..polled).unwrap_or_default() {
            let index = usize::try_from(c.wr_id).unwrap_or(usize::MAX);
            let in_batch = index >= first && index < first + BATCH;
            let good_send =
                (c.status, c.opcode, c.qpn) == (WcStatus::Success, WcOpcode::Send, sender);
            let good_recv = (c.status, c.opcode, c.qpn, c.byte_len)
                == (
                    WcStatus::Success,
                    WcOpcode::Recv,
                    receiver,
                    MESSAGE_SIZE as u32,
                );
            if in_batch && good_send {
                sends_done += 1;
            } else if in_batch && good_recv {
                receives_done += 1;
            } else {
                pr_err!(
                    "data-path check: batch {}: unexpected completion {:?} for WR {}\n",
                    batch,
                    c.status,
                    c.wr_id
                );
                return Err(EIO);
            }
        }
        if polled == 0 {
            if kernel_api::monotonic() > deadline {
                pr_err!(
                    "data-path check: batch {}: {} of {} SENDs and {} receives completed within 5 s\n",
                    batch,
                    sends_done,
                    BATCH,
                    receives_done
                );
                return Err(EIO);
            }
            kernel_api::cond_resched();
        }
    }
    for slot in 0..BATCH {
        fill_or_check(data, slot, first + slot, false)?;
    }
    Ok(())
}
