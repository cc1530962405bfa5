//! SCSI: CDB decoding and the SPC/SBC command set. Pure: it says what to do with the
//! volume, it does not do it.
//!
//! CONTRACT (the server codes against it):
//! - `LogicalUnit::new(LuConfig)`; holds mode page state (WCE, etc.) behind a lock.
//! - `UnitAttentions`: pending UA conditions of one I_T_L nexus; `UnitAttentions::power_on()`
//!   starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED; `push(Sense)`.
//! - `plan(cdb, lu, ctx) -> Plan`: decode a CDB for a LUN that may not exist.
//! - `Plan::{Respond, Read, Write, Verify, Sync, ModeSelect}`; `Response` carries status,
//!   data (already cut to the CDB's allocation length) and sense.
//! - `LogicalUnit::mode_select(ten, data) -> Response` applies parameter data.
//! - `Sense` constructors for what the server discovers itself (medium error, miscompare,
//!   invalid field, ...), `Sense::to_fixed()` gives the 18-byte fixed format.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
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
    /// Receive `blocks * block_size` bytes of Data-Out and write them at `lba`.
    Write { lba: u64, blocks: u32, fua: bool },
    /// Range already checked. With `bytchk`, receive `blocks * block_size` bytes and compare
    /// with the medium (MISCOMPARE on difference); without, answer GOOD after reading.
    Verify { lba: u64, blocks: u32, bytchk: bool },
    /// Flush the volume (SYNCHRONIZE CACHE), range already checked.
    Sync,
    /// Receive `len` bytes of parameter data, then call `LogicalUnit::mode_select`.
    ModeSelect { ten: bool, len: u32 },
}

pub struct LuConfig {
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    /// Stable per-volume identifier (NAA designator, unit serial number).
    pub id: u64,
    /// Volume name, reported in the device identification page as a T10 vendor id suffix.
    pub name: String,
}

pub struct LogicalUnit;

impl LogicalUnit {
    pub fn new(_cfg: LuConfig) -> LogicalUnit {
        todo!()
    }
    pub fn block_size(&self) -> u32 {
        todo!()
    }
    pub fn mode_select(&self, _ten: bool, _data: &[u8]) -> Response {
        todo!()
    }
}

#[derive(Debug, Default)]
pub struct UnitAttentions;

impl UnitAttentions {
    pub fn power_on() -> UnitAttentions {
        todo!()
    }
    pub fn push(&mut self, _sense: Sense) {
        todo!()
    }
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

pub fn plan(_cdb: &[u8], _ctx: Context<'_>) -> Plan {
    todo!()
}

impl Sense {
    pub fn to_fixed(&self) -> Vec<u8> {
        todo!()
    }
    pub fn medium_error() -> Sense {
        todo!()
    }
    pub fn miscompare(_offset: u64) -> Sense {
        todo!()
    }
    pub fn invalid_field_in_cdb(_byte: u16) -> Sense {
        todo!()
    }
    pub fn invalid_opcode() -> Sense {
        todo!()
    }
}

impl Response {
    pub fn good(data: Vec<u8>) -> Response {
        Response { status: Status::Good, data, sense: None }
    }
    pub fn check(sense: Sense) -> Response {
        Response { status: Status::CheckCondition, data: Vec::new(), sense: Some(sense) }
    }
}
