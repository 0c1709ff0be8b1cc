//! The kernel stack frames of tilde's modules, checked after every build.
//!
//! The kernel's stack is 16 KiB and C code is built with `-Wframe-larger-than=2048`
//! (`CONFIG_FRAME_WARN`, an error under tilde's `-Werror`). rustc has no such flag, and a
//! Rust function inlines its callees' buffers into one frame (the mlx4 probe, before its
//! mailbox steps were moved out of line, took 25 KiB: a stack overflow on the first
//! bind). So every function's frame is read from its prologue's `sub $N,%rsp` in the
//! built module, and one above the C limit fails the build.

use std::path::Path;
use std::process::Command;

use crate::bail;
use crate::util::{output, Result};

/// The largest frame a function of ours may have: the kernel's `CONFIG_FRAME_WARN` on
/// 64-bit.
pub const FRAME_LIMIT: u64 = 2048;

/// Fails if any function of the module `ko` has a stack frame above [`FRAME_LIMIT`].
pub fn check(ko: &Path) -> Result {
    let listing = output(
        Command::new("objdump")
            .args(["-d", "-C", "--no-show-raw-insn"])
            .arg(ko),
    )?;
    let large: Vec<String> = frames(&listing)
        .into_iter()
        .filter(|(_, size)| *size > FRAME_LIMIT)
        .map(|(function, size)| format!("  {size} bytes: {function}"))
        .collect();
    if !large.is_empty() {
        bail!(
            "{}: stack frames above {FRAME_LIMIT} bytes (move buffers out of line or to the heap):\n{}",
            ko.display(),
            large.join("\n")
        );
    }
    Ok(())
}

/// Each function of an `objdump -d` listing with the largest stack adjustment it makes
/// (`sub $N,%rsp`), in listing order; functions that make none are left out.
fn frames(listing: &str) -> Vec<(String, u64)> {
    let mut frames: Vec<(String, u64)> = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, name)| name)
        {
            current = Some(name.to_string());
            continue;
        }
        let Some(function) = &current else { continue };
        let Some(size) = line
            .split_once("sub    $0x")
            .and_then(|(_, rest)| rest.strip_suffix(",%rsp"))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        match frames.last_mut() {
            Some((name, largest)) if name == function => *largest = (*largest).max(size),
            _ => frames.push((function.clone(), size)),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
0000000000000010 <small>:
  10:	push   %rbp
  11:	sub    $0x28,%rsp
  15:	ret
0000000000000020 <<mlx4::hca::ConnectX3 as rdma_core::pci::Driver>::probe>:
  20:	push   %r15
  22:	sub    $0x6488,%rsp
  29:	sub    $0x10,%rsp
  2d:	ret
0000000000000030 <leaf>:
  30:	ret
";

    #[test]
    fn frames_are_read_from_each_functions_prologue() {
        assert_eq!(
            frames(LISTING),
            vec![
                ("small".to_string(), 0x28),
                (
                    "<mlx4::hca::ConnectX3 as rdma_core::pci::Driver>::probe".to_string(),
                    0x6488
                ),
            ]
        );
    }
}
