//! The iSER initiator as a pure state machine (sans-IO).
//!
//! Inputs: [`Initiator::start_login`], [`Initiator::submit`] (a SCSI command whose data
//! the caller has registered), [`Initiator::ping`], [`Initiator::abort`],
//! [`Initiator::text`], [`Initiator::logout`], and each received message
//! ([`Initiator::receive`]). Outputs: PDUs to send, written into the caller's buffer by
//! [`Initiator::poll_transmit`], and [`Upcall`]s handed to the caller's sink. The caller
//! moves the bytes (RDMA SEND and receive) and the registrations (FRWR); the core never
//! touches a device, a clock or an allocator, so the same code runs in the kernel module
//! and in host tests.
//!
//! Every task holds at most one registration (the STag of its data). When the task ends,
//! its [`TaskEnd`] says whether the target invalidated that STag remotely (SEND with
//! Invalidate) or the caller must post LOCAL_INV: nothing registered is forgotten, also
//! when the connection fails ([`Initiator::fail`]).
//!
//! A received PDU that breaks the protocol (malformed, unexpected, naming a task we do
//! not have) is a [`ProtocolError`]: the connection is over, never a panic.

use crate::login::{
    write_operational_keys, write_security_keys, LoginConfig, Negotiated, Negotiation,
    NegotiationError,
};
use crate::wire::{
    self, emit, login_current_stage, login_flags, login_next_stage, Header, IserHeader, LoginStage,
    Lun, NopOut, Stag, TaskMgmt, TextWriter, WireError, FLAG_FINAL, LOGIN_TRANSIT, OP_IMMEDIATE,
    RESERVED_TAG,
};

/// A task's tag as the caller knows it: the slot and its age, as the ITT carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTag(pub u32);

/// Which way a SCSI command's data moves, and the registration that exposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    /// No data.
    None,
    /// The target RDMA WRITEs `len` bytes into the registration.
    Read {
        /// Where the target writes the data.
        stag: Stag,
        /// How many bytes it writes (the Expected Data Transfer Length).
        len: u32,
    },
    /// The target RDMA READs `len` bytes from the registration. `immediate` bytes of them
    /// (at most what the negotiation allows) the caller sends in the command's SEND after
    /// the headers, from the start of the data.
    Write {
        /// Where the target reads the data from.
        stag: Stag,
        /// How many bytes it reads (the Expected Data Transfer Length).
        len: u32,
    },
}

/// A SCSI command to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiRequest {
    /// The logical unit addressed.
    pub lun: u64,
    /// The CDB, zero-padded to 16 bytes (longer CDBs are not supported).
    pub cdb: [u8; 16],
    /// The command's data and its registration.
    pub data: DataDirection,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The target answered: iSCSI response code, SCSI status, residual (positive:
    /// underflow, negative: overflow).
    Completed {
        /// The iSCSI response code (0: completed at the target).
        response: u8,
        /// The SCSI status (0 GOOD, 2 CHECK CONDITION ...).
        status: u8,
        /// Bytes not moved (positive: underflow) or beyond the expected length
        /// (negative: overflow); 0 when all moved.
        residual: i64,
    },
    /// The target rejected the command's PDU (`ISCSI_REASON_*`).
    Rejected {
        /// The Reject's reason code (`ISCSI_REASON_*`).
        reason: u8,
    },
    /// Aborted by a task management function, or the connection ended first.
    Aborted,
}

/// A task's end, with its registration's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEnd<'a> {
    /// The task that ended.
    pub tag: TaskTag,
    /// How it ended.
    pub outcome: TaskOutcome,
    /// Sense data (without its 2-byte length), if the target sent any.
    pub sense: &'a [u8],
    /// The STag the caller must invalidate (LOCAL_INV) before reusing the memory: the
    /// task's registration, unless the target invalidated it with SEND with Invalidate.
    pub invalidate: Option<u32>,
}

/// What the core tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upcall<'a> {
    /// Login completed; the session is in full feature phase.
    LoggedIn(Negotiated),
    /// The target refused the login (status class and detail of its response).
    LoginRefused {
        /// Status-Class: 1 redirect, 2 initiator error, 3 target error.
        class: u8,
        /// Status-Detail: the reason within the class.
        detail: u8,
    },
    /// A SCSI task ended.
    TaskEnded(TaskEnd<'a>),
    /// A ping ([`Initiator::ping`]) was answered.
    PingAnswered(TaskTag),
    /// A task management function completed with `response` (`ISCSI_TMF_RSP_*`).
    TaskManagementDone {
        /// The tag [`Initiator::abort`] returned.
        tag: TaskTag,
        /// `ISCSI_TMF_RSP_*`: 0 function complete.
        response: u8,
    },
    /// A text response; `more`: not final, the core asks for the rest by itself (text
    /// split inside a pair arrives in pieces: join them before parsing).
    TextResponse {
        /// The text task's tag.
        tag: TaskTag,
        /// The response's `key=value` pairs, or a piece of them.
        text: &'a [u8],
        /// Not final: more text follows in further responses.
        more: bool,
    },
    /// The target asks for a logout within `seconds`.
    LogoutRequested {
        /// The time left to log out, in seconds (Parameter3).
        seconds: u16,
    },
    /// Another asynchronous message (`AsyncMessage::EVENT_*`).
    AsyncEvent {
        /// The AsyncEvent code.
        event: u8,
    },
    /// The logout completed (`response` 0: success); the connection may go.
    LoggedOut {
        /// The Logout Response's code (`ISCSI_LOGOUT_*`).
        response: u8,
    },
}

/// Why a connection must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The message was not a well-formed PDU.
    Wire(WireError),
    /// A PDU that has no place in the current phase.
    UnexpectedPdu(u8),
    /// A response for a task that does not exist (or no longer does).
    UnknownTask(u32),
    /// Sense data longer than its PDU.
    BadSense,
    /// Login negotiation failed.
    Negotiation(NegotiationError),
    /// The target stepped backwards or sideways in the login stages.
    BadLoginStage,
}

impl From<WireError> for ProtocolError {
    fn from(error: WireError) -> Self {
        Self::Wire(error)
    }
}

impl From<NegotiationError> for ProtocolError {
    fn from(error: NegotiationError) -> Self {
        Self::Negotiation(error)
    }
}

/// Why a request was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Not in full feature phase.
    NotLoggedIn,
    /// Every task slot is in use.
    NoFreeTask,
    /// The task named does not exist.
    UnknownTask,
    /// More text than a text request holds.
    TooLong,
    /// A text request is outstanding already.
    Busy,
}

/// A PDU to send: `len` bytes of headers (and text) in the caller's buffer, followed in
/// the same SEND by `immediate` bytes from the start of a write task's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
    /// For a write command carrying immediate data: its task and how many bytes of its
    /// data to append.
    pub immediate: Option<(TaskTag, u32)>,
}

/// The text a text task carries.
const TEXT_MAX: usize = 256;

