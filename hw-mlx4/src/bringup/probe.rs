//! The probe of a ConnectX-3 physical function in native mode, and its teardown.
//!
//! Follows `mlx4_load_one` in `drivers/net/ethernet/mellanox/mlx4/main.c` as far as the
//! HCA is initialized: `mlx4_get_ownership`, `mlx4_init_fw` (QUERY_FW, `mlx4_load_fw`:
//! MAP_FA and RUN_FW, then MOD_STAT_CFG), and `mlx4_init_hca` (`mlx4_dev_cap`:
//! QUERY_DEV_CAP; `mlx4_make_profile`; `mlx4_init_icm`: SET_ICM_SIZE, MAP_ICM_AUX, the
//! context tables' MAP_ICM; INIT_HCA; QUERY_HCA; QUERY_ADAPTER). The teardown is
//! `mlx4_close_hca` (CLOSE_HCA, `mlx4_free_icms`), `mlx4_close_fw` (UNMAP_FA) and
//! `mlx4_free_ownership`.
//!
//! Then `mlx4_setup_hca` as far as this layer goes (see [`super::setup`]): the UAR and
//! PD tables and the driver's UAR, the async EQ (SW2HW_EQ, MAP_EQ), the switch to
//! event-driven commands and the NOP interrupt test, and the ports (QUERY_PORT,
//! SET_PORT, INIT_PORT); their teardown runs first (CLOSE_PORT, MAP_EQ unmap, HW2SW_EQ).
//!
//! Everything acquired is recorded as it is acquired, and one release path undoes what
//! the record holds, in reverse: a probe that fails at any step leaves the device as it
//! found it, by the same code as the teardown.

use crate::wire::cmd::{opcode, OWNER_BASE};
use crate::wire::fw::{init_hca, mod_stat_cfg, query_hca, Mailbox, MAILBOX_SIZE};

use super::bitmap::IdBitmap;
use super::caps::{AdapterInfo, DevCaps, FwInfo, InvalidCap, PortCaps};
use super::cmd::{CmdError, Command, CommandEdge, CommandInterface};
use super::eq::{EventEdge, EventQueue, PortEvent, MAX_COMP_EQS};

/// Port events the core holds for the IB device layer.
pub const PORT_EVENT_QUEUE: usize = 8;
use super::memory::{
    alloc_area, AllocError, Chunk, Chunks, HostMemory, ICM_PAGE_SHIFT, ICM_PAGE_SIZE,
    MAX_CHUNK_LOG_PAGES,
};
use super::objects::{DemandChunk, CQN_WORDS, DEMAND_CHUNKS, MPT_WORDS, QPN_WORDS};
use super::profile::{icm_tables, make_profile, IcmLayout, Profile, ProfileError, Resource};
use super::reset::{reset_function, ResetEdge, ResetError};

/// The most chunks of firmware area the driver holds (16 MiB in 256 KiB chunks).
pub const FW_AREA_CHUNKS: usize = 64;
/// The most chunks of auxiliary ICM (32 MiB in 256 KiB chunks).
pub const AUX_AREA_CHUNKS: usize = 128;
/// The most ICM chunks mapped at probe (the reserved parts of 13 tables and the whole
/// multicast table).
pub const ICM_CHUNKS: usize = 96;
/// VPM entries per MAP_* command: a mailbox's worth (`mlx4_map_cmd`).
const VPM_PER_MAILBOX: usize = MAILBOX_SIZE / 16;
/// The ICM table chunk: the unit `mlx4_init_icm_table` maps (`MLX4_TABLE_CHUNK_SIZE`).
const TABLE_CHUNK_SIZE: u64 = (ICM_PAGE_SIZE as u64) << MAX_CHUNK_LOG_PAGES;
/// How long `mlx4_free_ownership` lets the firmware settle after giving the device up.
const OWNERSHIP_RELEASE_MS: u32 = 1000;

/// What the probe needs of the platform: BAR0 and the clock, DMA memory, and BAR2's EQ
/// doorbells.
pub trait Platform: CommandEdge + HostMemory + EventEdge + ResetEdge {}
impl<P: CommandEdge + HostMemory + EventEdge + ResetEdge> Platform for P {}

/// The most ports a ConnectX-3 has.
pub const MAX_PORTS: usize = 2;
/// UAR table capacity in 64-bit words: 512 UAR pages (the emulated device has 512).
pub(super) const UAR_WORDS: usize = 8;
/// PD table capacity in words: 4096 PDs (the device offers 2^17; the rest waits for a
/// table that is not inline).
pub(super) const PD_WORDS: usize = 64;
/// EQ table capacity in words: 1024 EQs (`MLX4_MAX_EQ_NUM`).
pub(super) const EQ_WORDS: usize = 16;
/// MTT table capacity in words: the first 65536 MTT entries (8 KiB of bitmap), for the
/// queues and the fast-registration MRs; a storage ULP asks for many of the latter
/// (the kernel's iSER: 128 MRs of 256 entries per connection).
pub(super) const MTT_WORDS: usize = 1024;

