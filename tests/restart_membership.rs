//! Restart Replication that changes a group set's volumes (`restart SET --yes
//! --add-volume V --remove-volume V`), between two twinlun processes on loopback: an
//! added volume gets its secondary (same size, block size and page size) and the cut
//! after the restart is consistent across the whole new group under dependent writes
//! (A, then B, then C); a removed volume leaves the set and its group on both sides and
//! stays a plain volume on both; and every bad request is refused naming what is wrong,
//! with nothing changed on either side.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dependent::{block, generations, BLOCK, BLOCKS};
use common::pair::{create_set, pair, replicate, show, statuses, wait_cycles};
use common::raw::RawClient;
use common::{wait_until, TestServer};
use serde_json::Value;
use twinlun::iscsi::pdu::Digests;

const INITIATOR: &str = "iqn.2026-11.test:restart-members";
const IQN: &str = "iqn.2026-11.test:members";
/// Volumes A, B, C are LUNs 0, 1, 2 of `IQN` on the primary.
const VOLUMES: usize = 3;

/// The generations after the first `k` writes of A[0] B[0] C[0] A[1] B[1] C[1] ...,
/// pass after pass.
fn after_writes(k: usize) -> Vec<Vec<u8>> {
    let (passes, rest) = (k / (VOLUMES * BLOCKS), k % (VOLUMES * BLOCKS));
    (0..VOLUMES)
        .map(|v| {
            (0..BLOCKS)
                .map(|i| (passes + usize::from(VOLUMES * i + v < rest)) as u8)
                .collect()
        })
        .collect()
}

/// Writes A[i], waits for GOOD, then B[i], then C[i], for i = 0.. in passes 1, 2, ...
/// until `stop`; publishes its count of acknowledged writes in `written`.
fn writer(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, written: Arc<AtomicUsize>) {
    let mut c = RawClient::connect(addr);
    c.login("iqn.2026-11.test:writer", IQN, Digests::default());
    let mut n = 0;
    'passes: for gen in 1..=255u8 {
        for i in 0..BLOCKS {
            for vol in 0..VOLUMES as u8 {
                if stop.load(Ordering::Acquire) {
                    break 'passes;
                }
                c.write10(u64::from(vol), i as u32, &block(vol, i, gen), BLOCK);
                n += 1;
                written.store(n, Ordering::Release);
            }
        }
    }
}

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

/// The secondary's A, B, C (read-only LUNs 0..2 of `IQN` there) are the state after
/// exactly some number of the writer's writes: returns that number.
fn consistent_cut(s: &TestServer, what: &str) -> usize {
    let mut c = RawClient::connect(s.addr);
    c.login(INITIATOR, IQN, Digests::default());
    let images: Vec<Vec<u8>> = (0..VOLUMES as u8)
        .map(|v| generations(v, &c.read10(u64::from(v), 0, BLOCKS as u16, BLOCK)))
        .collect();
    let k: usize = images.iter().flatten().map(|&g| g as usize).sum();
    assert_eq!(
        images,
        after_writes(k),
        "{what}: the secondary's A, B, C are not the state after {k} writes"
    );
    k
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

fn set_volumes(s: &TestServer, set: &str) -> Vec<String> {
    names(&show(s, set)["volumes"])
}

fn group_volumes(s: &TestServer, group: &str) -> Vec<String> {
    names(&s.ctl_json(&["group", "show", group])["volumes"])
}

fn same_file(p: &TestServer, s: &TestServer, v: &str) {
    assert!(
        std::fs::read(p.volume_file(v)).unwrap() == std::fs::read(s.volume_file(v)).unwrap(),
        "volume {v} differs between the primary and the secondary"
    );
}

/// Cut ids of the secondary's recovery points of `set`, newest first.
fn points(s: &TestServer, set: &str) -> Vec<u64> {
    s.ctl_json(&["recovery-points", set])["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cut_id"].as_u64().unwrap())
        .collect()
}

