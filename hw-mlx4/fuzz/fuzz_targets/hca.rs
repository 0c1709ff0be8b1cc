//! The emulated ConnectX-3 against arbitrary driver behaviour: commands with arbitrary
//! opcodes, modifiers and mailboxes (MADs among them), EQ, CQ and send doorbells, resets,
//! over host memory whose contents the input also chooses. The device must answer every
//! one with a status or a reported error, never a panic.
#![no_main]

use std::cell::RefCell;

use hw_mlx4::model::hca::{Dma, DmaFault, Hca};
use hw_mlx4::wire::cmd::{hcr, HCR_BASE, RESET_BASE, RESET_OFFSET};
use libfuzzer_sys::fuzz_target;

/// 1 MiB of memory at bus address 0x100000: mailboxes at its start, the firmware area
/// at +0x10000, ICM (the MTT table and whatever the input maps) at +0x20000.
const BASE: u64 = 0x10_0000;
const SIZE: usize = 1 << 20;
struct Memory(RefCell<Vec<u8>>);

impl Dma for Memory {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let fault = DmaFault { address, len: buf.len() };
        let start = usize::try_from(address.checked_sub(BASE).ok_or(fault)?).map_err(|_| fault)?;
        let src = self.0.borrow();
        let src = src.get(start..start.checked_add(buf.len()).ok_or(fault)?).ok_or(fault)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        let fault = DmaFault { address, len: data.len() };
        let start = usize::try_from(address.checked_sub(BASE).ok_or(fault)?).map_err(|_| fault)?;
        let mut dst = self.0.borrow_mut();
        let end = start.checked_add(data.len()).ok_or(fault)?;
        dst.get_mut(start..end).ok_or(fault)?.copy_from_slice(data);
        Ok(())
    }
}

/// Posts a command through the HCR.
fn command(hca: &mut Hca, memory: &Memory, opcode: u32, op_mod: u32, in_mod: u32, in_param: u64, event: bool) {
    let words = [
        (hcr::IN_PARAM, (in_param >> 32) as u32),
        (hcr::IN_PARAM + 4, in_param as u32),
        (hcr::IN_MODIFIER, in_mod),
        (hcr::OUT_PARAM, 0),
        (hcr::OUT_PARAM + 4, (BASE + 0x1000) as u32),
        (hcr::TOKEN, 0x55aa << 16),
        (
            hcr::STATUS,
            hcr::GO_BIT | if event { hcr::EVENT_BIT } else { 0 } | op_mod << hcr::OPMOD_SHIFT | opcode,
        ),
    ];
    for (offset, value) in words {
        hca.bar0_write(memory, HCR_BASE + offset as u64, &value.to_be_bytes());
    }
}

/// What a driver does before the data path exists: the firmware area, ICM with the MTT
/// table at ICM 0x1000_0000, INIT_HCA (so that the input's commands and doorbells reach
/// EQs, CQs, QPs and WQEs).
fn bring_up(hca: &mut Hca, memory: &Memory) {
    let vpm = |virt: u64, phys: u64, log_pages: u64| {
        let mut m = [0u8; 16];
        m[..8].copy_from_slice(&virt.to_be_bytes());
        m[8..].copy_from_slice(&(phys | log_pages).to_be_bytes());
        let _ = memory.write(BASE, &m);
    };
    command(hca, memory, 0x4, 0, 0, 0, false); // QUERY_FW
    vpm(0, BASE + 0x1_0000, 4);
    command(hca, memory, 0xfff, 0, 1, BASE, false); // MAP_FA, 16 pages
    command(hca, memory, 0xff6, 0, 0, 0, false); // RUN_FW
    vpm(0x1000_0000, BASE + 0x2_0000, 4);
    command(hca, memory, 0xffa, 0, 1, BASE, false); // MAP_ICM: the MTT table
    let mut init = [0u8; 0x110];
    init[0] = 2;
    init[0x37] = 10;
    init[0x57] = 8;
    init[0x87] = 5;
    init[0xfb] = 10;
    init[0xd3] = 9;
    init[0xd7] = 4;
    init[0xdb] = 5;
    init[0x100..0x108].copy_from_slice(&0x1000_0000u64.to_be_bytes());
    let _ = memory.write(BASE, &init);
    command(hca, memory, 0x7, 0, 0, BASE, false); // INIT_HCA
    let _ = memory.write(BASE, &[0u8; 0x110]);
}

fuzz_target!(|input: &[u8]| {
    let memory = Memory(RefCell::new(vec![0; SIZE]));
    let mut hca = Hca::new();
    hca.set_bus_master(true);
    let Some((&first, input)) = input.split_first() else {
        return;
    };
    if first & 1 != 0 {
        bring_up(&mut hca, &memory);
    }
    // Each operation: a kind byte, then its bytes.
    let mut ops = input;
    while let Some((&kind, rest)) = ops.split_first() {
        ops = rest;
        let take = |ops: &mut &[u8], n: usize| -> Option<Vec<u8>> {
            let (head, tail) = ops.split_at_checked(n)?;
            *ops = tail;
            Some(head.to_vec())
        };
        match kind % 6 {
            // A command: opcode (2), op_mod (1), in_mod (4), event flag (1); mailboxes at
            // fixed addresses inside the memory (or, by the input's choice, outside it).
            0 => {
                let Some(b) = take(&mut ops, 9) else { break };
                let opcode = u32::from(u16::from_be_bytes([b[0], b[1]]) & 0xfff);
                let op_mod = u32::from(b[2] & 0xf);
                let in_mod = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
                let inbox = if b[8] & 1 == 0 { BASE } else { 0xdead_0000 };
                command(&mut hca, &memory, opcode, op_mod, in_mod, inbox, b[7] & 1 != 0);
            }
            // Memory contents: an offset (3) and 64 bytes.
            1 => {
                let Some(b) = take(&mut ops, 67) else { break };
                let at = (u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize) % (SIZE - 64);
                memory.0.borrow_mut()[at..at + 64].copy_from_slice(&b[3..]);
            }
            // A UAR write: offset (3), length selector (1, whose bit 2 says taken from
            // the mapped BAR2 by watching), 8 bytes.
            2 => {
                let Some(b) = take(&mut ops, 12) else { break };
                let offset = u64::from(u32::from_be_bytes([0, b[0], b[1], b[2]]));
                let len = [4usize, 8, 2, 1][usize::from(b[3] & 3)];
                if b[3] & 4 == 0 {
                    hca.bar2_write(&memory, offset, &b[4..4 + len]);
                } else {
                    hca.bar2_watched_write(&memory, offset, &b[4..4 + len]);
                }
            }
            // A BAR0 access anywhere: offset (3), 4 bytes.
            3 => {
                let Some(b) = take(&mut ops, 7) else { break };
                let offset = u64::from(u32::from_be_bytes([0, b[0], b[1], b[2]]) & 0xf_ffff);
                hca.bar0_write(&memory, offset, &b[3..7]);
                let mut out = [0u8; 4];
                hca.bar0_read(offset, &mut out);
            }
            // The reset register.
            4 => hca.bar0_write(&memory, RESET_BASE + RESET_OFFSET, &1u32.to_be_bytes()),
            // The device's timer.
            5 if kind & 0x40 != 0 => hca.tick(&memory),
            _ => hca.set_bus_master(kind & 0x80 != 0),
        }
        let _ = hca.take_events();
    }
});
