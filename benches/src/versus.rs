//! The jobs of `versus_rdma_core` and the two rigs that run them: tilde's fast path over
//! plain memory ([`Tilde`]) and rdma-core's C mlx4 provider around the same kind of
//! memory ([`c::Rdma`], linked when `cargo xtask bench` provides rdma-core). The bench
//! times them; `count_instructions` runs one job on one side under callgrind.
//!
//! Every job posts to one QP whose send queue has 4096 WQEs, over page-aligned plain
//! memory, with a page standing in for the UAR and another for the BlueFlame register,
//! and the same x86 barriers. What is timed is the driver's calls only: batches of post
//! calls, or of poll calls over CQEs written beforehand. Between timed batches, untimed,
//! each side's harness plays the device (a CQE per WQE) and drains the CQ, so queues never
//! fill. The provider takes its queue's spinlock on every post and checks for overflow
//! under the CQ's lock when the queue looks full; tilde's bare fast path needs no lock
//! (its posting handle is `&mut`), so the `_locked` job measures tilde behind the spinlock
//! an ops-table entry point needs when several threads may post to one QP.

use crate::memory::{
    ring, wr_ids, BenchRing, Device, MemoryBlueFlame, MemoryPlatform, MemoryRecord, MemoryUar,
    SpinLock,
};
use hw_mlx4::fastpath::cq::{CompletionQueue, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueue, SendQueueCaps, SendQueueState};
use hw_mlx4::wire::{send_doorbell_value, AddressVector, Be16, Be32};
use hw_mlx4::wr::{
    Completion, Payload, PostFailure, RecvWr, Remote, SendFlags, SendOp, SendWr, Sge, UdAddress,
    WcStatus,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The QP number both sides use.
pub const QPN: u32 = 0x48;
const CQN: u32 = 0x81;
/// log2 of the send queue: 4096 WQEs.
const LOG_SQ: u32 = 12;
const LOG_RQ: u32 = 13;
/// log2 of the CQ: room for every CQE of the largest batch.
const LOG_CQ: u32 = 14;
/// Post calls of one WR timed between two drains.
const SINGLE_CALLS: u32 = 256;
/// A chain's WRs, and the chains timed between two drains (1024 WQEs).
pub const CHAIN: usize = 32;
const CHAIN_CALLS: u32 = 32;
/// CQEs polled per timed batch.
pub const POLL_CQES: u32 = 1024;
/// Bytes of each WR's one gather entry.
const MSG: u32 = 64;
/// Bytes of inline data in the BlueFlame job: a 64-byte message in a 96-byte WQE.
const INLINE_MSG: usize = 64;
/// Each of the BlueFlame register's two buffers (`bf_reg_size / 2` on a ConnectX-3).
pub const BLUEFLAME_BUFFER: usize = 256;
/// The UD destination's QP and Q_Key.
const REMOTE_QPN: u32 = 0x49;
const REMOTE_QKEY: u32 = 0x1111_1111;

/// What one post WR does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostOp {
    /// A SEND of one 64-byte gather entry on the RC QP.
    Send,
    /// An RDMA WRITE of one 64-byte gather entry on the RC QP.
    RdmaWrite,
    /// A SEND of one 64-byte gather entry on the UD QP, with an address vector.
    UdSend,
    /// A SEND of 64 bytes inline on the RC QP, through BlueFlame on both sides.
    InlineBlueFlame,
}

/// What each side's harness does; one timed batch of a job is one of these.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// `calls` post calls of `chain` WRs each.
    Post {
        /// What each WR is.
        op: PostOp,
        /// Post calls per batch.
        calls: u32,
        /// WRs per call.
        chain: usize,
        /// tilde through a spinlock-serialized entry point (C always locks).
        locked: bool,
    },
    /// `calls` post_recv calls of one 1-SGE receive WR.
    Recv {
        /// Post calls per batch.
        calls: u32,
    },
    /// Polls `POLL_CQES` CQEs, `batch` per call (posted and completed untimed first).
    Poll {
        /// CQEs per call.
        batch: usize,
    },
}

