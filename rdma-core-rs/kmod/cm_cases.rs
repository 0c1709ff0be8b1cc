// SPDX-License-Identifier: GPL-2.0
//! The RDMA CM cases: connect, accept, data, disconnect; and a rejected connect. Both
//! ends run here, over the device's own IPv4 address (RoCE puts it in the GID table).
//!
//! Kernel only for now: the host fabric has no CM yet (README, "Open ends").

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use rdma_core::{
    cm::{CmEvent, CmId, ConnParam},
    dma::DmaBuffer,
    mailbox::Mailbox,
    qp::SendOp,
    verbs::{WcOpcode, WcStatus},
};

use crate::cases::{check, patterned, CaseResult, Failure, Outcome, Rig, CAPS};

/// How long any one CM step may take under QEMU TCG.
const STEP: Duration = Duration::from_secs(5);

/// Runs the CM cases, handing each result to `record`.
pub(crate) fn run(rig: &Rig, record: &mut dyn FnMut(&str, CaseResult)) {
    record("cm_connect_send_disconnect", cm_connect_send_disconnect(rig, 18515));
    record("cm_reject", cm_reject(rig, 18516));
}

/// The first IPv4 address in the port's GID table.
fn local_ipv4(rig: &Rig) -> Outcome<Ipv4Addr> {
    let entries = rig.device.query_port(rig.port)?.gid_tbl_len.min(32);
    (0..entries)
        .filter_map(|index| rig.device.query_gid(rig.port, index).ok())
        .find_map(|gid| gid.ipv4())
        .ok_or(Failure::Check("the port has no IPv4 GID"))
}

/// The next event of `id`; `waiting_for` names it for the failure if none comes.
fn event(id: &CmId, waiting_for: &'static str) -> Outcome<CmEvent> {
    id.next_event(STEP).map_err(|error| {
        if error == rdma_core::kernel_api::timed_out() {
            Failure::Check(waiting_for)
        } else {
            Failure::Verb(error)
        }
    })
}

fn param(private_data: &[u8]) -> ConnParam<'_> {
    ConnParam {
        private_data,
        responder_resources: 1,
        initiator_depth: 1,
        retry_count: 7,
        rnr_retry_count: 7,
    }
}

/// A listening id on `addr`.
fn listener(addr: SocketAddrV4) -> Outcome<CmId> {
    let id = CmId::new_rc()?;
    id.bind(addr)?;
    id.listen(4)?;
    Ok(id)
}

/// An id with its address and route resolved to `addr` and a QP on the rig.
fn resolved(rig: &Rig, addr: SocketAddrV4) -> Outcome<CmId> {
    let mut id = CmId::new_rc()?;
    id.resolve_addr(addr, STEP)?;
    check(matches!(event(&id, "no ADDR_RESOLVED within 5 s")?, CmEvent::AddrResolved), "address resolution failed")?;
    id.resolve_route(STEP)?;
    check(matches!(event(&id, "no ROUTE_RESOLVED within 5 s")?, CmEvent::RouteResolved), "route resolution failed")?;
    check(id.device().is_some_and(|device| device.is(&rig.device)), "the CM chose another device")?;
    id.create_qp(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    Ok(id)
}

/// The connect request a listener gets, checked to carry `private_data`.
fn request(listener: &CmId, private_data: &[u8]) -> Outcome<CmId> {
    let CmEvent::ConnectRequest(request) = event(listener, "no CONNECT_REQUEST within 5 s")? else {
        return Err(Failure::Check("the listener got no connect request"));
    };
    // Private data arrives padded to the CM message's size.
    check(request.private_data.starts_with(private_data), "the request lost its private data")?;
    Ok(request.id)
}

fn cm_connect_send_disconnect(rig: &Rig, port: u16) -> CaseResult {
    let addr = SocketAddrV4::new(local_ipv4(rig)?, port);
    let mut mailbox = Mailbox::new()?;
    let listen = listener(addr)?;
    let client = resolved(rig, addr)?;
    client.connect(&param(b"tilde-cm hello"))?;
    let mut server = request(&listen, b"tilde-cm hello")?;
    server.create_qp(&rig.pd, &rig.cq, &rig.cq, &CAPS)?;
    let server_qp = server.qp().ok_or(Failure::Check("the accepted id has no QP"))?;
    server_qp.post_recv(mailbox.work_request(2, Some(DmaBuffer::new(&rig.device, 64)?))?, 0, 64)?;
    server.accept(&param(b"tilde-cm welcome"))?;
    let CmEvent::Established { private_data } = event(&client, "no ESTABLISHED on the connecting side within 5 s")? else {
        return Err(Failure::Check("the connecting side was not established"));
    };
    check(private_data.starts_with(b"tilde-cm welcome"), "the accept lost its private data")?;
    check(matches!(event(&server, "no ESTABLISHED on the accepting side within 5 s")?, CmEvent::Established { .. }), "the accepting side was not established")?;
    let client_qp = client.qp().ok_or(Failure::Check("the connecting id has no QP"))?;
    client_qp.post_send(mailbox.work_request(1, Some(patterned(&rig.device, 64, 3)?))?, SendOp::Send, 0, 64)?;
    let sent = mailbox.wait(1, &rig.cq, STEP)?;
    let received = mailbox.wait(2, &rig.cq, STEP)?;
    check(sent.completion().status == WcStatus::Success, "the SEND over the CM connection failed")?;
    check(received.completion().opcode == Some(WcOpcode::Recv), "the receive over the CM connection failed")?;
    let (Some(sent), Some(received)) = (sent.buffer(), received.buffer()) else {
        return Err(Failure::Check("a work request came back without its buffer"));
    };
    check(*received.copy_out(0, 64)? == *sent.copy_out(0, 64)?, "data over the CM connection differs")?;
    // The CM's disconnect handshake: DREQ, the peer's DISCONNECTED, its own disconnect
    // (the DREP), then DISCONNECTED on the side that began.
    client.disconnect()?;
    check(matches!(event(&server, "no DISCONNECTED on the peer within 5 s")?, CmEvent::Disconnected), "the peer got no DISCONNECTED")?;
    server.disconnect()?;
    check(matches!(event(&client, "no DISCONNECTED on the disconnecting side within 5 s")?, CmEvent::Disconnected), "the disconnecting side got no DISCONNECTED")
}

fn cm_reject(rig: &Rig, port: u16) -> CaseResult {
    let addr = SocketAddrV4::new(local_ipv4(rig)?, port);
    let listen = listener(addr)?;
    let client = resolved(rig, addr)?;
    client.connect(&param(b"tilde-cm please"))?;
    let refused = request(&listen, b"tilde-cm please")?;
    refused.reject(b"tilde-cm no")?;
    let CmEvent::Rejected { reason, private_data } = event(&client, "no REJECTED within 5 s")? else {
        return Err(Failure::Check("the connecting side was not told of the reject"));
    };
    // IB_CM_REJ_CONSUMER_DEFINED: the peer's own decision.
    check(reason == 28, "the reject does not carry the consumer-defined reason")?;
    check(private_data.starts_with(b"tilde-cm no"), "the reject lost its private data")
}
