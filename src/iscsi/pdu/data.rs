//! SCSI Data-Out and Data-In (RFC 7143 §11.7).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError, RESERVED_TAG};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    /// Target Transfer Tag: the R2T's tag, or 0xffffffff for unsolicited data.
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

impl DataOut {
    pub fn from_pdu(pdu: &Pdu) -> Result<DataOut, PduError> {
        expect(pdu, Opcode::DATA_OUT)?;
        let b = &pdu.bhs;
        Ok(DataOut {
            final_bit: b.final_bit(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            exp_stat_sn: b.u32(28),
            data_sn: b.u32(36),
            buffer_offset: b.u32(40),
            data: pdu.data.clone(),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::DATA_OUT);
        b.0[1] = (self.final_bit as u8) << 7;
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(28, self.exp_stat_sn);
        b.set_u32(36, self.data_sn);
        b.set_u32(40, self.buffer_offset);
        Pdu::new(b, self.data.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub final_bit: bool,
    /// A bit: the target asks for a DataACK SNACK (ERL > 0 only).
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: this PDU carries the command's status (§11.7.3); `status`, `stat_sn` and
    /// `residual` are meaningful only then.
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
    pub data: Bytes,
}

impl DataIn {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::DATA_IN);
        b.0[1] = (self.final_bit as u8) << 7
            | (self.ack as u8) << 6
            | (self.overflow as u8) << 2
            | (self.underflow as u8) << 1
            | self.status.is_some() as u8;
        b.0[3] = self.status.unwrap_or(0);
        b.set_u64(8, if self.ack { self.lun } else { 0 });
        b.set_u32(16, self.itt);
        b.set_u32(20, if self.ack { self.ttt } else { RESERVED_TAG });
        b.set_u32(
            24,
            if self.status.is_some() {
                self.stat_sn
            } else {
                0
            },
        );
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.set_u32(36, self.data_sn);
        b.set_u32(40, self.buffer_offset);
        b.set_u32(
            44,
            if self.status.is_some() {
                self.residual
            } else {
                0
            },
        );
        Pdu::new(b, self.data.clone())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<DataIn, PduError> {
        expect(pdu, Opcode::DATA_IN)?;
        let b = &pdu.bhs;
        let s = b.0[1] & 0x01 != 0;
        Ok(DataIn {
            final_bit: b.final_bit(),
            ack: b.0[1] & 0x40 != 0,
            overflow: b.0[1] & 0x04 != 0,
            underflow: b.0[1] & 0x02 != 0,
            status: s.then_some(b.0[3]),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            data_sn: b.u32(36),
            buffer_offset: b.u32(40),
            residual: b.u32(44),
            data: pdu.data.clone(),
        })
    }
}
