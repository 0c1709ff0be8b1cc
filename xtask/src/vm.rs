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

/// Hard limit for one VM run, boot to power-off. `cargo xtask test` runs two at once, and a
/// run beside a debug guest took up to 2.5 times its time alone (`iser`, 120 s alone, was
/// stopped at 300 s with its checks still passing).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

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

/// The targets `cargo xtask test` runs a scenario on (`# test-targets: ID ...` line;
/// every target without one). `cargo xtask vm` runs any scenario on any target.
pub fn test_targets(scenario: &str) -> Result<Option<Vec<String>>> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# test-targets: "))
        .map(|ids| ids.split_whitespace().map(str::to_string).collect()))
}

/// The least time a scenario needs (`# timeout: SECONDS` line), for one that is slow
/// whatever tilde does (depmod over a distribution kernel's modules under TCG).
fn scenario_timeout(scenario: &str) -> Result<Option<Duration>> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    let Some(secs) = text.lines().find_map(|l| l.strip_prefix("# timeout: ")) else {
        return Ok(None);
    };
    match secs.trim().parse() {
        Ok(secs) => Ok(Some(Duration::from_secs(secs))),
        Err(_) => bail!("scenario {scenario}: `# timeout:` wants seconds, got {secs:?}"),
    }
}

/// Whether a scenario installs tilde's Debian package (`# installs-package` line): it
/// gets the package of the modules built for the target in `/tilde/package/`, and stage2
/// loads no module of tilde's before it.
pub fn installs_package(scenario: &str) -> Result<bool> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text.lines().any(|l| l.trim() == "# installs-package"))
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
    let timeout = timeout.max(scenario_timeout(scenario)?.unwrap_or_default());
    let timeout = timeout * toolchain.target.slowdown;
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
    // A scenario that installs tilde's package gets the package, and no module for
    // stage2 to load first: it loads them itself, as a user would.
    let installs_package = installs_package(scenario)?;
    if installs_package {
        let deb = crate::package::build(toolchain, modules)?;
        crate::package::copy_into(&deb, &dir.join("package"))?;
    }
    let stack: &[std::path::PathBuf] = if installs_package {
        &[]
    } else {
        &modules.stack
    };
    // Module file names get a load-order prefix: stage2 loads them in name order.
    for (i, ko) in stack.iter().enumerate() {
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
    fs::copy(vm_dir.join("ipoib.sh"), dir.join("guest/ipoib.sh"))?;
    fs::copy(vm_dir.join("faults.sh"), dir.join("guest/faults.sh"))?;
    for helper in [
        "iser_bench_table.py",
        "tcp_blob.py",
        "modversion_flip.py",
        "drvinfo.py",
        "udp_mcast.py",
        "failnth.c",
    ] {
        fs::copy(vm_dir.join(helper), dir.join("guest").join(helper))?;
    }
    fs::copy(&script, dir.join("scenario.sh"))?;
    fs::write(dir.join("scenario-name"), scenario)?;
    fs::write(dir.join("kernel-release"), &toolchain.release)?;

    let device = needs_device(scenario)?;
    let mut qemu = match &device {
        None => host_qemu(toolchain, &initramfs, &dir)?,
        Some(name) if name == "cx3" => root_qemu(toolchain, &initramfs, &dir)?,
        Some(other) => bail!("scenario {scenario}: unknown device {other:?} (have: cx3)"),
    };
    qemu.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("out/qemu.stderr"))?);
    let mut emulated = match &device {
        Some(_) => Some(EmulatedDevice::start(&dir, doorbells(scenario)?)?),
        None => None,
    };
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
    let device_report = emulated.as_mut().map(EmulatedDevice::finish);

    let read = |name: &str| fs::read_to_string(dir.join("out").join(name)).ok();
    let console_text = read("console.log").unwrap_or_default();
    let dmesg = read("dmesg.txt").unwrap_or_else(|| console_text.clone());
    let status = read("status").and_then(|s| s.trim().parse().ok());
    let tainted = read("tainted").and_then(|s| s.trim().parse().ok());
    let kmemleak = read("kmemleak.txt");
    let debug_locks = read("debug_locks").and_then(|s| s.trim().parse().ok());
    let mut verdict = judge(&Report {
        status,
        tainted,
        dmesg: &dmesg,
        timed_out,
        kmemleak: kmemleak.as_deref(),
        debug_locks,
    });
    if let Some(report) = &kmemleak {
        let others = crate::verdict::leaks(report)
            .iter()
            .filter(|leak| leak.tilde_frame.is_none())
            .count();
        if others > 0 {
            println!(
                "[vm] kmemleak: {others} object(s) leaked outside tilde's modules, not judged \
                 (see {})",
                dir.join("out/kmemleak.txt").display()
            );
        }
    }
    if let Some(report) = device_report {
        verdict.failures.extend(report);
    }
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

