//! Text requests in full feature phase (RFC 7143 §11.10, §11.11), chiefly SendTargets
//! (§13.3, Appendix C).
//!
//! One [`TextExchange`] per connection keeps the state of the text exchange in
//! progress: an initiator's text continued over several PDUs (C bit), or our answer
//! continued over several responses (C bit and a Target Transfer Tag to come back with).
//!
//! Keys other than SendTargets: we do not renegotiate in full feature phase. Known keys
//! are answered "Reject" (§6.2: the responder may reject an offer, and the current
//! value stays in force); unknown and X- keys "NotUnderstood" (§6.2).

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::iscsi::login::TargetDirectory;
use crate::iscsi::params::{classify, KeyClass, SessionType, NOT_UNDERSTOOD, REJECT};
use crate::iscsi::pdu::{RejectReason, TextRequest, TextResponse, RESERVED_TAG};
use crate::iscsi::text::{self, Assembler, Pair, TextError, MAX_TEXT_LEN};

/// What a text answer depends on, from the session and the connection.
#[derive(Debug, Clone)]
pub struct TextContext<'a> {
    pub session_type: SessionType,
    pub initiator_name: &'a str,
    /// The session's target (Normal sessions).
    pub target_name: Option<&'a str>,
    /// The local address the connection arrived on: the TargetAddress we answer.
    pub portal: SocketAddr,
    pub tpgt: u16,
    /// The node's other portals with their portal group tags, listed after the one the
    /// connection arrived on: a multipath initiator learns every path from one
    /// discovery (§13.8 allows a TargetAddress per portal).
    pub other_portals: &'a [(SocketAddr, u16)],
    /// The initiator's MaxRecvDataSegmentLength: no response segment is longer.
    pub max_send_data_segment_length: u32,
}

/// A text request the exchange cannot accept; the server answers with a Reject PDU.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TextExchangeError {
    #[error("malformed text")]
    Text(#[from] TextError),
    /// §11.10.4: the TTT must be 0xffffffff or the one we handed out.
    #[error("Target Transfer Tag matches no exchange in progress")]
    UnknownTtt,
    /// A request asking for the rest of our answer must carry no text.
    #[error("text sent while our answer was still being continued")]
    UnexpectedData,
}

