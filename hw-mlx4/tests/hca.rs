//! The emulated ConnectX-3's firmware, driven through its registers as a driver does,
//! without QEMU: the bring-up a driver does, and the mistakes a device must refuse with a
//! status and a reported error, never a panic.

use std::cell::RefCell;

use hw_mlx4::model::hca::{layout, Dma, DmaFault, Hca, HcaEvent};
use hw_mlx4::wire::cmd::{
    hcr, opcode, CmdStatus, HCR_BASE, OWNER_BASE, RESET_BASE, RESET_OFFSET, RESET_VALUE,
};
use hw_mlx4::wire::fw::{init_hca, query_dev_cap};

/// Host memory at bus addresses `[BASE, BASE + SIZE)`.
struct Memory(RefCell<Vec<u8>>);

const BASE: u64 = 0x1000_0000;
const SIZE: usize = 16 << 20;
/// Where the test driver keeps its mailboxes.
const INBOX: u64 = BASE;
const OUTBOX: u64 = BASE + 0x1000;

impl Memory {
    fn new() -> Self {
        Self(RefCell::new(vec![0; SIZE]))
    }

    fn range(address: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(address.checked_sub(BASE)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= SIZE).then_some(start..end)
    }

    fn put(&self, address: u64, data: &[u8]) {
        let r = Self::range(address, data.len()).expect("inside the test memory");
        self.0.borrow_mut()[r].copy_from_slice(data);
    }

    fn get(&self, address: u64, len: usize) -> Vec<u8> {
        let r = Self::range(address, len).expect("inside the test memory");
        self.0.borrow()[r].to_vec()
    }
}

impl Dma for Memory {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let r = Self::range(address, buf.len()).ok_or(DmaFault {
            address,
            len: buf.len(),
        })?;
        buf.copy_from_slice(&self.0.borrow()[r]);
        Ok(())
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        let r = Self::range(address, data.len()).ok_or(DmaFault {
            address,
            len: data.len(),
        })?;
        self.0.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

/// A driver's side of the HCR, as `mlx4_cmd_post` writes it.
struct Driver {
    hca: Hca,
    memory: Memory,
    toggle: bool,
}

impl Driver {
    fn new() -> Self {
        let mut hca = Hca::new();
        hca.set_bus_master(true);
        Self {
            hca,
            memory: Memory::new(),
            toggle: true,
        }
    }

    fn write_word(&mut self, offset: usize, value: u32) {
        self.hca
            .bar0_write(&self.memory, HCR_BASE + offset as u64, &value.to_be_bytes());
    }

    fn read_word(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.hca.bar0_read(HCR_BASE + offset as u64, &mut b);
        u32::from_be_bytes(b)
    }

    /// Posts a command and returns its status byte and immediate out_param.
    fn command(
        &mut self,
        op: u16,
        op_mod: u8,
        in_mod: u32,
        in_param: u64,
        out_param: u64,
        event: bool,
    ) -> (u8, u64) {
        let status = self.read_word(hcr::STATUS);
        assert_eq!(status & hcr::GO_BIT, 0, "the HCR is idle before a post");
        self.write_word(hcr::IN_PARAM, (in_param >> 32) as u32);
        self.write_word(hcr::IN_PARAM + 4, in_param as u32);
        self.write_word(hcr::IN_MODIFIER, in_mod);
        self.write_word(hcr::OUT_PARAM, (out_param >> 32) as u32);
        self.write_word(hcr::OUT_PARAM + 4, out_param as u32);
        self.write_word(hcr::TOKEN, 0x1234 << 16);
        let word = hcr::GO_BIT
            | if self.toggle { hcr::TOGGLE_BIT } else { 0 }
            | if event { hcr::EVENT_BIT } else { 0 }
            | (u32::from(op_mod) << hcr::OPMOD_SHIFT)
            | u32::from(op);
        self.write_word(hcr::STATUS, word);
        self.toggle = !self.toggle;
        let status = self.read_word(hcr::STATUS);
        assert_eq!(status & hcr::GO_BIT, 0, "the device clears go when done");
        assert_eq!(
            status & hcr::TOGGLE_BIT != 0,
            !self.toggle,
            "the toggle bit stays as the driver wrote it"
        );
        let out = (u64::from(self.read_word(hcr::OUT_PARAM)) << 32)
            | u64::from(self.read_word(hcr::OUT_PARAM + 4));
        ((status >> hcr::STATUS_SHIFT) as u8, out)
    }

    fn errors(&mut self) -> Vec<String> {
        self.hca
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                HcaEvent::DriverError(line) => Some(line),
                _ => None,
            })
            .collect()
    }

    fn vpm(&mut self, op: u16, entries: &[(u64, u64, u32)]) -> u8 {
        let mut mailbox = vec![0u8; 4096];
        for (i, &(virt, phys, log_pages)) in entries.iter().enumerate() {
            mailbox[16 * i..16 * i + 8].copy_from_slice(&virt.to_be_bytes());
            mailbox[16 * i + 8..16 * i + 16]
                .copy_from_slice(&(phys | u64::from(log_pages)).to_be_bytes());
        }
        self.memory.put(INBOX, &mailbox);
        self.command(op, 0, entries.len() as u32, INBOX, 0, false).0
    }

    /// QUERY_FW, MAP_FA, RUN_FW.
    fn start_firmware(&mut self) {
        let (status, _) = self.command(opcode::QUERY_FW, 0, 0, 0, OUTBOX, false);
        assert_eq!(status, CmdStatus::Ok as u8);
        let fw_pages = u16::from_be_bytes(self.memory.get(OUTBOX, 2).try_into().unwrap());
        // The firmware area: one aligned chunk.
        let log_pages = (fw_pages as u64).next_power_of_two().trailing_zeros();
        assert_eq!(
            self.vpm(opcode::MAP_FA, &[(0, BASE + 0x10_0000, log_pages)]),
            0
        );
        assert_eq!(self.command(opcode::RUN_FW, 0, 0, 0, 0, false).0, 0);
    }

    /// ICM for the MTT table at ICM 0x1000_0000 (the first 64 KiB), INIT_HCA.
    fn init_hca(&mut self) {
        self.init_hca_with(&init_hca_mailbox());
    }

    /// `init_hca` with an INIT_HCA mailbox of the caller's.
    fn init_hca_with(&mut self, mailbox: &[u8]) {
        self.start_firmware();
        let (status, aux) = self.command(opcode::SET_ICM_SIZE, 0, 0, 1 << 24, 0, false);
        assert_eq!(status, 0);
        assert!(aux >= 1);
        assert_eq!(
            self.vpm(opcode::MAP_ICM_AUX, &[(0, BASE + 0x20_0000, 0)]),
            0
        );
        assert_eq!(
            self.vpm(opcode::MAP_ICM, &[(0x1000_0000, BASE + 0x30_0000, 4)]),
            0
        );
        // The QP, CQ and dMPT context tables, all at ICM 0 (the device keeps contexts
        // itself, but takes them only in mapped ICM): 256 KiB covers 2^10 QP contexts.
        assert_eq!(self.vpm(opcode::MAP_ICM, &[(0, BASE + 0xf0_0000, 6)]), 0);
        self.memory.put(INBOX, mailbox);
        assert_eq!(self.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0, 0);
        assert!(self.errors().is_empty());
    }

    /// The number of commands the device executed and failed, from its summary line.
    fn commands_run(&self) -> (u64, u64) {
        let summary = self.hca.summary();
        let mut words = summary.split(' ');
        let run = words.next().and_then(|w| w.parse().ok());
        let failed = words
            .nth(1)
            .and_then(|w| w.strip_prefix('('))
            .and_then(|w| w.parse().ok());
        (run.unwrap(), failed.unwrap())
    }

    /// An EQ of 64 entries in one page at `page`, its MTT entry at MTT index 0, on
    /// MSI-X vector 3, armed; mapped for command events.
    fn create_eq(&mut self, eqn: u32, page: u64) {
        // The MTT entry, written into ICM the way mlx4_write_mtt_chunk does.
        self.memory.put(BASE + 0x30_0000, &(page | 1).to_be_bytes());
        let mut ctx = vec![0u8; 4096];
        ctx[0..4].copy_from_slice(&(9u32 << 8).to_be_bytes()); // armed
        ctx[0x0c] = 6; // 64 entries
        ctx[0x17] = 3; // vector
        ctx[0x18] = 0; // 4 KiB pages
        self.memory.put(INBOX, &ctx);
        assert_eq!(self.command(opcode::SW2HW_EQ, 0, eqn, INBOX, 0, false).0, 0);
        // Command completion events (type 0x0a) to this EQ.
        assert_eq!(
            self.command(opcode::MAP_EQ, 0, eqn, 1 << 0x0a, 0, false).0,
            0
        );
        assert!(self.errors().is_empty());
    }
}

/// A MAD of management class `class` (0x01 a LID-routed SMP, 0x04 the PMA), base and
/// class version 1, `method` (0x01 Get, 0x02 Set), attribute `attr` with `attr_mod`; its
/// data (from byte 64) zero.
fn mad(class: u8, method: u8, attr: u16, attr_mod: u32) -> [u8; 256] {
    let mut mad = [0u8; 256];
    mad[0] = 1;
    mad[1] = class;
    mad[2] = 1;
    mad[3] = method;
    mad[16..18].copy_from_slice(&attr.to_be_bytes());
    mad[20..24].copy_from_slice(&attr_mod.to_be_bytes());
    mad
}

/// The INIT_HCA mailbox `Driver::init_hca` sends: 2^10 QPs, 2^8 CQs, 2^5 EQs, 2^12 MPTs,
/// the MTT table at ICM 0x1000_0000.
fn init_hca_mailbox() -> Vec<u8> {
    let mut mailbox = vec![0u8; 4096];
    mailbox[init_hca::VERSION] = init_hca::VERSION_2;
    mailbox[init_hca::LOG_QP] = 10;
    mailbox[init_hca::LOG_CQ] = 8;
    mailbox[init_hca::LOG_EQ] = 5;
    mailbox[init_hca::LOG_MPT_SZ] = 12;
    mailbox[init_hca::MTT_BASE..init_hca::MTT_BASE + 8]
        .copy_from_slice(&0x1000_0000u64.to_be_bytes());
    mailbox
}

#[test]
fn query_fw_reports_the_new_port_commands_and_the_registers() {
    let mut d = Driver::new();
    let (status, _) = d.command(opcode::QUERY_FW, 0, 0, 0, OUTBOX, false);
    assert_eq!(status, 0);
    let out = d.memory.get(OUTBOX, 0x100);
    assert_eq!(u16::from_be_bytes([out[0x0a], out[0x0b]]), 3, "cmd_if_rev");
    assert_eq!(u16::from_be_bytes([out[2], out[3]]), 2, "major version");
    assert!(d.errors().is_empty());
}

#[test]
fn an_event_mode_nop_writes_the_command_eqe_and_interrupts() {
    let mut d = Driver::new();
    d.init_hca();
    let page = BASE + 0x40_0000;
    d.create_eq(4, page);
    // Every EQE starts owned by the hardware.
    assert!((0..64).all(|i| d.memory.get(page + 32 * i + 31, 1)[0] == 0x80));
    let (status, _) = d.command(opcode::NOP, 0, 0x1f, 0, 0, true);
    assert_eq!(status, 0);
    let eqe = d.memory.get(page, 32);
    assert_eq!(eqe[1], 0x0a, "a command event");
    assert_eq!(
        u16::from_be_bytes([eqe[6], eqe[7]]),
        0x1234,
        "with the token"
    );
    assert_eq!(eqe[15], 0, "and the status");
    assert_eq!(eqe[31] & 0x80, 0, "owned by software in the first lap");
    let events = d.hca.take_events();
    assert!(
        events.contains(&HcaEvent::Interrupt { vector: 3 }),
        "{events:?}"
    );
    // Disarmed now: the next event writes an EQE but raises nothing until re-armed.
    d.command(opcode::NOP, 0, 0x1f, 0, 0, true);
    assert!(!d
        .hca
        .take_events()
        .iter()
        .any(|e| matches!(e, HcaEvent::Interrupt { .. })));
    // A consumer-index update without the arm bit arms nothing.
    d.hca
        .bar2_write(&d.memory, 4096 + 0x800, &2u32.to_be_bytes());
    d.command(opcode::NOP, 0, 0x1f, 0, 0, true);
    assert!(!d
        .hca
        .take_events()
        .iter()
        .any(|e| matches!(e, HcaEvent::Interrupt { .. })));
    // Arming with events unconsumed interrupts at once.
    // EQ 4's doorbell: UAR page 4 / 4, the first of its four; consumer index 0, arm.
    d.hca
        .bar2_write(&d.memory, 4096 + 0x800, &(0x8000_0000u32).to_be_bytes());
    assert!(d
        .hca
        .take_events()
        .contains(&HcaEvent::Interrupt { vector: 3 }));
}

#[test]
fn an_unknown_opcode_is_refused_and_reported() {
    let mut d = Driver::new();
    let (status, _) = d.command(0x7ee, 0, 0, 0, 0, false);
    assert_eq!(status, CmdStatus::BadOp as u8);
    let errors = d.errors();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("not implemented"), "{errors:?}");
}

#[test]
fn a_mailbox_outside_memory_is_an_internal_error() {
    let mut d = Driver::new();
    let (status, _) = d.command(opcode::QUERY_FW, 0, 0, 0, 0xdead_0000_0000, false);
    assert_eq!(status, CmdStatus::InternalError as u8);
    assert!(d.errors()[0].contains("outside mapped memory"));
}

#[test]
fn commands_out_of_firmware_order_are_refused() {
    let mut d = Driver::new();
    assert_eq!(
        d.command(opcode::RUN_FW, 0, 0, 0, 0, false).0,
        CmdStatus::BadSysState as u8
    );
    assert_eq!(
        d.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0,
        CmdStatus::BadSysState as u8
    );
    assert_eq!(
        d.command(opcode::SW2HW_EQ, 0, 0, INBOX, 0, false).0,
        CmdStatus::BadSysState as u8
    );
    assert_eq!(d.errors().len(), 3);
}

#[test]
fn bad_vpm_entries_and_indices_are_refused() {
    let mut d = Driver::new();
    d.start_firmware();
    // A chunk of 2 pages whose address is not aligned to 8 KiB.
    assert_eq!(
        d.vpm(opcode::MAP_ICM_AUX, &[(0, BASE + 0x1000, 1)]),
        CmdStatus::BadParam as u8
    );
    // Zero entries.
    assert_eq!(d.vpm(opcode::MAP_ICM, &[]), CmdStatus::BadParam as u8);
    // More entries than a mailbox holds (256 of 16 bytes).
    assert_eq!(
        d.command(opcode::MAP_ICM, 0, 257, INBOX, 0, false).0,
        CmdStatus::BadParam as u8
    );
    assert_eq!(d.errors().len(), 3);
    let mut d = Driver::new();
    d.init_hca();
    // EQ 40 beyond the 2^5 INIT_HCA made; CQ 4096 beyond 2^8; QP 1024 beyond 2^10.
    assert_eq!(
        d.command(opcode::SW2HW_EQ, 0, 40, INBOX, 0, false).0,
        CmdStatus::BadIndex as u8
    );
    assert_eq!(
        d.command(opcode::SW2HW_CQ, 0, 4096, INBOX, 0, false).0,
        CmdStatus::BadIndex as u8
    );
    assert_eq!(
        d.command(opcode::RST2INIT_QP, 0, 1024, INBOX, 0, false).0,
        CmdStatus::BadIndex as u8
    );
    // A QP transition from the wrong state.
    assert_eq!(
        d.command(opcode::RTR2RTS_QP, 0, 5, INBOX, 0, false).0,
        CmdStatus::BadQpState as u8
    );
    // A CQ on an EQ that does not exist.
    assert_eq!(
        d.command(opcode::SW2HW_CQ, 0, 1, INBOX, 0, false).0,
        CmdStatus::BadResourceState as u8
    );
    assert_eq!(d.errors().len(), 5);
}

#[test]
fn the_sma_answers_node_info_and_refuses_what_is_not_a_mad() {
    let mut d = Driver::new();
    d.init_hca();
    let mut mad = mad(0x01, 0x01, 0x0011, 0);
    d.memory.put(INBOX, &mad);
    assert_eq!(d.command(opcode::MAD_IFC, 3, 2, INBOX, OUTBOX, false).0, 0);
    let reply = d.memory.get(OUTBOX, 256);
    assert_eq!(reply[3], 0x81, "GetResp");
    assert_eq!(&reply[4..6], &[0, 0], "status");
    let data = &reply[64..128];
    assert_eq!(data[2], 1, "a channel adapter");
    assert_eq!(data[3], 2, "with two ports");
    assert_eq!(data[36], 2, "answered by port 2");
    // An attribute the SMA does not have: a reply with MAD status 0x000c.
    mad[16..18].copy_from_slice(&0x0020u16.to_be_bytes()); // SMInfo
    d.memory.put(INBOX, &mad);
    assert_eq!(d.command(opcode::MAD_IFC, 3, 1, INBOX, OUTBOX, false).0, 0);
    assert_eq!(&d.memory.get(OUTBOX, 6)[4..6], &[0, 0x0c]);
    // Not a MAD: a command error.
    mad[0] = 7;
    d.memory.put(INBOX, &mad);
    assert_eq!(
        d.command(opcode::MAD_IFC, 3, 1, INBOX, OUTBOX, false).0,
        CmdStatus::BadPacket as u8
    );
    // Port 3 does not exist.
    assert_eq!(
        d.command(opcode::MAD_IFC, 3, 3, INBOX, OUTBOX, false).0,
        CmdStatus::BadIndex as u8
    );
    assert_eq!(d.errors().len(), 2);
}

#[test]
fn doorbells_for_what_is_not_in_hardware_are_reported() {
    let mut d = Driver::new();
    d.init_hca();
    d.hca
        .bar2_write(&d.memory, 4096 + 0x14, &(77u32 << 8).to_be_bytes());
    let mut cq = [0u8; 8];
    cq[..4].copy_from_slice(&(2u32 << 24 | 9).to_be_bytes());
    d.hca.bar2_write(&d.memory, 4096 + 0x20, &cq);
    d.hca
        .bar2_write(&d.memory, 4096 + 0x804, &0u32.to_be_bytes());
    let errors = d.errors();
    assert_eq!(errors.len(), 3, "{errors:?}");
}

/// Two RC QPs connected across the cable: the data path a driver's verbs ride on.
mod rc {
    pub(super) use super::*;

    pub(super) const EQN: u32 = 4;
    pub(super) const CQN: u32 = 1;
    pub(super) const MPT: u32 = 5;
    /// The memory key of MPT 5: index 5, variant 0x11.
    pub(super) const KEY: u32 = (MPT << 8) | 0x11;
    pub(super) const PD: u32 = 1;
    pub(super) const QP_A: u32 = 0x40;
    pub(super) const QP_B: u32 = 0x41;
    /// Each QP's buffer: one page, SQ (16 WQEs of 64 bytes) first, then RQ (16 of 64).
    pub(super) const QP_PAGE: [u64; 2] = [BASE + 0x50_0000, BASE + 0x51_0000];
    pub(super) const CQ_PAGE: u64 = BASE + 0x52_0000;
    pub(super) const DB_RECORDS: u64 = BASE + 0x53_0000;
    pub(super) const DATA: u64 = BASE + 0x60_0000;
    /// The UAR page (1) the QPs and the CQ ring their doorbells on, and EQ 4 too.
    pub(super) const UAR_PAGE: u64 = 4096;

    /// An MTT entry (index `i` of the MTT table) pointing at `page`.
    pub(super) fn mtt(d: &Driver, i: u64, page: u64) {
        d.memory
            .put(BASE + 0x30_0000 + 8 * i, &(page | 1).to_be_bytes());
    }

    /// PortInfo Set through MAD_IFC: `port`'s LID and LMC.
    pub(super) fn set_port(d: &mut Driver, port: u32, lid: u16, lmc: u8) {
        let mut mad = mad(0x01, 0x02, 0x0015, 0);
        mad[64 + 16..64 + 18].copy_from_slice(&lid.to_be_bytes());
        mad[64 + 34] = lmc;
        // The GID prefix opensm sets: the link-local one.
        mad[64 + 8..64 + 16].copy_from_slice(&0xfe80_0000_0000_0000u64.to_be_bytes());
        d.memory.put(INBOX, &mad);
        assert_eq!(
            d.command(opcode::MAD_IFC, 3, port, INBOX, OUTBOX, false).0,
            0
        );
    }

    /// A QP's RST2INIT, INIT2RTR and RTR2RTS contexts, connected to `remote` on the
    /// port whose LID is `rlid`, sending from `port` (0 or 1).
    fn create_qp(d: &mut Driver, qpn: u32, n: usize, port: u8, remote: u32, rlid: u16) {
        create_qp_at(d, qpn, n, QP_PAGE[n], port, (remote, rlid), None);
    }

    /// `create_qp` with its buffer at `page` (MTT entry `1 + n`, doorbell record `n`),
    /// its receives from SRQ `srqn` when given.
    fn create_qp_at(
        d: &mut Driver,
        qpn: u32,
        n: usize,
        page: u64,
        port: u8,
        (remote, rlid): (u32, u16),
        srqn: Option<u32>,
    ) {
        mtt(d, 1 + n as u64, page);
        // The driver hands the SQ over empty: every WQE's owner bit set (lap 1's), as
        // mlx4_ib and libmlx4 stamp it.
        for i in 0..16 {
            d.memory.put(page + 64 * i, &[0x80]);
        }
        let mut mailbox = vec![0u8; 4096];
        let ctx = &mut mailbox[8..];
        ctx[0x04..0x08].copy_from_slice(&PD.to_be_bytes());
        ctx[0x0c..0x10].copy_from_slice(&1u32.to_be_bytes()); // UAR page 1
        ctx[0x09] = (4 << 3) | 2; // RQ: 16 WQEs of 64 bytes
        ctx[0x0a] = (4 << 3) | 2; // SQ: 16 WQEs of 64 bytes
        ctx[0x14..0x18].copy_from_slice(&remote.to_be_bytes());
        ctx[0x18 + 0x06..0x18 + 0x08].copy_from_slice(&rlid.to_be_bytes());
        ctx[0x18 + 0x20] = (port << 6) | 0x3f;
        ctx[0x70..0x74].copy_from_slice(&(7u32 << 13).to_be_bytes()); // RNR retry forever
        ctx[0x7c..0x80].copy_from_slice(&CQN.to_be_bytes());
        ctx[0x90..0x94].copy_from_slice(&(7u32 << 13).to_be_bytes()); // RRE, RWE, RAE
        ctx[0x9c..0xa0].copy_from_slice(&CQN.to_be_bytes());
        ctx[0xa0..0xa8].copy_from_slice(&(DB_RECORDS + 8 * n as u64).to_be_bytes());
        if let Some(srqn) = srqn {
            ctx[0x09] = 0; // no receive queue of its own
            ctx[0xac..0xb0].copy_from_slice(&((1u32 << 24) | srqn).to_be_bytes());
        }
        ctx[0xcc..0xd0].copy_from_slice(&(8 * (1 + n as u32)).to_be_bytes()); // MTT offset
        d.memory.put(INBOX, &mailbox);
        for op in [opcode::RST2INIT_QP, opcode::INIT2RTR_QP, opcode::RTR2RTS_QP] {
            assert_eq!(
                d.command(op, 0, qpn, INBOX, 0, false).0,
                0,
                "transition {op:#x}"
            );
        }
    }

    pub(super) fn setup() -> Driver {
        setup_with(&init_hca_mailbox())
    }

    /// `setup` with an INIT_HCA mailbox of the caller's.
    pub(super) fn setup_with(init: &[u8]) -> Driver {
        let mut d = Driver::new();
        d.init_hca_with(init);
        d.create_eq(EQN, BASE + 0x40_0000);
        for port in [1, 2] {
            assert_eq!(d.command(opcode::INIT_PORT, 0, port, 0, 0, false).0, 0);
        }
        set_port(&mut d, 1, 1, 0);
        set_port(&mut d, 2, 2, 0);
        // A CQ of 64 entries in one page (MTT index 10).
        mtt(&d, 10, CQ_PAGE);
        let mut cq = vec![0u8; 4096];
        cq[0x0c..0x10].copy_from_slice(&((6u32 << 24) | 1).to_be_bytes()); // UAR page 1
        cq[0x17] = EQN as u8;
        cq[0x1c..0x20].copy_from_slice(&80u32.to_be_bytes());
        cq[0x38..0x40].copy_from_slice(&(DB_RECORDS + 0x100).to_be_bytes());
        d.memory.put(INBOX, &cq);
        assert_eq!(d.command(opcode::SW2HW_CQ, 0, CQN, INBOX, 0, false).0, 0);
        // A physical MPT of the PD that grants everything (a DMA MR).
        let mut mpt = vec![0u8; 4096];
        let flags = (1u32 << 9) | (0x1f << 10);
        mpt[0..4].copy_from_slice(&flags.to_be_bytes());
        mpt[0x08..0x0c].copy_from_slice(&KEY.rotate_left(24).to_be_bytes());
        mpt[0x0c..0x10].copy_from_slice(&PD.to_be_bytes());
        mpt[0x18..0x20].copy_from_slice(&u64::MAX.to_be_bytes());
        d.memory.put(INBOX, &mpt);
        assert_eq!(d.command(opcode::SW2HW_MPT, 0, MPT, INBOX, 0, false).0, 0);
        create_qp(&mut d, QP_A, 0, 0, QP_B, 2);
        create_qp(&mut d, QP_B, 1, 1, QP_A, 1);
        assert!(d.errors().is_empty());
        d
    }

