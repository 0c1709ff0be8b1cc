//! iSER and iSCSI PDUs as typed views over bytes.
//!
//! An iSER-assisted iSCSI PDU travels in one RDMA SEND: the 28-byte iSER header, the
//! 48-byte iSCSI Basic Header Segment, any Additional Header Segments, and the data
//! segment (key=value text, sense data, immediate or unsolicited data). There are no
//! digests (iSER forbids them) and no Data-In or R2T PDUs (the target moves data with
//! RDMA READ and WRITE on the STags the iSER header carries).
//!
//! Each header is a `#[repr(C)]` struct of big-endian fields checked by zerocopy, named
//! as in the kernel's `include/scsi/iscsi_proto.h` and `include/scsi/iser.h`; flag bits
//! get named constants and accessors. [`parse`] turns a received message into a [`Pdu`]
//! (a view, never a copy) or a [`WireError`]; [`emit`] writes one. Both check every
//! length against the buffer: malformed input is an error, never a panic.

mod headers;
mod text;

pub use headers::*;
pub use text::*;

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
// The derives are named by their path in `zerocopy_derive`, where the kernel provides
// them (its zerocopy has no `derive` feature; on the host, another crate may turn it on).
use zerocopy::{FromBytes, IntoBytes};

/// A big-endian 16-bit field (`__be16`).
pub type Be16 = U16<BigEndian>;
/// A big-endian 32-bit field (`__be32`).
pub type Be32 = U32<BigEndian>;
/// A big-endian 64-bit field (`__be64`).
pub type Be64 = U64<BigEndian>;

/// Size of the iSER header (`struct iser_ctrl`).
pub const ISER_HEADER_LEN: usize = 28;
/// Size of the iSCSI Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The largest data segment length the 24-bit `DataSegmentLength` field can carry.
pub const MAX_DATA_SEGMENT: usize = (1 << 24) - 1;

/// Why bytes are not a PDU, or a PDU does not fit a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the headers it must hold.
    Truncated,
    /// The iSER header's opcode is not "iSCSI control" (Hello messages are not spoken).
    NotIscsiControl,
    /// An iSCSI opcode this initiator does not know, or one iSER never carries
    /// (Data-In, R2T, SNACK).
    UnknownOpcode(u8),
    /// `DataSegmentLength` disagrees with the bytes received (more than 3 bytes of
    /// padding, or fewer bytes than it claims).
    DataLength,
    /// The buffer given to [`emit`] is too small.
    BufferTooSmall,
    /// A data segment too long for its 24-bit length field.
    DataTooLong,
    /// Text that is not `key=value` pairs of UTF-8 within the RFC's lengths, or a value
    /// that does not parse as its key requires.
    BadText,
}

/// The iSER header (`struct iser_ctrl`, RFC 7145 §9.2): which of the PDU's data the
/// target reads (write STag) or writes (read STag), and where.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct IserHeader {
    /// Opcode (high nibble) and the STag-valid bits.
    pub flags: u8,
    /// Reserved, zero.
    pub rsvd: [u8; 3],
    /// The STag (rkey) the target RDMA READs the command's write data from.
    pub write_stag: Be32,
    /// The address of that data in the STag's region.
    pub write_va: Be64,
    /// The STag the target RDMA WRITEs the command's read data to.
    pub read_stag: Be32,
    /// The address for that data.
    pub read_va: Be64,
}

/// Where the target finds or puts a task's data: an STag (rkey) and a virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stag {
    /// The registered region's rkey.
    pub stag: u32,
    /// The data's address in it.
    pub va: u64,
}

impl IserHeader {
    /// Opcode of an iSCSI control-type PDU (`ISCSI_CTRL`).
    pub const ISCSI_CTRL: u8 = 0x10;
    /// The opcode field's mask (high nibble).
    pub const OPCODE_MASK: u8 = 0xf0;
    /// Write STag valid (`ISER_WSV`).
    pub const WSV: u8 = 0x08;
    /// Read STag valid (`ISER_RSV`).
    pub const RSV: u8 = 0x04;

    /// An iSCSI control header with the STags given (a valid bit for each present).
    pub fn control(write: Option<Stag>, read: Option<Stag>) -> Self {
        let mut flags = Self::ISCSI_CTRL;
        let (mut write_stag, mut write_va, mut read_stag, mut read_va) = (0, 0, 0, 0);
        if let Some(w) = write {
            flags |= Self::WSV;
            (write_stag, write_va) = (w.stag, w.va);
        }
        if let Some(r) = read {
            flags |= Self::RSV;
            (read_stag, read_va) = (r.stag, r.va);
        }
        Self {
            flags,
            rsvd: [0; 3],
            write_stag: Be32::new(write_stag),
            write_va: Be64::new(write_va),
            read_stag: Be32::new(read_stag),
            read_va: Be64::new(read_va),
        }
    }

