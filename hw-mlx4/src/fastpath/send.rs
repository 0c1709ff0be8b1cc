//! `post_send`: building send WQEs and handing them to the device.
//!
//! Follows the kernel's `_mlx4_ib_post_send` and rdma-core's `mlx4_post_send`: each WR
//! becomes one WQE of `1 << wqe_shift` bytes; the body is written first, then, after
//! `dma_wmb`, the `owner_opcode` word that gives it to the device; the WQE `spare` slots
//! ahead is stamped so the device's read-ahead never takes stale blocks for valid ones;
//! after the last WR, `wmb` and the send doorbell.

use super::platform::{BlueFlameRegister, DmaRing, Platform, SharedCounter, UarPage, WrIdSlot};
use super::wr::Access;
use super::wr::{Payload, PostError, PostFailure, SendFlags, SendOp, SendWr, Sge};
use crate::wire::ud::{MlxSeg, ICRC_BYTES, UD_HEADER_MAX};
use crate::wire::{
    send_doorbell_value, AtomicSeg, Be16, Be32, Be64, CtrlSeg, DataSeg, DatagramSeg, FastRegSeg,
    InlineSeg, LocalInvalSeg, RaddrSeg, SendOpcode, DS_SIZE, SQ_MAX_HEADROOM, STAMP_WORD,
    WQEBB_SIZE,
};
use zerocopy::FromBytes;

/// The bytes the largest UD header takes inline after the MLX segment, padded to 16.
const MLX_HEADER_ROOM: usize =
    (inline_bytes(size_of::<MlxSeg>(), UD_HEADER_MAX) + DS_SIZE - 1) & !(DS_SIZE - 1);

/// A SEND on a special QP (MLX transport): the packet's headers, packed by the driver
/// (`wire::ud::UdHeader`), and its payload.
#[derive(Clone, Copy, Debug)]
pub struct MlxWr<'a> {
    /// Returned in the WR's completion.
    pub wr_id: u64,
    /// Whether the WR asks for a completion.
    pub signaled: bool,
    /// LRH, optional GRH, BTH and DETH, at most `wire::ud::UD_HEADER_MAX` bytes.
    pub header: &'a [u8],
    /// The MLX segment's routing flags: `MlxSeg::VL15`, `MlxSeg::SLR`, the SL.
    pub flags: u32,
    /// The destination LID.
    pub rlid: u16,
    /// The payload (a MAD).
    pub gather: &'a [Sge],
}

/// The transport of a QP, as far as the WQE format cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable datagram.
    Ud,
    /// The special QPs' raw transport: each WQE carries the packet's headers, written
    /// by the driver ([`SendQueue::post_mlx`]; [`SendQueue::post`] refuses its WRs).
    Mlx,
}

/// The capabilities a send queue is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendQueueCaps {
    /// Gather elements per WR.
    pub max_sge: u32,
    /// Bytes of inline data per WR.
    pub max_inline: u32,
    /// Every WQE generates a CQE (`IB_SIGNAL_ALL_WR`).
    pub signal_all: bool,
}

/// Why a queue could not be set up over the memory given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueConfigError {
    /// The wr_id table does not have one slot per ring entry.
    WrIdTableSize,
    /// The ring's entries are too small or too large for this queue.
    EntrySize,
    /// The ring has too few entries to keep the read-ahead headroom and post anything.
    TooFewEntries,
    /// The capabilities do not fit in one WQE.
    CapsDoNotFit,
}

/// The part of a send queue that the poster and the completer share.
pub struct SendQueueState<P: Platform> {
    ring: P::Ring,
    wr_ids: P::WrIdTable,
    /// Counter of the oldest WQE not yet completed; advanced by the completer.
    tail: P::Counter,
    /// Counter after the newest WQE handed to the device; lets the completer refuse a
    /// CQE that names a WQE never posted.
    posted: P::Counter,
    wqe_cnt: u32,
    /// `wqe_cnt - 1`: masks a counter to a slot.
    slot_mask: u32,
    wqe_shift: u32,
    /// WQEs kept stamped ahead of the producer (`MLX4_IB_SQ_HEADROOM`).
    spare: u32,
    /// WRs that may be outstanding: the ring less the stamped headroom.
    max_post: u32,
    /// The largest WQE in bytes: the entry, or what the size field can express.
    max_wqe_bytes: usize,
    qp_type: QpType,
    caps: SendQueueCaps,
}

impl<P: Platform> SendQueueState<P> {
    /// Sets up a send queue over `ring` (entries of one WQE each) and its wr_id table, and
    /// puts every WQE in its initial, software-owned and stamped state
    /// (`mlx4_qp_init_sq_ownership`).
    pub fn new(
        ring: P::Ring,
        wr_ids: P::WrIdTable,
        qp_type: QpType,
        caps: SendQueueCaps,
    ) -> Result<Self, QueueConfigError> {
        let wqe_shift = ring.entry_shift();
        let log_entries = ring.log_entries();
        if !(6..=10).contains(&wqe_shift) || log_entries > 16 {
            return Err(QueueConfigError::EntrySize);
        }
        let wqe_cnt = 1u32 << log_entries;
        if wr_ids.as_ref().len() != wqe_cnt as usize {
            return Err(QueueConfigError::WrIdTableSize);
        }
        let spare = (SQ_MAX_HEADROOM >> wqe_shift) as u32 + 1;
        if wqe_cnt <= spare {
            return Err(QueueConfigError::TooFewEntries);
        }
        let wqe_ds = (1u32 << wqe_shift) / DS_SIZE as u32;
        let max_ds = wqe_ds.min(u32::from(CtrlSeg::SIZE_MASK));
        // The largest WQE each payload kind can make: gather entries follow the remote
        // address (RC) or the datagram segment (UD); fast registration has no payload.
        let fixed = match qp_type {
            QpType::Rc => size_of::<RaddrSeg>(),
            QpType::Ud => size_of::<DatagramSeg>(),
            // The largest header inline, padded to 16, and the ICRC's inline segment.
            QpType::Mlx => MLX_HEADER_ROOM + size_of::<DataSeg>(),
        };
        let start = size_of::<CtrlSeg>() + fixed;
        // Saturating: capabilities past any WQE are refused below all the same.
        let sge_bytes =
            start.saturating_add((caps.max_sge as usize).saturating_mul(size_of::<DataSeg>()));
        let inline_end = start.saturating_add(inline_bytes(start, caps.max_inline as usize));
        let fast_reg_bytes = size_of::<CtrlSeg>() + size_of::<FastRegSeg>();
        let largest = sge_bytes.max(inline_end).max(fast_reg_bytes);
        if largest.div_ceil(DS_SIZE) > max_ds as usize {
            return Err(QueueConfigError::CapsDoNotFit);
        }
        let state = Self {
            ring,
            wr_ids,
            tail: P::Counter::new(0),
            posted: P::Counter::new(0),
            wqe_cnt,
            slot_mask: wqe_cnt.wrapping_sub(1),
            wqe_shift,
            spare,
            max_post: wqe_cnt.wrapping_sub(spare),
            max_wqe_bytes: (1usize << wqe_shift).min(usize::from(CtrlSeg::SIZE_MASK) * DS_SIZE),
            qp_type,
            caps,
        };
        let full_size = wqe_ds as u8;
        for index in 0..wqe_cnt {
            // SAFETY: the queue is not yet known to the device, so every entry is ours.
            let written = unsafe {
                state.ring.with_entry_mut(index, |wqe| {
                    let (ctrl, _) = CtrlSeg::mut_from_prefix(wqe).ok()?;
                    ctrl.fence_size = full_size.min(CtrlSeg::SIZE_MASK);
                    Some(())
                })
            };
            written.ok_or(QueueConfigError::EntrySize)?;
            // Owner bit set: not valid on lap 0. Ownership words go through `write_word`
            // only, so platforms that keep them apart from the body see every change.
            state.ring.write_word(index, 0, CtrlSeg::OWNER);
            state.stamp(index);
        }
        Ok(state)
    }

