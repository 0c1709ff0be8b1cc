//! One IPoIB interface (RFC 4391; connected mode, RFC 4755, in [`connected`]) as a
//! sans-IO state machine.
//!
//! Inputs are the calls below, each with the current time: the stack opening and
//! stopping the interface, port events, the SA's answers to joins and path queries,
//! the CM's answers to connections, the stack's multicast list, each packet the stack
//! transmits, each receive completion, and timeouts. Outputs are [`Action`]s handed to the caller's sink in the
//! order they must happen. The core never touches a device, a clock or an allocator;
//! packets are opaque `P` values it holds while their path or group is resolved and
//! hands back in a [`Action::Transmit`] or [`Action::Drop`].
//!
//! The interface's life:
//!
//! 1. It comes up when the stack has opened it, its port is active and its P_Key is in
//!    the port's table: it joins the broadcast group (as a full member, never creating
//!    it: the SM owns it, RFC 4391 §5). The join's answer gives the Q_Key every
//!    datagram carries and the MTU (the group's, less the 4-byte encapsulation
//!    header: 2044 on a 2K fabric); only then the carrier goes on, and the groups the
//!    stack listens to are joined with the broadcast group's parameters (RFC 4391
//!    §4.1). Failed joins are retried with a doubling backoff.
//! 2. A unicast packet goes to its destination's path: the 20-byte address names a
//!    neighbour, the neighbour a path (by destination GID); a path without an address
//!    handle is looked up in the SA, its packets queued (bounded) meanwhile and
//!    dropped, counted, when the lookup fails, times out or the queue is full. ARP
//!    resolves paths without a neighbour, as in ib_ipoib.
//! 3. A multicast packet goes to its group; a group the stack does not listen to is
//!    joined send-only on first use, packets queued until the join completes.
//! 4. Port events flush, as ib_ipoib's `ipoib_event` does: a port error, a port coming
//!    active or a LID change take the carrier down, forget every path and address
//!    handle, leave every group and come up again if the port is active (normal
//!    flush); a P_Key change does the same and waits for the P_Key (heavy); a client
//!    reregistration, an SM change or a GID change keep the carrier and the paths'
//!    address handles (marked stale, looked up again on next use) and rejoin every
//!    group (light).
//! 5. In connected mode (RFC 4755, [`Interface::set_mode`]), unicast IP to a neighbour
//!    whose address has the connected-mode flag goes over an RC connection per
//!    neighbour, made once its path is known; see [`connected`].

use core::time::Duration;

pub mod connected;

pub use connected::{ConnId, ConnectFailed, Mode, ModeError, RejectReason, CM_MTU};

use crate::sa::{AddressVector, JoinState, McMemberRecord, PathRecord};
use crate::table::{FifoPool, Slots};
use crate::wire::cm::CmDataRepr;
use crate::wire::encap::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_RARP};
use crate::wire::grh::{self, Grh, GrhRepr};
use crate::wire::mgid::{with_pkey, IpoibMgid};
use crate::wire::{Gid, HardwareAddress, Scope, WireError};

/// A point in time, in milliseconds from an origin the caller picks (the kernel glue
/// converts jiffies). Only differences matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + duration`, saturating.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(millis))
    }
}

/// Names one SA request (a join or a path query), so that an answer is matched to the
/// request that is still waiting for it and a late answer to an abandoned one is
/// ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueryId(pub u64);

/// Names an address handle: the caller creates it at `index` of its own table when told
/// to ([`Action::CreateAh`]) and sends with it until told to destroy it. The
/// generation tells a reused slot from its previous occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AhId {
    /// The slot, below the interface's `AHS`.
    pub index: usize,
    /// Which occupant of the slot.
    pub generation: u32,
}

/// The SA did not answer a request with a record (an error status, a timeout of its
/// own, a cancelled query).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryFailed;

/// What the interface is configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The number of the interface's UD QP (its address's QPN).
    pub qpn: u32,
    /// The partition; the full-membership bit is always set, as ib_ipoib does, so the
    /// broadcast group is the full members' one.
    pub pkey: u16,
    /// The scope of the broadcast group and of the groups mapped from IP.
    pub scope: Scope,
    /// How long a path query may go unanswered (ib_ipoib asks the SA for 1 s).
    pub path_query_timeout: Duration,
    /// Packets held per path while it is looked up (`IPOIB_MAX_PATH_REC_QUEUE`, 3).
    pub path_queue_limit: usize,
    /// Packets held per group while it is joined (`IPOIB_MAX_MCAST_QUEUE`, 64).
    pub group_queue_limit: usize,
    /// The first wait after a failed join; each further failure doubles it.
    pub join_backoff: Duration,
    /// The longest wait between join attempts (ib_ipoib: 16 s).
    pub join_backoff_max: Duration,
    /// A neighbour unused this long is forgotten (the ARP table's stale time, 60 s).
    pub neighbour_idle: Duration,
    /// Whether the caller can run connected mode (RC connections and a CM listener): the
    /// address then carries the connected-mode flag (RFC 4755 §4) and
    /// [`Interface::set_mode`] may choose it.
    pub connected_mode: bool,
}

impl Config {
    /// ib_ipoib's defaults for the QP `qpn` on partition `pkey`, link-local scope.
    pub fn new(qpn: u32, pkey: u16) -> Self {
        Config {
            qpn,
            pkey,
            scope: Scope::LINK_LOCAL,
            path_query_timeout: Duration::from_secs(1),
            path_queue_limit: 3,
            group_queue_limit: 64,
            join_backoff: Duration::from_secs(1),
            join_backoff_max: Duration::from_secs(16),
            neighbour_idle: Duration::from_secs(60),
            connected_mode: false,
        }
    }
}

/// The full-membership bit of a P_Key.
pub const PKEY_FULL_MEMBER: u16 = 0x8000;

/// What the port is, when it is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The port's LID.
    pub lid: u16,
    /// The port's GID (index 0): the interface's address carries it.
    pub gid: Gid,
    /// Whether the interface's P_Key is in the port's P_Key table.
    pub pkey_present: bool,
}

/// A port event (`ib_event` on the interface's port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// The port became active (`IB_EVENT_PORT_ACTIVE`), with what it now is.
    Active(PortInfo),
    /// The port went down (`IB_EVENT_PORT_ERR`).
    Error,
    /// The SM gave the port another LID (`IB_EVENT_LID_CHANGE`).
    LidChange {
        /// The new LID.
        lid: u16,
    },
    /// Another SM took over (`IB_EVENT_SM_CHANGE`).
    SmChange,
    /// The SM asks clients to register again: it forgot our memberships
    /// (`IB_EVENT_CLIENT_REREGISTER`).
    ClientReregister,
    /// The port's P_Key table changed (`IB_EVENT_PKEY_CHANGE`).
    PkeyChange {
        /// Whether the interface's P_Key is still in it.
        present: bool,
    },
    /// The port's GID changed (`IB_EVENT_GID_CHANGE`).
    GidChange {
        /// The new GID.
        gid: Gid,
    },
}

