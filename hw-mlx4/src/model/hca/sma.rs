//! The subnet management agent of the two ports, as the firmware runs it: the driver
//! hands it SMPs through MAD_IFC (its own queries, and the SMPs that arrive on QP0 for
//! this node), and it answers NodeInfo, NodeDescription, PortInfo, P_Key and GUID tables,
//! SL-to-VL mapping and VL arbitration, and takes the subnet manager's Sets.
//!
//! The two ports are cabled to each other: each one's link is up when both are enabled
//! (INIT_PORT), and a logical state the SM moves from INIT through ARMED to ACTIVE.
//!
//! Source: InfiniBand Architecture Specification vol. 1, 14.2.5 (SMP attributes, their
//! layouts), `include/rdma/ib_smi.h` and `ib_mad.h` (offsets, `IB_SMP_ATTR_*`), and what
//! `drivers/infiniband/hw/mlx4/main.c` (`ib_link_query_port`, `mlx4_ib_query_device`,
//! `init_node_data`) reads from the replies.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Attribute ids (`IB_SMP_ATTR_*`).
mod attr {
    pub const NODE_DESC: u16 = 0x0010;
    pub const NODE_INFO: u16 = 0x0011;
    pub const GUID_INFO: u16 = 0x0014;
    pub const PORT_INFO: u16 = 0x0015;
    pub const PKEY_TABLE: u16 = 0x0016;
    pub const SL_TO_VL_TABLE: u16 = 0x0017;
    pub const VL_ARB_TABLE: u16 = 0x0018;
    /// Mellanox's ExtendedPortInfo (`MLX4_ATTR_EXTENDED_PORT_INFO`): FDR-10 state.
    pub const MLNX_EXT_PORT_INFO: u16 = 0xff90;
}

/// MAD methods.
mod method {
    pub const GET: u8 = 0x01;
    pub const SET: u8 = 0x02;
    pub const GET_RESP: u8 = 0x81;
}

/// Byte offsets in a MAD (`struct ib_mad_hdr`, `struct ib_smp`).
mod mad {
    pub const BASE_VERSION: usize = 0;
    pub const MGMT_CLASS: usize = 1;
    pub const METHOD: usize = 3;
    pub const STATUS: usize = 4;
    pub const ATTR_ID: usize = 16;
    pub const ATTR_MOD: usize = 20;
    /// The SMP's data (64 bytes).
    pub const SMP_DATA: usize = 64;
    pub const SMP_DATA_LEN: usize = 64;
    /// LID-routed and directed-route subnet management classes.
    pub const CLASS_SUBN_LID_ROUTED: u8 = 0x01;
    pub const CLASS_SUBN_DIRECTED_ROUTE: u8 = 0x81;
    /// The performance management class (the PMA).
    pub const CLASS_PERF_MGMT: u8 = 0x04;
    /// A PMA MAD's data (192 bytes after 40 reserved).
    pub const PMA_DATA: usize = 64;
    /// Status: the D bit of a directed-route SMP's status word.
    pub const DR_DIRECTION: u16 = 0x8000;
    /// Status: unsupported method/attribute combination.
    pub const STATUS_UNSUPPORTED_ATTR: u16 = 0x000c;
    /// Status: an attribute or modifier value is invalid.
    pub const STATUS_INVALID_FIELD: u16 = 0x001c;
}

/// Byte offsets in PortInfo's 64 bytes: the driver reads them through the same.
use crate::wire::fw::port_info;

/// A port's logical state (PortInfo:PortState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    Down = 1,
    Init = 2,
    Armed = 3,
    Active = 4,
}

/// What a port's subnet manager set.
#[derive(Clone, Debug)]
struct Port {
    enabled: bool,
    /// PortPhysicalState set to Disabled by an SMP (`ibportstate ... disable`), until one
    /// sets it to Polling again.
    disabled: bool,
    state: PortState,
    lid: u16,
    sm_lid: u16,
    sm_sl: u8,
    lmc: u8,
    gid_prefix: u64,
    neighbor_mtu: u8,
    oper_vls: u8,
    subnet_timeout: u8,
    /// PortInfo:CapabilityMask, as the driver set it with SET_PORT.
    capability_mask: u32,
    counters: PortCounters,
    pkeys: [u16; 128],
}

