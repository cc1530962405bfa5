//! The table of supported commands, with their CDB usage data, and REPORT SUPPORTED
//! OPERATION CODES (SPC-5 6.36) built from it. `plan` also uses the table to tell an unknown
//! opcode from a known one.

use super::cdb::{cut, op, sa, Cdb};
use super::{LogicalUnit, Response, Sense};

pub struct CommandInfo {
    pub opcode: u8,
    pub service_action: Option<u8>,
    /// CDB USAGE DATA (SPC-5 6.36.3): byte 0 the opcode, then a one for every bit the device
    /// server looks at (the service action value itself where there is one). The CONTROL byte
    /// reads 04h: NACA is checked (and refused).
    pub usage: &'static [u8],
}

const fn cmd(opcode: u8, service_action: Option<u8>, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action,
        usage,
    }
}

/// Byte 1 of READ/WRITE(10/12/16): RDPROTECT/WRPROTECT (refused when non-zero), DPO, FUA.
const RW1: u8 = 0xF8;
/// Byte 1 of VERIFY(10/12/16): VRPROTECT (refused when non-zero), DPO, BYTCHK.
const V1: u8 = 0xF6;

/// Byte 1 of WRITE AND VERIFY(10/12/16): WRPROTECT (refused when non-zero), DPO, BYTCHK.
const WV1: u8 = 0xF6;

