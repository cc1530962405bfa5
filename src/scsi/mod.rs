//! SCSI: CDB decoding and the SPC/SBC command set. Pure: it says what to do with the
//! volume, it does not do it.
//!
//! CONTRACT (the server codes against it):
//! - `LogicalUnit::new(LuConfig)`; holds mode page state (WCE, etc.) behind a lock.
//! - `UnitAttentions`: pending UA conditions of one I_T_L nexus; `UnitAttentions::power_on()`
//!   starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED; `push(Sense)`.
//! - `plan(cdb, ctx) -> Plan`: decode a CDB for a LUN that may not exist.
//! - `Plan::{Respond, Read, Write, Verify, Sync, ModeSelect}`; `Response` carries status,
//!   data (already cut to the CDB's allocation length) and sense.
//! - `LogicalUnit::mode_select(ten, data) -> Response` applies parameter data.
//! - `Sense` constructors for what the server discovers itself (medium error, miscompare,
//!   invalid field, ...), `Sense::to_fixed()` gives the 18-byte fixed format.
//!
//! What the server owes this layer (it cannot see sessions, files or the wire):
//! - Unit attentions: a new I_T nexus starts with `UnitAttentions::power_on()`. Push
//!   `Sense::capacity_changed()` to every nexus of an LU after `LogicalUnit::set_num_blocks`,
//!   `Sense::reported_luns_changed()` to every nexus of a target whose LUN map changed, and
//!   `Sense::mode_parameters_changed()` to the *other* nexuses of an LU when
//!   `LogicalUnit::apply_mode_select` reports `changed` (SPC-5 7.5.1).
//! - Sense goes out in fixed format (`to_fixed`): the control mode page reports D_SENSE=0.
//! - When EDTL is smaller than the CDB asks for, `Plan::clamp_to_edtl`, and compute the
//!   residual against `Plan::transfer_bytes` of the unclamped plan (RFC 7143 11.4.5.1).
//! - A `Respond` plan for a command that carries Data-Out (a refused WRITE, VERIFY with
//!   BYTCHK=1, MODE SELECT) still has unsolicited data to drain.
//! - READ/WRITE/VERIFY(BYTCHK=1) transfers are at most `MAX_TRANSFER_BYTES` (Block Limits VPD
//!   page); the iSCSI layer must accept that much per command (over several bursts).
//! - `Plan::Write` has `fua` set also when WCE=0: the data must be durable before GOOD.
//! - I/O failures become sense with `Sense::from_io_error`; a VERIFY compare difference is
//!   `Sense::miscompare(offset)`.
//! - Every LU of a session is built with `LogicalUnit::shared` (the LU's one `LuState`, the
//!   session's nexus). Before each command, the unit attentions other nexuses posted for
//!   this one (`LuState::take_attentions`, when `LuState::posted` moved) go into its queue;
//!   LUN and target resets call `LuState::reset`, a session's end `LuState::nexus_lost`.
//! - `Plan::PersistentReserveOut`: run `LuState::prout` holding `LuState::saving`, save
//!   `LuState::pr` when it changed (APTPL set; else forget a saved one), then answer.
//!
//! Layout: `cdb` (opcodes, field readers), `sense` (sense data and its formats), `lu` (the
//! logical unit, unit attentions), `state` (what all nexuses of an LU share: reservations,
//! medium, unit attentions for other nexuses), `reservations` (persistent reservations
//! and RESERVE/RELEASE as a state machine), `spc` (INQUIRY, VPD, REPORT LUNS, REQUEST SENSE), `mode`
//! (MODE SENSE/SELECT), `sbc` (capacity, read, write, verify, sync), `opcodes` (the command
//! table and REPORT SUPPORTED OPERATION CODES), `lun` (the 8-byte LUN format).

pub mod alua;
mod cdb;
mod lbp;
mod lu;
mod lun;
mod mode;
mod opcodes;
pub mod reservations;
mod rmw;
mod sanitize;
mod sbc;
mod sense;
mod spc;
mod state;
mod xcopy;

#[cfg(test)]
mod tests;

