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
