// SPDX-License-Identifier: GPL-2.0
//! RDMA devices as a client sees them: `struct ib_device`.

use core::ops::{Deref, RangeInclusive};
use core::ptr::NonNull;

use kernel::{error::to_result, prelude::*, sync::Arc, types::Opaque};

use crate::sys;
use crate::verbs::{Decoded, DeviceCaps, Gid, Guid, PortAttr};

/// An RDMA device registered with the kernel's IB core.
///
/// Client callbacks hand out `&Device`; the IB core keeps the device registered for the
/// duration of each callback, and between a client's `add` and `remove`.
#[repr(transparent)]
pub struct Device(Opaque<sys::ib_device>);

/// A device name as copied out of `struct ib_device`.
pub struct DeviceName {
    bytes: [u8; sys::IB_DEVICE_NAME_MAX as usize],
}

impl DeviceName {
    /// The name; `(unnamed)` if the copy holds no valid NUL-terminated UTF-8.
    pub fn as_str(&self) -> &str {
        core::ffi::CStr::from_bytes_until_nul(&self.bytes)
            .ok()
            .and_then(|name| name.to_str().ok())
            .unwrap_or("(unnamed)")
    }
}

impl DeviceName {
    /// A copy of the name of the device at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` is a valid `ib_device` (allocated, registered or not).
    pub unsafe fn of(raw: *mut sys::ib_device) -> Self {
        // SAFETY: the caller's contract; `Device` is a transparent view of it.
        unsafe { Device::from_raw(raw) }.name()
    }

    /// The name as the C string it is in the device (empty if the copy has no NUL).
    pub fn as_c_str(&self) -> &core::ffi::CStr {
        core::ffi::CStr::from_bytes_until_nul(&self.bytes).unwrap_or(c"")
    }
}

