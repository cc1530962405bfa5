//! Replication between two twinlun processes on loopback: what the secondary holds
//! after each cycle (read through read-only LUNs and compared byte for byte), what a
//! cycle ships, consistency of committed cuts under dependent writes, the queue
//! policies over a throttled link, schedules, and the refusals.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::dependent::{after_writes, dependent_writer_counted, generations, BLOCK, BLOCKS};
use common::pair::{
    create_set, create_set_of_v, pair, pair_launched, pair_throttled, replicate, show, statuses,
    wait_converged, wait_cycles, wait_progress, SECRET,
};
use common::raw::RawClient;
use common::{free_port, observe_for, qemu_io, run, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;
use twinlun::iscsi::pdu::Digests;

const INITIATOR: &str = "iqn.2026-11.test:replication";

/// Byte-for-byte comparison of two LUNs through QEMU's iSCSI driver.
fn compare(a: &str, b: &str) {
    let o = run("qemu-img", &["compare", "--image-opts", &opts(a), &opts(b)]);
    assert!(
        o.status.success(),
        "{a} and {b} differ: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `iscsi://HOST:PORT/IQN/LUN` as QEMU image options (read-only).
fn opts(url: &str) -> String {
    let rest = url.strip_prefix("iscsi://").unwrap();
    let mut parts = rest.split('/');
    let (portal, iqn, lun) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    format!("driver=iscsi,transport=tcp,portal={portal},target={iqn},lun={lun}")
}

#[test]
fn a_group_replicates_and_reads_equal_through_read_only_luns() {
    let (p, s) = pair();
    for v in ["a", "b"] {
        p.ctl_ok(&["volume", "create", v, "--size", "256M"]);
    }
    p.ctl_ok(&["group", "create", "app", "a", "b"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "a"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "2", "b"]);
    let (pa, pb) = (p.url(DEMO_IQN, 1), p.url(DEMO_IQN, 2));
    qemu_io(
        &pa,
        &[
            "write -P 0x11 0 4m",
            "write -P 0x12 100m 1m",
            "write -P 0x13 255m 1m",
        ],
    );
    qemu_io(&pb, &["write -P 0x21 1m 3m", "write -P 0x22 128m 512k"]);

    let created = p.ctl_json(&[
        "replication",
        "create",
        "r1",
        "--group",
        "app",
        "--peer",
        "dr",
    ]);
    assert_eq!(created["status"], "unsynchronized", "{created}");
    // The secondary has the same volumes, as secondaries, in a group of the set.
    let sv = s.ctl_json(&["volume", "show", "a"]);
    assert_eq!(sv["size"], 256 << 20);
    assert_eq!(
        s.ctl_json(&["group", "show", "app"])["replication_set"],
        "r1"
    );
    // Refusals while the group is in a set, on both sides.
    for side in [&p, &s] {
        let o = side.ctl(&["group", "remove", "app", "b"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("replication set 'r1'"));
    }
    p.ctl_ok(&["volume", "create", "c", "--size", "1M"]);
    assert!(!p.ctl(&["group", "add", "app", "c"]).status.success());
    // A secondary volume is never mapped read-write.
    let o = s.ctl(&["lun", "map", DEMO_IQN, "1", "a"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--read-only"),
        "{o:?}"
    );

    let first = replicate(&p, "r1");
    assert_eq!(first["full"], true, "{first}");
    assert_eq!(
        first["data_bytes"],
        (4 + 1 + 1 + 3) << 20 | 512 << 10,
        "{first}"
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "a", "--read-only"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "2", "b", "--read-only"]);
    let (sa, sb) = (s.url(DEMO_IQN, 1), s.url(DEMO_IQN, 2));
    compare(&pa, &sa);
    compare(&pb, &sb);

    // An incremental cycle: overwrites, new data, zeros over data.
    qemu_io(&pa, &["write -P 0x14 2m 64k", "write -z 100m 1m"]);
    qemu_io(&pb, &["write -P 0x23 200m 8k"]);
    let second = replicate(&p, "r1");
    assert_eq!(second["full"], false, "{second}");
    assert_eq!(second["data_bytes"], (64 + 8) << 10, "{second}");
    assert_eq!(second["zero_bytes"], 1 << 20, "{second}");
    compare(&pa, &sa);
    compare(&pb, &sb);
    let points = s.ctl_json(&["recovery-points", "r1"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 2, "{points}");
    assert_eq!(show(&s, "r1")["last_cut_id"], show(&p, "r1")["last_cut_id"]);
}

#[test]
fn cycles_ship_written_data_first_and_then_only_changed_pages() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "big", "--size", "1G"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "big"]);
    let url = p.url(DEMO_IQN, 1);
    let writes: Vec<String> = (0..10)
        .map(|i| format!("write -P {} {}m 1m", 0x30 + i, i * 97 + 3))
        .collect();
    qemu_io(&url, &writes);
    create_set(&p, "r", &["--volume", "big"]);
    let first = replicate(&p, "r");
    let data = first["data_bytes"].as_u64().unwrap();
    assert!(
        data >= 10 << 20 && data * 20 <= 21 * (10 << 20),
        "first cycle shipped {data}: {first}"
    );

    // 500 scattered 4 KiB pages.
    let mut x: u64 = 12345;
    let mut pages = std::collections::BTreeSet::new();
    while pages.len() < 500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pages.insert((x >> 33) % (262_144));
    }
    let writes: Vec<String> = pages
        .iter()
        .map(|pg| format!("write -P {} {} 4k", 1 + pg % 250, pg * 4096))
        .collect();
    qemu_io(&url, &writes);
    let second = replicate(&p, "r");
    let data = second["data_bytes"].as_u64().unwrap();
    assert!(
        data >= 2000 << 10 && data as f64 <= 1.05 * (2000 << 10) as f64,
        "the incremental cycle shipped {data} bytes for 500 pages: {second}"
    );
    for key in ["data_bytes", "record_bytes", "overhead_bytes", "seconds"] {
        assert!(second.get(key).is_some(), "{key} missing: {second}");
    }
    let shown = show(&p, "r");
    for key in ["status", "last_cut_id", "last_cut_time", "last_cycle"] {
        assert!(!shown[key].is_null(), "{key} missing: {shown}");
    }
    let (a, b) = (
        std::fs::read(p.volume_file("big")).unwrap(),
        std::fs::read(s.volume_file("big")).unwrap(),
    );
    assert!(a == b, "the secondary's file differs from the primary's");
}

#[test]
fn every_committed_cut_is_consistent_under_dependent_writes() {
    let (p, s) = pair();
    for v in ["a", "b"] {
        p.ctl_ok(&["volume", "create", v, "--size", "256K"]);
    }
    p.ctl_ok(&["group", "create", "g", "a", "b"]);
    let iqn = "iqn.2026-11.test:dep";
    p.ctl_ok(&["target", "create", iqn]);
    p.ctl_ok(&["lun", "map", iqn, "0", "a"]);
    p.ctl_ok(&["lun", "map", iqn, "1", "b"]);
    create_set(&p, "dep", &["--group", "g"]);
    s.ctl_ok(&["target", "create", iqn]);
    s.ctl_ok(&["lun", "map", iqn, "0", "a", "--read-only"]);
    s.ctl_ok(&["lun", "map", iqn, "1", "b", "--read-only"]);

    let stop = Arc::new(AtomicBool::new(false));
    let (_control, control_rx) = mpsc::channel();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, addr, written) = (stop.clone(), p.addr, written.clone());
        std::thread::spawn(move || dependent_writer_counted(addr, iqn, stop, control_rx, written))
    };
    let mut seen = std::collections::BTreeSet::new();
    for cycle in 1..=8u64 {
        // The writer writes one block at a time: its second write acknowledged after
        // the previous cycle ended was issued after that cut, so this cut differs.
        wait_writes(&written, written.load(Ordering::Acquire) + 2);
        p.ctl_ok(&["replicate", "dep"]);
        wait_cycles(&p, "dep", cycle);
        // Between cycles the secondary holds exactly the last committed cut.
        let mut c = RawClient::connect(s.addr);
        c.login(INITIATOR, iqn, Digests::default());
        let a = generations(0, &c.read10(0, 0, BLOCKS as u16, BLOCK));
        let b = generations(1, &c.read10(1, 0, BLOCKS as u16, BLOCK));
        for i in 0..BLOCKS {
            assert!(
                b[i] <= a[i],
                "cut {cycle}: B[{i}] at pass {} but A only at {}",
                b[i],
                a[i]
            );
        }
        let k: usize = a.iter().chain(&b).map(|&g| g as usize).sum();
        assert_eq!(
            (a, b),
            after_writes(k),
            "cut {cycle} is not a prefix of the writes"
        );
        seen.insert(k);
    }
    stop.store(true, Ordering::Release);
    let writes = writer.join().unwrap();
    assert!(
        seen.len() >= 4,
        "only {} distinct cuts in {writes} writes",
        seen.len()
    );
    replicate(&p, "dep");
    for v in ["a", "b"] {
        assert!(
            std::fs::read(p.volume_file(v)).unwrap() == std::fs::read(s.volume_file(v)).unwrap(),
            "final state of {v} differs"
        );
    }
}

