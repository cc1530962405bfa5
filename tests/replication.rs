//! Replication between two twinlun processes on loopback: what the secondary holds
//! after each cycle (read through read-only LUNs and compared byte for byte), what a
//! cycle ships, consistency of committed cuts under dependent writes, the queue
//! policies over a throttled link, schedules, and the refusals.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::dependent::{after_writes, dependent_writer, generations, BLOCK, BLOCKS};
use common::proxy::Proxy;
use common::raw::RawClient;
use common::{free_port, run, run_ok, TestServer, DEMO_IQN};
use serde_json::Value;
use twinlun::iscsi::pdu::Digests;

const SECRET: &str = "replication-secret-1";
const INITIATOR: &str = "iqn.2026-11.test:replication";

fn json(s: &TestServer, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = s.ctl_ok(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A primary and a secondary that name each other with the same secret; the
/// primary reaches the secondary at `via` when given (a proxy), else directly.
fn pair_via(
    via: impl FnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
) -> (TestServer, TestServer) {
    let primary_repl = format!("127.0.0.1:{}", free_port());
    let secondary_repl = format!("127.0.0.1:{}", free_port());
    let p = TestServer::start_with(&["--replication-listen", &primary_repl]);
    let s = TestServer::start_with(&["--replication-listen", &secondary_repl]);
    let target = via(s.repl_addr.expect("secondary replication address"));
    p.ctl_ok(&[
        "peer",
        "create",
        "dr",
        &target.to_string(),
        "--secret",
        SECRET,
    ]);
    s.ctl_ok(&["peer", "create", "prod", &primary_repl, "--secret", SECRET]);
    (p, s)
}

/// `pair_via` a throttling proxy carrying `bytes_per_sec` toward the secondary.
fn pair_throttled(bytes_per_sec: u64) -> (TestServer, TestServer, Proxy) {
    let mut proxy = None;
    let (p, s) = pair_via(|target| {
        let px = Proxy::start(target, bytes_per_sec);
        let addr = px.addr;
        proxy = Some(px);
        addr
    });
    (p, s, proxy.expect("pair_via calls the closure"))
}

fn pair() -> (TestServer, TestServer) {
    pair_via(|a| a)
}

fn show(s: &TestServer, set: &str) -> Value {
    json(s, &["replication", "show", set])
}

/// Waits until the set has run `cycles` cycles and is not running; panics on a
/// timeout or when the set reports an error.
fn wait_cycles(p: &TestServer, set: &str, cycles: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = show(p, set);
        if v["cycles"].as_u64().unwrap() >= cycles && v["status"] != "replicating" {
            assert_eq!(v["status"], "ready", "{v}");
            return v;
        }
        assert!(v["error"].is_null(), "cycle failed: {v}");
        assert!(
            Instant::now() < deadline,
            "no cycle {cycles} within 120 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `replicate` and wait for that cycle; returns its `last_cycle`.
fn replicate(p: &TestServer, set: &str) -> Value {
    let before = show(p, set)["cycles"].as_u64().unwrap();
    p.ctl_ok(&["replicate", set]);
    wait_cycles(p, set, before + 1)["last_cycle"].clone()
}

fn qemu_io(url: &str, cmds: &[String]) {
    // qemu-io takes its commands as arguments: run them in batches.
    for batch in cmds.chunks(200) {
        let mut args = vec!["-f".to_string(), "raw".to_string()];
        for c in batch {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(url.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_ok("qemu-io", &args);
        assert!(!out.contains("failed"), "{out}");
    }
}

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
            "write -P 0x11 0 4m".into(),
            "write -P 0x12 100m 1m".into(),
            "write -P 0x13 255m 1m".into(),
        ],
    );
    qemu_io(
        &pb,
        &[
            "write -P 0x21 1m 3m".into(),
            "write -P 0x22 128m 512k".into(),
        ],
    );

    let created = json(
        &p,
        &[
            "replication",
            "create",
            "r1",
            "--group",
            "app",
            "--peer",
            "dr",
        ],
    );
    assert_eq!(created["status"], "unsynchronized", "{created}");
    // The secondary has the same volumes, as secondaries, in a group of the set.
    let sv = json(&s, &["volume", "show", "a"]);
    assert_eq!(sv["size"], 256 << 20);
    assert_eq!(json(&s, &["group", "show", "app"])["replication_set"], "r1");
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
    qemu_io(
        &pa,
        &["write -P 0x14 2m 64k".into(), "write -z 100m 1m".into()],
    );
    qemu_io(&pb, &["write -P 0x23 200m 8k".into()]);
    let second = replicate(&p, "r1");
    assert_eq!(second["full"], false, "{second}");
    assert_eq!(second["data_bytes"], (64 + 8) << 10, "{second}");
    assert_eq!(second["zero_bytes"], 1 << 20, "{second}");
    compare(&pa, &sa);
    compare(&pb, &sb);
    let points = json(&s, &["recovery-points", "r1"]);
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
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "big",
        "--peer",
        "dr",
    ]);
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
        std::fs::read(p.data_path("volumes/big.img")).unwrap(),
        std::fs::read(s.data_path("volumes/big.img")).unwrap(),
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
    p.ctl_ok(&[
        "replication",
        "create",
        "dep",
        "--group",
        "g",
        "--peer",
        "dr",
    ]);
    s.ctl_ok(&["target", "create", iqn]);
    s.ctl_ok(&["lun", "map", iqn, "0", "a", "--read-only"]);
    s.ctl_ok(&["lun", "map", iqn, "1", "b", "--read-only"]);

    let stop = Arc::new(AtomicBool::new(false));
    let (_control, control_rx) = mpsc::channel();
    let writer = {
        let (stop, addr) = (stop.clone(), p.addr);
        std::thread::spawn(move || dependent_writer(addr, iqn, stop, control_rx))
    };
    let mut seen = std::collections::BTreeSet::new();
    for cycle in 1..=8u64 {
        std::thread::sleep(Duration::from_millis(40));
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
        let path = format!("volumes/{v}.img");
        assert!(
            std::fs::read(p.data_path(&path)).unwrap()
                == std::fs::read(s.data_path(&path)).unwrap(),
            "final state of {v} differs"
        );
    }
}

#[test]
fn queue_policies_over_a_slow_link() {
    // The proxy carries the primary's cycles to the secondary at 4 MiB/s.
    let (p, _s, _proxy) = pair_throttled(4 << 20);
    for (v, policy) in [("d", "discard"), ("q", "queue-latest")] {
        p.ctl_ok(&["volume", "create", v, "--size", "64M"]);
        p.ctl_ok(&["lun", "map", DEMO_IQN, if v == "d" { "1" } else { "2" }, v]);
        let url = p.url(DEMO_IQN, if v == "d" { 1 } else { 2 });
        qemu_io(&url, &["write -P 0x5a 0 12m".into()]);
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
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(show(&p, "set-d")["cycles"], 1);

    // queue-latest: both are accepted and exactly one more cycle runs.
    p.ctl_ok(&["replicate", "set-q"]);
    for _ in 0..2 {
        p.ctl_ok(&["replicate", "set-q"]);
    }
    assert_eq!(show(&p, "set-q")["queued"], 1);
    wait_cycles(&p, "set-q", 2);
    std::thread::sleep(Duration::from_secs(2));
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
    let check = json(&p, &["peer", "check", "wrong"]);
    assert_eq!(check["authenticated"], false, "{check}");
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{check}"
    );
    let good = json(&p, &["peer", "check", "dr"]);
    assert_eq!(good["authenticated"], true, "{good}");
    assert_eq!(good["protocol_version"], 1, "{good}");
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
        json(&p, &["replication", "list"])["replications"],
        serde_json::json!([])
    );
    assert_eq!(
        json(&s, &["replication", "list"])["replications"],
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
    p.ctl_ok(&[
        "replication",
        "create",
        "sched",
        "--volume",
        "v",
        "--peer",
        "dr",
        "--every",
        "2s",
    ]);
    wait_cycles(&p, "sched", 3);
    let secs = started.elapsed().as_secs_f64();
    assert!(
        (5.0..9.0).contains(&secs),
        "3 cycles every 2 s took {secs:.1} s"
    );
    // A schedule task every 2 s on another set: cycles on time.
    p.ctl_ok(&["volume", "create", "w", "--size", "8M"]);
    p.ctl_ok(&[
        "replication",
        "create",
        "tasked",
        "--volume",
        "w",
        "--peer",
        "dr",
    ]);
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
        json(&p, &["schedule", "list"])["schedules"],
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
    let listed = json(&p, &["schedule", "list"]);
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
        json(&s, &["replication", "list"])["replications"],
        serde_json::json!([])
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "3", "v"]);
    p.ctl_ok(&["peer", "delete", "dr"]);
}

