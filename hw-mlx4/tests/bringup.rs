//! The driver's bring-up (`hw_mlx4::bringup`) against the emulated ConnectX-3's firmware
//! (`model::hca::Hca`): the probe to an initialized HCA and the teardown back to reset,
//! the HCR protocol as `mlx4_cmd_post` writes it, command timeouts and firmware errors,
//! a probe that fails at every step unwinding to a device that holds nothing, and the
//! capability parser refusing what it cannot use.
//!
//! The platform here is the model behind the two traits the kernel module implements
//! over MMIO and `dma_alloc_coherent`, with a fake clock (so a 60 s timeout takes no
//! time) and hooks that make a chosen command fail, never complete, or answer nonsense.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use hw_mlx4::bringup::caps::{DevCaps, FwInfo, InvalidCap};
use hw_mlx4::bringup::cmd::{CmdError, Command, CommandEdge, CommandInterface, POLL_TOKEN};
use hw_mlx4::bringup::eq::{
    eq_doorbell, CompletionEvent, EqEvent, EventEdge, PortEvent, PortEventKind,
};
use hw_mlx4::bringup::memory::{AllocError, HostMemory, ICM_PAGE_SIZE};
use hw_mlx4::bringup::probe::{Mlx4Core, ProbeConfig, ProbeError, Step};
use hw_mlx4::bringup::profile::{make_profile, Profile, ProfileError, Resource};
use hw_mlx4::bringup::reset::{ResetEdge, ResetError, SEMAPHORE_TIMEOUT_US};
use hw_mlx4::model::hca::{Dma, DmaFault, FwState, Hca, HcaEvent, Resources};
use hw_mlx4::wire::cmd::{
    hcr, opcode, CmdStatus, HCR_BASE, OWNER_BASE, RESET_BASE, RESET_OFFSET, RESET_VALUE,
};
use hw_mlx4::wire::fw::{query_dev_cap, query_fw, query_port};

/// Bus addresses of the test memory start here.
const BASE: u64 = 0x1_0000_0000;
/// 64 MiB: the firmware area, ~17 MiB of auxiliary ICM for the default profile's 4 GiB
/// of ICM, the reserved table chunks and the 8 MiB multicast table.
const SIZE: usize = 64 << 20;
/// BAR2 of the emulated device: 8 MiB.
const BAR2_SIZE: u64 = 8 << 20;

/// Host memory the model reaches by DMA, with a bump allocator that remembers what is
/// outstanding.
struct Memory {
    bytes: Rc<RefCell<Vec<u8>>>,
    next: u64,
    outstanding: BTreeMap<u64, usize>,
    /// Allocations left before the next one fails (`None`: never).
    allocs_left: Option<usize>,
    allocs: usize,
}

/// A block of test memory; not `Clone`, so the driver can give it back only once.
#[derive(Debug)]
struct Block {
    address: u64,
    len: usize,
}

impl Memory {
    fn new() -> Self {
        Self {
            bytes: Rc::new(RefCell::new(vec![0; SIZE])),
            next: BASE,
            outstanding: BTreeMap::new(),
            allocs_left: None,
            allocs: 0,
        }
    }

    fn range(address: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(address.checked_sub(BASE)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= SIZE).then_some(start..end)
    }
}

impl Dma for Memory {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let r = Self::range(address, buf.len()).ok_or(DmaFault {
            address,
            len: buf.len(),
        })?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        let r = Self::range(address, data.len()).ok_or(DmaFault {
            address,
            len: data.len(),
        })?;
        self.bytes.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

/// What the platform does to one command of the driver's.
#[derive(Clone, Copy, Debug)]
enum Injection {
    /// The command never reaches the device; the HCR answers this status byte.
    Status(u8),
    /// The command never reaches the device, and go stays set.
    NeverComplete,
    /// The device runs the command, then its output mailbox's byte at `offset` reads
    /// `value`.
    CorruptOutput { offset: u64, value: u8 },
    /// The device runs the command, but its token reads otherwise: its command EQE
    /// carries a token the driver did not give.
    WrongToken,
    /// The device raises a catastrophic error with this syndrome as the command is
    /// posted: its firmware stops, and the command never completes.
    Catastrophe(u32),
}

/// The model behind the driver's two traits.
struct Platform {
    hca: Hca,
    memory: Memory,
    clock_us: u64,
    barriers: usize,
    /// Every BAR0 write, as (offset, value).
    writes: Vec<(u64, u32)>,
    /// Every opcode posted.
    posted: Vec<u16>,
    /// The `skip`th next command with this opcode gets the injection.
    inject: Option<(u16, usize, Injection)>,
    /// What the HCR's status word reads while an injected command is in it.
    status_override: Option<u32>,
    /// Every BAR2 write, as (offset, value).
    bar2_writes: Vec<(u64, u32)>,
    read_barriers: usize,
    /// What the device held when CLOSE_HCA came.
    at_close_hca: Option<Resources>,
    /// Resets the device saw (its reset register written with the reset value).
    resets: usize,
    /// Config space saves and restores.
    configs_saved: usize,
    configs_restored: usize,
    /// The config save fails.
    refuse_config_save: bool,
    /// Vendor ID reads that answer all ones after each reset.
    away_after_reset: usize,
    away_reads: usize,
}

impl Platform {
    fn new() -> Self {
        let mut hca = Hca::new();
        hca.set_bus_master(true);
        Self {
            hca,
            memory: Memory::new(),
            clock_us: 0,
            barriers: 0,
            writes: Vec::new(),
            posted: Vec::new(),
            inject: None,
            status_override: None,
            bar2_writes: Vec::new(),
            read_barriers: 0,
            at_close_hca: None,
            resets: 0,
            configs_saved: 0,
            configs_restored: 0,
            refuse_config_save: false,
            away_after_reset: 3,
            away_reads: 0,
        }
    }

    fn inject(mut self, op: u16, skip: usize, injection: Injection) -> Self {
        self.inject = Some((op, skip, injection));
        self
    }

    fn driver_errors(&mut self) -> Vec<String> {
        self.hca
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                HcaEvent::DriverError(line) => Some(line),
                _ => None,
            })
            .collect()
    }

    /// Whether this command is the one to inject into (counting down its skips).
    fn injection_for(&mut self, op: u16) -> Option<Injection> {
        match &mut self.inject {
            Some((target, skip, injection)) if *target == op => {
                if *skip == 0 {
                    let injection = *injection;
                    self.inject = None;
                    Some(injection)
                } else {
                    *skip -= 1;
                    None
                }
            }
            _ => None,
        }
    }
}

const STATUS_REGISTER: u64 = HCR_BASE + hcr::STATUS as u64;

impl CommandEdge for Platform {
    fn bar0_read_be32(&mut self, offset: u64) -> u32 {
        if offset == STATUS_REGISTER {
            if let Some(word) = self.status_override {
                return word;
            }
        }
        let mut bytes = [0u8; 4];
        self.hca.bar0_read(offset, &mut bytes);
        u32::from_be_bytes(bytes)
    }

    fn bar0_write_be32(&mut self, offset: u64, value: u32) {
        self.writes.push((offset, value));
        if offset == STATUS_REGISTER && value & hcr::GO_BIT != 0 {
            let op = (value & 0xfff) as u16;
            self.posted.push(op);
            self.status_override = None;
            if op == opcode::CLOSE_HCA {
                self.at_close_hca = Some(self.hca.resources());
            }
            match self.injection_for(op) {
                Some(Injection::Status(status)) if value & hcr::EVENT_BIT != 0 => {
                    // By event, the failure must come as the firmware's command EQE.
                    let status = CmdStatus::from_raw(status).expect("a PRM status");
                    self.hca.refuse_next(op, status);
                }
                Some(Injection::WrongToken) => {
                    let token_word = HCR_BASE + hcr::TOKEN as u64;
                    let mut word = [0u8; 4];
                    self.hca.bar0_read(token_word, &mut word);
                    let forged = u32::from_be_bytes(word) ^ (0x4000 << 16);
                    self.hca
                        .bar0_write(&self.memory, token_word, &forged.to_be_bytes());
                }
                Some(Injection::Status(status)) => {
                    self.status_override =
                        Some((value & !hcr::GO_BIT & 0x00ff_ffff) | (u32::from(status) << 24));
                    return;
                }
                Some(Injection::NeverComplete) => {
                    self.status_override = Some(value);
                    return;
                }
                Some(Injection::Catastrophe(syndrome)) => {
                    self.hca.raise_catastrophic_error(syndrome);
                }
                Some(Injection::CorruptOutput {
                    offset: at,
                    value: byte,
                }) => {
                    self.hca
                        .bar0_write(&self.memory, offset, &value.to_be_bytes());
                    let mut out = [0u8; 4];
                    self.hca
                        .bar0_read(HCR_BASE + hcr::OUT_PARAM as u64, &mut out);
                    let high = u64::from(u32::from_be_bytes(out));
                    self.hca
                        .bar0_read(HCR_BASE + hcr::OUT_PARAM as u64 + 4, &mut out);
                    let outbox = (high << 32) | u64::from(u32::from_be_bytes(out));
                    self.memory.write(outbox + at, &[byte]).expect("outbox");
                    return;
                }
                None => {}
            }
        }
        self.hca
            .bar0_write(&self.memory, offset, &value.to_be_bytes());
        if self.hca.reset_requested() {
            self.resets += 1;
            self.away_reads = self.away_after_reset;
        }
    }

    fn write_barrier(&mut self) {
        self.barriers += 1;
    }

    fn now_us(&mut self) -> u64 {
        // Time passes as the driver looks at it: a 60 s timeout is 60,000 looks.
        self.clock_us += 1000;
        self.clock_us
    }

    fn relax(&mut self) {}

    fn sleep_ms(&mut self, ms: u32) {
        self.clock_us += u64::from(ms) * 1000;
    }
}

impl ResetEdge for Platform {
    fn save_config(&mut self) -> bool {
        self.configs_saved += 1;
        !self.refuse_config_save
    }

    fn read_vendor_id(&mut self) -> u16 {
        // The function is away for as many reads as the test says, after a reset.
        if self.away_reads > 0 {
            self.away_reads -= 1;
            return u16::MAX;
        }
        0x15b3
    }

    fn restore_config(&mut self) -> bool {
        self.configs_restored += 1;
        // The command register comes back with bus mastering, as the driver saved it.
        self.hca.set_bus_master(true);
        true
    }
}

impl EventEdge for Platform {
    fn bar2_write_be32(&mut self, offset: u64, value: u32) {
        self.bar2_writes.push((offset, value));
        self.hca
            .bar2_write(&self.memory, offset, &value.to_be_bytes());
    }

    fn read_barrier(&mut self) {
        self.read_barriers += 1;
    }
}

impl HostMemory for Platform {
    type Block = Block;

    fn alloc(&mut self, log_pages: u32) -> Option<Block> {
        if let Some(left) = &mut self.memory.allocs_left {
            if *left == 0 {
                return None;
            }
            *left -= 1;
        }
        let len = ICM_PAGE_SIZE << log_pages;
        let address = self.memory.next.next_multiple_of(len as u64);
        Memory::range(address, len)?;
        self.memory.next = address + len as u64;
        self.memory.outstanding.insert(address, len);
        self.memory.allocs += 1;
        // Zeroed, as dma_alloc_coherent's: the bump allocator never hands out used bytes.
        Some(Block { address, len })
    }

    fn bus_address(&self, block: &Block) -> u64 {
        block.address
    }

    fn write(&mut self, block: &Block, offset: usize, data: &[u8]) -> bool {
        offset + data.len() <= block.len
            && self
                .memory
                .write(block.address + offset as u64, data)
                .is_ok()
    }

    fn read(&mut self, block: &Block, offset: usize, buf: &mut [u8]) -> bool {
        offset + buf.len() <= block.len
            && Dma::read(&self.memory, block.address + offset as u64, buf).is_ok()
    }

    fn free(&mut self, block: Block) {
        let len = self.memory.outstanding.remove(&block.address);
        assert_eq!(len, Some(block.len), "freed a block not outstanding");
    }
}

fn config() -> ProbeConfig {
    ProbeConfig {
        profile: Profile::DEFAULT,
        uar_bar_size: BAR2_SIZE,
        ib_cap_mask: IB_CAP_MASK,
        comp_eqs: 2,
    }
}

/// The PortInfo:CapabilityMask SET_PORT gives each port: some bits chosen for the
/// test; the model's SMA takes them as they are.
const IB_CAP_MASK: u32 = 0x0251_0868;

/// A device that holds nothing of the driver's: what a fresh model reports.
fn assert_released(p: &mut Platform) {
    let fresh = Hca::new().resources();
    assert_eq!(p.hca.resources(), fresh, "{}", p.hca.summary());
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    assert!(
        p.memory.outstanding.is_empty(),
        "{} blocks not freed",
        p.memory.outstanding.len()
    );
}

