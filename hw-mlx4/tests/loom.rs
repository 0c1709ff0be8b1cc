//! loom models of the fast path's ordering protocols, run on the fast path's own code.
//!
//! `LoomPlatform` implements the platform traits over loom's atomics and cells: each ring
//! entry's body is a loom `UnsafeCell` (so loom reports any read of a body that is not
//! ordered after its writer), and its ownership word is a loom atomic. A device thread
//! written here plays the hardware's side. The models check:
//!
//! - the CQ: owner bit, consumer index and wrap-around between the device writing CQEs
//!   and the driver polling them (`cq_owner_bit_and_consumer_index_across_a_wrap`);
//! - arming: a CQ armed after polling never misses a completion that follows
//!   (`arming_after_poll_never_loses_an_event`);
//! - the SQ: a poster and a completer (whose thread also plays the device: doorbell,
//!   ownership, CQE), with the SQ one deep so that each post waits for the completer's
//!   tail and reuses what it released (`send_queue_handoff_between_poster_and_completer`).

use hw_mlx4::fastpath::cq::{CompletionQueue, CqDoorbells};
use hw_mlx4::fastpath::platform::{
    BlueFlameRegister, DmaRing, DoorbellRecord, Platform, SharedCounter, UarPage, WrIdSlot,
};
use hw_mlx4::fastpath::qp::{QpCompletions, QueuePairState};
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, SendQueueCaps, SendQueueState};
use hw_mlx4::wire::{ArmCommand, Be16, Be32, CqDoorbell, Cqe, CtrlSeg, SendOpcode};
use hw_mlx4::wr::{Completion, Payload, SendFlags, SendOp, SendWr, WcOpcode, WcStatus};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::Mutex;
// std's Arc, not loom's: the fixtures are leaked for 'static threads, and what matters
// to the model is the atomics and cells inside, which loom tracks either way.
use std::sync::Arc;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

struct LoomPlatform;

struct Entry {
    body: UnsafeCell<Vec<u8>>,
    owner: AtomicU32,
}

struct RingInner {
    entries: Vec<Entry>,
    log_entries: u32,
    entry_shift: u32,
    /// Where the ownership word lives: 0 for WQEs, 28 for 32-byte CQEs.
    owner_offset: usize,
}

/// loom's cells are not `Sync`; the ring is shared across loom threads on purpose, and
/// loom checks every access to them.
#[derive(Clone)]
struct LoomRing(Arc<RingInner>);

impl LoomRing {
    fn new(log_entries: u32, entry_shift: u32, owner_offset: usize) -> Self {
        let entries = (0..1 << log_entries)
            .map(|_| Entry {
                body: UnsafeCell::new(vec![0; 1 << entry_shift]),
                owner: AtomicU32::new(0),
            })
            .collect();
        #[allow(clippy::arc_with_non_send_sync)]
        Self(Arc::new(RingInner {
            entries,
            log_entries,
            entry_shift,
            owner_offset,
        }))
    }

    fn entry(&self, index: u32) -> &Entry {
        &self.0.entries[(index & ((1 << self.0.log_entries) - 1)) as usize]
    }
}

impl DmaRing for LoomRing {
    fn log_entries(&self) -> u32 {
        self.0.log_entries
    }
    fn entry_shift(&self) -> u32 {
        self.0.entry_shift
    }
    unsafe fn with_entry<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let entry = self.entry(index);
        // SAFETY: loom checks the claim the caller makes: any write of this body not
        // ordered before this read is reported.
        let mut copy = entry.body.with(|body| unsafe { (*body).clone() });
        // The ownership word lives in the atomic only; readers see it in place, as in
        // real memory, without the writer having to mirror it into the tracked body.
        let offset = self.0.owner_offset;
        copy[offset..offset + 4]
            .copy_from_slice(&entry.owner.load(Ordering::Relaxed).to_be_bytes());
        f(&copy)
    }
    unsafe fn with_entry_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: as above, for exclusive access.
        self.entry(index)
            .body
            .with_mut(|body| f(unsafe { &mut *body }))
    }
    fn read_word(&self, index: u32, offset: usize) -> u32 {
        assert_eq!(
            offset, self.0.owner_offset,
            "the fast path reads only ownership words"
        );
        self.entry(index).owner.load(Ordering::Relaxed)
    }
    fn write_word(&self, index: u32, offset: usize, value: u32) {
        let entry = self.entry(index);
        if offset == self.0.owner_offset {
            // Relaxed, like WRITE_ONCE: the ordering must come from the fast path's barrier.
            entry.owner.store(value, Ordering::Relaxed);
        } else {
            // A block head written after its body: a tracked write of the body.
            // SAFETY: the writer owns the entry; loom checks every access to the cell.
            entry.body.with_mut(|body| unsafe {
                (&mut *body)[offset..offset + 4].copy_from_slice(&value.to_be_bytes())
            });
        }
    }
}

