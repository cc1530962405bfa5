//! The real binary: `twinlun serve` on 127.0.0.1:0 in a temp data dir (the shared
//! `TestServer` harness), driven by `twinlun ctl` subprocesses and by raw lines on the
//! admin socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::raw::RawClient;
use common::{bin, ctl_at, TestServer};
use twinlun::iscsi::pdu::{Digests, LoginResponse};

const T: &str = "iqn.2026-11.io.twinlun:test";
const DEMO: &str = "iqn.2026-11.io.twinlun:demo";

#[test]
fn banner_socket_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = TestServer::start_at(&data, &[]);
    assert_eq!(s.addrs.len(), 1);
    let port: u16 = s.addrs[0].rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "the banner shows the bound port");
    assert_eq!(s.socket, data.join("admin.sock"));
    let banner = s.banner.join("\n");
    assert!(
        banner.contains(&format!("iscsi://127.0.0.1:{port}/{DEMO}/0")),
        "{banner}"
    );
    assert!(
        banner.contains("iscsiadm -m discovery -t sendtargets"),
        "{banner}"
    );

    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode");
    let cat_mode = std::fs::metadata(data.join("catalog.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        cat_mode & 0o777,
        0o600,
        "catalog mode (it holds CHAP secrets)"
    );

    let st = s.ctl_json(&["status"]);
    assert_eq!(st["result"], "status");
    assert_eq!(st["volumes"], 1);
    assert_eq!(st["targets"], 1);
    assert_eq!(st["listen"][0], s.addrs[0]);
    let human = s.ctl_ok(&["status"]);
    assert!(
        human.contains("volumes:") && human.contains(&s.addrs[0]),
        "{human}"
    );

    // The default data dir holds the demo volume, sparse.
    let v = s.ctl_json(&["volume", "show", "demo"]);
    assert_eq!(v["size"], 1u64 << 30);
    assert_eq!(v["mappings"][0]["target"], DEMO);

    // A second server on the same data dir is refused.
    let e = TestServer::try_start_at(&data, &[])
        .err()
        .expect("second server must fail");
    assert!(e.contains("in use"), "{e}");

    let st = s.stop_status();
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    assert!(
        !data.join("admin.sock").exists(),
        "socket removed at shutdown"
    );
}

