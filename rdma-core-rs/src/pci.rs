// SPDX-License-Identifier: GPL-2.0
//! PCI drivers: the edge between the kernel's PCI core and a hardware driver written on
//! rdma_core.
//!
//! A driver implements [`Driver`] (its probe and remove, with the state of one bound
//! function as [`Driver::Data`]), declares the functions it drives with
//! [`pci_device_table!`](crate::pci_device_table) (which also gives the module its
//! `pci:` alias, so udev loads it), and keeps a [`Registration`] for as long as the
//! module is loaded. The probe gets a [`Device`]: an enabled function, whose BARs it maps
//! as [`Bar`]s (bounds-checked big-endian register access) and for which it allocates
//! coherent DMA memory as [`Coherent`] blocks, and whose MSI-X vectors it takes as
//! [`IrqVectors`] with an [`IrqHandler`] on each; each is given back on drop. None of it
//! needs `unsafe` in the driver.
//!
//! The kernel crate's own PCI abstractions exist on 7.x and not on 6.12; this one is the
//! same on every kernel (the driver structure and the inline accessors are C helpers in
//! the binding layer), so nothing above it knows which kernel it runs on. Only the
//! device table's symbol name differs (`cargo xtask kmod` probes it).

// `core`'s: the kernel crate's prelude has its own on some kernels (6.12).
use core::ffi::CStr;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

use kernel::error::to_result;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::sys;

/// One entry of a PCI device table: a vendor and device ID, any subsystem.
#[repr(transparent)]
pub struct DeviceId(sys::pci_device_id);

impl DeviceId {
    /// The function `vendor:device`, whatever its subsystem IDs and class.
    pub const fn new(vendor: u16, device: u16) -> Self {
        let mut id = Self::END.0;
        id.vendor = vendor as u32;
        id.device = device as u32;
        id.subvendor = u32::MAX; // PCI_ANY_ID
        id.subdevice = u32::MAX;
        Self(id)
    }

    /// The all-zero entry that ends a table.
    // SAFETY: `pci_device_id` is integers only; all-zero is the table's terminator.
    pub const END: Self = Self(unsafe { core::mem::zeroed() });
}

/// A device table as the PCI core and modpost read it: the entries, then [`DeviceId::END`].
/// Made by [`pci_device_table!`](crate::pci_device_table), which also exports it under the
/// name modpost looks for.
#[repr(transparent)]
pub struct DeviceTable<const N: usize>(pub [DeviceId; N]);

impl<const N: usize> DeviceTable<N> {
    fn as_ptr(&'static self) -> *const sys::pci_device_id {
        self.0.as_ptr().cast()
    }
}

/// The device table of a PCI driver module: `pci_device_table!(NAME, "module_name",
/// [(vendor, device), ...])` defines `NAME` and exports it as `MODULE_DEVICE_TABLE(pci,
/// NAME)` does in C, so modpost writes the module's `pci:v...d...` aliases.
#[cfg(tilde_device_table_kmod)]
#[macro_export]
macro_rules! pci_device_table {
    ($name:ident, $module:literal, [$(($vendor:expr, $device:expr)),+ $(,)?]) => {
        // What `MODULE_DEVICE_TABLE` names it on this kernel:
        // `__mod_device_table__kmod_<module>__pci__<table>`.
        #[used]
        #[export_name = concat!("__mod_device_table__kmod_", $module, "__pci__", stringify!($name))]
        static $name: $crate::pci::DeviceTable<{ [$(($vendor, $device)),+].len() + 1 }> =
            $crate::pci::DeviceTable([$($crate::pci::DeviceId::new($vendor, $device),)+
                $crate::pci::DeviceId::END]);
    };
}

/// The device table of a PCI driver module (see the other definition); kernels before
/// `__mod_device_table__` name it `__mod_pci__<table>_device_table`.
#[cfg(not(tilde_device_table_kmod))]
#[macro_export]
macro_rules! pci_device_table {
    ($name:ident, $module:literal, [$(($vendor:expr, $device:expr)),+ $(,)?]) => {
        #[used]
        #[export_name = concat!("__mod_pci__", stringify!($name), "_device_table")]
        static $name: $crate::pci::DeviceTable<{ [$(($vendor, $device)),+].len() + 1 }> =
            $crate::pci::DeviceTable([$($crate::pci::DeviceId::new($vendor, $device),)+
                $crate::pci::DeviceId::END]);
    };
}

