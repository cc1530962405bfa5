//! Reservations of one logical unit, as a state machine without I/O: persistent
//! reservations (SPC-5 5.14; PERSISTENT RESERVE IN 6.16, OUT 6.17) and the older
//! RESERVE / RELEASE (SPC-2 7.21, 7.17), which a PR registration excludes (SPC-5 5.14.3,
//! CRH=0).
//!
//! Registrations are keyed by I_T nexus: the initiator port (iSCSI name and ISID, the
//! "NAME,i,0xISID" port name) and the target port (target name, relative port). A command is
//! checked with [`PrState::conflicts`] against the access table (SPC-5 5.14.1, table 66);
//! PERSISTENT RESERVE OUT changes the state and says which other nexuses get which unit
//! attention. The server preserves the state across power loss when APTPL is set.

use serde::{Deserialize, Serialize};

use super::cdb::{cut, Cdb};
use super::{Response, Sense};

/// One I_T nexus: initiator port and target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nexus {
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The session's ISID. None only in a registration made by REGISTER AND MOVE with a
    /// TransportID that names no ISID (format 00b): it covers every ISID of the name.
    pub isid: Option<[u8; 6]>,
    /// The target's iSCSI name.
    pub target: String,
    /// RELATIVE TARGET PORT IDENTIFIER of the port (VPD page 83h).
    pub rel_port: u16,
}

impl Nexus {
    /// The nexus of a session: its initiator port (name and ISID) and target port.
    pub fn new(initiator: &str, isid: [u8; 6], target: &str, rel_port: u16) -> Nexus {
        Nexus {
            initiator: initiator.to_owned(),
            isid: Some(isid),
            target: target.to_owned(),
            rel_port,
        }
    }

    /// Whether this (registration's) nexus is `other`'s.
    pub fn covers(&self, other: &Nexus) -> bool {
        self.initiator == other.initiator
            && self.target == other.target
            && self.rel_port == other.rel_port
            && (self.isid.is_none() || self.isid == other.isid)
    }

    /// The iSCSI TransportID of the initiator port (SPC-5 7.6.4.6, table 508): format
    /// 01b "NAME,i,0xISID" when the ISID is known, else format 00b, the name alone; padded
    /// with NULs to a multiple of four bytes.
    pub fn transport_id(&self) -> Vec<u8> {
        let (format, text) = match self.isid {
            Some(isid) => (
                0x40u8,
                format!("{},i,0x{}", self.initiator, hex::encode(isid)),
            ),
            None => (0x00u8, self.initiator.clone()),
        };
        let mut name = text.into_bytes();
        name.push(0);
        while name.len() % 4 != 0 || name.len() < 20 {
            name.push(0);
        }
        let mut out = vec![format | PROTOCOL_ISCSI, 0];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(&name);
        out
    }
}

/// PROTOCOL IDENTIFIER of iSCSI (SPC-5 7.6.1, table 494).
const PROTOCOL_ISCSI: u8 = 0x05;

/// Persistent reservation types (SPC-5 6.17.3, table 217).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// The TYPE field's code (table 217); None for codes that are no type.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The TYPE field's code, as READ RESERVATION and READ FULL STATUS report it.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registered nexuses have full access (registrants only and all registrants).
    fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by nexuses without access conflict too.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// The persistent reservation of an LU (SPC-5 allows one, of LU scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The nexus that reserved; for all-registrants types every registrant holds it.
    pub holder: Nexus,
    pub kind: PrType,
}

/// How a command stands against a reservation (SPC-5 5.14.1, table 66; SBC-4 4.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever is reserved (INQUIRY, REPORT LUNS, PERSISTENT RESERVE IN ...).
    Always,
    /// Reads the medium: conflicts under the exclusive access types.
    Read,
    /// Changes the medium or the LU: conflicts under every type.
    Write,
}

/// The persistent reservation state of one logical unit: what APTPL preserves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRGENERATION (SPC-5 6.16.2): counts REGISTER, CLEAR, PREEMPT, REGISTER AND MOVE.
    pub generation: u32,
    /// In the order they were made.
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Activate persist through power loss: the last REGISTER's APTPL bit.
    pub aptpl: bool,
}

