// SPDX-License-Identifier: GPL-2.0
//! Kernel memory mapped for a device: the buffers work requests point at.

use kernel::prelude::*;

use crate::device::Device;
use crate::sys;

/// A buffer of kernel memory mapped for DMA by one device (`ib_dma_map_single`,
/// bidirectional), unmapped on drop.
///
/// Work requests take a buffer by shared reference for the lifetime of their QP, so a
/// buffer outlives every WR that points into it: the QP drains its queues before it is
/// destroyed. The CPU fills a buffer before posting and reads it after the completion.
pub struct DmaBuffer<'d> {
    device: &'d Device,
    data: KVec<u8>,
    dma_addr: u64,
}

impl<'d> DmaBuffer<'d> {
    /// Allocates `len` zeroed bytes and maps them for `device`.
    pub fn new(device: &'d Device, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        let data = KVec::from_elem(0u8, len, GFP_KERNEL)?;
        // SAFETY: the device is valid for 'd; `data` is a live allocation of `len` bytes
        // that is not moved or freed before the unmap in `drop`.
        let dma_addr = unsafe {
            sys::tilde_rdma_dma_map(device.as_raw(), data.as_ptr().cast_mut().cast(), len)
        };
        // SAFETY: the device is valid; `dma_addr` came from mapping for it.
        if unsafe { sys::tilde_rdma_dma_mapping_error(device.as_raw(), dma_addr) } != 0 {
            pr_err!(
                "{}: cannot map a {} byte buffer for DMA\n",
                device.name(),
                len
            );
            return Err(ENOMEM);
        }
        Ok(Self {
            device,
            data,
            dma_addr,
        })
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The DMA address of byte `offset`, if `offset..offset + len` lies in the buffer.
    pub fn dma_addr(&self, offset: usize, len: usize) -> Option<u64> {
        let end = offset.checked_add(len)?;
        (end <= self.data.len()).then(|| self.dma_addr + offset as u64)
    }

    /// Copies `bytes` in at `offset`, then hands the buffer back to the device.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result {
        let end = offset.checked_add(bytes.len()).ok_or(EINVAL)?;
        self.data
            .get_mut(offset..end)
            .ok_or(EINVAL)?
            .copy_from_slice(bytes);
        // SAFETY: the mapping is live (type invariant) and covers the whole buffer.
        unsafe {
            sys::tilde_rdma_dma_sync_for_device(
                self.device.as_raw(),
                self.dma_addr,
                self.data.len(),
            )
        };
        Ok(())
    }

    /// The bytes at `offset..offset + len`, after taking the buffer back from the device.
    pub fn read(&self, offset: usize, len: usize) -> Result<&[u8]> {
        let end = offset.checked_add(len).ok_or(EINVAL)?;
        // SAFETY: the mapping is live and covers the whole buffer.
        unsafe {
            sys::tilde_rdma_dma_sync_for_cpu(self.device.as_raw(), self.dma_addr, self.data.len())
        };
        self.data.get(offset..end).ok_or(EINVAL)
    }
}

impl Drop for DmaBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the buffer was mapped for this device in `new` and is unmapped once.
        unsafe { sys::tilde_rdma_dma_unmap(self.device.as_raw(), self.dma_addr, self.data.len()) };
    }
}
