//! `cargo xtask kmod`: builds every tilde kernel module for a target with kbuild.
//!
//! Two steps, both inside the target's build root, with the repository bind-mounted at
//! `/build/src` and `target/kmod/<target>` at `/build/out`:
//! 1. bindgen makes `rdma_bindings_generated.rs` from `rdma-core-rs/src/sys/tilde_rdma.h`
//!    with the kernel's own bindgen command line (saved by kbuild in the prepared tree's
//!    `rust/bindings/.bindings_generated.rs.cmd`) plus `bindgen_parameters`;
//! 2. `make M=<repo> MO=<out> modules` runs the repository's `Kbuild`, with clippy. A
//!    kernel whose kbuild has no `MO=` (6.12) builds in `<out>/src`, a tree of symlinks
//!    to the repository's files (directories real, so objects land there, not in the
//!    repository).
//!
//! The Rust code learns what the kernel offers from feature probes of the tree, never
//! from its version: each probe that holds becomes a `--cfg tilde_<feature>` for the
//! binding layer (`TILDE_RUSTCFGS`; see [`kernel_features`]). The crates.io crates kernel
//! code uses come from the kernel where it ships them, else are carried: compiled first,
//! each as its own make goal, and checked (see [`crate::kernel_crates`]). Where vmlinux
//! has no Rust at all, the kernel's Rust runtime is carried too ([`carried_runtime`];
//! docs/debian-stock-kernel.md).

use std::fs;
use std::path::{Path, PathBuf};

use crate::bail;
use crate::kernel_crates::{self, Source};
use crate::target::Bind;
use crate::toolchain::Toolchain;
use crate::util::{repo_root, sh_quote, step, write_if_changed, Context, Result};

/// tilde's modules, in load order: the VM runner insmods them before every scenario.
pub const STACK_MODULES: &[&str] = &["tilde_core"];
/// Modules that exist only to test the test machinery; scenarios load them by hand.
pub const SELFTEST_MODULES: &[&str] = &["tilde_warn_selftest"];
/// Test suites run against a device; scenarios load them with their parameters.
pub const SUITE_MODULES: &[&str] = &["tilde_verbs_conformance"];
/// Upper-layer protocols; their scenarios load them. Built where every crates.io crate
/// they use reaches the kernel (`tilde_iser`: zerocopy and its derive).
pub const ULP_MODULES: &[&str] = &["tilde_iser", "tilde_ipoib"];
/// Hardware drivers; their scenarios load them. Built where the ULPs are (`tilde_mlx4`'s
/// formats use zerocopy too).
pub const DRIVER_MODULES: &[&str] = &["tilde_mlx4"];
/// Software devices on `rdma_core`'s driver side, built everywhere; their scenarios load
/// them from the same place as the hardware drivers.
pub const SOFTWARE_DEVICE_MODULES: &[&str] = &["tilde_loopback"];

const SRC: &str = "/build/src";
const OUT: &str = "/build/out";
const BINDINGS: &str = "rdma_bindings_generated.rs";
const HEADER: &str = "rdma-core-rs/src/sys/tilde_rdma.h";
const PARAMETERS: &str = "rdma-core-rs/src/sys/bindgen_parameters";

/// The result of a build: where each module is, on the host.
pub struct Modules {
    pub stack: Vec<PathBuf>,
    pub selftest: Vec<PathBuf>,
    pub suites: Vec<PathBuf>,
    pub ulps: Vec<PathBuf>,
    pub drivers: Vec<PathBuf>,
}

impl Modules {
    /// No modules: for the scenarios that test the kernel alone.
    pub fn none() -> Self {
        Self {
            stack: Vec::new(),
            selftest: Vec::new(),
            suites: Vec::new(),
            ulps: Vec::new(),
            drivers: Vec::new(),
        }
    }
}

/// The host directory a target's module build writes to.
pub fn out_dir(toolchain: &Toolchain) -> PathBuf {
    repo_root().join("target/kmod").join(toolchain.target.id)
}

