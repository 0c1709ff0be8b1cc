// SPDX-License-Identifier: GPL-2.0
//! The driver side of the IB core: a Rust trait that becomes `struct ib_device_ops`.
//!
//! A driver implements [`Driver`] for its device's state and registers it with
//! [`Registration::new`]. The layer makes the C table: one `extern "C"` function per op,
//! generic over the driver, that finds the driver's state for the objects the IB core
//! passes and calls the trait with typed references: the device as [`Device<D>`], its
//! objects as [`Pd<D>`], [`Cq<D>`], [`Qp<D>`], [`Mr<D>`], [`Ah<D>`] (each derefs to the
//! driver's state for it and reads the IB core's fields of it by accessor), a send WR
//! as a [`SendWr`] whose [`SendWr::op`] is a [`SendOp`] per opcode, a QP modify as a
//! [`QpModify`] that yields only the attributes its mask names, completions written
//! through [`Completions`]. A driver written on this module needs no `unsafe`.
//!
//! The IB core allocates PDs, CQs, QPs and AHs itself, with the size the table declares:
//! each is an `ib_*` followed by the driver's state for it, created by the op that sets
//! it up and dropped after the one that destroys it. MRs are the layer's own allocation,
//! the same layout. The views read the C structures in place, by accessor: a post pays
//! for the fields it reads and nothing else.
//!
//! What differs between kernels in that C API is bridged in [`crate::sys::c_api`]
//! (`_ib_alloc_device`, the CQ resize slot, `reg_user_mr`), so a driver is written once.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::mem::{size_of, MaybeUninit};
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use kernel::ffi::{c_int, c_uint};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::sys;
use crate::sys::c_api;
use crate::verbs::{Gid, WcOpcode, WcStatus};

/// An IB core object followed by its driver's state: the layout the IB core allocates
/// (`rdma_zalloc_drv_obj` with the table's `size_ib_*`), with the C object first as its
/// `container_of` requires. The C object is the IB core's, changed behind our back: an
/// `UnsafeCell`, read field by field.
#[repr(C)]
struct Object<C, T> {
    raw: UnsafeCell<C>,
    data: MaybeUninit<T>,
}

impl<C, T> Object<C, T> {
    /// The size the IB core allocates for one.
    const SIZE: usize = size_of::<Self>();

    fn raw(&self) -> *mut C {
        self.raw.get()
    }

    /// The driver's state.
    ///
    /// # Safety
    ///
    /// The state is initialised (between the create op and the destroy op).
    unsafe fn data(&self) -> &T {
        // SAFETY: the caller's contract.
        unsafe { self.data.assume_init_ref() }
    }

    /// Writes the state a create op `made` into the object at `raw`.
    ///
    /// # Safety
    ///
    /// `raw` is the C object of an `Object<C, T>` (the IB core allocated it with the
    /// table's size) whose state is not written yet, and which nothing else reaches
    /// until the create op returns.
    unsafe fn init<'a>(raw: *mut C, made: T) -> &'a mut T {
        // SAFETY: the caller's contract.
        unsafe {
            let data = core::ptr::addr_of_mut!((*raw.cast::<Self>()).data);
            (*data).write(made)
        }
    }

    /// Drops the state of the object at `raw` (the IB core frees the object next).
    ///
    /// # Safety
    ///
    /// `raw`'s state was written by [`Object::init`] and is dropped once, here, after its
    /// last use.
    unsafe fn drop_data(raw: *mut C) {
        // SAFETY: the caller's contract.
        unsafe {
            let data = core::ptr::addr_of_mut!((*raw.cast::<Self>()).data);
            (*data).assume_init_drop();
        }
    }
}

/// Declares a typed view of an IB core object with its driver's state: derefs to the
/// state, and gives the layer its C part.
macro_rules! object {
    ($(#[$meta:meta])* $name:ident, $c:ty, $state:ty) => {
        $(#[$meta])*
        #[repr(transparent)]
        pub struct $name<D: Driver>(Object<$c, $state>);

        impl<D: Driver> $name<D> {
            /// The live, created object at `raw`.
            ///
            /// # Safety
            ///
            /// `raw` is an object of a device of `D`, created by the layer's create op
            /// and not yet destroyed, for `'a`.
            unsafe fn from_raw<'a>(raw: *mut $c) -> &'a Self {
                // SAFETY: `Self` is a transparent view of the `Object`, whose C part comes
                // first (repr(C)); the object lives for `'a` (the caller's contract).
                unsafe { &*raw.cast::<Self>() }
            }

            // Not every object's C part is read.
            #[allow(dead_code)]
            fn raw(&self) -> *mut $c {
                self.0.raw()
            }

            fn state(&self) -> &$state {
                // SAFETY: a view exists only of a created object (`from_raw`).
                unsafe { self.0.data() }
            }
        }

        // SAFETY: the C part is the IB core's, which serialises its own changes to it and
        // is shared by design; the state is `Send + Sync` (the `Driver` bounds).
        unsafe impl<D: Driver> Send for $name<D> {}
        // SAFETY: as above.
        unsafe impl<D: Driver> Sync for $name<D> {}
    };
}

object!(
    /// A protection domain of a device of `D`.
    Pd, sys::ib_pd, D::Pd
);
object!(
    /// A completion queue of a device of `D`.
    Cq, sys::ib_cq, CqState<D::Cq>
);
object!(
    /// A queue pair of a device of `D`.
    Qp, sys::ib_qp, D::Qp
);
object!(
    /// A memory region of a device of `D`.
    Mr, sys::ib_mr, MrState<D>
);
object!(
    /// An address handle of a device of `D`.
    Ah, sys::ib_ah, D::Ah
);
object!(
    /// A device of driver `D`, registered by a [`Registration<D>`].
    Device, sys::ib_device, D
);

/// The layer's part of a CQ's state: its event gate, then the driver's.
struct CqState<T> {
    events: CqEvents,
    driver: T,
}

/// The layer's part of an MR's state: the page callback of a `map_mr_sg` under way,
/// then the driver's.
struct MrState<D: Driver> {
    /// A `*mut &mut dyn FnMut(DmaRange) -> Result` during [`MrPages::map`], null otherwise.
    mapping: AtomicPtr<()>,
    driver: D::Mr,
}

impl<D: Driver> Deref for Pd<D> {
    type Target = D::Pd;
    fn deref(&self) -> &D::Pd {
        self.state()
    }
}

impl<D: Driver> Deref for Cq<D> {
    type Target = D::Cq;
    fn deref(&self) -> &D::Cq {
        &self.state().driver
    }
}

impl<D: Driver> Deref for Qp<D> {
    type Target = D::Qp;
    fn deref(&self) -> &D::Qp {
        self.state()
    }
}

impl<D: Driver> Deref for Mr<D> {
    type Target = D::Mr;
    fn deref(&self) -> &D::Mr {
        &self.state().driver
    }
}

impl<D: Driver> Deref for Ah<D> {
    type Target = D::Ah;
    fn deref(&self) -> &D::Ah {
        self.state()
    }
}

impl<D: Driver> Deref for Device<D> {
    type Target = D;
    fn deref(&self) -> &D {
        self.state()
    }
}

/// The identity of a PD, to compare (an MR's PD with a QP's): never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PdId(*const sys::ib_pd);

// SAFETY: an address compared, never dereferenced.
unsafe impl Send for PdId {}
// SAFETY: as above.
unsafe impl Sync for PdId {}

/// The QP a completion names (`ib_wc.qp`), kept by a driver in its queues: handed to
/// the consumer in completions, never dereferenced by the layer or the driver.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct QpHandle(NonNull<sys::ib_qp>);

// SAFETY: as for `PdId`.
unsafe impl Send for QpHandle {}
// SAFETY: as above.
unsafe impl Sync for QpHandle {}

impl<D: Driver> Pd<D> {
    /// This PD's identity.
    pub fn id(&self) -> PdId {
        PdId(self.raw())
    }
}

impl<D: Driver> Device<D> {
    /// The name the IB core gave the device (`tilde_lo0`), for log lines.
    pub fn name(&self) -> crate::device::DeviceName {
        // SAFETY: the device is allocated while a view of it exists.
        unsafe { crate::device::DeviceName::of(self.raw()) }
    }

    /// The `ib_device`, for a driver's C glue (netdev binding and the like).
    pub fn as_raw(&self) -> *mut sys::ib_device {
        self.raw()
    }

    /// The device's DMA engine: registered without a DMA device, it reaches the
    /// consumers' memory by the CPU (see [`SoftDma`]).
    pub fn dma(&self) -> SoftDma<'_> {
        SoftDma {
            _device: PhantomData,
        }
    }
}

/// The type of a QP (`enum ib_qp_type`), those a driver may be asked for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QpType {
    /// QP0, the subnet management QP.
    Smi,
    /// QP1, the general services QP.
    Gsi,
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
    /// Any other (raw, XRC, driver-specific): its C value.
    Other(u32),
}

impl QpType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            sys::ib_qp_type_IB_QPT_SMI => Self::Smi,
            sys::ib_qp_type_IB_QPT_GSI => Self::Gsi,
            sys::ib_qp_type_IB_QPT_RC => Self::Rc,
            sys::ib_qp_type_IB_QPT_UC => Self::Uc,
            sys::ib_qp_type_IB_QPT_UD => Self::Ud,
            other => Self::Other(other),
        }
    }

    /// Whether its sends are datagrams, each naming its destination by an AH.
    pub fn is_datagram(self) -> bool {
        matches!(self, Self::Smi | Self::Gsi | Self::Ud)
    }
}

impl<D: Driver> Qp<D> {
    /// The QP's type.
    pub fn qp_type(&self) -> QpType {
        // SAFETY: set by the IB core before the create op, never changed after.
        QpType::from_raw(unsafe { (*self.raw()).qp_type })
    }

    /// The QP's number.
    pub fn num(&self) -> u32 {
        // SAFETY: set by the create op, never changed after.
        unsafe { (*self.raw()).qp_num }
    }

    /// The QP for completions.
    pub fn handle(&self) -> QpHandle {
        // A view exists only of an allocated object: its address is not null.
        QpHandle(NonNull::new(self.raw()).unwrap_or(NonNull::dangling()))
    }

    /// The PD the QP belongs to.
    pub fn pd_id(&self) -> PdId {
        // SAFETY: set by the IB core before the create op, never changed after.
        PdId(unsafe { (*self.raw()).pd })
    }
}

/// The IB access rights of an MR or a QP (`enum ib_access_flags`; values fixed by the
/// uverbs ABI).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Access(u32);

impl Access {
    /// The device may write local memory (`IB_ACCESS_LOCAL_WRITE`).
    pub const LOCAL_WRITE: Self = Self(1);
    /// Peers may RDMA WRITE (`IB_ACCESS_REMOTE_WRITE`).
    pub const REMOTE_WRITE: Self = Self(1 << 1);
    /// Peers may RDMA READ (`IB_ACCESS_REMOTE_READ`).
    pub const REMOTE_READ: Self = Self(1 << 2);
    /// Peers may run atomics (`IB_ACCESS_REMOTE_ATOMIC`).
    pub const REMOTE_ATOMIC: Self = Self(1 << 3);

    /// No rights.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The rights of the C bits (unknown bits kept, so nothing is silently dropped).
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The C bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every right of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Access {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The keys a new MR gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MrKeys {
    /// For local access (`ib_mr.lkey`).
    pub lkey: u32,
    /// For remote access (`ib_mr.rkey`).
    pub rkey: u32,
}

impl<D: Driver> Mr<D> {
    /// The I/O virtual address of the registration (set by `ib_map_mr_sg` or the ULP).
    pub fn iova(&self) -> u64 {
        // SAFETY: the IB core's field, set by the consumer before it posts the REG_MR
        // that reads it and not changed while that is outstanding.
        unsafe { (*self.raw()).iova }
    }

    /// The length of the registration.
    pub fn length(&self) -> u64 {
        // SAFETY: as for `iova`.
        unsafe { (*self.raw()).length }
    }

    /// The page size of the page list.
    pub fn page_size(&self) -> u32 {
        // SAFETY: as for `iova`.
        unsafe { (*self.raw()).page_size }
    }
}

// ---------------------------------------------------------------------------------------
// Completions

/// The network header a received datagram's first 40 bytes hold (the GRH area).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Grh {
    /// An InfiniBand GRH.
    Ib,
    /// RoCEv2 over IPv4: 20 bytes of zeros, then the IPv4 header.
    Ipv4,
    /// RoCEv2 over IPv6: the IPv6 header.
    Ipv6,
}

/// What else a completion carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Extra {
    None,
    /// Immediate data, big-endian as the sender posted it.
    Imm(u32),
    /// The key a SEND with Invalidate invalidated.
    Invalidated(u32),
}

/// A work completion, built by a driver and written into the consumer's `ib_wc` by
/// [`Completions::push`].
#[derive(Clone, Copy)]
pub struct Completion {
    id: u64,
    status: WcStatus,
    opcode: WcOpcode,
    qp: QpHandle,
    byte_len: u32,
    src_qp: u32,
    extra: Extra,
    grh: Option<Grh>,
    port: u32,
    route: ReceivedRoute,
}

