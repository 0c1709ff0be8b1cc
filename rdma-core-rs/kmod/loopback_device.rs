// SPDX-License-Identifier: GPL-2.0
//! `tilde_loopback.ko`: a software RoCE device whose wire is memory.
//!
//! Every QP of the device reaches every other QP of the same device, and nothing else:
//! what one sends, another receives, by a copy done at post time. It is written on
//! `rdma_core::driver` (the trait that becomes `ib_device_ops`), so it is the driver side
//! of tilde's IB core running on every kernel tilde targets, where the ConnectX-3 driver
//! cannot run (no hardware). The port takes its GIDs from the network device the
//! `netdev` parameter names (a `dummy` device serves), so RoCE addressing works as over
//! rxe; it offers no MADs, so no IB CM (and no RDMA CM connections).
//!
//! What it does: RC and UD QPs; SEND (with immediate data or invalidation), RDMA WRITE
//! (with immediate data), RDMA READ, both atomics; fast registration (REG_MR, LOCAL_INV)
//! over page lists; the local DMA key for kernel virtual addresses (DMA addresses of a
//! device without a DMA device are those); RNR waits (a SEND finding no receive waits for
//! one; with no retries it fails); remote access, length and protection errors with the
//! statuses IB gives and both QPs of a connection going to error; flushes in error;
//! resizable CQs with notification. Limits: no SRQ, no user verbs, RNR retry counts of
//! 1-6 wait as "infinite" does (there is no timer), one port.
//!
//! Everything mutable is behind one device lock (interrupts off: CQs are polled in
//! softirq context too). Completion handlers are called after it is released.

use core::cell::UnsafeCell;
use core::ptr::{null, null_mut, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use kernel::ffi::{c_int, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use rdma_core::{
    driver::{Driver, Object, Registration},
    kernel_api::{clear, errno, push_within_capacity, remove, sleep},
    sys,
};

module! {
    type: LoopbackModule,
    name: "tilde_loopback",
    description: "tilde software RoCE loopback device (Rust, on rdma_core::driver)",
    license: "GPL",
}

/// The C side (`loopback.c`).
#[repr(C)]
struct Glue {
    _private: [u8; 0],
}

extern "C" {
    fn tilde_lo_glue_new() -> *mut Glue;
    fn tilde_lo_glue_free(glue: *mut Glue);
    fn tilde_lo_detach(glue: *mut Glue);
    fn tilde_lo_lock(glue: *mut Glue) -> c_ulong;
    fn tilde_lo_unlock(glue: *mut Glue, flags: c_ulong);
    // `struct ib_device *`, untyped here: Rust deems it not FFI-safe (an empty lockdep
    // map inside).
    fn tilde_lo_attach(glue: *mut Glue, ibdev: *mut c_void, mac: *mut u8) -> c_int;
    fn tilde_lo_port_up(ibdev: *mut c_void) -> bool;
}

/// Device limits.
const MAX_QP: usize = 1024;
const MAX_WR: u32 = 4096;
const MAX_SGE: usize = 4;
const MAX_CQE: u32 = 8192;
const MAX_MR: usize = 4096;
const MAX_PAGES: u32 = 512;
const MAX_RD_ATOM: i32 = 16;
/// QP numbers 0 and 1 are the special QPs (which this device does not have).
const FIRST_QPN: usize = 2;
/// The local DMA key: a kernel virtual address (MR index 0 is never used).
const LOCAL_DMA_LKEY: u32 = 0;
/// The GRH (or, for IPv4, the IPv4 header in its last 20 bytes) ahead of a UD payload.
const GRH_LEN: usize = 40;
/// RoCEv2 headers after the IP header, for the GRH's payload length: UDP, BTH, DETH, ICRC.
const ROCE_UD_OVERHEAD: usize = 8 + 12 + 8 + 4;
/// The largest UD message (the port's MTU).
const UD_MTU: usize = 4096;
/// An RNR retry count that never gives up (IB's encoding).
const RNR_INFINITE: u8 = 7;
/// CQ events one call may owe after the lock (a post touches its QP's two CQs and its
/// peer's two; failing waiters, a few more). A CQ that finds no room stays armed, so the
/// next completion notifies it.
const NOTIFY_MAX: usize = 8;

fn einval() -> Error {
    EINVAL
}

/// Proof that the device lock is held, for the state behind it.
struct Guard<'a> {
    device: &'a SoftDevice,
    flags: c_ulong,
    /// CQ events due once the lock is released: each CQ named here counted itself in
    /// `Cq::notifying`, which its destruction waits for.
    notify: [(*const Cq, Due); NOTIFY_MAX],
}

/// What a CQ's consumer is owed.
#[derive(Clone, Copy, PartialEq)]
enum Due {
    /// Its completion handler (it was armed and got a completion).
    Completion,
    /// An `IB_EVENT_CQ_ERR` (it overran and lost completions).
    Overrun,
}

impl Guard<'_> {
    /// Records `due` for `cq`; false if there is no room (the caller keeps it for later).
    fn owe(&mut self, cq: &Cq, due: Due) -> bool {
        let Some(free) = self.notify.iter_mut().find(|(c, _)| c.is_null()) else {
            return false;
        };
        cq.notifying.fetch_add(1, Ordering::Relaxed);
        *free = (cq, due);
        true
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SAFETY: taken in `SoftDevice::lock` with these flags.
        unsafe { tilde_lo_unlock(self.device.glue, self.flags) };
        for (cq, due) in self.notify {
            if cq.is_null() {
                continue;
            }
            // SAFETY: the CQ counted this call in `notifying` under the lock, and its
            // destruction waits until that count is back to zero: it is alive here.
            let cq = unsafe { &*cq };
            let raw = cq.raw.as_ptr();
            // SAFETY: the CQ is alive (above); the handlers are the ones the IB core or the
            // consumer set, called as the C drivers call them, outside our lock.
            unsafe {
                match due {
                    Due::Completion => {
                        if let Some(handler) = (*raw).comp_handler {
                            handler(raw, (*raw).cq_context);
                        }
                    }
                    Due::Overrun => {
                        if let Some(handler) = (*raw).event_handler {
                            let mut event: sys::ib_event =
                                core::mem::MaybeUninit::zeroed().assume_init();
                            event.device = (*raw).device;
                            event.element.cq = raw;
                            event.event = sys::ib_event_type_IB_EVENT_CQ_ERR;
                            handler(&mut event, (*raw).cq_context);
                        }
                    }
                }
            }
            cq.notifying.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Mutable state under the device lock.
struct Locked<T>(UnsafeCell<T>);

// SAFETY: only reached through `get`, which requires the device lock.
unsafe impl<T: Send> Sync for Locked<T> {}

impl<T> Locked<T> {
    fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// The state; the guard proves the lock is held. Callers keep each borrow short and
    /// never hold two of the same object at once.
    #[allow(clippy::mut_from_ref)]
    fn get<'g>(&self, _guard: &'g Guard<'_>) -> &'g mut T {
        // SAFETY: the device lock serialises every access, and the callers do not keep
        // two borrows of one object alive together (see each use).
        unsafe { &mut *self.0.get() }
    }
}

/// The device.
struct SoftDevice {
    glue: *mut Glue,
    /// The `ib_device` (set at setup, before registration).
    raw: Locked<*mut sys::ib_device>,
    tables: Locked<Tables>,
    mac: Locked<[u8; 6]>,
}

// SAFETY: the glue is C state with its own lock; the rest is behind the device lock.
unsafe impl Send for SoftDevice {}
// SAFETY: as above.
unsafe impl Sync for SoftDevice {}

impl Drop for SoftDevice {
    fn drop(&mut self) {
        // The layer drops the state after unregistering the device and before freeing
        // it (or, if registration failed, before freeing it): the netdev notifier stops
        // here, in the order `ib_device_set_netdev` asks for.
        // SAFETY: the glue outlives the device (freed by the module after it).
        unsafe { tilde_lo_detach(self.glue) };
    }
}

/// QPs by number and MRs by key index.
struct Tables {
    qps: KVec<*const Qp>,
    mrs: KVec<*const Mr>,
    /// Where the search for a free QP number starts: numbers are handed out in turn, so
    /// a number just freed is not at once another QP's (a late message for the old one
    /// finds nobody).
    next_qpn: usize,
}

impl SoftDevice {
    fn lock(&self) -> Guard<'_> {
        // SAFETY: the glue lives as long as the device.
        let flags = unsafe { tilde_lo_lock(self.glue) };
        Guard {
            device: self,
            flags,
            notify: [(null(), Due::Completion); NOTIFY_MAX],
        }
    }

    /// The device's name (`tilde_lo0`), for log lines.
    fn name(&self, g: &Guard<'_>) -> rdma_core::device::DeviceName {
        let raw = *self.raw.get(g);
        // SAFETY: set before registration, valid until the device is freed, after its
        // last op.
        unsafe { rdma_core::device::DeviceName::of(raw) }
    }

    /// The QP numbered `qpn`, valid while the lock `g` proves is held (a QP leaves the
    /// table, under the lock, before it is destroyed).
    fn qp<'a>(&self, g: &Guard<'a>, qpn: u32) -> Option<&'a Qp> {
        let qp = *self.tables.get(g).qps.get(qpn as usize)?;
        // SAFETY: a table entry points at a QP's state from `created_qp` to
        // `destroy_qp`, both under the lock; a slot being filled holds the placeholder.
        (!qp.is_null() && qp != NonNull::<Qp>::dangling().as_ptr()).then(|| unsafe { &*qp })
    }

    /// The MR whose key index `key` has, as [`SoftDevice::qp`].
    fn mr<'a>(&self, g: &Guard<'a>, key: u32) -> Option<&'a Mr> {
        let mr = *self.tables.get(g).mrs.get((key >> 8) as usize)?;
        // SAFETY: as for QPs, from `created_mr` to `dereg_mr`.
        (!mr.is_null() && mr != NonNull::<Mr>::dangling().as_ptr()).then(|| unsafe { &*mr })
    }
}