pub use cdb::op;
pub use lbp::{lba_status_data, unmap_ranges, LbaExtent};
pub use lu::{LogicalUnit, LuConfig, ModeSelectOutcome, UnitAttentions, MAX_TRANSFER_BYTES};
pub use lun::{decode_lun, encode_lun, MAX_LUN};
pub use rmw::{first_difference, or_into};
pub use sanitize::{overwrite_block, SanitizeKind};
pub use sense::{key, key_name, FieldPointer, Sense, FIXED_SENSE_LEN};
pub use spc::{naa_designator, serial_number, PRODUCT_ID, VENDOR_ID};
pub use state::{LuState, Presence, SessionRef};
pub use xcopy::{
    copy_destination_protected, copy_segment_out_of_range, copy_status_data,
    copy_target_not_reachable, incorrect_copy_target_type, parse_copy_list, CopyList, CopyOutcome,
    CopyTarget, Segment as CopySegment,
};

use cdb::{cdb_len, sa, Cdb};

/// SAM status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub data: Vec<u8>,
    pub sense: Option<Sense>,
}

/// What the server must do for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing touches the volume: send this.
    Respond(Response),
    /// Read `blocks` blocks at `lba` and send them as Data-In, status GOOD.
    Read { lba: u64, blocks: u32, fua: bool },
    /// Receive `blocks * block_size` bytes of Data-Out and write them at `lba`. `fua` is also
    /// set when the LU's write cache is disabled (WCE=0): the data must be durable before GOOD.
    Write { lba: u64, blocks: u32, fua: bool },
    /// Range already checked. With `bytchk`, receive `blocks * block_size` bytes and compare
    /// with the medium (MISCOMPARE on difference); without, answer GOOD after reading.
    Verify { lba: u64, blocks: u32, bytchk: bool },
    /// Flush the volume (SYNCHRONIZE CACHE), range already checked.
    Sync,
    /// Receive `len` bytes of parameter data, then call `LogicalUnit::mode_select`.
    ModeSelect { ten: bool, len: u32 },
    /// Receive the `len`-byte UNMAP parameter list, read it with [`unmap_ranges`], then
    /// deallocate those ranges (through the write path: tracked like a write).
    Unmap { len: u32 },
    /// Receive one block (none with `ndob`: zeros) and write it to each of `blocks`
    /// blocks from `lba`, range already checked. With `unmap`, deallocate the range
    /// instead (it reads back as zeros: LBPRZ).
    WriteSame {
        lba: u64,
        blocks: u64,
        unmap: bool,
        ndob: bool,
    },
    /// Find which blocks from `lba` are mapped and answer with [`lba_status_data`].
    LbaStatus { lba: u64, alloc: u32 },
    /// Receive the `len`-byte PERSISTENT RESERVE OUT parameter list, then call
    /// [`LuState::prout`] with service action `sa` and CDB byte 2 `scope_type`; save the
    /// state when it changed (APTPL), before answering.
    PersistentReserveOut { sa: u8, scope_type: u8, len: u32 },
    /// Receive the `len`-byte EXTENDED COPY (LID1) parameter list, read it with
    /// [`parse_copy_list`], resolve its LUs and copy (through the write path).
    ExtendedCopy { len: u32 },
    /// Answer RECEIVE COPY RESULTS (COPY STATUS) with [`copy_status_data`] for the
    /// session's finished copy `list_id`.
    CopyStatus { list_id: u8, alloc: u32 },
    /// Answer REPORT TARGET PORT GROUPS with [`alua::target_port_groups_data`] for the
    /// node's port groups and their states.
    ReportTargetPortGroups { extended: bool, alloc: u32 },
    /// COMPARE AND WRITE: receive `2 * blocks` blocks; holding the range exclusively,
    /// compare the first half with the medium (MISCOMPARE with [`first_difference`] in
    /// INFORMATION on a difference, nothing written) and write the second half.
    CompareAndWrite { lba: u64, blocks: u32, fua: bool },
    /// ORWRITE: receive `blocks` blocks; holding the range exclusively, write each block
    /// as its old content OR the data ([`or_into`]).
    OrWrite { lba: u64, blocks: u32, fua: bool },
    /// WRITE ATOMIC: receive `blocks` blocks and write them holding the range
    /// exclusively, so no other command sees part of them.
    WriteAtomic { lba: u64, blocks: u32, fua: bool },
    /// SYNCHRONIZE CACHE with IMMED: answer GOOD now, flush the volume after.
    SyncImmed,
    /// PRE-FETCH: ask the file's cache to read `blocks` blocks from `lba` ahead (range
    /// already checked), then answer GOOD (the blocks are not known to be cached yet:
    /// not CONDITION MET).
    Prefetch { lba: u64, blocks: u64 },
    /// SANITIZE the whole LU (for an OVERWRITE, after receiving its parameter list).
    /// With `immed`, GOOD goes back once it has started; either way, until it ends the
    /// LU answers every command but INQUIRY, REPORT LUNS and REQUEST SENSE with
    /// [`Sense::sanitize_in_progress`], from every session.
    Sanitize { kind: SanitizeKind, immed: bool },
}

