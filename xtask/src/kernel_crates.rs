//! The crates.io crates tilde's kernel code may use, and how each reaches a kernel.
//!
//! Kernel code can only use crates the kernel build can link. A crate the target kernel
//! ships (7.2's `zerocopy`) is the kernel's: the modules compile against its metadata and
//! link against vmlinux's exports. Any other listed crate is *carried*: `cargo xtask kmod`
//! copies the release `Cargo.lock` pins out of the cargo registry (found through
//! `cargo metadata`, nothing copied into the repository) and kbuild compiles it once with
//! the kernel's own Rust rule and flags into `tilde_core.ko`, which exports it to tilde's
//! other modules as vmlinux exports the kernel's crates. A proc-macro crate runs on the
//! host: it is carried as the macro library a prepared kernel tree in the build root made
//! with the same rustc. See docs/kernel-crates.md.
//!
//! What is refused, each with a message naming the crate: a crates.io dependency of a
//! kernel crate that is not in [`KERNEL_CRATES`]; two releases of one crate; features the
//! kernel build would not set; a shipped crate whose release differs from the lock's; an
//! edition other than the kernel's; a library that does not declare `no_std`; a build
//! script nobody has read; a carried crate with dependencies of its own; and, once
//! compiled, an object that imports `std`, `alloc`, an allocator or unwinding
//! ([`forbidden_imports`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::util::{output, Context, Result};

/// The workspace crates kbuild compiles for the kernel (see `Kbuild`).
pub const KERNEL_WORKSPACE_CRATES: &[&str] =
    &["rdma-core-rs", "hw-mlx4", "ulp-iser", "sw-loopback"];

/// A crates.io crate kernel code may use.
pub struct KernelCrate {
    /// The package name on crates.io.
    pub package: &'static str,
    /// A proc-macro crate: a host library the compiler loads, never kernel code.
    pub proc_macro: bool,
    /// rustc flags beyond the kernel's, as the kernel's `rust/Makefile` gives the crate
    /// where it ships it (its `<crate>-flags` without `--cap-lints`, which is always set).
    pub flags: &'static [&'static str],
    /// Where a kernel tree that ships the crate has it, relative to the tree.
    pub shipped_as: Option<&'static str>,
    /// The `rust/Makefile` variable whose `CARGO_PKG_VERSION=` says which release a tree
    /// ships.
    pub release_in: Option<&'static str>,
    /// Why the crate's build script need not run, for a crate that has one (it is never
    /// run: kbuild has no such step).
    pub build_script: Option<&'static str>,
}

/// The list. Adding a crate here is a review: read its source for `unsafe`, panics and
/// what its build script would have set.
pub const KERNEL_CRATES: &[KernelCrate] = &[
    KernelCrate {
        package: "bitflags",
        proc_macro: false,
        flags: &[],
        shipped_as: None,
        release_in: None,
        build_script: None,
    },
    KernelCrate {
        package: "zerocopy",
        proc_macro: false,
        flags: &["--cfg", "no_fp_fmt_parse"],
        shipped_as: Some("rust/libzerocopy.rmeta"),
        release_in: Some("zerocopy-envs"),
        build_script: Some(
            "it only probes the toolchain for newer-Rust code paths; the kernel compiles \
             zerocopy without it, on its fallbacks",
        ),
    },
    KernelCrate {
        package: "zerocopy-derive",
        proc_macro: true,
        flags: &[],
        shipped_as: Some("rust/libzerocopy_derive.so"),
        // The kernel vendors the derive at zerocopy's release.
        release_in: Some("zerocopy-envs"),
        build_script: None,
    },
];

/// A listed crate as the workspace's lock pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub package: String,
    pub version: String,
    /// The package's directory in the cargo registry.
    pub dir: PathBuf,
    /// Its library root, relative to `dir`.
    pub lib_root: PathBuf,
    pub edition: String,
    pub has_build_script: bool,
    /// The kernel workspace crates that depend on it.
    pub users: Vec<String>,
}

impl Locked {
    /// The name code uses for it (`extern crate`, `--extern`).
    pub fn crate_name(&self) -> String {
        self.package.replace('-', "_")
    }

    /// Its entry in [`KERNEL_CRATES`].
    pub fn listed(&self) -> Result<&'static KernelCrate> {
        listed(&self.package).context(|| format!("{} is not a kernel crate", self.package))
    }
}

fn listed(package: &str) -> Option<&'static KernelCrate> {
    KERNEL_CRATES.iter().find(|c| c.package == package)
}

