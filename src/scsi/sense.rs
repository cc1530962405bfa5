//! Sense data (SPC-5 4.4, 4.5): the key / additional sense code / qualifier triple a
//! CHECK CONDITION carries, and its two wire formats (fixed, descriptor).

/// Sense keys (SPC-5 4.4.2, table 49).
pub mod key {
    pub const NO_SENSE: u8 = 0x00;
    pub const RECOVERED_ERROR: u8 = 0x01;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const ABORTED_COMMAND: u8 = 0x0B;
    pub const MISCOMPARE: u8 = 0x0E;
}

/// Sense data: key, additional sense code and qualifier, optional information field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
    /// Sense-key specific: field pointer for ILLEGAL REQUEST (byte, optional bit, in CDB or data).
    pub field_pointer: Option<FieldPointer>,
}

/// Sense-key specific field pointer (SPC-5 4.5.2.4.2): which byte (and bit) of the CDB or of
/// the parameter list was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

/// Length of the fixed format sense data we produce (SPC-5 4.5.3: 8 + ADDITIONAL SENSE LENGTH 10).
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A bare key / ASC / ASCQ triple.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field_pointer: None,
        }
    }

    /// Same sense with the INFORMATION field set.
    pub fn with_information(mut self, information: u64) -> Sense {
        self.information = Some(information);
        self
    }

    /// NO SENSE, NO ADDITIONAL SENSE INFORMATION: what REQUEST SENSE reports when nothing
    /// is pending (SPC-5 6.39).
    pub const fn no_sense() -> Sense {
        Sense::new(key::NO_SENSE, 0x00, 0x00)
    }

    /// MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h): a read of the backing store failed.
    pub const fn medium_error() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x11, 0x00)
    }

    /// MEDIUM ERROR, WRITE ERROR (0Ch/00h): a write or flush of the backing store failed.
    pub const fn write_error() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x0C, 0x00)
    }

    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h): anything else that went wrong inside.
    pub const fn internal_target_failure() -> Sense {
        Sense::new(key::HARDWARE_ERROR, 0x44, 0x00)
    }

    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h): the sparse file could not
    /// grow (ENOSPC), SBC-4 4.7.3.6.
    pub const fn space_allocation_failed() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x07)
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (1Dh/00h), with the INFORMATION field
    /// set to the offset of the first byte that differed (SBC-4 5.31, VERIFY with BYTCHK=1).
    pub fn miscompare(offset: u64) -> Sense {
        Sense::new(key::MISCOMPARE, 0x1D, 0x00).with_information(offset)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) pointing at `byte` of the CDB.
    pub fn invalid_field_in_cdb(byte: u16) -> Sense {
        Sense::invalid_field(true, byte, None)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at one bit of `byte`.
    pub fn invalid_field_in_cdb_bit(byte: u16, bit: u8) -> Sense {
        Sense::invalid_field(true, byte, Some(bit))
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h) pointing into the data-out.
    pub fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Sense {
        Sense::invalid_field(false, byte, bit)
    }

    fn invalid_field(in_cdb: bool, byte: u16, bit: Option<u8>) -> Sense {
        let asc = if in_cdb { 0x24 } else { 0x26 };
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc,
            ascq: 0x00,
            information: None,
            field_pointer: Some(FieldPointer {
                in_cdb,
                byte,
                bit: bit.map(|b| b & 7),
            }),
        }
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const fn parameter_list_length_error() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x1A, 0x00)
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h).
    pub const fn invalid_opcode() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00)
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00)
    }

    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h): the LUN is not mapped.
    pub const fn lu_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }

    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (39h/00h).
    pub const fn saving_parameters_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00)
    }

    /// NOT READY, MEDIUM NOT PRESENT (3Ah/00h): a removable LU's medium was ejected.
    pub const fn medium_not_present() -> Sense {
        Sense::new(key::NOT_READY, 0x3A, 0x00)
    }

    /// ILLEGAL REQUEST, MEDIUM REMOVAL PREVENTED (53h/02h): an eject while a nexus
    /// prevents removal (SBC-4 5.25).
    pub const fn medium_removal_prevented() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x53, 0x02)
    }

    /// NOT READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (04h/1Bh): what every
    /// command but INQUIRY, REPORT LUNS and REQUEST SENSE gets while a SANITIZE runs
    /// (SBC-4 4.34.1).
    pub const fn sanitize_in_progress() -> Sense {
        Sense::new(key::NOT_READY, 0x04, 0x1B)
    }

    /// DATA PROTECT, WRITE PROTECTED (27h/00h).
    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x00)
    }

    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const fn power_on() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x29, 0x00)
    }

    /// UNIT ATTENTION, I_T NEXUS LOSS OCCURRED (29h/07h).
    pub const fn it_nexus_loss() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x29, 0x07)
    }

    /// UNIT ATTENTION, MODE PARAMETERS CHANGED (2Ah/01h): another I_T nexus changed a mode page.
    pub const fn mode_parameters_changed() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2A, 0x01)
    }

    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (2Ah/09h): the volume was resized.
    pub const fn capacity_changed() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2A, 0x09)
    }

    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh): a LUN was mapped or unmapped.
    pub const fn reported_luns_changed() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x3F, 0x0E)
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN INFORMATION UNIT (0Eh/03h): e.g. an iSCSI EXPECTED
    /// DATA TRANSFER LENGTH that does not fit the CDB (RFC 7143 11.4.5.1 leaves the choice).
    pub const fn invalid_field_in_information_unit() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x0E, 0x03)
    }

    /// ABORTED COMMAND, OVERLAPPED COMMANDS ATTEMPTED (4Eh/00h): a task tag still in use
    /// (SAM-5 §5.12).
    pub const fn overlapped_commands() -> Sense {
        Sense::new(key::ABORTED_COMMAND, 0x4E, 0x00)
    }

    /// ABORTED COMMAND, DATA PHASE ERROR (4Bh/00h): the data-out did not arrive as announced.
    pub const fn data_phase_error() -> Sense {
        Sense::new(key::ABORTED_COMMAND, 0x4B, 0x00)
    }

    /// Sense for a failed volume I/O: ENOSPC/EDQUOT (the sparse file could not grow) is
    /// SPACE ALLOCATION FAILED WRITE PROTECT, EROFS is WRITE PROTECTED, anything else a
    /// WRITE ERROR when `writing` (write or flush) and an UNRECOVERED READ ERROR otherwise.
    pub fn from_io_error(err: &std::io::Error, writing: bool) -> Sense {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::space_allocation_failed(),
            Some(libc::EROFS) => Sense::write_protected(),
            _ if writing => Sense::write_error(),
            _ => Sense::medium_error(),
        }
    }

    pub fn is_unit_attention(&self) -> bool {
        self.key == key::UNIT_ATTENTION
    }

    /// The three sense-key specific bytes (SPC-5 4.5.2.4.2), if a field pointer is set.
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let fp = self.field_pointer?;
        // SKSV (bit 7), C/D (bit 6), BPV (bit 3), BIT POINTER (bits 2..0), FIELD POINTER.
        let mut b0 = 0x80;
        if fp.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = fp.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = fp.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed format sense data (SPC-5 4.5.3), 18 bytes, response code 70h (current error).
    /// The VALID bit is set when the information field is present and fits in 32 bits
    /// (otherwise the fixed format cannot carry it and VALID stays 0).
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0F;
        if let Some(info) = self.information {
            if let Ok(info) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&info.to_be_bytes());
            }
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor format sense data (SPC-5 4.5.2), response code 72h, with an information
    /// descriptor (4.5.2.2) and a sense-key specific descriptor (4.5.2.4) when they apply.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key & 0x0F, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        // At most 8 + 12 + 8 bytes: the additional length always fits.
        b[7] = (b.len() - 8) as u8;
        b
    }
}

/// Name of a sense key (SPC-5 4.4.2, table 49), for logs.
pub fn key_name(k: u8) -> &'static str {
    match k {
        key::NO_SENSE => "NO SENSE",
        key::RECOVERED_ERROR => "RECOVERED ERROR",
        key::NOT_READY => "NOT READY",
        key::MEDIUM_ERROR => "MEDIUM ERROR",
        key::HARDWARE_ERROR => "HARDWARE ERROR",
        key::ILLEGAL_REQUEST => "ILLEGAL REQUEST",
        key::UNIT_ATTENTION => "UNIT ATTENTION",
        key::DATA_PROTECT => "DATA PROTECT",
        key::ABORTED_COMMAND => "ABORTED COMMAND",
        key::MISCOMPARE => "MISCOMPARE",
        _ => "OTHER",
    }
}

/// `ILLEGAL REQUEST 24h/00h`, for `%sense` in tracing fields.
impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:02X}h/{:02X}h",
            key_name(self.key),
            self.asc,
            self.ascq
        )
    }
}
