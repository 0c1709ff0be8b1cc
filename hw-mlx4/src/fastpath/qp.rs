//! A queue pair: its send and receive queues, split into the posting handles and the
//! shared half a CQ completes against.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::platform::Platform;
use super::recv::{RecvQueue, RecvQueueState};
use super::send::{SendQueue, SendQueueState};
use super::wr::{Completion, WcOpcode, WcStatus};

/// The memory and shared counters of one QP.
pub struct QueuePairState<P: Platform> {
    qpn: u32,
    sq: SendQueueState<P>,
    rq: RecvQueueState<P>,
    /// What the posting rights of a shared QP carry (0: it has none).
    key: usize,
}

/// The right to post to one queue of a QP shared with its CQs' pollers (see
/// [`QueuePairState::new_shared`]): one per queue, never copied, so whoever holds it
/// (under the driver's lock, as the IB core lets consumers post from many threads) is
/// that queue's only poster.
pub struct PostRight {
    key: usize,
}

/// Keys of posting rights, one per shared QP made; 0 is never one.
static NEXT_KEY: AtomicUsize = AtomicUsize::new(1);

impl<P: Platform> QueuePairState<P> {
    /// A QP numbered `qpn` over its send and receive queues.
    pub fn new(qpn: u32, sq: SendQueueState<P>, rq: RecvQueueState<P>) -> Self {
        Self {
            qpn,
            sq,
            rq,
            key: 0,
        }
    }

    /// A QP that CQs poll against while it is posted to (an IB device's QP: its state is
    /// shared, by reference, between its CQs and its posters), with the rights to post
    /// to its send and its receive queue.
    pub fn new_shared(
        qpn: u32,
        sq: SendQueueState<P>,
        rq: RecvQueueState<P>,
    ) -> (Self, PostRight, PostRight) {
        // Wrapping after 2^63 QPs on 64-bit: a key stays unique for any QP's life.
        let key = NEXT_KEY.fetch_add(2, Ordering::Relaxed) | 1;
        let state = Self { qpn, sq, rq, key };
        (state, PostRight { key }, PostRight { key: key + 1 })
    }

    /// The completion half, which CQs poll against; any number may be made.
    pub fn completions(&self) -> QpCompletions<'_, P> {
        QpCompletions {
            qpn: self.qpn,
            sq: &self.sq,
            rq: &self.rq,
        }
    }

    /// The send queue's posting handle, for the holder of its right; `None` for a right
    /// that is not this QP's send queue's.
    pub fn send_queue<'q>(
        &'q self,
        right: &'q mut PostRight,
        uar: &'q P::Uar,
    ) -> Option<SendQueue<'q, P>> {
        (self.key != 0 && right.key == self.key)
            .then(|| SendQueue::new(&self.sq, self.qpn, uar, None))
    }

    /// The receive queue's posting handle, for the holder of its right.
    pub fn recv_queue<'q>(&'q self, right: &'q mut PostRight) -> Option<RecvQueue<'q, P>> {
        (self.key != 0 && right.key == self.key.wrapping_add(1)).then(|| RecvQueue::new(&self.rq))
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// The send queue's shared half.
    pub fn send_state(&self) -> &SendQueueState<P> {
        &self.sq
    }

    /// The receive queue's shared half.
    pub fn recv_state(&self) -> &RecvQueueState<P> {
        &self.rq
    }

    /// The posting handles (one each, hence `&mut`) and the completion half, which CQs
    /// of this QP poll against and which may be copied freely.
    pub fn split<'q>(
        &'q mut self,
        uar: &'q P::Uar,
    ) -> (SendQueue<'q, P>, RecvQueue<'q, P>, QpCompletions<'q, P>) {
        self.split_inner(uar, None)
    }

    /// As [`QueuePairState::split`], with the BlueFlame register the send queue may post
    /// single small WRs through; `&mut` because its two buffers take one QP's copies only.
    pub fn split_with_blueflame<'q>(
        &'q mut self,
        uar: &'q P::Uar,
        blueflame: &'q mut P::BlueFlame,
    ) -> (SendQueue<'q, P>, RecvQueue<'q, P>, QpCompletions<'q, P>) {
        self.split_inner(uar, Some(blueflame))
    }

    fn split_inner<'q>(
        &'q mut self,
        uar: &'q P::Uar,
        blueflame: Option<&'q P::BlueFlame>,
    ) -> (SendQueue<'q, P>, RecvQueue<'q, P>, QpCompletions<'q, P>) {
        let this: &'q Self = self;
        (
            SendQueue::new(&this.sq, this.qpn, uar, blueflame),
            RecvQueue::new(&this.rq),
            QpCompletions {
                qpn: this.qpn,
                sq: &this.sq,
                rq: &this.rq,
            },
        )
    }
}

/// What a CQ needs of a QP to turn its CQEs into completions.
pub struct QpCompletions<'q, P: Platform> {
    pub(crate) qpn: u32,
    pub(crate) sq: &'q SendQueueState<P>,
    pub(crate) rq: &'q RecvQueueState<P>,
}

impl<P: Platform> Clone for QpCompletions<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Platform> Copy for QpCompletions<'_, P> {}

impl<'q, P: Platform> QpCompletions<'q, P> {
    /// The QP number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// WRs posted and not yet completed: on the send queue, on the receive queue.
    pub fn outstanding(&self) -> (u32, u32) {
        (self.sq.outstanding(), self.rq.outstanding())
    }

    /// The send queue's oldest outstanding WR, completed as flushed: for a device that
    /// will complete nothing more (reset after a catastrophic error), whose WRs the
    /// driver hands back itself (`mlx4_ib_poll_sw_comp`); `None` when none is left.
    pub fn flush_send(&self) -> Option<Completion> {
        let wr_id = self.sq.flush_oldest()?;
        Some(self.flushed(wr_id, WcOpcode::Send))
    }

    /// As [`QpCompletions::flush_send`], for the receive queue.
    pub fn flush_recv(&self) -> Option<Completion> {
        let wr_id = self.rq.complete()?;
        Some(self.flushed(wr_id, WcOpcode::Recv))
    }

    fn flushed(&self, wr_id: u64, opcode: WcOpcode) -> Completion {
        Completion {
            wr_id,
            status: WcStatus::WrFlushError,
            opcode,
            qpn: self.qpn,
            ..Completion::EMPTY
        }
    }
}

/// Finds the QP a CQE names. A CQ shared by few QPs uses a slice; a driver with many
/// uses its QP table.
pub trait QpLookup<'q, P: Platform> {
    /// The QP numbered `qpn`, if it is one of these.
    fn lookup(&self, qpn: u32) -> Option<QpCompletions<'q, P>>;
}

impl<'q, P: Platform> QpLookup<'q, P> for QpCompletions<'q, P> {
    fn lookup(&self, qpn: u32) -> Option<QpCompletions<'q, P>> {
        (self.qpn == qpn).then_some(*self)
    }
}

impl<'q, P: Platform> QpLookup<'q, P> for [QpCompletions<'q, P>] {
    fn lookup(&self, qpn: u32) -> Option<QpCompletions<'q, P>> {
        self.iter().find(|qp| qp.qpn == qpn).copied()
    }
}

impl<'q, P: Platform, const N: usize> QpLookup<'q, P> for [QpCompletions<'q, P>; N] {
    fn lookup(&self, qpn: u32) -> Option<QpCompletions<'q, P>> {
        self.as_slice().lookup(qpn)
    }
}
