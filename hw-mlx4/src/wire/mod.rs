//! ConnectX-3 hardware formats as typed views over bytes.
//!
//! Each format is a `#[repr(C)]` struct of big-endian fields, checked by zerocopy, so a
//! view over a WQE, a CQE or an EQE is a cast with a length check, never a copy. Fields
//! are named as in the upstream C headers; the bits packed inside a field get accessors
//! and named constants here, so logic code never shifts or masks by hand. Every type's
//! documentation names the upstream definition it follows, and `tests` pins each layout.

pub mod cmd;
mod cqe;
mod doorbell;
mod eqe;
pub mod fw;
pub mod ud;
mod wqe;

pub use cqe::*;
pub use doorbell::*;
pub use eqe::*;
pub use wqe::*;

use zerocopy::byteorder::{BigEndian, U16, U32, U64};

/// A big-endian 16-bit field (`__be16`).
pub type Be16 = U16<BigEndian>;
/// A big-endian 32-bit field (`__be32`).
pub type Be32 = U32<BigEndian>;
/// A big-endian 64-bit field (`__be64`).
pub type Be64 = U64<BigEndian>;

#[cfg(test)]
mod tests;
