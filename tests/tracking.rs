//! Write tracking on the live write path: every write through iSCSI marks its pages,
//! `volume show` reports them, a clean restart keeps them exactly, after a crash the
//! activity log gives back the extents written (more than needed, never less), and
//! after serving untracked every page counts as changed.

mod common;

use common::{qemu_io, TestServer, DEMO_IQN};

fn dirty_pages(s: &TestServer, name: &str) -> u64 {
    let out = s.ctl_ok(&["--json", "volume", "show", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("volume show JSON");
    v["dirty_pages"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dirty_pages in {out}"))
}

#[test]
fn writes_mark_pages_and_restarts_keep_or_widen_them() {
    let mut s = TestServer::start();
    s.ctl_ok(&[
        "volume",
        "create",
        "t",
        "--size",
        "64M",
        "--page-size",
        "64K",
    ]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "t"]);
    assert_eq!(dirty_pages(&s, "t"), 0);
    let url = s.url(DEMO_IQN, 1);
    // Page 0; pages 16 and 17 (128 KiB at 1 MiB); page 160; pages 318 and 319 (a write
    // across a page boundary); page 0 again.
    qemu_io(
        &url,
        &[
            "write -P 1 0 4k",
            "write -P 2 1m 128k",
            "write -P 3 10m 512",
            "write -P 4 20412k 8k",
            "write -P 5 8k 4k",
        ],
    );
    assert_eq!(dirty_pages(&s, "t"), 6);
    // Reads mark nothing.
    qemu_io(&url, &["read 0 4m"]);
    assert_eq!(dirty_pages(&s, "t"), 6);

    // A clean restart keeps exactly the same pages.
    s.restart();
    assert_eq!(
        dirty_pages(&s, "t"),
        6,
        "a clean restart lost or added dirty pages"
    );

    // One more write, into 4 MiB extent 10 (pages 640 to 703), then a crash: the
    // activity log gives back the 6 pages carried over from the restart and the whole
    // extent written since.
    qemu_io(&url, &["write -P 6 40m 4k"]);
    assert_eq!(dirty_pages(&s, "t"), 7);
    common::kill9(&mut s);
    s.restart();
    assert_eq!(
        dirty_pages(&s, "t"),
        6 + 64,
        "after a crash the log must give the pages carried over and the written extent"
    );

    // Served untracked, then tracked again: nothing recorded the untracked writes, so
    // every page counts.
    s.extra = vec!["--no-write-tracking".into()];
    s.restart();
    s.extra.clear();
    s.restart();
    assert_eq!(
        dirty_pages(&s, "t"),
        1024,
        "after serving untracked the whole volume must count"
    );

    // Deleting the volume removes its tracking state.
    let tracking = s.tracking_dir("t");
    assert!(tracking.exists(), "{}", tracking.display());
    s.ctl_ok(&["lun", "unmap", DEMO_IQN, "1"]);
    s.ctl_ok(&["volume", "delete", "t"]);
    assert!(!tracking.exists(), "tracking state left behind");
}

/// With the file system full, overwrites of allocated blocks of a thin volume keep
/// succeeding, also the first write to each 4 MiB extent since the activity log's
/// epoch began (its record goes into space reserved ahead), while a write that needs
/// new blocks answers SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h) and changes
/// nothing.
#[test]
fn a_full_disk_fails_only_the_writes_that_need_new_blocks() {
    use common::raw::RawClient;
    use twinlun::iscsi::pdu::Digests;

    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("fs");
    let _fs = common::Tmpfs::mount(&mnt, "64m");
    let mut s = TestServer::start_at(&mnt.join("data"), &[]);
    s.ctl_ok(&["volume", "create", "t", "--size", "32M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "t"]);
    let block = s.volume_view("t")["block_size"]
        .as_u64()
        .expect("block size") as usize;
    // Extents 0 to 3 allocated; then a clean restart starts a new activity epoch in
    // which none of them is recorded yet.
    qemu_io(&s.url(DEMO_IQN, 1), &["write -P 1 0 16m"]);
    s.restart();
    let filled = common::fill_up(&mnt.join("filler"));
    assert!(filled > 0, "nothing filled");

    let mut c = RawClient::connect(s.addr);
    c.login("iqn.2026-12.test:full", DEMO_IQN, Digests::default());
    let lba_of = |offset: u64| (offset / block as u64) as u32;
    // One overwrite in each allocated extent: each needs an activity record first.
    for extent in 0..4u64 {
        let data = vec![extent as u8 + 2; 4096];
        c.write10(1, lba_of(extent * (4 << 20) + 8192), &data, block);
    }
    // A new block of the thin volume: no space.
    let new_at = lba_of(24 << 20);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&new_at.to_be_bytes());
    cdb[7..9].copy_from_slice(&((4096 / block) as u16).to_be_bytes());
    let mut outcome = c.scsi(1, &cdb, &[7u8; 4096], 0);
    if outcome.sense_key() == Some(0x6) {
        outcome = c.scsi(1, &cdb, &[7u8; 4096], 0);
    }
    assert_eq!(outcome.status, 0x02, "a write needing new blocks must fail");
    assert_eq!(
        (outcome.sense_key(), outcome.sense[12], outcome.sense[13]),
        (Some(0x07), 0x27, 0x07),
        "expected DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT"
    );
    // The overwrites landed; the refused write left zeros.
    for extent in 0..4u64 {
        let got = c.read10(
            1,
            lba_of(extent * (4 << 20) + 8192),
            (4096 / block) as u16,
            block,
        );
        assert!(
            got.iter().all(|&b| b == extent as u8 + 2),
            "extent {extent}"
        );
        let before = c.read10(1, lba_of(extent * (4 << 20)), (4096 / block) as u16, block);
        assert!(before.iter().all(|&b| b == 1), "extent {extent}");
    }
    let refused = c.read10(1, new_at, (4096 / block) as u16, block);
    assert!(
        refused.iter().all(|&b| b == 0),
        "the refused write changed data"
    );
    drop(c);
    s.stop();
}
