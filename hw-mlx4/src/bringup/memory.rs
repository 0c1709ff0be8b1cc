//! Host memory the device is given: command mailboxes, the firmware area, auxiliary ICM
//! and the ICM of the context tables, and the fixed-capacity lists that remember it
//! (the kernel build has no `alloc`).
//!
//! Follows `mlx4_alloc_icm` (`icm.c`): an area is allocated as naturally aligned chunks
//! of up to 256 KiB, each the largest power of two of pages that still fits, smaller when
//! an allocation fails.

/// The ICM page: every area given to the device is counted in these (`MLX4_ICM_PAGE_SHIFT`).
pub const ICM_PAGE_SHIFT: u32 = 12;
/// [`ICM_PAGE_SHIFT`] as a size.
pub const ICM_PAGE_SIZE: usize = 1 << ICM_PAGE_SHIFT;
/// The largest chunk the driver asks for at once, as log2 of pages: 256 KiB
/// (`MLX4_ICM_ALLOC_SIZE`, `MLX4_TABLE_CHUNK_SIZE`).
pub const MAX_CHUNK_LOG_PAGES: u32 = 6;

/// DMA memory, as the platform gives it (the kernel: `dma_alloc_coherent`; the host
/// tests: memory the device model reaches).
pub trait HostMemory {
    /// An allocation, owned by the driver until it gives it back to [`Self::free`].
    type Block;

    /// Allocates `1 << log_pages` zeroed 4 KiB pages of DMA-coherent memory whose bus
    /// address is aligned to their size (as `dma_alloc_coherent` guarantees); `None`
    /// when there is not enough memory.
    fn alloc(&mut self, log_pages: u32) -> Option<Self::Block>;

    /// The bus address the device reaches the block at.
    fn bus_address(&self, block: &Self::Block) -> u64;

    /// Writes `data` at byte `offset` of the block; false if it does not fit.
    fn write(&mut self, block: &Self::Block, offset: usize, data: &[u8]) -> bool;

    /// Reads `buf.len()` bytes at byte `offset` of the block; false if they do not fit.
    fn read(&mut self, block: &Self::Block, offset: usize, buf: &mut [u8]) -> bool;

    /// Gives a block back.
    fn free(&mut self, block: Self::Block);
}

/// A block given to the device, and where it sits in the device's address spaces.
#[derive(Debug)]
pub struct Chunk<B> {
    /// The platform's handle.
    pub block: B,
    /// Its bus address.
    pub bus_address: u64,
    /// Its size, as log2 of 4 KiB pages.
    pub log_pages: u32,
    /// Its ICM virtual address (ICM chunks only; 0 for the firmware and auxiliary areas,
    /// which the device places itself).
    pub icm_address: u64,
    /// Whether the device has it: a MAP_* command including it succeeded.
    pub mapped: bool,
}

impl<B> Chunk<B> {
    /// Its size in 4 KiB pages.
    pub fn pages(&self) -> u64 {
        1u64 << self.log_pages
    }

    /// The VPM entry a MAP_* mailbox carries for it (`mlx4_map_cmd`): the ICM address,
    /// then the bus address with log2 of the size in pages in its low bits.
    pub fn vpm_entry(&self) -> [u8; 16] {
        let mut entry = [0u8; 16];
        let (virt, phys) = entry.split_at_mut(8);
        virt.copy_from_slice(&self.icm_address.to_be_bytes());
        phys.copy_from_slice(&(self.bus_address | u64::from(self.log_pages)).to_be_bytes());
        entry
    }
}

/// Up to `N` chunks, in the order they were allocated.
#[derive(Debug)]
pub struct Chunks<B, const N: usize> {
    slots: [Option<Chunk<B>>; N],
    len: usize,
}

impl<B, const N: usize> Default for Chunks<B, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, const N: usize> Chunks<B, N> {
    const EMPTY: Option<Chunk<B>> = None;

    /// No chunks (a `const fn`, so that a core can be built in place, see
    /// [`super::probe::Mlx4Core::new`]).
    pub const fn new() -> Self {
        Self {
            slots: [Self::EMPTY; N],
            len: 0,
        }
    }
}

impl<B, const N: usize> Chunks<B, N> {
    /// Chunks held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a chunk; gives it back when the list is full.
    pub fn push(&mut self, chunk: Chunk<B>) -> Result<(), Chunk<B>> {
        match self.slots.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(chunk);
                self.len += 1;
                Ok(())
            }
            None => Err(chunk),
        }
    }

    /// Takes the chunk added last.
    pub fn pop(&mut self) -> Option<Chunk<B>> {
        let index = self.len.checked_sub(1)?;
        let chunk = self.slots.get_mut(index)?.take();
        self.len = index;
        chunk
    }

    /// The chunks from index `from` on.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = &Chunk<B>> {
        self.slots
            .get(from..self.len)
            .unwrap_or(&[])
            .iter()
            .flatten()
    }

    /// The chunks from index `from` on, to change.
    pub fn iter_from_mut(&mut self, from: usize) -> impl Iterator<Item = &mut Chunk<B>> {
        let len = self.len;
        self.slots
            .get_mut(from..len)
            .unwrap_or(&mut [])
            .iter_mut()
            .flatten()
    }

    /// Pages held in all.
    pub fn pages(&self) -> u64 {
        self.iter_from(0).map(Chunk::pages).sum()
    }
}

/// Why host memory could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The platform had no memory left.
    NoMemory,
    /// The driver's list for this area is full (see the capacities in [`super::probe`]).
    TooManyChunks,
    /// The platform returned a block not aligned to its size, which the device refuses.
    Misaligned,
}

/// Allocates `pages` 4 KiB pages as chunks appended to `list` (`mlx4_alloc_icm`). ICM
/// chunks get `icm_address` plus their offset in the area; the firmware and auxiliary
/// areas (`None`) carry no ICM address. On failure the chunks allocated so far stay in
/// `list` for the caller's unwinding.
pub fn alloc_area<M: HostMemory, const N: usize>(
    memory: &mut M,
    list: &mut Chunks<M::Block, N>,
    pages: u64,
    icm_address: Option<u64>,
) -> Result<(), AllocError> {
    let mut done: u64 = 0;
    let mut log_pages = MAX_CHUNK_LOG_PAGES;
    while done < pages {
        let remaining = pages - done;
        // The largest power of two that fits: `while (1 << cur_order > npages)`.
        while log_pages > 0 && (1u64 << log_pages) > remaining {
            log_pages -= 1;
        }
        let Some(block) = memory.alloc(log_pages) else {
            // Try smaller chunks before giving up, as `mlx4_alloc_icm` does.
            if log_pages == 0 {
                return Err(AllocError::NoMemory);
            }
            log_pages -= 1;
            continue;
        };
        let bus_address = memory.bus_address(&block);
        let size = (ICM_PAGE_SIZE as u64) << log_pages;
        if bus_address & (size - 1) != 0 {
            memory.free(block);
            return Err(AllocError::Misaligned);
        }
        let chunk = Chunk {
            block,
            bus_address,
            log_pages,
            icm_address: icm_address.map_or(0, |base| base.wrapping_add(done << ICM_PAGE_SHIFT)),
            mapped: false,
        };
        if let Err(chunk) = list.push(chunk) {
            memory.free(chunk.block);
            return Err(AllocError::TooManyChunks);
        }
        done += 1u64 << log_pages;
    }
    Ok(())
}