#[derive(Clone)]
struct LoomRecord(Arc<AtomicU32>);

impl DoorbellRecord for LoomRecord {
    fn write_release(&self, value: u32) {
        self.0.store(value, Ordering::Release);
    }
    fn read_acquire(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// The device's view of doorbells: the hardware handles each one in order.
#[derive(Default)]
struct DeviceState {
    send_doorbells: u32,
    /// The last arm: command, sequence number and the consumer index it named.
    armed: Option<(ArmCommand, u32, u32)>,
    cq_producer: u32,
    events: u32,
}

#[derive(Clone)]
struct LoomUar(Arc<Mutex<DeviceState>>);

impl LoomUar {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(DeviceState::default())))
    }

    /// The device wrote a CQE: raise the event if armed.
    fn cqe_written(&self) {
        let mut state = self.0.lock().unwrap();
        state.cq_producer += 1;
        if state.armed.take().is_some() {
            state.events += 1;
        }
    }
}

impl UarPage for LoomUar {
    fn ring_send_doorbell(&self, _value: u32) {
        self.0.lock().unwrap().send_doorbells += 1;
    }
    fn ring_cq_doorbell(&self, doorbell: CqDoorbell) {
        let mut state = self.0.lock().unwrap();
        let ci = doorbell.cons_index.get();
        let command = doorbell.command().expect("arm command");
        // The hardware's rule: completions past the index the arm names fire at once.
        if state.cq_producer != ci {
            state.events += 1;
        } else {
            state.armed = Some((command, doorbell.arm_sn(), ci));
        }
    }
    fn ring_eq_doorbell(&self, _eqn: u32, _word: u32) {}
}

struct LoomCounter(AtomicU32);

impl SharedCounter for LoomCounter {
    fn new(value: u32) -> Self {
        Self(AtomicU32::new(value))
    }
    fn load_acquire(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
    fn store_release(&self, value: u32) {
        self.0.store(value, Ordering::Release)
    }
}

struct LoomWrId(AtomicU64);

impl WrIdSlot for LoomWrId {
    fn new(value: u64) -> Self {
        Self(AtomicU64::new(value))
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed)
    }
}

/// The loom models post by doorbell only.
enum NoBlueFlame {}

impl BlueFlameRegister for NoBlueFlame {
    fn buffer_size(&self) -> usize {
        match *self {}
    }
    fn copy_wqe(&self, _buffer: usize, _wqe: &[u8]) {
        match *self {}
    }
}

impl Platform for LoomPlatform {
    type Ring = LoomRing;
    type DbRecord = LoomRecord;
    type Uar = LoomUar;
    type BlueFlame = NoBlueFlame;
    type Counter = LoomCounter;
    type WrId = LoomWrId;
    type WrIdTable = Vec<LoomWrId>;

    fn dma_wmb() {
        fence(Ordering::Release);
    }
    fn dma_rmb() {
        fence(Ordering::Acquire);
    }
    fn wmb() {
        fence(Ordering::Release);
    }
}

const QPN: u32 = 0x48;
const CQN: u32 = 0x80;

fn wr_ids(entries: u32) -> Vec<LoomWrId> {
    (0..entries).map(|_| LoomWrId::new(0)).collect()
}

fn record() -> LoomRecord {
    LoomRecord(Arc::new(AtomicU32::new(0)))
}

/// A QP whose SQ holds one outstanding WR at a time: 1 KiB WQEs keep 3 of 4 entries as
/// read-ahead headroom, so every post past the first waits for a completion.
fn small_qp() -> QueuePairState<LoomPlatform> {
    let sq_ring = LoomRing::new(2, 10, 0);
    let caps = SendQueueCaps {
        max_sge: 1,
        max_inline: 0,
        signal_all: false,
    };
    let sq = SendQueueState::new(sq_ring, wr_ids(4), QpType::Rc, caps).expect("SQ");
    assert_eq!(sq.max_post(), 1);
    let rq = RecvQueueState::new(LoomRing::new(1, 4, 0), wr_ids(2), record()).expect("RQ");
    QueuePairState::new(QPN, sq, rq)
}

