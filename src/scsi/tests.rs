//! Table tests for every command, in memory, and a proptest that no CDB makes `plan` panic.

use proptest::prelude::*;

use super::cdb::cdb_len;
use super::opcodes::COMMANDS;
use super::*;

const BLOCKS: u64 = 1000;

fn cfg() -> LuConfig {
    LuConfig {
        block_size: 512,
        num_blocks: BLOCKS,
        read_only: false,
        id: 0x1234,
        name: "vol0".into(),
        thick: false,
        sanitize: false,
    }
}

fn lu() -> LogicalUnit {
    LogicalUnit::new(cfg())
}

fn ro_lu() -> LogicalUnit {
    LogicalUnit::new(LuConfig {
        read_only: true,
        ..cfg()
    })
}

const LUNS: &[u64] = &[0, 1, 300];

fn run(cdb: &[u8], lu: &LogicalUnit) -> Plan {
    let mut ua = UnitAttentions::default();
    plan(
        cdb,
        Context {
            lu: Some(lu),
            luns: LUNS,
            ua: Some(&mut ua),
        },
    )
}

fn run_ua(cdb: &[u8], lu: &LogicalUnit, ua: &mut UnitAttentions) -> Plan {
    plan(
        cdb,
        Context {
            lu: Some(lu),
            luns: LUNS,
            ua: Some(ua),
        },
    )
}

fn run_unmapped(cdb: &[u8]) -> Plan {
    plan(
        cdb,
        Context {
            lu: None,
            luns: LUNS,
            ua: None,
        },
    )
}

fn resp(p: Plan) -> Response {
    match p {
        Plan::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Data of a GOOD response.
fn good(p: Plan) -> Vec<u8> {
    let r = resp(p);
    assert_eq!(r.status, Status::Good, "sense {:?}", r.sense);
    assert!(r.sense.is_none());
    r.data
}

/// Sense of a CHECK CONDITION response.
fn sense(p: Plan) -> Sense {
    let r = resp(p);
    assert_eq!(r.status, Status::CheckCondition);
    assert!(r.data.is_empty());
    r.sense.expect("check condition carries sense")
}

fn kcq(p: Plan) -> (u8, u8, u8) {
    let s = sense(p);
    (s.key, s.asc, s.ascq)
}

const INVALID_FIELD: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x24, 0x00);
const INVALID_OPCODE: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x20, 0x00);
const LBA_OOB: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x21, 0x00);
const LU_NOT_SUPPORTED: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x25, 0x00);
const WRITE_PROTECTED: (u8, u8, u8) = (key::DATA_PROTECT, 0x27, 0x00);

/// A CHECK CONDITION plan with exactly this sense.
fn check_sense(s: Sense) -> Plan {
    Plan::Respond(Response::check(s))
}
const INVALID_PARAM: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x26, 0x00);
const PARAM_LEN: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x1A, 0x00);

fn cdb10(opcode: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = opcode;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb12(opcode: u8, b1: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = opcode;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(opcode: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![op::INQUIRY, u8::from(evpd), page, a[0], a[1], 0]
}

// ---------------------------------------------------------------- sense data

#[test]
fn fixed_sense_invalid_field_with_pointer() {
    let b = Sense::invalid_field_in_cdb(2).to_fixed();
    assert_eq!(
        b,
        vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0, 0, 2]
    );
    let b = Sense::invalid_field_in_cdb_bit(1, 7).to_fixed();
    assert_eq!(&b[15..18], &[0xCF, 0, 1]);
    let b = Sense::invalid_field_in_parameter_list(300, Some(3)).to_fixed();
    assert_eq!(b[12], 0x26);
    assert_eq!(&b[15..18], &[0x8B, 0x01, 0x2C]);
}

#[test]
fn fixed_sense_information_and_valid_bit() {
    let b = Sense::miscompare(100).to_fixed();
    assert_eq!(b.len(), FIXED_SENSE_LEN);
    assert_eq!(b[0], 0xF0);
    assert_eq!(b[2], key::MISCOMPARE);
    assert_eq!(&b[3..7], &100u32.to_be_bytes());
    assert_eq!((b[12], b[13]), (0x1D, 0x00));
    // Too big for the fixed format: VALID stays clear.
    let b = Sense::miscompare(1 << 40).to_fixed();
    assert_eq!(b[0], 0x70);
    assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    // No information, no pointer.
    let b = Sense::write_protected().to_fixed();
    assert_eq!(b[0], 0x70);
    assert_eq!((b[2], b[12], b[13], b[15]), (7, 0x27, 0, 0));
}

#[test]
fn descriptor_sense() {
    let b = Sense::miscompare(1 << 40).to_descriptor();
    assert_eq!(&b[0..4], &[0x72, 0x0E, 0x1D, 0x00]);
    assert_eq!(usize::from(b[7]), b.len() - 8);
    assert_eq!(&b[8..12], &[0x00, 0x0A, 0x80, 0x00]);
    assert_eq!(&b[12..20], &(1u64 << 40).to_be_bytes());
    let b = Sense::invalid_field_in_cdb(4).to_descriptor();
    assert_eq!(&b[8..16], &[0x02, 0x06, 0, 0, 0xC0, 0, 4, 0]);
    assert_eq!(
        Sense::no_sense().to_descriptor(),
        vec![0x72, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn sense_display() {
    assert_eq!(
        Sense::invalid_field_in_cdb(1).to_string(),
        "ILLEGAL REQUEST 24h/00h"
    );
    assert_eq!(
        Sense::capacity_changed().to_string(),
        "UNIT ATTENTION 2Ah/09h"
    );
    assert_eq!(Sense::new(0x0D, 1, 2).to_string(), "OTHER 01h/02h");
}

#[test]
fn sense_constructors() {
    assert_eq!(
        (Sense::medium_error().key, Sense::medium_error().asc),
        (key::MEDIUM_ERROR, 0x11)
    );
    assert_eq!(Sense::invalid_opcode(), Sense::new(5, 0x20, 0));
    assert!(Sense::power_on().is_unit_attention());
    assert_eq!(Sense::capacity_changed().ascq, 0x09);
    assert_eq!(Sense::reported_luns_changed().asc, 0x3F);
    assert_eq!(Sense::mode_parameters_changed().ascq, 0x01);
}

// ---------------------------------------------------------------- dispatch

#[test]
fn test_unit_ready() {
    assert!(good(run(&[0, 0, 0, 0, 0, 0], &lu())).is_empty());
}

#[test]
fn unknown_and_malformed_cdbs() {
    let lu = lu();
    assert_eq!(kcq(run(&[], &lu)), INVALID_OPCODE);
    assert_eq!(kcq(run(&[0x02, 0, 0, 0, 0, 0], &lu)), INVALID_OPCODE);
    assert_eq!(kcq(run(&[0xFF; 16], &lu)), INVALID_OPCODE);
    assert_eq!(kcq(run(&[0x7F; 16], &lu)), INVALID_OPCODE);
    // READ ATTRIBUTE is not supported.
    assert_eq!(kcq(run(&cdb16(0x8C, 0, 0, 1), &lu)), INVALID_OPCODE);
    // A CDB shorter than its group's length.
    let s = sense(run(&[op::READ_10, 0, 0, 0, 0], &lu));
    assert_eq!((s.key, s.asc), (key::ILLEGAL_REQUEST, 0x24));
    // NACA set in the CONTROL byte.
    let mut c = cdb10(op::READ_10, 0, 0, 1);
    c[9] = 0x04;
    let s = sense(run(&c, &lu));
    assert_eq!(
        s.field_pointer,
        Some(FieldPointer {
            in_cdb: true,
            byte: 9,
            bit: Some(2)
        })
    );
    // Longer CDBs (iSCSI pads to 16 bytes) are fine.
    let mut c = cdb10(op::READ_10, 0, 0, 1);
    c.extend_from_slice(&[0xAA; 6]);
    assert_eq!(
        run(&c, &lu),
        Plan::Read {
            lba: 0,
            blocks: 1,
            fua: false
        }
    );
}

#[test]
fn trivial_commands_are_good() {
    let lu = lu();
    for c in [
        vec![op::START_STOP_UNIT, 0, 0, 0, 1, 0],
        vec![op::START_STOP_UNIT, 1, 0, 0, 0, 0],
        vec![op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0],
        vec![op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0],
    ] {
        assert!(good(run(&c, &lu)).is_empty(), "{c:?}");
    }
}

#[test]
fn reserve_release_6_from_one_nexus() {
    let lu = lu();
    assert!(good(run(&[op::RESERVE_6, 0, 0, 0, 0, 0], &lu)).is_empty());
    // The holder may reserve again and keeps every command.
    assert!(good(run(&[op::RESERVE_6, 0, 0, 0, 0, 0], &lu)).is_empty());
    assert!(good(run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &lu)).is_empty());
    assert!(good(run(&[op::RELEASE_6, 0, 0, 0, 0, 0], &lu)).is_empty());
}

#[test]
fn unsupported_service_actions() {
    let lu = lu();
    // GET LBA STATUS (9Eh/12h) is supported; READ LONG(16) (9Eh/11h) is not.
    let mut c = cdb16(op::SERVICE_ACTION_IN_16, 0x11, 0, 32);
    c[10..14].copy_from_slice(&32u32.to_be_bytes());
    assert_eq!(kcq(run(&c, &lu)), INVALID_FIELD);
    // REPORT IDENTIFYING INFORMATION (A3h/05h).
    let c = [op::MAINTENANCE_IN, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    assert_eq!(kcq(run(&c, &lu)), INVALID_FIELD);
}

// ---------------------------------------------------------------- unit attentions

#[test]
fn unit_attention_reported_once_then_cleared() {
    let lu = lu();
    let mut ua = UnitAttentions::power_on();
    let tur = [0u8; 6];
    let s = sense(run_ua(&tur, &lu, &mut ua));
    assert_eq!((s.key, s.asc, s.ascq), (key::UNIT_ATTENTION, 0x29, 0x00));
    assert!(ua.is_empty());
    assert!(good(run_ua(&tur, &lu, &mut ua)).is_empty());
}

#[test]
fn unit_attention_preempts_even_unknown_opcodes_and_reads() {
    let lu = lu();
    let mut ua = UnitAttentions::default();
    ua.push(Sense::capacity_changed());
    ua.push(Sense::mode_parameters_changed());
    assert_eq!(
        kcq(run_ua(&[0x02, 0, 0, 0, 0, 0], &lu, &mut ua)),
        (key::UNIT_ATTENTION, 0x2A, 0x09)
    );
    assert_eq!(
        kcq(run_ua(&cdb10(op::READ_10, 0, 0, 1), &lu, &mut ua)),
        (key::UNIT_ATTENTION, 0x2A, 0x01)
    );
    assert_eq!(
        run_ua(&cdb10(op::READ_10, 0, 0, 1), &lu, &mut ua),
        Plan::Read {
            lba: 0,
            blocks: 1,
            fua: false
        }
    );
}

#[test]
fn inquiry_report_luns_request_sense_ignore_ua() {
    let lu = lu();
    let mut ua = UnitAttentions::power_on();
    good(run_ua(&inquiry(false, 0, 96), &lu, &mut ua));
    good(run_ua(
        &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &lu,
        &mut ua,
    ));
    assert_eq!(ua.len(), 1);
    // REQUEST SENSE returns it as data and clears it.
    let d = good(run_ua(&[op::REQUEST_SENSE, 0, 0, 0, 252, 0], &lu, &mut ua));
    assert_eq!(d, Sense::power_on().to_fixed());
    assert!(ua.is_empty());
    // Nothing pending: NO SENSE.
    let d = good(run_ua(&[op::REQUEST_SENSE, 0, 0, 0, 252, 0], &lu, &mut ua));
    assert_eq!(d, Sense::no_sense().to_fixed());
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
}

#[test]
fn request_sense_descriptor_and_alloc() {
    let lu = lu();
    let mut ua = UnitAttentions::power_on();
    let d = good(run_ua(&[op::REQUEST_SENSE, 1, 0, 0, 252, 0], &lu, &mut ua));
    assert_eq!(&d[..4], &[0x72, key::UNIT_ATTENTION, 0x29, 0x00]);
    ua.push(Sense::power_on());
    let d = good(run_ua(&[op::REQUEST_SENSE, 0, 0, 0, 8, 0], &lu, &mut ua));
    assert_eq!(d.len(), 8);
    assert!(
        ua.is_empty(),
        "REQUEST SENSE clears even when the data is cut"
    );
}

#[test]
fn report_luns_clears_luns_changed_only() {
    let lu = lu();
    let mut ua = UnitAttentions::default();
    ua.push(Sense::reported_luns_changed());
    ua.push(Sense::power_on());
    good(run_ua(
        &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &lu,
        &mut ua,
    ));
    assert_eq!(ua.len(), 1);
    assert_eq!(ua.peek(), Some(&Sense::power_on()));
}

#[test]
fn reset_unit_attention_supersedes_pending_ones() {
    let mut ua = UnitAttentions::default();
    ua.push(Sense::capacity_changed());
    ua.push(Sense::mode_parameters_changed());
    ua.push(Sense::it_nexus_loss());
    assert_eq!(ua.len(), 1);
    ua.push(Sense::reported_luns_changed());
    assert_eq!(ua.pop(), Some(Sense::it_nexus_loss()));
    assert_eq!(ua.pop(), Some(Sense::reported_luns_changed()));
}

#[test]
fn io_errors_map_to_sense() {
    use std::io::Error;
    let enospc = Error::from_raw_os_error(libc::ENOSPC);
    assert_eq!(
        Sense::from_io_error(&enospc, true),
        Sense::space_allocation_failed()
    );
    let erofs = Error::from_raw_os_error(libc::EROFS);
    assert_eq!(Sense::from_io_error(&erofs, true), Sense::write_protected());
    let eio = Error::from_raw_os_error(libc::EIO);
    assert_eq!(Sense::from_io_error(&eio, true), Sense::write_error());
    assert_eq!(Sense::from_io_error(&eio, false), Sense::medium_error());
    let other = Error::other("engine gone");
    assert_eq!(Sense::from_io_error(&other, false), Sense::medium_error());
}

#[test]
fn unit_attention_queue_dedups_and_is_bounded() {
    let mut ua = UnitAttentions::power_on();
    ua.push(Sense::power_on());
    assert_eq!(ua.len(), 1);
    for i in 0..40u8 {
        ua.push(Sense::new(key::UNIT_ATTENTION, 0x2A, i));
    }
    assert!(ua.len() <= 16);
    ua.clear();
    assert_eq!(ua.pop(), None);
}

// ---------------------------------------------------------------- unmapped LUN

#[test]
fn unmapped_lun() {
    let d = good(run_unmapped(&inquiry(false, 0, 255)));
    assert_eq!(d[0], 0x7F, "peripheral qualifier 011b, type 1Fh");
    assert_eq!(d.len(), 96);
    let d = good(run_unmapped(&[
        op::REPORT_LUNS,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
    ]));
    assert_eq!(&d[0..4], &24u32.to_be_bytes());
    let d = good(run_unmapped(&[op::REQUEST_SENSE, 0, 0, 0, 18, 0]));
    assert_eq!((d[2], d[12], d[13]), (key::ILLEGAL_REQUEST, 0x25, 0x00));
    assert_eq!(kcq(run_unmapped(&[0u8; 6])), LU_NOT_SUPPORTED);
    assert_eq!(
        kcq(run_unmapped(&cdb10(op::READ_10, 0, 0, 1))),
        LU_NOT_SUPPORTED
    );
    assert_eq!(kcq(run_unmapped(&[0xFF; 16])), LU_NOT_SUPPORTED);
    assert_eq!(kcq(run_unmapped(&inquiry(true, 0, 255))), LU_NOT_SUPPORTED);
}

// ---------------------------------------------------------------- INQUIRY

#[test]
fn standard_inquiry() {
    let d = good(run(&inquiry(false, 0, 260), &lu()));
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0x00, "qualifier 0, direct access");
    assert_eq!(d[1] & 0x80, 0, "not removable");
    assert!((4..=6).contains(&d[2]), "version libiscsi accepts");
    assert_eq!(d[3] & 0x0F, 2, "response data format");
    assert_eq!(d[3] & 0x10, 0x10, "HISUP");
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[5] & 0x01, 0, "no PROTECT");
    assert_eq!(d[7] & 0x02, 0x02, "CMDQUE");
    assert_eq!(&d[8..16], b"TWINLUN ");
    assert!(d[8..36].iter().all(|&c| (0x20..0x7F).contains(&c)));
    let descriptors: Vec<u16> = (0..8)
        .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
        .collect();
    assert!(descriptors.contains(&0x04C0), "SBC-3");
    assert!(descriptors.contains(&0x0460), "SPC-4");
}

#[test]
fn inquiry_alloc_lengths() {
    let lu = lu();
    let full = good(run(&inquiry(false, 0, 1024), &lu));
    for alloc in 0..=260u16 {
        let d = good(run(&inquiry(false, 0, alloc), &lu));
        let n = usize::from(alloc).min(full.len());
        assert_eq!(d, full[..n].to_vec(), "alloc {alloc}");
    }
}

#[test]
fn inquiry_invalid_fields() {
    let lu = lu();
    let s = sense(run(&inquiry(false, 1, 256), &lu));
    assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x24, Some(2)));
    assert_eq!(kcq(run(&inquiry(true, 0x99, 256), &lu)), INVALID_FIELD);
    assert_eq!(
        kcq(run(&[op::INQUIRY, 0x02, 0, 0, 255, 0], &lu)),
        INVALID_FIELD
    );
}

