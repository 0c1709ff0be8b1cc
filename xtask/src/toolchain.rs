//! `cargo xtask toolchain`: provisions, idempotently, everything a target needs.
//!
//! Steps (each with a progress line; each ends by writing a stamp file, and a rerun
//! trusts only stamped steps, redoing an unstamped one from scratch):
//! 1. host packages (qemu, debootstrap, ...), installed with apt when missing;
//! 2. the build root: `debootstrap --variant=minbase <suite>`;
//! 3. its packages: toolchain, kbuild tools, `linux-source-<series>`, the stock kernel
//!    image and headers (the release found from the suite's `linux-image-amd64`), and the
//!    test userland;
//! 4. the prepared kernel tree: Debian's source with Debian's `.config` and
//!    `Module.symvers`, `make olddefconfig modules_prepare KERNELRELEASE=<release>`,
//!    then checked against the stock kernel (rustc version, Rust exports).
//!
//! A stock kernel built without Rust ([`Kernel::StockWithoutRust`]) gets its image and
//! headers from its own suite and a tree of its own, prepared with the image's config plus
//! Rust, whose `rust/` objects tilde carries (see [`provision_stock_without_rust`]).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::target::{BuildRoot, Kernel, Target};
use crate::util::{have_program, output, repo_root, run_logged, step, Context, Result};

/// What the rest of xtask needs to know of a provisioned target.
pub struct Toolchain {
    pub target: Target,
    /// The stock kernel's release, e.g. `7.2.13+deb14-amd64` (`uname -r` in the guest).
    pub release: String,
    pub root: BuildRoot,
    /// Variables every `make` in the prepared tree takes (the compiler, Rust flags), as
    /// one shell-ready string; empty where the tree's own defaults are right.
    pub make_vars: String,
}

impl Toolchain {
    /// The prepared kernel tree, as a path inside the build root.
    pub fn tree(&self) -> String {
        match self.target.kernel {
            // Its own tree: the 6.12 source tree of `linux-6.12-debug` is that target's kernel.
            Kernel::StockWithoutRust { .. } => format!("/usr/src/{}-tree", self.target.id),
            _ => format!("/usr/src/linux-source-{}", self.target.series),
        }
    }

    /// The stock kernel image, as a host path.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    /// The stock kernel's modules directory, as a host path.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.dir.join(format!("lib/modules/{}", self.release))
    }

    /// The log file of a step.
    pub fn log(&self, name: &str) -> PathBuf {
        self.target
            .cache_dir()
            .join("logs")
            .join(format!("{name}.log"))
    }
}

/// Packages of the build root besides the kernel's own.
const ROOT_PACKAGES: &[&str] = &[
    // Kernel toolchain: Rust, bindgen and the C side of kbuild.
    "rustc",
    "rust-src",
    "rustfmt",
    "rust-clippy",
    "bindgen",
    "libclang-dev",
    "gcc",
    // The C compiler of the debug target (linux-6.12-debug): the LLVM of Debian's rustc.
    "clang-22",
    "make",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "kmod",
    "cpio",
    "xz-utils",
    // Guest userland for the VM scenarios.
    "busybox-static",
    "iproute2",
    "rdma-core",
    "ibverbs-utils",
    "rdmacm-utils",
    "perftest",
    // The iSCSI initiator's user space (iscsid, iscsiadm), for the iSER scenarios.
    "open-iscsi",
    // iSER data checks and benchmarks.
    "fio",
    // The emulated ConnectX-3 (cx3 scenarios): QEMU 11 with `vfio-user-pci` runs from the
    // root (the Debian 12 host's QEMU 7.2 lacks it); in the guest the subnet manager and
    // the InfiniBand diagnostics.
    "qemu-system-x86",
    "opensm",
    "infiniband-diags",
    // ping for the IPoIB checks.
    "iputils-ping",
];

/// Host programs xtask runs, and the Debian packages that provide them.
const HOST_PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("debootstrap", "debootstrap"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("unshare", "util-linux"),
    ("chroot", "coreutils"),
    ("objdump", "binutils"),
];

/// Free space a cold provisioning needs in the cache (root, source, prepared tree).
const NEEDED_BYTES: u64 = 8 << 30;

/// Provisions `target` (doing only what is not done yet) and checks it.
pub fn provision(target: Target) -> Result<Toolchain> {
    match target.kernel {
        Kernel::Stock => provision_stock(target),
        Kernel::FromSource {
            source_suite,
            config,
            cc,
        } => provision_from_source(target, source_suite, config, cc),
        Kernel::StockWithoutRust { image_suite } => {
            provision_stock_without_rust(target, image_suite)
        }
    }
}

