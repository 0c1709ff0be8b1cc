//! tilde's fast path over plain memory, set up the way rdma-core's mlx4 provider runs in
//! user space, so the two can be timed on the same job: rings and doorbell records in
//! page-aligned memory, a page standing in for the UAR (doorbells are volatile stores
//! into it, as `mmio_write32_be` is), and the provider's x86 barriers
//! (`udma_to_device_barrier`, `udma_from_device_barrier`: compiler barriers only).
//!
//! A second page stands in for the BlueFlame register ([`MemoryBlueFlame`]): copies into
//! it are 64-bit volatile stores followed by `sfence`, as the provider's
//! `mmio_memcpy_x64` and `mmio_flush_writes` are on x86. [`SpinLock`] is the lock an
//! ops-table entry point needs when several threads may post to one QP, built as
//! `pthread_spin_lock` is.
//!
//! [`Device`] plays the device's one part these benches need: a CQE for every WQE handed
//! over, written as the device writes it.

use hw_mlx4::fastpath::platform::{BlueFlameRegister, DmaRing, DoorbellRecord, Platform, UarPage};
use hw_mlx4::ring::{MemoryRing, RingMemory};
use hw_mlx4::selftest::write_cqe;
use hw_mlx4::wire::{
    eq_doorbell_offset, Be16, Be32, CqDoorbell, Cqe, CtrlSeg, RecvOpcode, SendOpcode,
    UAR_CQ_DOORBELL, UAR_SEND_DOORBELL,
};
use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering};
use zerocopy::FromZeros;

const PAGE: usize = 4096;

/// Zeroed, page-aligned memory, freed on drop.
pub struct Memory {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Memory {
    /// `size` bytes (at least one page's alignment).
    pub fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size.max(1), PAGE).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout));
        Self { ptr, layout }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: `layout.size()` bytes, page-aligned, valid until `drop`.
unsafe impl RingMemory for Memory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn size(&self) -> usize {
        self.layout.size()
    }
}

/// A ring in plain memory: the fast path's own memory ring, as the kernel platform uses
/// it, over a heap block.
pub type BenchRing = MemoryRing<Memory>;

/// A ring of `1 << log_entries` entries of `1 << entry_shift` bytes.
pub fn ring(log_entries: u32, entry_shift: u32) -> BenchRing {
    MemoryRing::new(
        Memory::new(1 << (log_entries + entry_shift)),
        log_entries,
        entry_shift,
    )
    .expect("ring")
}

/// A big-endian doorbell record.
#[derive(Default)]
pub struct MemoryRecord(AtomicU32);

impl DoorbellRecord for MemoryRecord {
    #[inline]
    fn write_release(&self, value: u32) {
        self.0.store(value.to_be(), Ordering::Release);
    }

    #[inline]
    fn read_acquire(&self) -> u32 {
        u32::from_be(self.0.load(Ordering::Acquire))
    }
}

/// A page standing in for the UAR.
pub struct MemoryUar(Memory);

impl Default for MemoryUar {
    fn default() -> Self {
        Self(Memory::new(PAGE))
    }
}

impl MemoryUar {
    #[inline]
    fn write<T>(&self, offset: usize, value: T) {
        // SAFETY: every offset used is a doorbell register inside the page, aligned
        // for `T`.
        unsafe {
            self.0
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value)
        };
    }

    /// The last value written to the send doorbell.
    pub fn send_doorbell(&self) -> u32 {
        // SAFETY: the send doorbell register, inside the page and aligned.
        u32::from_be(unsafe {
            self.0
                .as_ptr()
                .add(UAR_SEND_DOORBELL)
                .cast::<u32>()
                .read_volatile()
        })
    }
}

impl UarPage for MemoryUar {
    #[inline]
    fn ring_send_doorbell(&self, value: u32) {
        self.write(UAR_SEND_DOORBELL, value.to_be());
    }

    #[inline]
    fn ring_cq_doorbell(&self, doorbell: CqDoorbell) {
        let word: u64 = zerocopy::transmute!(doorbell);
        self.write(UAR_CQ_DOORBELL, word);
    }

    #[inline]
    fn ring_eq_doorbell(&self, eqn: u32, word: u32) {
        self.write(eq_doorbell_offset(eqn), word.to_be());
    }
}

/// A page standing in for a BlueFlame register: two buffers of `buffer_size` bytes.
pub struct MemoryBlueFlame {
    page: Memory,
    buffer_size: usize,
}

impl MemoryBlueFlame {
    /// A register whose buffers hold `buffer_size` bytes (at most half a page).
    pub fn new(buffer_size: usize) -> Self {
        assert!(buffer_size * 2 <= PAGE && buffer_size.is_multiple_of(64));
        Self {
            page: Memory::new(PAGE),
            buffer_size,
        }
    }

