//! The Global Route Header (IBA §8.3, 40 bytes) as a UD receive buffer holds it.
//!
//! A UD QP writes the GRH slot at the start of every receive buffer; the completion's
//! `IB_WC_GRH` flag says whether the slot was filled. IPoIB reads the source GID from
//! it (whose frame is this) and the destination GID (was it sent to a group, and to
//! which), so the header comes before the encapsulation header in every buffer.
//!
//! ```text
//! +----+--------+----------------------+
//! |ver | tclass |  flow label (20)     |
//! +----+--------+-----------+----------+
//! |  payload length         | next hdr | hop limit |
//! +-------------------------+----------+-----------+
//! |  source GID (16)                               |
//! |  destination GID (16)                          |
//! ```

use super::{read_array, read_u16, read_u32, read_u8, write_bytes, write_u8, Gid, WireError};

/// Length of the GRH (`sizeof(struct ib_grh)`, `IB_GRH_BYTES`).
pub const HEADER_LEN: usize = 40;
/// The IP version of a GRH.
pub const IP_VERSION: u8 = 6;
/// The next header value of an IBA transport header (IBA §8.3.1).
pub const NEXT_HEADER_IBA: u8 = 0x1b;

mod field {
    pub(super) const VERSION_CLASS_FLOW: usize = 0;
    pub(super) const PAYLOAD_LEN: usize = 4;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SGID: usize = 8;
    pub(super) const DGID: usize = 24;
    pub(super) const PAYLOAD: usize = 40;
}

/// A view of a GRH and what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grh<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Grh<T> {
    /// A view without checks; [`Grh::check_len`] before reading it.
    pub fn new_unchecked(buffer: T) -> Self {
        Grh { buffer }
    }

    /// A view over `buffer`, refused when it cannot hold the 40-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let grh = Self::new_unchecked(buffer);
        grh.check_len()?;
        Ok(grh)
    }

    /// Whether the buffer holds the whole header.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    fn word0(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION_CLASS_FLOW)
    }

    /// IP version (6 in every GRH).
    pub fn version(&self) -> u8 {
        (self.word0() >> 28) as u8
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// Payload length: the bytes after the GRH up to and including the ICRC.
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// Next header (0x1b: an IBA transport header).
    pub fn next_header(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::NEXT_HEADER)
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::HOP_LIMIT)
    }

    /// Source GID.
    pub fn sgid(&self) -> Gid {
        Gid(read_array(self.buffer.as_ref(), field::SGID))
    }

    /// Destination GID.
    pub fn dgid(&self) -> Gid {
        Gid(read_array(self.buffer.as_ref(), field::DGID))
    }

    /// What follows the GRH in the buffer (for IPoIB, the encapsulation header).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Grh<T> {
    fn set_word0(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let word = (u32::from(version & 0xf) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        write_bytes(
            self.buffer.as_mut(),
            field::VERSION_CLASS_FLOW,
            &word.to_be_bytes(),
        );
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_bytes(self.buffer.as_mut(), field::PAYLOAD_LEN, &len.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next: u8) {
        write_u8(self.buffer.as_mut(), field::NEXT_HEADER, next);
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hops: u8) {
        write_u8(self.buffer.as_mut(), field::HOP_LIMIT, hops);
    }

    /// Sets the source GID.
    pub fn set_sgid(&mut self, gid: Gid) {
        write_bytes(self.buffer.as_mut(), field::SGID, &gid.0);
    }

    /// Sets the destination GID.
    pub fn set_dgid(&mut self, gid: Gid) {
        write_bytes(self.buffer.as_mut(), field::DGID, &gid.0);
    }
}

/// A GRH, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrhRepr {
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits; higher bits are not emitted).
    pub flow_label: u32,
    /// Payload length.
    pub payload_len: u16,
    /// Next header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source GID.
    pub sgid: Gid,
    /// Destination GID.
    pub dgid: Gid,
}

impl GrhRepr {
    /// Reads a GRH, refusing one whose IP version is not 6.
    pub fn parse<T: AsRef<[u8]>>(grh: &Grh<T>) -> Result<Self, WireError> {
        grh.check_len()?;
        if grh.version() != IP_VERSION {
            return Err(WireError::GrhVersion(grh.version()));
        }
        Ok(GrhRepr {
            traffic_class: grh.traffic_class(),
            flow_label: grh.flow_label(),
            payload_len: grh.payload_len(),
            next_header: grh.next_header(),
            hop_limit: grh.hop_limit(),
            sgid: grh.sgid(),
            dgid: grh.dgid(),
        })
    }

    /// The header's length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (version 6).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, grh: &mut Grh<T>) -> Result<(), WireError> {
        if grh.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::BufferTooSmall);
        }
        grh.set_word0(IP_VERSION, self.traffic_class, self.flow_label);
        grh.set_payload_len(self.payload_len);
        grh.set_next_header(self.next_header);
        grh.set_hop_limit(self.hop_limit);
        grh.set_sgid(self.sgid);
        grh.set_dgid(self.dgid);
        Ok(())
    }
}