/// Why a packet was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The carrier is off (the broadcast group is not joined, or the port is down).
    CarrierOff,
    /// An EtherType IPoIB does not carry to a unicast destination (only IPv4, IPv6,
    /// ARP and RARP).
    UnsupportedEthertype,
    /// The destination's queue (or the interface's pool of held packets) is full.
    QueueFull,
    /// The path lookup failed.
    PathQueryFailed,
    /// The path lookup was not answered in time.
    PathQueryTimedOut,
    /// Every path slot holds a path being looked up or with packets waiting.
    PathTableFull,
    /// Every group slot is taken.
    GroupTableFull,
    /// Every address handle slot is taken.
    AhTableFull,
    /// The caller could not create the address handle.
    AhCreateFailed,
    /// The group's join failed.
    JoinFailed,
    /// A multicast packet before the broadcast group is joined.
    BroadcastNotJoined,
    /// The packet's group was left (the stack dropped it from its list).
    GroupLeft,
    /// A flush (port event, interface stopped, mode changed) discarded it.
    Flushed,
    /// Longer than its destination takes: `mtu` is the largest IP packet that goes (the
    /// caller answers with ICMP "fragmentation needed" / "packet too big", as
    /// ib_ipoib's `ipoib_cm_skb_too_long` does).
    TooBig {
        /// The largest packet the destination takes.
        mtu: u16,
    },
    /// The connected-mode connection could not be made.
    ConnectFailed,
    /// The connection went away while the packet waited for it.
    ConnectionLost,
}

impl DropReason {
    /// How many reasons there are.
    pub const COUNT: usize = 16;

    fn index(self) -> usize {
        match self {
            DropReason::CarrierOff => 0,
            DropReason::UnsupportedEthertype => 1,
            DropReason::QueueFull => 2,
            DropReason::PathQueryFailed => 3,
            DropReason::PathQueryTimedOut => 4,
            DropReason::PathTableFull => 5,
            DropReason::GroupTableFull => 6,
            DropReason::AhTableFull => 7,
            DropReason::AhCreateFailed => 8,
            DropReason::JoinFailed => 9,
            DropReason::BroadcastNotJoined => 10,
            DropReason::GroupLeft => 11,
            DropReason::Flushed => 12,
            DropReason::TooBig { .. } => 13,
            DropReason::ConnectFailed => 14,
            DropReason::ConnectionLost => 15,
        }
    }
}

/// What the caller must do, in the order given.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Join `mgid` (an SA MCMemberRecord set). Answer with
    /// [`Interface::join_complete`].
    Join {
        /// Names the answer.
        query: QueryId,
        /// The group.
        mgid: Gid,
        /// Full member or send-only.
        state: JoinState,
        /// The broadcast group's parameters (Q_Key, MTU, SL, rate, traffic class,
        /// flow label, hop limit), which every other group of the link must share
        /// (RFC 4391 §4.1); `None` when joining the broadcast group itself.
        broadcast: Option<McMemberRecord>,
    },
    /// Give up our membership of `mgid`: it was joined or a join is in flight (cancel
    /// it); `ib_sa_free_multicast` does both.
    Leave {
        /// The group.
        mgid: Gid,
    },
    /// Ask the SA for a path from `sgid` to `dgid` on `pkey`. Answer with
    /// [`Interface::path_complete`].
    SendPathQuery {
        /// Names the answer.
        query: QueryId,
        /// The destination.
        dgid: Gid,
        /// The port's GID.
        sgid: Gid,
        /// The partition.
        pkey: u16,
    },
    /// Cancel a path query (its answer, if one still comes, is ignored).
    CancelPathQuery {
        /// The query.
        query: QueryId,
    },
    /// Create an address handle at `ah.index` before the next action that names it.
    /// When that fails, free the packets of the `Transmit`s that name it in this call's
    /// actions, counted as dropped, and tell [`Interface::ah_create_failed`] once the
    /// call has returned.
    CreateAh {
        /// Where.
        ah: AhId,
        /// With what.
        av: AddressVector,
    },
    /// No new sends name `ah`; destroy it once the sends posted with it complete.
    DestroyAh {
        /// Which.
        ah: AhId,
    },
    /// Post a UD send of `packet` (encapsulation header first) with `ah` to `qpn`
    /// and `qkey`.
    Transmit {
        /// The address handle.
        ah: AhId,
        /// The destination QPN (0xffffff for a group).
        qpn: u32,
        /// The link's Q_Key (the broadcast group's).
        qkey: u32,
        /// The packet.
        packet: P,
    },
    /// Make the connected-mode connection `conn` (RFC 4755): an RC QP, and a CM REQ to
    /// `service_id` over `path` with `data` as private data. Answer with
    /// [`Interface::connect_complete`].
    Connect {
        /// Names the connection.
        conn: ConnId,
        /// The destination's GID.
        dgid: Gid,
        /// The path the REQ carries.
        path: PathRecord,
        /// The destination's service ID (`wire::cm::service_id` of its UD QPN).
        service_id: u64,
        /// Our private data: our UD QPN and receive MTU.
        data: CmDataRepr,
    },
    /// Post a send of `packet` (encapsulation header first) on the RC QP of `conn`.
    TransmitConnected {
        /// The connection.
        conn: ConnId,
        /// The packet.
        packet: P,
    },
    /// Tear down `conn` (DREQ, then destroy its QP once its sends complete).
    Disconnect {
        /// The connection.
        conn: ConnId,
    },
    /// Free `packet` unsent and count it in the interface's dropped packets.
    Drop {
        /// The packet.
        packet: P,
        /// Why.
        reason: DropReason,
    },
    /// Tell the stack the link is up.
    CarrierOn,
    /// Tell the stack the link is down.
    CarrierOff,
    /// Set the interface's MTU.
    SetMtu {
        /// Bytes of IP packet per datagram.
        mtu: u16,
    },
    /// Set the interface's link-layer address (the port's GID changed).
    SetHardwareAddress {
        /// The new address.
        address: HardwareAddress,
    },
}

/// What the interface counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets handed out in [`Action::Transmit`].
    pub transmitted: u64,
    /// Path queries sent.
    pub path_queries: u64,
    /// Path queries that failed or timed out.
    pub path_query_failures: u64,
    /// Joins sent.
    pub joins: u64,
    /// Joins that failed.
    pub join_failures: u64,
    /// SA answers that matched no waiting request (late, or after a flush).
    pub stale_answers: u64,
    /// Groups of the stack's list that found no free slot.
    pub groups_refused: u64,
    /// Connections asked for ([`Action::Connect`]).
    pub connects: u64,
    /// Connections that could not be made.
    pub connect_failures: u64,
    /// Frames accepted by [`Interface::receive`] and [`Interface::receive_connected`].
    pub received: u64,
    /// Frames refused as malformed.
    pub receive_malformed: u64,
    /// Our own multicast frames the fabric looped back.
    pub receive_looped_back: u64,
    dropped: [u64; DropReason::COUNT],
}

