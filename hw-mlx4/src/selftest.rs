//! A self-test of the fast path over a platform's own queue memory, with the CPU playing
//! the device's part: no model, no allocation, so it runs where the model cannot (inside
//! the kernel module, over the kernel's queue memory, barriers and UAR writes) and on the
//! host over [`crate::model::HostPlatform`], from the same source.
//!
//! Each round posts one receive and a chain of three sends (a gathered SEND, an inline
//! SEND, an RDMA WRITE), then acts as the device: it takes each WQE the driver handed
//! over by its ownership word (and only those), checks its segments against the WR,
//! writes the CQE the device would (body, then the owner byte after a barrier), and lets
//! `poll` turn the CQEs back into completions, which must name the WRs in order; then it
//! arms the CQ and checks the arm record and doorbell. Enough rounds take every ring
//! around several times, so the owner bits of WQEs and CQEs flip on every lap.

use crate::fastpath::cq::{CompletionQueue, PollError};
use crate::fastpath::platform::{DmaRing, DoorbellRecord, Platform};
use crate::fastpath::qp::QueuePairState;
use crate::wire::{
    send_doorbell_value, ArmCommand, Be16, Be32, CqDoorbell, CqDoorbellRecord, Cqe, CtrlSeg,
    DataSeg, InlineSeg, RaddrSeg, RecvOpcode, SendOpcode, CQE_SIZE, DS_SIZE, RQ_DOORBELL_MASK,
};
use crate::wr::{
    Completion, Payload, PostFailure, RecvWr, Remote, SendFlags, SendOp, SendWr, Sge, WcOpcode,
    WcStatus,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The doorbells the driver wrote since the device last looked: the device takes each
/// register's value (as hardware does, and as a device watching its UAR page must), so a
/// register the driver did not write again since reads as nothing, never as the value
/// of an earlier round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UarSeen {
    /// The last value written to the send doorbell since the last look.
    pub send: Option<u32>,
    /// The last 64-bit CQ doorbell since the last look.
    pub cq: Option<CqDoorbell>,
}

/// Why the self-test failed: the first thing the device saw that it should not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelftestError {
    /// The receive queue's 16 descriptor bytes or the send queue's 64 are too small for
    /// what the test posts.
    QueueTooSmall,
    /// A post failed.
    Post(PostFailure),
    /// Polling failed.
    Poll(PollError),
    /// A WQE the test expected the driver to hand over is not the device's, or is.
    Ownership {
        /// The round.
        round: u32,
        /// The WQE's counter.
        wqe: u32,
    },
    /// A handed-over WQE does not say what its WR asked for.
    Wqe {
        /// The round.
        round: u32,
        /// The WQE's counter.
        wqe: u32,
        /// The field that differs.
        field: &'static str,
    },
    /// The receive doorbell record does not hold the producer counter.
    RecvDoorbell {
        /// The low 16 bits of the producer counter.
        expected: u32,
        /// What the record holds.
        seen: u32,
    },
    /// The post did not ring the send doorbell, or not with the QP's value.
    SendDoorbell {
        /// The send doorbell value of the QP.
        expected: u32,
        /// What the post wrote to the send doorbell, if anything.
        seen: Option<u32>,
    },
    /// A completion does not match its WR.
    Completion {
        /// The round.
        round: u32,
        /// The completion's position in the output; for a wrong count or tail, how many
        /// were polled.
        index: usize,
        /// The field that differs.
        field: &'static str,
    },
    /// The arm record or the CQ doorbell does not say what was armed.
    Arm {
        /// The record or doorbell that differs.
        field: &'static str,
    },
}

/// What a passing run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rounds run.
    pub rounds: u32,
    /// Send WQEs posted.
    pub send_wqes: u32,
    /// Receive WQEs posted.
    pub recv_wqes: u32,
    /// Completions polled.
    pub completions: u32,
    /// Times the CQ's owner bit flipped (laps of the CQ ring).
    pub cq_laps: u32,
    /// Times the CQ was armed.
    pub arms: u32,
}

