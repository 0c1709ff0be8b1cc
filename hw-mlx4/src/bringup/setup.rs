//! `mlx4_setup_hca`, on an initialized HCA, as far as this layer goes, and the ports.
//!
//! Follows `drivers/net/ethernet/mellanox/mlx4/`: `main.c` (`mlx4_setup_hca`), `pd.c`
//! (`mlx4_init_uar_table`, `mlx4_uar_alloc`, `mlx4_init_pd_table`), `eq.c`
//! (`mlx4_init_eq_table`, `mlx4_create_eq`, `mlx4_free_eq`), `cmd.c`
//! (`mlx4_cmd_use_events`, `mlx4_cmd_wait`, `mlx4_cmd_event`, and `mlx4_NOP`, which
//! `mlx4_setup_hca` runs as the interrupt test), and the ports as `mlx4_ib_add` and
//! `mlx4_ib_modify_port` bring them up (QUERY_PORT, `mlx4_ib_SET_PORT`, INIT_PORT).
//!
//! - The UAR table keeps the first 128 pages for EQ doorbells (`mlx4_dev_cap` raises
//!   `reserved_uars` to 128) and hands the driver the next one (`priv->driver_uar`).
//! - One EQ, the async EQ, of [`ASYNC_EQ_ENTRIES`] entries on MSI-X vector 0, in pages
//!   of its own, described by MTT entries the driver writes into the MTT table's ICM
//!   with the CPU (`mlx4_write_mtt_chunk`); SW2HW_EQ gives it to the device armed; MAP_EQ
//!   sends it the async events and the command completions.
//! - Then commands complete by events: each carries a token, its completion is the
//!   command EQE with that token, found by polling the EQ (the kernel's interrupt
//!   handler does the same walk); an EQE with any other token is refused. The first
//!   event-driven command is the NOP: if no EQE comes, the interrupt path does not work
//!   (`"NOP command failed to generate MSI-X interrupt"`).
//!
//! The teardown (run before `mlx4_close_hca`'s, from [`Mlx4Core::teardown`] and from a
//! failed probe's unwinding) goes back to polling (`mlx4_cmd_use_polling`), closes the
//! ports, unmaps the events, takes the EQ back with HW2SW_EQ and frees what the tables
//! held. An EQ whose HW2SW_EQ failed keeps its pages: the device may still write them.

use crate::wire::cmd::opcode;
use crate::wire::fw::{eq_context, set_port, Mailbox};

use super::bitmap::IdBitmap;
use super::caps::{DevCaps, InvalidCap, PortCaps};
use super::cmd::{CmdError, Command};
use super::eq::{
    CompletionEvent, EqEvent, EqPage, EventQueue, PortEvent, ASYNC_EQ_ENTRIES, ASYNC_EVENT_MASK,
    COMP_EQ_ENTRIES, EQ_MAX_PAGES, MAX_COMP_EQS,
};
use super::memory::{AllocError, ICM_PAGE_SHIFT};
use super::probe::{leak, note, Mlx4Core, Platform, ProbeConfig, ProbeError, Step, MAX_PORTS};
use super::profile::{IcmLayout, Resource, MTTS_PER_SEGMENT};

/// UAR pages kept for EQ doorbells, four EQs a page (`mlx4_dev_cap`'s
/// `max(128, reserved_uars)`); the driver's UAR is the first page after them.
pub const EQ_UAR_PAGES: u32 = 128;
/// NOP's in-modifier (`mlx4_NOP`).
const NOP_IN_MODIFIER: u32 = 0x1f;

/// How often a waiting command looks at the catastrophic error buffer, in microseconds:
/// often enough that a stopped firmware ends the wait at once, rarely enough that the
/// reads (over the bus, under QEMU a round trip to the device's process) cost nothing.
const CATAS_LOOK_US: u64 = 10_000;
/// MAP_EQ's in-modifier bit that unmaps (`MLX4_EQ_UNMAP` in `mlx4_MAP_EQ`'s caller).
const MAP_EQ_UNMAP: u32 = 1 << 31;
/// The MSI-X vector of the async EQ.
const ASYNC_VECTOR: u8 = 0;