pub fn build(toolchain: &Toolchain) -> Result<Modules> {
    let group = format!("kmod {}", toolchain.target.id);
    let out = out_dir(toolchain);
    fs::create_dir_all(out.join("build"))?;
    let repo = repo_root();
    let binds = [
        Bind {
            host: &repo,
            guest: SRC,
        },
        Bind {
            host: &out,
            guest: OUT,
        },
    ];
    let log = toolchain.log("kmod");
    let _ = fs::remove_file(&log);

    step(&group, "bindgen include/rdma bindings", || {
        let saved = fs::read_to_string(
            toolchain
                .root
                .dir
                .join(toolchain.tree().trim_start_matches('/'))
                .join("rust/bindings/.bindings_generated.rs.cmd"),
        )
        .context(|| "reading the kernel's saved bindgen command".to_string())?;
        let parameters = fs::read_to_string(repo.join(PARAMETERS))?;
        let tmp = format!("{OUT}/{BINDINGS}.new");
        let command = bindgen_command(&saved, &format!("{SRC}/{HEADER}"), &tmp, &parameters)?;
        toolchain.root.sh(
            &binds,
            &format!("cd {} && {command}", toolchain.tree()),
            &log,
        )?;
        let new_path = out.join(format!("{BINDINGS}.new"));
        let generated = fs::read(&new_path)?;
        fs::remove_file(&new_path)?;
        write_if_changed(&out.join(BINDINGS), &generated)?;
        Ok(())
    })?;

    let tree = toolchain
        .root
        .dir
        .join(toolchain.tree().trim_start_matches('/'));
    let mut features = kernel_features(&tree)?;
    features.extend(binding_features(&fs::read_to_string(out.join(BINDINGS))?));
    let cfgs: Vec<String> = features
        .iter()
        .filter(|f| !C_FEATURES.contains(f))
        .map(|f| format!("--cfg tilde_{f}"))
        .collect();
    let defines: Vec<String> = features
        .iter()
        .filter(|f| C_FEATURES.contains(f))
        .map(|f| format!("-DTILDE_{}", f.to_uppercase()))
        .collect();

    // The crates.io crates: the kernel's, carried, or out of reach (then the crates that
    // use them are not built, or, for tilde_core's own, nothing is).
    let locked = kernel_crates::resolve(&repo)?;
    let plan = kernel_crates::plan(&locked, &toolchain.root.dir, &tree)?;
    let mut out_of_reach: Vec<(&str, String)> = Vec::new();
    for (crate_, source) in &plan {
        if let Source::Unavailable(why) = source {
            for user in &crate_.users {
                if user == "rdma-core-rs" {
                    bail!(
                        "{} cannot reach {}: {why}",
                        crate_.package,
                        toolchain.target.id
                    );
                }
                out_of_reach.push((user.as_str(), why.clone()));
            }
        }
    }
    for (user, why) in &out_of_reach {
        println!("[{group}] {user} is not built for this kernel: {why}");
    }
    let wire_crates = out_of_reach.is_empty();
    let crates_dir = out.join("crates");
    let mut carried = Vec::new();
    let mut crate_vars = Vec::new();
    let mut proc_macros = Vec::new();
    for (crate_, source) in &plan {
        let name = crate_.crate_name();
        match source {
            Source::Compiled => {
                let object = kernel_crates::place(crate_, &crates_dir)?;
                let flags = crate_.listed()?.flags;
                crate_vars.push(format!(
                    "TILDE_CRATE_VERSION_{name}={}",
                    sh_quote(&crate_.version)
                ));
                if !flags.is_empty() {
                    crate_vars.push(format!(
                        "TILDE_CRATE_FLAGS_{name}={}",
                        sh_quote(&flags.join(" "))
                    ));
                }
                carried.push((crate_, name, object));
            }
            Source::MacroLibrary(path) => {
                kernel_crates::link_macro_library(crate_, path, &crates_dir)?;
                proc_macros.push(name);
            }
            Source::Kernel | Source::Unavailable(_) => {}
        }
    }

    // The kernel's Rust runtime: vmlinux's, or carried in tilde_core.ko when the stock
    // kernel was built without Rust (the probe: vmlinux exports no Rust symbols).
    let runtime = carried_runtime(&tree)?;
    let has_mo = fs::read_to_string(tree.join("Makefile"))?.contains("KBUILD_EXTMOD_OUTPUT");
    if !runtime.is_empty() && has_mo {
        bail!("this kernel has MO= and needs its Rust runtime carried: not bridged yet");
    }
    // A Rust rule that names the crate after the object file needs the crate root
    // under the crate's name.
    let crate_named_by_object = fs::read_to_string(tree.join("scripts/Makefile.build"))?
        .contains("--crate-name $(basename $(notdir $@))");
    if crate_named_by_object && has_mo {
        bail!("this kernel names crates after objects and has MO=: not bridged yet");
    }
    let (core_root, iser_root, ipoib_root, mlx4_root, loopback_root) = if crate_named_by_object {
        (
            "rdma_core",
            "ulp_iser",
            "ulp_ipoib",
            "hw_mlx4",
            "sw_loopback",
        )
    } else {
        ("lib", "lib", "lib", "lib", "lib")
    };
    // Where kbuild reads the sources (`M=`) and writes the objects, and where the carried
    // crates are, relative to `M=`.
    let (prepare, sources, mo, crates_rel) = if has_mo {
        let rel = crates_dir
            .strip_prefix(&repo)
            .map(|p| p.display().to_string())
            .context(|| "the module build's output is outside the repository".to_string())?;
        (
            String::new(),
            SRC.to_string(),
            format!("MO={OUT}/build"),
            rel,
        )
    } else {
        let staging = format!("{OUT}/build");
        (
            format!(
                "mkdir -p {staging} && find {staging} -type l -delete && \
                 cp -rsf {SRC}/Kbuild {SRC}/rdma-core-rs {SRC}/ulp-iser {SRC}/ulp-ipoib {SRC}/hw-mlx4 {SRC}/sw-loopback {SRC}/xtask {staging}/ && \
                 {}{} \
                 ln -sf lib.rs {staging}/rdma-core-rs/src/{core_root}.rs && \
                 ln -sf lib.rs {staging}/ulp-iser/src/{iser_root}.rs && \
                 ln -sf lib.rs {staging}/ulp-ipoib/src/{ipoib_root}.rs && \
                 ln -sf lib.rs {staging}/hw-mlx4/src/{mlx4_root}.rs && \
                 ln -sf lib.rs {staging}/sw-loopback/src/{loopback_root}.rs && ",
                if carried.is_empty() {
                    String::new()
                } else {
                    format!("cp -rsf {OUT}/crates {staging}/ && ")
                },
                copy_runtime(&toolchain.tree(), &runtime, &staging),
            ),
            staging,
            String::new(),
            "crates".to_string(),
        )
    };
    let names: Vec<&str> = carried.iter().map(|(_, name, _)| name.as_str()).collect();
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let make = |goals: &str| {
        format!(
            "make -C {} M={sources} {mo} KERNELRELEASE={} \
             TILDE_RDMA_BINDINGS={OUT}/{BINDINGS} TILDE_RUSTCFGS={} TILDE_CDEFINES={} \
             TILDE_RDMA_CORE_ROOT={core_root} TILDE_ULP_ISER_ROOT={iser_root} \
             TILDE_ULP_IPOIB_ROOT={ipoib_root} \
             TILDE_HW_MLX4_ROOT={mlx4_root} TILDE_SW_LOOPBACK_ROOT={loopback_root} \
             TILDE_WIRE_CRATES={} \
             TILDE_CRATES_DIR={crates_rel} TILDE_CRATES={} TILDE_CRATE_PROC_MACROS={} {} \
             TILDE_CARRIED_RUNTIME={} {} CLIPPY=1 -j{jobs} {goals}",
            toolchain.tree(),
            sh_quote(&toolchain.release),
            sh_quote(&cfgs.join(" ")),
            sh_quote(&defines.join(" ")),
            u8::from(wire_crates),
            sh_quote(&names.join(" ")),
            sh_quote(&proc_macros.join(" ")),
            crate_vars.join(" "),
            sh_quote(
                &runtime
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            toolchain.make_vars,
        )
    };
    // Each carried crate on its own first, so that one that does not build with the
    // kernel's flags is named, then checked for what it imports.
    let mut prepared = false;
    for (crate_, _, object) in &carried {
        let what = format!("{} {} (crates.io, carried)", crate_.package, crate_.version);
        step(&group, &what, || {
            let setup = if prepared { "" } else { prepare.as_str() };
            toolchain
                .root
                .sh(
                    &binds,
                    &format!("{setup}{}", make(&format!("{crates_rel}/{object}"))),
                    &log,
                )
                .map_err(|e| {
                    crate::util::Error(format!(
                        "{} {} does not build with {}'s flags (no_std, the kernel's \
                         rustc command line): {e}",
                        crate_.package, crate_.version, toolchain.target.id
                    ))
                })?;
            let built = format!("{OUT}/build/{crates_rel}/{object}");
            let undefined = toolchain
                .root
                .sh_output_with(&binds, &format!("nm -u {built}"))?;
            let forbidden = kernel_crates::forbidden_imports(&undefined);
            if !forbidden.is_empty() {
                bail!(
                    "{} {} imports what the kernel does not have (std, alloc, an allocator \
                     or unwinding): {}",
                    crate_.package,
                    crate_.version,
                    forbidden.join(", ")
                );
            }
            Ok(())
        })?;
        prepared = true;
    }
    step(&group, "make modules (kbuild, clippy)", || {
        let setup = if prepared { "" } else { prepare.as_str() };
        toolchain
            .root
            .sh(&binds, &format!("{setup}{}", make("modules")), &log)
    })?;

    let find = |names: &[&str]| -> Result<Vec<PathBuf>> {
        names
            .iter()
            .map(|name| {
                let ko = out.join("build").join(format!("{name}.ko"));
                if !ko.is_file() {
                    bail!("kbuild succeeded but made no {}", ko.display());
                }
                Ok(ko)
            })
            .collect()
    };
    let modules = Modules {
        stack: find(STACK_MODULES)?,
        selftest: find(SELFTEST_MODULES)?,
        suites: find(SUITE_MODULES)?,
        ulps: if wire_crates {
            find(ULP_MODULES)?
        } else {
            Vec::new()
        },
        drivers: {
            let mut drivers = find(SOFTWARE_DEVICE_MODULES)?;
            if wire_crates {
                drivers.extend(find(DRIVER_MODULES)?);
            }
            drivers
        },
    };
    for ko in modules
        .stack
        .iter()
        .chain(&modules.selftest)
        .chain(&modules.suites)
        .chain(&modules.ulps)
        .chain(&modules.drivers)
    {
        check_vermagic(toolchain, ko)?;
        crate::stack_frames::check(ko)?;
    }
    Ok(modules)
}

/// What the kernel tree offers that tilde's Rust code bridges, each found by a probe of
/// the tree's own files (docs/kernels.md's table lists what each one bridges):
/// - `kernel_fmt`: `kernel::fmt`, which the print macros take (else `core::fmt`);
/// - `pin_init_crate`: the separate `pin_init` crate, whose `MaybeZeroable` the kernel's
///   bindgen flags derive for every binding;
/// - `str_const_char_ptr`: `kernel::str::as_char_ptr_in_const_context`;
/// - `kvec_remove`: `KVec::remove` (else a shim on `set_len`);
/// - `kvec_clear`: `KVec::clear` (else a shim on `set_len`);
/// - `ib_dma_map_bvec`: the static inline `ib_dma_map_bvec`, which only the C helpers can
///   call, so it is a C define (`-DTILDE_IB_DMA_MAP_BVEC`, [`C_FEATURES`]), not a cfg;
/// - `ib_dispatch_port_state_event`: the IB core reports the port state of a device bound
///   to a netdev itself (else the binding layer's `tilde_rdma_netdev_port_event` does it
///   for the driver), a C define;
/// - `system_percpu_wq`: the per-CPU system workqueue has that name (7.x warns when work is
///   queued on the old `system_wq`), a C define.
pub fn kernel_features(tree: &Path) -> Result<Vec<&'static str>> {
    let has = |path: &str| tree.join(path).exists();
    let mentions = |path: &str, text: &str| -> Result<bool> {
        Ok(fs::read_to_string(tree.join(path))
            .map(|s| s.contains(text))
            .unwrap_or(false))
    };
    let mut features = Vec::new();
    if has("rust/kernel/fmt.rs") {
        features.push("kernel_fmt");
    }
    if has("rust/pin-init") {
        features.push("pin_init_crate");
    }
    if mentions("rust/kernel/str.rs", "fn as_char_ptr_in_const_context")? {
        features.push("str_const_char_ptr");
    }
    if mentions("rust/kernel/alloc/kvec.rs", "pub fn remove(")? {
        features.push("kvec_remove");
    }
    if mentions("rust/kernel/alloc/kvec.rs", "pub fn clear(&mut self)")? {
        features.push("kvec_clear");
    }
    // `MODULE_DEVICE_TABLE` names the table `__mod_device_table__kmod_<module>__<type>__
    // <name>` (7.x) or `__mod_<type>__<name>_device_table` (6.12): modpost finds a Rust
    // driver's table (`rdma_core::pci_device_table!`) only under this kernel's name.
    if mentions("include/linux/module.h", "__mod_device_table__")? {
        features.push("device_table_kmod");
    }
    if mentions("include/rdma/ib_verbs.h", "u64 ib_dma_map_bvec(")? {
        features.push("ib_dma_map_bvec");
    }
    if mentions(
        "include/rdma/ib_verbs.h",
        "void ib_dispatch_port_state_event(",
    )? {
        features.push("ib_dispatch_port_state_event");
    }
    if mentions(
        "include/linux/workqueue.h",
        "extern struct workqueue_struct *system_percpu_wq;",
    )? {
        features.push("system_percpu_wq");
    }
    Ok(features)
}