/// What a CDB is decoded against.
pub struct Context<'a> {
    /// The addressed LU, None if the LUN is not mapped.
    pub lu: Option<&'a LogicalUnit>,
    /// Every LUN of the target, for REPORT LUNS.
    pub luns: &'a [u64],
    /// Pending unit attentions of this I_T_L nexus (None if the LUN is not mapped).
    pub ua: Option<&'a mut UnitAttentions>,
}

fn check(sense: Sense) -> Plan {
    Plan::Respond(Response::check(sense))
}

/// Decode one CDB. Never panics, whatever the bytes.
///
/// Order of checks: an empty CDB is an invalid opcode; a LUN that is not mapped answers only
/// INQUIRY, REPORT LUNS and REQUEST SENSE (SPC-5 4.6.1, table 42); a pending unit attention
/// ends any other command (SAM-5 5.14); then the opcode, CDB length and CONTROL byte; then
/// the command's own fields.
pub fn plan(cdb: &[u8], ctx: Context<'_>) -> Plan {
    let Context { lu, luns, ua } = ctx;
    let Some(&opcode) = cdb.first() else {
        return check(Sense::invalid_opcode());
    };
    // Commands every LUN answers, mapped or not, and that never report a unit attention
    // (SAM-5 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE).
    let ua_exempt = matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE);

    if lu.is_none() && !ua_exempt {
        // SPC-5 4.6.1: an incorrect logical unit: LOGICAL UNIT NOT SUPPORTED.
        return check(Sense::lu_not_supported());
    }
    let mut ua = ua;
    if !ua_exempt {
        // SAM-5 5.14: one unit attention per command, cleared as it is reported.
        if let Some(sense) = ua.as_deref_mut().and_then(|u| u.pop()) {
            return check(sense);
        }
    }

    if !opcodes::is_known(opcode) {
        return check(Sense::invalid_opcode());
    }
    let Some(len) = cdb_len(opcode) else {
        return check(Sense::invalid_opcode());
    };
    if cdb.len() < len {
        return check(Sense::invalid_field_in_cdb(0));
    }
    let cdb = Cdb(&cdb[..len]);
    // SAM-5 5.2: CONTROL byte, NACA (bit 2): we do not support ACA.
    if cdb.byte(len - 1) & 0x04 != 0 {
        return check(Sense::invalid_field_in_cdb_bit((len - 1) as u16, 2));
    }

    let Some(lu) = lu else {
        // Only the exempt commands get here without an LU.
        return match opcode {
            op::INQUIRY => Plan::Respond(spc::inquiry(cdb, None)),
            op::REPORT_LUNS => Plan::Respond(spc::report_luns(cdb, luns)),
            _ => Plan::Respond(spc::request_sense(cdb, false, None)),
        };
    };

    // SPC-5 5.14.1 / SPC-2 5.5.1: a reservation another nexus holds.
    if lu.state().conflicts(lu.nexus(), cdb.0) {
        return Plan::Respond(Response::conflict());
    }
    // SBC-4 5.25: with its medium ejected, a removable LU answers NOT READY,
    // MEDIUM NOT PRESENT to every command that needs the medium.
    if lu.removable() && sbc::needs_medium(opcode) && !lu.state().loaded() {
        return check(Sense::medium_not_present());
    }

    match opcode {
        op::TEST_UNIT_READY => Plan::Respond(Response::good(Vec::new())),
        op::REQUEST_SENSE => Plan::Respond(spc::request_sense(cdb, true, ua)),
        op::INQUIRY => Plan::Respond(spc::inquiry(cdb, Some(lu))),
        op::REPORT_LUNS => {
            // SPC-5 6.33: REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED for this nexus.
            let response = spc::report_luns(cdb, luns);
            if response.status == Status::Good {
                let rlc = Sense::reported_luns_changed();
                if let Some(u) = ua {
                    u.remove(rlc.asc, rlc.ascq);
                }
            }
            Plan::Respond(response)
        }
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => sbc::read(cdb, lu),
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => sbc::write(cdb, lu),
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            sbc::write_and_verify(cdb, lu)
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => sbc::verify(cdb, lu),
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => sbc::synchronize_cache(cdb, lu),
        op::READ_CAPACITY_10 => Plan::Respond(sbc::read_capacity_10(cdb, lu)),
        op::SERVICE_ACTION_IN_16 => match cdb.service_action() {
            sa::READ_CAPACITY_16 => Plan::Respond(sbc::read_capacity_16(cdb, lu)),
            sa::GET_LBA_STATUS => lbp::get_lba_status(cdb, lu),
            // SPC-5 4.2.5.2: an unsupported service action is an invalid field.
            _ => check(Sense::invalid_field_in_cdb_bit(1, 4)),
        },
        op::MAINTENANCE_IN => match cdb.service_action() {
            sa::REPORT_SUPPORTED_OPCODES => {
                Plan::Respond(opcodes::report_supported_opcodes(cdb, lu))
            }
            sa::REPORT_SUPPORTED_TMFS => Plan::Respond(spc::report_supported_tmfs(cdb)),
            sa::REPORT_TARGET_PORT_GROUPS => alua::report_target_port_groups(cdb),

            _ => check(Sense::invalid_field_in_cdb_bit(1, 4)),
        },
        op::PERSISTENT_RESERVE_IN => Plan::Respond(lu.state().prin(cdb)),
        op::PERSISTENT_RESERVE_OUT => match reservations::check_prout_cdb(cdb) {
            Ok(len) => Plan::PersistentReserveOut {
                sa: cdb.service_action(),
                scope_type: cdb.byte(2),
                len,
            },
            Err(sense) => check(sense),
        },
        op::RESERVE_6 | op::RESERVE_10 => Plan::Respond(spc::reserve(cdb, lu)),
        op::RELEASE_6 | op::RELEASE_10 => Plan::Respond(spc::release(cdb, lu)),
        op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
            Plan::Respond(sbc::read_defect_data(cdb))
        }
        op::MODE_SENSE_6 => Plan::Respond(mode::mode_sense(cdb, lu, false)),
        op::MODE_SENSE_10 => Plan::Respond(mode::mode_sense(cdb, lu, true)),
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => mode_select(cdb),
        op::UNMAP => lbp::unmap(cdb, lu),
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => lbp::write_same(cdb, lu),
        op::START_STOP_UNIT => Plan::Respond(sbc::start_stop_unit(cdb, lu)),
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
            Plan::Respond(sbc::prevent_allow_medium_removal(cdb, lu))
        }
        op::EXTENDED_COPY => xcopy::extended_copy(cdb),
        op::RECEIVE_COPY_RESULTS => xcopy::receive_copy_results(cdb),
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => sbc::prefetch(cdb, lu),
        op::SANITIZE => sanitize::sanitize(cdb, lu),
        op::COMPARE_AND_WRITE => rmw::compare_and_write(cdb, lu),
        op::ORWRITE_16 => rmw::orwrite(cdb, lu),
        op::WRITE_ATOMIC_16 => rmw::write_atomic(cdb, lu),
        _ => check(Sense::invalid_opcode()),
    }
}