const SENDS_PER_ROUND: u32 = 3;
const INLINE: [u8; 16] = *b"tilde mlx4 self.";
const LKEY: u32 = 0x0000_1100;
const RKEY: u32 = 0x0000_2200;

/// Runs `rounds` rounds over `qp` (an RC QP whose send and receive queues complete on
/// `cq`); `uar_seen` takes what the driver wrote to the device's UAR registers since the
/// last call.
pub fn loopback<P: Platform>(
    qp: &mut QueuePairState<P>,
    cq: &mut CompletionQueue<P>,
    uar: &P::Uar,
    uar_seen: impl Fn() -> UarSeen,
    rounds: u32,
) -> Result<Report, SelftestError> {
    if qp.recv_state().max_sge() < 1 || qp.send_state().caps().max_inline < INLINE.len() as u32 {
        return Err(SelftestError::QueueTooSmall);
    }
    let qpn = qp.qpn();
    let sq_entries = qp.send_state().entries();
    let rq_entries = qp.recv_state().entries();
    let cq_entries = cq.entries();
    let (mut sq, mut rq, completions) = qp.split(uar);
    let mut report = Report::default();
    // The device's own counters: the next WQE it takes from each queue, the next CQE
    // it writes.
    let mut device_sq = 0u32;
    let mut device_rq = 0u32;
    let mut device_cq = 0u32;
    let mut arm_sn = 1u32;
    for round in 0..rounds {
        let base = round_base(round);
        let buffers = RoundBuffers::of(base);
        let recv_sge = [Sge {
            addr: buffers.recv,
            length: 256,
            lkey: LKEY,
        }];
        let recv = RecvWr {
            wr_id: base | 0xf,
            sges: &recv_sge,
        };
        rq.post(&[recv]).map_err(SelftestError::Post)?;
        let record = completions.rq.doorbell().read_acquire();
        let expected = rq.head() & RQ_DOORBELL_MASK;
        if record != expected {
            return Err(SelftestError::RecvDoorbell {
                expected,
                seen: record,
            });
        }

        let gather = [Sge {
            addr: buffers.gather,
            length: gather_length(round),
            lkey: LKEY,
        }];
        let remote = Remote {
            addr: buffers.remote,
            rkey: RKEY,
        };
        let sends = [
            SendWr::new(
                base | 1,
                SendOp::Send,
                Payload::Gather(&gather),
                SendFlags::SIGNALED,
            ),
            SendWr::new(
                base | 2,
                SendOp::Send,
                Payload::Inline(&INLINE),
                SendFlags::SIGNALED,
            ),
            SendWr::new(
                base | 3,
                SendOp::RdmaWrite(remote),
                Payload::Gather(&gather),
                SendFlags::SIGNALED,
            ),
        ];
        sq.post(&sends).map_err(SelftestError::Post)?;
        let seen = uar_seen().send;
        if seen != Some(send_doorbell_value(qpn)) {
            return Err(SelftestError::SendDoorbell {
                expected: send_doorbell_value(qpn),
                seen,
            });
        }

        // The device: the WQEs handed over, in order; nothing past them.
        let ring = completions.sq.ring();
        for wr in &sends {
            check_send_wqe(ring, device_sq, sq_entries, wr, round)?;
            let opcode = match wr.op {
                SendOp::RdmaWrite(_) => SendOpcode::RdmaWrite,
                _ => SendOpcode::Send,
            };
            let mut cqe = Cqe::new_zeroed();
            cqe.vlan_my_qpn = Be32::new(qpn);
            cqe.wqe_index = Be16::new(device_sq as u16);
            cqe.owner_sr_opcode = Cqe::IS_SEND | opcode as u8;
            write_cqe::<P>(cq.ring(), device_cq, cq_entries, &cqe);
            device_sq = device_sq.wrapping_add(1);
            device_cq = device_cq.wrapping_add(1);
        }
        if owned_by_device(ring, device_sq, sq_entries) {
            return Err(SelftestError::Ownership {
                round,
                wqe: device_sq,
            });
        }
        // The receive takes the first SEND, the gathered one.
        let received = check_recv_wqe(completions.rq.ring(), device_rq, &recv_sge[0], round)?
            .min(gather[0].length);
        let cqe = recv_cqe(qpn, received, device_rq, rq_entries);
        write_cqe::<P>(cq.ring(), device_cq, cq_entries, &cqe);
        device_rq = device_rq.wrapping_add(1);
        device_cq = device_cq.wrapping_add(1);

        // The driver: four completions, in the order the device wrote them.
        let mut out = [Completion::EMPTY; 8];
        let polled = cq
            .poll(&completions, &mut out)
            .map_err(SelftestError::Poll)?;
        let expected = [
            (base | 1, WcOpcode::Send, 0),
            (base | 2, WcOpcode::Send, 0),
            (base | 3, WcOpcode::RdmaWrite, 0),
            (base | 0xf, WcOpcode::Recv, gather[0].length),
        ];
        if polled != expected.len() {
            return Err(SelftestError::Completion {
                round,
                index: polled,
                field: "count",
            });
        }
        for ((got, (wr_id, opcode, byte_len)), index) in
            out.iter().zip(expected).zip(0..expected.len())
        {
            let field = if got.wr_id != wr_id {
                "wr_id"
            } else if got.status != WcStatus::Success {
                "status"
            } else if got.opcode != opcode {
                "opcode"
            } else if got.byte_len != byte_len {
                "byte_len"
            } else if got.qpn != qpn {
                "qpn"
            } else {
                continue;
            };
            return Err(SelftestError::Completion {
                round,
                index,
                field,
            });
        }
        if !queues_drained(
            (completions.sq.tail(), sq.head()),
            (completions.rq.tail(), rq.head()),
        ) {
            return Err(SelftestError::Completion {
                round,
                index: polled,
                field: "queue tail",
            });
        }

        // Arm for the next completion, every eighth round; the device raises an event
        // for it, which moves the arm sequence number on.
        if round % 8 == 0 {
            cq.arm(uar, ArmCommand::Next);
            let ci = cq.cons_index();
            let expected_record = CqDoorbellRecord::arm_word(arm_sn, ArmCommand::Next, ci);
            if cq.doorbells().arm.read_acquire() != expected_record {
                return Err(SelftestError::Arm {
                    field: "arm record",
                });
            }
            if cq.doorbells().set_ci.read_acquire() != ci & CqDoorbell::CI_MASK {
                return Err(SelftestError::Arm {
                    field: "consumer index record",
                });
            }
            let doorbell = uar_seen().cq;
            if doorbell != Some(CqDoorbell::new(arm_sn, ArmCommand::Next, cq.cqn(), ci)) {
                return Err(SelftestError::Arm {
                    field: "CQ doorbell",
                });
            }
            cq.event_delivered();
            arm_sn = arm_sn.wrapping_add(1);
            report.arms = report.arms.saturating_add(1);
        }
        report.rounds = report.rounds.saturating_add(1);
        report.send_wqes = report.send_wqes.saturating_add(SENDS_PER_ROUND);
        report.recv_wqes = report.recv_wqes.saturating_add(1);
        report.completions = report.completions.saturating_add(polled as u32);
    }
    report.cq_laps = device_cq.checked_div(cq_entries).unwrap_or(0);
    Ok(report)
}

