// SPDX-License-Identifier: GPL-2.0
//! The ConnectX-3 PCI function: the driver's probe and remove, and the bring-up core's
//! platform over the function's BARs and coherent DMA memory.
//!
//! `hw_mlx4::bringup` is sans-IO: it reaches the device through three traits. Here they
//! are the kernel's: `CommandEdge` is BAR0 (the HCR and the ownership semaphore, through
//! `ioread32be`/`iowrite32be`), the monotonic clock, `cond_resched` and sleeps;
//! `HostMemory` is `dma_alloc_coherent`; `EventEdge` is BAR2 (EQ doorbells) and
//! `dma_rmb`; `ResetEdge` (the function reset every probe begins with) is
//! `pci_save_state`, config reads and `pci_restore_state`. Everything is reached through `rdma_core::pci`'s safe types, so this file
//! has no `unsafe`.
//!
//! Each EQ has its MSI-X vector (the async EQ vector 0, completion EQ `i` vector `i + 1`).
//! Their handlers count interrupts so far: the bring-up walks its EQs itself when it
//! waits for a command, and the probe fails, as upstream's `mlx4_test_interrupts` does,
//! unless the NOP's command completion arrived as an interrupt on the async EQ's vector.

use core::ffi::CStr;
use core::time::Duration;

use hw_mlx4::bringup::cmd::CommandEdge;
use hw_mlx4::bringup::eq::EventEdge;
use hw_mlx4::bringup::memory::HostMemory;
use hw_mlx4::bringup::probe::{DeviceInfo, Mlx4Core, ProbeConfig};
use hw_mlx4::bringup::profile::Profile;
use hw_mlx4::bringup::reset::ResetEdge;
use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::kernel_api::atomic::{Atomic, Relaxed};
use rdma_core::kernel_api::{self, barrier};
use rdma_core::pci::{self, Bar, Coherent, Device, DeviceRef, IrqHandler, IrqVectors};

use crate::datapath;

/// The ICM page and the unit `HostMemory` allocates in.
const PAGE_SIZE: usize = 4096;

/// The PortInfo:CapabilityMask SET_PORT gives each port: what `ibstat` shows on a
/// ConnectX-3 port before the IB CM sets IsCommunicationManagementSupported (upstream
/// reads the firmware's defaults back through MAD_IFC, `mlx4_get_port_ib_caps`).
const IB_CAP_MASK: u32 = 0x0251_0868;

/// Completion EQs, one per MSI-X vector after the async EQ's.
const COMP_EQS: u32 = 2;

/// MSI-X vectors: the async EQ's and the completion EQs'.
const VECTORS: u32 = 1 + COMP_EQS;

/// How long the probe waits for the async EQ's first interrupt after its commands
/// completed by events (the EQE may be seen before the MSI-X message lands).
const INTERRUPT_TEST_TIMEOUT: Duration = Duration::from_secs(1);

/// tilde_mlx4 as a PCI driver.
pub(crate) struct ConnectX3;

/// One bound ConnectX-3: its BARs, its interrupts and the bring-up core. Dropped in this
/// order after the remove closed the HCA: the handlers are freed after nothing can
/// raise an interrupt.
pub(crate) struct Hca {
    dev: DeviceRef,
    bar0: Bar,
    bar2: Arc<Bar>,
    core: KBox<Mlx4Core<Block>>,
    irqs: IrqVectors<EqInterrupt>,
}

/// An EQ's MSI-X vector: the interrupts it took.
pub(crate) struct EqInterrupt {
    count: Atomic<u32>,
}

impl IrqHandler for EqInterrupt {
    fn handle(&self) -> bool {
        self.count.add(1, Relaxed);
        true
    }
}

/// The bring-up core's platform for one call: the function's registers and memory.
pub(crate) struct Edge<'a> {
    dev: &'a Device,
    bar0: &'a Bar,
    bar2: &'a Bar,
}

impl CommandEdge for Edge<'_> {
    fn bar0_read_be32(&mut self, offset: u64) -> u32 {
        // Offsets are the driver's own constants; one outside BAR0 reads as a function
        // that fell off the bus (all ones), which every caller already treats as failure.
        usize::try_from(offset)
            .ok()
            .and_then(|offset| self.bar0.read_be32(offset))
            .unwrap_or(u32::MAX)
    }

    fn bar0_write_be32(&mut self, offset: u64, value: u32) {
        let written = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.bar0.write_be32(offset, value));
        if written.is_none() {
            pr_err!(
                "{}: BAR0 write at {:#x} outside the BAR\n",
                self.dev.name(),
                offset
            );
        }
    }

    fn write_barrier(&mut self) {
        barrier::wmb();
    }

    fn now_us(&mut self) -> u64 {
        u64::try_from(kernel_api::monotonic().as_micros()).unwrap_or(u64::MAX)
    }

    fn relax(&mut self) {
        kernel_api::cond_resched();
    }

    fn sleep_ms(&mut self, ms: u32) {
        kernel_api::sleep(Duration::from_millis(ms.into()));
    }
}

