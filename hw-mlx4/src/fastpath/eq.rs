//! Event queues: the same owner-bit protocol as CQs, with 32-byte EQEs
//! (`mlx4_eq_int`, `next_eqe_sw`, `eq_set_ci`).

use super::platform::{DmaRing, Platform, UarPage};
use super::send::QueueConfigError;
use crate::wire::{eq_set_ci_word, Eqe, EQE_SIZE};
use zerocopy::FromBytes;

/// One event, as the driver dispatches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `MLX4_EVENT_TYPE_*`; see [`crate::wire::EventType`].
    pub event_type: u8,
    /// The event subtype (`subtype`).
    pub subtype: u8,
    /// The CQN, QPN or SRQN the event is about.
    pub object: u32,
}

/// The consuming side of an EQ.
pub struct EventQueue<'q, P: Platform> {
    ring: P::Ring,
    uar: &'q P::Uar,
    eqn: u32,
    entries: u32,
    cons_index: u32,
}

impl<'q, P: Platform> EventQueue<'q, P> {
    /// Sets up EQ `eqn` over `ring` of 32-byte entries and gives every entry to the
    /// device (owner bit set), as for CQs.
    pub fn new(eqn: u32, ring: P::Ring, uar: &'q P::Uar) -> Result<Self, QueueConfigError> {
        if ring.entry_shift() != EQE_SIZE.trailing_zeros() || ring.log_entries() > 22 {
            return Err(QueueConfigError::EntrySize);
        }
        let entries = 1u32 << ring.log_entries();
        for index in 0..entries {
            // SAFETY: the device does not know the EQ yet.
            unsafe { ring.with_entry_mut(index, |entry| entry.fill(0)) };
            ring.write_word(index, Eqe::OWNER_WORD_OFFSET, u32::from(Eqe::OWNER));
        }
        Ok(Self {
            ring,
            uar,
            eqn,
            entries,
            cons_index: 0,
        })
    }

    /// The EQ number.
    pub fn eqn(&self) -> u32 {
        self.eqn
    }

    /// The ring of EQEs.
    pub fn ring(&self) -> &P::Ring {
        &self.ring
    }

    /// The next event, if the device has written one.
    pub fn next_event(&mut self) -> Option<Event> {
        let index = self.cons_index;
        let owner = self.ring.read_word(index, Eqe::OWNER_WORD_OFFSET) as u8 & Eqe::OWNER != 0;
        if owner != (index & self.entries != 0) {
            return None;
        }
        P::dma_rmb();
        self.cons_index = index.wrapping_add(1);
        // SAFETY: the owner bit gave this EQE to software until the consumer index we
        // publish in `update_ci` passes it.
        unsafe {
            self.ring.with_entry(index, |entry| {
                let eqe = Eqe::ref_from_bytes(entry.get(..EQE_SIZE)?).ok()?;
                Some(Event {
                    event_type: eqe.event_type,
                    subtype: eqe.subtype,
                    object: eqe.object(),
                })
            })
        }
    }

    /// Tells the device how far the EQ was consumed and, with `arm`, to interrupt again.
    pub fn update_ci(&mut self, arm: bool) {
        P::wmb();
        self.uar
            .ring_eq_doorbell(self.eqn, eq_set_ci_word(self.cons_index, arm));
    }
}
