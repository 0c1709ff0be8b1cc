// SPDX-License-Identifier: GPL-2.0
//! The InfiniBand device over the HCA: `rdma_core::driver::Driver` for tilde_mlx4.
//!
//! Follows `drivers/infiniband/hw/mlx4/main.c` for the queries (the SMA answers them
//! through MAD_IFC: NodeInfo, PortInfo, GUIDInfo, P_KeyTable), `cq.c`, `qp.c` and `mr.c`
//! for the objects, which the bring-up core creates through the firmware under the
//! core's mutex (commands sleep; the IB core calls these ops in process context). The
//! data path (post_send, post_recv, poll_cq, req_notify_cq) is `hw_mlx4::fastpath` over
//! the objects' own queue memory and the driver's UAR page, behind one IRQ-safe lock per
//! queue (the IB core lets consumers post to one QP from many threads).
//!
//! What a CQ's completions need of its QPs (their wr_id tables and counters) is found by
//! the CQE's QP number in the CQ's list of QPs, which `create_qp` and `destroy_qp`
//! maintain; a completion EQ's interrupt handler finds the CQ by number in the device's
//! CQ table and calls its handler ([`CqTable`]).
//!
//! The management classes: QP0 and QP1 of each port are special QPs (the MLX transport:
//! the driver writes each packet's LRH, BTH and DETH into the WQE, `build_mlx_header`),
//! and `process_mad` answers the SMPs and PMA MADs through the SMA (MAD_IFC), snooping
//! the subnet manager's Sets for the port events they imply; PORT_CHANGE events of the
//! async EQ become `IB_EVENT_PORT_ACTIVE` and `IB_EVENT_PORT_ERR`.
//!
//! Not yet: SRQs, fast registration, memory windows, multicast attach, resize; those ops
//! answer `EOPNOTSUPP`.

use core::ffi::CStr;

use hw_mlx4::bringup::eq::PortEventKind;
use hw_mlx4::bringup::mcg::McgError;
use hw_mlx4::bringup::objects::{
    CompletionQueue as HwCq, MemoryRegion, MrAccess, NodeInfo, QpConfig, QpPath, QpRetries,
    QpTransport, QueuePair,
};
use hw_mlx4::bringup::probe::{Mlx4Core, ProbeError};
use hw_mlx4::fastpath::cq::{CompletionQueue as FastCq, CqDoorbells};
use hw_mlx4::fastpath::qp::{PostRight, QpCompletions, QpLookup, QueuePairState};
use hw_mlx4::fastpath::send::{MlxWr, QpType as FastQpType, SendQueueCaps};
use hw_mlx4::wire::fw::qp_context;
use hw_mlx4::wire::ud::{GlobalRoute, MlxSeg, UdHeader, PERMISSIVE_LID, UD_HEADER_MAX};
use hw_mlx4::wire::{AddressVector, ArmCommand, Be16, Be32};
use hw_mlx4::wr::{
    Access as FastAccess, Completion as FastCompletion, FastReg, Payload, PostError,
    Remote as FastRemote, SendFlags as FastSendFlags, SendOp as FastSendOp, SendWr as FastSendWr,
    Sge as FastSge, UdAddress, WcFlags,
};
use kernel::alloc::flags::GFP_ATOMIC;
use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::driver::{
    self, Access, AhAttr, AhQuery, Arm, Completions, CoreCaps, Cq, Device, DeviceAttrs, Driver,
    Mad, MadResult, MrKeys, MrPages, MrType, NewCq, NewQp, Pd, PortAttrs, PortEvent, PortImmutable,
    PortSpeed, PortWidth, Qp, QpHandle, QpModify, QpQuery, QpState, QpType, ReceivedRoute, RecvWrs,
    Route, SendFlags, SendOp, SendWrs, MAD_SIZE,
};
use rdma_core::kernel_api;
use rdma_core::kernel_api::atomic::{Atomic, Relaxed};
use rdma_core::sync::{IrqSpinLock, Mutex};
use rdma_core::verbs::{Gid, LinkLayer, Mtu, PhysPortState, PortState};

use crate::datapath::{queues_of, ring_in};
use crate::hca::{Block, Shared, COMP_EQS};
use crate::platform::{KernelDoorbellRecord, KernelPlatform, Uar};
use hw_mlx4::bringup::memory::HostMemory;

/// CQ numbers the table holds: the core's CQ number bitmap's capacity.
pub(crate) const CQ_TABLE_SIZE: usize = hw_mlx4::bringup::objects::MAX_CQS;

/// log2 of a send WQE's size: 128 bytes, room for a control segment, the datagram
/// segment (the larger of UD's and RC's address segments) and [`MAX_SGE`] gather entries.
const SQ_STRIDE: u32 = 7;
/// log2 of a receive WQE's least size: [`MAX_SGE`] scatter entries of 16 bytes (more
/// when the QP asks for more, up to [`MAX_RECV_SGE`]).
const RQ_STRIDE: u32 = 6;
/// Gather entries per send WR.
const MAX_SGE: u32 = 4;
/// Scatter entries per receive WR: ib_ipoib's connected mode without an SRQ asks 16 (a
/// 64 KiB message in pages).
const MAX_RECV_SGE: u32 = 16;
/// Entries a queue may have (the QP's buffer holds both queues: 384 KiB at most).
const MAX_SQ_LOG: u32 = 10;
const MAX_RQ_LOG: u32 = 11;
/// WRs a consumer may ask per queue: the send queue less its stamped headroom.
const MAX_QP_WR: u32 = (1 << MAX_SQ_LOG) - 32;
/// log2 of the largest CQ: 65536 CQEs of 32 bytes fill the largest queue buffer (2 MiB).
const MAX_CQ_LOG: u32 = 16;
/// log2 of a special QP's send WQE: the MLX segment, a header with a GRH, the gather
/// entries and the ICRC's segment.
const SPECIAL_SQ_STRIDE: u32 = 8;
/// P_Keys the driver keeps per port: the whole table the SMA has (4 blocks of 32), read
/// when the device is registered and again when the subnet manager sets it. `query_pkey`
/// answers from it (the IB core reads the table entry by entry on every port event) and
/// the special QPs' headers take their P_Keys from it.
const PKEYS: usize = 128;
/// MAD classes and methods `process_mad` answers (IBA 13.4).
const CLASS_SUBN_LID_ROUTED: u8 = 0x01;
const CLASS_SUBN_DIRECTED_ROUTE: u8 = 0x81;
const CLASS_PERF_MGMT: u8 = 0x04;
const METHOD_GET: u8 = 0x01;
const METHOD_SET: u8 = 0x02;
const METHOD_TRAP_REPRESS: u8 = 0x07;
const ATTR_SM_INFO: u16 = 0x0020;
const ATTR_GUID_INFO: u16 = 0x0014;
const ATTR_PORT_INFO: u16 = 0x0015;
const ATTR_PKEY_TABLE: u16 = 0x0016;

/// Completions converted at a time by `poll_cq` (its stack is the caller's).
const POLL_BATCH: usize = 16;

/// The device's state: the HCA it is over, its UAR page, and what the queries report.
pub(crate) struct Mlx4Ib {
    shared: Arc<Shared>,
    uar: Uar,
    uar_index: u32,
    comp_eqns: [u32; COMP_EQS as usize],
    node: NodeInfo,
    limits: Limits,
    /// Each port's P_Key table (see [`PKEYS`]).
    pkeys: IrqSpinLock<KBox<[[u16; PKEYS]; 2]>>,
    /// Each port's LID and SM LID as last seen, so that a subnet manager's Set(PortInfo)
    /// is told to the IB core's clients only when it changed them (`smp_snoop`).
    lids: [Atomic<u32>; 2],
    /// After a catastrophic error ([`HEALTHY`], [`QUIESCED`], [`LOST`]): first no
    /// doorbell may reach the device, then, once it was reset, the driver hands posted
    /// WRs back flushed itself (`MLX4_DEVICE_STATE_INTERNAL_ERROR`).
    health: Atomic<u32>,
    /// Every QP's posting lock, so that the quiescing waits out posts under way.
    postings: IrqSpinLock<KVec<Arc<IrqSpinLock<Posting>>>>,
}

/// The device answers doorbells.
const HEALTHY: u32 = 0;
/// A catastrophic error was seen: posts and arms are refused (no doorbell reaches a
/// device about to be reset); CQs still complete what the device completed.
const QUIESCED: u32 = 1;
/// The device was reset: it completes nothing more, and `poll_cq` hands back what was
/// posted as flushed.
const LOST: u32 = 2;

/// What the device reports of itself, from QUERY_DEV_CAP and the ports.
#[derive(Clone, Copy)]
struct Limits {
    max_qps: u32,
    max_cqs: u32,
    max_mrs: u32,
    max_pds: u32,
    ports: u8,
    gid_table_len: [u32; 2],
    pkey_table_len: [u16; 2],
    mtu_cap: [u8; 2],
}

/// The CQs completion events are dispatched to, by CQ number; read by the completion
/// EQs' interrupt handlers.
pub(crate) struct CqTable(IrqSpinLock<KVec<Option<Arc<CqShared>>>>);

impl CqTable {
    pub(crate) fn new() -> Result<Self> {
        let mut slots = KVec::with_capacity(CQ_TABLE_SIZE, GFP_KERNEL)?;
        for _ in 0..CQ_TABLE_SIZE {
            slots.push(None, GFP_KERNEL)?;
        }
        Ok(Self(rdma_core::irq_spin_lock!(slots)?))
    }

    /// The CQ numbered `cqn`, if the IB device has it.
    pub(crate) fn get(&self, cqn: u32) -> Option<Arc<CqShared>> {
        let slots = self.0.lock();
        slots.get(cqn as usize).and_then(|slot| slot.clone())
    }

