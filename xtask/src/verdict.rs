//! Judging a VM run from what the guest brought back.
//!
//! A run passes only if the scenario exited 0, the kernel log has no line that reports a
//! kernel problem, and the kernel is tainted by nothing but out-of-tree (O) and unsigned
//! (E) modules, which loading tilde's modules does by design. On the debug kernel also:
//! kmemleak, scanned at the end, holds no object allocated through a tilde module, and
//! lockdep was still on when the run ended.

/// What went wrong in a run; empty when it passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub failures: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What the guest reported.
pub struct Report<'a> {
    /// The scenario's exit status; `None` if the guest never wrote one.
    pub status: Option<i32>,
    /// `/proc/sys/kernel/tainted` at the end of the run.
    pub tainted: Option<u64>,
    /// The whole kernel log (or the serial console, if the guest died before saving it).
    pub dmesg: &'a str,
    /// The host stopped the guest at the time limit.
    pub timed_out: bool,
    /// `/sys/kernel/debug/kmemleak` after two scans at the end; `None` on a kernel
    /// without kmemleak.
    pub kmemleak: Option<&'a str>,
    /// `debug_locks` of `/proc/lockdep_stats` at the end; `None` without lockdep.
    pub debug_locks: Option<u32>,
}

/// Taint bits that loading tilde's modules sets: O (out-of-tree) and E (unsigned).
const ALLOWED_TAINT: u64 = (1 << 12) | (1 << 13);

/// Taint letters by bit, as in `Documentation/admin-guide/tainted-kernels.rst`.
const TAINT_LETTERS: &[u8] = b"PFSRMBUDAWCIOELKXTNJ";

/// Markers of a kernel problem in a log line: WARN/BUG/Oops reports, sanitizers,
/// lockdep, kmemleak, and the other self-checks the kernel prints.
const BAD_MARKERS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "kernel BUG at",
    "Oops",
    "KASAN",
    "UBSAN",
    "KFENCE",
    "ODEBUG:",
    // kmemleak's leak entries are judged from its report file (`tilde_leaks`); in the log
    // only the detector failing is a problem.
    // ("Cannot allocate a scan area" is not: kmemleak then scans the whole object.)
    "kmemleak: Kernel memory leak detector disabled",
    "kmemleak: Memory pool empty",
    "possible circular locking dependency",
    "possible recursive locking",
    "inconsistent lock state",
    "lock held when returning to user space",
    "suspicious RCU usage",
    "DEBUG_LOCKS_WARN_ON",
    "general protection fault",
    "Kernel panic",
    "Call Trace:",
    "blocked for more than",
    "refcount_t:",
    "list_add corruption",
    "list_del corruption",
    "stack-protector",
    "panicked at",
    // tilde's own reports of a teardown that leaked or failed (rdma_core, tilde_iser):
    // the object stays allocated, so the run must fail as a leak report would.
    "leaking QP",
    "; leaking it",
    "ib_dealloc_pd failed",
    "destroying an address handle failed",
    "deregistering an MR failed",
    "WRs did not flush",
];

/// The log lines that report a kernel problem.
pub fn bad_lines(dmesg: &str) -> Vec<&str> {
    dmesg
        .lines()
        .filter(|line| BAD_MARKERS.iter().any(|marker| line.contains(marker)))
        .collect()
}

/// One entry of kmemleak's report: an object no pointer reaches any more.
#[derive(Debug, PartialEq, Eq)]
pub struct Leak<'a> {
    /// `unreferenced object 0x... (size N):`
    pub header: &'a str,
    /// The first backtrace frame in a tilde module (`func+0x1c/0x40 [tilde_core]`), if any.
    pub tilde_frame: Option<&'a str>,
}

/// The entries of a kmemleak report (`/sys/kernel/debug/kmemleak`). An entry whose
/// allocation backtrace passes through a tilde module was allocated by tilde or on its
/// behalf; the others are the kernel's own or another driver's.
pub fn leaks(report: &str) -> Vec<Leak<'_>> {
    let mut leaks: Vec<Leak<'_>> = Vec::new();
    for line in report.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("unreferenced object ") {
            leaks.push(Leak {
                header: trimmed,
                tilde_frame: None,
            });
        } else if let Some(leak) = leaks.last_mut() {
            if leak.tilde_frame.is_none() && trimmed.ends_with(']') && trimmed.contains(" [tilde_")
            {
                leak.tilde_frame = Some(trimmed);
            }
        }
    }
    leaks
}

