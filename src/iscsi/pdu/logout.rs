//! Logout Request and Logout Response (RFC 7143 §11.14, §11.15).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

/// Reason codes (§11.14.1).
pub mod logout_reason {
    pub const CLOSE_SESSION: u8 = 0;
    pub const CLOSE_CONNECTION: u8 = 1;
    pub const REMOVE_FOR_RECOVERY: u8 = 2;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub fn from_pdu(pdu: &Pdu) -> Result<LogoutRequest, PduError> {
        expect(pdu, Opcode::LOGOUT_REQUEST)?;
        let b = &pdu.bhs;
        Ok(LogoutRequest {
            immediate: b.immediate(),
            reason: b.0[1] & 0x7f,
            itt: b.itt(),
            cid: b.u16(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::LOGOUT_REQUEST);
        b.set_immediate(self.immediate);
        b.0[1] = 0x80 | (self.reason & 0x7f);
        b.set_u32(16, self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        Pdu::new(b, Bytes::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// §11.15.1: 0 closed successfully, 1 CID not found, 2 recovery not supported,
    /// 3 cleanup failed.
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::LOGOUT_RESPONSE);
        b.0[1] = 0x80;
        b.0[2] = self.response;
        b.set_u32(16, self.itt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.set_u16(40, self.time2wait);
        b.set_u16(42, self.time2retain);
        Pdu::new(b, Bytes::new())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<LogoutResponse, PduError> {
        expect(pdu, Opcode::LOGOUT_RESPONSE)?;
        let b = &pdu.bhs;
        Ok(LogoutResponse {
            response: b.0[2],
            itt: b.itt(),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            time2wait: b.u16(40),
            time2retain: b.u16(42),
        })
    }
}
