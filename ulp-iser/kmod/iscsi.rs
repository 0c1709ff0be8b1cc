// SPDX-License-Identifier: GPL-2.0
//! A safe binding of the kernel's iSCSI transport class and libiscsi, for tilde_iser.
//!
//! [`Transport`] is what a transport is to them: its endpoint type and its callbacks.
//! [`iscsi_transport!`] makes the C callbacks of `struct iscsi_transport` from it (the
//! tables themselves are C, `transport.c`: they hold `THIS_MODULE`, bit fields and
//! libiscsi's own functions as each kernel declares them, which is also where the
//! kernels' differences in this API stay). Every `unsafe` of the transport is here; the
//! datamover (`iser.rs`) has none.
//!
//! libiscsi's locking rules are the types:
//!
//! - [`XmitTask`] exists only inside `xmit_task`, which libiscsi calls under the
//!   session's `frwd_lock` (a host without a transmit workqueue, as this one, sends from
//!   `queuecommand` and `send_pdu`): what needs that lock, the task's unsolicited Data-Out
//!   sequence ([`Command::next_data_out`]), is reached only through it.
//! - [`CleanupTask`] exists only inside `cleanup_task`, which libiscsi calls under the
//!   session's `back_lock` as a task ends; [`BackLocked`] only inside
//!   [`Conn::back_locked`], which takes that lock: looking a command up by its tag and
//!   completing a PDU under the same hold ([`BackLocked::task_index`],
//!   [`BackLocked::complete_pdu`]).
//! - [`Conn`] is the bound connection on the completion path (softirq, or the RDMA CM's
//!   handlers), reached through a [`ConnCell`] under RCU: unbinding waits for its readers,
//!   so a `Conn` never outlives its connection. It reports failures
//!   ([`Conn::fail`], which takes `frwd_lock`: never inside `back_locked`) and completes
//!   PDUs.
//! - [`TaskRef`] is a counted reference to a task, dropped with `iscsi_put_task`;
//!   [`TaskEnded`] is libiscsi's word that a task ended, which lets a region give its
//!   pages back before its key is invalidated.

use core::marker::PhantomData;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::ptr::NonNull;
use core::time::Duration;

use kernel::error::to_result;
use kernel::ffi::{c_char, c_int, c_void};
use kernel::prelude::*;
use rdma_core::{
    device::Device,
    dma::{DmaDirection, SgMapping},
    kernel_api::{
        atomic::{Acquire, Atomic, Full},
        errno,
    },
    mr::SgRegion,
    sys,
};
use ulp_iser::wire::BHS_LEN;

// The C helpers of `transport.c` only this binding uses (the older ones are declared in
// `tilde_rdma.h`, with the bindings). The connection and header go as `void *`: bindgen's
// structs embed zero-sized lock maps, which the FFI lint refuses behind a pointer.
extern "C" {
    fn tilde_iser_back_lock(conn: *mut c_void);
    fn tilde_iser_back_unlock(conn: *mut c_void);
    fn tilde_iser_complete_pdu_locked(
        conn: *mut c_void,
        hdr: *mut c_void,
        data: *mut c_char,
        datalen: c_int,
    ) -> c_int;
    fn tilde_iser_rcu_read_lock();
    fn tilde_iser_rcu_read_unlock();
    fn tilde_iser_synchronize_rcu();
}

/// `ISCSI_ERR_CONN_FAILED`, `ISCSI_ERR_NO_SCSI_CMD`, `ISCSI_ERR_PROTO`.
const CONN_FAILED: u32 = sys::iscsi_err_ISCSI_ERR_CONN_FAILED;
const NO_SCSI_CMD: c_int = sys::iscsi_err_ISCSI_ERR_NO_SCSI_CMD as c_int;
const PROTO: c_int = sys::iscsi_err_ISCSI_ERR_PROTO as c_int;
/// The tag of a PDU no response answers (`RESERVED_ITT`).
const RESERVED_ITT: u32 = 0xffff_ffff;
/// `AF_INET`.
const AF_INET: u16 = 2;

// A Data-Out header is one BHS.
const _: () = assert!(core::mem::size_of::<sys::iscsi_data>() == BHS_LEN);

