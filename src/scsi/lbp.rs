//! Logical block provisioning (SBC-4 4.7): UNMAP, WRITE SAME(10/16) and GET LBA STATUS.
//! Volumes are sparse files: an unmapped block is a hole (LBPRZ: it reads as zeros), and
//! which blocks are mapped is what the file's allocation says. Decoding only here; the
//! server punches the holes and asks the file where its data is.

use super::cdb::{cut, op, Cdb};
use super::{check, LogicalUnit, Plan, Response, Sense};

/// Block descriptors one UNMAP may carry (Block Limits VPD, MAXIMUM UNMAP BLOCK
/// DESCRIPTOR COUNT).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// Bytes one UNMAP may deallocate in all (MAXIMUM UNMAP LBA COUNT, in blocks of the LU,
/// at most [`MAX_UNMAP_BLOCKS`]).
pub const MAX_UNMAP_BYTES: u64 = 4 << 30;

/// Bytes one WRITE SAME may cover (MAXIMUM WRITE SAME LENGTH, in blocks of the LU, at
/// most [`MAX_WRITE_SAME_BLOCKS`]).
pub const MAX_WRITE_SAME_BYTES: u64 = 4 << 30;

/// Descriptors GET LBA STATUS returns at most: the initiator asks again from where the
/// last one ended.
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Bytes of the UNMAP parameter list header and of one block descriptor (SBC-4 5.32.2).
const UNMAP_HEADER: usize = 8;
const UNMAP_DESCRIPTOR: usize = 16;

/// UNMAP parameter lists the server accepts (header + the most descriptors).
pub const MAX_UNMAP_PARAMETERS: u32 =
    (UNMAP_HEADER + UNMAP_DESCRIPTOR * MAX_UNMAP_DESCRIPTORS as usize) as u32;

/// Initiators (libiscsi's suite among them) take a MAXIMUM UNMAP LBA COUNT above 2^20
/// blocks for a bogus page.
const MAX_UNMAP_BLOCKS: u64 = 1 << 20;

/// Initiators take a MAXIMUM WRITE SAME LENGTH of 2^16 blocks or more to mean they may
/// also write that many blocks with one WRITE, which the transfer limit does not allow.
const MAX_WRITE_SAME_BLOCKS: u64 = u16::MAX as u64;

pub fn max_unmap_blocks(lu: &LogicalUnit) -> u32 {
    (MAX_UNMAP_BYTES / u64::from(lu.block_size())).min(MAX_UNMAP_BLOCKS) as u32
}

pub fn max_write_same_blocks(lu: &LogicalUnit) -> u64 {
    (MAX_WRITE_SAME_BYTES / u64::from(lu.block_size())).min(MAX_WRITE_SAME_BLOCKS)
}

/// The unmap granularity the file system gives (4 KiB blocks), in blocks of the LU: a
/// smaller range is zeroed in place rather than deallocated.
pub fn unmap_granularity(lu: &LogicalUnit) -> u32 {
    (4096 / lu.block_size()).max(1)
}

/// Whether the LU reports LBPRZ (a deallocated block reads as zeros, which is always
/// true of a hole). Not for LUs of more than 512-byte blocks: QEMU 7.2 (Debian 12),
/// seeing LBPRZ, checks the block status of reads of 32 KiB or more over a length that
/// is a multiple of 512 only, and its iSCSI driver then aborts on an assertion for
/// 4096-byte blocks. Without LBPRZ it reads the blocks, which read as zeros all the
/// same.
pub fn reports_lbprz(lu: &LogicalUnit) -> bool {
    lu.block_size() <= 512
}

fn in_range(lu: &LogicalUnit, lba: u64, blocks: u64) -> bool {
    lba.checked_add(blocks)
        .is_some_and(|end| end <= lu.num_blocks())
}

/// UNMAP (SBC-4 5.32): the parameter list comes as Data-Out; [`unmap_ranges`] reads it.
pub fn unmap(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    // ANCHOR (byte 1 bit 0): anchored blocks are not supported (ANC_SUP = 0).
    if cdb.byte(1) & 0x01 != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 0));
    }
    let len = u32::from(cdb.u16(7));
    // SBC-4 5.32.1: without logical block provisioning management (LBPU 0 in the
    // Logical Block Provisioning page, a fully provisioned LU) UNMAP is not supported.
    if lu.thick() {
        return check(Sense::invalid_opcode());
    }
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    // SBC-4 5.32.1: a PARAMETER LIST LENGTH of zero is not an error; nothing happens.
    if len == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    if len > MAX_UNMAP_PARAMETERS {
        return check(Sense::invalid_field_in_cdb(7));
    }
    Plan::Unmap { len }
}

