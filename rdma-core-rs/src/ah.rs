// SPDX-License-Identifier: GPL-2.0
//! Address handles: where a UD work request goes.

use core::ptr::NonNull;

use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::Device;
use crate::pd::ProtectionDomain;
use crate::sys;
use crate::verbs::AddressVector;

/// `av` from `port` as the IB core takes it, for an address handle or a QP's path.
pub(crate) fn ah_attr(port: u32, av: &AddressVector) -> sys::rdma_ah_attr {
    let mut attr = sys::rdma_ah_attr {
        port_num: port,
        ..Default::default()
    };
    match *av {
        AddressVector::Ib { dlid, sl, .. } => {
            attr.type_ = sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_IB;
            attr.sl = sl;
            attr.__bindgen_anon_1.ib = sys::ib_ah_attr {
                dlid,
                src_path_bits: 0,
            };
        }
        AddressVector::Roce { dmac, .. } => {
            attr.type_ = sys::rdma_ah_attr_type_RDMA_AH_ATTR_TYPE_ROCE;
            attr.__bindgen_anon_1.roce.dmac = dmac;
        }
    }
    if let Some(grh) = av.grh() {
        attr.ah_flags = sys::ib_ah_flags_IB_AH_GRH as u8;
        attr.grh.dgid.raw = grh.dgid.0;
        attr.grh.sgid_index = grh.sgid_index;
        attr.grh.hop_limit = grh.hop_limit;
    }
    attr
}

/// A UD destination (`rdma_create_ah`), destroyed on drop. On RoCE the IB core does not
/// resolve the destination MAC for kernel callers (only `rdma_create_user_ah` calls
/// `ib_resolve_eth_dmac`), so the vector carries it; without it rxe sends even a datagram
/// to itself out on the wire. Shared through [`Arc`]: a UD send takes a reference along
/// until it completes.
pub struct AddressHandle {
    ah: NonNull<sys::ib_ah>,
    pd: Arc<ProtectionDomain>,
}

// SAFETY: the `ib_ah` is used only through verbs the IB core allows from any thread.
unsafe impl Send for AddressHandle {}
// SAFETY: as above; nothing in it changes after creation.
unsafe impl Sync for AddressHandle {}

impl AddressHandle {
    /// A handle for the peer `av` names, reached from `port`.
    pub fn new(pd: &Arc<ProtectionDomain>, port: u32, av: &AddressVector) -> Result<Arc<Self>> {
        let mut attr = ah_attr(port, av);
        // SAFETY: the PD is valid (we hold a reference); `attr` is a valid attribute block for the call,
        // which may sleep (we are in process context).
        let ah = from_err_ptr(unsafe {
            sys::rdma_create_ah(
                pd.as_raw(),
                &mut attr,
                sys::rdma_create_ah_flags_RDMA_CREATE_AH_SLEEPABLE,
            )
        })?;
        let ah = Self {
            ah: NonNull::new(ah).ok_or(ENOMEM)?,
            pd: pd.clone(),
        };
        Ok(Arc::new(ah, GFP_KERNEL)?)
    }

    /// [`AddressHandle::new`] from atomic context (a transmit path, under a spinlock):
    /// the device is told not to sleep, and the memory is taken without sleeping.
    pub fn new_atomic(
        pd: &Arc<ProtectionDomain>,
        port: u32,
        av: &AddressVector,
    ) -> Result<Arc<Self>> {
        let mut attr = ah_attr(port, av);
        // SAFETY: the PD is valid (we hold a reference); `attr` is a valid attribute
        // block for the call, which is told not to sleep.
        let ah = from_err_ptr(unsafe { sys::rdma_create_ah(pd.as_raw(), &mut attr, 0) })?;
        let ah = Self {
            ah: NonNull::new(ah).ok_or(ENOMEM)?,
            pd: pd.clone(),
        };
        Ok(Arc::new(ah, GFP_ATOMIC)?)
    }

    /// The device the handle belongs to.
    pub fn device(&self) -> &Device {
        self.pd.device()
    }

    pub(crate) fn as_raw(&self) -> *mut sys::ib_ah {
        self.ah.as_ptr()
    }
}

impl Drop for AddressHandle {
    fn drop(&mut self) {
        // The last reference may go with a UD send's completion, in softirq context: an
        // AH can be destroyed there, told not to sleep.
        // SAFETY: a pure query of the current context.
        let flags = if unsafe { sys::tilde_rdma_may_sleep() } {
            sys::rdma_destroy_ah_flags_RDMA_DESTROY_AH_SLEEPABLE
        } else {
            0
        };
        // SAFETY: the AH is valid and unused: a UD send holds a reference until it
        // completes.
        let ret =
            unsafe { sys::rdma_destroy_ah_user(self.ah.as_ptr(), flags, core::ptr::null_mut()) };
        if ret != 0 {
            pr_err!(
                "{}: destroying an address handle failed: {}\n",
                self.device().name(),
                ret
            );
        }
    }
}
