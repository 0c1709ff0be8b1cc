//! Login negotiation: the keys an iSER initiator offers and how the target's answers
//! settle them (RFC 7143 §13, RFC 7145 §6).

use crate::wire::{parse_number, TextPairs, TextWriter, WireError};

/// What the initiator asks for at login.
#[derive(Clone, Copy, Debug)]
pub struct LoginConfig<'a> {
    /// `InitiatorName` (an iqn).
    pub initiator_name: &'a str,
    /// `TargetName`; `None` for a discovery session.
    pub target_name: Option<&'a str>,
    /// The initiator part of the session id.
    pub isid: [u8; 6],
    /// `InitiatorRecvDataSegmentLength`: the largest data segment we take in a SEND
    /// (our receive buffers' payload).
    pub recv_data_segment_length: u32,
    /// `MaxBurstLength` offered.
    pub max_burst_length: u32,
    /// `FirstBurstLength` offered.
    pub first_burst_length: u32,
    /// `ImmediateData` offered.
    pub immediate_data: bool,
    /// `InitialR2T` offered.
    pub initial_r2t: bool,
    /// `MaxOutstandingUnexpectedPDUs` (0: no limit declared).
    pub max_outstanding_unexpected_pdus: u32,
}

/// The operational parameters both sides settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The largest data segment the target takes in one SEND
    /// (`TargetRecvDataSegmentLength`).
    pub target_recv_data_segment_length: u32,
    /// Ours, as declared.
    pub initiator_recv_data_segment_length: u32,
    /// `MaxBurstLength`: the most solicited data in one sequence.
    pub max_burst_length: u32,
    /// `FirstBurstLength`: the most unsolicited data (immediate and Data-Out) one command
    /// carries; never above `max_burst_length`.
    pub first_burst_length: u32,
    /// `ImmediateData`: whether a write command's SEND may carry data.
    pub immediate_data: bool,
    /// `InitialR2T`: whether unsolicited Data-Out PDUs are forbidden (immediate data
    /// aside).
    pub initial_r2t: bool,
    /// Our `MaxOutstandingUnexpectedPDUs`, as declared (0: no limit).
    pub max_outstanding_unexpected_pdus: u32,
    /// The target's declared `MaxOutstandingUnexpectedPDUs` (0: no limit, or none
    /// declared).
    pub target_max_outstanding_unexpected_pdus: u32,
}

/// Why a login's negotiation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiationError {
    /// The text was malformed.
    Wire(WireError),
    /// The target refused iSER (`RDMAExtensions=No`), or never agreed to it.
    NoRdmaExtensions,
    /// The target answered a key with a value the rules do not allow (a digest, a
    /// second connection, an error recovery level above 0, a length out of range).
    Unacceptable,
}

impl From<WireError> for NegotiationError {
    fn from(error: WireError) -> Self {
        Self::Wire(error)
    }
}

/// The keys of the security stage: who we are, where to, and no authentication.
pub fn write_security_keys(
    config: &LoginConfig<'_>,
    text: &mut TextWriter<'_>,
) -> Result<(), WireError> {
    text.push("InitiatorName", config.initiator_name)?;
    match config.target_name {
        Some(target) => {
            text.push("SessionType", "Normal")?;
            text.push("TargetName", target)?;
        }
        None => text.push("SessionType", "Discovery")?,
    }
    text.push("AuthMethod", "None")
}

