// SPDX-License-Identifier: GPL-2.0
//! The parts of the kernel's own API that tilde's code uses and that differ between the
//! kernels it targets, under one name for all of them ("under the tilde").
//!
//! Everything above the binding layer (`rdma_core`'s API, the modules, the ULPs) takes
//! these from here (`rdma_core::kernel_api`), never from `kernel::` directly:
//! - [`atomic`]: atomics with the kernel's names and typed orderings, one implementation on
//!   every kernel (see the module);
//! - [`c_str`]: a C string for the bindings;
//! - [`timed_out`], [`shut_down`]: errnos the kernel crate may not name;
//! - [`push_within_capacity`], [`remove`], [`clear`]: `KVec` methods the kernel crate may
//!   lack;
//! - [`sleep`] and [`monotonic`]: through C helpers (`fsleep`, `ktime_get_ns`), which
//!   every kernel has, so the Rust side never names `kernel::time`;
//! - [`barrier`]: the DMA and MMIO ordering barriers a driver's fast path needs, which no
//!   kernel's Rust offers, inlined.

use core::time::Duration;

use super::{tilde_rdma_cond_resched, tilde_rdma_fsleep, tilde_rdma_ktime_ns};

/// Atomics with explicit orderings, with the names and methods of the kernel's
/// `kernel::sync::atomic` (`Atomic<T>`, `Acquire`, `Release`, `Relaxed`, `Full`), over
/// `core::sync::atomic` on every kernel, with `Full` as `SeqCst`: on x86 the same locked
/// instructions as the kernel's C atomics. Not the kernel crate's own, which 6.12 lacks
/// and which 7.2 implements as calls to out-of-line C helpers (`rust_helper_atomic_*`,
/// one call per operation in the posting and polling paths, measured): one
/// implementation, inlined, keeps the fast path's machine code the same on every kernel.
pub mod atomic {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };

    /// An ordering, as a type (the kernel's style).
    pub trait Order {
        /// The ordering of a read-modify-write or a store.
        const ORDERING: Ordering;
        /// The ordering of a load, or of a failed compare-exchange.
        const LOAD: Ordering;
    }

    macro_rules! orders {
        ($($name:ident => $rmw:ident, $load:ident;)*) => {$(
            /// An ordering.
            #[derive(Clone, Copy, Debug)]
            pub struct $name;
            impl Order for $name {
                const ORDERING: Ordering = Ordering::$rmw;
                const LOAD: Ordering = Ordering::$load;
            }
        )*};
    }

    orders! {
        Relaxed => Relaxed, Relaxed;
        Acquire => Acquire, Acquire;
        Release => Release, Relaxed;
        Full => SeqCst, SeqCst;
    }

    /// The orderings a load takes: `Relaxed`, `Acquire`, or `Full` (sequentially
    /// consistent, for a store-then-load handshake; on x86 still a plain load). A
    /// `Release` load does not type-check (core's would panic).
    pub trait LoadOrder: Order {}
    impl LoadOrder for Relaxed {}
    impl LoadOrder for Acquire {}
    impl LoadOrder for Full {}

    /// The orderings a store takes: `Relaxed`, `Release`, or `Full`. An `Acquire` store
    /// does not type-check (core's would panic).
    pub trait StoreOrder: Order {}
    impl StoreOrder for Relaxed {}
    impl StoreOrder for Release {}
    impl StoreOrder for Full {}

    /// A value that has an atomic form: the `core::sync::atomic` type of the same size
    /// and alignment, used in place through `from_ptr`.
    ///
    /// # Safety
    ///
    /// Every method accesses the value atomically (`Atomic<T>` is `Sync` on that promise).
    pub unsafe trait AtomicType: Copy {
        #[doc(hidden)]
        /// # Safety
        /// `p` is valid, aligned, and only ever accessed atomically.
        unsafe fn load(p: *mut Self, o: Ordering) -> Self;
        #[doc(hidden)]
        /// # Safety
        /// As for `load`.
        unsafe fn store(p: *mut Self, v: Self, o: Ordering);
        #[doc(hidden)]
        /// # Safety
        /// As for `load`.
        unsafe fn swap(p: *mut Self, v: Self, o: Ordering) -> Self;
        #[doc(hidden)]
        /// # Safety
        /// As for `load`.
        unsafe fn compare_exchange(
            p: *mut Self,
            old: Self,
            new: Self,
            s: Ordering,
            f: Ordering,
        ) -> Result<Self, Self>;
    }

    /// A value with atomic addition.
    pub trait AtomicAdd: AtomicType {
        #[doc(hidden)]
        /// # Safety
        /// As for `AtomicType::load`.
        unsafe fn fetch_add(p: *mut Self, v: Self, o: Ordering) -> Self;
        #[doc(hidden)]
        /// # Safety
        /// As for `AtomicType::load`.
        unsafe fn fetch_sub(p: *mut Self, v: Self, o: Ordering) -> Self;
    }

    // Every method here is `#[inline(always)]`: the ordering is a constant at each call,
    // and an out-of-line copy would keep core's match over all orderings, its panics
    // for the impossible ones included, in the fast path (xtask's panic check finds it).
    macro_rules! atomic_type {
        ($t:ty, $repr:ty) => {
            // SAFETY (every method): `p` is valid and aligned for `$t`, and `$repr` has
            // the size and alignment of `$t` (caller and `Atomic` guarantee the rest).
            // SAFETY: every method goes through the `core::sync::atomic` type.
            unsafe impl AtomicType for $t {
                #[inline(always)]
                unsafe fn load(p: *mut Self, o: Ordering) -> Self {
                    // SAFETY: see above.
                    unsafe { <$repr>::from_ptr(p) }.load(o)
                }
                #[inline(always)]
                unsafe fn store(p: *mut Self, v: Self, o: Ordering) {
                    // SAFETY: see above.
                    unsafe { <$repr>::from_ptr(p) }.store(v, o)
                }
                #[inline(always)]
                unsafe fn swap(p: *mut Self, v: Self, o: Ordering) -> Self {
                    // SAFETY: see above.
                    unsafe { <$repr>::from_ptr(p) }.swap(v, o)
                }
                #[inline(always)]
                unsafe fn compare_exchange(
                    p: *mut Self,
                    old: Self,
                    new: Self,
                    s: Ordering,
                    f: Ordering,
                ) -> Result<Self, Self> {
                    // SAFETY: see above.
                    unsafe { <$repr>::from_ptr(p) }.compare_exchange(old, new, s, f)
                }
            }
        };
    }

    macro_rules! atomic_add {
        ($t:ty, $repr:ty) => {
            atomic_type!($t, $repr);
            impl AtomicAdd for $t {
                #[inline(always)]
                unsafe fn fetch_add(p: *mut Self, v: Self, o: Ordering) -> Self {
                    // SAFETY: as for `AtomicType`.
                    unsafe { <$repr>::from_ptr(p) }.fetch_add(v, o)
                }
                #[inline(always)]
                unsafe fn fetch_sub(p: *mut Self, v: Self, o: Ordering) -> Self {
                    // SAFETY: as for `AtomicType`.
                    unsafe { <$repr>::from_ptr(p) }.fetch_sub(v, o)
                }
            }
        };
    }

    atomic_add!(i32, AtomicI32);
    atomic_add!(u32, AtomicU32);
    atomic_add!(i64, AtomicI64);
    atomic_add!(u64, AtomicU64);
    atomic_add!(usize, AtomicUsize);
    atomic_type!(bool, AtomicBool);

    // SAFETY: every method goes through `AtomicPtr`.
    unsafe impl<T> AtomicType for *mut T {
        #[inline(always)]
        unsafe fn load(p: *mut Self, o: Ordering) -> Self {
            // SAFETY: as for `AtomicType`; `AtomicPtr<T>` has a pointer's layout.
            unsafe { AtomicPtr::from_ptr(p) }.load(o)
        }
        #[inline(always)]
        unsafe fn store(p: *mut Self, v: Self, o: Ordering) {
            // SAFETY: as above.
            unsafe { AtomicPtr::from_ptr(p) }.store(v, o)
        }
        #[inline(always)]
        unsafe fn swap(p: *mut Self, v: Self, o: Ordering) -> Self {
            // SAFETY: as above.
            unsafe { AtomicPtr::from_ptr(p) }.swap(v, o)
        }
        #[inline(always)]
        unsafe fn compare_exchange(
            p: *mut Self,
            old: Self,
            new: Self,
            s: Ordering,
            f: Ordering,
        ) -> Result<Self, Self> {
            // SAFETY: as above.
            unsafe { AtomicPtr::from_ptr(p) }.compare_exchange(old, new, s, f)
        }
    }

    /// An atomic `T`, with the kernel's `Atomic<T>` methods; `new` is `const`, so it
    /// can initialise a static.
    #[repr(transparent)]
    pub struct Atomic<T: AtomicType>(UnsafeCell<T>);

    // SAFETY: the value is only ever accessed through atomic operations, as with
    // `core::sync::atomic` types (`AtomicPtr` is `Sync` too).
    unsafe impl<T: AtomicType> Sync for Atomic<T> {}
    // SAFETY: as above.
    unsafe impl<T: AtomicType> Send for Atomic<T> {}

    impl<T: AtomicType> Atomic<T> {
        /// An atomic holding `v`.
        pub const fn new(v: T) -> Self {
            Self(UnsafeCell::new(v))
        }

        /// The atomic at `ptr`, for a value in memory that someone else allocated (a
        /// record in queue memory that a device reads).
        ///
        /// # Safety
        ///
        /// `ptr` is valid and aligned for `T` for `'a`, and the CPU accesses it only
        /// atomically meanwhile.
        pub const unsafe fn from_ptr<'a>(ptr: *mut T) -> &'a Self {
            // SAFETY: `Atomic<T>` is a transparent `UnsafeCell<T>`, which has the layout
            // of `T`; the caller vouches for validity, alignment and atomic-only access.
            unsafe { &*ptr.cast::<Self>() }
        }

        /// Reads the value.
        #[inline(always)]
        pub fn load<O: LoadOrder>(&self, _: O) -> T {
            // SAFETY: the cell is valid and aligned, and only accessed atomically.
            unsafe { T::load(self.0.get(), O::LOAD) }
        }

        /// Writes `v`.
        #[inline(always)]
        pub fn store<O: StoreOrder>(&self, v: T, _: O) {
            // SAFETY: as above.
            unsafe { T::store(self.0.get(), v, O::ORDERING) }
        }

        /// Writes `v`, returning the value it replaced.
        #[inline(always)]
        pub fn xchg<O: Order>(&self, v: T, _: O) -> T {
            // SAFETY: as above.
            unsafe { T::swap(self.0.get(), v, O::ORDERING) }
        }

        /// Writes `new` if the value is `old`; the value found either way.
        #[inline(always)]
        pub fn cmpxchg<O: Order>(&self, old: T, new: T, _: O) -> Result<T, T> {
            // SAFETY: as above.
            unsafe { T::compare_exchange(self.0.get(), old, new, O::ORDERING, O::LOAD) }
        }
    }

    impl<T: AtomicAdd> Atomic<T> {
        /// Adds `v`, returning the value before.
        #[inline(always)]
        pub fn fetch_add<O: Order>(&self, v: T, _: O) -> T {
            // SAFETY: the cell is valid and aligned, and only accessed atomically.
            unsafe { T::fetch_add(self.0.get(), v, O::ORDERING) }
        }

        /// Subtracts `v`, returning the value before.
        #[inline(always)]
        pub fn fetch_sub<O: Order>(&self, v: T, _: O) -> T {
            // SAFETY: as above.
            unsafe { T::fetch_sub(self.0.get(), v, O::ORDERING) }
        }

        /// Adds `v`, relaxed.
        #[inline(always)]
        pub fn add(&self, v: T, _: Relaxed) {
            // SAFETY: as above.
            unsafe { T::fetch_add(self.0.get(), v, Ordering::Relaxed) };
        }
    }
}