impl Counters {
    /// Nothing counted yet (`Default`, as a constant).
    pub const ZERO: Counters = Counters {
        transmitted: 0,
        path_queries: 0,
        path_query_failures: 0,
        joins: 0,
        join_failures: 0,
        stale_answers: 0,
        groups_refused: 0,
        connects: 0,
        connect_failures: 0,
        received: 0,
        receive_malformed: 0,
        receive_looped_back: 0,
        dropped: [0; DropReason::COUNT],
    };

    /// Packets dropped for `reason` (for `TooBig`, whatever the MTU).
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// Packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    fn count_drop(&mut self, reason: DropReason) {
        if let Some(count) = self.dropped.get_mut(reason.index()) {
            *count += 1;
        }
    }
}

/// What a receive completion says about its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveCompletion {
    /// The sender's QPN (`wc->src_qp`).
    pub src_qp: u32,
    /// The sender's LID (`wc->slid`).
    pub slid: u16,
    /// Whether the first 40 bytes hold a GRH (`IB_WC_GRH`); when not, they are an
    /// unused slot.
    pub grh: bool,
}

/// How a received frame was addressed (the skb's `pkt_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// To us (no GRH, or a unicast destination GID).
    Host,
    /// To a group other than the broadcast group.
    Multicast,
    /// To the broadcast group.
    Broadcast,
}

/// A received frame, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// The EtherType of the payload.
    pub ethertype: u16,
    /// How it was addressed.
    pub kind: PacketKind,
    /// The sender's address (QPN and GID), when the frame had a GRH to tell its GID.
    pub source: Option<HardwareAddress>,
    /// The IP or ARP packet.
    pub payload: &'a [u8],
}

/// Why a received frame is not handed to the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiveError {
    /// The bytes are not a GRH slot and an IPoIB frame.
    Malformed(WireError),
    /// Our own multicast, looped back by the fabric.
    LoopedBack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingQuery {
    id: QueryId,
    deadline: Instant,
}

/// A destination port, by GID.
struct Path {
    dgid: Gid,
    generation: u32,
    /// The address handle sends use; kept while the path is stale.
    ah: Option<AhId>,
    /// Whether the handle follows the SA's latest answer (false after a light flush).
    valid: bool,
    /// The SA's latest answer (connected mode's CM REQ carries it).
    record: Option<PathRecord>,
    query: Option<PendingQuery>,
    last_used: Instant,
}