/// A PCI driver.
pub trait Driver: Sized + 'static {
    /// What the driver keeps for one bound function, from its probe to its remove.
    type Data: Send + Sync + 'static;

    /// The driver's name (`/sys/bus/pci/drivers/<name>`).
    const NAME: &'static CStr;

    /// Binds a function that matched the table. The function is enabled; the driver
    /// maps its BARs, sets bus mastering and its DMA mask, and brings it up. An error
    /// leaves the function unbound (and disabled again).
    fn probe(dev: &Device) -> Result<Self::Data>;

    /// Unbinds it (driver unload, sysfs unbind, hot removal): the driver quiesces the
    /// function and gives everything back; `data` is dropped after this returns, then
    /// bus mastering is cleared and the function disabled.
    fn remove(dev: &Device, data: &mut Self::Data);
}

/// A bound, enabled PCI function, as the probe and remove see it.
pub struct Device {
    raw: NonNull<sys::pci_dev>,
}

// SAFETY: a `pci_dev` is the PCI core's, usable from any thread; the methods here are the
// ones the PCI API allows from process context on a bound device.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// The function's address, `dddd:bb:dd.f`, as dmesg lines name it.
    pub fn name(&self) -> &str {
        // SAFETY: `pci_name` is the device's name, a NUL-terminated string that lives as
        // long as the device.
        // `core`'s `from_ptr` on every kernel (7.x's lints prefer the kernel crate's
        // `from_char_ptr`, which 6.12's `CStr` has differently); the name is ASCII.
        #[allow(clippy::disallowed_methods)]
        let name = unsafe { CStr::from_ptr(sys::tilde_pci_name(self.raw.as_ptr()).cast()) };
        name.to_str().unwrap_or("?")
    }

    /// The vendor ID.
    pub fn vendor_id(&self) -> u16 {
        // SAFETY: a live device.
        unsafe { sys::tilde_pci_vendor(self.raw.as_ptr()) }
    }

    /// The device ID.
    pub fn device_id(&self) -> u16 {
        // SAFETY: a live device.
        unsafe { sys::tilde_pci_device(self.raw.as_ptr()) }
    }

    /// Its `struct device` (`&pdev->dev`), which DMA is mapped for.
    pub(crate) fn dma_device(&self) -> *mut sys::device {
        // SAFETY: a live device; the pointer is into it.
        unsafe { sys::tilde_pci_dma_device(self.raw.as_ptr()) }
    }

    /// A counted reference to it, to keep with the driver's data.
    pub fn get(&self) -> DeviceRef {
        DeviceRef::new(self)
    }

    /// Lets the function master the bus (DMA, MSI-X).
    pub fn set_master(&self) {
        // SAFETY: a live, enabled device.
        unsafe { sys::pci_set_master(self.raw.as_ptr()) };
    }

    /// Sets the streaming and coherent DMA masks to `bits` address bits.
    pub fn set_dma_mask(&self, bits: u32) -> Result {
        if !(24..=64).contains(&bits) {
            return Err(EINVAL);
        }
        // SAFETY: a live device.
        to_result(unsafe { sys::tilde_pci_set_dma_mask(self.raw.as_ptr(), bits) })
    }

    /// Saves the function's configuration space (`pci_save_state`), for a device reset
    /// that takes it away; [`Device::restore_state`] writes it back.
    pub fn save_state(&self) -> Result {
        // SAFETY: a live, enabled device.
        to_result(unsafe { sys::pci_save_state(self.raw.as_ptr()) })
    }

    /// Writes back the configuration space [`Device::save_state`] saved.
    pub fn restore_state(&self) {
        // SAFETY: a live device; without a saved state the call does nothing.
        unsafe { sys::pci_restore_state(self.raw.as_ptr()) };
    }

    /// The 16-bit configuration register at `offset` (all ones from a function that is
    /// not answering).
    pub fn read_config_u16(&self, offset: u16) -> Result<u16> {
        let mut value = 0u16;
        // SAFETY: a live device; `value` is written by the call.
        to_result(unsafe {
            sys::pci_read_config_word(self.raw.as_ptr(), c_int::from(offset), &mut value)
        })?;
        Ok(value)
    }

    /// Requests memory BAR `bar` for the driver and maps all of it.
    pub fn map_bar(&self, bar: u32) -> Result<Bar> {
        let index = c_int::try_from(bar).map_err(|_| EINVAL)?;
        if bar > 5 {
            return Err(EINVAL);
        }
        let pdev = self.raw.as_ptr();
        // SAFETY: a live device and a BAR index in range.
        let (len, is_mem) = unsafe {
            (
                sys::tilde_pci_resource_len(pdev, index),
                sys::tilde_pci_resource_is_mem(pdev, index),
            )
        };
        if len == 0 || !is_mem {
            pr_err!("{}: BAR {} is not a memory BAR\n", self.name(), bar);
            return Err(ENODEV);
        }
        let len = usize::try_from(len).map_err(|_| EINVAL)?;
        // SAFETY: a live device; the name is static.
        to_result(unsafe {
            sys::pci_request_region(pdev, index, crate::sys::kernel_api::c_str(c"tilde"))
        })
        .inspect_err(|_| pr_err!("{}: BAR {} is in use\n", self.name(), bar))?;
        // SAFETY: the region is ours; 0 maps the whole BAR.
        let base = unsafe { sys::pci_iomap(pdev, index, 0) };
        let Some(base) = NonNull::new(base.cast::<u8>()) else {
            // SAFETY: requested above.
            unsafe { sys::pci_release_region(pdev, index) };
            pr_err!("{}: cannot map BAR {}\n", self.name(), bar);
            return Err(ENOMEM);
        };
        Ok(Bar {
            dev: DeviceRef::new(self),
            base,
            len,
            index,
        })
    }

    /// `size` bytes of zeroed DMA-coherent memory, naturally aligned to the smallest
    /// power of two pages that holds it, for the function's DMA.
    pub fn alloc_coherent(&self, size: usize) -> Result<Coherent> {
        if size == 0 {
            return Err(EINVAL);
        }
        let mut bus = 0u64;
        // SAFETY: a live device; `bus` is written by the call.
        let cpu = unsafe { sys::tilde_pci_alloc_coherent(self.raw.as_ptr(), size, &mut bus) };
        let cpu = NonNull::new(cpu.cast::<u8>()).ok_or(ENOMEM)?;
        Ok(Coherent {
            dev: DeviceRef::new(self),
            cpu,
            bus,
            size,
        })
    }
}

