// SPDX-License-Identifier: GPL-2.0
//! `tilde_warn_selftest.ko`: a module that WARNs on load, on purpose.
//!
//! It exists only to prove that the VM runner fails a scenario whose dmesg carries a
//! `WARNING:` (see the `selftest-warn` scenario); it is never loaded otherwise.

use kernel::prelude::*;

module! {
    type: WarnSelftest,
    name: "tilde_warn_selftest",
    authors: ["tilde developers"],
    description: "tilde VM runner self-test: WARNs on load",
    license: "GPL",
}

struct WarnSelftest;

impl kernel::Module for WarnSelftest {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!("about to WARN on purpose\n");
        kernel::warn_on!(true);
        Ok(Self)
    }
}
