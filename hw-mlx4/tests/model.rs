//! The fast path run against the software model: every opcode, error completions,
//! wrap-around over many laps, events, and the model's checks of the driver.

use hw_mlx4::fastpath::cq::{CompletionQueue, PollError, PollErrorKind};
use hw_mlx4::fastpath::eq::EventQueue;
use hw_mlx4::fastpath::platform::DmaRing;
use hw_mlx4::fastpath::qp::{QpCompletions, QueuePairState};
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps};
use hw_mlx4::model::{
    HostBlueFlame, HostPlatform, HostUar, Model, ModelError, QpSpec, QpState, UarWrite,
    BLUEFLAME_BUFFER_SIZE, LOCAL_DMA_LKEY,
};
use hw_mlx4::wire::{AddressVector, ArmCommand, Be32, CqeStride, CtrlSeg, EventType, InlineSeg};
use hw_mlx4::wr::{
    Access, Completion, FastReg, Payload, PostError, PostFailure, RecvWr, Remote, SendFlags,
    SendOp, SendWr, Sge, UdAddress, WcFlags, WcOpcode, WcStatus,
};

type Cq = CompletionQueue<HostPlatform>;

/// Posts nothing itself: gives each test a model, a UAR, one CQ and two connected RC QPs.
struct Rig {
    uar: HostUar,
    model: Model,
    cqn: u32,
    cq_parts: Option<hw_mlx4::model::CqParts>,
}

impl Rig {
    fn new(log_cq: u32, stride: CqeStride) -> Self {
        let uar = HostUar::new();
        let mut model = Model::new(uar.clone());
        let cq_parts = model.create_cq(log_cq, stride, None);
        Self {
            uar,
            model,
            cqn: cq_parts.cqn,
            cq_parts: Some(cq_parts),
        }
    }

    fn rc_pair(
        &mut self,
        spec: QpSpec,
    ) -> (QueuePairState<HostPlatform>, QueuePairState<HostPlatform>) {
        let a = self.model.create_qp(&spec).expect("QP");
        let b = self.model.create_qp(&spec).expect("QP");
        self.model.connect(a.qpn(), b.qpn());
        (a, b)
    }

    /// The rig's CQ as the fast path polls it.
    fn take_cq(&mut self) -> Cq {
        let parts = self.cq_parts.take().expect("the CQ is taken once");
        CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells)
            .expect("the rig's CQ")
    }

    /// A buffer of `len` bytes registered with `access`; returns (addr, key).
    fn buffer(&mut self, len: usize, access: Access) -> (u64, u32) {
        let memory = self.model.memory_mut();
        let addr = memory.alloc(len);
        let key = memory.register(addr, len as u64, access);
        (addr, key)
    }
}

/// An RC QP whose 256-byte send WQEs take up to 200 bytes inline.
fn inline_spec(cqn: u32) -> QpSpec {
    QpSpec {
        caps: SendQueueCaps {
            max_sge: 4,
            max_inline: 200,
            signal_all: true,
        },
        sq_wqe_shift: 8,
        ..QpSpec::rc(cqn, cqn)
    }
}

fn poll_all(cq: &mut Cq, qps: &[QpCompletions<'_, HostPlatform>]) -> Vec<Completion> {
    let mut out = [Completion::EMPTY; 16];
    let mut all = Vec::new();
    loop {
        let n = cq.poll(qps, &mut out).expect("poll");
        all.extend_from_slice(&out[..n]);
        if n < out.len() {
            return all;
        }
    }
}

/// What fits in a 64-byte WQE after the control and remote address segments.
const SMALL_CAPS: SendQueueCaps = SendQueueCaps {
    max_sge: 2,
    max_inline: 28,
    signal_all: false,
};

const ALL: Access = Access::LOCAL_WRITE
    .union(Access::REMOTE_READ)
    .union(Access::REMOTE_WRITE)
    .union(Access::REMOTE_ATOMIC);

fn sge(addr: u64, length: u32, lkey: u32) -> Sge {
    Sge { addr, length, lkey }
}

#[test]
fn a_signaled_send_wqe_is_laid_out_byte_for_byte() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let spec = QpSpec {
        sq_wqe_shift: 6,
        log_sq_entries: 6,
        caps: SMALL_CAPS,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, _b) = rig.rc_pair(spec);
    let qpn = a.qpn();
    let (mut sq, _, _) = a.split(&rig.uar);
    let sges = [sge(0x1122_3344_5566_7788, 0x100, 0xabcd)];
    let wr = SendWr::new(1, SendOp::Send, Payload::Gather(&sges), SendFlags::SIGNALED);
    sq.post(&[wr]).unwrap();
    let ring = a_ring(&a);
    // SAFETY: single-threaded test; the model does not run until `process`.
    let bytes = unsafe { ring.with_entry(0, |wqe| wqe[..32].to_vec()) };
    #[rustfmt::skip]
    let expected = [
        0x00, 0x00, 0x00, 0x0a, // owner 0 (lap 0), opcode SEND
        0x00, 0x00, 0x00, 0x02, // no VLAN, fence_size: 2 x 16 bytes
        0x00, 0x00, 0x00, 0x0c, // srcrb_flags: CQ_UPDATE
        0x00, 0x00, 0x00, 0x00, // imm
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xab, 0xcd, // byte_count, lkey
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // addr
    ];
    assert_eq!(bytes, expected);
    assert_eq!(rig.uar.pending(), 1);
    let _ = qpn;
}

fn a_ring(qp: &QueuePairState<HostPlatform>) -> &hw_mlx4::model::HostRing {
    qp.send_state().ring()
}