impl Device {
    /// Between `min` and `max` MSI-X vectors, as many as the function and the system give.
    pub fn alloc_msix<H: IrqHandler>(&self, min: u32, max: u32) -> Result<IrqVectors<H>> {
        let max = max.min(MAX_VECTORS as u32);
        if min == 0 || min > max {
            return Err(EINVAL);
        }
        // SAFETY: a live, enabled device.
        let count = unsafe { sys::tilde_pci_alloc_msix(self.raw.as_ptr(), min, max) };
        let count = u32::try_from(count).map_err(|_| Error::from_errno(count))?;
        Ok(IrqVectors {
            dev: DeviceRef::new(self),
            count,
            actions: [IrqVectors::<H>::NO_ACTION; MAX_VECTORS],
        })
    }
}

/// What runs when a vector interrupts, in hard interrupt context: no sleeping, no
/// allocation.
pub trait IrqHandler: Send + Sync + 'static {
    /// Handles an interrupt; false if it was not the device's (shared lines only).
    fn handle(&self) -> bool;
}

/// The most MSI-X vectors one [`IrqVectors`] holds.
pub const MAX_VECTORS: usize = 16;

/// A function's MSI-X vectors and the handlers requested on them: on drop, every
/// handler is freed (waiting for one that runs), then the vectors.
pub struct IrqVectors<H: IrqHandler> {
    dev: DeviceRef,
    count: u32,
    actions: [Option<(NonNull<sys::tilde_irq>, Arc<H>)>; MAX_VECTORS],
}

