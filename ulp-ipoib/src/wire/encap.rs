//! The IPoIB encapsulation header (RFC 4391 §6): a 16-bit EtherType and 16 reserved
//! bits in front of every IP or ARP packet, in UD and connected mode alike.
//!
//! ```text
//! +-------+-------+-------+-------+
//! |   EtherType   |   reserved    |
//! +-------+-------+-------+-------+
//! ```
//!
//! The reserved field is zero on send and ignored on receive (RFC 4391 §6).

use super::{read_u16, write_bytes, WireError};

/// Length of the encapsulation header (`IPOIB_ENCAP_LEN`).
pub const HEADER_LEN: usize = 4;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of RARP.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

mod field {
    pub(super) const ETHERTYPE: usize = 0;
    pub(super) const RESERVED: usize = 2;
    pub(super) const PAYLOAD: usize = super::HEADER_LEN;
}

/// A view of an IPoIB frame: the encapsulation header and the packet it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view over `buffer` without checks; [`Frame::check_len`] before reading it.
    pub fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// A view over `buffer`, refused when it cannot hold the header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Whether the buffer holds the whole header.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The EtherType of the payload.
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// The reserved field as received.
    pub fn reserved(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::RESERVED)
    }

    /// The packet after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        write_bytes(
            self.buffer.as_mut(),
            field::ETHERTYPE,
            &ethertype.to_be_bytes(),
        );
    }

    /// Sets the reserved field (zero on send).
    pub fn set_reserved(&mut self, reserved: u16) {
        write_bytes(
            self.buffer.as_mut(),
            field::RESERVED,
            &reserved.to_be_bytes(),
        );
    }

    /// The packet after the header, to fill.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD..)
            .unwrap_or(&mut [])
    }
}

/// The encapsulation header, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRepr {
    /// The EtherType of the payload.
    pub ethertype: u16,
}

impl FrameRepr {
    /// Reads the header of a checked frame (the reserved field is ignored, RFC 4391 §6).
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(FrameRepr {
            ethertype: frame.ethertype(),
        })
    }

    /// The header's length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header, reserved field zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        frame: &mut Frame<T>,
    ) -> Result<(), WireError> {
        if frame.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::BufferTooSmall);
        }
        frame.set_ethertype(self.ethertype);
        frame.set_reserved(0);
        Ok(())
    }
}
