// SPDX-License-Identifier: GPL-2.0
//! The Rust side of `netdev_glue.c`: the network device the port takes its GIDs from.
//!
//! This file and the C it binds are the module's only edge: the driver (`loopback.rs`)
//! reaches the C glue through [`NetdevGlue`] alone.

use core::ptr::NonNull;

use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use rdma_core::driver::{Device, DeviceSetup, Driver};

/// The C glue's state (`struct tilde_lo_glue`).
#[repr(C)]
struct Glue {
    _private: [u8; 0],
}

extern "C" {
    fn tilde_lo_glue_new() -> *mut Glue;
    fn tilde_lo_glue_free(glue: *mut Glue);
    // `struct ib_device *`, untyped here: Rust deems it not FFI-safe (an empty lockdep
    // map inside).
    fn tilde_lo_attach(glue: *mut Glue, ibdev: *mut c_void, mac: *mut u8) -> c_int;
    fn tilde_lo_port_up(ibdev: *mut c_void) -> bool;
}

/// The binding of port 1 to the network device the `netdev` parameter names, followed
/// through a netdev notifier until the value is dropped.
pub(crate) struct NetdevGlue(NonNull<Glue>);

// SAFETY: the C state is written under RTNL (the notifier, attach, detach) and read by
// nobody else: it may be used from any thread.
unsafe impl Send for NetdevGlue {}
// SAFETY: as above; `&self` reaches nothing of it.
unsafe impl Sync for NetdevGlue {}

impl NetdevGlue {
    /// An unbound glue; allocates (may sleep).
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: allocates and initialises the glue; null on failure.
        NonNull::new(unsafe { tilde_lo_glue_new() })
            .map(Self)
            .ok_or(ENOMEM)
    }

    /// Binds port 1 of the device being set up to the network device: its MAC, or
    /// `ENODEV` if there is no such device (logged by the glue).
    pub(crate) fn attach(&mut self, device: &mut DeviceSetup<'_>) -> Result<[u8; 6]> {
        let mut mac = [0u8; 6];
        // SAFETY: the glue is ours; the device is allocated and not registered (what
        // `DeviceSetup` is); `mac` has the 6 bytes the glue copies.
        kernel::error::to_result(unsafe {
            tilde_lo_attach(self.0.as_ptr(), device.as_raw().cast(), mac.as_mut_ptr())
        })?;
        Ok(mac)
    }

    /// Whether port 1 of `device` has a network device that is up, with carrier.
    pub(crate) fn port_up<D: Driver>(&self, device: &Device<D>) -> bool {
        // SAFETY: the device is allocated while a view of it exists; the glue reads its
        // netdev binding under the IB core's own reference.
        unsafe { tilde_lo_port_up(device.as_raw().cast()) }
    }
}

impl Drop for NetdevGlue {
    fn drop(&mut self) {
        // The device's state (this glue with it) is dropped after the IB device is
        // unregistered and before it is freed: the notifier stops here, in the order
        // `ib_device_set_netdev` asks for.
        // SAFETY: allocated in `new`, freed once, here (detaching first).
        unsafe { tilde_lo_glue_free(self.0.as_ptr()) };
    }
}
