//! The edge between the fast path and the memory it shares with the device.
//!
//! The fast path is written once, against these traits. The kernel implements them over
//! coherent DMA memory and the UAR's MMIO mapping; the host (`crate::model`) over plain
//! memory shared with the software model of the device; the loom tests over loom's
//! atomics and cells, so the ordering protocol itself is model-checked.
//!
//! Ownership of ring entries moves between the driver and the device by a protocol, not by
//! Rust borrows: an owner bit in each WQE, CQE and EQE, a consumer index the device reads
//! back, and doorbells. That is why taking an entry's bytes is `unsafe`: the caller states
//! that the protocol gives it the entry.

use crate::wire::CqDoorbell;

/// A ring of `1 << log_entries()` entries of `1 << entry_shift()` bytes, shared with the
/// device. Indices are free-running counters; the ring masks them.
pub trait DmaRing {
    /// log2 of the number of entries.
    fn log_entries(&self) -> u32;
    /// log2 of the entry size in bytes.
    fn entry_shift(&self) -> u32;

    /// Runs `f` over the bytes of the entry at counter `index`.
    ///
    /// # Safety
    ///
    /// The queue protocol gives the caller this entry (the device does not write it until
    /// the caller hands it back), and the caller holds no other reference to it.
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R;

    /// Runs `f` over the bytes of the entry at counter `index`, for writing.
    ///
    /// # Safety
    ///
    /// As for [`DmaRing::with_entry`]; in addition no other CPU code reads or writes the
    /// entry meanwhile. The device may still read it ahead of time (it ignores what it has
    /// not been handed), so stores whose order the device observes go through
    /// [`DmaRing::write_word`] after a barrier, not through this view.
    unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R;

    /// Reads the big-endian word at byte `offset` of an entry once (`READ_ONCE`). This is
    /// how ownership is checked, so it is safe on entries the caller does not own.
    fn read_word(&self, index: u32, offset: usize) -> u32;

    /// Writes the big-endian word at byte `offset` of an entry once (`WRITE_ONCE`). Writing
    /// an entry's ownership word hands the entry over; the caller issues the barrier that
    /// orders the entry's body before it.
    fn write_word(&self, index: u32, offset: usize, value: u32);
}

/// A 32-bit doorbell record in host memory that the device reads (RQ producer counter, CQ
/// consumer index and arm request).
pub trait DoorbellRecord {
    /// Stores `value` (big-endian in memory) with release ordering: every earlier access
    /// of the queue, loads included, is complete before the device can see it.
    fn write_release(&self, value: u32);
    /// The last value stored, for the device side and for checks.
    fn read_acquire(&self) -> u32;
}

/// The UAR page: the device registers the driver writes by MMIO.
pub trait UarPage {
    /// `MLX4_SEND_DOORBELL`: the QP named by `value` has new WQEs.
    fn ring_send_doorbell(&self, value: u32);
    /// `MLX4_CQ_DOORBELL`: a 64-bit arm request.
    fn ring_cq_doorbell(&self, doorbell: CqDoorbell);
    /// An EQ's consumer-index doorbell.
    fn ring_eq_doorbell(&self, eqn: u32, word: u32);
}

/// A BlueFlame register: two buffers of [`BlueFlameRegister::buffer_size`] bytes each in a
/// write-combining page of the UAR's BAR. A WQE copied into one is executed as it
/// arrives, without the device fetching it from the ring: the latency path for a single
/// small WR (`mlx4_post_send`'s `bf_page`, the kernel's `struct mlx4_bf`). A QP holds its
/// register alone (the driver hands it out `&mut`), so its copies need no lock; the two
/// buffers are used in turn so a copy never merges with the previous one in the CPU's
/// write-combining buffer.
pub trait BlueFlameRegister {
    /// Bytes in each of the two buffers: a WQE of at most this many bytes may go this way.
    fn buffer_size(&self) -> usize;

    /// Copies `wqe` (whole 64-byte blocks) into buffer `buffer` (0 or 1) in ascending
    /// 64-bit stores, then flushes the write-combining buffer so the device sees the copy
    /// now (`mmio_memcpy_x64` and `mmio_flush_writes`; the kernel's `__iowrite64_copy`
    /// and `wmb`).
    fn copy_wqe(&self, buffer: usize, wqe: &[u8]);
}

/// A counter shared between the poster and the completer of a work queue.
pub trait SharedCounter {
    /// A counter holding `value`.
    fn new(value: u32) -> Self;
    /// Loads the counter with acquire ordering.
    fn load_acquire(&self) -> u32;
    /// Stores `value` with release ordering.
    fn store_release(&self, value: u32);
}

/// A slot of a work queue's wr_id table. The poster writes it before handing the WQE to
/// the device and the completer reads it after the CQE; the device's own ordering
/// (ownership, doorbell, CQE) orders the two, so relaxed access suffices.
pub trait WrIdSlot {
    /// A slot holding `value`.
    fn new(value: u64) -> Self;
    /// The wr_id in the slot.
    fn get(&self) -> u64;
    /// Stores `value` in the slot.
    fn set(&self, value: u64);
}

/// Everything the fast path needs from where it runs.
pub trait Platform {
    /// A queue's ring of entries.
    type Ring: DmaRing;
    /// A doorbell record.
    type DbRecord: DoorbellRecord;
    /// The UAR page.
    type Uar: UarPage;
    /// A BlueFlame register.
    type BlueFlame: BlueFlameRegister;
    /// A counter shared by a work queue's poster and completer.
    type Counter: SharedCounter;
    /// One slot of a wr_id table.
    type WrId: WrIdSlot;
    /// A work queue's wr_id table: one slot per ring entry.
    type WrIdTable: AsRef<[Self::WrId]>;

    /// Orders stores to DMA memory before later stores to DMA memory (`dma_wmb`).
    fn dma_wmb();
    /// Orders loads from DMA memory before later loads from DMA memory (`dma_rmb`).
    fn dma_rmb();
    /// Orders stores to DMA memory before a later MMIO write (`wmb`).
    fn wmb();
}
