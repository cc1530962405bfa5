//! SANITIZE (SBC-4 5.30, 4.34): OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT
//! FAILURE MODE, only on an LU that allows it (a volume created with `--allow-sanitize`);
//! elsewhere the command does not exist. Decoding only: the server runs the sanitize
//! through the volume's write path (every page of the volume ends dirty, like a write
//! of all of it) and refuses other commands while it runs.

use super::cdb::Cdb;
use super::{check, LogicalUnit, Plan, Response, Sense};

/// Service actions (SBC-4 5.30.1, table 97).
pub mod action {
    pub const OVERWRITE: u8 = 0x01;
    pub const BLOCK_ERASE: u8 = 0x02;
    pub const CRYPTO_ERASE: u8 = 0x03;
    pub const EXIT_FAILURE_MODE: u8 = 0x1F;
}

/// What a SANITIZE does to the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanitizeKind {
    /// Write the initialization pattern to every block (the parameter list, `len` bytes,
    /// comes as Data-Out; [`overwrite_block`] reads it).
    Overwrite { len: u32 },
    /// Deallocate every block (it reads as zeros). With no keys to forget, a
    /// cryptographic erase is the same.
    Erase,
}

/// SANITIZE (SBC-4 5.30).
pub fn sanitize(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    if !lu.sanitize_allowed() {
        return check(Sense::invalid_opcode());
    }
    let b1 = cdb.byte(1);
    let immed = b1 & 0x80 != 0;
    // Byte 1 bit 6 and bytes 2..=6 are reserved.
    if b1 & 0x40 != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 6));
    }
    if let Some(at) = (2..=6).find(|&i| cdb.byte(i) != 0) {
        return check(Sense::invalid_field_in_cdb(at as u16));
    }
    let len = u32::from(cdb.u16(7));
    let kind = match b1 & 0x1F {
        action::OVERWRITE => {
            // SBC-4 5.30.2: a parameter list of at least the header and one pattern
            // byte, and a pattern of at most one logical block.
            if len < 5 || len > lu.block_size() + 4 {
                return check(Sense::invalid_field_in_cdb(7));
            }
            SanitizeKind::Overwrite { len }
        }
        action::BLOCK_ERASE | action::CRYPTO_ERASE | action::EXIT_FAILURE_MODE if len != 0 => {
            // These take no parameter list.
            return check(Sense::invalid_field_in_cdb(7));
        }
        action::BLOCK_ERASE | action::CRYPTO_ERASE => SanitizeKind::Erase,
        // Sanitize operations here never fail part way into a failure mode: nothing
        // to exit.
        action::EXIT_FAILURE_MODE => return Plan::Respond(Response::good(Vec::new())),
        _ => return check(Sense::invalid_field_in_cdb_bit(1, 4)),
    };
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    Plan::Sanitize { kind, immed }
}

/// The block an OVERWRITE writes everywhere, from its parameter list (SBC-4 5.30.2.2):
/// the initialization pattern repeated over one logical block; the passes to make
/// (OVERWRITE COUNT) and whether every other pass writes the inverted block (INVERT).
pub fn overwrite_block(params: &[u8], block_size: u32) -> Result<(Vec<u8>, u8, bool), Sense> {
    if params.len() < 5 {
        return Err(Sense::parameter_list_length_error());
    }
    let invert = params[0] & 0x80 != 0;
    // TEST (bits 6..5) other than 00b is vendor testing: refused.
    if params[0] & 0x60 != 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, Some(5)));
    }
    let count = params[0] & 0x1F;
    if count == 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, None));
    }
    let plen = usize::from(u16::from_be_bytes([params[2], params[3]]));
    if plen == 0 || plen > block_size as usize || 4 + plen > params.len() {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let pattern = &params[4..4 + plen];
    let block = pattern
        .iter()
        .copied()
        .cycle()
        .take(block_size as usize)
        .collect();
    Ok((block, count, invert))
}