#[test]
fn the_probe_initializes_the_hca_and_the_teardown_returns_it_to_reset() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    let info = *core.probe(&mut p, &config()).expect("the probe succeeds");

    // What the driver learned is what the device says.
    assert_eq!(info.fw.version, (2, 42, 5000));
    assert_eq!(info.fw.cmd_if_rev, 3);
    assert_eq!(info.caps.num_ports, 2);
    assert_eq!(info.caps.max_qps, 1 << 17);
    assert_eq!(info.caps.reserved_qps, 64);
    assert_eq!(info.caps.entry_sizes.qpc, 256);
    assert_eq!(&info.adapter.board_id[..13], b"MT_1090120019");
    assert_eq!(info.core_clock_mhz, 427);
    assert!(info.page_size_set);
    // The profile was clamped to what QUERY_DEV_CAP offers (upstream asks 2^18 QPs).
    assert_eq!(info.layout.num_qps, 1 << 17);

    // The device: firmware running and the HCA initialized, with the driver's memory.
    let held = p.hca.resources();
    assert_eq!(held.firmware, FwState::Initialized);
    // `mlx4_get_ownership`, then `mlx4_reset` (which clears the semaphore with the rest
    // of the device) before the first command: config space saved, the hardware
    // semaphore read free, the reset value written, config space restored once the
    // function answers again (three reads after the reset here).
    assert!(!held.owned, "the reset cleared the semaphore");
    assert_eq!(p.resets, 1);
    assert_eq!(
        (p.configs_saved, p.configs_restored, p.away_reads),
        (1, 1, 0)
    );
    let reset_write = p
        .writes
        .iter()
        .position(|&w| w == (RESET_BASE + RESET_OFFSET, RESET_VALUE))
        .expect("the reset register written");
    let first_command = p
        .writes
        .iter()
        .position(|&(offset, _)| offset == STATUS_REGISTER)
        .expect("a command");
    assert!(reset_write < first_command, "the reset before any command");
    assert!(held.fw_area_pages >= u64::from(info.fw.fw_pages));
    assert!(held.aux_chunks > 0);
    let (_, _, icm_pages) = core.pages_given();
    assert_eq!(held.icm_bytes, icm_pages * ICM_PAGE_SIZE as u64);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    assert!(p
        .hca
        .summary()
        .starts_with(&format!("{} commands (0 failed)", p.posted.len())));

    // The commands, in `mlx4_load_one`'s order.
    let first_map_icm = p.posted.iter().position(|&op| op == opcode::MAP_ICM);
    let map_icms = p.posted.iter().filter(|&&op| op == opcode::MAP_ICM).count();
    assert_eq!(first_map_icm, Some(7));
    // 13 tables by one 256 KiB table chunk each, the multicast table's 8 MiB by 32.
    assert_eq!(map_icms, 13 + 32);
    let mut expected = vec![
        opcode::QUERY_FW,
        opcode::MAP_FA,
        opcode::RUN_FW,
        opcode::MOD_STAT_CFG,
        opcode::QUERY_DEV_CAP,
        opcode::SET_ICM_SIZE,
        opcode::MAP_ICM_AUX,
    ];
    expected.extend(std::iter::repeat_n(opcode::MAP_ICM, map_icms));
    expected.extend([opcode::INIT_HCA, opcode::QUERY_HCA, opcode::QUERY_ADAPTER]);
    // `mlx4_setup_hca`: the async EQ, two completion EQs (no MAP_EQ: a CQ names its
    // EQ), the NOP interrupt test, then the ports.
    expected.extend([
        opcode::SW2HW_EQ,
        opcode::MAP_EQ,
        opcode::SW2HW_EQ,
        opcode::SW2HW_EQ,
        opcode::NOP,
    ]);
    for _port in 1..=2 {
        expected.extend([opcode::QUERY_PORT, opcode::SET_PORT, opcode::INIT_PORT]);
    }
    assert_eq!(p.posted, expected);

    p.posted.clear();
    core.teardown(&mut p).expect("the teardown succeeds");
    // The completion EQs first, last created first, then the async EQ.
    assert_eq!(
        p.posted[..7],
        [
            opcode::CLOSE_PORT,
            opcode::CLOSE_PORT,
            opcode::HW2SW_EQ,
            opcode::HW2SW_EQ,
            opcode::MAP_EQ,
            opcode::HW2SW_EQ,
            opcode::CLOSE_HCA
        ]
    );
    let closed = p.at_close_hca.expect("CLOSE_HCA came");
    assert_eq!((closed.eqs, closed.ports_up), (0, [false, false]));
    assert_eq!(
        &p.posted[p.posted.len() - 2..],
        [opcode::UNMAP_ICM_AUX, opcode::UNMAP_FA]
    );
    assert_eq!(p.posted.len(), 9 + map_icms);
    assert_eq!(
        p.writes.last(),
        Some(&(OWNER_BASE, 0)),
        "ownership given back last"
    );
    assert_released(&mut p);
    assert!(core.info().is_none());
}

/// A second probe after a teardown works on the same device, as a rebind does.
#[test]
fn a_torn_down_device_probes_again() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("first probe");
    core.teardown(&mut p).expect("first teardown");
    core.probe(&mut p, &config()).expect("second probe");
    assert_eq!(p.hca.resources().firmware, FwState::Initialized);
    core.teardown(&mut p).expect("second teardown");
    assert_released(&mut p);
}

/// The HCR is written as `mlx4_cmd_post` writes it: six parameter words, a barrier, the
/// status word last with go, the toggle (1 first, alternating), the op modifier and the
/// opcode; the token in the top half of its word.
#[test]
fn commands_are_posted_as_mlx4_cmd_post_writes_them() {
    let mut p = Platform::new();
    let mut cmd = CommandInterface::new();
    // QUERY_FW is the one command a device out of reset runs.
    let outbox = BASE;
    let query_fw = Command::new(opcode::QUERY_FW)
        .out_param(outbox)
        .in_modifier(0x1234_5678)
        .op_modifier(0x5)
        .in_param(0x0123_4567_89ab_cdef);
    for round in 0..3 {
        p.writes.clear();
        let barriers = p.barriers;
        cmd.exec(&mut p, &query_fw).expect("QUERY_FW");
        let words: Vec<(u64, u32)> = p.writes.clone();
        let toggle = if round % 2 == 0 { hcr::TOGGLE_BIT } else { 0 };
        assert_eq!(
            words,
            [
                (HCR_BASE, 0x0123_4567),
                (HCR_BASE + 4, 0x89ab_cdef),
                (HCR_BASE + 8, 0x1234_5678),
                (HCR_BASE + 12, (outbox >> 32) as u32),
                (HCR_BASE + 16, outbox as u32),
                (HCR_BASE + 20, u32::from(POLL_TOKEN) << 16),
                (
                    STATUS_REGISTER,
                    hcr::GO_BIT | toggle | (0x5 << hcr::OPMOD_SHIFT) | u32::from(opcode::QUERY_FW)
                ),
            ],
            "round {round}"
        );
        assert_eq!(p.barriers, barriers + 1);
    }
    // The device saw a valid command each time, and the output is there.
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    let mut out = [0u8; query_fw::OUT_SIZE];
    Dma::read(&p.memory, outbox, &mut out).unwrap();
    assert_eq!(FwInfo::parse(&out).unwrap().version, (2, 42, 5000));
}

/// An immediate-output command returns what the device left in out_param.
#[test]
fn an_immediate_result_is_read_from_out_param() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    // SET_ICM_SIZE answers one auxiliary page per MiB of ICM (the model's rule).
    let cmd = Command::new(opcode::SET_ICM_SIZE).in_param(64 << 20);
    assert_eq!(core.commands().exec_imm(&mut p, &cmd), Ok(64));
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// The firmware's refusal comes back as the PRM's status by name: RUN_FW before the
/// firmware area is mapped is in the wrong system state.
#[test]
fn a_firmware_status_is_mapped_to_its_named_error() {
    let mut p = Platform::new();
    let mut cmd = CommandInterface::new();
    assert_eq!(
        cmd.exec(&mut p, &Command::new(opcode::RUN_FW)),
        Err(CmdError::Failed {
            opcode: opcode::RUN_FW,
            status: CmdStatus::BadSysState
        })
    );
    // The device reported it too; the interface still works.
    assert_eq!(p.driver_errors().len(), 1);
    cmd.exec(&mut p, &Command::new(opcode::QUERY_FW).out_param(BASE))
        .expect("the next command runs");
    // A status the PRM does not name is its own error.
    let mut p = Platform::new().inject(opcode::QUERY_FW, 0, Injection::Status(0x07));
    assert_eq!(
        cmd.exec(&mut p, &Command::new(opcode::QUERY_FW).out_param(BASE)),
        Err(CmdError::UnknownStatus {
            opcode: opcode::QUERY_FW,
            raw: 0x07
        })
    );
    // Every status `mlx4_status_to_errno` knows round-trips.
    for raw in 0..=u8::MAX {
        if let Some(status) = CmdStatus::from_raw(raw) {
            assert_eq!(status as u8, raw);
        }
    }
}

/// A device that never clears go: the command times out after its 60 s, the interface
/// refuses every later command at once, and the probe's unwinding leaves the memory the
/// device was given where it is (leaked, not freed), but gives the ownership back.
#[test]
fn a_command_that_never_completes_times_out_and_wedges_the_interface() {
    let mut p = Platform::new().inject(opcode::RUN_FW, 0, Injection::NeverComplete);
    let mut core = Mlx4Core::new();
    let start = p.clock_us;
    let error = core.probe(&mut p, &config()).unwrap_err();
    assert_eq!(
        error,
        ProbeError::Command {
            step: Step::RunFw,
            error: CmdError::Timeout {
                opcode: opcode::RUN_FW
            }
        }
    );
    let waited = p.clock_us - start;
    assert!(
        (60_000_000..70_000_000).contains(&waited),
        "gave up after {waited} us"
    );
    assert!(core.commands().is_wedged());
    // No command after the one that hung: UNMAP_FA was not even posted.
    assert_eq!(p.posted.last(), Some(&opcode::RUN_FW));
    assert_eq!(
        core.commands().exec(&mut p, &Command::new(opcode::NOP)),
        Err(CmdError::Wedged {
            opcode: opcode::NOP
        })
    );
    let unwind = core.unwind_error().copied().expect("the unwinding reports");
    assert_eq!(unwind.step, Step::UnmapFa);
    // The firmware area (one 64 KiB chunk) and both mailboxes stay with the device.
    assert_eq!(unwind.leaked_chunks, 3);
    assert_eq!(p.memory.outstanding.len(), 3);
    assert!(!p.hca.resources().owned, "ownership given back");
}

/// A HCR that is busy before the post (go never clears) refuses the post after
/// `GO_BIT_TIMEOUT_MSECS`, without writing a word.
#[test]
fn a_busy_hcr_refuses_the_post() {
    let mut p = Platform::new();
    p.status_override = Some(hcr::GO_BIT);
    let mut cmd = CommandInterface::new();
    let start = p.clock_us;
    assert_eq!(
        cmd.exec(&mut p, &Command::new(opcode::QUERY_FW)),
        Err(CmdError::Busy {
            opcode: opcode::QUERY_FW
        })
    );
    assert!((10_000_000..11_000_000).contains(&(p.clock_us - start)));
    assert!(p.writes.is_empty());
    assert!(!cmd.is_wedged(), "nothing was posted");
}

/// Every command of the probe, failing: the probe reports the step, and unwinds so that
/// the device holds nothing and all memory is back.
#[test]
fn a_probe_failing_at_any_command_unwinds_cleanly() {
    let cases = [
        (opcode::QUERY_FW, 0, Step::QueryFw),
        (opcode::MAP_FA, 0, Step::MapFa),
        (opcode::RUN_FW, 0, Step::RunFw),
        (opcode::QUERY_DEV_CAP, 0, Step::QueryDevCap),
        (opcode::SET_ICM_SIZE, 0, Step::SetIcmSize),
        (opcode::MAP_ICM_AUX, 0, Step::MapIcmAux),
        (opcode::MAP_ICM, 0, Step::MapIcm("cMPT (QP)")),
        (opcode::MAP_ICM, 5, Step::MapIcm("MTT")),
        (opcode::MAP_ICM, 20, Step::MapIcm("MCG")),
        (opcode::INIT_HCA, 0, Step::InitHca),
        (opcode::QUERY_HCA, 0, Step::QueryHca),
        (opcode::QUERY_ADAPTER, 0, Step::QueryAdapter),
        (opcode::SW2HW_EQ, 0, Step::Sw2HwEq),
        (opcode::MAP_EQ, 0, Step::MapEq),
        (opcode::SW2HW_EQ, 1, Step::Sw2HwCompEq(0)),
        (opcode::SW2HW_EQ, 2, Step::Sw2HwCompEq(1)),
        // From here on by events: the failure comes as the command EQE's status.
        (opcode::NOP, 0, Step::NopInterrupt),
        (opcode::QUERY_PORT, 0, Step::QueryPort(1)),
        (opcode::SET_PORT, 0, Step::SetPort(1)),
        (opcode::INIT_PORT, 0, Step::InitPort(1)),
        (opcode::QUERY_PORT, 1, Step::QueryPort(2)),
        (opcode::SET_PORT, 1, Step::SetPort(2)),
        (opcode::INIT_PORT, 1, Step::InitPort(2)),
    ];
    for (op, skip, step) in cases {
        let status = CmdStatus::BadParam;
        let mut p = Platform::new().inject(op, skip, Injection::Status(status as u8));
        let mut core = Mlx4Core::new();
        let error = core.probe(&mut p, &config()).unwrap_err();
        assert_eq!(
            error,
            ProbeError::Command {
                step,
                error: CmdError::Failed { opcode: op, status }
            },
            "{step:?}"
        );
        assert_eq!(core.unwind_error(), None, "{step:?}");
        assert!(!core.is_initialized());
        assert_eq!(core.pages_given(), (0, 0, 0));
        // The EQ and the ports were given back before the HCA closed.
        if let Some(closed) = p.at_close_hca {
            assert_eq!(
                (closed.eqs, closed.ports_up),
                (0, [false, false]),
                "{step:?}"
            );
        }
        assert_released(&mut p);
    }
}

/// MOD_STAT_CFG's refusal is only a warning, as upstream's `mlx4_init_fw` has it.
#[test]
fn a_refused_page_size_is_only_noted() {
    let status = CmdStatus::BadParam as u8;
    let mut p = Platform::new().inject(opcode::MOD_STAT_CFG, 0, Injection::Status(status));
    let mut core = Mlx4Core::new();
    let info = *core.probe(&mut p, &config()).expect("the probe goes on");
    assert!(!info.page_size_set);
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// Host memory running out at any allocation of the probe: the probe fails and gives
/// back what it had.
#[test]
fn running_out_of_memory_anywhere_unwinds_cleanly() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    let allocations = p.memory.allocs;
    core.teardown(&mut p).expect("teardown");
    assert!(allocations > 50, "{allocations}");
    for n in [0, 1, 2, 3, 10, 40, allocations / 2, allocations - 1] {
        let mut p = Platform::new();
        p.memory.allocs_left = Some(n);
        let mut core = Mlx4Core::new();
        match core.probe(&mut p, &config()) {
            Err(ProbeError::Memory {
                error: AllocError::NoMemory,
                ..
            }) => {}
            other => panic!("after {n} allocations: {other:?}"),
        }
        assert_eq!(core.unwind_error(), None);
        assert_released(&mut p);
    }
}

