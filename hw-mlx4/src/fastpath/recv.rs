//! `post_recv`: receive WQEs are scatter lists; the device learns of them from the
//! doorbell record, which holds the low 16 bits of the producer counter
//! (`mlx4_ib_post_recv`, rdma-core `mlx4_post_recv`).

use super::platform::{DmaRing, DoorbellRecord, Platform, SharedCounter, WrIdSlot};
use super::send::QueueConfigError;
use super::wr::{PostError, PostFailure, RecvWr};
use crate::wire::{Be32, Be64, DataSeg, RQ_DOORBELL_MASK};
use zerocopy::FromBytes;

/// The part of a receive queue that the poster and the completer share.
pub struct RecvQueueState<P: Platform> {
    ring: P::Ring,
    wr_ids: P::WrIdTable,
    /// The record holding the producer counter for the device.
    doorbell: P::DbRecord,
    tail: P::Counter,
    /// Counter after the newest WQE handed to the device.
    posted: P::Counter,
    wqe_cnt: u32,
    max_sge: u32,
}

impl<P: Platform> RecvQueueState<P> {
    /// Sets up a receive queue whose entries hold `entry size / 16` scatter elements.
    pub fn new(
        ring: P::Ring,
        wr_ids: P::WrIdTable,
        doorbell: P::DbRecord,
    ) -> Result<Self, QueueConfigError> {
        let shift = ring.entry_shift();
        // The doorbell record carries 16 bits of the producer counter, so fewer than 2^16
        // WQEs may be outstanding; mlx4 itself stops well below (`max_wqes`).
        if !(4..=10).contains(&shift) || ring.log_entries() > 15 {
            return Err(QueueConfigError::EntrySize);
        }
        let wqe_cnt = 1u32 << ring.log_entries();
        if wr_ids.as_ref().len() != wqe_cnt as usize {
            return Err(QueueConfigError::WrIdTableSize);
        }
        let max_sge = (1u32 << shift) / size_of::<DataSeg>() as u32;
        doorbell.write_release(0);
        Ok(Self {
            ring,
            wr_ids,
            doorbell,
            tail: P::Counter::new(0),
            posted: P::Counter::new(0),
            wqe_cnt,
            max_sge,
        })
    }

    /// The number of WQEs in the ring.
    pub fn entries(&self) -> u32 {
        self.wqe_cnt
    }

    /// Scatter elements per WQE.
    pub fn max_sge(&self) -> u32 {
        self.max_sge
    }

    /// The ring of receive WQEs.
    pub fn ring(&self) -> &P::Ring {
        &self.ring
    }

    /// Counter of the oldest WQE not yet completed.
    pub fn tail(&self) -> u32 {
        self.tail.load_acquire()
    }

    /// The doorbell record, holding the low 16 bits of the producer counter.
    pub fn doorbell(&self) -> &P::DbRecord {
        &self.doorbell
    }

    /// Completes the oldest receive WQE (receives complete in order) and returns its
    /// wr_id; `None` if the device reports one more than was posted to it.
    /// WQEs posted and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.posted
            .load_acquire()
            .wrapping_sub(self.tail.load_acquire())
    }

    pub(crate) fn complete(&self) -> Option<u64> {
        take_oldest::<P>(&self.tail, &self.posted, &self.wr_ids, self.wqe_cnt)
    }
}

/// The posting side of a receive queue.
pub struct RecvQueue<'q, P: Platform> {
    state: &'q RecvQueueState<P>,
    head: u32,
}

impl<'q, P: Platform> RecvQueue<'q, P> {
    /// Resumes where the last poster of this queue stopped.
    pub(crate) fn new(state: &'q RecvQueueState<P>) -> Self {
        Self {
            state,
            head: state.posted.load_acquire(),
        }
    }

    /// Counter of the next WQE to post.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Posts `wrs` in order and updates the doorbell record once.
    ///
    /// One function, never inlined into its caller: the driver reaches it through the
    /// device's ops table anyway, and `cargo xtask test` compares its machine code
    /// between kernel builds.
    #[inline(never)]
    pub fn post(&mut self, wrs: &[RecvWr<'_>]) -> Result<(), PostFailure> {
        let state = self.state;
        let tail = state.tail.load_acquire();
        let mut index = self.head;
        let mut result = Ok(());
        for (i, wr) in wrs.iter().enumerate() {
            let error = if index.wrapping_sub(tail) >= state.wqe_cnt {
                Some(PostError::QueueFull)
            } else if wr.sges.len() > state.max_sge as usize {
                Some(PostError::TooManySges)
            } else {
                None
            };
            if let Some(error) = error {
                result = Err(PostFailure { index: i, error });
                break;
            }
            // SAFETY: `index - tail < wqe_cnt`: the device consumed this entry's previous
            // WQE (its CQE was polled) and will not read it before the doorbell record
            // below names it; `&mut self` makes this the only producer.
            unsafe {
                state.ring.with_entry_mut(index, |wqe| {
                    let (segs, _) =
                        <[DataSeg]>::mut_from_prefix_with_elems(wqe, state.max_sge as usize)
                            .ok()?;
                    let mut segs = segs.iter_mut();
                    for (seg, sge) in segs.by_ref().zip(wr.sges.iter()) {
                        *seg = DataSeg {
                            byte_count: Be32::new(sge.length),
                            lkey: Be32::new(sge.lkey),
                            addr: Be64::new(sge.addr),
                        };
                    }
                    if let Some(end) = segs.next() {
                        *end = DataSeg {
                            byte_count: Be32::new(0),
                            lkey: Be32::new(DataSeg::INVALID_LKEY),
                            addr: Be64::new(0),
                        };
                    }
                    Some(())
                })
            };
            if let Some(slot) = state
                .wr_ids
                .as_ref()
                .get((index & state.wqe_cnt.wrapping_sub(1)) as usize)
            {
                slot.set(wr.wr_id);
            }
            index = index.wrapping_add(1);
        }
        if index != self.head {
            self.head = index;
            state.posted.store_release(index);
            // The record is host memory the device reads: WQEs before the record, and
            // the release store orders them.
            state.doorbell.write_release(index & RQ_DOORBELL_MASK);
        }
        result
    }
}

/// Takes the oldest outstanding WQE of a queue (`tail` up to `posted`, one slot each in a
/// table of `wqe_cnt`) and returns its wr_id; `None` when none is outstanding.
pub(crate) fn take_oldest<P: Platform>(
    tail: &P::Counter,
    posted: &P::Counter,
    wr_ids: &P::WrIdTable,
    wqe_cnt: u32,
) -> Option<u64> {
    let oldest = tail.load_acquire();
    if oldest == posted.load_acquire() {
        return None;
    }
    let wr_id = wr_ids
        .as_ref()
        .get((oldest & wqe_cnt.wrapping_sub(1)) as usize)?
        .get();
    tail.store_release(oldest.wrapping_add(1));
    Some(wr_id)
}