    /// The number of WQEs in the ring.
    pub fn entries(&self) -> u32 {
        self.wqe_cnt
    }

    /// How many WRs can be outstanding at once: the ring less the stamped headroom.
    pub fn max_post(&self) -> u32 {
        self.max_post
    }

    /// The capabilities the queue was created with.
    pub fn caps(&self) -> SendQueueCaps {
        self.caps
    }

    /// The ring of send WQEs.
    pub fn ring(&self) -> &P::Ring {
        &self.ring
    }

    /// Counter of the oldest WQE not yet completed.
    pub fn tail(&self) -> u32 {
        self.tail.load_acquire()
    }

    /// Stamps the WQE at counter `index`: the first word of each WQEBB after the first,
    /// as far as that WQE's last size reached (`stamp_send_wqe`).
    #[inline]
    fn stamp(&self, index: u32) {
        // A one-block WQE has nothing to stamp: the block's first word is the owner word.
        if self.wqe_shift as usize == WQEBB_SIZE.trailing_zeros() as usize {
            return;
        }
        // SAFETY: callers stamp only WQEs at least `spare` ahead of the last posted one
        // and behind `tail + wqe_cnt`, which the device has neither pending nor fetched.
        unsafe {
            self.ring.with_entry_mut(index, |wqe| {
                let Ok((ctrl, _)) = CtrlSeg::ref_from_prefix(wqe) else {
                    return;
                };
                // Every block that starts inside the old WQE, a partly used last one too
                // (the kernel's `for (i = 64; i < s; i += 64)`).
                let end = ctrl.size_ds() * DS_SIZE;
                for start in (WQEBB_SIZE..end).step_by(WQEBB_SIZE) {
                    if let Some(word) = wqe.get_mut(start..start + 4) {
                        word.copy_from_slice(&STAMP_WORD.to_be_bytes());
                    }
                }
            })
        }
    }

    /// Takes the oldest outstanding WQE as flushed and returns its wr_id: for a device
    /// that will complete nothing more (reset after a catastrophic error), the driver
    /// completes what was posted itself (`mlx4_ib_qp_sw_comp`), signaled or not.
    /// WQEs posted and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.posted
            .load_acquire()
            .wrapping_sub(self.tail.load_acquire())
    }

    pub(crate) fn flush_oldest(&self) -> Option<u64> {
        super::recv::take_oldest::<P>(&self.tail, &self.posted, &self.wr_ids, self.wqe_cnt)
    }

    /// Completes WQEs up to and including the one the device reports by its 16-bit
    /// counter, returning that WQE's wr_id; unsignaled WQEs before it complete with it.
    /// `None` if the counter names no outstanding WQE (a device or driver bug).
    pub(crate) fn complete(&self, wqe_counter: u16) -> Option<u64> {
        let tail = self.tail.load_acquire();
        let outstanding = self.posted.load_acquire().wrapping_sub(tail);
        let skipped = u32::from(wqe_counter.wrapping_sub(tail as u16));
        if skipped >= outstanding {
            return None;
        }
        let index = tail.wrapping_add(skipped);
        let wr_id = self
            .wr_ids
            .as_ref()
            .get((index & self.wqe_cnt.wrapping_sub(1)) as usize)?
            .get();
        self.tail.store_release(index.wrapping_add(1));
        Some(wr_id)
    }
}

/// The fixed facts of a send queue the poster consults per WR, copied into the posting
/// handle: the shared state holds atomics, so the compiler must reload anything read
/// through it after each store to the ring; the handle is `&mut`, so these stay in
/// registers.
#[derive(Clone, Copy)]
struct Shape {
    wqe_cnt: u32,
    slot_mask: u32,
    spare: u32,
    max_post: u32,
    max_wqe_bytes: usize,
    /// WQEs are longer than one block, so they have blocks to stamp.
    stamps: bool,
    /// `CQ_UPDATE` when every WR is signaled (`IB_SIGNAL_ALL_WR`), else 0.
    signal_all_bits: u32,
    qp_type: QpType,
    caps: SendQueueCaps,
}

/// The posting side of a send queue; one per queue (it is made from `&mut` state).
pub struct SendQueue<'q, P: Platform> {
    state: &'q SendQueueState<P>,
    shape: Shape,
    uar: &'q P::Uar,
    /// The QP's BlueFlame register, if it has one, and the buffer the next copy goes to.
    blueflame: Option<&'q P::BlueFlame>,
    blueflame_buffer: usize,
    doorbell: u32,
    head: u32,
    /// The last tail seen; reloaded only when the queue looks full.
    tail_cache: u32,
}

impl<'q, P: Platform> SendQueue<'q, P> {
    /// Resumes where the last poster of this queue stopped, so splitting a QP again
    /// never reposts over WQEs the device has.
    pub(crate) fn new(
        state: &'q SendQueueState<P>,
        qpn: u32,
        uar: &'q P::Uar,
        blueflame: Option<&'q P::BlueFlame>,
    ) -> Self {
        let head = state.posted.load_acquire();
        let tail_cache = state.tail.load_acquire();
        Self {
            state,
            shape: Shape {
                wqe_cnt: state.wqe_cnt,
                slot_mask: state.slot_mask,
                spare: state.spare,
                max_post: state.max_post,
                max_wqe_bytes: state.max_wqe_bytes,
                stamps: state.wqe_shift as usize != WQEBB_SIZE.trailing_zeros() as usize,
                signal_all_bits: if state.caps.signal_all {
                    CtrlSeg::CQ_UPDATE
                } else {
                    0
                },
                qp_type: state.qp_type,
                caps: state.caps,
            },
            uar,
            blueflame,
            blueflame_buffer: 0,
            doorbell: send_doorbell_value(qpn),
            head,
            tail_cache,
        }
    }