/// An iSCSI transport: its endpoint (what iscsid connects, then binds a connection to)
/// and the callbacks libiscsi and the iSCSI class make.
pub(crate) trait Transport: Sized + Send + Sync + 'static {
    /// The most tasks (commands and management) a session may have: the SCSI host's
    /// `can_queue`, and a bind to a larger session is refused. Each task's
    /// [`XmitTask::index`] is below it.
    const TASKS_MAX: u16;
    /// The data segment a received PDU may carry (`max_recv_dlength`, fixed).
    const MAX_RECV_DLENGTH: u32;
    /// The data segment a sent PDU may carry: the target's MaxRecvDataSegmentLength is
    /// lowered to it (sending less is always allowed).
    const MAX_XMIT_DLENGTH: u32;

    /// `ep_connect`: starts connecting to `dst`.
    fn connect(dst: SocketAddrV4) -> Result<KBox<Self>>;
    /// `ep_poll`: waits up to `timeout` for the connection.
    fn poll(&self, timeout: Duration) -> Connecting;
    /// The target's address, as iscsid reads it back.
    fn destination(&self) -> SocketAddrV4;
    /// The RDMA device of a connected endpoint: its parent is the SCSI host's.
    fn device(&self) -> Option<&Device>;
    /// Where the bound connection is kept for the completion path.
    fn conn_cell(&self) -> &ConnCell;
    /// Whether a connection may be bound now (connected, not failed, not stopping).
    /// Asked before the bind and again after it, so a loss that raced the bind undoes it.
    fn bindable(&self) -> bool;
    /// Stops the endpoint's traffic: afterwards no completion of it reaches libiscsi
    /// until it is unbound. Called by `stop_conn` before libiscsi's stop, and by
    /// `ep_disconnect` before the endpoint is unbound and dropped.
    fn quiesce(&self);
    /// `set_param`: what to do with a parameter iscsid sets (`value` as iscsid wrote it).
    fn set_param(param: Param, value: &[u8]) -> Result<ParamUse>;
    /// `start_conn`: whether the negotiated parameters suit the transport.
    fn start(negotiated: &Negotiated) -> Result;
    /// `xmit_task`: sends a task's PDU, under `frwd_lock` (no sleeping). An error hands
    /// the task back to libiscsi, which requeues it: nothing may be half-sent then.
    fn xmit(&self, task: XmitTask<'_>) -> Result;
    /// `cleanup_task`: a task ends (completed, aborted or failed), under `back_lock`.
    fn cleanup(&self, task: CleanupTask<'_>);
}

/// What `ep_poll` answers.
pub(crate) enum Connecting {
    Connected,
    NotYet,
    Failed,
}

/// A connection parameter (`enum iscsi_param`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param(sys::iscsi_param);

impl Param {
    pub(crate) const HEADER_DIGEST: Self = Self(sys::iscsi_param_ISCSI_PARAM_HDRDGST_EN);
    pub(crate) const DATA_DIGEST: Self = Self(sys::iscsi_param_ISCSI_PARAM_DATADGST_EN);
    pub(crate) const IF_MARKER: Self = Self(sys::iscsi_param_ISCSI_PARAM_IFMARKER_EN);
    pub(crate) const OF_MARKER: Self = Self(sys::iscsi_param_ISCSI_PARAM_OFMARKER_EN);
    pub(crate) const MAX_RECV_DLENGTH: Self = Self(sys::iscsi_param_ISCSI_PARAM_MAX_RECV_DLENGTH);

    /// The number, for dmesg.
    pub(crate) fn raw(self) -> u32 {
        self.0
    }
}

/// What [`Transport::set_param`] decides.
pub(crate) enum ParamUse {
    /// libiscsi keeps the value.
    Libiscsi,
    /// Accepted, and not libiscsi's to change.
    Fixed,
}

/// The negotiated parameters `start_conn` checks.
pub(crate) struct Negotiated {
    pub(crate) initial_r2t: bool,
    pub(crate) first_burst: usize,
    pub(crate) max_xmit_dlength: usize,
}

/// The transport's registration with the iSCSI class: unregistered on drop.
pub(crate) struct Registration(());

impl Registration {
    /// Registers the transport of `transport.c`, whose callbacks [`iscsi_transport!`]
    /// made; once per module load.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: registers the static table of transport.c, which lives as long as the
        // module; the class refuses a second registration of the name, so a
        // `Registration` is the only one and unregisters it on drop.
        to_result(unsafe { sys::tilde_iser_register() })?;
        Ok(Self(()))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; the iSCSI class refuses the unload while a session
        // of the transport exists (it holds the module).
        unsafe { sys::tilde_iser_unregister() };
    }
}

/// Runs `f` with bottom halves disabled on this CPU: for taking, in process context, a
/// lock that softirq completion handlers take too.
pub(crate) fn with_bh_disabled<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain bottom-half disabling, paired below.
    unsafe { sys::tilde_iser_bh_disable() };
    let result = f();
    // SAFETY: paired with the disable above.
    unsafe { sys::tilde_iser_bh_enable() };
    result
}

/// The per-task data libiscsi allocates for the transport: the BHS it builds.
#[repr(C, align(8))]
struct TaskData {
    bhs: [u8; BHS_LEN],
}

/// The session's `frwd_lock`, held: what [`XmitTask`] borrows for its life, so that it
/// (and its [`Command`] and [`DataOut`]) stays on the CPU and in the call that holds the
/// lock. Never made: the trampoline's call is the proof.
pub(crate) struct FrwdLocked(PhantomData<*mut ()>);

/// A task libiscsi hands to `xmit_task`.
///
/// Invariant: `task` is a prepared task of a connection bound to the endpoint `xmit` runs
/// on, its `hdr` the [`TaskData`] `pdu_alloc` set, for `'a`, under `frwd_lock`.
pub(crate) struct XmitTask<'a> {
    task: NonNull<sys::iscsi_task>,
    _frwd: PhantomData<&'a FrwdLocked>,
}

impl<'a> XmitTask<'a> {
    /// The task's index in the session's pool: below [`Transport::TASKS_MAX`] (the bind
    /// checks the session's size), stable for the task's life.
    pub(crate) fn index(&self) -> usize {
        // SAFETY: the task is valid (invariant); libiscsi sets `itt` to the pool index
        // once, when it allocates the pool.
        unsafe { (*self.task.as_ptr()).itt as usize }
    }

    /// The BHS libiscsi built.
    pub(crate) fn bhs(&self) -> &[u8; BHS_LEN] {
        // SAFETY: `hdr` is the task's `TaskData` (`pdu_alloc`), built by libiscsi before
        // the xmit and left alone during it.
        unsafe { &(*(*self.task.as_ptr()).hdr.cast::<TaskData>()).bhs }
    }

    /// The SCSI command the task carries, or `None` for a management PDU.
    pub(crate) fn command(&mut self) -> Option<Command<'_>> {
        // SAFETY: the task is valid (invariant).
        let sc = NonNull::new(unsafe { (*self.task.as_ptr()).sc })?;
        Some(Command {
            task: self.task,
            sc,
            _task: PhantomData,
        })
    }

    /// The data segment of a management PDU (login and text key-value pairs, ping data).
    pub(crate) fn data(&self) -> &[u8] {
        // SAFETY: the task is valid (invariant); `data` holds `data_count` bytes of the
        // PDU's data segment that libiscsi keeps until the task ends.
        unsafe {
            let task = self.task.as_ptr();
            match ((*task).data_count, (*task).data.cast::<u8>()) {
                (0, _) => &[],
                (_, data) if data.is_null() => &[],
                (count, data) => core::slice::from_raw_parts(data, count as usize),
            }
        }
    }

    /// A management PDU no response answers (a NOP-Out that answers a NOP-In): the
    /// transport keeps the task until the PDU is sent, with this reference; `None` for
    /// any other PDU, whose response ends the task.
    pub(crate) fn hold_until_sent(&self) -> Option<TaskRef> {
        if !self.unanswered() {
            return None;
        }
        TaskRef::get(self.task)
    }

    fn unanswered(&self) -> bool {
        // SAFETY: the task is valid (invariant); `sc` and the tag libiscsi wrote are
        // read-only here.
        unsafe {
            let task = self.task.as_ptr();
            (*task).sc.is_null() && (*(*task).hdr).itt == RESERVED_ITT
        }
    }
}

