//! The iSCSI Basic Header Segment of each PDU an iSER initiator sends or receives.
//!
//! Source: `include/scsi/iscsi_proto.h` (the `struct iscsi_*` headers and their
//! `ISCSI_FLAG_*` and `ISCSI_OP_*` values), RFC 7143 §11.

use super::{Be16, Be32, WireError, BHS_LEN};
// The derives are named by their path in `zerocopy_derive`, where the kernel provides
// them (its zerocopy has no `derive` feature; on the host, another crate may turn it on).
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// iSCSI opcodes (`ISCSI_OP_*`), without the immediate bit.
pub mod opcode {
    /// NOP-Out.
    pub const NOOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function Request.
    pub const SCSI_TMFUNC: u8 = 0x02;
    /// Login Request.
    pub const LOGIN: u8 = 0x03;
    /// Text Request.
    pub const TEXT: u8 = 0x04;
    /// SCSI Data-Out.
    pub const SCSI_DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT: u8 = 0x06;
    /// NOP-In.
    pub const NOOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_CMD_RSP: u8 = 0x21;
    /// Task Management Function Response.
    pub const SCSI_TMFUNC_RSP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RSP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RSP: u8 = 0x24;
    /// Logout Response.
    pub const LOGOUT_RSP: u8 = 0x26;
    /// Asynchronous Message.
    pub const ASYNC_EVENT: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// The immediate-delivery bit of an initiator opcode (`ISCSI_OP_IMMEDIATE`).
pub const OP_IMMEDIATE: u8 = 0x40;
/// The opcode field's mask (`ISCSI_OPCODE_MASK`).
pub const OPCODE_MASK: u8 = 0x3f;
/// The Final bit, in the flags of most PDUs (`ISCSI_FLAG_CMD_FINAL`).
pub const FLAG_FINAL: u8 = 0x80;
/// The tag of no task (`ISCSI_RESERVED_TAG`).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Every PDU header: 48 bytes whose first byte is its opcode.
pub trait PduHeader: IntoBytes + Immutable {
    /// The opcode the header is sent with.
    const OPCODE: u8;
}

/// A logical unit number in the SAM 8-byte format (`struct scsi_lun`, `int_to_scsilun`).
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
#[repr(C)]
pub struct Lun(pub [u8; 8]);

impl Lun {
    /// The encoding of `lun`: each 16-bit level big-endian, first level first.
    pub fn new(lun: u64) -> Self {
        let mut bytes = [0u8; 8];
        for (level, pair) in bytes.chunks_exact_mut(2).enumerate() {
            let value = (lun >> (16 * level)) as u16;
            pair.copy_from_slice(&value.to_be_bytes());
        }
        Self(bytes)
    }

    /// The LUN as `scsilun_to_int` reads it.
    pub fn get(&self) -> u64 {
        self.0
            .chunks_exact(2)
            .enumerate()
            .map(|(level, pair)| u64::from(u16::from_be_bytes([pair[0], pair[1]])) << (16 * level))
            .sum()
    }
}

/// The 24-bit `DataSegmentLength` field.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
#[repr(C)]
pub struct Be24(pub [u8; 3]);

impl Be24 {
    /// The value, 0 to 2^24 - 1.
    pub fn get(&self) -> usize {
        usize::from(self.0[0]) << 16 | usize::from(self.0[1]) << 8 | usize::from(self.0[2])
    }

