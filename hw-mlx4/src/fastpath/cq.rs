//! `poll_cq` and `req_notify_cq`.
//!
//! Polling follows the kernel's `mlx4_ib_poll_one` and rdma-core's `mlx4_poll_one`: the
//! CQE at the consumer index belongs to software when its owner bit equals the lap bit
//! of the index; only after that check (and `dma_rmb`) is the rest of the CQE read. The
//! consumer index goes back to the device through the doorbell record once per call.
//! Arming writes the arm word to the record, then (after `wmb`) the 64-bit CQ doorbell,
//! with the arm sequence number that counts completion events (`mlx4_cq_arm`).

use super::platform::{DmaRing, DoorbellRecord, Platform, UarPage};
use super::qp::{QpCompletions, QpLookup};
use super::send::QueueConfigError;
use super::wr::{Completion, WcFlags, WcOpcode, WcStatus};
use crate::wire::{
    ArmCommand, CqDoorbell, CqDoorbellRecord, Cqe, CqeStride, ErrorCqe, RecvOpcode, SendOpcode,
    Syndrome, CQE_SIZE,
};
use zerocopy::FromBytes;

/// Why polling stopped early. The completions before it are in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollError {
    /// Completions written to the output before the bad CQE.
    pub polled: usize,
    /// What was wrong with the CQE.
    pub kind: PollErrorKind,
}

/// A CQE the driver cannot account for: a device fault or a driver bug. The CQE is
/// consumed, so the CQ stays usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollErrorKind {
    /// The CQE names a QP this CQ does not serve.
    UnknownQpn(u32),
    /// The CQE names a WQE the QP has not posted.
    BadWqeIndex {
        /// The QP the CQE names.
        qpn: u32,
        /// Whether the CQE completes a send queue WQE.
        is_send: bool,
        /// The WQE counter in the CQE.
        wqe_index: u16,
    },
}

/// The CQ's two doorbell records.
pub struct CqDoorbells<P: Platform> {
    /// The consumer-index record (`cq->set_ci_db`).
    pub set_ci: P::DbRecord,
    /// The arm record (`cq->arm_db`).
    pub arm: P::DbRecord,
}

/// The consuming side of a CQ.
pub struct CompletionQueue<P: Platform> {
    ring: P::Ring,
    doorbells: CqDoorbells<P>,
    cqn: u32,
    entries: u32,
    stride: CqeStride,
    cons_index: u32,
    arm_sn: u32,
}

impl<P: Platform> CompletionQueue<P> {
    /// Sets up a CQ over `ring` and gives every entry to the device (owner bit set, as
    /// `mlx4_en_activate_rx_rings` does), since the device writes lap 0 with it clear.
    pub fn new(
        cqn: u32,
        ring: P::Ring,
        doorbells: CqDoorbells<P>,
    ) -> Result<Self, QueueConfigError> {
        let stride = match ring.entry_shift() {
            5 => CqeStride::Bytes32,
            6 => CqeStride::Bytes64,
            _ => return Err(QueueConfigError::EntrySize),
        };
        if ring.log_entries() > 22 {
            return Err(QueueConfigError::TooFewEntries);
        }
        let entries = 1u32 << ring.log_entries();
        for index in 0..entries {
            // SAFETY: the device does not know the CQ yet.
            unsafe { ring.with_entry_mut(index, |entry| entry.fill(0)) };
            ring.write_word(index, stride.owner_word_offset(), u32::from(Cqe::OWNER));
        }
        doorbells.set_ci.write_release(0);
        doorbells.arm.write_release(0);
        Ok(Self {
            ring,
            doorbells,
            cqn,
            entries,
            stride,
            cons_index: 0,
            // The arm sequence number starts at 1, as `mlx4_cq_alloc` sets it.
            arm_sn: 1,
        })
    }

    /// The CQ number.
    pub fn cqn(&self) -> u32 {
        self.cqn
    }

    /// The number of entries in the ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The consumer index: counter of the next CQE to poll.
    pub fn cons_index(&self) -> u32 {
        self.cons_index
    }

    /// The ring of CQEs.
    pub fn ring(&self) -> &P::Ring {
        &self.ring
    }

    /// The consumer-index and arm records, as the device reads them.
    pub fn doorbells(&self) -> &CqDoorbells<P> {
        &self.doorbells
    }