/// A target whose kernel is Debian's stock image.
fn provision_stock(target: Target) -> Result<Toolchain> {
    let group = format!("toolchain {}", target.id);
    let g = group.as_str();
    check_root()?;
    step(g, "host packages", ensure_host_packages)?;

    let cache = target.cache_dir();
    fs::create_dir_all(cache.join("logs")).context(|| format!("creating {}", cache.display()))?;
    let stamps = Stamps {
        dir: cache.join("stamps"),
    };
    fs::create_dir_all(&stamps.dir)?;
    let root = target.root();
    let log = |name: &str| cache.join("logs").join(format!("{name}.log"));

    // A stamp whose directory is gone (deleted by hand) proves nothing.
    if !root.dir.join("usr/bin/apt-get").is_file() {
        stamps.clear_from(&["root", "packages", "tree"])?;
    }
    if stamps.get("root").is_none() {
        check_free_space(&cache)?;
        stamps.clear_from(&["root", "packages", "tree"])?;
        step(
            g,
            &format!("debootstrap {} build root", target.suite),
            || debootstrap(&target, &root.dir, &log("debootstrap")),
        )?;
        stamps.set("root", &format!("suite={}\n", target.suite))?;
    }

    // A package list changed since the root was made: install what is new (apt keeps
    // what is there), without redoing the tree.
    let wanted = format!("packages={}", ROOT_PACKAGES.join(","));
    if let Some(stamp) = stamps.get("packages") {
        if !stamp.lines().any(|l| l == wanted) {
            let release = stamp_value(&Some(stamp.clone()), "release")
                .context(|| "packages stamp has no release; remove it and rerun".to_string())?;
            step(g, "install packages added since the root was made", || {
                install_packages(&target, &root, &release, &log("packages"))
            })?;
            stamps.set("packages", &format!("{stamp}{wanted}\n"))?;
        }
    }
    if stamps.get("packages").is_none() {
        stamps.clear_from(&["packages", "tree"])?;
        let release = step(g, "find the stock kernel release", || {
            find_release(&target, &root, &log("packages"))
        })?;
        step(
            g,
            &format!("install toolchain, linux {release}, test userland"),
            || install_packages(&target, &root, &release, &log("packages")),
        )?;
        let versions = step(g, "record versions", || {
            record_versions(&target, &root, &release)
        })?;
        stamps.set(
            "packages",
            &format!("release={release}\n{versions}{wanted}\n"),
        )?;
    }
    let release = stamp_value(&stamps.get("packages"), "release")
        .context(|| "packages stamp has no release; remove it and rerun".to_string())?;
    let toolchain = Toolchain {
        target,
        release,
        root,
        make_vars: String::new(),
    };

    if stamps.get("tree").is_none() {
        step(
            g,
            &format!("prepare kernel tree ({})", toolchain.tree()),
            || prepare_tree(&toolchain, &log("tree")),
        )?;
        step(g, "check Rust exports against the stock kernel", || {
            check_exports(&toolchain)
        })?;
        stamps.set("tree", &format!("release={}\n", toolchain.release))?;
    }
    step(
        g,
        "check rustc against the kernel's CONFIG_RUSTC_VERSION_TEXT",
        || check_rustc(&toolchain),
    )?;
    Ok(toolchain)
}

/// A target whose kernel tilde builds from Debian's source package, in the build root
/// of `target.root_of` (provisioned first, its rustc and bindgen used for both):
/// 1. `linux-source-<series>` from `source_suite` (an apt source pinned so that nothing
///    else comes from that suite);
/// 2. the config: `defconfig`, `kvm_guest.config`, then the fragment `config`, checked
///    line by line against the result (a Rust toolchain the kernel rejects turns
///    `CONFIG_RUST` off silently; this makes it an error);
/// 3. `bzImage` and modules, installed into the root (`/boot`, `/lib/modules`), which is
///    also the guest's root.
///
/// Rebuilt when the fragment's options or the compiler change (their hash is in the stamp).
fn provision_from_source(
    target: Target,
    source_suite: &str,
    config: &str,
    cc: &str,
) -> Result<Toolchain> {
    provision(Target::by_id(target.root_of)?)?;
    let group = format!("toolchain {}", target.id);
    let g = group.as_str();
    let cache = target.cache_dir();
    fs::create_dir_all(cache.join("logs")).context(|| format!("creating {}", cache.display()))?;
    let stamps = Stamps {
        dir: cache.join("stamps"),
    };
    fs::create_dir_all(&stamps.dir)?;
    let root = target.root();
    let log = |name: &str| cache.join("logs").join(format!("{name}.log"));
    let series = target.series;
    let tarball = root
        .dir
        .join(format!("usr/src/linux-source-{series}.tar.xz"));
    if !tarball.is_file() {
        stamps.clear_from(&["source", "kernel"])?;
    }
    if stamps.get("source").is_none() {
        let version = step(
            g,
            &format!("linux-source-{series} from {source_suite}"),
            || fetch_source(&root, series, source_suite, &log("source")),
        )?;
        stamps.set("source", &format!("{version}\n"))?;
    }
    let fragment_path = repo_root().join(config);
    let fragment = fs::read_to_string(&fragment_path)
        .context(|| format!("reading {}", fragment_path.display()))?;
    // What the kernel is built from: the compiler and the fragment's options (its comments
    // change nothing, and rebuilding takes 15 minutes).
    let options: Vec<&str> = fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .collect();
    let config_hash = format!(
        "{:016x}",
        fnv1a(format!("CC={cc}\n{}", options.join("\n")).as_bytes())
    );
    let built = stamps.get("kernel");
    let release = stamp_value(&built, "release");
    let current = stamp_value(&built, "config").as_deref() == Some(config_hash.as_str())
        && release
            .as_ref()
            .is_some_and(|r| root.dir.join(format!("boot/vmlinuz-{r}")).is_file());
    let release = match (current, release) {
        (true, Some(release)) => release,
        _ => {
            stamps.clear_from(&["kernel"])?;
            step(
                g,
                "configure (defconfig, kvm_guest.config, fragment)",
                || configure(&root, series, cc, &fragment, &log("kernel")),
            )?;
            let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
            let release = step(
                g,
                &format!("build bzImage and modules with -j{jobs} (about 15 min on 2 cores)"),
                || build_kernel(&root, series, cc, jobs, &log("kernel")),
            )?;
            stamps.set(
                "kernel",
                &format!("release={release}\nconfig={config_hash}\n"),
            )?;
            release
        }
    };
    Ok(Toolchain {
        target,
        release,
        root,
        make_vars: format!("CC={}", crate::util::sh_quote(cc)),
    })
}

