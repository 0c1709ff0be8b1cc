//! The upstream driver's own accesses, replayed against the device model on the host.
//!
//! Two traces, recorded on the stock Debian 7.2 kernel (`TILDE_CX3_TRACE=1 cargo xtask
//! vm SCENARIO`, see docs/cx3-device.md for how to re-record them):
//!
//! - `data/cx3-upstream-7.2.trace.gz` (`cx3-upstream`): mlx4_core's probe, mlx4_ib's
//!   registration, opensm's sweep over QP0 between the two ports, the counters, an unbind
//!   and rebind through the reset register, and the removal;
//! - `data/cx3-conformance-7.2.trace.gz` (`cx3-conformance`, up to the end of the first
//!   suite run): IPoIB's bring-up, then tilde's verbs conformance cases through mlx4_ib:
//!   RC and UD sends, RDMA READ and WRITE, atomics, fast registration and invalidation,
//!   RNR retries on the device's timer, remote access errors, flushes, the RDMA CM;
//! - `data/cx3-ipoib-7.2.trace.gz` (`cx3-ipoib`, up to the end of its pings, with BAR2
//!   mapped and watched): the kernel's IPoIB on both ports, ARP through the broadcast
//!   group, IPv6 neighbour discovery through the solicited-node groups, UD unicast.
//!
//! Replayed, the device must do the same DMA, writing the same bytes (mailbox answers,
//! CQEs, EQEs, received data), answer the same register reads and see no driver mistake.
//! Re-record them when the device's behaviour changes on purpose.

use std::io::Read;

use hw_mlx4::model::hca::trace::{replay, TraceEvent};

fn recorded(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let gz = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("a gzip text trace");
    text
}

#[test]
fn the_upstream_drivers_probe_sweep_and_removal_replay_green() {
    let report = replay(&recorded("cx3-upstream-7.2.trace.gz")).expect("the trace parses");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    // Two probes (the rebind), each with its ~900 commands, and opensm's sweep.
    assert!(report.commands > 2000, "only {} commands", report.commands);
    assert!(
        report.accesses > 20_000,
        "only {} accesses",
        report.accesses
    );
}

/// The replay is a check that can fail: an INIT_HCA mailbox the device must refuse
/// (an interface version it does not speak) turns the replay red.
#[test]
fn a_replay_notices_a_device_that_answers_otherwise() {
    let text = recorded("cx3-upstream-7.2.trace.gz");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // The INIT_HCA command word (opcode 7, go bit), then its mailbox read: change the
    // version byte (the mailbox's first) from 2 to 3.
    let init = lines
        .iter()
        .position(|l| l.starts_with("w0 80698 ") && l.ends_with("0007"))
        .expect("an INIT_HCA in the trace");
    let mailbox = init + 1;
    let TraceEvent::DmaRead {
        address,
        len,
        mut data,
    } = TraceEvent::parse(&lines[mailbox]).unwrap()
    else {
        panic!("INIT_HCA's mailbox read follows it: {}", lines[mailbox]);
    };
    assert_eq!(data[0], 2, "INIT_HCA version 2 as recorded");
    data[0] = 3;
    lines[mailbox] = TraceEvent::DmaRead { address, len, data }.line();
    let report = replay(&lines.join("\n")).unwrap();
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("INIT_HCA version 3")),
        "{:#?}",
        report.failures
    );
}

#[test]
fn the_conformance_cases_through_mlx4_ib_replay_green() {
    let report = replay(&recorded("cx3-conformance-7.2.trace.gz")).expect("the trace parses");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.commands > 1000, "only {} commands", report.commands);
}

/// What the device writes is compared too: a CQE whose recorded byte count differs from
/// the one the device writes turns the replay red, naming the byte.
#[test]
fn a_replay_notices_a_device_that_writes_otherwise() {
    let text = recorded("cx3-conformance-7.2.trace.gz");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // A 32-byte DMA write with the owner bit set in its last byte: a CQE as mlx4 lays it
    // out (byte_cnt at 0x14..0x18).
    let cqe = lines
        .iter()
        .position(|l| l.starts_with("dw ") && l.split(' ').nth(2) == Some("32"))
        .expect("a CQE in the trace");
    let TraceEvent::DmaWrite {
        address,
        len,
        mut data,
    } = TraceEvent::parse(&lines[cqe]).unwrap()
    else {
        panic!("not a DMA write: {}", lines[cqe]);
    };
    data[0x17] ^= 0x01;
    lines[cqe] = TraceEvent::DmaWrite { address, len, data }.line();
    let report = replay(&lines.join("\n")).unwrap();
    assert!(
        report.failures.iter().any(|f| f.contains(&format!(
            "{address:#x} that differ from the trace from byte 23"
        ))),
        "{:#?}",
        report.failures
    );
}

#[test]
fn ipoib_arp_and_pings_replay_green() {
    let report = replay(&recorded("cx3-ipoib-7.2.trace.gz")).expect("the trace parses");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.commands > 1000, "only {} commands", report.commands);
}

/// The DMA a device does is matched to the trace by address and length, both ways, and
/// a line's data is its bytes up to the last non-zero one.
#[test]
fn a_replay_matches_dma_by_address_and_length() {
    let text = recorded("cx3-upstream-7.2.trace.gz");
    let lines: Vec<&str> = text.lines().collect();
    for kind in ["dr ", "dw "] {
        let at = lines.iter().position(|l| l.starts_with(kind)).unwrap();
        for field in [1, 2] {
            let mut words: Vec<String> = lines[at].split(' ').map(str::to_string).collect();
            // One more in the address (hex) or the length (decimal).
            words[field] = if field == 1 {
                format!("{:x}", u64::from_str_radix(&words[1], 16).unwrap() + 0x1000)
            } else {
                format!("{}", words[2].parse::<usize>().unwrap() + 8)
            };
            let mut changed: Vec<String> = lines[..at + 1].iter().map(|l| l.to_string()).collect();
            changed[at] = words.join(" ");
            let report = replay(&changed.join("\n")).unwrap();
            let says = if kind == "dr " {
                "the device read"
            } else {
                "the device wrote"
            };
            assert!(
                report.failures.iter().any(|f| f.contains(says)),
                "{kind} field {field}: {:#?}",
                report.failures
            );
        }
    }
    let event = TraceEvent::DmaRead {
        address: 0x10,
        len: 4,
        data: vec![1, 0, 2, 0],
    };
    assert_eq!(event.line(), "dr 10 4 010002");
    assert_eq!(TraceEvent::parse("dr 10 4 010002").unwrap(), event);
    assert!(TraceEvent::parse("dr 10 4 01000").is_err(), "odd hex");
    assert!(
        TraceEvent::parse("dr 10 1 0100").is_err(),
        "more data than its length"
    );
}

/// A replay that goes wrong stops after 21 failures rather than reporting every line.
#[test]
fn a_replay_stops_after_twenty_one_failures() {
    let trace = vec!["r0 80698 ffffffff"; 40].join("\n");
    let report = replay(&trace).unwrap();
    assert_eq!(report.failures.len(), 21, "{:#?}", report.failures);
}
