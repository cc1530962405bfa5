//! `ctl config export`: a node built with `ctl` (every object kind, both sides of a
//! replication pair) is exported, and a fresh node served with that file on an empty
//! data dir lists the same objects. Secrets stay out of an export made without
//! `--with-secrets`, and `serve` refuses such a file, naming the masked key.

mod common;

use std::path::Path;

use common::pair::{pair, SECRET};
use common::TestServer;
use serde_json::{json, Value};

const CHAP_SECRET: &str = "chap-secret-a1";
const MUTUAL_SECRET: &str = "mutual-secret-a1";
const CHAP_SECRET_B: &str = "chap-secret-b2";
const SPARE_SECRET: &str = "spare-peer-secret-3";
const TARGET_A: &str = "iqn.2026-11.test:export-a";
const TARGET_B: &str = "iqn.2026-11.test:export-b";

/// Drops `fields` from every object of the array `v[key]`.
fn without(mut v: Value, key: &str, fields: &[&str]) -> Value {
    assert!(v[key].is_array(), "no list '{key}' in {v}");
    let list = v[key].as_array_mut().expect("checked above");
    for item in list.iter_mut() {
        let obj = item.as_object_mut().expect("a listed object");
        for f in fields {
            obj.remove(*f);
        }
    }
    v[key].take()
}

/// Every `ctl --json` listing, without what belongs to this run rather than to the
/// configuration: volume ids and files, allocation and dirty pages, sessions, and a
/// set's runtime state (status, generation, cuts, cycles, progress, events).
fn listings(s: &TestServer) -> Value {
    json!({
        "volumes": without(s.ctl_json(&["volume", "list"]), "volumes",
            &["id", "path", "allocated", "dirty_pages"]),
        "groups": without(s.ctl_json(&["group", "list"]), "groups", &[]),
        "targets (LUNs, ACLs, CHAP users)": without(s.ctl_json(&["target", "list"]), "targets",
            &["sessions"]),
        "peers": without(s.ctl_json(&["peer", "list"]), "peers", &[]),
        "replication sets": without(s.ctl_json(&["replication", "list"]), "replications",
            &["status", "generation", "last_cut_id", "last_cut_time", "lag_secs", "progress",
              "last_cycle", "cycles", "queued", "error", "next_retry", "events"]),
        "schedules": without(s.ctl_json(&["schedule", "list"]), "schedules", &[]),
    })
}

fn export(s: &TestServer, with_secrets: bool) -> String {
    let mut args = vec!["config", "export"];
    if with_secrets {
        args.push("--with-secrets");
    }
    s.ctl_ok(&args)
}

/// Serves `file` on a new, empty data dir under `dir`.
fn serve_config(dir: &Path, name: &str, file: &str) -> TestServer {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, file).unwrap();
    TestServer::start_at(&dir.join(name), &["--config", config.to_str().unwrap()])
}

fn assert_same(what: &str, built: &Value, rebuilt: &Value, file: &str) {
    for (key, want) in built.as_object().unwrap() {
        assert_eq!(
            &rebuilt[key], want,
            "{what}: '{key}' differs after the round trip through\n{file}"
        );
    }
}

/// Builds every kind of object with `ctl` on the primary of a pair, and sets (with
/// the volumes they create) on its secondary.
fn build(p: &TestServer, s: &TestServer) {
    for (name, size, extra) in [
        (
            "db",
            "64M",
            &["--block-size", "4096", "--page-size", "64K"][..],
        ),
        ("logs", "32M", &[][..]),
        ("solo", "16M", &["--page-size", "1M"][..]),
        ("scratch", "8M", &["--block-size", "4096"][..]),
    ] {
        let mut args = vec!["volume", "create", name, "--size", size];
        args.extend_from_slice(extra);
        p.ctl_ok(&args);
    }
    p.ctl_ok(&["group", "create", "app", "logs", "db"]);
    for t in [TARGET_A, TARGET_B] {
        p.ctl_ok(&["target", "create", t]);
    }
    p.ctl_ok(&["lun", "map", TARGET_A, "0", "db"]);
    p.ctl_ok(&["lun", "map", TARGET_A, "7", "solo", "--read-only"]);
    p.ctl_ok(&["lun", "map", TARGET_B, "0", "scratch"]);
    p.ctl_ok(&["lun", "map", TARGET_B, "1", "logs", "--read-only"]);
    p.ctl_ok(&["acl", "add", TARGET_A, "iqn.1994-05.com.redhat:client1"]);
    p.ctl_ok(&["acl", "add", TARGET_A, "iqn.1994-05.com.redhat:client2"]);
    p.ctl_ok(&[
        "chap",
        "set",
        TARGET_A,
        "--user",
        "client1",
        "--secret",
        CHAP_SECRET,
        "--mutual-user",
        "target-a",
        "--mutual-secret",
        MUTUAL_SECRET,
    ]);
    p.ctl_ok(&[
        "chap",
        "set",
        TARGET_B,
        "--user",
        "client2",
        "--secret",
        CHAP_SECRET_B,
    ]);
    p.ctl_ok(&[
        "peer",
        "create",
        "spare",
        "127.0.0.1:1",
        "--secret",
        SPARE_SECRET,
        "--max-rate",
        "1.5G",
    ]);
    p.ctl_ok(&["peer", "update", "dr", "--max-rate", "200M"]);
    p.ctl_ok(&[
        "replication",
        "create",
        "app-dr",
        "--group",
        "app",
        "--peer",
        "dr",
        "--every",
        "1h",
        "--queue-policy",
        "discard",
        "--keep",
        "3",
        "--compress",
        "zstd",
        "--target-prefix",
        "dr-",
        "--max-rate",
        "50M",
    ]);
    p.ctl_ok(&[
        "replication",
        "create",
        "solo-dr",
        "--volume",
        "solo",
        "--peer",
        "dr",
        "--keep",
        "5",
        "--compress",
        "lz4",
    ]);
    p.ctl_ok(&[
        "schedule",
        "add",
        "nightly",
        "--set",
        "solo-dr",
        "--start",
        "2030-01-01T02:00:00Z",
        "--every",
        "1d",
    ]);
    p.ctl_ok(&[
        "schedule",
        "add",
        "once",
        "--set",
        "app-dr",
        "--start",
        "2031-06-01T00:30:00Z",
    ]);
    // The secondary: a read-only LUN of a replicated volume, and a target of its own.
    s.ctl_ok(&["target", "create", TARGET_A]);
    s.ctl_ok(&["lun", "map", TARGET_A, "3", "dr-db", "--read-only"]);
}