/// A QP with room for 31 outstanding WRs (64-byte WQEs, 33 kept as headroom).
fn deep_qp() -> QueuePairState<LoomPlatform> {
    let caps = SendQueueCaps {
        max_sge: 1,
        max_inline: 0,
        signal_all: false,
    };
    let sq = SendQueueState::new(LoomRing::new(6, 6, 0), wr_ids(64), QpType::Rc, caps).expect("SQ");
    let rq = RecvQueueState::new(LoomRing::new(1, 4, 0), wr_ids(2), record()).expect("RQ");
    QueuePairState::new(QPN, sq, rq)
}

fn cq_parts(log_entries: u32) -> (LoomRing, CqDoorbells<LoomPlatform>) {
    let ring = LoomRing::new(log_entries, 5, Cqe::OWNER_WORD_OFFSET);
    (
        ring,
        CqDoorbells {
            set_ci: record(),
            arm: record(),
        },
    )
}

/// The device writes a send CQE for WQE `wqe`: body first, then (after a release fence)
/// the word with the owner bit, as the model and the hardware do.
fn device_write_cqe(ring: &LoomRing, producer: u32, wqe: u32, byte_cnt: u32) {
    let entries = 1 << ring.log_entries();
    let mut cqe = Cqe::new_zeroed();
    cqe.vlan_my_qpn = Be32::new(QPN);
    cqe.byte_cnt = Be32::new(byte_cnt);
    cqe.wqe_index = Be16::new(wqe as u16);
    // SAFETY: the device owns the entry: the consumer index passed it (checked by caller).
    unsafe {
        ring.with_entry_mut(producer, |entry| {
            entry[..Cqe::OWNER_WORD_OFFSET]
                .copy_from_slice(&cqe.as_bytes()[..Cqe::OWNER_WORD_OFFSET])
        })
    };
    let owner = if producer & entries != 0 {
        Cqe::OWNER
    } else {
        0
    };
    fence(Ordering::Release);
    ring.write_word(
        producer,
        Cqe::OWNER_WORD_OFFSET,
        u32::from(owner | Cqe::IS_SEND | SendOpcode::RdmaRead as u8),
    );
}

/// Waits (by yielding to loom) until the CQ has room for one more CQE.
fn device_wait_for_room(set_ci: &LoomRecord, producer: u32, entries: u32) {
    while producer.wrapping_sub(set_ci.read_acquire() & CqDoorbell::CI_MASK) >= entries {
        loom::thread::yield_now();
    }
}

fn leak<T>(value: T) -> &'static mut T {
    Box::leak(Box::new(value))
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn cq_owner_bit_and_consumer_index_across_a_wrap() {
    model(|| {
        // Three CQEs through a CQ of two: the third reuses entry 0 only after the driver
        // has published a consumer index past it.
        let uar: &'static LoomUar = leak(LoomUar::new());
        let qp = leak(deep_qp());
        let (ring, doorbells) = cq_parts(1);
        let device_ring = ring.clone();
        let device_ci = doorbells.set_ci.clone();
        let (mut sq, _, done) = qp.split(uar);
        let mut cq = CompletionQueue::<LoomPlatform>::new(CQN, ring, doorbells).expect("CQ");
        let wrs: Vec<SendWr> = (0..3)
            .map(|i| {
                SendWr::new(
                    100 + i,
                    SendOp::Send,
                    Payload::Gather(&[]),
                    SendFlags::SIGNALED,
                )
            })
            .collect();
        sq.post(&wrs).expect("post");

        let device = loom::thread::spawn(move || {
            for producer in 0..3u32 {
                device_wait_for_room(&device_ci, producer, 2);
                device_write_cqe(&device_ring, producer, producer, 1000 + producer);
            }
        });
        let mut got = Vec::new();
        let mut out = [Completion::EMPTY; 2];
        while got.len() < 3 {
            match cq.poll(&done, &mut out) {
                Ok(0) => loom::thread::yield_now(),
                Ok(n) => got.extend(out[..n].iter().map(|c| (c.wr_id, c.byte_len))),
                Err(error) => panic!("poll: {error:?}"),
            }
        }
        device.join().unwrap();
        assert_eq!(got, [(100, 1000), (101, 1001), (102, 1002)]);
    });
}