/// Where a received packet came from on an InfiniBand port: what the MAD layer answers
/// by (`ib_wc.slid`, `.sl`, `.dlid_path_bits`, `.pkey_index`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ReceivedRoute {
    /// The source LID.
    pub slid: u16,
    /// The service level.
    pub sl: u8,
    /// The path bits of the destination LID.
    pub dlid_path_bits: u8,
    /// The index of the packet's P_Key in the port's table.
    pub pkey_index: u16,
}

impl Completion {
    /// A completion of WR `id` of `qp` with `status`, for a WR of `opcode`.
    pub fn new(qp: QpHandle, id: u64, status: WcStatus, opcode: WcOpcode) -> Self {
        Self {
            id,
            status,
            opcode,
            qp,
            byte_len: 0,
            src_qp: 0,
            extra: Extra::None,
            grh: None,
            port: 1,
            route: ReceivedRoute {
                slid: 0,
                sl: 0,
                dlid_path_bits: 0,
                pkey_index: 0,
            },
        }
    }

    /// Where a receive came from, on an InfiniBand port.
    pub fn received_route(self, route: ReceivedRoute) -> Self {
        Self { route, ..self }
    }

    /// Bytes moved (a receive's length, a READ's, an atomic's 8).
    pub fn bytes(self, byte_len: u32) -> Self {
        Self { byte_len, ..self }
    }

    /// The sender's QP number (receives).
    pub fn source_qp(self, src_qp: u32) -> Self {
        Self { src_qp, ..self }
    }

    /// Immediate data, big-endian as posted (`IB_WC_WITH_IMM`).
    pub fn with_imm(self, imm: u32) -> Self {
        Self {
            extra: Extra::Imm(imm),
            ..self
        }
    }

    /// The key a SEND with Invalidate invalidated (`IB_WC_WITH_INVALIDATE`).
    pub fn with_invalidate(self, rkey: u32) -> Self {
        Self {
            extra: Extra::Invalidated(rkey),
            ..self
        }
    }

    /// The receive buffer starts with a network header of this kind (`IB_WC_GRH`).
    pub fn with_grh(self, grh: Grh) -> Self {
        Self {
            grh: Some(grh),
            ..self
        }
    }

    /// The port it happened on (1 unless set).
    pub fn port(self, port: u32) -> Self {
        Self { port, ..self }
    }

    /// Its status.
    pub fn status(&self) -> WcStatus {
        self.status
    }

    /// The C completion.
    fn to_raw(self) -> sys::ib_wc {
        // SAFETY: all-zero is a valid `ib_wc` (plain C data, as C drivers' zeroed ones).
        let mut wc: sys::ib_wc = unsafe { MaybeUninit::zeroed().assume_init() };
        wc.__bindgen_anon_1.wr_id = self.id;
        wc.status = self.status.to_raw();
        wc.opcode = self.opcode.to_raw();
        wc.qp = self.qp.0.as_ptr();
        wc.byte_len = self.byte_len;
        wc.src_qp = self.src_qp;
        wc.port_num = self.port;
        wc.slid = self.route.slid.into();
        wc.sl = self.route.sl;
        wc.dlid_path_bits = self.route.dlid_path_bits;
        wc.pkey_index = self.route.pkey_index;
        let mut flags = 0;
        match self.extra {
            Extra::None => {}
            Extra::Imm(imm) => {
                wc.ex.imm_data = imm;
                flags |= sys::ib_wc_flags_IB_WC_WITH_IMM;
            }
            Extra::Invalidated(rkey) => {
                wc.ex.invalidate_rkey = rkey;
                flags |= sys::ib_wc_flags_IB_WC_WITH_INVALIDATE;
            }
        }
        match self.grh {
            None => {}
            Some(Grh::Ib) => flags |= sys::ib_wc_flags_IB_WC_GRH,
            Some(roce) => {
                flags |= sys::ib_wc_flags_IB_WC_GRH | sys::ib_wc_flags_IB_WC_WITH_NETWORK_HDR_TYPE;
                wc.network_hdr_type = if roce == Grh::Ipv4 {
                    sys::rdma_network_type_RDMA_NETWORK_IPV4
                } else {
                    sys::rdma_network_type_RDMA_NETWORK_IPV6
                } as u8;
            }
        }
        wc.wc_flags = flags as c_int;
        wc
    }
}

/// The consumer's completion array of a `poll_cq`, filled in order.
pub struct Completions<'a> {
    /// The consumer's array, written only (what it held before is not read).
    out: &'a mut [MaybeUninit<sys::ib_wc>],
    filled: usize,
}

impl Completions<'_> {
    /// How many more completions fit.
    pub fn room(&self) -> usize {
        self.out.len().saturating_sub(self.filled)
    }

    /// Writes `completion` into the next entry; false (nothing written) when full.
    pub fn push(&mut self, completion: &Completion) -> bool {
        let Some(wc) = self.out.get_mut(self.filled) else {
            return false;
        };
        wc.write(completion.to_raw());
        self.filled += 1;
        true
    }
}

/// What a CQ's consumer is told outside the driver's locks: its completion handler, its
/// error event. A driver keeps a clone where completions are queued, takes a [`CqDue`]
/// there and makes it after releasing its lock; once the CQ is destroyed, calls do
/// nothing (the destroy op waits for calls owed or under way), so a clone may outlive
/// the CQ.
#[derive(Clone)]
pub struct CqEvents(Arc<CqGate>);

struct CqGate {
    /// The CQ while it lives; null from its destruction on.
    cq: AtomicPtr<sys::ib_cq>,
    /// Calls under way.
    calls: AtomicU32,
}

impl CqEvents {
    fn new(cq: *mut sys::ib_cq) -> Result<Self> {
        let gate = CqGate {
            cq: AtomicPtr::new(cq),
            calls: AtomicU32::new(0),
        };
        Ok(Self(Arc::new(gate, GFP_KERNEL)?))
    }

    /// A call owed to the CQ, to make later: taken where the completion is queued
    /// (under the driver's lock) and made after the lock is released, costing one count
    /// up and one down. `None` once the CQ is being destroyed. The count is raised before
    /// the CQ is read and `close` clears the CQ before it reads the count (both
    /// sequentially consistent): either this sees null, or `close` sees the call and
    /// waits for it, and with it the gate (the layer's own reference to it is dropped
    /// only after `close`).
    pub fn due(&self) -> Option<CqDue> {
        let gate: &CqGate = &self.0;
        gate.calls.fetch_add(1, Ordering::SeqCst);
        if gate.cq.load(Ordering::SeqCst).is_null() {
            gate.calls.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(CqDue {
            gate: NonNull::from(gate),
        })
    }

    /// Calls the CQ's completion handler now (see [`CqDue::completion`]).
    pub fn completion(&self) {
        if let Some(due) = self.due() {
            due.completion();
        }
    }

    /// Reports `IB_EVENT_CQ_ERR` now (see [`CqDue::overrun`]).
    pub fn overrun(&self) {
        if let Some(due) = self.due() {
            due.overrun();
        }
    }

    /// Ends the calls: from now on they do nothing; waits for those owed or under way.
    /// Closing twice is closing once.
    fn close(&self) {
        self.0.cq.store(core::ptr::null_mut(), Ordering::SeqCst);
        while self.0.calls.load(Ordering::SeqCst) != 0 {
            crate::sys::kernel_api::sleep(Duration::from_micros(20));
        }
    }
}

/// A call owed to a CQ, from [`CqEvents::due`]: the CQ's destruction waits until it is
/// made or dropped. Made on the thread that took it (not `Send`).
pub struct CqDue {
    gate: NonNull<CqGate>,
}

impl CqDue {
    fn gate(&self) -> &CqGate {
        // SAFETY: the count this holds keeps `close` from returning, and the layer's
        // reference to the gate from being dropped, until `self` is dropped (`due`).
        unsafe { self.gate.as_ref() }
    }

    /// Runs `call` with the CQ unless its destruction has begun.
    fn with(&self, call: impl FnOnce(*mut sys::ib_cq)) {
        let cq = self.gate().cq.load(Ordering::SeqCst);
        if !cq.is_null() {
            call(cq);
        }
    }

    /// Calls the CQ's completion handler (`ib_cq.comp_handler`), as a C driver does when
    /// an armed CQ gets a completion.
    pub fn completion(self) {
        self.with(|cq| {
            // SAFETY: the CQ lives (`with`, and the count held); its handler and context
            // are the consumer's, called as the C drivers call them, with no driver lock
            // held.
            unsafe {
                if let Some(handler) = (*cq).comp_handler {
                    handler(cq, (*cq).cq_context);
                }
            }
        });
    }

    /// Reports `IB_EVENT_CQ_ERR` (the CQ overran: completions were lost).
    pub fn overrun(self) {
        self.with(|cq| {
            // SAFETY: as in `completion`; all-zero is a valid `ib_event` (plain C data).
            unsafe {
                if let Some(handler) = (*cq).event_handler {
                    let mut event: sys::ib_event = MaybeUninit::zeroed().assume_init();
                    event.device = (*cq).device;
                    event.element.cq = cq;
                    event.event = sys::ib_event_type_IB_EVENT_CQ_ERR;
                    handler(&mut event, (*cq).cq_context);
                }
            }
        });
    }
}

impl Drop for CqDue {
    fn drop(&mut self) {
        self.gate().calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<D: Driver> Cq<D> {
    /// The CQ's events, to keep where its completions are queued.
    pub fn events(&self) -> &CqEvents {
        &self.state().events
    }
}

/// A CQ being created.
pub struct NewCq<'a> {
    attr: &'a sys::ib_cq_init_attr,
    events: &'a CqEvents,
    entries: u32,
}

impl NewCq<'_> {
    /// The completions the consumer asked room for.
    pub fn requested(&self) -> u32 {
        self.attr.cqe
    }

    /// `IB_UVERBS_CQ_FLAGS_*` asked for (0: none).
    pub fn flags(&self) -> u32 {
        self.attr.flags
    }

    /// The completion vector asked for.
    pub fn comp_vector(&self) -> u32 {
        self.attr.comp_vector
    }

    /// The CQ's events, to keep where its completions are queued.
    pub fn events(&self) -> &CqEvents {
        self.events
    }

    /// The room the CQ actually has (`ib_cq.cqe`); the request unless set.
    pub fn set_entries(&mut self, entries: u32) {
        self.entries = entries;
    }
}

/// What a `req_notify_cq` asks.
#[derive(Clone, Copy)]
pub struct Arm(u32);

impl Arm {
    /// Whether the CQ is armed (for the next completion or the next solicited one).
    pub fn arms(self) -> bool {
        self.0 & sys::ib_cq_notify_flags_IB_CQ_SOLICITED_MASK != 0
    }

    /// Whether only a solicited completion (or an error) should notify.
    pub fn solicited_only(self) -> bool {
        self.0 & sys::ib_cq_notify_flags_IB_CQ_SOLICITED_MASK
            == sys::ib_cq_notify_flags_IB_CQ_SOLICITED
    }

    /// Whether the consumer wants to know that completions are waiting already
    /// (`IB_CQ_REPORT_MISSED_EVENTS`).
    pub fn report_missed(self) -> bool {
        self.0 & sys::ib_cq_notify_flags_IB_CQ_REPORT_MISSED_EVENTS != 0
    }
}

// ---------------------------------------------------------------------------------------
// QPs

/// The capacities of a QP's queues: the consumer side's type, one `struct ib_qp_cap`.
pub use crate::verbs::QpCaps;

/// A QP being created: what the consumer asked (`ib_qp_init_attr`) and what the IB core
/// set in the QP already (its type, PD, CQs).
pub struct NewQp<'a, D: Driver> {
    qp: *mut sys::ib_qp,
    attr: &'a mut sys::ib_qp_init_attr,
    _driver: PhantomData<D>,
}

impl<'a, D: Driver> NewQp<'a, D> {
    /// The QP's type.
    pub fn qp_type(&self) -> QpType {
        QpType::from_raw(self.attr.qp_type)
    }

    /// The QP for completions.
    pub fn handle(&self) -> QpHandle {
        // The IB core's allocation, checked non-null by the create op.
        QpHandle(NonNull::new(self.qp).unwrap_or(NonNull::dangling()))
    }

    /// The PD the QP belongs to.
    pub fn pd_id(&self) -> PdId {
        // SAFETY: the IB core's QP being created, its PD set before the op.
        PdId(unsafe { (*self.qp).pd })
    }