/// The block ranges (LBA, blocks) of an UNMAP parameter list (SBC-4 5.32.2), checked:
/// every range on the medium, no more descriptors and blocks than the Block Limits page
/// allows. Descriptors of zero blocks are skipped.
pub fn unmap_ranges(lu: &LogicalUnit, data: &[u8]) -> Result<Vec<(u64, u32)>, Sense> {
    // SBC-4 5.32.1: a list shorter than its header is a PARAMETER LIST LENGTH ERROR.
    if data.len() < UNMAP_HEADER {
        return Err(Sense::parameter_list_length_error());
    }
    let be16 = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]) as usize;
    let data_len = be16(0);
    let desc_len = be16(2);
    // UNMAP DATA LENGTH counts the bytes after itself; BLOCK DESCRIPTOR DATA LENGTH the
    // descriptors. Either reaching past what was sent is an invalid field.
    if data_len + 2 > data.len() || data_len < UNMAP_HEADER - 2 {
        return Err(Sense::invalid_field_in_parameter_list(0, None));
    }
    if UNMAP_HEADER + desc_len > data.len() || desc_len % UNMAP_DESCRIPTOR != 0 {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let count = desc_len / UNMAP_DESCRIPTOR;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for i in 0..count {
        let at = UNMAP_HEADER + i * UNMAP_DESCRIPTOR;
        let d = &data[at..at + UNMAP_DESCRIPTOR];
        let lba = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
        let blocks = u32::from_be_bytes(d[8..12].try_into().expect("4 bytes"));
        if !in_range(lu, lba, u64::from(blocks)) {
            return Err(Sense::lba_out_of_range());
        }
        total += u64::from(blocks);
        if total > u64::from(max_unmap_blocks(lu)) {
            return Err(Sense::invalid_field_in_parameter_list(at as u16 + 8, None));
        }
        if blocks > 0 {
            ranges.push((lba, blocks));
        }
    }
    Ok(ranges)
}

/// WRITE SAME(10/16) (SBC-4 5.46, 5.47).
pub fn write_same(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let sixteen = cdb.opcode() == op::WRITE_SAME_16;
    let flags = cdb.byte(1);
    let (lba, blocks, len_at) = if sixteen {
        (cdb.u64(2), u64::from(cdb.u32(10)), 10)
    } else {
        (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)), 7)
    };
    // WRPROTECT without protection information.
    if flags >> 5 != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 7));
    }
    // ANCHOR: not supported (ANC_SUP = 0).
    if flags & 0x10 != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 4));
    }
    let unmap = flags & 0x08 != 0;
    // SBC-4 5.47: UNMAP where WRITE SAME cannot deallocate (LBPWS/LBPWS10 0: a fully
    // provisioned LU) is an invalid field.
    if unmap && lu.thick() {
        return check(Sense::invalid_field_in_cdb_bit(1, 3));
    }
    // NDOB (WRITE SAME(16) only): no Data-Out, the block is zeros.
    let ndob = sixteen && flags & 0x01 != 0;
    if lba >= lu.num_blocks() {
        return check(Sense::lba_out_of_range());
    }
    // WSNZ = 0 in the Block Limits page: zero blocks means every block from LBA to the
    // last one (SBC-4 5.46), within the MAXIMUM WRITE SAME LENGTH like any other count.
    let blocks = if blocks == 0 {
        lu.num_blocks() - lba
    } else {
        blocks
    };
    if !in_range(lu, lba, blocks) {
        return check(Sense::lba_out_of_range());
    }
    if blocks > max_write_same_blocks(lu) {
        return check(Sense::invalid_field_in_cdb(len_at));
    }
    if lu.write_protected() {
        return check(Sense::write_protected());
    }
    Plan::WriteSame {
        lba,
        blocks,
        unmap,
        ndob,
    }
}

/// GET LBA STATUS (SBC-4 5.8): where the status starts and how much may come back; the
/// server finds the status, [`lba_status_data`] formats it.
pub fn get_lba_status(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let lba = cdb.u64(2);
    let alloc = cdb.u32(10);
    if lba >= lu.num_blocks() {
        return check(Sense::lba_out_of_range());
    }
    Plan::LbaStatus { lba, alloc }
}

/// One run of blocks that are all mapped or all deallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaExtent {
    pub lba: u64,
    pub blocks: u64,
    pub mapped: bool,
}

/// GET LBA STATUS parameter data (SBC-4 5.8.2): a descriptor per extent (a long one is
/// split at u32 blocks), cut to the allocation length.
pub fn lba_status_data(extents: &[LbaExtent], alloc: u32) -> Response {
    let mut d = vec![0u8; 8];
    for e in extents.iter().take(MAX_LBA_STATUS_DESCRIPTORS) {
        let mut lba = e.lba;
        let mut left = e.blocks;
        while left > 0 {
            let n = left.min(u64::from(u32::MAX));
            d.extend_from_slice(&lba.to_be_bytes());
            d.extend_from_slice(&(n as u32).to_be_bytes());
            // PROVISIONING STATUS: 0h mapped, 1h deallocated.
            d.push(if e.mapped { 0 } else { 1 });
            d.extend_from_slice(&[0, 0, 0]);
            lba += n;
            left -= n;
        }
    }
    // PARAMETER DATA LENGTH: the bytes after itself.
    let len = u32::try_from(d.len() - 4).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Response::good(cut(d, alloc as usize))
}
