//! The initiator core end to end over the host fabric of `rdma-core-rs`, against a small
//! iSER target written for these tests: login, SCSI reads and writes moved by the
//! target's RDMA WRITE and READ on the initiator's FRWR registrations (immediate data
//! included), sense data, NOP in both directions, task management, text, logout; and a
//! hostile target whose PDU ends the connection with every registration handed back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rdma_core::fabric::{
    CompletionHandler, CompletionQueue, DeviceRef, DmaBuffer, Fabric, MemoryRegion, PollContext,
    ProtectionDomain, QueuePair, Queues, WorkRequest,
};
use rdma_core::verbs::{
    AddressVector, InitAttr, Mtu, QpCaps, RemoteAccess, RtrAttr, RtsAttr, SendOp, WcOpcode,
    WcStatus,
};
use ulp_iser::initiator::{
    DataDirection, Initiator, ProtocolError, ScsiRequest, SubmitError, TaskOutcome, TaskTag, Upcall,
};
use ulp_iser::login::LoginConfig;
use ulp_iser::wire::{
    self, emit, login_current_stage, login_flags, login_next_stage, Header, IserHeader, LoginStage,
    Stag, TextPairs, TextWriter, FLAG_FINAL, RESERVED_TAG,
};

const BLOCK: usize = 512;
const DISK_BLOCKS: usize = 2048;
/// What the target takes in one SEND after the headers (TargetRecvDataSegmentLength).
const TARGET_RECV_DSL: usize = 4096;
const HEADERS: usize = wire::ISER_HEADER_LEN + wire::BHS_LEN;

/// Who a WR belongs to and what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    InitiatorRecv,
    TargetRecv,
    Send,
    Local,
}

type Returned = Arc<Mutex<VecDeque<Box<WorkRequest<Io>>>>>;

/// Every WR of the harness comes back to one queue, with its use.
struct Io {
    returned: Returned,
    purpose: Use,
}

impl CompletionHandler for Io {
    fn complete(wr: Box<WorkRequest<Self>>, _queues: &Queues) {
        let returned = wr.data().returned.clone();
        returned.lock().unwrap().push_back(wr);
    }
}

/// What the initiator told us, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    LoggedIn,
    LoginRefused(u8, u8),
    Ended {
        tag: TaskTag,
        outcome: TaskOutcome,
        sense: Vec<u8>,
        invalidate: Option<u32>,
    },
    Ping(TaskTag),
    Tmf(TaskTag, u8),
    Text(Vec<u8>),
    LogoutRequested(u16),
    LoggedOut(u8),
}

fn own(upcall: Upcall<'_>) -> Got {
    match upcall {
        Upcall::LoggedIn(_) => Got::LoggedIn,
        Upcall::LoginRefused { class, detail } => Got::LoginRefused(class, detail),
        Upcall::TaskEnded(end) => Got::Ended {
            tag: end.tag,
            outcome: end.outcome,
            sense: end.sense.to_vec(),
            invalidate: end.invalidate,
        },
        Upcall::PingAnswered(tag) => Got::Ping(tag),
        Upcall::TaskManagementDone { tag, response } => Got::Tmf(tag, response),
        Upcall::TextResponse { text, .. } => Got::Text(text.to_vec()),
        Upcall::LogoutRequested { seconds } => Got::LogoutRequested(seconds),
        Upcall::AsyncEvent { event } => Got::LoginRefused(0xff, event),
        Upcall::LoggedOut { response } => Got::LoggedOut(response),
    }
}

/// Two RC QPs on one fabric device, the initiator's and the target's.
struct Rig {
    _fabric: Arc<Fabric>,
    device: DeviceRef,
    pd: Arc<ProtectionDomain>,
    cq: Arc<CompletionQueue>,
    initiator: QueuePair,
    target: QueuePair,
    returned: Returned,
}

