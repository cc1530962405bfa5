//! SCSI Response (RFC 7143 §11.4).

use bytes::{BufMut, Bytes, BytesMut};

use super::{expect, Bhs, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// §11.4.1: O bit, residual overflow.
    pub overflow: bool,
    /// §11.4.1: U bit, residual underflow.
    pub underflow: bool,
    /// §11.4.3: 0x00 command completed at target, 0x01 target failure.
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub residual: u32,
    /// Sense data (without the 2-byte SenseLength prefix).
    pub sense: Bytes,
}

impl ScsiResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::SCSI_RESPONSE);
        b.0[1] = 0x80 | (self.overflow as u8) << 2 | (self.underflow as u8) << 1;
        b.0[2] = self.response;
        b.0[3] = self.status;
        b.set_u32(16, self.itt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.set_u32(36, self.exp_data_sn);
        b.set_u32(44, self.residual);
        let data = if self.sense.is_empty() {
            Bytes::new()
        } else {
            // §11.4.7: SenseLength then the sense data.
            let mut d = BytesMut::with_capacity(2 + self.sense.len());
            d.put_u16(self.sense.len() as u16);
            d.put_slice(&self.sense);
            d.freeze()
        };
        Pdu::new(b, data)
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<ScsiResponse, PduError> {
        expect(pdu, Opcode::SCSI_RESPONSE)?;
        let b = &pdu.bhs;
        let sense = if pdu.data.len() >= 2 {
            let n = u16::from_be_bytes([pdu.data[0], pdu.data[1]]) as usize;
            pdu.data.slice(2..(2 + n).min(pdu.data.len()))
        } else {
            Bytes::new()
        };
        Ok(ScsiResponse {
            overflow: b.0[1] & 0x04 != 0,
            underflow: b.0[1] & 0x02 != 0,
            response: b.0[2],
            status: b.0[3],
            itt: b.itt(),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            exp_data_sn: b.u32(36),
            residual: b.u32(44),
            sense,
        })
    }
}