fn fetch_source(root: &BuildRoot, series: &str, suite: &str, log: &Path) -> Result<String> {
    root.sh(
        &[],
        &format!(
            "set -e; mirror=$(awk '/^deb /{{print $2; exit}}' /etc/apt/sources.list); \
             echo \"deb $mirror {suite} main\" > /etc/apt/sources.list.d/tilde-{suite}.list; \
             printf 'Package: *\\nPin: release n={suite}\\nPin-Priority: 1\\n' \
               > /etc/apt/preferences.d/tilde-{suite}; \
             apt-get update -q; apt-get install -y -q linux-source-{series}/{suite}"
        ),
        log,
    )?;
    root.sh_output(&format!(
        "dpkg-query -W -f '${{Version}}' linux-source-{series}"
    ))
}

/// The Rust flags the tree of a [`Kernel::StockWithoutRust`] target builds every Rust
/// object with, its carried runtime and tilde's modules alike. The stock image has
/// MODVERSIONS: every symbol a module imports from another module must have an entry in
/// its `__versions` table, whose names hold at most 55 bytes (`MODULE_NAME_LEN - 1`;
/// 6.12's loader refuses a module that lacks the entry, and modpost refuses a longer
/// name). Rust's v0 names are far longer; the hashed mangling names every symbol
/// `_RNxC<crate><hash of its v0 name>`, 25 to 45 bytes, and rustc records the mangling
/// in each crate's metadata so that every crate names an upstream symbol the same way.
///
/// And the target CPU: 7.2's kbuild compiles Rust for `-Ctarget-cpu=x86-64` (its
/// `arch/x86/Makefile`), 6.12's leaves LLVM's `generic`. Both name the x86-64 baseline,
/// but LLVM's cost models read the CPU's name: tilde's objects name the one 7.2 names, so
/// that the fast path can be the same machine code (`cargo xtask fastpath`).
pub const CARRIED_RUNTIME_RUSTFLAGS: &str =
    "-Zunstable-options -Csymbol-mangling-version=hashed -Ctarget-cpu=x86-64";

/// The flags each module's own crate gets on top of [`CARRIED_RUNTIME_RUSTFLAGS`]: v0
/// names, which order its generic instantiations for LLVM as on every other target
/// (Kbuild's `TILDE_LEAF_RUSTFLAGS`).
const LEAF_RUSTFLAGS: &str = "-Csymbol-mangling-version=v0";

/// The options the prepared tree's `.config` may differ in from the stock image's, and
/// why none changes a structure layout or calling convention that the stock vmlinux and
/// its modules share with tilde's:
/// - Rust itself (`RUST`, `RUST_*`, `RUSTC_*`, `BINDGEN_VERSION_TEXT`): what the tree
///   compiles Rust with; the stock image compiles no Rust, and no C declaration depends on
///   them (`lib/vsprintf.c`'s `%pA` and `lib/usercopy.c`'s out-of-line copies are C
///   definitions in vmlinux, not layouts; docs/debian-stock-kernel.md);
/// - the versions of the C toolchain (`CC_VERSION_TEXT`, `GCC_VERSION` within one major,
///   `AS_VERSION`, `LD_VERSION`, `PAHOLE_VERSION`): the same compiler (the one the stock
///   config names) at another patch release, and the binutils and pahole of the build
///   root. Anything such a version would change is a Kconfig option of its own (a
///   `CC_HAS_*` probe, say), which would differ too and be refused.
const RUST_ONLY_CONFIG: &[&str] = &[
    "RUST",
    "RUST_*",
    "RUSTC_*",
    "BINDGEN_VERSION_TEXT",
    "CC_VERSION_TEXT",
    "GCC_VERSION",
    "AS_VERSION",
    "LD_VERSION",
    "PAHOLE_VERSION",
];