    /// Posts a receive of `len` bytes at `addr` on QP B (its WQE `index`).
    pub(super) fn post_recv(d: &Driver, index: u32, addr: u64, len: u32) {
        let mut wqe = [0u8; 64];
        wqe[0..4].copy_from_slice(&len.to_be_bytes());
        wqe[4..8].copy_from_slice(&KEY.to_be_bytes());
        wqe[8..16].copy_from_slice(&addr.to_be_bytes());
        wqe[16 + 4..16 + 8].copy_from_slice(&0x100u32.to_be_bytes()); // terminator
        d.memory
            .put(QP_PAGE[1] + 1024 + 64 * u64::from(index), &wqe);
        d.memory.put(DB_RECORDS + 8, &(index + 1).to_be_bytes());
    }

    /// Writes send WQE `index` of QP `n` (0: A, 1: B): `opcode`, an optional remote
    /// address segment, one gather entry, signaled.
    pub(super) fn put_send(
        d: &Driver,
        n: usize,
        index: u32,
        opcode: u8,
        remote: Option<(u64, u32)>,
        addr: u64,
        len: u32,
    ) {
        put_sges(d, n, index, opcode, remote, &[(len, addr)]);
    }

    /// `put_send` with a gather list of several entries (length, address) under KEY.
    fn put_sges(
        d: &Driver,
        n: usize,
        index: u32,
        opcode: u8,
        remote: Option<(u64, u32)>,
        sges: &[(u32, u64)],
    ) {
        put_sges_at(d, QP_PAGE[n], index, opcode, remote, sges);
    }

    /// `put_sges` into the send queue at `page`.
    fn put_sges_at(
        d: &Driver,
        page: u64,
        index: u32,
        opcode: u8,
        remote: Option<(u64, u32)>,
        sges: &[(u32, u64)],
    ) {
        let mut wqe = [0u8; 64];
        // The owner bit of the lap `index` is in (16 WQEs a lap).
        wqe[0] = if index & 16 != 0 { 0x80 } else { 0 };
        wqe[3] = opcode;
        wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        let mut at = 16;
        if let Some((raddr, rkey)) = remote {
            wqe[16..24].copy_from_slice(&raddr.to_be_bytes());
            wqe[24..28].copy_from_slice(&rkey.to_be_bytes());
            at = 32;
        }
        for &(len, addr) in sges {
            wqe[at..at + 4].copy_from_slice(&len.to_be_bytes());
            wqe[at + 4..at + 8].copy_from_slice(&KEY.to_be_bytes());
            wqe[at + 8..at + 16].copy_from_slice(&addr.to_be_bytes());
            at += 16;
        }
        wqe[7] = (at / 16) as u8;
        d.memory.put(page + 64 * u64::from(index & 15), &wqe);
    }

    /// Posts send WQE `index` on QP A and rings its doorbell.
    pub(super) fn post_send(
        d: &mut Driver,
        index: u32,
        opcode: u8,
        remote: Option<(u64, u32)>,
        addr: u64,
        len: u32,
    ) {
        put_send(d, 0, index, opcode, remote, addr, len);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
    }

    /// CQE `n` of the CQ: (QPN, byte count, owner_sr_opcode, syndrome).
    pub(super) fn cqe(d: &Driver, n: u64) -> (u32, u32, u8, u8) {
        let c = d.memory.get(CQ_PAGE + 32 * n, 32);
        (
            u32::from_be_bytes(c[0..4].try_into().unwrap()),
            u32::from_be_bytes(c[0x14..0x18].try_into().unwrap()),
            c[0x1f],
            c[0x1b],
        )
    }

    /// PortCountersExtended of `port` (1 or 2), read through the PMA as perfquery does:
    /// (xmit words, rcv words, xmit packets, rcv packets).
    fn port_counters(d: &mut Driver, port: u8) -> [u64; 4] {
        let mut mad = mad(0x04, 0x01, 0x001d, 0);
        mad[64 + 1] = port;
        d.memory.put(INBOX, &mad);
        assert_eq!(d.command(opcode::MAD_IFC, 3, 1, INBOX, OUTBOX, false).0, 0);
        let reply = d.memory.get(OUTBOX, 256);
        assert_eq!(&reply[4..6], &[0, 0], "MAD status");
        let word = |i: usize| u64::from_be_bytes(reply[72 + 8 * i..80 + 8 * i].try_into().unwrap());
        [word(0), word(1), word(2), word(3)]
    }

    /// What an RC message puts on the link, as the port counters see it: the payload and
    /// 42 bytes of headers (LRH, BTH, RETH, ICRC, VCRC) from the requester; a READ's
    /// response, with its data, the other way.
    #[test]
    fn rc_traffic_shows_in_both_ports_counters() {
        let mut d = setup();
        let before = [port_counters(&mut d, 1), port_counters(&mut d, 2)];
        let delta = |d: &mut Driver, port: u8| {
            let now = port_counters(d, port);
            let was = before[usize::from(port) - 1];
            [0, 1, 2, 3].map(|i| now[i] - was[i])
        };
        post_recv(&d, 0, DATA + 0x1000, 256);
        post_send(&mut d, 0, 0x0a, None, DATA, 200);
        assert_eq!(cqe(&d, 1).0, QP_A, "the SEND completed");
        // 242 bytes: 60 words, one packet, port 1 to port 2.
        assert_eq!(delta(&mut d, 1), [60, 0, 1, 0]);
        assert_eq!(delta(&mut d, 2), [0, 60, 0, 1]);
        // An RDMA READ of 64 bytes: a 42-byte request out, 106 bytes back.
        post_send(
            &mut d,
            1,
            0x10,
            Some((DATA + 0x2000, KEY)),
            DATA + 0x3000,
            64,
        );
        assert_eq!(cqe(&d, 2).0, QP_A, "the READ completed");
        assert_eq!(delta(&mut d, 1), [60 + 10, 26, 2, 1]);
        assert_eq!(delta(&mut d, 2), [26, 60 + 10, 1, 2]);
    }

    /// Posts send WQE `index` on QP A with a gather list of several entries (length,
    /// address) under KEY, and rings.
    fn post_sges(
        d: &mut Driver,
        index: u32,
        opcode: u8,
        remote: Option<(u64, u32)>,
        sges: &[(u32, u64)],
    ) {
        put_sges(d, 0, index, opcode, remote, sges);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
    }

    /// QP A's first CQE: (byte count, syndrome).
    fn requester_cqe(d: &Driver) -> (u32, u8) {
        (0..64)
            .map(|n| cqe(d, n))
            .find(|c| c.0 == QP_A)
            .map(|c| (c.1, c.3))
            .expect("a CQE of QP A")
    }

    /// A message may be 16 MiB and not a byte more: a SEND, an RDMA WRITE and an RDMA
    /// READ of exactly that much go (the whole test memory, written onto itself, so
    /// nothing changes), and one byte more is a local length error (0x01).
    #[test]
    fn a_message_of_16_mib_goes_and_one_byte_more_is_a_length_error() {
        const MAX: u32 = 16 << 20;
        for (opcode, remote) in [
            (0x0a, None),
            (0x08, Some((BASE, KEY))),
            (0x10, Some((BASE, KEY))),
        ] {
            let mut d = setup();
            post_recv(&d, 0, DATA + 0x1000, 64);
            post_sges(&mut d, 0, opcode, remote, &[(MAX, BASE), (1, DATA)]);
            assert_eq!(
                requester_cqe(&d).1,
                0x01,
                "{opcode:#x} of 16 MiB and a byte"
            );
            let mut d = setup();
            post_recv(&d, 0, DATA + 0x1000, 64);
            post_sges(&mut d, 0, opcode, remote, &[(MAX, BASE)]);
            let expected = match opcode {
                // The SEND reaches the responder, whose 64-byte receive is too small.
                0x0a => (0, 0x12),
                0x10 => (MAX, 0),
                _ => (0, 0),
            };
            assert_eq!(requester_cqe(&d), expected, "{opcode:#x} of 16 MiB");
        }
    }

    /// A second physical MPT (index `index`) of `pd` that grants everything; its key.
    fn extra_mpt(d: &mut Driver, index: u32, pd: u32) -> u32 {
        let key = (index << 8) | 0x11;
        let mut mpt = vec![0u8; 4096];
        mpt[0..4].copy_from_slice(&((1u32 << 9) | (0x1f << 10)).to_be_bytes());
        mpt[0x08..0x0c].copy_from_slice(&key.rotate_left(24).to_be_bytes());
        mpt[0x0c..0x10].copy_from_slice(&pd.to_be_bytes());
        mpt[0x18..0x20].copy_from_slice(&u64::MAX.to_be_bytes());
        d.memory.put(INBOX, &mpt);
        assert_eq!(d.command(opcode::SW2HW_MPT, 0, index, INBOX, 0, false).0, 0);
        key
    }

    /// SEND with invalidate (0x01): the responder invalidates the key the WQE names
    /// before the receive completes, if its PD owns that key; otherwise the requester
    /// completes with a remote invalid request error (0x12).
    #[test]
    fn send_with_invalidate_retires_the_responders_key_of_its_pd_only() {
        let mut d = setup();
        let key = extra_mpt(&mut d, 8, PD);
        d.memory.put(DATA, b"inv!");
        post_send(&mut d, 0, 0x08, Some((DATA + 0x2000, key)), DATA, 4);
        assert_eq!(cqe(&d, 0).3, 0, "the key works");
        post_recv(&d, 0, DATA + 0x1000, 64);
        put_send(&d, 0, 1, 0x01, None, DATA, 4);
        d.memory.put(QP_PAGE[0] + 64 + 12, &key.to_be_bytes());
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(
            cqe(&d, 1),
            (QP_B, 4, 0x03, 0),
            "received (SEND_INV), the key retired"
        );
        assert_eq!(cqe(&d, 2).3, 0, "the SEND completes");
        post_send(&mut d, 2, 0x08, Some((DATA + 0x2000, key)), DATA, 4);
        assert_eq!(cqe(&d, 3).3, 0x13, "the retired key is refused");

        let mut d = setup();
        let key = extra_mpt(&mut d, 8, PD + 1);
        post_recv(&d, 0, DATA + 0x1000, 64);
        put_send(&d, 0, 0, 0x01, None, DATA, 4);
        d.memory.put(QP_PAGE[0] + 12, &key.to_be_bytes());
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        let sender = (0..3).map(|n| cqe(&d, n)).find(|c| c.0 == QP_A).unwrap();
        assert_eq!(sender.3, 0x12, "another PD's key: remote invalid request");
    }

    /// A NOP WQE moves nothing and completes (opcode 0, send bit); the device's timer has
    /// work only while a send waits for a receive or a QP is in error; an error other
    /// than a flush is logged.
    #[test]
    fn a_nop_completes_and_the_timer_runs_only_when_needed() {
        let mut d = setup();
        assert!(!d.hca.needs_tick());
        let mut nop = [0u8; 64];
        nop[7] = 1;
        nop[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        d.memory.put(QP_PAGE[0], &nop);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 0), (QP_A, 0, 0x40, 0), "the NOP completes");
        assert!(!d.hca.needs_tick());
        // A SEND with no receive posted waits (B's RQ is empty): the timer retries it.
        post_send(&mut d, 1, 0x0a, None, DATA, 8);
        assert!(d.hca.needs_tick(), "RNR: a send waits");
        post_recv(&d, 0, DATA + 0x1000, 64);
        d.hca.tick(&d.memory);
        assert!(!d.hca.needs_tick(), "delivered on the tick");
        assert_eq!(cqe(&d, 2).0, QP_A);
        // A remote access error: logged as such, and A is in error (the timer flushes).
        d.hca.take_events();
        post_send(&mut d, 2, 0x08, Some((DATA, 0xdead_0011)), DATA, 8);
        assert_eq!(cqe(&d, 3).3, 0x13);
        assert!(d.hca.needs_tick(), "a QP in error");
        let logged = d.hca.take_events().into_iter().any(|e| {
            matches!(e, HcaEvent::Info(ref l) if l.contains("completes in error: RemoteAccessErr"))
        });
        assert!(logged);
        post_send(&mut d, 3, 0x0a, None, DATA, 8);
        assert_eq!(cqe(&d, 4).3, 0x05, "flushed");
        let flush_logged = d
            .hca
            .take_events()
            .into_iter()
            .any(|e| matches!(e, HcaEvent::Info(ref l) if l.contains("completes in error")));
        assert!(!flush_logged, "a flush is not news");
    }

    /// An RNR retry count below 7 is finite: ten timer ticks a retry, then the send
    /// completes with RNR retry exceeded (0x16).
    #[test]
    fn a_finite_rnr_retry_count_gives_up_after_its_retries() {
        let mut d = setup();
        // RTS2RTS: the RNR retry count 1 (params1), the CQs as they were.
        let mut mailbox = vec![0u8; 4096];
        let ctx = &mut mailbox[8..];
        ctx[0x70..0x74].copy_from_slice(&(1u32 << 13).to_be_bytes());
        ctx[0x7c..0x80].copy_from_slice(&CQN.to_be_bytes());
        ctx[0x9c..0xa0].copy_from_slice(&CQN.to_be_bytes());
        d.memory.put(INBOX, &mailbox);
        assert_eq!(d.command(opcode::RTS2RTS_QP, 0, QP_A, INBOX, 0, false).0, 0);
        post_send(&mut d, 0, 0x0a, None, DATA, 8);
        for _ in 0..9 {
            d.hca.tick(&d.memory);
        }
        assert_eq!(cqe(&d, 0).2 & 0x80, 0x80, "still retrying");
        d.hca.tick(&d.memory);
        assert_eq!(cqe(&d, 0), (QP_A, 0, 0x5e, 0x16), "RNR retry exceeded");
        assert!(d.errors().is_empty());
    }

    /// A receive WQE the device cannot read (its page's MTT entry not present) is the
    /// driver's mistake, reported; the SEND fails at the responder (0x12).
    #[test]
    fn an_unreadable_receive_wqe_is_reported() {
        let mut d = setup();
        post_recv(&d, 0, DATA + 0x1000, 64);
        d.memory
            .put(BASE + 0x30_0000 + 8 * 2, &QP_PAGE[1].to_be_bytes());
        post_send(&mut d, 0, 0x0a, None, DATA, 8);
        let errors = d.errors();
        assert!(
            errors.len() == 1 && errors[0].starts_with("QP 0x41 receive WQE 0: MTT entry"),
            "{errors:?}"
        );
        assert_eq!(cqe(&d, 0).3, 0x12);
    }

    /// A message scattered over two receive entries fills the first, then the second.
    #[test]
    fn a_receive_with_two_entries_takes_a_message_in_order() {
        let mut d = setup();
        let pattern: Vec<u8> = (0..200u32).map(|i| (i * 5 + 1) as u8).collect();
        d.memory.put(DATA, &pattern);
        let mut wqe = [0u8; 64];
        for (i, (len, addr)) in [(100u32, DATA + 0x1000), (200, DATA + 0x2000)]
            .into_iter()
            .enumerate()
        {
            wqe[16 * i..16 * i + 4].copy_from_slice(&len.to_be_bytes());
            wqe[16 * i + 4..16 * i + 8].copy_from_slice(&KEY.to_be_bytes());
            wqe[16 * i + 8..16 * i + 16].copy_from_slice(&addr.to_be_bytes());
        }
        wqe[32 + 4..32 + 8].copy_from_slice(&0x100u32.to_be_bytes());
        d.memory.put(QP_PAGE[1] + 1024, &wqe);
        d.memory.put(DB_RECORDS + 8, &1u32.to_be_bytes());
        post_send(&mut d, 0, 0x0a, None, DATA, 200);
        assert_eq!(cqe(&d, 0), (QP_B, 200, 0x01, 0));
        assert_eq!(d.memory.get(DATA + 0x1000, 100), pattern[..100]);
        assert_eq!(d.memory.get(DATA + 0x2000, 100), pattern[100..]);
        assert_eq!(d.memory.get(DATA + 0x2000 + 100, 4), [0; 4], "no further");
    }

    /// An RC requester reaches its responder only if the responder is ready, on the port
    /// the path's LID names (across the cable only while the link is up), and connected
    /// back to it; otherwise the transport's retries run out (syndrome 0x15).
    #[test]
    fn an_rc_send_needs_a_reachable_responder_connected_back() {
        let retry_exceeded = |d: &mut Driver| {
            post_recv(d, 0, DATA + 0x1000, 64);
            post_send(d, 0, 0x0a, None, DATA, 8);
            cqe(d, 0)
        };
        // B connected to another QP than A.
        let mut d = setup();
        assert_eq!(d.command(opcode::TO_RST_QP, 0, QP_B, 0, 0, false).0, 0);
        create_qp(&mut d, QP_B, 1, 1, 0x99, 1);
        assert_eq!(retry_exceeded(&mut d), (QP_A, 0, 0x5e, 0x15));
        // A's path names a LID no port has.
        let mut d = setup();
        assert_eq!(d.command(opcode::TO_RST_QP, 0, QP_A, 0, 0, false).0, 0);
        create_qp(&mut d, QP_A, 0, 0, QP_B, 7);
        assert_eq!(retry_exceeded(&mut d), (QP_A, 0, 0x5e, 0x15));
        // B only in INIT.
        let mut d = setup();
        assert_eq!(d.command(opcode::TO_RST_QP, 0, QP_B, 0, 0, false).0, 0);
        let mut mailbox = vec![0u8; 4096];
        mailbox[8 + 0x0c..8 + 0x10].copy_from_slice(&1u32.to_be_bytes());
        d.memory.put(INBOX, &mailbox);
        assert_eq!(
            d.command(opcode::RST2INIT_QP, 0, QP_B, INBOX, 0, false).0,
            0
        );
        assert_eq!(retry_exceeded(&mut d), (QP_A, 0, 0x5e, 0x15));
        // The cable's link down (port 2 closed): B on the far port is out of reach.
        let mut d = setup();
        assert_eq!(d.command(opcode::CLOSE_PORT, 0, 2, 0, 0, false).0, 0);
        assert_eq!(retry_exceeded(&mut d), (QP_A, 0, 0x5e, 0x15));
    }

    /// mlx4_ib puts the queue with the larger stride first: a QP whose receive WQEs
    /// (128 bytes) are larger than its send WQEs (64) has its RQ at 0 and its SQ after
    /// it, here at 4 KiB, inside one 8 KiB page (log_page_size 1). Its 32 receives wrap
    /// around, and its sends come from the second 4 KiB of the page.
    #[test]
    fn an_rq_first_qp_on_8k_pages_wraps_its_receives_and_sends_from_its_sq() {
        let mut d = setup();
        assert_eq!(d.command(opcode::TO_RST_QP, 0, QP_B, 0, 0, false).0, 0);
        let page = QP_PAGE[1];
        mtt(&d, 2, page);
        for i in 0..16 {
            d.memory.put(page + 4096 + 64 * i, &[0x80]);
        }
        let mut mailbox = vec![0u8; 4096];
        let ctx = &mut mailbox[8..];
        ctx[0x04..0x08].copy_from_slice(&PD.to_be_bytes());
        ctx[0x0c..0x10].copy_from_slice(&1u32.to_be_bytes());
        ctx[0x09] = (5 << 3) | 3; // RQ: 32 WQEs of 128 bytes
        ctx[0x0a] = (4 << 3) | 2; // SQ: 16 WQEs of 64 bytes
        ctx[0x14..0x18].copy_from_slice(&QP_A.to_be_bytes());
        ctx[0x18 + 0x06..0x18 + 0x08].copy_from_slice(&1u16.to_be_bytes());
        ctx[0x18 + 0x20] = (1 << 6) | 0x3f;
        ctx[0x70..0x74].copy_from_slice(&(7u32 << 13).to_be_bytes());
        ctx[0x7c..0x80].copy_from_slice(&CQN.to_be_bytes());
        ctx[0x90..0x94].copy_from_slice(&(7u32 << 13).to_be_bytes());
        ctx[0x9c..0xa0].copy_from_slice(&CQN.to_be_bytes());
        ctx[0xa0..0xa8].copy_from_slice(&(DB_RECORDS + 8).to_be_bytes());
        ctx[0xc8] = 1; // 8 KiB pages
        ctx[0xcc..0xd0].copy_from_slice(&16u32.to_be_bytes()); // MTT entry 2
        d.memory.put(INBOX, &mailbox);
        for op in [opcode::RST2INIT_QP, opcode::INIT2RTR_QP, opcode::RTR2RTS_QP] {
            assert_eq!(d.command(op, 0, QP_B, INBOX, 0, false).0, 0, "{op:#x}");
        }
        let mut polled = 0u32;
        for i in 0..40u32 {
            let slot = u64::from(i % 32);
            let buffer = DATA + 0x1000 + 32 * u64::from(i);
            let mut wqe = [0u8; 128];
            wqe[0..4].copy_from_slice(&16u32.to_be_bytes());
            wqe[4..8].copy_from_slice(&KEY.to_be_bytes());
            wqe[8..16].copy_from_slice(&buffer.to_be_bytes());
            wqe[16 + 4..16 + 8].copy_from_slice(&0x100u32.to_be_bytes());
            d.memory.put(page + 128 * slot, &wqe);
            d.memory.put(DB_RECORDS + 8, &(i + 1).to_be_bytes());
            let message = [i as u8 + 1; 16];
            d.memory.put(DATA, &message);
            post_send(&mut d, i, 0x0a, None, DATA, 16);
            assert_eq!(d.memory.get(buffer, 16), message, "receive {i}");
            let n = u64::from(polled % 64);
            assert_eq!(
                cqe(&d, n),
                (QP_B, 16, 0x01 | if polled & 64 != 0 { 0x80 } else { 0 }, 0)
            );
            polled += 2;
            // The driver's consumer index, so the CQ never overruns.
            d.memory.put(DB_RECORDS + 0x100, &polled.to_be_bytes());
        }
        // B sends from its SQ at 4 KiB into a receive on A.
        let mut recv = [0u8; 64];
        recv[0..4].copy_from_slice(&64u32.to_be_bytes());
        recv[4..8].copy_from_slice(&KEY.to_be_bytes());
        recv[8..16].copy_from_slice(&(DATA + 0x5000).to_be_bytes());
        recv[16 + 4..16 + 8].copy_from_slice(&0x100u32.to_be_bytes());
        d.memory.put(QP_PAGE[0] + 1024, &recv);
        d.memory.put(DB_RECORDS, &1u32.to_be_bytes());
        d.memory.put(DATA + 0x6000, b"from B's SQ");
        let mut send = [0u8; 64];
        send[3] = 0x0a;
        send[7] = 2;
        send[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        send[16..20].copy_from_slice(&11u32.to_be_bytes());
        send[20..24].copy_from_slice(&KEY.to_be_bytes());
        send[24..32].copy_from_slice(&(DATA + 0x6000).to_be_bytes());
        d.memory.put(page + 4096, &send);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_B << 8).to_be_bytes());
        assert_eq!(d.memory.get(DATA + 0x5000, 11), b"from B's SQ");
        assert!(d.errors().is_empty());
    }

    /// An SRQ (`SW2HW_SRQ`) feeds the QPs made on it: the device takes its WQEs in the
    /// order of the driver's links (each WQE's `next_wqe_index`, from WQE 0), as many as
    /// the doorbell record counts, scatters past the 16-byte link, and names the WQE's
    /// index in the CQE, as mlx4_ib's `mlx4_ib_post_srq_recv` and its CQ poll expect. A
    /// send finding the SRQ empty waits (RNR, retried forever here) until one is posted.
    #[test]
    fn an_srq_feeds_its_qps_in_the_order_of_its_links() {
        const QP_C: u32 = 0x42;
        const QP_D: u32 = 0x43;
        const SRQN: u32 = 3;
        const SRQ_PAGE: u64 = BASE + 0x54_0000;
        const SRQ_RECORD: u64 = DB_RECORDS + 0x200;
        let mut init = init_hca_mailbox();
        init[init_hca::LOG_SRQ] = 4;
        let mut d = setup_with(&init);
        // Four WQEs of 32 bytes (the link, one scatter entry), MTT entry 20.
        mtt(&d, 20, SRQ_PAGE);
        let mut srq = vec![0u8; 256];
        srq[0x00..0x04].copy_from_slice(&((2u32 << 24) | SRQN).to_be_bytes());
        srq[0x04] = 1; // 2^(1 + 4) bytes a WQE
        srq[0x14..0x18].copy_from_slice(&(8u32 * 20).to_be_bytes());
        srq[0x18..0x1c].copy_from_slice(&PD.to_be_bytes());
        srq[0x28..0x30].copy_from_slice(&SRQ_RECORD.to_be_bytes());
        d.memory.put(INBOX, &srq);
        assert_eq!(d.command(opcode::SW2HW_SRQ, 0, SRQN, INBOX, 0, false).0, 0);
        let srq_wqe = |d: &Driver, index: u64, next: u16, addr: u64| {
            let mut wqe = [0u8; 32];
            wqe[2..4].copy_from_slice(&next.to_be_bytes());
            wqe[16..20].copy_from_slice(&64u32.to_be_bytes());
            wqe[20..24].copy_from_slice(&KEY.to_be_bytes());
            wqe[24..32].copy_from_slice(&addr.to_be_bytes());
            d.memory.put(SRQ_PAGE + 32 * index, &wqe);
        };
        // WQE 0 links to 2 (1 is in use elsewhere), 2 to 3: two posted.
        srq_wqe(&d, 0, 2, DATA + 0x1000);
        srq_wqe(&d, 2, 3, DATA + 0x2000);
        d.memory.put(SRQ_RECORD, &2u32.to_be_bytes());
        let page_c = BASE + 0x55_0000;
        create_qp_at(&mut d, QP_C, 2, page_c, 0, (QP_D, 2), None);
        create_qp_at(&mut d, QP_D, 3, BASE + 0x56_0000, 1, (QP_C, 1), Some(SRQN));
        let send = |d: &mut Driver, index: u32, text: &[u8]| {
            d.memory.put(DATA + 0x100 * u64::from(index), text);
            put_sges_at(
                d,
                page_c,
                index,
                0x0a,
                None,
                &[(text.len() as u32, DATA + 0x100 * u64::from(index))],
            );
            d.hca
                .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_C << 8).to_be_bytes());
        };
        let recv_cqes = |d: &Driver| -> Vec<(u32, u16)> {
            (0..8)
                .map(|n| d.memory.get(CQ_PAGE + 32 * n, 32))
                .filter(|c| c[0x1f] & 0x40 == 0 && c[0x1f] & 0x1f == 0x01)
                .map(|c| {
                    (
                        u32::from_be_bytes(c[0..4].try_into().unwrap()),
                        u16::from_be_bytes(c[0x18..0x1a].try_into().unwrap()),
                    )
                })
                .collect()
        };
        send(&mut d, 0, b"first");
        send(&mut d, 1, b"second");
        assert_eq!(d.memory.get(DATA + 0x1000, 5), b"first");
        assert_eq!(d.memory.get(DATA + 0x2000, 6), b"second", "by WQE 0's link");
        assert_eq!(recv_cqes(&d), [(QP_D, 0), (QP_D, 2)]);
        // Nothing posted: the third waits for the next WQE the links name (3).
        send(&mut d, 2, b"third");
        assert_eq!(recv_cqes(&d).len(), 2, "an RNR wait, not a completion");
        srq_wqe(&d, 3, 0, DATA + 0x3000);
        d.memory.put(SRQ_RECORD, &3u32.to_be_bytes());
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_C << 8).to_be_bytes());
        for _ in 0..4 {
            d.hca.tick(&d.memory);
        }
        assert_eq!(d.memory.get(DATA + 0x3000, 5), b"third");
        assert_eq!(recv_cqes(&d), [(QP_D, 0), (QP_D, 2), (QP_D, 3)]);
        assert!(d.errors().is_empty(), "{:?}", d.errors());
    }

    /// A physical MPT (no translation) still bounds its region for remote access: the
    /// responder checks the range before the address goes to memory.
    #[test]
    fn a_physical_region_refuses_remote_access_outside_it() {
        let mut d = setup();
        let key = (9u32 << 8) | 0x11;
        let mut mpt = vec![0u8; 4096];
        mpt[0..4].copy_from_slice(&((1u32 << 9) | (0x1f << 10)).to_be_bytes());
        mpt[0x08..0x0c].copy_from_slice(&key.rotate_left(24).to_be_bytes());
        mpt[0x0c..0x10].copy_from_slice(&PD.to_be_bytes());
        mpt[0x10..0x18].copy_from_slice(&(DATA + 0x2000).to_be_bytes());
        mpt[0x18..0x20].copy_from_slice(&64u64.to_be_bytes());
        d.memory.put(INBOX, &mpt);
        assert_eq!(d.command(opcode::SW2HW_MPT, 0, 9, INBOX, 0, false).0, 0);
        d.memory.put(DATA, b"in range");
        post_send(&mut d, 0, 0x08, Some((DATA + 0x2000 + 56, key)), DATA, 8);
        assert_eq!(cqe(&d, 0).3, 0, "the region's last 8 bytes");
        post_send(&mut d, 1, 0x08, Some((DATA + 0x2000 + 60, key)), DATA, 8);
        assert_eq!(cqe(&d, 1).3, 0x13, "4 bytes past its end");
        assert_eq!(d.memory.get(DATA + 0x2000 + 64, 4), [0; 4]);
    }

    /// An RC WQE completes only when signaled (`MLX4_WQE_CTRL_CQ_UPDATE`, bits 2..3);
    /// one whose size (DS count) is below a control segment is a local QP operation
    /// error (0x02).
    #[test]
    fn only_signaled_wqes_complete_and_a_wqe_without_size_is_refused() {
        let mut d = setup();
        d.memory.put(DATA, b"quiet");
        put_send(&d, 0, 0, 0x08, Some((DATA + 0x2000, KEY)), DATA, 5);
        d.memory.put(QP_PAGE[0] + 8, &0u32.to_be_bytes());
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(
            d.memory.get(DATA + 0x2000, 5),
            b"quiet",
            "the WRITE was done"
        );
        post_send(&mut d, 1, 0x08, Some((DATA + 0x3000, KEY)), DATA, 5);
        assert_eq!(
            cqe(&d, 0),
            (QP_A, 0, 0x48, 0),
            "only the signaled one completes"
        );
        assert_eq!(
            d.memory.get(CQ_PAGE + 32 + 31, 1)[0] & 0x80,
            0x80,
            "no second CQE"
        );
        put_send(&d, 0, 2, 0x08, Some((DATA + 0x3000, KEY)), DATA, 5);
        d.memory.put(QP_PAGE[0] + 128 + 7, &[0]);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 1).3, 0x02, "a WQE of size 0");
    }

    /// A later transition changes the responder's remote access only when its optional
    /// parameters say so (`MLX4_QP_OPTPAR_RWE`, bit 3): RTS2RTS with that bit and no
    /// access bits takes RDMA WRITE away; one without it keeps what INIT2RTR set.
    #[test]
    fn rts2rts_changes_remote_access_only_under_its_optional_parameter() {
        let mut d = setup();
        d.memory.put(DATA, &[9u8; 8]);
        let rts2rts = |d: &mut Driver, optpar: u32| {
            let mut mailbox = vec![0u8; 0x200];
            mailbox[0..4].copy_from_slice(&optpar.to_be_bytes());
            mailbox[8 + 0x7c..8 + 0x80].copy_from_slice(&CQN.to_be_bytes());
            mailbox[8 + 0x9c..8 + 0xa0].copy_from_slice(&CQN.to_be_bytes());
            d.memory.put(INBOX, &mailbox);
            assert_eq!(d.command(opcode::RTS2RTS_QP, 0, QP_B, INBOX, 0, false).0, 0);
        };
        rts2rts(&mut d, 0);
        post_send(&mut d, 0, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        assert_eq!(cqe(&d, 0), (QP_A, 0, 0x48, 0), "WRITE still allowed");
        assert_eq!(d.memory.get(DATA + 0x2000, 8), [9u8; 8]);
        rts2rts(&mut d, 1 << 3);
        post_send(&mut d, 1, 0x08, Some((DATA + 0x3000, KEY)), DATA, 8);
        assert_eq!(cqe(&d, 1).3, 0x13, "remote access error");
        assert_eq!(d.memory.get(DATA + 0x3000, 8), [0u8; 8], "nothing written");
    }

    #[test]
    fn send_write_read_and_a_bad_rkey() {
        let mut d = setup();
        let pattern: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        d.memory.put(DATA, &pattern);

        // SEND of 200 bytes into a 256-byte receive on the other port.
        post_recv(&d, 0, DATA + 0x1000, 256);
        post_send(&mut d, 0, 0x0a, None, DATA, 200);
        assert_eq!(d.memory.get(DATA + 0x1000, 200), pattern);
        assert_eq!(cqe(&d, 0), (QP_B, 200, 0x01, 0), "the receive, first");
        assert_eq!(cqe(&d, 1), (QP_A, 0, 0x4a, 0), "then the send");

        // RDMA WRITE and RDMA READ of the same bytes, by the R_Key.
        post_send(&mut d, 1, 0x08, Some((DATA + 0x2000, KEY)), DATA, 200);
        assert_eq!(d.memory.get(DATA + 0x2000, 200), pattern);
        post_send(
            &mut d,
            2,
            0x10,
            Some((DATA + 0x2000, KEY)),
            DATA + 0x3000,
            200,
        );
        assert_eq!(d.memory.get(DATA + 0x3000, 200), pattern);
        assert_eq!(
            cqe(&d, 3),
            (QP_A, 200, 0x50, 0),
            "the READ's completion has its length"
        );

        // A SEND with no receive posted waits (RNR), then lands when one is: the timer.
        post_send(&mut d, 3, 0x0a, None, DATA, 16);
        assert!(d.hca.needs_tick());
        assert_eq!(
            d.memory.get(CQ_PAGE + 32 * 4 + 31, 1),
            [0x80],
            "nothing completed yet"
        );
        post_recv(&d, 1, DATA + 0x4000, 64);
        d.hca.tick(&d.memory);
        assert_eq!(cqe(&d, 4).0, QP_B);
        assert_eq!(d.memory.get(DATA + 0x4000, 16), pattern[..16]);

        // A wrong R_Key: a remote access error, the QP to error, the next WQE flushed.
        post_send(&mut d, 4, 0x08, Some((DATA, KEY ^ 0x01)), DATA, 8);
        assert_eq!(cqe(&d, 6).3, 0x13, "remote access error");
        assert_eq!(cqe(&d, 6).2 & 0x1f, 0x1e, "an error CQE");
        post_send(&mut d, 5, 0x0a, None, DATA, 8);
        assert_eq!(cqe(&d, 7).3, 0x05, "flushed");
        assert!(d.errors().is_empty());
    }

    #[test]
    fn write_with_immediate_reports_the_length_and_atomics_are_big_endian() {
        let mut d = setup();
        let pattern: Vec<u8> = (0..200u32).map(|i| (i * 5 + 1) as u8).collect();
        d.memory.put(DATA, &pattern);

        // RDMA WRITE with immediate: the data goes by the R_Key, and the receive it
        // consumes reports the message's length (IBA 11.4.2.1, mlx4's byte_cnt).
        post_recv(&d, 0, DATA + 0x1000, 16);
        post_send(&mut d, 0, 0x09, Some((DATA + 0x2000, KEY)), DATA, 200);
        assert_eq!(d.memory.get(DATA + 0x2000, 200), pattern);
        assert_eq!(
            cqe(&d, 0),
            (QP_B, 200, 0x00, 0),
            "RDMA_WRITE_IMM, 200 bytes"
        );
        assert_eq!(
            d.memory.get(DATA + 0x1000, 16),
            [0; 16],
            "no data in the receive"
        );

        // A ConnectX-3 operates on remote memory as a big-endian 64-bit value and
        // returns its old bytes as they were (ConnectX-4 added a host-endian mode).
        let target = DATA + 0x3000;
        d.memory.put(target, &40u64.to_be_bytes());
        let atomic = |d: &mut Driver, index: u32, opcode: u8, swap_add: u64, compare: u64| {
            let mut wqe = [0u8; 64];
            wqe[3] = opcode;
            wqe[7] = 4;
            wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
            wqe[16..24].copy_from_slice(&target.to_be_bytes());
            wqe[24..28].copy_from_slice(&KEY.to_be_bytes());
            wqe[32..40].copy_from_slice(&swap_add.to_be_bytes());
            wqe[40..48].copy_from_slice(&compare.to_be_bytes());
            wqe[48..52].copy_from_slice(&8u32.to_be_bytes());
            wqe[52..56].copy_from_slice(&KEY.to_be_bytes());
            wqe[56..64].copy_from_slice(&(DATA + 0x4000).to_be_bytes());
            d.memory.put(QP_PAGE[0] + 64 * u64::from(index), &wqe);
            d.hca
                .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
            u64::from_be_bytes(d.memory.get(DATA + 0x4000, 8).try_into().unwrap())
        };
        assert_eq!(
            atomic(&mut d, 1, 0x12, 2, 0),
            40,
            "fetch-and-add returns 40"
        );
        assert_eq!(d.memory.get(target, 8), 42u64.to_be_bytes());
        assert_eq!(
            atomic(&mut d, 2, 0x11, 99, 7),
            42,
            "a missed compare returns 42"
        );
        assert_eq!(
            d.memory.get(target, 8),
            42u64.to_be_bytes(),
            "and writes nothing"
        );
        assert_eq!(atomic(&mut d, 3, 0x11, 99, 42), 42);
        assert_eq!(d.memory.get(target, 8), 99u64.to_be_bytes());
        assert!(d.errors().is_empty());
    }

    #[test]
    fn a_resized_cq_ends_its_old_buffer_with_a_resize_cqe_and_goes_on_in_the_new() {
        let mut d = setup();
        d.memory.put(DATA, &[7; 16]);
        post_recv(&d, 0, DATA + 0x1000, 64);
        post_send(&mut d, 0, 0x0a, None, DATA, 16);
        // Two completions outstanding (the receive, the send): a resize to 2 entries
        // cannot hold them, and changes nothing.
        const NEW_PAGE: u64 = BASE + 0x54_0000;
        mtt(&d, 11, NEW_PAGE);
        let resize = |d: &mut Driver, log_size: u32| {
            let mut cq = vec![0u8; 256];
            cq[0x0c..0x10].copy_from_slice(&(log_size << 24).to_be_bytes());
            cq[0x1c..0x20].copy_from_slice(&(11u32 * 8).to_be_bytes());
            d.memory.put(INBOX, &cq);
            d.command(opcode::MODIFY_CQ, 0, CQN, INBOX, 0, false).0
        };
        assert_ne!(resize(&mut d, 1), 0, "2 entries for 2 outstanding");
        assert_eq!(d.memory.get(CQ_PAGE + 32 * 2 + 31, 1), [0x80], "untouched");
        d.errors();

        // To 128 entries: the RESIZE CQE at index 2 of the old buffer (the driver's to
        // read: owner bit clear on the first lap), no event; the new buffer owned by the
        // device from index 3 on: positions 3..128 for the first lap (owner bit set),
        // 0..3 for indices 128..131 of the second (owner bit clear).
        assert_eq!(resize(&mut d, 7), 0);
        assert_eq!(d.memory.get(CQ_PAGE + 32 * 2 + 31, 1), [0x16]);
        for (position, owner) in [(0u64, 0), (2, 0), (3, 0x80), (127, 0x80)] {
            assert_eq!(
                d.memory.get(NEW_PAGE + 32 * position + 31, 1),
                [owner],
                "new CQE {position} is the device's"
            );
        }
        // The next completion: index 3, in the new buffer, the driver's.
        post_recv(&d, 1, DATA + 0x1000, 64);
        post_send(&mut d, 1, 0x0a, None, DATA, 16);
        let c = d.memory.get(NEW_PAGE + 32 * 3, 32);
        assert_eq!(u32::from_be_bytes(c[0..4].try_into().unwrap()), QP_B);
        assert_eq!(c[31], 0x01, "a receive, owner bit clear");
        assert_eq!(
            d.memory.get(CQ_PAGE + 32 * 3 + 31, 1),
            [0x80],
            "not the old buffer"
        );
        assert!(d.errors().is_empty());
    }
}

