//! Work requests and completions as the fast path takes and returns them.

use crate::wire::AddressVector;

bitflags::bitflags! {
    /// `IB_SEND_*` flags of a send WR.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct SendFlags: u8 {
        /// Generate a completion for this WR (`IB_SEND_SIGNALED`).
        const SIGNALED = 1 << 0;
        /// Ask for a solicited event at the responder (`IB_SEND_SOLICITED`).
        const SOLICITED = 1 << 1;
        /// Wait for earlier RDMA READs and atomics (`IB_SEND_FENCE`).
        const FENCE = 1 << 2;
    }

    /// Memory access rights (`IB_ACCESS_*`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct Access: u8 {
        /// Local write access (`IB_ACCESS_LOCAL_WRITE`).
        const LOCAL_WRITE = 1 << 0;
        /// Remote write access (`IB_ACCESS_REMOTE_WRITE`).
        const REMOTE_WRITE = 1 << 1;
        /// Remote read access (`IB_ACCESS_REMOTE_READ`).
        const REMOTE_READ = 1 << 2;
        /// Remote atomic access (`IB_ACCESS_REMOTE_ATOMIC`).
        const REMOTE_ATOMIC = 1 << 3;
    }

    /// What a completion carries besides its status (`IB_WC_*` flags).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct WcFlags: u8 {
        /// The received data starts with a GRH (`IB_WC_GRH`).
        const GRH = 1 << 0;
        /// `imm` holds immediate data (`IB_WC_WITH_IMM`).
        const WITH_IMM = 1 << 1;
        /// `imm` holds the rkey the sender invalidated (`IB_WC_WITH_INVALIDATE`).
        const WITH_INVALIDATE = 1 << 2;
    }
}

/// A scatter/gather element: `length` bytes at DMA address `addr` of the region `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// The DMA address of the data.
    pub addr: u64,
    /// The length in bytes.
    pub length: u32,
    /// The local key of the memory region.
    pub lkey: u32,
}

/// The remote side of RDMA and atomic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The remote address.
    pub addr: u64,
    /// The remote key.
    pub rkey: u32,
}

/// A fast registration (FRWR, `IB_WR_REG_MR`): bind `key` to `length` bytes at `iova`,
/// backed by the pages listed at DMA address `page_list` (big-endian addresses, as
/// [`crate::wire::FastRegSeg`] describes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastReg {
    /// The key to register.
    pub key: u32,
    /// The DMA address of the page list.
    pub page_list: u64,
    /// The start address (IOVA) of the region.
    pub iova: u64,
    /// The length of the region in bytes.
    pub length: u64,
    /// log2 of the page size.
    pub page_shift: u8,
    /// The region's access rights.
    pub access: Access,
}

/// The operation of a send WR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate data.
    SendWithImm(u32),
    /// SEND carrying an rkey for the responder to invalidate.
    SendWithInvalidate(u32),
    /// RDMA WRITE to the remote address.
    RdmaWrite(Remote),
    /// RDMA WRITE with immediate data.
    RdmaWriteWithImm(Remote, u32),
    /// RDMA READ from the remote address.
    RdmaRead(Remote),
    /// Compare-and-swap of the 8 bytes at `remote`; the old value lands in the WR's one
    /// 8-byte gather element.
    AtomicCmpSwap {
        /// The remote 8 bytes.
        remote: Remote,
        /// The value compared with them.
        compare: u64,
        /// The value written if they are equal.
        swap: u64,
    },
    /// Fetch-and-add on the 8 bytes at `remote`; the old value lands in the WR's one
    /// 8-byte gather element.
    AtomicFetchAdd {
        /// The remote 8 bytes.
        remote: Remote,
        /// The value added to them.
        add: u64,
    },
    /// Invalidates a key (`IB_WR_LOCAL_INV`).
    LocalInvalidate {
        /// The key to invalidate.
        rkey: u32,
    },
    /// Fast registration of a memory region.
    FastReg(FastReg),
}

