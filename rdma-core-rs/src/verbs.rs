// SPDX-License-Identifier: GPL-2.0
//! Verbs types shared by the host build and the kernel build.
//!
//! Values and names follow `include/rdma/ib_verbs.h` and the strings the kernel's IB core
//! shows in sysfs (`drivers/infiniband/core/sysfs.c`), so what tilde logs reads the same
//! as what `rdma link` and `/sys/class/infiniband` show. Raw values that the kernel may
//! grow in a later release decode to `None` instead of failing.

use core::fmt;

/// A 64-bit GUID (node, port or system image GUID), held in host byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Guid(u64);

impl Guid {
    /// A GUID from its value in host byte order.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// A GUID from a `__be64` as stored in `struct ib_device` (wire order in memory).
    pub const fn from_be(raw: u64) -> Self {
        Self(u64::from_be(raw))
    }

    /// The GUID's value in host byte order.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Formats like sysfs `node_guid`: four groups of four hex digits.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:04x}:{:04x}:{:04x}:{:04x}",
            (v >> 48) & 0xffff,
            (v >> 32) & 0xffff,
            (v >> 16) & 0xffff,
            v & 0xffff
        )
    }
}

/// Declares a `#[repr(u32)]` enum of a C `enum` with its raw values, a checked decoder
/// and the kernel's display names.
macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[repr(u32)]
        pub enum $name { $( #[doc = $text] $(#[$vmeta])* $variant = $value, )+ }

        impl $name {
            /// Decodes the kernel's raw value; `None` for a value this build does not know.
            pub const fn from_raw(raw: u32) -> Option<Self> {
                match raw {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The raw value the kernel uses.
            pub const fn to_raw(self) -> u32 {
                self as u32
            }

            /// The name the kernel shows for this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

c_enum! {
    /// Completion status, `enum ib_wc_status`, with `ib_wc_status_msg`'s names.
    pub enum WcStatus {
        Success = 0 => "success",
        LocalLengthError = 1 => "local length error",
        LocalQpOperationError = 2 => "local QP operation error",
        LocalEecOperationError = 3 => "local EE context operation error",
        LocalProtectionError = 4 => "local protection error",
        WrFlushError = 5 => "WR flushed",
        MwBindError = 6 => "memory bind operation error",
        BadResponseError = 7 => "bad response error",
        LocalAccessError = 8 => "local access error",
        RemoteInvalidRequestError = 9 => "remote invalid request error",
        RemoteAccessError = 10 => "remote access error",
        RemoteOperationError = 11 => "remote operation error",
        RetryExceededError = 12 => "transport retry counter exceeded",
        RnrRetryExceededError = 13 => "RNR retry counter exceeded",
        LocalRddViolationError = 14 => "local RDD violation error",
        RemoteInvalidRdRequestError = 15 => "remote invalid RD request",
        RemoteAbortError = 16 => "operation aborted",
        InvalidEecnError = 17 => "invalid EE context number",
        InvalidEecStateError = 18 => "invalid EE context state",
        FatalError = 19 => "fatal error",
        ResponseTimeoutError = 20 => "response timeout error",
        GeneralError = 21 => "general error",
    }
}

c_enum! {
    /// What a completion is for, `enum ib_wc_opcode`.
    pub enum WcOpcode {
        Send = 0 => "SEND",
        RdmaWrite = 1 => "RDMA_WRITE",
        RdmaRead = 2 => "RDMA_READ",
        CompSwap = 3 => "COMP_SWAP",
        FetchAdd = 4 => "FETCH_ADD",
        BindMw = 5 => "BIND_MW",
        LocalInvalidate = 6 => "LOCAL_INV",
        Lso = 7 => "LSO",
        Flush = 8 => "FLUSH",
        AtomicWrite = 9 => "ATOMIC_WRITE",
        RegMr = 10 => "REG_MR",
        MaskedCompSwap = 11 => "MASKED_COMP_SWAP",
        MaskedFetchAdd = 12 => "MASKED_FETCH_ADD",
        Recv = 128 => "RECV",
        RecvRdmaWithImm = 129 => "RECV_RDMA_WITH_IMM",
    }
}

c_enum! {
    /// Logical port state, `enum ib_port_state`.
    pub enum PortState {
        Nop = 0 => "NOP",
        Down = 1 => "DOWN",
        Init = 2 => "INIT",
        Armed = 3 => "ARMED",
        Active = 4 => "ACTIVE",
        ActiveDefer = 5 => "ACTIVE_DEFER",
    }
}

c_enum! {
    /// Physical port state, `enum ib_port_phys_state`.
    pub enum PhysPortState {
        Sleep = 1 => "Sleep",
        Polling = 2 => "Polling",
        Disabled = 3 => "Disabled",
        PortConfigurationTraining = 4 => "PortConfigurationTraining",
        LinkUp = 5 => "LinkUp",
        LinkErrorRecovery = 6 => "LinkErrorRecovery",
        PhyTest = 7 => "Phy Test",
    }
}

c_enum! {
    /// Link layer of a port, `enum rdma_link_layer`.
    pub enum LinkLayer {
        Unspecified = 0 => "Unknown",
        InfiniBand = 1 => "InfiniBand",
        Ethernet = 2 => "Ethernet",
    }
}

c_enum! {
    /// Path MTU, `enum ib_mtu`.
    pub enum Mtu {
        Mtu256 = 1 => "256",
        Mtu512 = 2 => "512",
        Mtu1024 = 3 => "1024",
        Mtu2048 = 4 => "2048",
        Mtu4096 = 5 => "4096",
    }
}

impl Mtu {
    /// The MTU in bytes.
    pub const fn bytes(self) -> u32 {
        128 << self.to_raw()
    }
}

/// A value decoded from the kernel that may be one this build does not know.
///
/// Displays the known name, or `unknown(N)` with the raw value, so a log line never
/// lies and never fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decoded<T> {
    /// A value this build knows.
    Known(T),
    /// The raw value as the kernel gave it.
    Unknown(u32),
}

impl<T: fmt::Display> fmt::Display for Decoded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decoded::Known(v) => v.fmt(f),
            Decoded::Unknown(raw) => write!(f, "unknown({raw})"),
        }
    }
}

macro_rules! decode_fn {
    ($($ty:ident),*) => {$(
        impl From<u32> for Decoded<$ty> {
            fn from(raw: u32) -> Self {
                match $ty::from_raw(raw) {
                    Some(v) => Decoded::Known(v),
                    None => Decoded::Unknown(raw),
                }
            }
        }
    )*};
}
decode_fn!(PortState, PhysPortState, LinkLayer, Mtu);

/// What tilde reads of a port: the part of `struct ib_port_attr` it uses, plus the
/// port's link layer (which the kernel reports through a separate call).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PortAttr {
    /// Logical state.
    pub state: Decoded<PortState>,
    /// Physical state.
    pub phys_state: Decoded<PhysPortState>,
    /// Active path MTU.
    pub active_mtu: Decoded<Mtu>,
    /// Largest path MTU the port supports.
    pub max_mtu: Decoded<Mtu>,
    /// Number of entries in the port's GID table.
    pub gid_tbl_len: u32,
    /// Base LID (0 on RoCE ports).
    pub lid: u32,
    /// Link layer of the port.
    pub link_layer: Decoded<LinkLayer>,
}

