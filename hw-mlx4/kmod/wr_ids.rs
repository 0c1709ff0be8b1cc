// SPDX-License-Identifier: GPL-2.0
//! The queues' wr_id tables: allocated when a queue is set up, then only read and
//! written in place by the fast path (through `AsRef<[WrId]>`). Kept apart from
//! `platform.rs`, whose every line is held to the fast path's rules (no allocation).

use kernel::alloc::{flags::GFP_KERNEL, KVec};
use kernel::prelude::*;

use hw_mlx4::fastpath::platform::WrIdSlot;

use crate::platform::WrId;

/// A queue's wr_id table, one slot per ring entry.
pub(crate) struct WrIds(KVec<WrId>);

impl WrIds {
    pub(crate) fn new(entries: u32) -> Result<Self> {
        let entries = entries as usize;
        let mut slots = KVec::with_capacity(entries, GFP_KERNEL)?;
        for _ in 0..entries {
            slots.push(WrId::new(0), GFP_KERNEL)?;
        }
        Ok(Self(slots))
    }
}

impl AsRef<[WrId]> for WrIds {
    #[inline]
    fn as_ref(&self) -> &[WrId] {
        &self.0
    }
}
