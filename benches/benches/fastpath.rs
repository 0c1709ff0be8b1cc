//! Criterion benchmarks of the mlx4 fast path (`cargo bench -p benches`), run against the
//! software model of the device.
//!
//! What is timed is the driver alone: `post_send` and `poll_cq` calls, in batches, with
//! `Instant` around each batch. Between batches, untimed, the model executes what was
//! posted and the CQ is drained, so the send queue never fills and every WR completes.
//! The model's rings are unchecked (`QpSpec::checked: false`): the checked ring instruments
//! every WQE write, and these benches measure the driver, not the checks. The one
//! exception is `round_trip`, which times post + model + poll together.
//!
//! After criterion's own report this prints a table (ns and Mops/s per element: per WQE
//! posted or CQE polled) and writes it, with a description of the machine, to
//! `<target>/tilde-bench/fastpath.json`, read back from criterion's `estimates.json` files.
//! Only benches that ran in this invocation (see `cargo bench -p benches -- <filter>`)
//! are written.

mod common;

use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use hw_mlx4::fastpath::cq::CompletionQueue;
use hw_mlx4::fastpath::qp::{QpCompletions, QueuePairState};
use hw_mlx4::fastpath::recv::RecvQueue;
use hw_mlx4::fastpath::send::{SendQueue, SendQueueCaps};
use hw_mlx4::model::{CqParts, HostPlatform, HostUar, Model, QpSpec};
use hw_mlx4::wire::CqeStride;
use hw_mlx4::wr::{
    Access, Completion, Payload, RecvWr, Remote, SendFlags, SendOp, SendWr, Sge, WcStatus,
};
use std::hint::black_box;
use std::slice;
use std::time::{Duration, Instant, SystemTime};

/// log2 of the CQ size: room for every CQE of the largest batch (both QPs share it).
const LOG_CQ: u32 = 14;
/// log2 of the SQ size: at 64-byte WQEs, 4096 - 33 headroom = 4063 WQEs postable.
const LOG_SQ: u32 = 12;
/// log2 of the RQ size; receive WQEs of 16 bytes (`rq_wqe_shift` 4): one scatter entry.
const LOG_RQ: u32 = 13;
/// Post calls timed between two drains (single-WR benches).
const POST_BATCH: u64 = 256;
/// WRs in one post call of the chain bench.
const CHAIN: usize = 32;
/// Chains timed between two drains (1024 WQEs).
const CHAIN_BATCH: u64 = 32;
/// CQEs the model writes before each timed run of poll calls.
const POLL_BATCH_CQES: u64 = 1024;
/// Bytes of the SEND and RDMA WRITE payloads, and of each receive buffer.
const MSG: u32 = 64;

/// Fits a 64-byte WQE on an RC QP: control + remote address segments leave 32 bytes.
const SMALL_CAPS: SendQueueCaps = SendQueueCaps {
    max_sge: 2,
    max_inline: 28,
    signal_all: false,
};

/// For 64 bytes of inline data: 128-byte WQEs (`sq_wqe_shift` 7).
const INLINE_CAPS: SendQueueCaps = SendQueueCaps {
    max_sge: 4,
    max_inline: 64,
    signal_all: false,
};

/// One benchmark: its criterion group and name, and the elements one iteration handles.
struct Bench {
    group: &'static str,
    name: &'static str,
    elements: u64,
}

impl Bench {
    fn id(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }
}

const SEND_1SGE: Bench = Bench {
    group: "post_send",
    name: "send_1sge_signaled",
    elements: 1,
};
const SEND_INLINE: Bench = Bench {
    group: "post_send",
    name: "send_inline_64B",
    elements: 1,
};
const WRITE_1SGE: Bench = Bench {
    group: "post_send",
    name: "rdma_write_1sge",
    elements: 1,
};
const CHAIN_32: Bench = Bench {
    group: "post_send",
    name: "chain_32",
    elements: CHAIN as u64,
};
const POLL_1: Bench = Bench {
    group: "poll_cq",
    name: "1",
    elements: 1,
};
const POLL_16: Bench = Bench {
    group: "poll_cq",
    name: "16",
    elements: 16,
};
const ROUND_TRIP: Bench = Bench {
    group: "round_trip",
    name: "post_process_poll",
    elements: 1,
};

