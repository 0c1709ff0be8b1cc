// SPDX-License-Identifier: GPL-2.0
//! Kernel-only cases: fast registration over pages the caller owns (`SgMapping`,
//! `SgRegion`), the zero-copy path of tilde_iser. The host fabric has no scatterlists,
//! so these run in the kernel only.

use kernel::prelude::*;
use rdma_core::{
    dma::{DmaDirection, SgMapping},
    mailbox::Mailbox,
    mr::SgRegion,
    sys,
    verbs::WcStatus,
};

use crate::api::{CompletionQueue, ReturnedWr};
use crate::cases::{check, rc_pair, wait, write_status, CaseResult, Failure, Rig, INV, READ_WRITE, REG};

/// Waits for `tag`'s WR; a failure names `what` and the status.
fn wait_done(
    mailbox: &mut Mailbox,
    cq: &CompletionQueue,
    tag: u64,
    what: &'static str,
) -> Result<ReturnedWr, Failure> {
    let wr = wait(mailbox, cq, tag)?;
    match wr.completion().status {
        WcStatus::Success => Ok(wr),
        status => Err(Failure::Status(what, status)),
    }
}

extern "C" {
    fn tilde_conformance_pages_alloc(n: u32) -> *mut sys::scatterlist;
    fn tilde_conformance_pages_free(sgl: *mut sys::scatterlist, n: u32);
    fn tilde_conformance_page_address(sgl: *mut sys::scatterlist, i: u32) -> *const u8;
    // A `struct page *`, untyped here: `struct page` is not FFI-safe in Rust's eyes (an
    // empty lockdep map in it).
    fn tilde_conformance_page(sgl: *mut sys::scatterlist, i: u32) -> *mut core::ffi::c_void;
}

pub(crate) const PAGES: u32 = 4;
pub(crate) const PAGE: usize = 4096;

/// `PAGES` zeroed pages with their scatterlist, freed on drop.
pub(crate) struct Pages(*mut sys::scatterlist);

