//! Block commands (SBC-4): READ CAPACITY, READ/WRITE/VERIFY in their 6/10/12/16-byte forms,
//! SYNCHRONIZE CACHE, and the medium commands a disk answers trivially.

use super::cdb::{cut, op, Cdb};
use super::{LogicalUnit, Plan, Response, Sense};

/// READ CAPACITY(10) (SBC-4 5.20).
pub fn read_capacity_10(cdb: Cdb, lu: &LogicalUnit) -> Response {
    // SBC-3 5.15.1: with PMI=0 the LOGICAL BLOCK ADDRESS field must be zero (both fields
    // are obsolete in SBC-4; with PMI=1 we report the last LBA as well).
    if cdb.byte(8) & 0x01 == 0 && cdb.u32(2) != 0 {
        return Response::check(Sense::invalid_field_in_cdb(2));
    }
    let last = lu.num_blocks().saturating_sub(1);
    // RETURNED LOGICAL BLOCK ADDRESS: FFFFFFFFh when the last LBA does not fit, telling the
    // initiator to use READ CAPACITY(16).
    let returned = u32::try_from(last).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&returned.to_be_bytes());
    d.extend_from_slice(&lu.block_size().to_be_bytes());
    Response::good(d)
}

/// READ CAPACITY(16) (SBC-4 5.21), 32 bytes of parameter data.
pub fn read_capacity_16(cdb: Cdb, lu: &LogicalUnit) -> Response {
    let alloc = usize::try_from(cdb.u32(10)).unwrap_or(usize::MAX);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.num_blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&lu.block_size().to_be_bytes());
    // Byte 12: P_TYPE, PROT_EN = 0 (no protection information). Byte 13: P_I_EXPONENT 0,
    // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0. Byte 14: LBPME 1 (volumes are thin:
    // UNMAP and WRITE SAME deallocate), LBPRZ (a deallocated block reads as zeros; see
    // `lbp::reports_lbprz`); LOWEST ALIGNED LBA 0.
    d[14] = if lu.thick() {
        // Fully provisioned: LBPME 0, LBPRZ 0 (SBC-4 4.7.2).
        0
    } else {
        0x80 | if super::lbp::reports_lbprz(lu) {
            0x40
        } else {
            0
        }
    };
    // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: the file system allocates (and
    // deallocates) 4 KiB blocks.
    d[13] = (4096 / lu.block_size()).max(1).trailing_zeros() as u8;
    Response::good(cut(d, alloc))
}

/// The fields of a READ/WRITE/VERIFY CDB that matter (SBC-4 5.13-5.16, 5.31-5.33, 5.39-5.42).
struct Transfer {
    lba: u64,
    blocks: u32,
    /// Byte 1: protect field (bits 7..5), DPO, FUA, BYTCHK.
    flags: u8,
    /// Where TRANSFER LENGTH starts, for the field pointer.
    len_at: u16,
}

fn decode(cdb: Cdb) -> Transfer {
    match cdb.opcode() {
        op::READ_6 | op::WRITE_6 => {
            // SBC-4 5.14 / 5.39: 21-bit LBA; TRANSFER LENGTH 0 means 256 blocks.
            let lba = u32::from_be_bytes([0, cdb.byte(1) & 0x1F, cdb.byte(2), cdb.byte(3)]);
            let blocks = match cdb.byte(4) {
                0 => 256,
                n => u32::from(n),
            };
            Transfer {
                lba: u64::from(lba),
                blocks,
                flags: 0,
                len_at: 4,
            }
        }
        op::READ_10 | op::WRITE_10 | op::VERIFY_10 | op::WRITE_AND_VERIFY_10 => Transfer {
            lba: u64::from(cdb.u32(2)),
            blocks: u32::from(cdb.u16(7)),
            flags: cdb.byte(1),
            len_at: 7,
        },
        op::READ_12 | op::WRITE_12 | op::VERIFY_12 | op::WRITE_AND_VERIFY_12 => Transfer {
            lba: u64::from(cdb.u32(2)),
            blocks: cdb.u32(6),
            flags: cdb.byte(1),
            len_at: 6,
        },
        // READ(16), WRITE(16), VERIFY(16).
        _ => Transfer {
            lba: cdb.u64(2),
            blocks: cdb.u32(10),
            flags: cdb.byte(1),
            len_at: 10,
        },
    }
}

/// SBC-4 4.5: every LBA of the command must exist. A zero-length command still names an
/// LBA, which must not lie beyond the last one.
fn in_range(lu: &LogicalUnit, lba: u64, blocks: u32) -> bool {
    let capacity = lu.num_blocks();
    match lba.checked_add(u64::from(blocks)) {
        Some(end) => end <= capacity && (blocks > 0 || lba < capacity),
        None => false,
    }
}

const FUA: u8 = 0x08;