/// PERSISTENT RESERVE OUT service actions (SPC-5 6.17.2, table 216).
pub mod prout_sa {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// PERSISTENT RESERVE IN service actions (SPC-5 6.16.1, table 200).
mod prin_sa {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list (SPC-5 6.17.3).
pub const PROUT_BASIC_LEN: u32 = 24;
/// Longest parameter list taken: the basic list and TransportIDs (each at most 256
/// bytes of iSCSI name with a 4-byte header, SPC-5 7.6.4.6) for a SPEC_I_PT list of
/// some thirty ports. Longer is PARAMETER LIST LENGTH ERROR.
pub const PROUT_MAX_LEN: u32 = 8192;

/// UNIT ATTENTION, RESERVATIONS PREEMPTED (2Ah/03h).
pub const fn reservations_preempted() -> Sense {
    Sense::new(super::key::UNIT_ATTENTION, 0x2A, 0x03)
}

/// UNIT ATTENTION, RESERVATIONS RELEASED (2Ah/04h).
pub const fn reservations_released() -> Sense {
    Sense::new(super::key::UNIT_ATTENTION, 0x2A, 0x04)
}

/// UNIT ATTENTION, REGISTRATIONS PREEMPTED (2Ah/05h).
pub const fn registrations_preempted() -> Sense {
    Sense::new(super::key::UNIT_ATTENTION, 0x2A, 0x05)
}

/// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h).
const fn invalid_release() -> Sense {
    Sense::new(super::key::ILLEGAL_REQUEST, 0x26, 0x04)
}

/// What PERSISTENT RESERVE OUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProutOutcome {
    /// GOOD, RESERVATION CONFLICT or CHECK CONDITION for the initiator.
    pub response: Response,
    /// Unit attentions for other nexuses (SPC-5 5.14.11, 5.14.12).
    pub attentions: Vec<(Nexus, Sense)>,
    /// The state changed: save it (or forget the saved one when APTPL is off).
    pub changed: bool,
}

impl ProutOutcome {
    fn done(changed: bool) -> ProutOutcome {
        ProutOutcome {
            response: Response::good(Vec::new()),
            attentions: Vec::new(),
            changed,
        }
    }
    fn refused(response: Response) -> ProutOutcome {
        ProutOutcome {
            response,
            attentions: Vec::new(),
            changed: false,
        }
    }
    fn conflict() -> ProutOutcome {
        ProutOutcome::refused(Response::conflict())
    }
    fn check(sense: Sense) -> ProutOutcome {
        ProutOutcome::refused(Response::check(sense))
    }
}

/// The basic parameter list (SPC-5 6.17.3, table 218) and, for REGISTER AND MOVE, its
/// own (6.17.4, table 220).
struct Params {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
    unreg: bool,
    rel_port: u16,
    transport_id: Vec<u8>,
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

fn parse_params(sa: u8, d: &[u8]) -> Result<Params, Sense> {
    if d.len() < PROUT_BASIC_LEN as usize {
        return Err(Sense::parameter_list_length_error());
    }
    let key = be64(d, 0);
    let sa_key = be64(d, 8);
    if sa == prout_sa::REGISTER_AND_MOVE {
        // Table 220: byte 17 UNREG (bit 1) APTPL (bit 0), 18..20 RELATIVE TARGET PORT
        // IDENTIFIER, 20..24 TRANSPORTID PARAMETER DATA LENGTH, then the TransportID.
        let tid_len = u32::from_be_bytes([d[20], d[21], d[22], d[23]]) as usize;
        if d.len() < 24 + tid_len || tid_len < 24 {
            return Err(Sense::parameter_list_length_error());
        }
        return Ok(Params {
            key,
            sa_key,
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: d[17] & 0x01 != 0,
            unreg: d[17] & 0x02 != 0,
            rel_port: u16::from_be_bytes([d[18], d[19]]),
            transport_id: d[24..24 + tid_len].to_vec(),
        });
    }
    let flags = d[20];
    let spec_i_pt = flags & 0x08 != 0;
    if !spec_i_pt && d.len() != PROUT_BASIC_LEN as usize {
        // SPC-5 6.17.3: only SPEC_I_PT (and REGISTER AND MOVE) lists are longer.
        return Err(Sense::parameter_list_length_error());
    }
    // With SPEC_I_PT, TRANSPORTID PARAMETER DATA LENGTH (24..28) and the TransportIDs
    // follow (SPC-5 6.17.3, table 218).
    let transport_ids = if spec_i_pt {
        if d.len() < 28 {
            return Err(Sense::parameter_list_length_error());
        }
        let len = u32::from_be_bytes([d[24], d[25], d[26], d[27]]) as usize;
        if d.len() != 28 + len {
            return Err(Sense::parameter_list_length_error());
        }
        d[28..].to_vec()
    } else {
        Vec::new()
    };
    Ok(Params {
        key,
        sa_key,
        spec_i_pt,
        all_tg_pt: flags & 0x04 != 0,
        aptpl: flags & 0x01 != 0,
        unreg: false,
        rel_port: 0,
        transport_id: transport_ids,
    })
}

/// The TransportIDs of a SPEC_I_PT list, one after another, each as long as its
/// ADDITIONAL LENGTH says (SPC-5 7.6.4.6); None if one is malformed.
fn split_transport_ids(mut list: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !list.is_empty() {
        let len = 4 + usize::from(u16::from_be_bytes([*list.get(2)?, *list.get(3)?]));
        out.push(list.get(..len)?);
        list = &list[len..];
    }
    Some(out)
}

/// An iSCSI TransportID (SPC-5 7.6.4.6) as the nexus of `target`/`rel_port` it names.
fn parse_transport_id(tid: &[u8], target: &str, rel_port: u16) -> Option<Nexus> {
    let format = tid.first()? >> 6;
    if tid[0] & 0x0F != PROTOCOL_ISCSI || tid.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([tid[2], tid[3]]) as usize;
    let name = tid.get(4..4 + len)?;
    let end = name.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&name[..end]).ok()?;
    let (initiator, isid) = match format {
        0b00 => (text, None),
        0b01 => {
            let (n, isid_hex) = text
                .split_once(",i,0x")
                .or_else(|| text.split_once(",I,0X"))?;
            let raw = hex::decode(isid_hex).ok()?;
            let isid: [u8; 6] = raw.try_into().ok()?;
            (n, Some(isid))
        }
        _ => return None,
    };
    if initiator.is_empty() {
        return None;
    }
    Some(Nexus {
        initiator: initiator.to_owned(),
        isid,
        target: target.to_owned(),
        rel_port,
    })
}

impl PrState {
    /// The key `nexus` is registered with.
    pub fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| r.nexus.covers(nexus))
            .map(|r| r.key)
    }

    fn holds(&self, r: &Reservation, nexus: &Nexus) -> bool {
        if r.kind.all_registrants() {
            self.key_of(nexus).is_some()
        } else {
            r.holder.covers(nexus)
        }
    }

    /// Whether a command of class `access` from `nexus` meets RESERVATION CONFLICT
    /// (SPC-5 5.14.1, table 66).
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        let Some(r) = &self.reservation else {
            return false;
        };
        if access == Access::Always || self.holds(r, nexus) {
            return false;
        }
        if r.kind.registrants_access() && self.key_of(nexus).is_some() {
            return false;
        }
        access == Access::Write || r.kind.exclusive_access()
    }

    /// Any nexus is registered (RESERVE/RELEASE then conflict, SPC-5 5.14.3).
    pub fn has_registrations(&self) -> bool {
        !self.registrations.is_empty()
    }

    /// Every other registered nexus, for a unit attention.
    fn others(&self, nexus: &Nexus) -> Vec<Nexus> {
        self.registrations
            .iter()
            .filter(|r| !r.nexus.covers(nexus))
            .map(|r| r.nexus.clone())
            .collect()
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Drops `nexus`'s registration; releases a reservation it held (or the last
    /// registrant's all-registrants one), with RESERVATIONS RELEASED to the other
    /// registrants for the registrants-only and all-registrants types (SPC-5 5.14.11.2.2).
    fn unregister(&mut self, nexus: &Nexus, attentions: &mut Vec<(Nexus, Sense)>) {
        self.registrations.retain(|r| !r.nexus.covers(nexus));
        let Some(r) = self.reservation.clone() else {
            return;
        };
        let released = if r.kind.all_registrants() {
            self.registrations.is_empty()
        } else {
            r.holder.covers(nexus)
        };
        if released {
            self.reservation = None;
            if r.kind.registrants_access() {
                for n in self.others(nexus) {
                    attentions.push((n, reservations_released()));
                }
            }
        }
    }

    /// PERSISTENT RESERVE OUT (SPC-5 6.17) from `nexus`: `sa` the service action, `scope_type`
    /// CDB byte 2, `data` the parameter list.
    pub fn prout(&mut self, nexus: &Nexus, sa: u8, scope_type: u8, data: &[u8]) -> ProutOutcome {
        let p = match parse_params(sa, data) {
            Ok(p) => p,
            Err(s) => return ProutOutcome::check(s),
        };
        // SPC-5 6.17.3: SPEC_I_PT only with REGISTER; ALL_TG_PT is refused as REPORT
        // CAPABILITIES says (ATP_C=0).
        if p.spec_i_pt && sa != prout_sa::REGISTER {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(20, Some(3)));
        }
        if p.all_tg_pt {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(20, Some(2)));
        }
        let registered = self.key_of(nexus);
        let mut attentions = Vec::new();
        if p.spec_i_pt {
            return self.register_ports(nexus, registered, &p);
        }
        match sa {
            prout_sa::REGISTER | prout_sa::REGISTER_AND_IGNORE => {
                // SPC-5 5.14.7: REGISTER checks the key; REGISTER AND IGNORE EXISTING KEY
                // does not.
                if sa == prout_sa::REGISTER {
                    match registered {
                        None if p.key != 0 => return ProutOutcome::conflict(),
                        Some(k) if k != p.key => return ProutOutcome::conflict(),
                        _ => {}
                    }
                }
                match (registered, p.sa_key) {
                    // Not registered, nothing to register: GOOD, nothing changes.
                    (None, 0) => return ProutOutcome::done(false),
                    (None, k) => self.registrations.push(Registration {
                        nexus: nexus.clone(),
                        key: k,
                    }),
                    (Some(_), 0) => self.unregister(nexus, &mut attentions),
                    (Some(_), k) => {
                        for r in self.registrations.iter_mut() {
                            if r.nexus.covers(nexus) {
                                r.key = k;
                            }
                        }
                    }
                }
                self.aptpl = p.aptpl;
                self.bump();
                ProutOutcome {
                    response: Response::good(Vec::new()),
                    attentions,
                    changed: true,
                }
            }
            _ => {
                // Every other service action needs this nexus registered with that key.
                let Some(key) = registered else {
                    return ProutOutcome::conflict();
                };
                if key != p.key {
                    return ProutOutcome::conflict();
                }
                match sa {
                    prout_sa::RESERVE => self.reserve(nexus, scope_type),
                    prout_sa::RELEASE => self.release(nexus, scope_type),
                    prout_sa::CLEAR => {
                        // SPC-5 5.14.11.2.6.
                        for n in self.others(nexus) {
                            attentions.push((n, reservations_preempted()));
                        }
                        self.registrations.clear();
                        self.reservation = None;
                        self.bump();
                        ProutOutcome {
                            response: Response::good(Vec::new()),
                            attentions,
                            changed: true,
                        }
                    }
                    prout_sa::PREEMPT | prout_sa::PREEMPT_AND_ABORT => {
                        self.preempt(nexus, scope_type, p.sa_key)
                    }
                    prout_sa::REGISTER_AND_MOVE => self.register_and_move(nexus, &p),
                    _ => ProutOutcome::check(Sense::invalid_field_in_cdb_bit(1, 4)),
                }
            }
        }
    }

    /// REGISTER with SPEC_I_PT (SPC-5 6.17.3): an unregistered nexus registers itself and every initiator port its TransportIDs name, on this
    /// target port, all with the SERVICE ACTION RESERVATION KEY, or nothing at all: a
    /// malformed TransportID is an invalid field, a port already registered a conflict.
    fn register_ports(
        &mut self,
        nexus: &Nexus,
        registered: Option<u64>,
        p: &Params,
    ) -> ProutOutcome {
        match registered {
            // A registered nexus must name its key, and may not specify ports.
            Some(k) if k != p.key => return ProutOutcome::conflict(),
            Some(_) => {
                return ProutOutcome::check(Sense::invalid_field_in_parameter_list(20, Some(3)))
            }
            None if p.key != 0 => return ProutOutcome::conflict(),
            // Nothing to register: GOOD, nothing changes, as without SPEC_I_PT.
            None if p.sa_key == 0 => return ProutOutcome::done(false),
            None => {}
        }
        let Some(tids) = split_transport_ids(&p.transport_id) else {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(28, None));
        };
        let mut ports: Vec<Nexus> = vec![nexus.clone()];
        for tid in tids {
            let Some(n) = parse_transport_id(tid, &nexus.target, nexus.rel_port) else {
                return ProutOutcome::check(Sense::invalid_field_in_parameter_list(28, None));
            };
            if self
                .registrations
                .iter()
                .any(|r| r.nexus.covers(&n) || n.covers(&r.nexus))
            {
                return ProutOutcome::conflict();
            }
            if !ports.contains(&n) {
                ports.push(n);
            }
        }
        for n in ports {
            self.registrations.push(Registration {
                nexus: n,
                key: p.sa_key,
            });
        }
        self.aptpl = p.aptpl;
        self.bump();
        ProutOutcome::done(true)
    }

    /// The type of a RESERVE, RELEASE or PREEMPT CDB: SCOPE must be LU_SCOPE (0h) and
    /// TYPE one of table 217, else INVALID FIELD IN CDB.
    fn cdb_type(scope_type: u8) -> Result<PrType, Sense> {
        if scope_type >> 4 != 0 {
            return Err(Sense::invalid_field_in_cdb_bit(2, 4));
        }
        PrType::from_code(scope_type & 0x0F).ok_or_else(|| Sense::invalid_field_in_cdb_bit(2, 0))
    }

    /// RESERVE (SPC-5 5.14.9).
    fn reserve(&mut self, nexus: &Nexus, scope_type: u8) -> ProutOutcome {
        let kind = match Self::cdb_type(scope_type) {
            Ok(k) => k,
            Err(s) => return ProutOutcome::check(s),
        };
        match &self.reservation {
            Some(r) if self.holds(r, nexus) && r.kind == kind => ProutOutcome::done(false),
            Some(_) => ProutOutcome::conflict(),
            None => {
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    kind,
                });
                ProutOutcome::done(true)
            }
        }
    }

    /// RELEASE (SPC-5 5.14.11.2.2).
    fn release(&mut self, nexus: &Nexus, scope_type: u8) -> ProutOutcome {
        let Some(r) = self.reservation.clone() else {
            return ProutOutcome::done(false);
        };
        if !self.holds(&r, nexus) {
            return ProutOutcome::done(false);
        }
        if scope_type >> 4 != 0 || PrType::from_code(scope_type & 0x0F) != Some(r.kind) {
            return ProutOutcome::check(invalid_release());
        }
        self.reservation = None;
        let mut attentions = Vec::new();
        if r.kind.registrants_access() {
            for n in self.others(nexus) {
                attentions.push((n, reservations_released()));
            }
        }
        ProutOutcome {
            response: Response::good(Vec::new()),
            attentions,
            changed: true,
        }
    }

    /// Removes every registration with `key` but `nexus`'s own, each told REGISTRATIONS
    /// PREEMPTED; how many went.
    fn remove_key(&mut self, nexus: &Nexus, key: u64, att: &mut Vec<(Nexus, Sense)>) -> usize {
        let before = self.registrations.len();
        let mut kept = Vec::with_capacity(before);
        for r in std::mem::take(&mut self.registrations) {
            if r.key == key && !r.nexus.covers(nexus) {
                att.push((r.nexus, registrations_preempted()));
            } else {
                kept.push(r);
            }
        }
        self.registrations = kept;
        before - self.registrations.len()
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-5 5.14.11.2.4, 5.14.11.2.5).
    fn preempt(&mut self, nexus: &Nexus, scope_type: u8, sa_key: u64) -> ProutOutcome {
        let mut att = Vec::new();
        let done = |att, changed| ProutOutcome {
            response: Response::good(Vec::new()),
            attentions: att,
            changed,
        };
        let current = self.reservation.clone();
        match current {
            // No reservation, or an all-registrants one preempted by key: only
            // registrations go; none with that key is a conflict.
            None => {
                if sa_key == 0 {
                    return ProutOutcome::check(Sense::invalid_field_in_parameter_list(8, None));
                }
                if self.remove_key(nexus, sa_key, &mut att) == 0 {
                    return ProutOutcome::conflict();
                }
                self.bump();
                done(att, true)
            }
            Some(r) if r.kind.all_registrants() && sa_key != 0 => {
                if self.remove_key(nexus, sa_key, &mut att) == 0 {
                    return ProutOutcome::conflict();
                }
                self.bump();
                done(att, true)
            }
            Some(r) => {
                let kind = match Self::cdb_type(scope_type) {
                    Ok(k) => k,
                    Err(s) => return ProutOutcome::check(s),
                };
                let holder_key = if r.kind.all_registrants() {
                    0
                } else {
                    self.key_of(&r.holder).unwrap_or(0)
                };
                if sa_key != holder_key {
                    // Not the holder's key: registrations only, reservation stays.
                    if sa_key == 0 {
                        return ProutOutcome::check(Sense::invalid_field_in_parameter_list(
                            8, None,
                        ));
                    }
                    if self.remove_key(nexus, sa_key, &mut att) == 0 {
                        return ProutOutcome::conflict();
                    }
                    self.bump();
                    return done(att, true);
                }
                // The holder's key (or zero under all registrants): every registration
                // with it goes (all others for zero), and the reservation passes to the
                // preempting nexus with the CDB's type.
                if sa_key == 0 {
                    let others = self.others(nexus);
                    self.registrations.retain(|x| x.nexus.covers(nexus));
                    att.extend(others.into_iter().map(|n| (n, registrations_preempted())));
                } else {
                    self.remove_key(nexus, sa_key, &mut att);
                }
                if r.kind != kind {
                    // 5.14.11.2.4.3 d): the type changed: those still registered learn
                    // the old reservation is gone.
                    for n in self.others(nexus) {
                        if !att.iter().any(|(x, _)| *x == n) {
                            att.push((n, reservations_released()));
                        }
                    }
                }
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    kind,
                });
                self.bump();
                done(att, true)
            }
        }
    }

    /// REGISTER AND MOVE (SPC-5 6.17.4): the holder registers another nexus,
    /// hands it the reservation, and may unregister itself.
    fn register_and_move(&mut self, nexus: &Nexus, p: &Params) -> ProutOutcome {
        let Some(r) = self.reservation.clone() else {
            return ProutOutcome::conflict();
        };
        if r.kind.all_registrants() || !r.holder.covers(nexus) {
            return ProutOutcome::conflict();
        }
        if p.sa_key == 0 {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(8, None));
        }
        let Some(dest) = parse_transport_id(&p.transport_id, &nexus.target, p.rel_port) else {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(24, None));
        };
        if p.rel_port == 0 {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(18, None));
        }
        if dest.covers(nexus) || nexus.covers(&dest) {
            return ProutOutcome::check(Sense::invalid_field_in_parameter_list(24, None));
        }
        match self.registrations.iter_mut().find(|x| x.nexus == dest) {
            Some(x) => x.key = p.sa_key,
            None => self.registrations.push(Registration {
                nexus: dest.clone(),
                key: p.sa_key,
            }),
        }
        self.reservation = Some(Reservation {
            holder: dest,
            kind: r.kind,
        });
        if p.unreg {
            self.registrations.retain(|x| !x.nexus.covers(nexus));
        }
        self.aptpl = p.aptpl;
        self.bump();
        ProutOutcome::done(true)
    }

    /// PERSISTENT RESERVE IN (SPC-5 6.16).
    pub fn prin(&self, cdb: Cdb) -> Response {
        let alloc = usize::from(cdb.u16(7));
        let gen = self.generation.to_be_bytes();
        let mut out = gen.to_vec();
        match cdb.service_action() {
            prin_sa::READ_KEYS => {
                // 6.16.2: ADDITIONAL LENGTH counts every key, whatever the allocation length.
                let keys: Vec<u8> = self
                    .registrations
                    .iter()
                    .flat_map(|r| r.key.to_be_bytes())
                    .collect();
                out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
                out.extend_from_slice(&keys);
            }
            prin_sa::READ_RESERVATION => match &self.reservation {
                None => out.extend_from_slice(&0u32.to_be_bytes()),
                Some(r) => {
                    // 6.16.3.2: all-registrants reservations report key zero.
                    let key = if r.kind.all_registrants() {
                        0
                    } else {
                        self.key_of(&r.holder).unwrap_or(0)
                    };
                    out.extend_from_slice(&16u32.to_be_bytes());
                    out.extend_from_slice(&key.to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 0, 0, r.kind.code(), 0, 0]);
                }
            },
            prin_sa::REPORT_CAPABILITIES => {
                // 6.16.4, table 206: LENGTH 8; CRH 0, SIP_C 1, ATP_C 0, PTPL_C 1; TMV 1,
                // ALLOW COMMANDS 000b, PTPL_A; every type in the mask.
                out = vec![
                    0x00,
                    0x08,
                    0x08 | 0x01,
                    0x80 | u8::from(self.aptpl),
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                    0x01,
                    0,
                    0,
                ];
            }
            prin_sa::READ_FULL_STATUS => {
                // 6.16.5: one descriptor per registration.
                let mut descs = Vec::new();
                for reg in &self.registrations {
                    let tid = reg.nexus.transport_id();
                    descs.extend_from_slice(&reg.key.to_be_bytes());
                    descs.extend_from_slice(&[0, 0, 0, 0]);
                    let (holder, st) = match &self.reservation {
                        Some(r) if self.holds(r, &reg.nexus) => (0x01, r.kind.code()),
                        _ => (0, 0),
                    };
                    descs.extend_from_slice(&[holder, st, 0, 0, 0, 0]);
                    descs.extend_from_slice(&reg.nexus.rel_port.to_be_bytes());
                    descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    descs.extend_from_slice(&tid);
                }
                out.extend_from_slice(&(descs.len() as u32).to_be_bytes());
                out.extend_from_slice(&descs);
            }
            _ => return Response::check(Sense::invalid_field_in_cdb_bit(1, 4)),
        }
        Response::good(cut(out, alloc))
    }
}

