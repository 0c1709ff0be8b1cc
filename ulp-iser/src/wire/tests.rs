//! Golden byte vectors for every PDU, written out by hand from RFC 7143 §11 and RFC 7145
//! §9 (not from the structs they test), and the parser's answers to hostile input.

extern crate std;

use std::vec::Vec;

use super::*;
use zerocopy::IntoBytes;

/// Bytes from hex, spaces ignored.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(core::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// An iSER header: control opcode, no STags.
const ISER_PLAIN: &str = "10000000 00000000 0000000000000000 00000000 0000000000000000";

fn emitted<H: PduHeader>(iser: &IserHeader, header: &H, data: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let len = emit(&mut buf, iser, header, data).unwrap();
    buf[..len].to_vec()
}

#[test]
fn iser_header_with_a_read_stag() {
    let read = Stag {
        stag: 0x1122_3344,
        va: 0x0102_0304_0506_0708,
    };
    let header = IserHeader::control(None, Some(read));
    assert_eq!(
        header.as_bytes(),
        hex("14000000 00000000 0000000000000000 11223344 0102030405060708")
    );
    assert_eq!(header.read(), Some(read));
    assert_eq!(header.write(), None);
    let write = Stag {
        stag: 0xaabb_ccdd,
        va: 0x1000,
    };
    let header = IserHeader::control(Some(write), None);
    assert_eq!(
        header.as_bytes(),
        hex("18000000 aabbccdd 0000000000001000 00000000 0000000000000000")
    );
    assert_eq!(header.write(), Some(write));
    assert_eq!(header.read(), None);
}

#[test]
fn scsi_command_read10() {
    let mut cmd = ScsiCommand::zeroed();
    cmd.flags = FLAG_FINAL | ScsiCommand::FLAG_READ | ScsiCommand::ATTR_SIMPLE;
    cmd.lun = Lun::new(1);
    cmd.itt.set(7);
    cmd.data_length.set(4096);
    cmd.cmdsn.set(10);
    cmd.exp_statsn.set(5);
    cmd.cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 0x10, 0, 0, 0x08, 0]);
    let read = Stag {
        stag: 0x0000_1234,
        va: 0xffff_8880_0000_0000,
    };
    let bytes = emitted(&IserHeader::control(None, Some(read)), &cmd, &[]);
    let golden = hex(
        "14000000 00000000 0000000000000000 00001234 ffff888000000000
         01c10000 00000000 0001000000000000 00000007 00001000 0000000a 00000005
         28000000 00100000 08000000 00000000",
    );
    assert_eq!(bytes, golden);
    let pdu = parse(&golden).unwrap();
    let Header::ScsiCommand(parsed) = pdu.header else {
        panic!("not a SCSI command")
    };
    assert_eq!(parsed, &cmd);
    assert_eq!(parsed.lun.get(), 1);
    assert_eq!(pdu.iser.read(), Some(read));
    assert!(pdu.data.is_empty());
}

#[test]
fn scsi_command_write_with_immediate_data() {
    let mut cmd = ScsiCommand::zeroed();
    cmd.flags = FLAG_FINAL | ScsiCommand::FLAG_WRITE | ScsiCommand::ATTR_SIMPLE;
    cmd.itt.set(0x100);
    cmd.data_length.set(8192);
    cmd.cmdsn.set(1);
    cmd.cdb[0] = 0x2a;
    let write = Stag {
        stag: 0x77,
        va: 0x2000,
    };
    let bytes = emitted(
        &IserHeader::control(Some(write), None),
        &cmd,
        b"immediate data!!",
    );
    let golden = hex(
        "18000000 00000077 0000000000002000 00000000 0000000000000000
         01a10000 00000010 0000000000000000 00000100 00002000 00000001 00000000
         2a000000 00000000 00000000 00000000",
    );
    assert_eq!(&bytes[..golden.len()], &golden[..]);
    assert_eq!(&bytes[golden.len()..], b"immediate data!!");
    let pdu = parse(&bytes).unwrap();
    assert_eq!(pdu.data, b"immediate data!!");
    assert_eq!(pdu.iser.write(), Some(write));
}