/// READ(6/10/12/16) (SBC-4 5.13-5.16).
pub fn read(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let t = decode(cdb);
    // RDPROTECT != 0 without protection information: INVALID FIELD IN CDB (SBC-4 5.15, table 62).
    if t.flags >> 5 != 0 {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb_bit(1, 7)));
    }
    if t.blocks > lu.max_transfer_blocks() {
        // SBC-4 6.6.4: more than the MAXIMUM TRANSFER LENGTH is an invalid field.
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb(t.len_at)));
    }
    if !in_range(lu, t.lba, t.blocks) {
        return Plan::Respond(Response::check(Sense::lba_out_of_range()));
    }
    // SBC-4 5.15: a TRANSFER LENGTH of zero transfers nothing and is not an error.
    if t.blocks == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    // DPO (bit 4) is a cache hint we ignore; FUA on a read asks for the medium, not a cache.
    Plan::Read {
        lba: t.lba,
        blocks: t.blocks,
        fua: t.flags & FUA != 0,
    }
}

/// WRITE(6/10/12/16) (SBC-4 5.39-5.42).
pub fn write(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let t = decode(cdb);
    // WRPROTECT != 0 without protection information (SBC-4 5.40, table 107).
    if t.flags >> 5 != 0 {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb_bit(1, 7)));
    }
    if t.blocks > lu.max_transfer_blocks() {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb(t.len_at)));
    }
    if !in_range(lu, t.lba, t.blocks) {
        return Plan::Respond(Response::check(Sense::lba_out_of_range()));
    }
    let mode = lu.mode_state();
    // SBC-4 4.11: writes to a write protected LU (configured read-only, or SWP set in the
    // control mode page) end in DATA PROTECT, WRITE PROTECTED.
    if lu.read_only() || mode.swp {
        return Plan::Respond(Response::check(Sense::write_protected()));
    }
    if t.blocks == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    // With the write cache off (WCE=0) every write must reach the medium before GOOD.
    let fua = t.flags & FUA != 0 || !mode.wce;
    Plan::Write {
        lba: t.lba,
        blocks: t.blocks,
        fua,
    }
}

/// WRITE AND VERIFY(10/12/16) (SBC-4 5.43-5.45): a write whose data must be on the
/// medium, then checked there. The volume reads back exactly what it stored, so the
/// verification step holds by construction once the write is durable: the plan is a
/// write with FUA. BYTCHK 00b and 01b transfer every block; 10b is reserved and 11b
/// (one block written to every LBA) is not supported.
pub fn write_and_verify(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let t = decode(cdb);
    if (t.flags >> 1) & 0x03 >= 0b10 {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb_bit(1, 2)));
    }
    match write(cdb, lu) {
        Plan::Write { lba, blocks, .. } => Plan::Write {
            lba,
            blocks,
            fua: true,
        },
        other => other,
    }
}

/// VERIFY(10/12/16) (SBC-4 5.31-5.33).
pub fn verify(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let t = decode(cdb);
    // VRPROTECT != 0 without protection information (SBC-4 5.31, table 98).
    if t.flags >> 5 != 0 {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb_bit(1, 7)));
    }
    // BYTCHK (bits 2..1): 00b medium verification only, 01b compare with data-out;
    // 10b is reserved and 11b (one block compared against every block) is not supported.
    let bytchk = match (t.flags >> 1) & 0x03 {
        0b00 => false,
        0b01 => true,
        _ => return Plan::Respond(Response::check(Sense::invalid_field_in_cdb_bit(1, 2))),
    };
    // Only a compare moves data; a medium verification of any length is accepted.
    if bytchk && t.blocks > lu.max_transfer_blocks() {
        return Plan::Respond(Response::check(Sense::invalid_field_in_cdb(t.len_at)));
    }
    if !in_range(lu, t.lba, t.blocks) {
        return Plan::Respond(Response::check(Sense::lba_out_of_range()));
    }
    // SBC-4 5.31: a VERIFICATION LENGTH of zero verifies nothing and is not an error.
    if t.blocks == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    Plan::Verify {
        lba: t.lba,
        blocks: t.blocks,
        bytchk,
    }
}

/// SYNCHRONIZE CACHE(10/16) (SBC-4 5.26, 5.27). NUMBER OF LOGICAL BLOCKS zero means "to the
/// end of the medium"; we flush the whole volume either way. With IMMED (byte 1 bit 1)
/// GOOD goes back once the CDB is checked and the flush runs after it.
pub fn synchronize_cache(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let (lba, blocks) = if cdb.opcode() == op::SYNCHRONIZE_CACHE_10 {
        (u64::from(cdb.u32(2)), u32::from(cdb.u16(7)))
    } else {
        (cdb.u64(2), cdb.u32(10))
    };
    if !in_range(lu, lba, blocks) {
        return Plan::Respond(Response::check(Sense::lba_out_of_range()));
    }
    if cdb.byte(1) & IMMED != 0 {
        return Plan::SyncImmed;
    }
    Plan::Sync
}

