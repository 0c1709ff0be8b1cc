//! Property tests: random WR sequences through the fast path and the model give exactly
//! the completions and memory a reference interpretation predicts; garbage in the CQ or
//! the SQ never panics the driver or the model.

use hw_mlx4::fastpath::cq::CompletionQueue;
use hw_mlx4::fastpath::platform::{DmaRing, UarPage};
use hw_mlx4::fastpath::send::SendQueueCaps;
use hw_mlx4::model::{HostPlatform, HostUar, Model, QpSpec, LOCAL_DMA_LKEY};
use hw_mlx4::wire::{send_doorbell_value, CqeStride, CtrlSeg};
use hw_mlx4::wr::{
    Access, Completion, Payload, RecvWr, Remote, SendFlags, SendOp, SendWr, Sge, WcOpcode, WcStatus,
};
use proptest::prelude::*;

const REMOTE_LEN: usize = 4096;
const LOCAL_LEN: usize = 4096;

/// One operation of a random sequence; offsets and lengths index the test's buffers.
#[derive(Clone, Debug)]
enum Op {
    Send {
        offset: usize,
        len: usize,
        imm: Option<u32>,
    },
    InlineSend {
        data: Vec<u8>,
    },
    Write {
        local: usize,
        remote: usize,
        len: usize,
        imm: Option<u32>,
    },
    Read {
        local: usize,
        remote: usize,
        len: usize,
    },
    FetchAdd {
        slot: usize,
        add: u64,
    },
    CmpSwap {
        slot: usize,
        matching: bool,
        swap: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..2048usize,
            0..2048usize,
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(offset, len, imm)| Op::Send { offset, len, imm }),
        proptest::collection::vec(any::<u8>(), 0..=60).prop_map(|data| Op::InlineSend { data }),
        (
            0..2048usize,
            0..2048usize,
            0..2048usize,
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(local, remote, len, imm)| Op::Write {
                local,
                remote,
                len,
                imm
            }),
        (0..2048usize, 0..2048usize, 1..2048usize).prop_map(|(local, remote, len)| Op::Read {
            local,
            remote,
            len
        }),
        (0..8usize, any::<u64>()).prop_map(|(slot, add)| Op::FetchAdd { slot, add }),
        (0..8usize, any::<bool>(), any::<u64>()).prop_map(|(slot, matching, swap)| Op::CmpSwap {
            slot,
            matching,
            swap
        }),
    ]
}

/// A batch is posted with one call; `signal` marks which WRs ask for a CQE (the last
/// always does, so each batch drains); `process` says whether the device runs after it.
#[derive(Clone, Debug)]
struct Batch {
    ops: Vec<(Op, bool)>,
    process: bool,
}

fn batches() -> impl Strategy<Value = Vec<Batch>> {
    proptest::collection::vec(
        (
            proptest::collection::vec((op(), any::<bool>()), 1..6),
            any::<bool>(),
        )
            .prop_map(|(ops, process)| Batch { ops, process }),
        1..12,
    )
}

/// What the reference expects to come out.
#[derive(Debug, PartialEq)]
struct Expected {
    /// (wr_id, opcode, byte_len) of each signaled WR, in order.
    sends: Vec<(u64, WcOpcode, u32)>,
    /// (byte_len, imm) of each receive, in order.
    receives: Vec<(u32, Option<u32>)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_wr_sequences_match_the_reference(batches in batches()) {
        let uar = HostUar::new();
        let mut model = Model::new(uar.clone());
        let parts = model.create_cq(10, CqeStride::Bytes64, None);
        let spec = QpSpec {
            log_sq_entries: 7,
            sq_wqe_shift: 7,
            log_rq_entries: 7,
            caps: SendQueueCaps { max_sge: 2, max_inline: 64, signal_all: false },
            ..QpSpec::rc(parts.cqn, parts.cqn)
        };
        let mut a = model.create_qp(&spec).unwrap();
        let mut b = model.create_qp(&spec).unwrap();
        model.connect(a.qpn(), b.qpn());
        let all = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC;
        let memory = model.memory_mut();
        let local = memory.alloc(LOCAL_LEN);
        let lkey = memory.register(local, LOCAL_LEN as u64, all);
        let remote = memory.alloc(REMOTE_LEN);
        let rkey = memory.register(remote, REMOTE_LEN as u64, all);
        let inbox = memory.alloc(4096);
        let inbox_key = memory.register(inbox, 4096, all);
        let old_values = memory.alloc(8 * 64);
        let seed_local: Vec<u8> = (0..LOCAL_LEN).map(|i| (i * 13 % 251) as u8).collect();
        let seed_remote: Vec<u8> = (0..REMOTE_LEN).map(|i| (i * 7 % 253) as u8).collect();
        memory.write(local, &seed_local).unwrap();
        memory.write(remote, &seed_remote).unwrap();

        let mut ref_local = seed_local.clone();
        let mut ref_remote = seed_remote.clone();
        let mut expected = Expected { sends: Vec::new(), receives: Vec::new() };
        let mut last_received: Option<Vec<u8>> = None;

        let mut cq = CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells).unwrap();
        let (mut a_sq, _, a_done) = a.split(&uar);
        let (_, mut b_rq, b_done) = b.split(&uar);
        let qps = [a_done, b_done];
        let mut sends = Vec::new();
        let mut receives = Vec::new();
        let mut next_wr_id = 1u64;
        let mut atomic_slot = 0u64;
        // What each slot of `old_values` must hold at the end: the old value the last
        // atomic that used it read (slots are reused round-robin).
        let mut expected_old: std::collections::BTreeMap<u64, u64> = Default::default();

