//! tilde's mlx4 fast path against rdma-core's C mlx4 provider (`mlx4_post_send`,
//! `mlx4_post_recv`, `mlx4_poll_cq`), the same job on the same kind of memory: `cargo
//! xtask bench` builds rdma-core and runs this (`cargo bench -p benches --bench
//! versus_rdma_core` alone times tilde's side only, and says so). The jobs and the rigs
//! are in `benches::versus`.
//!
//! After criterion's report this prints ns per WQE or CQE for both and the ratio
//! rdma-core / tilde (above 1: tilde is faster), and writes them to
//! `<target>/tilde-bench/versus_rdma_core.json`.

mod common;

use benches::report;
#[cfg(tilde_rdma_core)]
use benches::versus::c;
use benches::versus::{Job, Tilde, JOBS};
use criterion::{criterion_group, Criterion, Throughput};
use serde_json::{json, Value};
#[cfg(tilde_rdma_core)]
use std::time::Duration;
use std::time::SystemTime;

fn versus(c: &mut Criterion) {
    for job in &JOBS {
        let mut group = c.benchmark_group(job.group);
        group.throughput(Throughput::Elements(u64::from(job.elements)));
        let work = job.work;
        group.bench_function("tilde", |b| {
            b.iter_custom(|iters| Tilde::new(work).run(work, 0, iters));
        });
        #[cfg(tilde_rdma_core)]
        group.bench_function("rdma-core", |b| {
            b.iter_custom(|iters| c::Rdma::new(work).run(work, 0, iters));
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
                    tilde = per(Tilde::new(job.work).run(job.work, PAIR_WARMUP, PAIR_ITERS));
                } else {
                    c = per(c::Rdma::new(job.work).run(job.work, PAIR_WARMUP, PAIR_ITERS));
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
