// SPDX-License-Identifier: GPL-2.0
//! Protection domains.

use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStrExt;

use crate::device::Device;
use crate::sys;

/// A protection domain (`ib_alloc_pd`), freed on drop. Everything created in it borrows
/// it, so it cannot be freed before its QPs and memory regions.
pub struct ProtectionDomain<'d> {
    pd: NonNull<sys::ib_pd>,
    device: &'d Device,
}

impl<'d> ProtectionDomain<'d> {
    /// Allocates a PD on `device`.
    pub fn new(device: &'d Device) -> Result<Self> {
        // SAFETY: the device is valid for 'd; the caller name is a static C string.
        let pd = from_err_ptr(unsafe {
            sys::__ib_alloc_pd(device.as_raw(), 0, c"tilde_rdma".as_char_ptr())
        })?;
        let pd = NonNull::new(pd).ok_or(ENOMEM)?;
        Ok(Self { pd, device })
    }

    /// The device the PD belongs to.
    pub fn device(&self) -> &'d Device {
        self.device
    }

    /// The lkey that covers all kernel memory mapped for this device
    /// (`pd->local_dma_lkey`).
    pub fn local_dma_lkey(&self) -> u32 {
        // SAFETY: the PD is valid (type invariant); the field is set at allocation.
        unsafe { (*self.pd.as_ptr()).local_dma_lkey }
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_pd {
        self.pd.as_ptr()
    }
}

impl Drop for ProtectionDomain<'_> {
    fn drop(&mut self) {
        // SAFETY: the PD is valid and unused: every object in it borrows it, so all are
        // gone by now. A kernel PD's dealloc cannot fail short of a driver bug.
        let ret = unsafe { sys::ib_dealloc_pd_user(self.pd.as_ptr(), core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!("{}: ib_dealloc_pd failed: {}\n", self.device.name(), ret);
        }
    }
}