fn vpd(page: u8, lu: &LogicalUnit) -> Vec<u8> {
    let d = good(run(&inquiry(true, page, 1024), lu));
    assert_eq!(d[0], 0x00);
    assert_eq!(d[1], page);
    assert_eq!(
        usize::from(u16::from_be_bytes([d[2], d[3]])),
        d.len() - 4,
        "page {page:#x}"
    );
    d
}

#[test]
fn vpd_supported_pages_all_readable() {
    let lu = lu();
    let d = vpd(0x00, &lu);
    let pages = &d[4..];
    assert_eq!(pages, &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    for &p in pages {
        vpd(p, &lu);
        // and with the alloc length libiscsi uses
        let d = good(run(&inquiry(true, p, 255), &lu));
        assert!(d.len() <= 255);
    }
}

#[test]
fn vpd_unit_serial() {
    let d = vpd(0x80, &lu());
    assert_eq!(&d[4..], b"0000000000001234");
}

/// (code set, piv/assoc/type, designator) of every descriptor of page 83h.
fn designators(d: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= d.len() {
        let len = usize::from(d[at + 3]);
        out.push((d[at], d[at + 1], d[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    assert_eq!(at, d.len());
    out
}

#[test]
fn vpd_device_identification() {
    let d = vpd(0x83, &lu());
    let ds = designators(&d);
    let naa = ds
        .iter()
        .find(|(_, t, _)| *t == 0x03)
        .expect("NAA designator");
    assert_eq!(naa.0, 0x01, "binary");
    assert_eq!(naa.2.len(), 16);
    assert_eq!(naa.2[0] >> 4, 6, "NAA 6");
    assert_eq!(naa.2.as_slice(), naa_designator(0x1234).as_slice());
    assert_ne!(naa_designator(0x1234), naa_designator(0x1235));
    // Stable: the same id on another LU object gives the same page.
    assert_eq!(vpd(0x83, &lu()), d);
    let t10 = ds
        .iter()
        .find(|(_, t, _)| *t == 0x01)
        .expect("T10 vendor id designator");
    assert_eq!(t10.0, 0x02, "ASCII");
    assert_eq!(t10.2.as_slice(), b"TWINLUN vol0");
    let port = ds
        .iter()
        .find(|(_, t, _)| *t & 0x3F == 0x14)
        .expect("relative target port");
    assert_eq!(port.2, vec![0, 0, 0, 1]);
}

#[test]
fn vpd_device_identification_odd_names() {
    let unnamed = LogicalUnit::new(LuConfig {
        name: String::new(),
        ..cfg()
    });
    let ds = designators(&vpd(0x83, &unnamed));
    let t10 = ds
        .iter()
        .find(|(_, t, _)| *t == 0x01)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(t10.2.as_slice(), b"TWINLUN 0000000000001234");
    let long = LogicalUnit::new(LuConfig {
        name: "é".repeat(400),
        ..cfg()
    });
    let ds = designators(&vpd(0x83, &long));
    let t10 = ds
        .iter()
        .find(|(_, t, _)| *t == 0x01)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(t10.2.len(), 208);
    assert!(t10.2.iter().all(|c| (0x20..0x7F).contains(c)));
}

#[test]
fn vpd_block_limits() {
    let d = vpd(0xB0, &lu());
    assert_eq!(d[3], 0x3C);
    assert_eq!(
        u16::from_be_bytes([d[6], d[7]]),
        8,
        "4 KiB granularity at 512 bytes"
    );
    let max = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    assert_eq!(max, MAX_TRANSFER_BYTES / 512);
    assert_eq!(max, lu().max_transfer_blocks());
    assert_eq!(d[4] & 0x01, 0x00, "WSNZ 0");
    let be32 = |at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    assert_eq!(be32(20), 1 << 20, "MAXIMUM UNMAP LBA COUNT");
    assert_eq!(be32(24), 256, "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT");
    assert_eq!(be32(28), 8, "OPTIMAL UNMAP GRANULARITY: 4 KiB");
    assert_eq!(be32(32), 0x8000_0000, "UGAVALID, alignment 0");
    assert_eq!(
        u64::from_be_bytes(d[36..44].try_into().unwrap()),
        65535,
        "MAXIMUM WRITE SAME LENGTH"
    );
    let big = LogicalUnit::new(LuConfig {
        block_size: 4096,
        ..cfg()
    });
    let d = vpd(0xB0, &big);
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 1);
}

#[test]
fn vpd_block_characteristics_and_provisioning() {
    let d = vpd(0xB1, &lu());
    assert_eq!(d[3], 0x3C);
    assert_eq!(&d[4..6], &[0x00, 0x01], "non-rotating");
    let d = vpd(0xB2, &lu());
    assert_eq!(d.len(), 8);
    assert_eq!(d[5] & 0xE0, 0xE0, "LBPU LBPWS LBPWS10 on");
    assert_eq!((d[5] >> 2) & 0x07, 0x01, "LBPRZ");
    assert_eq!(d[5] & 0x03, 0, "no ANC_SUP, no DP");
    assert_eq!(d[6] & 0x07, 0x02, "thin provisioned");
    // 4096-byte LUNs do not report LBPRZ (QEMU 7.2 aborts on them if they do).
    let big = LogicalUnit::new(LuConfig {
        block_size: 4096,
        ..cfg()
    });
    assert_eq!(vpd(0xB2, &big)[5], 0xE0);
    assert_eq!(good(run(&rc16(32), &big))[14], 0x80);
}

// ---------------------------------------------------------------- READ CAPACITY

#[test]
fn read_capacity_10() {
    let lu = lu();
    let d = good(run(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &lu));
    assert_eq!(d, vec![0, 0, 0x03, 0xE7, 0, 0, 0x02, 0x00]);
    // LBA without PMI.
    assert_eq!(
        kcq(run(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0], &lu)),
        INVALID_FIELD
    );
    // PMI set: same answer.
    let d2 = good(run(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &lu));
    assert_eq!(d2, d);
    let huge = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 33,
        ..cfg()
    });
    let d = good(run(
        &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &huge,
    ));
    assert_eq!(&d[0..4], &[0xFF; 4]);
    // Exactly 2^32 blocks: last LBA FFFFFFFFh also reads as "use READ CAPACITY(16)".
    let edge = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 32,
        ..cfg()
    });
    let d = good(run(
        &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &edge,
    ));
    assert_eq!(&d[0..4], &[0xFF; 4]);
}

