//! A [`DmaRing`] over memory the CPU addresses directly, for the platforms whose queue
//! memory is ordinary memory shared with the device: the kernel module's (coherent DMA
//! memory) and the benchmarks' (heap blocks). Outside `fastpath`: like the model's rings,
//! it is the platform's side of the edge the fast path is written against.

use crate::fastpath::platform::DmaRing;

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
        if entry_shift < 4 || memory.size() < 1usize.checked_shl(bits)? {
            return None;
        }
        Some(Self {
            memory,
            log_entries,
            entry_shift,
            slot_mask: 1u32.checked_shl(log_entries)?.wrapping_sub(1),
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

    #[inline(always)]
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let (start, len) = self.entry(index);
        // SAFETY: the entry is inside the memory; the caller has it by the queue
        // protocol, so neither the device nor other CPU code writes it meanwhile.
        f(unsafe { core::slice::from_raw_parts(start, len) })
    }

    #[inline(always)]
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