impl Rig {
    fn new() -> Self {
        let fabric = Fabric::new();
        let device = fabric.add_device("fab0", [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let pd = ProtectionDomain::new(&device).unwrap();
        let cq = CompletionQueue::new(&device, 1024, PollContext::Direct).unwrap();
        let caps = QpCaps {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let initiator = QueuePair::new_rc(&pd, &cq, &cq, &caps).unwrap();
        let target = QueuePair::new_rc(&pd, &cq, &cq, &caps).unwrap();
        let gid = device.query_gid(1, 0).unwrap();
        let av = AddressVector::to_self(&device.query_port(1).unwrap(), gid, true).unwrap();
        for (qp, peer) in [(&initiator, target.qp_num()), (&target, initiator.qp_num())] {
            let access = RemoteAccess::READ | RemoteAccess::WRITE;
            qp.modify_to_init(&InitAttr {
                port: 1,
                pkey_index: 0,
                remote_access: access,
            })
            .unwrap();
            let rtr = RtrAttr {
                port: 1,
                path_mtu: Mtu::Mtu1024,
                dest_qp_num: peer,
                rq_psn: 0,
                max_dest_rd_atomic: 4,
                min_rnr_timer: 12,
                av,
            };
            qp.modify_to_rtr(&rtr).unwrap();
            qp.modify_to_rts(&RtsAttr {
                sq_psn: 0,
                timeout: 14,
                retry_cnt: 7,
                rnr_retry: 7,
                max_rd_atomic: 4,
            })
            .unwrap();
        }
        let rig = Self {
            _fabric: fabric,
            device,
            pd,
            cq,
            initiator,
            target,
            returned: Arc::new(Mutex::new(VecDeque::new())),
        };
        for _ in 0..16 {
            rig.post_recv(Use::InitiatorRecv, HEADERS + 8192);
            rig.post_recv(Use::TargetRecv, HEADERS + TARGET_RECV_DSL + 4);
        }
        rig
    }

    fn wr(&self, purpose: Use, buffer: Option<DmaBuffer>) -> Box<WorkRequest<Io>> {
        let mut wr = WorkRequest::new(Io {
            returned: self.returned.clone(),
            purpose,
        })
        .unwrap();
        wr.replace_buffer(buffer);
        wr
    }

    fn post_recv(&self, purpose: Use, len: usize) {
        let qp = if purpose == Use::InitiatorRecv {
            &self.initiator
        } else {
            &self.target
        };
        qp.post_recv(
            self.wr(purpose, Some(DmaBuffer::new(&self.device, len).unwrap())),
            0,
            len,
        )
        .unwrap();
    }

    fn send(&self, qp: &QueuePair, bytes: &[u8]) {
        let mut buffer = DmaBuffer::new(&self.device, bytes.len()).unwrap();
        buffer.write(0, bytes).unwrap();
        qp.post_send(
            self.wr(Use::Send, Some(buffer)),
            SendOp::Send,
            0,
            bytes.len(),
        )
        .unwrap();
    }

    /// Posts a local WR and waits for it: it is the only thing outstanding of its kind.
    fn wait_local(&self) -> Box<WorkRequest<Io>> {
        for _ in 0..1000 {
            self.cq.poll(64);
            let mut returned = self.returned.lock().unwrap();
            if let Some(i) = returned
                .iter()
                .position(|wr| wr.data().purpose == Use::Local)
            {
                let wr = returned.remove(i).unwrap();
                assert_eq!(
                    wr.completion().status,
                    WcStatus::Success,
                    "{:?}",
                    wr.completion()
                );
                return wr;
            }
        }
        panic!("a local WR never came back");
    }

    /// Registers `len` bytes for the target's RDMA (FRWR) and returns the region.
    fn register(&self, buffer: DmaBuffer, len: usize) -> MemoryRegion {
        let region = MemoryRegion::new(&self.pd, 64, buffer, 0, len).unwrap();
        let access = RemoteAccess::READ | RemoteAccess::WRITE;
        self.initiator
            .post_reg_mr(self.wr(Use::Local, None), region, access)
            .unwrap();
        self.wait_local().take_region().unwrap()
    }

    fn local_inv(&self, rkey: u32) {
        self.initiator
            .post_local_inv(self.wr(Use::Local, None), rkey)
            .unwrap();
        let done = self.wait_local();
        assert_eq!(done.completion().opcode, Some(WcOpcode::LocalInvalidate));
    }

    /// The target's RDMA on an initiator STag: WRITE `data` there, or READ `len` bytes.
    fn target_rdma_write(&self, stag: Stag, data: &[u8]) {
        let mut buffer = DmaBuffer::new(&self.device, data.len()).unwrap();
        buffer.write(0, data).unwrap();
        let op = SendOp::RdmaWrite {
            remote_addr: stag.va,
            rkey: stag.stag,
        };
        self.target
            .post_send(self.wr(Use::Local, Some(buffer)), op, 0, data.len())
            .unwrap();
        self.wait_local();
    }

    fn target_rdma_read(&self, stag: Stag, len: usize) -> Vec<u8> {
        let buffer = DmaBuffer::new(&self.device, len).unwrap();
        let op = SendOp::RdmaRead {
            remote_addr: stag.va,
            rkey: stag.stag,
        };
        self.target
            .post_send(self.wr(Use::Local, Some(buffer)), op, 0, len)
            .unwrap();
        self.wait_local()
            .buffer()
            .unwrap()
            .copy_out(0, len)
            .unwrap()
    }
}

/// A one-LUN iSER target over a RAM disk.
struct Target {
    disk: Vec<u8>,
    statsn: u32,
    exp_cmdsn: u32,
    /// Commands the target takes beyond ExpCmdSN.
    window: u32,
    nop_answers: Vec<u32>,
    /// The highest MaxCmdSN announced: no command may go beyond it.
    max_announced: u32,
    /// Corrupts the next response's ITT (a hostile target).
    lie_about_itt: bool,
}

impl Target {
    fn new() -> Self {
        Self {
            disk: vec![0; BLOCK * DISK_BLOCKS],
            statsn: 100,
            exp_cmdsn: 0,
            window: 8,
            nop_answers: Vec::new(),
            max_announced: 0,
            lie_about_itt: false,
        }
    }

    fn respond<H: wire::PduHeader>(&self, rig: &Rig, header: &H, data: &[u8]) {
        let mut buf = vec![0u8; HEADERS + data.len()];
        let len = emit(&mut buf, &IserHeader::control(None, None), header, data).unwrap();
        rig.send(&rig.target, &buf[..len]);
    }

    /// Numbers a status, and gives the command window.
    fn next_status(&mut self) -> (u32, u32, u32) {
        let statsn = self.statsn;
        self.statsn += 1;
        self.max_announced = self.exp_cmdsn.wrapping_add(self.window - 1);
        (statsn, self.exp_cmdsn, self.max_announced)
    }

    fn handle(&mut self, rig: &Rig, bytes: &[u8]) {
        let pdu = wire::parse(bytes).expect("the initiator sent a malformed PDU");
        match pdu.header {
            Header::LoginRequest(req) => {
                let stage = login_current_stage(req.flags).unwrap();
                let next = login_next_stage(req.flags).unwrap();
                if stage == LoginStage::Security {
                    self.exp_cmdsn = req.cmdsn.get();
                }
                let pairs: Vec<(String, String)> = TextPairs::new(pdu.data)
                    .map(|p| p.unwrap())
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect();
                let mut text_buf = [0u8; 512];
                let mut text = TextWriter::new(&mut text_buf);
                if stage == LoginStage::Security {
                    assert!(pairs.iter().any(|(k, v)| k == "AuthMethod" && v == "None"));
                    text.push("AuthMethod", "None").unwrap();
                    text.push("TargetPortalGroupTag", "1").unwrap();
                } else {
                    assert!(pairs
                        .iter()
                        .any(|(k, v)| k == "RDMAExtensions" && v == "Yes"));
                    for (key, value) in [
                        ("HeaderDigest", "None"),
                        ("DataDigest", "None"),
                        ("RDMAExtensions", "Yes"),
                        ("ImmediateData", "Yes"),
                        ("InitialR2T", "Yes"),
                        ("MaxBurstLength", "262144"),
                        ("FirstBurstLength", "65536"),
                        ("ErrorRecoveryLevel", "0"),
                    ] {
                        text.push(key, value).unwrap();
                    }
                    text.push_number("TargetRecvDataSegmentLength", TARGET_RECV_DSL as u32)
                        .unwrap();
                }
                let mut rsp = wire::LoginResponse::zeroed();
                rsp.flags = login_flags(true, stage, next);
                rsp.isid = req.isid;
                rsp.tsih.set(if next == LoginStage::FullFeature {
                    1
                } else {
                    0
                });
                rsp.itt = req.itt;
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, text.as_bytes());
            }
            Header::ScsiCommand(cmd) => {
                assert_eq!(cmd.cmdsn.get(), self.exp_cmdsn, "commands out of order");
                assert!(
                    cmd.cmdsn.get() <= self.max_announced,
                    "a command beyond the window"
                );
                self.exp_cmdsn += 1;
                let cdb = cmd.cdb;
                let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
                let blocks = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
                let range = lba * BLOCK..(lba + blocks) * BLOCK;
                let mut rsp = wire::ScsiResponse::zeroed();
                rsp.flags = FLAG_FINAL;
                rsp.itt.set(if self.lie_about_itt {
                    cmd.itt.get() ^ 0x0100_0000
                } else {
                    cmd.itt.get()
                });
                let mut sense = Vec::new();
                match cdb[0] {
                    0x00 => {}
                    0x28 | 0x2a if range.end > self.disk.len() => {
                        // CHECK CONDITION: ILLEGAL REQUEST, LBA out of range.
                        rsp.cmd_status = 2;
                        let fixed = [
                            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0,
                        ];
                        sense.extend((fixed.len() as u16).to_be_bytes());
                        sense.extend(fixed);
                    }
                    0x28 => {
                        let stag = pdu.iser.read().expect("a READ without a read STag");
                        rig.target_rdma_write(stag, &self.disk[range]);
                    }
                    0x2a => {
                        let len = cmd.data_length.get() as usize;
                        // ImmediateData=Yes: the SEND carries what fits.
                        assert_eq!(pdu.data.len(), len.min(TARGET_RECV_DSL), "immediate data");
                        let mut data = pdu.data.to_vec();
                        if data.len() < len {
                            let stag = pdu.iser.write().expect("a WRITE without a write STag");
                            data.extend(rig.target_rdma_read(stag, len - data.len()));
                        }
                        self.disk[range].copy_from_slice(&data);
                    }
                    other => panic!("unexpected CDB opcode {other:#x}"),
                }
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, &sense);
            }
            Header::NopOut(nop) => {
                if nop.itt.get() == RESERVED_TAG {
                    self.nop_answers.push(nop.ttt.get());
                    return;
                }
                let mut rsp = wire::NopIn::zeroed();
                rsp.flags = FLAG_FINAL;
                rsp.itt = nop.itt;
                rsp.ttt.set(RESERVED_TAG);
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, &[]);
            }
            Header::TaskMgmt(tmf) => {
                let mut rsp = wire::TaskMgmtResponse::zeroed();
                rsp.flags = FLAG_FINAL;
                // Commands complete as they arrive here: the task is always gone.
                rsp.response = 1;
                rsp.itt = tmf.itt;
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, &[]);
            }
            Header::TextRequest(req) => {
                self.exp_cmdsn += 1;
                assert_eq!(pdu.data, b"SendTargets=All\0");
                let mut rsp = wire::TextResponse::zeroed();
                rsp.flags = FLAG_FINAL;
                rsp.itt = req.itt;
                rsp.ttt.set(RESERVED_TAG);
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, b"TargetName=iqn.2026-11.test:ram\0");
            }
            Header::Logout(req) => {
                let mut rsp = wire::LogoutResponse::zeroed();
                rsp.flags = FLAG_FINAL;
                rsp.itt = req.itt;
                let (statsn, exp, max) = self.next_status();
                rsp.statsn.set(statsn);
                rsp.exp_cmdsn.set(exp);
                rsp.max_cmdsn.set(max);
                self.respond(rig, &rsp, &[]);
            }
            other => panic!("the target got {other:?}"),
        }
    }

    /// The target pings the initiator (NOP-In, ITT reserved, TTT `ttt`).
    fn ping(&mut self, rig: &Rig, ttt: u32) {
        let mut nop = wire::NopIn::zeroed();
        nop.flags = FLAG_FINAL;
        nop.itt.set(RESERVED_TAG);
        nop.ttt.set(ttt);
        nop.statsn.set(self.statsn);
        nop.exp_cmdsn.set(self.exp_cmdsn);
        nop.max_cmdsn.set(self.exp_cmdsn + self.window - 1);
        self.respond(rig, &nop, &[]);
    }
}