impl core::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    /// The device's parent in the driver model (what ib_iser gives a SCSI host as its
    /// DMA parent); may be null for a software device.
    pub fn parent(&self) -> *mut sys::device {
        // SAFETY: the device is valid (type invariant); `dev.parent` is set at
        // registration and constant after; `dev` is the union member every device uses.
        unsafe { (*self.as_raw()).__bindgen_anon_1.dev.parent }
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_device {
        self.0.get()
    }

    /// A reference that keeps the device registered: its unregistration (`rdma link
    /// delete`, driver unload) waits until every reference is dropped. Every verbs
    /// object holds one, which is what lets objects outlive a client callback. `ENODEV`
    /// once the device is on its way out.
    pub fn to_ref(&self) -> Result<DeviceRef> {
        // SAFETY: the device is valid (type invariant).
        if unsafe { sys::tilde_rdma_device_try_get(self.as_raw()) } {
            // The reference just taken is the one `DeviceRef` owns.
            NonNull::new(self.as_raw()).map(DeviceRef).ok_or(ENODEV)
        } else {
            Err(ENODEV)
        }
    }

    /// Whether `other` is this same device.
    pub fn is(&self, other: &Device) -> bool {
        core::ptr::eq(self, other)
    }

    /// The device's name, e.g. `rxe0` (what `rdma link` shows), copied out of the device.
    pub fn name(&self) -> DeviceName {
        // `ib_device.name` is an array inside the device that `ib_device_rename` rewrites
        // in place with `strscpy`, so reading it never touches freed memory (unlike
        // `dev_name()`, whose string a rename frees). A rename may run meanwhile, so each
        // byte is read once with a volatile read, as of memory another CPU writes: a race
        // gives at worst a mixed name.
        let mut bytes = [0u8; sys::IB_DEVICE_NAME_MAX as usize];
        // SAFETY: the device is valid (type invariant), so its `name` array is in bounds.
        let name = unsafe { core::ptr::addr_of!((*self.as_raw()).name) }.cast::<u8>();
        for (i, byte) in bytes.iter_mut().enumerate() {
            // SAFETY: `i` is within the array, which has `IB_DEVICE_NAME_MAX` bytes.
            *byte = unsafe { core::ptr::read_volatile(name.add(i)) };
        }
        DeviceName { bytes }
    }

    /// Whether `port` speaks the IB CM (`rdma_cap_ib_cm`), which RDMA CM connects
    /// through: RoCE and IB ports with MADs do; a device without MADs does not.
    pub fn has_cm(&self, port: u32) -> bool {
        // SAFETY: the device is valid (type invariant), and the port is one of its own,
        // checked first (the capability table has one entry per port).
        self.ports().contains(&port) && unsafe { sys::tilde_rdma_cap_ib_cm(self.as_raw(), port) }
    }

    /// The node GUID.
    pub fn node_guid(&self) -> Guid {
        // SAFETY: the device is valid (type invariant); `node_guid` is set by the driver
        // before `ib_register_device` and not changed while registered.
        Guid::from_be(unsafe { (*self.as_raw()).node_guid })
    }

    /// What the device can do (`ib_device.attrs`, filled by the driver before it
    /// registers the device and not changed while registered).
    pub fn caps(&self) -> DeviceCaps {
        // SAFETY: the device is valid (type invariant); `attrs` is plain data.
        let attrs = unsafe { &(*self.as_raw()).attrs };
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        DeviceCaps {
            vendor_id: attrs.vendor_id,
            vendor_part_id: attrs.vendor_part_id,
            max_qp: count(attrs.max_qp),
            max_qp_wr: count(attrs.max_qp_wr),
            max_send_sge: count(attrs.max_send_sge),
            max_recv_sge: count(attrs.max_recv_sge),
            max_cq: count(attrs.max_cq),
            max_cqe: count(attrs.max_cqe),
            max_mr: count(attrs.max_mr),
            max_pd: count(attrs.max_pd),
            max_mr_size: attrs.max_mr_size,
            max_qp_rd_atom: count(attrs.max_qp_rd_atom),
            max_qp_init_rd_atom: count(attrs.max_qp_init_rd_atom),
            max_fast_reg_page_list_len: attrs.max_fast_reg_page_list_len,
            atomics: attrs.atomic_cap != sys::ib_atomic_cap_IB_ATOMIC_NONE,
        }
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

    /// Entry `index` of a port's GID table (`rdma_query_gid`); unused entries are errors.
    pub fn query_gid(&self, port: u32, index: u32) -> Result<Gid> {
        let index = i32::try_from(index).map_err(|_| EINVAL)?;
        let mut gid = sys::ib_gid::default();
        // SAFETY: the device is valid; `gid` is writable for the call; the IB core checks
        // the port and index.
        to_result(unsafe { sys::rdma_query_gid(self.as_raw(), port, index, &mut gid) })?;
        // SAFETY: `raw` covers the whole union, and every byte pattern is a valid `[u8; 16]`.
        Ok(Gid(unsafe { gid.raw }))
    }
}

/// A registration reference to a device (`ib_device_try_get` / `ib_device_put`): while
/// one exists the device stays registered and its memory valid.
pub struct DeviceRef(NonNull<sys::ib_device>);

impl DeviceRef {
    /// The registered device named `name` (what `rdma link` shows), or `ENODEV`.
    ///
    /// Device clients ([`crate::client`]) are the way to follow devices as they come and
    /// go; this finds one by the name a user gave (a module parameter, a configfs
    /// attribute). May sleep, and never from a client's `add` or `remove`: on kernels
    /// whose IB core keeps its lookup to itself, the binding layer looks through a
    /// transient client of its own, which waits for the client lock those callbacks hold.
    pub fn by_name(name: &core::ffi::CStr) -> Result<Self> {
        // The reference taken is the one `DeviceRef` owns.
        NonNull::new(sys::c_api::device_get_by_name(name))
            .map(Self)
            .ok_or(ENODEV)
    }
}

// SAFETY: the reference is a counter in the device; taking and dropping it is safe from
// any thread, and `Device` itself is only used through shared references.
unsafe impl Send for DeviceRef {}
// SAFETY: as above: `&DeviceRef` gives only `&Device`.
unsafe impl Sync for DeviceRef {}

impl Deref for DeviceRef {
    type Target = Device;

    fn deref(&self) -> &Device {
        // SAFETY: the reference keeps the device registered, so valid, while `self` lives.
        unsafe { Device::from_raw(self.0.as_ptr()) }
    }
}

impl Clone for DeviceRef {
    fn clone(&self) -> Self {
        // SAFETY: the device is valid, and `self` holds a reference, so the count is not
        // zero and another may be taken unconditionally.
        unsafe { sys::tilde_rdma_device_get(self.0.as_ptr()) };
        Self(self.0)
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        // SAFETY: `self` owns one reference, given back once.
        unsafe { sys::ib_device_put(self.0.as_ptr()) };
    }
}

/// Whether the caller may sleep, which tearing down a verbs object does (the driver
/// waits for its own references). If it may not (a softirq completion handler dropped
/// the last owner), the object is leaked with a dmesg line naming it, and so is a
/// reference to its device, which then never finishes unregistering: a leak and a hung
/// `rdma link delete` are safe, a sleep in atomic context or a device freed under a live
/// object is not.
///
/// The caller holds a reference to `device` (every verbs object does).
pub(crate) fn teardown_may_sleep(device: &Device, what: &str) -> bool {
    // SAFETY: a pure query of the current context.
    if unsafe { sys::tilde_rdma_may_sleep() } {
        return true;
    }
    pr_err!(
        "{}: {} dropped in atomic context; leaking it (drop verbs objects where sleeping is allowed)\n",
        device.name(),
        what
    );
    // SAFETY: the device is valid and the caller holds a reference, so the count is not
    // zero; this one is never given back.
    unsafe { sys::tilde_rdma_device_get(device.as_raw()) };
    false
}

/// An asynchronous event of a device (`struct ib_event`), as its event handlers get it.
#[derive(Clone, Copy, Debug)]
pub struct DeviceEvent {
    /// `IB_EVENT_*`.
    pub kind: u32,
    /// The port, for the port events (`PORT_ACTIVE`, `PORT_ERR`, `GID_CHANGE` ...).
    pub port: Option<u32>,
}

impl DeviceEvent {
    /// The event's name, as the IB core's `ib_event_msg` has it ("port active", "port
    /// error" ...; those of QP, CQ and SRQ events are not needed by device handlers).
    pub fn name(&self) -> &'static str {
        match self.kind {
            sys::ib_event_type_IB_EVENT_PORT_ACTIVE => "port active",
            sys::ib_event_type_IB_EVENT_PORT_ERR => "port error",
            sys::ib_event_type_IB_EVENT_LID_CHANGE => "LID change",
            sys::ib_event_type_IB_EVENT_PKEY_CHANGE => "P_key change",
            sys::ib_event_type_IB_EVENT_SM_CHANGE => "SM change",
            sys::ib_event_type_IB_EVENT_CLIENT_REREGISTER => "client reregister",
            sys::ib_event_type_IB_EVENT_GID_CHANGE => "GID changed",
            sys::ib_event_type_IB_EVENT_DEVICE_FATAL => "device fatal",
            _ => "other event",
        }
    }
}

