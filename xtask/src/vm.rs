//! `cargo xtask vm SCENARIO`: boots the target's stock kernel under QEMU (TCG: there is
//! no KVM here) and runs a scenario with tilde's modules loaded.
//!
//! The guest's root is the build root, read-only over 9p with a tmpfs overlay; a second
//! 9p share, the run directory `target/vm/<target>/<scenario>`, carries the modules and
//! the scenario in and the results (`out/`: status, dmesg, taint, logs) back. The guest's
//! PID 1 is `xtask/vm/stage2`; scenarios are `xtask/vm/scenarios/<name>.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bail;
use crate::kmod::Modules;
use crate::toolchain::Toolchain;
use crate::util::{repo_root, run_logged, secs, Context, Result};
use crate::verdict::{judge, Report, Verdict};

/// Modules the initramfs loads to mount the root over 9p, in order.
const INITRAMFS_MODULES: &[&str] = &[
    "kernel/fs/netfs/netfs.ko.xz",
    "kernel/net/9p/9pnet.ko.xz",
    "kernel/net/9p/9pnet_virtio.ko.xz",
    "kernel/fs/9p/9p.ko.xz",
    "kernel/fs/overlayfs/overlay.ko.xz",
];

/// Hard limit for one VM run, boot to power-off.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The outcome of one VM run.
pub struct VmRun {
    pub scenario: String,
    pub dir: PathBuf,
    pub verdict: Verdict,
    /// From QEMU start to guest power-off.
    pub duration: Duration,
    /// Guest uptime when the scenario started (boot, module loads, rxe0), e.g. `4.71s`.
    pub scenario_start: Option<String>,
}

impl VmRun {
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.join("out").join(name)
    }
}

fn scenarios_dir() -> PathBuf {
    repo_root().join("xtask/vm/scenarios")
}

/// Every scenario, by name, sorted.
pub fn scenarios() -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(scenarios_dir())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let name = name.strip_suffix(".sh")?;
            Some(name.to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// A scenario's `# expect-failure: TEXT` header: the run must fail, and one of its
/// failures must contain TEXT. Only the runner's self-tests have one.
pub fn expected_failure(scenario: &str) -> Result<Option<String>> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# expect-failure: "))
        .map(str::to_string))
}

/// Whether a scenario is a benchmark (`# benchmark` line): `cargo xtask vm` runs it,
/// `cargo xtask test` does not, since speed is measured, never tested.
pub fn is_benchmark(scenario: &str) -> Result<bool> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text.lines().any(|l| l.trim() == "# benchmark"))
}

/// Whether a scenario runs without tilde's modules (`# no-modules` line): it tests the
/// target kernel itself, so it runs even where the modules do not build.
pub fn needs_modules(scenario: &str) -> Result<bool> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(!text.lines().any(|l| l.trim() == "# no-modules"))
}

/// The ULP or driver module a scenario needs (`# needs-module: NAME` line), which not
/// every kernel target builds (see `kmod::ULP_MODULES`, `kmod::DRIVER_MODULES`).
pub fn needs_module(scenario: &str) -> Result<Option<String>> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# needs-module: "))
        .map(|name| name.trim().to_string()))
}

