//! Names are data, never paths. Every way a name reaches the server (`ctl`, a raw
//! admin request, the config file, a peer's replication request) refuses the names
//! that once reached the filesystem (`..` emptied the whole data dir), with a message
//! that says why, and leaves the data dir byte for byte as it was. A data dir written
//! by the release before ids named the folders is served by this one, data intact.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use common::{free_port, qemu_io_read_only, repo_root, run_ok, wait_until, TestServer};
use serde_json::{json, Value};
use twinlun::catalog::PeerSpec;
use twinlun::replication::peer::PeerConn;
use twinlun::replication::tls::Tls;
use twinlun::replication::wire::{Message, RemoteVolume};
use twinlun::replication::ReplicationError;

const SECRET: &str = "names-test-secret-1";

/// The names every entry point must refuse: what reached the filesystem before.
fn bad_names() -> Vec<String> {
    vec![
        "..".into(),
        ".".into(),
        "a/b".into(),
        "../x".into(),
        "a\0b".into(),
        "n".repeat(300),
    ]
}

/// Every file and folder under `dir` with a checksum of each file's bytes (sockets
/// and the lock, which a running server holds, by kind only).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else if kind.is_socket() {
                out.insert(rel, "socket".into());
            } else {
                let mut f = std::fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let (mut crc, mut len) = (0u32, 0u64);
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    len += n as u64;
                }
                out.insert(rel, format!("{len} bytes, crc32c {crc:08x}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// One request on the admin socket, as `ctl` sends it; returns the response.
fn admin(socket: &Path, req: &Value) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{req}: {e}: {line}"))
}

/// The request must be refused as invalid with a message naming the problem.
fn assert_invalid(what: &str, name: &str, r: &Value) {
    assert_eq!(r["result"], "error", "{what} {name:?} was accepted: {r}");
    assert_eq!(r["code"], "invalid", "{what} {name:?}: {r}");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.contains("name") || m.contains("prefix"),
        "{what} {name:?}: {m}"
    );
}

