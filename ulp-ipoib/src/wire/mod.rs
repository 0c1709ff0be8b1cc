//! IPoIB's formats as typed views over bytes (smoltcp `wire` style).
//!
//! Each format has a view, `Packet<T: AsRef<[u8]>>`-like, whose `new_checked` validates
//! every length before an accessor can run, accessors named after the RFC's fields, and a
//! `Repr` with `parse` (from a checked view) and `emit` (into a view of a buffer at least
//! `buffer_len()` long). Malformed bytes give a [`WireError`] naming what is wrong; no
//! accessor panics, whatever the buffer holds.
//!
//! - [`encap`]: the 4-byte IPoIB encapsulation header (RFC 4391 §6).
//! - [`address`]: the 20-byte IPoIB link-layer address (RFC 4391 §9.1.1, the
//!   connected-mode flag of RFC 4755 §4) and the GID it carries.
//! - [`mgid`]: the multicast GIDs IPoIB maps broadcast, IPv4 and IPv6 groups to
//!   (RFC 4391 §4).
//! - [`grh`]: the 40-byte Global Route Header a UD receive buffer starts with.
//! - [`arp`]: ARP over IPoIB (RFC 4391 §9.2, hardware type 32).
//! - [`ndisc`]: the IPv6 Neighbor Discovery link-layer address option for IPoIB
//!   (RFC 4391 §9.1.1, RFC 4861 §4.6.1).
//! - [`cm`]: connected mode's CM private data and service ID (RFC 4755).

pub mod address;
pub mod arp;
pub mod cm;
pub mod encap;
pub mod grh;
pub mod mgid;
pub mod ndisc;

pub use address::{Gid, HardwareAddress, HARDWARE_ADDRESS_LEN};
pub use mgid::{IpoibMgid, MgidFamily, Scope};

/// Why bytes are not the format asked for, or a buffer cannot hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the fixed fields the format must hold.
    Truncated,
    /// A buffer handed to `emit` is shorter than the representation.
    BufferTooSmall,
    /// A GRH whose IP version is not 6 (IBA: the GRH is an IPv6 header).
    GrhVersion(u8),
    /// A GID that should be a multicast GID does not start with 0xff.
    NotMulticast,
    /// A multicast GID whose flags nibble is not 1 (transient), which RFC 4391 §4
    /// requires of IPoIB groups.
    NotTransient(u8),
    /// A multicast GID whose signature is neither 0x401b (IPv4) nor 0x601b (IPv6).
    NotIpoibSignature(u16),
    /// An ARP hardware type other than 32 (InfiniBand, RFC 4391 §9.2).
    ArpHardwareType(u16),
    /// An ARP hardware address length other than 20.
    ArpHardwareLength(u8),
    /// An ARP protocol type other than IPv4 (0x0800).
    ArpProtocolType(u16),
    /// An ARP protocol address length other than 4 (IPv4).
    ArpProtocolLength(u8),
    /// A Neighbor Discovery option whose type is not source (1) or target (2)
    /// link-layer address.
    NdOptionType(u8),
    /// A link-layer address option whose length (in units of 8 octets) is not 3, the
    /// only length that holds a 20-byte address (RFC 4391 §9.1.1).
    NdOptionLength(u8),
    /// Connected-mode private data whose MTU cannot carry the encapsulation header and
    /// a byte.
    CmMtu(u32),
}

/// Reads a big-endian `u16` at `at`; callers have checked the length (`new_checked`),
/// so the zero fallback never shows, and a wrong offset cannot panic.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut be = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        be.copy_from_slice(src);
    }
    u16::from_be_bytes(be)
}

/// Reads a big-endian `u32` at `at` (see [`read_u16`]).
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut be = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        be.copy_from_slice(src);
    }
    u32::from_be_bytes(be)
}

/// Reads `N` bytes at `at` (see [`read_u16`]).
fn read_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Reads the byte at `at` (see [`read_u16`]).
fn read_u8(bytes: &[u8], at: usize) -> u8 {
    bytes.get(at).copied().unwrap_or(0)
}

/// Writes `src` at `at`; a buffer checked by `new_checked` always has room.
fn write_bytes(bytes: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = bytes.get_mut(at..at + src.len()) {
        dst.copy_from_slice(src);
    }
}

/// Writes one byte at `at` (see [`write_bytes`]).
fn write_u8(bytes: &mut [u8], at: usize, value: u8) {
    if let Some(dst) = bytes.get_mut(at) {
        *dst = value;
    }
}
