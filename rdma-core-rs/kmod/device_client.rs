// SPDX-License-Identifier: GPL-2.0
//! `tilde_core.ko`: tilde's IB core module.
//!
//! For now it carries the device client: every RDMA device added to or removed from the
//! IB core is reported in dmesg with its node GUID, ports, link layer and port states,
//! and so are its asynchronous events (a port going up or down ...).

use kernel::prelude::*;
use rdma_core::{
    client::{Client, Registration},
    device::{Device, DeviceEvent, DeviceEvents, EventWatch},
};

module! {
    type: TildeCore,
    name: "tilde_core",
    description: "tilde IB core (Rust): device client",
    license: "GPL",
}

/// Reports devices as they come and go.
struct DeviceReport;

impl DeviceEvents for DeviceReport {
    fn event(device: &Device, event: DeviceEvent) {
        match event.port {
            Some(port) => pr_info!(
                "{}: port {}: event: {}\n",
                device.name(),
                port,
                event.name()
            ),
            None => pr_info!("{}: event: {}\n", device.name(), event.name()),
        }
    }
}

impl Client for DeviceReport {
    /// The device's event handler, while it is registered.
    type DeviceData = Option<EventWatch<DeviceReport>>;

    fn add(device: &Device) -> Result<Self::DeviceData> {
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
        let events = EventWatch::new(device)
            .inspect_err(|e| pr_warn!("{}: no event handler: {:?}\n", name, e))
            .ok();
        Ok(events)
    }

    fn remove(device: &Device, events: Self::DeviceData) {
        drop(events);
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
