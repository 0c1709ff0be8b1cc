// SPDX-License-Identifier: GPL-2.0
//! Locks for drivers: [`IrqSpinLock`] for state interrupts reach, [`Mutex`] for state
//! only process context reaches and that is held across sleeps.
//!
//! A device's state is reached from process context (verbs), softirq (CQs polled by the
//! IB core's `irq_poll`) and hard interrupts (a driver's event queue): the lock that
//! guards it is taken with interrupts off. The kernel crate of every kernel tilde targets
//! has a spinlock, but not all of them one that saves the interrupt state, and theirs
//! must be pinned where it is initialised; [`IrqSpinLock`] is a `spinlock_t` of its own
//! allocation, taken with `spin_lock_irqsave`, so the value holding it moves freely (a
//! driver's state is built before the IB core allocates the device it lives in).

use core::cell::UnsafeCell;
use core::ffi::{c_void, CStr};
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use kernel::ffi::c_ulong;
use kernel::prelude::*;

use crate::sys;

/// `T` behind a spinlock taken with interrupts off: [`IrqSpinLock::lock`] is the only way
/// to it, and the guard it returns is the proof the lock is held.
///
/// Nothing that sleeps may run under it. Made with [`irq_spin_lock!`], which gives the
/// locks made at one place of the source their own lockdep class, as `spin_lock_init`
/// does in C: lockdep then tells an EQ's lock from a CQ's taken inside it.
pub struct IrqSpinLock<T> {
    lock: NonNull<c_void>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `data` (the guard is the only way to it),
// so the lock may be shared and sent where `T` may be sent.
unsafe impl<T: Send> Send for IrqSpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for IrqSpinLock<T> {}

impl<T> IrqSpinLock<T> {
    /// A lock holding `value`, in lockdep class `class` named `name`; allocates (may
    /// sleep). [`irq_spin_lock!`] supplies the class of its place in the source.
    pub fn new_in(value: T, class: &'static LockClass, name: &'static CStr) -> Result<Self> {
        // SAFETY: allocates and initialises a spinlock; null on failure. `class` is static
        // (lockdep keeps pointers to it) and `name` a static string.
        let lock = NonNull::new(unsafe {
            sys::tilde_rdma_irq_lock_new(class.0.get(), sys::kernel_api::c_str(name))
        })
        .ok_or(ENOMEM)?;
        Ok(Self {
            lock,
            data: UnsafeCell::new(value),
        })
    }

    /// Takes the lock, interrupts off until the guard is dropped.
    pub fn lock(&self) -> IrqSpinLockGuard<'_, T> {
        // SAFETY: the spinlock was initialised in `new` and lives as long as `self`.
        let flags = unsafe { sys::tilde_rdma_irq_lock(self.lock.as_ptr()) };
        IrqSpinLockGuard {
            lock: self,
            flags,
            _not_send: PhantomData,
        }
    }

    /// The value, without locking: `&mut self` proves nobody else can hold the lock.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<T> Drop for IrqSpinLock<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`; nobody holds it (`&mut self`), nobody uses it after.
        unsafe { sys::tilde_rdma_irq_lock_free(self.lock.as_ptr()) };
    }
}

/// A lockdep class: a `struct lock_class_key` in static storage, as lockdep wants it.
pub struct LockClass(UnsafeCell<sys::lock_class_key>);

// SAFETY: only lockdep reads or writes the key, under its own lock; Rust never touches its
// contents.
unsafe impl Sync for LockClass {}

impl LockClass {
    /// A class for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        // SAFETY: an all-zero `lock_class_key` is a static key lockdep has not seen yet,
        // what C's `static struct lock_class_key __key;` is.
        Self(UnsafeCell::new(unsafe { core::mem::zeroed() }))
    }
}

