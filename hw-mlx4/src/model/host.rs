//! The host platform: queue memory, doorbell records and the UAR page as plain memory
//! shared between the driver's fast path and the model. Handles are reference-counted
//! so the driver and the model each hold one, as they each hold a mapping of the same
//! DMA memory on real hardware.
//!
//! Send queue rings can be created checked: the ring then follows each entry through the
//! ownership protocol and records every driver write that breaks it, which the model
//! reports as a [`ModelError`](super::ModelError).

use crate::fastpath::platform::{
    BlueFlameRegister, DmaRing, DoorbellRecord, Platform, SharedCounter, UarPage, WrIdSlot,
};
use crate::wire::{CqDoorbell, CtrlSeg};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell, UnsafeCell};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// The fast path on the host.
pub struct HostPlatform;

impl Platform for HostPlatform {
    type Ring = HostRing;
    type DbRecord = HostDoorbellRecord;
    type Uar = HostUar;
    type BlueFlame = HostBlueFlame;
    type Counter = AtomicU32;
    type WrId = AtomicU64;
    type WrIdTable = Box<[AtomicU64]>;

    #[inline]
    fn dma_wmb() {
        fence(Ordering::Release);
    }
    #[inline]
    fn dma_rmb() {
        fence(Ordering::Acquire);
    }
    #[inline]
    fn wmb() {
        fence(Ordering::Release);
    }
}

impl SharedCounter for AtomicU32 {
    #[inline]
    fn new(value: u32) -> Self {
        AtomicU32::new(value)
    }
    #[inline]
    fn load_acquire(&self) -> u32 {
        self.load(Ordering::Acquire)
    }
    #[inline]
    fn store_release(&self, value: u32) {
        self.store(value, Ordering::Release)
    }
}

impl WrIdSlot for AtomicU64 {
    #[inline]
    fn new(value: u64) -> Self {
        AtomicU64::new(value)
    }
    #[inline]
    fn get(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
    #[inline]
    fn set(&self, value: u64) {
        self.store(value, Ordering::Relaxed)
    }
}

/// A wr_id table of `entries` slots.
pub fn wr_id_table(entries: u32) -> Box<[AtomicU64]> {
    (0..entries).map(|_| AtomicU64::new(0)).collect()
}

/// Where a checked send-queue entry stands in the ownership protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryState {
    /// Software's, and unchanged since the device last consumed it (or since creation).
    Software,
    /// Software's, written since.
    Written,
    /// Handed to the device by its ownership word and not yet consumed.
    Device,
    /// Handed over, then written again by the driver: a protocol violation.
    WrittenAfterHandover,
}

/// A protocol violation a checked ring saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingViolation {
    /// The driver wrote an entry the device owned.
    WriteToDeviceEntry { index: u32 },
}

struct RingInner {
    bytes: Box<[UnsafeCell<u8>]>,
    log_entries: u32,
    entry_shift: u32,
    /// Per-entry protocol state, for checked send queue rings.
    states: Option<Box<[Cell<EntryState>]>>,
    /// WQEs handed over so far, for checked rings.
    handovers: Cell<u32>,
    violations: RefCell<Vec<RingViolation>>,
}

/// Queue memory on the host.
#[derive(Clone)]
pub struct HostRing(Rc<RingInner>);

impl HostRing {
    /// A ring of `1 << log_entries` entries of `1 << entry_shift` bytes, zeroed.
    #[inline]
    pub fn new(log_entries: u32, entry_shift: u32) -> Self {
        Self::with_checks(log_entries, entry_shift, false)
    }

    /// A send queue ring that checks the driver's side of the ownership protocol.
    pub fn new_checked_send_queue(log_entries: u32, entry_shift: u32) -> Self {
        Self::with_checks(log_entries, entry_shift, true)
    }

