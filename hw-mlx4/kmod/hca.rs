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
use hw_mlx4::bringup::eq::{EqEvent, EventEdge, EventQueue};
use hw_mlx4::bringup::memory::HostMemory;
use hw_mlx4::bringup::probe::{DeviceInfo, Mlx4Core, ProbeConfig};
use hw_mlx4::bringup::profile::Profile;
use hw_mlx4::bringup::reset::ResetEdge;
use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::kernel_api::atomic::{Atomic, Relaxed};
use rdma_core::kernel_api::{self, barrier};
use rdma_core::pci::{self, Bar, Coherent, Device, DeviceRef, IrqHandler, IrqVectors};
use rdma_core::sync::{IrqSpinLock, Mutex};
use rdma_core::work::{DelayedWork, WorkHandler};

use crate::datapath::{self, CompletionEvents};
use crate::ib::{CqTable, Mlx4Ib};

/// The IB device over the HCA while it is registered, which the remove and the
/// catastrophic error poll unregister (before the HCA goes away under it).
type IbSlot = Mutex<Option<rdma_core::driver::Registration<Mlx4Ib>>>;

/// The ICM page and the unit `HostMemory` allocates in.
const PAGE_SIZE: usize = 4096;

/// The PortInfo:CapabilityMask SET_PORT gives each port: what `ibstat` shows on a
/// ConnectX-3 port before the IB CM sets IsCommunicationManagementSupported (upstream
/// reads the firmware's defaults back through MAD_IFC, `mlx4_get_port_ib_caps`).
const IB_CAP_MASK: u32 = 0x0251_0868;

/// Completion EQs, one per MSI-X vector after the async EQ's.
pub(crate) const COMP_EQS: u32 = 2;

/// MSI-X vectors: the async EQ's and the completion EQs'.
const VECTORS: u32 = 1 + COMP_EQS;

/// How long the probe waits for the async EQ's first interrupt after its commands
/// completed by events (the EQE may be seen before the MSI-X message lands).
const INTERRUPT_TEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the catastrophic error buffer is polled (`MLX4_CATAS_POLL_INTERVAL`).
const CATAS_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// tilde_mlx4 as a PCI driver.
pub(crate) struct ConnectX3;

/// One bound ConnectX-3: the catastrophic error poll, and what it shares with it.
pub(crate) struct Hca {
    /// Cancelled first at remove (it may be resetting the device).
    poller: Option<DelayedWork<CatasPoller>>,
    ib: Arc<IbSlot>,
    shared: Arc<Shared>,
}

/// The function's BARs, its interrupts and the bring-up core, which the probe, the
/// remove and the catastrophic error poll reach in turn (the core behind a mutex: its
/// commands sleep).
pub(crate) struct Shared {
    dev: DeviceRef,
    bar0: Bar,
    bar2: Arc<Bar>,
    irqs: IrqVectors<EqInterrupt>,
    core: Mutex<KBox<Mlx4Core<Block>>>,
    cqs: Arc<CqTable>,
}

/// An EQ's MSI-X vector: the interrupts it took and, for a completion EQ, the EQ itself
/// while the HCA is up (lent by the core), which the handler walks (`mlx4_eq_int`).
pub(crate) struct EqInterrupt {
    count: Atomic<u32>,
    eq: IrqSpinLock<Option<EventQueue<Block>>>,
    bar2: Arc<Bar>,
    cqs: Arc<CqTable>,
    /// Completion events delivered, the CQ the last one named, EQEs refused.
    completions: Atomic<u32>,
    last_cqn: Atomic<u32>,
    refused: Atomic<u32>,
}

impl EqInterrupt {
    fn new(bar2: Arc<Bar>, cqs: Arc<CqTable>) -> Result<Self> {
        Ok(Self {
            count: Atomic::new(0),
            eq: rdma_core::irq_spin_lock!(None)?,
            bar2,
            cqs,
            completions: Atomic::new(0),
            last_cqn: Atomic::new(0),
            refused: Atomic::new(0),
        })
    }