/// A lockdep class of its own for the place of the source that invokes the macro
/// invoking this one, and its name there (`file:line`): for [`irq_spin_lock!`] and
/// [`mutex!`].
#[doc(hidden)]
#[macro_export]
macro_rules! lock_class_here {
    () => {{
        static CLASS: $crate::sync::LockClass = $crate::sync::LockClass::new();
        let name = match ::core::ffi::CStr::from_bytes_with_nul(
            ::core::concat!(::core::file!(), ":", ::core::line!(), "\0").as_bytes(),
        ) {
            Ok(name) => name,
            Err(_) => c"tilde lock",
        };
        (&CLASS, name)
    }};
}

/// An [`IrqSpinLock`] holding the value, in a lockdep class of its own for this place of
/// the source (`file:line` names it in lockdep's reports); `Result`, as it allocates.
#[macro_export]
macro_rules! irq_spin_lock {
    ($value:expr) => {{
        let (class, name) = $crate::lock_class_here!();
        $crate::sync::IrqSpinLock::new_in($value, class, name)
    }};
}

/// A [`Mutex`] holding the value, in a lockdep class of its own for this place of the
/// source, as [`irq_spin_lock!`]; `Result`, as it allocates.
#[macro_export]
macro_rules! mutex {
    ($value:expr) => {{
        let (class, name) = $crate::lock_class_here!();
        $crate::sync::Mutex::new_in($value, class, name)
    }};
}

/// The lock of an [`IrqSpinLock`], held: released, and interrupts restored, on drop.
pub struct IrqSpinLockGuard<'a, T> {
    lock: &'a IrqSpinLock<T>,
    flags: c_ulong,
    /// Released on the CPU that took it: not `Send`.
    _not_send: PhantomData<*mut ()>,
}

impl<T> Deref for IrqSpinLockGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the lock is held for as long as the guard lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for IrqSpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, and `&mut self` makes this the only borrow through
        // the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for IrqSpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: taken in `lock` with these flags, released once, here.
        unsafe { sys::tilde_rdma_irq_unlock(self.lock.lock.as_ptr(), self.flags) };
    }
}

/// `T` behind a sleeping lock (`struct mutex`): for state reached from process context
/// only, by paths that sleep while holding it (a driver's firmware commands). Like
/// [`IrqSpinLock`], the lock is an allocation of its own, so the value holding it moves
/// freely; all of tilde's `Mutex`es share one lockdep class.
pub struct Mutex<T> {
    lock: NonNull<c_void>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `data`.
unsafe impl<T: Send> Send for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    /// A lock holding `value`, in lockdep class `class` named `name`; allocates (may
    /// sleep). [`mutex!`] supplies the class of its place in the source.
    pub fn new_in(value: T, class: &'static LockClass, name: &'static CStr) -> Result<Self> {
        // SAFETY: allocates and initialises a mutex; null on failure. `class` is static
        // (lockdep keeps pointers to it) and `name` a static string.
        let lock = NonNull::new(unsafe {
            sys::tilde_rdma_mutex_new(class.0.get(), sys::kernel_api::c_str(name))
        })
        .ok_or(ENOMEM)?;
        Ok(Self {
            lock,
            data: UnsafeCell::new(value),
        })
    }

    /// Takes the lock, sleeping until it is free; released when the guard is dropped.
    /// Process context only.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        // SAFETY: initialised in `new`, alive as long as `self`.
        unsafe { sys::tilde_rdma_mutex_lock(self.lock.as_ptr()) };
        MutexGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }
}

impl<T> Drop for Mutex<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`; nobody holds it (`&mut self`).
        unsafe { sys::tilde_rdma_mutex_free(self.lock.as_ptr()) };
    }
}

/// A held [`Mutex`]: released on drop.
pub struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
    /// A mutex is released by the task that took it: not `Send`.
    _not_send: PhantomData<*mut ()>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the lock is held for as long as the guard lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held; `&mut self` makes this the only borrow.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: taken in `lock`, released once, here.
        unsafe { sys::tilde_rdma_mutex_unlock(self.lock.lock.as_ptr()) };
    }
}
