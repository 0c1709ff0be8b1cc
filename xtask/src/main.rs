//! `cargo xtask`: tilde's build and test driver. See README.md, "Commands".

mod bench;
mod breaks;
mod fastpath_code;
mod kernel_crates;
mod kmod;
mod mutants;
mod package;
mod rules;
mod stack_frames;
mod target;
mod toolchain;
mod util;
mod verdict;
mod vm;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use target::{Target, TARGETS};
use util::{repo_root, secs, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [--kernel TARGET]

commands:
  run                 provision, build, boot the stock kernel, load tilde, show rxe traffic
                      and what tilde saw (the main job)
  test [--every-scenario]
                      fmt, clippy, host tests, then every VM scenario on every target
                      (or on --kernel TARGET only); --every-scenario: the debug target's
                      too, not only its set (target.rs; hours on 2 cores)
  toolchain           provision the build root and prepared kernel tree (idempotent)
  kmod                build tilde's kernel modules with kbuild
  package             tilde's modules as a Debian package for the target's kernel
                      (target/package/<target>/tilde-modules-<release>_<version>_amd64.deb)
  vm [--timeout S] SCENARIO
                      boot the kernel in QEMU and run one scenario
  fastpath            build tilde's modules for the uninstrumented targets and compare
                      their fast paths' machine code (also part of `test`)
  bench [FILTER]      the fast-path benchmarks, with rdma-core's C mlx4 provider built
                      beside tilde's (cargo bench -p benches; FILTER goes to criterion)
  breaks [SCENARIO...]
                      each scenario against a deliberate break of tilde (xtask/vm/breaks):
                      the break applied, the scenario run, the break reverted; it must fail
  mutants [--iterate] [SCOPE...]
                      mutation testing (cargo-mutants) of the host-tested code, per scope;
                      --iterate retests only what the last run did not catch
                      (hours on 2 cores; not part of `test`; see docs/mutation-testing.md)

targets: debian-sid-7.2 (default), linux-6.12-debug (built from source with KASAN, lockdep, kmemleak ...), debian-trixie-6.12
         (stock, without Rust: the runtime carried); `test` runs all three
cache:   $TILDE_CACHE, else $XDG_CACHE_HOME/tilde, else ~/.cache/tilde";

struct Args {
    command: String,
    kernel: Option<String>,
    timeout: Duration,
    /// `test`: a target's scenario set (`Target::test_scenarios`) is ignored.
    every_scenario: bool,
    positional: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        command: String::new(),
        kernel: None,
        timeout: vm::DEFAULT_TIMEOUT,
        every_scenario: false,
        positional: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kernel" => parsed.kernel = args.next(),
            "--timeout" => {
                let s = args.next().unwrap_or_default();
                let secs: u64 = s
                    .parse()
                    .map_err(|_| util::Error(format!("--timeout wants seconds, got {s:?}")))?;
                parsed.timeout = Duration::from_secs(secs);
            }
            "--every-scenario" => parsed.every_scenario = true,
            "-h" | "--help" => parsed.command = "help".into(),
            _ if parsed.command.is_empty() => parsed.command = arg,
            _ => parsed.positional.push(arg),
        }
    }
    Ok(parsed)
}