    /// Counter of the next WQE to post.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Posts one SEND on a special QP and rings the doorbell (`_mlx4_ib_post_send` with
    /// `build_mlx_header`): the MLX segment, the headers inline in segments that do not
    /// cross 64-byte boundaries, the payload's gather entries, and an inline segment of
    /// 4 bytes for the ICRC the device computes. Every check before the first store; the
    /// heads of 64-byte blocks are written last, before the ownership word, as in
    /// [`SendQueue::post`].
    #[inline(never)]
    pub fn post_mlx(&mut self, wr: &MlxWr<'_>) -> Result<(), PostError> {
        let shape = self.shape;
        let state = self.state;
        let ring = &state.ring;
        if shape.qp_type != QpType::Mlx {
            return Err(PostError::WrongQpType);
        }
        let index = self.head;
        if index.wrapping_sub(self.tail_cache) >= shape.max_post {
            self.tail_cache = state.tail.load_acquire();
            if index.wrapping_sub(self.tail_cache) >= shape.max_post {
                return Err(PostError::QueueFull);
            }
        }
        if wr.gather.len() > shape.caps.max_sge as usize {
            return Err(PostError::TooManySges);
        }
        if wr.gather.iter().any(|sge| sge.length > DataSeg::MAX_LENGTH) {
            return Err(PostError::SgeTooLong);
        }
        if wr.header.len() > UD_HEADER_MAX {
            return Err(PostError::WqeTooLarge);
        }
        let start = size_of::<MlxSeg>();
        let header_bytes = inline_bytes(start, wr.header.len());
        // All bounded by the checks above (a few hundred bytes): no wrapping.
        let gather_start = (start + header_bytes + DS_SIZE - 1) & !(DS_SIZE - 1);
        let icrc = gather_start + wr.gather.len() * size_of::<DataSeg>();
        let bytes = icrc + size_of::<DataSeg>();
        if bytes > shape.max_wqe_bytes {
            return Err(PostError::WqeTooLarge);
        }
        let signaled = if wr.signaled { CtrlSeg::CQ_UPDATE } else { 0 };
        let flags = wr.flags | signaled | shape.signal_all_bits;
        // SAFETY: the room check gave this WQE to the driver, `&mut self` makes this the
        // only producer, and the heads of 64-byte blocks are held back until the rest of
        // the WQE is written, as in `write_gather`.
        let held_back = unsafe {
            ring.with_entry_mut(index, |wqe| {
                let (mlx, rest) = MlxSeg::mut_from_prefix(wqe).ok()?;
                mlx.sched_prio = Be16::new(0);
                mlx.rsvd = 0;
                mlx.size = (bytes / DS_SIZE) as u8;
                mlx.flags = Be32::new(flags);
                mlx.rlid = Be16::new(wr.rlid);
                mlx.rsvd2 = [0; 2];
                // (Checked before `split_at_mut`: `split_at_mut_checked` is newer than the
                // oldest kernel's Rust.)
                if rest.len() < gather_start - start {
                    return None;
                }
                let (headers, rest) = rest.split_at_mut(gather_start - start);
                let mut held_back =
                    write_inline_segments(headers.get_mut(..header_bytes)?, start, wr.header)?;
                let (segs, rest) =
                    <[DataSeg]>::mut_from_prefix_with_elems(rest, wr.gather.len()).ok()?;
                for (i, (seg, sge)) in segs.iter_mut().zip(wr.gather).enumerate() {
                    seg.lkey = Be32::new(sge.lkey);
                    seg.addr = Be64::new(sge.addr);
                    if starts_block(segment_offset(gather_start, i)) {
                        held_back = true;
                    } else {
                        seg.byte_count = Be32::new(gather_byte_count(sge.length));
                    }
                }
                // The ICRC's segment: 4 bytes the device fills (`set_mlx_icrc_seg`).
                let (icrc_seg, _) = DataSeg::mut_from_prefix(rest).ok()?;
                icrc_seg.lkey = Be32::new(0);
                icrc_seg.addr = Be64::new(0);
                if starts_block(icrc) {
                    held_back = true;
                } else {
                    icrc_seg.byte_count = Be32::new(InlineSeg::INLINE | ICRC_BYTES as u32);
                }
                Some(held_back)
            })
        }
        .ok_or(PostError::WqeTooLarge)?;
        if held_back {
            write_inline_heads::<P>(ring, index, start, wr.header.len());
            for (i, sge) in wr.gather.iter().enumerate() {
                let offset = segment_offset(gather_start, i);
                if starts_block(offset) {
                    P::dma_wmb();
                    ring.write_word(index, offset, gather_byte_count(sge.length));
                }
            }
            if starts_block(icrc) {
                P::dma_wmb();
                ring.write_word(index, icrc, InlineSeg::INLINE | ICRC_BYTES as u32);
            }
        }
        let owner_opcode = CtrlSeg::owner_opcode_for(SendOpcode::Send, index, shape.wqe_cnt);
        self.hand_over(ring, &shape, index, wr.wr_id, owner_opcode);
        let next = index.wrapping_add(1);
        self.head = next;
        P::wmb();
        self.uar.ring_send_doorbell(self.doorbell);
        state.stamp(next.wrapping_add(shape.spare).wrapping_sub(1));
        Ok(())
    }