/// Fast registration and invalidation: what FRWR users (iSER, NFS/RDMA) post.
mod frwr {
    use super::rc::*;

    #[test]
    fn a_registered_key_takes_writes_until_it_is_invalidated() {
        let mut d = setup();
        // A fast-register MPT in the free state: 4 MTT entries from index 20.
        const FR_MPT: u32 = 6;
        let mut mpt = vec![0u8; 4096];
        mpt[0..4].copy_from_slice(&((3u32 << 28) | (1 << 10)).to_be_bytes());
        mpt[0x08..0x0c].copy_from_slice(&(FR_MPT << 8).rotate_left(24).to_be_bytes());
        mpt[0x0c..0x10].copy_from_slice(&(PD | (1 << 27)).to_be_bytes());
        mpt[0x2c..0x34].copy_from_slice(&(20u64 * 8).to_be_bytes());
        mpt[0x34..0x38].copy_from_slice(&4u32.to_be_bytes());
        d.memory.put(INBOX, &mpt);
        assert_eq!(
            d.command(opcode::SW2HW_MPT, 0, FR_MPT, INBOX, 0, false).0,
            0
        );
        let key = (FR_MPT << 8) | 0x23;
        let iova = 0x7000_0000u64;
        let target = DATA + 0x8000;
        // Before registration the key is refused.
        post_send(&mut d, 0, 0x08, Some((iova, key)), DATA, 8);
        assert_eq!(cqe(&d, 0).3, 0x13, "remote access error on a free MPT");

        let mut d = setup();
        d.memory.put(INBOX, &mpt);
        assert_eq!(
            d.command(opcode::SW2HW_MPT, 0, FR_MPT, INBOX, 0, false).0,
            0
        );
        // The page list the REG_MR WQE points at.
        d.memory.put(DATA + 0x7000, &(target | 1).to_be_bytes());
        let mut wqe = [0u8; 64];
        wqe[3] = 0x19;
        wqe[7] = 4;
        wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        let access = (1u32 << 27) | (1 << 28) | (1 << 30);
        wqe[16..20].copy_from_slice(&access.to_be_bytes());
        wqe[20..24].copy_from_slice(&key.to_be_bytes());
        wqe[24..32].copy_from_slice(&(DATA + 0x7000).to_be_bytes());
        wqe[32..40].copy_from_slice(&iova.to_be_bytes());
        wqe[40..48].copy_from_slice(&4096u64.to_be_bytes());
        wqe[52..56].copy_from_slice(&12u32.to_be_bytes());
        d.memory.put(QP_PAGE[0], &wqe);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 0), (QP_A, 0, 0x59, 0), "REG_MR completes");
        d.memory.put(DATA, b"frwr-ok!");
        post_send(&mut d, 1, 0x08, Some((iova + 100, key)), DATA, 8);
        assert_eq!(d.memory.get(target + 100, 8), b"frwr-ok!");
        // LOCAL_INV of the key: then the same write is refused.
        d.memory.put(QP_PAGE[0] + 128, &local_inv(key));
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 2), (QP_A, 0, 0x5b, 0), "LOCAL_INV completes");
        post_send(&mut d, 3, 0x08, Some((iova + 100, key)), DATA, 8);
        assert_eq!(cqe(&d, 3).3, 0x13, "the invalidated key is refused");
        assert!(d.errors().is_empty());
    }

    /// A free fast-register MPT at index 6 of `pd` (with the fast-register bit if
    /// `fast_reg`), room for `mtt_sz` MTT entries from index 20; its key with `variant`.
    fn fr_mpt(d: &mut Driver, pd: u32, fast_reg: bool, mtt_sz: u32) -> u32 {
        fr_mpt_flagged(d, pd, fast_reg, mtt_sz, 0)
    }

    /// `fr_mpt` with more flags in the MPT.
    fn fr_mpt_flagged(d: &mut Driver, pd: u32, fast_reg: bool, mtt_sz: u32, flags: u32) -> u32 {
        const FR_MPT: u32 = 6;
        let mut mpt = vec![0u8; 4096];
        mpt[0..4].copy_from_slice(&((3u32 << 28) | (1 << 10) | flags).to_be_bytes());
        mpt[0x08..0x0c].copy_from_slice(&(FR_MPT << 8).rotate_left(24).to_be_bytes());
        let pd_word = pd | if fast_reg { 1 << 27 } else { 0 };
        mpt[0x0c..0x10].copy_from_slice(&pd_word.to_be_bytes());
        mpt[0x2c..0x34].copy_from_slice(&(20u64 * 8).to_be_bytes());
        mpt[0x34..0x38].copy_from_slice(&mtt_sz.to_be_bytes());
        d.memory.put(INBOX, &mpt);
        assert_eq!(
            d.command(opcode::SW2HW_MPT, 0, FR_MPT, INBOX, 0, false).0,
            0
        );
        (FR_MPT << 8) | 0x23
    }

    /// A LOCAL_INV WQE (signaled) of `key`.
    fn local_inv(key: u32) -> [u8; 64] {
        let mut wqe = [0u8; 64];
        wqe[3] = 0x1b;
        wqe[7] = 2;
        wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        wqe[24..28].copy_from_slice(&key.to_be_bytes());
        wqe
    }

    /// The last of the first `n` CQEs that is QP A's.
    fn last_cqe_of_a(d: &Driver, n: u64) -> (u32, u32, u8, u8) {
        (0..n)
            .map(|i| cqe(d, i))
            .filter(|c| c.0 == QP_A)
            .last()
            .expect("a CQE of QP A")
    }

    /// Posts WQE `index` on QP A as written, and rings.
    fn post_wqe(d: &mut Driver, index: u64, wqe: &[u8; 64]) {
        d.memory.put(QP_PAGE[0] + 64 * index, wqe);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
    }

    /// A REG_MR WQE (signaled): `key` over `len` bytes at `iova` in pages of
    /// 2^`page_shift`, the page list at DATA + 0x7000, `access` in the WQE's bits.
    fn reg_mr(key: u32, access: u32, iova: u64, len: u64, page_shift: u32) -> [u8; 64] {
        let mut wqe = [0u8; 64];
        wqe[3] = 0x19;
        wqe[7] = 4;
        wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        wqe[16..20].copy_from_slice(&access.to_be_bytes());
        wqe[20..24].copy_from_slice(&key.to_be_bytes());
        wqe[24..32].copy_from_slice(&(DATA + 0x7000).to_be_bytes());
        wqe[32..40].copy_from_slice(&iova.to_be_bytes());
        wqe[40..48].copy_from_slice(&len.to_be_bytes());
        wqe[52..56].copy_from_slice(&page_shift.to_be_bytes());
        wqe
    }

    const LOCAL_WRITE: u32 = 1 << 28;
    const REMOTE_READ: u32 = 1 << 29;
    const REMOTE_WRITE: u32 = 1 << 30;
    const REMOTE_ATOMIC: u32 = 1 << 31;

    /// Fast registration refuses an MPT it may not write (another PD, no fast-register
    /// bit), more pages than the MPT's MTT range or pages of an unknown size, each with
    /// the hardware's syndrome (local protection 0x04, local QP operation 0x02); what it
    /// registers grants exactly the remote rights the WQE asks for.
    #[test]
    fn fast_registration_checks_the_mpt_and_grants_exactly_the_rights_asked() {
        let iova = 0x7000_0000u64;
        let all = LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE | REMOTE_ATOMIC;
        // (MPT's PD, fast-register bit, MTT entries, length, page shift, syndrome)
        let refusals = [
            (PD + 1, true, 4, 4096, 12, 0x04),
            (PD, false, 4, 4096, 12, 0x04),
            (PD, true, 4, 5 * 4096, 12, 0x02),
            (PD, true, 4, 4096, 11, 0x02),
            (PD, true, 4, 4096, 31, 0x02),
        ];
        for (pd, fast_reg, mtt_sz, len, shift, syndrome) in refusals {
            let mut d = setup();
            let key = fr_mpt(&mut d, pd, fast_reg, mtt_sz);
            post_wqe(&mut d, 0, &reg_mr(key, all, iova, len, shift));
            assert_eq!(
                cqe(&d, 0).3,
                syndrome,
                "PD {pd} fast_reg {fast_reg} {mtt_sz} entries, {len} bytes in 2^{shift} pages"
            );
        }
        // As many pages as the MPT holds: registered.
        let mut d = setup();
        let key = fr_mpt(&mut d, PD, true, 4);
        for i in 0..4u64 {
            let page = DATA + 0x8000 + 0x1000 * i;
            d.memory
                .put(DATA + 0x7000 + 8 * i, &(page | 1).to_be_bytes());
        }
        post_wqe(&mut d, 0, &reg_mr(key, all, iova, 4 * 4096, 12));
        assert_eq!(cqe(&d, 0), (QP_A, 0, 0x59, 0));
        // Inside the region only: 8 bytes at its last 4, or before its start, refused.
        for at in [iova + 4092, iova - 8] {
            let mut d = setup();
            let key = fr_mpt(&mut d, PD, true, 4);
            d.memory
                .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
            post_wqe(&mut d, 0, &reg_mr(key, all, iova, 4096, 12));
            post_send(&mut d, 1, 0x08, Some((at, key)), DATA, 8);
            assert_eq!(cqe(&d, 1).3, 0x13, "8 bytes at {at:#x}");
        }
        // Each right on its own: WRITE (0x08), READ (0x10), fetch-and-add (0x12) allowed
        // under it and refused without.
        for (right, op) in [
            (REMOTE_WRITE, 0x08),
            (REMOTE_READ, 0x10),
            (REMOTE_ATOMIC, 0x12),
        ] {
            for granted in [right, all & !right] {
                let mut d = setup();
                let key = fr_mpt(&mut d, PD, true, 4);
                d.memory
                    .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
                post_wqe(&mut d, 0, &reg_mr(key, granted, iova, 4096, 12));
                assert_eq!(cqe(&d, 0).3, 0, "registered");
                if op == 0x12 {
                    let mut wqe = [0u8; 64];
                    wqe[3] = op;
                    wqe[7] = 4;
                    wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
                    wqe[16..24].copy_from_slice(&(iova + 8).to_be_bytes());
                    wqe[24..28].copy_from_slice(&key.to_be_bytes());
                    wqe[32..40].copy_from_slice(&1u64.to_be_bytes());
                    wqe[48..52].copy_from_slice(&8u32.to_be_bytes());
                    wqe[52..56].copy_from_slice(&KEY.to_be_bytes());
                    wqe[56..64].copy_from_slice(&DATA.to_be_bytes());
                    post_wqe(&mut d, 1, &wqe);
                } else {
                    post_send(&mut d, 1, op, Some((iova + 8, key)), DATA, 8);
                }
                let expected = if granted == right { 0 } else { 0x13 };
                assert_eq!(
                    cqe(&d, 1).3,
                    expected,
                    "op {op:#x} with rights {granted:#x}"
                );
            }
        }
    }

    /// Posts WQE `index` on QP A: an RDMA READ of `len` bytes from DATA + 0x100 (under
    /// KEY) into `va` under `lkey`.
    fn read_into(d: &mut Driver, index: u64, len: u32, lkey: u32, va: u64) {
        let mut wqe = [0u8; 64];
        wqe[3] = 0x10;
        wqe[7] = 3;
        wqe[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        wqe[16..24].copy_from_slice(&(DATA + 0x100).to_be_bytes());
        wqe[24..28].copy_from_slice(&KEY.to_be_bytes());
        wqe[32..36].copy_from_slice(&len.to_be_bytes());
        wqe[36..40].copy_from_slice(&lkey.to_be_bytes());
        wqe[40..48].copy_from_slice(&va.to_be_bytes());
        post_wqe(d, index, &wqe);
    }

    /// What arrives through a fast-registered lkey needs the local write right the
    /// registration granted: an RDMA READ's response into a key registered without it is
    /// a local protection error (0x04), with it the data lands, and a registration after
    /// an invalidation grants only what it asks, not what the key had before.
    #[test]
    fn a_fast_registered_lkey_takes_what_arrives_only_with_local_write() {
        let iova = 0x7000_0000u64;
        // (the first registration's rights, whether it is invalidated and registered
        // again with remote read alone, the READ's syndrome)
        for (first, again, syndrome) in [
            (REMOTE_READ, false, 0x04),
            (REMOTE_READ | LOCAL_WRITE, false, 0),
            (REMOTE_READ | LOCAL_WRITE, true, 0x04),
        ] {
            let mut d = setup();
            let key = fr_mpt(&mut d, PD, true, 4);
            d.memory
                .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
            d.memory.put(DATA + 0x100, b"arrives!");
            post_wqe(&mut d, 0, &reg_mr(key, first, iova, 4096, 12));
            let mut next = 1;
            if again {
                post_wqe(&mut d, 1, &local_inv(key));
                post_wqe(&mut d, 2, &reg_mr(key, REMOTE_READ, iova, 4096, 12));
                next = 3;
            }
            read_into(&mut d, next, 8, key, iova + 16);
            let what = format!("{first:#x}, registered again: {again}");
            assert_eq!(cqe(&d, next).3, syndrome, "{what}");
            let landed = d.memory.get(DATA + 0x8000 + 16, 8) == b"arrives!";
            assert_eq!(landed, syndrome == 0, "{what}");
        }
    }

    /// A fast registration translates by its page list even where the driver left the
    /// MPT marked physical: the registration clears the flag.
    #[test]
    fn a_fast_registration_clears_the_physical_flag() {
        let iova = 0x7000_0000u64;
        let mut d = setup();
        let key = fr_mpt_flagged(&mut d, PD, true, 4, 1 << 9);
        d.memory
            .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
        post_wqe(&mut d, 0, &reg_mr(key, REMOTE_WRITE, iova, 4096, 12));
        d.memory.put(DATA, b"to page!");
        post_send(&mut d, 1, 0x08, Some((iova + 8, key)), DATA, 8);
        assert_eq!(cqe(&d, 1).3, 0, "written");
        assert_eq!(d.memory.get(DATA + 0x8000 + 8, 8), b"to page!");
    }

    /// A region over two pages that are not adjacent (the second before the first):
    /// what crosses the page boundary of the region goes to both, in order, whether the
    /// key is the R_Key of a WRITE, the lkey of a READ's response or of a SEND.
    #[test]
    fn a_region_over_scattered_pages_is_read_and_written_across_them() {
        let iova = 0x7000_0000u64;
        let (first, second) = (DATA + 0x9000, DATA + 0x8000);
        let mut d = setup();
        let key = fr_mpt(&mut d, PD, true, 4);
        d.memory.put(DATA + 0x7000, &(first | 1).to_be_bytes());
        d.memory.put(DATA + 0x7008, &(second | 1).to_be_bytes());
        let rights = LOCAL_WRITE | REMOTE_WRITE;
        post_wqe(&mut d, 0, &reg_mr(key, rights, iova, 8192, 12));
        let payload = datagram::pattern(32, 8);
        d.memory.put(DATA, &payload);
        post_send(&mut d, 1, 0x08, Some((iova + 4080, key)), DATA, 32);
        assert_eq!(cqe(&d, 1).3, 0, "written");
        assert_eq!(d.memory.get(first + 4080, 16), payload[..16]);
        assert_eq!(d.memory.get(second, 16), payload[16..]);
        // The same bytes back through the key as the SEND's lkey.
        put_send(&d, 0, 2, 0x0a, None, iova + 4080, 32);
        d.memory.put(QP_PAGE[0] + 64 * 2 + 20, &key.to_be_bytes());
        post_recv(&d, 0, DATA + 0x1000, 64);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(d.memory.get(DATA + 0x1000, 32), payload);
        // A READ's response into the key across the boundary the other way.
        d.memory.put(DATA + 0x100, &payload[..16]);
        read_into(&mut d, 3, 16, key, iova + 4088);
        assert_eq!(d.memory.get(first + 4088, 8), payload[..8]);
        assert_eq!(d.memory.get(second, 8), payload[8..16]);
        assert!(d.errors().is_empty());
    }

    /// One fast registration names at most 511 pages (`MLX4_MAX_FAST_REG_PAGES`),
    /// however many the MPT's MTT range could hold.
    #[test]
    fn a_fast_registration_names_at_most_511_pages() {
        for (pages, syndrome) in [(511u64, 0), (512, 0x02)] {
            let mut d = setup();
            let key = fr_mpt(&mut d, PD, true, 1024);
            for i in 0..pages {
                d.memory
                    .put(DATA + 0x7000 + 8 * i, &((DATA + 0x1000) | 1).to_be_bytes());
            }
            post_wqe(&mut d, 0, &reg_mr(key, REMOTE_WRITE, 0, pages << 12, 12));
            assert_eq!(cqe(&d, 0).3, syndrome, "{pages} pages");
        }
    }

    /// A fast-registered key used as an lkey: it translates through its page list, for
    /// its region only, and not once invalidated (local protection errors, 0x04).
    #[test]
    fn a_registered_key_as_an_lkey_covers_its_region_until_invalidated() {
        let iova = 0x7000_0000u64;
        let gather_through = |d: &mut Driver, index: u32, key: u32, va: u64| {
            put_send(d, 0, index, 0x0a, None, va, 16);
            d.memory.put(
                QP_PAGE[0] + 64 * u64::from(index & 15) + 20,
                &key.to_be_bytes(),
            );
            d.hca
                .bar2_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        };
        let registered = |d: &mut Driver| {
            let key = fr_mpt(d, PD, true, 4);
            d.memory
                .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
            post_wqe(d, 0, &reg_mr(key, LOCAL_WRITE, iova, 4096, 12));
            assert_eq!(cqe(d, 0).3, 0);
            key
        };
        let mut d = setup();
        let key = registered(&mut d);
        d.memory.put(DATA + 0x8008, b"through the MR!!");
        post_recv(&d, 0, DATA + 0x1000, 64);
        gather_through(&mut d, 1, key, iova + 8);
        assert_eq!(d.memory.get(DATA + 0x1000, 16), b"through the MR!!");
        post_recv(&d, 1, DATA + 0x1100, 64);
        gather_through(&mut d, 2, key, iova + 4088);
        let sender = last_cqe_of_a(&d, 5);
        assert_eq!(sender.3, 0x04, "16 bytes at the region's last 8");
        let mut d = setup();
        let key = registered(&mut d);
        post_recv(&d, 0, DATA + 0x1000, 64);
        gather_through(&mut d, 1, key, iova - 8);
        let sender = last_cqe_of_a(&d, 3);
        assert_eq!(sender.3, 0x04, "16 bytes from 8 before the region");

        let mut d = setup();
        let key = registered(&mut d);
        post_wqe(&mut d, 1, &local_inv(key));
        assert_eq!(cqe(&d, 1).3, 0);
        post_recv(&d, 0, DATA + 0x1000, 64);
        gather_through(&mut d, 2, key, iova + 8);
        assert_eq!(cqe(&d, 2).3, 0x04, "an invalidated lkey");
    }

    /// LOCAL_INV names the key exactly: another variant of the MPT's key, or an MPT of
    /// another PD, is a local protection error.
    #[test]
    fn local_invalidate_of_a_key_not_held_is_refused() {
        let iova = 0x7000_0000u64;
        for (variant, other_pd) in [(0x24, false), (0x23, true)] {
            let mut d = setup();
            let key = fr_mpt(&mut d, if other_pd { PD + 1 } else { PD }, true, 4);
            d.memory
                .put(DATA + 0x7000, &((DATA + 0x8000) | 1).to_be_bytes());
            if !other_pd {
                post_wqe(&mut d, 0, &reg_mr(key, REMOTE_WRITE, iova, 4096, 12));
                assert_eq!(cqe(&d, 0).3, 0);
            } else {
                // An MPT of PD + 1 cannot be fast-registered from this QP: put it in the
                // valid state with the key directly, as SW2HW_MPT of a registered MR.
                let mut mpt = vec![0u8; 4096];
                mpt[0..4].copy_from_slice(&((1u32 << 9) | (0x1f << 10)).to_be_bytes());
                mpt[0x08..0x0c].copy_from_slice(&key.rotate_left(24).to_be_bytes());
                mpt[0x0c..0x10].copy_from_slice(&(PD + 1).to_be_bytes());
                d.memory.put(INBOX, &mpt);
                assert_eq!(d.command(opcode::SW2HW_MPT, 0, 7, INBOX, 0, false).0, 0);
            }
            let named = if other_pd {
                (7 << 8) | 0x23
            } else {
                (key & !0xff) | variant
            };
            let inval = local_inv(named);
            let at = u64::from(!other_pd);
            post_wqe(&mut d, at, &inval);
            assert_eq!(
                cqe(&d, at).3,
                0x04,
                "variant {variant:#x} other PD {other_pd}"
            );
        }
    }
}