#[test]
fn an_added_volume_gets_its_secondary_and_the_next_cut_is_consistent_across_the_group() {
    let (p, s) = pair();
    for v in ["a", "b"] {
        p.ctl_ok(&["volume", "create", v, "--size", "256K"]);
    }
    // C tracks 8 KiB pages: its secondary must too.
    p.ctl_ok(&[
        "volume",
        "create",
        "c",
        "--size",
        "256K",
        "--page-size",
        "8K",
    ]);
    p.ctl_ok(&["group", "create", "g", "a", "b"]);
    p.ctl_ok(&["target", "create", IQN]);
    for (lun, v) in ["a", "b", "c"].iter().enumerate() {
        p.ctl_ok(&["lun", "map", IQN, &lun.to_string(), v]);
    }
    create_set(&p, "dep", &["--group", "g"]);
    replicate(&p, "dep");
    let old_points = points(&s, "dep");
    let generation = show(&p, "dep")["generation"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let w = {
        let (stop, written, addr) = (stop.clone(), written.clone(), p.addr);
        std::thread::spawn(move || writer(addr, stop, written))
    };
    wait_writes(&written, 100);

    let cycles = show(&p, "dep")["cycles"].as_u64().unwrap();
    let said = p.ctl_ok(&["restart", "dep", "--yes", "--add-volume", "c"]);
    assert!(said.contains("added c"), "{said}");
    // Both sides have the new membership as soon as the restart answers.
    for side in [&p, &s] {
        assert_eq!(set_volumes(side, "dep"), ["a", "b", "c"]);
        assert_eq!(group_volumes(side, "g"), ["a", "b", "c"]);
    }
    let sc = s.volume_view("c");
    assert_eq!(
        (&sc["size"], &sc["block_size"], &sc["page_size"]),
        (
            &Value::from(256 << 10),
            &Value::from(512),
            &Value::from(8192)
        ),
        "{sc}"
    );
    // A secondary: never mapped read-write.
    s.ctl_ok(&["target", "create", IQN]);
    let (err, _) = s.ctl_refused(&["lun", "map", IQN, "2", "c"]);
    assert!(err.contains("--read-only"), "{err}");

    // The restart's full cycle, then two more, all under the writer's dependent writes.
    let after = wait_cycles(&p, "dep", cycles + 1);
    assert_eq!(after["generation"], generation + 1, "{after}");
    assert_eq!(after["last_cycle"]["full"], true, "{after}");
    let seen = statuses(&p, "dep");
    assert!(
        seen.iter().any(|st| st == "start-replication"),
        "the restart shows start-replication: {seen:?}"
    );
    // The old generation's recovery points are gone: only the restart's cut.
    let now = points(&s, "dep");
    assert_eq!(
        now,
        [after["last_cut_id"].as_u64().unwrap()],
        "{old_points:?}"
    );
    for (lun, v) in ["a", "b", "c"].iter().enumerate() {
        s.ctl_ok(&["lun", "map", IQN, &lun.to_string(), v, "--read-only"]);
    }
    let mut cuts = vec![consistent_cut(&s, "the restart's cut")];
    for cycle in 2..=3u64 {
        wait_writes(&written, written.load(Ordering::Acquire) + 3);
        p.ctl_ok(&["replicate", "dep"]);
        wait_cycles(&p, "dep", cycles + cycle);
        cuts.push(consistent_cut(
            &s,
            &format!("cut {cycle} after the restart"),
        ));
    }
    assert!(
        cuts.windows(2).all(|k| k[0] < k[1]),
        "each cut holds more writes: {cuts:?}"
    );
    assert!(cuts[0] > 0, "the restart's cut holds writes: {cuts:?}");
    stop.store(true, Ordering::Release);
    w.join().unwrap();
    // Quiet: the next cut is the primary's volumes as they are, byte for byte.
    replicate(&p, "dep");
    for v in ["a", "b", "c"] {
        same_file(&p, &s, v);
    }
}

#[test]
fn a_removed_volume_leaves_the_set_on_both_sides_as_a_plain_volume() {
    let (p, s) = pair();
    for v in ["a", "b", "c"] {
        p.ctl_ok(&["volume", "create", v, "--size", "1M"]);
    }
    p.ctl_ok(&["group", "create", "g", "a", "b", "c"]);
    p.ctl_ok(&["target", "create", IQN]);
    for (lun, v) in ["a", "b", "c"].iter().enumerate() {
        p.ctl_ok(&["lun", "map", IQN, &lun.to_string(), v]);
    }
    let mut c = RawClient::connect(p.addr);
    c.login(INITIATOR, IQN, Digests::default());
    for vol in 0..3u8 {
        for i in 0..8 {
            c.write10(u64::from(vol), i, &block(vol, i as usize, 1), BLOCK);
        }
    }
    create_set(&p, "dep", &["--group", "g"]);
    replicate(&p, "dep");
    let b_replicated = std::fs::read(s.volume_file("b")).unwrap();

    let cycles = show(&p, "dep")["cycles"].as_u64().unwrap();
    let said = p.ctl_ok(&["restart", "dep", "--yes", "--remove-volume", "b"]);
    assert!(said.contains("removed b"), "{said}");
    for side in [&p, &s] {
        assert_eq!(set_volumes(side, "dep"), ["a", "c"]);
        assert_eq!(group_volumes(side, "g"), ["a", "c"]);
        assert!(side.volume_view("b")["group"].is_null());
    }
    // Writes go on to all three; the set ships A and C only.
    for vol in 0..3u8 {
        c.write10(u64::from(vol), 20, &block(vol, 20, 2), BLOCK);
    }
    wait_cycles(&p, "dep", cycles + 1);
    replicate(&p, "dep");
    same_file(&p, &s, "a");
    same_file(&p, &s, "c");
    // The secondary's B is kept as it was replicated last, a plain volume now:
    // writable, and deletable.
    assert!(std::fs::read(s.volume_file("b")).unwrap() == b_replicated);
    s.ctl_ok(&["target", "create", IQN]);
    s.ctl_ok(&["lun", "map", IQN, "1", "b"]);
    let mut sc = RawClient::connect(s.addr);
    sc.login(INITIATOR, IQN, Digests::default());
    sc.write10(1, 100, &block(1, 100, 9), BLOCK);
    drop(sc);
    s.ctl_ok(&["lun", "unmap", IQN, "1"]);
    s.ctl_ok(&["volume", "delete", "b"]);
    // And the primary's B is a plain volume too: it can join another group.
    p.ctl_ok(&["group", "create", "other", "b"]);
}

/// What a refused request must leave as it was: on both sides the set's and the
/// group's volumes, the volumes there are, the set's generation and last cut, and on
/// the secondary its recovery points.
fn state(p: &TestServer, s: &TestServer) -> Vec<String> {
    let mut out = Vec::new();
    for side in [p, s] {
        let set = show(side, "dep");
        out.push(format!(
            "{} {} {} {}",
            set["volumes"], set["remote_volumes"], set["generation"], set["last_cut_id"]
        ));
        out.push(side.ctl_json(&["group", "show", "g"])["volumes"].to_string());
        let vols = side.ctl_json(&["volume", "list"]);
        let mut listed: Vec<String> = vols["volumes"]
            .as_array()
            .unwrap_or_else(|| panic!("{vols}"))
            .iter()
            .map(|v| format!("{}:{}", v["name"], v["group"]))
            .collect();
        listed.sort();
        out.push(listed.join(","));
    }
    out.push(format!("{:?}", points(s, "dep")));
    out
}

#[test]
fn bad_membership_changes_are_refused_naming_why_and_change_nothing() {
    let (p, s) = pair();
    for v in ["a", "b", "c", "x", "y"] {
        p.ctl_ok(&["volume", "create", v, "--size", "1M"]);
    }
    p.ctl_ok(&["group", "create", "g", "a", "b"]);
    p.ctl_ok(&["group", "create", "h", "y"]);
    create_set(&p, "dep", &["--group", "g"]);
    create_set(&p, "solo", &["--volume", "x"]);
    replicate(&p, "dep");
    replicate(&p, "dep");
    let before = state(&p, &s);

    let cases: &[(&[&str], &[&str])] = &[
        (&["--add-volume", "nope"], &["'nope'"]),
        (&["--add-volume", "x"], &["'x'", "'solo'"]),
        (&["--add-volume", "y"], &["'y'", "group 'h'"]),
        (&["--add-volume", "a"], &["'a'", "already in group 'g'"]),
        (&["--remove-volume", "c"], &["'c'", "not in group 'g'"]),
        (
            &["--remove-volume", "a", "--remove-volume", "b"],
            &["'dep'", "no volume"],
        ),
        (
            &["--add-volume", "c", "--remove-volume", "c"],
            &["'c'", "twice"],
        ),
    ];
    for (args, said) in cases {
        let mut full = vec!["restart", "dep", "--yes"];
        full.extend_from_slice(args);
        let (err, _) = p.ctl_refused(&full);
        for s in *said {
            assert!(err.contains(s), "{args:?}: {err}");
        }
    }
    // Not a group set.
    let (err, _) = p.ctl_refused(&["restart", "solo", "--yes", "--add-volume", "c"]);
    assert!(
        err.contains("'solo'") && err.contains("not a group"),
        "{err}"
    );
    // Without --yes.
    let (err, _) = p.ctl_refused(&["restart", "dep", "--add-volume", "c"]);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(state(&p, &s), before, "a refusal changed something");
    // A name the secondary already has (a plain volume there): the peer refuses,
    // naming it, before it changes anything.
    s.ctl_ok(&["volume", "create", "c", "--size", "4M"]);
    let before = state(&p, &s);
    let (err, _) = p.ctl_refused(&["restart", "dep", "--yes", "--add-volume", "c"]);
    assert!(
        err.contains("'c'") && err.contains("already exists") && err.contains("peer 'dr'"),
        "{err}"
    );
    assert_eq!(state(&p, &s), before);
    // And the set runs on as it was: the next cycle is incremental over A and B.
    let next = replicate(&p, "dep");
    assert_eq!(next["full"], false, "{next}");
    assert_eq!(set_volumes(&s, "dep"), ["a", "b"]);
    assert_eq!(s.volume_view("c")["size"], 4 << 20);
}