#[test]
fn scsi_response_with_sense_data() {
    // CHECK CONDITION, 18 bytes of sense (2-byte SenseLength + fixed-format sense), two
    // bytes of padding, underflow residual 512.
    let sense = hex("0012 70000500 0000000a 00000000 24000000 0000");
    let mut bytes = hex(ISER_PLAIN);
    bytes.extend(hex(
        "21820002 00000014 0000000000000000 00000007 00000000 0000000b 0000000c 0000002c
         00000000 00000000 00000200",
    ));
    bytes.extend(&sense);
    bytes.extend([0, 0]);
    let pdu = parse(&bytes).unwrap();
    let Header::ScsiResponse(rsp) = pdu.header else {
        panic!("not a SCSI response")
    };
    assert_eq!(rsp.cmd_status, 2);
    assert_eq!(rsp.response, 0);
    assert_eq!(
        rsp.flags & ScsiResponse::FLAG_UNDERFLOW,
        ScsiResponse::FLAG_UNDERFLOW
    );
    assert_eq!(rsp.itt.get(), 7);
    assert_eq!(
        (rsp.statsn.get(), rsp.exp_cmdsn.get(), rsp.max_cmdsn.get()),
        (11, 12, 44)
    );
    assert_eq!(rsp.residual_count.get(), 512);
    assert_eq!(pdu.data, &sense[..]);
}

#[test]
fn login_request_with_iser_keys() {
    let mut text_buf = [0u8; 256];
    let mut text = TextWriter::new(&mut text_buf);
    text.push("InitiatorName", "iqn.2026-11.tilde:host")
        .unwrap();
    text.push("RDMAExtensions", "Yes").unwrap();
    text.push_number("InitiatorRecvDataSegmentLength", 8192)
        .unwrap();
    let mut login = LoginRequest::zeroed();
    login.opcode |= OP_IMMEDIATE;
    login.flags = login_flags(true, LoginStage::Operational, LoginStage::FullFeature);
    login.isid = [0x80, 0x00, 0x02, 0x3d, 0x00, 0x00];
    login.itt.set(0);
    login.cid.set(0);
    login.cmdsn.set(1);
    let bytes = emitted(&IserHeader::control(None, None), &login, text.as_bytes());
    let golden_text = b"InitiatorName=iqn.2026-11.tilde:host\0RDMAExtensions=Yes\0InitiatorRecvDataSegmentLength=8192\0";
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "43870000 0000005c 8000023d00000000 00000000 00000000 00000001 00000000
         00000000 00000000 00000000 00000000",
    ));
    golden.extend(golden_text);
    assert_eq!(bytes, golden);
    let pdu = parse(&bytes).unwrap();
    let Header::LoginRequest(req) = pdu.header else {
        panic!("not a login request")
    };
    assert_eq!(
        login_current_stage(req.flags),
        Some(LoginStage::Operational)
    );
    assert_eq!(login_next_stage(req.flags), Some(LoginStage::FullFeature));
    let pairs: Vec<_> = TextPairs::new(pdu.data).map(Result::unwrap).collect();
    assert_eq!(
        pairs,
        [
            ("InitiatorName", "iqn.2026-11.tilde:host"),
            ("RDMAExtensions", "Yes"),
            ("InitiatorRecvDataSegmentLength", "8192")
        ]
    );
}

#[test]
fn login_response_success() {
    let mut bytes = hex(ISER_PLAIN);
    bytes.extend(hex(
        "23870000 00000017 8000023d00000001 00000000 00000000 00000001 00000002 00000041
         0000 00000000000000000000",
    ));
    bytes.extend(b"TargetPortalGroupTag=1\0");
    // One byte of padding to the 4-byte boundary.
    bytes.push(0);
    let pdu = parse(&bytes).unwrap_or_else(|e| panic!("{e:?}"));
    let pairs: Vec<_> = TextPairs::new(pdu.data).map(Result::unwrap).collect();
    assert_eq!(pairs, [("TargetPortalGroupTag", "1")]);
    let Header::LoginResponse(rsp) = pdu.header else {
        panic!("not a login response")
    };
    assert_eq!(rsp.tsih.get(), 1);
    assert_eq!((rsp.status_class, rsp.status_detail), (0, 0));
    assert_eq!((rsp.exp_cmdsn.get(), rsp.max_cmdsn.get()), (2, 0x41));
    assert_eq!(login_next_stage(rsp.flags), Some(LoginStage::FullFeature));
}

