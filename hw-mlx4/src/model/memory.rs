//! The model's DMA address space and its memory protection table (MPT).

use crate::wr::Access;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Where model memory starts, so that address 0 is never valid.
const BASE: u64 = 0x1_0000_0000;

/// A memory key's MPT index is the key without its low byte, which the consumer may vary
/// between registrations (`ib_update_fast_reg_key`), as on mlx4.
pub const fn mpt_index(key: u32) -> u32 {
    key >> 8
}

/// The reserved lkey that covers all memory for local access (the PD's local DMA lkey).
pub const LOCAL_DMA_LKEY: u32 = 0;

/// A memory access fault: which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No region with this key, or it is invalid (freed, invalidated, never registered).
    BadKey,
    /// The region does not allow this access.
    Access,
    /// The range is not inside the region.
    Bounds,
}

/// How a region's addresses map to model memory.
#[derive(Clone, Debug)]
enum Translation {
    /// `iova` is the DMA address.
    Direct,
    /// Fast-registered: pages of `1 << shift` bytes, `iova` at offset 0 of the first.
    Pages { shift: u8, pages: Vec<u64> },
}

#[derive(Clone, Debug)]
pub(crate) struct Region {
    key: u32,
    valid: bool,
    fast_reg: bool,
    max_pages: u32,
    iova: u64,
    length: u64,
    access: Access,
    translation: Translation,
}

/// Model memory and the regions registered over it.
pub struct Memory {
    bytes: Vec<u8>,
    regions: BTreeMap<u32, Region>,
    next_index: u32,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    pub fn new() -> Self {
        // Index 1 would make key 0x100, the invalid lkey that ends receive scatter lists.
        Self {
            bytes: Vec::new(),
            regions: BTreeMap::new(),
            next_index: 2,
        }
    }

