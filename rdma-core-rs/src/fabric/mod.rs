// SPDX-License-Identifier: GPL-2.0
//! The host backend of the verbs API: an in-process software fabric.
//!
//! The same consumer API as the kernel build (`pd`, `cq`, `qp`, `wr`, `mr`, `ah`, `dma`,
//! `mailbox`), with the same names, signatures and semantics, over a software RDMA device
//! instead of the kernel's: loopback RC and UD between QPs of one [`Fabric`], SEND (with
//! immediate), RDMA WRITE and READ, both atomics, FRWR registration and invalidation with
//! key, access and bounds checks, RNR waits and retries, flushes on ERR, and the error
//! completions rxe gives. The conformance cases (`conformance/cases.rs`) run unchanged
//! against this backend in `cargo test` and against rxe in the VM, which is how the two
//! are kept honest with each other.
//!
//! Where the kernel hands a DMA address to a device, the fabric keeps the buffer itself:
//! a posted WR owns its buffer, a registered region is found by its key. Completions are
//! delivered like the kernel's: by [`CompletionQueue::poll`] for a direct CQ, and from a
//! thread of the CQ's own for softirq and workqueue CQs.

pub mod cm;
mod engine;

use std::boxed::Box;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::vec::Vec;

use core::ops::{Deref, RangeInclusive};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use crate::verbs::{
    AddressVector, AtomicOp, Decoded, DeviceCaps, Gid, Grh, InitAttr, PortAttr, QpCaps,
    RemoteAccess, RtrAttr, RtsAttr, SendOp, WorkCompletion,
};

pub use crate::verbs::WcStatus;

/// An errno, as the kernel's verbs return them (a positive code here; `Debug` names it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error(i32);

impl Error {
    /// The errno, negative, as the kernel returns it.
    pub fn to_errno(self) -> i32 {
        -self.0
    }
}

impl core::fmt::Debug for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match *self {
            EINVAL => "EINVAL",
            ENOMEM => "ENOMEM",
            ENODEV => "ENODEV",
            ETIMEDOUT => "ETIMEDOUT",
            ESHUTDOWN => "ESHUTDOWN",
            _ => return write!(f, "Error({})", self.0),
        };
        f.write_str(name)
    }
}

/// Invalid argument.
pub const EINVAL: Error = Error(22);
/// Out of memory, or a queue is full.
pub const ENOMEM: Error = Error(12);
/// No such device.
pub const ENODEV: Error = Error(19);
/// Timed out.
pub const ETIMEDOUT: Error = Error(110);
/// The QP drains: no more posts.
pub const ESHUTDOWN: Error = Error(108);

/// `ETIMEDOUT`, as the kernel build's `kernel_api::timed_out` gives it.
pub fn timed_out() -> Error {
    ETIMEDOUT
}

/// The kernel's `Result`: an errno on failure.
pub type Result<T = ()> = core::result::Result<T, Error>;

/// A software RDMA network: devices whose QPs reach each other. Each [`Device`] is one
/// port on it.
pub struct Fabric {
    state: Mutex<engine::State>,
}

impl Fabric {
    /// An empty fabric.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(engine::State::default()),
        })
    }

    /// Adds a device named `name` with one RoCE port whose GID 0 is the link-local GID
    /// of `mac`.
    pub fn add_device(self: &Arc<Self>, name: &str, mac: [u8; 6]) -> DeviceRef {
        let mut gid = [0u8; 16];
        gid[..2].copy_from_slice(&[0xfe, 0x80]);
        gid[8..11].copy_from_slice(&[mac[0] ^ 0x02, mac[1], mac[2]]);
        gid[11..13].copy_from_slice(&[0xff, 0xfe]);
        gid[13..].copy_from_slice(&mac[3..]);
        let device = Arc::new_cyclic(|this| Device {
            fabric: self.clone(),
            name: name.into(),
            gid: Gid(gid),
            ipv4: cm::next_address(),
            this: this.clone(),
        });
        cm::register_device(&device);
        device
    }

    /// The QPs and memory regions the fabric's device holds: none once every handle to
    /// them is dropped (the tests' leak check).
    pub fn live_objects(&self) -> LiveObjects {
        self.lock().live_objects()
    }

    fn lock(&self) -> MutexGuard<'_, engine::State> {
        // A panic in a test thread poisons the lock; the state is still consistent
        // (every change is made under the lock in one step).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`Fabric::live_objects`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveObjects {
    /// Queue pairs not yet destroyed.
    pub qps: usize,
    /// Memory regions not yet deregistered.
    pub regions: usize,
}

/// A device on a [`Fabric`]: one RoCE port.
pub struct Device {
    fabric: Arc<Fabric>,
    name: std::string::String,
    gid: Gid,
    /// Its IPv4 address, unique in the process (RDMA CM finds devices by it); GID 1 is
    /// its IPv4-mapped form, as RoCE v2 has it.
    ipv4: core::net::Ipv4Addr,
    this: Weak<Device>,
}

/// A counted reference to a device, as the kernel build's `DeviceRef`.
pub type DeviceRef = Arc<Device>;

impl Device {
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the device can do: limits of the order of rxe's (`rxe_param.h`).
    pub fn caps(&self) -> DeviceCaps {
        DeviceCaps {
            vendor_id: 0xff_ffff,
            vendor_part_id: 0,
            max_qp: 0x1_0000,
            max_qp_wr: 0x4000,
            max_send_sge: 32,
            max_recv_sge: 32,
            max_cq: 0x1_0000,
            max_cqe: 0x8000 - 1,
            max_mr: 0x1_0000,
            max_pd: 0x1_0000,
            max_mr_size: u64::MAX,
            max_qp_rd_atom: 128,
            max_qp_init_rd_atom: 128,
            max_fast_reg_page_list_len: 512,
            atomics: true,
        }
    }