const ALL: [&Bench; 7] = [
    &SEND_1SGE,
    &SEND_INLINE,
    &WRITE_1SGE,
    &CHAIN_32,
    &POLL_1,
    &POLL_16,
    &ROUND_TRIP,
];

/// What the driver handles borrow: the model, the UAR, the CQ and two connected RC QPs,
/// with a registered buffer on each side.
struct Owned {
    uar: HostUar,
    model: Model,
    cq: Option<CqParts>,
    a: QueuePairState<HostPlatform>,
    b: QueuePairState<HostPlatform>,
    /// `MSG` bytes at A, the source of SENDs and RDMA WRITEs.
    local: [Sge; 1],
    /// `MSG` bytes at B, the target of RDMA WRITEs.
    remote: Remote,
    /// `MSG` bytes at B, the buffer of every receive.
    recv: [Sge; 1],
}

impl Owned {
    fn new(sq_wqe_shift: u32, caps: SendQueueCaps) -> Self {
        let uar = HostUar::new();
        let mut model = Model::new(uar.clone());
        let cq = model.create_cq(LOG_CQ, CqeStride::Bytes32, None);
        let spec = QpSpec {
            checked: false,
            log_sq_entries: LOG_SQ,
            sq_wqe_shift,
            log_rq_entries: LOG_RQ,
            rq_wqe_shift: 4,
            caps,
            ..QpSpec::rc(cq.cqn, cq.cqn)
        };
        let a = model.create_qp(&spec).expect("QP A");
        let b = model.create_qp(&spec).expect("QP B");
        model.connect(a.qpn(), b.qpn());
        let memory = model.memory_mut();
        let mut buffer = |access| {
            let addr = memory.alloc(MSG as usize);
            (addr, memory.register(addr, u64::from(MSG), access))
        };
        let (local, lkey) = buffer(Access::LOCAL_WRITE);
        let (remote, rkey) = buffer(Access::LOCAL_WRITE | Access::REMOTE_WRITE);
        let (recv, recv_key) = buffer(Access::LOCAL_WRITE);
        let sge = |addr, lkey| Sge {
            addr,
            length: MSG,
            lkey,
        };
        Self {
            uar,
            model,
            cq: Some(cq),
            a,
            b,
            local: [sge(local, lkey)],
            remote: Remote { addr: remote, rkey },
            recv: [sge(recv, recv_key)],
        }
    }

    /// The driver's handles: A posts sends, B posts receives, both complete on the CQ.
    /// Made once per `Owned`: a second split would start new handles at counter 0.
    fn rig(&mut self) -> Rig<'_> {
        let Self {
            uar,
            model,
            cq,
            a,
            b,
            local,
            remote,
            recv,
        } = self;
        let uar: &HostUar = uar;
        let parts = cq.take().expect("one rig per Owned");
        let cq = CompletionQueue::new(parts.cqn, parts.ring, parts.doorbells).expect("CQ");
        let (sq, _, a_done) = a.split(uar);
        let (_, rq, b_done) = b.split(uar);
        let recv: &[Sge] = recv;
        let recvs = (0..POST_BATCH)
            .map(|wr_id| RecvWr { wr_id, sges: recv })
            .collect();
        Rig {
            model,
            cq,
            sq,
            rq,
            qps: [a_done, b_done],
            local: &local[..],
            remote: *remote,
            recvs,
            out: [Completion::EMPTY; 64],
        }
    }
}

struct Rig<'q> {
    model: &'q mut Model,
    cq: CompletionQueue<HostPlatform>,
    sq: SendQueue<'q, HostPlatform>,
    rq: RecvQueue<'q, HostPlatform>,
    qps: [QpCompletions<'q, HostPlatform>; 2],
    local: &'q [Sge],
    remote: Remote,
    /// `POST_BATCH` receive WRs, one per SEND of a batch.
    recvs: Vec<RecvWr<'q>>,
    out: [Completion; 64],
}

