//! The 20-byte IPoIB link-layer address (RFC 4391 §9.1) and the GID it ends with.
//!
//! ```text
//!  0       1       2       3
//! +-------+-------+-------+-------+
//! | flags |   queue pair number   |
//! +-------+-------+-------+-------+
//! |                               |
//! +           GID (16 octets)     +
//! |                               |
//! +-------+-------+-------+-------+
//! ```
//!
//! The first octet is reserved in RFC 4391; RFC 4755 §4 gives its top bit to the
//! "connected mode supported" flag, and Linux's ib_ipoib uses the next bit for UC. The
//! other bits are ignored on receive, as the RFC asks of reserved bits.

use super::{read_array, read_u32, read_u8, write_bytes, write_u8, WireError};

/// Length of an IPoIB link-layer address (`INFINIBAND_ALEN`).
pub const HARDWARE_ADDRESS_LEN: usize = 20;

/// An InfiniBand Global Identifier: a 64-bit subnet prefix and a 64-bit interface ID,
/// in network order. Multicast GIDs start with 0xff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// Whether the GID is a multicast GID (IBA: the first octet is 0xff).
    pub fn is_multicast(&self) -> bool {
        self.0[0] == 0xff
    }

    /// The subnet prefix (upper 64 bits).
    pub fn subnet_prefix(&self) -> u64 {
        u64::from_be_bytes(read_array(&self.0, 0))
    }

    /// The interface ID (lower 64 bits: the port GUID for the default GID).
    pub fn interface_id(&self) -> u64 {
        u64::from_be_bytes(read_array(&self.0, 8))
    }

    /// A GID from its two halves.
    pub fn from_parts(subnet_prefix: u64, interface_id: u64) -> Self {
        let mut raw = [0u8; 16];
        write_bytes(&mut raw, 0, &subnet_prefix.to_be_bytes());
        write_bytes(&mut raw, 8, &interface_id.to_be_bytes());
        Gid(raw)
    }
}

/// Field offsets of the link-layer address.
mod field {
    /// The flags octet (reserved in RFC 4391).
    pub(super) const FLAGS: usize = 0;
    /// The 24-bit QPN, read as the low bits of the first 32-bit word.
    pub(super) const FLAGS_QPN: usize = 0;
    /// The GID.
    pub(super) const GID: usize = 4;
}

/// An IPoIB link-layer address: flags, the destination's UD QPN and port GID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HardwareAddress(pub [u8; HARDWARE_ADDRESS_LEN]);

impl HardwareAddress {
    /// The flag bit saying the owner accepts IPoIB connected mode (RFC 4755 §4;
    /// `IPOIB_FLAGS_RC` in Linux).
    pub const FLAG_CONNECTED_MODE: u8 = 0x80;
    /// The flag bit Linux uses for unreliable connected mode (`IPOIB_FLAGS_UC`); no RFC
    /// defines it, tilde neither sets nor acts on it.
    pub const FLAG_UNRELIABLE_CONNECTED: u8 = 0x40;
    /// The QPN every multicast destination carries (IBA: the multicast QP, 0xffffff).
    pub const MULTICAST_QPN: u32 = 0x00ff_ffff;
    /// Mask of the 24-bit QPN.
    pub const QPN_MASK: u32 = 0x00ff_ffff;

    /// The address for `flags`, `qpn` (24 bits; higher bits are dropped) and `gid`.
    pub fn new(flags: u8, qpn: u32, gid: Gid) -> Self {
        let mut raw = [0u8; HARDWARE_ADDRESS_LEN];
        // The QPN's word first, then the flags over its top octet: bits of `qpn` above
        // 24 never reach the flags.
        write_bytes(&mut raw, field::FLAGS_QPN, &qpn.to_be_bytes());
        write_u8(&mut raw, field::FLAGS, flags);
        write_bytes(&mut raw, field::GID, &gid.0);
        HardwareAddress(raw)
    }

    /// The destination address of a multicast group: no flags, the multicast QPN, the
    /// group's MGID (what Linux's `ip_ib_mc_map` and `ipv6_ib_mc_map` produce).
    pub fn multicast(mgid: Gid) -> Self {
        Self::new(0, Self::MULTICAST_QPN, mgid)
    }

    /// Reads an address from the first 20 bytes of `bytes` (more may follow, as in an
    /// option or a pseudo-header).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < HARDWARE_ADDRESS_LEN {
            return Err(WireError::Truncated);
        }
        Ok(HardwareAddress(read_array(bytes, 0)))
    }

    /// The flags octet.
    pub fn flags(&self) -> u8 {
        read_u8(&self.0, field::FLAGS)
    }

    /// Whether the owner advertises connected mode (RFC 4755 §4).
    pub fn connected_mode(&self) -> bool {
        self.flags() & Self::FLAG_CONNECTED_MODE != 0
    }

    /// The destination's 24-bit queue pair number.
    pub fn qpn(&self) -> u32 {
        read_u32(&self.0, field::FLAGS_QPN) & Self::QPN_MASK
    }

    /// The destination's GID.
    pub fn gid(&self) -> Gid {
        Gid(read_array(&self.0, field::GID))
    }

    /// Whether the address names a multicast group (its GID is a multicast GID; Linux
    /// tests `daddr[4] == 0xff` the same way).
    pub fn is_multicast(&self) -> bool {
        self.gid().is_multicast()
    }

    /// The same address with the flags octet replaced.
    pub fn with_flags(&self, flags: u8) -> Self {
        let mut raw = self.0;
        write_u8(&mut raw, field::FLAGS, flags);
        HardwareAddress(raw)
    }

    /// The bytes on the wire.
    pub fn as_bytes(&self) -> &[u8; HARDWARE_ADDRESS_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_unicast_address() {
        let raw: [u8; 20] = [
            0x80, 0x00, 0x04, 0x48, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x02, 0xc9, 0x03, 0x00,
            0x0a, 0x0b, 0x0c,
        ];
        let addr = HardwareAddress::from_bytes(&raw).unwrap();
        assert_eq!(addr.flags(), 0x80);
        assert!(addr.connected_mode());
        assert_eq!(addr.qpn(), 0x448);
        assert_eq!(addr.gid().subnet_prefix(), 0xfe80_0000_0000_0000);
        assert_eq!(addr.gid().interface_id(), 0x0002_c903_000a_0b0c);
        assert!(!addr.is_multicast());
        assert_eq!(HardwareAddress::new(0x80, 0x448, addr.gid()), addr);
    }

    #[test]
    fn qpn_above_24_bits_does_not_reach_the_flags() {
        let addr = HardwareAddress::new(0, 0xab12_3456, Gid::default());
        assert_eq!(addr.flags(), 0);
        assert_eq!(addr.qpn(), 0x12_3456);
        assert!(!addr.connected_mode());
    }

    #[test]
    fn short_bytes_are_refused() {
        assert_eq!(
            HardwareAddress::from_bytes(&[0; 19]),
            Err(WireError::Truncated)
        );
    }
}
