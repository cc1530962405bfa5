//! Third-party copy inside the target (SPC-4 6.3, 6.4: EXTENDED COPY (LID1), and 6.18:
//! RECEIVE COPY RESULTS). This layer decodes the CDBs and the parameter list into a
//! checked [`CopyList`]; the server resolves its identification descriptors against the
//! node's LUNs and copies block by block through the volumes' write path.
//!
//! Supported: identification descriptor target descriptors (E4h) naming an LU by its NAA
//! designator (the one VPD page 83h reports), and block device to block device segment
//! descriptors (02h). Data is never held for the initiator (no inline or held data), so
//! RECEIVE COPY RESULTS answers COPY STATUS and OPERATING PARAMETERS only.

use super::cdb::{cut, Cdb};
use super::{check, key, Plan, Response, Sense};

/// Target descriptors one parameter list may carry (MAXIMUM TARGET DESCRIPTOR COUNT).
pub const MAX_TARGET_DESCRIPTORS: u16 = 32;
/// Segment descriptors one parameter list may carry (MAXIMUM SEGMENT DESCRIPTOR COUNT).
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 256;
/// Bytes of target and segment descriptors together (MAXIMUM DESCRIPTOR LIST LENGTH):
/// the most descriptors of both kinds fit.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = MAX_TARGET_DESCRIPTORS as u32
    * TARGET_DESCRIPTOR as u32
    + MAX_SEGMENT_DESCRIPTORS as u32 * B2B_SEGMENT_DESCRIPTOR as u32;
/// Bytes one segment may move (MAXIMUM SEGMENT LENGTH): a block-to-block descriptor
/// counts at most 65535 blocks, of at most 4 KiB.
pub const MAX_SEGMENT_BYTES: u32 = 65535 * 4096;
/// Copies the copy manager runs at once for all initiators (TOTAL CONCURRENT COPIES):
/// every EXTENDED COPY runs while its command does; this only bounds what it announces.
const CONCURRENT_COPIES: u16 = 64;

/// The parameter list header (SPC-4 6.4.1, table 103).
const HEADER: usize = 16;
/// An identification descriptor target descriptor (SPC-4 6.4.6.5) and most others.
const TARGET_DESCRIPTOR: usize = 32;
/// A block device to block device segment descriptor (SPC-4 6.4.5.5).
const B2B_SEGMENT_DESCRIPTOR: usize = 28;

/// Parameter lists the server accepts: header and the longest descriptor list. No
/// inline data is supported (MAXIMUM INLINE DATA LENGTH 0).
pub const MAX_PARAMETER_LIST: u32 = HEADER as u32 + MAX_DESCRIPTOR_LIST_LENGTH;

/// Descriptor type codes (SPC-4 6.4.5 table 107, 6.4.6 table 112).
const SEG_BLOCK_TO_BLOCK: u8 = 0x02;
const TGT_IDENTIFICATION: u8 = 0xE4;
/// Target descriptor codes that are 64 bytes long (IPv6, IP copy service).
const TGT_LONG: [u8; 2] = [0xEA, 0xEB];

/// Service actions of EXTENDED COPY (83h) and RECEIVE COPY RESULTS (84h).
mod sa {
    pub const EXTENDED_COPY_LID1: u8 = 0x00;
    pub const COPY_STATUS: u8 = 0x00;
    pub const OPERATING_PARAMETERS: u8 = 0x03;
}

/// Sense key COPY ABORTED (SPC-4 4.5.6).
pub const COPY_ABORTED: u8 = 0x0A;

/// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (0Dh/02h): a descriptor names an LU
/// the copy manager cannot find, or an index names no descriptor.
pub const fn copy_target_not_reachable() -> Sense {
    Sense::new(COPY_ABORTED, 0x0D, 0x02)
}

/// COPY ABORTED, INCORRECT COPY TARGET DEVICE TYPE (0Dh/03h): the descriptor's block
/// length is not the LU's.
pub const fn incorrect_copy_target_type() -> Sense {
    Sense::new(COPY_ABORTED, 0x0D, 0x03)
}

/// COPY ABORTED with no additional sense code: a segment reaching past its LU's last
/// block (the copy ends with COPY ABORTED; libiscsi accepts only 00h/00h,
/// 08h/04h and 0Dh/02h there, and LOGICAL BLOCK ADDRESS OUT OF RANGE is none of them).
pub const fn copy_segment_out_of_range() -> Sense {
    Sense::new(COPY_ABORTED, 0x00, 0x00)
}

