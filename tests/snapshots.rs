//! Snapshots through real initiators: a snapshot LUN reads exactly the volume at its
//! cut while the volume keeps changing, survives a clean restart, refuses writes, and
//! frees its store when deleted; group snapshots taken under dependent writes across two
//! volumes are consistent cuts.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::dependent::{
    after_writes, dependent_writer_counted, generations, Control, Images, BLOCK, BLOCKS,
};
use common::raw::RawClient;
use common::{qemu_io, qemu_io_read_only, wait_until, TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const INITIATOR: &str = "iqn.2026-11.test:snapshots";

/// Spill files a volume's snapshots keep in its tracking directory.
fn spill_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cow"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_volume_snapshot_reads_as_its_cut_through_a_real_initiator() {
    let mut s = TestServer::start();
    s.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let live = s.url(DEMO_IQN, 1);
    qemu_io(&live, &["write -P 0x11 0 4m", "write -P 0x12 10m 1m"]);
    let dirty_before = s.ctl_json(&["volume", "show", "v"])["dirty_pages"]
        .as_u64()
        .unwrap();
    assert_eq!(dirty_before, 1024 + 256);

    let snap = s.ctl_json(&["snapshot", "create", "s1", "--volume", "v"]);
    assert_eq!(snap["state"], "ok", "{snap}");
    assert_eq!(snap["pages_preserved"], 0);
    assert!(snap["group"].is_null());
    // An admin snapshot leaves the dirty pages to replication.
    assert_eq!(
        s.ctl_json(&["volume", "show", "v"])["dirty_pages"],
        dirty_before
    );

    // Overwrite 2 MiB of the first pattern, write where nothing was, and change 1 KiB
    // inside one page of the second pattern.
    qemu_io(
        &live,
        &[
            "write -P 0x21 1m 2m",
            "write -P 0x22 30m 64k",
            "write -P 0x23 10486272 1k",
        ],
    );
    let out = s.ctl_ok(&["lun", "map", DEMO_IQN, "2", "v@s1"]);
    assert!(out.contains("read-only"), "{out}");
    let snap_url = s.url(DEMO_IQN, 2);
    let at_cut = [
        "read -P 0x11 0 4m",
        "read -P 0x12 10m 1m",
        "read -P 0 30m 64k",
        "read -P 0 4m 6m",
    ];
    qemu_io_read_only(&snap_url, &at_cut);
    qemu_io_read_only(
        &live,
        &[
            "read -P 0x11 0 1m",
            "read -P 0x21 1m 2m",
            "read -P 0x11 3m 1m",
            "read -P 0x22 30m 64k",
            "read -P 0x23 10486272 1k",
        ],
    );
    // 512 pages under the 2 MiB, 16 under the 64 KiB, 1 under the 1 KiB: each once.
    let shown = s.ctl_json(&["snapshot", "show", "s1"]);
    assert_eq!(shown["pages_preserved"], 529, "{shown}");
    assert_eq!(shown["bytes_used"], 529 * 4096, "{shown}");
    assert_eq!(shown["mappings"][0]["lun"], 2, "{shown}");

    // The snapshot LUN refuses writes: DATA PROTECT.
    let mut c = RawClient::connect(s.addr);
    c.login(INITIATOR, DEMO_IQN, Digests::default());
    let _ = c.scsi(2, &[0; 6], &[], 0); // the power-on unit attention
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[8] = 1;
    let o = c.scsi(2, &cdb, &[0x55; 512], 0);
    assert_eq!((o.status, o.sense_key()), (2, Some(0x7)), "{o:?}");
    drop(c);

    // A clean restart keeps the snapshot, its content and its figures.
    s.restart();
    qemu_io_read_only(&snap_url, &at_cut);
    let shown = s.ctl_json(&["snapshot", "show", "s1"]);
    assert_eq!(shown["state"], "ok", "{shown}");
    assert_eq!(shown["pages_preserved"], 529, "{shown}");
    assert_eq!(spill_files(&s.tracking_dir("v")).len(), 1);

    // Deleting is refused while mapped; once unmapped it frees the store.
    let o = s.ctl(&["snapshot", "delete", "s1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is mapped") && err.contains("LUN 2"), "{err}");
    s.ctl_ok(&["lun", "unmap", DEMO_IQN, "2"]);
    s.ctl_ok(&["snapshot", "delete", "s1"]);
    assert_eq!(
        s.ctl_json(&["snapshot", "list"])["snapshots"],
        serde_json::json!([])
    );
    assert!(
        spill_files(&s.tracking_dir("v")).is_empty(),
        "{:?}",
        spill_files(&s.tracking_dir("v"))
    );
    // The volume is untouched by it all.
    qemu_io_read_only(&live, &["read -P 0x21 1m 2m", "read -P 0x22 30m 64k"]);
}

// ---- group snapshots under dependent writes -------------------------------------------

const GROUP_IQN: &str = "iqn.2026-11.test:group";
const CHECK_IQN: &str = "iqn.2026-11.test:check";