    /// The PD the QP belongs to, the driver's state of it.
    pub fn pd(&self) -> &'a Pd<D> {
        // SAFETY: the IB core's QP being created, its PD set before the op: a PD of this
        // device, which the IB core keeps (by its use count) until the QP is destroyed.
        unsafe { Pd::from_raw((*self.qp).pd) }
    }

    /// The CQ of its send queue (none if the consumer gave none).
    pub fn send_cq(&self) -> Option<&'a Cq<D>> {
        let cq = self.attr.send_cq;
        // SAFETY: a CQ the consumer created on this device, which the IB core keeps
        // (by its use count) until the QP is destroyed.
        (!cq.is_null()).then(|| unsafe { Cq::from_raw(cq) })
    }

    /// The CQ of its receive queue.
    pub fn recv_cq(&self) -> Option<&'a Cq<D>> {
        let cq = self.attr.recv_cq;
        // SAFETY: as in `send_cq`.
        (!cq.is_null()).then(|| unsafe { Cq::from_raw(cq) })
    }

    /// The port of a special QP (QP0, QP1), which has one per port.
    pub fn port(&self) -> u32 {
        self.attr.port_num
    }

    /// Whether its receives come from an SRQ.
    pub fn has_srq(&self) -> bool {
        !self.attr.srq.is_null()
    }

    /// `IB_QP_CREATE_*` asked for (0: none).
    pub fn create_flags(&self) -> u32 {
        self.attr.create_flags
    }

    /// Whether every send WR completes, signaled or not (`IB_SIGNAL_ALL_WR`).
    pub fn signals_all(&self) -> bool {
        self.attr.sq_sig_type == sys::ib_sig_type_IB_SIGNAL_ALL_WR
    }

    /// The capacities asked for.
    pub fn caps(&self) -> QpCaps {
        let cap = &self.attr.cap;
        QpCaps {
            max_send_wr: cap.max_send_wr,
            max_recv_wr: cap.max_recv_wr,
            max_send_sge: cap.max_send_sge,
            max_recv_sge: cap.max_recv_sge,
            max_inline_data: cap.max_inline_data,
        }
    }

    /// The capacities the QP got (reported back to the consumer).
    pub fn set_caps(&mut self, caps: QpCaps) {
        let cap = &mut self.attr.cap;
        cap.max_send_wr = caps.max_send_wr;
        cap.max_recv_wr = caps.max_recv_wr;
        cap.max_send_sge = caps.max_send_sge;
        cap.max_recv_sge = caps.max_recv_sge;
        cap.max_inline_data = caps.max_inline_data;
    }

    /// The QP's number.
    pub fn set_num(&mut self, qpn: u32) {
        // SAFETY: the IB core's QP being created, nobody else's until the op returns;
        // `qp_num` is the driver's to set.
        unsafe { (*self.qp).qp_num = qpn };
    }
}

/// A QP state (`enum ib_qp_state`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QpState {
    /// Reset.
    Reset,
    /// Initialised.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error.
    Err,
}

impl QpState {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            sys::ib_qp_state_IB_QPS_RESET => Self::Reset,
            sys::ib_qp_state_IB_QPS_INIT => Self::Init,
            sys::ib_qp_state_IB_QPS_RTR => Self::Rtr,
            sys::ib_qp_state_IB_QPS_RTS => Self::Rts,
            sys::ib_qp_state_IB_QPS_SQD => Self::Sqd,
            sys::ib_qp_state_IB_QPS_SQE => Self::Sqe,
            sys::ib_qp_state_IB_QPS_ERR => Self::Err,
            _ => return None,
        })
    }

    fn to_raw(self) -> u32 {
        match self {
            Self::Reset => sys::ib_qp_state_IB_QPS_RESET,
            Self::Init => sys::ib_qp_state_IB_QPS_INIT,
            Self::Rtr => sys::ib_qp_state_IB_QPS_RTR,
            Self::Rts => sys::ib_qp_state_IB_QPS_RTS,
            Self::Sqd => sys::ib_qp_state_IB_QPS_SQD,
            Self::Sqe => sys::ib_qp_state_IB_QPS_SQE,
            Self::Err => sys::ib_qp_state_IB_QPS_ERR,
        }
    }
}

/// A `modify_qp`: the attributes its mask names, each `None` when the mask leaves it.
pub struct QpModify<'a> {
    attr: &'a sys::ib_qp_attr,
    mask: u32,
    qp_type: u32,
}

impl QpModify<'_> {
    fn has(&self, bit: u32) -> bool {
        self.mask & bit != 0
    }

    /// The state the QP moves to, checked against IB's state table for the QP's type,
    /// the mask and `current` (or the current state the consumer asserts):
    /// `Ok(None)` when only attributes change, `EINVAL` for a transition IB forbids or
    /// attributes it does not allow in it.
    pub fn transition(&self, current: QpState) -> Result<Option<QpState>> {
        let current = if self.has(sys::ib_qp_attr_mask_IB_QP_CUR_STATE) {
            QpState::from_raw(self.attr.cur_qp_state).ok_or(EINVAL)?
        } else {
            current
        };
        let next = if self.has(sys::ib_qp_attr_mask_IB_QP_STATE) {
            Some(QpState::from_raw(self.attr.qp_state).ok_or(EINVAL)?)
        } else {
            None
        };
        let to = next.unwrap_or(current);
        // SAFETY: a pure check of its arguments.
        if !unsafe {
            sys::ib_modify_qp_is_ok(current.to_raw(), to.to_raw(), self.qp_type, self.mask)
        } {
            return Err(EINVAL);
        }
        Ok(next)
    }

    /// The port (`IB_QP_PORT`).
    pub fn port(&self) -> Option<u32> {
        self.has(sys::ib_qp_attr_mask_IB_QP_PORT)
            .then_some(self.attr.port_num)
    }

    /// The remote access the QP grants (`IB_QP_ACCESS_FLAGS`).
    pub fn access(&self) -> Option<Access> {
        self.has(sys::ib_qp_attr_mask_IB_QP_ACCESS_FLAGS)
            .then_some(Access::from_bits(self.attr.qp_access_flags as u32))
    }

    /// The Q_Key (`IB_QP_QKEY`).
    pub fn qkey(&self) -> Option<u32> {
        self.has(sys::ib_qp_attr_mask_IB_QP_QKEY)
            .then_some(self.attr.qkey)
    }

    /// The destination QP number (`IB_QP_DEST_QPN`).
    pub fn dest_qpn(&self) -> Option<u32> {
        self.has(sys::ib_qp_attr_mask_IB_QP_DEST_QPN)
            .then_some(self.attr.dest_qp_num)
    }

    /// The RNR retry count, 7 meaning "forever" (`IB_QP_RNR_RETRY`).
    pub fn rnr_retry(&self) -> Option<u8> {
        self.has(sys::ib_qp_attr_mask_IB_QP_RNR_RETRY)
            .then_some(self.attr.rnr_retry)
    }

    /// The transport retry count (`IB_QP_RETRY_CNT`).
    pub fn retry_count(&self) -> Option<u8> {
        self.has(sys::ib_qp_attr_mask_IB_QP_RETRY_CNT)
            .then_some(self.attr.retry_cnt)
    }

    /// The P_Key index (`IB_QP_PKEY_INDEX`).
    pub fn pkey_index(&self) -> Option<u16> {
        self.has(sys::ib_qp_attr_mask_IB_QP_PKEY_INDEX)
            .then_some(self.attr.pkey_index)
    }

    /// The first PSN the receive queue expects (`IB_QP_RQ_PSN`).
    pub fn rq_psn(&self) -> Option<u32> {
        self.has(sys::ib_qp_attr_mask_IB_QP_RQ_PSN)
            .then_some(self.attr.rq_psn)
    }

    /// The first PSN the send queue uses (`IB_QP_SQ_PSN`).
    pub fn sq_psn(&self) -> Option<u32> {
        self.has(sys::ib_qp_attr_mask_IB_QP_SQ_PSN)
            .then_some(self.attr.sq_psn)
    }

    /// The primary path's destination LID and SL, on an InfiniBand port (`IB_QP_AV`).
    pub fn path_lid(&self) -> Option<(u16, u8)> {
        let av = &self.attr.ah_attr;
        if !self.has(sys::ib_qp_attr_mask_IB_QP_AV)
            || av.type_ != sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_IB
        {
            return None;
        }
        // SAFETY: the IB view of the union, which an IB-typed attribute holds.
        Some((unsafe { av.__bindgen_anon_1.ib.dlid }, av.sl))
    }
}

// ---------------------------------------------------------------------------------------
// Work requests

/// One gather or scatter entry, as posted (`struct ib_sge`).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Sge(sys::ib_sge);

impl Default for Sge {
    /// An empty entry: no bytes, address 0 (which no [`SoftDma`] access reaches).
    fn default() -> Self {
        Self(sys::ib_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        })
    }
}

impl Sge {
    /// The address, in the address space of its key: an I/O virtual address of the MR
    /// the key names (under the device's local DMA key, or a DMA MR's, a DMA address).
    pub fn addr(&self) -> u64 {
        self.0.addr
    }

    /// The bytes it names, as DMA addresses: what they are under the device's local DMA
    /// key or a DMA MR's key (the driver's to know which key it is).
    pub fn dma_range(&self) -> DmaRange {
        DmaRange::new(self.0.addr, self.0.length as usize)
    }

    /// The length in bytes.
    pub fn length(&self) -> u32 {
        self.0.length
    }

    /// The local key.
    pub fn lkey(&self) -> u32 {
        self.0.lkey
    }
}

/// Bytes of memory a consumer named to the device by DMA address: the range of a posted
/// SGE ([`Sge::dma_range`]) or of a posted remote address ([`Remote::dma_range`]), or a
/// page of a mapped MR ([`MrPages::map`]). Only this layer makes one; a driver narrows
/// one ([`DmaRange::sub`]) and never leaves it, so [`SoftDma`] reaches nothing but what
/// some consumer named.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DmaRange {
    start: u64,
    len: usize,
}

impl DmaRange {
    /// No bytes.
    pub const EMPTY: Self = Self { start: 0, len: 0 };

    /// `len` bytes at `start`; empty if the range would wrap.
    fn new(start: u64, len: usize) -> Self {
        match start.checked_add(len as u64) {
            Some(_) => Self { start, len },
            None => Self::EMPTY,
        }
    }

    /// Its first address.
    pub fn start(self) -> u64 {
        self.start
    }

    /// Its length in bytes.
    pub fn len(self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The `len` bytes from `offset` on; `None` unless they are all within.
    pub fn sub(self, offset: usize, len: usize) -> Option<Self> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        Some(Self {
            start: self.start.checked_add(offset as u64)?,
            len,
        })
    }
}

/// The DMA engine of a software device: the memory the consumers named, reached by the
/// CPU. A device registered by [`Registration::new`] has no DMA device, so the IB core's
/// DMA mapping gives it kernel virtual addresses (`ib_uses_virt_dma`), and its consumers
/// keep the memory behind a posted WR's addresses, and an MR's pages, valid until the WR
/// completes or the MR is invalidated: the IB contract every HCA's DMA relies on. The
/// engine reaches only [`DmaRange`]s, which only name what consumers named; whether a
/// given access is allowed (keys, PDs, rights, which MR) is the driver's to check first,
/// as it is a device's.
pub struct SoftDma<'a> {
    _device: PhantomData<&'a ()>,
}

