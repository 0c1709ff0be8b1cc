// SPDX-License-Identifier: GPL-2.0
//! The verbs conformance cases against the host backend (the software fabric): the same
//! cases the kernel module runs over rxe, from the same source.

#[path = "../conformance/cases.rs"]
#[allow(dead_code)]
mod cases;

/// The fabric, under the names the shared cases use.
mod api {
    pub(crate) use rdma_core::fabric::cm::{CmEvent, CmId, ConnParam};
    pub(crate) use rdma_core::fabric::timed_out;
    pub(crate) use rdma_core::fabric::{
        AddressHandle, CompletionHandler, CompletionQueue, Device, DeviceRef, DmaBuffer, Error,
        Mailbox, MemoryRegion, PollContext, ProtectionDomain, QueuePair, Rejected, Result,
        ReturnedWr, UdDest, EINVAL,
    };
    pub(crate) use std::sync::Arc;
}

use cases::Failure;
use rdma_core::fabric::{Fabric, LiveObjects};

#[test]
fn every_case_passes_on_the_fabric() {
    let fabric = Fabric::new();
    let device = fabric.add_device("fab0", [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let rig = cases::setup(&device, None).expect("rig");
    let mut failed = Vec::new();
    let mut ran = 0;
    cases::run_cases(&rig, &mut |case, result| {
        ran += 1;
        match result {
            Ok(()) => println!("{case}: PASS"),
            Err(Failure::Verb(error)) => failed.push(format!("{case}: verb error {error:?}")),
            Err(Failure::Check(what)) => failed.push(format!("{case}: {what}")),
            Err(Failure::Status(what, status)) => {
                failed.push(format!("{case}: {what} completed with status {status}"))
            }
            Err(Failure::Skipped(why)) => failed.push(format!("{case}: skipped: {why}")),
        }
    });
    assert!(
        failed.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(ran, 33);
    // Every case dropped what it made: no QP or region outlives its handle.
    drop(rig);
    assert_eq!(fabric.live_objects(), LiveObjects { qps: 0, regions: 0 });
}