/// The SCSI command of an [`XmitTask`], under `frwd_lock`.
///
/// Invariant: `task` is as in [`XmitTask`]; `sc` is its command, with its data buffer,
/// immediate data and unsolicited Data-Out counted by libiscsi.
pub(crate) struct Command<'a> {
    task: NonNull<sys::iscsi_task>,
    sc: NonNull<sys::scsi_cmnd>,
    _task: PhantomData<&'a mut ()>,
}

impl Command<'_> {
    /// The command's data length (`scsi_bufflen`).
    pub(crate) fn buffer_len(&self) -> usize {
        // SAFETY: the command is valid (invariant).
        unsafe { sys::tilde_scsi_bufflen(self.sc.as_ptr()) as usize }
    }

    /// Bytes libiscsi sends as immediate data.
    pub(crate) fn immediate(&self) -> usize {
        // SAFETY: the task is valid (invariant).
        unsafe { (*self.task.as_ptr()).imm_count as usize }
    }

    /// Bytes libiscsi sends as unsolicited Data-Out after the immediate data.
    pub(crate) fn unsolicited(&self) -> usize {
        // SAFETY: the task is valid (invariant).
        unsafe { (*self.task.as_ptr()).unsol_r2t.data_length as usize }
    }

    /// The target's MaxRecvDataSegmentLength (as lowered by `set_param`).
    pub(crate) fn max_data_segment(&self) -> usize {
        // SAFETY: the task and its connection are valid (invariant); the parameter is
        // set before the connection starts.
        unsafe { (*(*self.task.as_ptr()).conn).max_xmit_dlength as usize }
    }

    /// Copies the command's data from `offset` into `dest`; how many bytes it copied.
    pub(crate) fn copy_data(&self, offset: usize, dest: &mut [u8]) -> usize {
        copy_from_command(self.sc, offset, dest)
    }

    /// Maps the command's pages for `device`, for a region to lend to the target.
    ///
    /// The mapping must be given back (dropped, or released through [`TaskEnded`]) by
    /// the time the task ends: the pages are the SCSI layer's again after its cleanup.
    pub(crate) fn map_pages(&self, device: &Device, direction: DmaDirection) -> Result<SgMapping> {
        // SAFETY: the command is valid (invariant); its scatterlist and pages stay valid
        // until the command completes, which is after the task's cleanup, and libiscsi
        // sends a command once (an xmit that fails hands it back unmapped: the datamover
        // maps last, after everything that can fail). The mapping is given back by the
        // cleanup, except when the cleanup finds it with the device (a REG_MR whose
        // completion comes late): an open end docs/open-ends.md names, the same window ib_iser
        // has.
        unsafe {
            SgMapping::new(
                device,
                sys::tilde_scsi_sglist(self.sc.as_ptr()),
                sys::tilde_scsi_sg_count(self.sc.as_ptr()),
                direction,
            )
        }
    }

    /// The command's next unsolicited Data-Out PDU: libiscsi builds its header and
    /// advances the sequence (DataSN); dropping it unsent undoes that, [`DataOut::sent`]
    /// counts its data as sent.
    pub(crate) fn next_data_out(&mut self) -> DataOut<'_> {
        let mut hdr = sys::iscsi_data::default();
        // SAFETY: the task is valid and under `frwd_lock` (invariant), the one place its
        // Data-Out sequence changes; libiscsi fills `hdr`.
        unsafe {
            let task = self.task.as_ptr();
            sys::iscsi_prep_data_out_pdu(task, &mut (*task).unsol_r2t, &mut hdr)
        };
        DataOut {
            task: self.task,
            sc: self.sc,
            hdr,
            sent: false,
            _command: PhantomData,
        }
    }
}

/// Copies a command's data from `offset` into `dest`.
fn copy_from_command(sc: NonNull<sys::scsi_cmnd>, offset: usize, dest: &mut [u8]) -> usize {
    let Ok(skip) = isize::try_from(offset) else {
        return 0;
    };
    // SAFETY: the command is valid (the callers' invariant); the copy reads its
    // scatterlist and writes at most `dest.len()` bytes into `dest`.
    unsafe {
        sys::sg_pcopy_to_buffer(
            sys::tilde_scsi_sglist(sc.as_ptr()),
            sys::tilde_scsi_sg_count(sc.as_ptr()),
            dest.as_mut_ptr().cast::<c_void>(),
            dest.len(),
            skip,
        )
    }
}

/// An unsolicited Data-Out PDU being sent (see [`Command::next_data_out`]).
pub(crate) struct DataOut<'a> {
    task: NonNull<sys::iscsi_task>,
    sc: NonNull<sys::scsi_cmnd>,
    hdr: sys::iscsi_data,
    sent: bool,
    _command: PhantomData<&'a mut ()>,
}

impl DataOut<'_> {
    /// The PDU's BHS.
    pub(crate) fn bhs(&self) -> &[u8; BHS_LEN] {
        // SAFETY: `iscsi_data` is the 48-byte BHS (asserted above), plain bytes with no
        // padding, and no stricter alignment than a byte array needs.
        unsafe { &*core::ptr::from_ref(&self.hdr).cast::<[u8; BHS_LEN]>() }
    }

    /// Copies the command's data from `offset` into `dest`; how many bytes it copied.
    pub(crate) fn copy_data(&self, offset: usize, dest: &mut [u8]) -> usize {
        copy_from_command(self.sc, offset, dest)
    }

    /// The PDU was posted: its data counts as sent.
    pub(crate) fn sent(mut self) {
        self.sent = true;
        // SAFETY: the task is under `frwd_lock` (the command's invariant): the sequence's
        // progress is the transport's to keep, as `iscsi_prep_data_out_pdu` left it.
        unsafe {
            let r2t = &mut (*self.task.as_ptr()).unsol_r2t;
            r2t.sent += r2t.data_count;
        }
    }
}

impl Drop for DataOut<'_> {
    fn drop(&mut self) {
        if !self.sent {
            // SAFETY: as in `sent`: undoes this PDU's DataSN, as ib_iser does, so a retry
            // sends the same.
            unsafe {
                let r2t = &mut (*self.task.as_ptr()).unsol_r2t;
                r2t.datasn = r2t.datasn.wrapping_sub(1);
            }
        }
    }
}