    /// Stores the low 24 bits of `value`.
    pub fn set(&mut self, value: usize) {
        self.0 = [(value >> 16) as u8, (value >> 8) as u8, value as u8];
    }
}

/// The template every header follows (`struct iscsi_hdr`).
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct Bhs {
    /// Opcode, with the immediate bit in requests.
    pub opcode: u8,
    /// Flags: the Final bit and opcode-specific bits.
    pub flags: u8,
    /// Opcode-specific (reserved in some PDUs).
    pub rsvd2: [u8; 2],
    /// `TotalAHSLength`, in 4-byte words.
    pub hlength: u8,
    /// DataSegmentLength: the data segment's length in bytes, without padding.
    pub dlength: Be24,
    /// LUN, or opcode-specific (the ISID and TSIH in login PDUs).
    pub lun: Lun,
    /// Initiator Task Tag: the task the PDU belongs to.
    pub itt: Be32,
    /// Target Transfer Tag, or opcode-specific (the Expected Data Transfer Length in a SCSI
    /// Command).
    pub ttt: Be32,
    /// StatSN in a response, CmdSN in a request.
    pub statsn: Be32,
    /// ExpCmdSN in a response, ExpStatSN in a request.
    pub exp_statsn: Be32,
    /// MaxCmdSN in a response; opcode-specific in a request.
    pub max_statsn: Be32,
    /// Opcode-specific (bytes 36 to 47).
    pub other: [u8; 12],
}

const _: () = assert!(core::mem::size_of::<Bhs>() == BHS_LEN);

impl Bhs {
    /// The opcode without the immediate bit.
    pub fn opcode(&self) -> u8 {
        self.opcode & OPCODE_MASK
    }

    /// Whether the PDU is for immediate delivery.
    pub fn immediate(&self) -> bool {
        self.opcode & OP_IMMEDIATE != 0
    }

    /// The data segment's length (`DataSegmentLength`), without padding.
    pub fn data_segment_length(&self) -> usize {
        self.dlength.get()
    }