/// The probe's choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The context counts to ask for.
    pub profile: Profile,
    /// The length of BAR2, which must hold the UAR area.
    pub uar_bar_size: u64,
    /// The PortInfo:CapabilityMask SET_PORT gives each InfiniBand port.
    pub ib_cap_mask: u32,
    /// Completion EQs wanted, one per MSI-X vector after the async EQ's (upstream: one
    /// per online CPU); fewer if the EQ table or [`super::eq::MAX_COMP_EQS`] is smaller.
    pub comp_eqs: u32,
}

/// A step of the probe or the teardown, to say where something failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the ownership semaphore.
    Ownership,
    /// Allocating the command mailboxes.
    Mailboxes,
    /// QUERY_FW.
    QueryFw,
    /// Allocating and mapping the firmware area (MAP_FA).
    MapFa,
    /// RUN_FW.
    RunFw,
    /// MOD_STAT_CFG (the ICM page size).
    ModStatCfg,
    /// QUERY_DEV_CAP.
    QueryDevCap,
    /// SET_ICM_SIZE.
    SetIcmSize,
    /// Allocating and mapping auxiliary ICM (MAP_ICM_AUX).
    MapIcmAux,
    /// Allocating and mapping a context table's ICM (MAP_ICM); the table's name.
    MapIcm(&'static str),
    /// INIT_HCA.
    InitHca,
    /// QUERY_HCA.
    QueryHca,
    /// QUERY_ADAPTER.
    QueryAdapter,
    /// CLOSE_HCA.
    CloseHca,
    /// UNMAP_ICM.
    UnmapIcm,
    /// UNMAP_ICM_AUX.
    UnmapIcmAux,
    /// UNMAP_FA.
    UnmapFa,
    /// Setting up the UAR table and allocating the driver's UAR.
    UarTable,
    /// Setting up the PD, MTT and EQ tables.
    Tables,
    /// Allocating the EQ's pages and writing its MTT entries.
    EqMemory,
    /// SW2HW_EQ.
    Sw2HwEq,
    /// SW2HW_EQ of a completion EQ; its index.
    Sw2HwCompEq(u8),
    /// MAP_EQ of the async events and command completions.
    MapEq,
    /// The NOP interrupt test: the first command completed by an event.
    NopInterrupt,
    /// QUERY_PORT of a port.
    QueryPort(u8),
    /// SET_PORT of a port.
    SetPort(u8),
    /// INIT_PORT of a port.
    InitPort(u8),
    /// CLOSE_PORT of a port.
    ClosePort(u8),
    /// MAP_EQ with the unmap bit.
    UnmapEq,
    /// HW2SW_EQ.
    Hw2SwEq,
    /// Allocating MTT entries and mapping their ICM.
    Mtt,
    /// SW2HW_MPT (and the dMPT's ICM).
    Sw2HwMpt,
    /// HW2SW_MPT.
    Hw2SwMpt,
    /// SW2HW_CQ (and the CQ's ICM).
    Sw2HwCq,
    /// HW2SW_CQ.
    Hw2SwCq,
    /// MODIFY_CQ resizing a CQ.
    ResizeCq,
    /// A queue's buffer or doorbell record.
    QueueMemory,
    /// A QP's number and ICM.
    QpMemory,
    /// A QP state transition; its opcode.
    ModifyQp(u16),
    /// CONF_SPECIAL_QP.
    ConfSpecialQp,
    /// MAD_IFC to a port.
    MadIfc(u8),
    /// MGID_HASH, READ_MCG or WRITE_MCG, attaching or detaching a multicast member.
    Multicast,
}

/// Why the probe failed. The device has been released when the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Another function owns the device (`mlx4_get_ownership` read nonzero: "Multiple
    /// PFs not yet supported").
    NotOwner,
    /// The function reset failed (`mlx4_reset`).
    Reset(ResetError),
    /// The catastrophic error buffer is in BAR 2, which the driver does not read.
    CatasBufferUnreachable,
    /// A command failed.
    Command {
        /// Which.
        step: Step,
        /// How.
        error: CmdError,
    },
    /// Host memory could not be had.
    Memory {
        /// For what.
        step: Step,
        /// Why.
        error: AllocError,
    },
    /// The firmware reported something the driver cannot use.
    InvalidCap(InvalidCap),
    /// No ICM profile fits the device.
    Profile(ProfileError),
    /// SET_ICM_SIZE asked for no auxiliary pages, or more than the driver holds.
    AuxPages {
        /// The pages asked for.
        pages: u64,
    },
    /// QUERY_HCA reports a layout other than the one INIT_HCA gave.
    LayoutMismatch {
        /// The INIT_HCA field that differs.
        field: &'static str,
    },
    /// The platform refused a mailbox access inside the mailbox (a platform bug).
    MailboxAccess,
    /// A table had no number left to hand out (or none to start with).
    Exhausted {
        /// Which step.
        step: Step,
    },
    /// An MTT entry the driver writes lies in ICM not mapped (neither at probe nor on
    /// demand by `mlx4_table_get`), or could not be written.
    MttNotMapped {
        /// The MTT entry.
        entry: u32,
    },
    /// The platform refused a read of the EQ's own pages (a platform bug).
    EqAccess,
    /// A QP transition from a state it does not start from.
    QpState {
        /// The QP.
        qpn: u32,
    },
    /// A multicast attach or detach the table refused.
    Multicast(super::mcg::McgError),
}