impl Work {
    /// The QP the job needs.
    fn rig(self) -> RigConfig {
        let op = match self {
            Work::Post { op, .. } => op,
            Work::Recv { .. } | Work::Poll { .. } => PostOp::Send,
        };
        match op {
            PostOp::Send | PostOp::RdmaWrite => RigConfig {
                ud: false,
                sq_shift: 6,
                max_inline: 28,
                blueflame: false,
            },
            // 16 + 48 + 16 bytes: two blocks per WQE.
            PostOp::UdSend => RigConfig {
                ud: true,
                sq_shift: 7,
                max_inline: 0,
                blueflame: false,
            },
            // 16 + 4 + 44 + 4 + 20 bytes: two blocks per WQE.
            PostOp::InlineBlueFlame => RigConfig {
                ud: false,
                sq_shift: 7,
                max_inline: INLINE_MSG as u32,
                blueflame: true,
            },
        }
    }
}

/// A QP as a job needs it.
#[derive(Clone, Copy, Debug)]
struct RigConfig {
    ud: bool,
    sq_shift: u32,
    max_inline: u32,
    blueflame: bool,
}

/// One job: its name, its work, and the WQEs or CQEs one timed batch handles.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// The criterion group and the job's name in reports.
    pub group: &'static str,
    /// What a timed batch does.
    pub work: Work,
    /// WQEs or CQEs per timed batch.
    pub elements: u32,
}

const fn post(group: &'static str, op: PostOp, chain: usize, locked: bool) -> Job {
    let calls = if chain == 1 {
        SINGLE_CALLS
    } else {
        CHAIN_CALLS
    };
    Job {
        group,
        work: Work::Post {
            op,
            calls,
            chain,
            locked,
        },
        elements: calls * chain as u32,
    }
}