pub fn run(
    toolchain: &Toolchain,
    modules: &Modules,
    scenario: &str,
    timeout: Duration,
) -> Result<VmRun> {
    let script = scenarios_dir().join(format!("{scenario}.sh"));
    if !script.is_file() {
        bail!(
            "no scenario {scenario:?} (have: {})",
            scenarios()?.join(", ")
        );
    }
    let initramfs = initramfs(toolchain)?;
    let dir = repo_root()
        .join("target/vm")
        .join(toolchain.target.id)
        .join(scenario);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    for sub in [
        "modules", "selftest", "suites", "ulps", "drivers", "guest", "out",
    ] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // Module file names get a load-order prefix: stage2 loads them in name order.
    for (i, ko) in modules.stack.iter().enumerate() {
        let name = ko.file_name().context(|| "module path".to_string())?;
        fs::copy(
            ko,
            dir.join("modules")
                .join(format!("{i:02}-{}", name.to_string_lossy())),
        )?;
    }
    for (sub, list) in [
        ("selftest", &modules.selftest),
        ("suites", &modules.suites),
        ("ulps", &modules.ulps),
        ("drivers", &modules.drivers),
    ] {
        for ko in list {
            let name = ko.file_name().context(|| "module path".to_string())?;
            fs::copy(ko, dir.join(sub).join(name))?;
        }
    }
    let vm_dir = repo_root().join("xtask/vm");
    fs::copy(vm_dir.join("stage2"), dir.join("guest/stage2"))?;
    fs::copy(vm_dir.join("lib.sh"), dir.join("guest/lib.sh"))?;
    fs::copy(vm_dir.join("iser.sh"), dir.join("guest/iser.sh"))?;
    fs::copy(
        vm_dir.join("iser_bench_table.py"),
        dir.join("guest/iser_bench_table.py"),
    )?;
    fs::copy(&script, dir.join("scenario.sh"))?;
    fs::write(dir.join("scenario-name"), scenario)?;
    fs::write(dir.join("kernel-release"), &toolchain.release)?;

    let console = dir.join("out/console.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2048",
    ])
    .args(["-display", "none", "-monitor", "none", "-no-reboot"])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(toolchain.vmlinuz())
    .arg("-initrd")
    .arg(&initramfs)
    // A log buffer large enough that dmesg still holds the boot when the guest saves it.
    .args([
        "-append",
        "console=ttyS0 panic=-1 log_buf_len=8M rdinit=/init",
    ])
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=root,security_model=none,readonly=on,multidevs=remap",
        toolchain.root.dir.display()
    ))
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=tilde,security_model=none,multidevs=remap",
        dir.display()
    ))
    // User-mode networking, restricted: the guest's NIC reaches nothing outside QEMU.
    .args(["-netdev", "user,id=net0,restrict=on"])
    .args(["-device", "virtio-net-pci,netdev=net0"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(dir.join("out/qemu.stderr"))?);
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .context(|| "starting qemu-system-x86_64".to_string())?;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let duration = start.elapsed();

    let read = |name: &str| fs::read_to_string(dir.join("out").join(name)).ok();
    let console_text = read("console.log").unwrap_or_default();
    let dmesg = read("dmesg.txt").unwrap_or_else(|| console_text.clone());
    let status = read("status").and_then(|s| s.trim().parse().ok());
    let tainted = read("tainted").and_then(|s| s.trim().parse().ok());
    let verdict = judge(&Report {
        status,
        tainted,
        dmesg: &dmesg,
        timed_out,
    });
    let scenario_start = console_text
        .lines()
        .find_map(|l| {
            l.split_once("tilde-vm: scenario ")?
                .1
                .split_once(" starts at uptime ")
        })
        .map(|(_, uptime)| uptime.trim().to_string());
    Ok(VmRun {
        scenario: scenario.to_string(),
        dir,
        verdict,
        duration,
        scenario_start,
    })
}

/// Runs a scenario, booting the guest again (up to [`BOOTS`] boots) if it died before any
/// of tilde's code ran: no `tilde-vm:` line on the console at all, so stage2 never started and no module
/// was loaded. Measured once in over 60 runs on 2026-11-25: an `int3` Oops at 2.4 s of boot
/// in `ktime_get_update_offsets_now`, the kernel patching its own text while another vCPU
/// of multi-threaded TCG runs it. That is QEMU's failure, not a test result; a crash
/// during tilde's `insmod` or later is never retried.
pub fn run_with_boot_retry(
    toolchain: &Toolchain,
    modules: &Modules,
    scenario: &str,
    timeout: Duration,
) -> Result<VmRun> {
    let mut attempt = run(toolchain, modules, scenario, timeout)?;
    for boot in 2..=BOOTS {
        let console = fs::read_to_string(attempt.out("console.log")).unwrap_or_default();
        if attempt.verdict.passed() || console.contains("tilde-vm:") {
            break;
        }
        print_run(&attempt);
        println!(
            "[vm]   the guest died during boot, before stage2 (not a scenario result): boot {boot} of {BOOTS}"
        );
        attempt = run(toolchain, modules, scenario, timeout)?;
    }
    Ok(attempt)
}

