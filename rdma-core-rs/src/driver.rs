// SPDX-License-Identifier: GPL-2.0
//! The driver side of the IB core: a Rust trait that becomes `struct ib_device_ops`.
//!
//! A driver implements [`Driver`] for its device's state and registers it with
//! [`Registration::new`]. The layer makes the C table: one `extern "C"` function per op,
//! generic over the driver, that finds the driver's state for the objects the IB core
//! passes and calls the trait. The IB core allocates PDs, CQs, QPs and AHs itself, with
//! the size the table declares: each is an `ib_*` followed by the driver's state for it
//! ([`Driver::Pd`], [`Driver::Cq`] ...), created by the op that sets it up and dropped by
//! the one that destroys it. MRs are the driver's own allocation, the same layout.
//!
//! What differs between kernels in that C API is bridged in [`crate::sys::c_api`]
//! (`_ib_alloc_device`, the CQ resize slot, `reg_user_mr`), so a driver is written once.
//!
//! The ops take the IB core's own argument structures (`ib_qp_attr`, `ib_send_wr`,
//! `ib_wc` ...): they are plain data, and a driver is the place that reads them. Raw
//! object pointers are passed where a driver needs the IB core's fields of an object
//! (its CQs, its type); reading them is the driver's `unsafe`, at the FFI edge it is.

use core::mem::{size_of, MaybeUninit};
use core::ptr::NonNull;

use kernel::ffi::{c_int, c_uint};
use kernel::prelude::*;

use crate::sys;
use crate::sys::c_api;

/// An IB core object followed by its driver's state: the layout the IB core allocates
/// (`rdma_zalloc_drv_obj` with the table's `size_ib_*`), with the C object first as its
/// `container_of` requires.
#[repr(C)]
pub struct Object<C, T> {
    raw: C,
    data: MaybeUninit<T>,
}

impl<C, T> Object<C, T> {
    /// The driver state of the object at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` is the C object of an `Object<C, T>` whose state is initialised and stays so
    /// for `'a` (between its create op and its destroy op).
    pub unsafe fn data<'a>(raw: *mut C) -> &'a T {
        // SAFETY: `raw` is the first field of an `Object<C, T>` (repr(C)), whose `data`
        // is initialised (the caller's contract).
        unsafe { (*raw.cast::<Self>()).data.assume_init_ref() }
    }

    /// The size the IB core allocates for one.
    const SIZE: usize = size_of::<Self>();

    /// Writes the state a create op `made` into the object at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` is the C object of an `Object<C, T>` (the IB core allocated it with the
    /// table's size) whose state is not written yet.
    unsafe fn init<'a>(raw: *mut C, made: Result<T>) -> Result<&'a T> {
        let data = made?;
        // SAFETY: the caller's contract.
        Ok(unsafe { &*(*raw.cast::<Self>()).data.write(data) })
    }

    /// Lets `before` see the state of the object at `raw` for the last time, then drops
    /// it (the IB core frees the object next).
    ///
    /// # Safety
    ///
    /// `raw`'s state was written by [`Object::init`] and is dropped once, here.
    unsafe fn destroy(raw: *mut C, before: impl FnOnce(&T)) {
        let object = raw.cast::<Self>();
        // SAFETY: the caller's contract.
        unsafe {
            before((*object).data.assume_init_ref());
            (*object).data.assume_init_drop();
        }
    }
}