/// Checks of a PERSISTENT RESERVE OUT CDB before its parameter list comes (SPC-5 6.17.1):
/// the service action, and the PARAMETER LIST LENGTH.
pub fn check_prout_cdb(cdb: Cdb) -> Result<u32, Sense> {
    let sa = cdb.service_action();
    if sa > prout_sa::REGISTER_AND_MOVE {
        return Err(Sense::invalid_field_in_cdb_bit(1, 4));
    }
    let len = cdb.u32(5);
    if !(PROUT_BASIC_LEN..=PROUT_MAX_LEN).contains(&len) {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(len)
}

/// How a CDB stands against reservations (SPC-5 5.14.1, table 66, and SBC-4 4.17.1,
/// table 13). Opcodes not listed count as writes: an unknown command never slips past a
/// reservation.
pub fn access(cdb: &[u8]) -> Access {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match byte(0) {
        // TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY(10), PERSISTENT RESERVE
        // IN and OUT (their own rules apply), REPORT LUNS, RECEIVE COPY RESULTS.
        0x00 | 0x03 | 0x12 | 0x25 | 0x5E | 0x5F | 0xA0 | 0x84 => Access::Always,
        // SERVICE ACTION IN(16): READ CAPACITY(16) is allowed, GET LBA STATUS reads.
        0x9E if byte(1) & 0x1F == 0x10 => Access::Always,
        0x9E => Access::Read,
        // MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES,
        // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
        0xA3 => Access::Always,
        // START STOP UNIT with START=1 and no power condition; PREVENT ALLOW with
        // PREVENT=0.
        0x1B if byte(4) & 0xF1 == 0x01 => Access::Always,
        0x1E if byte(4) & 0x03 == 0 => Access::Always,
        // READ(6/10/12/16), VERIFY(10/12/16), PRE-FETCH(10/16), MODE SENSE(6/10), READ
        // DEFECT DATA(10/12).
        0x08 | 0x28 | 0xA8 | 0x88 | 0x2F | 0xAF | 0x8F | 0x34 | 0x90 | 0x1A | 0x5A | 0x37
        | 0xB7 => Access::Read,
        _ => Access::Write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;

    fn nexus(i: u8) -> Nexus {
        Nexus::new(
            &format!("iqn.2026-12.test:i{i}"),
            [0x80, 0, 0, 0, 0, i],
            "iqn.t",
            1,
        )
    }

    fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[8..16].copy_from_slice(&sa_key.to_be_bytes());
        d[20] = flags;
        d
    }

    fn out(pr: &mut PrState, n: u8, sa: u8, kind: u8, key: u64, sa_key: u64) -> ProutOutcome {
        pr.prout(&nexus(n), sa, kind, &params(key, sa_key, 0))
    }

    fn status(o: &ProutOutcome) -> Status {
        o.response.status
    }

    fn prin(pr: &PrState, sa: u8) -> Vec<u8> {
        let cdb = [0x5E, sa, 0, 0, 0, 0, 0, 0x40, 0, 0];
        let r = pr.prin(Cdb(&cdb));
        assert_eq!(r.status, Status::Good);
        r.data
    }

    use prout_sa::*;

    #[test]
    fn register_checks_the_key_and_counts_generations() {
        let mut pr = PrState::default();
        // Not registered: a non-zero RESERVATION KEY conflicts.
        assert_eq!(
            status(&out(&mut pr, 1, REGISTER, 0, 5, 7)),
            Status::ReservationConflict
        );
        assert_eq!(status(&out(&mut pr, 1, REGISTER, 0, 0, 7)), Status::Good);
        assert_eq!(pr.generation, 1);
        // Registered: the wrong key conflicts, ignore-existing-key does not look.
        assert_eq!(
            status(&out(&mut pr, 1, REGISTER, 0, 8, 9)),
            Status::ReservationConflict
        );
        assert_eq!(
            status(&out(&mut pr, 1, REGISTER_AND_IGNORE, 0, 8, 9)),
            Status::Good
        );
        assert_eq!(pr.key_of(&nexus(1)), Some(9));
        let keys = prin(&pr, 0);
        assert_eq!(&keys[0..4], &2u32.to_be_bytes());
        assert_eq!(&keys[4..8], &8u32.to_be_bytes());
        assert_eq!(&keys[8..16], &9u64.to_be_bytes());
        // Unregister with key zero.
        assert_eq!(status(&out(&mut pr, 1, REGISTER, 0, 9, 0)), Status::Good);
        assert!(!pr.has_registrations());
        // A list that is not 24 bytes is a length error.
        let r = pr.prout(&nexus(1), REGISTER, 0, &[0u8; 20]);
        assert_eq!(r.response.sense, Some(Sense::parameter_list_length_error()));
    }

    #[test]
    fn access_follows_the_reservation_type() {
        // (type, registered other: read, write; unregistered other: read, write)
        let table = [
            (1, true, false, true, false),
            (3, false, false, false, false),
            (5, true, true, true, false),
            (6, true, true, false, false),
            (7, true, true, true, false),
            (8, true, true, false, false),
        ];
        for (kind, rr, rw, ur, uw) in table {
            let mut pr = PrState::default();
            out(&mut pr, 1, REGISTER, 0, 0, 11);
            out(&mut pr, 2, REGISTER, 0, 0, 22);
            assert_eq!(status(&out(&mut pr, 1, RESERVE, kind, 11, 0)), Status::Good);
            for a in [Access::Read, Access::Write, Access::Always] {
                assert!(!pr.conflicts(&nexus(1), a), "holder, type {kind}");
            }
            assert_eq!(!pr.conflicts(&nexus(2), Access::Read), rr, "type {kind}");
            assert_eq!(!pr.conflicts(&nexus(2), Access::Write), rw, "type {kind}");
            assert_eq!(!pr.conflicts(&nexus(3), Access::Read), ur, "type {kind}");
            assert_eq!(!pr.conflicts(&nexus(3), Access::Write), uw, "type {kind}");
            assert!(!pr.conflicts(&nexus(3), Access::Always));
            // READ RESERVATION: all-registrants types report key zero.
            let rr = prin(&pr, 1);
            let key = if kind >= 7 { 0 } else { 11 };
            assert_eq!(&rr[8..16], &u64::to_be_bytes(key));
            assert_eq!(rr[21], kind);
        }
    }

    #[test]
    fn reserve_release_and_their_unit_attentions() {
        let mut pr = PrState::default();
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        out(&mut pr, 2, REGISTER, 0, 0, 22);
        // Unregistered, or the wrong key: conflict.
        assert_eq!(
            status(&out(&mut pr, 3, RESERVE, 1, 0, 0)),
            Status::ReservationConflict
        );
        assert_eq!(
            status(&out(&mut pr, 1, RESERVE, 1, 12, 0)),
            Status::ReservationConflict
        );
        // A bad type or scope is an invalid field in the CDB.
        let r = out(&mut pr, 1, RESERVE, 2, 11, 0);
        assert_eq!(r.response.sense.map(|s| s.asc), Some(0x24));
        let r = out(&mut pr, 1, RESERVE, 0x11, 11, 0);
        assert_eq!(r.response.sense.map(|s| s.asc), Some(0x24));
        assert_eq!(status(&out(&mut pr, 1, RESERVE, 5, 11, 0)), Status::Good);
        // Another type, or another nexus: conflict; the same again: GOOD.
        assert_eq!(
            status(&out(&mut pr, 1, RESERVE, 1, 11, 0)),
            Status::ReservationConflict
        );
        assert_eq!(
            status(&out(&mut pr, 2, RESERVE, 5, 22, 0)),
            Status::ReservationConflict
        );
        assert_eq!(status(&out(&mut pr, 1, RESERVE, 5, 11, 0)), Status::Good);
        let gen = pr.generation;
        // A non-holder's release does nothing; the holder's with another type is refused.
        assert_eq!(status(&out(&mut pr, 2, RELEASE, 5, 22, 0)), Status::Good);
        assert!(pr.reservation.is_some());
        let r = out(&mut pr, 1, RELEASE, 1, 11, 0);
        assert_eq!(r.response.sense, Some(invalid_release()));
        let r = out(&mut pr, 1, RELEASE, 5, 11, 0);
        assert_eq!(r.response.status, Status::Good);
        assert_eq!(r.attentions, vec![(nexus(2), reservations_released())]);
        assert!(pr.reservation.is_none());
        assert_eq!(pr.generation, gen, "RESERVE and RELEASE leave PRGENERATION");
    }

    #[test]
    fn unregistering_releases_what_it_held() {
        // Registrants only: the holder's reservation goes with its registration.
        let mut pr = PrState::default();
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        out(&mut pr, 2, REGISTER, 0, 0, 22);
        out(&mut pr, 1, RESERVE, 6, 11, 0);
        let r = out(&mut pr, 1, REGISTER, 0, 11, 0);
        assert!(pr.reservation.is_none());
        assert_eq!(r.attentions, vec![(nexus(2), reservations_released())]);
        // All registrants: it stays while anyone is registered.
        let mut pr = PrState::default();
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        out(&mut pr, 2, REGISTER, 0, 0, 22);
        out(&mut pr, 1, RESERVE, 8, 11, 0);
        out(&mut pr, 1, REGISTER, 0, 11, 0);
        assert!(pr.reservation.is_some());
        assert!(!pr.conflicts(&nexus(2), Access::Write));
        out(&mut pr, 2, REGISTER, 0, 22, 0);
        assert!(pr.reservation.is_none());
    }

    #[test]
    fn clear_and_preempt() {
        let mut pr = PrState::default();
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        out(&mut pr, 2, REGISTER, 0, 0, 22);
        out(&mut pr, 3, REGISTER, 0, 0, 22);
        out(&mut pr, 1, RESERVE, 3, 11, 0);
        // Preempting a key nobody has conflicts.
        assert_eq!(
            status(&out(&mut pr, 2, PREEMPT, 3, 22, 99)),
            Status::ReservationConflict
        );
        // Preempt the holder: its registration goes, the reservation passes to 2 with
        // the new type; 3 (still registered) learns the old reservation was released.
        let r = out(&mut pr, 2, PREEMPT, 1, 22, 11);
        assert_eq!(r.response.status, Status::Good);
        assert!(r
            .attentions
            .contains(&(nexus(1), registrations_preempted())));
        assert!(r.attentions.contains(&(nexus(3), reservations_released())));
        assert_eq!(pr.key_of(&nexus(1)), None);
        let res = pr.reservation.clone().unwrap();
        assert_eq!((res.holder, res.kind), (nexus(2), PrType::WriteExclusive));
        // PREEMPT AND ABORT of a non-holder key removes just those registrations (but not
        // the preempting nexus's own).
        let r = out(&mut pr, 2, PREEMPT_AND_ABORT, 1, 22, 22);
        assert_eq!(r.response.status, Status::Good);
        assert_eq!(pr.key_of(&nexus(3)), None);
        assert_eq!(pr.key_of(&nexus(2)), Some(22));
        // CLEAR: everything goes, the others hear RESERVATIONS PREEMPTED.
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        let gen = pr.generation;
        let r = out(&mut pr, 2, CLEAR, 0, 22, 0);
        assert_eq!(r.attentions, vec![(nexus(1), reservations_preempted())]);
        assert!(!pr.has_registrations() && pr.reservation.is_none());
        assert_eq!(pr.generation, gen + 1);
    }

    #[test]
    fn register_and_move_hands_the_reservation_over() {
        let mut pr = PrState::default();
        out(&mut pr, 1, REGISTER, 0, 0, 11);
        out(&mut pr, 1, RESERVE, 1, 11, 0);
        let dest = nexus(2);
        let tid = dest.transport_id();
        let mut d = params(11, 33, 0);
        d[17] = 0x02; // UNREG
        d[18..20].copy_from_slice(&1u16.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(&tid);
        let r = pr.prout(&nexus(1), REGISTER_AND_MOVE, 1, &d);
        assert_eq!(r.response.status, Status::Good, "{:?}", r.response);
        assert_eq!(pr.key_of(&dest), Some(33));
        assert_eq!(pr.key_of(&nexus(1)), None);
        assert_eq!(pr.reservation.clone().unwrap().holder, dest);
        // Now 1 is nobody: moving again conflicts.
        assert_eq!(
            pr.prout(&nexus(1), REGISTER_AND_MOVE, 1, &d)
                .response
                .status,
            Status::ReservationConflict
        );
        // A TransportID naming the sender itself is an invalid field.
        let own = dest.transport_id();
        let mut d = params(33, 44, 0);
        d[18..20].copy_from_slice(&1u16.to_be_bytes());
        d[20..24].copy_from_slice(&(own.len() as u32).to_be_bytes());
        d.extend_from_slice(&own);
        assert_eq!(
            pr.prout(&dest, REGISTER_AND_MOVE, 1, &d)
                .response
                .sense
                .map(|s| s.asc),
            Some(0x26)
        );
    }

    #[test]
    fn spec_i_pt_registers_the_named_ports_or_none() {
        let mut pr = PrState::default();
        let list = |ports: &[&Nexus]| {
            let mut d = params(0, 11, 0x08);
            let tids: Vec<u8> = ports.iter().flat_map(|n| n.transport_id()).collect();
            d.extend_from_slice(&(tids.len() as u32).to_be_bytes());
            d.extend_from_slice(&tids);
            d
        };
        let r = pr.prout(&nexus(1), REGISTER, 0, &list(&[&nexus(2), &nexus(3)]));
        assert_eq!(r.response.status, Status::Good, "{:?}", r.response);
        for i in 1..=3 {
            assert_eq!(pr.key_of(&nexus(i)), Some(11), "initiator {i}");
        }
        // A port already registered: conflict, and nothing else registered.
        let r = pr.prout(&nexus(4), REGISTER, 0, &list(&[&nexus(5), &nexus(2)]));
        assert_eq!(r.response.status, Status::ReservationConflict);
        assert_eq!(pr.key_of(&nexus(4)), None);
        assert_eq!(pr.key_of(&nexus(5)), None);
        // Only with REGISTER; not from a registered nexus; a bad length is refused.
        let r = pr.prout(&nexus(4), REGISTER_AND_IGNORE, 0, &list(&[&nexus(5)]));
        assert_eq!(r.response.sense.map(|s| s.asc), Some(0x26));
        let mut d = list(&[&nexus(5)]);
        d[0..8].copy_from_slice(&11u64.to_be_bytes());
        let r = pr.prout(&nexus(1), REGISTER, 0, &d);
        assert_eq!(r.response.sense.map(|s| s.asc), Some(0x26));
        let mut d = list(&[&nexus(5)]);
        d.push(0);
        let r = pr.prout(&nexus(4), REGISTER, 0, &d);
        assert_eq!(r.response.sense, Some(Sense::parameter_list_length_error()));
    }

    proptest::proptest! {
        /// Any sequence of PERSISTENT RESERVE OUT commands from three nexuses, with keys
        /// from a small set (so they collide) or arbitrary parameter bytes: nothing
        /// panics, a nexus is registered at most once, a reservation always has a
        /// registered holder (or, all registrants, some registrant), and READ FULL
        /// STATUS stays well formed.
        #[test]
        fn any_prout_sequence_keeps_the_invariants(
            ops in proptest::collection::vec(
                (1u8..=3, 0u8..=8, 0u8..=9, 0u64..4, 0u64..4, 0u8..2, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                1..60,
            )
        ) {
            let mut pr = PrState::default();
            for (n, sa, kind, key, sa_key, raw, bytes) in ops {
                let data = if raw == 0 { params(key, sa_key, 0) } else { bytes };
                let _ = pr.prout(&nexus(n), sa, kind, &data);
                for r in &pr.registrations {
                    let same = pr.registrations.iter().filter(|x| x.nexus == r.nexus).count();
                    proptest::prop_assert_eq!(same, 1);
                    proptest::prop_assert!(r.key != 0);
                }
                if let Some(res) = &pr.reservation {
                    if res.kind.all_registrants() {
                        proptest::prop_assert!(pr.has_registrations());
                    } else {
                        proptest::prop_assert!(pr.key_of(&res.holder).is_some());
                    }
                }
                let full = prin(&pr, 3);
                let len = u32::from_be_bytes([full[4], full[5], full[6], full[7]]) as usize;
                proptest::prop_assert!(full.len() == (8 + len).min(0x4000));
            }
        }
    }

    #[test]
    fn full_status_and_capabilities() {
        let mut pr = PrState::default();
        pr.prout(&nexus(1), REGISTER, 0, &params(0, 11, 0x01));
        out(&mut pr, 1, RESERVE, 3, 11, 0);
        let caps = prin(&pr, 2);
        assert_eq!(caps.len(), 8);
        assert_eq!(caps[2], 0x09, "SIP_C and PTPL_C");
        assert_eq!(caps[3], 0x81, "TMV and PTPL_A");
        let full = prin(&pr, 3);
        let len = u32::from_be_bytes([full[4], full[5], full[6], full[7]]) as usize;
        assert_eq!(full.len(), 8 + len);
        let d = &full[8..];
        assert_eq!(&d[0..8], &11u64.to_be_bytes());
        assert_eq!((d[12], d[13]), (0x01, 3), "R_HOLDER, type");
        let tid = &d[24..];
        assert_eq!(tid[0], 0x45);
        let name = std::str::from_utf8(&tid[4..]).unwrap();
        assert!(
            name.starts_with("iqn.2026-12.test:i1,i,0x800000000001\0"),
            "{name}"
        );
        // Out-of-range service actions are refused.
        let cdb = [0x5E, 4, 0, 0, 0, 0, 0, 0x40, 0, 0];
        assert_eq!(pr.prin(Cdb(&cdb)).status, Status::CheckCondition);
        // The state round-trips as saved.
        let json = serde_json::to_vec(&pr).unwrap();
        assert_eq!(serde_json::from_slice::<PrState>(&json).unwrap(), pr);
    }
}