/// Boots a scenario may take when the guest dies before stage2 (QEMU's multi-threaded
/// TCG and the kernel's int3 text patching: seen about once in 60 boots of 7.2, and
/// once in the first 8 of the 6.12 target, under load).
const BOOTS: u32 = 3;

/// Prints what a run did and, on failure, why.
pub fn print_run(run: &VmRun) {
    let state = if run.verdict.passed() {
        "passed"
    } else {
        "FAILED"
    };
    println!(
        "[vm] scenario {} {state} in {} (results in {})",
        run.scenario,
        secs(run.duration),
        run.dir.join("out").display()
    );
    for failure in &run.verdict.failures {
        println!("[vm]   {failure}");
    }
    if !run.verdict.passed() {
        for log in ["setup.log", "scenario.log"] {
            let path = run.out(log);
            if path.exists() {
                println!("[vm]   --- last lines of {log} ---");
                for line in crate::util::tail(&path, 20).lines() {
                    println!("[vm]   {line}");
                }
            }
        }
    }
}

/// The initramfs: static busybox, the 9p and overlay modules of the kernel (those it
/// does not have built in) and `xtask/vm/init`. Cached per kernel release; rebuilt when
/// `init` changes.
fn initramfs(toolchain: &Toolchain) -> Result<PathBuf> {
    let cache = toolchain.target.cache_dir();
    let path = cache.join(format!("initramfs-{}.cpio", toolchain.release));
    let init = fs::read(repo_root().join("xtask/vm/init"))?;
    let init_copy = cache.join("initramfs-init");
    if path.is_file() && fs::read(&init_copy).ok().as_deref() == Some(init.as_slice()) {
        return Ok(path);
    }
    let staging = cache.join("initramfs.staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for sub in ["bin", "modules", "proc", "sys", "dev"] {
        fs::create_dir_all(staging.join(sub))?;
    }
    fs::copy(
        toolchain.root.dir.join("bin/busybox"),
        staging.join("bin/busybox"),
    )
    .context(|| "copying busybox from the build root".to_string())?;
    write_executable(&staging.join("init"), &init)?;
    // A module the kernel has built in is not there to load; `order` lists those that
    // are, in load order, for `init`.
    let mut order = String::new();
    for module in INITRAMFS_MODULES {
        let compressed = toolchain.modules_dir().join(module);
        let plain = compressed.with_extension("");
        let name = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko.xz"))
            .context(|| format!("module name of {module}"))?;
        let out = staging.join("modules").join(format!("{name}.ko"));
        if compressed.is_file() {
            let file = fs::File::create(&out)?;
            let status = Command::new("xz")
                .arg("-dc")
                .arg(&compressed)
                .stdout(file)
                .status()?;
            if !status.success() {
                bail!("xz -dc {} failed", compressed.display());
            }
        } else if plain.is_file() {
            fs::copy(&plain, &out)?;
        } else {
            continue;
        }
        order += name;
        order.push('\n');
    }
    fs::write(staging.join("modules/order"), order)?;
    let tmp = path.with_extension("cpio.tmp");
    run_logged(
        Command::new("sh")
            .current_dir(&staging)
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet > {}",
                crate::util::sh_quote(&tmp.to_string_lossy())
            )),
        &toolchain.log("initramfs"),
    )?;
    fs::rename(&tmp, &path)?;
    fs::write(&init_copy, &init)?;
    fs::remove_dir_all(&staging)?;
    Ok(path)
}

fn write_executable(path: &Path, contents: &[u8]) -> Result {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}
