//! Task Management Function request and response (RFC 7143 §11.5, §11.6).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

/// Function codes (§11.5.1). Unknown values are kept so the right response goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Other(u8),
}

impl TmfFunction {
    pub fn from_code(c: u8) -> TmfFunction {
        match c {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            c => TmfFunction::Other(c),
        }
    }
    pub fn code(self) -> u8 {
        match self {
            TmfFunction::AbortTask => 1,
            TmfFunction::AbortTaskSet => 2,
            TmfFunction::ClearAca => 3,
            TmfFunction::ClearTaskSet => 4,
            TmfFunction::LogicalUnitReset => 5,
            TmfFunction::TargetWarmReset => 6,
            TmfFunction::TargetColdReset => 7,
            TmfFunction::TaskReassign => 8,
            TmfFunction::Other(c) => c,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

impl TmfRequest {
    pub fn from_pdu(pdu: &Pdu) -> Result<TmfRequest, PduError> {
        expect(pdu, Opcode::TMF_REQUEST)?;
        let b = &pdu.bhs;
        Ok(TmfRequest {
            immediate: b.immediate(),
            function: TmfFunction::from_code(b.0[1] & 0x7f),
            lun: b.lun(),
            itt: b.itt(),
            referenced_tag: b.u32(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
            ref_cmd_sn: b.u32(32),
            exp_data_sn: b.u32(36),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::TMF_REQUEST);
        b.set_immediate(self.immediate);
        b.0[1] = 0x80 | (self.function.code() & 0x7f);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.referenced_tag);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b.set_u32(32, self.ref_cmd_sn);
        b.set_u32(36, self.exp_data_sn);
        Pdu::new(b, Bytes::new())
    }
}

/// Response codes (§11.6.1).
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmfResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl TmfResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::TMF_RESPONSE);
        b.0[1] = 0x80;
        b.0[2] = self.response;
        b.set_u32(16, self.itt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        Pdu::new(b, Bytes::new())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<TmfResponse, PduError> {
        expect(pdu, Opcode::TMF_RESPONSE)?;
        let b = &pdu.bhs;
        Ok(TmfResponse {
            response: b.0[2],
            itt: b.itt(),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
        })
    }
}