/// A counted reference to a task: libiscsi frees the task only after it is dropped
/// (`iscsi_put_task`, which takes `back_lock`: never drop one under it).
pub(crate) struct TaskRef(NonNull<sys::iscsi_task>);

// SAFETY: the reference is a refcount on libiscsi's task, taken and dropped from any
// context (the put takes `back_lock` with bottom halves off).
unsafe impl Send for TaskRef {}
// SAFETY: `&TaskRef` gives nothing.
unsafe impl Sync for TaskRef {}

impl TaskRef {
    fn get(task: NonNull<sys::iscsi_task>) -> Option<Self> {
        // SAFETY: the caller's task is live (libiscsi holds a reference during the call).
        unsafe { sys::iscsi_get_task(task.as_ptr()) }.then_some(Self(task))
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: the reference `get` took, on a task of a live session: a `TaskRef`
        // travels with a posted WR of the task's connection, and every WR comes back
        // (flushed by `quiesce`) before the connection is stopped and before its endpoint
        // is freed, both of which come before the session is destroyed.
        unsafe { sys::iscsi_put_task(self.0.as_ptr()) };
    }
}

/// A task libiscsi hands to `cleanup_task`, under `back_lock`.
///
/// Invariant: `task` is a task of a connection of this transport, ending.
pub(crate) struct CleanupTask<'a> {
    task: NonNull<sys::iscsi_task>,
    _back: PhantomData<&'a *mut ()>,
}

impl CleanupTask<'_> {
    /// The task's index in the session's pool (see [`XmitTask::index`]).
    pub(crate) fn index(&self) -> usize {
        // SAFETY: the task is valid (invariant).
        unsafe { (*self.task.as_ptr()).itt as usize }
    }

    /// Whether the task carried a SCSI command (else a management PDU).
    pub(crate) fn is_command(&self) -> bool {
        // SAFETY: the task is valid (invariant).
        !unsafe { (*self.task.as_ptr()).sc }.is_null()
    }

    /// libiscsi's word that this task ended.
    pub(crate) fn ended(&self) -> TaskEnded {
        TaskEnded(())
    }
}

/// A task ended without a response that settled its data: its connection is stopping
/// (its QP flushed in error: no peer reaches any key of it), or task management ended
/// it, after which the target moves none of its data (RFC 7143 §11.5.1). Its region may
/// give the command's pages back before the key is invalidated.
pub(crate) struct TaskEnded(());

impl TaskEnded {
    /// Gives back the pages the ended task's command mapped into `region` (its own
    /// region: the token speaks for that task only), its LOCAL_INV still to come.
    pub(crate) fn release_pages(&self, region: &mut SgRegion) -> Option<SgMapping> {
        // SAFETY: the task ended (type invariant), so no peer accesses its region under
        // the key any more; the same window ib_iser's cleanup has.
        unsafe { region.release_pages() }
    }
}

/// The `iscsi_conn` bound to an endpoint, for the completion path: set by `bind_conn`,
/// cleared when the connection is unbound (stop, or `ep_disconnect`).
pub(crate) struct ConnCell {
    conn: Atomic<*mut sys::iscsi_conn>,
}

// SAFETY: the pointer is only dereferenced by libiscsi's functions, under RCU while it
// is bound (`with`), and libiscsi locks what they share.
unsafe impl Send for ConnCell {}
// SAFETY: as above.
unsafe impl Sync for ConnCell {}

impl ConnCell {
    pub(crate) fn new() -> Self {
        Self {
            conn: Atomic::new(core::ptr::null_mut()),
        }
    }

    /// Runs `f` with the bound connection, if any. No sleeping in `f` (RCU).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Conn<'_>) -> R) -> Option<R> {
        // SAFETY: plain RCU read-side section, ended below.
        unsafe { tilde_iser_rcu_read_lock() };
        let result = NonNull::new(self.conn.load(Acquire)).map(|conn| {
            f(&Conn {
                conn,
                _rcu: PhantomData,
            })
        });
        // SAFETY: ends the section begun above.
        unsafe { tilde_iser_rcu_read_unlock() };
        result
    }

    fn bind(&self, conn: *mut sys::iscsi_conn) {
        self.conn.store(conn, Full);
    }

    /// Clears the cell and waits until no `with` sees the connection; the connection it
    /// held, if any. Sleeps.
    fn unbind(&self) -> Option<NonNull<sys::iscsi_conn>> {
        let conn = NonNull::new(self.conn.xchg(core::ptr::null_mut(), Full))?;
        // SAFETY: waits for RCU readers, in process context (stop_conn, ep_disconnect).
        unsafe { tilde_iser_synchronize_rcu() };
        Some(conn)
    }
}

/// A bound connection, on the completion path.
///
/// Invariant: `conn` is a live `iscsi_conn` bound to an endpoint of this transport; the
/// RCU read-side section of [`ConnCell::with`] keeps it bound for `'a`.
pub(crate) struct Conn<'a> {
    conn: NonNull<sys::iscsi_conn>,
    _rcu: PhantomData<&'a *mut ()>,
}

/// What libiscsi answered to a PDU it could not take; the connection must fail with it.
#[derive(Clone, Copy)]
pub(crate) struct Refused(c_int);

impl Refused {
    /// libiscsi's `enum iscsi_err`, for dmesg.
    pub(crate) fn code(self) -> i32 {
        self.0
    }
}

impl Conn<'_> {
    /// Fails the connection: libiscsi starts recovery (`iscsi_conn_failure`, which takes
    /// `frwd_lock`; never call it inside [`Conn::back_locked`]).
    pub(crate) fn fail(&self) {
        // SAFETY: the connection is live (invariant).
        unsafe { sys::iscsi_conn_failure(self.conn.as_ptr(), CONN_FAILED) };
    }

    /// Fails the connection with what libiscsi said of a PDU.
    pub(crate) fn refused(&self, refused: Refused) {
        // SAFETY: the connection is live (invariant).
        unsafe { sys::iscsi_conn_failure(self.conn.as_ptr(), refused.0 as u32) };
    }

    /// Hands libiscsi a received PDU (`pdu`: BHS, AHS and data from `data_offset` to the
    /// end); takes `back_lock`.
    pub(crate) fn complete_pdu(&self, pdu: &mut [u8], data_offset: usize) -> Result<(), Refused> {
        self.back_locked(|back| back.complete_pdu(pdu, data_offset))
    }

    /// Runs `f` under the session's `back_lock` (bottom halves off): no sleeping, and no
    /// [`Conn::fail`] or [`Conn::complete_pdu`] inside.
    pub(crate) fn back_locked<R>(&self, f: impl FnOnce(&BackLocked<'_>) -> R) -> R {
        // SAFETY: the connection and its session are live (invariant); unlocked below.
        unsafe { tilde_iser_back_lock(self.conn.as_ptr().cast()) };
        let result = f(&BackLocked {
            conn: self.conn,
            _lock: PhantomData,
        });
        // SAFETY: taken above.
        unsafe { tilde_iser_back_unlock(self.conn.as_ptr().cast()) };
        result
    }
}