/// What the setup hands back to the probe.
pub(super) struct SetupInfo {
    pub driver_uar: u32,
    pub async_eqn: u32,
    pub comp_eqns: [Option<u32>; MAX_COMP_EQS],
    pub ports: [Option<PortCaps>; MAX_PORTS],
}

fn exhausted(step: Step) -> ProbeError {
    ProbeError::Exhausted { step }
}

impl<B> Mlx4Core<B> {
    /// `mlx4_setup_hca` and the ports. Everything is recorded as acquired, for
    /// [`Mlx4Core::release_setup`].
    pub(super) fn setup_hca<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
        config: &ProbeConfig,
    ) -> Result<SetupInfo, ProbeError> {
        // `mlx4_init_uar_table`: more UAR pages than the EQ doorbells take, or no UAR
        // is left for anyone.
        let num_uars = caps.uar_size >> ICM_PAGE_SHIFT;
        if num_uars <= u64::from(EQ_UAR_PAGES) {
            return Err(ProbeError::InvalidCap(InvalidCap {
                field: "QUERY_DEV_CAP_UAR_SZ",
                value: num_uars,
                expected: "more than 128 UAR pages",
            }));
        }
        let reserved = u64::from(EQ_UAR_PAGES.max(caps.reserved_uars.into()));
        let uars = IdBitmap::new(num_uars, reserved).map_err(|_| exhausted(Step::UarTable))?;
        let uars = self.uars.insert(uars);
        let driver_uar = uars.alloc().ok_or(exhausted(Step::UarTable))?;
        self.driver_uar = Some(driver_uar);

        // `mlx4_init_pd_table`, the MTT entries (`mlx4_init_mr_table`'s buddy, here a
        // bitmap of entries above the reserved segments), `mlx4_init_eq_table`'s bitmap.
        let pds = IdBitmap::new(caps.max_pds.into(), caps.reserved_pds.into())
            .map_err(|_| exhausted(Step::Tables))?;
        self.pds = Some(pds);
        let per_seg = u64::from(MTTS_PER_SEGMENT);
        let reserved_mtts = u64::from(caps.reserved_mtts).div_ceil(per_seg) * per_seg;
        let mtts = IdBitmap::new(layout.num_mtt_segs.saturating_mul(per_seg), reserved_mtts)
            .map_err(|_| exhausted(Step::Tables))?;
        self.mtts = Some(mtts);
        let eqns = IdBitmap::new(layout.num_eqs.into(), caps.reserved_eqs.into())
            .map_err(|_| exhausted(Step::Tables))?;
        self.eqns = Some(eqns);
        self.init_object_tables(caps, layout)?;

        let async_eqn = self.create_async_eq(p, caps, layout)?;

        // `mlx4_init_eq_table`'s completion EQs, one per MSI-X vector after the async
        // EQ's, as many as asked for and the EQ table holds (polled: before the NOP).
        let free_eqns = layout
            .num_eqs
            .saturating_sub(caps.reserved_eqs)
            .saturating_sub(1);
        let count = config.comp_eqs.min(free_eqns).min(MAX_COMP_EQS as u32) as usize;
        let mut comp_eqns = [None; MAX_COMP_EQS];
        for (index, slot) in comp_eqns.iter_mut().enumerate().take(count) {
            *slot = Some(self.create_comp_eq(p, caps, layout, index)?);
        }

        // `mlx4_cmd_use_events`, then `mlx4_NOP`: the interrupt test.
        self.cmd.use_events();
        self.exec_event(
            p,
            Step::NopInterrupt,
            Command::new(opcode::NOP).in_modifier(NOP_IN_MODIFIER),
        )?;

        let mut ports = [None; MAX_PORTS];
        for (index, slot) in ports.iter_mut().enumerate().take(caps.num_ports.into()) {
            let port = index as u8 + 1;
            *slot = Some(self.init_port(p, port, config)?);
        }
        Ok(SetupInfo {
            driver_uar,
            async_eqn,
            comp_eqns,
            ports,
        })
    }

    /// `mlx4_create_eq` for the async EQ, then `mlx4_MAP_EQ` and the arming
    /// `eq_set_ci` of `mlx4_init_eq_table`.
    fn create_async_eq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
    ) -> Result<u32, ProbeError> {
        let eqn = self.create_eq(p, caps, layout, None)?;
        let cmd = Command::new(opcode::MAP_EQ)
            .in_param(ASYNC_EVENT_MASK)
            .in_modifier(eqn);
        self.exec(p, Step::MapEq, cmd)?;
        if let Some(eq) = self.eq.as_mut() {
            eq.mapped_events = ASYNC_EVENT_MASK;
            eq.set_ci(p, true);
        }
        Ok(eqn)
    }

    /// `mlx4_create_eq` for completion EQ `index`, on MSI-X vector `index + 1`, armed.
    /// No MAP_EQ: a CQ's context names its EQ.
    fn create_comp_eq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
        index: usize,
    ) -> Result<u32, ProbeError> {
        let eqn = self.create_eq(p, caps, layout, Some(index))?;
        if let Some(eq) = self.comp_eqs.get_mut(index).and_then(Option::as_mut) {
            eq.set_ci(p, true);
        }
        Ok(eqn)
    }

    /// The slot of the async EQ (`None`) or of completion EQ `index`.
    fn eq_slot(&mut self, index: Option<usize>) -> Option<&mut Option<EventQueue<B>>> {
        match index {
            None => Some(&mut self.eq),
            Some(i) => self.comp_eqs.get_mut(i),
        }
    }

    /// `mlx4_create_eq`: the EQ's number, pages, MTT entries and context (SW2HW_EQ),
    /// recorded in its slot as acquired.
    #[inline(never)]
    fn create_eq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
        index: Option<usize>,
    ) -> Result<u32, ProbeError> {
        let (nent, vector, step) = match index {
            None => (ASYNC_EQ_ENTRIES, ASYNC_VECTOR, Step::Sw2HwEq),
            Some(i) => {
                let i = u8::try_from(i).map_err(|_| exhausted(Step::Tables))?;
                (COMP_EQ_ENTRIES, i.wrapping_add(1), Step::Sw2HwCompEq(i))
            }
        };
        let eqn = self
            .eqns
            .as_mut()
            .and_then(IdBitmap::alloc)
            .ok_or(exhausted(Step::Tables))?;
        let Some(slot) = self.eq_slot(index) else {
            if let Some(eqns) = self.eqns.as_mut() {
                eqns.free(eqn);
            }
            return Err(exhausted(Step::Tables));
        };
        let eq = slot.insert(EventQueue::new(eqn, nent));
        if eqn / 4 >= EQ_UAR_PAGES {
            // Its doorbell would be in a UAR page handed out to others.
            return Err(exhausted(Step::Tables));
        }
        let npages = EventQueue::<B>::pages_for(nent);
        let mut addresses = [0u64; EQ_MAX_PAGES];
        for address in addresses.iter_mut().take(npages) {
            let block = p.alloc(0).ok_or(ProbeError::Memory {
                step: Step::EqMemory,
                error: AllocError::NoMemory,
            })?;
            let bus_address = p.bus_address(&block);
            *address = bus_address;
            if let Err(page) = eq.push_page(EqPage { block, bus_address }) {
                p.free(page.block);
                return Err(ProbeError::Memory {
                    step: Step::EqMemory,
                    error: AllocError::TooManyChunks,
                });
            }
        }

        // `mlx4_mtt_init` and `mlx4_write_mtt`: one entry per page.
        let count = npages as u32;
        let first = self
            .mtts
            .as_mut()
            .and_then(|m| m.alloc_range(count, count.next_power_of_two()))
            .ok_or(exhausted(Step::EqMemory))?;
        if let Some(eq) = self.eq_slot(index).and_then(Option::as_mut) {
            eq.mtt = (first, count);
        }
        let mtt_base = layout.table(Resource::Mtt).base;
        let entry_size = u64::from(caps.entry_sizes.mtt);
        for (i, &address) in addresses.iter().take(npages).enumerate() {
            self.write_mtt_entry(p, mtt_base, entry_size, first + i as u32, address)?;
        }

        // The EQ context (`mlx4_create_eq`): armed, 2^n entries, its vector, 4 KiB
        // pages (`PAGE_SHIFT - MLX4_ICM_PAGE_SHIFT` = 0), and where its MTT entries are.
        let mut context = [0u8; eq_context::SIZE];
        let mut m = Mailbox(&mut context[..]);
        m.set_u32(eq_context::FLAGS, eq_context::FLAGS_ARMED);
        m.set_u8(eq_context::LOG_EQ_SIZE, nent.ilog2() as u8);
        m.set_u8(eq_context::INTR, vector);
        m.set_u8(eq_context::LOG_PAGE_SIZE, 0);
        let mtt_address = u64::from(first) * entry_size;
        m.set_u8(eq_context::MTT_BASE_ADDR_H, (mtt_address >> 32) as u8);
        m.set_u32(eq_context::MTT_BASE_ADDR_L, mtt_address as u32);
        self.write_inbox(p, &context)?;
        let cmd = Command::new(opcode::SW2HW_EQ)
            .in_param(self.inbox_address())
            .in_modifier(eqn);
        self.exec(p, step, cmd)?;
        if let Some(eq) = self.eq_slot(index).and_then(Option::as_mut) {
            eq.in_hardware = true;
        }
        Ok(eqn)
    }

    /// `mlx4_ib_SET_PORT` on an open port: its new PortInfo:CapabilityMask (the IB CM's
    /// and the SM's bits, `mlx4_ib_modify_port`).
    pub fn set_port_capabilities<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        cap_mask: u32,
    ) -> Result<(), ProbeError> {
        let mut inbox = [0u8; set_port::IN_SIZE];
        Mailbox(&mut inbox[..]).set_u32(set_port::CAPABILITY_MASK, cap_mask);
        self.write_inbox(p, &inbox)?;
        let cmd = Command::new(opcode::SET_PORT)
            .in_param(self.inbox_address())
            .in_modifier(port.into())
            .op_modifier(set_port::IB_OPCODE);
        self.command(p, Step::SetPort(port), cmd).map(|_| ())
    }

    /// Opens port `port`: QUERY_PORT, SET_PORT (the IB layout, `mlx4_ib_SET_PORT`),
    /// INIT_PORT. By events.
    #[inline(never)]
    fn init_port<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        port: u8,
        config: &ProbeConfig,
    ) -> Result<PortCaps, ProbeError> {
        let mut out = [0u8; PortCaps::OUT_SIZE];
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = Command::new(opcode::QUERY_PORT)
            .in_modifier(port.into())
            .out_param(outbox.bus_address);
        self.exec_event(p, Step::QueryPort(port), cmd)?;
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if !p.read(&outbox.block, 0, &mut out) {
            return Err(ProbeError::MailboxAccess);
        }
        let caps = PortCaps::parse(port, &out).map_err(ProbeError::InvalidCap)?;

        let mut inbox = [0u8; set_port::IN_SIZE];
        Mailbox(&mut inbox[..]).set_u32(set_port::CAPABILITY_MASK, config.ib_cap_mask);
        self.write_inbox(p, &inbox)?;
        let cmd = Command::new(opcode::SET_PORT)
            .in_param(self.inbox_address())
            .in_modifier(port.into())
            .op_modifier(set_port::IB_OPCODE);
        self.exec_event(p, Step::SetPort(port), cmd)?;

        let cmd = Command::new(opcode::INIT_PORT).in_modifier(port.into());
        self.exec_event(p, Step::InitPort(port), cmd)?;
        if let Some(up) = self.ports_up.get_mut(usize::from(port) - 1) {
            *up = true;
        }
        Ok(caps)
    }

    /// Runs a command to completion by its command EQE (`mlx4_cmd_wait`): posts it with
    /// a token, then walks the EQ until the EQE with that token comes, or the command's
    /// timeout passes (then the interface is wedged, as after a polled timeout). A
    /// catastrophic error ends the wait at once (`CmdError::InternalError`), as upstream's
    /// error state wakes every waiting command: its firmware has stopped and would
    /// leave the command, and the caller, waiting out the whole timeout.
    fn exec_event<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        cmd: Command,
    ) -> Result<u64, ProbeError> {
        let failed = |error| ProbeError::Command { step, error };
        if self.in_catastrophic_error(p) {
            return Err(failed(self.cmd.abandon_after_error(cmd.opcode)));
        }
        self.cmd.post_event(p, &cmd).map_err(failed)?;
        let start = p.now_us();
        let mut looked = start;
        loop {
            if let Some(result) = self.drain_eq(p)? {
                return result.map_err(failed);
            }
            let now = p.now_us();
            if now.saturating_sub(looked) >= CATAS_LOOK_US {
                looked = now;
                if self.in_catastrophic_error(p) {
                    return Err(failed(self.cmd.abandon_after_error(cmd.opcode)));
                }
            }
            if now.saturating_sub(start) >= cmd.timeout_us {
                // One last look, as after a polled timeout.
                if let Some(result) = self.drain_eq(p)? {
                    return result.map_err(failed);
                }
                return Err(failed(self.cmd.abandon_event()));
            }
            p.relax();
        }
    }

    /// Whether the error buffer reports a catastrophic error (one that cannot be read
    /// reports none: the poll that reads it says so).
    fn in_catastrophic_error<P: Platform<Block = B>>(&self, p: &mut P) -> bool {
        matches!(self.catastrophic_error(p), Ok(Some(_)))
    }

    /// Consumes every EQE the device has written (`mlx4_eq_int`): a command completion
    /// goes to the command interface, which refuses a stale token; anything else is
    /// counted as an async event. Re-arms the EQ after consuming. Returns the waiting
    /// command's outcome if its EQE was among them.
    fn drain_eq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<Option<Result<u64, CmdError>>, ProbeError> {
        let Some(eq) = self.eq.as_mut() else {
            return Ok(None);
        };
        let mut outcome = None;
        let mut consumed = false;
        while let Some(event) = eq.next(p).map_err(|_| ProbeError::EqAccess)? {
            consumed = true;
            match event {
                EqEvent::Command {
                    token,
                    status,
                    out_param,
                } => {
                    // A stale token is refused and counted by the interface; the
                    // waiting command waits on.
                    if let Ok((_, result)) = self.cmd.complete_event(token, status, out_param) {
                        outcome = Some(result);
                    }
                }
                other => {
                    self.async_events = self.async_events.saturating_add(1);
                    self.last_async_event = Some(other);
                    if let EqEvent::PortChange { port, subtype } = other {
                        let typed = PortEvent::from_port_change(port, subtype, MAX_PORTS as u8);
                        let free = self.port_events.iter_mut().find(|e| e.is_none());
                        match (typed, free) {
                            (Some(event), Some(slot)) => *slot = Some(event),
                            _ => {
                                self.dropped_port_events =
                                    self.dropped_port_events.saturating_add(1);
                            }
                        }
                    }
                }
            }
        }
        if consumed {
            eq.set_ci(p, true);
        }
        Ok(outcome)
    }

    /// The oldest port event the async EQ delivered that the IB device layer has not
    /// taken yet (it dispatches them to the IB core, `mlx4_ib_event`).
    pub fn take_port_event(&mut self) -> Option<PortEvent> {
        let first = self.port_events.first_mut()?.take();
        self.port_events.rotate_left(1);
        first
    }

    /// Port events dropped: the queue was full, or the EQE named a port or subtype the
    /// driver does not know.
    pub fn dropped_port_events(&self) -> u32 {
        self.dropped_port_events
    }

    /// The number of completion EQ `index`, if it was created (lent or not).
    pub fn comp_eqn(&self, index: usize) -> Option<u32> {
        match self.comp_eqs.get(index)?.as_ref() {
            Some(eq) => Some(eq.eqn),
            None => self.lent_comp_eqs.get(index)?.map(|(eqn, _)| eqn),
        }
    }

    /// Lends completion EQ `index` to its vector's interrupt handler, which walks it
    /// (`mlx4_eq_int`: `EventQueue::next`, then `set_ci` re-arming it) in interrupt
    /// context, apart from the core and its commands; `None` if there is no such EQ or it
    /// is lent already. The handler gives it back ([`Mlx4Core::return_comp_eq`]) before
    /// the teardown; one still lent then is only taken from the device (HW2SW_EQ), its
    /// pages left to the handler, which may free them once the teardown returned.
    pub fn lend_comp_eq(&mut self, index: usize) -> Option<EventQueue<B>> {
        let eq = self.comp_eqs.get_mut(index)?.take()?;
        if let Some(slot) = self.lent_comp_eqs.get_mut(index) {
            *slot = Some((eq.eqn, eq.mtt));
        }
        Some(eq)
    }

    /// Takes back a completion EQ lent as `index`; the EQ back if it is not that one.
    pub fn return_comp_eq(&mut self, index: usize, eq: EventQueue<B>) -> Result<(), EventQueue<B>> {
        let lent = self.lent_comp_eqs.get(index).copied().flatten();
        match (lent, self.comp_eqs.get_mut(index)) {
            (Some((eqn, _)), Some(slot)) if eqn == eq.eqn && slot.is_none() => {
                *slot = Some(eq);
                if let Some(record) = self.lent_comp_eqs.get_mut(index) {
                    *record = None;
                }
                Ok(())
            }
            _ => Err(eq),
        }
    }

    /// Walks completion EQ `index` (`mlx4_eq_int` on its vector): each completion EQE
    /// naming one of the driver's CQs goes to `deliver` (`mlx4_cq_completion`); one
    /// naming an unknown CQN, or anything but a completion, is refused and counted.
    /// Re-arms the EQ after consuming. Returns how many were delivered.
    pub fn poll_completions<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        index: usize,
        mut deliver: impl FnMut(CompletionEvent),
    ) -> Result<u32, ProbeError> {
        let Some(eq) = self.comp_eqs.get_mut(index).and_then(Option::as_mut) else {
            return Err(ProbeError::EqAccess);
        };
        let mut delivered = 0u32;
        let mut consumed = false;
        while let Some(event) = eq.next(p).map_err(|_| ProbeError::EqAccess)? {
            consumed = true;
            let known = |cqn| self.cqns.as_ref().is_some_and(|t| t.is_allocated(cqn));
            match event {
                EqEvent::Completion { cqn } if known(cqn) => {
                    delivered = delivered.saturating_add(1);
                    deliver(CompletionEvent { cqn });
                }
                _ => self.refused_completions = self.refused_completions.saturating_add(1),
            }
        }
        if consumed {
            eq.set_ci(p, true);
        }
        Ok(delivered)
    }

    /// Completion EQEs refused: an unknown CQN, or not a completion.
    pub fn refused_completions(&self) -> u32 {
        self.refused_completions
    }

    /// Runs a command after the probe: by events once the setup switched to them,
    /// by polling otherwise. `step` names it in the error.
    pub fn command<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        cmd: Command,
    ) -> Result<u64, ProbeError> {
        if self.cmd.uses_events() {
            self.exec_event(p, step, cmd)
        } else {
            self.cmd
                .exec_imm(p, &cmd)
                .map_err(|error| ProbeError::Command { step, error })
        }
    }

    /// Consumes the EQEs the device has written since (the interrupt handler's walk).
    pub fn poll_events<P: Platform<Block = B>>(&mut self, p: &mut P) -> Result<(), ProbeError> {
        self.drain_eq(p).map(|_| ())
    }

    /// Async events (not command completions) the EQ has delivered.
    pub fn async_events(&self) -> u32 {
        self.async_events
    }

    /// The last async event the EQ delivered (nothing dispatches them yet).
    pub fn last_async_event(&self) -> Option<EqEvent> {
        self.last_async_event
    }

    /// The driver's UAR page index, once set up.
    pub fn driver_uar(&self) -> Option<u32> {
        self.driver_uar
    }

    /// Which ports INIT_PORT opened.
    pub fn ports_up(&self) -> [bool; MAX_PORTS] {
        self.ports_up
    }

    /// Allocates a protection domain number (`mlx4_pd_alloc`).
    pub fn alloc_pd(&mut self) -> Option<u32> {
        self.pds.as_mut()?.alloc()
    }

    /// Frees a protection domain number; false if it was not allocated.
    pub fn free_pd(&mut self, pd: u32) -> bool {
        self.pds.as_mut().is_some_and(|t| t.free(pd))
    }

    /// Undoes the setup, in reverse; returns the blocks leaked (the device may still
    /// write them).
    pub(super) fn release_setup<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        failure: &mut Option<(Step, CmdError)>,
    ) -> usize {
        // `mlx4_cmd_use_polling`: the teardown does not need the interrupt path.
        self.cmd.use_polling();
        for index in (0..MAX_PORTS).rev() {
            if self.ports_up.get(index) == Some(&true) {
                let port = index as u8 + 1;
                let cmd = Command::new(opcode::CLOSE_PORT).in_modifier(port.into());
                if let Err(error) = self.cmd.exec(p, &cmd) {
                    note(failure, Step::ClosePort(port), error);
                }
                if let Some(up) = self.ports_up.get_mut(index) {
                    *up = false;
                }
            }
        }

        let mut leaked = 0;
        for index in (0..MAX_COMP_EQS).rev() {
            if let Some(eq) = self.comp_eqs.get_mut(index).and_then(Option::take) {
                leaked += self.release_eq(p, eq, failure);
            }
            // Still lent: the device lets go of it; its pages are the handler's.
            if let Some((eqn, (first, count))) =
                self.lent_comp_eqs.get_mut(index).and_then(Option::take)
            {
                let cmd = Command::new(opcode::HW2SW_EQ)
                    .op_modifier(1)
                    .in_modifier(eqn);
                if let Err(error) = self.cmd.exec(p, &cmd) {
                    note(failure, Step::Hw2SwEq, error);
                }
                if let Some(mtts) = self.mtts.as_mut() {
                    mtts.free_range(first, count);
                }
                if let Some(eqns) = self.eqns.as_mut() {
                    eqns.free(eqn);
                }
            }
        }
        if let Some(eq) = self.eq.take() {
            leaked += self.release_eq(p, eq, failure);
        }
        self.drop_object_tables();
        self.eqns = None;
        self.mtts = None;
        self.pds = None;
        if let (Some(uar), Some(uars)) = (self.driver_uar.take(), self.uars.as_mut()) {
            uars.free(uar);
        }
        self.uars = None;
        leaked
    }
}