// SAFETY: the actions are the kernel's; freeing them is allowed from any process context.
unsafe impl<H: IrqHandler> Send for IrqVectors<H> {}
// SAFETY: `&self` methods only read the count.
unsafe impl<H: IrqHandler> Sync for IrqVectors<H> {}

impl<H: IrqHandler> IrqVectors<H> {
    const NO_ACTION: Option<(NonNull<sys::tilde_irq>, Arc<H>)> = None;

    /// How many vectors the function got.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The handler requested on `vector`, if any.
    pub fn handler(&self, vector: u32) -> Option<&H> {
        let index = usize::try_from(vector).ok()?;
        self.actions
            .get(index)?
            .as_ref()
            .map(|(_, handler)| &**handler)
    }

    /// Requests vector `vector` with `handler` (shown as `name` in /proc/interrupts).
    /// The handler may run at once.
    pub fn request(&mut self, vector: u32, name: &'static CStr, handler: Arc<H>) -> Result {
        let slot = usize::try_from(vector)
            .ok()
            .filter(|_| vector < self.count)
            .and_then(|index| self.actions.get_mut(index))
            .ok_or(EINVAL)?;
        if slot.is_some() {
            return Err(EBUSY);
        }
        let mut action = core::ptr::null_mut();
        let data = core::ptr::from_ref::<H>(&handler)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: `data` points into the `Arc` kept beside the action, so it outlives
        // every call of the handler (the action is freed first, on drop); the name is
        // static.
        to_result(unsafe {
            sys::tilde_pci_request_irq(
                self.dev.0.raw.as_ptr(),
                vector,
                Some(irq_callback::<H>),
                data,
                crate::sys::kernel_api::c_str(name),
                &mut action,
            )
        })?;
        let action = NonNull::new(action).ok_or(EINVAL)?;
        *slot = Some((action, handler));
        Ok(())
    }
}

impl<H: IrqHandler> Drop for IrqVectors<H> {
    fn drop(&mut self) {
        for (action, handler) in self.actions.iter_mut().filter_map(Option::take) {
            // SAFETY: requested in `request`, freed once; the handler's data is dropped
            // after the kernel stopped calling it.
            unsafe { sys::tilde_pci_free_irq(action.as_ptr()) };
            drop(handler);
        }
        // SAFETY: allocated in `Device::alloc_msix`; no handler is left on them.
        unsafe { sys::pci_free_irq_vectors(self.dev.0.raw.as_ptr()) };
    }
}

/// The interrupt trampoline for handler type `H`.
///
/// # Safety
///
/// Called by the C action only, with the `H` its `IrqVectors` keeps alive.
unsafe extern "C" fn irq_callback<H: IrqHandler>(data: *mut c_void) -> bool {
    // SAFETY: see above.
    let handler = unsafe { &*data.cast_const().cast::<H>() };
    handler.handle()
}

/// A counted reference to a function ([`Device::get`]): what a driver keeps to allocate
/// for it outside its probe (a verb creating a queue), and what a mapping or an
/// allocation keeps for its own release. It keeps the `pci_dev` alive, not the binding:
/// the driver drops it with its data at remove.
pub struct DeviceRef(Device);

impl DeviceRef {
    fn new(dev: &Device) -> Self {
        // SAFETY: a live device; the reference is dropped with `Self`.
        unsafe { sys::pci_dev_get(dev.raw.as_ptr()) };
        Self(Device { raw: dev.raw })
    }
}

impl core::ops::Deref for DeviceRef {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.0
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        // SAFETY: taken in `new`.
        unsafe { sys::pci_dev_put(self.0.raw.as_ptr()) };
    }
}

