//! A software model of a ConnectX-3, for running the fast path on the host.
//!
//! The model is the device's side of the contract the driver is written against: on each
//! doorbell it takes the WQEs the driver handed over (by owner bit, or by the RQ doorbell
//! record), executes them between its QPs — RC and UD loopback: sends into posted
//! receives, RDMA write and read, atomics, fast registration and invalidation, all
//! against registered memory with the hardware's checks — and writes CQEs with owner
//! bits that flip on each lap, error CQEs with the hardware's syndromes, flush CQEs once
//! a QP is in error, and EQEs for armed CQs.
//!
//! It also checks the driver. A doorbell with nothing new, a WQE body written after its
//! ownership word, a write to a WQE the device owns, a WQE whose size covers stamped
//! blocks, a CQ consumer index that moves backwards, a CQ overrun, an arm record that
//! disagrees with the arm doorbell, a BlueFlame copy that is not the ring's WQE or not
//! the next one: each is a [`ModelError`], and tests fail on any.
//!
//! What it does not model: timing, packet loss and transport retries, MTU segmentation,
//! SRQs, memory windows and multicast. A BlueFlame copy rings for its QP; the WQE is
//! executed from the ring, which the copy must equal.

pub mod hca;
mod host;
mod memory;

pub use host::{
    wr_id_table, HostBlueFlame, HostDoorbellRecord, HostPlatform, HostRing, HostUar, UarWrite,
};
pub use memory::{mpt_index, Fault, Memory, LOCAL_DMA_LKEY};

use crate::fastpath::cq::CqDoorbells;
use crate::fastpath::platform::{DmaRing, DoorbellRecord};
use crate::fastpath::qp::QueuePairState;
use crate::fastpath::recv::RecvQueueState;
use crate::fastpath::send::{QpType, QueueConfigError, SendQueueCaps, SendQueueState};
use crate::wire::{
    send_doorbell_qpn, ArmCommand, AtomicSeg, Be16, Be32, CqDoorbell, CqDoorbellRecord, Cqe,
    CqeStride, CtrlSeg, DataSeg, DatagramSeg, Eqe, ErrorCqe, EventType, FastRegSeg, InlineSeg,
    LocalInvalSeg, RaddrSeg, RecvOpcode, SendOpcode, Syndrome, CQE_SIZE, DS_SIZE, EQE_SIZE,
    RQ_DOORBELL_MASK, SQ_MAX_HEADROOM, STAMP_WORD, WQEBB_SIZE,
};
use crate::wr::Access;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use host::EntryCheck;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// A driver mistake (or a test's), as the model saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// A send doorbell for a QP with no newly handed-over WQE.
    DoorbellWithoutWork { qpn: u32 },
    /// A send doorbell naming no QP.
    UnknownQp { qpn: u32 },
    /// A WQE the device fetched had been written after its ownership word.
    WqeWrittenAfterHandover { qpn: u32, wqe: u32 },
    /// The device found a WQE owned by it that the driver never handed over.
    WqeNotHandedOver { qpn: u32, wqe: u32 },
    /// The driver wrote a WQE the device owned.
    WriteToDeviceWqe { qpn: u32, wqe: u32 },
    /// A WQE whose segments do not parse: its size, opcode or a stamped block inside it.
    MalformedWqe {
        qpn: u32,
        wqe: u32,
        reason: &'static str,
    },
    /// The RQ doorbell record claims more WQEs than the queue holds, or went backwards.
    RecvDoorbellOverrun { qpn: u32, record: u32 },
    /// A WQE in the device's read-ahead window (the `spare` slots after the last one
    /// handed over) has a block, other than its first, that does not begin with the stamp.
    UnstampedBlock { qpn: u32, wqe: u32, block: u32 },
    /// The CQ's consumer index moved backwards.
    ConsumerIndexBackwards { cqn: u32, from: u32, to: u32 },
    /// The device had a CQE to write and the CQ was full.
    CqOverrun { cqn: u32 },
    /// A CQ doorbell naming no CQ.
    UnknownCq { cqn: u32 },
    /// The arm doorbell and the arm word in the doorbell record disagree.
    ArmRecordMismatch { cqn: u32 },
    /// An arm with a stale sequence number: the driver did not count the last event
    /// (`mlx4_cq_completion` bumps `arm_sn`), so the hardware would ignore the arm.
    StaleArmSequence { cqn: u32, expected: u32, got: u32 },
    /// The device had an EQE to write and the EQ was full.
    EqOverrun { eqn: u32 },
    /// A BlueFlame copy that is not what the device can execute: not whole 64-byte
    /// blocks, larger than the buffer, or naming a WQE other than the next one.
    BadBlueFlame { qpn: u32, reason: &'static str },
    /// A BlueFlame copy that differs from the WQE in the ring, which the device
    /// fetches again when it must resend.
    BlueFlameDiffersFromRing { qpn: u32, wqe: u32, offset: usize },
    /// Two BlueFlame copies in a row into the same buffer of a QP's register.
    BlueFlameBufferReused { qpn: u32, buffer: usize },
}

/// Bytes in each BlueFlame buffer of the model (`bf_reg_size / 2` on a ConnectX-3).
pub const BLUEFLAME_BUFFER_SIZE: usize = 256;

/// Per-QP settings the driver would give by `modify_qp`.
#[derive(Clone, Copy, Debug)]
pub struct QpSpec {
    pub qp_type: QpType,
    pub send_cq: u32,
    pub recv_cq: u32,
    pub log_sq_entries: u32,
    pub sq_wqe_shift: u32,
    pub log_rq_entries: u32,
    /// log2 of the receive WQE size: `1 << (shift - 4)` scatter entries.
    pub rq_wqe_shift: u32,
    pub caps: SendQueueCaps,
    /// RNR retries: 7 waits for a receive forever, as `IB_RNR_RETRY_INFINITE`.
    pub rnr_retry: u8,
    pub qkey: u32,
    /// Check the driver's side of the SQ ownership protocol (off only in benchmarks,
    /// which measure the driver, not the checks).
    pub checked: bool,
}

impl QpSpec {
    /// An RC QP with small queues.
    pub fn rc(send_cq: u32, recv_cq: u32) -> Self {
        Self {
            qp_type: QpType::Rc,
            send_cq,
            recv_cq,
            log_sq_entries: 7,
            sq_wqe_shift: 7,
            log_rq_entries: 6,
            rq_wqe_shift: 6,
            caps: SendQueueCaps {
                max_sge: 4,
                max_inline: 64,
                signal_all: false,
            },
            rnr_retry: 7,
            qkey: 0,
            checked: true,
        }
    }

