//! The eight-byte LUN structure (SAM-5 4.7): single level, peripheral device addressing for
//! LUNs below 256 and flat space addressing up to 16383. The iSCSI layer decodes the LUN field
//! of a SCSI Command PDU with `decode_lun`; REPORT LUNS encodes with `encode_lun`.

/// Highest LUN we can encode (flat space addressing: 14 bits, SAM-5 4.7.7).
pub const MAX_LUN: u64 = 0x3FFF;

/// Encode a LUN; None above `MAX_LUN`.
pub fn encode_lun(lun: u64) -> Option<[u8; 8]> {
    let mut b = [0u8; 8];
    if lun < 256 {
        // Peripheral device addressing, bus identifier 0 (SAM-5 4.7.6).
        b[1] = lun as u8;
    } else if lun <= MAX_LUN {
        // Flat space addressing method 01b (SAM-5 4.7.7).
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = (lun & 0xFF) as u8;
    } else {
        return None;
    }
    Some(b)
}

/// Decode a single level LUN in peripheral (bus 0) or flat space addressing; anything else
/// (hierarchical levels, logical unit addressing, extended formats) is None, which the caller
/// answers as a LUN that does not exist.
pub fn decode_lun(b: [u8; 8]) -> Option<u64> {
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0b00 if b[0] == 0 => Some(u64::from(b[1])),
        0b01 => Some((u64::from(b[0] & 0x3F) << 8) | u64::from(b[1])),
        _ => None,
    }
}