    /// Every CQ of the IB device, taken out of the lock (whose IRQ-safe section must not
    /// run consumers' handlers).
    fn all(&self) -> Result<KVec<Arc<CqShared>>> {
        snapshot(&self.0, |slot| slot.as_ref())
    }

    fn set(&self, cqn: u32, cq: Option<Arc<CqShared>>) {
        if let Some(slot) = self.0.lock().get_mut(cqn as usize) {
            *slot = cq;
        }
    }
}

/// What a CQ's poller, its arming and its completion events share.
pub(crate) struct CqShared {
    cqn: u32,
    /// One lock for the ring and the QP list: a poll takes one lock, and a QP joins or
    /// leaves the list (rarely) under the same.
    inner: IrqSpinLock<CqInner>,
    events: driver::CqEvents,
}

/// A CQ's state under its lock.
struct CqInner {
    fast: FastCq<KernelPlatform>,
    /// The QPs whose work queues complete here.
    qps: KVec<Arc<QpShared>>,
}

impl CqShared {
    /// A completion event the device delivered for this CQ (`mlx4_cq_completion`): the
    /// next arm carries the next sequence number, and the consumer's handler runs.
    pub(crate) fn event(&self) {
        self.inner.lock().fast.event_delivered();
        self.events.completion();
    }
}

/// A CQ of the IB device.
pub(crate) struct IbCq {
    shared: Arc<CqShared>,
    hw: Mutex<Option<HwCq<Block>>>,
}

/// What a QP's posters and its CQs share.
pub(crate) struct QpShared {
    qpn: u32,
    handle: QpHandle,
    state: QueuePairState<KernelPlatform>,
    /// The port its completions report (a special QP's, or the one its INIT named).
    port: Atomic<u32>,
    /// The CQs its send and receive queues complete on.
    send_cqn: u32,
    recv_cqn: u32,
}

/// A QP's posting rights, held together while the QP is posted to, and what a special
/// QP's headers carry from one send to the next.
struct Posting {
    shared: Arc<QpShared>,
    send: PostRight,
    recv: PostRight,
    /// The next PSN of a special QP's packets.
    psn: u32,
    /// The Q_Key and P_Key index its INIT set (the headers use them).
    qkey: u32,
    pkey_index: u16,
}

/// QP0 or QP1 of a port.
#[derive(Clone, Copy)]
struct SpecialQp {
    /// 0 (the SMI's) or 1 (the GSI's): the QP number the IB core and the packets know.
    qp_num: u32,
    port: u8,
}

/// A QP of the IB device.
pub(crate) struct IbQp {
    qpn: u32,
    ud: bool,
    special: Option<SpecialQp>,
    caps: SendQueueCaps,
    /// The sizes `create_qp` reported.
    sizes: driver::QpCaps,
    posting: Arc<IrqSpinLock<Posting>>,
    hw: Mutex<QpHw>,
    send_cq: Arc<CqShared>,
    recv_cq: Arc<CqShared>,
    /// The multicast groups it is attached to, detached at its destruction if its
    /// consumer left any (the device would deliver to a QP number reused later).
    groups: Mutex<KVec<[u8; 16]>>,
}

/// The QP as the firmware has it, and what its transitions carry forward.
struct QpHw {
    qp: Option<QueuePair<Block>>,
    state: QpState,
    port: u8,
    pkey_index: u8,
    qkey: u32,
    /// The remote access the QP grants (`qp_context::PARAMS2_*`), kept from the
    /// transition that set it: each later one's context carries it again.
    remote_access: u32,
}

/// The attributes of [`QpHw`] a transition may change.
#[derive(Clone, Copy)]
struct QpAttrs {
    port: u8,
    pkey_index: u8,
    qkey: u32,
    remote_access: u32,
}

/// A PD: its number.
pub(crate) struct IbPd {
    pdn: u32,
}

/// An MR: the DMA MR, or a fast-registration MR with its page list.
pub(crate) struct IbMr {
    hw: Mutex<Option<MemoryRegion>>,
    /// A fast-registration MR's page list (`mlx4_alloc_priv_pages`): big-endian page
    /// addresses with the present bit, which REG_MR WQEs point the device at.
    page_list: Option<Block>,
    max_pages: u32,
}

/// The most pages one fast registration names (`MLX4_MAX_FAST_REG_PAGES`): its page list
/// fills one page.
const MAX_FAST_REG_PAGES: u32 = 511;
/// An MTT entry's present bit (`MLX4_MTT_FLAG_PRESENT`).
const MTT_PRESENT: u64 = 1;

/// An AH: the address vector UD WQEs carry.
pub(crate) struct IbAh {
    av: AddressVector,
    dlid: u16,
    sl: u8,
    route: Option<Route>,
}

fn command_failed(dev: &Device<Mlx4Ib>, what: &str, error: ProbeError) -> Error {
    // A device reset under the IB device answers nothing (its commands succeed without
    // reaching it, their outboxes stale), and one in its catastrophic error state runs
    // nothing: expected, and said once by the error poll and the reset.
    if dev.is_lost() || error.is_catastrophic() {
        return EIO;
    }
    pr_err!("{}: {} failed: {:?}\n", dev.name(), what, error);
    match error {
        // Out of numbers, table space or memory: the caller may retry with less.
        ProbeError::Exhausted { .. } | ProbeError::Memory { .. } => ENOMEM,
        _ => EIO,
    }
}

/// A multicast attach or detach refused or failed: logged with the group, as an errno
/// (`mlx4_qp_attach_common`'s: a full group or table is `ENOMEM`, an unknown group or
/// member `EINVAL`).
fn multicast_failed(
    dev: &Device<Mlx4Ib>,
    what: &str,
    gid: &[u8; 16],
    qpn: u32,
    error: ProbeError,
) -> Error {
    if error.is_catastrophic() {
        return EIO;
    }
    pr_err!(
        "{}: multicast {} of QP {:#x} to {:?} failed: {:?}\n",
        dev.name(),
        what,
        qpn,
        Ipv6Gid(gid),
        error
    );
    match error {
        ProbeError::Multicast(McgError::GroupFull { .. } | McgError::TableFull) => ENOMEM,
        ProbeError::Multicast(McgError::NoGroup | McgError::NotMember { .. }) => EINVAL,
        _ => EIO,
    }
}

/// A GID printed as an IPv6 address is, eight groups of four hex digits.
struct Ipv6Gid<'a>(&'a [u8; 16]);

impl core::fmt::Debug for Ipv6Gid<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, pair) in self.0.chunks_exact(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            if let [hi, lo] = pair {
                write!(f, "{:04x}", u16::from_be_bytes([*hi, *lo]))?;
            }
        }
        Ok(())
    }
}

fn not_supported() -> Error {
    kernel_api::errno(kernel::bindings::EOPNOTSUPP)
}

impl Mlx4Ib {
    /// The device's state for the HCA `shared`, brought up; `core` is the HCA's core,
    /// locked by the caller. (Out of line: its P_Key tables and the
    /// registration's frame together pass the kernel's frame limit.)
    #[inline(never)]
    pub(crate) fn new(shared: Arc<Shared>, core: &mut Mlx4Core<Block>) -> Result<Self> {
        let info = *core.info().ok_or(EINVAL)?;
        let info = &info;
        let mut edge = shared.edge();
        let node = core
            .query_node_info(&mut edge)
            .map_err(|e| command_failed_bare(&shared, "NodeInfo", e))?;
        let mut comp_eqns = [0; COMP_EQS as usize];
        for (index, eqn) in comp_eqns.iter_mut().enumerate() {
            *eqn = core.comp_eqn(index).ok_or(EINVAL)?;
        }
        let mut limits = Limits {
            max_qps: info
                .layout
                .num_qps
                .min(hw_mlx4::bringup::objects::MAX_QPS as u32),
            max_cqs: CQ_TABLE_SIZE as u32,
            max_mrs: hw_mlx4::bringup::objects::MAX_MPTS as u32,
            max_pds: info.caps.max_pds,
            ports: 0,
            gid_table_len: [0; 2],
            pkey_table_len: [0; 2],
            mtu_cap: [0; 2],
        };
        for port in info.ports.iter().flatten() {
            let index = usize::from(port.port.saturating_sub(1));
            let (Some(gids), Some(pkeys), Some(mtu)) = (
                limits.gid_table_len.get_mut(index),
                limits.pkey_table_len.get_mut(index),
                limits.mtu_cap.get_mut(index),
            ) else {
                continue;
            };
            *gids = port.gid_table_len;
            *pkeys = u16::try_from(port.pkey_table_len).unwrap_or(u16::MAX);
            *mtu = port.ib_mtu_cap;
            limits.ports = limits.ports.max(port.port);
        }
        let mut pkeys = KBox::new([[0u16; PKEYS]; 2], GFP_KERNEL)?;
        for ((port, table), &len) in (1..=limits.ports.min(2))
            .zip(pkeys.iter_mut())
            .zip(limits.pkey_table_len.iter())
        {
            read_pkey_table(core, &mut edge, port, len, table)
                .map_err(|e| command_failed_bare(&shared, "P_KeyTable", e))?;
        }
        // QP0 and QP1 of each port at the numbers from the reserved range's end
        // (`mlx4_init_qp_table`).
        core.conf_special_qps(&mut edge)
            .map_err(|e| command_failed_bare(&shared, "CONF_SPECIAL_QP", e))?;
        let uar = Uar::in_bar(shared.bar2(), info.driver_uar)?;
        Ok(Self {
            uar,
            uar_index: info.driver_uar,
            comp_eqns,
            node,
            limits,
            pkeys: rdma_core::irq_spin_lock!(pkeys)?,
            lids: [Atomic::new(0), Atomic::new(0)],
            health: Atomic::new(HEALTHY),
            postings: rdma_core::irq_spin_lock!(KVec::new())?,
            shared,
        })
    }