/// Taint letters of the bits in `mask`.
pub fn taint_letters(mask: u64) -> String {
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| match TAINT_LETTERS.get(bit) {
            Some(&letter) => char::from(letter).to_string(),
            None => format!("bit{bit}"),
        })
        .collect::<Vec<_>>()
        .join("")
}

pub fn judge(report: &Report<'_>) -> Verdict {
    let mut failures = Vec::new();
    if report.timed_out {
        failures.push("the guest did not finish within the time limit".to_string());
    }
    match report.status {
        Some(0) => {}
        Some(status) => failures.push(format!("the scenario exited with status {status}")),
        None => failures.push("the guest wrote no exit status (crash or hang?)".to_string()),
    }
    // The log must reach back to the boot banner, or a report may have scrolled out.
    if !report.dmesg.contains("Linux version ") {
        failures.push("the kernel log is incomplete (no boot banner)".to_string());
    }
    for line in bad_lines(report.dmesg) {
        failures.push(format!("dmesg: {line}"));
    }
    match report.tainted {
        Some(mask) if mask & !ALLOWED_TAINT != 0 => failures.push(format!(
            "kernel tainted {} ({mask}); only O and E are expected",
            taint_letters(mask)
        )),
        Some(_) => {}
        None => failures.push("the guest did not report its taint".to_string()),
    }
    for leak in leaks(report.kmemleak.unwrap_or_default()) {
        if let Some(frame) = leak.tilde_frame {
            failures.push(format!(
                "kmemleak: {} allocated through {frame}",
                leak.header
            ));
        }
    }
    if report.debug_locks == Some(0) {
        failures.push(
            "lockdep turned itself off during the run (debug_locks 0): the run proves nothing \
             about lock order"
                .to_string(),
        );
    }
    Verdict { failures }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "[    0.000000] Linux version 7.2.13+deb14-amd64\n\
        [    5.1] tilde_core: loaded: device client registered\n\
        [    5.2] tilde_core: rxe0: added: node_guid 5054:00ff:fe12:3456 ports 1\n\
        [    5.3] systemd-debug: CONFIG_DEBUG_BUGVERBOSE=y\n";

    fn report(status: Option<i32>, tainted: Option<u64>, dmesg: &str) -> Report<'_> {
        Report {
            status,
            tainted,
            dmesg,
            timed_out: false,
            kmemleak: None,
            debug_locks: None,
        }
    }

    #[test]
    fn clean_run_with_out_of_tree_taint_passes() {
        let v = judge(&report(Some(0), Some(4096 | 8192), CLEAN));
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn warn_fails_and_names_the_line() {
        let dmesg = format!(
            "{CLEAN}[    6.0] ------------[ cut here ]------------\n\
             [    6.0] WARNING: xtask/selftest/warn_selftest.rs:27 at init_module+0x1c/0x40 [tilde_warn_selftest], CPU#1: insmod/201\n"
        );
        let v = judge(&report(Some(0), Some(4096 | 8192 | 512), &dmesg));
        assert!(!v.passed());
        assert!(
            v.failures
                .iter()
                .any(|f| f.starts_with("dmesg: ") && f.contains("WARNING: xtask/selftest")),
            "{v:?}"
        );
        assert!(v.failures.iter().any(|f| f.contains("tainted W")), "{v:?}");
    }

    #[test]
    fn nonzero_exit_missing_status_and_timeout_fail() {
        assert_eq!(
            judge(&report(Some(3), Some(0), CLEAN)).failures,
            ["the scenario exited with status 3"]
        );
        assert!(!judge(&report(None, Some(0), CLEAN)).passed());
        let mut r = report(Some(0), Some(0), CLEAN);
        r.timed_out = true;
        assert!(!judge(&r).passed());
    }

    #[test]
    fn every_kind_of_kernel_report_is_caught() {
        for line in [
            "BUG: KASAN: slab-use-after-free in foo",
            "kernel BUG at mm/slub.c:123!",
            "Oops: general protection fault, probably for non-canonical address",
            "WARNING: possible circular locking dependency detected",
            "kmemleak: Kernel memory leak detector disabled",
            "ODEBUG: free active (active state 0) object: 00000000 object type: work_struct hint: f+0x0/0x10 [tilde_ipoib]",
            "INFO: task insmod:200 blocked for more than 120 seconds.",
            "rust_kernel: panicked at rdma-core-rs/src/x.rs:1:1",
            "tilde_rdma: rxe0: leaking QP 17",
            "tilde_rdma: rxe0: destroying QP 17 failed: -16; leaking it",
            "tilde_rdma: rxe0: QP dropped in atomic context; leaking it (drop verbs objects where sleeping is allowed)",
            "tilde_rdma: rxe0: ib_dealloc_pd failed: -16",
            "tilde_rdma: rxe0: deregistering an MR failed: -16",
            "tilde_rdma: rxe0: destroying an address handle failed: -16",
            "tilde_iser: rxe0: WRs did not flush in 5s",
        ] {
            assert_eq!(bad_lines(line), [line], "{line}");
        }
        assert!(bad_lines(CLEAN).is_empty());
    }

    #[test]
    fn a_log_without_the_boot_banner_fails() {
        let v = judge(&report(
            Some(0),
            Some(0),
            "[  9.0] tilde_core: rxe0: removed\n",
        ));
        assert_eq!(
            v.failures,
            ["the kernel log is incomplete (no boot banner)"]
        );
    }

    const KMEMLEAK: &str = "unreferenced object 0xffff888004a1c000 (size 2048):\n  \
        comm \"insmod\", pid 212, jiffies 4294903232\n  \
        hex dump (first 32 bytes):\n    00 00 00 00 00 00 00 00  ........\n  \
        backtrace (crc 9c1b2c7e):\n    \
        [<ffffffff8154e0b1>] __kmalloc_noprof+0x1c1/0x3e0\n    \
        [<ffffffffc04a1234>] rdma_core::sys::alloc+0x24/0x60 [tilde_core]\n    \
        [<ffffffffc04b0040>] init_module+0x40/0x90 [tilde_loopback]\n\
        unreferenced object 0xffff888005000000 (size 64):\n  \
        comm \"swapper/0\", pid 1, jiffies 4294892000\n  \
        backtrace (crc 0):\n    \
        [<ffffffff8154e0b1>] kmalloc_trace_noprof+0x21/0x60\n    \
        [<ffffffff81a00000>] acpi_os_allocate+0x10/0x20\n";

    #[test]
    fn a_leak_allocated_through_tilde_fails_and_the_kernel_s_own_do_not() {
        let found = leaks(KMEMLEAK);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].tilde_frame,
            Some("[<ffffffffc04a1234>] rdma_core::sys::alloc+0x24/0x60 [tilde_core]")
        );
        assert_eq!(found[1].tilde_frame, None);
        let mut r = report(Some(0), Some(0), CLEAN);
        r.kmemleak = Some(KMEMLEAK);
        let v = judge(&r);
        assert_eq!(
            v.failures,
            [
                "kmemleak: unreferenced object 0xffff888004a1c000 (size 2048): allocated through \
              [<ffffffffc04a1234>] rdma_core::sys::alloc+0x24/0x60 [tilde_core]"
            ]
        );
    }

    #[test]
    fn lockdep_turned_off_fails_the_run() {
        let mut r = report(Some(0), Some(0), CLEAN);
        r.debug_locks = Some(1);
        assert!(judge(&r).passed());
        r.debug_locks = Some(0);
        assert!(!judge(&r).passed());
    }

    #[test]
    fn taint_letters_follow_the_kernel_docs() {
        assert_eq!(taint_letters(4096 | 8192), "OE");
        assert_eq!(taint_letters(1 << 9), "W");
        assert_eq!(taint_letters(1 << 40), "bit40");
    }
}