    /// Port numbers: one port, 1.
    pub fn ports(&self) -> RangeInclusive<u32> {
        1..=1
    }

    /// The port's attributes: active RoCE, MTU 1024 of 4096, a one-entry GID table.
    pub fn query_port(&self, port: u32) -> Result<PortAttr> {
        if port != 1 {
            return Err(EINVAL);
        }
        Ok(PortAttr {
            state: Decoded::from(4),
            phys_state: Decoded::from(5),
            active_mtu: Decoded::from(3),
            max_mtu: Decoded::from(5),
            gid_tbl_len: 2,
            lid: 0,
            link_layer: Decoded::from(2),
        })
    }

    /// The GRH of `av` if `port` can use it: the fabric's one port is RoCE, and, as with
    /// rxe, a vector without the peer's MAC is as good as lost.
    fn check_roce(&self, port: u32, av: &AddressVector) -> Result<Grh> {
        match *av {
            AddressVector::Roce { grh, dmac } if dmac != [0; 6] => {
                self.query_gid(port, u32::from(grh.sgid_index))?;
                Ok(grh)
            }
            _ => Err(EINVAL),
        }
    }

    /// Whether `port` speaks the IB CM, which RDMA CM connects through: the fabric's does.
    pub fn has_cm(&self, port: u32) -> bool {
        port == 1
    }

    /// GID table entry `index` of `port`: 0 the link-local GID, 1 the IPv4-mapped one.
    pub fn query_gid(&self, port: u32, index: u32) -> Result<Gid> {
        match (port, index) {
            (1, 0) => Ok(self.gid),
            (1, 1) => {
                let mut gid = [0u8; 16];
                gid[10..12].copy_from_slice(&[0xff, 0xff]);
                gid[12..].copy_from_slice(&self.ipv4.octets());
                Ok(Gid(gid))
            }
            _ => Err(EINVAL),
        }
    }

    /// A counted reference.
    pub fn to_ref(&self) -> Result<DeviceRef> {
        self.this.upgrade().ok_or(ENODEV)
    }

    /// Whether `other` is this same device.
    pub fn is(&self, other: &Device) -> bool {
        core::ptr::eq(self, other)
    }

    fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A protection domain.
pub struct ProtectionDomain {
    id: u64,
    device: DeviceRef,
}

impl ProtectionDomain {
    /// Allocates a PD on `device`.
    pub fn new(device: &Device) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            id: next_id(),
            device: device.to_ref()?,
        }))
    }

    /// The device the PD belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The lkey covering all memory mapped for the device (the fabric checks none).
    pub fn local_dma_lkey(&self) -> u32 {
        0
    }
}

pub use crate::verbs::PollContext;

/// A completion queue.
pub struct CompletionQueue {
    shared: Arc<engine::CqShared>,
    /// Completions the QPs on the CQ may have outstanding, against its `entries`: as in
    /// the kernel build, a QP is refused a CQ that could overrun.
    capacity: u32,
    reserved: AtomicU32,
    worker: Option<JoinHandle<()>>,
    device: DeviceRef,
}

impl CompletionQueue {
    /// A CQ with room for `entries` completions, delivered in `context`.
    pub fn new(device: &Device, entries: u32, context: PollContext) -> Result<Arc<Self>> {
        if entries == 0 {
            return Err(EINVAL);
        }
        let shared = Arc::new(engine::CqShared::new(context));
        let worker = match context {
            PollContext::Direct => None,
            PollContext::Softirq | PollContext::Workqueue => {
                let shared = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name(std::format!("{}-cq", device.name()))
                        .spawn(move || shared.deliver_until_stopped())
                        .map_err(|_| ENOMEM)?,
                )
            }
        };
        Ok(Arc::new(Self {
            shared,
            capacity: entries,
            reserved: AtomicU32::new(0),
            worker,
            device: device.to_ref()?,
        }))
    }

    /// The device the CQ belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How this CQ's completions are delivered.
    pub fn context(&self) -> PollContext {
        self.shared.context
    }

    fn reserve(&self, entries: u32) -> Result {
        self.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |reserved| {
                reserved
                    .checked_add(entries)
                    .filter(|&r| r <= self.capacity)
            })
            .map(drop)
            .map_err(|_| EINVAL)
    }

    fn unreserve(&self, entries: u32) {
        self.reserved.fetch_sub(entries, Ordering::Relaxed);
    }

    /// Delivers up to `budget` completions on a direct CQ; 0 on the others.
    pub fn poll(&self, budget: u32) -> u32 {
        if self.shared.context != PollContext::Direct {
            return 0;
        }
        self.shared.deliver(budget)
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Memory a device may access: on the fabric, a shared byte vector.
pub struct DmaBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// The "DMA address" of byte 0: unique on the fabric, so regions' iovas look real.
    base: u64,
    device: DeviceRef,
}

