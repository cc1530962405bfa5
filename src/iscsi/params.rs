//! Negotiation rules of the login/text operational keys (RFC 7143 §6.2, §13).
//!
//! The target is always the responder here: the initiator offers, we answer with the
//! result. We never offer negotiable keys ourselves (a key we do not get keeps its
//! §13 default), and we declare only MaxRecvDataSegmentLength, TargetPortalGroupTag
//! and TargetAlias, which need no answer. That keeps every stage transition in the
//! initiator's hands, as open-iscsi and libiscsi expect.

use std::collections::BTreeSet;

/// What this target accepts and prefers; the initiator's offers are met with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    /// Our MaxRecvDataSegmentLength (§13.12), declared in every operational stage: the
    /// largest data segment the initiator may send us. 256 KiB keeps big writes to few PDUs.
    pub max_recv_data_segment_length: u32,
    /// The largest MaxBurstLength we accept (§13.13, result = min).
    pub max_burst_length: u32,
    /// The largest FirstBurstLength we accept (§13.14, result = min, <= MaxBurstLength).
    pub first_burst_length: u32,
    /// The largest MaxConnections we allow (§13.2, result = min).
    pub max_connections: u16,
    /// Our InitialR2T preference (§13.10, result = OR): false lets unsolicited data flow.
    pub initial_r2t: bool,
    /// Our ImmediateData preference (§13.11, result = AND).
    pub immediate_data: bool,
    /// The largest MaxOutstandingR2T we allow (§13.17, result = min).
    pub max_outstanding_r2t: u16,
    /// §13.15, result = max.
    pub default_time2wait: u16,
    /// §13.16, result = min.
    pub default_time2retain: u16,
    /// The highest ErrorRecoveryLevel we implement (§13.20, result = min).
    pub max_error_recovery_level: u8,
    /// Declared as TargetAlias (§13.6) in Normal sessions when set.
    pub target_alias: Option<String>,
    /// Command window granted in login responses: MaxCmdSN = ExpCmdSN + window - 1.
    pub cmd_window: u32,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16 * 1024 * 1024,
            first_burst_length: 262_144,
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 16,
            default_time2wait: 2,
            default_time2retain: 0,
            max_error_recovery_level: 0,
            target_alias: None,
            cmd_window: 128,
        }
    }
}

impl TargetSettings {
    /// Settings clamped into the ranges §13 allows, so a misconfiguration cannot make us
    /// answer an illegal value.
    pub fn sanitized(&self) -> TargetSettings {
        let mut s = self.clone();
        s.max_recv_data_segment_length = s.max_recv_data_segment_length.clamp(512, MAX_LEN_24);
        s.max_burst_length = s.max_burst_length.clamp(512, MAX_LEN_24);
        s.first_burst_length = s.first_burst_length.clamp(512, s.max_burst_length);
        s.max_connections = s.max_connections.max(1);
        s.max_outstanding_r2t = s.max_outstanding_r2t.max(1);
        s.default_time2wait = s.default_time2wait.min(3600);
        s.default_time2retain = s.default_time2retain.min(3600);
        s.max_error_recovery_level = s.max_error_recovery_level.min(2);
        s.cmd_window = s.cmd_window.max(1);
        s
    }
}

/// §13.12-§13.14: lengths range over 512..2^24-1.
pub const MAX_LEN_24: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionType {
    Discovery,
    Normal,
}

impl SessionType {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Discovery => "Discovery",
            SessionType::Normal => "Normal",
        }
    }
}

/// Session-wide results. `Default` gives the §13 initial values, which hold for every
/// key the initiator did not offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            max_connections: 1,           // §13.2
            initial_r2t: true,            // §13.10
            immediate_data: true,         // §13.11
            max_burst_length: 262_144,    // §13.13
            first_burst_length: 65_536,   // §13.14
            default_time2wait: 2,         // §13.15
            default_time2retain: 20,      // §13.16
            max_outstanding_r2t: 1,       // §13.17
            data_pdu_in_order: true,      // §13.18
            data_sequence_in_order: true, // §13.19
            error_recovery_level: 0,      // §13.20
        }
    }
}

/// Per-connection results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the initiator may send us: our declared MaxRecvDataSegmentLength, or 8192
    /// if the login never reached the operational stage to declare it (§13.12 default).
    pub max_recv_data_segment_length: u32,
    /// What we may send: the initiator's declared MaxRecvDataSegmentLength (8192 if it
    /// declared none). Bounds Data-In and text response segments.
    pub max_send_data_segment_length: u32,
}

impl Default for ConnParams {
    fn default() -> Self {
        ConnParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_send_data_segment_length: 8192,
        }
    }
}

