//! Pins every layout to the upstream C definitions: sizes, field offsets, byte order.

use super::*;
use crate::wire::cmd::{hcr, HcrCommand, HCR_SIZE};
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

#[test]
fn send_wqe_segment_sizes_match_the_c_structs() {
    assert_eq!(size_of::<CtrlSeg>(), 16);
    assert_eq!(size_of::<RaddrSeg>(), 16);
    assert_eq!(size_of::<AtomicSeg>(), 16);
    assert_eq!(size_of::<AddressVector>(), 32);
    assert_eq!(size_of::<DatagramSeg>(), 48);
    assert_eq!(size_of::<FastRegSeg>(), 48);
    assert_eq!(size_of::<LocalInvalSeg>(), 32);
    assert_eq!(size_of::<DataSeg>(), 16);
    assert_eq!(size_of::<InlineSeg>(), 4);
}

#[test]
fn control_segment_offsets() {
    assert_eq!(offset_of!(CtrlSeg, owner_opcode), 0);
    assert_eq!(offset_of!(CtrlSeg, vlan_tag), 4);
    assert_eq!(offset_of!(CtrlSeg, ins_vlan), 6);
    assert_eq!(offset_of!(CtrlSeg, fence_size), 7);
    assert_eq!(offset_of!(CtrlSeg, srcrb_flags), 8);
    assert_eq!(offset_of!(CtrlSeg, imm), 12);
}

#[test]
fn datagram_and_address_vector_offsets() {
    assert_eq!(offset_of!(AddressVector, port_pd), 0);
    assert_eq!(offset_of!(AddressVector, g_slid), 5);
    assert_eq!(offset_of!(AddressVector, dlid), 6);
    assert_eq!(offset_of!(AddressVector, gid_index), 9);
    assert_eq!(offset_of!(AddressVector, stat_rate), 10);
    assert_eq!(offset_of!(AddressVector, hop_limit), 11);
    assert_eq!(offset_of!(AddressVector, sl_tclass_flowlabel), 12);
    assert_eq!(offset_of!(AddressVector, dgid), 16);
    assert_eq!(offset_of!(DatagramSeg, dqpn), 32);
    assert_eq!(offset_of!(DatagramSeg, qkey), 36);
    assert_eq!(offset_of!(DatagramSeg, vlan), 40);
    assert_eq!(offset_of!(DatagramSeg, mac), 42);
}

#[test]
fn fast_registration_and_invalidation_offsets() {
    assert_eq!(offset_of!(FastRegSeg, flags), 0);
    assert_eq!(offset_of!(FastRegSeg, mem_key), 4);
    assert_eq!(offset_of!(FastRegSeg, buf_list), 8);
    assert_eq!(offset_of!(FastRegSeg, start_addr), 16);
    assert_eq!(offset_of!(FastRegSeg, reg_len), 24);
    assert_eq!(offset_of!(FastRegSeg, offset), 32);
    assert_eq!(offset_of!(FastRegSeg, page_size), 36);
    assert_eq!(offset_of!(LocalInvalSeg, mem_key), 8);
    assert_eq!(offset_of!(RaddrSeg, rkey), 8);
    assert_eq!(offset_of!(AtomicSeg, compare), 8);
    assert_eq!(offset_of!(DataSeg, lkey), 4);
    assert_eq!(offset_of!(DataSeg, addr), 8);
}

#[test]
fn cqe_layouts_match_mlx4_cqe_and_mlx4_err_cqe() {
    assert_eq!(size_of::<Cqe>(), CQE_SIZE);
    assert_eq!(size_of::<ErrorCqe>(), CQE_SIZE);
    assert_eq!(offset_of!(Cqe, vlan_my_qpn), 0);
    assert_eq!(offset_of!(Cqe, immed_rss_invalid), 4);
    assert_eq!(offset_of!(Cqe, g_mlpath_rqpn), 8);
    assert_eq!(offset_of!(Cqe, sl_vid), 12);
    assert_eq!(offset_of!(Cqe, rlid), 14);
    assert_eq!(offset_of!(Cqe, status), 16);
    assert_eq!(offset_of!(Cqe, byte_cnt), 20);
    assert_eq!(offset_of!(Cqe, wqe_index), 24);
    assert_eq!(offset_of!(Cqe, checksum), 26);
    assert_eq!(offset_of!(Cqe, owner_sr_opcode), 31);
    assert_eq!(offset_of!(ErrorCqe, wqe_index), 24);
    assert_eq!(offset_of!(ErrorCqe, vendor_err), 26);
    assert_eq!(offset_of!(ErrorCqe, syndrome), 27);
    assert_eq!(offset_of!(ErrorCqe, owner_sr_opcode), 31);
    assert_eq!(Cqe::OWNER_WORD_OFFSET + 3, offset_of!(Cqe, owner_sr_opcode));
    assert_eq!(CqeStride::Bytes32.owner_word_offset(), 28);
    assert_eq!(CqeStride::Bytes64.owner_word_offset(), 60);
}