/// Proof of holding the session's `back_lock`, with the connection.
///
/// Invariant: as [`Conn`]'s, and `back_lock` is held for `'a`.
pub(crate) struct BackLocked<'a> {
    conn: NonNull<sys::iscsi_conn>,
    _lock: PhantomData<&'a *mut ()>,
}

impl BackLocked<'_> {
    /// The pool index of the SCSI command whose tag (as on the wire) is `itt`, if the
    /// session has such a command in flight.
    pub(crate) fn task_index(&self, itt: u32) -> Option<usize> {
        // SAFETY: the connection is live and `back_lock` held (invariant), as the lookup
        // requires; it checks the tag's index and age itself.
        let task = unsafe { sys::iscsi_itt_to_ctask(self.conn.as_ptr(), itt) };
        // SAFETY: a task of the session's pool, which `back_lock` keeps from being freed.
        NonNull::new(task).map(|task| unsafe { (*task.as_ptr()).itt } as usize)
    }

    /// Hands libiscsi a received PDU (see [`Conn::complete_pdu`]). libiscsi ends the task
    /// it answers (its cleanup runs here). For a NOP-In that asks for an answer, libiscsi
    /// lets go of `back_lock` while it sends the NOP-Out (under `frwd_lock`): a lookup
    /// made before is only good for a SCSI Response.
    pub(crate) fn complete_pdu(&self, pdu: &mut [u8], data_offset: usize) -> Result<(), Refused> {
        let aligned = pdu
            .as_ptr()
            .align_offset(core::mem::align_of::<sys::iscsi_hdr>())
            == 0;
        let data_len = pdu.len().checked_sub(data_offset);
        let (true, true, Some(data_len)) = (aligned, data_offset >= BHS_LEN, data_len) else {
            return Err(Refused(PROTO));
        };
        let len = c_int::try_from(data_len).map_err(|_| Refused(PROTO))?;
        let base = pdu.as_mut_ptr();
        // SAFETY: the connection is live and `back_lock` held (invariant); `pdu` is a
        // whole PDU aligned for `iscsi_hdr`, its data `len` bytes from `data_offset` (in
        // bounds, checked above), which libiscsi only reads during the call.
        let rc = unsafe {
            tilde_iser_complete_pdu_locked(
                self.conn.as_ptr().cast(),
                base.cast(),
                base.add(data_offset).cast(),
                len,
            )
        };
        match rc {
            0 | NO_SCSI_CMD => Ok(()),
            rc => Err(Refused(rc)),
        }
    }
}

/// `ERR_PTR(error)`.
fn err_ptr<T>(error: Error) -> *mut T {
    error.to_errno() as isize as *mut T
}

/// The endpoint an iSCSI endpoint carries, if any.
///
/// # Safety
///
/// `ep` is a live `iscsi_endpoint` of this transport; its `dd_data` is null or a `T` of
/// `ep_connect` until `ep_disconnect`, which the class does not run meanwhile.
unsafe fn endpoint<'a, T: Transport>(ep: *mut sys::iscsi_endpoint) -> Option<&'a T> {
    // SAFETY: as the caller promises.
    unsafe { ep.as_ref()?.dd_data.cast::<T>().as_ref() }
}

/// The endpoint a bound `iscsi_conn` carries, if any.
///
/// # Safety
///
/// `conn` is a valid `iscsi_conn` of this transport, and the caller holds one of the
/// session's locks or runs in the class's serialized process context.
unsafe fn endpoint_of<'a, T: Transport>(conn: *mut sys::iscsi_conn) -> Option<&'a T> {
    // SAFETY: `dd_data` is null or the endpoint bind set; `unbind` clears it under both
    // of libiscsi's locks before the endpoint is freed, whichever of stop and
    // ep_disconnect comes first.
    unsafe { conn.as_ref()?.dd_data.cast::<T>().as_ref() }
}

/// Unbinds the connection bound to `endpoint`, if any: from here on no `ConnCell::with`
/// sees it, and xmit and task cleanup do not find the endpoint. Sleeps.
fn unbind<T: Transport>(endpoint: &T) {
    if let Some(conn) = endpoint.conn_cell().unbind() {
        // SAFETY: the connection was bound to `endpoint`, and the class keeps it alive
        // until its stop (which comes before or after this, never during); the helper
        // clears its `dd_data` under frwd_lock and back_lock if it is still `endpoint`.
        unsafe {
            sys::tilde_iser_unbind(
                conn.as_ptr(),
                core::ptr::from_ref(endpoint).cast_mut().cast(),
            )
        };
    }
}

/// The callbacks of `transport.c`'s table for `T`, each called by libiscsi or the iSCSI
/// class with pointers valid for the call. [`iscsi_transport!`] exports them.
pub(crate) struct Adapter<T>(PhantomData<T>);