/// An initiator over the rig, with the registrations of its tasks.
struct Host<'c> {
    core: Initiator<'c, 32>,
    regions: Vec<(TaskTag, MemoryRegion)>,
    got: Vec<Got>,
}

const CONFIG: LoginConfig<'static> = LoginConfig {
    initiator_name: "iqn.2026-11.tilde:host",
    target_name: Some("iqn.2026-11.test:ram"),
    isid: [0x80, 0, 0x02, 0x3d, 0, 1],
    recv_data_segment_length: 8192,
    max_burst_length: 262_144,
    first_burst_length: 65_536,
    immediate_data: true,
    initial_r2t: true,
    max_outstanding_unexpected_pdus: 0,
};

impl Host<'_> {
    fn new() -> Self {
        Self {
            core: Initiator::new(CONFIG),
            regions: Vec::new(),
            got: Vec::new(),
        }
    }

    /// Moves PDUs both ways until nothing moves; the last protocol error, if any.
    fn run(&mut self, rig: &Rig, target: &mut Target) -> Result<(), ProtocolError> {
        loop {
            let mut moved = false;
            let mut buf = [0u8; HEADERS + 1024];
            while let Some(t) = self.core.poll_transmit(&mut buf).unwrap() {
                let mut bytes = buf[..t.len].to_vec();
                if let Some((tag, len)) = t.immediate {
                    let (_, region) = self.regions.iter().find(|(t, _)| *t == tag).unwrap();
                    bytes.extend(region.buffer().copy_out(0, len as usize).unwrap());
                }
                rig.send(&rig.initiator, &bytes);
                moved = true;
            }
            rig.cq.poll(64);
            let returned: Vec<_> = rig.returned.lock().unwrap().drain(..).collect();
            for wr in returned {
                moved = true;
                let purpose = wr.data().purpose;
                let len = wr.completion().byte_len as usize;
                match purpose {
                    Use::TargetRecv => {
                        assert_eq!(wr.completion().status, WcStatus::Success);
                        let bytes = wr.buffer().unwrap().copy_out(0, len).unwrap();
                        rig.post_recv(Use::TargetRecv, HEADERS + TARGET_RECV_DSL + 4);
                        target.handle(rig, &bytes);
                    }
                    Use::InitiatorRecv => {
                        assert_eq!(wr.completion().status, WcStatus::Success);
                        let bytes = wr.buffer().unwrap().copy_out(0, len).unwrap();
                        rig.post_recv(Use::InitiatorRecv, HEADERS + 8192);
                        let invalidated = wr.completion().invalidated_rkey;
                        let got = &mut self.got;
                        self.core
                            .receive(&bytes, invalidated, &mut |u| got.push(own(u)))?;
                    }
                    Use::Send => assert_eq!(wr.completion().status, WcStatus::Success),
                    Use::Local => panic!("a stray local WR"),
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn login(&mut self, rig: &Rig, target: &mut Target) {
        self.core.start_login();
        self.run(rig, target).unwrap();
        assert_eq!(self.got.drain(..).collect::<Vec<_>>(), [Got::LoggedIn]);
        let params = self.core.negotiated().unwrap();
        assert_eq!(
            params.target_recv_data_segment_length,
            TARGET_RECV_DSL as u32
        );
        assert!(params.immediate_data);
    }

    /// Submits a READ(10) or WRITE(10) of `blocks` at `lba`, with its data registered.
    fn rw(&mut self, rig: &Rig, write: Option<&[u8]>, lba: u32, blocks: u16) -> TaskTag {
        let len = usize::from(blocks) * BLOCK;
        let mut buffer = DmaBuffer::new(&rig.device, len).unwrap();
        if let Some(data) = write {
            buffer.write(0, data).unwrap();
        }
        let region = rig.register(buffer, len);
        let stag = Stag {
            stag: region.rkey(),
            va: region.iova(),
        };
        let mut cdb = [0u8; 16];
        cdb[0] = if write.is_some() { 0x2a } else { 0x28 };
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let data = match write {
            Some(_) => DataDirection::Write {
                stag,
                len: len as u32,
            },
            None => DataDirection::Read {
                stag,
                len: len as u32,
            },
        };
        let tag = self.core.submit(ScsiRequest { lun: 0, cdb, data }).unwrap();
        self.regions.push((tag, region));
        tag
    }

    /// Ends a task's registration as its TaskEnd says, and returns its data.
    fn retire(&mut self, rig: &Rig, tag: TaskTag, invalidate: Option<u32>) -> Vec<u8> {
        let i = self.regions.iter().position(|(t, _)| *t == tag).unwrap();
        let (_, region) = self.regions.remove(i);
        assert_eq!(
            invalidate,
            Some(region.rkey()),
            "the task's STag must be invalidated"
        );
        rig.local_inv(region.rkey());
        region
            .buffer()
            .copy_out(0, region.length() as usize)
            .unwrap()
    }
}

/// `len` bytes that do not repeat (each a hash of its position and `seed`): a transfer
/// that lands a block at the wrong offset, or the same block twice, reads back different.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(seed) << 32);
            (x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 56) as u8
        })
        .collect()
}