impl ProbeError {
    /// A command refused or given up on because the device is in its catastrophic error
    /// state: the error poll reports it once and resets the function, so a caller has
    /// nothing of its own to say.
    pub fn is_catastrophic(&self) -> bool {
        matches!(
            self,
            ProbeError::Command {
                error: CmdError::InternalError { .. },
                ..
            }
        )
    }
}

/// Why a teardown (or the unwinding of a failed probe) did not end cleanly. It always
/// runs to the end: the device is released as far as it lets itself be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeardownError {
    /// The first command that failed.
    pub step: Step,
    /// How.
    pub error: CmdError,
    /// Chunks the device may still use, deliberately not freed: their memory must not
    /// be reused until the function is reset.
    pub leaked_chunks: usize,
}

/// A nonzero word of the catastrophic error buffer: which, and its value (the
/// firmware's syndrome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatastrophicError {
    /// The word's index in the buffer.
    pub word: u32,
    /// Its value.
    pub value: u32,
}

/// What the probe learned about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// QUERY_FW.
    pub fw: FwInfo,
    /// QUERY_DEV_CAP.
    pub caps: DevCaps,
    /// The ICM layout INIT_HCA was given.
    pub layout: IcmLayout,
    /// QUERY_ADAPTER.
    pub adapter: AdapterInfo,
    /// The core clock in MHz, from QUERY_HCA.
    pub core_clock_mhz: u16,
    /// Whether MOD_STAT_CFG took the 4 KiB ICM page size (upstream only warns if not).
    pub page_size_set: bool,
    /// The driver's own UAR page (`priv->driver_uar`): its index, at this offset of BAR2.
    pub driver_uar: u32,
    /// The async EQ's number; it takes the command completions too.
    pub async_eqn: u32,
    /// The completion EQs' numbers, in index order (EQ `i` on MSI-X vector `i + 1`).
    pub comp_eqns: [Option<u32>; MAX_COMP_EQS],
    /// QUERY_PORT of each port, initialized (INIT_PORT) in this order.
    pub ports: [Option<PortCaps>; MAX_PORTS],
}

/// A command mailbox: one page of DMA memory.
#[derive(Debug)]
pub(super) struct MailboxPage<B> {
    pub(super) block: B,
    pub(super) bus_address: u64,
}

/// The driver's core of one ConnectX-3 function: the command interface and everything
/// the device has been given.
///
/// Call [`Mlx4Core::teardown`] before dropping it: what it holds is given back by the
/// teardown, not by drop.
pub struct Mlx4Core<B> {
    pub(super) cmd: CommandInterface,
    owner: bool,
    pub(super) inbox: Option<MailboxPage<B>>,
    pub(super) outbox: Option<MailboxPage<B>>,
    fw_area: Chunks<B, FW_AREA_CHUNKS>,
    fw_running: bool,
    aux_area: Chunks<B, AUX_AREA_CHUNKS>,
    pub(super) icm: Chunks<B, ICM_CHUNKS>,
    hca_initialized: bool,
    info: Option<DeviceInfo>,
    unwind_error: Option<TeardownError>,
    /// `mlx4_setup_hca`'s tables: UARs (with the driver's), PDs, MTT entries, EQs.
    pub(super) uars: Option<IdBitmap<UAR_WORDS>>,
    pub(super) driver_uar: Option<u32>,
    pub(super) pds: Option<IdBitmap<PD_WORDS>>,
    pub(super) mtts: Option<IdBitmap<MTT_WORDS>>,
    pub(super) eqns: Option<IdBitmap<EQ_WORDS>>,
    /// The async EQ, from its allocation to its HW2SW_EQ.
    pub(super) eq: Option<EventQueue<B>>,
    /// The completion EQs, each from its allocation to its HW2SW_EQ.
    pub(super) comp_eqs: [Option<EventQueue<B>>; MAX_COMP_EQS],
    /// Completion EQs lent to their vectors' interrupt handlers: number and MTT range.
    pub(super) lent_comp_eqs: [Option<(u32, (u32, u32))>; MAX_COMP_EQS],
    /// Typed port events not yet taken by the IB device layer, oldest first.
    pub(super) port_events: [Option<PortEvent>; PORT_EVENT_QUEUE],
    /// Port events dropped: the queue was full, or the EQE named no port or subtype the
    /// driver knows.
    pub(super) dropped_port_events: u32,
    /// Completion EQEs refused: an unknown CQN, or not a completion at all.
    pub(super) refused_completions: u32,
    /// Ports INIT_PORT opened.
    pub(super) ports_up: [bool; MAX_PORTS],
    /// Async events seen on the EQ (everything but command completions).
    pub(super) async_events: u32,
    /// The last of them, until the layer above dispatches them.
    pub(super) last_async_event: Option<super::eq::EqEvent>,
    /// Table chunks mapped on demand (`mlx4_table_get`), with their users.
    pub(super) demand: [Option<DemandChunk<B>>; DEMAND_CHUNKS],
    /// CQ, QP and MPT numbers.
    pub(super) cqns: Option<IdBitmap<CQN_WORDS>>,
    pub(super) qpns: Option<IdBitmap<QPN_WORDS>>,
    pub(super) mpt_indices: Option<IdBitmap<MPT_WORDS>>,
    /// The multicast table's halves and its AMGM numbers.
    pub(super) mcg: Option<super::mcg::McgTable>,
    /// The first special QP.
    pub(super) base_sqpn: u32,
    /// Blocks object releases leaked because the device kept them.
    pub(super) leaked_objects: usize,
}

