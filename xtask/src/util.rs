//! Running commands with a progress line, a log file and an error that names the step.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An xtask failure: what was being done and why it failed.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T = ()> = std::result::Result<T, Error>;

/// Fails with a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::util::Error(format!($($arg)*))) };
}

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error(what()))
    }
}

/// Formats a duration the way the progress lines and the summaries show it.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One named step of a command, with a progress line and its duration.
///
/// `run` prints `[group] what ...`, runs the step and prints the duration, or the error.
pub fn step<T>(group: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    print!("[{group}] {what} ... ");
    let _ = io::stdout().flush();
    let start = Instant::now();
    match f() {
        Ok(v) => {
            println!("done ({})", secs(start.elapsed()));
            Ok(v)
        }
        Err(e) => {
            println!("FAILED ({})", secs(start.elapsed()));
            Err(Error(format!("{group}: {what}: {e}")))
        }
    }
}

/// Runs `cmd` with its output appended to `log`; on failure the error carries the last
/// lines of the log.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut header = file.try_clone()?;
    writeln!(header, "\n$ {cmd:?}")?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!(
            "{:?} failed ({status}); last lines of {}:\n{}",
            cmd.get_program(),
            log.display(),
            tail(log, 25)
        );
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output; a failure carries its standard error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `contents` to `path` unless it already holds exactly that, so that make does
/// not rebuild what did not change. Returns whether the file was written.
pub fn write_if_changed(path: &Path, contents: &[u8]) -> Result<bool> {
    if fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// The repository root (the workspace this xtask belongs to).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// Whether a program is on `PATH`.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Quotes a string for `sh`.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:+,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(
            sh_quote("KERNELRELEASE=7.2.13+deb14-amd64"),
            "KERNELRELEASE=7.2.13+deb14-amd64"
        );
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