impl EventEdge for Edge<'_> {
    fn bar2_write_be32(&mut self, offset: u64, value: u32) {
        let written = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.bar2.write_be32(offset, value));
        if written.is_none() {
            pr_err!(
                "{}: BAR2 write at {:#x} outside the BAR\n",
                self.dev.name(),
                offset
            );
        }
    }

    fn read_barrier(&mut self) {
        barrier::dma_rmb();
    }
}

/// A block the bring-up core holds, shared with the fast path's queues inside it (an
/// `Arc`: the memory stays until both let go; the device is done with it once the core
/// freed it, its object destroyed by the firmware first).
pub(crate) type Block = Arc<Coherent>;

impl ResetEdge for Edge<'_> {
    fn save_config(&mut self) -> bool {
        self.dev.save_state().is_ok()
    }

    fn read_vendor_id(&mut self) -> u16 {
        // PCI_VENDOR_ID; a failed read is a function that is not there yet.
        self.dev.read_config_u16(0).unwrap_or(u16::MAX)
    }

    fn restore_config(&mut self) -> bool {
        self.dev.restore_state();
        true
    }
}

impl HostMemory for Edge<'_> {
    type Block = Block;

    fn alloc(&mut self, log_pages: u32) -> Option<Block> {
        let size = PAGE_SIZE.checked_shl(log_pages)?;
        let block = self.dev.alloc_coherent(size).ok()?;
        // `dma_alloc_coherent` aligns to the allocation's order; the device needs it.
        if block.bus_address() % size as u64 != 0 {
            return None;
        }
        Arc::new(block, GFP_KERNEL).ok()
    }

    fn bus_address(&self, block: &Block) -> u64 {
        block.bus_address()
    }

    fn write(&mut self, block: &Block, offset: usize, data: &[u8]) -> bool {
        block.write(offset, data).is_some()
    }

    fn read(&mut self, block: &Block, offset: usize, buf: &mut [u8]) -> bool {
        block.read(offset, buf).is_some()
    }

    fn free(&mut self, block: Block) {
        drop(block);
    }
}

/// A core holding nothing, as a constant, written into its allocation: built at run time,
/// or passed to `KBox::new`, its ~20 KiB would be made on the kernel stack first.
const EMPTY_CORE: Mlx4Core<Block> = Mlx4Core::new();

impl pci::Driver for ConnectX3 {
    type Data = Hca;

    const NAME: &'static CStr = c"tilde_mlx4";

