//! The fast path's machine code, compared between kernel targets.
//!
//! tilde's promise is that the fast path is the same code on every kernel, down to the
//! machine code. Both targets' modules are built by one rustc (they share a build root),
//! so this check extracts each fast-path function from every target's modules with
//! `objdump -d -r` and requires the instructions to be identical: relocations compared
//! by symbol, addresses only as offsets within the function. The functions are the
//! kernel-facing posting and completion path of `rdma_core`: the non-generic parts in
//! `tilde_core.ko`, and one instantiation of the generic posts and completion trampoline
//! in `tilde_verbs_conformance.ko` (the benchmark's ring, a real ULP-shaped handler); and
//! the mlx4 driver's post_send, post_recv, poll_cq and req_notify_cq over its kernel
//! platform in `tilde_mlx4.ko` (one function each: `#[inline(never)]`, post_send with its
//! two out-of-line paths). Each must also be
//! free of panic paths: the kernel builds with overflow checks, and a fast path that can
//! panic on a counter or a length can take the machine down.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::util::{output, Result};

/// (module, demangled symbol) of each fast-path function.
const FAST_PATH: &[(&str, &str)] = &[
    ("tilde_core", "<rdma_core::cq::CompletionQueue>::poll"),
    ("tilde_core", "<rdma_core::qp::Queues>::begin_post"),
    ("tilde_core", "<rdma_core::qp::Queues>::completed"),
    (
        "tilde_verbs_conformance",
        "<rdma_core::qp::Queues>::post_send::<conformance::bench::SafeRing>",
    ),
    (
        "tilde_verbs_conformance",
        "<rdma_core::qp::Queues>::post_recv::<conformance::bench::SafeRing>",
    ),
    (
        "tilde_verbs_conformance",
        "rdma_core::wr::work_request_done::<conformance::bench::SafeRing>",
    ),
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::send::SendQueue<mlx4::platform::KernelPlatform>>::post",
    ),
    // post's out-of-line paths: WRs of the rarer shapes, and the BlueFlame post.
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::send::SendQueue<mlx4::platform::KernelPlatform>>::write_any",
    ),
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::send::SendQueue<mlx4::platform::KernelPlatform>>::post_blueflame",
    ),
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::recv::RecvQueue<mlx4::platform::KernelPlatform>>::post",
    ),
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::cq::CompletionQueue<mlx4::platform::KernelPlatform>>::poll::<hw_mlx4::fastpath::qp::QpCompletions<mlx4::platform::KernelPlatform>>",
    ),
    (
        "tilde_mlx4",
        "<hw_mlx4::fastpath::cq::CompletionQueue<mlx4::platform::KernelPlatform>>::arm",
    ),
];

/// A target's built modules: its id and the directory holding its `.ko` files.
pub struct Built {
    pub target: &'static str,
    pub modules: PathBuf,
    /// The build root whose compiler built them.
    pub compiler_root: PathBuf,
}

/// Compares every fast-path function across `built` and prints one line per function.
pub fn compare(built: &[Built]) -> Result {
    let [first, rest @ ..] = built else {
        bail!("no target built its modules");
    };
    if rest.is_empty() {
        bail!("one target only: nothing to compare");
    }
    if rest.iter().any(|b| b.compiler_root != first.compiler_root) {
        // Two compilers cannot be held to identical output; tilde's targets share one.
        bail!("the targets were built by different compilers (build roots); comparing machine code needs one");
    }
    let mut differing = Vec::new();
    for (module, symbol) in FAST_PATH {
        let reference = function(&first.modules.join(format!("{module}.ko")), symbol)?;
        let mut same = true;
        for other in rest {
            let code = function(&other.modules.join(format!("{module}.ko")), symbol)?;
            if code != reference {
                same = false;
                let first_difference = reference
                    .iter()
                    .zip(&code)
                    .position(|(a, b)| a != b)
                    .unwrap_or(reference.len().min(code.len()));
                differing.push(format!(
                    "{symbol}: {} has {} instructions, {} has {}; first difference at instruction {first_difference}: {:?} vs {:?}",
                    first.target,
                    reference.len(),
                    other.target,
                    code.len(),
                    reference.get(first_difference),
                    code.get(first_difference)
                ));
            }
        }
        println!(
            "[fastpath] {symbol} ({module}.ko): {} instructions, {}",
            reference
                .iter()
                .filter(|l| !l.starts_with("reloc "))
                .count(),
            if same {
                "identical on every target"
            } else {
                "DIFFERS"
            }
        );
    }
    if !differing.is_empty() {
        bail!(
            "fast-path machine code differs between targets:\n{}",
            differing.join("\n")
        );
    }
    Ok(())
}