/// The listed crates the kernel workspace crates use, from `cargo metadata --locked`.
pub fn resolve(repo: &Path) -> Result<Vec<Locked>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let json = output(Command::new(cargo).current_dir(repo).args([
        "metadata",
        "--locked",
        "--format-version",
        "1",
    ]))
    .context(|| "cargo metadata (the kernel crates are the lock's releases)".to_string())?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context(|| "cargo metadata's output".to_string())?;
    resolve_from(&metadata)
}

fn resolve_from(metadata: &serde_json::Value) -> Result<Vec<Locked>> {
    let str_of = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or("").to_string();
    let packages = metadata["packages"]
        .as_array()
        .context(|| "cargo metadata has no packages".to_string())?;
    let by_id = |id: &str| packages.iter().find(|p| p["id"].as_str() == Some(id));
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context(|| "cargo metadata has no resolve graph".to_string())?;
    let node_of = |id: &str| nodes.iter().find(|n| n["id"].as_str() == Some(id));
    let is_normal = |dep: &serde_json::Value| {
        dep["dep_kinds"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
    };
    let from_registry = |p: &serde_json::Value| str_of(p, "source").starts_with("registry+");

    let mut locked: Vec<Locked> = Vec::new();
    for user in KERNEL_WORKSPACE_CRATES {
        let package = packages
            .iter()
            .find(|p| p["name"].as_str() == Some(user) && p["source"].is_null())
            .context(|| format!("the workspace has no {user}"))?;
        let node = node_of(&str_of(package, "id"))
            .context(|| format!("{user} is not in the resolve graph"))?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            if !is_normal(dep) {
                continue;
            }
            let dep_package = by_id(&str_of(dep, "pkg"))
                .context(|| format!("{user}'s dependency {} is unknown", dep["pkg"]))?;
            if !from_registry(dep_package) {
                continue;
            }
            let name = str_of(dep_package, "name");
            let version = str_of(dep_package, "version");
            let Some(listed) = listed(&name) else {
                bail!(
                    "{user} depends on crates.io's {name} {version}, which is not a kernel crate: \
                     kernel code can use only the crates listed in xtask/src/kernel_crates.rs \
                     (docs/kernel-crates.md); list it after reading it, or make it a dev-dependency"
                );
            };
            // The kernel build sets no features: the host build must ask for none either,
            // or the two would compile different code from one source.
            let declared = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["name"].as_str() == Some(&name) && d["kind"].is_null());
            if let Some(declared) = declared {
                let features = declared["features"].as_array().map_or(0, Vec::len);
                let has_defaults = dep_package["features"]["default"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty());
                let defaults = declared["uses_default_features"].as_bool() != Some(false);
                if !listed.proc_macro && (features > 0 || (defaults && has_defaults)) {
                    bail!(
                        "{user} asks for features of {name} (features {}, default features {}); \
                         the kernel build compiles it with none: declare it with \
                         default-features = false and no features",
                        declared["features"],
                        defaults && has_defaults
                    );
                }
            }
            if let Some(other) = locked
                .iter_mut()
                .find(|l| l.package == name && l.version != version)
            {
                bail!(
                    "the kernel crates use two releases of {name} ({} for {}, {version} for \
                     {user}); a kernel links one",
                    other.version,
                    other.users.join(", ")
                );
            }
            if let Some(known) = locked.iter_mut().find(|l| l.package == name) {
                known.users.push(user.to_string());
                continue;
            }
            let manifest = PathBuf::from(str_of(dep_package, "manifest_path"));
            let dir = manifest
                .parent()
                .context(|| format!("{name}'s manifest path"))?
                .to_path_buf();
            let targets = dep_package["targets"].as_array().into_iter().flatten();
            let mut lib_root = None;
            let mut has_build_script = false;
            for target in targets {
                let kinds: Vec<&str> = target["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str())
                    .collect();
                if kinds.contains(&"custom-build") {
                    has_build_script = true;
                }
                if kinds.iter().any(|k| *k == "lib" || *k == "proc-macro") {
                    let src = PathBuf::from(str_of(target, "src_path"));
                    lib_root = Some(src.strip_prefix(&dir).unwrap_or(&src).to_path_buf());
                }
            }
            // Its dependencies as the kernel build sees them: no features set, so the
            // optional ones are off (the host's resolve graph unifies features).
            let own_deps = dep_package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null() && d["optional"].as_bool() != Some(true))
                // `cfg(any())` never holds: crates use it to pin a companion's release.
                .filter(|d| d["target"].as_str() != Some("cfg(any())"))
                .count();
            if !listed.proc_macro && own_deps > 0 {
                bail!(
                    "{name} {version} has dependencies of its own: carrying a crate's \
                     dependencies into the kernel is not supported"
                );
            }
            locked.push(Locked {
                package: name.clone(),
                version,
                dir,
                lib_root: lib_root.context(|| format!("{name} has no library target"))?,
                edition: str_of(dep_package, "edition"),
                has_build_script,
                users: vec![user.to_string()],
            });
        }
    }
    Ok(locked)
}