    /// A UD QP with small queues.
    pub fn ud(send_cq: u32, recv_cq: u32, qkey: u32) -> Self {
        Self {
            qp_type: QpType::Ud,
            qkey,
            sq_wqe_shift: 8,
            ..Self::rc(send_cq, recv_cq)
        }
    }
}

/// QP state as the device keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    Rts,
    Error,
}

struct ModelQp {
    qp_type: QpType,
    state: QpState,
    sq: HostRing,
    sq_entries: u32,
    sq_consumer: u32,
    /// Handovers counted by the checked ring as of the last batch of doorbells.
    seen_handovers: u32,
    /// Waiting for the responder to post a receive (RNR with infinite retry).
    stalled: bool,
    /// The BlueFlame buffer of the last copy for this QP.
    last_blueflame_buffer: Option<usize>,
    rq: HostRing,
    rq_entries: u32,
    rq_consumer: u32,
    rq_doorbell: HostDoorbellRecord,
    send_cq: u32,
    recv_cq: u32,
    peer: Option<u32>,
    rnr_retry: u8,
    qkey: u32,
}

struct ModelCq {
    ring: HostRing,
    entries: u32,
    stride: CqeStride,
    producer: u32,
    doorbells: CqDoorbells<HostPlatform>,
    last_ci: u32,
    armed: Option<ArmCommand>,
    /// Completion events raised for this CQ so far.
    events: u32,
    eqn: Option<u32>,
}

struct ModelEq {
    ring: HostRing,
    entries: u32,
    producer: u32,
    consumer: u32,
    armed: bool,
}

/// What a CQ is made of on the driver side: hand these to
/// [`CompletionQueue::new`](crate::fastpath::cq::CompletionQueue::new).
pub struct CqParts {
    pub cqn: u32,
    pub ring: HostRing,
    pub doorbells: CqDoorbells<HostPlatform>,
}

/// A completion event the model raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaisedEvent {
    pub cqn: u32,
}

/// The device.
pub struct Model {
    uar: HostUar,
    memory: Memory,
    qps: BTreeMap<u32, ModelQp>,
    cqs: BTreeMap<u32, ModelCq>,
    eqs: BTreeMap<u32, ModelEq>,
    errors: Vec<ModelError>,
    events: Vec<RaisedEvent>,
    next_qpn: u32,
    next_cqn: u32,
}

/// A gather or scatter entry as the device reads it: lkey, address, length.
type ScatterEntry = (u32, u64, u32);

/// The data of a WQE: gather entries or inline bytes.
enum WqeData {
    Gather(Vec<ScatterEntry>),
    Inline(Vec<u8>),
}

/// A WQE as the device reads it.
struct ParsedWqe {
    opcode: SendOpcode,
    signaled: bool,
    solicited: bool,
    imm: u32,
    raddr: Option<RaddrSeg>,
    atomic: Option<AtomicSeg>,
    datagram: Option<DatagramSeg>,
    local_inval: Option<LocalInvalSeg>,
    fast_reg: Option<FastRegSeg>,
    data: WqeData,
}

/// What executing one WQE came to.
enum Outcome {
    /// Done; the requester's CQE carries `byte_len`.
    Done { byte_len: u32 },
    /// Requester error: error CQE and the QP to ERR.
    Error(Syndrome),
    /// No receive posted at the responder: try again later.
    ReceiverNotReady,
}

/// Why a scatter into a receive WQE or local buffers failed.
enum ScatterError {
    Length,
    Protection,
}

/// The fast path's owner-bit test for lap `counter / entries`.
fn lap_bit(counter: u32, entries: u32) -> bool {
    counter & entries != 0
}

impl Model {
    pub fn new(uar: HostUar) -> Self {
        Self {
            uar,
            memory: Memory::new(),
            qps: BTreeMap::new(),
            cqs: BTreeMap::new(),
            eqs: BTreeMap::new(),
            errors: Vec::new(),
            events: Vec::new(),
            next_qpn: 0x48,
            next_cqn: 0x80,
        }
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    pub fn memory_mut(&mut self) -> &mut Memory {
        &mut self.memory
    }

    /// Completion events raised since the last call.
    pub fn take_events(&mut self) -> Vec<RaisedEvent> {
        core::mem::take(&mut self.events)
    }

    /// Driver errors seen since the last call.
    pub fn take_errors(&mut self) -> Vec<ModelError> {
        core::mem::take(&mut self.errors)
    }

    /// Creates an EQ of `1 << log_entries` entries; returns its number and the ring for
    /// [`EventQueue::new`](crate::fastpath::eq::EventQueue::new).
    pub fn create_eq(&mut self, log_entries: u32) -> (u32, HostRing) {
        let eqn = self.eqs.len() as u32;
        let ring = HostRing::new(log_entries, EQE_SIZE.trailing_zeros());
        let entries = 1 << log_entries;
        self.eqs.insert(
            eqn,
            ModelEq {
                ring: ring.clone(),
                entries,
                producer: 0,
                consumer: 0,
                armed: true,
            },
        );
        (eqn, ring)
    }

    /// Creates a CQ, reporting its events to `eqn` if given.
    pub fn create_cq(&mut self, log_entries: u32, stride: CqeStride, eqn: Option<u32>) -> CqParts {
        let cqn = self.next_cqn;
        self.next_cqn += 1;
        let ring = HostRing::new(log_entries, stride.shift());
        let doorbells: CqDoorbells<HostPlatform> = CqDoorbells {
            set_ci: HostDoorbellRecord::new(),
            arm: HostDoorbellRecord::new(),
        };
        let model_doorbells = CqDoorbells {
            set_ci: doorbells.set_ci.clone(),
            arm: doorbells.arm.clone(),
        };
        self.cqs.insert(
            cqn,
            ModelCq {
                ring: ring.clone(),
                entries: 1 << log_entries,
                stride,
                producer: 0,
                doorbells: model_doorbells,
                last_ci: 0,
                armed: None,
                events: 0,
                eqn,
            },
        );
        CqParts {
            cqn,
            ring,
            doorbells,
        }
    }

    /// Creates a QP in RTS and returns the driver's state for it. An RC QP still needs
    /// [`Model::connect`].
    pub fn create_qp(
        &mut self,
        spec: &QpSpec,
    ) -> Result<QueuePairState<HostPlatform>, QueueConfigError> {
        let qpn = self.next_qpn;
        let sq = if spec.checked {
            HostRing::new_checked_send_queue(spec.log_sq_entries, spec.sq_wqe_shift)
        } else {
            HostRing::new(spec.log_sq_entries, spec.sq_wqe_shift)
        };
        let rq = HostRing::new(spec.log_rq_entries, spec.rq_wqe_shift);
        let rq_doorbell = HostDoorbellRecord::new();
        let sq_state = SendQueueState::new(
            sq.clone(),
            wr_id_table(1 << spec.log_sq_entries),
            spec.qp_type,
            spec.caps,
        )?;
        let rq_state = RecvQueueState::new(
            rq.clone(),
            wr_id_table(1 << spec.log_rq_entries),
            rq_doorbell.clone(),
        )?;
        self.next_qpn += 1;
        self.qps.insert(
            qpn,
            ModelQp {
                qp_type: spec.qp_type,
                state: QpState::Rts,
                sq,
                sq_entries: 1 << spec.log_sq_entries,
                sq_consumer: 0,
                seen_handovers: 0,
                stalled: false,
                last_blueflame_buffer: None,
                rq,
                rq_entries: 1 << spec.log_rq_entries,
                rq_consumer: 0,
                rq_doorbell,
                send_cq: spec.send_cq,
                recv_cq: spec.recv_cq,
                peer: None,
                rnr_retry: spec.rnr_retry,
                qkey: spec.qkey,
            },
        );
        Ok(QueuePairState::new(qpn, sq_state, rq_state))
    }

    /// Connects two RC QPs to each other (loopback).
    pub fn connect(&mut self, a: u32, b: u32) {
        if let Some(qp) = self.qps.get_mut(&a) {
            qp.peer = Some(b);
        }
        if let Some(qp) = self.qps.get_mut(&b) {
            qp.peer = Some(a);
        }
    }

    /// Moves a QP to the error state (`IB_QPS_ERR`): outstanding and later WQEs flush.
    pub fn set_error(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.state = QpState::Error;
        }
    }