    /// The node GUID, for the registration.
    pub(crate) fn node_guid(&self) -> u64 {
        self.node.node_guid
    }

    /// Ports.
    pub(crate) fn ports(&self) -> u32 {
        self.limits.ports.into()
    }

    /// A catastrophic error was seen and the device is about to be reset: from now on
    /// posts and CQ arms are refused, and once this returns none is under way (each
    /// QP's posting lock and each CQ's lock taken once, as `mlx4_ib_handle_catas_error`
    /// takes them), so no doorbell reaches the device being reset.
    pub(crate) fn quiesce(dev: &Device<Mlx4Ib>) {
        dev.health.store(QUIESCED, Relaxed);
        match (snapshot(&dev.postings, |p| Some(p)), dev.shared.cqs().all()) {
            (Ok(postings), Ok(cqs)) => {
                for posting in postings.iter() {
                    drop(posting.lock());
                }
                for cq in cqs.iter() {
                    drop(cq.inner.lock());
                }
            }
            _ => pr_err!(
                "{}: no memory to wait out the posts under way: a doorbell may reach the reset\n",
                dev.name()
            ),
        }
    }

    /// The device was reset under the IB device: posted WRs come back flushed by
    /// `poll_cq`; the consumers hear `IB_EVENT_DEVICE_FATAL`, and every CQ's handler
    /// runs once so that those waiting for completions poll and find theirs.
    pub(crate) fn enter_lost(dev: &Device<Mlx4Ib>) {
        dev.health.store(LOST, Relaxed);
        dev.dispatch_port_event(1, PortEvent::DeviceFatal);
        let Ok(cqs) = dev.shared.cqs().all() else {
            pr_err!(
                "{}: no memory to wake the CQs after the reset: their consumers poll on their own\n",
                dev.name()
            );
            return;
        };
        for cq in cqs.iter() {
            cq.events.completion();
        }
    }

    /// Reset (or about to be): no doorbell may be rung.
    fn is_quiesced(&self) -> bool {
        self.health.load(Relaxed) != HEALTHY
    }

    /// Reset: CQs complete in software.
    fn is_lost(&self) -> bool {
        self.health.load(Relaxed) == LOST
    }

    fn port_index(&self, port: u32) -> Result<usize> {
        if port >= 1 && port <= u32::from(self.limits.ports) {
            Ok(port as usize - 1)
        } else {
            Err(EINVAL)
        }
    }
}

fn command_failed_bare(shared: &Shared, what: &str, error: ProbeError) -> Error {
    if error.is_catastrophic() {
        return EIO;
    }
    pr_err!("{}: {} failed: {:?}\n", shared.name(), what, error);
    EIO
}

/// IB MTU code (1 256 .. 5 4096) as the verbs enum.
fn mtu(code: u8) -> Mtu {
    match code {
        1 => Mtu::Mtu256,
        2 => Mtu::Mtu512,
        3 => Mtu::Mtu1024,
        4 => Mtu::Mtu2048,
        _ => Mtu::Mtu4096,
    }
}

/// The smallest `log` with `1 << log >= n`, at least `min`.
fn log2_at_least(n: u32, min: u32) -> u32 {
    let log = u32::BITS - n.saturating_sub(1).leading_zeros();
    log.max(min)
}

impl Driver for Mlx4Ib {
    type Pd = IbPd;
    type Cq = IbCq;
    type Qp = IbQp;
    type Ah = IbAh;
    type Mr = IbMr;

    fn query_device(dev: &Device<Self>, attrs: &mut DeviceAttrs<'_>) -> Result {
        let l = &dev.limits;
        attrs
            .sys_image_guid(dev.node.sys_image_guid)
            .max_mr_size(u64::MAX)
            .page_size_cap(!0xfff)
            .qp_limits(l.max_qps, MAX_QP_WR, MAX_SGE, MAX_RECV_SGE, MAX_SGE)
            .cq_limits(l.max_cqs, (1 << MAX_CQ_LOG) - 1)
            .object_limits(
                l.max_mrs,
                l.max_pds,
                u32::MAX,
                l.pkey_table_len[0],
                MAX_FAST_REG_PAGES,
            )
            .read_atomic_limits(16, 16, 16 * l.max_qps)
            .mem_mgt_extensions()
            .atomics_within_device();
        Ok(())
    }

    fn query_port(dev: &Device<Self>, port: u32, attrs: &mut PortAttrs<'_>) -> Result {
        let index = dev.port_index(port)?;
        if dev.is_lost() {
            // Reset under the IB device: its ports are down until it is registered again.
            let mtu_cap = dev.limits.mtu_cap.get(index).copied().unwrap_or(4);
            attrs
                .state(PortState::Down, PhysPortState::Disabled)
                .mtu(mtu(mtu_cap), mtu(mtu_cap))
                .tables(
                    dev.limits.gid_table_len.get(index).copied().unwrap_or(0),
                    dev.limits.pkey_table_len.get(index).copied().unwrap_or(0),
                )
                .max_msg_size(1 << 31);
            return Ok(());
        }
        let (info, events) = {
            let mut core = dev.shared.core().lock();
            let info = core.query_port_info(&mut dev.shared.edge(), port as u8);
            (info, take_port_events(&mut core))
        };
        dispatch(dev, &events);
        let info = info.map_err(|e| command_failed(dev, "PortInfo", e))?;
        let state = match info.state {
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            _ => PortState::ActiveDefer,
        };
        let phys = match info.phys_state {
            2 => PhysPortState::Polling,
            3 => PhysPortState::Disabled,
            4 => PhysPortState::PortConfigurationTraining,
            5 => PhysPortState::LinkUp,
            6 => PhysPortState::LinkErrorRecovery,
            7 => PhysPortState::PhyTest,
            _ => PhysPortState::Sleep,
        };
        let width = match info.width_active {
            1 => PortWidth::X1,
            4 => PortWidth::X8,
            8 => PortWidth::X12,
            _ => PortWidth::X4,
        };
        let speed = match info.speed_active {
            1 => PortSpeed::Sdr,
            2 => PortSpeed::Ddr,
            _ => PortSpeed::Qdr,
        };
        let mtu_cap = dev.limits.mtu_cap.get(index).copied().unwrap_or(4);
        // Before the SM set the neighbour MTU, the link runs at the port's cap.
        let active = if info.mtu_active == 0 {
            mtu_cap
        } else {
            info.mtu_active
        };
        attrs
            .state(state, phys)
            .mtu(mtu(mtu_cap), mtu(active))
            .tables(
                dev.limits.gid_table_len.get(index).copied().unwrap_or(0),
                dev.limits.pkey_table_len.get(index).copied().unwrap_or(0),
            )
            .max_msg_size(1 << 31)
            .lid(info.lid, info.lmc)
            .subnet_manager(info.sm_lid, info.sm_sl, info.subnet_timeout)
            .capabilities(info.capability_mask, info.vl_cap)
            .link(width, speed);
        Ok(())
    }

    fn port_immutable(dev: &Device<Self>, port: u32, immutable: &mut PortImmutable<'_>) -> Result {
        let index = dev.port_index(port)?;
        immutable
            .core_caps(CoreCaps::IBA_IB)
            .tables(
                dev.limits.gid_table_len.get(index).copied().unwrap_or(0),
                dev.limits
                    .pkey_table_len
                    .get(index)
                    .copied()
                    .unwrap_or(0)
                    .into(),
            )
            .max_mad_size(MAD_SIZE as u32);
        Ok(())
    }

    fn link_layer(_dev: &Device<Self>, _port: u32) -> LinkLayer {
        LinkLayer::InfiniBand
    }

    fn query_pkey(dev: &Device<Self>, port: u32, index: u16) -> Result<u16> {
        let port_index = dev.port_index(port)?;
        let len = dev
            .limits
            .pkey_table_len
            .get(port_index)
            .copied()
            .unwrap_or(0);
        if index >= len {
            return Err(EINVAL);
        }
        dev.pkeys
            .lock()
            .get(port_index)
            .and_then(|table| table.get(usize::from(index)))
            .copied()
            .ok_or(EINVAL)
    }

