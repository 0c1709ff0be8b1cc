//! The ICM profile: how many of each context the driver asks for, and where each context
//! table sits in the device's ICM address space.
//!
//! Follows `mlx4_make_profile` (`profile.c`) and `default_profile` (`main.c`): each
//! table's size is a power of two of at least a page; the tables are sorted by size,
//! largest first, and packed from ICM address 0, so each is aligned to its size. The
//! tables the driver maps at once, and how much of each, follow `mlx4_init_icm` and
//! `mlx4_init_cmpt_table` (`main.c`).

use super::caps::DevCaps;
use super::memory::ICM_PAGE_SIZE;

/// What the driver asks for (`struct mlx4_profile`); counts are rounded up to powers of
/// two, and clamped to what the device offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// QPs.
    pub num_qp: u32,
    /// SRQs.
    pub num_srq: u32,
    /// Outstanding RDMA reads and atomics each QP may answer.
    pub rdmarc_per_qp: u32,
    /// CQs.
    pub num_cq: u32,
    /// Multicast group table entries (hash and overflow halves).
    pub num_mcg: u32,
    /// Memory keys.
    pub num_mpt: u32,
    /// MTT segments of [`MTTS_PER_SEGMENT`] entries.
    pub num_mtt_segs: u32,
}

impl Profile {
    /// Upstream's `default_profile`.
    pub const DEFAULT: Self = Self {
        num_qp: 1 << 18,
        num_srq: 1 << 16,
        rdmarc_per_qp: 1 << 4,
        num_cq: 1 << 16,
        num_mcg: 1 << 13,
        num_mpt: 1 << 19,
        num_mtt_segs: 1 << 20,
    };
}

impl Default for Profile {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// MTT entries per segment (`1 << log_mtts_per_seg`, the module parameter's default).
pub const MTTS_PER_SEGMENT: u32 = 8;
/// log2 of a multicast group entry's size: 1 KiB (`MLX4_DEFAULT_MGM_LOG_ENTRY_SIZE`), for
/// the A0/B0 steering this device does.
pub const LOG_MGM_ENTRY_SIZE: u8 = 10;
/// The most EQs the driver uses (`MAX_MSIX`).
pub const MAX_EQS: u32 = 128;
/// Compressed MPTs: four regions (QP, SRQ, CQ, EQ) of 2^24 entries each
/// (`MLX4_NUM_CMPTS`, `MLX4_CMPT_SHIFT`).
pub const CMPT_SHIFT: u32 = 24;
/// The cMPT regions, in order (`MLX4_CMPT_TYPE_*`).
pub const CMPT_REGIONS: u64 = 4;

/// A context table in ICM (`MLX4_RES_*`, in upstream's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// QP contexts.
    Qpc,
    /// RDMA responder contexts.
    Rdmarc,
    /// Alternate path contexts.
    Altc,
    /// Auxiliary QP contexts.
    Auxc,
    /// SRQ contexts.
    Srqc,
    /// CQ contexts.
    Cqc,
    /// EQ contexts.
    Eqc,
    /// Data MPTs.
    Dmpt,
    /// Compressed MPTs.
    Cmpt,
    /// Memory translation table.
    Mtt,
    /// Multicast groups.
    Mcg,
}

impl Resource {
    /// Every table, in upstream's order.
    pub const ALL: [Self; 11] = [
        Self::Qpc,
        Self::Rdmarc,
        Self::Altc,
        Self::Auxc,
        Self::Srqc,
        Self::Cqc,
        Self::Eqc,
        Self::Dmpt,
        Self::Cmpt,
        Self::Mtt,
        Self::Mcg,
    ];

    /// Upstream's name of it (`res_name`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Qpc => "QP",
            Self::Rdmarc => "RDMARC",
            Self::Altc => "ALTC",
            Self::Auxc => "AUXC",
            Self::Srqc => "SRQ",
            Self::Cqc => "CQ",
            Self::Eqc => "EQ",
            Self::Dmpt => "DMPT",
            Self::Cmpt => "CMPT",
            Self::Mtt => "MTT",
            Self::Mcg => "MCG",
        }
    }
}