/// BAR2 mapped into the guest and watched (`cx3-device --doorbells mapped`): a doorbell
/// register shared by the QPs and the CQs of a UAR page keeps only the last value
/// written, so the device serves the whole page.
mod watched {
    use super::rc::*;

    fn interrupts(d: &mut Driver) -> usize {
        d.hca
            .take_events()
            .into_iter()
            .filter(|e| matches!(e, HcaEvent::Interrupt { .. }))
            .count()
    }

    /// The arm request `mlx4_cq_arm` writes to the CQ's doorbell record: sequence
    /// number, REQ_NOT, consumer index.
    fn arm_record(d: &Driver, sn: u32, consumer: u32) {
        d.memory.put(DB_RECORDS + 0x100, &consumer.to_be_bytes());
        d.memory.put(
            DB_RECORDS + 0x104,
            &((sn << 28) | (2 << 24) | consumer).to_be_bytes(),
        );
    }

    /// What another CQ of the page left in the shared CQ doorbell register.
    fn cq_doorbell(d: &mut Driver) {
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&((1u32 << 28) | (2 << 24) | 0x99).to_be_bytes());
        d.hca.bar2_watched_write(&d.memory, UAR_PAGE + 0x20, &value);
    }

    fn rearm_eq(d: &mut Driver, consumer: u32) {
        let eq_doorbell = UAR_PAGE + 0x800 + 8 * u64::from(EQN % 4);
        d.hca.bar2_write(
            &d.memory,
            eq_doorbell,
            &(consumer | (1 << 31)).to_be_bytes(),
        );
    }

    /// `mlx4_write64` on a host without 64-bit MMIO writes the CQ doorbell as two
    /// 32-bit halves: the first waits for the second, and only both arm the CQ.
    #[test]
    fn a_cq_doorbell_in_two_halves_arms_once_both_are_written() {
        let mut d = setup();
        d.memory.put(DATA, &[7u8; 8]);
        let arm = ((2u32 << 24) | CQN).to_be_bytes();
        d.hca.bar2_write(&d.memory, UAR_PAGE + 0x20, &arm);
        post_send(&mut d, 0, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        assert_eq!(cqe(&d, 0).0, QP_A);
        assert_eq!(interrupts(&mut d), 0, "half a doorbell arms nothing");
        d.hca.bar2_write(&d.memory, UAR_PAGE + 0x20, &arm);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x24, &1u32.to_be_bytes());
        post_send(&mut d, 1, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        assert_eq!(cqe(&d, 1).0, QP_A);
        assert_eq!(interrupts(&mut d), 1, "both halves armed the CQ");
        assert!(d.errors().is_empty());
    }

    /// Of the CQ doorbell's commands only REQ_NOT_SOL (1) and REQ_NOT (2) arm the CQ,
    /// written to the register or, on a watched page, to the arm record.
    #[test]
    fn only_the_two_arm_commands_arm_a_cq() {
        for (cmd, arms) in [(0u32, false), (1, true), (2, true), (3, false)] {
            for watched in [false, true] {
                let mut d = setup();
                post_send(&mut d, 0, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
                assert_eq!(cqe(&d, 0).0, QP_A, "one completion outstanding");
                interrupts(&mut d);
                if watched {
                    d.memory.put(
                        DB_RECORDS + 0x104,
                        &((1u32 << 28) | (cmd << 24)).to_be_bytes(),
                    );
                    cq_doorbell(&mut d);
                } else {
                    let word0 = ((cmd << 24) | CQN).to_be_bytes();
                    d.hca.bar2_write(&d.memory, UAR_PAGE + 0x20, &word0);
                    d.hca
                        .bar2_write(&d.memory, UAR_PAGE + 0x24, &0u32.to_be_bytes());
                }
                assert_eq!(
                    interrupts(&mut d),
                    usize::from(arms),
                    "command {cmd}, watched {watched}"
                );
            }
        }
    }

    #[test]
    fn a_page_doorbell_serves_every_qp_and_cq_of_the_page() {
        let mut d = setup();
        let pattern: Vec<u8> = (0..64u32).map(|i| (i * 3 + 1) as u8).collect();
        d.memory.put(DATA, &pattern);

        // A and B each post an RDMA WRITE; the register holds only B's QPN.
        put_send(&d, 0, 0, 0x08, Some((DATA + 0x2000, KEY)), DATA, 64);
        put_send(&d, 1, 0, 0x08, Some((DATA + 0x3000, KEY)), DATA, 64);
        d.hca
            .bar2_watched_write(&d.memory, UAR_PAGE + 0x14, &(QP_B << 8).to_be_bytes());
        assert_eq!(d.memory.get(DATA + 0x2000, 64), pattern, "A's WRITE");
        assert_eq!(d.memory.get(DATA + 0x3000, 64), pattern, "B's WRITE");
        let mut qpns = [cqe(&d, 0).0, cqe(&d, 1).0];
        qpns.sort_unstable();
        assert_eq!(qpns, [QP_A, QP_B]);
        assert!(d.errors().is_empty());

        // The CQ's arm request is in its record (sn 1: no event yet); the register
        // holds another CQ's doorbell. The next completion raises the event.
        arm_record(&d, 1, 2);
        cq_doorbell(&mut d);
        put_send(&d, 0, 1, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        d.hca
            .bar2_watched_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 2).0, QP_A);
        assert_eq!(interrupts(&mut d), 1, "the armed CQ's event");
        rearm_eq(&mut d, 1);

        // That request is spent: another doorbell of the page does not arm it again.
        cq_doorbell(&mut d);
        put_send(&d, 0, 2, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        d.hca
            .bar2_watched_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(cqe(&d, 3).0, QP_A);
        assert_eq!(interrupts(&mut d), 0, "no event without a new request");

        // The driver's next request names the event it saw (sn 2): armed again.
        arm_record(&d, 2, 4);
        cq_doorbell(&mut d);
        put_send(&d, 0, 3, 0x08, Some((DATA + 0x2000, KEY)), DATA, 8);
        d.hca
            .bar2_watched_write(&d.memory, UAR_PAGE + 0x14, &(QP_A << 8).to_be_bytes());
        assert_eq!(interrupts(&mut d), 1);
        assert!(d.errors().is_empty());
    }
}

/// mlx4_core sizes its profile beyond what QUERY_DEV_CAP offers (2^18 QPs on a small
/// guest); the device takes each table up to its own limit and refuses one step more.
#[test]
fn init_hca_takes_each_table_up_to_the_devices_limit_and_refuses_more() {
    let limits = [
        (init_hca::LOG_QP, 20),
        (init_hca::LOG_CQ, 20),
        (init_hca::LOG_SRQ, 20),
        (init_hca::LOG_EQ, 10),
        (init_hca::LOG_MPT_SZ, 22),
        (init_hca::LOG_MC_ENTRY_SZ, 12),
        (init_hca::LOG_MC_HASH_SZ, 16),
        (init_hca::LOG_MC_TABLE_SZ, 16),
    ];
    for (field, largest) in limits {
        let mut d = Driver::new();
        d.start_firmware();
        let mut mailbox = init_hca_mailbox();
        mailbox[field] = largest + 1;
        d.memory.put(INBOX, &mailbox);
        assert_eq!(
            d.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0,
            CmdStatus::ExceedsLimit as u8,
            "field {field:#x} at 2^{}",
            largest + 1
        );
        let errors = d.errors();
        assert!(
            errors[0].contains("more than QUERY_DEV_CAP offers"),
            "{errors:?}"
        );
        mailbox[field] = largest;
        d.memory.put(INBOX, &mailbox);
        assert_eq!(
            d.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0,
            0,
            "field {field:#x} at 2^{largest}"
        );
        assert!(d.errors().is_empty());
    }
}

/// The HCR runs a command when one write covers its status word with the go bit
/// (`mlx4_cmd_post` writes it whole, last): writes to the other words, or to half of the
/// status word, run nothing.
#[test]
fn a_command_runs_once_its_whole_status_word_is_written_with_go() {
    let mut d = Driver::new();
    let go_nop = hcr::GO_BIT | u32::from(opcode::QUERY_FW);
    d.write_word(hcr::OUT_PARAM + 4, OUTBOX as u32);
    d.write_word(hcr::OUT_PARAM, (OUTBOX >> 32) as u32);
    // The status word's first half, go bit included.
    d.hca.bar0_write(
        &d.memory,
        HCR_BASE + hcr::STATUS as u64,
        &go_nop.to_be_bytes()[..2],
    );
    assert_eq!(d.commands_run(), (0, 0), "half a status word runs nothing");
    // Another word written meanwhile runs nothing either.
    d.write_word(hcr::IN_MODIFIER, 0);
    assert_eq!(d.commands_run(), (0, 0));
    // Nor its second half.
    d.hca.bar0_write(
        &d.memory,
        HCR_BASE + hcr::STATUS as u64 + 2,
        &go_nop.to_be_bytes()[2..],
    );
    assert_eq!(d.commands_run(), (0, 0));
    d.write_word(hcr::STATUS, go_nop);
    assert_eq!(d.commands_run(), (1, 0));
    assert_eq!(d.read_word(hcr::STATUS) & hcr::GO_BIT, 0);
    // The status byte is the device's to write: whatever the driver left there, a
    // command that succeeds reports 0.
    d.write_word(hcr::STATUS, go_nop | 0xff << hcr::STATUS_SHIFT);
    assert_eq!(d.commands_run(), (2, 0));
    assert_eq!(d.read_word(hcr::STATUS) >> hcr::STATUS_SHIFT, 0);
    // The status word written whole without go runs nothing.
    d.write_word(hcr::STATUS, u32::from(opcode::QUERY_FW));
    assert_eq!(d.commands_run(), (2, 0));
    // The HCR written in one burst, status word last, runs one command.
    let mut burst = [0u8; 28];
    burst[hcr::OUT_PARAM + 4..hcr::OUT_PARAM + 8].copy_from_slice(&(OUTBOX as u32).to_be_bytes());
    burst[hcr::STATUS..hcr::STATUS + 4].copy_from_slice(&go_nop.to_be_bytes());
    d.hca.bar0_write(&d.memory, HCR_BASE, &burst);
    assert_eq!(d.commands_run(), (3, 0));
    // What a command reads back is what it was given: the HCR holds the words written.
    assert_eq!(d.read_word(hcr::OUT_PARAM + 4), OUTBOX as u32);
    assert!(d.errors().is_empty());
}

/// `mlx4_get_ownership`: the first reader of the ownership word takes the device and
/// reads 0; a second reads 1 until the owner writes 0 back.
#[test]
fn the_ownership_word_goes_to_the_first_reader_until_released() {
    let mut d = Driver::new();
    let read = |d: &mut Driver| {
        let mut b = [0u8; 4];
        d.hca.bar0_read(OWNER_BASE, &mut b);
        u32::from_be_bytes(b)
    };
    assert_eq!(read(&mut d), 0, "free: the reader owns it now");
    assert_eq!(read(&mut d), 1, "owned");
    d.hca.bar0_write(&d.memory, OWNER_BASE, &1u32.to_be_bytes());
    assert_eq!(read(&mut d), 1, "writing non-zero does not release it");
    d.hca.bar0_write(&d.memory, OWNER_BASE, &0u32.to_be_bytes());
    assert_eq!(read(&mut d), 0, "released, and taken again");
    assert!(d.errors().is_empty());
}

/// The reset register (`mlx4_reset`): the reset value stops the firmware and asks the
/// transport, once, to reset the PCI function; any other value is a driver error and
/// resets nothing.
#[test]
fn the_reset_register_resets_on_its_value_only() {
    let mut d = Driver::new();
    d.init_hca();
    let reset = RESET_BASE + RESET_OFFSET;
    d.hca.bar0_write(&d.memory, reset, &2u32.to_be_bytes());
    let errors = d.errors();
    assert!(errors[0].contains("not the reset value"), "{errors:?}");
    assert!(!d.hca.reset_requested());
    assert_eq!(
        d.command(opcode::NOP, 0, 0, 0, 0, false).0,
        0,
        "still running"
    );
    d.hca
        .bar0_write(&d.memory, reset, &RESET_VALUE.to_be_bytes());
    assert!(d.hca.reset_requested(), "the transport resets the function");
    assert!(!d.hca.reset_requested(), "once");
    assert_eq!(
        d.command(opcode::NOP, 0, 0, 0, 0, false).0,
        CmdStatus::BadSysState as u8,
        "the firmware stopped"
    );
    assert!(
        d.hca.summary().contains("firmware Reset"),
        "{}",
        d.hca.summary()
    );
    let summary = d.hca.summary();
    assert!(summary.contains("ICM 0 KiB mapped"), "{summary}");
}

/// A BAR0 write where no register is, or a UAR write of a size no doorbell has, is a
/// driver mistake the device reports.
#[test]
fn writes_where_no_register_is_are_reported() {
    let mut d = Driver::new();
    d.hca.bar0_write(&d.memory, 0x1234, &[1, 2, 3, 4]);
    d.hca.bar0_write(&d.memory, layout::CLR_INT_OFFSET, &[0; 8]);
    d.hca.bar2_write(&d.memory, 0x14, &[0; 2]);
    // The EQ doorbells are the four 8-byte slots from 0x800: not 0x804, nor 0x820.
    d.hca.bar2_write(&d.memory, 0x804, &[0; 4]);
    d.hca.bar2_write(&d.memory, 0x820, &[0; 4]);
    let errors = d.errors();
    assert_eq!(
        errors.len(),
        4,
        "the clear-interrupt register is one: {errors:?}"
    );
    assert!(errors[0].contains("no register there"), "{errors:?}");
    assert!(
        errors[1..].iter().all(|e| e.contains("no doorbell there")),
        "{errors:?}"
    );
    let mut b = [0xffu8; 8];
    d.hca.bar2_read(0x14, &mut b);
    assert_eq!(b, [0; 8], "doorbells read as zero");
}

/// The BAR2 area the transport maps and watches is the UAR QUERY_DEV_CAP reports, and
/// its EQ doorbell pages cover the EQs it offers (four a page).
#[test]
fn the_uar_layout_agrees_with_query_dev_cap() {
    let mut d = Driver::new();
    d.start_firmware();
    assert_eq!(
        d.command(opcode::QUERY_DEV_CAP, 0, 0, 0, OUTBOX, false).0,
        0
    );
    let cap = d.memory.get(OUTBOX, 0x100);
    let uar_bytes = (1u64 << 20) << (cap[query_dev_cap::UAR_SZ] & 0x3f);
    assert_eq!(
        u64::from(layout::UAR_PAGES),
        uar_bytes >> layout::UAR_PAGE_SHIFT
    );
    let eqs = 1u32 << (cap[query_dev_cap::MAX_EQ] & 0x0f);
    assert_eq!(layout::EQ_DOORBELL_PAGES, eqs / 4);
}

/// What the device did, as `cx3-device` prints it when it stops, and the firmware's
/// progress as information events.
#[test]
fn the_summary_counts_commands_and_failures() {
    let mut d = Driver::new();
    d.init_hca();
    let (run, failed) = d.commands_run();
    assert!(run >= 7, "{}", d.hca.summary());
    // init_hca maps 16 pages of ICM (the MTT table) and 64 (the context tables).
    let summary = d.hca.summary();
    assert!(summary.contains("ICM 320 KiB mapped"), "{summary}");
    assert_eq!(failed, 0);
    d.command(0x7ee, 0, 0, 0, 0, false);
    assert_eq!(d.commands_run(), (run + 1, 1));
    let mut d = Driver::new();
    d.start_firmware();
    let info: Vec<String> = d
        .hca
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            HcaEvent::Info(line) => Some(line),
            _ => None,
        })
        .collect();
    assert!(
        info.iter().any(|l| l.starts_with("firmware running")),
        "{info:?}"
    );
}

/// An EQ context for `Driver::sw2hw_eq`: `log_size` entries in 4 KiB pages whose MTT
/// entries start at byte `mtt_offset` of the MTT table, on MSI-X `vector`, armed.
fn eq_context(log_size: u8, vector: u8, mtt_offset: u32) -> Vec<u8> {
    use hw_mlx4::wire::fw::eq_context as f;
    let mut ctx = vec![0u8; 4096];
    ctx[f::FLAGS..f::FLAGS + 4].copy_from_slice(&(9u32 << 8).to_be_bytes());
    ctx[f::LOG_EQ_SIZE] = log_size;
    ctx[f::INTR] = vector;
    ctx[f::MTT_BASE_ADDR_L..f::MTT_BASE_ADDR_L + 4].copy_from_slice(&mtt_offset.to_be_bytes());
    ctx
}

