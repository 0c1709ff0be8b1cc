// SPDX-License-Identifier: GPL-2.0
//! InfiniBand network interfaces: a safe `struct net_device` of type
//! `ARPHRD_INFINIBAND` for an upper-layer protocol (IPoIB).
//!
//! A [`Driver`] becomes the interface's `net_device_ops`; the tables themselves are C
//! (`sys/netdev.c`: they hold the kernel's own functions, and their fields move between
//! kernels), and every callback reaches the driver through the netdev's private area. The
//! hard header is ib_ipoib's: `hard_header` pushes the 4-byte encapsulation header and,
//! in front of it, the 20-byte destination address as a pseudo header that
//! `start_xmit` takes off again, so the driver gets a [`TxPacket`] that starts at the
//! encapsulation header and names its destination. Statistics are the netdev's own
//! (`DEV_STATS_*`), read by `ip -s link`; `ethtool -i` names the driver.
//!
//! ```ignore
//! let registration = Registration::new(&config, Arc::new(MyInterface { .. }, GFP_KERNEL)?)?;
//! // `registration.netdev().to_ref()` for the contexts that are not netdev callbacks;
//! // dropping the registration unregisters the interface (its `stop` runs first).
//! ```

use core::ffi::{c_int, c_void, CStr};
use core::ptr::NonNull;

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

use crate::device::Device;
use crate::sys;

/// The length of an InfiniBand hardware address (flags, QPN, GID).
pub const ADDRESS_LEN: usize = 20;

/// What an interface does: its `net_device_ops`.
pub trait Driver: Send + Sync + 'static {
    /// `ndo_open`: the administrator brought the interface up.
    fn open(&self, dev: &NetDev) -> Result;
    /// `ndo_stop`: the interface goes down (also on unregistration).
    fn stop(&self, dev: &NetDev);
    /// `ndo_start_xmit`, in atomic context: send or drop `packet`, which is the
    /// driver's from now on.
    fn start_xmit(&self, dev: &NetDev, packet: TxPacket);
    /// `ndo_change_mtu`: refuse an MTU the administrator asks for, or say which the
    /// interface takes (the link may allow less than asked).
    fn change_mtu(&self, _dev: &NetDev, mtu: u32) -> Result<u32> {
        Ok(mtu)
    }
    /// `ndo_set_rx_mode`, in atomic context: the multicast list changed
    /// ([`NetDev::multicast_list`] reads it here).
    fn set_rx_mode(&self, _dev: &NetDev) {}
    /// IPoIB's `/sys/class/net/<if>/mode` read: whether the interface is in connected
    /// mode (else datagram).
    fn connected_mode(&self, _dev: &NetDev) -> Result<bool> {
        Ok(false)
    }
    /// IPoIB's mode written, with RTNL held: switch, and say which MTU the interface
    /// takes in the new mode (the stack hears of it through `dev_set_mtu`).
    fn set_connected_mode(&self, _dev: &NetDev, _connected: bool) -> Result<u32> {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
}

/// How an interface starts out.
pub struct Config<'a> {
    /// The name, with `%d` for the kernel to number (`c"ib%d"`).
    pub name: &'static CStr,
    /// The driver's name, for `ethtool -i`.
    pub driver: &'static CStr,
    /// The RDMA device the interface sits on: its parent in sysfs.
    pub device: &'a Device,
    /// The hardware address.
    pub address: [u8; ADDRESS_LEN],
    /// The link's broadcast address.
    pub broadcast: [u8; ADDRESS_LEN],
    /// The MTU until the link says otherwise.
    pub mtu: u32,
    /// The largest MTU the administrator may set.
    pub max_mtu: u32,
    /// Packets the queueing discipline holds in front of the driver.
    pub tx_queue_len: u32,
}

/// How a received packet was addressed (`skb->pkt_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    /// To this host.
    Host,
    /// To a multicast group.
    Multicast,
    /// To the broadcast group.
    Broadcast,
}

/// What [`NetDev::count`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A packet of so many bytes was sent.
    Sent(u32),
    /// A packet was dropped on transmit.
    TxDropped,
    /// A send failed.
    TxError,
    /// A received packet was dropped.
    RxDropped,
}

/// An interface's name, copied (`IFNAMSIZ` bytes, NUL-padded).
pub struct NetDevName([u8; 16]);

