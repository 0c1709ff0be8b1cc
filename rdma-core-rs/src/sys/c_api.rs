// SPDX-License-Identifier: GPL-2.0
//! The IB core's C API where the kernels tilde targets disagree, in one Rust form for all
//! of them. Each difference is decided by a probe of the bindings bindgen made from the
//! target's own headers (`cargo xtask kmod`, `binding_features`: a function is declared or
//! not), never by a version number; docs/kernels.md's table lists them.
//!
//! - [`resize_cq`]: `ib_resize_cq` (`--cfg tilde_ib_resize_cq`), which later kernels
//!   removed when resizing became a user-only verb (`resize_user_cq`); there a kernel
//!   consumer gets `EOPNOTSUPP`, as from a device that cannot resize;
//! - [`device_get_by_name`]: `ib_device_get_by_name` (`--cfg tilde_ib_device_get_by_name`),
//!   which later kernels made private to the IB core; there a transient client finds the
//!   device (`tilde_rdma_device_get_by_name` in `helpers.c`);
//! - the driver side ([`crate::driver`] uses these): [`alloc_device`] (`_ib_alloc_device`
//!   with or without a network namespace), [`set_resize_cq`] (the `resize_cq` slot, or
//!   `resize_user_cq` with an unsigned size), [`set_no_user_mr`] (`reg_user_mr` with or
//!   without a DMA handle).

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

// The driver side: what a driver meets when it allocates and registers an IB device.

/// Allocates a zeroed `ib_device` with `size` bytes in all (the driver's structure, which
/// starts with it), in the initial network namespace where `_ib_alloc_device` takes one
/// (`--cfg tilde_ib_alloc_device_net`). Null on failure. May sleep.
pub(crate) fn alloc_device(size: usize) -> *mut ib_device {
    #[cfg(tilde_ib_alloc_device_net)]
    {
        // SAFETY: `size` covers an `ib_device` (the caller's structure starts with one);
        // the initial namespace lives for ever.
        unsafe { super::_ib_alloc_device(size, super::tilde_rdma_init_net()) }
    }
    #[cfg(not(tilde_ib_alloc_device_net))]
    {
        // SAFETY: `size` covers an `ib_device`, as above.
        unsafe { super::_ib_alloc_device(size) }
    }
}

/// A driver's CQ resize, for whichever slot the kernel has.
pub trait ResizeCq {
    /// Resizes `cq` to at least `entries` completions; 0 or a negative errno.
    ///
    /// # Safety
    ///
    /// `cq` is a CQ of the driver's device, as the IB core passes it.
    unsafe fn resize(cq: *mut ib_cq, entries: u32) -> kernel::ffi::c_int;
}

/// Puts `R`'s resize in `ops`: the `resize_user_cq` slot (unsigned size) where the kernel
/// has it (`--cfg tilde_resize_user_cq`), else `resize_cq` (int), which kernel consumers
/// reach through `ib_resize_cq` there.
pub(crate) fn set_resize_cq<R: ResizeCq>(ops: &mut super::ib_device_ops) {
    #[cfg(tilde_resize_user_cq)]
    {
        /// # Safety
        ///
        /// Called by the IB core with a CQ of the device.
        unsafe extern "C" fn slot<R: ResizeCq>(
            cq: *mut ib_cq,
            entries: kernel::ffi::c_uint,
            _udata: *mut super::ib_udata,
        ) -> kernel::ffi::c_int {
            // SAFETY: the IB core calls the slot with a CQ of this device.
            unsafe { R::resize(cq, entries) }
        }
        ops.resize_user_cq = Some(slot::<R>);
    }
    #[cfg(not(tilde_resize_user_cq))]
    {
        /// # Safety
        ///
        /// Called by the IB core with a CQ of the device.
        unsafe extern "C" fn slot<R: ResizeCq>(
            cq: *mut ib_cq,
            entries: kernel::ffi::c_int,
            _udata: *mut super::ib_udata,
        ) -> kernel::ffi::c_int {
            let Ok(entries) = u32::try_from(entries) else {
                return -(kernel::bindings::EINVAL as kernel::ffi::c_int);
            };
            // SAFETY: the IB core calls the slot with a CQ of this device.
            unsafe { R::resize(cq, entries) }
        }
        ops.resize_cq = Some(slot::<R>);
    }
}

/// Fills `reg_user_mr`, which the IB core requires of every device that serves kernel
/// verbs, for a driver without user verbs: the IB core never calls it then (user space
/// cannot open such a device), and if it did, it would get `EOPNOTSUPP`. The slot took a
/// DMA handle from some kernel on (`--cfg tilde_reg_user_mr_dmah`).
pub(crate) fn set_no_user_mr(ops: &mut super::ib_device_ops) {
    fn unsupported() -> *mut super::ib_mr {
        // ERR_PTR(-EOPNOTSUPP).
        (-(kernel::bindings::EOPNOTSUPP as isize)) as *mut super::ib_mr
    }
    #[cfg(tilde_reg_user_mr_dmah)]
    {
        /// # Safety
        ///
        /// None needed: it reads nothing (`unsafe` for the slot's type).
        unsafe extern "C" fn slot(
            _pd: *mut super::ib_pd,
            _start: u64,
            _length: u64,
            _virt_addr: u64,
            _access: kernel::ffi::c_int,
            _dmah: *mut super::ib_dmah,
            _udata: *mut super::ib_udata,
        ) -> *mut super::ib_mr {
            unsupported()
        }
        ops.reg_user_mr = Some(slot);
    }
    #[cfg(not(tilde_reg_user_mr_dmah))]
    {
        /// # Safety
        ///
        /// None needed: it reads nothing (`unsafe` for the slot's type).
        unsafe extern "C" fn slot(
            _pd: *mut super::ib_pd,
            _start: u64,
            _length: u64,
            _virt_addr: u64,
            _access: kernel::ffi::c_int,
            _udata: *mut super::ib_udata,
        ) -> *mut super::ib_mr {
            unsupported()
        }
        ops.reg_user_mr = Some(slot);
    }
}
