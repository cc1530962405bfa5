//! NOP-Out and NOP-In (RFC 7143 §11.18, §11.19).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    /// 0xffffffff when the NOP-Out answers a target's NOP-In and wants no reply.
    pub itt: u32,
    /// The NOP-In's tag when answering a target ping, else 0xffffffff.
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

impl NopOut {
    pub fn from_pdu(pdu: &Pdu) -> Result<NopOut, PduError> {
        expect(pdu, Opcode::NOP_OUT)?;
        let b = &pdu.bhs;
        Ok(NopOut {
            immediate: b.immediate(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
            data: pdu.data.clone(),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::NOP_OUT);
        b.set_immediate(self.immediate);
        b.0[1] = 0x80;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        Pdu::new(b, self.data.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

impl NopIn {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::NOP_IN);
        b.0[1] = 0x80;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        Pdu::new(b, self.data.clone())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<NopIn, PduError> {
        expect(pdu, Opcode::NOP_IN)?;
        let b = &pdu.bhs;
        Ok(NopIn {
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