/// One object of the kernel's Rust runtime that tilde carries: `rust/<path>` of the tree,
/// linked into `tilde_core.ko` as `rust-runtime/<name>.o`.
pub struct RuntimeObject {
    pub path: String,
    pub name: String,
}

/// The objects of the kernel's Rust runtime tilde must carry: none where vmlinux has the
/// runtime (its `Module.symvers` lists Rust symbols of vmlinux), else every object the
/// tree's `rust/Makefile` links into vmlinux (`obj-$(CONFIG_RUST)`), less `exports.o`
/// (tilde_core's own exports replace it) and `build_error.o` unless the config allows it
/// (`CONFIG_RUST_BUILD_ASSERT_ALLOW`; else no object may define it, so that a
/// `build_error!` reached at run time fails the link, as in vmlinux).
pub fn carried_runtime(tree: &Path) -> Result<Vec<RuntimeObject>> {
    let symvers = fs::read_to_string(tree.join("Module.symvers"))
        .context(|| format!("reading {}/Module.symvers", tree.display()))?;
    let in_vmlinux = symvers.lines().any(|line| {
        let mut fields = line.split('\t').skip(1);
        matches!((fields.next(), fields.next()), (Some(sym), Some("vmlinux")) if sym.starts_with("_R"))
    });
    if in_vmlinux {
        return Ok(Vec::new());
    }
    let config = fs::read_to_string(tree.join(".config"))?;
    if !config.lines().any(|l| l == "CONFIG_RUST=y") {
        bail!(
            "{}: vmlinux has no Rust runtime and the tree has no CONFIG_RUST=y to build one",
            tree.display()
        );
    }
    let allow_build_error = config
        .lines()
        .any(|l| l == "CONFIG_RUST_BUILD_ASSERT_ALLOW=y");
    let makefile = fs::read_to_string(tree.join("rust/Makefile"))?;
    Ok(runtime_objects(&makefile, allow_build_error))
}

