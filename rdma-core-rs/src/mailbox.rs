// SPDX-License-Identifier: GPL-2.0
//! A mailbox for work requests that their poster waits for: setup paths, tests.
//!
//! The WRs carry [`Returned`]; their completion handler puts them into the mailbox from
//! whatever context the CQ delivers in (a lock-free list: no lock, no allocation), and
//! [`Mailbox::wait`] takes them out in process context.

use core::ptr::NonNull;
use core::time::Duration;

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

use crate::cq::CompletionQueue;
use crate::dma::DmaBuffer;
use crate::qp::Queues;
use crate::sys;
use crate::sys::kernel_api::atomic::{Acquire, Atomic, Full};
use crate::sys::kernel_api::{push_within_capacity, remove, sleep, timed_out};
use crate::wr::{CompletionHandler, WorkRequest};

/// A WR handed back to a mailbox.
pub type ReturnedWr = KBox<WorkRequest<Returned>>;

/// The data of a WR whose completion goes to a [`Mailbox`]: the mailbox and a tag to
/// find it by.
pub struct Returned {
    shared: Arc<Shared>,
    tag: u64,
}

impl Returned {
    /// The tag the WR was made with.
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

struct Shared {
    /// WRs handed back and not yet taken (`llist_head`).
    list: Opaque<sys::llist_head>,
    /// Set once the owning [`Mailbox`] is gone: WRs returning later are dropped.
    closed: Atomic<bool>,
}

// SAFETY: the list is only touched through `llist_add` and `llist_del_all`, which are
// safe from any context concurrently; `closed` is atomic.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Takes every WR on the list, newest first.
    fn take_all(&self, mut each: impl FnMut(ReturnedWr)) {
        // SAFETY: the list head is valid; `llist_del_all` detaches the whole list.
        let mut node = unsafe { sys::tilde_rdma_llist_del_all(self.list.get()) };
        while let Some(link) = NonNull::new(node) {
            // SAFETY: every node on the list is the `link` of a `WorkRequest<Returned>`
            // leaked by `complete`, detached above and so owned here. The offset is that
            // of the field in the `repr(C)` struct.
            let wr = unsafe {
                let offset = core::mem::offset_of!(WorkRequest<Returned>, link);
                let wr = link
                    .as_ptr()
                    .cast::<u8>()
                    .sub(offset)
                    .cast::<WorkRequest<Returned>>();
                node = (*link.as_ptr()).next;
                KBox::from_raw(wr)
            };
            each(wr);
        }
    }
}

impl Shared {
    /// Puts a taken WR back on the list.
    fn put_back(&self, wr: ReturnedWr) {
        let link = wr.link.get();
        let _ = KBox::into_raw(wr);
        // SAFETY: `link` is in the WR just leaked, whose ownership passes to the list.
        unsafe { sys::tilde_rdma_llist_add(link, self.list.get()) };
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.take_all(drop);
    }
}

impl CompletionHandler for Returned {
    fn complete(wr: KBox<WorkRequest<Self>>, _queues: &Queues) {
        let shared = wr.data().shared.clone();
        shared.put_back(wr);
        // If the mailbox closed meanwhile, nobody will take the WR: drop what is there.
        // `llist_add` is fully ordered, and so is `close`'s store, so either this sees it
        // closed or `close`'s own sweep sees the WR.
        if shared.closed.load(Acquire) {
            shared.take_all(drop);
        }
    }
}

/// Collects WRs as they complete, for a poster that waits for them.
pub struct Mailbox {
    shared: Arc<Shared>,
    /// Taken from the list, not yet asked for.
    ready: KVec<ReturnedWr>,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new() -> Result<Self> {
        let shared = Shared {
            list: Opaque::new(sys::llist_head {
                first: core::ptr::null_mut(),
            }),
            closed: Atomic::new(false),
        };
        Ok(Self {
            shared: Arc::new(shared, GFP_KERNEL)?,
            ready: KVec::new(),
        })
    }

    /// A WR returning here under `tag`, owning `buffer` (if any).
    pub fn work_request(&self, tag: u64, buffer: Option<DmaBuffer>) -> Result<ReturnedWr> {
        let mut wr = WorkRequest::new(Returned {
            shared: self.shared.clone(),
            tag,
        })?;
        wr.replace_buffer(buffer);
        Ok(wr)
    }

    /// The WR tagged `tag` if it is back already.
    pub fn try_take(&mut self, tag: u64) -> Result<Option<ReturnedWr>> {
        self.collect()?;
        match self.ready.iter().position(|wr| wr.data().tag == tag) {
            Some(index) => Ok(remove(&mut self.ready, index)),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the WR tagged `tag`, polling `cq` if it is a direct CQ
    /// (others deliver by themselves); `ETIMEDOUT` if it does not come back.
    pub fn wait(
        &mut self,
        tag: u64,
        cq: &CompletionQueue,
        timeout: Duration,
    ) -> Result<ReturnedWr> {
        let step = Duration::from_micros(200);
        let mut waited = Duration::ZERO;
        loop {
            cq.poll(64);
            if let Some(wr) = self.try_take(tag)? {
                return Ok(wr);
            }
            if waited >= timeout {
                return Err(timed_out());
            }
            sleep(step);
            waited += step;
        }
    }

    /// Moves the WRs handed back so far to `ready`, oldest first.
    fn collect(&mut self) -> Result {
        let first_new = self.ready.len();
        let mut failed = false;
        let ready = &mut self.ready;
        let shared = &self.shared;
        shared.take_all(|wr| {
            if let Err(wr) = push_within_capacity(ready, wr) {
                if ready.reserve(1, GFP_KERNEL).is_err() {
                    // No memory to hold it here: back on the list, not lost.
                    failed = true;
                    shared.put_back(wr);
                    return;
                }
                if let Err(wr) = push_within_capacity(ready, wr) {
                    failed = true;
                    shared.put_back(wr);
                }
            }
        });
        ready.get_mut(first_new..).unwrap_or(&mut []).reverse();
        if failed {
            return Err(ENOMEM);
        }
        Ok(())
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.shared.closed.xchg(true, Full);
        self.shared.take_all(drop);
    }
}