#[test]
fn login_write_read_back_and_logout() {
    let rig = Rig::new();
    let mut target = Target::new();
    let mut host = Host::new();
    host.login(&rig, &mut target);

    // 8 KiB: 4 KiB immediate (TargetRecvDataSegmentLength), the rest by RDMA READ.
    let data = pattern(16 * BLOCK, 7);
    let write = host.rw(&rig, Some(&data), 10, 16);
    host.run(&rig, &mut target).unwrap();
    let Some(Got::Ended {
        tag,
        outcome,
        invalidate,
        ..
    }) = host.got.pop()
    else {
        panic!("{:?}", host.got)
    };
    assert_eq!(tag, write);
    assert_eq!(
        outcome,
        TaskOutcome::Completed {
            response: 0,
            status: 0,
            residual: 0
        }
    );
    host.retire(&rig, tag, invalidate);
    assert_eq!(&target.disk[10 * BLOCK..26 * BLOCK], &data[..]);

    // Read it back through the target's RDMA WRITE.
    let read = host.rw(&rig, None, 10, 16);
    host.run(&rig, &mut target).unwrap();
    let Some(Got::Ended {
        tag,
        outcome,
        invalidate,
        ..
    }) = host.got.pop()
    else {
        panic!()
    };
    assert_eq!(
        (tag, outcome),
        (
            read,
            TaskOutcome::Completed {
                response: 0,
                status: 0,
                residual: 0
            }
        )
    );
    assert_eq!(host.retire(&rig, tag, invalidate), data);

    // Many at once: more than the target's window of 8, so CmdSN flow control holds
    // some back until responses open it.
    let tags: Vec<_> = (0..12)
        .map(|i| host.rw(&rig, Some(&pattern(BLOCK, i)), 100 + u32::from(i), 1))
        .collect();
    host.run(&rig, &mut target).unwrap();
    let ended: Vec<_> = host.got.drain(..).collect();
    assert_eq!(ended.len(), 12);
    for got in ended {
        let Got::Ended {
            tag,
            outcome,
            invalidate,
            ..
        } = got
        else {
            panic!()
        };
        assert!(tags.contains(&tag));
        assert_eq!(
            outcome,
            TaskOutcome::Completed {
                response: 0,
                status: 0,
                residual: 0
            }
        );
        host.retire(&rig, tag, invalidate);
    }
    for i in 0..12u8 {
        let at = (100 + usize::from(i)) * BLOCK;
        assert_eq!(&target.disk[at..at + BLOCK], &pattern(BLOCK, i)[..]);
    }

    host.core.logout().unwrap();
    // Nothing is taken after the logout (RFC 7143 §11.14).
    let late = ScsiRequest {
        lun: 0,
        cdb: [0; 16],
        data: DataDirection::None,
    };
    assert_eq!(host.core.submit(late), Err(SubmitError::NotLoggedIn));
    host.run(&rig, &mut target).unwrap();
    assert_eq!(host.got.drain(..).collect::<Vec<_>>(), [Got::LoggedOut(0)]);
    assert_eq!(
        host.core.submit(ScsiRequest {
            lun: 0,
            cdb: [0; 16],
            data: DataDirection::None
        }),
        Err(SubmitError::NotLoggedIn)
    );
}