#[test]
fn bad_names_are_refused_everywhere_and_change_nothing() {
    let p_repl = format!("127.0.0.1:{}", free_port());
    let s_repl = format!("127.0.0.1:{}", free_port());
    let mut p = TestServer::start_with(&["--replication-listen", &p_repl]);
    let s = TestServer::start_with(&["--replication-listen", &s_repl]);
    let s_addr = s.repl_addr.unwrap().to_string();
    p.ctl_ok(&["peer", "create", "dr", &s_addr, "--secret", SECRET]);
    s.ctl_ok(&["peer", "create", "prod", &p_repl, "--secret", SECRET]);
    p.ctl_ok(&["volume", "create", "v", "--size", "1M"]);
    p.ctl_ok(&["group", "create", "g", "v"]);
    // The first authenticated contact pins each side's key in the other's catalog:
    // made here, before the data dirs are compared. Each side saves its pin in the
    // background and shows it once saved, so the trees are read after both saves
    // (a save's temporary file must not be caught mid-rename).
    p.ctl_ok(&["peer", "check", "dr"]);
    for (side, server, peer) in [("secondary", &s, "prod"), ("primary", &p, "dr")] {
        wait_until(
            &format!("the {side} to pin its peer's key"),
            std::time::Duration::from_secs(10),
            || match server.ctl_json(&["peer", "show", peer])["pinned_key"].is_string() {
                true => Ok(()),
                false => Err("not pinned".to_string()),
            },
        );
    }
    let (p_before, s_before) = (tree(&p.data_dir), tree(&s.data_dir));

    for name in bad_names() {
        // What `ctl` sends, sent as is (a NUL cannot be a command-line argument).
        let requests = [
            (
                "volume create",
                json!({"cmd": "volume_create", "name": name, "size": "1M"}),
            ),
            (
                "group create",
                json!({"cmd": "group_create", "name": name, "volumes": ["v"]}),
            ),
            (
                "snapshot create",
                json!({"cmd": "snapshot_create", "name": name, "volume": "v"}),
            ),
            (
                "snapshot create",
                json!({"cmd": "snapshot_create", "name": name, "group": "g"}),
            ),
            (
                "replication create",
                json!({"cmd": "replication_create", "name": name, "volume": "v", "peer": "dr"}),
            ),
            (
                "peer create",
                json!({"cmd": "peer_create", "name": name, "addr": s_addr, "secret": SECRET}),
            ),
            // The prefix makes the secondary's volume names.
            (
                "replication create --target-prefix",
                json!({"cmd": "replication_create", "name": "rs", "volume": "v", "peer": "dr", "target_prefix": format!("{name}/")}),
            ),
        ];
        for (what, req) in &requests {
            assert_invalid(what, &name, &admin(&p.socket, req));
        }
        // Through `ctl` too: exit status 1 and the reason on stderr.
        if !name.contains('\0') {
            for args in [
                vec!["volume", "create", &name, "--size", "1M"],
                vec!["group", "create", &name, "v"],
                vec!["snapshot", "create", &name, "--volume", "v"],
                vec![
                    "replication",
                    "create",
                    &name,
                    "--volume",
                    "v",
                    "--peer",
                    "dr",
                ],
            ] {
                let o = p.ctl(&args);
                let err = String::from_utf8_lossy(&o.stderr);
                assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
                assert!(
                    err.contains("invalid") && err.contains("name"),
                    "{args:?}: {err}"
                );
            }
        }
        // Deleting by such a name finds nothing (it never removes a path).
        for (what, req) in [
            (
                "volume delete",
                json!({"cmd": "volume_delete", "name": name}),
            ),
            (
                "replication delete",
                json!({"cmd": "replication_delete", "name": name}),
            ),
            (
                "snapshot delete",
                json!({"cmd": "snapshot_delete", "name": name}),
            ),
        ] {
            let r = admin(&p.socket, &req);
            assert_eq!(r["result"], "error", "{what} {name:?}: {r}");
        }
    }

    // A peer's requests are input like any other: a peer that knows the secret sends
    // the same names for the set, its group and its volumes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let spec = PeerSpec {
            addr: s_addr.clone(),
            secret: SECRET.into(),
            max_rate: None,
            pinned_key: None,
        };
        // The primary's own key, which the secondary pinned.
        let tls = std::sync::Arc::new(Tls::load_or_create(&p.data_dir).unwrap());
        let mut conn = PeerConn::open(&tls, "secondary", &spec).await.unwrap();
        let vol = |name: &str| RemoteVolume {
            name: name.into(),
            size: 1 << 20,
            block_size: 512,
            page_size: None,
        };
        for name in bad_names() {
            for (set, group, volume) in [
                (name.as_str(), None, "ok"),
                ("ok", Some(name.as_str()), "ok"),
                ("ok", None, name.as_str()),
            ] {
                let m = Message::CreateSet {
                    set: set.into(),
                    peer: "prod".into(),
                    group: group.map(str::to_string),
                    volumes: vec![vol(volume)],
                    keep: 1,
                };
                let answer = conn.request(&m).await;
                let Err(ReplicationError::Remote { code, message, .. }) = &answer else {
                    panic!("CreateSet {set:?}/{group:?}/{volume:?}: {answer:?}");
                };
                assert_eq!(code, "refused", "{message}");
                assert!(
                    message.contains("invalid") && message.contains("name"),
                    "{message}"
                );
            }
            let answer = conn
                .request(&Message::DeleteSet { set: name.clone() })
                .await;
            assert!(
                matches!(answer, Err(ReplicationError::Remote { .. })),
                "{answer:?}"
            );
        }
    });

    assert_eq!(
        tree(&p.data_dir),
        p_before,
        "the primary's data dir changed"
    );
    assert_eq!(
        tree(&s.data_dir),
        s_before,
        "the secondary's data dir changed"
    );

    // The config file: the server refuses to start, names the key, and writes nothing.
    p.stop();
    let before = tree(&p.data_dir);
    let dir = tempfile::tempdir().unwrap();
    for name in bad_names() {
        let quoted = serde_json::to_string(&name).unwrap(); // a valid TOML basic string
        for (text, key) in [
            (format!("[[volume]]\nname = {quoted}\nsize = \"1M\"\n"), "volume[0].name"),
            (
                format!("[[volume]]\nname = \"v\"\nsize = \"1M\"\n[[group]]\nname = {quoted}\nvolumes = [\"v\"]\n"),
                "group[0].name",
            ),
        ] {
            let cfg = dir.path().join("c.toml");
            std::fs::write(&cfg, &text).unwrap();
            let err = match TestServer::try_start_at(&p.data_dir, &["--config", cfg.to_str().unwrap()]) {
                Ok(_) => panic!("started with {text}"),
                Err(e) => e,
            };
            assert!(err.contains(key) && err.contains("c.toml"), "{key}: {err}");
        }
    }
    assert_eq!(
        tree(&p.data_dir),
        before,
        "a refused config changed the data dir"
    );
}