/// A stock kernel built without Rust (Debian 13's), in the build root of
/// `target.root_of` (its rustc and bindgen, like `linux-6.12-debug`):
/// 1. `linux-source-<series>` from `image_suite` (the pinned apt source of
///    [`fetch_source`]);
/// 2. the stock image and headers from `image_suite`, the release read from that suite's
///    `linux-image-amd64` (the headers bring the compiler their config names, `gcc-14`);
/// 3. the tree, `/usr/src/<target>-tree`: the source with the image's `.config` and
///    `Module.symvers`, Rust switched on (its Kconfig dependency on `!MODVERSIONS` taken
///    out, see [`CARRIED_RUNTIME_RUSTFLAGS`]), `make olddefconfig modules_prepare`, which
///    builds `rust/`: the runtime `cargo xtask kmod` carries into `tilde_core.ko`.
///
/// Checked on every run, not only when prepared: the tree's config differs from the
/// image's only in [`RUST_ONLY_CONFIG`], and the image exports no Rust (else it is not a
/// kernel without Rust, and carrying a second `kernel` crate would be wrong).
fn provision_stock_without_rust(target: Target, image_suite: &str) -> Result<Toolchain> {
    provision(Target::by_id(target.root_of)?)?;
    let group = format!("toolchain {}", target.id);
    let g = group.as_str();
    let cache = target.cache_dir();
    fs::create_dir_all(cache.join("logs")).context(|| format!("creating {}", cache.display()))?;
    let stamps = Stamps {
        dir: cache.join("stamps"),
    };
    fs::create_dir_all(&stamps.dir)?;
    let root = target.root();
    let log = |name: &str| cache.join("logs").join(format!("{name}.log"));
    let series = target.series;

    if !root
        .dir
        .join(format!("usr/src/linux-source-{series}.tar.xz"))
        .is_file()
    {
        stamps.clear_from(&["source", "image", "tree"])?;
    }
    if stamps.get("source").is_none() {
        stamps.clear_from(&["source", "image", "tree"])?;
        let version = step(
            g,
            &format!("linux-source-{series} from {image_suite}"),
            || fetch_source(&root, series, image_suite, &log("source")),
        )?;
        stamps.set("source", &format!("{version}\n"))?;
    }

    let image = stamp_value(&stamps.get("image"), "release");
    let installed = image
        .as_ref()
        .is_some_and(|r| root.dir.join(format!("boot/vmlinuz-{r}")).is_file());
    let release = match (installed, image) {
        (true, Some(release)) => release,
        _ => {
            stamps.clear_from(&["image", "tree"])?;
            let release = step(
                g,
                &format!("find {image_suite}'s stock kernel release"),
                || find_suite_release(&target, &root, image_suite),
            )?;
            step(
                g,
                &format!("install linux-image-{release} and its headers from {image_suite}"),
                || {
                    root.sh(
                        &[],
                        &format!(
                            "apt-get install -y -q linux-image-{release}/{image_suite} \
                             linux-headers-{release}/{image_suite}"
                        ),
                        &log("image"),
                    )
                },
            )?;
            stamps.set("image", &format!("release={release}\n"))?;
            release
        }
    };

    let headers = root.dir.join(format!("usr/src/linux-headers-{release}"));
    let stock_config = fs::read_to_string(headers.join(".config"))
        .context(|| format!("reading {}/.config", headers.display()))?;
    let cc = config_value(&stock_config, "CONFIG_CC_VERSION_TEXT")
        .and_then(|text| text.split(' ').next())
        .context(|| "the stock .config names no compiler (CONFIG_CC_VERSION_TEXT)".to_string())?;
    let toolchain = Toolchain {
        target,
        release,
        root,
        make_vars: format!(
            "CC={} KRUSTFLAGS={} TILDE_LEAF_RUSTFLAGS={}",
            crate::util::sh_quote(cc),
            crate::util::sh_quote(CARRIED_RUNTIME_RUSTFLAGS),
            crate::util::sh_quote(LEAF_RUSTFLAGS)
        ),
    };

    // A stamp whose tree is gone (a build root made anew) proves nothing.
    let tree_dir = toolchain
        .root
        .dir
        .join(toolchain.tree().trim_start_matches('/'));
    // The runtime is compiled with the flags tilde's modules get: a tree made with other
    // flags is made again.
    let tree_stamp = format!(
        "release={}\nrustflags={CARRIED_RUNTIME_RUSTFLAGS}\n",
        toolchain.release
    );
    if !tree_dir.join("rust/libkernel.rmeta").is_file()
        || stamps.get("tree").is_some_and(|stamp| stamp != tree_stamp)
    {
        stamps.clear_from(&["tree"])?;
    }
    if stamps.get("tree").is_none() {
        step(
            g,
            &format!("prepare kernel tree with Rust ({})", toolchain.tree()),
            || prepare_tree_with_rust(&toolchain, &log("tree")),
        )?;
        stamps.set("tree", &tree_stamp)?;
    }
    step(
        g,
        "check the tree's config against the stock image's (Rust-only differences)",
        || {
            let tree = toolchain
                .root
                .dir
                .join(toolchain.tree().trim_start_matches('/'));
            let config = fs::read_to_string(tree.join(".config"))?;
            if config_value_raw(&config, "CONFIG_RUST") != Some("y") {
                bail!(
                    "the prepared tree has no CONFIG_RUST=y: the build root's rustc or bindgen \
                     was rejected (see `make rustavailable` in {})",
                    toolchain.tree()
                );
            }
            let differing = config_differences(&stock_config, &config);
            if !differing.is_empty() {
                bail!(
                    "the prepared tree's config differs from the stock image's in options that \
                     may change layouts or calling conventions: {} (allowed: {})",
                    differing.join(", "),
                    RUST_ONLY_CONFIG.join(", ")
                );
            }
            let symvers = fs::read_to_string(headers.join("Module.symvers"))?;
            if !parse_symvers_rust(&symvers).is_empty() {
                bail!(
                    "{} exports Rust symbols: it has a kernel crate, and target {} (which \
                     carries one) is the wrong kind for it",
                    toolchain.release,
                    toolchain.target.id
                );
            }
            Ok(())
        },
    )?;
    Ok(toolchain)
}

/// The release `linux-image-amd64` of `suite` depends on (an apt source of that suite is
/// configured by [`fetch_source`]).
fn find_suite_release(target: &Target, root: &BuildRoot, suite: &str) -> Result<String> {
    let depends = root.sh_output(&format!("apt-cache depends linux-image-amd64/{suite}"))?;
    let release = parse_image_release(&depends).context(|| {
        format!("no linux-image-<release> dependency of {suite}'s linux-image-amd64:\n{depends}")
    })?;
    if !release.starts_with(&format!("{}.", target.series)) {
        bail!(
            "Debian {suite}'s stock kernel is now {release}, not a {} kernel: target {} needs \
             updating (xtask/src/target.rs)",
            target.series,
            target.id
        );
    }
    Ok(release)
}