impl Port {
    fn new() -> Self {
        let mut pkeys = [0u16; 128];
        pkeys[0] = 0xffff;
        Self {
            enabled: false,
            disabled: false,
            state: PortState::Down,
            lid: 0,
            sm_lid: 0,
            sm_sl: 0,
            lmc: 0,
            gid_prefix: 0xfe80_0000_0000_0000,
            // NeighborMTU = MTUCap and OperationalVLs = min(VLCap, 5): what opensm
            // computes, so it has no reason to bounce the link.
            neighbor_mtu: 5,
            oper_vls: 4,
            subnet_timeout: 0,
            capability_mask: DEFAULT_CAPABILITY_MASK,
            counters: PortCounters::default(),
            pkeys,
        }
    }
}

/// What a port moved, for the performance management agent.
#[derive(Clone, Copy, Debug, Default)]
struct PortCounters {
    xmit_packets: u64,
    rcv_packets: u64,
    /// Octets divided by 4, as IBA counts data (LRH through ICRC).
    xmit_words: u64,
    rcv_words: u64,
    /// Packets the port had to drop on receive (no receive posted, a bad Q_Key, a QP
    /// not ready): IBA's PortRcvErrors is the closest counter; VL15 drops have their own.
    rcv_dropped: u64,
    vl15_dropped: u64,
}

/// A change the device must report to the driver (a PORT_CHANGE event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// The port went ACTIVE.
    Active { port: usize },
    /// The port left ACTIVE.
    Down { port: usize },
}

/// The node's subnet management agent.
pub struct Sma {
    node_guid: u64,
    ports: [Port; 2],
    events: Vec<PortEvent>,
}

/// PortInfo:CapabilityMask until the driver sets its own with SET_PORT (mlx4_core reads
/// this one first, `mlx4_get_port_ib_caps`): IsTrapSupported, IsAutomaticMigration,
/// IsSLMappingSupported, IsSystemImageGUIDSupported, IsCommunicationManagement,
/// IsVendorClass, IsCapabilityMaskNotice, IsClientReregistration: bits 3, 4, 6, 11, 16,
/// 19, 22 and 25. (Written as one number: its bits, joined with `|`, made mutants that
/// `^` could not tell apart.)
const DEFAULT_CAPABILITY_MASK: u32 = 0x0249_0858;

/// Node description (NodeDescription, 64 bytes).
const NODE_DESCRIPTION: &[u8] = b"tilde emulated ConnectX-3";
/// The ConnectX-3's device id and revision, and Mellanox's OUI.
const DEVICE_ID: u16 = 0x1003;
const REVISION: u32 = 0xb0;
const VENDOR_ID: u32 = 0x0002c9;

impl Default for Sma {
    fn default() -> Self {
        Self::new()
    }
}

impl Sma {
    /// The agent of a freshly reset device: both ports down.
    pub fn new() -> Self {
        Self {
            node_guid: 0x0002_c903_00a0_b0c0,
            ports: [Port::new(), Port::new()],
            events: Vec::new(),
        }
    }

    /// The GUID of port `index` (0-based).
    pub fn port_guid(&self, index: usize) -> u64 {
        self.node_guid + 1 + index as u64
    }

    /// A port's logical state.
    pub fn state(&self, index: usize) -> Option<PortState> {
        self.ports.get(index).map(|p| p.state)
    }

    /// The port events since the last call.
    pub fn take_events(&mut self) -> Vec<PortEvent> {
        core::mem::take(&mut self.events)
    }

    /// INIT_PORT or CLOSE_PORT: the cable's link is up when both ends are enabled.
    pub fn set_port_enabled(&mut self, index: usize, enabled: bool) {
        if let Some(port) = self.ports.get_mut(index) {
            port.enabled = enabled;
        }
        self.follow_link();
    }

    /// Each port's state after the cable's link went up or down: down with it, INIT
    /// when it comes back (the SM makes it ACTIVE again).
    fn follow_link(&mut self) {
        let link_up = self.link_up();
        for (i, port) in self.ports.iter_mut().enumerate() {
            let next = match (link_up, port.state) {
                (false, _) => PortState::Down,
                (true, PortState::Down) => PortState::Init,
                (true, state) => state,
            };
            if port.state == PortState::Active && next != PortState::Active {
                self.events.push(PortEvent::Down { port: i });
            }
            port.state = next;
        }
    }