    fn with_checks(log_entries: u32, entry_shift: u32, checked: bool) -> Self {
        let len = 1usize << (log_entries + entry_shift);
        let bytes = (0..len).map(|_| UnsafeCell::new(0)).collect();
        let states = checked.then(|| {
            (0..1u32 << log_entries)
                .map(|_| Cell::new(EntryState::Software))
                .collect()
        });
        Self(Rc::new(RingInner {
            bytes,
            log_entries,
            entry_shift,
            states,
            handovers: Cell::new(0),
            violations: RefCell::new(Vec::new()),
        }))
    }

    #[inline]
    fn slot(&self, index: u32) -> usize {
        (index & ((1 << self.0.log_entries) - 1)) as usize
    }

    #[inline]
    fn entry_ptr(&self, index: u32) -> *mut u8 {
        let start = self.slot(index) << self.0.entry_shift;
        // `start` is below the buffer length: the slot is masked to the ring.
        UnsafeCell::raw_get(self.0.bytes[start..].as_ptr())
    }

    #[inline]
    fn entry_len(&self) -> usize {
        1 << self.0.entry_shift
    }

    /// The model takes a handed-over WQE: `Ok` if the driver followed the protocol for it.
    pub(crate) fn device_consume(&self, index: u32) -> Result<(), EntryCheck> {
        let Some(states) = &self.0.states else {
            return Ok(());
        };
        let Some(state) = states.get(self.slot(index)) else {
            return Ok(());
        };
        let seen = state.replace(EntryState::Software);
        match seen {
            EntryState::Device => Ok(()),
            EntryState::WrittenAfterHandover => Err(EntryCheck::WrittenAfterHandover),
            EntryState::Software | EntryState::Written => Err(EntryCheck::NotHandedOver),
        }
    }

    /// WQEs the driver has handed over, if this ring checks the protocol.
    pub(crate) fn handovers(&self) -> Option<u32> {
        self.0.states.as_ref().map(|_| self.0.handovers.get())
    }

    pub(crate) fn take_violations(&self) -> Vec<RingViolation> {
        core::mem::take(&mut *self.0.violations.borrow_mut())
    }

    #[inline]
    fn note_write(&self, index: u32) {
        let Some(states) = &self.0.states else { return };
        let Some(state) = states.get(self.slot(index)) else {
            return;
        };
        let next = match state.get() {
            EntryState::Software | EntryState::Written => EntryState::Written,
            EntryState::Device | EntryState::WrittenAfterHandover => {
                self.0
                    .violations
                    .borrow_mut()
                    .push(RingViolation::WriteToDeviceEntry { index });
                EntryState::WrittenAfterHandover
            }
        };
        state.set(next);
    }

    #[inline]
    fn note_owner_word(&self, index: u32, value: u32) {
        let Some(states) = &self.0.states else { return };
        let Some(state) = states.get(self.slot(index)) else {
            return;
        };
        let lap = index & (1 << self.0.log_entries) != 0;
        let handed_over = (value & CtrlSeg::OWNER != 0) == lap;
        if handed_over {
            self.0.handovers.set(self.0.handovers.get().wrapping_add(1));
        }
        state.set(if handed_over {
            EntryState::Device
        } else {
            EntryState::Written
        });
    }
}

/// How a consumed WQE broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryCheck {
    WrittenAfterHandover,
    NotHandedOver,
}

impl DmaRing for HostRing {
    #[inline]
    fn log_entries(&self) -> u32 {
        self.0.log_entries
    }

    #[inline]
    fn entry_shift(&self) -> u32 {
        self.0.entry_shift
    }