/// COPY ABORTED, DATA PROTECT is not a sense key pair: a read-only destination ends
/// the copy as its own WRITE would, DATA PROTECT, WRITE PROTECTED.
pub const fn copy_destination_protected() -> Sense {
    Sense::write_protected()
}

const fn illegal(asc: u8, ascq: u8) -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, asc, ascq)
}

/// One LU a copy reads from or writes to, as the initiator identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTarget {
    /// The NAA designator's bytes (VPD 83h, association LU).
    pub naa: Vec<u8>,
    /// DISK BLOCK LENGTH the initiator expects the LU to have.
    pub block_size: u32,
}

/// One block device to block device segment (SPC-4 6.4.5.5), indices already checked
/// against the target descriptor list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub source: usize,
    pub destination: usize,
    /// BLOCK DEVICE NUMBER OF BLOCKS, in source blocks (DC=0) or destination blocks (DC=1).
    pub blocks: u16,
    pub destination_count: bool,
    pub source_lba: u64,
    pub destination_lba: u64,
}

impl Segment {
    /// Bytes the segment moves, given the two LUs' block sizes.
    pub fn bytes(&self, source_block: u32, destination_block: u32) -> u64 {
        let unit = if self.destination_count {
            destination_block
        } else {
            source_block
        };
        u64::from(self.blocks) * u64::from(unit)
    }
}

/// A checked EXTENDED COPY (LID1) parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyList {
    pub list_id: u8,
    /// LIST ID USAGE 00b or 10b: the copy's status is kept for RECEIVE COPY RESULTS.
    pub keep_status: bool,
    pub targets: Vec<CopyTarget>,
    pub segments: Vec<Segment>,
}

/// What RECEIVE COPY RESULTS (COPY STATUS) reports of a finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutcome {
    /// The copy ended without errors.
    pub ok: bool,
    pub segments_processed: u16,
    /// Bytes written to destinations.
    pub bytes: u64,
}

/// EXTENDED COPY (SPC-4 6.3): the parameter list comes as Data-Out; [`parse_copy_list`]
/// reads it.
pub fn extended_copy(cdb: Cdb) -> Plan {
    // Only LID1 (service action 00h); LID4 (01h) is not supported.
    if cdb.service_action() != sa::EXTENDED_COPY_LID1 {
        return check(Sense::invalid_field_in_cdb_bit(1, 4));
    }
    let len = cdb.u32(10);
    // SPC-4 6.3.1: a PARAMETER LIST LENGTH of zero is not an error; nothing is copied.
    if len == 0 {
        return Plan::Respond(Response::good(Vec::new()));
    }
    // Longer than any list the copy manager takes (MAXIMUM DESCRIPTOR LIST LENGTH
    // exceeded, no inline data): refused before a byte is collected.
    if len > MAX_PARAMETER_LIST {
        return check(Sense::parameter_list_length_error());
    }
    Plan::ExtendedCopy { len }
}

/// RECEIVE COPY RESULTS (SPC-4 6.18): OPERATING PARAMETERS answered here, COPY STATUS
/// by the server from the session's finished copies.
pub fn receive_copy_results(cdb: Cdb) -> Plan {
    let list_id = cdb.byte(2);
    let alloc = cdb.u32(10);
    match cdb.service_action() {
        sa::OPERATING_PARAMETERS => {
            Plan::Respond(Response::good(cut(operating_parameters(), alloc as usize)))
        }
        sa::COPY_STATUS => Plan::CopyStatus { list_id, alloc },
        // RECEIVE DATA and FAILED SEGMENT DETAILS: no data is ever held.
        _ => check(Sense::invalid_field_in_cdb_bit(1, 4)),
    }
}

/// OPERATING PARAMETERS (SPC-4 6.18.4, table 303).
fn operating_parameters() -> Vec<u8> {
    let mut d = vec![0u8; 44];
    // SNLID (byte 4 bit 0): 0, LID4 is not supported.
    d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH (20..24), HELD DATA LIMIT (24..28), MAXIMUM STREAM
    // DEVICE TRANSFER SIZE (28..32): 0, none of them is supported.
    d[34..36].copy_from_slice(&CONCURRENT_COPIES.to_be_bytes());
    d[36] = CONCURRENT_COPIES.min(255) as u8;
    // DATA SEGMENT GRANULARITY (log2 bytes): a 512-byte block.
    d[37] = 9;
    // IMPLEMENTED DESCRIPTOR LIST: the segment and target descriptor codes supported.
    d.extend_from_slice(&[SEG_BLOCK_TO_BLOCK, TGT_IDENTIFICATION]);
    d[43] = 2;
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d
}