/// Nonsense in QUERY_DEV_CAP's answer stops the probe with the field's name, and the
/// probe unwinds.
#[test]
fn a_probe_refuses_nonsense_capabilities_and_unwinds() {
    let cases = [
        (query_dev_cap::VL_PORT, 0x83, "QUERY_DEV_CAP_VL_PORT"),
        (query_dev_cap::MAX_QP, 0x05, "QUERY_DEV_CAP_RSVD_QP"),
        (
            query_dev_cap::QPC_ENTRY_SZ + 1,
            0x03,
            "QUERY_DEV_CAP_QPC_ENTRY_SZ",
        ),
        (query_dev_cap::PAGE_SZ, 13, "QUERY_DEV_CAP_PAGE_SZ"),
        (query_dev_cap::UAR_SZ, 4, "QUERY_DEV_CAP_UAR_SZ"),
    ];
    for (offset, value, field) in cases {
        let mut p = Platform::new().inject(
            opcode::QUERY_DEV_CAP,
            0,
            Injection::CorruptOutput {
                offset: offset as u64,
                value,
            },
        );
        let mut core = Mlx4Core::new();
        match core.probe(&mut p, &config()) {
            Err(ProbeError::InvalidCap(InvalidCap { field: got, .. })) => {
                assert_eq!(got, field)
            }
            other => panic!("{field}: {other:?}"),
        }
        assert_released(&mut p);
    }
}

/// QUERY_DEV_CAP's answer as the device gives it.
fn device_caps_mailbox() -> Vec<u8> {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    let outbox = BASE + (SIZE as u64) - 0x1000;
    let cmd = Command::new(opcode::QUERY_DEV_CAP).out_param(outbox);
    core.commands().exec(&mut p, &cmd).expect("QUERY_DEV_CAP");
    let mut out = vec![0u8; DevCaps::OUT_SIZE];
    Dma::read(&p.memory, outbox, &mut out).unwrap();
    core.teardown(&mut p).expect("teardown");
    out
}

#[test]
fn the_capability_parser_refuses_nonsense_by_field() {
    let good = device_caps_mailbox();
    let caps = DevCaps::parse(&good, BAR2_SIZE).expect("the device's own answer parses");
    assert_eq!(caps.max_eqs, 32);
    assert_eq!(caps.uar_size, 2 << 20);
    let refusals: &[(&[(usize, u8)], &str)] = &[
        (&[(query_dev_cap::VL_PORT, 0x80)], "QUERY_DEV_CAP_VL_PORT"),
        (&[(query_dev_cap::VL_PORT, 0x83)], "QUERY_DEV_CAP_VL_PORT"),
        (&[(query_dev_cap::MAX_QP, 0x18)], "QUERY_DEV_CAP_MAX_QP"),
        (
            &[
                (query_dev_cap::RSVD_QP, 0x0f),
                (query_dev_cap::MAX_QP, 0x0f),
            ],
            "QUERY_DEV_CAP_RSVD_QP",
        ),
        (
            &[
                (query_dev_cap::RSVD_CQ, 0x0f),
                (query_dev_cap::MAX_CQ, 0x02),
            ],
            "QUERY_DEV_CAP_RSVD_CQ",
        ),
        (&[(query_dev_cap::MAX_EQ, 0x02)], "QUERY_DEV_CAP_RSVD_EQ"),
        (&[(query_dev_cap::PAGE_SZ, 16)], "QUERY_DEV_CAP_PAGE_SZ"),
        (&[(query_dev_cap::PAGE_SZ, 200)], "QUERY_DEV_CAP_PAGE_SZ"),
        (&[(query_dev_cap::UAR_SZ, 4)], "QUERY_DEV_CAP_UAR_SZ"),
        (
            &[(query_dev_cap::QPC_ENTRY_SZ, 0)],
            "QUERY_DEV_CAP_QPC_ENTRY_SZ",
        ),
        (
            &[(query_dev_cap::MTT_ENTRY_SZ + 1, 12)],
            "QUERY_DEV_CAP_MTT_ENTRY_SZ",
        ),
        (
            &[
                (query_dev_cap::D_MPT_ENTRY_SZ, 0x20),
                (query_dev_cap::D_MPT_ENTRY_SZ + 1, 0),
            ],
            "QUERY_DEV_CAP_D_MPT_ENTRY_SZ",
        ),
        (
            &(0..8)
                .map(|i| (query_dev_cap::MAX_ICM_SZ + i, 0))
                .collect::<Vec<_>>(),
            "QUERY_DEV_CAP_MAX_ICM_SZ",
        ),
    ];
    for (edits, field) in refusals {
        let mut bad = good.clone();
        for &(offset, value) in *edits {
            bad[offset] = value;
        }
        let error = DevCaps::parse(&bad, BAR2_SIZE)
            .map(|_| ())
            .map_err(|e| e.field);
        assert_eq!(error, Err(*field), "{edits:?}");
    }
    // A short or empty answer is refused, not read past.
    assert!(DevCaps::parse(&[], BAR2_SIZE).is_err());
    assert!(DevCaps::parse(&good[..0x40], BAR2_SIZE).is_err());
    // A BAR2 too small for the UARs.
    assert_eq!(
        DevCaps::parse(&good, 1 << 20).unwrap_err().field,
        "QUERY_DEV_CAP_UAR_SZ"
    );
    // Every single byte changed to every value: an answer or a refusal, never a panic.
    for offset in 0..good.len() {
        for value in [0x00, 0x01, 0x1f, 0x3f, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[offset] = value;
            if let Ok(caps) = DevCaps::parse(&bad, BAR2_SIZE) {
                let _ = make_profile(&caps, &Profile::DEFAULT);
            }
        }
    }
}

#[test]
fn the_firmware_query_parser_refuses_nonsense_by_field() {
    let mut p = Platform::new();
    let mut cmd = CommandInterface::new();
    cmd.exec(&mut p, &Command::new(opcode::QUERY_FW).out_param(BASE))
        .unwrap();
    let mut good = vec![0u8; FwInfo::OUT_SIZE];
    Dma::read(&p.memory, BASE, &mut good).unwrap();
    assert_eq!(FwInfo::parse(&good).unwrap().fw_pages, 16);
    let refusals = [
        (query_fw::CMD_IF_REV + 1, 1, "QUERY_FW_CMD_IF_REV"),
        (query_fw::CMD_IF_REV + 1, 4, "QUERY_FW_CMD_IF_REV"),
        (query_fw::SIZE + 1, 0, "QUERY_FW_SIZE"),
        (query_fw::MAX_CMD, 9, "QUERY_FW_MAX_CMD"),
        (query_fw::ERR_BAR, 0x80, "QUERY_FW_ERR_BAR"),
        (query_fw::CLR_INT_BAR, 0xc0, "QUERY_FW_CLR_INT_BAR"),
    ];
    for (offset, value, field) in refusals {
        let mut bad = good.clone();
        bad[offset] = value;
        assert_eq!(FwInfo::parse(&bad).unwrap_err().field, field);
    }
}

/// The profile packs every table aligned to its power-of-two size, largest first,
/// without overlap, within the device's ICM; too little ICM is an error.
#[test]
fn the_profile_packs_aligned_tables_and_refuses_what_does_not_fit() {
    let good = device_caps_mailbox();
    let caps = DevCaps::parse(&good, BAR2_SIZE).unwrap();
    let layout = make_profile(&caps, &Profile::DEFAULT).unwrap();
    let mut tables = layout.tables.to_vec();
    tables.sort_by_key(|t| t.base);
    let mut end = 0;
    for t in &tables {
        assert!(
            t.size.is_power_of_two() && t.size >= ICM_PAGE_SIZE as u64,
            "{t:?}"
        );
        assert_eq!(t.base % t.size, 0, "{t:?} unaligned");
        assert_eq!(t.base, end, "{t:?}: a gap or an overlap");
        assert_eq!(t.num, 1 << t.log_num);
        end = t.base + t.size;
    }
    assert_eq!(end, layout.total_size);
    // Upstream's sizes for this device: 2^17 QPs of 256 bytes, 16 RDMA contexts each,
    // 2^26 compressed MPTs of 64 bytes, 2^13 multicast entries of 1 KiB.
    assert_eq!(layout.table(Resource::Qpc).size, (1 << 17) * 256);
    assert_eq!(layout.table(Resource::Rdmarc).num, 1 << 21);
    assert_eq!(layout.log_rd_per_qp, 4);
    assert_eq!(layout.table(Resource::Cmpt).size, 4 << 30);
    assert_eq!(layout.table(Resource::Cmpt).base, 0, "the largest first");
    assert_eq!(layout.table(Resource::Mcg).size, 8 << 20);
    assert_eq!(layout.log_mc_hash_size, 12);

    let mut small = caps;
    small.max_icm_size = layout.total_size - 1;
    assert_eq!(
        make_profile(&small, &Profile::DEFAULT),
        Err(ProfileError::TooLarge {
            needed: layout.total_size,
            max: layout.total_size - 1
        })
    );
    let none = Profile {
        num_qp: 64,
        ..Profile::DEFAULT
    };
    assert_eq!(
        make_profile(&caps, &none),
        Err(ProfileError::Request {
            field: "num_qp",
            value: 64
        })
    );
}

/// A smaller profile is honoured, and INIT_HCA carries it (the model checks its own
/// limits against it).
#[test]
fn a_smaller_profile_probes() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    let config = ProbeConfig {
        profile: Profile {
            num_qp: 1 << 10,
            num_srq: 1 << 8,
            rdmarc_per_qp: 4,
            num_cq: 1 << 10,
            num_mcg: 1 << 8,
            num_mpt: 1 << 12,
            num_mtt_segs: 1 << 12,
        },
        ..config()
    };
    let info = *core.probe(&mut p, &config).expect("probe");
    assert_eq!(info.layout.num_qps, 1 << 10);
    assert_eq!(info.layout.log_rd_per_qp, 2);
    assert!(p
        .hca
        .take_events()
        .iter()
        .any(|e| matches!(e, HcaEvent::Info(l) if l.contains("INIT_HCA: 2^10 QPs, 2^10 CQs, 2^5 EQs, 2^12 MPTs"))));
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// The model's new check: UNMAP_FA while ICM is still mapped is a driver error (the
/// teardown above never trips it; a driver that skips `mlx4_free_icms` does).
#[test]
fn unmapping_the_firmware_area_under_mapped_icm_is_reported() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    core.commands()
        .exec(&mut p, &Command::new(opcode::CLOSE_HCA))
        .expect("CLOSE_HCA");
    core.commands()
        .exec(&mut p, &Command::new(opcode::UNMAP_FA))
        .expect("UNMAP_FA runs");
    let errors = p.driver_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("still mapped"), "{errors:?}");
    assert_eq!(p.hca.resources().icm_chunks, 0);
}

/// The status words of the commands posted, with their token words: (opcode, event
/// bit, token), in order.
fn posts(p: &Platform) -> Vec<(u16, bool, u16)> {
    let mut token = POLL_TOKEN;
    let mut out = Vec::new();
    for &(offset, value) in &p.writes {
        if offset == HCR_BASE + hcr::TOKEN as u64 {
            token = (value >> 16) as u16;
        } else if offset == STATUS_REGISTER && value & hcr::GO_BIT != 0 {
            out.push(((value & 0xfff) as u16, value & hcr::EVENT_BIT != 0, token));
        }
    }
    out
}

fn interrupts(events: &[HcaEvent]) -> Vec<u16> {
    events
        .iter()
        .filter_map(|e| match e {
            HcaEvent::Interrupt { vector } => Some(*vector),
            _ => None,
        })
        .collect()
}