/// Whether the WQE at counter `index` is the device's by its ownership word (the owner
/// bit is the lap's: clear on even laps).
/// The CQE the device writes for a SEND received into WQE `device_rq` (a counter) of a
/// receive queue of `rq_entries` on QP `qpn`, from itself (loopback).
fn recv_cqe(qpn: u32, byte_cnt: u32, device_rq: u32, rq_entries: u32) -> Cqe {
    let mut cqe = Cqe::new_zeroed();
    cqe.vlan_my_qpn = Be32::new(qpn);
    cqe.g_mlpath_rqpn = Be32::new(qpn);
    cqe.byte_cnt = Be32::new(byte_cnt);
    cqe.wqe_index = Be16::new((device_rq & rq_entries.wrapping_sub(1)) as u16);
    cqe.owner_sr_opcode = RecvOpcode::Send as u8;
    cqe
}

/// A round's buffers, as DMA addresses (never touched: the CPU playing the device checks
/// WQEs, it moves no data): distinct from each other and from every other round's, so a
/// WQE carrying the wrong one is caught.
struct RoundBuffers {
    recv: u64,
    gather: u64,
    remote: u64,
}

impl RoundBuffers {
    fn of(base: u64) -> Self {
        Self {
            recv: 0x8000_0000 + base,
            gather: 0x4000_0000 + base,
            remote: 0xc000_0000 + base,
        }
    }
}

