//! Multicast groups: a QP attached to an InfiniBand multicast group and detached from it,
//! in the table the device looks groups up in (`mcg.c`: `find_entry`,
//! `mlx4_qp_attach_common`, `mlx4_qp_detach_common`, B0 steering).
//!
//! The table INIT_HCA placed is two halves of [`Mgm`] entries. A group's GID hashes, by
//! MGID_HASH (the device's own function), to a bucket of the first half; the groups of a
//! bucket form a chain from it through entries of the second half (the AMGM), which the
//! driver hands out. The device walks the same chain for every multicast packet, so the
//! chain is the contract: a group written anywhere else receives nothing.
//!
//! An entry is moved with READ_MCG and WRITE_MCG through the output mailbox, and edited
//! there a field at a time, as upstream edits its mailbox: no entry-sized buffer on the
//! stack, which in the kernel is a frame of its own.

use crate::wire::cmd::opcode;
use crate::wire::fw::{Mgm, MAILBOX_SIZE};

use super::bitmap::IdBitmap;
use super::cmd::Command;
use super::probe::{Mlx4Core, Platform, ProbeError, Step};
use super::profile::{IcmLayout, Resource, LOG_MGM_ENTRY_SIZE};

/// Capacity of the AMGM number table, in 64-bit words: 4096 entries, half of the
/// default profile's 8192.
pub(super) const AMGM_WORDS: usize = 64;
/// An entry's size in bytes (INIT_HCA's `log_mc_entry_sz`).
const ENTRY_SIZE: usize = 1 << LOG_MGM_ENTRY_SIZE;
/// The header before the member slots: link, count, reserved, GID.
const HEADER: usize = 32;

/// Why an attach or a detach failed (besides a command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McgError {
    /// The group has as many members as an entry holds ("MGM at index %x is full").
    GroupFull {
        /// Its entry.
        index: u32,
    },
    /// No AMGM entry is left for a new group whose bucket is taken ("No AMGM entries
    /// left").
    TableFull,
    /// Detaching from a group the table does not have ("MGID ... not found").
    NoGroup,
    /// Detaching a QP that is not a member ("QP %06x not found in MGM").
    NotMember {
        /// The QP.
        qpn: u32,
    },
    /// The chain from a bucket is not one the driver wrote: an empty entry past the
    /// bucket ("Found zero MGID in AMGM"), a link outside the table, or a loop.
    BrokenChain {
        /// The entry where the walk stopped.
        index: u32,
    },
    /// MGID_HASH named a bucket outside the hash half.
    BadHash {
        /// The bucket.
        hash: u32,
    },
}

/// The multicast table as the driver keeps it: its halves and the AMGM numbers.
#[derive(Clone, Debug)]
pub(super) struct McgTable {
    /// Buckets (`caps.num_mgms`); the AMGM entries follow.
    buckets: u32,
    /// Entries in all.
    entries: u32,
    /// Members an entry may have: what it holds, and at most what the device allows.
    members: u32,
    /// AMGM entries handed out, numbered from 0 (entry `buckets + n`).
    amgms: IdBitmap<AMGM_WORDS>,
    /// Groups in the table (buckets and AMGM entries with members).
    groups: u32,
}

impl McgTable {
    /// The table INIT_HCA set up (`mlx4_init_mcg_table`); `None` if it has no AMGM half.
    pub(super) fn new(layout: &IcmLayout, max_qp_per_mcg: u32) -> Option<Self> {
        let entries = u32::try_from(layout.table(Resource::Mcg).num).ok()?;
        let buckets = 1u32.checked_shl(layout.log_mc_hash_size.into())?;
        let amgms = IdBitmap::new(entries.checked_sub(buckets)?.into(), 0).ok()?;
        let slots = u32::try_from(Mgm::slots(ENTRY_SIZE)).unwrap_or(0);
        Some(Self {
            buckets,
            entries,
            members: slots.min(max_qp_per_mcg),
            amgms,
            groups: 0,
        })
    }

    /// Gives AMGM entry `index` back.
    fn free(&mut self, index: u32) {
        if let Some(n) = index.checked_sub(self.buckets) {
            self.amgms.free(n);
        }
    }
}

/// Where [`Mlx4Core::find_group`] ended; the output mailbox holds the last entry read.
#[derive(Clone, Copy, Debug)]
struct Lookup {
    /// The entry before `at` in the chain, if `at` is not the bucket.
    prev: Option<u32>,
    /// The group's entry, or the empty bucket it may take; `None`: the chain ends
    /// without it, at `prev`.
    at: Option<u32>,
    /// The entry's members and link.
    members: u32,
    next: u32,
}