/// The emulated device a scenario needs (`# needs-device: NAME` line): today `cx3`, the
/// ConnectX-3 of the `cx3-device` crate.
pub fn needs_device(scenario: &str) -> Result<Option<String>> {
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# needs-device: "))
        .map(|name| name.trim().to_string()))
}

/// How a scenario's emulated device takes doorbells (`# doorbells: mapped|socket`
/// line; the device's default without one). `TILDE_CX3_DOORBELLS` overrides it, to
/// measure one path against the other (docs/cx3-device.md).
fn doorbells(scenario: &str) -> Result<Option<String>> {
    if let Some(forced) = std::env::var_os("TILDE_CX3_DOORBELLS") {
        return Ok(Some(forced.to_string_lossy().into_owned()));
    }
    let text = fs::read_to_string(scenarios_dir().join(format!("{scenario}.sh")))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# doorbells: "))
        .map(|mode| mode.trim().to_string()))
}

/// Arguments every guest gets: TCG on two vCPUs, the stock kernel over the initramfs,
/// the serial console to a file, the root and run shares over 9p, a virtio NIC on
/// QEMU's user network, restricted. `path` maps a host path to the one QEMU sees.
fn guest_args(
    toolchain: &Toolchain,
    initramfs: &Path,
    dir: &Path,
    root_share: &str,
    path: &dyn Fn(&Path) -> Result<String>,
) -> Result<Vec<String>> {
    let mut args: Vec<String> = [
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("-serial".into());
    args.push(format!("file:{}", path(&dir.join("out/console.log"))?));
    args.push("-kernel".into());
    args.push(path(&toolchain.vmlinuz())?);
    args.push("-initrd".into());
    args.push(path(initramfs)?);
    // A log buffer large enough that dmesg still holds the boot when the guest saves it.
    // Then the target's own arguments and the user's (`TILDE_BOOT_ARGS`, experiments).
    let mut cmdline = "console=ttyS0 panic=-1 log_buf_len=8M rdinit=/init".to_string();
    let extra = std::env::var("TILDE_BOOT_ARGS").unwrap_or_default();
    for more in [toolchain.target.boot_args, extra.as_str()] {
        if !more.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(more);
        }
    }
    args.push("-append".into());
    args.push(cmdline);
    args.push("-virtfs".into());
    args.push(format!(
        "local,path={root_share},mount_tag=root,security_model=none,readonly=on,multidevs=remap"
    ));
    args.push("-virtfs".into());
    args.push(format!(
        "local,path={},mount_tag=tilde,security_model=none,multidevs=remap",
        path(dir)?
    ));
    // User-mode networking, restricted: the guest's NIC reaches nothing outside QEMU.
    for arg in [
        "-netdev",
        "user,id=net0,restrict=on",
        "-device",
        "virtio-net-pci,netdev=net0",
    ] {
        args.push(arg.into());
    }
    Ok(args)
}

/// The host's QEMU, with 2 GiB of ordinary guest RAM.
fn host_qemu(toolchain: &Toolchain, initramfs: &Path, dir: &Path) -> Result<Command> {
    let host_path = |p: &Path| Ok(p.display().to_string());
    let root = toolchain.root.dir.display().to_string();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-m", "2048"])
        .args(guest_args(toolchain, initramfs, dir, &root, &host_path)?);
    Ok(qemu)
}

/// Where the run directory appears inside the build root for the root's QEMU.
const RUN_IN_ROOT: &str = "/tilde-run";