/// What a device driver does; becomes the device's `ib_device_ops`.
///
/// `Self` is the device's state. Every op is called by the IB core in a context that may
/// sleep, except the data path ([`Driver::post_send`], [`Driver::post_recv`],
/// [`Driver::poll_cq`], [`Driver::req_notify_cq`]), which any context calls.
pub trait Driver: Sized + Send + Sync + 'static {
    /// State of a protection domain.
    type Pd: Send + Sync;
    /// State of a completion queue.
    type Cq: Send + Sync;
    /// State of a queue pair.
    type Qp: Send + Sync;
    /// State of an address handle.
    type Ah: Send + Sync;
    /// State of a memory region.
    type Mr: Send + Sync;

    /// Fills the device's attributes (`ib_device.attrs`, read at registration).
    fn query_device(&self, attr: &mut sys::ib_device_attr) -> Result;
    /// Fills `port`'s attributes (zeroed by the IB core).
    fn query_port(&self, port: u32, attr: &mut sys::ib_port_attr) -> Result;
    /// Fills what never changes about `port` (its protocols, table sizes).
    fn port_immutable(&self, port: u32, immutable: &mut sys::ib_port_immutable) -> Result;
    /// The link layer of `port` (`IB_LINK_LAYER_*`).
    fn link_layer(&self, port: u32) -> sys::rdma_link_layer;
    /// The P_Key at `index` of `port`'s table.
    fn query_pkey(&self, port: u32, index: u16) -> Result<u16>;

    /// Sets up a PD.
    fn alloc_pd(&self, pd: NonNull<sys::ib_pd>) -> Result<Self::Pd>;
    /// Sets up a CQ for `attr.cqe` completions, and sets `ib_cq.cqe` to its actual size.
    fn create_cq(&self, cq: NonNull<sys::ib_cq>, attr: &sys::ib_cq_init_attr) -> Result<Self::Cq>;
    /// Resizes a CQ to at least `entries`, updating `ib_cq.cqe`.
    fn resize_cq(&self, cq: &Self::Cq, raw: NonNull<sys::ib_cq>, entries: u32) -> Result;
    /// Fills `wc` with up to `wc.len()` completions; how many.
    fn poll_cq(&self, cq: &Self::Cq, wc: &mut [sys::ib_wc]) -> usize;
    /// Arms a CQ (`IB_CQ_*` flags); with `IB_CQ_REPORT_MISSED_EVENTS`, whether completions
    /// are waiting already.
    fn req_notify_cq(&self, cq: &Self::Cq, raw: NonNull<sys::ib_cq>, flags: u32) -> Result<bool>;
    /// Sets up a QP (its CQs, PD and type are in `qp` already); sets `ib_qp.qp_num` and
    /// may adjust `attr.cap` to what it got.
    fn create_qp(
        &self,
        qp: NonNull<sys::ib_qp>,
        attr: &mut sys::ib_qp_init_attr,
    ) -> Result<Self::Qp>;
    /// Modifies a QP (`mask`: `IB_QP_*` of `attr`'s fields to apply).
    fn modify_qp(&self, qp: &Self::Qp, attr: &sys::ib_qp_attr, mask: u32) -> Result;
    /// Posts one send WR (the layer walks the chain and reports the first refused).
    fn post_send(&self, qp: &Self::Qp, wr: &sys::ib_send_wr) -> Result;
    /// Posts one receive WR.
    fn post_recv(&self, qp: &Self::Qp, wr: &sys::ib_recv_wr) -> Result;
    /// Sets up an AH for `attr`. May be called in atomic context (an AH made without
    /// `RDMA_CREATE_AH_SLEEPABLE`): no sleeping, no `GFP_KERNEL` allocation.
    fn create_ah(&self, ah: NonNull<sys::ib_ah>, attr: &sys::rdma_ah_attr) -> Result<Self::Ah>;
    /// An MR of `pd` over all memory with `access` (`IB_ACCESS_*`); sets the keys in
    /// `mr` (the IB core sets its other fields, `pd` among them, after this returns).
    fn get_dma_mr(
        &self,
        mr: NonNull<sys::ib_mr>,
        pd: NonNull<sys::ib_pd>,
        access: u32,
    ) -> Result<Self::Mr>;
    /// A fast-registration MR of `pd` of up to `max_pages` pages; sets the keys in `mr`.
    fn alloc_mr(
        &self,
        mr: NonNull<sys::ib_mr>,
        pd: NonNull<sys::ib_pd>,
        mr_type: u32,
        max_pages: u32,
    ) -> Result<Self::Mr>;
    /// Maps a DMA-mapped scatterlist into an MR's page list (`ib_sg_to_pages` with the
    /// driver's page callback); how many entries it mapped, or a negative errno.
    ///
    /// # Safety
    ///
    /// `sg` is a DMA-mapped list of `nents` entries, as `ib_map_mr_sg` passes it.
    unsafe fn map_mr_sg(
        &self,
        mr: &Self::Mr,
        raw: NonNull<sys::ib_mr>,
        sg: *mut sys::scatterlist,
        nents: c_int,
        offset: *mut c_uint,
    ) -> c_int;

    /// The QP's state is in place (at its final address): the driver may now let others
    /// find it (a table by QP number).
    fn created_qp(&self, _qp: &Self::Qp) {}
    /// As [`Driver::created_qp`], for an MR (a table by key).
    fn created_mr(&self, _mr: &Self::Mr) {}

    /// Tears down the object before its state is dropped (the IB core frees it next).
    fn dealloc_pd(&self, _pd: &Self::Pd) {}
    /// As [`Driver::dealloc_pd`], for a CQ.
    fn destroy_cq(&self, _cq: &Self::Cq) {}
    /// As [`Driver::dealloc_pd`], for a QP.
    fn destroy_qp(&self, _qp: &Self::Qp) {}
    /// As [`Driver::dealloc_pd`], for an AH; may be called in atomic context, as
    /// [`Driver::create_ah`].
    fn destroy_ah(&self, _ah: &Self::Ah) {}
    /// As [`Driver::dealloc_pd`], for an MR.
    fn dereg_mr(&self, _mr: &Self::Mr) {}
}