    /// Whether EQ `eqn` is armed: its last doorbell asked for the next event's interrupt.
    pub fn eq_armed(&self, eqn: u32) -> Option<bool> {
        self.eqs.get(&eqn).map(|eq| eq.armed)
    }

    pub fn qp_state(&self, qpn: u32) -> Option<QpState> {
        self.qps.get(&qpn).map(|qp| qp.state)
    }

    /// Handles every doorbell the driver rang, then retries stalled QPs and flushes the
    /// receive queues of QPs in error, until nothing moves. `Err` carries the first driver
    /// error seen; all of them stay available from [`Model::take_errors`].
    pub fn process(&mut self) -> Result<(), ModelError> {
        let first_new = self.errors.len();
        let mut doorbells = BTreeMap::new();
        while let Some(write) = self.uar.pop() {
            match write {
                UarWrite::Send(value) => {
                    let qpn = send_doorbell_qpn(value);
                    if !self.qps.contains_key(&qpn) {
                        self.errors.push(ModelError::UnknownQp { qpn });
                        continue;
                    }
                    *doorbells.entry(qpn).or_insert(0) += 1;
                    self.run_send_queue(qpn);
                }
                UarWrite::BlueFlame { buffer, wqe } => {
                    if let Some(qpn) = self.blueflame(buffer, &wqe) {
                        *doorbells.entry(qpn).or_insert(0) += 1;
                        self.run_send_queue(qpn);
                    }
                }
                UarWrite::Cq(doorbell) => self.arm_cq(doorbell),
                UarWrite::Eq { eqn, word } => {
                    if let Some(eq) = self.eqs.get_mut(&eqn) {
                        eq.consumer = word & 0x00ff_ffff;
                        eq.armed = word & (1 << 31) != 0;
                    }
                }
            }
        }
        // Each send doorbell must follow at least one newly handed-over WQE. The model
        // runs after the driver, so it checks the count over the batch: never more
        // doorbells than WQEs handed over since the last batch.
        for (qpn, rung) in doorbells {
            let Some(qp) = self.qps.get_mut(&qpn) else {
                continue;
            };
            let Some(handovers) = qp.sq.handovers() else {
                continue;
            };
            let new = handovers.wrapping_sub(qp.seen_handovers);
            qp.seen_handovers = handovers;
            if rung > new {
                self.errors.push(ModelError::DoorbellWithoutWork { qpn });
            }
        }
        loop {
            let qpns: Vec<u32> = self.qps.keys().copied().collect();
            let mut moved = 0;
            for qpn in qpns {
                if self
                    .qps
                    .get(&qpn)
                    .is_some_and(|qp| qp.stalled || qp.state == QpState::Error)
                {
                    moved += self.run_send_queue(qpn);
                }
                // Flushed receives change no other QP: not counted as movement.
                self.flush_receives(qpn);
            }
            if moved == 0 {
                break;
            }
        }
        self.check_stamps();
        self.collect_ring_violations();
        match self.errors.get(first_new) {
            Some(error) => Err(*error),
            None => Ok(()),
        }
    }