/// Where one table sits in ICM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The table.
    pub resource: Resource,
    /// Its ICM address, aligned to its size.
    pub base: u64,
    /// Its size in bytes: a power of two of at least a page.
    pub size: u64,
    /// Entries, a power of two.
    pub num: u64,
    /// log2 of `num`.
    pub log_num: u8,
}

/// Why no profile fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// A request that cannot work: zero, or no more than the device reserves.
    Request {
        /// The field of [`Profile`].
        field: &'static str,
        /// The count after clamping to the device.
        value: u64,
    },
    /// The tables need more ICM than the device addresses (`max_icm_sz`).
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes the device offers.
        max: u64,
    },
}

/// The profile's outcome: every table's place, and the counts INIT_HCA and the driver's
/// allocators use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmLayout {
    /// Each table, in [`Resource::ALL`] order.
    pub tables: [Placement; 11],
    /// ICM in all, in bytes (SET_ICM_SIZE's argument).
    pub total_size: u64,
    /// QPs (`caps.num_qps`).
    pub num_qps: u32,
    /// SRQs.
    pub num_srqs: u32,
    /// CQs.
    pub num_cqs: u32,
    /// EQs.
    pub num_eqs: u32,
    /// Memory keys.
    pub num_mpts: u64,
    /// MTT segments.
    pub num_mtt_segs: u64,
    /// log2 of the RDMA responder contexts per QP (`rdmarc_shift`, INIT_HCA's `log_rd`).
    pub log_rd_per_qp: u8,
    /// log2 of the multicast hash table's size (half the multicast table).
    pub log_mc_hash_size: u8,
}

impl IcmLayout {
    /// Where `resource` sits.
    pub fn table(&self, resource: Resource) -> &Placement {
        // `tables` is in `Resource::ALL` order, which is the enum's: the index is below
        // 11 by construction, never from the device.
        &self.tables[resource as usize]
    }
}

fn log2(n: u64) -> u8 {
    // `n` is a nonzero power of two here; ilog2 of 0 would be a bug, so report 0.
    n.checked_ilog2().unwrap_or(0) as u8
}

fn round_up(field: &'static str, n: u64) -> Result<u64, ProfileError> {
    n.checked_next_power_of_two()
        .filter(|&n| n != 0)
        .ok_or(ProfileError::Request { field, value: n })
}