    fn query_gid(dev: &Device<Self>, port: u32, index: u32) -> Result<Gid> {
        let port_index = dev.port_index(port)?;
        if index
            >= dev
                .limits
                .gid_table_len
                .get(port_index)
                .copied()
                .unwrap_or(0)
        {
            return Err(EINVAL);
        }
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let prefix = core
            .query_port_info(&mut edge, port as u8)
            .map_err(|e| command_failed(dev, "PortInfo", e))?
            .gid_prefix;
        let guid = core
            .query_guid(&mut edge, port as u8, index)
            .map_err(|e| command_failed(dev, "GUIDInfo", e))?;
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&prefix.to_be_bytes());
        gid[8..].copy_from_slice(&guid.to_be_bytes());
        Ok(Gid(gid))
    }

    fn alloc_pd(dev: &Device<Self>) -> Result<IbPd> {
        let pdn = dev.shared.core().lock().alloc_pd().ok_or(ENOMEM)?;
        Ok(IbPd { pdn })
    }

    fn dealloc_pd(dev: &Device<Self>, pd: &Pd<Self>) {
        dev.shared.core().lock().free_pd(pd.pdn);
    }

    fn get_dma_mr(dev: &Device<Self>, pd: &Pd<Self>, access: Access) -> Result<(IbMr, MrKeys)> {
        let mut rights = MrAccess::LOCAL.0;
        if access.contains(Access::REMOTE_READ) {
            rights |= MrAccess::ALL.0 & hw_mlx4::wire::fw::mpt_entry::PERM_REMOTE_READ;
        }
        if access.contains(Access::REMOTE_WRITE) {
            rights |= MrAccess::ALL.0 & hw_mlx4::wire::fw::mpt_entry::PERM_REMOTE_WRITE;
        }
        if access.contains(Access::REMOTE_ATOMIC) {
            rights |= MrAccess::ALL.0 & hw_mlx4::wire::fw::mpt_entry::PERM_ATOMIC;
        }
        // Everything that can fail before the MR exists: nothing to undo after it.
        let hw = rdma_core::mutex!(None)?;
        let mr = {
            let mut core = dev.shared.core().lock();
            core.create_dma_mr(&mut dev.shared.edge(), pd.pdn, MrAccess(rights))
                .map_err(|e| command_failed(dev, "SW2HW_MPT", e))?
        };
        let key = mr.key;
        *hw.lock() = Some(mr);
        Ok((
            IbMr {
                hw,
                page_list: None,
                max_pages: 0,
            },
            MrKeys {
                lkey: key,
                rkey: key,
            },
        ))
    }

    fn alloc_mr(
        dev: &Device<Self>,
        pd: &Pd<Self>,
        mr_type: MrType,
        max_pages: u32,
    ) -> Result<(IbMr, MrKeys)> {
        if mr_type != MrType::MemReg {
            return Err(not_supported());
        }
        if max_pages == 0 || max_pages > MAX_FAST_REG_PAGES {
            return Err(EINVAL);
        }
        let hw = rdma_core::mutex!(None)?;
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let page_list = edge.alloc(0).ok_or(ENOMEM)?;
        let mr = core
            .create_fast_reg_mr(&mut edge, pd.pdn, max_pages)
            .map_err(|e| command_failed(dev, "SW2HW_MPT (fast registration)", e))?;
        let key = mr.key;
        *hw.lock() = Some(mr);
        Ok((
            IbMr {
                hw,
                page_list: Some(page_list),
                max_pages,
            },
            MrKeys {
                lkey: key,
                rkey: key,
            },
        ))
    }

    fn map_mr_sg(
        _dev: &Device<Self>,
        mr: &driver::Mr<Self>,
        pages: MrPages<'_, Self>,
    ) -> Result<u32> {
        let list = mr.page_list.as_ref().ok_or(EINVAL)?;
        let mut count = 0u32;
        pages.map(|page| {
            if count >= mr.max_pages {
                return Err(ENOMEM);
            }
            let entry = (page.start() | MTT_PRESENT).to_be_bytes();
            list.write(count as usize * 8, &entry).ok_or(EINVAL)?;
            count += 1;
            Ok(())
        })
    }

    fn dereg_mr(dev: &Device<Self>, mr: &driver::Mr<Self>) {
        let Some(hw) = mr.hw.lock().take() else {
            return;
        };
        let mut core = dev.shared.core().lock();
        if let Err(e) = core.destroy_mr(&mut dev.shared.edge(), hw) {
            command_failed(dev, "HW2SW_MPT", e);
        }
    }

    fn create_cq(dev: &Device<Self>, cq: &mut NewCq<'_>) -> Result<IbCq> {
        let requested = cq.requested();
        if requested == 0 || requested >= 1 << MAX_CQ_LOG {
            return Err(EINVAL);
        }
        let log = log2_at_least(requested.saturating_add(1), 1);
        let eqn = dev
            .comp_eqns
            .get(cq.comp_vector() as usize % COMP_EQS as usize)
            .copied()
            .ok_or(EINVAL)?;
        // Everything that can fail apart from the CQ itself comes first, or is undone.
        let slot = rdma_core::mutex!(None)?;
        let hw = {
            let mut core = dev.shared.core().lock();
            core.create_cq(&mut dev.shared.edge(), log, eqn, dev.uar_index)
                .map_err(|e| command_failed(dev, "SW2HW_CQ", e))?
        };
        let events = cq.events().clone();
        let made = fast_cq(&hw, log).and_then(|fast| {
            let shared = CqShared {
                cqn: hw.cqn,
                inner: rdma_core::irq_spin_lock!(CqInner {
                    fast,
                    qps: KVec::new(),
                })?,
                events,
            };
            Ok(Arc::new(shared, GFP_KERNEL)?)
        });
        match made {
            Ok(shared) => {
                dev.shared.cqs().set(hw.cqn, Some(shared.clone()));
                cq.set_entries((1 << log) - 1);
                *slot.lock() = Some(hw);
                Ok(IbCq { shared, hw: slot })
            }
            Err(e) => {
                destroy_hw_cq(dev, hw);
                Err(e)
            }
        }
    }

    fn resize_cq(dev: &Device<Self>, cq: &Cq<Self>, entries: u32) -> Result<u32> {
        if entries == 0 || entries >= 1 << MAX_CQ_LOG {
            return Err(EINVAL);
        }
        let log = log2_at_least(entries.saturating_add(1), 1);
        let mut hw = cq.hw.lock();
        let hw_cq = hw.as_mut().ok_or(EINVAL)?;
        if log <= hw_cq.log_entries {
            // Room enough already (the consumer API refuses to shrink).
            return Ok((1 << hw_cq.log_entries) - 1);
        }
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let old = core
            .resize_cq(&mut edge, hw_cq, log)
            .map_err(|e| command_failed(dev, "MODIFY_CQ (resize)", e))?;
        let buffer = &hw_cq.buffer.as_ref().ok_or(EINVAL)?.block;
        // The CQEs still in the old buffer move to the new one under the CQ's lock, as
        // `mlx4_ib_resize_cq` copies them (pollers stop at the RESIZE CQE meanwhile).
        let moved = ring_in(buffer, 0, log, 5).and_then(|ring| {
            cq.shared.inner.lock().fast.resize(ring).map_err(|_| {
                pr_err!(
                    "{}: CQ {:#x}: no RESIZE CQE after MODIFY_CQ\n",
                    dev.name(),
                    cq.shared.cqn
                );
                EIO
            })
        });
        match moved {
            Ok(old_ring) => {
                drop(old_ring);
                core.free_resized_cq(&mut edge, old);
                Ok((1 << log) - 1)
            }
            // The device writes the new buffer, the poller reads the old: the CQ is
            // broken; its old memory stays (leaked: the poller still reads it).
            Err(e) => {
                core::mem::forget(old);
                Err(e)
            }
        }
    }

    fn destroy_cq(dev: &Device<Self>, cq: &Cq<Self>) {
        dev.shared.cqs().set(cq.shared.cqn, None);
        if let Some(hw) = cq.hw.lock().take() {
            destroy_hw_cq(dev, hw);
        }
    }

    fn poll_cq(dev: &Device<Self>, cq: &Cq<Self>, out: &mut Completions<'_>) {
        let shared = &cq.shared;
        let mut inner = shared.inner.lock();
        let CqInner { fast, qps } = &mut *inner;
        let qps: &KVec<Arc<QpShared>> = qps;
        if dev.is_lost() {
            return poll_flushed(shared, qps, out);
        }
        let table = QpTable(qps);
        let mut batch = [FastCompletion::EMPTY; POLL_BATCH];
        while out.room() > 0 {
            let want = out.room().min(POLL_BATCH);
            let Some(slots) = batch.get_mut(..want) else {
                break;
            };
            let polled = match fast.poll(&table, slots) {
                Ok(polled) => polled,
                Err(error) => {
                    // A CQE naming a QP not on this CQ, or a WQE never posted: the
                    // device broke the queue protocol. The ones before it count.
                    pr_err!("CQ {:#x}: poll stopped: {:?}\n", shared.cqn, error.kind);
                    error.polled
                }
            };
            for c in slots.iter().take(polled) {
                let Some(qp) = qps.iter().find(|q| q.qpn == c.qpn) else {
                    continue;
                };
                let mut wc = driver::Completion::new(qp.handle, c.wr_id, c.status, c.opcode)
                    .bytes(c.byte_len)
                    .source_qp(c.src_qp)
                    .port(qp.port.load(Relaxed))
                    .received_route(ReceivedRoute {
                        slid: c.slid,
                        sl: c.sl,
                        dlid_path_bits: c.dlid_path_bits,
                        pkey_index: c.pkey_index,
                    });
                if c.flags.contains(WcFlags::GRH) {
                    wc = wc.with_grh(driver::Grh::Ib);
                }
                if c.flags.contains(WcFlags::WITH_IMM) {
                    wc = wc.with_imm(c.imm);
                }
                if c.flags.contains(WcFlags::WITH_INVALIDATE) {
                    wc = wc.with_invalidate(c.imm);
                }
                if !out.push(&wc) {
                    break;
                }
            }
            if polled < want {
                break;
            }
        }
    }

    fn req_notify_cq(dev: &Device<Self>, cq: &Cq<Self>, arm: Arm) -> Result<bool> {
        let command = if arm.solicited_only() {
            ArmCommand::Solicited
        } else {
            ArmCommand::Next
        };
        let mut inner = cq.shared.inner.lock();
        // Under the CQ's lock, which the quiescing takes after setting the state.
        if dev.is_quiesced() {
            // No doorbell to a device being reset; what a lost device's consumer will
            // find is the WRs still to be flushed, which it is told of if it asked.
            return Ok(arm.report_missed()
                && dev.is_lost()
                && flushes_waiting(cq.shared.cqn, &inner.qps));
        }
        inner.fast.arm(&dev.uar, command);
        // Completions that came before the arm raise no event: mlx4 reports none
        // missed (its `req_notify_cq` returns 0), and the consumer polls after arming.
        Ok(false)
    }

    fn create_qp(dev: &Device<Self>, qp: &mut NewQp<'_, Self>) -> Result<IbQp> {
        let special = |qp_num| -> Result<Option<SpecialQp>> {
            let port = u8::try_from(qp.port()).map_err(|_| EINVAL)?;
            dev.port_index(port.into())?;
            Ok(Some(SpecialQp { qp_num, port }))
        };
        let (ud, special) = match qp.qp_type() {
            QpType::Rc => (false, None),
            QpType::Ud => (true, None),
            QpType::Smi => (true, special(0)?),
            QpType::Gsi => (true, special(1)?),
            _ => return Err(not_supported()),
        };
        let sq_stride = if special.is_some() {
            SPECIAL_SQ_STRIDE
        } else {
            SQ_STRIDE
        };
        if qp.has_srq() || qp.create_flags() != 0 {
            return Err(not_supported());
        }
        let (Some(send_cq), Some(recv_cq)) = (qp.send_cq(), qp.recv_cq()) else {
            return Err(EINVAL);
        };
        let asked = qp.caps();
        if asked.max_send_sge > MAX_SGE
            || asked.max_recv_sge > MAX_RECV_SGE
            || asked.max_inline_data > 0
            || asked.max_send_wr > MAX_QP_WR
            || asked.max_recv_wr > (1 << MAX_RQ_LOG)
        {
            pr_warn!(
                "{}: QP refused: {} send WRs of {} SGEs, {} receive WRs of {} SGEs, {} inline bytes (at most {} WRs, {} receive WRs, {} send and {} receive SGEs, no inline data)\n",
                dev.name(),
                asked.max_send_wr,
                asked.max_send_sge,
                asked.max_recv_wr,
                asked.max_recv_sge,
                asked.max_inline_data,
                MAX_QP_WR,
                1u32 << MAX_RQ_LOG,
                MAX_SGE,
                MAX_RECV_SGE
            );
            return Err(EINVAL);
        }
        // The send queue keeps 2 KiB of stamped WQEs ahead of the producer.
        let spare = (2048 >> sq_stride) + 1;
        let log_sq = log2_at_least(asked.max_send_wr.max(1) + spare, 6);
        let log_rq = log2_at_least(asked.max_recv_wr.max(1), 4);
        // Each scatter entry is 16 bytes: the stride holds as many as asked, rounded up
        // to a power of two (mlx4_ib's `rq.wqe_shift`), four at least.
        let log_rq_stride = log2_at_least(asked.max_recv_sge.max(1), 0)
            .saturating_add(4)
            .max(RQ_STRIDE);
        let pdn = qp.pd().pdn;
        let transport = match (special, ud) {
            (Some(_), _) => QpTransport::Mlx,
            (None, true) => QpTransport::Ud,
            (None, false) => QpTransport::Rc,
        };
        let config = QpConfig {
            transport,
            log_sq_entries: log_sq,
            log_sq_stride: sq_stride,
            log_rq_entries: log_rq,
            log_rq_stride,
            pd: pdn,
            send_cqn: send_cq.shared.cqn,
            recv_cqn: recv_cq.shared.cqn,
        };
        let hw = {
            let mut core = dev.shared.core().lock();
            let mut edge = dev.shared.edge();
            match special {
                Some(sqp) => core.create_special_qp(&mut edge, sqp.port, sqp.qp_num == 1, config),
                None => core.create_qp(&mut edge, config),
            }
            .map_err(|e| command_failed(dev, "create QP", e))?
        };
        let caps = SendQueueCaps {
            max_sge: MAX_SGE,
            max_inline: 0,
            signal_all: qp.signals_all(),
        };
        let port = special.map_or(1, |sqp| sqp.port);
        let posting = match new_posting(&hw, qp.handle(), transport, caps, port) {
            Ok(posting) => posting,
            Err(e) => {
                destroy_hw_qp(dev, hw);
                return Err(e);
            }
        };
        let shared = posting.shared.clone();
        if let Err(e) = attach(&send_cq.shared, &shared).and_then(|()| {
            if Arc::ptr_eq(&send_cq.shared, &recv_cq.shared) {
                Ok(())
            } else {
                attach(&recv_cq.shared, &shared)
            }
        }) {
            detach(&send_cq.shared, shared.qpn);
            detach(&recv_cq.shared, shared.qpn);
            destroy_hw_qp(dev, hw);
            return Err(e);
        }
        let qpn = hw.qpn;
        let max_send_wr = (1u32 << log_sq) - spare;
        // The IB core and the packets know the special QPs as 0 and 1.
        qp.set_num(special.map_or(qpn, |sqp| sqp.qp_num));
        let sizes = driver::QpCaps {
            max_send_wr,
            max_recv_wr: 1 << log_rq,
            max_send_sge: MAX_SGE,
            max_recv_sge: 1 << (log_rq_stride - 4),
            max_inline_data: 0,
        };
        qp.set_caps(sizes);
        let made = (|| -> Result<IbQp> {
            Ok(IbQp {
                qpn,
                ud,
                special,
                caps,
                sizes,
                posting: Arc::new(rdma_core::irq_spin_lock!(posting)?, GFP_KERNEL)?,
                hw: rdma_core::mutex!(QpHw {
                    qp: None,
                    state: QpState::Reset,
                    port,
                    pkey_index: 0,
                    qkey: 0,
                    remote_access: 0,
                })?,
                send_cq: send_cq.shared.clone(),
                recv_cq: recv_cq.shared.clone(),
                groups: rdma_core::mutex!(KVec::new())?,
            })
        })();
        let made = made.and_then(|made| {
            dev.postings.lock().push(made.posting.clone(), GFP_ATOMIC)?;
            Ok(made)
        });
        match made {
            Ok(made) => {
                made.hw.lock().qp = Some(hw);
                Ok(made)
            }
            Err(e) => {
                detach(&send_cq.shared, qpn);
                detach(&recv_cq.shared, qpn);
                destroy_hw_qp(dev, hw);
                Err(e)
            }
        }
    }

    fn modify_qp(dev: &Device<Self>, qp: &Qp<Self>, change: &QpModify<'_>) -> Result {
        let mut hw = qp.hw.lock();
        let current = hw.state;
        let next = change.transition(current)?;
        // The attributes the transition carries, kept only once the device took it.
        let mut attrs = QpAttrs {
            port: hw.port,
            pkey_index: hw.pkey_index,
            qkey: hw.qkey,
            remote_access: hw.remote_access,
        };
        if let Some(port) = change.port() {
            dev.port_index(port)?;
            attrs.port = u8::try_from(port).map_err(|_| EINVAL)?;
        }
        if let Some(index) = change.pkey_index() {
            attrs.pkey_index = u8::try_from(index).map_err(|_| EINVAL)?;
        }
        if let Some(qkey) = change.qkey() {
            attrs.qkey = qkey;
        }
        if let Some(access) = change.access() {
            let mut bits = 0;
            if access.contains(Access::REMOTE_READ) {
                bits |= qp_context::PARAMS2_RRE;
            }
            if access.contains(Access::REMOTE_WRITE) {
                bits |= qp_context::PARAMS2_RWE;
            }
            if access.contains(Access::REMOTE_ATOMIC) {
                bits |= qp_context::PARAMS2_RAE;
            }
            attrs.remote_access = bits;
        }
        // Attributes alone: an RTS UD QP's Q_Key (RTS2RTS); nothing else yet.
        let next = match next {
            Some(next) => next,
            None if current == QpState::Rts && change.qkey().is_some() && qp.ud => QpState::Rts,
            None => return Err(not_supported()),
        };
        let uar = dev.uar_index;
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let QpAttrs {
            port,
            pkey_index,
            qkey,
            remote_access,
        } = attrs;
        let Some(hw_qp) = hw.qp.as_mut() else {
            return Err(EINVAL);
        };
        let (dlid, _sl) = change.path_lid().unwrap_or((0, 0));
        let path = QpPath {
            port,
            pkey_index,
            dlid,
            remote_qpn: change.dest_qpn().unwrap_or(0),
            rq_psn: change.rq_psn().unwrap_or(0),
            qkey,
            remote_access,
        };
        let done = match (current, next) {
            (QpState::Reset, QpState::Init) => core.qp_to_init(&mut edge, hw_qp, &path, uar),
            (QpState::Init, QpState::Init) => core.qp_init_to_init(&mut edge, hw_qp, &path, uar),
            (QpState::Init, QpState::Rtr) => core.qp_to_rtr(&mut edge, hw_qp, &path, uar),
            (QpState::Rtr, QpState::Rts) => {
                let retries = QpRetries {
                    retry_count: change.retry_count().unwrap_or(7),
                    rnr_retry: change.rnr_retry().unwrap_or(7),
                };
                let sq_psn = change.sq_psn().unwrap_or(0);
                core.qp_to_rts_with_retries(&mut edge, hw_qp, port, sq_psn, retries, uar)
            }
            (QpState::Rts, QpState::Rts) if qp.ud => {
                core.qp_set_qkey(&mut edge, hw_qp, port, qkey, uar)
            }
            (QpState::Reset, QpState::Reset) => Ok(()),
            (_, QpState::Err) => core.qp_to_error(&mut edge, hw_qp),
            (_, QpState::Reset) => {
                let reset = core.qp_to_reset(&mut edge, hw_qp);
                drop(core);
                reset.map_err(|e| command_failed(dev, "2RST_QP", e))?;
                hw.state = QpState::Reset;
                return qp.restart_queues(dev, hw.qp.as_ref());
            }
            _ => return Err(not_supported()),
        };
        done.map_err(|e| command_failed(dev, "MODIFY_QP", e))?;
        hw.state = next;
        hw.port = port;
        hw.pkey_index = pkey_index;
        hw.qkey = qkey;
        hw.remote_access = remote_access;
        // What the special QPs' headers and every QP's completions carry.
        let mut posting = qp.posting.lock();
        posting.qkey = qkey;
        posting.pkey_index = pkey_index.into();
        posting.shared.port.store(port.into(), Relaxed);
        Ok(())
    }

    fn destroy_qp(dev: &Device<Self>, qp: &Qp<Self>) {
        {
            let mut postings = dev.postings.lock();
            if let Some(at) = postings.iter().position(|p| Arc::ptr_eq(p, &qp.posting)) {
                let _ = kernel_api::remove(&mut postings, at);
            }
        }
        let groups = core::mem::replace(&mut *qp.groups.lock(), KVec::new());
        if !groups.is_empty() {
            let mut core = dev.shared.core().lock();
            let mut edge = dev.shared.edge();
            for gid in groups.iter() {
                if let Err(e) = core.detach_multicast(&mut edge, gid, qp.qpn) {
                    multicast_failed(dev, "detach", gid, qp.qpn, e);
                }
            }
        }
        detach(&qp.send_cq, qp.qpn);
        detach(&qp.recv_cq, qp.qpn);
        if let Some(hw) = qp.hw.lock().qp.take() {
            destroy_hw_qp(dev, hw);
        }
    }

    fn post_send(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut SendWrs<'_, Self>) -> Result {
        if let Some(sqp) = qp.special {
            return post_special(dev, qp, sqp, wrs);
        }
        let mut posting = qp.posting.lock();
        // Under the posting lock, which the quiescing takes after setting the state.
        if dev.is_quiesced() {
            return Err(EIO);
        }
        let Posting { shared, send, .. } = &mut *posting;
        let mut sq = shared.state.send_queue(send, &dev.uar).ok_or(EINVAL)?;
        for wr in wrs {
            let gather = GatherList::of(wr.sges()?, qp.caps.max_sge)?;
            let mut flags = FastSendFlags::empty();
            if wr.signaled() {
                flags |= FastSendFlags::SIGNALED;
            }
            if wr.flags().contains(SendFlags::SOLICITED) {
                flags |= FastSendFlags::SOLICITED;
            }
            if wr.flags().contains(SendFlags::FENCE) {
                flags |= FastSendFlags::FENCE;
            }
            let mut ud = None;
            let op = match wr.op()? {
                SendOp::Send => FastSendOp::Send,
                SendOp::SendWithImm(imm) => FastSendOp::SendWithImm(imm),
                SendOp::SendWithInv(rkey) => FastSendOp::SendWithInvalidate(rkey),
                SendOp::Write { remote, imm } => {
                    let remote = FastRemote {
                        addr: remote.addr(),
                        rkey: remote.rkey(),
                    };
                    match imm {
                        Some(imm) => FastSendOp::RdmaWriteWithImm(remote, imm),
                        None => FastSendOp::RdmaWrite(remote),
                    }
                }
                SendOp::Read { remote } => FastSendOp::RdmaRead(FastRemote {
                    addr: remote.addr(),
                    rkey: remote.rkey(),
                }),
                SendOp::LocalInv { key } => FastSendOp::LocalInvalidate { rkey: key },
                SendOp::CompareSwap {
                    remote,
                    compare,
                    swap,
                } => FastSendOp::AtomicCmpSwap {
                    remote: FastRemote {
                        addr: remote.addr(),
                        rkey: remote.rkey(),
                    },
                    compare,
                    swap,
                },
                SendOp::FetchAdd { remote, add } => FastSendOp::AtomicFetchAdd {
                    remote: FastRemote {
                        addr: remote.addr(),
                        rkey: remote.rkey(),
                    },
                    add,
                },
                SendOp::RegMr { mr, key, access } => {
                    let page_list = mr.page_list.as_ref().ok_or(EINVAL)?;
                    let mut rights = FastAccess::empty();
                    for (from, to) in [
                        (Access::LOCAL_WRITE, FastAccess::LOCAL_WRITE),
                        (Access::REMOTE_WRITE, FastAccess::REMOTE_WRITE),
                        (Access::REMOTE_READ, FastAccess::REMOTE_READ),
                        (Access::REMOTE_ATOMIC, FastAccess::REMOTE_ATOMIC),
                    ] {
                        if access.contains(from) {
                            rights |= to;
                        }
                    }
                    FastSendOp::FastReg(FastReg {
                        key,
                        page_list: page_list.bus_address(),
                        iova: mr.iova(),
                        length: mr.length(),
                        page_shift: mr.page_size().trailing_zeros() as u8,
                        access: rights,
                    })
                }
                SendOp::Datagram {
                    ah,
                    remote_qpn,
                    remote_qkey,
                    imm,
                    ..
                } => {
                    ud = Some(UdAddress {
                        av: ah.av,
                        remote_qpn,
                        remote_qkey,
                        vlan: 0,
                        mac: [0; 6],
                    });
                    match imm {
                        Some(imm) => FastSendOp::SendWithImm(imm),
                        None => FastSendOp::Send,
                    }
                }
            };
            let mut fast = FastSendWr::new(wr.id(), op, Payload::Gather(gather.as_slice()), flags);
            fast.ud = ud.as_ref();
            sq.post(core::slice::from_ref(&fast))
                .map_err(|failure| post_errno(failure.error))?;
        }
        Ok(())
    }

    fn post_recv(dev: &Device<Self>, qp: &Qp<Self>, wrs: &mut RecvWrs<'_>) -> Result {
        let mut posting = qp.posting.lock();
        if dev.is_quiesced() {
            return Err(EIO);
        }
        let Posting { shared, recv, .. } = &mut *posting;
        let mut rq = shared.state.recv_queue(recv).ok_or(EINVAL)?;
        for wr in wrs {
            // The ring refuses more entries than its stride holds.
            let scatter = ScatterList::of(wr.sges()?, MAX_RECV_SGE)?;
            rq.post(&[hw_mlx4::wr::RecvWr {
                wr_id: wr.id(),
                sges: scatter.as_slice(),
            }])
            .map_err(|failure| post_errno(failure.error))?;
        }
        Ok(())
    }

    fn create_ah(dev: &Device<Self>, attr: &AhAttr<'_>) -> Result<IbAh> {
        dev.port_index(attr.port())?;
        let dlid = attr.dlid().ok_or(EINVAL)?;
        let port = attr.port();
        let mut av = AddressVector {
            port_pd: Be32::new(port << AddressVector::PORT_SHIFT),
            dlid: Be16::new(dlid),
            sl_tclass_flowlabel: Be32::new(u32::from(attr.sl()) << 28),
            ..AddressVector::default()
        };
        if let Some(route) = attr.route() {
            av.g_slid = AddressVector::GRH_PRESENT;
            av.gid_index = route.sgid_index;
            av.hop_limit = route.hop_limit;
            av.sl_tclass_flowlabel = Be32::new(
                u32::from(attr.sl()) << 28
                    | u32::from(route.traffic_class) << 20
                    | (route.flow_label & 0xf_ffff),
            );
            av.dgid = route.dgid.0;
        }
        Ok(IbAh {
            av,
            dlid,
            sl: attr.sl(),
            route: attr.route(),
        })
    }

    fn process_mad(
        dev: &Device<Self>,
        port: u32,
        mad: &Mad<'_>,
        reply: &mut [u8; MAD_SIZE],
    ) -> MadResult {
        process_mad(dev, port, mad, reply)
    }

    fn modify_port(dev: &Device<Self>, port: u32, set: u32, clear: u32) -> Result {
        dev.port_index(port)?;
        // One read-modify-write at a time, under the core's mutex (`cap_mask_mutex`).
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let info = core
            .query_port_info(&mut edge, port as u8)
            .map_err(|e| command_failed(dev, "PortInfo", e))?;
        let mask = (info.capability_mask | set) & !clear;
        core.set_port_capabilities(&mut edge, port as u8, mask)
            .map_err(|e| command_failed(dev, "SET_PORT", e))
    }

    fn query_qp(dev: &Device<Self>, qp: &Qp<Self>) -> Result<QpQuery> {
        let hw = qp.hw.lock();
        // The device's context, but for a QP in RESET, of which it holds none.
        let context = match hw.qp.as_ref() {
            Some(hw_qp) if hw.state != QpState::Reset => {
                let mut core = dev.shared.core().lock();
                Some(
                    core.query_qp(&mut dev.shared.edge(), hw_qp)
                        .map_err(|e| command_failed(dev, "QUERY_QP", e))?,
                )
            }
            _ => None,
        };
        let state = match context.map(|c| c.state) {
            None | Some(0) => QpState::Reset,
            Some(1) => QpState::Init,
            Some(2) => QpState::Rtr,
            Some(3) => QpState::Rts,
            Some(4) => QpState::Sqe,
            Some(5) => QpState::Sqd,
            Some(6) => QpState::Err,
            Some(other) => {
                pr_err!(
                    "{}: QP {:#x}: QUERY_QP reports state {}, which the PRM does not have\n",
                    dev.name(),
                    qp.qpn,
                    other
                );
                return Err(EIO);
            }
        };
        let mut access = 0;
        for (bit, flag) in [
            (qp_context::PARAMS2_RRE, Access::REMOTE_READ),
            (qp_context::PARAMS2_RWE, Access::REMOTE_WRITE),
            (qp_context::PARAMS2_RAE, Access::REMOTE_ATOMIC),
        ] {
            if hw.remote_access & bit != 0 {
                access |= flag.bits();
            }
        }
        let rc = !qp.ud;
        Ok(QpQuery {
            state,
            port: hw.port,
            pkey_index: hw.pkey_index.into(),
            qkey: hw.qkey,
            access: Access::from_bits(access),
            dest_qpn: context.filter(|_| rc).map_or(0, |c| c.remote_qpn),
            dlid: context.filter(|_| rc).map_or(0, |c| c.dlid),
            sq_psn: context.filter(|_| rc).map_or(0, |c| c.sq_psn),
            rq_psn: context.filter(|_| rc).map_or(0, |c| c.rq_psn),
            path_mtu: mtu(context.map_or(5, |c| c.mtu)),
            caps: qp.sizes,
            signal_all: qp.caps.signal_all,
        })
    }

    fn attach_mcast(dev: &Device<Self>, qp: &Qp<Self>, gid: &Gid, _lid: u16) -> Result {
        if !qp.ud || qp.special.is_some() {
            return Err(EINVAL);
        }
        let mut groups = qp.groups.lock();
        if groups.contains(&gid.0) {
            return Ok(());
        }
        // Room first, so that the attach is never made without being recorded.
        groups.reserve(1, GFP_KERNEL)?;
        {
            let mut core = dev.shared.core().lock();
            core.attach_multicast(&mut dev.shared.edge(), &gid.0, qp.qpn, false)
                .map_err(|e| multicast_failed(dev, "attach", &gid.0, qp.qpn, e))?;
        }
        groups.push(gid.0, GFP_KERNEL)?;
        Ok(())
    }

    fn detach_mcast(dev: &Device<Self>, qp: &Qp<Self>, gid: &Gid, _lid: u16) -> Result {
        let mut groups = qp.groups.lock();
        let Some(at) = groups.iter().position(|g| *g == gid.0) else {
            pr_err!(
                "{}: QP {:#x} is not attached to {:?}\n",
                dev.name(),
                qp.qpn,
                Ipv6Gid(&gid.0)
            );
            return Err(EINVAL);
        };
        {
            let mut core = dev.shared.core().lock();
            core.detach_multicast(&mut dev.shared.edge(), &gid.0, qp.qpn)
                .map_err(|e| multicast_failed(dev, "detach", &gid.0, qp.qpn, e))?;
        }
        let _ = kernel_api::remove(&mut groups, at);
        Ok(())
    }

    fn query_ah(_dev: &Device<Self>, ah: &driver::Ah<Self>) -> Result<AhQuery> {
        Ok(AhQuery {
            port: ah.av.port().into(),
            dlid: ah.dlid,
            sl: ah.sl,
            src_path_bits: 0,
            route: ah.route,
        })
    }
}

