//! `cargo xtask mutants [SCOPE...]`: mutation testing of the code whose tests run on the
//! host, with cargo-mutants (installed from crates.io if missing).
//!
//! Each scope is a set of source files and the package whose tests must notice when
//! cargo-mutants breaks them (a function body replaced, an operator swapped, a match arm
//! deleted). A mutant the tests do not notice ("missed") is a check the suite lacks, or
//! a change that cannot matter; the latter are written down where they are excluded,
//! in `.cargo/mutants.toml`, each with why. The scopes marked `clean` must end with no
//! missed mutant; the others report their counts (docs/mutation-testing.md keeps the
//! latest). Not part of `cargo xtask test`: a run takes hours on two cores.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::bail;
use crate::util::{repo_root, secs, Result};

/// What cargo-mutants is given: one scope's files and the package that tests them.
struct Scope {
    name: &'static str,
    package: &'static str,
    files: &'static [&'static str],
    /// The package's test targets that exercise these files (`--test NAME`); empty: all
    /// of the package's tests. Fewer targets per mutant is what makes a scope's run fit
    /// in a session.
    tests: &'static [&'static str],
    /// Whether a missed mutant fails the run.
    clean: bool,
}

const SCOPES: &[Scope] = &[
    Scope {
        name: "hw-mlx4-fastpath",
        package: "hw-mlx4",
        files: &["hw-mlx4/src/fastpath/*.rs"],
        tests: &[],
        clean: true,
    },
    Scope {
        name: "ulp-iser-datamover-wire",
        package: "ulp-iser",
        files: &["ulp-iser/src/datamover.rs", "ulp-iser/src/wire/*.rs"],
        tests: &[],
        clean: true,
    },
    Scope {
        name: "hw-mlx4-wire-ring-selftest",
        package: "hw-mlx4",
        files: &[
            "hw-mlx4/src/wire/*.rs",
            "hw-mlx4/src/ring.rs",
            "hw-mlx4/src/selftest.rs",
        ],
        tests: &[],
        clean: false,
    },
    // The model the fast path is checked against (queues, doorbells, ownership).
    Scope {
        name: "hw-mlx4-model",
        package: "hw-mlx4",
        files: &["hw-mlx4/src/model/*.rs"],
        tests: &[],
        clean: false,
    },
    // The emulated ConnectX-3's firmware and data path (about 1650 mutants at 3-4 s each
    // with only its two test targets: about 100 minutes, a run of its own).
    Scope {
        name: "hw-mlx4-hca",
        package: "hw-mlx4",
        files: &["hw-mlx4/src/model/hca/*.rs"],
        // Only these two drive the device (the register interface and the driver traces).
        tests: &["hca", "hca_replay"],
        clean: false,
    },
    Scope {
        name: "ulp-iser-login-initiator",
        package: "ulp-iser",
        files: &["ulp-iser/src/login.rs", "ulp-iser/src/initiator.rs"],
        tests: &[],
        clean: false,
    },
    Scope {
        name: "rdma-core-rs-verbs-fabric",
        package: "rdma-core-rs",
        files: &["rdma-core-rs/src/verbs.rs", "rdma-core-rs/src/fabric/*.rs"],
        tests: &[],
        clean: false,
    },
];

/// The outcome counts of one scope's run, from cargo-mutants' output folder.
struct Counts {
    caught: usize,
    missed: Vec<String>,
    timeout: usize,
    unviable: usize,
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn counts(out: &Path) -> Counts {
    let dir = out.join("mutants.out");
    Counts {
        caught: lines(&dir.join("caught.txt")).len(),
        missed: lines(&dir.join("missed.txt")),
        timeout: lines(&dir.join("timeout.txt")).len(),
        unviable: lines(&dir.join("unviable.txt")).len(),
    }
}

fn ensure_cargo_mutants() -> Result {
    let installed = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        println!("[mutants] installing cargo-mutants from crates.io");
        let status = Command::new("cargo")
            .args(["install", "--locked", "cargo-mutants"])
            .status()?;
        if !status.success() {
            bail!("cargo install cargo-mutants failed ({status})");
        }
    }
    Ok(())
}

/// `args`: scope names, and `--iterate` to test only the mutants a previous run of the
/// scope did not catch (cargo-mutants' `--iterate`, over the scope's output folder).
pub fn run_scopes(args: &[String]) -> Result {
    let iterate = args.iter().any(|a| a == "--iterate");
    let names: Vec<&String> = args.iter().filter(|a| *a != "--iterate").collect();
    let unknown: Vec<&&String> = names
        .iter()
        .filter(|n| !SCOPES.iter().any(|s| s.name == n.as_str()))
        .collect();
    if !unknown.is_empty() {
        let have: Vec<&str> = SCOPES.iter().map(|s| s.name).collect();
        bail!("unknown scope(s) {unknown:?}; have: {}", have.join(", "));
    }
    ensure_cargo_mutants()?;
    let root = repo_root();
    let mut table = vec![
        "| scope | caught | missed | timeout | unviable | time |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut failed = Vec::new();
    for scope in SCOPES
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| *n == s.name))
    {
        let out = root.join("target/mutants").join(scope.name);
        fs::create_dir_all(&out)?;
        let start = Instant::now();
        let mut command = Command::new("cargo");
        command
            .current_dir(&root)
            .args([
                "mutants",
                "--no-shuffle",
                "--jobs",
                "1",
                "--package",
                scope.package,
                // Cargo.toml's `[profile.mutants]`: optimized, no debug info.
                "--profile",
                "mutants",
            ])
            .arg("--output")
            .arg(&out);
        for file in scope.files {
            command.args(["--file", file]);
        }
        if iterate {
            command.arg("--iterate");
        }
        // For the build as well as the run: a mutant then links only these tests.
        for test in scope.tests {
            command.arg(format!("--cargo-arg=--test={test}"));
        }
        println!("[mutants] {}: {:?}", scope.name, command);
        // cargo-mutants exits non-zero when a mutant is missed; the counts say which.
        let _ = command.status();
        let c = counts(&out);
        table.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            scope.name,
            c.caught,
            c.missed.len(),
            c.timeout,
            c.unviable,
            secs(start.elapsed())
        ));
        for mutant in &c.missed {
            println!("[mutants] {}: missed: {mutant}", scope.name);
        }
        if scope.clean && !c.missed.is_empty() {
            failed.push(format!("{}: {} missed", scope.name, c.missed.len()));
        }
        if c.caught + c.missed.len() + c.timeout + c.unviable == 0 {
            failed.push(format!("{}: no mutant was tested", scope.name));
        }
    }
    println!("\n{}", table.join("\n"));
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
