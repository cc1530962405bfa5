//! Login Request and Login Response (RFC 7143 §11.12, §11.13).

use bytes::Bytes;

use super::{expect, Bhs, Opcode, Pdu, PduError};

/// Login stages (§11.12.3): CSG and NSG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    pub fn from_bits(v: u8) -> Option<Stage> {
        match v {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T bit: the initiator wants to move to `nsg`.
    pub transit: bool,
    /// C bit: the text continues in the next PDU.
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

impl LoginRequest {
    pub fn from_pdu(pdu: &Pdu) -> Result<LoginRequest, PduError> {
        expect(pdu, Opcode::LOGIN_REQUEST)?;
        let b = &pdu.bhs;
        let mut isid = [0; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Ok(LoginRequest {
            transit: b.0[1] & 0x80 != 0,
            cont: b.0[1] & 0x40 != 0,
            csg: (b.0[1] >> 2) & 3,
            nsg: b.0[1] & 3,
            version_max: b.0[2],
            version_min: b.0[3],
            isid,
            tsih: b.u16(14),
            itt: b.itt(),
            cid: b.u16(20),
            cmd_sn: b.u32(24),
            exp_stat_sn: b.u32(28),
            data: pdu.data.clone(),
        })
    }

    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::LOGIN_REQUEST);
        b.set_immediate(true);
        b.0[1] = (self.transit as u8) << 7
            | (self.cont as u8) << 6
            | (self.csg & 3) << 2
            | (self.nsg & 3);
        b.0[2] = self.version_max;
        b.0[3] = self.version_min;
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_u32(16, self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        Pdu::new(b, self.data.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// §11.13.5.
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

impl LoginResponse {
    pub fn to_pdu(&self) -> Pdu {
        let mut b = Bhs::new(Opcode::LOGIN_RESPONSE);
        b.0[1] = (self.transit as u8) << 7
            | (self.cont as u8) << 6
            | (self.csg & 3) << 2
            | (self.nsg & 3);
        b.0[2] = self.version_max;
        b.0[3] = self.version_active;
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_u32(16, self.itt);
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
        b.0[36] = self.status_class;
        b.0[37] = self.status_detail;
        Pdu::new(b, self.data.clone())
    }

    pub fn from_pdu(pdu: &Pdu) -> Result<LoginResponse, PduError> {
        expect(pdu, Opcode::LOGIN_RESPONSE)?;
        let b = &pdu.bhs;
        let mut isid = [0; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Ok(LoginResponse {
            transit: b.0[1] & 0x80 != 0,
            cont: b.0[1] & 0x40 != 0,
            csg: (b.0[1] >> 2) & 3,
            nsg: b.0[1] & 3,
            version_max: b.0[2],
            version_active: b.0[3],
            isid,
            tsih: b.u16(14),
            itt: b.itt(),
            stat_sn: b.u32(24),
            exp_cmd_sn: b.u32(28),
            max_cmd_sn: b.u32(32),
            status_class: b.0[36],
            status_detail: b.0[37],
            data: pdu.data.clone(),
        })
    }
}