    fn probe(dev: &Device) -> Result<Hca> {
        dev.set_dma_mask(64)?;
        dev.set_master();
        let bar0 = dev.map_bar(0)?;
        let bar2 = Arc::new(dev.map_bar(2)?, GFP_KERNEL)?;
        // One vector per EQ: the async EQ's and one per completion EQ.
        let mut irqs = dev
            .alloc_msix(VECTORS, VECTORS)
            .inspect_err(|e| pr_err!("{}: no MSI-X vectors: {:?}\n", dev.name(), e))?;
        for vector in 0..irqs.count() {
            let handler = EqInterrupt {
                count: Atomic::new(0),
            };
            irqs.request(vector, c"tilde_mlx4", Arc::new(handler, GFP_KERNEL)?)?;
        }
        let mut core = KBox::write(KBox::new_uninit(GFP_KERNEL)?, EMPTY_CORE);
        let config = ProbeConfig {
            profile: Profile::DEFAULT,
            uar_bar_size: bar2.len() as u64,
            ib_cap_mask: IB_CAP_MASK,
            comp_eqs: COMP_EQS,
        };
        let mut edge = Edge {
            dev,
            bar0: &bar0,
            bar2: &bar2,
        };
        if let Err(error) = core.probe(&mut edge, &config) {
            pr_err!("{}: probe failed: {:?}\n", dev.name(), error);
            if let Some(unwind) = core.unwind_error() {
                pr_err!(
                    "{}: and its unwinding failed at {:?}: {:?}; {} chunks left with the device\n",
                    dev.name(),
                    unwind.step,
                    unwind.error,
                    unwind.leaked_chunks
                );
            }
            return Err(EIO);
        }
        let interrupts = async_eq_interrupts(&irqs);
        if interrupts == 0 {
            pr_err!(
                "{}: interrupt test failed: the NOP completed but MSI-X vector 0 never fired\n",
                dev.name()
            );
            if let Err(error) = core.teardown(&mut edge) {
                pr_err!("{}: teardown failed: {:?}\n", dev.name(), error);
            }
            return Err(EIO);
        }
        let completion_interrupts = || irqs.handler(1).map_or(0, |h| h.count.load(Relaxed));
        let checked =
            datapath::send_between_two_qps(&mut core, &mut edge, &bar2, &completion_interrupts);
        let moved = match checked {
            Ok(moved) => moved,
            Err(error) => {
                pr_err!("{}: data-path check failed\n", dev.name());
                if let Err(error) = core.teardown(&mut edge) {
                    pr_err!("{}: teardown failed: {:?}\n", dev.name(), error);
                }
                return Err(error);
            }
        };
        if let Some(info) = core.info() {
            report(dev, info, core.pages_given());
        }
        pr_info!(
            "{}: data path: {} bytes sent from QP {:#x} to QP {:#x} by the fast path, completion event for CQ {:#x} by MSI-X\n",
            dev.name(),
            moved.bytes,
            moved.sender,
            moved.receiver,
            moved.cqn
        );
        pr_info!(
            "{}: MSI-X: {} vectors, {} interrupts on the async EQ's by the probe's commands\n",
            dev.name(),
            irqs.count(),
            interrupts
        );
        Ok(Hca {
            dev: dev.get(),
            bar0,
            bar2,
            core,
            irqs,
        })
    }

    fn remove(dev: &Device, hca: &mut Hca) {
        let count = |vector| {
            hca.irqs
                .handler(vector)
                .map_or(0, |h| h.count.load(Relaxed))
        };
        pr_info!(
            "{}: interrupts taken: async EQ {}, completion EQs {} and {}\n",
            dev.name(),
            count(0),
            count(1),
            count(2)
        );
        let mut edge = Edge {
            dev: &hca.dev,
            bar0: &hca.bar0,
            bar2: &hca.bar2,
        };
        match hca.core.teardown(&mut edge) {
            Ok(()) => pr_info!("{}: HCA closed, every page given back\n", dev.name()),
            Err(error) => pr_err!(
                "{}: teardown failed at {:?}: {:?}; {} chunks left with the device\n",
                dev.name(),
                error.step,
                error.error,
                error.leaked_chunks
            ),
        }
    }
}

/// The async EQ's interrupts so far, waiting up to [`INTERRUPT_TEST_TIMEOUT`] for the
/// first.
fn async_eq_interrupts(irqs: &IrqVectors<EqInterrupt>) -> u32 {
    let count = || irqs.handler(0).map_or(0, |h| h.count.load(Relaxed));
    let deadline = kernel_api::monotonic() + INTERRUPT_TEST_TIMEOUT;
    while count() == 0 && kernel_api::monotonic() < deadline {
        kernel_api::sleep(Duration::from_millis(1));
    }
    count()
}

/// The dmesg lines a probe leaves: firmware, board, what the device was given, ports.
fn report(dev: &Device, info: &DeviceInfo, (fw_pages, aux_pages, icm_pages): (u64, u64, u64)) {
    let (major, minor, sub) = info.fw.version;
    pr_info!(
        "{}: ConnectX-3 firmware {}.{}.{}, command interface revision {}, board {}\n",
        dev.name(),
        major,
        minor,
        sub,
        info.fw.cmd_if_rev,
        info.adapter.board_id_str()
    );
    pr_info!(
        "{}: HCA initialized: {} firmware, {} auxiliary and {} ICM pages, core clock {} MHz\n",
        dev.name(),
        fw_pages,
        aux_pages,
        icm_pages,
        info.core_clock_mhz
    );
    let comp_eqs = info.comp_eqns.iter().flatten().count();
    pr_info!(
        "{}: async EQ {} and {} completion EQs armed, commands by events, driver UAR {}\n",
        dev.name(),
        info.async_eqn,
        comp_eqs,
        info.driver_uar
    );
    for port in info.ports.iter().flatten() {
        pr_info!(
            "{}: port {} open: InfiniBand, MTU cap {}, {} GIDs, {} P_Keys, {} VLs\n",
            dev.name(),
            port.port,
            port.ib_mtu_cap,
            port.gid_table_len,
            port.pkey_table_len,
            port.max_vl
        );
    }
}
