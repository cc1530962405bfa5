//! Logout (RFC 7143 §11.14, §11.15): whether a request closes this connection and what
//! it answers.

use crate::iscsi::pdu::logout::logout_reason;
use crate::iscsi::pdu::LogoutRequest;

/// Logout Response codes (§11.15.1).
pub mod logout_response {
    pub const CLOSED: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutDecision {
    /// Let the running commands answer, then send the response (CLOSED) and close.
    Close,
    /// Answer with this response code and keep the connection.
    Refuse(u8),
}

impl LogoutDecision {
    pub fn response(self) -> u8 {
        match self {
            LogoutDecision::Close => logout_response::CLOSED,
            LogoutDecision::Refuse(r) => r,
        }
    }
}

/// Decide request `l` arriving on connection `cid`.
pub fn decide(l: &LogoutRequest, cid: u16) -> LogoutDecision {
    match l.reason {
        logout_reason::CLOSE_SESSION => LogoutDecision::Close,
        logout_reason::CLOSE_CONNECTION if l.cid == cid => LogoutDecision::Close,
        logout_reason::CLOSE_CONNECTION => LogoutDecision::Refuse(logout_response::CID_NOT_FOUND),
        // §11.15.1: "connection recovery is not supported" at ERL 0.
        _ => LogoutDecision::Refuse(logout_response::RECOVERY_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_table() {
        use logout_response::*;
        // (reason, CID in the request, this connection's CID, decision)
        let cases = [
            (logout_reason::CLOSE_SESSION, 1, 1, LogoutDecision::Close),
            (logout_reason::CLOSE_SESSION, 9, 1, LogoutDecision::Close),
            (logout_reason::CLOSE_CONNECTION, 1, 1, LogoutDecision::Close),
            (
                logout_reason::CLOSE_CONNECTION,
                2,
                1,
                LogoutDecision::Refuse(CID_NOT_FOUND),
            ),
            (
                logout_reason::REMOVE_FOR_RECOVERY,
                1,
                1,
                LogoutDecision::Refuse(RECOVERY_NOT_SUPPORTED),
            ),
            (0x7f, 1, 1, LogoutDecision::Refuse(RECOVERY_NOT_SUPPORTED)),
        ];
        for (reason, req_cid, cid, want) in cases {
            let l = LogoutRequest {
                immediate: true,
                reason,
                itt: 1,
                cid: req_cid,
                cmd_sn: 0,
                exp_stat_sn: 0,
            };
            let d = decide(&l, cid);
            assert_eq!(d, want, "reason {reason} cid {req_cid} on {cid}");
        }
        assert_eq!(LogoutDecision::Close.response(), CLOSED);
        assert_eq!(LogoutDecision::Refuse(CID_NOT_FOUND).response(), 1);
        assert_eq!(LogoutDecision::Refuse(RECOVERY_NOT_SUPPORTED).response(), 2);
    }
}
