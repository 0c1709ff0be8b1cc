//! What the subnet administrator answers, as the core needs it, and what an address
//! handle is made from. The caller's SA client (the kernel's `ib_sa`) speaks the MADs;
//! these are the fields IPoIB reads from a path record and a multicast member record
//! (IBA §15.2.5.16 and §15.2.5.17).

use crate::wire::Gid;

/// An IBA MTU code (the 4-bit enum of path and member records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IbMtu {
    /// 256 bytes (code 1).
    Mtu256,
    /// 512 bytes (code 2).
    Mtu512,
    /// 1024 bytes (code 3).
    Mtu1024,
    /// 2048 bytes (code 4).
    Mtu2048,
    /// 4096 bytes (code 5).
    Mtu4096,
}

impl IbMtu {
    /// The MTU of an IBA code; `None` for the reserved codes (0, 6..15).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(IbMtu::Mtu256),
            2 => Some(IbMtu::Mtu512),
            3 => Some(IbMtu::Mtu1024),
            4 => Some(IbMtu::Mtu2048),
            5 => Some(IbMtu::Mtu4096),
            _ => None,
        }
    }

    /// The IBA code.
    pub fn code(self) -> u8 {
        match self {
            IbMtu::Mtu256 => 1,
            IbMtu::Mtu512 => 2,
            IbMtu::Mtu1024 => 3,
            IbMtu::Mtu2048 => 4,
            IbMtu::Mtu4096 => 5,
        }
    }

    /// The payload bytes one IB packet carries.
    pub fn bytes(self) -> u16 {
        match self {
            IbMtu::Mtu256 => 256,
            IbMtu::Mtu512 => 512,
            IbMtu::Mtu1024 => 1024,
            IbMtu::Mtu2048 => 2048,
            IbMtu::Mtu4096 => 4096,
        }
    }
}

/// The path record fields IPoIB uses (from an SA PathRecord query by DGID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRecord {
    /// The destination port's LID.
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Static rate (IBA rate code).
    pub rate: u8,
    /// The path MTU (a connection's RC QP takes it from the path its CM REQ carries;
    /// datagram mode takes the broadcast group's).
    pub mtu: IbMtu,
    /// The packet life time code: a connection's CM and ACK timeouts grow from it.
    pub packet_life_time: u8,
    /// Hop limit: above 0, the destination is reached through a router and the AH
    /// needs a GRH.
    pub hop_limit: u8,
    /// Traffic class for the GRH.
    pub traffic_class: u8,
    /// Flow label for the GRH (20 bits).
    pub flow_label: u32,
}

/// The multicast member record fields of a completed join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McMemberRecord {
    /// The group's multicast LID.
    pub mlid: u16,
    /// The group's Q_Key (every IPoIB datagram is sent with the broadcast group's).
    pub qkey: u32,
    /// The group's MTU (the broadcast group's sets the interface MTU).
    pub mtu: IbMtu,
    /// Service level.
    pub sl: u8,
    /// Static rate.
    pub rate: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Hop limit.
    pub hop_limit: u8,
}

/// How a port joins a group (the SA JoinState bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinState {
    /// Full member: sends and receives (groups the stack listens to, and the broadcast
    /// group).
    FullMember,
    /// Send-only: a group the stack sends to without listening (Linux asks for
    /// SendOnlyFullMember where the SM supports it; the caller picks the bit).
    SendOnly,
}

/// The attributes an address handle is created with (`rdma_ah_attr` on an IB port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddressVector {
    /// Destination LID (a multicast LID for a group).
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Static rate.
    pub static_rate: u8,
    /// The GRH to send with, when the destination needs one (groups always; unicast
    /// when the path crosses a router).
    pub grh: Option<GlobalRoute>,
}

/// The GRH fields of an address vector (the source GID is the port's, index 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GlobalRoute {
    /// Destination GID (an MGID for a group).
    pub dgid: Gid,
    /// Flow label.
    pub flow_label: u32,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

impl AddressVector {
    /// The AH attributes of a unicast path (as `ib_init_ah_attr_from_path` builds them
    /// on IB: a GRH only when the SA gave a hop limit).
    pub fn from_path(dgid: Gid, path: &PathRecord) -> Self {
        AddressVector {
            dlid: path.dlid,
            sl: path.sl,
            static_rate: path.rate,
            grh: (path.hop_limit > 0).then_some(GlobalRoute {
                dgid,
                flow_label: path.flow_label,
                hop_limit: path.hop_limit,
                traffic_class: path.traffic_class,
            }),
        }
    }

    /// The AH attributes of a joined group: its MLID and always a GRH to its MGID (as
    /// ib_ipoib's `ipoib_mcast_join_finish` sets them).
    pub fn from_group(mgid: Gid, member: &McMemberRecord) -> Self {
        AddressVector {
            dlid: member.mlid,
            sl: member.sl,
            static_rate: member.rate,
            grh: Some(GlobalRoute {
                dgid: mgid,
                flow_label: member.flow_label,
                hop_limit: member.hop_limit,
                traffic_class: member.traffic_class,
            }),
        }
    }
}
