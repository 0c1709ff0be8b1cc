//! ICM: the device's context memory, which lives in host pages the driver hands over
//! with MAP_FA (the firmware area), MAP_ICM_AUX and MAP_ICM (the context tables, at ICM
//! virtual addresses the driver chose in INIT_HCA).
//!
//! Source: `drivers/net/ethernet/mellanox/mlx4/icm.c` (`mlx4_map_cmd`: each 16-byte VPM
//! entry is a big-endian ICM virtual address, then a big-endian physical address whose
//! low bits hold log2 of the chunk size in 4 KiB pages).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// ICM pages are 4 KiB (`MLX4_ICM_PAGE_SHIFT`).
pub const ICM_PAGE_SHIFT: u32 = 12;
/// Size of one VPM entry in a MAP_* mailbox.
pub const VPM_ENTRY_SIZE: usize = 16;

/// One chunk of a MAP_* command: `1 << log_pages` pages at `phys`, at ICM address `virt`
/// (ignored by MAP_FA and MAP_ICM_AUX, which take no virtual address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpmEntry {
    pub virt: u64,
    pub phys: u64,
    pub log_pages: u32,
}

impl VpmEntry {
    /// The chunk's size in bytes, if it fits.
    pub fn size(&self) -> Option<u64> {
        1u64.checked_shl(self.log_pages.checked_add(ICM_PAGE_SHIFT)?)
    }

    /// Parses `count` entries from a mailbox. A chunk whose address is not aligned to its
    /// size, or whose size does not fit, is an error naming the entry.
    pub fn parse_all(mailbox: &[u8], count: u32) -> Result<Vec<VpmEntry>, &'static str> {
        let count = count as usize;
        if count == 0 || count > mailbox.len() / VPM_ENTRY_SIZE {
            return Err("VPM entry count out of range");
        }
        let mut entries = Vec::with_capacity(count);
        for chunk in mailbox.chunks_exact(VPM_ENTRY_SIZE).take(count) {
            let (virt, phys) = chunk.split_at(8);
            let virt = u64::from_be_bytes(virt.try_into().map_err(|_| "VPM entry")?);
            let raw = u64::from_be_bytes(phys.try_into().map_err(|_| "VPM entry")?);
            let log_pages = (raw & 0x3f) as u32;
            let entry = VpmEntry {
                virt,
                phys: raw & !0xfff,
                log_pages,
            };
            let size = entry.size().ok_or("VPM chunk size does not fit")?;
            if entry.phys & (size - 1) != 0 {
                return Err("VPM chunk physical address not aligned to its size");
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// The ICM virtual address space: which host pages back which ICM addresses.
#[derive(Debug, Default)]
pub struct IcmMap {
    /// Chunks by ICM virtual address: (physical address, size).
    chunks: BTreeMap<u64, (u64, u64)>,
}

impl IcmMap {
    /// Maps a chunk; overlapping a mapped chunk is an error.
    pub fn map(&mut self, entry: &VpmEntry) -> Result<(), &'static str> {
        let size = entry.size().ok_or("chunk size")?;
        let end = entry.virt.checked_add(size).ok_or("ICM address overflow")?;
        if let Some((&start, &(_, len))) = self.chunks.range(..end).next_back() {
            if start.saturating_add(len) > entry.virt {
                return Err("ICM range already mapped");
            }
        }
        self.chunks.insert(entry.virt, (entry.phys, size));
        Ok(())
    }

    /// Unmaps `pages` 4 KiB pages from ICM address `virt`; returns how many chunks went.
    pub fn unmap(&mut self, virt: u64, pages: u64) -> usize {
        let end = virt.saturating_add(pages << ICM_PAGE_SHIFT);
        let doomed: Vec<u64> = self.chunks.range(virt..end).map(|(&v, _)| v).collect();
        for v in &doomed {
            self.chunks.remove(v);
        }
        doomed.len()
    }

    /// The physical address of ICM address `virt`, and how many bytes are contiguous
    /// from there.
    pub fn translate(&self, virt: u64) -> Option<(u64, u64)> {
        let (&start, &(phys, size)) = self.chunks.range(..=virt).next_back()?;
        let offset = virt - start;
        (offset < size).then(|| (phys + offset, size - offset))
    }

    /// Chunks mapped.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Mapped bytes in all.
    pub fn mapped_bytes(&self) -> u64 {
        self.chunks
            .values()
            .fold(0u64, |sum, &(_, size)| sum.saturating_add(size))
    }
}
