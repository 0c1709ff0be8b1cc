//! What an iSER datamover does with one SCSI command, decided without touching a device:
//! which of its data the command's own PDUs carry (immediate data, unsolicited Data-Out)
//! and which the target moves by RDMA on a registered region, under which STag and at
//! which address.
//!
//! The kernel transport (`kmod/iser.rs`) asks [`CommandPlan::new`] for each command
//! libiscsi hands it and does what the plan says; the rules live here, where host tests
//! cover them. They are RFC 7145's, as Linux's ib_iser applies them: a read registers the
//! whole buffer for the target's RDMA WRITE; a write registers it for the target's RDMA
//! READ only if the command does not send all of it itself, and the write STag's address
//! then points past what the command sent (immediate data and the first burst's
//! unsolicited Data-Out).

use crate::wire::Stag;

/// The command as libiscsi prepared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandShape {
    /// The command reads (Data-In): the target writes the buffer.
    pub read: bool,
    /// The command writes (Data-Out): the target reads the buffer.
    pub write: bool,
    /// The command's data buffer, in bytes (the SCSI expected transfer length).
    pub buffer_len: usize,
    /// Immediate data libiscsi counted for the command PDU.
    pub immediate: usize,
    /// Unsolicited Data-Out bytes after the immediate data (InitialR2T=No), for a write.
    pub unsolicited: usize,
    /// The largest data segment one PDU may carry (the target's
    /// MaxRecvDataSegmentLength, as the initiator clamps it).
    pub max_data_segment: usize,
    /// The most data one of our SENDs can carry.
    pub send_capacity: usize,
}

/// The target's RDMA a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetRdma {
    /// A read: the target RDMA WRITEs the whole buffer (the read STag).
    Writes,
    /// A write: the target RDMA READs the buffer from `offset` on (the write STag, its
    /// address advanced by `offset`).
    Reads {
        /// The bytes the command sent itself.
        offset: usize,
    },
}

/// How a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandPlan {
    /// Bytes of immediate data in the command's SEND.
    pub immediate: usize,
    /// Unsolicited Data-Out PDUs that follow it (each its own SEND).
    pub data_out_pdus: usize,
    /// The registration the target's RDMA needs; `None` when the command carries all its
    /// data itself, or has none.
    pub rdma: Option<TargetRdma>,
}

/// Why a command cannot be sent as prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Both directions at once (bidirectional commands are not supported).
    Bidirectional,
    /// More immediate data than one SEND carries, or than the buffer holds.
    ImmediateTooLong,
    /// Unsolicited data beyond the buffer, or with no data segment size to cut it by.
    UnsolicitedOutOfRange,
}

impl CommandPlan {
    /// The plan for `shape`.
    pub fn new(shape: &CommandShape) -> Result<Self, PlanError> {
        if shape.read && shape.write {
            return Err(PlanError::Bidirectional);
        }
        let immediate = if shape.write { shape.immediate } else { 0 };
        if immediate > shape.send_capacity || immediate > shape.buffer_len {
            return Err(PlanError::ImmediateTooLong);
        }
        // libiscsi resets the unsolicited sequence for writes only: another command's
        // count may be left on a task.
        let unsolicited = if shape.write { shape.unsolicited } else { 0 };
        let sent = immediate
            .checked_add(unsolicited)
            .filter(|sent| *sent <= shape.buffer_len)
            .ok_or(PlanError::UnsolicitedOutOfRange)?;
        if unsolicited > 0 && shape.max_data_segment == 0 {
            return Err(PlanError::UnsolicitedOutOfRange);
        }
        let data_out_pdus = unsolicited.div_ceil(shape.max_data_segment.max(1));
        let rdma = if shape.buffer_len == 0 {
            None
        } else if shape.read {
            Some(TargetRdma::Writes)
        } else if shape.write && shape.buffer_len > sent {
            Some(TargetRdma::Reads { offset: sent })
        } else {
            None
        };
        Ok(Self {
            immediate,
            data_out_pdus,
            rdma,
        })
    }