impl Driver {
    /// SW2HW_EQ with `ctx`: the status and the device's complaint, if any.
    fn sw2hw_eq(&mut self, eqn: u32, ctx: &[u8]) -> (u8, Vec<String>) {
        self.memory.put(INBOX, ctx);
        let status = self.command(opcode::SW2HW_EQ, 0, eqn, INBOX, 0, false).0;
        (status, self.errors())
    }

    /// The MTT entry at `index` of the table `init_hca` mapped.
    fn put_mtt(&self, index: u64, entry: u64) {
        self.memory
            .put(BASE + 0x30_0000 + 8 * index, &entry.to_be_bytes());
    }
}

#[test]
fn an_eq_context_the_device_cannot_take_is_refused() {
    let mut d = Driver::new();
    d.init_hca();
    d.put_mtt(0, (BASE + 0x40_0000) | 1);
    let (status, errors) = d.sw2hw_eq(1, &eq_context(23, 0, 0));
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("of 2^23 entries"), "{errors:?}");
    // 2^22 entries is the largest the context takes (this test's memory is too small
    // for it, which the device finds later).
    let (_, errors) = d.sw2hw_eq(1, &eq_context(22, 0, 0));
    assert!(!errors[0].contains("of 2^22 entries"), "{errors:?}");
    let mut ctx = eq_context(6, 0, 0);
    ctx[hw_mlx4::wire::fw::eq_context::PAGE_OFFSET + 1] = 0x40;
    let (status, errors) = d.sw2hw_eq(1, &ctx);
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("inside its first page"), "{errors:?}");
    let vectors = layout::MSIX_VECTORS as u8;
    let (status, errors) = d.sw2hw_eq(1, &eq_context(6, vectors, 0));
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("MSI-X vector"), "{errors:?}");
    assert_eq!(d.sw2hw_eq(1, &eq_context(6, vectors - 1, 0)), (0, vec![]));
    let (status, errors) = d.sw2hw_eq(1, &eq_context(6, 0, 0));
    assert_eq!(status, CmdStatus::BadResourceState as u8, "EQ 1 twice");
    assert!(errors[0].contains("already in hardware"), "{errors:?}");
}

/// The MTT lives in ICM the driver mapped: an entry must be mapped whole and present.
#[test]
fn an_eq_whose_mtt_entry_is_missing_or_split_is_refused() {
    let mut d = Driver::new();
    d.init_hca();
    // Not present (bit 0 clear).
    d.put_mtt(0, BASE + 0x40_0000);
    let (status, errors) = d.sw2hw_eq(1, &eq_context(6, 0, 0));
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("is not present"), "{errors:?}");
    // The last entry of the 16-page ICM chunk `init_hca` mapped: mapped whole.
    let last = (16 * 4096 - 8) / 8;
    d.put_mtt(last, (BASE + 0x40_0000) | 1);
    assert_eq!(
        d.sw2hw_eq(1, &eq_context(6, 0, (8 * last) as u32)),
        (0, vec![])
    );
    // The entry after it is not mapped at all.
    let (status, errors) = d.sw2hw_eq(2, &eq_context(6, 0, (8 * last + 8) as u32));
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("is not mapped"), "{errors:?}");
    // An MTT offset of 2^32 (its high byte in MTT_BASE_ADDR_H): far past the table.
    let mut ctx = eq_context(6, 0, 0);
    ctx[hw_mlx4::wire::fw::eq_context::MTT_BASE_ADDR_H] = 1;
    let (status, errors) = d.sw2hw_eq(2, &ctx);
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(
        errors[0].contains("ICM 0x110000000 is not mapped"),
        "{errors:?}"
    );
    // An MTT table that starts 4 bytes before the chunk's end: its first entry is split.
    let mut d = Driver::new();
    d.start_firmware();
    assert_eq!(
        d.vpm(opcode::MAP_ICM, &[(0x1000_0000, BASE + 0x30_0000, 0)]),
        0
    );
    let mut mailbox = init_hca_mailbox();
    mailbox[init_hca::MTT_BASE..init_hca::MTT_BASE + 8]
        .copy_from_slice(&0x1000_0ffcu64.to_be_bytes());
    d.memory.put(INBOX, &mailbox);
    assert_eq!(d.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0, 0);
    let (status, errors) = d.sw2hw_eq(1, &eq_context(6, 0, 0));
    assert_eq!(status, CmdStatus::BadParam as u8);
    assert!(errors[0].contains("straddles a chunk"), "{errors:?}");
}

/// Command completions and port changes, each mapped to an EQ of its own, land in it.
#[test]
fn each_event_type_goes_to_the_eq_it_is_mapped_to() {
    let mut d = Driver::new();
    d.init_hca();
    let pages = [BASE + 0x40_0000, BASE + 0x41_0000];
    for (i, page) in pages.iter().enumerate() {
        d.put_mtt(i as u64, page | 1);
        let vector = 3 + i as u8;
        assert_eq!(
            d.sw2hw_eq(4 + i as u32, &eq_context(6, vector, 8 * i as u32)),
            (0, vec![])
        );
    }
    // Command events (0x0a) to EQ 4, port changes (0x09) to EQ 5.
    assert_eq!(d.command(opcode::MAP_EQ, 0, 4, 1 << 0x0a, 0, false).0, 0);
    assert_eq!(d.command(opcode::MAP_EQ, 0, 5, 1 << 0x09, 0, false).0, 0);
    // Both ports initialized (the link is up), then the SM moves port 1 to ARMED and
    // ACTIVE: the second Set raises a PORT_CHANGE (active) to EQ 5, and its completion
    // goes to EQ 4.
    for port in [1, 2] {
        assert_eq!(d.command(opcode::INIT_PORT, 0, port, 0, 0, false).0, 0);
    }
    d.hca.take_events();
    let mut mad = mad(0x01, 0x02, 0x0015, 0);
    for state in [3, 4] {
        mad[64 + 32] = state;
        d.memory.put(INBOX, &mad);
        assert_eq!(
            d.command(opcode::MAD_IFC, 3, 1, INBOX, OUTBOX, state == 4)
                .0,
            0
        );
    }
    let eqe = |d: &Driver, eq: usize| d.memory.get(pages[eq], 32);
    assert_eq!(eqe(&d, 0)[1], 0x0a, "the command's completion in EQ 4");
    assert_eq!(
        (eqe(&d, 1)[1], eqe(&d, 1)[3]),
        (0x09, 4),
        "port 1 active in EQ 5"
    );
    assert_eq!(eqe(&d, 1)[12] >> 4, 1, "port 1");
    let events = d.hca.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, HcaEvent::DriverError(_))),
        "{events:?}"
    );
    let interrupts: Vec<HcaEvent> = events
        .into_iter()
        .filter(|e| matches!(e, HcaEvent::Interrupt { .. }))
        .collect();
    assert_eq!(
        interrupts,
        [
            HcaEvent::Interrupt { vector: 4 },
            HcaEvent::Interrupt { vector: 3 }
        ]
    );
}

/// EQ doorbells: a consumer index ahead of what the device produced is a driver error;
/// one a whole EQ behind (every entry unconsumed) is not.
#[test]
fn an_eq_consumer_index_ahead_of_the_producer_is_reported() {
    let mut d = Driver::new();
    d.init_hca();
    d.create_eq(4, BASE + 0x40_0000);
    // EQ 4's doorbell: UAR page 1, the first of its four.
    let doorbell = 4096 + 0x800;
    for _ in 0..64 {
        assert_eq!(d.command(opcode::NOP, 0, 0x1f, 0, 0, true).0, 0);
    }
    let errors = d.errors();
    assert!(errors.is_empty(), "{errors:?}");
    // The EQ is full: a 65th event would overrun it.
    d.command(opcode::NOP, 0, 0x1f, 0, 0, true);
    let errors = d.errors();
    assert!(errors[0].contains("EQ 4 overrun"), "{errors:?}");
    // Consumer 0 with 64 produced: a whole EQ behind, fine.
    d.hca.bar2_write(&d.memory, doorbell, &0u32.to_be_bytes());
    assert!(d.errors().is_empty());
    // Consumer 65: ahead of the producer.
    d.hca.bar2_write(&d.memory, doorbell, &65u32.to_be_bytes());
    let errors = d.errors();
    assert!(errors[0].contains("ahead of the producer"), "{errors:?}");
}

/// The status of one command does not stay in the HCR for the next, and an immediate
/// answer is 64 bits wide (SET_ICM_SIZE's auxiliary pages for a huge ICM).
#[test]
fn the_hcr_status_and_out_param_are_each_commands_own() {
    let mut d = Driver::new();
    d.start_firmware();
    assert_eq!(
        d.command(opcode::INIT_HCA, 0, 0, 0xdead_0000_0000, 0, false)
            .0,
        CmdStatus::InternalError as u8
    );
    assert_eq!(d.command(opcode::NOP, 0, 0, 0, 0, false).0, 0);
    let (status, aux) = d.command(opcode::SET_ICM_SIZE, 0, 0, 1 << 60, 0, false);
    assert_eq!((status, aux), (0, 1 << 40), "one aux page per MiB");
    d.errors();
}

impl Driver {
    /// Hands `count` one-page VPM entries to `op`, 256 a command (a mailbox's worth),
    /// virtual addresses from `virt` on, physical pages from `BASE + 0x80_0000` on; the
    /// status of each command.
    fn vpm_pages(&mut self, op: u16, count: usize, virt: u64) -> Vec<u8> {
        let entries: Vec<(u64, u64, u32)> = (0..count as u64)
            .map(|i| (virt + 4096 * i, BASE + 0x80_0000 + 4096 * (i % 256), 0))
            .collect();
        entries.chunks(256).map(|c| self.vpm(op, c)).collect()
    }
}

/// The firmware area, the auxiliary ICM and the ICM each take up to what the device
/// tracks, over as many commands as the driver needs, and refuse one entry more.
#[test]
fn vpm_commands_take_up_to_the_devices_limits_and_refuse_more() {
    for (op, limit) in [(opcode::MAP_FA, 4096), (opcode::MAP_ICM_AUX, 4096)] {
        let mut d = Driver::new();
        if op == opcode::MAP_ICM_AUX {
            d.start_firmware();
        }
        let statuses = d.vpm_pages(op, limit, 0);
        assert!(statuses.iter().all(|&s| s == 0), "{op:#x}: {statuses:?}");
        assert_eq!(
            d.vpm_pages(op, 1, 0),
            [CmdStatus::ExceedsLimit as u8],
            "{op:#x}: one entry beyond {limit}"
        );
        assert_eq!(d.errors().len(), 1);
    }
    let mut d = Driver::new();
    d.start_firmware();
    let statuses = d.vpm_pages(opcode::MAP_ICM, 1 << 16, 0x1000_0000);
    assert!(statuses.iter().all(|&s| s == 0));
    assert_eq!(
        d.vpm_pages(opcode::MAP_ICM, 1, 0x8000_0000),
        [CmdStatus::ExceedsLimit as u8]
    );
    let errors = d.errors();
    assert!(errors[0].contains("more ICM chunks"), "{errors:?}");
}

/// A CQ context for SW2HW_CQ / MODIFY_CQ: `log_size` entries at MTT offset 80 (entry 10),
/// completions to EQ `eqn`, its doorbell record at `DB`.
fn cq_context(log_size: u32, eqn: u8) -> Vec<u8> {
    let mut cq = vec![0u8; 4096];
    cq[0x0c..0x10].copy_from_slice(&((log_size << 24) | 1).to_be_bytes());
    cq[0x17] = eqn;
    cq[0x1c..0x20].copy_from_slice(&80u32.to_be_bytes());
    cq[0x38..0x40].copy_from_slice(&(BASE + 0x53_0000).to_be_bytes());
    cq
}

