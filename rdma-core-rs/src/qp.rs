// SPDX-License-Identifier: GPL-2.0
//! Queue pairs: creation, typed state transitions, posting, and drain before destroy.
//!
//! A posted [`WorkRequest`] belongs to the QP until its completion hands it back, and
//! the QP counts them. Draining (before destroy and before RESET) refuses new posts,
//! moves the QP to ERR, which flushes both queues, and waits until the count is zero:
//! every WR is back with its owner, so destroying the QP leaves the device pointing at
//! nothing. Forgetting a QP (`mem::forget`) leaks it with its WRs, which is safe: what
//! the device may still write into is never freed.

use core::ops::Deref;
use core::ptr::NonNull;

use kernel::error::{from_err_ptr, to_result};
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::ah::AddressHandle;
use crate::cq::CompletionQueue;
use crate::device::{teardown_may_sleep, Device, DeviceRef};
use crate::dma::DmaDirection;
use crate::mr::{MemoryRegion, SgRegion};
use crate::pd::ProtectionDomain;
use crate::sys;
use crate::sys::kernel_api::atomic::{Acquire, Atomic, Full, Release};
use crate::sys::kernel_api::sleep;
pub use crate::verbs::{
    AddressVector, AtomicOp, Grh, InitAttr, QpCaps, RemoteAccess, RtrAttr, RtsAttr, SendOp,
};
use crate::wr::{CompletionHandler, WorkRequest};

/// Where a UD SEND goes: the address handle and the QP behind it.
#[derive(Clone)]
pub struct UdDest {
    /// The path to the peer's port; the send holds a reference until it completes.
    pub ah: Arc<AddressHandle>,
    /// The peer QP's number.
    pub remote_qpn: u32,
    /// The Q_Key the peer QP accepts.
    pub remote_qkey: u32,
}

/// A work request the QP did not take, handed back with the reason.
pub struct Rejected<T: CompletionHandler> {
    /// Why: `EINVAL` for a WR that does not fit the QP (type, device, range), `ESHUTDOWN`
    /// while the QP drains, or the driver's error.
    pub error: Error,
    /// The work request, with everything it owns.
    pub wr: KBox<WorkRequest<T>>,
}

impl<T: CompletionHandler> From<Rejected<T>> for Error {
    fn from(rejected: Rejected<T>) -> Self {
        rejected.error
    }
}

impl<T: CompletionHandler> core::fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish()
    }
}

/// The outcome of a post: the WR is the QP's until it completes, or it is handed back.
pub type PostResult<T> = core::result::Result<(), Rejected<T>>;

/// The `ib_access_flags` of `access`: local write always, and the remote rights granted.
fn access_flags(access: RemoteAccess) -> u32 {
    let mut flags = sys::ib_access_flags_IB_ACCESS_LOCAL_WRITE;
    for (right, flag) in [
        (
            RemoteAccess::READ,
            sys::ib_access_flags_IB_ACCESS_REMOTE_READ,
        ),
        (
            RemoteAccess::WRITE,
            sys::ib_access_flags_IB_ACCESS_REMOTE_WRITE,
        ),
        (
            RemoteAccess::ATOMIC,
            sys::ib_access_flags_IB_ACCESS_REMOTE_ATOMIC,
        ),
    ] {
        if access.contains(right) {
            flags |= flag;
        }
    }
    flags
}

/// Hands a WR back with `$error` when `$check` fails.
macro_rules! or_reject {
    ($check:expr, $wr:ident) => {
        match $check {
            Ok(value) => value,
            Err(error) => return Err(Rejected { error, wr: $wr }),
        }
    };
}

/// The queues of a QP: what posting needs, shared by the QP's owner and the completion
/// handlers of its WRs (which get `&Queues` and may post again).
pub struct Queues {
    qp: NonNull<sys::ib_qp>,
    device: DeviceRef,
    /// The QP's PD, as an identity: a region registered through the QP must be in it.
    pd: *const ProtectionDomain,
    lkey: u32,
    qp_type: sys::ib_qp_type,
    /// WRs posted and not yet handed back; each completion counts itself down after its
    /// handler returns.
    outstanding: Atomic<u32>,
    /// Set while the QP drains: posts are refused, so the count can only fall.
    draining: Atomic<bool>,
}