fn targets(args: &Args, all_by_default: bool) -> Result<Vec<Target>> {
    match &args.kernel {
        Some(id) => Ok(vec![Target::by_id(id)?]),
        None if all_by_default => Ok(TARGETS
            .iter()
            .copied()
            .filter(|t| t.in_test_matrix)
            .collect()),
        None => Ok(vec![Target::default_target()]),
    }
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| match args.command.as_str() {
        "toolchain" => cmd_toolchain(&args),
        "kmod" => cmd_kmod(&args),
        "vm" => cmd_vm(&args),
        "package" => cmd_package(&args),
        "test" => cmd_test(&args),
        "fastpath" => cmd_fastpath(),
        "run" => cmd_run(&args),
        "bench" => bench::run(&args.positional),
        "mutants" => mutants::run_scopes(&args.positional),
        "breaks" => cmd_breaks(&args),
        "help" | "" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(util::Error(format!("unknown command {other:?}\n\n{USAGE}"))),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_toolchain(args: &Args) -> Result {
    for target in targets(args, false)? {
        let toolchain = toolchain::provision(target)?;
        toolchain::describe(&toolchain)?;
    }
    Ok(())
}

fn cmd_kmod(args: &Args) -> Result {
    for target in targets(args, false)? {
        let toolchain = toolchain::provision(target)?;
        kmod::build(&toolchain)?;
    }
    Ok(())
}

fn cmd_breaks(args: &Args) -> Result {
    let target = targets(args, false)?[0];
    let toolchain = toolchain::provision(target)?;
    breaks::run(&toolchain, &args.positional, args.timeout)
}

fn cmd_package(args: &Args) -> Result {
    let target = targets(args, false)?[0];
    let toolchain = toolchain::provision(target)?;
    let modules = kmod::build(&toolchain)?;
    let deb = package::build(&toolchain, &modules)?;
    println!("[package {}] {}", target.id, deb.display());
    Ok(())
}

fn cmd_vm(args: &Args) -> Result {
    let [scenario] = args.positional.as_slice() else {
        bail!(
            "vm wants one scenario; have: {}",
            vm::scenarios()?.join(", ")
        );
    };
    let target = targets(args, false)?[0];
    let toolchain = toolchain::provision(target)?;
    let modules = if vm::needs_modules(scenario)? {
        kmod::build(&toolchain)?
    } else {
        kmod::Modules::none()
    };
    let run = vm::run_with_boot_retry(&toolchain, &modules, scenario, args.timeout)?;
    vm::print_run(&run);
    if !run.verdict.passed() {
        bail!("scenario {scenario} failed");
    }
    Ok(())
}

/// Runs a host check (`cargo ...`) in the repository, streaming its output.
fn cargo(what: &[&str]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(what)
        .current_dir(repo_root())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed", what.join(" "));
    }
    Ok(())
}

/// Runs `ulp-iser/fuzz`'s `pdu` target for a bounded time with cargo fuzz (libFuzzer),
/// installing cargo fuzz from crates.io if it is missing. The machine's stable rustc
/// builds it with `RUSTC_BOOTSTRAP=1` for the sanitizer flags: no other toolchain needed.
/// Runs a cargo-fuzz target of `dir` for `seconds` (installing cargo-fuzz if missing).
fn fuzz(dir: &str, target: &str, seconds: u32) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let status = Command::new(&cargo)
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    let status = Command::new(&cargo)
        .args(["fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(repo_root().join(dir))
        .status()?;
    if !status.success() {
        bail!("the fuzzer failed or found a crash (see {dir}/artifacts/{target})");
    }
    Ok(())
}

/// One VM run of `cargo xtask test`.
struct Job<'a> {
    toolchain: &'a toolchain::Toolchain,
    modules: &'a kmod::Modules,
    scenario: String,
    /// The scenario's `# expect-failure:` text: it tests the runner.
    expected: Option<String>,
}

/// How many VM runs go at once: `TILDE_VM_JOBS`, else 2. A guest under TCG keeps about
/// one host core busy (its scenario is mostly one shell and what it calls), so two runs
/// use a 2-core machine where one left a core idle.
fn vm_jobs() -> usize {
    std::env::var("TILDE_VM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

/// Whether a run's verdict is the one its scenario expects.
fn judge_expected(expected: &Option<String>, run: &vm::VmRun) -> Result {
    match (expected, run.verdict.passed()) {
        (None, true) => Ok(()),
        (None, false) => bail!("failed"),
        (Some(text), true) => bail!("passed, but must fail with {text:?}"),
        (Some(text), false) => {
            if run
                .verdict
                .failures
                .iter()
                .any(|f| f.contains(text.as_str()))
            {
                println!("[vm]   (failure expected: this scenario tests the runner)");
                Ok(())
            } else {
                bail!("failed, but not with {text:?}")
            }
        }
    }
}

fn cmd_test(args: &Args) -> Result {
    let start = Instant::now();
    let mut passed = 0;
    let mut failed = Vec::new();
    let mut check = |name: String, result: Result| match result {
        Ok(()) => {
            println!("[test] ok: {name}");
            passed += 1;
        }
        Err(e) => {
            println!("[test] FAILED: {name}: {e}");
            failed.push(name);
        }
    };

    let host = Instant::now();
    check(
        "cargo fmt --check".into(),
        cargo(&["fmt", "--all", "--check"]),
    );
    check(
        "cargo clippy -D warnings".into(),
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    check(
        "cargo test --workspace".into(),
        cargo(&["test", "--workspace"]),
    );
    check(
        "fuzz the iSER PDU parser and initiator core (30 s)".into(),
        fuzz("ulp-iser/fuzz", "pdu", 30),
    );
    check(
        "fuzz the emulated ConnectX-3's commands, MADs and doorbells (30 s)".into(),
        fuzz("hw-mlx4/fuzz", "hca", 30),
    );
    check(
        "fuzz the IPoIB parsers and interface core (30 s)".into(),
        fuzz("ulp-ipoib/fuzz", "wire", 30),
    );
    check(
        "fast-path rules (hw-mlx4/src/fastpath, hw-mlx4/kmod/platform.rs)".into(),
        rules::check_fast_path(&rules::fast_path_sources(&repo_root())),
    );
    let host = host.elapsed();

    let mut timings = Vec::new();
    let mut built = Vec::new();
    // Every target is provisioned and built first; then its scenarios become jobs.
    let mut ready: Vec<(toolchain::Toolchain, Option<kmod::Modules>)> = Vec::new();
    for target in targets(args, true)? {
        let t = Instant::now();
        let toolchain = match toolchain::provision(target) {
            Ok(tc) => tc,
            Err(e) => {
                check(format!("{}: toolchain", target.id), Err(e));
                continue;
            }
        };
        let provision = t.elapsed();
        let t = Instant::now();
        // Without modules, the scenarios that test the kernel alone still run.
        let built_modules = kmod::build(&toolchain);
        let build = t.elapsed();
        let modules = match built_modules {
            Ok(m) => {
                if target.instrumented {
                    println!(
                        "[test] {}: built with the kernel's sanitizers, so its fast path is \
                         not in the machine-code comparison",
                        target.id
                    );
                } else {
                    built.push(fastpath_code::Built::of(&toolchain));
                }
                Some(m)
            }
            Err(e) => {
                check(format!("{}: kmod", target.id), Err(e));
                None
            }
        };
        timings.push(format!(
            "{}: toolchain {}, kmod {}",
            target.id,
            secs(provision),
            secs(build)
        ));
        // Shared by the target's runs, which may start at once.
        if let Err(e) = vm::initramfs(&toolchain) {
            check(format!("{}: initramfs", target.id), Err(e));
            continue;
        }
        ready.push((toolchain, modules));
    }

    let none = kmod::Modules::none();
    let mut per_target: Vec<Vec<Job<'_>>> = Vec::new();
    for (toolchain, modules) in &ready {
        let target = toolchain.target;
        let mut jobs = Vec::new();
        for scenario in vm::scenarios()? {
            if vm::is_benchmark(&scenario)? {
                println!(
                    "[test] skipped: {}: vm {scenario} (a benchmark: cargo xtask vm {scenario})",
                    target.id
                );
                continue;
            }
            if let Some(set) = target.test_scenarios.filter(|_| !args.every_scenario) {
                if !set.contains(&scenario.as_str()) {
                    println!(
                        "[test] skipped: {}: vm {scenario} (not in the target's set, see target.rs: cargo xtask vm --kernel {} {scenario}, or test --every-scenario)",
                        target.id, target.id
                    );
                    continue;
                }
            }
            if let Some(only) = vm::test_targets(&scenario)? {
                if !only.iter().any(|t| t == target.id) {
                    println!(
                        "[test] skipped: {}: vm {scenario} (tested on {} only: cargo xtask vm --kernel {} {scenario})",
                        target.id,
                        only.join(", "),
                        target.id
                    );
                    continue;
                }
            }
            let modules = match (vm::needs_modules(&scenario)?, modules) {
                (false, _) => &none,
                (true, Some(modules)) => modules,
                (true, None) => continue,
            };
            if let Some(needed) = vm::needs_module(&scenario)? {
                let built = modules
                    .ulps
                    .iter()
                    .chain(&modules.drivers)
                    .any(|ko| ko.file_stem() == Some(needed.as_ref()));
                if !built {
                    println!(
                        "[test] skipped: {}: vm {scenario} ({needed} is not built for this kernel; see docs/kernels.md)",
                        target.id
                    );
                    continue;
                }
            }
            let expected = vm::expected_failure(&scenario)?;
            jobs.push(Job {
                toolchain,
                modules,
                scenario,
                expected,
            });
        }
        per_target.push(jobs);
    }
    // Round robin over the targets, the slowest first: the runs going at once are mostly
    // of different kernels.
    per_target.sort_by_key(|jobs| {
        std::cmp::Reverse(jobs.first().map_or(0, |job| job.toolchain.target.slowdown))
    });
    let mut jobs = Vec::new();
    let longest = per_target.iter().map(Vec::len).max().unwrap_or(0);
    let mut queues: Vec<_> = per_target.into_iter().map(Vec::into_iter).collect();
    for _ in 0..longest {
        for queue in &mut queues {
            jobs.extend(queue.next());
        }
    }

    let workers = vm_jobs();
    println!(
        "[test] {} VM runs, {workers} at a time (TILDE_VM_JOBS)",
        jobs.len()
    );
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new((&mut check, &mut timings));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(i) else {
                    break;
                };
                let id = job.toolchain.target.id;
                let scenario = &job.scenario;
                let run =
                    vm::run_with_boot_retry(job.toolchain, job.modules, scenario, args.timeout);
                let Ok(mut guard) = results.lock() else {
                    break;
                };
                let (check, timings) = &mut *guard;
                let result = run.and_then(|run| {
                    vm::print_run(&run);
                    timings.push(format!(
                        "{id}: vm {scenario} {} (guest uptime at scenario start: {})",
                        secs(run.duration),
                        run.scenario_start
                            .as_deref()
                            .unwrap_or("scenario never started")
                    ));
                    judge_expected(&job.expected, &run)
                });
                check(format!("{id}: vm {scenario}"), result);
            });
        }
    });

    if built.len() > 1 {
        check(
            "fast-path machine code identical across kernel targets".into(),
            fastpath_code::compare(&built),
        );
    }

    println!("\n[test] durations: host checks {}", secs(host));
    for t in &timings {
        println!("[test]   {t}");
    }
    println!("[test] whole run {}", secs(start.elapsed()));
    for name in &failed {
        println!("[test] failed: {name}");
    }
    println!("{} passed, {} failed", passed, failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} check(s) failed", failed.len())
    }
}