    /// The send doorbell value (`bf_qpn` without `fence_size`) the copies carried: the
    /// larger of the two buffers', so a register never written reads as 0.
    pub fn last_qpn_word(&self) -> u32 {
        let mut last = 0;
        for buffer in 0..2 {
            let mut bytes = [0u8; 16];
            for (i, byte) in bytes.iter_mut().enumerate() {
                // SAFETY: inside the page.
                *byte = unsafe { self.page.as_ptr().add(buffer * self.buffer_size + i).read() };
            }
            if let Ok((ctrl, _)) = <CtrlSeg as zerocopy::FromBytes>::ref_from_prefix(&bytes[..]) {
                last = last.max(ctrl.blueflame_qpn());
            }
        }
        last
    }
}

impl BlueFlameRegister for MemoryBlueFlame {
    #[inline]
    fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    #[inline]
    fn copy_wqe(&self, buffer: usize, wqe: &[u8]) {
        let copied = wqe.len().min(self.buffer_size);
        let base = self
            .page
            .as_ptr()
            .wrapping_add((buffer & 1) * self.buffer_size);
        let mut dst = base.cast::<u64>();
        for chunk in wqe[..copied].chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            // SAFETY: `copied` bytes from `base` lie inside the page (`buffer_size`
            // bytes per buffer, two buffers, at most a page), 8-aligned; one volatile
            // 64-bit store per word, ascending, as `mmio_memcpy_x64`.
            unsafe {
                dst.write_volatile(u64::from_ne_bytes(word));
                dst = dst.add(1);
            }
        }
        flush_write_combining();
    }
}

/// `mmio_flush_writes` on x86: `sfence`.
#[inline]
fn flush_write_combining() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and only orders stores.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// A spinlock as `pthread_spin_lock` is: an atomic exchange to take, a release store to
/// give back.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock gives `&mut T` to one holder at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// `value` behind the lock.
    pub fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is taken.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        while self.locked.swap(true, Ordering::Acquire) {
            while self.locked.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
        SpinGuard(self)
    }

    /// The value, without locking: `&mut self` already excludes everyone.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

/// The lock, held.
pub struct SpinGuard<'l, T>(&'l SpinLock<T>);

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock.
        unsafe { &mut *self.0.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.0.locked.store(false, Ordering::Release);
    }
}

/// The fast path over plain memory.
pub struct MemoryPlatform;

impl Platform for MemoryPlatform {
    type Ring = BenchRing;
    type DbRecord = MemoryRecord;
    type Uar = MemoryUar;
    type BlueFlame = MemoryBlueFlame;
    type Counter = AtomicU32;
    type WrId = AtomicU64;
    type WrIdTable = Box<[AtomicU64]>;

    #[inline]
    fn dma_wmb() {
        compiler_fence(Ordering::SeqCst);
    }

    #[inline]
    fn dma_rmb() {
        compiler_fence(Ordering::SeqCst);
    }

    #[inline]
    fn wmb() {
        compiler_fence(Ordering::SeqCst);
    }
}

/// A wr_id table of `entries` slots.
pub fn wr_ids(entries: u32) -> Box<[AtomicU64]> {
    (0..entries).map(|_| AtomicU64::new(0)).collect()
}

/// The device's side: the CQE producer counter and the next send and receive WQEs to
/// complete.
#[derive(Default)]
pub struct Device {
    cq: u32,
    sq: u32,
    rq: u32,
}

impl Device {
    /// Writes a send CQE for each WQE of `qpn` up to counter `sq_head` into `cq_ring`
    /// (32-byte entries): the body, then, after the barrier, the owner byte of the lap.
    /// (The benches poll every CQE before the next ring's worth is written, so each entry
    /// written is one the driver gave back.)
    pub fn complete_sends(&mut self, cq_ring: &BenchRing, qpn: u32, sq_head: u32) {
        let entries = 1u32 << cq_ring.log_entries();
        while self.sq != sq_head {
            let mut cqe = Cqe::new_zeroed();
            cqe.vlan_my_qpn = Be32::new(qpn);
            cqe.wqe_index = Be16::new(self.sq as u16);
            cqe.owner_sr_opcode = Cqe::IS_SEND | SendOpcode::Send as u8;
            write_cqe::<MemoryPlatform>(cq_ring, self.cq, entries, &cqe);
            self.sq = self.sq.wrapping_add(1);
            self.cq = self.cq.wrapping_add(1);
        }
    }

    /// Writes a receive CQE (a 64-byte SEND arrived) for each receive WQE of `qpn` up to
    /// counter `rq_head`, as [`Device::complete_sends`] does for sends.
    pub fn complete_recvs(&mut self, cq_ring: &BenchRing, qpn: u32, rq_head: u32) {
        let entries = 1u32 << cq_ring.log_entries();
        while self.rq != rq_head {
            let mut cqe = Cqe::new_zeroed();
            cqe.vlan_my_qpn = Be32::new(qpn);
            cqe.g_mlpath_rqpn = Be32::new(qpn + 1);
            cqe.byte_cnt = Be32::new(64);
            cqe.wqe_index = Be16::new(self.rq as u16);
            cqe.owner_sr_opcode = RecvOpcode::Send as u8;
            write_cqe::<MemoryPlatform>(cq_ring, self.cq, entries, &cqe);
            self.rq = self.rq.wrapping_add(1);
            self.cq = self.cq.wrapping_add(1);
        }
    }
}
