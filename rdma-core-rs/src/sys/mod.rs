// SPDX-License-Identifier: GPL-2.0
//! The binding layer: the one place that knows which kernel tilde is built for.
//!
//! `generated` is made by bindgen at module build time from the target kernel's own
//! headers through `tilde_rdma.h`, with the kernel's own bindgen flags plus
//! `bindgen_parameters`; `cargo xtask kmod` writes it and passes its path in
//! `TILDE_RDMA_BINDINGS`. Everything above this module uses the safe API (`client`,
//! `device`) and never names a kernel version.
//!
//! Kernel API drift the layer bridges (the table in docs/kernels.md lists each one), each
//! decided by a probe of the kernel tree (`cargo xtask kmod` passes `--cfg tilde_<x>`):
//! - `kernel::fmt::Display` (`tilde_kernel_fmt`): 7.x print macros take the kernel's own
//!   `Display` trait, so the verbs types that are logged forward to `core::fmt::Display`
//!   here; older kernels' take `core::fmt` directly;
//! - `pin_init::MaybeZeroable` (`tilde_pin_init_crate`): derived on every binding by the
//!   kernel's bindgen flags where the `pin_init` crate exists;
//! - the rest of the kernel crate's drift: `kernel_api`;
//! - the IB core's C API where kernels differ: `c_api`, decided by probes of the
//!   generated bindings themselves;
//! - a kernel built without Rust (Debian 13's stock 6.12): when the stock
//!   `Module.symvers` lists no Rust symbol of vmlinux, `cargo xtask kmod` links the
//!   kernel's Rust runtime, built in a tree prepared with the stock config plus Rust, into
//!   `tilde_core.ko` and exports it from there, with `carried_runtime.c` for what such a
//!   vmlinux lacks (`%pA`, an exported `vrealloc`). The Rust code here and above is the
//!   same either way (docs/debian-stock-kernel.md).

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unreachable_pub,
    improper_ctypes,
    dead_code,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    unknown_lints,
    unnecessary_transmutes,
    clippy::all,
    clippy::as_underscore,
    clippy::cast_lossless,
    clippy::ptr_as_ptr,
    clippy::ref_as_ptr,
    clippy::undocumented_unsafe_blocks
)]
mod generated {
    use kernel::ffi;
    // The kernel's bindgen flags derive it for every binding where the crate exists.
    #[cfg(tilde_pin_init_crate)]
    use pin_init::MaybeZeroable;

    // The kernel's bindgen flags block these (their C definitions depend on the
    // architecture's `long`); the kernel's own `bindings` crate defines them the same way.
    type __kernel_size_t = usize;
    type __kernel_ssize_t = isize;
    type __kernel_ptrdiff_t = isize;

    include!(env!("TILDE_RDMA_BINDINGS"));
}

// Public as the raw escape hatch (benchmarks compare the safe API against it); ULP code
// uses the safe API, the way modules use `kernel::` abstractions and not `bindings`.
pub use generated::*;

pub mod c_api;
pub mod kernel_api;

#[cfg(tilde_kernel_fmt)]
use crate::verbs::{Decoded, Guid, PortAttr};

/// Lets the kernel's print macros take tilde's verbs types.
#[cfg(tilde_kernel_fmt)]
macro_rules! forward_display {
    ($($ty:ty),* $(,)?) => {$(
        impl kernel::fmt::Display for $ty {
            fn fmt(&self, f: &mut kernel::fmt::Formatter<'_>) -> kernel::fmt::Result {
                core::fmt::Display::fmt(self, f)
            }
        }
    )*};
}

#[cfg(tilde_kernel_fmt)]
forward_display!(
    Guid,
    PortAttr,
    crate::device::DeviceName,
    crate::netdev::NetDevName,
    crate::verbs::Gid,
    crate::verbs::WcStatus,
    crate::verbs::WcOpcode
);

#[cfg(tilde_kernel_fmt)]
impl<T: core::fmt::Display> kernel::fmt::Display for Decoded<T> {
    fn fmt(&self, f: &mut kernel::fmt::Formatter<'_>) -> kernel::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}