/// The barriers of `asm/barrier.h` that order a driver's accesses to coherent DMA memory
/// and its MMIO writes (`dma_wmb`, `dma_rmb`, `wmb`). No kernel's `kernel` crate has
/// them (7.2 has only the `smp_*` ones, as calls to C helpers); tilde's are inlined, so
/// a fast path that uses them compiles to the same machine code on every kernel.
pub mod barrier {
    /// Orders stores to coherent DMA memory before later stores to it (a descriptor's
    /// body before its ownership word).
    #[inline(always)]
    pub fn dma_wmb() {
        arch::dma_wmb()
    }

    /// Orders loads from coherent DMA memory before later loads from it (an ownership
    /// word before the descriptor's body).
    #[inline(always)]
    pub fn dma_rmb() {
        arch::dma_rmb()
    }

    /// Orders every earlier store, to memory or write-combined MMIO, before later stores
    /// (queue memory before the doorbell that makes the device read it).
    #[inline(always)]
    pub fn wmb() {
        arch::wmb()
    }

    /// x86 (`arch/x86/include/asm/barrier.h`): the CPU keeps stores in order and loads in
    /// order, so `dma_wmb` and `dma_rmb` only stop the compiler (`barrier()`); `wmb` is
    /// `sfence`, which also drains write-combining buffers.
    #[cfg(target_arch = "x86_64")]
    mod arch {
        use core::sync::atomic::{compiler_fence, Ordering};

