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

/// Memory a [`MemoryRing`] lives in, owned by whoever allocated it (coherent DMA memory in
/// the kernel, a page-aligned heap block in the benchmarks).
///
/// # Safety
///
/// `as_ptr` returns the same pointer for the memory's whole life, to `size()` bytes that
/// are valid for reads and writes while the value lives, aligned to at least 16 bytes,
/// and that nothing else frees or moves.
pub unsafe trait RingMemory {
    /// The first byte.
    fn as_ptr(&self) -> *mut u8;
    /// The size in bytes.
    fn size(&self) -> usize;
}

/// A [`DmaRing`] over memory the CPU addresses directly: the ring of every platform whose
/// queue memory is ordinary memory shared with the device (the kernel's, the benches').
/// Ownership words are read and written once (volatile), big-endian.
pub struct MemoryRing<M: RingMemory> {
    memory: M,
    log_entries: u32,
    entry_shift: u32,
    /// `(1 << log_entries) - 1`: masks a free-running counter to a slot.
    slot_mask: u32,
}

impl<M: RingMemory> MemoryRing<M> {
    /// A ring of `1 << log_entries` entries of `1 << entry_shift` bytes over `memory`, or
    /// `None` if the memory is smaller or an entry is not 16-byte aligned.
    pub fn new(memory: M, log_entries: u32, entry_shift: u32) -> Option<Self> {
        let bits = log_entries
            .checked_add(entry_shift)
            .filter(|bits| *bits < 32)?;
        if entry_shift < 4 || memory.size() < 1usize << bits {
            return None;
        }
        Some(Self {
            memory,
            log_entries,
            entry_shift,
            slot_mask: (1 << log_entries) - 1,
        })
    }

    /// The first byte of entry `index` (masked to the ring) and the entry's length.
    #[inline]
    fn entry(&self, index: u32) -> (*mut u8, usize) {
        let slot = (index & self.slot_mask) as usize;
        // `new` keeps `log_entries + entry_shift < 32`: no shift here wraps.
        let len = 1usize.wrapping_shl(self.entry_shift);
        // SAFETY: `slot < 1 << log_entries`, so the entry lies inside the memory (`new`
        // checked its size).
        let start = unsafe {
            self.memory
                .as_ptr()
                .add(slot.wrapping_shl(self.entry_shift))
        };
        (start, len)
    }

    /// The word at byte `offset` of entry `index`, if it lies in the entry, 4-aligned.
    #[inline]
    fn word(&self, index: u32, offset: usize) -> Option<*mut u32> {
        let (start, len) = self.entry(index);
        if offset & 3 != 0 || offset.checked_add(4)? > len {
            return None;
        }
        // SAFETY: inside the entry (checked above) and 4-aligned (entries are 16-byte
        // aligned, `RingMemory`'s promise and `new`'s check).
        Some(unsafe { start.add(offset) }.cast::<u32>())
    }
}

impl<M: RingMemory> DmaRing for MemoryRing<M> {
    #[inline]
    fn log_entries(&self) -> u32 {
        self.log_entries
    }

    #[inline]
    fn entry_shift(&self) -> u32 {
        self.entry_shift
    }

    #[inline]
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let (start, len) = self.entry(index);
        // SAFETY: the entry is inside the memory; the caller has it by the queue
        // protocol, so neither the device nor other CPU code writes it meanwhile.
        f(unsafe { core::slice::from_raw_parts(start, len) })
    }

    #[inline]
    unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let (start, len) = self.entry(index);
        // SAFETY: as for `with_entry`; in addition the caller holds no other reference
        // to the entry, so this one is unique.
        f(unsafe { core::slice::from_raw_parts_mut(start, len) })
    }

    #[inline]
    fn read_word(&self, index: u32, offset: usize) -> u32 {
        match self.word(index, offset) {
            // SAFETY: a valid, aligned word of the ring; read once, as the device may be
            // writing the entry (`READ_ONCE`).
            Some(word) => u32::from_be(unsafe { word.read_volatile() }),
            None => 0,
        }
    }

    #[inline]
    fn write_word(&self, index: u32, offset: usize, value: u32) {
        if let Some(word) = self.word(index, offset) {
            // SAFETY: a valid, aligned word of the ring, written once (`WRITE_ONCE`); the
            // caller ordered the entry's body before it.
            unsafe { word.write_volatile(value.to_be()) };
        }
    }
}