        let mut pending = 0;
        for batch in &batches {
            let count = batch.ops.len();
            let mut sge_store: Vec<[Sge; 1]> = Vec::new();
            let mut plan = Vec::new();
            let mut compares = Vec::new();
            let mut slots = Vec::new();
            for (i, (op, signal)) in batch.ops.iter().enumerate() {
                let signaled = *signal || i + 1 == count;
                let wr_id = next_wr_id;
                next_wr_id += 1;
                let (opcode, byte_len) = match op {
                    Op::Send { offset, len, imm } => {
                        let data = ref_local[*offset..offset + len].to_vec();
                        expected.receives.push((*len as u32, *imm));
                        last_received = Some(data);
                        (WcOpcode::Send, 0)
                    }
                    Op::InlineSend { data } => {
                        expected.receives.push((data.len() as u32, None));
                        last_received = Some(data.clone());
                        (WcOpcode::Send, 0)
                    }
                    Op::Write { local: l, remote: r, len, imm } => {
                        let data = ref_local[*l..l + len].to_vec();
                        ref_remote[*r..r + len].copy_from_slice(&data);
                        if let Some(imm) = imm {
                            expected.receives.push((*len as u32, Some(*imm)));
                        }
                        (WcOpcode::RdmaWrite, 0)
                    }
                    Op::Read { local: l, remote: r, len } => {
                        let data = ref_remote[*r..r + len].to_vec();
                        ref_local[*l..l + len].copy_from_slice(&data);
                        (WcOpcode::RdmaRead, *len as u32)
                    }
                    Op::FetchAdd { slot, add } => {
                        let at = 2048 + slot * 8;
                        let old = u64::from_be_bytes(ref_remote[at..at + 8].try_into().unwrap());
                        ref_remote[at..at + 8].copy_from_slice(&old.wrapping_add(*add).to_be_bytes());
                        atomic_slot = (atomic_slot + 1) % 64;
                        slots.push(atomic_slot);
                        expected_old.insert(atomic_slot, old);
                        (WcOpcode::FetchAdd, 8)
                    }
                    Op::CmpSwap { slot, matching, swap } => {
                        let at = 2048 + slot * 8;
                        let old = u64::from_be_bytes(ref_remote[at..at + 8].try_into().unwrap());
                        atomic_slot = (atomic_slot + 1) % 64;
                        slots.push(atomic_slot);
                        expected_old.insert(atomic_slot, old);
                        if *matching {
                            ref_remote[at..at + 8].copy_from_slice(&swap.to_be_bytes());
                        }
                        // The comparand: the value the reference holds when this WR runs,
                        // or one that differs from it.
                        compares.push(if *matching { old } else { !old });
                        (WcOpcode::CompSwap, 8)
                    }
                };
                if signaled {
                    expected.sends.push((wr_id, opcode, byte_len));
                }
                plan.push((wr_id, op.clone(), signaled));
            }
            // Receives for this batch's sends, posted first so nothing waits on RNR.
            let receive_count = plan.iter().filter(|(_, op, _)| matches!(op, Op::Send { .. } | Op::InlineSend { .. } | Op::Write { imm: Some(_), .. })).count();
            let inbox_sge = [Sge { addr: inbox, length: 4096, lkey: inbox_key }];
            let recvs: Vec<RecvWr> = (0..receive_count).map(|i| RecvWr { wr_id: 10_000 + i as u64, sges: &inbox_sge }).collect();
            b_rq.post(&recvs).unwrap();
            // Atomics return their old values into `old_values`, checked at the end.
            let mut slots = slots.into_iter();
            for (_, op, _) in &plan {
                let sge = match op {
                    Op::Send { offset, len, .. } => Sge { addr: local + *offset as u64, length: *len as u32, lkey },
                    Op::Write { local: l, len, .. } => Sge { addr: local + *l as u64, length: *len as u32, lkey },
                    Op::Read { local: l, len, .. } => Sge { addr: local + *l as u64, length: *len as u32, lkey },
                    Op::FetchAdd { .. } | Op::CmpSwap { .. } => {
                        let slot = slots.next().unwrap();
                        Sge { addr: old_values + slot * 8, length: 8, lkey: LOCAL_DMA_LKEY }
                    }
                    Op::InlineSend { .. } => Sge { addr: 0, length: 0, lkey },
                };
                sge_store.push([sge]);
            }
            let mut compares = compares.into_iter();
            let wrs: Vec<SendWr> = plan
                .iter()
                .zip(sge_store.iter())
                .map(|((wr_id, op, signaled), sge)| {
                    let flags = if *signaled { SendFlags::SIGNALED } else { SendFlags::empty() };
                    let gather = Payload::Gather(sge);
                    let (op, payload) = match op {
                        Op::Send { imm: Some(imm), .. } => (SendOp::SendWithImm(*imm), gather),
                        Op::Send { imm: None, .. } => (SendOp::Send, gather),
                        Op::InlineSend { data } => (SendOp::Send, Payload::Inline(data)),
                        Op::Write { remote: r, imm: Some(imm), .. } => {
                            (SendOp::RdmaWriteWithImm(Remote { addr: remote + *r as u64, rkey }, *imm), gather)
                        }
                        Op::Write { remote: r, imm: None, .. } => (SendOp::RdmaWrite(Remote { addr: remote + *r as u64, rkey }), gather),
                        Op::Read { remote: r, .. } => (SendOp::RdmaRead(Remote { addr: remote + *r as u64, rkey }), gather),
                        Op::FetchAdd { slot, add } => (
                            SendOp::AtomicFetchAdd { remote: Remote { addr: remote + 2048 + *slot as u64 * 8, rkey }, add: *add },
                            gather,
                        ),
                        Op::CmpSwap { slot, swap, .. } => {
                            let at = 2048 + *slot as u64 * 8;
                            let compare = compares.next().unwrap();
                            (SendOp::AtomicCmpSwap { remote: Remote { addr: remote + at, rkey }, compare, swap: *swap }, gather)
                        }
                    };
                    SendWr::new(*wr_id, op, payload, flags)
                })
                .collect();
            a_sq.post(&wrs).unwrap();
            pending += 1;
            if batch.process || pending * 6 >= 16 {
                model.process().unwrap();
                pending = 0;
                drain(&mut cq, &qps, &mut sends, &mut receives);
            }
            let _ = &last_received;
        }
        model.process().unwrap();
        drain(&mut cq, &qps, &mut sends, &mut receives);
        prop_assert!(model.take_errors().is_empty());
        let sends_seen: Vec<_> = sends.iter().map(|c: &Completion| (c.wr_id, c.opcode, c.byte_len)).collect();
        prop_assert!(sends.iter().all(|c| c.status == WcStatus::Success));
        prop_assert_eq!(&sends_seen, &expected.sends);
        let receives_seen: Vec<_> = receives
            .iter()
            .map(|c: &Completion| (c.byte_len, c.flags.contains(hw_mlx4::wr::WcFlags::WITH_IMM).then_some(c.imm)))
            .collect();
        prop_assert_eq!(&receives_seen, &expected.receives);
        // All of it: the data area and the atomics' slots after it.
        prop_assert_eq!(model.memory().read(remote, REMOTE_LEN).unwrap(), &ref_remote[..]);
        prop_assert_eq!(model.memory().read(local, LOCAL_LEN).unwrap(), &ref_local[..]);
        for (slot, old) in &expected_old {
            let got = model.memory().read(old_values + slot * 8, 8).unwrap();
            prop_assert_eq!(got, &old.to_be_bytes()[..], "the old value in slot {}", slot);
        }
        if let Some(data) = last_received {
            prop_assert_eq!(model.memory().read(inbox, data.len()).unwrap(), &data[..]);
        }
    }

    #[test]
    fn garbage_in_the_cq_never_panics_the_driver_or_invents_wr_ids(
        entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 64), 8),
        own_qpn in any::<bool>(),
        wide in any::<bool>(),
        sends in 0usize..6,
        receives in 0usize..6,
    ) {
        let uar = HostUar::new();
        let mut model = Model::new(uar.clone());
        let stride = if wide { CqeStride::Bytes64 } else { CqeStride::Bytes32 };
        let parts = model.create_cq(3, stride, None);
        let ring = parts.ring.clone();
        let mut a = model.create_qp(&QpSpec::rc(parts.cqn, parts.cqn)).unwrap();
        let qpn = a.qpn();
        let mut cq = CompletionQueue::<HostPlatform>::new(parts.cqn, parts.ring, parts.doorbells).unwrap();
        let (mut sq, mut rq, done) = a.split(&uar);
        // Outstanding WRs the garbage may claim to complete (the model never runs).
        let write = SendWr::new(0, SendOp::RdmaWrite(Remote { addr: 0, rkey: 0 }), Payload::Gather(&[]), SendFlags::SIGNALED);
        let send_wrs: Vec<SendWr> = (0..sends).map(|i| SendWr { wr_id: 100 + i as u64, ..write }).collect();
        sq.post(&send_wrs).unwrap();
        let recv_wrs: Vec<RecvWr> = (0..receives).map(|i| RecvWr { wr_id: 200 + i as u64, sges: &[] }).collect();
        rq.post(&recv_wrs).unwrap();
        for (index, bytes) in entries.iter().enumerate() {
            // SAFETY: single-threaded; the test plays a faulty device.
            unsafe {
                ring.with_entry_mut(index as u32, |entry| {
                    let len = entry.len();
                    entry.copy_from_slice(&bytes[..len]);
                    if own_qpn {
                        let at = stride.cqe_offset();
                        entry[at..at + 4].copy_from_slice(&qpn.to_be_bytes());
                    }
                })
            };
        }
        let mut out = [Completion::EMPTY; 4];
        let mut consumed = 0;
        let mut seen = Vec::new();
        for _ in 0..16 {
            let before = cq.cons_index();
            let polled = match cq.poll(&done, &mut out) {
                Ok(n) => n,
                Err(error) => error.polled,
            };
            seen.extend(out[..polled].iter().map(|c| c.wr_id));
            consumed += cq.cons_index() - before;
        }
        prop_assert!(consumed <= 8, "consumed {consumed} CQEs from 8 entries in one lap");
        // Whatever the device wrote, a completion only ever names a WR that was posted,
        // and each at most once.
        let send_ids: Vec<u64> = seen.iter().copied().filter(|id| (100..200).contains(id)).collect();
        let recv_ids: Vec<u64> = seen.iter().copied().filter(|id| (200..300).contains(id)).collect();
        prop_assert_eq!(send_ids.len() + recv_ids.len(), seen.len(), "an invented wr_id: {:?}", seen);
        for (ids, what) in [(&send_ids, "a send"), (&recv_ids, "a receive")] {
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), ids.len(), "{} completed twice: {:?}", what, ids);
        }
        prop_assert!(send_ids.len() <= sends && recv_ids.len() <= receives);
    }

    #[test]
    fn garbage_wqes_never_panic_the_model(wqes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 128), 1..8)) {
        let uar = HostUar::new();
        let mut model = Model::new(uar.clone());
        let parts = model.create_cq(6, CqeStride::Bytes32, None);
        let a = model.create_qp(&QpSpec::rc(parts.cqn, parts.cqn)).unwrap();
        let b = model.create_qp(&QpSpec::rc(parts.cqn, parts.cqn)).unwrap();
        model.connect(a.qpn(), b.qpn());
        let ring = a.send_state().ring().clone();
        for (index, bytes) in wqes.iter().enumerate() {
            // SAFETY: single-threaded; the test plays a faulty driver.
            unsafe { ring.with_entry_mut(index as u32, |entry| entry.copy_from_slice(bytes)) };
            // Hand it over with the right lap bit so the model parses it.
            let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & !CtrlSeg::OWNER;
            ring.write_word(index as u32, 0, word);
        }
        uar.ring_send_doorbell(send_doorbell_value(a.qpn()));
        // Errors are expected; a panic is the failure.
        let _ = model.process();
    }
}

fn drain(
    cq: &mut CompletionQueue<HostPlatform>,
    qps: &[hw_mlx4::fastpath::qp::QpCompletions<'_, HostPlatform>],
    sends: &mut Vec<Completion>,
    receives: &mut Vec<Completion>,
) {
    let mut out = [Completion::EMPTY; 8];
    loop {
        let n = cq.poll(qps, &mut out).unwrap();
        for completion in &out[..n] {
            if completion.opcode == WcOpcode::Recv || completion.opcode == WcOpcode::RecvRdmaWithImm
            {
                receives.push(*completion);
            } else {
                sends.push(*completion);
            }
        }
        if n < out.len() {
            return;
        }
    }
}
