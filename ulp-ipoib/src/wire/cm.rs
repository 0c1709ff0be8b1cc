//! The private data of IPoIB connected mode's CM REQ and REP (RFC 4755 §4, §6;
//! Linux's `struct ipoib_cm_data`), and the service ID a connection is made to.
//!
//! ```text
//! +--------+------------------------+
//! |reserved|   UD QPN of the sender |
//! +--------+------------------------+
//! |       receive MTU (octets)      |
//! +---------------------------------+
//! ```
//!
//! The QPN is the sender's UD QPN (the one its link-layer address names); its high
//! octet is reserved, ignored on receive. The MTU is the largest IPoIB message, the
//! encapsulation header included, the sender accepts on the connection.

use super::{read_u32, write_bytes, WireError};

/// Length of the private data.
pub const DATA_LEN: usize = 8;
/// The IETF's IPoIB service ID prefix (`IPOIB_CM_IETF_ID`); the destination's UD QPN
/// fills the low 24 bits.
pub const SERVICE_ID_PREFIX: u64 = 0x1000_0000_0000_0000;

/// The service ID a connection to the interface with UD QPN `qpn` is made to.
pub fn service_id(qpn: u32) -> u64 {
    SERVICE_ID_PREFIX | u64::from(qpn & 0x00ff_ffff)
}

mod field {
    pub(super) const QPN: usize = 0;
    pub(super) const MTU: usize = 4;
}

/// A view of connected mode's private data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmData<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CmData<T> {
    /// A view without checks; [`CmData::check_len`] before reading it.
    pub fn new_unchecked(buffer: T) -> Self {
        CmData { buffer }
    }

    /// A view over `buffer`, refused when shorter than 8 bytes (CM pads private data;
    /// more may follow).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let data = Self::new_unchecked(buffer);
        data.check_len()?;
        Ok(data)
    }

    /// Whether the buffer holds both fields.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < DATA_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The sender's UD QPN (the reserved high octet masked off).
    pub fn qpn(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::QPN) & 0x00ff_ffff
    }

    /// The receive MTU.
    pub fn mtu(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::MTU)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CmData<T> {
    /// Sets the QPN word (reserved octet zero).
    pub fn set_qpn(&mut self, qpn: u32) {
        write_bytes(
            self.buffer.as_mut(),
            field::QPN,
            &(qpn & 0x00ff_ffff).to_be_bytes(),
        );
    }

    /// Sets the receive MTU.
    pub fn set_mtu(&mut self, mtu: u32) {
        write_bytes(self.buffer.as_mut(), field::MTU, &mtu.to_be_bytes());
    }
}

/// Connected mode's private data, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmDataRepr {
    /// The sender's UD QPN.
    pub qpn: u32,
    /// The largest message, header included, the sender receives.
    pub mtu: u32,
}

impl CmDataRepr {
    /// Reads the private data, refusing an MTU that cannot hold the header and a byte
    /// (Linux rejects such a REP the same way).
    pub fn parse<T: AsRef<[u8]>>(data: &CmData<T>) -> Result<Self, WireError> {
        data.check_len()?;
        if data.mtu() <= super::encap::HEADER_LEN as u32 {
            return Err(WireError::CmMtu(data.mtu()));
        }
        Ok(CmDataRepr {
            qpn: data.qpn(),
            mtu: data.mtu(),
        })
    }

    /// The private data's length.
    pub const fn buffer_len(&self) -> usize {
        DATA_LEN
    }

    /// Writes the private data.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        data: &mut CmData<T>,
    ) -> Result<(), WireError> {
        if data.buffer.as_ref().len() < DATA_LEN {
            return Err(WireError::BufferTooSmall);
        }
        data.set_qpn(self.qpn);
        data.set_mtu(self.mtu);
        Ok(())
    }
}