/// The fast-path comparison alone, over every test target that is not instrumented.
fn cmd_fastpath() -> Result {
    let mut built = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| t.in_test_matrix && !t.instrumented)
    {
        let toolchain = toolchain::provision(*target)?;
        kmod::build(&toolchain)?;
        built.push(fastpath_code::Built::of(&toolchain));
    }
    fastpath_code::compare(&built)
}

fn cmd_run(args: &Args) -> Result {
    let start = Instant::now();
    let target = targets(args, false)?[0];
    let t = Instant::now();
    let toolchain = toolchain::provision(target)?;
    let provision = t.elapsed();
    let t = Instant::now();
    let modules = kmod::build(&toolchain)?;
    let build = t.elapsed();
    let run = vm::run_with_boot_retry(&toolchain, &modules, "demo", args.timeout)?;
    vm::print_run(&run);

    let dmesg = std::fs::read_to_string(run.out("dmesg.txt")).unwrap_or_default();
    println!("\nWhat tilde saw and did (guest dmesg):");
    for line in dmesg.lines().filter(|l| {
        (l.contains("tilde_mlx4") && !l.contains("bench:"))
            || l.contains("tilde_core: tilde_mlx4_0")
    }) {
        println!("  {line}");
    }
    println!("\nTraffic through tilde_mlx4 (kernel verbs rings over tilde_mlx4_0, safe API and raw C calls):");
    let mut moved = Vec::new();
    for line in dmesg.lines().filter(|l| l.contains("bench:")) {
        println!("  {line}");
        // `bench: rdma_write_64KiB x 500: safe 123456 ns/op, ...`: the bytes and the rate.
        let ring = |name: &str, bytes: u64| -> Option<(u64, u64)> {
            let rest = line.split(&format!("bench: {name} x ")).nth(1)?;
            let ops: u64 = rest.split(':').next()?.trim().parse().ok()?;
            let ns: u64 = rest
                .split("safe ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((ops * bytes, ns))
        };
        if let Some((total, ns)) = ring("rdma_write_64KiB", 65536) {
            let mib_s = (65536 * 1_000_000_000u64)
                .checked_div(ns)
                .map_or(0, |bytes_s| bytes_s / (1 << 20));
            moved.push(format!(
                "{} MiB by RDMA WRITE at {} MiB/s (64 KiB each, {} us each)",
                total / 2 / (1 << 20),
                mib_s,
                ns / 1000
            ));
        }
        if let Some((total, ns)) = ring("rc_send_64B", 64) {
            moved.push(format!(
                "{} SENDs of 64 B ({} KiB), {} us each",
                total / 64 / 2 * 2,
                total / 1024,
                ns / 1000
            ));
        }
    }
    // The ULPs' lines: what the scenario measured of tilde_ipoib and tilde_iser.
    let log = std::fs::read_to_string(run.out("scenario.log")).unwrap_or_default();
    moved.extend(
        log.lines()
            .filter_map(|l| l.strip_prefix("summary: "))
            .map(str::to_string),
    );
    println!("\nSummary:");
    println!("  kernel        {} ({})", toolchain.release, target.id);
    for line in &moved {
        println!("  moved         {line}");
    }
    println!("  toolchain     {}", secs(provision));
    println!("  module build  {}", secs(build));
    println!(
        "  VM run        {} (scenario started at guest uptime {})",
        secs(run.duration),
        run.scenario_start.as_deref().unwrap_or("?")
    );
    println!(
        "  result        {}",
        if run.verdict.passed() {
            "passed"
        } else {
            "FAILED"
        }
    );
    println!("  total         {}", secs(start.elapsed()));
    if !run.verdict.passed() {
        bail!("the demo scenario failed");
    }
    Ok(())
}