/// A memory BAR, requested and mapped; unmapped and released on drop. Keep it no longer
/// than the driver's data (the remove drops it).
pub struct Bar {
    dev: DeviceRef,
    base: NonNull<u8>,
    len: usize,
    index: c_int,
}

// SAFETY: MMIO is reachable from any thread; the registers' meaning is the driver's.
unsafe impl Send for Bar {}
// SAFETY: each access is one `ioread32be`/`iowrite32be`.
unsafe impl Sync for Bar {}

impl Bar {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: a mapped BAR has a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn register(&self, offset: usize) -> Option<*mut c_void> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: in the mapping (checked above).
        Some(unsafe { self.base.as_ptr().add(offset) }.cast())
    }

    /// The mapping's address, for the MMIO a driver's own edge does (its fast path's
    /// doorbells, written in place); valid while `self` lives.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// The big-endian 32-bit register at `offset`, in CPU order; `None` past the end or
    /// unaligned.
    pub fn read_be32(&self, offset: usize) -> Option<u32> {
        let register = self.register(offset)?;
        // SAFETY: an aligned register inside the mapped BAR.
        Some(unsafe { sys::tilde_ioread32be(register) })
    }

    /// Writes `value` big-endian to the 32-bit register at `offset`; `None` past the end
    /// or unaligned.
    pub fn write_be32(&self, offset: usize, value: u32) -> Option<()> {
        let register = self.register(offset)?;
        // SAFETY: an aligned register inside the mapped BAR.
        unsafe { sys::tilde_iowrite32be(value, register) };
        Some(())
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        let pdev = self.dev.0.raw.as_ptr();
        // SAFETY: mapped and requested in `Device::map_bar`, released once.
        unsafe {
            sys::pci_iounmap(pdev, self.base.as_ptr().cast());
            sys::pci_release_region(pdev, self.index);
        }
    }
}

/// DMA-coherent memory the function and the CPU share; freed on drop. The CPU reaches it
/// by copies in and out (the device may write it at any time).
pub struct Coherent {
    dev: DeviceRef,
    cpu: NonNull<u8>,
    bus: u64,
    size: usize,
}

// SAFETY: the memory is owned by `Self`; copies are bounds-checked.
unsafe impl Send for Coherent {}
// SAFETY: as above; concurrent copies race only as the device's own accesses do.
unsafe impl Sync for Coherent {}

impl Coherent {
    /// The address the function reaches it at.
    pub fn bus_address(&self) -> u64 {
        self.bus
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// The CPU's address of it, for a driver's edge that shares it with the device in
    /// place (its fast path's rings and doorbell records); valid while `self` lives.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.cpu
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn range(&self, offset: usize, len: usize) -> Option<*mut u8> {
        if offset.checked_add(len)? > self.size {
            return None;
        }
        // SAFETY: in the allocation (checked above).
        Some(unsafe { self.cpu.as_ptr().add(offset) })
    }

    /// Copies `data` in at `offset`; `None` if it does not fit.
    pub fn write(&self, offset: usize, data: &[u8]) -> Option<()> {
        let at = self.range(offset, data.len())?;
        // SAFETY: in bounds (checked); `data` is not in this memory (it is borrowed
        // shared while this memory is only reached through raw pointers).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), at, data.len()) };
        Some(())
    }

    /// Copies `buf.len()` bytes out from `offset`; `None` if they do not fit.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Option<()> {
        let at = self.range(offset, buf.len())?;
        // SAFETY: in bounds (checked); `buf` is a distinct, exclusive buffer.
        unsafe { core::ptr::copy_nonoverlapping(at, buf.as_mut_ptr(), buf.len()) };
        Some(())
    }
}

impl Drop for Coherent {
    fn drop(&mut self) {
        // SAFETY: allocated in `Device::alloc_coherent` for this device, freed once.
        unsafe {
            sys::tilde_pci_free_coherent(
                self.dev.0.raw.as_ptr(),
                self.size,
                self.cpu.as_ptr().cast(),
                self.bus,
            )
        };
    }
}

/// A registered PCI driver: unregistered on drop (which unbinds every function first).
pub struct Registration<T: Driver> {
    raw: NonNull<sys::pci_driver>,
    _driver: PhantomData<T>,
}

