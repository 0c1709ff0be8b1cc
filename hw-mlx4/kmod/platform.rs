// SPDX-License-Identifier: GPL-2.0
//! The fast path's platform in the kernel: queue memory the device shares, doorbell
//! records in it, the UAR page's MMIO doorbells, the kernel's barriers and atomics.
//!
//! This is the one instantiation of `hw_mlx4::fastpath` that runs in the kernel, so its
//! post_send, post_recv, poll_cq and req_notify_cq are what `cargo xtask test` compares
//! between kernel targets. Everything it uses is the same on every kernel: the barriers
//! and atomics come from `rdma_core::kernel_api` (inlined), the MMIO stores are volatile
//! stores (what `__raw_writel`/`__raw_writeq` are on x86), and memory comes from a C
//! helper (`queue_memory.c`).

use core::ffi::c_void;
use core::ptr::NonNull;

use hw_mlx4::fastpath::platform::{
    BlueFlameRegister, DoorbellRecord, Platform, SharedCounter, UarPage, WrIdSlot,
};
use hw_mlx4::ring::{MemoryRing, RingMemory};
use hw_mlx4::wire::{eq_doorbell_offset, CqDoorbell, UAR_CQ_DOORBELL, UAR_SEND_DOORBELL};
use kernel::prelude::*;
use kernel::sync::Arc;
use rdma_core::kernel_api::atomic::{Acquire, Atomic, Relaxed, Release};
use rdma_core::kernel_api::barrier;
use rdma_core::pci::{Bar, Coherent};

use crate::wr_ids::WrIds;

extern "C" {
    fn tilde_mlx4_queue_alloc(size: usize) -> *mut c_void;
    fn tilde_mlx4_queue_free(cpu: *mut c_void);
}

/// Zeroed, physically contiguous memory, aligned to its (power-of-two) size, that the
/// device and the CPU share: the module's own (the self-test's), freed on drop, or part of
/// a DMA block of the bring-up core's (a queue it created), which it keeps alive.
pub(crate) struct QueueMemory {
    cpu: NonNull<u8>,
    size: usize,
    backing: Backing,
}

// SAFETY: the memory is the device's and the CPU's alike, never a thread's: the fast
// path reaches it from its posters and pollers on any CPU through the queue protocol
// (ownership bits, shared counters, barriers), and the backing is freed once, on drop.
unsafe impl Send for QueueMemory {}
// SAFETY: as above; `&self` reaches it only through raw pointers whose use the queue
// protocol orders.
unsafe impl Sync for QueueMemory {}

enum Backing {
    /// `tilde_mlx4_queue_alloc`'s.
    Kmalloc,
    /// Inside this block, kept allocated while the memory is in use.
    Dma { _block: Arc<Coherent> },
}

impl QueueMemory {
    /// `size` bytes, a power of two (at least 16 are allocated, so that the memory is
    /// 16-byte aligned whatever its use).
    pub(crate) fn new(size: usize) -> Result<Self> {
        if !size.is_power_of_two() {
            return Err(EINVAL);
        }
        let size = size.max(16);
        // SAFETY: the helper allocates or returns NULL; nothing else is required.
        let cpu = unsafe { tilde_mlx4_queue_alloc(size) };
        let cpu = NonNull::new(cpu.cast::<u8>()).ok_or(ENOMEM)?;
        Ok(Self {
            cpu,
            size,
            backing: Backing::Kmalloc,
        })
    }

    /// The `size` bytes at `offset` of `block` (a queue's buffer or doorbell page the
    /// bring-up core allocated and gave the device): `size` a power of two, the range
    /// inside the block and aligned to its size, or to a page when larger: a QP's receive
    /// queue may be larger than the send queue before it (`mlx4_ib`'s layout puts the
    /// larger stride first, not the larger queue), and a ring needs no more.
    pub(crate) fn in_block(block: &Arc<Coherent>, offset: usize, size: usize) -> Result<Self> {
        let end = offset.checked_add(size).ok_or(EINVAL)?;
        if !size.is_power_of_two() || end > block.len() {
            return Err(EINVAL);
        }
        // The block is aligned to its page order, so the offset decides the alignment.
        if offset % size.min(4096) != 0 {
            return Err(EINVAL);
        }
        // SAFETY: `offset + size` is inside the block (checked), which the `Arc` kept
        // here holds allocated for as long as `self`.
        let cpu = unsafe { NonNull::new_unchecked(block.as_ptr().as_ptr().add(offset)) };
        Ok(Self {
            cpu,
            size,
            backing: Backing::Dma {
                _block: block.clone(),
            },
        })
    }