// SAFETY: posting and modifying a kernel QP are allowed from any thread concurrently
// (drivers serialise their queues themselves); the rest is atomic or immutable.
unsafe impl Send for Queues {}
// SAFETY: as above.
unsafe impl Sync for Queues {}

impl Queues {
    /// One WR handed back: the last access a completion makes to the QP, through a raw
    /// pointer since the QP may be freed the moment the count reaches zero.
    ///
    /// # Safety
    ///
    /// `queues` is the `Queues` of a live QP with this WR counted as outstanding.
    pub(crate) unsafe fn completed(queues: *const Queues) {
        // SAFETY: live until the count this decrement may bring to zero is observed.
        unsafe { (*queues).outstanding.fetch_sub(1u32, Release) };
    }

    /// The device the QP belongs to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The QP number the peer addresses.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is valid while `Queues` is reachable; `qp_num` is set at creation.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// The `ib_qp`, for the raw bindings (benchmarks).
    pub fn as_raw(&self) -> *mut sys::ib_qp {
        self.qp.as_ptr()
    }

    /// WRs posted and not yet handed back.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Acquire)
    }

    /// `EINVAL` unless this QP is of `qp_type`: a WR built for the other transport would
    /// make the driver read fields the WR does not have (rxe reads `ud_wr()->ah`).
    fn require(&self, qp_type: sys::ib_qp_type) -> Result {
        if self.qp_type == qp_type {
            return Ok(());
        }
        pr_err!(
            "{}: QP {}: work request for the wrong QP type\n",
            self.device.name(),
            self.qp_num()
        );
        Err(EINVAL)
    }

    /// The gather/scatter entry for `len` bytes at `offset` of the WR's own buffer.
    fn sge<T: CompletionHandler>(
        &self,
        wr: &WorkRequest<T>,
        offset: usize,
        len: usize,
        device_writes: bool,
    ) -> Result<sys::ib_sge> {
        let addr = match (&wr.buffer, &wr.pages) {
            // A DMA address means nothing to another device.
            (Some(buffer), _) if buffer.device().is(&self.device) => buffer.dma_addr(offset, len),
            (None, Some(pages)) if pages.device().is(&self.device) => {
                // A buffer is mapped both ways; borrowed pages only the way they were.
                let wanted = if device_writes {
                    DmaDirection::FromDevice
                } else {
                    DmaDirection::ToDevice
                };
                (pages.direction() == wanted)
                    .then(|| pages.dma_addr(offset, len))
                    .flatten()
            }
            _ => None,
        }
        .ok_or(EINVAL)?;
        Ok(sys::ib_sge {
            addr,
            length: u32::try_from(len).map_err(|_| EINVAL)?,
            lkey: self.lkey,
        })
    }

    /// Counts a WR as outstanding before its post (its completion may come first), unless
    /// the QP drains. With `drain`'s store and load, full ordering means either the drain
    /// sees this count or this post sees the drain.
    fn begin_post(&self) -> Result {
        self.outstanding.fetch_add(1u32, Full);
        // `Full`, not `Acquire`: the handshake with `drain` is a store then a load on
        // each side, which only sequential consistency orders (on x86 a plain load).
        if self.draining.load(Full) {
            self.outstanding.fetch_sub(1u32, Release);
            return Err(crate::sys::kernel_api::shut_down());
        }
        Ok(())
    }

    /// Hands `wr` to the device through `post` (given its `ib_cqe`), or back on failure.
    fn submit<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        post: impl FnOnce(*mut sys::ib_cqe) -> c_int,
    ) -> PostResult<T> {
        or_reject!(self.begin_post(), wr);
        let mut wr = wr;
        wr.queues = self;
        let raw = KBox::into_raw(wr);
        // SAFETY: `raw` is the live WR just leaked.
        let ret = post(unsafe { WorkRequest::cqe_of(raw) });
        if ret == 0 {
            return Ok(());
        }
        self.outstanding.fetch_sub(1u32, Release);
        // SAFETY: the post failed, so the device never took the WR: the box is ours again.
        let wr = unsafe { KBox::from_raw(raw) };
        Err(Rejected {
            error: Error::from_errno(ret),
            wr,
        })
    }

    /// Posts a send-queue WR whose header is `send_wr` (its `wr_cqe` filled in here).
    fn submit_send<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        send_wr: *mut sys::ib_send_wr,
    ) -> PostResult<T> {
        self.submit(wr, |cqe| {
            // SAFETY: `send_wr` points at the caller's WR on its stack, live across this
            // call; the QP is valid; the driver copies the WR, whose buffer, region and
            // handle the leaked `WorkRequest` owns until its completion.
            unsafe {
                (*send_wr).__bindgen_anon_1.wr_cqe = cqe;
                sys::tilde_rdma_post_send(self.qp.as_ptr(), send_wr, core::ptr::null_mut())
            }
        })
    }

    /// Posts a receive of up to `len` bytes into the WR's buffer (or, without one, its
    /// pages) at `offset`.
    pub fn post_recv<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        let mut sge = or_reject!(self.sge(&wr, offset, len, true), wr);
        self.submit(wr, |cqe| {
            let recv = sys::ib_recv_wr {
                next: core::ptr::null_mut(),
                __bindgen_anon_1: sys::ib_recv_wr__bindgen_ty_1 { wr_cqe: cqe },
                sg_list: &mut sge,
                num_sge: 1,
            };
            // SAFETY: the QP is valid; the WR and its SGE live across the call (the
            // driver copies them); the buffer they name is owned by the leaked
            // `WorkRequest` until its completion.
            unsafe { sys::tilde_rdma_post_recv(self.qp.as_ptr(), &recv, core::ptr::null_mut()) }
        })
    }

    /// Posts a signaled send (SEND, or RDMA WRITE from / READ into) of `len` bytes of the
    /// WR's buffer (or, without one, its pages: mapped `ToDevice`, or `FromDevice` for a
    /// READ) at `offset`, on an RC QP.
    pub fn post_send<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        op: SendOp,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        or_reject!(self.require(sys::ib_qp_type_IB_QPT_RC), wr);
        let device_writes = matches!(op, SendOp::RdmaRead { .. });
        let mut sge = or_reject!(self.sge(&wr, offset, len, device_writes), wr);
        let (opcode, imm, remote) = match op {
            SendOp::Send => (sys::ib_wr_opcode_IB_WR_SEND, 0, None),
            SendOp::SendWithImm(imm) => (sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM, imm.to_be(), None),
            SendOp::RdmaWrite { remote_addr, rkey } => (
                sys::ib_wr_opcode_IB_WR_RDMA_WRITE,
                0,
                Some((remote_addr, rkey)),
            ),
            SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            } => (
                sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM,
                imm.to_be(),
                Some((remote_addr, rkey)),
            ),
            SendOp::RdmaRead { remote_addr, rkey } => (
                sys::ib_wr_opcode_IB_WR_RDMA_READ,
                0,
                Some((remote_addr, rkey)),
            ),
        };
        let (remote_addr, rkey) = remote.unwrap_or((0, 0));
        // Every send WR is posted as an `ib_rdma_wr`: it starts with the `ib_send_wr`, and
        // drivers read the remote address only for RDMA opcodes.
        let mut rdma = sys::ib_rdma_wr {
            wr: sys::ib_send_wr {
                ex: sys::ib_send_wr__bindgen_ty_2 { imm_data: imm },
                ..signaled_wr(opcode, Some(&mut sge))
            },
            remote_addr,
            rkey,
        };
        self.submit_send(wr, &mut rdma.wr)
    }

    /// Posts a signaled 8-byte atomic on the peer's region `rkey` at `remote_addr`
    /// (8-byte aligned); the original value lands in 8 bytes of the WR's buffer at
    /// `offset`.
    pub fn post_atomic<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        op: AtomicOp,
        offset: usize,
    ) -> PostResult<T> {
        or_reject!(self.require(sys::ib_qp_type_IB_QPT_RC), wr);
        let mut sge = or_reject!(self.sge(&wr, offset, 8, true), wr);
        let (opcode, remote_addr, rkey, compare_add, swap) = match op {
            AtomicOp::CompareAndSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            } => (
                sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP,
                remote_addr,
                rkey,
                compare,
                swap,
            ),
            AtomicOp::FetchAndAdd {
                remote_addr,
                rkey,
                add,
            } => (
                sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD,
                remote_addr,
                rkey,
                add,
                0,
            ),
        };
        if remote_addr % 8 != 0 {
            return Err(Rejected { error: EINVAL, wr });
        }
        let mut atomic = sys::ib_atomic_wr {
            wr: signaled_wr(opcode, Some(&mut sge)),
            remote_addr,
            compare_add,
            swap,
            rkey,
            ..Default::default()
        };
        self.submit_send(wr, &mut atomic.wr)
    }

    /// Posts a signaled UD SEND of `len` bytes of the WR's buffer at `offset` to `dest`.
    pub fn post_ud_send<T: CompletionHandler>(
        &self,
        mut wr: KBox<WorkRequest<T>>,
        dest: &UdDest,
        offset: usize,
        len: usize,
    ) -> PostResult<T> {
        or_reject!(self.require(sys::ib_qp_type_IB_QPT_UD), wr);
        if !dest.ah.device().is(&self.device) {
            return Err(Rejected { error: EINVAL, wr });
        }
        let mut sge = or_reject!(self.sge(&wr, offset, len, false), wr);
        let mut ud = sys::ib_ud_wr {
            wr: signaled_wr(sys::ib_wr_opcode_IB_WR_SEND, Some(&mut sge)),
            ah: dest.ah.as_raw(),
            remote_qpn: dest.remote_qpn,
            remote_qkey: dest.remote_qkey,
            ..Default::default()
        };
        // The WR holds the handle until it completes.
        wr.ah = Some(dest.ah.clone());
        self.submit_send(wr, &mut ud.wr)
    }

    /// Posts a fast registration making `region` valid for the peer's `access` under a
    /// new key, which it returns; the WR carries the region until it completes
    /// ([`WorkRequest::take_region`] gives it back).
    pub fn post_reg_mr<T: CompletionHandler>(
        &self,
        mut wr: KBox<WorkRequest<T>>,
        mut region: MemoryRegion,
        access: RemoteAccess,
    ) -> core::result::Result<u32, Rejected<T>> {
        let in_pd = core::ptr::eq(
            core::ptr::from_ref::<ProtectionDomain>(region.pd()),
            self.pd,
        );
        if !in_pd || self.qp_type != sys::ib_qp_type_IB_QPT_RC {
            wr.region = Some(region);
            return Err(Rejected { error: EINVAL, wr });
        }
        // A new key for each registration: the rkey of an earlier one must stop working.
        region.bump_key();
        let mut reg = sys::ib_reg_wr {
            wr: signaled_wr(sys::ib_wr_opcode_IB_WR_REG_MR, None),
            mr: region.as_raw(),
            key: region.rkey(),
            access: access_flags(access) as i32,
        };
        let key = region.rkey();
        wr.region = Some(region);
        self.submit_send(wr, &mut reg.wr).map(|()| key)
    }

    /// Posts a fast registration making the pages `region` maps valid for the peer's
    /// `access` under a new key, which it returns; the WR carries the region until it
    /// completes ([`WorkRequest::take_sg_region`]). From here on the region counts its
    /// key valid, until a LOCAL_INV ([`Queues::post_invalidate`]) or the peer's SEND
    /// with Invalidate ([`SgRegion::invalidated_by`]) ends it.
    pub fn post_reg_sg<T: CompletionHandler>(
        &self,
        mut wr: KBox<WorkRequest<T>>,
        mut region: SgRegion,
        access: RemoteAccess,
    ) -> core::result::Result<u32, Rejected<T>> {
        let in_pd = core::ptr::eq(
            core::ptr::from_ref::<ProtectionDomain>(region.pd()),
            self.pd,
        );
        let registration = if in_pd && self.qp_type == sys::ib_qp_type_IB_QPT_RC {
            region.register()
        } else {
            None
        };
        let Some((mr, key)) = registration else {
            wr.sg_region = Some(region);
            return Err(Rejected { error: EINVAL, wr });
        };
        let mut reg = sys::ib_reg_wr {
            wr: signaled_wr(sys::ib_wr_opcode_IB_WR_REG_MR, None),
            mr,
            key,
            access: access_flags(access) as i32,
        };
        wr.sg_region = Some(region);
        self.submit_send(wr, &mut reg.wr)
            .map(|()| key)
            .map_err(|mut rejected| {
                // The device never saw the registration: the key is not valid.
                if let Some(region) = rejected.wr.sg_region.as_mut() {
                    region.invalidated();
                }
                rejected
            })
    }

    /// Posts a local invalidation of `region`'s key, carrying the region; once it
    /// completes successfully the region's pages can be unmapped ([`SgRegion::unmap`]).
    pub fn post_invalidate<T: CompletionHandler>(
        &self,
        mut wr: KBox<WorkRequest<T>>,
        region: SgRegion,
    ) -> PostResult<T> {
        let mut inv = sys::ib_send_wr {
            ex: sys::ib_send_wr__bindgen_ty_2 {
                invalidate_rkey: region.rkey(),
            },
            ..signaled_wr(sys::ib_wr_opcode_IB_WR_LOCAL_INV, None)
        };
        wr.sg_region = Some(region);
        or_reject!(self.require(sys::ib_qp_type_IB_QPT_RC), wr);
        self.submit_send(wr, &mut inv)
    }

    /// Posts a local invalidation of `rkey`: after it completes, the peer's access with
    /// that key fails.
    pub fn post_local_inv<T: CompletionHandler>(
        &self,
        wr: KBox<WorkRequest<T>>,
        rkey: u32,
    ) -> PostResult<T> {
        or_reject!(self.require(sys::ib_qp_type_IB_QPT_RC), wr);
        let mut inv = sys::ib_send_wr {
            ex: sys::ib_send_wr__bindgen_ty_2 {
                invalidate_rkey: rkey,
            },
            ..signaled_wr(sys::ib_wr_opcode_IB_WR_LOCAL_INV, None)
        };
        self.submit_send(wr, &mut inv)
    }
}

