//! The ConnectX-3 as a PCI function: the firmware's command interface, ICM, event
//! queues and the subnet management agent of its two InfiniBand ports, behind BAR0 and
//! BAR2 accesses and DMA, so that a transport (the `cx3-device` vfio-user server, or a
//! host test) can put it in front of a driver.
//!
//! The contract is the upstream driver's: `mlx4_core` and `mlx4_ib` were written against
//! the silicon, so what they accept is what this device must do. Each format names its
//! source. The device also checks the driver: a command it does not know, a mailbox that
//! does not parse, a context that names what does not exist, a DMA outside the memory the
//! platform mapped, each is an [`HcaEvent::DriverError`] (and a PRM status to the driver),
//! never a panic.

mod commands;
mod datapath;
mod icm;
mod rc;
mod sma;
pub mod trace;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::wire::cmd::{hcr, CmdStatus, HcrCommand, HCR_BASE, HCR_SIZE, OWNER_BASE};
use crate::wire::cmd::{RESET_BASE, RESET_OFFSET, RESET_SEMAPHORE_OFFSET, RESET_VALUE};
use crate::wire::{
    send_doorbell_qpn, EventType, UAR_CQ_DOORBELL, UAR_EQ_DOORBELL, UAR_SEND_DOORBELL,
};

pub use icm::{IcmMap, VpmEntry};
pub use sma::{PortEvent, PortState, Sma};

/// A DMA the platform could not do: the range is not mapped memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    pub address: u64,
    pub len: usize,
}

/// The device's view of host memory.
pub trait Dma {
    /// Reads `buf.len()` bytes at bus address `address`.
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault>;
    /// Writes `data` at bus address `address`.
    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault>;
}

/// What the device hands its transport after an access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HcaEvent {
    /// Raise MSI-X vector `vector` (or INTx, when MSI-X is off).
    Interrupt { vector: u16 },
    /// A line for the device's log.
    Info(String),
    /// A driver mistake or a fault the device saw; the runner fails on any.
    DriverError(String),
}

/// Where the device puts its registers in BAR0, as QUERY_FW reports them.
pub mod layout {
    /// The catastrophic error buffer: the driver polls it; all zero means healthy.
    pub const CATAS_OFFSET: u64 = 0x4_0000;
    /// Its size in 32-bit words.
    pub const CATAS_WORDS: u32 = 0x10;
    /// The clear-interrupt register (INTx deassert; 64 bits).
    pub const CLR_INT_OFFSET: u64 = 0x8_0700;
    /// MSI-X vectors the device offers (the PCI capability's table size).
    pub const MSIX_VECTORS: u16 = 64;
    /// The UAR page size the device uses (4 KiB, `1 << uar_page_shift`).
    pub const UAR_PAGE_SHIFT: u32 = 12;
    /// UAR pages at the start of BAR2 (QUERY_DEV_CAP's `uar_sz`).
    pub const UAR_PAGES: u32 =
        ((1 << 20) << super::commands::caps::LOG_UAR_SZ_MB) >> UAR_PAGE_SHIFT;
    /// The pages whose EQ doorbells exist: four EQs per page (`mlx4_get_eq_uar`).
    pub const EQ_DOORBELL_PAGES: u32 = (1 << super::commands::caps::LOG_MAX_EQ) / 4;
}

/// Firmware state, in the order the driver moves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwState {
    /// After reset: only QUERY_FW and MAP_FA.
    Reset,
    /// Firmware area mapped.
    FwMapped,
    /// RUN_FW done: the firmware runs.
    Running,
    /// INIT_HCA done: the HCA serves resources.
    Initialized,
}