fn rc16(alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn read_capacity_16() {
    let lu = lu();
    let d = good(run(&rc16(32), &lu));
    assert_eq!(d.len(), 32);
    assert_eq!(&d[0..8], &999u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(
        &d[12..14],
        &[0, 3],
        "no PI, 8 logical blocks per physical block"
    );
    assert_eq!(d[14], 0xC0, "LBPME, LBPRZ, lowest aligned LBA 0");
    assert_eq!(&d[15..32], &[0; 17]);
    for alloc in 0..40u32 {
        let d = good(run(&rc16(alloc), &lu));
        assert_eq!(d.len(), (alloc as usize).min(32));
    }
    let huge = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 33,
        ..cfg()
    });
    let d = good(run(&rc16(32), &huge));
    assert_eq!(&d[0..8], &((1u64 << 33) - 1).to_be_bytes());
}

#[test]
fn resize_is_seen_by_read_capacity_and_range_checks() {
    let lu = lu();
    lu.set_num_blocks(2000);
    let d = good(run(&rc16(32), &lu));
    assert_eq!(&d[0..8], &1999u64.to_be_bytes());
    assert!(matches!(
        run(&cdb10(op::READ_10, 0, 1500, 1), &lu),
        Plan::Read { .. }
    ));
}

// ---------------------------------------------------------------- READ / WRITE

#[test]
fn read_variants_decode() {
    let lu = lu();
    let r = |lba, blocks, fua| Plan::Read { lba, blocks, fua };
    assert_eq!(run(&cdb10(op::READ_10, 0, 5, 8), &lu), r(5, 8, false));
    assert_eq!(run(&cdb10(op::READ_10, 0x08, 5, 8), &lu), r(5, 8, true));
    assert_eq!(
        run(&cdb10(op::READ_10, 0x10, 5, 8), &lu),
        r(5, 8, false),
        "DPO accepted"
    );
    assert_eq!(run(&cdb10(op::READ_10, 0x18, 5, 8), &lu), r(5, 8, true));
    assert_eq!(run(&cdb12(op::READ_12, 0x08, 7, 9), &lu), r(7, 9, true));
    assert_eq!(run(&cdb16(op::READ_16, 0, 999, 1), &lu), r(999, 1, false));
    // READ(6): 21-bit LBA, 0 means 256 blocks.
    assert_eq!(run(&[op::READ_6, 0, 0, 10, 4, 0], &lu), r(10, 4, false));
    assert_eq!(run(&[op::READ_6, 0, 0, 0, 0, 0], &lu), r(0, 256, false));
    assert_eq!(
        run(&[op::READ_6, 0xE0, 0, 1, 1, 0], &lu),
        r(1, 1, false),
        "top bits of byte 1 ignored"
    );
    let big = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 22,
        ..cfg()
    });
    assert_eq!(
        run(&[op::READ_6, 0x1F, 0xFF, 0xFF, 1, 0], &big),
        r(0x1F_FFFF, 1, false)
    );
}

#[test]
fn read_zero_blocks() {
    let lu = lu();
    assert!(good(run(&cdb10(op::READ_10, 0, 0, 0), &lu)).is_empty());
    assert!(good(run(&cdb12(op::READ_12, 0, 999, 0), &lu)).is_empty());
    assert!(good(run(&cdb16(op::READ_16, 0, 0, 0), &lu)).is_empty());
    // The LBA is still checked (libiscsi Read10.ZeroBlocks).
    assert_eq!(kcq(run(&cdb10(op::READ_10, 0, 1001, 0), &lu)), LBA_OOB);
    assert_eq!(kcq(run(&cdb10(op::READ_10, 0, 1000, 0), &lu)), LBA_OOB);
    assert_eq!(
        kcq(run(&cdb10(op::READ_10, 0, 0x8000_0000, 0), &lu)),
        LBA_OOB
    );
    assert_eq!(kcq(run(&cdb10(op::READ_10, 0, u32::MAX, 0), &lu)), LBA_OOB);
    assert_eq!(kcq(run(&cdb16(op::READ_16, 0, u64::MAX, 0), &lu)), LBA_OOB);
}

#[test]
fn read_beyond_end() {
    let lu = lu();
    for i in 1..=256u32 {
        let lba = BLOCKS + 1 - u64::from(i);
        assert_eq!(
            kcq(run(&cdb10(op::READ_10, 0, lba as u32, i as u16), &lu)),
            LBA_OOB
        );
        assert_eq!(
            kcq(run(&cdb12(op::READ_12, 0, lba as u32, i), &lu)),
            LBA_OOB
        );
        assert_eq!(kcq(run(&cdb16(op::READ_16, 0, lba, i), &lu)), LBA_OOB);
        assert_eq!(kcq(run(&cdb16(op::READ_16, 0, 1 << 63, i), &lu)), LBA_OOB);
        assert_eq!(kcq(run(&cdb16(op::READ_16, 0, 1 << 55, i), &lu)), LBA_OOB);
        assert_eq!(kcq(run(&cdb16(op::READ_16, 0, u64::MAX, i), &lu)), LBA_OOB);
        assert_eq!(
            kcq(run(&cdb10(op::READ_10, 0, u32::MAX, i as u16), &lu)),
            LBA_OOB
        );
        if i >= 2 {
            assert_eq!(
                kcq(run(&cdb10(op::READ_10, 0, 999, i as u16), &lu)),
                LBA_OOB
            );
        }
    }
    // READ(6) at the end.
    let six = |lba: u32, n: u8| {
        let b = lba.to_be_bytes();
        vec![op::READ_6, b[1], b[2], b[3], n, 0]
    };
    assert_eq!(kcq(run(&six(999, 2), &lu)), LBA_OOB);
    assert_eq!(
        kcq(run(&six(745, 0), &lu)),
        LBA_OOB,
        "256 blocks from 745 pass the end"
    );
    assert!(matches!(
        run(&six(744, 0), &lu),
        Plan::Read { blocks: 256, .. }
    ));
}

#[test]
fn read_protect_fields_refused() {
    let lu = lu();
    for p in 1..8u8 {
        let b1 = p << 5;
        let s = sense(run(&cdb10(op::READ_10, b1, 0, 1), &lu));
        assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x24, Some(1)));
        assert_eq!(kcq(run(&cdb12(op::READ_12, b1, 0, 1), &lu)), INVALID_FIELD);
        assert_eq!(kcq(run(&cdb16(op::READ_16, b1, 0, 1), &lu)), INVALID_FIELD);
    }
}

#[test]
fn transfer_length_limit() {
    let lu = lu();
    let max = lu.max_transfer_blocks();
    let huge = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 40,
        ..cfg()
    });
    assert!(matches!(
        run(&cdb16(op::READ_16, 0, 0, max), &huge),
        Plan::Read { .. }
    ));
    let s = sense(run(&cdb16(op::READ_16, 0, 0, max + 1), &huge));
    assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x24, Some(10)));
    let s = sense(run(&cdb12(op::WRITE_12, 0, 0, max + 1), &huge));
    assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x24, Some(6)));
    assert_eq!(
        kcq(run(&cdb16(op::VERIFY_16, 0x02, 0, max + 1), &huge)),
        INVALID_FIELD
    );
    // A medium verification without data transfer has no such limit.
    assert!(matches!(
        run(&cdb16(op::VERIFY_16, 0, 0, max + 1), &huge),
        Plan::Verify { .. }
    ));
}

#[test]
fn write_variants_decode() {
    let lu = lu();
    let w = |lba, blocks, fua| Plan::Write { lba, blocks, fua };
    assert_eq!(run(&cdb10(op::WRITE_10, 0, 5, 8), &lu), w(5, 8, false));
    assert_eq!(run(&cdb10(op::WRITE_10, 0x08, 5, 8), &lu), w(5, 8, true));
    assert_eq!(run(&cdb10(op::WRITE_10, 0x18, 5, 8), &lu), w(5, 8, true));
    assert_eq!(
        run(&cdb12(op::WRITE_12, 0x10, 0, 1000), &lu),
        w(0, 1000, false)
    );
    assert_eq!(
        run(&cdb16(op::WRITE_16, 0x08, 999, 1), &lu),
        w(999, 1, true)
    );
    assert_eq!(run(&[op::WRITE_6, 0, 0, 3, 0, 0], &lu), w(3, 256, false));
}

#[test]
fn write_checks() {
    let lu = lu();
    assert!(good(run(&cdb10(op::WRITE_10, 0, 0, 0), &lu)).is_empty());
    assert!(good(run(&cdb16(op::WRITE_16, 0, 999, 0), &lu)).is_empty());
    assert_eq!(kcq(run(&cdb10(op::WRITE_10, 0, 1001, 0), &lu)), LBA_OOB);
    assert_eq!(kcq(run(&cdb10(op::WRITE_10, 0, 999, 2), &lu)), LBA_OOB);
    assert_eq!(kcq(run(&cdb16(op::WRITE_16, 0, u64::MAX, 1), &lu)), LBA_OOB);
    for p in 1..8u8 {
        assert_eq!(
            kcq(run(&cdb10(op::WRITE_10, p << 5, 0, 1), &lu)),
            INVALID_FIELD
        );
        assert_eq!(
            kcq(run(&cdb12(op::WRITE_12, p << 5, 0, 1), &lu)),
            INVALID_FIELD
        );
        assert_eq!(
            kcq(run(&cdb16(op::WRITE_16, p << 5, 0, 1), &lu)),
            INVALID_FIELD
        );
    }
}

#[test]
fn write_and_verify_is_a_durable_write() {
    let lu = lu();
    let w = |lba, blocks| Plan::Write {
        lba,
        blocks,
        fua: true,
    };
    assert_eq!(run(&cdb10(op::WRITE_AND_VERIFY_10, 0, 5, 8), &lu), w(5, 8));
    assert_eq!(
        run(&cdb10(op::WRITE_AND_VERIFY_10, 0x02, 5, 8), &lu),
        w(5, 8)
    );
    assert_eq!(run(&cdb12(op::WRITE_AND_VERIFY_12, 0, 7, 3), &lu), w(7, 3));
    assert_eq!(
        run(&cdb16(op::WRITE_AND_VERIFY_16, 0, 999, 1), &lu),
        w(999, 1)
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_AND_VERIFY_10, 0x04, 0, 1), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_AND_VERIFY_10, 0x06, 0, 1), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_AND_VERIFY_10, 0x20, 0, 1), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&cdb16(op::WRITE_AND_VERIFY_16, 0, 1000, 1), &lu)),
        LBA_OOB
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_AND_VERIFY_10, 0, 0, 1), &ro_lu())),
        WRITE_PROTECTED
    );
}

#[test]
fn write_protected_lu() {
    let ro = ro_lu();
    assert!(ro.write_protected());
    for c in [
        cdb10(op::WRITE_10, 0, 0, 1),
        cdb12(op::WRITE_12, 0, 0, 1),
        cdb16(op::WRITE_16, 0, 0, 1),
        vec![op::WRITE_6, 0, 0, 0, 1, 0],
        cdb10(op::WRITE_10, 0, 0, 0),
    ] {
        assert_eq!(kcq(run(&c, &ro)), WRITE_PROTECTED, "{c:?}");
    }
    // Reads, verifies and flushes still work.
    assert!(matches!(
        run(&cdb10(op::READ_10, 0, 0, 1), &ro),
        Plan::Read { .. }
    ));
    assert!(matches!(
        run(&cdb10(op::VERIFY_10, 2, 0, 1), &ro),
        Plan::Verify { .. }
    ));
    assert_eq!(
        run(&cdb10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0), &ro),
        Plan::Sync
    );
}

// ---------------------------------------------------------------- VERIFY

