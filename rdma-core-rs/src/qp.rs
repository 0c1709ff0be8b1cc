// SPDX-License-Identifier: GPL-2.0
//! Queue pairs: creation, typed state transitions, posting, and drain before destroy.
//!
//! Known hole (README, "Open ends"): the lifetimes keep every buffer, slot, MR and AH a WR
//! points at alive until the QP is dropped, and the drop drains. `mem::forget` on a QP
//! (or an MR after REG_MR) skips that drop, and nothing here stops it yet; closing it
//! needs a scoped API or QPs that own their in-flight resources. The SAFETY comments
//! below assume the QP is dropped.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::{from_err_ptr, to_result};
use kernel::prelude::*;
use kernel::str::CStrExt;
use kernel::sync::atomic::{Acquire, Atomic, Relaxed, Release};
use kernel::time::{delay::fsleep, Delta};

use crate::ah::AddressHandle;
use crate::cq::{CompletionQueue, CompletionSlot, PollContext};
use crate::device::Device;
use crate::dma::DmaBuffer;
use crate::mr::MemoryRegion;
use crate::pd::ProtectionDomain;
use crate::sys;
use crate::verbs::{Gid, Mtu};

/// The sizes a QP is created with (`struct ib_qp_cap`).
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    /// Send WRs outstanding at once.
    pub max_send_wr: u32,
    /// Receive WRs outstanding at once.
    pub max_recv_wr: u32,
    /// Gather entries per send WR.
    pub max_send_sge: u32,
    /// Scatter entries per receive WR.
    pub max_recv_sge: u32,
    /// Bytes of inline data per send WR.
    pub max_inline_data: u32,
}

/// RESET → INIT.
#[derive(Clone, Copy, Debug)]
pub struct InitAttr {
    /// The port the QP sends and receives on.
    pub port: u32,
    /// Index of the partition key in the port's P_Key table.
    pub pkey_index: u16,
    /// Remote access the QP grants (`IB_ACCESS_REMOTE_*`).
    pub remote_access: RemoteAccess,
}

/// Remote access rights a QP grants.
#[derive(Clone, Copy, Debug, Default)]
pub struct RemoteAccess {
    /// RDMA READ (`IB_ACCESS_REMOTE_READ`).
    pub read: bool,
    /// RDMA WRITE (`IB_ACCESS_REMOTE_WRITE`).
    pub write: bool,
    /// Atomics (`IB_ACCESS_REMOTE_ATOMIC`).
    pub atomic: bool,
}

impl RemoteAccess {
    /// The `ib_access_flags`: local write always, and the remote rights granted.
    fn flags(self) -> u32 {
        let mut flags = sys::ib_access_flags_IB_ACCESS_LOCAL_WRITE;
        for (granted, flag) in [
            (self.read, sys::ib_access_flags_IB_ACCESS_REMOTE_READ),
            (self.write, sys::ib_access_flags_IB_ACCESS_REMOTE_WRITE),
            (self.atomic, sys::ib_access_flags_IB_ACCESS_REMOTE_ATOMIC),
        ] {
            if granted {
                flags |= flag;
            }
        }
        flags
    }
}

/// INIT → RTR: where the peer is and how to receive from it. On RoCE the path is a GRH
/// (source GID index, destination GID) and the peer's MAC: for kernel callers the IB core
/// does not resolve it (`_ib_modify_qp`: "Kernel users have to provide already resolved
/// rdma_ah_attr's"); RDMA CM does, and tests take it from a link-local GID.
#[derive(Clone, Copy, Debug)]
pub struct RtrAttr {
    /// The port of the path.
    pub port: u32,
    /// The path MTU; at most the port's active MTU.
    pub path_mtu: Mtu,
    /// The peer QP's number.
    pub dest_qp_num: u32,
    /// The first PSN expected from the peer (its `sq_psn`).
    pub rq_psn: u32,
    /// RDMA READs and atomics the peer may have outstanding here.
    pub max_dest_rd_atomic: u8,
    /// The RNR NAK timer code this QP sends when no receive is posted.
    pub min_rnr_timer: u8,
    /// The local GID table entry the path starts from.
    pub sgid_index: u8,
    /// The peer's GID.
    pub dgid: Gid,
    /// The GRH hop limit.
    pub hop_limit: u8,
    /// The peer's Ethernet address.
    pub dmac: [u8; 6],
}