impl NetDevName {
    /// The name as text (empty if it is not UTF-8, which the kernel never makes).
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        self.0
            .get(..len)
            .and_then(|bytes| core::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl core::fmt::Display for NetDevName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered network interface, as its callbacks see it.
#[repr(transparent)]
pub struct NetDev(Opaque<sys::net_device>);

impl NetDev {
    /// # Safety
    ///
    /// `raw` is a live netdev for `'a`.
    unsafe fn from_raw<'a>(raw: *mut sys::net_device) -> &'a NetDev {
        // SAFETY: `NetDev` is a transparent wrapper; the caller vouches for the lifetime.
        unsafe { &*raw.cast::<NetDev>() }
    }

    fn as_raw(&self) -> *mut sys::net_device {
        self.0.get()
    }

    /// The interface's name (`ib0`), as it is now.
    pub fn name(&self) -> NetDevName {
        let mut name = NetDevName([0; 16]);
        // SAFETY: the netdev is live; `name` has room for IFNAMSIZ bytes.
        unsafe { sys::tilde_rdma_netdev_name(self.as_raw(), name.0.as_mut_ptr()) };
        name
    }

    /// A counted reference for contexts other than the netdev's callbacks.
    pub fn to_ref(&self) -> NetDevRef {
        // SAFETY: the netdev is live; the reference is given back in `NetDevRef::drop`.
        unsafe { sys::tilde_rdma_netdev_hold(self.as_raw()) };
        NetDevRef(NonNull::from(self))
    }

    /// Turns the carrier on or off (`netif_carrier_on`/`off`); any context.
    pub fn set_carrier(&self, on: bool) {
        // SAFETY: the netdev is live.
        unsafe { sys::tilde_rdma_netdev_carrier(self.as_raw(), on) }
    }

    /// Sets the MTU the link gives (capped at the maximum); any context.
    pub fn set_mtu(&self, mtu: u32) {
        // SAFETY: the netdev is live.
        unsafe { sys::tilde_rdma_netdev_set_mtu(self.as_raw(), mtu) }
    }

    /// Sets the hardware address; not from hard interrupt context.
    pub fn set_address(&self, address: &[u8; ADDRESS_LEN]) {
        // SAFETY: the netdev is live; `address` has the netdev's address length.
        unsafe { sys::tilde_rdma_netdev_set_addr(self.as_raw(), address.as_ptr()) }
    }

    /// Stops (`false`) or wakes (`true`) the transmit queue; any context.
    pub fn set_queue_running(&self, run: bool) {
        // SAFETY: the netdev is live.
        unsafe { sys::tilde_rdma_netdev_queue(self.as_raw(), run) }
    }

    /// Hands a received packet (`payload`, of `ethertype`) to the stack, copied. Not
    /// with interrupts off (the stack enables bottom halves).
    pub fn receive(&self, payload: &[u8], ethertype: u16, kind: PacketType) -> Result {
        let len = u32::try_from(payload.len()).map_err(|_| EINVAL)?;
        let pkt_type = match kind {
            PacketType::Host => 0,
            PacketType::Broadcast => 1,
            PacketType::Multicast => 2,
        };
        // SAFETY: the netdev is live; `payload` is readable for `len` bytes.
        let ret = unsafe {
            sys::tilde_rdma_netdev_rx(self.as_raw(), payload.as_ptr(), len, ethertype, pkt_type)
        };
        kernel::error::to_result(ret)
    }

    /// Counts in the interface's statistics; any context.
    pub fn count(&self, counter: Counter) {
        let (what, bytes) = match counter {
            Counter::Sent(bytes) => (0, bytes),
            Counter::TxDropped => (1, 0),
            Counter::TxError => (2, 0),
            Counter::RxDropped => (3, 0),
        };
        // SAFETY: the netdev is live.
        unsafe { sys::tilde_rdma_netdev_count(self.as_raw(), what, bytes) }
    }

    /// The multicast list's GIDs into `out`, how many were written. Only in
    /// [`Driver::set_rx_mode`], where the kernel holds the list's lock.
    pub fn multicast_list(&self, out: &mut [[u8; 16]]) -> usize {
        let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
        // SAFETY: the netdev is live and its address lock held (the method's contract,
        // documented; the list is only read); `out` has room for `max` GIDs.
        let n = unsafe { sys::tilde_rdma_netdev_mc_list(self.as_raw(), out.as_mut_ptr(), max) };
        usize::try_from(n).unwrap_or(0).min(out.len())
    }
}

/// A counted reference to a netdev (`dev_hold`), for the contexts that are not its
/// callbacks (completions, SA answers, work). Unregistration waits until every one is
/// dropped: drop them before the [`Registration`].
pub struct NetDevRef(NonNull<NetDev>);

// SAFETY: the reference count keeps the netdev's memory; its functions used here may be
// called from any thread.
unsafe impl Send for NetDevRef {}
// SAFETY: as above.
unsafe impl Sync for NetDevRef {}

impl core::ops::Deref for NetDevRef {
    type Target = NetDev;

    fn deref(&self) -> &NetDev {
        // SAFETY: the netdev is held (type invariant).
        unsafe { self.0.as_ref() }
    }
}

impl Clone for NetDevRef {
    fn clone(&self) -> Self {
        self.to_ref()
    }
}

impl Drop for NetDevRef {
    fn drop(&mut self) {
        // SAFETY: taken in `to_ref`, given back once.
        unsafe { sys::tilde_rdma_netdev_put(self.as_raw()) }
    }
}

/// A packet the stack hands to [`Driver::start_xmit`]: the encapsulation header first,
/// with its destination. Dropping it frees it as dropped; [`TxPacket::sent`] as sent.
pub struct TxPacket {
    skb: NonNull<sys::sk_buff>,
    destination: [u8; ADDRESS_LEN],
    ethertype: u16,
}

// SAFETY: an skb handed to a driver belongs to it, from any thread.
unsafe impl Send for TxPacket {}

impl TxPacket {
    /// The destination's hardware address.
    pub fn destination(&self) -> &[u8; ADDRESS_LEN] {
        &self.destination
    }

    /// The EtherType the stack gave the hard header.
    pub fn ethertype(&self) -> u16 {
        self.ethertype
    }

    /// Bytes, the encapsulation header included.
    pub fn len(&self) -> usize {
        // SAFETY: the skb is ours and live.
        usize::try_from(unsafe { sys::tilde_rdma_skb_len(self.skb.as_ptr()) }).unwrap_or(0)
    }

    /// Whether the packet has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the whole packet to the start of `out`; `EINVAL` if it does not fit.
    pub fn copy_to(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.len();
        let out = out.get_mut(..len).ok_or(EINVAL)?;
        let len32 = u32::try_from(len).map_err(|_| EINVAL)?;
        // SAFETY: the skb is live; `out` is writable for `len` bytes, which the skb has.
        let ret = unsafe { sys::tilde_rdma_skb_copy(self.skb.as_ptr(), out.as_mut_ptr(), len32) };
        kernel::error::to_result(ret).map(|()| len)
    }

    /// Frees the packet as sent (`dev_consume_skb_any`).
    pub fn sent(self) {
        let skb = self.skb;
        core::mem::forget(self);
        // SAFETY: the skb is ours, freed once (`self` is forgotten).
        unsafe { sys::tilde_rdma_skb_free(skb.as_ptr(), true) }
    }
}

impl Drop for TxPacket {
    fn drop(&mut self) {
        // SAFETY: the skb is ours, freed once.
        unsafe { sys::tilde_rdma_skb_free(self.skb.as_ptr(), false) }
    }
}

/// A registered interface; dropping it unregisters it (its `stop` first) and frees it.
pub struct Registration<T: Driver> {
    dev: NonNull<sys::net_device>,
    _driver: Arc<T>,
}

// SAFETY: the netdev is the kernel's, registered and unregistered from process context;
// the driver is `Send + Sync`.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: as above.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Allocates and registers an interface run by `driver`. May sleep.
    pub fn new(config: &Config<'_>, driver: Arc<T>) -> Result<Self> {
        let ops: &'static sys::tilde_rdma_netdev_ops = &Adapter::<T>::OPS;
        let data = core::ptr::from_ref::<T>(&driver)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: every pointer is valid for the call; `ops` and the names are static;
        // `data` points into the `Arc` kept in `Self`, which outlives the netdev's
        // callbacks (unregistered and freed in `drop` first).
        let dev = unsafe {
            sys::tilde_rdma_netdev_alloc(
                crate::sys::kernel_api::c_str(config.name),
                ops,
                data,
                crate::sys::kernel_api::c_str(config.driver),
                config.device.as_raw(),
                config.address.as_ptr(),
                config.broadcast.as_ptr(),
                config.mtu,
                config.max_mtu,
                config.tx_queue_len,
            )
        };
        let dev = NonNull::new(dev).ok_or(ENOMEM)?;
        // SAFETY: allocated above, not registered yet.
        let ret = unsafe { sys::tilde_rdma_netdev_register(dev.as_ptr()) };
        if ret != 0 {
            // SAFETY: never registered; freed once.
            unsafe { sys::tilde_rdma_netdev_free(dev.as_ptr()) };
            return Err(Error::from_errno(ret));
        }
        Ok(Self {
            dev,
            _driver: driver,
        })
    }

    /// The interface.
    pub fn netdev(&self) -> &NetDev {
        // SAFETY: registered until `drop`.
        unsafe { NetDev::from_raw(self.dev.as_ptr()) }
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; unregistering waits for the callbacks and every
        // `NetDevRef`; then nothing reaches the netdev and it is freed.
        unsafe {
            sys::tilde_rdma_netdev_unregister(self.dev.as_ptr());
            sys::tilde_rdma_netdev_free(self.dev.as_ptr());
        }
    }
}

/// The C callbacks of a [`Driver`] type.
struct Adapter<T>(core::marker::PhantomData<T>);

impl<T: Driver> Adapter<T> {
    const OPS: sys::tilde_rdma_netdev_ops = sys::tilde_rdma_netdev_ops {
        open: Some(Self::open),
        stop: Some(Self::stop),
        xmit: Some(Self::xmit),
        change_mtu: Some(Self::change_mtu),
        rx_mode: Some(Self::rx_mode),
        get_mode: Some(Self::get_mode),
        set_mode: Some(Self::set_mode),
    };