/// COPY STATUS (SPC-4 6.18.2, table 299) of a finished copy, or INVALID FIELD IN CDB
/// (the LIST IDENTIFIER) when the session ran no kept copy by that identifier.
pub fn copy_status_data(outcome: Option<CopyOutcome>, alloc: u32) -> Response {
    let Some(o) = outcome else {
        return Response::check(Sense::invalid_field_in_cdb(2));
    };
    let mut d = vec![0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    // HDD 0; COPY MANAGER STATUS 01h completed without errors, 02h with errors.
    d[4] = if o.ok { 0x01 } else { 0x02 };
    d[5..7].copy_from_slice(&o.segments_processed.to_be_bytes());
    // TRANSFER COUNT UNITS: bytes while they fit in 32 bits, else KiB (01h), MiB (02h).
    let (units, count) = if o.bytes <= u64::from(u32::MAX) {
        (0u8, o.bytes)
    } else if o.bytes >> 10 <= u64::from(u32::MAX) {
        (1, o.bytes >> 10)
    } else {
        (2, (o.bytes >> 20).min(u64::from(u32::MAX)))
    };
    d[7] = units;
    d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
    Response::good(cut(d, alloc as usize))
}

fn be16(d: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([d[at], d[at + 1]]))
}

fn be32(d: &[u8], at: usize) -> usize {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]) as usize
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Read and check an EXTENDED COPY (LID1) parameter list (SPC-4 6.4). Checked in this
/// order, each with its own sense: the lengths (PARAMETER LIST LENGTH ERROR), the
/// descriptor counts (TOO MANY TARGET / SEGMENT DESCRIPTORS), the descriptor type codes
/// (UNSUPPORTED ... DESCRIPTOR TYPE CODE), then each descriptor's fields. Whether the
/// named LUs exist and the segments fit them is the server's to check.
pub fn parse_copy_list(data: &[u8]) -> Result<CopyList, Sense> {
    if data.len() < HEADER {
        return Err(Sense::parameter_list_length_error());
    }
    let list_id = data[0];
    let usage = (data[1] >> 3) & 0x03;
    // LIST ID USAGE 01b is reserved; 11b (no list identifier) needs LIST IDENTIFIER 0.
    if usage == 0b01 || (usage == 0b11 && list_id != 0) {
        return Err(Sense::invalid_field_in_parameter_list(1, Some(4)));
    }
    let tgt_len = be16(data, 2);
    let seg_len = be32(data, 8);
    let inline_len = be32(data, 12);
    // SPC-4 6.4.1: descriptor lists longer than MAXIMUM DESCRIPTOR LIST LENGTH, or
    // reaching past the parameter data sent, are a PARAMETER LIST LENGTH ERROR.
    let listed = tgt_len as u64 + seg_len as u64;
    if listed > u64::from(MAX_DESCRIPTOR_LIST_LENGTH)
        || HEADER as u64 + listed + inline_len as u64 > data.len() as u64
    {
        return Err(Sense::parameter_list_length_error());
    }
    if inline_len != 0 {
        return Err(Sense::invalid_field_in_parameter_list(12, None));
    }

    // Target descriptors: count them, then their type codes, then their fields.
    let targets_area = &data[HEADER..HEADER + tgt_len];
    let mut starts = Vec::new();
    let mut at = 0;
    while at < targets_area.len() {
        starts.push(at);
        if starts.len() > usize::from(MAX_TARGET_DESCRIPTORS) {
            return Err(illegal(0x26, 0x06)); // TOO MANY TARGET DESCRIPTORS
        }
        let code = targets_area[at];
        at += if TGT_LONG.contains(&code) {
            2 * TARGET_DESCRIPTOR
        } else {
            TARGET_DESCRIPTOR
        };
    }
    if at != targets_area.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let segments_area = &data[HEADER + tgt_len..HEADER + tgt_len + seg_len];
    let mut seg_starts = Vec::new();
    let mut at = 0;
    while at < segments_area.len() {
        if at + 4 > segments_area.len() {
            return Err(Sense::parameter_list_length_error());
        }
        seg_starts.push(at);
        if seg_starts.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(illegal(0x26, 0x08)); // TOO MANY SEGMENT DESCRIPTORS
        }
        at += 4 + be16(segments_area, at + 2);
    }
    if at != segments_area.len() {
        return Err(Sense::parameter_list_length_error());
    }
    for &s in &starts {
        if targets_area[s] != TGT_IDENTIFICATION {
            let pointer = (HEADER + s) as u16;
            // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
            return Err(with_pointer(illegal(0x26, 0x07), pointer));
        }
    }
    for &s in &seg_starts {
        if segments_area[s] != SEG_BLOCK_TO_BLOCK {
            let pointer = (HEADER + tgt_len + s) as u16;
            // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
            return Err(with_pointer(illegal(0x26, 0x09), pointer));
        }
    }

    let targets = starts
        .iter()
        .map(|&s| target(&targets_area[s..s + TARGET_DESCRIPTOR], HEADER + s))
        .collect::<Result<Vec<_>, _>>()?;
    let segments = seg_starts
        .iter()
        .map(|&s| {
            let base = HEADER + tgt_len + s;
            segment(&segments_area[s..], base, targets.len())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CopyList {
        list_id,
        keep_status: usage == 0b00 || usage == 0b10,
        targets,
        segments,
    })
}