/// Status transitions a set reports, oldest first, without their times.
fn statuses(p: &TestServer, set: &str) -> Vec<String> {
    show(p, set)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().split(' ').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn restart_deletes_recovery_points_and_reships_everything() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x61 0 8m".into()]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    replicate(&p, "r");
    qemu_io(&url, &["write -P 0x62 1m 1m".into()]);
    replicate(&p, "r");
    let before = json(&s, &["recovery-points", "r"]);
    assert_eq!(before["points"].as_array().unwrap().len(), 2, "{before}");

    // Without --yes: refused, explaining what it would do; nothing changes.
    let o = p.ctl(&["restart", "r"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("deletes every recovery point") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(json(&s, &["recovery-points", "r"]), before);

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
    let points = json(&s, &["recovery-points", "r"]);
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
        std::fs::read(p.data_path("volumes/v.img")).unwrap()
            == std::fs::read(s.data_path("volumes/v.img")).unwrap()
    );
}

#[test]
fn promote_at_an_older_recovery_point_gives_that_cut_and_a_writable_volume() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "32M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
        "--keep",
        "4",
    ]);
    let mut images = Vec::new();
    for (i, pattern) in [0x71, 0x72, 0x73].iter().enumerate() {
        qemu_io(&url, &[format!("write -P {pattern} {}m 2m", i * 3)]);
        qemu_io(&url, &[format!("write -P {pattern} 0 64k")]);
        let cycle = replicate(&p, "r");
        images.push((
            cycle["cut_id"].as_u64().unwrap(),
            std::fs::read(p.data_path("volumes/v.img")).unwrap(),
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
        std::fs::read(s.data_path("volumes/v.img")).unwrap() == *oldest,
        "the promoted volume is not cut {oldest_cut}'s content"
    );
    // No longer a secondary: writable through a LUN.
    assert_eq!(
        json(&s, &["replication", "list"])["replications"],
        serde_json::json!([])
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(
        &s.url(DEMO_IQN, 1),
        &["write -P 0x7f 0 4k".into(), "read -P 0x7f 0 4k".into()],
    );
}

#[test]
fn a_secondary_killed_while_applying_is_at_one_cut_and_converges() {
    let (p, mut s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "256M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x41 0 64m".into()]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    replicate(&p, "r");
    let first = std::fs::read(p.data_path("volumes/v.img")).unwrap();
    // A big second cut; kill the secondary while it is being received or applied.
    qemu_io(
        &url,
        &[
            "write -P 0x42 0 64m".into(),
            "write -P 0x43 100m 32m".into(),
        ],
    );
    let second = std::fs::read(p.data_path("volumes/v.img")).unwrap();
    p.ctl_ok(&["replicate", "r"]);
    std::thread::sleep(Duration::from_millis(150));
    common::kill9(&mut s);
    s.restart();
    let got = std::fs::read(s.data_path("volumes/v.img")).unwrap();
    assert!(
        got == first || got == second,
        "the secondary holds a mix of two cuts"
    );
    // The primary's failed cycle retries on its own and converges.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = show(&p, "r");
        if v["cycles"] == 2 && v["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "did not converge: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::fs::read(s.data_path("volumes/v.img")).unwrap() == second);
}

#[test]
fn a_secondary_killed_during_the_first_cut_claims_no_cut_and_converges() {
    // The first cut goes straight into the secondary's volume (nothing there to keep).
    let (p, mut s, proxy) = pair_throttled(8 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(
        &p.url(DEMO_IQN, 1),
        &["write -P 0x51 0 24m".into(), "write -P 0x52 40m 8m".into()],
    );
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    p.ctl_ok(&["replicate", "r"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = show(&p, "r");
        if v["progress"]["bytes_done"].as_u64().unwrap_or(0) >= 12 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::kill9(&mut s);
    // The primary's side of the proxied connection goes too.
    proxy.cut();
    proxy.set_rate(0);
    s.restart();
    // Half a first cut is no cut: no recovery point, nothing to fail over to.
    let points = json(&s, &["recovery-points", "r"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 0, "{points}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let v = show(&p, "r");
        if v["cycles"] == 1 && v["status"] == "ready" {
            break v;
        }
        assert!(Instant::now() < deadline, "did not converge: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        done["last_cycle"]["attempts"].as_u64().unwrap() >= 2,
        "{done}"
    );
    assert!(
        std::fs::read(p.data_path("volumes/v.img")).unwrap()
            == std::fs::read(s.data_path("volumes/v.img")).unwrap()
    );
    let points = json(&s, &["recovery-points", "r"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 1, "{points}");
}

#[test]
fn a_transfer_cut_off_midway_resumes_the_same_cut() {
    let (p, s, proxy) = pair_throttled(4 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x33 0 16m".into()]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    p.ctl_ok(&["replicate", "r"]);
    // Cut the link once about half is across.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = show(&p, "r");
        if v["progress"]["bytes_done"].as_u64().unwrap_or(0) >= 8 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.cut();
    proxy.set_rate(0);
    let done = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = show(&p, "r");
            if v["cycles"] == 1 && v["status"] == "ready" {
                break v;
            }
            assert!(Instant::now() < deadline, "did not resume: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
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
        std::fs::read(p.data_path("volumes/v.img")).unwrap()
            == std::fs::read(s.data_path("volumes/v.img")).unwrap()
    );
}

#[test]
fn suspend_resume_abort_and_watch() {
    let (p, s, proxy) = pair_throttled(2 << 20);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x21 0 16m".into()]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);

    // abort: the running cycle is abandoned; the secondary holds no cut.
    p.ctl_ok(&["replicate", "r"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = p.ctl_ok(&["abort", "r"]);
    assert!(out.contains("aborting"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let v = show(&p, "r");
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
        std::fs::read(p.data_path("volumes/v.img")).unwrap()
            == std::fs::read(s.data_path("volumes/v.img")).unwrap()
    );
}
