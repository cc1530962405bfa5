//! SCSI Command (RFC 7143 §11.3).

use bytes::{Bytes, BytesMut};

use super::{expect, Bhs, Opcode, Pdu, PduError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (§11.3.1.3): 0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA.
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The whole CDB: the 16 bytes of the BHS, extended by an Extended CDB AHS if present.
    pub cdb: Bytes,
    /// Expected Bidirectional Read Data Length AHS (§11.3.1.4), if present.
    pub bidi_read_len: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

/// AHS types (RFC 7143 §11.2.2.1).
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LEN: u8 = 2;

impl ScsiCommand {
    pub fn from_pdu(pdu: &Pdu) -> Result<ScsiCommand, PduError> {
        expect(pdu, Opcode::SCSI_COMMAND)?;
        let b = &pdu.bhs;
        let mut cmd = ScsiCommand {
            immediate: b.immediate(),
            final_bit: b.final_bit(),
            read: b.0[1] & 0x40 != 0,
            write: b.0[1] & 0x20 != 0,
            attr: b.0[1] & 0x07,
            lun: b.lun(),
            itt: b.itt(),
            expected_len: b.u32(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
            cdb: Bytes::copy_from_slice(&b.0[32..48]),
            bidi_read_len: None,
            data: pdu.data.clone(),
        };
        // §11.2.2: each AHS is a 2-byte length, a type, a specific byte, then
        // padded to 4 bytes.
        let mut ahs = &pdu.ahs[..];
        while !ahs.is_empty() {
            if ahs.len() < 4 {
                return Err(PduError::BadAhs);
            }
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let ty = ahs[2];
            let total = 3 + len;
            let padded = total + super::pad_len(total);
            if ahs.len() < padded || len == 0 {
                return Err(PduError::BadAhs);
            }
            let body = &ahs[3..total];
            match ty {
                // §11.3.1.4: the AHS length counts the reserved byte too.
                AHS_EXTENDED_CDB => {
                    let mut full = BytesMut::from(&b.0[32..48]);
                    full.extend_from_slice(&body[1..]);
                    cmd.cdb = full.freeze();
                }
                AHS_BIDI_READ_LEN if body.len() == 5 => {
                    cmd.bidi_read_len =
                        Some(u32::from_be_bytes([body[1], body[2], body[3], body[4]]));
                }
                _ => return Err(PduError::BadAhs),
            }
            ahs = &ahs[padded..];
        }
        Ok(cmd)
    }

    /// Initiator side, for tests and tools. CDBs up to 16 bytes.
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::SCSI_COMMAND);
        b.set_immediate(self.immediate);
        b.0[1] = (self.final_bit as u8) << 7
            | (self.read as u8) << 6
            | (self.write as u8) << 5
            | (self.attr & 7);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.expected_len);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        let n = self.cdb.len().min(16);
        b.0[32..32 + n].copy_from_slice(&self.cdb[..n]);
        Pdu::new(b, self.data.clone())
    }
}