#[test]
fn group_snapshots_under_dependent_writes_are_consistent_cuts() {
    let mut s = TestServer::start();
    for v in ["a", "b"] {
        s.ctl_ok(&["volume", "create", v, "--size", "256K"]);
    }
    s.ctl_ok(&["group", "create", "g", "b", "a"]);
    s.ctl_ok(&["target", "create", GROUP_IQN]);
    s.ctl_ok(&["target", "create", CHECK_IQN]);
    s.ctl_ok(&["lun", "map", GROUP_IQN, "0", "a"]);
    s.ctl_ok(&["lun", "map", GROUP_IQN, "1", "b"]);

    let stop = Arc::new(AtomicBool::new(false));
    let (control, control_rx) = mpsc::channel();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let addr = s.addr;
        std::thread::spawn(move || {
            dependent_writer_counted(addr, GROUP_IQN, stop, control_rx, written)
        })
    };
    let mut reader = RawClient::connect(s.addr);
    reader.login(INITIATOR, GROUP_IQN, Digests::default());

    // Snapshots while the writer runs; every fourth at a quiet moment, with the
    // volumes' content captured then.
    let mut snaps: Vec<(String, Option<Images>)> = Vec::new();
    for n in 0..28 {
        let name = format!("s{n}");
        if n % 4 == 3 {
            let (paused_tx, paused_rx) = mpsc::channel();
            control.send(Control::Pause(paused_tx)).unwrap();
            paused_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the writer pauses");
            s.ctl_ok(&["snapshot", "create", &name, "--group", "g"]);
            let a = reader.read10(0, 0, BLOCKS as u16, BLOCK);
            let b = reader.read10(1, 0, BLOCKS as u16, BLOCK);
            control.send(Control::Resume).unwrap();
            snaps.push((name, Some((a, b))));
        } else {
            s.ctl_ok(&["snapshot", "create", &name, "--group", "g"]);
            snaps.push((name, None));
        }
        // The writer moves on before the next snapshot: enough writes between any two
        // for the run to make more than 4 passes' worth (checked below).
        let since = written.load(Ordering::Acquire);
        let n_writes = since + 4 * BLOCKS / 28 + 1;
        wait_until(
            &format!("{n_writes} writes"),
            Duration::from_secs(30),
            || match written.load(Ordering::Acquire) {
                w if w >= n_writes => Ok(()),
                w => Err(format!("{w} writes")),
            },
        );
    }
    stop.store(true, Ordering::Release);
    let writes = writer.join().expect("writer thread");
    assert!(
        writes > 4 * BLOCKS,
        "the writer made only {writes} writes: too few to overlap the snapshots"
    );

    // Every cut is counted, with its pause (last, max).
    let cuts = &s.ctl_json(&["status"])["cuts"];
    assert_eq!(cuts["taken"], 28, "{cuts}");
    assert_eq!(cuts["failed"], 0, "{cuts}");
    assert!(cuts["last_pause_us"].as_u64().unwrap() <= cuts["max_pause_us"].as_u64().unwrap());

    let mut distinct = std::collections::BTreeSet::new();
    for (n, (name, captured)) in snaps.iter().enumerate() {
        let shown = s.ctl_json(&["snapshot", "show", name]);
        assert_eq!(shown["state"], "ok", "{shown}");
        assert_eq!(shown["group"], "g", "{shown}");
        let pause = shown["pause_us"].as_u64().unwrap();
        assert!(pause < 2_000_000, "{name} paused writers {pause} us");
        let (lun_a, lun_b) = (2 * n as u64, 2 * n as u64 + 1);
        s.ctl_ok(&[
            "lun",
            "map",
            CHECK_IQN,
            &lun_a.to_string(),
            &format!("a@{name}"),
        ]);
        s.ctl_ok(&[
            "lun",
            "map",
            CHECK_IQN,
            &lun_b.to_string(),
            &format!("b@{name}"),
        ]);
        let mut c = RawClient::connect(s.addr);
        c.login(INITIATOR, CHECK_IQN, Digests::default());
        let image_a = c.read10(lun_a, 0, BLOCKS as u16, BLOCK);
        let image_b = c.read10(lun_b, 0, BLOCKS as u16, BLOCK);
        let (a, b) = (generations(0, &image_a), generations(1, &image_b));
        // The property the issue names: B[i] written only if A[i] is, and never a
        // newer pass of B[i] than of A[i].
        for i in 0..BLOCKS {
            assert!(
                b[i] <= a[i],
                "{name}: block {i} of B is at pass {} but A only at {}",
                b[i],
                a[i]
            );
        }
        // Stronger: one write in flight at a time, so a cut is the state after exactly
        // some number of writes.
        let k: usize = a.iter().chain(&b).map(|&g| g as usize).sum();
        assert_eq!(
            (a.clone(), b.clone()),
            after_writes(k),
            "{name} is not the state after any prefix of the writes"
        );
        distinct.insert(k);
        if let Some((want_a, want_b)) = captured {
            assert!(
                image_a == *want_a,
                "{name} differs from volume A at its quiet moment"
            );
            assert!(
                image_b == *want_b,
                "{name} differs from volume B at its quiet moment"
            );
        }
    }
    eprintln!(
        "{} snapshots during {writes} dependent writes caught {} distinct states",
        snaps.len(),
        distinct.len()
    );
    assert!(
        distinct.len() >= 4,
        "the snapshots caught only {} distinct states",
        distinct.len()
    );

    // Deleting them all frees every store.
    for (n, (name, _)) in snaps.iter().enumerate() {
        for lun in [2 * n, 2 * n + 1] {
            s.ctl_ok(&["lun", "unmap", CHECK_IQN, &lun.to_string()]);
        }
        s.ctl_ok(&["snapshot", "delete", name]);
    }
    assert_eq!(
        s.ctl_json(&["snapshot", "list"])["snapshots"],
        serde_json::json!([])
    );
    let (a, b) = (s.tracking_dir("a"), s.tracking_dir("b"));
    s.stop();
    assert!(spill_files(&a).is_empty() && spill_files(&b).is_empty());
}
