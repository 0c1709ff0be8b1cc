// SPDX-License-Identifier: GPL-2.0
//! tilde's IB core.
//!
//! - [`verbs`]: verbs types, the same on the host and in the kernel.
//! - `sys` (kernel build only): the binding layer, "under the tilde": bindings generated
//!   by bindgen from the target kernel's own `include/rdma` headers, C helpers for its
//!   inline functions, and the shims that bridge one kernel's verbs to another's. Every
//!   kernel difference lives there and nowhere else.
//! - `client`, `device`, `pd`, `cq`, `qp`, `wr`, `mr`, `ah`, `dma`, `mailbox`, `cm` and
//!   `ib_cm` (the RDMA CM and the IB CM), `sa`, `netdev`, `work` (kernel
//!   build only): the safe consumer API over `sys`. Objects are owned values or `Arc`s
//!   that hold what they use (a QP its PD and CQs, everything a reference to its device);
//!   a posted work request owns its buffer and belongs to the QP until its completion.
//! - `driver` (kernel build only): the driver side, a trait that becomes
//!   `ib_device_ops`, typed views of what the IB core passes, and the registration of a
//!   device; `sync`: the lock a driver's state is kept behind.
//!
//! The crate is compiled twice from the same source: by cargo for the host, and by the
//! kbuild glue (`Kbuild` at the repository root) with the target kernel's own rustc
//! command line and `--cfg tilde_kernel`, into an object linked into the module that
//! uses it (one module today; see docs/kernels.md, "How the modules are built").
// kbuild passes `-Zcrate-attr=no_std` itself.
#![cfg_attr(not(tilde_kernel), no_std)]

pub mod verbs;

#[cfg(all(not(tilde_kernel), feature = "fabric"))]
extern crate std;

#[cfg(all(not(tilde_kernel), feature = "fabric"))]
pub mod fabric;

#[cfg(tilde_kernel)]
pub mod ah;
#[cfg(tilde_kernel)]
pub mod client;
#[cfg(tilde_kernel)]
pub mod cm;
#[cfg(tilde_kernel)]
pub mod cq;
#[cfg(tilde_kernel)]
pub mod device;
#[cfg(tilde_kernel)]
pub mod dma;
#[cfg(tilde_kernel)]
pub mod driver;
#[cfg(tilde_kernel)]
pub mod ib_cm;
#[cfg(tilde_kernel)]
pub mod mailbox;
#[cfg(tilde_kernel)]
pub mod mr;
#[cfg(tilde_kernel)]
pub mod netdev;
#[cfg(tilde_kernel)]
pub mod pci;
#[cfg(tilde_kernel)]
pub mod pd;
#[cfg(tilde_kernel)]
pub mod qp;
#[cfg(tilde_kernel)]
pub mod sa;
#[cfg(tilde_kernel)]
pub mod sync;
#[cfg(tilde_kernel)]
pub mod sys;
#[cfg(tilde_kernel)]
pub use sys::kernel_api;
#[cfg(tilde_kernel)]
pub mod work;
#[cfg(tilde_kernel)]
pub mod wr;

/// Prefix of this crate's own log lines (`pr_*!` looks it up at the call site's crate
/// root). The crate is meant to serve several modules, so it names itself, not a module.
#[cfg(tilde_kernel)]
const __LOG_PREFIX: &[u8] = b"tilde_rdma\0";