    /// Posts `wrs` in order and hands them to the device once: by the send doorbell, or,
    /// for a single WR of inline data that fits the QP's BlueFlame buffer, by copying the
    /// WQE there (as rdma-core's provider does). On error the WRs before the failing one
    /// are posted; the ring is never left with a partial WQE.
    ///
    /// One function, never inlined into its caller: the driver reaches it through the
    /// device's ops table anyway, and `cargo xtask test` compares its machine code
    /// between kernel builds.
    #[inline(never)]
    pub fn post(&mut self, wrs: &[SendWr<'_>]) -> Result<(), PostFailure> {
        // BlueFlame only for a lone WR of inline data: a WQE the CPU already has in cache
        // and the device then need not fetch (the provider's `nreq == 1 && inl`).
        let shape = self.shape;
        if let [wr] = wrs {
            if let (Some(register), Payload::Inline(data)) = (self.blueflame, wr.payload) {
                if !data.is_empty() {
                    return self
                        .post_blueflame(register, wr)
                        .map_err(|error| PostFailure { index: 0, error });
                }
            }
            // One WR, the common call: the same work without the loop around it.
            return self
                .post_one(&self.state.ring, &shape, wr)
                .map_err(|error| PostFailure { index: 0, error });
        }
        if shape.stamps {
            self.post_doorbell::<true>(&self.state.ring, &shape, wrs)
        } else {
            self.post_doorbell::<false>(&self.state.ring, &shape, wrs)
        }
    }

    /// `post` of one WR by the send doorbell.
    #[inline(always)]
    fn post_one(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        wr: &SendWr<'_>,
    ) -> Result<(), PostError> {
        let head = self.head;
        self.write_wqe(ring, shape, head, wr, None)?;
        let index = head.wrapping_add(1);
        self.head = index;
        P::wmb();
        self.uar.ring_send_doorbell(self.doorbell);
        self.state
            .stamp(index.wrapping_add(shape.spare).wrapping_sub(1));
        Ok(())
    }

    /// `post` by the send doorbell, for queues whose WQEs have blocks to stamp
    /// (`STAMPS`) or not: the loop is compiled once for each, with no test of it inside.
    #[inline(always)]
    fn post_doorbell<const STAMPS: bool>(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        wrs: &[SendWr<'_>],
    ) -> Result<(), PostFailure> {
        let state = self.state;
        let head = self.head;
        let mut index = head;
        let mut result = Ok(());
        for wr in wrs {
            if let Err(error) = self.write_wqe(ring, shape, index, wr, None) {
                // WRs before this one took one WQE each.
                let posted = index.wrapping_sub(head) as usize;
                result = Err(PostFailure {
                    index: posted,
                    error,
                });
                break;
            }
            index = index.wrapping_add(1);
            // Stamping the WQE after the last one waits until after the doorbell: it
            // costs latency and the device cannot reach it before then.
            if STAMPS && index.wrapping_sub(head) < wrs.len() as u32 {
                state.stamp(index.wrapping_add(shape.spare).wrapping_sub(1));
            }
        }
        if index != head {
            self.head = index;
            P::wmb();
            self.uar.ring_send_doorbell(self.doorbell);
            state.stamp(index.wrapping_add(shape.spare).wrapping_sub(1));
        }
        result
    }

    /// Posts one WR of inline data through the BlueFlame register if its WQE fits the
    /// buffer, else by the doorbell.
    #[inline(never)]
    fn post_blueflame(
        &mut self,
        register: &P::BlueFlame,
        wr: &SendWr<'_>,
    ) -> Result<(), PostError> {
        let state = self.state;
        let shape = self.shape;
        let head = self.head;
        let copied = self.write_wqe(&state.ring, &shape, head, wr, Some(register.buffer_size()))?;
        let index = head.wrapping_add(1);
        self.head = index;
        // The WQE reaches memory before its copy reaches the register: the device
        // fetches it from the ring again when it must resend.
        P::wmb();
        match copied {
            0 => self.uar.ring_send_doorbell(self.doorbell),
            bytes => {
                // SAFETY: the WQE at `head` was just handed over, so the device only
                // reads it; `&mut self` makes this the only CPU code touching it.
                unsafe {
                    state.ring.with_entry(head, |wqe| {
                        if let Some(blocks) = wqe.get(..bytes as usize) {
                            register.copy_wqe(self.blueflame_buffer, blocks);
                        }
                    })
                };
                self.blueflame_buffer ^= 1;
            }
        }
        state.stamp(index.wrapping_add(shape.spare).wrapping_sub(1));
        Ok(())
    }

    /// Writes the WQE for `wr` at counter `index` and hands it over; see
    /// [`SendQueue::write_any`] for the result. The shapes nearly every WR has (a gather
    /// list under SEND or RDMA WRITE on an RC QP, under SEND on a UD QP, and inline data
    /// under SEND on an RC QP) are written here by a path made for each; the rest by
    /// `write_any`.
    #[inline(always)]
    fn write_wqe(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        index: u32,
        wr: &SendWr<'_>,
        blueflame: Option<usize>,
    ) -> Result<u32, PostError> {
        if index.wrapping_sub(self.tail_cache) >= shape.max_post {
            self.tail_cache = self.state.tail.load_acquire();
            if index.wrapping_sub(self.tail_cache) >= shape.max_post {
                return Err(PostError::QueueFull);
            }
        }
        let sges = match wr.payload {
            Payload::Gather(sges) => sges,
            Payload::Inline(data)
                if shape.qp_type == QpType::Rc && wr.ud.is_none() && wr.op == SendOp::Send =>
            {
                return self.write_inline(ring, shape, index, wr, data, blueflame);
            }
            Payload::Inline(_) => return self.write_any(shape, index, wr, blueflame),
        };
        // Tested in order of how common they are, each a compare, not a jump table.
        let rc = shape.qp_type == QpType::Rc && wr.ud.is_none();
        if rc && wr.op == SendOp::Send {
            self.write_gather(ring, shape, index, wr, SendOpcode::Send, NoSegment, sges)
        } else if let (true, SendOp::RdmaWrite(remote)) = (rc, wr.op) {
            self.write_gather(ring, shape, index, wr, SendOpcode::RdmaWrite, remote, sges)
        } else if let (QpType::Ud, Some(ud), SendOp::Send) = (shape.qp_type, wr.ud, wr.op) {
            self.write_gather(ring, shape, index, wr, SendOpcode::Send, ud, sges)
        } else {
            return self.write_any(shape, index, wr, blueflame);
        }?;
        Ok(0)
    }

    /// Writes a WQE of a gather list for an operation without immediate data: the control
    /// segment, `fixed` (the segment the operation needs before the data, if any), and one
    /// data segment per entry. Every
    /// check comes before the first store; `new` refused capabilities whose largest WQE
    /// does not fit, so within `max_sge` the list always does.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn write_gather<F: FixedSegment>(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        index: u32,
        wr: &SendWr<'_>,
        opcode: SendOpcode,
        fixed: F,
        sges: &[Sge],
    ) -> Result<(), PostError> {
        if let [sge] = sges {
            return self.write_gather_one(ring, shape, index, wr, opcode, fixed, sge);
        }
        if sges.len() > shape.caps.max_sge as usize {
            return Err(PostError::TooManySges);
        }
        if sges.iter().any(|sge| sge.length > DataSeg::MAX_LENGTH) {
            return Err(PostError::SgeTooLong);
        }
        let start = size_of::<CtrlSeg>() + size_of::<F::Seg>();
        // At most `max_sge` (a `u32`) entries of 16 bytes: wrapping never happens.
        let size_ds = (start / DS_SIZE).wrapping_add(sges.len()) as u8;
        let ctrl_word = control_words(shape, wr, 0, 0);
        // SAFETY: as in `write_any`: the room check gave this WQE to the driver, `&mut
        // self` makes this the only producer, and block heads are held back.
        let held_back = unsafe {
            ring.with_entry_mut(
                index,
                #[inline(always)]
                |wqe| {
                    let (ctrl, rest) = CtrlSeg::mut_from_prefix(wqe).ok()?;
                    let (segment, rest) = F::Seg::mut_from_prefix(rest).ok()?;
                    let (segs, _) =
                        <[DataSeg]>::mut_from_prefix_with_elems(rest, sges.len()).ok()?;
                    ctrl.set_qpn_fence_size(0, ctrl_word.fence | size_ds);
                    ctrl.srcrb_flags = Be32::new(ctrl_word.srcrb);
                    ctrl.imm = Be32::new(ctrl_word.imm);
                    fixed.write(segment);
                    let mut held_back = false;
                    let mut offset = start;
                    for (seg, sge) in segs.iter_mut().zip(sges) {
                        seg.lkey = Be32::new(sge.lkey);
                        seg.addr = Be64::new(sge.addr);
                        if starts_block(offset) {
                            held_back = true;
                        } else {
                            seg.byte_count = Be32::new(gather_byte_count(sge.length));
                        }
                        // Offsets inside one WQE (at most 1 KiB): wrapping never happens.
                        offset = offset.wrapping_add(size_of::<DataSeg>());
                    }
                    Some(held_back)
                },
            )
        }
        .ok_or(PostError::WqeTooLarge)?;
        if held_back {
            write_block_heads::<P>(ring, index, start, &wr.payload);
        }
        let owner_opcode = CtrlSeg::owner_opcode_for(opcode, index, shape.wqe_cnt);
        self.hand_over(ring, shape, index, wr.wr_id, owner_opcode);
        Ok(())
    }

    /// [`SendQueue::write_gather`] of one entry, the common WR: fixed-size views, no loop.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn write_gather_one<F: FixedSegment>(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        index: u32,
        wr: &SendWr<'_>,
        opcode: SendOpcode,
        fixed: F,
        sge: &Sge,
    ) -> Result<(), PostError> {
        if shape.caps.max_sge == 0 {
            return Err(PostError::TooManySges);
        }
        if sge.length > DataSeg::MAX_LENGTH {
            return Err(PostError::SgeTooLong);
        }
        let start = size_of::<CtrlSeg>() + size_of::<F::Seg>();
        let size_ds = (start / DS_SIZE + 1) as u8;
        let ctrl_word = control_words(shape, wr, 0, 0);
        let byte_count = gather_byte_count(sge.length);
        // SAFETY: as in `write_gather`.
        let written = unsafe {
            ring.with_entry_mut(
                index,
                #[inline(always)]
                |wqe| {
                    let (ctrl, rest) = CtrlSeg::mut_from_prefix(wqe).ok()?;
                    let (segment, rest) = F::Seg::mut_from_prefix(rest).ok()?;
                    let (seg, _) = DataSeg::mut_from_prefix(rest).ok()?;
                    ctrl.set_qpn_fence_size(0, ctrl_word.fence | size_ds);
                    ctrl.srcrb_flags = Be32::new(ctrl_word.srcrb);
                    ctrl.imm = Be32::new(ctrl_word.imm);
                    fixed.write(segment);
                    seg.lkey = Be32::new(sge.lkey);
                    seg.addr = Be64::new(sge.addr);
                    // `start` is a constant: this test is decided when compiling.
                    if !starts_block(start) {
                        seg.byte_count = Be32::new(byte_count);
                    }
                    Some(())
                },
            )
        };
        written.ok_or(PostError::WqeTooLarge)?;
        if starts_block(start) {
            P::dma_wmb();
            ring.write_word(index, start, byte_count);
        }
        let owner_opcode = CtrlSeg::owner_opcode_for(opcode, index, shape.wqe_cnt);
        self.hand_over(ring, shape, index, wr.wr_id, owner_opcode);
        Ok(())
    }

