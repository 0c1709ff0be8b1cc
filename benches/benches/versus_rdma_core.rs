//! tilde's mlx4 fast path against rdma-core's C mlx4 provider (`mlx4_post_send`,
//! `mlx4_poll_cq`), the same job on the same kind of memory: `cargo xtask bench` builds
//! rdma-core and runs this (`cargo bench -p benches --bench versus_rdma_core` alone times
//! tilde's side only, and says so).
//!
//! Both sides post to one RC QP whose send queue has 4096 64-byte WQEs, over page-aligned
//! plain memory, with a page standing in for the UAR (every post call rings the 32-bit
//! send doorbell: BlueFlame is off on the C side and absent on tilde's) and the same x86
//! barriers (compiler barriers). What is timed is the driver's calls only: batches of post
//! calls, or of poll calls over CQEs written beforehand. Between timed batches, untimed,
//! each side's harness plays the device (a send CQE per WQE) and drains the CQ, so queues
//! never fill. The provider takes its send queue's spinlock on every post and checks for
//! overflow under the CQ's lock when the queue looks full; that is part of what it costs.
//!
//! After criterion's report this prints ns per WQE or CQE for both and the ratio
//! rdma-core / tilde (above 1: tilde is faster), and writes them to
//! `<target>/tilde-bench/versus_rdma_core.json`.

mod common;

