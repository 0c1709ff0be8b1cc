//! `cargo xtask bench`: the fast-path benchmarks, with rdma-core's C mlx4 provider beside
//! tilde's.
//!
//! Provisions, once and cached outside the repository (`$TILDE_CACHE/rdma-core`), the C
//! fast path tilde is measured against: Debian sid's `rdma-core` source package (the same
//! release the VM's user space runs), fetched with apt from a private source list and
//! checked against the archive's SHA-256, and built as Debian builds it (CMake,
//! RelWithDebInfo: `-O2`) into the static libraries of its mlx4 provider and libibverbs.
//! Then runs `cargo bench -p benches` with `TILDE_RDMA_CORE` naming that tree, which
//! `benches/build.rs` links into the `versus_rdma_core` bench.
//!
//! Then counts, under callgrind, what each job's driver calls execute on each side
//! (instructions, stores, conditional branches per WQE or CQE: exact where times are
//! noisy), prints them and writes `target/tilde-bench/instructions.json`.
//!
//! Nothing of rdma-core is copied into the repository: the harness
//! (`benches/c/rdma_core_mlx4.c`) is tilde's, and includes the provider's headers from the
//! cached tree at build time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::util::{output, run_logged, step, Context, Result};

/// Host packages rdma-core's build needs (beyond gcc and make), as `dpkg` names them.
const BUILD_PACKAGES: &[&str] = &[
    "cmake",
    "ninja-build",
    "pkg-config",
    "libnl-3-dev",
    "libnl-route-3-dev",
    "libudev-dev",
    "valgrind",
];

/// Batches of each job run under callgrind for the counts.
const COUNT_BATCHES: u32 = 20;

/// The static libraries the bench links, as built under `build/`.
pub const STATIC_LIBS: &[&str] = &[
    "lib/statics/libmlx4.a",
    "lib/statics/libibverbs.a",
    "util/librdma_util_pic.a",
    "ccan/libccan_pic.a",
];

/// Provisions rdma-core and runs the benchmarks; `filter` goes to criterion.
pub fn run(filter: &[String]) -> Result {
    let tree = provision()?;
    println!("[bench] rdma-core: {}", tree.display());
    let status = Command::new("cargo")
        .args(["bench", "-p", "benches", "--"])
        .args(filter)
        .env("TILDE_RDMA_CORE", &tree)
        .status()
        .context(|| "cannot start cargo".to_string())?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    count_instructions(&tree)
}

/// What one side's entry executed per WQE or CQE.
struct Counts {
    instructions: f64,
    stores: f64,
    branches: f64,
}