/// Why a key's offer breaks the protocol (as opposed to a bad value, answered "Reject").
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// §6.3: "Neither the initiator nor the target should attempt to declare or
    /// negotiate a parameter more than once during login ... If detected by the target,
    /// the target MUST respond with Login reject (initiator error)".
    #[error("a key was offered twice")]
    Duplicate,
    /// A key only the target may send (TargetAlias, TargetAddress, TargetPortalGroupTag;
    /// §13.6, §13.8, §13.9 "Senders: Target").
    #[error("a target-only key was sent by the initiator")]
    TargetOnlyKey,
}

impl ParamError {
    pub fn status(&self) -> (u8, u8) {
        (0x02, 0x00)
    }
}

/// Where a key may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    /// AuthMethod and CHAP_*: security stage only (§12).
    Security,
    /// Identity declarations allowed in both stages: InitiatorName, TargetName,
    /// SessionType, InitiatorAlias.
    Identity,
    /// Operational keys (§13): operational stage only.
    Operational,
    /// TargetAlias, TargetAddress, TargetPortalGroupTag (and SendTargets in login).
    TargetOnly,
    /// Anything else, X- private keys included: answered NotUnderstood (§6.2).
    Unknown,
}

/// The operational keys we know, in the order §13 lists them.
const OPERATIONAL: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "TaskReporting",
    "iSCSIProtocolLevel",
    "X#NodeArchitecture",
    // §13.25, obsoleted RFC 3720 keys older initiators still send.
    "IFMarker",
    "OFMarker",
    "IFMarkInt",
    "OFMarkInt",
];

pub fn classify(key: &str) -> KeyClass {
    match key {
        "AuthMethod" => KeyClass::Security,
        k if k.starts_with("CHAP_") => KeyClass::Security,
        "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => KeyClass::Identity,
        "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
            KeyClass::TargetOnly
        }
        k if OPERATIONAL.contains(&k) => KeyClass::Operational,
        _ => KeyClass::Unknown,
    }
}

/// §6.2: the answer to an unknown key.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// §6.2: the answer to an inadmissible value.
pub const REJECT: &str = "Reject";
/// §6.2: the answer to a key that does not apply (e.g. session keys in Discovery).
pub const IRRELEVANT: &str = "Irrelevant";

/// §6.1 numerical values: decimal, or hex with 0x (large numbers aside). Anything else,
/// or out of u32, is not a number.
pub fn parse_number(v: &str) -> Option<u32> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 8 {
            return None;
        }
        return u32::from_str_radix(h, 16).ok();
    }
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// §6.1 boolean values: exactly "Yes" or "No".
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// Operational negotiation for one login: answers offers, keeps results and the record
/// of what was negotiated.
#[derive(Debug, Clone)]
pub struct Negotiator {
    settings: TargetSettings,
    session_type: SessionType,
    pub session: SessionParams,
    pub conn: ConnParams,
    seen: BTreeSet<String>,
    /// (key, result) in negotiation order, for `session list`.
    pub negotiated: Vec<(String, String)>,
    declared_mrdsl: bool,
}

impl Negotiator {
    pub fn new(settings: &TargetSettings, session_type: SessionType) -> Negotiator {
        Negotiator {
            settings: settings.sanitized(),
            session_type,
            session: SessionParams::default(),
            conn: ConnParams::default(),
            seen: BTreeSet::new(),
            negotiated: Vec::new(),
            declared_mrdsl: false,
        }
    }

