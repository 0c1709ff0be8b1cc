// SPDX-License-Identifier: GPL-2.0
//! `tilde_verbs_conformance.ko`: the verbs conformance suite.
//!
//! Runs each case against the RDMA device named by the `device` parameter and prints one
//! result line per case (`tilde_conformance: <device>: <case>: PASS|FAIL ...`), which the
//! VM scenario asserts. The suite is device-agnostic: it runs over rxe today and is what
//! tilde's own mlx4 driver will be run against.

use kernel::prelude::*;
use rdma_core::{
    client::{Client, Registration},
    device::Device,
};

module! {
    type: Conformance,
    name: "tilde_verbs_conformance",
    authors: ["tilde developers"],
    description: "tilde verbs conformance suite (Rust)",
    license: "GPL",
}

mod param {
    use kernel::str::{CStr, CStrExt};

    extern "C" {
        fn tilde_conformance_device() -> *const kernel::ffi::c_char;
    }

    /// The `device` parameter (see `conformance_param.c`).
    pub(crate) fn device() -> &'static CStr {
        // SAFETY: the C side returns the charp parameter, a NUL-terminated string that
        // lives (read-only, mode 0444) as long as this module.
        unsafe { CStr::from_char_ptr(tilde_conformance_device()) }
    }
}

/// Finds the device under test when the IB core reports it.
struct Suite;

impl Client for Suite {
    type DeviceData = ();

    fn add(device: &Device) -> Result<()> {
        let name = device.name();
        if name.as_str().as_bytes() != param::device().to_bytes() {
            return Ok(());
        }
        pr_info!("{}: device_query: PASS: {} ports\n", name, device.ports().count());
        Ok(())
    }

    fn remove(_device: &Device, _data: ()) {}
}

rdma_core::ib_client!(Suite, c"tilde_conformance");

struct Conformance {
    _registration: Registration<Suite>,
}

impl kernel::Module for Conformance {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let registration = Registration::register()?;
        Ok(Self { _registration: registration })
    }
}