    /// Polls up to `out.len()` completions into `out`, returning how many.
    ///
    /// One function, never inlined into its caller: the driver reaches it through the
    /// device's ops table anyway, and `cargo xtask test` compares its machine code
    /// between kernel builds.
    #[inline(never)]
    pub fn poll<'t, L>(&mut self, qps: &L, out: &mut [Completion]) -> Result<usize, PollError>
    where
        L: QpLookup<'t, P> + ?Sized,
        P: 't,
    {
        let start = self.cons_index;
        let mut polled = 0;
        let mut error = None;
        for slot in out.iter_mut() {
            let index = self.cons_index;
            let owner_byte = self.ring.read_word(index, self.stride.owner_word_offset()) as u8;
            if (owner_byte & Cqe::OWNER != 0) != Cqe::sw_owner_bit(index, self.entries) {
                break;
            }
            // A resize is under way: the CQEs after this one are in the new ring, which
            // `resize` moves to (it finds this CQE, so it stays unconsumed).
            if owner_byte & Cqe::OPCODE_MASK == Cqe::OPCODE_RESIZE {
                break;
            }
            // The rest of the CQE only after its owner bit.
            P::dma_rmb();
            self.cons_index = index.wrapping_add(1);
            let offset = self.stride.cqe_offset();
            // SAFETY: the owner bit gave this CQE to software, and the device will not
            // write it again until the consumer index we publish below has passed it. The
            // CQE is copied out, so nothing else (the caller's lookup included) runs while
            // the entry is borrowed.
            let cqe = unsafe {
                self.ring.with_entry(index, |entry| {
                    entry
                        .get(offset..offset + CQE_SIZE)
                        .and_then(|bytes| <[u8; CQE_SIZE]>::try_from(bytes).ok())
                })
            };
            let parsed = cqe.map(|bytes| parse_cqe(&bytes, qps));
            match parsed {
                Some(Ok(completion)) => {
                    *slot = completion;
                    polled += 1;
                }
                Some(Err(kind)) => {
                    error = Some(kind);
                    break;
                }
                None => break,
            }
        }
        if self.cons_index != start {
            self.doorbells
                .set_ci
                .write_release(self.cons_index & CqDoorbell::CI_MASK);
        }
        match error {
            Some(kind) => Err(PollError { polled, kind }),
            None => Ok(polled),
        }
    }

    /// Asks for an event on the next completion, or the next solicited one
    /// (`ib_req_notify_cq`).
    ///
    /// One function, never inlined into its caller: the driver reaches it through the
    /// device's ops table anyway, and `cargo xtask test` compares its machine code
    /// between kernel builds.
    #[inline(never)]
    pub fn arm(&mut self, uar: &P::Uar, command: ArmCommand) {
        let ci = self.cons_index;
        self.doorbells
            .arm
            .write_release(CqDoorbellRecord::arm_word(self.arm_sn, command, ci));
        // The record before the doorbell that makes the device read it.
        P::wmb();
        uar.ring_cq_doorbell(CqDoorbell::new(self.arm_sn, command, self.cqn, ci));
    }