    /// The 32-bit word at `offset`, read once; `None` past the end or unaligned.
    pub(crate) fn read_u32(&self, offset: usize) -> Option<u32> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.size {
            return None;
        }
        // SAFETY: in bounds and aligned (checked above; the memory is aligned to its
        // size); a volatile read, as the device may write it.
        Some(unsafe { self.cpu.as_ptr().add(offset).cast::<u32>().read_volatile() })
    }

    /// Writes the 32-bit word at `offset` once; `None` past the end or unaligned.
    pub(crate) fn write_u32(&self, offset: usize, value: u32) -> Option<()> {
        if offset % 4 != 0 || offset.checked_add(4)? > self.size {
            return None;
        }
        // SAFETY: in bounds and aligned (checked above); a volatile write, as the
        // device may read it.
        unsafe {
            self.cpu
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        };
        Some(())
    }
}

impl Drop for QueueMemory {
    fn drop(&mut self) {
        if let Backing::Kmalloc = self.backing {
            // SAFETY: allocated by `tilde_mlx4_queue_alloc`, freed once.
            unsafe { tilde_mlx4_queue_free(self.cpu.as_ptr().cast()) };
        }
    }
}

// SAFETY: the memory is `size` bytes, a power of two, aligned to its size or to a page
// (kmalloc aligns such sizes to themselves; `in_block` checks), so to at least 16 bytes,
// and stays put until `drop`.
unsafe impl RingMemory for QueueMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.cpu.as_ptr()
    }

    fn size(&self) -> usize {
        self.size
    }
}

/// A ring of queue memory: `hw_mlx4`'s memory ring over a kernel allocation.
pub(crate) type KernelRing = MemoryRing<QueueMemory>;

/// A ring of `1 << log_entries` entries of `1 << entry_shift` bytes in new queue memory.
pub(crate) fn ring(log_entries: u32, entry_shift: u32) -> Result<KernelRing> {
    // Up to 16 MiB: more than any mlx4 queue.
    let bits = log_entries
        .checked_add(entry_shift)
        .filter(|bits| *bits < 24)
        .ok_or(EINVAL)?;
    MemoryRing::new(QueueMemory::new(1 << bits)?, log_entries, entry_shift).ok_or(EINVAL)
}

/// A 32-bit doorbell record in queue memory, big-endian, as the device reads it.
pub(crate) struct KernelDoorbellRecord {
    memory: QueueMemory,
}

impl KernelDoorbellRecord {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            memory: QueueMemory::new(size_of::<u32>())?,
        })
    }

    /// The record at `offset` of a doorbell page the bring-up core allocated.
    pub(crate) fn in_block(block: &Arc<Coherent>, offset: usize) -> Result<Self> {
        Ok(Self {
            memory: QueueMemory::in_block(block, offset, size_of::<u32>())?,
        })
    }

    #[inline]
    fn atomic(&self) -> &Atomic<u32> {
        // SAFETY: the memory holds one aligned `u32` for as long as `self`, and the CPU
        // touches it only through this atomic.
        unsafe { Atomic::from_ptr(self.memory.as_ptr().cast::<u32>()) }
    }
}

impl DoorbellRecord for KernelDoorbellRecord {
    #[inline]
    fn write_release(&self, value: u32) {
        self.atomic().store(value.to_be(), Release);
    }

    #[inline]
    fn read_acquire(&self) -> u32 {
        u32::from_be(self.atomic().load(Acquire))
    }
}

/// The UAR page: the doorbell registers, written by MMIO.
pub(crate) struct Uar {
    base: NonNull<u8>,
    /// The BAR the page is in, mapped while `self` lives (none for the self-test's page
    /// of memory, which its caller keeps).
    _bar: Option<Arc<Bar>>,
}

// SAFETY: MMIO writes to the doorbell registers, from any CPU, are how the device is
// told of work; the mapping is held by the `Arc` (or the self-test's caller).
unsafe impl Send for Uar {}
// SAFETY: as above; every register write is one whole store (`write_volatile`).
unsafe impl Sync for Uar {}

/// A UAR page's size.
pub(crate) const UAR_PAGE_SIZE: usize = 4096;