/// Whether a range of memory is a kernel virtual address range or an MR's pages.
#[derive(Clone, Copy)]
enum Region {
    /// `addr` is a kernel virtual address.
    Virtual,
    /// Through a page list: page `i` of `pages` holds the `page_size` bytes from
    /// `base + i * page_size` of the MR's address space.
    Pages {
        pages: *const u64,
        count: usize,
        base: u64,
        page_size: u64,
    },
}

/// `len` bytes at `addr` in a region, validated.
#[derive(Clone, Copy)]
struct Span {
    region: Region,
    addr: u64,
    len: usize,
}

impl Span {
    /// The kernel address of byte `offset` and how many bytes are contiguous from it.
    fn at(&self, offset: usize) -> Option<(usize, usize)> {
        let left = self.len.checked_sub(offset)?;
        let addr = self.addr.checked_add(offset as u64)?;
        match self.region {
            Region::Virtual => Some((addr as usize, left)),
            Region::Pages {
                pages,
                count,
                base,
                page_size,
            } => {
                let from_base = addr.checked_sub(base)?;
                let index = usize::try_from(from_base.checked_div(page_size)?).ok()?;
                if index >= count {
                    return None;
                }
                let within = from_base.checked_rem(page_size)?;
                // SAFETY: `index < count`, the list's length, which the lock keeps.
                let page = unsafe { *pages.add(index) };
                let contiguous = usize::try_from(page_size - within).ok()?.min(left);
                Some((usize::try_from(page.checked_add(within)?).ok()?, contiguous))
            }
        }
    }
}

/// Copies all of `from` into `to` (as many bytes as `from` has; `to` has room, checked).
fn copy(from: &[Span], to: &[Span]) -> Option<()> {
    let mut targets = to.iter();
    let mut target = targets.next();
    let mut to_off = 0usize;
    for source in from {
        let mut from_off = 0usize;
        while from_off < source.len {
            // The next target with room left.
            let into = loop {
                match target {
                    Some(t) if to_off < t.len => break t,
                    Some(_) => {
                        target = targets.next();
                        to_off = 0;
                    }
                    None => return None,
                }
            };
            let (src, src_len) = source.at(from_off)?;
            let (dst, dst_len) = into.at(to_off)?;
            // At least 1: `at` gives the bytes left from an offset inside the span.
            let n = src_len.min(dst_len);
            // SAFETY: both ranges were validated as memory the consumers gave the device
            // (kernel virtual addresses of mapped buffers, or pages of a registered MR),
            // valid until the WRs complete; they may overlap (a QP sending to itself):
            // `copy`.
            unsafe { core::ptr::copy(src as *const u8, dst as *mut u8, n) };
            from_off = from_off.saturating_add(n);
            to_off = to_off.saturating_add(n);
        }
    }
    Some(())
}

fn total(spans: &[Span]) -> usize {
    spans.iter().fold(0, |sum, s| sum.saturating_add(s.len))
}

/// A scatter/gather list, translated.
struct Spans {
    spans: [Span; MAX_SGE],
    count: usize,
}

impl Spans {
    fn as_slice(&self) -> &[Span] {
        self.spans.get(..self.count).unwrap_or(&[])
    }
}

/// One SGE as posted.
#[derive(Clone, Copy, Default)]
struct Sge {
    addr: u64,
    len: u32,
    lkey: u32,
}

/// A posted WR's SGE list (`num_sge` entries at `sg_list`), copied.
fn sges_of(list: *const sys::ib_sge, num_sge: c_int) -> Result<([Sge; MAX_SGE], usize)> {
    let count = usize::try_from(num_sge).map_err(|_| einval())?;
    if count > MAX_SGE || (count > 0 && list.is_null()) {
        return Err(einval());
    }
    let mut sges = [Sge::default(); MAX_SGE];
    for (i, sge) in sges.iter_mut().take(count).enumerate() {
        // SAFETY: the consumer's list has `num_sge` entries, valid for the post.
        let posted = unsafe { &*list.add(i) };
        *sge = Sge {
            addr: posted.addr,
            len: posted.length,
            lkey: posted.lkey,
        };
    }
    Ok((sges, count))
}

/// A posted receive.
#[derive(Clone, Copy)]
struct RecvWqe {
    id: u64,
    sges: [Sge; MAX_SGE],
    count: usize,
}

/// A posted send, copied out of the consumer's WR.
#[derive(Clone, Copy)]
struct SendWqe {
    id: u64,
    opcode: u32,
    signaled: bool,
    sges: [Sge; MAX_SGE],
    count: usize,
    /// Immediate data (big-endian as posted), or the key a SEND_WITH_INV / LOCAL_INV names.
    ex: u32,
    remote_addr: u64,
    rkey: u32,
    compare_add: u64,
    swap: u64,
    /// UD: the AH, destination QP and Q_Key.
    ah: *const Ah,
    remote_qpn: u32,
    remote_qkey: u32,
    /// REG_MR: the MR, key and access.
    mr: *const Mr,
    key: u32,
    access: u32,
}

/// A QP's state under the lock.
struct QpState {
    state: u32,
    dest_qpn: u32,
    qkey: u32,
    access: u32,
    rnr_retry: u8,
    recv: KVec<RecvWqe>,
    /// Sends waiting behind an RNR wait, in order.
    pending: KVec<SendWqe>,
    max_send: usize,
}

/// A queue pair.
struct Qp {
    raw: NonNull<sys::ib_qp>,
    qpn: u32,
    qp_type: u32,
    sig_all: bool,
    send_cq: *const Cq,
    recv_cq: *const Cq,
    pd: *mut sys::ib_pd,
    state: Locked<QpState>,
}

// SAFETY: the raw pointers are the IB core's objects, valid while the QP exists; the
// mutable state is behind the device lock.
unsafe impl Send for Qp {}
// SAFETY: as above.
unsafe impl Sync for Qp {}

/// A completion queue's state under the lock.
struct CqState {
    ring: KVec<sys::ib_wc>,
    head: usize,
    len: usize,
    armed: bool,
    overflowed: bool,
}

/// A completion queue.
struct Cq {
    raw: NonNull<sys::ib_cq>,
    state: Locked<CqState>,
    /// Handler calls recorded under the lock and not yet made (see `Guard`).
    notifying: AtomicU32,
}

// SAFETY: as for `Qp`.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

/// A page list: staged by `map_mr_sg` (pages only), made active by REG_MR with the MR's
/// address, length and page size as they are then (a ULP may rewrite the address's upper
/// bits between the two, as xprtrdma does).
struct PageList {
    pages: KVec<u64>,
    iova: u64,
    length: u64,
    page_size: u64,
}

struct MrState {
    key: u32,
    valid: bool,
    access: u32,
    staged: PageList,
    active: PageList,
}

/// A memory region: all memory (DMA MR) or a fast-registration page list.
struct Mr {
    raw: NonNull<sys::ib_mr>,
    /// Its PD, as given to the op that made it (the IB core fills `ib_mr.pd` only after).
    pd: *mut sys::ib_pd,
    index: u32,
    dma: bool,
    state: Locked<MrState>,
}

// SAFETY: as for `Qp`.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

/// An address handle: the GIDs a UD send's GRH carries.
struct Ah {
    sgid: [u8; 16],
    dgid: [u8; 16],
    hop_limit: u8,
    traffic_class: u8,
    flow_label: u32,
}