impl<T: Transport> Adapter<T> {
    /// `create_session`: a SCSI host with one session, its limits from the endpoint.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn session_create(
        ep: *mut sys::iscsi_endpoint,
        cmds_max: u16,
        qdepth: u16,
        initial_cmdsn: u32,
    ) -> *mut sys::iscsi_cls_session {
        // SAFETY: the class passes a null or live endpoint of ours, held for the call.
        let Some(endpoint) = (unsafe { endpoint::<T>(ep) }) else {
            pr_err!("a session needs a connected endpoint (open-iscsi 2.0-870 or later)\n");
            return core::ptr::null_mut();
        };
        let Some(device) = endpoint.device() else {
            return core::ptr::null_mut();
        };
        // SAFETY: allocates a host of our template.
        let shost = unsafe { sys::tilde_iser_host_alloc() };
        if shost.is_null() {
            return core::ptr::null_mut();
        }
        let can_queue = cmds_max.min(T::TASKS_MAX);
        // SAFETY: the host is ours until added; the device is valid (the endpoint holds
        // it).
        unsafe {
            (*shost).cmd_per_lun = i16::try_from(qdepth).unwrap_or(i16::MAX);
            (*shost).can_queue = can_queue.into();
            if sys::iscsi_host_add(shost, device.parent()) != 0 {
                sys::iscsi_host_free(shost);
                return core::ptr::null_mut();
            }
        }
        // SAFETY: the host was added; libiscsi sizes the session's pool from `can_queue`
        // and gives each task a `TaskData`.
        let session = unsafe {
            sys::tilde_iser_session_setup(
                shost,
                can_queue,
                core::mem::size_of::<TaskData>() as c_int,
                initial_cmdsn,
            )
        };
        if session.is_null() {
            // SAFETY: added above and unused.
            unsafe {
                sys::iscsi_host_remove(shost, false);
                sys::iscsi_host_free(shost);
            }
        }
        session
    }

    /// `destroy_session`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn session_destroy(cls_session: *mut sys::iscsi_cls_session) {
        // SAFETY: the class passes a session of ours, whose host `session_create` made.
        unsafe {
            let shost = sys::tilde_iscsi_session_to_shost(cls_session);
            sys::iscsi_session_teardown(cls_session);
            sys::iscsi_host_remove(shost, false);
            sys::iscsi_host_free(shost);
        }
    }

    /// `create_conn`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn conn_create(
        cls_session: *mut sys::iscsi_cls_session,
        conn_idx: u32,
    ) -> *mut sys::iscsi_cls_conn {
        // SAFETY: the class passes a session of ours.
        let cls_conn = unsafe { sys::iscsi_conn_setup(cls_session, 0, conn_idx) };
        if !cls_conn.is_null() {
            // SAFETY: a new connection, ours; what it can receive in one PDU is the
            // transport's to say.
            unsafe {
                let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
                (*conn).max_recv_dlength = T::MAX_RECV_DLENGTH;
            }
        }
        cls_conn
    }

    /// `bind_conn`: joins the connection to the endpoint iscsid connected.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn conn_bind(
        cls_session: *mut sys::iscsi_cls_session,
        cls_conn: *mut sys::iscsi_cls_conn,
        transport_eph: u64,
        is_leading: c_int,
    ) -> c_int {
        // SAFETY: the class passes its session and connection.
        let rc = unsafe { sys::iscsi_conn_bind(cls_session, cls_conn, is_leading) };
        if rc != 0 {
            return rc;
        }
        // SAFETY: the handle comes from user space: the class looks it up among live
        // endpoints and holds the one it returns until the put below.
        let ep = unsafe { sys::iscsi_lookup_endpoint(transport_eph) };
        if ep.is_null() {
            pr_err!("cannot bind to endpoint {:#x}\n", transport_eph);
            return EINVAL.to_errno();
        }
        // SAFETY: the endpoint is held (above) and ours.
        let rc = match unsafe { endpoint::<T>(ep) } {
            // SAFETY: the class's connection, not started: nothing reads its `dd_data`
            // or the endpoint's cell concurrently but the completion path, which only
            // passes the connection to libiscsi.
            Some(endpoint) if endpoint.bindable() => unsafe {
                Self::bind(cls_conn, endpoint, transport_eph)
            },
            _ => {
                pr_err!("endpoint {:#x} is not connected\n", transport_eph);
                EINVAL.to_errno()
            }
        };
        // SAFETY: the reference the lookup took.
        unsafe { sys::iscsi_put_endpoint(ep) };
        rc
    }

    /// # Safety
    ///
    /// `cls_conn` is a bound, unstarted connection of ours; `endpoint` is held.
    unsafe fn bind(cls_conn: *mut sys::iscsi_cls_conn, endpoint: &T, eph: u64) -> c_int {
        // SAFETY: the caller's connection.
        let conn = unsafe { (*cls_conn).dd_data.cast::<sys::iscsi_conn>() };
        // SAFETY: as above; `iscsi_conn_bind` set its session.
        let tasks = unsafe { (*(*conn).session).cmds_max };
        if tasks > i32::from(T::TASKS_MAX) {
            pr_err!(
                "a session of {} tasks is more than {}\n",
                tasks,
                T::TASKS_MAX
            );
            return EINVAL.to_errno();
        }
        // SAFETY: the caller's connection; the endpoint clears this before it is freed.
        unsafe { (*conn).dd_data = core::ptr::from_ref(endpoint).cast_mut().cast() };
        endpoint.conn_cell().bind(conn);
        // A loss reported between the check and the store found no connection to tell:
        // undo, and let iscsid reconnect.
        if !endpoint.bindable() {
            endpoint.conn_cell().bind(core::ptr::null_mut());
            // SAFETY: as above.
            unsafe { (*conn).dd_data = core::ptr::null_mut() };
            pr_err!("endpoint {:#x} failed while it was bound\n", eph);
            return EINVAL.to_errno();
        }
        0
    }

    /// `stop_conn`: quiesces the endpoint, stops libiscsi's side, and unbinds.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn conn_stop(cls_conn: *mut sys::iscsi_cls_conn, flag: c_int) {
        // SAFETY: the class passes a connection of ours.
        let conn = unsafe { (*cls_conn).dd_data.cast::<sys::iscsi_conn>() };
        // SAFETY: a connection of ours, in the class's serialized process context.
        if let Some(endpoint) = unsafe { endpoint_of::<T>(conn) } {
            endpoint.quiesce();
        }
        // SAFETY: libiscsi's own stop; its task cleanup may still call `cleanup`, which
        // finds the endpoint bound (and quiesced).
        unsafe { sys::iscsi_conn_stop(cls_conn, flag) };
        // SAFETY: as above.
        if let Some(endpoint) = unsafe { endpoint_of::<T>(conn) } {
            unbind(endpoint);
        }
    }

    /// `set_param`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn set_param(
        cls_conn: *mut sys::iscsi_cls_conn,
        param: sys::iscsi_param,
        buf: *mut c_char,
        buflen: c_int,
    ) -> c_int {
        let len = usize::try_from(buflen).unwrap_or(0);
        let value = match buf.is_null() {
            true => &[][..],
            // SAFETY: the class passes `buflen` readable bytes.
            false => unsafe { core::slice::from_raw_parts(buf.cast::<u8>().cast_const(), len) },
        };
        match T::set_param(Param(param), value) {
            Err(error) => return error.to_errno(),
            Ok(ParamUse::Fixed) => return 0,
            Ok(ParamUse::Libiscsi) => {}
        }
        // SAFETY: libiscsi's own handling of the class's arguments.
        let rc = unsafe { sys::iscsi_set_param(cls_conn, param, buf, buflen) };
        if rc == 0 && param == sys::iscsi_param_ISCSI_PARAM_MAX_XMIT_DLENGTH {
            // SAFETY: the class's connection, being configured (not started).
            unsafe {
                let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
                (*conn).max_xmit_dlength = (*conn).max_xmit_dlength.min(T::MAX_XMIT_DLENGTH);
            }
        }
        rc
    }

    /// `start_conn`: the transport's check of the negotiated parameters, then libiscsi's
    /// start.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn conn_start(cls_conn: *mut sys::iscsi_cls_conn) -> c_int {
        // SAFETY: the class passes a bound connection of ours, configured by set_param.
        let negotiated = unsafe {
            let conn = (*cls_conn).dd_data.cast::<sys::iscsi_conn>();
            let session = (*conn).session;
            Negotiated {
                initial_r2t: (*session).initial_r2t_en != 0,
                first_burst: (*session).first_burst as usize,
                max_xmit_dlength: (*conn).max_xmit_dlength as usize,
            }
        };
        if let Err(error) = T::start(&negotiated) {
            return error.to_errno();
        }
        // SAFETY: libiscsi's own start of the class's connection.
        unsafe { sys::iscsi_conn_start(cls_conn) }
    }

    /// `get_ep_param`: the target's address and port.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn get_ep_param(
        ep: *mut sys::iscsi_endpoint,
        param: sys::iscsi_param,
        buf: *mut c_char,
    ) -> c_int {
        if param != sys::iscsi_param_ISCSI_PARAM_CONN_PORT
            && param != sys::iscsi_param_ISCSI_PARAM_CONN_ADDRESS
        {
            return errno(kernel::bindings::ENOSYS).to_errno();
        }
        // SAFETY: the class passes a live endpoint of ours.
        let Some(endpoint) = (unsafe { endpoint::<T>(ep) }) else {
            return errno(kernel::bindings::ENOTCONN).to_errno();
        };
        let dst = endpoint.destination();
        let addr = sys::sockaddr_in {
            sin_family: AF_INET,
            sin_port: dst.port().to_be(),
            sin_addr: sys::in_addr {
                s_addr: u32::from(*dst.ip()).to_be(),
            },
            ..Default::default()
        };
        let mut storage = sys::__kernel_sockaddr_storage::default();
        // SAFETY: a `sockaddr_in` fits the storage, which is aligned for any address.
        unsafe {
            core::ptr::from_mut(&mut storage)
                .cast::<sys::sockaddr_in>()
                .write(addr)
        };
        // SAFETY: libiscsi formats the address into the class's page-sized `buf`.
        unsafe {
            sys::iscsi_conn_get_addr_param(core::ptr::from_mut(&mut storage).cast(), param, buf)
        }
    }

    /// `ep_connect`: starts connecting to `dst_addr` (IPv4).
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn ep_connect(dst_addr: *mut sys::sockaddr) -> *mut sys::iscsi_endpoint {
        // SAFETY: the class passes a socket address of at least `sockaddr` size.
        if unsafe { (*dst_addr).sa_family } != AF_INET {
            pr_err!("only IPv4 targets are supported\n");
            return err_ptr(errno(kernel::bindings::EAFNOSUPPORT));
        }
        // SAFETY: an `AF_INET` address is a `sockaddr_in` (the class copied a whole
        // `sockaddr_storage`).
        let raw = unsafe { dst_addr.cast::<sys::sockaddr_in>().read_unaligned() };
        let dst = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
            u16::from_be(raw.sin_port),
        );
        // SAFETY: plain module reference counting; the class holds the module during
        // this call, so the get cannot race the unload. Each endpoint pins the module:
        // its CQ and CM callbacks are this module's code.
        if !unsafe { sys::tilde_iser_module_get() } {
            return err_ptr(ENODEV);
        }
        let endpoint = match T::connect(dst) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                // SAFETY: the reference taken above.
                unsafe { sys::tilde_iser_module_put() };
                return err_ptr(error);
            }
        };
        // SAFETY: a new endpoint with no private data of the class's.
        let ep = unsafe { sys::iscsi_create_endpoint(0) };
        if ep.is_null() {
            drop(endpoint);
            // SAFETY: the reference taken above, now that nothing of the endpoint is left.
            unsafe { sys::tilde_iser_module_put() };
            return err_ptr(ENOMEM);
        }
        // SAFETY: the endpoint is ours until `ep_disconnect`, which frees this box.
        unsafe { (*ep).dd_data = KBox::into_raw(endpoint).cast() };
        ep
    }

    /// `ep_poll`: 1 connected, 0 not yet, negative failed.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn ep_poll(ep: *mut sys::iscsi_endpoint, timeout_ms: c_int) -> c_int {
        // SAFETY: the class passes a live endpoint of ours.
        let Some(endpoint) = (unsafe { endpoint::<T>(ep) }) else {
            return -1;
        };
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        match endpoint.poll(timeout) {
            Connecting::Connected => 1,
            Connecting::NotYet => 0,
            Connecting::Failed => -1,
        }
    }

    /// `ep_disconnect`: quiesces and unbinds the endpoint, and frees it.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn ep_disconnect(ep: *mut sys::iscsi_endpoint) {
        // SAFETY: the class passes a live endpoint of ours and never uses it again. Its
        // connection may still be bound: the iSCSI class disconnects a bound endpoint
        // before it stops the connection (`iscsi_if_stop_conn`,
        // `iscsi_cleanup_conn_work_fn`), so the endpoint unbinds itself before it is
        // freed; the later stop finds no endpoint.
        let endpoint = unsafe { core::mem::replace(&mut (*ep).dd_data, core::ptr::null_mut()) };
        if !endpoint.is_null() {
            // SAFETY: `ep_connect` made it from this box, and took it back above.
            let endpoint = unsafe { KBox::from_raw(endpoint.cast::<T>()) };
            endpoint.quiesce();
            unbind(&*endpoint);
            drop(endpoint);
        }
        // SAFETY: the class's endpoint, unused from here on.
        unsafe { sys::iscsi_destroy_endpoint(ep) };
        if !endpoint.is_null() {
            // SAFETY: the reference `ep_connect` took, last: no callback of the endpoint
            // is left (the class holds the module while it calls us).
            unsafe { sys::tilde_iser_module_put() };
        }
    }

    /// `init_task`: only checks the connection is bound.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn task_init(task: *mut sys::iscsi_task) -> c_int {
        // SAFETY: libiscsi passes a task of a connection of ours, under `frwd_lock`.
        match unsafe { endpoint_of::<T>((*task).conn) } {
            Some(_) => 0,
            None => ENODEV.to_errno(),
        }
    }

    /// `alloc_pdu`: libiscsi builds the BHS in the task's `TaskData`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn pdu_alloc(task: *mut sys::iscsi_task, _opcode: u8) -> c_int {
        // SAFETY: the task's `dd_data` is a `TaskData` (`session_create` sized it).
        unsafe {
            (*task).hdr = (*task).dd_data.cast();
            (*task).hdr_max = BHS_LEN as u16;
        }
        0
    }

    /// `xmit_task`, under `frwd_lock`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn task_xmit(task: *mut sys::iscsi_task) -> c_int {
        let Some(task) = NonNull::new(task) else {
            return EINVAL.to_errno();
        };
        // SAFETY: libiscsi passes a prepared task of a connection of ours, under
        // `frwd_lock` (this host has no transmit workqueue).
        let Some(endpoint) = (unsafe { endpoint_of::<T>((*task.as_ptr()).conn) }) else {
            return ENODEV.to_errno();
        };
        let xmit = XmitTask {
            task,
            _frwd: PhantomData,
        };
        let unanswered = xmit.unanswered();
        match endpoint.xmit(xmit) {
            Ok(()) => {
                if unanswered {
                    // libiscsi leaves a PDU no response answers to the transport to
                    // put once sent; the transport holds its own reference until then
                    // (`hold_until_sent`).
                    // SAFETY: libiscsi's reference, which it does not use after a
                    // successful xmit of such a PDU; the put takes `back_lock`, which
                    // nests inside `frwd_lock`.
                    unsafe { sys::iscsi_put_task(task.as_ptr()) };
                }
                0
            }
            Err(error) => error.to_errno(),
        }
    }

    /// `cleanup_task`, under `back_lock`.
    ///
    /// # Safety
    ///
    /// Called through the transport table only.
    pub(crate) unsafe fn task_cleanup(task: *mut sys::iscsi_task) {
        let Some(task) = NonNull::new(task) else {
            return;
        };
        // SAFETY: libiscsi passes a task of a connection of ours, under `back_lock`.
        let Some(endpoint) = (unsafe { endpoint_of::<T>((*task.as_ptr()).conn) }) else {
            return;
        };
        endpoint.cleanup(CleanupTask {
            task,
            _back: PhantomData,
        });
    }
}