fn runtime_objects(makefile: &str, allow_build_error: bool) -> Vec<RuntimeObject> {
    makefile
        .lines()
        .filter_map(|l| l.strip_prefix("obj-$(CONFIG_RUST) +="))
        .flat_map(str::split_whitespace)
        .filter(|o| *o != "exports.o" && (allow_build_error || *o != "build_error.o"))
        .filter_map(|o| {
            let stem = o.strip_suffix(".o")?;
            let name = stem.rsplit('/').next()?.to_string();
            Some(RuntimeObject {
                path: o.to_string(),
                name,
            })
        })
        .collect()
}

/// The shell words that copy the carried runtime's objects from the tree into the module
/// build (`-p`: their times too, so that an unchanged runtime relinks nothing). Under
/// MODVERSIONS modpost reads every object's `.cmd` file for the symbol versions genksyms
/// wrote there; these objects define no exports themselves (tilde_core's `exports.o`
/// does, and its `.cmd` has their versions), so each gets a `.cmd` saying so.
fn copy_runtime(tree: &str, runtime: &[RuntimeObject], staging: &str) -> String {
    if runtime.is_empty() {
        return String::new();
    }
    let mut copy = format!("mkdir -p {staging}/rust-runtime && ");
    for object in runtime {
        copy += &format!(
            "cp -p {tree}/rust/{path} {staging}/rust-runtime/{name}.o && \
             echo '# {path} of the kernel tree, carried: exports.o exports it' \
             > {staging}/rust-runtime/.{name}.o.cmd && ",
            path = object.path,
            name = object.name
        );
    }
    copy
}