#[test]
fn eqe_and_doorbell_layouts() {
    assert_eq!(size_of::<Eqe>(), EQE_SIZE);
    assert_eq!(offset_of!(Eqe, event_type), 1);
    assert_eq!(offset_of!(Eqe, subtype), 3);
    assert_eq!(offset_of!(Eqe, event), 4);
    assert_eq!(offset_of!(Eqe, owner), 31);
    assert_eq!(size_of::<CqDoorbell>(), 8);
    assert_eq!(size_of::<CqDoorbellRecord>(), 8);
    assert_eq!(UAR_SEND_DOORBELL, 0x14);
    assert_eq!(UAR_CQ_DOORBELL, 0x20);
}

#[test]
fn fields_are_big_endian_on_the_wire() {
    let seg = DataSeg {
        byte_count: Be32::new(0x100),
        lkey: Be32::new(0xabcd),
        addr: Be64::new(0x1122_3344_5566_7788),
    };
    assert_eq!(
        seg.as_bytes(),
        [0, 0, 1, 0, 0, 0, 0xab, 0xcd, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    );
}

#[test]
fn cq_doorbell_packs_sequence_command_cqn_and_index() {
    // mlx4_cq_arm: sn << 28 | cmd | cqn, then ci.
    let doorbell = CqDoorbell::new(5, ArmCommand::Next, 0x80, 0x0123_4567);
    assert_eq!(
        doorbell.as_bytes(),
        [0x12, 0x00, 0x00, 0x80, 0x00, 0x23, 0x45, 0x67]
    );
    assert_eq!(doorbell.arm_sn(), 1);
    assert_eq!(doorbell.cqn(), 0x80);
    assert_eq!(doorbell.command(), Some(ArmCommand::Next));
    let solicited = CqDoorbell::new(0, ArmCommand::Solicited, 7, 0);
    assert_eq!(solicited.sn_cmd_cqn.get(), 0x0100_0007);
    assert_eq!(
        CqDoorbellRecord::arm_word(2, ArmCommand::Solicited, 9),
        0x2100_0009
    );
}

#[test]
fn send_doorbell_carries_the_qpn_shifted_by_eight() {
    assert_eq!(send_doorbell_value(0x48), 0x4800);
    assert_eq!(send_doorbell_qpn(0x4800), 0x48);
}

#[test]
fn owner_opcode_sets_the_owner_bit_on_odd_laps() {
    assert_eq!(CtrlSeg::owner_opcode_for(SendOpcode::Send, 3, 64), 0x0a);
    assert_eq!(
        CtrlSeg::owner_opcode_for(SendOpcode::Send, 64 + 3, 64),
        0x8000_000a
    );
    assert_eq!(
        CtrlSeg::owner_opcode_for(SendOpcode::RdmaRead, 128, 64),
        0x10
    );
}

#[test]
fn opcodes_and_syndromes_decode_to_the_upstream_values() {
    // Exactly upstream's codes decode, each to the variant of its value, and nothing
    // else (MLX4_OPCODE_*, MLX4_RECV_OPCODE_*, MLX4_CQE_SYNDROME_*, MLX4_EVENT_TYPE_*
    // as this crate uses them).
    const SEND: &[u8] = &[
        0x00, 0x01, 0x08, 0x09, 0x0a, 0x0b, 0x0e, 0x10, 0x11, 0x12, 0x14, 0x15, 0x18, 0x19, 0x1b,
        0x1f,
    ];
    const RECV: &[u8] = &[0x00, 0x01, 0x02, 0x03];
    const SYNDROME: &[u8] = &[
        0x01, 0x02, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x22,
    ];
    const EVENT: &[u8] = &[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x09, 0x0a, 0x14];
    for bits in 0..=0xff {
        let want = |codes: &[u8]| codes.contains(&bits).then_some(bits);
        assert_eq!(
            SendOpcode::from_bits(bits).map(|o| o as u8),
            want(SEND),
            "send {bits:#x}"
        );
        assert_eq!(
            RecvOpcode::from_bits(bits).map(|o| o as u8),
            want(RECV),
            "recv {bits:#x}"
        );
        assert_eq!(
            Syndrome::from_bits(bits).map(|s| s as u8),
            want(SYNDROME),
            "syndrome {bits:#x}"
        );
        assert_eq!(
            EventType::from_bits(bits).map(|e| e as u8),
            want(EVENT),
            "event {bits:#x}"
        );
    }
    assert_eq!(SendOpcode::from_bits(0x19), Some(SendOpcode::FastReg));
    assert_eq!(Syndrome::from_bits(0x13), Some(Syndrome::RemoteAccessErr));
    assert_eq!(RecvOpcode::from_bits(0x03), Some(RecvOpcode::SendInval));
    assert_eq!(EventType::from_bits(0x04), Some(EventType::CqError));
}

#[test]
fn eq_doorbells_are_eight_bytes_apart_four_to_a_page() {
    // mlx4_get_eq_uar: 0x800 + 8 * (eqn % 4).
    assert_eq!(eq_doorbell_offset(0), 0x800);
    assert_eq!(eq_doorbell_offset(1), 0x808);
    assert_eq!(eq_doorbell_offset(3), 0x818);
    assert_eq!(eq_doorbell_offset(6), 0x810);
}

#[test]
fn the_hcr_decodes_every_field_the_driver_writes() {
    // mlx4_cmd_post: in_param high and low, in_modifier, out_param high and low, the
    // token in the top half, then status: go, e, t, op modifier, opcode.
    let words: [u32; 7] = [
        0x1122_3344,
        0x5566_7788,
        0x99aa_bbcc,
        0x0102_0304,
        0x0506_0708,
        0xbeef_0000,
        hcr::GO_BIT | hcr::EVENT_BIT | (0x5 << hcr::OPMOD_SHIFT) | 0x0abc,
    ];
    let mut bytes = [0u8; HCR_SIZE as usize];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    let command = HcrCommand::decode(&bytes);
    assert_eq!(
        command,
        HcrCommand {
            in_param: 0x1122_3344_5566_7788,
            in_modifier: 0x99aa_bbcc,
            out_param: 0x0102_0304_0506_0708,
            token: 0xbeef,
            opcode: 0xabc,
            op_modifier: 5,
            event: true,
            toggle: false,
        }
    );
    // The toggle alone, and an op modifier's bits kept apart from the opcode's.
    bytes[24..].copy_from_slice(&(hcr::TOGGLE_BIT | (0xf << hcr::OPMOD_SHIFT) | 1).to_be_bytes());
    let command = HcrCommand::decode(&bytes);
    assert_eq!(
        (
            command.event,
            command.toggle,
            command.op_modifier,
            command.opcode
        ),
        (false, true, 0xf, 1)
    );
}

#[test]
fn views_read_the_owner_byte_and_the_qpn() {
    let mut bytes = [0u8; CQE_SIZE];
    bytes[0..4].copy_from_slice(&0xff00_0048u32.to_be_bytes());
    bytes[24..26].copy_from_slice(&7u16.to_be_bytes());
    bytes[31] = Cqe::OWNER | Cqe::IS_SEND | SendOpcode::RdmaWrite as u8;
    let cqe = Cqe::ref_from_bytes(&bytes).unwrap();
    assert_eq!(cqe.qpn(), 0x48);
    assert!(cqe.is_send());
    assert!(!cqe.is_error());
    assert_eq!(cqe.opcode_bits(), 0x08);
    assert_eq!(cqe.wqe_index.get(), 7);
}

#[test]
fn address_vector_accessors() {
    let av = AddressVector {
        port_pd: Be32::new(2 << AddressVector::PORT_SHIFT | 0x42),
        g_slid: AddressVector::GRH_PRESENT,
        ..AddressVector::default()
    };
    assert_eq!(av.port(), 2);
    assert_eq!(av.pd(), 0x42);
    assert!(av.has_grh());
    // The source path bits beside it are not a GRH.
    let without = AddressVector { g_slid: 0x7f, ..av };
    assert!(!without.has_grh());
    assert_eq!(AddressVector::GRH_PRESENT, 0x80);
}

#[test]
fn blueflame_control_segment_carries_counter_and_qpn() {
    let mut ctrl = CtrlSeg::new_zeroed();
    ctrl.owner_opcode = Be32::new(CtrlSeg::owner_opcode_for(SendOpcode::Send, 5, 64));
    ctrl.fence_size = 2;
    ctrl.set_blueflame(send_doorbell_value(0x12_3456), 5);
    // bf_qpn = doorbell_qpn | fence_size: the QPN in the top three bytes.
    assert_eq!(
        &ctrl.as_bytes()[..8],
        [0x00, 0x00, 0x05, 0x0a, 0x12, 0x34, 0x56, 0x02]
    );
    assert_eq!(ctrl.blueflame_qpn(), send_doorbell_value(0x12_3456));
    assert_eq!(BLUEFLAME_OFFSET, 0x100);
}

#[test]
fn mailbox_fields_are_big_endian_and_bounded() {
    let mut bytes = [0u8; 16];
    let mut mailbox = fw::Mailbox(&mut bytes[..]);
    mailbox.set_u8(0, 0xa5);
    mailbox.set_u16(1, 0x0102);
    mailbox.set_u32(3, 0x0304_0506);
    mailbox.set_u64(7, 0x0708_090a_0b0c_0d0e);
    // Writes past the end write nothing, and reads there are zero.
    mailbox.set_u32(14, 0xffff_ffff);
    mailbox.set_u8(16, 0xff);
    assert_eq!(
        (
            mailbox.u8(0),
            mailbox.u16(1),
            mailbox.u32(3),
            mailbox.u64(7)
        ),
        (0xa5, 0x0102, 0x0304_0506, 0x0708_090a_0b0c_0d0e)
    );
    assert_eq!((mailbox.u32(14), mailbox.u8(16)), (0, 0));
    assert_eq!(
        bytes,
        [0xa5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0]
    );
}

/// The flag bits as `include/linux/mlx4/device.h` and `qp.h` define them, written out: the
/// model and the driver share these constants, so only this pins them to the hardware's.
#[test]
fn flag_bits_are_the_kernel_s() {
    use fw::{bmme_flag, dev_cap_flag};
    assert_eq!(
        [
            dev_cap_flag::RC,
            dev_cap_flag::UC,
            dev_cap_flag::UD,
            dev_cap_flag::SRQ,
            dev_cap_flag::BAD_PKEY_CNTR,
            dev_cap_flag::BAD_QKEY_CNTR,
            dev_cap_flag::ATOMIC,
            dev_cap_flag::UD_AV_PORT,
            dev_cap_flag::UD_MCAST,
        ],
        [0x1, 0x2, 0x4, 0x40, 0x100, 0x200, 0x4_0000, 0x10_0000, 0x20_0000]
    );
    assert_eq!(
        [
            bmme_flag::LOCAL_INV,
            bmme_flag::REMOTE_INV,
            bmme_flag::FAST_REG_WR
        ],
        [0x40, 0x80, 0x800]
    );
    // MLX4_WQE_CTRL_FENCE, _CQ_UPDATE, _SOLICITED, _STRONG_ORDER.
    assert_eq!(CtrlSeg::FENCE, 0x40);
    assert_eq!(
        [
            CtrlSeg::CQ_UPDATE,
            CtrlSeg::SOLICITED,
            CtrlSeg::STRONG_ORDER
        ],
        [0xc, 0x2, 0x80]
    );
    // MLX4_WQE_FMR_PERM_LOCAL_READ, _LOCAL_WRITE, MLX4_WQE_FMR_AND_BIND_PERM_REMOTE_READ,
    // _REMOTE_WRITE, _ATOMIC.
    assert_eq!(
        [
            FastRegSeg::PERM_LOCAL_READ,
            FastRegSeg::PERM_LOCAL_WRITE,
            FastRegSeg::PERM_REMOTE_READ,
            FastRegSeg::PERM_REMOTE_WRITE,
            FastRegSeg::PERM_ATOMIC
        ],
        [
            0x0800_0000,
            0x1000_0000,
            0x2000_0000,
            0x4000_0000,
            0x8000_0000
        ]
    );
    // eq_set_ci: `(cons_index & 0xffffff) | req_not << 31`.
    assert_eq!(eq_set_ci_word(0x0123_4567, true), 0x8023_4567);
    assert_eq!(eq_set_ci_word(0x0123_4567, false), 0x0023_4567);
}
