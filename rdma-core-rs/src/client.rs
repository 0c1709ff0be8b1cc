// SPDX-License-Identifier: GPL-2.0
//! Device clients: the safe form of `struct ib_client`.
//!
//! A client is told of every RDMA device present when it registers and of every device
//! added or removed later. Each device gets the client's per-device state, created by
//! [`Client::add`] and handed back, by value, to [`Client::remove`].
//!
//! ```ignore
//! struct Logger;
//! impl Client for Logger {
//!     type DeviceData = ();
//!     fn add(device: &Device) -> Result<()> { pr_info!("{}\n", device.name()); Ok(()) }
//!     fn remove(_device: &Device, _data: ()) {}
//! }
//! rdma_core::ib_client!(Logger, c"logger");
//! // In module init; dropping the registration unregisters the client.
//! let registration = Registration::<Logger>::register()?;
//! ```

use core::{
    marker::PhantomData,
    mem::MaybeUninit,
    sync::atomic::{AtomicBool, Ordering},
};

use kernel::ffi::{c_int, c_void};
use kernel::{error::to_result, prelude::*, types::Opaque};

use crate::{device::Device, sys};

/// An IB client: what to do when a device comes and goes.
pub trait Client: 'static {
    /// State kept per device between `add` and `remove`. If it cannot be stored, it is
    /// dropped without `remove` being called, so its `Drop` must undo what `add` did.
    type DeviceData: Send;

    /// A device was registered (or was present when the client registered).
    ///
    /// An error means the client does not use this device: the IB core then never calls
    /// `remove` for it.
    fn add(device: &Device) -> Result<Self::DeviceData>;

    /// The device is going away, or the client is unregistering.
    fn remove(device: &Device, data: Self::DeviceData);
}

/// The `struct ib_client` of one [`Client`] type, in static storage as the IB core needs.
///
/// Made by [`ib_client!`](crate::ib_client), which also ties it to its type through
/// [`ClientStorage`].
pub struct ClientVTable {
    client: Opaque<sys::ib_client>,
    registered: AtomicBool,
}

// SAFETY: after construction Rust never touches `client` except by handing its address to
// the IB core, which serialises its own accesses with `clients_rwsem`; `registered` is
// atomic.
unsafe impl Sync for ClientVTable {}

impl ClientVTable {
    /// The `ib_client` for `T`, named `name` (the name shows in `rdma` tool output).
    pub const fn new<T: ClientStorage>(name: &'static core::ffi::CStr) -> Self {
        Self {
            client: Opaque::new(sys::ib_client {
                name: crate::sys::kernel_api::c_str(name),
                add: Some(add_callback::<T>),
                remove: Some(remove_callback::<T>),
                // SAFETY: all-zero is how C clients start too (a static `struct
                // ib_client` with designated initialisers); `ib_register_client`
                // initialises the counters and the client id.
                ..unsafe { MaybeUninit::zeroed().assume_init() }
            }),
            registered: AtomicBool::new(false),
        }
    }

    fn as_raw(&self) -> *mut sys::ib_client {
        self.client.get()
    }
}

/// Ties a [`Client`] type to its one static [`ClientVTable`].
///
/// # Safety
///
/// `vtable` must return the table built by `ClientVTable::new::<Self>` and no other;
/// [`ib_client!`](crate::ib_client) is the way to implement it.
pub unsafe trait ClientStorage: Client {
    /// The client's static table.
    fn vtable() -> &'static ClientVTable;
}

/// Declares the static `ib_client` of a [`Client`] type.
#[macro_export]
macro_rules! ib_client {
    ($client:ty, $name:expr) => {
        const _: () = {
            static VTABLE: $crate::client::ClientVTable =
                $crate::client::ClientVTable::new::<$client>($name);
            // SAFETY: `VTABLE` is the table built for `$client`.
            unsafe impl $crate::client::ClientStorage for $client {
                fn vtable() -> &'static $crate::client::ClientVTable {
                    &VTABLE
                }
            }
        };
    };
}

/// A registered client; dropping it unregisters the client, which calls
/// [`Client::remove`] for every device it was added to.
pub struct Registration<T: ClientStorage> {
    _client: PhantomData<T>,
}

impl<T: ClientStorage> Registration<T> {
    /// Registers the client (`ib_register_client`). `EBUSY` if it is registered already.
    pub fn register() -> Result<Self> {
        let vtable = T::vtable();
        if vtable.registered.swap(true, Ordering::AcqRel) {
            return Err(EBUSY);
        }
        // SAFETY: the table is static and not registered (checked just above), as
        // `ib_register_client` requires.
        if let Err(e) = to_result(unsafe { sys::ib_register_client(vtable.as_raw()) }) {
            vtable.registered.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(Self {
            _client: PhantomData,
        })
    }
}

impl<T: ClientStorage> Drop for Registration<T> {
    fn drop(&mut self) {
        let vtable = T::vtable();
        // SAFETY: `self` exists only while the table is registered.
        unsafe { sys::ib_unregister_client(vtable.as_raw()) };
        vtable.registered.store(false, Ordering::Release);
    }
}

/// `ib_client.add`.
///
/// # Safety
///
/// Called by the IB core with a registered device, for a registered `T::vtable()`.
unsafe extern "C" fn add_callback<T: ClientStorage>(ibdev: *mut sys::ib_device) -> c_int {
    // SAFETY: the IB core keeps the device registered during the callback.
    let device = unsafe { Device::from_raw(ibdev) };
    let data = match T::add(device) {
        Ok(data) => data,
        Err(e) => return e.to_errno(),
    };
    let boxed = match KBox::new(data, GFP_KERNEL) {
        Ok(boxed) => boxed,
        Err(_) => {
            // `data` was dropped by `KBox::new`; the IB core will not call `remove`.
            pr_err!("{}: no memory for client state\n", device.name());
            return ENOMEM.to_errno();
        }
    };
    // SAFETY: the device and the client are registered (callback contract); the client
    // data slot for this client exists while `add` runs.
    unsafe { sys::ib_set_client_data(ibdev, T::vtable().as_raw(), KBox::into_raw(boxed).cast()) };
    0
}

/// `ib_client.remove`.
///
/// # Safety
///
/// Called by the IB core with the device and the client data that `add_callback::<T>`
/// stored, once.
unsafe extern "C" fn remove_callback<T: ClientStorage>(
    ibdev: *mut sys::ib_device,
    client_data: *mut c_void,
) {
    if client_data.is_null() {
        return;
    }
    // SAFETY: `client_data` came from `KBox::into_raw` in `add_callback::<T>`, and the
    // IB core hands it back exactly once.
    let data = unsafe { KBox::<T::DeviceData>::from_raw(client_data.cast()) };
    // SAFETY: the IB core keeps the device registered during the callback.
    let device = unsafe { Device::from_raw(ibdev) };
    T::remove(device, KBox::into_inner(data));
}