    /// Whether the cable's link is up: both ports enabled by their driver, neither
    /// disabled by an SMP.
    pub fn link_up(&self) -> bool {
        self.ports.iter().all(|p| p.enabled && !p.disabled)
    }

    /// A port's GID prefix (the SM may set it).
    pub fn gid_prefix(&self, index: usize) -> u64 {
        self.ports
            .get(index)
            .map_or(0xfe80_0000_0000_0000, |p| p.gid_prefix)
    }

    /// A port's LID (0 until the SM assigns one).
    pub fn lid(&self, index: usize) -> u16 {
        self.ports.get(index).map_or(0, |p| p.lid)
    }

    /// The LID bits a port's LMC leaves to the path.
    pub fn lmc_mask(&self, index: usize) -> u16 {
        self.ports.get(index).map_or(0, |p| (1u16 << p.lmc) - 1)
    }

    /// The index of `pkey` in a port's table (full or limited membership alike).
    pub fn pkey_index(&self, index: usize, pkey: u16) -> Option<u16> {
        let port = self.ports.get(index)?;
        port.pkeys
            .iter()
            .position(|&k| k & 0x7fff == pkey & 0x7fff && k & 0x7fff != 0)
            .map(|i| i as u16)
    }

    /// Counts a packet of `bytes` (headers to ICRC) leaving port `index`.
    pub fn count_xmit(&mut self, index: usize, bytes: usize) {
        if let Some(port) = self.ports.get_mut(index) {
            port.counters.xmit_packets += 1;
            port.counters.xmit_words += (bytes / 4) as u64;
        }
    }

    /// Counts a packet of `bytes` arriving at port `index`; `delivered` says whether a
    /// QP took it.
    pub fn count_rcv(&mut self, index: usize, bytes: usize, delivered: bool, vl15: bool) {
        if let Some(port) = self.ports.get_mut(index) {
            port.counters.rcv_packets += 1;
            port.counters.rcv_words += (bytes / 4) as u64;
            if !delivered {
                if vl15 {
                    port.counters.vl15_dropped += 1;
                } else {
                    port.counters.rcv_dropped += 1;
                }
            }
        }
    }

    /// SET_PORT: the capability mask PortInfo reports.
    pub fn set_capability_mask(&mut self, index: usize, mask: u32) {
        if let Some(port) = self.ports.get_mut(index) {
            port.capability_mask = mask;
        }
    }

    /// Answers the SMP `request` (256 bytes) that port `index` received, into `reply`.
    /// An SMP the agent does not answer gets a reply with the MAD status saying why,
    /// as the firmware does; a request that is no SMP at all is an error.
    pub fn process(
        &mut self,
        index: usize,
        request: &[u8],
        reply: &mut [u8; 256],
    ) -> Result<(), String> {
        let request: &[u8; 256] = request
            .try_into()
            .map_err(|_| format!("MAD_IFC: a MAD of {} bytes", request.len()))?;
        let class = request[mad::MGMT_CLASS];
        if request[mad::BASE_VERSION] != 1 {
            return Err(format!(
                "MAD_IFC: base version {}, not an IB MAD",
                request[mad::BASE_VERSION]
            ));
        }
        reply.copy_from_slice(request);
        if class == mad::CLASS_PERF_MGMT {
            self.pma(index, request, reply);
            return Ok(());
        }
        if class != mad::CLASS_SUBN_LID_ROUTED && class != mad::CLASS_SUBN_DIRECTED_ROUTE {
            // Vendor and congestion management classes, which mlx4_ib forwards too:
            // the firmware has no agent for them (MAD status: unsupported class).
            reply[mad::METHOD] = method::GET_RESP;
            reply[mad::STATUS..mad::STATUS + 2].copy_from_slice(&0x0008u16.to_be_bytes());
            return Ok(());
        }
        let method = request[mad::METHOD];
        let attr = u16::from_be_bytes([request[mad::ATTR_ID], request[mad::ATTR_ID + 1]]);
        let attr_mod = u32::from_be_bytes([
            request[mad::ATTR_MOD],
            request[mad::ATTR_MOD + 1],
            request[mad::ATTR_MOD + 2],
            request[mad::ATTR_MOD + 3],
        ]);
        let mut data = [0u8; mad::SMP_DATA_LEN];
        data.copy_from_slice(&request[mad::SMP_DATA..mad::SMP_DATA + mad::SMP_DATA_LEN]);
        let status = match method {
            method::GET => self.get(index, attr, attr_mod, &mut data),
            method::SET => self.set(index, attr, attr_mod, &data).and_then(|()| {
                data = [0; mad::SMP_DATA_LEN];
                self.get(index, attr, attr_mod, &mut data)
            }),
            _ => Err(mad::STATUS_UNSUPPORTED_ATTR),
        };
        let mut status = status.err().unwrap_or(0);
        if class == mad::CLASS_SUBN_DIRECTED_ROUTE {
            status |= mad::DR_DIRECTION;
        }
        reply[mad::METHOD] = method::GET_RESP;
        reply[mad::STATUS..mad::STATUS + 2].copy_from_slice(&status.to_be_bytes());
        reply[mad::SMP_DATA..mad::SMP_DATA + mad::SMP_DATA_LEN].copy_from_slice(&data);
        Ok(())
    }