/// The header every tilde send-queue WR has: `opcode`, signaled, and at most one gather
/// entry; `submit_send` fills in the completion entry.
fn signaled_wr(opcode: sys::ib_wr_opcode, sge: Option<&mut sys::ib_sge>) -> sys::ib_send_wr {
    let (sg_list, num_sge) = match sge {
        Some(sge) => (core::ptr::from_mut(sge), 1),
        None => (core::ptr::null_mut(), 0),
    };
    sys::ib_send_wr {
        sg_list,
        num_sge,
        opcode,
        send_flags: sys::ib_send_flags_IB_SEND_SIGNALED,
        ..Default::default()
    }
}

/// A queue pair (`ib_create_qp`), RC or UD, with its typed state transitions. It holds
/// its PD and CQs; posting is on [`Queues`], which it dereferences to. Dropping it drains
/// it (see the module documentation) and destroys it.
pub struct QueuePair {
    /// Allocated by `create`, freed by `drop` after the QP is destroyed; never borrowed
    /// mutably, since completion handlers share it.
    queues: NonNull<Queues>,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    pd: Arc<ProtectionDomain>,
    /// The RDMA CM id the QP was created on, which destroys it.
    cm_id: Option<NonNull<sys::rdma_cm_id>>,
    /// Completions reserved in the send and receive CQs.
    reserved: (u32, u32),
}