/// One log line's worth of a port, as the device client prints it.
impl fmt::Display for PortAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "link_layer {} state {} phys_state {} active_mtu {} max_mtu {} gid_tbl_len {} lid {}",
            self.link_layer,
            self.state,
            self.phys_state,
            self.active_mtu,
            self.max_mtu,
            self.gid_tbl_len,
            self.lid
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn port(link_layer: u32, lid: u32) -> PortAttr {
        PortAttr {
            state: Decoded::from(4),
            phys_state: Decoded::from(5),
            active_mtu: Decoded::from(3),
            max_mtu: Decoded::from(5),
            gid_tbl_len: 1,
            lid,
            link_layer: Decoded::from(link_layer),
        }
    }

    #[test]
    fn a_path_to_self_follows_the_link_layer() {
        let link_local = Gid([
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56,
        ]);
        let grh = Grh {
            sgid_index: 0,
            dgid: link_local,
            hop_limit: 64,
        };
        // InfiniBand: by LID, the GRH only when asked for.
        let ib = port(1, 7);
        assert_eq!(
            AddressVector::to_self(&ib, link_local, false),
            Some(AddressVector::Ib {
                dlid: 7,
                sl: 0,
                grh: None
            })
        );
        assert_eq!(
            AddressVector::to_self(&ib, link_local, true).and_then(|av| av.grh().copied()),
            Some(grh)
        );
        // No LID yet (no SM swept the port), or one past 16 bits: no path.
        assert_eq!(AddressVector::to_self(&port(1, 0), link_local, false), None);
        assert_eq!(
            AddressVector::to_self(&port(1, 0x1_0000), link_local, false),
            None
        );
        // RoCE: always the GRH, and the MAC the link-local GID was made from.
        assert_eq!(
            AddressVector::to_self(&port(2, 0), link_local, false),
            Some(AddressVector::Roce {
                grh,
                dmac: [0x52, 0x54, 0, 0x12, 0x34, 0x56]
            })
        );
        let mut v4_mapped = [0u8; 16];
        v4_mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(
            AddressVector::to_self(&port(2, 0), Gid(v4_mapped), true),
            None
        );
        assert_eq!(AddressVector::to_self(&port(0, 7), link_local, true), None);
    }

    #[test]
    fn guid_reads_be64_and_formats_like_sysfs() {
        // rxe derives its node GUID from the netdev's MAC 52:54:00:12:34:56 (EUI-64).
        let in_memory: [u8; 8] = [0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56];
        let guid = Guid::from_be(u64::from_ne_bytes(in_memory));
        assert_eq!(guid.get(), 0x5054_00ff_fe12_3456);
        assert_eq!(format!("{guid}"), "5054:00ff:fe12:3456");
    }

    #[test]
    fn enums_decode_kernel_values_and_reject_unknown() {
        assert_eq!(PortState::from_raw(4), Some(PortState::Active));
        assert_eq!(PortState::from_raw(6), None);
        assert_eq!(LinkLayer::from_raw(2), Some(LinkLayer::Ethernet));
        assert_eq!(PhysPortState::from_raw(0), None);
        assert_eq!(Mtu::from_raw(5).map(Mtu::bytes), Some(4096));
        assert_eq!(Mtu::Mtu256.bytes(), 256);
        for raw in 0..16 {
            if let Some(s) = PortState::from_raw(raw) {
                assert_eq!(s.to_raw(), raw);
            }
        }
    }

    #[test]
    fn port_line_names_unknown_values() {
        let attr = PortAttr {
            state: Decoded::from(4),
            phys_state: Decoded::from(5),
            active_mtu: Decoded::from(3),
            max_mtu: Decoded::from(9),
            gid_tbl_len: 1024,
            lid: 0,
            link_layer: Decoded::from(2),
        };
        assert_eq!(
            format!("{attr}"),
            "link_layer Ethernet state ACTIVE phys_state LinkUp active_mtu 1024 \
             max_mtu unknown(9) gid_tbl_len 1024 lid 0"
        );
    }
}