/// The normalised disassembly of `symbol` in `ko`: one entry per instruction (its text,
/// branch targets as offsets within the function) and per relocation (type and symbol).
fn function(ko: &Path, symbol: &str) -> Result<Vec<String>> {
    let listing = output(
        Command::new("objdump")
            .args(["-d", "-r", "-C", "--no-show-raw-insn"])
            .arg(ko),
    )?;
    let code = extract(&listing, symbol);
    if code.is_empty() {
        bail!("{} has no function {symbol}", ko.display());
    }
    // A relocation against a section plus an offset names no symbol: equal text could
    // then hide different targets. None of the fast path has one; refuse if one appears.
    let section_relative = code.iter().find(|l| {
        l.starts_with("reloc ")
            && l.split_whitespace()
                .nth(2)
                .is_some_and(|target| target.starts_with('.'))
    });
    if let Some(reloc) = section_relative {
        bail!(
            "{symbol} in {} has a section-relative relocation ({reloc}); compare it by symbol first",
            ko.display()
        );
    }
    if let Some(path) = panic_path(&modules_listing(ko)?, symbol) {
        bail!(
            "{symbol} in {} can panic ({}): the fast path may not (kernel builds check overflow)",
            ko.display(),
            path.join(" -> ")
        );
    }
    Ok(code)
}

/// The listings of every module beside `ko` (tilde's modules of one target), one after
/// the other: a fast-path function calls into `tilde_core`'s exports too. Read once per
/// directory.
fn modules_listing(ko: &Path) -> Result<std::sync::Arc<String>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LISTINGS: OnceLock<Mutex<HashMap<PathBuf, Arc<String>>>> = OnceLock::new();
    let dir = ko.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cache = LISTINGS.get_or_init(Default::default);
    if let Some(listing) = cache.lock().ok().and_then(|c| c.get(&dir).cloned()) {
        return Ok(listing);
    }
    let mut modules: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    modules.sort();
    let mut listing = String::new();
    for module in modules {
        listing.push_str(&output(
            Command::new("objdump")
                .args(["-d", "-r", "-C", "--no-show-raw-insn"])
                .arg(&module),
        )?);
    }
    let listing = Arc::new(listing);
    if let Ok(mut c) = cache.lock() {
        c.insert(dir, listing.clone());
    }
    Ok(listing)
}

/// Whether a call's target is Rust's panic machinery: `core::panicking` (overflow and
/// bounds checks, explicit panics) and the out-of-line panics the library reaches them
/// through (`core::option::unwrap_failed`, `core::result::unwrap_failed`,
/// `core::slice::index::slice_index_fail` and the like, `core::cell::panic_already_*`),
/// and the unwinder's entry.
fn is_panic(target: &str) -> bool {
    let library = ["core::", "alloc::", "std::"]
        .iter()
        .any(|krate| target.starts_with(krate));
    target.contains("panicking")
        || target.contains("rust_begin_unwind")
        || (library && (target.contains("panic") || target.contains("_fail")))
}

/// The symbol a relocation line names, without its addend: `reloc R_X86_64_PLT32
/// <a::B>::c-0x4` gives `<a::B>::c`.
fn reloc_target(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("reloc R_")?;
    let (_, target) = rest.split_once(' ')?;
    let end = target
        .rfind(['-', '+'])
        .filter(|&at| target[at + 1..].starts_with("0x"))
        .unwrap_or(target.len());
    Some(&target[..end])
}

/// A way from `symbol` into the panic machinery, if there is one: through its own calls
/// and those of every function of the listing it calls, however deep (a callee the
/// compiler did not inline is as much the fast path as the function itself). The path
/// names each function on the way, the panic last.
fn panic_path(listing: &str, symbol: &str) -> Option<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![vec![symbol.to_string()]];
    while let Some(path) = stack.pop() {
        let current = path.last()?.clone();
        if !seen.insert(current.clone()) {
            continue;
        }
        for line in extract(listing, &current) {
            let Some(target) = reloc_target(&line) else {
                continue;
            };
            let mut next = path.clone();
            next.push(target.to_string());
            if is_panic(target) {
                return Some(next);
            }
            // Only functions tilde's modules define are followed: the kernel's own (memcpy,
            // the return thunk, its Rust crate on 7.2) are not tilde's to change.
            if !seen.contains(target) && !extract(listing, target).is_empty() {
                stack.push(next);
            }
        }
    }
    None
}