use benches::memory::{ring, wr_ids, BenchRing, Device, MemoryPlatform, MemoryRecord, MemoryUar};
use benches::report;
use criterion::{criterion_group, Criterion, Throughput};
use hw_mlx4::fastpath::cq::{CompletionQueue, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
use hw_mlx4::wire::send_doorbell_value;
use hw_mlx4::wr::{Completion, Payload, Remote, SendFlags, SendOp, SendWr, Sge, WcStatus};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

const QPN: u32 = 0x48;
const CQN: u32 = 0x81;
/// log2 of the send queue: 4096 WQEs of 64 bytes, 4063 postable.
const LOG_SQ: u32 = 12;
const SQ_SHIFT: u32 = 6;
const LOG_RQ: u32 = 13;
/// log2 of the CQ: room for every CQE of the largest batch.
const LOG_CQ: u32 = 14;
/// Post calls of one WR timed between two drains.
const SINGLE_CALLS: u32 = 256;
/// A chain's WRs, and the chains timed between two drains (1024 WQEs).
const CHAIN: usize = 32;
const CHAIN_CALLS: u32 = 32;
/// CQEs polled per timed batch.
const POLL_CQES: u32 = 1024;
/// Bytes of each WR's one gather entry.
const MSG: u32 = 64;

const CAPS: SendQueueCaps = SendQueueCaps {
    max_sge: 2,
    max_inline: 28,
    signal_all: false,
};

/// What each side's harness does; one timed batch of a job is one of these.
#[derive(Clone, Copy)]
enum Work {
    /// `calls` post calls of one WR.
    Single { calls: u32, rdma_write: bool },
    /// `calls` post calls of a chain of `CHAIN` SENDs.
    Chain { calls: u32 },
    /// Polls `POLL_CQES` CQEs, `batch` per call (posted and completed untimed first).
    Poll { batch: usize },
}

/// One job: its criterion group, its work, and the WQEs or CQEs one timed batch handles.
struct Job {
    group: &'static str,
    work: Work,
    elements: u32,
}

const JOBS: [Job; 5] = [
    Job {
        group: "versus_post_send_1sge",
        work: Work::Single {
            calls: SINGLE_CALLS,
            rdma_write: false,
        },
        elements: SINGLE_CALLS,
    },
    Job {
        group: "versus_post_rdma_write_1sge",
        work: Work::Single {
            calls: SINGLE_CALLS,
            rdma_write: true,
        },
        elements: SINGLE_CALLS,
    },
    Job {
        group: "versus_post_chain_32",
        work: Work::Chain { calls: CHAIN_CALLS },
        elements: CHAIN_CALLS * CHAIN as u32,
    },
    Job {
        group: "versus_poll_cq_1",
        work: Work::Poll { batch: 1 },
        elements: POLL_CQES,
    },
    Job {
        group: "versus_poll_cq_16",
        work: Work::Poll { batch: 16 },
        elements: POLL_CQES,
    },
];

/// tilde's side: the QP and CQ over plain memory, and the device's counters.
struct Tilde {
    uar: MemoryUar,
    qp: QueuePairState<MemoryPlatform>,
    cq_ring: Option<BenchRing>,
    cq_doorbells: Option<CqDoorbells<MemoryPlatform>>,
}

impl Tilde {
    fn new() -> Self {
        let sq = SendQueueState::new(
            ring(LOG_SQ, SQ_SHIFT),
            wr_ids(1 << LOG_SQ),
            QpType::Rc,
            CAPS,
        )
        .expect("send queue");
        let rq = RecvQueueState::new(
            ring(LOG_RQ, 4),
            wr_ids(1 << LOG_RQ),
            MemoryRecord::default(),
        )
        .expect("receive queue");
        Self {
            uar: MemoryUar::default(),
            qp: QueuePairState::new(QPN, sq, rq),
            cq_ring: Some(ring(LOG_CQ, 5)),
            cq_doorbells: Some(CqDoorbells {
                set_ci: MemoryRecord::default(),
                arm: MemoryRecord::default(),
            }),
        }
    }

    /// Runs `warmup` untimed batches of `work` (touching the rings' memory), then `iters`
    /// timed ones, and returns the time those took.
    fn run(&mut self, work: Work, warmup: u64, iters: u64) -> Duration {
        let Self {
            uar,
            qp,
            cq_ring,
            cq_doorbells,
        } = self;
        let ring = cq_ring.take().expect("one run per side");
        let doorbells = cq_doorbells.take().expect("one run per side");
        let mut cq = CompletionQueue::new(CQN, ring, doorbells, uar).expect("CQ");
        let (mut sq, _rq, done) = qp.split(uar);
        let mut device = Device::default();
        let sge = [Sge {
            addr: 0x10000,
            length: MSG,
            lkey: 0x1100,
        }];
        let remote = Remote {
            addr: 0x20000,
            rkey: 0x2200,
        };
        let op = |rdma_write| {
            if rdma_write {
                SendOp::RdmaWrite(remote)
            } else {
                SendOp::Send
            }
        };
        let chain: Vec<SendWr<'_>> = (0..CHAIN as u64)
            .map(|i| SendWr::new(i, SendOp::Send, Payload::Gather(&sge), SendFlags::SIGNALED))
            .collect();
        let mut out = [Completion::EMPTY; 16];
        let mut drain = |cq: &mut CompletionQueue<'_, MemoryPlatform>, head, batch: usize| {
            device.complete_sends(cq.ring(), QPN, head);
            let start = Instant::now();
            let mut polled = 0;
            while polled < POLL_CQES as usize {
                let n = cq
                    .poll(&done, &mut out[..batch])
                    .expect("poll: the device wrote only CQEs of posted WQEs");
                if n == 0 {
                    break;
                }
                assert!(out[..n].iter().all(|c| c.status == WcStatus::Success));
                polled += n;
            }
            start.elapsed()
        };
        let mut timed = Duration::ZERO;
        for round in 0..warmup + iters {
            let before = timed;
            match work {
                Work::Single { calls, rdma_write } => {
                    let wr = [SendWr::new(
                        1,
                        op(rdma_write),
                        Payload::Gather(&sge),
                        SendFlags::SIGNALED,
                    )];
                    let start = Instant::now();
                    for _ in 0..calls {
                        sq.post(black_box(&wr)).expect("post");
                    }
                    timed += start.elapsed();
                    drain(&mut cq, sq.head(), 16);
                }
                Work::Chain { calls } => {
                    let start = Instant::now();
                    for _ in 0..calls {
                        sq.post(black_box(&chain)).expect("post");
                    }
                    timed += start.elapsed();
                    drain(&mut cq, sq.head(), 16);
                }
                Work::Poll { batch } => {
                    for _ in 0..POLL_CQES as usize / CHAIN {
                        sq.post(&chain).expect("post");
                    }
                    timed += drain(&mut cq, sq.head(), batch);
                }
            }
            if round < warmup {
                timed = before;
            }
        }
        assert_eq!(uar.send_doorbell(), send_doorbell_value(QPN));
        timed
    }
}

/// rdma-core's side: the harness in `benches/c/rdma_core_mlx4.c` around the provider.
#[cfg(tilde_rdma_core)]
mod c {
    use super::*;
    use std::ffi::c_void;
    use std::ptr::NonNull;

    extern "C" {
        fn tilde_c_rig_new(
            log_sq: u32,
            sq_shift: u32,
            log_rq: u32,
            log_cq: u32,
            max_inline: i32,
        ) -> *mut c_void;
        fn tilde_c_rig_free(rig: *mut c_void);
        fn tilde_c_post_single(
            rig: *mut c_void,
            calls: i32,
            rdma_write: i32,
            len: u32,
            inline_data: i32,
        ) -> i32;
        fn tilde_c_post_chain(rig: *mut c_void, calls: i32, chain: i32, len: u32) -> i32;
        fn tilde_c_device_complete(rig: *mut c_void);
        fn tilde_c_poll(rig: *mut c_void, batch: i32, total: i32) -> i32;
        fn tilde_c_send_doorbell(rig: *const c_void) -> u32;
    }

