//! BAR2 mapped into the guest (`--doorbells mapped`): the UAR pages are a memfd that
//! QEMU maps straight into the guest (a vfio-user sparse mmap area), so a doorbell is a
//! store to memory instead of a message over the socket, and the device watches the
//! pages for them.
//!
//! A doorbell register holds the last value written, and two doorbells for the same QP
//! write the same value, so the device cannot tell a new one by comparing. It consumes
//! them instead: each doorbell word rests at [`IDLE`], a value no doorbell can carry, and
//! the device takes a written value with an atomic swap back to it. Between two passes
//! several doorbells to one register merge into the last, which is what the hardware
//! allows too: a send doorbell means "look at the SQ", a CQ or EQ doorbell's last value
//! is the one that counts.
//!
//! Ordering: on PCIe, posted writes stay in order, so a driver that rings a doorbell and
//! then writes a command to the HCR (BAR0, still trapped) gets the doorbell seen first.
//! The device keeps that by taking every pending doorbell before it handles any trapped
//! access ([`crate::Cx3`] calls [`MappedUar::take`] first).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hw_mlx4::model::hca::layout::{EQ_DOORBELL_PAGES, UAR_PAGES, UAR_PAGE_SHIFT};
use hw_mlx4::wire::{UAR_CQ_DOORBELL, UAR_EQ_DOORBELL, UAR_SEND_DOORBELL};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

/// What a doorbell word holds when nothing was written since the device last took it.
/// No doorbell carries it: a send doorbell's low byte is 0 (`qpn << 8`), and bits 30..24
/// of a CQ doorbell's first word and of an EQ doorbell are 0.
pub const IDLE: u32 = u32::MAX;

/// The EQ doorbells of a UAR page: four, 8 bytes apart (`mlx4_get_eq_uar`).
const EQ_DOORBELLS_PER_PAGE: u64 = 4;

/// BAR2 as guest-visible memory.
pub struct MappedUar {
    file: File,
    region: MmapRegion,
}

/// One doorbell taken from the pages: where, and the bytes the driver wrote.
pub struct Doorbell {
    pub offset: u64,
    bytes: [u8; 8],
    len: usize,
}

impl Doorbell {
    pub fn data(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl MappedUar {
    /// A memfd of `size` bytes, mapped here, with every doorbell at rest.
    pub fn new(size: u64) -> std::io::Result<Self> {
        // SAFETY: a NUL-terminated name and no flags; the call creates a new descriptor
        // or fails, and touches no memory of ours.
        let fd = unsafe { libc::memfd_create(c"cx3-bar2".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        let region = MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), len)
            .map_err(std::io::Error::other)?;
        let uar = Self { file, region };
        uar.clear();
        Ok(uar)
    }

    /// The descriptor QEMU maps.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn word32(&self, offset: u64) -> Option<&AtomicU32> {
        self.region
            .get_atomic_ref::<AtomicU32>(usize::try_from(offset).ok()?)
            .ok()
    }

    fn word64(&self, offset: u64) -> Option<&AtomicU64> {
        self.region
            .get_atomic_ref::<AtomicU64>(usize::try_from(offset).ok()?)
            .ok()
    }

    /// Every doorbell word of each page: (offset, width in bytes).
    fn doorbells() -> impl Iterator<Item = (u64, usize)> {
        (0..u64::from(UAR_PAGES)).flat_map(|page| {
            let base = page << UAR_PAGE_SHIFT;
            [
                (base + UAR_SEND_DOORBELL as u64, 4),
                (base + UAR_CQ_DOORBELL as u64, 8),
            ]
            .into_iter()
            .chain(
                (0..EQ_DOORBELLS_PER_PAGE)
                    .filter(move |_| page < u64::from(EQ_DOORBELL_PAGES))
                    .map(move |i| (base + UAR_EQ_DOORBELL as u64 + 8 * i, 4)),
            )
        })
    }

    /// Puts every doorbell at rest, dropping what was written: at a function reset.
    pub fn clear(&self) {
        for (offset, width) in Self::doorbells() {
            if width == 8 {
                if let Some(word) = self.word64(offset) {
                    word.store(u64::MAX, Ordering::SeqCst);
                }
            } else if let Some(word) = self.word32(offset) {
                word.store(IDLE, Ordering::SeqCst);
            }
        }
    }

    /// Takes the doorbells written since the last call into `taken` (cleared first), in
    /// page order.
    pub fn take(&self, taken: &mut Vec<Doorbell>) {
        taken.clear();
        for (offset, width) in Self::doorbells() {
            let doorbell = if width == 8 {
                let Some(word) = self.word64(offset) else {
                    continue;
                };
                // The first word (the command and CQ number, big-endian) says whether
                // anything was written; the two halves were one 64-bit store.
                if word.load(Ordering::Acquire).to_ne_bytes()[..4] == IDLE.to_ne_bytes() {
                    continue;
                }
                Doorbell {
                    offset,
                    bytes: word.swap(u64::MAX, Ordering::AcqRel).to_ne_bytes(),
                    len: 8,
                }
            } else {
                let Some(word) = self.word32(offset) else {
                    continue;
                };
                if word.load(Ordering::Acquire) == IDLE {
                    continue;
                }
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&word.swap(IDLE, Ordering::AcqRel).to_ne_bytes());
                Doorbell {
                    offset,
                    bytes,
                    len: 4,
                }
            };
            taken.push(doorbell);
        }
    }
}