/// The lines of `symbol`'s body in an `objdump -d -r` listing, normalised.
fn extract(listing: &str, symbol: &str) -> Vec<String> {
    let header = format!("<{symbol}>:");
    let mut lines = listing.lines().skip_while(|l| !l.ends_with(&header));
    if lines.next().is_none() {
        return Vec::new();
    }
    lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(normalise)
        .collect()
}

/// One listing line without what differs between equal code at different places: the
/// address, and the absolute form of a branch target (its `<function+offset>` stays).
fn normalise(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(':')?;
    let rest = rest.trim();
    if let Some(reloc) = rest.strip_prefix("R_") {
        return Some(format!(
            "reloc R_{}",
            reloc.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let kept: Vec<&str> = words
        .iter()
        .enumerate()
        .filter(|(i, w)| {
            let absolute = w.chars().all(|c| c.is_ascii_hexdigit())
                && words.get(i + 1).is_some_and(|next| next.starts_with('<'));
            !absolute
        })
        .map(|(_, w)| *w)
        .collect();
    Some(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
0000000000002370 <<rdma_core::qp::Queues>::completed>:
    2370:\tendbr64
    2374:\tlock subl $0x1,0x20(%rdi)
    2376:\tadd    %eax,%ebx
    2379:\tjmp    2380 <<rdma_core::qp::Queues>::completed+0x10>
\t\t\t237a: R_X86_64_PLT32\t__x86_return_thunk-0x4
    237e:\tint3

0000000000002390 <other>:
    2390:\tret
";

    #[test]
    fn a_function_is_extracted_without_its_addresses() {
        let code = extract(LISTING, "<rdma_core::qp::Queues>::completed");
        assert_eq!(
            code,
            [
                "endbr64",
                "lock subl $0x1,0x20(%rdi)",
                "add %eax,%ebx",
                "jmp <<rdma_core::qp::Queues>::completed+0x10>",
                "reloc R_X86_64_PLT32 __x86_return_thunk-0x4",
                "int3",
            ]
        );
        // The same code at another address normalises the same.
        let moved = LISTING
            .replace("2370", "4440")
            .replace("237", "444")
            .replace("2380", "4450");
        assert_eq!(extract(&moved, "<rdma_core::qp::Queues>::completed"), code);
        assert!(extract(LISTING, "missing").is_empty());
        assert_eq!(
            panic_path(LISTING, "<rdma_core::qp::Queues>::completed"),
            None
        );
    }

    #[test]
    fn an_overflow_check_is_a_panic_path() {
        let listing = LISTING.replace(
            "__x86_return_thunk-0x4",
            "core::panicking::panic_const::panic_const_add_overflow-0x4",
        );
        assert_eq!(
            panic_path(&listing, "<rdma_core::qp::Queues>::completed"),
            Some(vec![
                "<rdma_core::qp::Queues>::completed".to_string(),
                "core::panicking::panic_const::panic_const_add_overflow".to_string()
            ])
        );
    }

    #[test]
    fn the_library_s_out_of_line_panics_are_panic_paths() {
        for target in [
            "core::option::unwrap_failed",
            "core::result::unwrap_failed",
            "core::slice::index::slice_index_fail",
            "core::slice::index::slice_end_index_len_fail",
            "core::cell::panic_already_borrowed",
            "core::option::expect_failed",
            "rust_begin_unwind",
        ] {
            assert!(is_panic(target), "{target}");
        }
        for target in [
            "__x86_return_thunk",
            "memcpy",
            "<hw_mlx4::wire::Cqe>::owner",
        ] {
            assert!(!is_panic(target), "{target}");
        }
    }

    #[test]
    fn a_panic_in_a_callee_that_was_not_inlined_is_found() {
        let listing = "\
0000000000000100 <fast>:
     100:\tcall   105 <fast+0x5>
\t\t\t101: R_X86_64_PLT32\t<hw_mlx4::ring::Ring as core::ops::Index<u32>>::index-0x4
     105:\tret

0000000000000200 <<hw_mlx4::ring::Ring as core::ops::Index<u32>>::index>:
     200:\tcall   205 <<hw_mlx4::ring::Ring as core::ops::Index<u32>>::index+0x5>
\t\t\t201: R_X86_64_PLT32\tcore::slice::index::slice_index_fail-0x4
     205:\tret
";
        assert_eq!(
            panic_path(listing, "fast"),
            Some(vec![
                "fast".to_string(),
                "<hw_mlx4::ring::Ring as core::ops::Index<u32>>::index".to_string(),
                "core::slice::index::slice_index_fail".to_string()
            ])
        );
    }
}
