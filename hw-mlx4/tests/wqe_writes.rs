//! What `post` writes into a send WQE, and in which order.
//!
//! A recording platform logs every write the fast path makes to queue memory: the
//! WQE body through its `&mut` view, single words through `write_word`, and each
//! `dma_wmb`. That shows what single-threaded tests of the final bytes cannot: a WQE
//! spanning several 64-byte blocks keeps each later block's first word (the stamp) until
//! the rest of the WQE is written, then writes it alone after a barrier, before the
//! ownership word (the device's read-ahead takes a block whose first word is not the
//! stamp as valid: the kernel's `set_data_seg` and `mlx4_ib_post_send`'s inline path).
//! Also the fast registration segment's access bits, and the gather length limit.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64};

use hw_mlx4::fastpath::platform::{DmaRing, Platform};
use hw_mlx4::fastpath::qp::QueuePairState;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueue, SendQueueCaps, SendQueueState};
use hw_mlx4::model::{wr_id_table, HostBlueFlame, HostDoorbellRecord, HostRing, HostUar};
use hw_mlx4::wire::{DataSeg, FastRegSeg, InlineSeg, STAMP_WORD};
use hw_mlx4::wr::{Access, FastReg, Payload, PostError, Remote, SendFlags, SendOp, SendWr, Sge};

#[derive(Clone, Debug, PartialEq)]
enum Write {
    /// The WQE as it stands after a write through its `&mut` view.
    Body {
        index: u32,
        bytes: Vec<u8>,
    },
    Word {
        index: u32,
        offset: usize,
        value: u32,
    },
    DmaWmb,
}

thread_local! {
    static LOG: RefCell<Vec<Write>> = const { RefCell::new(Vec::new()) };
}

fn log(write: Write) {
    LOG.with(|log| log.borrow_mut().push(write));
}

fn take_log() -> Vec<Write> {
    LOG.with(|log| std::mem::take(&mut *log.borrow_mut()))
}

struct Recording;

#[derive(Clone)]
struct RecordingRing(HostRing);

impl DmaRing for RecordingRing {
    fn log_entries(&self) -> u32 {
        self.0.log_entries()
    }
    fn entry_shift(&self) -> u32 {
        self.0.entry_shift()
    }
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: the caller's claim, passed on.
        unsafe { self.0.with_entry(index, f) }
    }
    unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: the caller's claim, passed on.
        let result = unsafe { self.0.with_entry_mut(index, f) };
        // SAFETY: the caller owns this entry (its claim above), and `f` has returned, so
        // no `&mut` view of it is alive while the snapshot reads it.
        let bytes = unsafe { self.0.with_entry(index, <[u8]>::to_vec) };
        log(Write::Body { index, bytes });
        result
    }
    fn read_word(&self, index: u32, offset: usize) -> u32 {
        self.0.read_word(index, offset)
    }
    fn write_word(&self, index: u32, offset: usize, value: u32) {
        log(Write::Word {
            index,
            offset,
            value,
        });
        self.0.write_word(index, offset, value);
    }
}

impl Platform for Recording {
    type Ring = RecordingRing;
    type DbRecord = HostDoorbellRecord;
    type Uar = HostUar;
    type BlueFlame = HostBlueFlame;
    type Counter = AtomicU32;
    type WrId = AtomicU64;
    type WrIdTable = Box<[AtomicU64]>;

    fn dma_wmb() {
        log(Write::DmaWmb);
    }
    fn dma_rmb() {}
    fn wmb() {}
}

const SHIFT: u32 = 8;
const LOG_ENTRIES: u32 = 5;

/// An RC QP whose send queue has 32 WQEs of 256 bytes (four 64-byte blocks each).
fn queue_pair() -> QueuePairState<Recording> {
    let caps = SendQueueCaps {
        max_sge: 14,
        max_inline: 150,
        signal_all: false,
    };
    let ring = RecordingRing(HostRing::new(LOG_ENTRIES, SHIFT));
    let sq = SendQueueState::new(ring, wr_id_table(1 << LOG_ENTRIES), QpType::Rc, caps)
        .expect("send queue");
    let ring = RecordingRing(HostRing::new(2, 4));
    let rq = RecvQueueState::new(ring, wr_id_table(4), HostDoorbellRecord::new())
        .expect("receive queue");
    take_log();
    QueuePairState::new(0x48, sq, rq)
}