    /// The performance management agent: ClassPortInfo, PortCounters and
    /// PortCountersExtended (IBA 16.1.3-16.1.4; `include/rdma/ib_pma.h`), from what the
    /// ports moved. PortSelect names the port; 0 is the port the MAD came in on.
    fn pma(&self, index: usize, request: &[u8; 256], reply: &mut [u8; 256]) {
        const CLASS_PORT_INFO: u16 = 0x0001;
        const PORT_COUNTERS: u16 = 0x0012;
        const PORT_COUNTERS_EXT: u16 = 0x001d;
        let attr = u16::from_be_bytes([request[mad::ATTR_ID], request[mad::ATTR_ID + 1]]);
        let mut status = 0u16;
        let data = &mut reply[mad::PMA_DATA..];
        data.fill(0);
        match (request[mad::METHOD], attr) {
            (method::GET, CLASS_PORT_INFO) => {
                data[0] = 1; // base version
                data[1] = 1; // class version
                             // Extended (64-bit) counters, with the IETF ones.
                data[2..4].copy_from_slice(&(1u16 << 9).to_be_bytes());
            }
            (method::GET, PORT_COUNTERS | PORT_COUNTERS_EXT) => {
                let select = request[mad::PMA_DATA + 1];
                data[1] = select;
                let port = match select {
                    0 => self.ports.get(index),
                    1 | 2 => self.ports.get(usize::from(select) - 1),
                    _ => None,
                };
                match port {
                    Some(port) => write_counters(&port.counters, attr == PORT_COUNTERS_EXT, data),
                    None => status = mad::STATUS_INVALID_FIELD,
                }
            }
            _ => status = mad::STATUS_UNSUPPORTED_ATTR,
        }
        reply[mad::METHOD] = method::GET_RESP;
        reply[mad::STATUS..mad::STATUS + 2].copy_from_slice(&status.to_be_bytes());
    }

    fn get(&self, index: usize, attr: u16, attr_mod: u32, data: &mut [u8; 64]) -> Result<(), u16> {
        *data = [0; 64];
        let port = self.ports.get(index).ok_or(mad::STATUS_INVALID_FIELD)?;
        match attr {
            attr::NODE_DESC => {
                data[..NODE_DESCRIPTION.len()].copy_from_slice(NODE_DESCRIPTION);
            }
            attr::NODE_INFO => {
                data[0] = 1; // base version
                data[1] = 1; // class version
                data[2] = 1; // node type: channel adapter
                data[3] = 2; // ports
                data[4..12].copy_from_slice(&self.node_guid.to_be_bytes()); // system image
                data[12..20].copy_from_slice(&self.node_guid.to_be_bytes());
                data[20..28].copy_from_slice(&self.port_guid(index).to_be_bytes());
                data[28..30].copy_from_slice(&128u16.to_be_bytes()); // partition cap
                data[30..32].copy_from_slice(&DEVICE_ID.to_be_bytes());
                data[32..36].copy_from_slice(&REVISION.to_be_bytes());
                let port_vendor = ((index as u32 + 1) << 24) | VENDOR_ID;
                data[36..40].copy_from_slice(&port_vendor.to_be_bytes());
            }
            attr::PORT_INFO => {
                // The modifier names the port; 0 means the one the SMP came in on.
                let target = match attr_mod {
                    0 => index,
                    1 | 2 => attr_mod as usize - 1,
                    _ => return Err(mad::STATUS_INVALID_FIELD),
                };
                self.port_info(target, data);
            }
            attr::GUID_INFO => {
                // Block 0: the port GUID at index 0, the rest unassigned.
                if attr_mod == 0 {
                    data[..8].copy_from_slice(&self.port_guid(index).to_be_bytes());
                } else if attr_mod >= 16 {
                    return Err(mad::STATUS_INVALID_FIELD);
                }
            }
            attr::PKEY_TABLE => {
                let block = (attr_mod & 0xffff) as usize;
                let keys = port
                    .pkeys
                    .get(block * 32..block * 32 + 32)
                    .ok_or(mad::STATUS_INVALID_FIELD)?;
                for (i, key) in keys.iter().enumerate() {
                    data[2 * i..2 * i + 2].copy_from_slice(&key.to_be_bytes());
                }
            }
            attr::SL_TO_VL_TABLE => {
                // Every SL on VL0.
            }
            attr::MLNX_EXT_PORT_INFO => {
                // No FDR-10: all zero.
            }
            attr::VL_ARB_TABLE => {
                // One entry per VL, weight 64, for the VLs the port has.
                for vl in 0..8usize {
                    data[2 * vl] = vl as u8;
                    data[2 * vl + 1] = 64;
                }
            }
            _ => return Err(mad::STATUS_UNSUPPORTED_ATTR),
        }
        Ok(())
    }