// SAFETY: `Queues` is `Send + Sync`; the `Arc`s are.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

impl Deref for QueuePair {
    type Target = Queues;

    fn deref(&self) -> &Queues {
        // SAFETY: `queues` is live until `drop` (type invariant) and only shared.
        unsafe { self.queues.as_ref() }
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
        Self::create(pd, send_cq, recv_cq, caps, sys::ib_qp_type_IB_QPT_RC, None)
    }

    /// Creates a UD QP in RESET; bring it up with [`QueuePair::modify_ud_to_rts`].
    pub fn new_ud(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(pd, send_cq, recv_cq, caps, sys::ib_qp_type_IB_QPT_UD, None)
    }

    /// An RC QP on an RDMA CM id (`rdma_create_qp`), which the CM moves through its
    /// states; destroyed through the CM. The id must outlive it ([`crate::cm::CmId`]
    /// owns it).
    pub(crate) fn new_cm(
        id: NonNull<sys::rdma_cm_id>,
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(
            pd,
            send_cq,
            recv_cq,
            caps,
            sys::ib_qp_type_IB_QPT_RC,
            Some(id),
        )
    }

    fn create(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: &QpCaps,
        qp_type: sys::ib_qp_type,
        cm_id: Option<NonNull<sys::rdma_cm_id>>,
    ) -> Result<Self> {
        let device = pd.device();
        if !send_cq.device().is(device) || !recv_cq.device().is(device) {
            return Err(EINVAL);
        }
        let queues = KBox::new(
            Queues {
                qp: NonNull::dangling(),
                device: device.to_ref()?,
                pd: core::ptr::from_ref::<ProtectionDomain>(pd),
                lkey: pd.local_dma_lkey(),
                qp_type,
                outstanding: Atomic::new(0),
                draining: Atomic::new(false),
            },
            GFP_KERNEL,
        )?;
        let mut init = sys::ib_qp_init_attr {
            send_cq: send_cq.as_raw(),
            recv_cq: recv_cq.as_raw(),
            cap: sys::ib_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
                ..Default::default()
            },
            sq_sig_type: sys::ib_sig_type_IB_SIGNAL_REQ_WR,
            qp_type,
            ..Default::default()
        };
        let qp = match cm_id {
            Some(id) => {
                // SAFETY: the id is valid and has no QP yet (`CmId::create_qp` checks);
                // the PD and CQs are valid; `init` is a valid attribute block, updated
                // with the actual caps.
                let created = unsafe { sys::rdma_create_qp(id.as_ptr(), pd.as_raw(), &mut init) };
                // SAFETY: on success the CM stored the new QP in the id.
                to_result(created).map(|()| unsafe { (*id.as_ptr()).qp })
            }
            None => {
                // SAFETY: as above; the caller name is static.
                let created = unsafe {
                    sys::ib_create_qp_kernel(
                        pd.as_raw(),
                        &mut init,
                        sys::kernel_api::c_str(c"tilde_rdma"),
                    )
                };
                from_err_ptr(created)
            }
        };
        let mut queues = queues;
        queues.qp = NonNull::new(qp?).ok_or(ENOMEM)?;
        let mut qp = Self {
            queues: NonNull::from(KBox::leak(queues)),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            pd: pd.clone(),
            cm_id,
            reserved: (0, 0),
        };
        // Room in the CQs for every completion the QP can have outstanding, as created
        // (drivers round the caps up). Dropping `qp` on failure destroys it.
        send_cq.reserve(init.cap.max_send_wr)?;
        qp.reserved.0 = init.cap.max_send_wr;
        recv_cq.reserve(init.cap.max_recv_wr)?;
        qp.reserved.1 = init.cap.max_recv_wr;
        Ok(qp)
    }

    /// The PD the QP is in.
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    fn modify(&self, attr: &mut sys::ib_qp_attr, mask: u32) -> Result {
        // SAFETY: the QP is valid; `attr` is a valid attribute block for `mask`.
        let result = to_result(unsafe { sys::ib_modify_qp(self.qp.as_ptr(), attr, mask as i32) });
        result.inspect_err(|e| {
            pr_err!(
                "{}: QP {}: modify to state {} failed: {:?}\n",
                self.device.name(),
                self.qp_num(),
                attr.qp_state,
                e
            )
        })
    }

    /// RESET → INIT.
    pub fn modify_to_init(&self, init: &InitAttr) -> Result {
        let access = access_flags(init.remote_access);
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_INIT,
            pkey_index: init.pkey_index,
            port_num: init.port,
            qp_access_flags: access as i32,
            ..Default::default()
        };
        let mask = sys::ib_qp_attr_mask_IB_QP_STATE
            | sys::ib_qp_attr_mask_IB_QP_PKEY_INDEX
            | sys::ib_qp_attr_mask_IB_QP_PORT
            | sys::ib_qp_attr_mask_IB_QP_ACCESS_FLAGS;
        self.modify(&mut attr, mask)
    }

    /// INIT → RTR.
    pub fn modify_to_rtr(&self, rtr: &RtrAttr) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RTR,
            path_mtu: rtr.path_mtu.to_raw(),
            dest_qp_num: rtr.dest_qp_num,
            rq_psn: rtr.rq_psn,
            max_dest_rd_atomic: rtr.max_dest_rd_atomic,
            min_rnr_timer: rtr.min_rnr_timer,
            ..Default::default()
        };
        attr.ah_attr = crate::ah::ah_attr(rtr.port, &rtr.av);
        let mask = sys::ib_qp_attr_mask_IB_QP_STATE
            | sys::ib_qp_attr_mask_IB_QP_AV
            | sys::ib_qp_attr_mask_IB_QP_PATH_MTU
            | sys::ib_qp_attr_mask_IB_QP_DEST_QPN
            | sys::ib_qp_attr_mask_IB_QP_RQ_PSN
            | sys::ib_qp_attr_mask_IB_QP_MAX_DEST_RD_ATOMIC
            | sys::ib_qp_attr_mask_IB_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask)
    }

    /// RTR → RTS.
    pub fn modify_to_rts(&self, rts: &RtsAttr) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RTS,
            sq_psn: rts.sq_psn,
            timeout: rts.timeout,
            retry_cnt: rts.retry_cnt,
            rnr_retry: rts.rnr_retry,
            max_rd_atomic: rts.max_rd_atomic,
            ..Default::default()
        };
        let mask = sys::ib_qp_attr_mask_IB_QP_STATE
            | sys::ib_qp_attr_mask_IB_QP_SQ_PSN
            | sys::ib_qp_attr_mask_IB_QP_TIMEOUT
            | sys::ib_qp_attr_mask_IB_QP_RETRY_CNT
            | sys::ib_qp_attr_mask_IB_QP_RNR_RETRY
            | sys::ib_qp_attr_mask_IB_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask)
    }

    /// RESET → INIT → RTR → RTS for a UD QP: it receives datagrams that carry `qkey`.
    pub fn modify_ud_to_rts(&self, port: u32, pkey_index: u16, qkey: u32) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_INIT,
            pkey_index,
            port_num: port,
            qkey,
            ..Default::default()
        };
        let mask = sys::ib_qp_attr_mask_IB_QP_STATE
            | sys::ib_qp_attr_mask_IB_QP_PKEY_INDEX
            | sys::ib_qp_attr_mask_IB_QP_PORT
            | sys::ib_qp_attr_mask_IB_QP_QKEY;
        self.modify(&mut attr, mask)?;
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RTR,
            ..Default::default()
        };
        self.modify(&mut attr, sys::ib_qp_attr_mask_IB_QP_STATE)?;
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RTS,
            sq_psn: 0,
            ..Default::default()
        };
        self.modify(
            &mut attr,
            sys::ib_qp_attr_mask_IB_QP_STATE | sys::ib_qp_attr_mask_IB_QP_SQ_PSN,
        )
    }

    /// Sets the Q_Key a UD QP accepts (and sends with by default), in RTS: IPoIB learns
    /// its link's Q_Key from the broadcast group's join. May sleep.
    pub fn set_qkey(&self, qkey: u32) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_UD)?;
        let mut attr = sys::ib_qp_attr {
            qkey,
            ..Default::default()
        };
        // SAFETY: the QP is valid; `attr` is a valid attribute block for the mask.
        to_result(unsafe {
            sys::ib_modify_qp(
                self.qp.as_ptr(),
                &mut attr,
                sys::ib_qp_attr_mask_IB_QP_QKEY as i32,
            )
        })
    }

    /// Attaches the QP to the multicast group `mgid` with LID `mlid` (`ib_attach_mcast`),
    /// so it receives the group's datagrams. UD only; may sleep (a device may run a
    /// firmware command).
    pub fn attach_mcast(&self, mgid: &crate::verbs::Gid, mlid: u16) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_UD)?;
        let mut gid = sys::ib_gid { raw: mgid.0 };
        // SAFETY: the QP is valid; `gid` is read during the call only.
        to_result(unsafe { sys::ib_attach_mcast(self.qp.as_ptr(), &mut gid, mlid) })
    }

    /// Detaches the QP from `mgid` (`ib_detach_mcast`). May sleep.
    pub fn detach_mcast(&self, mgid: &crate::verbs::Gid, mlid: u16) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_UD)?;
        let mut gid = sys::ib_gid { raw: mgid.0 };
        // SAFETY: as for `attach_mcast`.
        to_result(unsafe { sys::ib_detach_mcast(self.qp.as_ptr(), &mut gid, mlid) })
    }

    /// Any state → ERR: both queues flush, every posted WR completes with
    /// `WrFlushError`. Posts are still taken, and flushed.
    pub fn modify_to_error(&self) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_ERR,
            ..Default::default()
        };
        self.modify(&mut attr, sys::ib_qp_attr_mask_IB_QP_STATE)
    }

    /// Drains, then any state → RESET: the QP forgets its queues and its peer and can be
    /// brought up again (INIT, RTR, RTS), e.g. after an error. RESET discards posted WRs
    /// without completions, so the drain first hands every one back.
    pub fn reset(&mut self) -> Result {
        if !self.may_drain() {
            return Err(EINVAL);
        }
        self.drain();
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RESET,
            ..Default::default()
        };
        let result = self.modify(&mut attr, sys::ib_qp_attr_mask_IB_QP_STATE);
        self.draining.store(false, Release);
        result
    }

    /// Refuses new posts, flushes the queues (ERR) if anything is posted, and waits until
    /// every WR is handed back: the direct CQs are polled here, the others deliver by
    /// themselves. Like the IB core's own drain it waits as long as it takes, with a
    /// dmesg line every five seconds: destroying the QP earlier would let completions
    /// land in freed memory.
    fn drain(&self) {
        self.draining.xchg(true, Full);
        // `Full`: the other half of `begin_post`'s handshake.
        if self.outstanding.load(Full) == 0 {
            return;
        }
        // A failure is logged by `modify`; waiting is still the only safe course.
        let _ = self.modify_to_error();
        let mut waited: u32 = 0;
        while self.outstanding() != 0 {
            self.send_cq.poll(64);
            self.recv_cq.poll(64);
            if self.outstanding() == 0 {
                break;
            }
            sleep(core::time::Duration::from_millis(1));
            waited = waited.wrapping_add(1);
            if waited % 5000 == 0 {
                pr_warn!(
                    "{}: QP {}: still waiting for {} work requests to complete\n",
                    self.device.name(),
                    self.qp_num(),
                    self.outstanding()
                );
            }
        }
    }
}