impl Rig<'_> {
    /// Untimed: the model executes everything posted, then the CQ is polled empty.
    /// Checks that exactly `expected` completions came back, all successful.
    fn drain(&mut self, expected: u64) {
        self.model
            .process()
            .expect("the model found a driver error");
        let mut polled = 0;
        loop {
            let n = self.cq.poll(&self.qps, &mut self.out).expect("poll_cq");
            assert!(self.out[..n].iter().all(|c| c.status == WcStatus::Success));
            polled += n as u64;
            if n < self.out.len() {
                break;
            }
        }
        assert_eq!(polled, expected, "completions after a batch");
    }

    /// Times `iters` post calls of the one WR `wr`, `POST_BATCH` at a time. With
    /// `receives`, each WR is a SEND and B gets one receive per WR first (untimed).
    fn post_singles(&mut self, iters: u64, wr: &SendWr<'_>, receives: bool) -> Duration {
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(POST_BATCH);
            if receives {
                self.rq.post(&self.recvs[..n as usize]).expect("post_recv");
            }
            let start = Instant::now();
            for _ in 0..n {
                self.sq
                    .post(slice::from_ref(black_box(wr)))
                    .expect("post_send");
            }
            timed += start.elapsed();
            self.drain(if receives { 2 * n } else { n });
            left -= n;
        }
        timed
    }

    /// Times `iters` post calls of the chain `wrs`, `CHAIN_BATCH` at a time; the chain
    /// has exactly one signaled WR.
    fn post_chains(&mut self, iters: u64, wrs: &[SendWr<'_>]) -> Duration {
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHAIN_BATCH);
            let start = Instant::now();
            for _ in 0..n {
                self.sq.post(black_box(wrs)).expect("post_send chain");
            }
            timed += start.elapsed();
            self.drain(n);
            left -= n;
        }
        timed
    }

    /// Times `iters` poll calls that each return `per_call` CQEs. Before each run of calls,
    /// untimed, signaled zero-length RDMA WRITEs make the CQEs.
    fn poll_calls(&mut self, iters: u64, per_call: usize, fill: &[SendWr<'_>]) -> Duration {
        let calls_per_batch = POLL_BATCH_CQES / per_call as u64;
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let calls = left.min(calls_per_batch);
            let cqes = calls as usize * per_call;
            self.sq.post(&fill[..cqes]).expect("post_send (fill)");
            self.model
                .process()
                .expect("the model found a driver error");
            let mut polled = 0;
            let start = Instant::now();
            for _ in 0..calls {
                polled += self
                    .cq
                    .poll(&self.qps, black_box(&mut self.out[..per_call]))
                    .expect("poll_cq");
            }
            timed += start.elapsed();
            assert_eq!(polled, cqes, "every call returned {per_call} CQEs");
            assert!(self.out[..per_call]
                .iter()
                .all(|c| c.status == WcStatus::Success));
            left -= calls;
        }
        timed
    }

    /// One signaled WR posted, executed by the model and polled.
    fn round_trip(&mut self, wr: &SendWr<'_>) {
        self.sq
            .post(slice::from_ref(black_box(wr)))
            .expect("post_send");
        self.model
            .process()
            .expect("the model found a driver error");
        let n = self
            .cq
            .poll(&self.qps, &mut self.out[..1])
            .expect("poll_cq");
        assert_eq!(n, 1);
        black_box(&self.out[0]);
    }
}

/// The single-WR post benches.
#[derive(Clone, Copy)]
enum Single {
    /// SEND of one gather entry; B posts a receive for each.
    Send1Sge,
    /// SEND of 64 bytes inline; B posts a receive for each.
    SendInline64,
    /// RDMA WRITE of one gather entry.
    Write1Sge,
}

/// Inline payload of the inline SEND.
static INLINE_DATA: [u8; 64] = [0x5a; 64];

fn bench_single(group: &mut BenchmarkGroup<'_, WallTime>, bench: &Bench, kind: Single) {
    let mut owned = match kind {
        Single::SendInline64 => Owned::new(7, INLINE_CAPS),
        Single::Send1Sge | Single::Write1Sge => Owned::new(6, SMALL_CAPS),
    };
    let mut rig = owned.rig();
    let (op, payload) = match kind {
        Single::Send1Sge => (SendOp::Send, Payload::Gather(rig.local)),
        Single::SendInline64 => (SendOp::Send, Payload::Inline(&INLINE_DATA)),
        Single::Write1Sge => (SendOp::RdmaWrite(rig.remote), Payload::Gather(rig.local)),
    };
    let receives = matches!(op, SendOp::Send);
    let wr = SendWr::new(1, op, payload, SendFlags::SIGNALED);
    group.throughput(Throughput::Elements(bench.elements));
    group.bench_function(bench.name, |b| {
        b.iter_custom(|iters| rig.post_singles(iters, &wr, receives))
    });
}