/// The keys of the operational stage, iSER's included.
pub fn write_operational_keys(
    config: &LoginConfig<'_>,
    text: &mut TextWriter<'_>,
) -> Result<(), WireError> {
    let yes_no = |b: bool| if b { "Yes" } else { "No" };
    text.push("HeaderDigest", "None")?;
    text.push("DataDigest", "None")?;
    text.push("RDMAExtensions", "Yes")?;
    if config.target_name.is_some() {
        text.push_number("MaxConnections", 1)?;
        text.push("InitialR2T", yes_no(config.initial_r2t))?;
        text.push("ImmediateData", yes_no(config.immediate_data))?;
        text.push_number("MaxBurstLength", config.max_burst_length)?;
        text.push_number("FirstBurstLength", config.first_burst_length)?;
        text.push_number("MaxOutstandingR2T", 1)?;
        text.push("DataPDUInOrder", "Yes")?;
        text.push("DataSequenceInOrder", "Yes")?;
        // Declarative, and 0 (no limit) is the default: sent only to declare a limit.
        // LIO does not know the key and answers NotUnderstood.
        if config.max_outstanding_unexpected_pdus != 0 {
            text.push_number(
                "MaxOutstandingUnexpectedPDUs",
                config.max_outstanding_unexpected_pdus,
            )?;
        }
    }
    text.push_number("ErrorRecoveryLevel", 0)?;
    // What we take in a SEND. `TargetRecvDataSegmentLength` is the target's to declare:
    // offering ours would let LIO accept a size isert's receive buffers (8 KiB) cannot
    // hold; until it declares one, RFC 7145's default of 8192 applies.
    text.push_number(
        "InitiatorRecvDataSegmentLength",
        config.recv_data_segment_length,
    )
}

/// The negotiation so far: our offer, updated by each answer of the target.
#[derive(Clone, Copy, Debug)]
pub struct Negotiation {
    params: Negotiated,
    rdma_extensions: bool,
}

impl Negotiation {
    /// Starts from our offer. RFC 7143's defaults apply to keys the target never
    /// answers, except `RDMAExtensions`, which the target must accept.
    pub fn new(config: &LoginConfig<'_>) -> Self {
        Self {
            params: Negotiated {
                // RFC 7145 §6.4: the default when the target declares nothing.
                target_recv_data_segment_length: 8192,
                initiator_recv_data_segment_length: config.recv_data_segment_length,
                max_burst_length: config.max_burst_length,
                first_burst_length: config.first_burst_length,
                immediate_data: config.immediate_data,
                initial_r2t: config.initial_r2t,
                max_outstanding_unexpected_pdus: config.max_outstanding_unexpected_pdus,
                target_max_outstanding_unexpected_pdus: 0,
            },
            rdma_extensions: false,
        }
    }

    /// Applies the target's answers in a login response's text.
    pub fn apply(&mut self, text: &[u8]) -> Result<(), NegotiationError> {
        for pair in TextPairs::new(text) {
            let (key, value) = pair?;
            self.apply_pair(key, value)?;
        }
        Ok(())
    }

    fn apply_pair(&mut self, key: &str, value: &str) -> Result<(), NegotiationError> {
        // RFC 7143 §6.2: a key the target does not know, finds irrelevant or rejects
        // leaves our value (or the default) in force; iSER itself cannot be refused.
        if matches!(value, "NotUnderstood" | "Irrelevant" | "Reject") {
            return if key == "RDMAExtensions" {
                Err(NegotiationError::NoRdmaExtensions)
            } else {
                Ok(())
            };
        }
        let p = &mut self.params;
        let number = || parse_number(value).map_err(NegotiationError::from);
        let boolean = || match value {
            "Yes" => Ok(true),
            "No" => Ok(false),
            _ => Err(NegotiationError::Unacceptable),
        };
        match key {
            "RDMAExtensions" => {
                if !boolean()? {
                    return Err(NegotiationError::NoRdmaExtensions);
                }
                self.rdma_extensions = true;
            }
            "TargetRecvDataSegmentLength" => {
                let n = number()?;
                if !(512..=(1 << 24) - 1).contains(&n) {
                    return Err(NegotiationError::Unacceptable);
                }
                p.target_recv_data_segment_length = n;
            }
            // The target may lower what we receive, never raise it.
            "InitiatorRecvDataSegmentLength" => {
                let n = number()?;
                if n < 512 || n > p.initiator_recv_data_segment_length {
                    return Err(NegotiationError::Unacceptable);
                }
                p.initiator_recv_data_segment_length = n;
            }
            // Numerical minimums: the result may not exceed the offer.
            "MaxBurstLength" => p.max_burst_length = minimum(number()?, p.max_burst_length)?,
            "FirstBurstLength" => p.first_burst_length = minimum(number()?, p.first_burst_length)?,
            // Declarative: the target's own limit; ours stands.
            "MaxOutstandingUnexpectedPDUs" => {
                p.target_max_outstanding_unexpected_pdus = number()?;
            }
            // AND: Yes only if both said Yes.
            "ImmediateData" => {
                let yes = boolean()?;
                if yes && !p.immediate_data {
                    return Err(NegotiationError::Unacceptable);
                }
                p.immediate_data = yes;
            }
            // OR: No only if both said No.
            "InitialR2T" => {
                let yes = boolean()?;
                if !yes && p.initial_r2t {
                    return Err(NegotiationError::Unacceptable);
                }
                p.initial_r2t = yes;
            }
            "HeaderDigest" | "DataDigest" if value != "None" => {
                return Err(NegotiationError::Unacceptable)
            }
            "MaxConnections" | "MaxOutstandingR2T" if number()? != 1 => {
                return Err(NegotiationError::Unacceptable)
            }
            "ErrorRecoveryLevel" if number()? != 0 => return Err(NegotiationError::Unacceptable),
            // Informational keys, keys settled as offered, and keys we did not offer:
            // nothing to record.
            _ => {}
        }
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        Ok(())
    }