/// Exports the callbacks `transport.c`'s table names, for the transport `$t`.
macro_rules! iscsi_transport {
    ($t:ty) => {
        const _: () = {
            use ::kernel::ffi::{c_char, c_int};
            use ::rdma_core::sys;
            use $crate::iscsi::Adapter;

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_session_create(
                ep: *mut sys::iscsi_endpoint,
                cmds_max: u16,
                qdepth: u16,
                initial_cmdsn: u32,
            ) -> *mut sys::iscsi_cls_session {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::session_create(ep, cmds_max, qdepth, initial_cmdsn) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_session_destroy(
                cls_session: *mut sys::iscsi_cls_session,
            ) {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::session_destroy(cls_session) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_conn_create(
                cls_session: *mut sys::iscsi_cls_session,
                conn_idx: u32,
            ) -> *mut sys::iscsi_cls_conn {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::conn_create(cls_session, conn_idx) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_conn_bind(
                cls_session: *mut sys::iscsi_cls_session,
                cls_conn: *mut sys::iscsi_cls_conn,
                transport_eph: u64,
                is_leading: c_int,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe {
                    Adapter::<$t>::conn_bind(cls_session, cls_conn, transport_eph, is_leading)
                }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_conn_start(
                cls_conn: *mut sys::iscsi_cls_conn,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::conn_start(cls_conn) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_conn_stop(
                cls_conn: *mut sys::iscsi_cls_conn,
                flag: c_int,
            ) {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::conn_stop(cls_conn, flag) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_set_param(
                cls_conn: *mut sys::iscsi_cls_conn,
                param: sys::iscsi_param,
                buf: *mut c_char,
                buflen: c_int,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::set_param(cls_conn, param, buf, buflen) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_get_ep_param(
                ep: *mut sys::iscsi_endpoint,
                param: sys::iscsi_param,
                buf: *mut c_char,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::get_ep_param(ep, param, buf) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_ep_connect(
                _shost: *mut sys::Scsi_Host,
                dst_addr: *mut sys::sockaddr,
                _non_blocking: c_int,
            ) -> *mut sys::iscsi_endpoint {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::ep_connect(dst_addr) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_ep_poll(
                ep: *mut sys::iscsi_endpoint,
                timeout_ms: c_int,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::ep_poll(ep, timeout_ms) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_ep_disconnect(ep: *mut sys::iscsi_endpoint) {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::ep_disconnect(ep) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_task_init(task: *mut sys::iscsi_task) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::task_init(task) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_pdu_alloc(
                task: *mut sys::iscsi_task,
                opcode: u8,
            ) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::pdu_alloc(task, opcode) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_task_xmit(task: *mut sys::iscsi_task) -> c_int {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::task_xmit(task) }
            }

            /// # Safety
            ///
            /// Called through the transport table only.
            #[no_mangle]
            unsafe extern "C" fn tilde_iser_task_cleanup(task: *mut sys::iscsi_task) {
                // SAFETY: called through the transport table only.
                unsafe { Adapter::<$t>::task_cleanup(task) }
            }
        };
    };
}
pub(crate) use iscsi_transport;
