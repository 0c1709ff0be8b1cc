//! The guest memory the device reaches by DMA: the ranges QEMU maps with `dma_map`
//! (guest RAM, backed by a shared memfd), mapped into this process with rust-vmm's
//! `vm-memory`, whose accessors check every access against the mapped ranges.

use std::fs::File;
use std::sync::Arc;

use hw_mlx4::model::hca::{Dma, DmaFault};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// The mapped ranges; a DMA outside them is a fault.
#[derive(Default)]
pub struct GuestMemory {
    regions: Vec<Arc<GuestRegionMmap>>,
    memory: Option<GuestMemoryMmap>,
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
}

impl GuestMemory {
    /// Maps `size` bytes of `fd` from `offset` at guest address `address`. A range that
    /// does not lie in the file, or overlaps a mapped one, is refused and changes nothing.
    pub fn map(&mut self, address: u64, size: u64, fd: File, offset: u64) -> std::io::Result<()> {
        // A mapping past the file's end would fault (SIGBUS) on access.
        let file_len = fd.metadata()?.len();
        if !offset.is_multiple_of(4096) || offset.checked_add(size).is_none_or(|end| end > file_len)
        {
            return Err(invalid(format!(
                "{address:#x}+{size:#x} at file offset {offset:#x} of a {file_len:#x}-byte file"
            )));
        }
        let len = usize::try_from(size).map_err(|_| invalid(format!("size {size:#x}")))?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(address),
            len,
            Some(FileOffset::new(fd, offset)),
        )
        .map_err(|e| invalid(format!("mapping {address:#x}+{size:#x}: {e:?}")))?;
        let mut regions: Vec<_> = self
            .regions
            .iter()
            .filter(|r| r.start_addr().0 != address)
            .cloned()
            .collect();
        regions.push(Arc::new(region));
        self.rebuild(regions)
    }

    /// Unmaps every region that meets `[address, address + size)`.
    pub fn unmap(&mut self, address: u64, size: u64) {
        let end = address.saturating_add(size);
        let regions: Vec<_> = self
            .regions
            .iter()
            .filter(|r| {
                let start = r.start_addr().0;
                start.saturating_add(r.len()) <= address || start >= end
            })
            .cloned()
            .collect();
        let _ = self.rebuild(regions);
    }

    /// Makes `regions` the mapped set, if they form a valid one (no overlaps).
    fn rebuild(&mut self, mut regions: Vec<Arc<GuestRegionMmap>>) -> std::io::Result<()> {
        regions.sort_by_key(|r| r.start_addr().0);
        let memory = if regions.is_empty() {
            None
        } else {
            Some(
                GuestMemoryMmap::from_arc_regions(regions.clone())
                    .map_err(|e| invalid(format!("{e:?}")))?,
            )
        };
        self.regions = regions;
        self.memory = memory;
        Ok(())
    }
}

impl Dma for GuestMemory {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let fault = DmaFault {
            address,
            len: buf.len(),
        };
        let memory = self.memory.as_ref().ok_or(fault)?;
        memory
            .read_slice(buf, GuestAddress(address))
            .map_err(|_| fault)
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaFault> {
        let fault = DmaFault {
            address,
            len: data.len(),
        };
        let memory = self.memory.as_ref().ok_or(fault)?;
        memory
            .write_slice(data, GuestAddress(address))
            .map_err(|_| fault)
    }
}