impl SoftDma<'_> {
    /// The kernel address of a range; `None` for null.
    fn kernel_address(range: DmaRange) -> Option<usize> {
        usize::try_from(range.start).ok().filter(|&a| a != 0)
    }

    /// Copies `from` into `to`, of the same length (they may overlap: a QP sending to
    /// itself); false, nothing copied, for different lengths or a null address.
    pub fn copy(&self, from: DmaRange, to: DmaRange) -> bool {
        if from.len != to.len {
            return false;
        }
        if from.len == 0 {
            return true;
        }
        let (Some(src), Some(dst)) = (Self::kernel_address(from), Self::kernel_address(to)) else {
            return false;
        };
        // SAFETY: both ranges are memory consumers named to the device, valid for the
        // access (the type's contract), reached by their kernel virtual addresses.
        unsafe { core::ptr::copy(src as *const u8, dst as *mut u8, from.len) };
        true
    }

    /// Writes `bytes` (the device's own: a header, an atomic's result) into `to`, of
    /// their length; false as for [`SoftDma::copy`].
    pub fn write(&self, to: DmaRange, bytes: &[u8]) -> bool {
        if to.len != bytes.len() {
            return false;
        }
        if bytes.is_empty() {
            return true;
        }
        let Some(dst) = Self::kernel_address(to) else {
            return false;
        };
        // SAFETY: as in `copy`; `bytes` is the driver's own memory, not the consumer's.
        unsafe { core::ptr::copy(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
        true
    }

    /// Runs `op` on the word `at` (8 bytes, aligned), for an atomic; `None` otherwise.
    fn with_word<R>(at: DmaRange, op: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
        let addr = Self::kernel_address(at).filter(|&a| at.len == 8 && a % 8 == 0)?;
        // SAFETY: an aligned word of memory consumers named to the device (as in
        // `copy`), borrowed for `op` only; the device's atomics are atomic with respect
        // to each other and to the CPU's, which the atomic instruction gives.
        let word = unsafe { AtomicU64::from_ptr(addr as *mut u64) };
        Some(op(word))
    }

    /// Atomically: the word `at` becomes `swap` if it is `compare`; its old value. `None`
    /// unless `at` is 8 aligned bytes.
    pub fn compare_swap(&self, at: DmaRange, compare: u64, swap: u64) -> Option<u64> {
        Self::with_word(at, |word| {
            match word.compare_exchange(compare, swap, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(old) | Err(old) => old,
            }
        })
    }

    /// Atomically: `add` is added to the word `at`; its old value. `None` as for
    /// [`SoftDma::compare_swap`].
    pub fn fetch_add(&self, at: DmaRange, add: u64) -> Option<u64> {
        Self::with_word(at, |word| word.fetch_add(add, Ordering::SeqCst))
    }
}

/// The SGE list of a WR: `num` entries at `list`, valid for the post.
///
/// # Safety
///
/// `list` has `num` entries (when `num` is positive), valid for `'a` (the consumer's
/// contract for a posted WR).
unsafe fn sges<'a>(list: *const sys::ib_sge, num: c_int) -> Result<&'a [Sge]> {
    let count = usize::try_from(num).map_err(|_| EINVAL)?;
    if count == 0 {
        return Ok(&[]);
    }
    if list.is_null() {
        return Err(EINVAL);
    }
    // SAFETY: the caller's contract; `Sge` is a transparent view of `ib_sge`.
    Ok(unsafe { core::slice::from_raw_parts(list.cast::<Sge>(), count) })
}

/// The flags of a send WR (`enum ib_send_flags`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SendFlags(u32);

impl SendFlags {
    /// Wait for earlier READs and atomics (`IB_SEND_FENCE`).
    pub const FENCE: Self = Self(1);
    /// Complete it (`IB_SEND_SIGNALED`).
    pub const SIGNALED: Self = Self(1 << 1);
    /// Solicit an event at the responder (`IB_SEND_SOLICITED`).
    pub const SOLICITED: Self = Self(1 << 2);
    /// The gather list is data to copy now (`IB_SEND_INLINE`).
    pub const INLINE: Self = Self(1 << 3);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The remote end of an RDMA or atomic operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Remote {
    addr: u64,
    rkey: u32,
}

impl Remote {
    /// The address in the peer's MR.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The peer's key.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// The `len` bytes at the address, as DMA addresses: what they are under a DMA MR's
    /// key (the driver's to know which key it is).
    pub fn dma_range(&self, len: usize) -> DmaRange {
        DmaRange::new(self.addr, len)
    }
}

/// What a send WR asks, per opcode, with the fields of the containing structure the
/// opcode has (`ib_rdma_wr`, `ib_atomic_wr`, `ib_reg_wr`, `ib_ud_wr`).
pub enum SendOp<'a, D: Driver> {
    /// SEND.
    Send,
    /// SEND with immediate data (big-endian as posted).
    SendWithImm(u32),
    /// SEND with Invalidate of the responder's `rkey`.
    SendWithInv(u32),
    /// RDMA WRITE, with immediate data if any.
    Write {
        /// Where.
        remote: Remote,
        /// Immediate data (big-endian as posted).
        imm: Option<u32>,
    },
    /// RDMA READ.
    Read {
        /// From where.
        remote: Remote,
    },
    /// Atomic compare and swap of the 8-byte word at `remote`.
    CompareSwap {
        /// The word.
        remote: Remote,
        /// The value it must have.
        compare: u64,
        /// The value it gets.
        swap: u64,
    },
    /// Atomic fetch and add to the 8-byte word at `remote`.
    FetchAdd {
        /// The word.
        remote: Remote,
        /// What is added.
        add: u64,
    },
    /// Invalidates the local key `key`.
    LocalInv {
        /// The key.
        key: u32,
    },
    /// Fast registration of `mr`'s mapped pages under `key` with `access`.
    RegMr {
        /// The MR, one of this device's.
        mr: &'a Mr<D>,
        /// Its new key.
        key: u32,
        /// The rights it grants.
        access: Access,
    },
    /// A SEND (with immediate data if any) on a datagram QP, to `remote_qpn` by `ah`.
    Datagram {
        /// The address handle, one of this device's.
        ah: &'a Ah<D>,
        /// The destination QP.
        remote_qpn: u32,
        /// Its Q_Key (high bit set: the sending QP's own).
        remote_qkey: u32,
        /// The P_Key index the packet carries (QP1's sends; others use the QP's).
        pkey_index: u16,
        /// Immediate data (big-endian as posted).
        imm: Option<u32>,
    },
}

/// A send WR as posted, read in place.
pub struct SendWr<'a, D: Driver> {
    wr: &'a sys::ib_send_wr,
    datagram: bool,
    _driver: PhantomData<D>,
}

impl<'a, D: Driver> SendWr<'a, D> {
    /// The consumer's WR id.
    pub fn id(&self) -> u64 {
        // SAFETY: the union's `wr_id` view: any bits are a valid u64.
        unsafe { self.wr.__bindgen_anon_1.wr_id }
    }

    /// Its flags.
    pub fn flags(&self) -> SendFlags {
        SendFlags(self.wr.send_flags as u32)
    }

    /// Whether it asks for a completion (`IB_SEND_SIGNALED`).
    pub fn signaled(&self) -> bool {
        self.flags().contains(SendFlags::SIGNALED)
    }

    /// Its gather list; `EINVAL` for a malformed one.
    pub fn sges(&self) -> Result<&'a [Sge]> {
        // SAFETY: the consumer's list of `num_sge` entries, valid for the post.
        unsafe { sges(self.wr.sg_list, self.wr.num_sge) }
    }

    /// The opcode its completion reports, whatever else the WR holds (a flushed WR is
    /// completed without reading more of it: `ib_drain_sq` posts an RDMA WRITE with no
    /// address on any QP).
    pub fn completion_opcode(&self) -> WcOpcode {
        match self.wr.opcode {
            sys::ib_wr_opcode_IB_WR_RDMA_WRITE | sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM => {
                WcOpcode::RdmaWrite
            }
            sys::ib_wr_opcode_IB_WR_RDMA_READ => WcOpcode::RdmaRead,
            sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP => WcOpcode::CompSwap,
            sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => WcOpcode::FetchAdd,
            sys::ib_wr_opcode_IB_WR_LOCAL_INV => WcOpcode::LocalInvalidate,
            sys::ib_wr_opcode_IB_WR_REG_MR => WcOpcode::RegMr,
            _ => WcOpcode::Send,
        }
    }

    /// What it asks: `EOPNOTSUPP` for an opcode this layer does not know, `EINVAL` for
    /// a REG_MR with no MR or a datagram with no AH.
    pub fn op(&self) -> Result<SendOp<'a, D>> {
        let wr = self.wr;
        let this: *const sys::ib_send_wr = wr;
        // SAFETY: both views of the union are a u32.
        let ex = unsafe { wr.ex.imm_data };
        // The consumer posts the containing structure each opcode needs (the IB API's
        // contract; `container_of` in the C drivers): the send WR is its first field.
        Ok(match wr.opcode {
            sys::ib_wr_opcode_IB_WR_SEND | sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM
                if self.datagram =>
            {
                // SAFETY: see above: an `ib_ud_wr` on a datagram QP, valid for the post.
                let ud = unsafe { &*this.cast::<sys::ib_ud_wr>() };
                if ud.ah.is_null() {
                    return Err(EINVAL);
                }
                SendOp::Datagram {
                    // SAFETY: an AH the consumer created on this device, which it keeps
                    // while WRs use it.
                    ah: unsafe { Ah::from_raw(ud.ah) },
                    remote_qpn: ud.remote_qpn,
                    remote_qkey: ud.remote_qkey,
                    pkey_index: ud.pkey_index,
                    imm: (wr.opcode == sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM).then_some(ex),
                }
            }
            sys::ib_wr_opcode_IB_WR_SEND => SendOp::Send,
            sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM => SendOp::SendWithImm(ex),
            sys::ib_wr_opcode_IB_WR_SEND_WITH_INV => SendOp::SendWithInv(ex),
            sys::ib_wr_opcode_IB_WR_LOCAL_INV => SendOp::LocalInv { key: ex },
            sys::ib_wr_opcode_IB_WR_RDMA_WRITE
            | sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM
            | sys::ib_wr_opcode_IB_WR_RDMA_READ => {
                // SAFETY: see above: an `ib_rdma_wr`.
                let rdma = unsafe { &*this.cast::<sys::ib_rdma_wr>() };
                let remote = Remote {
                    addr: rdma.remote_addr,
                    rkey: rdma.rkey,
                };
                match wr.opcode {
                    sys::ib_wr_opcode_IB_WR_RDMA_READ => SendOp::Read { remote },
                    sys::ib_wr_opcode_IB_WR_RDMA_WRITE => SendOp::Write { remote, imm: None },
                    _ => SendOp::Write {
                        remote,
                        imm: Some(ex),
                    },
                }
            }
            sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP
            | sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => {
                // SAFETY: see above: an `ib_atomic_wr`.
                let atomic = unsafe { &*this.cast::<sys::ib_atomic_wr>() };
                let remote = Remote {
                    addr: atomic.remote_addr,
                    rkey: atomic.rkey,
                };
                if wr.opcode == sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP {
                    SendOp::CompareSwap {
                        remote,
                        compare: atomic.compare_add,
                        swap: atomic.swap,
                    }
                } else {
                    SendOp::FetchAdd {
                        remote,
                        add: atomic.compare_add,
                    }
                }
            }
            sys::ib_wr_opcode_IB_WR_REG_MR => {
                // SAFETY: see above: an `ib_reg_wr`.
                let reg = unsafe { &*this.cast::<sys::ib_reg_wr>() };
                if reg.mr.is_null() {
                    return Err(EINVAL);
                }
                SendOp::RegMr {
                    // SAFETY: an MR the consumer allocated on this device (through the
                    // layer's `alloc_mr`), alive until it deregisters it.
                    mr: unsafe { Mr::from_raw(reg.mr) },
                    key: reg.key,
                    access: Access::from_bits(reg.access as u32),
                }
            }
            _ => return Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP)),
        })
    }
}

/// The chain of send WRs a `post_send` got, in order: an iterator of [`SendWr`]s. The
/// driver posts each it takes; when it refuses one, its error names the last one taken
/// as the consumer's bad WR (the first, if it took none).
pub struct SendWrs<'a, D: Driver> {
    next: *const sys::ib_send_wr,
    last: *const sys::ib_send_wr,
    datagram: bool,
    _chain: PhantomData<(&'a sys::ib_send_wr, D)>,
}

impl<'a, D: Driver> Iterator for SendWrs<'a, D> {
    type Item = SendWr<'a, D>;

    fn next(&mut self) -> Option<SendWr<'a, D>> {
        // SAFETY: the consumer's chain, each WR valid for the post (`'a`).
        let wr = unsafe { self.next.as_ref() }?;
        self.last = self.next;
        self.next = wr.next;
        Some(SendWr {
            wr,
            datagram: self.datagram,
            _driver: PhantomData,
        })
    }
}

/// The chain of receive WRs a `post_recv` got, as [`SendWrs`].
pub struct RecvWrs<'a> {
    next: *const sys::ib_recv_wr,
    last: *const sys::ib_recv_wr,
    _chain: PhantomData<&'a sys::ib_recv_wr>,
}

impl<'a> Iterator for RecvWrs<'a> {
    type Item = RecvWr<'a>;

    fn next(&mut self) -> Option<RecvWr<'a>> {
        // SAFETY: as for `SendWrs`.
        let wr = unsafe { self.next.as_ref() }?;
        self.last = self.next;
        self.next = wr.next;
        Some(RecvWr { wr })
    }
}

/// A receive WR as posted, read in place.
pub struct RecvWr<'a> {
    wr: &'a sys::ib_recv_wr,
}

impl<'a> RecvWr<'a> {
    /// The consumer's WR id.
    pub fn id(&self) -> u64 {
        // SAFETY: the union's `wr_id` view: any bits are a valid u64.
        unsafe { self.wr.__bindgen_anon_1.wr_id }
    }

    /// Its scatter list; `EINVAL` for a malformed one.
    pub fn sges(&self) -> Result<&'a [Sge]> {
        // SAFETY: the consumer's list of `num_sge` entries, valid for the post.
        unsafe { sges(self.wr.sg_list, self.wr.num_sge) }
    }
}

// ---------------------------------------------------------------------------------------
// Address handles and MRs

/// The global route of an address handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Route {
    /// The source GID (from the GID table entry the IB core resolved), if it did.
    pub sgid: Option<Gid>,
    /// The destination GID.
    pub dgid: Gid,
    /// The source GID's table index.
    pub sgid_index: u8,
    /// The hop limit.
    pub hop_limit: u8,
    /// The traffic class.
    pub traffic_class: u8,
    /// The flow label.
    pub flow_label: u32,
}

/// The attributes of an AH being created (`rdma_ah_attr`), read in place.
pub struct AhAttr<'a> {
    attr: &'a sys::rdma_ah_attr,
}

impl AhAttr<'_> {
    /// The port.
    pub fn port(&self) -> u32 {
        self.attr.port_num
    }

    /// The service level.
    pub fn sl(&self) -> u8 {
        self.attr.sl
    }

    /// The destination LID, on an InfiniBand port (`None` for another address type).
    pub fn dlid(&self) -> Option<u16> {
        if self.attr.type_ != sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_IB {
            return None;
        }
        // SAFETY: the IB view of the union, which an IB-typed attribute holds.
        Some(unsafe { self.attr.__bindgen_anon_1.ib.dlid })
    }

    /// Its global route, if it has one (`IB_AH_GRH`; RoCE AHs always do).
    pub fn route(&self) -> Option<Route> {
        if u32::from(self.attr.ah_flags) & sys::ib_ah_flags_IB_AH_GRH == 0 {
            return None;
        }
        let grh = &self.attr.grh;
        // SAFETY: the IB core fills the source GID's attribute, when it resolved one,
        // and holds it for the call; `ib_gid`'s views are all bytes.
        let (sgid, dgid) = unsafe {
            (
                grh.sgid_attr.as_ref().map(|attr| Gid(attr.gid.raw)),
                Gid(grh.dgid.raw),
            )
        };
        Some(Route {
            sgid,
            dgid,
            sgid_index: grh.sgid_index,
            hop_limit: grh.hop_limit,
            traffic_class: grh.traffic_class,
            flow_label: grh.flow_label,
        })
    }
}