impl TextExchangeError {
    /// The Reject reason (§11.17.1).
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            TextExchangeError::UnknownTtt => RejectReason::InvalidPduField,
            TextExchangeError::Text(_) | TextExchangeError::UnexpectedData => {
                RejectReason::ProtocolError
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Idle,
    /// The initiator's text continues (it sent C=1); we gave it `ttt` to come back with.
    Receiving {
        itt: u32,
        ttt: u32,
    },
    /// Our answer continues; the initiator comes back with `ttt` for the next piece.
    Sending {
        itt: u32,
        ttt: u32,
        chunks: VecDeque<Bytes>,
    },
}

/// The text exchange of one connection. Responses leave StatSN, ExpCmdSN and MaxCmdSN
/// at zero: the session fills them in.
#[derive(Debug)]
pub struct TextExchange {
    state: State,
    rx: Assembler,
    next_ttt: u32,
}

impl Default for TextExchange {
    fn default() -> Self {
        TextExchange::new()
    }
}

impl TextExchange {
    pub fn new() -> TextExchange {
        TextExchange {
            state: State::Idle,
            rx: Assembler::new(MAX_TEXT_LEN),
            next_ttt: 1,
        }
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Answer one Text Request.
    pub fn handle(
        &mut self,
        req: &TextRequest,
        ctx: &TextContext<'_>,
        dir: &dyn TargetDirectory,
    ) -> Result<TextResponse, TextExchangeError> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        // §11.10.4: TTT 0xffffffff starts a new exchange, dropping any other in progress;
        // any other TTT must continue the exchange of the same ITT.
        if req.ttt == RESERVED_TAG {
            self.rx = Assembler::new(MAX_TEXT_LEN);
        } else {
            match state {
                State::Receiving { itt, ttt } if itt == req.itt && ttt == req.ttt => {}
                State::Sending {
                    itt,
                    ttt,
                    mut chunks,
                } if itt == req.itt && ttt == req.ttt => {
                    if !req.data.is_empty() || req.cont {
                        return Err(TextExchangeError::UnexpectedData);
                    }
                    let chunk = chunks.pop_front().unwrap_or_default();
                    if chunks.is_empty() {
                        return Ok(response(req, true, false, RESERVED_TAG, chunk));
                    }
                    let ttt = self.new_ttt();
                    self.state = State::Sending {
                        itt: req.itt,
                        ttt,
                        chunks,
                    };
                    return Ok(response(req, false, true, ttt, chunk));
                }
                _ => return Err(TextExchangeError::UnknownTtt),
            }
        }

        self.rx.push(&req.data)?;
        if req.cont {
            // §11.10.2: more text follows; an empty response with a TTT asks for it.
            let ttt = self.new_ttt();
            self.state = State::Receiving { itt: req.itt, ttt };
            return Ok(response(req, false, false, ttt, Bytes::new()));
        }
        let pairs = text::parse(&self.rx.take())?;
        self.rx = Assembler::new(MAX_TEXT_LEN);
        let answer = text::encode(&answer(&pairs, ctx, dir));
        let max = (ctx.max_send_data_segment_length as usize).max(512);
        let mut chunks: VecDeque<Bytes> = text::split(&answer, max).into();
        let first = chunks.pop_front().unwrap_or_default();
        if chunks.is_empty() {
            return Ok(response(req, true, false, RESERVED_TAG, first));
        }
        // §11.11.2: a long answer goes out with C=1, F=0 and a TTT; the initiator asks
        // for the rest with empty requests carrying that TTT.
        let ttt = self.new_ttt();
        self.state = State::Sending {
            itt: req.itt,
            ttt,
            chunks,
        };
        Ok(response(req, false, true, ttt, first))
    }
}

fn response(req: &TextRequest, final_bit: bool, cont: bool, ttt: u32, data: Bytes) -> TextResponse {
    TextResponse {
        final_bit,
        cont,
        lun: req.lun,
        itt: req.itt,
        ttt,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        data,
    }
}

/// The answer to a complete text request.
pub fn answer(pairs: &[Pair], ctx: &TextContext<'_>, dir: &dyn TargetDirectory) -> Vec<Pair> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        match (k.as_str(), classify(k)) {
            ("SendTargets", _) => send_targets(v, ctx, dir, &mut out),
            (_, KeyClass::Unknown) => out.push((k.clone(), NOT_UNDERSTOOD.into())),
            _ => out.push((k.clone(), REJECT.into())),
        }
    }
    out
}

/// §13.8: TargetAddress=domainname[:port][,portal-group-tag], IPv6 in brackets.
pub fn target_address(portal: SocketAddr, tpgt: u16) -> String {
    match portal {
        SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), tpgt),
        SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), tpgt),
    }
}

