//! Primary commands (SPC-5): INQUIRY and its vital product data pages, REPORT LUNS,
//! REQUEST SENSE.

use super::cdb::{cut, Cdb};
use super::lbp;
use super::lun::encode_lun;
use super::rmw;
use super::{LogicalUnit, Response, Sense, UnitAttentions};

/// T10 vendor identification (SPC-5 6.7.2: 8 bytes, left aligned, space padded).
pub const VENDOR_ID: &[u8; 8] = b"TWINLUN ";
/// Product identification (16 bytes).
pub const PRODUCT_ID: &[u8; 16] = b"VOLUME          ";
/// Product revision level (4 bytes).
pub const PRODUCT_REV: &[u8; 4] = b"0.1 ";

/// IEEE company identifier used in the NAA designator. This is a locally administered
/// value (bit 1 of the first octet set), not an assigned OUI; replace it with a registered
/// one if the project gets one.
pub const NAA_COMPANY_ID: u32 = 0x02_54_4C;

/// Peripheral device type 00h: direct access block device (SPC-5 6.7.2).
const TYPE_DISK: u8 = 0x00;
/// Peripheral qualifier 011b, type 1Fh: no logical unit at this LUN (SPC-5 6.7.2, table 148).
const NO_LU: u8 = 0x7F;

const VPD_SUPPORTED_PAGES: u8 = 0x00;
const VPD_UNIT_SERIAL: u8 = 0x80;
const VPD_DEVICE_ID: u8 = 0x83;
const VPD_BLOCK_LIMITS: u8 = 0xB0;
const VPD_BLOCK_CHARACTERISTICS: u8 = 0xB1;
const VPD_LB_PROVISIONING: u8 = 0xB2;

/// Pages listed by page 00h, ascending (SPC-5 7.7.18).
const VPD_PAGES: [u8; 6] = [
    VPD_SUPPORTED_PAGES,
    VPD_UNIT_SERIAL,
    VPD_DEVICE_ID,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_CHARACTERISTICS,
    VPD_LB_PROVISIONING,
];

/// Version descriptors (SPC-5 6.7.2, table 150): SAM-5, iSCSI (no version claimed), SPC-4,
/// SBC-3. libiscsi reads SBC-3 (04C0h) as "READ CAPACITY(16) and the 16-byte commands work".
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// VERSION of the standard INQUIRY data: 05h, SPC-3 (libiscsi 1.19 accepts 4..6 only).
/// Not 06h: libiscsi then skips its EXTENDED COPY test of the NUL bit (obsolete in
/// SPC-4), and every command implemented is in SPC-3 too.
const VERSION: u8 = 0x05;

/// INQUIRY (SPC-5 6.7).
pub fn inquiry(cdb: Cdb, lu: Option<&LogicalUnit>) -> Response {
    let evpd = cdb.byte(1) & 0x01 != 0;
    let page = cdb.byte(2);
    let alloc = usize::from(cdb.u16(3));
    // CMDDT (bit 1) is obsolete since SPC-3; refuse it like any reserved bit.
    if cdb.byte(1) & 0x02 != 0 {
        return Response::check(Sense::invalid_field_in_cdb_bit(1, 1));
    }
    // SPC-5 6.7.1: EVPD=0 with a PAGE CODE other than zero is an invalid field.
    if !evpd {
        if page != 0 {
            return Response::check(Sense::invalid_field_in_cdb(2));
        }
        return Response::good(cut(standard_inquiry(lu), alloc));
    }
    let Some(lu) = lu else {
        return Response::check(Sense::lu_not_supported());
    };
    let body = match page {
        VPD_SUPPORTED_PAGES => VPD_PAGES.to_vec(),
        VPD_UNIT_SERIAL => unit_serial(lu),
        VPD_DEVICE_ID => device_identification(lu),
        VPD_BLOCK_LIMITS => block_limits(lu),
        VPD_BLOCK_CHARACTERISTICS => block_device_characteristics(lu),
        VPD_LB_PROVISIONING => logical_block_provisioning(lu),
        _ => return Response::check(Sense::invalid_field_in_cdb(2)),
    };
    // VPD page header (SPC-5 7.7.1): qualifier/type, page code, PAGE LENGTH (2 bytes).
    let mut out = vec![TYPE_DISK, page];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    Response::good(cut(out, alloc))
}

