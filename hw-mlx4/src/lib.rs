//! ConnectX-3 (mlx4) hardware driver: the hardware formats as typed views, the fast path,
//! and a software model of the device that runs the fast path on the host.
//!
//! - [`wire`]: WQE segments, CQEs, EQEs and doorbells, laid out as the upstream headers.
//! - [`fastpath`]: post_send, post_recv, poll_cq, req_notify_cq and EQ polling, written
//!   once against [`fastpath::platform::Platform`].
//! - [`model`]: the device in software: executes WQEs between its QPs, writes CQEs and
//!   EQEs, and reports driver mistakes as [`model::ModelError`].
//!
//! The crate is `no_std` (the model needs only `alloc`) because the same source will be
//! compiled into the kernel module by the kbuild glue (see the repository README).
#![no_std]

extern crate alloc;

pub mod fastpath;
pub mod model;
pub mod wire;

pub use fastpath::wr;
