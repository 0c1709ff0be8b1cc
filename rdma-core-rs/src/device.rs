// SPDX-License-Identifier: GPL-2.0
//! RDMA devices as a client sees them: `struct ib_device`.

use core::ops::RangeInclusive;

use kernel::{error::to_result, prelude::*, types::Opaque};

use crate::sys;
use crate::verbs::{Decoded, Guid, PortAttr};

/// An RDMA device registered with the kernel's IB core.
///
/// Client callbacks hand out `&Device`; the IB core keeps the device registered for the
/// duration of each callback, and between a client's `add` and `remove`.
#[repr(transparent)]
pub struct Device(Opaque<sys::ib_device>);

impl Device {
    /// Borrows the `ib_device` behind `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` points to a registered `ib_device` that stays registered for `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut sys::ib_device) -> &'a Self {
        // SAFETY: `Device` is a transparent wrapper of `ib_device`, and the caller
        // guarantees the device is valid for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_device {
        self.0.get()
    }

    /// The device's name, e.g. `rxe0` (what `rdma link` shows).
    pub fn name(&self) -> &str {
        // SAFETY: the device is registered (type invariant), so its embedded
        // `struct device` has a name; the IB core renames devices only under
        // `devices_rwsem`, which it holds around client callbacks.
        let name = unsafe { CStr::from_char_ptr(sys::tilde_ib_device_name(self.as_raw())) };
        name.to_str().unwrap_or("(non-UTF-8 name)")
    }

    /// The node GUID.
    pub fn node_guid(&self) -> Guid {
        // SAFETY: the device is valid (type invariant); `node_guid` is set by the driver
        // before `ib_register_device` and not changed while registered.
        Guid::from_be(unsafe { (*self.as_raw()).node_guid })
    }

    /// Port numbers of the device: `1..=N` for a CA, `0..=0` for a switch.
    pub fn ports(&self) -> RangeInclusive<u32> {
        // SAFETY: the device is valid (type invariant).
        let (first, last) = unsafe {
            (
                sys::tilde_rdma_start_port(self.as_raw()),
                sys::tilde_rdma_end_port(self.as_raw()),
            )
        };
        first..=last
    }

    /// Queries a port's attributes (`ib_query_port`) and link layer.
    ///
    /// A port outside [`Device::ports`] is `EINVAL`, checked by the IB core.
    pub fn query_port(&self, port: u32) -> Result<PortAttr> {
        let mut attr = sys::ib_port_attr::default();
        // SAFETY: the device is valid (type invariant) and `attr` is a writable
        // `ib_port_attr` for the duration of the call.
        to_result(unsafe { sys::ib_query_port(self.as_raw(), port, &mut attr) })?;
        // SAFETY: the device is valid and `port` was just accepted by `ib_query_port`.
        let link_layer = unsafe { sys::rdma_port_get_link_layer(self.as_raw(), port) };
        Ok(PortAttr {
            state: Decoded::from(attr.state),
            phys_state: Decoded::from(u32::from(attr.phys_state)),
            active_mtu: Decoded::from(attr.active_mtu),
            max_mtu: Decoded::from(attr.max_mtu),
            gid_tbl_len: u32::try_from(attr.gid_tbl_len).unwrap_or(0),
            lid: attr.lid,
            link_layer: Decoded::from(link_layer),
        })
    }
}