/// The gathered SEND's length in a round: 64 to 127 bytes, a different one in each of 64
/// consecutive rounds, so the receive's `byte_len` check sees more than one value.
fn gather_length(round: u32) -> u32 {
    64 + round % 64
}

/// The round's base for its WR ids and addresses: a different one each round, so that a
/// driver returning an earlier round's completion or data is caught, with the low 12 bits
/// clear for the ids' `| n`.
fn round_base(round: u32) -> u64 {
    u64::from(round) << 12
}

/// Whether polling retired every posted WQE: each queue's completion tail has reached its
/// head, given as `(tail, head)`.
fn queues_drained(sq: (u32, u32), rq: (u32, u32)) -> bool {
    sq.0 == sq.1 && rq.0 == rq.1
}

fn owned_by_device<R: DmaRing>(ring: &R, index: u32, entries: u32) -> bool {
    let owner = ring.read_word(index, 0) & CtrlSeg::OWNER != 0;
    owner == (index & entries != 0)
}

fn check_send_wqe<R: DmaRing>(
    ring: &R,
    index: u32,
    entries: u32,
    wr: &SendWr<'_>,
    round: u32,
) -> Result<(), SelftestError> {
    if !owned_by_device(ring, index, entries) {
        return Err(SelftestError::Ownership { round, wqe: index });
    }
    let fail = |field| SelftestError::Wqe {
        round,
        wqe: index,
        field,
    };
    // SAFETY: the ownership word just read gave this WQE to the device, which the test
    // plays: the driver does not write it again until its CQE has been polled.
    unsafe {
        ring.with_entry(index, |wqe| -> Result<(), SelftestError> {
            let (ctrl, rest) = CtrlSeg::ref_from_prefix(wqe).map_err(|_| fail("size"))?;
            let opcode = SendOpcode::from_bits(ctrl.opcode_bits());
            if ctrl.srcrb_flags.get() & CtrlSeg::CQ_UPDATE != CtrlSeg::CQ_UPDATE {
                return Err(fail("signaled"));
            }
            let segments = match (wr.op, wr.payload) {
                (SendOp::Send, Payload::Gather(sges)) => {
                    (opcode == Some(SendOpcode::Send))
                        .then_some(())
                        .ok_or(fail("opcode"))?;
                    check_gather(rest, sges).ok_or(fail("data segment"))?;
                    1 + sges.len()
                }
                (SendOp::Send, Payload::Inline(bytes)) => {
                    (opcode == Some(SendOpcode::Send))
                        .then_some(())
                        .ok_or(fail("opcode"))?;
                    let (header, data) =
                        InlineSeg::ref_from_prefix(rest).map_err(|_| fail("inline"))?;
                    if header.byte_count.get() != InlineSeg::INLINE | bytes.len() as u32
                        || data.get(..bytes.len()) != Some(bytes)
                    {
                        return Err(fail("inline"));
                    }
                    // One inline segment: the test's data ends before the first 64-byte
                    // boundary.
                    (size_of::<CtrlSeg>() + size_of::<InlineSeg>() + bytes.len()).div_ceil(DS_SIZE)
                }
                (SendOp::RdmaWrite(remote), Payload::Gather(sges)) => {
                    (opcode == Some(SendOpcode::RdmaWrite))
                        .then_some(())
                        .ok_or(fail("opcode"))?;
                    let (raddr, rest) =
                        RaddrSeg::ref_from_prefix(rest).map_err(|_| fail("remote address"))?;
                    if raddr.raddr.get() != remote.addr || raddr.rkey.get() != remote.rkey {
                        return Err(fail("remote address"));
                    }
                    check_gather(rest, sges).ok_or(fail("data segment"))?;
                    2 + sges.len()
                }
                _ => return Err(fail("opcode")),
            };
            if ctrl.size_ds() != segments {
                return Err(fail("size"));
            }
            Ok(())
        })
    }
}