fn with_pointer(mut s: Sense, byte: u16) -> Sense {
    s.field_pointer = Some(super::FieldPointer {
        in_cdb: false,
        byte,
        bit: None,
    });
    s
}

/// An identification descriptor target descriptor (SPC-4 6.4.6.5) at `base` of the list.
fn target(d: &[u8], base: usize) -> Result<CopyTarget, Sense> {
    let field = |byte: usize, bit: Option<u8>| {
        Sense::invalid_field_in_parameter_list((base + byte) as u16, bit)
    };
    // LU ID TYPE (byte 1 bits 7-6): only 00b, the designator names the LU itself (the
    // proxy token 01b is not supported, 10b and 11b are reserved in SPC-3).
    if d[1] >> 6 != 0 {
        return Err(field(1, Some(7)));
    }
    // NUL (bit 5): a null target, which the copy manager does not provide (SPC-3).
    if d[1] & 0x20 != 0 {
        return Err(copy_target_not_reachable());
    }
    // PERIPHERAL DEVICE TYPE: block devices only.
    if d[1] & 0x1F != 0 {
        return Err(incorrect_copy_target_type());
    }
    // The designation descriptor (bytes 4..28, SPC-4 7.8.6.1): NAA (3h), association LU
    // (0), binary; any other designator names nothing the copy manager knows.
    let association = (d[5] >> 4) & 0x03;
    let designator_type = d[5] & 0x0F;
    let len = usize::from(d[7]);
    if len > 20 {
        return Err(field(7, None));
    }
    if designator_type != 0x03 || association != 0 {
        return Err(copy_target_not_reachable());
    }
    // Block device parameters (SPC-4 6.4.6.1 table 118): PAD and DISK BLOCK LENGTH.
    let block_size = u32::from_be_bytes([0, d[29], d[30], d[31]]);
    Ok(CopyTarget {
        naa: d[8..8 + len].to_vec(),
        block_size,
    })
}