fn post_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("post_send");
    bench_single(&mut group, &SEND_1SGE, Single::Send1Sge);
    bench_single(&mut group, &SEND_INLINE, Single::SendInline64);
    bench_single(&mut group, &WRITE_1SGE, Single::Write1Sge);

    // A chain of 1-SGE RDMA WRITEs, only the last signaled (selective signaling: the
    // earlier WQEs complete with it).
    let mut owned = Owned::new(6, SMALL_CAPS);
    let mut rig = owned.rig();
    let wrs: Vec<SendWr<'_>> = (0..CHAIN)
        .map(|i| {
            let flags = if i + 1 == CHAIN {
                SendFlags::SIGNALED
            } else {
                SendFlags::empty()
            };
            let op = SendOp::RdmaWrite(rig.remote);
            SendWr::new(i as u64, op, Payload::Gather(rig.local), flags)
        })
        .collect();
    group.throughput(Throughput::Elements(CHAIN_32.elements));
    group.bench_function(CHAIN_32.name, |b| {
        b.iter_custom(|iters| rig.post_chains(iters, &wrs))
    });
    group.finish();
}

fn poll_cq(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll_cq");
    for bench in [&POLL_1, &POLL_16] {
        let mut owned = Owned::new(6, SMALL_CAPS);
        let mut rig = owned.rig();
        let write = SendWr::new(
            7,
            SendOp::RdmaWrite(rig.remote),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        );
        let fill = vec![write; POLL_BATCH_CQES as usize];
        let per_call = bench.elements as usize;
        group.throughput(Throughput::Elements(bench.elements));
        group.bench_with_input(
            BenchmarkId::from_parameter(bench.name),
            &per_call,
            |b, &per_call| b.iter_custom(|iters| rig.poll_calls(iters, per_call, &fill)),
        );
    }
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    let mut owned = Owned::new(6, SMALL_CAPS);
    let mut rig = owned.rig();
    let wr = SendWr::new(
        9,
        SendOp::RdmaWrite(rig.remote),
        Payload::Gather(rig.local),
        SendFlags::SIGNALED,
    );
    group.throughput(Throughput::Elements(ROUND_TRIP.elements));
    // This includes the model's execution of the WQE and its CQE (parsing, memory
    // lookups, allocations): an upper bound on the fast path, not the driver alone.
    group.bench_function(ROUND_TRIP.name, |b| b.iter(|| rig.round_trip(&wr)));
    group.finish();
}

criterion_group! {
    name = fastpath;
    config = common::config();
    targets = post_send, poll_cq, round_trip
}

fn main() {
    let started = SystemTime::now();
    fastpath();
    Criterion::default().configure_from_args().final_summary();
    summary::write(started);
}

/// The table on stdout and `<target>/tilde-bench/fastpath.json`.
mod summary {
    use super::*;
    use benches::report;
    use serde_json::{json, Value};

    pub fn write(started: SystemTime) {
        let mut rows = Vec::new();
        for bench in ALL {
            let Some((mean, low, high)) = report::estimate(bench.group, bench.name, started) else {
                continue;
            };
            let per = bench.elements as f64;
            let ns = mean / per;
            rows.push((bench, ns, low / per, high / per));
        }
        if rows.is_empty() {
            println!("tilde-bench: no new criterion estimates; summary not written");
            return;
        }
        println!();
        println!("{:<32} {:>10} {:>10}", "id", "ns/op", "Mops/s");
        for &(bench, ns, _, _) in &rows {
            println!("{:<32} {:>10.2} {:>10.2}", bench.id(), ns, 1e3 / ns);
        }
        let benches: Vec<Value> = rows
            .iter()
            .map(|&(bench, ns, low, high)| {
                json!({
                    "id": bench.id(),
                    "ns_per_op": report::round3(ns),
                    "mops_per_s": report::round3(1e3 / ns),
                    "elements_per_iter": bench.elements,
                    "ns_per_op_ci95": [report::round3(low), report::round3(high)],
                })
            })
            .collect();
        let summary = json!({
            "machine": report::machine(),
            "benches": benches,
        });
        report::write("fastpath.json", &summary);
    }
}