    /// Sets `DataSegmentLength` (its low 24 bits).
    pub fn set_data_segment_length(&mut self, len: usize) {
        self.dlength.set(len);
    }
}

/// Declares a 48-byte header with its opcode.
macro_rules! header {
    ($(#[$doc:meta])* $name:ident = $opcode:expr; { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(zerocopy_derive::FromBytes, zerocopy_derive::IntoBytes, zerocopy_derive::KnownLayout, zerocopy_derive::Immutable, zerocopy_derive::Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        const _: () = assert!(core::mem::size_of::<$name>() == BHS_LEN);

        impl PduHeader for $name {
            const OPCODE: u8 = $opcode;
        }

        impl $name {
            /// A header with its opcode set and every other field zero.
            pub fn zeroed() -> Self {
                let mut header = Self::new_zeroed();
                header.opcode = $opcode;
                header
            }
        }
    };
}

header! {
    /// SCSI Command (`struct iscsi_scsi_req`).
    ScsiCommand = opcode::SCSI_CMD; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`) for immediate delivery.
        opcode: u8,
        /// Flags: Final, Read, Write and the task attribute.
        flags: u8,
        /// Reserved, zero.
        rsvd2: [u8; 2],
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: the logical unit addressed.
        lun: Lun,
        /// Initiator Task Tag: the command's task.
        itt: Be32,
        /// Expected Data Transfer Length.
        data_length: Be32,
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// CDB: the SCSI Command Descriptor Block, zero-padded to 16 bytes.
        cdb: [u8; 16],
    }
}

impl ScsiCommand {
    /// The command reads data from the target (`ISCSI_FLAG_CMD_READ`).
    pub const FLAG_READ: u8 = 0x40;
    /// The command writes data to the target (`ISCSI_FLAG_CMD_WRITE`).
    pub const FLAG_WRITE: u8 = 0x20;
    /// The task attribute bits (`ISCSI_FLAG_CMD_ATTR_MASK`); 1 is SIMPLE.
    pub const ATTR_MASK: u8 = 0x07;
    /// The SIMPLE task attribute (`ISCSI_ATTR_SIMPLE`).
    pub const ATTR_SIMPLE: u8 = 1;
}

header! {
    /// SCSI Response (`struct iscsi_scsi_rsp`); sense data in the data segment.
    ScsiResponse = opcode::SCSI_CMD_RSP; {
        /// Opcode.
        opcode: u8,
        /// Flags: Final (always set) and the residual overflow and underflow bits.
        flags: u8,
        /// 0: command completed at the target.
        response: u8,
        /// The SCSI status (0 GOOD, 2 CHECK CONDITION ...).
        cmd_status: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd: [u8; 8],
        /// Initiator Task Tag of the command answered.
        itt: Be32,
        /// SNACK Tag; reserved (zero) here, as this initiator sends no SNACK.
        rsvd1: Be32,
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// ExpDataSN: the number of Data-In and R2T PDUs the target sent for the command.
        exp_datasn: Be32,
        /// Bidirectional Read Residual Count (for bidirectional commands).
        bi_residual_count: Be32,
        /// Residual Count: the bytes of the expected transfer not moved (underflow) or
        /// beyond it (overflow).
        residual_count: Be32,
    }
}

impl ScsiResponse {
    /// Residual overflow: the target had more data than expected.
    pub const FLAG_OVERFLOW: u8 = 0x04;
    /// Residual underflow: less data than expected moved.
    pub const FLAG_UNDERFLOW: u8 = 0x02;
}

header! {
    /// Asynchronous Message (`struct iscsi_async`).
    AsyncMessage = opcode::ASYNC_EVENT; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// Reserved, zero.
        rsvd2: [u8; 2],
        /// TotalAHSLength, in 4-byte words (a reserved byte in the kernel's struct).
        rsvd3: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: the logical unit a SCSI event concerns.
        lun: Lun,
        /// Reserved: 0xffffffff (where other PDUs have the ITT), then zero.
        rsvd4: [u8; 8],
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// AsyncEvent: what happened (`EVENT_*`).
        async_event: u8,
        /// AsyncVCode: a vendor-specific detail of vendor event 255.
        async_vcode: u8,
        /// Parameter1: the CID of the connection to be dropped
        /// (`EVENT_DROPPING_CONNECTION`).
        param1: Be16,
        /// Parameter2: Time2Wait, in seconds, when the target drops connections.
        param2: Be16,
        /// Parameter3: the seconds left to log out (`EVENT_REQUEST_LOGOUT`) or renegotiate,
        /// or Time2Retain when the target drops connections.
        param3: Be16,
        /// Reserved, zero.
        rsvd5: [u8; 4],
    }
}

impl AsyncMessage {
    /// A SCSI asynchronous event; its sense data is in the data segment.
    pub const EVENT_SCSI: u8 = 0;
    /// The target asks for a logout within `param3` seconds.
    pub const EVENT_REQUEST_LOGOUT: u8 = 1;
    /// The target will drop the connection `param1` names.
    pub const EVENT_DROPPING_CONNECTION: u8 = 2;
    /// The target will drop every connection of the session.
    pub const EVENT_DROPPING_ALL_CONNECTIONS: u8 = 3;
    /// The target asks for a renegotiation (a Text request) within `param3` seconds.
    pub const EVENT_PARAM_NEGOTIATION: u8 = 4;
}

header! {
    /// NOP-Out (`struct iscsi_nopout`): a ping, or the answer to a target's NOP-In.
    NopOut = opcode::NOOP_OUT; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`) for immediate delivery.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// Reserved, zero.
        rsvd2: Be16,
        /// TotalAHSLength, in 4-byte words (a reserved byte in the kernel's struct).
        rsvd3: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: the NOP-In's, when answering the target's ping.
        lun: Lun,
        /// Initiator Task Tag of a ping; reserved (0xffffffff) in an answer to the target's
        /// ping.
        itt: Be32,
        /// Target Transfer Tag: the NOP-In's, when answering the target's ping; else
        /// reserved (0xffffffff).
        ttt: Be32,
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// Reserved, zero.
        rsvd4: [u8; 16],
    }
}

