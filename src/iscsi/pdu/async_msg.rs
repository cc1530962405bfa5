//! Asynchronous Message (RFC 7143 §11.9).

use bytes::Bytes;

use super::{Bhs, Opcode, Pdu, RESERVED_TAG};

/// AsyncEvent codes (§11.9.1).
pub mod async_event {
    pub const SCSI_EVENT: u8 = 0;
    pub const LOGOUT_REQUESTED: u8 = 1;
    pub const DROPPING_CONNECTION: u8 = 2;
    pub const DROPPING_ALL_CONNECTIONS: u8 = 3;
    pub const RENEGOTIATE: u8 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub parameters: [u16; 3],
    pub data: Bytes,
}

impl AsyncMessage {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::ASYNC_MESSAGE);
        b.0[1] = 0x80;
        b.set_u64(8, self.lun);
        b.set_u32(16, RESERVED_TAG);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.0[36] = self.event;
        b.0[37] = self.vcode;
        b.set_u16(38, self.parameters[0]);
        b.set_u16(40, self.parameters[1]);
        b.set_u16(42, self.parameters[2]);
        Pdu::new(b, self.data.clone())
    }
}