/// §13.3 and Appendix C. In a Discovery session: "All" lists every target the
/// initiator may see, a name lists that target if it may see it. In a Normal session:
/// empty means the session's target, a name only that same target, and "All" is not
/// allowed (answered Reject). Empty in a Discovery session names no target: nothing.
fn send_targets(
    value: &str,
    ctx: &TextContext<'_>,
    dir: &dyn TargetDirectory,
    out: &mut Vec<Pair>,
) {
    let names: Vec<String> = match (ctx.session_type, value) {
        (SessionType::Discovery, "All") => dir.list_targets(ctx.initiator_name),
        (SessionType::Discovery, "") => Vec::new(),
        (SessionType::Discovery, name) => dir
            .list_targets(ctx.initiator_name)
            .into_iter()
            .filter(|t| t == name)
            .collect(),
        (SessionType::Normal, "All") => {
            out.push(("SendTargets".into(), REJECT.into()));
            return;
        }
        (SessionType::Normal, "") => ctx.target_name.map(str::to_owned).into_iter().collect(),
        (SessionType::Normal, name) => ctx
            .target_name
            .filter(|t| *t == name)
            .map(str::to_owned)
            .into_iter()
            .collect(),
    };
    let addrs: Vec<String> = std::iter::once((ctx.portal, ctx.tpgt))
        .chain(ctx.other_portals.iter().copied())
        .map(|(p, t)| target_address(p, t))
        .collect();
    for n in names {
        out.push(("TargetName".into(), n));
        for a in &addrs {
            out.push(("TargetAddress".into(), a.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::login::TargetAccess;

    /// Many targets with long names: a SendTargets answer of several KiB.
    struct Many;

    impl TargetDirectory for Many {
        fn lookup(&self, _: &str) -> Option<TargetAccess> {
            Some(TargetAccess::default())
        }
        fn list_targets(&self, _: &str) -> Vec<String> {
            (0..100)
                .map(|i| format!("iqn.2026-12.io.twinlun:a-rather-long-target-name-{i:04}"))
                .collect()
        }
        fn session_exists(&self, _: &str, _: [u8; 6], _: u16, _: Option<&str>) -> bool {
            false
        }
    }

    fn request(itt: u32, ttt: u32, data: &'static [u8]) -> TextRequest {
        TextRequest {
            immediate: false,
            final_bit: true,
            cont: false,
            lun: 0,
            itt,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from_static(data),
        }
    }

    /// §11.11 / §13.12: no Text Response segment exceeds the initiator's
    /// MaxRecvDataSegmentLength; a longer answer continues (C=1, a TTT) over as many
    /// responses as it takes, and reassembles to the whole answer.
    #[test]
    fn long_answers_continue_within_the_initiators_segment_length() {
        let ctx = TextContext {
            session_type: SessionType::Discovery,
            initiator_name: "iqn.i",
            target_name: None,
            portal: "127.0.0.1:3260".parse().unwrap(),
            tpgt: 1,
            other_portals: &[],
            max_send_data_segment_length: 512,
        };
        let mut x = TextExchange::new();
        let mut r = x
            .handle(&request(9, RESERVED_TAG, b"SendTargets=All\0"), &ctx, &Many)
            .unwrap();
        let mut whole = Vec::new();
        let mut pieces = 1;
        while r.cont {
            assert!(r.data.len() <= 512 && !r.final_bit);
            whole.extend_from_slice(&r.data);
            r = x.handle(&request(9, r.ttt, b""), &ctx, &Many).unwrap();
            pieces += 1;
        }
        assert!(r.final_bit && r.data.len() <= 512);
        whole.extend_from_slice(&r.data);
        let pairs = text::parse(&Bytes::from(whole)).unwrap();
        assert_eq!(
            pairs.len(),
            200,
            "every TargetName and TargetAddress arrives"
        );
        assert!(pieces > 10, "{pieces} responses");
    }

    /// Every portal of the node is a TargetAddress of each target, the one the
    /// connection arrived on first, each with its portal group tag.
    #[test]
    fn send_targets_lists_every_portal_with_its_group() {
        let others = ["127.0.0.2:3261".parse().unwrap()].map(|a| (a, 2));
        let ctx = TextContext {
            session_type: SessionType::Normal,
            initiator_name: "iqn.i",
            target_name: Some("iqn.t"),
            portal: "127.0.0.1:3260".parse().unwrap(),
            tpgt: 1,
            other_portals: &others,
            max_send_data_segment_length: 8192,
        };
        let pairs = [("SendTargets".to_string(), String::new())];
        let out = answer(&pairs, &ctx, &Many);
        assert_eq!(
            out,
            [
                ("TargetName".to_string(), "iqn.t".to_string()),
                ("TargetAddress".into(), "127.0.0.1:3260,1".into()),
                ("TargetAddress".into(), "127.0.0.2:3261,2".into()),
            ]
        );
    }
}
