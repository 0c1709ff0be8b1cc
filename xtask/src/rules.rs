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
use std::path::{Path, PathBuf};

/// Words that mean a cfg, allocation or locking when they appear in fast-path code
/// (outside comments and string literals).
const FORBIDDEN: &[(&str, &str)] = &[
    ("cfg(", "a cfg"),
    ("cfg!", "a cfg"),
    ("cfg_attr(", "a cfg"),
    ("alloc::", "allocation"),
    ("Vec<", "allocation"),
    ("Vec::", "allocation"),
    ("vec!", "allocation"),
    ("Box<", "allocation"),
    ("Box::", "allocation"),
    ("Arc::new", "allocation"),
    ("Rc::new", "allocation"),
    ("String", "allocation"),
    ("format!", "allocation"),
    (".to_vec()", "allocation"),
    (".to_owned()", "allocation"),
    (".to_string()", "allocation"),
    ("Mutex", "a lock"),
    ("SpinLock", "a lock"),
    ("RwLock", "a lock"),
    (".lock()", "a lock"),
    ("try_lock", "a lock"),
    (".read()", "a lock"),
    (".write()", "a lock"),
];

/// The fast path's sources: `hw-mlx4/src/fastpath` (every file, however deep), and the
/// kernel platform the compiled fast path inlines (`hw-mlx4/kmod/platform.rs`: its
/// queue memory, doorbells and barriers are in the functions xtask compares).
pub fn fast_path_sources(repo: &Path) -> Vec<PathBuf> {
    vec![
        repo.join("hw-mlx4/src/fastpath"),
        repo.join("hw-mlx4/kmod/platform.rs"),
    ]
}

/// Checks every `.rs` file of `paths` (files, or folders walked recursively). A folder
/// without any is an error: the rules would pass over nothing.
pub fn check_fast_path(paths: &[PathBuf]) -> Result {
    let mut files = Vec::new();
    for path in paths {
        let before = files.len();
        collect_sources(path, &mut files)?;
        if files.len() == before {
            bail!("{}: no Rust source to check", path.display());
        }
    }
    files.sort();
    let mut problems = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path)?;
        problems.extend(check_source(&path.display().to_string(), &text));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn collect_sources(path: &Path, files: &mut Vec<PathBuf>) -> Result {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            collect_sources(&entry?.path(), files)?;
        }
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        files.push(path.to_path_buf());
    } else if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    Ok(())
}

/// `text` with comments removed and the contents of string and character literals
/// blanked, line for line (the line count stays): what the compiler reads as code.
/// Handles `//` and nested `/* */` comments, `"..."` with escapes, raw strings
/// (`r"..."`, `r#"..."#`, byte forms alike), and character literals as distinct from
/// lifetimes.
pub fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut block_depth = 0usize;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if block_depth > 0 {
            if c == '*' && at(i + 1) == '/' {
                block_depth -= 1;
                i += 2;
            } else if c == '/' && at(i + 1) == '*' {
                block_depth += 1;
                i += 2;
            } else {
                if c == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            continue;
        }
        match c {
            '/' if at(i + 1) == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                block_depth = 1;
                i += 2;
            }
            'r' | 'b' if is_raw_string_start(&chars, i) => {
                // Prefix (b, r, br), hashes, the opening quote.
                let mut j = i;
                while at(j) == 'b' || at(j) == 'r' {
                    j += 1;
                }
                let hashes = chars[j..].iter().take_while(|&&h| h == '#').count();
                j += hashes + 1;
                out.push_str("\"\"");
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"'
                        && chars[j + 1..].iter().take(hashes).all(|&h| h == '#')
                        && chars.len() >= j + 1 + hashes
                    {
                        j += 1 + hashes;
                        break;
                    }
                    if chars[j] == '\n' {
                        out.push('\n');
                    }
                    j += 1;
                }
                i = j;
            }
            '"' => {
                out.push_str("\"\"");
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if at(i) == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 1;
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
                let close = if at(i + 1) == '\\' {
                    chars[i + 2..]
                        .iter()
                        .position(|&q| q == '\'')
                        .map(|p| i + 2 + p)
                } else if at(i + 2) == '\'' {
                    Some(i + 2)
                } else {
                    None
                };
                match close {
                    Some(end) => {
                        out.push_str("' '");
                        i = end + 1;
                    }
                    None => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Whether a raw string literal (`r"`, `r#"`, `br"`, `br#"`) starts at `i`, and not an
/// identifier that ends in r or b.
fn is_raw_string_start(chars: &[char], i: usize) -> bool {
    let before = i.checked_sub(1).map(|p| chars[p]);
    if before.is_some_and(|b| b.is_alphanumeric() || b == '_') {
        return false;
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

/// The rule violations in one source file, as `file:line: what`.
pub fn check_source(name: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let code = code_only(text);
    let mut problems = Vec::new();
    for (i, code) in code.lines().enumerate() {
        let line = lines.get(i).copied().unwrap_or("");
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
        let justified = if code.contains("unsafe fn") || code.contains("unsafe impl") {
            // A declaration: its doc comment must say what the caller (or implementor)
            // promises; an `unsafe impl`, why the type keeps it.
            let docs = lines[..i].iter().rev().take_while(|l| {
                let l = l.trim_start();
                l.starts_with("///") || l.starts_with("#[") || l.is_empty()
            });
            let comment = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"));
            docs.chain(comment)
                .any(|l| l.contains("# Safety") || l.contains("// SAFETY:"))
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
    fn strings_and_block_comments_are_not_code_and_code_after_them_is() {
        let text = "let s = \"Vec<u8> // not a comment\"; let v = Vec::new();\n\
                    /* Mutex\n   Box::new */ let b = Box::new(1);\n\
                    let r = r#\"a \"Mutex\" b\"#; let c = '\"'; let l: &'a u8 = x.lock();\n";
        let problems = check_source("a.rs", text);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("a.rs:1: allocation"));
        assert!(
            problems[1].starts_with("a.rs:3: allocation"),
            "{problems:?}"
        );
        assert!(problems[2].starts_with("a.rs:4: a lock"), "{problems:?}");
    }

    #[test]
    fn the_longer_forbidden_list_is_enforced() {
        for code in [
            "#[cfg_attr(test, derive(Debug))]",
            "let a = Arc::new(1);",
            "let g: RwLock<u8>;",
            "if let Ok(g) = m.try_lock() {}",
            "let v = s.to_vec();",
        ] {
            assert_eq!(check_source("a.rs", code).len(), 1, "{code}");
        }
    }

    #[test]
    fn folders_are_walked_and_an_empty_one_fails() {
        let root = std::env::temp_dir().join(format!("tilde-rules-{}", std::process::id()));
        let deep = root.join("a/b");
        fs::create_dir_all(&deep).unwrap();
        assert!(
            check_fast_path(std::slice::from_ref(&root)).is_err(),
            "nothing to check"
        );
        fs::write(deep.join("x.rs"), "let v = Vec::new();\n").unwrap();
        let error = check_fast_path(std::slice::from_ref(&root)).unwrap_err();
        assert!(format!("{error}").contains("x.rs:1: allocation"), "{error}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_fast_path_follows_the_rules() {
        if let Err(error) = check_fast_path(&fast_path_sources(&crate::util::repo_root())) {
            panic!("{error}");
        }
    }
}