/// What the driver has given the device, and the firmware's state: after a driver's
/// teardown, all of it is back to what [`Hca::new`] has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// The firmware's state.
    pub firmware: FwState,
    /// Whether a function holds the ownership semaphore.
    pub owned: bool,
    /// Pages of firmware area (MAP_FA).
    pub fw_area_pages: u64,
    /// Chunks of auxiliary ICM (MAP_ICM_AUX).
    pub aux_chunks: usize,
    /// ICM chunks mapped (MAP_ICM).
    pub icm_chunks: usize,
    /// ICM bytes mapped.
    pub icm_bytes: u64,
    /// EQs in hardware (SW2HW_EQ without HW2SW_EQ yet).
    pub eqs: usize,
    /// Ports opened by INIT_PORT and not yet closed.
    pub ports_up: [bool; 2],
    /// CQs in hardware (SW2HW_CQ without HW2SW_CQ yet).
    pub cqs: usize,
    /// QPs out of RESET.
    pub qps: usize,
    /// MPTs in hardware.
    pub mpts: usize,
}

/// An event queue the driver handed over with SW2HW_EQ.
#[derive(Clone, Debug)]
struct EventQueue {
    log_size: u32,
    /// MSI-X vector.
    intr: u16,
    /// Where its pages are: the MTT entries at this byte offset of the MTT table.
    mtt_offset: u64,
    log_page_size: u32,
    producer: u32,
    consumer: u32,
    armed: bool,
    /// Event types mapped to it by MAP_EQ (bit n: type n).
    event_mask: u64,
}

/// The ConnectX-3.
pub struct Hca {
    hcr: [u8; HCR_SIZE as usize],
    owned: bool,
    /// The reset page's hardware semaphore is taken by someone else (a test's flash
    /// update): it reads 1, and a reset then is a driver mistake.
    reset_semaphore_held: bool,
    /// A catastrophic error was raised: its syndrome, in the first word of the error
    /// buffer; the firmware runs no more commands until a reset.
    catastrophic: Option<u32>,
    reset_requested: bool,
    bus_master: bool,
    fw: FwState,
    fw_area: Vec<VpmEntry>,
    icm_aux: Vec<VpmEntry>,
    icm: IcmMap,
    /// INIT_HCA's parameters, once given.
    init: Option<commands::InitHcaParams>,
    /// INIT_HCA's mailbox as given, for QUERY_HCA.
    init_hca_mailbox: Vec<u8>,
    eqs: BTreeMap<u32, EventQueue>,
    /// Contexts handed over by SW2HW_* (raw mailbox bytes), by object number.
    cq_states: BTreeMap<u32, datapath::CqState>,
    mpts: BTreeMap<u32, Vec<u8>>,
    srqs: BTreeMap<u32, Vec<u8>>,
    /// The SRQs' data path state, by SRQ number.
    srq_states: BTreeMap<u32, datapath::SrqState>,
    /// The multicast group table (READ_MCG, WRITE_MCG), by entry index.
    mcg: BTreeMap<u32, Vec<u8>>,
    qps: BTreeMap<u32, commands::QpState>,
    special_qp_base: Option<u32>,
    ports_up: [bool; 2],
    /// The first half of a CQ doorbell written as two 32-bit stores.
    cq_doorbell_high: Option<u32>,
    sma: Sma,
    events: Vec<HcaEvent>,
    packets_delivered: u64,
    packets_dropped: u64,
    /// The payload of the RC operation being executed, for the port counters.
    last_rc_payload: usize,
    commands: u64,
    failed_commands: u64,
    /// A test's refusal of the next command with an opcode (see [`Hca::refuse_next`]).
    refusal: Option<(u16, CmdStatus)>,
}

impl Default for Hca {
    fn default() -> Self {
        Self::new()
    }
}