/// What to do with a device's asynchronous events ([`EventWatch`]).
pub trait DeviceEvents: 'static {
    /// An event of `device`. Called from the IB core's event dispatch, which may be
    /// atomic context: no sleeping.
    fn event(device: &Device, event: DeviceEvent);
}

/// A registered event handler of one device (`ib_register_event_handler`), calling
/// `T::event` for each event until dropped. Drop it before the device goes (a client's
/// `remove`).
pub struct EventWatch<T: DeviceEvents> {
    handler: NonNull<sys::ib_event_handler>,
    _events: core::marker::PhantomData<T>,
}

// SAFETY: the handler is the IB core's to call; dropping it unregisters it, from any
// thread that may sleep.
unsafe impl<T: DeviceEvents> Send for EventWatch<T> {}

impl<T: DeviceEvents> EventWatch<T> {
    /// Registers a handler for `device`'s events. May sleep.
    pub fn new(device: &Device) -> Result<Self> {
        // SAFETY: all-zero is the state `INIT_IB_EVENT_HANDLER` starts from (its list
        // head is written by the registration).
        let mut handler: sys::ib_event_handler = unsafe { core::mem::zeroed() };
        handler.device = device.as_raw();
        handler.handler = Some(event_callback::<T>);
        let handler = NonNull::from(KBox::leak(KBox::new(handler, GFP_KERNEL)?));
        // SAFETY: a handler for a registered device, at a stable address until the drop
        // unregisters it.
        unsafe { sys::ib_register_event_handler(handler.as_ptr()) };
        Ok(Self {
            handler,
            _events: core::marker::PhantomData,
        })
    }
}

impl<T: DeviceEvents> Drop for EventWatch<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, unregistered once, here; then no call reaches it
        // (the IB core serialises unregistration with dispatch), so its box can go.
        unsafe {
            sys::ib_unregister_event_handler(self.handler.as_ptr());
            drop(KBox::from_raw(self.handler.as_ptr()));
        }
    }
}