#[test]
fn verify_variants() {
    let lu = lu();
    let v = |lba, blocks, bytchk| Plan::Verify {
        lba,
        blocks,
        bytchk,
    };
    assert_eq!(run(&cdb10(op::VERIFY_10, 0, 3, 4), &lu), v(3, 4, false));
    assert_eq!(run(&cdb10(op::VERIFY_10, 0x02, 3, 4), &lu), v(3, 4, true));
    assert_eq!(
        run(&cdb10(op::VERIFY_10, 0x12, 3, 4), &lu),
        v(3, 4, true),
        "DPO accepted"
    );
    assert_eq!(
        run(&cdb12(op::VERIFY_12, 0x02, 0, 1000), &lu),
        v(0, 1000, true)
    );
    assert_eq!(run(&cdb16(op::VERIFY_16, 0, 999, 1), &lu), v(999, 1, false));
    for c in [
        cdb10(op::VERIFY_10, 0x04, 0, 1),
        cdb10(op::VERIFY_10, 0x06, 0, 1),
        cdb12(op::VERIFY_12, 0x04, 0, 1),
        cdb16(op::VERIFY_16, 0x06, 0, 1),
    ] {
        let s = sense(run(&c, &lu));
        assert_eq!(
            (s.asc, s.field_pointer),
            (
                0x24,
                Some(FieldPointer {
                    in_cdb: true,
                    byte: 1,
                    bit: Some(2)
                })
            )
        );
    }
    for p in 1..8u8 {
        assert_eq!(
            kcq(run(&cdb10(op::VERIFY_10, (p << 5) | 0x02, 0, 1), &lu)),
            INVALID_FIELD
        );
        assert_eq!(
            kcq(run(&cdb12(op::VERIFY_12, p << 5, 0, 1), &lu)),
            INVALID_FIELD
        );
        assert_eq!(
            kcq(run(&cdb16(op::VERIFY_16, p << 5, 0, 1), &lu)),
            INVALID_FIELD
        );
    }
}

#[test]
fn verify_range_and_zero_blocks() {
    let lu = lu();
    assert!(good(run(&cdb10(op::VERIFY_10, 0x02, 0, 0), &lu)).is_empty());
    for lba in [1001u32, 0x8000_0000, u32::MAX] {
        assert_eq!(kcq(run(&cdb10(op::VERIFY_10, 0x02, lba, 0), &lu)), LBA_OOB);
        assert_eq!(kcq(run(&cdb12(op::VERIFY_12, 0x02, lba, 0), &lu)), LBA_OOB);
    }
    for i in 1..=256u32 {
        assert_eq!(
            kcq(run(&cdb10(op::VERIFY_10, 0x02, 1001 - i, i as u16), &lu)),
            LBA_OOB
        );
        assert_eq!(
            kcq(run(&cdb16(op::VERIFY_16, 0x02, u64::MAX, i), &lu)),
            LBA_OOB
        );
    }
}

// ---------------------------------------------------------------- SYNCHRONIZE CACHE

#[test]
fn synchronize_cache() {
    let lu = lu();
    assert_eq!(
        run(&cdb10(op::SYNCHRONIZE_CACHE_10, 0, 0, 0), &lu),
        Plan::Sync
    );
    // IMMED: GOOD before the flush.
    assert_eq!(
        run(&cdb10(op::SYNCHRONIZE_CACHE_10, 0x02, 10, 990), &lu),
        Plan::SyncImmed
    );
    assert_eq!(
        run(&cdb16(op::SYNCHRONIZE_CACHE_16, 0, 999, 1), &lu),
        Plan::Sync
    );
    assert_eq!(
        kcq(run(&cdb10(op::SYNCHRONIZE_CACHE_10, 0, 10, 991), &lu)),
        LBA_OOB
    );
    assert_eq!(
        kcq(run(&cdb10(op::SYNCHRONIZE_CACHE_10, 0, 1000, 0), &lu)),
        LBA_OOB
    );
    assert_eq!(
        kcq(run(&cdb16(op::SYNCHRONIZE_CACHE_16, 0, u64::MAX, 2), &lu)),
        LBA_OOB
    );
}

// ---------------------------------------------------------------- REPORT LUNS

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![op::REPORT_LUNS, 0, select, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn report_luns_list() {
    let lu = lu();
    let d = good(run(&report_luns(0, 4096), &lu));
    assert_eq!(&d[0..4], &24u32.to_be_bytes());
    assert_eq!(&d[4..8], &[0; 4]);
    assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        &d[24..32],
        &[0x41, 0x2C, 0, 0, 0, 0, 0, 0],
        "flat space for 300"
    );
    assert_eq!(good(run(&report_luns(2, 4096), &lu)), d);
    // Well known LUs only: none.
    assert_eq!(good(run(&report_luns(1, 4096), &lu)), vec![0; 8]);
    // Cut to the allocation length, list length unchanged.
    let d = good(run(&report_luns(0, 16), &lu));
    assert_eq!(d.len(), 16);
    assert_eq!(&d[0..4], &24u32.to_be_bytes());
    for alloc in 0..16 {
        let s = sense(run(&report_luns(0, alloc), &lu));
        assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x24, Some(6)));
    }
    assert_eq!(kcq(run(&report_luns(0x10, 4096), &lu)), INVALID_FIELD);
    assert_eq!(kcq(run(&report_luns(3, 4096), &lu)), INVALID_FIELD);
}

#[test]
fn lun_encoding() {
    assert_eq!(encode_lun(0), Some([0; 8]));
    assert_eq!(encode_lun(255), Some([0, 255, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(256), Some([0x41, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(16383), Some([0x7F, 0xFF, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(16384), None);
    for lun in [0u64, 1, 7, 255, 256, 300, 4095, 16383] {
        assert_eq!(encode_lun(lun).and_then(decode_lun), Some(lun));
    }
    assert_eq!(decode_lun([0x01, 0, 0, 0, 0, 0, 0, 0]), None, "bus 1");
    assert_eq!(
        decode_lun([0, 1, 0x40, 0, 0, 0, 0, 0]),
        None,
        "second level"
    );
    assert_eq!(
        decode_lun([0x80, 1, 0, 0, 0, 0, 0, 0]),
        None,
        "logical unit addressing"
    );
}

// ---------------------------------------------------------------- MODE SENSE

fn mode_sense6(dbd: bool, pc: u8, page: u8, sub: u8, alloc: u8) -> Vec<u8> {
    vec![
        op::MODE_SENSE_6,
        if dbd { 0x08 } else { 0 },
        (pc << 6) | page,
        sub,
        alloc,
        0,
    ]
}

fn mode_sense10(llbaa: bool, dbd: bool, pc: u8, page: u8, alloc: u16) -> Vec<u8> {
    let mut b1 = 0;
    if llbaa {
        b1 |= 0x10;
    }
    if dbd {
        b1 |= 0x08;
    }
    let a = alloc.to_be_bytes();
    vec![
        op::MODE_SENSE_10,
        b1,
        (pc << 6) | page,
        0,
        0,
        0,
        0,
        a[0],
        a[1],
        0,
    ]
}

/// Pages of a MODE SENSE answer: (page code, page bytes).
fn pages(d: &[u8], hdr: usize, bd: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = hdr + bd;
    while at < d.len() {
        let len = usize::from(d[at + 1]) + 2;
        out.push((d[at] & 0x3F, d[at..at + len].to_vec()));
        at += len;
    }
    assert_eq!(at, d.len());
    out
}

#[test]
fn mode_sense6_all_pages() {
    let lu = lu();
    let d = good(run(&mode_sense6(false, 0, 0x3F, 0, 255), &lu));
    assert_eq!(usize::from(d[0]), d.len() - 1, "mode data length");
    assert_eq!(d[1], 0, "medium type");
    assert_eq!(d[2], 0x10, "DPOFUA, not WP");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &1000u32.to_be_bytes());
    assert_eq!(&d[8..12], &[0, 0, 2, 0]);
    let ps = pages(&d, 4, 8);
    let codes: Vec<u8> = ps.iter().map(|p| p.0).collect();
    assert_eq!(codes, vec![0x01, 0x08, 0x0A, 0x1C]);
    let caching = &ps[1].1;
    assert_eq!(caching.len(), 20);
    assert_eq!(caching[2] & 0x05, 0x04, "WCE on, RCD off");
    let control = &ps[2].1;
    assert_eq!(control.len(), 12);
    assert_eq!(control[2] & 0x04, 0, "D_SENSE off: fixed format sense");
    assert_eq!(control[3] >> 4, 1, "queue algorithm modifier");
    assert_eq!(control[4] & 0x08, 0, "SWP off");
    // Subpage FFh: the same pages.
    assert_eq!(good(run(&mode_sense6(false, 0, 0x3F, 0xFF, 255), &lu)), d);
    // Single pages match the ones in "all pages".
    for (code, page) in &ps {
        let one = good(run(&mode_sense6(true, 0, *code, 0, 255), &lu));
        assert_eq!(&one[4..], page.as_slice());
        assert_eq!(one[3], 0, "DBD: no block descriptor");
    }
    // Default values equal the power-on values.
    assert_eq!(good(run(&mode_sense6(false, 2, 0x3F, 0, 255), &lu)), d);
}

#[test]
fn mode_sense6_changeable_and_saved() {
    let lu = lu();
    let d = good(run(&mode_sense6(true, 1, 0x3F, 0, 255), &lu));
    let ps = pages(&d, 4, 0);
    assert_eq!(ps[1].1[2], 0x04, "WCE changeable");
    assert_eq!(ps[2].1[4], 0x08, "SWP changeable");
    assert!(ps[0].1[2..].iter().all(|&b| b == 0));
    let d = good(run(&mode_sense6(false, 1, 0x08, 0, 255), &lu));
    assert_eq!(
        &d[4..12],
        &[0; 8],
        "nothing changeable in the block descriptor"
    );
    let s = sense(run(&mode_sense6(false, 3, 0x3F, 0, 255), &lu));
    assert_eq!((s.key, s.asc, s.ascq), (key::ILLEGAL_REQUEST, 0x39, 0x00));
}

#[test]
fn mode_sense_invalid_pages() {
    let lu = lu();
    let s = sense(run(&mode_sense6(false, 0, 0x05, 0, 255), &lu));
    assert_eq!(
        (s.asc, s.field_pointer),
        (
            0x24,
            Some(FieldPointer {
                in_cdb: true,
                byte: 2,
                bit: Some(5)
            })
        )
    );
    assert_eq!(
        kcq(run(&mode_sense6(false, 0, 0x0A, 0x01, 255), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&mode_sense6(false, 0, 0x3F, 0x02, 255), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&mode_sense10(false, false, 0, 0x00, 255), &lu)),
        INVALID_FIELD
    );
}

#[test]
fn mode_sense6_alloc_lengths() {
    let lu = lu();
    let full = good(run(&mode_sense6(false, 0, 0x3F, 0, 255), &lu));
    for alloc in 0..=255u8 {
        let d = good(run(&mode_sense6(false, 0, 0x3F, 0, alloc), &lu));
        assert_eq!(d, full[..usize::from(alloc).min(full.len())].to_vec());
    }
}

#[test]
fn mode_sense_write_protect_bit() {
    let d = good(run(&mode_sense6(false, 0, 0x3F, 0, 255), &ro_lu()));
    assert_eq!(d[2], 0x90, "WP and DPOFUA");
    let d = good(run(&mode_sense10(false, false, 0, 0x3F, 512), &ro_lu()));
    assert_eq!(d[3], 0x90);
}

#[test]
fn mode_sense10_block_descriptors() {
    let huge = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 33,
        ..cfg()
    });
    let d = good(run(&mode_sense10(false, false, 0, 0x08, 512), &huge));
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
    assert_eq!(d[3], 0x10);
    assert_eq!(d[4] & 1, 0, "short descriptor");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
    assert_eq!(&d[8..12], &[0xFF; 4], "too many blocks for the short form");
    assert_eq!(pages(&d, 8, 8).len(), 1);
    let d = good(run(&mode_sense10(true, false, 0, 0x08, 512), &huge));
    assert_eq!(d[4] & 1, 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
    assert_eq!(&d[8..16], &(1u64 << 33).to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    let d = good(run(&mode_sense10(true, true, 0, 0x3F, 512), &huge));
    assert_eq!((d[4], d[6], d[7]), (0, 0, 0), "DBD wins over LLBAA");
    assert_eq!(pages(&d, 8, 0).len(), 4);
    let d = good(run(&mode_sense10(false, false, 0, 0x3F, 3), &huge));
    assert_eq!(d.len(), 3);
}

// ---------------------------------------------------------------- MODE SELECT

#[test]
fn mode_select_cdb() {
    let lu = lu();
    assert_eq!(
        run(&[op::MODE_SELECT_6, 0x10, 0, 0, 24, 0], &lu),
        Plan::ModeSelect {
            ten: false,
            len: 24
        }
    );
    assert_eq!(
        run(
            &[op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 0x01, 0x00, 0],
            &lu
        ),
        Plan::ModeSelect {
            ten: true,
            len: 256
        }
    );
    assert!(good(run(&[op::MODE_SELECT_6, 0x10, 0, 0, 0, 0], &lu)).is_empty());
    let s = sense(run(&[op::MODE_SELECT_6, 0x11, 0, 0, 24, 0], &lu));
    assert_eq!(
        s.field_pointer,
        Some(FieldPointer {
            in_cdb: true,
            byte: 1,
            bit: Some(0)
        })
    );
    // Allowed on a read-only LU too (it changes no data).
    assert!(matches!(
        run(&[op::MODE_SELECT_6, 0x10, 0, 0, 24, 0], &ro_lu()),
        Plan::ModeSelect { .. }
    ));
}

/// A MODE SELECT(6) parameter list: header, optional block descriptor, pages.
fn select6(bd: Option<[u8; 8]>, pages: &[&[u8]]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, if bd.is_some() { 8 } else { 0 }];
    if let Some(bd) = bd {
        d.extend_from_slice(&bd);
    }
    for p in pages {
        d.extend_from_slice(p);
    }
    d
}

fn current_page(lu: &LogicalUnit, code: u8) -> Vec<u8> {
    let d = good(run(&mode_sense6(true, 0, code, 0, 255), lu));
    d[4..].to_vec()
}

#[test]
fn mode_select_wce_off_makes_writes_fua() {
    let lu = lu();
    let mut caching = current_page(&lu, 0x08);
    caching[2] &= !0x04;
    let out = lu.apply_mode_select(false, &select6(None, &[&caching]));
    assert_eq!(out.response, Response::good(Vec::new()));
    assert!(out.changed);
    assert!(!lu.write_cache_enabled());
    assert_eq!(current_page(&lu, 0x08)[2] & 0x04, 0);
    assert_eq!(
        run(&cdb10(op::WRITE_10, 0, 0, 1), &lu),
        Plan::Write {
            lba: 0,
            blocks: 1,
            fua: true
        }
    );
    // Default values still say WCE on; sending the same again changes nothing.
    let d = good(run(&mode_sense6(true, 2, 0x08, 0, 255), &lu));
    assert_eq!(d[6] & 0x04, 0x04);
    let out = lu.apply_mode_select(false, &select6(None, &[&caching]));
    assert!(!out.changed);
    // And back on.
    caching[2] |= 0x04;
    assert_eq!(
        lu.mode_select(false, &select6(None, &[&caching])).status,
        Status::Good
    );
    assert!(lu.write_cache_enabled());
}

#[test]
fn mode_select_swp_write_protects() {
    let lu = lu();
    // As libiscsi's set_swp does it: MODE SENSE the control page, set SWP, clear PS, select.
    let mut control = current_page(&lu, 0x0A);
    control[0] &= 0x7F;
    control[4] |= 0x08;
    assert_eq!(
        lu.mode_select(false, &select6(None, &[&control])).status,
        Status::Good
    );
    assert!(lu.write_protected());
    assert_eq!(current_page(&lu, 0x0A)[4] & 0x08, 0x08);
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_10, 0, 0, 1), &lu)),
        WRITE_PROTECTED
    );
    assert!(matches!(
        run(&cdb10(op::READ_10, 0, 0, 1), &lu),
        Plan::Read { .. }
    ));
    let d = good(run(&mode_sense6(false, 0, 0x3F, 0, 255), &lu));
    assert_eq!(d[2] & 0x80, 0x80, "WP");
    control[4] &= !0x08;
    assert_eq!(
        lu.mode_select(false, &select6(None, &[&control])).status,
        Status::Good
    );
    assert!(!lu.write_protected());
}