    /// Moves to `ring` after the device resized the CQ (`mlx4_ib_cq_resize_copy_cqes`):
    /// the CQEs not yet polled, up to the RESIZE CQE the device wrote after them into the
    /// old ring, are copied into `ring`, each one index later (the RESIZE CQE takes an
    /// index), with the owner bit the new size gives that index; then the consumer index
    /// steps past the RESIZE CQE and polls go on in `ring`, where the device writes the
    /// next CQEs. Returns the old ring; or gives `ring` back, the CQ unchanged, if its
    /// stride differs or the old ring holds no RESIZE CQE (the device did not resize).
    ///
    /// The caller excludes polling while it runs (the CQ's lock), as `mlx4_ib_resize_cq`
    /// does.
    pub fn resize(&mut self, ring: P::Ring) -> Result<P::Ring, P::Ring> {
        if ring.entry_shift() != self.ring.entry_shift() || ring.log_entries() > 22 {
            return Err(ring);
        }
        let new_entries = 1u32 << ring.log_entries();
        let offset = self.stride.cqe_offset();
        let owner_word = self.stride.owner_word_offset();
        // First find the RESIZE CQE: nothing is written before the resize is certain.
        let mut end = None;
        let mut index = self.cons_index;
        for _ in 0..self.entries {
            let word = self.ring.read_word(index, owner_word);
            let owner = word as u8 & Cqe::OWNER != 0;
            if owner != Cqe::sw_owner_bit(index, self.entries) {
                break;
            }
            P::dma_rmb();
            if (word as u8 & Cqe::OPCODE_MASK) == Cqe::OPCODE_RESIZE {
                end = Some(index);
                break;
            }
            index = index.wrapping_add(1);
        }
        let Some(end) = end else {
            return Err(ring);
        };
        if end.wrapping_sub(self.cons_index) >= new_entries {
            return Err(ring);
        }
        let mut index = self.cons_index;
        while index != end {
            let target = index.wrapping_add(1);
            // SAFETY: the owner bits above gave these CQEs of the old ring to software,
            // and the device writes only the new ring now, from `end + 1` on: the
            // target entries `cons_index + 1 ..= end` are the driver's.
            let copied = unsafe {
                self.ring.with_entry(index, |from| {
                    from.get(offset..offset + CQE_SIZE)
                        .and_then(|bytes| <[u8; CQE_SIZE]>::try_from(bytes).ok())
                })
            };
            if let Some(mut cqe) = copied {
                let owner = if Cqe::sw_owner_bit(target, new_entries) {
                    Cqe::OWNER
                } else {
                    0
                };
                if let Some(last) = cqe.last_mut() {
                    *last = (*last & !Cqe::OWNER) | owner;
                }
                // SAFETY: as above.
                unsafe {
                    ring.with_entry_mut(target, |to| {
                        if let Some(slot) = to.get_mut(offset..offset + CQE_SIZE) {
                            slot.copy_from_slice(&cqe);
                        }
                    })
                };
            }
            index = target;
        }
        self.cons_index = self.cons_index.wrapping_add(1);
        self.entries = new_entries;
        Ok(core::mem::replace(&mut self.ring, ring))
    }

    /// Records that the device delivered a completion event for this CQ, so the next arm
    /// carries the next sequence number (`mlx4_cq_completion`).
    pub fn event_delivered(&mut self) {
        self.arm_sn = self.arm_sn.wrapping_add(1);
    }
}