/// RTR → RTS: how to send.
#[derive(Clone, Copy, Debug)]
pub struct RtsAttr {
    /// The first PSN this QP sends (the peer's `rq_psn`).
    pub sq_psn: u32,
    /// The ACK timeout code: 4.096 µs × 2^timeout.
    pub timeout: u8,
    /// Transport retries before a retry-exceeded error.
    pub retry_cnt: u8,
    /// RNR retries; 7 retries forever.
    pub rnr_retry: u8,
    /// RDMA READs and atomics this QP may have outstanding.
    pub max_rd_atomic: u8,
}

/// A send operation.
#[derive(Clone, Copy, Debug)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data (host order; sent big-endian).
    SendWithImm(u32),
    /// RDMA WRITE to the peer's region `rkey` at `remote_addr`.
    RdmaWrite {
        /// Address in the peer's region.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
    },
    /// RDMA READ from the peer's region `rkey` at `remote_addr` into the local buffer.
    RdmaRead {
        /// Address in the peer's region.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
    },
}

/// An 8-byte atomic on a peer's memory. The operands and the memory are in the CPU's byte
/// order, as the kernel's verbs define them (`IB_ATOMIC_HCA`).
#[derive(Clone, Copy, Debug)]
pub enum AtomicOp {
    /// Writes `swap` if the memory holds `compare`.
    CompareAndSwap {
        /// Address in the peer's region, 8-byte aligned.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
        /// The value expected.
        compare: u64,
        /// The value written if it matches.
        swap: u64,
    },
    /// Adds `add` to the memory.
    FetchAndAdd {
        /// Address in the peer's region, 8-byte aligned.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
        /// The addend.
        add: u64,
    },
}

/// What a QP borrows for `'a`, invariantly (the `fn` type): `'a` cannot shrink to a
/// scope shorter than what the QP's WRs point at.
type Borrows<'a> = (
    &'a CompletionQueue<'a>,
    &'a CompletionSlot,
    fn(&'a ()) -> &'a (),
);

/// Where a UD SEND goes: the address handle and the QP behind it.
#[derive(Clone, Copy)]
pub struct UdDest<'a> {
    /// The path to the peer's port.
    pub ah: &'a AddressHandle<'a>,
    /// The peer QP's number.
    pub remote_qpn: u32,
    /// The Q_Key the peer QP accepts.
    pub remote_qkey: u32,
}

/// A queue pair (`ib_create_qp`), RC or UD. `'a` is how long everything it points at lives:
/// its PD and CQs, and every buffer and completion slot a WR posted to it names. Dropping
/// it drains both queues (`ib_drain_qp`), so no WR is left pointing anywhere, and
/// destroys it.
pub struct QueuePair<'a> {
    qp: NonNull<sys::ib_qp>,
    device: &'a Device,
    lkey: u32,
    qp_type: sys::ib_qp_type,
    /// Send-queue WRs posted and not yet completed; the QP's `qp_context` points here so
    /// completion slots can count down. UD QPs drain by it (see `Drop`).
    sends: KBox<Atomic<u32>>,
    /// Whether the send CQ is polled by its owner (else it delivers by itself).
    send_cq_direct: bool,
    _borrows: PhantomData<Borrows<'a>>,
    /// In RESET: nothing can be posted, so there is nothing to drain.
    in_reset: core::cell::Cell<bool>,
}

impl<'a> QueuePair<'a> {
    /// Creates an RC QP in RESET.
    pub fn new_rc(
        pd: &'a ProtectionDomain<'_>,
        send_cq: &'a CompletionQueue<'_>,
        recv_cq: &'a CompletionQueue<'_>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(pd, send_cq, recv_cq, caps, sys::ib_qp_type_IB_QPT_RC)
    }