impl Hca {
    /// A ConnectX-3 after power-on.
    pub fn new() -> Self {
        Self {
            hcr: [0; HCR_SIZE as usize],
            owned: false,
            reset_semaphore_held: false,
            catastrophic: None,
            reset_requested: false,
            bus_master: false,
            fw: FwState::Reset,
            fw_area: Vec::new(),
            icm_aux: Vec::new(),
            icm: IcmMap::default(),
            init: None,
            init_hca_mailbox: Vec::new(),
            eqs: BTreeMap::new(),
            cq_states: BTreeMap::new(),
            mpts: BTreeMap::new(),
            srqs: BTreeMap::new(),
            srq_states: BTreeMap::new(),
            mcg: BTreeMap::new(),
            qps: BTreeMap::new(),
            special_qp_base: None,
            ports_up: [false; 2],
            cq_doorbell_high: None,
            sma: Sma::new(),
            events: Vec::new(),
            packets_delivered: 0,
            packets_dropped: 0,
            last_rc_payload: 0,
            commands: 0,
            failed_commands: 0,
            refusal: None,
        }
    }

    /// Back to the state after power-on (the reset register, or a function reset).
    pub fn reset(&mut self) {
        let events = core::mem::take(&mut self.events);
        let (commands, failed, delivered, dropped) = (
            self.commands,
            self.failed_commands,
            self.packets_delivered,
            self.packets_dropped,
        );
        *self = Self::new();
        // The run's totals outlive a reset; the device's state does not.
        self.events = events;
        self.commands = commands;
        self.failed_commands = failed;
        self.packets_delivered = delivered;
        self.packets_dropped = dropped;
        self.info("reset: firmware stopped, ICM and every context forgotten".into());
    }

    /// Whether the last BAR0 write asked for a reset (the transport resets the config
    /// space too: the driver restores it).
    pub fn reset_requested(&mut self) -> bool {
        core::mem::take(&mut self.reset_requested)
    }

    /// Bus mastering, as the driver set it in the command register: without it the
    /// device may not DMA.
    ///
    /// Turning it off while the device holds host memory (the firmware area, auxiliary
    /// ICM or ICM still mapped) is a driver mistake: a driver disables the function at
    /// the end of its remove, after CLOSE_HCA and the unmaps, and frees that memory; a
    /// remove that skipped them has freed memory the firmware still owns.
    pub fn set_bus_master(&mut self, on: bool) {
        if self.bus_master && !on {
            let held = (self.fw_pages(), self.icm_aux.len(), self.icm.chunks());
            if held != (0, 0, 0) {
                self.driver_error(format!(
                    "bus mastering turned off while the device holds host memory ({} firmware area pages, {} auxiliary ICM chunks, {} ICM chunks mapped): the driver let go of the function without closing the HCA",
                    held.0, held.1, held.2
                ));
            }
        }
        self.bus_master = on;
    }

    /// For tests of a driver's error paths: the next command with `opcode` is not run
    /// and completes with `status`, reported as the firmware reports any failure: in the
    /// HCR, and by a command EQE when it was posted for event completion.
    pub fn refuse_next(&mut self, opcode: u16, status: CmdStatus) {
        self.refusal = Some((opcode, status));
    }

