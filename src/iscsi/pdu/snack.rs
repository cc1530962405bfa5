//! SNACK Request (RFC 7143 §11.16). At ErrorRecoveryLevel 0 the target rejects them,
//! but they are parsed so the Reject quotes a well-formed header.

use super::{expect, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnackRequest {
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

impl SnackRequest {
    pub fn from_pdu(pdu: &Pdu) -> Result<SnackRequest, PduError> {
        expect(pdu, Opcode::SNACK_REQUEST)?;
        let b = &pdu.bhs;
        Ok(SnackRequest {
            kind: b.0[1] & 0x0f,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32(20),
            exp_stat_sn: b.u32(28),
            beg_run: b.u32(40),
            run_length: b.u32(44),
        })
    }
}