/// One CQE as a completion, with the opcodes and byte counts `mlx4_ib_poll_one` reports
/// (and BIND_MW as rdma-core's provider reports it).
fn parse_cqe<'t, P: Platform + 't, L: QpLookup<'t, P> + ?Sized>(
    bytes: &[u8],
    qps: &L,
) -> Result<Completion, PollErrorKind> {
    let Ok(cqe) = Cqe::ref_from_bytes(bytes) else {
        return Err(PollErrorKind::UnknownQpn(0));
    };
    let qpn = cqe.qpn();
    let qp: QpCompletions<'t, P> = qps.lookup(qpn).ok_or(PollErrorKind::UnknownQpn(qpn))?;
    let is_send = cqe.is_send();
    let wqe_index = cqe.wqe_index.get();
    let wr_id = if is_send {
        qp.sq.complete(wqe_index)
    } else {
        qp.rq.complete()
    };
    let wr_id = wr_id.ok_or(PollErrorKind::BadWqeIndex {
        qpn,
        is_send,
        wqe_index,
    })?;
    let mut completion = Completion {
        wr_id,
        qpn,
        ..Completion::EMPTY
    };
    if cqe.is_error() {
        let error = ErrorCqe::ref_from_bytes(bytes).map_err(|_| PollErrorKind::UnknownQpn(qpn))?;
        completion.status = status_of(error.syndrome);
        completion.vendor_err = error.vendor_err;
        completion.opcode = if is_send {
            WcOpcode::Send
        } else {
            WcOpcode::Recv
        };
        return Ok(completion);
    }
    completion.status = WcStatus::Success;
    if is_send {
        let (opcode, byte_len) = match SendOpcode::from_bits(cqe.opcode_bits()) {
            Some(SendOpcode::RdmaWrite | SendOpcode::RdmaWriteImm) => (WcOpcode::RdmaWrite, 0),
            Some(SendOpcode::RdmaRead) => (WcOpcode::RdmaRead, cqe.byte_cnt.get()),
            Some(SendOpcode::AtomicCmpSwap) => (WcOpcode::CompSwap, 8),
            Some(SendOpcode::AtomicFetchAdd) => (WcOpcode::FetchAdd, 8),
            Some(SendOpcode::MaskedAtomicCmpSwap) => (WcOpcode::MaskedCompSwap, 8),
            Some(SendOpcode::MaskedAtomicFetchAdd) => (WcOpcode::MaskedFetchAdd, 8),
            Some(SendOpcode::Lso) => (WcOpcode::Lso, 0),
            Some(SendOpcode::LocalInval) => (WcOpcode::LocalInvalidate, 0),
            Some(SendOpcode::FastReg) => (WcOpcode::RegMr, 0),
            Some(SendOpcode::BindMw) => (WcOpcode::BindMw, 0),
            _ => (WcOpcode::Send, 0),
        };
        completion.opcode = opcode;
        completion.byte_len = byte_len;
        let with_imm = matches!(
            SendOpcode::from_bits(cqe.opcode_bits()),
            Some(SendOpcode::SendImm | SendOpcode::RdmaWriteImm)
        );
        if with_imm {
            completion.flags = WcFlags::WITH_IMM;
        }
    } else {
        completion.byte_len = cqe.byte_cnt.get();
        completion.src_qp = cqe.remote_qpn();
        // As `mlx4_ib_poll_one` reads them on an InfiniBand port.
        completion.slid = cqe.rlid.get();
        completion.sl = (cqe.sl_vid.get() >> 12) as u8;
        completion.dlid_path_bits = ((cqe.g_mlpath_rqpn.get() >> 24) & 0x7f) as u8;
        completion.pkey_index = (cqe.immed_rss_invalid.get() & 0x7f) as u16;
        let mut flags = if cqe.g_mlpath_rqpn.get() & Cqe::GRH != 0 {
            WcFlags::GRH
        } else {
            WcFlags::empty()
        };
        completion.opcode = WcOpcode::Recv;
        match RecvOpcode::from_bits(cqe.opcode_bits()) {
            Some(RecvOpcode::RdmaWriteImm) => {
                completion.opcode = WcOpcode::RecvRdmaWithImm;
                flags |= WcFlags::WITH_IMM;
                completion.imm = cqe.immed_rss_invalid.get();
            }
            Some(RecvOpcode::SendImm) => {
                flags |= WcFlags::WITH_IMM;
                completion.imm = cqe.immed_rss_invalid.get();
            }
            Some(RecvOpcode::SendInval) => {
                flags |= WcFlags::WITH_INVALIDATE;
                completion.imm = cqe.immed_rss_invalid.get();
            }
            Some(RecvOpcode::Send) | None => {}
        }
        completion.flags = flags;
    }
    Ok(completion)
}

/// The kernel's meaning of each syndrome (`mlx4_ib_handle_error_cqe`).
#[inline]
pub fn status_of(syndrome: u8) -> WcStatus {
    match Syndrome::from_bits(syndrome) {
        Some(Syndrome::LocalLengthErr) => WcStatus::LocalLengthError,
        Some(Syndrome::LocalQpOpErr) => WcStatus::LocalQpOperationError,
        Some(Syndrome::LocalProtErr) => WcStatus::LocalProtectionError,
        Some(Syndrome::WrFlushErr) => WcStatus::WrFlushError,
        Some(Syndrome::MwBindErr) => WcStatus::MwBindError,
        Some(Syndrome::BadRespErr) => WcStatus::BadResponseError,
        Some(Syndrome::LocalAccessErr) => WcStatus::LocalAccessError,
        Some(Syndrome::RemoteInvalReqErr) => WcStatus::RemoteInvalidRequestError,
        Some(Syndrome::RemoteAccessErr) => WcStatus::RemoteAccessError,
        Some(Syndrome::RemoteOpErr) => WcStatus::RemoteOperationError,
        Some(Syndrome::TransportRetryExcErr) => WcStatus::RetryExceededError,
        Some(Syndrome::RnrRetryExcErr) => WcStatus::RnrRetryExceededError,
        Some(Syndrome::RemoteAbortedErr) => WcStatus::RemoteAbortError,
        None => WcStatus::GeneralError,
    }
}
