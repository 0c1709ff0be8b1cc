//! The upstream driver's own accesses, replayed against the device model on the host.
//!
//! `data/cx3-upstream-7.2.trace.gz` was recorded in the `cx3-upstream` VM scenario on
//! the stock Debian 7.2 kernel (`TILDE_CX3_TRACE=1 cargo xtask vm cx3-upstream`, see
//! the README's "The emulated ConnectX-3"): mlx4_core's probe, mlx4_ib's registration,
//! opensm's sweep over QP0 between the two ports, the counters, an unbind and rebind
//! through the reset register, and the removal. Replayed, the device must do the same
//! DMA, answer the same register reads and see no driver mistake. Re-record it when the
//! device's behaviour changes on purpose.

use std::io::Read;

use hw_mlx4::model::hca::trace::{replay, TraceEvent};

fn recorded() -> String {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/cx3-upstream-7.2.trace.gz"
    ))
    .expect("the recorded trace");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("a gzip text trace");
    text
}

#[test]
fn the_upstream_drivers_probe_sweep_and_removal_replay_green() {
    let report = replay(&recorded()).expect("the trace parses");
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
    let text = recorded();
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
