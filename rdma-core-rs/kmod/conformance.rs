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
    device::{Device, DeviceRef},
    kernel_api::atomic::{Atomic, Full, Relaxed},
    verbs::{Decoded, PortState},
};

use cases::{run_cases, setup, CaseResult, Failure};

module! {
    type: Conformance,
    name: "tilde_verbs_conformance",
    description: "tilde verbs conformance suite (Rust)",
    license: "GPL",
}

mod bench;
mod c_api_cases;
#[path = "../conformance/cases.rs"]
mod cases;
mod fault_paths;
mod resident;
mod sg_region;

/// The kernel backend, under the names the shared cases use.
mod api {
    pub(crate) use kernel::error::{code::EINVAL, Error, Result};
    pub(crate) use rdma_core::kernel_api::timed_out;
    pub(crate) use kernel::sync::Arc;
    pub(crate) use rdma_core::{
        ah::AddressHandle,
        cm::{CmEvent, CmId, ConnParam},
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

/// The module's parameters, declared in C (`conformance_param.c`): the kernels tilde
/// targets disagree on what Rust's `module!` takes, and every one has `module_param`.
mod param {
    extern "C" {
        fn tilde_conformance_device_is(name: *const u8, len: usize) -> bool;
        fn tilde_conformance_device() -> *const core::ffi::c_char;
        fn tilde_conformance_cases() -> bool;
        fn tilde_conformance_bench() -> u32;
        fn tilde_conformance_traffic() -> bool;
        fn tilde_conformance_cm_addr(addr: *mut [u8; 4]) -> bool;
    }

    /// Whether `name` is the RDMA device the `device` parameter names.
    pub(crate) fn device_is(name: &str) -> bool {
        // SAFETY: `name` is valid for `len` bytes during the call, which only reads them.
        unsafe { tilde_conformance_device_is(name.as_ptr(), name.len()) }
    }

    /// The `device` parameter.
    pub(crate) fn device() -> &'static core::ffi::CStr {
        // `core`'s `from_ptr` on every kernel, as in `rdma_core::pci` (7.x's lints prefer
        // the kernel crate's `from_char_ptr`, which 6.12 has differently).
        #[allow(clippy::disallowed_methods)]
        // SAFETY: the parameter is a NUL-terminated string that is never written after
        // load (0444) and lives as long as the module.
        unsafe {
            core::ffi::CStr::from_ptr(tilde_conformance_device())
        }
    }

    /// `cases`: whether module init runs the cases (or only `create` makes objects).
    pub(crate) fn cases() -> bool {
        // SAFETY: reads a module parameter, fixed at load time.
        unsafe { tilde_conformance_cases() }
    }

    /// `bench`: 0 runs the cases; N runs the safe-vs-raw benchmark with N operations.
    pub(crate) fn bench() -> u32 {
        // SAFETY: reads a module parameter, fixed at load time.
        unsafe { tilde_conformance_bench() }
    }

    /// `cm_addr`: the IPoIB address the RDMA CM cases use on an InfiniBand port.
    pub(crate) fn cm_addr() -> Option<core::net::Ipv4Addr> {
        let mut addr = [0u8; 4];
        // SAFETY: `addr` is valid for 4 bytes of writes during the call.
        unsafe { tilde_conformance_cm_addr(&mut addr) }.then(|| core::net::Ipv4Addr::from(addr))
    }

    /// `traffic`: keep RC traffic going instead of running the cases.
    pub(crate) fn traffic() -> bool {
        // SAFETY: reads a module parameter, fixed at load time.
        unsafe { tilde_conformance_traffic() }
    }
}

/// The device under test, as `add` found it: a leaked `KBox<DeviceRef>` that module init
/// takes back (`add` runs inside the client's registration, which init performs).
static FOUND: Atomic<*mut DeviceRef> = Atomic::new(core::ptr::null_mut());

/// Takes the device `add` found, if any.
fn take_found() -> Option<DeviceRef> {
    let found = FOUND.xchg(core::ptr::null_mut(), Full);
    // SAFETY: a non-null `FOUND` came from `KBox::into_raw` in `add`, and the exchange
    // gives it to this caller alone.
    (!found.is_null()).then(|| KBox::into_inner(unsafe { KBox::from_raw(found) }))
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
        if !param::device_is(device.name().as_str()) {
            return Ok(None);
        }
        let found = KBox::into_raw(KBox::new(device.to_ref()?, GFP_KERNEL)?);
        let earlier = FOUND.xchg(found, Full);
        if !earlier.is_null() {
            // SAFETY: as in `take_found`: the exchange gave the earlier one to us.
            drop(unsafe { KBox::from_raw(earlier) });
        }
        if param::bench() > 0 || !param::cases() {
            return Ok(None);
        }
        // A device registered again after a reset comes with its ports down until a
        // subnet manager sweeps them: no connection can be made on it yet.
        let state = device.query_port(1)?.state;
        if !matches!(state, Decoded::Known(PortState::Active)) {
            pr_info!(
                "{}: resident: port 1 is {}: no resident QPs\n",
                device.name(),
                state
            );
            return Ok(None);
        }
        let traffic = param::traffic();
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
    skipped: u32,
}

impl Tally {
    fn record(&mut self, device: &Device, case: &str, result: CaseResult) {
        let skipped = matches!(result, Err(Failure::Skipped(_)));
        if report(device, case, result) {
            self.passed += 1;
        } else if skipped {
            self.skipped += 1;
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
        Err(Failure::Skipped(why)) => pr_info!("{}: {}: SKIP: {}\n", name, case, why),
    }
    passed
}

rdma_core::ib_client!(Suite, c"tilde_conformance");

struct Conformance {
    _registration: Registration<Suite>,
}

impl kernel::Module for Conformance {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let registration = Registration::register()?;
        // `add` ran for every device present during registration; the suite runs here,
        // outside the IB core's callback.
        let found = take_found();
        let Some(device) = found else {
            pr_info!("no RDMA device has the name the device parameter gives\n");
            return Ok(Self { _registration: registration });
        };
        let ops = param::bench();
        if ops > 0 {
            match setup(&device, param::cm_addr()) {
                Ok(rig) => bench::run(&rig, ops),
                Err(error) => pr_info!("{}: bench: setup failed: {:?}\n", device.name(), error),
            }
        } else if !param::traffic() && param::cases() {
            let mut tally = Tally::default();
            match setup(&device, param::cm_addr()) {
                Ok(rig) => {
                    let mut record = |case: &str, result| tally.record(&device, case, result);
                    run_cases(&rig, &mut record);
                    record(
                        "sg_region_lends_pages_until_invalidated",
                        sg_region::sg_region_lends_pages_until_invalidated(&rig),
                    );
                    record("device_by_name", c_api_cases::device_by_name(&rig));
                    record("cq_resize", c_api_cases::cq_resize(&rig));
                    record(
                        "bvec_send_and_receive",
                        c_api_cases::bvec_send_and_receive(&rig),
                    );
                }
                Err(error) => tally.record(&device, "setup", Err(Failure::Verb(error))),
            }
            pr_info!(
                "{}: summary: {} passed, {} failed, {} skipped\n",
                device.name(),
                tally.passed,
                tally.failed,
                tally.skipped
            );
        }
        Ok(Self { _registration: registration })
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        // The registration, dropped next, calls `remove` for the device under test.
        UNLOADING.store(true, Relaxed);
        // A device `add` found after init took it (none in the scenarios) is let go.
        drop(take_found());
    }
}