    fn port_info(&self, index: usize, data: &mut [u8; 64]) {
        let Some(port) = self.ports.get(index) else {
            return;
        };
        use port_info as p;
        data[p::GID_PREFIX..p::GID_PREFIX + 8].copy_from_slice(&port.gid_prefix.to_be_bytes());
        data[p::LID..p::LID + 2].copy_from_slice(&port.lid.to_be_bytes());
        data[p::SM_LID..p::SM_LID + 2].copy_from_slice(&port.sm_lid.to_be_bytes());
        data[p::CAP_MASK..p::CAP_MASK + 4].copy_from_slice(&port.capability_mask.to_be_bytes());
        data[p::LOCAL_PORT] = index as u8 + 1;
        data[p::WIDTH_ENABLED] = 3;
        data[p::WIDTH_SUPPORTED] = 3;
        // 4X, DDR: not QDR, so the driver asks for no FDR-10 extended port info.
        data[p::WIDTH_ACTIVE] = 2;
        data[p::SPEED_STATE] = (3 << 4) | port.state as u8;
        // Physical state: Disabled (3) as an SMP set it, LinkUp (5) with the cable's both
        // ends enabled, else Polling (2); down default: Polling.
        let phys = if port.disabled {
            3
        } else if self.link_up() {
            5
        } else {
            2
        };
        data[p::PHYS_STATE] = (phys << 4) | 2;
        data[p::LMC] = port.lmc & 7;
        data[p::SPEED_ACTIVE] = (2 << 4) | 3;
        data[p::MTU_SMSL] = (port.neighbor_mtu << 4) | (port.sm_sl & 0xf);
        // VL cap: VL0-7 (4); init type 0.
        data[p::VL_CAP] = 4 << 4;
        data[p::MTU_CAP] = 5;
        data[p::OPER_VLS] = port.oper_vls << 4;
        data[p::GUID_CAP] = 1;
        data[p::SUBNET_TIMEOUT] = port.subnet_timeout & 0x1f;
    }

    fn set(&mut self, index: usize, attr: u16, attr_mod: u32, data: &[u8; 64]) -> Result<(), u16> {
        match attr {
            attr::PORT_INFO => {
                let target = match attr_mod {
                    0 => index,
                    1 | 2 => attr_mod as usize - 1,
                    _ => return Err(mad::STATUS_INVALID_FIELD),
                };
                self.set_port_info(target, data)
            }
            attr::PKEY_TABLE => {
                let block = (attr_mod & 0xffff) as usize;
                let port = self.ports.get_mut(index).ok_or(mad::STATUS_INVALID_FIELD)?;
                let keys = port
                    .pkeys
                    .get_mut(block * 32..block * 32 + 32)
                    .ok_or(mad::STATUS_INVALID_FIELD)?;
                for (i, key) in keys.iter_mut().enumerate() {
                    *key = u16::from_be_bytes([data[2 * i], data[2 * i + 1]]);
                }
                Ok(())
            }
            // The mapping and arbitration tables are accepted and read back as the
            // device's fixed ones: one operational VL.
            attr::SL_TO_VL_TABLE
            | attr::VL_ARB_TABLE
            | attr::GUID_INFO
            | attr::MLNX_EXT_PORT_INFO => Ok(()),
            _ => Err(mad::STATUS_UNSUPPORTED_ATTR),
        }
    }

