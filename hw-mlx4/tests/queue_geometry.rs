//! Queues report what they were created with: a receive queue one WQE per ring entry
//! and as many 16-byte scatter elements as an entry holds (`mlx4_ib`'s `rq.max_gs`), an
//! event queue its number.

use hw_mlx4::fastpath::eq::EventQueue;
use hw_mlx4::fastpath::recv::RecvQueueState;
use hw_mlx4::fastpath::send::{QpType, QueueConfigError, SendQueueCaps, SendQueueState};
use hw_mlx4::model::{wr_id_table, HostDoorbellRecord, HostPlatform, HostRing, HostUar};

#[test]
fn a_receive_queue_reports_its_entries_and_scatter_elements() {
    // (log2 entries, log2 entry size, entries, scatter elements)
    for (log_entries, shift, entries, max_sge) in [(0, 4, 1, 1), (5, 6, 32, 4), (9, 8, 512, 16)] {
        let rq = RecvQueueState::<HostPlatform>::new(
            HostRing::new(log_entries, shift),
            wr_id_table(entries),
            HostDoorbellRecord::new(),
        )
        .expect("receive queue");
        assert_eq!((rq.entries(), rq.max_sge()), (entries, max_sge));
    }
}

#[test]
fn an_event_queue_reports_its_number() {
    let uar = HostUar::new();
    for eqn in [2, 17, 255] {
        let eq = EventQueue::<HostPlatform>::new(eqn, HostRing::new(3, 5), &uar).expect("EQ");
        assert_eq!(eq.eqn(), eqn);
    }
}

/// Whether a send queue of 64 WQEs of `1 << shift` bytes takes `caps`.
fn send_queue_takes(qp_type: QpType, shift: u32, max_sge: u32, max_inline: u32) -> bool {
    let caps = SendQueueCaps {
        max_sge,
        max_inline,
        signal_all: false,
    };
    match SendQueueState::<HostPlatform>::new(
        HostRing::new(6, shift),
        wr_id_table(64),
        qp_type,
        caps,
    ) {
        Ok(_) => true,
        Err(QueueConfigError::CapsDoNotFit) => false,
        Err(other) => panic!("{other:?}"),
    }
}

/// The largest WQE a send queue's capabilities allow must fit one entry: a queue is
/// refused at creation, so `post` never meets a WR its WQE cannot hold. An RC WQE is a
/// 16-byte control and a 16-byte remote address segment before its payload, a UD WQE a
/// control and a 48-byte datagram segment; inline data takes a 4-byte header at each
/// 64-byte boundary (`MLX4_INLINE_ALIGN`).
#[test]
fn a_send_queue_refuses_capabilities_its_wqes_cannot_hold() {
    // 64-byte WQEs: RC has room for two gather entries or 28 inline bytes.
    assert!(send_queue_takes(QpType::Rc, 6, 2, 0));
    assert!(!send_queue_takes(QpType::Rc, 6, 3, 0));
    assert!(send_queue_takes(QpType::Rc, 6, 0, 28));
    assert!(!send_queue_takes(QpType::Rc, 6, 0, 29));
    // 128-byte WQEs: six gather entries; 28 + 60 inline bytes over two inline segments.
    assert!(send_queue_takes(QpType::Rc, 7, 6, 88));
    assert!(!send_queue_takes(QpType::Rc, 7, 7, 0));
    assert!(!send_queue_takes(QpType::Rc, 7, 0, 89));
    // UD: the datagram segment fills a 64-byte WQE; 128 bytes leave four gather entries.
    assert!(send_queue_takes(QpType::Ud, 6, 0, 0));
    assert!(!send_queue_takes(QpType::Ud, 6, 1, 0));
    assert!(send_queue_takes(QpType::Ud, 7, 4, 0));
    assert!(!send_queue_takes(QpType::Ud, 7, 5, 0));
}
