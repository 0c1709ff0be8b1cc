//! What `poll` reports for each opcode a send or receive CQE can carry: the work
//! completion opcode, byte count, flags and immediate data the kernel's `mlx4_ib_poll_one`
//! gives for it, whatever the WR was (the device, not the driver, says what completed).

use hw_mlx4::fastpath::cq::{CompletionQueue, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
use hw_mlx4::model::{wr_id_table, HostDoorbellRecord, HostPlatform, HostRing, HostUar};
use hw_mlx4::selftest::write_cqe;
use hw_mlx4::wire::{Be16, Be32, Cqe, RecvOpcode, SendOpcode};
use hw_mlx4::wr::{
    Completion, Payload, RecvWr, SendFlags, SendOp, SendWr, Sge, WcFlags, WcOpcode, WcStatus,
};
use zerocopy::FromZeros;

const QPN: u32 = 0x4a;
const CQN: u32 = 0x82;
const BYTE_CNT: u32 = 0x1234;
const IMM: u32 = 0x5a5a_0102;

fn qp() -> QueuePairState<HostPlatform> {
    let caps = SendQueueCaps {
        max_sge: 1,
        max_inline: 0,
        signal_all: false,
    };
    let sq = SendQueueState::new(HostRing::new(6, 6), wr_id_table(64), QpType::Rc, caps)
        .expect("send queue");
    let rq = RecvQueueState::new(
        HostRing::new(6, 4),
        wr_id_table(64),
        HostDoorbellRecord::new(),
    )
    .expect("receive queue");
    QueuePairState::new(QPN, sq, rq)
}

fn cq() -> CompletionQueue<HostPlatform> {
    let doorbells = CqDoorbells {
        set_ci: HostDoorbellRecord::new(),
        arm: HostDoorbellRecord::new(),
    };
    CompletionQueue::new(CQN, HostRing::new(7, 5), doorbells).expect("CQ")
}

/// Posts one signaled SEND per CQE (or one receive), lets the device complete each with
/// the given opcode bits, and returns what `poll` made of them, in order.
fn completions(is_send: bool, opcodes: &[u8]) -> Vec<Completion> {
    let uar = HostUar::new();
    let mut qp = qp();
    let mut cq = cq();
    let (mut sq, mut rq, completions) = qp.split(&uar);
    let sge = [Sge {
        addr: 0x1000,
        length: 64,
        lkey: 0x100,
    }];
    for (index, bits) in opcodes.iter().enumerate() {
        let wr_id = 0x100 + index as u64;
        if is_send {
            let wr = SendWr::new(
                wr_id,
                SendOp::Send,
                Payload::Gather(&sge),
                SendFlags::SIGNALED,
            );
            sq.post(&[wr]).expect("post send");
        } else {
            rq.post(&[RecvWr { wr_id, sges: &sge }]).expect("post recv");
        }
        let mut cqe = Cqe::new_zeroed();
        cqe.vlan_my_qpn = Be32::new(QPN);
        cqe.g_mlpath_rqpn = Be32::new(0x77);
        cqe.wqe_index = Be16::new(index as u16);
        cqe.byte_cnt = Be32::new(BYTE_CNT);
        cqe.immed_rss_invalid = Be32::new(IMM);
        cqe.owner_sr_opcode = if is_send { Cqe::IS_SEND | bits } else { *bits };
        write_cqe::<HostPlatform>(cq.ring(), index as u32, cq.entries(), &cqe);
    }
    let mut out = vec![Completion::EMPTY; opcodes.len() + 1];
    let polled = cq.poll(&completions, &mut out).expect("poll");
    assert_eq!(polled, opcodes.len(), "every CQE polled, nothing more");
    out.truncate(polled);
    for (index, completion) in out.iter().enumerate() {
        assert_eq!(completion.wr_id, 0x100 + index as u64);
        assert_eq!(completion.status, WcStatus::Success);
        assert_eq!(completion.qpn, QPN);
    }
    out
}

#[test]
fn each_send_opcode_reports_what_mlx4_ib_reports() {
    use SendOpcode as S;
    let none = WcFlags::empty();
    let imm = WcFlags::WITH_IMM;
    // (CQE opcode, work completion opcode, byte_len, flags)
    let table = [
        (S::Send, WcOpcode::Send, 0, none),
        (S::SendImm, WcOpcode::Send, 0, imm),
        (S::SendInval, WcOpcode::Send, 0, none),
        (S::RdmaWrite, WcOpcode::RdmaWrite, 0, none),
        (S::RdmaWriteImm, WcOpcode::RdmaWrite, 0, imm),
        (S::RdmaRead, WcOpcode::RdmaRead, BYTE_CNT, none),
        (S::AtomicCmpSwap, WcOpcode::CompSwap, 8, none),
        (S::AtomicFetchAdd, WcOpcode::FetchAdd, 8, none),
        (S::MaskedAtomicCmpSwap, WcOpcode::MaskedCompSwap, 8, none),
        (S::MaskedAtomicFetchAdd, WcOpcode::MaskedFetchAdd, 8, none),
        (S::Lso, WcOpcode::Lso, 0, none),
        (S::FastReg, WcOpcode::RegMr, 0, none),
        (S::LocalInval, WcOpcode::LocalInvalidate, 0, none),
        (S::BindMw, WcOpcode::BindMw, 0, none),
    ];
    let opcodes: Vec<u8> = table.iter().map(|row| row.0 as u8).collect();
    let got = completions(true, &opcodes);
    for ((opcode, wc_opcode, byte_len, flags), completion) in table.iter().zip(&got) {
        assert_eq!(
            (completion.opcode, completion.byte_len, completion.flags),
            (*wc_opcode, *byte_len, *flags),
            "send CQE opcode {opcode:?}"
        );
        if flags.contains(WcFlags::WITH_IMM) {
            // A send's immediate data is the responder's to see, not the requester's.
            assert_eq!(completion.imm, 0, "send CQE opcode {opcode:?}");
        }
    }
}

#[test]
fn each_receive_opcode_reports_what_mlx4_ib_reports() {
    use RecvOpcode as R;
    let imm = WcFlags::WITH_IMM;
    // (CQE opcode, work completion opcode, flags, immediate data or invalidated rkey)
    let table = [
        (R::Send, WcOpcode::Recv, WcFlags::empty(), 0),
        (R::SendImm, WcOpcode::Recv, imm, IMM),
        (R::RdmaWriteImm, WcOpcode::RecvRdmaWithImm, imm, IMM),
        (R::SendInval, WcOpcode::Recv, WcFlags::WITH_INVALIDATE, IMM),
    ];
    let opcodes: Vec<u8> = table.iter().map(|row| row.0 as u8).collect();
    let got = completions(false, &opcodes);
    for ((opcode, wc_opcode, flags, imm), completion) in table.iter().zip(&got) {
        assert_eq!(
            (completion.opcode, completion.flags, completion.imm),
            (*wc_opcode, *flags, *imm),
            "receive CQE opcode {opcode:?}"
        );
        assert_eq!(completion.byte_len, BYTE_CNT);
        assert_eq!(completion.src_qp, 0x77);
    }
}