    fn completion_events(&self) -> CompletionEvents {
        CompletionEvents {
            count: self.completions.load(Relaxed),
            last_cqn: self.last_cqn.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

impl IrqHandler for EqInterrupt {
    fn handle(&self) -> bool {
        self.count.add(1, Relaxed);
        let mut eq = self.eq.lock();
        let Some(eq) = eq.as_mut() else {
            // The async EQ's vector (the core walks it while a command waits), or a
            // completion EQ not lent yet.
            return true;
        };
        let mut edge = IrqEdge { bar2: &self.bar2 };
        let mut consumed = false;
        while let Ok(Some(event)) = eq.next(&mut edge) {
            consumed = true;
            match event {
                EqEvent::Completion { cqn } => match self.cqs.get(cqn) {
                    // One of the IB device's CQs: its handler runs.
                    Some(cq) => cq.event(),
                    // The probe's data-path check's CQ, which it watches here.
                    None => {
                        self.last_cqn.store(cqn, Relaxed);
                        self.completions.add(1, Relaxed);
                    }
                },
                _ => self.refused.add(1, Relaxed),
            }
        }
        if consumed {
            eq.set_ci(&mut edge, true);
        }
        true
    }
}

/// What an interrupt handler walks its EQ with: the EQ's pages (read by copy) and the
/// EQ doorbell in BAR2. It allocates nothing and frees nothing.
struct IrqEdge<'a> {
    bar2: &'a Bar,
}

impl EventEdge for IrqEdge<'_> {
    fn bar2_write_be32(&mut self, offset: u64, value: u32) {
        // The EQ doorbell of an EQ the core created, inside BAR2 (`eq_doorbell_offset`).
        let _ = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.bar2.write_be32(offset, value));
    }

    fn read_barrier(&mut self) {
        barrier::dma_rmb();
    }
}

