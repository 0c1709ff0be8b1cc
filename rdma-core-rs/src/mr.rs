// SPDX-License-Identifier: GPL-2.0
//! Memory regions for remote access: fast registration (FRWR).

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;

use crate::dma::DmaBuffer;
use crate::pd::ProtectionDomain;
use crate::sys;

/// A fast-registration memory region (`ib_alloc_mr`, `IB_MR_TYPE_MEM_REG`), deregistered
/// on drop. It is mapped onto a buffer here, then made valid for remote access by a
/// REG_MR work request and invalid again by LOCAL_INV (or a SEND_WITH_INV from the peer);
/// see [`crate::qp::QueuePair::post_reg_mr`].
pub struct MemoryRegion<'a> {
    mr: NonNull<sys::ib_mr>,
    _borrows: PhantomData<(&'a ProtectionDomain<'a>, &'a DmaBuffer<'a>)>,
}

impl<'a> MemoryRegion<'a> {
    /// A region of up to `max_pages` pages, mapped onto `len` bytes of `buffer` at
    /// `offset`, which it borrows for as long as it exists.
    pub fn new(
        pd: &'a ProtectionDomain<'_>,
        max_pages: u32,
        buffer: &'a DmaBuffer<'_>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        if !core::ptr::eq(buffer.device(), pd.device()) {
            return Err(EINVAL);
        }
        let dma_addr = buffer.dma_addr(offset, len).ok_or(EINVAL)?;
        let len = u32::try_from(len).map_err(|_| EINVAL)?;
        // SAFETY: the PD is valid for 'a.
        let mr = from_err_ptr(unsafe {
            sys::ib_alloc_mr(pd.as_raw(), sys::ib_mr_type_IB_MR_TYPE_MEM_REG, max_pages)
        })?;
        let mr = Self {
            mr: NonNull::new(mr).ok_or(ENOMEM)?,
            _borrows: PhantomData,
        };
        // SAFETY: the MR is valid and not yet registered; the range lies in a mapping of
        // the same device that outlives the MR (borrowed for 'a).
        let mapped = unsafe { sys::tilde_rdma_map_mr(mr.mr.as_ptr(), dma_addr, len) };
        if mapped != 1 {
            pr_err!(
                "tilde_rdma: mapping a {} byte buffer into an MR failed: {}\n",
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
        // SAFETY: the MR is valid (type invariant).
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    /// The address of the region's first byte in the peer's RDMA operations.
    pub fn iova(&self) -> u64 {
        // SAFETY: the MR is valid; `iova` was set by the mapping.
        unsafe { (*self.mr.as_ptr()).iova }
    }

    /// The region's length in bytes.
    pub fn length(&self) -> u64 {
        // SAFETY: the MR is valid; `length` was set by the mapping.
        unsafe { (*self.mr.as_ptr()).length }
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_mr {
        self.mr.as_ptr()
    }
}

impl Drop for MemoryRegion<'_> {
    fn drop(&mut self) {
        // SAFETY: the MR is valid, and no QP uses it any more: REG_MR WRs borrow the MR
        // for their QP's lifetime, and QPs drain before they go.
        let ret = unsafe { sys::ib_dereg_mr_user(self.mr.as_ptr(), core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!("tilde_rdma: deregistering an MR failed: {}\n", ret);
        }
    }
}