/// The firmware's refusals, each with its status and a line naming what was wrong: what
/// a driver bug looks like from the device.
#[test]
fn commands_on_what_is_not_there_or_out_of_range_are_refused() {
    let mut d = Driver::new();
    d.init_hca();
    d.create_eq(4, BASE + 0x40_0000);
    d.put_mtt(10, (BASE + 0x52_0000) | 1);
    d.memory.put(INBOX, &cq_context(6, 4));
    assert_eq!(d.command(opcode::SW2HW_CQ, 0, 1, INBOX, 0, false).0, 0);
    let mut mpt = vec![0u8; 0x100];
    mpt[0x0c..0x10].copy_from_slice(&1u32.to_be_bytes());
    let mut mod_stat = vec![0u8; 0x100];
    mod_stat[0x02] = 1;
    mod_stat[0x03] = 1;
    let ok = CmdStatus::Ok;
    // (command, op_mod, in_mod, in_param's mailbox, status, what the error says)
    type Case = (u16, u8, u32, Option<Vec<u8>>, CmdStatus, &'static str);
    let cases: &[Case] = &[
        (
            opcode::SW2HW_CQ,
            0,
            2,
            Some(cq_context(23, 4)),
            CmdStatus::BadParam,
            "of 2^23 entries",
        ),
        (
            opcode::SW2HW_CQ,
            0,
            1,
            Some(cq_context(6, 4)),
            CmdStatus::BadResourceState,
            "already in hardware",
        ),
        (
            opcode::HW2SW_CQ,
            0,
            3,
            None,
            CmdStatus::BadResourceState,
            "CQ 0x3 is not in hardware",
        ),
        (
            opcode::MODIFY_CQ,
            0,
            3,
            Some(cq_context(6, 4)),
            CmdStatus::BadResourceState,
            "CQ 0x3 is not in hardware",
        ),
        (
            opcode::MODIFY_CQ,
            2,
            1,
            Some(cq_context(6, 4)),
            CmdStatus::BadParam,
            "op_modifier 2",
        ),
        (opcode::MODIFY_CQ, 1, 1, Some(cq_context(6, 4)), ok, ""),
        (
            opcode::SW2HW_MPT,
            0,
            1 << 12,
            Some(mpt.clone()),
            CmdStatus::BadIndex,
            "MPT",
        ),
        (opcode::SW2HW_MPT, 0, 7, Some(mpt.clone()), ok, ""),
        (
            opcode::SW2HW_MPT,
            0,
            7,
            Some(mpt.clone()),
            CmdStatus::BadResourceState,
            "0x7 is already in hardware",
        ),
        (
            opcode::HW2SW_MPT,
            0,
            8,
            None,
            CmdStatus::BadResourceState,
            "0x8 is not in hardware",
        ),
        (opcode::HW2SW_MPT, 0, 7, None, ok, ""),
        (
            opcode::SW2HW_SRQ,
            0,
            1,
            Some(mpt.clone()),
            CmdStatus::BadIndex,
            "SRQ",
        ),
        (
            opcode::HW2SW_SRQ,
            0,
            0,
            None,
            CmdStatus::BadResourceState,
            "0x0 is not in hardware",
        ),
        (
            opcode::HW2SW_EQ,
            0,
            9,
            None,
            CmdStatus::BadResourceState,
            "EQ 9 is not in hardware",
        ),
        (
            opcode::MAP_EQ,
            0,
            9,
            None,
            CmdStatus::BadResourceState,
            "MAP_EQ to EQ 9",
        ),
        (
            opcode::SET_PORT,
            1,
            1,
            Some(vec![0; 0x100]),
            CmdStatus::BadOp,
            "(Ethernet)",
        ),
        (
            opcode::SET_PORT,
            0,
            3,
            Some(vec![0; 0x100]),
            CmdStatus::BadIndex,
            "port",
        ),
        (
            opcode::DIAG_RPRT,
            1,
            0,
            None,
            CmdStatus::BadParam,
            "only 2 is reported",
        ),
        (
            opcode::READ_MCG,
            0,
            1,
            None,
            CmdStatus::BadIndex,
            "MCG entry",
        ),
        (
            opcode::MOD_STAT_CFG,
            0,
            0,
            Some(mod_stat),
            CmdStatus::BadParam,
            "ICM pages of 2^1",
        ),
        (
            opcode::UNMAP_ICM,
            0,
            1,
            None,
            CmdStatus::IcmError,
            "nothing mapped there",
        ),
    ];
    for (op, op_mod, in_mod, mailbox, status, says) in cases {
        let in_param = match mailbox {
            Some(m) => {
                d.memory.put(INBOX, m);
                INBOX
            }
            None => 0x2000_0000,
        };
        let got = d.command(*op, *op_mod, *in_mod, in_param, OUTBOX, false).0;
        let errors = d.errors();
        assert_eq!(got, *status as u8, "{op:#x} {in_mod:#x}: {errors:?}");
        if *status == ok {
            assert!(errors.is_empty(), "{op:#x}: {errors:?}");
        } else {
            assert!(
                errors.len() == 1 && errors[0].contains(says),
                "{op:#x} {in_mod:#x}: {errors:?} should say {says:?}"
            );
        }
    }
    // 2^22 CQEs is the largest CQ the context takes (this memory is too small for it).
    d.memory.put(INBOX, &cq_context(22, 4));
    d.command(opcode::SW2HW_CQ, 0, 2, INBOX, 0, false);
    let errors = d.errors();
    assert!(!errors[0].contains("of 2^22 entries"), "{errors:?}");
}

/// A QP through every transition the firmware has, QUERY_QP reporting each state in
/// the PRM's encoding, and each transition refused from a state it does not start in.
#[test]
fn a_qp_walks_the_state_machine_and_query_qp_reports_each_state() {
    let mut d = Driver::new();
    d.init_hca();
    let qpn = 0x40;
    let state = |d: &mut Driver| {
        assert_eq!(d.command(opcode::QUERY_QP, 0, qpn, 0, OUTBOX, false).0, 0);
        d.memory.get(OUTBOX + 8, 1)[0] >> 4
    };
    assert_eq!(state(&mut d), 0, "a QP never created is in RESET");
    // An SQ of 16 WQEs of 64 bytes in one page (MTT entry 0), handed over empty.
    let sq = BASE + 0x50_0000;
    d.put_mtt(0, sq | 1);
    for i in 0..16 {
        d.memory.put(sq + 64 * i, &[0x80]);
    }
    let mut mailbox = vec![0u8; 0x200];
    mailbox[8 + 0x0a] = (4 << 3) | 2;
    d.memory.put(INBOX, &mailbox);
    let walk = [
        (opcode::RST2INIT_QP, 1),
        (opcode::INIT2INIT_QP, 1),
        (opcode::INIT2RTR_QP, 2),
        (opcode::RTR2RTS_QP, 3),
        (opcode::RTS2RTS_QP, 3),
        (opcode::RTS2SQD_QP, 5),
        (opcode::SQD2SQD_QP, 5),
        (opcode::SQD2RTS_QP, 3),
        (opcode::TO_ERR_QP, 6),
        (opcode::TO_RST_QP, 0),
        (opcode::TO_ERR_QP, 6),
    ];
    for (op, prm) in walk {
        assert_eq!(d.command(op, 0, qpn, INBOX, 0, false).0, 0, "{op:#x}");
        assert_eq!(state(&mut d), prm, "after {op:#x}");
    }
    let errors = d.errors();
    assert!(errors.is_empty(), "{errors:?}");
    // From ERR, only TO_RST and TO_ERR go anywhere.
    for op in [
        opcode::RST2INIT_QP,
        opcode::INIT2INIT_QP,
        opcode::INIT2RTR_QP,
        opcode::RTR2RTS_QP,
        opcode::RTS2RTS_QP,
        opcode::SQERR2RTS_QP,
        opcode::RTS2SQD_QP,
        opcode::SQD2SQD_QP,
        opcode::SQD2RTS_QP,
    ] {
        assert_eq!(
            d.command(op, 0, qpn, INBOX, 0, false).0,
            CmdStatus::BadQpState as u8,
            "{op:#x} from ERR"
        );
        assert_eq!(state(&mut d), 6);
    }
    assert_eq!(d.errors().len(), 9);
    // A context byte a later transition leaves zero keeps what an earlier one set.
    d.command(opcode::TO_RST_QP, 0, qpn, 0, 0, false);
    let mut mailbox = vec![0u8; 0x200];
    mailbox[8 + 0x10] = 0xab;
    d.memory.put(INBOX, &mailbox);
    assert_eq!(d.command(opcode::RST2INIT_QP, 0, qpn, INBOX, 0, false).0, 0);
    d.memory.put(INBOX, &[0u8; 0x200]);
    assert_eq!(d.command(opcode::INIT2RTR_QP, 0, qpn, INBOX, 0, false).0, 0);
    state(&mut d);
    assert_eq!(d.memory.get(OUTBOX + 8 + 0x10, 1)[0], 0xab);
}

/// Multicast groups: MGID_HASH is a function of the GID within the hash table INIT_HCA
/// sized; an entry written reads back, truncated to the entry size, and an entry
/// written as zeros is gone.
#[test]
fn multicast_entries_and_the_gid_hash() {
    let mut d = Driver::new();
    d.start_firmware();
    let mut mailbox = init_hca_mailbox();
    mailbox[init_hca::LOG_MC_ENTRY_SZ] = 6; // 64-byte entries
    mailbox[init_hca::LOG_MC_HASH_SZ] = 3; // 8 buckets
    mailbox[init_hca::LOG_MC_TABLE_SZ] = 4; // 16 entries
    d.memory.put(INBOX, &mailbox);
    assert_eq!(d.command(opcode::INIT_HCA, 0, 0, INBOX, 0, false).0, 0);
    let mut hashes = std::collections::BTreeSet::new();
    for i in 0..64u8 {
        let gid = [0xff, 0x12, 0x40, 0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i];
        d.memory.put(INBOX, &gid);
        let (status, hash) = d.command(opcode::MGID_HASH, 0, 0, INBOX, 0, false);
        assert_eq!(status, 0);
        assert!(hash < 8, "bucket {hash} of 8");
        assert_eq!(
            d.command(opcode::MGID_HASH, 0, 0, INBOX, 0, false).1,
            hash,
            "the same GID, the same bucket"
        );
        hashes.insert(hash);
    }
    assert_eq!(hashes.len(), 8, "64 GIDs spread over every bucket");
    let entry: Vec<u8> = (1..=128).collect();
    d.memory.put(INBOX, &entry);
    assert_eq!(d.command(opcode::WRITE_MCG, 0, 15, INBOX, 0, false).0, 0);
    assert_eq!(d.command(opcode::READ_MCG, 0, 15, 0, OUTBOX, false).0, 0);
    assert_eq!(
        d.memory.get(OUTBOX, 64),
        entry[..64],
        "the entry, 64 bytes of it"
    );
    d.memory.put(INBOX, &[0u8; 128]);
    assert_eq!(d.command(opcode::WRITE_MCG, 0, 15, INBOX, 0, false).0, 0);
    d.memory.put(OUTBOX, &[0xee; 64]);
    assert_eq!(d.command(opcode::READ_MCG, 0, 15, 0, OUTBOX, false).0, 0);
    assert_eq!(d.memory.get(OUTBOX, 64), [0u8; 64]);
    assert_eq!(
        d.command(opcode::READ_MCG, 0, 16, 0, OUTBOX, false).0,
        CmdStatus::BadIndex as u8
    );
    // QUERY_HCA gives INIT_HCA's mailbox back, with the core clock.
    assert_eq!(d.command(opcode::QUERY_HCA, 0, 0, 0, OUTBOX, false).0, 0);
    let out = d.memory.get(OUTBOX, init_hca::IN_SIZE);
    assert_eq!(out[init_hca::LOG_MC_HASH_SZ], 3);
    assert_eq!(out[init_hca::LOG_QP], 10);
    assert_eq!(u16::from_be_bytes([out[0x0c], out[0x0d]]), 427, "MHz");
    assert_eq!(d.errors().len(), 1);
}

/// MAP_EQ moves an event type to the EQ it names; unmapping drops it (no EQ takes it).
#[test]
fn map_eq_moves_and_unmaps_an_event_type() {
    let mut d = Driver::new();
    d.init_hca();
    let pages = [BASE + 0x40_0000, BASE + 0x41_0000];
    for (i, page) in pages.iter().enumerate() {
        d.put_mtt(i as u64, page | 1);
        assert_eq!(
            d.sw2hw_eq(4 + i as u32, &eq_context(6, 3, 8 * i as u32)),
            (0, vec![])
        );
    }
    let command_events = 1u64 << 0x0a;
    let nop = |d: &mut Driver| assert_eq!(d.command(opcode::NOP, 0, 0x1f, 0, 0, true).0, 0);
    let first_eqe = |d: &Driver, eq: usize| d.memory.get(pages[eq], 32)[1];
    assert_eq!(
        d.command(opcode::MAP_EQ, 0, 4, command_events, 0, false).0,
        0
    );
    assert_eq!(
        d.command(opcode::MAP_EQ, 0, 5, command_events, 0, false).0,
        0
    );
    nop(&mut d);
    assert_eq!(
        (first_eqe(&d, 0), first_eqe(&d, 1)),
        (0, 0x0a),
        "moved to EQ 5"
    );
    // Unmap from EQ 5 (bit 31 of the modifier): the event goes nowhere.
    assert_eq!(
        d.command(opcode::MAP_EQ, 0, 5 | 1 << 31, command_events, 0, false)
            .0,
        0
    );
    d.hca.take_events();
    nop(&mut d);
    assert_eq!(first_eqe(&d, 0), 0, "nothing in EQ 4");
    assert_eq!(
        d.memory.get(pages[1] + 32, 32)[1],
        0,
        "nor a second EQE in EQ 5"
    );
    let dropped = d
        .hca
        .take_events()
        .into_iter()
        .any(|e| matches!(e, HcaEvent::Info(ref l) if l.contains("no EQ mapped, dropped")));
    assert!(dropped);
}

/// Every refused command is reported by its PRM name and number (the name is what a
/// reader of cx3-device's log looks for): each opcode is refused here, on a device whose
/// firmware has not started, or with a mailbox outside memory.
#[test]
fn a_refused_command_is_reported_by_its_name() {
    macro_rules! named {
        ($($op:ident),* $(,)?) => { [$((opcode::$op, stringify!($op))),*] };
    }
    let mut ops = named!(
        SYS_EN,
        MAP_FA,
        UNMAP_FA,
        RUN_FW,
        MOD_STAT_CFG,
        QUERY_DEV_CAP,
        QUERY_FW,
        QUERY_ADAPTER,
        INIT_HCA,
        CLOSE_HCA,
        INIT_PORT,
        CLOSE_PORT,
        QUERY_HCA,
        QUERY_PORT,
        SENSE_PORT,
        HW_HEALTH_CHECK,
        SET_PORT,
        SET_NODE,
        QUERY_FUNC,
        MAP_ICM,
        UNMAP_ICM,
        MAP_ICM_AUX,
        UNMAP_ICM_AUX,
        SET_ICM_SIZE,
        ACCESS_REG,
        GET_OP_REQ,
        SW2HW_MPT,
        QUERY_MPT,
        HW2SW_MPT,
        READ_MTT,
        WRITE_MTT,
        SYNC_TPT,
        MAP_EQ,
        SW2HW_EQ,
        HW2SW_EQ,
        QUERY_EQ,
        SW2HW_CQ,
        HW2SW_CQ,
        QUERY_CQ,
        MODIFY_CQ,
        SW2HW_SRQ,
        HW2SW_SRQ,
        QUERY_SRQ,
        ARM_SRQ,
        RST2INIT_QP,
        INIT2RTR_QP,
        RTR2RTS_QP,
        RTS2RTS_QP,
        SQERR2RTS_QP,
        RTS2SQD_QP,
        SQD2SQD_QP,
        SQD2RTS_QP,
        QUERY_QP,
        INIT2INIT_QP,
        CONF_SPECIAL_QP,
        MAD_IFC,
        MAD_DEMUX,
        READ_MCG,
        WRITE_MCG,
        MGID_HASH,
        DIAG_RPRT,
        NOP,
        QUERY_IF_STAT,
        SET_IF_STAT,
    )
    .to_vec();
    // The PRM's names of the two transitions to ERR and RESET.
    ops.extend([
        (opcode::TO_ERR_QP, "2ERR_QP"),
        (opcode::TO_RST_QP, "2RST_QP"),
    ]);
    for (op, name) in ops {
        let mut d = Driver::new();
        let nowhere = 0xdead_0000_0000;
        let status = d.command(op, 0, 0, nowhere, nowhere, false).0;
        assert_ne!(status, 0, "{name}");
        let errors = d.errors();
        let expected = format!("command {name} ({op:#x})");
        assert!(
            errors.len() == 1 && errors[0].starts_with(&expected),
            "{errors:?} should start with {expected:?}"
        );
    }
    let mut d = Driver::new();
    d.command(0x7ee, 0, 0, 0, 0, false);
    assert!(d.errors()[0].starts_with("command an unknown opcode (0x7ee)"));
}

/// The SMA's state as the data path reads it: a port's logical state, the LID bits its
/// LMC leaves to the path, and the index of a P_Key in its table.
mod sma {
    use super::mad;
    use hw_mlx4::model::hca::{PortState, Sma};

    /// A LID-routed SubnSet of `attr` with `attr_mod`, `data` at the SMP data offset.
    fn set(sma: &mut Sma, port: usize, attr: u16, attr_mod: u32, data: &[u8]) -> u16 {
        let mut mad = mad(0x01, 0x02, attr, attr_mod);
        mad[64..64 + data.len()].copy_from_slice(data);
        let mut reply = [0u8; 256];
        sma.process(port, &mad, &mut reply).expect("an SMP");
        u16::from_be_bytes([reply[4], reply[5]])
    }

    /// A LID-routed SubnGet of `attr` with `attr_mod`: the MAD status and the SMP data.
    fn get(sma: &mut Sma, port: usize, attr: u16, attr_mod: u32) -> (u16, Vec<u8>) {
        let mad = mad(0x01, 0x01, attr, attr_mod);
        let mut reply = [0u8; 256];
        sma.process(port, &mad, &mut reply).expect("an SMP");
        (
            u16::from_be_bytes([reply[4], reply[5]]),
            reply[64..128].to_vec(),
        )
    }

    /// A MAD of a class the firmware has no agent for (vendor, congestion management),
    /// which mlx4_ib forwards too: a GetResp with status 0x0008, unsupported class.
    #[test]
    fn a_class_without_an_agent_gets_unsupported_class() {
        let mut sma = Sma::new();
        let mut mad = [0u8; 256];
        mad[0] = 1;
        mad[1] = 0x09; // vendor class
        mad[2] = 1;
        mad[3] = 0x01;
        let mut reply = [0u8; 256];
        sma.process(0, &mad, &mut reply).expect("a MAD");
        assert_eq!(reply[3], 0x81, "GetResp");
        assert_eq!(&reply[4..6], &[0x00, 0x08]);
    }

    /// Attribute modifiers are 32 bits: a block or port number in the upper bytes is
    /// out of range, not a modifier of 0. PortInfo's modifier 0 is the port asked.
    #[test]
    fn attribute_modifiers_are_read_whole() {
        let mut sma = Sma::new();
        assert_eq!(
            get(&mut sma, 0, 0x0014, 0x0100_0000).0,
            0x001c,
            "GUIDInfo block"
        );
        assert_eq!(get(&mut sma, 0, 0x0014, 0x0001_0000).0, 0x001c);
        assert_eq!(
            get(&mut sma, 0, 0x0016, 0x0000_0100).0,
            0x001c,
            "P_Key block 256"
        );
        assert_eq!(
            get(&mut sma, 0, 0x0015, 0x0000_0200).0,
            0x001c,
            "PortInfo port 512"
        );
        let mut info = [0u8; 64];
        info[16..18].copy_from_slice(&0x22u16.to_be_bytes());
        assert_eq!(
            set(&mut sma, 1, 0x0015, 0, &info),
            0,
            "modifier 0: port 2 itself"
        );
        assert_eq!(sma.lid(1), 0x22);
        let (status, data) = get(&mut sma, 1, 0x0015, 0);
        assert_eq!((status, &data[16..18]), (0, &[0u8, 0x22][..]));
        assert_eq!(data[28], 2, "local port 2");
    }

    /// PortInfo Set: the neighbour MTU (1..5) and operational VLs (1..4) from their upper
    /// nibbles; PortState DOWN takes an ACTIVE port back to INIT with the link up
    /// (raising a down event) or to DOWN without it; an unknown state is refused.
    #[test]
    fn port_info_set_takes_mtu_vls_and_state() {
        let mut sma = Sma::new();
        sma.set_port_enabled(0, true);
        sma.set_port_enabled(1, true);
        let mut info = [0u8; 64];
        info[36] = (4 << 4) | 3; // 2048-byte neighbour MTU, SM SL 3
        info[43] = 2 << 4; // two operational VLs
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        let (_, data) = get(&mut sma, 0, 0x0015, 1);
        assert_eq!(data[36], (4 << 4) | 3);
        assert_eq!(data[43] >> 4, 2);
        info[36] = 7 << 4; // no such MTU: kept
        info[43] = 9 << 4;
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        let (_, data) = get(&mut sma, 0, 0x0015, 1);
        assert_eq!((data[36] >> 4, data[43] >> 4), (4, 2));
        info[36] = 0;
        info[43] = 0;
        for state in [3, 4] {
            info[32] = state;
            assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        }
        assert_eq!(sma.state(0), Some(PortState::Active));
        assert!(!sma.take_events().is_empty(), "active");
        info[32] = 1;
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        assert_eq!(
            sma.state(0),
            Some(PortState::Init),
            "DOWN with the link up: INIT"
        );
        assert_eq!(sma.take_events().len(), 1, "a down event");
        sma.set_port_enabled(1, false);
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        assert_eq!(
            sma.state(0),
            Some(PortState::Down),
            "without the link: DOWN"
        );
        info[32] = 4;
        assert_eq!(
            set(&mut sma, 0, 0x0015, 1, &info),
            0x001c,
            "ACTIVE from DOWN"
        );
        info[32] = 6;
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0x001c, "no state 6");
    }

    /// PortPhysicalState Disabled (`ibportstate ... disable`) takes the cable's link down
    /// (both ends DOWN, a down event for each ACTIVE one, the disabled end reading
    /// Disabled and the other Polling) until Polling enables it again: both ends INIT,
    /// for the SM to make ACTIVE. Other values change nothing.
    #[test]
    fn port_physical_state_disables_and_enables_the_link() {
        let mut sma = Sma::new();
        sma.set_port_enabled(0, true);
        sma.set_port_enabled(1, true);
        let mut info = [0u8; 64];
        for port in [0, 1] {
            for state in [3, 4] {
                info[32] = state;
                assert_eq!(set(&mut sma, port, 0x0015, port as u32 + 1, &info), 0);
            }
        }
        sma.take_events();
        info[32] = 0;
        info[33] = 5 << 4; // LinkUp, as a Set copied from a Get has it: no change
        assert_eq!(set(&mut sma, 1, 0x0015, 2, &info), 0);
        assert_eq!(sma.state(1), Some(PortState::Active));
        info[33] = 3 << 4; // Disabled
        assert_eq!(set(&mut sma, 1, 0x0015, 2, &info), 0);
        assert_eq!(
            (sma.state(0), sma.state(1)),
            (Some(PortState::Down), Some(PortState::Down))
        );
        assert_eq!(sma.take_events().len(), 2, "both ends went down");
        assert!(!sma.link_up());
        assert_eq!(get(&mut sma, 1, 0x0015, 2).1[33] >> 4, 3, "Disabled");
        assert_eq!(get(&mut sma, 0, 0x0015, 1).1[33] >> 4, 2, "Polling");
        info[33] = 2 << 4; // Polling
        assert_eq!(set(&mut sma, 1, 0x0015, 2, &info), 0);
        assert!(sma.link_up());
        assert_eq!(
            (sma.state(0), sma.state(1)),
            (Some(PortState::Init), Some(PortState::Init))
        );
        assert_eq!(get(&mut sma, 1, 0x0015, 2).1[33] >> 4, 5, "LinkUp");
    }

    /// The tables: P_Key blocks of 32 read back where they were set; the SL-to-VL, VL
    /// arbitration and GUIDInfo Sets are accepted (the device keeps its own).
    #[test]
    fn pkey_blocks_and_the_fixed_tables() {
        let mut sma = Sma::new();
        let mut block = [0u8; 64];
        for i in 0..32u16 {
            block[2 * usize::from(i)..2 * usize::from(i) + 2]
                .copy_from_slice(&(0x8100 + i).to_be_bytes());
        }
        assert_eq!(set(&mut sma, 0, 0x0016, 1, &block), 0);
        assert_eq!(sma.pkey_index(0, 0x8100), Some(32));
        assert_eq!(sma.pkey_index(0, 0x811f), Some(63));
        let (status, data) = get(&mut sma, 0, 0x0016, 1);
        assert_eq!((status, &data[..]), (0, &block[..]));
        let (_, first) = get(&mut sma, 0, 0x0016, 0);
        assert_eq!(&first[..4], &[0xff, 0xff, 0, 0], "block 0 untouched");
        for attr in [0x0017, 0x0018, 0x0014] {
            assert_eq!(set(&mut sma, 0, attr, 0, &[0; 64]), 0, "Set {attr:#x}");
        }
        let (status, arb) = get(&mut sma, 0, 0x0018, 1);
        assert_eq!(status, 0);
        assert_eq!(&arb[..4], &[0, 64, 1, 64], "VL0 and VL1 at weight 64");
    }

    /// PortCounters (the 32-bit set perfquery reads first) at their IBA offsets, for
    /// the port asked or, with PortSelect 0, the port the MAD came in on.
    #[test]
    fn port_counters_at_their_offsets() {
        let mut sma = Sma::new();
        sma.count_xmit(1, 400);
        sma.count_rcv(1, 80, true, false);
        sma.count_rcv(1, 80, false, false);
        sma.count_rcv(1, 80, false, true);
        let pma = |sma: &mut Sma, port: usize, attr: u16, select: u8| {
            let mut mad = mad(0x04, 0x01, attr, 0);
            mad[65] = select;
            let mut reply = [0u8; 256];
            sma.process(port, &mad, &mut reply).expect("a MAD");
            reply[64..128].to_vec()
        };
        for (port, select) in [(1, 0), (0, 2)] {
            let c = pma(&mut sma, port, 0x0012, select);
            let be16 = |at: usize| u16::from_be_bytes([c[at], c[at + 1]]);
            let be32 = |at: usize| u32::from_be_bytes(c[at..at + 4].try_into().unwrap());
            assert_eq!(be16(8), 1, "PortRcvErrors: the one no QP took");
            assert_eq!(be16(22), 1, "VL15Dropped");
            assert_eq!((be32(24), be32(28)), (100, 60), "data, in words");
            assert_eq!((be32(32), be32(36)), (1, 3), "packets");
        }
        let ext = pma(&mut sma, 0, 0x001d, 0);
        assert_eq!(&ext[8..16], &[0; 8], "port 1 sent nothing");
    }

    #[test]
    fn port_state_lmc_and_pkey_index() {
        let mut sma = Sma::new();
        assert_eq!(sma.state(0), Some(PortState::Down));
        assert_eq!(sma.state(2), None, "two ports");
        sma.set_port_enabled(0, true);
        assert_eq!(
            sma.state(1),
            Some(PortState::Down),
            "the cable needs both ends"
        );
        sma.set_port_enabled(1, true);
        assert_eq!(sma.state(1), Some(PortState::Init));

        // PortInfo: LID 0x40 with LMC 2 on port 1 (attribute modifier: the port).
        let mut info = [0u8; 64];
        info[16..18].copy_from_slice(&0x40u16.to_be_bytes());
        info[34] = 2;
        assert_eq!(set(&mut sma, 0, 0x0015, 1, &info), 0);
        assert_eq!(sma.lid(0), 0x40);
        assert_eq!(sma.lmc_mask(0), 0b11);
        assert_eq!(sma.lmc_mask(1), 0, "port 2 keeps LMC 0");

        // The default table holds the full default P_Key at index 0.
        assert_eq!(sma.pkey_index(0, 0xffff), Some(0));
        assert_eq!(
            sma.pkey_index(0, 0x7fff),
            Some(0),
            "limited membership alike"
        );
        // Block 0 of port 1's table: 0xffff, then 0x8001 at index 1, 0x0002 at index 2.
        let mut block = [0u8; 64];
        block[0..2].copy_from_slice(&0xffffu16.to_be_bytes());
        block[2..4].copy_from_slice(&0x8001u16.to_be_bytes());
        block[4..6].copy_from_slice(&0x0002u16.to_be_bytes());
        assert_eq!(set(&mut sma, 0, 0x0016, 0, &block), 0);
        assert_eq!(sma.pkey_index(0, 0x8001), Some(1));
        assert_eq!(sma.pkey_index(0, 0x0001), Some(1));
        assert_eq!(sma.pkey_index(0, 0x8002), Some(2));
        assert_eq!(sma.pkey_index(0, 0x8003), None);
        assert_eq!(
            sma.pkey_index(0, 0x0000),
            None,
            "the invalid P_Key matches no slot"
        );
        assert_eq!(sma.pkey_index(1, 0x8001), None, "port 2's table is its own");
    }
}

/// Datagrams: UD QPs and the special QPs (QP0 and QP1, the MLX transport) on the two
/// ports of the cable, over the `rc` rig's CQ, EQ, memory key and LIDs (port 1 LID 1,
/// port 2 LID 2).
mod datagram {
    use super::rc::{self, CQN, CQ_PAGE, DATA, DB_RECORDS, KEY, PD, QP_B, UAR_PAGE};
    use super::*;

    /// UD QPs: A and D on port 1; B and C on port 2.
    pub(super) const UD_A: u32 = 0x50;
    pub(super) const UD_B: u32 = 0x51;
    const UD_C: u32 = 0x52;
    const UD_D: u32 = 0x53;
    pub(super) const QKEY: u32 = 0x0b1b_0000;
    /// CONF_SPECIAL_QP's base: QP0 of ports 1 and 2 at 0x48 and 0x49, QP1 at 0x4a and 0x4b.
    const SPECIAL: u32 = 0x48;
    const QP1_QKEY: u32 = 0x8001_0000;
    /// The slots of the QPs' buffers and doorbell records.
    pub(super) const A: usize = 0;
    pub(super) const B: usize = 1;
    const C: usize = 2;
    const QP0_1: usize = 3;
    const QP0_2: usize = 4;
    const QP1_1: usize = 5;
    const QP1_2: usize = 6;
    const D: usize = 7;
    pub(super) const ST_UD: u8 = 3;
    const ST_MLX: u8 = 7;
    /// `MLX4_INVALID_LKEY`: the end of a receive's scatter list.
    const INVALID_LKEY: u32 = 0x100;

    /// The buffer of the QP in `slot`: its SQ of 16 WQEs of 128 bytes, then its RQ of
    /// 16 WQEs of 64 bytes at 2048.
    pub(super) fn page(slot: usize) -> u64 {
        BASE + 0x54_0000 + 0x1_0000 * slot as u64
    }

    pub(super) fn db_record(slot: usize) -> u64 {
        DB_RECORDS + 0x20 + 8 * slot as u64
    }

    /// The RST2INIT mailbox of a QP of transport `st` on `port` (0 or 1), its buffer
    /// and doorbell record in `slot` (its MTT entry written, its SQ stamped empty).
    pub(super) fn qp_mailbox(d: &Driver, slot: usize, st: u8, port: u8, qkey: u32) -> Vec<u8> {
        let mtt_index = 20 + slot as u32;
        rc::mtt(d, u64::from(mtt_index), page(slot));
        for i in 0..16 {
            d.memory.put(page(slot) + 128 * i, &[0x80]);
        }
        let mut mailbox = vec![0u8; 4096];
        let ctx = &mut mailbox[8..];
        ctx[0x01] = st;
        ctx[0x04..0x08].copy_from_slice(&PD.to_be_bytes());
        ctx[0x0c..0x10].copy_from_slice(&1u32.to_be_bytes()); // UAR page 1
        ctx[0x09] = (4 << 3) | 2; // RQ: 16 WQEs of 64 bytes
        ctx[0x0a] = (4 << 3) | 3; // SQ: 16 WQEs of 128 bytes
        ctx[0x18 + 0x20] = (port << 6) | 0x3f;
        ctx[0x7c..0x80].copy_from_slice(&CQN.to_be_bytes());
        ctx[0x9c..0xa0].copy_from_slice(&CQN.to_be_bytes());
        ctx[0xa0..0xa8].copy_from_slice(&db_record(slot).to_be_bytes());
        ctx[0xa8..0xac].copy_from_slice(&qkey.to_be_bytes());
        ctx[0xcc..0xd0].copy_from_slice(&(8 * mtt_index).to_be_bytes());
        mailbox
    }

    /// QP `qpn` of transport `st` on `port` (0 or 1), taken to RTS, its buffer in `slot`.
    fn create(d: &mut Driver, qpn: u32, slot: usize, st: u8, port: u8, qkey: u32) {
        let mailbox = qp_mailbox(d, slot, st, port, qkey);
        d.memory.put(INBOX, &mailbox);
        for op in [opcode::RST2INIT_QP, opcode::INIT2RTR_QP, opcode::RTR2RTS_QP] {
            assert_eq!(d.command(op, 0, qpn, INBOX, 0, false).0, 0, "{qpn:#x}");
        }
    }

    /// The rc rig with a multicast table of 8 entries of 1 KiB, four UD QPs and the
    /// special QPs of both ports.
    pub(super) fn rig() -> Driver {
        let mut init = init_hca_mailbox();
        init[init_hca::LOG_MC_ENTRY_SZ] = 10;
        init[init_hca::LOG_MC_HASH_SZ] = 2;
        init[init_hca::LOG_MC_TABLE_SZ] = 3;
        let mut d = rc::setup_with(&init);
        create(&mut d, UD_A, A, ST_UD, 0, QKEY);
        create(&mut d, UD_B, B, ST_UD, 1, QKEY);
        create(&mut d, UD_C, C, ST_UD, 1, QKEY);
        create(&mut d, UD_D, D, ST_UD, 0, QKEY);
        assert_eq!(
            d.command(opcode::CONF_SPECIAL_QP, 0, SPECIAL, 0, 0, false)
                .0,
            0
        );
        create(&mut d, SPECIAL, QP0_1, ST_MLX, 0, 0);
        create(&mut d, SPECIAL + 1, QP0_2, ST_MLX, 1, 0);
        create(&mut d, SPECIAL + 2, QP1_1, ST_MLX, 0, QP1_QKEY);
        create(&mut d, SPECIAL + 3, QP1_2, ST_MLX, 1, QP1_QKEY);
        assert!(d.errors().is_empty());
        d
    }

    /// Posts receive `index` of the QP in `slot`: its scatter entries (length, address)
    /// under KEY, ended by the invalid key when there are fewer than four.
    pub(super) fn post_recv(d: &Driver, slot: usize, index: u32, entries: &[(u32, u64)]) {
        let mut wqe = [0u8; 64];
        for (i, &(len, addr)) in entries.iter().enumerate() {
            wqe[16 * i..16 * i + 4].copy_from_slice(&len.to_be_bytes());
            wqe[16 * i + 4..16 * i + 8].copy_from_slice(&KEY.to_be_bytes());
            wqe[16 * i + 8..16 * i + 16].copy_from_slice(&addr.to_be_bytes());
        }
        if let Some(end) = wqe.get_mut(16 * entries.len() + 4..16 * entries.len() + 8) {
            end.copy_from_slice(&INVALID_LKEY.to_be_bytes());
        }
        d.memory
            .put(page(slot) + 2048 + 64 * u64::from(index & 15), &wqe);
        d.memory.put(db_record(slot), &(index + 1).to_be_bytes());
    }

    /// A gather entry of `len` bytes at `addr` under KEY.
    pub(super) fn gather(len: u32, addr: u64) -> Vec<u8> {
        let mut seg = vec![0u8; 16];
        seg[0..4].copy_from_slice(&len.to_be_bytes());
        seg[4..8].copy_from_slice(&KEY.to_be_bytes());
        seg[8..16].copy_from_slice(&addr.to_be_bytes());
        seg
    }

    /// An inline segment holding `data`, padded to 16 bytes.
    fn inline(data: &[u8]) -> Vec<u8> {
        let mut seg = (0x8000_0000u32 | data.len() as u32).to_be_bytes().to_vec();
        seg.extend_from_slice(data);
        seg.resize((seg.len() + 15) & !15, 0);
        seg
    }

    /// What a UD WQE's control and datagram segments say.
    #[derive(Clone, Copy)]
    pub(super) struct Datagram {
        dlid: u16,
        /// The source path bits (`g_slid`'s low bits).
        path_bits: u8,
        sl: u8,
        /// The GRH's destination GID, hop limit and traffic class with flow label.
        grh: Option<([u8; 16], u8, u32)>,
        dqpn: u32,
        qkey: u32,
        imm: Option<u32>,
        signaled: bool,
    }

    impl Datagram {
        /// A SEND to QP B on port 2.
        pub(super) fn to_b() -> Self {
            Self {
                dlid: 2,
                path_bits: 0,
                sl: 0,
                grh: None,
                dqpn: UD_B,
                qkey: QKEY,
                imm: None,
                signaled: true,
            }
        }

        /// A SEND to LID 9, which no port has: it leaves and completes, and nobody
        /// takes it.
        pub(super) fn to_nobody() -> Self {
            Self {
                dlid: 9,
                ..Self::to_b()
            }
        }

        /// The WQE: control segment, datagram segment, then `data` (whole segments).
        pub(super) fn wqe(&self, data: &[u8]) -> Vec<u8> {
            let mut w = vec![0u8; 64];
            w[3] = if self.imm.is_some() { 0x0b } else { 0x0a };
            w[7] = ((64 + data.len()) / 16) as u8;
            if self.signaled {
                w[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
            }
            w[12..16].copy_from_slice(&self.imm.unwrap_or(0).to_be_bytes());
            w[16..20].copy_from_slice(&(PD | 1 << 24).to_be_bytes());
            w[21] = self.path_bits | if self.grh.is_some() { 0x80 } else { 0 };
            w[22..24].copy_from_slice(&self.dlid.to_be_bytes());
            let (dgid, hop_limit, flow) = self.grh.unwrap_or(([0; 16], 0, 0));
            w[27] = hop_limit;
            w[28..32].copy_from_slice(&(u32::from(self.sl) << 28 | flow).to_be_bytes());
            w[32..48].copy_from_slice(&dgid);
            w[48..52].copy_from_slice(&self.dqpn.to_be_bytes());
            w[52..56].copy_from_slice(&self.qkey.to_be_bytes());
            w.extend_from_slice(data);
            w
        }
    }

    /// Writes send WQE `index` of the QP in `slot` (its owner bit by lap) and rings the
    /// QP's doorbell.
    pub(super) fn post(d: &mut Driver, slot: usize, qpn: u32, index: u32, wqe: &[u8]) {
        let mut w = wqe.to_vec();
        w.truncate(128);
        w[0] = if index & 16 != 0 { 0x80 } else { 0 };
        d.memory.put(page(slot) + 128 * u64::from(index & 15), &w);
        d.hca
            .bar2_write(&d.memory, UAR_PAGE + 0x14, &(qpn << 8).to_be_bytes());
    }

    /// Posts datagram `dg` from A as its send WQE `index`, `len` bytes gathered from DATA.
    fn send_from_a(len: u32, d: &mut Driver, index: u32, dg: Datagram) {
        post(d, A, UD_A, index, &dg.wqe(&gather(len, DATA)));
    }