/// A QP's attributes, as [`Driver::query_qp`] reports them (`ib_qp_attr` and the
/// `ib_qp_init_attr` caps; `rdma resource show qp` and the ULPs read them).
#[derive(Clone, Copy, Debug)]
pub struct QpQuery {
    /// Its state as the device has it (a QP the device moved to an error state says so).
    pub state: QpState,
    /// The port, P_Key index and Q_Key its transitions set.
    pub port: u8,
    /// The P_Key index.
    pub pkey_index: u16,
    /// The Q_Key (UD and the special QPs).
    pub qkey: u32,
    /// The remote access it grants (RC).
    pub access: Access,
    /// An RC QP's destination QP, and its path's LID.
    pub dest_qpn: u32,
    /// The path's destination LID (RC).
    pub dlid: u16,
    /// The next PSN it sends and the one it expects (RC).
    pub sq_psn: u32,
    /// The PSN it expects.
    pub rq_psn: u32,
    /// The path MTU (RC).
    pub path_mtu: crate::verbs::Mtu,
    /// Its queue sizes.
    pub caps: QpCaps,
    /// Whether every send completes with a CQE (`IB_SIGNAL_ALL_WR`).
    pub signal_all: bool,
}

/// An InfiniBand AH's attributes, as [`Driver::query_ah`] reports them.
#[derive(Clone, Copy, Debug)]
pub struct AhQuery {
    /// The port.
    pub port: u32,
    /// The destination LID.
    pub dlid: u16,
    /// The service level.
    pub sl: u8,
    /// The source path bits.
    pub src_path_bits: u8,
    /// The global route, if the AH has one.
    pub route: Option<Route>,
}

/// The DMA-mapped scatterlist a `map_mr_sg` maps into an MR's page list.
pub struct MrPages<'a, D: Driver> {
    mr: &'a Mr<D>,
    sg: *mut sys::scatterlist,
    nents: c_int,
    offset: *mut c_uint,
}

impl<D: Driver> MrPages<'_, D> {
    /// Splits the list into pages of the MR's page size (`ib_sg_to_pages`), giving each
    /// page's DMA address to `set_page` in order; an error from it stops the walk. How
    /// many list entries were mapped.
    pub fn map(self, mut set_page: impl FnMut(DmaRange) -> Result) -> Result<u32> {
        let mut callback: &mut dyn FnMut(DmaRange) -> Result = &mut set_page;
        let mapping = &self.mr.state().mapping;
        // One mapping of an MR at a time: the callback finds this one's closure through
        // the MR, so a second, concurrent one is refused.
        let this: *mut () = core::ptr::from_mut(&mut callback).cast();
        if mapping
            .compare_exchange(
                core::ptr::null_mut(),
                this,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(EBUSY);
        }
        // SAFETY: the MR is ours and the list is what `ib_map_mr_sg` got, DMA-mapped,
        // with `nents` entries (the op's contract); the callback finds `callback`
        // through the MR while this call runs, and only then.
        let mapped = unsafe {
            sys::ib_sg_to_pages(
                self.mr.raw(),
                self.sg,
                self.nents,
                self.offset,
                Some(set_page_of::<D>),
            )
        };
        mapping.store(core::ptr::null_mut(), Ordering::Release);
        u32::try_from(mapped).map_err(|_| Error::from_errno(mapped))
    }
}

/// `ib_sg_to_pages`' callback: one more page for the mapping under way on `mr`.
///
/// # Safety
///
/// Called by `ib_sg_to_pages` from [`MrPages::map`], for an MR of a device of `D`.
unsafe extern "C" fn set_page_of<D: Driver>(mr: *mut sys::ib_mr, addr: u64) -> c_int {
    // SAFETY: a created MR of ours (the contract).
    let mr = unsafe { Mr::<D>::from_raw(mr) };
    let callback = mr
        .state()
        .mapping
        .load(Ordering::Acquire)
        .cast::<&mut dyn FnMut(DmaRange) -> Result>();
    if callback.is_null() {
        return EINVAL.to_errno();
    }
    // A page of the MR's page size (`ib_map_mr_sg` set it before the walk).
    let page = DmaRange::new(addr, mr.page_size() as usize);
    // SAFETY: set by `MrPages::map` (the only mapping of this MR under way), which is
    // waiting in `ib_sg_to_pages` and holds no other borrow of the callback meanwhile.
    match unsafe { (*callback)(page) } {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}

// ---------------------------------------------------------------------------------------
// Device and port attributes

/// A count for a C `int` attribute: saturated, never negative.
fn c_count(n: u32) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// The device's attributes a `query_device` fills (`ib_device_attr`, zeroed by the IB
/// core and read by it at registration), one setter per attribute.
pub struct DeviceAttrs<'a>(&'a mut sys::ib_device_attr);

impl DeviceAttrs<'_> {
    /// The system image GUID, in host order.
    pub fn sys_image_guid(&mut self, guid: u64) -> &mut Self {
        self.0.sys_image_guid = guid.to_be();
        self
    }

    /// The largest MR, in bytes.
    pub fn max_mr_size(&mut self, bytes: u64) -> &mut Self {
        self.0.max_mr_size = bytes;
        self
    }

    /// The page sizes an MR may use, one bit per size.
    pub fn page_size_cap(&mut self, sizes: u64) -> &mut Self {
        self.0.page_size_cap = sizes;
        self
    }

    /// QPs, WRs per queue, and gather/scatter entries per WR (send, receive, RDMA READ).
    pub fn qp_limits(
        &mut self,
        qps: u32,
        wrs: u32,
        send_sge: u32,
        recv_sge: u32,
        read_sge: u32,
    ) -> &mut Self {
        self.0.max_qp = c_count(qps);
        self.0.max_qp_wr = c_count(wrs);
        self.0.max_send_sge = c_count(send_sge);
        self.0.max_recv_sge = c_count(recv_sge);
        self.0.max_sge_rd = c_count(read_sge);
        self
    }

    /// CQs, and completions per CQ.
    pub fn cq_limits(&mut self, cqs: u32, entries: u32) -> &mut Self {
        self.0.max_cq = c_count(cqs);
        self.0.max_cqe = c_count(entries);
        self
    }

    /// MRs, PDs, AHs, P_Keys, and pages per fast registration.
    pub fn object_limits(
        &mut self,
        mrs: u32,
        pds: u32,
        ahs: u32,
        pkeys: u16,
        fast_reg_pages: u32,
    ) -> &mut Self {
        self.0.max_mr = c_count(mrs);
        self.0.max_pd = c_count(pds);
        self.0.max_ah = c_count(ahs);
        self.0.max_pkeys = pkeys;
        self.0.max_fast_reg_page_list_len = fast_reg_pages;
        self
    }

    /// RDMA READs and atomics outstanding: per QP as responder and as requester, and for
    /// the whole device as responder.
    pub fn read_atomic_limits(
        &mut self,
        per_qp: u32,
        per_qp_initiator: u32,
        device: u32,
    ) -> &mut Self {
        self.0.max_qp_rd_atom = c_count(per_qp);
        self.0.max_qp_init_rd_atom = c_count(per_qp_initiator);
        self.0.max_res_rd_atom = c_count(device);
        self
    }

    /// Fast registration and local invalidation (`IB_DEVICE_MEM_MGT_EXTENSIONS`).
    pub fn mem_mgt_extensions(&mut self) -> &mut Self {
        self.0.device_cap_flags |= sys::ib_device_cap_flags_IB_DEVICE_MEM_MGT_EXTENSIONS as u64;
        self
    }

    /// The device has a key for all memory by DMA address (`IBK_LOCAL_DMA_LKEY`).
    pub fn local_dma_lkey(&mut self) -> &mut Self {
        self.0.kernel_cap_flags |= u64::from(sys::ib_kernel_cap_flags_IBK_LOCAL_DMA_LKEY);
        self
    }

    /// Atomics are atomic with respect to this device's own (`IB_ATOMIC_HCA`).
    pub fn atomics_within_device(&mut self) -> &mut Self {
        self.0.atomic_cap = sys::ib_atomic_cap_IB_ATOMIC_HCA;
        self
    }
}

/// A port's width (`enum ib_port_width`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortWidth {
    /// 1x.
    X1,
    /// 4x.
    X4,
    /// 8x.
    X8,
    /// 12x.
    X12,
}

/// A port's lane speed (`enum ib_port_speed`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortSpeed {
    /// 2.5 Gb/s.
    Sdr,
    /// 5 Gb/s.
    Ddr,
    /// 10 Gb/s.
    Qdr,
    /// 14 Gb/s.
    Fdr,
    /// 25 Gb/s.
    Edr,
}

/// A port's attributes a `query_port` fills (`ib_port_attr`, zeroed by the IB core).
pub struct PortAttrs<'a>(&'a mut sys::ib_port_attr);

impl PortAttrs<'_> {
    /// Its logical and physical state.
    pub fn state(
        &mut self,
        state: crate::verbs::PortState,
        phys: crate::verbs::PhysPortState,
    ) -> &mut Self {
        self.0.state = state.to_raw();
        self.0.phys_state = phys.to_raw() as u8;
        self
    }

    /// Its largest and its active MTU.
    pub fn mtu(&mut self, max: crate::verbs::Mtu, active: crate::verbs::Mtu) -> &mut Self {
        self.0.max_mtu = max.to_raw();
        self.0.active_mtu = active.to_raw();
        self
    }

    /// Its GID and P_Key table sizes.
    pub fn tables(&mut self, gids: u32, pkeys: u16) -> &mut Self {
        self.0.gid_tbl_len = c_count(gids);
        self.0.pkey_tbl_len = pkeys;
        self
    }

    /// The largest message, in bytes.
    pub fn max_msg_size(&mut self, bytes: u32) -> &mut Self {
        self.0.max_msg_sz = bytes;
        self
    }

    /// Its LID and LMC (0: no subnet manager gave it one yet).
    pub fn lid(&mut self, lid: u16, lmc: u8) -> &mut Self {
        self.0.lid = lid.into();
        self.0.lmc = lmc;
        self
    }

    /// Its subnet manager's LID and SL, and the subnet timeout it set.
    pub fn subnet_manager(&mut self, lid: u16, sl: u8, timeout: u8) -> &mut Self {
        self.0.sm_lid = lid.into();
        self.0.sm_sl = sl;
        self.0.subnet_timeout = timeout;
        self
    }

    /// PortInfo:CapabilityMask, and the data VLs it runs.
    pub fn capabilities(&mut self, mask: u32, max_vl_num: u8) -> &mut Self {
        self.0.port_cap_flags = mask;
        self.0.max_vl_num = max_vl_num;
        self
    }

    /// Its P_Key and Q_Key violation counters.
    pub fn violations(&mut self, bad_pkey: u32, qkey: u32) -> &mut Self {
        self.0.bad_pkey_cntr = bad_pkey;
        self.0.qkey_viol_cntr = qkey;
        self
    }

    /// Its active width and lane speed.
    pub fn link(&mut self, width: PortWidth, speed: PortSpeed) -> &mut Self {
        self.0.active_width = match width {
            PortWidth::X1 => sys::ib_port_width_IB_WIDTH_1X,
            PortWidth::X4 => sys::ib_port_width_IB_WIDTH_4X,
            PortWidth::X8 => sys::ib_port_width_IB_WIDTH_8X,
            PortWidth::X12 => sys::ib_port_width_IB_WIDTH_12X,
        } as u8;
        self.0.active_speed = match speed {
            PortSpeed::Sdr => sys::ib_port_speed_IB_SPEED_SDR,
            PortSpeed::Ddr => sys::ib_port_speed_IB_SPEED_DDR,
            PortSpeed::Qdr => sys::ib_port_speed_IB_SPEED_QDR,
            PortSpeed::Fdr => sys::ib_port_speed_IB_SPEED_FDR,
            PortSpeed::Edr => sys::ib_port_speed_IB_SPEED_EDR,
        } as u16;
        self
    }
}

/// What a port speaks (`RDMA_CORE_CAP_*`, `RDMA_CORE_PORT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CoreCaps(u32);

impl CoreCaps {
    /// RoCEv2: IB transport over UDP (`RDMA_CORE_CAP_PROT_ROCE_UDP_ENCAP`).
    pub const ROCE_UDP_ENCAP: Self = Self(sys::RDMA_CORE_CAP_PROT_ROCE_UDP_ENCAP);
    /// Address handles carry Ethernet (RoCE) addresses (`RDMA_CORE_CAP_ETH_AH`).
    pub const ETH_AH: Self = Self(sys::RDMA_CORE_CAP_ETH_AH);
    /// InfiniBand (`RDMA_CORE_CAP_PROT_IB`), without the management classes: a port
    /// whose MADs nobody handles yet (no QP0/QP1), which `ib_mad` leaves alone.
    pub const PROT_IB: Self = Self(sys::RDMA_CORE_CAP_PROT_IB);
    /// InfiniBand with its management: the SMI (QP0), the GSI (QP1), the IB CM and the
    /// SA (`RDMA_CORE_PORT_IBA_IB`); the driver answers MADs by `process_mad`.
    pub const IBA_IB: Self = Self(sys::RDMA_CORE_PORT_IBA_IB);
}

