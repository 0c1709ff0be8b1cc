//! `cargo xtask breaks [SCENARIO...]`: shows that each VM scenario catches a deliberate
//! break of tilde.
//!
//! `xtask/vm/breaks/SCENARIO.patch` is a small diff that breaks what the scenario is there
//! to prove (a header line `# breaks: WHAT` says what). For each, the command applies
//! the patch to the working tree, builds what the scenario needs, runs it, and reverts
//! the patch whatever happens; the break is caught if the run fails. A patch that no
//! longer applies fails the command: the break must be rewritten for the code as it is.
//! Not part of `cargo xtask test` (a build and a VM run per scenario); its latest
//! result is in docs/mutation-testing.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bail;
use crate::kmod;
use crate::toolchain::Toolchain;
use crate::util::{repo_root, Result};
use crate::vm;

/// A break applied to the working tree, reverted on drop.
struct Applied {
    patch: PathBuf,
}

fn git_apply(patch: &Path, extra: &[&str]) -> Result {
    let status = Command::new("git")
        .current_dir(repo_root())
        .arg("apply")
        .args(extra)
        .arg(patch)
        .status()?;
    if !status.success() {
        bail!("git apply {} {} failed", extra.join(" "), patch.display());
    }
    Ok(())
}

impl Applied {
    fn new(patch: &Path) -> Result<Self> {
        git_apply(patch, &["--check"])?;
        git_apply(patch, &[])?;
        Ok(Self {
            patch: patch.to_path_buf(),
        })
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        if let Err(e) = git_apply(&self.patch, &["-R"]) {
            eprintln!(
                "error: reverting {}: {e}; revert it by hand (git apply -R)",
                self.patch.display()
            );
        }
    }
}

fn breaks_dir() -> PathBuf {
    repo_root().join("xtask/vm/breaks")
}

/// What a patch says it breaks (its `# breaks:` line).
fn what(patch: &Path) -> Result<String> {
    let text = fs::read_to_string(patch)?;
    match text.lines().find_map(|l| l.strip_prefix("# breaks: ")) {
        Some(what) => Ok(what.trim().to_string()),
        None => bail!("{}: no `# breaks:` line", patch.display()),
    }
}

/// Runs the break of each of `names` (all that have one if empty) on `toolchain`'s
/// kernel.
pub fn run(toolchain: &Toolchain, names: &[String], timeout: Duration) -> Result {
    let scenarios: Vec<String> = if names.is_empty() {
        vm::scenarios()?
            .into_iter()
            .filter(|s| breaks_dir().join(format!("{s}.patch")).exists())
            .collect()
    } else {
        names.to_vec()
    };
    let mut results = Vec::new();
    let mut uncaught = Vec::new();
    for scenario in &scenarios {
        let patch = breaks_dir().join(format!("{scenario}.patch"));
        let what = what(&patch)?;
        println!("[breaks] {scenario}: {what}");
        let result = (|| -> Result<bool> {
            let _applied = Applied::new(&patch)?;
            let modules = if vm::needs_modules(scenario)? {
                // A break the build refuses is caught too, at compile time.
                match kmod::build(toolchain) {
                    Ok(m) => m,
                    Err(e) => {
                        println!("[breaks] {scenario}: the build failed: {e}");
                        return Ok(true);
                    }
                }
            } else {
                kmod::Modules::none()
            };
            let run = vm::run_with_boot_retry(toolchain, &modules, scenario, timeout)?;
            vm::print_run(&run);
            Ok(!run.verdict.passed())
        })();
        match result {
            Ok(true) => results.push(format!("| {scenario} | {what} | caught |")),
            Ok(false) => {
                results.push(format!("| {scenario} | {what} | **not caught** |"));
                uncaught.push(scenario.clone());
            }
            Err(e) => {
                results.push(format!("| {scenario} | {what} | error: {e} |"));
                uncaught.push(scenario.clone());
            }
        }
    }
    // The modules of the unbroken tree again, so that nothing built from a break stays.
    if scenarios
        .iter()
        .any(|s| vm::needs_modules(s).unwrap_or(true))
    {
        kmod::build(toolchain)?;
    }
    println!("\n| scenario | break | result |\n|---|---|---|");
    for line in &results {
        println!("{line}");
    }
    if !uncaught.is_empty() {
        bail!("breaks not caught: {}", uncaught.join(", "));
    }
    Ok(())
}