/// An `ib_event` as a [`DeviceEvent`].
///
/// # Safety
///
/// `event` is a valid event for the call.
unsafe fn decode_event(event: *const sys::ib_event) -> DeviceEvent {
    // SAFETY: the caller passes a valid event.
    let event = unsafe { &*event };
    let kind = event.event;
    let port = matches!(
        kind,
        sys::ib_event_type_IB_EVENT_PORT_ACTIVE
            | sys::ib_event_type_IB_EVENT_PORT_ERR
            | sys::ib_event_type_IB_EVENT_LID_CHANGE
            | sys::ib_event_type_IB_EVENT_PKEY_CHANGE
            | sys::ib_event_type_IB_EVENT_SM_CHANGE
            | sys::ib_event_type_IB_EVENT_CLIENT_REREGISTER
            | sys::ib_event_type_IB_EVENT_GID_CHANGE
    )
    // SAFETY: for port events the union holds the port number.
    .then(|| unsafe { event.element.port_num });
    DeviceEvent { kind, port }
}

/// `ib_event_handler.handler`.
///
/// # Safety
///
/// Called by the IB core with a handler registered by `EventWatch<T>` and its event.
unsafe extern "C" fn event_callback<T: DeviceEvents>(
    handler: *mut sys::ib_event_handler,
    event: *mut sys::ib_event,
) {
    // SAFETY: the IB core passes the registered handler and a valid event, for the call.
    let (raw, event) = unsafe { ((*handler).device, decode_event(event)) };
    // SAFETY: a handler's device is registered while the handler is.
    let device = unsafe { Device::from_raw(raw) };
    T::event(device, event);
}

/// What to do with a device's asynchronous events, with state: the handler an
/// [`EventRegistration`] keeps.
pub trait EventHandler: Send + Sync + 'static {
    /// An event of the device. Called from the IB core's event dispatch, which may be
    /// atomic context: no sleeping.
    fn event(this: &Arc<Self>, event: DeviceEvent);
}

/// The registered `ib_event_handler` and what it calls, in one allocation.
#[repr(C)]
struct HandlerBox<T> {
    /// First: the IB core's pointer to it is the box's.
    handler: sys::ib_event_handler,
    data: Arc<T>,
}

/// A registered event handler of one device (`ib_register_event_handler`) calling
/// `T::event` with `data` for each event until dropped. Drop it before the device goes.
pub struct EventRegistration<T: EventHandler> {
    raw: NonNull<HandlerBox<T>>,
}

// SAFETY: the handler is the IB core's to call; dropping it unregisters it, from any
// thread that may sleep; `T` is `Send + Sync`.
unsafe impl<T: EventHandler> Send for EventRegistration<T> {}
// SAFETY: as above; nothing is reachable through `&self`.
unsafe impl<T: EventHandler> Sync for EventRegistration<T> {}

impl<T: EventHandler> EventRegistration<T> {
    /// Registers `data`'s handler for `device`'s events. May sleep.
    pub fn new(device: &Device, data: Arc<T>) -> Result<Self> {
        // SAFETY: all-zero is the state `INIT_IB_EVENT_HANDLER` starts from (its list
        // head is written by the registration).
        let mut handler: sys::ib_event_handler = unsafe { core::mem::zeroed() };
        handler.device = device.as_raw();
        handler.handler = Some(handler_callback::<T>);
        let raw = NonNull::from(KBox::leak(KBox::new(
            HandlerBox { handler, data },
            GFP_KERNEL,
        )?));
        // SAFETY: a handler for a registered device, at a stable address until the drop
        // unregisters it.
        unsafe { sys::ib_register_event_handler(core::ptr::addr_of_mut!((*raw.as_ptr()).handler)) };
        Ok(Self { raw })
    }
}

impl<T: EventHandler> Drop for EventRegistration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, unregistered once, here; then no call reaches it
        // (the IB core serialises unregistration with dispatch), so its box can go.
        unsafe {
            sys::ib_unregister_event_handler(core::ptr::addr_of_mut!((*self.raw.as_ptr()).handler));
            drop(KBox::from_raw(self.raw.as_ptr()));
        }
    }
}

/// `ib_event_handler.handler` of an [`EventRegistration`].
///
/// # Safety
///
/// Called by the IB core with a handler registered by `EventRegistration<T>` (the first
/// field of its `HandlerBox<T>`) and its event.
unsafe extern "C" fn handler_callback<T: EventHandler>(
    handler: *mut sys::ib_event_handler,
    event: *mut sys::ib_event,
) {
    // SAFETY: the handler is the first field of a live `HandlerBox<T>` (`repr(C)`), which
    // is only shared while registered; the event is valid for the call.
    let (data, event) = unsafe {
        (
            &(*handler.cast::<HandlerBox<T>>()).data,
            decode_event(event),
        )
    };
    T::event(data, event);
}
