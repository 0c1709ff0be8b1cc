// SPDX-License-Identifier: GPL-2.0
//! The IB core's C API where the kernels tilde targets disagree, in one Rust form for all
//! of them. Each difference is decided by a probe of the bindings bindgen made from the
//! target's own headers (`cargo xtask kmod`, `binding_features`: a function is declared or
//! not), never by a version number; the README's kernel table lists them.
//!
//! - [`resize_cq`]: `ib_resize_cq` (`--cfg tilde_ib_resize_cq`), which later kernels
//!   removed when resizing became a user-only verb (`resize_user_cq`); there a kernel
//!   consumer gets `EOPNOTSUPP`, as from a device that cannot resize;
//! - [`device_get_by_name`]: `ib_device_get_by_name` (`--cfg tilde_ib_device_get_by_name`),
//!   which later kernels made private to the IB core; there a transient client finds the
//!   device (`tilde_rdma_device_get_by_name` in `helpers.c`).

use kernel::prelude::*;

use super::{ib_cq, ib_device};

/// Whether kernel consumers can resize a CQ on this kernel (`ib_resize_cq` exists). The
/// device may still refuse (`EOPNOTSUPP`), as one without a `resize_cq` op does.
pub const CQ_RESIZE: bool = cfg!(tilde_ib_resize_cq);

/// Resizes `cq` to at least `entries` completions.
///
/// # Safety
///
/// `cq` is a valid kernel CQ, and the caller may sleep.
pub(crate) unsafe fn resize_cq(cq: *mut ib_cq, entries: i32) -> Result {
    #[cfg(tilde_ib_resize_cq)]
    {
        // SAFETY: `cq` is valid (the caller's contract); the IB core checks the rest.
        kernel::error::to_result(unsafe { super::ib_resize_cq(cq, entries) })
    }
    #[cfg(not(tilde_ib_resize_cq))]
    {
        let _ = (cq, entries);
        Err(super::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
}

/// A registration reference (`ib_device_put` gives it back) to the registered device
/// named `name`, or null if there is none.
///
/// May sleep; never from an IB client callback (the fallback registers a client, which
/// waits for the IB core's client lock that such a callback holds).
pub(crate) fn device_get_by_name(name: &core::ffi::CStr) -> *mut ib_device {
    let name = super::kernel_api::c_str(name);
    #[cfg(tilde_ib_device_get_by_name)]
    {
        // SAFETY: `name` is a NUL-terminated string valid during the call; any driver.
        unsafe { super::ib_device_get_by_name(name, super::rdma_driver_id_RDMA_DRIVER_UNKNOWN) }
    }
    #[cfg(not(tilde_ib_device_get_by_name))]
    {
        // SAFETY: as above; the helper is called in process context (documented).
        unsafe { super::tilde_rdma_device_get_by_name(name) }
    }
}