/// IMMED in byte 1 of SYNCHRONIZE CACHE and PRE-FETCH.
const IMMED: u8 = 0x02;

/// PRE-FETCH(10/16) (SBC-4 5.11, 5.12). A PREFETCH LENGTH of zero means every block from
/// the LBA to the last one. The answer is GOOD in every case: the file's cache reads
/// ahead on its own time, so the blocks are never known to be cached when it goes back
/// (CONDITION MET would say they are). IMMED and GROUP NUMBER change nothing.
pub fn prefetch(cdb: Cdb, lu: &LogicalUnit) -> Plan {
    let (lba, blocks) = if cdb.opcode() == op::PRE_FETCH_10 {
        (u64::from(cdb.u32(2)), u64::from(cdb.u16(7)))
    } else {
        (cdb.u64(2), u64::from(cdb.u32(10)))
    };
    let capacity = lu.num_blocks();
    if lba >= capacity || lba.checked_add(blocks).is_none_or(|end| end > capacity) {
        return Plan::Respond(Response::check(Sense::lba_out_of_range()));
    }
    let blocks = if blocks == 0 { capacity - lba } else { blocks };
    Plan::Prefetch { lba, blocks }
}

/// START STOP UNIT (SBC-4 5.25). A power condition (byte 4, bits 7-4) other than
/// START_VALID leaves START and LOEJ alone: the volume has no power states to change,
/// so each is taken and the unit stays ready. With LOEJ, a removable LU's medium is
/// loaded (START=1) or ejected (START=0); either is refused while a nexus prevents
/// removal (MEDIUM REMOVAL PREVENTED). Without LOEJ, or on a fixed LU, nothing changes:
/// a file is always "spinning".
pub fn start_stop_unit(cdb: Cdb, lu: &LogicalUnit) -> Response {
    let b4 = cdb.byte(4);
    let power_condition = b4 >> 4;
    let loej = b4 & 0x02 != 0;
    let start = b4 & 0x01 != 0;
    if power_condition != 0 || !loej || !lu.removable() {
        return Response::good(Vec::new());
    }
    match lu.state().load_eject(start) {
        Ok(()) => Response::good(Vec::new()),
        Err(sense) => Response::check(sense),
    }
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.15): PREVENT 01b prevents removal through this
/// nexus until it allows it again, a reset, or its loss; 00b allows. 1xb (medium changer
/// prevention) is not ours: INVALID FIELD IN CDB.
pub fn prevent_allow_medium_removal(cdb: Cdb, lu: &LogicalUnit) -> Response {
    let prevent = cdb.byte(4) & 0x03;
    if prevent & 0x02 != 0 {
        return Response::check(Sense::invalid_field_in_cdb_bit(4, 1));
    }
    lu.state()
        .prevent(lu.nexus(), lu.session(), prevent == 0x01);
    Response::good(Vec::new())
}

/// Commands a removable LU refuses with its medium ejected (NOT READY, MEDIUM NOT
/// PRESENT): every command that reads, writes or sizes the medium, including the ones
/// other parts of the command set add (PRE-FETCH, COMPARE AND WRITE, ORWRITE, WRITE
/// ATOMIC).
pub fn needs_medium(opcode: u8) -> bool {
    matches!(
        opcode,
        op::TEST_UNIT_READY
            | op::READ_6
            | op::READ_10
            | op::READ_12
            | op::READ_16
            | op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
            | op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::SYNCHRONIZE_CACHE_10
            | op::SYNCHRONIZE_CACHE_16
            | op::READ_CAPACITY_10
            | op::SERVICE_ACTION_IN_16
            | op::UNMAP
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            // PRE-FETCH(10), PRE-FETCH(16), COMPARE AND WRITE, ORWRITE(16), WRITE ATOMIC(16)
            | 0x34
            | 0x90
            | 0x89
            | 0x8B
            | 0x9C
    )
}

/// READ DEFECT DATA(10) and (12) (SBC-4 5.20, 5.21): a file has no defects. The header
/// says which lists were asked for (PLISTV, GLISTV) and in which format, and that they
/// are empty.
pub fn read_defect_data(cdb: Cdb) -> Response {
    let twelve = cdb.opcode() == op::READ_DEFECT_DATA_12;
    let flags = if twelve { cdb.byte(1) } else { cdb.byte(2) } & 0x1F;
    let alloc = if twelve {
        usize::try_from(cdb.u32(6)).unwrap_or(usize::MAX)
    } else {
        usize::from(cdb.u16(7))
    };
    // Header: reserved, PLISTV GLISTV and DEFECT LIST FORMAT (the request's bits, same
    // places), then the DEFECT LIST LENGTH: 2 bytes in (10), a 2-byte GENERATION CODE and
    // 4 bytes in (12).
    let data = if twelve {
        vec![0, flags, 0, 0, 0, 0, 0, 0]
    } else {
        vec![0, flags, 0, 0]
    };
    Response::good(cut(data, alloc))
}