/// Every job, posts first.
pub const JOBS: [Job; 10] = [
    post("versus_post_send_1sge", PostOp::Send, 1, false),
    post("versus_post_send_1sge_locked", PostOp::Send, 1, true),
    post("versus_post_rdma_write_1sge", PostOp::RdmaWrite, 1, false),
    post("versus_post_chain_32", PostOp::Send, CHAIN, false),
    post("versus_post_chain_32_locked", PostOp::Send, CHAIN, true),
    post("versus_post_ud_send_1sge", PostOp::UdSend, 1, false),
    post(
        "versus_post_inline64_blueflame",
        PostOp::InlineBlueFlame,
        1,
        false,
    ),
    Job {
        group: "versus_post_recv_1sge",
        work: Work::Recv {
            calls: SINGLE_CALLS,
        },
        elements: SINGLE_CALLS,
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

impl Job {
    /// The driver entry each side's calls of this job go through, as callgrind names the
    /// function (`--toggle-collect`): what `count_instructions` is counted inside.
    pub fn entry_symbols(&self) -> (&'static str, &'static str) {
        match self.work {
            Work::Post { locked: true, .. } => ("benches::versus::entry_post", "mlx4_post_send"),
            Work::Post { .. } => (
                "hw_mlx4::fastpath::send::SendQueue<P>::post",
                "mlx4_post_send",
            ),
            Work::Recv { .. } => (
                "hw_mlx4::fastpath::recv::RecvQueue<P>::post",
                "mlx4_post_recv",
            ),
            Work::Poll { .. } => (
                "hw_mlx4::fastpath::cq::CompletionQueue<P>::poll",
                "mlx4_poll_cq",
            ),
        }
    }
}

/// The job named `name` (with or without the `versus_` prefix).
pub fn job(name: &str) -> Option<Job> {
    JOBS.iter()
        .copied()
        .find(|job| job.group == name || job.group.trim_start_matches("versus_") == name)
}

/// tilde's side: the QP and CQ over plain memory, and the device's counters.
pub struct Tilde {
    config: RigConfig,
    uar: MemoryUar,
    blueflame: MemoryBlueFlame,
    qp: QueuePairState<MemoryPlatform>,
    cq_ring: Option<BenchRing>,
    cq_doorbells: Option<CqDoorbells<MemoryPlatform>>,
}

impl Tilde {
    /// The QP and CQ `work` needs.
    pub fn new(work: Work) -> Self {
        let config = work.rig();
        let sq = SendQueueState::new(
            ring(LOG_SQ, config.sq_shift),
            wr_ids(1 << LOG_SQ),
            if config.ud { QpType::Ud } else { QpType::Rc },
            SendQueueCaps {
                max_sge: 2,
                max_inline: config.max_inline,
                signal_all: false,
            },
        )
        .expect("send queue");
        let rq = RecvQueueState::new(
            ring(LOG_RQ, 4),
            wr_ids(1 << LOG_RQ),
            MemoryRecord::default(),
        )
        .expect("receive queue");
        Self {
            config,
            uar: MemoryUar::default(),
            blueflame: MemoryBlueFlame::new(BLUEFLAME_BUFFER),
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
    pub fn run(&mut self, work: Work, warmup: u64, iters: u64) -> Duration {
        let Self {
            config,
            uar,
            blueflame,
            qp,
            cq_ring,
            cq_doorbells,
        } = self;
        let ring = cq_ring.take().expect("one run per rig");
        let doorbells = cq_doorbells.take().expect("one run per rig");
        let mut cq = CompletionQueue::new(CQN, ring, doorbells).expect("CQ");
        let (sq, mut rq, done) = if config.blueflame {
            qp.split_with_blueflame(uar, blueflame)
        } else {
            qp.split(uar)
        };
        let mut sq = SpinLock::new(sq);
        let mut device = Device::default();
        let sge = [Sge {
            addr: 0x10000,
            length: MSG,
            lkey: 0x1100,
        }];
        let inline = [0x5au8; INLINE_MSG];
        let remote = Remote {
            addr: 0x20000,
            rkey: 0x2200,
        };
        let ud = UdAddress {
            av: AddressVector {
                port_pd: Be32::new(1 << AddressVector::PORT_SHIFT | 0x3),
                g_slid: 1,
                dlid: Be16::new(0x12),
                ..AddressVector::default()
            },
            remote_qpn: REMOTE_QPN,
            remote_qkey: REMOTE_QKEY,
            vlan: 0,
            mac: [0; 6],
        };
        let wr = |i: u64, op: PostOp| match op {
            PostOp::Send => {
                SendWr::new(i, SendOp::Send, Payload::Gather(&sge), SendFlags::SIGNALED)
            }
            PostOp::RdmaWrite => SendWr::new(
                i,
                SendOp::RdmaWrite(remote),
                Payload::Gather(&sge),
                SendFlags::SIGNALED,
            ),
            PostOp::UdSend => SendWr {
                ud: Some(&ud),
                ..SendWr::new(i, SendOp::Send, Payload::Gather(&sge), SendFlags::SIGNALED)
            },
            PostOp::InlineBlueFlame => SendWr::new(
                i,
                SendOp::Send,
                Payload::Inline(&inline),
                SendFlags::SIGNALED,
            ),
        };
        let mut out = [Completion::EMPTY; 16];
        let mut drain =
            |cq: &mut CompletionQueue<MemoryPlatform>, sq_head: u32, rq_head: u32, batch: usize| {
                device.complete_sends(cq.ring(), QPN, sq_head);
                device.complete_recvs(cq.ring(), QPN, rq_head);
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
                Work::Post {
                    op,
                    calls,
                    chain,
                    locked,
                } => {
                    let wrs: Vec<SendWr<'_>> = (0..chain as u64).map(|i| wr(i, op)).collect();
                    let start = Instant::now();
                    if locked {
                        for _ in 0..calls {
                            entry_post(&sq, black_box(&wrs)).expect("post");
                        }
                    } else {
                        let sq = sq.get_mut();
                        for _ in 0..calls {
                            sq.post(black_box(&wrs)).expect("post");
                        }
                    }
                    timed += start.elapsed();
                    drain(&mut cq, sq.lock().head(), rq.head(), 16);
                }
                Work::Recv { calls } => {
                    let wrs = [RecvWr {
                        wr_id: 7,
                        sges: &sge,
                    }];
                    let start = Instant::now();
                    for _ in 0..calls {
                        rq.post(black_box(&wrs)).expect("post_recv");
                    }
                    timed += start.elapsed();
                    drain(&mut cq, sq.lock().head(), rq.head(), 16);
                }
                Work::Poll { batch } => {
                    let chain: Vec<SendWr<'_>> =
                        (0..CHAIN as u64).map(|i| wr(i, PostOp::Send)).collect();
                    for _ in 0..POLL_CQES as usize / CHAIN {
                        sq.get_mut().post(&chain).expect("post");
                    }
                    timed += drain(&mut cq, sq.lock().head(), rq.head(), batch);
                }
            }
            if round < warmup {
                timed = before;
            }
        }
        let doorbell = if config.blueflame {
            blueflame.last_qpn_word()
        } else {
            uar.send_doorbell()
        };
        if !matches!(work, Work::Recv { .. }) {
            assert_eq!(doorbell, send_doorbell_value(QPN));
        }
        timed
    }
}

/// An ops-table entry point's post_send: the QP's lock around the fast path, as the
/// driver needs when several threads may post to one QP. Not inlined, so callgrind can
/// count it as one function.
#[inline(never)]
pub fn entry_post(
    sq: &SpinLock<SendQueue<'_, MemoryPlatform>>,
    wrs: &[SendWr<'_>],
) -> Result<(), PostFailure> {
    sq.lock().post(wrs)
}

/// rdma-core's side: the harness in `benches/c/rdma_core_mlx4.c` around the provider.
#[cfg(tilde_rdma_core)]
pub mod c {
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
            ud: i32,
            bf_buf_size: u32,
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
        fn tilde_c_post_recv(rig: *mut c_void, calls: i32, len: u32) -> i32;
        fn tilde_c_device_complete(rig: *mut c_void);
        fn tilde_c_poll(rig: *mut c_void, batch: i32, total: i32) -> i32;
        fn tilde_c_send_doorbell(rig: *const c_void) -> u32;
    }

    /// The provider's QP and CQ over plain memory.
    pub struct Rdma(NonNull<c_void>);

    impl Rdma {
        /// The QP and CQ `work` needs.
        pub fn new(work: Work) -> Self {
            let config = work.rig();
            let bf = if config.blueflame {
                BLUEFLAME_BUFFER as u32
            } else {
                0
            };
            // SAFETY: plain constructor; NULL is checked.
            let rig = unsafe {
                tilde_c_rig_new(
                    LOG_SQ,
                    config.sq_shift,
                    LOG_RQ,
                    LOG_CQ,
                    config.max_inline as i32,
                    i32::from(config.ud),
                    bf,
                )
            };
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

        /// As [`Tilde::run`].
        pub fn run(&mut self, work: Work, warmup: u64, iters: u64) -> Duration {
            let rig = self.0.as_ptr();
            let mut timed = Duration::ZERO;
            for round in 0..warmup + iters {
                let before = timed;
                match work {
                    Work::Post {
                        op, calls, chain, ..
                    } => {
                        let start = Instant::now();
                        // SAFETY: `rig` is live.
                        let ret = unsafe {
                            if chain == 1 {
                                let (rdma_write, len, inline) = match op {
                                    PostOp::RdmaWrite => (1, MSG, 0),
                                    PostOp::InlineBlueFlame => (0, INLINE_MSG as u32, 1),
                                    PostOp::Send | PostOp::UdSend => (0, MSG, 0),
                                };
                                tilde_c_post_single(rig, calls as i32, rdma_write, len, inline)
                            } else {
                                tilde_c_post_chain(rig, calls as i32, chain as i32, MSG)
                            }
                        };
                        timed += start.elapsed();
                        assert_eq!(ret, 0, "mlx4_post_send");
                        self.drain(16);
                    }
                    Work::Recv { calls } => {
                        let start = Instant::now();
                        // SAFETY: `rig` is live.
                        let ret = unsafe { tilde_c_post_recv(rig, calls as i32, MSG) };
                        timed += start.elapsed();
                        assert_eq!(ret, 0, "mlx4_post_recv");
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
            let blueflame = matches!(
                work,
                Work::Post {
                    op: PostOp::InlineBlueFlame,
                    ..
                }
            );
            if !blueflame && !matches!(work, Work::Recv { .. }) {
                // SAFETY: `rig` is live.
                let doorbell = unsafe { tilde_c_send_doorbell(rig) };
                assert_eq!(doorbell, send_doorbell_value(QPN));
            }
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
