//! The driver's event queue, on the bring-up's memory: the pages the device writes EQEs
//! to, polled by the owner-bit protocol (`next_eqe_sw`, `mlx4_eq_int`), and its
//! consumer-index doorbell (`eq_set_ci`).
//!
//! The fast path's `fastpath::eq::EventQueue` reads the same EQEs, but over the fast
//! path's `Platform` ring: one virtually contiguous mapping accessed in place, with
//! `unsafe` entry access. The bring-up is `forbid(unsafe_code)` and reaches memory only
//! by copies through [`HostMemory`], in separately allocated 4 KiB pages (as
//! `mlx4_create_eq` allocates them), so this is its own small consumer; the entry format
//! (`wire::Eqe`) and the doorbell word (`wire::eq_set_ci_word`) are shared.

use zerocopy::FromBytes;

use crate::wire::fw::Mailbox;
use crate::wire::{eq_doorbell_offset, eq_set_ci_word, Eqe, EventType, EQE_SIZE};

use super::memory::{HostMemory, ICM_PAGE_SHIFT, ICM_PAGE_SIZE};

/// What EQs need of the platform beyond commands and memory: BAR2, where the EQ
/// doorbells are, and the read barrier between an EQE's owner bit and its contents.
pub trait EventEdge {
    /// Writes `value` big-endian to the 32-bit register at byte `offset` of BAR2.
    fn bar2_write_be32(&mut self, offset: u64, value: u32);
    /// Orders the reads before it ahead of the reads after it (`dma_rmb()`).
    fn read_barrier(&mut self);
}

/// The most pages an EQ of the bring-up spans.
pub const EQ_MAX_PAGES: usize = 8;

/// The most completion EQs the bring-up creates (one per MSI-X vector after the async
/// EQ's, `mlx4_init_eq_table`'s comp EQs).
pub const MAX_COMP_EQS: usize = 4;

/// A completion EQ's entries (upstream sizes them by the CQ quota; the bring-up's CQs
/// are few, and each raises at most one event per arming).
pub const COMP_EQ_ENTRIES: u32 = 512;

/// The async EQ's entries: `MLX4_NUM_ASYNC_EQE` + `MLX4_NUM_SPARE_EQE`, rounded up to a
/// power of two (`mlx4_create_eq`'s `roundup_pow_of_two`).
pub const ASYNC_EQ_ENTRIES: u32 = 512;

/// The events mapped to the async EQ (`MLX4_ASYNC_EVENT_MASK`, without the multi-function
/// ones): QP, SRQ and CQ errors, port changes, ECC, and command completions.
pub const ASYNC_EVENT_MASK: u64 = (1 << 0x01) // path migrated
    | (1 << 0x02) // communication established
    | (1 << 0x03) // SQ drained
    | (1 << 0x04) // CQ error
    | (1 << 0x05) // WQ catastrophic error
    | (1 << 0x06) // EEC catastrophic error
    | (1 << 0x07) // path migration failed
    | (1 << 0x09) // port change
    | (1 << 0x0a) // command
    | (1 << 0x0e) // ECC detected
    | (1 << 0x10) // WQ invalid request
    | (1 << 0x11) // WQ access error
    | (1 << 0x12) // SRQ catastrophic error
    | (1 << 0x14); // SRQ limit

/// The BAR2 offset of EQ `eqn`'s doorbell: page `eqn / 4` of the UAR area, which the
/// UAR table keeps reserved for EQ doorbells (`mlx4_get_eq_uar`).
pub fn eq_doorbell(eqn: u32) -> u64 {
    (u64::from(eqn / 4) << ICM_PAGE_SHIFT) + eq_doorbell_offset(eqn) as u64
}

/// A completion event a completion EQ delivered: the CQ it names is one of the
/// driver's (`mlx4_cq_completion`'s radix-tree lookup succeeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionEvent {
    /// The CQ that completed.
    pub cqn: u32,
}

/// What happened to a port (`mlx4_eq_int`'s PORT_CHANGE subtypes, as `mlx4_ib_event`
/// dispatches them to the IB core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEventKind {
    /// The port went ACTIVE (`MLX4_PORT_CHANGE_SUBTYPE_ACTIVE`, `IB_EVENT_PORT_ACTIVE`).
    Active,
    /// The port left ACTIVE (`MLX4_PORT_CHANGE_SUBTYPE_DOWN`, `IB_EVENT_PORT_ERR`).
    Down,
}

