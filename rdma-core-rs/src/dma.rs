// SPDX-License-Identifier: GPL-2.0
//! Kernel memory mapped for a device: the buffers work requests point at.

use kernel::prelude::*;

use crate::device::{Device, DeviceRef};
use crate::sys;

/// A buffer of kernel memory mapped for DMA by one device (`ib_dma_map_single`,
/// bidirectional), unmapped on drop.
///
/// A work request owns the buffer it points into (see [`crate::wr::WorkRequest`]): from
/// post to completion nothing else can reach it. A memory region owns the buffer it
/// exposes to peers, who may write it at any time while it is registered; so every CPU
/// access here is a volatile copy, never a slice lent out over memory a device may change.
pub struct DmaBuffer {
    device: DeviceRef,
    data: KVec<u8>,
    dma_addr: u64,
}

impl DmaBuffer {
    /// Allocates `len` zeroed bytes and maps them for `device`.
    pub fn new(device: &Device, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        let device = device.to_ref()?;
        let data = KVec::from_elem(0u8, len, GFP_KERNEL)?;
        // SAFETY: the device is valid (we hold a reference); `data` is a live allocation of
        // `len` bytes that is not moved or freed before the unmap in `drop`.
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

    /// The device the buffer is mapped for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Copies `bytes` in at `offset`, then hands that range back to the device. No WR
    /// points into the buffer meanwhile (a posted WR owns its buffer), but a peer may
    /// write a registered region's buffer, so the copy is volatile.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result {
        let end = offset.checked_add(bytes.len()).ok_or(EINVAL)?;
        if end > self.data.len() {
            return Err(EINVAL);
        }
        let base = self.data.as_mut_ptr();
        for (i, byte) in bytes.iter().enumerate() {
            // SAFETY: `offset + i < end <= len`: in bounds of the live allocation.
            unsafe { core::ptr::write_volatile(base.add(offset + i), *byte) };
        }
        // SAFETY: the mapping is live (type invariant) and covers `offset..end`.
        unsafe {
            sys::tilde_rdma_dma_sync_for_device(
                self.device.as_raw(),
                self.dma_addr + offset as u64,
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` out, after taking that range back from the
    /// device. A peer's RDMA WRITE may change a registered region's buffer meanwhile, so
    /// the bytes are copied with volatile reads.
    pub fn read_into(&self, offset: usize, out: &mut [u8]) -> Result {
        let end = offset.checked_add(out.len()).ok_or(EINVAL)?;
        if end > self.data.len() {
            return Err(EINVAL);
        }
        // SAFETY: the mapping is live and covers `offset..end`.
        unsafe {
            sys::tilde_rdma_dma_sync_for_cpu(
                self.device.as_raw(),
                self.dma_addr + offset as u64,
                out.len(),
            )
        };
        let base = self.data.as_ptr();
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i < end <= len`: in bounds of the live allocation; a
            // volatile read, as of memory a device may write.
            *byte = unsafe { core::ptr::read_volatile(base.add(offset + i)) };
        }
        Ok(())
    }

    /// [`DmaBuffer::read_into`] a new vector of `len` bytes.
    pub fn copy_out(&self, offset: usize, len: usize) -> Result<KVec<u8>> {
        let mut out = KVec::from_elem(0u8, len, GFP_KERNEL)?;
        self.read_into(offset, &mut out)?;
        Ok(out)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: the buffer was mapped for this device in `new` and is unmapped once.
        unsafe { sys::tilde_rdma_dma_unmap(self.device.as_raw(), self.dma_addr, self.data.len()) };
    }
}