impl Pages {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: allocates; null on failure.
        let sgl = unsafe { tilde_conformance_pages_alloc(PAGES) };
        if sgl.is_null() {
            return Err(ENOMEM);
        }
        Ok(Self(sgl))
    }

    /// Page `i` (below `PAGES`), for a bio_vec.
    pub(crate) fn page(&self, i: u32) -> *mut sys::page {
        // SAFETY: the list has `PAGES` entries, each with its page, until the drop.
        unsafe { tilde_conformance_page(self.0, i.min(PAGES - 1)) }.cast()
    }

    /// Sets byte `offset` of the pages, taken as one buffer (below `PAGES * PAGE`).
    pub(crate) fn set(&self, offset: usize, value: u8) {
        let (page, within) = (offset / PAGE, offset % PAGE);
        if page >= PAGES as usize {
            return;
        }
        // SAFETY: `page < PAGES`, so the page is ours and lowmem (`alloc_page(GFP_KERNEL)`),
        // and `within < PAGE`; no mapping of it is with the device while the case writes.
        unsafe {
            tilde_conformance_page_address(self.0, page as u32)
                .cast_mut()
                .add(within)
                .write_volatile(value)
        }
    }

    /// Byte `offset` of the pages, taken as one buffer.
    pub(crate) fn byte(&self, offset: usize) -> u8 {
        let (page, within) = (offset / PAGE, offset % PAGE);
        // SAFETY: `page < PAGES` for the offsets the case reads; the page is ours and
        // lowmem (`alloc_page(GFP_KERNEL)`), `within < PAGE`; read volatile, as memory a
        // device wrote.
        unsafe {
            core::ptr::read_volatile(tilde_conformance_page_address(self.0, page as u32).add(within))
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with `PAGES` entries; no mapping of them is left (the
        // case drops its region, which unmaps, first).
        unsafe { tilde_conformance_pages_free(self.0, PAGES) };
    }
}

/// A region over borrowed pages: registered, it takes the peer's RDMA WRITE and will not
/// give the pages back; a key the peer did not invalidate is not taken for invalidated;
/// after LOCAL_INV the peer is refused and the pages come back.
pub(crate) fn sg_region_lends_pages_until_invalidated(rig: &Rig) -> CaseResult {
    let pages = Pages::new()?;
    let mut mailbox = Mailbox::new()?;
    let (a, b) = rc_pair(rig)?;
    let mut region = SgRegion::new(&rig.pd, PAGES)?;
    // SAFETY: `pages` is a valid list of `PAGES` entries that outlives the region (it is
    // declared first, so dropped last).
    let mapping =
        unsafe { SgMapping::new(&rig.device, pages.0, PAGES, DmaDirection::FromDevice)? };
    region.map(mapping).map_err(|(error, _)| Failure::Verb(error))?;
    check(region.length() == (PAGES as usize * PAGE) as u64, "the region's length is not its pages'")?;
    let key = b.post_reg_sg(mailbox.work_request(REG, None)?, region, READ_WRITE)?;
    let mut done = wait_done(&mut mailbox, &rig.cq, REG, "REG_MR")?;
    let mut region = done
        .take_sg_region()
        .ok_or(Failure::Check("REG_MR came back without its region"))?;
    check(region.rkey() == key, "the key post_reg_sg returned is not the region's")?;
    check(region.unmap().is_none(), "the pages came back while the key was valid")?;
    let len = PAGES as usize * PAGE;
    check(
        write_status(&mut mailbox, rig, &a, (region.iova(), key), len, 5)? == WcStatus::Success,
        "the peer's RDMA WRITE to the pages failed",
    )?;
    // `write_status` sends `patterned(.., 5)`: byte `i` is `pattern(5 + i)`.
    let landed = (0..len).all(|i| pages.byte(i) == crate::cases::pattern(5 + i));
    check(landed, "the peer's data did not land in the pages")?;
    check(!region.invalidated_by(key ^ 0xff), "another key was taken for the region's")?;
    check(region.is_valid(), "the key stopped being valid by itself")?;
    b.post_invalidate(mailbox.work_request(INV, None)?, region)?;
    let mut done = wait_done(&mut mailbox, &rig.cq, INV, "LOCAL_INV")?;
    let mut region = done
        .take_sg_region()
        .ok_or(Failure::Check("LOCAL_INV came back without its region"))?;
    check(!region.is_valid(), "the key is valid after LOCAL_INV")?;
    check(
        write_status(&mut mailbox, rig, &a, (region.iova(), key), 256, 77)?
            == WcStatus::RemoteAccessError,
        "the peer reached the pages after LOCAL_INV",
    )?;
    let untouched = (0..256).all(|i| pages.byte(i) == crate::cases::pattern(5 + i));
    check(untouched, "the refused write after LOCAL_INV landed in the pages")?;
    check(region.unmap().is_some(), "the pages did not come back after LOCAL_INV")?;
    // A receive completion's invalidated key (what the peer's SEND with Invalidate
    // reports) is taken for the region's own: then the pages come back. (No peer sends
    // one here; the region is dropped, so deregistered, right after.) New QPs: the
    // refused write put both of the old ones in error.
    let (_a, b) = rc_pair(rig)?;
    let mapping =
        // SAFETY: as above.
        unsafe { SgMapping::new(&rig.device, pages.0, PAGES, DmaDirection::ToDevice)? };
    region.map(mapping).map_err(|(error, _)| Failure::Verb(error))?;
    let key = b.post_reg_sg(mailbox.work_request(REG, None)?, region, READ_WRITE)?;
    let mut done = wait_done(&mut mailbox, &rig.cq, REG, "REG_MR")?;
    let mut region = done
        .take_sg_region()
        .ok_or(Failure::Check("REG_MR came back without its region"))?;
    check(region.invalidated_by(key), "the region did not take its own key's invalidation")?;
    check(region.unmap().is_some(), "the pages did not come back after the invalidation")?;
    drop(region);
    drop(pages);
    Ok(())
}