    /// The parameters once the login completes; iSER must have been accepted.
    pub fn finish(&self) -> Result<Negotiated, NegotiationError> {
        if !self.rdma_extensions {
            return Err(NegotiationError::NoRdmaExtensions);
        }
        Ok(self.params)
    }
}

fn minimum(answer: u32, offer: u32) -> Result<u32, NegotiationError> {
    if !(512..=offer).contains(&answer) {
        return Err(NegotiationError::Unacceptable);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: LoginConfig<'static> = LoginConfig {
        initiator_name: "iqn.2026-11.tilde:unit",
        target_name: Some("iqn.2026-11.test:unit"),
        isid: [0; 6],
        recv_data_segment_length: 8192,
        max_burst_length: 262_144,
        first_burst_length: 65_536,
        immediate_data: true,
        initial_r2t: true,
        max_outstanding_unexpected_pdus: 0,
    };

    fn offered(config: &LoginConfig<'_>) -> ([u8; 1024], usize) {
        let mut buf = [0u8; 1024];
        let mut text = TextWriter::new(&mut buf);
        write_operational_keys(config, &mut text).unwrap();
        let len = text.len();
        (buf, len)
    }

    #[test]
    fn the_targets_own_keys_are_not_offered() {
        let (buf, len) = offered(&CONFIG);
        let keys: std::vec::Vec<_> = TextPairs::new(&buf[..len]).map(|p| p.unwrap().0).collect();
        assert!(keys.contains(&"InitiatorRecvDataSegmentLength"));
        assert!(!keys.contains(&"TargetRecvDataSegmentLength"));
        assert!(!keys.contains(&"MaxOutstandingUnexpectedPDUs"));
        let limited = LoginConfig {
            max_outstanding_unexpected_pdus: 4,
            ..CONFIG
        };
        let (buf, len) = offered(&limited);
        assert!(TextPairs::new(&buf[..len])
            .any(|p| p.unwrap() == ("MaxOutstandingUnexpectedPDUs", "4")));
    }

    /// The negotiated parameters after the target answers `pair` (and accepts iSER).
    fn answered(config: &LoginConfig<'_>, pair: &str) -> Result<Negotiated, NegotiationError> {
        let mut text = std::vec::Vec::from(pair.as_bytes());
        text.extend_from_slice(b"\0RDMAExtensions=Yes\0");
        let mut n = Negotiation::new(config);
        n.apply(&text)?;
        n.finish()
    }

    #[test]
    fn each_answer_is_taken_within_its_rule_and_refused_outside_it() {
        use NegotiationError::Unacceptable;
        let ok = |pair: &str| answered(&CONFIG, pair).unwrap();
        let refused = |config: &LoginConfig<'_>, pair: &str| {
            assert_eq!(
                answered(config, pair).map(|_| ()),
                Err(Unacceptable),
                "{pair}"
            );
        };
        // Declared by the target: 512 to 2^24 - 1.
        assert_eq!(
            ok("TargetRecvDataSegmentLength=512").target_recv_data_segment_length,
            512
        );
        assert_eq!(
            ok("TargetRecvDataSegmentLength=16777215").target_recv_data_segment_length,
            16_777_215
        );
        refused(&CONFIG, "TargetRecvDataSegmentLength=511");
        refused(&CONFIG, "TargetRecvDataSegmentLength=16777216");
        // Ours, which the target may lower (not below 512) but never raise.
        for n in [512, 4096, 8192] {
            assert_eq!(
                ok(&std::format!("InitiatorRecvDataSegmentLength={n}"))
                    .initiator_recv_data_segment_length,
                n
            );
        }
        refused(&CONFIG, "InitiatorRecvDataSegmentLength=511");
        refused(&CONFIG, "InitiatorRecvDataSegmentLength=8193");
        // Numerical minimums; FirstBurstLength never above MaxBurstLength.
        let p = ok("MaxBurstLength=4096");
        assert_eq!((p.max_burst_length, p.first_burst_length), (4096, 4096));
        assert_eq!(ok("FirstBurstLength=1024").first_burst_length, 1024);
        refused(&CONFIG, "MaxBurstLength=262145");
        refused(&CONFIG, "FirstBurstLength=65537");
        refused(&CONFIG, "FirstBurstLength=511");
        // ImmediateData is an AND, InitialR2T an OR.
        assert!(ok("ImmediateData=Yes").immediate_data);
        assert!(!ok("ImmediateData=No").immediate_data);
        let no_immediate = LoginConfig {
            immediate_data: false,
            ..CONFIG
        };
        refused(&no_immediate, "ImmediateData=Yes");
        assert!(ok("InitialR2T=Yes").initial_r2t);
        refused(&CONFIG, "InitialR2T=No");
        let no_r2t = LoginConfig {
            initial_r2t: false,
            ..CONFIG
        };
        assert!(!answered(&no_r2t, "InitialR2T=No").unwrap().initial_r2t);
        assert!(answered(&no_r2t, "InitialR2T=Yes").unwrap().initial_r2t);
        refused(&CONFIG, "ImmediateData=Maybe");
        // What iSER fixes: no digests, one connection, one R2T, no error recovery.
        for pair in [
            "HeaderDigest=None",
            "DataDigest=None",
            "MaxConnections=1",
            "MaxOutstandingR2T=1",
            "ErrorRecoveryLevel=0",
        ] {
            ok(pair);
        }
        for pair in [
            "HeaderDigest=CRC32C",
            "DataDigest=CRC32C",
            "MaxConnections=2",
            "MaxOutstandingR2T=2",
            "MaxConnections=0",
            "ErrorRecoveryLevel=1",
        ] {
            refused(&CONFIG, pair);
        }
    }

    #[test]
    fn unknown_keys_leave_our_values_and_declarations_stay_apart() {
        let mut n = Negotiation::new(&CONFIG);
        n.apply(b"MaxOutstandingUnexpectedPDUs=NotUnderstood\0MaxBurstLength=Irrelevant\0RDMAExtensions=Yes\0")
            .unwrap();
        let p = n.finish().unwrap();
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.target_recv_data_segment_length, 8192);
        let mut n = Negotiation::new(&CONFIG);
        n.apply(b"MaxOutstandingUnexpectedPDUs=2\0RDMAExtensions=Yes\0TargetRecvDataSegmentLength=4096\0")
            .unwrap();
        let p = n.finish().unwrap();
        assert_eq!(
            (
                p.max_outstanding_unexpected_pdus,
                p.target_max_outstanding_unexpected_pdus
            ),
            (0, 2)
        );
        assert_eq!(p.target_recv_data_segment_length, 4096);
        let mut n = Negotiation::new(&CONFIG);
        assert_eq!(
            n.apply(b"RDMAExtensions=NotUnderstood\0"),
            Err(NegotiationError::NoRdmaExtensions)
        );
    }
}