/// How a listed crate reaches one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The kernel ships it, at the lock's release.
    Kernel,
    /// kbuild compiles it from the registry copy placed in the crates directory.
    Compiled,
    /// A prepared tree's macro library, at this path inside the build root.
    MacroLibrary(String),
    /// It cannot reach this kernel, for this reason.
    Unavailable(String),
}

/// Each locked crate's way into the kernel whose prepared tree is `tree` (inside the build
/// root `root`, where other prepared trees may offer macro libraries).
pub fn plan(locked: &[Locked], root: &Path, tree: &Path) -> Result<Vec<(Locked, Source)>> {
    let edition = tree_edition(&fs::read_to_string(tree.join("Makefile"))?)
        .context(|| format!("{}'s Makefile names no Rust edition", tree.display()))?;
    locked
        .iter()
        .map(|l| {
            let listed = l.listed()?;
            if let Some(shipped) = listed.shipped_as.filter(|s| tree.join(s).exists()) {
                let release = shipped_release(tree, listed)?;
                if release.as_deref() != Some(l.version.as_str()) {
                    bail!(
                        "{} ships {} {} ({shipped}) but Cargo.lock pins {}: tilde compiles \
                         against what the kernel exports, so pin ={}",
                        tree.display(),
                        l.package,
                        release.as_deref().unwrap_or("(release unknown)"),
                        l.version,
                        release.as_deref().unwrap_or("its release")
                    );
                }
                return Ok((l.clone(), Source::Kernel));
            }
            if listed.proc_macro {
                return Ok((l.clone(), macro_library(root, listed, &l.version)?));
            }
            if l.edition != edition {
                bail!(
                    "{} {} is edition {}, the kernel compiles every crate as {edition}",
                    l.package,
                    l.version,
                    l.edition
                );
            }
            let root_text = fs::read_to_string(l.dir.join(&l.lib_root))
                .context(|| format!("reading {}'s library root", l.package))?;
            if !declares_no_std(&root_text) {
                bail!(
                    "{} {} does not declare #![no_std]: the kernel has no std",
                    l.package,
                    l.version
                );
            }
            if l.has_build_script && listed.build_script.is_none() {
                bail!(
                    "{} {} has a build script, which kbuild never runs: read it, and say in \
                     xtask/src/kernel_crates.rs why the crate is right without it",
                    l.package,
                    l.version
                );
            }
            if l.lib_root != Path::new("src/lib.rs") {
                bail!(
                    "{} {}'s library root is {}, not src/lib.rs",
                    l.package,
                    l.version,
                    l.lib_root.display()
                );
            }
            Ok((l.clone(), Source::Compiled))
        })
        .collect()
}

/// The edition of `rust_common_flags` in a kernel tree's top Makefile.
fn tree_edition(makefile: &str) -> Option<String> {
    let line = makefile
        .lines()
        .find(|l| l.contains("rust_common_flags :=") && l.contains("--edition="))?;
    let edition = line.split("--edition=").nth(1)?;
    Some(edition.split_whitespace().next()?.to_string())
}

/// The release a tree ships, from its `rust/Makefile`'s `<var> := CARGO_PKG_VERSION=...`.
fn shipped_release(tree: &Path, listed: &KernelCrate) -> Result<Option<String>> {
    let Some(var) = listed.release_in else {
        return Ok(None);
    };
    let makefile = fs::read_to_string(tree.join("rust/Makefile"))?;
    Ok(release_from_makefile(&makefile, var))
}

fn release_from_makefile(makefile: &str, var: &str) -> Option<String> {
    let start = makefile.find(&format!("{var} :="))?;
    // The assignment continues over `\`-ended lines.
    let mut text = String::new();
    for line in makefile[start..].lines() {
        text.push_str(line);
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("CARGO_PKG_VERSION="))
        .map(str::to_string)
}

