//! Rate limits and changed settings of replication sets, between two twinlun processes
//! on loopback: a set's `--max-rate` and its peer's hold a cycle to the cap (its wall
//! time as the set reports it), a cap changed mid-cycle takes effect within 2 s,
//! `replication modify` changes what it names on both sides and survives restarts,
//! and its refusals change nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::pair::{create_set_of_v, pair, pair_of, replicate, show, wait_cycles, wait_progress};
use common::{qemu_io, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// A volume `v` of `size_mib` MiB mapped at LUN 1, its first `mib` MiB written with
/// noise (which no codec shrinks, and has no zero page) through QEMU's iSCSI driver.
fn noisy_volume(p: &TestServer, size_mib: u64, mib: u64) {
    p.ctl_ok(&["volume", "create", "v", "--size", &format!("{size_mib}M")]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..8 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&noise, bytes).unwrap();
    let writes: Vec<String> = (0..mib.div_ceil(8))
        .map(|i| {
            let len = 8.min(mib - i * 8);
            format!("write -s {} {}m {len}m", noise.display(), i * 8)
        })
        .collect();
    qemu_io(&p.url(DEMO_IQN, 1), &writes);
}

/// Runs a cycle of `r` and returns its view once committed, with the current rates
/// the set reported while it shipped its middle (from 30 % to 90 % of the bytes).
fn cycle_with_rates(p: &TestServer) -> (Value, Vec<u64>) {
    let before = show(p, "r")["cycles"].as_u64().unwrap();
    p.ctl_ok(&["replicate", "r"]);
    let mut rates = Vec::new();
    let v = wait_until("the cycle to commit", Duration::from_secs(120), || {
        let v = show(p, "r");
        let done = v["progress"]["bytes_done"].as_u64().unwrap_or(0);
        let total = v["progress"]["bytes_total"].as_u64().unwrap_or(u64::MAX);
        if let Some(r) = v["current_rate"].as_u64() {
            if done * 10 >= total * 3 && done * 10 <= total * 9 {
                rates.push(r);
            }
        }
        assert!(v["error"].is_null(), "cycle failed: {v}");
        if v["cycles"].as_u64().unwrap() > before && v["status"] == "ready" {
            return Ok(v);
        }
        Err(v.to_string())
    });
    (v, rates)
}

fn median(mut v: Vec<u64>) -> u64 {
    assert!(
        !v.is_empty(),
        "no rate was reported while the cycle shipped"
    );
    v.sort_unstable();
    v[v.len() / 2]
}

/// `want` within 10 %.
fn within_10_percent(got: f64, want: f64) -> bool {
    (got - want).abs() <= want / 10.0
}

#[test]
fn a_20m_set_cap_ships_a_200_mib_cycle_in_10_s() {
    let (p, s) = pair();
    noisy_volume(&p, 256, 200);
    create_set_of_v(&p, &["--max-rate", "20M"]);
    let v = show(&p, "r");
    assert_eq!(v["max_rate"], 20 * MIB, "{v}");
    assert_eq!(v["peer_max_rate"], Value::Null, "{v}");
    assert_eq!(v["effective_max_rate"], 20 * MIB, "{v}");
    let text = p.ctl_ok(&["replication", "show", "r"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("max rate") && l.ends_with("20.0 MiB/s")),
        "{text}"
    );

    let (v, rates) = cycle_with_rates(&p);
    let c = &v["last_cycle"];
    assert_eq!(c["data_bytes"], 200 * MIB, "{c}");
    assert_eq!(c["wire_data_bytes"], 200 * MIB, "{c}");
    let secs = c["seconds"].as_f64().unwrap();
    eprintln!("200 MiB at --max-rate 20M: {secs:.2} s; rates seen {rates:?}");
    assert!(within_10_percent(secs, 10.0), "the cycle took {secs} s");
    let rate = median(rates);
    assert!(
        within_10_percent(rate as f64, (20 * MIB) as f64),
        "current rate {rate} B/s"
    );
    assert_eq!(v["current_rate"], Value::Null, "only while shipping: {v}");
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap()
    );
    // The list shows the cap too.
    let m = p.ctl_json(&["replication", "list"]);
    assert_eq!(m["replications"][0]["effective_max_rate"], 20 * MIB);
}

