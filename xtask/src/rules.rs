//! Source rules for the fast path (`hw-mlx4/src/fastpath`), checked by `cargo xtask test`.
//!
//! The fast path must be the same code on every kernel and cheap on every call, so it may
//! not use `cfg`, allocate, or lock, and its only `unsafe` is at the queue-memory edge,
//! each block with a `// SAFETY:` comment (each `unsafe fn` declaration with a
//! `# Safety` section). These are textual checks over the source, which is enough for
//! code that is short and reviewed; they make a regression fail loudly.

use crate::bail;
use crate::util::Result;
use std::fs;
use std::path::Path;

/// Words that mean allocation or locking when they appear in fast-path code.
const FORBIDDEN: &[(&str, &str)] = &[
    ("cfg(", "a cfg"),
    ("cfg!", "a cfg"),
    ("alloc::", "allocation"),
    ("Vec<", "allocation"),
    ("Vec::", "allocation"),
    ("vec!", "allocation"),
    ("Box<", "allocation"),
    ("Box::", "allocation"),
    ("String", "allocation"),
    ("format!", "allocation"),
    ("Mutex", "a lock"),
    ("SpinLock", "a lock"),
    (".lock()", "a lock"),
];

/// Checks every `.rs` file under `dir`.
pub fn check_fast_path(dir: &Path) -> Result {
    let mut problems = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.path());
    for entry in entries {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let text = fs::read_to_string(&path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            problems.extend(check_source(&name, &text));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// The rule violations in one source file, as `file:line: what`.
pub fn check_source(name: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (word, what) in FORBIDDEN {
            if code.contains(word) {
                problems.push(format!(
                    "{name}:{}: {what} in the fast path: {}",
                    i + 1,
                    line.trim()
                ));
            }
        }
        if !code.contains("unsafe") {
            continue;
        }
        let justified = if code.contains("unsafe fn") {
            // A declaration: its doc comment must say what the caller promises.
            lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("///") || l.trim().is_empty())
                .any(|l| l.contains("# Safety"))
        } else {
            // A block: the comment block just above its line justifies it.
            lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .any(|l| l.contains("// SAFETY:"))
        };
        if !justified {
            problems.push(format!(
                "{name}:{}: unsafe without a SAFETY justification: {}",
                i + 1,
                line.trim()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_code_passes() {
        let text = "fn f() {\n    // SAFETY: the protocol gives us the entry.\n    let x = unsafe { g() };\n}\n";
        assert!(check_source("a.rs", text).is_empty());
    }

    #[test]
    fn a_long_safety_comment_counts_but_one_above_other_code_does_not() {
        let long = "    // SAFETY: one\n    // two\n    // three\n    // four\n    let x = unsafe { g() };\n";
        assert!(check_source("a.rs", long).is_empty());
        let stale =
            "    // SAFETY: about something else\n    let y = 1;\n    let x = unsafe { g() };\n";
        assert_eq!(check_source("a.rs", stale).len(), 1);
    }

    #[test]
    fn unjustified_unsafe_fails() {
        let text = "fn f() {\n    let x = unsafe { g() };\n}\n";
        let problems = check_source("a.rs", text);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("a.rs:2: unsafe without"));
    }

    #[test]
    fn unsafe_fn_needs_a_safety_section() {
        assert!(check_source(
            "a.rs",
            "/// Does it.\n///\n/// # Safety\n///\n/// Own it.\nunsafe fn f();\n"
        )
        .is_empty());
        assert_eq!(
            check_source("a.rs", "/// Does it.\nunsafe fn f();\n").len(),
            1
        );
    }

    #[test]
    fn cfg_allocation_and_locks_fail_but_comments_do_not() {
        let text = "#[cfg(test)]\nlet v = Vec::new();\nlet g = m.lock();\n// a Vec<u8> in a comment is fine\n";
        let problems = check_source("a.rs", text);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn the_fast_path_follows_the_rules() {
        let dir = crate::util::repo_root().join("hw-mlx4/src/fastpath");
        if let Err(error) = check_fast_path(&dir) {
            panic!("{error}");
        }
    }
}