#[test]
fn volumes_targets_luns_acl_chap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = TestServer::start_at(&data, &[]);

    let v = s.ctl_json(&[
        "volume",
        "create",
        "v1",
        "--size",
        "16M",
        "--block-size",
        "4096",
    ]);
    assert_eq!(v["result"], "volume");
    assert_eq!(v["size"], 16 << 20);
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["id"].as_str().unwrap().len(), 16);
    // Files are named by ids, never by names.
    assert_eq!(
        v["path"].as_str().unwrap(),
        format!("volumes/{}.img", v["id"].as_str().unwrap())
    );
    let file = data.join(v["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);

    let list = s.ctl_ok(&["volume", "list"]);
    let header = list.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("SIZE"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("v1 ") && l.contains("16.0 MiB")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("demo ")), "{list}");
    let vols = s.ctl_json(&["volume", "list"]);
    assert_eq!(vols["volumes"].as_array().unwrap().len(), 2);

    s.ctl_json(&["target", "create", T]);
    s.ctl_json(&["lun", "map", T, "0", "v1"]);
    s.ctl_json(&["lun", "map", T, "1", "demo", "--read-only"]);
    s.ctl_json(&["acl", "add", T, "iqn.1994-05.com.redhat:client1"]);
    s.ctl_json(&[
        "chap",
        "set",
        T,
        "--user",
        "alice",
        "--secret",
        "0123456789abcd",
        "--mutual-user",
        "tgt",
        "--mutual-secret",
        "dcba9876543210",
    ]);

    let t = s.ctl_json(&["target", "show", T]);
    assert_eq!(t["luns"][1]["read_only"], true);
    assert_eq!(t["acl"][0], "iqn.1994-05.com.redhat:client1");
    assert_eq!(t["chap"]["user"], "alice");
    let everything = s.ctl_ok(&["--json", "target", "list"])
        + &s.ctl_ok(&["target", "list"])
        + &s.ctl_ok(&["target", "show", T]);
    assert!(
        !everything.contains("0123456789abcd") && !everything.contains("dcba9876543210"),
        "secrets leaked: {everything}"
    );
    assert!(everything.contains("user alice (mutual)"), "{everything}");

    // Refusals: exit 1, a message, a machine code, and nothing changed.
    let before = std::fs::read(data.join("catalog.json")).unwrap();
    let volume_files = || {
        let mut names: Vec<_> = std::fs::read_dir(data.join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let files_before = volume_files();
    let (err, v) = s.ctl_refused(&["volume", "delete", "v1"]);
    assert_eq!(v["code"], "in_use");
    assert!(err.contains(T) && err.contains("LUN 0"), "{err}");
    assert!(file.exists());
    assert_eq!(
        s.ctl_refused(&["volume", "create", "v1", "--size", "1M"]).1["code"],
        "already_exists"
    );
    assert_eq!(
        s.ctl_refused(&["volume", "create", "bad/name", "--size", "1M"])
            .1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&["volume", "create", "odd", "--size", "1000"])
            .1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&[
            "volume",
            "create",
            "bs",
            "--size",
            "1M",
            "--block-size",
            "1024"
        ])
        .1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&["volume", "show", "nope"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["target", "create", "not-an-iqn"]).1["code"],
        "invalid"
    );
    assert_eq!(s.ctl_refused(&["target", "delete", T]).1["code"], "in_use");
    assert_eq!(
        s.ctl_refused(&["lun", "map", T, "0", "demo"]).1["code"],
        "already_exists"
    );
    assert_eq!(
        s.ctl_refused(&["chap", "set", T, "--user", "u", "--secret", ""])
            .1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&["acl", "remove", T, "iqn.2001-04.com.example:nobody"])
            .1["code"],
        "not_found"
    );
    assert_eq!(
        std::fs::read(data.join("catalog.json")).unwrap(),
        before,
        "refusals change nothing"
    );
    assert_eq!(volume_files(), files_before, "refusals create no file");

    // Usage errors are clap's (exit 2), before anything is sent.
    let out = s.ctl(&["volume", "create", "x", "--size", "10X"]);
    assert_eq!(out.status.code(), Some(2));

    // Unwind.
    s.ctl_ok(&["chap", "clear", T]);
    s.ctl_ok(&["acl", "remove", T, "iqn.1994-05.com.redhat:client1"]);
    s.ctl_ok(&["lun", "unmap", T, "0"]);
    s.ctl_ok(&["lun", "unmap", T, "1"]);
    s.ctl_ok(&["volume", "delete", "v1"]);
    assert!(!file.exists(), "volume delete removes the file");
    s.ctl_ok(&["target", "delete", T]);
    let sessions = s.ctl_json(&["session", "list"]);
    assert_eq!(sessions["sessions"], serde_json::json!([]));
    assert!(s.stop_status().success());
}

