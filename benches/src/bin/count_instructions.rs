//! Runs one job of `versus_rdma_core` on one side, untimed, for `cargo xtask bench` to
//! count under callgrind what the driver's calls execute: instructions, stores and
//! conditional branches per WQE or CQE, which are exact where times are noisy.
//!
//! `count_instructions tilde|rdma-core JOB BATCHES`; callgrind collects only inside the
//! driver's entry (`--toggle-collect`, see `cargo xtask bench`). `count_instructions
//! --list` prints each job's name, WQEs or CQEs per batch, and the two entry symbols,
//! tab-separated.

use benches::versus::{self, Tilde};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for job in versus::JOBS {
            let (tilde, c) = job.entry_symbols();
            let name = job.group.trim_start_matches("versus_");
            println!("{name}\t{}\t{tilde}\t{c}", job.elements);
        }
        return ExitCode::SUCCESS;
    }
    let [side, name, batches] = args.as_slice() else {
        eprintln!("usage: count_instructions tilde|rdma-core JOB BATCHES");
        return ExitCode::FAILURE;
    };
    let Some(job) = versus::job(name) else {
        eprintln!("no job {name}");
        return ExitCode::FAILURE;
    };
    let Ok(batches) = batches.parse::<u64>() else {
        eprintln!("BATCHES is a number: {batches}");
        return ExitCode::FAILURE;
    };
    match side.as_str() {
        "tilde" => {
            Tilde::new(job.work).run(job.work, 0, batches);
        }
        #[cfg(tilde_rdma_core)]
        "rdma-core" => {
            versus::c::Rdma::new(job.work).run(job.work, 0, batches);
        }
        _ => {
            eprintln!("no side {side} (rdma-core is linked only under `cargo xtask bench`)");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