        #[inline(always)]
        pub(super) fn dma_wmb() {
            compiler_fence(Ordering::SeqCst);
        }

        #[inline(always)]
        pub(super) fn dma_rmb() {
            compiler_fence(Ordering::SeqCst);
        }

        #[inline(always)]
        pub(super) fn wmb() {
            // SAFETY: `sfence` only orders stores; without `nomem` the asm is also a
            // compiler barrier, as the kernel's `asm volatile(... ::: "memory")`.
            unsafe { core::arch::asm!("sfence", options(nostack, preserves_flags)) };
        }
    }

    /// Other architectures: the kernel's own barriers, out of line.
    #[cfg(not(target_arch = "x86_64"))]
    mod arch {
        use crate::sys::{tilde_rdma_dma_rmb, tilde_rdma_dma_wmb, tilde_rdma_wmb};

        pub(super) fn dma_wmb() {
            // SAFETY: a barrier has no preconditions.
            unsafe { tilde_rdma_dma_wmb() };
        }

        pub(super) fn dma_rmb() {
            // SAFETY: a barrier has no preconditions.
            unsafe { tilde_rdma_dma_rmb() };
        }

        pub(super) fn wmb() {
            // SAFETY: a barrier has no preconditions.
            unsafe { tilde_rdma_wmb() };
        }
    }
}