/// Features the binding layer's C helpers (`helpers.c`) need, as `-DTILDE_<FEATURE>`
/// (static inline functions: bindgen does not see them, and only C can call them).
const C_FEATURES: &[&str] = &[
    "ib_dma_map_bvec",
    "ib_dispatch_port_state_event",
    "system_percpu_wq",
];

/// What the kernel's RDMA C API offers, found in the bindings bindgen made from its own
/// headers: a function's presence, as the generated declarations show it (each one a
/// `--cfg tilde_<feature>` like [`kernel_features`]'):
/// - `ib_resize_cq`: kernel consumers may resize a CQ (gone when the IB core made
///   resizing a user-only verb, `resize_user_cq`);
/// - `ib_device_get_by_name`: the IB core looks a device up by name for any module (else
///   the binding layer does it with a transient client);
/// - `ib_alloc_device_net`: `_ib_alloc_device` takes the device's network namespace;
/// - `resize_user_cq`: the ops slot that resizes a CQ is `resize_user_cq` (unsigned size),
///   not `resize_cq` (int);
/// - `reg_user_mr_dmah`: the `reg_user_mr` slot takes a DMA handle (`struct ib_dmah`).
pub fn binding_features(bindings: &str) -> Vec<&'static str> {
    let mut features: Vec<&'static str> = [
        ("ib_resize_cq", "pub fn ib_resize_cq("),
        ("ib_device_get_by_name", "pub fn ib_device_get_by_name("),
        (
            "ib_alloc_device_net",
            "pub fn _ib_alloc_device(size: usize, net:",
        ),
        ("resize_user_cq", "pub resize_user_cq:"),
    ]
    .into_iter()
    .filter(|(_, declaration)| bindings.contains(declaration))
    .map(|(feature, _)| feature)
    .collect();
    // The slot's signature: from its declaration to the next field.
    let reg_user_mr = bindings
        .split_once("pub reg_user_mr:")
        .and_then(|(_, rest)| rest.split("pub ").next());
    if reg_user_mr.is_some_and(|slot| slot.contains("dmah:")) {
        features.push("reg_user_mr_dmah");
    }
    features
}

