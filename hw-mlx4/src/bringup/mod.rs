//! The driver's bring-up of a ConnectX-3: the firmware command interface and the probe
//! that takes the device from reset to an initialized HCA, and back.
//!
//! Sans-IO: the device is reached only through [`cmd::CommandEdge`] (BAR0 registers and a
//! clock) and [`memory::HostMemory`] (DMA memory), which the kernel module implements over
//! MMIO and `dma_alloc_coherent`, and the host tests over the device model
//! (`model::hca::Hca`). No `alloc`, no `unsafe`: every value the device returns is checked
//! before use, and a failure is an error that names what failed, never a panic.
//!
//! - [`cmd`]: posting commands through the HCR and polling for their completion.
//! - [`caps`]: QUERY_FW, QUERY_DEV_CAP and QUERY_ADAPTER, parsed and checked.
//! - [`profile`]: the ICM profile, sized from the capabilities.
//! - [`memory`]: the host memory given to the device.
//! - [`probe`]: the probe and the teardown, which unwinds whatever a probe did.
//! - [`setup`]: `mlx4_setup_hca`: UAR, PD and EQ tables, the async EQ, event-driven
//!   commands, the ports; [`eq`] and [`bitmap`] are its EQ consumer and allocators.
//! - [`objects`]: ICM on demand, MTTs, MRs, CQs, QPs and their states, MAD_IFC.
//! - [`mcg`]: multicast groups, their hash chains, attach and detach.
#![forbid(unsafe_code)]

pub mod bitmap;
pub mod caps;
pub mod cmd;
pub mod eq;
pub mod mcg;
pub mod memory;
pub mod objects;
pub mod probe;
pub mod profile;
pub mod reset;
pub mod setup;

pub use probe::{Mlx4Core, ProbeConfig, ProbeError, Step, TeardownError};