header! {
    /// NOP-In (`struct iscsi_nopin`): the answer to a ping, or the target's own ping
    /// (ITT reserved, TTT not).
    NopIn = opcode::NOOP_IN; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// Reserved, zero.
        rsvd2: Be16,
        /// TotalAHSLength, in 4-byte words (a reserved byte in the kernel's struct).
        rsvd3: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: for the target's own ping, to be echoed in the answering NOP-Out.
        lun: Lun,
        /// Initiator Task Tag of the ping answered; reserved (0xffffffff) for the target's
        /// own ping.
        itt: Be32,
        /// Target Transfer Tag: for the target's own ping, to be echoed in the answer; else
        /// reserved (0xffffffff).
        ttt: Be32,
        /// StatSN: the next StatSN (not advanced by the target's own ping).
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// Reserved, zero.
        rsvd4: [u8; 12],
    }
}

header! {
    /// Task Management Function Request (`struct iscsi_tm`).
    TaskMgmt = opcode::SCSI_TMFUNC; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`) for immediate delivery.
        opcode: u8,
        /// Final bit and the function (`ISCSI_FLAG_TM_FUNC_MASK`).
        flags: u8,
        /// Reserved, zero.
        rsvd1: [u8; 2],
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: the logical unit the function acts on.
        lun: Lun,
        /// Initiator Task Tag: the task management task's own tag.
        itt: Be32,
        /// The task to act on (ABORT TASK), else reserved.
        rtt: Be32,
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// RefCmdSN: the CmdSN of the task to act on (ABORT TASK).
        refcmdsn: Be32,
        /// ExpDataSN: for task reassignment only; reserved (zero) otherwise.
        exp_datasn: Be32,
        /// Reserved, zero.
        rsvd2: [u8; 8],
    }
}

impl TaskMgmt {
    /// The function bits of the flags (`ISCSI_FLAG_TM_FUNC_MASK`).
    pub const FUNC_MASK: u8 = 0x7f;
    /// ABORT TASK: abort the task `rtt` names (`ISCSI_TM_FUNC_ABORT_TASK`).
    pub const ABORT_TASK: u8 = 1;
    /// ABORT TASK SET: abort every task of this session on the LUN.
    pub const ABORT_TASK_SET: u8 = 2;
    /// CLEAR ACA: clear the LUN's auto contingent allegiance condition.
    pub const CLEAR_ACA: u8 = 3;
    /// CLEAR TASK SET: abort every task on the LUN, of every initiator.
    pub const CLEAR_TASK_SET: u8 = 4;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    /// TARGET WARM RESET.
    pub const TARGET_WARM_RESET: u8 = 6;
    /// TARGET COLD RESET: also drops every connection of the target.
    pub const TARGET_COLD_RESET: u8 = 7;
}

header! {
    /// Task Management Function Response (`struct iscsi_tm_rsp`).
    TaskMgmtResponse = opcode::SCSI_TMFUNC_RSP; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// `ISCSI_TMF_RSP_*`: 0 function complete.
        response: u8,
        /// Reserved, zero.
        qualifier: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd2: [u8; 8],
        /// Initiator Task Tag of the task management request answered.
        itt: Be32,
        /// Reserved, zero.
        rtt: Be32,
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// Reserved, zero.
        rsvd3: [u8; 12],
    }
}

header! {
    /// SCSI Data-Out (`struct iscsi_data`): unsolicited write data beyond the immediate
    /// data, sent by SEND (solicited data moves by the target's RDMA READ).
    DataOut = opcode::SCSI_DATA_OUT; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit on the last Data-Out of the sequence.
        flags: u8,
        /// Reserved, zero.
        rsvd2: [u8; 2],
        /// TotalAHSLength, in 4-byte words (a reserved byte in the kernel's struct).
        rsvd3: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// LUN: the command's, with a Target Transfer Tag; else reserved.
        lun: Lun,
        /// Initiator Task Tag of the command whose data this is.
        itt: Be32,
        /// Target Transfer Tag: reserved (0xffffffff) for unsolicited data.
        ttt: Be32,
        /// Reserved, zero.
        rsvd4: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// Reserved, zero.
        rsvd5: Be32,
        /// DataSN: the PDU's number in the data sequence, from 0.
        datasn: Be32,
        /// Offset of the data in the command's buffer.
        offset: Be32,
        /// Reserved, zero.
        rsvd6: Be32,
    }
}

header! {
    /// Text Request (`struct iscsi_text`).
    TextRequest = opcode::TEXT; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`) for immediate delivery.
        opcode: u8,
        /// Flags: Final and Continue (`FLAG_CONTINUE`).
        flags: u8,
        /// Reserved, zero.
        rsvd2: [u8; 2],
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd4: [u8; 8],
        /// Initiator Task Tag: the text task's.
        itt: Be32,
        /// Target Transfer Tag: the Text Response's when asking for more text; else
        /// reserved (0xffffffff).
        ttt: Be32,
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// Reserved, zero.
        rsvd5: [u8; 16],
    }
}