    /// The write STag, if valid.
    pub fn write(&self) -> Option<Stag> {
        (self.flags & Self::WSV != 0).then(|| Stag {
            stag: self.write_stag.get(),
            va: self.write_va.get(),
        })
    }

    /// The read STag, if valid.
    pub fn read(&self) -> Option<Stag> {
        (self.flags & Self::RSV != 0).then(|| Stag {
            stag: self.read_stag.get(),
            va: self.read_va.get(),
        })
    }
}

/// The private data an iSER initiator sends in its RDMA CM connect request
/// (`struct iser_cm_hdr`, RFC 7145 §9.1 / Linux's Annex A12 extension).
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    zerocopy_derive::Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct IserCmHeader {
    /// Flags: `ZBVA_NOT_SUPPORTED` and `SEND_W_INV_NOT_SUPPORTED`.
    pub flags: u8,
    /// Reserved, zero.
    pub rsvd: [u8; 3],
}

impl IserCmHeader {
    /// The initiator cannot take zero-based virtual addresses (`ISER_ZBVA_NOT_SUP`).
    pub const ZBVA_NOT_SUPPORTED: u8 = 0x80;
    /// The initiator does not want SEND with Invalidate (`ISER_SEND_W_INV_NOT_SUP`).
    pub const SEND_W_INV_NOT_SUPPORTED: u8 = 0x40;
}

/// A parsed PDU: views into the received bytes.
#[derive(Clone, Copy, Debug)]
pub struct Pdu<'a> {
    /// The iSER header.
    pub iser: &'a IserHeader,
    /// The Basic Header Segment, untyped (opcode, tag, lengths).
    pub bhs: &'a Bhs,
    /// The Basic Header Segment, typed by opcode.
    pub header: Header<'a>,
    /// Additional Header Segments (`TotalAHSLength` × 4 bytes), unparsed.
    pub ahs: &'a [u8],
    /// The data segment, without padding.
    pub data: &'a [u8],
}

/// Parses a received iSER message (the bytes a receive completion reports).
pub fn parse(bytes: &[u8]) -> Result<Pdu<'_>, WireError> {
    let (iser, rest) = IserHeader::ref_from_prefix(bytes).map_err(|_| WireError::Truncated)?;
    if iser.flags & IserHeader::OPCODE_MASK != IserHeader::ISCSI_CTRL {
        return Err(WireError::NotIscsiControl);
    }
    let (bhs, rest) = Bhs::ref_from_prefix(rest).map_err(|_| WireError::Truncated)?;
    let ahs_len = usize::from(bhs.hlength) * 4;
    let ahs = rest.get(..ahs_len).ok_or(WireError::Truncated)?;
    let rest = rest.get(ahs_len..).ok_or(WireError::Truncated)?;
    let data_len = bhs.data_segment_length();
    // Padding to a 4-byte boundary may follow the data (ib_iser accepts up to 3 bytes).
    if rest.len() < data_len || rest.len() - data_len > 3 {
        return Err(WireError::DataLength);
    }
    let data = rest.get(..data_len).ok_or(WireError::DataLength)?;
    let header = Header::from_bhs(bhs)?;
    Ok(Pdu {
        iser,
        bhs,
        header,
        ahs,
        data,
    })
}

/// Writes a PDU (iSER header, `header` with its `DataSegmentLength` set, `data`) at the
/// start of `buf`; returns its length.
pub fn emit<H: PduHeader>(
    buf: &mut [u8],
    iser: &IserHeader,
    header: &H,
    data: &[u8],
) -> Result<usize, WireError> {
    if data.len() > MAX_DATA_SEGMENT {
        return Err(WireError::DataTooLong);
    }
    let total = ISER_HEADER_LEN + BHS_LEN + data.len();
    let out = buf.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
    let (iser_out, rest) = out.split_at_mut(ISER_HEADER_LEN);
    iser_out.copy_from_slice(iser.as_bytes());
    let (bhs_out, data_out) = rest.split_at_mut(BHS_LEN);
    bhs_out.copy_from_slice(header.as_bytes());
    let bhs = Bhs::mut_from_bytes(bhs_out).map_err(|_| WireError::BufferTooSmall)?;
    bhs.hlength = 0;
    bhs.set_data_segment_length(data.len());
    data_out.copy_from_slice(data);
    Ok(total)
}

#[cfg(test)]
mod tests;
