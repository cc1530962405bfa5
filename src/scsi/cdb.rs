//! CDB access: operation codes, the length each opcode group implies, and bounds-safe
//! big-endian field readers.

/// Operation codes we know (SPC-5 table E.2, SBC-4 table 33).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    /// RESERVE(6) / RELEASE(6) (SPC-2 7.21, 7.17), and (10) below.
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SANITIZE: u8 = 0x48;
}

/// Service actions we know.
pub mod sa {
    /// SERVICE ACTION IN(16) / READ CAPACITY(16), SBC-4 5.21.
    pub const READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN(16) / GET LBA STATUS, SBC-4 5.8.
    pub const GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES, SPC-5 6.36.
    pub const REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    /// MAINTENANCE IN / REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS, SPC-5 6.38.
    pub const REPORT_SUPPORTED_TMFS: u8 = 0x0D;
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS, SPC-4 6.27.
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
}

/// CDB length implied by the opcode's group code (SPC-5 4.2.5.1, table 4). Groups 3 (the
/// variable-length 7Fh among them), 6 and 7 (vendor specific) have none we support.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A CDB whose length was checked against its opcode group by `plan`. Readers still never
/// index out of bounds: a missing byte reads as zero.
#[derive(Clone, Copy)]
pub struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn byte(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }

    pub fn opcode(&self) -> u8 {
        self.byte(0)
    }

    fn be<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.byte(at + k);
        }
        out
    }

    pub fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes(self.be::<2>(at))
    }

    pub fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.be::<4>(at))
    }

    pub fn u64(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.be::<8>(at))
    }

    /// Service action field, low 5 bits of byte 1 (SPC-5 4.2.5.2).
    pub fn service_action(&self) -> u8 {
        self.byte(1) & 0x1F
    }
}

/// Cut response data to the ALLOCATION LENGTH (SPC-5 4.2.5.6): the device server returns
/// at most that many bytes and it is not an error.
pub fn cut(mut data: Vec<u8>, alloc: usize) -> Vec<u8> {
    data.truncate(alloc);
    data
}
