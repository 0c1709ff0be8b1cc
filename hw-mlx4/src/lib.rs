//! ConnectX-3 (mlx4) hardware driver: the hardware formats as typed views, the fast path,
//! and a software model of the device that runs the fast path on the host.
//!
//! - [`wire`]: WQE segments, CQEs, EQEs and doorbells, laid out as the upstream headers.
//! - [`fastpath`]: post_send, post_recv, poll_cq, req_notify_cq and EQ polling, written
//!   once against [`fastpath::platform::Platform`].
//! - [`model`]: the device in software: executes WQEs between its QPs, writes CQEs and
//!   EQEs, and reports driver mistakes as [`model::ModelError`].
//!
//! - [`bringup`]: the firmware command interface and the probe that initializes the HCA,
//!   sans-IO over BAR0 and DMA memory traits.
//! - [`ring`]: the ring over memory the CPU addresses, which the kernel module and the
//!   benchmarks share.
//! - [`selftest`]: the fast path over a platform's own queue memory with the CPU playing
//!   the device, for where the model cannot run (the kernel module).
//!
//! The crate is `no_std` because the same source is compiled into `tilde_mlx4.ko` by the
//! kbuild glue (see docs/kernels.md, `--cfg tilde_kernel`). The model needs
//! `alloc`, which kernels no longer ship as a crate, so it is built for the host only.
// kbuild passes `-Zcrate-attr=no_std` itself.
#![cfg_attr(not(tilde_kernel), no_std)]
#![warn(missing_docs)]

#[cfg(not(tilde_kernel))]
extern crate alloc;

pub mod bringup;
pub mod fastpath;
#[cfg(not(tilde_kernel))]
#[allow(missing_docs)] // Host-only (not in the kernel build, whose lints require docs)
pub mod model;
pub mod ring;
pub mod selftest;
pub mod wire;

pub use fastpath::wr;