/// The one change tilde makes to the source of the Rust runtime it carries: the kernel
/// crate prints through `_printk("%pA")`, which a vmlinux without Rust cannot format (its
/// vsprintf WARNs instead), so `rust/kernel/print.rs` calls `tilde_carried_printk`
/// (`rdma-core-rs/src/sys/carried_runtime.c`) in its two places; the count is checked.
const PRINT_PATCH: &str =
    "sed -i 's/bindings::_printk(/tilde_carried_printk(/' rust/kernel/print.rs; \
    printf '%s\\n' '' \
      '// Patched in by tilde (docs/debian-stock-kernel.md): a vmlinux built without Rust' \
      '// has no `%pA` in vsprintf; the carried runtime prints through C glue of its own.' \
      'extern \"C\" {' \
      '    fn tilde_carried_printk(fmt: *const c_char, ...) -> crate::ffi::c_int;' \
      '}' >> rust/kernel/print.rs; \
    test $(grep -c 'tilde_carried_printk(' rust/kernel/print.rs) = 3;";

fn prepare_tree_with_rust(toolchain: &Toolchain, log: &Path) -> Result {
    fs::write(
        toolchain
            .root
            .dir
            .join(NORETURNS_AWK_PATH.trim_start_matches('/')),
        NORETURNS_AWK,
    )?;
    let series = toolchain.target.series;
    let release = &toolchain.release;
    let tree = toolchain.tree();
    let vars = &toolchain.make_vars;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    // The awk drops `depends on !MODVERSIONS` from `config RUST` only: 6.12 has it
    // because its modpost cannot version Rust's long names, which the hashed mangling
    // (CARRIED_RUNTIME_RUSTFLAGS) shortens. The config check after this step proves
    // nothing else moved.
    toolchain.root.sh(
        &[],
        &format!(
            "set -e; rm -rf {tree}; mkdir -p {tree}; cd {tree}; \
             tar xf /usr/src/linux-source-{series}.tar.xz --strip-components=1; \
             cp /usr/src/linux-headers-{release}/.config /usr/src/linux-headers-{release}/Module.symvers .; \
             awk '/^config /{{r = ($0 == \"config RUST\")}} \
                  r && $0 == \"\\tdepends on !MODVERSIONS\" {{next}} {{print}}' \
                 init/Kconfig > init/Kconfig.tilde; mv init/Kconfig.tilde init/Kconfig; \
             {PRINT_PATCH} \
             scripts/config --enable RUST; \
             make {vars} olddefconfig KERNELRELEASE={release}; \
             make {vars} modules_prepare KERNELRELEASE={release} -j{jobs}; \
             {{ echo '/* tilde: the carried Rust runtime, hashed names (docs/debian-stock-kernel.md) */'; \
               for o in rust/core.o rust/kernel.o; do readelf --debug-dump=info $o | awk -f {awk}; done \
               | sort -u | sed 's/.*/NORETURN(&)/'; }} >> tools/objtool/noreturns.h; \
             test $(grep -c '^NORETURN(_R' tools/objtool/noreturns.h) -gt 0; \
             make {vars} modules_prepare KERNELRELEASE={release} -j{jobs}",
            awk = NORETURNS_AWK_PATH,
        ),
        log,
    )
}

/// objtool knows the functions that never return by name (`tools/objtool/noreturns.h`,
/// and v0 patterns for Rust's `core::panicking` and the like): a call to an unknown one
/// that ends a function reads as falling through into the next. Hashed names match no
/// pattern, and the modules that call into the carried `core` (in `tilde_core.ko`) cannot
/// show objtool its body; so the prepared tree's objtool learns every Rust function of
/// the runtime that DWARF marks `DW_AT_noreturn`, under its hashed name, and is rebuilt
/// (the second `modules_prepare`). A build tool of the tree, not the runtime, changes.
const NORETURNS_AWK: &str = "\
/Abbrev Number/ { if (noreturn && name ~ /^_R/) print name; noreturn = 0; name = \"\" }
/DW_AT_linkage_name/ { name = $NF }
/DW_AT_noreturn/ { noreturn = 1 }
END { if (noreturn && name ~ /^_R/) print name }
";
const NORETURNS_AWK_PATH: &str = "/usr/src/tilde-rust-noreturns.awk";

/// The options whose values differ between two `.config`s (`# CONFIG_X is not set` and
/// no line at all are the same), less those [`RUST_ONLY_CONFIG`] allows; `GCC_VERSION` is
/// allowed to differ within one major release only.
fn config_differences(stock: &str, tree: &str) -> Vec<String> {
    let options = |config: &str| -> std::collections::BTreeMap<String, String> {
        config
            .lines()
            .filter_map(|l| l.strip_prefix("CONFIG_")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (stock, tree) = (options(stock), options(tree));
    let allowed = |key: &str| {
        RUST_ONLY_CONFIG
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => key == *pattern,
            })
    };
    let gcc_major = |v: Option<&String>| v.and_then(|v| v.parse::<u32>().ok()).map(|v| v / 10000);
    stock
        .keys()
        .chain(tree.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|key| stock.get(*key) != tree.get(*key))
        .filter(|key| {
            if key.as_str() == "GCC_VERSION" {
                return gcc_major(stock.get(*key)) != gcc_major(tree.get(*key));
            }
            !allowed(key)
        })
        .map(|key| {
            format!(
                "CONFIG_{key} ({} in the image, {} in the tree)",
                stock.get(key).map_or("unset", String::as_str),
                tree.get(key).map_or("unset", String::as_str)
            )
        })
        .collect()
}