    fn set_port_info(&mut self, index: usize, data: &[u8; 64]) -> Result<(), u16> {
        use port_info as p;
        // PortPhysicalState first: Polling (2) enables the port's physical link,
        // Disabled (3) takes it down until then (IBA 14.2.5.6), whatever state the port
        // was in; 0 (and what a Set copied from a Get) changes nothing. The rest of the
        // Set applies to the port as it is after that.
        let disabled = match data[p::PHYS_STATE] >> 4 {
            2 => Some(false),
            3 => Some(true),
            _ => None,
        };
        let port = self.ports.get_mut(index).ok_or(mad::STATUS_INVALID_FIELD)?;
        if let Some(disabled) = disabled.filter(|&d| d != port.disabled) {
            port.disabled = disabled;
            self.follow_link();
        }
        let link_up = self.link_up();
        let port = self.ports.get_mut(index).ok_or(mad::STATUS_INVALID_FIELD)?;
        port.gid_prefix = u64::from_be_bytes(
            data[p::GID_PREFIX..p::GID_PREFIX + 8]
                .try_into()
                .map_err(|_| mad::STATUS_INVALID_FIELD)?,
        );
        port.lid = u16::from_be_bytes([data[p::LID], data[p::LID + 1]]);
        port.sm_lid = u16::from_be_bytes([data[p::SM_LID], data[p::SM_LID + 1]]);
        port.lmc = data[p::LMC] & 7;
        port.sm_sl = data[p::MTU_SMSL] & 0xf;
        let mtu = data[p::MTU_SMSL] >> 4;
        if (1..=5).contains(&mtu) {
            port.neighbor_mtu = mtu;
        }
        let vls = data[p::OPER_VLS] >> 4;
        if (1..=4).contains(&vls) {
            port.oper_vls = vls;
        }
        port.subnet_timeout = data[p::SUBNET_TIMEOUT] & 0x1f;
        // PortState: 0 is no change; DOWN takes the link down and back to INIT here
        // (the cable stays); ARMED from INIT, ACTIVE from ARMED.
        let wanted = data[p::SPEED_STATE] & 0xf;
        let from = port.state;
        let next = match (wanted, from) {
            (0, state) => state,
            (1, _) if link_up => PortState::Init,
            (1, _) => PortState::Down,
            (3, PortState::Init) | (3, PortState::Armed) => PortState::Armed,
            (4, PortState::Armed) | (4, PortState::Active) => PortState::Active,
            _ => return Err(mad::STATUS_INVALID_FIELD),
        };
        port.state = next;
        if next == PortState::Active && from != PortState::Active {
            self.events.push(PortEvent::Active { port: index });
        } else if from == PortState::Active && next != PortState::Active {
            self.events.push(PortEvent::Down { port: index });
        }
        Ok(())
    }
}

/// PortCounters (32-bit data and packet counters at 24..40, saturating; errors at 8 and
/// 22) or PortCountersExtended (64-bit, from 8).
fn write_counters(c: &PortCounters, extended: bool, data: &mut [u8]) {
    let sat32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes();
    let sat16 = |v: u64| u16::try_from(v).unwrap_or(u16::MAX).to_be_bytes();
    if extended {
        for (i, v) in [
            c.xmit_words,
            c.rcv_words,
            c.xmit_packets,
            c.rcv_packets,
            c.xmit_packets,
            c.rcv_packets,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(dst) = data.get_mut(8 + 8 * i..16 + 8 * i) {
                dst.copy_from_slice(&v.to_be_bytes());
            }
        }
    } else {
        let fields: [(usize, &[u8]); 6] = [
            (8, &sat16(c.rcv_dropped)),
            (22, &sat16(c.vl15_dropped)),
            (24, &sat32(c.xmit_words)),
            (28, &sat32(c.rcv_words)),
            (32, &sat32(c.xmit_packets)),
            (36, &sat32(c.rcv_packets)),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = data.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
    }
}