#[test]
fn mode_select_all_pages_round_trip() {
    let lu = lu();
    let d = good(run(&mode_sense10(false, false, 0, 0x3F, 1024), &lu));
    let mut sel = d.clone();
    sel[0] = 0;
    sel[1] = 0; // MODE DATA LENGTH is reserved in MODE SELECT
    sel[3] = 0; // device-specific parameter: DPOFUA is reserved
    let out = lu.apply_mode_select(true, &sel);
    assert_eq!(
        out.response.status,
        Status::Good,
        "{:?}",
        out.response.sense
    );
    assert!(!out.changed);
}

#[test]
fn mode_select_rejects() {
    let lu = lu();
    let caching = current_page(&lu, 0x08);
    let check = |data: Vec<u8>, ten: bool| {
        lu.mode_select(ten, &data)
            .sense
            .unwrap_or_else(|| unreachable!())
    };
    // Header too short.
    let s = check(vec![0, 0, 0], false);
    assert_eq!((s.key, s.asc, s.ascq), PARAM_LEN);
    let s = check(vec![0; 7], true);
    assert_eq!((s.key, s.asc, s.ascq), PARAM_LEN);
    // A non-changeable bit (RCD) flipped: field pointer into the parameter list.
    let mut bad = caching.clone();
    bad[2] |= 0x01;
    let s = check(select6(None, &[&bad]), false);
    assert_eq!((s.key, s.asc, s.ascq), INVALID_PARAM);
    assert_eq!(
        s.field_pointer,
        Some(FieldPointer {
            in_cdb: false,
            byte: 6,
            bit: Some(0)
        })
    );
    // Wrong page length.
    let mut bad = caching.clone();
    bad[1] = 0x10;
    let s = check(select6(None, &[&bad[..18]]), false);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(5));
    // Truncated page.
    let s = check(select6(None, &[&caching[..10]]), false);
    assert_eq!((s.key, s.asc, s.ascq), PARAM_LEN);
    let s = check(select6(None, &[&caching[..1]]), false);
    assert_eq!((s.key, s.asc, s.ascq), PARAM_LEN);
    // Unknown page, subpage format.
    let s = check(select6(None, &[&[0x05, 0x02, 0, 0]]), false);
    assert_eq!((s.key, s.asc, s.ascq), INVALID_PARAM);
    let s = check(select6(None, &[&[0x48, 0x00, 0x00, 0x10]]), false);
    assert_eq!(
        s.field_pointer,
        Some(FieldPointer {
            in_cdb: false,
            byte: 4,
            bit: Some(6)
        })
    );
    // Medium type.
    let s = check(vec![0, 1, 0, 0], false);
    assert_eq!((s.asc, s.field_pointer.map(|f| f.byte)), (0x26, Some(1)));
    // Block descriptor: wrong length field, truncated, wrong block size.
    let s = check(vec![0, 0, 0, 4, 0, 0, 0, 0], false);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(3));
    let s = check(vec![0, 0, 0, 8, 0, 0], false);
    assert_eq!((s.key, s.asc, s.ascq), PARAM_LEN);
    let s = check(select6(Some([0, 0, 0, 0, 0, 0, 0x10, 0]), &[]), false);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(9));
    // Nothing was applied by any of these.
    assert_eq!(current_page(&lu, 0x08), caching);
}

#[test]
fn mode_select_block_descriptors_accepted() {
    let lu = lu();
    let mut caching = current_page(&lu, 0x08);
    caching[2] &= !0x04;
    let d = select6(Some([0, 0, 0x03, 0xE8, 0, 0, 0x02, 0]), &[&caching]);
    assert_eq!(lu.mode_select(false, &d).status, Status::Good);
    assert!(!lu.write_cache_enabled());
    // Zero block length means unchanged; (10) with a long descriptor.
    let mut d = vec![0, 0, 0, 0, 1, 0, 0, 16];
    d.extend_from_slice(&[0; 16]);
    assert_eq!(lu.mode_select(true, &d).status, Status::Good);
    let mut d = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    caching[2] |= 0x04;
    d.extend_from_slice(&caching);
    assert_eq!(lu.mode_select(true, &d).status, Status::Good);
    assert!(lu.write_cache_enabled());
}

// ---------------------------------------------------------------- REPORT SUPPORTED OPERATION CODES

fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op::MAINTENANCE_IN;
    c[1] = 0x0C;
    c[2] = (if rctd { 0x80 } else { 0 }) | options;
    c[3] = opcode;
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn command_table_is_consistent() {
    for c in COMMANDS {
        assert_eq!(c.usage[0], c.opcode);
        assert_eq!(
            Some(c.usage.len()),
            cdb_len(c.opcode),
            "opcode {:#x}",
            c.opcode
        );
        if let Some(sa) = c.service_action {
            assert_eq!(c.usage[1] & 0x1F, sa);
        }
    }
}

#[test]
fn rsoc_all_commands() {
    // An LU that offers every command of the table (SANITIZE too).
    let lu = LogicalUnit::new(LuConfig {
        sanitize: true,
        ..cfg()
    });
    let d = good(run(&rsoc(false, 0, 0, 0, 65535), &lu));
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
        d.len() - 4
    );
    assert_eq!(d.len(), 4 + 8 * COMMANDS.len());
    for (i, c) in COMMANDS.iter().enumerate() {
        let e = &d[4 + 8 * i..12 + 8 * i];
        assert_eq!(e[0], c.opcode);
        assert_eq!(e[5] & 0x01 != 0, c.service_action.is_some());
        assert_eq!(usize::from(u16::from_be_bytes([e[6], e[7]])), c.usage.len());
    }
    let d = good(run(&rsoc(true, 0, 0, 0, 65535), &lu));
    assert_eq!(d.len(), 4 + 20 * COMMANDS.len());
    assert_eq!(d[4 + 5] & 0x02, 0x02, "CTDP");
    assert_eq!(&d[12..14], &[0x00, 0x0A]);
    let d = good(run(&rsoc(false, 0, 0, 0, 10), &lu));
    assert_eq!(d.len(), 10);
}