/// Any option's raw value from a kernel `.config` (`y`, `m`, a number, a quoted string).
fn config_value_raw<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn configure(root: &BuildRoot, series: &str, cc: &str, fragment: &str, log: &Path) -> Result {
    let fragment_in_root = format!("/usr/src/tilde-linux-{series}.config");
    fs::write(
        root.dir.join(fragment_in_root.trim_start_matches('/')),
        fragment,
    )?;
    root.sh(
        &[],
        &format!(
            "set -e; cd /usr/src; rm -rf linux-source-{series}; tar xf linux-source-{series}.tar.xz; \
             cd linux-source-{series}; make CC={cc} defconfig kvm_guest.config; \
             scripts/kconfig/merge_config.sh -m .config {fragment_in_root}; \
             make CC={cc} olddefconfig"
        ),
        log,
    )?;
    let config_path = root
        .dir
        .join(format!("usr/src/linux-source-{series}/.config"));
    let config = fs::read_to_string(&config_path)?;
    let missing = unmet_config(fragment, &config);
    if !missing.is_empty() {
        bail!(
            "the kernel config does not hold {} (a dependency is missing, or the toolchain \
             was rejected: see `make rustavailable`)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The lines of `fragment` that `config` does not hold (`=n` holds when the option is
/// unset).
fn unmet_config(fragment: &str, config: &str) -> Vec<String> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|line| {
            let Some((key, value)) = line.split_once('=') else {
                return true;
            };
            match value {
                "n" => config.lines().any(|l| {
                    l.strip_prefix(key)
                        .is_some_and(|rest| rest.starts_with('='))
                }),
                _ => !config.lines().any(|l| l.trim() == *line),
            }
        })
        .map(String::from)
        .collect()
}

fn build_kernel(
    root: &BuildRoot,
    series: &str,
    cc: &str,
    jobs: usize,
    log: &Path,
) -> Result<String> {
    root.sh(
        &[],
        &format!(
            "set -e; cd /usr/src/linux-source-{series}; make CC={cc} -j{jobs} bzImage modules; \
             make CC={cc} modules_install; \
             cp arch/x86/boot/bzImage /boot/vmlinuz-$(make -s CC={cc} kernelrelease)"
        ),
        log,
    )?;
    let release = root.sh_output(&format!(
        "cd /usr/src/linux-source-{series} && make -s CC={cc} kernelrelease"
    ))?;
    Ok(release.trim().to_string())
}

/// FNV-1a: a stable fingerprint of a file's contents for a stamp.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Prints where the cache is and what versions it holds.
pub fn describe(toolchain: &Toolchain) -> Result {
    let stamps = Stamps {
        dir: toolchain.target.cache_dir().join("stamps"),
    };
    println!(
        "[toolchain {}] cache {} holds:",
        toolchain.target.id,
        toolchain.target.cache_dir().display()
    );
    for stamp in ["packages", "source", "kernel", "image"] {
        for line in stamps.get(stamp).unwrap_or_default().lines() {
            println!("    {stamp}: {line}");
        }
    }
    Ok(())
}

fn check_root() -> Result {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!(
            "xtask needs root: it installs host packages, chroots into the build root and \
             mounts file systems (running as uid {})",
            uid.trim()
        );
    }
    Ok(())
}

fn ensure_host_packages() -> Result {
    let missing: Vec<&str> = HOST_PROGRAMS
        .iter()
        .filter(|(program, _)| !have_program(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let log = crate::target::cache_root().join("host-apt.log");
    run_logged(Command::new("apt-get").args(["update", "-q"]), &log)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
    )
}

fn check_free_space(dir: &Path) -> Result {
    let df = output(Command::new("df").args(["--output=avail", "-B1"]).arg(dir))?;
    let avail: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context(|| format!("cannot read free space of {} from df", dir.display()))?;
    if avail < NEEDED_BYTES {
        bail!(
            "{} has {} MiB free; provisioning needs {} MiB (set TILDE_CACHE to another disk)",
            dir.display(),
            avail >> 20,
            NEEDED_BYTES >> 20
        );
    }
    Ok(())
}

fn debootstrap(target: &Target, root: &Path, log: &Path) -> Result {
    let partial = root.with_extension("partial");
    for dir in [root, partial.as_path()] {
        if dir.exists() {
            fs::remove_dir_all(dir).context(|| format!("removing {}", dir.display()))?;
        }
    }
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", target.suite]).arg(&partial);
    // debootstrap's default mirror is Debian's; TILDE_DEBIAN_MIRROR overrides it.
    if let Some(mirror) = std::env::var_os("TILDE_DEBIAN_MIRROR") {
        cmd.arg(mirror);
    }
    run_logged(&mut cmd, log).map_err(|e| {
        crate::util::Error(format!(
            "{e}\n(is the Debian mirror reachable from this machine?)"
        ))
    })?;
    // The mirror may serve a sid Release file past its Valid-Until date.
    fs::write(
        partial.join("etc/apt/apt.conf.d/99tilde"),
        "Acquire::Check-Valid-Until \"false\";\nAPT::Install-Recommends \"false\";\n",
    )?;
    fs::rename(&partial, root)?;
    Ok(())
}

fn find_release(target: &Target, root: &BuildRoot, log: &Path) -> Result<String> {
    root.sh(&[], "apt-get update -q", log)?;
    let depends = root.sh_output("apt-cache depends linux-image-amd64")?;
    let release = parse_image_release(&depends).context(|| {
        format!("no linux-image-<release> dependency in `apt-cache depends linux-image-amd64`:\n{depends}")
    })?;
    if !release.starts_with(&format!("{}.", target.series)) {
        bail!(
            "Debian {}'s stock kernel is now {release}, not a {} kernel: target {} needs \
             updating (xtask/src/target.rs)",
            target.suite,
            target.series,
            target.id
        );
    }
    Ok(release)
}

/// The kernel release from `apt-cache depends linux-image-amd64`.
fn parse_image_release(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let package = line.trim().strip_prefix("Depends: ")?;
        let release = package.strip_prefix("linux-image-")?;
        release
            .chars()
            .next()
            .filter(char::is_ascii_digit)
            .map(|_| release.to_string())
    })
}

