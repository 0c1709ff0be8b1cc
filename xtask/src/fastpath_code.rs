//! The fast path's machine code, compared between kernel targets.
//!
//! tilde's promise is that the fast path is the same code on every kernel, down to the
//! machine code. The compared targets' modules are built by one rustc (they share a build
//! root), so this check extracts each fast-path function from every target's modules with
//! `objdump -d -r` and requires the instructions to be identical: relocations compared
//! by symbol, addresses only as offsets within the function. A target built with hashed
//! symbol names (Debian 13's stock kernel, MODVERSIONS) has its listing translated back to
//! the v0 names of the first target's modules first: the hashed name is rustc's stable
//! hash of the v0 name ([`hashed_suffix`]), so each is found exactly, never guessed. The functions are the
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
    /// Its Rust symbols are hashed (`-Csymbol-mangling-version=hashed`).
    pub hashed_symbols: bool,
}

impl Built {
    /// The modules `cargo xtask kmod` built for `toolchain`'s target.
    pub fn of(toolchain: &crate::toolchain::Toolchain) -> Built {
        Built {
            target: toolchain.target.id,
            modules: crate::kmod::out_dir(toolchain).join("build"),
            compiler_root: toolchain.root.dir.clone(),
            hashed_symbols: toolchain.target.hashes_rust_symbols(),
        }
    }
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
    if first.hashed_symbols {
        bail!("the first target's symbols are hashed: it cannot name the fast path");
    }
    let names = if rest.iter().any(|b| b.hashed_symbols) {
        Some(V0Names::of_modules(&first.modules)?)
    } else {
        None
    };
    let mut differing = Vec::new();
    for (module, symbol) in FAST_PATH {
        let reference = function(&first.modules.join(format!("{module}.ko")), symbol, None)?;
        let mut same = true;
        for other in rest {
            let names = names.as_ref().filter(|_| other.hashed_symbols);
            let code = function(&other.modules.join(format!("{module}.ko")), symbol, names)?;
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

/// The demangled v0 names of Rust symbols, by the suffix their hashed names end in and by
/// their v0 names (a module's own crate keeps v0 names on a hashing target: Kbuild's
/// `TILDE_LEAF_RUSTFLAGS`), and which of them the modules define (the others are the
/// kernel's own).
pub struct V0Names {
    by_suffix: std::collections::HashMap<String, String>,
    by_v0: std::collections::HashMap<String, String>,
    defined: std::collections::HashSet<String>,
}

impl V0Names {
    /// Every Rust symbol the modules in `dir` define or import (`nm`, v0 mangling).
    fn of_modules(dir: &Path) -> Result<V0Names> {
        let mut by_suffix = std::collections::HashMap::new();
        let mut by_v0 = std::collections::HashMap::new();
        let mut defined = std::collections::HashSet::new();
        for ko in modules_in(dir)? {
            // `nm -p` keeps the symbol table's order, so the two listings pair up line by
            // line; a demangled name may hold spaces, so it is everything after the type.
            let raw = output(Command::new("nm").arg("-p").arg(&ko))?;
            let demangled = output(Command::new("nm").args(["-p", "-C"]).arg(&ko))?;
            for (raw_line, demangled_line) in raw.lines().zip(demangled.lines()) {
                let (Some(raw), Some(demangled)) = (raw_line.get(19..), demangled_line.get(19..))
                else {
                    continue;
                };
                if raw.starts_with("_R") && !raw.starts_with("_RNxC") {
                    by_suffix.insert(hashed_suffix(raw), demangled.to_string());
                    by_v0.insert(raw.to_string(), demangled.to_string());
                }
                if raw_line.get(17..18) != Some("U") {
                    defined.insert(demangled.to_string());
                }
            }
        }
        Ok(V0Names {
            by_suffix,
            by_v0,
            defined,
        })
    }

    /// `text` with each Rust symbol, hashed or v0, replaced by its demangled v0 name, where
    /// one is known.
    fn translate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("_R") {
            out.push_str(&rest[..at]);
            let symbol_len = rest[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - at);
            let symbol = &rest[at..at + symbol_len];
            let name = match hashed_name_suffix(symbol) {
                Some(suffix) => self.by_suffix.get(suffix),
                None => self.by_v0.get(symbol),
            };
            out.push_str(name.map_or(symbol, String::as_str));
            rest = &rest[at + symbol_len..];
        }
        out.push_str(rest);
        out
    }
}

/// The end of the hashed name rustc gives the symbol whose v0 name is `v0`
/// (`rustc_symbol_mangling::hashed`): `_RNxC<crate>` then this, the first half of the
/// stable SipHash-1-3 of the name (its length, then its bytes) in base 62 as
/// `<digits + 1>H<digits>`.
pub fn hashed_suffix(v0: &str) -> String {
    use rustc_stable_hash::{FromStableHash, SipHasher128Hash, StableSipHasher128};
    use std::hash::Hasher;
    struct FirstHalf(u64);
    impl FromStableHash for FirstHalf {
        type Hash = SipHasher128Hash;
        fn from(hash: SipHasher128Hash) -> Self {
            FirstHalf(hash.0[0])
        }
    }
    let mut hasher = StableSipHasher128::new();
    hasher.write_u64(v0.len() as u64);
    hasher.write(v0.as_bytes());
    let FirstHalf(hash) = hasher.finish();
    // rustc's `encode_integer_62` (v0's integers: one less than the value, then `_`),
    // whose `_` the hashed mangling drops but counts.
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut digits = Vec::new();
    if let Some(mut n) = hash.checked_sub(1) {
        loop {
            digits.push(DIGITS[(n % 62) as usize]);
            n /= 62;
            if n == 0 {
                break;
            }
        }
    }
    digits.reverse();
    format!("{}H{}", digits.len() + 1, String::from_utf8_lossy(&digits))
}

/// The part of a hashed name after its crate: `_RNxC4core12H1u28rhDtHUU` gives
/// `12H1u28rhDtHUU`.
fn hashed_name_suffix(symbol: &str) -> Option<&str> {
    let rest = symbol.strip_prefix("_RNxC")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let crate_len: usize = rest[..digits].parse().ok()?;
    rest.get(digits + crate_len..)
}

/// The `.ko` files in `dir`, sorted.
fn modules_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut modules: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    modules.sort();
    Ok(modules)
}

/// `objdump -d -r -C` of `ko`; for a module of a hashing target, `objdump -d -r` with each
/// Rust name replaced by its demangled v0 name from `names` (the demangler would read a
/// hashed name as a v0 path, `rdma_core::H1IO7cv7QXg6`).
fn listing(ko: &Path, names: Option<&V0Names>) -> Result<String> {
    let mut objdump = Command::new("objdump");
    objdump.args(["-d", "-r", "--no-show-raw-insn"]);
    if names.is_none() {
        objdump.arg("-C");
    }
    let listing = output(objdump.arg(ko))?;
    Ok(match names {
        Some(names) => names.translate(&listing),
        None => listing,
    })
}

/// The normalised disassembly of `symbol` in `ko`: one entry per instruction (its text,
/// branch targets as offsets within the function) and per relocation (type and symbol).
fn function(ko: &Path, symbol: &str, names: Option<&V0Names>) -> Result<Vec<String>> {
    let listing = listing(ko, names)?;
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
    // On a target that carries the kernel's Rust runtime in tilde_core.ko, that runtime is
    // not followed: only what the first target's modules define too is tilde's.
    let tilde_s = |name: &str| names.is_none_or(|names| names.defined.contains(name));
    if let Some(path) = panic_path(&modules_listing(ko, names)?, symbol, &tilde_s) {
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
fn modules_listing(ko: &Path, names: Option<&V0Names>) -> Result<std::sync::Arc<String>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LISTINGS: OnceLock<Mutex<HashMap<PathBuf, Arc<String>>>> = OnceLock::new();
    let dir = ko.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cache = LISTINGS.get_or_init(Default::default);
    if let Some(listing) = cache.lock().ok().and_then(|c| c.get(&dir).cloned()) {
        return Ok(listing);
    }
    let mut all = String::new();
    for module in modules_in(&dir)? {
        all.push_str(&listing(&module, names)?);
    }
    let listing = all;
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
fn panic_path(listing: &str, symbol: &str, tilde_s: &dyn Fn(&str) -> bool) -> Option<Vec<String>> {
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
            if !seen.contains(target) && tilde_s(target) && !extract(listing, target).is_empty() {
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

    /// A pair read from the modules of debian-sid-7.2 (v0) and debian-trixie-6.12 (hashed)
    /// built by rustc 1.97.1: `<hw_mlx4::fastpath::cq::CompletionQueue<..>>::arm`.
    #[test]
    fn a_hashed_name_is_found_from_its_v0_name() {
        let v0 = "_RNvMNtNtCs3tF6FbReyGa_7hw_mlx48fastpath2cqINtB2_15CompletionQueueNtNtCs9fAOUBshNAZ_4mlx48platform14KernelPlatformE3armB15_";
        assert_eq!(hashed_suffix(v0), "12H6cbQklWSIUJ");
        assert_eq!(
            hashed_name_suffix("_RNxC4mlx412H6cbQklWSIUJ"),
            Some("12H6cbQklWSIUJ")
        );
        let names = V0Names {
            by_suffix: [(hashed_suffix(v0), "<a::B>::arm".to_string())]
                .into_iter()
                .collect(),
            by_v0: [(v0.to_string(), "<a::B>::arm".to_string())]
                .into_iter()
                .collect(),
            defined: Default::default(),
        };
        assert_eq!(
            names.translate(
                "call <_RNxC4mlx412H6cbQklWSIUJ+0x4>, R_X86_64_PLT32\t_RNxC4core11HMxVTHcOHJJ-0x4"
            ),
            "call <<a::B>::arm+0x4>, R_X86_64_PLT32\t_RNxC4core11HMxVTHcOHJJ-0x4"
        );
        assert_eq!(
            names.translate(&format!("<{v0}>: R_X86_64_32 _Rx")),
            "<<a::B>::arm>: R_X86_64_32 _Rx"
        );
    }

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
            panic_path(LISTING, "<rdma_core::qp::Queues>::completed", &|_| true),
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
            panic_path(&listing, "<rdma_core::qp::Queues>::completed", &|_| true),
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
            panic_path(listing, "fast", &|_| true),
            Some(vec![
                "fast".to_string(),
                "<hw_mlx4::ring::Ring as core::ops::Index<u32>>::index".to_string(),
                "core::slice::index::slice_index_fail".to_string()
            ])
        );
    }
}