#[test]
fn nop_out_ping_and_nop_in_answer() {
    let mut ping = NopOut::zeroed();
    ping.opcode |= OP_IMMEDIATE;
    ping.flags = FLAG_FINAL;
    ping.itt.set(0x20);
    ping.ttt.set(RESERVED_TAG);
    ping.cmdsn.set(9);
    ping.exp_statsn.set(3);
    let bytes = emitted(&IserHeader::control(None, None), &ping, &[]);
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "40800000 00000000 0000000000000000 00000020 ffffffff 00000009 00000003
         00000000 00000000 00000000 00000000",
    ));
    assert_eq!(bytes, golden);
    let pdu = parse(&bytes).unwrap();
    assert!(pdu.bhs.immediate());
    assert_eq!(pdu.bhs.opcode(), opcode::NOOP_OUT);

    let mut answer = hex(ISER_PLAIN);
    answer.extend(hex(
        "20800000 00000000 0000000000000000 00000020 ffffffff 00000003 0000000a 00000029
         00000000 00000000 00000000",
    ));
    let pdu = parse(&answer).unwrap();
    assert!(!pdu.bhs.immediate());
    let Header::NopIn(nop) = pdu.header else {
        panic!("not a NOP-In")
    };
    assert_eq!(
        (nop.itt.get(), nop.ttt.get(), nop.statsn.get()),
        (0x20, RESERVED_TAG, 3)
    );
}

#[test]
fn task_management_abort_and_response() {
    let mut tmf = TaskMgmt::zeroed();
    tmf.opcode |= OP_IMMEDIATE;
    tmf.flags = FLAG_FINAL | TaskMgmt::ABORT_TASK;
    tmf.lun = Lun::new(0);
    tmf.itt.set(0x30);
    tmf.rtt.set(0x7);
    tmf.cmdsn.set(12);
    tmf.exp_statsn.set(4);
    tmf.refcmdsn.set(10);
    let bytes = emitted(&IserHeader::control(None, None), &tmf, &[]);
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "42810000 00000000 0000000000000000 00000030 00000007 0000000c 00000004 0000000a
         00000000 0000000000000000",
    ));
    assert_eq!(bytes, golden);

    let mut rsp = hex(ISER_PLAIN);
    rsp.extend(hex(
        "22800000 00000000 0000000000000000 00000030 00000000 00000004 0000000d 0000002d
         000000000000000000000000",
    ));
    let Header::TaskMgmtResponse(rsp) = parse(&rsp).unwrap().header else {
        panic!()
    };
    assert_eq!(
        (rsp.response, rsp.itt.get(), rsp.max_cmdsn.get()),
        (0, 0x30, 0x2d)
    );
}

#[test]
fn logout_request_and_response() {
    let mut logout = Logout::zeroed();
    logout.opcode |= OP_IMMEDIATE;
    logout.flags = FLAG_FINAL | Logout::REASON_CLOSE_SESSION;
    logout.itt.set(0x40);
    logout.cmdsn.set(20);
    logout.exp_statsn.set(8);
    let bytes = emitted(&IserHeader::control(None, None), &logout, &[]);
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "46800000 00000000 0000000000000000 00000040 00000000 00000014 00000008
         00000000 00000000 00000000 00000000",
    ));
    assert_eq!(bytes, golden);

    let mut rsp = hex(ISER_PLAIN);
    rsp.extend(hex(
        "26800000 00000000 0000000000000000 00000040 00000000 00000008 00000015 00000035
         00000000 0002 0014 00000000",
    ));
    let Header::LogoutResponse(rsp) = parse(&rsp).unwrap().header else {
        panic!()
    };
    assert_eq!(
        (rsp.response, rsp.t2wait.get(), rsp.t2retain.get()),
        (0, 2, 20)
    );
}