/// A module whose vermagic does not name the target's release would not load.
fn check_vermagic(toolchain: &Toolchain, ko: &Path) -> Result {
    let bytes = fs::read(ko)?;
    let text = String::from_utf8_lossy(&bytes);
    let vermagic = text
        .split('\0')
        .find_map(|s| s.strip_prefix("vermagic="))
        .context(|| format!("{} has no vermagic", ko.display()))?;
    if vermagic.split(' ').next() != Some(toolchain.release.as_str()) {
        bail!(
            "{} has vermagic {vermagic:?}, not for {}",
            ko.display(),
            toolchain.release
        );
    }
    println!(
        "[kmod {}] {} ({} KiB, vermagic {vermagic})",
        toolchain.target.id,
        ko.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        bytes.len() / 1024
    );
    Ok(())
}

/// The kernel's own bindgen command line, pointed at our header and output.
///
/// `saved` is the prepared tree's `.bindings_generated.rs.cmd` (a make fragment);
/// `parameters` holds our extra arguments, one a line, `#` for comments.
fn bindgen_command(saved: &str, header: &str, out: &str, parameters: &str) -> Result<String> {
    let line = saved
        .lines()
        .find_map(|l| l.strip_prefix("savedcmd_rust/bindings/bindings_generated.rs := "))
        .context(|| "no savedcmd line in the kernel's bindgen .cmd file".to_string())?;
    // The .cmd file is a make fragment: `$(pound)` is make's way of writing `#`.
    let line = line.replace("$(pound)", "#");
    // kbuild chains post-processing of its own output (`; sed -Ei ...
    // rust/bindings/bindings_generated.rs`); keep only the bindgen invocation, which
    // must never touch the prepared tree.
    let line = match line.split_once(" ; ") {
        Some((bindgen, _)) => format!("{} ", bindgen.trim_end()),
        None => format!("{} ", line.trim_end()),
    };
    let extra: Vec<String> = parameters
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(sh_quote)
        .collect();
    let mut replaced = line.clone();
    for (from, to) in [
        (
            " rust/bindings/bindings_helper.h ",
            format!(" {} {} ", sh_quote(header), extra.join(" ")),
        ),
        (
            " -o rust/bindings/bindings_generated.rs ",
            format!(" -o {} ", sh_quote(out)),
        ),
        (
            " -Wp,-MMD,rust/bindings/.bindings_generated.rs.d ",
            " ".to_string(),
        ),
    ] {
        if !replaced.contains(from) {
            bail!("the kernel's bindgen command line has no {from:?}; its shape changed");
        }
        replaced = replaced.replacen(from, &to, 1);
    }
    Ok(replaced.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_features_are_the_declared_functions() {
        let old = "extern \"C\" {\n    pub fn ib_resize_cq(cq: *mut ib_cq, cqe: ffi::c_int) -> ffi::c_int;\n}\n\
                   extern \"C\" {\n    pub fn ib_device_get_by_name(\n        name: *const ffi::c_char,\n";
        assert_eq!(
            binding_features(old),
            ["ib_resize_cq", "ib_device_get_by_name"]
        );
        // A slot of the same name in `ib_device_ops` is not the consumer function.
        let new = "    pub resize_user_cq: ::core::option::Option<\n    pub fn ib_resize_cq_user(";
        assert_eq!(binding_features(new), ["resize_user_cq"]);
        let slots = "    pub reg_user_mr: ::core::option::Option<\n        unsafe extern \"C\" fn(\n            \
                     mr_access_flags: ffi::c_int,\n            dmah: *mut ib_dmah,\n        ) -> *mut ib_mr,\n    >,\n    \
                     pub reg_user_mr_dmabuf: ::core::option::Option<\n    pub fn _ib_alloc_device(size: usize, net: *mut net)";
        assert_eq!(
            binding_features(slots),
            ["ib_alloc_device_net", "reg_user_mr_dmah"]
        );
        // A DMA handle further on, in another slot, is not `reg_user_mr`'s.
        let old_slots = "    pub reg_user_mr: ::core::option::Option<\n        unsafe extern \"C\" fn(\n            \
                         udata: *mut ib_udata,\n        ) -> *mut ib_mr,\n    >,\n    \
                         pub reg_user_mr_dmabuf: ::core::option::Option<\n dmah: *mut ib_dmah,";
        assert!(binding_features(old_slots).is_empty());
    }

    #[test]
    fn bindgen_command_keeps_kernel_flags_and_swaps_header_and_output() {
        let saved = "savedcmd_rust/bindings/bindings_generated.rs := bindgen rust/bindings/bindings_helper.h --blocklist-type __kernel_s?size_t --with-attribute-custom-enum=lru_status='$(pound)[cfi_encoding=\"10lru_status\"]' -o rust/bindings/bindings_generated.rs -- -Wp,-MMD,rust/bindings/.bindings_generated.rs.d -nostdinc -I./include -DMODULE  ; sed -Ei 's/pub const RUST_CONST_HELPER_([a-zA-Z0-9_]*)/pub const \\1/g' rust/bindings/bindings_generated.rs\n";
        let cmd = bindgen_command(
            saved,
            "/build/src/h.h",
            "/build/out/b.rs",
            "# comment\n--allowlist-function=ib_.*\n\n",
        )
        .unwrap();
        assert_eq!(
            cmd,
            "bindgen /build/src/h.h '--allowlist-function=ib_.*' --blocklist-type __kernel_s?size_t \
             --with-attribute-custom-enum=lru_status='#[cfi_encoding=\"10lru_status\"]' -o \
             /build/out/b.rs -- -nostdinc -I./include -DMODULE"
        );
    }

    #[test]
    fn the_carried_runtime_is_what_the_tree_links_into_vmlinux() {
        let makefile = "obj-$(CONFIG_RUST) += core.o compiler_builtins.o ffi.o\n\
                        obj-$(CONFIG_RUST) += helpers/helpers.o\n\
                        always-$(CONFIG_RUST) += libmacros.so\n\
                        obj-$(CONFIG_RUST) += bindings.o kernel.o\n\
                        ifdef CONFIG_RUST_BUILD_ASSERT_ALLOW\nobj-$(CONFIG_RUST) += build_error.o\n\
                        else\nalways-$(CONFIG_RUST) += build_error.o\nendif\n\
                        obj-$(CONFIG_RUST) += exports.o\n";
        let names = |allow| -> Vec<String> {
            runtime_objects(makefile, allow)
                .into_iter()
                .map(|o| format!("{}={}", o.name, o.path))
                .collect()
        };
        assert_eq!(
            names(false),
            [
                "core=core.o",
                "compiler_builtins=compiler_builtins.o",
                "ffi=ffi.o",
                "helpers=helpers/helpers.o",
                "bindings=bindings.o",
                "kernel=kernel.o"
            ]
        );
        assert!(names(true).contains(&"build_error=build_error.o".to_string()));
    }

    #[test]
    fn bindgen_command_refuses_an_unknown_shape() {
        let saved = "savedcmd_rust/bindings/bindings_generated.rs := bindgen other.h -o x.rs\n";
        assert!(bindgen_command(saved, "h", "o", "").is_err());
        assert!(bindgen_command("", "h", "o", "").is_err());
    }
}