/// MODE SELECT(6) / (10) (SPC-5 6.11, 6.12): decode the CDB; the parameter list comes later.
fn mode_select(cdb: Cdb) -> Plan {
    let ten = cdb.opcode() == op::MODE_SELECT_10;
    // SP=1 asks to save the pages: we cannot (SPC-5 6.11: INVALID FIELD IN CDB).
    if cdb.byte(1) & 0x01 != 0 {
        return check(Sense::invalid_field_in_cdb_bit(1, 0));
    }
    // PF=0 (vendor specific page format) is taken as the standard format.
    let len = if ten {
        u32::from(cdb.u16(7))
    } else {
        u32::from(cdb.byte(4))
    };
    // A PARAMETER LIST LENGTH of zero transfers nothing and is not an error.
    if len == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    Plan::ModeSelect { ten, len }
}

impl Plan {
    /// The command changes blocks of the LU (a fenced volume refuses it).
    pub fn changes_blocks(&self) -> bool {
        matches!(
            self,
            Plan::Write { .. }
                | Plan::Unmap { .. }
                | Plan::WriteSame { .. }
                | Plan::ExtendedCopy { .. }
                | Plan::CompareAndWrite { .. }
                | Plan::OrWrite { .. }
                | Plan::WriteAtomic { .. }
                | Plan::Sanitize { .. }
        )
    }