#[test]
fn sense_data_pings_text_and_task_management() {
    let rig = Rig::new();
    let mut target = Target::new();
    let mut host = Host::new();
    host.login(&rig, &mut target);

    // Past the end of the disk: CHECK CONDITION with fixed-format sense.
    let read = host.rw(&rig, None, DISK_BLOCKS as u32, 1);
    host.run(&rig, &mut target).unwrap();
    let Some(Got::Ended {
        tag,
        outcome,
        sense,
        invalidate,
    }) = host.got.pop()
    else {
        panic!()
    };
    assert_eq!(tag, read);
    assert_eq!(
        outcome,
        TaskOutcome::Completed {
            response: 0,
            status: 2,
            residual: 0
        }
    );
    assert_eq!((sense[0], sense[2], sense[12]), (0x70, 0x05, 0x21));
    host.retire(&rig, tag, invalidate);

    // Our ping, and the target's.
    let ping = host.core.ping().unwrap();
    host.run(&rig, &mut target).unwrap();
    assert_eq!(host.got.drain(..).collect::<Vec<_>>(), [Got::Ping(ping)]);
    target.ping(&rig, 0x1234);
    host.run(&rig, &mut target).unwrap();
    assert_eq!(target.nop_answers, [0x1234]);
    assert!(host.got.is_empty());

    // Text: SendTargets.
    host.core.text(b"SendTargets=All\0").unwrap();
    host.run(&rig, &mut target).unwrap();
    assert_eq!(
        host.got.drain(..).collect::<Vec<_>>(),
        [Got::Text(b"TargetName=iqn.2026-11.test:ram\0".to_vec())]
    );

    // ABORT of a task not sent yet: it ends here, no TMF.
    let tur = host
        .core
        .submit(ScsiRequest {
            lun: 0,
            cdb: [0; 16],
            data: DataDirection::None,
        })
        .unwrap();
    let got = &mut host.got;
    let abort = host.core.abort(tur, &mut |u| got.push(own(u))).unwrap();
    assert_eq!(abort, None, "a queued task ends without a TMF");
    assert!(
        matches!(host.got.pop(), Some(Got::Ended { tag, outcome: TaskOutcome::Aborted, .. }) if tag == tur)
    );
    host.run(&rig, &mut target).unwrap();
    assert!(
        host.got.is_empty(),
        "the aborted task was sent anyway: {:?}",
        host.got
    );

    // ABORT TASK of a sent task the target never saw (the harness drops the command):
    // the target answers "no such task", and the task stays until the connection ends.
    let lost = host
        .core
        .submit(ScsiRequest {
            lun: 0,
            cdb: [0; 16],
            data: DataDirection::None,
        })
        .unwrap();
    let mut buf = [0u8; 512];
    host.core.poll_transmit(&mut buf).unwrap().unwrap();
    let got = &mut host.got;
    let abort = host
        .core
        .abort(lost, &mut |u| got.push(own(u)))
        .unwrap()
        .unwrap();
    host.run(&rig, &mut target).unwrap();
    assert_eq!(host.got.drain(..).collect::<Vec<_>>(), [Got::Tmf(abort, 1)]);
    let got = &mut host.got;
    host.core.fail(&mut |u| got.push(own(u)));
    assert!(
        matches!(host.got.as_slice(), [Got::Ended { tag, outcome: TaskOutcome::Aborted, invalidate: None, .. }] if *tag == lost)
    );
}