/// `mlx4_setup_hca` on the model: the driver's UAR after the 128 EQ doorbell pages, the
/// async EQ in hardware with the async and command events mapped to it, the NOP
/// completed by an EQE that raised the EQ's interrupt, every later command completed by
/// events with a token of its own, and both ports initialized.
#[test]
fn the_setup_creates_the_async_eq_sees_the_nop_interrupt_and_opens_the_ports() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    let info = *core.probe(&mut p, &config()).expect("the probe succeeds");

    assert_eq!(info.driver_uar, 128);
    assert_eq!(info.async_eqn, 4, "the first EQ above the 4 reserved");
    assert_eq!(info.comp_eqns, [Some(5), Some(6), None, None]);
    assert_eq!(
        (core.comp_eqn(0), core.comp_eqn(1), core.comp_eqn(2)),
        (Some(5), Some(6), None)
    );
    for (i, port) in info.ports.iter().enumerate() {
        let port = port.expect("both ports");
        assert_eq!(usize::from(port.port), i + 1);
        assert!(port.link_up);
        assert_eq!(port.ib_mtu_cap, 5);
        assert_eq!((port.gid_table_len, port.pkey_table_len), (128, 128));
        assert_eq!(port.max_vl, 8);
    }
    let held = p.hca.resources();
    assert_eq!((held.eqs, held.ports_up), (3, [true, true]));
    assert_eq!(core.ports_up(), [true, true]);

    // The EQ's interrupt fired, once per command completed by event (the driver
    // re-arms after each), on vector 0.
    let events = p.hca.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, HcaEvent::DriverError(_))),
        "{events:?}"
    );
    // SW2HW_EQ gave the EQ armed, of 512 entries, on vector 0.
    assert!(
        events
            .iter()
            .any(|e| *e == HcaEvent::Info("EQ 4: 512 entries, vector 0, armed".into())),
        "{events:?}"
    );
    // And the completion EQs, on vectors 1 and 2.
    for (eqn, vector) in [(5, 1), (6, 2)] {
        let created = format!("EQ {eqn}: 512 entries, vector {vector}, armed");
        assert!(
            events.iter().any(|e| *e == HcaEvent::Info(created.clone())),
            "{events:?}"
        );
    }
    let posted = posts(&p);
    let nop = posted
        .iter()
        .position(|&(op, _, _)| op == opcode::NOP)
        .expect("NOP posted");
    // Polled up to the NOP, by events from it on, each with a new token.
    assert!(posted[..nop]
        .iter()
        .all(|&(_, event, token)| !event && token == POLL_TOKEN));
    let by_event = &posted[nop..];
    assert!(by_event.iter().all(|&(_, event, _)| event), "{by_event:?}");
    let tokens: Vec<u16> = by_event.iter().map(|&(_, _, t)| t).collect();
    assert_eq!(tokens, (0..7).collect::<Vec<u16>>());
    assert_eq!(interrupts(&events), vec![0; by_event.len()]);
    // The doorbell of EQ 4 (page 1 of BAR2, its slot 0): armed at creation, then the
    // consumer index and the arm bit after each EQE.
    let doorbells: Vec<u32> = p
        .bar2_writes
        .iter()
        .filter(|&&(offset, _)| offset == eq_doorbell(4))
        .map(|&(_, v)| v)
        .collect();
    let mut expected = vec![1 << 31];
    expected.extend((1..=by_event.len() as u32).map(|ci| ci | 1 << 31));
    assert_eq!(doorbells, expected);
    // The completion EQs' doorbells (page 1, slots 1 and 2): armed at creation.
    for eqn in [5, 6] {
        let armed: Vec<u32> = p
            .bar2_writes
            .iter()
            .filter(|&&(offset, _)| offset == eq_doorbell(eqn))
            .map(|&(_, v)| v)
            .collect();
        assert_eq!(armed, [1 << 31], "EQ {eqn}");
    }
    assert_eq!(p.bar2_writes.len(), doorbells.len() + 2);
    assert!(p.read_barriers >= by_event.len());
    assert_eq!(core.commands().stale_completions(), 0);

    // Commands after the probe complete by events too, and their status is mapped.
    let before = p.posted.len();
    core.command(&mut p, Step::NopInterrupt, Command::new(opcode::NOP))
        .expect("NOP by event");
    let error = core
        .command(
            &mut p,
            Step::QueryPort(3),
            Command::new(opcode::QUERY_PORT).in_modifier(3),
        )
        .unwrap_err();
    assert_eq!(
        error,
        ProbeError::Command {
            step: Step::QueryPort(3),
            error: CmdError::Failed {
                opcode: opcode::QUERY_PORT,
                status: CmdStatus::BadIndex
            }
        }
    );
    assert_eq!(p.posted.len(), before + 2);
    let events = p.hca.take_events();
    assert_eq!(interrupts(&events), vec![0, 0]);
    assert!(posts(&p)[before..].iter().all(|&(_, event, _)| event));

    // An immediate result comes in the command EQE's out_param: MGID_HASH's, the same
    // the HCR shows.
    let inbox = BASE + SIZE as u64 - 0x2000;
    p.memory
        .write(
            inbox,
            &[0xff, 0x12, 0x40, 0x1b, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 1],
        )
        .unwrap();
    let hash = core
        .command(
            &mut p,
            Step::NopInterrupt,
            Command::new(opcode::MGID_HASH).in_param(inbox),
        )
        .expect("MGID_HASH");
    let hcr_out = (u64::from(p.bar0_read_be32(HCR_BASE + hcr::OUT_PARAM as u64)) << 32)
        | u64::from(p.bar0_read_be32(HCR_BASE + hcr::OUT_PARAM as u64 + 4));
    assert_eq!(hash, hcr_out);
    assert_ne!(hash, inbox, "not the input left in the HCR");

    // SET_PORT's capability mask is what each port's PortInfo now reports (MAD_IFC,
    // by event, a Get(PortInfo) SMP).
    for port in 1..=2u32 {
        let (inbox, outbox) = (BASE + SIZE as u64 - 0x2000, BASE + SIZE as u64 - 0x1000);
        let mut smp = [0u8; 256];
        smp[..4].copy_from_slice(&[1, 0x01, 1, 0x01]);
        smp[16..18].copy_from_slice(&0x0015u16.to_be_bytes());
        p.memory.write(inbox, &smp).unwrap();
        let cmd = Command::new(opcode::MAD_IFC)
            .in_param(inbox)
            .out_param(outbox)
            .in_modifier(port);
        core.command(&mut p, Step::QueryPort(port as u8), cmd)
            .expect("MAD_IFC");
        let mut mask = [0u8; 4];
        Dma::read(&p.memory, outbox + 64 + 20, &mut mask).unwrap();
        assert_eq!(u32::from_be_bytes(mask), IB_CAP_MASK, "port {port}");
    }
    p.hca.take_events();

    // A port going ACTIVE (an SM's Set(PortInfo) to ARMED, then ACTIVE) is a
    // PORT_CHANGE event on the async EQ, walked past with the command completions,
    // and then down again (Set to DOWN: the link stays, the port goes to INIT).
    assert_eq!(core.async_events(), 0);
    assert_eq!(core.take_port_event(), None);
    for state in [3u8, 4, 1] {
        let (inbox, outbox) = (BASE + SIZE as u64 - 0x2000, BASE + SIZE as u64 - 0x1000);
        let mut smp = [0u8; 256];
        smp[..4].copy_from_slice(&[1, 0x01, 1, 0x02]);
        smp[16..18].copy_from_slice(&0x0015u16.to_be_bytes());
        smp[64 + 32] = state;
        p.memory.write(inbox, &smp).unwrap();
        let cmd = Command::new(opcode::MAD_IFC)
            .in_param(inbox)
            .out_param(outbox)
            .in_modifier(1);
        core.command(&mut p, Step::QueryPort(1), cmd)
            .expect("MAD_IFC");
    }
    assert_eq!(core.async_events(), 2);
    assert_eq!(
        core.last_async_event(),
        Some(EqEvent::PortChange {
            port: 1,
            subtype: 1
        })
    );
    // Typed, in order, for the IB device layer.
    assert_eq!(
        core.take_port_event(),
        Some(PortEvent {
            port: 1,
            kind: PortEventKind::Active
        })
    );
    assert_eq!(
        core.take_port_event(),
        Some(PortEvent {
            port: 1,
            kind: PortEventKind::Down
        })
    );
    assert_eq!(core.take_port_event(), None);
    assert_eq!(core.dropped_port_events(), 0);
    p.hca.take_events();

    // PDs above the 4 reserved.
    assert_eq!(core.alloc_pd(), Some(4));
    assert_eq!(core.alloc_pd(), Some(5));
    assert!(core.free_pd(4));
    assert!(!core.free_pd(4));

    core.teardown(&mut p).expect("the teardown succeeds");
    assert!(!core.commands().uses_events());
    assert_eq!(core.driver_uar(), None);
    assert_eq!(core.alloc_pd(), None);
    assert_released(&mut p);
}

/// A command EQE with a token that is not the waiting command's is refused: directly,
/// and on the device, where the NOP's EQE comes with a forged token, the driver does not
/// take it as the NOP's completion, and the NOP times out.
#[test]
fn a_stale_token_is_refused() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    assert_eq!(
        core.commands().complete_event(0x1234, 0, 0),
        Err(CmdError::StaleToken { token: 0x1234 })
    );
    assert_eq!(core.commands().stale_completions(), 1);
    // A waiting command is completed only by its own token.
    let token = core
        .commands()
        .post_event(&mut p, &Command::new(opcode::NOP))
        .expect("post");
    assert_eq!(
        core.commands().complete_event(token ^ 1, 0, 0),
        Err(CmdError::StaleToken { token: token ^ 1 })
    );
    assert_eq!(
        core.commands()
            .complete_event(token, CmdStatus::BadOp as u8, 0),
        Ok((
            opcode::NOP,
            Err(CmdError::Failed {
                opcode: opcode::NOP,
                status: CmdStatus::BadOp
            })
        ))
    );
    assert_eq!(
        core.commands().complete_event(token, 0, 0),
        Err(CmdError::StaleToken { token }),
        "a second completion of the same command is stale"
    );
    // The EQE of the hand-posted NOP is still in the EQ: consumed as stale.
    core.poll_events(&mut p).expect("poll");
    assert_eq!(core.commands().stale_completions(), 4);
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);

    let mut p = Platform::new().inject(opcode::NOP, 0, Injection::WrongToken);
    let mut core = Mlx4Core::new();
    let error = core.probe(&mut p, &config()).unwrap_err();
    assert_eq!(
        error,
        ProbeError::Command {
            step: Step::NopInterrupt,
            error: CmdError::Timeout {
                opcode: opcode::NOP
            }
        }
    );
    assert_eq!(core.commands().stale_completions(), 1);
    assert!(core.commands().is_wedged());
    // The interrupt came: the EQE was there, only not the NOP's.
    assert_eq!(interrupts(&p.hca.take_events()), vec![0]);
}

/// A port that cannot run InfiniBand stops the probe, named by its field, and the probe
/// unwinds, ports and EQ included.
#[test]
fn a_nonsense_port_answer_is_refused_and_unwinds() {
    for (skip, offset, value, field) in [
        (
            0,
            query_port::SUPPORTED_TYPE,
            0x82,
            "QUERY_PORT_SUPPORTED_TYPE",
        ),
        (1, query_port::MTU, 0x07, "QUERY_PORT_MTU"),
        (1, query_port::MAX_VL, 0x00, "QUERY_PORT_MAX_VL"),
    ] {
        let mut p = Platform::new().inject(
            opcode::QUERY_PORT,
            skip,
            Injection::CorruptOutput {
                offset: offset as u64,
                value,
            },
        );
        let mut core = Mlx4Core::new();
        match core.probe(&mut p, &config()) {
            Err(ProbeError::InvalidCap(InvalidCap { field: got, .. })) => {
                assert_eq!(got, field)
            }
            other => panic!("{field}: {other:?}"),
        }
        let closed = p.at_close_hca.expect("CLOSE_HCA came");
        assert_eq!((closed.eqs, closed.ports_up), (0, [false, false]));
        assert_released(&mut p);
    }
}

/// HW2SW_EQ refused at teardown: the device may still write the EQ's pages, so they
/// are kept (counted as leaked), and everything else is given back.
#[test]
fn an_eq_the_device_keeps_is_not_freed() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    p.inject = Some((
        opcode::HW2SW_EQ,
        0,
        Injection::Status(CmdStatus::InternalError as u8),
    ));
    let error = core.teardown(&mut p).unwrap_err();
    assert_eq!(error.step, Step::Hw2SwEq);
    assert_eq!(error.leaked_chunks, 4, "the EQ's four pages");
    assert_eq!(p.memory.outstanding.len(), 4);
    let fresh = Hca::new().resources();
    assert_eq!(p.hca.resources(), fresh);
}

// ---- The resources of the IB device: ICM on demand, MTT, MR, CQ, QP, MAD_IFC ------------

mod fast {
    //! The smallest adapter between the fast path's `Platform` and the test memory the
    //! device model reaches by DMA: rings and doorbell records are views at bus addresses
    //! of the same bytes (the fast path's own host platform keeps queues in memory of its
    //! own, which the model's firmware cannot reach). UAR writes are logged by the host
    //! platform's `HostUar` and replayed into the model's BAR2 by the test.
    use super::*;
    use hw_mlx4::fastpath::platform::{DmaRing, DoorbellRecord, Platform as FastPlatform};
    use hw_mlx4::model::{HostBlueFlame, HostUar};
    use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    pub struct DmaPlatform;

    impl FastPlatform for DmaPlatform {
        type Ring = Ring;
        type DbRecord = Record;
        type Uar = HostUar;
        type BlueFlame = HostBlueFlame;
        type Counter = AtomicU32;
        type WrId = AtomicU64;
        type WrIdTable = Box<[AtomicU64]>;
        fn dma_wmb() {
            fence(Ordering::Release);
        }
        fn dma_rmb() {
            fence(Ordering::Acquire);
        }
        fn wmb() {
            fence(Ordering::Release);
        }
    }

    pub struct Ring {
        pub bytes: Rc<RefCell<Vec<u8>>>,
        pub address: u64,
        pub log_entries: u32,
        pub shift: u32,
    }

    impl Ring {
        fn range(&self, index: u32, offset: usize, len: usize) -> std::ops::Range<usize> {
            let slot = u64::from(index & ((1 << self.log_entries) - 1)) << self.shift;
            let start = (self.address - BASE + slot) as usize + offset;
            start..start + len
        }
    }

    impl DmaRing for Ring {
        fn log_entries(&self) -> u32 {
            self.log_entries
        }
        fn entry_shift(&self) -> u32 {
            self.shift
        }
        unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
            let r = self.range(index, 0, 1 << self.shift);
            f(&self.bytes.borrow()[r])
        }
        unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
            let r = self.range(index, 0, 1 << self.shift);
            f(&mut self.bytes.borrow_mut()[r])
        }
        fn read_word(&self, index: u32, offset: usize) -> u32 {
            let r = self.range(index, offset, 4);
            u32::from_be_bytes(self.bytes.borrow()[r].try_into().unwrap())
        }
        fn write_word(&self, index: u32, offset: usize, value: u32) {
            let r = self.range(index, offset, 4);
            self.bytes.borrow_mut()[r].copy_from_slice(&value.to_be_bytes());
        }
    }

    pub struct Record {
        pub bytes: Rc<RefCell<Vec<u8>>>,
        pub address: u64,
    }

    impl DoorbellRecord for Record {
        fn write_release(&self, value: u32) {
            let start = (self.address - BASE) as usize;
            self.bytes.borrow_mut()[start..start + 4].copy_from_slice(&value.to_be_bytes());
        }
        fn read_acquire(&self) -> u32 {
            let start = (self.address - BASE) as usize;
            u32::from_be_bytes(self.bytes.borrow()[start..start + 4].try_into().unwrap())
        }
    }
}

use hw_mlx4::bringup::objects::{
    MrAccess, PageRegion, QpConfig, QpPath, QpState, QpTransport, QueuePair,
};
use hw_mlx4::fastpath::cq::{CompletionQueue as FastCq, CqDoorbells};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
use hw_mlx4::model::{wr_id_table, HostUar, UarWrite};
use hw_mlx4::wire::fw::qp_context;
use hw_mlx4::wire::{ArmCommand, UAR_CQ_DOORBELL, UAR_SEND_DOORBELL};
use hw_mlx4::wr::{
    Completion, Payload, RecvWr, SendFlags, SendOp, SendWr, Sge, WcOpcode, WcStatus,
};

/// A probed device, its memory and the model's record cleared.
fn probed() -> (Platform, Mlx4Core<Block>) {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("the probe succeeds");
    p.hca.take_events();
    p.posted.clear();
    (p, core)
}

fn rc_config(pd: u32, cqn: u32) -> QpConfig {
    QpConfig {
        transport: QpTransport::Rc,
        log_sq_entries: 6,
        log_sq_stride: 6,
        log_rq_entries: 6,
        log_rq_stride: 4,
        pd,
        send_cqn: cqn,
        recv_cqn: cqn,
    }
}

