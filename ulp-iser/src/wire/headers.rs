//! The iSCSI Basic Header Segment of each PDU an iSER initiator sends or receives.
//!
//! Source: `include/scsi/iscsi_proto.h` (the `struct iscsi_*` headers and their
//! `ISCSI_FLAG_*` and `ISCSI_OP_*` values), RFC 7143 §11.

use super::{Be16, Be32, WireError, BHS_LEN};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// iSCSI opcodes (`ISCSI_OP_*`), without the immediate bit.
pub mod opcode {
    pub const NOOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const SCSI_TMFUNC: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const SCSI_DATA_OUT: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const NOOP_IN: u8 = 0x20;
    pub const SCSI_CMD_RSP: u8 = 0x21;
    pub const SCSI_TMFUNC_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const ASYNC_EVENT: u8 = 0x32;
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
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
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
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
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
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Bhs {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd2: [u8; 2],
    /// `TotalAHSLength`, in 4-byte words.
    pub hlength: u8,
    pub dlength: Be24,
    pub lun: Lun,
    pub itt: Be32,
    pub ttt: Be32,
    pub statsn: Be32,
    pub exp_statsn: Be32,
    pub max_statsn: Be32,
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

    pub fn data_segment_length(&self) -> usize {
        self.dlength.get()
    }

    pub fn set_data_segment_length(&mut self, len: usize) {
        self.dlength.set(len);
    }
}

/// Declares a 48-byte header with its opcode.
macro_rules! header {
    ($(#[$doc:meta])* $name:ident = $opcode:expr; { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
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
        opcode: u8,
        flags: u8,
        rsvd2: [u8; 2],
        hlength: u8,
        dlength: Be24,
        lun: Lun,
        itt: Be32,
        /// Expected Data Transfer Length.
        data_length: Be32,
        cmdsn: Be32,
        exp_statsn: Be32,
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
    pub const ATTR_SIMPLE: u8 = 1;
}

header! {
    /// SCSI Response (`struct iscsi_scsi_rsp`); sense data in the data segment.
    ScsiResponse = opcode::SCSI_CMD_RSP; {
        opcode: u8,
        flags: u8,
        /// 0: command completed at the target.
        response: u8,
        /// The SCSI status (0 GOOD, 2 CHECK CONDITION ...).
        cmd_status: u8,
        hlength: u8,
        dlength: Be24,
        rsvd: [u8; 8],
        itt: Be32,
        rsvd1: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        exp_datasn: Be32,
        bi_residual_count: Be32,
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
        opcode: u8,
        flags: u8,
        rsvd2: [u8; 2],
        rsvd3: u8,
        dlength: Be24,
        lun: Lun,
        rsvd4: [u8; 8],
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        async_event: u8,
        async_vcode: u8,
        param1: Be16,
        param2: Be16,
        param3: Be16,
        rsvd5: [u8; 4],
    }
}

impl AsyncMessage {
    pub const EVENT_SCSI: u8 = 0;
    /// The target asks for a logout within `param3` seconds.
    pub const EVENT_REQUEST_LOGOUT: u8 = 1;
    pub const EVENT_DROPPING_CONNECTION: u8 = 2;
    pub const EVENT_DROPPING_ALL_CONNECTIONS: u8 = 3;
    pub const EVENT_PARAM_NEGOTIATION: u8 = 4;
}

header! {
    /// NOP-Out (`struct iscsi_nopout`): a ping, or the answer to a target's NOP-In.
    NopOut = opcode::NOOP_OUT; {
        opcode: u8,
        flags: u8,
        rsvd2: Be16,
        rsvd3: u8,
        dlength: Be24,
        lun: Lun,
        itt: Be32,
        ttt: Be32,
        cmdsn: Be32,
        exp_statsn: Be32,
        rsvd4: [u8; 16],
    }
}

header! {
    /// NOP-In (`struct iscsi_nopin`): the answer to a ping, or the target's own ping
    /// (ITT reserved, TTT not).
    NopIn = opcode::NOOP_IN; {
        opcode: u8,
        flags: u8,
        rsvd2: Be16,
        rsvd3: u8,
        dlength: Be24,
        lun: Lun,
        itt: Be32,
        ttt: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        rsvd4: [u8; 12],
    }
}

header! {
    /// Task Management Function Request (`struct iscsi_tm`).
    TaskMgmt = opcode::SCSI_TMFUNC; {
        opcode: u8,
        /// Final bit and the function (`ISCSI_FLAG_TM_FUNC_MASK`).
        flags: u8,
        rsvd1: [u8; 2],
        hlength: u8,
        dlength: Be24,
        lun: Lun,
        itt: Be32,
        /// The task to act on (ABORT TASK), else reserved.
        rtt: Be32,
        cmdsn: Be32,
        exp_statsn: Be32,
        refcmdsn: Be32,
        exp_datasn: Be32,
        rsvd2: [u8; 8],
    }
}

impl TaskMgmt {
    pub const FUNC_MASK: u8 = 0x7f;
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
}

header! {
    /// Task Management Function Response (`struct iscsi_tm_rsp`).
    TaskMgmtResponse = opcode::SCSI_TMFUNC_RSP; {
        opcode: u8,
        flags: u8,
        /// `ISCSI_TMF_RSP_*`: 0 function complete.
        response: u8,
        qualifier: u8,
        hlength: u8,
        dlength: Be24,
        rsvd2: [u8; 8],
        itt: Be32,
        rtt: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        rsvd3: [u8; 12],
    }
}

header! {
    /// SCSI Data-Out (`struct iscsi_data`): unsolicited write data beyond the immediate
    /// data, sent by SEND (solicited data moves by the target's RDMA READ).
    DataOut = opcode::SCSI_DATA_OUT; {
        opcode: u8,
        flags: u8,
        rsvd2: [u8; 2],
        rsvd3: u8,
        dlength: Be24,
        lun: Lun,
        itt: Be32,
        ttt: Be32,
        rsvd4: Be32,
        exp_statsn: Be32,
        rsvd5: Be32,
        datasn: Be32,
        /// Offset of the data in the command's buffer.
        offset: Be32,
        rsvd6: Be32,
    }
}

header! {
    /// Text Request (`struct iscsi_text`).
    TextRequest = opcode::TEXT; {
        opcode: u8,
        flags: u8,
        rsvd2: [u8; 2],
        hlength: u8,
        dlength: Be24,
        rsvd4: [u8; 8],
        itt: Be32,
        ttt: Be32,
        cmdsn: Be32,
        exp_statsn: Be32,
        rsvd5: [u8; 16],
    }
}

/// The Continue bit of Text and Login PDUs (`ISCSI_FLAG_TEXT_CONTINUE`).
pub const FLAG_CONTINUE: u8 = 0x40;

header! {
    /// Text Response (`struct iscsi_text_rsp`).
    TextResponse = opcode::TEXT_RSP; {
        opcode: u8,
        flags: u8,
        rsvd2: [u8; 2],
        hlength: u8,
        dlength: Be24,
        rsvd4: [u8; 8],
        itt: Be32,
        ttt: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        rsvd5: [u8; 12],
    }
}

header! {
    /// Login Request (`struct iscsi_login_req`).
    LoginRequest = opcode::LOGIN; {
        opcode: u8,
        /// Transit, Continue, current and next stage.
        flags: u8,
        max_version: u8,
        min_version: u8,
        hlength: u8,
        dlength: Be24,
        isid: [u8; 6],
        tsih: Be16,
        itt: Be32,
        cid: Be16,
        rsvd3: Be16,
        cmdsn: Be32,
        exp_statsn: Be32,
        rsvd5: [u8; 16],
    }
}

/// Login stages (`ISCSI_*_STAGE`), in the CSG and NSG fields of login flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginStage {
    Security = 0,
    Operational = 1,
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
        opcode: u8,
        flags: u8,
        max_version: u8,
        active_version: u8,
        hlength: u8,
        dlength: Be24,
        isid: [u8; 6],
        tsih: Be16,
        itt: Be32,
        rsvd3: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        /// `ISCSI_STATUS_CLS_*`: 0 success, 1 redirect, 2 initiator error, 3 target error.
        status_class: u8,
        status_detail: u8,
        rsvd4: [u8; 10],
    }
}

header! {
    /// Logout Request (`struct iscsi_logout`).
    Logout = opcode::LOGOUT; {
        opcode: u8,
        /// Final bit and the reason (`ISCSI_FLAG_LOGOUT_REASON_MASK`).
        flags: u8,
        rsvd1: [u8; 2],
        hlength: u8,
        dlength: Be24,
        rsvd2: [u8; 8],
        itt: Be32,
        cid: Be16,
        rsvd3: [u8; 2],
        cmdsn: Be32,
        exp_statsn: Be32,
        rsvd4: [u8; 16],
    }
}

impl Logout {
    pub const REASON_CLOSE_SESSION: u8 = 0;
    pub const REASON_CLOSE_CONNECTION: u8 = 1;
}

header! {
    /// Logout Response (`struct iscsi_logout_rsp`).
    LogoutResponse = opcode::LOGOUT_RSP; {
        opcode: u8,
        flags: u8,
        /// `ISCSI_LOGOUT_*`: 0 success.
        response: u8,
        rsvd2: u8,
        hlength: u8,
        dlength: Be24,
        rsvd3: [u8; 8],
        itt: Be32,
        rsvd4: Be32,
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        rsvd5: Be32,
        t2wait: Be16,
        t2retain: Be16,
        rsvd6: Be32,
    }
}

header! {
    /// Reject (`struct iscsi_reject`); the data segment holds the rejected header.
    Reject = opcode::REJECT; {
        opcode: u8,
        flags: u8,
        /// `ISCSI_REASON_*`.
        reason: u8,
        rsvd2: u8,
        hlength: u8,
        dlength: Be24,
        rsvd3: [u8; 8],
        ffffffff: Be32,
        rsvd4: [u8; 4],
        statsn: Be32,
        exp_cmdsn: Be32,
        max_cmdsn: Be32,
        datasn: Be32,
        rsvd5: [u8; 8],
    }
}

/// A BHS, typed by its opcode.
#[derive(Clone, Copy, Debug)]
pub enum Header<'a> {
    NopOut(&'a NopOut),
    ScsiCommand(&'a ScsiCommand),
    TaskMgmt(&'a TaskMgmt),
    LoginRequest(&'a LoginRequest),
    TextRequest(&'a TextRequest),
    DataOut(&'a DataOut),
    Logout(&'a Logout),
    NopIn(&'a NopIn),
    ScsiResponse(&'a ScsiResponse),
    TaskMgmtResponse(&'a TaskMgmtResponse),
    LoginResponse(&'a LoginResponse),
    TextResponse(&'a TextResponse),
    LogoutResponse(&'a LogoutResponse),
    AsyncMessage(&'a AsyncMessage),
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
