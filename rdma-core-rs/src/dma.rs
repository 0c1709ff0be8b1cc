// SPDX-License-Identifier: GPL-2.0
//! Kernel memory mapped for a device: the buffers work requests point at.

use core::ptr::NonNull;

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

    /// Runs `f` on bytes `offset..offset + len`, taken back from the device before and
    /// handed to it after: to read what a completed receive brought, or to fill what a
    /// send will carry, in place. `&mut self` is the proof that no device is using the
    /// buffer: a posted WR's buffer cannot be reached, and a region never lends its
    /// buffer out mutably.
    pub fn with_bytes_mut<R>(
        &mut self,
        offset: usize,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R> {
        let end = offset.checked_add(len).ok_or(EINVAL)?;
        let dma_addr = self.dma_addr + offset as u64;
        let bytes = self.data.get_mut(offset..end).ok_or(EINVAL)?;
        // SAFETY: the mapping is live (type invariant) and covers `offset..end`.
        unsafe { sys::tilde_rdma_dma_sync_for_cpu(self.device.as_raw(), dma_addr, len) };
        let result = f(bytes);
        // SAFETY: as above.
        unsafe { sys::tilde_rdma_dma_sync_for_device(self.device.as_raw(), dma_addr, len) };
        Ok(result)
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

/// Which way a [`SgMapping`]'s or [`BvecMapping`]'s data moves (`enum dma_data_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaDirection {
    /// The device reads the pages (a SCSI WRITE's data, which the peer RDMA READs).
    ToDevice,
    /// The device writes the pages (a SCSI READ's data, which the peer RDMA WRITEs).
    FromDevice,
}

impl DmaDirection {
    fn raw(self) -> sys::dma_data_direction {
        match self {
            Self::ToDevice => sys::dma_data_direction_DMA_TO_DEVICE,
            Self::FromDevice => sys::dma_data_direction_DMA_FROM_DEVICE,
        }
    }
}

/// One segment of memory someone else owns, as the block layer describes it (`struct
/// bio_vec`: a page, an offset in it, a length), mapped for DMA by one device and
/// unmapped on drop. A work request carries it as its local memory
/// ([`crate::wr::WorkRequest::replace_pages`]), which the device reaches under the PD's
/// local DMA key, with no registration: the zero-copy SEND, receive, or local side of an
/// RDMA READ or WRITE, as the IB core's own R/W contexts do with bio_vecs.
///
/// Mapped with `ib_dma_map_bvec` where the kernel has it, else `ib_dma_map_page` of the
/// same page, offset and length (what the former does for pages the kernel maps); the
/// binding layer picks (`tilde_rdma_dma_map_bvec`).
pub struct BvecMapping {
    device: DeviceRef,
    addr: u64,
    len: u32,
    direction: DmaDirection,
}

impl BvecMapping {
    /// Maps `bvec` for `device`, for the device to read (`ToDevice`: a SEND or RDMA WRITE
    /// from it) or to write (`FromDevice`: a receive or RDMA READ into it).
    ///
    /// # Safety
    ///
    /// `bvec` names a valid page (`bv_page`) and a range within it, which stays allocated
    /// until the mapping is dropped.
    pub unsafe fn new(
        device: &Device,
        bvec: &sys::bio_vec,
        direction: DmaDirection,
    ) -> Result<Self> {
        if bvec.bv_len == 0 || bvec.bv_page.is_null() {
            return Err(EINVAL);
        }
        let device = device.to_ref()?;
        // SAFETY: the device is valid (we hold a reference); the segment is valid
        // (caller); the helper only reads `bvec`.
        let addr = unsafe { sys::tilde_rdma_dma_map_bvec(device.as_raw(), bvec, direction.raw()) };
        // SAFETY: `addr` is what the map returned for this device.
        if unsafe { sys::tilde_rdma_dma_mapping_error(device.as_raw(), addr) } != 0 {
            pr_err!(
                "{}: cannot map a {} byte bio_vec for DMA\n",
                device.name(),
                bvec.bv_len
            );
            return Err(ENOMEM);
        }
        Ok(Self {
            device,
            addr,
            len: bvec.bv_len,
            direction,
        })
    }

    /// The device the segment is mapped for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The segment's length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the segment is empty (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which way the device may move data.
    pub fn direction(&self) -> DmaDirection {
        self.direction
    }

    /// The DMA address of `len` bytes at `offset`, if they lie within the segment.
    pub(crate) fn dma_addr(&self, offset: usize, len: usize) -> Option<u64> {
        let end = offset.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        self.addr.checked_add(u64::try_from(offset).ok()?)
    }
}

impl Drop for BvecMapping {
    fn drop(&mut self) {
        // SAFETY: mapped for this device in `new` with this length and direction, and
        // unmapped once; the page is still allocated (the creator's promise).
        unsafe {
            sys::tilde_rdma_dma_unmap_bvec(
                self.device.as_raw(),
                self.addr,
                self.len,
                self.direction.raw(),
            )
        };
    }
}

/// Pages someone else owns, described by their scatterlist (a SCSI command's data), mapped
/// for DMA by one device (`ib_dma_map_sg`) and unmapped on drop. A [`crate::mr::SgRegion`]
/// takes the mapping and lends the pages to a peer under a key; it gives the mapping back
/// only once that key is invalid.
pub struct SgMapping {
    device: DeviceRef,
    sgl: NonNull<sys::scatterlist>,
    /// Entries of the list as given (what the unmap takes).
    nents: i32,
    /// Entries after mapping (an IOMMU may merge some).
    mapped: i32,
    direction: DmaDirection,
}

// SAFETY: the mapping is plain data about pages the creator promised stay allocated until
// the drop; the DMA API allows map and unmap from any context and thread.
unsafe impl Send for SgMapping {}
// SAFETY: `&SgMapping` only reads the fields.
unsafe impl Sync for SgMapping {}

impl SgMapping {
    /// Maps the `nents` entries of `sgl` for `device`.
    ///
    /// # Safety
    ///
    /// `sgl` is a valid scatterlist of at least `nents` entries, not mapped for DMA
    /// elsewhere, and it and its pages stay valid until the mapping is dropped.
    pub unsafe fn new(
        device: &Device,
        sgl: *mut sys::scatterlist,
        nents: u32,
        direction: DmaDirection,
    ) -> Result<Self> {
        let sgl = NonNull::new(sgl).ok_or(EINVAL)?;
        let nents = i32::try_from(nents).map_err(|_| EINVAL)?;
        if nents == 0 {
            return Err(EINVAL);
        }
        let device = device.to_ref()?;
        // SAFETY: the device is valid (we hold a reference); the list is valid (caller).
        let mapped = unsafe {
            sys::tilde_rdma_dma_map_sg(device.as_raw(), sgl.as_ptr(), nents, direction.raw())
        };
        if mapped <= 0 {
            pr_err!(
                "{}: cannot map a {} entry scatterlist for DMA\n",
                device.name(),
                nents
            );
            return Err(ENOMEM);
        }
        Ok(Self {
            device,
            sgl,
            nents,
            mapped,
            direction,
        })
    }

    /// The device the pages are mapped for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The mapped list and its entry count, for a region to map.
    pub(crate) fn mapped(&self) -> (*mut sys::scatterlist, i32) {
        (self.sgl.as_ptr(), self.mapped)
    }
}

impl Drop for SgMapping {
    fn drop(&mut self) {
        // SAFETY: the list was mapped for this device in `new` with these arguments and is
        // unmapped once; it is still valid (the creator's promise).
        unsafe {
            sys::tilde_rdma_dma_unmap_sg(
                self.device.as_raw(),
                self.sgl.as_ptr(),
                self.nents,
                self.direction.raw(),
            )
        };
    }
}