    /// After a batch, the device may read ahead `spare` WQEs past the last one handed
    /// over; each of their blocks but the first must begin with the stamp, or the device
    /// would take stale bytes for a valid block (`stamp_send_wqe`).
    fn check_stamps(&mut self) {
        for (&qpn, qp) in &self.qps {
            if qp.stalled || qp.sq.handovers().is_none() {
                continue;
            }
            let shift = qp.sq.entry_shift();
            let blocks = (1u32 << shift) / WQEBB_SIZE as u32;
            let spare = (SQ_MAX_HEADROOM >> shift) as u32 + 1;
            'window: for wqe in qp.sq_consumer..qp.sq_consumer.wrapping_add(spare) {
                for block in 1..blocks {
                    let word = qp.sq.read_word(wqe, (block as usize) * WQEBB_SIZE);
                    if word != STAMP_WORD {
                        self.errors
                            .push(ModelError::UnstampedBlock { qpn, wqe, block });
                        break 'window;
                    }
                }
            }
        }
    }

    fn collect_ring_violations(&mut self) {
        for (&qpn, qp) in &self.qps {
            for host::RingViolation::WriteToDeviceEntry { index } in qp.sq.take_violations() {
                self.errors
                    .push(ModelError::WriteToDeviceWqe { qpn, wqe: index });
            }
        }
    }

    fn arm_cq(&mut self, doorbell: CqDoorbell) {
        let cqn = doorbell.cqn();
        let Some(cq) = self.cqs.get_mut(&cqn) else {
            self.errors.push(ModelError::UnknownCq { cqn });
            return;
        };
        let Some(command) = doorbell.command() else {
            self.errors.push(ModelError::ArmRecordMismatch { cqn });
            return;
        };
        let record = cq.doorbells.arm.read_acquire();
        let ci = doorbell.cons_index.get();
        if record != CqDoorbellRecord::arm_word(doorbell.arm_sn(), command, ci) {
            self.errors.push(ModelError::ArmRecordMismatch { cqn });
        }
        // The sequence starts at 1 and counts the events delivered.
        let expected = cq.events.wrapping_add(1) & CqDoorbell::SN_MASK;
        if doorbell.arm_sn() != expected {
            let got = doorbell.arm_sn();
            self.errors
                .push(ModelError::StaleArmSequence { cqn, expected, got });
            return;
        }
        cq.armed = Some(command);
        // Completions past the consumer index the arm names raise the event at once.
        if cq.producer.wrapping_sub(ci) & CqDoorbell::CI_MASK != 0 {
            self.raise_event(cqn);
        }
    }

    fn raise_event(&mut self, cqn: u32) {
        let Some(cq) = self.cqs.get_mut(&cqn) else {
            return;
        };
        cq.armed = None;
        cq.events = cq.events.wrapping_add(1);
        self.events.push(RaisedEvent { cqn });
        let Some(eqn) = cq.eqn else { return };
        let Some(eq) = self.eqs.get_mut(&eqn) else {
            return;
        };
        if eq.producer.wrapping_sub(eq.consumer) & 0x00ff_ffff >= eq.entries {
            self.errors.push(ModelError::EqOverrun { eqn });
            return;
        }
        let index = eq.producer;
        eq.producer = index.wrapping_add(1);
        let mut eqe = Eqe::new_zeroed();
        eqe.event_type = EventType::Completion as u8;
        eqe.event[0] = Be32::new(cqn);
        let owner = if lap_bit(index, eq.entries) {
            Eqe::OWNER
        } else {
            0
        };
        // SAFETY: the EQ has room (checked above), so the driver has consumed this entry.
        unsafe {
            eq.ring.with_entry_mut(index, |entry| {
                if let Some(body) = entry.get_mut(..Eqe::OWNER_WORD_OFFSET) {
                    body.copy_from_slice(&eqe.as_bytes()[..Eqe::OWNER_WORD_OFFSET]);
                }
            })
        };
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        eq.ring
            .write_word(index, Eqe::OWNER_WORD_OFFSET, u32::from(owner));
    }

    /// Writes a CQE (its first 28 bytes from `cqe`, then the owner word), raising an event
    /// if the CQ is armed for it.
    fn push_cqe(&mut self, cqn: u32, cqe: &[u8; CQE_SIZE], solicited: bool) {
        let Some(cq) = self.cqs.get_mut(&cqn) else {
            self.errors.push(ModelError::UnknownCq { cqn });
            return;
        };
        let ci = cq.doorbells.set_ci.read_acquire() & CqDoorbell::CI_MASK;
        let advance = ci.wrapping_sub(cq.last_ci) & CqDoorbell::CI_MASK;
        let outstanding = cq.producer.wrapping_sub(cq.last_ci) & CqDoorbell::CI_MASK;
        if advance > outstanding {
            self.errors.push(ModelError::ConsumerIndexBackwards {
                cqn,
                from: cq.last_ci,
                to: ci,
            });
        } else {
            cq.last_ci = ci;
        }
        if cq.producer.wrapping_sub(cq.last_ci) & CqDoorbell::CI_MASK >= cq.entries {
            self.errors.push(ModelError::CqOverrun { cqn });
            return;
        }
        let index = cq.producer;
        cq.producer = index.wrapping_add(1);
        let offset = cq.stride.cqe_offset();
        let owner = if lap_bit(index, cq.entries) {
            Cqe::OWNER
        } else {
            0
        };
        let last_word =
            u32::from_be_bytes([cqe[28], cqe[29], cqe[30], (cqe[31] & !Cqe::OWNER) | owner]);
        // SAFETY: the CQ has room (checked above against the consumer index the driver
        // published), so the driver is done with this entry.
        unsafe {
            cq.ring.with_entry_mut(index, |entry| {
                if let Some(body) = entry.get_mut(offset..offset + Cqe::OWNER_WORD_OFFSET) {
                    body.copy_from_slice(&cqe[..Cqe::OWNER_WORD_OFFSET]);
                }
            })
        };
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        cq.ring
            .write_word(index, cq.stride.owner_word_offset(), last_word);
        let raise = match cq.armed {
            Some(ArmCommand::Next) => true,
            Some(ArmCommand::Solicited) => {
                solicited || cqe[31] & Cqe::OPCODE_MASK == Cqe::OPCODE_ERROR
            }
            None => false,
        };
        if raise {
            self.raise_event(cqn);
        }
    }

    fn send_cqe(qpn: u32, wqe: u32, opcode: SendOpcode, byte_len: u32) -> [u8; CQE_SIZE] {
        let mut cqe = Cqe::new_zeroed();
        cqe.vlan_my_qpn = Be32::new(qpn);
        cqe.byte_cnt = Be32::new(byte_len);
        cqe.wqe_index = Be16::new(wqe as u16);
        cqe.owner_sr_opcode = Cqe::IS_SEND | opcode as u8;
        let mut bytes = [0; CQE_SIZE];
        bytes.copy_from_slice(cqe.as_bytes());
        bytes
    }

    fn error_cqe(qpn: u32, wqe: u32, is_send: bool, syndrome: Syndrome) -> [u8; CQE_SIZE] {
        let mut cqe = ErrorCqe::new_zeroed();
        cqe.my_qpn = Be32::new(qpn);
        cqe.wqe_index = Be16::new(wqe as u16);
        cqe.syndrome = syndrome as u8;
        cqe.owner_sr_opcode = Cqe::OPCODE_ERROR | if is_send { Cqe::IS_SEND } else { 0 };
        let mut bytes = [0; CQE_SIZE];
        bytes.copy_from_slice(cqe.as_bytes());
        bytes
    }

    /// Executes handed-over WQEs of `qpn` until one is not handed over, a receiver is
    /// not ready, or the ring is empty. Returns how many were executed: WQEs flushed or
    /// refused as malformed are not counted, since they change no other QP, and the
    /// count only tells [`Model::process`] whether another pass could move something.
    /// Checks a BlueFlame copy (`mlx4_post_send`'s `bf_page` path) and returns the QP it
    /// rings for: the copy must be whole blocks within the buffer, name the next WQE the
    /// device executes, equal that WQE in the ring, and go to the other buffer than the
    /// QP's last copy.
    fn blueflame(&mut self, buffer: usize, wqe: &[u8]) -> Option<u32> {
        let Ok((ctrl, _)) = CtrlSeg::ref_from_prefix(wqe) else {
            self.errors.push(ModelError::BadBlueFlame {
                qpn: 0,
                reason: "shorter than a control segment",
            });
            return None;
        };
        let qpn = send_doorbell_qpn(ctrl.blueflame_qpn());
        let counter = (ctrl.owner_opcode.get() >> CtrlSeg::BF_COUNTER_SHIFT) & 0xffff;
        let Some(qp) = self.qps.get_mut(&qpn) else {
            self.errors.push(ModelError::UnknownQp { qpn });
            return None;
        };
        let bad = |reason| ModelError::BadBlueFlame { qpn, reason };
        let error = if wqe.is_empty() || !wqe.len().is_multiple_of(WQEBB_SIZE) {
            Some(bad("not whole 64-byte blocks"))
        } else if wqe.len() > BLUEFLAME_BUFFER_SIZE || buffer > 1 {
            Some(bad("past the buffer"))
        } else if counter != qp.sq_consumer & 0xffff {
            Some(bad("names a WQE other than the next one"))
        } else if ctrl.size_ds() * DS_SIZE > wqe.len() {
            Some(bad("WQE larger than the copy"))
        } else if qp.last_blueflame_buffer == Some(buffer) {
            Some(ModelError::BlueFlameBufferReused { qpn, buffer })
        } else {
            (0..wqe.len()).step_by(4).find_map(|offset| {
                let copied = wqe
                    .get(offset..offset + 4)
                    .and_then(|word| <[u8; 4]>::try_from(word).ok())
                    .map(u32::from_be_bytes);
                (copied != Some(qp.sq.read_word(qp.sq_consumer, offset))).then_some(
                    ModelError::BlueFlameDiffersFromRing {
                        qpn,
                        wqe: qp.sq_consumer,
                        offset,
                    },
                )
            })
        };
        qp.last_blueflame_buffer = Some(buffer);
        match error {
            Some(error) => {
                self.errors.push(error);
                None
            }
            None => Some(qpn),
        }
    }

    fn run_send_queue(&mut self, qpn: u32) -> u32 {
        let mut executed = 0;
        loop {
            let Some(qp) = self.qps.get(&qpn) else {
                return executed;
            };
            let counter = qp.sq_consumer;
            let owner = qp.sq.read_word(counter, 0) & CtrlSeg::OWNER != 0;
            if owner != lap_bit(counter, qp.sq_entries) {
                return executed;
            }
            core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
            let parsed = Self::parse_wqe(qp, qpn, counter);
            let state = qp.state;
            let send_cq = qp.send_cq;
            let wqe = match parsed {
                Ok(wqe) => wqe,
                Err(error) => {
                    self.errors.push(error);
                    self.consume_wqe(qpn, counter);
                    self.push_cqe(
                        send_cq,
                        &Self::error_cqe(qpn, counter, true, Syndrome::LocalQpOpErr),
                        false,
                    );
                    self.enter_error(qpn);
                    continue;
                }
            };
            if state == QpState::Error {
                self.consume_wqe(qpn, counter);
                self.push_cqe(
                    send_cq,
                    &Self::error_cqe(qpn, counter, true, Syndrome::WrFlushErr),
                    false,
                );
                continue;
            }
            match self.execute(qpn, &wqe) {
                Outcome::ReceiverNotReady => {
                    if let Some(qp) = self.qps.get_mut(&qpn) {
                        qp.stalled = true;
                    }
                    return executed;
                }
                Outcome::Done { byte_len } => {
                    if let Some(qp) = self.qps.get_mut(&qpn) {
                        qp.stalled = false;
                    }
                    self.consume_wqe(qpn, counter);
                    if wqe.signaled {
                        self.push_cqe(
                            send_cq,
                            &Self::send_cqe(qpn, counter, wqe.opcode, byte_len),
                            false,
                        );
                    }
                }
                Outcome::Error(syndrome) => {
                    self.consume_wqe(qpn, counter);
                    self.push_cqe(
                        send_cq,
                        &Self::error_cqe(qpn, counter, true, syndrome),
                        false,
                    );
                    self.enter_error(qpn);
                }
            }
            executed += 1;
        }
    }

    fn consume_wqe(&mut self, qpn: u32, counter: u32) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        qp.sq_consumer = counter.wrapping_add(1);
        match qp.sq.device_consume(counter) {
            Ok(()) => {}
            Err(EntryCheck::WrittenAfterHandover) => self
                .errors
                .push(ModelError::WqeWrittenAfterHandover { qpn, wqe: counter }),
            Err(EntryCheck::NotHandedOver) => self
                .errors
                .push(ModelError::WqeNotHandedOver { qpn, wqe: counter }),
        }
    }

    fn enter_error(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.state = QpState::Error;
            qp.stalled = false;
        }
    }

    /// Receive WQEs the driver has posted (per the doorbell record) and the device has
    /// not consumed; records an error if the record is impossible.
    fn posted_receives(&mut self, qpn: u32) -> u32 {
        let Some(qp) = self.qps.get(&qpn) else {
            return 0;
        };
        let record = qp.rq_doorbell.read_acquire();
        let available = record.wrapping_sub(qp.rq_consumer) & RQ_DOORBELL_MASK;
        if available > qp.rq_entries {
            self.errors
                .push(ModelError::RecvDoorbellOverrun { qpn, record });
            return 0;
        }
        available
    }

    /// Takes the next receive WQE's scatter list, if one is posted.
    fn take_receive(&mut self, qpn: u32) -> Option<(u32, Vec<ScatterEntry>)> {
        if self.posted_receives(qpn) == 0 {
            return None;
        }
        let qp = self.qps.get_mut(&qpn)?;
        let counter = qp.rq_consumer;
        qp.rq_consumer = counter.wrapping_add(1);
        // SAFETY: the doorbell record handed this WQE to the device; the driver does not
        // write it again before its CQE.
        let sges = unsafe {
            qp.rq.with_entry(counter, |entry| {
                let mut sges = Vec::new();
                for seg in entry.chunks_exact(size_of::<DataSeg>()) {
                    let Ok(seg) = DataSeg::ref_from_bytes(seg) else {
                        break;
                    };
                    if seg.lkey.get() == DataSeg::INVALID_LKEY {
                        break;
                    }
                    sges.push((seg.lkey.get(), seg.addr.get(), seg.byte_count.get()));
                }
                sges
            })
        };
        Some((counter, sges))
    }

    /// Completes every posted receive of a QP in error with a flush CQE.
    fn flush_receives(&mut self, qpn: u32) {
        let Some(qp) = self.qps.get(&qpn) else {
            return;
        };
        if qp.state != QpState::Error {
            return;
        }
        let recv_cq = qp.recv_cq;
        while let Some((counter, _)) = self.take_receive(qpn) {
            self.push_cqe(
                recv_cq,
                &Self::error_cqe(qpn, counter, false, Syndrome::WrFlushErr),
                false,
            );
        }
    }

    fn parse_wqe(qp: &ModelQp, qpn: u32, counter: u32) -> Result<ParsedWqe, ModelError> {
        let malformed = |reason| ModelError::MalformedWqe {
            qpn,
            wqe: counter,
            reason,
        };
        // SAFETY: the owner bit handed this WQE to the device, and the driver does not
        // write it before its completion (the checked ring reports it if it does).
        unsafe {
            qp.sq.with_entry(counter, |entry| {
                let (ctrl, _) =
                    CtrlSeg::ref_from_prefix(entry).map_err(|_| malformed("entry too small"))?;
                let size = ctrl.size_ds() * DS_SIZE;
                let bytes = entry
                    .get(..size)
                    .ok_or_else(|| malformed("size beyond the WQE"))?;
                if size < size_of::<CtrlSeg>() {
                    return Err(malformed("size below the control segment"));
                }
                let opcode = SendOpcode::from_bits(ctrl.opcode_bits())
                    .ok_or_else(|| malformed("unknown opcode"))?;
                let srcrb = ctrl.srcrb_flags.get();
                let mut wqe = ParsedWqe {
                    opcode,
                    signaled: srcrb & CtrlSeg::CQ_UPDATE == CtrlSeg::CQ_UPDATE,
                    solicited: srcrb & CtrlSeg::SOLICITED != 0,
                    imm: ctrl.imm.get(),
                    raddr: None,
                    atomic: None,
                    datagram: None,
                    local_inval: None,
                    fast_reg: None,
                    data: WqeData::Gather(Vec::new()),
                };
                let mut rest = &bytes[size_of::<CtrlSeg>()..];
                fn take<
                    'b,
                    T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable + Copy + 'b,
                >(
                    rest: &mut &'b [u8],
                ) -> Option<T> {
                    let (seg, tail) = T::ref_from_prefix(rest).ok()?;
                    *rest = tail;
                    Some(*seg)
                }
                let short = || malformed("segments beyond the WQE size");
                if qp.qp_type == QpType::Ud {
                    if !matches!(opcode, SendOpcode::Send | SendOpcode::SendImm) {
                        return Err(malformed("opcode not valid on UD"));
                    }
                    wqe.datagram = Some(take(&mut rest).ok_or_else(short)?);
                } else {
                    match opcode {
                        SendOpcode::RdmaWrite | SendOpcode::RdmaWriteImm | SendOpcode::RdmaRead => {
                            wqe.raddr = Some(take(&mut rest).ok_or_else(short)?);
                        }
                        SendOpcode::AtomicCmpSwap | SendOpcode::AtomicFetchAdd => {
                            wqe.raddr = Some(take(&mut rest).ok_or_else(short)?);
                            wqe.atomic = Some(take(&mut rest).ok_or_else(short)?);
                        }
                        SendOpcode::LocalInval => {
                            wqe.local_inval = Some(take(&mut rest).ok_or_else(short)?)
                        }
                        SendOpcode::FastReg => {
                            wqe.fast_reg = Some(take(&mut rest).ok_or_else(short)?)
                        }
                        SendOpcode::Send
                        | SendOpcode::SendImm
                        | SendOpcode::SendInval
                        | SendOpcode::Nop => {}
                        _ => return Err(malformed("opcode the model does not execute")),
                    }
                }
                wqe.data = Self::parse_data(
                    rest,
                    size_of::<CtrlSeg>() + (bytes.len() - size_of::<CtrlSeg>() - rest.len()),
                )
                .map_err(malformed)?;
                Ok(wqe)
            })
        }
    }

    /// Parses the data segments of a WQE: gather entries, or inline segments (each padded
    /// to 16 bytes, none crossing a 64-byte boundary).
    fn parse_data(mut rest: &[u8], start: usize) -> Result<WqeData, &'static str> {
        let mut gather = Vec::new();
        let mut inline = Vec::new();
        let mut is_inline = false;
        let mut offset = start;
        while rest.len() >= 4 {
            let word = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            if word == STAMP_WORD {
                return Err("a stamped block inside the WQE");
            }
            if word & InlineSeg::INLINE != 0 && word != DataSeg::ZERO_LENGTH {
                let len = (word & InlineSeg::LEN_MASK) as usize;
                if offset % InlineSeg::ALIGN + 4 + len > InlineSeg::ALIGN {
                    return Err("inline segment crosses a 64-byte boundary");
                }
                let data = rest
                    .get(4..4 + len)
                    .ok_or("inline data beyond the WQE size")?;
                inline.extend_from_slice(data);
                is_inline = true;
                let used = (4 + len).next_multiple_of(DS_SIZE).min(rest.len());
                rest = &rest[used..];
                offset += used;
            } else {
                let (seg, tail) = DataSeg::ref_from_prefix(rest)
                    .map_err(|_| "data segment beyond the WQE size")?;
                let count = seg.byte_count.get();
                let len = if count == DataSeg::ZERO_LENGTH {
                    0
                } else {
                    count
                };
                gather.push((seg.lkey.get(), seg.addr.get(), len));
                rest = tail;
                offset += size_of::<DataSeg>();
            }
        }
        match (is_inline, gather.is_empty()) {
            (true, false) => Err("inline and gather segments mixed"),
            (true, true) => Ok(WqeData::Inline(inline)),
            (false, _) => Ok(WqeData::Gather(gather)),
        }
    }

    /// Gathers a WQE's payload from local memory.
    fn gather(&self, data: &WqeData) -> Result<Vec<u8>, Syndrome> {
        match data {
            WqeData::Inline(bytes) => Ok(bytes.clone()),
            WqeData::Gather(sges) => {
                let mut out = Vec::new();
                for &(lkey, addr, len) in sges {
                    let bytes = self
                        .memory
                        .read_region(lkey, addr, u64::from(len), Access::empty())
                        .map_err(|_| Syndrome::LocalProtErr)?;
                    out.extend_from_slice(&bytes);
                }
                Ok(out)
            }
        }
    }

    /// Scatters `data` over local buffers that need LOCAL_WRITE.
    fn scatter(&mut self, sges: &[ScatterEntry], data: &[u8]) -> Result<(), ScatterError> {
        let capacity: u64 = sges.iter().map(|&(_, _, len)| u64::from(len)).sum();
        if (data.len() as u64) > capacity {
            return Err(ScatterError::Length);
        }
        let mut rest = data;
        for &(lkey, addr, len) in sges {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((len as usize).min(rest.len()));
            self.memory
                .write_region(lkey, addr, chunk, Access::LOCAL_WRITE)
                .map_err(|_| ScatterError::Protection)?;
            rest = tail;
        }
        Ok(())
    }

    fn execute(&mut self, qpn: u32, wqe: &ParsedWqe) -> Outcome {
        let Some(qp) = self.qps.get(&qpn) else {
            return Outcome::Error(Syndrome::LocalQpOpErr);
        };
        let qp_type = qp.qp_type;
        let peer = qp.peer;
        let rnr_retry = qp.rnr_retry;
        if qp_type == QpType::Ud {
            return self.execute_ud(qpn, wqe);
        }
        match wqe.opcode {
            SendOpcode::Nop => Outcome::Done { byte_len: 0 },
            SendOpcode::LocalInval => match wqe
                .local_inval
                .map(|seg| self.memory.invalidate(seg.mem_key.get()))
            {
                Some(Ok(())) => Outcome::Done { byte_len: 0 },
                _ => Outcome::Error(Syndrome::LocalQpOpErr),
            },
            SendOpcode::FastReg => {
                let Some(seg) = wqe.fast_reg else {
                    return Outcome::Error(Syndrome::LocalQpOpErr);
                };
                let flags = seg.flags.get();
                let mut access = Access::empty();
                for (bit, right) in [
                    (FastRegSeg::PERM_LOCAL_WRITE, Access::LOCAL_WRITE),
                    (FastRegSeg::PERM_REMOTE_READ, Access::REMOTE_READ),
                    (FastRegSeg::PERM_REMOTE_WRITE, Access::REMOTE_WRITE),
                    (FastRegSeg::PERM_ATOMIC, Access::REMOTE_ATOMIC),
                ] {
                    if flags & bit != 0 {
                        access |= right;
                    }
                }
                let page_shift = u8::try_from(seg.page_size.get()).unwrap_or(0);
                match self.memory.fast_register(
                    seg.mem_key.get(),
                    access,
                    seg.start_addr.get(),
                    seg.reg_len.get(),
                    page_shift,
                    seg.buf_list.get(),
                ) {
                    Ok(()) => Outcome::Done { byte_len: 0 },
                    Err(_) => Outcome::Error(Syndrome::LocalProtErr),
                }
            }
            SendOpcode::RdmaRead => {
                let Some(raddr) = wqe.raddr else {
                    return Outcome::Error(Syndrome::LocalQpOpErr);
                };
                let WqeData::Gather(sges) = &wqe.data else {
                    return Outcome::Error(Syndrome::LocalQpOpErr);
                };
                let len: u64 = sges.iter().map(|&(_, _, len)| u64::from(len)).sum();
                let Some(peer) = self.live_peer(peer) else {
                    return Outcome::Error(Syndrome::TransportRetryExcErr);
                };
                let data = match self.memory.read_region(
                    raddr.rkey.get(),
                    raddr.raddr.get(),
                    len,
                    Access::REMOTE_READ,
                ) {
                    Ok(data) => data,
                    Err(_) => return self.responder_fault(peer, Syndrome::RemoteAccessErr),
                };
                match self.scatter(sges, &data) {
                    Ok(()) => Outcome::Done {
                        byte_len: len as u32,
                    },
                    Err(_) => Outcome::Error(Syndrome::LocalProtErr),
                }
            }
            SendOpcode::AtomicCmpSwap | SendOpcode::AtomicFetchAdd => {
                let (Some(raddr), Some(atomic)) = (wqe.raddr, wqe.atomic) else {
                    return Outcome::Error(Syndrome::LocalQpOpErr);
                };
                let WqeData::Gather(sges) = &wqe.data else {
                    return Outcome::Error(Syndrome::LocalQpOpErr);
                };
                let Some(peer) = self.live_peer(peer) else {
                    return Outcome::Error(Syndrome::TransportRetryExcErr);
                };
                let (rkey, addr) = (raddr.rkey.get(), raddr.raddr.get());
                if addr % 8 != 0 {
                    return self.responder_fault(peer, Syndrome::RemoteInvalReqErr);
                }
                // ConnectX-3 does atomics on big-endian data (mlx5 added a host-endian
                // mode); the old value comes back big-endian too.
                let old = match self
                    .memory
                    .read_region(rkey, addr, 8, Access::REMOTE_ATOMIC)
                {
                    Ok(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().unwrap_or([0; 8])),
                    Err(_) => return self.responder_fault(peer, Syndrome::RemoteAccessErr),
                };
                let new = if wqe.opcode == SendOpcode::AtomicCmpSwap {
                    if old == atomic.compare.get() {
                        atomic.swap_add.get()
                    } else {
                        old
                    }
                } else {
                    old.wrapping_add(atomic.swap_add.get())
                };
                if self
                    .memory
                    .write_region(rkey, addr, &new.to_be_bytes(), Access::REMOTE_ATOMIC)
                    .is_err()
                {
                    return self.responder_fault(peer, Syndrome::RemoteAccessErr);
                }
                match self.scatter(sges, &old.to_be_bytes()) {
                    Ok(()) => Outcome::Done { byte_len: 8 },
                    Err(_) => Outcome::Error(Syndrome::LocalProtErr),
                }
            }
            SendOpcode::RdmaWrite
            | SendOpcode::RdmaWriteImm
            | SendOpcode::Send
            | SendOpcode::SendImm
            | SendOpcode::SendInval => {
                let Some(peer) = peer.filter(|peer| self.qps.contains_key(peer)) else {
                    return Outcome::Error(Syndrome::TransportRetryExcErr);
                };
                // A responder in error drops the request: the requester retries, then gives up.
                let Some(peer) = self.live_peer(Some(peer)) else {
                    return Outcome::Error(Syndrome::TransportRetryExcErr);
                };
                let data = match self.gather(&wqe.data) {
                    Ok(data) => data,
                    Err(syndrome) => return Outcome::Error(syndrome),
                };
                if let (Some(raddr), SendOpcode::RdmaWrite | SendOpcode::RdmaWriteImm) =
                    (wqe.raddr, wqe.opcode)
                {
                    let written = self.memory.write_region(
                        raddr.rkey.get(),
                        raddr.raddr.get(),
                        &data,
                        Access::REMOTE_WRITE,
                    );
                    if written.is_err() {
                        return self.responder_fault(peer, Syndrome::RemoteAccessErr);
                    }
                    if wqe.opcode == SendOpcode::RdmaWrite {
                        return Outcome::Done {
                            byte_len: data.len() as u32,
                        };
                    }
                }
                self.deliver_rc(qpn, peer, wqe, &data, rnr_retry)
            }
            _ => Outcome::Error(Syndrome::LocalQpOpErr),
        }
    }

    /// The peer, if it exists and can respond (a QP in error drops what it receives).
    fn live_peer(&self, peer: Option<u32>) -> Option<u32> {
        peer.filter(|peer| {
            self.qps
                .get(peer)
                .is_some_and(|qp| qp.state == QpState::Rts)
        })
    }

    /// A request the responder refuses (an R_Key violation, a misaligned atomic): the
    /// responder's QP goes to error too (IBA 9.9.3, responder class C errors), flushing
    /// its receives, and the requester gets `syndrome`.
    fn responder_fault(&mut self, responder: u32, syndrome: Syndrome) -> Outcome {
        self.enter_error(responder);
        Outcome::Error(syndrome)
    }

    /// Delivers a send (or the receive side of a write with immediate) to the responder.
    fn deliver_rc(
        &mut self,
        qpn: u32,
        peer: u32,
        wqe: &ParsedWqe,
        data: &[u8],
        rnr_retry: u8,
    ) -> Outcome {
        let Some((counter, sges)) = self.take_receive(peer) else {
            return if rnr_retry == 7 {
                Outcome::ReceiverNotReady
            } else {
                Outcome::Error(Syndrome::RnrRetryExcErr)
            };
        };
        let Some(recv_cq) = self.qps.get(&peer).map(|qp| qp.recv_cq) else {
            return Outcome::Error(Syndrome::RemoteOpErr);
        };
        let opcode = match wqe.opcode {
            SendOpcode::RdmaWriteImm => RecvOpcode::RdmaWriteImm,
            SendOpcode::SendImm => RecvOpcode::SendImm,
            SendOpcode::SendInval => RecvOpcode::SendInval,
            _ => RecvOpcode::Send,
        };
        let scattered = if opcode == RecvOpcode::RdmaWriteImm {
            Ok(())
        } else {
            self.scatter(&sges, data)
        };
        if let Err(error) = scattered {
            let (local, remote) = match error {
                ScatterError::Length => (Syndrome::LocalLengthErr, Syndrome::RemoteInvalReqErr),
                ScatterError::Protection => (Syndrome::LocalProtErr, Syndrome::RemoteOpErr),
            };
            self.push_cqe(
                recv_cq,
                &Self::error_cqe(peer, counter, false, local),
                false,
            );
            self.enter_error(peer);
            return Outcome::Error(remote);
        }
        if opcode == RecvOpcode::SendInval && self.memory.invalidate(wqe.imm).is_err() {
            self.push_cqe(
                recv_cq,
                &Self::error_cqe(peer, counter, false, Syndrome::LocalQpOpErr),
                false,
            );
            self.enter_error(peer);
            return Outcome::Error(Syndrome::RemoteOpErr);
        }
        let mut cqe = Cqe::new_zeroed();
        cqe.vlan_my_qpn = Be32::new(peer);
        cqe.immed_rss_invalid = Be32::new(wqe.imm);
        cqe.g_mlpath_rqpn = Be32::new(qpn);
        cqe.byte_cnt = Be32::new(data.len() as u32);
        cqe.wqe_index = Be16::new(counter as u16);
        cqe.owner_sr_opcode = opcode as u8;
        let mut bytes = [0; CQE_SIZE];
        bytes.copy_from_slice(cqe.as_bytes());
        self.push_cqe(recv_cq, &bytes, wqe.solicited);
        Outcome::Done { byte_len: 0 }
    }

    /// A UD send: delivered if the destination QP exists, takes the qkey and has a
    /// receive posted; silently dropped otherwise, as on the wire.
    fn execute_ud(&mut self, qpn: u32, wqe: &ParsedWqe) -> Outcome {
        let Some(datagram) = wqe.datagram else {
            return Outcome::Error(Syndrome::LocalQpOpErr);
        };
        let data = match self.gather(&wqe.data) {
            Ok(data) => data,
            Err(syndrome) => return Outcome::Error(syndrome),
        };
        let dest = datagram.dqpn.get() & Cqe::QPN_MASK;
        let deliver = self.qps.get(&dest).is_some_and(|qp| {
            qp.qp_type == QpType::Ud && qp.state == QpState::Rts && qp.qkey == datagram.qkey.get()
        });
        if !deliver {
            return Outcome::Done { byte_len: 0 };
        }
        let Some((counter, sges)) = self.take_receive(dest) else {
            return Outcome::Done { byte_len: 0 };
        };
        let Some(recv_cq) = self.qps.get(&dest).map(|qp| qp.recv_cq) else {
            return Outcome::Done { byte_len: 0 };
        };
        // A UD receive starts with the 40-byte GRH slot; with a GRH (always on RoCE) the
        // device fills it: version 6, the traffic class and flow label, the GIDs.
        let grh = datagram.av.has_grh();
        let mut message = alloc::vec![0u8; 40];
        if grh {
            let tclass_flow = datagram.av.sl_tclass_flowlabel.get() & 0x0fff_ffff;
            message[..4].copy_from_slice(&(6 << 28 | tclass_flow).to_be_bytes());
            message[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
            message[6] = 0x1b;
            message[7] = datagram.av.hop_limit;
            message[24..40].copy_from_slice(&datagram.av.dgid);
        }
        message.extend_from_slice(&data);
        if self.scatter(&sges, &message).is_err() {
            self.push_cqe(
                recv_cq,
                &Self::error_cqe(dest, counter, false, Syndrome::LocalLengthErr),
                false,
            );
            return Outcome::Done { byte_len: 0 };
        }
        let mut cqe = Cqe::new_zeroed();
        cqe.vlan_my_qpn = Be32::new(dest);
        cqe.immed_rss_invalid = Be32::new(wqe.imm);
        cqe.g_mlpath_rqpn = Be32::new(qpn | if grh { Cqe::GRH } else { 0 });
        cqe.byte_cnt = Be32::new(message.len() as u32);
        cqe.wqe_index = Be16::new(counter as u16);
        let opcode = if wqe.opcode == SendOpcode::SendImm {
            RecvOpcode::SendImm
        } else {
            RecvOpcode::Send
        };
        cqe.owner_sr_opcode = opcode as u8;
        let mut bytes = [0; CQE_SIZE];
        bytes.copy_from_slice(cqe.as_bytes());
        self.push_cqe(recv_cq, &bytes, wqe.solicited);
        Outcome::Done { byte_len: 0 }
    }
}