/// A completion to deliver.
fn wc(id: u64, status: u32, opcode: u32, qp: &Qp) -> sys::ib_wc {
    // SAFETY: all-zero is a valid `ib_wc` (plain C data).
    let mut wc: sys::ib_wc = unsafe { core::mem::MaybeUninit::zeroed().assume_init() };
    wc.__bindgen_anon_1.wr_id = id;
    wc.status = status;
    wc.opcode = opcode;
    wc.qp = qp.raw.as_ptr();
    wc.port_num = 1;
    wc
}

fn send_wc_opcode(opcode: u32) -> u32 {
    match opcode {
        sys::ib_wr_opcode_IB_WR_RDMA_WRITE | sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM => {
            sys::ib_wc_opcode_IB_WC_RDMA_WRITE
        }
        sys::ib_wr_opcode_IB_WR_RDMA_READ => sys::ib_wc_opcode_IB_WC_RDMA_READ,
        sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP => sys::ib_wc_opcode_IB_WC_COMP_SWAP,
        sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => sys::ib_wc_opcode_IB_WC_FETCH_ADD,
        sys::ib_wr_opcode_IB_WR_LOCAL_INV => sys::ib_wc_opcode_IB_WC_LOCAL_INV,
        sys::ib_wr_opcode_IB_WR_REG_MR => sys::ib_wc_opcode_IB_WC_REG_MR,
        _ => sys::ib_wc_opcode_IB_WC_SEND,
    }
}

impl Cq {
    /// Queues `wc`; arms the handler call if the CQ was armed.
    fn push(&self, g: &mut Guard<'_>, wc: sys::ib_wc) {
        let state = self.state.get(g);
        let capacity = state.ring.len();
        if state.len >= capacity {
            if !state.overflowed {
                state.overflowed = true;
                pr_err!(
                    "{}: CQ of {} entries overran: completions lost\n",
                    g.device.name(g),
                    capacity
                );
                g.owe(self, Due::Overrun);
            }
            return;
        }
        // Never zero here (a full ring returned above); checked all the same, as no panic
        // may be reachable.
        let Some(tail) = state.head.wrapping_add(state.len).checked_rem(capacity) else {
            return;
        };
        if let Some(slot) = state.ring.get_mut(tail) {
            *slot = wc;
            state.len = state.len.saturating_add(1);
        }
        let this: *const Cq = self;
        if state.armed
            && !g.notify.contains(&(this, Due::Completion))
            && g.owe(self, Due::Completion)
        {
            self.state.get(g).armed = false;
        }
    }
}

/// What executing a send WQE came to.
enum Outcome {
    Done,
    /// The responder has no receive: wait for one.
    RnrWait,
    /// The requester's completion status, and whether the responder's QP fails too.
    Failed(u32, bool),
}

impl Qp {
    fn send_cq(&self) -> &Cq {
        // SAFETY: the IB core keeps a QP's CQs until after the QP is destroyed.
        unsafe { &*self.send_cq }
    }

    fn recv_cq(&self) -> &Cq {
        // SAFETY: as above.
        unsafe { &*self.recv_cq }
    }

    /// Moves the QP to error and flushes what it holds.
    fn fail(&self, g: &mut Guard<'_>) {
        let state = self.state.get(g);
        state.state = sys::ib_qp_state_IB_QPS_ERR;
        let mut recvs = core::mem::take(&mut state.recv);
        let mut sends = core::mem::take(&mut state.pending);
        for wqe in recvs.iter() {
            let wc = wc(
                wqe.id,
                sys::ib_wc_status_IB_WC_WR_FLUSH_ERR,
                sys::ib_wc_opcode_IB_WC_RECV,
                self,
            );
            self.recv_cq().push(g, wc);
        }
        for wqe in sends.iter() {
            let wc = wc(
                wqe.id,
                sys::ib_wc_status_IB_WC_WR_FLUSH_ERR,
                send_wc_opcode(wqe.opcode),
                self,
            );
            self.send_cq().push(g, wc);
        }
        // The queues keep their capacity (allocated at create): no allocation here.
        clear(&mut recvs);
        clear(&mut sends);
        let state = self.state.get(g);
        state.recv = recvs;
        state.pending = sends;
        // Senders waiting on this QP (RNR) get no answer from it any more.
        let device = g.device;
        device.wake_waiters(g, self.qpn);
    }

    /// Executes the pending sends in order while they can go.
    fn progress(&self, g: &mut Guard<'_>) {
        loop {
            let state = self.state.get(g);
            if state.state != sys::ib_qp_state_IB_QPS_RTS {
                return;
            }
            let Some(&wqe) = state.pending.first() else {
                return;
            };
            let device = g.device;
            match device.execute(g, self, &wqe) {
                Outcome::RnrWait => return,
                Outcome::Done => {
                    let _ = remove(&mut self.state.get(g).pending, 0);
                    if wqe.signaled || self.sig_all {
                        let wc =
                            device.send_completion(self, &wqe, sys::ib_wc_status_IB_WC_SUCCESS);
                        self.send_cq().push(g, wc);
                    }
                }
                Outcome::Failed(status, responder_too) => {
                    let _ = remove(&mut self.state.get(g).pending, 0);
                    let wc = device.send_completion(self, &wqe, status);
                    self.send_cq().push(g, wc);
                    // This QP first: its later sends flush, whatever the peer's failing
                    // wakes.
                    self.fail(g);
                    if responder_too {
                        let dest = self.state.get(g).dest_qpn;
                        if let Some(peer) = device.qp(g, dest) {
                            if !core::ptr::eq(peer, self) {
                                peer.fail(g);
                            }
                        }
                    }
                    return;
                }
            }
        }
    }
}

impl SoftDevice {
    /// Translates an SGE list for `qp` (`write`: the device writes it).
    fn local(&self, g: &Guard<'_>, qp: &Qp, sges: &[Sge], write: bool) -> Option<Spans> {
        let mut spans = Spans {
            spans: [Span {
                region: Region::Virtual,
                addr: 0,
                len: 0,
            }; MAX_SGE],
            count: 0,
        };
        for (sge, span) in sges.iter().zip(spans.spans.iter_mut()) {
            *span = if sge.lkey == LOCAL_DMA_LKEY {
                Span {
                    region: Region::Virtual,
                    addr: sge.addr,
                    len: sge.len as usize,
                }
            } else {
                let need = if write {
                    sys::ib_access_flags_IB_ACCESS_LOCAL_WRITE
                } else {
                    0
                };
                self.translate(g, qp.pd, sge.lkey, sge.addr, sge.len as usize, need)?
            };
            spans.count = spans.count.saturating_add(1);
        }
        Some(spans)
    }

    /// `len` bytes at `addr` under `key`, if the key is valid, of `pd`, allows `need` and
    /// covers the range.
    fn translate(
        &self,
        g: &Guard<'_>,
        pd: *mut sys::ib_pd,
        key: u32,
        addr: u64,
        len: usize,
        need: u32,
    ) -> Option<Span> {
        let mr = self.mr(g, key)?;
        let state = mr.state.get(g);
        if !state.valid || state.key != key || mr.pd != pd || state.access & need != need {
            return None;
        }
        if mr.dma {
            return Some(Span {
                region: Region::Virtual,
                addr,
                len,
            });
        }
        let list = &state.active;
        let end = addr.checked_add(len as u64)?;
        if addr < list.iova || end > list.iova.checked_add(list.length)? || list.page_size == 0 {
            return None;
        }
        Some(Span {
            region: Region::Pages {
                pages: list.pages.as_ptr(),
                count: list.pages.len(),
                base: list.iova & !(list.page_size - 1),
                page_size: list.page_size,
            },
            addr,
            len,
        })
    }

    /// The requester's completion of `wqe` with `status`.
    fn send_completion(&self, qp: &Qp, wqe: &SendWqe, status: u32) -> sys::ib_wc {
        let mut wc = wc(wqe.id, status, send_wc_opcode(wqe.opcode), qp);
        wc.byte_len = match wqe.opcode {
            sys::ib_wr_opcode_IB_WR_RDMA_READ => wqe
                .sges
                .iter()
                .take(wqe.count)
                .fold(0u32, |sum, s| sum.saturating_add(s.len)),
            sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP
            | sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => 8,
            _ => 0,
        };
        wc
    }