impl core::ops::BitOr for CoreCaps {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// What never changes about a port (`ib_port_immutable`).
pub struct PortImmutable<'a>(&'a mut sys::ib_port_immutable);

impl PortImmutable<'_> {
    /// Its protocols.
    pub fn core_caps(&mut self, caps: CoreCaps) -> &mut Self {
        self.0.core_cap_flags = caps.0;
        self
    }

    /// Its GID and P_Key table sizes.
    pub fn tables(&mut self, gids: u32, pkeys: u32) -> &mut Self {
        self.0.gid_tbl_len = c_count(gids);
        self.0.pkey_tbl_len = c_count(pkeys);
        self
    }

    /// The largest MAD it handles (0: none).
    pub fn max_mad_size(&mut self, bytes: u32) -> &mut Self {
        self.0.max_mad_size = bytes;
        self
    }
}

/// The kind of MR an `alloc_mr` asks for (`enum ib_mr_type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MrType {
    /// A fast-registration MR (`IB_MR_TYPE_MEM_REG`).
    MemReg,
    /// Any other: its C value.
    Other(u32),
}

impl MrType {
    fn from_raw(raw: u32) -> Self {
        if raw == sys::ib_mr_type_IB_MR_TYPE_MEM_REG {
            Self::MemReg
        } else {
            Self::Other(raw)
        }
    }
}

// ---------------------------------------------------------------------------------------
// MADs

/// A MAD's size (`struct ib_mad`).
pub const MAD_SIZE: usize = 256;

/// A MAD handed to [`Driver::process_mad`].
pub struct Mad<'a> {
    bytes: &'a [u8; MAD_SIZE],
    received: Option<ReceivedRoute>,
}

impl<'a> Mad<'a> {
    /// Its bytes.
    pub fn bytes(&self) -> &'a [u8; MAD_SIZE] {
        self.bytes
    }

    /// Where it came from, if it arrived from the fabric (none: the MAD layer's own,
    /// routed to the port itself).
    pub fn received(&self) -> Option<ReceivedRoute> {
        self.received
    }
}

/// What [`Driver::process_mad`] did with a MAD (`IB_MAD_RESULT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MadResult {
    /// Not the driver's: the MAD layer's agents take it.
    NotHandled,
    /// Answered: the reply is to be sent.
    Reply,
    /// Taken, with nothing to send back (a trap repress).
    Consumed,
    /// Refused.
    Failure,
}

/// A port's event, for the IB core's clients (`enum ib_event_type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortEvent {
    /// The port went ACTIVE.
    Active,
    /// The port left ACTIVE.
    Error,
    /// Its LID changed.
    LidChange,
    /// Its P_Key table changed.
    PkeyChange,
    /// Its subnet manager changed.
    SmChange,
    /// The subnet manager asks its clients to register again.
    ClientReregister,
    /// Its GID table changed.
    GidChange,
    /// The whole device failed (a catastrophic error): every QP is lost; sent for port 1
    /// (`IB_EVENT_DEVICE_FATAL`).
    DeviceFatal,
}

impl PortEvent {
    fn to_raw(self) -> u32 {
        match self {
            Self::Active => sys::ib_event_type_IB_EVENT_PORT_ACTIVE,
            Self::Error => sys::ib_event_type_IB_EVENT_PORT_ERR,
            Self::LidChange => sys::ib_event_type_IB_EVENT_LID_CHANGE,
            Self::PkeyChange => sys::ib_event_type_IB_EVENT_PKEY_CHANGE,
            Self::SmChange => sys::ib_event_type_IB_EVENT_SM_CHANGE,
            Self::ClientReregister => sys::ib_event_type_IB_EVENT_CLIENT_REREGISTER,
            Self::DeviceFatal => sys::ib_event_type_IB_EVENT_DEVICE_FATAL,
            Self::GidChange => sys::ib_event_type_IB_EVENT_GID_CHANGE,
        }
    }
}

impl<D: Driver> Device<D> {
    /// Tells the IB core's clients of `event` on `port` (`ib_dispatch_event`); any
    /// context.
    pub fn dispatch_port_event(&self, port: u32, event: PortEvent) {
        // SAFETY: a registered device (a `Device` view exists only of one); the helper
        // builds the event on its stack for the call.
        unsafe { sys::tilde_ib_dispatch_port_event(self.as_raw(), port, event.to_raw()) };
    }
}

// ---------------------------------------------------------------------------------------
// The trait