#[test]
fn restart_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = TestServer::start_at(&data, &[]);
    let id = s.ctl_json(&["volume", "create", "keep", "--size", "8M"])["id"].clone();
    s.ctl_json(&["target", "create", T]);
    s.ctl_json(&["lun", "map", T, "3", "keep"]);
    s.ctl_json(&["acl", "add", T, "iqn.1994-05.com.redhat:client1"]);
    // Secrets can come from stdin, out of sight of `ps`.
    let mut child = Command::new(bin())
        .args([
            "ctl",
            "--socket",
            s.socket.to_str().unwrap(),
            "chap",
            "set",
            T,
            "--user",
            "bob",
        ])
        .args([
            "--secret",
            "-",
            "--mutual-user",
            "tgt",
            "--mutual-secret",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"0123456789ab\nba9876543210\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(data.join("catalog.json")).unwrap()).unwrap();
    assert_eq!(saved["targets"][T]["chap"]["secret"], "0123456789ab");
    assert_eq!(saved["targets"][T]["chap"]["mutual_secret"], "ba9876543210");
    assert!(s.stop_status().success());

    let mut s = TestServer::start_at(&data, &[]);
    let v = s.ctl_json(&["volume", "show", "keep"]);
    assert_eq!(v["id"], id, "volume ids are stable across restarts");
    assert_eq!(v["mappings"][0]["lun"], 3);
    let t = s.ctl_json(&["target", "show", T]);
    assert_eq!(t["acl"][0], "iqn.1994-05.com.redhat:client1");
    assert_eq!(t["chap"]["user"], "bob");
    assert!(
        s.banner.iter().any(|l| l.contains(&format!("/{T}/3"))),
        "{:?}",
        s.banner
    );
    assert!(s.stop_status().success());
}

#[test]
fn bad_lines_get_errors_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_at(&dir.path().join("data"), &[]);
    let mut stream = UnixStream::connect(&s.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ask = |line: &[u8]| -> Value {
        stream.write_all(line).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut resp = String::new();
        reader.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    assert_eq!(ask(b"this is not json")["code"], "bad_request");
    assert_eq!(ask(br#"{"cmd":"frobnicate"}"#)["code"], "unknown_command");
    assert_eq!(ask(br#"{"cmd":"volume_show"}"#)["code"], "bad_request");
    assert_eq!(ask(&vec![b'x'; 100 * 1024])["code"], "too_long");
    // Sizes may be sent as strings on the wire.
    let v = ask(br#"{"cmd":"volume_create","name":"w","size":"1M"}"#);
    assert_eq!(v["size"], 1 << 20);
    assert_eq!(ask(br#"{"cmd":"status"}"#)["result"], "status");
    // EOF without a newline still answers nothing harmful and closes.
    let mut rest = String::new();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
}

#[test]
fn config_declares_objects_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/twinlun.toml");
    let socket = dir.path().join("ctl.sock");
    let mut s = TestServer::start_at(
        &data,
        &[
            "--config",
            example.to_str().unwrap(),
            "--admin-socket",
            socket.to_str().unwrap(),
        ],
    );
    assert_eq!(s.socket, socket);
    assert_ne!(
        s.addrs[0], "127.0.0.1:3260",
        "--listen wins over [server] listen"
    );
    let targets = s.ctl_json(&["target", "list"]);
    let iqns: Vec<&str> = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["iqn"].as_str().unwrap())
        .collect();
    assert_eq!(
        iqns,
        [
            "iqn.2026-11.com.example:db",
            "iqn.2026-11.com.example:scratch"
        ],
        "no demo target with a config"
    );
    // Admin-made objects survive a restart with the same config.
    s.ctl_json(&["volume", "create", "extra", "--size", "1M"]);
    assert!(s.stop_status().success());
    let mut s = TestServer::start_at(
        &data,
        &[
            "--config",
            example.to_str().unwrap(),
            "--admin-socket",
            socket.to_str().unwrap(),
            "--engine",
            "threads",
        ],
    );
    s.ctl_json(&["volume", "show", "extra"]);
    let g = s.ctl_json(&["group", "show", "app"]);
    assert_eq!(g["volumes"], serde_json::json!(["db", "scratch"]));
    assert_eq!(s.ctl_json(&["volume", "show", "db"])["page_size"], 64 << 10);
    assert_eq!(
        s.ctl_json(&["volume", "show", "scratch"])["page_size"],
        4096
    );
    assert_eq!(
        s.ctl_json(&["status"])["engine"],
        "threads",
        "--engine wins over [server] engine"
    );
    assert!(s.stop_status().success());

    // A bad config is an error naming file and key; the server does not start.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[volume]]\nname = \"x\"\nsize = \"1G\"\nsise = 1\n").unwrap();
    let e = TestServer::try_start_at(&data, &["--config", bad.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(
        e.contains("bad.toml: volume[0]: unknown field `sise`"),
        "{e}"
    );
}

#[test]
fn groups_and_page_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = TestServer::start_at(&data, &[]);

    let v = s.ctl_json(&[
        "volume",
        "create",
        "a",
        "--size",
        "8M",
        "--page-size",
        "64K",
    ]);
    assert_eq!(v["page_size"], 64 << 10);
    assert_eq!(v["group"], Value::Null);
    let v = s.ctl_json(&["volume", "create", "b", "--size", "4M"]);
    assert_eq!(v["page_size"], 4096, "4 KiB by default");
    s.ctl_json(&["volume", "create", "c", "--size", "4M", "--page-size", "1M"]);
    let (err, v) = s.ctl_refused(&["volume", "create", "x", "--size", "4M", "--page-size", "2K"]);
    assert_eq!(v["code"], "invalid");
    assert!(err.contains("page size 2048"), "{err}");
    assert_eq!(
        s.ctl_refused(&["volume", "create", "x", "--size", "4M", "--page-size", "2M"])
            .1["code"],
        "invalid"
    );
    let out = s.ctl(&[
        "volume",
        "create",
        "x",
        "--size",
        "4M",
        "--page-size",
        "lots",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unreadable size is a usage error"
    );

    // create, in the order given
    let g = s.ctl_json(&["group", "create", "g", "b", "a"]);
    assert_eq!(g["result"], "group");
    assert_eq!(g["name"], "g");
    assert_eq!(g["volumes"], serde_json::json!(["b", "a"]));
    assert_eq!(g["size"], 12 << 20);
    assert_eq!(g["replication_set"], Value::Null);
    assert_eq!(s.ctl_json(&["volume", "show", "a"])["group"], "g");
    assert_eq!(s.ctl_json(&["status"])["groups"], 1);

    let human = s.ctl_ok(&["volume", "show", "a"]);
    assert!(
        human.contains("page size:") && human.contains("64.0 KiB") && human.contains("group:"),
        "{human}"
    );
    let list = s.ctl_ok(&["volume", "list"]);
    let header = list.lines().next().unwrap();
    assert!(
        header.contains("PAGE") && header.contains("GROUP"),
        "{list}"
    );
    let a_line = list.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(
        a_line.contains("64.0 KiB") && a_line.contains(" g "),
        "{list}"
    );
    let glist = s.ctl_ok(&["group", "list"]);
    assert!(glist.starts_with("GROUP"), "{glist}");
    assert!(
        glist
            .lines()
            .any(|l| l.starts_with("g ") && l.ends_with("b a")),
        "{glist}"
    );
    let gshow = s.ctl_ok(&["group", "show", "g"]);
    assert!(gshow.contains("replication set:"), "{gshow}");

    // refusals: exit 1, a code, and nothing changed
    let before = std::fs::read(data.join("catalog.json")).unwrap();
    let (err, v) = s.ctl_refused(&["group", "create", "h", "c", "a"]);
    assert_eq!(v["code"], "in_use");
    assert!(err.contains("group 'g'"), "{err}");
    assert_eq!(
        s.ctl_refused(&["group", "create", "g", "c"]).1["code"],
        "already_exists"
    );
    assert_eq!(
        s.ctl_refused(&["group", "create", "h", "nope"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["group", "create", "h", "c", "c"]).1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&["group", "create", "h/1", "c"]).1["code"],
        "invalid"
    );
    assert_eq!(
        s.ctl_refused(&["group", "add", "g", "a"]).1["code"],
        "already_exists"
    );
    assert_eq!(
        s.ctl_refused(&["group", "add", "g", "nope"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["group", "add", "nope", "c"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["group", "remove", "g", "c"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["group", "show", "nope"]).1["code"],
        "not_found"
    );
    assert_eq!(
        s.ctl_refused(&["group", "delete", "nope"]).1["code"],
        "not_found"
    );
    let (err, v) = s.ctl_refused(&["volume", "delete", "a"]);
    assert_eq!(v["code"], "in_use");
    assert!(err.contains("group 'g'"), "{err}");
    assert_eq!(
        std::fs::read(data.join("catalog.json")).unwrap(),
        before,
        "refusals change nothing"
    );
    // A group needs a volume: clap says so before anything is sent.
    assert_eq!(s.ctl(&["group", "create", "h"]).status.code(), Some(2));

    // add at the end, remove, and the last volume stays
    let g = s.ctl_json(&["group", "add", "g", "c"]);
    assert_eq!(g["volumes"], serde_json::json!(["b", "a", "c"]));
    let g = s.ctl_json(&["group", "remove", "g", "b"]);
    assert_eq!(g["volumes"], serde_json::json!(["a", "c"]));
    s.ctl_json(&["group", "create", "solo", "b"]);
    let (err, v) = s.ctl_refused(&["group", "remove", "solo", "b"]);
    assert_eq!(v["code"], "in_use");
    assert!(err.contains("group delete solo"), "{err}");
    assert!(s.stop_status().success());

    // Restart: groups, their order and page sizes are kept.
    let mut s = TestServer::start_at(&data, &[]);
    let groups = s.ctl_json(&["group", "list"]);
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g", "solo"]);
    assert_eq!(
        s.ctl_json(&["group", "show", "g"])["volumes"],
        serde_json::json!(["a", "c"])
    );
    assert_eq!(s.ctl_json(&["volume", "show", "a"])["page_size"], 64 << 10);
    assert_eq!(s.ctl_json(&["volume", "show", "c"])["page_size"], 1 << 20);

    let d = s.ctl_json(&["group", "delete", "solo"]);
    assert_eq!(d["result"], "done");
    assert_eq!(s.ctl_json(&["volume", "show", "b"])["group"], Value::Null);
    s.ctl_ok(&["volume", "delete", "b"]);
    assert!(s.stop_status().success());

    // A group in a replication set (set by the replication work; edited in by hand here)
    // keeps its volumes.
    let path = data.join("catalog.json");
    let mut cat: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cat["groups"]["g"]["replication_set"] = "dr1".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&cat).unwrap()).unwrap();
    let mut s = TestServer::start_at(&data, &[]);
    assert_eq!(
        s.ctl_json(&["group", "show", "g"])["replication_set"],
        "dr1"
    );
    let before = std::fs::read(&path).unwrap();
    for args in [
        &["group", "add", "g", "b"][..],
        &["group", "remove", "g", "a"],
        &["group", "delete", "g"],
    ] {
        let (err, v) = s.ctl_refused(args);
        assert_eq!(v["code"], "in_use", "{args:?}");
        assert!(
            err.contains("group 'g' is in replication set 'dr1'"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // Raw lines: sizes as strings, and a missing volume list is a refusal, not a crash.
    let mut stream = UnixStream::connect(&s.socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ask = |line: &str| -> Value {
        stream.write_all(line.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut resp = String::new();
        reader.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    let v = ask(r#"{"cmd":"volume_create","name":"w","size":"1M","page_size":"256K"}"#);
    assert_eq!(v["page_size"], 256 << 10);
    assert_eq!(
        ask(r#"{"cmd":"group_create","name":"z"}"#)["code"],
        "invalid"
    );
    assert_eq!(ask(r#"{"cmd":"group_list","x":1}"#)["code"], "bad_request");
    assert_eq!(
        ask(r#"{"cmd":"group_add","name":"g"}"#)["code"],
        "bad_request"
    );
    assert!(s.stop_status().success());

    // A hand edit that breaks the rules stops the start, naming the file.
    let mut cat: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cat["groups"]["h"] = serde_json::json!({ "volumes": ["a"] });
    std::fs::write(&path, serde_json::to_vec_pretty(&cat).unwrap()).unwrap();
    let e = TestServer::try_start_at(&data, &[]).err().unwrap();
    assert!(
        e.contains("catalog.json: volume 'a' is in two groups, 'g' and 'h'"),
        "{e}"
    );
}

#[test]
fn ctl_without_a_server_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl_at(&dir.path().join("none.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none.sock"), "{err}");
}

#[test]
fn other_users_are_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "other_users_are_refused: NOT EXERCISED: running a client as another uid needs root"
        );
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("admin.sock");
    let s = TestServer::start_at(
        &dir.path().join("data"),
        &["--admin-socket", socket.to_str().unwrap()],
    );
    let as_nobody = || {
        Command::new(bin())
            .args(["ctl", "--socket", socket.to_str().unwrap(), "status"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // Mode 0600 keeps other users from connecting at all, and ctl says so.
    let out = as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("permission denied on the admin socket"),
        "{err}"
    );
    // Even through a socket someone made world-writable, SO_PEERCRED refuses them.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("only root or the server's user"), "{err}");
    // Root still gets in.
    s.ctl_ok(&["status"]);
}

/// Sends the security-stage login PDU and returns the target's (class, detail).
fn first_login_status(addr: &str, initiator: &str, target: &str) -> (u8, u8) {
    let mut c = RawClient::connect(addr.parse().unwrap());
    let text = format!(
        "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0"
    );
    let p = c.login_pdu(0, 1, true, &text);
    c.send(&p);
    let r = LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap();
    (r.status_class, r.status_detail)
}

#[test]
fn admin_changes_reach_the_live_target() {
    const INI: &str = "iqn.1994-05.com.redhat:client1";
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_at(&dir.path().join("data"), &[]);
    let addr = s.addrs[0].clone();

    // A logged-in session shows in `session list` and blocks `target delete`.
    let mut c = RawClient::connect(addr.parse().unwrap());
    c.login(INI, DEMO, Digests::default());
    let sessions = s.ctl_json(&["session", "list"]);
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{sessions}");
    assert_eq!(list[0]["initiator"], INI);
    assert_eq!(list[0]["target"], DEMO);
    assert_eq!(s.ctl_json(&["target", "show", DEMO])["sessions"], 1);
    let human = s.ctl_ok(&["session", "list"]);
    assert!(
        human.starts_with("TARGET") && human.contains(INI),
        "{human}"
    );
    let (err, v) = s.ctl_refused(&["target", "delete", DEMO]);
    assert_eq!(v["code"], "busy");
    assert!(err.contains(INI), "{err}");

    // An ACL added while serving applies to the next login.
    s.ctl_json(&["acl", "add", DEMO, "iqn.2001-04.com.example:other"]);
    let (class, _) = first_login_status(&addr, INI, DEMO);
    assert_eq!(
        class, 2,
        "an initiator outside the ACL is refused (initiator error)"
    );
    assert_eq!(
        first_login_status(&addr, "iqn.2001-04.com.example:other", DEMO),
        (0, 0)
    );
    s.ctl_json(&["acl", "remove", DEMO, "iqn.2001-04.com.example:other"]);
    assert_eq!(
        first_login_status(&addr, INI, DEMO),
        (0, 0),
        "empty ACL: open again"
    );

    // CHAP set while serving is required from the next login on.
    s.ctl_json(&[
        "chap",
        "set",
        DEMO,
        "--user",
        "u",
        "--secret",
        "0123456789ab",
    ]);
    let (class, _) = first_login_status(&addr, INI, DEMO);
    assert_eq!(class, 2, "AuthMethod=None is refused once CHAP is set");
    s.ctl_json(&["chap", "clear", DEMO]);
    assert_eq!(first_login_status(&addr, INI, DEMO), (0, 0));

    // A new target with a new volume is reachable without a restart.
    s.ctl_json(&["volume", "create", "fresh", "--size", "4M"]);
    s.ctl_json(&["target", "create", T]);
    s.ctl_json(&["lun", "map", T, "0", "fresh"]);
    let mut c2 = RawClient::connect(addr.parse().unwrap());
    c2.login(INI, T, Digests::default());
    assert_eq!(
        s.ctl_json(&["session", "list"])["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(c);
    drop(c2);
    assert!(s.stop_status().success());
}