// SAFETY: the driver structure is the PCI core's once registered; unregistering is
// allowed from any process context.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: `Self` has no methods that touch it.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Registers driver `T` for the functions of `table`; the PCI core probes the ones
    /// present at once. `owner` is the driver's module.
    pub fn new<const N: usize>(
        owner: &'static kernel::ThisModule,
        table: &'static DeviceTable<N>,
    ) -> Result<Self> {
        let name = crate::sys::kernel_api::c_str(T::NAME);
        // SAFETY: the name and the table are static; the callbacks are this driver's.
        let raw = unsafe {
            sys::tilde_pci_driver_new(
                name,
                table.as_ptr(),
                Some(probe_callback::<T>),
                Some(remove_callback::<T>),
            )
        };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        // SAFETY: a fresh driver structure, freed by the helper if registration fails.
        to_result(unsafe {
            sys::tilde_pci_driver_register(raw.as_ptr(), owner.as_ptr().cast(), name)
        })?;
        Ok(Self {
            raw,
            _driver: PhantomData,
        })
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; the helper unregisters (removing every bound
        // function) and frees it.
        unsafe { sys::tilde_pci_driver_unregister(self.raw.as_ptr()) };
    }
}

/// Disables the function again after a failed probe or a remove.
fn disable(pdev: *mut sys::pci_dev) {
    // SAFETY: a live device that `probe_callback` enabled.
    unsafe {
        sys::pci_clear_master(pdev);
        sys::pci_disable_device(pdev);
    }
}

/// The PCI core's `probe` for driver `T`.
///
/// # Safety
///
/// Called by the PCI core only, with a device matching `T`'s table.
unsafe extern "C" fn probe_callback<T: Driver>(
    pdev: *mut sys::pci_dev,
    _id: *const sys::pci_device_id,
) -> c_int {
    let Some(raw) = NonNull::new(pdev) else {
        return EINVAL.to_errno();
    };
    let dev = Device { raw };
    // The slot first: a probed function is never left without its data.
    let slot: KBox<MaybeUninit<T::Data>> = match KBox::new_uninit(GFP_KERNEL) {
        Ok(slot) => slot,
        Err(_) => return ENOMEM.to_errno(),
    };
    // SAFETY: the PCI core's device, bound to this driver for the call.
    if let Err(error) = to_result(unsafe { sys::pci_enable_device(pdev) }) {
        pr_err!("{}: cannot enable the function: {:?}\n", dev.name(), error);
        return error.to_errno();
    }
    match T::probe(&dev) {
        Ok(value) => {
            let data = KBox::into_raw(slot).cast::<T::Data>();
            // SAFETY: a fresh allocation of the right layout, written once; kept as the
            // device's driver data until `remove_callback` takes it back.
            unsafe {
                data.write(value);
                sys::tilde_pci_set_drvdata(pdev, data.cast());
            }
            0
        }
        Err(error) => {
            disable(pdev);
            error.to_errno()
        }
    }
}

/// The PCI core's `remove` for driver `T`.
///
/// # Safety
///
/// Called by the PCI core only, for a device `probe_callback::<T>` bound.
unsafe extern "C" fn remove_callback<T: Driver>(pdev: *mut sys::pci_dev) {
    let Some(raw) = NonNull::new(pdev) else {
        return;
    };
    let dev = Device { raw };
    // SAFETY: a device this driver probed successfully, so its driver data is the
    // `T::Data` `probe_callback` left there, taken back once here.
    let data = unsafe { sys::tilde_pci_get_drvdata(pdev) }.cast::<T::Data>();
    if data.is_null() {
        return;
    }
    // SAFETY: as above; from `KBox::into_raw` in `probe_callback`.
    let mut data = unsafe { KBox::from_raw(data) };
    T::remove(&dev, &mut data);
    drop(data);
    // SAFETY: the driver data is gone.
    unsafe { sys::tilde_pci_set_drvdata(pdev, core::ptr::null_mut()) };
    disable(pdev);
}