fn sges(n: u32) -> Vec<Sge> {
    (0..n)
        .map(|i| Sge {
            addr: 0x10_0000 + u64::from(i) * 0x1000,
            length: 100 + i,
            lkey: 0x500 + i,
        })
        .collect()
}

/// Posts `wr` alone as WQE `index` and returns the writes to that WQE, in order.
fn post_one(sq: &mut SendQueue<'_, Recording>, wr: SendWr<'_>, index: u32) -> Vec<Write> {
    sq.post(&[wr]).expect("post");
    // Other WQEs' writes (the stamping of the one `spare` ahead) are not this WQE's.
    let mut barrier_pending = false;
    let mut ours = Vec::new();
    for write in take_log() {
        match write {
            Write::DmaWmb => barrier_pending = true,
            Write::Body { index: i, .. } | Write::Word { index: i, .. } if i == index => {
                if std::mem::take(&mut barrier_pending) {
                    ours.push(Write::DmaWmb);
                }
                ours.push(write);
            }
            _ => barrier_pending = false,
        }
    }
    ours
}

/// Checks the order of one WQE's writes: one body write that leaves the first word of
/// each of `heads` (64-byte blocks after the first) stamped, then each of those words
/// alone after a barrier, with `values`, then the ownership word after a barrier.
fn check_order(writes: &[Write], heads: &[(usize, u32)]) {
    let (body, rest) = writes.split_first().expect("writes");
    let Write::Body { bytes, .. } = body else {
        panic!("the body is written first: {writes:?}");
    };
    for (offset, _) in heads {
        let word = u32::from_be_bytes(bytes[*offset..offset + 4].try_into().unwrap());
        assert_eq!(
            word, STAMP_WORD,
            "block head at {offset} written with the body"
        );
    }
    let mut expected = Vec::new();
    for (offset, value) in heads {
        expected.push(Write::DmaWmb);
        expected.push(Write::Word {
            index: 0,
            offset: *offset,
            value: *value,
        });
    }
    let got: Vec<Write> = rest
        .iter()
        .map(|w| match w {
            Write::Word { offset, value, .. } => Write::Word {
                index: 0,
                offset: *offset,
                value: *value,
            },
            other => other.clone(),
        })
        .collect();
    assert!(got.len() >= expected.len() + 2, "{writes:?}");
    assert_eq!(
        got[..expected.len()],
        expected[..],
        "block heads, in order, each after a barrier"
    );
    let tail = &got[expected.len()..];
    assert_eq!(tail.len(), 2, "then only the ownership word: {tail:?}");
    assert_eq!(tail[0], Write::DmaWmb);
    assert!(matches!(tail[1], Write::Word { offset: 0, .. }), "{tail:?}");
}

#[test]
fn gather_entries_that_begin_a_block_are_written_last() {
    let uar = HostUar::new();
    let mut qp = queue_pair();
    let (mut sq, _, _) = qp.split(&uar);
    // SEND: entries from offset 16; those at 64 and 128 begin blocks.
    let list = sges(10);
    let wr = SendWr::new(1, SendOp::Send, Payload::Gather(&list), SendFlags::SIGNALED);
    let writes = post_one(&mut sq, wr, 0);
    check_order(&writes, &[(64, list[3].length), (128, list[7].length)]);
    // RDMA WRITE: entries from 32, after the remote address; blocks at 64, 128, 192.
    let list = sges(12);
    let remote = Remote {
        addr: 0x9000,
        rkey: 0x77,
    };
    let wr = SendWr::new(
        2,
        SendOp::RdmaWrite(remote),
        Payload::Gather(&list),
        SendFlags::SIGNALED,
    );
    let writes = post_one(&mut sq, wr, 1);
    check_order(
        &writes,
        &[
            (64, list[2].length),
            (128, list[6].length),
            (192, list[10].length),
        ],
    );
    // Every other entry's length is in the body as written.
    let Some(Write::Body { bytes, .. }) = writes.first() else {
        unreachable!()
    };
    for (i, sge) in list.iter().enumerate() {
        let offset = 32 + 16 * i;
        if offset % 64 != 0 {
            let word = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap());
            assert_eq!(word, sge.length, "entry {i}");
        }
    }
}