/// Standard INQUIRY data (SPC-5 6.7.2), 96 bytes.
fn standard_inquiry(lu: Option<&LogicalUnit>) -> Vec<u8> {
    let mapped = lu.is_some();
    let removable = lu.is_some_and(LogicalUnit::removable);
    let mut d = vec![0u8; 96];
    d[0] = if mapped { TYPE_DISK } else { NO_LU };
    d[1] = if removable { 0x80 } else { 0x00 }; // RMB
    d[2] = VERSION;
    d[3] = 0x12; // HISUP=1 (SAM-5 4.7 LUNs), RESPONSE DATA FORMAT=2
    d[4] = (d.len() - 5) as u8; // ADDITIONAL LENGTH
    d[5] = 0x08; // SCCS ACC TPGS=00b PROTECT=0; 3PC=1: EXTENDED COPY is supported

    // TPGS 01b (bits 5-4): implicit ALUA, when the LU is seen through a port group.
    if lu.is_some_and(|l| l.target_port().is_some()) {
        d[5] |= 0x10;
    }
    d[6] = 0x00; // ENCSERV MULTIP
    d[7] = 0x02; // CMDQUE=1
    d[8..16].copy_from_slice(VENDOR_ID);
    d[16..32].copy_from_slice(PRODUCT_ID);
    d[32..36].copy_from_slice(PRODUCT_REV);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        let at = 58 + 2 * i;
        d[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// The unit serial number: the LU id in hex, 16 ASCII characters.
pub fn serial_number(id: u64) -> String {
    format!("{id:016x}")
}

/// Unit Serial Number page (SPC-5 7.7.19).
fn unit_serial(lu: &LogicalUnit) -> Vec<u8> {
    serial_number(lu.id()).into_bytes()
}

/// NAA IEEE Registered Extended designator (NAA 6, SPC-5 7.7.6.6.4): 4 bits NAA, 24 bits
/// company id, 36 bits vendor specific identifier (zero), 64 bits vendor specific identifier
/// extension (the LU id). Stable for a given id.
pub fn naa_designator(id: u64) -> [u8; 16] {
    let hi: u64 = (0x6 << 60) | (u64::from(NAA_COMPANY_ID & 0x00FF_FFFF) << 36);
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&hi.to_be_bytes());
    d[8..16].copy_from_slice(&id.to_be_bytes());
    d
}

/// Device Identification page (SPC-5 7.7.6): NAA designator and T10 vendor ID designator for
/// the LU, relative target port designator for the port.
fn device_identification(lu: &LogicalUnit) -> Vec<u8> {
    let mut out = Vec::new();
    // Designation descriptor header (SPC-5 7.7.6.1, table 460): PROTOCOL IDENTIFIER / CODE SET,
    // PIV / ASSOCIATION / DESIGNATOR TYPE, reserved, DESIGNATOR LENGTH.
    // 1. NAA, binary, associated with the LU.
    let naa = naa_designator(lu.id());
    out.extend_from_slice(&[0x01, 0x03, 0x00, naa.len() as u8]);
    out.extend_from_slice(&naa);
    // 2. T10 vendor ID based (SPC-5 7.7.6.4), ASCII: vendor + volume name (or id if unnamed).
    let mut t10 = VENDOR_ID.to_vec();
    let suffix = if lu.name().is_empty() {
        serial_number(lu.id())
    } else {
        lu.name().to_owned()
    };
    t10.extend(
        suffix
            .bytes()
            .map(|b| if (0x20..0x7F).contains(&b) { b } else { b'_' })
            .take(200),
    );
    out.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    out.extend_from_slice(&t10);
    // 3. Relative target port identifier (SPC-5 7.7.6.7): iSCSI (5h), binary, PIV=1, associated
    // with the target port: the session's port (port 1 without port groups).
    let port = lu.target_port();
    let [hi, lo] = port.map_or(1, |p| p.relative_port).to_be_bytes();
    out.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0x00, 0x00, hi, lo]);
    // 4. Target port group (SPC-5 7.7.6.8), binary, associated with the target port.
    if let Some(p) = port {
        let [hi, lo] = p.group.to_be_bytes();
        out.extend_from_slice(&[0x01, 0x15, 0x00, 0x04, 0x00, 0x00, hi, lo]);
    }
    out
}