/// A port event for the IB device layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// The port, 1-based.
    pub port: u8,
    /// What happened.
    pub kind: PortEventKind,
}

/// `MLX4_PORT_CHANGE_SUBTYPE_DOWN`.
pub const PORT_CHANGE_SUBTYPE_DOWN: u8 = 1;
/// `MLX4_PORT_CHANGE_SUBTYPE_ACTIVE`.
pub const PORT_CHANGE_SUBTYPE_ACTIVE: u8 = 4;

impl PortEvent {
    /// The typed event of a PORT_CHANGE EQE, if its port is one of `num_ports` and its
    /// subtype is one the driver knows.
    pub fn from_port_change(port: u8, subtype: u8, num_ports: u8) -> Option<Self> {
        if port == 0 || port > num_ports {
            return None;
        }
        let kind = match subtype {
            PORT_CHANGE_SUBTYPE_ACTIVE => PortEventKind::Active,
            PORT_CHANGE_SUBTYPE_DOWN => PortEventKind::Down,
            _ => return None,
        };
        Some(Self { port, kind })
    }
}

/// One EQE, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EqEvent {
    /// A CQ raised its completion event (`MLX4_EVENT_TYPE_COMP`).
    Completion {
        /// The CQ number (the low 24 bits of the union's first word).
        cqn: u32,
    },
    /// A command completed (`MLX4_EVENT_TYPE_CMD`).
    Command {
        /// Its token.
        token: u16,
        /// Its status byte.
        status: u8,
        /// Its immediate output.
        out_param: u64,
    },
    /// A port changed state (`MLX4_EVENT_TYPE_PORT_CHANGE`).
    PortChange {
        /// The port (1-based, the top nibble of the union's third word).
        port: u8,
        /// `MLX4_PORT_CHANGE_SUBTYPE_*`: 1 down, 4 active.
        subtype: u8,
    },
    /// Anything else.
    Other {
        /// `MLX4_EVENT_TYPE_*`.
        event_type: u8,
        /// The subtype.
        subtype: u8,
        /// The object the event names.
        object: u32,
    },
}

impl EqEvent {
    fn decode(raw: &[u8; EQE_SIZE]) -> Option<Self> {
        let eqe = Eqe::read_from_bytes(&raw[..]).ok()?;
        // The union starts at byte 4.
        let union = Mailbox(raw.get(4..28)?);
        Some(match EventType::from_bits(eqe.event_type) {
            Some(EventType::Completion) => Self::Completion {
                cqn: union.u32(0) & 0x00ff_ffff,
            },
            Some(EventType::Command) => Self::Command {
                token: union.u16(2),
                status: union.u8(11),
                out_param: union.u64(12),
            },
            Some(EventType::PortChange) => Self::PortChange {
                port: (union.u32(8) >> 28) as u8,
                subtype: eqe.subtype,
            },
            _ => Self::Other {
                event_type: eqe.event_type,
                subtype: eqe.subtype,
                object: eqe.object(),
            },
        })
    }
}

/// An EQ page: the platform's block and its bus address.
#[derive(Debug)]
pub struct EqPage<B> {
    /// The block.
    pub block: B,
    /// Its bus address, which its MTT entry carries.
    pub bus_address: u64,
}

/// The driver's side of an EQ.
#[derive(Debug)]
pub struct EventQueue<B> {
    /// The EQ number.
    pub eqn: u32,
    /// Entries, a power of two.
    pub nent: u32,
    /// The first of its MTT entries (`mtt->offset`), and how many.
    pub mtt: (u32, u32),
    pages: [Option<EqPage<B>>; EQ_MAX_PAGES],
    cons_index: u32,
    /// SW2HW_EQ succeeded and HW2SW_EQ has not yet.
    pub in_hardware: bool,
    /// The event types MAP_EQ sent to it.
    pub mapped_events: u64,
}

/// The platform could not read an EQE inside the EQ's own pages (a platform bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EqReadError;