fn rc_path(remote_qpn: u32) -> QpPath {
    QpPath::rc(1, 0, remote_qpn)
}

/// Takes a QP from RESET to RTS, connected to `remote`.
fn connect(
    p: &mut Platform,
    core: &mut Mlx4Core<Block>,
    qp: &mut QueuePair<Block>,
    remote: u32,
    uar: u32,
) -> Result<(), ProbeError> {
    core.qp_to_init(p, qp, &rc_path(remote), uar)?;
    core.qp_to_rtr(p, qp, &rc_path(remote), uar)?;
    core.qp_to_rts(p, qp, 1, 0, uar)
}

/// The fast path's view of a QP the core created: its rings inside the QP's buffer.
fn fast_qp(p: &Platform, qp: &QueuePair<Block>) -> QueuePairState<fast::DmaPlatform> {
    fast_qp_of(p, qp, QpType::Rc, 2)
}

/// As [`fast_qp`], for a QP of `qp_type` with `max_sge` gather entries.
fn fast_qp_of(
    p: &Platform,
    qp: &QueuePair<Block>,
    qp_type: QpType,
    max_sge: u32,
) -> QueuePairState<fast::DmaPlatform> {
    let buffer = qp.buffer.as_ref().expect("buffer").bus_address;
    let c = qp.config;
    let ring = |offset: u64, log_entries, shift| fast::Ring {
        bytes: p.memory.bytes.clone(),
        address: buffer + offset,
        log_entries,
        shift,
    };
    let caps = SendQueueCaps {
        max_sge,
        max_inline: 0,
        signal_all: false,
    };
    let sq = SendQueueState::new(
        ring(qp.sq_offset, c.log_sq_entries, c.log_sq_stride),
        wr_id_table(1 << c.log_sq_entries),
        qp_type,
        caps,
    )
    .expect("send queue");
    let record = fast::Record {
        bytes: p.memory.bytes.clone(),
        address: qp.doorbell.as_ref().expect("doorbell").bus_address,
    };
    let rq = RecvQueueState::new(
        ring(qp.rq_offset, c.log_rq_entries, c.log_rq_stride),
        wr_id_table(1 << c.log_rq_entries),
        record,
    )
    .expect("receive queue");
    QueuePairState::new(qp.qpn, sq, rq)
}

/// Replays the fast path's UAR writes into the model's BAR2, at the driver's UAR page.
fn ring_doorbells(p: &mut Platform, uar: &HostUar, page: u32) {
    let base = u64::from(page) << 12;
    for write in uar.pending_writes() {
        match write {
            UarWrite::Send(value) => p.hca.bar2_write(
                &p.memory,
                base + UAR_SEND_DOORBELL as u64,
                &value.to_be_bytes(),
            ),
            UarWrite::Cq(db) => {
                let bytes = zerocopy::IntoBytes::as_bytes(&db).to_vec();
                p.hca
                    .bar2_write(&p.memory, base + UAR_CQ_DOORBELL as u64, &bytes)
            }
            other => panic!("unexpected UAR write {other:?}"),
        }
    }
    uar.discard();
}

/// The ultimate proof: an MR over two pages (at an I/O address of its own), one CQ and
/// two RC QPs created through the firmware and connected through the model; the fast
/// path posts a receive and a SEND over them, the device moves the bytes through the
/// MR's MTT and writes both CQEs, and the fast path's CQ polls them. Then everything is
/// destroyed and the device and the memory end as they were.
#[test]
fn a_send_moves_bytes_between_two_rc_qps_created_through_the_firmware() {
    let (mut p, mut core) = probed();
    let info = *core.info().unwrap();
    let uar = core.driver_uar().unwrap();
    let before = p.hca.resources();
    let outstanding = p.memory.outstanding.len();
    let in_use = (core.mtt_entries_in_use(), core.objects_in_use());
    let pd = core.alloc_pd().unwrap();

    // The local DMA lkey: a physical MR.
    let dma_mr = core
        .create_dma_mr(&mut p, pd, MrAccess::LOCAL)
        .expect("DMA MR");
    // Two data pages under one MR at I/O address 0x5555_0000.
    let pages = [p.alloc(0).unwrap(), p.alloc(0).unwrap()];
    let page_addresses = [pages[0].address, pages[1].address];
    let iova = 0x5555_0000;
    let mr = core
        .create_page_mr(
            &mut p,
            pd,
            MrAccess::ALL,
            &PageRegion {
                iova,
                length: 0x2000,
                pages: &page_addresses,
                page_shift: 12,
            },
        )
        .expect("page MR");
    assert_ne!(mr.key, dma_mr.key);
    assert_eq!(p.hca.resources().mpts, 2);

    // The CQ reports to the second completion EQ (MSI-X vector 2).
    let comp_eqn = core.comp_eqn(1).expect("completion EQ 1");
    assert_ne!(comp_eqn, info.async_eqn);
    let cq = core.create_cq(&mut p, 7, comp_eqn, uar).expect("CQ");
    assert_eq!(p.hca.resources().cqs, 1);
    let mut a = core.create_qp(&mut p, rc_config(pd, cq.cqn)).expect("QP a");
    let mut b = core.create_qp(&mut p, rc_config(pd, cq.cqn)).expect("QP b");
    assert_ne!(a.qpn, b.qpn);
    assert!(a.qpn >= 64 + 8, "above the reserved and the special QPs");
    assert_eq!(
        p.hca.resources().qps,
        0,
        "RESET: the device holds nothing yet"
    );
    connect(&mut p, &mut core, &mut a, b.qpn, uar).expect("a to RTS");
    connect(&mut p, &mut core, &mut b, a.qpn, uar).expect("b to RTS");
    assert_eq!((a.state, b.state), (QpState::Rts, QpState::Rts));
    assert_eq!(p.hca.resources().qps, 2);
    assert_eq!(p.driver_errors(), Vec::<String>::new());

    // The fast path over the same memory.
    let host_uar = HostUar::new();
    let cq_doorbell = cq.doorbell.as_ref().unwrap().bus_address;
    let record = |offset| fast::Record {
        bytes: p.memory.bytes.clone(),
        address: cq_doorbell + offset,
    };
    let mut fast_cq = FastCq::<fast::DmaPlatform>::new(
        cq.cqn,
        fast::Ring {
            bytes: p.memory.bytes.clone(),
            address: cq.buffer.as_ref().unwrap().bus_address,
            log_entries: cq.log_entries,
            shift: 5,
        },
        CqDoorbells {
            set_ci: record(0),
            arm: record(4),
        },
    )
    .expect("fast CQ");
    let mut fa = fast_qp(&p, &a);
    let mut fb = fast_qp(&p, &b);
    // Armed for the next completion (`ib_req_notify_cq`): nothing fires yet.
    fast_cq.arm(&host_uar, ArmCommand::Next);
    ring_doorbells(&mut p, &host_uar, uar);
    assert_eq!(interrupts(&p.hca.take_events()), Vec::<u16>::new());
    let mut seen = Vec::new();
    assert_eq!(core.poll_completions(&mut p, 1, |e| seen.push(e)), Ok(0));

    let message = b"tilde: bytes moved by the firmware's own QPs";
    p.memory.write(pages[0].address + 0x100, message).unwrap();
    {
        let (_, mut rq, _) = fb.split(&host_uar);
        let sge = [Sge {
            addr: iova + 0x1000 + 0x40,
            length: 256,
            lkey: mr.key,
        }];
        rq.post(&[RecvWr {
            wr_id: 0xb0b,
            sges: &sge,
        }])
        .expect("post recv");
    }
    {
        let (mut sq, _, _) = fa.split(&host_uar);
        let sge = [Sge {
            addr: iova + 0x100,
            length: message.len() as u32,
            lkey: mr.key,
        }];
        sq.post(&[SendWr::new(
            0xa0a,
            SendOp::Send,
            Payload::Gather(&sge),
            SendFlags::SIGNALED,
        )])
        .expect("post send");
    }
    ring_doorbells(&mut p, &host_uar, uar);
    // The completion raised one event, on the CQ's EQ and that EQ's vector only; the
    // walk of that EQ dispatches it to the CQ it names, and re-arms the EQ.
    let events = p.hca.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, HcaEvent::DriverError(_))),
        "{events:?}"
    );
    assert_eq!(interrupts(&events), vec![2]);
    assert_eq!(core.poll_completions(&mut p, 0, |e| seen.push(e)), Ok(0));
    assert_eq!(seen, []);
    assert_eq!(core.poll_completions(&mut p, 1, |e| seen.push(e)), Ok(1));
    assert_eq!(seen, [CompletionEvent { cqn: cq.cqn }]);
    assert_eq!(
        p.bar2_writes.last(),
        Some(&(eq_doorbell(comp_eqn), 1 | 1 << 31)),
        "consumer index 1, re-armed"
    );
    fast_cq.event_delivered();
    assert_eq!(core.refused_completions(), 0);
    assert_eq!(
        core.poll_completions(&mut p, 2, |e| seen.push(e)),
        Err(ProbeError::EqAccess),
        "no third completion EQ"
    );

    let mut received = vec![0u8; message.len()];
    Dma::read(&p.memory, pages[1].address + 0x40, &mut received).unwrap();
    assert_eq!(&received[..], &message[..], "the bytes crossed");

    let (_, _, ca) = fa.split(&host_uar);
    let (_, _, cb) = fb.split(&host_uar);
    let mut out = [Completion::EMPTY; 4];
    let polled = fast_cq.poll(&[ca, cb], &mut out).expect("poll");
    assert_eq!(polled, 2);
    let send = out.iter().find(|c| c.wr_id == 0xa0a).expect("send CQE");
    let recv = out.iter().find(|c| c.wr_id == 0xb0b).expect("receive CQE");
    assert_eq!(
        (send.status, send.opcode, send.qpn),
        (WcStatus::Success, WcOpcode::Send, a.qpn)
    );
    assert_eq!(
        (recv.status, recv.opcode, recv.qpn, recv.byte_len),
        (
            WcStatus::Success,
            WcOpcode::Recv,
            b.qpn,
            message.len() as u32
        )
    );
    assert_eq!(recv.src_qp, a.qpn);
    drop(fast_cq);
    ring_doorbells(&mut p, &host_uar, uar);

    // Everything back: 2ERR, 2RST, HW2SW_CQ, HW2SW_MPT.
    core.qp_to_error(&mut p, &mut a).expect("2ERR");
    p.posted.clear();
    core.destroy_qp(&mut p, a).expect("destroy a");
    assert_eq!(p.posted, [opcode::TO_RST_QP]);
    core.destroy_qp(&mut p, b).expect("destroy b");
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    core.destroy_mr(&mut p, mr).expect("destroy MR");
    core.destroy_mr(&mut p, dma_mr).expect("destroy DMA MR");
    for page in pages {
        p.free(page);
    }
    assert!(core.free_pd(pd));
    assert_eq!(p.hca.resources(), before);
    assert_eq!(p.memory.outstanding.len(), outstanding);
    assert_eq!(core.leaked_blocks(), 0);
    assert_eq!(core.demand_chunks(), 0);
    assert_eq!((core.mtt_entries_in_use(), core.objects_in_use()), in_use);
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// Data pages the failure tests' MR names (never touched: the model checks no page).
const MR_PAGES: [u64; 2] = [BASE + SIZE as u64 - 0x4000, BASE + SIZE as u64 - 0x3000];
/// A QP number in the third 256 KiB chunk of the QP context table (1024 contexts of
/// 256 bytes each per chunk): its contexts are mapped on demand.
const FAR_QP_ALIGN: u32 = 2048;

/// An MR, a CQ and an RC QP at a number whose ICM is mapped on demand, connected to
/// itself; then all destroyed. Each failure unwinds what was made before it.
fn build_and_destroy(
    p: &mut Platform,
    core: &mut Mlx4Core<Block>,
    pd: u32,
    eqn: u32,
    uar: u32,
) -> Result<(), ProbeError> {
    let region = PageRegion {
        iova: 0x1000,
        length: 0x2000,
        pages: &MR_PAGES,
        page_shift: 12,
    };
    let mr = core.create_page_mr(p, pd, MrAccess::ALL, &region)?;
    let cq = match core.create_cq(p, 6, eqn, uar) {
        Ok(cq) => cq,
        Err(e) => {
            core.destroy_mr(p, mr).expect("MR destroyed");
            return Err(e);
        }
    };
    let qpn = core.reserve_qp_range(1, FAR_QP_ALIGN).expect("a QP number");
    assert_eq!(qpn % FAR_QP_ALIGN, 0);
    let undo = |p: &mut Platform, core: &mut Mlx4Core<Block>, cq, mr| {
        core.destroy_cq(p, cq).expect("CQ destroyed");
        core.destroy_mr(p, mr).expect("MR destroyed");
        assert!(core.release_qp_range(qpn, 1));
    };
    let mut qp = match core.create_qp_in_range(p, qpn, rc_config(pd, cq.cqn)) {
        Ok(qp) => qp,
        Err(e) => {
            undo(p, core, cq, mr);
            return Err(e);
        }
    };
    let connected = connect(p, core, &mut qp, qpn, uar);
    core.destroy_qp(p, qp).expect("QP destroyed");
    undo(p, core, cq, mr);
    connected
}