impl IbQp {
    /// After a QP went back to RESET the device forgot its queues' positions: the
    /// fast path starts over on the same memory (`mlx4_ib_modify_qp` to RESET resets the
    /// heads and tails and stamps the send queue again).
    fn restart_queues(&self, dev: &Device<Mlx4Ib>, hw: Option<&QueuePair<Block>>) -> Result {
        let hw = hw.ok_or(EINVAL)?;
        let (handle, port) = {
            let posting = self.posting.lock();
            (posting.shared.handle, posting.shared.port.load(Relaxed))
        };
        let port = u8::try_from(port).unwrap_or(1);
        let posting = new_posting(hw, handle, self.transport(), self.caps, port)?;
        let shared = posting.shared.clone();
        detach(&self.send_cq, self.qpn);
        detach(&self.recv_cq, self.qpn);
        *self.posting.lock() = posting;
        let attached = attach(&self.send_cq, &shared).and_then(|()| {
            if Arc::ptr_eq(&self.send_cq, &self.recv_cq) {
                Ok(())
            } else {
                attach(&self.recv_cq, &shared)
            }
        });
        attached.inspect_err(|_| {
            pr_err!(
                "{}: QP {:#x}: its CQs cannot take it back after RESET\n",
                dev.name(),
                self.qpn
            )
        })
    }
}