    /// Every CQE the device has written so far (the CQ's first lap).
    pub(super) fn cqes(d: &Driver) -> Vec<[u8; 32]> {
        (0..64)
            .map(|n| d.memory.get(CQ_PAGE + 32 * n, 32).try_into().unwrap())
            .take_while(|c: &[u8; 32]| c[31] & 0x80 == 0)
            .collect()
    }

    pub(super) fn be32(c: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(c[at..at + 4].try_into().unwrap())
    }

    pub(super) fn be16(c: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([c[at], c[at + 1]])
    }

    /// A receive CQE's fields: (QPN, sender QPN, GRH bit, path bits, SL, SLID, byte
    /// count, WQE index, the owner, send and opcode byte).
    #[allow(clippy::type_complexity)]
    pub(super) fn received(c: &[u8; 32]) -> (u32, u32, bool, u32, u16, u16, u32, u16, u8) {
        let g_mlpath_rqpn = be32(c, 0x08);
        (
            be32(c, 0x00),
            g_mlpath_rqpn & 0x00ff_ffff,
            g_mlpath_rqpn >> 31 != 0,
            (g_mlpath_rqpn >> 24) & 0x7f,
            be16(c, 0x0c) >> 12,
            be16(c, 0x0e),
            be32(c, 0x14),
            be16(c, 0x18),
            c[0x1f],
        )
    }

    /// PortCounters of `port` (1 or 2) through the PMA: (PortRcvErrors, VL15Dropped,
    /// PortXmitPkts, PortRcvPkts).
    fn counters(d: &mut Driver, port: u8) -> (u16, u16, u32, u32) {
        let mut mad = mad(0x04, 0x01, 0x0012, 0);
        mad[64 + 1] = port;
        d.memory.put(INBOX, &mad);
        assert_eq!(d.command(opcode::MAD_IFC, 3, 1, INBOX, OUTBOX, false).0, 0);
        let c = d.memory.get(OUTBOX + 64, 64);
        (be16(&c, 8), be16(&c, 22), be32(&c, 32), be32(&c, 36))
    }

    /// A payload that does not repeat within 256 bytes.
    pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// The rig with `len` bytes of payload at DATA and B's receive 0 of `room` bytes at
    /// the buffer it returns, filled with 0xee.
    fn rig_with_a_receive(len: usize, room: u32) -> (Driver, u64, Vec<u8>) {
        let d = rig();
        let buf = DATA + 0x1000;
        let payload = pattern(len, len as u8);
        d.memory.put(DATA, &payload);
        d.memory.put(buf, &vec![0xee; room as usize]);
        post_recv(&d, B, 0, &[(room, buf)]);
        (d, buf, payload)
    }