impl QueuePair {
    /// Whether draining can finish here: not in atomic context, and not inside a
    /// completion handler of the QP's own CQs, whose flushes would wait for this very
    /// handler. Logs why not.
    fn may_drain(&self) -> bool {
        if self.send_cq.delivering_here() || self.recv_cq.delivering_here() {
            pr_err!(
                "{}: QP {} torn down inside a completion handler of its own CQ, where its drain could never finish\n",
                self.device.name(),
                self.qp_num()
            );
            return false;
        }
        teardown_may_sleep(&self.device, "a QP")
    }

    /// Leaves the QP, its queues and what it uses in place, with a device reference:
    /// the device may still complete into them.
    fn leak(&self) {
        // SAFETY: the device is valid and `Queues` holds a reference, so another may be
        // taken; it is never given back.
        unsafe { sys::tilde_rdma_device_get(self.device.as_raw()) };
        core::mem::forget((self.pd.clone(), self.send_cq.clone(), self.recv_cq.clone()));
    }

    fn destroy(&self) -> c_int {
        match self.cm_id {
            Some(id) => {
                // SAFETY: the id is valid (it outlives its QP), and its QP is this one.
                unsafe { sys::rdma_destroy_qp(id.as_ptr()) };
                0
            }
            // SAFETY: the QP is valid and destroyed once.
            None => unsafe { sys::ib_destroy_qp_user(self.qp.as_ptr(), core::ptr::null_mut()) },
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if !self.may_drain() {
            pr_err!("{}: leaking QP {}\n", self.device.name(), self.qp_num());
            self.leak();
            return;
        }
        self.drain();
        // Drained: no WR of ours is left in the QP.
        let ret = self.destroy();
        if ret != 0 {
            pr_err!(
                "{}: destroying QP {} failed: {}; leaking it\n",
                self.device.name(),
                self.qp_num(),
                ret
            );
            self.leak();
            return;
        }
        self.send_cq.unreserve(self.reserved.0);
        self.recv_cq.unreserve(self.reserved.1);
        // SAFETY: `queues` came from `KBox::leak` in `create`; the QP is gone, and no
        // completion is running (the count is zero).
        drop(unsafe { KBox::from_raw(self.queues.as_ptr()) });
    }
}