#[test]
fn rsoc_one_command() {
    let lu = lu();
    let d = good(run(&rsoc(false, 1, op::READ_10, 0, 65535), &lu));
    assert_eq!(&d[0..4], &[0, 0x03, 0, 10]);
    assert_eq!(d[4], op::READ_10);
    assert_eq!(d[5] & 0x18, 0x18, "DPO and FUA in the usage data");
    let d = good(run(&rsoc(false, 1, op::VERIFY_10, 0, 65535), &lu));
    assert_eq!(d[5] & 0x10, 0x10);
    let d = good(run(&rsoc(true, 1, op::WRITE_16, 0, 65535), &lu));
    assert_eq!(d[1], 0x83);
    assert_eq!(d.len(), 4 + 16 + 12);
    let d = good(run(&rsoc(false, 1, op::UNMAP, 0, 65535), &lu));
    assert_eq!(&d[0..4], &[0, 0x03, 0, 10]);
    let d = good(run(&rsoc(false, 2, 0x9E, 0x12, 65535), &lu));
    assert_eq!(&d[0..4], &[0, 0x03, 0, 16]);
    // Not supported.
    assert_eq!(
        good(run(&rsoc(false, 1, 0x8C, 0, 65535), &lu)),
        vec![0, 0x01, 0, 0]
    );
    assert_eq!(
        good(run(&rsoc(false, 2, 0x9E, 0x11, 65535), &lu)),
        vec![0, 0x01, 0, 0]
    );
    // Service actions.
    assert_eq!(
        kcq(run(
            &rsoc(false, 1, op::SERVICE_ACTION_IN_16, 0, 65535),
            &lu
        )),
        INVALID_FIELD
    );
    let d = good(run(
        &rsoc(false, 2, op::SERVICE_ACTION_IN_16, 0x10, 65535),
        &lu,
    ));
    assert_eq!(&d[0..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
    assert_eq!(
        kcq(run(&rsoc(false, 2, op::READ_10, 0, 65535), &lu)),
        INVALID_FIELD
    );
    let d = good(run(&rsoc(false, 3, op::READ_10, 7, 65535), &lu));
    assert_eq!(d[1], 0x03);
    let d = good(run(&rsoc(false, 3, op::MAINTENANCE_IN, 0x0C, 65535), &lu));
    assert_eq!(d[1], 0x03);
    assert_eq!(kcq(run(&rsoc(false, 4, 0, 0, 65535), &lu)), INVALID_FIELD);
    assert_eq!(kcq(run(&rsoc(false, 7, 0, 0, 65535), &lu)), INVALID_FIELD);
}

// ---------------------------------------------------------------- EDTL clamping

#[test]
fn clamp_to_edtl() {
    let w = Plan::Write {
        lba: 0,
        blocks: 2,
        fua: false,
    };
    assert_eq!(w.transfer_bytes(512), 1024);
    assert_eq!(
        w.clone().clamp_to_edtl(512, 512),
        Plan::Write {
            lba: 0,
            blocks: 1,
            fua: false
        }
    );
    assert_eq!(w.clone().clamp_to_edtl(4096, 512), w);
    assert_eq!(
        w.clone().clamp_to_edtl(200, 512),
        Plan::Respond(Response::good(Vec::new()))
    );
    assert_eq!(
        w.clamp_to_edtl(0, 512),
        Plan::Respond(Response::good(Vec::new()))
    );
    let r = Plan::Read {
        lba: 4,
        blocks: 8,
        fua: true,
    };
    assert_eq!(
        r.clone().clamp_to_edtl(600, 512),
        Plan::Read {
            lba: 4,
            blocks: 2,
            fua: true
        }
    );
    assert_eq!(
        r.clone().clamp_to_edtl(0, 512),
        Plan::Respond(Response::good(Vec::new()))
    );
    assert_eq!(r.clone().clamp_to_edtl(u32::MAX, 0), r);
    let v = Plan::Verify {
        lba: 0,
        blocks: 3,
        bytchk: true,
    };
    assert_eq!(
        v.clamp_to_edtl(1023, 512),
        Plan::Verify {
            lba: 0,
            blocks: 1,
            bytchk: true
        }
    );
    let v0 = Plan::Verify {
        lba: 0,
        blocks: 3,
        bytchk: false,
    };
    assert_eq!(v0.transfer_bytes(512), 0);
    assert_eq!(v0.clone().clamp_to_edtl(0, 512), v0);
    let m = Plan::ModeSelect {
        ten: false,
        len: 24,
    };
    assert_eq!(
        m.clone().clamp_to_edtl(12, 512),
        Plan::ModeSelect {
            ten: false,
            len: 12
        }
    );
    assert_eq!(
        m.clamp_to_edtl(0, 512),
        Plan::Respond(Response::good(Vec::new()))
    );
    assert_eq!(Plan::Sync.clamp_to_edtl(0, 512), Plan::Sync);
    let resp = Plan::Respond(Response::good(vec![1, 2, 3]));
    assert_eq!(resp.transfer_bytes(512), 3);
    assert_eq!(resp.clone().clamp_to_edtl(1, 512), resp);
    assert_eq!(
        Sense::invalid_field_in_information_unit(),
        Sense::new(5, 0x0E, 0x03)
    );
}

// ---------------------------------------------------------------- never panic

fn arb_lu() -> impl Strategy<Value = LogicalUnit> {
    (
        prop_oneof![Just(512u32), Just(4096), Just(0), any::<u32>()],
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(block_size, num_blocks, read_only, id)| {
            LogicalUnit::new(LuConfig {
                block_size,
                num_blocks,
                read_only,
                id,
                name: "p".into(),
                thick: false,
                sanitize: false,
            })
        })
}

/// The invariants any answer must keep.
fn check_plan(p: &Plan, lu: Option<&LogicalUnit>) {
    match p {
        Plan::Respond(r) => match r.status {
            Status::Good => assert!(r.sense.is_none()),
            // RESERVATION CONFLICT carries no sense (SAM-5 5.3.1).
            Status::ReservationConflict => assert!(r.sense.is_none() && r.data.is_empty()),
            _ => assert!(r.sense.is_some() && r.data.is_empty()),
        },
        Plan::Read { lba, blocks, .. }
        | Plan::Write { lba, blocks, .. }
        | Plan::Verify { lba, blocks, .. } => {
            let lu = lu.unwrap_or_else(|| unreachable!("I/O plan without an LU"));
            assert!(*blocks >= 1);
            assert!(lba
                .checked_add(u64::from(*blocks))
                .is_some_and(|e| e <= lu.num_blocks()));
            if !matches!(p, Plan::Verify { bytchk: false, .. }) {
                assert!(*blocks <= lu.max_transfer_blocks());
            }
            if matches!(p, Plan::Write { .. }) {
                assert!(!lu.write_protected());
            }
        }
        Plan::Sync | Plan::SyncImmed => assert!(lu.is_some()),
        Plan::Sanitize { .. } => {
            let lu = lu.unwrap_or_else(|| unreachable!("SANITIZE plan without an LU"));
            assert!(lu.sanitize_allowed() && !lu.write_protected());
        }
        Plan::Prefetch { lba, blocks } => {
            let lu = lu.unwrap_or_else(|| unreachable!("PRE-FETCH plan without an LU"));
            assert!(*blocks >= 1);
            assert!(lba
                .checked_add(*blocks)
                .is_some_and(|e| e <= lu.num_blocks()));
        }
        Plan::ModeSelect { len, .. } => assert!(lu.is_some() && *len > 0),
        Plan::Unmap { len } => {
            let lu = lu.unwrap_or_else(|| unreachable!("UNMAP plan without an LU"));
            assert!(*len > 0 && *len <= super::lbp::MAX_UNMAP_PARAMETERS);
            assert!(!lu.write_protected());
        }
        Plan::WriteSame { lba, blocks, .. } => {
            let lu = lu.unwrap_or_else(|| unreachable!("WRITE SAME plan without an LU"));
            assert!(*blocks >= 1 && *blocks <= super::lbp::max_write_same_blocks(lu));
            assert!(lba
                .checked_add(*blocks)
                .is_some_and(|e| e <= lu.num_blocks()));
            assert!(!lu.write_protected());
        }
        Plan::LbaStatus { lba, .. } => {
            let lu = lu.unwrap_or_else(|| unreachable!("GET LBA STATUS plan without an LU"));
            assert!(*lba < lu.num_blocks());
        }
        Plan::PersistentReserveOut { len, sa, .. } => {
            assert!(lu.is_some());
            assert!(*len >= super::reservations::PROUT_BASIC_LEN);
            assert!(*len <= super::reservations::PROUT_MAX_LEN && *sa <= 7);
        }
        Plan::ExtendedCopy { len } => {
            assert!(lu.is_some() && *len > 0 && *len <= super::xcopy::MAX_PARAMETER_LIST);
        }
        Plan::CopyStatus { .. } | Plan::ReportTargetPortGroups { .. } => assert!(lu.is_some()),
        Plan::CompareAndWrite { lba, blocks, .. }
        | Plan::OrWrite { lba, blocks, .. }
        | Plan::WriteAtomic { lba, blocks, .. } => {
            let lu = lu.unwrap_or_else(|| unreachable!("write plan without an LU"));
            // COMPARE AND WRITE of zero blocks is a plan (its Data-Out length is checked).
            assert!(*blocks >= 1 || matches!(p, Plan::CompareAndWrite { .. }));
            assert!(*lba < lu.num_blocks());
            assert!(lba
                .checked_add(u64::from(*blocks))
                .is_some_and(|e| e <= lu.num_blocks()));
            assert!(
                p.transfer_bytes(lu.block_size()) <= u64::from(crate::scsi::MAX_TRANSFER_BYTES)
            );
            assert!(!lu.write_protected());
        }
    }
}

/// CDBs whose first byte is a known opcode, to reach past the opcode check.
fn arb_known_cdb() -> impl Strategy<Value = Vec<u8>> {
    (
        0..COMMANDS.len(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(i, mut rest)| {
            let c = &COMMANDS[i];
            rest.insert(0, c.opcode);
            if let (Some(sa), true) = (c.service_action, rest.len() > 1) {
                rest[1] = (rest[1] & 0xE0) | sa;
            }
            // Clear NACA most of the time.
            if let Some(n) = cdb_len(c.opcode) {
                if rest.len() >= n && rest[1] & 1 == 0 {
                    rest[n - 1] &= !0x04;
                }
            }
            rest
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn plan_never_panics_any_bytes(cdb in proptest::collection::vec(any::<u8>(), 0..64), lu in arb_lu(), pending in any::<bool>()) {
        let mut ua = if pending { UnitAttentions::power_on() } else { UnitAttentions::default() };
        let p = plan(&cdb, Context { lu: Some(&lu), luns: LUNS, ua: Some(&mut ua) });
        check_plan(&p, Some(&lu));
        let p = plan(&cdb, Context { lu: None, luns: LUNS, ua: None });
        check_plan(&p, None);
    }

    #[test]
    fn plan_never_panics_known_opcodes(cdb in arb_known_cdb(), lu in arb_lu(), edtl in any::<u32>()) {
        let mut ua = UnitAttentions::default();
        let p = plan(&cdb, Context { lu: Some(&lu), luns: &[0, 5, 256, 20000], ua: Some(&mut ua) });
        check_plan(&p, Some(&lu));
        let clamped = p.clamp_to_edtl(edtl, lu.block_size());
        check_plan(&clamped, Some(&lu));
        let p = plan(&cdb, Context { lu: None, luns: &[], ua: None });
        check_plan(&p, None);
    }

    #[test]
    fn mode_select_never_panics(data in proptest::collection::vec(any::<u8>(), 0..96), ten in any::<bool>()) {
        let lu = lu();
        let r = lu.mode_select(ten, &data);
        prop_assert!(r.data.is_empty());
        prop_assert_eq!(r.status == Status::Good, r.sense.is_none());
    }

    #[test]
    fn sense_formats_never_panic(k in any::<u8>(), asc in any::<u8>(), info in proptest::option::of(any::<u64>()), byte in any::<u16>(), bit in proptest::option::of(any::<u8>())) {
        let mut s = Sense::new(k, asc, 0);
        s.information = info;
        s.field_pointer = Some(FieldPointer { in_cdb: true, byte, bit });
        prop_assert_eq!(s.to_fixed().len(), FIXED_SENSE_LEN);
        let d = s.to_descriptor();
        prop_assert_eq!(usize::from(d[7]), d.len() - 8);
    }
}

// ---------------------------------------------------------------- provisioning

fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    for (lba, blocks) in descriptors {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&blocks.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    let n = d.len();
    d[0..2].copy_from_slice(&((n - 2) as u16).to_be_bytes());
    d[2..4].copy_from_slice(&((n - 8) as u16).to_be_bytes());
    d
}

#[test]
fn unmap_decodes_and_checks_its_list() {
    let lu = lu();
    let mut c = cdb10(op::UNMAP, 0, 0, 0);
    c[7..9].copy_from_slice(&24u16.to_be_bytes());
    assert_eq!(run(&c, &lu), Plan::Unmap { len: 24 });
    // A zero-length list does nothing; ANCHOR is not supported.
    assert!(good(run(&cdb10(op::UNMAP, 0, 0, 0), &lu)).is_empty());
    let mut a = c.clone();
    a[1] = 0x01;
    assert_eq!(kcq(run(&a, &lu)), INVALID_FIELD);
    // Read-only: DATA PROTECT.
    let ro = LogicalUnit::new(LuConfig {
        read_only: true,
        ..cfg()
    });
    assert_eq!(sense(run(&c, &ro)).key, key::DATA_PROTECT);

    assert_eq!(
        unmap_ranges(&lu, &unmap_list(&[(0, 8), (990, 10), (5, 0)])).unwrap(),
        vec![(0, 8), (990, 10)]
    );
    assert_eq!(unmap_ranges(&lu, &unmap_list(&[])).unwrap(), vec![]);
    assert_eq!(
        unmap_ranges(&lu, &unmap_list(&[(995, 10)])),
        Err(Sense::lba_out_of_range())
    );
    assert_eq!(
        unmap_ranges(&lu, &unmap_list(&[(u64::MAX, 2)])),
        Err(Sense::lba_out_of_range())
    );
    assert_eq!(
        unmap_ranges(&lu, &[0, 6, 0]),
        Err(Sense::parameter_list_length_error())
    );
    // A descriptor length that reaches past the data.
    let mut bad = unmap_list(&[(0, 1)]);
    bad[2..4].copy_from_slice(&32u16.to_be_bytes());
    assert_eq!(unmap_ranges(&lu, &bad).unwrap_err().asc, 0x26);
    // More descriptors than the Block Limits page allows.
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    assert_eq!(unmap_ranges(&lu, &unmap_list(&many)).unwrap_err().asc, 0x26);
}

#[test]
fn write_same_decodes() {
    let lu = lu();
    let mut c = cdb10(op::WRITE_SAME_10, 0x08, 10, 20);
    assert_eq!(
        run(&c, &lu),
        Plan::WriteSame {
            lba: 10,
            blocks: 20,
            unmap: true,
            ndob: false
        }
    );
    let mut w16 = cdb16(op::WRITE_SAME_16, 0x01, 990, 10);
    assert_eq!(
        run(&w16, &lu),
        Plan::WriteSame {
            lba: 990,
            blocks: 10,
            unmap: false,
            ndob: true
        }
    );
    // Zero blocks run to the last block; past the end is out of range; ANCHOR and
    // WRPROTECT are unsupported.
    c[7..9].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        run(&c, &lu),
        Plan::WriteSame {
            lba: 10,
            blocks: 990,
            unmap: true,
            ndob: false
        }
    );
    let big = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 20,
        ..cfg()
    });
    assert_eq!(
        kcq(run(&c, &big)),
        INVALID_FIELD,
        "beyond MAXIMUM WRITE SAME LENGTH"
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_SAME_10, 0, 1000, 0), &lu)),
        LBA_OOB
    );
    w16[10..14].copy_from_slice(&11u32.to_be_bytes());
    assert_eq!(kcq(run(&w16, &lu)), LBA_OOB);
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_SAME_10, 0x10, 0, 1), &lu)),
        INVALID_FIELD
    );
    assert_eq!(
        kcq(run(&cdb10(op::WRITE_SAME_10, 0x20, 0, 1), &lu)),
        INVALID_FIELD
    );
    let ro = LogicalUnit::new(LuConfig {
        read_only: true,
        ..cfg()
    });
    assert_eq!(
        sense(run(&cdb10(op::WRITE_SAME_10, 0, 0, 1), &ro)).key,
        key::DATA_PROTECT
    );
}