/// A qemu-io read through the server's iSCSI portal must find `pattern` there.
fn read_pattern(s: &TestServer, iqn: &str, lun: u64, pattern: u8, off: &str, len: &str) {
    qemu_io_read_only(
        &s.url(iqn, lun),
        &[format!("read -P {pattern:#x} {off} {len}")],
    );
}

/// Data dirs made by the release before (commit 6a077dc, tests/fixtures/make-datadir-v0.sh):
/// a primary with volumes a, b (group g, snapshot s1, set rs with two cycles done and
/// one write not yet shipped) and weird.name-1, and its secondary.
#[test]
fn an_old_data_dir_is_served_with_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = repo_root().join("tests/fixtures/datadir-v0.tar.gz");
    run_ok(
        "tar",
        &[
            "-C",
            tmp.path().to_str().unwrap(),
            "-xzf",
            fixture.to_str().unwrap(),
        ],
    );
    // The fixture's peers name ports of the machine that made it: point them here.
    let (p_repl, s_repl) = (free_port(), free_port());
    for (side, peer, port) in [("p", "dr", s_repl), ("s", "prod", p_repl)] {
        let path = tmp.path().join(side).join("catalog.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["peers"][peer]["addr"] = json!(format!("127.0.0.1:{port}"));
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }
    let p = TestServer::start_at(
        &tmp.path().join("p"),
        &["--replication-listen", &format!("127.0.0.1:{p_repl}")],
    );
    let s = TestServer::start_at(
        &tmp.path().join("s"),
        &["--replication-listen", &format!("127.0.0.1:{s_repl}")],
    );

    // The folders moved to their ids, once.
    for (srv, vols) in [
        (&p, &["a", "b", "demo", "weird.name-1"][..]),
        (&s, &["a", "b", "demo"][..]),
    ] {
        for v in vols {
            assert!(srv.tracking_dir(v).is_dir(), "{v}");
            assert!(!srv.data_path(&format!("tracking/{v}")).exists(), "{v}");
        }
        assert!(!srv.data_path("replication/rs").exists());
        assert_eq!(
            std::fs::read_dir(srv.data_path("replication"))
                .unwrap()
                .count(),
            1
        );
    }

    // Every volume's data, through iSCSI.
    const IQN: &str = "iqn.2026-11.io.twinlun:fixture";
    read_pattern(&p, IQN, 0, 0x11, "0", "64k");
    read_pattern(&p, IQN, 0, 0x33, "64k", "64k");
    read_pattern(&p, IQN, 0, 0x44, "2M", "4k");
    read_pattern(&p, IQN, 0, 0x55, "3M", "4k");
    read_pattern(&p, IQN, 0, 0, "128k", "1M");
    read_pattern(&p, IQN, 1, 0x22, "1M", "128k");
    read_pattern(&p, IQN, 2, 0x66, "4k", "8k");

    // The snapshot kept the old content (64k..128k was written after it).
    p.ctl_ok(&["lun", "map", IQN, "3", "a@s1"]);
    read_pattern(&p, IQN, 3, 0x11, "0", "64k");
    read_pattern(&p, IQN, 3, 0, "64k", "64k");

    // Write tracking carried over: the write made after the last cycle is still dirty.
    assert!(p.volume_view("a")["dirty_pages"].as_u64().unwrap() >= 1);

    // The secondary still has the set's cuts, and replication goes on from
    // the cut it holds: the next cycle is incremental and the copies end equal.
    let points: Value =
        serde_json::from_str(&s.ctl_ok(&["--json", "recovery-points", "rs"])).unwrap();
    let cuts: Vec<u64> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cut_id"].as_u64().unwrap())
        .collect();
    // The cut it is at (3) and the recovery point of the cut before (2).
    assert_eq!(cuts, [3, 2], "{points}");
    let before =
        serde_json::from_str::<Value>(&p.ctl_ok(&["--json", "replication", "show", "rs"])).unwrap();
    p.ctl_ok(&["replicate", "rs"]);
    let after = wait_until("a cycle of rs", std::time::Duration::from_secs(60), || {
        let v: Value =
            serde_json::from_str(&p.ctl_ok(&["--json", "replication", "show", "rs"])).unwrap();
        assert!(v["error"].is_null(), "{v}");
        if v["cycles"].as_u64() > before["cycles"].as_u64() && v["status"] == "ready" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(after["last_cycle"]["full"], false, "{after}");
    for v in ["a", "b"] {
        assert!(
            std::fs::read(p.volume_file(v)).unwrap() == std::fs::read(s.volume_file(v)).unwrap(),
            "{v} differs between the sides"
        );
    }
}
