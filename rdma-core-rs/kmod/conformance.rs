// SPDX-License-Identifier: GPL-2.0
//! `tilde_verbs_conformance.ko`: the verbs conformance suite.
//!
//! Runs each case against the RDMA device named by the `device` parameter and prints one
//! result line per case (`tilde_conformance: <device>: <case>: PASS|FAIL ...`), which the
//! VM scenario asserts. The suite is device-agnostic: it runs over rxe today and is what
//! tilde's own mlx4 driver will be run against.

use kernel::prelude::*;
use kernel::sync::atomic::{Atomic, Relaxed};
use rdma_core::{
    client::{Client, Registration},
    device::{Device, DeviceRef},
};

use cases::{run_cases, setup, CaseResult, Failure};

module! {
    type: Conformance,
    name: "tilde_verbs_conformance",
    authors: ["tilde developers"],
    description: "tilde verbs conformance suite (Rust)",
    license: "GPL",
    params: {
        bench: u32 {
            default: 0,
            description: "0 runs the conformance cases; N runs the safe-vs-raw benchmark with N operations per loop instead",
        },
        traffic: u32 {
            default: 0,
            description: "1 runs no cases but keeps RC traffic going on the device until it is removed or the module unloaded",
        },
    },
}

mod bench;
#[path = "../conformance/cases.rs"]
mod cases;
mod cm_cases;
mod resident;

/// The kernel backend, under the names the shared cases use.
mod api {
    pub(crate) use kernel::error::{
        code::{EINVAL, ETIMEDOUT},
        Error, Result,
    };
    pub(crate) use kernel::sync::Arc;
    pub(crate) use rdma_core::{
        ah::AddressHandle,
        cq::{CompletionQueue, PollContext},
        device::{Device, DeviceRef},
        dma::DmaBuffer,
        mailbox::{Mailbox, ReturnedWr},
        mr::MemoryRegion,
        pd::ProtectionDomain,
        qp::{QueuePair, Rejected, UdDest},
        wr::CompletionHandler,
    };
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

kernel::sync::global_lock! {
    // SAFETY: initialised in `Conformance::init` before the client is registered.
    unsafe(uninit) static FOUND: Mutex<Option<DeviceRef>> = None;
}

/// Set while the module unloads, so a teardown knows why it happens.
static UNLOADING: Atomic<bool> = Atomic::new(false);

/// Finds the device under test when the IB core reports it: keeps a reference for the
/// suite, which module init runs once registration is done (not inside this callback,
/// with the IB core's locks held), and gives the device objects that live until it is
/// removed or the module unloads ([`resident::Resident`]).
struct Suite;

impl Client for Suite {
    type DeviceData = Option<resident::Resident>;

    fn add(device: &Device) -> Result<Self::DeviceData> {
        if device.name().as_str().as_bytes() != param::device().to_bytes() {
            return Ok(None);
        }
        *FOUND.lock() = Some(device.to_ref()?);
        if *module_parameters::bench.value() > 0 {
            return Ok(None);
        }
        let traffic = *module_parameters::traffic.value() != 0;
        match resident::Resident::new(device, traffic) {
            Ok(resident) => Ok(Some(resident)),
            Err(failure) => {
                report(device, "resident_setup", Err(failure));
                Ok(None)
            }
        }
    }

    fn remove(_device: &Device, data: Self::DeviceData) {
        if let Some(resident) = data {
            resident.teardown(UNLOADING.load(Relaxed));
        }
    }
}

impl From<kernel::alloc::AllocError> for Failure {
    fn from(_: kernel::alloc::AllocError) -> Self {
        Self::Verb(ENOMEM)
    }
}

#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn record(&mut self, device: &Device, case: &str, result: CaseResult) {
        if report(device, case, result) {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Prints the one result line per case that the scenario asserts; whether it passed.
pub(crate) fn report(device: &Device, case: &str, result: CaseResult) -> bool {
    let name = device.name();
    let passed = result.is_ok();
    match result {
        Ok(()) => pr_info!("{}: {}: PASS\n", name, case),
        Err(Failure::Verb(error)) => pr_info!("{}: {}: FAIL: verb error {:?}\n", name, case, error),
        Err(Failure::Check(what)) => pr_info!("{}: {}: FAIL: {}\n", name, case, what),
        Err(Failure::Status(what, status)) => {
            pr_info!("{}: {}: FAIL: {} completed with status {}\n", name, case, what, status)
        }
    }
    passed
}

rdma_core::ib_client!(Suite, c"tilde_conformance");

struct Conformance {
    _registration: Registration<Suite>,
}

impl kernel::Module for Conformance {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: called once, before the client that uses it is registered.
        unsafe { FOUND.init() };
        let registration = Registration::register()?;
        // `add` ran for every device present during registration; the suite runs here,
        // outside the IB core's callback.
        let found = FOUND.lock().take();
        let Some(device) = found else {
            pr_info!("{}: no such RDMA device\n", param::device());
            return Ok(Self { _registration: registration });
        };
        let ops = *module_parameters::bench.value();
        if ops > 0 {
            match setup(&device) {
                Ok(rig) => bench::run(&rig, ops),
                Err(error) => pr_info!("{}: bench: setup failed: {:?}\n", device.name(), error),
            }
        } else if *module_parameters::traffic.value() == 0 {
            let mut tally = Tally::default();
            match setup(&device) {
                Ok(rig) => {
                    let mut record = |case: &str, result| tally.record(&device, case, result);
                    run_cases(&rig, &mut record);
                    cm_cases::run(&rig, &mut record);
                }
                Err(error) => tally.record(&device, "setup", Err(Failure::Verb(error))),
            }
            pr_info!("{}: summary: {} passed, {} failed\n", device.name(), tally.passed, tally.failed);
        }
        Ok(Self { _registration: registration })
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        // The registration, dropped next, calls `remove` for the device under test.
        UNLOADING.store(true, Relaxed);
    }
}