#[test]
fn text_request_and_response() {
    let mut text_buf = [0u8; 64];
    let mut text = TextWriter::new(&mut text_buf);
    text.push("SendTargets", "All").unwrap();
    let mut req = TextRequest::zeroed();
    req.flags = FLAG_FINAL;
    req.itt.set(0x50);
    req.ttt.set(RESERVED_TAG);
    req.cmdsn.set(2);
    req.exp_statsn.set(1);
    let bytes = emitted(&IserHeader::control(None, None), &req, text.as_bytes());
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "04800000 00000010 0000000000000000 00000050 ffffffff 00000002 00000001
         00000000 00000000 00000000 00000000",
    ));
    golden.extend(b"SendTargets=All\0");
    assert_eq!(bytes, golden);

    let mut rsp = hex(ISER_PLAIN);
    rsp.extend(hex(
        "24800000 0000001e 0000000000000000 00000050 ffffffff 00000001 00000003 00000023
         000000000000000000000000",
    ));
    rsp.extend(b"TargetName=iqn.2026-11.tgt:d0\0");
    let pdu = parse(&rsp).unwrap();
    let Header::TextResponse(_) = pdu.header else {
        panic!()
    };
    let pairs: Vec<_> = TextPairs::new(pdu.data).map(Result::unwrap).collect();
    assert_eq!(pairs, [("TargetName", "iqn.2026-11.tgt:d0")]);
}

#[test]
fn unsolicited_data_out() {
    let mut data = DataOut::zeroed();
    data.flags = FLAG_FINAL;
    data.itt.set(0x100);
    data.ttt.set(RESERVED_TAG);
    data.exp_statsn.set(6);
    data.datasn.set(0);
    data.offset.set(16);
    let bytes = emitted(&IserHeader::control(None, None), &data, b"0123");
    let mut golden = hex(ISER_PLAIN);
    golden.extend(hex(
        "05800000 00000004 0000000000000000 00000100 ffffffff 00000000 00000006 00000000
         00000000 00000010 00000000",
    ));
    golden.extend(b"0123");
    assert_eq!(bytes, golden);
}

#[test]
fn async_logout_request_and_reject() {
    let mut msg = hex(ISER_PLAIN);
    msg.extend(hex(
        "32800000 00000000 0000000000000000 ffffffff 00000000 00000009 0000000a 0000002a
         01 00 0000 0000 0005 00000000",
    ));
    let Header::AsyncMessage(msg) = parse(&msg).unwrap().header else {
        panic!()
    };
    assert_eq!(msg.async_event, AsyncMessage::EVENT_REQUEST_LOGOUT);
    assert_eq!(msg.param3.get(), 5);

    let rejected = hex(
        "01c10000 00000000 0001000000000000 00000007 00001000 0000000a 00000005
         28000000 00100000 08000000 00000000",
    );
    let mut reject = hex(ISER_PLAIN);
    reject.extend(hex(
        "3f800400 00000030 0000000000000000 ffffffff 00000000 00000009 0000000b 0000002b
         00000000 0000000000000000",
    ));
    reject.extend(&rejected);
    let pdu = parse(&reject).unwrap();
    let Header::Reject(r) = pdu.header else {
        panic!()
    };
    assert_eq!(r.reason, 4);
    assert_eq!(pdu.data, &rejected[..]);
}

#[test]
fn hostile_input_is_an_error() {
    let mut command = hex(ISER_PLAIN);
    command.extend(hex(
        "01c10000 00000000 0001000000000000 00000007 00001000 0000000a 00000005
         28000000 00100000 08000000 00000000",
    ));
    for len in 0..command.len() {
        assert!(parse(&command[..len]).is_err(), "{len} bytes parsed");
    }
    // Not an iSCSI control PDU (an iSER Hello).
    let mut hello = command.clone();
    hello[0] = 0x20;
    assert_eq!(parse(&hello).unwrap_err(), WireError::NotIscsiControl);
    // Opcodes iSER never carries: Data-In, R2T, SNACK, and an unassigned one.
    for op in [0x25, 0x31, 0x10, 0x3e] {
        let mut other = command.clone();
        other[ISER_HEADER_LEN] = op;
        assert_eq!(parse(&other).unwrap_err(), WireError::UnknownOpcode(op));
    }
    // A data segment longer than the message.
    let mut long = command.clone();
    long[ISER_HEADER_LEN + 7] = 9;
    long.extend([0; 8]);
    assert_eq!(parse(&long).unwrap_err(), WireError::DataLength);
    // More than 3 bytes of padding.
    let mut padded = command.clone();
    padded.extend([0; 4]);
    assert_eq!(parse(&padded).unwrap_err(), WireError::DataLength);
    // An AHS length pointing past the message.
    let mut ahs = command.clone();
    ahs[ISER_HEADER_LEN + 4] = 0xff;
    assert_eq!(parse(&ahs).unwrap_err(), WireError::Truncated);
    // A buffer too small to emit into.
    let mut small = [0u8; ISER_HEADER_LEN + BHS_LEN - 1];
    let nop = NopOut::zeroed();
    assert_eq!(
        emit(&mut small, &IserHeader::control(None, None), &nop, &[]),
        Err(WireError::BufferTooSmall)
    );
}