/// `ETIMEDOUT`, which not every kernel's `kernel::error::code` declares.
pub fn timed_out() -> kernel::error::Error {
    kernel::error::Error::from_errno(-(kernel::bindings::ETIMEDOUT as i32))
}

/// The error of errno `code` (`kernel::bindings::E*`), for the many that not every
/// kernel's `kernel::error::code` declares.
pub fn errno(code: u32) -> kernel::error::Error {
    kernel::error::Error::from_errno(-(code as i32))
}

/// `ESHUTDOWN`, which no kernel's `kernel::error::code` declares yet.
pub fn shut_down() -> kernel::error::Error {
    kernel::error::Error::from_errno(-(kernel::bindings::ESHUTDOWN as i32))
}

/// `KVec::push_within_capacity`, which not every kernel has: pushes `value` if the
/// vector has room (no allocation), else hands it back.
pub fn push_within_capacity<T>(vec: &mut kernel::alloc::KVec<T>, value: T) -> Result<(), T> {
    if vec.len() >= vec.capacity() {
        return Err(value);
    }
    // With room for it, the push does not allocate, so it cannot fail.
    let _ = vec.push(value, kernel::alloc::flags::GFP_ATOMIC);
    Ok(())
}

/// `KVec::clear`: drops every element, keeping the capacity.
#[cfg(tilde_kvec_clear)]
pub fn clear<T>(vec: &mut kernel::alloc::KVec<T>) {
    vec.clear();
}

