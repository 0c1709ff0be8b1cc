//! The multicast GIDs of an IPoIB link (RFC 4391 §4).
//!
//! ```text
//! | 8 bits | 4 bits | 4 bits | 16 bits   | 16 bits | 80 bits                     |
//! +--------+--------+--------+-----------+---------+-----------------------------+
//! |  0xff  |  0001  | scope  | signature |  P_Key  | group bits                  |
//! ```
//!
//! The signature is 0x401b for IPv4 and 0x601b for IPv6. An IPv4 group puts 48 zero
//! bits and then the low 28 bits of the group address in the group bits; the broadcast
//! group of a link is the IPv4 form with all 32 low bits set
//! (`ff1S:401b:PKEY:0000:0000:0000:ffff:ffff`). An IPv6 group carries the low 80 bits
//! of its address. Flags are always 0001 (transient); the scope is the broadcast
//! group's (2, link-local, unless configured otherwise), and the P_Key is the
//! interface's, full-membership bit included.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{read_array, read_u16, read_u8, write_bytes, Gid, WireError};

/// The IPv4 signature (`0x401b`).
pub const SIGNATURE_IPV4: u16 = 0x401b;
/// The IPv6 signature (`0x601b`).
pub const SIGNATURE_IPV6: u16 = 0x601b;
/// The flags nibble of an IPoIB MGID: transient (T = 1).
pub const FLAGS_TRANSIENT: u8 = 0x1;

mod field {
    pub(super) const PREFIX: usize = 0;
    pub(super) const FLAGS_SCOPE: usize = 1;
    pub(super) const SIGNATURE: usize = 2;
    pub(super) const PKEY: usize = 4;
    pub(super) const GROUP: usize = 6;
    /// Where an IPv4 group's address sits (after 48 zero bits).
    pub(super) const IPV4_GROUP: usize = 12;
}

/// A multicast scope (the low nibble of an MGID's second octet, as in IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope(u8);

impl Scope {
    /// Link-local (2), IPoIB's default.
    pub const LINK_LOCAL: Scope = Scope(0x2);
    /// Site-local (5).
    pub const SITE_LOCAL: Scope = Scope(0x5);
    /// Organization-local (8).
    pub const ORGANIZATION_LOCAL: Scope = Scope(0x8);
    /// Global (0xe).
    pub const GLOBAL: Scope = Scope(0xe);

    /// The scope of nibble `value`; `None` when it does not fit four bits.
    pub fn new(value: u8) -> Option<Scope> {
        (value <= 0xf).then_some(Scope(value))
    }

    /// The nibble.
    pub fn value(self) -> u8 {
        self.0
    }
}

/// Which IP version a group belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MgidFamily {
    /// Signature 0x401b.
    Ipv4,
    /// Signature 0x601b.
    Ipv6,
}

/// An IPoIB multicast GID, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpoibMgid {
    /// The scope nibble.
    pub scope: Scope,
    /// IPv4 or IPv6.
    pub family: MgidFamily,
    /// The P_Key of the link.
    pub pkey: u16,
    /// The low 80 bits: for IPv4, 48 zero bits and the group's address.
    pub group: [u8; 10],
}

impl IpoibMgid {
    /// The broadcast group of the link with `pkey` and `scope`.
    pub fn broadcast(pkey: u16, scope: Scope) -> Self {
        let mut group = [0u8; 10];
        write_bytes(&mut group, 6, &[0xff; 4]);
        IpoibMgid {
            scope,
            family: MgidFamily::Ipv4,
            pkey,
            group,
        }
    }

    /// The group an IPv4 multicast address maps to: its low 28 bits (the class D
    /// prefix 1110 is dropped), as Linux's `ip_ib_mc_map` does.
    pub fn ipv4(group: Ipv4Addr, pkey: u16, scope: Scope) -> Self {
        let low28 = u32::from(group) & 0x0fff_ffff;
        let mut bits = [0u8; 10];
        write_bytes(&mut bits, 6, &low28.to_be_bytes());
        IpoibMgid {
            scope,
            family: MgidFamily::Ipv4,
            pkey,
            group: bits,
        }
    }

    /// The group an IPv6 multicast address maps to: its low 80 bits.
    pub fn ipv6(group: Ipv6Addr, pkey: u16, scope: Scope) -> Self {
        IpoibMgid {
            scope,
            family: MgidFamily::Ipv6,
            pkey,
            group: read_array(&group.octets(), 6),
        }
    }

    /// Reads an IPoIB MGID, refusing a GID that is not multicast, not transient, or
    /// without an IPoIB signature.
    pub fn parse(gid: &Gid) -> Result<Self, WireError> {
        let raw = &gid.0;
        if read_u8(raw, field::PREFIX) != 0xff {
            return Err(WireError::NotMulticast);
        }
        let flags_scope = read_u8(raw, field::FLAGS_SCOPE);
        let flags = flags_scope >> 4;
        if flags != FLAGS_TRANSIENT {
            return Err(WireError::NotTransient(flags));
        }
        let family = match read_u16(raw, field::SIGNATURE) {
            SIGNATURE_IPV4 => MgidFamily::Ipv4,
            SIGNATURE_IPV6 => MgidFamily::Ipv6,
            other => return Err(WireError::NotIpoibSignature(other)),
        };
        Ok(IpoibMgid {
            scope: Scope(flags_scope & 0xf),
            family,
            pkey: read_u16(raw, field::PKEY),
            group: read_array(raw, field::GROUP),
        })
    }

    /// The GID on the wire.
    pub fn to_gid(&self) -> Gid {
        let mut raw = [0u8; 16];
        raw[field::PREFIX] = 0xff;
        raw[field::FLAGS_SCOPE] = (FLAGS_TRANSIENT << 4) | (self.scope.0 & 0xf);
        let signature = match self.family {
            MgidFamily::Ipv4 => SIGNATURE_IPV4,
            MgidFamily::Ipv6 => SIGNATURE_IPV6,
        };
        write_bytes(&mut raw, field::SIGNATURE, &signature.to_be_bytes());
        write_bytes(&mut raw, field::PKEY, &self.pkey.to_be_bytes());
        write_bytes(&mut raw, field::GROUP, &self.group);
        Gid(raw)
    }

    /// Whether this is the broadcast group (IPv4 form, low 32 bits all set, 48 zero bits
    /// before them).
    pub fn is_broadcast(&self) -> bool {
        self.family == MgidFamily::Ipv4 && self.group == [0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
    }

    /// For an IPv4 group, the 28 address bits it carries (the stack's group is
    /// 224.0.0.0/4 plus these).
    pub fn ipv4_low_bits(&self) -> Option<u32> {
        (self.family == MgidFamily::Ipv4)
            .then(|| u32::from_be_bytes(read_array(&self.group, field::IPV4_GROUP - field::GROUP)))
    }
}

/// `gid` with its P_Key octets (4 and 5) replaced: ib_ipoib writes the interface's
/// P_Key into every multicast destination before it looks the group up, so a group
/// address the stack built with another P_Key still names this link's group.
pub fn with_pkey(gid: Gid, pkey: u16) -> Gid {
    let mut raw = gid.0;
    write_bytes(&mut raw, field::PKEY, &pkey.to_be_bytes());
    Gid(raw)
}