    /// The driver and the netdev a callback is for.
    ///
    /// # Safety
    ///
    /// `dev` is a live netdev a [`Registration`] of `T` made, `data` the `T` it stored in
    /// it (netdev.c passes both to every callback, while the netdev is registered).
    unsafe fn parts<'a>(dev: *mut sys::net_device, data: *mut c_void) -> (&'a T, &'a NetDev) {
        // SAFETY: see above.
        unsafe { (&*data.cast::<T>(), NetDev::from_raw(dev)) }
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn open(dev: *mut sys::net_device, data: *mut c_void) -> c_int {
        // SAFETY: called by netdev.c for a registered netdev (`Registration::new`).
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        match driver.open(dev) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn stop(dev: *mut sys::net_device, data: *mut c_void) {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        driver.stop(dev);
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn xmit(
        dev: *mut sys::net_device,
        data: *mut c_void,
        skb: *mut sys::sk_buff,
        daddr: *const u8,
        ethertype: u16,
    ) {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        let Some(skb) = NonNull::new(skb) else {
            return;
        };
        let mut destination = [0u8; ADDRESS_LEN];
        // SAFETY: netdev.c passes the 20 bytes it took off the packet.
        destination.copy_from_slice(unsafe { core::slice::from_raw_parts(daddr, ADDRESS_LEN) });
        driver.start_xmit(
            dev,
            TxPacket {
                skb,
                destination,
                ethertype,
            },
        );
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn change_mtu(
        dev: *mut sys::net_device,
        data: *mut c_void,
        mtu: c_int,
    ) -> c_int {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        let Ok(mtu) = u32::try_from(mtu) else {
            return EINVAL.to_errno();
        };
        match driver.change_mtu(dev, mtu).map(c_int::try_from) {
            Ok(Ok(taken)) => taken,
            Ok(Err(_)) => EINVAL.to_errno(),
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn rx_mode(dev: *mut sys::net_device, data: *mut c_void) {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        driver.set_rx_mode(dev);
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn get_mode(dev: *mut sys::net_device, data: *mut c_void) -> c_int {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        match driver.connected_mode(dev) {
            Ok(connected) => c_int::from(connected),
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by netdev.c only, with the arguments [`Adapter::parts`] requires.
    unsafe extern "C" fn set_mode(
        dev: *mut sys::net_device,
        data: *mut c_void,
        connected: bool,
    ) -> c_int {
        // SAFETY: as in `open`.
        let (driver, dev) = unsafe { Self::parts(dev, data) };
        match driver
            .set_connected_mode(dev, connected)
            .map(c_int::try_from)
        {
            Ok(Ok(mtu)) => mtu,
            Ok(Err(_)) => EINVAL.to_errno(),
            Err(e) => e.to_errno(),
        }
    }
}
