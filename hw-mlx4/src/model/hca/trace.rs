//! A trace of what a driver did to the device, and its replay: the register accesses a
//! transport saw, in order, each followed by the DMA the device did for it. Recorded from
//! the upstream driver in a VM (`cx3-device --trace`), replayed on the host by a test
//! with no VM: the device must do the same DMA, answer the same register reads and
//! report no driver error, so a change to the model that the real driver would notice
//! shows up in `cargo test`.
//!
//! The format is text, one event per line:
//!
//! ```text
//! bm 1                          bus mastering on (0: off)
//! w0 80680 00000000             a BAR0 write at 0x80680 of the bytes 00 00 00 00
//! r0 80698 00200000             a BAR0 read, and what the device answered
//! w2 1014 00000200              a BAR2 write (r2 likewise)
//! reset                         a function reset
//! tick                          the device's timer
//! dr 1f2e000 4096 0000000c02    a DMA read of 4096 bytes: the data, trailing zeros cut
//! dw 1f2e000 256 0a0b           a DMA write of 256 bytes: what the device wrote, likewise
//! ```
//!
//! The replay compares the bytes the device writes with the recorded ones: a mailbox
//! answer, a CQE or an EQE that changes is a change the real driver would read.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::Write;

use super::{Dma, DmaFault, Hca, HcaEvent};

/// One traced event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    BusMaster(bool),
    Read {
        bar: u8,
        offset: u64,
        data: Vec<u8>,
    },
    Write {
        bar: u8,
        offset: u64,
        data: Vec<u8>,
    },
    /// A doorbell taken from BAR2 mapped into the guest (`Hca::bar2_watched_write`).
    WatchedWrite {
        offset: u64,
        data: Vec<u8>,
    },
    Reset,
    /// The device's timer fired (RNR retries, flushes of QPs in error).
    Tick,
    DmaRead {
        address: u64,
        len: usize,
        data: Vec<u8>,
    },
    DmaWrite {
        address: u64,
        len: usize,
        data: Vec<u8>,
    },
}

impl TraceEvent {
    /// The event as a trace line.
    pub fn line(&self) -> String {
        match self {
            Self::BusMaster(on) => format!("bm {}", u8::from(*on)),
            Self::Read { bar, offset, data } => format!("r{bar} {offset:x} {}", hex(data)),
            Self::Write { bar, offset, data } => format!("w{bar} {offset:x} {}", hex(data)),
            Self::WatchedWrite { offset, data } => format!("ww2 {offset:x} {}", hex(data)),
            Self::Reset => "reset".into(),
            Self::Tick => "tick".into(),
            Self::DmaRead { address, len, data } => {
                format!("dr {address:x} {len} {}", hex(without_trailing_zeros(data)))
            }
            Self::DmaWrite { address, len, data } => {
                format!("dw {address:x} {len} {}", hex(without_trailing_zeros(data)))
            }
        }
    }

    /// Parses a trace line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let kind = words.next().ok_or("empty line")?;
        let mut next = |what: &str| words.next().ok_or_else(|| format!("{line:?}: no {what}"));
        let number =
            |s: &str, radix| u64::from_str_radix(s, radix).map_err(|e| format!("{line:?}: {e}"));
        Ok(match kind {
            "bm" => Self::BusMaster(next("state")? == "1"),
            "reset" => Self::Reset,
            "tick" => Self::Tick,
            "r0" | "r2" | "w0" | "w2" => {
                let bar = if kind.ends_with('0') { 0 } else { 2 };
                let offset = number(next("offset")?, 16)?;
                let data = unhex(next("data")?)?;
                if kind.starts_with('r') {
                    Self::Read { bar, offset, data }
                } else {
                    Self::Write { bar, offset, data }
                }
            }
            "ww2" => Self::WatchedWrite {
                offset: number(next("offset")?, 16)?,
                data: unhex(next("data")?)?,
            },
            "dr" | "dw" => {
                let address = number(next("address")?, 16)?;
                let len = number(next("length")?, 10)? as usize;
                let mut data = unhex(words.next().unwrap_or(""))?;
                if data.len() > len {
                    return Err(format!("{line:?}: more data than its length"));
                }
                data.resize(len, 0);
                if kind == "dr" {
                    Self::DmaRead { address, len, data }
                } else {
                    Self::DmaWrite { address, len, data }
                }
            }
            other => return Err(format!("{line:?}: unknown event {other:?}")),
        })
    }
}

fn without_trailing_zeros(data: &[u8]) -> &[u8] {
    let used = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &data[..used]
}

fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err(format!("odd hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex {s:?}: {e}")))
        .collect()
}

/// Host memory that serves the DMA a trace recorded, in order, and notes any access that
/// differs from it.
struct ReplayDma {
    expected: RefCell<VecDeque<TraceEvent>>,
    divergences: RefCell<Vec<String>>,
}

impl Dma for ReplayDma {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let next = self.expected.borrow_mut().pop_front();
        match next {
            Some(TraceEvent::DmaRead {
                address: a,
                len,
                data,
            }) if a == address && len == buf.len() => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            other => {
                self.divergences.borrow_mut().push(format!(
                    "the device read {} bytes at {address:#x}; the trace has {other:?}",
                    buf.len()
                ));
                Err(DmaFault {
                    address,
                    len: buf.len(),
                })
            }
        }
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        let next = self.expected.borrow_mut().pop_front();
        match next {
            Some(TraceEvent::DmaWrite {
                address: a,
                len,
                data: recorded,
            }) if a == address && len == data.len() => {
                if let Some(at) = recorded.iter().zip(data).position(|(r, d)| r != d) {
                    self.divergences.borrow_mut().push(format!(
                        "the device wrote {} bytes at {address:#x} that differ from the trace \
                         from byte {at}: {} where the trace has {}",
                        data.len(),
                        hex(&data[at..data.len().min(at + 16)]),
                        hex(&recorded[at..recorded.len().min(at + 16)]),
                    ));
                }
                Ok(())
            }
            other => {
                self.divergences.borrow_mut().push(format!(
                    "the device wrote {} bytes at {address:#x}; the trace has {other:?}",
                    data.len()
                ));
                Err(DmaFault {
                    address,
                    len: data.len(),
                })
            }
        }
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Register accesses replayed.
    pub accesses: usize,
    /// Firmware commands the device executed.
    pub commands: u64,
    /// Where the device did other than the trace says, or reported a driver error.
    pub failures: Vec<String>,
}

/// Replays a trace against a new device.
pub fn replay(trace: &str) -> Result<ReplayReport, String> {
    let events: Vec<TraceEvent> = trace
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(TraceEvent::parse)
        .collect::<Result<_, _>>()?;
    let mut hca = Hca::new();
    let mut report = ReplayReport::default();
    let mut i = 0;
    while let Some(event) = events.get(i) {
        i += 1;
        // The DMA that follows an access belongs to it.
        let dma_events: VecDeque<TraceEvent> = events[i..]
            .iter()
            .take_while(|e| matches!(e, TraceEvent::DmaRead { .. } | TraceEvent::DmaWrite { .. }))
            .cloned()
            .collect();
        i += dma_events.len();
        let dma = ReplayDma {
            expected: RefCell::new(dma_events),
            divergences: RefCell::new(Vec::new()),
        };
        let what = event.line();
        match event {
            TraceEvent::BusMaster(on) => hca.set_bus_master(*on),
            TraceEvent::Reset => hca.reset(),
            TraceEvent::Tick => hca.tick(&dma),
            TraceEvent::Read { bar, offset, data } => {
                let mut got = vec![0u8; data.len()];
                if *bar == 0 {
                    hca.bar0_read(*offset, &mut got);
                } else {
                    hca.bar2_read(*offset, &mut got);
                }
                if &got != data {
                    report
                        .failures
                        .push(format!("{what}: the device answered {}", hex(&got)));
                }
            }
            TraceEvent::Write { bar, offset, data } => {
                if *bar == 0 {
                    hca.bar0_write(&dma, *offset, data);
                    if hca.reset_requested() {
                        hca.set_bus_master(false);
                    }
                } else {
                    hca.bar2_write(&dma, *offset, data);
                }
            }
            TraceEvent::WatchedWrite { offset, data } => {
                hca.bar2_watched_write(&dma, *offset, data)
            }
            TraceEvent::DmaRead { .. } | TraceEvent::DmaWrite { .. } => {}
        }
        report.accesses += 1;
        for d in dma.divergences.into_inner() {
            report.failures.push(format!("{what}: {d}"));
        }
        let left = dma.expected.into_inner();
        if !left.is_empty() {
            report.failures.push(format!(
                "{what}: the trace has {} more DMA: {:?}",
                left.len(),
                left.front()
            ));
        }
        for e in hca.take_events() {
            if let HcaEvent::DriverError(line) = e {
                report
                    .failures
                    .push(format!("{what}: driver error: {line}"));
            }
        }
        if report.failures.len() > 20 {
            break;
        }
    }
    report.commands = hca.commands;
    Ok(report)
}