/// Block Limits page (SBC-4 6.6.4), page length 3Ch.
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    let bs = lu.block_size();
    // Offsets below are page offsets minus the 4-byte header.
    // OPTIMAL TRANSFER LENGTH GRANULARITY (page bytes 6..8): a 4 KiB page.
    let granularity = u16::try_from((4096 / bs).max(1)).unwrap_or(1);
    d[2..4].copy_from_slice(&granularity.to_be_bytes());
    // MAXIMUM TRANSFER LENGTH (8..12) and OPTIMAL TRANSFER LENGTH (12..16), in blocks: both
    // MAX_TRANSFER_BYTES worth, which `plan` enforces.
    let max = lu.max_transfer_blocks();
    d[4..8].copy_from_slice(&max.to_be_bytes());
    d[8..12].copy_from_slice(&max.to_be_bytes());
    // Byte 4 (d[0]): WSNZ 0, a WRITE SAME of zero blocks runs to the last block.
    // MAXIMUM UNMAP LBA COUNT (20..24), MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (24..28),
    // OPTIMAL UNMAP GRANULARITY (28..32), UGAVALID with UNMAP GRANULARITY ALIGNMENT 0
    // (32..36), MAXIMUM WRITE SAME LENGTH (36..44).
    // A fully provisioned LU has no UNMAP: those four fields stay zero.
    if !lu.thick() {
        d[16..20].copy_from_slice(&lbp::max_unmap_blocks(lu).to_be_bytes());
        d[20..24].copy_from_slice(&lbp::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        d[24..28].copy_from_slice(&lbp::unmap_granularity(lu).to_be_bytes());
        d[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    }
    d[32..40].copy_from_slice(&lbp::max_write_same_blocks(lu).to_be_bytes());
    // MAXIMUM COMPARE AND WRITE LENGTH (page byte 5).
    d[1] = rmw::MAX_COMPARE_AND_WRITE_BLOCKS;
    // MAXIMUM ATOMIC TRANSFER LENGTH (44..48), ATOMIC ALIGNMENT (48..52), ATOMIC TRANSFER
    // LENGTH GRANULARITY (52..56); no atomic boundaries (56..64 zero).
    d[40..44].copy_from_slice(&rmw::max_atomic_blocks(lu).to_be_bytes());
    d[44..48].copy_from_slice(&rmw::atomic_granularity(lu).to_be_bytes());
    d[48..52].copy_from_slice(&rmw::atomic_granularity(lu).to_be_bytes());
    d
}

/// Block Device Characteristics page (SBC-4 6.6.2), page length 3Ch.
fn block_device_characteristics(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    // MEDIUM ROTATION RATE 0001h: non-rotating medium.
    d[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    // WABEREQ and WACEREQ 01b (page byte 7): after a BLOCK or CRYPTOGRAPHIC ERASE,
    // reads of blocks not written since succeed (they read as zeros). Zero where
    // SANITIZE is not offered.
    if lu.sanitize_allowed() {
        d[3] = 0x50;
    }
    d
}

/// Logical Block Provisioning page (SBC-4 6.6.5), page length 4: THRESHOLD EXPONENT 0
/// (no thresholds); LBPU, LBPWS, LBPWS10 (UNMAP and both WRITE SAMEs deallocate), LBPRZ
/// 001b (deallocated blocks read as zeros, where `lbp::reports_lbprz`), ANC_SUP 0, DP 0;
/// PROVISIONING TYPE 010b (thin).
fn logical_block_provisioning(lu: &LogicalUnit) -> Vec<u8> {
    if lu.thick() {
        // Fully provisioned: no UNMAP, no deallocating WRITE SAME, PROVISIONING TYPE 000b.
        return vec![0x00, 0x00, 0x00, 0x00];
    }
    let lbprz = if lbp::reports_lbprz(lu) { 0x04 } else { 0 };
    vec![0x00, 0x80 | 0x40 | 0x20 | lbprz, 0x02, 0x00]
}

/// REPORT LUNS (SPC-5 6.33).
pub fn report_luns(cdb: Cdb, luns: &[u64]) -> Response {
    let select = cdb.byte(2);
    let alloc = cdb.u32(6);
    // SPC-5 6.33: an ALLOCATION LENGTH below 16 is an invalid field.
    if alloc < 16 {
        return Response::check(Sense::invalid_field_in_cdb(6));
    }
    let list: Vec<u64> = match select {
        // 00h: all LUs but well known ones; 02h: all; we have no well known LUs.
        0x00 | 0x02 => {
            let mut l: Vec<u64> = luns.to_vec();
            l.sort_unstable();
            l.dedup();
            l
        }
        // 01h: well known LUs only: none.
        0x01 => Vec::new(),
        _ => return Response::check(Sense::invalid_field_in_cdb(2)),
    };
    let mut out = vec![0u8; 8];
    for lun in list {
        if let Some(enc) = encode_lun(lun) {
            out.extend_from_slice(&enc);
        }
    }
    let len = u32::try_from(out.len() - 8).unwrap_or(u32::MAX);
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Response::good(cut(out, usize::try_from(alloc).unwrap_or(usize::MAX)))
}

/// REQUEST SENSE (SPC-5 6.39): the pending unit attention (which is then cleared), or NO
/// SENSE; for a LUN that is not mapped, LOGICAL UNIT NOT SUPPORTED. Status is GOOD in every
/// case: the sense travels as parameter data.
pub fn request_sense(cdb: Cdb, mapped: bool, ua: Option<&mut UnitAttentions>) -> Response {
    let desc = cdb.byte(1) & 0x01 != 0;
    let alloc = usize::from(cdb.byte(4));
    let sense = if !mapped {
        Sense::lu_not_supported()
    } else {
        ua.and_then(|u| u.pop()).unwrap_or_else(Sense::no_sense)
    };
    let data = if desc {
        sense.to_descriptor()
    } else {
        sense.to_fixed()
    };
    Response::good(cut(data, alloc))
}

/// RESERVE(6) and RESERVE(10) (SPC-2 7.21, 7.22): the LU for this nexus alone. RESERVE(10)'s
/// third-party and long-id forms are not supported (INVALID FIELD IN CDB).
pub fn reserve(cdb: Cdb, lu: &LogicalUnit) -> Response {
    if cdb.opcode() == super::op::RESERVE_10 && cdb.byte(1) & 0x12 != 0 {
        return Response::check(Sense::invalid_field_in_cdb(1));
    }
    if lu.state().reserve(lu.nexus(), lu.session()) {
        Response::good(Vec::new())
    } else {
        Response::conflict()
    }
}

/// RELEASE(6) and RELEASE(10) (SPC-2 7.17, 7.18): ends this nexus's reservation; from
/// another nexus, or with none, GOOD and nothing changes.
pub fn release(cdb: Cdb, lu: &LogicalUnit) -> Response {
    if cdb.opcode() == super::op::RELEASE_10 && cdb.byte(1) & 0x12 != 0 {
        return Response::check(Sense::invalid_field_in_cdb(1));
    }
    lu.state().release(lu.nexus());
    Response::good(Vec::new())
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5 6.38): ABORT TASK, ABORT TASK SET,
/// CLEAR TASK SET, LOGICAL UNIT RESET and TARGET RESET (iSCSI's warm and cold resets);
/// iSCSI carries no CLEAR ACA, QUERY TASK or I_T NEXUS RESET function we answer. With
/// REPD, the extended 16-byte form (no timeouts reported).
pub fn report_supported_tmfs(cdb: Cdb) -> Response {
    let repd = cdb.byte(2) & 0x80 != 0;
    let alloc = usize::try_from(cdb.u32(6)).unwrap_or(usize::MAX);
    // Byte 0: ATS, ATSS, CTSS, LURS, TRS.
    let mut d = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0];
    if repd {
        d[3] = 0x0C; // ADDITIONAL DATA LENGTH
        d.resize(16, 0);
    }
    Response::good(cut(d, alloc))
}
