//! EXTENDED COPY (LID1) between LUNs of different volumes, done inside the target: the
//! copy reads back byte-equal through the target, the destination's pages are dirty in
//! its tracker (the copy took the write path), RECEIVE COPY RESULTS reports it, and the
//! copies that cannot be done (an unknown LU, a read-only destination) change nothing.

mod common;

use common::raw::RawClient;
use common::{TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const BLOCK: usize = 512;

fn dirty_pages(s: &TestServer, name: &str) -> u64 {
    s.volume_view(name)["dirty_pages"]
        .as_u64()
        .expect("dirty_pages in volume show")
}

/// The NAA designator (type 3, association LU) VPD page 83h reports for `lun`.
fn naa(c: &mut RawClient, lun: u64) -> Vec<u8> {
    let page = c.scsi_good(lun, &[0x12, 0x01, 0x83, 0x00, 0xFF, 0x00], &[], 255);
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = page[at + 3] as usize;
        if page[at + 1] & 0x3F == 0x03 {
            return page[at + 4..at + 4 + len].to_vec();
        }
        at += 4 + len;
    }
    panic!("LUN {lun}: no NAA designator in {page:02x?}");
}

/// An identification descriptor target descriptor (E4h) naming `naa`, 512-byte blocks.
fn target(naa: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4] = 0x01;
    d[5] = 0x03;
    d[7] = naa.len() as u8;
    d[8..8 + naa.len()].copy_from_slice(naa);
    d[29..32].copy_from_slice(&(BLOCK as u32).to_be_bytes()[1..]);
    d
}

/// A block to block segment descriptor (02h).
fn segment(src: u16, dst: u16, blocks: u16, from: u64, to: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&from.to_be_bytes());
    d[20..28].copy_from_slice(&to.to_be_bytes());
    d
}

/// A parameter list with LIST ID USAGE 00b (status kept) and list identifier `id`.
fn copy_list(id: u8, targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let (t, s) = (targets.concat(), segments.concat());
    let mut d = vec![0u8; 16];
    d[0] = id;
    d[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    d.extend_from_slice(&t);
    d.extend_from_slice(&s);
    d
}

fn extended_copy_cdb(len: usize) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    cdb
}

#[test]
fn extended_copy_between_volumes_reads_back_and_is_tracked() {
    let s = TestServer::start();
    for (name, lun) in [("src", "1"), ("dst", "2"), ("ro", "3")] {
        s.ctl_ok(&["volume", "create", name, "--size", "64M"]);
        if name == "ro" {
            s.ctl_ok(&["lun", "map", DEMO_IQN, lun, name, "--read-only"]);
        } else {
            s.ctl_ok(&["lun", "map", DEMO_IQN, lun, name]);
        }
    }
    let mut c = RawClient::connect(s.addr);
    c.login("iqn.2026-12.test:xcopy", DEMO_IQN, Digests::default());
    for lun in [1, 2, 3] {
        // Past the power-on unit attention of each nexus.
        c.scsi_good(lun, &[0, 0, 0, 0, 0, 0], &[], 0);
    }
    let pattern: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 511) as u8).collect();
    c.write10(1, 100, &pattern, BLOCK);
    let (src, dst, ro) = (naa(&mut c, 1), naa(&mut c, 2), naa(&mut c, 3));
    assert_ne!(src, dst);
    assert_eq!(dirty_pages(&s, "dst"), 0);

    // 128 blocks from LBA 100 of `src` to LBA 2000 of `dst` (4 KiB pages 250..266),
    // sent on LUN 1: the copy manager finds `dst` by its designator.
    let blocks = (pattern.len() / BLOCK) as u16;
    let list = copy_list(
        7,
        &[target(&src), target(&dst)],
        &[segment(0, 1, blocks, 100, 2000)],
    );
    c.scsi_good(1, &extended_copy_cdb(list.len()), &list, 0);
    assert_eq!(c.read10(2, 2000, blocks, BLOCK), pattern, "copy reads back");
    assert_eq!(
        dirty_pages(&s, "dst"),
        16,
        "the copy's 16 pages are dirty in the destination's tracker"
    );

    // RECEIVE COPY RESULTS, COPY STATUS of list 7: done, one segment, 64 KiB.
    let mut rcr = [0u8; 16];
    rcr[0] = 0x84;
    rcr[2] = 7;
    rcr[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let status = c.scsi_good(1, &rcr, &[], 1024);
    assert_eq!(status[4], 0x01, "completed without errors");
    assert_eq!(u16::from_be_bytes([status[5], status[6]]), 1);
    assert_eq!(
        (status[7], &status[8..12]),
        (0, &65536u32.to_be_bytes()[..])
    );

    // Within one volume, 2 MiB (more than the 1 MiB the copy moves at a time) onto a
    // range overlapping its source from behind: the result is that of a copy through
    // a buffer (the source as it was before the copy).
    let big: Vec<u8> = (0..2 << 20u32).map(|i| (i / 4099 + i * 13) as u8).collect();
    for (k, piece) in big.chunks(64 * 1024).enumerate() {
        c.write10(1, 20_000 + 128 * k as u32, piece, BLOCK);
    }
    let big_blocks = (big.len() / BLOCK) as u16;
    let list = copy_list(
        11,
        &[target(&src)],
        &[segment(0, 0, big_blocks, 20_000, 21_024)],
    );
    c.scsi_good(1, &extended_copy_cdb(list.len()), &list, 0);
    for (k, piece) in big.chunks(64 * 1024).enumerate() {
        let got = c.read10(1, 21_024 + 128 * k as u32, 128, BLOCK);
        assert!(got == piece, "overlapping copy: 64 KiB piece {k} differs");
    }

    // A destination mapped read-only: DATA PROTECT, nothing written.
    let list = copy_list(
        8,
        &[target(&src), target(&ro)],
        &[segment(0, 1, blocks, 100, 0)],
    );
    let o = c.scsi(1, &extended_copy_cdb(list.len()), &list, 0);
    assert_eq!(
        (o.status, o.sense_key()),
        (2, Some(0x07)),
        "{:02x?}",
        &o.sense[..]
    );
    assert_eq!(dirty_pages(&s, "ro"), 0);
    // An LU the node does not have: COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE.
    let mut unknown = dst.clone();
    let last = unknown.len() - 1;
    unknown[last] ^= 0xFF;
    let list = copy_list(
        9,
        &[target(&src), target(&unknown)],
        &[segment(0, 1, 8, 0, 0)],
    );
    let o = c.scsi(1, &extended_copy_cdb(list.len()), &list, 0);
    assert_eq!((o.status, o.sense_key()), (2, Some(0x0A)));
    assert_eq!((o.sense[12], o.sense[13]), (0x0D, 0x02));
    // A segment past the destination's last block: COPY ABORTED, nothing written.
    let last_lba = 64 * 1024 * 1024 / BLOCK as u64 - 8;
    let list = copy_list(
        10,
        &[target(&src), target(&dst)],
        &[segment(0, 1, 16, 0, last_lba)],
    );
    let o = c.scsi(1, &extended_copy_cdb(list.len()), &list, 0);
    assert_eq!((o.status, o.sense_key()), (2, Some(0x0A)));
    assert_eq!(dirty_pages(&s, "dst"), 16, "a refused copy marks nothing");
}