impl HostMemory for IrqEdge<'_> {
    type Block = Block;

    fn alloc(&mut self, _log_pages: u32) -> Option<Block> {
        None
    }

    fn bus_address(&self, block: &Block) -> u64 {
        block.bus_address()
    }

    fn write(&mut self, _block: &Block, _offset: usize, _data: &[u8]) -> bool {
        false
    }

    fn read(&mut self, block: &Block, offset: usize, buf: &mut [u8]) -> bool {
        block.read(offset, buf).is_some()
    }

    fn free(&mut self, block: Block) {
        // Never called by an EQ walk; dropping keeps the block's other holders' memory.
        drop(block);
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

impl Shared {
    /// The function's name, as dmesg lines start.
    pub(crate) fn name(&self) -> &str {
        self.dev.name()
    }

    /// The bring-up core, behind its mutex.
    pub(crate) fn core(&self) -> &Mutex<KBox<Mlx4Core<Block>>> {
        &self.core
    }

    /// BAR2 (the UAR pages).
    pub(crate) fn bar2(&self) -> &Arc<Bar> {
        &self.bar2
    }

    /// The IB device's CQs, by number, for the interrupt handlers.
    pub(crate) fn cqs(&self) -> &CqTable {
        &self.cqs
    }

    pub(crate) fn edge(&self) -> Edge<'_> {
        Edge {
            dev: &self.dev,
            bar0: &self.bar0,
            bar2: &self.bar2,
        }
    }

    /// Interrupts vector `vector` took so far.
    fn interrupts(&self, vector: u32) -> u32 {
        self.irqs
            .handler(vector)
            .map_or(0, |h| h.count.load(Relaxed))
    }

    /// Brings the HCA up (`mlx4_load_one`): the probe, the interrupt test and the data
    /// path check, then the dmesg lines. On failure the core is left holding nothing.
    fn bring_up(&self, core: &mut Mlx4Core<Block>) -> Result {
        let dev: &Device = &self.dev;
        let config = ProbeConfig {
            profile: Profile::DEFAULT,
            uar_bar_size: self.bar2.len() as u64,
            ib_cap_mask: IB_CAP_MASK,
            comp_eqs: COMP_EQS,
        };
        let mut edge = self.edge();
        let async_before = self.interrupts(0);
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
        let interrupts = self.interrupts_since(0, async_before);
        let checked = if interrupts == 0 {
            pr_err!(
                "{}: interrupt test failed: the NOP completed but MSI-X vector 0 never fired\n",
                dev.name()
            );
            Err(EIO)
        } else {
            self.lend_comp_eqs(core);
            let completion_events = || {
                self.irqs.handler(1).map_or(
                    CompletionEvents {
                        count: 0,
                        last_cqn: 0,
                        refused: 0,
                    },
                    |h| h.completion_events(),
                )
            };
            datapath::send_between_two_qps(core, &mut edge, &self.bar2, &completion_events)
                .inspect_err(|_| pr_err!("{}: data-path check failed\n", dev.name()))
        };
        let moved = match checked {
            Ok(moved) => moved,
            Err(error) => {
                self.take_back_comp_eqs(core);
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
        let micros = u64::try_from(moved.traffic_time.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let kib_per_s = (moved.traffic_bytes as u64 / 1024).saturating_mul(1_000_000) / micros;
        pr_info!(
            "{}: traffic: {} SENDs, {} KiB in {} ms ({} KiB/s), every completion and byte checked\n",
            dev.name(),
            moved.messages,
            moved.traffic_bytes / 1024,
            micros / 1000,
            kib_per_s
        );
        pr_info!(
            "{}: MSI-X: {} vectors, {} interrupts on the async EQ's by the probe's commands\n",
            dev.name(),
            self.irqs.count(),
            interrupts
        );
        Ok(())
    }

    /// Lends each completion EQ to its vector's handler, which walks it from now on.
    fn lend_comp_eqs(&self, core: &mut Mlx4Core<Block>) {
        for index in 0..COMP_EQS as usize {
            // Only to a handler that exists: an EQ taken from the core and dropped would
            // free pages the device still writes.
            let Some(handler) = self.irqs.handler(index as u32 + 1) else {
                continue;
            };
            if let Some(eq) = core.lend_comp_eq(index) {
                *handler.eq.lock() = Some(eq);
            }
        }
    }

    /// Takes the completion EQs back from the handlers, for the teardown or a reset.
    fn take_back_comp_eqs(&self, core: &mut Mlx4Core<Block>) {
        for index in 0..COMP_EQS as usize {
            let Some(handler) = self.irqs.handler(index as u32 + 1) else {
                continue;
            };
            let lent = handler.eq.lock().take();
            if let Some(eq) = lent {
                // Not the core's: the teardown takes it from the device all the same, and
                // its pages are freed here after that.
                if let Err(eq) = core.return_comp_eq(index, eq) {
                    *handler.eq.lock() = Some(eq);
                }
            }
        }
    }

    /// Interrupts on `vector` since it had taken `before`, waiting up to
    /// [`INTERRUPT_TEST_TIMEOUT`] for the first (the EQE may be seen before the MSI
    /// lands).
    fn interrupts_since(&self, vector: u32, before: u32) -> u32 {
        let deadline = kernel_api::monotonic() + INTERRUPT_TEST_TIMEOUT;
        while self.interrupts(vector) == before && kernel_api::monotonic() < deadline {
            kernel_api::sleep(Duration::from_millis(1));
        }
        self.interrupts(vector).wrapping_sub(before)
    }
}

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
        let cqs = Arc::new(CqTable::new()?, GFP_KERNEL)?;
        for vector in 0..irqs.count() {
            let handler = EqInterrupt::new(bar2.clone(), cqs.clone())?;
            irqs.request(vector, c"tilde_mlx4", Arc::new(handler, GFP_KERNEL)?)?;
        }
        let core = KBox::write(KBox::new_uninit(GFP_KERNEL)?, EMPTY_CORE);
        let shared = Arc::new(
            Shared {
                dev: dev.get(),
                bar0,
                bar2,
                irqs,
                core: rdma_core::mutex!(core)?,
                cqs,
            },
            GFP_KERNEL,
        )?;
        shared.bring_up(&mut shared.core.lock())?;
        let ib = match rdma_core::mutex!(None).and_then(|slot| Ok(Arc::new(slot, GFP_KERNEL)?)) {
            Ok(ib) => ib,
            Err(error) => {
                close(&shared);
                return Err(error);
            }
        };
        if let Err(error) = register_ib(&shared, &ib) {
            close(&shared);
            return Err(error);
        }
        let poller = DelayedWork::new(Arc::new(
            CatasPoller {
                shared: shared.clone(),
                ib: ib.clone(),
            },
            GFP_KERNEL,
        )?);
        let poller = match poller {
            Ok(poller) => poller,
            Err(error) => {
                unregister_ib(&shared, &ib);
                close(&shared);
                return Err(error);
            }
        };
        poller.schedule(CATAS_POLL_INTERVAL);
        Ok(Hca {
            poller: Some(poller),
            ib,
            shared,
        })
    }

    fn remove(_dev: &Device, hca: &mut Hca) {
        // The poll first: it may be resetting the device; this waits for it. Then the
        // IB device, whose objects the IB core destroys through the HCA.
        drop(hca.poller.take());
        unregister_ib(&hca.shared, &hca.ib);
        close(&hca.shared);
    }
}

/// Registers the IB device over the HCA (`mlx4_ib_add`), into `slot`.
fn register_ib(shared: &Arc<Shared>, slot: &IbSlot) -> Result {
    let dev: &Device = &shared.dev;
    let state = {
        let mut core = shared.core.lock();
        Mlx4Ib::new(shared.clone(), &mut core)?
    };
    let registration = rdma_core::driver::Registration::new_for_pci(
        &crate::THIS_MODULE,
        state,
        crate::ib::NAME,
        dev,
        |setup, state| {
            setup.node_type(rdma_core::driver::NodeType::Ca);
            setup.ports(state.ports());
            setup.comp_vectors(COMP_EQS);
            setup.node_guid(state.node_guid());
            Ok(())
        },
    )?;
    pr_info!(
        "{}: InfiniBand device {} registered: {} ports, node GUID {:016x}\n",
        dev.name(),
        registration.name(),
        registration.state().ports(),
        registration.state().node_guid()
    );
    *slot.lock() = Some(registration);
    Ok(())
}

/// Unregisters the IB device, if registered: the IB core's clients go, and every object
/// is destroyed through the driver's ops.
fn unregister_ib(shared: &Shared, slot: &IbSlot) {
    let registration = slot.lock().take();
    if let Some(registration) = registration {
        let name = registration.name();
        drop(registration);
        pr_info!(
            "{}: InfiniBand device {} unregistered\n",
            shared.dev.name(),
            name
        );
    }
}

/// Closes the HCA (`mlx4_unload_one`) and reports what the vectors took.
fn close(shared: &Shared) {
    let dev: &Device = &shared.dev;
    pr_info!(
        "{}: interrupts taken: async EQ {}, completion EQs {} and {}\n",
        dev.name(),
        shared.interrupts(0),
        shared.interrupts(1),
        shared.interrupts(2)
    );
    let mut core = shared.core.lock();
    shared.take_back_comp_eqs(&mut core);
    // The IB device is gone, and with its QPs every attachment: a group still in the
    // table is a detach the driver missed.
    let groups = core.multicast_groups();
    if groups != 0 {
        pr_err!(
            "{}: {} multicast groups left in the table at close\n",
            dev.name(),
            groups
        );
    }
    match core.teardown(&mut shared.edge()) {
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

/// The catastrophic error poll (`poll_catas`, every 5 s as upstream): on an error, the
/// function is reset, everything the device forgot taken back, and the HCA brought up
/// again (`mlx4_enter_error_state`, then the reset and reload of `mlx4_restart_one`).
struct CatasPoller {
    shared: Arc<Shared>,
    ib: Arc<IbSlot>,
}

impl WorkHandler for CatasPoller {
    fn run(&self) -> Option<Duration> {
        let shared = &self.shared;
        let dev: &Device = &shared.dev;
        let core = shared.core.lock();
        let mut edge = shared.edge();
        let found = core.catastrophic_error(&mut edge);
        let error = match found {
            Ok(None) => return Some(CATAS_POLL_INTERVAL),
            Ok(Some(error)) => error,
            Err(error) => {
                pr_err!(
                    "{}: the catastrophic error buffer cannot be polled: {:?}\n",
                    dev.name(),
                    error
                );
                return None;
            }
        };
        pr_err!(
            "{}: catastrophic error: word {} of the error buffer reads {:#x}; resetting the function\n",
            dev.name(),
            error.word,
            error.value
        );
        // No doorbell may reach the device from here on (the IB device's posts and arms
        // are refused and those under way waited out), then it is reset.
        drop(core);
        if let Some(registration) = self.ib.lock().as_ref() {
            Mlx4Ib::quiesce(registration.device());
        }
        let mut core = shared.core.lock();
        if let Err(error) = core.reset_after_error(&mut edge) {
            pr_err!(
                "{}: the reset failed ({:?}): the device keeps its memory until the driver is unbound\n",
                dev.name(),
                error
            );
            return None;
        }
        // The device forgot everything and commands now succeed at once: the consumers
        // get their posted WRs back flushed, then the IB device goes, its objects
        // destroyed through the ops (which take the core's mutex).
        drop(core);
        if let Some(registration) = self.ib.lock().as_ref() {
            Mlx4Ib::enter_lost(registration.device());
        }
        unregister_ib(shared, &self.ib);
        let mut core = shared.core.lock();
        shared.take_back_comp_eqs(&mut core);
        core.release_after_error(&mut edge);
        pr_info!(
            "{}: reset: the device forgot everything, every page taken back\n",
            dev.name()
        );
        match shared.bring_up(&mut core) {
            Ok(()) => {
                drop(core);
                if register_ib(shared, &self.ib).is_err() {
                    pr_err!(
                        "{}: the IB device did not come back after the reset\n",
                        dev.name()
                    );
                }
                pr_info!("{}: recovered from the catastrophic error\n", dev.name());
                Some(CATAS_POLL_INTERVAL)
            }
            Err(_) => {
                pr_err!(
                    "{}: the HCA did not come back after the reset\n",
                    dev.name()
                );
                None
            }
        }
    }
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