/// A GID: a port's 128-bit global address (`union ib_gid`), shown as IPv6.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// Whether this is the all-zero GID, which an unused table entry holds.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// The MAC a link-local GID (`fe80::/64` with a modified EUI-64 interface ID)
    /// was made from, as `rdma_get_ll_mac` computes it; `None` for other GIDs.
    pub fn link_local_mac(&self) -> Option<[u8; 6]> {
        let g = &self.0;
        let link_local = g[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0];
        if !link_local || g[11] != 0xff || g[12] != 0xfe {
            return None;
        }
        // EUI-64 flips the universal/local bit of the MAC's first byte.
        Some([g[8] ^ 0x02, g[9], g[10], g[13], g[14], g[15]])
    }
}

impl Gid {
    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`, what RoCE v2 puts in
    /// the table for each IPv4 address of the netdev); `None` for other GIDs.
    pub fn ipv4(&self) -> Option<core::net::Ipv4Addr> {
        let g = &self.0;
        (g[..10] == [0; 10] && g[10..12] == [0xff, 0xff])
            .then(|| core::net::Ipv4Addr::new(g[12], g[13], g[14], g[15]))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks_exact(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

/// One completion, as `struct ib_wc` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WorkCompletion {
    /// The status; a value this build does not know reads as `GeneralError`.
    pub status: WcStatus,
    /// What completed; meaningful only on success.
    pub opcode: Option<WcOpcode>,
    /// Bytes received, or read by an RDMA READ.
    pub byte_len: u32,
    /// Immediate data, in host order (`IB_WC_WITH_IMM`).
    pub imm: Option<u32>,
    /// The rkey the sender invalidated (`IB_WC_WITH_INVALIDATE`).
    pub invalidated_rkey: Option<u32>,
    /// The local QP the completion belongs to.
    pub qp_num: u32,
    /// The sending QP (UD receives).
    pub src_qp: u32,
    /// The sender's LID (UD receives on InfiniBand).
    pub slid: u16,
    /// A UD receive began with the sender's GRH (`IB_WC_GRH`): the first 40 bytes.
    pub grh: bool,
    /// The device's own error detail.
    pub vendor_err: u32,
}

impl WorkCompletion {
    /// A placeholder before any completion.
    pub const EMPTY: Self = Self {
        status: WcStatus::GeneralError,
        opcode: None,
        byte_len: 0,
        imm: None,
        invalidated_rkey: None,
        qp_num: 0,
        src_qp: 0,
        slid: 0,
        grh: false,
        vendor_err: 0,
    };
}

#[cfg(test)]
mod access_tests {
    use super::RemoteAccess;

    #[test]
    fn access_rights_combine_and_match_the_uverbs_bits() {
        let rw = RemoteAccess::READ | RemoteAccess::WRITE;
        assert!(rw.contains(RemoteAccess::READ) && rw.contains(RemoteAccess::WRITE));
        assert!(!rw.contains(RemoteAccess::ATOMIC));
        assert!(rw.contains(RemoteAccess::empty()));
        // IB_UVERBS_ACCESS_REMOTE_WRITE, _READ, _ATOMIC.
        assert_eq!(
            (
                RemoteAccess::WRITE.bits(),
                RemoteAccess::READ.bits(),
                RemoteAccess::ATOMIC.bits()
            ),
            (2, 4, 8)
        );
    }
}

#[cfg(test)]
mod gid_tests {
    use super::Gid;

    #[test]
    fn ipv4_mapped_gids_give_their_address() {
        let mut g = [0u8; 16];
        g[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 2, 15]);
        assert_eq!(Gid(g).ipv4(), Some(core::net::Ipv4Addr::new(10, 0, 2, 15)));
        g[9] = 1;
        assert_eq!(Gid(g).ipv4(), None);
        let link_local = [
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56,
        ];
        assert_eq!(Gid(link_local).ipv4(), None);
    }
}

#[cfg(test)]
mod completion_tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn completion_enums_keep_the_kernel_values() {
        assert_eq!(WcStatus::from_raw(5), Some(WcStatus::WrFlushError));
        assert_eq!(WcStatus::from_raw(21), Some(WcStatus::GeneralError));
        assert_eq!(WcStatus::from_raw(22), None);
        assert_eq!(
            WcStatus::RnrRetryExceededError.as_str(),
            "RNR retry counter exceeded"
        );
        assert_eq!(WcOpcode::from_raw(128), Some(WcOpcode::Recv));
        assert_eq!(WcOpcode::RegMr.to_raw(), 10);
    }

    #[test]
    fn gids_print_as_ipv6_groups() {
        let mut raw = [0u8; 16];
        raw[0] = 0xfe;
        raw[1] = 0x80;
        raw[15] = 1;
        assert_eq!(
            format!("{}", Gid(raw)),
            "fe80:0000:0000:0000:0000:0000:0000:0001"
        );
        assert!(Gid::default().is_zero());
        // rxe0's link-local GID in the VM, from MAC 52:54:00:12:34:56.
        let gid = Gid([
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56,
        ]);
        assert_eq!(
            gid.link_local_mac(),
            Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        let mut v4_mapped = [0u8; 16];
        v4_mapped[10] = 0xff;
        v4_mapped[11] = 0xff;
        v4_mapped[12..].copy_from_slice(&[10, 0, 2, 15]);
        assert_eq!(Gid(v4_mapped).link_local_mac(), None);
        // A universally administered MAC (bit 1 of the first byte clear) has the bit set
        // in its EUI-64; the flip clears it again.
        let universal = Gid([
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x1b, 0x21, 0xff, 0xfe, 0xaa, 0xbb, 0xcc,
        ]);
        assert_eq!(
            universal.link_local_mac(),
            Some([0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc])
        );
        // Each condition on its own: not fe80::/64, or no ff:fe in the middle.
        let mut other_prefix = universal;
        other_prefix.0[1] = 0x81;
        assert_eq!(other_prefix.link_local_mac(), None);
        for (byte, value) in [(11, 0xfe), (12, 0xff)] {
            let mut not_eui64 = universal;
            not_eui64.0[byte] = value;
            assert_eq!(not_eui64.link_local_mac(), None, "byte {byte}");
        }
    }
}

/// What a device can do: the part of `struct ib_device_attr` tilde reads (negative
/// counts from a driver read as 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceCaps {
    /// The vendor's IEEE OUI and part number.
    pub vendor_id: u32,
    /// See `vendor_id`.
    pub vendor_part_id: u32,
    /// QPs, and WRs per queue.
    pub max_qp: u32,
    /// See `max_qp`.
    pub max_qp_wr: u32,
    /// Gather entries per send WR, scatter entries per receive WR.
    pub max_send_sge: u32,
    /// See `max_send_sge`.
    pub max_recv_sge: u32,
    /// CQs, and entries per CQ.
    pub max_cq: u32,
    /// See `max_cq`.
    pub max_cqe: u32,
    /// Memory regions and protection domains.
    pub max_mr: u32,
    /// See `max_mr`.
    pub max_pd: u32,
    /// The largest memory region, in bytes.
    pub max_mr_size: u64,
    /// RDMA READs and atomics a QP accepts, and may have, outstanding.
    pub max_qp_rd_atom: u32,
    /// See `max_qp_rd_atom`.
    pub max_qp_init_rd_atom: u32,
    /// Pages one fast registration maps.
    pub max_fast_reg_page_list_len: u32,
    /// Whether the device does atomics at all (`atomic_cap` is not `IB_ATOMIC_NONE`).
    pub atomics: bool,
}

// What a consumer gives the verbs: the same types for the kernel and the host fabric.

/// What a connect or an accept offers (`struct rdma_conn_param`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnParam<'a> {
    /// Private data for the peer (at most 56 bytes on a connect, 196 on an accept, over
    /// the IB CM).
    pub private_data: &'a [u8],
    /// RDMA READs and atomics this side accepts outstanding.
    pub responder_resources: u8,
    /// RDMA READs and atomics this side will have outstanding.
    pub initiator_depth: u8,
    /// Transport retries (connect only).
    pub retry_count: u8,
    /// RNR retries; 7 retries forever.
    pub rnr_retry_count: u8,
}

/// How a CQ's completions are delivered to their handlers (`enum ib_poll_context`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollContext {
    /// By `CompletionQueue::poll`, in the caller's context (`IB_POLL_DIRECT`).
    Direct,
    /// By the IB core from softirq context (`IB_POLL_SOFTIRQ`): handlers must not sleep.
    Softirq,
    /// By the IB core from a workqueue (`IB_POLL_WORKQUEUE`).
    Workqueue,
}

/// The sizes a QP is created with (`struct ib_qp_cap`).
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    /// Send WRs outstanding at once.
    pub max_send_wr: u32,
    /// Receive WRs outstanding at once.
    pub max_recv_wr: u32,
    /// Gather entries per send WR.
    pub max_send_sge: u32,
    /// Scatter entries per receive WR.
    pub max_recv_sge: u32,
    /// Bytes of inline data per send WR.
    pub max_inline_data: u32,
}

/// RESET → INIT.
#[derive(Clone, Copy, Debug)]
pub struct InitAttr {
    /// The port the QP sends and receives on.
    pub port: u32,
    /// Index of the partition key in the port's P_Key table.
    pub pkey_index: u16,
    /// Remote access the QP grants (`IB_ACCESS_REMOTE_*`).
    pub remote_access: RemoteAccess,
}

bitflags::bitflags! {
    /// Remote access rights a QP or a memory region grants, combined with `|` (none:
    /// [`RemoteAccess::empty`]): the `IB_ACCESS_REMOTE_*` bits of `enum ib_access_flags`
    /// (values fixed by the uverbs ABI).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct RemoteAccess: u32 {
        /// RDMA WRITE (`IB_ACCESS_REMOTE_WRITE`).
        const WRITE = 1 << 1;
        /// RDMA READ (`IB_ACCESS_REMOTE_READ`).
        const READ = 1 << 2;
        /// Atomics (`IB_ACCESS_REMOTE_ATOMIC`).
        const ATOMIC = 1 << 3;
    }
}

/// A Global Route Header's worth of a path: the local GID entry it starts from, the peer's
/// GID and the hop limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grh {
    /// The local GID table entry the path starts from.
    pub sgid_index: u8,
    /// The peer's GID.
    pub dgid: Gid,
    /// The GRH hop limit.
    pub hop_limit: u8,
}

/// Where a peer is: the address vector of an RC path (INIT → RTR) or of a UD address
/// handle, `struct rdma_ah_attr`. Which kind a port takes follows its link layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressVector {
    /// InfiniBand: routed by LID inside the subnet, with a GRH only when one is wanted
    /// (the peer is in another subnet, or a UD receiver needs the sender's GID).
    Ib {
        /// The peer port's LID (plus path bits).
        dlid: u16,
        /// The service level.
        sl: u8,
        /// The GRH, if the packets carry one.
        grh: Option<Grh>,
    },
    /// RoCE: always a GRH, and the peer's Ethernet address. For kernel callers the IB core
    /// does not resolve the MAC (`_ib_modify_qp`: "Kernel users have to provide already
    /// resolved rdma_ah_attr's"); RDMA CM does, and tests take it from a link-local GID.
    Roce {
        /// The GRH.
        grh: Grh,
        /// The peer's Ethernet address.
        dmac: [u8; 6],
    },
}

impl AddressVector {
    /// The path from a port to itself (loopback), given the port's attributes and its GID
    /// entry 0; with a GRH if `grh` (RoCE always has one). `None` for a port whose link
    /// layer is unknown, a RoCE port whose GID 0 is not link-local (no MAC to take), or an
    /// InfiniBand port without a LID yet (no subnet manager has swept it).
    pub fn to_self(port: &PortAttr, gid: Gid, grh: bool) -> Option<Self> {
        let header = Grh {
            sgid_index: 0,
            dgid: gid,
            hop_limit: 64,
        };
        match port.link_layer {
            Decoded::Known(LinkLayer::InfiniBand) => Some(AddressVector::Ib {
                dlid: u16::try_from(port.lid).ok().filter(|&lid| lid != 0)?,
                sl: 0,
                grh: grh.then_some(header),
            }),
            Decoded::Known(LinkLayer::Ethernet) => Some(AddressVector::Roce {
                grh: header,
                dmac: gid.link_local_mac()?,
            }),
            _ => None,
        }
    }

    /// The GRH the vector carries, if any.
    pub fn grh(&self) -> Option<&Grh> {
        match self {
            AddressVector::Ib { grh, .. } => grh.as_ref(),
            AddressVector::Roce { grh, .. } => Some(grh),
        }
    }
}

/// INIT → RTR: where the peer is and how to receive from it.
#[derive(Clone, Copy, Debug)]
pub struct RtrAttr {
    /// The port of the path.
    pub port: u32,
    /// The path MTU; at most the port's active MTU.
    pub path_mtu: Mtu,
    /// The peer QP's number.
    pub dest_qp_num: u32,
    /// The first PSN expected from the peer (its `sq_psn`).
    pub rq_psn: u32,
    /// RDMA READs and atomics the peer may have outstanding here.
    pub max_dest_rd_atomic: u8,
    /// The RNR NAK timer code this QP sends when no receive is posted.
    pub min_rnr_timer: u8,
    /// Where the peer is.
    pub av: AddressVector,
}

/// RTR → RTS: how to send.
#[derive(Clone, Copy, Debug)]
pub struct RtsAttr {
    /// The first PSN this QP sends (the peer's `rq_psn`).
    pub sq_psn: u32,
    /// The ACK timeout code: 4.096 µs × 2^timeout.
    pub timeout: u8,
    /// Transport retries before a retry-exceeded error.
    pub retry_cnt: u8,
    /// RNR retries; 7 retries forever.
    pub rnr_retry: u8,
    /// RDMA READs and atomics this QP may have outstanding.
    pub max_rd_atomic: u8,
}

/// A send operation.
#[derive(Clone, Copy, Debug)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data (host order; sent big-endian).
    SendWithImm(u32),
    /// RDMA WRITE to the peer's region `rkey` at `remote_addr`.
    RdmaWrite {
        /// Address in the peer's region.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data (host order; sent big-endian): it also consumes a
    /// receive at the peer, which completes as `RecvRdmaWithImm` with `imm`.
    RdmaWriteWithImm {
        /// Address in the peer's region.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
        /// The immediate data.
        imm: u32,
    },
    /// RDMA READ from the peer's region `rkey` at `remote_addr` into the local buffer.
    RdmaRead {
        /// Address in the peer's region.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
    },
}

/// An 8-byte atomic on a peer's memory. The operands are in the CPU's byte order; the
/// order the peer's memory is read and written in is the device's, which the verbs leave
/// open (rxe uses the CPU's; a ConnectX-3 the wire's big-endian), and the old value comes
/// back as the memory's bytes were.
#[derive(Clone, Copy, Debug)]
pub enum AtomicOp {
    /// Writes `swap` if the memory holds `compare`.
    CompareAndSwap {
        /// Address in the peer's region, 8-byte aligned.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
        /// The value expected.
        compare: u64,
        /// The value written if it matches.
        swap: u64,
    },
    /// Adds `add` to the memory.
    FetchAndAdd {
        /// Address in the peer's region, 8-byte aligned.
        remote_addr: u64,
        /// The peer region's key.
        rkey: u32,
        /// The addend.
        add: u64,
    },
}
