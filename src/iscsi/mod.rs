//! The iSCSI wire protocol (RFC 7143) without I/O: PDUs, digests, text keys, login and
//! negotiation. Bytes go in, PDUs and actions come out.

pub mod chap;
pub mod digest;
pub mod discovery;
pub mod login;
pub mod params;
pub mod pdu;
pub mod session;
pub mod text;

use pdu::{
    DataOut, LoginRequest, LogoutRequest, NopOut, Opcode, Pdu, PduError, ScsiCommand, SnackRequest,
    TextRequest, TmfRequest,
};

/// A PDU an initiator may send, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    Tmf(TmfRequest),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack(SnackRequest),
    /// An opcode an initiator may not send, or one we do not know (§11.2.1.2):
    /// answered with Reject "Command not supported".
    Unknown(Opcode),
}

impl Request {
    pub fn parse(pdu: Pdu) -> Result<Request, PduError> {
        Ok(match pdu.bhs.opcode() {
            Opcode::NOP_OUT => Request::NopOut(NopOut::from_pdu(&pdu)?),
            Opcode::SCSI_COMMAND => Request::ScsiCommand(ScsiCommand::from_pdu(&pdu)?),
            Opcode::TMF_REQUEST => Request::Tmf(TmfRequest::from_pdu(&pdu)?),
            Opcode::LOGIN_REQUEST => Request::Login(LoginRequest::from_pdu(&pdu)?),
            Opcode::TEXT_REQUEST => Request::Text(TextRequest::from_pdu(&pdu)?),
            Opcode::DATA_OUT => Request::DataOut(DataOut::from_pdu(&pdu)?),
            Opcode::LOGOUT_REQUEST => Request::Logout(LogoutRequest::from_pdu(&pdu)?),
            Opcode::SNACK_REQUEST => Request::Snack(SnackRequest::from_pdu(&pdu)?),
            other => Request::Unknown(other),
        })
    }
}

/// Serial number arithmetic (RFC 1982, used by RFC 7143 §4.2.2.1 for CmdSN/StatSN).
pub mod serial {
    /// a < b in 32-bit serial arithmetic.
    pub fn lt(a: u32, b: u32) -> bool {
        a != b && b.wrapping_sub(a) < 0x8000_0000
    }
    /// a <= b in 32-bit serial arithmetic.
    pub fn le(a: u32, b: u32) -> bool {
        a == b || lt(a, b)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn wraps() {
            assert!(super::lt(0xffff_fff0, 5));
            assert!(!super::lt(5, 0xffff_fff0));
            assert!(super::le(7, 7));
            assert!(super::lt(1, 2));
        }
    }
}

/// A logged-in session as `session list` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub target: String,
    pub initiator: String,
    /// ISID as 12 hex digits.
    pub isid: String,
    pub tsih: u16,
    pub connections: u32,
    /// Negotiated operational keys, in negotiation order.
    pub negotiated: Vec<(String, String)>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}