fn check_gather(bytes: &[u8], sges: &[Sge]) -> Option<()> {
    let (segs, _) = <[DataSeg]>::ref_from_prefix_with_elems(bytes, sges.len()).ok()?;
    segs.iter()
        .zip(sges)
        .all(|(seg, sge)| {
            seg.byte_count.get() == sge.length
                && seg.lkey.get() == sge.lkey
                && seg.addr.get() == sge.addr
        })
        .then_some(())
}

/// Takes the receive WQE at counter `index` as the device does once the doorbell record
/// names it, checks its scatter entry is the WR's, and returns the room it offers.
fn check_recv_wqe<R: DmaRing>(
    ring: &R,
    index: u32,
    posted: &Sge,
    round: u32,
) -> Result<u32, SelftestError> {
    let fail = SelftestError::Wqe {
        round,
        wqe: index,
        field: "scatter entry",
    };
    // SAFETY: the doorbell record (checked after the post) names this WQE: it is the
    // device's until its CQE is polled.
    let seg = unsafe {
        ring.with_entry(index, |wqe| {
            DataSeg::ref_from_prefix(wqe).ok().map(|(seg, _)| *seg)
        })
    }
    .ok_or(fail)?;
    if seg.addr.get() != posted.addr || seg.lkey.get() != posted.lkey {
        return Err(fail);
    }
    if seg.byte_count.get() != posted.length {
        return Err(SelftestError::Wqe {
            round,
            wqe: index,
            field: "scatter byte_count",
        });
    }
    Ok(seg.byte_count.get())
}