    /// Writes a SEND of inline data on an RC QP: the control segment, then the data in
    /// segments that do not cross 64-byte boundaries, each after its 4-byte header. As
    /// [`SendQueue::write_any`] for the result; every check before the first store.
    #[inline(always)]
    fn write_inline(
        &mut self,
        ring: &P::Ring,
        shape: &Shape,
        index: u32,
        wr: &SendWr<'_>,
        data: &[u8],
        blueflame: Option<usize>,
    ) -> Result<u32, PostError> {
        if data.len() > shape.caps.max_inline as usize {
            return Err(PostError::InlineTooLong);
        }
        let start = size_of::<CtrlSeg>();
        let bytes = start.saturating_add(inline_bytes(start, data.len()));
        if bytes > shape.max_wqe_bytes {
            return Err(PostError::WqeTooLarge);
        }
        let size_ds = bytes.div_ceil(DS_SIZE) as u8;
        let by_blueflame = blueflame.is_some_and(|room| bytes <= room && size_ds > 1);
        let words = control_words(shape, wr, 0, 0);
        let bf_qpn = if by_blueflame { self.doorbell } else { 0 };
        // SAFETY: as in `write_any`.
        let held_back = unsafe {
            ring.with_entry_mut(
                index,
                #[inline(always)]
                |wqe| {
                    let (ctrl, rest) = CtrlSeg::mut_from_prefix(wqe).ok()?;
                    // `bytes` counts from 0, `start` included: it is the larger.
                    let payload = rest.get_mut(..bytes.wrapping_sub(start))?;
                    ctrl.set_qpn_fence_size(bf_qpn, words.fence | size_ds);
                    ctrl.srcrb_flags = Be32::new(words.srcrb);
                    ctrl.imm = Be32::new(words.imm);
                    write_inline_segments(payload, start, data)
                },
            )
        }
        .ok_or(PostError::WqeTooLarge)?;
        if held_back {
            write_inline_heads::<P>(ring, index, start, data.len());
        }
        let mut owner_opcode = CtrlSeg::owner_opcode_for(SendOpcode::Send, index, shape.wqe_cnt);
        if by_blueflame {
            owner_opcode |= (index & 0xffff) << CtrlSeg::BF_COUNTER_SHIFT;
        }
        self.hand_over(ring, shape, index, wr.wr_id, owner_opcode);
        // `bytes <= max_wqe_bytes`: rounding up to a block cannot wrap.
        Ok(if by_blueflame {
            (bytes.wrapping_add(WQEBB_SIZE - 1) & !(WQEBB_SIZE - 1)) as u32
        } else {
            0
        })
    }

    /// Records the WR's wr_id and gives the WQE at `index` to the device: its ownership
    /// word, last, after `dma_wmb`.
    #[inline(always)]
    fn hand_over(&self, ring: &P::Ring, shape: &Shape, index: u32, wr_id: u64, owner_opcode: u32) {
        let state = self.state;
        if let Some(slot) = state
            .wr_ids
            .as_ref()
            .get((index & shape.slot_mask) as usize)
        {
            slot.set(wr_id);
        }
        state.posted.store_release(index.wrapping_add(1));
        P::dma_wmb();
        ring.write_word(index, 0, owner_opcode);
    }

