//! iSER initiator: a sans-IO iSCSI/iSER protocol core plus thin kernel glue over
//! `rdma-core-rs`.
//!
//! - [`wire`]: the iSER header and iSCSI PDUs as typed views, and text key=value pairs.
//! - [`login`]: the keys an iSER initiator offers at login and how answers settle them.
//! - [`initiator`]: the initiator as a sans-IO state machine.
//! - [`datamover`]: what the kernel transport does with each SCSI command libiscsi hands
//!   it (which data the command sends, what the target moves by RDMA, the STags).
//!
//! `no_std` because the same source builds for the host tests and, through the kbuild
//! glue, for the kernel module.
// kbuild passes `-Zcrate-attr=no_std` itself.
#![cfg_attr(not(tilde_kernel), no_std)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod datamover;
pub mod initiator;
pub mod login;
pub mod wire;