    #[test]
    fn a_datagram_lands_behind_the_grh_slot_and_names_its_sender() {
        let (mut d, buf, payload) = rig_with_a_receive(100, 200);
        let dg = Datagram {
            sl: 5,
            ..Datagram::to_b()
        };
        post(&mut d, A, UD_A, 0, &dg.wqe(&gather(100, DATA)));
        assert_eq!(d.errors(), Vec::<String>::new());
        let c = cqes(&d);
        assert_eq!(c.len(), 2, "the receive, then the send");
        assert_eq!(received(&c[0]), (UD_B, UD_A, false, 0, 5, 1, 140, 0, 0x01));
        assert_eq!(be32(&c[0], 0x04), 0, "the default P_Key's index");
        assert_eq!(
            d.memory.get(buf, 40),
            [0xee; 40],
            "no GRH: the slot as it was"
        );
        assert_eq!(d.memory.get(buf + 40, 100), payload);
        assert_eq!(d.memory.get(buf + 140, 60), [0xee; 60]);
        assert_eq!(
            (be32(&c[1], 0), be16(&c[1], 0x18), c[1][0x1f]),
            (UD_A, 0, 0x4a)
        );

        // With immediate data, inline, to the QP's own Q_Key (the high bit).
        post_recv(&d, B, 1, &[(200, buf)]);
        let dg = Datagram {
            imm: Some(0xdead_beef),
            qkey: 0x8000_0000,
            ..dg
        };
        post(&mut d, A, UD_A, 1, &dg.wqe(&inline(&payload[..20])));
        let c = cqes(&d);
        assert_eq!(c.len(), 4);
        assert_eq!(received(&c[2]), (UD_B, UD_A, false, 0, 5, 1, 60, 1, 0x02));
        assert_eq!(be32(&c[2], 0x04), 0xdead_beef);
        assert_eq!(d.memory.get(buf + 40, 20), payload[..20]);
        assert_eq!(
            (be32(&c[3], 0), be16(&c[3], 0x18), c[3][0x1f]),
            (UD_A, 1, 0x4b)
        );

        // Two inline segments and a gather entry make one payload; unsignaled, the
        // send completes with no CQE.
        post_recv(&d, B, 2, &[(200, buf)]);
        let mut data = inline(&payload[..5]);
        data.extend(inline(&payload[5..30]));
        data.extend(gather(10, DATA + 30));
        let dg = Datagram {
            signaled: false,
            ..Datagram::to_b()
        };
        post(&mut d, A, UD_A, 2, &dg.wqe(&data));
        let c = cqes(&d);
        assert_eq!(c.len(), 5, "the receive only");
        assert_eq!(received(&c[4]).6, 80);
        assert_eq!(d.memory.get(buf + 40, 40), payload[..40]);
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// A WQE ends at its size: a datagram of no bytes is a 64-byte WQE, and what the
    /// stride holds after a WQE's size (a stale gather entry or inline segment) is not
    /// sent.
    #[test]
    fn a_ud_wqe_ends_at_its_size() {
        let mut d = rig();
        d.memory.put(DATA, &pattern(8, 2));
        for i in 0..2 {
            post_recv(&d, B, i, &[(64, DATA + 0x1000)]);
        }
        let mut empty = Datagram::to_b().wqe(&[]);
        empty.extend(gather(8, DATA));
        post(&mut d, A, UD_A, 0, &empty);
        let mut eight = Datagram::to_b().wqe(&gather(8, DATA));
        eight.extend(inline(b"stale"));
        post(&mut d, A, UD_A, 1, &eight);
        let c = cqes(&d);
        assert_eq!(c.len(), 4);
        assert_eq!((received(&c[0]).6, received(&c[2]).6), (40, 48));
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// The port GUID NodeInfo reports for `port` (1 or 2).
    fn port_guid(d: &mut Driver, port: u32) -> [u8; 8] {
        let mad = mad(0x01, 0x01, 0x0011, 0);
        d.memory.put(INBOX, &mad);
        assert_eq!(
            d.command(opcode::MAD_IFC, 3, port, INBOX, OUTBOX, false).0,
            0
        );
        d.memory.get(OUTBOX + 64 + 20, 8).try_into().unwrap()
    }

    #[test]
    fn a_grh_fills_the_slot_from_the_address_vector_and_the_port() {
        let (mut d, buf, payload) = rig_with_a_receive(64, 128);
        let dgid: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let dg = Datagram {
            sl: 0xc,
            grh: Some((dgid, 0x40, (0x5a << 20) | 0x1_2345)),
            ..Datagram::to_b()
        };
        post(&mut d, A, UD_A, 0, &dg.wqe(&gather(64, DATA)));
        let c = cqes(&d);
        assert_eq!(received(&c[0]), (UD_B, UD_A, true, 0, 0xc, 1, 104, 0, 0x01));
        let slot = d.memory.get(buf, 40);
        assert_eq!(be32(&slot, 0), (6 << 28) | (0x5a << 20) | 0x1_2345);
        assert_eq!(
            be16(&slot, 4),
            12 + 8 + 64 + 4,
            "payload length: BTH to ICRC"
        );
        assert_eq!((slot[6], slot[7]), (0x1b, 0x40), "next header, hop limit");
        assert_eq!(slot[8..16], 0xfe80_0000_0000_0000u64.to_be_bytes());
        assert_eq!(slot[16..24], port_guid(&mut d, 1), "port 1's GID");
        assert_ne!(port_guid(&mut d, 1), port_guid(&mut d, 2));
        assert_eq!(slot[24..40], dgid);
        assert_eq!(d.memory.get(buf + 40, 64), payload);
    }

    #[test]
    fn datagrams_no_qp_takes_are_dropped_and_counted() {
        let mut d = rig();
        let buf = DATA + 0x1000;
        d.memory.put(DATA, &pattern(32, 1));
        post_recv(&d, B, 0, &[(128, buf)]);
        let before = [counters(&mut d, 1), counters(&mut d, 2)];
        let to_b = Datagram::to_b();
        // A Q_Key that is not B's.
        send_from_a(
            32,
            &mut d,
            0,
            Datagram {
                qkey: QKEY + 1,
                ..to_b
            },
        );
        // A's QP number, sent to port 2: A is on port 1.
        send_from_a(32, &mut d, 1, Datagram { dqpn: UD_A, ..to_b });
        // An RC QP on port 2, and a QP that does not exist.
        send_from_a(32, &mut d, 2, Datagram { dqpn: QP_B, ..to_b });
        send_from_a(
            32,
            &mut d,
            3,
            Datagram {
                dqpn: 0x3ff,
                ..to_b
            },
        );
        // A LID nobody has: dropped before any port takes it.
        send_from_a(32, &mut d, 4, Datagram { dlid: 9, ..to_b });
        // VL15 is for QP0: a UD datagram to QP 0 is not.
        send_from_a(32, &mut d, 5, Datagram { dqpn: 0, ..to_b });
        assert_eq!(cqes(&d).len(), 6, "six sends, no receive");
        // B's receive 0 is still there for the one that is B's.
        send_from_a(32, &mut d, 6, to_b);
        let c = cqes(&d);
        assert_eq!(received(&c[6]), (UD_B, UD_A, false, 0, 0, 1, 72, 0, 0x01));
        // And with none posted, the next is dropped.
        send_from_a(32, &mut d, 7, to_b);
        assert_eq!(cqes(&d).len(), 9);
        assert_eq!(d.errors(), Vec::<String>::new());
        let after = [counters(&mut d, 1), counters(&mut d, 2)];
        assert_eq!(after[0].2 - before[0].2, 8, "port 1 sent eight");
        assert_eq!(after[1].3 - before[1].3, 7, "port 2 received seven");
        assert_eq!(after[1].0 - before[1].0, 6, "six no QP took");
        assert_eq!((after[0].0, after[0].1, after[1].1), (0, 0, 0));
        let summary = d.hca.summary();
        assert!(
            summary.ends_with("1 packets delivered, 7 dropped"),
            "{summary}"
        );
    }

    /// A malformed UD WQE: the device reports it, completes it with an error and moves
    /// the QP to error.
    #[test]
    fn a_ud_wqe_the_device_cannot_send_fails_the_qp() {
        let to_b = Datagram::to_b();
        let mut with_imm_write = to_b.wqe(&gather(8, DATA));
        with_imm_write[3] = 0x08; // RDMA WRITE
        let mut short = to_b.wqe(&[]);
        short[7] = 3;
        let mut long = to_b.wqe(&gather(8, DATA));
        long[7] = 9;
        let mut bad_key = gather(8, DATA);
        bad_key[4..8].copy_from_slice(&(KEY + 0x100).to_be_bytes());
        let mut inline_past_the_end = to_b.wqe(&inline(&[7; 16]));
        inline_past_the_end[64..68].copy_from_slice(&(0x8000_0000u32 | 80).to_be_bytes());
        let too_long = [gather(4096, DATA), gather(1, DATA)].concat();
        let cases: [(&str, Vec<u8>, u8, Option<&str>); 6] = [
            (
                "48 bytes",
                short,
                0x02,
                Some("UD WQE size 48 for a 128-byte stride"),
            ),
            (
                "144 bytes",
                long,
                0x02,
                Some("UD WQE size 144 for a 128-byte stride"),
            ),
            (
                "RDMA WRITE",
                with_imm_write,
                0x02,
                Some("opcode 0x8 on a UD QP"),
            ),
            ("a bad lkey", to_b.wqe(&bad_key), 0x04, None),
            ("inline past the WQE", inline_past_the_end, 0x04, None),
            ("4097 bytes", to_b.wqe(&too_long), 0x01, None),
        ];
        for (what, wqe, syndrome, error) in cases {
            let mut d = rig();
            post_recv(&d, B, 0, &[(8192, DATA + 0x1000)]);
            post(&mut d, A, UD_A, 0, &wqe);
            let errors = d.errors();
            match error {
                Some(e) => assert!(
                    errors.len() == 1 && errors[0].ends_with(e),
                    "{what}: {errors:?}"
                ),
                None => assert_eq!(errors, Vec::<String>::new(), "{what}"),
            }
            let c = cqes(&d);
            assert_eq!(c.len(), 1, "{what}: the send's error CQE, nothing received");
            assert_eq!((be32(&c[0], 0), c[0][0x1b]), (UD_A, syndrome), "{what}");
        }
        // 4096 bytes, the MTU, go.
        let mut d = rig();
        post_recv(&d, B, 0, &[(8192, DATA + 0x1000)]);
        post(&mut d, A, UD_A, 0, &to_b.wqe(&gather(4096, DATA)));
        assert_eq!(received(&cqes(&d)[0]).6, 40 + 4096);
        // A gather list over 16 MiB is refused as the key's, before the MTU: the whole
        // test memory (16 MiB) and one byte more.
        let mut d = rig();
        let over = [gather(16 << 20, BASE), gather(1, DATA)].concat();
        post(&mut d, A, UD_A, 0, &to_b.wqe(&over));
        assert_eq!(cqes(&d)[0][0x1b], 0x04, "over 16 MiB");
        let mut d = rig();
        post(&mut d, A, UD_A, 0, &to_b.wqe(&gather(16 << 20, BASE)));
        assert_eq!(
            cqes(&d)[0][0x1b],
            0x01,
            "16 MiB: gathered, longer than the MTU"
        );
    }

    #[test]
    fn a_receive_scatters_past_the_grh_slot_and_one_too_small_is_reported() {
        let mut d = rig();
        let (first, second, third) = (DATA + 0x1000, DATA + 0x2000, DATA + 0x3000);
        for at in [first, second, third] {
            d.memory.put(at, &[0xee; 64]);
        }
        let payload = pattern(30, 5);
        d.memory.put(DATA, &payload);
        // 32 bytes of the slot, 8 more of it and 8 of payload, then the rest.
        post_recv(&d, B, 0, &[(32, first), (16, second), (64, third)]);
        post(&mut d, A, UD_A, 0, &Datagram::to_b().wqe(&gather(30, DATA)));
        assert_eq!(received(&cqes(&d)[0]).6, 70);
        assert_eq!(d.memory.get(first, 64), [0xee; 64]);
        assert_eq!(d.memory.get(second, 8), [0xee; 8]);
        assert_eq!(d.memory.get(second + 8, 8), payload[..8]);
        assert_eq!(d.memory.get(second + 16, 8), [0xee; 8]);
        assert_eq!(d.memory.get(third, 22), payload[8..]);
        assert_eq!(d.memory.get(third + 22, 42), [0xee; 42]);
        // 60 bytes into 50: the driver's mistake, nothing completes.
        post_recv(&d, B, 1, &[(40, first), (10, second)]);
        post(&mut d, A, UD_A, 1, &Datagram::to_b().wqe(&gather(20, DATA)));
        let errors = d.errors();
        assert!(
            errors.len() == 1 && errors[0].ends_with("receive WQE 1: 60 bytes into 50"),
            "{errors:?}"
        );
        assert_eq!(cqes(&d).len(), 3, "two sends, one receive");
        // A receive with a key that does not cover it is reported too.
        let mut d = rig();
        let mut wqe = [0u8; 64];
        wqe[0..4].copy_from_slice(&64u32.to_be_bytes());
        wqe[4..8].copy_from_slice(&(KEY + 0x100).to_be_bytes());
        wqe[20..24].copy_from_slice(&INVALID_LKEY.to_be_bytes());
        d.memory.put(page(B) + 2048, &wqe);
        d.memory.put(db_record(B), &1u32.to_be_bytes());
        post(&mut d, A, UD_A, 0, &Datagram::to_b().wqe(&gather(8, DATA)));
        let errors = d.errors();
        assert!(
            errors.len() == 1 && errors[0].contains("receive WQE 0"),
            "{errors:?}"
        );
        assert_eq!(cqes(&d).len(), 1);
    }

    #[test]
    fn path_bits_under_an_lmc_route_and_fill_the_cqe() {
        let mut d = rig();
        // Port 1: LID 8, LMC 1; port 2: LID 4, LMC 2.
        rc::set_port(&mut d, 1, 8, 1);
        rc::set_port(&mut d, 2, 4, 2);
        let buf = DATA + 0x1000;
        d.memory.put(DATA, &pattern(16, 2));
        for i in 0..4 {
            post_recv(&d, B, i, &[(64, buf)]);
        }
        post_recv(&d, A, 0, &[(64, buf)]);
        let to_b = Datagram::to_b();
        send_from_a(
            16,
            &mut d,
            0,
            Datagram {
                dlid: 7,
                path_bits: 1,
                sl: 2,
                ..to_b
            },
        );
        let c = cqes(&d);
        assert_eq!(received(&c[0]), (UD_B, UD_A, false, 3, 2, 9, 56, 0, 0x01));
        // Outside port 2's LIDs (4..8): dropped; port 1's own (8, 9): to A itself.
        send_from_a(16, &mut d, 1, Datagram { dlid: 12, ..to_b });
        assert_eq!(cqes(&d).len(), 3);
        send_from_a(
            16,
            &mut d,
            2,
            Datagram {
                dlid: 9,
                dqpn: UD_A,
                path_bits: 0x7f,
                ..to_b
            },
        );
        let c = cqes(&d);
        assert_eq!(
            received(&c[3]),
            (UD_A, UD_A, false, 1, 0, 0x7f, 56, 0, 0x01)
        );
        // The permissive LID crosses the cable, with no path bits.
        send_from_a(
            16,
            &mut d,
            3,
            Datagram {
                dlid: 0xffff,
                ..to_b
            },
        );
        let c = cqes(&d);
        assert_eq!(received(&c[5]), (UD_B, UD_A, false, 0, 0, 8, 56, 1, 0x01));
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// RTS2RTS with optional parameters `optpar`: the Q_Key `qkey` and the port `port`
    /// (0 or 1), the CQs as they were.
    fn rts2rts(d: &mut Driver, qpn: u32, optpar: u32, qkey: u32, port: u8) {
        let mut mailbox = vec![0u8; 4096];
        mailbox[0..4].copy_from_slice(&optpar.to_be_bytes());
        let ctx = &mut mailbox[8..];
        ctx[0x18 + 0x20] = (port << 6) | 0x3f;
        ctx[0x7c..0x80].copy_from_slice(&CQN.to_be_bytes());
        ctx[0x9c..0xa0].copy_from_slice(&CQN.to_be_bytes());
        ctx[0xa8..0xac].copy_from_slice(&qkey.to_be_bytes());
        d.memory.put(INBOX, &mailbox);
        assert_eq!(d.command(opcode::RTS2RTS_QP, 0, qpn, INBOX, 0, false).0, 0);
    }

    /// A later transition changes a QP's Q_Key and port only under its optional
    /// parameters (`MLX4_QP_OPTPAR_Q_KEY`, `PRIMARY_ADDR_PATH`, `SCHED_QUEUE`).
    #[test]
    fn a_later_transition_moves_the_q_key_and_the_port_under_its_optional_parameters() {
        const Q_KEY: u32 = 1 << 5;
        const PRIMARY_ADDR_PATH: u32 = 1 << 7;
        const SCHED_QUEUE: u32 = 1 << 16;
        let mut d = rig();
        d.memory.put(DATA, &pattern(8, 6));
        for i in 0..4 {
            post_recv(&d, B, i, &[(64, DATA + 0x1000)]);
            post_recv(&d, C, i, &[(64, DATA + 0x2000)]);
        }
        let mut index = 0;
        let mut taken = |d: &mut Driver, dg: Datagram| {
            let before = cqes(d).len();
            post(d, A, UD_A, index, &dg.wqe(&gather(8, DATA)));
            index += 1;
            cqes(d).len() - before == 2
        };
        let new_key = QKEY + 1;
        rts2rts(&mut d, UD_B, 0, new_key, 1);
        assert!(
            taken(&mut d, Datagram::to_b()),
            "no optional parameter: the Q_Key kept"
        );
        rts2rts(&mut d, UD_B, Q_KEY, new_key, 1);
        assert!(!taken(&mut d, Datagram::to_b()), "the old Q_Key");
        let with_new_key = Datagram {
            qkey: new_key,
            ..Datagram::to_b()
        };
        assert!(taken(&mut d, with_new_key), "the new Q_Key");

        // C, on port 2, moves to port 1 (LID 1): only under PRIMARY_ADDR_PATH or
        // SCHED_QUEUE.
        let to_c_on_port_1 = Datagram {
            dlid: 1,
            dqpn: UD_C,
            ..Datagram::to_b()
        };
        rts2rts(&mut d, UD_C, 0, QKEY, 0);
        assert!(!taken(&mut d, to_c_on_port_1), "C stays on port 2");
        for optpar in [PRIMARY_ADDR_PATH, SCHED_QUEUE] {
            rts2rts(&mut d, UD_C, optpar, QKEY, 0);
            assert!(
                taken(&mut d, to_c_on_port_1),
                "optpar {optpar:#x}: on port 1"
            );
            rts2rts(&mut d, UD_C, optpar, QKEY, 1);
            assert!(
                !taken(&mut d, to_c_on_port_1),
                "optpar {optpar:#x}: back on 2"
            );
        }
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// A QP whose receives come from an SRQ (`srqn` bit 24) has no receive queue of its
    /// own: whatever its doorbell record says, nothing arriving is taken from its buffer.
    #[test]
    fn a_qp_on_an_srq_takes_nothing_into_a_receive_queue_of_its_own() {
        let mut d = rc::setup();
        let mut mailbox = qp_mailbox(&d, B, ST_UD, 1, QKEY);
        mailbox[8 + 0xac..8 + 0xb0].copy_from_slice(&((1u32 << 24) | 1).to_be_bytes());
        d.memory.put(INBOX, &mailbox);
        for op in [opcode::RST2INIT_QP, opcode::INIT2RTR_QP, opcode::RTR2RTS_QP] {
            assert_eq!(d.command(op, 0, UD_B, INBOX, 0, false).0, 0);
        }
        create(&mut d, UD_A, A, ST_UD, 0, QKEY);
        d.memory.put(DATA + 0x1000, &[0xee; 64]);
        post_recv(&d, B, 0, &[(64, DATA + 0x1000)]);
        d.memory.put(DATA, &pattern(8, 3));
        post(&mut d, A, UD_A, 0, &Datagram::to_b().wqe(&gather(8, DATA)));
        assert_eq!(cqes(&d).len(), 1, "the send only");
        assert_eq!(d.memory.get(DATA + 0x1000, 64), [0xee; 64]);
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// A QP moved to error flushes the receives its record counts, at most a queue's
    /// worth however far ahead a broken record says the driver is.
    #[test]
    fn a_qp_in_error_flushes_at_most_its_queue() {
        let mut d = rig();
        d.memory.put(db_record(B), &100u32.to_be_bytes());
        assert_eq!(d.command(opcode::TO_ERR_QP, 0, UD_B, 0, 0, false).0, 0);
        let c = cqes(&d);
        assert_eq!(c.len(), 16, "RQ of 16");
        for (i, c) in c.iter().enumerate() {
            assert_eq!(
                (be32(c, 0), be16(c, 0x18), c[0x1b], c[0x1f]),
                (UD_B, i as u16, 0x05, 0x1e),
                "flush {i}"
            );
        }
        // C with five posted: five flushes, and the timer finds none left to flush.
        d.memory.put(db_record(C), &5u32.to_be_bytes());
        assert_eq!(d.command(opcode::TO_ERR_QP, 0, UD_C, 0, 0, false).0, 0);
        d.hca.tick(&d.memory);
        let c = cqes(&d);
        assert_eq!(
            c.len(),
            16 + 5 + 16,
            "B's next 16 on the tick, C's five once"
        );
        assert_eq!(
            c[16..21].iter().filter(|c| be32(&c[..], 0) == UD_C).count(),
            5
        );
        assert!(c[21..].iter().all(|c| be32(c, 0) == UD_B));
    }

    /// With the cable's link down (port 2 closed), nothing crosses it: not to a LID of
    /// the other port, not the permissive LID, not multicast; a port's own traffic and
    /// multicast to its own members still loop back.
    #[test]
    fn with_the_link_down_only_a_ports_own_traffic_loops_back() {
        let mut d = rig();
        let mgid = [
            0xff, 0x12, 0x40, 0x1b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ];
        let head = bucket(&mut d, &mgid);
        mcg(&mut d, head, &mgid, 0, 2, &[(0, UD_B), (1, UD_D)]);
        d.memory.put(DATA, &pattern(8, 7));
        for slot in [B, D] {
            for i in 0..4 {
                post_recv(&d, slot, i, &[(64, DATA + 0x1000)]);
            }
        }
        assert_eq!(d.command(opcode::CLOSE_PORT, 0, 2, 0, 0, false).0, 0);
        let mut index = 0;
        let mut takers = |d: &mut Driver, dg: Datagram| {
            let before = cqes(d).len();
            post(d, A, UD_A, index, &dg.wqe(&gather(8, DATA)));
            index += 1;
            cqes(d)[before..]
                .iter()
                .map(|c| be32(c, 0))
                .filter(|&qpn| qpn != UD_A)
                .collect::<Vec<u32>>()
        };
        assert_eq!(takers(&mut d, Datagram::to_b()), [], "to port 2's LID");
        let permissive = Datagram {
            dlid: 0xffff,
            ..Datagram::to_b()
        };
        assert_eq!(takers(&mut d, permissive), [], "the permissive LID");
        let to_d = Datagram {
            dlid: 1,
            dqpn: UD_D,
            ..Datagram::to_b()
        };
        assert_eq!(takers(&mut d, to_d), [UD_D], "port 1's own LID");
        let to_group = Datagram {
            dlid: 0xc002,
            dqpn: 0x00ff_ffff,
            grh: Some((mgid, 1, 0)),
            ..Datagram::to_b()
        };
        assert_eq!(takers(&mut d, to_group), [UD_D], "port 1's member only");
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// The bucket MGID_HASH gives `mgid`: where its chain starts.
    fn bucket(d: &mut Driver, mgid: &[u8; 16]) -> u32 {
        d.memory.put(INBOX, mgid);
        let (status, hash) = d.command(opcode::MGID_HASH, 0, 0, INBOX, 0, false);
        assert_eq!(status, 0);
        hash as u32
    }

    /// Writes multicast entry `index`: the link to entry `next`, `mgid`, the member
    /// count word, then `members` from slot 0 (`struct mlx4_mgm`).
    fn mcg(
        d: &mut Driver,
        index: u32,
        mgid: &[u8; 16],
        next: u32,
        count: u32,
        members: &[(usize, u32)],
    ) {
        let mut entry = vec![0u8; 1024];
        entry[0..4].copy_from_slice(&(next << 6).to_be_bytes());
        entry[4..8].copy_from_slice(&count.to_be_bytes());
        entry[16..32].copy_from_slice(mgid);
        for &(slot, qpn) in members {
            entry[32 + 4 * slot..36 + 4 * slot].copy_from_slice(&qpn.to_be_bytes());
        }
        d.memory.put(INBOX, &entry);
        assert_eq!(d.command(opcode::WRITE_MCG, 0, index, INBOX, 0, false).0, 0);
    }

    #[test]
    fn multicast_reaches_the_groups_members_on_both_ports_but_not_its_sender() {
        let mut d = rig();
        let mgid = [
            0xff, 0x12, 0x40, 0x1b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ];
        let other = [
            0xff, 0x12, 0x40, 0x1b, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        // The bucket holds an entry of another protocol (the count's top bits) with C:
        // not an IB group. Its chain goes on into the overflow half (entries 4 to 7),
        // to the group: A (the sender) and B; C listed past the member count.
        let head = bucket(&mut d, &mgid);
        mcg(&mut d, head, &mgid, 5, (1 << 30) | 1, &[(0, UD_C)]);
        // Another group with C as its 129th member, past the most a group may have: in
        // its own bucket, or next in the chain when it shares the first group's.
        let other_head = bucket(&mut d, &other);
        let after = if other_head == head { 6 } else { 0 };
        mcg(
            &mut d,
            after.max(other_head),
            &other,
            0,
            129,
            &[(128, UD_C)],
        );
        // A copy of the group in an entry no chain reaches is not seen.
        mcg(&mut d, 7, &mgid, 0, 1, &[(0, UD_D)]);
        mcg(
            &mut d,
            5,
            &mgid,
            after,
            2,
            &[(0, UD_A), (1, UD_B), (2, UD_C)],
        );
        let buf = DATA + 0x1000;
        d.memory.put(DATA, &pattern(16, 4));
        for slot in [A, B, C, D] {
            for i in 0..3 {
                post_recv(&d, slot, i, &[(64, buf + 0x100 * slot as u64)]);
            }
        }
        let to_group = Datagram {
            dlid: 0xc001,
            dqpn: 0x00ff_ffff,
            grh: Some((mgid, 1, 0)),
            ..Datagram::to_b()
        };
        let errors_before = counters(&mut d, 2).0;
        send_from_a(16, &mut d, 0, to_group);
        let c = cqes(&d);
        assert_eq!(c.len(), 2, "B's receive and the send: {c:?}");
        assert_eq!(counters(&mut d, 2).0, errors_before, "taken, not dropped");
        assert_eq!(received(&c[0]), (UD_B, UD_A, true, 0, 0, 1, 56, 0, 0x01));
        assert_eq!(d.memory.get(buf + 0x100 + 24, 16), mgid);
        // With C and D counted: D, on the sender's port, gets it too (multicast loops
        // back to a port's other members), the sender still not.
        mcg(
            &mut d,
            5,
            &mgid,
            after,
            4,
            &[(0, UD_A), (1, UD_B), (2, UD_C), (3, UD_D)],
        );
        send_from_a(16, &mut d, 1, to_group);
        let c = cqes(&d);
        assert_eq!(c.len(), 6);
        let mut takers: Vec<u32> = c[2..5].iter().map(|c| be32(c, 0)).collect();
        takers.sort();
        assert_eq!(takers, [UD_B, UD_C, UD_D]);
        // Not the group's QPN, no GRH, or a group nobody of this port is in: dropped.
        send_from_a(
            16,
            &mut d,
            2,
            Datagram {
                dqpn: UD_B,
                ..to_group
            },
        );
        send_from_a(
            16,
            &mut d,
            3,
            Datagram {
                grh: None,
                ..to_group
            },
        );
        send_from_a(
            16,
            &mut d,
            4,
            Datagram {
                grh: Some((other, 1, 0)),
                ..to_group
            },
        );
        assert_eq!(cqes(&d).len(), 9, "three sends only");
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// An MLX WQE (`build_mlx_header`): the control segment with its MLX flags, the
    /// headers inline, the MAD in a gather entry, the ICRC slot inline.
    fn mlx_wqe(flags: u32, headers: &[u8], mad: (u32, u64)) -> Vec<u8> {
        let mut w = vec![0u8; 16];
        w[3] = 0x0a;
        w[8..12].copy_from_slice(&(flags | 3 << 2).to_be_bytes());
        w.extend(inline(headers));
        w.extend(gather(mad.0, mad.1));
        w.extend(inline(&[0; 4]));
        w[7] = (w.len() / 16) as u8;
        w
    }

    /// LRH, optional GRH, BTH and DETH of a MAD to `dest_qp`.
    fn mad_headers(
        sl: u8,
        dlid: u16,
        slid: u16,
        grh: Option<[u8; 40]>,
        dest_qp: u32,
        qkey: u32,
        src_qp: u32,
    ) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h[1] = (sl << 4) | if grh.is_some() { 3 } else { 2 };
        h[2..4].copy_from_slice(&dlid.to_be_bytes());
        h[6..8].copy_from_slice(&slid.to_be_bytes());
        if let Some(g) = grh {
            h.extend_from_slice(&g);
        }
        let mut bth = [0u8; 12];
        bth[0] = 0x64; // UD SEND only
        bth[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
        bth[4..8].copy_from_slice(&dest_qp.to_be_bytes());
        h.extend_from_slice(&bth);
        h.extend_from_slice(&qkey.to_be_bytes());
        h.extend_from_slice(&src_qp.to_be_bytes());
        h
    }

    /// Posts send WQE `index` of the special QP in `slot` (QP0_1 or QP1_1): an MLX WQE
    /// with `flags`, `headers` and the 256-byte MAD at DATA.
    fn send_mad(d: &mut Driver, slot: usize, index: u32, flags: u32, headers: &[u8]) {
        let qpn = if slot == QP0_1 { SPECIAL } else { SPECIAL + 2 };
        post(d, slot, qpn, index, &mlx_wqe(flags, headers, (256, DATA)));
    }

    const VL15: u32 = 1 << 17;
    const SLR: u32 = 1 << 16;

    #[test]
    fn mads_cross_the_cable_between_the_special_qps() {
        let mut d = rig();
        let mad = pattern(256, 7);
        d.memory.put(DATA, &mad);
        let buf = DATA + 0x1000;
        for i in 0..6 {
            post_recv(&d, QP0_2, i, &[(296, buf)]);
            post_recv(&d, QP1_2, i, &[(296, buf + 0x200)]);
        }
        let before = counters(&mut d, 2);
        // QP1 to QP1 on SL 3: the SLID is the port's LID with the header's path bits.
        let headers = mad_headers(3, 2, 0, None, 1, QP1_QKEY, 1);
        send_mad(&mut d, QP1_1, 0, 3 << 8, &headers);
        let c = cqes(&d);
        assert_eq!(c.len(), 2);
        assert_eq!(
            received(&c[0]),
            (SPECIAL + 3, 1, false, 0, 3, 1, 296, 0, 0x01),
            "the MAD, without its ICRC"
        );
        assert_eq!(d.memory.get(buf + 0x200 + 40, 256), mad);
        assert_eq!((be32(&c[1], 0), c[1][0x1f]), (SPECIAL + 2, 0x4a));
        // With SLR the header's SLID goes as it is; without, only its path bits.
        let headers = mad_headers(0, 2, 0x1234, None, 1, QP1_QKEY, 1);
        send_mad(&mut d, QP1_1, 1, SLR, &headers);
        send_mad(&mut d, QP1_1, 2, 0, &headers);
        let c = cqes(&d);
        assert_eq!(received(&c[2]).5, 0x1234);
        assert_eq!(received(&c[4]).5, 1 | 0x34);
        // QP1 takes only its Q_Key.
        let headers = mad_headers(0, 2, 0, None, 1, QP1_QKEY + 1, 1);
        send_mad(&mut d, QP1_1, 3, 0, &headers);
        assert_eq!(cqes(&d).len(), 7);

        // A directed-route SMP: permissive DLID and SLID, VL15, to QP0 with any Q_Key.
        let headers = mad_headers(0, 0xffff, 0xffff, None, 0, 0x1234_5678, 0);
        send_mad(&mut d, QP0_1, 0, VL15 | SLR, &headers);
        let c = cqes(&d);
        assert_eq!(
            received(&c[7]),
            (SPECIAL + 1, 0, false, 0, 0, 0xffff, 296, 0, 0x01)
        );
        // VL15 is for QP0 only, and QP0 takes nothing else.
        let headers = mad_headers(0, 2, 0, None, 1, QP1_QKEY, 1);
        send_mad(&mut d, QP0_1, 1, VL15, &headers);
        let headers = mad_headers(0, 2, 0, None, 0, 0, 0);
        send_mad(&mut d, QP0_1, 2, 0, &headers);
        assert_eq!(cqes(&d).len(), 11, "two sends, nothing received");
        let after = counters(&mut d, 2);
        assert_eq!(
            after.0 - before.0,
            2,
            "the Q_Key's and the unmarked QP0 MAD"
        );
        assert_eq!(after.1 - before.1, 1, "VL15Dropped");

        // A GRH on a MAD goes into the slot as the sender wrote it.
        let grh: [u8; 40] = std::array::from_fn(|i| 0x60 + i as u8);
        let headers = mad_headers(0, 2, 0, Some(grh), 1, QP1_QKEY, 1);
        send_mad(&mut d, QP1_1, 4, 0, &headers);
        let c = cqes(&d);
        assert!(received(&c[11]).2, "the GRH bit");
        assert_eq!(d.memory.get(buf + 0x200, 40), grh);
        // Unsignaled: the receive completes, the send does not.
        let headers = mad_headers(0, 2, 0, None, 1, QP1_QKEY, 1);
        let mut unsignaled = mlx_wqe(0, &headers, (256, DATA));
        unsignaled[11] &= !(3 << 2);
        post(&mut d, QP1_1, SPECIAL + 2, 5, &unsignaled);
        let c = cqes(&d);
        assert_eq!(c.len(), 14);
        assert_eq!(be32(&c[13], 0), SPECIAL + 3);
        assert_eq!(d.errors(), Vec::<String>::new());
    }

    /// A MAD's receive CQE names the index of its BTH's P_Key in the receiving port's
    /// table (full or limited membership alike).
    #[test]
    fn a_mad_completes_with_the_index_of_its_p_key() {
        let mut d = rig();
        let mut mad = mad(0x01, 0x02, 0x0016, 0);
        mad[64..70].copy_from_slice(&[0xff, 0xff, 0x80, 0x01, 0x80, 0x02]);
        d.memory.put(INBOX, &mad);
        assert_eq!(d.command(opcode::MAD_IFC, 3, 2, INBOX, OUTBOX, false).0, 0);
        d.memory.put(DATA, &pattern(256, 1));
        for i in 0..3 {
            post_recv(&d, QP1_2, i, &[(296, DATA + 0x1000)]);
        }
        for (i, (pkey, index)) in [(0x8002u16, 2u32), (0x0001, 1), (0xffff, 0)]
            .into_iter()
            .enumerate()
        {
            let mut headers = mad_headers(0, 2, 0, None, 1, QP1_QKEY, 1);
            headers[8 + 2..8 + 4].copy_from_slice(&pkey.to_be_bytes());
            post(
                &mut d,
                QP1_1,
                SPECIAL + 2,
                i as u32,
                &mlx_wqe(0, &headers, (256, DATA)),
            );
            let c = cqes(&d);
            assert_eq!(be32(&c[2 * i], 0x04), index, "P_Key {pkey:#x}");
        }
    }

    #[test]
    fn an_mlx_wqe_the_device_cannot_send_fails_the_qp() {
        let good = mad_headers(0, 2, 0, None, 1, QP1_QKEY, 1);
        let mut short = mlx_wqe(0, &good, (256, DATA));
        short[7] = 1;
        let mut long = mlx_wqe(0, &good, (256, DATA));
        long[7] = 9;
        let with_grh = mad_headers(0, 2, 0, Some([0x60; 40]), 1, QP1_QKEY, 1);
        // 32 bytes, the least an MLX WQE may be: its one segment is too short for the
        // headers, and that is what is reported.
        let mut lrh_only = vec![0u8; 16];
        lrh_only[3] = 0x0a;
        lrh_only[7] = 2;
        lrh_only.extend(inline(&good[..12]));
        let cases: [(&str, Vec<u8>, u8, &str); 8] = [
            ("32 bytes", lrh_only, 0x02, "no BTH"),
            ("16 bytes", short, 0x02, "WQE size 16 for a 128-byte stride"),
            (
                "144 bytes",
                long,
                0x02,
                "WQE size 144 for a 128-byte stride",
            ),
            // The ICRC slot's 4 bytes count among the headers' bytes.
            ("no LRH", mlx_wqe(0, &good[..3], (0, DATA)), 0x02, "no LRH"),
            ("no BTH", mlx_wqe(0, &good[..12], (0, DATA)), 0x02, "no BTH"),
            (
                "no DETH",
                mlx_wqe(0, &good[..20], (0, DATA)),
                0x02,
                "no DETH",
            ),
            (
                "a short GRH",
                mlx_wqe(0, &with_grh[..40], (0, DATA)),
                0x02,
                "short GRH",
            ),
            ("a bad lkey", mlx_wqe(0, &good, (256, 0)), 0x04, ""),
        ];
        for (what, mut wqe, syndrome, error) in cases {
            if what == "a bad lkey" {
                wqe[48 + 4..48 + 8].copy_from_slice(&(KEY + 0x100).to_be_bytes());
            }
            let mut d = rig();
            post_recv(&d, QP1_2, 0, &[(296, DATA + 0x1000)]);
            post(&mut d, QP1_1, SPECIAL + 2, 0, &wqe);
            let errors = d.errors();
            if error.is_empty() {
                assert_eq!(errors, Vec::<String>::new(), "{what}");
            } else {
                assert!(
                    errors.len() == 1 && errors[0].ends_with(error),
                    "{what}: {errors:?}"
                );
            }
            let c = cqes(&d);
            assert_eq!(c.len(), 1, "{what}: {c:?}");
            assert_eq!(
                (be32(&c[0], 0), c[0][0x1b]),
                (SPECIAL + 2, syndrome),
                "{what}"
            );
        }
        // The headers whole but no ICRC slot after them: nothing is sent.
        let mut d = rig();
        let mut w = vec![0u8; 16];
        w[3] = 0x0a;
        w[8..12].copy_from_slice(&(3u32 << 2).to_be_bytes());
        w.extend(inline(&good));
        w[7] = (w.len() / 16) as u8;
        post(&mut d, QP1_1, SPECIAL + 2, 0, &w);
        let errors = d.errors();
        assert!(
            errors.len() == 1 && errors[0].ends_with("payload shorter than its headers"),
            "{errors:?}"
        );
    }
}

/// Queues at the edges of what a context may describe: pages up to 1 GiB, MTT offsets
/// past 4 GiB, the largest CQ, and a resize that cannot hold what is outstanding.
mod queues {
    use super::datagram::{self, cqes, gather, Datagram, A, UD_A};
    use super::rc::{self, DATA, DB_RECORDS};
    use super::*;

    /// A CQ context: 2^`log_size` entries in pages of 2^(12 + `log_page_size`) bytes,
    /// its MTT entries from byte `mtt_offset` of the table, completions to the rc rig's
    /// EQ.
    fn cq_in_pages(log_size: u32, log_page_size: u8, mtt_offset: u64) -> Vec<u8> {
        let mut cq = vec![0u8; 256];
        cq[0x0c..0x10].copy_from_slice(&((log_size << 24) | 1).to_be_bytes());
        cq[0x17] = rc::EQN as u8;
        cq[0x18] = log_page_size;
        cq[0x1b] = (mtt_offset >> 32) as u8;
        cq[0x1c..0x20].copy_from_slice(&(mtt_offset as u32).to_be_bytes());
        cq[0x38..0x40].copy_from_slice(&(DB_RECORDS + 0x200).to_be_bytes());
        cq
    }

    fn cq_command(d: &mut Driver, op: u16, cqn: u32, ctx: &[u8]) -> (u8, Vec<String>) {
        d.memory.put(INBOX, ctx);
        let status = d.command(op, 0, cqn, INBOX, 0, false).0;
        (status, d.errors())
    }

    /// 2 MiB of test memory that 64 MTT entries of 2 MiB pages (from index 100) all
    /// name: a queue of 128 MiB, the largest, the device can walk.
    const ALIASED: u64 = BASE + 0x80_0000;

    fn alias_128_mib(d: &Driver) {
        for i in 0..64 {
            rc::mtt(d, 100 + i, ALIASED);
        }
    }

    #[test]
    fn queue_pages_go_up_to_1_gib_and_mtt_offsets_past_4_gib() {
        let mut d = rc::setup();
        rc::mtt(&d, 100, ALIASED);
        let bad = CmdStatus::BadParam as u8;
        assert_eq!(
            cq_command(&mut d, opcode::SW2HW_CQ, 2, &cq_in_pages(6, 18, 800)),
            (0, vec![])
        );
        for i in 0..64 {
            assert_eq!(d.memory.get(ALIASED + 32 * i + 31, 1), [0x80], "CQE {i}");
        }
        let (status, errors) = cq_command(&mut d, opcode::SW2HW_CQ, 3, &cq_in_pages(6, 19, 800));
        assert_eq!(status, bad);
        assert!(
            errors[0].contains("CQ 0x3: pages of 2^31 bytes"),
            "{errors:?}"
        );
        // The MTT offset's high byte counts: 4 GiB on, past the table.
        let far = (1 << 32) | 800;
        let (status, errors) = cq_command(&mut d, opcode::SW2HW_CQ, 3, &cq_in_pages(6, 0, far));
        assert_eq!(status, bad);
        assert!(errors[0].contains("is not mapped"), "{errors:?}");

        // A QP's buffer alike: in a 1 GiB page it works, in a 2 GiB one or 4 GiB into the
        // MTT its doorbell is refused.
        let cases: [(u32, u8, u8, &str); 3] = [
            (0x60, 18, 0, ""),
            (0x61, 19, 0, "pages of 2^31 bytes"),
            (0x62, 0, 1, "is not mapped"),
        ];
        for (qpn, log_page_size, mtt_high, error) in cases {
            let mut mailbox = datagram::qp_mailbox(&d, A, datagram::ST_UD, 0, 1);
            mailbox[8 + 0xc8] = log_page_size;
            mailbox[8 + 0xcb] = mtt_high;
            d.memory.put(INBOX, &mailbox);
            for op in [opcode::RST2INIT_QP, opcode::INIT2RTR_QP, opcode::RTR2RTS_QP] {
                assert_eq!(d.command(op, 0, qpn, INBOX, 0, false).0, 0);
            }
            let before = cqes(&d).len();
            let to_nobody = Datagram::to_nobody();
            datagram::post(&mut d, A, qpn, 0, &to_nobody.wqe(&gather(8, DATA)));
            let errors = d.errors();
            if error.is_empty() {
                assert_eq!(errors, Vec::<String>::new());
                assert_eq!(cqes(&d).len(), before + 1, "sent");
            } else {
                // Once at RTS, where the device looks at the SQ, and once for the doorbell.
                assert!(
                    errors.len() == 2 && errors.iter().all(|e| e.ends_with(error)),
                    "{qpn:#x}: {errors:?}"
                );
            }
            assert_eq!(d.command(opcode::TO_RST_QP, 0, qpn, 0, 0, false).0, 0);
        }
    }

    /// After 126 completions a resize goes on at index 127. Each position of the new
    /// buffer is handed over for the first index at or after 127 due there: the device's
    /// (owner bit set on an even lap, clear on an odd one) until it writes it. To 128
    /// entries index 127 is on lap 0, to 64 on lap 1.
    #[test]
    fn a_resize_hands_the_new_buffer_over_by_the_lap_each_position_is_due_in() {
        for log_size in [7u32, 6] {
            let entries = 1u64 << log_size;
            let mut d = datagram::rig();
            let to_nobody = Datagram::to_nobody();
            for i in 0..126 {
                datagram::post(&mut d, A, UD_A, i, &to_nobody.wqe(&gather(8, DATA)));
                // The driver consumes each completion (its CQ doorbell record).
                d.memory.put(DB_RECORDS + 0x100, &(i + 1).to_be_bytes());
            }
            rc::mtt(&d, 100, ALIASED);
            d.memory.put(ALIASED, &[0x5a; 4096]);
            let mut ctx = cq_in_pages(log_size, 0, 800);
            ctx[0x38..0x40].copy_from_slice(&(DB_RECORDS + 0x100).to_be_bytes());
            assert_eq!(
                cq_command(&mut d, opcode::MODIFY_CQ, rc::CQN, &ctx),
                (0, vec![])
            );
            let lap_owner = |index: u64| {
                if (index / entries).is_multiple_of(2) {
                    0x80
                } else {
                    0
                }
            };
            let owners: Vec<u8> = (0..entries)
                .map(|p| d.memory.get(ALIASED + 32 * p + 31, 1)[0])
                .collect();
            let expected: Vec<u8> = (0..entries)
                .map(|p| (127..127 + entries).find(|i| i % entries == p).unwrap())
                .map(lap_owner)
                .collect();
            assert_eq!(owners, expected, "{entries} entries");
            // The next two completions (index 126 was the RESIZE CQE): indices 127 and
            // 128, the driver's (owner bit the other way), of send WQEs 126 and 127.
            d.memory.put(DB_RECORDS + 0x100, &127u32.to_be_bytes());
            for index in [127u64, 128] {
                let wqe = to_nobody.wqe(&gather(8, DATA));
                datagram::post(&mut d, A, UD_A, index as u32 - 1, &wqe);
                let c = d.memory.get(ALIASED + 32 * (index % entries), 32);
                assert_eq!(
                    (datagram::be32(&c, 0), c[31]),
                    (UD_A, 0x4a | (0x80 ^ lap_owner(index))),
                    "index {index} of {entries}"
                );
            }
            assert_eq!(d.errors(), Vec::<String>::new());
        }
    }

    #[test]
    fn a_cq_of_2_22_entries_is_the_largest() {
        let mut d = rc::setup();
        alias_128_mib(&d);
        let (status, errors) = cq_command(&mut d, opcode::SW2HW_CQ, 2, &cq_in_pages(23, 9, 800));
        assert_eq!(status, CmdStatus::BadParam as u8);
        assert!(errors[0].contains("CQ 0x2 of 2^23 entries"), "{errors:?}");
        assert_eq!(
            cq_command(&mut d, opcode::SW2HW_CQ, 2, &cq_in_pages(22, 9, 800)),
            (0, vec![])
        );
    }

    #[test]
    fn a_cq_resizes_up_to_2_22_entries_and_not_below_what_is_outstanding() {
        let mut d = datagram::rig();
        alias_128_mib(&d);
        let to_nobody = Datagram::to_nobody();
        for i in 0..3 {
            datagram::post(&mut d, A, UD_A, i, &to_nobody.wqe(&gather(8, DATA)));
        }
        assert_eq!(cqes(&d).len(), 3, "three completions outstanding");
        let cqn = rc::CQN;
        let bad = CmdStatus::BadParam as u8;
        let (status, errors) = cq_command(&mut d, opcode::MODIFY_CQ, cqn, &cq_in_pages(2, 9, 800));
        assert_eq!(status, bad);
        assert!(
            errors[0].contains("a resize to 4 entries with 3 completions outstanding"),
            "{errors:?}"
        );
        let (status, errors) = cq_command(&mut d, opcode::MODIFY_CQ, cqn, &cq_in_pages(23, 9, 800));
        assert_eq!(status, bad);
        assert!(errors[0].contains("a resize to 2^23 entries"), "{errors:?}");
        assert_eq!(cqes(&d).len(), 3, "no RESIZE CQE for a refused resize");
        // 2^22 entries: the RESIZE CQE at index 3, and the next completion at index 4 of
        // the new buffer (its pages all the same 2 MiB here).
        assert_eq!(
            cq_command(&mut d, opcode::MODIFY_CQ, cqn, &cq_in_pages(22, 9, 800)),
            (0, vec![])
        );
        assert_eq!(d.memory.get(rc::CQ_PAGE + 32 * 3 + 31, 1), [0x16]);
        datagram::post(&mut d, A, UD_A, 3, &to_nobody.wqe(&gather(8, DATA)));
        let c = d.memory.get(ALIASED + 32 * 4, 32);
        assert_eq!((datagram::be32(&c, 0), c[31]), (UD_A, 0x4a));
        assert_eq!(d.errors(), Vec::<String>::new());
    }
}