    /// Allocates `len` bytes aligned to 64 and returns their DMA address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let start = self.bytes.len().next_multiple_of(64);
        self.bytes.resize(start + len, 0);
        BASE + start as u64
    }

    fn span(&self, addr: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(BASE)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    /// Reads DMA memory directly (the test's view of its buffers).
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.bytes.get(self.span(addr, len)?)
    }

    /// Writes DMA memory directly.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Option<()> {
        let span = self.span(addr, data.len())?;
        self.bytes.get_mut(span)?.copy_from_slice(data);
        Some(())
    }

    fn new_index(&mut self) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        index
    }

    /// Registers `length` bytes at DMA address `addr` (which is also the iova) and
    /// returns the key, used as both lkey and rkey.
    pub fn register(&mut self, addr: u64, length: u64, access: Access) -> u32 {
        let key = self.new_index() << 8;
        let region = Region {
            key,
            valid: true,
            fast_reg: false,
            max_pages: 0,
            iova: addr,
            length,
            access,
            translation: Translation::Direct,
        };
        self.regions.insert(mpt_index(key), region);
        key
    }

    /// Allocates a region for fast registration (`ib_alloc_mr`): invalid until a
    /// FastReg WQE maps it.
    pub fn alloc_fast_reg(&mut self, max_pages: u32) -> u32 {
        let key = self.new_index() << 8;
        let region = Region {
            key,
            valid: false,
            fast_reg: true,
            max_pages,
            iova: 0,
            length: 0,
            access: Access::empty(),
            translation: Translation::Direct,
        };
        self.regions.insert(mpt_index(key), region);
        key
    }

    /// Deregisters a region.
    pub fn deregister(&mut self, key: u32) -> bool {
        self.regions.remove(&mpt_index(key)).is_some()
    }

    /// Executes a fast registration: `key` carries the new variant byte.
    pub(crate) fn fast_register(
        &mut self,
        key: u32,
        access: Access,
        iova: u64,
        length: u64,
        page_shift: u8,
        page_list: u64,
    ) -> Result<(), Fault> {
        if !(12..=30).contains(&page_shift) {
            return Err(Fault::Access);
        }
        let page_size = 1u64 << page_shift;
        // The region starts at `iova`'s offset into the first page (`start_addr` = iova,
        // `offset` 0, as `set_reg_seg` builds it).
        let first_offset = iova & (page_size - 1);
        let pages = (first_offset + length).div_ceil(page_size);
        let max_pages = match self.regions.get(&mpt_index(key)) {
            Some(region) if region.fast_reg && !region.valid => region.max_pages,
            _ => return Err(Fault::BadKey),
        };
        if pages > u64::from(max_pages) {
            return Err(Fault::Bounds);
        }
        let list_len = usize::try_from(pages * 8).map_err(|_| Fault::Bounds)?;
        let list = self.read(page_list, list_len).ok_or(Fault::Bounds)?;
        let mut pages = Vec::new();
        for entry in list.chunks_exact(8) {
            let entry = u64::from_be_bytes(entry.try_into().unwrap_or([0; 8]));
            // Hardware faults on an entry without MLX4_MTT_FLAG_PRESENT.
            if entry & crate::wire::FastRegSeg::PAGE_PRESENT == 0 {
                return Err(Fault::Access);
            }
            pages.push(entry & !crate::wire::FastRegSeg::PAGE_PRESENT);
        }
        let region = self.regions.get_mut(&mpt_index(key)).ok_or(Fault::BadKey)?;
        region.key = key;
        region.valid = true;
        region.iova = iova;
        region.length = length;
        region.access = access;
        region.translation = Translation::Pages {
            shift: page_shift,
            pages,
        };
        Ok(())
    }

    /// Invalidates a fast-registered region (LOCAL_INV, SEND_WITH_INV).
    pub(crate) fn invalidate(&mut self, key: u32) -> Result<(), Fault> {
        match self.regions.get_mut(&mpt_index(key)) {
            Some(region) if region.fast_reg && region.valid && region.key == key => {
                region.valid = false;
                Ok(())
            }
            _ => Err(Fault::BadKey),
        }
    }

    /// Whether `key` names a valid region.
    pub fn is_valid(&self, key: u32) -> bool {
        matches!(self.regions.get(&mpt_index(key)), Some(region) if region.valid && region.key == key)
    }

    /// The model-memory spans (DMA address, length) that `len` bytes at `iova` of region
    /// `key` occupy, after checking the key, the access and the bounds.
    fn resolve(
        &self,
        key: u32,
        iova: u64,
        len: u64,
        need: Access,
    ) -> Result<Vec<(u64, usize)>, Fault> {
        // A zero-length access touches no memory, and the key is not checked (IBA
        // 9.7.4.1.3 and C9-88 for RDMA; the same holds for zero-length gather entries).
        if len == 0 {
            return Ok(Vec::new());
        }
        if key == LOCAL_DMA_LKEY {
            if need.contains(Access::REMOTE_READ)
                || need.contains(Access::REMOTE_WRITE)
                || need.contains(Access::REMOTE_ATOMIC)
            {
                return Err(Fault::Access);
            }
            let len = usize::try_from(len).map_err(|_| Fault::Bounds)?;
            self.span(iova, len).ok_or(Fault::Bounds)?;
            return Ok(alloc::vec![(iova, len)]);
        }
        let region = self.regions.get(&mpt_index(key)).ok_or(Fault::BadKey)?;
        if !region.valid || region.key != key {
            return Err(Fault::BadKey);
        }
        if !region.access.contains(need) {
            return Err(Fault::Access);
        }
        let offset = iova.checked_sub(region.iova).ok_or(Fault::Bounds)?;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > region.length)
        {
            return Err(Fault::Bounds);
        }
        match &region.translation {
            Translation::Direct => {
                let len = usize::try_from(len).map_err(|_| Fault::Bounds)?;
                Ok(alloc::vec![(iova, len)])
            }
            Translation::Pages { shift, pages } => {
                let page_size = 1u64 << shift;
                let mut spans = Vec::new();
                let mut at = (region.iova & (page_size - 1)) + offset;
                let end = at + len;
                while at < end {
                    let page = pages.get((at >> shift) as usize).ok_or(Fault::Bounds)?;
                    let within = at & (page_size - 1);
                    let take = (page_size - within).min(end - at);
                    spans.push((page + within, take as usize));
                    at += take;
                }
                Ok(spans)
            }
        }
    }

    /// Reads `len` bytes of region `key` at `iova`, checking `need`.
    pub(crate) fn read_region(
        &self,
        key: u32,
        iova: u64,
        len: u64,
        need: Access,
    ) -> Result<Vec<u8>, Fault> {
        let mut data = Vec::new();
        for (addr, len) in self.resolve(key, iova, len, need)? {
            data.extend_from_slice(self.read(addr, len).ok_or(Fault::Bounds)?);
        }
        Ok(data)
    }

    /// Writes `data` to region `key` at `iova`, checking `need`.
    pub(crate) fn write_region(
        &mut self,
        key: u32,
        iova: u64,
        data: &[u8],
        need: Access,
    ) -> Result<(), Fault> {
        let mut rest = data;
        for (addr, len) in self.resolve(key, iova, data.len() as u64, need)? {
            let (chunk, tail) = rest.split_at(len.min(rest.len()));
            self.write(addr, chunk).ok_or(Fault::Bounds)?;
            rest = tail;
        }
        Ok(())
    }
}