impl DmaBuffer {
    /// `len` zeroed bytes for `device`.
    pub fn new(device: &Device, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        Ok(Self {
            bytes: Arc::new(Mutex::new(std::vec![0; len])),
            base: next_id() << 32,
            device: device.to_ref()?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The DMA address of byte `offset`, if `offset..offset + len` lies in the buffer.
    pub fn dma_addr(&self, offset: usize, len: usize) -> Option<u64> {
        let end = offset.checked_add(len)?;
        (end <= self.len()).then(|| self.base + offset as u64)
    }

    /// The device the buffer is mapped for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Copies `bytes` in at `offset`.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result {
        let end = offset.checked_add(bytes.len()).ok_or(EINVAL)?;
        self.lock()
            .get_mut(offset..end)
            .ok_or(EINVAL)?
            .copy_from_slice(bytes);
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` out.
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result {
        let end = offset.checked_add(out.len()).ok_or(EINVAL)?;
        out.copy_from_slice(self.lock().get(offset..end).ok_or(EINVAL)?);
        Ok(())
    }

    /// [`DmaBuffer::read_into`] a new vector of `len` bytes.
    pub fn copy_out(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut out = std::vec![0; len];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }
}

/// A fast-registration memory region over a buffer it owns.
pub struct MemoryRegion {
    index: u32,
    /// The key's low byte, bumped before each registration.
    key_byte: u8,
    iova: u64,
    length: u64,
    buffer: DmaBuffer,
    pd: Arc<ProtectionDomain>,
}

impl MemoryRegion {
    /// A region of up to `max_pages` 4 KiB pages in `pd`, mapped onto `len` bytes of
    /// `buffer` at `offset`.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        max_pages: u32,
        buffer: DmaBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        if !buffer.device().is(pd.device()) || len == 0 {
            return Err(EINVAL);
        }
        let iova = buffer.dma_addr(offset, len).ok_or(EINVAL)?;
        // Pages the range touches, as `ib_map_mr_sg` counts them.
        let pages = (iova % 4096 + len as u64).div_ceil(4096);
        if pages > u64::from(max_pages) {
            return Err(EINVAL);
        }
        let index =
            pd.device()
                .fabric()
                .lock()
                .add_region(pd.id, buffer.bytes.clone(), offset, iova, len);
        Ok(Self {
            index,
            key_byte: 0,
            iova,
            length: len as u64,
            buffer,
            pd: pd.clone(),
        })
    }

    /// The key a peer names in RDMA operations on this region.
    pub fn rkey(&self) -> u32 {
        self.index << 8 | u32::from(self.key_byte)
    }

    /// The address of the region's first byte in the peer's RDMA operations.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The region's length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The buffer the region exposes.
    pub fn buffer(&self) -> &DmaBuffer {
        &self.buffer
    }

    /// Copies `bytes` into the region's buffer at `offset`.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result {
        self.buffer.write(offset, bytes)
    }

    /// The PD the region is in.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        self.pd.device().fabric().lock().remove_region(self.index);
    }
}

/// A UD destination.
pub struct AddressHandle {
    dgid: Gid,
    pd: Arc<ProtectionDomain>,
}

impl AddressHandle {
    /// A handle for the peer `av` names, reached from `port`.
    pub fn new(pd: &Arc<ProtectionDomain>, port: u32, av: &AddressVector) -> Result<Arc<Self>> {
        let grh = pd.device().check_roce(port, av)?;
        Ok(Arc::new(Self {
            dgid: grh.dgid,
            pd: pd.clone(),
        }))
    }

    /// The device the handle belongs to.
    pub fn device(&self) -> &Device {
        self.pd.device()
    }
}

/// What happens when a work request of this type completes (see the kernel build).
pub trait CompletionHandler: Sized + Send + 'static {
    /// Called once per posted WR with the WR back; `queues` are its QP's.
    fn complete(wr: Box<WorkRequest<Self>>, queues: &Queues);
}

/// One work request: its completion, what it owns while posted, and the caller's data.
pub struct WorkRequest<T: CompletionHandler> {
    completion: WorkCompletion,
    buffer: Option<DmaBuffer>,
    region: Option<MemoryRegion>,
    ah: Option<Arc<AddressHandle>>,
    data: T,
}

impl<T: CompletionHandler> WorkRequest<T> {
    /// A WR that owns no buffer.
    pub fn new(data: T) -> Result<Box<Self>> {
        Ok(Box::new(Self {
            completion: WorkCompletion::EMPTY,
            buffer: None,
            region: None,
            ah: None,
            data,
        }))
    }

    /// A WR that owns `buffer`.
    pub fn with_buffer(buffer: DmaBuffer, data: T) -> Result<Box<Self>> {
        let mut wr = Self::new(data)?;
        wr.buffer = Some(buffer);
        Ok(wr)
    }

    /// The completion of the WR's last post.
    pub fn completion(&self) -> &WorkCompletion {
        &self.completion
    }

    /// The caller's data.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The caller's data, mutably.
    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }

    /// The buffer the WR owns.
    pub fn buffer(&self) -> Option<&DmaBuffer> {
        self.buffer.as_ref()
    }

    /// The buffer the WR owns, to fill before a post.
    pub fn buffer_mut(&mut self) -> Option<&mut DmaBuffer> {
        self.buffer.as_mut()
    }

    /// Gives the WR a buffer, returning the one it had.
    pub fn replace_buffer(&mut self, buffer: Option<DmaBuffer>) -> Option<DmaBuffer> {
        core::mem::replace(&mut self.buffer, buffer)
    }

    /// Takes back the memory region a REG_MR carried.
    pub fn take_region(&mut self) -> Option<MemoryRegion> {
        self.region.take()
    }
}

/// A posted WR with its type erased: what the engine moves between queues.
pub(crate) trait PostedWr: Send {
    fn set_completion(&mut self, completion: WorkCompletion);
    fn buffer(&self) -> Option<&DmaBuffer>;
    fn deliver(self: Box<Self>, queues: &Queues);
}

impl<T: CompletionHandler> PostedWr for WorkRequest<T> {
    fn set_completion(&mut self, completion: WorkCompletion) {
        self.completion = completion;
    }

    fn buffer(&self) -> Option<&DmaBuffer> {
        self.buffer.as_ref()
    }

    fn deliver(self: Box<Self>, queues: &Queues) {
        T::complete(self, queues);
    }
}

/// Where a UD SEND goes.
#[derive(Clone)]
pub struct UdDest {
    /// The path to the peer's port.
    pub ah: Arc<AddressHandle>,
    /// The peer QP's number.
    pub remote_qpn: u32,
    /// The Q_Key the peer QP accepts.
    pub remote_qkey: u32,
}

/// A work request the QP did not take, handed back with the reason.
pub struct Rejected<T: CompletionHandler> {
    /// Why.
    pub error: Error,
    /// The work request, with everything it owns.
    pub wr: Box<WorkRequest<T>>,
}

impl<T: CompletionHandler> core::fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish()
    }
}

impl<T: CompletionHandler> From<Rejected<T>> for Error {
    fn from(rejected: Rejected<T>) -> Self {
        rejected.error
    }
}

/// The outcome of a post.
pub type PostResult<T> = core::result::Result<(), Rejected<T>>;

/// The queues of a QP: what posting needs, shared with completion handlers.
pub struct Queues {
    qpn: u32,
    device: DeviceRef,
    pd_id: u64,
    rc: bool,
    outstanding: AtomicU32,
    draining: AtomicBool,
}

impl Queues {
    /// The device the QP belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The QP number the peer addresses.
    pub fn qp_num(&self) -> u32 {
        self.qpn
    }

    /// WRs posted and not yet handed back.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    pub(crate) fn completed(&self) {
        self.outstanding.fetch_sub(1, Ordering::Release);
    }

    fn post<T: CompletionHandler>(
        &self,
        mut wr: Box<WorkRequest<T>>,
        rc_only: Option<bool>,
        work: engine::Work,
    ) -> PostResult<T> {
        if rc_only.is_some_and(|rc| rc != self.rc) {
            return Err(Rejected { error: EINVAL, wr });
        }
        if let engine::Work::Send { offset, len, .. } | engine::Work::Recv { offset, len } = work {
            let fits = wr
                .buffer
                .as_ref()
                .is_some_and(|b| b.device().is(&self.device) && b.dma_addr(offset, len).is_some());
            if !fits || u32::try_from(len).is_err() {
                return Err(Rejected { error: EINVAL, wr });
            }
        }
        if let engine::Work::Send {
            op: engine::SendKind::Ud(ref dest),
            ..
        } = work
        {
            if !dest.ah.device().is(&self.device) {
                return Err(Rejected { error: EINVAL, wr });
            }
            wr.ah = Some(dest.ah.clone());
        }
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.outstanding.fetch_sub(1, Ordering::Release);
            return Err(Rejected {
                error: ESHUTDOWN,
                wr,
            });
        }
        let fabric = self.device.fabric();
        let mut state = fabric.lock();
        if let Err(error) = state.admit(self.qpn, &work) {
            drop(state);
            self.outstanding.fetch_sub(1, Ordering::Release);
            return Err(Rejected { error, wr });
        }
        state.enqueue(self.qpn, wr, work);
        state.progress();
        Ok(())
    }

    /// Posts a receive of up to `len` bytes into the WR's buffer at `offset`.
    pub fn post_recv<T: CompletionHandler>(
        &self,
        wr: Box<WorkRequest<T>>,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        self.post(wr, None, engine::Work::Recv { offset, len })
    }

    /// Posts a signaled send of `len` bytes of the WR's buffer at `offset`, on an RC QP.
    pub fn post_send<T: CompletionHandler>(
        &self,
        wr: Box<WorkRequest<T>>,
        op: SendOp,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        let op = engine::SendKind::Rc(op);
        self.post(wr, Some(true), engine::Work::Send { op, offset, len })
    }

    /// Posts a signaled 8-byte atomic; the original value lands in the WR's buffer at
    /// `offset`.
    pub fn post_atomic<T: CompletionHandler>(
        &self,
        wr: Box<WorkRequest<T>>,
        op: AtomicOp,
        offset: usize,
    ) -> PostResult<T> {
        let remote_addr = match op {
            AtomicOp::CompareAndSwap { remote_addr, .. }
            | AtomicOp::FetchAndAdd { remote_addr, .. } => remote_addr,
        };
        if remote_addr % 8 != 0 {
            return Err(Rejected { error: EINVAL, wr });
        }
        let op = engine::SendKind::Atomic(op);
        self.post(wr, Some(true), engine::Work::Send { op, offset, len: 8 })
    }

    /// Posts a signaled UD SEND of `len` bytes of the WR's buffer at `offset` to `dest`.
    pub fn post_ud_send<T: CompletionHandler>(
        &self,
        wr: Box<WorkRequest<T>>,
        dest: &UdDest,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        let op = engine::SendKind::Ud(dest.clone());
        self.post(wr, Some(false), engine::Work::Send { op, offset, len })
    }

    /// Posts a fast registration of `region` for the peer's `access` under a new key,
    /// which it returns.
    pub fn post_reg_mr<T: CompletionHandler>(
        &self,
        mut wr: Box<WorkRequest<T>>,
        mut region: MemoryRegion,
        access: RemoteAccess,
    ) -> core::result::Result<u32, Rejected<T>> {
        // As the kernel build: a QP registers only regions of its own PD.
        let in_pd = region.pd().id == self.pd_id;
        region.key_byte = region.key_byte.wrapping_add(1);
        let key = region.rkey();
        let work = engine::Work::RegMr {
            index: region.index,
            key,
            access,
        };
        wr.region = Some(region);
        if !in_pd {
            return Err(Rejected { error: EINVAL, wr });
        }
        self.post(wr, Some(true), work).map(|()| key)
    }

    /// Posts a local invalidation of `rkey`.
    pub fn post_local_inv<T: CompletionHandler>(
        &self,
        wr: Box<WorkRequest<T>>,
        rkey: u32,
    ) -> PostResult<T> {
        self.post(wr, Some(true), engine::Work::LocalInv { rkey })
    }
}

/// A queue pair, RC or UD, on the fabric.
pub struct QueuePair {
    queues: Arc<Queues>,
    reserved: (u32, u32),
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    pd: Arc<ProtectionDomain>,
}

impl Deref for QueuePair {
    type Target = Queues;

    fn deref(&self) -> &Queues {
        &self.queues
    }
}

impl QueuePair {
    /// Creates an RC QP in RESET.
    pub fn new_rc(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(pd, send_cq, recv_cq, caps, true)
    }

    /// Creates a UD QP in RESET.
    pub fn new_ud(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(pd, send_cq, recv_cq, caps, false)
    }

    fn create(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
        rc: bool,
    ) -> Result<Self> {
        let device = pd.device();
        if !send_cq.device().is(device) || !recv_cq.device().is(device) {
            return Err(EINVAL);
        }
        if caps.max_send_wr == 0 || caps.max_recv_wr == 0 {
            return Err(EINVAL);
        }
        send_cq.reserve(caps.max_send_wr)?;
        if let Err(error) = recv_cq.reserve(caps.max_recv_wr) {
            send_cq.unreserve(caps.max_send_wr);
            return Err(error);
        }
        let fabric = device.fabric();
        let mut state = fabric.lock();
        let qpn = state.next_qpn();
        let queues = Arc::new(Queues {
            qpn,
            device: device.to_ref()?,
            pd_id: pd.id,
            rc,
            outstanding: AtomicU32::new(0),
            draining: AtomicBool::new(false),
        });
        state.add_qp(engine::Qp::new(
            queues.clone(),
            send_cq.shared.clone(),
            recv_cq.shared.clone(),
            caps,
        ));
        drop(state);
        Ok(Self {
            queues,
            reserved: (caps.max_send_wr, caps.max_recv_wr),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            pd: pd.clone(),
        })
    }

    /// The PD the QP is in.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    fn modify(&self, change: engine::Modify) -> Result {
        let fabric = self.device.fabric();
        let mut state = fabric.lock();
        let result = state.modify(self.qpn, change);
        state.progress();
        result
    }

    /// RESET → INIT.
    pub fn modify_to_init(&self, init: &InitAttr) -> Result {
        if init.port != 1 {
            return Err(EINVAL);
        }
        self.modify(engine::Modify::Init(init.remote_access, None))
    }

    /// INIT → RTR.
    pub fn modify_to_rtr(&self, rtr: &RtrAttr) -> Result {
        self.device.check_roce(rtr.port, &rtr.av)?;
        self.modify(engine::Modify::Rtr(rtr.dest_qp_num))
    }

    /// RTR → RTS.
    pub fn modify_to_rts(&self, rts: &RtsAttr) -> Result {
        self.modify(engine::Modify::Rts(rts.rnr_retry))
    }

    /// RESET → INIT → RTR → RTS for a UD QP that receives datagrams carrying `qkey`.
    pub fn modify_ud_to_rts(&self, port: u32, _pkey_index: u16, qkey: u32) -> Result {
        if port != 1 {
            return Err(EINVAL);
        }
        self.modify(engine::Modify::Init(RemoteAccess::default(), Some(qkey)))?;
        self.modify(engine::Modify::Rtr(0))?;
        self.modify(engine::Modify::Rts(0))
    }

    /// Any state → ERR: both queues flush.
    pub fn modify_to_error(&self) -> Result {
        self.modify(engine::Modify::Error)
    }

    /// Drains, then any state → RESET.
    pub fn reset(&mut self) -> Result {
        self.drain();
        let result = self.modify(engine::Modify::Reset);
        self.draining.store(false, Ordering::Release);
        result
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        if self.outstanding() == 0 {
            return;
        }
        let _ = self.modify_to_error();
        loop {
            self.send_cq.poll(64);
            self.recv_cq.poll(64);
            if self.outstanding() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        self.drain();
        self.device.fabric().lock().remove_qp(self.qpn);
        self.send_cq.unreserve(self.reserved.0);
        self.recv_cq.unreserve(self.reserved.1);
    }
}

/// A WR handed back to a mailbox.
pub type ReturnedWr = Box<WorkRequest<Returned>>;

/// The data of a WR whose completion goes to a [`Mailbox`].
pub struct Returned {
    list: Arc<Mutex<VecDeque<ReturnedWr>>>,
    tag: u64,
}

impl Returned {
    /// The tag the WR was made with.
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

impl CompletionHandler for Returned {
    fn complete(wr: Box<WorkRequest<Self>>, _queues: &Queues) {
        let list = wr.data.list.clone();
        list.lock().unwrap_or_else(|p| p.into_inner()).push_back(wr);
    }
}

/// Collects WRs as they complete, for a poster that waits for them.
pub struct Mailbox {
    list: Arc<Mutex<VecDeque<ReturnedWr>>>,
}

impl Mailbox {
    /// An empty mailbox.
    pub fn new() -> Result<Self> {
        Ok(Self {
            list: Arc::new(Mutex::new(VecDeque::new())),
        })
    }

    /// A WR returning here under `tag`, owning `buffer` (if any).
    pub fn work_request(&self, tag: u64, buffer: Option<DmaBuffer>) -> Result<ReturnedWr> {
        let mut wr = WorkRequest::new(Returned {
            list: self.list.clone(),
            tag,
        })?;
        wr.buffer = buffer;
        Ok(wr)
    }

    /// The WR tagged `tag` if it is back already.
    pub fn try_take(&mut self, tag: u64) -> Result<Option<ReturnedWr>> {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        Ok(list
            .iter()
            .position(|wr| wr.data.tag == tag)
            .and_then(|index| list.remove(index)))
    }

    /// Waits up to `timeout` for the WR tagged `tag`, polling `cq` if it is direct.
    pub fn wait(
        &mut self,
        tag: u64,
        cq: &CompletionQueue,
        timeout: Duration,
    ) -> Result<ReturnedWr> {
        let start = std::time::Instant::now();
        loop {
            cq.poll(64);
            if let Some(wr) = self.try_take(tag)? {
                return Ok(wr);
            }
            if start.elapsed() >= timeout {
                return Err(ETIMEDOUT);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // Break the cycle through the WRs' own references to the list.
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_kernel_s_errnos_and_debug_names_them() {
        let errors = [EINVAL, ENOMEM, ENODEV, ETIMEDOUT, ESHUTDOWN];
        assert_eq!(errors.map(Error::to_errno), [-22, -12, -19, -110, -108]);
        assert_eq!(
            errors.map(|e| std::format!("{e:?}")),
            ["EINVAL", "ENOMEM", "ENODEV", "ETIMEDOUT", "ESHUTDOWN"]
        );
        assert_eq!(std::format!("{:?}", Error(5)), "Error(5)");
    }

    #[test]
    fn a_device_is_itself_by_name_gid_and_port() {
        let fabric = Fabric::new();
        let a = fabric.add_device("fab_a", [0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc]);
        let b = fabric.add_device("fab_b", [0x02, 0, 0, 0, 0, 1]);
        assert_eq!((a.name(), b.name()), ("fab_a", "fab_b"));
        assert!(a.is(&a) && !a.is(&b));
        assert!(a.has_cm(1) && !a.has_cm(2));
        // GID 0 is the MAC's link-local GID, from which the MAC comes back.
        let gid = a.query_gid(1, 0).unwrap();
        assert_eq!(
            gid.link_local_mac(),
            Some([0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc])
        );
        assert_eq!(gid.0[8], 0x02);
        assert_eq!(
            b.query_gid(1, 0).unwrap().link_local_mac(),
            Some([0x02, 0, 0, 0, 0, 1])
        );
        // rxe's limits: a CQ of at most 32767 entries.
        assert_eq!(a.caps().max_cqe, 0x7fff);
        // Each object its own id.
        let ids = [next_id(), next_id(), next_id()];
        assert!(ids[0] < ids[1] && ids[1] < ids[2] && ids[0] > 0);
    }

    /// A QP's transitions go RESET → INIT → RTR → RTS only; the others are EINVAL, as
    /// `ib_modify_qp_is_ok` has them, and ERR is reached from any state but RESET.
    #[test]
    fn qp_states_are_taken_in_order() {
        use crate::verbs::{Grh, Mtu};
        let fabric = Fabric::new();
        let device = fabric.add_device("fab_qp", [0x02, 0, 0, 0, 0, 3]);
        let pd = ProtectionDomain::new(&device).unwrap();
        let cq = CompletionQueue::new(&device, 16, PollContext::Direct).unwrap();
        let caps = QpCaps {
            max_send_wr: 4,
            max_recv_wr: 4,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp = QueuePair::new_rc(&pd, &cq, &cq, &caps).unwrap();
        let init = InitAttr {
            port: 1,
            pkey_index: 0,
            remote_access: RemoteAccess::empty(),
        };
        let rtr = RtrAttr {
            port: 1,
            path_mtu: Mtu::Mtu1024,
            dest_qp_num: qp.qp_num(),
            rq_psn: 0,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            av: AddressVector::Roce {
                grh: Grh {
                    sgid_index: 0,
                    dgid: device.query_gid(1, 0).unwrap(),
                    hop_limit: 1,
                },
                dmac: [0x02, 0, 0, 0, 0, 3],
            },
        };
        let rts = RtsAttr {
            sq_psn: 0,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 1,
        };
        assert_eq!(qp.modify_to_rtr(&rtr), Err(EINVAL), "RESET → RTR");
        assert_eq!(qp.modify_to_rts(&rts), Err(EINVAL), "RESET → RTS");
        assert_eq!(qp.modify_to_error(), Err(EINVAL), "RESET → ERR");
        qp.modify_to_init(&init).unwrap();
        qp.modify_to_init(&init).unwrap();
        assert_eq!(qp.modify_to_rts(&rts), Err(EINVAL), "INIT → RTS");
        qp.modify_to_rtr(&rtr).unwrap();
        assert_eq!(qp.modify_to_rtr(&rtr), Err(EINVAL), "RTR → RTR");
        assert_eq!(qp.modify_to_init(&init), Err(EINVAL), "RTR → INIT");
        qp.modify_to_rts(&rts).unwrap();
        qp.modify_to_rts(&rts).unwrap();
        qp.modify_to_error().unwrap();
    }

    #[test]
    fn buffers_and_regions_report_their_bounds() {
        let fabric = Fabric::new();
        let device = fabric.add_device("fab_mr", [0x02, 0, 0, 0, 0, 2]);
        let mut buffer = DmaBuffer::new(&device, 8192).unwrap();
        assert!(!buffer.is_empty());
        assert_eq!(buffer.len(), 8192);
        let base = buffer.dma_addr(0, 1).unwrap();
        assert_eq!(buffer.dma_addr(100, 8092), Some(base + 100));
        assert_eq!(buffer.dma_addr(100, 8093), None);
        buffer.write(10, b"tilde").unwrap();
        let pd = ProtectionDomain::new(&device).unwrap();
        let mut region = MemoryRegion::new(&pd, 4, buffer, 8, 1000).unwrap();
        assert_eq!((region.iova(), region.length()), (base + 8, 1000));
        region.write(20, b"fabric").unwrap();
        assert_eq!(
            region.buffer().copy_out(10, 16).unwrap(),
            b"tilde\0\0\0\0\0fabric"
        );
        // The key names the region's slot, with the key byte below it.
        let other = MemoryRegion::new(&pd, 1, DmaBuffer::new(&device, 64).unwrap(), 0, 64).unwrap();
        assert_ne!(region.rkey() >> 8, other.rkey() >> 8);
        assert_eq!(region.rkey() & 0xff, 0);
    }
    use crate::verbs::{Grh, Mtu};

    const SMALL: QpCaps = QpCaps {
        max_send_wr: 4,
        max_recv_wr: 4,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };

    fn roce_path(device: &Device) -> AddressVector {
        AddressVector::Roce {
            grh: Grh {
                sgid_index: 0,
                dgid: device.query_gid(1, 0).unwrap(),
                hop_limit: 1,
            },
            dmac: [0x02, 0, 0, 0, 0, 9],
        }
    }

    fn init(qp: &QueuePair) {
        let init = InitAttr {
            port: 1,
            pkey_index: 0,
            remote_access: RemoteAccess::READ | RemoteAccess::WRITE,
        };
        qp.modify_to_init(&init).unwrap();
    }

    /// `qp` from INIT to RTS towards `peer`, retrying RNR forever.
    fn up(qp: &QueuePair, peer: u32) {
        let device = qp.device();
        let rtr = RtrAttr {
            port: 1,
            path_mtu: Mtu::Mtu1024,
            dest_qp_num: peer,
            rq_psn: 0,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            av: roce_path(device),
        };
        qp.modify_to_rtr(&rtr).unwrap();
        let rts = RtsAttr {
            sq_psn: 0,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 1,
        };
        qp.modify_to_rts(&rts).unwrap();
    }

    /// Two connected RC QPs on `cq`.
    fn rc_pair(pd: &Arc<ProtectionDomain>, cq: &Arc<CompletionQueue>) -> (QueuePair, QueuePair) {
        let a = QueuePair::new_rc(pd, cq, cq, &SMALL).unwrap();
        let b = QueuePair::new_rc(pd, cq, cq, &SMALL).unwrap();
        for (qp, peer) in [(&a, b.qp_num()), (&b, a.qp_num())] {
            init(qp);
            up(qp, peer);
        }
        (a, b)
    }

    struct Rig {
        device: DeviceRef,
        pd: Arc<ProtectionDomain>,
        cq: Arc<CompletionQueue>,
    }

    fn rig(name: &str, last: u8) -> Rig {
        let fabric = Fabric::new();
        let device = fabric.add_device(name, [0x02, 0, 0, 0, 1, last]);
        let pd = ProtectionDomain::new(&device).unwrap();
        let cq = CompletionQueue::new(&device, 64, PollContext::Direct).unwrap();
        Rig { device, pd, cq }
    }

    fn buffer(rig: &Rig, len: usize) -> Option<DmaBuffer> {
        Some(DmaBuffer::new(&rig.device, len).unwrap())
    }

    /// A direct CQ hands out no more completions than the poll's budget.
    #[test]
    fn a_poll_delivers_at_most_its_budget() {
        let rig = rig("fab_budget", 1);
        let (a, b) = rc_pair(&rig.pd, &rig.cq);
        let mut mailbox = Mailbox::new().unwrap();
        for tag in 0..3 {
            let recv = mailbox.work_request(10 + tag, buffer(&rig, 8)).unwrap();
            b.post_recv(recv, 0, 8).unwrap();
            let send = mailbox.work_request(tag, buffer(&rig, 8)).unwrap();
            a.post_send(send, SendOp::Send, 0, 8).ok().unwrap();
        }
        assert_eq!(rig.cq.poll(1), 1);
        assert_eq!(rig.cq.poll(2), 2);
        assert_eq!(rig.cq.poll(64), 3);
        assert_eq!(rig.cq.poll(64), 0);
        for tag in [0, 1, 2, 10, 11, 12] {
            assert!(mailbox.try_take(tag).unwrap().is_some(), "WR {tag}");
        }
    }

    /// Dropping a CQ polled by a thread of its own ends that thread.
    #[test]
    fn dropping_a_threaded_cq_ends_its_thread() {
        let fabric = Fabric::new();
        let device = fabric.add_device("fab_cqthread", [0x02, 0, 0, 0, 1, 2]);
        let cq = CompletionQueue::new(&device, 8, PollContext::Workqueue).unwrap();
        assert_eq!(cq.context(), PollContext::Workqueue);
        assert_eq!(cq.poll(8), 0, "a threaded CQ is not polled by its owner");
        let shared = Arc::downgrade(&cq.shared);
        drop(cq);
        assert!(shared.upgrade().is_none(), "the CQ's thread still runs");
    }

    /// A mailbox dropped with WRs in it frees them (they hold the mailbox's list).
    #[test]
    fn a_dropped_mailbox_frees_what_came_back() {
        let rig = rig("fab_mailbox", 3);
        let mailbox = Mailbox::new().unwrap();
        let recv = mailbox.work_request(1, buffer(&rig, 8)).unwrap();
        let bytes = Arc::downgrade(&recv.buffer().unwrap().bytes);
        let qp = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        init(&qp);
        qp.post_recv(recv, 0, 8).ok().unwrap();
        drop(qp);
        assert!(
            bytes.upgrade().is_some(),
            "the flushed WR waits in the mailbox"
        );
        drop(mailbox);
        assert!(bytes.upgrade().is_none(), "the mailbox's WRs outlived it");
    }

    /// A QP takes room on its CQs for every WR it may have outstanding, and gives it back
    /// when dropped; a CQ that could overrun is refused.
    #[test]
    fn a_qp_is_refused_a_cq_it_could_overrun() {
        let fabric = Fabric::new();
        let device = fabric.add_device("fab_reserve", [0x02, 0, 0, 0, 1, 4]);
        let pd = ProtectionDomain::new(&device).unwrap();
        let cq = CompletionQueue::new(&device, 8, PollContext::Direct).unwrap();
        let first = QueuePair::new_rc(&pd, &cq, &cq, &SMALL).unwrap();
        let one = QpCaps {
            max_send_wr: 1,
            max_recv_wr: 1,
            ..SMALL
        };
        assert_eq!(QueuePair::new_rc(&pd, &cq, &cq, &one).err(), Some(EINVAL));
        drop(first);
        assert!(QueuePair::new_ud(&pd, &cq, &cq, &one).is_ok());
    }

    /// A QP needs both queues, and CQs of its own device.
    #[test]
    fn a_qp_needs_both_queues_and_cqs_of_its_device() {
        let rig = rig("fab_create", 5);
        let other = Fabric::new().add_device("fab_elsewhere", [0x02, 0, 0, 0, 1, 6]);
        let foreign = CompletionQueue::new(&other, 64, PollContext::Direct).unwrap();
        let no_send = QpCaps {
            max_send_wr: 0,
            ..SMALL
        };
        let no_recv = QpCaps {
            max_recv_wr: 0,
            ..SMALL
        };
        let (pd, cq) = (&rig.pd, &rig.cq);
        assert_eq!(QueuePair::new_rc(pd, cq, cq, &no_send).err(), Some(EINVAL));
        assert_eq!(QueuePair::new_rc(pd, cq, cq, &no_recv).err(), Some(EINVAL));
        assert_eq!(
            QueuePair::new_rc(pd, &foreign, cq, &SMALL).err(),
            Some(EINVAL)
        );
        assert_eq!(
            QueuePair::new_rc(pd, cq, &foreign, &SMALL).err(),
            Some(EINVAL)
        );
    }

    /// A refused post names its error in `Debug`; a WR's buffer can be swapped between
    /// posts; an address vector without the peer's MAC makes no address handle.
    #[test]
    fn refusals_buffers_and_address_handles() {
        let rig = rig("fab_misc", 7);
        let mailbox = Mailbox::new().unwrap();
        let qp = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        let mut wr = mailbox.work_request(1, buffer(&rig, 8)).unwrap();
        let old = wr.replace_buffer(buffer(&rig, 32)).unwrap();
        assert_eq!((old.len(), wr.buffer().unwrap().len()), (8, 32));
        let Err(rejected) = qp.post_send(wr, SendOp::Send, 0, 16) else {
            panic!("a send was posted on a QP in RESET");
        };
        assert_eq!(std::format!("{rejected:?}"), "Rejected { error: EINVAL }");
        let mut av = roce_path(&rig.device);
        assert!(AddressHandle::new(&rig.pd, 1, &av).is_ok());
        if let AddressVector::Roce { dmac, .. } = &mut av {
            *dmac = [0; 6];
        }
        assert_eq!(AddressHandle::new(&rig.pd, 1, &av).err(), Some(EINVAL));
        assert_eq!(rig.pd.local_dma_lkey(), 0);
    }

    /// A refused RDMA WRITE moves the responder to ERR too, as rxe does (IBA's responder
    /// class C error): a receive posted there afterwards comes back flushed.
    #[test]
    fn a_remote_access_error_fails_the_responder() {
        let rig = rig("fab_classc", 8);
        let (a, b) = rc_pair(&rig.pd, &rig.cq);
        let mut mailbox = Mailbox::new().unwrap();
        let write = mailbox.work_request(1, buffer(&rig, 8)).unwrap();
        let op = SendOp::RdmaWrite {
            remote_addr: 0,
            rkey: 0x1234_5600,
        };
        a.post_send(write, op, 0, 8).ok().unwrap();
        let done = mailbox.wait(1, &rig.cq, Duration::from_secs(1)).unwrap();
        assert_eq!(done.completion().status, WcStatus::RemoteAccessError);
        let recv = mailbox.work_request(2, buffer(&rig, 8)).unwrap();
        b.post_recv(recv, 0, 8).ok().unwrap();
        let flushed = mailbox.wait(2, &rig.cq, Duration::from_secs(1)).unwrap();
        assert_eq!(flushed.completion().status, WcStatus::WrFlushError);
    }

    /// An RC SEND reaches only a connected RC peer in RTR or RTS: to a peer still in
    /// INIT (whose receive is posted) the requester retries and gives up.
    #[test]
    fn an_rc_send_to_a_peer_in_init_is_lost() {
        let rig = rig("fab_rcpeer", 9);
        let a = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        let b = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        init(&a);
        up(&a, b.qp_num());
        init(&b);
        let mut mailbox = Mailbox::new().unwrap();
        let recv = mailbox.work_request(2, buffer(&rig, 8)).unwrap();
        b.post_recv(recv, 0, 8).ok().unwrap();
        let send = mailbox.work_request(1, buffer(&rig, 8)).unwrap();
        a.post_send(send, SendOp::Send, 0, 8).ok().unwrap();
        let sent = mailbox.wait(1, &rig.cq, Duration::from_secs(1)).unwrap();
        assert_eq!(sent.completion().status, WcStatus::RetryExceededError);
        assert!(
            mailbox.try_take(2).unwrap().is_none(),
            "the receive was taken"
        );
    }

    /// A datagram reaches only a UD QP in RTR or RTS with the Q_Key: not an RC QP (whose
    /// Q_Key is 0), not a UD QP in INIT; each send still succeeds.
    #[test]
    fn a_datagram_reaches_only_a_ready_ud_qp() {
        let rig = rig("fab_udpeer", 10);
        let sender = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        sender.modify_ud_to_rts(1, 0, 0).unwrap();
        let rc = QueuePair::new_rc(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        init(&rc);
        up(&rc, sender.qp_num());
        let ud_in_init = QueuePair::new_ud(&rig.pd, &rig.cq, &rig.cq, &SMALL).unwrap();
        init(&ud_in_init);
        let mut mailbox = Mailbox::new().unwrap();
        let ah = AddressHandle::new(&rig.pd, 1, &roce_path(&rig.device)).unwrap();
        for (tag, peer) in [(1, &rc), (2, &ud_in_init)] {
            let recv = mailbox.work_request(10 + tag, buffer(&rig, 64)).unwrap();
            peer.post_recv(recv, 0, 64).ok().unwrap();
            let dest = UdDest {
                ah: ah.clone(),
                remote_qpn: peer.qp_num(),
                remote_qkey: 0,
            };
            let send = mailbox.work_request(tag, buffer(&rig, 8)).unwrap();
            sender.post_ud_send(send, &dest, 0, 8).ok().unwrap();
            let sent = mailbox.wait(tag, &rig.cq, Duration::from_secs(1)).unwrap();
            assert_eq!(sent.completion().status, WcStatus::Success);
            assert!(mailbox.try_take(10 + tag).unwrap().is_none(), "peer {tag}");
        }
    }
}
