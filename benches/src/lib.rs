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
//! The library itself is empty; it ties the fast-path crates into the workspace build.