#[test]
fn send_and_receive_move_data_and_complete_both_sides() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (src, src_key) = rig.buffer(4096, ALL);
    let (dst, dst_key) = rig.buffer(4096, ALL);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    rig.model.memory_mut().write(src, &payload).unwrap();
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _a_rq, a_done) = a.split(&uar);
    let (_b_sq, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];

    b_rq.post(&[RecvWr {
        wr_id: 77,
        sges: &[sge(dst, 4096, dst_key)],
    }])
    .unwrap();
    let gather = [
        sge(src, 1000, src_key),
        sge(src + 1000, 2000, LOCAL_DMA_LKEY),
    ];
    a_sq.post(&[SendWr::new(
        5,
        SendOp::SendWithImm(0xfeed),
        Payload::Gather(&gather),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(done.len(), 2);
    let recv = done.iter().find(|c| c.wr_id == 77).unwrap();
    assert_eq!(recv.status, WcStatus::Success);
    assert_eq!(recv.opcode, WcOpcode::Recv);
    assert_eq!(recv.byte_len, 3000);
    assert_eq!(recv.imm, 0xfeed);
    assert_eq!(recv.flags, WcFlags::WITH_IMM);
    assert_eq!(recv.src_qp, a_done.qpn());
    let send = done.iter().find(|c| c.wr_id == 5).unwrap();
    assert_eq!(
        (send.status, send.opcode, send.qpn),
        (WcStatus::Success, WcOpcode::Send, a_done.qpn())
    );
    assert_eq!(rig.model.memory().read(dst, 3000).unwrap(), &payload[..]);
    assert!(rig.model.take_errors().is_empty());
}

/// A lone WR of inline data goes to the QP's BlueFlame register, into its two buffers in
/// turn; the model executes each copy and checks it against the ring. What does not fit
/// the buffer, a chain, and gathered data go by the doorbell.
#[test]
fn blueflame_carries_single_inline_sends_and_alternates_buffers() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(inline_spec(rig.cqn));
    let (dst, dst_key) = rig.buffer(8192, ALL);
    let (src, src_key) = rig.buffer(64, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let mut register = HostBlueFlame::new(&uar, BLUEFLAME_BUFFER_SIZE);
    let (mut a_sq, _, a_done) = a.split_with_blueflame(&uar, &mut register);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let kinds = |uar: &HostUar| -> Vec<&'static str> {
        uar.pending_writes()
            .iter()
            .map(|write| match write {
                UarWrite::BlueFlame { buffer: 0, .. } => "bf0",
                UarWrite::BlueFlame { .. } => "bf1",
                UarWrite::Send(_) => "doorbell",
                _ => "other",
            })
            .collect()
    };
    // 200 bytes inline make a 224-byte WQE: within the 256-byte buffer.
    for (round, len) in [1usize, 44, 60, 150, 200, 12].into_iter().enumerate() {
        let message: Vec<u8> = (0..len).map(|i| (i * 13 + round) as u8).collect();
        let at = dst + round as u64 * 256;
        b_rq.post(&[RecvWr {
            wr_id: round as u64,
            sges: &[sge(at, 256, dst_key)],
        }])
        .unwrap();
        a_sq.post(&[SendWr::new(
            100 + round as u64,
            SendOp::Send,
            Payload::Inline(&message),
            SendFlags::SIGNALED,
        )])
        .unwrap();
        let expected = if round % 2 == 0 { "bf0" } else { "bf1" };
        assert_eq!(kinds(&uar), [expected], "round {round}");
        rig.model.process().unwrap();
        let done = poll_all(&mut cq, &qps);
        assert_eq!(done.len(), 2, "round {round}");
        assert!(done.iter().all(|c| c.status == WcStatus::Success));
        assert_eq!(rig.model.memory().read(at, len).unwrap(), &message[..]);
    }
    // Two WRs, or gathered data: the doorbell.
    let two = [
        SendWr::new(1, SendOp::Send, Payload::Inline(b"ab"), SendFlags::SIGNALED),
        SendWr::new(2, SendOp::Send, Payload::Inline(b"cd"), SendFlags::SIGNALED),
    ];
    for i in 0..3 {
        b_rq.post(&[RecvWr {
            wr_id: 50 + i,
            sges: &[sge(dst + 4096 + i * 64, 64, dst_key)],
        }])
        .unwrap();
    }
    a_sq.post(&two).unwrap();
    a_sq.post(&[SendWr::new(
        3,
        SendOp::Send,
        Payload::Gather(&[sge(src, 64, src_key)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    assert_eq!(kinds(&uar), ["doorbell", "doorbell"]);
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps).len(), 6);
    assert!(rig.model.take_errors().is_empty());
}

#[test]
fn inline_sends_cross_64_byte_boundaries_intact() {
    let mut rig = Rig::new(6, CqeStride::Bytes64);
    let (mut a, mut b) = rig.rc_pair(inline_spec(rig.cqn));
    let (dst, dst_key) = rig.buffer(4096, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    for len in [1usize, 12, 44, 45, 60, 64, 100, 150, 200] {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(len as u8))
            .collect();
        b_rq.post(&[RecvWr {
            wr_id: len as u64,
            sges: &[sge(dst, 4096, dst_key)],
        }])
        .unwrap();
        a_sq.post(&[SendWr::new(
            1000 + len as u64,
            SendOp::Send,
            Payload::Inline(&data),
            SendFlags::empty(),
        )])
        .unwrap();
        rig.model.process().unwrap();
        let done = poll_all(&mut cq, &qps);
        assert_eq!(done.len(), 2, "len {len}");
        assert!(done.iter().all(|c| c.status == WcStatus::Success));
        assert_eq!(
            rig.model.memory().read(dst, len).unwrap(),
            &data[..],
            "len {len}"
        );
    }
    let too_long = [0u8; 201];
    let err = a_sq.post(&[SendWr::new(
        1,
        SendOp::Send,
        Payload::Inline(&too_long),
        SendFlags::empty(),
    )]);
    assert_eq!(err.unwrap_err().error, PostError::InlineTooLong);
}

#[test]
fn rdma_write_read_and_atomics() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(8192, ALL);
    let (remote, rkey) = rig.buffer(8192, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i ^ 0x5a) as u8).collect();
    rig.model.memory_mut().write(local, &pattern).unwrap();

    // RDMA WRITE, then WRITE_WITH_IMM which also consumes a receive.
    b_rq.post(&[RecvWr {
        wr_id: 9,
        sges: &[],
    }])
    .unwrap();
    let at = Remote {
        addr: remote + 100,
        rkey,
    };
    a_sq.post(&[
        SendWr::new(
            1,
            SendOp::RdmaWrite(at),
            Payload::Gather(&[sge(local, 4096, lkey)]),
            SendFlags::SIGNALED,
        ),
        SendWr::new(
            2,
            SendOp::RdmaWriteWithImm(at, 0x1234),
            Payload::Gather(&[sge(local, 16, lkey)]),
            SendFlags::SIGNALED,
        ),
    ])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(done.len(), 3);
    let imm = done.iter().find(|c| c.wr_id == 9).unwrap();
    assert_eq!(
        (imm.opcode, imm.imm, imm.byte_len),
        (WcOpcode::RecvRdmaWithImm, 0x1234, 16)
    );
    assert_eq!(
        done.iter().find(|c| c.wr_id == 1).unwrap().opcode,
        WcOpcode::RdmaWrite
    );
    assert_eq!(
        rig.model.memory().read(remote + 100, 4096).unwrap(),
        &pattern[..]
    );

    // RDMA READ back into a second local buffer.
    let back = local + 4096;
    a_sq.post(&[SendWr::new(
        3,
        SendOp::RdmaRead(at),
        Payload::Gather(&[sge(back, 4096, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(
        (done[0].opcode, done[0].byte_len, done[0].status),
        (WcOpcode::RdmaRead, 4096, WcStatus::Success)
    );
    assert_eq!(rig.model.memory().read(back, 4096).unwrap(), &pattern[..]);

    // Atomics on a big-endian counter: fetch-add, then a failing and a succeeding swap.
    let counter = Remote {
        addr: remote + 4096,
        rkey,
    };
    rig.model
        .memory_mut()
        .write(counter.addr, &40u64.to_be_bytes())
        .unwrap();
    let old = sge(local, 8, lkey);
    for (wr_id, op, expect_old, expect_now) in [
        (
            10,
            SendOp::AtomicFetchAdd {
                remote: counter,
                add: 2,
            },
            40u64,
            42u64,
        ),
        (
            11,
            SendOp::AtomicCmpSwap {
                remote: counter,
                compare: 7,
                swap: 99,
            },
            42,
            42,
        ),
        (
            12,
            SendOp::AtomicCmpSwap {
                remote: counter,
                compare: 42,
                swap: 99,
            },
            42,
            99,
        ),
    ] {
        // Poisoned first: the old value read back must be the one this atomic returned,
        // not what an earlier one left (the second and third both return 42).
        rig.model.memory_mut().write(local, &[0xa5; 8]).unwrap();
        a_sq.post(&[SendWr::new(
            wr_id,
            op,
            Payload::Gather(&[old]),
            SendFlags::SIGNALED,
        )])
        .unwrap();
        rig.model.process().unwrap();
        let done = poll_all(&mut cq, &qps);
        assert_eq!(done[0].status, WcStatus::Success);
        assert_eq!(done[0].byte_len, 8);
        let got = u64::from_be_bytes(
            rig.model
                .memory()
                .read(local, 8)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(got, expect_old, "wr {wr_id}");
        let now = u64::from_be_bytes(
            rig.model
                .memory()
                .read(counter.addr, 8)
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(now, expect_now, "wr {wr_id}");
    }
    let bad = a_sq.post(&[SendWr::new(
        1,
        SendOp::AtomicFetchAdd {
            remote: counter,
            add: 1,
        },
        Payload::Gather(&[sge(local, 4, lkey)]),
        SendFlags::SIGNALED,
    )]);
    assert_eq!(bad.unwrap_err().error, PostError::BadAtomicSge);
    assert!(rig.model.take_errors().is_empty());
}

#[test]
fn a_bad_rkey_fails_with_remote_access_error_and_flushes_the_rest() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(4096, ALL);
    let (remote, rkey) = rig.buffer(4096, Access::LOCAL_WRITE | Access::REMOTE_READ);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let a_qpn = a.qpn();
    let (mut a_sq, mut a_rq, a_done) = a.split(&uar);
    let (_, _, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    a_rq.post(&[RecvWr {
        wr_id: 50,
        sges: &[sge(local, 64, lkey)],
    }])
    .unwrap();
    let data = [sge(local, 64, lkey)];
    a_sq.post(&[
        // No REMOTE_WRITE on the region: refused.
        SendWr::new(
            1,
            SendOp::RdmaWrite(Remote { addr: remote, rkey }),
            Payload::Gather(&data),
            SendFlags::empty(),
        ),
        SendWr::new(
            2,
            SendOp::RdmaWrite(Remote {
                addr: remote,
                rkey: rkey ^ 0x100,
            }),
            Payload::Gather(&data),
            SendFlags::SIGNALED,
        ),
    ])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    let statuses: Vec<_> = done.iter().map(|c| (c.wr_id, c.status)).collect();
    assert_eq!(
        statuses,
        [
            (1, WcStatus::RemoteAccessError),
            (2, WcStatus::WrFlushError),
            (50, WcStatus::WrFlushError)
        ]
    );
    assert_eq!(rig.model.qp_state(a_qpn), Some(QpState::Error));
    // The responder refused the R_Key: its QP goes to error as well.
    assert_eq!(rig.model.qp_state(b_done.qpn()), Some(QpState::Error));
    // Posting to a QP in error still completes, with flush errors.
    a_sq.post(&[SendWr::new(
        3,
        SendOp::Send,
        Payload::Gather(&[]),
        SendFlags::empty(),
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!((done[0].wr_id, done[0].status), (3, WcStatus::WrFlushError));
    let _ = b;
}

#[test]
fn receive_too_small_is_a_length_error_on_both_sides() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (buf, key) = rig.buffer(4096, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    b_rq.post(&[RecvWr {
        wr_id: 1,
        sges: &[sge(buf, 10, key)],
    }])
    .unwrap();
    a_sq.post(&[SendWr::new(
        2,
        SendOp::Send,
        Payload::Gather(&[sge(buf + 100, 11, key)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    let statuses: Vec<_> = done.iter().map(|c| (c.wr_id, c.status)).collect();
    assert_eq!(
        statuses,
        [
            (1, WcStatus::LocalLengthError),
            (2, WcStatus::RemoteInvalidRequestError)
        ]
    );
}

#[test]
fn a_send_without_a_receive_waits_for_one_or_fails_without_rnr_retries() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (buf, key) = rig.buffer(64, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    a_sq.post(&[SendWr::new(
        1,
        SendOp::Send,
        Payload::Inline(b"hi"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert!(
        poll_all(&mut cq, &qps).is_empty(),
        "RNR: nothing completes yet"
    );
    b_rq.post(&[RecvWr {
        wr_id: 2,
        sges: &[sge(buf, 64, key)],
    }])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps).len(), 2);

    let spec = QpSpec {
        rnr_retry: 0,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut c, d) = rig.rc_pair(spec);
    let (mut c_sq, _, c_done) = c.split(&uar);
    a_sq.post(&[]).unwrap();
    c_sq.post(&[SendWr::new(
        3,
        SendOp::Send,
        Payload::Inline(b"hi"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &[c_done]);
    assert_eq!(
        (done[0].wr_id, done[0].status),
        (3, WcStatus::RnrRetryExceededError)
    );
    let _ = d;
}

#[test]
fn fast_registration_grants_remote_access_until_invalidated() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(4 * 4096, ALL);
    // Three scattered pages (a spacer after each, so no two are adjacent) and the page
    // list that maps them.
    let memory = rig.model.memory_mut();
    let pages: Vec<u64> = (0..3)
        .map(|_| {
            let page = memory.alloc(4096);
            memory.alloc(64);
            page
        })
        .collect();
    let list = memory.alloc(64);
    let entries: Vec<u8> = pages.iter().flat_map(|p| (p | 1).to_be_bytes()).collect();
    memory.write(list, &entries).unwrap();
    let mr_key = memory.alloc_fast_reg(16) | 0x07;
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let iova = 0x7000_0000;
    let reg = FastReg {
        key: mr_key,
        page_list: list,
        iova,
        length: 3 * 4096,
        page_shift: 12,
        access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
    };
    b_sq.post(&[SendWr::new(
        1,
        SendOp::FastReg(reg),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(
        (done[0].opcode, done[0].status),
        (WcOpcode::RegMr, WcStatus::Success)
    );

    // A write across the page boundary lands in the two scattered pages.
    let data: Vec<u8> = (0..200u8).collect();
    rig.model.memory_mut().write(local, &data).unwrap();
    let at = Remote {
        addr: iova + 4096 - 100,
        rkey: mr_key,
    };
    a_sq.post(&[SendWr::new(
        2,
        SendOp::RdmaWrite(at),
        Payload::Gather(&[sge(local, 200, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].status, WcStatus::Success);
    assert_eq!(
        rig.model.memory().read(pages[0] + 4096 - 100, 100).unwrap(),
        &data[..100]
    );
    assert_eq!(
        rig.model.memory().read(pages[1], 100).unwrap(),
        &data[100..]
    );

    // Invalidate; the same write is now refused with a remote access error.
    b_sq.post(&[SendWr::new(
        3,
        SendOp::LocalInvalidate { rkey: mr_key },
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].opcode, WcOpcode::LocalInvalidate);
    assert!(!rig.model.memory().is_valid(mr_key));
    a_sq.post(&[SendWr::new(
        4,
        SendOp::RdmaWrite(at),
        Payload::Gather(&[sge(local, 200, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(
        poll_all(&mut cq, &qps)[0].status,
        WcStatus::RemoteAccessError
    );
}

#[test]
fn send_with_invalidate_invalidates_at_the_responder() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (buf, key) = rig.buffer(4096, ALL);
    let memory = rig.model.memory_mut();
    let page = memory.alloc(4096);
    let list = memory.alloc(8);
    memory.write(list, &(page | 1).to_be_bytes()).unwrap();
    let mr_key = memory.alloc_fast_reg(1);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let reg = FastReg {
        key: mr_key,
        page_list: list,
        iova: 0,
        length: 4096,
        page_shift: 12,
        access: Access::REMOTE_WRITE,
    };
    b_sq.post(&[SendWr::new(
        1,
        SendOp::FastReg(reg),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    b_rq.post(&[RecvWr {
        wr_id: 2,
        sges: &[sge(buf, 64, key)],
    }])
    .unwrap();
    a_sq.post(&[SendWr::new(
        3,
        SendOp::SendWithInvalidate(mr_key),
        Payload::Inline(b"done"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    let recv = done.iter().find(|c| c.wr_id == 2).unwrap();
    assert_eq!((recv.flags, recv.imm), (WcFlags::WITH_INVALIDATE, mr_key));
    assert!(!rig.model.memory().is_valid(mr_key));
}

#[test]
fn ud_sends_carry_the_grh_and_drop_on_a_wrong_qkey() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let qkey = 0x1111_0000;
    let mut a = rig
        .model
        .create_qp(&QpSpec::ud(rig.cqn, rig.cqn, qkey))
        .unwrap();
    let mut b = rig
        .model
        .create_qp(&QpSpec::ud(rig.cqn, rig.cqn, qkey))
        .unwrap();
    let (buf, key) = rig.buffer(4096, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let b_qpn = b.qpn();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let mut av = AddressVector {
        g_slid: AddressVector::GRH_PRESENT,
        hop_limit: 64,
        ..AddressVector::default()
    };
    // SL 15 in the top bits (not part of the GRH), traffic class 0x12, flow 0x3456.
    av.sl_tclass_flowlabel = Be32::new(0xf012_3456);
    av.port_pd = Be32::new(1 << AddressVector::PORT_SHIFT | 1);
    av.dgid = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1];
    let dest = UdAddress {
        av,
        remote_qpn: b_qpn,
        remote_qkey: qkey,
        vlan: 0,
        mac: [2, 0, 0, 0, 0, 1],
    };
    // Two receives: a datagram the Q_Key check let through would take the first.
    b_rq.post(&[
        RecvWr {
            wr_id: 1,
            sges: &[sge(buf, 2048, key)],
        },
        RecvWr {
            wr_id: 11,
            sges: &[sge(buf + 2048, 2048, key)],
        },
    ])
    .unwrap();
    let mut wr = SendWr::new(
        2,
        SendOp::Send,
        Payload::Inline(b"datagram"),
        SendFlags::SIGNALED,
    );
    wr.ud = Some(&dest);
    let wrong = UdAddress {
        remote_qkey: 5,
        ..dest
    };
    let mut dropped = SendWr::new(
        3,
        SendOp::Send,
        Payload::Inline(b"lost"),
        SendFlags::SIGNALED,
    );
    dropped.ud = Some(&wrong);
    // The wrong Q_Key first: dropped, it leaves the first receive for the right one.
    a_sq.post(&[dropped, wr]).unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(done.len(), 3, "two send completions and one receive");
    assert!(
        done.iter().all(|c| c.wr_id != 11),
        "the second receive stays posted"
    );
    let recv = done.iter().find(|c| c.wr_id == 1).unwrap();
    assert_eq!(recv.byte_len, 40 + 8);
    assert!(recv.flags.contains(WcFlags::GRH));
    assert!(!recv.flags.contains(WcFlags::WITH_IMM));
    assert_eq!(rig.model.memory().read(buf + 40, 8).unwrap(), b"datagram");
    // The GRH: version 6, traffic class and flow label, payload length, next header
    // (IBA transport), hop limit; the destination GID last.
    assert_eq!(
        rig.model.memory().read(buf, 8).unwrap(),
        [0x60, 0x12, 0x34, 0x56, 0, 8, 0x1b, 64]
    );
    assert_eq!(rig.model.memory().read(buf + 24, 16).unwrap(), &av.dgid);
    // A SEND with immediate takes the second receive with its immediate data.
    let mut with_imm = SendWr::new(
        6,
        SendOp::SendWithImm(0x0bad_cafe),
        Payload::Inline(b"imm"),
        SendFlags::SIGNALED,
    );
    with_imm.ud = Some(&dest);
    a_sq.post(&[with_imm]).unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    let recv = done.iter().find(|c| c.wr_id == 11).unwrap();
    assert!(recv.flags.contains(WcFlags::WITH_IMM));
    assert_eq!((recv.imm, recv.byte_len), (0x0bad_cafe, 40 + 3));
    // RC operations are refused on a UD QP, and a UD WR needs its destination.
    let rc_only = SendWr::new(
        4,
        SendOp::RdmaRead(Remote { addr: 0, rkey: 0 }),
        Payload::Gather(&[]),
        SendFlags::empty(),
    );
    assert_eq!(
        a_sq.post(&[rc_only]).unwrap_err().error,
        PostError::WrongQpType
    );
    let no_dest = SendWr::new(5, SendOp::Send, Payload::Gather(&[]), SendFlags::empty());
    assert_eq!(
        a_sq.post(&[no_dest]).unwrap_err().error,
        PostError::WrongQpType
    );
    let _ = QpType::Ud;
}

#[test]
fn unsignaled_wqes_complete_with_the_next_signaled_one_over_many_laps() {
    // Small rings so that SQ, RQ and CQ all wrap many times.
    let mut rig = Rig::new(3, CqeStride::Bytes32);
    let spec = QpSpec {
        log_sq_entries: 6,
        sq_wqe_shift: 6,
        log_rq_entries: 3,
        caps: SMALL_CAPS,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, mut b) = rig.rc_pair(spec);
    let (buf, key) = rig.buffer(1 << 16, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let mut next_recv = 0u64;
    let mut expected_send = 0u64;
    for round in 0..300u64 {
        // Three WRs per round, only the last signaled; one receive per send.
        let recvs: Vec<RecvWr> = (0..3)
            .map(|i| RecvWr {
                wr_id: next_recv + i,
                sges: &[],
            })
            .collect::<Vec<_>>();
        let sges = [sge(buf + round, 1, key)];
        let recv_sges: Vec<[Sge; 1]> = (0..3).map(|i| [sge(buf + 4096 + i * 8, 8, key)]).collect();
        let recvs: Vec<RecvWr> = recvs
            .iter()
            .zip(recv_sges.iter())
            .map(|(wr, sges)| RecvWr {
                wr_id: wr.wr_id,
                sges,
            })
            .collect();
        b_rq.post(&recvs).unwrap();
        next_recv += 3;
        let wrs: Vec<SendWr> = (0..3)
            .map(|i| {
                let flags = if i == 2 {
                    SendFlags::SIGNALED
                } else {
                    SendFlags::empty()
                };
                SendWr::new(round * 3 + i, SendOp::Send, Payload::Gather(&sges), flags)
            })
            .collect();
        a_sq.post(&wrs).unwrap();
        rig.model.process().unwrap();
        let done = poll_all(&mut cq, &qps);
        assert_eq!(done.len(), 4, "round {round}");
        let send = done.iter().find(|c| c.qpn == a_done.qpn()).unwrap();
        expected_send += 3;
        assert_eq!(send.wr_id, expected_send - 1);
        assert!(done.iter().all(|c| c.status == WcStatus::Success));
    }
    assert!(cq.cons_index() > 8 * 100, "the CQ wrapped many times");
    assert!(a_sq.head() > 64 * 10, "the SQ wrapped many times");
    assert!(rig.model.take_errors().is_empty());
}

#[test]
fn a_full_send_queue_refuses_posts_without_touching_the_ring() {
    let mut rig = Rig::new(8, CqeStride::Bytes32);
    let spec = QpSpec {
        log_sq_entries: 6,
        sq_wqe_shift: 6,
        caps: SMALL_CAPS,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, _b) = rig.rc_pair(spec);
    let max_post = a.send_state().max_post();
    assert_eq!(max_post, 64 - 33, "2 KiB of headroom at 64-byte WQEs");
    let (mut sq, _, _) = a.split(&rig.uar);
    let wr = SendWr::new(0, SendOp::Send, Payload::Gather(&[]), SendFlags::SIGNALED);
    let wrs = vec![wr; max_post as usize + 5];
    let failure = sq.post(&wrs).unwrap_err();
    assert_eq!(
        (failure.index, failure.error),
        (max_post as usize, PostError::QueueFull)
    );
    assert_eq!(sq.head(), max_post);
    assert_eq!(rig.uar.pending(), 1, "one doorbell for the WRs that fit");
    // The queue is full, so nothing is written: the next slot stays software-owned.
    let too_many = [sge(0, 1, 0); 3];
    let failure = sq.post(&[SendWr::new(
        0,
        SendOp::Send,
        Payload::Gather(&too_many),
        SendFlags::empty(),
    )]);
    assert_eq!(
        failure,
        Err(PostFailure {
            index: 0,
            error: PostError::QueueFull
        })
    );
    let next = a_ring(&a).read_word(max_post, 0);
    assert_eq!(
        next & CtrlSeg::OWNER,
        CtrlSeg::OWNER,
        "slot {max_post} was handed over"
    );
    rig.model.process().unwrap();
    assert!(rig.model.take_errors().is_empty());
}

#[test]
fn bad_wrs_are_refused_with_their_index_and_reason() {
    let mut rig = Rig::new(8, CqeStride::Bytes32);
    let spec = QpSpec {
        caps: SMALL_CAPS,
        log_sq_entries: 6,
        sq_wqe_shift: 6,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, _b) = rig.rc_pair(spec);
    let (mut sq, _, _) = a.split(&rig.uar);
    let ok = SendWr::new(1, SendOp::Send, Payload::Gather(&[]), SendFlags::SIGNALED);
    let three = [sge(0, 1, 0); 3];
    let huge = [sge(0, 0x8000_0000, 0)];
    for (bad, error) in [
        (
            SendWr::new(2, SendOp::Send, Payload::Gather(&three), SendFlags::empty()),
            PostError::TooManySges,
        ),
        (
            SendWr::new(2, SendOp::Send, Payload::Gather(&huge), SendFlags::empty()),
            PostError::SgeTooLong,
        ),
        (
            SendWr::new(
                2,
                SendOp::Send,
                Payload::Inline(&[0; 29]),
                SendFlags::empty(),
            ),
            PostError::InlineTooLong,
        ),
    ] {
        let failure = sq.post(&[ok, bad, ok]);
        assert_eq!(failure, Err(PostFailure { index: 1, error }));
    }
    rig.model.process().unwrap();
    assert!(
        rig.model.take_errors().is_empty(),
        "refused WRs left nothing behind"
    );
}

#[test]
fn armed_cqs_raise_one_event_through_the_eq() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let (eqn, eq_ring) = model.create_eq(3);
    let parts = model.create_cq(4, CqeStride::Bytes32, Some(eqn));
    let cqn = parts.cqn;
    let mut eq = EventQueue::<HostPlatform>::new(eqn, eq_ring, &uar).unwrap();
    let mut cq =
        CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells).unwrap();
    let mut a = model.create_qp(&QpSpec::rc(cqn, cqn)).unwrap();
    let mut b = model.create_qp(&QpSpec::rc(cqn, cqn)).unwrap();
    model.connect(a.qpn(), b.qpn());
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    for round in 0..20 {
        cq.arm(&uar, ArmCommand::Next);
        model.process().unwrap();
        assert!(
            eq.next_event().is_none(),
            "round {round}: no completion yet"
        );
        a_sq.post(&[SendWr::new(
            1,
            SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        )])
        .unwrap();
        model.process().unwrap();
        let event = eq.next_event().expect("event");
        assert_eq!(
            (event.event_type, event.object),
            (EventType::Completion as u8, cqn)
        );
        assert!(eq.next_event().is_none(), "one event per arm");
        eq.update_ci(true);
        cq.event_delivered();
        let mut out = [Completion::EMPTY; 4];
        assert_eq!(cq.poll(&qps, &mut out).unwrap(), 1);
        assert_eq!(out[0].status, WcStatus::Success);
        assert!(model.take_errors().is_empty(), "round {round}");
    }
    // Solicited-only arming ignores an unsolicited receive and fires on a solicited one.
    cq.arm(&uar, ArmCommand::Solicited);
    b_rq.post(&[
        RecvWr {
            wr_id: 1,
            sges: &[],
        },
        RecvWr {
            wr_id: 2,
            sges: &[],
        },
    ])
    .unwrap();
    a_sq.post(&[SendWr::new(
        3,
        SendOp::Send,
        Payload::Gather(&[]),
        SendFlags::empty(),
    )])
    .unwrap();
    model.process().unwrap();
    assert!(eq.next_event().is_none());
    a_sq.post(&[SendWr::new(
        4,
        SendOp::Send,
        Payload::Gather(&[]),
        SendFlags::SOLICITED,
    )])
    .unwrap();
    model.process().unwrap();
    assert!(eq.next_event().is_some());
    assert_eq!(model.take_events().len(), 21);
}

#[test]
fn the_model_reports_a_doorbell_with_nothing_new() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let parts = model.create_cq(4, CqeStride::Bytes32, None);
    let a = model.create_qp(&QpSpec::rc(parts.cqn, parts.cqn)).unwrap();
    hw_mlx4::fastpath::platform::UarPage::ring_send_doorbell(
        &uar,
        hw_mlx4::wire::send_doorbell_value(a.qpn()),
    );
    assert_eq!(
        model.process(),
        Err(ModelError::DoorbellWithoutWork { qpn: a.qpn() })
    );
}

#[test]
fn the_model_reports_a_wqe_written_after_its_ownership() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, _b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let qpn = a.qpn();
    let uar = rig.uar.clone();
    {
        let (mut sq, _, _) = a.split(&uar);
        sq.post(&[SendWr::new(
            1,
            SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        )])
        .unwrap();
    }
    // A buggy driver touches the WQE after handing it over.
    // SAFETY: single-threaded test; this is the violation under test.
    unsafe { a.send_state().ring().with_entry_mut(0, |wqe| wqe[12] = 1) };
    let result = rig.model.process();
    assert!(
        matches!(result, Err(ModelError::WqeWrittenAfterHandover { qpn: q, wqe: 0 }) if q == qpn),
        "{result:?}"
    );
    // The checked ring saw the write itself too, when it happened.
    assert_eq!(
        rig.model.take_errors(),
        [
            ModelError::WqeWrittenAfterHandover { qpn, wqe: 0 },
            ModelError::WriteToDeviceWqe { qpn, wqe: 0 },
        ]
    );
}

#[test]
fn the_model_reports_a_consumer_index_ahead_of_its_cqes() {
    let mut rig = Rig::new(4, CqeStride::Bytes32);
    let (mut a, _b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let uar = rig.uar.clone();
    let parts = rig.cq_parts.take().unwrap();
    let set_ci = parts.doorbells.set_ci.clone();
    let (mut sq, _, _) = a.split(&uar);
    let write = SendWr::new(
        1,
        SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    );
    sq.post(&[write]).unwrap();
    rig.model.process().unwrap();
    // One CQE written; a buggy driver claims to have consumed three.
    hw_mlx4::fastpath::platform::DoorbellRecord::write_release(&set_ci, 3);
    sq.post(&[write]).unwrap();
    assert!(matches!(
        rig.model.process(),
        Err(ModelError::ConsumerIndexBackwards { from: 0, to: 3, .. })
    ));
}

#[test]
fn the_model_reports_an_unstamped_block_in_the_read_ahead_window() {
    // 128-byte WQEs: the device may read (2048 >> 7) + 1 = 17 WQEs past the last one
    // handed over, and the second block of each must start with the stamp.
    const SPARE: u32 = (2048 >> 7) + 1;
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let spec = QpSpec {
        log_sq_entries: 6,
        sq_wqe_shift: 7,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, _b) = rig.rc_pair(spec);
    let qpn = a.qpn();
    let uar = rig.uar.clone();
    {
        let (mut sq, _, _) = a.split(&uar);
        sq.post(&[SendWr::new(
            1,
            SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        )])
        .unwrap();
    }
    rig.model.process().unwrap();
    // The last WQE of the window after the one consumed, software's: a driver that did not
    // stamp it.
    let last = SPARE;
    // SAFETY: single-threaded test; the entry is software's.
    unsafe {
        a.send_state()
            .ring()
            .with_entry_mut(last, |wqe| wqe[64..68].fill(0))
    };
    assert_eq!(
        rig.model.process(),
        Err(ModelError::UnstampedBlock {
            qpn,
            wqe: last,
            block: 1
        })
    );
}

#[test]
fn a_qp_in_error_flushes_what_is_posted_and_what_waits() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (buf, key) = rig.buffer(64, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (a_qpn, b_qpn) = (a.qpn(), b.qpn());
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    b_rq.post(&[RecvWr {
        wr_id: 1,
        sges: &[sge(buf, 64, key)],
    }])
    .unwrap();
    rig.model.set_error(b_qpn);
    rig.model.set_error(a_qpn);
    a_sq.post(&[SendWr::new(
        2,
        SendOp::Send,
        Payload::Inline(b"hi"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done: Vec<_> = poll_all(&mut cq, &qps)
        .iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    assert_eq!(
        done,
        [(2, WcStatus::WrFlushError), (1, WcStatus::WrFlushError)]
    );
    assert_eq!(rig.model.qp_state(a_qpn), Some(QpState::Error));
}

#[test]
fn a_qp_its_peer_fails_flushes_its_waiting_send_in_the_same_pass() {
    // A and B each send to the other with no receive posted: both wait (RNR). Then A
    // posts a receive too small for B's message, and no doorbell rings: B's retry fails
    // on both sides, which puts A in error, and A's waiting SEND must flush in the same
    // `process`, not at some later doorbell.
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let spec = QpSpec {
        sq_wqe_shift: 7,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, mut b) = rig.rc_pair(spec);
    assert!(a.qpn() < b.qpn(), "A is visited first in a pass");
    let (buf, key) = rig.buffer(64, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (a_qpn, b_qpn) = (a.qpn(), b.qpn());
    let (mut a_sq, mut a_rq, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let send = |id| {
        SendWr::new(
            id,
            SendOp::Send,
            Payload::Inline(b"eight b!"),
            SendFlags::SIGNALED,
        )
    };
    a_sq.post(&[send(1)]).unwrap();
    b_sq.post(&[send(2)]).unwrap();
    rig.model.process().unwrap();
    assert!(
        poll_all(&mut cq, &qps).is_empty(),
        "both wait for a receive"
    );
    a_rq.post(&[RecvWr {
        wr_id: 3,
        sges: &[sge(buf, 4, key)],
    }])
    .unwrap();
    rig.model.process().unwrap();
    let mut done: Vec<_> = poll_all(&mut cq, &qps)
        .iter()
        .map(|c| (c.wr_id, c.status))
        .collect();
    done.sort_by_key(|&(id, _)| id);
    assert_eq!(
        done,
        [
            (1, WcStatus::WrFlushError),
            (2, WcStatus::RemoteInvalidRequestError),
            (3, WcStatus::LocalLengthError),
        ]
    );
    assert_eq!(rig.model.qp_state(a_qpn), Some(QpState::Error));
    assert_eq!(rig.model.qp_state(b_qpn), Some(QpState::Error));
}

#[test]
fn a_solicited_arm_fires_on_an_error_completion() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let (eqn, eq_ring) = model.create_eq(3);
    let parts = model.create_cq(4, CqeStride::Bytes32, Some(eqn));
    let cqn = parts.cqn;
    let mut eq = EventQueue::<HostPlatform>::new(eqn, eq_ring, &uar).unwrap();
    let mut cq =
        CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells).unwrap();
    let mut a = model.create_qp(&QpSpec::rc(cqn, cqn)).unwrap();
    let b = model.create_qp(&QpSpec::rc(cqn, cqn)).unwrap();
    model.connect(a.qpn(), b.qpn());
    let (mut a_sq, _, _) = a.split(&uar);
    cq.arm(&uar, ArmCommand::Solicited);
    model.process().unwrap();
    // An RDMA WRITE of 8 bytes to a key nobody registered: an error CQE, unsolicited.
    let (local, lkey) = {
        let memory = model.memory_mut();
        let addr = memory.alloc(8);
        (addr, memory.register(addr, 8, ALL))
    };
    a_sq.post(&[SendWr::new(
        1,
        SendOp::RdmaWrite(Remote {
            addr: 0x1000,
            rkey: 0xdead_0000,
        }),
        Payload::Gather(&[sge(local, 8, lkey)]),
        SendFlags::empty(),
    )])
    .unwrap();
    model.process().unwrap();
    let event = eq
        .next_event()
        .expect("an error completion raises the event");
    assert_eq!(event.object, cqn);
}

#[test]
fn an_eq_doorbell_sets_the_arm_as_the_driver_asks() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let (eqn, eq_ring) = model.create_eq(3);
    let mut eq = EventQueue::<HostPlatform>::new(eqn, eq_ring, &uar).unwrap();
    eq.update_ci(false);
    model.process().unwrap();
    assert_eq!(model.eq_armed(eqn), Some(false));
    eq.update_ci(true);
    model.process().unwrap();
    assert_eq!(model.eq_armed(eqn), Some(true));
    assert_eq!(model.eq_armed(eqn + 1), None);
}

#[test]
fn the_model_reports_a_consumer_index_moved_backwards_and_an_overrun() {
    let mut rig = Rig::new(2, CqeStride::Bytes32);
    let (mut a, _b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let uar = rig.uar.clone();
    let parts = rig.cq_parts.take().unwrap();
    let set_ci = parts.doorbells.set_ci.clone();
    let mut cq =
        CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells).unwrap();
    let (mut sq, _, done) = a.split(&uar);
    let write = SendWr::new(
        1,
        SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    );
    sq.post(&[write, write]).unwrap();
    rig.model.process().unwrap();
    let mut out = [Completion::EMPTY; 4];
    assert_eq!(cq.poll(&done, &mut out).unwrap(), 2);
    sq.post(&[write]).unwrap();
    rig.model.process().unwrap();
    // The model has seen consumer index 2; a buggy driver moves it back.
    hw_mlx4::fastpath::platform::DoorbellRecord::write_release(&set_ci, 1);
    sq.post(&[write]).unwrap();
    assert!(matches!(
        rig.model.process(),
        Err(ModelError::ConsumerIndexBackwards { from: 2, to: 1, .. })
    ));
    // Five more CQEs into a CQ of four, never polled.
    hw_mlx4::fastpath::platform::DoorbellRecord::write_release(&set_ci, 2);
    rig.model.take_errors();
    sq.post(&[write, write, write, write, write]).unwrap();
    assert!(matches!(
        rig.model.process(),
        Err(ModelError::CqOverrun { .. })
    ));
}

#[test]
fn a_cqe_for_an_unknown_qp_is_consumed_and_reported() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let write = SendWr::new(
        7,
        SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    );
    a_sq.post(&[write]).unwrap();
    b_sq.post(&[write]).unwrap();
    rig.model.process().unwrap();
    // Poll with only B known: A's CQE comes first and is refused, then B's is delivered.
    let mut out = [Completion::EMPTY; 4];
    let err = cq.poll(&[b_done], &mut out).unwrap_err();
    assert_eq!(
        err,
        PollError {
            polled: 0,
            kind: PollErrorKind::UnknownQpn(a_done.qpn())
        }
    );
    assert_eq!(cq.poll(&[b_done], &mut out).unwrap(), 1);
    assert_eq!(out[0].qpn, b_done.qpn());
    let _ = CtrlSeg::OWNER;
}

#[test]
fn splitting_a_qp_again_resumes_where_posting_stopped() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let write = SendWr::new(
        1,
        SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    );
    for round in 0..3u64 {
        let (mut sq, mut rq, done) = a.split(&uar);
        let (_, _, b_done) = b.split(&uar);
        assert_eq!(sq.head(), round as u32);
        assert_eq!(rq.head(), round as u32);
        sq.post(&[SendWr {
            wr_id: round,
            ..write
        }])
        .unwrap();
        rq.post(&[RecvWr {
            wr_id: round,
            sges: &[],
        }])
        .unwrap();
        rig.model.process().unwrap();
        let completions = poll_all(&mut cq, &[done, b_done]);
        assert_eq!(
            completions
                .iter()
                .map(|c| (c.wr_id, c.status))
                .collect::<Vec<_>>(),
            [(round, WcStatus::Success)]
        );
    }
    assert!(rig.model.take_errors().is_empty());
}

#[test]
fn receive_queues_stay_within_the_16_bit_doorbell_record() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let parts = model.create_cq(4, CqeStride::Bytes32, None);
    let spec = QpSpec {
        log_rq_entries: 16,
        rq_wqe_shift: 4,
        ..QpSpec::rc(parts.cqn, parts.cqn)
    };
    assert!(model.create_qp(&spec).is_err());
    let spec = QpSpec {
        log_rq_entries: 15,
        ..spec
    };
    assert!(model.create_qp(&spec).is_ok());
}

#[test]
fn fast_registration_starts_at_the_iova_offset_and_needs_present_pages() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(4096, ALL);
    let memory = rig.model.memory_mut();
    let pages = [memory.alloc(4096), memory.alloc(4096)];
    let list = memory.alloc(16);
    let entries: Vec<u8> = pages.iter().flat_map(|p| (p | 1).to_be_bytes()).collect();
    memory.write(list, &entries).unwrap();
    let absent = memory.alloc(8);
    memory.write(absent, &pages[0].to_be_bytes()).unwrap();
    let mr_key = memory.alloc_fast_reg(2);
    let other_key = memory.alloc_fast_reg(1);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    // 4 KiB starting 0x100 into the first page: it spans both pages.
    let iova = 0x9000_0100;
    let access = Access::REMOTE_WRITE | Access::LOCAL_WRITE;
    let reg = FastReg {
        key: mr_key,
        page_list: list,
        iova,
        length: 4096,
        page_shift: 12,
        access,
    };
    let unmapped = FastReg {
        key: other_key,
        page_list: absent,
        iova: 0,
        length: 4096,
        page_shift: 12,
        access,
    };
    b_sq.post(&[SendWr::new(
        1,
        SendOp::FastReg(reg),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].status, WcStatus::Success);
    let data: Vec<u8> = (0..=255u8).collect();
    rig.model.memory_mut().write(local, &data).unwrap();
    let at = Remote {
        addr: iova + 4096 - 0x100 - 16,
        rkey: mr_key,
    };
    a_sq.post(&[SendWr::new(
        2,
        SendOp::RdmaWrite(at),
        Payload::Gather(&[sge(local, 32, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].status, WcStatus::Success);
    assert_eq!(
        rig.model.memory().read(pages[0] + 4096 - 16, 16).unwrap(),
        &data[..16]
    );
    assert_eq!(
        rig.model.memory().read(pages[1], 16).unwrap(),
        &data[16..32]
    );
    // A page list entry without MLX4_MTT_FLAG_PRESENT: the registration fails.
    b_sq.post(&[SendWr::new(
        3,
        SendOp::FastReg(unmapped),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(
        poll_all(&mut cq, &qps)[0].status,
        WcStatus::LocalProtectionError
    );
}

#[test]
fn multi_block_wqes_over_many_laps_keep_the_read_ahead_window_stamped() {
    // 128-byte WQEs whose second block carries gather entries, through a 64-entry SQ
    // many times: every reused slot in the device's read-ahead window must be stamped.
    let mut rig = Rig::new(8, CqeStride::Bytes32);
    let spec = QpSpec {
        log_sq_entries: 6,
        sq_wqe_shift: 7,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, _b) = rig.rc_pair(spec);
    let (local, lkey) = rig.buffer(64, ALL);
    let (remote, rkey) = rig.buffer(4096, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut sq, _, done) = a.split(&uar);
    // Control, remote address and four gather entries: 96 bytes, the last two in block 1.
    let sges = [
        sge(local, 8, lkey),
        sge(local + 8, 8, lkey),
        sge(local + 16, 8, lkey),
        sge(local + 24, 8, lkey),
    ];
    for round in 0..200u64 {
        let at = Remote {
            addr: remote + (round % 100) * 32,
            rkey,
        };
        let write = SendWr::new(
            round,
            SendOp::RdmaWrite(at),
            Payload::Gather(&sges),
            SendFlags::SIGNALED,
        );
        sq.post(&[write, write, write]).unwrap();
        rig.model.process().unwrap();
        let completions = poll_all(&mut cq, &[done]);
        assert_eq!(completions.len(), 3, "round {round}");
        assert!(completions.iter().all(|c| c.status == WcStatus::Success));
    }
    assert!(sq.head() > 64 * 9, "the SQ wrapped many times");
}

#[test]
fn each_cq_gets_its_own_number_and_its_own_completions() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let send_parts = model.create_cq(4, CqeStride::Bytes32, None);
    let recv_parts = model.create_cq(4, CqeStride::Bytes32, None);
    assert_ne!(send_parts.cqn, recv_parts.cqn);
    assert!(
        send_parts.cqn < 1 << 24 && recv_parts.cqn < 1 << 24,
        "CQNs are 24 bits"
    );
    let spec = QpSpec::rc(send_parts.cqn, recv_parts.cqn);
    let mut a = model.create_qp(&spec).unwrap();
    let mut b = model.create_qp(&spec).unwrap();
    model.connect(a.qpn(), b.qpn());
    let (buf, key) = {
        let memory = model.memory_mut();
        let addr = memory.alloc(16);
        (addr, memory.register(addr, 16, ALL))
    };
    let mut send_cq =
        CompletionQueue::<HostPlatform>::new(send_parts.cqn, send_parts.ring, send_parts.doorbells)
            .unwrap();
    let mut recv_cq =
        CompletionQueue::<HostPlatform>::new(recv_parts.cqn, recv_parts.ring, recv_parts.doorbells)
            .unwrap();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    b_rq.post(&[RecvWr {
        wr_id: 1,
        sges: &[sge(buf, 16, key)],
    }])
    .unwrap();
    a_sq.post(&[SendWr::new(
        2,
        SendOp::Send,
        Payload::Inline(b"cq"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    model.process().unwrap();
    let sent = poll_all(&mut send_cq, &qps);
    let received = poll_all(&mut recv_cq, &qps);
    assert_eq!(sent.iter().map(|c| c.wr_id).collect::<Vec<_>>(), [2]);
    assert_eq!(received.iter().map(|c| c.wr_id).collect::<Vec<_>>(), [1]);
}

#[test]
fn a_full_receive_queue_is_fine_and_a_record_past_it_is_reported() {
    let uar = HostUar::new();
    let mut model = Model::new(uar.clone());
    let parts = model.create_cq(8, CqeStride::Bytes32, None);
    let spec = QpSpec {
        log_rq_entries: 2,
        ..QpSpec::rc(parts.cqn, parts.cqn)
    };
    let mut a = model.create_qp(&spec).unwrap();
    let mut b = model.create_qp(&spec).unwrap();
    model.connect(a.qpn(), b.qpn());
    let b_qpn = b.qpn();
    let record = b.recv_state().doorbell().clone();
    {
        let (_, mut b_rq, _) = b.split(&uar);
        let recv = |wr_id| RecvWr { wr_id, sges: &[] };
        b_rq.post(&[recv(1), recv(2), recv(3), recv(4)]).unwrap();
    }
    let (mut a_sq, _, _) = a.split(&uar);
    a_sq.post(&[SendWr::new(
        5,
        SendOp::Send,
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    model.process().unwrap();
    // One of four consumed; a buggy driver's record claims five more (four is the ring).
    hw_mlx4::fastpath::platform::DoorbellRecord::write_release(&record, 6);
    a_sq.post(&[SendWr::new(
        6,
        SendOp::Send,
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    assert_eq!(
        model.process(),
        Err(ModelError::RecvDoorbellOverrun {
            qpn: b_qpn,
            record: 6
        })
    );
}

/// Posts one signaled inline SEND of "x" from A to B (a receive posted) on unchecked
/// 128-byte WQEs, lets `edit` rewrite the WQE the fast path wrote, as a driver with a bug
/// would have written it, and runs the model: its verdict and the completions.
fn run_rewritten_send(edit: impl FnOnce(&mut [u8])) -> (Result<(), ModelError>, Vec<Completion>) {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let spec = QpSpec {
        sq_wqe_shift: 7,
        checked: false,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, mut b) = rig.rc_pair(spec);
    let (buf, key) = rig.buffer(256, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let ring = a_ring(&a).clone();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    b_rq.post(&[RecvWr {
        wr_id: 1,
        sges: &[sge(buf, 256, key)],
    }])
    .unwrap();
    a_sq.post(&[SendWr::new(
        2,
        SendOp::Send,
        Payload::Inline(b"x"),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    // SAFETY: single-threaded test; the model does not run until `process`.
    unsafe { ring.with_entry_mut(0, edit) };
    let verdict = rig.model.process();
    let done = poll_all(&mut cq, &[a_done, b_done]);
    (verdict, done)
}

/// Writes an inline segment header (the INLINE bit and the length) at `at`.
fn inline_header(wqe: &mut [u8], at: usize, len: u32) {
    wqe[at..at + 4].copy_from_slice(&(InlineSeg::INLINE | len).to_be_bytes());
}

#[test]
fn a_nop_wqe_completes_and_moves_nothing() {
    let (verdict, done) = run_rewritten_send(|wqe| wqe[3] &= !0x1f);
    verdict.unwrap();
    assert_eq!(done.len(), 1, "the NOP's completion, no receive");
    assert_eq!((done[0].wr_id, done[0].status), (2, WcStatus::Success));
}

#[test]
fn an_inline_segment_across_64_bytes_is_a_malformed_wqe() {
    // Control (16), an inline segment of 12 bytes (16..32), then one of 36 bytes from 32:
    // its data runs to 72, over the 64-byte boundary.
    let (verdict, _) = run_rewritten_send(|wqe| {
        wqe[7] = 5;
        inline_header(wqe, 16, 12);
        inline_header(wqe, 32, 36);
        wqe[36..80].fill(0x5a);
    });
    assert!(
        matches!(
            verdict,
            Err(ModelError::MalformedWqe {
                reason: "inline segment crosses a 64-byte boundary",
                ..
            })
        ),
        "{verdict:?}"
    );
    // The same after a 16-byte data segment instead of the first inline one.
    let (verdict, _) = run_rewritten_send(|wqe| {
        wqe[7] = 5;
        wqe[16..32].fill(0);
        inline_header(wqe, 32, 36);
        wqe[36..80].fill(0x5a);
    });
    assert!(
        matches!(
            verdict,
            Err(ModelError::MalformedWqe {
                reason: "inline segment crosses a 64-byte boundary",
                ..
            })
        ),
        "{verdict:?}"
    );
}

#[test]
fn a_fast_registration_grants_only_the_access_it_names() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(64, ALL);
    let memory = rig.model.memory_mut();
    let page = memory.alloc(4096);
    memory.write(page, &[0x77; 64]).unwrap();
    let list = memory.alloc(8);
    memory.write(list, &(page | 1).to_be_bytes()).unwrap();
    let mr_key = memory.alloc_fast_reg(1) | 0x09;
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let iova = 0x5000_0000;
    let reg = FastReg {
        key: mr_key,
        page_list: list,
        iova,
        length: 4096,
        page_shift: 12,
        access: Access::LOCAL_WRITE | Access::REMOTE_READ,
    };
    b_sq.post(&[SendWr::new(
        1,
        SendOp::FastReg(reg),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].status, WcStatus::Success);
    let at = Remote {
        addr: iova,
        rkey: mr_key,
    };
    a_sq.post(&[SendWr::new(
        2,
        SendOp::RdmaRead(at),
        Payload::Gather(&[sge(local, 64, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps)[0].status, WcStatus::Success);
    assert_eq!(rig.model.memory().read(local, 64).unwrap(), [0x77; 64]);
    a_sq.post(&[SendWr::new(
        3,
        SendOp::RdmaWrite(at),
        Payload::Gather(&[sge(local, 64, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(
        poll_all(&mut cq, &qps)[0].status,
        WcStatus::RemoteAccessError,
        "a WRITE into a region registered for remote READ only"
    );
}

/// A send waiting for a receive (RNR) is a handed-over WQE the device has not consumed:
/// its blocks past the first hold its payload, not stamps, and the model must not take
/// them for the read-ahead window's.
#[test]
fn a_multi_block_send_waiting_for_a_receive_is_not_a_stamp_violation() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(inline_spec(rig.cqn));
    let (dst, dst_key) = rig.buffer(4096, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let data = [0x5au8; 150];
    a_sq.post(&[SendWr::new(
        1,
        SendOp::Send,
        Payload::Inline(&data),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    for _ in 0..3 {
        rig.model.process().expect("a stalled send breaks no rule");
    }
    assert!(poll_all(&mut cq, &qps).is_empty(), "RNR: waiting");
    b_rq.post(&[RecvWr {
        wr_id: 2,
        sges: &[sge(dst, 4096, dst_key)],
    }])
    .unwrap();
    rig.model.process().unwrap();
    assert_eq!(poll_all(&mut cq, &qps).len(), 2);
}

/// CQ numbers are names: as many CQs as a driver creates, each its own.
#[test]
fn every_cq_gets_a_number_of_its_own() {
    let mut model = Model::new(HostUar::new());
    let mut cqns: Vec<u32> = (0..300)
        .map(|_| model.create_cq(1, CqeStride::Bytes32, None).cqn)
        .collect();
    cqns.sort_unstable();
    cqns.dedup();
    assert_eq!(cqns.len(), 300);
}

/// One WR on a fresh RC pair's B side (after `prepare` sets up the model's memory),
/// processed; its completion status.
fn one_wr_status(prepare: impl FnOnce(&mut Rig) -> SendOp) -> WcStatus {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let op = prepare(&mut rig);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut b_sq, _, b_done) = b.split(&uar);
    b_sq.post(&[SendWr::new(
        9,
        op,
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &[b_done]);
    let _ = a;
    done[0].status
}

/// The model's memory keys: a registered region is valid until deregistered (once);
/// fast registration takes a free fast-register key only; invalidation names a valid
/// fast-registered key exactly; the reserved lkey grants no remote access; a region at
/// an iova inside its first page starts there.
#[test]
fn the_models_keys_register_invalidate_and_translate_as_the_hardware() {
    let mut memory_rig = Rig::new(4, CqeStride::Bytes32);
    let memory = memory_rig.model.memory_mut();
    let addr = memory.alloc(4096);
    let key = memory.register(addr, 4096, ALL);
    assert!(memory.is_valid(key));
    assert!(!memory.is_valid(key ^ 1), "another variant");
    assert!(memory.deregister(key));
    assert!(!memory.deregister(key), "once");
    assert!(!memory.is_valid(key));

    let page_list = |rig: &mut Rig, pages: usize| {
        let memory = rig.model.memory_mut();
        let list = memory.alloc(8 * pages);
        let entries: Vec<u8> = (0..pages)
            .flat_map(|_| (memory.alloc(4096) | 1).to_be_bytes())
            .collect();
        memory.write(list, &entries).unwrap();
        list
    };
    let reg = |key: u32, page_list: u64| {
        SendOp::FastReg(FastReg {
            key,
            page_list,
            iova: 0x7000_0000,
            length: 4096,
            page_shift: 12,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        })
    };
    // A free fast-register key: registered. A valid one (registered twice) or a plain
    // region's: refused.
    assert_eq!(
        one_wr_status(|rig| {
            let list = page_list(rig, 1);
            reg(rig.model.memory_mut().alloc_fast_reg(4) | 7, list)
        }),
        WcStatus::Success
    );
    let mut twice = Rig::new(6, CqeStride::Bytes32);
    let (_a, mut b) = twice.rc_pair(QpSpec::rc(twice.cqn, twice.cqn));
    let list = page_list(&mut twice, 1);
    let fr_key = twice.model.memory_mut().alloc_fast_reg(4) | 7;
    let uar = twice.uar.clone();
    let mut cq = twice.take_cq();
    let (mut b_sq, _, b_done) = b.split(&uar);
    for id in [1, 2] {
        b_sq.post(&[SendWr::new(
            id,
            reg(fr_key, list),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        )])
        .unwrap();
    }
    twice.model.process().unwrap();
    let done = poll_all(&mut cq, &[b_done]);
    assert_eq!(done[0].status, WcStatus::Success);
    assert_ne!(done[1].status, WcStatus::Success, "a valid key is not free");
    assert_ne!(
        one_wr_status(|rig| {
            let list = page_list(rig, 1);
            let memory = rig.model.memory_mut();
            let addr = memory.alloc(4096);
            reg(memory.register(addr, 4096, ALL), list)
        }),
        WcStatus::Success,
        "a plain region is not fast-registrable"
    );
    // LOCAL_INV: of a plain region, or of a free fast-register key, refused.
    assert_ne!(
        one_wr_status(|rig| {
            let memory = rig.model.memory_mut();
            let addr = memory.alloc(4096);
            SendOp::LocalInvalidate {
                rkey: memory.register(addr, 4096, ALL),
            }
        }),
        WcStatus::Success
    );
    assert_ne!(
        one_wr_status(|rig| SendOp::LocalInvalidate {
            rkey: rig.model.memory_mut().alloc_fast_reg(4) | 7,
        }),
        WcStatus::Success
    );
}

/// The reserved lkey is local: an RDMA WRITE naming it as the rkey is refused.
#[test]
fn the_reserved_lkey_is_no_rkey() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(64, ALL);
    let target = rig.model.memory_mut().alloc(64);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    assert_eq!(uar.pending(), 0);
    a_sq.post(&[SendWr::new(
        1,
        SendOp::RdmaWrite(Remote {
            addr: target,
            rkey: LOCAL_DMA_LKEY,
        }),
        Payload::Gather(&[sge(local, 8, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    a_sq.post(&[]).unwrap();
    assert!(uar.pending() >= 1, "the doorbell waits for the model");
    rig.model.process().unwrap();
    assert_eq!(uar.pending(), 0, "taken");
    assert_eq!(
        poll_all(&mut cq, &[a_done])[0].status,
        WcStatus::RemoteAccessError
    );
    let _ = b;
}

/// A fast registration at an iova 256 bytes into its first page: the region's first
/// byte is that page's byte 256.
#[test]
fn a_fast_registered_region_starts_at_its_iovas_offset_in_the_first_page() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let (mut a, mut b) = rig.rc_pair(QpSpec::rc(rig.cqn, rig.cqn));
    let (local, lkey) = rig.buffer(64, ALL);
    let memory = rig.model.memory_mut();
    let pages = [memory.alloc(4096), memory.alloc(4096)];
    let list = memory.alloc(16);
    let entries: Vec<u8> = pages.iter().flat_map(|p| (p | 1).to_be_bytes()).collect();
    memory.write(list, &entries).unwrap();
    memory.write(local, b"offset!!").unwrap();
    let key = memory.alloc_fast_reg(4) | 3;
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (mut b_sq, _, b_done) = b.split(&uar);
    let iova = 0x7000_0100;
    b_sq.post(&[SendWr::new(
        1,
        SendOp::FastReg(FastReg {
            key,
            page_list: list,
            iova,
            length: 4096,
            page_shift: 12,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        }),
        Payload::Gather(&[]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    a_sq.post(&[SendWr::new(
        2,
        SendOp::RdmaWrite(Remote {
            addr: iova,
            rkey: key,
        }),
        Payload::Gather(&[sge(local, 8, lkey)]),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &[a_done, b_done]);
    assert!(
        done.iter().all(|c| c.status == WcStatus::Success),
        "{done:?}"
    );
    assert_eq!(
        rig.model.memory().read(pages[0] + 0x100, 8).unwrap(),
        b"offset!!"
    );
}

/// After a catastrophic error the device completes nothing more: what was posted and not
/// completed comes back from the driver itself as flushed, oldest first, signaled or
/// not, each once; what the device had completed is not among them.
#[test]
fn a_lost_device_s_outstanding_wrs_come_back_flushed_once_each() {
    let mut rig = Rig::new(6, CqeStride::Bytes32);
    let spec = QpSpec {
        caps: SMALL_CAPS,
        ..QpSpec::rc(rig.cqn, rig.cqn)
    };
    let (mut a, mut b) = rig.rc_pair(spec);
    let (buf, key) = rig.buffer(1 << 12, ALL);
    let uar = rig.uar.clone();
    let mut cq = rig.take_cq();
    let (mut a_sq, _, a_done) = a.split(&uar);
    let (_, mut b_rq, b_done) = b.split(&uar);
    let qps = [a_done, b_done];
    let recv_sges = [sge(buf + 2048, 64, key)];
    let recvs: Vec<RecvWr> = (0..4)
        .map(|i| RecvWr {
            wr_id: 100 + i,
            sges: &recv_sges,
        })
        .collect();
    b_rq.post(&recvs).unwrap();
    let sges = [sge(buf, 8, key)];
    // One SEND the device completes, then three it never sees completed.
    a_sq.post(&[SendWr::new(
        1,
        SendOp::Send,
        Payload::Gather(&sges),
        SendFlags::SIGNALED,
    )])
    .unwrap();
    rig.model.process().unwrap();
    let done = poll_all(&mut cq, &qps);
    assert_eq!(done.len(), 2, "the SEND and its receive");
    let wrs: Vec<SendWr> = (2..5)
        .map(|id| {
            let flags = if id == 3 {
                SendFlags::empty()
            } else {
                SendFlags::SIGNALED
            };
            SendWr::new(id, SendOp::Send, Payload::Gather(&sges), flags)
        })
        .collect();
    a_sq.post(&wrs).unwrap();
    assert_eq!(a_done.outstanding(), (3, 0));
    assert_eq!(b_done.outstanding(), (0, 3));
    // The device is gone: nothing processes them.
    let sends: Vec<_> = std::iter::from_fn(|| a_done.flush_send()).collect();
    let recvs: Vec<_> = std::iter::from_fn(|| b_done.flush_recv()).collect();
    assert_eq!(sends.iter().map(|c| c.wr_id).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(
        recvs.iter().map(|c| c.wr_id).collect::<Vec<_>>(),
        [101, 102, 103]
    );
    for c in sends.iter().chain(&recvs) {
        assert_eq!(c.status, WcStatus::WrFlushError);
    }
    assert_eq!(sends[0].qpn, a_done.qpn());
    assert_eq!(recvs[0].opcode, WcOpcode::Recv);
    assert!(
        a_done.flush_send().is_none() && b_done.flush_recv().is_none(),
        "each once"
    );
}