#[derive(Clone, Copy, Debug)]
enum TaskKind {
    Scsi(ScsiRequest),
    Ping,
    Abort {
        rtt: u32,
        refcmdsn: u32,
        lun: u64,
    },
    /// The text is the initiator's one text buffer: one text task at a time.
    Text,
    Logout,
}

impl TaskKind {
    /// Immediate PDUs do not take a CmdSN (RFC 7143 §4.2.2.1).
    fn immediate(&self) -> bool {
        matches!(self, Self::Ping | Self::Abort { .. } | Self::Logout)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Free,
    Queued,
    Sent,
}

#[derive(Clone, Copy, Debug)]
struct Task {
    state: TaskState,
    /// Bumped at each reuse of the slot, so a stale ITT never names a new task.
    age: u16,
    /// Submission order, for first-in first-out sending.
    seq: u64,
    cmdsn: u32,
    kind: TaskKind,
}

const FREE_TASK: Task = Task {
    state: TaskState::Free,
    age: 0,
    seq: 0,
    cmdsn: 0,
    kind: TaskKind::Ping,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Login in `stage`; `send`: a request is due.
    Login {
        stage: LoginStage,
        send: bool,
    },
    FullFeature,
    LoggedOut,
    Failed,
}

/// `a <= b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_lte(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

/// The initiator side of one iSER connection and its session, with room for `N` tasks
/// (fewer than 65536).
pub struct Initiator<'c, const N: usize> {
    config: LoginConfig<'c>,
    phase: Phase,
    negotiation: Negotiation,
    params: Option<Negotiated>,
    tsih: u16,
    cmdsn: u32,
    exp_cmdsn: u32,
    max_cmdsn: u32,
    exp_statsn: u32,
    tasks: [Task; N],
    next_seq: u64,
    /// Target Transfer Tags of NOP-Ins (the target's pings) still to answer.
    nop_replies: [Option<(u32, u64)>; 4],
    /// A logout is queued or sent: nothing else goes out.
    logging_out: bool,
    /// The login stage whose keys went out already.
    login_keys_sent: Option<LoginStage>,
    /// The target's TTT for the text task's next request (reserved for a first one).
    text_ttt: u32,
    /// The text of the text task.
    text: [u8; TEXT_MAX],
    text_len: usize,
}

impl<'c, const N: usize> Initiator<'c, N> {
    // Below 65536 slots, no slot and age make the reserved tag 0xffffffff.
    const TAGS_FIT: () = assert!(N > 0 && N < 1 << 16);

    /// An initiator that logs in with `config`, idle until [`Initiator::start_login`].
    pub fn new(config: LoginConfig<'c>) -> Self {
        let () = Self::TAGS_FIT;
        Self {
            config,
            phase: Phase::Idle,
            negotiation: Negotiation::new(&config),
            params: None,
            tsih: 0,
            cmdsn: 1,
            exp_cmdsn: 1,
            max_cmdsn: 1,
            exp_statsn: 0,
            tasks: [FREE_TASK; N],
            next_seq: 0,
            nop_replies: [None; 4],
            logging_out: false,
            text_ttt: RESERVED_TAG,
            login_keys_sent: None,
            text: [0; TEXT_MAX],
            text_len: 0,
        }
    }