impl<B> Default for Mlx4Core<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Mlx4Core<B> {
    const NO_EQ: Option<EventQueue<B>> = None;
    const NO_DEMAND_CHUNK: Option<DemandChunk<B>> = None;

    /// A core that holds nothing. It is large (its chunk lists and tables are inline,
    /// some 20 KiB): a `const fn`, so that the kernel can build it from a constant
    /// straight into its heap allocation rather than on its small stack.
    pub const fn new() -> Self {
        Self {
            cmd: CommandInterface::new(),
            owner: false,
            inbox: None,
            outbox: None,
            fw_area: Chunks::new(),
            fw_running: false,
            aux_area: Chunks::new(),
            icm: Chunks::new(),
            hca_initialized: false,
            info: None,
            unwind_error: None,
            uars: None,
            driver_uar: None,
            pds: None,
            mtts: None,
            eqns: None,
            eq: None,
            comp_eqs: [Self::NO_EQ; MAX_COMP_EQS],
            lent_comp_eqs: [None; MAX_COMP_EQS],
            port_events: [None; PORT_EVENT_QUEUE],
            dropped_port_events: 0,
            refused_completions: 0,
            ports_up: [false; MAX_PORTS],
            async_events: 0,
            last_async_event: None,
            demand: [Self::NO_DEMAND_CHUNK; DEMAND_CHUNKS],
            cqns: None,
            qpns: None,
            mpt_indices: None,
            mcg: None,
            base_sqpn: 0,
            leaked_objects: 0,
        }
    }