    /// Writes the WQE for any WR at counter `index`, which has room, and hands it over:
    /// every operation and payload, the path [`SendQueue::write_wqe`] leaves the rarer
    /// shapes to. A WQE that fits `blueflame` bytes (the register's buffer) is written as
    /// a BlueFlame WQE, and the bytes to copy (its whole 64-byte blocks) returned;
    /// otherwise `Ok(0)`. Everything that can refuse the WR is checked before the first
    /// store.
    #[inline(never)]
    fn write_any(
        &mut self,
        shape: &Shape,
        index: u32,
        wr: &SendWr<'_>,
        blueflame: Option<usize>,
    ) -> Result<u32, PostError> {
        let state = self.state;
        let kind = WqeKind::of(shape.qp_type, wr)?;
        let payload_start = size_of::<CtrlSeg>() + kind.fixed_bytes;
        let bytes = match wr.payload {
            // `new` refused capabilities whose largest WQE does not fit: within
            // `max_sge`, a gather list always does.
            // Wrapping: at most `max_sge` (a `u32`) entries of 16 bytes cannot wrap.
            Payload::Gather(sges) if sges.len() <= shape.caps.max_sge as usize => {
                payload_start.wrapping_add(sges.len().wrapping_mul(size_of::<DataSeg>()))
            }
            Payload::Gather(_) => return Err(PostError::TooManySges),
            Payload::Inline(data) if data.len() <= shape.caps.max_inline as usize => {
                payload_start.saturating_add(inline_bytes(payload_start, data.len()))
            }
            Payload::Inline(_) => return Err(PostError::InlineTooLong),
        };
        if bytes > shape.max_wqe_bytes {
            return Err(PostError::WqeTooLarge);
        }
        let size_ds = bytes.div_ceil(DS_SIZE) as u8;
        let doorbell = self.doorbell;
        let by_blueflame = blueflame.is_some_and(|room| bytes <= room && size_ds > 1);
        let words = control_words(shape, wr, kind.srcrb, kind.imm);
        // SAFETY: `index - tail < max_post`, so the device has completed this WQE's
        // previous use and will not execute it before its ownership word, written last;
        // `&mut self` makes this the only producer. The device may read ahead into it
        // (it reads, never writes, a WQE it does not own), which is why the words that
        // make a block valid are held back and written outside this view.
        let held_back = unsafe {
            state.ring.with_entry_mut(
                index,
                #[inline(always)]
                |wqe| {
                    let (ctrl, rest) =
                        CtrlSeg::mut_from_prefix(wqe).map_err(|_| PostError::WqeTooLarge)?;
                    // `bf_qpn` and `fence_size` in one store: the QPN only in a BlueFlame WQE,
                    // no VLAN insertion otherwise (the field is shared).
                    let bf_qpn = if by_blueflame { doorbell } else { 0 };
                    ctrl.set_qpn_fence_size(bf_qpn, words.fence | size_ds);
                    ctrl.srcrb_flags = Be32::new(words.srcrb);
                    ctrl.imm = Be32::new(words.imm);
                    let rest = write_fixed_segments(rest, wr)?;
                    write_payload(rest, payload_start, &wr.payload)
                },
            )
        }?;
        // The held-back block heads, after their blocks, before the ownership word.
        if held_back {
            write_block_heads::<P>(&state.ring, index, payload_start, &wr.payload);
        }
        let mut owner_opcode = CtrlSeg::owner_opcode_for(kind.opcode, index, shape.wqe_cnt);
        if by_blueflame {
            owner_opcode |= (index & 0xffff) << CtrlSeg::BF_COUNTER_SHIFT;
        }
        self.hand_over(&state.ring, shape, index, wr.wr_id, owner_opcode);
        // `bytes <= max_wqe_bytes`: rounding up to a block cannot wrap.
        Ok(if by_blueflame {
            (bytes.wrapping_add(WQEBB_SIZE - 1) & !(WQEBB_SIZE - 1)) as u32
        } else {
            0
        })
    }
}

/// What the operation of a WR makes of its WQE, worked out before anything is written.
struct WqeKind {
    opcode: SendOpcode,
    imm: u32,
    /// `srcrb_flags` bits the operation itself needs.
    srcrb: u32,
    /// Bytes of the segments between the control segment and the payload.
    fixed_bytes: usize,
}

impl WqeKind {
    #[inline(always)]
    fn of(qp_type: QpType, wr: &SendWr<'_>) -> Result<Self, PostError> {
        let kind = |opcode, imm, fixed_bytes| Self {
            opcode,
            imm,
            srcrb: 0,
            fixed_bytes,
        };
        let raddr = size_of::<RaddrSeg>();
        let atomic = size_of::<RaddrSeg>() + size_of::<AtomicSeg>();
        match (qp_type, wr.ud) {
            (QpType::Ud, Some(_)) => {
                let datagram = size_of::<DatagramSeg>();
                return match wr.op {
                    SendOp::Send => Ok(kind(SendOpcode::Send, 0, datagram)),
                    SendOp::SendWithImm(imm) => Ok(kind(SendOpcode::SendImm, imm, datagram)),
                    _ => Err(PostError::WrongQpType),
                };
            }
            (QpType::Ud, None) | (QpType::Rc, Some(_)) | (QpType::Mlx, _) => {
                return Err(PostError::WrongQpType)
            }
            (QpType::Rc, None) => {}
        }
        Ok(match (wr.op, wr.payload) {
            (SendOp::Send, _) => kind(SendOpcode::Send, 0, 0),
            (SendOp::RdmaWrite(_), _) => kind(SendOpcode::RdmaWrite, 0, raddr),
            (SendOp::SendWithImm(imm), _) => kind(SendOpcode::SendImm, imm, 0),
            (SendOp::SendWithInvalidate(rkey), _) => kind(SendOpcode::SendInval, rkey, 0),
            (SendOp::RdmaWriteWithImm(_, imm), _) => kind(SendOpcode::RdmaWriteImm, imm, raddr),
            (SendOp::RdmaRead(_), Payload::Gather(_)) => kind(SendOpcode::RdmaRead, 0, raddr),
            (SendOp::RdmaRead(_), Payload::Inline(_)) => return Err(PostError::InlineTooLong),
            (SendOp::AtomicCmpSwap { .. }, Payload::Gather([sge])) if sge.length == 8 => {
                kind(SendOpcode::AtomicCmpSwap, 0, atomic)
            }
            (SendOp::AtomicFetchAdd { .. }, Payload::Gather([sge])) if sge.length == 8 => {
                kind(SendOpcode::AtomicFetchAdd, 0, atomic)
            }
            (SendOp::AtomicCmpSwap { .. } | SendOp::AtomicFetchAdd { .. }, _) => {
                return Err(PostError::BadAtomicSge)
            }
            (SendOp::LocalInvalidate { .. }, Payload::Gather([]) | Payload::Inline([])) => Self {
                srcrb: CtrlSeg::STRONG_ORDER,
                ..kind(SendOpcode::LocalInval, 0, size_of::<LocalInvalSeg>())
            },
            (SendOp::FastReg(_), Payload::Gather([]) | Payload::Inline([])) => Self {
                srcrb: CtrlSeg::STRONG_ORDER,
                ..kind(SendOpcode::FastReg, 0, size_of::<FastRegSeg>())
            },
            (SendOp::LocalInvalidate { .. } | SendOp::FastReg(_), _) => {
                return Err(PostError::TooManySges)
            }
        })
    }
}

/// What goes between the control segment and a gather list: a segment of type `Seg`,
/// written field by field from the WR.
trait FixedSegment {
    /// The segment's layout.
    type Seg: FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout;
    /// Writes the segment.
    fn write(self, seg: &mut Self::Seg);
}

/// No segment: SEND and SEND with immediate on an RC QP.
#[derive(
    zerocopy_derive::FromBytes,
    zerocopy_derive::IntoBytes,
    zerocopy_derive::KnownLayout,
    zerocopy_derive::Immutable,
    Clone,
    Copy,
)]
#[repr(C)]
struct NoSegment;

