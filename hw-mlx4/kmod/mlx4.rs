// SPDX-License-Identifier: GPL-2.0
//! `tilde_mlx4.ko`: tilde's ConnectX-3 driver.
//!
//! A PCI driver for `15b3:1003` (`hca`): its probe brings the function up through
//! `hw_mlx4::bringup` (firmware, ICM, INIT_HCA, the EQs with the interrupt test, both
//! ports opened) and its remove closes the HCA and takes every page back. The IB device
//! over it is not registered yet (issue 17).
//!
//! The module also carries `hw_mlx4`'s post_send, post_recv, poll_cq and req_notify_cq
//! over the kernel's queue memory, barriers, atomics and UAR writes (`platform`). At load
//! it runs the fast path's self-test (`hw_mlx4::selftest`): the CPU plays the device over
//! the same queue memory and UAR page layout the hardware would use, and insmod fails if
//! any WQE, doorbell, CQE or arm request is not what the device expects.

use core::ptr::NonNull;

use hw_mlx4::fastpath::cq::{CompletionQueue, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, QueueConfigError, SendQueueCaps, SendQueueState};
use hw_mlx4::selftest::{self, Report, UarSeen};
use hw_mlx4::wire::{CqDoorbell, UAR_CQ_DOORBELL, UAR_SEND_DOORBELL};
use kernel::prelude::*;
use rdma_core::pci::Registration;

mod datapath;
mod hca;
mod ib;
mod platform;
mod wr_ids;

use hw_mlx4::ring::RingMemory;
use platform::{ring, KernelDoorbellRecord, KernelPlatform, QueueMemory, Uar};
use wr_ids::WrIds;

module! {
    type: TildeMlx4,
    name: "tilde_mlx4",
    description: "tilde ConnectX-3 (mlx4) InfiniBand driver (Rust)",
    license: "GPL",
}

/// Rounds of the self-test: 12,288 send and 4,096 receive WQEs, 128 laps of the CQ, 192 of
/// the send queue, 64 of the receive queue.
const SELFTEST_ROUNDS: u32 = 4096;
/// A UAR page's size.
const UAR_SIZE: usize = 4096;
const QPN: u32 = 0x48;
const CQN: u32 = 0x81;

rdma_core::pci_device_table!(TILDE_MLX4_PCI_IDS, "tilde_mlx4", [(0x15b3, 0x1003)]);

struct TildeMlx4 {
    _pci: Registration<hca::ConnectX3>,
}

impl kernel::Module for TildeMlx4 {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let report = fast_path_selftest()?;
        pr_info!(
            "fast path self-test passed: {} rounds, {} send and {} receive WQEs, {} completions, {} CQ laps, {} arms\n",
            report.rounds,
            report.send_wqes,
            report.recv_wqes,
            report.completions,
            report.cq_laps,
            report.arms
        );
        let pci = Registration::new(module, &TILDE_MLX4_PCI_IDS)?;
        pr_info!("loaded: PCI driver for ConnectX-3 (15b3:1003) registered\n");
        Ok(Self { _pci: pci })
    }
}

impl Drop for TildeMlx4 {
    fn drop(&mut self) {
        pr_info!("unloading\n");
    }
}

fn config_error(error: QueueConfigError) -> Error {
    pr_err!("self-test queue refused: {:?}\n", error);
    EINVAL
}

/// One RC QP and its CQ over kernel queue memory, with page memory standing in for the
/// UAR page, driven by `hw_mlx4::selftest::loopback`.
fn fast_path_selftest() -> Result<Report> {
    let uar_page = QueueMemory::new(UAR_SIZE)?;
    let base = NonNull::new(uar_page.as_ptr()).ok_or(EINVAL)?;
    // SAFETY: `uar_page` is page-sized memory that outlives `uar` (declared after it,
    // so dropped first).
    let uar = unsafe { Uar::new(base) };
    let caps = SendQueueCaps {
        max_sge: 2,
        max_inline: 28,
        signal_all: false,
    };
    let sq = SendQueueState::<KernelPlatform>::new(ring(6, 6)?, WrIds::new(64)?, QpType::Rc, caps)
        .map_err(config_error)?;
    let rq = RecvQueueState::new(ring(6, 4)?, WrIds::new(64)?, KernelDoorbellRecord::new()?)
        .map_err(config_error)?;
    let mut qp = QueuePairState::new(QPN, sq, rq);
    let doorbells = CqDoorbells {
        set_ci: KernelDoorbellRecord::new()?,
        arm: KernelDoorbellRecord::new()?,
    };
    let mut cq = CompletionQueue::new(CQN, ring(7, 5)?, doorbells).map_err(config_error)?;
    // The device's side of the page: each doorbell register rests at a value no doorbell
    // carries, and the device takes what the driver wrote since its last look, leaving
    // the register at rest again (the doorbell views are big-endian).
    const IDLE: u32 = u32::MAX;
    let registers = [UAR_SEND_DOORBELL, UAR_CQ_DOORBELL, UAR_CQ_DOORBELL + 4];
    for offset in registers {
        uar_page.write_u32(offset, IDLE).ok_or(EINVAL)?;
    }
    let take = |offset| {
        let raw = uar_page.read_u32(offset).unwrap_or(IDLE);
        let _ = uar_page.write_u32(offset, IDLE);
        raw
    };
    let seen = || {
        let send = Some(take(UAR_SEND_DOORBELL)).filter(|&raw| raw != IDLE);
        let words = [take(UAR_CQ_DOORBELL), take(UAR_CQ_DOORBELL + 4)];
        let cq = (words != [IDLE, IDLE]).then(|| -> CqDoorbell { zerocopy::transmute!(words) });
        UarSeen {
            send: send.map(u32::from_be),
            cq,
        }
    };
    selftest::loopback(&mut qp, &mut cq, &uar, seen, SELFTEST_ROUNDS).map_err(|error| {
        pr_err!("fast path self-test failed: {:?}\n", error);
        EIO
    })
}