/// The build root's QEMU (sid's, which has `vfio-user-pci`; the Debian 12 host's 7.2 does
/// not), run inside the root with the run directory bound in, on a q35 machine whose RAM
/// is a shared memfd so that the device process can map it for DMA, and the emulated
/// device on the socket [`EmulatedDevice`] serves.
fn root_qemu(toolchain: &Toolchain, initramfs: &Path, dir: &Path) -> Result<Command> {
    // The initramfs lives in the cache, outside the root: the run directory carries it.
    let initramfs_copy = dir.join("initramfs.cpio");
    fs::copy(initramfs, &initramfs_copy)?;
    let root_dir = toolchain.root.dir.clone();
    let in_root = |p: &Path| -> Result<String> {
        if let Ok(rest) = p.strip_prefix(dir) {
            return Ok(format!("{RUN_IN_ROOT}/{}", rest.display()));
        }
        if p == dir {
            return Ok(RUN_IN_ROOT.to_string());
        }
        match p.strip_prefix(&root_dir) {
            Ok(rest) => Ok(format!("/{}", rest.display())),
            Err(_) => bail!(
                "{} is neither in the run directory nor in the root",
                p.display()
            ),
        }
    };
    let mut args = vec![
        "qemu-system-x86_64".to_string(),
        "-machine".into(),
        "q35,memory-backend=mem".into(),
        "-object".into(),
        "memory-backend-memfd,id=mem,size=2G,share=on".into(),
        "-m".into(),
        "2048".into(),
    ];
    args.extend(guest_args(
        toolchain,
        &initramfs_copy,
        dir,
        "/",
        &|p: &Path| {
            if p == dir {
                Ok(RUN_IN_ROOT.to_string())
            } else {
                in_root(p)
            }
        },
    )?);
    args.push("-device".into());
    args.push(format!(
        "{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"path\":\"{RUN_IN_ROOT}/{}\",\"type\":\"unix\"}}}}",
        EmulatedDevice::SOCKET
    ));
    let script = format!(
        "exec {}",
        args.iter()
            .map(|a| crate::util::sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    toolchain.root.command(
        &[crate::target::Bind {
            host: dir,
            guest: RUN_IN_ROOT,
        }],
        &script,
    )
}

/// The `cx3-device` process serving one run: started before QEMU on a socket in the run
/// directory, it exits when QEMU closes the connection; its log comes back as
/// `out/cx3-device.log`, and every `error:` line in it fails the run.
struct EmulatedDevice {
    child: std::process::Child,
    log: PathBuf,
}

impl EmulatedDevice {
    const SOCKET: &'static str = "cx3.sock";

    fn start(dir: &Path, doorbells: Option<String>) -> Result<Self> {
        let binary = build_device()?;
        let socket = dir.join(Self::SOCKET);
        let log = dir.join("out/cx3-device.log");
        let mut command = Command::new(&binary);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null());
        // `TILDE_CX3_TRACE=1`: record the driver's accesses for the host replay test
        // (`hw-mlx4/tests/hca_replay.rs`), as `out/cx3-device.trace`.
        if std::env::var_os("TILDE_CX3_TRACE").is_some() {
            command.arg("--trace").arg(dir.join("out/cx3-device.trace"));
        }
        if let Some(doorbells) = doorbells {
            command.arg("--doorbells").arg(doorbells);
        }
        let child = command
            .spawn()
            .context(|| format!("starting {}", binary.display()))?;
        let mut device = Self { child, log };
        // QEMU connects at start-up: the socket must exist first.
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = device.child.try_wait()? {
                bail!(
                    "cx3-device exited at start ({status}); see {}",
                    device.log.display()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = device.child.kill();
                bail!("cx3-device did not create {} within 10 s", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(device)
    }

    /// Waits for the device to exit (QEMU is gone, so it sees the connection close) and
    /// returns the failures it reported.
    fn finish(&mut self) -> Vec<String> {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let mut failures: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("error:"))
            .map(|l| format!("cx3-device: {l}"))
            .collect();
        match status {
            None => failures.push("cx3-device did not exit after QEMU; killed".into()),
            Some(s) if s.code() == Some(2) => failures.push(format!(
                "cx3-device failed ({s}); see {}",
                self.log.display()
            )),
            Some(_) => {}
        }
        failures
    }
}

/// Builds the device program with the host's cargo (release: it executes the guest's
/// data path), returning its path.
fn build_device() -> Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args(["build", "--quiet", "--release", "-p", "cx3-device"])
        .status()
        .context(|| "cargo build -p cx3-device".to_string())?;
    if !status.success() {
        bail!("cargo build -p cx3-device failed");
    }
    Ok(repo_root().join("target/release/cx3-device"))
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
pub fn initramfs(toolchain: &Toolchain) -> Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest scripts' lines that assert by negation (`! CMD` as a command of its own):
    /// bash -e ignores a negated command's status, so such a line can never fail a scenario.
    /// `refute` (lib.sh) is the way to say it. A `!` inside an `if`, a `while` or an `&&`
    /// list is a condition, not an assertion, and is not reported.
    fn negated_assertions(script: &str) -> Vec<(usize, String)> {
        script
            .lines()
            .enumerate()
            .filter(|(_, line)| line.trim_start().starts_with("! "))
            .map(|(i, line)| (i + 1, line.trim().to_string()))
            .collect()
    }

    #[test]
    fn a_negated_command_is_found_and_a_condition_is_not() {
        let script =
            "set -e\n\t! grep -q rxe0 links.log\nif ! true; then :; fi\na && ! b && break\n";
        assert_eq!(
            negated_assertions(script),
            [(2, "! grep -q rxe0 links.log".to_string())]
        );
    }

    #[test]
    fn no_guest_script_asserts_by_negation() {
        let vm = repo_root().join("xtask/vm");
        let mut scripts: Vec<PathBuf> = vec![vm.join("stage2"), vm.join("init")];
        for dir in [vm.clone(), scenarios_dir()] {
            for entry in fs::read_dir(&dir).expect("the guest scripts' folder") {
                let path = entry.expect("a directory entry").path();
                if path.extension().is_some_and(|e| e == "sh") {
                    scripts.push(path);
                }
            }
        }
        let found: Vec<String> = scripts
            .iter()
            .flat_map(|path| {
                let text = fs::read_to_string(path).expect("a guest script");
                negated_assertions(&text)
                    .into_iter()
                    .map(move |(line, text)| format!("{}:{line}: {text}", path.display()))
            })
            .collect();
        assert!(
            found.is_empty(),
            "use `refute` instead:\n{}",
            found.join("\n")
        );
    }
}
