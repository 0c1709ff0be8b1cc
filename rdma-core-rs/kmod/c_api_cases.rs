// SPDX-License-Identifier: GPL-2.0
//! Kernel-only cases of the verbs whose C API differs between the kernels tilde targets
//! (`rdma_core::sys::c_api`): each passes on every kernel by checking the form the binding
//! layer promises there, so a kernel where the layer picks the wrong one fails.

use kernel::prelude::*;
use rdma_core::{
    mailbox::Mailbox,
    sys::c_api::CQ_RESIZE,
    verbs::{SendOp, WcOpcode},
};

use crate::api::{CompletionQueue, DeviceRef, DmaBuffer, PollContext};
use crate::cases::{check, patterned, rc_pair_on, wait_ok, CaseResult, Failure, Rig, RNR_FOREVER};

/// The device under test is found by its own name, and a name no device has is `ENODEV`
/// (through `ib_device_get_by_name` where the IB core exports it, else the layer's own
/// lookup).
pub(crate) fn device_by_name(rig: &Rig) -> CaseResult {
    let name = rig.device.name();
    let found = DeviceRef::by_name(name.as_c_str())?;
    check(
        found.is(&rig.device),
        "the device found by its name is another one",
    )?;
    drop(found);
    match DeviceRef::by_name(c"tilde_no_such_device") {
        Err(error) if error == ENODEV => Ok(()),
        Err(error) => Err(Failure::Verb(error)),
        Ok(_) => Err(Failure::Check(
            "a device was found for a name no device has",
        )),
    }
}

/// A CQ too small for an RC pair grows until the pair fits, and carries its traffic;
/// it never shrinks. On a kernel without `ib_resize_cq` the resize is `EOPNOTSUPP` and
/// the CQ is unchanged.
pub(crate) fn cq_resize(rig: &Rig) -> CaseResult {
    let cq = CompletionQueue::new(&rig.device, 16, PollContext::Direct)?;
    let small = cq.capacity();
    // A pair reserves its send and receive queues' depth twice over, far more than 16.
    check(
        rc_pair_on(rig, &cq, RNR_FOREVER).is_err(),
        "an RC pair fit on a CQ too small for it",
    )?;
    check(
        cq.resize(small.saturating_sub(1)) == Err(EINVAL),
        "a CQ shrank",
    )?;
    let resized = cq.resize(256);
    if !CQ_RESIZE {
        check(
            resized == Err(rdma_core::kernel_api::errno(kernel::bindings::EOPNOTSUPP)),
            "a resize on a kernel without ib_resize_cq did not say EOPNOTSUPP",
        )?;
        return check(cq.capacity() == small, "a refused resize changed the CQ");
    }
    resized?;
    check(cq.capacity() >= 256, "the resized CQ is smaller than asked")?;
    let mut mailbox = Mailbox::new()?;
    let (a, b) = rc_pair_on(rig, &cq, RNR_FOREVER)?;
    let send = mailbox.work_request(1, Some(patterned(&rig.device, 4096, 33)?))?;
    let recv = mailbox.work_request(2, Some(DmaBuffer::new(&rig.device, 4096)?))?;
    b.post_recv(recv, 0, 4096)?;
    a.post_send(send, SendOp::Send, 0, 4096)?;
    wait_ok(&mut mailbox, &cq, 1, WcOpcode::Send)?;
    let recv = wait_ok(&mut mailbox, &cq, 2, WcOpcode::Recv)?;
    check(
        recv.completion().byte_len == 4096,
        "the receive on the resized CQ has the wrong length",
    )
}