    /// What the probe learned, once it succeeded.
    pub fn info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }

    /// Whether the HCA is initialized (INIT_HCA done, CLOSE_HCA not yet).
    pub fn is_initialized(&self) -> bool {
        self.hca_initialized
    }

    /// The command interface, for the commands that follow the probe.
    pub fn commands(&mut self) -> &mut CommandInterface {
        &mut self.cmd
    }

    /// What went wrong while a failed probe was unwinding, if anything did.
    pub fn unwind_error(&self) -> Option<&TeardownError> {
        self.unwind_error.as_ref()
    }

    /// Pages of host memory the device holds: firmware area, auxiliary ICM, ICM.
    pub fn pages_given(&self) -> (u64, u64, u64) {
        (
            self.fw_area.pages(),
            self.aux_area.pages(),
            self.icm.pages(),
        )
    }

    /// Looks at the catastrophic error buffer QUERY_FW placed (`poll_catas`): the first
    /// nonzero word, if any. Upstream polls it every 5 s; so does the kernel driver.
    pub fn catastrophic_error<P: CommandEdge>(
        &self,
        p: &mut P,
    ) -> Result<Option<CatastrophicError>, ProbeError> {
        let Some(info) = &self.info else {
            return Ok(None);
        };
        if info.fw.catas.bar != 0 {
            return Err(ProbeError::CatasBufferUnreachable);
        }
        for word in 0..info.fw.catas_words {
            let value = p.bar0_read_be32(info.fw.catas.offset + u64::from(word) * 4);
            if value != 0 {
                return Ok(Some(CatastrophicError { word, value }));
            }
        }
        Ok(None)
    }

    /// Recovers from a catastrophic error (`mlx4_enter_error_state` and the reset of
    /// `mlx4_restart_one`): resets the function, after which the device has forgotten
    /// everything it was given, then releases all of it without a command reaching the
    /// device (see [`CommandInterface::enter_device_lost`]), leaving the core as new,
    /// ready for [`Mlx4Core::probe`]. Objects the caller still holds must be dropped
    /// without their destroy commands. If the reset fails the device may still use the
    /// memory: the interface is wedged, so any later teardown leaks it.
    pub fn recover_from_error<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<(), ResetError> {
        self.reset_after_error(p)?;
        self.release_after_error(p);
        Ok(())
    }

    /// The first half of [`Mlx4Core::recover_from_error`]: the reset, after which every
    /// command succeeds at once without reaching the device, so the objects built on
    /// the core (an IB device's) can be destroyed through it before the release.
    pub fn reset_after_error<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<(), ResetError> {
        if let Err(error) = reset_function(p) {
            self.cmd.wedge();
            return Err(error);
        }
        // The reset cleared the ownership semaphore with the rest.
        self.owner = false;
        self.cmd.enter_device_lost();
        Ok(())
    }

    /// The second half: everything released, the core as new, ready for
    /// [`Mlx4Core::probe`].
    pub fn release_after_error<P: Platform<Block = B>>(&mut self, p: &mut P) {
        self.info = None;
        // Every command succeeds at once now, so nothing is leaked.
        let _ = self.release(p);
        self.cmd = CommandInterface::new();
    }

    /// Brings the device up to an initialized HCA. On failure everything done is undone
    /// before the error returns (see [`Mlx4Core::unwind_error`]).
    pub fn probe<P: Platform<Block = B>>(
        &mut self,
        platform: &mut P,
        config: &ProbeConfig,
    ) -> Result<&DeviceInfo, ProbeError> {
        self.unwind_error = None;
        match self.bring_up(platform, config) {
            Ok(info) => Ok(self.info.insert(info)),
            Err(error) => {
                self.unwind_error = self.release(platform).err();
                Err(error)
            }
        }
    }

    /// Closes the HCA and gives back everything the probe gave the device, in reverse.
    pub fn teardown<P: Platform<Block = B>>(
        &mut self,
        platform: &mut P,
    ) -> Result<(), TeardownError> {
        self.info = None;
        self.release(platform)
    }

    fn bring_up<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        config: &ProbeConfig,
    ) -> Result<DeviceInfo, ProbeError> {
        // `mlx4_get_ownership`: the first reader of the semaphore reads 0 and owns the
        // device until it writes 0 back.
        if p.bar0_read_be32(OWNER_BASE) != 0 {
            return Err(ProbeError::NotOwner);
        }
        self.owner = true;
        // `mlx4_reset`: whatever a previous driver left, the firmware starts stopped.
        reset_function(p).map_err(ProbeError::Reset)?;

        self.inbox = Some(alloc_mailbox(p)?);
        self.outbox = Some(alloc_mailbox(p)?);

        // `mlx4_init_fw`.
        let fw = self.query_fw(p)?;

        // `mlx4_load_fw`. If MAP_FA fails, upstream frees the area without UNMAP_FA, as
        // the firmware did not take it; the release path does the same.
        alloc_area(p, &mut self.fw_area, fw.fw_pages.into(), None).map_err(|error| {
            ProbeError::Memory {
                step: Step::MapFa,
                error,
            }
        })?;
        self.map_chunks(p, Step::MapFa, opcode::MAP_FA, Area::Firmware, 0)?;
        self.exec(p, Step::RunFw, Command::new(opcode::RUN_FW))?;
        self.fw_running = true;

        // 4 KiB ICM pages. Upstream goes on with a warning if the firmware refuses.
        let page_size_set = self.set_icm_page_size(p).is_ok();

        // `mlx4_init_hca`: capabilities, the profile, ICM, INIT_HCA.
        let caps = self.query_dev_cap(p, config)?;
        let layout = make_profile(&caps, &config.profile).map_err(ProbeError::Profile)?;
        self.init_icm(p, &caps, &layout)?;
        let core_clock_mhz = self.init_hca(p, &caps, &layout)?;
        let adapter = self.query_adapter(p)?;

        // `mlx4_setup_hca`, and the ports as `mlx4_ib_add` opens them.
        let setup = self.setup_hca(p, &caps, &layout, config)?;

        Ok(DeviceInfo {
            fw,
            caps,
            layout,
            adapter,
            core_clock_mhz,
            page_size_set,
            driver_uar: setup.driver_uar,
            async_eqn: setup.async_eqn,
            comp_eqns: setup.comp_eqns,
            ports: setup.ports,
        })
    }

    // The steps below that read a mailbox are out of line, so that their buffers (up
    // to 512 bytes each) live one at a time on the stack, not all in `bring_up`'s frame:
    // the kernel's stack is 16 KiB.

    /// QUERY_FW.
    #[inline(never)]
    fn query_fw<P: Platform<Block = B>>(&mut self, p: &mut P) -> Result<FwInfo, ProbeError> {
        let mut out = [0u8; FwInfo::OUT_SIZE];
        self.exec_out(p, Step::QueryFw, Command::new(opcode::QUERY_FW), &mut out)?;
        FwInfo::parse(&out).map_err(ProbeError::InvalidCap)
    }

    /// QUERY_DEV_CAP, checked.
    #[inline(never)]
    fn query_dev_cap<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        config: &ProbeConfig,
    ) -> Result<DevCaps, ProbeError> {
        let mut out = [0u8; DevCaps::OUT_SIZE];
        self.exec_out(
            p,
            Step::QueryDevCap,
            Command::new(opcode::QUERY_DEV_CAP),
            &mut out,
        )?;
        DevCaps::parse(&out, config.uar_bar_size).map_err(ProbeError::InvalidCap)
    }

    /// INIT_HCA, then QUERY_HCA: the firmware's copy of the layout must be the one
    /// given; upstream reads it for the core clock, which this returns.
    #[inline(never)]
    fn init_hca<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
    ) -> Result<u16, ProbeError> {
        let init = init_hca_mailbox(caps, layout);
        self.write_inbox(p, &init)?;
        let inbox = self.inbox_address();
        self.exec(
            p,
            Step::InitHca,
            Command::new(opcode::INIT_HCA).in_param(inbox),
        )?;
        self.hca_initialized = true;

        let mut out = [0u8; init_hca::IN_SIZE];
        self.exec_out(p, Step::QueryHca, Command::new(opcode::QUERY_HCA), &mut out)?;
        check_layout(&init, &out)?;
        Ok(Mailbox(&out[..]).u16(query_hca::CORE_CLOCK))
    }

    /// QUERY_ADAPTER.
    #[inline(never)]
    fn query_adapter<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
    ) -> Result<AdapterInfo, ProbeError> {
        let mut out = [0u8; AdapterInfo::OUT_SIZE];
        self.exec_out(
            p,
            Step::QueryAdapter,
            Command::new(opcode::QUERY_ADAPTER),
            &mut out,
        )?;
        Ok(AdapterInfo::parse(&out))
    }

    /// MOD_STAT_CFG with `log_pg_sz` 0 and its mask set (`mlx4_init_fw`).
    fn set_icm_page_size<P: Platform<Block = B>>(&mut self, p: &mut P) -> Result<(), ProbeError> {
        let mut inbox = [0u8; 8];
        let mut m = Mailbox(&mut inbox[..]);
        m.set_u8(mod_stat_cfg::PG_SZ_M, 1);
        m.set_u8(mod_stat_cfg::PG_SZ, 0);
        self.write_inbox(p, &inbox)?;
        let cmd = Command::new(opcode::MOD_STAT_CFG).in_param(self.inbox_address());
        self.exec(p, Step::ModStatCfg, cmd)
    }

    /// `mlx4_init_icm`: SET_ICM_SIZE, auxiliary ICM, and the ICM under each table's
    /// reserved entries.
    fn init_icm<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        caps: &DevCaps,
        layout: &IcmLayout,
    ) -> Result<(), ProbeError> {
        let cmd = Command::new(opcode::SET_ICM_SIZE).in_param(layout.total_size);
        let aux_pages = self.exec_imm(p, Step::SetIcmSize, cmd)?;
        let most = (AUX_AREA_CHUNKS as u64) << MAX_CHUNK_LOG_PAGES;
        if aux_pages == 0 || aux_pages > most {
            return Err(ProbeError::AuxPages { pages: aux_pages });
        }
        alloc_area(p, &mut self.aux_area, aux_pages, None).map_err(|error| ProbeError::Memory {
            step: Step::MapIcmAux,
            error,
        })?;
        self.map_chunks(p, Step::MapIcmAux, opcode::MAP_ICM_AUX, Area::Auxiliary, 0)?;

        for table in icm_tables(caps, layout) {
            let step = Step::MapIcm(table.name);
            let bytes = table.mapped_at_probe(TABLE_CHUNK_SIZE);
            let mut offset = 0;
            // One MAP_ICM per table chunk, as `mlx4_init_icm_table` does.
            while offset < bytes {
                let chunk_bytes = (bytes - offset).min(TABLE_CHUNK_SIZE);
                let first = self.icm.len();
                let pages = chunk_bytes.div_ceil(ICM_PAGE_SIZE as u64);
                let icm_address = table.base.saturating_add(offset);
                alloc_area(p, &mut self.icm, pages, Some(icm_address))
                    .map_err(|error| ProbeError::Memory { step, error })?;
                self.map_chunks(p, step, opcode::MAP_ICM, Area::Icm, first)?;
                offset += chunk_bytes;
            }
        }
        Ok(())
    }

    /// Maps the chunks of `area` from index `first` on with `op` (`mlx4_map_cmd`): a
    /// mailbox of VPM entries per command, each chunk marked mapped once its command
    /// succeeded.
    fn map_chunks<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        op: u16,
        area: Area,
        first: usize,
    ) -> Result<(), ProbeError> {
        let total = match area {
            Area::Firmware => self.fw_area.len(),
            Area::Auxiliary => self.aux_area.len(),
            Area::Icm => self.icm.len(),
        };
        let mut start = first;
        while start < total {
            let count = (total - start).min(VPM_PER_MAILBOX);
            let inbox = self.inbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
            let written = match area {
                Area::Firmware => write_vpm(p, inbox, &self.fw_area, start, count),
                Area::Auxiliary => write_vpm(p, inbox, &self.aux_area, start, count),
                Area::Icm => write_vpm(p, inbox, &self.icm, start, count),
            }?;
            let cmd = Command::new(op)
                .in_param(inbox.bus_address)
                .in_modifier(written);
            self.exec(p, step, cmd)?;
            match area {
                Area::Firmware => mark_mapped(&mut self.fw_area, start, count),
                Area::Auxiliary => mark_mapped(&mut self.aux_area, start, count),
                Area::Icm => mark_mapped(&mut self.icm, start, count),
            }
            start += count;
        }
        Ok(())
    }

    /// Undoes what the record holds, in reverse order of the probe.
    fn release<P: Platform<Block = B>>(&mut self, p: &mut P) -> Result<(), TeardownError> {
        let mut failure: Option<(Step, CmdError)> = None;
        let mut leaked = 0usize;

        // What `mlx4_setup_hca` and the ports set up, first.
        leaked += self.release_setup(p, &mut failure);

        // `mlx4_close_hca`. If CLOSE_HCA fails the ICM is unmapped all the same, as
        // upstream does: the firmware answered, so it runs, and UNMAP_ICM is its to refuse.
        if self.hca_initialized {
            if let Err(error) = self.cmd.exec(p, &Command::new(opcode::CLOSE_HCA)) {
                note(&mut failure, Step::CloseHca, error);
            }
            self.hca_initialized = false;
        }

        // `mlx4_cleanup_icm_table`: what objects mapped on demand (and left mapped).
        leaked += self.release_demand(p, &mut failure);
        // `mlx4_free_icms`: each table's chunks, last mapped first.
        while let Some(chunk) = self.icm.pop() {
            if !chunk.mapped {
                p.free(chunk.block);
                continue;
            }
            let cmd = Command::new(opcode::UNMAP_ICM)
                .in_param(chunk.icm_address)
                .in_modifier(chunk.pages() as u32);
            match self.cmd.exec(p, &cmd) {
                Ok(()) => p.free(chunk.block),
                Err(error) => {
                    note(&mut failure, Step::UnmapIcm, error);
                    leaked += leak(chunk);
                }
            }
        }
        leaked += self.release_area(p, Area::Auxiliary, &mut failure);
        leaked += self.release_area(p, Area::Firmware, &mut failure);
        self.fw_running = false;

        // The mailboxes: after a timeout the device may still write to them.
        for mailbox in [self.inbox.take(), self.outbox.take()]
            .into_iter()
            .flatten()
        {
            if self.cmd.is_wedged() {
                core::mem::forget(mailbox.block);
                leaked += 1;
            } else {
                p.free(mailbox.block);
            }
        }

        // `mlx4_free_ownership`.
        if self.owner {
            p.bar0_write_be32(OWNER_BASE, 0);
            p.sleep_ms(OWNERSHIP_RELEASE_MS);
            self.owner = false;
        }

        match failure {
            None => Ok(()),
            Some((step, error)) => Err(TeardownError {
                step,
                error,
                leaked_chunks: leaked,
            }),
        }
    }

    /// UNMAP_ICM_AUX or UNMAP_FA, then frees the area; an area the device keeps (its
    /// unmap failed) is leaked. Returns the chunks leaked.
    fn release_area<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        area: Area,
        failure: &mut Option<(Step, CmdError)>,
    ) -> usize {
        let (any_mapped, op, step) = match area {
            Area::Auxiliary => (
                self.aux_area.iter_from(0).any(|c| c.mapped),
                opcode::UNMAP_ICM_AUX,
                Step::UnmapIcmAux,
            ),
            Area::Firmware => (
                self.fw_area.iter_from(0).any(|c| c.mapped),
                opcode::UNMAP_FA,
                Step::UnmapFa,
            ),
            Area::Icm => return 0,
        };
        let device_keeps = any_mapped && {
            match self.cmd.exec(p, &Command::new(op)) {
                Ok(()) => false,
                Err(error) => {
                    note(failure, step, error);
                    true
                }
            }
        };
        let mut leaked = 0;
        loop {
            let chunk = match area {
                Area::Auxiliary => self.aux_area.pop(),
                _ => self.fw_area.pop(),
            };
            let Some(chunk) = chunk else { break };
            if device_keeps && chunk.mapped {
                leaked += leak(chunk);
            } else {
                p.free(chunk.block);
            }
        }
        leaked
    }

    pub(super) fn inbox_address(&self) -> u64 {
        self.inbox.as_ref().map_or(0, |m| m.bus_address)
    }

    /// Zeroes the input mailbox and writes `data` at its start (`mlx4_alloc_cmd_mailbox`
    /// hands out zeroed mailboxes).
    pub(super) fn write_inbox<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        data: &[u8],
    ) -> Result<(), ProbeError> {
        let inbox = self.inbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let zeros = [0u8; 256];
        for offset in (0..MAILBOX_SIZE).step_by(zeros.len()) {
            if !p.write(&inbox.block, offset, &zeros) {
                return Err(ProbeError::MailboxAccess);
            }
        }
        if p.write(&inbox.block, 0, data) {
            Ok(())
        } else {
            Err(ProbeError::MailboxAccess)
        }
    }

    pub(super) fn exec<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        cmd: Command,
    ) -> Result<(), ProbeError> {
        self.cmd
            .exec(p, &cmd)
            .map_err(|error| ProbeError::Command { step, error })
    }

    fn exec_imm<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        cmd: Command,
    ) -> Result<u64, ProbeError> {
        self.cmd
            .exec_imm(p, &cmd)
            .map_err(|error| ProbeError::Command { step, error })
    }

    /// Runs a command whose output is a mailbox, and reads the mailbox into `out`.
    pub(super) fn exec_out<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        step: Step,
        cmd: Command,
        out: &mut [u8],
    ) -> Result<(), ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = cmd.out_param(outbox.bus_address);
        self.exec(p, step, cmd)?;
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if p.read(&outbox.block, 0, out) {
            Ok(())
        } else {
            Err(ProbeError::MailboxAccess)
        }
    }
}