/// Watches `set` for 2 s (a bounded observation: no state can prove that nothing will
/// start): it stays at `cycles` cycles and does not start replicating again.
fn no_new_cycle(p: &TestServer, set: &str, cycles: u64) {
    let what = format!("{set} staying at {cycles} cycles, not replicating");
    observe_for(&what, Duration::from_secs(2), || {
        let v = show(p, set);
        if v["cycles"] == cycles && v["status"] != "replicating" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
}

/// Waits until the writer's count of acknowledged writes reaches `n`.
fn wait_writes(written: &AtomicUsize, n: usize) {
    wait_until(
        &format!("{n} writes"),
        Duration::from_secs(30),
        || match written.load(Ordering::Acquire) {
            w if w >= n => Ok(()),
            w => Err(format!("{w} writes")),
        },
    )
}

#[test]
fn queue_policies_over_a_slow_link() {
    // The proxy carries the primary's cycles to the secondary at 4 MiB/s.
    let (p, _s, _proxy) = pair_throttled(4 << 20);
    for (v, policy) in [("d", "discard"), ("q", "queue-latest")] {
        p.ctl_ok(&["volume", "create", v, "--size", "64M"]);
        p.ctl_ok(&["lun", "map", DEMO_IQN, if v == "d" { "1" } else { "2" }, v]);
        let url = p.url(DEMO_IQN, if v == "d" { 1 } else { 2 });
        qemu_io(&url, &["write -P 0x5a 0 12m"]);
        let set = format!("set-{v}");
        p.ctl_ok(&[
            "replication",
            "create",
            &set,
            "--volume",
            v,
            "--peer",
            "dr",
            "--queue-policy",
            policy,
        ]);
    }

    // discard: both extra requests are refused, saying why; one cycle runs.
    p.ctl_ok(&["replicate", "set-d"]);
    for _ in 0..2 {
        let o = p.ctl(&["replicate", "set-d"]);
        assert!(
            !o.status.success(),
            "a request during a discard cycle was accepted"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("discard"), "{err}");
    }
    wait_cycles(&p, "set-d", 1);
    // Nothing is queued, so no other cycle can follow; watched for 2 s to be sure.
    assert_eq!(show(&p, "set-d")["queued"], 0);
    no_new_cycle(&p, "set-d", 1);
    assert_eq!(show(&p, "set-d")["cycles"], 1);

    // queue-latest: both are accepted and exactly one more cycle runs.
    p.ctl_ok(&["replicate", "set-q"]);
    for _ in 0..2 {
        p.ctl_ok(&["replicate", "set-q"]);
    }
    assert_eq!(show(&p, "set-q")["queued"], 1);
    wait_cycles(&p, "set-q", 2);
    // The one queued request has run: nothing is left to start a third cycle.
    assert_eq!(show(&p, "set-q")["queued"], 0);
    no_new_cycle(&p, "set-q", 2);
    assert_eq!(show(&p, "set-q")["cycles"], 2);
}

#[test]
fn schedules_wrong_secrets_and_refusals() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "8M"]);

    // A wrong secret: check says so, create fails and creates nothing anywhere.
    p.ctl_ok(&[
        "peer",
        "create",
        "wrong",
        &s.repl_addr.unwrap().to_string(),
        "--secret",
        "not-the-right-one",
    ]);
    // The check ran and failed: its answer on stdout, exit status 1.
    let o = p.ctl(&["--json", "peer", "check", "wrong"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let check: Value = serde_json::from_slice(&o.stdout).expect("the check's answer");
    assert_eq!(check["authenticated"], false, "{check}");
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{check}"
    );
    let good = p.ctl_json(&["peer", "check", "dr"]);
    assert_eq!(good["authenticated"], true, "{good}");
    assert_eq!(good["protocol_version"], 2, "{good}");
    assert_eq!(good["tls_version"], "TLSv1.3", "{good}");
    assert_eq!(good["presented_key"], good["pinned_key"], "{good}");
    let o = p.ctl(&[
        "--json",
        "replication",
        "create",
        "x",
        "--volume",
        "v",
        "--peer",
        "wrong",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("auth_failed"),
        "{o:?}"
    );
    assert_eq!(
        p.ctl_json(&["replication", "list"])["replications"],
        serde_json::json!([])
    );
    assert_eq!(
        s.ctl_json(&["replication", "list"])["replications"],
        serde_json::json!([])
    );
    assert!(
        !s.ctl(&["volume", "show", "v"]).status.success(),
        "the secondary created a volume"
    );
    // No secret anywhere in what ctl shows.
    let listed = p.ctl_ok(&["--json", "peer", "list"]);
    assert!(
        !listed.contains(SECRET) && !listed.contains("not-the-right-one"),
        "{listed}"
    );

    // Bad arguments say what is wrong and change nothing.
    for (args, want) in [
        (vec!["--every", "2x"], "unit"),
        (vec!["--keep", "0"], "--keep"),
        (vec!["--target-prefix", "a/b"], "prefix"),
    ] {
        let mut full = vec![
            "replication",
            "create",
            "y",
            "--volume",
            "v",
            "--peer",
            "dr",
        ];
        full.extend(args);
        let o = p.ctl(&full);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{o:?}");
    }

    // Every 2 s: cycles on time.
    let started = Instant::now();
    create_set(&p, "sched", &["--volume", "v", "--every", "2s"]);
    wait_cycles(&p, "sched", 3);
    let secs = started.elapsed().as_secs_f64();
    assert!(
        (5.0..9.0).contains(&secs),
        "3 cycles every 2 s took {secs:.1} s"
    );
    // A schedule task every 2 s on another set: cycles on time.
    p.ctl_ok(&["volume", "create", "w", "--size", "8M"]);
    create_set(&p, "tasked", &["--volume", "w"]);
    for (name, rule) in [
        ("a\"b", "'\"'"),
        ("a,b", "','"),
        ("a<b", "'<'"),
        ("a\\b", "'\\'"),
        ("", "empty"),
        ("abcdefghijklmnopqrstuvwxyz0123456", "longer than 32 bytes"),
    ] {
        let o = p.ctl(&["schedule", "add", name, "--set", "tasked", "--start", "now"]);
        assert!(!o.status.success(), "task name {name:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(rule), "{name:?}: {err}");
    }
    let o = p.ctl(&[
        "schedule",
        "add",
        "t",
        "--set",
        "tasked",
        "--start",
        "yesterday",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("RFC 3339"),
        "{o:?}"
    );
    assert_eq!(
        p.ctl_json(&["schedule", "list"])["schedules"],
        serde_json::json!([])
    );
    let started = Instant::now();
    p.ctl_ok(&[
        "schedule", "add", "Every-2s", "--set", "tasked", "--start", "now", "--every", "2s",
    ]);
    assert!(!p
        .ctl(&["schedule", "add", "Every-2s", "--set", "tasked", "--start", "now"])
        .status
        .success());
    p.ctl_ok(&[
        "schedule",
        "add",
        "every-2s",
        "--set",
        "tasked",
        "--start",
        "2099-01-01T00:00:00Z",
    ]);
    wait_cycles(&p, "tasked", 3);
    // Due at start, +2 s and +4 s; `now` is taken to the whole second, up to 1 s
    // before `started`.
    let secs = started.elapsed().as_secs_f64();
    assert!(
        (2.9..8.0).contains(&secs),
        "3 scheduled cycles every 2 s took {secs:.1} s"
    );
    let listed = p.ctl_json(&["schedule", "list"]);
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 2, "{listed}");
    let o = p.ctl(&["replication", "delete", "tasked"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Every-2s"),
        "{o:?}"
    );
    p.ctl_ok(&["schedule", "delete", "Every-2s"]);
    p.ctl_ok(&["schedule", "delete", "every-2s"]);
    p.ctl_ok(&["replication", "delete", "tasked"]);

    // The peer in use cannot go; the set's deletion frees it on both sides.
    assert!(!p.ctl(&["peer", "delete", "dr"]).status.success());
    assert!(!p.ctl(&["volume", "delete", "v"]).status.success());
    p.ctl_ok(&["replication", "delete", "sched"]);
    assert_eq!(
        s.ctl_json(&["replication", "list"])["replications"],
        serde_json::json!([])
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "3", "v"]);
    p.ctl_ok(&["peer", "delete", "dr"]);
}

#[test]
fn restart_deletes_recovery_points_and_reships_everything() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x61 0 8m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    qemu_io(&url, &["write -P 0x62 1m 1m"]);
    replicate(&p, "r");
    let before = s.ctl_json(&["recovery-points", "r"]);
    assert_eq!(before["points"].as_array().unwrap().len(), 2, "{before}");

    // Without --yes: refused, explaining what it would do; nothing changes.
    let o = p.ctl(&["restart", "r"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("deletes every recovery point") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(s.ctl_json(&["recovery-points", "r"]), before);

    let cycles = show(&p, "r")["cycles"].as_u64().unwrap();
    let generation = show(&p, "r")["generation"].as_u64().unwrap();
    p.ctl_ok(&["restart", "r", "--yes"]);
    let after = wait_cycles(&p, "r", cycles + 1);
    assert_eq!(after["generation"], generation + 1, "{after}");
    assert_eq!(after["last_cycle"]["full"], true, "{after}");
    assert_eq!(after["last_cycle"]["data_bytes"], 8 << 20, "{after}");
    let seen = statuses(&p, "r");
    let tail: Vec<&str> = seen
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        ["start-replication", "replicating", "ready"],
        "{seen:?}"
    );
    // The old points are gone: only the new generation's cut.
    let points = s.ctl_json(&["recovery-points", "r"]);
    let cuts: Vec<u64> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cut_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        cuts,
        vec![after["last_cut_id"].as_u64().unwrap()],
        "{points}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
}

#[test]
fn promote_at_an_older_recovery_point_gives_that_cut_and_a_writable_volume() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "32M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    create_set_of_v(&p, &["--keep", "4"]);
    // Before its first cut commits, a secondary is no image to fail over to.
    let o = s.ctl(&["promote", "--volume", "v"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no committed cut"), "{err}");
    assert_eq!(
        s.ctl_json(&["replication", "list"])["replications"][0]["name"],
        "r"
    );
    let mut images = Vec::new();
    for (i, pattern) in [0x71, 0x72, 0x73].iter().enumerate() {
        qemu_io(&url, &[format!("write -P {pattern} {}m 2m", i * 3)]);
        qemu_io(&url, &[format!("write -P {pattern} 0 64k")]);
        let cycle = replicate(&p, "r");
        images.push((
            cycle["cut_id"].as_u64().unwrap(),
            std::fs::read(p.volume_file("v")).unwrap(),
        ));
    }
    let (oldest_cut, oldest) = &images[0];
    let o = s.ctl(&["promote", "--volume", "nope"]);
    assert!(!o.status.success());
    s.ctl_ok(&[
        "promote",
        "--volume",
        "v",
        "--recovery-point",
        &oldest_cut.to_string(),
    ]);
    assert!(
        std::fs::read(s.volume_file("v")).unwrap() == *oldest,
        "the promoted volume is not cut {oldest_cut}'s content"
    );
    // A primary now, held until failback, and writable through a LUN.
    let v = show(&s, "r");
    assert_eq!(v["role"], "primary", "{v}");
    assert_eq!(v["status"], "promoted", "{v}");
    assert_eq!(v["common_cut"], *oldest_cut, "{v}");
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(
        &s.url(DEMO_IQN, 1),
        &["write -P 0x7f 0 4k", "read -P 0x7f 0 4k"],
    );
}

#[test]
fn a_secondary_killed_while_applying_is_at_one_cut_and_converges() {
    let (p, mut s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "256M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x41 0 64m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    let first = std::fs::read(p.volume_file("v")).unwrap();
    // A big second cut; kill the secondary while it is being received or applied.
    qemu_io(&url, &["write -P 0x42 0 64m", "write -P 0x43 100m 32m"]);
    let second = std::fs::read(p.volume_file("v")).unwrap();
    p.ctl_ok(&["replicate", "r"]);
    // Kill once a quarter of the cut has crossed (or the cycle is already over: the
    // secondary is then at the second cut, which the check below also accepts).
    wait_until(
        "a quarter of the second cut shipped",
        Duration::from_secs(60),
        || {
            let v = show(&p, "r");
            let done = v["progress"]["bytes_done"].as_u64().unwrap_or(0);
            if done >= 24 << 20 || v["cycles"].as_u64().unwrap() >= 2 {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
    common::kill9(&mut s);
    s.restart();
    let got = std::fs::read(s.volume_file("v")).unwrap();
    assert!(
        got == first || got == second,
        "the secondary holds a mix of two cuts"
    );
    // The primary's failed cycle retries on its own and converges.
    wait_converged(&p, "r", 2);
    assert!(std::fs::read(s.volume_file("v")).unwrap() == second);
}

#[test]
fn a_secondary_killed_during_the_first_cut_claims_no_cut_and_converges() {
    // The first cut goes straight into the secondary's volume (nothing there to keep).
    let (p, mut s, proxy) = pair_throttled(8 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(
        &p.url(DEMO_IQN, 1),
        &["write -P 0x51 0 24m", "write -P 0x52 40m 8m"],
    );
    create_set_of_v(&p, &[]);
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 12 << 20);
    common::kill9(&mut s);
    // The primary's side of the proxied connection goes too.
    proxy.cut();
    proxy.set_rate(0);
    s.restart();
    // Half a first cut is no cut: no recovery point, nothing to fail over to.
    let points = s.ctl_json(&["recovery-points", "r"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 0, "{points}");
    let done = wait_converged(&p, "r", 1);
    assert!(
        done["last_cycle"]["attempts"].as_u64().unwrap() >= 2,
        "{done}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
    let points = s.ctl_json(&["recovery-points", "r"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 1, "{points}");
}

#[test]
fn a_transfer_cut_off_midway_resumes_the_same_cut() {
    let (p, s, proxy) = pair_throttled(4 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x33 0 16m"]);
    create_set_of_v(&p, &[]);
    p.ctl_ok(&["replicate", "r"]);
    // Cut the link once about half is across.
    wait_progress(&p, "r", 8 << 20);
    proxy.cut();
    proxy.set_rate(0);
    let done = wait_converged(&p, "r", 1);
    let last = &done["last_cycle"];
    assert!(last["attempts"].as_u64().unwrap() >= 2, "{done}");
    assert!(statuses(&p, "r").contains(&"error".to_string()), "{done}");
    // Resumed, not restarted: the second attempt shipped only what the peer had not
    // staged (what was in flight when the link went is shipped again).
    let last_attempt = last["final_attempt_data_bytes"].as_u64().unwrap();
    assert!(
        last_attempt > 0 && last_attempt <= 15 << 20,
        "the resumed attempt shipped {last_attempt} of 16 MiB: {done}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
}

#[test]
fn a_request_queued_behind_a_failed_cycle_runs_after_its_retry() {
    let (p, s, proxy) = pair_throttled(4 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x33 0 8m"]);
    create_set_of_v(&p, &[]);
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 2 << 20);
    // Written after the running cycle's cut, and a cycle requested for it.
    qemu_io(&url, &["write -P 0x44 32m 1m"]);
    p.ctl_ok(&["replicate", "r"]);
    assert_eq!(show(&p, "r")["queued"], 1);
    proxy.cut();
    proxy.set_rate(0);
    // The retry resumes the first cut; the queued request then gets a cycle of its
    // own, which ships the later write.
    let done = wait_converged(&p, "r", 2);
    assert!(statuses(&p, "r").contains(&"error".to_string()), "{done}");
    assert_eq!(done["queued"], 0, "{done}");
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
}

#[test]
fn suspend_resume_abort_and_watch() {
    let (p, s, proxy) = pair_throttled(2 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x21 0 16m"]);
    create_set_of_v(&p, &[]);

    // abort: the running cycle is abandoned; the secondary holds no cut.
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 1);
    let out = p.ctl_ok(&["abort", "r"]);
    assert!(out.contains("aborting"), "{out}");
    let v = wait_until("the aborted cycle to end", Duration::from_secs(30), || {
        let v = show(&p, "r");
        if v["status"] == "replicating" {
            Err(v.to_string())
        } else {
            Ok(v)
        }
    });
    assert_eq!(
        (v["cycles"].as_u64(), v["error"].is_null()),
        (Some(0), true),
        "{v}"
    );
    assert!(show(&s, "r")["last_cut_id"].is_null());
    assert!(
        !p.ctl(&["abort", "r"]).status.success(),
        "abort with nothing running"
    );

    // suspend: requests are refused, saying so; resume runs again.
    p.ctl_ok(&["suspend", "r"]);
    assert_eq!(show(&p, "r")["status"], "suspended");
    let o = p.ctl(&["replicate", "r"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("suspended"),
        "{o:?}"
    );
    p.ctl_ok(&["resume", "r"]);
    proxy.set_rate(0);
    p.ctl_ok(&["replicate", "r"]);
    // watch --until-ready returns once the cycle is done.
    let o = p.ctl(&["watch", "r", "--until-ready"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ready"),
        "{o:?}"
    );
    let v = show(&p, "r");
    assert_eq!(v["cycles"], 1, "{v}");
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
}

/// Bytes the file at `path` has allocated (its written data).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_primary_killed_mid_cycle_resends_only_what_may_have_changed() {
    let (mut p, s, proxy) = pair_throttled(0);
    p.ctl_ok(&["volume", "create", "v", "--size", "256M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x51 0 96m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");

    // A second cut of 16 MiB over a slow link, with a writer going on in a region of
    // 8 MiB; the primary dies while the cut is in flight.
    qemu_io(&url, &["write -P 0x52 16m 16m"]);
    proxy.set_rate(2 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, url, rounds) = (stop.clone(), url.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut args = vec!["-f".to_string(), "raw".to_string()];
                for i in 0..64u64 {
                    let page = (round * 64 + i) * 7919 % 2048;
                    args.push("-c".into());
                    args.push(format!(
                        "write -P {} {} 4k",
                        1 + (round % 200),
                        (200 << 20) + page * 4096
                    ));
                }
                args.push(url.clone());
                // Once the primary is gone QEMU retries the connection for ever: the
                // writer is killed when told to stop.
                let mut child = std::process::Command::new("qemu-io")
                    .args(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("qemu-io");
                while child.try_wait().unwrap().is_none() {
                    if stop.load(Ordering::Relaxed) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    // Paces the wait for this batch; the stop flag decides.
                    std::thread::sleep(Duration::from_millis(10));
                }
                round += 1;
                rounds.store(round as usize, Ordering::Release);
            }
        })
    };
    // The writer is under way (one batch of 64 pages done) before the cut is taken.
    wait_until(
        "the writer's first batch",
        Duration::from_secs(60),
        || match rounds.load(Ordering::Acquire) {
            0 => Err("no batch done".into()),
            _ => Ok(()),
        },
    );
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 2 << 20);
    common::kill9(&mut p);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    proxy.set_rate(0);
    p.restart();
    let written = allocated(&p.volume_file("v"));
    assert!(written >= 96 << 20, "written {written}");
    let last = replicate(&p, "r");
    let data = last["data_bytes"].as_u64().unwrap();
    eprintln!("after kill -9 of the primary: shipped {data} data bytes, {written} written");
    // What changed since the committed cut: 16 MiB and the writer's 8 MiB, each rounded
    // out to the log's 4 MiB extents at most: far less than everything written.
    assert!(
        (16 << 20..=32 << 20).contains(&data) && data < written,
        "after the crash the cycle shipped {data} bytes of {written} written: {last}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap(),
        "the secondary did not converge to the primary"
    );
}

#[test]
fn a_clean_restart_with_a_failed_cycle_pending_loses_no_page() {
    let (mut p, mut s, proxy) = pair_throttled(0);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x61 0 8m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    // A cycle that fails part way (the secondary goes away) keeps its cut for a retry;
    // the primary then shuts down cleanly with that cut still pending.
    qemu_io(&url, &["write -P 0x62 1m 8m"]);
    proxy.set_rate(1 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 1 << 20);
    s.stop();
    proxy.cut();
    wait_until("the cycle to fail", Duration::from_secs(60), || {
        let v = show(&p, "r");
        if v["error"].is_null() {
            Err(v.to_string())
        } else {
            Ok(())
        }
    });
    p.restart();
    proxy.set_rate(0);
    s.restart();
    let last = replicate(&p, "r");
    assert!(
        last["data_bytes"].as_u64().unwrap() >= 8 << 20,
        "the pending cut's pages were not shipped: {last}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap(),
        "the secondary misses pages of the cut pending at shutdown"
    );
}

/// Log-like text (compresses a few times over) and noise (does not compress), as
/// pattern files for `qemu-io write -s`.
fn compressible_and_noise(dir: &std::path::Path) -> (String, String) {
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 4 << 20 {
        text.push_str(&format!(
            "{i:09} 2026-11-22T07:{:02}:{:02}Z INFO cycle committed set=app-{} cut={} bytes={}\n",
            i / 60 % 60,
            i % 60,
            i % 7,
            i / 3,
            (i * 7919) % 100_000
        ));
        i += 1;
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let (t, n) = (dir.join("text"), dir.join("noise"));
    std::fs::write(&t, &text.as_bytes()[..4 << 20]).unwrap();
    std::fs::write(&n, noise).unwrap();
    (t.display().to_string(), n.display().to_string())
}

#[test]
fn compressed_sets_replicate_byte_for_byte_and_put_fewer_bytes_on_the_wire() {
    let (mut p, s) = pair();
    let dir = tempfile::tempdir().unwrap();
    let (text, noise) = compressible_and_noise(dir.path());
    for (lun, how) in [(1u64, "zstd"), (2, "lz4")] {
        let (v, set) = (format!("v-{how}"), format!("r-{how}"));
        let lun_s = lun.to_string();
        p.ctl_ok(&["volume", "create", &v, "--size", "64M"]);
        p.ctl_ok(&["lun", "map", DEMO_IQN, &lun_s, &v]);
        let url = p.url(DEMO_IQN, lun);
        qemu_io(
            &url,
            &[
                format!("write -s {text} 0 4m"),
                format!("write -s {noise} 8m 1m"),
                "write -P 0x5a 16m 4m".into(),
            ],
        );
        let created = p.ctl_json(&[
            "replication",
            "create",
            &set,
            "--volume",
            &v,
            "--peer",
            "dr",
            "--compress",
            how,
        ]);
        assert_eq!(created["compress"], how, "{created}");
        let text_view = p.ctl_ok(&["replication", "show", &set]);
        assert!(
            text_view
                .lines()
                .any(|l| l.starts_with("compress") && l.ends_with(how)),
            "{text_view}"
        );

        // The full cycle: 9 MiB of data, the noise as read, the rest compressed.
        let first = replicate(&p, &set);
        assert_eq!(first["data_bytes"], 9 << 20, "{first}");
        assert_eq!(first["compress"], how, "{first}");
        let wire = first["wire_data_bytes"].as_u64().unwrap();
        assert!(
            ((1 << 20)..(9 << 20) / 2).contains(&wire),
            "{how}: {wire} bytes on the wire for 9 MiB (1 MiB of it noise): {first}"
        );
        s.ctl_ok(&["lun", "map", DEMO_IQN, &lun_s, &v, "--read-only"]);
        compare(&url, &s.url(DEMO_IQN, lun));

        // An incremental: new text, noise over text, a pattern over noise.
        qemu_io(
            &url,
            &[
                format!("write -s {text} 32m 2m"),
                format!("write -s {noise} 1m 256k"),
                "write -P 0x6b 8m 64k".into(),
            ],
        );
        let second = replicate(&p, &set);
        assert_eq!(second["full"], false, "{second}");
        assert_eq!(second["data_bytes"], (2 << 20) + (320 << 10), "{second}");
        let wire = second["wire_data_bytes"].as_u64().unwrap();
        assert!(
            ((256 << 10)..((2 << 20) + (320 << 10)) / 2).contains(&wire),
            "{how}: {wire} bytes on the wire: {second}"
        );
        let shown = p.ctl_ok(&["replication", "show", &set]);
        assert!(
            shown.contains("on the wire") && shown.contains(&format!(", {how})")),
            "{shown}"
        );
        compare(&url, &s.url(DEMO_IQN, lun));
        assert!(
            std::fs::read(p.volume_file(&v)).unwrap() == std::fs::read(s.volume_file(&v)).unwrap(),
            "{how}: the secondary's file differs from the primary's"
        );
    }
    // The peer says which codecs it decodes.
    let check = p.ctl_json(&["peer", "check", "dr"]);
    assert_eq!(
        check["compress"],
        serde_json::json!(["zstd", "lz4"]),
        "{check}"
    );

    // A bad value is refused, naming the accepted ones, and changes nothing.
    p.ctl_ok(&["volume", "create", "w", "--size", "8M"]);
    let o = p.ctl(&[
        "replication",
        "create",
        "bad",
        "--volume",
        "w",
        "--peer",
        "dr",
        "--compress",
        "gzip",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("zstd, lz4 or none") && err.contains("gzip"),
        "{err}"
    );
    // Through the socket too (what ctl checks, the server checks).
    let answer = {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
        stream
            .write_all(
                br#"{"cmd":"replication_create","name":"bad","volume":"w","peer":"dr","compress":"gzip"}"#,
            )
            .unwrap();
        stream.write_all(b"\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    assert_eq!(answer["code"], "bad_request", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        ["gzip", "none", "zstd", "lz4"]
            .iter()
            .all(|w| message.contains(w)),
        "{answer}"
    );
    for side in [&p, &s] {
        let sets = side.ctl_json(&["replication", "list"])["replications"].clone();
        let names: Vec<&str> = sets
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["r-lz4", "r-zstd"], "{sets}");
    }
    assert!(!s.ctl(&["volume", "show", "w"]).status.success());

    // The setting is in the catalog: after a restart the set still compresses.
    p.restart();
    assert_eq!(show(&p, "r-zstd")["compress"], "zstd");
    qemu_io(&p.url(DEMO_IQN, 1), &[format!("write -s {text} 40m 1m")]);
    let after = replicate(&p, "r-zstd");
    assert_eq!(
        (after["data_bytes"].as_u64(), after["compress"].as_str()),
        (Some(1 << 20), Some("zstd")),
        "{after}"
    );
    assert!(
        after["wire_data_bytes"].as_u64().unwrap() < 1 << 19,
        "{after}"
    );
    compare(&p.url(DEMO_IQN, 1), &s.url(DEMO_IQN, 1));
}

#[test]
fn a_compressed_transfer_cut_off_midway_resumes_the_same_cut() {
    let (p, s, proxy) = pair_throttled(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (text, noise) = compressible_and_noise(dir.path());
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    // 12 MiB of noise (1 MiB repeated: each extent alone does not compress) and 4 MiB
    // of text: about 13 MiB on the wire.
    qemu_io(
        &p.url(DEMO_IQN, 1),
        &[
            format!("write -s {noise} 0 12m"),
            format!("write -s {text} 12m 4m"),
        ],
    );
    create_set_of_v(&p, &["--compress", "lz4"]);
    // Cut when about half of the cut has crossed (the handshake and set creation are a
    // few KiB), then let the retry run at full speed.
    proxy.cut_after(6 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_until(
        "the proxy to cut the first attempt",
        Duration::from_secs(60),
        || match proxy.tripped() {
            true => Ok(()),
            false => Err(show(&p, "r").to_string()),
        },
    );
    proxy.set_rate(0);
    let done = wait_converged(&p, "r", 1);
    let last = &done["last_cycle"];
    assert!(last["attempts"].as_u64().unwrap() >= 2, "{done}");
    assert_eq!(last["compress"], "lz4", "{done}");
    let last_attempt = last["final_attempt_data_bytes"].as_u64().unwrap();
    assert!(
        last_attempt > 0 && last_attempt < 16 << 20,
        "the resumed attempt shipped {last_attempt} of 16 MiB: {done}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap(),
        "the secondary's file differs from the primary's"
    );
}

#[test]
fn a_primary_dead_between_the_peers_commit_and_its_record_converges() {
    let (mut p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x71 0 8m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    qemu_io(&url, &["write -P 0x72 2m 4m"]);
    // The peer commits the second cut; the primary dies before recording it.
    p.env = vec![(
        "TWINLUN_TEST_CRASH_BEFORE_RECORDING_COMMIT".into(),
        "1".into(),
    )];
    p.restart();
    p.ctl_ok(&["replicate", "r"]);
    let mut child = p.child.take().unwrap();
    wait_until(
        "the primary to abort (the fault hook is only in builds with --features \
         fault-injection, which scripts/test.sh uses)",
        Duration::from_secs(60),
        || match child.try_wait().unwrap() {
            Some(_) => Ok(()),
            None => Err("still running".into()),
        },
    );
    let points = s.ctl_json(&["recovery-points", "r"]);
    assert_eq!(
        points["points"][0]["cut_id"], 2,
        "the peer did not commit: {points}"
    );
    p.env.clear();
    p.restart();
    qemu_io(&url, &["write -P 0x73 5m 1m"]);
    // The primary computes from the first cut; the peer goes back to it and takes the
    // new cut, which resends everything since.
    let last = replicate(&p, "r");
    assert!(
        last["data_bytes"].as_u64().unwrap() >= 4 << 20,
        "the new cut must cover the changes the primary never recorded: {last}"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap(),
        "the secondary differs from the primary"
    );
}

/// One admin request on the socket, as `ctl` sends it; returns how long the answer
/// took. The answer must not be an error.
fn timed_query(socket: &std::path::Path, req: &Value) -> Duration {
    use std::io::{BufRead, BufReader, Write};
    let t0 = Instant::now();
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    writeln!(conn, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    let took = t0.elapsed();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{req}: {e}: {line}"));
    assert_ne!(v["result"], "error", "{req}: {v}");
    took
}

/// Admin queries answer within 100 ms on both sides while a cut crosses a slow link:
/// a first cut (written in place on the secondary) and an incremental one (staged,
/// then applied). They used to wait on the secondary for the whole cut.
#[test]
fn admin_queries_answer_within_100_ms_while_cuts_are_received() {
    let (p, s, _proxy) = pair_throttled(4 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x21 0 12m"]);
    create_set_of_v(&p, &[]);
    let queries = admin_queries();
    let secondary_only = serde_json::json!({"cmd": "recovery_points", "name": "r"});
    for cycle in 1..=2u64 {
        if cycle == 2 {
            qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x22 16m 12m"]);
        }
        p.ctl_ok(&["replicate", "r"]);
        wait_progress(&p, "r", 1 << 20);
        let (mut n, mut worst) = (0, Duration::ZERO);
        // Query until the cycle is over: about 3 s of a 12 MiB cut at 4 MiB/s.
        while show(&p, "r")["status"] == "replicating" {
            for q in &queries {
                for side in [&p, &s] {
                    worst = worst.max(timed_query(&side.socket, q));
                    n += 1;
                }
            }
            if cycle == 2 {
                worst = worst.max(timed_query(&s.socket, &secondary_only));
                n += 1;
            }
        }
        println!("cycle {cycle}: {n} queries, the slowest answered in {worst:?}");
        assert!(n >= 50, "only {n} queries ran during cycle {cycle}");
        assert!(
            worst < Duration::from_millis(100),
            "cycle {cycle}: a query took {worst:?}"
        );
        wait_converged(&p, "r", cycle);
    }
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
}

/// The admin queries the latency tests time, on both sides.
fn admin_queries() -> [Value; 8] {
    [
        serde_json::json!({"cmd": "status"}),
        serde_json::json!({"cmd": "volume_list"}),
        serde_json::json!({"cmd": "volume_show", "name": "v"}),
        serde_json::json!({"cmd": "replication_list"}),
        serde_json::json!({"cmd": "replication_show", "name": "r"}),
        serde_json::json!({"cmd": "session_list"}),
        serde_json::json!({"cmd": "peer_list"}),
        serde_json::json!({"cmd": "snapshot_list"}),
    ]
}

/// Admin queries answer within 100 ms on a primary whose disk is slow: every volume
/// read, write and flush there answers 150 ms late (the `fault-injection` hook
/// `TWINLUN_TEST_SLOW_IO_MS`) while qemu-io writes and flushes to the volume and a
/// cycle ships from it. Queries read published state; none waits on volume I/O.
#[test]
fn admin_queries_answer_within_100_ms_while_a_volume_disk_is_slow() {
    const SLOW_MS: u64 = 150;
    let slow = TestServer::launch().env(twinlun::volume::SLOW_IO_MS, &SLOW_MS.to_string());
    let (p, s) = pair_launched(slow, |a| a);
    wait_until(
        "the primary to log that its disk is slow (the hook is only in builds with \
         --features fault-injection, which scripts/test.sh uses)",
        Duration::from_secs(10),
        || {
            let log = p.stderr();
            if log.contains(&format!("{} is set", twinlun::volume::SLOW_IO_MS)) {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    // The disk is slow as seen from an initiator: a write then a flush take at least
    // two delays.
    let t0 = Instant::now();
    qemu_io(&url, &["write -P 0x31 0 1m", "flush"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2 * SLOW_MS),
        "a write and a flush took {took:?} on a disk slowed by {SLOW_MS} ms"
    );
    create_set_of_v(&p, &[]);
    replicate(&p, "r");

    // A writer: 4 KiB writes, each followed by a flush, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, rounds, url) = (stop.clone(), rounds.clone(), url.clone());
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Acquire) {
                let cmds: Vec<String> = (0..8)
                    .flat_map(|i| {
                        let page = (round * 8 + i) % 256;
                        [
                            format!("write -P {} {} 4k", 1 + round % 200, page * 4096),
                            "flush".to_string(),
                        ]
                    })
                    .collect();
                qemu_io(&url, &cmds);
                round += 1;
                rounds.store(round, Ordering::Release);
            }
        })
    };
    let queries = admin_queries();
    let secondary_only = serde_json::json!({"cmd": "recovery_points", "name": "r"});
    let (mut n, mut worst, mut slowest) = (0, Duration::ZERO, String::new());
    let mut query_all = || {
        let sides = [("primary", &p), ("secondary", &s)];
        let asked = queries
            .iter()
            .flat_map(|q| sides.map(|side| (side, q)))
            .chain([(sides[1], &secondary_only)]);
        for ((side, server), q) in asked {
            let took = timed_query(&server.socket, q);
            if took > worst {
                (worst, slowest) = (took, format!("{q} on the {side}"));
            }
            n += 1;
        }
    };
    // Query through two rounds of the writer (16 slow writes and 16 slow flushes) ...
    let start = rounds.load(Ordering::Acquire);
    wait_until("two rounds of the writer", Duration::from_secs(120), || {
        query_all();
        match rounds.load(Ordering::Acquire) {
            r if r >= start + 2 => Ok(()),
            r => Err(format!("{} rounds", r - start)),
        }
    });
    // ... and through a cycle that reads what it ships from the slow disk while the
    // writer goes on.
    p.ctl_ok(&["replicate", "r"]);
    wait_until("cycle 2 of r", Duration::from_secs(120), || {
        query_all();
        let v = show(&p, "r");
        assert!(v["error"].is_null(), "{v}");
        if v["cycles"].as_u64().unwrap() >= 2 && v["status"] != "replicating" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    stop.store(true, Ordering::Release);
    writer.join().expect("writer thread");
    println!(
        "slow disk ({SLOW_MS} ms per I/O): {n} queries, the slowest ({slowest}) answered in \
         {worst:?}"
    );
    assert!(n >= 50, "only {n} queries ran");
    assert!(
        worst < Duration::from_millis(100),
        "{slowest} took {worst:?} while the disk was slow"
    );
    wait_converged(&p, "r", 2);
}

/// Guessing a peer secret is slowed per source address: each wrong proof is checked
/// only after the delay the address owes (0, 100, 200, 400, 800 ms: lower bounds
/// only), and the right secret still gets in.
#[test]
fn wrong_peer_secrets_are_answered_ever_more_slowly() {
    use twinlun::catalog::PeerSpec;
    use twinlun::replication::peer::PeerConn;
    use twinlun::replication::tls::Tls;
    use twinlun::throttle::Policy;
    let s = TestServer::start_with(&["--replication-listen", "127.0.0.1:0"]);
    s.ctl_ok(&["peer", "create", "prod", "127.0.0.1:1", "--secret", SECRET]);
    let addr = s.repl_addr.unwrap().to_string();
    let spec = |secret: &str| PeerSpec {
        addr: addr.clone(),
        secret: secret.into(),
        max_rate: None,
        pinned_key: None,
    };
    let key_dir = tempfile::tempdir().unwrap();
    let tls = std::sync::Arc::new(Tls::load_or_create(key_dir.path()).unwrap());
    let policy = Policy::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for failures in 0..5u32 {
            let t0 = Instant::now();
            let r = PeerConn::open(&tls, "dr", &spec("not-the-secret-at-all")).await;
            let took = t0.elapsed();
            assert!(r.is_err(), "a wrong secret was accepted");
            let owed = policy.delay_after(failures);
            assert!(
                took >= owed,
                "guess {failures}: answered in {took:?}, owed {owed:?}"
            );
            println!("wrong guess after {failures} failures answered in {took:?}");
        }
        let t0 = Instant::now();
        PeerConn::open(&tls, "dr", &spec(SECRET))
            .await
            .expect("the right secret gets in");
        assert!(t0.elapsed() >= policy.delay_after(5));
        // A success forgets the address's failures.
        let t0 = Instant::now();
        assert!(PeerConn::open(&tls, "dr", &spec(SECRET)).await.is_ok());
        println!("right secret after a success: {:?}", t0.elapsed());
    });
}

/// A secondary whose file system is full: the cycle fails and the primary's status
/// says why in the secondary's own words, down to "No space left on device"; once
/// space is freed the set converges and the secondary holds the primary's data.
#[test]
fn a_full_secondary_says_why_and_converges_once_space_is_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("fs");
    let _fs = common::Tmpfs::mount(&mnt, "48m");
    let primary_repl = format!("127.0.0.1:{}", free_port());
    let secondary_repl = format!("127.0.0.1:{}", free_port());
    let p = TestServer::start_with(&["--replication-listen", &primary_repl]);
    let s = TestServer::start_at(
        &mnt.join("data"),
        &["--replication-listen", &secondary_repl],
    );
    let target = s.repl_addr.expect("secondary replication address");
    p.ctl_ok(&[
        "peer",
        "create",
        "dr",
        &target.to_string(),
        "--secret",
        SECRET,
    ]);
    s.ctl_ok(&["peer", "create", "prod", &primary_repl, "--secret", SECRET]);
    p.ctl_ok(&["volume", "create", "v", "--size", "32M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 1 0 8m".to_string()]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");

    // New data the secondary has no room for.
    let filled = common::fill_up(&mnt.join("filler"));
    assert!(filled > 0, "nothing filled");
    qemu_io(&url, &["write -P 2 16m 8m".to_string()]);
    p.ctl_ok(&["replicate", "r"]);
    let cause = std::io::Error::from_raw_os_error(28).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let v = show(&p, "r");
        if let Some(e) = v["error"].as_str() {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "the cycle did not fail: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        failed.contains(&cause),
        "the error does not say why: {failed}"
    );

    std::fs::remove_file(mnt.join("filler")).expect("free the space");
    p.ctl_ok(&["replicate", "r"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = show(&p, "r");
        if v["cycles"] == 2 && v["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "did not converge: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v", "--read-only"]);
    compare(&url, &s.url(DEMO_IQN, 1));
}