fn install_packages(target: &Target, root: &BuildRoot, release: &str, log: &Path) -> Result {
    let mut packages: Vec<String> = ROOT_PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.push(format!("linux-image-{release}"));
    packages.push(format!("linux-headers-{release}"));
    packages.push(format!("linux-source-{}", target.series));
    root.sh(
        &[],
        &format!("apt-get install -y -q {}", packages.join(" ")),
        log,
    )
}

fn record_versions(target: &Target, root: &BuildRoot, release: &str) -> Result<String> {
    let versions = root.sh_output(&format!(
        "dpkg-query -W -f '${{Package}}=${{Version}}\\n' rustc bindgen gcc linux-image-{release} \
         linux-source-{} rdma-core",
        target.series
    ))?;
    fs::write(target.cache_dir().join("versions.txt"), &versions)?;
    Ok(versions)
}

fn prepare_tree(toolchain: &Toolchain, log: &Path) -> Result {
    let series = toolchain.target.series;
    let release = &toolchain.release;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    toolchain.root.sh(
        &[],
        &format!(
            "set -e; cd /usr/src; rm -rf linux-source-{series}; \
             tar xf linux-source-{series}.tar.xz; cd linux-source-{series}; \
             cp /usr/src/linux-headers-{release}/.config /usr/src/linux-headers-{release}/Module.symvers .; \
             make olddefconfig modules_prepare KERNELRELEASE={release} -j{jobs}"
        ),
        log,
    )
}

/// The Rust symbols the stock kernel exports must be exactly those the prepared tree's
/// Rust build exports: same compiler, same crate hashes, so our modules link against
/// `kernel`/`core` as the stock vmlinux built them.
fn check_exports(toolchain: &Toolchain) -> Result {
    let tree = toolchain
        .root
        .dir
        .join(toolchain.tree().trim_start_matches('/'));
    let mut prepared = BTreeSet::new();
    for entry in fs::read_dir(tree.join("rust"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("exports_") && name.ends_with("_generated.h") {
            prepared.extend(parse_rust_exports(&fs::read_to_string(&path)?));
        }
    }
    let symvers = toolchain.root.dir.join(format!(
        "usr/src/linux-headers-{}/Module.symvers",
        toolchain.release
    ));
    let stock = parse_symvers_rust(
        &fs::read_to_string(&symvers).context(|| format!("reading {}", symvers.display()))?,
    );
    compare_exports(&stock, &prepared)
}

fn parse_rust_exports(header: &str) -> impl Iterator<Item = String> + '_ {
    header.lines().filter_map(|line| {
        let sym = line
            .strip_prefix("EXPORT_SYMBOL_RUST_GPL(")?
            .strip_suffix(");")?;
        sym.starts_with("_R").then(|| sym.to_string())
    })
}

fn parse_symvers_rust(symvers: &str) -> BTreeSet<String> {
    symvers
        .lines()
        .filter_map(|line| line.split('\t').nth(1))
        .filter(|sym| sym.starts_with("_R"))
        .map(str::to_string)
        .collect()
}

fn compare_exports(stock: &BTreeSet<String>, prepared: &BTreeSet<String>) -> Result {
    if stock.is_empty() {
        bail!("the stock Module.symvers exports no Rust symbols: is CONFIG_RUST on?");
    }
    if stock == prepared {
        return Ok(());
    }
    let only_stock: Vec<&String> = stock.difference(prepared).take(5).collect();
    let only_prepared: Vec<&String> = prepared.difference(stock).take(5).collect();
    bail!(
        "the prepared tree's Rust exports differ from the stock kernel's ({} vs {} symbols): \
         the build root's rustc or kernel source does not match the stock kernel.\n  only in \
         stock: {only_stock:?}\n  only in prepared tree: {only_prepared:?}",
        stock.len(),
        prepared.len()
    )
}

fn check_rustc(toolchain: &Toolchain) -> Result {
    let config = toolchain.root.dir.join(format!(
        "usr/src/linux-headers-{}/.config",
        toolchain.release
    ));
    let config = fs::read_to_string(&config).context(|| format!("reading {}", config.display()))?;
    let wanted = config_value(&config, "CONFIG_RUSTC_VERSION_TEXT")
        .context(|| "the stock kernel's .config has no CONFIG_RUSTC_VERSION_TEXT".to_string())?;
    let have = toolchain.root.sh_output("rustc --version")?;
    if have.trim() != wanted {
        bail!(
            "the build root's rustc is {:?} but the stock kernel was built with {wanted:?}: \
             modules would not match the kernel's Rust ABI",
            have.trim()
        );
    }
    Ok(())
}

