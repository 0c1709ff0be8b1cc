// SPDX-License-Identifier: GPL-2.0
//! Memory regions for remote access: fast registration (FRWR).

use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::teardown_may_sleep;
use crate::dma::{DmaBuffer, SgMapping};
use crate::pd::ProtectionDomain;
use crate::sys;

/// The `ib_mr` both region types are: allocated in a PD, its key, the address and length
/// its mapping set. Its owner deregisters it ([`FastRegMr::deregister`]) in its own drop,
/// before it frees what the MR maps: so this type has no drop of its own.
struct FastRegMr {
    mr: NonNull<sys::ib_mr>,
    pd: Arc<ProtectionDomain>,
}

impl FastRegMr {
    /// `ib_alloc_mr` of up to `max_pages` pages in `pd`.
    fn new(pd: &Arc<ProtectionDomain>, max_pages: u32) -> Result<Self> {
        // SAFETY: the PD is valid (we hold a reference).
        let mr = from_err_ptr(unsafe {
            sys::ib_alloc_mr(pd.as_raw(), sys::ib_mr_type_IB_MR_TYPE_MEM_REG, max_pages)
        })?;
        Ok(Self {
            mr: NonNull::new(mr).ok_or(ENOMEM)?,
            pd: pd.clone(),
        })
    }

    fn rkey(&self) -> u32 {
        // SAFETY: the MR is valid (type invariant).
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    fn iova(&self) -> u64 {
        // SAFETY: the MR is valid; `iova` was set by the mapping.
        unsafe { (*self.mr.as_ptr()).iova }
    }

    fn length(&self) -> u64 {
        // SAFETY: the MR is valid; `length` was set by the mapping.
        unsafe { (*self.mr.as_ptr()).length }
    }

    /// A new key before the MR is registered again, so keys handed out for an earlier
    /// registration stop working.
    fn bump_key(&mut self) {
        // SAFETY: the MR is valid and exclusively ours (`&mut`): no REG_MR is in flight.
        unsafe { sys::tilde_rdma_bump_mr_key(self.mr.as_ptr()) };
    }

    fn as_raw(&self) -> *mut sys::ib_mr {
        self.mr.as_ptr()
    }

    /// Deregisters the MR, once, from its owner's drop; `true` if it is gone, so what it
    /// mapped may be freed. In atomic context it stays (with a PD reference) and so must
    /// what it maps: the device may still use both.
    fn deregister(&mut self) -> bool {
        if !teardown_may_sleep(self.pd.device(), "an MR") {
            core::mem::forget(self.pd.clone());
            return false;
        }
        // SAFETY: the MR is valid and no WR of ours uses it: a WR that registers or
        // invalidates it carries its owner, which is being dropped, so none is in flight.
        let ret = unsafe { sys::ib_dereg_mr_user(self.mr.as_ptr(), core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!(
                "{}: deregistering an MR failed: {}\n",
                self.pd.device().name(),
                ret
            );
            return false;
        }
        true
    }
}

/// A fast-registration memory region (`ib_alloc_mr`, `IB_MR_TYPE_MEM_REG`) over a buffer
/// it owns, deregistered on drop. A REG_MR work request makes it valid for a peer's
/// access and takes it along until it completes ([`crate::qp::Queues::post_reg_mr`]);
/// LOCAL_INV (or the peer's SEND_WITH_INV) makes it invalid again. Dropping a registered
/// region deregisters it: the peer's next access fails, it never reaches freed memory.
pub struct MemoryRegion {
    mr: FastRegMr,
    /// Unmapped by `drop` only once the MR is deregistered.
    buffer: ManuallyDrop<DmaBuffer>,
}

// SAFETY: the `ib_mr` is used through verbs the IB core allows from any thread; its key
// changes only through `&mut self`.
unsafe impl Send for MemoryRegion {}
// SAFETY: `&self` only reads fields the driver set at mapping or registration.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// A region of up to `max_pages` pages in `pd`, mapped onto `len` bytes of `buffer`
    /// at `offset`.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        max_pages: u32,
        buffer: DmaBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        if !buffer.device().is(pd.device()) {
            return Err(EINVAL);
        }
        let dma_addr = buffer.dma_addr(offset, len).ok_or(EINVAL)?;
        let len = u32::try_from(len).map_err(|_| EINVAL)?;
        let mr = Self {
            mr: FastRegMr::new(pd, max_pages)?,
            buffer: ManuallyDrop::new(buffer),
        };
        // SAFETY: the MR is valid and not yet registered; the range lies in a mapping of
        // the same device that the MR owns.
        let mapped = unsafe { sys::tilde_rdma_map_mr(mr.mr.as_raw(), dma_addr, len) };
        if mapped != 1 {
            pr_err!(
                "{}: mapping a {} byte buffer into an MR failed: {}\n",
                pd.device().name(),
                len,
                mapped
            );
            return Err(if mapped < 0 {
                Error::from_errno(mapped)
            } else {
                EINVAL
            });
        }
        Ok(mr)
    }

    /// The key a peer names in RDMA operations on this region.
    pub fn rkey(&self) -> u32 {
        self.mr.rkey()
    }

    /// The address of the region's first byte in the peer's RDMA operations.
    pub fn iova(&self) -> u64 {
        self.mr.iova()
    }

    /// The region's length in bytes.
    pub fn length(&self) -> u64 {
        self.mr.length()
    }

    /// The buffer the region exposes (reads are volatile copies: a peer may be writing).
    pub fn buffer(&self) -> &DmaBuffer {
        &self.buffer
    }

