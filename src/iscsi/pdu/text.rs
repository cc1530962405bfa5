//! Text Request and Text Response (RFC 7143 §11.10, §11.11).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

impl TextRequest {
    pub fn from_pdu(pdu: &Pdu) -> Result<TextRequest, PduError> {
        expect(pdu, Opcode::TEXT_REQUEST)?;
        let b = &pdu.bhs;
        Ok(TextRequest {
            immediate: b.immediate(),
            final_bit: b.final_bit(),
            cont: b.0[1] & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
            data: pdu.data.clone(),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::TEXT_REQUEST);
        b.set_immediate(self.immediate);
        b.0[1] = (self.final_bit as u8) << 7 | (self.cont as u8) << 6;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        Pdu::new(b, self.data.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

impl TextResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::TEXT_RESPONSE);
        b.0[1] = (self.final_bit as u8) << 7 | (self.cont as u8) << 6;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        Pdu::new(b, self.data.clone())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<TextResponse, PduError> {
        expect(pdu, Opcode::TEXT_RESPONSE)?;
        let b = &pdu.bhs;
        Ok(TextResponse {
            final_bit: b.final_bit(),
            cont: b.0[1] & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            data: pdu.data.clone(),
        })
    }
}