/// Runs every job on both sides under callgrind, collecting inside the driver's entry
/// only, and reports the counts per WQE or CQE.
fn count_instructions(tree: &Path) -> Result {
    let root = crate::util::repo_root();
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "benches",
            "--bin",
            "count_instructions",
        ])
        .env("TILDE_RDMA_CORE", tree)
        .status()
        .context(|| "cannot start cargo".to_string())?;
    if !status.success() {
        bail!("building count_instructions failed ({status})");
    }
    let binary = root.join("target/release/count_instructions");
    let list = output(Command::new(&binary).arg("--list"))?;
    let dir = root.join("target/tilde-bench");
    fs::create_dir_all(&dir)?;
    println!();
    println!(
        "{:<24} {:>22} {:>22} {:>8}",
        "per WQE or CQE", "tilde instr/st/br", "rdma-core instr/st/br", "C/tilde"
    );
    let mut jobs = Vec::new();
    for line in list.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, elements, tilde_entry, c_entry] = fields.as_slice() else {
            bail!("count_instructions --list: unexpected line {line:?}");
        };
        let elements: f64 = elements
            .parse()
            .context(|| format!("elements of {name}: {elements}"))?;
        let per = elements * f64::from(COUNT_BATCHES);
        let tilde = callgrind(&binary, &dir, "tilde", name, tilde_entry, per)?;
        let c = callgrind(&binary, &dir, "rdma-core", name, c_entry, per)?;
        let cell = |k: &Counts| format!("{:.0}/{:.1}/{:.1}", k.instructions, k.stores, k.branches);
        println!(
            "{name:<24} {:>22} {:>22} {:>8.2}",
            cell(&tilde),
            cell(&c),
            c.instructions / tilde.instructions
        );
        let side = |k: &Counts| {
            serde_json::json!({
                "instructions": (k.instructions * 10.0).round() / 10.0,
                "stores": (k.stores * 10.0).round() / 10.0,
                "conditional_branches": (k.branches * 10.0).round() / 10.0,
            })
        };
        jobs.push(serde_json::json!({
            "job": name,
            "tilde": side(&tilde),
            "rdma_core": side(&c),
            "entries": { "tilde": tilde_entry, "rdma_core": c_entry },
        }));
    }
    let summary = serde_json::json!({
        "method": "callgrind --cache-sim=yes --branch-sim=yes, collecting inside each side's \
                   driver entry only (--toggle-collect); per WQE or CQE; stores are data \
                   writes (Dw), branches conditional branches executed (Bc)",
        "jobs": jobs,
    });
    let path = dir.join("instructions.json");
    let text = match serde_json::to_string_pretty(&summary) {
        Ok(text) => text,
        Err(error) => bail!("instructions.json: {error}"),
    };
    fs::write(&path, text + "\n")?;
    println!("tilde-bench: wrote {}", path.display());
    Ok(())
}