    pub struct Rdma(NonNull<c_void>);

    impl Rdma {
        pub fn new() -> Self {
            // SAFETY: plain constructor; NULL is checked.
            let rig = unsafe { tilde_c_rig_new(LOG_SQ, SQ_SHIFT, LOG_RQ, LOG_CQ, 28) };
            Self(NonNull::new(rig).expect("rdma-core rig"))
        }

        fn drain(&mut self, batch: usize) -> Duration {
            let rig = self.0.as_ptr();
            // SAFETY: `rig` is live; the harness only touches its own memory.
            unsafe { tilde_c_device_complete(rig) };
            let start = Instant::now();
            // SAFETY: as above.
            let polled = unsafe { tilde_c_poll(rig, batch as i32, POLL_CQES as i32) };
            let elapsed = start.elapsed();
            assert!(polled >= 0, "rdma-core poll failed");
            elapsed
        }

        pub fn run(&mut self, work: Work, warmup: u64, iters: u64) -> Duration {
            let rig = self.0.as_ptr();
            let mut timed = Duration::ZERO;
            for round in 0..warmup + iters {
                let before = timed;
                match work {
                    Work::Single { calls, rdma_write } => {
                        let start = Instant::now();
                        // SAFETY: `rig` is live.
                        let ret = unsafe {
                            tilde_c_post_single(rig, calls as i32, i32::from(rdma_write), MSG, 0)
                        };
                        timed += start.elapsed();
                        assert_eq!(ret, 0, "mlx4_post_send");
                        self.drain(16);
                    }
                    Work::Chain { calls } => {
                        let start = Instant::now();
                        // SAFETY: `rig` is live.
                        let ret =
                            unsafe { tilde_c_post_chain(rig, calls as i32, CHAIN as i32, MSG) };
                        timed += start.elapsed();
                        assert_eq!(ret, 0, "mlx4_post_send");
                        self.drain(16);
                    }
                    Work::Poll { batch } => {
                        // SAFETY: `rig` is live.
                        let ret = unsafe {
                            tilde_c_post_chain(
                                rig,
                                (POLL_CQES as usize / CHAIN) as i32,
                                CHAIN as i32,
                                MSG,
                            )
                        };
                        assert_eq!(ret, 0, "mlx4_post_send");
                        timed += self.drain(batch);
                    }
                }
                if round < warmup {
                    timed = before;
                }
            }
            // SAFETY: `rig` is live.
            let doorbell = unsafe { tilde_c_send_doorbell(rig) };
            assert_eq!(doorbell, send_doorbell_value(QPN));
            timed
        }
    }

    impl Drop for Rdma {
        fn drop(&mut self) {
            // SAFETY: made by `tilde_c_rig_new`, freed once.
            unsafe { tilde_c_rig_free(self.0.as_ptr()) };
        }
    }
}