#[test]
fn a_hostile_target_ends_the_connection_and_every_registration_comes_back() {
    let rig = Rig::new();
    let mut target = Target::new();
    let mut host = Host::new();
    host.login(&rig, &mut target);
    let tags: Vec<_> = (0..3).map(|i| host.rw(&rig, None, i, 1)).collect();
    target.lie_about_itt = true;
    let error = host.run(&rig, &mut target).unwrap_err();
    assert!(matches!(error, ProtocolError::UnknownTask(_)), "{error:?}");
    // Tear down: every task ends aborted, each with its STag to invalidate.
    let got = &mut host.got;
    got.clear();
    host.core.fail(&mut |u| got.push(own(u)));
    assert_eq!(host.got.len(), 3);
    for got in std::mem::take(&mut host.got) {
        let Got::Ended {
            tag,
            outcome,
            invalidate,
            ..
        } = got
        else {
            panic!()
        };
        assert!(tags.contains(&tag));
        assert_eq!(outcome, TaskOutcome::Aborted);
        host.retire(&rig, tag, invalidate);
    }
    assert!(host.regions.is_empty());
    // Nothing more is sent on a failed connection.
    assert_eq!(host.core.poll_transmit(&mut [0u8; 256]).unwrap(), None);
}

#[test]
fn garbage_from_the_target_is_a_protocol_error_never_a_panic() {
    let mut core: Initiator<'_, 4> = Initiator::new(CONFIG);
    core.start_login();
    let mut buf = [0u8; 2048];
    core.poll_transmit(&mut buf).unwrap().unwrap();
    let mut sink = |_: Upcall<'_>| {};
    // A SCSI response during login.
    let mut rsp = wire::ScsiResponse::zeroed();
    rsp.itt.set(0);
    let len = emit(&mut buf, &IserHeader::control(None, None), &rsp, &[]).unwrap();
    assert_eq!(
        core.receive(&buf[..len], None, &mut sink),
        Err(ProtocolError::UnexpectedPdu(0x21))
    );
    // Short garbage.
    let mut fresh: Initiator<'_, 4> = Initiator::new(CONFIG);
    fresh.start_login();
    fresh.poll_transmit(&mut buf).unwrap();
    assert!(matches!(
        fresh.receive(&[0x10; 30], None, &mut sink),
        Err(ProtocolError::Wire(_))
    ));
}