#[test]
fn inline_segments_that_begin_a_block_are_written_last() {
    let uar = HostUar::new();
    let mut qp = queue_pair();
    let (mut sq, _, _) = qp.split(&uar);
    // 150 bytes from offset 16: 44 to the first boundary, 60, then 46; the segment
    // headers at 64 and 128 begin blocks.
    let data: Vec<u8> = (0..150u32).map(|i| (i * 7 + 3) as u8).collect();
    let wr = SendWr::new(1, SendOp::Send, Payload::Inline(&data), SendFlags::SIGNALED);
    let writes = post_one(&mut sq, wr, 0);
    check_order(
        &writes,
        &[(64, InlineSeg::INLINE | 60), (128, InlineSeg::INLINE | 46)],
    );
    let Some(Write::Body { bytes, .. }) = writes.first() else {
        unreachable!()
    };
    let header = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert_eq!(
        header,
        InlineSeg::INLINE | 44,
        "the first header, in the body"
    );
}

#[test]
fn fast_registration_carries_each_access_right() {
    let uar = HostUar::new();
    let mut qp = queue_pair();
    let (mut sq, _, _) = qp.split(&uar);
    let rights = [
        (Access::LOCAL_WRITE, FastRegSeg::PERM_LOCAL_WRITE),
        (Access::REMOTE_READ, FastRegSeg::PERM_REMOTE_READ),
        (Access::REMOTE_WRITE, FastRegSeg::PERM_REMOTE_WRITE),
        (Access::REMOTE_ATOMIC, FastRegSeg::PERM_ATOMIC),
    ];
    let all = rights
        .iter()
        .fold(Access::empty(), |all, (access, _)| all | *access);
    let cases = rights
        .iter()
        .copied()
        .chain([(Access::empty(), 0)])
        .chain([(all, rights.iter().fold(0, |bits, (_, perm)| bits | perm))]);
    for (index, (access, perm)) in (0u32..).zip(cases) {
        let reg = FastReg {
            key: 0x1234_5600 | index,
            page_list: 0x20_0000,
            iova: 0x7000_0000,
            length: 0x4000,
            page_shift: 12,
            access,
        };
        let wr = SendWr::new(
            1,
            SendOp::FastReg(reg),
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        );
        let writes = post_one(&mut sq, wr, index);
        let Some(Write::Body { bytes, .. }) = writes.first() else {
            panic!("{writes:?}")
        };
        // The segment follows the 16-byte control segment; its flags are its first word.
        let flags = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        assert_eq!(flags, FastRegSeg::PERM_LOCAL_READ | perm, "{access:?}");
    }
}

#[test]
fn a_gather_entry_may_be_as_long_as_the_segment_can_say() {
    let uar = HostUar::new();
    let mut qp = queue_pair();
    let (mut sq, _, _) = qp.split(&uar);
    let longest = [Sge {
        addr: 0,
        length: DataSeg::MAX_LENGTH,
        lkey: 1,
    }];
    let wr = SendWr::new(
        1,
        SendOp::Send,
        Payload::Gather(&longest),
        SendFlags::SIGNALED,
    );
    sq.post(&[wr]).expect("2 GiB - 1 is a length");
    let too_long = [Sge {
        length: DataSeg::MAX_LENGTH + 1,
        ..longest[0]
    }];
    let wr = SendWr::new(
        2,
        SendOp::Send,
        Payload::Gather(&too_long),
        SendFlags::SIGNALED,
    );
    let failure = sq.post(&[wr]).expect_err("2 GiB is not");
    assert_eq!(failure.error, PostError::SgeTooLong);
    take_log();
}