/// A proc macro from a prepared tree in the build root that ships it at `version`.
fn macro_library(root: &Path, listed: &KernelCrate, version: &str) -> Result<Source> {
    let Some(shipped) = listed.shipped_as else {
        return Ok(Source::Unavailable(format!(
            "{} is a proc macro no kernel tree ships",
            listed.package
        )));
    };
    let mut trees: Vec<PathBuf> = fs::read_dir(root.join("usr/src"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    trees.sort();
    for tree in trees {
        if tree.join(shipped).is_file()
            && shipped_release(&tree, listed)?.as_deref() == Some(version)
        {
            let inside = tree
                .join(shipped)
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .context(|| "a macro library outside the build root".to_string())?;
            return Ok(Source::MacroLibrary(inside));
        }
    }
    Ok(Source::Unavailable(format!(
        "no prepared tree in the build root has {} {version}'s macro library",
        listed.package
    )))
}

/// Whether a library root declares `#![no_std]` (unconditionally or under `cfg_attr`, as
/// crates with a `std` feature do).
pub fn declares_no_std(root: &str) -> bool {
    root.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("#![") && (l.contains("no_std)") || l.contains("no_std]"))
    })
}

/// Copies a carried crate's package out of the registry to `dir/<crate name>` (once per
/// release: a `.release` stamp says which), with its root also as `src/<crate name>.rs`,
/// the name kbuild's Rust rule gives the crate. Returns the object's path relative to
/// `dir`.
pub fn place(locked: &Locked, dir: &Path) -> Result<String> {
    let name = locked.crate_name();
    let dest = dir.join(&name);
    let stamp = dest.join(".release");
    let release = format!("{} {}\n", locked.package, locked.version);
    if fs::read_to_string(&stamp).ok().as_deref() != Some(release.as_str()) {
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        copy_tree(&locked.dir, &dest)
            .context(|| format!("copying {} out of the registry", locked.package))?;
        fs::copy(
            dest.join(&locked.lib_root),
            dest.join(format!("src/{name}.rs")),
        )?;
        fs::write(&stamp, release)?;
    }
    Ok(format!("{name}/src/{name}.o"))
}

/// Links a proc macro's library (`path`, inside the build root) as
/// `dir/<crate name>/lib<crate name>.so`, a folder of its own: rustc finds a crate's
/// dependencies by search path, and the tree that built the library has other crates
/// beside it (its `core`, its `kernel`) that must not be found.
pub fn link_macro_library(locked: &Locked, path: &str, dir: &Path) -> Result {
    let name = locked.crate_name();
    let folder = dir.join(&name);
    fs::create_dir_all(&folder)?;
    let link = folder.join(format!("lib{name}.so"));
    if fs::read_link(&link).ok().as_deref() != Some(Path::new(path)) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(path, &link)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            if entry.file_name() != "target" && entry.file_name() != ".git" {
                copy_tree(&entry.path(), &target)?;
            }
        } else if kind.is_file() {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// What a compiled crate's object must not import (`nm -u` lists, one symbol a line):
/// the kernel has no `std`, no `alloc` crate for it to use, no global allocator and no
/// unwinding.
pub fn forbidden_imports(undefined: &str) -> Vec<String> {
    undefined
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|sym| {
            names_crate(sym, "std")
                || names_crate(sym, "alloc")
                || sym.starts_with("__rust_alloc")
                || sym.starts_with("__rust_dealloc")
                || sym.starts_with("__rust_realloc")
                || sym.starts_with("_Unwind_")
                || *sym == "rust_eh_personality"
        })
        .map(str::to_string)
        .collect()
}