#[test]
fn icm_is_mapped_on_demand_and_unmapped_when_its_last_user_goes() {
    let (mut p, mut core) = probed();
    let uar = core.driver_uar().unwrap();
    let pd = core.alloc_pd().unwrap();
    let before = p.hca.resources();
    let outstanding = p.memory.outstanding.len();

    // Low numbers live in the chunks the probe mapped: nothing is mapped for them.
    let cq = core.create_cq(&mut p, 6, 4, uar).expect("CQ");
    let near = core.create_qp(&mut p, rc_config(pd, cq.cqn)).expect("QP");
    assert_eq!(core.demand_chunks(), 0);
    assert!(!p.posted.contains(&opcode::MAP_ICM));

    // A QP far up the table: its QPC, ALTC and RDMARC chunks are mapped for it.
    let first = core.reserve_qp_range(2, FAR_QP_ALIGN).unwrap();
    p.posted.clear();
    let mut far = core
        .create_qp_in_range(&mut p, first, rc_config(pd, cq.cqn))
        .expect("far QP");
    let mapped = core.demand_chunks();
    assert!(mapped >= 1, "the QP context's chunk at least");
    let map_icms = p.posted.iter().filter(|&&op| op == opcode::MAP_ICM).count();
    assert_eq!(map_icms, mapped);
    assert_eq!(
        p.hca.resources().icm_chunks,
        before.icm_chunks + mapped,
        "the device holds them"
    );
    // Its context is in ICM now: the firmware takes it.
    core.qp_to_init(&mut p, &mut far, &rc_path(first), uar)
        .expect("RST2INIT");
    // A second user of the same chunks maps nothing more.
    p.posted.clear();
    let second = core
        .create_qp_in_range(&mut p, first + 1, rc_config(pd, cq.cqn))
        .expect("second far QP");
    assert!(!p.posted.contains(&opcode::MAP_ICM));
    assert_eq!(core.demand_chunks(), mapped);

    // The first goes: the chunks stay; the last goes: UNMAP_ICM for each.
    p.posted.clear();
    core.destroy_qp(&mut p, far).expect("destroy far");
    assert!(!p.posted.contains(&opcode::UNMAP_ICM));
    core.destroy_qp(&mut p, second).expect("destroy second");
    let unmaps = p
        .posted
        .iter()
        .filter(|&&op| op == opcode::UNMAP_ICM)
        .count();
    assert_eq!(unmaps, mapped);
    assert_eq!(core.demand_chunks(), 0);
    assert!(core.release_qp_range(first, 2));
    core.destroy_qp(&mut p, near).expect("destroy near");
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    assert_eq!(p.hca.resources(), before);
    assert_eq!(p.memory.outstanding.len(), outstanding);
    assert_eq!(p.driver_errors(), Vec::<String>::new());

    // Chunks still mapped at teardown are unmapped after CLOSE_HCA.
    let first = core.reserve_qp_range(1, FAR_QP_ALIGN).unwrap();
    let cq = core.create_cq(&mut p, 6, 4, uar).expect("CQ");
    let kept = core
        .create_qp_in_range(&mut p, first, rc_config(pd, cq.cqn))
        .expect("far QP");
    assert!(core.demand_chunks() > 0);
    // The IB layer would destroy them; a teardown without that still frees the ICM
    // (their own buffers and doorbell pages are the caller's to free).
    let _abandoned = (kept, cq);
    core.teardown(&mut p).expect("teardown");
    assert_eq!(p.hca.resources(), Hca::new().resources());
    assert_eq!(
        p.memory.outstanding.len(),
        4,
        "only the dropped queues' memory"
    );
}

/// Every command of the creation, refused by the firmware, is a named error, and what
/// was made before it is undone: the device and the memory end as before.
#[test]
fn each_creation_command_refused_unwinds_with_nothing_leaked() {
    let status = CmdStatus::BadResourceState;
    for (op, skip) in [
        (opcode::SW2HW_MPT, 0),
        (opcode::SW2HW_CQ, 0),
        (opcode::MAP_ICM, 0),
        (opcode::MAP_ICM, 1),
        (opcode::RST2INIT_QP, 0),
        (opcode::INIT2RTR_QP, 0),
        (opcode::RTR2RTS_QP, 0),
    ] {
        let (mut p, mut core) = probed();
        let (eqn, uar) = (core.info().unwrap().async_eqn, core.driver_uar().unwrap());
        let pd = core.alloc_pd().unwrap();
        let before = p.hca.resources();
        let outstanding = p.memory.outstanding.len();
        let in_use = (core.mtt_entries_in_use(), core.objects_in_use());
        build_and_destroy(&mut p, &mut core, pd, eqn, uar).expect("builds unrefused");
        assert_eq!((core.mtt_entries_in_use(), core.objects_in_use()), in_use);
        assert_eq!(p.hca.resources(), before);

        p.inject = Some((op, skip, Injection::Status(status as u8)));
        let error = build_and_destroy(&mut p, &mut core, pd, eqn, uar).unwrap_err();
        let ProbeError::Command { error, .. } = error else {
            panic!("{op:#x}: {error:?}");
        };
        assert_eq!(
            error,
            CmdError::Failed { opcode: op, status },
            "{op:#x} #{skip}"
        );
        assert!(p.inject.is_none(), "{op:#x} #{skip} was reached");
        assert_eq!(p.hca.resources(), before, "{op:#x} #{skip}");
        assert_eq!(p.memory.outstanding.len(), outstanding, "{op:#x} #{skip}");
        assert_eq!((core.demand_chunks(), core.leaked_blocks()), (0, 0));
        assert_eq!(
            (core.mtt_entries_in_use(), core.objects_in_use()),
            in_use,
            "{op:#x} #{skip}: numbers and MTT entries given back"
        );
        // Only the refused command is a driver error (the model logs refusals).
        assert!(p.driver_errors().len() <= 1);
        core.teardown(&mut p).expect("teardown");
        assert_released(&mut p);
    }
}

#[test]
fn running_out_of_memory_while_creating_unwinds_with_nothing_leaked() {
    let mut n = 0;
    loop {
        let (mut p, mut core) = probed();
        let (eqn, uar) = (core.info().unwrap().async_eqn, core.driver_uar().unwrap());
        let pd = core.alloc_pd().unwrap();
        let before = p.hca.resources();
        let outstanding = p.memory.outstanding.len();
        p.memory.allocs_left = Some(n);
        let result = build_and_destroy(&mut p, &mut core, pd, eqn, uar);
        p.memory.allocs_left = None;
        assert_eq!(p.hca.resources(), before, "after {n} allocations");
        assert_eq!(p.memory.outstanding.len(), outstanding);
        assert_eq!(core.demand_chunks(), 0);
        core.teardown(&mut p).expect("teardown");
        assert_released(&mut p);
        match result {
            Ok(()) => break,
            Err(ProbeError::Memory { .. }) => n += 1,
            Err(other) => panic!("after {n} allocations: {other:?}"),
        }
    }
    assert!(n >= 5, "CQ buffer, doorbells, QP buffer, ICM chunks: {n}");
}

/// A CQ or MPT the device will not give back keeps its memory: leaked, counted, never
/// freed; the teardown still returns the device.
#[test]
fn objects_the_device_keeps_are_not_freed() {
    let (mut p, mut core) = probed();
    let (eqn, uar) = (core.info().unwrap().async_eqn, core.driver_uar().unwrap());
    let pd = core.alloc_pd().unwrap();
    let cq = core.create_cq(&mut p, 6, eqn, uar).expect("CQ");
    let mr = core.create_dma_mr(&mut p, pd, MrAccess::LOCAL).expect("MR");
    let outstanding = p.memory.outstanding.len();
    p.hca
        .refuse_next(opcode::HW2SW_CQ, CmdStatus::InternalError);
    assert!(matches!(
        core.destroy_cq(&mut p, cq),
        Err(ProbeError::Command {
            step: Step::Hw2SwCq,
            ..
        })
    ));
    assert_eq!(
        core.leaked_blocks(),
        2,
        "the CQE buffer and the doorbell page"
    );
    assert_eq!(p.memory.outstanding.len(), outstanding);
    p.hca
        .refuse_next(opcode::HW2SW_MPT, CmdStatus::InternalError);
    assert!(core.destroy_mr(&mut p, mr).is_err());
    assert_eq!(core.leaked_blocks(), 3);
    p.driver_errors();
    core.teardown(&mut p).expect("teardown");
    assert_eq!(p.hca.resources(), Hca::new().resources());
    assert_eq!(p.memory.outstanding.len(), 2, "exactly the leaked blocks");
}

