// SPDX-License-Identifier: GPL-2.0
//! `tilde_warn_selftest.ko`: a module that WARNs on load, on purpose.
//!
//! It exists only to prove that the VM runner fails a scenario whose dmesg carries a
//! `WARNING:` (see the `selftest-warn` scenario); it is never loaded otherwise.

use kernel::prelude::*;

extern "C" {
    /// `WARN_ON(1)`, from C (`warn.c`): the kernel crates of tilde's targets disagree on a
    /// Rust `warn_on!`, and every kernel has the C macro.
    fn tilde_warn_selftest_warn();
}

module! {
    type: WarnSelftest,
    name: "tilde_warn_selftest",
    description: "tilde VM runner self-test: WARNs on load",
    license: "GPL",
}

struct WarnSelftest;

impl kernel::Module for WarnSelftest {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!("about to WARN on purpose\n");
        // SAFETY: a plain call of a C function that WARNs and returns.
        unsafe { tilde_warn_selftest_warn() };
        Ok(Self)
    }
}