impl<B> Mlx4Core<B> {
    /// `mlx4_free_eq_table`'s MAP_EQ unmap (if mapped), then `mlx4_free_eq`'s
    /// HW2SW_EQ; the pages, MTT entries and number given back, or the pages leaked if
    /// the device keeps the EQ.
    fn release_eq<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        mut eq: EventQueue<B>,
        failure: &mut Option<(Step, CmdError)>,
    ) -> usize {
        let mut leaked = 0;
        if eq.mapped_events != 0 {
            let cmd = Command::new(opcode::MAP_EQ)
                .in_param(eq.mapped_events)
                .in_modifier(MAP_EQ_UNMAP | eq.eqn);
            if let Err(error) = self.cmd.exec(p, &cmd) {
                note(failure, Step::UnmapEq, error);
            }
            eq.mapped_events = 0;
        }
        let mut device_keeps = false;
        if eq.in_hardware {
            let cmd = Command::new(opcode::HW2SW_EQ)
                .op_modifier(1)
                .in_modifier(eq.eqn);
            if let Err(error) = self.cmd.exec(p, &cmd) {
                note(failure, Step::Hw2SwEq, error);
                device_keeps = true;
            }
            eq.in_hardware = false;
        }
        while let Some(page) = eq.pop_page() {
            if device_keeps {
                leaked += leak_page(page);
            } else {
                p.free(page.block);
            }
        }
        let (first, count) = eq.mtt;
        if count > 0 {
            if let Some(mtts) = self.mtts.as_mut() {
                mtts.free_range(first, count);
            }
        }
        if let Some(eqns) = self.eqns.as_mut() {
            eqns.free(eq.eqn);
        }
        leaked
    }
}

fn leak_page<B>(page: EqPage<B>) -> usize {
    leak(super::memory::Chunk {
        block: page.block,
        bus_address: page.bus_address,
        log_pages: 0,
        icm_address: 0,
        mapped: true,
    })
}
