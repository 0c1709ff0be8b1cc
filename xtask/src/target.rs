//! The kernels tilde is built for, where their toolchains are cached, and running
//! commands inside a target's build root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::util::{output, run_logged, sh_quote, Context, Result};

/// A kernel target: the kernel (series `series`) tilde is built for and tested on.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The name users pass to `--kernel`.
    pub id: &'static str,
    /// Debian suite of the build root (and, for a stock kernel, of the kernel).
    pub suite: &'static str,
    /// Kernel series (`major.minor`) the target follows; for a stock kernel the exact
    /// release comes from the suite's `linux-image-amd64` at provisioning time.
    pub series: &'static str,
    /// Where the kernel comes from.
    pub kernel: Kernel,
    /// The target whose build root this one shares (its own id if none): one root, one
    /// rustc, for every target that can share it.
    pub root_of: &'static str,
    /// Whether `cargo xtask test` runs it by default.
    pub in_test_matrix: bool,
    /// Built with the kernel's sanitizers (KASAN instruments Rust too): its machine code
    /// is not the one users run, so the fast-path comparison leaves it out.
    pub instrumented: bool,
    /// The VM scenarios `cargo xtask test` runs on it; `None` for every one.
    pub test_scenarios: Option<&'static [&'static str]>,
    /// What its guests' kernel command line gets besides the runner's own.
    pub boot_args: &'static str,
    /// How many times longer a VM run may take on it than on a stock kernel.
    pub slowdown: u32,
}

/// Where a target's kernel comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Debian's stock image of the suite, with its headers package's config.
    Stock,
    /// Built from Debian's `linux-source-<series>` of `source_suite`, configured with
    /// `defconfig`, `kvm_guest.config` and the fragment at `config` (in the repository),
    /// its C compiled by `cc` (a program of the build root), as are the modules built
    /// for it.
    FromSource {
        source_suite: &'static str,
        config: &'static str,
        cc: &'static str,
    },
    /// Debian's stock image of `image_suite`, built WITHOUT Rust (no `kernel` crate in
    /// vmlinux): tilde carries the kernel's Rust runtime in `tilde_core.ko`, compiled in a
    /// tree prepared from `linux-source-<series>` of that suite with the image's own
    /// config plus Rust (docs/debian-stock-kernel.md).
    StockWithoutRust { image_suite: &'static str },
}

/// Every supported target; the first is the default.
pub const TARGETS: &[Target] = &[
    Target {
        id: "debian-sid-7.2",
        suite: "sid",
        series: "7.2",
        kernel: Kernel::Stock,
        root_of: "debian-sid-7.2",
        in_test_matrix: true,
        instrumented: false,
        test_scenarios: None,
        boot_args: "",
        slowdown: 1,
    },
    // The kernel most Debian machines run: trixie's stock image, which has no Rust. Its
    // Rust runtime is compiled by the sid root's rustc and carried: one compiler for both
    // stock targets, whose fast paths are compared instruction for instruction.
    Target {
        id: "debian-trixie-6.12",
        suite: "sid",
        series: "6.12",
        kernel: Kernel::StockWithoutRust {
            image_suite: "trixie",
        },
        root_of: "debian-sid-7.2",
        in_test_matrix: true,
        instrumented: false,
        test_scenarios: None,
        boot_args: "",
        slowdown: 1,
    },
    // The debug target: 6.12 built from source with KASAN, lockdep, kmemleak,
    // DEBUG_OBJECTS, KFENCE, UBSAN and fault injection (docs/debug-kernel.md), by the sid
    // root's rustc and the clang of the same LLVM (6.12 instruments Rust for KASAN only
    // under clang).
    Target {
        id: "linux-6.12-debug",
        suite: "sid",
        series: "6.12",
        kernel: Kernel::FromSource {
            source_suite: "trixie",
            config: "xtask/kernels/linux-6.12-debug.config",
            cc: "clang-22",
        },
        root_of: "debian-sid-7.2",
        in_test_matrix: true,
        instrumented: true,
        // Under TCG this kernel runs a scenario 7 to 10 times slower than the stock ones
        // (a boot takes 45 s instead of 5; docs/debug-kernel.md): every scenario would take
        // it past CI's 90 minutes. These cover each of tilde's modules and object paths;
        // `cargo xtask vm --kernel linux-6.12-debug SCENARIO` runs any other.
        test_scenarios: Some(DEBUG_SCENARIOS),
        // 4-level paging: on QEMU's `-cpu max` (LA57) its KASAN reported a wild access in
        // the first interrupt of the boot, before any module was loaded, which taints the
        // kernel and turns lockdep off for the whole run. PCI interrupts routed without
        // ACPI: its instrumented AML interpreter ran the PCI root's `_PRT` into ACPICA's
        // 30 s loop limit three times per boot (90 s, and no INTx routing after; the
        // devices use MSI-X).
        boot_args: "no5lvl pci=noacpi",
        // KASAN, lockdep and kmemleak under TCG: a boot 24 s instead of 5,
        // `verbs-conformance` 150 s instead of 22.
        slowdown: 6,
    },
];