#[test]
fn arming_after_poll_never_loses_an_event() {
    model(|| {
        let uar: &'static LoomUar = leak(LoomUar::new());
        let qp = leak(small_qp());
        let (ring, doorbells) = cq_parts(1);
        let device_ring = ring.clone();
        let device_uar = uar.clone();
        let (mut sq, _, done) = qp.split(uar);
        let mut cq = CompletionQueue::<LoomPlatform>::new(CQN, ring, doorbells).expect("CQ");
        sq.post(&[SendWr::new(
            7,
            SendOp::Send,
            Payload::Gather(&[]),
            SendFlags::SIGNALED,
        )])
        .expect("post");

        let device = loom::thread::spawn(move || {
            device_write_cqe(&device_ring, 0, 0, 1);
            device_uar.cqe_written();
        });
        // The driver's event loop: poll, arm, and rely on the event for anything later.
        let mut out = [Completion::EMPTY; 2];
        let polled = cq.poll(&done, &mut out).expect("poll");
        cq.arm(uar, ArmCommand::Next);
        device.join().unwrap();
        let events = uar.0.lock().unwrap().events;
        // Whatever the interleaving: either the driver saw the completion before arming,
        // or the arm produced an event for it.
        assert!(
            polled == 1 || events == 1,
            "polled {polled}, events {events}: a lost wakeup"
        );
        if polled == 0 {
            assert_eq!(cq.poll(&done, &mut out).expect("poll"), 1);
            assert_eq!(
                (out[0].wr_id, out[0].status, out[0].opcode),
                (7, WcStatus::Success, WcOpcode::RdmaRead)
            );
        }
    });
}

#[test]
fn send_queue_handoff_between_poster_and_completer() {
    model(|| {
        let uar: &'static LoomUar = leak(LoomUar::new());
        let qp = leak(small_qp());
        let sq_ring = qp.send_state().ring().clone();
        let (ring, doorbells) = cq_parts(1);
        let device_cq = ring.clone();
        let (mut sq, _, done): (_, _, QpCompletions<'static, LoomPlatform>) = qp.split(uar);
        let mut cq = CompletionQueue::<LoomPlatform>::new(CQN, ring, doorbells).expect("CQ");

        // The completer's thread, which also plays the device. Like the hardware once a
        // doorbell has woken it, the device fetches by owner bit alone, so nothing but
        // the fast path's barrier orders a WQE's body before its ownership word.
        let completer = loom::thread::spawn(move || {
            let mut consumer = 0u32;
            let mut got = Vec::new();
            let mut out = [Completion::EMPTY; 1];
            while got.len() < 2 {
                let owner = sq_ring.read_word(consumer, 0) & CtrlSeg::OWNER != 0;
                if owner == (consumer & 4 != 0) {
                    fence(Ordering::Acquire);
                    // SAFETY: handed over by its owner bit; loom checks the ordering.
                    let imm = unsafe {
                        sq_ring.with_entry(consumer, |wqe| {
                            CtrlSeg::ref_from_prefix(wqe).ok().map(|(c, _)| c.imm.get())
                        })
                    };
                    assert_eq!(
                        imm,
                        Some(0x1000 + consumer),
                        "the device read a stale WQE body"
                    );
                    device_write_cqe(&device_cq, consumer, consumer, 0);
                    consumer += 1;
                }
                match cq.poll(&done, &mut out) {
                    Ok(0) => loom::thread::yield_now(),
                    Ok(_) => got.push(out[0].wr_id),
                    Err(error) => panic!("poll: {error:?}"),
                }
            }
            got
        });
        // The poster: the second WR waits for the first's completion (the SQ holds one),
        // then reuses the wr_id table and ring the completer has just released.
        for i in 0..2u32 {
            let wr = SendWr::new(
                u64::from(i) + 1,
                SendOp::SendWithImm(0x1000 + i),
                Payload::Gather(&[]),
                SendFlags::SIGNALED,
            );
            while let Err(failure) = sq.post(&[wr]) {
                assert_eq!(failure.error, hw_mlx4::wr::PostError::QueueFull);
                loom::thread::yield_now();
            }
        }
        assert_eq!(completer.join().unwrap(), [1, 2]);
    });
}