#[test]
fn a_peer_cap_alone_limits_the_sets_to_it() {
    let (p, _s) = pair();
    let out = p.ctl_ok(&["peer", "update", "dr", "--max-rate", "8M"]);
    assert!(out.contains("max-rate no cap -> 8M/s"), "{out}");
    let peers = p.ctl_json(&["peer", "list"]);
    assert_eq!(peers["peers"][0]["max_rate"], 8 * MIB, "{peers}");
    noisy_volume(&p, 128, 80);
    create_set_of_v(&p, &[]);
    let v = show(&p, "r");
    assert_eq!(v["max_rate"], Value::Null, "{v}");
    assert_eq!(v["peer_max_rate"], 8 * MIB, "{v}");
    assert_eq!(v["effective_max_rate"], 8 * MIB, "{v}");

    let (v, rates) = cycle_with_rates(&p);
    let secs = v["last_cycle"]["seconds"].as_f64().unwrap();
    eprintln!("80 MiB at a peer's --max-rate 8M: {secs:.2} s; rates seen {rates:?}");
    assert_eq!(v["last_cycle"]["data_bytes"], 80 * MIB);
    assert!(within_10_percent(secs, 10.0), "the cycle took {secs} s");
    let rate = median(rates);
    assert!(
        within_10_percent(rate as f64, (8 * MIB) as f64),
        "current rate {rate} B/s"
    );

    // Without the cap the same data goes much faster.
    p.ctl_ok(&["peer", "update", "dr", "--no-max-rate"]);
    assert_eq!(show(&p, "r")["effective_max_rate"], Value::Null);
    p.ctl_ok(&["restart", "r", "--yes"]);
    let v = wait_until("the restarted cycle", Duration::from_secs(120), || {
        let v = show(&p, "r");
        if v["cycles"] == 2 && v["status"] == "ready" {
            return Ok(v);
        }
        Err(v.to_string())
    });
    let secs = v["last_cycle"]["seconds"].as_f64().unwrap();
    eprintln!("80 MiB without a cap: {secs:.2} s");
    assert!(secs < 5.0, "without a cap: {secs} s");
}

#[test]
fn a_rate_changed_mid_cycle_takes_effect_within_2_s() {
    let (p, _s) = pair();
    noisy_volume(&p, 256, 200);
    create_set_of_v(&p, &["--max-rate", "5M"]);
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 8 * MIB);
    let done = |p: &TestServer| show(p, "r")["progress"]["bytes_done"].as_u64().unwrap();
    let before = done(&p);
    let out = p.ctl_ok(&["replication", "modify", "r", "--max-rate", "40M"]);
    let changed = Instant::now();
    assert!(
        out.contains("modified replication set 'r': max-rate 5M/s -> 40M/s"),
        "{out}"
    );
    // At 5M the next 2 s carry at most 10 MiB (and a quarter second's burst and one
    // extent): 24 MiB more means the new cap is in force.
    wait_until(
        "24 MiB more shipped within 2 s of the change",
        Duration::from_secs(2),
        || {
            let now = done(&p);
            if now >= before + 24 * MIB {
                return Ok(());
            }
            Err(format!("{} MiB more", (now - before) / MIB))
        },
    );
    eprintln!("24 MiB more within {:?} of the change", changed.elapsed());
    let v = show(&p, "r");
    assert_eq!(v["max_rate"], 40 * MIB, "{v}");
    // And down again: the pace drops to the new cap within 2 s.
    p.ctl_ok(&["replication", "modify", "r", "--max-rate", "4M"]);
    let slowed = Instant::now();
    let mut seen = Vec::new();
    let (at, bytes) = wait_until(
        "the cycle's pace after lowering the cap",
        Duration::from_secs(10),
        || {
            let b = done(&p);
            seen.push((slowed.elapsed(), b));
            if slowed.elapsed() >= Duration::from_secs(2) {
                return Ok((slowed.elapsed(), b));
            }
            Err(format!("{seen:?}"))
        },
    );
    // From 2 s after the change, 3 more seconds at 4M: 12 MiB, plus an extent.
    let later = wait_until("3 s more", Duration::from_secs(10), || {
        if slowed.elapsed() >= at + Duration::from_secs(3) {
            return Ok(done(&p));
        }
        Err(String::new())
    });
    let pace = (later - bytes) as f64 / (slowed.elapsed() - at).as_secs_f64();
    assert!(
        pace <= (5 * MIB) as f64,
        "{pace} B/s with a 4M cap, 2 s after it was set"
    );
    p.ctl_ok(&["replication", "modify", "r", "--no-max-rate"]);
    let v = wait_cycles(&p, "r", 1);
    assert_eq!(v["last_cycle"]["data_bytes"], 200 * MIB);
    assert_eq!(v["max_rate"], Value::Null);
}