fn versus(c: &mut Criterion) {
    for job in &JOBS {
        let mut group = c.benchmark_group(job.group);
        group.throughput(Throughput::Elements(u64::from(job.elements)));
        let work = job.work;
        group.bench_function("tilde", |b| {
            b.iter_custom(|iters| Tilde::new().run(work, 0, iters));
        });
        #[cfg(tilde_rdma_core)]
        group.bench_function("rdma-core", |b| {
            b.iter_custom(|iters| c::Rdma::new().run(work, 0, iters));
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = versus
}

fn main() {
    let started = SystemTime::now();
    if !cfg!(tilde_rdma_core) {
        println!(
            "versus_rdma_core: rdma-core is not linked (TILDE_RDMA_CORE unset): timing tilde's \
             side only; `cargo xtask bench` builds rdma-core and runs both"
        );
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(started);
}

/// Rounds of the paired pass, and the batches each side runs per round: untimed first (16
/// touch every WQE and CQE of the rings, so no page is first touched while timed), then
/// timed.
const PAIRS: usize = 31;
#[cfg(tilde_rdma_core)]
const PAIR_WARMUP: u64 = 16;
#[cfg(tilde_rdma_core)]
const PAIR_ITERS: u64 = 200;

/// The paired pass over `job`: per round, one run of each side, in alternating order
/// (tilde then C, C then tilde, ...), so that the shared machine's drift falls on both
/// alike; ns per element of each side, per round.
#[cfg(tilde_rdma_core)]
fn paired(job: &Job) -> Vec<(f64, f64)> {
    let per = |d: Duration| d.as_nanos() as f64 / (PAIR_ITERS as f64 * f64::from(job.elements));
    (0..PAIRS)
        .map(|round| {
            let (mut tilde, mut c) = (0.0, 0.0);
            for tilde_now in [round % 2 == 0, round % 2 == 1] {
                if tilde_now {
                    tilde = per(Tilde::new().run(job.work, PAIR_WARMUP, PAIR_ITERS));
                } else {
                    c = per(c::Rdma::new().run(job.work, PAIR_WARMUP, PAIR_ITERS));
                }
            }
            (tilde, c)
        })
        .collect()
}

/// tilde alone has no pairs.
#[cfg(not(tilde_rdma_core))]
fn paired(_job: &Job) -> Vec<(f64, f64)> {
    Vec::new()
}

/// The table on stdout, `<target>/tilde-bench/versus_rdma_core.json` and its picture
/// `versus_rdma_core.svg`: from the paired pass where the C side is linked (medians, and
/// the per-pair ratios' median and range), else from criterion's estimates of tilde's.
fn summary(started: SystemTime) {
    let mut bars = Vec::new();
    let mut out = Vec::new();
    for job in &JOBS {
        let name = job.group.trim_start_matches("versus_");
        let pairs = paired(job);
        let bar = if pairs.is_empty() {
            let Some((mean, low, high)) = report::estimate(job.group, "tilde", started) else {
                continue;
            };
            let per = f64::from(job.elements);
            report::Bar {
                label: name.to_string(),
                tilde: report::Spread {
                    median: mean / per,
                    low: low / per,
                    high: high / per,
                },
                c: None,
                ratio: None,
            }
        } else {
            let tilde: Vec<f64> = pairs.iter().map(|&(t, _)| t).collect();
            let c: Vec<f64> = pairs.iter().map(|&(_, c)| c).collect();
            let ratios: Vec<f64> = pairs.iter().map(|&(t, c)| c / t).collect();
            let (Some(tilde), Some(c), Some(ratio)) = (
                report::Spread::of(&tilde),
                report::Spread::of(&c),
                report::Spread::of(&ratios),
            ) else {
                continue;
            };
            report::Bar {
                label: name.to_string(),
                tilde,
                c: Some(c),
                ratio: Some(ratio),
            }
        };
        out.push(json!({
            "job": job.group,
            "pairs": pairs.len(),
            "tilde_ns": report::round3(bar.tilde.median),
            "rdma_core_ns": bar.c.map(|c| report::round3(c.median)),
            "rdma_core_over_tilde": bar.ratio.map(|r| report::round3(r.median)),
            "rdma_core_over_tilde_min": bar.ratio.map(|r| report::round3(r.low)),
            "rdma_core_over_tilde_max": bar.ratio.map(|r| report::round3(r.high)),
        }));
        bars.push(bar);
    }
    if bars.is_empty() {
        println!("tilde-bench: no new criterion estimates; summary not written");
        return;
    }
    println!();
    println!(
        "{:<24} {:>10} {:>14} {:>30}",
        "job (per WQE or CQE)", "tilde ns", "rdma-core ns", "rdma-core / tilde (min-max)"
    );
    for bar in &bars {
        let (c_text, ratio_text) = match (bar.c, bar.ratio) {
            (Some(c), Some(r)) => (
                format!("{:.2}", c.median),
                format!("{:.2} ({:.2}-{:.2})", r.median, r.low, r.high),
            ),
            _ => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<24} {:>10.2} {:>14} {:>30}",
            bar.label, bar.tilde.median, c_text, ratio_text
        );
    }
    let method = if cfg!(tilde_rdma_core) {
        "paired: per job, rounds of one run of each side in alternating order; medians, \
         and the per-pair ratios' median, min and max"
    } else {
        "criterion's mean of tilde's side alone"
    };
    let summary: Value = json!({
        "machine": report::machine(),
        "rdma_core": std::env::var("TILDE_RDMA_CORE").ok(),
        "method": method,
        "jobs": out,
    });
    report::write("versus_rdma_core.json", &summary);
    let note = if cfg!(tilde_rdma_core) {
        format!(
            "bars: median of {PAIRS} interleaved pairs, whiskers min-max; \
             C / tilde per pair (above 1: tilde is faster)"
        )
    } else {
        "tilde alone (rdma-core not linked): criterion's mean and 95% interval".to_string()
    };
    report::write_text(
        "versus_rdma_core.svg",
        &report::svg_chart(
            "mlx4 fast path: tilde beside rdma-core's C provider, ns per WQE or CQE",
            &note,
            &bars,
        ),
    );
}