impl Uar {
    /// UAR page `index` of the device's BAR2.
    pub(crate) fn in_bar(bar: &Arc<Bar>, index: u32) -> Result<Self> {
        let offset = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(UAR_PAGE_SIZE))
            .filter(|o| {
                o.checked_add(UAR_PAGE_SIZE)
                    .is_some_and(|end| end <= bar.len())
            })
            .ok_or(EINVAL)?;
        // SAFETY: the page is inside the mapping (checked), which the `Arc` kept here
        // holds mapped for as long as `self`.
        let base = unsafe { NonNull::new_unchecked(bar.as_ptr().as_ptr().add(offset)) };
        Ok(Self {
            base,
            _bar: Some(bar.clone()),
        })
    }

    /// The UAR page at `base`.
    ///
    /// # Safety
    ///
    /// `base` is a mapped UAR page (or, for the self-test, page-sized memory standing in
    /// for one) that stays mapped while the `Uar` lives.
    pub(crate) unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base, _bar: None }
    }

    /// # Safety
    ///
    /// `offset` is one of the page's doorbell registers, aligned for `T`.
    #[inline]
    unsafe fn write<T>(&self, offset: usize, value: T) {
        // SAFETY: the register is inside the mapped page (the caller's and `new`'s
        // promises); a volatile store is one MMIO write of `T`'s width.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value)
        };
    }
}

impl UarPage for Uar {
    #[inline]
    fn ring_send_doorbell(&self, value: u32) {
        // SAFETY: the send doorbell register, 4-aligned (`writel` of `doorbell_qpn`).
        unsafe { self.write(UAR_SEND_DOORBELL, value.to_be()) };
    }

    #[inline]
    fn ring_cq_doorbell(&self, doorbell: CqDoorbell) {
        // Both big-endian words in one 64-bit store, as `mlx4_write64` on 64-bit.
        let word: u64 = zerocopy::transmute!(doorbell);
        // SAFETY: the CQ doorbell register, 8-aligned.
        unsafe { self.write(UAR_CQ_DOORBELL, word) };
    }

    #[inline]
    fn ring_eq_doorbell(&self, eqn: u32, word: u32) {
        // SAFETY: one of the page's four EQ doorbell registers, 4-aligned.
        unsafe { self.write(eq_doorbell_offset(eqn), word.to_be()) };
    }
}

/// A counter the poster and the completer of a queue share.
pub(crate) struct Counter(Atomic<u32>);

impl SharedCounter for Counter {
    #[inline]
    fn new(value: u32) -> Self {
        Self(Atomic::new(value))
    }

    #[inline]
    fn load_acquire(&self) -> u32 {
        self.0.load(Acquire)
    }

    #[inline]
    fn store_release(&self, value: u32) {
        self.0.store(value, Release)
    }
}

/// A wr_id slot.
pub(crate) struct WrId(Atomic<u64>);

impl WrIdSlot for WrId {
    #[inline]
    fn new(value: u64) -> Self {
        Self(Atomic::new(value))
    }

    #[inline]
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    #[inline]
    fn set(&self, value: u64) {
        self.0.store(value, Relaxed)
    }
}

/// The BlueFlame register of a QP in the kernel: none yet. tilde_mlx4 binds no device and
/// maps no BlueFlame page (the write-combining mapping of BAR2 past the UARs, as
/// `mlx4_bf_alloc` makes it) until it becomes the ConnectX-3 driver; an uninhabited type
/// says so, and lets no QP be split with a register.
pub(crate) enum NoBlueFlame {}

impl BlueFlameRegister for NoBlueFlame {
    fn buffer_size(&self) -> usize {
        match *self {}
    }

    fn copy_wqe(&self, _buffer: usize, _wqe: &[u8]) {
        match *self {}
    }
}

/// The fast path in the kernel.
pub(crate) struct KernelPlatform;

impl Platform for KernelPlatform {
    type Ring = KernelRing;
    type DbRecord = KernelDoorbellRecord;
    type Uar = Uar;
    type BlueFlame = NoBlueFlame;
    type Counter = Counter;
    type WrId = WrId;
    type WrIdTable = WrIds;

    #[inline]
    fn dma_wmb() {
        barrier::dma_wmb();
    }

    #[inline]
    fn dma_rmb() {
        barrier::dma_rmb();
    }

    #[inline]
    fn wmb() {
        barrier::wmb();
    }
}