/// Whether a mangled Rust symbol has a path in `krate`: v0 (`_R…C<disambiguator>?<len><name>`)
/// or legacy (`_ZN<len><name>`).
fn names_crate(sym: &str, krate: &str) -> bool {
    let ident = format!("{}{krate}", krate.len());
    if sym.starts_with(&format!("_ZN{ident}")) {
        return true;
    }
    if !sym.starts_with("_R") {
        return false;
    }
    sym.match_indices(&ident).any(|(at, _)| {
        let before = &sym[..at];
        // `C<len><name>` or `Cs<base62>_<len><name>`: a crate root.
        before.ends_with('C')
            || before.rsplit_once("Cs").is_some_and(|(_, d)| {
                d.ends_with('_') && d[..d.len() - 1].bytes().all(|b| b.is_ascii_alphanumeric())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(bitflags_features: &str, extra_dep: &str) -> serde_json::Value {
        let text = format!(
            r#"{{
            "packages": [
                {{"name": "rdma-core-rs", "id": "ws-core", "source": null, "version": "0.1.0",
                  "dependencies": [{{"name": "bitflags", "kind": null, "features": {bitflags_features},
                                    "uses_default_features": false}}]}},
                {{"name": "hw-mlx4", "id": "ws-mlx4", "source": null, "dependencies": []}},
                {{"name": "ulp-iser", "id": "ws-iser", "source": null, "dependencies": []}},
                {{"name": "sw-loopback", "id": "ws-loopback", "source": null, "dependencies": []}},
                {{"name": "bitflags", "id": "bf", "version": "2.13.2", "edition": "2021",
                  "source": "registry+https://github.com/rust-lang/crates.io-index",
                  "manifest_path": "/reg/bitflags-2.13.2/Cargo.toml", "features": {{"std": []}},
                  "targets": [{{"kind": ["lib"], "src_path": "/reg/bitflags-2.13.2/src/lib.rs"}}]}},
                {{"name": "libc", "id": "libc", "version": "0.2.0", "edition": "2021",
                  "source": "registry+https://github.com/rust-lang/crates.io-index",
                  "manifest_path": "/reg/libc/Cargo.toml", "features": {{}},
                  "targets": [{{"kind": ["lib"], "src_path": "/reg/libc/src/lib.rs"}}]}}
            ],
            "resolve": {{"nodes": [
                {{"id": "ws-core", "deps": [{{"pkg": "bf", "dep_kinds": [{{"kind": null}}]}}
                    {extra_dep}]}},
                {{"id": "ws-mlx4", "deps": [{{"pkg": "bf", "dep_kinds": [{{"kind": null}}]}},
                    {{"pkg": "libc", "dep_kinds": [{{"kind": "dev"}}]}}]}},
                {{"id": "ws-iser", "deps": []}},
                {{"id": "ws-loopback", "deps": []}},
                {{"id": "bf", "deps": []}},
                {{"id": "libc", "deps": []}}
            ]}}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn the_lock_gives_each_listed_crate_once_with_its_users() {
        let locked = resolve_from(&metadata("[]", "")).unwrap();
        assert_eq!(locked.len(), 1);
        let bitflags = &locked[0];
        assert_eq!(
            (bitflags.package.as_str(), bitflags.version.as_str()),
            ("bitflags", "2.13.2")
        );
        assert_eq!(bitflags.dir, Path::new("/reg/bitflags-2.13.2"));
        assert_eq!(bitflags.lib_root, Path::new("src/lib.rs"));
        // A dev-dependency (libc of hw-mlx4) is not kernel code.
        assert_eq!(bitflags.users, ["rdma-core-rs", "hw-mlx4"]);
    }

    #[test]
    fn unlisted_crates_and_requested_features_are_refused_by_name() {
        let unlisted = r#", {"pkg": "libc", "dep_kinds": [{"kind": null}]}"#;
        let err = resolve_from(&metadata("[]", unlisted)).unwrap_err().0;
        assert!(
            err.contains("rdma-core-rs depends on crates.io's libc"),
            "{err}"
        );
        let err = resolve_from(&metadata(r#"["std"]"#, "")).unwrap_err().0;
        assert!(err.contains("asks for features of bitflags"), "{err}");
    }

    #[test]
    fn shipped_releases_and_editions_are_read_from_the_tree() {
        let makefile = "zerocopy-flags := \\\n    --cap-lints=allow\n\nzerocopy-envs := \\\n    CARGO_PKG_VERSION=0.8.54\n\nsyn-envs := \\\n    CARGO_PKG_VERSION=2.0.1\n";
        assert_eq!(
            release_from_makefile(makefile, "zerocopy-envs").as_deref(),
            Some("0.8.54")
        );
        assert_eq!(release_from_makefile(makefile, "quote-envs"), None);
        let top = "export rust_common_flags := --edition=2021 \\\n\t-Zbinary_dep_depinfo=y \\\n";
        assert_eq!(tree_edition(top).as_deref(), Some("2021"));
    }

    #[test]
    fn no_std_is_declared_plainly_or_under_cfg_attr() {
        assert!(declares_no_std("//! doc\n#![no_std]\n"));
        assert!(declares_no_std(
            "#![cfg_attr(not(any(feature = \"std\", test)), no_std)]\n"
        ));
        assert!(!declares_no_std("// no_std someday\nextern crate std;\n"));
    }

    #[test]
    fn imports_of_std_alloc_and_unwinding_are_forbidden() {
        let nm = "                 U _RNvNtCs1a2B3_4core9panicking5panic\n\
                  U _RNvMNtCsk1_5alloc3vecINtB2_3VecpE4push\n\
                  U _RNvNtCs9_3std2io5stdin\n\
                  U __rust_alloc\n\
                  U _Unwind_Resume\n\
                  U _RNvCs1_10allocators4used\n\
                  U memcpy\n";
        assert_eq!(
            forbidden_imports(nm),
            [
                "_RNvMNtCsk1_5alloc3vecINtB2_3VecpE4push",
                "_RNvNtCs9_3std2io5stdin",
                "__rust_alloc",
                "_Unwind_Resume"
            ]
        );
    }
}