    /// Creates a UD QP in RESET; bring it up with [`QueuePair::modify_ud_to_rts`].
    pub fn new_ud(
        pd: &'a ProtectionDomain<'_>,
        send_cq: &'a CompletionQueue<'_>,
        recv_cq: &'a CompletionQueue<'_>,
        caps: &QpCaps,
    ) -> Result<Self> {
        Self::create(pd, send_cq, recv_cq, caps, sys::ib_qp_type_IB_QPT_UD)
    }

    fn create(
        pd: &'a ProtectionDomain<'_>,
        send_cq: &'a CompletionQueue<'_>,
        recv_cq: &'a CompletionQueue<'_>,
        caps: &QpCaps,
        qp_type: sys::ib_qp_type,
    ) -> Result<Self> {
        let device = pd.device();
        if !core::ptr::eq(send_cq.device(), device) || !core::ptr::eq(recv_cq.device(), device) {
            return Err(EINVAL);
        }
        let sends = KBox::new(Atomic::new(0u32), GFP_KERNEL)?;
        let mut init = sys::ib_qp_init_attr {
            send_cq: send_cq.as_raw(),
            recv_cq: recv_cq.as_raw(),
            cap: sys::ib_qp_cap {
                // One more of each for the drain WR (`ib_drain_qp`: "ensure there is room
                // in the CQ and SQ").
                max_send_wr: caps.max_send_wr.checked_add(1).ok_or(EINVAL)?,
                max_recv_wr: caps.max_recv_wr.checked_add(1).ok_or(EINVAL)?,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
                ..Default::default()
            },
            sq_sig_type: sys::ib_sig_type_IB_SIGNAL_REQ_WR,
            qp_type,
            qp_context: core::ptr::from_ref::<Atomic<u32>>(&sends).cast_mut().cast(),
            ..Default::default()
        };
        // SAFETY: the PD and CQs are valid for 'a; `init` is a valid attribute block the
        // call only reads (and updates with the actual caps); the caller name is static.
        let qp = from_err_ptr(unsafe {
            sys::ib_create_qp_kernel(pd.as_raw(), &mut init, c"tilde_rdma".as_char_ptr())
        })?;
        let qp = NonNull::new(qp).ok_or(ENOMEM)?;
        Ok(Self {
            qp,
            device: pd.device(),
            lkey: pd.local_dma_lkey(),
            qp_type,
            sends,
            send_cq_direct: send_cq.context() == PollContext::Direct,
            _borrows: PhantomData,
            in_reset: core::cell::Cell::new(true),
        })
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

    /// Posts a send-queue WR with its slot, counted as outstanding before the post (its
    /// completion may come before the post returns) and uncounted if the post fails.
    fn post_send_wr(&self, slot: &CompletionSlot, wr: &sys::ib_send_wr) -> Result {
        slot.claim(true)?;
        self.sends.add(1u32, Relaxed);
        // SAFETY: the QP is valid; the WR (and whatever it points to) lives across the
        // call, and the buffers, regions, handles and slot it names are borrowed for 'a,
        // beyond the QP's drain.
        let posted = to_result(unsafe {
            sys::tilde_rdma_post_send(self.qp.as_ptr(), wr, core::ptr::null_mut())
        });
        if posted.is_err() {
            self.sends.fetch_sub(1u32, Relaxed);
            slot.unclaim();
        }
        posted
    }

    /// The `ib_qp`, for the raw bindings (benchmarks).
    pub fn as_raw(&self) -> *mut sys::ib_qp {
        self.qp.as_ptr()
    }

    /// The QP number the peer addresses.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is valid (type invariant); `qp_num` is set at creation.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    fn modify(&mut self, attr: &mut sys::ib_qp_attr, mask: u32) -> Result {
        // SAFETY: the QP is valid; `attr` is a valid attribute block for `mask`.
        let result = to_result(unsafe { sys::ib_modify_qp(self.qp.as_ptr(), attr, mask as i32) });
        if result.is_ok() && mask & sys::ib_qp_attr_mask_IB_QP_STATE != 0 {
            let reset = attr.qp_state == sys::ib_qp_state_IB_QPS_RESET;
            self.in_reset.set(reset);
            if reset {
                // RESET discards posted WRs without completions.
                self.sends.store(0, Release);
            }
        }
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
    pub fn modify_to_init(&mut self, init: &InitAttr) -> Result {
        let access = init.remote_access.flags();
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
    pub fn modify_to_rtr(&mut self, rtr: &RtrAttr) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RTR,
            path_mtu: rtr.path_mtu.to_raw(),
            dest_qp_num: rtr.dest_qp_num,
            rq_psn: rtr.rq_psn,
            max_dest_rd_atomic: rtr.max_dest_rd_atomic,
            min_rnr_timer: rtr.min_rnr_timer,
            ..Default::default()
        };
        let ah = &mut attr.ah_attr;
        ah.type_ = sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_ROCE;
        ah.port_num = rtr.port;
        ah.ah_flags = sys::ib_ah_flags_IB_AH_GRH as u8;
        ah.grh.dgid.raw = rtr.dgid.0;
        ah.grh.sgid_index = rtr.sgid_index;
        ah.grh.hop_limit = rtr.hop_limit;
        ah.__bindgen_anon_1.roce.dmac = rtr.dmac;
        let mask = sys::ib_qp_attr_mask_IB_QP_STATE
            | sys::ib_qp_attr_mask_IB_QP_AV
            | sys::ib_qp_attr_mask_IB_QP_PATH_MTU
            | sys::ib_qp_attr_mask_IB_QP_DEST_QPN
            | sys::ib_qp_attr_mask_IB_QP_RQ_PSN
            | sys::ib_qp_attr_mask_IB_QP_MAX_DEST_RD_ATOMIC
            | sys::ib_qp_attr_mask_IB_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask)
    }

    /// RESET → INIT → RTR → RTS for a UD QP: it receives datagrams that carry `qkey`.
    pub fn modify_ud_to_rts(&mut self, port: u32, pkey_index: u16, qkey: u32) -> Result {
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

    /// Posts a signaled UD SEND of `len` bytes of `buffer` at `offset` to `dest`.
    pub fn post_ud_send(
        &self,
        slot: &'a CompletionSlot,
        dest: &UdDest<'a>,
        buffer: &'a DmaBuffer<'_>,
        offset: usize,
        len: usize,
    ) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_UD)?;
        if !core::ptr::eq(dest.ah.device(), self.device) {
            return Err(EINVAL);
        }
        let mut sge = self.sge(buffer, offset, len)?;
        let wr = sys::ib_ud_wr {
            wr: signaled_wr(slot, sys::ib_wr_opcode_IB_WR_SEND, Some(&mut sge)),
            ah: dest.ah.as_raw(),
            remote_qpn: dest.remote_qpn,
            remote_qkey: dest.remote_qkey,
            ..Default::default()
        };
        self.post_send_wr(slot, &wr.wr)
    }

    /// Any state → RESET: the QP forgets its queues and its peer, and can be brought up
    /// again (INIT, RTR, RTS), e.g. after an error.
    pub fn modify_to_reset(&mut self) -> Result {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_RESET,
            ..Default::default()
        };
        self.modify(&mut attr, sys::ib_qp_attr_mask_IB_QP_STATE)
    }

    /// RTR → RTS.
    pub fn modify_to_rts(&mut self, rts: &RtsAttr) -> Result {
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

    fn sge(&self, buffer: &DmaBuffer<'_>, offset: usize, len: usize) -> Result<sys::ib_sge> {
        // A DMA address means nothing to another device.
        if !core::ptr::eq(buffer.device(), self.device) {
            return Err(EINVAL);
        }
        let addr = buffer.dma_addr(offset, len).ok_or(EINVAL)?;
        Ok(sys::ib_sge {
            addr,
            length: u32::try_from(len).map_err(|_| EINVAL)?,
            lkey: self.lkey,
        })
    }

    /// Posts a receive of up to `len` bytes into `buffer` at `offset`; its completion
    /// goes to `slot`.
    pub fn post_recv(
        &self,
        slot: &'a CompletionSlot,
        buffer: &'a DmaBuffer<'_>,
        offset: usize,
        len: usize,
    ) -> Result {
        let mut sge = self.sge(buffer, offset, len)?;
        let wr = sys::ib_recv_wr {
            next: core::ptr::null_mut(),
            __bindgen_anon_1: sys::ib_recv_wr__bindgen_ty_1 {
                wr_cqe: slot.as_cqe(),
            },
            sg_list: &mut sge,
            num_sge: 1,
        };
        slot.claim(false)?;
        // SAFETY: the QP is valid; the WR and its SGE live across the call (the driver
        // copies them); the buffer and slot they name are borrowed for 'a, beyond the
        // QP's drain.
        let posted = to_result(unsafe {
            sys::tilde_rdma_post_recv(self.qp.as_ptr(), &wr, core::ptr::null_mut())
        });
        if posted.is_err() {
            slot.unclaim();
        }
        posted
    }

    /// Posts a signaled send (SEND, or RDMA WRITE from / READ into) of `len` bytes of
    /// `buffer` at `offset`; its completion goes to `slot`.
    pub fn post_send(
        &self,
        slot: &'a CompletionSlot,
        op: SendOp,
        buffer: &'a DmaBuffer<'_>,
        offset: usize,
        len: usize,
    ) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_RC)?;
        let mut sge = self.sge(buffer, offset, len)?;
        let (opcode, imm, remote) = match op {
            SendOp::Send => (sys::ib_wr_opcode_IB_WR_SEND, 0, None),
            SendOp::SendWithImm(imm) => (sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM, imm.to_be(), None),
            SendOp::RdmaWrite { remote_addr, rkey } => (
                sys::ib_wr_opcode_IB_WR_RDMA_WRITE,
                0,
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
        let wr = sys::ib_rdma_wr {
            wr: sys::ib_send_wr {
                ex: sys::ib_send_wr__bindgen_ty_2 { imm_data: imm },
                ..signaled_wr(slot, opcode, Some(&mut sge))
            },
            remote_addr,
            rkey,
        };
        self.post_send_wr(slot, &wr.wr)
    }

    /// Posts a signaled 8-byte atomic on the peer's region `rkey` at `remote_addr`
    /// (8-byte aligned); the original value lands in 8 bytes of `buffer` at `offset`.
    pub fn post_atomic(
        &self,
        slot: &'a CompletionSlot,
        op: AtomicOp,
        buffer: &'a DmaBuffer<'_>,
        offset: usize,
    ) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_RC)?;
        let mut sge = self.sge(buffer, offset, 8)?;
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
            return Err(EINVAL);
        }
        let wr = sys::ib_atomic_wr {
            wr: signaled_wr(slot, opcode, Some(&mut sge)),
            remote_addr,
            compare_add,
            swap,
            rkey,
            ..Default::default()
        };
        self.post_send_wr(slot, &wr.wr)
    }

    /// Posts a fast registration making `mr` valid for the peer's `access`, under a new
    /// key ([`MemoryRegion::rkey`] gives it once this returns).
    pub fn post_reg_mr(
        &self,
        slot: &'a CompletionSlot,
        mr: &'a MemoryRegion<'_>,
        access: RemoteAccess,
    ) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_RC)?;
        let rights = access.flags();
        // A new key for each registration: the rkey of an earlier one must stop working.
        // SAFETY: the MR is valid (borrowed for 'a); the key lives in the `ib_mr`, which
        // only this QP's REG_MR and the MR's own accessors touch.
        unsafe { sys::tilde_rdma_bump_mr_key(mr.as_raw()) };
        let wr = sys::ib_reg_wr {
            wr: signaled_wr(slot, sys::ib_wr_opcode_IB_WR_REG_MR, None),
            mr: mr.as_raw(),
            key: mr.rkey(),
            access: rights as i32,
        };
        self.post_send_wr(slot, &wr.wr)
    }

    /// Posts a local invalidation of `rkey`: after it completes, the peer's access with
    /// that key fails.
    pub fn post_local_inv(&self, slot: &'a CompletionSlot, rkey: u32) -> Result {
        self.require(sys::ib_qp_type_IB_QPT_RC)?;
        let wr = sys::ib_send_wr {
            ex: sys::ib_send_wr__bindgen_ty_2 {
                invalidate_rkey: rkey,
            },
            ..signaled_wr(slot, sys::ib_wr_opcode_IB_WR_LOCAL_INV, None)
        };
        self.post_send_wr(slot, &wr)
    }
}

