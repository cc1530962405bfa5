//! Ready To Transfer (RFC 7143 §11.8).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

impl R2t {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::R2T);
        b.0[1] = 0x80;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.set_u32(36, self.r2t_sn);
        b.set_u32(40, self.buffer_offset);
        b.set_u32(44, self.desired_len);
        Pdu::new(b, Bytes::new())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<R2t, PduError> {
        expect(pdu, Opcode::R2T)?;
        let b = &pdu.bhs;
        Ok(R2t {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            r2t_sn: b.u32(36),
            buffer_offset: b.u32(40),
            desired_len: b.u32(44),
        })
    }
}
