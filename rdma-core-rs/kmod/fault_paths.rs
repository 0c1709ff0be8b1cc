// SPDX-License-Identifier: GPL-2.0
//! The object creation paths fault injection runs: writing a path's name to the module's
//! `create` parameter (conformance_param.c) makes that object on the device under test
//! and destroys it again, in the writing task. The `fault-inject` VM scenario fails the
//! 1st, 2nd, ... allocation of each (`/proc/<pid>/task/<tid>/fail-nth`); every failure
//! must come back to the writer as an error, with nothing leaked.

use core::net::{Ipv4Addr, SocketAddrV4};

use kernel::prelude::*;
use rdma_core::device::{Device, DeviceRef};

use crate::api::{CompletionQueue, PollContext, ProtectionDomain, QueuePair};
use crate::cases::{listener, loopback_ah, setup, zeroed_region, Failure, CAPS};
use crate::param;

/// A protection domain.
fn pd(device: &Device) -> Result {
    ProtectionDomain::new(device).map(drop)
}

/// A completion queue.
fn cq(device: &Device) -> Result {
    CompletionQueue::new(device, 256, PollContext::Direct).map(drop)
}

/// An RC and a UD QP, with their PD and CQ.
fn qp(device: &Device) -> Result {
    let rig = setup(device, None)?;
    let rc = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let ud = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    drop((rc, ud));
    Ok(())
}

/// A memory region over a DMA buffer, with its PD.
fn mr(device: &Device) -> Result {
    let rig = setup(device, None)?;
    zeroed_region(&rig, &rig.pd).map(drop).map_err(verb)
}

/// An address handle to the port itself, with its PD.
fn ah(device: &Device) -> Result {
    let rig = setup(device, None)?;
    loopback_ah(&rig).map(drop).map_err(verb)
}

/// An RDMA CM id bound to a port of every address, listening.
fn cm_id(_device: &Device) -> Result {
    listener(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7174))
        .map(drop)
        .map_err(verb)
}

/// The error a failed path returns: the verb's, or EIO for a check the case helpers make.
fn verb(failure: Failure) -> Error {
    match failure {
        Failure::Verb(error) => error,
        _ => EIO,
    }
}

/// The paths, in the order of `create_paths` in conformance_param.c.
const PATHS: [fn(&Device) -> Result; 6] = [pd, cq, qp, mr, ah, cm_id];

/// Runs path number `path` on the device the `device` parameter names; 0 or a negative
/// errno for the write.
#[no_mangle]
extern "C" fn tilde_conformance_create(path: u32) -> i32 {
    let run = || -> Result {
        let create = PATHS.get(path as usize).ok_or(EINVAL)?;
        let device = DeviceRef::by_name(param::device())?;
        create(&device)
    };
    match run() {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}
