// SPDX-License-Identifier: GPL-2.0
//! Kernel-only cases of the verbs whose C API differs between the kernels tilde targets
//! (`rdma_core::sys::c_api`): each passes on every kernel by checking the form the binding
//! layer promises there, so a kernel where the layer picks the wrong one fails. They run
//! on the device under test like the shared cases; the host fabric has none of these
//! functions (nor bio_vecs).

use kernel::prelude::*;
use rdma_core::{
    dma::{BvecMapping, DmaDirection},
    mailbox::Mailbox,
    sys,
    sys::c_api::CQ_RESIZE,
    verbs::{SendOp, WcOpcode},
};

use crate::api::{CompletionQueue, DeviceRef, DmaBuffer, PollContext};
use crate::cases::{
    check, pattern, patterned, rc_pair, rc_pair_on, wait_ok, CaseResult, Failure, Rig, RNR_FOREVER,
};
use crate::sg_region::{Pages, PAGE};

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

/// Borrowed memory named by a bio_vec is the local side of a SEND and of a receive, with
/// no registration (`BvecMapping`: `ib_dma_map_bvec`, or `ib_dma_map_page` of the same
/// range where the kernel lacks it); a mapping the wrong way round is refused.
pub(crate) fn bvec_send_and_receive(rig: &Rig) -> CaseResult {
    const OFFSET: u32 = 512;
    const LEN: u32 = 1024;
    let pages = Pages::new()?;
    // Page 0 is sent from, page 1 received into, each at `OFFSET`.
    for i in 0..LEN as usize {
        pages.set(OFFSET as usize + i, pattern(40 + i));
    }
    let segment = |page| sys::bio_vec {
        bv_page: pages.page(page),
        bv_len: LEN,
        bv_offset: OFFSET,
    };
    // SAFETY: `pages` outlives both mappings (declared first, so dropped last, and the
    // mappings are dropped before it below).
    let outgoing = unsafe { BvecMapping::new(&rig.device, &segment(0), DmaDirection::ToDevice)? };
    // SAFETY: as above.
    let incoming = unsafe { BvecMapping::new(&rig.device, &segment(1), DmaDirection::FromDevice)? };
    let mut mailbox = Mailbox::new()?;
    let (a, b) = rc_pair(rig)?;
    let mut recv = mailbox.work_request(2, None)?;
    recv.replace_pages(Some(outgoing));
    let Err(mut refused) = b.post_recv(recv, 0, LEN as usize) else {
        return Err(Failure::Check(
            "a receive into pages mapped ToDevice was taken",
        ));
    };
    check(
        refused.error == EINVAL,
        "a wrong-way mapping was refused with another error",
    )?;
    let outgoing = refused.wr.replace_pages(Some(incoming));
    b.post_recv(refused.wr, 0, LEN as usize)?;
    let mut send = mailbox.work_request(1, None)?;
    send.replace_pages(outgoing);
    a.post_send(send, SendOp::Send, 0, LEN as usize)?;
    let mut sent = wait_ok(&mut mailbox, &rig.cq, 1, WcOpcode::Send)?;
    let mut received = wait_ok(&mut mailbox, &rig.cq, 2, WcOpcode::Recv)?;
    check(
        received.completion().byte_len == LEN,
        "the receive into the pages has the wrong length",
    )?;
    // Unmapped (for the CPU to read, where the DMA API bounces) before the check.
    drop(sent.replace_pages(None));
    drop(received.replace_pages(None));
    let landed =
        (0..LEN as usize).all(|i| pages.byte(PAGE + OFFSET as usize + i) == pattern(40 + i));
    check(landed, "the data sent from page 0 did not land in page 1")?;
    check(
        pages.byte(PAGE + OFFSET as usize - 1) == 0
            && pages.byte(PAGE + (OFFSET + LEN) as usize) == 0,
        "the receive wrote outside its bio_vec",
    )
}
