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

impl GuestMemory {
    /// Maps `size` bytes of `fd` from `offset` at guest address `address`.
    pub fn map(&mut self, address: u64, size: u64, fd: File, offset: u64) -> std::io::Result<()> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let size = usize::try_from(size).map_err(|_| invalid(format!("size {size:#x}")))?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(address),
            size,
            Some(FileOffset::new(fd, offset)),
        )
        .map_err(|e| invalid(format!("mapping {address:#x}+{size:#x}: {e:?}")))?;
        self.regions.retain(|r| r.start_addr().0 != address);
        self.regions.push(Arc::new(region));
        self.rebuild()
    }

    /// Unmaps the range starting at `address`.
    pub fn unmap(&mut self, address: u64, _size: u64) {
        self.regions.retain(|r| r.start_addr().0 != address);
        let _ = self.rebuild();
    }

    fn rebuild(&mut self) -> std::io::Result<()> {
        self.regions.sort_by_key(|r| r.start_addr().0);
        self.memory = if self.regions.is_empty() {
            None
        } else {
            Some(
                GuestMemoryMmap::from_arc_regions(self.regions.clone()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e:?}"))
                })?,
            )
        };
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
