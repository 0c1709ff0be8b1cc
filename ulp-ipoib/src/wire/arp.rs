//! ARP over IPoIB (RFC 4391 §9.2, RFC 826): hardware type 32, 20-byte hardware
//! addresses, IPv4 protocol addresses.
//!
//! ```text
//! 0        2        4    5    6        8                28     32                52     56
//! +--------+--------+----+----+--------+-----------------+------+-----------------+------+
//! | htype  | ptype  |hlen|plen|  oper  | sender hw (20)  |  spa | target hw (20)  |  tpa |
//! +--------+--------+----+----+--------+-----------------+------+-----------------+------+
//! ```
//!
//! The view reads any ARP packet whose lengths fit the buffer (address fields are placed
//! by `hlen` and `plen`); [`ArpRepr`] accepts only what IPoIB carries.

use core::net::Ipv4Addr;

use super::{encap::ETHERTYPE_IPV4, HARDWARE_ADDRESS_LEN};
use super::{read_array, read_u16, read_u8, write_bytes, write_u8, HardwareAddress, WireError};

/// The ARP hardware type of InfiniBand (`ARPHRD_INFINIBAND`).
pub const HARDWARE_TYPE_INFINIBAND: u16 = 32;
/// Length of the fixed part (before the addresses).
pub const FIXED_LEN: usize = 8;
/// Length of an IPoIB ARP packet for IPv4.
pub const IPOIB_ARP_LEN: usize = FIXED_LEN + 2 * (HARDWARE_ADDRESS_LEN + 4);

mod field {
    pub(super) const HTYPE: usize = 0;
    pub(super) const PTYPE: usize = 2;
    pub(super) const HLEN: usize = 4;
    pub(super) const PLEN: usize = 5;
    pub(super) const OPER: usize = 6;
    pub(super) const SHA: usize = 8;
}

/// A view of an ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view without checks; [`ArpPacket::check_len`] before reading addresses.
    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// A view over `buffer`, refused when it cannot hold the fixed part and the four
    /// addresses its `hlen` and `plen` announce.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Whether the buffer holds the fixed part and every address.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < FIXED_LEN || len < self.packet_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The packet's length from its `hlen` and `plen` (at most 8 + 2 × 510).
    pub fn packet_len(&self) -> usize {
        FIXED_LEN + 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()))
    }

    /// Hardware type (32 for InfiniBand).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (an EtherType).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::HLEN)
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::PLEN)
    }

    /// Operation (1 request, 2 reply).
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    fn address(&self, at: usize, len: u8) -> &[u8] {
        self.buffer
            .as_ref()
            .get(at..at + usize::from(len))
            .unwrap_or(&[])
    }

    fn hlen(&self) -> usize {
        usize::from(self.hardware_len())
    }

    fn plen(&self) -> usize {
        usize::from(self.protocol_len())
    }

    /// Sender hardware address.
    pub fn source_hardware_addr(&self) -> &[u8] {
        self.address(field::SHA, self.hardware_len())
    }

    /// Sender protocol address.
    pub fn source_protocol_addr(&self) -> &[u8] {
        self.address(field::SHA + self.hlen(), self.protocol_len())
    }

    /// Target hardware address.
    pub fn target_hardware_addr(&self) -> &[u8] {
        self.address(field::SHA + self.hlen() + self.plen(), self.hardware_len())
    }

    /// Target protocol address.
    pub fn target_protocol_addr(&self) -> &[u8] {
        self.address(
            field::SHA + 2 * self.hlen() + self.plen(),
            self.protocol_len(),
        )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        write_bytes(self.buffer.as_mut(), field::HTYPE, &value.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: u16) {
        write_bytes(self.buffer.as_mut(), field::PTYPE, &value.to_be_bytes());
    }

    /// Sets the hardware address length (set it before the addresses).
    pub fn set_hardware_len(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::HLEN, value);
    }

    /// Sets the protocol address length (set it before the addresses).
    pub fn set_protocol_len(&mut self, value: u8) {
        write_u8(self.buffer.as_mut(), field::PLEN, value);
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: u16) {
        write_bytes(self.buffer.as_mut(), field::OPER, &value.to_be_bytes());
    }

    /// Sets the sender hardware address (`hlen` bytes of `value`).
    pub fn set_source_hardware_addr(&mut self, value: &[u8]) {
        let at = field::SHA;
        self.set_address(at, self.hlen(), value);
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, value: &[u8]) {
        let at = field::SHA + self.hlen();
        self.set_address(at, self.plen(), value);
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, value: &[u8]) {
        let at = field::SHA + self.hlen() + self.plen();
        self.set_address(at, self.hlen(), value);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, value: &[u8]) {
        let at = field::SHA + 2 * self.hlen() + self.plen();
        self.set_address(at, self.plen(), value);
    }

    fn set_address(&mut self, at: usize, len: usize, value: &[u8]) {
        if let Some(src) = value.get(..len) {
            write_bytes(self.buffer.as_mut(), at, src);
        }
    }
}

/// The ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOperation {
    /// Request (1).
    Request,
    /// Reply (2).
    Reply,
    /// Any other operation (RARP, InARP ...), carried through.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(op: ArpOperation) -> u16 {
        match op {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// An IPoIB ARP packet for IPv4, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// Sender's IPoIB address.
    pub source_hardware_addr: HardwareAddress,
    /// Sender's IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target's IPoIB address (all zero in a request).
    pub target_hardware_addr: HardwareAddress,
    /// Target's IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Reads an IPoIB ARP packet, refusing any other hardware type, address length or
    /// protocol by name.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        if packet.buffer.as_ref().len() < FIXED_LEN {
            return Err(WireError::Truncated);
        }
        if packet.hardware_type() != HARDWARE_TYPE_INFINIBAND {
            return Err(WireError::ArpHardwareType(packet.hardware_type()));
        }
        if packet.hardware_len() as usize != HARDWARE_ADDRESS_LEN {
            return Err(WireError::ArpHardwareLength(packet.hardware_len()));
        }
        if packet.protocol_type() != ETHERTYPE_IPV4 {
            return Err(WireError::ArpProtocolType(packet.protocol_type()));
        }
        if packet.protocol_len() != 4 {
            return Err(WireError::ArpProtocolLength(packet.protocol_len()));
        }
        packet.check_len()?;
        Ok(ArpRepr {
            operation: packet.operation().into(),
            source_hardware_addr: HardwareAddress::from_bytes(packet.source_hardware_addr())?,
            source_protocol_addr: Ipv4Addr::from(read_array::<4>(packet.source_protocol_addr(), 0)),
            target_hardware_addr: HardwareAddress::from_bytes(packet.target_hardware_addr())?,
            target_protocol_addr: Ipv4Addr::from(read_array::<4>(packet.target_protocol_addr(), 0)),
        })
    }

    /// The packet's length (56).
    pub const fn buffer_len(&self) -> usize {
        IPOIB_ARP_LEN
    }

    /// Writes the packet.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut ArpPacket<T>,
    ) -> Result<(), WireError> {
        if packet.buffer.as_ref().len() < IPOIB_ARP_LEN {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_hardware_type(HARDWARE_TYPE_INFINIBAND);
        packet.set_protocol_type(ETHERTYPE_IPV4);
        packet.set_hardware_len(HARDWARE_ADDRESS_LEN as u8);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation.into());
        packet.set_source_hardware_addr(self.source_hardware_addr.as_bytes());
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(self.target_hardware_addr.as_bytes());
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
        Ok(())
    }
}