    /// The iSER header's write and read STags for a region registered under `key` with
    /// the buffer at `va`.
    pub fn stags(&self, key: u32, va: u64) -> (Option<Stag>, Option<Stag>) {
        match self.rdma {
            Some(TargetRdma::Writes) => (None, Some(Stag { stag: key, va })),
            Some(TargetRdma::Reads { offset }) => (
                Some(Stag {
                    stag: key,
                    va: va.wrapping_add(offset as u64),
                }),
                None,
            ),
            None => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    fn write(buffer_len: usize, immediate: usize, unsolicited: usize) -> CommandShape {
        CommandShape {
            read: false,
            write: true,
            buffer_len,
            immediate,
            unsolicited,
            max_data_segment: 8 * K,
            send_capacity: 8 * K,
        }
    }

    fn read(buffer_len: usize) -> CommandShape {
        CommandShape {
            read: true,
            write: false,
            buffer_len,
            immediate: 0,
            unsolicited: 0,
            max_data_segment: 8 * K,
            send_capacity: 8 * K,
        }
    }

    #[test]
    fn a_read_registers_the_whole_buffer_for_the_targets_write() {
        let plan = CommandPlan::new(&read(128 * K)).unwrap();
        assert_eq!(plan.rdma, Some(TargetRdma::Writes));
        assert_eq!(plan.immediate, 0);
        assert_eq!(plan.data_out_pdus, 0);
        assert_eq!(
            plan.stags(0x1234, 0x10_0000),
            (
                None,
                Some(Stag {
                    stag: 0x1234,
                    va: 0x10_0000
                })
            )
        );
    }

    #[test]
    fn a_write_sent_whole_as_immediate_data_registers_nothing() {
        let plan = CommandPlan::new(&write(4 * K, 4 * K, 0)).unwrap();
        assert_eq!(plan.rdma, None);
        assert_eq!(plan.immediate, 4 * K);
        assert_eq!(plan.stags(1, 2), (None, None));
    }

    #[test]
    fn the_write_stag_points_past_immediate_data() {
        // InitialR2T=Yes: only immediate data goes unsolicited.
        let plan = CommandPlan::new(&write(128 * K, 8 * K, 0)).unwrap();
        assert_eq!(plan.rdma, Some(TargetRdma::Reads { offset: 8 * K }));
        assert_eq!(
            plan.stags(7, 0x1000).0,
            Some(Stag {
                stag: 7,
                va: 0x1000 + 8 * K as u64
            })
        );
    }

    #[test]
    fn the_write_stag_points_past_the_whole_first_burst() {
        // InitialR2T=No, FirstBurstLength 64 KiB: 8 KiB immediate, 56 KiB in 7 Data-Outs.
        let plan = CommandPlan::new(&write(128 * K, 8 * K, 56 * K)).unwrap();
        assert_eq!(plan.data_out_pdus, 7);
        assert_eq!(plan.rdma, Some(TargetRdma::Reads { offset: 64 * K }));
        // A first burst that covers the buffer leaves the target nothing to read.
        let plan = CommandPlan::new(&write(64 * K, 8 * K, 56 * K)).unwrap();
        assert_eq!(plan.rdma, None);
        // A short last PDU still counts.
        let plan = CommandPlan::new(&write(32 * K, 8 * K, 10 * K)).unwrap();
        assert_eq!(plan.data_out_pdus, 2);
    }

    #[test]
    fn a_read_ignores_a_stale_unsolicited_count() {
        let mut shape = read(16 * K);
        shape.unsolicited = 56 * K;
        shape.immediate = 8 * K;
        let plan = CommandPlan::new(&shape).unwrap();
        assert_eq!(plan.data_out_pdus, 0);
        assert_eq!(plan.immediate, 0);
        assert_eq!(plan.rdma, Some(TargetRdma::Writes));
    }

    #[test]
    fn commands_without_data_register_nothing() {
        for shape in [read(0), write(0, 0, 0)] {
            assert_eq!(
                CommandPlan::new(&shape).unwrap(),
                CommandPlan {
                    immediate: 0,
                    data_out_pdus: 0,
                    rdma: None
                }
            );
        }
        let none = CommandShape {
            read: false,
            write: false,
            ..read(0)
        };
        assert_eq!(CommandPlan::new(&none).unwrap().rdma, None);
    }

    #[test]
    fn impossible_shapes_are_errors() {
        let bidi = CommandShape {
            write: true,
            ..read(4 * K)
        };
        assert_eq!(CommandPlan::new(&bidi), Err(PlanError::Bidirectional));
        assert_eq!(
            CommandPlan::new(&write(64 * K, 16 * K, 0)),
            Err(PlanError::ImmediateTooLong)
        );
        assert_eq!(
            CommandPlan::new(&write(4 * K, 8 * K, 0)),
            Err(PlanError::ImmediateTooLong)
        );
        assert_eq!(
            CommandPlan::new(&write(16 * K, 8 * K, 16 * K)),
            Err(PlanError::UnsolicitedOutOfRange)
        );
        assert_eq!(
            CommandPlan::new(&write(16 * K, 8 * K, usize::MAX)),
            Err(PlanError::UnsolicitedOutOfRange)
        );
        let no_segment = CommandShape {
            max_data_segment: 0,
            ..write(64 * K, 0, 8 * K)
        };
        assert_eq!(
            CommandPlan::new(&no_segment),
            Err(PlanError::UnsolicitedOutOfRange)
        );
    }
}