#[test]
fn an_exported_pair_rebuilds_with_the_same_listings() {
    let (p, mut s) = pair();
    build(&p, &s);
    let dir = tempfile::tempdir().unwrap();

    // Without --with-secrets: no secret in the file, and serve refuses it by key,
    // leaving the data dir as it was (not even created).
    let masked = export(&p, false);
    for secret in [
        CHAP_SECRET,
        MUTUAL_SECRET,
        CHAP_SECRET_B,
        SECRET,
        SPARE_SECRET,
    ] {
        assert!(
            !masked.contains(secret),
            "'{secret}' in the masked export:\n{masked}"
        );
    }
    let config = dir.path().join("masked.toml");
    std::fs::write(&config, &masked).unwrap();
    let refused_dir = dir.path().join("refused");
    let e = TestServer::try_start_at(&refused_dir, &["--config", config.to_str().unwrap()])
        .err()
        .expect("a masked export must be refused");
    assert!(
        e.contains("masked.toml: target[1].chap.secret: the secret was masked"),
        "{e}"
    );
    assert!(
        !refused_dir.exists(),
        "a refused start created {}",
        refused_dir.display()
    );
    // The secondary's export masks its peer secret too.
    assert!(!export(&s, false).contains(SECRET));

    // Each side pinned the other's TLS key at first contact (the listener in the
    // background): the exports carry the pins, so a rebuilt node keeps trusting
    // only those keys.
    for (node, peer) in [(&p, "dr"), (&s, "prod")] {
        common::wait_until(
            "the peer's key pinned",
            std::time::Duration::from_secs(10),
            || {
                let v = node.ctl_json(&["peer", "show", peer]);
                match v["pinned_key"].as_str() {
                    Some(k) if k.starts_with("sha256:") => Ok(()),
                    _ => Err(v.to_string()),
                }
            },
        );
    }

    // With secrets: both sides rebuild. The secondary is exported first and stopped,
    // so the rebuilt primary, whose peer is that secondary, cannot talk to it.
    let primary_file = export(&p, true);
    let secondary_file = export(&s, true);
    let (built_p, built_s) = (listings(&p), listings(&s));
    assert_eq!(
        built_s["replication sets"].as_array().unwrap().len(),
        2,
        "{built_s}"
    );
    for (file, node) in [(&primary_file, &s), (&secondary_file, &p)] {
        let key = node.ctl_json(&["status"])["tls_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(file.contains(&format!("pinned_key = \"{key}\"")), "{file}");
    }
    s.stop();

    let rebuilt_p = serve_config(dir.path(), "primary", &primary_file);
    assert_same("primary", &built_p, &listings(&rebuilt_p), &primary_file);
    let rebuilt_s = serve_config(dir.path(), "secondary", &secondary_file);
    assert_same(
        "secondary",
        &built_s,
        &listings(&rebuilt_s),
        &secondary_file,
    );

    // The rebuilt node exports the same file again (its header included).
    assert_eq!(export(&rebuilt_p, true), primary_file);
    // And a restart with the same file changes nothing.
    let mut rebuilt_p = rebuilt_p;
    rebuilt_p.restart();
    assert_same(
        "primary after a restart",
        &built_p,
        &listings(&rebuilt_p),
        &primary_file,
    );
}
