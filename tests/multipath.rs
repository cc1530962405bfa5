//! ALUA and multipath: one target on two portals, each portal its own target port group.
//! Both paths report the same LU identity with their own relative port and group, REPORT
//! TARGET PORT GROUPS lists both, and a group set to standby with `ctl port-group set`
//! answers media access with NOT READY, TARGET PORT IN STANDBY STATE while the other
//! portal serves; the state survives a restart and goes back with `active-optimized`.
//! Discovery through either portal lists both.

mod common;

use common::raw::RawClient;
use common::{run_ok, TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const BLOCK: usize = 512;

/// The designators of VPD page 83h: (association and type byte, designator).
fn designators(c: &mut RawClient, lun: u64) -> Vec<(u8, Vec<u8>)> {
    let page = c.scsi_good(lun, &[0x12, 0x01, 0x83, 0x00, 0xFF, 0x00], &[], 255);
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = page[at + 3] as usize;
        out.push((page[at + 1] & 0x3F, page[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

fn designator(ds: &[(u8, Vec<u8>)], kind: u8) -> Vec<u8> {
    ds.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no designator {kind:#x} in {ds:02x?}"))
}

/// REPORT TARGET PORT GROUPS (extended header): (group, state, relative ports).
fn port_groups(c: &mut RawClient, lun: u64) -> Vec<(u16, u8, Vec<u16>)> {
    let cdb = [0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let d = c.scsi_good(lun, &cdb, &[], 1024);
    assert_eq!(d[4] & 0x70, 0x10, "extended header");
    let mut out = Vec::new();
    let mut at = 8;
    while at + 8 <= d.len() {
        let count = d[at + 7] as usize;
        let ports = (0..count)
            .map(|i| u16::from_be_bytes([d[at + 10 + 4 * i], d[at + 11 + 4 * i]]))
            .collect();
        out.push((
            u16::from_be_bytes([d[at + 2], d[at + 3]]),
            d[at] & 0x0F,
            ports,
        ));
        at += 8 + 4 * count;
    }
    out
}

fn read10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// Key, ASC, ASCQ of a command's answer (None for GOOD).
fn answer(c: &mut RawClient, lun: u64, cdb: &[u8], read_len: u32) -> Option<(u8, u8, u8)> {
    let o = c.scsi(lun, cdb, &[], read_len);
    (o.status != 0).then(|| (o.sense[2] & 0x0F, o.sense[12], o.sense[13]))
}

fn login(addr: &str, initiator: &str) -> RawClient {
    let mut c = RawClient::connect(addr.parse().expect("portal address"));
    c.login(initiator, DEMO_IQN, Digests::default());
    // Past the power-on unit attention.
    c.scsi_good(1, &[0, 0, 0, 0, 0, 0], &[], 0);
    c
}

const STANDBY: (u8, u8, u8) = (0x02, 0x04, 0x0B);

#[test]
fn a_standby_port_group_refuses_media_access_while_the_other_portal_serves() {
    let mut s = TestServer::start_with(&["--listen", "127.0.0.1:0"]);
    assert_eq!(s.addrs.len(), 2, "two portals: {:?}", s.addrs);
    s.ctl_ok(&["volume", "create", "mp", "--size", "16M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "mp"]);
    let mut a = login(&s.addrs[0], "iqn.2026-12.test:path-a");
    let mut b = login(&s.addrs[1], "iqn.2026-12.test:path-b");

    // One LU through both ports: the same NAA, each port its own relative port (type
    // 4h, association target port: 14h) and target port group (15h).
    let (da, db) = (designators(&mut a, 1), designators(&mut b, 1));
    assert_eq!(designator(&da, 0x03), designator(&db, 0x03), "same LU");
    assert_eq!(designator(&da, 0x14), [0, 0, 0, 1]);
    assert_eq!(designator(&db, 0x14), [0, 0, 0, 2]);
    assert_eq!(designator(&da, 0x15), [0, 0, 0, 1]);
    assert_eq!(designator(&db, 0x15), [0, 0, 0, 2]);
    let inquiry = a.scsi_good(1, &[0x12, 0, 0, 0, 96, 0], &[], 96);
    assert_eq!(inquiry[5] & 0x30, 0x10, "TPGS 01b: implicit ALUA");
    assert_eq!(
        port_groups(&mut b, 1),
        [(1, 0x0, vec![1]), (2, 0x0, vec![2])],
        "both groups active/optimized"
    );

    // Discovery through one portal names both, each with its portal group tag.
    let listed = run_ok("iscsi-ls", &[&format!("iscsi://{}", s.addrs[0])]);
    for (i, a) in s.addrs.iter().enumerate() {
        let line = format!("Target:{DEMO_IQN} Portal:{a},{}", i + 1);
        assert!(listed.contains(&line), "{line} not in\n{listed}");
    }

    let data: Vec<u8> = (0..8 * BLOCK).map(|i| (i % 251) as u8).collect();
    a.write10(1, 0, &data, BLOCK);
    assert_eq!(b.read10(1, 0, 8, BLOCK), data, "the other path reads it");

    s.ctl_ok(&["port-group", "set", "2", "standby"]);
    let status = s.ctl_json(&["status"]);
    let groups = &status["port_groups"];
    assert_eq!(groups[0]["state"], "active-optimized", "{status}");
    assert_eq!(groups[1]["state"], "standby", "{status}");
    assert_eq!(groups[1]["portal"], s.addrs[1].as_str(), "{status}");
    // The change is announced once on the nexus, then the standby answers.
    assert_eq!(
        answer(&mut b, 1, &read10_cdb(0, 8), 4096),
        Some((0x06, 0x2A, 0x06)),
        "ASYMMETRIC ACCESS STATE CHANGED"
    );
    assert_eq!(answer(&mut b, 1, &read10_cdb(0, 8), 4096), Some(STANDBY));
    let mut write = [0u8; 10];
    write[0] = 0x2A;
    write[8] = 1;
    let o = b.scsi(1, &write, &data[..BLOCK], 0);
    assert_eq!(
        (o.status, o.sense[2] & 0x0F, o.sense[12], o.sense[13]),
        (2, STANDBY.0, STANDBY.1, STANDBY.2)
    );
    // Identity, LUN inventory, port groups and TEST UNIT READY are still served.
    assert_eq!(answer(&mut b, 1, &[0x12, 0, 0, 0, 96, 0], 96), None);
    assert_eq!(
        answer(&mut b, 1, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256),
        None
    );
    assert_eq!(answer(&mut b, 1, &[0, 0, 0, 0, 0, 0], 0), None);
    assert_eq!(
        port_groups(&mut b, 1),
        [(1, 0x0, vec![1]), (2, 0x2, vec![2])]
    );
    // Meanwhile the first portal serves reads and writes.
    assert_eq!(
        answer(&mut a, 1, &read10_cdb(0, 8), 4096),
        Some((0x06, 0x2A, 0x06))
    );
    assert_eq!(a.read10(1, 0, 8, BLOCK), data);
    a.write10(1, 8, &data, BLOCK);
    assert_eq!(a.read10(1, 8, 8, BLOCK), data);

    // Persisted like other admin changes: after a restart the second portal (a new
    // port) is still in standby.
    drop((a, b));
    s.restart();
    assert_eq!(s.addrs.len(), 2);
    let mut b = login(&s.addrs[1], "iqn.2026-12.test:path-b");
    assert_eq!(answer(&mut b, 1, &read10_cdb(0, 8), 4096), Some(STANDBY));
    let mut a = login(&s.addrs[0], "iqn.2026-12.test:path-a");
    assert_eq!(a.read10(1, 8, 8, BLOCK), data);

    s.ctl_ok(&["port-group", "set", "2", "active-optimized"]);
    assert_eq!(
        answer(&mut b, 1, &read10_cdb(0, 8), 4096),
        Some((0x06, 0x2A, 0x06))
    );
    assert_eq!(b.read10(1, 0, 8, BLOCK), data);
    // Bad input changes nothing.
    for bad in [
        &["port-group", "set", "0", "standby"][..],
        &["port-group", "set", "2", "asleep"],
    ] {
        let out = s.ctl(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    assert_eq!(b.read10(1, 0, 8, BLOCK), data);
}