/// One job on one side under callgrind: the counts inside `entry`, divided by `per`.
fn callgrind(
    binary: &Path,
    dir: &Path,
    side: &str,
    job: &str,
    entry: &str,
    per: f64,
) -> Result<Counts> {
    let out = dir.join(format!("callgrind.{side}.{job}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--cache-sim=yes", "--branch-sim=yes"])
        .arg(format!("--toggle-collect={entry}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(binary)
        .args([side, job, &COUNT_BATCHES.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context(|| "cannot start valgrind".to_string())?;
    if !status.success() {
        bail!("callgrind of {side} {job} failed ({status})");
    }
    let text = fs::read_to_string(&out)?;
    let events: Vec<&str> = text
        .lines()
        .find_map(|line| line.strip_prefix("events: "))
        .context(|| format!("no events line in {}", out.display()))?
        .split_whitespace()
        .collect();
    let totals: Vec<f64> = text
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .context(|| format!("no summary line in {}", out.display()))?
        .split_whitespace()
        .map(|value| value.parse().unwrap_or(0.0))
        .collect();
    let event = |name: &str| -> Result<f64> {
        let at = events
            .iter()
            .position(|e| *e == name)
            .context(|| format!("no {name} event in {}", out.display()))?;
        Ok(totals.get(at).copied().unwrap_or(0.0) / per)
    };
    let counts = Counts {
        instructions: event("Ir")?,
        stores: event("Dw")?,
        branches: event("Bc")?,
    };
    if counts.instructions == 0.0 {
        bail!("callgrind counted nothing inside {entry} ({side} {job})");
    }
    let _ = fs::remove_file(&out);
    Ok(counts)
}

/// The built rdma-core source tree, provisioned if needed.
pub fn provision() -> Result<PathBuf> {
    let dir = crate::target::cache_root().join("rdma-core");
    fs::create_dir_all(&dir)?;
    let log = dir.join("provision.log");
    let group = "bench rdma-core";
    step(
        group,
        "host packages (cmake, ninja, libnl, libudev)",
        || install_missing(&log),
    )?;
    let tree = step(group, "source package from sid", || {
        fetch_source(&dir, &log)
    })?;
    step(group, "build libmlx4 and libibverbs (static)", || {
        build(&tree, &log)
    })?;
    Ok(tree)
}

fn install_missing(log: &Path) -> Result {
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
                .map_or(true, |status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run_logged(Command::new("apt-get").args(["update", "-q"]), log)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        log,
    )
}

/// apt, with its own source list and state under `dir`, so the host's are not touched.
fn apt(dir: &Path) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("-q")
        .arg(format!(
            "-o=Dir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ))
        .arg("-o=Dir::Etc::SourceParts=/dev/null")
        .arg(format!(
            "-o=Dir::State::Lists={}",
            dir.join("lists").display()
        ))
        // The mirror's sid Release file is past its Valid-Until (see shared/platform.md).
        .arg("-o=Acquire::Check-Valid-Until=false");
    cmd
}

/// The upstream tarball of sid's `rdma-core` source package, checked and unpacked; the
/// unpacked tree (reused when present).
fn fetch_source(dir: &Path, log: &Path) -> Result<PathBuf> {
    let apt_dir = dir.join("apt");
    fs::create_dir_all(apt_dir.join("lists/partial"))?;
    fs::write(
        apt_dir.join("sources.list"),
        "deb-src http://deb.debian.org/debian sid main\n",
    )?;
    run_logged(apt(&apt_dir).arg("update"), log)?;
    // 'URI' NAME SIZE SHA256:HASH, one line per file of the source package.
    let uris = output(apt(&apt_dir).args(["--print-uris", "source", "rdma-core"]))?;
    let (name, sha256) = uris
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            Some((words.next()?, words.nth(1)?))
        })
        .find(|(name, _)| name.ends_with(".orig.tar.gz"))
        .context(|| format!("no upstream tarball in sid's rdma-core:\n{uris}"))?;
    let sha256 = sha256
        .strip_prefix("SHA256:")
        .context(|| format!("{name}: no SHA-256 in {uris}"))?
        .to_string();
    let version = name
        .trim_start_matches("rdma-core_")
        .trim_end_matches(".orig.tar.gz")
        .to_string();
    let tree = dir.join(format!("rdma-core-{version}"));
    if tree.join("CMakeLists.txt").is_file() {
        return Ok(tree);
    }
    let download = dir.join("download");
    fs::create_dir_all(&download)?;
    let tarball = download.join(name);
    if !tarball.is_file() {
        // The whole source package is asked for; the mirror may lack its Debian parts
        // (`.dsc`, `.debian.tar.xz`), which the bench does not need: only the upstream
        // tarball must arrive, and match the archive's hash.
        let _ = run_logged(
            apt(&apt_dir)
                .args(["source", "--download-only", "rdma-core"])
                .current_dir(&download),
            log,
        );
    }
    if !tarball.is_file() {
        bail!("apt did not fetch {name}; see {}", log.display());
    }
    let sum = output(Command::new("sha256sum").arg(&tarball))?;
    if sum.split_whitespace().next() != Some(sha256.as_str()) {
        let _ = fs::remove_file(&tarball);
        bail!("{name}: SHA-256 {sum} is not the archive's {sha256}");
    }
    let staging = dir.join(format!("rdma-core-{version}.tmp"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    run_logged(
        Command::new("tar")
            .args(["xzf"])
            .arg(&tarball)
            .args(["--strip-components=1", "-C"])
            .arg(&staging),
        log,
    )?;
    fs::rename(&staging, &tree)?;
    Ok(tree)
}

fn build(tree: &Path, log: &Path) -> Result {
    let build = tree.join("build");
    if STATIC_LIBS.iter().all(|lib| build.join(lib).is_file()) {
        return Ok(());
    }
    fs::create_dir_all(&build)?;
    run_logged(
        Command::new("cmake")
            .args([
                "-GNinja",
                "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                "-DENABLE_STATIC=1",
                "-DNO_MAN_PAGES=1",
                "-DNO_PYVERBS=1",
                "..",
            ])
            .current_dir(&build),
        log,
    )?;
    run_logged(
        Command::new("ninja").args(STATIC_LIBS).current_dir(&build),
        log,
    )
}