/// The posting rights and shared state of a QP the core created.
fn new_posting(
    hw: &QueuePair<Block>,
    handle: QpHandle,
    transport: QpTransport,
    caps: SendQueueCaps,
    port: u8,
) -> Result<Posting> {
    let qp_type = match transport {
        QpTransport::Rc => FastQpType::Rc,
        QpTransport::Ud => FastQpType::Ud,
        QpTransport::Mlx => FastQpType::Mlx,
    };
    let (sq, rq) = queues_of(hw, caps, qp_type)?;
    let (state, send, recv) = QueuePairState::new_shared(hw.qpn, sq, rq);
    let shared = Arc::new(
        QpShared {
            qpn: hw.qpn,
            handle,
            state,
            port: Atomic::new(port.into()),
            send_cqn: hw.config.send_cqn,
            recv_cqn: hw.config.recv_cqn,
        },
        GFP_KERNEL,
    )?;
    Ok(Posting {
        shared,
        send,
        recv,
        psn: 0,
        qkey: 0,
        pkey_index: 0,
    })
}

impl IbQp {
    fn transport(&self) -> QpTransport {
        match (self.special, self.ud) {
            (Some(_), _) => QpTransport::Mlx,
            (None, true) => QpTransport::Ud,
            (None, false) => QpTransport::Rc,
        }
    }
}