/// The debug target's scenarios in `cargo xtask test`: the verbs API over rxe (every
/// case), tilde's driver side (tilde_loopback registered, the suite over it, removal),
/// tilde_mlx4 bringing the emulated ConnectX-3 up (ib_ipoib over it, a catastrophic error
/// recovered, the close), and the demo: every tilde module at once over tilde_mlx4, with
/// tilde_ipoib and tilde_iser carrying checked traffic (700 s here). The rest take too
/// long for CI on 2 cores (`ipoib` 43 min, `iser` 27, `mlx4-iser` 19;
/// docs/debug-kernel.md): `cargo xtask test --kernel linux-6.12-debug --every-scenario`
/// runs them, and `cargo xtask vm --kernel linux-6.12-debug` the fault-inject ones.
const DEBUG_SCENARIOS: &[&str] = &["verbs-conformance", "loopback", "mlx4-hca", "demo"];

impl Target {
    pub fn by_id(id: &str) -> Result<Target> {
        match TARGETS.iter().find(|t| t.id == id) {
            Some(t) => Ok(*t),
            None => {
                let known: Vec<&str> = TARGETS.iter().map(|t| t.id).collect();
                bail!("unknown kernel target {id:?}; known: {}", known.join(", "))
            }
        }
    }

    /// Whether the target's Rust objects are compiled with hashed symbol names
    /// (`toolchain::CARRIED_RUNTIME_RUSTFLAGS`): a kernel without Rust that versions
    /// symbols, where v0 names are too long for MODVERSIONS.
    pub fn hashes_rust_symbols(&self) -> bool {
        matches!(self.kernel, Kernel::StockWithoutRust { .. })
    }

    pub fn default_target() -> Target {
        TARGETS[0]
    }

    /// Cache directory of this target: `$TILDE_CACHE/<id>`.
    pub fn cache_dir(&self) -> PathBuf {
        cache_root().join(self.id)
    }

    /// The target's build root: a Debian root with the toolchain, the prepared kernel tree
    /// and the test userland (shared with the target `root_of`). It is also the guest's
    /// root file system.
    pub fn root(&self) -> BuildRoot {
        BuildRoot {
            dir: cache_root().join(self.root_of).join("root"),
        }
    }
}

/// Where provisioned toolchains live: `$TILDE_CACHE`, else `$XDG_CACHE_HOME/tilde`, else
/// `~/.cache/tilde`. Outside the repository, shared by every checkout.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TILDE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tilde");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/tilde")
}

/// A Debian root directory that commands run in through `chroot`.
pub struct BuildRoot {
    pub dir: PathBuf,
}

/// A host directory visible inside the root at `guest` for the duration of one command.
pub struct Bind<'a> {
    pub host: &'a Path,
    pub guest: &'a str,
}

impl BuildRoot {
    /// Runs `script` with `/bin/sh` inside the root, output appended to `log`.
    ///
    /// The command runs in a private mount namespace (`unshare --mount`): `/proc` and the
    /// bind mounts exist only for it and vanish with it, whatever way it ends.
    pub fn sh(&self, binds: &[Bind<'_>], script: &str, log: &Path) -> Result {
        run_logged(&mut self.command(binds, script)?, log)
    }

    /// Like [`BuildRoot::sh`], returning the standard output.
    pub fn sh_output(&self, script: &str) -> Result<String> {
        self.sh_output_with(&[], script)
    }

    /// Like [`BuildRoot::sh_output`], with bind mounts.
    pub fn sh_output_with(&self, binds: &[Bind<'_>], script: &str) -> Result<String> {
        output(&mut self.command(binds, script)?)
    }

    /// The command that runs `script` inside the root with `binds` (see
    /// [`BuildRoot::sh`]), for a caller that manages the process itself.
    pub fn command(&self, binds: &[Bind<'_>], script: &str) -> Result<Command> {
        let root = self
            .dir
            .to_str()
            .context(|| "root path is not UTF-8".to_string())?;
        let mut setup = String::from("set -e; ");
        for bind in binds {
            let target = format!("{root}{}", bind.guest);
            fs::create_dir_all(&target).context(|| format!("creating {target}"))?;
            let host = bind
                .host
                .to_str()
                .context(|| "bind path is not UTF-8".to_string())?;
            setup += &format!("mount --bind {} {}; ", sh_quote(host), sh_quote(&target));
        }
        setup += &format!(
            "mount -t proc proc {}/proc; exec chroot {} /usr/bin/env -i \
             PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
             DEBIAN_FRONTEND=noninteractive /bin/sh -c {}",
            sh_quote(root),
            sh_quote(root),
            sh_quote(script)
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &setup,
        ]);
        Ok(cmd)
    }
}