    /// The events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<HcaEvent> {
        core::mem::take(&mut self.events)
    }

    /// What the driver has given the device, and the firmware's state.
    pub fn resources(&self) -> Resources {
        Resources {
            firmware: self.fw,
            owned: self.owned,
            fw_area_pages: self.fw_pages(),
            aux_chunks: self.icm_aux.len(),
            icm_chunks: self.icm.chunks(),
            icm_bytes: self.icm.mapped_bytes(),
            eqs: self.eqs.len(),
            ports_up: self.ports_up,
            cqs: self.cq_states.len(),
            qps: self.qps.len(),
            mpts: self.mpts.len(),
        }
    }

    /// One line about what the device did, for the end of a run.
    pub fn summary(&self) -> String {
        format!(
            "{} commands ({} failed), firmware {:?}, ICM {} KiB mapped, {} EQs, {} CQs, {} QPs, {} MPTs; {} packets delivered, {} dropped",
            self.commands,
            self.failed_commands,
            self.fw,
            self.icm.mapped_bytes() / 1024,
            self.eqs.len(),
            self.cq_states.len(),
            self.qps.len(),
            self.mpts.len(),
            self.packets_delivered,
            self.packets_dropped
        )
    }

    fn info(&mut self, line: String) {
        self.events.push(HcaEvent::Info(line));
    }

    fn driver_error(&mut self, line: String) {
        self.events.push(HcaEvent::DriverError(line));
    }

    /// A BAR0 read.
    pub fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(at) = within(offset, data.len(), HCR_BASE, HCR_SIZE) {
            if let Some(src) = self.hcr.get(at..at + data.len()) {
                data.copy_from_slice(src);
            }
        } else if within(offset, data.len(), OWNER_BASE, 4).is_some() {
            // The first reader takes ownership and reads 0; later readers read 1 until the
            // owner writes 0 back (`mlx4_get_ownership`).
            if self.owned {
                if let Some(last) = data.last_mut() {
                    *last = 1;
                }
            }
            self.owned = true;
        } else if within(offset, data.len(), RESET_BASE + RESET_SEMAPHORE_OFFSET, 4).is_some() {
            // Free (0) unless a test holds it; the driver only looks.
            if self.reset_semaphore_held {
                if let Some(last) = data.last_mut() {
                    *last = 1;
                }
            }
        } else if let Some(at) = within(
            offset,
            data.len(),
            layout::CATAS_OFFSET,
            u64::from(layout::CATAS_WORDS) * 4,
        ) {
            // All zero while healthy; the syndrome in the first word after an error.
            if let Some(syndrome) = self.catastrophic {
                let word = syndrome.to_be_bytes();
                for (i, byte) in data.iter_mut().enumerate() {
                    if let Some(&b) = word.get(at + i) {
                        *byte = b;
                    }
                }
            }
        }
        // Everything else reads zero.
    }

    /// Raises a catastrophic error with `syndrome` (nonzero): the error buffer shows it,
    /// and the firmware stops running commands (a posted command never completes) until
    /// the function is reset. The driver finds out by polling the buffer. The transport
    /// raises one when a scenario asks (`cx3-device`'s test capability).
    pub fn raise_catastrophic_error(&mut self, syndrome: u32) {
        self.catastrophic = Some(syndrome.max(1));
        self.info(format!(
            "catastrophic error raised (syndrome {syndrome:#x}): the firmware stops until a reset"
        ));
    }

    /// Holds the reset page's hardware semaphore (as a flash update would), or lets it
    /// go: a driver must not reset the device while it is held.
    pub fn hold_reset_semaphore(&mut self, held: bool) {
        self.reset_semaphore_held = held;
    }

    /// A BAR0 write.
    pub fn bar0_write(&mut self, dma: &dyn Dma, offset: u64, data: &[u8]) {
        if let Some(at) = within(offset, data.len(), HCR_BASE, HCR_SIZE) {
            if let Some(dst) = self.hcr.get_mut(at..at + data.len()) {
                dst.copy_from_slice(data);
            }
            let status_word = hcr::STATUS;
            if at <= status_word && at + data.len() >= status_word + 4 {
                let word = self.hcr_word(status_word);
                if word & hcr::GO_BIT != 0 {
                    self.execute(dma);
                }
            }
        } else if within(offset, data.len(), OWNER_BASE, 4).is_some() {
            if data.iter().all(|&b| b == 0) {
                self.owned = false;
            }
        } else if within(offset, data.len(), RESET_BASE + RESET_OFFSET, 4).is_some() {
            if self.reset_semaphore_held {
                self.driver_error("reset while the hardware semaphore is held".into());
            } else if be32(data) == Some(RESET_VALUE) {
                self.reset();
                self.reset_requested = true;
            } else {
                self.driver_error(format!(
                    "reset register written with {data:02x?}, not the reset value"
                ));
            }
        } else if within(offset, data.len(), layout::CLR_INT_OFFSET, 8).is_some() {
            // INTx deassert: nothing to do for an edge-signalled model.
        } else {
            self.driver_error(format!(
                "BAR0 write of {} bytes at {offset:#x}: no register there",
                data.len()
            ));
        }
    }

    /// A BAR2 (UAR) read: doorbells are write-only and read as zero.
    pub fn bar2_read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A doorbell a transport took from a watched, mapped BAR2 (see `page_doorbell`): EQ doorbells are one register per EQ and go as
    /// written; a send or CQ doorbell stands for every QP or CQ of its page.
    pub fn bar2_watched_write(&mut self, dma: &dyn Dma, offset: u64, data: &[u8]) {
        let page = offset >> layout::UAR_PAGE_SHIFT;
        let in_page = (offset & ((1 << layout::UAR_PAGE_SHIFT) - 1)) as usize;
        match (in_page, u32::try_from(page)) {
            (UAR_SEND_DOORBELL, Ok(page)) => self.page_doorbell(dma, page, true),
            (UAR_CQ_DOORBELL, Ok(page)) => self.page_doorbell(dma, page, false),
            _ => self.bar2_write(dma, offset, data),
        }
    }

    /// A BAR2 (UAR) write: EQ doorbells, CQ doorbells, send doorbells.
    pub fn bar2_write(&mut self, dma: &dyn Dma, offset: u64, data: &[u8]) {
        let page = offset >> layout::UAR_PAGE_SHIFT;
        let in_page = offset & ((1 << layout::UAR_PAGE_SHIFT) - 1);
        let eq_doorbells = UAR_EQ_DOORBELL as u64..UAR_EQ_DOORBELL as u64 + 32;
        if eq_doorbells.contains(&in_page)
            // One 8-byte slot per EQ (the area starts 8-aligned).
            && in_page.is_multiple_of(8)
            && data.len() == 4
        {
            let eqn = (page * 4 + (in_page - UAR_EQ_DOORBELL as u64) / 8) as u32;
            let value = be32(data).unwrap_or(0);
            self.eq_doorbell(eqn, value & 0x00ff_ffff, value & (1 << 31) != 0);
            return;
        }
        match (in_page as usize, data.len()) {
            (UAR_SEND_DOORBELL, 4) => {
                let value = be32(data).unwrap_or(0);
                self.send_doorbell(dma, send_doorbell_qpn(value));
            }
            (UAR_CQ_DOORBELL, 8) => {
                let word0 = be32(&data[..4]).unwrap_or(0);
                let word1 = be32(&data[4..]).unwrap_or(0);
                self.cq_doorbell(dma, word0, word1);
            }
            // A 64-bit doorbell written as two 32-bit halves (`mlx4_write64` on hosts
            // without 64-bit MMIO): the first half waits for the second.
            (UAR_CQ_DOORBELL, 4) => self.cq_doorbell_high = be32(data),
            (o, 4) if o == UAR_CQ_DOORBELL + 4 => {
                if let Some(word0) = self.cq_doorbell_high.take() {
                    self.cq_doorbell(dma, word0, be32(data).unwrap_or(0));
                }
            }
            (o, n) => self.driver_error(format!(
                "UAR write of {n} bytes at page {page} offset {o:#x}: no doorbell there"
            )),
        }
    }

    fn hcr_word(&self, offset: usize) -> u32 {
        self.hcr
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    }

    fn set_hcr_word(&mut self, offset: usize, value: u32) {
        if let Some(dst) = self.hcr.get_mut(offset..offset + 4) {
            dst.copy_from_slice(&value.to_be_bytes());
        }
    }

    /// Runs the command in the HCR: executes it, writes an immediate result to
    /// `out_param`, the status to the status byte, clears `go`, and in event mode
    /// posts the command EQE.
    fn execute(&mut self, dma: &dyn Dma) {
        if let Some(syndrome) = self.catastrophic {
            // The firmware is gone: the go bit stays set, the command never completes.
            self.info(format!(
                "command ignored after the catastrophic error (syndrome {syndrome:#x})"
            ));
            return;
        }
        let cmd = HcrCommand::decode(&self.hcr);
        self.commands += 1;
        let refused = match self.refusal {
            Some((op, status)) if op == cmd.opcode => {
                self.refusal = None;
                Some(status)
            }
            _ => None,
        };
        let (status, out) = if let Some(status) = refused {
            (status, None)
        } else if self.bus_master {
            self.command(dma, &cmd)
        } else {
            self.driver_error(format!(
                "command {:#x} with bus mastering off: the device cannot reach its mailboxes",
                cmd.opcode
            ));
            (CmdStatus::BadSysState, None)
        };
        if status != CmdStatus::Ok {
            self.failed_commands += 1;
        }
        if let Some(out) = out {
            self.set_hcr_word(hcr::OUT_PARAM, (out >> 32) as u32);
            self.set_hcr_word(hcr::OUT_PARAM + 4, out as u32);
        }
        let word = self.hcr_word(hcr::STATUS);
        let word = (word & !hcr::GO_BIT & !(0xff << hcr::STATUS_SHIFT))
            | (u32::from(status as u8) << hcr::STATUS_SHIFT);
        self.set_hcr_word(hcr::STATUS, word);
        self.port_events(dma);
        if cmd.event {
            let out_param = out.unwrap_or(cmd.out_param);
            let mut event = [0u8; 24];
            event[2..4].copy_from_slice(&cmd.token.to_be_bytes());
            event[11] = status as u8;
            event[12..20].copy_from_slice(&out_param.to_be_bytes());
            self.post_event(dma, EventType::Command as u8, 0, &event);
        }
    }

    /// Reports the ports' state changes (from the SMA's Sets, INIT_PORT, CLOSE_PORT) as
    /// PORT_CHANGE events (`MLX4_PORT_CHANGE_SUBTYPE_DOWN` 1, `_ACTIVE` 4; the port in
    /// the top nibble of the union's third word).
    fn port_events(&mut self, dma: &dyn Dma) {
        for event in self.sma.take_events() {
            let (port, subtype) = match event {
                PortEvent::Active { port } => (port, 4),
                PortEvent::Down { port } => (port, 1),
            };
            self.info(format!(
                "port {}: {}",
                port + 1,
                if subtype == 4 { "ACTIVE" } else { "down" }
            ));
            let mut data = [0u8; 24];
            data[8..12].copy_from_slice(&(((port as u32) + 1) << 28).to_be_bytes());
            self.post_event(dma, EventType::PortChange as u8, subtype, &data);
        }
    }

    /// Writes an EQE of `event_type` to the EQ it is mapped to, and interrupts if that
    /// EQ is armed. An event no EQ takes is dropped, as the hardware does.
    fn post_event(&mut self, dma: &dyn Dma, event_type: u8, subtype: u8, event: &[u8; 24]) {
        let Some(eqn) = self
            .eqs
            .iter()
            .find(|(_, eq)| eq.event_mask & (1u64 << (event_type & 63)) != 0)
            .map(|(&n, _)| n)
        else {
            self.info(format!("event type {event_type:#x}: no EQ mapped, dropped"));
            return;
        };
        self.post_event_to(dma, eqn, event_type, subtype, event);
    }

    fn post_event_to(
        &mut self,
        dma: &dyn Dma,
        eqn: u32,
        event_type: u8,
        subtype: u8,
        event: &[u8; 24],
    ) {
        let Some(eq) = self.eqs.get(&eqn).cloned() else {
            return;
        };
        let nent = 1u32 << eq.log_size;
        if eq.producer.wrapping_sub(eq.consumer) >= nent {
            self.driver_error(format!(
                "EQ {eqn} overrun: producer {} consumer {}",
                eq.producer, eq.consumer
            ));
            return;
        }
        let mut eqe = [0u8; 32];
        eqe[1] = event_type;
        eqe[3] = subtype;
        eqe[4..28].copy_from_slice(event);
        // Owner bit: clear in even laps, set in odd ones (`next_eqe_sw`).
        eqe[31] = if eq.producer & nent != 0 { 0x80 } else { 0 };
        let index = u64::from(eq.producer & (nent - 1));
        match self.queue_address(dma, &eq, index * 32) {
            Ok(address) => {
                if let Err(fault) = dma.write(address, &eqe) {
                    self.driver_error(format!(
                        "EQ {eqn}: EQE write at {:#x} outside mapped memory",
                        fault.address
                    ));
                    return;
                }
            }
            Err(e) => {
                self.driver_error(format!("EQ {eqn}: {e}"));
                return;
            }
        }
        if let Some(eq) = self.eqs.get_mut(&eqn) {
            eq.producer = eq.producer.wrapping_add(1);
            if eq.armed {
                eq.armed = false;
                let vector = eq.intr;
                self.events.push(HcaEvent::Interrupt { vector });
            }
        }
    }

    /// The bus address of byte `offset` of a queue's buffer, through its MTT.
    fn queue_address(&self, dma: &dyn Dma, eq: &EventQueue, offset: u64) -> Result<u64, String> {
        self.buffer_address(
            dma,
            eq.mtt_offset,
            eq.log_page_size,
            // SW2HW_EQ refuses a page offset: an EQ starts at its first page.
            offset,
        )
    }

    /// Reads the MTT entry at byte `offset` of the MTT table, which lives in ICM (the
    /// driver writes it there with the CPU, `mlx4_write_mtt_chunk`): a big-endian page
    /// address with the present bit (`MLX4_MTT_FLAG_PRESENT`) in bit 0.
    fn mtt_entry(&self, dma: &dyn Dma, offset: u64) -> Result<u64, String> {
        let init = self.init.as_ref().ok_or("an MTT lookup before INIT_HCA")?;
        let virt = init
            .mtt_base
            .checked_add(offset)
            .ok_or_else(|| format!("MTT offset {offset:#x} beyond ICM"))?;
        let (phys, contiguous) = self
            .icm
            .translate(virt)
            .ok_or_else(|| format!("MTT entry at ICM {virt:#x} is not mapped"))?;
        if contiguous < MTT_ENTRY_SIZE {
            return Err(format!("MTT entry at ICM {virt:#x} straddles a chunk"));
        }
        let mut raw = [0u8; 8];
        dma.read(phys, &mut raw)
            .map_err(|f| format!("MTT entry read at {:#x} outside mapped memory", f.address))?;
        let raw = u64::from_be_bytes(raw);
        if raw & 1 == 0 {
            return Err(format!("MTT entry at ICM {virt:#x} is not present"));
        }
        Ok(raw & !0xfff)
    }

    fn eq_doorbell(&mut self, eqn: u32, consumer: u32, arm: bool) {
        let Some(eq) = self.eqs.get_mut(&eqn) else {
            self.driver_error(format!(
                "EQ doorbell for EQ {eqn}, which is not in hardware"
            ));
            return;
        };
        // The consumer index is 24 bits; the producer wraps at 2^32 here, so compare in
        // 24 bits.
        let ahead = eq.producer.wrapping_sub(consumer) & 0x00ff_ffff;
        if ahead > (1 << eq.log_size) {
            let producer = eq.producer;
            self.driver_error(format!(
                "EQ {eqn} consumer index {consumer} is ahead of the producer {producer}"
            ));
            return;
        }
        eq.consumer = eq.producer.wrapping_sub(ahead);
        if arm {
            if ahead > 0 {
                // Armed with events outstanding: interrupt at once.
                let vector = eq.intr;
                self.events.push(HcaEvent::Interrupt { vector });
            } else {
                eq.armed = true;
            }
        }
    }
}

/// Size of an MTT entry (`mtt_entry_sz`).
const MTT_ENTRY_SIZE: u64 = 8;

/// Whether `[offset, offset + len)` lies in `[base, base + size)`, and where.
fn within(offset: u64, len: usize, base: u64, size: u64) -> Option<usize> {
    let end = offset.checked_add(len as u64)?;
    (offset >= base && end <= base + size).then(|| (offset - base) as usize)
}

/// A 4-byte big-endian value.
fn be32(data: &[u8]) -> Option<u32> {
    data.try_into().ok().map(u32::from_be_bytes)
}