impl<B> Mlx4Core<B> {
    /// Attaches QP `qpn` to InfiniBand multicast group `gid` (`mlx4_multicast_attach`);
    /// with `block_loopback`, the QP gets no copy of its own sends to the group.
    /// Attaching a member again changes nothing.
    pub fn attach_multicast<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        gid: &[u8; 16],
        qpn: u32,
        block_loopback: bool,
    ) -> Result<(), ProbeError> {
        // A device reset under its objects forgot its groups: as every command then,
        // the attach succeeds without reaching it.
        if self.cmd.is_device_lost() {
            return Ok(());
        }
        let table = self.mcg.as_ref().ok_or(ProbeError::Exhausted {
            step: Step::Multicast,
        })?;
        let most = table.members;
        let found = self.find_group(p, gid)?;
        let (index, link_from, members, new_amgm) = match found.at {
            Some(index) => {
                if found.members == 0 {
                    // The empty bucket becomes the group's entry.
                    self.set_entry(p, 16, gid)?;
                }
                (index, None, found.members, false)
            }
            None => {
                let table = self.mcg.as_mut().ok_or(ProbeError::Exhausted {
                    step: Step::Multicast,
                })?;
                let n = table.amgms.alloc().ok_or(mcg(McgError::TableFull))?;
                let index = table.buckets.saturating_add(n);
                let cleared = self
                    .clear_entry(p)
                    .and_then(|()| self.set_entry(p, 16, gid));
                if let Err(error) = cleared {
                    self.free_amgm(index);
                    return Err(error);
                }
                (index, found.prev, 0, true)
            }
        };
        let result = self.add_member(p, index, link_from, members, most, qpn, block_loopback);
        if result.is_err() && new_amgm {
            self.free_amgm(index);
        }
        result
    }

    /// The member added to entry `index` (in the mailbox, with `members` members),
    /// written, and linked from `link_from` when it is a new AMGM entry.
    #[allow(clippy::too_many_arguments)]
    fn add_member<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        index: u32,
        link_from: Option<u32>,
        members: u32,
        most: u32,
        qpn: u32,
        block_loopback: bool,
    ) -> Result<(), ProbeError> {
        for slot in 0..members {
            if self.entry_u32(p, slot_offset(slot))? & Mgm::QPN_MASK == qpn {
                return Ok(());
            }
        }
        if members >= most {
            return Err(mcg(McgError::GroupFull { index }));
        }
        let loopback = if block_loopback {
            Mgm::BLOCK_LOOPBACK
        } else {
            0
        };
        let member = (qpn & Mgm::QPN_MASK) | loopback;
        self.set_entry(p, slot_offset(members), &member.to_be_bytes())?;
        self.set_count(p, members + 1)?;
        self.write_mcg(p, index)?;
        if let Some(prev) = link_from {
            self.read_mcg(p, prev)?;
            self.set_link(p, index)?;
            self.write_mcg(p, prev)?;
        }
        if members == 0 {
            self.count_group(true);
        }
        Ok(())
    }

    /// Detaches QP `qpn` from group `gid` (`mlx4_multicast_detach`); the group's entry
    /// goes when its last member does, and the chain is closed over it.
    pub fn detach_multicast<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        gid: &[u8; 16],
        qpn: u32,
    ) -> Result<(), ProbeError> {
        if self.cmd.is_device_lost() {
            return Ok(());
        }
        let found = self.find_group(p, gid)?;
        let (Some(index), 1..) = (found.at, found.members) else {
            return Err(mcg(McgError::NoGroup));
        };
        let mut loc = None;
        for slot in 0..found.members {
            if self.entry_u32(p, slot_offset(slot))? & Mgm::QPN_MASK == qpn {
                loc = Some(slot);
                break;
            }
        }
        let loc = loc.ok_or(mcg(McgError::NotMember { qpn }))?;
        // The last member moves into the freed slot.
        let last = found.members - 1;
        let moved = self.entry_u32(p, slot_offset(last))?;
        self.set_entry(p, slot_offset(loc), &moved.to_be_bytes())?;
        self.set_entry(p, slot_offset(last), &[0; 4])?;
        self.set_count(p, last)?;
        if last > 0 {
            return self.write_mcg(p, index);
        }
        match found.prev {
            None => {
                // The bucket: the next entry of the chain moves into it, or it is
                // cleared.
                if found.next != 0 {
                    self.read_mcg(p, found.next)?;
                } else {
                    self.set_entry(p, 16, &[0; 16])?;
                }
                self.write_mcg(p, index)?;
                if found.next != 0 {
                    self.free_amgm(found.next);
                }
            }
            Some(prev) => {
                self.read_mcg(p, prev)?;
                self.set_link(p, found.next)?;
                self.write_mcg(p, prev)?;
                self.free_amgm(index);
            }
        }
        self.count_group(false);
        Ok(())
    }

    /// AMGM entries in use.
    pub fn multicast_entries_in_use(&self) -> u32 {
        self.mcg.as_ref().map_or(0, |t| t.amgms.in_use())
    }

    /// Multicast groups in the table.
    pub fn multicast_groups(&self) -> u32 {
        self.mcg.as_ref().map_or(0, |t| t.groups)
    }

    fn count_group(&mut self, added: bool) {
        if let Some(t) = self.mcg.as_mut() {
            t.groups = if added {
                t.groups.saturating_add(1)
            } else {
                t.groups.saturating_sub(1)
            };
        }
    }

    /// Walks `gid`'s chain from its bucket (`find_entry`).
    fn find_group<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        gid: &[u8; 16],
    ) -> Result<Lookup, ProbeError> {
        let (buckets, entries) =
            self.mcg
                .as_ref()
                .map(|t| (t.buckets, t.entries))
                .ok_or(ProbeError::Exhausted {
                    step: Step::Multicast,
                })?;
        self.write_inbox(p, gid)?;
        let cmd = Command::new(opcode::MGID_HASH).in_param(self.inbox_address());
        let hash = self.command(p, Step::Multicast, cmd)?;
        let hash = u32::try_from(hash)
            .ok()
            .filter(|&h| h < buckets)
            .ok_or(mcg(McgError::BadHash { hash: hash as u32 }))?;
        let mut index = hash;
        let mut prev = None;
        // A chain has at most every entry once; a longer walk is a loop.
        for _ in 0..entries {
            let header = self.read_mcg(p, index)?;
            let entry = Mgm(&header[..]);
            let (members, next) = (entry.members(), entry.next_index());
            if members == 0 {
                if index != hash {
                    return Err(mcg(McgError::BrokenChain { index }));
                }
                return Ok(Lookup {
                    prev,
                    at: Some(index),
                    members,
                    next,
                });
            }
            if entry.is_group(gid, Mgm::PROT_IB) {
                return Ok(Lookup {
                    prev,
                    at: Some(index),
                    members,
                    next,
                });
            }
            if next == 0 {
                return Ok(Lookup {
                    prev: Some(index),
                    at: None,
                    members: 0,
                    next: 0,
                });
            }
            if next < buckets || next >= entries {
                return Err(mcg(McgError::BrokenChain { index }));
            }
            prev = Some(index);
            index = next;
        }
        Err(mcg(McgError::BrokenChain { index }))
    }

    fn free_amgm(&mut self, index: u32) {
        if let Some(table) = self.mcg.as_mut() {
            table.free(index);
        }
    }

    /// READ_MCG of entry `index` into the output mailbox; its header.
    fn read_mcg<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        index: u32,
    ) -> Result<[u8; HEADER], ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = Command::new(opcode::READ_MCG)
            .in_modifier(index)
            .out_param(outbox.bus_address);
        self.command(p, Step::Multicast, cmd)?;
        let mut header = [0u8; HEADER];
        self.read_entry(p, 0, &mut header)?;
        Ok(header)
    }

    /// WRITE_MCG of the output mailbox's entry as entry `index`.
    fn write_mcg<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        index: u32,
    ) -> Result<(), ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        let cmd = Command::new(opcode::WRITE_MCG)
            .in_param(outbox.bus_address)
            .in_modifier(index);
        self.command(p, Step::Multicast, cmd).map(|_| ())
    }

    fn read_entry<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if offset.saturating_add(buf.len()) <= ENTRY_SIZE && p.read(&outbox.block, offset, buf) {
            Ok(())
        } else {
            Err(ProbeError::MailboxAccess)
        }
    }

    fn entry_u32<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        offset: usize,
    ) -> Result<u32, ProbeError> {
        let mut word = [0u8; 4];
        self.read_entry(p, offset, &mut word)?;
        Ok(u32::from_be_bytes(word))
    }

    /// Writes `data` at `offset` of the mailbox's entry.
    fn set_entry<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        offset: usize,
        data: &[u8],
    ) -> Result<(), ProbeError> {
        let outbox = self.outbox.as_ref().ok_or(ProbeError::MailboxAccess)?;
        if offset.saturating_add(data.len()) <= ENTRY_SIZE && p.write(&outbox.block, offset, data) {
            Ok(())
        } else {
            Err(ProbeError::MailboxAccess)
        }
    }

    /// The member count, with the InfiniBand protocol.
    fn set_count<P: Platform<Block = B>>(
        &mut self,
        p: &mut P,
        members: u32,
    ) -> Result<(), ProbeError> {
        let mut header = [0u8; 8];
        Mgm(&mut header[..]).set_members(members, Mgm::PROT_IB);
        self.set_entry(p, 4, &header[4..8])
    }

    /// The link to entry `next` (0: the chain ends).
    fn set_link<P: Platform<Block = B>>(&mut self, p: &mut P, next: u32) -> Result<(), ProbeError> {
        let mut header = [0u8; 4];
        Mgm(&mut header[..]).set_next_index(next);
        self.set_entry(p, 0, &header)
    }

    /// Zeroes the mailbox's entry (a new AMGM entry starts empty).
    fn clear_entry<P: Platform<Block = B>>(&mut self, p: &mut P) -> Result<(), ProbeError> {
        const _: () = assert!(ENTRY_SIZE <= MAILBOX_SIZE);
        let zeros = [0u8; 128];
        for offset in (0..ENTRY_SIZE).step_by(zeros.len()) {
            self.set_entry(p, offset, &zeros)?;
        }
        Ok(())
    }
}

/// Where member slot `slot` lies in an entry.
fn slot_offset(slot: u32) -> usize {
    HEADER.saturating_add((slot as usize).saturating_mul(4))
}

fn mcg(error: McgError) -> ProbeError {
    ProbeError::Multicast(error)
}