/// The fast path's CQ over a CQ the core created.
fn fast_cq(hw: &HwCq<Block>, log: u32) -> Result<FastCq<KernelPlatform>> {
    let buffer = &hw.buffer.as_ref().ok_or(EINVAL)?.block;
    let doorbell = &hw.doorbell.as_ref().ok_or(EINVAL)?.block;
    FastCq::new(
        hw.cqn,
        ring_in(buffer, 0, log, 5)?,
        CqDoorbells {
            set_ci: KernelDoorbellRecord::in_block(doorbell, 0)?,
            arm: KernelDoorbellRecord::in_block(doorbell, 4)?,
        },
    )
    .map_err(|e| {
        pr_err!("CQ {:#x} refused by the fast path: {:?}\n", hw.cqn, e);
        EINVAL
    })
}

fn destroy_hw_cq(dev: &Device<Mlx4Ib>, hw: HwCq<Block>) {
    let mut core = dev.shared.core().lock();
    if let Err(e) = core.destroy_cq(&mut dev.shared.edge(), hw) {
        command_failed(dev, "HW2SW_CQ", e);
    }
}

fn destroy_hw_qp(dev: &Device<Mlx4Ib>, hw: QueuePair<Block>) {
    let mut core = dev.shared.core().lock();
    if let Err(e) = core.destroy_qp(&mut dev.shared.edge(), hw) {
        command_failed(dev, "destroy QP", e);
    }
}

/// The entries `each` picks of a list under an IRQ-safe lock, copied out (room made
/// outside the lock, which runs with interrupts off).
fn snapshot<T, U: Clone>(
    lock: &IrqSpinLock<KVec<T>>,
    each: impl Fn(&T) -> Option<&U>,
) -> Result<KVec<U>> {
    let mut all = KVec::new();
    loop {
        let count = lock.lock().iter().filter_map(&each).count();
        all.reserve(count, GFP_KERNEL)?;
        let list = lock.lock();
        if list.iter().filter_map(&each).count() > all.capacity() {
            // More came meanwhile: room for them too.
            continue;
        }
        for entry in list.iter().filter_map(&each) {
            all.push(entry.clone(), GFP_ATOMIC)?;
        }
        return Ok(all);
    }
}

/// A lost device's poll (`mlx4_ib_poll_sw_comp`): the WRs still outstanding on the
/// queues that complete on this CQ, each handed back once as flushed, sends first.
fn poll_flushed(cq: &CqShared, qps: &[Arc<QpShared>], out: &mut Completions<'_>) {
    for qp in qps {
        let completions = qp.state.completions();
        let next = |send: bool| {
            if send && qp.send_cqn == cq.cqn {
                completions.flush_send()
            } else if !send && qp.recv_cqn == cq.cqn {
                completions.flush_recv()
            } else {
                None
            }
        };
        for send in [true, false] {
            while out.room() > 0 {
                let Some(c) = next(send) else {
                    break;
                };
                let wc = driver::Completion::new(qp.handle, c.wr_id, c.status, c.opcode)
                    .port(qp.port.load(Relaxed));
                if !out.push(&wc) {
                    return;
                }
            }
        }
    }
}

/// Whether a lost device's CQ `cqn` has WRs still to hand back.
fn flushes_waiting(cqn: u32, qps: &[Arc<QpShared>]) -> bool {
    qps.iter().any(|qp| {
        let (sends, recvs) = qp.state.completions().outstanding();
        (qp.send_cqn == cqn && sends != 0) || (qp.recv_cqn == cqn && recvs != 0)
    })
}

/// Puts `qp` on `cq`'s list (under its IRQ-safe lock: an atomic allocation).
fn attach(cq: &CqShared, qp: &Arc<QpShared>) -> Result {
    cq.inner.lock().qps.push(qp.clone(), GFP_ATOMIC)?;
    Ok(())
}

/// Takes QP `qpn` off `cq`'s list.
fn detach(cq: &CqShared, qpn: u32) {
    let mut inner = cq.inner.lock();
    let qps = &mut inner.qps;
    let mut index = 0;
    while index < qps.len() {
        if qps.get(index).is_some_and(|qp| qp.qpn == qpn) {
            drop(kernel_api::remove(qps, index));
        } else {
            index += 1;
        }
    }
}

fn post_errno(error: PostError) -> Error {
    match error {
        PostError::QueueFull => ENOMEM,
        _ => EINVAL,
    }
}

/// Reads the first `len` entries of `port`'s P_Key table, a block of 32 at a time, into
/// `table`.
fn read_pkey_table(
    core: &mut Mlx4Core<Block>,
    edge: &mut crate::hca::Edge<'_>,
    port: u8,
    len: u16,
    table: &mut [u16; PKEYS],
) -> core::result::Result<(), ProbeError> {
    let blocks = usize::from(len).div_ceil(32);
    for (block, chunk) in table.chunks_mut(32).enumerate().take(blocks) {
        let pkeys = core.query_pkey_block(edge, port, block as u32)?;
        chunk.copy_from_slice(&pkeys);
    }
    Ok(())
}