/// Where a send WR's data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Gathered by the device from registered memory.
    Gather(&'a [Sge]),
    /// Copied into the WQE by the CPU (`IB_SEND_INLINE`), up to the QP's inline limit.
    Inline(&'a [u8]),
}

/// A UD destination: the address vector of an address handle plus the remote QP.
#[derive(Clone, Copy, Debug)]
pub struct UdAddress {
    /// The address handle's address vector.
    pub av: AddressVector,
    /// The destination QP number.
    pub remote_qpn: u32,
    /// The destination's Q_Key.
    pub remote_qkey: u32,
    /// The VLAN tag on RoCE.
    pub vlan: u16,
    /// The destination MAC on RoCE.
    pub mac: [u8; 6],
}

/// A send work request.
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Returned in the WR's completion.
    pub wr_id: u64,
    /// The operation.
    pub op: SendOp,
    /// Where the data comes from.
    pub payload: Payload<'a>,
    /// The `IB_SEND_*` flags.
    pub flags: SendFlags,
    /// The destination; required on UD QPs, refused on RC QPs.
    pub ud: Option<&'a UdAddress>,
}

impl<'a> SendWr<'a> {
    /// A WR without a UD destination.
    pub const fn new(wr_id: u64, op: SendOp, payload: Payload<'a>, flags: SendFlags) -> Self {
        Self {
            wr_id,
            op,
            payload,
            flags,
            ud: None,
        }
    }
}

/// A receive work request.
#[derive(Clone, Copy, Debug)]
pub struct RecvWr<'a> {
    /// Returned in the WR's completion.
    pub wr_id: u64,
    /// Where the received data is scattered.
    pub sges: &'a [Sge],
}

/// Why a WR was not posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// The queue has no room for another WR until completions are polled (`-ENOMEM`).
    QueueFull,
    /// More gather/scatter elements than the queue was created for (`-EINVAL`).
    TooManySges,
    /// Inline data longer than the QP's inline limit (`-EINVAL`).
    InlineTooLong,
    /// The WR's segments do not fit in one WQE of this queue (`-EINVAL`).
    WqeTooLarge,
    /// A gather element of 2 GiB or more, which the WQE format cannot express (`-EINVAL`).
    SgeTooLong,
    /// An atomic WR needs exactly one 8-byte gather element for the old value (`-EINVAL`).
    BadAtomicSge,
    /// A UD WR on an RC QP, an RC-only operation on a UD QP, or a UD WR without its
    /// destination (`-EINVAL`).
    WrongQpType,
}

/// A post that stopped at `index`: the WRs before it were posted and the doorbell rung;
/// the WR at `index` and those after it were not (verbs' `bad_wr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostFailure {
    /// Index of the first WR not posted.
    pub index: usize,
    /// Why it was not posted.
    pub error: PostError,
}

pub use rdma_core::verbs::{WcOpcode, WcStatus};

/// One completion (`struct ib_wc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The wr_id of the completed WR.
    pub wr_id: u64,
    /// The completion status.
    pub status: WcStatus,
    /// The operation completed.
    pub opcode: WcOpcode,
    /// The local QP number.
    pub qpn: u32,
    /// Bytes received or read by an RDMA READ; 8 for an atomic.
    pub byte_len: u32,
    /// Immediate data or the invalidated rkey, as `flags` says.
    pub imm: u32,
    /// The remote QP number of a receive.
    pub src_qp: u32,
    /// What else the completion carries.
    pub flags: WcFlags,
    /// The vendor error syndrome of an error completion.
    pub vendor_err: u8,
    /// A receive's source LID, SL, the DLID's path bits and the P_Key index of the
    /// packet's P_Key (what the MAD layer answers by: `ib_wc.slid`, `.sl`,
    /// `.dlid_path_bits`, `.pkey_index`).
    pub slid: u16,
    /// See `slid`.
    pub sl: u8,
    /// See `slid`.
    pub dlid_path_bits: u8,
    /// See `slid`.
    pub pkey_index: u16,
}

impl Completion {
    /// A placeholder for completion arrays before polling.
    pub const EMPTY: Self = Self {
        wr_id: 0,
        status: WcStatus::GeneralError,
        opcode: WcOpcode::Send,
        qpn: 0,
        byte_len: 0,
        imm: 0,
        src_qp: 0,
        flags: WcFlags::empty(),
        vendor_err: 0,
        slid: 0,
        sl: 0,
        dlid_path_bits: 0,
        pkey_index: 0,
    };
}

impl Default for Completion {
    fn default() -> Self {
        Self::EMPTY
    }
}
