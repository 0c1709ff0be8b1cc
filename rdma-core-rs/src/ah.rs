// SPDX-License-Identifier: GPL-2.0
//! Address handles: where a UD work request goes.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;

use crate::device::Device;
use crate::pd::ProtectionDomain;
use crate::sys;
use crate::verbs::Gid;

/// A UD destination with a GRH (`rdma_create_ah`; RoCE always needs the GRH), destroyed
/// on drop. For kernel callers the IB core does not resolve the destination MAC (only
/// `rdma_create_user_ah` calls `ib_resolve_eth_dmac`), so the caller gives it; without
/// it rxe sends even a datagram to itself out on the wire.
pub struct AddressHandle<'a> {
    ah: NonNull<sys::ib_ah>,
    device: &'a Device,
    _pd: PhantomData<&'a ProtectionDomain<'a>>,
}

impl<'a> AddressHandle<'a> {
    /// A handle for `dgid` (Ethernet address `dmac`), reached from `port` and the local
    /// GID entry `sgid_index`.
    pub fn new(
        pd: &'a ProtectionDomain<'_>,
        port: u32,
        sgid_index: u8,
        dgid: Gid,
        dmac: [u8; 6],
    ) -> Result<Self> {
        let mut attr = sys::rdma_ah_attr {
            type_: sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_ROCE,
            port_num: port,
            ah_flags: sys::ib_ah_flags_IB_AH_GRH as u8,
            ..Default::default()
        };
        attr.grh.dgid.raw = dgid.0;
        attr.grh.sgid_index = sgid_index;
        attr.grh.hop_limit = 64;
        attr.__bindgen_anon_1.roce.dmac = dmac;
        // SAFETY: the PD is valid for 'a; `attr` is a valid attribute block for the call,
        // which may sleep (we are in process context).
        let ah = from_err_ptr(unsafe {
            sys::rdma_create_ah(
                pd.as_raw(),
                &mut attr,
                sys::rdma_create_ah_flags_RDMA_CREATE_AH_SLEEPABLE,
            )
        })?;
        Ok(Self {
            ah: NonNull::new(ah).ok_or(ENOMEM)?,
            device: pd.device(),
            _pd: PhantomData,
        })
    }

    /// The device the handle belongs to.
    pub fn device(&self) -> &'a Device {
        self.device
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_ah {
        self.ah.as_ptr()
    }
}

impl Drop for AddressHandle<'_> {
    fn drop(&mut self) {
        // SAFETY: the AH is valid and unused: UD WRs borrow it for their QP's lifetime,
        // and QPs drain before they go.
        let ret = unsafe {
            sys::rdma_destroy_ah_user(
                self.ah.as_ptr(),
                sys::rdma_destroy_ah_flags_RDMA_DESTROY_AH_SLEEPABLE,
                core::ptr::null_mut(),
            )
        };
        if ret != 0 {
            pr_err!("tilde_rdma: destroying an address handle failed: {}\n", ret);
        }
    }
}