/// What a device driver does; becomes the device's `ib_device_ops`.
///
/// `Self` is the device's state, reached in every op as `dev` (a [`Device<Self>`] derefs
/// to it). Every op is called by the IB core in a context that may sleep, except the data
/// path ([`Driver::post_send`], [`Driver::post_recv`], [`Driver::poll_cq`],
/// [`Driver::req_notify_cq`]) and the AH ops, which any context calls.
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
    fn query_device(dev: &Device<Self>, attrs: &mut DeviceAttrs<'_>) -> Result;
    /// Fills `port`'s attributes.
    fn query_port(dev: &Device<Self>, port: u32, attrs: &mut PortAttrs<'_>) -> Result;
    /// Fills what never changes about `port` (its protocols, table sizes).
    fn port_immutable(dev: &Device<Self>, port: u32, immutable: &mut PortImmutable<'_>) -> Result;
    /// The link layer of `port`.
    fn link_layer(dev: &Device<Self>, port: u32) -> crate::verbs::LinkLayer;
    /// The P_Key at `index` of `port`'s table.
    fn query_pkey(dev: &Device<Self>, port: u32, index: u16) -> Result<u16>;
    /// The GID at `index` of an InfiniBand port's table (the IB core keeps RoCE ports'
    /// tables itself and never asks for those).
    fn query_gid(_dev: &Device<Self>, _port: u32, _index: u32) -> Result<Gid> {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }

    /// Answers a MAD for `port` (`process_mad`): one that arrived on QP0 or QP1, or an
    /// SMP the MAD layer routes to the port itself. [`MadResult::NotHandled`] (the
    /// default) passes it on to the MAD layer's agents.
    fn process_mad(
        _dev: &Device<Self>,
        _port: u32,
        _mad: &Mad<'_>,
        _reply: &mut [u8; MAD_SIZE],
    ) -> MadResult {
        MadResult::NotHandled
    }

    /// Sets and clears bits of `port`'s PortInfo:CapabilityMask (`modify_port`: the IB
    /// CM's IsCommunicationManagementSupported, an SM's IsSM). `EOPNOTSUPP` unless
    /// implemented.
    fn modify_port(_dev: &Device<Self>, _port: u32, _set: u32, _clear: u32) -> Result {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }

    /// Sets up a PD.
    fn alloc_pd(dev: &Device<Self>) -> Result<Self::Pd>;
    /// Sets up a CQ for `cq.requested()` completions, setting the room it has.
    fn create_cq(dev: &Device<Self>, cq: &mut NewCq<'_>) -> Result<Self::Cq>;
    /// Resizes a CQ to at least `entries`; the room it has now.
    fn resize_cq(dev: &Device<Self>, cq: &Cq<Self>, entries: u32) -> Result<u32>;
    /// Writes up to `out.room()` completions into `out`.
    fn poll_cq(dev: &Device<Self>, cq: &Cq<Self>, out: &mut Completions<'_>);
    /// Arms a CQ; with [`Arm::report_missed`], whether completions are waiting already.
    fn req_notify_cq(dev: &Device<Self>, cq: &Cq<Self>, arm: Arm) -> Result<bool>;
    /// Sets up a QP, setting its number and the capacities it got.
    fn create_qp(dev: &Device<Self>, qp: &mut NewQp<'_, Self>) -> Result<Self::Qp>;
    /// Modifies a QP.
    fn modify_qp(dev: &Device<Self>, qp: &Qp<Self>, change: &QpModify<'_>) -> Result;
    /// Posts the send WRs of `wrs` in order; an error refuses the last one taken and
    /// those after it.
    fn post_send(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut SendWrs<'_, Self>) -> Result;
    /// Posts the receive WRs of `wrs`, as [`Driver::post_send`].
    fn post_recv(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut RecvWrs<'_>) -> Result;
    /// A QP's attributes (`query_qp`). `EOPNOTSUPP` unless implemented.
    fn query_qp(_dev: &Device<Self>, _qp: &Qp<Self>) -> Result<QpQuery> {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
    /// Attaches a UD QP to the multicast group `gid` with LID `lid` (`attach_mcast`;
    /// the IB core has checked the QP's type, the GID and the LID). `EOPNOTSUPP` unless
    /// implemented.
    fn attach_mcast(_dev: &Device<Self>, _qp: &Qp<Self>, _gid: &Gid, _lid: u16) -> Result {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
    /// Detaches a QP from the multicast group `gid` (`detach_mcast`).
    fn detach_mcast(_dev: &Device<Self>, _qp: &Qp<Self>, _gid: &Gid, _lid: u16) -> Result {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
    /// Sets up an AH. May be called in atomic context (an AH made without
    /// `RDMA_CREATE_AH_SLEEPABLE`): no sleeping, no `GFP_KERNEL` allocation.
    fn create_ah(dev: &Device<Self>, attr: &AhAttr<'_>) -> Result<Self::Ah>;
    /// An AH's attributes as it was created (`query_ah`: the MAD layer matches a
    /// LID-routed response to its request by them). `EOPNOTSUPP` unless implemented.
    fn query_ah(_dev: &Device<Self>, _ah: &Ah<Self>) -> Result<AhQuery> {
        Err(crate::sys::kernel_api::errno(kernel::bindings::EOPNOTSUPP))
    }
    /// An MR of `pd` over all memory with `access`, and its keys.
    fn get_dma_mr(dev: &Device<Self>, pd: &Pd<Self>, access: Access) -> Result<(Self::Mr, MrKeys)>;
    /// An MR of `pd` of `mr_type` for up to `max_pages` pages, and its keys.
    fn alloc_mr(
        dev: &Device<Self>,
        pd: &Pd<Self>,
        mr_type: MrType,
        max_pages: u32,
    ) -> Result<(Self::Mr, MrKeys)>;
    /// Maps a DMA-mapped scatterlist into an MR's page list (by [`MrPages::map`]); how
    /// many list entries it mapped.
    fn map_mr_sg(dev: &Device<Self>, mr: &Mr<Self>, pages: MrPages<'_, Self>) -> Result<u32>;

    /// Tears down the object before its state is dropped (the IB core frees it next).
    fn dealloc_pd(_dev: &Device<Self>, _pd: &Pd<Self>) {}
    /// As [`Driver::dealloc_pd`], for a CQ (its events end after this returns).
    fn destroy_cq(_dev: &Device<Self>, _cq: &Cq<Self>) {}
    /// As [`Driver::dealloc_pd`], for a QP.
    fn destroy_qp(_dev: &Device<Self>, _qp: &Qp<Self>) {}
    /// As [`Driver::dealloc_pd`], for an AH; may be called in atomic context, as
    /// [`Driver::create_ah`].
    fn destroy_ah(_dev: &Device<Self>, _ah: &Ah<Self>) {}
    /// As [`Driver::dealloc_pd`], for an MR.
    fn dereg_mr(_dev: &Device<Self>, _mr: &Mr<Self>) {}
}

// ---------------------------------------------------------------------------------------
// The C table

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
struct Ops<T>(PhantomData<T>);

// One contract for every function here, stated once instead of on each: the IB core calls
// them through the table, with live objects of a device of `T`.
#[allow(clippy::missing_safety_doc)]
impl<T: Driver> Ops<T> {
    /// The device.
    unsafe fn dev<'a>(raw: *mut sys::ib_device) -> &'a Device<T> {
        // SAFETY: the IB core passes a device of ours, registered until its Registration
        // is dropped, which unregisters it first; its state is written before.
        unsafe { Device::from_raw(raw) }
    }

    unsafe extern "C" fn query_device(
        raw: *mut sys::ib_device,
        attr: *mut sys::ib_device_attr,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        // SAFETY: the IB core passes its attribute structure, valid for the call.
        status(unsafe { T::query_device(Self::dev(raw), &mut DeviceAttrs(&mut *attr)) })
    }

    unsafe extern "C" fn query_port(
        raw: *mut sys::ib_device,
        port: u32,
        attr: *mut sys::ib_port_attr,
    ) -> c_int {
        // SAFETY: as above.
        status(unsafe { T::query_port(Self::dev(raw), port, &mut PortAttrs(&mut *attr)) })
    }

    unsafe extern "C" fn get_port_immutable(
        raw: *mut sys::ib_device,
        port: u32,
        immutable: *mut sys::ib_port_immutable,
    ) -> c_int {
        // SAFETY: as above.
        status(unsafe {
            T::port_immutable(Self::dev(raw), port, &mut PortImmutable(&mut *immutable))
        })
    }

    unsafe extern "C" fn get_link_layer(
        raw: *mut sys::ib_device,
        port: u32,
    ) -> sys::rdma_link_layer {
        // SAFETY: as above.
        T::link_layer(unsafe { Self::dev(raw) }, port).to_raw()
    }

    unsafe extern "C" fn query_pkey(
        raw: *mut sys::ib_device,
        port: u32,
        index: u16,
        pkey: *mut u16,
    ) -> c_int {
        // SAFETY: as above.
        match T::query_pkey(unsafe { Self::dev(raw) }, port, index) {
            Ok(value) => {
                // SAFETY: the IB core's output, valid for the call.
                unsafe { *pkey = value };
                0
            }
            Err(error) => error.to_errno(),
        }
    }

    unsafe extern "C" fn query_gid(
        raw: *mut sys::ib_device,
        port: u32,
        index: c_int,
        gid: *mut sys::ib_gid,
    ) -> c_int {
        let Ok(index) = u32::try_from(index) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as above.
        match T::query_gid(unsafe { Self::dev(raw) }, port, index) {
            Ok(value) => {
                // SAFETY: the IB core's output, valid for the call; every view of the
                // union is its 16 bytes.
                unsafe { (*gid).raw = value.0 };
                0
            }
            Err(error) => error.to_errno(),
        }
    }

    unsafe extern "C" fn modify_port(
        raw: *mut sys::ib_device,
        port: u32,
        _mask: c_int,
        modify: *mut sys::ib_port_modify,
    ) -> c_int {
        // SAFETY: the IB core's request, valid for the call.
        let Some(modify) = (unsafe { modify.as_ref() }) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as in `query_port`.
        status(unsafe {
            T::modify_port(
                Self::dev(raw),
                port,
                modify.set_port_cap_mask,
                modify.clr_port_cap_mask,
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    unsafe extern "C" fn process_mad(
        raw: *mut sys::ib_device,
        _flags: c_int,
        port: u32,
        in_wc: *const sys::ib_wc,
        _in_grh: *const sys::ib_grh,
        in_mad: *const sys::ib_mad,
        out_mad: *mut sys::ib_mad,
        out_mad_size: *mut usize,
        _out_mad_pkey_index: *mut u16,
    ) -> c_int {
        const FAILURE: c_int = 0;
        const SUCCESS: c_int = 1;
        const REPLY: c_int = 2;
        const CONSUMED: c_int = 4;
        const _: () = assert!(size_of::<sys::ib_mad>() == MAD_SIZE);
        // SAFETY: the MAD layer's size for the reply buffer, valid for the call.
        if in_mad.is_null() || out_mad.is_null() || unsafe { *out_mad_size } < MAD_SIZE {
            return FAILURE;
        }
        // SAFETY: the MAD layer's MAD and reply buffer, `ib_mad`s (256 bytes, checked at
        // compile time), valid for the call and apart from each other.
        let (bytes, reply) = unsafe {
            (
                &*in_mad.cast::<[u8; MAD_SIZE]>(),
                &mut *out_mad.cast::<[u8; MAD_SIZE]>(),
            )
        };
        // SAFETY: the receive's completion, when the MAD came from the fabric.
        let received = unsafe { in_wc.as_ref() }.map(|wc| ReceivedRoute {
            slid: wc.slid as u16,
            sl: wc.sl,
            dlid_path_bits: wc.dlid_path_bits,
            pkey_index: wc.pkey_index,
        });
        let mad = Mad { bytes, received };
        // SAFETY: as above.
        match T::process_mad(unsafe { Self::dev(raw) }, port, &mad, reply) {
            MadResult::NotHandled => SUCCESS,
            MadResult::Reply => SUCCESS | REPLY,
            MadResult::Consumed => SUCCESS | CONSUMED,
            MadResult::Failure => FAILURE,
        }
    }

    unsafe extern "C" fn alloc_pd(pd: *mut sys::ib_pd, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: the IB core allocated `pd` as an `Object<ib_pd, T::Pd>` (the table's
        // size) and set its device.
        unsafe {
            match T::alloc_pd(Self::dev((*pd).device)) {
                Ok(state) => {
                    Object::<sys::ib_pd, T::Pd>::init(pd, state);
                    0
                }
                Err(error) => error.to_errno(),
            }
        }
    }

    unsafe extern "C" fn dealloc_pd(pd: *mut sys::ib_pd, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: `alloc_pd` succeeded for `pd` (the IB core deallocates only those), so
        // its state is initialised; it is dropped once, here, before the IB core frees it.
        unsafe {
            T::dealloc_pd(Self::dev((*pd).device), Pd::from_raw(pd));
            Object::<sys::ib_pd, T::Pd>::drop_data(pd);
        }
        0
    }

    unsafe extern "C" fn create_cq(
        cq: *mut sys::ib_cq,
        attr: *const sys::ib_cq_init_attr,
        _attrs: *mut sys::uverbs_attr_bundle,
    ) -> c_int {
        let events = match CqEvents::new(cq) {
            Ok(events) => events,
            Err(error) => return error.to_errno(),
        };
        // SAFETY: as in `alloc_pd`, for a CQ; `attr` is valid for the call.
        unsafe {
            let attr = &*attr;
            let mut new = NewCq {
                attr,
                events: &events,
                entries: attr.cqe,
            };
            match T::create_cq(Self::dev((*cq).device), &mut new) {
                Ok(driver) => {
                    (*cq).cqe = c_int::try_from(new.entries).unwrap_or(c_int::MAX);
                    Object::<sys::ib_cq, CqState<T::Cq>>::init(cq, CqState { events, driver });
                    0
                }
                Err(error) => {
                    // Clones the driver kept call nothing now.
                    events.close();
                    error.to_errno()
                }
            }
        }
    }

    /// `ib_free_cq` calls this before it stops the CQ's poll context (`cancel_work_sync`,
    /// `irq_poll_disable`): the handler calls end here, so none can queue the CQ's work
    /// again after the IB core stopped it.
    unsafe extern "C" fn pre_destroy_cq(cq: *mut sys::ib_cq) -> c_int {
        // SAFETY: a created CQ of ours, alive until its `destroy_cq`.
        unsafe { Cq::<T>::from_raw(cq) }.events().close();
        0
    }

    unsafe extern "C" fn destroy_cq(cq: *mut sys::ib_cq, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: as in `dealloc_pd`, for a CQ. The events end before the IB core frees
        // the CQ: no handler runs on it after this returns.
        unsafe {
            let view = Cq::<T>::from_raw(cq);
            T::destroy_cq(Self::dev((*cq).device), view);
            view.events().close();
            Object::<sys::ib_cq, CqState<T::Cq>>::drop_data(cq);
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
            let mut out = Completions {
                out: core::slice::from_raw_parts_mut(wc.cast::<MaybeUninit<sys::ib_wc>>(), num),
                filled: 0,
            };
            T::poll_cq(Self::dev((*cq).device), Cq::from_raw(cq), &mut out);
            c_int::try_from(out.filled).unwrap_or(0)
        }
    }

    unsafe extern "C" fn req_notify_cq(
        cq: *mut sys::ib_cq,
        flags: sys::ib_cq_notify_flags,
    ) -> c_int {
        // SAFETY: a created CQ of ours.
        let armed =
            unsafe { T::req_notify_cq(Self::dev((*cq).device), Cq::from_raw(cq), Arm(flags)) };
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
        if qp.is_null() || attr.is_null() {
            return EINVAL.to_errno();
        }
        // SAFETY: as in `alloc_pd`, for a QP; `attr` is valid and the driver's to adjust.
        unsafe {
            let mut new = NewQp {
                qp,
                attr: &mut *attr,
                _driver: PhantomData,
            };
            match T::create_qp(Self::dev((*qp).device), &mut new) {
                Ok(state) => {
                    Object::<sys::ib_qp, T::Qp>::init(qp, state);
                    0
                }
                Err(error) => error.to_errno(),
            }
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
            let change = QpModify {
                attr: &*attr,
                mask: mask as u32,
                qp_type: (*qp).qp_type,
            };
            T::modify_qp(Self::dev((*qp).device), Qp::from_raw(qp), &change)
        })
    }

    unsafe extern "C" fn destroy_qp(qp: *mut sys::ib_qp, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: as in `dealloc_pd`, for a QP.
        unsafe {
            T::destroy_qp(Self::dev((*qp).device), Qp::from_raw(qp));
            Object::<sys::ib_qp, T::Qp>::drop_data(qp);
        }
        0
    }

    unsafe extern "C" fn query_qp(
        qp: *mut sys::ib_qp,
        attr: *mut sys::ib_qp_attr,
        _mask: c_int,
        init: *mut sys::ib_qp_init_attr,
    ) -> c_int {
        // SAFETY: a created QP of ours and the IB core's attribute structures, valid for
        // the call (`ib_query_qp`).
        let (dev, raw_qp, attr, init) =
            unsafe { (Self::dev((*qp).device), &*qp, attr.as_mut(), init.as_mut()) };
        let (Some(attr), Some(init)) = (attr, init) else {
            return EINVAL.to_errno();
        };
        // SAFETY: as above.
        let query = match T::query_qp(dev, unsafe { Qp::from_raw(qp) }) {
            Ok(query) => query,
            Err(error) => return error.to_errno(),
        };
        let cap = sys::ib_qp_cap {
            max_send_wr: query.caps.max_send_wr,
            max_recv_wr: query.caps.max_recv_wr,
            max_send_sge: query.caps.max_send_sge,
            max_recv_sge: query.caps.max_recv_sge,
            max_inline_data: query.caps.max_inline_data,
            ..Default::default()
        };
        attr.qp_state = query.state.to_raw();
        attr.cur_qp_state = attr.qp_state;
        attr.path_mtu = query.path_mtu as u32;
        attr.path_mig_state = sys::ib_mig_state_IB_MIG_MIGRATED;
        attr.qkey = query.qkey;
        attr.rq_psn = query.rq_psn;
        attr.sq_psn = query.sq_psn;
        attr.dest_qp_num = query.dest_qpn;
        attr.qp_access_flags = query.access.bits() as c_int;
        attr.cap = cap;
        attr.pkey_index = query.pkey_index;
        attr.port_num = query.port.into();
        attr.ah_attr.type_ = sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_IB;
        attr.ah_attr.port_num = query.port.into();
        attr.ah_attr.__bindgen_anon_1.ib = sys::ib_ah_attr {
            dlid: query.dlid,
            src_path_bits: 0,
        };
        init.event_handler = raw_qp.event_handler;
        init.qp_context = raw_qp.qp_context;
        init.send_cq = raw_qp.send_cq;
        init.recv_cq = raw_qp.recv_cq;
        init.srq = raw_qp.srq;
        init.cap = cap;
        init.sq_sig_type = if query.signal_all {
            sys::ib_sig_type_IB_SIGNAL_ALL_WR
        } else {
            sys::ib_sig_type_IB_SIGNAL_REQ_WR
        };
        init.qp_type = raw_qp.qp_type;
        init.port_num = query.port.into();
        0
    }

    unsafe extern "C" fn attach_mcast(
        qp: *mut sys::ib_qp,
        gid: *mut sys::ib_gid,
        lid: u16,
    ) -> c_int {
        // SAFETY: the IB core's arguments to `attach_mcast`, as `mcast` wants them.
        unsafe { Self::mcast(qp, gid, lid, T::attach_mcast) }
    }

    unsafe extern "C" fn detach_mcast(
        qp: *mut sys::ib_qp,
        gid: *mut sys::ib_gid,
        lid: u16,
    ) -> c_int {
        // SAFETY: as in `attach_mcast`.
        unsafe { Self::mcast(qp, gid, lid, T::detach_mcast) }
    }

    /// `op` for a created QP of ours and the group's GID (16 bytes), valid for the call
    /// (`ib_attach_mcast`, `ib_detach_mcast`).
    unsafe fn mcast(
        qp: *mut sys::ib_qp,
        gid: *mut sys::ib_gid,
        lid: u16,
        op: fn(&Device<T>, &Qp<T>, &Gid, u16) -> Result,
    ) -> c_int {
        // SAFETY: the caller's GID, valid for the call.
        let Some(gid) = (unsafe { gid.as_ref() }) else {
            return EINVAL.to_errno();
        };
        // SAFETY: every member of the GID union is its 16 raw bytes.
        let gid = Gid(unsafe { gid.raw });
        // SAFETY: a created QP of ours, of a device of `T`.
        status(unsafe { op(Self::dev((*qp).device), Qp::from_raw(qp), &gid, lid) })
    }

    /// The C result of a post: 0, or the error with the bad WR reported (`last` taken,
    /// else `first`).
    unsafe fn posted<W>(
        result: Result,
        first: *const W,
        last: *const W,
        bad: *mut *const W,
    ) -> c_int {
        match result {
            Ok(()) => 0,
            Err(error) => {
                if !bad.is_null() {
                    // SAFETY: the IB core's out-parameter, valid for the call.
                    unsafe { *bad = if last.is_null() { first } else { last } };
                }
                error.to_errno()
            }
        }
    }

    unsafe extern "C" fn post_send(
        qp: *mut sys::ib_qp,
        wr: *const sys::ib_send_wr,
        bad: *mut *const sys::ib_send_wr,
    ) -> c_int {
        // SAFETY: a created QP of ours; the chain is the caller's, valid for the call.
        unsafe {
            let dev = Self::dev((*qp).device);
            let qp = Qp::<T>::from_raw(qp);
            let mut wrs = SendWrs {
                next: wr,
                last: core::ptr::null(),
                datagram: qp.qp_type().is_datagram(),
                _chain: PhantomData,
            };
            let result = T::post_send(dev, qp, &mut wrs);
            Self::posted(result, wr, wrs.last, bad)
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
            let qp = Qp::<T>::from_raw(qp);
            let mut wrs = RecvWrs {
                next: wr,
                last: core::ptr::null(),
                _chain: PhantomData,
            };
            let result = T::post_recv(dev, qp, &mut wrs);
            Self::posted(result, wr, wrs.last, bad)
        }
    }

    unsafe extern "C" fn create_ah(
        ah: *mut sys::ib_ah,
        init: *mut sys::rdma_ah_init_attr,
        _udata: *mut sys::ib_udata,
    ) -> c_int {
        // SAFETY: as in `alloc_pd`, for an AH; `init` and its attribute are valid for the
        // call.
        unsafe {
            let Some(attr) = (*init).ah_attr.as_ref() else {
                return EINVAL.to_errno();
            };
            match T::create_ah(Self::dev((*ah).device), &AhAttr { attr }) {
                Ok(state) => {
                    Object::<sys::ib_ah, T::Ah>::init(ah, state);
                    0
                }
                Err(error) => error.to_errno(),
            }
        }
    }

    unsafe extern "C" fn query_ah(ah: *mut sys::ib_ah, attr: *mut sys::rdma_ah_attr) -> c_int {
        // SAFETY: the IB core passes a live AH of this device and the attribute structure
        // it zeroed and typed (`rdma_query_ah`), valid for the call.
        let (dev, ah, attr) = unsafe { (Self::dev((*ah).device), Ah::from_raw(ah), &mut *attr) };
        match T::query_ah(dev, ah) {
            Ok(query) => {
                attr.type_ = sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_IB;
                attr.port_num = query.port;
                attr.sl = query.sl;
                attr.__bindgen_anon_1.ib = sys::ib_ah_attr {
                    dlid: query.dlid,
                    src_path_bits: query.src_path_bits,
                };
                if let Some(route) = query.route {
                    attr.ah_flags |= sys::ib_ah_flags_IB_AH_GRH as u8;
                    attr.grh.dgid.raw = route.dgid.0;
                    attr.grh.flow_label = route.flow_label;
                    attr.grh.sgid_index = route.sgid_index;
                    attr.grh.hop_limit = route.hop_limit;
                    attr.grh.traffic_class = route.traffic_class;
                }
                0
            }
            Err(error) => error.to_errno(),
        }
    }

    unsafe extern "C" fn destroy_ah(ah: *mut sys::ib_ah, _flags: u32) -> c_int {
        // SAFETY: as in `dealloc_pd`, for an AH.
        unsafe {
            T::destroy_ah(Self::dev((*ah).device), Ah::from_raw(ah));
            Object::<sys::ib_ah, T::Ah>::drop_data(ah);
        }
        0
    }

    /// A zeroed MR object of ours, set up by `make` with the PD `pd`; the IB core fills
    /// the rest (device, PD, type) after the op returns.
    unsafe fn new_mr(
        pd: *mut sys::ib_pd,
        make: impl FnOnce(&Device<T>, &Pd<T>) -> Result<(T::Mr, MrKeys)>,
    ) -> *mut sys::ib_mr {
        type MrObject<T> = Object<sys::ib_mr, MrState<T>>;
        if pd.is_null() {
            return err_ptr(EINVAL);
        }
        // The allocation first: a driver's MR, once made, is only ever dropped after
        // its `dereg_mr`.
        let object: KBox<MaybeUninit<MrObject<T>>> = match KBox::new_uninit(GFP_KERNEL) {
            Ok(object) => object,
            Err(_) => return err_ptr(ENOMEM),
        };
        // SAFETY: the IB core's PD of ours, alive for the call.
        let made = unsafe { make(Self::dev((*pd).device), Pd::from_raw(pd)) };
        let (driver, keys) = match made {
            Ok(made) => made,
            Err(error) => return err_ptr(error),
        };
        let object = KBox::into_raw(object).cast::<MrObject<T>>();
        // SAFETY: `object` is a fresh allocation of the right layout; all-zero is a valid
        // `ib_mr` (the C drivers kzalloc theirs).
        unsafe {
            core::ptr::write_bytes(object, 0, 1);
            let raw = object.cast::<sys::ib_mr>();
            (*raw).lkey = keys.lkey;
            (*raw).rkey = keys.rkey;
            MrObject::<T>::init(
                raw,
                MrState {
                    mapping: AtomicPtr::new(core::ptr::null_mut()),
                    driver,
                },
            );
            raw
        }
    }

    unsafe extern "C" fn get_dma_mr(pd: *mut sys::ib_pd, access: c_int) -> *mut sys::ib_mr {
        // SAFETY: the IB core's PD of ours.
        unsafe {
            Self::new_mr(pd, |dev, pd| {
                T::get_dma_mr(dev, pd, Access::from_bits(access as u32))
            })
        }
    }

    unsafe extern "C" fn alloc_mr(
        pd: *mut sys::ib_pd,
        mr_type: sys::ib_mr_type,
        max: u32,
    ) -> *mut sys::ib_mr {
        // SAFETY: as above.
        unsafe {
            Self::new_mr(pd, |dev, pd| {
                T::alloc_mr(dev, pd, MrType::from_raw(mr_type), max)
            })
        }
    }

    unsafe extern "C" fn map_mr_sg(
        mr: *mut sys::ib_mr,
        sg: *mut sys::scatterlist,
        nents: c_int,
        offset: *mut c_uint,
    ) -> c_int {
        // SAFETY: an MR of ours (set up by `new_mr`); the list is what `ib_map_mr_sg` got.
        unsafe {
            let view = Mr::<T>::from_raw(mr);
            let pages = MrPages {
                mr: view,
                sg,
                nents,
                offset,
            };
            match T::map_mr_sg(Self::dev((*mr).device), view, pages) {
                Ok(mapped) => c_int::try_from(mapped).unwrap_or(c_int::MAX),
                Err(error) => error.to_errno(),
            }
        }
    }

    unsafe extern "C" fn dereg_mr(mr: *mut sys::ib_mr, _udata: *mut sys::ib_udata) -> c_int {
        // SAFETY: an MR of ours, from `KBox::into_raw` in `new_mr`, with its state set;
        // the IB core deregisters it once.
        unsafe {
            T::dereg_mr(Self::dev((*mr).device), Mr::from_raw(mr));
            Object::<sys::ib_mr, MrState<T>>::drop_data(mr);
            drop(KBox::from_raw(
                mr.cast::<MaybeUninit<Object<sys::ib_mr, MrState<T>>>>(),
            ));
        }
        0
    }
}

impl<T: Driver> c_api::ResizeCq for Ops<T> {
    unsafe fn resize(cq: *mut sys::ib_cq, entries: u32) -> c_int {
        if cq.is_null() {
            return EINVAL.to_errno();
        }
        // SAFETY: a created CQ of ours (the slot's contract); `cqe` is the driver's to set.
        unsafe {
            match T::resize_cq(Self::dev((*cq).device), Cq::from_raw(cq), entries) {
                Ok(room) => {
                    (*cq).cqe = c_int::try_from(room).unwrap_or(c_int::MAX);
                    0
                }
                Err(error) => error.to_errno(),
            }
        }
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
    ops.query_gid = Some(Ops::<T>::query_gid);
    ops.process_mad = Some(Ops::<T>::process_mad);
    ops.query_ah = Some(Ops::<T>::query_ah);
    ops.query_qp = Some(Ops::<T>::query_qp);
    ops.attach_mcast = Some(Ops::<T>::attach_mcast);
    ops.detach_mcast = Some(Ops::<T>::detach_mcast);
    ops.modify_port = Some(Ops::<T>::modify_port);
    ops.alloc_pd = Some(Ops::<T>::alloc_pd);
    ops.dealloc_pd = Some(Ops::<T>::dealloc_pd);
    ops.create_cq = Some(Ops::<T>::create_cq);
    ops.pre_destroy_cq = Some(Ops::<T>::pre_destroy_cq);
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
            core::mem::align_of::<Object<sys::ib_cq, CqState<T::Cq>>>()
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
    ops.size_ib_cq = Object::<sys::ib_cq, CqState<T::Cq>>::SIZE;
    ops.size_ib_qp = Object::<sys::ib_qp, T::Qp>::SIZE;
    ops.size_ib_ah = Object::<sys::ib_ah, T::Ah>::SIZE;
    ops
}

// ---------------------------------------------------------------------------------------
// Registration

/// The IB core's fields a driver sets before registering its device.
pub struct DeviceSetup<'a> {
    raw: &'a mut sys::ib_device,
}

/// A node type (`enum rdma_node_type`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NodeType {
    /// A channel adapter (`RDMA_NODE_IB_CA`), what every HCA and RoCE device is.
    Ca,
}

impl DeviceSetup<'_> {
    /// The node type.
    pub fn node_type(&mut self, node_type: NodeType) {
        self.raw.node_type = match node_type {
            // `RDMA_NODE_IB_CA` (uapi-stable; its enum is not among the bindings).
            NodeType::Ca => 1,
        };
    }

    /// How many ports (set before anything that sets up port data).
    pub fn ports(&mut self, count: u32) {
        self.raw.phys_port_cnt = count;
    }

    /// How many completion vectors.
    pub fn comp_vectors(&mut self, count: u32) {
        self.raw.num_comp_vectors = c_int::try_from(count).unwrap_or(c_int::MAX);
    }

    /// The key that reaches all memory by DMA address, `IBK_LOCAL_DMA_LKEY` devices'.
    pub fn local_dma_lkey(&mut self, lkey: u32) {
        self.raw.local_dma_lkey = lkey;
    }

    /// The node GUID, in host order.
    pub fn node_guid(&mut self, guid: u64) {
        self.raw.node_guid = guid.to_be();
    }

    /// The `ib_device`, allocated and not registered, for a driver's C glue.
    pub fn as_raw(&mut self) -> *mut sys::ib_device {
        self.raw
    }
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
    /// the state at hand, and registers it under `name` (a `%d` pattern allowed) without
    /// a DMA device, as the software devices do (the IB core then takes DMA addresses as
    /// kernel virtual addresses). `owner` is the driver's module.
    pub fn new(
        owner: &'static kernel::ThisModule,
        state: T,
        name: &core::ffi::CStr,
        setup: impl FnOnce(&mut DeviceSetup<'_>, &mut T) -> Result,
    ) -> Result<Self> {
        Self::register(owner, state, name, core::ptr::null_mut(), setup)
    }

    /// As [`Registration::new`], for a PCI function's device: the function is its DMA
    /// device (`ib_register_device(.., &pdev->dev)`), so the IB core maps consumers'
    /// buffers through the DMA API for it and the device appears under the function in
    /// sysfs. Drop it before the function's resources the driver's ops use.
    pub fn new_for_pci(
        owner: &'static kernel::ThisModule,
        state: T,
        name: &core::ffi::CStr,
        pci: &crate::pci::Device,
        setup: impl FnOnce(&mut DeviceSetup<'_>, &mut T) -> Result,
    ) -> Result<Self> {
        Self::register(owner, state, name, pci.dma_device(), setup)
    }

    fn register(
        owner: &'static kernel::ThisModule,
        state: T,
        name: &core::ffi::CStr,
        dma_device: *mut sys::device,
        setup: impl FnOnce(&mut DeviceSetup<'_>, &mut T) -> Result,
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
        let state = unsafe { Object::<sys::ib_device, T>::init(raw, state) };
        let registration = Self { device };
        let table = ops::<T>(owner.as_ptr().cast());
        // SAFETY: the device is allocated and not registered; the table is copied.
        unsafe { sys::ib_set_device_ops(raw, &table) };
        // SAFETY: as above; `setup` gets the device before it is visible to anyone, and
        // the state, which follows the `ib_device` in the allocation (disjoint from it).
        let device_fields = unsafe { &mut *raw };
        let mut fields = DeviceSetup { raw: device_fields };
        if let Err(error) = setup(&mut fields, state) {
            pr_err!(
                "{}: device setup failed: {:?}\n",
                name.to_str().unwrap_or("?"),
                error
            );
            registration.abandon();
            return Err(error);
        }
        if !dma_device.is_null() {
            // SAFETY: set up and not registered, nobody else's yet. The function is the
            // device's parent in sysfs too, as a C driver sets it (`ib_dev.dev.parent`).
            unsafe { sys::tilde_ib_set_parent(raw, dma_device) };
        }
        // SAFETY: set up and not registered; the name is a valid C string for the call;
        // the DMA device, if any, is a bound PCI function's, which outlives the
        // registration (its driver drops it in the remove).
        let registered = unsafe {
            sys::ib_register_device(raw, crate::sys::kernel_api::c_str(name), dma_device)
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
            Object::<sys::ib_device, T>::drop_data(device.as_ptr().cast());
            sys::ib_dealloc_device(device.as_ptr().cast());
        }
    }

    /// The device.
    pub fn device(&self) -> &Device<T> {
        // SAFETY: registered, its state initialised, until `self` is dropped.
        unsafe { Device::from_raw(self.as_raw()) }
    }

    /// The device's state.
    pub fn state(&self) -> &T {
        self.device()
    }

    /// The name the IB core gave the device.
    pub fn name(&self) -> crate::device::DeviceName {
        self.device().name()
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
        unsafe { Object::<sys::ib_device, T>::drop_data(self.as_raw()) };
        // SAFETY: allocated by `_ib_alloc_device` and unregistered.
        unsafe { sys::ib_dealloc_device(self.as_raw()) };
    }
}