/// A block device to block device segment descriptor (SPC-4 6.4.5.5) at `base`.
fn segment(d: &[u8], base: usize, targets: usize) -> Result<Segment, Sense> {
    if d.len() < B2B_SEGMENT_DESCRIPTOR || be16(d, 2) != B2B_SEGMENT_DESCRIPTOR - 4 {
        return Err(Sense::invalid_field_in_parameter_list(
            (base + 2) as u16,
            None,
        ));
    }
    let source = be16(d, 4);
    let destination = be16(d, 6);
    // An index past the target descriptor list names no copy target (libiscsi and
    // SPC-4 6.4.5.1: COPY ABORTED).
    if source >= targets || destination >= targets {
        return Err(copy_target_not_reachable());
    }
    Ok(Segment {
        source,
        destination,
        blocks: u16::from_be_bytes([d[10], d[11]]),
        destination_count: d[1] & 0x02 != 0,
        source_lba: be64(d, 12),
        destination_lba: be64(d, 20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAA: [u8; 16] = [0x62, 0x54, 0x4C, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

    fn target_descriptor(code: u8, byte1: u8) -> Vec<u8> {
        let mut d = vec![0u8; TARGET_DESCRIPTOR];
        d[0] = code;
        d[1] = byte1;
        d[4] = 0x01; // binary
        d[5] = 0x03; // association LU, NAA
        d[7] = NAA.len() as u8;
        d[8..24].copy_from_slice(&NAA);
        d[29..32].copy_from_slice(&[0, 0x02, 0x00]); // 512-byte blocks
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, from: u64, to: u64) -> Vec<u8> {
        let mut d = vec![0u8; B2B_SEGMENT_DESCRIPTOR];
        d[0] = SEG_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&24u16.to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&from.to_be_bytes());
        d[20..28].copy_from_slice(&to.to_be_bytes());
        d
    }

    fn list(usage: u8, id: u8, targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
        let t: Vec<u8> = targets.concat();
        let s: Vec<u8> = segments.concat();
        let mut d = vec![0u8; HEADER];
        d[0] = id;
        d[1] = usage << 3;
        d[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
        d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend_from_slice(&t);
        d.extend_from_slice(&s);
        d
    }

    fn asc(r: Result<CopyList, Sense>) -> (u8, u8, u8) {
        let s = r.expect_err("refused");
        (s.key, s.asc, s.ascq)
    }

    #[test]
    fn a_block_to_block_list_reads_back_as_sent() {
        let d = list(
            0b10,
            9,
            &[target_descriptor(0xE4, 0)],
            &[b2b(0, 0, 16, 3, 100)],
        );
        let l = parse_copy_list(&d).expect("valid list");
        assert_eq!(l.list_id, 9);
        assert!(l.keep_status);
        assert_eq!(l.targets[0].naa, NAA);
        assert_eq!(l.targets[0].block_size, 512);
        assert_eq!(
            l.segments[0],
            Segment {
                source: 0,
                destination: 0,
                blocks: 16,
                destination_count: false,
                source_lba: 3,
                destination_lba: 100
            }
        );
        assert_eq!(l.segments[0].bytes(512, 4096), 16 * 512);
        // LIST ID USAGE 11b keeps nothing.
        let d = list(0b11, 0, &[target_descriptor(0xE4, 0)], &[]);
        assert!(!parse_copy_list(&d).expect("valid").keep_status);
    }

    #[test]
    fn each_bad_list_gets_its_own_sense() {
        let t = target_descriptor(0xE4, 0);
        let seg = b2b(0, 0, 1, 0, 1);
        let good = list(0, 1, std::slice::from_ref(&t), std::slice::from_ref(&seg));
        // Cut short anywhere: PARAMETER LIST LENGTH ERROR.
        for n in [0, 15, 16 + 31, good.len() - 1] {
            assert_eq!(asc(parse_copy_list(&good[..n])), (5, 0x1A, 0));
        }
        let many_targets = vec![t.clone(); MAX_TARGET_DESCRIPTORS as usize + 1];
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                &many_targets,
                std::slice::from_ref(&seg)
            ))),
            (5, 0x26, 0x06)
        );
        let many_segments = vec![seg.clone(); MAX_SEGMENT_DESCRIPTORS as usize + 1];
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                std::slice::from_ref(&t),
                &many_segments
            ))),
            (5, 0x26, 0x08)
        );
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                &[target_descriptor(0xE0, 0)],
                std::slice::from_ref(&seg)
            ))),
            (5, 0x26, 0x07)
        );
        let mut stream = vec![0u8; 20];
        stream[0] = 0x03;
        stream[3] = 16;
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                std::slice::from_ref(&t),
                &[stream]
            ))),
            (5, 0x26, 0x09)
        );
        // A reserved LU ID TYPE; the NUL bit; an index past the targets.
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                &[target_descriptor(0xE4, 0x80)],
                std::slice::from_ref(&seg)
            ))),
            (5, 0x26, 0)
        );
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                &[target_descriptor(0xE4, 0x20)],
                std::slice::from_ref(&seg)
            ))),
            (COPY_ABORTED, 0x0D, 0x02)
        );
        assert_eq!(
            asc(parse_copy_list(&list(
                0,
                1,
                std::slice::from_ref(&t),
                &[b2b(0, 1, 1, 0, 1)]
            ))),
            (COPY_ABORTED, 0x0D, 0x02)
        );
        // Reserved LIST ID USAGE 01b.
        assert_eq!(
            asc(parse_copy_list(&list(0b01, 1, &[t], &[seg]))),
            (5, 0x26, 0)
        );
    }

    #[test]
    fn copy_results_pages() {
        let op = operating_parameters();
        assert_eq!(
            u32::from_be_bytes(op[0..4].try_into().unwrap()) as usize,
            op.len() - 4
        );
        assert_eq!(u16::from_be_bytes([op[8], op[9]]), MAX_TARGET_DESCRIPTORS);
        assert_eq!(&op[44..], &[0x02, 0xE4]);
        let r = copy_status_data(None, 1024);
        assert_eq!(r.sense.map(|s| (s.key, s.asc)), Some((5, 0x24)));
        let r = copy_status_data(
            Some(CopyOutcome {
                ok: true,
                segments_processed: 2,
                bytes: 4096,
            }),
            1024,
        );
        assert_eq!(r.data, [0, 0, 0, 8, 1, 0, 2, 0, 0, 0, 0x10, 0]);
    }
}