/// The three areas of host memory given with MAP_* commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Area {
    Firmware,
    Auxiliary,
    Icm,
}

/// Writes the VPM entries of `count` chunks of `list` from `start` into the mailbox;
/// returns how many.
fn write_vpm<P: HostMemory, const N: usize>(
    p: &mut P,
    inbox: &MailboxPage<P::Block>,
    list: &Chunks<P::Block, N>,
    start: usize,
    count: usize,
) -> Result<u32, ProbeError> {
    let mut written = 0u32;
    for (i, chunk) in list.iter_from(start).take(count).enumerate() {
        if !p.write(&inbox.block, i * 16, &chunk.vpm_entry()) {
            return Err(ProbeError::MailboxAccess);
        }
        written += 1;
    }
    Ok(written)
}

fn mark_mapped<B, const N: usize>(list: &mut Chunks<B, N>, start: usize, count: usize) {
    for chunk in list.iter_from_mut(start).take(count) {
        chunk.mapped = true;
    }
}

/// Remembers the first failure of a teardown, which goes on after it.
pub(super) fn note(failure: &mut Option<(Step, CmdError)>, step: Step, error: CmdError) {
    if failure.is_none() {
        *failure = Some((step, error));
    }
}

/// Keeps a chunk the device may still use from ever being freed, and counts it.
pub(super) fn leak<B>(chunk: Chunk<B>) -> usize {
    // Freeing memory the device can still write would let it corrupt whoever gets the
    // memory next; a leak until reboot is the lesser harm (a function reset would allow
    // freeing, and is the kernel side's to do).
    core::mem::forget(chunk.block);
    1
}

