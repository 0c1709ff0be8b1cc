//! The IPv6 Neighbor Discovery source/target link-layer address option for IPoIB
//! (RFC 4391 §9.1.1; RFC 4861 §4.6.1 defines the option).
//!
//! ```text
//! +--------+--------+-----------------+
//! |  type  | length |    reserved     |
//! +--------+--------+-----------------+
//! |   IPoIB link-layer address (20)   |
//! +-----------------------------------+
//! ```
//!
//! The option length counts 8-octet units: 2 octets of type and length, 2 reserved
//! octets that pad the address to a 4-octet boundary, and the 20-octet address make 24,
//! a length of 3 (Linux's `ndisc_addr_option_pad` puts the same 2 octets before the
//! address for `ARPHRD_INFINIBAND`). Reserved octets are zero on send, ignored on
//! receive.

use super::{read_u8, write_bytes, write_u8, HardwareAddress, WireError, HARDWARE_ADDRESS_LEN};

/// Option type of the source link-layer address.
pub const TYPE_SOURCE: u8 = 1;
/// Option type of the target link-layer address.
pub const TYPE_TARGET: u8 = 2;
/// The option length, in units of 8 octets, of an IPoIB address option.
pub const IPOIB_OPTION_UNITS: u8 = 3;
/// The option's length in octets.
pub const OPTION_LEN: usize = 8 * IPOIB_OPTION_UNITS as usize;
/// Octets of padding between the length and the address.
pub const PAD_LEN: usize = 2;

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const LENGTH: usize = 1;
    pub(super) const RESERVED: usize = 2;
    pub(super) const ADDRESS: usize = 4;
}

/// A view of a link-layer address option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdOption<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NdOption<T> {
    /// A view without checks; [`NdOption::check_len`] before reading it.
    pub fn new_unchecked(buffer: T) -> Self {
        NdOption { buffer }
    }

    /// A view over `buffer`, refused when it cannot hold an IPoIB address option.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let option = Self::new_unchecked(buffer);
        option.check_len()?;
        Ok(option)
    }

    /// Whether the buffer holds a whole 24-octet option.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < OPTION_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Option type (1 source, 2 target).
    pub fn option_type(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::TYPE)
    }

    /// Option length in units of 8 octets.
    pub fn length(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::LENGTH)
    }

    /// The reserved octets, as received.
    pub fn reserved(&self) -> [u8; PAD_LEN] {
        [
            read_u8(self.buffer.as_ref(), field::RESERVED),
            read_u8(self.buffer.as_ref(), field::RESERVED + 1),
        ]
    }

    /// The link-layer address.
    pub fn address(&self) -> Result<HardwareAddress, WireError> {
        let bytes = self.buffer.as_ref().get(field::ADDRESS..).unwrap_or(&[]);
        HardwareAddress::from_bytes(bytes)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NdOption<T> {
    /// Sets the option type.
    pub fn set_option_type(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::TYPE, value);
    }

    /// Sets the option length (units of 8 octets).
    pub fn set_length(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Zeroes the reserved octets.
    pub fn clear_reserved(&mut self) {
        write_bytes(self.buffer.as_mut(), field::RESERVED, &[0; PAD_LEN]);
    }

    /// Sets the link-layer address.
    pub fn set_address(&mut self, address: &HardwareAddress) {
        write_bytes(self.buffer.as_mut(), field::ADDRESS, address.as_bytes());
    }
}

/// Whose address the option carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NdOptionKind {
    /// The sender's (type 1: solicitations, router advertisements).
    Source,
    /// The target's (type 2: neighbor advertisements, redirects).
    Target,
}

/// An IPoIB link-layer address option, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdOptionRepr {
    /// Source or target.
    pub kind: NdOptionKind,
    /// The address.
    pub address: HardwareAddress,
}

impl NdOptionRepr {
    /// Reads the option, refusing another option type or a length other than 3.
    pub fn parse<T: AsRef<[u8]>>(option: &NdOption<T>) -> Result<Self, WireError> {
        if option.buffer.as_ref().len() < field::ADDRESS {
            return Err(WireError::Truncated);
        }
        let kind = match option.option_type() {
            TYPE_SOURCE => NdOptionKind::Source,
            TYPE_TARGET => NdOptionKind::Target,
            other => return Err(WireError::NdOptionType(other)),
        };
        if option.length() != IPOIB_OPTION_UNITS {
            return Err(WireError::NdOptionLength(option.length()));
        }
        option.check_len()?;
        Ok(NdOptionRepr {
            kind,
            address: option.address()?,
        })
    }

    /// The option's length in octets (24).
    pub const fn buffer_len(&self) -> usize {
        OPTION_LEN
    }

    /// Writes the option, reserved octets zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        option: &mut NdOption<T>,
    ) -> Result<(), WireError> {
        if option.buffer.as_ref().len() < OPTION_LEN {
            return Err(WireError::BufferTooSmall);
        }
        option.set_option_type(match self.kind {
            NdOptionKind::Source => TYPE_SOURCE,
            NdOptionKind::Target => TYPE_TARGET,
        });
        option.set_length(IPOIB_OPTION_UNITS);
        option.clear_reserved();
        option.set_address(&self.address);
        Ok(())
    }
}

// The address fills the option exactly: a change of either constant must be deliberate.
const _: () = assert!(PAD_LEN + 2 + HARDWARE_ADDRESS_LEN == OPTION_LEN);