/// The header every tilde send-queue WR has: completion to `slot`, `opcode`, signaled,
/// and at most one gather entry.
fn signaled_wr(
    slot: &CompletionSlot,
    opcode: sys::ib_wr_opcode,
    sge: Option<&mut sys::ib_sge>,
) -> sys::ib_send_wr {
    let (sg_list, num_sge) = match sge {
        Some(sge) => (core::ptr::from_mut(sge), 1),
        None => (core::ptr::null_mut(), 0),
    };
    sys::ib_send_wr {
        __bindgen_anon_1: sys::ib_send_wr__bindgen_ty_1 {
            wr_cqe: slot.as_cqe(),
        },
        sg_list,
        num_sge,
        opcode,
        send_flags: sys::ib_send_flags_IB_SEND_SIGNALED,
        ..Default::default()
    }
}

impl QueuePair<'_> {
    /// Drains a UD QP, which `ib_drain_qp` cannot do (it drains the SQ with an RDMA WRITE):
    /// to ERR, which flushes both queues; the RQ drained by the IB core; then the send
    /// CQ polled until every counted send has completed (IPoIB's way). Gives up after
    /// five seconds with a dmesg line rather than hang.
    fn drain_ud(&mut self) {
        let mut attr = sys::ib_qp_attr {
            qp_state: sys::ib_qp_state_IB_QPS_ERR,
            ..Default::default()
        };
        if self
            .modify(&mut attr, sys::ib_qp_attr_mask_IB_QP_STATE)
            .is_err()
        {
            return;
        }
        // SAFETY: the QP is valid and in ERR; the RQ drain posts one receive and waits.
        unsafe { sys::ib_drain_rq(self.qp.as_ptr()) };
        // Like the IB core's own drain, wait for as long as it takes: destroying the QP
        // with sends in flight would let their completions land in freed memory.
        let mut waited: u32 = 0;
        while self.sends.load(Acquire) != 0 {
            if self.send_cq_direct {
                // SAFETY: the QP is valid, and so is its send CQ (borrowed for 'a), which
                // is polled by its owner: here.
                unsafe { sys::ib_process_cq_direct((*self.qp.as_ptr()).send_cq, -1) };
            }
            fsleep(Delta::from_millis(1));
            waited = waited.wrapping_add(1);
            if waited % 5000 == 0 {
                pr_warn!(
                    "{}: QP {}: still waiting for {} sends to complete\n",
                    self.device.name(),
                    self.qp_num(),
                    self.sends.load(Acquire)
                );
            }
        }
    }
}

impl Drop for QueuePair<'_> {
    fn drop(&mut self) {
        // Draining completes (into their slots, still alive for 'a) every WR still
        // posted, so nothing the device could touch remains. A QP in RESET has none, and
        // cannot be drained (RESET to ERR is not a transition).
        if self.in_reset.get() {
            // Nothing posted.
        } else if self.qp_type == sys::ib_qp_type_IB_QPT_UD {
            self.drain_ud();
        } else {
            // SAFETY: the QP is valid; the generic drain suits connected QPs.
            unsafe { sys::ib_drain_qp(self.qp.as_ptr()) };
        }
        // SAFETY: the QP is valid, drained, and destroyed once.
        let ret = unsafe { sys::ib_destroy_qp_user(self.qp.as_ptr(), core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!("{}: destroying QP failed: {}\n", self.device.name(), ret);
        }
    }
}