/// A string option's value from a kernel `.config`.
fn config_value<'a>(config: &'a str, key: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        line.strip_prefix(key)?
            .strip_prefix('=')?
            .strip_prefix('"')?
            .strip_suffix('"')
    })
}

/// One `key=value` line of a stamp.
fn stamp_value(stamp: &Option<String>, key: &str) -> Option<String> {
    stamp.as_deref()?.lines().find_map(|line| {
        line.strip_prefix(key)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// Marks of finished provisioning steps. A step's stamp is written only after the step
/// succeeded; an unstamped step is redone from scratch, along with every later one.
struct Stamps {
    dir: PathBuf,
}

impl Stamps {
    fn get(&self, step: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(step)).ok()
    }

    fn set(&self, step: &str, contents: &str) -> Result {
        let tmp = self.dir.join(format!("{step}.tmp"));
        fs::write(&tmp, contents)?;
        fs::rename(&tmp, self.dir.join(step))?;
        Ok(())
    }

    fn clear_from(&self, steps: &[&str]) -> Result {
        for step in steps {
            match fs::remove_file(self.dir.join(step)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_comes_from_the_meta_package_dependency() {
        let depends = "linux-image-amd64\n  Depends: linux-base-amd64\n  Depends: linux-image-7.2.13+deb14-amd64\n";
        assert_eq!(
            parse_image_release(depends).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(
            parse_image_release("linux-image-amd64\n  Depends: linux-image-amd64-signed\n"),
            None
        );
    }

    #[test]
    fn rustc_version_text_is_read_from_config() {
        let config = "CONFIG_CC_VERSION_TEXT=\"gcc\"\nCONFIG_RUSTC_VERSION_TEXT=\"rustc 1.97.1 (8bab26f4f 2026-07-14)\"\n";
        assert_eq!(
            config_value(config, "CONFIG_RUSTC_VERSION_TEXT"),
            Some("rustc 1.97.1 (8bab26f4f 2026-07-14)")
        );
        assert_eq!(config_value(config, "CONFIG_RUST"), None);
    }

    #[test]
    fn config_fragment_lines_are_checked_against_the_result() {
        let fragment = "# comment\nCONFIG_RUST=y\nCONFIG_MODVERSIONS=n\nCONFIG_RDMA_RXE=m\n";
        let good = "CONFIG_RUST=y\n# CONFIG_MODVERSIONS is not set\nCONFIG_RDMA_RXE=m\n";
        assert!(unmet_config(fragment, good).is_empty());
        let bad = "# CONFIG_RUST is not set\nCONFIG_MODVERSIONS=y\nCONFIG_RDMA_RXE=y\n";
        assert_eq!(
            unmet_config(fragment, bad),
            ["CONFIG_RUST=y", "CONFIG_MODVERSIONS=n", "CONFIG_RDMA_RXE=m"]
        );
    }

    #[test]
    fn the_tree_may_differ_from_the_stock_config_in_rust_and_tool_versions_only() {
        let stock = "CONFIG_CC_VERSION_TEXT=\"gcc-14 (Debian 14.2.0-19) 14.2.0\"\nCONFIG_GCC_VERSION=140200\n\
                     CONFIG_RUSTC_VERSION=0\nCONFIG_MODVERSIONS=y\n# CONFIG_RUST_DEBUG_ASSERTIONS is not set\n";
        let tree = "CONFIG_CC_VERSION_TEXT=\"gcc-14 (Debian 14.4.0-3) 14.4.0\"\nCONFIG_GCC_VERSION=140400\n\
                    CONFIG_RUSTC_VERSION=109701\nCONFIG_RUST=y\nCONFIG_MODVERSIONS=y\n\
                    CONFIG_RUST_OVERFLOW_CHECKS=y\n";
        assert!(config_differences(stock, tree).is_empty());
        // Another option, or another major compiler, is refused, named.
        let moved = tree.replace("CONFIG_MODVERSIONS=y\n", "CONFIG_NR_CPUS=64\n");
        assert_eq!(
            config_differences(stock, &moved),
            [
                "CONFIG_MODVERSIONS (y in the image, unset in the tree)",
                "CONFIG_NR_CPUS (unset in the image, 64 in the tree)"
            ]
        );
        let gcc16 = tree.replace("140400", "160200");
        assert_eq!(
            config_differences(stock, &gcc16),
            ["CONFIG_GCC_VERSION (140200 in the image, 160200 in the tree)"]
        );
        assert_eq!(config_value_raw(tree, "CONFIG_RUST"), Some("y"));
    }

    #[test]
    fn exports_must_match_exactly() {
        let header =
            "EXPORT_SYMBOL_RUST_GPL(_RNvCs1_4core3foo);\nEXPORT_SYMBOL_RUST_GPL(rust_helper_x);\n";
        let prepared: BTreeSet<String> = parse_rust_exports(header).collect();
        let symvers = "0x00000000\t_RNvCs1_4core3foo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n0x0\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n";
        let stock = parse_symvers_rust(symvers);
        assert!(compare_exports(&stock, &prepared).is_ok());
        let other: BTreeSet<String> = ["_RNvCs2_4core3foo".to_string()].into();
        let err = compare_exports(&stock, &other).unwrap_err().0;
        assert!(err.contains("_RNvCs1_4core3foo"), "{err}");
        assert!(compare_exports(&BTreeSet::new(), &BTreeSet::new()).is_err());
    }
}
