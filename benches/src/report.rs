//! Reading criterion's estimates back, and writing the benches' JSON summaries.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Cargo's target directory, as criterion finds it.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        }
    }
}

fn criterion_dir() -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("criterion"),
    }
}

/// Mean and 95% interval in ns per iteration of criterion's bench `group/name`, if
/// criterion wrote them since `since` (benches filtered out, or run with `--test`, leave
/// older files or none).
pub fn estimate(group: &str, name: &str, since: SystemTime) -> Option<(f64, f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(name)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let estimates: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    let mean = &estimates["mean"];
    let interval = &mean["confidence_interval"];
    Some((
        mean["point_estimate"].as_f64()?,
        interval["lower_bound"].as_f64()?,
        interval["upper_bound"].as_f64()?,
    ))
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The machine the numbers come from: CPU, cores, rustc, date.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .filter(|line| line.starts_with("model name"))
                .find_map(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    json!({
        "cpu": cpu,
        "logical_cores": std::thread::available_parallelism().ok().map(|n| n.get()),
        "rustc": command(&rustc, &["--version"]),
        "date": command("date", &["-u", "+%FT%TZ"]),
    })
}

/// `x` to three decimals, for the JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Writes `summary` to `<target>/tilde-bench/<file>` and says where.
pub fn write(file: &str, summary: &Value) {
    let dir = target_dir().join("tilde-bench");
    let path = dir.join(file);
    let text = match serde_json::to_string_pretty(summary) {
        Ok(text) => text + "\n",
        Err(error) => {
            eprintln!("tilde-bench: cannot write {}: {error}", path.display());
            return;
        }
    };
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("tilde-bench: wrote {}", path.display()),
        Err(error) => eprintln!("tilde-bench: cannot write {}: {error}", path.display()),
    }
}