    /// Copies `bytes` into the region's buffer at `offset` (see [`DmaBuffer::write`]).
    /// The buffer itself is never lent out mutably: swapped out, it would be freed while
    /// the region still maps it.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result {
        self.buffer.write(offset, bytes)
    }

    /// The PD the region is in.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.mr.pd
    }

    /// Gives the region a new key before it is registered again, so keys handed out for
    /// an earlier registration stop working.
    pub(crate) fn bump_key(&mut self) {
        self.mr.bump_key();
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_mr {
        self.mr.as_raw()
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        if self.mr.deregister() {
            // SAFETY: the buffer is dropped once, here, after the MR that mapped it is
            // gone. Otherwise it stays mapped: the device may still use it.
            unsafe { ManuallyDrop::drop(&mut self.buffer) };
        }
    }
}

/// A fast-registration memory region (`ib_alloc_mr`, `IB_MR_TYPE_MEM_REG`) over pages it
/// borrows through an [`SgMapping`] (a SCSI command's data, say), deregistered on drop.
///
/// The region tracks whether its key may still be valid for a peer: from a REG_MR post
/// ([`crate::qp::Queues::post_reg_sg`]) until a LOCAL_INV of it completes
/// ([`crate::qp::Queues::post_invalidate`]) or the peer's SEND with Invalidate names its
/// key ([`SgRegion::invalidated_by`]). Only then does [`SgRegion::unmap`] give the
/// pages back: a peer can never reach pages their owner got back. Dropping the region
/// deregisters it first, which is always safe.
pub struct SgRegion {
    mr: FastRegMr,
    pages: Option<SgMapping>,
    /// The key may be valid for a peer.
    valid: bool,
}

// SAFETY: as for `MemoryRegion`: the `ib_mr` is used through verbs the IB core allows
// from any thread, and changes only through `&mut self`.
unsafe impl Send for SgRegion {}
// SAFETY: `&self` only reads fields the driver set at mapping or registration.
unsafe impl Sync for SgRegion {}

impl SgRegion {
    /// A region of up to `max_pages` pages in `pd`, mapping nothing yet.
    pub fn new(pd: &Arc<ProtectionDomain>, max_pages: u32) -> Result<Self> {
        Ok(Self {
            mr: FastRegMr::new(pd, max_pages)?,
            pages: None,
            valid: false,
        })
    }

    /// Maps all of `pages` as one region, for the next REG_MR. Refused (the mapping
    /// handed back) while the region maps other pages, or when the pages do not form one
    /// region the MR can take (too many, or gaps between pages).
    pub fn map(&mut self, pages: SgMapping) -> core::result::Result<(), (Error, SgMapping)> {
        if self.pages.is_some() || self.valid || !pages.device().is(self.mr.pd.device()) {
            return Err((EINVAL, pages));
        }
        let (sgl, nents) = pages.mapped();
        // SAFETY: the MR is valid and not registered (`valid` is false); the list is mapped
        // for the MR's device and stays so while the region holds the mapping.
        let mapped = unsafe { sys::tilde_rdma_map_mr_sg(self.mr.as_raw(), sgl, nents) };
        if mapped != nents {
            pr_err!(
                "{}: an MR took {} of {} scatterlist entries\n",
                self.mr.pd.device().name(),
                mapped,
                nents
            );
            let error = if mapped < 0 {
                Error::from_errno(mapped)
            } else {
                EINVAL
            };
            return Err((error, pages));
        }
        self.pages = Some(pages);
        Ok(())
    }

    /// Gives the pages back, once no peer can reach them: `None` while the key may be
    /// valid (or nothing is mapped).
    pub fn unmap(&mut self) -> Option<SgMapping> {
        if self.valid {
            return None;
        }
        self.pages.take()
    }

    /// Gives the pages back while the key may still be valid (its LOCAL_INV to come):
    /// the region then maps nothing a peer may touch, yet takes no new pages until the
    /// key is invalid. For an owner that must return the pages now, as a SCSI command
    /// that ends early must.
    ///
    /// # Safety
    ///
    /// No peer accesses the region under its key any more: every QP of the region's PD
    /// that the peer could use is in error, or the peer's protocol has ended its access
    /// to these pages (an iSCSI task ended by task management).
    pub unsafe fn release_pages(&mut self) -> Option<SgMapping> {
        self.pages.take()
    }

    /// Whether the key may still be valid for a peer.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Notes that the peer invalidated `rkey` (a receive completion's
    /// `invalidated_rkey`); `true` if that was this region's key.
    pub fn invalidated_by(&mut self, rkey: u32) -> bool {
        if self.valid && rkey == self.rkey() {
            self.valid = false;
            return true;
        }
        false
    }

    /// The key a peer names in RDMA operations on this region.
    pub fn rkey(&self) -> u32 {
        self.mr.rkey()
    }

    /// The address of the region's first byte in the peer's RDMA operations.
    pub fn iova(&self) -> u64 {
        self.mr.iova()
    }

    /// The region's length in bytes.
    pub fn length(&self) -> u64 {
        self.mr.length()
    }

    /// The PD the region is in.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.mr.pd
    }

    /// For a REG_MR post: a new key, now possibly valid; `None` if nothing is mapped.
    pub(crate) fn register(&mut self) -> Option<(*mut sys::ib_mr, u32)> {
        self.pages.as_ref()?;
        self.mr.bump_key();
        self.valid = true;
        Some((self.mr.as_raw(), self.rkey()))
    }

    /// A LOCAL_INV of the region completed successfully, or its REG_MR was never posted.
    pub(crate) fn invalidated(&mut self) {
        self.valid = false;
    }
}

impl Drop for SgRegion {
    fn drop(&mut self) {
        if !self.mr.deregister() {
            // The MR may still map the pages: they stay mapped.
            core::mem::forget(self.pages.take());
        }
        // The pages are unmapped after the MR is gone (field drop).
    }
}