/// Writes a CQE at the device's producer counter `index` of a CQ of `entries` entries:
/// the body, then, after the barrier, the owner byte of this lap (`cqe`'s own owner bit is
/// ignored), as the device's DMA write makes it visible. The device's side for whoever
/// plays it: this self-test, and the benchmarks' harness.
pub fn write_cqe<P: Platform>(ring: &P::Ring, index: u32, entries: u32, cqe: &Cqe) {
    // 0 or 32: `CompletionQueue::new` accepts 32- and 64-byte entries only.
    let stride_offset = 1usize
        .checked_shl(ring.entry_shift())
        .and_then(|stride| stride.checked_sub(CQE_SIZE))
        .unwrap_or(0);
    let bytes = cqe.as_bytes();
    // SAFETY: the driver gave this entry back when its consumer index passed it (the
    // test polls every CQE before it writes a ring's worth more), and it reads the body
    // only after seeing the owner byte written below.
    unsafe {
        ring.with_entry_mut(index, |entry| {
            if let (Some(body), Some(src)) = (
                entry.get_mut(stride_offset..stride_offset.saturating_add(Cqe::OWNER_WORD_OFFSET)),
                bytes.get(..Cqe::OWNER_WORD_OFFSET),
            ) {
                body.copy_from_slice(src);
            }
        })
    };
    P::dma_wmb();
    let owner = if index & entries != 0 { Cqe::OWNER } else { 0 };
    let last = bytes
        .get(Cqe::OWNER_WORD_OFFSET..CQE_SIZE)
        .and_then(|word| <[u8; 4]>::try_from(word).ok())
        .map_or(0, |word| u32::from_be_bytes(word) & !u32::from(Cqe::OWNER));
    ring.write_word(
        index,
        stride_offset.saturating_add(Cqe::OWNER_WORD_OFFSET),
        last | u32::from(owner),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_receive_cqe_names_the_wqe_within_the_ring() {
        let cqe = super::recv_cqe(0x48, 100, 0x1_0005, 8);
        assert_eq!(
            (
                cqe.vlan_my_qpn.get(),
                cqe.g_mlpath_rqpn.get(),
                cqe.byte_cnt.get(),
                cqe.wqe_index.get(),
                cqe.owner_sr_opcode
            ),
            (0x48, 0x48, 100, 5, RecvOpcode::Send as u8)
        );
    }

    #[test]
    fn each_round_has_its_own_buffers_and_length() {
        use super::{gather_length, round_base, RoundBuffers};
        let mut seen = alloc::collections::BTreeSet::new();
        for round in 0..4096 {
            let buffers = RoundBuffers::of(round_base(round));
            for addr in [buffers.recv, buffers.gather, buffers.remote] {
                assert!(
                    addr != 0 && seen.insert(addr),
                    "round {round}: {addr:#x} again"
                );
            }
        }
        assert_eq!(
            [0, 1, 63, 64, 4095].map(gather_length),
            [64, 65, 127, 64, 127]
        );
    }

    #[test]
    fn each_round_has_its_own_base() {
        use super::round_base;
        // Distinct, increasing, with the id bits clear, over the rounds tilde_mlx4.ko runs.
        let mut previous = None;
        for round in 0..4096 {
            let base = round_base(round);
            assert_eq!(base & 0xfff, 0);
            assert!(previous < Some(base));
            previous = Some(base);
        }
    }

    #[test]
    fn queues_are_drained_only_when_both_tails_reach_their_heads() {
        use super::queues_drained;
        assert!(queues_drained((5, 5), (9, 9)));
        assert!(!queues_drained((4, 5), (9, 9)));
        assert!(!queues_drained((5, 5), (8, 9)));
        assert!(!queues_drained((4, 5), (8, 9)));
    }

    use super::*;
    use crate::fastpath::cq::CqDoorbells;
    use crate::fastpath::recv::RecvQueueState;
    use crate::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
    use crate::model::HostPlatform;
    use crate::model::{wr_id_table, HostDoorbellRecord, HostRing, HostUar, UarWrite};
    use core::cell::Cell;

    const QPN: u32 = 0x48;
    const CQN: u32 = 0x81;

    fn qp(max_inline: u32) -> QueuePairState<HostPlatform> {
        qp_with(max_inline, 4)
    }

    /// A QP whose receive WQEs are `1 << rq_entry_shift` bytes (16 per gather entry).
    fn qp_with(max_inline: u32, rq_entry_shift: u32) -> QueuePairState<HostPlatform> {
        let caps = SendQueueCaps {
            max_sge: 2,
            max_inline,
            signal_all: false,
        };
        let sq = SendQueueState::new(HostRing::new(6, 6), wr_id_table(64), QpType::Rc, caps)
            .expect("send queue");
        let rq = RecvQueueState::new(
            HostRing::new(6, rq_entry_shift),
            wr_id_table(64),
            HostDoorbellRecord::new(),
        )
        .expect("receive queue");
        QueuePairState::new(QPN, sq, rq)
    }

    /// The doorbells the driver wrote since the last look: the last write of each.
    fn seen(uar: &HostUar) -> UarSeen {
        let mut now = UarSeen {
            send: None,
            cq: None,
        };
        while let Some(write) = uar.pop() {
            match write {
                UarWrite::Send(value) => now.send = Some(value),
                UarWrite::Cq(doorbell) => now.cq = Some(doorbell),
                UarWrite::Eq { .. } | UarWrite::BlueFlame { .. } => {}
            }
        }
        now
    }

    /// A CQ of 128 32-byte entries.
    fn cq() -> CompletionQueue<HostPlatform> {
        let doorbells = CqDoorbells {
            set_ci: HostDoorbellRecord::new(),
            arm: HostDoorbellRecord::new(),
        };
        CompletionQueue::new(CQN, HostRing::new(7, 5), doorbells).expect("CQ")
    }

    #[test]
    fn the_fast_path_passes_over_many_laps_of_every_ring() {
        let uar = HostUar::new();
        let mut qp = qp(28);
        let mut cq = cq();
        let report = loopback(&mut qp, &mut cq, &uar, || seen(&uar), 1000).expect("pass");
        assert_eq!(
            report,
            Report {
                rounds: 1000,
                send_wqes: 3000,
                recv_wqes: 1000,
                completions: 4000,
                cq_laps: 4000 / 128,
                arms: 125,
            }
        );
    }

    #[test]
    fn a_doorbell_the_device_did_not_see_fails_the_test() {
        let uar = HostUar::new();
        let mut qp = qp(28);
        let mut cq = cq();
        // A UAR that loses every write.
        let lost = || {
            uar.discard();
            seen(&uar)
        };
        assert_eq!(
            loopback(&mut qp, &mut cq, &uar, lost, 1),
            Err(SelftestError::SendDoorbell {
                expected: send_doorbell_value(QPN),
                seen: None
            })
        );
    }

    #[test]
    fn a_driver_that_rings_only_on_its_first_post_fails_the_test() {
        let uar = HostUar::new();
        let mut qp = qp(28);
        let mut cq = cq();
        // Every register as written, except that the send doorbell is rung once.
        let rung = Cell::new(false);
        let first_only = || {
            let mut now = seen(&uar);
            if now.send.is_some() && rung.replace(true) {
                now.send = None;
            }
            now
        };
        assert_eq!(
            loopback(&mut qp, &mut cq, &uar, first_only, 2),
            Err(SelftestError::SendDoorbell {
                expected: send_doorbell_value(QPN),
                seen: None
            })
        );
    }

    #[test]
    fn a_receive_wqe_with_another_length_than_its_wr_fails_the_test() {
        let ring = HostRing::new(6, 4);
        let posted = Sge {
            addr: 0x8000_0000,
            length: 256,
            lkey: LKEY,
        };
        let mut seg = DataSeg::new_zeroed();
        seg.addr = posted.addr.into();
        seg.lkey = Be32::new(posted.lkey);
        seg.byte_count = Be32::new(128);
        // SAFETY: the ring is ours alone; nothing else reads or writes it.
        unsafe {
            ring.with_entry_mut(0, |wqe| {
                if let Some(head) = wqe.get_mut(..DS_SIZE) {
                    head.copy_from_slice(seg.as_bytes());
                }
            })
        };
        assert_eq!(
            check_recv_wqe(&ring, 0, &posted, 0),
            Err(SelftestError::Wqe {
                round: 0,
                wqe: 0,
                field: "scatter byte_count"
            })
        );
        // The right length under another key, then at another address.
        let scatter_entry = Err(SelftestError::Wqe {
            round: 0,
            wqe: 0,
            field: "scatter entry",
        });
        for (addr, lkey) in [(posted.addr, LKEY + 1), (posted.addr + 8, LKEY)] {
            seg.byte_count = Be32::new(256);
            seg.addr = addr.into();
            seg.lkey = Be32::new(lkey);
            // SAFETY: as above.
            unsafe {
                ring.with_entry_mut(0, |wqe| {
                    if let Some(head) = wqe.get_mut(..DS_SIZE) {
                        head.copy_from_slice(seg.as_bytes());
                    }
                })
            };
            assert_eq!(check_recv_wqe(&ring, 0, &posted, 0), scatter_entry);
        }
        seg.addr = posted.addr.into();
        seg.lkey = Be32::new(posted.lkey);
        // SAFETY: as above.
        unsafe {
            ring.with_entry_mut(0, |wqe| {
                if let Some(head) = wqe.get_mut(..DS_SIZE) {
                    head.copy_from_slice(seg.as_bytes());
                }
            })
        };
        assert_eq!(check_recv_wqe(&ring, 0, &posted, 0), Ok(256));
    }

    /// Every field the self-test reads from a send WQE, corrupted one at a time in what
    /// the fast path wrote: the check must name that field (in the kernel, this self-test
    /// is the only check of the driver's WQEs).
    #[test]
    fn each_corrupted_send_wqe_field_fails_the_test() {
        let uar = HostUar::new();
        let mut qp = qp(28);
        let entries = qp.send_state().entries();
        let (mut sq, _rq, completions) = qp.split(&uar);
        let gather = [Sge {
            addr: 0x4000_0000,
            length: 64,
            lkey: LKEY,
        }];
        let remote = Remote {
            addr: 0xc000_0000,
            rkey: RKEY,
        };
        let sends = [
            SendWr::new(
                1,
                SendOp::Send,
                Payload::Gather(&gather),
                SendFlags::SIGNALED,
            ),
            SendWr::new(
                2,
                SendOp::Send,
                Payload::Inline(&INLINE),
                SendFlags::SIGNALED,
            ),
            SendWr::new(
                3,
                SendOp::RdmaWrite(remote),
                Payload::Gather(&gather),
                SendFlags::SIGNALED,
            ),
        ];
        sq.post(&sends).expect("post");
        let ring = completions.sq.ring();
        let check = |index: u32| check_send_wqe(ring, index, entries, &sends[index as usize], 0);
        for index in 0..3 {
            assert_eq!(
                check(index),
                Ok(()),
                "WQE {index} as the fast path wrote it"
            );
        }
        let wqe = |wqe, field| {
            Err(SelftestError::Wqe {
                round: 0,
                wqe,
                field,
            })
        };
        // (WQE, byte, bits flipped, the error): the control segment at 0 (owner and
        // opcode word, size byte 7, CQ_UPDATE in byte 11), then the WR's segments at 16.
        let corruptions = [
            (
                0,
                0,
                0x80,
                Err(SelftestError::Ownership { round: 0, wqe: 0 }),
            ),
            (0, 3, 0x01, wqe(0, "opcode")),
            (0, 11, 0x08, wqe(0, "signaled")),
            (0, 7, 0x01, wqe(0, "size")),
            (0, 16 + 3, 0x01, wqe(0, "data segment")), // byte_count
            (0, 16 + 7, 0x01, wqe(0, "data segment")), // lkey
            (0, 16 + 15, 0x01, wqe(0, "data segment")), // addr
            (1, 3, 0x01, wqe(1, "opcode")),
            (1, 16 + 3, 0x01, wqe(1, "inline")), // byte_count
            (1, 16 + 4, 0x01, wqe(1, "inline")), // the data
            (1, 7, 0x01, wqe(1, "size")),
            (2, 3, 0x01, wqe(2, "opcode")),
            (2, 16 + 7, 0x01, wqe(2, "remote address")), // raddr
            (2, 24 + 3, 0x01, wqe(2, "remote address")), // rkey
            (2, 32 + 7, 0x01, wqe(2, "data segment")),   // lkey
        ];
        let flip = |index: u32, byte: usize, bits: u8| {
            // SAFETY: the ring is this test's alone; the driver does not touch the WQE
            // before its completion, which never comes here.
            unsafe {
                ring.with_entry_mut(index, |wqe| {
                    if let Some(b) = wqe.get_mut(byte) {
                        *b ^= bits;
                    }
                })
            }
        };
        for (index, byte, bits, error) in corruptions {
            flip(index, byte, bits);
            assert_eq!(check(index), error, "WQE {index}, byte {byte} ^ {bits:#x}");
            flip(index, byte, bits);
        }
        for index in 0..3 {
            assert_eq!(check(index), Ok(()), "WQE {index} restored");
        }
    }

    #[test]
    fn a_queue_with_just_enough_room_and_more_gather_entries_passes() {
        // Inline room for the 16-byte payload exactly, and receive WQEs of 4 entries.
        let uar = HostUar::new();
        let mut qp = qp_with(INLINE.len() as u32, 6);
        assert!(qp.recv_state().max_sge() > 1);
        let mut cq = cq();
        let report = loopback(&mut qp, &mut cq, &uar, || seen(&uar), 3).expect("pass");
        assert_eq!(report.rounds, 3);
    }

    #[test]
    fn a_queue_without_room_for_the_inline_send_is_refused() {
        let uar = HostUar::new();
        let mut qp = qp(8);
        let mut cq = cq();
        assert_eq!(
            loopback(&mut qp, &mut cq, &uar, || seen(&uar), 1),
            Err(SelftestError::QueueTooSmall)
        );
    }
}