#[test]
fn every_modify_survives_a_restart_of_both_nodes_and_keep_acts_on_the_secondary() {
    let (mut p, mut s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "8M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    create_set_of_v(&p, &[]);
    let out = p.ctl_ok(&[
        "replication",
        "modify",
        "r",
        "--every",
        "1h",
        "--keep",
        "2",
        "--queue-policy",
        "discard",
        "--max-rate",
        "30M",
        "--compress",
        "zstd",
    ]);
    for said in [
        "every none -> 1h",
        "keep 8 -> 2",
        "queue-policy queue-latest -> discard",
        "max-rate no cap -> 30M/s",
        "compress none -> zstd",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    let check = |p: &TestServer, s: &TestServer| {
        let v = show(p, "r");
        assert_eq!(v["every_secs"], 3600, "{v}");
        assert_eq!(v["keep"], 2, "{v}");
        assert_eq!(v["queue_policy"], "discard", "{v}");
        assert_eq!(v["max_rate"], 30 * MIB, "{v}");
        assert_eq!(v["compress"], "zstd", "{v}");
        assert_eq!(show(s, "r")["keep"], 2, "the secondary's keep");
    };
    check(&p, &s);
    p.restart();
    s.restart();
    check(&p, &s);
    // The secondary prunes to its new keep; the set compresses.
    let url = p.url(DEMO_IQN, 1);
    for i in 0..3 {
        qemu_io(&url, &[format!("write -P {} 0 1m", 0x40 + i)]);
        let c = replicate(&p, "r");
        assert_eq!(c["compress"], "zstd", "{c}");
    }
    let points = s.ctl_json(&["recovery-points", "r"]);
    assert_eq!(points["points"].as_array().unwrap().len(), 2, "{points}");

    // Back to no interval and no cap; the peer learns a larger keep.
    let out = p.ctl_ok(&[
        "replication",
        "modify",
        "r",
        "--no-every",
        "--no-max-rate",
        "--keep",
        "5",
    ]);
    assert!(
        out.contains("every 1h -> none") && out.contains("max-rate 30M/s -> no cap"),
        "{out}"
    );
    p.restart();
    s.restart();
    let v = show(&p, "r");
    assert_eq!(v["every_secs"], Value::Null, "{v}");
    assert_eq!(v["max_rate"], Value::Null, "{v}");
    assert_eq!(v["keep"], 5, "{v}");
    assert_eq!(show(&s, "r")["keep"], 5);
    // The config export carries the settings: a peer cap too.
    p.ctl_ok(&["peer", "update", "dr", "--max-rate", "1.5G"]);
    p.ctl_ok(&["replication", "modify", "r", "--max-rate", "50M"]);
    let export = p.ctl_ok(&["config", "export"]);
    assert!(export.contains("max_rate = \"1.5G\""), "{export}");
    assert!(export.contains("max_rate = \"50M\""), "{export}");
}

/// One raw admin request and its answer.
fn raw(p: &TestServer, req: &str) -> Value {
    let mut conn = std::os::unix::net::UnixStream::connect(&p.socket).unwrap();
    writeln!(conn, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn modify_refusals_name_the_reason_and_change_nothing() {
    // The secondary decodes lz4 only, as a build without zstd would.
    let (p, s) = pair_of(
        TestServer::launch(),
        TestServer::launch().env("TWINLUN_TEST_CODECS", "lz4"),
        |a| a,
    );
    p.ctl_ok(&["volume", "create", "v", "--size", "4M"]);
    create_set_of_v(&p, &["--max-rate", "10M"]);
    let before = (show(&p, "r"), show(&s, "r"));
    let unchanged = || {
        let (a, b) = (show(&p, "r"), show(&s, "r"));
        for k in ["every_secs", "keep", "queue_policy", "max_rate", "compress"] {
            assert_eq!(a[k], before.0[k], "{k} on the primary");
            assert_eq!(b[k], before.1[k], "{k} on the secondary");
        }
    };

    let (err, v) = p.ctl_refused(&["replication", "modify", "nope", "--keep", "3"]);
    assert_eq!(v["code"], "not_found", "{v}");
    assert!(err.contains("no replication set named 'nope'"), "{err}");

    // No option: a usage error from ctl, and the server says which options there are.
    let o = p.ctl(&["replication", "modify", "r"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let v = raw(&p, r#"{"cmd":"replication_modify","name":"r"}"#);
    assert_eq!(v["code"], "invalid", "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("nothing to change") && m.contains("--max-rate"),
        "{m}"
    );

    // A bad rate names the option, from ctl and from the server, and so does a bad
    // value beside good ones: nothing of the request applies.
    for bad in ["fast", "0", "100K", "12Q"] {
        let o = p.ctl(&["replication", "modify", "r", "--max-rate", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--max-rate"), "{bad}: {err}");
        let v = raw(
            &p,
            &format!(r#"{{"cmd":"replication_modify","name":"r","keep":3,"max_rate":"{bad}"}}"#),
        );
        assert_eq!(v["code"], "invalid", "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains(&format!("invalid --max-rate '{bad}'")),
            "{v}"
        );
    }
    let (err, _) = p.ctl_refused(&["replication", "modify", "r", "--keep", "0", "--every", "5m"]);
    assert!(err.contains("--keep must be at least 1"), "{err}");
    let (err, _) = p.ctl_refused(&[
        "replication",
        "modify",
        "r",
        "--every",
        "soon",
        "--keep",
        "3",
    ]);
    assert!(err.contains("invalid duration 'soon'"), "{err}");
    let o = p.ctl(&["replication", "modify", "r", "--compress", "gzip"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--compress must be zstd, lz4 or none"));
    unchanged();

    // A codec the peer cannot decode is refused, naming it; one it can is taken.
    let (err, v) = p.ctl_refused(&[
        "replication",
        "modify",
        "r",
        "--compress",
        "zstd",
        "--keep",
        "3",
    ]);
    assert_eq!(v["code"], "refused", "{v}");
    assert!(err.contains("peer 'dr' does not decode zstd"), "{err}");
    unchanged();

    // On the secondary: modify it on the primary.
    let (err, v) = s.ctl_refused(&["replication", "modify", "r", "--keep", "3"]);
    assert_eq!(v["code"], "invalid", "{v}");
    assert!(
        err.contains("is the secondary side here: modify it on its primary"),
        "{err}"
    );
    unchanged();

    // A keep needs the secondary: with it gone, the change is refused and not made.
    let mut s = s;
    s.stop();
    let (err, v) = p.ctl_refused(&["replication", "modify", "r", "--keep", "3"]);
    assert_eq!(v["code"], "unreachable", "{v}");
    assert!(err.contains("cannot reach peer 'dr'"), "{err}");
    assert_eq!(show(&p, "r")["keep"], before.0["keep"]);
    // What concerns the primary alone needs no peer.
    p.ctl_ok(&["replication", "modify", "r", "--max-rate", "20M"]);
    assert_eq!(show(&p, "r")["max_rate"], 20 * MIB);
    s.restart();
    p.ctl_ok(&[
        "replication",
        "modify",
        "r",
        "--compress",
        "lz4",
        "--keep",
        "3",
    ]);
    assert_eq!(show(&s, "r")["keep"], 3);
    assert_eq!(show(&p, "r")["compress"], "lz4");

    // peer update: a peer that does not exist, nothing to change, a bad rate.
    let (err, _) = p.ctl_refused(&["peer", "update", "nope", "--max-rate", "5M"]);
    assert!(err.contains("no peer named 'nope'"), "{err}");
    let o = p.ctl(&["peer", "update", "dr"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let v = raw(&p, r#"{"cmd":"peer_update","name":"dr","max_rate":"slow"}"#);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("invalid --max-rate 'slow'"),
        "{v}"
    );
    assert_eq!(
        p.ctl_json(&["peer", "list"])["peers"][0]["max_rate"],
        Value::Null
    );
    // And at creation: a bad rate creates nothing.
    let o = p.ctl(&[
        "peer",
        "create",
        "x",
        "127.0.0.1:9",
        "--secret",
        "0123456789abc",
        "--max-rate",
        "fast",
    ]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let v = raw(
        &p,
        r#"{"cmd":"peer_create","name":"x","addr":"127.0.0.1:9","secret":"0123456789abc","max_rate":"fast"}"#,
    );
    assert_eq!(v["code"], "invalid", "{v}");
    assert_eq!(
        p.ctl_json(&["peer", "list"])["peers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