impl FixedSegment for NoSegment {
    type Seg = NoSegment;
    #[inline(always)]
    fn write(self, _seg: &mut NoSegment) {}
}

/// The remote address segment of an RDMA WR.
impl FixedSegment for crate::wr::Remote {
    type Seg = RaddrSeg;
    #[inline(always)]
    fn write(self, seg: &mut RaddrSeg) {
        seg.raddr = Be64::new(self.addr);
        seg.rkey = Be32::new(self.rkey);
        seg.reserved = Be32::new(0);
    }
}

/// The datagram segment of a UD WR.
impl FixedSegment for &crate::wr::UdAddress {
    type Seg = DatagramSeg;
    #[inline(always)]
    fn write(self, seg: &mut DatagramSeg) {
        seg.av = self.av;
        seg.dqpn = Be32::new(self.remote_qpn);
        seg.qkey = Be32::new(self.remote_qkey);
        seg.vlan = Be16::new(self.vlan);
        seg.mac = self.mac;
    }
}

/// The control segment's words a WR's flags decide.
#[derive(Clone, Copy)]
struct ControlWords {
    srcrb: u32,
    imm: u32,
    fence: u8,
}

/// `srcrb_flags` (`srcrb` are the operation's own bits), `imm` and the fence bit of the
/// control segment of `wr`.
#[inline(always)]
fn control_words(shape: &Shape, wr: &SendWr<'_>, srcrb: u32, imm: u32) -> ControlWords {
    // Each flag becomes its control-segment bits by a multiply of its 0-or-1 value: no
    // branch, and no table (which the kernel build would reach by a section-relative
    // relocation that the machine-code comparison between kernels cannot follow).
    let flag = |f: SendFlags| u32::from(wr.flags.contains(f));
    ControlWords {
        srcrb: srcrb
            | (flag(SendFlags::SIGNALED) * CtrlSeg::CQ_UPDATE)
            | (flag(SendFlags::SOLICITED) * CtrlSeg::SOLICITED)
            | shape.signal_all_bits,
        imm,
        fence: flag(SendFlags::FENCE) as u8 * CtrlSeg::FENCE,
    }
}

/// The bytes inline data of `len` takes when it starts at WQE offset `start`: one 4-byte
/// header per segment, a new segment at each 64-byte boundary (`MLX4_INLINE_ALIGN`).
#[inline]
pub(crate) const fn inline_bytes(start: usize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // The first segment's data runs to the next 64-byte boundary; every later segment
    // starts on one, so holds `ALIGN - 4` bytes. Saturating: an end past any WQE size is
    // refused by the caller all the same.
    let header = size_of::<InlineSeg>();
    let first_room = InlineSeg::ALIGN - start.saturating_add(header) % InlineSeg::ALIGN;
    if len <= first_room {
        // `len` is at most 64 here.
        return header.wrapping_add(len);
    }
    let later = len
        .wrapping_sub(first_room)
        .div_ceil(InlineSeg::ALIGN - header);
    len.saturating_add(header.saturating_mul(later.saturating_add(1)))
}

#[inline]
fn access_bits(access: Access) -> u32 {
    let mut flags = FastRegSeg::PERM_LOCAL_READ;
    if access.contains(Access::LOCAL_WRITE) {
        flags |= FastRegSeg::PERM_LOCAL_WRITE;
    }
    if access.contains(Access::REMOTE_READ) {
        flags |= FastRegSeg::PERM_REMOTE_READ;
    }
    if access.contains(Access::REMOTE_WRITE) {
        flags |= FastRegSeg::PERM_REMOTE_WRITE;
    }
    if access.contains(Access::REMOTE_ATOMIC) {
        flags |= FastRegSeg::PERM_ATOMIC;
    }
    flags
}

/// Writes the segments between the control segment and the data, returning the rest.
#[inline(always)]
fn write_fixed_segments<'w>(
    rest: &'w mut [u8],
    wr: &SendWr<'_>,
) -> Result<&'w mut [u8], PostError> {
    fn put<'w, T: zerocopy::IntoBytes + FromBytes + zerocopy::KnownLayout + 'w>(
        rest: &'w mut [u8],
        value: T,
    ) -> Result<&'w mut [u8], PostError> {
        let (seg, rest) = T::mut_from_prefix(rest).map_err(|_| PostError::WqeTooLarge)?;
        *seg = value;
        Ok(rest)
    }
    let raddr = |remote: crate::wr::Remote| RaddrSeg {
        raddr: Be64::new(remote.addr),
        rkey: Be32::new(remote.rkey),
        reserved: Be32::new(0),
    };
    if let Some(ud) = wr.ud {
        return put(
            rest,
            DatagramSeg {
                av: ud.av,
                dqpn: Be32::new(ud.remote_qpn),
                qkey: Be32::new(ud.remote_qkey),
                vlan: Be16::new(ud.vlan),
                mac: ud.mac,
            },
        );
    }
    match wr.op {
        SendOp::Send | SendOp::SendWithImm(_) | SendOp::SendWithInvalidate(_) => Ok(rest),
        SendOp::RdmaWrite(remote)
        | SendOp::RdmaWriteWithImm(remote, _)
        | SendOp::RdmaRead(remote) => put(rest, raddr(remote)),
        SendOp::AtomicCmpSwap {
            remote,
            compare,
            swap,
        } => {
            let rest = put(rest, raddr(remote))?;
            put(
                rest,
                AtomicSeg {
                    swap_add: Be64::new(swap),
                    compare: Be64::new(compare),
                },
            )
        }
        SendOp::AtomicFetchAdd { remote, add } => {
            let rest = put(rest, raddr(remote))?;
            put(
                rest,
                AtomicSeg {
                    swap_add: Be64::new(add),
                    compare: Be64::new(0),
                },
            )
        }
        SendOp::LocalInvalidate { rkey } => put(
            rest,
            LocalInvalSeg {
                reserved1: Be64::new(0),
                mem_key: Be32::new(rkey),
                reserved2: Be32::new(0),
                reserved3: [Be64::new(0); 2],
            },
        ),
        SendOp::FastReg(reg) => put(
            rest,
            FastRegSeg {
                flags: Be32::new(access_bits(reg.access)),
                mem_key: Be32::new(reg.key),
                buf_list: Be64::new(reg.page_list),
                start_addr: Be64::new(reg.iova),
                reg_len: Be64::new(reg.length),
                offset: Be32::new(0),
                page_size: Be32::new(u32::from(reg.page_shift)),
                reserved: [Be32::new(0); 2],
            },
        ),
    }
}

