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
//! receive put them. Then everything is destroyed through the firmware again. It is the
//! host test `a_send_moves_bytes_between_two_rc_qps_created_through_the_firmware` on
//! the kernel's memory, MMIO and interrupts.

use core::time::Duration;

use hw_mlx4::bringup::eq::CompletionEvent;
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
use hw_mlx4::wire::fw::qp_context;
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

/// Runs the check (see the module's doc); `completion_interrupts` counts the first
/// completion EQ's vector.
pub(crate) fn send_between_two_qps(
    core: &mut Mlx4Core<Block>,
    edge: &mut Edge<'_>,
    bar2: &Arc<Bar>,
    completion_interrupts: &dyn Fn() -> u32,
) -> Result<Report> {
    let mut made = Made::default();
    let result = run(core, edge, bar2, completion_interrupts, &mut made);
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
    QpPath {
        port: 1,
        pkey_index: 0,
        dlid: 0,
        remote_qpn,
        rq_psn: 0,
        qkey: 0,
        remote_access: qp_context::PARAMS2_ACCESS,
    }
}

/// A ring of `1 << log_entries` entries of `1 << shift` bytes at `offset` of `block`.
fn ring_in(block: &Block, offset: u64, log_entries: u32, shift: u32) -> Result<KernelRing> {
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

/// The fast path's view of a QP the core created: its rings inside the QP's buffer, its
/// receive doorbell record in its doorbell page.
fn fast_qp(qp: &QueuePair<Block>) -> Result<QueuePairState<KernelPlatform>> {
    let buffer = &qp.buffer.as_ref().ok_or(EINVAL)?.block;
    let doorbell = &qp.doorbell.as_ref().ok_or(EINVAL)?.block;
    let c = qp.config;
    let caps = SendQueueCaps {
        max_sge: 2,
        max_inline: 0,
        signal_all: false,
    };
    let refused = |e| {
        pr_err!("data-path check: queue refused: {:?}\n", e);
        EINVAL
    };
    let sq = SendQueueState::new(
        ring_in(buffer, qp.sq_offset, c.log_sq_entries, c.log_sq_stride)?,
        WrIds::new(1 << c.log_sq_entries)?,
        QpType::Rc,
        caps,
    )
    .map_err(refused)?;
    let rq = RecvQueueState::new(
        ring_in(buffer, qp.rq_offset, c.log_rq_entries, c.log_rq_stride)?,
        WrIds::new(1 << c.log_rq_entries)?,
        KernelDoorbellRecord::in_block(doorbell, 0)?,
    )
    .map_err(refused)?;
    Ok(QueuePairState::new(qp.qpn, sq, rq))
}

fn run(
    core: &mut Mlx4Core<Block>,
    edge: &mut Edge<'_>,
    bar2: &Arc<Bar>,
    completion_interrupts: &dyn Fn() -> u32,
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
    let data = made.data.insert(edge.alloc(1).ok_or(ENOMEM)?).clone();
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
        &uar,
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
    fast_cq.arm(ArmCommand::Next);
    let interrupts_before = completion_interrupts();
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

    // The completion event: an interrupt on the completion EQ's vector, and the walk of
    // that EQ hands it to the CQ it names.
    let deadline = kernel_api::monotonic() + EVENT_TIMEOUT;
    while completion_interrupts() == interrupts_before && kernel_api::monotonic() < deadline {
        kernel_api::sleep(Duration::from_millis(1));
    }
    check(
        "no interrupt on the completion EQ's vector within 1 s",
        completion_interrupts() != interrupts_before,
    )?;
    let mut events = [None; 2];
    let mut seen = 0;
    let walked = core.poll_completions(edge, 0, |e: CompletionEvent| {
        if let Some(slot) = events.get_mut(seen) {
            *slot = Some(e);
        }
        seen += 1;
    });
    step("completion EQ walk", walked)?;
    check(
        "the completion EQ did not name the CQ, once",
        seen == 1 && events[0] == Some(CompletionEvent { cqn }),
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
    Ok(Report {
        bytes: MESSAGE.len(),
        sender,
        receiver,
        cqn,
    })
}
