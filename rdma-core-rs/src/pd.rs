// SPDX-License-Identifier: GPL-2.0
//! Protection domains.

use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::{teardown_may_sleep, Device, DeviceRef};
use crate::sys;

/// A protection domain (`ib_alloc_pd`), shared through [`Arc`]: every QP, MR and AH in it
/// holds a reference, so it is freed only after the last of them.
pub struct ProtectionDomain {
    pd: NonNull<sys::ib_pd>,
    device: DeviceRef,
}

// SAFETY: the `ib_pd` is used only through verbs that the IB core allows from any thread.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above; the PD's fields read here are set at allocation and never change.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a PD on `device`.
    pub fn new(device: &Device) -> Result<Arc<Self>> {
        let device = device.to_ref()?;
        // SAFETY: the device is valid (we hold a reference); the caller name is static.
        let pd = from_err_ptr(unsafe {
            sys::__ib_alloc_pd(device.as_raw(), 0, sys::kernel_api::c_str(c"tilde_rdma"))
        })?;
        let pd = NonNull::new(pd).ok_or(ENOMEM)?;
        Ok(Arc::new(Self { pd, device }, GFP_KERNEL)?)
    }

    /// The device the PD belongs to.
    pub fn device(&self) -> &Device {
        &self.device
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

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        if !teardown_may_sleep(&self.device, "a PD") {
            // The device reference in `self.device` is given back, but the one taken by
            // `teardown_may_sleep` stays.
            return;
        }
        // SAFETY: the PD is valid and unused: every object in it holds an `Arc` of it, so
        // all are gone by now. A kernel PD's dealloc cannot fail short of a driver bug.
        let ret = unsafe { sys::ib_dealloc_pd_user(self.pd.as_ptr(), core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!("{}: ib_dealloc_pd failed: {}\n", self.device.name(), ret);
        }
    }
}
