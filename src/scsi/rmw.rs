//! Writes that must be one step against everything else on their blocks: COMPARE AND
//! WRITE (SBC-4 5.3), ORWRITE(16) (SBC-4 5.10) and WRITE ATOMIC(16) (SBC-4 5.48).
//! Decoding only; the server holds the range exclusively in the volume
//! (`Volume::exclusive`) while it reads, compares or merges, and writes.

use super::cdb::{op, Cdb};
use super::{check, LogicalUnit, Plan, Response, Sense};

/// MAXIMUM COMPARE AND WRITE LENGTH (Block Limits VPD byte 5), in blocks: the largest the
/// one-byte NUMBER OF LOGICAL BLOCKS field can name.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

/// Bytes one WRITE ATOMIC may write (MAXIMUM ATOMIC TRANSFER LENGTH, in blocks of the LU).
pub const MAX_ATOMIC_BYTES: u32 = 1 << 20;

/// MAXIMUM ATOMIC TRANSFER LENGTH in blocks.
pub fn max_atomic_blocks(lu: &LogicalUnit) -> u32 {
    (MAX_ATOMIC_BYTES / lu.block_size()).max(1)
}

/// ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY, in blocks: one physical block
/// (4 KiB, the file system's block), the unit the volume's file is written in.
pub fn atomic_granularity(lu: &LogicalUnit) -> u32 {
    (4096 / lu.block_size()).max(1)
}

/// Byte 1 of the three commands: WRPROTECT / ORPROTECT (bits 7..5, refused when non-zero:
/// no protection information), DPO (a cache hint, ignored), FUA.
const PROTECT_SHIFT: u8 = 5;
const FUA: u8 = 0x08;

fn in_range(lu: &LogicalUnit, lba: u64, blocks: u64) -> bool {
    let capacity = lu.num_blocks();
    match lba.checked_add(blocks) {
        Some(end) => end <= capacity && (blocks > 0 || lba < capacity),
        None => false,
    }
}

/// FUA from the CDB, or always when the write cache is off (WCE=0), as for WRITE.
fn fua(cdb: Cdb, lu: &LogicalUnit) -> bool {
    cdb.byte(1) & FUA != 0 || !lu.write_cache_enabled()
}

/// COMPARE AND WRITE (SBC-4 5.3): 2 x NUMBER OF LOGICAL BLOCKS blocks of Data-Out, the
/// verify instance then the write instance.
pub fn compare_and_write(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    if cdb.byte(1) >> PROTECT_SHIFT != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 7));
    }
    let lba = cdb.u64(2);
    let blocks = cdb.byte(13);
    // SBC-4 5.3.2: more than the MAXIMUM COMPARE AND WRITE LENGTH is an invalid field.
    // That length is the most the one-byte field can name, so only the transfer limit
    // (both instances must fit) can refuse one here.
    if u32::from(blocks) * 2 > lu.max_transfer_blocks() {
        return check(Sense::invalid_field_in_cdb(13));
    }
    if !in_range(lu, lba, u64::from(blocks)) {
        return check(Sense::lba_out_of_range());
    }
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    // SBC-4 5.3.2: zero blocks is not an error; nothing is compared or written. It still
    // goes out as a plan: the server checks the Data-Out length against it (a zero-block
    // command that carries data is as wrong as any other mismatch).
    Plan::CompareAndWrite {
        lba,
        blocks: u32::from(blocks),
        fua: fua(cdb, lu),
    }
}

/// ORWRITE(16) (SBC-4 5.10): each block becomes its old content OR the Data-Out.
pub fn orwrite(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    if cdb.byte(1) >> PROTECT_SHIFT != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 7));
    }
    let lba = cdb.u64(2);
    let blocks = cdb.u32(10);
    if blocks > lu.max_transfer_blocks() {
        return check(Sense::invalid_field_in_cdb(10));
    }
    if !in_range(lu, lba, u64::from(blocks)) {
        return check(Sense::lba_out_of_range());
    }
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    if blocks == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    Plan::OrWrite {
        lba,
        blocks,
        fua: fua(cdb, lu),
    }
}

/// WRITE ATOMIC(16) (SBC-4 5.48, 4.29): a write that no other command sees in part.
pub fn write_atomic(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    debug_assert_eq!(cdb.opcode(), op::WRITE_ATOMIC_16);
    if cdb.byte(1) >> PROTECT_SHIFT != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 7));
    }
    let lba = cdb.u64(2);
    let boundary = cdb.u16(10);
    let blocks = u32::from(cdb.u16(12));
    // MAXIMUM ATOMIC BOUNDARY SIZE is zero: an ATOMIC BOUNDARY is an invalid field.
    if boundary != 0 {
        return check(Sense::invalid_field_in_cdb(10));
    }
    if !in_range(lu, lba, u64::from(blocks)) {
        return check(Sense::lba_out_of_range());
    }
    // SBC-4 5.48: more than MAXIMUM ATOMIC TRANSFER LENGTH, an LBA off the ATOMIC
    // ALIGNMENT, or a length off the ATOMIC TRANSFER LENGTH GRANULARITY is an invalid field.
    if blocks > max_atomic_blocks(lu) {
        return check(Sense::invalid_field_in_cdb(12));
    }
    let gran = u64::from(atomic_granularity(lu));
    if !lba.is_multiple_of(gran) {
        return check(Sense::invalid_field_in_cdb(2));
    }
    if !u64::from(blocks).is_multiple_of(gran) {
        return check(Sense::invalid_field_in_cdb(12));
    }
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    if blocks == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    Plan::WriteAtomic {
        lba,
        blocks,
        fua: fua(cdb, lu),
    }
}

/// The first byte where `medium` and `expected` differ (COMPARE AND WRITE's MISCOMPARE
/// reports it in INFORMATION, SBC-4 5.3.2).
pub fn first_difference(medium: &[u8], expected: &[u8]) -> Option<u64> {
    medium
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .map(|at| at as u64)
}

/// ORWRITE's merge: `data` becomes `old | data`, byte by byte.
pub fn or_into(old: &[u8], data: &mut [u8]) {
    for (d, o) in data.iter_mut().zip(old) {
        *d |= *o;
    }
}