    #[inline]
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: the entry lies inside the buffer (masked slot, `entry_len` bytes), and
        // the caller guarantees no one writes it meanwhile.
        let entry = unsafe { core::slice::from_raw_parts(self.entry_ptr(index), self.entry_len()) };
        f(entry)
    }

    #[inline]
    unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.note_write(index);
        // SAFETY: as in `with_entry`; the caller guarantees exclusive access.
        let entry =
            unsafe { core::slice::from_raw_parts_mut(self.entry_ptr(index), self.entry_len()) };
        f(entry)
    }

    #[inline]
    fn read_word(&self, index: u32, offset: usize) -> u32 {
        if offset + 4 > self.entry_len() {
            return 0;
        }
        // SAFETY: in bounds (checked above); a volatile read of bytes that may be written
        // through the other handle, as READ_ONCE of DMA memory.
        let bytes = unsafe {
            core::ptr::read_volatile(self.entry_ptr(index).add(offset).cast::<[u8; 4]>())
        };
        u32::from_be_bytes(bytes)
    }

    #[inline]
    fn write_word(&self, index: u32, offset: usize, value: u32) {
        if offset + 4 > self.entry_len() {
            return;
        }
        if offset == 0 {
            self.note_owner_word(index, value);
        }
        // SAFETY: in bounds (checked above); a volatile write, as WRITE_ONCE.
        unsafe {
            core::ptr::write_volatile(
                self.entry_ptr(index).add(offset).cast::<[u8; 4]>(),
                value.to_be_bytes(),
            )
        }
    }
}

/// A doorbell record in host memory.
#[derive(Clone, Default)]
pub struct HostDoorbellRecord(Rc<Cell<u32>>);

impl HostDoorbellRecord {
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }
}

impl DoorbellRecord for HostDoorbellRecord {
    #[inline]
    fn write_release(&self, value: u32) {
        fence(Ordering::Release);
        self.0.set(value);
    }
    #[inline]
    fn read_acquire(&self) -> u32 {
        let value = self.0.get();
        fence(Ordering::Acquire);
        value
    }
}

/// One write to the UAR page or its BlueFlame register, in the order the driver made them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UarWrite {
    Send(u32),
    Cq(CqDoorbell),
    Eq {
        eqn: u32,
        word: u32,
    },
    /// A WQE copied into BlueFlame buffer `buffer` (0 or 1).
    BlueFlame {
        buffer: usize,
        wqe: Vec<u8>,
    },
}

/// The UAR page on the host: a log of the driver's writes that the model drains.
#[derive(Clone, Default)]
pub struct HostUar(Rc<RefCell<VecDeque<UarWrite>>>);

impl HostUar {
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn pop(&self) -> Option<UarWrite> {
        self.0.borrow_mut().pop_front()
    }

    /// Writes not yet seen by the model.
    pub fn pending(&self) -> usize {
        self.0.borrow().len()
    }

    /// The writes not yet seen by the model, oldest first.
    pub fn pending_writes(&self) -> Vec<UarWrite> {
        self.0.borrow().iter().cloned().collect()
    }

    /// Forgets pending writes (benchmarks of the posting side alone).
    pub fn discard(&self) {
        self.0.borrow_mut().clear();
    }

    #[inline]
    fn push(&self, write: UarWrite) {
        self.0.borrow_mut().push_back(write);
    }
}

/// A BlueFlame register on the host: its copies go into the UAR's log, in order with the
/// doorbells, for the model to execute and check.
pub struct HostBlueFlame {
    uar: HostUar,
    buffer_size: usize,
}

impl HostBlueFlame {
    /// A register of two `buffer_size`-byte buffers whose copies `uar`'s reader sees.
    pub fn new(uar: &HostUar, buffer_size: usize) -> Self {
        Self {
            uar: uar.clone(),
            buffer_size,
        }
    }
}

impl BlueFlameRegister for HostBlueFlame {
    fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    fn copy_wqe(&self, buffer: usize, wqe: &[u8]) {
        self.uar.push(UarWrite::BlueFlame {
            buffer,
            wqe: wqe.to_vec(),
        });
    }
}

impl UarPage for HostUar {
    #[inline]
    fn ring_send_doorbell(&self, value: u32) {
        self.push(UarWrite::Send(value));
    }
    #[inline]
    fn ring_cq_doorbell(&self, doorbell: CqDoorbell) {
        self.push(UarWrite::Cq(doorbell));
    }
    #[inline]
    fn ring_eq_doorbell(&self, eqn: u32, word: u32) {
        self.push(UarWrite::Eq { eqn, word });
    }
}