/// Writes gather entries or inline data at WQE offset `start` (`rest` begins there),
/// except the first word of a segment that begins a 64-byte block: the device's
/// read-ahead takes a block whose first word is not the stamp as valid, so those words
/// are written afterwards, each on its own after `dma_wmb`, by [`write_block_heads`].
/// Returns whether it left any such word for it.
#[inline(always)]
fn write_payload(rest: &mut [u8], start: usize, payload: &Payload<'_>) -> Result<bool, PostError> {
    match payload {
        Payload::Gather(sges) => {
            let (segs, _) = <[DataSeg]>::mut_from_prefix_with_elems(rest, sges.len())
                .map_err(|_| PostError::WqeTooLarge)?;
            let mut held_back = false;
            // A bounded index (not `enumerate`, whose counter has an overflow check).
            for ((seg, sge), i) in segs.iter_mut().zip(sges.iter()).zip(0..sges.len()) {
                if sge.length > DataSeg::MAX_LENGTH {
                    return Err(PostError::SgeTooLong);
                }
                seg.lkey = Be32::new(sge.lkey);
                seg.addr = Be64::new(sge.addr);
                if starts_block(segment_offset(start, i)) {
                    held_back = true;
                } else {
                    seg.byte_count = Be32::new(gather_byte_count(sge.length));
                }
            }
            Ok(held_back)
        }
        Payload::Inline(data) => {
            let mut pos = 0usize;
            let mut left: &[u8] = data;
            let mut held_back = false;
            while !left.is_empty() {
                // Offsets inside one WQE (at most 1 KiB) plus lengths of data in memory:
                // wrapping never happens, and would only make `get_mut` refuse.
                let header = pos;
                pos = pos.wrapping_add(size_of::<InlineSeg>());
                let room = InlineSeg::ALIGN - start.wrapping_add(pos) % InlineSeg::ALIGN;
                let (chunk, tail) = left.split_at(room.min(left.len()));
                rest.get_mut(pos..pos.wrapping_add(chunk.len()))
                    .ok_or(PostError::WqeTooLarge)?
                    .copy_from_slice(chunk);
                pos = pos.wrapping_add(chunk.len());
                left = tail;
                if starts_block(start.wrapping_add(header)) {
                    held_back = true;
                } else {
                    let (seg, _) = InlineSeg::mut_from_prefix(
                        rest.get_mut(header..).ok_or(PostError::WqeTooLarge)?,
                    )
                    .map_err(|_| PostError::WqeTooLarge)?;
                    seg.byte_count = Be32::new(InlineSeg::INLINE | chunk.len() as u32);
                }
            }
            Ok(held_back)
        }
    }
}

/// Writes `data` as inline segments into `payload`, which starts at WQE offset `start`
/// and holds exactly their bytes, except the headers that begin a 64-byte block (see
/// [`write_payload`]); `Some(true)` if it left any for [`write_block_heads`].
#[inline(always)]
fn write_inline_segments(payload: &mut [u8], start: usize, data: &[u8]) -> Option<bool> {
    let mut held_back = false;
    let mut rest = payload;
    let mut left = data;
    let mut offset = start;
    while !left.is_empty() {
        // (`split_first_chunk_mut`, not `split_at_mut_checked`: the oldest kernel's Rust
        // is 1.78.)
        let (header, body) = rest.split_first_chunk_mut::<{ size_of::<InlineSeg>() }>()?;
        // Offsets inside one WQE (at most 1 KiB): wrapping never happens.
        let room =
            InlineSeg::ALIGN - offset.wrapping_add(size_of::<InlineSeg>()) % InlineSeg::ALIGN;
        let take = room.min(left.len());
        let (chunk, tail) = left.split_at(take);
        if take > body.len() {
            return None;
        }
        // Within `body`: checked above, so the split has no panic path left.
        let (into, after) = body.split_at_mut(take);
        into.copy_from_slice(chunk);
        if starts_block(offset) {
            held_back = true;
        } else {
            header.copy_from_slice(&(InlineSeg::INLINE | take as u32).to_be_bytes());
        }
        offset = offset
            .wrapping_add(size_of::<InlineSeg>())
            .wrapping_add(take);
        rest = after;
        left = tail;
    }
    Some(held_back)
}

/// The inline headers that begin a 64-byte block, held back by
/// [`write_inline_segments`] for `len` bytes of data from WQE offset `start`: each on its
/// own after `dma_wmb`, as [`write_block_heads`] does.
#[inline(always)]
fn write_inline_heads<P: Platform>(ring: &P::Ring, index: u32, start: usize, len: usize) {
    let mut offset = start;
    let mut left = len;
    while left > 0 {
        // Offsets inside one WQE (at most 1 KiB): wrapping never happens; `write_word`
        // bounds-checks.
        let data = offset.wrapping_add(size_of::<InlineSeg>());
        let take = (InlineSeg::ALIGN - data % InlineSeg::ALIGN).min(left);
        if starts_block(offset) {
            P::dma_wmb();
            ring.write_word(index, offset, InlineSeg::INLINE | take as u32);
        }
        offset = data.wrapping_add(take);
        // `take` is at most `left`.
        left = left.wrapping_sub(take);
    }
}

/// Whether WQE offset `offset` begins a 64-byte block. (A mask, not `is_multiple_of`,
/// which is newer than the oldest kernel's Rust.)
#[inline]
fn starts_block(offset: usize) -> bool {
    offset & (WQEBB_SIZE - 1) == 0
}

/// The WQE offset of gather entry `i` when the entries start at `start`. An offset inside
/// one WQE (at most 1 KiB) plus a slice index times 16 cannot wrap; wrapping arithmetic
/// says so without a panic path in the kernel build (which checks overflow).
#[inline]
fn segment_offset(start: usize, i: usize) -> usize {
    start.wrapping_add(i.wrapping_mul(size_of::<DataSeg>()))
}

/// `byte_count` of a gather entry: zero length is written as [`DataSeg::ZERO_LENGTH`].
#[inline]
fn gather_byte_count(length: u32) -> u32 {
    if length == 0 {
        DataSeg::ZERO_LENGTH
    } else {
        length
    }
}

/// Writes the first word of each payload segment that begins a 64-byte block, which
/// [`write_payload`] left out, through `write_word` after `dma_wmb`: never through the
/// `&mut` view, across which the compiler may move stores. (The kernel's `set_data_seg`
/// and rdma-core's do the same with a plain store after `wmb()`.)
fn write_block_heads<P: Platform>(ring: &P::Ring, index: u32, start: usize, payload: &Payload<'_>) {
    match payload {
        Payload::Gather(sges) => {
            for (i, sge) in sges.iter().enumerate() {
                let offset = segment_offset(start, i);
                if starts_block(offset) {
                    P::dma_wmb();
                    ring.write_word(index, offset, gather_byte_count(sge.length));
                }
            }
        }
        Payload::Inline(data) => {
            let mut offset = start;
            let mut left = data.len();
            while left > 0 {
                // As in `write_payload`: offsets inside one WQE, which `write_word`
                // bounds-checks.
                let header = offset;
                offset = offset.wrapping_add(size_of::<InlineSeg>());
                let chunk = (InlineSeg::ALIGN - offset % InlineSeg::ALIGN).min(left);
                offset = offset.wrapping_add(chunk);
                left -= chunk;
                if starts_block(header) {
                    P::dma_wmb();
                    ring.write_word(index, header, InlineSeg::INLINE | chunk as u32);
                }
            }
        }
    }
}