#[test]
fn get_lba_status_decodes_and_formats() {
    let lu = lu();
    let mut c = cdb16(op::SERVICE_ACTION_IN_16, 0x12, 7, 0);
    c[10..14].copy_from_slice(&64u32.to_be_bytes());
    assert_eq!(run(&c, &lu), Plan::LbaStatus { lba: 7, alloc: 64 });
    let mut far = cdb16(op::SERVICE_ACTION_IN_16, 0x12, 1000, 0);
    far[10..14].copy_from_slice(&64u32.to_be_bytes());
    assert_eq!(kcq(run(&far, &lu)), LBA_OOB);

    let r = lba_status_data(
        &[
            LbaExtent {
                lba: 7,
                blocks: 9,
                mapped: true,
            },
            LbaExtent {
                lba: 16,
                blocks: 984,
                mapped: false,
            },
        ],
        1000,
    );
    let d = r.data;
    assert_eq!(d.len(), 8 + 32);
    assert_eq!(&d[0..4], &36u32.to_be_bytes());
    assert_eq!(&d[8..16], &7u64.to_be_bytes());
    assert_eq!(&d[16..20], &9u32.to_be_bytes());
    assert_eq!(d[20], 0);
    assert_eq!(&d[24..32], &16u64.to_be_bytes());
    assert_eq!(&d[32..36], &984u32.to_be_bytes());
    assert_eq!(d[36], 1);
    assert_eq!(lba_status_data(&[], 4).data, vec![0, 0, 0, 4]);
}

/// Two nexuses of one LU (initiators 1 and 2) sharing its state, as sessions do.
fn two_nexuses(removable: bool) -> (LogicalUnit, LogicalUnit) {
    let state = std::sync::Arc::new(LuState::default());
    let n =
        |i: u8| reservations::Nexus::new(&format!("iqn.test:{i}"), [0, 0, 0, 0, 0, i], "iqn.t", 1);
    let a = LogicalUnit::new(cfg()).with_removable(removable).shared(
        state.clone(),
        n(1),
        SessionRef::fixed(1),
    );
    let b =
        LogicalUnit::new(cfg())
            .with_removable(removable)
            .shared(state, n(2), SessionRef::fixed(2));
    (a, b)
}

fn status_of(p: Plan) -> Status {
    resp(p).status
}

const TUR: [u8; 6] = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];
const RESERVE6: [u8; 6] = [op::RESERVE_6, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [op::RELEASE_6, 0, 0, 0, 0, 0];

#[test]
fn reserve_6_excludes_other_nexuses_until_released_or_reset() {
    let (a, b) = two_nexuses(false);
    assert!(good(run(&RESERVE6, &a)).is_empty());
    // The other nexus: RESERVE and medium commands conflict; INQUIRY, REPORT LUNS and
    // RELEASE (which changes nothing) do not.
    assert_eq!(status_of(run(&RESERVE6, &b)), Status::ReservationConflict);
    assert_eq!(status_of(run(&TUR, &b)), Status::ReservationConflict);
    assert_eq!(
        status_of(run(&cdb10(op::READ_10, 0, 0, 1), &b)),
        Status::ReservationConflict
    );
    assert!(!good(run(&[op::INQUIRY, 0, 0, 0, 96, 0], &b)).is_empty());
    assert!(good(run(&RELEASE6, &b)).is_empty());
    assert_eq!(status_of(run(&TUR, &b)), Status::ReservationConflict);
    // A reset ends it (SPC-2 5.5.1); so does the holder's nexus loss.
    a.state().reset();
    assert!(good(run(&TUR, &b)).is_empty());
    assert!(good(run(&RESERVE6, &b)).is_empty());
    assert_eq!(status_of(run(&TUR, &a)), Status::ReservationConflict);
    b.state().nexus_lost(b.nexus(), 99);
    assert_eq!(
        status_of(run(&TUR, &a)),
        Status::ReservationConflict,
        "another session of the nexus ended: the reservation stays"
    );
    b.state().nexus_lost(b.nexus(), b.session().id());
    assert!(good(run(&TUR, &a)).is_empty());
}

/// PERSISTENT RESERVE OUT parameter data: key, service action key, flags.
fn pr_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[0..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    d
}

#[test]
fn persistent_reservations_survive_resets_and_exclude_reserve_6() {
    let (a, b) = two_nexuses(false);
    // The CDB plans a parameter list of 24 bytes; anything shorter is a length error.
    let mut cdb = [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(
        run(&cdb, &a),
        Plan::PersistentReserveOut {
            sa: 6,
            scope_type: 0,
            len: 24
        }
    );
    cdb[8] = 8;
    assert_eq!(kcq(run(&cdb, &a)), PARAM_LEN);
    let st = a.state();
    assert_eq!(
        st.prout(a.nexus(), 0x06, 0, &pr_params(0, 7))
            .response
            .status,
        Status::Good
    );
    assert_eq!(
        st.prout(a.nexus(), 0x01, 3, &pr_params(7, 0))
            .response
            .status,
        Status::Good
    );
    // EXCLUSIVE ACCESS: the unregistered nexus can neither read nor write.
    assert_eq!(
        status_of(run(&cdb10(op::READ_10, 0, 0, 1), &b)),
        Status::ReservationConflict
    );
    // RESERVE(6) conflicts for everyone while a registration exists (SPC-5 5.14.3).
    assert_eq!(status_of(run(&RESERVE6, &a)), Status::ReservationConflict);
    // A LUN reset leaves persistent reservations alone.
    st.reset();
    assert_eq!(
        status_of(run(&cdb10(op::READ_10, 0, 0, 1), &b)),
        Status::ReservationConflict
    );
    assert_eq!(
        run(&cdb10(op::READ_10, 0, 0, 1), &a),
        Plan::Read {
            lba: 0,
            blocks: 1,
            fua: false
        }
    );
    // PERSISTENT RESERVE IN is always allowed.
    assert!(!good(run(&[0x5E, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], &b)).is_empty());
    // CLEAR from the holder: the other registrants hear of it.
    assert_eq!(
        st.prout(b.nexus(), 0x06, 0, &pr_params(0, 9))
            .response
            .status,
        Status::Good
    );
    assert_eq!(
        st.prout(a.nexus(), 0x03, 0, &pr_params(7, 0))
            .response
            .status,
        Status::Good
    );
    let mut ua = UnitAttentions::default();
    for s in st.take_attentions(b.nexus()) {
        ua.push(s);
    }
    let s = sense(run_ua(&TUR, &b, &mut ua));
    assert_eq!((s.key, s.asc, s.ascq), (key::UNIT_ATTENTION, 0x2A, 0x03));
    assert!(good(run(&RESERVE6, &b)).is_empty());
}

#[test]
fn removable_medium_ejects_loads_and_is_locked_in() {
    let (a, b) = two_nexuses(true);
    // RMB in INQUIRY.
    assert_eq!(good(run(&[op::INQUIRY, 0, 0, 0, 96, 0], &a))[1], 0x80);
    assert_eq!(good(run(&[op::INQUIRY, 0, 0, 0, 96, 0], &lu()))[1], 0x00);
    let eject = [op::START_STOP_UNIT, 0, 0, 0, 0x02, 0];
    let load = [op::START_STOP_UNIT, 0, 0, 0, 0x03, 0];
    let prevent = [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0];
    let allow = [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0];
    const REMOVAL_PREVENTED: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x53, 0x02);
    const NO_MEDIUM: (u8, u8, u8) = (key::NOT_READY, 0x3A, 0x00);
    assert!(good(run(&prevent, &a)).is_empty());
    assert_eq!(kcq(run(&eject, &b)), REMOVAL_PREVENTED);
    assert!(good(run(&allow, &a)).is_empty());
    assert!(good(run(&eject, &b)).is_empty());
    // Ejected: medium commands are NOT READY for every nexus; INQUIRY still answers.
    for c in [
        TUR.to_vec(),
        cdb10(op::READ_10, 0, 0, 1),
        cdb10(op::WRITE_10, 0, 0, 1),
        cdb10(op::READ_CAPACITY_10, 0, 0, 0),
        cdb10(op::SYNCHRONIZE_CACHE_10, 0, 0, 1),
    ] {
        assert_eq!(kcq(run(&c, &a)), NO_MEDIUM, "{c:02x?}");
    }
    assert!(!good(run(&[op::INQUIRY, 0, 0, 0, 96, 0], &a)).is_empty());
    // A prevention holds the medium out as well as in; a power condition or no LOEJ
    // changes nothing.
    assert!(good(run(&prevent, &b)).is_empty());
    assert_eq!(kcq(run(&load, &a)), REMOVAL_PREVENTED);
    b.state().nexus_lost(b.nexus(), b.session().id());
    assert!(good(run(&[op::START_STOP_UNIT, 0, 0, 0, 0x10, 0], &a)).is_empty());
    assert!(good(run(&[op::START_STOP_UNIT, 0, 0, 0, 0x01, 0], &a)).is_empty());
    assert_eq!(kcq(run(&TUR, &a)), NO_MEDIUM);
    assert!(good(run(&load, &a)).is_empty());
    assert!(good(run(&TUR, &a)).is_empty());
    // PREVENT 1xb is a medium changer's: refused.
    assert_eq!(
        kcq(run(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 2, 0], &a)),
        INVALID_FIELD
    );
    // A fixed LU ignores LOEJ.
    let fixed = lu();
    assert!(good(run(&eject, &fixed)).is_empty());
    assert!(good(run(&TUR, &fixed)).is_empty());
}