#[rustfmt::skip]
pub static COMMANDS: &[CommandInfo] = &[
    cmd(op::TEST_UNIT_READY, None, &[0x00, 0, 0, 0, 0, 0x04]),
    cmd(op::REQUEST_SENSE, None, &[0x03, 0x01, 0, 0, 0xFF, 0x04]),
    cmd(op::READ_6, None, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::WRITE_6, None, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::INQUIRY, None, &[0x12, 0x03, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::MODE_SELECT_6, None, &[0x15, 0x11, 0, 0, 0xFF, 0x04]),
    cmd(op::RESERVE_6, None, &[0x16, 0, 0, 0, 0, 0x04]),
    cmd(op::RELEASE_6, None, &[0x17, 0, 0, 0, 0, 0x04]),
    cmd(op::MODE_SENSE_6, None, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::START_STOP_UNIT, None, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0x04]),
    cmd(op::PREVENT_ALLOW_MEDIUM_REMOVAL, None, &[0x1E, 0, 0, 0, 0x03, 0x04]),
    cmd(op::SANITIZE, Some(0x01), &[0x48, 0xA1, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::SANITIZE, Some(0x02), &[0x48, 0xA2, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::SANITIZE, Some(0x03), &[0x48, 0xA3, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::SANITIZE, Some(0x1F), &[0x48, 0xBF, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::READ_CAPACITY_10, None, &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x04]),
    cmd(op::READ_10, None, &[0x28, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::WRITE_10, None, &[0x2A, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::WRITE_AND_VERIFY_10, None, &[0x2E, WV1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::VERIFY_10, None, &[0x2F, V1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::READ_DEFECT_DATA_10, None, &[0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PRE_FETCH_10, None, &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x04]),
    cmd(op::SYNCHRONIZE_CACHE_10, None, &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::WRITE_SAME_10, None, &[0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::UNMAP, None, &[0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::MODE_SELECT_10, None, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::RESERVE_10, None, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    cmd(op::RELEASE_10, None, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    cmd(op::MODE_SENSE_10, None, &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_IN, Some(0x00), &[0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_IN, Some(0x01), &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_IN, Some(0x02), &[0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_IN, Some(0x03), &[0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x00), &[0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x01), &[0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x02), &[0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x03), &[0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x04), &[0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x05), &[0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x06), &[0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::PERSISTENT_RESERVE_OUT, Some(0x07), &[0x5F, 0x07, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(op::EXTENDED_COPY, Some(0x00), &[0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::RECEIVE_COPY_RESULTS, Some(0x00), &[0x84, 0x00, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::RECEIVE_COPY_RESULTS, Some(0x03), &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::READ_16, None, &[0x88, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_16, None, &[0x8A, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::COMPARE_AND_WRITE, None, &[0x89, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0x04]),
    cmd(op::ORWRITE_16, None, &[0x8B, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_AND_VERIFY_16, None, &[0x8E, WV1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::VERIFY_16, None, &[0x8F, V1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::PRE_FETCH_16, None, &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x04]),
    cmd(op::SYNCHRONIZE_CACHE_16, None, &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_SAME_16, None, &[0x93, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::SERVICE_ACTION_IN_16, Some(sa::GET_LBA_STATUS), &[0x9E, sa::GET_LBA_STATUS, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::SERVICE_ACTION_IN_16, Some(sa::READ_CAPACITY_16), &[0x9E, sa::READ_CAPACITY_16, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_ATOMIC_16, None, &[0x9C, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::REPORT_LUNS, None, &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::MAINTENANCE_IN, Some(sa::REPORT_TARGET_PORT_GROUPS), &[0xA3, sa::REPORT_TARGET_PORT_GROUPS | 0xE0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::MAINTENANCE_IN, Some(sa::REPORT_SUPPORTED_OPCODES), &[0xA3, sa::REPORT_SUPPORTED_OPCODES, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::MAINTENANCE_IN, Some(sa::REPORT_SUPPORTED_TMFS), &[0xA3, sa::REPORT_SUPPORTED_TMFS, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::READ_12, None, &[0xA8, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_12, None, &[0xAA, RW1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::WRITE_AND_VERIFY_12, None, &[0xAE, WV1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::VERIFY_12, None, &[0xAF, V1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
    cmd(op::READ_DEFECT_DATA_12, None, &[0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x04]),
];

/// Is this opcode one we implement (for some service action)?
pub fn is_known(opcode: u8) -> bool {
    COMMANDS.iter().any(|c| c.opcode == opcode)
}

fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

fn lookup(
    opcode: u8,
    service_action: Option<u16>,
    lu: &LogicalUnit,
) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .filter(|c| offered(c, lu))
        .find(|c| c.opcode == opcode && c.service_action.map(u16::from) == service_action)
}

/// Whether this LU offers the command: SANITIZE only where it is allowed.
fn offered(c: &CommandInfo, lu: &LogicalUnit) -> bool {
    c.opcode != op::SANITIZE || lu.sanitize_allowed()
}

/// Command timeouts descriptor (SPC-5 6.36.4): zero timeouts mean "not specified".
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES (SPC-5 6.36).
pub fn report_supported_opcodes(cdb: Cdb, lu: &LogicalUnit) -> Response {
    let rctd = cdb.byte(2) & 0x80 != 0;
    let options = cdb.byte(2) & 0x07;
    let req_op = cdb.byte(3);
    let req_sa = cdb.u16(4);
    let alloc = usize::try_from(cdb.u32(6)).unwrap_or(usize::MAX);

    let data = match options {
        // 000b: all commands (SPC-5 6.36.2, table 248).
        0b000 => all_commands(rctd, lu),
        // 001b: one command without service action; refused if it has service actions.
        0b001 if has_service_actions(req_op) => {
            return Response::check(Sense::invalid_field_in_cdb_bit(2, 2))
        }
        0b001 => one_command(lookup(req_op, None, lu), rctd),
        // 010b: one command with service action; refused if it has none.
        0b010 if is_known(req_op) && !has_service_actions(req_op) => {
            return Response::check(Sense::invalid_field_in_cdb_bit(2, 2))
        }
        0b010 => one_command(lookup(req_op, Some(req_sa), lu), rctd),
        // 011b: one command, with the service action if it has them.
        0b011 if has_service_actions(req_op) => one_command(lookup(req_op, Some(req_sa), lu), rctd),
        0b011 => one_command(lookup(req_op, None, lu), rctd),
        _ => return Response::check(Sense::invalid_field_in_cdb_bit(2, 2)),
    };
    Response::good(cut(data, alloc))
}

fn all_commands(rctd: bool, lu: &LogicalUnit) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    for c in COMMANDS.iter().filter(|c| offered(c, lu)) {
        // Command descriptor (SPC-5 6.36.3, table 250).
        out.push(c.opcode);
        out.push(0);
        out.extend_from_slice(&u16::from(c.service_action.unwrap_or(0)).to_be_bytes());
        out.push(0);
        let mut flags = 0;
        if rctd {
            flags |= 0x02; // CTDP
        }
        if c.service_action.is_some() {
            flags |= 0x01; // SERVACTV
        }
        out.push(flags);
        out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
        if rctd {
            out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
        }
    }
    // COMMAND DATA LENGTH: a few hundred bytes, fits.
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn one_command(c: Option<&CommandInfo>, rctd: bool) -> Vec<u8> {
    // One_command parameter data (SPC-5 6.36.3, table 251). SUPPORT 011b: supported as in
    // the standard; 001b: not supported (and no usage data follows).
    let Some(c) = c else {
        return vec![0, 0x01, 0, 0];
    };
    let mut out = vec![0, if rctd { 0x80 | 0x03 } else { 0x03 }];
    out.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
    out.extend_from_slice(c.usage);
    if rctd {
        out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
    }
    out
}