/// `KVec::clear` for a kernel without it.
#[cfg(not(tilde_kvec_clear))]
pub fn clear<T>(vec: &mut kernel::alloc::KVec<T>) {
    let len = vec.len();
    // SAFETY: the length goes to 0 first, so an element is never reachable after its drop
    // (nor dropped twice, should a drop panic); the `len` elements were initialised.
    unsafe {
        vec.set_len(0);
        core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(vec.as_mut_ptr(), len));
    }
}

/// `KVec::remove`: takes the element at `index` out, keeping the order of the rest.
#[cfg(tilde_kvec_remove)]
pub fn remove<T>(vec: &mut kernel::alloc::KVec<T>, index: usize) -> Option<T> {
    vec.remove(index).ok()
}

/// `KVec::remove` for a kernel without it (nor `pop`).
#[cfg(not(tilde_kvec_remove))]
pub fn remove<T>(vec: &mut kernel::alloc::KVec<T>, index: usize) -> Option<T> {
    if index >= vec.len() {
        return None;
    }
    let tail = vec.as_mut_slice().get_mut(index..)?;
    // Not empty: `index` is in bounds.
    tail.rotate_left(1);
    let last = vec.len().checked_sub(1)?;
    // SAFETY: `last` is in bounds (the vector is not empty: `index` was); the element is
    // read out once and the length shortened past it at once, so it is never dropped
    // twice nor read again.
    unsafe {
        let value = core::ptr::read(vec.as_ptr().add(last));
        vec.set_len(last);
        Some(value)
    }
}

/// A C string as the bindings take it: a pointer to the kernel's `char`, which is
/// unsigned on every architecture (`-funsigned-char`), unlike `core::ffi::c_char`; valid
/// as long as `s`.
#[cfg(tilde_str_const_char_ptr)]
pub const fn c_str(s: &core::ffi::CStr) -> *const kernel::ffi::c_char {
    kernel::str::as_char_ptr_in_const_context(s)
}

/// A C string as the bindings take it (a kernel without `as_char_ptr_in_const_context`).
#[cfg(not(tilde_str_const_char_ptr))]
#[allow(clippy::disallowed_methods)]
pub const fn c_str(s: &core::ffi::CStr) -> *const kernel::ffi::c_char {
    s.as_ptr().cast()
}

/// Sleeps for `duration` (`fsleep`: the kernel picks the mechanism for the length).
/// May sleep: process context only.
pub fn sleep(duration: Duration) {
    // Long enough for any wait here, and far from `fsleep`'s rounding overflow.
    let micros = usize::try_from(duration.as_micros())
        .unwrap_or(usize::MAX)
        .min(1 << 40);
    // SAFETY: `fsleep` only sleeps; callers are in process context (documented).
    unsafe { tilde_rdma_fsleep(micros) };
}

/// Lets the scheduler run something else if it wants to (`cond_resched`): the turn of
/// a polling loop that may last. Process context only.
pub fn cond_resched() {
    // SAFETY: `cond_resched` only yields; callers are in process context (documented).
    unsafe { tilde_rdma_cond_resched() };
}

/// The monotonic clock (`ktime_get_ns`), as time since boot.
pub fn monotonic() -> Duration {
    // SAFETY: a pure read of the clock.
    Duration::from_nanos(unsafe { tilde_rdma_ktime_ns() })
}