#[test]
fn defect_data_and_task_management_functions() {
    let lu = lu();
    // READ DEFECT DATA(10) with PLIST and GLIST asked, format 0: an empty list.
    assert_eq!(
        good(run(
            &[op::READ_DEFECT_DATA_10, 0, 0x18, 0, 0, 0, 0, 0, 32, 0],
            &lu
        )),
        vec![0, 0x18, 0, 0]
    );
    let d = good(run(
        &[op::READ_DEFECT_DATA_12, 0x05, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &lu,
    ));
    assert_eq!(d, vec![0, 0x05, 0, 0, 0, 0, 0, 0]);
    // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ATS ATSS CTSS LURS TRS; REPD gives 16.
    let c = [op::MAINTENANCE_IN, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
    assert_eq!(good(run(&c, &lu)), vec![0xDA, 0, 0, 0]);
    let c = [op::MAINTENANCE_IN, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0];
    let d = good(run(&c, &lu));
    assert_eq!((d.len(), d[3]), (16, 0x0C));
}

#[test]
fn compare_and_write_decodes_its_limits() {
    let lu = lu();
    let caw = |b1: u8, lba: u64, n: u8| {
        let mut c = vec![0u8; 16];
        c[0] = op::COMPARE_AND_WRITE;
        c[1] = b1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = n;
        run(&c, &lu)
    };
    assert_eq!(
        caw(0x18, 7, 1),
        Plan::CompareAndWrite {
            lba: 7,
            blocks: 1,
            fua: true
        }
    );
    assert_eq!(
        caw(0x20, 0, 1),
        check_sense(Sense::invalid_field_in_cdb_bit(1, 7))
    );
    let last = lu.num_blocks() - 1;
    assert_eq!(caw(0, last, 2), check_sense(Sense::lba_out_of_range()));
    assert!(matches!(caw(0, last, 1), Plan::CompareAndWrite { .. }));
    // The Block Limits page names the limit the decoder keeps.
    let vpd = good(run(&[0x12, 0x01, 0xB0, 0, 0xFF, 0], &lu));
    assert_eq!(vpd[5], 255);
}

#[test]
fn write_atomic_keeps_alignment_granularity_and_its_vpd_fields() {
    let lu = LogicalUnit::new(LuConfig {
        num_blocks: 1 << 24,
        ..cfg()
    });
    let wa = |lba: u64, n: u16| {
        let mut c = vec![0u8; 16];
        c[0] = op::WRITE_ATOMIC_16;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[12..14].copy_from_slice(&n.to_be_bytes());
        run(&c, &lu)
    };
    let vpd = good(run(&[0x12, 0x01, 0xB0, 0, 0xFF, 0], &lu));
    let be32 = |at: usize| u32::from_be_bytes(vpd[at..at + 4].try_into().unwrap());
    let (max, align, gran) = (be32(44), be32(48), be32(52));
    let bs = lu.block_size();
    assert_eq!((align, gran), ((4096 / bs).max(1), (4096 / bs).max(1)));
    assert!(max >= 256 && max <= be32(8), "max atomic {max}");
    assert!(matches!(wa(0, gran as u16), Plan::WriteAtomic { .. }));
    if gran > 1 {
        assert_eq!(
            wa(1, gran as u16),
            check_sense(Sense::invalid_field_in_cdb(2))
        );
        assert_eq!(wa(0, 1), check_sense(Sense::invalid_field_in_cdb(12)));
    }
    assert_eq!(
        wa(0, (max + gran) as u16),
        check_sense(Sense::invalid_field_in_cdb(12))
    );
    assert_eq!(wa(u64::MAX - 7, 0), check_sense(Sense::lba_out_of_range()));
}

#[test]
fn read_modify_writes_are_refused_on_a_write_protected_lu() {
    let lu = ro_lu();
    for opcode in [op::COMPARE_AND_WRITE, op::ORWRITE_16, op::WRITE_ATOMIC_16] {
        let mut c = vec![0u8; 16];
        c[0] = opcode;
        c[13] = 8;
        assert_eq!(
            run(&c, &lu),
            check_sense(Sense::write_protected()),
            "{opcode:#x}"
        );
    }
}

#[test]
fn or_into_merges_and_first_difference_finds_the_byte() {
    let mut d = vec![0xA5u8; 4];
    crate::scsi::or_into(&[0x5A, 0, 0x0F, 0xF0], &mut d);
    assert_eq!(d, vec![0xFF, 0xA5, 0xAF, 0xF5]);
    assert_eq!(crate::scsi::first_difference(b"abcd", b"abcd"), None);
    assert_eq!(crate::scsi::first_difference(b"abcd", b"abXd"), Some(2));
}

#[test]
fn prefetch_checks_its_range_and_reads_to_the_end_for_zero() {
    let lu = lu();
    let last = BLOCKS - 1;
    assert_eq!(
        run(&cdb10(op::PRE_FETCH_10, 0x02, 0, 0), &lu),
        Plan::Prefetch {
            lba: 0,
            blocks: BLOCKS
        }
    );
    assert_eq!(
        run(&cdb16(op::PRE_FETCH_16, 0, last, 1), &lu),
        Plan::Prefetch {
            lba: last,
            blocks: 1
        }
    );
    assert_eq!(kcq(run(&cdb16(op::PRE_FETCH_16, 0, last, 2), &lu)), LBA_OOB);
    assert_eq!(
        kcq(run(&cdb16(op::PRE_FETCH_16, 0, BLOCKS, 0), &lu)),
        LBA_OOB
    );
    assert_eq!(
        kcq(run(&cdb16(op::PRE_FETCH_16, 0, u64::MAX, 1), &lu)),
        LBA_OOB
    );
}

#[test]
fn a_thick_lu_answers_as_fully_provisioned() {
    let lu = LogicalUnit::new(LuConfig {
        thick: true,
        ..cfg()
    });
    let rc16 = good(run(&cdb16(op::SERVICE_ACTION_IN_16, 0x10, 0, 32), &lu));
    assert_eq!(rc16[14] & 0xC0, 0, "LBPME and LBPRZ clear");
    let b2 = good(run(&[0x12, 0x01, 0xB2, 0, 0xFF, 0], &lu));
    assert_eq!(
        (b2[5], b2[6]),
        (0, 0),
        "no LBPU/LBPWS, provisioning type 000b"
    );
    let b0 = good(run(&[0x12, 0x01, 0xB0, 0, 0xFF, 0], &lu));
    assert_eq!(&b0[20..36], &[0u8; 16], "no UNMAP limits");
    assert_eq!(kcq(run(&cdb10(op::UNMAP, 0, 0, 24), &lu)), INVALID_OPCODE);
    assert_eq!(
        kcq(run(&cdb16(op::WRITE_SAME_16, 0x08, 0, 8), &lu)),
        INVALID_FIELD
    );
    assert!(matches!(
        run(&cdb16(op::WRITE_SAME_16, 0, 0, 8), &lu),
        Plan::WriteSame { unmap: false, .. }
    ));
}

#[test]
fn sanitize_exists_only_where_allowed_and_checks_its_fields() {
    let san = |lu: &LogicalUnit, b1: u8, len: u16| {
        let mut c = vec![0u8; 10];
        c[0] = op::SANITIZE;
        c[1] = b1;
        c[7..9].copy_from_slice(&len.to_be_bytes());
        run(&c, lu)
    };
    assert_eq!(kcq(san(&lu(), 0x01, 516)), INVALID_OPCODE);
    let none = good(run(
        &[0xA3, 0x0C, 0x02, op::SANITIZE, 0, 0x01, 0, 0, 1, 0, 0, 0],
        &lu(),
    ));
    assert_eq!(none[1] & 0x07, 0x01, "not listed where not allowed");
    let lu = LogicalUnit::new(LuConfig {
        sanitize: true,
        ..cfg()
    });
    let listed = good(run(
        &[0xA3, 0x0C, 0x02, op::SANITIZE, 0, 0x02, 0, 0, 1, 0, 0, 0],
        &lu,
    ));
    assert_eq!(listed[1] & 0x07, 0x03);
    assert_eq!(
        san(&lu, 0x81, 516),
        Plan::Sanitize {
            kind: crate::scsi::SanitizeKind::Overwrite { len: 516 },
            immed: true
        }
    );
    assert_eq!(
        san(&lu, 0x02, 0),
        Plan::Sanitize {
            kind: crate::scsi::SanitizeKind::Erase,
            immed: false
        }
    );
    assert!(good(san(&lu, 0x1F, 0)).is_empty());
    for (b1, len) in [
        (0x01, 4),
        (0x01, 517),
        (0x02, 8),
        (0x03, 8),
        (0x1F, 8),
        (0x41, 516),
        (0x04, 0),
        (0x00, 0),
    ] {
        assert_eq!(kcq(san(&lu, b1, len)), INVALID_FIELD, "{b1:#x} {len}");
    }
    let mut c = vec![0u8; 10];
    c[0] = op::SANITIZE;
    c[1] = 0x02;
    c[4] = 1;
    assert_eq!(kcq(run(&c, &lu)), INVALID_FIELD);
    let ro = LogicalUnit::new(LuConfig {
        sanitize: true,
        read_only: true,
        ..cfg()
    });
    assert_eq!(kcq(san(&ro, 0x02, 0)), WRITE_PROTECTED);
    // The Block Device Characteristics page says reads work after an erase.
    let b1 = good(run(&[0x12, 0x01, 0xB1, 0, 0xFF, 0], &lu));
    assert_eq!(b1[7], 0x50);
}

#[test]
fn overwrite_parameters_tile_the_pattern_over_a_block() {
    let (block, count, invert) =
        crate::scsi::overwrite_block(&[0x82, 0, 0, 3, 1, 2, 3], 8).unwrap();
    assert_eq!(
        (block, count, invert),
        (vec![1, 2, 3, 1, 2, 3, 1, 2], 2, true)
    );
    assert!(
        crate::scsi::overwrite_block(&[0x00, 0, 0, 1, 9], 8).is_err(),
        "count 0"
    );
    assert!(
        crate::scsi::overwrite_block(&[0x01, 0, 0, 0, 9], 8).is_err(),
        "no pattern"
    );
    assert!(
        crate::scsi::overwrite_block(&[0x01, 0, 0, 9, 9], 8).is_err(),
        "pattern > block"
    );
    assert!(
        crate::scsi::overwrite_block(&[0x01, 0, 0, 2, 9], 8).is_err(),
        "short list"
    );
}

/// A presence the test switches off, as a connection whose initiator hung up.
struct Switch(std::sync::atomic::AtomicBool);

impl Presence for Switch {
    fn gone(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[test]
fn what_a_hung_up_session_holds_bars_no_one_before_its_nexus_loss_is_reported() {
    let state = std::sync::Arc::new(LuState::default());
    let n =
        |i: u8| reservations::Nexus::new(&format!("iqn.test:{i}"), [0, 0, 0, 0, 0, i], "iqn.t", 1);
    let switch = std::sync::Arc::new(Switch(false.into()));
    let a = LogicalUnit::new(cfg()).with_removable(true).shared(
        state.clone(),
        n(1),
        SessionRef::new(1, switch.clone()),
    );
    let b = LogicalUnit::new(cfg())
        .with_removable(true)
        .shared(state, n(2), SessionRef::fixed(2));
    let eject = [op::START_STOP_UNIT, 0, 0, 0, 0x02, 0];
    let load = [op::START_STOP_UNIT, 0, 0, 0, 0x03, 0];
    assert!(good(run(&[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0], &a)).is_empty());
    assert!(good(run(&RESERVE6, &a)).is_empty());
    assert_eq!(status_of(run(&TUR, &b)), Status::ReservationConflict);
    assert_eq!(status_of(run(&RESERVE6, &b)), Status::ReservationConflict);
    switch.0.store(true, std::sync::atomic::Ordering::Release);
    assert!(
        good(run(&TUR, &b)).is_empty(),
        "the RESERVE went with its session"
    );
    assert!(good(run(&eject, &b)).is_empty(), "so did the PREVENT");
    assert!(good(run(&load, &b)).is_empty());
    assert!(good(run(&RESERVE6, &b)).is_empty());
}