/// The Continue bit of Text and Login PDUs (`ISCSI_FLAG_TEXT_CONTINUE`).
pub const FLAG_CONTINUE: u8 = 0x40;

header! {
    /// Text Response (`struct iscsi_text_rsp`).
    TextResponse = opcode::TEXT_RSP; {
        /// Opcode.
        opcode: u8,
        /// Flags: Final (clear while more text follows) and Continue (`FLAG_CONTINUE`).
        flags: u8,
        /// Reserved, zero.
        rsvd2: [u8; 2],
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd4: [u8; 8],
        /// Initiator Task Tag of the text request answered.
        itt: Be32,
        /// Target Transfer Tag: set while more text follows, to be echoed in the next
        /// request; else reserved (0xffffffff).
        ttt: Be32,
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// Reserved, zero.
        rsvd5: [u8; 12],
    }
}

header! {
    /// Login Request (`struct iscsi_login_req`).
    LoginRequest = opcode::LOGIN; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`), which login requests always
        /// carry.
        opcode: u8,
        /// Transit, Continue, current and next stage.
        flags: u8,
        /// Version-max: the highest iSCSI version the initiator supports (0).
        max_version: u8,
        /// Version-min: the lowest iSCSI version the initiator supports (0).
        min_version: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// ISID: the initiator part of the session identifier.
        isid: [u8; 6],
        /// TSIH: the target's handle of the session; zero to create a new one.
        tsih: Be16,
        /// Initiator Task Tag of the login task.
        itt: Be32,
        /// CID: the connection's identifier in the session.
        cid: Be16,
        /// Reserved, zero.
        rsvd3: Be16,
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// Reserved, zero.
        rsvd5: [u8; 16],
    }
}

/// Login stages (`ISCSI_*_STAGE`), in the CSG and NSG fields of login flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginStage {
    /// Security negotiation (`ISCSI_SECURITY_NEGOTIATION_STAGE`).
    Security = 0,
    /// Operational parameter negotiation (`ISCSI_OP_PARMS_NEGOTIATION_STAGE`).
    Operational = 1,
    /// Full feature phase (`ISCSI_FULL_FEATURE_PHASE`).
    FullFeature = 3,
}

impl LoginStage {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Security),
            1 => Some(Self::Operational),
            3 => Some(Self::FullFeature),
            _ => None,
        }
    }
}

/// The Transit bit of login flags (`ISCSI_FLAG_LOGIN_TRANSIT`).
pub const LOGIN_TRANSIT: u8 = 0x80;
const LOGIN_CSG_SHIFT: u8 = 2;
const LOGIN_STAGE_MASK: u8 = 0x03;

/// Login flags: Transit, Continue, and the current and next stages.
pub fn login_flags(transit: bool, current: LoginStage, next: LoginStage) -> u8 {
    let mut flags = (current as u8) << LOGIN_CSG_SHIFT | next as u8;
    if transit {
        flags |= LOGIN_TRANSIT;
    }
    flags
}

/// The current stage of login flags (`None` for the reserved value 2).
pub fn login_current_stage(flags: u8) -> Option<LoginStage> {
    LoginStage::from_bits(flags >> LOGIN_CSG_SHIFT & LOGIN_STAGE_MASK)
}

/// The next stage of login flags (meaningful with Transit).
pub fn login_next_stage(flags: u8) -> Option<LoginStage> {
    LoginStage::from_bits(flags & LOGIN_STAGE_MASK)
}

header! {
    /// Login Response (`struct iscsi_login_rsp`).
    LoginResponse = opcode::LOGIN_RSP; {
        /// Opcode.
        opcode: u8,
        /// Flags: Transit, Continue, current and next stage.
        flags: u8,
        /// Version-max: the highest iSCSI version the target supports.
        max_version: u8,
        /// Version-active: the iSCSI version the session uses.
        active_version: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// ISID, as in the request.
        isid: [u8; 6],
        /// TSIH: the target's handle of the session, set in the final response.
        tsih: Be16,
        /// Initiator Task Tag of the login task.
        itt: Be32,
        /// Reserved, zero.
        rsvd3: Be32,
        /// StatSN: this response's status sequence number (the first response sets the
        /// connection's).
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// `ISCSI_STATUS_CLS_*`: 0 success, 1 redirect, 2 initiator error, 3 target error.
        status_class: u8,
        /// Status-Detail: the reason within the status class.
        status_detail: u8,
        /// Reserved, zero.
        rsvd4: [u8; 10],
    }
}

header! {
    /// Logout Request (`struct iscsi_logout`).
    Logout = opcode::LOGOUT; {
        /// Opcode, with the immediate bit (`OP_IMMEDIATE`) for immediate delivery.
        opcode: u8,
        /// Final bit and the reason (`ISCSI_FLAG_LOGOUT_REASON_MASK`).
        flags: u8,
        /// Reserved, zero.
        rsvd1: [u8; 2],
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd2: [u8; 8],
        /// Initiator Task Tag of the logout task.
        itt: Be32,
        /// CID: the connection to close; reserved when closing the session.
        cid: Be16,
        /// Reserved, zero.
        rsvd3: [u8; 2],
        /// CmdSN: the command sequence number (an immediate PDU does not advance it).
        cmdsn: Be32,
        /// ExpStatSN: the next StatSN the initiator expects.
        exp_statsn: Be32,
        /// Reserved, zero.
        rsvd4: [u8; 16],
    }
}

impl Logout {
    /// Close the session, every connection of it (`ISCSI_LOGOUT_REASON_CLOSE_SESSION`).
    pub const REASON_CLOSE_SESSION: u8 = 0;
    /// Close the connection `cid` names (`ISCSI_LOGOUT_REASON_CLOSE_CONNECTION`).
    pub const REASON_CLOSE_CONNECTION: u8 = 1;
}

header! {
    /// Logout Response (`struct iscsi_logout_rsp`).
    LogoutResponse = opcode::LOGOUT_RSP; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// `ISCSI_LOGOUT_*`: 0 success.
        response: u8,
        /// Reserved, zero.
        rsvd2: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd3: [u8; 8],
        /// Initiator Task Tag of the logout request answered.
        itt: Be32,
        /// Reserved, zero.
        rsvd4: Be32,
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// Reserved, zero.
        rsvd5: Be32,
        /// Time2Wait: the seconds to wait before reconnecting to recover tasks.
        t2wait: Be16,
        /// Time2Retain: the seconds the target keeps tasks for recovery after Time2Wait.
        t2retain: Be16,
        /// Reserved, zero.
        rsvd6: Be32,
    }
}

header! {
    /// Reject (`struct iscsi_reject`); the data segment holds the rejected header.
    Reject = opcode::REJECT; {
        /// Opcode.
        opcode: u8,
        /// Flags: the Final bit, always set.
        flags: u8,
        /// `ISCSI_REASON_*`.
        reason: u8,
        /// Reserved, zero.
        rsvd2: u8,
        /// TotalAHSLength, in 4-byte words.
        hlength: u8,
        /// DataSegmentLength: the data segment's length in bytes, without padding.
        dlength: Be24,
        /// Reserved, zero.
        rsvd3: [u8; 8],
        /// Reserved, 0xffffffff (where other PDUs have the ITT).
        ffffffff: Be32,
        /// Reserved, zero.
        rsvd4: [u8; 4],
        /// StatSN: this response's status sequence number.
        statsn: Be32,
        /// ExpCmdSN: the next CmdSN the target expects.
        exp_cmdsn: Be32,
        /// MaxCmdSN: the highest CmdSN the target accepts (the end of the command window).
        max_cmdsn: Be32,
        /// DataSN/R2TSN: for a rejected Data/R2T SNACK, the next the target would send;
        /// else reserved.
        datasn: Be32,
        /// Reserved, zero.
        rsvd5: [u8; 8],
    }
}

/// A BHS, typed by its opcode.
#[derive(Clone, Copy, Debug)]
pub enum Header<'a> {
    /// A NOP-Out.
    NopOut(&'a NopOut),
    /// A SCSI Command.
    ScsiCommand(&'a ScsiCommand),
    /// A Task Management Function Request.
    TaskMgmt(&'a TaskMgmt),
    /// A Login Request.
    LoginRequest(&'a LoginRequest),
    /// A Text Request.
    TextRequest(&'a TextRequest),
    /// A SCSI Data-Out.
    DataOut(&'a DataOut),
    /// A Logout Request.
    Logout(&'a Logout),
    /// A NOP-In.
    NopIn(&'a NopIn),
    /// A SCSI Response.
    ScsiResponse(&'a ScsiResponse),
    /// A Task Management Function Response.
    TaskMgmtResponse(&'a TaskMgmtResponse),
    /// A Login Response.
    LoginResponse(&'a LoginResponse),
    /// A Text Response.
    TextResponse(&'a TextResponse),
    /// A Logout Response.
    LogoutResponse(&'a LogoutResponse),
    /// An Asynchronous Message.
    AsyncMessage(&'a AsyncMessage),
    /// A Reject.
    Reject(&'a Reject),
}

/// Views `bhs` as the header `H`.
fn view<H: FromBytes + KnownLayout + Immutable>(bhs: &Bhs) -> Result<&H, WireError> {
    H::ref_from_bytes(bhs.as_bytes()).map_err(|_| WireError::Truncated)
}

impl<'a> Header<'a> {
    /// The typed view of `bhs`; [`WireError::UnknownOpcode`] for an opcode iSER does not
    /// carry.
    pub fn from_bhs(bhs: &'a Bhs) -> Result<Self, WireError> {
        Ok(match bhs.opcode() {
            opcode::NOOP_OUT => Self::NopOut(view(bhs)?),
            opcode::SCSI_CMD => Self::ScsiCommand(view(bhs)?),
            opcode::SCSI_TMFUNC => Self::TaskMgmt(view(bhs)?),
            opcode::LOGIN => Self::LoginRequest(view(bhs)?),
            opcode::TEXT => Self::TextRequest(view(bhs)?),
            opcode::SCSI_DATA_OUT => Self::DataOut(view(bhs)?),
            opcode::LOGOUT => Self::Logout(view(bhs)?),
            opcode::NOOP_IN => Self::NopIn(view(bhs)?),
            opcode::SCSI_CMD_RSP => Self::ScsiResponse(view(bhs)?),
            opcode::SCSI_TMFUNC_RSP => Self::TaskMgmtResponse(view(bhs)?),
            opcode::LOGIN_RSP => Self::LoginResponse(view(bhs)?),
            opcode::TEXT_RSP => Self::TextResponse(view(bhs)?),
            opcode::LOGOUT_RSP => Self::LogoutResponse(view(bhs)?),
            opcode::ASYNC_EVENT => Self::AsyncMessage(view(bhs)?),
            opcode::REJECT => Self::Reject(view(bhs)?),
            other => return Err(WireError::UnknownOpcode(other)),
        })
    }
}
