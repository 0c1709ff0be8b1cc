//! Home of the criterion benchmarks of the fast path: `cargo bench -p benches`.
//!
//! `benches/fastpath.rs` times the mlx4 fast path against the software model of the
//! device: `post_send` (one 1-SGE SEND, one 64-byte inline SEND, one RDMA WRITE, a chain
//! of 32 WRs), `poll_cq` (1 and 16 CQEs per call), and a post + execute + poll round trip.
//! Only the driver's calls are timed (the model executes and the CQ is drained between
//! timed batches), except in the round trip, which includes the model's work. After
//! criterion's report it prints ns and Mops/s per WQE or CQE and writes them, with the
//! machine's CPU, core count, rustc and date, to `<target>/tilde-bench/fastpath.json`.
//!
//! `benches/versus_rdma_core.rs` times the same post and poll loops in tilde's fast path
//! and in rdma-core's C mlx4 provider, over the same plain memory ([`memory`]), and
//! prints their ratio (`cargo xtask bench` builds rdma-core and runs both).
//!
//! The library holds what the two share: [`report`] (criterion's estimates, the machine,
//! the JSON summaries) and [`memory`] (the fast path over plain memory).

pub mod memory;
pub mod report;
pub mod versus;