/// Sizes and places the ICM tables (`mlx4_make_profile`).
///
/// Unlike upstream, which trusts its module parameters, each count is clamped to what
/// QUERY_DEV_CAP offers; and the MTT is not scaled up with the host's memory (the
/// request says how many segments).
pub fn make_profile(caps: &DevCaps, request: &Profile) -> Result<IcmLayout, ProfileError> {
    let clamp = |field: &'static str, want: u32, max: u64, reserved: u64| {
        let n = round_up(field, u64::from(want).min(max))?;
        if n <= reserved {
            return Err(ProfileError::Request { field, value: n });
        }
        Ok(n)
    };
    let num_qp = clamp(
        "num_qp",
        request.num_qp,
        caps.max_qps.into(),
        caps.reserved_qps.into(),
    )?;
    let num_srq = clamp(
        "num_srq",
        request.num_srq,
        caps.max_srqs.into(),
        caps.reserved_srqs.into(),
    )?;
    let num_cq = clamp(
        "num_cq",
        request.num_cq,
        caps.max_cqs.into(),
        caps.reserved_cqs.into(),
    )?;
    let num_mpt = clamp(
        "num_mpt",
        request.num_mpt,
        caps.max_mpts,
        caps.reserved_mrws.into(),
    )?;
    let num_mcg = clamp("num_mcg", request.num_mcg, caps.max_mcgs.into(), 1)?;
    let rdmarc_per_qp = round_up("rdmarc_per_qp", request.rdmarc_per_qp.into())?;
    let num_mtt_segs = round_up("num_mtt_segs", request.num_mtt_segs.into())?;
    let num_eqs = round_up("num_eqs", u64::from(caps.max_eqs.min(MAX_EQS)))?;
    let sizes = &caps.entry_sizes;

    let request_of = |resource: Resource| -> (u64, u64) {
        match resource {
            Resource::Qpc => (sizes.qpc.into(), num_qp),
            Resource::Rdmarc => (sizes.rdmarc.into(), num_qp * rdmarc_per_qp),
            Resource::Altc => (sizes.altc.into(), num_qp),
            Resource::Auxc => (sizes.auxc.into(), num_qp),
            Resource::Srqc => (sizes.srqc.into(), num_srq),
            Resource::Cqc => (sizes.cqc.into(), num_cq),
            Resource::Eqc => (sizes.eqc.into(), num_eqs),
            Resource::Dmpt => (sizes.dmpt.into(), num_mpt),
            Resource::Cmpt => (sizes.cmpt.into(), CMPT_REGIONS << CMPT_SHIFT),
            Resource::Mtt => (sizes.mtt.into(), num_mtt_segs * u64::from(MTTS_PER_SEGMENT)),
            Resource::Mcg => (1 << LOG_MGM_ENTRY_SIZE, num_mcg),
        }
    };
    let mut tables = Resource::ALL.map(|resource| {
        let (entry_size, num) = request_of(resource);
        Placement {
            resource,
            base: 0,
            // Entry sizes are at most 4 KiB and counts at most 2^35: no overflow.
            size: (entry_size * num).max(ICM_PAGE_SIZE as u64),
            num,
            log_num: log2(num),
        }
    });

    // Largest first, stable among equals (upstream's bubble sort swaps only on `>`), so
    // that packing keeps every table aligned to its power-of-two size.
    let mut order: [usize; 11] = core::array::from_fn(|i| i);
    for i in 1..order.len() {
        let mut j = i;
        while j > 0 && tables[order[j]].size > tables[order[j - 1]].size {
            order.swap(j, j - 1);
            j -= 1;
        }
    }
    let mut total: u64 = 0;
    for &index in &order {
        let table = &mut tables[index];
        table.base = total;
        total = total
            .checked_add(table.size)
            .ok_or(ProfileError::TooLarge {
                needed: u64::MAX,
                max: caps.max_icm_size,
            })?;
        if total > caps.max_icm_size {
            return Err(ProfileError::TooLarge {
                needed: total,
                max: caps.max_icm_size,
            });
        }
    }

    let to_u32 = |field: &'static str, n: u64| {
        u32::try_from(n).map_err(|_| ProfileError::Request { field, value: n })
    };
    let mcg_log = log2(num_mcg);
    Ok(IcmLayout {
        tables,
        total_size: total,
        num_qps: to_u32("num_qp", num_qp)?,
        num_srqs: to_u32("num_srq", num_srq)?,
        num_cqs: to_u32("num_cq", num_cq)?,
        num_eqs: to_u32("num_eqs", num_eqs)?,
        num_mpts: num_mpt,
        num_mtt_segs,
        log_rd_per_qp: log2(rdmarc_per_qp),
        // A0/B0 steering: half the table is the hash, half the overflow (AMGM).
        log_mc_hash_size: mcg_log.saturating_sub(1),
    })
}

/// One ICM table the driver maps at probe: the first `reserved` entries of a table of
/// `num` entries of `entry_size` bytes at `base` (`mlx4_init_icm_table`'s arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmTable {
    /// Upstream's name of the table, for errors and logs.
    pub name: &'static str,
    /// Its ICM address.
    pub base: u64,
    /// Bytes per entry.
    pub entry_size: u64,
    /// Entries in the table.
    pub num: u64,
    /// Entries the firmware uses from the start: the driver maps ICM under them now; the
    /// rest is mapped when objects are created (`mlx4_table_get`).
    pub reserved: u64,
}

impl IcmTable {
    /// The table's size in bytes.
    pub fn size(&self) -> u64 {
        self.entry_size.saturating_mul(self.num)
    }

