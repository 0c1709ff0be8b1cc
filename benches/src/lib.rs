//! Home of the criterion benchmarks of the fast path (`cargo bench -p benches`).
//!
//! The benchmarks arrive with the hw-mlx4 fast path; until then this crate only ties the
//! fast-path crates into the workspace build.
