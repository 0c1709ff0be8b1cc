//! iSER initiator: a sans-IO iSCSI/iSER protocol core plus thin kernel glue over
//! `rdma-core-rs`.
//!
//! - [`wire`]: the iSER header and iSCSI PDUs as typed views, and text key=value pairs.
//!
//! `no_std` because the same source builds for the host tests and, through the kbuild
//! glue, for the kernel module.
#![no_std]

pub mod wire;