/// UD QPs walk RST2INIT (Q_Key, port), INIT2INIT and INIT2RTR (Q_Key under its optional
/// parameter), RTR2RTS, RTS2RTS with a new Q_Key; the firmware's QUERY_QP shows the state; a transition out of order is
/// refused by the driver before the device sees it.
#[test]
fn a_ud_qp_walks_the_state_machine_and_back_to_reset() {
    let (mut p, mut core) = probed();
    let uar = core.driver_uar().unwrap();
    let pd = core.alloc_pd().unwrap();
    let before = p.hca.resources();
    let cq = core.create_cq(&mut p, 6, 4, uar).expect("CQ");
    let mut config = rc_config(pd, cq.cqn);
    config.transport = QpTransport::Ud;
    let mut qp = core.create_qp(&mut p, config).expect("UD QP");
    let path = QpPath {
        port: 2,
        qkey: 0x1111_1111,
        ..rc_path(0)
    };
    assert_eq!(
        core.qp_to_rtr(&mut p, &mut qp, &path, uar),
        Err(ProbeError::QpState { qpn: qp.qpn })
    );
    let query = |p: &mut Platform, core: &mut Mlx4Core<Block>, qpn: u32| {
        let mut out = [0u8; 8 + 0xf8];
        let outbox = BASE + SIZE as u64 - 0x1000;
        core.command(
            p,
            Step::QpMemory,
            Command::new(opcode::QUERY_QP)
                .in_modifier(qpn)
                .out_param(outbox),
        )
        .expect("QUERY_QP");
        Dma::read(&p.memory, outbox, &mut out).unwrap();
        out
    };
    core.qp_to_init(&mut p, &mut qp, &path, uar)
        .expect("RST2INIT");
    let ctx = query(&mut p, &mut core, qp.qpn);
    assert_eq!(ctx[8] >> 4, 1, "INIT");
    let qkey = u32::from_be_bytes(ctx[8 + qp_context::QKEY..][..4].try_into().unwrap());
    assert_eq!(qkey, 0x1111_1111, "the Q_Key from RST2INIT on");
    assert_eq!(ctx[8 + 1], qp_context::ST_UD, "transport");
    assert_eq!(
        ctx[8 + qp_context::PRI_PATH + qp_context::PATH_SCHED_QUEUE] & 0x40,
        0x40,
        "port 2"
    );
    // INIT2INIT (the RDMA CM's step before RTR) carries a new Q_Key.
    let path = QpPath {
        qkey: 0x2222_2222,
        ..path
    };
    core.qp_init_to_init(&mut p, &mut qp, &path, uar)
        .expect("INIT2INIT");
    let ctx = query(&mut p, &mut core, qp.qpn);
    assert_eq!(ctx[8] >> 4, 1, "still INIT");
    let qkey = u32::from_be_bytes(ctx[8 + qp_context::QKEY..][..4].try_into().unwrap());
    assert_eq!(qkey, 0x2222_2222, "INIT2INIT's Q_Key");
    assert_eq!(
        core.qp_set_qkey(&mut p, &mut qp, 2, 1, uar),
        Err(ProbeError::QpState { qpn: qp.qpn }),
        "RTS2RTS from INIT"
    );
    core.qp_to_rtr(&mut p, &mut qp, &path, uar)
        .expect("INIT2RTR");
    core.qp_to_rts(&mut p, &mut qp, 2, 0, uar).expect("RTR2RTS");
    let ctx = query(&mut p, &mut core, qp.qpn);
    assert_eq!(ctx[8] >> 4, 3, "RTS");
    let qkey = u32::from_be_bytes(ctx[8 + qp_context::QKEY..][..4].try_into().unwrap());
    assert_eq!(qkey, 0x2222_2222);
    // RTS2RTS with the Q_Key alone (IPoIB's, once it knows the broadcast group's).
    core.qp_set_qkey(&mut p, &mut qp, 2, 0x8000_0000_u32 | 0x0b1b, uar)
        .expect("RTS2RTS");
    let ctx = query(&mut p, &mut core, qp.qpn);
    assert_eq!(ctx[8] >> 4, 3, "still RTS");
    let qkey = u32::from_be_bytes(ctx[8 + qp_context::QKEY..][..4].try_into().unwrap());
    assert_eq!(qkey, 0x8000_0b1b, "RTS2RTS's Q_Key");
    // The driver's own QUERY_QP reads the same, parsed.
    let q = core.query_qp(&mut p, &qp).expect("QUERY_QP");
    assert_eq!(
        (q.state, q.qkey, q.port, q.pkey_index),
        (3, 0x8000_0b1b, 2, 0)
    );
    core.qp_to_reset(&mut p, &mut qp).expect("2RST");
    assert_eq!(query(&mut p, &mut core, qp.qpn)[8] >> 4, 0, "RESET");
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    core.destroy_qp(&mut p, qp).expect("destroy");
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    assert_eq!(p.hca.resources(), before);
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// MAD_IFC: Get(PortInfo) through the firmware's SMA, parsed through the typed view;
/// CONF_SPECIAL_QP names the special QPs above the reserved ones.
#[test]
fn mad_ifc_answers_port_info_and_nonsense_is_refused_by_name() {
    let (mut p, mut core) = probed();
    let base = core.conf_special_qps(&mut p).expect("CONF_SPECIAL_QP");
    assert_eq!(base, 64);
    for port in 1..=2u8 {
        let info = core.query_port_info(&mut p, port).expect("PortInfo");
        assert_eq!(info.capability_mask, IB_CAP_MASK, "port {port}");
        assert!((1..=5).contains(&info.state));
        assert_eq!(info.lmc, 0);
    }
    // A port out of range is the firmware's BadIndex.
    assert!(matches!(
        core.query_port_info(&mut p, 3),
        Err(ProbeError::Command {
            step: Step::MadIfc(3),
            error: CmdError::Failed {
                status: CmdStatus::BadIndex,
                ..
            }
        })
    ));
    p.driver_errors();
    // Answers the view refuses, each by the field's name.
    for (offset, value, field) in [
        (3u64, 0x01u8, "MAD_METHOD"),
        (1, 0x81, "MAD_MGMT_CLASS"),
        (17, 0x11, "MAD_ATTR_ID"),
        (5, 0x0c, "MAD_STATUS"),
        (64 + 32, 0x0f, "PORT_INFO_PORT_STATE"),
        (64 + 33, 0x00, "PORT_INFO_PHYS_STATE"),
    ] {
        p.inject = Some((
            opcode::MAD_IFC,
            0,
            Injection::CorruptOutput { offset, value },
        ));
        match core.query_port_info(&mut p, 1) {
            Err(ProbeError::InvalidCap(InvalidCap { field: f, .. })) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// A completion EQE naming a CQ the driver no longer has (here: destroyed between the
/// event and the walk) is refused and counted, never dispatched.
#[test]
fn a_completion_for_an_unknown_cq_is_refused_and_counted() {
    let (mut p, mut core) = probed();
    let uar = core.driver_uar().unwrap();
    let eqn = core.comp_eqn(0).expect("completion EQ 0");
    let cq = core.create_cq(&mut p, 6, eqn, uar).expect("CQ");
    p.hca.take_events();
    // An arm request naming consumer index 1 while the device produced none: the model
    // raises the event at once (completions it takes as not yet consumed).
    let word0 = 1u32 << 28 | 2 << 24 | cq.cqn;
    let mut db = [0u8; 8];
    db[..4].copy_from_slice(&word0.to_be_bytes());
    db[4..].copy_from_slice(&1u32.to_be_bytes());
    p.hca.bar2_write(
        &p.memory,
        (u64::from(uar) << 12) + UAR_CQ_DOORBELL as u64,
        &db,
    );
    assert_eq!(interrupts(&p.hca.take_events()), vec![1]);
    let cqn = cq.cqn;
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    let mut seen = Vec::new();
    assert_eq!(core.poll_completions(&mut p, 0, |e| seen.push(e)), Ok(0));
    assert_eq!(seen, []);
    assert_eq!(core.refused_completions(), 1, "CQ {cqn:#x} refused");
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// A function reset that cannot proceed fails the probe by name and gives the
/// ownership back: the hardware semaphore held past its 10 s, the function never
/// answering config reads again, the config space not saved.
#[test]
fn a_reset_that_cannot_complete_fails_the_probe_cleanly() {
    // The semaphore of the reset page held by someone else (the firmware's flash update).
    let mut p = Platform::new();
    p.hca.hold_reset_semaphore(true);
    let mut core = Mlx4Core::new();
    let start = p.clock_us;
    assert_eq!(
        core.probe(&mut p, &config()),
        Err(ProbeError::Reset(ResetError::SemaphoreBusy))
    );
    assert!(p.clock_us - start >= SEMAPHORE_TIMEOUT_US);
    assert_eq!(p.resets, 0, "never reset under a held semaphore");
    assert_eq!(
        p.writes.last(),
        Some(&(OWNER_BASE, 0)),
        "ownership given back"
    );
    assert!(p.posted.is_empty());

    // The function does not come back.
    let mut p = Platform::new();
    p.away_after_reset = usize::MAX;
    let mut core = Mlx4Core::new();
    assert_eq!(
        core.probe(&mut p, &config()),
        Err(ProbeError::Reset(ResetError::NoComeBack))
    );
    assert_eq!((p.resets, p.configs_restored), (1, 0));
    assert!(p.posted.is_empty());

    // No config space to restore later: no reset at all.
    let mut p = Platform::new();
    p.refuse_config_save = true;
    let mut core = Mlx4Core::new();
    assert_eq!(
        core.probe(&mut p, &config()),
        Err(ProbeError::Reset(ResetError::SaveConfig))
    );
    assert_eq!(p.resets, 0);
}

/// A device a driver left initialized (it never tore down: a crash, a kexec) probes
/// again: the reset takes it back to a stopped firmware first.
#[test]
fn a_device_left_initialized_probes_after_the_reset() {
    let mut p = Platform::new();
    // The first driver is gone without a teardown (its core is never used again); its
    // memory stays where it was.
    let mut _abandoned = Mlx4Core::new();
    _abandoned.probe(&mut p, &config()).expect("first probe");
    assert_eq!(p.hca.resources().firmware, FwState::Initialized);
    p.hca.take_events();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config())
        .expect("a probe after the reset");
    assert_eq!(p.resets, 2);
    assert_eq!(p.hca.resources().firmware, FwState::Initialized);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    core.teardown(&mut p).expect("teardown");
}

/// The device reports a driver that disables the function (clears bus mastering, as a
/// PCI remove ends) while the firmware still holds host memory; after a teardown it is
/// quiet.
#[test]
fn letting_go_of_a_running_hca_is_reported_by_the_device() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    p.hca.take_events();
    p.hca.set_bus_master(false);
    let errors = p.driver_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("bus mastering turned off while the device holds host memory"),
        "{errors:?}"
    );
    p.hca.set_bus_master(true);
    core.teardown(&mut p).expect("teardown");
    p.hca.take_events();
    p.hca.set_bus_master(false);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
}

/// A catastrophic error shows in the error buffer; recovery resets the function, frees everything without a
/// command reaching the stopped firmware, and the core probes again from scratch.
#[test]
fn a_catastrophic_error_is_seen_and_a_reset_recovers_the_device() {
    use hw_mlx4::bringup::probe::CatastrophicError;

    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    assert_eq!(core.catastrophic_error(&mut p), Ok(None), "healthy");
    p.hca.raise_catastrophic_error(0xdead_beef);
    assert_eq!(
        core.catastrophic_error(&mut p),
        Ok(Some(CatastrophicError {
            word: 0,
            value: 0xdead_beef
        }))
    );
    p.hca.take_events();

    let posted = p.posted.len();
    core.recover_from_error(&mut p).expect("the reset recovers");
    assert_eq!(
        p.posted.len(),
        posted,
        "no command reached the stopped firmware"
    );
    assert_eq!(p.resets, 2, "the probe's reset and the recovery's");
    assert!(core.info().is_none());
    assert_eq!(core.pages_given(), (0, 0, 0));
    assert!(p.memory.outstanding.is_empty(), "everything freed");
    assert_eq!(
        p.hca.resources(),
        Hca::new().resources(),
        "the device forgot it all"
    );

    core.probe(&mut p, &config())
        .expect("a probe after the recovery");
    assert_eq!(core.catastrophic_error(&mut p), Ok(None));
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// A catastrophic error while a command waits for its EQE ends the wait at once (the
/// stopped firmware would leave it, and its caller, the whole 60 s), as an internal
/// error no caller reports; no command is posted again until the reset, and after the
/// recovery the device runs commands again with nothing leaked.
#[test]
fn a_catastrophic_error_ends_a_waiting_command_at_once() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    p.inject = Some((opcode::NOP, 0, Injection::Catastrophe(0xca7a5)));
    let (posted, start) = (p.posted.len(), p.clock_us);
    let nop = Command::new(opcode::NOP).in_modifier(0x1f);
    let error = core
        .command(&mut p, Step::MadIfc(1), nop)
        .expect_err("the firmware stopped");
    assert_eq!(
        error,
        ProbeError::Command {
            step: Step::MadIfc(1),
            error: CmdError::InternalError {
                opcode: opcode::NOP
            }
        }
    );
    assert!(error.is_catastrophic());
    let waited = p.clock_us - start;
    assert!(
        waited <= 20_000,
        "waited {waited} us, not the command's 60 s"
    );
    assert_eq!(p.posted.len(), posted + 1);

    let error = core
        .command(&mut p, Step::MadIfc(1), nop)
        .expect_err("refused before its post");
    assert!(error.is_catastrophic(), "{error:?}");
    assert_eq!(
        p.posted.len(),
        posted + 1,
        "not posted to the stopped firmware"
    );
    p.hca.take_events();

    core.recover_from_error(&mut p).expect("the reset recovers");
    core.probe(&mut p, &config())
        .expect("a probe after the recovery");
    core.command(&mut p, Step::MadIfc(1), nop)
        .expect("commands run again");
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// A recovery whose reset fails keeps what the device may still use: the interface is
/// wedged, and the teardown leaks the memory rather than free it under the device.
#[test]
fn a_recovery_whose_reset_fails_leaks_rather_than_frees() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    p.hca.raise_catastrophic_error(1);
    p.hca.hold_reset_semaphore(true);
    assert_eq!(
        core.recover_from_error(&mut p),
        Err(ResetError::SemaphoreBusy)
    );
    assert!(core.commands().is_wedged());
    let held = p.memory.outstanding.len();
    let error = core.teardown(&mut p).expect_err("nothing can be unmapped");
    assert!(error.leaked_chunks > 0);
    assert_eq!(
        p.memory.outstanding.len(),
        held,
        "nothing freed under the device"
    );
}

/// A completion EQ lent to its vector's interrupt handler: the core still names it (a CQ
/// is created on it by number), does not walk it, takes back only that EQ at that index,
/// and tears down cleanly once it is back; one never given back is taken from the
/// device (HW2SW_EQ) and its pages left to the handler.
#[test]
fn a_completion_eq_is_lent_to_its_interrupt_handler_and_given_back() {
    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe");
    let eqn = core.comp_eqn(0).expect("completion EQ 0");
    let eq = core.lend_comp_eq(0).expect("lent");
    assert_eq!(eq.eqn, eqn);
    assert!(core.lend_comp_eq(0).is_none(), "lent once");
    assert_eq!(core.comp_eqn(0), Some(eqn), "still named while lent");
    let mut seen = 0;
    assert_eq!(
        core.poll_completions(&mut p, 0, |_| seen += 1),
        Err(ProbeError::EqAccess),
        "the core does not walk a lent EQ"
    );
    let eq = core.return_comp_eq(1, eq).expect_err("not lent as 1");
    core.return_comp_eq(0, eq).expect("given back");
    assert_eq!(core.poll_completions(&mut p, 0, |_| seen += 1), Ok(0));
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);

    // Never given back: the device lets go of it all the same, its pages stay lent.
    let mut core = Mlx4Core::new();
    core.probe(&mut p, &config()).expect("probe again");
    let eq = core.lend_comp_eq(1).expect("lent");
    core.teardown(&mut p).expect("teardown with an EQ lent");
    assert_eq!(p.hca.resources().eqs, 0, "HW2SW_EQ reached the lent EQ too");
    assert_eq!(p.memory.outstanding.len(), eq.pages().count());
    let mut eq = eq;
    while let Some(page) = eq.pop_page() {
        p.free(page.block);
    }
    assert_released(&mut p);
}

/// A special QP's queues: 64 send WQEs of 256 bytes (room for the MLX segment, a GRH'd
/// header, a MAD's gather entry and the ICRC's segment), 64 receives of one entry.
fn special_config(pd: u32, cqn: u32) -> QpConfig {
    QpConfig {
        transport: QpTransport::Mlx,
        log_sq_entries: 6,
        log_sq_stride: 8,
        log_rq_entries: 6,
        log_rq_stride: 4,
        pd,
        send_cqn: cqn,
        recv_cqn: cqn,
    }
}

/// The fast path's view of a special QP: one gather entry, the MLX transport.
fn fast_special_qp(p: &Platform, qp: &QueuePair<Block>) -> QueuePairState<fast::DmaPlatform> {
    fast_qp_of(p, qp, QpType::Mlx, 1)
}

/// QP0 of each port, created through the firmware at the numbers CONF_SPECIAL_QP gave
/// them; the fast path's MLX writer sends a directed-route SMP (the permissive DLID, on
/// VL15) from port 1's QP0, the device carries it across the cable to port 2's QP0, which
/// receives it behind the 40-byte GRH slot with the completion the MAD layer answers by:
/// source QP 0, the permissive SLID, P_Key index 0. What the model parses is what
/// `mlx4_ib`'s `build_mlx_header` writes, so the two writers agree.
#[test]
fn a_directed_route_smp_crosses_the_cable_between_the_ports_qp0s() {
    use hw_mlx4::fastpath::send::MlxWr;
    use hw_mlx4::wire::ud::{MlxSeg, UdHeader, PERMISSIVE_LID, UD_HEADER_MAX};

    let (mut p, mut core) = probed();
    let uar = core.driver_uar().unwrap();
    let before = p.hca.resources();
    let outstanding = p.memory.outstanding.len();
    let pd = core.alloc_pd().unwrap();
    let dma_mr = core
        .create_dma_mr(&mut p, pd, MrAccess::LOCAL)
        .expect("DMA MR");
    let base = core.conf_special_qps(&mut p).expect("CONF_SPECIAL_QP");
    let eqn = core.comp_eqn(0).unwrap();
    let cq = core.create_cq(&mut p, 7, eqn, uar).expect("CQ");
    let mut qp0 = [1u8, 2].map(|port| {
        core.create_special_qp(&mut p, port, false, special_config(pd, cq.cqn))
            .expect("QP0")
    });
    assert_eq!([qp0[0].qpn, qp0[1].qpn], [base, base + 1]);
    assert_eq!(core.special_qpn(2, true), base + 3, "QP1s after the QP0s");
    assert!(core
        .create_special_qp(&mut p, 3, false, special_config(pd, cq.cqn))
        .is_err());
    for (qp, port) in qp0.iter_mut().zip([1u8, 2]) {
        let path = QpPath {
            port,
            pkey_index: 0,
            dlid: 0,
            remote_qpn: 0,
            rq_psn: 0,
            qkey: 0,
            remote_access: 0,
        };
        core.qp_to_init(&mut p, qp, &path, uar).expect("INIT");
        core.qp_to_rtr(&mut p, qp, &path, uar).expect("RTR");
        core.qp_to_rts(&mut p, qp, port, 0, uar).expect("RTS");
    }
    assert_eq!(p.driver_errors(), Vec::<String>::new());

    let host_uar = HostUar::new();
    let cq_doorbell = cq.doorbell.as_ref().unwrap().bus_address;
    let record = |offset| fast::Record {
        bytes: p.memory.bytes.clone(),
        address: cq_doorbell + offset,
    };
    let mut fast_cq = FastCq::<fast::DmaPlatform>::new(
        cq.cqn,
        fast::Ring {
            bytes: p.memory.bytes.clone(),
            address: cq.buffer.as_ref().unwrap().bus_address,
            log_entries: cq.log_entries,
            shift: 5,
        },
        CqDoorbells {
            set_ci: record(0),
            arm: record(4),
        },
    )
    .expect("fast CQ");
    let mut sender = fast_special_qp(&p, &qp0[0]);
    let mut receiver = fast_special_qp(&p, &qp0[1]);

    // A Get(NodeInfo) SMP, directed route, one hop: a MAD of 256 bytes.
    let page = p.alloc(0).unwrap();
    let mut mad = [0u8; 256];
    mad[..4].copy_from_slice(&[1, 0x81, 1, 1]);
    mad[0x10..0x12].copy_from_slice(&0x0011u16.to_be_bytes());
    mad[0x3f] = 0xa5;
    p.memory.write(page.address, &mad).unwrap();
    let receive_at = page.address + 0x400;
    {
        let (_, mut rq, _) = receiver.split(&host_uar);
        let sge = [Sge {
            addr: receive_at,
            length: 40 + 256,
            lkey: dma_mr.key,
        }];
        rq.post(&[RecvWr {
            wr_id: 0x2222,
            sges: &sge,
        }])
        .expect("post receive");
    }
    let header = UdHeader {
        vl: 15,
        sl: 0,
        dlid: PERMISSIVE_LID,
        slid: PERMISSIVE_LID,
        grh: None,
        solicited: false,
        pkey: 0xffff,
        dest_qp: 0,
        psn: 7,
        qkey: 0,
        src_qp: 0,
        payload_len: 256,
    };
    let mut packed = [0u8; UD_HEADER_MAX];
    let len = header.pack(&mut packed);
    assert_eq!(len, 28, "LRH, BTH, DETH");
    assert_eq!(packed[1] & 3, 2, "LNH: a BTH follows");
    assert_eq!(
        u16::from_be_bytes([packed[4], packed[5]]),
        (28 + 256 + 4) / 4,
        "the packet's length in words, to the ICRC"
    );
    let gather = [Sge {
        addr: page.address,
        length: 256,
        lkey: dma_mr.key,
    }];
    {
        let (mut sq, _, _) = sender.split(&host_uar);
        let wr = MlxWr {
            wr_id: 0x1111,
            signaled: true,
            header: &packed[..len],
            flags: MlxSeg::VL15 | MlxSeg::SLR,
            rlid: PERMISSIVE_LID,
            gather: &gather,
        };
        sq.post_mlx(&wr).expect("post MLX");
        // An RC WR on a special QP is refused by the ordinary writer.
        let sge = [Sge {
            addr: page.address,
            length: 8,
            lkey: dma_mr.key,
        }];
        assert!(sq
            .post(&[SendWr::new(
                1,
                SendOp::Send,
                Payload::Gather(&sge),
                SendFlags::SIGNALED
            )])
            .is_err());
    }
    ring_doorbells(&mut p, &host_uar, uar);
    assert_eq!(p.driver_errors(), Vec::<String>::new());

    let (_, _, cs) = sender.split(&host_uar);
    let (_, _, cr) = receiver.split(&host_uar);
    let mut out = [Completion::EMPTY; 4];
    let polled = fast_cq.poll(&[cs, cr], &mut out).expect("poll");
    assert_eq!(polled, 2);
    let send = out.iter().find(|c| c.wr_id == 0x1111).expect("send CQE");
    assert_eq!(
        (send.status, send.opcode, send.qpn),
        (WcStatus::Success, WcOpcode::Send, base)
    );
    let recv = out.iter().find(|c| c.wr_id == 0x2222).expect("receive CQE");
    assert_eq!(
        (recv.status, recv.opcode, recv.qpn, recv.byte_len),
        (WcStatus::Success, WcOpcode::Recv, base + 1, 40 + 256)
    );
    assert_eq!(
        (recv.src_qp, recv.slid, recv.pkey_index, recv.dlid_path_bits),
        (0, PERMISSIVE_LID, 0, 0)
    );
    let mut received = [0u8; 256];
    Dma::read(&p.memory, receive_at + 40, &mut received).unwrap();
    assert_eq!(received, mad, "the MAD crossed, behind the GRH slot");

    drop(fast_cq);
    ring_doorbells(&mut p, &host_uar, uar);
    for mut qp in qp0 {
        core.qp_to_error(&mut p, &mut qp).expect("2ERR");
        core.destroy_qp(&mut p, qp).expect("destroy QP0");
    }
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    core.destroy_mr(&mut p, dma_mr).expect("destroy DMA MR");
    p.free(page);
    assert!(core.free_pd(pd));
    assert_eq!(p.hca.resources(), before);
    assert_eq!(p.memory.outstanding.len(), outstanding);
    assert_eq!(core.leaked_blocks(), 0);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// A CQ resized while completions wait in it (`mlx4_ib_resize_cq` on a kernel CQ):
/// MODIFY_CQ gives the device a larger buffer, the device leaves a RESIZE CQE in the old
/// one, the fast path moves the CQEs waiting before it into the new buffer one index
/// later, and the next completions arrive in the new buffer; every completion is
/// polled once, in order, and the old buffer goes back.
#[test]
fn a_cq_resized_with_completions_waiting_loses_none() {
    let (mut p, mut core) = probed();
    let uar = core.driver_uar().unwrap();
    let outstanding = p.memory.outstanding.len();
    let pd = core.alloc_pd().unwrap();
    let dma_mr = core
        .create_dma_mr(&mut p, pd, MrAccess::ALL)
        .expect("DMA MR");
    let eqn = core.comp_eqn(0).unwrap();
    let mut cq = core.create_cq(&mut p, 4, eqn, uar).expect("CQ of 16");
    let mut a = core.create_qp(&mut p, rc_config(pd, cq.cqn)).expect("QP a");
    let mut b = core.create_qp(&mut p, rc_config(pd, cq.cqn)).expect("QP b");
    connect(&mut p, &mut core, &mut a, b.qpn, uar).expect("a");
    connect(&mut p, &mut core, &mut b, a.qpn, uar).expect("b");
    let host_uar = HostUar::new();
    let cq_doorbell = cq.doorbell.as_ref().unwrap().bus_address;
    let bytes = p.memory.bytes.clone();
    let ring = |address, log_entries| fast::Ring {
        bytes: bytes.clone(),
        address,
        log_entries,
        shift: 5,
    };
    let record = |offset| fast::Record {
        bytes: bytes.clone(),
        address: cq_doorbell + offset,
    };
    let mut fast_cq = FastCq::<fast::DmaPlatform>::new(
        cq.cqn,
        ring(cq.buffer.as_ref().unwrap().bus_address, 4),
        CqDoorbells {
            set_ci: record(0),
            arm: record(4),
        },
    )
    .expect("fast CQ");
    let mut fa = fast_qp(&p, &a);
    let page = p.alloc(0).unwrap();
    let send_signaled = |fa: &mut QueuePairState<fast::DmaPlatform>, id: u64| {
        let (mut sq, _, _) = fa.split(&host_uar);
        let sge = [Sge {
            addr: page.address,
            length: 8,
            lkey: dma_mr.key,
        }];
        sq.post(&[SendWr::new(
            id,
            SendOp::RdmaWrite(hw_mlx4::wr::Remote {
                addr: page.address + 0x800,
                rkey: dma_mr.key,
            }),
            Payload::Gather(&sge),
            SendFlags::SIGNALED,
        )])
        .expect("post");
    };
    let poll_ids = |fast_cq: &mut FastCq<fast::DmaPlatform>,
                    fa: &mut QueuePairState<fast::DmaPlatform>| {
        let (_, _, ca) = fa.split(&host_uar);
        let mut out = [Completion::EMPTY; 16];
        let n = fast_cq.poll(&[ca], &mut out).expect("poll");
        out[..n]
            .iter()
            .map(|c| (c.wr_id, c.status))
            .collect::<Vec<_>>()
    };
    // Five completions wait in the CQ of 16.
    for id in 0..5 {
        send_signaled(&mut fa, id);
    }
    ring_doorbells(&mut p, &host_uar, uar);
    // All five are polled; three more wait when the CQ grows to 64.
    let first = poll_ids(&mut fast_cq, &mut fa);
    assert_eq!(
        first,
        (0..5).map(|id| (id, WcStatus::Success)).collect::<Vec<_>>()
    );
    for id in 5..8 {
        send_signaled(&mut fa, id);
    }
    ring_doorbells(&mut p, &host_uar, uar);
    let old = core.resize_cq(&mut p, &mut cq, 6).expect("MODIFY_CQ");
    assert_eq!(cq.log_entries, 6);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    // A poll before the move takes one; two wait in the old buffer, before the RESIZE
    // CQE.
    let mut out = [Completion::EMPTY; 1];
    let (_, _, ca) = fa.split(&host_uar);
    assert_eq!(fast_cq.poll(&[ca], &mut out).expect("poll"), 1);
    assert_eq!((out[0].wr_id, out[0].status), (5, WcStatus::Success));
    // Two more after the resize, in the new buffer.
    for id in 8..10 {
        send_signaled(&mut fa, id);
    }
    ring_doorbells(&mut p, &host_uar, uar);
    let old_ring = fast_cq
        .resize(ring(cq.buffer.as_ref().unwrap().bus_address, 6))
        .unwrap_or_else(|_| panic!("no RESIZE CQE"));
    drop(old_ring);
    core.free_resized_cq(&mut p, old);
    assert_eq!(fast_cq.entries(), 64);
    let rest = poll_ids(&mut fast_cq, &mut fa);
    assert_eq!(
        rest,
        (6..10)
            .map(|id| (id, WcStatus::Success))
            .collect::<Vec<_>>(),
        "the two moved, then the two the device wrote into the new buffer"
    );
    // And on, across the new buffer's laps.
    for round in 0..3u64 {
        for id in 0..30 {
            send_signaled(&mut fa, 100 * (round + 1) + id);
        }
        ring_doorbells(&mut p, &host_uar, uar);
        let ids = poll_ids(&mut fast_cq, &mut fa);
        let more = poll_ids(&mut fast_cq, &mut fa);
        assert_eq!(ids.len() + more.len(), 30, "round {round}");
    }
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    drop(fast_cq);
    core.qp_to_error(&mut p, &mut a).expect("2ERR");
    core.destroy_qp(&mut p, a).expect("destroy a");
    core.destroy_qp(&mut p, b).expect("destroy b");
    core.destroy_cq(&mut p, cq).expect("destroy CQ");
    core.destroy_mr(&mut p, dma_mr).expect("destroy MR");
    p.free(page);
    assert!(core.free_pd(pd));
    assert_eq!(p.memory.outstanding.len(), outstanding);
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}

/// Multicast attach and detach keep the hash chains the device walks: with 8 buckets
/// and 8 overflow entries, groups are attached until the overflow half runs out, each
/// found by the device from its bucket with its members, none lost as others come and
/// go, the chain closed over every entry that goes, and every overflow entry back at
/// the end.
#[test]
fn multicast_groups_chain_from_their_buckets_and_the_chain_closes_over_those_that_go() {
    use hw_mlx4::bringup::mcg::McgError;

    let mut p = Platform::new();
    let mut core = Mlx4Core::new();
    let config = ProbeConfig {
        profile: Profile {
            num_mcg: 16,
            ..Profile::DEFAULT
        },
        ..config()
    };
    core.probe(&mut p, &config).expect("probe");
    let gid = |n: u8| {
        [
            0xff, 0x12, 0x40, 0x1b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, n,
        ]
    };
    let (qp_a, qp_b) = (0x240u32, 0x241u32);
    // Attach until the overflow half is full: more groups than buckets, so chains.
    let mut groups = Vec::new();
    for n in 0..32u8 {
        match core.attach_multicast(&mut p, &gid(n), qp_a, false) {
            Ok(()) => groups.push(n),
            Err(ProbeError::Multicast(McgError::TableFull)) => break,
            Err(e) => panic!("group {n}: {e:?}"),
        }
    }
    assert!(groups.len() > 8, "{} groups in 8 buckets", groups.len());
    assert_eq!(core.multicast_groups(), groups.len() as u32);
    assert_eq!(
        core.multicast_entries_in_use(),
        8,
        "the overflow half used up"
    );
    // A second member of each (with the loopback block bit), and the first again:
    // nothing changes for it.
    for &n in &groups {
        core.attach_multicast(&mut p, &gid(n), qp_b, true)
            .expect("second member");
        core.attach_multicast(&mut p, &gid(n), qp_a, false)
            .expect("again");
    }
    let check = |p: &Platform, present: &[(u8, Vec<u32>)]| {
        for (n, members) in present {
            assert_eq!(&p.hca.multicast_members(&gid(*n)), members, "group {n}");
        }
    };
    let mut present: Vec<(u8, Vec<u32>)> = groups.iter().map(|&n| (n, vec![qp_a, qp_b])).collect();
    check(&p, &present);
    // Refusals are errors, and change nothing.
    assert_eq!(
        core.detach_multicast(&mut p, &gid(200), qp_a),
        Err(ProbeError::Multicast(McgError::NoGroup))
    );
    assert_eq!(
        core.detach_multicast(&mut p, &gid(groups[0]), 0x999),
        Err(ProbeError::Multicast(McgError::NotMember { qpn: 0x999 }))
    );
    check(&p, &present);
    // A's leaving moves B to the first slot; B's leaving removes the group: from every
    // place in the chains, bucket heads and links alike, in an order that mixes them.
    let order: Vec<u8> = groups
        .iter()
        .rev()
        .step_by(2)
        .chain(groups.iter().step_by(2))
        .copied()
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for n in order.into_iter().filter(|n| seen.insert(*n)) {
        core.detach_multicast(&mut p, &gid(n), qp_a)
            .expect("detach A");
        let entry = present.iter_mut().find(|(g, _)| *g == n).unwrap();
        entry.1 = vec![qp_b];
        check(&p, &present);
        core.detach_multicast(&mut p, &gid(n), qp_b)
            .expect("detach B");
        present.retain(|(g, _)| *g != n);
        assert!(
            p.hca.multicast_members(&gid(n)).is_empty(),
            "group {n} gone"
        );
        check(&p, &present);
    }
    assert_eq!(
        core.multicast_entries_in_use(),
        0,
        "every overflow entry back"
    );
    // A group takes every member slot the device allows (QUERY_DEV_CAP's 2^7), no more.
    for qpn in 0..128 {
        core.attach_multicast(&mut p, &gid(1), 0x300 + qpn, false)
            .expect("member");
    }
    assert!(matches!(
        core.attach_multicast(&mut p, &gid(1), 0x400, false),
        Err(ProbeError::Multicast(McgError::GroupFull { .. }))
    ));
    assert_eq!(p.hca.multicast_members(&gid(1)).len(), 128);
    assert_eq!(p.driver_errors(), Vec::<String>::new());
    core.teardown(&mut p).expect("teardown");
    assert_released(&mut p);
}