    /// Has `key` already been offered in this login?
    pub fn seen(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    /// Mark a key (of any class) as offered; a second offer is a protocol error (§6.3).
    pub fn mark(&mut self, key: &str) -> Result<(), ParamError> {
        if !self.seen.insert(key.to_owned()) {
            return Err(ParamError::Duplicate);
        }
        Ok(())
    }

    /// Our declarations for the first response of the operational stage: §13.12
    /// MaxRecvDataSegmentLength is declarative, so we always state ours rather than let
    /// the initiator assume 8192. Returns nothing after the first call.
    pub fn declarations(&mut self) -> Vec<(String, String)> {
        if self.declared_mrdsl {
            return Vec::new();
        }
        self.declared_mrdsl = true;
        let v = self.settings.max_recv_data_segment_length;
        self.conn.max_recv_data_segment_length = v;
        self.negotiated
            .push(("TargetMaxRecvDataSegmentLength".into(), v.to_string()));
        vec![("MaxRecvDataSegmentLength".into(), v.to_string())]
    }

    /// Answer one operational key. `Ok(None)`: a declaration, no answer is sent.
    pub fn offer(&mut self, key: &str, value: &str) -> Result<Option<String>, ParamError> {
        self.mark(key)?;
        let answer = self.answer(key, value);
        if let Some(a) = &answer {
            if a != NOT_UNDERSTOOD && a != IRRELEVANT && a != REJECT {
                self.negotiated.push((key.to_owned(), a.clone()));
            }
        }
        Ok(answer)
    }

    fn discovery(&self) -> bool {
        self.session_type == SessionType::Discovery
    }

    fn answer(&mut self, key: &str, value: &str) -> Option<String> {
        let s = &self.settings;
        // §13.2, §13.10, §13.11, §13.13, §13.14, §13.17, §13.18, §13.19: "Irrelevant
        // when: SessionType=Discovery".
        let session_only = matches!(
            key,
            "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
        );
        if session_only && self.discovery() {
            return Some(IRRELEVANT.into());
        }
        let num = |lo: u32, hi: u32| parse_number(value).filter(|n| (lo..=hi).contains(n));
        let ans: String = match key {
            // §13.1: list negotiation, the first value of the initiator's list we support.
            "HeaderDigest" | "DataDigest" => {
                match value.split(',').find(|v| matches!(*v, "CRC32C" | "None")) {
                    Some(v) => {
                        let on = v == "CRC32C";
                        if key == "HeaderDigest" {
                            self.conn.header_digest = on;
                        } else {
                            self.conn.data_digest = on;
                        }
                        v.to_owned()
                    }
                    None => REJECT.into(),
                }
            }
            // §13.2: 1..65535, result = min.
            "MaxConnections" => match num(1, 65535) {
                Some(n) => {
                    let r = n.min(s.max_connections as u32) as u16;
                    self.session.max_connections = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.10: result = OR.
            "InitialR2T" => match parse_bool(value) {
                Some(b) => {
                    let r = b || s.initial_r2t;
                    self.session.initial_r2t = r;
                    yes_no(r).into()
                }
                None => REJECT.into(),
            },
            // §13.11: result = AND.
            "ImmediateData" => match parse_bool(value) {
                Some(b) => {
                    let r = b && s.immediate_data;
                    self.session.immediate_data = r;
                    yes_no(r).into()
                }
                None => REJECT.into(),
            },
            // §13.12: declarative, 512..2^24-1, per direction. A value above the range only
            // says the initiator can take more than we will ever send: clamp it. Below
            // 512 is inadmissible.
            "MaxRecvDataSegmentLength" => {
                return match parse_number(value) {
                    Some(n) if n >= 512 => {
                        let n = n.min(MAX_LEN_24);
                        self.conn.max_send_data_segment_length = n;
                        self.negotiated
                            .push(("MaxRecvDataSegmentLength".into(), n.to_string()));
                        None
                    }
                    _ => Some(REJECT.into()),
                };
            }
            // §13.13: 512..2^24-1, result = min.
            "MaxBurstLength" => match num(512, MAX_LEN_24) {
                Some(n) => {
                    let r = n.min(s.max_burst_length);
                    self.session.max_burst_length = r;
                    if self.session.first_burst_length > r {
                        self.session.first_burst_length = r;
                    }
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.14: 512..2^24-1, result = min, and "MUST NOT exceed MaxBurstLength".
            "FirstBurstLength" => match num(512, MAX_LEN_24) {
                Some(n) => {
                    let r = n
                        .min(s.first_burst_length)
                        .min(self.session.max_burst_length);
                    self.session.first_burst_length = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.15: 0..3600, result = max.
            "DefaultTime2Wait" => match num(0, 3600) {
                Some(n) => {
                    let r = (n as u16).max(s.default_time2wait);
                    self.session.default_time2wait = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.16: 0..3600, result = min.
            "DefaultTime2Retain" => match num(0, 3600) {
                Some(n) => {
                    let r = (n as u16).min(s.default_time2retain);
                    self.session.default_time2retain = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.17: 1..65535, result = min.
            "MaxOutstandingR2T" => match num(1, 65535) {
                Some(n) => {
                    let r = (n as u16).min(s.max_outstanding_r2t);
                    self.session.max_outstanding_r2t = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.18, §13.19: result = OR; we prefer in-order (Yes), so the result is Yes.
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                Some(_) => {
                    if key == "DataPDUInOrder" {
                        self.session.data_pdu_in_order = true;
                    } else {
                        self.session.data_sequence_in_order = true;
                    }
                    "Yes".into()
                }
                None => REJECT.into(),
            },
            // §13.20: 0..2, result = min.
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(n) => {
                    let r = (n as u8).min(s.max_error_recovery_level);
                    self.session.error_recovery_level = r;
                    r.to_string()
                }
                None => REJECT.into(),
            },
            // §13.23: list; we implement the RFC 3720 semantics only.
            "TaskReporting" => {
                if value.split(',').any(|v| v == "RFC3720") {
                    "RFC3720".into()
                } else {
                    REJECT.into()
                }
            }
            // §13.24: 0..31, result = min; RFC 7143 is level 1.
            "iSCSIProtocolLevel" => match num(0, 31) {
                Some(n) => n.min(1).to_string(),
                None => REJECT.into(),
            },
            // §13.26: declarative, nothing to answer.
            "X#NodeArchitecture" => return None,
            // §13.25: IFMarker/OFMarker "SHOULD respond with Reject ... MAY respond No ...
            // MUST NOT respond NotUnderstood". "No" is what RFC 3720 initiators expect.
            "IFMarker" | "OFMarker" => "No".into(),
            // §13.25: IFMarkInt/OFMarkInt "MUST respond with Reject".
            "IFMarkInt" | "OFMarkInt" => REJECT.into(),
            // §6.2: "NotUnderstood" for keys we do not know, X- private keys included.
            _ => NOT_UNDERSTOOD.into(),
        };
        Some(ans)
    }

    /// Final results. FirstBurstLength is clamped to MaxBurstLength once more, in case
    /// the initiator offered MaxBurstLength after FirstBurstLength (§13.14).
    pub fn finish(mut self) -> (SessionParams, ConnParams, Vec<(String, String)>) {
        if self.session.first_burst_length > self.session.max_burst_length {
            self.session.first_burst_length = self.session.max_burst_length;
        }
        (self.session, self.conn, self.negotiated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(st: SessionType, key: &str, value: &str) -> (Option<String>, Negotiator) {
        let mut n = Negotiator::new(&TargetSettings::default(), st);
        let a = n.offer(key, value).unwrap();
        (a, n)
    }

    /// (key, offer, expected answer) for a Normal session with default settings.
    const TABLE: &[(&str, &str, Option<&str>)] = &[
        ("HeaderDigest", "CRC32C,None", Some("CRC32C")),
        ("HeaderDigest", "None,CRC32C", Some("None")),
        ("HeaderDigest", "None", Some("None")),
        ("HeaderDigest", "MD5,CRC32C", Some("CRC32C")),
        ("HeaderDigest", "MD5", Some("Reject")),
        ("DataDigest", "CRC32C", Some("CRC32C")),
        ("MaxConnections", "8", Some("1")),
        ("MaxConnections", "0", Some("Reject")),
        ("MaxConnections", "65536", Some("Reject")),
        ("InitialR2T", "No", Some("No")),
        ("InitialR2T", "Yes", Some("Yes")),
        ("InitialR2T", "maybe", Some("Reject")),
        ("ImmediateData", "Yes", Some("Yes")),
        ("ImmediateData", "No", Some("No")),
        ("MaxRecvDataSegmentLength", "65536", None),
        ("MaxRecvDataSegmentLength", "511", Some("Reject")),
        ("MaxRecvDataSegmentLength", "junk", Some("Reject")),
        ("MaxBurstLength", "262144", Some("262144")),
        ("MaxBurstLength", "16776192", Some("16776192")),
        ("MaxBurstLength", "16777215", Some("16777215")),
        ("MaxBurstLength", "16777216", Some("Reject")),
        ("MaxBurstLength", "511", Some("Reject")),
        ("MaxBurstLength", "0x40000", Some("262144")),
        ("FirstBurstLength", "65536", Some("65536")),
        ("FirstBurstLength", "1048576", Some("262144")),
        ("FirstBurstLength", "100", Some("Reject")),
        ("DefaultTime2Wait", "0", Some("2")),
        ("DefaultTime2Wait", "10", Some("10")),
        ("DefaultTime2Wait", "3601", Some("Reject")),
        ("DefaultTime2Retain", "20", Some("0")),
        ("DefaultTime2Retain", "-1", Some("Reject")),
        ("MaxOutstandingR2T", "1", Some("1")),
        ("MaxOutstandingR2T", "64", Some("16")),
        ("MaxOutstandingR2T", "0", Some("Reject")),
        ("DataPDUInOrder", "No", Some("Yes")),
        ("DataPDUInOrder", "Yes", Some("Yes")),
        ("DataSequenceInOrder", "No", Some("Yes")),
        ("ErrorRecoveryLevel", "2", Some("0")),
        ("ErrorRecoveryLevel", "0", Some("0")),
        ("ErrorRecoveryLevel", "3", Some("Reject")),
        ("IFMarker", "No", Some("No")),
        ("OFMarker", "Yes", Some("No")),
        ("IFMarkInt", "2048~8192", Some("Reject")),
        ("TaskReporting", "ResponseFence,RFC3720", Some("RFC3720")),
        ("TaskReporting", "FastAbort", Some("Reject")),
        ("iSCSIProtocolLevel", "2", Some("1")),
        ("X#NodeArchitecture", "Linux", None),
        ("X-com.example.Foo", "1", Some("NotUnderstood")),
        ("Bogus", "1", Some("NotUnderstood")),
    ];

    #[test]
    fn every_key_follows_its_rule() {
        for (key, offer, want) in TABLE {
            let (got, _) = answer(SessionType::Normal, key, offer);
            assert_eq!(got.as_deref(), *want, "{key}={offer}");
        }
    }

    #[test]
    fn results_land_in_the_params() {
        let mut n = Negotiator::new(&TargetSettings::default(), SessionType::Normal);
        for (k, v) in [
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "None"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "131072"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "4"),
            ("DefaultTime2Retain", "0"),
        ] {
            n.offer(k, v).unwrap();
        }
        n.declarations();
        let (s, c, neg) = n.finish();
        assert!(c.header_digest && !c.data_digest);
        assert_eq!(c.max_send_data_segment_length, 131072);
        assert_eq!(c.max_recv_data_segment_length, 262144);
        assert!(!s.initial_r2t && s.immediate_data);
        assert_eq!(s.max_burst_length, 1048576);
        assert_eq!(s.first_burst_length, 262144);
        assert_eq!(s.max_outstanding_r2t, 4);
        assert_eq!(neg[0], ("HeaderDigest".into(), "CRC32C".into()));
        assert!(neg.contains(&("MaxRecvDataSegmentLength".into(), "131072".into())));
    }

    #[test]
    fn defaults_hold_without_offers() {
        let n = Negotiator::new(&TargetSettings::default(), SessionType::Normal);
        let (s, c, _) = n.finish();
        assert_eq!(s, SessionParams::default());
        assert_eq!(c, ConnParams::default());
        assert!(s.initial_r2t && s.immediate_data);
        assert_eq!((s.max_burst_length, s.first_burst_length), (262144, 65536));
        assert_eq!(s.default_time2retain, 20);
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = Negotiator::new(&TargetSettings::default(), SessionType::Normal);
        assert_eq!(
            n.offer("FirstBurstLength", "262144").unwrap().unwrap(),
            "262144"
        );
        assert_eq!(n.offer("MaxBurstLength", "4096").unwrap().unwrap(), "4096");
        let (s, _, _) = n.finish();
        assert_eq!(s.first_burst_length, 4096);
        let mut n = Negotiator::new(&TargetSettings::default(), SessionType::Normal);
        n.offer("MaxBurstLength", "8192").unwrap();
        assert_eq!(
            n.offer("FirstBurstLength", "65536").unwrap().unwrap(),
            "8192"
        );
    }

    #[test]
    fn session_keys_are_irrelevant_in_discovery() {
        for k in [
            "MaxConnections",
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
        ] {
            let v = if k.ends_with("R2T") || k.ends_with("Data") {
                "Yes"
            } else {
                "1024"
            };
            let (a, _) = answer(SessionType::Discovery, k, v);
            assert_eq!(a.as_deref(), Some("Irrelevant"), "{k}");
        }
        let (a, _) = answer(SessionType::Discovery, "HeaderDigest", "None");
        assert_eq!(a.as_deref(), Some("None"));
        let (a, _) = answer(SessionType::Discovery, "ErrorRecoveryLevel", "1");
        assert_eq!(a.as_deref(), Some("0"));
    }

    #[test]
    fn a_key_offered_twice_is_an_error() {
        let mut n = Negotiator::new(&TargetSettings::default(), SessionType::Normal);
        n.offer("MaxBurstLength", "8192").unwrap();
        assert_eq!(
            n.offer("MaxBurstLength", "8192"),
            Err(ParamError::Duplicate)
        );
    }

    #[test]
    fn classification() {
        assert_eq!(classify("CHAP_R"), KeyClass::Security);
        assert_eq!(classify("AuthMethod"), KeyClass::Security);
        assert_eq!(classify("TargetName"), KeyClass::Identity);
        assert_eq!(classify("MaxBurstLength"), KeyClass::Operational);
        assert_eq!(classify("TargetPortalGroupTag"), KeyClass::TargetOnly);
        assert_eq!(classify("X-foo"), KeyClass::Unknown);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("4294967295"), Some(u32::MAX));
        assert_eq!(parse_number("4294967296"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0x"), None);
    }
}