fn alloc_mailbox<P: HostMemory>(p: &mut P) -> Result<MailboxPage<P::Block>, ProbeError> {
    let block = p.alloc(0).ok_or(ProbeError::Memory {
        step: Step::Mailboxes,
        error: AllocError::NoMemory,
    })?;
    let bus_address = p.bus_address(&block);
    Ok(MailboxPage { block, bus_address })
}

/// INIT_HCA's input (`mlx4_INIT_HCA`): each table's ICM address, with its log2 count in
/// the base's low byte where the PRM puts one.
fn init_hca_mailbox(caps: &DevCaps, layout: &IcmLayout) -> [u8; init_hca::IN_SIZE] {
    let mut bytes = [0u8; init_hca::IN_SIZE];
    let mut m = Mailbox(&mut bytes[..]);
    let table = |r: Resource| layout.table(r);
    m.set_u8(init_hca::VERSION, init_hca::VERSION_2);
    // FLAGS stays 0: little-endian descriptors, no checksum offload, no memory windows.
    m.set_u64(init_hca::QPC_BASE, table(Resource::Qpc).base);
    m.set_u8(init_hca::LOG_QP, table(Resource::Qpc).log_num);
    m.set_u64(init_hca::SRQC_BASE, table(Resource::Srqc).base);
    m.set_u8(init_hca::LOG_SRQ, table(Resource::Srqc).log_num);
    m.set_u64(init_hca::CQC_BASE, table(Resource::Cqc).base);
    m.set_u8(init_hca::LOG_CQ, table(Resource::Cqc).log_num);
    m.set_u64(init_hca::ALTC_BASE, table(Resource::Altc).base);
    m.set_u64(init_hca::AUXC_BASE, table(Resource::Auxc).base);
    m.set_u64(init_hca::EQC_BASE, table(Resource::Eqc).base);
    m.set_u8(init_hca::LOG_EQ, table(Resource::Eqc).log_num);
    m.set_u64(init_hca::RDMARC_BASE, table(Resource::Rdmarc).base);
    m.set_u8(init_hca::LOG_RD, layout.log_rd_per_qp);
    m.set_u64(init_hca::MC_BASE, table(Resource::Mcg).base);
    m.set_u8(
        init_hca::LOG_MC_ENTRY_SZ,
        super::profile::LOG_MGM_ENTRY_SIZE,
    );
    m.set_u8(init_hca::LOG_MC_HASH_SZ, layout.log_mc_hash_size);
    m.set_u8(init_hca::LOG_MC_TABLE_SZ, table(Resource::Mcg).log_num);
    m.set_u64(init_hca::DMPT_BASE, table(Resource::Dmpt).base);
    m.set_u8(init_hca::LOG_MPT_SZ, table(Resource::Dmpt).log_num);
    m.set_u64(init_hca::MTT_BASE, table(Resource::Mtt).base);
    m.set_u64(init_hca::CMPT_BASE, table(Resource::Cmpt).base);
    // UARs of 4 KiB pages over the whole UAR area (`log_uar_sz`, `uar_page_sz` 0).
    let uar_pages = caps.uar_size >> ICM_PAGE_SHIFT;
    m.set_u8(
        init_hca::LOG_UAR_SZ,
        uar_pages.checked_ilog2().unwrap_or(0) as u8,
    );
    m.set_u8(init_hca::UAR_PAGE_SZ, 0);
    bytes
}

