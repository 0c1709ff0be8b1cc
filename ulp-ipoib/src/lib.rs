//! IP over InfiniBand: a sans-IO protocol core (events in, actions out) plus, later,
//! thin kernel glue.
//!
//! - [`wire`]: IPoIB's formats as typed views (encapsulation header, link-layer
//!   address, multicast GIDs, GRH, ARP, the IPv6 ND address option, connected mode's
//!   private data).
//! - [`interface`]: one IPoIB interface as a state machine: the broadcast group
//!   joined before the carrier goes on, multicast joins and leaves, path record
//!   lookups with bounded per-destination queues, the address handle cache,
//!   neighbours, the flushes port events and SM changes call for, and connected
//!   mode's RC connection per neighbour.
//! - [`sa`]: the path and member record fields the core reads, and address vectors.
//!
//! `no_std` because the same source builds for the host tests and, through the kbuild
//! glue, for the kernel module. The core allocates nothing: every table has a capacity
//! fixed by const generics. See `docs/ipoib.md`.
// kbuild passes `-Zcrate-attr=no_std` itself.
#![cfg_attr(not(tilde_kernel), no_std)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod interface;
pub mod sa;
mod table;
pub mod wire;