    /// Bytes the CDB asks to move (Data-In for reads and responses, Data-Out for writes,
    /// compares and MODE SELECT), for the iSCSI layer's residual count (RFC 7143 11.4.5).
    pub fn transfer_bytes(&self, block_size: u32) -> u64 {
        let bs = u64::from(block_size);
        match self {
            Plan::Respond(r) => r.data.len() as u64,
            Plan::Read { blocks, .. } | Plan::Write { blocks, .. } => u64::from(*blocks) * bs,
            Plan::Verify {
                blocks,
                bytchk: true,
                ..
            } => u64::from(*blocks) * bs,
            Plan::Verify { bytchk: false, .. }
            | Plan::Sync
            | Plan::SyncImmed
            | Plan::Prefetch { .. } => 0,
            Plan::Sanitize {
                kind: SanitizeKind::Overwrite { len },
                ..
            } => u64::from(*len),
            Plan::Sanitize { .. } => 0,
            Plan::ModeSelect { len, .. }
            | Plan::Unmap { len }
            | Plan::PersistentReserveOut { len, .. } => u64::from(*len),
            Plan::WriteSame { ndob: true, .. } => 0,
            Plan::WriteSame { ndob: false, .. } => bs,
            Plan::LbaStatus { alloc, .. }
            | Plan::CopyStatus { alloc, .. }
            | Plan::ReportTargetPortGroups { alloc, .. } => u64::from(*alloc),
            Plan::ExtendedCopy { len } => u64::from(*len),
            Plan::CompareAndWrite { blocks, .. } => 2 * u64::from(*blocks) * bs,
            Plan::OrWrite { blocks, .. } | Plan::WriteAtomic { blocks, .. } => {
                u64::from(*blocks) * bs
            }
        }
    }

    /// Limit the transfer to the iSCSI EXPECTED DATA TRANSFER LENGTH when the initiator
    /// expects less than the CDB asks for (RFC 7143 11.4.5.1: the target moves at most EDTL
    /// bytes and reports the overflow as a residual). A write, compare or MODE SELECT uses only
    /// the whole blocks (bytes) that EDTL covers, and nothing at all becomes GOOD without data;
    /// a read fetches enough blocks to fill EDTL and the server sends only EDTL bytes of them.
    /// libiscsi's iSCSIResiduals suite checks exactly this. The server still reports the
    /// residual against `transfer_bytes` of the plan before clamping.
    pub fn clamp_to_edtl(self, edtl: u32, block_size: u32) -> Plan {
        let bs = block_size.max(1);
        let nothing = || Plan::Respond(Response::good(Vec::new()));
        match self {
            Plan::Read { lba, blocks, fua } => match blocks.min(edtl.div_ceil(bs)) {
                0 => nothing(),
                blocks => Plan::Read { lba, blocks, fua },
            },
            Plan::Write { lba, blocks, fua } => match blocks.min(edtl / bs) {
                0 => nothing(),
                blocks => Plan::Write { lba, blocks, fua },
            },
            Plan::Verify {
                lba,
                blocks,
                bytchk: true,
            } => match blocks.min(edtl / bs) {
                0 => nothing(),
                blocks => Plan::Verify {
                    lba,
                    blocks,
                    bytchk: true,
                },
            },
            Plan::ModeSelect { ten, len } => match len.min(edtl) {
                0 => nothing(),
                len => Plan::ModeSelect { ten, len },
            },
            Plan::Unmap { len } => match len.min(edtl) {
                0 => nothing(),
                len => Plan::Unmap { len },
            },
            // A parameter list cut short is refused whole (PARAMETER LIST LENGTH ERROR)
            // once it has come.
            Plan::PersistentReserveOut {
                sa,
                scope_type,
                len,
            } => match len.min(edtl) {
                0 => nothing(),
                len => Plan::PersistentReserveOut {
                    sa,
                    scope_type,
                    len,
                },
            },
            Plan::ExtendedCopy { len } => match len.min(edtl) {
                0 => nothing(),
                len => Plan::ExtendedCopy { len },
            },
            other => other,
        }
    }
}

impl Response {
    pub fn good(data: Vec<u8>) -> Response {
        Response {
            status: Status::Good,
            data,
            sense: None,
        }
    }
    pub fn check(sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            data: Vec::new(),
            sense: Some(sense),
        }
    }

    /// RESERVATION CONFLICT: a status of its own, without sense data (SAM-5 5.3.1).
    pub fn conflict() -> Response {
        Response {
            status: Status::ReservationConflict,
            data: Vec::new(),
            sense: None,
        }
    }
}
