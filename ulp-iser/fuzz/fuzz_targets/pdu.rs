//! Hostile bytes from a target: the PDU parser, the text parser, and the initiator core
//! in login and in full feature phase must answer each message with a parse, an upcall
//! or a protocol error, never a panic or an out-of-bounds access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ulp_iser::initiator::{DataDirection, Initiator, ScsiRequest};
use ulp_iser::login::LoginConfig;
use ulp_iser::wire::{self, emit, login_flags, IserHeader, LoginStage, Stag, TextPairs};

const CONFIG: LoginConfig<'static> = LoginConfig {
    initiator_name: "iqn.2026-11.tilde:fuzz",
    target_name: Some("iqn.2026-11.tilde:target"),
    isid: [0x80, 0, 0, 0, 0, 1],
    recv_data_segment_length: 8192,
    max_burst_length: 262_144,
    first_burst_length: 65_536,
    immediate_data: true,
    initial_r2t: true,
    max_outstanding_unexpected_pdus: 0,
};

/// An initiator in full feature phase with a few tasks outstanding.
fn logged_in() -> Initiator<'static, 8> {
    let mut core = Initiator::new(CONFIG);
    core.start_login();
    let mut buf = [0u8; 2048];
    for (stage, next, text) in [
        (LoginStage::Security, LoginStage::Operational, &b"AuthMethod=None\0"[..]),
        (LoginStage::Operational, LoginStage::FullFeature, b"RDMAExtensions=Yes\0"),
    ] {
        let _ = core.poll_transmit(&mut buf);
        let mut rsp = wire::LoginResponse::zeroed();
        rsp.flags = login_flags(true, stage, next);
        rsp.exp_cmdsn.set(1);
        rsp.max_cmdsn.set(8);
        let len = emit(&mut buf, &IserHeader::control(None, None), &rsp, text).unwrap_or(0);
        let _ = core.receive(&buf[..len], None, &mut |_| {});
    }
    let stag = Stag { stag: 0x100, va: 0x1000 };
    for data in [DataDirection::None, DataDirection::Read { stag, len: 4096 }, DataDirection::Write { stag, len: 8192 }] {
        let _ = core.submit(ScsiRequest { lun: 0, cdb: [0; 16], data });
    }
    let _ = core.ping();
    while let Ok(Some(_)) = core.poll_transmit(&mut buf) {}
    core
}

fuzz_target!(|data: &[u8]| {
    if let Ok(pdu) = wire::parse(data) {
        for pair in TextPairs::new(pdu.data) {
            let _ = pair;
        }
    }
    let mut login: Initiator<'static, 8> = Initiator::new(CONFIG);
    login.start_login();
    let _ = login.poll_transmit(&mut [0u8; 2048]);
    let _ = login.receive(data, None, &mut |_| {});
    let mut core = logged_in();
    // Twice: a second message after an error must be harmless too.
    for _ in 0..2 {
        let _ = core.receive(data, Some(0x100), &mut |_| {});
        let _ = core.poll_transmit(&mut [0u8; 2048]);
    }
    core.fail(&mut |_| {});
});