/// The driver state of the device `raw`.
///
/// # Safety
///
/// `raw` is a device registered by a [`Registration<T>`] that is still alive.
pub unsafe fn device_data<'a, T: Driver>(raw: *mut sys::ib_device) -> &'a T {
    // SAFETY: such a device is an `Object<ib_device, T>` whose state lives until the
    // registration's drop, after unregistration (the caller's contract).
    unsafe { Object::<sys::ib_device, T>::data(raw) }
}

/// `-errno` of a result, for the C ops.
fn status(result: Result) -> c_int {
    match result {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}

/// `ERR_PTR(errno)`.
fn err_ptr<P>(error: Error) -> *mut P {
    error.to_errno() as isize as *mut P
}

/// The C table's functions for `T`. Each is called by the IB core with objects of a device
/// of `T` (registered through [`Registration<T>`]), which is what makes the casts valid.
struct Ops<T>(core::marker::PhantomData<T>);

// One contract for every function here, stated once instead of on each: the IB core calls
// them through the table, with live objects of a device of `T`.
#[allow(clippy::missing_safety_doc)]
impl<T: Driver> Ops<T> {
    /// The device's state.
    unsafe fn dev<'a>(raw: *mut sys::ib_device) -> &'a T {
        // SAFETY: the IB core passes a device of ours, registered until its Registration
        // is dropped, which unregisters it first.
        unsafe { device_data::<T>(raw) }
    }

    unsafe extern "C" fn query_device(
        raw: *mut sys::ib_device,
        attr: *mut sys::ib_device_attr,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        // SAFETY: the IB core passes its attribute structure, valid for the call.
        status(unsafe { Self::dev(raw).query_device(&mut *attr) })
    }

    unsafe extern "C" fn query_port(
        raw: *mut sys::ib_device,
        port: u32,
        attr: *mut sys::ib_port_attr,
    ) -> c_int {
        // SAFETY: as above.
        status(unsafe { Self::dev(raw).query_port(port, &mut *attr) })
    }

    unsafe extern "C" fn get_port_immutable(
        raw: *mut sys::ib_device,
        port: u32,
        immutable: *mut sys::ib_port_immutable,
    ) -> c_int {
        // SAFETY: as above.
        status(unsafe { Self::dev(raw).port_immutable(port, &mut *immutable) })
    }

    unsafe extern "C" fn get_link_layer(
        raw: *mut sys::ib_device,
        port: u32,
    ) -> sys::rdma_link_layer {
        // SAFETY: as above.
        unsafe { Self::dev(raw).link_layer(port) }
    }

    unsafe extern "C" fn query_pkey(
        raw: *mut sys::ib_device,
        port: u32,
        index: u16,
        pkey: *mut u16,
    ) -> c_int {
        // SAFETY: as above.
        match unsafe { Self::dev(raw).query_pkey(port, index) } {
            Ok(value) => {
                // SAFETY: the IB core's output, valid for the call.
                unsafe { *pkey = value };
                0
            }
            Err(error) => error.to_errno(),
        }
    }

    unsafe extern "C" fn alloc_pd(pd: *mut sys::ib_pd, _udata: *mut sys::ib_udata) -> c_int {
        let Some(raw) = NonNull::new(pd) else {
            return EINVAL.to_errno();
        };
        // SAFETY: the IB core allocated `pd` as an `Object<ib_pd, T::Pd>` (the table's
        // size) and set its device.
        unsafe { status(Object::init(pd, Self::dev((*pd).device).alloc_pd(raw)).map(|_| ())) }
    }

    unsafe extern "C" fn dealloc_pd(pd: *mut sys::ib_pd, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: `alloc_pd` succeeded for `pd` (the IB core deallocates only those), so
        // its state is initialised; it is dropped once, here, before the IB core frees it.
        unsafe {
            Object::<sys::ib_pd, T::Pd>::destroy(pd, |data| {
                Self::dev((*pd).device).dealloc_pd(data)
            });
        }
        0
    }

    unsafe extern "C" fn create_cq(
        cq: *mut sys::ib_cq,
        attr: *const sys::ib_cq_init_attr,
        _attrs: *mut sys::uverbs_attr_bundle,
    ) -> c_int {
        let Some(raw) = NonNull::new(cq) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as in `alloc_pd`, for a CQ; `attr` is valid for the call.
        unsafe {
            status(Object::init(cq, Self::dev((*cq).device).create_cq(raw, &*attr)).map(|_| ()))
        }
    }

    unsafe extern "C" fn destroy_cq(cq: *mut sys::ib_cq, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: as in `dealloc_pd`, for a CQ.
        unsafe {
            Object::<sys::ib_cq, T::Cq>::destroy(cq, |data| {
                Self::dev((*cq).device).destroy_cq(data)
            });
        }
        0
    }

    unsafe extern "C" fn poll_cq(cq: *mut sys::ib_cq, num: c_int, wc: *mut sys::ib_wc) -> c_int {
        let Ok(num) = usize::try_from(num) else {
            return EINVAL.to_errno();
        };
        if wc.is_null() || num == 0 {
            return 0;
        }
        // SAFETY: a created CQ of ours; the IB core's array has `num` entries.
        unsafe {
            let wc = core::slice::from_raw_parts_mut(wc, num);
            let polled = Self::dev((*cq).device).poll_cq(Object::<sys::ib_cq, T::Cq>::data(cq), wc);
            c_int::try_from(polled.min(num)).unwrap_or(0)
        }
    }

    unsafe extern "C" fn req_notify_cq(
        cq: *mut sys::ib_cq,
        flags: sys::ib_cq_notify_flags,
    ) -> c_int {
        let Some(raw) = NonNull::new(cq) else {
            return EINVAL.to_errno();
        };
        // SAFETY: a created CQ of ours.
        let armed = unsafe {
            Self::dev((*cq).device).req_notify_cq(Object::<sys::ib_cq, T::Cq>::data(cq), raw, flags)
        };
        match armed {
            Ok(missed) => c_int::from(missed),
            Err(error) => error.to_errno(),
        }
    }

    unsafe extern "C" fn create_qp(
        qp: *mut sys::ib_qp,
        attr: *mut sys::ib_qp_init_attr,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        let Some(raw) = NonNull::new(qp) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as in `alloc_pd`, for a QP; `attr` is valid and the driver's to adjust.
        unsafe {
            let dev = Self::dev((*qp).device);
            status(
                Object::init(qp, dev.create_qp(raw, &mut *attr)).map(|data| dev.created_qp(data)),
            )
        }
    }

    unsafe extern "C" fn modify_qp(
        qp: *mut sys::ib_qp,
        attr: *mut sys::ib_qp_attr,
        mask: c_int,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        // SAFETY: a created QP of ours; `attr` is valid for the call.
        status(unsafe {
            Self::dev((*qp).device).modify_qp(
                Object::<sys::ib_qp, T::Qp>::data(qp),
                &*attr,
                mask as u32,
            )
        })
    }

    unsafe extern "C" fn destroy_qp(qp: *mut sys::ib_qp, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: as in `dealloc_pd`, for a QP.
        unsafe {
            Object::<sys::ib_qp, T::Qp>::destroy(qp, |data| {
                Self::dev((*qp).device).destroy_qp(data)
            });
        }
        0
    }

    /// Posts each WR of the chain at `first` (linked by `next`) with `post`, stopping at
    /// the first refused, which goes to `bad`.
    unsafe fn post_chain<W>(
        first: *const W,
        bad: *mut *const W,
        next: impl Fn(&W) -> *const W,
        mut post: impl FnMut(&W) -> Result,
    ) -> c_int {
        let mut wr = first;
        // SAFETY: the chain is the caller's, each WR valid for the call.
        while let Some(one) = unsafe { wr.as_ref() } {
            if let Err(error) = post(one) {
                if !bad.is_null() {
                    // SAFETY: the IB core's out-parameter, valid for the call.
                    unsafe { *bad = wr };
                }
                return error.to_errno();
            }
            wr = next(one);
        }
        0
    }

    unsafe extern "C" fn post_send(
        qp: *mut sys::ib_qp,
        wr: *const sys::ib_send_wr,
        bad: *mut *const sys::ib_send_wr,
    ) -> c_int {
        // SAFETY: a created QP of ours; the chain is the caller's, valid for the call.
        unsafe {
            let dev = Self::dev((*qp).device);
            let state = Object::<sys::ib_qp, T::Qp>::data(qp);
            Self::post_chain(wr, bad, |one| one.next, |one| dev.post_send(state, one))
        }
    }

    unsafe extern "C" fn post_recv(
        qp: *mut sys::ib_qp,
        wr: *const sys::ib_recv_wr,
        bad: *mut *const sys::ib_recv_wr,
    ) -> c_int {
        // SAFETY: as in `post_send`.
        unsafe {
            let dev = Self::dev((*qp).device);
            let state = Object::<sys::ib_qp, T::Qp>::data(qp);
            Self::post_chain(wr, bad, |one| one.next, |one| dev.post_recv(state, one))
        }
    }

    unsafe extern "C" fn create_ah(
        ah: *mut sys::ib_ah,
        init: *mut sys::rdma_ah_init_attr,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        let Some(raw) = NonNull::new(ah) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as in `alloc_pd`, for an AH; `init` and its attribute are valid for the
        // call.
        unsafe {
            let Some(attr) = (*init).ah_attr.as_ref() else {
                return EINVAL.to_errno();
            };
            status(Object::init(ah, Self::dev((*ah).device).create_ah(raw, attr)).map(|_| ()))
        }
    }

    unsafe extern "C" fn destroy_ah(ah: *mut sys::ib_ah, _flags: u32) -> c_int {
        // SAFETY: as in `dealloc_pd`, for an AH.
        unsafe {
            Object::<sys::ib_ah, T::Ah>::destroy(ah, |data| {
                Self::dev((*ah).device).destroy_ah(data)
            });
        }
        0
    }

    /// A zeroed MR object of ours, for `make` to set up; the IB core fills the rest
    /// (device, PD, type) after the op returns.
    unsafe fn new_mr(
        pd: *mut sys::ib_pd,
        make: impl FnOnce(&T, NonNull<sys::ib_mr>, NonNull<sys::ib_pd>) -> Result<T::Mr>,
    ) -> *mut sys::ib_mr {
        let object: KBox<MaybeUninit<Object<sys::ib_mr, T::Mr>>> =
            match KBox::new_uninit(GFP_KERNEL) {
                Ok(object) => object,
                Err(_) => return err_ptr(ENOMEM),
            };
        let object = KBox::into_raw(object).cast::<Object<sys::ib_mr, T::Mr>>();
        // SAFETY: `object` is a fresh allocation of the right layout; all-zero is a valid
        // `ib_mr` (the C drivers kzalloc theirs); `pd` is a PD of ours (the IB core's).
        unsafe {
            core::ptr::write_bytes(object, 0, 1);
            let raw = NonNull::new_unchecked(object.cast::<sys::ib_mr>());
            let Some(pd_raw) = NonNull::new(pd) else {
                drop(KBox::from_raw(
                    object.cast::<MaybeUninit<Object<sys::ib_mr, T::Mr>>>(),
                ));
                return err_ptr(EINVAL);
            };
            let dev = Self::dev((*pd).device);
            match make(dev, raw, pd_raw) {
                Ok(data) => {
                    dev.created_mr((*object).data.write(data));
                    raw.as_ptr()
                }
                Err(error) => {
                    drop(KBox::from_raw(
                        object.cast::<MaybeUninit<Object<sys::ib_mr, T::Mr>>>(),
                    ));
                    err_ptr(error)
                }
            }
        }
    }

    unsafe extern "C" fn get_dma_mr(pd: *mut sys::ib_pd, access: c_int) -> *mut sys::ib_mr {
        // SAFETY: the IB core's PD of ours.
        unsafe { Self::new_mr(pd, |dev, raw, pd| dev.get_dma_mr(raw, pd, access as u32)) }
    }

    unsafe extern "C" fn alloc_mr(
        pd: *mut sys::ib_pd,
        mr_type: sys::ib_mr_type,
        max: u32,
    ) -> *mut sys::ib_mr {
        // SAFETY: as above.
        unsafe { Self::new_mr(pd, |dev, raw, pd| dev.alloc_mr(raw, pd, mr_type, max)) }
    }

    unsafe extern "C" fn map_mr_sg(
        mr: *mut sys::ib_mr,
        sg: *mut sys::scatterlist,
        nents: c_int,
        offset: *mut c_uint,
    ) -> c_int {
        let Some(raw) = NonNull::new(mr) else {
            return EINVAL.to_errno();
        };
        // SAFETY: an MR of ours (set up by `new_mr`); the list is what `ib_map_mr_sg` got.
        unsafe {
            Self::dev((*mr).device).map_mr_sg(
                Object::<sys::ib_mr, T::Mr>::data(mr),
                raw,
                sg,
                nents,
                offset,
            )
        }
    }

    unsafe extern "C" fn dereg_mr(mr: *mut sys::ib_mr, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: an MR of ours, from `KBox::into_raw` in `new_mr`, with its state set;
        // the IB core deregisters it once.
        unsafe {
            Object::<sys::ib_mr, T::Mr>::destroy(mr, |data| Self::dev((*mr).device).dereg_mr(data));
            drop(KBox::from_raw(
                mr.cast::<MaybeUninit<Object<sys::ib_mr, T::Mr>>>(),
            ));
        }
        0
    }
}

impl<T: Driver> c_api::ResizeCq for Ops<T> {
    unsafe fn resize(cq: *mut sys::ib_cq, entries: u32) -> c_int {
        let Some(raw) = NonNull::new(cq) else {
            return EINVAL.to_errno();
        };
        // SAFETY: a created CQ of ours (the slot's contract).
        status(unsafe {
            Self::dev((*cq).device).resize_cq(Object::<sys::ib_cq, T::Cq>::data(cq), raw, entries)
        })
    }
}

/// The table for `T`, built on the stack: `ib_set_device_ops` copies it into the device.
fn ops<T: Driver>(owner: *mut sys::module) -> sys::ib_device_ops {
    // SAFETY: all-zero is an empty table (every op absent, every size 0), how C drivers'
    // static tables start too.
    let mut ops: sys::ib_device_ops = unsafe { MaybeUninit::zeroed().assume_init() };
    ops.owner = owner;
    ops.driver_id = sys::rdma_driver_id_RDMA_DRIVER_UNKNOWN;
    ops.query_device = Some(Ops::<T>::query_device);
    ops.query_port = Some(Ops::<T>::query_port);
    ops.get_port_immutable = Some(Ops::<T>::get_port_immutable);
    ops.get_link_layer = Some(Ops::<T>::get_link_layer);
    ops.query_pkey = Some(Ops::<T>::query_pkey);
    ops.alloc_pd = Some(Ops::<T>::alloc_pd);
    ops.dealloc_pd = Some(Ops::<T>::dealloc_pd);
    ops.create_cq = Some(Ops::<T>::create_cq);
    ops.destroy_cq = Some(Ops::<T>::destroy_cq);
    ops.poll_cq = Some(Ops::<T>::poll_cq);
    ops.req_notify_cq = Some(Ops::<T>::req_notify_cq);
    ops.create_qp = Some(Ops::<T>::create_qp);
    ops.modify_qp = Some(Ops::<T>::modify_qp);
    ops.destroy_qp = Some(Ops::<T>::destroy_qp);
    ops.post_send = Some(Ops::<T>::post_send);
    ops.post_recv = Some(Ops::<T>::post_recv);
    ops.create_ah = Some(Ops::<T>::create_ah);
    ops.destroy_ah = Some(Ops::<T>::destroy_ah);
    ops.get_dma_mr = Some(Ops::<T>::get_dma_mr);
    ops.alloc_mr = Some(Ops::<T>::alloc_mr);
    ops.map_mr_sg = Some(Ops::<T>::map_mr_sg);
    ops.dereg_mr = Some(Ops::<T>::dereg_mr);
    c_api::set_resize_cq::<Ops<T>>(&mut ops);
    c_api::set_no_user_mr(&mut ops);
    // The IB core allocates these with kzalloc, aligned for the C object at least; the
    // driver's state must not need more.
    const {
        assert!(
            core::mem::align_of::<Object<sys::ib_pd, T::Pd>>()
                <= core::mem::align_of::<sys::ib_pd>()
        );
        assert!(
            core::mem::align_of::<Object<sys::ib_cq, T::Cq>>()
                <= core::mem::align_of::<sys::ib_cq>()
        );
        assert!(
            core::mem::align_of::<Object<sys::ib_qp, T::Qp>>()
                <= core::mem::align_of::<sys::ib_qp>()
        );
        assert!(
            core::mem::align_of::<Object<sys::ib_ah, T::Ah>>()
                <= core::mem::align_of::<sys::ib_ah>()
        );
    };
    ops.size_ib_pd = Object::<sys::ib_pd, T::Pd>::SIZE;
    ops.size_ib_cq = Object::<sys::ib_cq, T::Cq>::SIZE;
    ops.size_ib_qp = Object::<sys::ib_qp, T::Qp>::SIZE;
    ops.size_ib_ah = Object::<sys::ib_ah, T::Ah>::SIZE;
    ops
}

/// A registered device of driver `T`: unregistered, and its state dropped, on drop.
pub struct Registration<T: Driver> {
    device: NonNull<Object<sys::ib_device, T>>,
}

// SAFETY: the device is the IB core's, shared by design; `T` is `Send + Sync`.
unsafe impl<T: Driver> Send for Registration<T> {}
// SAFETY: as above.
unsafe impl<T: Driver> Sync for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// Allocates a device with `state`, lets `setup` fill the IB core's fields a driver
    /// sets before registering (node type, ports, GUID, local DMA key, netdev ...), with
    /// the state at hand, and
    /// registers it under `name` (a `%d` pattern allowed) without a DMA device, as the
    /// software devices do (the IB core then takes DMA addresses as kernel virtual
    /// addresses). `owner` is the driver's module.
    pub fn new(
        owner: &'static kernel::ThisModule,
        state: T,
        name: &core::ffi::CStr,
        setup: impl FnOnce(&mut sys::ib_device, &T) -> Result,
    ) -> Result<Self> {
        // The IB core's allocation is aligned for an `ib_device`; the state must not need
        // more (checked at compile time).
        const {
            assert!(
                core::mem::align_of::<Object<sys::ib_device, T>>()
                    <= core::mem::align_of::<sys::ib_device>()
            )
        };
        let raw = c_api::alloc_device(Object::<sys::ib_device, T>::SIZE);
        let Some(device) = NonNull::new(raw.cast::<Object<sys::ib_device, T>>()) else {
            pr_err!(
                "cannot allocate an IB device for {}\n",
                name.to_str().unwrap_or("?")
            );
            return Err(ENOMEM);
        };
        // SAFETY: a fresh, zeroed allocation of the object's size, the device first.
        unsafe { (*device.as_ptr()).data.write(state) };
        let registration = Self { device };
        let table = ops::<T>(owner.as_ptr().cast());
        // SAFETY: the device is allocated and not registered; the table is copied.
        unsafe { sys::ib_set_device_ops(raw, &table) };
        // SAFETY: as above; `setup` gets the device before it is visible to anyone, and
        // the state, which follows the `ib_device` in the allocation (disjoint from it).
        let (ibdev, state) = unsafe { (&mut *raw, (*device.as_ptr()).data.assume_init_ref()) };
        if let Err(error) = setup(ibdev, state) {
            pr_err!(
                "{}: device setup failed: {:?}\n",
                name.to_str().unwrap_or("?"),
                error
            );
            registration.abandon();
            return Err(error);
        }
        // SAFETY: set up and not registered; the name is a valid C string for the call.
        let registered = unsafe {
            sys::ib_register_device(
                raw,
                crate::sys::kernel_api::c_str(name),
                core::ptr::null_mut(),
            )
        };
        if registered != 0 {
            let error = Error::from_errno(registered);
            pr_err!(
                "{}: ib_register_device failed: {:?}\n",
                name.to_str().unwrap_or("?"),
                error
            );
            registration.abandon();
            return Err(error);
        }
        Ok(registration)
    }

    /// Frees a device that never got registered.
    fn abandon(self) {
        let device = self.device;
        core::mem::forget(self);
        // SAFETY: the state was written in `new`; the device was not registered.
        unsafe {
            (*device.as_ptr()).data.assume_init_drop();
            sys::ib_dealloc_device(device.as_ptr().cast());
        }
    }

    /// The device's state.
    pub fn state(&self) -> &T {
        // SAFETY: initialised in `new`, dropped only in `drop`.
        unsafe { self.device.as_ref().data.assume_init_ref() }
    }

    /// The name the IB core gave the device.
    pub fn name(&self) -> crate::device::DeviceName {
        // SAFETY: registered, so valid, while `self` lives.
        unsafe { crate::device::DeviceName::of(self.as_raw()) }
    }

    /// The `ib_device`.
    pub fn as_raw(&self) -> *mut sys::ib_device {
        self.device.as_ptr().cast()
    }
}

impl<T: Driver> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`. Unregistering removes every client and destroys
        // every object of the device first, so no op runs on the state after it.
        unsafe { sys::ib_unregister_device(self.as_raw()) };
        // SAFETY: initialised in `new`; nothing uses it any more.
        unsafe { (*self.device.as_ptr()).data.assume_init_drop() };
        // SAFETY: allocated by `_ib_alloc_device` and unregistered.
        unsafe { sys::ib_dealloc_device(self.as_raw()) };
    }
}
