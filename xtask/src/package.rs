//! `cargo xtask package`: tilde's modules for one kernel as a Debian binary package.
//!
//! The package is named for the kernel it serves, `tilde-modules-<release>` (as Debian
//! names its own per-kernel packages), at tilde's version, and installs the stack's
//! modules (not the runner's self-test) into `/lib/modules/<release>/updates/tilde/`,
//! where depmod ranks them above the kernel's own. Its maintainer scripts run depmod for
//! that release after installing and after removing, so that `modprobe tilde_iser`
//! brings `tilde_core` and, once removed, no module of tilde's is known to modprobe.
//! For a stock kernel it depends on the kernel's image package.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kmod::Modules;
use crate::target::Kernel;
use crate::toolchain::Toolchain;
use crate::util::{output, repo_root, Context, Result};

/// The package's name for a kernel release.
pub fn name(release: &str) -> String {
    format!("tilde-modules-{release}")
}

/// Builds the package from `modules` into `target/package/<target>/`; returns its path.
pub fn build(toolchain: &Toolchain, modules: &Modules) -> Result<PathBuf> {
    let release = &toolchain.release;
    let version = env!("CARGO_PKG_VERSION");
    let name = name(release);
    let out = repo_root().join("target/package").join(toolchain.target.id);
    let staging = out.join("root");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let dir = staging.join(format!("lib/modules/{release}/updates/tilde"));
    fs::create_dir_all(&dir)?;
    for ko in modules
        .stack
        .iter()
        .chain(&modules.suites)
        .chain(&modules.ulps)
        .chain(&modules.drivers)
    {
        let file = ko.file_name().context(|| "module path".to_string())?;
        fs::copy(ko, dir.join(file))?;
    }
    let debian = staging.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let depends = match toolchain.target.kernel {
        Kernel::Stock | Kernel::StockWithoutRust { .. } => {
            format!("Depends: linux-image-{release}\n")
        }
        // A kernel tilde built itself is not a package to depend on.
        Kernel::FromSource { .. } => String::new(),
    };
    fs::write(
        debian.join("control"),
        control(&name, version, release, &depends),
    )?;
    for script in ["postinst", "postrm"] {
        let path = debian.join(script);
        fs::write(&path, depmod_script(release))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("{name}_{version}_amd64.deb"));
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&staging)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn control(name: &str, version: &str, release: &str, depends: &str) -> String {
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\nSection: kernel\n\
         Priority: optional\nMaintainer: tilde developers <tilde@localhost>\n{depends}\
         Description: tilde RDMA stack modules for Linux {release}\n \
         tilde's IB core (tilde_core), iSER initiator transport (tilde_iser), software RoCE\n \
         device (tilde_loopback), ConnectX-3 fast path (tilde_mlx4) and verbs conformance\n \
         suite (tilde_verbs_conformance), written in Rust, built for {release}.\n"
    )
}

/// depmod for the release, when that kernel's modules are there (a removed kernel needs
/// no index).
fn depmod_script(release: &str) -> String {
    format!(
        "#!/bin/sh\nset -e\nif [ -d /lib/modules/{release} ]; then\n\
         \tdepmod -a {release}\nfi\n"
    )
}

/// Where a built package is, for a scenario's share.
pub fn copy_into(deb: &Path, dir: &Path) -> Result {
    fs::create_dir_all(dir)?;
    let file = deb.file_name().context(|| "package path".to_string())?;
    fs::copy(deb, dir.join(file))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_file_names_the_kernel_and_depends_on_it() {
        let control = control(
            "tilde-modules-6.12.117+deb13-amd64",
            "0.1.0",
            "6.12.117+deb13-amd64",
            "Depends: linux-image-6.12.117+deb13-amd64\n",
        );
        assert!(
            control.starts_with("Package: tilde-modules-6.12.117+deb13-amd64\nVersion: 0.1.0\n")
        );
        assert!(control.contains("\nDepends: linux-image-6.12.117+deb13-amd64\nDescription: "));
        // Every continuation line of the description starts with a space.
        let description = control.split_once("Description: ").unwrap().1;
        assert!(description.lines().skip(1).all(|l| l.starts_with(' ')));
        assert!(depmod_script("6.12.117+deb13-amd64").contains("depmod -a 6.12.117+deb13-amd64"));
    }
}