/// An Additional Header Segment (`TotalAHSLength` counts 4-byte words) sits between the
/// BHS and the data, and up to 3 bytes of padding may follow the data.
#[test]
fn ahs_and_padding() {
    let mut response = hex(ISER_PLAIN);
    response.extend(hex(
        "21800000 01000003 0000000000000000 00000007 ffffffff 00000004 00000005 00000014
         00000000 00000000 00000000",
    ));
    response.extend(hex("a1a2a3a4 d1d2d3 00"));
    let pdu = parse(&response).unwrap();
    assert_eq!(pdu.ahs, &[0xa1, 0xa2, 0xa3, 0xa4][..]);
    assert_eq!(pdu.data, &[0xd1, 0xd2, 0xd3][..]);
    // Three bytes of padding are the most a 4-byte boundary needs.
    let mut padded = response.clone();
    padded.extend([0; 2]);
    assert_eq!(parse(&padded).unwrap().data, &[0xd1, 0xd2, 0xd3][..]);
    padded.push(0);
    assert_eq!(parse(&padded).unwrap_err(), WireError::DataLength);
}

/// `DataSegmentLength` is 24 bits: every one of its bytes counts, and a data segment
/// that does not fit it is refused rather than emitted with a wrapped length.
#[test]
fn data_segment_length_is_24_bits() {
    let mut length = Be24::default();
    length.set(0x12_3456);
    assert_eq!(length.0, [0x12, 0x34, 0x56]);
    assert_eq!(length.get(), 0x12_3456);
    assert_eq!(Be24([0xfe, 0xdc, 0xba]).get(), 0xfe_dcba);

    let out = NopOut::zeroed();
    let iser = IserHeader::control(None, None);
    let largest = std::vec![0x5a; MAX_DATA_SEGMENT];
    let mut buf = std::vec![0u8; ISER_HEADER_LEN + BHS_LEN + MAX_DATA_SEGMENT + 1];
    let len = emit(&mut buf, &iser, &out, &largest).unwrap();
    assert_eq!(len, ISER_HEADER_LEN + BHS_LEN + MAX_DATA_SEGMENT);
    assert_eq!(buf[ISER_HEADER_LEN + 5..ISER_HEADER_LEN + 8], [0xff; 3]);
    let pdu = parse(&buf[..len]).unwrap();
    assert_eq!(pdu.data.len(), MAX_DATA_SEGMENT);
    let too_long = std::vec![0x5a; MAX_DATA_SEGMENT + 1];
    assert_eq!(
        emit(&mut buf, &iser, &out, &too_long),
        Err(WireError::DataTooLong)
    );
}

/// The limits of RFC 7143 §6.1, at their edges: keys of 63 bytes and values of 255 are
/// read and written, one byte more is refused both ways.
#[test]
fn text_limits_at_their_edges() {
    let key = "k".repeat(KEY_MAX);
    let value = "v".repeat(VALUE_MAX);
    let mut buf = [0u8; 1024];
    let mut text = TextWriter::new(&mut buf);
    assert!(text.is_empty());
    text.push(&key, &value).unwrap();
    assert!(!text.is_empty());
    assert_eq!(text.len(), KEY_MAX + VALUE_MAX + 2);
    assert_eq!(
        TextPairs::new(text.as_bytes()).collect::<Vec<_>>(),
        std::vec![Ok((key.as_str(), value.as_str()))]
    );
    let long_key = "k".repeat(KEY_MAX + 1);
    let long_value = "v".repeat(VALUE_MAX + 1);
    for (k, v) in [
        (long_key.as_str(), "v"),
        ("k", long_value.as_str()),
        ("", "v"),
        ("k", "v\0w"),
    ] {
        assert_eq!(text.push(k, v), Err(WireError::BadText), "{k:?}={v:?}");
        let pair = std::format!("{k}={v}");
        if !v.contains('\0') {
            assert_eq!(
                TextPairs::new(pair.as_bytes()).next(),
                Some(Err(WireError::BadText)),
                "{pair:?}"
            );
        }
    }
    // Refused pushes leave what was written.
    assert_eq!(text.len(), KEY_MAX + VALUE_MAX + 2);
}