    /// Executes one send WQE of `qp` (not its completion, which the caller makes).
    fn execute(&self, g: &mut Guard<'_>, qp: &Qp, wqe: &SendWqe) -> Outcome {
        match wqe.opcode {
            sys::ib_wr_opcode_IB_WR_LOCAL_INV => {
                return match self.mr(g, wqe.ex) {
                    Some(mr) if mr.state.get(g).key == wqe.ex && !mr.dma => {
                        mr.state.get(g).valid = false;
                        Outcome::Done
                    }
                    _ => Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false),
                };
            }
            sys::ib_wr_opcode_IB_WR_REG_MR => {
                // SAFETY: a REG_MR names an MR of this device (the consumer's contract;
                // the IB core allocated it through our `alloc_mr`), alive until dereg.
                let mr = unsafe { &*wqe.mr };
                let state = mr.state.get(g);
                // As IB has it (and rxe): only a free MR, of the QP's PD, with the key's
                // index unchanged.
                if state.valid || mr.pd != qp.pd || wqe.key >> 8 != mr.index || mr.dma {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false);
                }
                // The registration takes a copy of the staged pages, which stay for the
                // next REG_MR of the same mapping (both lists have the MR's capacity: no
                // allocation), and the MR's address, length and page size as they are now.
                clear(&mut state.active.pages);
                for &page in state.staged.pages.iter() {
                    if push_within_capacity(&mut state.active.pages, page).is_err() {
                        return Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false);
                    }
                }
                // SAFETY: the IB core's fields of the MR, set by `ib_map_mr_sg` and the ULP
                // before the post, and not changed while the REG_MR is outstanding.
                let raw = unsafe { &*mr.raw.as_ptr() };
                state.active.iova = raw.iova;
                state.active.length = raw.length;
                state.active.page_size = u64::from(raw.page_size);
                state.key = wqe.key;
                state.access = wqe.access;
                state.valid = true;
                return Outcome::Done;
            }
            _ => {}
        }
        let count = wqe.count.min(MAX_SGE);
        let reads_into_local = matches!(
            wqe.opcode,
            sys::ib_wr_opcode_IB_WR_RDMA_READ
                | sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP
                | sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD
        );
        let Some(local) = self.local(g, qp, &wqe.sges[..count], reads_into_local) else {
            return Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false);
        };
        if qp.qp_type == sys::ib_qp_type_IB_QPT_UD {
            self.deliver_ud(g, qp, wqe, &local);
            return Outcome::Done;
        }
        let dest = qp.state.get(g).dest_qpn;
        let Some(peer) = self.qp(g, dest) else {
            return Outcome::Failed(sys::ib_wc_status_IB_WC_RETRY_EXC_ERR, false);
        };
        let peer_state = peer.state.get(g).state;
        if peer.qp_type != sys::ib_qp_type_IB_QPT_RC
            || !(peer_state == sys::ib_qp_state_IB_QPS_RTR
                || peer_state == sys::ib_qp_state_IB_QPS_RTS)
        {
            return Outcome::Failed(sys::ib_wc_status_IB_WC_RETRY_EXC_ERR, false);
        }
        let peer_access = peer.state.get(g).access;
        let remote = |g: &Guard<'_>, len: usize, need: u32| {
            if peer_access & need != need {
                return None;
            }
            self.translate(g, peer.pd, wqe.rkey, wqe.remote_addr, len, need)
        };
        match wqe.opcode {
            sys::ib_wr_opcode_IB_WR_RDMA_WRITE => {
                let Some(target) = remote(
                    g,
                    total(local.as_slice()),
                    sys::ib_access_flags_IB_ACCESS_REMOTE_WRITE,
                ) else {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true);
                };
                match copy(local.as_slice(), &[target]) {
                    Some(()) => Outcome::Done,
                    None => Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true),
                }
            }
            sys::ib_wr_opcode_IB_WR_RDMA_READ => {
                let Some(source) = remote(
                    g,
                    total(local.as_slice()),
                    sys::ib_access_flags_IB_ACCESS_REMOTE_READ,
                ) else {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true);
                };
                match copy(&[source], local.as_slice()) {
                    Some(()) => Outcome::Done,
                    None => Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false),
                }
            }
            sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP
            | sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => {
                let target = remote(g, 8, sys::ib_access_flags_IB_ACCESS_REMOTE_ATOMIC)
                    .filter(|t| t.addr % 8 == 0)
                    .and_then(|t| t.at(0))
                    .filter(|&(addr, len)| len >= 8 && addr % 8 == 0);
                let Some((addr, _)) = target else {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true);
                };
                if total(local.as_slice()) < 8 {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_LEN_ERR, false);
                }
                // SAFETY: an 8-byte aligned word of a registered region the peer allowed
                // atomics on; device atomics are atomic with respect to each other, which
                // the lock and the atomic instruction give.
                let word = unsafe { AtomicU64::from_ptr(addr as *mut u64) };
                let old = if wqe.opcode == sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP {
                    match word.compare_exchange(
                        wqe.compare_add,
                        wqe.swap,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    ) {
                        Ok(old) | Err(old) => old,
                    }
                } else {
                    word.fetch_add(wqe.compare_add, Ordering::SeqCst)
                };
                let bytes = old.to_ne_bytes();
                let from = Span {
                    region: Region::Virtual,
                    addr: bytes.as_ptr() as u64,
                    len: 8,
                };
                match copy(&[from], local.as_slice()) {
                    Some(()) => Outcome::Done,
                    None => Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_PROT_ERR, false),
                }
            }
            sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM => {
                let len = total(local.as_slice());
                let Some(target) = remote(g, len, sys::ib_access_flags_IB_ACCESS_REMOTE_WRITE)
                else {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true);
                };
                let Some(recv) = peer.state.get(g).recv.first().copied() else {
                    return self.rnr(g, qp);
                };
                if copy(local.as_slice(), &[target]).is_none() {
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_ACCESS_ERR, true);
                }
                let _ = remove(&mut peer.state.get(g).recv, 0);
                let mut done = wc(
                    recv.id,
                    sys::ib_wc_status_IB_WC_SUCCESS,
                    sys::ib_wc_opcode_IB_WC_RECV_RDMA_WITH_IMM,
                    peer,
                );
                done.byte_len = len as u32;
                done.ex.imm_data = wqe.ex;
                done.wc_flags = sys::ib_wc_flags_IB_WC_WITH_IMM as c_int;
                done.src_qp = qp.qpn;
                peer.recv_cq().push(g, done);
                Outcome::Done
            }
            sys::ib_wr_opcode_IB_WR_SEND
            | sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM
            | sys::ib_wr_opcode_IB_WR_SEND_WITH_INV => {
                let Some(recv) = peer.state.get(g).recv.first().copied() else {
                    return self.rnr(g, qp);
                };
                let _ = remove(&mut peer.state.get(g).recv, 0);
                let len = total(local.as_slice());
                let target = self.local(g, peer, &recv.sges[..recv.count.min(MAX_SGE)], true);
                let fits = target.as_ref().is_some_and(|t| total(t.as_slice()) >= len);
                let status = match &target {
                    Some(t) if fits => match copy(local.as_slice(), t.as_slice()) {
                        Some(()) => sys::ib_wc_status_IB_WC_SUCCESS,
                        None => sys::ib_wc_status_IB_WC_LOC_PROT_ERR,
                    },
                    Some(_) => sys::ib_wc_status_IB_WC_LOC_LEN_ERR,
                    None => sys::ib_wc_status_IB_WC_LOC_PROT_ERR,
                };
                // A SEND with Invalidate names a key of the responder's PD, which it
                // invalidates; any other key is the requester's error (IB class J).
                let invalidated =
                    (wqe.opcode == sys::ib_wr_opcode_IB_WR_SEND_WITH_INV).then(|| {
                        let mr = self.mr(g, wqe.ex)?;
                        let state = mr.state.get(g);
                        (state.key == wqe.ex && mr.pd == peer.pd && !mr.dma).then_some(mr)
                    });
                let status = match invalidated {
                    Some(None) if status == sys::ib_wc_status_IB_WC_SUCCESS => {
                        sys::ib_wc_status_IB_WC_REM_INV_REQ_ERR
                    }
                    _ => status,
                };
                let mut done = wc(recv.id, status, sys::ib_wc_opcode_IB_WC_RECV, peer);
                if status != sys::ib_wc_status_IB_WC_SUCCESS {
                    peer.recv_cq().push(g, done);
                    // The responder's QP fails too; `progress` fails the requester's
                    // (which may be the same QP, connected to itself).
                    return Outcome::Failed(sys::ib_wc_status_IB_WC_REM_INV_REQ_ERR, true);
                }
                done.byte_len = len as u32;
                done.src_qp = qp.qpn;
                if wqe.opcode == sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM {
                    done.ex.imm_data = wqe.ex;
                    done.wc_flags = sys::ib_wc_flags_IB_WC_WITH_IMM as c_int;
                } else if let Some(Some(mr)) = invalidated {
                    mr.state.get(g).valid = false;
                    done.ex.invalidate_rkey = wqe.ex;
                    done.wc_flags = sys::ib_wc_flags_IB_WC_WITH_INVALIDATE as c_int;
                }
                peer.recv_cq().push(g, done);
                Outcome::Done
            }
            _ => Outcome::Failed(sys::ib_wc_status_IB_WC_LOC_QP_OP_ERR, false),
        }
    }

    /// Lets the RC QPs whose sends wait on QP `qpn` (RNR) try again: when it has gone to
    /// error or away, they fail as a requester whose responder stopped answering does.
    fn wake_waiters(&self, g: &mut Guard<'_>, qpn: u32) {
        for n in FIRST_QPN..MAX_QP {
            let Some(waiter) = self.qp(g, n as u32) else {
                continue;
            };
            let waiting = {
                let state = waiter.state.get(g);
                state.dest_qpn == qpn && !state.pending.is_empty()
            };
            if waiting && waiter.qpn != qpn && waiter.qp_type == sys::ib_qp_type_IB_QPT_RC {
                waiter.progress(g);
            }
        }
    }

    /// The responder had no receive: with retries left, wait; with none, fail.
    fn rnr(&self, g: &Guard<'_>, qp: &Qp) -> Outcome {
        if qp.state.get(g).rnr_retry == 0 {
            Outcome::Failed(sys::ib_wc_status_IB_WC_RNR_RETRY_EXC_ERR, false)
        } else {
            Outcome::RnrWait
        }
    }

    /// A UD send: delivered to the destination QP if it exists, takes this Q_Key and has
    /// a receive, else dropped (UD is unreliable); the sender completes either way.
    fn deliver_ud(&self, g: &mut Guard<'_>, qp: &Qp, wqe: &SendWqe, local: &Spans) {
        let len = total(local.as_slice());
        if len > UD_MTU || wqe.ah.is_null() {
            return;
        }
        let Some(peer) = self.qp(g, wqe.remote_qpn) else {
            return;
        };
        // One borrow of a QP's state at a time: `peer` may be `qp` itself.
        let (peer_state, peer_qkey) = {
            let state = peer.state.get(g);
            (state.state, state.qkey)
        };
        // A Q_Key with the high bit set means "the sending QP's own".
        let qkey = if wqe.remote_qkey & 0x8000_0000 != 0 {
            qp.state.get(g).qkey
        } else {
            wqe.remote_qkey
        };
        if peer.qp_type != sys::ib_qp_type_IB_QPT_UD
            || !(peer_state == sys::ib_qp_state_IB_QPS_RTR
                || peer_state == sys::ib_qp_state_IB_QPS_RTS)
            || peer_qkey != qkey
        {
            return;
        }
        let Some(recv) = peer.state.get(g).recv.first().copied() else {
            return;
        };
        let _ = remove(&mut peer.state.get(g).recv, 0);
        // SAFETY: the AH outlives the WRs posted with it (the consumer's contract).
        let ah = unsafe { &*wqe.ah };
        let (grh, ipv4) = grh(ah, len);
        let target = self.local(g, peer, &recv.sges[..recv.count.min(MAX_SGE)], true);
        let header = Span {
            region: Region::Virtual,
            addr: grh.as_ptr() as u64,
            len: GRH_LEN,
        };
        let status = match &target {
            Some(t) if total(t.as_slice()) >= GRH_LEN.saturating_add(len) => {
                let mut with_header = [header; MAX_SGE + 1];
                for (slot, span) in with_header.iter_mut().skip(1).zip(local.as_slice()) {
                    *slot = *span;
                }
                let spans = local.as_slice().len().saturating_add(1);
                match with_header
                    .get(..spans)
                    .and_then(|all| copy(all, t.as_slice()))
                {
                    Some(()) => sys::ib_wc_status_IB_WC_SUCCESS,
                    None => sys::ib_wc_status_IB_WC_LOC_PROT_ERR,
                }
            }
            Some(_) => sys::ib_wc_status_IB_WC_LOC_LEN_ERR,
            None => sys::ib_wc_status_IB_WC_LOC_PROT_ERR,
        };
        let mut done = wc(recv.id, status, sys::ib_wc_opcode_IB_WC_RECV, peer);
        if status == sys::ib_wc_status_IB_WC_SUCCESS {
            done.byte_len = GRH_LEN.saturating_add(len) as u32;
            done.src_qp = qp.qpn;
            done.wc_flags = (sys::ib_wc_flags_IB_WC_GRH
                | sys::ib_wc_flags_IB_WC_WITH_NETWORK_HDR_TYPE)
                as c_int;
            done.network_hdr_type = if ipv4 {
                sys::rdma_network_type_RDMA_NETWORK_IPV4
            } else {
                sys::rdma_network_type_RDMA_NETWORK_IPV6
            } as u8;
            if wqe.opcode == sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM {
                done.ex.imm_data = wqe.ex;
                done.wc_flags |= sys::ib_wc_flags_IB_WC_WITH_IMM as c_int;
            }
        }
        peer.recv_cq().push(g, done);
    }
}