/// Port events the async EQ delivered while commands ran, taken from the core so they
/// are dispatched after its mutex is released (the IB core's clients query the port).
fn take_port_events(core: &mut Mlx4Core<Block>) -> [Option<(u32, PortEvent)>; 4] {
    let mut events = [None; 4];
    for slot in events.iter_mut() {
        let Some(event) = core.take_port_event() else {
            break;
        };
        let kind = match event.kind {
            PortEventKind::Active => PortEvent::Active,
            PortEventKind::Down => PortEvent::Error,
        };
        *slot = Some((event.port.into(), kind));
    }
    events
}

fn dispatch(dev: &Device<Mlx4Ib>, events: &[Option<(u32, PortEvent)>]) {
    for &(port, event) in events.iter().flatten() {
        pr_info!("{}: port {}: {:?}\n", dev.name(), port, event);
        dev.dispatch_port_event(port, event);
    }
}

/// `mlx4_ib_process_mad` for an InfiniBand port: SMPs (but SMInfo, the SM's own) and
/// PMA Gets and Sets go to the SMA through MAD_IFC; the subnet manager's successful Sets
/// are snooped for the events they mean (`smp_snoop`); everything else is the MAD
/// layer's agents'.
fn process_mad(
    dev: &Device<Mlx4Ib>,
    port: u32,
    mad: &Mad<'_>,
    reply: &mut [u8; MAD_SIZE],
) -> MadResult {
    let bytes = mad.bytes();
    let (class, method) = (bytes[1], bytes[3]);
    let attr = u16::from_be_bytes([bytes[0x10], bytes[0x11]]);
    let smp = class == CLASS_SUBN_LID_ROUTED || class == CLASS_SUBN_DIRECTED_ROUTE;
    let handled = if smp {
        matches!(method, METHOD_GET | METHOD_SET | METHOD_TRAP_REPRESS) && attr != ATTR_SM_INFO
    } else {
        class == CLASS_PERF_MGMT && matches!(method, METHOD_GET | METHOD_SET)
    };
    if !handled {
        return MadResult::NotHandled;
    }
    let (Ok(port8), Ok(index)) = (u8::try_from(port), dev.port_index(port)) else {
        return MadResult::Failure;
    };
    let (answered, events) = {
        let mut core = dev.shared.core().lock();
        let mut edge = dev.shared.edge();
        let answered = core.mad_ifc(&mut edge, port8, bytes, reply);
        if answered.is_ok() && smp && method == METHOD_SET && attr == ATTR_PKEY_TABLE {
            let mut table = [0u16; PKEYS];
            let len = dev.limits.pkey_table_len.get(index).copied().unwrap_or(0);
            if read_pkey_table(&mut core, &mut edge, port8, len, &mut table).is_ok() {
                if let Some(slot) = dev.pkeys.lock().get_mut(index) {
                    *slot = table;
                }
            }
        }
        (answered, take_port_events(&mut core))
    };
    if let Err(e) = answered {
        command_failed(dev, "MAD_IFC", e);
        return MadResult::Failure;
    }
    let status = u16::from_be_bytes([reply[4], reply[5]]);
    if smp && method == METHOD_SET && status & 0x7fff == 0 {
        let mut snooped = [None; 2];
        match attr {
            ATTR_PORT_INFO => {
                // The LID and SM LID the port has now (the reply's PortInfo), against
                // those last seen: only a change is an event, as `smp_snoop` has it.
                let lid = u32::from(u16::from_be_bytes([reply[0x40 + 16], reply[0x40 + 17]]));
                let sm_lid = u32::from(u16::from_be_bytes([reply[0x40 + 18], reply[0x40 + 19]]));
                if let Some(seen) = dev.lids.get(index) {
                    let before = seen.xchg(lid | sm_lid << 16, Relaxed);
                    if before & 0xffff != lid {
                        snooped[0] = Some((port, PortEvent::LidChange));
                    } else if before >> 16 != sm_lid {
                        snooped[0] = Some((port, PortEvent::SmChange));
                    }
                }
                // PortInfo:ClientReregister (byte 51 of the attribute, bit 7).
                if bytes[0x40 + 51] & 0x80 != 0 {
                    snooped[1] = Some((port, PortEvent::ClientReregister));
                }
            }
            ATTR_PKEY_TABLE => snooped[0] = Some((port, PortEvent::PkeyChange)),
            ATTR_GUID_INFO => snooped[0] = Some((port, PortEvent::GidChange)),
            _ => {}
        }
        dispatch(dev, &events);
        dispatch(dev, &snooped);
    } else {
        dispatch(dev, &events);
    }
    if class == CLASS_SUBN_DIRECTED_ROUTE {
        // The direction bit of a directed-route response.
        reply[4] |= 0x80;
    }
    if method == METHOD_TRAP_REPRESS {
        return MadResult::Consumed;
    }
    MadResult::Reply
}

/// `post_send` on QP0 or QP1: each WR is a MAD in a UD SEND whose headers the driver
/// writes (`build_mlx_header`).
fn post_special(
    dev: &Device<Mlx4Ib>,
    qp: &IbQp,
    sqp: SpecialQp,
    wrs: &mut SendWrs<'_, Mlx4Ib>,
) -> Result {
    let port_index = usize::from(sqp.port.saturating_sub(1));
    let mut posting = qp.posting.lock();
    if dev.is_quiesced() {
        return Err(EIO);
    }
    let Posting {
        shared,
        send,
        psn,
        qkey,
        pkey_index,
        ..
    } = &mut *posting;
    let mut sq = shared.state.send_queue(send, &dev.uar).ok_or(EINVAL)?;
    for wr in wrs {
        let SendOp::Datagram {
            ah,
            remote_qpn,
            remote_qkey,
            pkey_index: wr_pkey_index,
            imm: None,
        } = wr.op()?
        else {
            return Err(EINVAL);
        };
        let gather = GatherList::of(wr.sges()?, qp.caps.max_sge)?;
        let payload_len = gather.bytes();
        // QP0 sends with its own P_Key index; QP1 with the WR's.
        let index = if sqp.qp_num == 0 {
            *pkey_index
        } else {
            wr_pkey_index
        };
        let pkey = dev
            .pkeys
            .lock()
            .get(port_index)
            .and_then(|table| table.get(usize::from(index)))
            .copied()
            .ok_or(EINVAL)?;
        let permissive = ah.dlid == PERMISSIVE_LID;
        let grh = ah.route.map(|route| GlobalRoute {
            traffic_class: route.traffic_class,
            flow_label: route.flow_label,
            hop_limit: route.hop_limit,
            sgid: route.sgid.map_or([0; 16], |gid| gid.0),
            dgid: route.dgid.0,
        });
        let header = UdHeader {
            vl: if sqp.qp_num == 0 { 15 } else { 0 },
            sl: ah.sl,
            dlid: ah.dlid,
            slid: if permissive { PERMISSIVE_LID } else { 0 },
            grh,
            solicited: wr.flags().contains(SendFlags::SOLICITED),
            pkey,
            dest_qp: remote_qpn,
            psn: *psn & 0x00ff_ffff,
            qkey: if remote_qkey & 0x8000_0000 != 0 {
                *qkey
            } else {
                remote_qkey
            },
            src_qp: sqp.qp_num,
            payload_len,
        };
        let mut packed = [0u8; UD_HEADER_MAX];
        let len = header.pack(&mut packed);
        let mut flags = u32::from(ah.sl & 0xf) << MlxSeg::SL_SHIFT;
        if sqp.qp_num == 0 {
            flags |= MlxSeg::VL15;
        }
        if permissive {
            flags |= MlxSeg::SLR;
        }
        sq.post_mlx(&MlxWr {
            wr_id: wr.id(),
            signaled: wr.signaled(),
            header: packed.get(..len).ok_or(EINVAL)?,
            flags,
            rlid: ah.dlid,
            gather: gather.as_slice(),
        })
        .map_err(post_errno)?;
        *psn = psn.wrapping_add(1);
    }
    Ok(())
}

/// A send WR's gather list.
type GatherList = SgeList<{ MAX_SGE as usize }>;
/// A receive WR's scatter list.
type ScatterList = SgeList<{ MAX_RECV_SGE as usize }>;

/// A WR's gather or scatter list in the fast path's form (on the stack: posting
/// allocates nothing).
struct SgeList<const N: usize> {
    entries: [FastSge; N],
    len: usize,
}

impl<const N: usize> SgeList<N> {
    /// `sges`, at most `max` of them (`EINVAL` for more).
    fn of(sges: &[driver::Sge], max: u32) -> Result<Self> {
        let mut list = Self {
            entries: [FastSge {
                addr: 0,
                length: 0,
                lkey: 0,
            }; N],
            len: sges.len(),
        };
        if sges.len() > max as usize || sges.len() > list.entries.len() {
            return Err(EINVAL);
        }
        for (slot, sge) in list.entries.iter_mut().zip(sges) {
            *slot = FastSge {
                addr: sge.addr(),
                length: sge.length(),
                lkey: sge.lkey(),
            };
        }
        Ok(list)
    }

    fn as_slice(&self) -> &[FastSge] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// The bytes the list names.
    fn bytes(&self) -> u32 {
        self.as_slice()
            .iter()
            .fold(0u32, |sum, sge| sum.saturating_add(sge.length))
    }
}

/// A CQ's QPs, as the fast path's poll looks them up.
struct QpTable<'a>(&'a [Arc<QpShared>]);

impl<'a> QpLookup<'a, KernelPlatform> for QpTable<'a> {
    fn lookup(&self, qpn: u32) -> Option<QpCompletions<'a, KernelPlatform>> {
        self.0
            .iter()
            .find(|qp| qp.qpn == qpn)
            .map(|qp| qp.state.completions())
    }
}

/// The name the device registers under.
pub(crate) const NAME: &CStr = c"tilde_mlx4_%d";
