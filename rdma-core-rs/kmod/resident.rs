// SPDX-License-Identifier: GPL-2.0
//! Objects that live on the device under test from the client's `add` until its
//! `remove`: the device-removal and unload cases.
//!
//! Idle, an RC pair has receives posted that nothing completes until the teardown drains
//! them. With traffic, the pair's CQ is delivered from a workqueue and each completion
//! handler posts its WR again, so SENDs keep flowing until the device is removed
//! (`rdma link delete`) or the module unloads (`rmmod`). Either way the teardown must hand
//! every WR back and leave dmesg clean.

use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::{
    kernel_api::atomic::{Atomic, Relaxed},
    cq::{CompletionQueue, PollContext},
    device::{Device, DeviceRef},
    dma::DmaBuffer,
    qp::{QueuePair, Queues, SendOp},
    verbs::WcStatus,
    wr::{CompletionHandler, WorkRequest},
};

use crate::cases::{check, patterned, rc_pair_on, setup, Outcome, RNR_FOREVER};
use crate::report;

const MESSAGE: usize = 64;
const RECEIVES: u32 = 16;
const SENDS: u32 = 4;

struct Counters {
    /// WRs made and posted.
    created: Atomic<u32>,
    /// Successful completions.
    completed: Atomic<u32>,
    /// WRs that came back for good (flushed, or refused when posted again).
    handed_back: Atomic<u32>,
}

/// The data of the resident WRs: the counters, and which queue the WR goes back to.
struct Traffic {
    counters: Arc<Counters>,
    send: bool,
}

impl CompletionHandler for Traffic {
    fn complete(wr: KBox<WorkRequest<Self>>, queues: &Queues) {
        let counters = wr.data().counters.clone();
        if wr.completion().status != WcStatus::Success {
            counters.handed_back.add(1, Relaxed);
            return;
        }
        counters.completed.add(1, Relaxed);
        let reposted = if wr.data().send {
            queues.post_send(wr, SendOp::Send, 0, MESSAGE)
        } else {
            queues.post_recv(wr, 0, MESSAGE)
        };
        if reposted.is_err() {
            // The QP drains: the WR is back for good.
            counters.handed_back.add(1, Relaxed);
        }
    }
}

/// The resident objects of the device under test.
pub(crate) struct Resident {
    device: DeviceRef,
    traffic: bool,
    counters: Arc<Counters>,
    qps: Option<(QueuePair, QueuePair)>,
}

impl Resident {
    pub(crate) fn new(device: &Device, traffic: bool) -> Outcome<Self> {
        let rig = setup(device, None)?;
        let cq = if traffic {
            CompletionQueue::new(device, 256, PollContext::Workqueue)?
        } else {
            rig.cq.clone()
        };
        let (a, b) = rc_pair_on(&rig, &cq, RNR_FOREVER)?;
        let counters = Arc::new(
            Counters { created: Atomic::new(0), completed: Atomic::new(0), handed_back: Atomic::new(0) },
            GFP_KERNEL,
        )?;
        for _ in 0..RECEIVES {
            let data = Traffic { counters: counters.clone(), send: false };
            b.post_recv(WorkRequest::with_buffer(DmaBuffer::new(device, MESSAGE)?, data)?, 0, MESSAGE)?;
            counters.created.add(1, Relaxed);
        }
        if traffic {
            for _ in 0..SENDS {
                let data = Traffic { counters: counters.clone(), send: true };
                a.post_send(WorkRequest::with_buffer(patterned(device, MESSAGE, 0)?, data)?, SendOp::Send, 0, MESSAGE)?;
                counters.created.add(1, Relaxed);
            }
        }
        pr_info!(
            "{}: resident: QPs {} and {} up, {} WRs posted{}\n",
            device.name(),
            a.qp_num(),
            b.qp_num(),
            counters.created.load(Relaxed),
            if traffic { ", traffic running" } else { "" }
        );
        Ok(Self { device: device.to_ref()?, traffic, counters, qps: Some((a, b)) })
    }

    /// Drops the QPs (which drains them) and reports whether every WR came back.
    pub(crate) fn teardown(mut self, unloading: bool) {
        let completed = self.counters.completed.load(Relaxed);
        drop(self.qps.take());
        let created = self.counters.created.load(Relaxed);
        let handed_back = self.counters.handed_back.load(Relaxed);
        let case = match (unloading, self.traffic) {
            (false, false) => "device_removal_with_live_qps",
            (false, true) => "device_removal_with_traffic_in_flight",
            (true, false) => "unload_with_live_qps",
            (true, true) => "unload_with_traffic_in_flight",
        };
        pr_info!(
            "{}: {}: {} completions before teardown, {} of {} WRs handed back\n",
            self.device.name(),
            case,
            completed,
            handed_back,
            created
        );
        let result = check(handed_back == created, "not every WR was handed back by the teardown")
            .and_then(|()| check(!self.traffic || completed > 0, "no traffic flowed before the teardown"));
        report(&self.device, case, result);
    }
}