/// The network header a RoCEv2 UD receive starts with, in its 40-byte GRH area: an IPv6
/// header, or for IPv4-mapped GIDs 20 bytes of zeros and an IPv4 header.
fn grh(ah: &Ah, len: usize) -> ([u8; GRH_LEN], bool) {
    let mut header = [0u8; GRH_LEN];
    let v4 =
        |gid: &[u8; 16]| gid[..10].iter().all(|&b| b == 0) && gid[10] == 0xff && gid[11] == 0xff;
    if v4(&ah.sgid) && v4(&ah.dgid) {
        let total_len = (20 + ROCE_UD_OVERHEAD + len) as u16;
        let ip = &mut header[20..];
        ip[0] = 0x45;
        ip[1] = ah.traffic_class;
        ip[2..4].copy_from_slice(&total_len.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = ah.hop_limit;
        ip[9] = 17; // UDP
        ip[12..16].copy_from_slice(&ah.sgid[12..]);
        ip[16..20].copy_from_slice(&ah.dgid[12..]);
        let mut sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        return (header, true);
    }
    let first = (6u32 << 28) | (u32::from(ah.traffic_class) << 20) | (ah.flow_label & 0xf_ffff);
    header[..4].copy_from_slice(&first.to_be_bytes());
    header[4..6].copy_from_slice(&((ROCE_UD_OVERHEAD + len) as u16).to_be_bytes());
    header[6] = 17; // UDP
    header[7] = ah.hop_limit;
    header[8..24].copy_from_slice(&ah.sgid);
    header[24..40].copy_from_slice(&ah.dgid);
    (header, false)
}

/// A zeroed completion ring of `capacity` entries.
fn ring(capacity: usize) -> Result<KVec<sys::ib_wc>> {
    let mut ring = KVec::with_capacity(capacity, GFP_KERNEL)?;
    for _ in 0..capacity {
        // SAFETY: all-zero is a valid `ib_wc`.
        let empty: sys::ib_wc = unsafe { core::mem::MaybeUninit::zeroed().assume_init() };
        ring.push(empty, GFP_KERNEL)?;
    }
    Ok(ring)
}

fn page_list(capacity: u32) -> Result<PageList> {
    Ok(PageList {
        pages: KVec::with_capacity(capacity as usize, GFP_KERNEL)?,
        iova: 0,
        length: 0,
        page_size: 0,
    })
}

/// `ib_sg_to_pages`' callback: one more page for the MR's staged list.
///
/// # Safety
///
/// Called by `ib_sg_to_pages` from `map_mr_sg`, under the device lock, for an MR of ours.
unsafe extern "C" fn set_page(mr: *mut sys::ib_mr, addr: u64) -> c_int {
    // SAFETY: an MR of ours (see above); the lock is held by `map_mr_sg`, which is
    // waiting in `ib_sg_to_pages` and holds no borrow of the state meanwhile.
    let state = unsafe { &mut *Object::<sys::ib_mr, Mr>::data(mr).state.0.get() };
    match push_within_capacity(&mut state.staged.pages, addr) {
        Ok(()) => 0,
        Err(_) => -(kernel::bindings::ENOMEM as c_int),
    }
}

impl Driver for SoftDevice {
    type Pd = ();
    type Cq = Cq;
    type Qp = Qp;
    type Ah = Ah;
    type Mr = Mr;

    fn query_device(&self, attr: &mut sys::ib_device_attr) -> Result {
        let g = self.lock();
        let mac = *self.mac.get(&g);
        drop(g);
        attr.sys_image_guid = guid(&mac).to_be();
        attr.max_mr_size = u64::MAX;
        attr.page_size_cap = 0xffff_f000;
        attr.max_qp = (MAX_QP - FIRST_QPN) as c_int;
        attr.max_qp_wr = MAX_WR as c_int;
        attr.device_cap_flags = sys::ib_device_cap_flags_IB_DEVICE_MEM_MGT_EXTENSIONS as u64;
        attr.kernel_cap_flags = u64::from(sys::ib_kernel_cap_flags_IBK_LOCAL_DMA_LKEY);
        attr.max_send_sge = MAX_SGE as c_int;
        attr.max_recv_sge = MAX_SGE as c_int;
        attr.max_sge_rd = MAX_SGE as c_int;
        attr.max_cq = MAX_QP as c_int;
        attr.max_cqe = MAX_CQE as c_int;
        attr.max_mr = (MAX_MR - 1) as c_int;
        attr.max_pd = MAX_QP as c_int;
        attr.max_qp_rd_atom = MAX_RD_ATOM;
        attr.max_qp_init_rd_atom = MAX_RD_ATOM;
        attr.max_res_rd_atom = MAX_RD_ATOM * MAX_QP as c_int;
        attr.atomic_cap = sys::ib_atomic_cap_IB_ATOMIC_HCA;
        attr.max_ah = MAX_QP as c_int;
        attr.max_fast_reg_page_list_len = MAX_PAGES;
        attr.max_pkeys = 1;
        Ok(())
    }

    fn query_port(&self, port: u32, attr: &mut sys::ib_port_attr) -> Result {
        if port != 1 {
            return Err(einval());
        }
        let raw = *self.raw.get(&self.lock());
        // SAFETY: the device is registered (the IB core queries only then, or during).
        let up = unsafe { tilde_lo_port_up(raw.cast()) };
        attr.state = if up {
            sys::ib_port_state_IB_PORT_ACTIVE
        } else {
            sys::ib_port_state_IB_PORT_DOWN
        };
        attr.phys_state = if up {
            sys::ib_port_phys_state_IB_PORT_PHYS_STATE_LINK_UP as u8
        } else {
            3 // IB_PORT_PHYS_STATE_DISABLED
        };
        attr.max_mtu = sys::ib_mtu_IB_MTU_4096;
        attr.active_mtu = sys::ib_mtu_IB_MTU_4096;
        attr.gid_tbl_len = 16;
        attr.pkey_tbl_len = 1;
        attr.max_msg_sz = 1 << 31;
        attr.active_width = sys::ib_port_width_IB_WIDTH_4X as u8;
        attr.active_speed = sys::ib_port_speed_IB_SPEED_EDR as u16;
        Ok(())
    }

    fn port_immutable(&self, port: u32, immutable: &mut sys::ib_port_immutable) -> Result {
        if port != 1 {
            return Err(einval());
        }
        // RoCEv2 without MADs: GIDs from the netdev, no GSI QP, no IB CM.
        // ETH_AH: UD receive completions carry RoCE addresses (`ib_init_ah_attr_from_wc`
        // reads the network header by them).
        immutable.core_cap_flags =
            sys::RDMA_CORE_CAP_PROT_ROCE_UDP_ENCAP | sys::RDMA_CORE_CAP_ETH_AH;
        immutable.gid_tbl_len = 16;
        immutable.pkey_tbl_len = 1;
        immutable.max_mad_size = 0;
        Ok(())
    }

    fn link_layer(&self, _port: u32) -> sys::rdma_link_layer {
        sys::rdma_link_layer_IB_LINK_LAYER_ETHERNET
    }

    fn query_pkey(&self, port: u32, index: u16) -> Result<u16> {
        if port != 1 || index != 0 {
            return Err(einval());
        }
        Ok(0xffff)
    }

    fn alloc_pd(&self, _pd: NonNull<sys::ib_pd>) -> Result<()> {
        Ok(())
    }

    fn create_cq(&self, cq: NonNull<sys::ib_cq>, attr: &sys::ib_cq_init_attr) -> Result<Cq> {
        if attr.cqe == 0 || attr.cqe > MAX_CQE || attr.flags != 0 {
            return Err(einval());
        }
        let capacity = attr.cqe as usize;
        let state = CqState {
            ring: ring(capacity)?,
            head: 0,
            len: 0,
            armed: false,
            overflowed: false,
        };
        // SAFETY: the IB core's CQ being created; `cqe` is the driver's to set.
        unsafe { (*cq.as_ptr()).cqe = capacity as c_int };
        Ok(Cq {
            raw: cq,
            state: Locked::new(state),
            notifying: AtomicU32::new(0),
        })
    }

    fn resize_cq(&self, cq: &Cq, raw: NonNull<sys::ib_cq>, entries: u32) -> Result {
        if entries == 0 || entries > MAX_CQE {
            return Err(einval());
        }
        let mut ring = ring(entries as usize)?;
        let g = self.lock();
        let state = cq.state.get(&g);
        if state.len > ring.len() {
            return Err(einval());
        }
        let old = state.ring.len();
        for (i, slot) in ring.iter_mut().take(state.len).enumerate() {
            if let Some(entry) = state
                .head
                .wrapping_add(i)
                .checked_rem(old)
                .and_then(|at| state.ring.get(at))
            {
                *slot = *entry;
            }
        }
        core::mem::swap(&mut state.ring, &mut ring);
        state.head = 0;
        // SAFETY: the CQ being resized; `cqe` is the driver's to set.
        unsafe { (*raw.as_ptr()).cqe = entries as c_int };
        drop(g);
        // The old ring is freed outside the lock.
        drop(ring);
        Ok(())
    }

    fn destroy_cq(&self, cq: &Cq) {
        // Handler calls recorded before the CQ's last QP went are made after our lock
        // was released; the CQ's memory goes when this returns, so wait for them.
        while cq.notifying.load(Ordering::Acquire) != 0 {
            sleep(Duration::from_micros(20));
        }
    }

    fn poll_cq(&self, cq: &Cq, wc: &mut [sys::ib_wc]) -> usize {
        let g = self.lock();
        let state = cq.state.get(&g);
        let capacity = state.ring.len();
        let mut polled = 0;
        for out in wc.iter_mut() {
            if state.len == 0 || capacity == 0 {
                break;
            }
            if let Some(entry) = state.ring.get(state.head) {
                *out = *entry;
            }
            state.head = state
                .head
                .wrapping_add(1)
                .checked_rem(capacity)
                .unwrap_or(0);
            state.len -= 1;
            polled += 1;
        }
        polled
    }

    fn req_notify_cq(&self, cq: &Cq, _raw: NonNull<sys::ib_cq>, flags: u32) -> Result<bool> {
        let g = self.lock();
        let state = cq.state.get(&g);
        if flags & sys::ib_cq_notify_flags_IB_CQ_SOLICITED_MASK != 0 {
            state.armed = true;
        }
        Ok(flags & sys::ib_cq_notify_flags_IB_CQ_REPORT_MISSED_EVENTS != 0 && state.len > 0)
    }

    fn create_qp(&self, qp: NonNull<sys::ib_qp>, attr: &mut sys::ib_qp_init_attr) -> Result<Qp> {
        let qp_type = attr.qp_type;
        if (qp_type != sys::ib_qp_type_IB_QPT_RC && qp_type != sys::ib_qp_type_IB_QPT_UD)
            || attr.create_flags != 0
        {
            return Err(errno(kernel::bindings::EOPNOTSUPP));
        }
        let cap = &mut attr.cap;
        if !attr.srq.is_null()
            || attr.send_cq.is_null()
            || attr.recv_cq.is_null()
            || cap.max_send_wr > MAX_WR
            || cap.max_recv_wr > MAX_WR
            || cap.max_send_sge as usize > MAX_SGE
            || cap.max_recv_sge as usize > MAX_SGE
            || cap.max_inline_data > 0
        {
            return Err(einval());
        }
        cap.max_send_sge = MAX_SGE as u32;
        cap.max_recv_sge = MAX_SGE as u32;
        let state = QpState {
            state: sys::ib_qp_state_IB_QPS_RESET,
            dest_qpn: 0,
            qkey: 0,
            access: 0,
            rnr_retry: 0,
            recv: KVec::with_capacity(cap.max_recv_wr.max(1) as usize, GFP_KERNEL)?,
            pending: KVec::with_capacity(cap.max_send_wr.max(1) as usize, GFP_KERNEL)?,
            max_send: cap.max_send_wr as usize,
        };
        let g = self.lock();
        let tables = self.tables.get(&g);
        let start = tables.next_qpn.clamp(FIRST_QPN, MAX_QP - 1);
        let Some(qpn) = Iterator::chain(start..MAX_QP, FIRST_QPN..start)
            .find(|&n| tables.qps.get(n).is_some_and(|q| q.is_null()))
        else {
            return Err(ENOMEM);
        };
        tables.next_qpn = qpn.saturating_add(1);
        // Held until `created_qp` fills it: a placeholder no lookup dereferences.
        if let Some(slot) = tables.qps.get_mut(qpn) {
            *slot = NonNull::<Qp>::dangling().as_ptr();
        }
        drop(g);
        // SAFETY: the IB core's QP being created; `qp_num` is the driver's to set.
        unsafe { (*qp.as_ptr()).qp_num = qpn as u32 };
        // SAFETY: the CQs are the IB core's, of this device (checked non-null above):
        // CQs created by our `create_cq`, whose state outlives the QP.
        let (send_cq, recv_cq) = unsafe {
            (
                core::ptr::from_ref(Object::<sys::ib_cq, Cq>::data(attr.send_cq)),
                core::ptr::from_ref(Object::<sys::ib_cq, Cq>::data(attr.recv_cq)),
            )
        };
        Ok(Qp {
            raw: qp,
            qpn: qpn as u32,
            qp_type,
            sig_all: attr.sq_sig_type == sys::ib_sig_type_IB_SIGNAL_ALL_WR,
            send_cq,
            recv_cq,
            // SAFETY: set by the IB core before `create_qp`.
            pd: unsafe { (*qp.as_ptr()).pd },
            state: Locked::new(state),
        })
    }

    fn created_qp(&self, qp: &Qp) {
        let g = self.lock();
        if let Some(slot) = self.tables.get(&g).qps.get_mut(qp.qpn as usize) {
            *slot = qp;
        }
    }

    fn modify_qp(&self, qp: &Qp, attr: &sys::ib_qp_attr, mask: u32) -> Result {
        let mut g = self.lock();
        let state = qp.state.get(&g);
        let current = if mask & sys::ib_qp_attr_mask_IB_QP_CUR_STATE != 0 {
            attr.cur_qp_state
        } else {
            state.state
        };
        let next = if mask & sys::ib_qp_attr_mask_IB_QP_STATE != 0 {
            attr.qp_state
        } else {
            current
        };
        // SAFETY: a pure check of its arguments.
        if !unsafe { sys::ib_modify_qp_is_ok(current, next, qp.qp_type, mask) } {
            return Err(einval());
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_PORT != 0 && attr.port_num != 1 {
            return Err(einval());
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_ACCESS_FLAGS != 0 {
            state.access = attr.qp_access_flags as u32;
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_QKEY != 0 {
            state.qkey = attr.qkey;
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_DEST_QPN != 0 {
            state.dest_qpn = attr.dest_qp_num;
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_RNR_RETRY != 0 {
            state.rnr_retry = attr.rnr_retry.min(RNR_INFINITE);
        }
        if mask & sys::ib_qp_attr_mask_IB_QP_STATE != 0 {
            match next {
                sys::ib_qp_state_IB_QPS_RESET => {
                    clear(&mut state.recv);
                    clear(&mut state.pending);
                    state.state = next;
                }
                sys::ib_qp_state_IB_QPS_ERR => qp.fail(&mut g),
                _ => state.state = next,
            }
        }
        Ok(())
    }

    fn destroy_qp(&self, qp: &Qp) {
        let mut g = self.lock();
        if let Some(slot) = self.tables.get(&g).qps.get_mut(qp.qpn as usize) {
            *slot = null();
        }
        // Senders waiting on it (RNR) find nobody now: their retries end.
        self.wake_waiters(&mut g, qp.qpn);
    }

    fn post_send(&self, qp: &Qp, wr: &sys::ib_send_wr) -> Result {
        // In error every WR flushes, whatever it is (`ib_drain_sq` posts an RDMA WRITE
        // with no address, on UD QPs too): before any check of its contents.
        {
            let mut g = self.lock();
            if qp.state.get(&g).state == sys::ib_qp_state_IB_QPS_ERR {
                // SAFETY: the union's `wr_id` view: any bits are a valid u64.
                let id = unsafe { wr.__bindgen_anon_1.wr_id };
                let done = wc(
                    id,
                    sys::ib_wc_status_IB_WC_WR_FLUSH_ERR,
                    send_wc_opcode(wr.opcode),
                    qp,
                );
                qp.send_cq().push(&mut g, done);
                return Ok(());
            }
        }
        let (sges, count) = sges_of(wr.sg_list, wr.num_sge)?;
        let mut wqe = SendWqe {
            // SAFETY: the union's `wr_id` view: any bits are a valid u64.
            id: unsafe { wr.__bindgen_anon_1.wr_id },
            opcode: wr.opcode,
            signaled: wr.send_flags & sys::ib_send_flags_IB_SEND_SIGNALED as c_int != 0,
            sges,
            count,
            // SAFETY: both views of the union are a u32.
            ex: unsafe { wr.ex.imm_data },
            remote_addr: 0,
            rkey: 0,
            compare_add: 0,
            swap: 0,
            ah: null(),
            remote_qpn: 0,
            remote_qkey: 0,
            mr: null(),
            key: 0,
            access: 0,
        };
        let ptr: *const sys::ib_send_wr = wr;
        // The consumer posts the containing structure each opcode needs (the IB API's
        // contract; `container_of` in C drivers): the send WR is its first field.
        match wr.opcode {
            sys::ib_wr_opcode_IB_WR_RDMA_WRITE
            | sys::ib_wr_opcode_IB_WR_RDMA_WRITE_WITH_IMM
            | sys::ib_wr_opcode_IB_WR_RDMA_READ => {
                // SAFETY: see above: an `ib_rdma_wr`.
                let rdma = unsafe { &*ptr.cast::<sys::ib_rdma_wr>() };
                wqe.remote_addr = rdma.remote_addr;
                wqe.rkey = rdma.rkey;
            }
            sys::ib_wr_opcode_IB_WR_ATOMIC_CMP_AND_SWP
            | sys::ib_wr_opcode_IB_WR_ATOMIC_FETCH_AND_ADD => {
                // SAFETY: see above: an `ib_atomic_wr`.
                let atomic = unsafe { &*ptr.cast::<sys::ib_atomic_wr>() };
                wqe.remote_addr = atomic.remote_addr;
                wqe.rkey = atomic.rkey;
                wqe.compare_add = atomic.compare_add;
                wqe.swap = atomic.swap;
            }
            sys::ib_wr_opcode_IB_WR_REG_MR => {
                // SAFETY: see above: an `ib_reg_wr`.
                let reg = unsafe { &*ptr.cast::<sys::ib_reg_wr>() };
                if reg.mr.is_null() {
                    return Err(einval());
                }
                // SAFETY: an MR of this device (the consumer's contract).
                wqe.mr = unsafe { Object::<sys::ib_mr, Mr>::data(reg.mr) };
                wqe.key = reg.key;
                wqe.access = reg.access as u32;
            }
            sys::ib_wr_opcode_IB_WR_SEND | sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM
                if qp.qp_type == sys::ib_qp_type_IB_QPT_UD =>
            {
                // SAFETY: see above: an `ib_ud_wr` on a UD QP.
                let ud = unsafe { &*ptr.cast::<sys::ib_ud_wr>() };
                if ud.ah.is_null() {
                    return Err(einval());
                }
                // SAFETY: an AH of this device, alive while WRs use it.
                wqe.ah = unsafe { Object::<sys::ib_ah, Ah>::data(ud.ah) };
                wqe.remote_qpn = ud.remote_qpn;
                wqe.remote_qkey = ud.remote_qkey;
            }
            sys::ib_wr_opcode_IB_WR_SEND
            | sys::ib_wr_opcode_IB_WR_SEND_WITH_IMM
            | sys::ib_wr_opcode_IB_WR_SEND_WITH_INV
            | sys::ib_wr_opcode_IB_WR_LOCAL_INV => {}
            _ => return Err(errno(kernel::bindings::EOPNOTSUPP)),
        }
        if qp.qp_type == sys::ib_qp_type_IB_QPT_UD && wqe.ah.is_null() {
            return Err(einval());
        }
        let mut g = self.lock();
        let state = qp.state.get(&g);
        match state.state {
            sys::ib_qp_state_IB_QPS_RTS => {}
            sys::ib_qp_state_IB_QPS_ERR => {
                let done = wc(
                    wqe.id,
                    sys::ib_wc_status_IB_WC_WR_FLUSH_ERR,
                    send_wc_opcode(wqe.opcode),
                    qp,
                );
                qp.send_cq().push(&mut g, done);
                return Ok(());
            }
            _ => return Err(einval()),
        }
        if state.pending.len() >= state.max_send.max(1) {
            return Err(ENOMEM);
        }
        // Behind the waiting ones, in order; `progress` runs it when its turn comes.
        if push_within_capacity(&mut state.pending, wqe).is_err() {
            return Err(ENOMEM);
        }
        qp.progress(&mut g);
        Ok(())
    }

    fn post_recv(&self, qp: &Qp, wr: &sys::ib_recv_wr) -> Result {
        let (sges, count) = sges_of(wr.sg_list, wr.num_sge)?;
        let wqe = RecvWqe {
            // SAFETY: the union's `wr_id` view: any bits are a valid u64.
            id: unsafe { wr.__bindgen_anon_1.wr_id },
            sges,
            count,
        };
        let mut g = self.lock();
        let state = qp.state.get(&g);
        match state.state {
            sys::ib_qp_state_IB_QPS_RESET => return Err(einval()),
            sys::ib_qp_state_IB_QPS_ERR => {
                let done = wc(
                    wqe.id,
                    sys::ib_wc_status_IB_WC_WR_FLUSH_ERR,
                    sys::ib_wc_opcode_IB_WC_RECV,
                    qp,
                );
                qp.recv_cq().push(&mut g, done);
                return Ok(());
            }
            _ => {}
        }
        if push_within_capacity(&mut state.recv, wqe).is_err() {
            return Err(ENOMEM);
        }
        // A sender waiting for this receive (RNR) goes on.
        if qp.qp_type == sys::ib_qp_type_IB_QPT_RC {
            let dest = state.dest_qpn;
            if let Some(peer) = self.qp(&g, dest) {
                if peer.state.get(&g).dest_qpn == qp.qpn && !core::ptr::eq(peer, qp) {
                    peer.progress(&mut g);
                } else if core::ptr::eq(peer, qp) {
                    qp.progress(&mut g);
                }
            }
        }
        Ok(())
    }

    fn create_ah(&self, _ah: NonNull<sys::ib_ah>, attr: &sys::rdma_ah_attr) -> Result<Ah> {
        let grh = &attr.grh;
        if grh.sgid_attr.is_null() {
            return Err(einval());
        }
        // SAFETY: the IB core fills the source GID's attribute for a RoCE AH and holds it
        // for the call; `ib_gid`'s views are all bytes.
        let sgid = unsafe { (*grh.sgid_attr).gid.raw };
        Ok(Ah {
            sgid,
            // SAFETY: as above.
            dgid: unsafe { grh.dgid.raw },
            hop_limit: grh.hop_limit,
            traffic_class: grh.traffic_class,
            flow_label: grh.flow_label,
        })
    }

    fn get_dma_mr(
        &self,
        mr: NonNull<sys::ib_mr>,
        pd: NonNull<sys::ib_pd>,
        access: u32,
    ) -> Result<Mr> {
        self.new_mr(mr, pd, true, access, 0)
    }

    fn alloc_mr(
        &self,
        mr: NonNull<sys::ib_mr>,
        pd: NonNull<sys::ib_pd>,
        mr_type: u32,
        max_pages: u32,
    ) -> Result<Mr> {
        if mr_type != sys::ib_mr_type_IB_MR_TYPE_MEM_REG || max_pages == 0 || max_pages > MAX_PAGES
        {
            return Err(einval());
        }
        self.new_mr(mr, pd, false, 0, max_pages)
    }

    fn created_mr(&self, mr: &Mr) {
        let g = self.lock();
        if let Some(slot) = self.tables.get(&g).mrs.get_mut(mr.index as usize) {
            *slot = mr;
        }
    }

    unsafe fn map_mr_sg(
        &self,
        mr: &Mr,
        raw: NonNull<sys::ib_mr>,
        sg: *mut sys::scatterlist,
        nents: c_int,
        offset: *mut c_uint,
    ) -> c_int {
        if mr.dma {
            return EINVAL.to_errno();
        }
        let g = self.lock();
        // Only the staged list changes: a registration in force keeps its own copy.
        clear(&mut mr.state.get(&g).staged.pages);
        // The callback reaches the state itself; no borrow of it is live across the call.
        // SAFETY: an MR of ours; the list is what `ib_map_mr_sg` was given (the caller's
        // contract); `page_size` was set by `ib_map_mr_sg` before the call.
        let mapped =
            unsafe { sys::ib_sg_to_pages(raw.as_ptr(), sg, nents, offset, Some(set_page)) };
        drop(g);
        mapped
    }

    fn dereg_mr(&self, mr: &Mr) {
        let g = self.lock();
        if let Some(slot) = self.tables.get(&g).mrs.get_mut(mr.index as usize) {
            *slot = null();
        }
    }
}

impl SoftDevice {
    fn new_mr(
        &self,
        mr: NonNull<sys::ib_mr>,
        pd: NonNull<sys::ib_pd>,
        dma: bool,
        access: u32,
        max_pages: u32,
    ) -> Result<Mr> {
        let state = MrState {
            key: 0,
            valid: dma,
            access,
            staged: page_list(max_pages)?,
            active: page_list(max_pages)?,
        };
        let g = self.lock();
        let tables = self.tables.get(&g);
        // Index 0 is the local DMA key's.
        let Some(index) = (1..MAX_MR).find(|&i| tables.mrs.get(i).is_some_and(|m| m.is_null()))
        else {
            return Err(ENOMEM);
        };
        if let Some(slot) = tables.mrs.get_mut(index) {
            *slot = NonNull::<Mr>::dangling().as_ptr();
        }
        drop(g);
        let key = (index as u32) << 8;
        let mut state = state;
        state.key = key;
        // SAFETY: the MR being set up (zeroed by the layer); the keys are the driver's.
        unsafe {
            (*mr.as_ptr()).lkey = key;
            (*mr.as_ptr()).rkey = key;
        }
        Ok(Mr {
            raw: mr,
            pd: pd.as_ptr(),
            index: index as u32,
            dma,
            state: Locked::new(state),
        })
    }
}

/// The EUI-64 of a MAC, as RoCE makes a port GUID.
fn guid(mac: &[u8; 6]) -> u64 {
    u64::from_be_bytes([
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

struct LoopbackModule {
    /// Dropped first: unregisters the device.
    registration: Option<Registration<SoftDevice>>,
    glue: *mut Glue,
}

// SAFETY: the glue is only used to free it, at unload.
unsafe impl Send for LoopbackModule {}
// SAFETY: as above.
unsafe impl Sync for LoopbackModule {}

impl kernel::Module for LoopbackModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: allocates; null on failure.
        let glue = unsafe { tilde_lo_glue_new() };
        if glue.is_null() {
            return Err(ENOMEM);
        }
        let mut this = Self {
            registration: None,
            glue,
        };
        let mut qps = KVec::with_capacity(MAX_QP, GFP_KERNEL)?;
        let mut mrs = KVec::with_capacity(MAX_MR, GFP_KERNEL)?;
        for _ in 0..MAX_QP {
            qps.push(null(), GFP_KERNEL)?;
        }
        for _ in 0..MAX_MR {
            mrs.push(null(), GFP_KERNEL)?;
        }
        let device = SoftDevice {
            glue,
            raw: Locked::new(null_mut()),
            tables: Locked::new(Tables {
                qps,
                mrs,
                next_qpn: FIRST_QPN,
            }),
            mac: Locked::new([0; 6]),
        };
        let registration = Registration::new(module, device, c"tilde_lo%d", |ibdev, state| {
            // The port count first: binding the netdev sets up the port data.
            ibdev.node_type = 1; // RDMA_NODE_IB_CA
            ibdev.phys_port_cnt = 1;
            ibdev.num_comp_vectors = 1;
            ibdev.local_dma_lkey = LOCAL_DMA_LKEY;
            let mut mac = [0u8; 6];
            // SAFETY: the device is allocated and not registered; `mac` has 6 bytes.
            kernel::error::to_result(unsafe {
                tilde_lo_attach(glue, core::ptr::from_mut(ibdev).cast(), mac.as_mut_ptr())
            })?;
            ibdev.node_guid = guid(&mac).to_be();
            let g = state.lock();
            *state.raw.get(&g) = ibdev;
            *state.mac.get(&g) = mac;
            Ok(())
        })?;
        pr_info!(
            "{}: registered: RoCE loopback device\n",
            registration.name().as_str()
        );
        this.registration = Some(registration);
        Ok(this)
    }
}

impl Drop for LoopbackModule {
    fn drop(&mut self) {
        // Unregisters the device, stops the netdev notifier (the state's drop) and frees
        // the device.
        drop(self.registration.take());
        // SAFETY: the device is unregistered and freed; nothing uses the glue now.
        unsafe { tilde_lo_glue_free(self.glue) };
        pr_info!("unloaded\n");
    }
}