/// Compares QUERY_HCA's answer with what INIT_HCA gave, field by field.
fn check_layout(given: &[u8], reported: &[u8]) -> Result<(), ProbeError> {
    const FIELDS: [(&str, usize, usize); 12] = [
        ("QPC_BASE", init_hca::QPC_BASE, 8),
        ("SRQC_BASE", init_hca::SRQC_BASE, 8),
        ("CQC_BASE", init_hca::CQC_BASE, 8),
        ("ALTC_BASE", init_hca::ALTC_BASE, 8),
        ("AUXC_BASE", init_hca::AUXC_BASE, 8),
        ("EQC_BASE", init_hca::EQC_BASE, 8),
        ("RDMARC_BASE", init_hca::RDMARC_BASE, 8),
        ("MC_BASE", init_hca::MC_BASE, 8),
        ("LOG_MC_TABLE_SZ", init_hca::LOG_MC_TABLE_SZ, 1),
        ("DMPT_BASE", init_hca::DMPT_BASE, 8),
        ("MTT_BASE", init_hca::MTT_BASE, 8),
        ("CMPT_BASE", init_hca::CMPT_BASE, 8),
    ];
    for (field, offset, len) in FIELDS {
        let range = offset..offset + len;
        if given.get(range.clone()) != reported.get(range) {
            return Err(ProbeError::LayoutMismatch { field });
        }
    }
    Ok(())
}
