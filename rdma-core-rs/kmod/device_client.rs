// SPDX-License-Identifier: GPL-2.0
//! `tilde_core.ko`: tilde's IB core module.
//!
//! For now it carries the device client: every RDMA device added to or removed from the
//! IB core is reported in dmesg with its node GUID, ports, link layer and port states.

use kernel::prelude::*;
use rdma_core::{
    client::{Client, Registration},
    device::Device,
};

module! {
    type: TildeCore,
    name: "tilde_core",
    description: "tilde IB core (Rust): device client",
    license: "GPL",
}

/// Reports devices as they come and go.
struct DeviceReport;

impl Client for DeviceReport {
    type DeviceData = ();

    fn add(device: &Device) -> Result<()> {
        let name = device.name();
        let ports = device.ports();
        pr_info!(
            "{}: added: node_guid {} ports {}\n",
            name,
            device.node_guid(),
            ports.clone().count()
        );
        for port in ports {
            match device.query_port(port) {
                Ok(attr) => pr_info!("{}: port {}: {}\n", name, port, attr),
                Err(e) => pr_warn!("{}: port {}: query failed: {:?}\n", name, port, e),
            }
        }
        Ok(())
    }

    fn remove(device: &Device, _data: ()) {
        pr_info!("{}: removed\n", device.name());
    }
}

rdma_core::ib_client!(DeviceReport, c"tilde_core");

struct TildeCore {
    _client: Registration<DeviceReport>,
}

impl kernel::Module for TildeCore {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let client = Registration::register()?;
        pr_info!("loaded: device client registered\n");
        Ok(Self { _client: client })
    }
}

impl Drop for TildeCore {
    fn drop(&mut self) {
        pr_info!("unloading: unregistering device client\n");
    }
}
