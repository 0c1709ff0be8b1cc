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
    /// `MaxBurstLength` and `FirstBurstLength` offered.
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    /// `ImmediateData` and `InitialR2T` offered.
    pub immediate_data: bool,
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
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_unexpected_pdus: u32,
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
        text.push_number(
            "MaxOutstandingUnexpectedPDUs",
            config.max_outstanding_unexpected_pdus,
        )?;
    }
    text.push_number("ErrorRecoveryLevel", 0)?;
    text.push_number(
        "InitiatorRecvDataSegmentLength",
        config.recv_data_segment_length,
    )?;
    // Ours until the target declares its own.
    text.push_number(
        "TargetRecvDataSegmentLength",
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
            "MaxOutstandingUnexpectedPDUs" => p.max_outstanding_unexpected_pdus = number()?,
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
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
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
