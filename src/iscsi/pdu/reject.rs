//! Reject (RFC 7143 §11.17).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError, RESERVED_TAG};

/// Reason codes (§11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    WaitingForLogout = 0x0c,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    /// The header of the rejected PDU, carried back as the data segment.
    pub header: Bhs,
}

impl Reject {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::REJECT);
        b.0[1] = 0x80;
        b.0[2] = self.reason;
        b.set_u32(16, RESERVED_TAG);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.set_u32(36, self.data_sn);
        Pdu::new(b, Bytes::copy_from_slice(&self.header.0))
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<Reject, PduError> {
        expect(pdu, Opcode::REJECT)?;
        let b = &pdu.bhs;
        let mut header = Bhs::default();
        if pdu.data.len() >= super::BHS_LEN {
            header.0.copy_from_slice(&pdu.data[..super::BHS_LEN]);
        }
        Ok(Reject {
            reason: b.0[2],
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            data_sn: b.u32(36),
            header,
        })
    }
}