impl<B> EventQueue<B> {
    /// Pages an EQ of `nent` entries takes.
    pub const fn pages_for(nent: u32) -> usize {
        (nent as usize * EQE_SIZE).div_ceil(ICM_PAGE_SIZE)
    }

    /// An EQ of `nent` entries, before its pages are allocated.
    pub fn new(eqn: u32, nent: u32) -> Self {
        Self {
            eqn,
            nent,
            mtt: (0, 0),
            pages: core::array::from_fn(|_| None),
            cons_index: 0,
            in_hardware: false,
            mapped_events: 0,
        }
    }

    /// Adds the next page; gives it back when the EQ has all it can hold.
    pub fn push_page(&mut self, page: EqPage<B>) -> Result<(), EqPage<B>> {
        match self.pages.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => {
                *slot = Some(page);
                Ok(())
            }
            None => Err(page),
        }
    }

    /// The pages, in order.
    pub fn pages(&self) -> impl Iterator<Item = &EqPage<B>> {
        self.pages.iter().flatten()
    }

    /// Takes the pages out, last first.
    pub fn pop_page(&mut self) -> Option<EqPage<B>> {
        self.pages.iter_mut().rev().find_map(Option::take)
    }

    /// The consumer index.
    pub fn cons_index(&self) -> u32 {
        self.cons_index
    }

    /// The next EQE the device has handed over, if any (`next_eqe_sw`): its owner bit
    /// differs from the hardware's for this lap. Consumes it.
    pub fn next<P: HostMemory<Block = B> + EventEdge>(
        &mut self,
        p: &mut P,
    ) -> Result<Option<EqEvent>, EqReadError> {
        let index = self.cons_index & (self.nent - 1);
        let byte = index as usize * EQE_SIZE;
        let page = self
            .pages
            .get(byte / ICM_PAGE_SIZE)
            .and_then(Option::as_ref)
            .ok_or(EqReadError)?;
        let offset = byte % ICM_PAGE_SIZE;
        let mut owner = [0u8; 1];
        if !p.read(&page.block, offset + EQE_SIZE - 1, &mut owner) {
            return Err(EqReadError);
        }
        let hw_lap = self.cons_index & self.nent != 0;
        if (owner[0] & Eqe::OWNER != 0) != hw_lap {
            return Ok(None);
        }
        // The contents only after the owner bit said they are the driver's.
        p.read_barrier();
        let mut raw = [0u8; EQE_SIZE];
        if !p.read(&page.block, offset, &mut raw) {
            return Err(EqReadError);
        }
        self.cons_index = self.cons_index.wrapping_add(1);
        Ok(Some(EqEvent::decode(&raw).ok_or(EqReadError)?))
    }

    /// Writes the consumer index to the EQ's doorbell, and re-arms it if `arm`
    /// (`eq_set_ci`).
    pub fn set_ci<P: EventEdge>(&self, p: &mut P, arm: bool) {
        p.bar2_write_be32(eq_doorbell(self.eqn), eq_set_ci_word(self.cons_index, arm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_changes_are_typed_and_nonsense_is_refused() {
        let active = PortEvent::from_port_change(2, PORT_CHANGE_SUBTYPE_ACTIVE, 2);
        assert_eq!(
            active,
            Some(PortEvent {
                port: 2,
                kind: PortEventKind::Active
            })
        );
        let down = PortEvent::from_port_change(1, PORT_CHANGE_SUBTYPE_DOWN, 2);
        assert_eq!(down.map(|e| e.kind), Some(PortEventKind::Down));
        assert_eq!(PortEvent::from_port_change(0, 4, 2), None);
        assert_eq!(PortEvent::from_port_change(3, 4, 2), None);
        for subtype in [0u8, 2, 3, 5, 0xff] {
            assert_eq!(PortEvent::from_port_change(1, subtype, 2), None);
        }
    }

    #[test]
    fn a_completion_eqe_names_its_cq() {
        let mut raw = [0u8; EQE_SIZE];
        raw[1] = EventType::Completion as u8;
        raw[4..8].copy_from_slice(&0xff00_0123u32.to_be_bytes());
        assert_eq!(
            EqEvent::decode(&raw),
            Some(EqEvent::Completion { cqn: 0x123 })
        );
    }
}