/// A destination link-layer address and the path it goes by.
struct Neighbour {
    address: HardwareAddress,
    generation: u32,
    path: usize,
    path_generation: u32,
    last_used: Instant,
    /// Connected mode's connection to it.
    cm: connected::CmState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Membership {
    /// Not joined; joined when the interface (or, for other groups, the broadcast
    /// group) is up.
    Waiting,
    Joining(QueryId),
    Joined {
        ah: AhId,
    },
    /// A join failed; try again then.
    RetryAt(Instant),
}

struct Group {
    mgid: Gid,
    state: JoinState,
    membership: Membership,
    backoff: Duration,
    /// Marked while the stack's multicast list is applied.
    listed: bool,
    /// When the stack last sent to it: a send-only group unused for the neighbour idle
    /// time is left, as ib_ipoib expires its send-only joins with their neighbours.
    last_used: Instant,
}

struct AhEntry {
    av: AddressVector,
    users: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Path(usize),
    Group(usize),
    /// Waiting for the neighbour's connection.
    Neighbour(usize),
}

struct Queued<P> {
    owner: Owner,
    qpn: u32,
    /// The IP packet's length (a connection checks it against its MTU).
    len: usize,
    packet: P,
}

/// The slot of the broadcast group, which never leaves the group table.
const BROADCAST: usize = 0;

/// One IPoIB interface, in datagram or connected mode. `P` is the caller's packet (an
/// skb); the tables hold at most `PATHS` paths, `NEIGHBOURS` neighbours (each with at
/// most one connection in connected mode), `GROUPS` groups (the broadcast group
/// included), `AHS` address handles and `QUEUED` packets waiting for a path, a group
/// or a connection. With `AHS >= PATHS + GROUPS` the handle table never fills.
pub struct Interface<
    P,
    const PATHS: usize,
    const NEIGHBOURS: usize,
    const GROUPS: usize,
    const AHS: usize,
    const QUEUED: usize,
> {
    config: Config,
    mode: Mode,
    admin_up: bool,
    port: Option<PortInfo>,
    port_active: bool,
    /// The broadcast group's record, while it is joined.
    broadcast: Option<McMemberRecord>,
    /// The link's Q_Key, from the last broadcast join; kept over a light flush so
    /// unicast goes on while the groups are rejoined.
    qkey: Option<u32>,
    carrier: bool,
    mtu: Option<u16>,
    /// The MTU the administrator asked for (`ndo_change_mtu`); the interface's is the
    /// smaller of it and the broadcast group's.
    admin_mtu: u16,
    /// The broadcast group's MTU less the header, once joined.
    group_mtu: Option<u16>,
    next_query: u64,
    next_generation: u32,
    paths: Slots<Path, PATHS>,
    neighbours: Slots<Neighbour, NEIGHBOURS>,
    groups: Slots<Group, GROUPS>,
    ahs: Slots<AhEntry, AHS>,
    queue: FifoPool<Queued<P>, QUEUED>,
    counters: Counters,
}

impl<
        P,
        const PATHS: usize,
        const NEIGHBOURS: usize,
        const GROUPS: usize,
        const AHS: usize,
        const QUEUED: usize,
    > Interface<P, PATHS, NEIGHBOURS, GROUPS, AHS, QUEUED>
{
    /// The broadcast group needs a slot: an interface type without one does not build.
    const HAS_BROADCAST_SLOT: () = assert!(GROUPS > 0, "GROUPS must leave a slot for broadcast");

    /// A stopped interface whose port is not known yet.
    pub fn new(config: Config) -> Self {
        let mut interface = Self::empty();
        interface.configure(config);
        interface
    }

    /// An interface with nothing in it, not even its broadcast group, and a placeholder
    /// configuration: [`Interface::configure`] makes it usable. `const`, so that the
    /// kernel glue writes it into its allocation as a constant (about 48 KiB, too big
    /// for a kernel stack) and configures it there.
    pub const fn empty() -> Self {
        Interface {
            config: Config {
                qpn: 0,
                pkey: PKEY_FULL_MEMBER,
                scope: Scope::LINK_LOCAL,
                path_query_timeout: Duration::from_secs(1),
                path_queue_limit: 3,
                group_queue_limit: 64,
                join_backoff: Duration::from_secs(1),
                join_backoff_max: Duration::from_secs(16),
                neighbour_idle: Duration::from_secs(60),
                connected_mode: false,
            },
            mode: Mode::Datagram,
            admin_up: false,
            port: None,
            port_active: false,
            broadcast: None,
            qkey: None,
            carrier: false,
            mtu: None,
            admin_mtu: MAX_UD_MTU,
            group_mtu: None,
            next_query: 0,
            next_generation: 0,
            paths: Slots::new(),
            neighbours: Slots::new(),
            groups: Slots::new(),
            ahs: Slots::new(),
            queue: FifoPool::new(),
            counters: Counters::ZERO,
        }
    }

    /// Makes this a stopped interface with `config` whose port is not known yet, in
    /// place: every table emptied (packets held are dropped without actions, so call it
    /// on an empty or stopped interface), the broadcast group in its slot.
    pub fn configure(&mut self, mut config: Config) {
        #[allow(clippy::let_unit_value)]
        let () = Self::HAS_BROADCAST_SLOT;
        config.pkey |= PKEY_FULL_MEMBER;
        self.paths.clear();
        self.neighbours.clear();
        self.groups.clear();
        self.ahs.clear();
        self.queue.clear();
        let broadcast = Group {
            mgid: IpoibMgid::broadcast(config.pkey, config.scope).to_gid(),
            state: JoinState::FullMember,
            membership: Membership::Waiting,
            backoff: config.join_backoff,
            listed: true,
            last_used: Instant::default(),
        };
        // Slot 0 of an empty table with at least one slot.
        let _ = self.groups.insert(broadcast);
        self.config = config;
        self.mode = Mode::Datagram;
        self.admin_up = false;
        self.port = None;
        self.port_active = false;
        self.broadcast = None;
        self.qkey = None;
        self.carrier = false;
        self.mtu = None;
        self.admin_mtu = MAX_UD_MTU;
        self.group_mtu = None;
        self.next_query = 0;
        self.next_generation = 0;
        self.counters = Counters::ZERO;
    }

    /// The configuration (P_Key with its full-membership bit).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the carrier is on.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// The MTU, once the broadcast group was joined.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// The link's Q_Key, once the broadcast group was joined.
    pub fn qkey(&self) -> Option<u32> {
        self.qkey
    }

    /// The interface's link-layer address, once the port's GID is known.
    pub fn hardware_address(&self) -> Option<HardwareAddress> {
        let flags = if self.config.connected_mode {
            HardwareAddress::FLAG_CONNECTED_MODE
        } else {
            0
        };
        self.port
            .map(|port| HardwareAddress::new(flags, self.config.qpn, port.gid))
    }

    /// The link's broadcast address (`dev->broadcast`).
    pub fn broadcast_address(&self) -> HardwareAddress {
        HardwareAddress::multicast(
            IpoibMgid::broadcast(self.config.pkey, self.config.scope).to_gid(),
        )
    }

    /// What was counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Packets held for paths and groups.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Address handles alive (created and not yet destroyed).
    pub fn address_handles(&self) -> usize {
        self.ahs.len()
    }

    /// Paths known.
    pub fn paths(&self) -> usize {
        self.paths.len()
    }

    /// Neighbours known.
    pub fn neighbours(&self) -> usize {
        self.neighbours.len()
    }

    /// Whether `mgid` is joined.
    pub fn is_joined(&self, mgid: &Gid) -> bool {
        self.groups.iter().any(|(_, group)| {
            group.mgid == *mgid && matches!(group.membership, Membership::Joined { .. })
        })
    }

    /// The administrator asks for `mtu` (`ndo_change_mtu`). In datagram mode it is
    /// refused above what a UD datagram can carry on any fabric (4092), and the
    /// interface takes the smaller of it and the broadcast group's MTU, now if the
    /// group is joined, else when it is. In connected mode it is refused above
    /// [`CM_MTU`] and taken as it is (multicast above the group's MTU is then dropped
    /// as too big).
    pub fn set_mtu(
        &mut self,
        mtu: u16,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) -> Result<(), MtuTooLarge> {
        let max = match self.mode {
            Mode::Datagram => MAX_UD_MTU,
            Mode::Connected => CM_MTU,
        };
        if mtu > max {
            return Err(MtuTooLarge { max });
        }
        self.admin_mtu = mtu;
        self.apply_mtu(out);
        Ok(())
    }

    fn apply_mtu(&mut self, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        let mtu = match self.mode {
            Mode::Datagram => match self.group_mtu {
                Some(group_mtu) => group_mtu.min(self.admin_mtu),
                None => return,
            },
            Mode::Connected => self.admin_mtu,
        };
        if self.mtu != Some(mtu) {
            self.mtu = Some(mtu);
            out(Action::SetMtu { mtu });
        }
    }

    /// The stack opened the interface (`ndo_open`).
    pub fn open(&mut self, now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        self.admin_up = true;
        self.bring_up(now, out);
    }

    /// The stack stopped the interface (`ndo_stop`): everything is let go.
    pub fn stop(&mut self, now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        self.admin_up = false;
        self.flush_normal(now, out);
    }

    /// A port event.
    pub fn port_event(
        &mut self,
        now: Instant,
        event: PortEvent,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        match event {
            PortEvent::Active(info) => {
                let gid_changed = self.port.map(|port| port.gid) != Some(info.gid);
                self.port = Some(info);
                self.port_active = true;
                if gid_changed {
                    self.announce_address(out);
                }
                self.flush_normal(now, out);
                self.bring_up(now, out);
            }
            PortEvent::Error => {
                self.port_active = false;
                self.flush_normal(now, out);
            }
            PortEvent::LidChange { lid } => {
                if let Some(port) = self.port.as_mut() {
                    port.lid = lid;
                }
                self.flush_normal(now, out);
                self.bring_up(now, out);
            }
            PortEvent::SmChange | PortEvent::ClientReregister => self.flush_light(now, out),
            PortEvent::PkeyChange { present } => {
                if let Some(port) = self.port.as_mut() {
                    port.pkey_present = present;
                }
                self.flush_normal(now, out);
                self.bring_up(now, out);
            }
            PortEvent::GidChange { gid } => {
                if let Some(port) = self.port.as_mut() {
                    port.gid = gid;
                }
                self.announce_address(out);
                self.flush_light(now, out);
            }
        }
    }

    /// The SA answered the join `query`.
    pub fn join_complete(
        &mut self,
        now: Instant,
        query: QueryId,
        result: Result<McMemberRecord, QueryFailed>,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(index) = self
            .groups
            .find(|group| group.membership == Membership::Joining(query))
        else {
            self.counters.stale_answers += 1;
            return;
        };
        match result {
            Ok(member) => self.joined(now, index, member, out),
            Err(QueryFailed) => self.join_failed(now, index, DropReason::JoinFailed, out),
        }
    }

    /// The SA answered the path query `query`.
    pub fn path_complete(
        &mut self,
        _now: Instant,
        query: QueryId,
        result: Result<PathRecord, QueryFailed>,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(index) = self
            .paths
            .find(|path| path.query.is_some_and(|pending| pending.id == query))
        else {
            self.counters.stale_answers += 1;
            return;
        };
        let Some(path) = self.paths.get_mut(index) else {
            return;
        };
        path.query = None;
        let dgid = path.dgid;
        let old = path.ah;
        let record = match result {
            Ok(record) => record,
            Err(QueryFailed) => {
                self.counters.path_query_failures += 1;
                self.drop_path_queued(index, DropReason::PathQueryFailed, out);
                return;
            }
        };
        let av = AddressVector::from_path(dgid, &record);
        let Some(ah) = self.acquire_ah(av, out) else {
            self.drop_path_queued(index, DropReason::AhTableFull, out);
            return;
        };
        if let Some(path) = self.paths.get_mut(index) {
            path.ah = Some(ah);
            path.valid = true;
            path.record = Some(record);
        }
        if let Some(old) = old {
            self.release_ah(old, out);
        }
        self.send_queued(Owner::Path(index), ah, out);
        self.connect_waiting_neighbours(index, out);
    }

    /// The caller could not create the address handle `ah`: whatever uses it looks
    /// its destination up again (paths) or rejoins (groups).
    pub fn ah_create_failed(
        &mut self,
        now: Instant,
        ah: AhId,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let alive = self
            .ahs
            .get(ah.index)
            .is_some_and(|entry| entry.generation == ah.generation);
        if !alive {
            return;
        }
        // Gone without a DestroyAh: there is nothing to destroy.
        self.ahs.remove(ah.index);
        // Slot by slot, without a list of what to revisit: the kernel's stack frames
        // stay small whatever the table sizes.
        for index in 0..PATHS {
            let Some(path) = self.paths.get_mut(index).filter(|p| p.ah == Some(ah)) else {
                continue;
            };
            path.ah = None;
            path.valid = false;
            self.drop_queued(Owner::Path(index), DropReason::AhCreateFailed, out);
        }
        for index in 0..GROUPS {
            let Some(group) = self
                .groups
                .get_mut(index)
                .filter(|g| g.membership == (Membership::Joined { ah }))
            else {
                continue;
            };
            // The membership stands without a handle to send with: leave it and join
            // again after the backoff.
            group.membership = Membership::Waiting;
            out(Action::Leave { mgid: group.mgid });
            self.join_failed(now, index, DropReason::AhCreateFailed, out);
        }
    }

    /// The stack's multicast list (`ndo_set_rx_mode`): groups not in it any more are
    /// left, new ones joined (after the broadcast group). Addresses that are not
    /// multicast, and the broadcast group, are skipped.
    pub fn set_multicast_list(
        &mut self,
        now: Instant,
        list: impl IntoIterator<Item = Gid>,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        for (index, group) in self.groups.iter_mut() {
            group.listed = index == BROADCAST || group.state == JoinState::SendOnly;
        }
        for mgid in list {
            if !mgid.is_multicast() {
                continue;
            }
            match self.groups.find(|group| group.mgid == mgid) {
                Some(BROADCAST) => {}
                Some(index) => {
                    let Some(group) = self.groups.get_mut(index) else {
                        continue;
                    };
                    group.listed = true;
                    if group.state == JoinState::SendOnly {
                        // Listening needs a full membership: leave the send-only one
                        // and join again, keeping the packets held for the group.
                        group.state = JoinState::FullMember;
                        self.leave(index, out);
                        self.start_join(now, index, out);
                    }
                }
                None => {
                    let group = Group {
                        mgid,
                        state: JoinState::FullMember,
                        membership: Membership::Waiting,
                        backoff: self.config.join_backoff,
                        listed: true,
                        last_used: now,
                    };
                    match self.groups.insert(group) {
                        Ok(index) => self.start_join(now, index, out),
                        Err(_) => self.counters.groups_refused += 1,
                    }
                }
            }
        }
        for index in 0..GROUPS {
            if self.groups.get(index).is_some_and(|group| !group.listed) {
                self.remove_group(index, DropReason::GroupLeft, out);
            }
        }
    }

    /// The stack transmits `packet`, `len` bytes of IP or ARP after its encapsulation
    /// header (which carries `ethertype`), to `destination` (`ndo_start_xmit`, after
    /// the pseudo-header is pulled).
    pub fn transmit(
        &mut self,
        now: Instant,
        destination: HardwareAddress,
        ethertype: u16,
        len: usize,
        packet: P,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(qkey) = self.qkey.filter(|_| self.carrier) else {
            return self.drop_packet(packet, DropReason::CarrierOff, out);
        };
        let ud_mtu = self.group_mtu.unwrap_or(0);
        let fits_ud = len <= usize::from(ud_mtu);
        if destination.is_multicast() {
            if !fits_ud {
                return self.drop_packet(packet, DropReason::TooBig { mtu: ud_mtu }, out);
            }
            return self.transmit_multicast(now, destination, qkey, len, packet, out);
        }
        let route = match ethertype {
            ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => self.neighbour_path(now, destination, out),
            // ib_ipoib resolves the path of unicast ARP without making a neighbour.
            ETHERTYPE_ARP | ETHERTYPE_RARP => self
                .find_or_add_path(now, destination.gid(), out)
                .map(|path| (None, path)),
            _ => Err(DropReason::UnsupportedEthertype),
        };
        let (neighbour, path) = match route {
            Ok(route) => route,
            Err(reason) => return self.drop_packet(packet, reason, out),
        };
        let connected = self.mode == Mode::Connected && destination.connected_mode();
        match neighbour {
            Some(neighbour) if connected => {
                self.send_connected(now, neighbour, path, len, packet, out)
            }
            _ if !fits_ud => self.drop_packet(packet, DropReason::TooBig { mtu: ud_mtu }, out),
            _ => self.send_on_path(now, path, destination.qpn(), qkey, len, packet, out),
        }
    }

    /// Classifies a received buffer: the 40-byte GRH slot, then the IPoIB frame.
    pub fn receive<'a>(
        &mut self,
        completion: ReceiveCompletion,
        buffer: &'a [u8],
    ) -> Result<Received<'a>, ReceiveError> {
        let result = self.classify(completion, buffer);
        match result {
            Ok(_) => self.counters.received += 1,
            Err(ReceiveError::LoopedBack) => self.counters.receive_looped_back += 1,
            Err(ReceiveError::Malformed(_)) => self.counters.receive_malformed += 1,
        }
        result
    }

    fn classify<'a>(
        &self,
        completion: ReceiveCompletion,
        buffer: &'a [u8],
    ) -> Result<Received<'a>, ReceiveError> {
        let slot = Grh::new_checked(buffer).map_err(ReceiveError::Malformed)?;
        let grh = if completion.grh {
            Some(GrhRepr::parse(&slot).map_err(ReceiveError::Malformed)?)
        } else {
            None
        };
        let after_grh = buffer.get(grh::HEADER_LEN..).unwrap_or(&[]);
        let frame = encap::Frame::new_checked(after_grh).map_err(ReceiveError::Malformed)?;
        if let Some(port) = self.port {
            let from_us = completion.slid == port.lid && completion.src_qp == self.config.qpn;
            // Same LID and QPN from another subnet's port (through a router) is not us.
            let other_port =
                grh.is_some_and(|grh| grh.sgid.interface_id() != port.gid.interface_id());
            if from_us && !other_port {
                return Err(ReceiveError::LoopedBack);
            }
        }
        let broadcast = self.broadcast_address().gid();
        let kind = match grh {
            Some(grh) if grh.dgid == broadcast => PacketKind::Broadcast,
            Some(grh) if grh.dgid.is_multicast() => PacketKind::Multicast,
            _ => PacketKind::Host,
        };
        Ok(Received {
            ethertype: frame.ethertype(),
            kind,
            source: grh.map(|grh| HardwareAddress::new(0, completion.src_qp, grh.sgid)),
            payload: buffer.get(RECEIVE_HEADROOM..).unwrap_or(&[]),
        })
    }

    /// When [`Interface::handle_timeout`] next has work (a path query's deadline, a
    /// join to retry, a neighbour to forget, a send-only group to leave).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queries = self
            .paths
            .iter()
            .filter_map(|(_, path)| path.query.map(|pending| pending.deadline));
        let retries = self
            .groups
            .iter()
            .filter_map(|(_, group)| match group.membership {
                Membership::RetryAt(at) => Some(at),
                _ => None,
            });
        let idle = self.config.neighbour_idle;
        let neighbours = self
            .neighbours
            .iter()
            .map(|(_, neighbour)| neighbour.last_used.saturating_add(idle));
        let send_only = self
            .groups
            .iter()
            .filter(|(_, group)| group.state == JoinState::SendOnly)
            .map(|(_, group)| group.last_used.saturating_add(idle));
        queries
            .chain(retries)
            .chain(neighbours)
            .chain(send_only)
            .min()
    }

    /// Time passed: path queries past their deadline fail, joins whose backoff ended
    /// are tried again, idle neighbours are forgotten and idle send-only groups left.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        // Slot by slot, without a list of what to revisit: the kernel's stack frames
        // stay small whatever the table sizes.
        for index in 0..PATHS {
            let expired = self.paths.get_mut(index).and_then(|path| {
                let pending = path.query.filter(|pending| pending.deadline <= now)?;
                path.query = None;
                Some(pending)
            });
            if let Some(pending) = expired {
                out(Action::CancelPathQuery { query: pending.id });
                self.counters.path_query_failures += 1;
                self.drop_path_queued(index, DropReason::PathQueryTimedOut, out);
            }
        }
        for index in 0..GROUPS {
            let due = self.groups.get_mut(index).is_some_and(|group| {
                let due = matches!(group.membership, Membership::RetryAt(at) if at <= now);
                if due {
                    group.membership = Membership::Waiting;
                }
                due
            });
            if due {
                self.start_join(now, index, out);
            }
        }
        let idle = self.config.neighbour_idle;
        for index in 0..NEIGHBOURS {
            let stale = self
                .neighbours
                .get(index)
                .is_some_and(|n| n.last_used.saturating_add(idle) <= now);
            if stale {
                self.remove_neighbour(index, DropReason::Flushed, out);
            }
        }
        for index in 0..GROUPS {
            let unused = self.groups.get(index).is_some_and(|group| {
                group.state == JoinState::SendOnly && group.last_used.saturating_add(idle) <= now
            });
            if unused {
                self.remove_group(index, DropReason::GroupLeft, out);
            }
        }
    }

    // --- bring-up and flushes --------------------------------------------------------

    /// Joins the broadcast group when the stack wants the interface up, the port is
    /// active and our P_Key is in its table (`ipoib_ib_dev_up`).
    fn bring_up(&mut self, now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        if !self.may_join_broadcast() {
            return;
        }
        if self
            .groups
            .get(BROADCAST)
            .is_some_and(|group| group.membership == Membership::Waiting)
        {
            self.start_join(now, BROADCAST, out);
        }
    }

    fn may_join_broadcast(&self) -> bool {
        self.admin_up && self.port_active && self.port.is_some_and(|port| port.pkey_present)
    }

    fn announce_address(&self, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        if let Some(address) = self.hardware_address() {
            out(Action::SetHardwareAddress { address });
        }
    }

    /// `ipoib_ib_dev_down`: carrier off, every path, neighbour and address handle
    /// forgotten, every group left (send-only ones forgotten), held packets dropped.
    fn flush_normal(&mut self, _now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        if self.carrier {
            self.carrier = false;
            out(Action::CarrierOff);
        }
        for index in 0..PATHS {
            self.remove_path(index, DropReason::Flushed, out);
        }
        for index in 0..NEIGHBOURS {
            self.remove_neighbour(index, DropReason::Flushed, out);
        }
        self.flush_groups(out);
        self.broadcast = None;
        self.qkey = None;
    }

    /// The light flush: paths go stale (their handles still carry unicast until the SA
    /// answers again), every group is left and rejoined, broadcast first.
    fn flush_light(&mut self, now: Instant, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        for (_, path) in self.paths.iter_mut() {
            path.valid = false;
        }
        self.flush_groups(out);
        self.broadcast = None;
        self.bring_up(now, out);
    }

    /// Leaves every group: send-only groups are forgotten with their packets, listened
    /// groups wait for the broadcast group to rejoin, keeping theirs.
    fn flush_groups(&mut self, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        for index in 0..GROUPS {
            let Some(group) = self.groups.get(index) else {
                continue;
            };
            if group.state == JoinState::SendOnly {
                self.remove_group(index, DropReason::Flushed, out);
            } else {
                self.leave(index, out);
                if let Some(group) = self.groups.get_mut(index) {
                    group.membership = Membership::Waiting;
                    group.backoff = self.config.join_backoff;
                }
                if !self.may_join_broadcast() {
                    self.drop_queued(Owner::Group(index), DropReason::Flushed, out);
                }
            }
        }
    }

    // --- groups ------------------------------------------------------------------------

    /// Sends a join for the group at `index`, if it may be joined now: the broadcast
    /// group when the interface may come up, the others once the broadcast group is
    /// joined (they copy its parameters).
    fn start_join(
        &mut self,
        _now: Instant,
        index: usize,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let allowed = if index == BROADCAST {
            self.may_join_broadcast()
        } else {
            self.broadcast.is_some()
        };
        if !allowed {
            return;
        }
        self.next_query = self.next_query.wrapping_add(1);
        let query = QueryId(self.next_query);
        let broadcast = if index == BROADCAST {
            None
        } else {
            self.broadcast
        };
        let Some(group) = self.groups.get_mut(index) else {
            return;
        };
        group.membership = Membership::Joining(query);
        self.counters.joins += 1;
        out(Action::Join {
            query,
            mgid: group.mgid,
            state: group.state,
            broadcast,
        });
    }

    fn joined(
        &mut self,
        now: Instant,
        index: usize,
        member: McMemberRecord,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(mgid) = self.groups.get(index).map(|group| group.mgid) else {
            return;
        };
        let Some(ah) = self.acquire_ah(AddressVector::from_group(mgid, &member), out) else {
            // Joined but unable to send to it: give the membership back and retry.
            out(Action::Leave { mgid });
            return self.join_failed(now, index, DropReason::AhTableFull, out);
        };
        if let Some(group) = self.groups.get_mut(index) {
            group.membership = Membership::Joined { ah };
            group.backoff = self.config.join_backoff;
        }
        if index == BROADCAST {
            self.broadcast = Some(member);
            self.qkey = Some(member.qkey);
            // RFC 4391 §7: the link MTU is the broadcast group's, less the
            // encapsulation header.
            self.group_mtu = Some(member.mtu.bytes() - encap::HEADER_LEN as u16);
            self.apply_mtu(out);
            if !self.carrier {
                self.carrier = true;
                out(Action::CarrierOn);
            }
        }
        self.send_queued(Owner::Group(index), ah, out);
        if index == BROADCAST {
            for other in 1..GROUPS {
                let waiting = self
                    .groups
                    .get(other)
                    .is_some_and(|group| group.membership == Membership::Waiting);
                if waiting {
                    self.start_join(now, other, out);
                }
            }
        }
    }

    /// A join failed (or its handle could not be made): the group's packets are
    /// dropped; a send-only group is forgotten, a listened one retried after its
    /// backoff, which doubles up to the maximum.
    fn join_failed(
        &mut self,
        now: Instant,
        index: usize,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        self.counters.join_failures += 1;
        self.drop_queued(Owner::Group(index), reason, out);
        let max = self.config.join_backoff_max;
        let Some(group) = self.groups.get_mut(index) else {
            return;
        };
        if group.state == JoinState::SendOnly {
            self.groups.remove(index);
            return;
        }
        group.membership = Membership::RetryAt(now.saturating_add(group.backoff));
        group.backoff = group.backoff.checked_mul(2).unwrap_or(max).min(max);
    }

    /// Gives up the membership of the group at `index` (joined, or a join in flight).
    fn leave(&mut self, index: usize, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        let Some(group) = self.groups.get_mut(index) else {
            return;
        };
        let membership = group.membership;
        group.membership = Membership::Waiting;
        match membership {
            Membership::Joining(_) => out(Action::Leave { mgid: group.mgid }),
            Membership::Joined { ah } => {
                out(Action::Leave { mgid: group.mgid });
                self.release_ah(ah, out);
            }
            Membership::Waiting | Membership::RetryAt(_) => {}
        }
    }

    fn remove_group(
        &mut self,
        index: usize,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        if index == BROADCAST {
            return;
        }
        self.leave(index, out);
        self.drop_queued(Owner::Group(index), reason, out);
        self.groups.remove(index);
    }

    fn transmit_multicast(
        &mut self,
        now: Instant,
        destination: HardwareAddress,
        qkey: u32,
        len: usize,
        packet: P,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        // ib_ipoib writes the interface's P_Key into every multicast destination.
        let mgid = with_pkey(destination.gid(), self.config.pkey);
        let index = match self.groups.find(|group| group.mgid == mgid) {
            Some(index) => index,
            None => {
                if self.broadcast.is_none() {
                    return self.drop_packet(packet, DropReason::BroadcastNotJoined, out);
                }
                let group = Group {
                    mgid,
                    state: JoinState::SendOnly,
                    membership: Membership::Waiting,
                    backoff: self.config.join_backoff,
                    listed: true,
                    last_used: now,
                };
                match self.groups.insert(group) {
                    Ok(index) => {
                        self.start_join(now, index, out);
                        index
                    }
                    Err(_) => return self.drop_packet(packet, DropReason::GroupTableFull, out),
                }
            }
        };
        let Some(group) = self.groups.get_mut(index) else {
            return self.drop_packet(packet, DropReason::GroupTableFull, out);
        };
        group.last_used = now;
        let membership = Some(group.membership);
        if let Some(Membership::Joined { ah }) = membership {
            self.counters.transmitted += 1;
            return out(Action::Transmit {
                ah,
                qpn: HardwareAddress::MULTICAST_QPN,
                qkey,
                packet,
            });
        }
        let limit = self.config.group_queue_limit;
        self.hold(
            Owner::Group(index),
            HardwareAddress::MULTICAST_QPN,
            len,
            limit,
            packet,
            out,
        );
    }

    // --- paths and neighbours ------------------------------------------------------------

    /// The neighbour named by `destination` and its path, both made when new; the
    /// neighbour is `None` only when the table has no slot at all.
    fn neighbour_path(
        &mut self,
        now: Instant,
        destination: HardwareAddress,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) -> Result<(Option<usize>, usize), DropReason> {
        if let Some(index) = self.neighbours.find(|n| n.address == destination) {
            let live = self.neighbours.get(index).and_then(|neighbour| {
                self.paths
                    .get(neighbour.path)
                    .filter(|path| path.generation == neighbour.path_generation)
                    .map(|_| neighbour.path)
            });
            if let Some(path) = live {
                if let Some(neighbour) = self.neighbours.get_mut(index) {
                    neighbour.last_used = now;
                }
                if let Some(path) = self.paths.get_mut(path) {
                    path.last_used = now;
                }
                return Ok((Some(index), path));
            }
            self.remove_neighbour(index, DropReason::Flushed, out);
        }
        let path = self.find_or_add_path(now, destination.gid(), out)?;
        let path_generation = self.paths.get(path).map_or(0, |path| path.generation);
        self.next_generation = self.next_generation.wrapping_add(1);
        let neighbour = Neighbour {
            address: destination,
            generation: self.next_generation,
            path,
            path_generation,
            last_used: now,
            cm: connected::CmState::Idle,
        };
        match self.neighbours.insert(neighbour) {
            Ok(index) => Ok((Some(index), path)),
            Err(neighbour) => {
                // Full: the least recently used neighbour makes room (its connection
                // is torn down and its held packets dropped; the next packet to it
                // rebuilds both).
                let oldest = self
                    .neighbours
                    .iter()
                    .min_by_key(|(_, n)| n.last_used)
                    .map(|(index, _)| index);
                let Some(oldest) = oldest else {
                    return Ok((None, path));
                };
                self.remove_neighbour(oldest, DropReason::Flushed, out);
                Ok((self.neighbours.insert(neighbour).ok(), path))
            }
        }
    }

    /// Forgets the neighbour at `index`: its connection torn down, its held packets
    /// dropped.
    fn remove_neighbour(
        &mut self,
        index: usize,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(neighbour) = self.neighbours.remove(index) else {
            return;
        };
        if neighbour.cm != connected::CmState::Idle {
            out(Action::Disconnect {
                conn: ConnId {
                    index,
                    generation: neighbour.generation,
                },
            });
        }
        self.drop_queued(Owner::Neighbour(index), reason, out);
    }

    fn find_or_add_path(
        &mut self,
        now: Instant,
        dgid: Gid,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) -> Result<usize, DropReason> {
        if let Some(index) = self.paths.find(|path| path.dgid == dgid) {
            return Ok(index);
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let path = Path {
            dgid,
            generation: self.next_generation,
            ah: None,
            valid: false,
            record: None,
            query: None,
            last_used: now,
        };
        match self.paths.insert(path) {
            Ok(index) => Ok(index),
            Err(path) => {
                // Full: evict the least recently used path that is not being looked up
                // and holds no packets.
                let victim = self
                    .paths
                    .iter()
                    .filter(|(index, path)| {
                        path.query.is_none()
                            && self.queue.count(|q| q.owner == Owner::Path(*index)) == 0
                    })
                    .min_by_key(|(_, path)| path.last_used)
                    .map(|(index, _)| index);
                let Some(victim) = victim else {
                    return Err(DropReason::PathTableFull);
                };
                self.remove_path(victim, DropReason::Flushed, out);
                self.paths
                    .insert(path)
                    .map_err(|_| DropReason::PathTableFull)
            }
        }
    }

    /// Forgets the path at `index`: its query cancelled, its handle released, its
    /// packets dropped, the neighbours going by it forgotten.
    fn remove_path(
        &mut self,
        index: usize,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(path) = self.paths.remove(index) else {
            return;
        };
        if let Some(pending) = path.query {
            out(Action::CancelPathQuery { query: pending.id });
        }
        self.drop_queued(Owner::Path(index), reason, out);
        if let Some(ah) = path.ah {
            self.release_ah(ah, out);
        }
        for slot in 0..NEIGHBOURS {
            let goes_by = self
                .neighbours
                .get(slot)
                .is_some_and(|n| n.path == index && n.path_generation == path.generation);
            if goes_by {
                self.remove_neighbour(slot, reason, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_on_path(
        &mut self,
        now: Instant,
        index: usize,
        qpn: u32,
        qkey: u32,
        len: usize,
        packet: P,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(path) = self.paths.get_mut(index) else {
            return self.drop_packet(packet, DropReason::PathTableFull, out);
        };
        path.last_used = now;
        let needs_query = !path.valid && path.query.is_none();
        let ah = path.ah;
        if needs_query {
            self.start_path_query(now, index, out);
        }
        match ah {
            // A stale handle still carries the packet while the SA is asked again.
            Some(ah) => {
                self.counters.transmitted += 1;
                out(Action::Transmit {
                    ah,
                    qpn,
                    qkey,
                    packet,
                });
            }
            None => {
                let limit = self.config.path_queue_limit;
                self.hold(Owner::Path(index), qpn, len, limit, packet, out);
            }
        }
    }

    fn start_path_query(
        &mut self,
        now: Instant,
        index: usize,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let Some(sgid) = self.port.map(|port| port.gid) else {
            return;
        };
        self.next_query = self.next_query.wrapping_add(1);
        let query = QueryId(self.next_query);
        let deadline = now.saturating_add(self.config.path_query_timeout);
        let Some(path) = self.paths.get_mut(index) else {
            return;
        };
        path.query = Some(PendingQuery {
            id: query,
            deadline,
        });
        self.counters.path_queries += 1;
        out(Action::SendPathQuery {
            query,
            dgid: path.dgid,
            sgid,
            pkey: self.config.pkey,
        });
    }

    // --- held packets and address handles ------------------------------------------------

    /// Holds `packet` for `owner`, unless the owner already holds `limit` or the pool is
    /// full.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        owner: Owner,
        qpn: u32,
        len: usize,
        limit: usize,
        packet: P,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        if self.queue.count(|queued| queued.owner == owner) >= limit {
            return self.drop_packet(packet, DropReason::QueueFull, out);
        }
        let queued = Queued {
            owner,
            qpn,
            len,
            packet,
        };
        if let Err(queued) = self.queue.push(queued) {
            self.drop_packet(queued.packet, DropReason::QueueFull, out);
        }
    }

    fn send_queued(&mut self, owner: Owner, ah: AhId, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        let Some(qkey) = self.qkey else {
            return self.drop_queued(owner, DropReason::CarrierOff, out);
        };
        let mut sent = 0;
        self.queue.take_where(
            |queued| queued.owner == owner,
            |queued| {
                sent += 1;
                out(Action::Transmit {
                    ah,
                    qpn: queued.qpn,
                    qkey,
                    packet: queued.packet,
                });
            },
        );
        self.counters.transmitted += sent;
    }

    fn drop_queued(
        &mut self,
        owner: Owner,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        let counters = &mut self.counters;
        self.queue.take_where(
            |queued| queued.owner == owner,
            |queued| {
                counters.count_drop(reason);
                out(Action::Drop {
                    packet: queued.packet,
                    reason,
                });
            },
        );
    }

    /// Drops what waits for the path at `index`: its own held packets and those of the
    /// neighbours that wait for it to connect.
    fn drop_path_queued(
        &mut self,
        index: usize,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        self.drop_queued(Owner::Path(index), reason, out);
        for slot in 0..NEIGHBOURS {
            if self.neighbours.get(slot).is_some_and(|n| n.path == index) {
                self.drop_queued(Owner::Neighbour(slot), reason, out);
            }
        }
    }

    fn drop_packet(
        &mut self,
        packet: P,
        reason: DropReason,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) {
        self.counters.count_drop(reason);
        out(Action::Drop { packet, reason });
    }

    /// A handle for `av`: the cached one (shared by every path and group with the same
    /// attributes) or a new one; `None` when the table is full.
    fn acquire_ah(
        &mut self,
        av: AddressVector,
        out: &mut (impl FnMut(Action<P>) + ?Sized),
    ) -> Option<AhId> {
        if let Some(index) = self.ahs.find(|entry| entry.av == av) {
            let entry = self.ahs.get_mut(index)?;
            entry.users += 1;
            return Some(AhId {
                index,
                generation: entry.generation,
            });
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let index = self
            .ahs
            .insert(AhEntry {
                av,
                users: 1,
                generation,
            })
            .ok()?;
        let ah = AhId { index, generation };
        out(Action::CreateAh { ah, av });
        Some(ah)
    }

    fn release_ah(&mut self, ah: AhId, out: &mut (impl FnMut(Action<P>) + ?Sized)) {
        let Some(entry) = self.ahs.get_mut(ah.index) else {
            return;
        };
        if entry.generation != ah.generation {
            return;
        }
        entry.users = entry.users.saturating_sub(1);
        if entry.users == 0 {
            self.ahs.remove(ah.index);
            out(Action::DestroyAh { ah });
        }
    }
}

/// The largest IPoIB MTU in datagram mode: a 4096-byte IB MTU less the header.
pub const MAX_UD_MTU: u16 = 4096 - encap::HEADER_LEN as u16;

/// An MTU above what datagram mode can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuTooLarge {
    /// The largest MTU accepted.
    pub max: u16,
}

/// Bytes before the IP packet in a UD receive buffer: the GRH slot and the
/// encapsulation header.
pub const RECEIVE_HEADROOM: usize = grh::HEADER_LEN + encap::HEADER_LEN;

// The MTU arithmetic of `joined` relies on the smallest IBA MTU exceeding the header.
const _: () = assert!(256 > encap::HEADER_LEN);