#[test]
fn numbers_are_plain_decimal() {
    assert_eq!(parse_number("4294967295"), Ok(u32::MAX));
    assert_eq!(parse_number("0"), Ok(0));
    // Rust's own parser takes a sign; RFC 7143's decimal constants have none.
    assert_eq!(parse_number("+5"), Err(WireError::BadText));
    // A u32 needs at most 10 digits; leading zeros do not make a longer number valid.
    assert_eq!(parse_number("00000000001"), Err(WireError::BadText));
    assert_eq!(parse_number(""), Err(WireError::BadText));
}

#[test]
fn hostile_text_is_an_error() {
    for bad in [
        &b"NoEquals\0"[..],
        b"=value\0",
        b"\xff\xfe=x\0",
        &[b'k'; 64 + 2][..],
    ] {
        assert_eq!(
            TextPairs::new(bad).next(),
            Some(Err(WireError::BadText)),
            "{bad:?}"
        );
    }
    let mut long_value = b"Key=".to_vec();
    long_value.extend([b'v'; VALUE_MAX + 1]);
    assert_eq!(
        TextPairs::new(&long_value).next(),
        Some(Err(WireError::BadText))
    );
    assert_eq!(parse_number("4294967296"), Err(WireError::BadText));
    assert_eq!(parse_number("0x10"), Err(WireError::BadText));
    assert_eq!(parse_number("8192"), Ok(8192));
    let mut buf = [0u8; 8];
    let mut text = TextWriter::new(&mut buf);
    assert_eq!(text.push("Key", "toolong"), Err(WireError::BufferTooSmall));
    assert_eq!(text.push("K=y", "v"), Err(WireError::BadText));
}

#[test]
fn luns_encode_as_sam_levels() {
    assert_eq!(Lun::new(0).0, [0; 8]);
    assert_eq!(Lun::new(5).0, [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(Lun::new(0x4001).0, [0x40, 0x01, 0, 0, 0, 0, 0, 0]);
    for lun in [0u64, 1, 255, 0x4001, 0x0001_0002_0003_0004] {
        assert_eq!(Lun::new(lun).get(), lun);
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes either parse or are refused; a parse's views lie inside the input.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(pdu) = parse(&bytes) {
                prop_assert!(pdu.data.len() <= bytes.len());
                prop_assert!(pdu.ahs.len() <= bytes.len());
            }
        }

        /// Any iSCSI control PDU with a known opcode survives emit then parse.
        #[test]
        fn emit_then_parse(bhs in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform16(any::<u8>()),
                           data in proptest::collection::vec(any::<u8>(), 0..64), stag in any::<u32>()) {
            let mut raw = [0u8; BHS_LEN];
            raw[..32].copy_from_slice(&bhs);
            raw[32..].copy_from_slice(&tail);
            raw[0] = opcode::SCSI_CMD;
            let cmd = ScsiCommand::read_from_bytes(&raw).unwrap();
            let iser = IserHeader::control(Some(Stag { stag, va: 1 }), None);
            let mut buf = [0u8; 256];
            let len = emit(&mut buf, &iser, &cmd, &data).unwrap();
            let pdu = parse(&buf[..len]).unwrap();
            let Header::ScsiCommand(back) = pdu.header else { panic!() };
            prop_assert_eq!(back.cdb, cmd.cdb);
            prop_assert_eq!(back.itt, cmd.itt);
            prop_assert_eq!(pdu.data, &data[..]);
            prop_assert_eq!(pdu.iser.write().map(|s| s.stag), Some(stag));
        }

        /// Text pairs never panic, and what a writer writes reads back.
        #[test]
        fn text_round_trip(key in "[A-Za-z][A-Za-z0-9.:-]{0,62}", value in "[ -~&&[^=]]{0,200}", junk in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = TextPairs::new(&junk).count();
            let mut buf = [0u8; 512];
            let mut text = TextWriter::new(&mut buf);
            text.push(&key, &value).unwrap();
            let pairs: Vec<_> = TextPairs::new(text.as_bytes()).collect();
            prop_assert_eq!(pairs, std::vec![Ok((key.as_str(), value.as_str()))]);
        }
    }
}