    /// Begins the login (the connection is up): the first request is due.
    pub fn start_login(&mut self) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Login {
                stage: LoginStage::Security,
                send: true,
            };
        }
    }

    /// The negotiated parameters, once logged in.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.params
    }

    /// Whether the session is in full feature phase.
    pub fn logged_in(&self) -> bool {
        self.phase == Phase::FullFeature
    }

    /// Queues a SCSI command. Its data must stay registered until its [`TaskEnd`].
    pub fn submit(&mut self, request: ScsiRequest) -> Result<TaskTag, SubmitError> {
        self.queue(TaskKind::Scsi(request))
    }

    /// Queues a ping (NOP-Out); [`Upcall::PingAnswered`] when the target answers.
    pub fn ping(&mut self) -> Result<TaskTag, SubmitError> {
        self.queue(TaskKind::Ping)
    }

    /// Aborts `task`: a task not sent yet ends here and now (its [`TaskEnd`] goes to
    /// `sink`; `Ok(None)`); a sent one gets an ABORT TASK, whose tag this returns.
    pub fn abort(
        &mut self,
        task: TaskTag,
        sink: &mut dyn FnMut(Upcall<'_>),
    ) -> Result<Option<TaskTag>, SubmitError> {
        let index = self.index_of(task.0).ok_or(SubmitError::UnknownTask)?;
        let victim = self
            .tasks
            .get(index)
            .copied()
            .ok_or(SubmitError::UnknownTask)?;
        let TaskKind::Scsi(request) = victim.kind else {
            return Err(SubmitError::UnknownTask);
        };
        if victim.state == TaskState::Queued {
            self.free(index);
            sink(Upcall::TaskEnded(aborted(task, &victim)));
            return Ok(None);
        }
        self.queue(TaskKind::Abort {
            rtt: task.0,
            refcmdsn: victim.cmdsn,
            lun: request.lun,
        })
        .map(Some)
    }

    /// Queues a Text request with `keys` (`key=value` pairs, NUL-terminated); one at a
    /// time (`Busy` while one is outstanding).
    pub fn text(&mut self, keys: &[u8]) -> Result<TaskTag, SubmitError> {
        let busy = self
            .tasks
            .iter()
            .any(|t| t.state != TaskState::Free && matches!(t.kind, TaskKind::Text));
        if busy {
            return Err(SubmitError::Busy);
        }
        self.text
            .get_mut(..keys.len())
            .ok_or(SubmitError::TooLong)?
            .copy_from_slice(keys);
        self.text_len = keys.len();
        self.queue(TaskKind::Text)
    }

    /// Queues a logout of the session.
    /// After it, nothing else is sent or taken (RFC 7143 §11.14): tasks still queued end,
    /// aborted, when the logout completes.
    pub fn logout(&mut self) -> Result<TaskTag, SubmitError> {
        let tag = self.queue(TaskKind::Logout)?;
        self.logging_out = true;
        Ok(tag)
    }

    fn queue(&mut self, kind: TaskKind) -> Result<TaskTag, SubmitError> {
        if self.phase != Phase::FullFeature || self.logging_out {
            return Err(SubmitError::NotLoggedIn);
        }
        let (index, task) = self
            .tasks
            .iter_mut()
            .enumerate()
            .find(|(_, t)| t.state == TaskState::Free)
            .ok_or(SubmitError::NoFreeTask)?;
        task.age = task.age.wrapping_add(1);
        task.state = TaskState::Queued;
        task.seq = self.next_seq;
        task.kind = kind;
        self.next_seq += 1;
        Ok(TaskTag(itt(index, task.age)))
    }

    /// The slot an ITT names, if it names a live task.
    fn index_of(&self, itt: u32) -> Option<usize> {
        let index = (itt & 0xffff) as usize;
        let task = self.tasks.get(index)?;
        (task.state != TaskState::Free && task.age == (itt >> 16) as u16).then_some(index)
    }

    /// Writes the next PDU due into `buf`, if any.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, WireError> {
        match self.phase {
            Phase::Login { stage, send: true } => {
                let len = self.emit_login(buf, stage)?;
                self.phase = Phase::Login { stage, send: false };
                Ok(Some(Transmit {
                    len,
                    immediate: None,
                }))
            }
            Phase::FullFeature => self.transmit_full_feature(buf),
            _ => Ok(None),
        }
    }

    fn emit_login(&mut self, buf: &mut [u8], stage: LoginStage) -> Result<usize, WireError> {
        let mut text_buf = [0u8; 1024];
        let mut text = TextWriter::new(&mut text_buf);
        // A stage's keys go out once: when the target stays in the stage (T=0) or has
        // more to say (C=1), the next request is empty (a key declared twice is a
        // protocol error; LIO refuses it).
        let first = self.login_keys_sent != Some(stage);
        let next = match stage {
            LoginStage::Security => {
                if first {
                    write_security_keys(&self.config, &mut text)?;
                }
                LoginStage::Operational
            }
            _ => {
                if first {
                    write_operational_keys(&self.config, &mut text)?;
                }
                LoginStage::FullFeature
            }
        };
        self.login_keys_sent = Some(stage);
        let mut login = wire::LoginRequest::zeroed();
        login.opcode |= OP_IMMEDIATE;
        login.flags = login_flags(true, stage, next);
        login.isid = self.config.isid;
        login.tsih.set(self.tsih);
        login.itt.set(0);
        login.cmdsn.set(self.cmdsn);
        login.exp_statsn.set(self.exp_statsn);
        emit(
            buf,
            &IserHeader::control(None, None),
            &login,
            text.as_bytes(),
        )
    }

    fn transmit_full_feature(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, WireError> {
        // Answers to the target's pings first: they are immediate and carry no task.
        if let Some(slot) = self.nop_replies.iter().position(|r| r.is_some()) {
            if let Some(Some((ttt, lun))) = self.nop_replies.get(slot).copied() {
                let mut nop = NopOut::zeroed();
                nop.opcode |= OP_IMMEDIATE;
                nop.flags = FLAG_FINAL;
                nop.lun = Lun::new(lun);
                nop.itt.set(RESERVED_TAG);
                nop.ttt.set(ttt);
                nop.cmdsn.set(self.cmdsn);
                nop.exp_statsn.set(self.exp_statsn);
                let len = emit(buf, &IserHeader::control(None, None), &nop, &[])?;
                // Written: the answer is out of the queue (not before, so a buffer too
                // small loses nothing).
                if let Some(answered) = self.nop_replies.get_mut(slot) {
                    *answered = None;
                }
                return Ok(Some(Transmit {
                    len,
                    immediate: None,
                }));
            }
        }
        // Then the oldest queued task: an immediate one always, another while the
        // command window is open.
        let window_open = sn_lte(self.cmdsn, self.max_cmdsn);
        let logging_out = self.logging_out;
        let next = self
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == TaskState::Queued && (t.kind.immediate() || window_open))
            .filter(|(_, t)| !logging_out || matches!(t.kind, TaskKind::Logout))
            .min_by_key(|(_, t)| t.seq)
            .map(|(index, _)| index);
        let Some(index) = next else {
            return Ok(None);
        };
        let Some(task) = self.tasks.get(index).copied() else {
            return Ok(None);
        };
        let tag = itt(index, task.age);
        let transmit = self.emit_task(buf, tag, &task)?;
        if let Some(task) = self.tasks.get_mut(index) {
            task.state = TaskState::Sent;
            task.cmdsn = self.cmdsn;
        }
        if !task.kind.immediate() {
            self.cmdsn = self.cmdsn.wrapping_add(1);
        }
        Ok(Some(transmit))
    }

    fn emit_task(&self, buf: &mut [u8], tag: u32, task: &Task) -> Result<Transmit, WireError> {
        let plain = IserHeader::control(None, None);
        let len = match task.kind {
            TaskKind::Scsi(request) => return self.emit_command(buf, tag, &request),
            TaskKind::Ping => {
                let mut nop = NopOut::zeroed();
                nop.opcode |= OP_IMMEDIATE;
                nop.flags = FLAG_FINAL;
                nop.itt.set(tag);
                nop.ttt.set(RESERVED_TAG);
                nop.cmdsn.set(self.cmdsn);
                nop.exp_statsn.set(self.exp_statsn);
                emit(buf, &plain, &nop, &[])?
            }
            TaskKind::Abort { rtt, refcmdsn, lun } => {
                let mut tmf = TaskMgmt::zeroed();
                tmf.opcode |= OP_IMMEDIATE;
                tmf.flags = FLAG_FINAL | TaskMgmt::ABORT_TASK;
                tmf.lun = Lun::new(lun);
                tmf.itt.set(tag);
                tmf.rtt.set(rtt);
                tmf.cmdsn.set(self.cmdsn);
                tmf.exp_statsn.set(self.exp_statsn);
                tmf.refcmdsn.set(refcmdsn);
                emit(buf, &plain, &tmf, &[])?
            }
            TaskKind::Text => {
                let mut text = wire::TextRequest::zeroed();
                text.flags = FLAG_FINAL;
                text.itt.set(tag);
                // A continuation carries the target's TTT and no text.
                text.ttt.set(self.text_ttt);
                text.cmdsn.set(self.cmdsn);
                text.exp_statsn.set(self.exp_statsn);
                emit(
                    buf,
                    &plain,
                    &text,
                    self.text.get(..self.text_len).unwrap_or(&[]),
                )?
            }
            TaskKind::Logout => {
                let mut logout = wire::Logout::zeroed();
                logout.opcode |= OP_IMMEDIATE;
                logout.flags = FLAG_FINAL | wire::Logout::REASON_CLOSE_SESSION;
                logout.itt.set(tag);
                logout.cmdsn.set(self.cmdsn);
                logout.exp_statsn.set(self.exp_statsn);
                emit(buf, &plain, &logout, &[])?
            }
        };
        Ok(Transmit {
            len,
            immediate: None,
        })
    }

    fn emit_command(
        &self,
        buf: &mut [u8],
        tag: u32,
        request: &ScsiRequest,
    ) -> Result<Transmit, WireError> {
        let mut cmd = wire::ScsiCommand::zeroed();
        cmd.flags = FLAG_FINAL | wire::ScsiCommand::ATTR_SIMPLE;
        cmd.lun = Lun::new(request.lun);
        cmd.itt.set(tag);
        cmd.cmdsn.set(self.cmdsn);
        cmd.exp_statsn.set(self.exp_statsn);
        cmd.cdb = request.cdb;
        let (iser, immediate) = match request.data {
            DataDirection::None => (IserHeader::control(None, None), 0),
            DataDirection::Read { stag, len } => {
                cmd.flags |= wire::ScsiCommand::FLAG_READ;
                cmd.data_length.set(len);
                (IserHeader::control(None, Some(stag)), 0)
            }
            DataDirection::Write { stag, len } => {
                cmd.flags |= wire::ScsiCommand::FLAG_WRITE;
                cmd.data_length.set(len);
                let immediate = self.immediate_len(len);
                // The target RDMA READs what the SEND does not carry, from after it.
                let rest = (immediate < len).then_some(Stag {
                    stag: stag.stag,
                    va: stag.va.wrapping_add(u64::from(immediate)),
                });
                (IserHeader::control(rest, None), immediate)
            }
        };
        let len = emit(buf, &iser, &cmd, &[])?;
        // The data segment is the immediate data (none: 0), which the caller appends.
        let bhs_start = wire::ISER_HEADER_LEN;
        let bhs = buf
            .get_mut(bhs_start..bhs_start + wire::BHS_LEN)
            .ok_or(WireError::BufferTooSmall)?;
        let bhs = <wire::Bhs as zerocopy::FromBytes>::mut_from_bytes(bhs)
            .map_err(|_| WireError::BufferTooSmall)?;
        bhs.set_data_segment_length(immediate as usize);
        Ok(Transmit {
            len,
            immediate: (immediate > 0).then_some((TaskTag(tag), immediate)),
        })
    }

    /// How much of a write goes in the command's SEND: none without ImmediateData, else
    /// up to FirstBurstLength and what the target takes in one SEND.
    fn immediate_len(&self, len: u32) -> u32 {
        match self.params {
            Some(p) if p.immediate_data => len
                .min(p.first_burst_length)
                .min(p.target_recv_data_segment_length),
            _ => 0,
        }
    }

    /// Takes a received message; `invalidated` is the rkey the target invalidated with
    /// SEND with Invalidate, as the receive completion reports it. Upcalls go to `sink`.
    /// An error means the connection must end (then call [`Initiator::fail`]).
    pub fn receive(
        &mut self,
        bytes: &[u8],
        invalidated: Option<u32>,
        sink: &mut dyn FnMut(Upcall<'_>),
    ) -> Result<(), ProtocolError> {
        let result = self.receive_pdu(bytes, invalidated, sink);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn receive_pdu(
        &mut self,
        bytes: &[u8],
        invalidated: Option<u32>,
        sink: &mut dyn FnMut(Upcall<'_>),
    ) -> Result<(), ProtocolError> {
        let pdu = wire::parse(bytes)?;
        match (self.phase, pdu.header) {
            (Phase::Login { stage, send: false }, Header::LoginResponse(rsp)) => {
                self.login_response(stage, rsp, pdu.data, sink)
            }
            (Phase::FullFeature, header) => self.full_feature(header, pdu.data, invalidated, sink),
            (_, header) => Err(ProtocolError::UnexpectedPdu(opcode_of(&header))),
        }
    }

    fn login_response(
        &mut self,
        stage: LoginStage,
        rsp: &wire::LoginResponse,
        text: &[u8],
        sink: &mut dyn FnMut(Upcall<'_>),
    ) -> Result<(), ProtocolError> {
        if rsp.status_class != 0 {
            self.phase = Phase::LoggedOut;
            sink(Upcall::LoginRefused {
                class: rsp.status_class,
                detail: rsp.status_detail,
            });
            return Ok(());
        }
        if login_current_stage(rsp.flags) != Some(stage) {
            return Err(ProtocolError::BadLoginStage);
        }
        self.exp_statsn = rsp.statsn.get().wrapping_add(1);
        self.window(rsp.exp_cmdsn.get(), rsp.max_cmdsn.get());
        self.negotiation.apply(text)?;
        if rsp.flags & LOGIN_TRANSIT == 0 {
            // The target stays in this stage: ask again.
            self.phase = Phase::Login { stage, send: true };
            return Ok(());
        }
        match (stage, login_next_stage(rsp.flags)) {
            (LoginStage::Security, Some(LoginStage::Operational)) => {
                self.phase = Phase::Login {
                    stage: LoginStage::Operational,
                    send: true,
                };
            }
            (_, Some(LoginStage::FullFeature)) => {
                let params = self.negotiation.finish()?;
                self.tsih = rsp.tsih.get();
                self.params = Some(params);
                self.phase = Phase::FullFeature;
                sink(Upcall::LoggedIn(params));
            }
            _ => return Err(ProtocolError::BadLoginStage),
        }
        Ok(())
    }

    /// Applies a response's ExpCmdSN and MaxCmdSN (RFC 7143 §4.2.2.1): ignored when
    /// MaxCmdSN < ExpCmdSN - 1, and never moved backwards.
    fn window(&mut self, exp_cmdsn: u32, max_cmdsn: u32) {
        if !sn_lte(exp_cmdsn.wrapping_sub(1), max_cmdsn) {
            return;
        }
        if sn_lte(self.exp_cmdsn, exp_cmdsn) {
            self.exp_cmdsn = exp_cmdsn;
        }
        if sn_lte(self.max_cmdsn, max_cmdsn) {
            self.max_cmdsn = max_cmdsn;
        }
    }

    /// Advances ExpStatSN past a status the target numbered `statsn`.
    fn status(&mut self, statsn: u32) {
        if sn_lte(self.exp_statsn, statsn) {
            self.exp_statsn = statsn.wrapping_add(1);
        }
    }

    /// The sent task an ITT names, still live: the caller checks the response against
    /// it before [`Initiator::free`], so a response that does not fit ends the connection
    /// with the task still there for [`Initiator::fail`] (and its STag not forgotten).
    fn sent_task(&self, itt: u32) -> Result<(usize, TaskTag, Task), ProtocolError> {
        let index = self.index_of(itt).ok_or(ProtocolError::UnknownTask(itt))?;
        let task = self
            .tasks
            .get(index)
            .ok_or(ProtocolError::UnknownTask(itt))?;
        if task.state != TaskState::Sent {
            return Err(ProtocolError::UnknownTask(itt));
        }
        Ok((index, TaskTag(itt), *task))
    }

    fn free(&mut self, index: usize) {
        if let Some(task) = self.tasks.get_mut(index) {
            task.state = TaskState::Free;
        }
    }

    fn full_feature(
        &mut self,
        header: Header<'_>,
        data: &[u8],
        invalidated: Option<u32>,
        sink: &mut dyn FnMut(Upcall<'_>),
    ) -> Result<(), ProtocolError> {
        match header {
            Header::ScsiResponse(rsp) => {
                let (index, tag, task) = self.sent_task(rsp.itt.get())?;
                let TaskKind::Scsi(request) = task.kind else {
                    return Err(ProtocolError::UnknownTask(tag.0));
                };
                let sense = sense_data(data)?;
                self.free(index);
                self.status(rsp.statsn.get());
                self.window(rsp.exp_cmdsn.get(), rsp.max_cmdsn.get());
                let residual = i64::from(rsp.residual_count.get());
                let residual = if rsp.flags & wire::ScsiResponse::FLAG_OVERFLOW != 0 {
                    -residual
                } else if rsp.flags & wire::ScsiResponse::FLAG_UNDERFLOW != 0 {
                    residual
                } else {
                    0
                };
                sink(Upcall::TaskEnded(TaskEnd {
                    tag,
                    outcome: TaskOutcome::Completed {
                        response: rsp.response,
                        status: rsp.cmd_status,
                        residual,
                    },
                    sense,
                    invalidate: still_registered(&request, invalidated),
                }));
            }
            Header::NopIn(nop) => {
                self.window(nop.exp_cmdsn.get(), nop.max_cmdsn.get());
                if nop.itt.get() == RESERVED_TAG {
                    // The target pings: answer with its TTT (StatSN does not advance).
                    if nop.ttt.get() != RESERVED_TAG {
                        let slot = self.nop_replies.iter_mut().find(|r| r.is_none());
                        // More pings than we hold answers for: the oldest answers go
                        // out; a target that floods is not waited on.
                        if let Some(slot) = slot {
                            *slot = Some((nop.ttt.get(), nop.lun.get()));
                        }
                    }
                } else {
                    let (index, tag, task) = self.sent_task(nop.itt.get())?;
                    if !matches!(task.kind, TaskKind::Ping) {
                        return Err(ProtocolError::UnknownTask(tag.0));
                    }
                    self.free(index);
                    self.status(nop.statsn.get());
                    sink(Upcall::PingAnswered(tag));
                }
            }
            Header::TaskMgmtResponse(rsp) => {
                let (index, tag, task) = self.sent_task(rsp.itt.get())?;
                let TaskKind::Abort { rtt, .. } = task.kind else {
                    return Err(ProtocolError::UnknownTask(tag.0));
                };
                self.free(index);
                self.status(rsp.statsn.get());
                self.window(rsp.exp_cmdsn.get(), rsp.max_cmdsn.get());
                // An aborted task gets no response of its own: end it here.
                if rsp.response == 0 {
                    if let Ok((victim_index, victim, victim_task)) = self.sent_task(rtt) {
                        if matches!(victim_task.kind, TaskKind::Scsi(_)) {
                            self.free(victim_index);
                            sink(Upcall::TaskEnded(aborted(victim, &victim_task)));
                        }
                    }
                }
                sink(Upcall::TaskManagementDone {
                    tag,
                    response: rsp.response,
                });
            }
            Header::TextResponse(rsp) => {
                let (index, tag, task) = self.sent_task(rsp.itt.get())?;
                if !matches!(task.kind, TaskKind::Text) {
                    return Err(ProtocolError::UnknownTask(tag.0));
                }
                self.status(rsp.statsn.get());
                self.window(rsp.exp_cmdsn.get(), rsp.max_cmdsn.get());
                // Not final (F=0): the target has more, and is asked for it with an empty
                // request carrying its TTT (RFC 7143 §11.10.2); the task goes on.
                let more = rsp.flags & FLAG_FINAL == 0;
                if more {
                    self.text_ttt = rsp.ttt.get();
                    self.text_len = 0;
                    if let Some(task) = self.tasks.get_mut(index) {
                        task.state = TaskState::Queued;
                    }
                } else {
                    self.text_ttt = RESERVED_TAG;
                    self.free(index);
                }
                sink(Upcall::TextResponse {
                    tag,
                    text: data,
                    more,
                });
            }
            Header::LogoutResponse(rsp) => {
                let (index, _, task) = self.sent_task(rsp.itt.get())?;
                if !matches!(task.kind, TaskKind::Logout) {
                    return Err(ProtocolError::UnknownTask(rsp.itt.get()));
                }
                self.free(index);
                self.status(rsp.statsn.get());
                self.phase = Phase::LoggedOut;
                // Whatever was still outstanding ends with the session.
                self.end_all(sink);
                sink(Upcall::LoggedOut {
                    response: rsp.response,
                });
            }
            Header::AsyncMessage(msg) => {
                self.status(msg.statsn.get());
                self.window(msg.exp_cmdsn.get(), msg.max_cmdsn.get());
                match msg.async_event {
                    wire::AsyncMessage::EVENT_REQUEST_LOGOUT => sink(Upcall::LogoutRequested {
                        seconds: msg.param3.get(),
                    }),
                    event => sink(Upcall::AsyncEvent { event }),
                }
            }
            Header::Reject(reject) => {
                self.status(reject.statsn.get());
                self.window(reject.exp_cmdsn.get(), reject.max_cmdsn.get());
                // The rejected PDU's header is the data; its ITT names the task.
                let rejected = data
                    .get(..wire::BHS_LEN)
                    .and_then(|bhs| <wire::Bhs as zerocopy::FromBytes>::ref_from_bytes(bhs).ok())
                    .ok_or(ProtocolError::Wire(WireError::Truncated))?;
                // A rejected answer to one of the target's pings names no task: the
                // target pings again if it wants an answer (as libiscsi does).
                if rejected.itt.get() == RESERVED_TAG {
                    return Ok(());
                }
                let (index, tag, task) = self.sent_task(rejected.itt.get())?;
                self.free(index);
                let invalidate = match task.kind {
                    TaskKind::Scsi(request) => still_registered(&request, None),
                    _ => None,
                };
                sink(Upcall::TaskEnded(TaskEnd {
                    tag,
                    outcome: TaskOutcome::Rejected {
                        reason: reject.reason,
                    },
                    sense: &[],
                    invalidate,
                }));
            }
            other => return Err(ProtocolError::UnexpectedPdu(opcode_of(&other))),
        }
        Ok(())
    }

    /// Ends every task (the connection is gone): each SCSI task as aborted, with the
    /// registration it still holds. Call it once the connection fails or is torn down.
    pub fn fail(&mut self, sink: &mut dyn FnMut(Upcall<'_>)) {
        self.phase = Phase::Failed;
        self.end_all(sink);
    }

    fn end_all(&mut self, sink: &mut dyn FnMut(Upcall<'_>)) {
        for index in 0..N {
            let Some(task) = self.tasks.get_mut(index) else {
                break;
            };
            if task.state == TaskState::Free {
                continue;
            }
            task.state = TaskState::Free;
            let task = *task;
            if matches!(task.kind, TaskKind::Scsi(_)) {
                sink(Upcall::TaskEnded(aborted(
                    TaskTag(itt(index, task.age)),
                    &task,
                )));
            }
        }
        self.nop_replies = [None; 4];
    }
}

fn itt(index: usize, age: u16) -> u32 {
    u32::from(age) << 16 | index as u32
}

fn opcode_of(header: &Header<'_>) -> u8 {
    use zerocopy::IntoBytes;
    let bytes = match header {
        Header::NopOut(h) => h.as_bytes(),
        Header::ScsiCommand(h) => h.as_bytes(),
        Header::TaskMgmt(h) => h.as_bytes(),
        Header::LoginRequest(h) => h.as_bytes(),
        Header::TextRequest(h) => h.as_bytes(),
        Header::DataOut(h) => h.as_bytes(),
        Header::Logout(h) => h.as_bytes(),
        Header::NopIn(h) => h.as_bytes(),
        Header::ScsiResponse(h) => h.as_bytes(),
        Header::TaskMgmtResponse(h) => h.as_bytes(),
        Header::LoginResponse(h) => h.as_bytes(),
        Header::TextResponse(h) => h.as_bytes(),
        Header::LogoutResponse(h) => h.as_bytes(),
        Header::AsyncMessage(h) => h.as_bytes(),
        Header::Reject(h) => h.as_bytes(),
    };
    bytes.first().map_or(0, |op| op & wire::OPCODE_MASK)
}

/// The STag a SCSI task still holds after the target's SEND with Invalidate of
/// `invalidated` (if any).
fn still_registered(request: &ScsiRequest, invalidated: Option<u32>) -> Option<u32> {
    let stag = match request.data {
        DataDirection::None => return None,
        DataDirection::Read { stag, .. } | DataDirection::Write { stag, .. } => stag.stag,
    };
    (invalidated != Some(stag)).then_some(stag)
}

fn aborted(tag: TaskTag, task: &Task) -> TaskEnd<'static> {
    let invalidate = match task.kind {
        TaskKind::Scsi(request) => still_registered(&request, None),
        _ => None,
    };
    TaskEnd {
        tag,
        outcome: TaskOutcome::Aborted,
        sense: &[],
        invalidate,
    }
}

/// The sense bytes of a SCSI Response's data segment (`SenseLength`, then the sense).
fn sense_data(data: &[u8]) -> Result<&[u8], ProtocolError> {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return Ok(&[]);
    };
    let len = usize::from(u16::from_be_bytes(*len));
    rest.get(..len).ok_or(ProtocolError::BadSense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{LoginResponse, ScsiResponse, BHS_LEN, ISER_HEADER_LEN};

    const CONFIG: LoginConfig<'static> = LoginConfig {
        initiator_name: "iqn.2026-11.tilde:unit",
        target_name: Some("iqn.2026-11.test:unit"),
        isid: [0x80, 0, 0, 0, 0, 1],
        recv_data_segment_length: 8192,
        max_burst_length: 262_144,
        first_burst_length: 65_536,
        immediate_data: true,
        initial_r2t: true,
        max_outstanding_unexpected_pdus: 0,
    };

    fn respond<H: wire::PduHeader>(
        core: &mut Initiator<'_, 8>,
        header: &H,
        text: &[u8],
    ) -> Result<(), ProtocolError> {
        let mut buf = [0u8; 512];
        let len = emit(&mut buf, &IserHeader::control(None, None), header, text).unwrap();
        core.receive(&buf[..len], None, &mut |_| {})
    }

    /// Logs in through both stages, the target announcing MaxCmdSN = ExpCmdSN + 1.
    fn logged_in() -> Initiator<'static, 8> {
        logged_in_with(CONFIG, b"RDMAExtensions=Yes\0")
    }

    /// Logs in with `config`, the target answering the operational stage with `operational`.
    fn logged_in_with(
        config: LoginConfig<'static>,
        operational: &'static [u8],
    ) -> Initiator<'static, 8> {
        let mut core = Initiator::new(config);
        core.start_login();
        let mut buf = [0u8; 2048];
        for (stage, next, text) in [
            (
                LoginStage::Security,
                LoginStage::Operational,
                &b"AuthMethod=None\0"[..],
            ),
            (
                LoginStage::Operational,
                LoginStage::FullFeature,
                operational,
            ),
        ] {
            assert!(core.poll_transmit(&mut buf).unwrap().is_some());
            let mut rsp = LoginResponse::zeroed();
            rsp.flags = login_flags(true, stage, next);
            rsp.exp_cmdsn.set(1);
            rsp.max_cmdsn.set(2);
            respond(&mut core, &rsp, text).unwrap();
        }
        assert!(core.logged_in());
        core
    }

    fn sent_cmdsns(core: &mut Initiator<'_, 8>) -> Vec<u32> {
        let mut buf = [0u8; 512];
        let mut cmdsns = Vec::new();
        while let Some(t) = core.poll_transmit(&mut buf).unwrap() {
            assert!(t.len >= ISER_HEADER_LEN + BHS_LEN);
            let pdu = wire::parse(&buf[..t.len]).unwrap();
            let Header::ScsiCommand(cmd) = pdu.header else {
                panic!()
            };
            cmdsns.push(cmd.cmdsn.get());
        }
        cmdsns
    }

    extern crate std;
    use std::vec::Vec;

    #[test]
    fn commands_wait_for_the_window() {
        let mut core = logged_in();
        let tur = ScsiRequest {
            lun: 0,
            cdb: [0; 16],
            data: DataDirection::None,
        };
        let tags: Vec<_> = (0..4).map(|_| core.submit(tur).unwrap()).collect();
        // MaxCmdSN 2: CmdSN 1 and 2 go, 3 and 4 wait.
        assert_eq!(sent_cmdsns(&mut core), [1, 2]);
        let mut rsp = ScsiResponse::zeroed();
        rsp.itt.set(tags[0].0);
        rsp.exp_cmdsn.set(3);
        rsp.max_cmdsn.set(3);
        respond(&mut core, &rsp, &[]).unwrap();
        assert_eq!(sent_cmdsns(&mut core), [3]);
        // A MaxCmdSN below ExpCmdSN - 1 is ignored (RFC 7143 §4.2.2.1).
        rsp.itt.set(tags[1].0);
        rsp.exp_cmdsn.set(10);
        rsp.max_cmdsn.set(5);
        respond(&mut core, &rsp, &[]).unwrap();
        assert_eq!(sent_cmdsns(&mut core), []);
        // And the same task answered twice is a protocol error.
        assert_eq!(
            respond(&mut core, &rsp, &[]),
            Err(ProtocolError::UnknownTask(tags[1].0))
        );
    }

    #[test]
    fn login_without_rdma_extensions_fails() {
        let mut core: Initiator<'_, 8> = Initiator::new(CONFIG);
        core.start_login();
        let mut buf = [0u8; 2048];
        core.poll_transmit(&mut buf).unwrap();
        let mut rsp = LoginResponse::zeroed();
        rsp.flags = login_flags(true, LoginStage::Security, LoginStage::FullFeature);
        assert_eq!(
            respond(&mut core, &rsp, b"RDMAExtensions=No\0"),
            Err(ProtocolError::Negotiation(
                NegotiationError::NoRdmaExtensions
            ))
        );
        let mut core: Initiator<'_, 8> = Initiator::new(CONFIG);
        core.start_login();
        core.poll_transmit(&mut buf).unwrap();
        assert_eq!(
            respond(&mut core, &rsp, b""),
            Err(ProtocolError::Negotiation(
                NegotiationError::NoRdmaExtensions
            ))
        );
    }

    #[test]
    fn a_refused_login_is_reported() {
        let mut core: Initiator<'_, 8> = Initiator::new(CONFIG);
        core.start_login();
        let mut buf = [0u8; 2048];
        core.poll_transmit(&mut buf).unwrap();
        let mut rsp = LoginResponse::zeroed();
        rsp.status_class = 2;
        rsp.status_detail = 3;
        let len = emit(&mut buf, &IserHeader::control(None, None), &rsp, &[]).unwrap();
        let mut got = None;
        core.receive(&buf[..len], None, &mut |u| {
            got = Some(
                u == (Upcall::LoginRefused {
                    class: 2,
                    detail: 3,
                }),
            )
        })
        .unwrap();
        assert_eq!(got, Some(true));
        assert!(!core.logged_in());
    }

    #[test]
    fn a_stage_the_target_stays_in_is_asked_again_without_keys() {
        let mut core: Initiator<'_, 8> = Initiator::new(CONFIG);
        core.start_login();
        let mut buf = [0u8; 2048];
        let first = core.poll_transmit(&mut buf).unwrap().unwrap();
        assert!(
            first.len > ISER_HEADER_LEN + BHS_LEN,
            "the first request carries the keys"
        );
        let mut rsp = LoginResponse::zeroed();
        // T=0: the target stays in the security stage.
        rsp.flags = login_flags(false, LoginStage::Security, LoginStage::Security);
        respond(&mut core, &rsp, b"AuthMethod=None\0").unwrap();
        let again = core.poll_transmit(&mut buf).unwrap().unwrap();
        assert_eq!(again.len, ISER_HEADER_LEN + BHS_LEN, "keys declared twice");
    }

    #[test]
    fn a_text_response_that_is_not_final_is_followed_up_with_its_ttt() {
        let mut core = logged_in();
        let tag = core.text(b"SendTargets=All\0").unwrap();
        let mut buf = [0u8; 512];
        let t = core.poll_transmit(&mut buf).unwrap().unwrap();
        let Header::TextRequest(first) = wire::parse(&buf[..t.len]).unwrap().header else {
            panic!()
        };
        assert_eq!(first.ttt.get(), RESERVED_TAG);
        let mut rsp = wire::TextResponse::zeroed();
        rsp.itt.set(tag.0);
        rsp.ttt.set(0x77);
        rsp.exp_cmdsn.set(2);
        rsp.max_cmdsn.set(9);
        respond(&mut core, &rsp, b"TargetName=a\0").unwrap();
        let t = core.poll_transmit(&mut buf).unwrap().unwrap();
        let pdu = wire::parse(&buf[..t.len]).unwrap();
        let Header::TextRequest(again) = pdu.header else {
            panic!()
        };
        assert_eq!(
            (again.ttt.get(), again.itt.get(), pdu.data.len()),
            (0x77, tag.0, 0)
        );
        rsp.flags = FLAG_FINAL;
        respond(&mut core, &rsp, b"TargetName=b\0").unwrap();
        // Done: the task is free for another text request.
        assert!(core.text(b"SendTargets=All\0").is_ok());
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_lte(0xffff_fffe, 1));
        assert!(!sn_lte(1, 0xffff_fffe));
        assert!(sn_lte(5, 5));
        // Half the space apart is not "before" (RFC 1982 leaves it undefined; the window
        // must not open on it).
        assert!(sn_lte(0, (1 << 31) - 1));
        assert!(!sn_lte(0, 1 << 31));
    }

    /// The next PDU the initiator sends: its BHS, its iSER header and its `Transmit`.
    fn next_pdu(core: &mut Initiator<'_, 8>) -> (wire::Bhs, IserHeader, Transmit) {
        let mut buf = [0u8; 2048];
        let t = core
            .poll_transmit(&mut buf)
            .unwrap()
            .expect("a PDU to send");
        // The caller appends the immediate data (4-byte multiples here).
        let data = t.immediate.map_or(0, |(_, len)| len as usize);
        let pdu = wire::parse(&buf[..t.len + data]).unwrap();
        (*pdu.bhs, *pdu.iser, t)
    }

    const TUR: ScsiRequest = ScsiRequest {
        lun: 0,
        cdb: [0; 16],
        data: DataDirection::None,
    };

    #[test]
    fn pings_aborts_and_logouts_are_immediate_and_take_no_cmdsn() {
        let mut core = logged_in();
        // Close the window: CmdSN 1 and 2 out, MaxCmdSN 2.
        let commands: Vec<_> = (0..2).map(|_| core.submit(TUR).unwrap()).collect();
        assert_eq!(sent_cmdsns(&mut core), [1, 2]);
        let ping = core.ping().unwrap();
        let (bhs, _, _) = next_pdu(&mut core);
        assert_eq!(
            (bhs.opcode(), bhs.immediate(), bhs.flags, bhs.itt.get()),
            (wire::opcode::NOOP_OUT, true, FLAG_FINAL, ping.0)
        );
        assert_eq!(bhs.statsn.get(), 3, "CmdSN");
        core.abort(commands[1], &mut |_| {}).unwrap();
        let (bhs, _, _) = next_pdu(&mut core);
        assert_eq!(
            (bhs.opcode(), bhs.immediate(), bhs.flags),
            (
                wire::opcode::SCSI_TMFUNC,
                true,
                FLAG_FINAL | TaskMgmt::ABORT_TASK
            )
        );
        assert_eq!(bhs.statsn.get(), 3, "CmdSN");
        core.logout().unwrap();
        let (bhs, _, _) = next_pdu(&mut core);
        assert_eq!(
            (bhs.opcode(), bhs.immediate(), bhs.flags),
            (
                wire::opcode::LOGOUT,
                true,
                FLAG_FINAL | wire::Logout::REASON_CLOSE_SESSION
            )
        );
        assert_eq!(bhs.statsn.get(), 3, "CmdSN");
    }

    #[test]
    fn a_target_ping_is_answered_at_once_with_its_ttt_and_lun() {
        let mut core = logged_in();
        let mut nop = wire::NopIn::zeroed();
        nop.flags = FLAG_FINAL;
        nop.itt.set(RESERVED_TAG);
        nop.ttt.set(0x1234);
        nop.lun = Lun::new(3);
        nop.exp_cmdsn.set(1);
        nop.max_cmdsn.set(2);
        respond(&mut core, &nop, &[]).unwrap();
        let (bhs, _, _) = next_pdu(&mut core);
        assert_eq!(
            (
                bhs.opcode(),
                bhs.immediate(),
                bhs.flags,
                bhs.itt.get(),
                bhs.ttt.get(),
                bhs.lun.get()
            ),
            (
                wire::opcode::NOOP_OUT,
                true,
                FLAG_FINAL,
                RESERVED_TAG,
                0x1234,
                3
            )
        );
    }

    #[test]
    fn commands_carry_their_direction_and_a_simple_attribute() {
        let mut core = logged_in();
        let stag = Stag {
            stag: 0x77,
            va: 0x1000,
        };
        let expected = [
            (DataDirection::None, 0),
            (
                DataDirection::Read { stag, len: 4096 },
                wire::ScsiCommand::FLAG_READ,
            ),
            (
                DataDirection::Write { stag, len: 512 },
                wire::ScsiCommand::FLAG_WRITE,
            ),
        ];
        for (round, (data, direction)) in expected.into_iter().enumerate() {
            let request = ScsiRequest { data, ..TUR };
            let tag = core.submit(request).unwrap();
            let (bhs, iser, t) = next_pdu(&mut core);
            assert_eq!(
                bhs.flags,
                FLAG_FINAL | direction | wire::ScsiCommand::ATTR_SIMPLE,
                "{data:?}"
            );
            match data {
                // All 512 bytes go as immediate data: nothing is left to RDMA READ.
                DataDirection::Write { .. } => {
                    assert_eq!(t.immediate, Some((tag, 512)));
                    assert_eq!(iser.write(), None);
                }
                DataDirection::Read { .. } => {
                    assert_eq!(t.immediate, None);
                    assert_eq!(iser.read(), Some(stag));
                }
                DataDirection::None => assert_eq!(t.immediate, None),
            }
            // Open the window for the next one.
            let mut rsp = ScsiResponse::zeroed();
            rsp.itt.set(tag.0);
            rsp.exp_cmdsn.set(round as u32 + 2);
            rsp.max_cmdsn.set(round as u32 + 2);
            respond(&mut core, &rsp, &[]).unwrap();
        }
    }

    #[test]
    fn without_immediate_data_a_write_sends_no_data_with_the_command() {
        let mut core = logged_in_with(
            LoginConfig {
                immediate_data: false,
                ..CONFIG
            },
            b"RDMAExtensions=Yes\0ImmediateData=No\0",
        );
        let stag = Stag {
            stag: 0x77,
            va: 0x1000,
        };
        core.submit(ScsiRequest {
            data: DataDirection::Write { stag, len: 512 },
            ..TUR
        })
        .unwrap();
        let (bhs, iser, t) = next_pdu(&mut core);
        assert_eq!(t.immediate, None);
        assert_eq!(bhs.data_segment_length(), 0);
        assert_eq!(iser.write(), Some(stag));
    }

    /// The outcomes and registrations of the tasks that end on one received PDU.
    fn ends_on<H: wire::PduHeader>(
        core: &mut Initiator<'_, 8>,
        header: &H,
        data: &[u8],
    ) -> Vec<(TaskTag, TaskOutcome, Option<u32>)> {
        let mut buf = [0u8; 512];
        let len = emit(&mut buf, &IserHeader::control(None, None), header, data).unwrap();
        let mut ends = Vec::new();
        core.receive(&buf[..len], None, &mut |upcall| {
            if let Upcall::TaskEnded(end) = upcall {
                ends.push((end.tag, end.outcome, end.invalidate));
            }
        })
        .unwrap();
        ends
    }

    #[test]
    fn the_residual_is_signed_by_the_response_s_flags() {
        let mut core = logged_in();
        for (round, (flags, residual)) in [
            (wire::ScsiResponse::FLAG_OVERFLOW, -100),
            (wire::ScsiResponse::FLAG_UNDERFLOW, 100),
            // A count without either flag means nothing.
            (0, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let tag = core.submit(TUR).unwrap();
            next_pdu(&mut core);
            let mut rsp = ScsiResponse::zeroed();
            rsp.flags = FLAG_FINAL | flags;
            rsp.itt.set(tag.0);
            rsp.residual_count.set(100);
            rsp.exp_cmdsn.set(round as u32 + 2);
            rsp.max_cmdsn.set(round as u32 + 2);
            let ends = ends_on(&mut core, &rsp, &[]);
            assert_eq!(
                ends,
                [(
                    tag,
                    TaskOutcome::Completed {
                        response: 0,
                        status: 0,
                        residual
                    },
                    None
                )]
            );
        }
    }

    #[test]
    fn a_rejected_command_ends_with_its_registration_and_a_rejected_ping_answer_ends_nothing() {
        use zerocopy::IntoBytes;
        let mut core = logged_in();
        let stag = Stag {
            stag: 0x99,
            va: 0x2000,
        };
        let tag = core
            .submit(ScsiRequest {
                data: DataDirection::Read { stag, len: 4096 },
                ..TUR
            })
            .unwrap();
        let (rejected, _, _) = next_pdu(&mut core);
        let mut reject = wire::Reject::zeroed();
        reject.flags = FLAG_FINAL;
        reject.reason = 9;
        reject.ffffffff.set(RESERVED_TAG);
        reject.exp_cmdsn.set(2);
        reject.max_cmdsn.set(2);
        let ends = ends_on(&mut core, &reject, rejected.as_bytes());
        assert_eq!(
            ends,
            [(tag, TaskOutcome::Rejected { reason: 9 }, Some(0x99))]
        );
        // The answer to a target's ping carries the reserved ITT.
        let mut answer = rejected;
        answer.itt.set(RESERVED_TAG);
        assert_eq!(ends_on(&mut core, &reject, answer.as_bytes()), []);
    }

    #[test]
    fn requests_acknowledge_the_target_s_last_status() {
        let mut core = logged_in();
        let tag = core.submit(TUR).unwrap();
        next_pdu(&mut core);
        let mut rsp = ScsiResponse::zeroed();
        rsp.itt.set(tag.0);
        rsp.statsn.set(41);
        rsp.exp_cmdsn.set(2);
        rsp.max_cmdsn.set(3);
        respond(&mut core, &rsp, &[]).unwrap();
        core.submit(TUR).unwrap();
        assert_eq!(next_pdu(&mut core).0.exp_statsn.get(), 42);
    }

    #[test]
    fn queued_commands_go_oldest_first_whatever_their_slot() {
        let mut core = logged_in();
        let first: Vec<_> = (0..2).map(|_| core.submit(TUR).unwrap()).collect();
        assert_eq!(sent_cmdsns(&mut core), [1, 2]);
        // Two wait in slots 2 and 3; the first command's slot (0) is freed and taken by
        // a newer one.
        let waiting: Vec<_> = (0..2).map(|_| core.submit(TUR).unwrap()).collect();
        let mut rsp = ScsiResponse::zeroed();
        rsp.itt.set(first[0].0);
        rsp.exp_cmdsn.set(3);
        rsp.max_cmdsn.set(2);
        respond(&mut core, &rsp, &[]).unwrap();
        let newest = core.submit(TUR).unwrap();
        assert_eq!(newest.0 & 0xffff, first[0].0 & 0xffff, "slot 0 reused");
        rsp.itt.set(first[1].0);
        rsp.max_cmdsn.set(5);
        respond(&mut core, &rsp, &[]).unwrap();
        let order: Vec<u32> = (0..3).map(|_| next_pdu(&mut core).0.itt.get()).collect();
        assert_eq!(order, [waiting[0].0, waiting[1].0, newest.0]);
    }
}