    /// The bytes mapped at probe: the reserved entries rounded up to whole 256 KiB table
    /// chunks, but not beyond the table's own size rounded up to a page.
    pub fn mapped_at_probe(&self, chunk_size: u64) -> u64 {
        let needed = self.entry_size.saturating_mul(self.reserved);
        let chunks = needed.div_ceil(chunk_size);
        let table = self.size().div_ceil(ICM_PAGE_SIZE as u64) * ICM_PAGE_SIZE as u64;
        chunks.saturating_mul(chunk_size).min(table)
    }
}

/// The tables `mlx4_init_icm` maps, in its order (teardown goes in reverse).
pub fn icm_tables(caps: &DevCaps, layout: &IcmLayout) -> [IcmTable; 14] {
    let sizes = &caps.entry_sizes;
    let base = |r| layout.table(r).base;
    let cmpt =
        |region: u64| base(Resource::Cmpt) + ((region * u64::from(sizes.cmpt)) << CMPT_SHIFT);
    let qps = u64::from(layout.num_qps);
    let rsvd_qps = u64::from(caps.reserved_qps);
    let eqs = u64::from(layout.num_eqs);
    let mtt_seg = u64::from(sizes.mtt) * u64::from(MTTS_PER_SEGMENT);
    // Reserved MTT entries, aligned up to a cache line since the firmware writes them
    // (`mlx4_init_icm`), in segments.
    let reserved_mtt_segs = (u64::from(caps.reserved_mtts) * u64::from(sizes.mtt))
        .div_ceil(64)
        .saturating_mul(64)
        .div_ceil(mtt_seg);
    let mcg = layout.table(Resource::Mcg);
    let table = |name, base, entry_size: u64, num, reserved| IcmTable {
        name,
        base,
        entry_size,
        num,
        reserved,
    };
    [
        table("cMPT (QP)", cmpt(0), sizes.cmpt.into(), qps, rsvd_qps),
        table(
            "cMPT (SRQ)",
            cmpt(1),
            sizes.cmpt.into(),
            layout.num_srqs.into(),
            caps.reserved_srqs.into(),
        ),
        table(
            "cMPT (CQ)",
            cmpt(2),
            sizes.cmpt.into(),
            layout.num_cqs.into(),
            caps.reserved_cqs.into(),
        ),
        table("cMPT (EQ)", cmpt(3), sizes.cmpt.into(), eqs, eqs),
        table("EQC", base(Resource::Eqc), sizes.eqc.into(), eqs, eqs),
        table(
            "MTT",
            base(Resource::Mtt),
            mtt_seg,
            layout.num_mtt_segs,
            reserved_mtt_segs,
        ),
        table(
            "dMPT",
            base(Resource::Dmpt),
            sizes.dmpt.into(),
            layout.num_mpts,
            caps.reserved_mrws.into(),
        ),
        table("QPC", base(Resource::Qpc), sizes.qpc.into(), qps, rsvd_qps),
        table(
            "AUXC",
            base(Resource::Auxc),
            sizes.auxc.into(),
            qps,
            rsvd_qps,
        ),
        table(
            "ALTC",
            base(Resource::Altc),
            sizes.altc.into(),
            qps,
            rsvd_qps,
        ),
        table(
            "RDMARC",
            base(Resource::Rdmarc),
            u64::from(sizes.rdmarc) << layout.log_rd_per_qp,
            qps,
            rsvd_qps,
        ),
        table(
            "CQC",
            base(Resource::Cqc),
            sizes.cqc.into(),
            layout.num_cqs.into(),
            caps.reserved_cqs.into(),
        ),
        table(
            "SRQC",
            base(Resource::Srqc),
            sizes.srqc.into(),
            layout.num_srqs.into(),
            caps.reserved_srqs.into(),
        ),
        // The whole multicast table, mapped at once (`mlx4_init_icm`: "just map the whole
        // multicast group table now").
        table("MCG", mcg.base, 1 << LOG_MGM_ENTRY_SIZE, mcg.num, mcg.num),
    ]
}
