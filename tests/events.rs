//! `twinlun ctl events` and `serve --log-format json` against the real binary: the
//! event stream of a replication pair (cycles with their figures, a restart, a cycle
//! failed by a cut link and its recovery), of iSCSI logins, logouts and refusals, a
//! stream whose reader goes away, and JSON log lines carrying the session's span.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pair::{create_set_of_v, pair_throttled, wait_converged, wait_cycles, wait_progress};
use common::raw::RawClient;
use common::{bin, qemu_io, require_tool, run, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;
use twinlun::iscsi::pdu::{Digests, LoginResponse};

/// `ctl events --json` running against a server, its lines collected as they come.
struct EventStream {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl EventStream {
    /// Starts the stream and waits for its `subscribed` line: every event after this
    /// returns reaches it.
    fn start(s: &TestServer) -> EventStream {
        let mut child = Command::new(bin())
            .args(["ctl", "--socket"])
            .arg(&s.socket)
            .args(["events", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn twinlun ctl events");
        let out = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("ctl events --json printed non-JSON {line:?}: {e}"));
                sink.lock().unwrap().push(v);
            }
        });
        let stream = EventStream { child, lines };
        stream.wait_for("the subscribed line", |e| e["kind"] == "subscribed");
        stream
    }

    fn all(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for an event `matches` accepts; returns it.
    fn wait_for(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, Duration::from_secs(120), || {
            let all = self.all();
            all.iter()
                .find(|e| matches(e))
                .cloned()
                .ok_or_else(|| format!("{all:?}"))
        })
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of `set` (status changes, cycles, restarts) in the order they came,
/// each as `kind` or `kind:to` for status changes.
fn set_events(events: &[Value], set: &str) -> Vec<Value> {
    events.iter().filter(|e| e["set"] == set).cloned().collect()
}

fn label(e: &Value) -> String {
    match e["kind"].as_str().unwrap() {
        "set_status" => format!("set_status:{}", e["to"].as_str().unwrap()),
        k => k.to_string(),
    }
}

/// Position of the first event at or after `from` that `matches` accepts.
fn find_from(events: &[Value], from: usize, what: &str, matches: impl Fn(&Value) -> bool) -> usize {
    events[from..]
        .iter()
        .position(matches)
        .map(|i| from + i)
        .unwrap_or_else(|| {
            let labels: Vec<String> = events.iter().map(label).collect();
            panic!("no {what} at or after event {from}: {labels:?}\n{events:#?}")
        })
}

#[test]
fn a_cycle_a_restart_and_a_failed_cycle_stream_in_order_with_their_figures() {
    require_tool("qemu-io");
    let (p, _s, proxy) = pair_throttled(0);
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x41 0 8m"]);
    let stream = EventStream::start(&p);
    create_set_of_v(&p, &[]);

    // A first (full) cycle.
    p.ctl_ok(&["replicate", "r"]);
    let first = wait_cycles(&p, "r", 1);
    let cut1 = first["last_cut_id"].as_u64().unwrap();
    stream.wait_for("the first commit", |e| {
        e["kind"] == "cycle_committed" && e["cut"] == cut1
    });

    // Restart Replication: a new generation, everything again.
    p.ctl_ok(&["restart", "r", "--yes"]);
    let second = wait_cycles(&p, "r", 2);
    let cut2 = second["last_cut_id"].as_u64().unwrap();
    stream.wait_for("the commit after the restart", |e| {
        e["kind"] == "cycle_committed" && e["cut"] == cut2
    });

    // An incremental cycle over a slow link, cut midway: it fails, then resumes.
    qemu_io(&url, &["write -P 0x42 0 16m"]);
    proxy.set_rate(2 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_progress(&p, "r", 2 << 20);
    proxy.cut();
    proxy.set_rate(0);
    let done = wait_converged(&p, "r", 3);
    let cut3 = done["last_cut_id"].as_u64().unwrap();
    stream.wait_for("the commit of the resumed cut", |e| {
        e["kind"] == "cycle_committed" && e["cut"] == cut3
    });
    stream.wait_for("ready after the recovery", |e| {
        e["kind"] == "set_status"
            && e["to"] == "ready"
            && e["from"] == "replicating"
            && e["at_unix_ms"].as_u64().is_some()
    });

    let all = set_events(&stream.all(), "r");
    let labels: Vec<String> = all.iter().map(label).collect();
    eprintln!("events of r: {labels:?}");
    for e in &all {
        assert!(e["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000, "{e}");
    }
    // The times never go backwards.
    for w in all.windows(2) {
        assert!(
            w[0]["at_unix_ms"].as_u64() <= w[1]["at_unix_ms"].as_u64(),
            "{w:?}"
        );
    }

    // 1. The first cycle: replicating, started (full, the written 8 MiB), committed
    //    with its figures, ready.
    let i = find_from(&all, 0, "replicating", |e| {
        label(e) == "set_status:replicating"
    });
    let i = find_from(&all, i, "the first cycle's start", |e| {
        e["kind"] == "cycle_started"
    });
    let started = &all[i];
    assert_eq!(started["cut"], cut1, "{started}");
    assert_eq!(started["full"], true, "{started}");
    assert_eq!(started["resumed"], false, "{started}");
    assert_eq!(started["bytes_total"], 8 << 20, "{started}");
    let i = find_from(&all, i, "the first commit", |e| {
        e["kind"] == "cycle_committed"
    });
    let c = &all[i];
    assert_eq!(c["cut"], cut1, "{c}");
    assert_eq!(c["full"], true, "{c}");
    assert_eq!(c["data_bytes"], first["last_cycle"]["data_bytes"], "{c}");
    assert_eq!(c["data_bytes"], 8 << 20, "{c}");
    assert_eq!(c["attempts"], 1, "{c}");
    assert!(c["seconds"].as_f64().unwrap() > 0.0, "{c}");
    let i = find_from(&all, i, "ready", |e| label(e) == "set_status:ready");
    assert_eq!(all[i]["from"], "replicating", "{}", all[i]);

    // 2. The restart: restart, start-replication, replicating, a full cycle, ready.
    let i = find_from(&all, i, "restart", |e| e["kind"] == "restart");
    assert_eq!(
        label(&all[i + 1]),
        "set_status:start-replication",
        "{labels:?}"
    );
    let i = find_from(&all, i, "replicating after the restart", |e| {
        label(e) == "set_status:replicating"
    });
    assert_eq!(all[i]["from"], "start-replication", "{}", all[i]);
    let i = find_from(&all, i, "the restarted cycle", |e| {
        e["kind"] == "cycle_started"
    });
    assert_eq!(all[i]["cut"], cut2, "{}", all[i]);
    assert_eq!(all[i]["full"], true, "{}", all[i]);
    let i = find_from(&all, i, "the restarted commit", |e| {
        e["kind"] == "cycle_committed"
    });
    assert_eq!(all[i]["cut"], cut2, "{}", all[i]);
    assert_eq!(all[i]["data_bytes"], 8 << 20, "{}", all[i]);
    let i = find_from(&all, i, "ready after the restart", |e| {
        label(e) == "set_status:ready"
    });

    // 3. The failed cycle: started, failed with its cut and error text, error, then
    //    the same cut resumed and committed, ready.
    let i = find_from(&all, i, "the incremental start", |e| {
        e["kind"] == "cycle_started"
    });
    assert_eq!(all[i]["cut"], cut3, "{}", all[i]);
    assert_eq!(all[i]["full"], false, "{}", all[i]);
    assert_eq!(all[i]["bytes_total"], 16 << 20, "{}", all[i]);
    let i = find_from(&all, i, "the failure", |e| e["kind"] == "cycle_failed");
    let failed = &all[i];
    assert_eq!(failed["cut"], cut3, "{failed}");
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed["retry_in_secs"].as_u64().is_some(), "{failed}");
    let i = find_from(&all, i, "error", |e| label(e) == "set_status:error");
    assert_eq!(all[i]["error"], failed["error"], "{}", all[i]);
    let i = find_from(&all, i, "the resumed start", |e| {
        e["kind"] == "cycle_started"
    });
    assert_eq!(all[i]["cut"], cut3, "{}", all[i]);
    assert_eq!(all[i]["resumed"], true, "{}", all[i]);
    let i = find_from(&all, i, "the resumed commit", |e| {
        e["kind"] == "cycle_committed"
    });
    let c = &all[i];
    assert_eq!(c["cut"], cut3, "{c}");
    assert!(c["attempts"].as_u64().unwrap() >= 2, "{c}");
    assert_eq!(c["data_bytes"], done["last_cycle"]["data_bytes"], "{c}");
    find_from(&all, i, "ready after the recovery", |e| {
        label(e) == "set_status:ready"
    });
}

/// A login to `target` as `initiator` with no authentication; returns the response
/// (a refusal is a response too).
fn login_once(s: &TestServer, initiator: &str, target: &str) -> LoginResponse {
    let mut c = RawClient::connect(s.addr);
    let text = format!(
        "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0"
    );
    let p = c.login_pdu(0, 1, true, &text);
    c.send(&p);
    LoginResponse::from_pdu(&c.recv().expect("login response")).unwrap()
}

#[test]
fn logins_logouts_and_refusals_stream_with_their_fields() {
    require_tool("qemu-io");
    let s = TestServer::start();
    let stream = EventStream::start(&s);
    let me = "iqn.2026-12.test:events";

    // A session, then its end.
    let mut c = RawClient::connect(s.addr);
    let r = c.login(me, DEMO_IQN, Digests::default());
    let login = stream.wait_for("the login", |e| e["kind"] == "session_login");
    assert_eq!(login["initiator"], me, "{login}");
    assert_eq!(login["target"], DEMO_IQN, "{login}");
    assert_eq!(login["tsih"], r.tsih, "{login}");
    assert_eq!(login["isid"], "80123456789a", "{login}");
    assert_eq!(login["discovery"], false, "{login}");
    assert!(
        login["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{login}"
    );
    drop(c);
    let logout = stream.wait_for("the logout", |e| e["kind"] == "session_logout");
    assert_eq!(logout["initiator"], me, "{logout}");
    assert_eq!(logout["target"], DEMO_IQN, "{logout}");
    assert_eq!(logout["tsih"], r.tsih, "{logout}");

    // A target that does not exist.
    let nope = "iqn.2026-12.test:no-such-target";
    let r = login_once(&s, me, nope);
    assert_eq!((r.status_class, r.status_detail), (2, 3));
    let refused = stream.wait_for("the refusal of a wrong target", |e| {
        e["kind"] == "login_refused" && e["target"] == nope
    });
    assert_eq!(refused["initiator"], me, "{refused}");
    assert_eq!(refused["reason"], "no such target", "{refused}");
    assert_eq!(refused["status_class"], 2, "{refused}");
    assert_eq!(refused["status_detail"], 3, "{refused}");

    // A wrong CHAP secret from a real initiator.
    s.ctl_ok(&[
        "chap",
        "set",
        DEMO_IQN,
        "--user",
        "alice",
        "--secret",
        "the-right-secret",
    ]);
    let url = format!("iscsi://alice%the-wrong-secret@{}/{DEMO_IQN}/0", s.addr);
    let o = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &url]);
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("failed"),
        "a wrong CHAP secret logged in: {o:?}"
    );
    let refused = stream.wait_for("the CHAP refusal", |e| {
        e["kind"] == "login_refused" && e["target"] == DEMO_IQN
    });
    assert_eq!(refused["reason"], "CHAP authentication failed", "{refused}");
    assert_eq!(refused["status_class"], 2, "{refused}");
    assert!(
        !refused["initiator"].as_str().unwrap_or("").is_empty(),
        "{refused}"
    );
    // The secret never travels in an event.
    let all = serde_json::to_string(&stream.all()).unwrap();
    assert!(!all.contains("the-wrong-secret") && !all.contains("the-right-secret"));

    // Snapshots show up too.
    s.ctl_ok(&["snapshot", "create", "before", "--volume", "demo"]);
    let created = stream.wait_for("the snapshot", |e| e["kind"] == "snapshot_created");
    assert_eq!(created["name"], "before", "{created}");
    assert_eq!(created["volumes"], serde_json::json!(["demo"]), "{created}");
    s.ctl_ok(&["snapshot", "delete", "before"]);
    stream.wait_for("the snapshot's deletion", |e| {
        e["kind"] == "snapshot_deleted" && e["name"] == "before"
    });
}

#[test]
fn a_closed_reader_ends_ctl_events_quietly() {
    let s = TestServer::start();

    // As a shell pipeline: `ctl events | head -n 1`, the pipeline's status being
    // ctl's when it fails (pipefail).
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("ctl.err");
    let o = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$0" ctl --socket "$1" events 2>"$2" | head -n 1"#)
        .arg(bin())
        .arg(&s.socket)
        .arg(&err)
        .output()
        .expect("run bash");
    let stderr = std::fs::read_to_string(&err).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}, ctl said: {stderr}");
    assert!(stderr.is_empty(), "ctl said: {stderr}");
    let first: Vec<&str> = stdout.lines().collect();
    assert_eq!(first.len(), 1, "{stdout}");
    let words: Vec<&str> = first[0].split(' ').collect();
    assert_eq!(&words[1..], ["subscribed", "-"], "{stdout}");
    assert!(
        words[0].ends_with('Z') && words[0].contains('T'),
        "{stdout}"
    );

    // The reader closes its end while no event comes: ctl notices at once.
    let mut child = Command::new(bin())
        .args(["ctl", "--socket"])
        .arg(&s.socket)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "subscribed", "{line}");
    drop(out);
    let status = wait_until("ctl events to end", Duration::from_secs(30), || {
        child
            .try_wait()
            .unwrap()
            .ok_or_else(|| "still running".to_string())
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The server lets the stream go and serves on.
    s.ctl_ok(&["status"]);
}

#[test]
fn json_logs_are_json_lines_and_carry_the_session_span_into_spawned_tasks() {
    let s = TestServer::launch()
        .args(&["--log-format", "json"])
        // The per-command line of the spawned task is at debug level.
        .env("RUST_LOG", "info,twinlun::server::ffp=debug")
        .start();
    let me = "iqn.2026-12.test:json-logs";
    let mut c = RawClient::connect(s.addr);
    let r = c.login(me, DEMO_IQN, Digests::default());
    // A READ(10) of one block: it runs in a task of its own.
    let data = c.read10(0, 0, 1, 512);
    assert_eq!(data.len(), 512);
    let line = wait_until(
        "a log line from a command's spawned task",
        Duration::from_secs(30),
        || {
            s.stderr()
                .lines()
                .find(|l| l.contains("task answered"))
                .map(str::to_string)
                .ok_or_else(|| s.stderr())
        },
    );
    drop(c);
    wait_until(
        "the session's end in the log",
        Duration::from_secs(30),
        || {
            if s.stderr().contains("session closed") {
                Ok(())
            } else {
                Err(s.stderr())
            }
        },
    );

    // Every line is one JSON object with a level, a target and fields.
    let log = s.stderr();
    let mut lines = 0;
    for l in log.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["target"].as_str().unwrap().starts_with("twinlun"), "{l}");
        assert!(v["fields"].is_object(), "{l}");
        assert!(v["timestamp"].is_string(), "{l}");
        lines += 1;
    }
    assert!(lines > 3, "{log}");

    // The spawned task's line carries the session span: initiator, target, tsih.
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "DEBUG", "{line}");
    assert_eq!(v["fields"]["message"], "task answered", "{line}");
    let session = v["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sp| sp["name"] == "session")
        .unwrap_or_else(|| panic!("no session span: {line}"));
    assert_eq!(session["initiator"], me, "{line}");
    assert_eq!(session["target"], DEMO_IQN, "{line}");
    assert_eq!(session["tsih"], r.tsih, "{line}");
    // So does the login line, logged outside the session's tasks.
    let login: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "logged in")
        .unwrap_or_else(|| panic!("no login line: {log}"));
    assert_eq!(login["span"]["name"], "session", "{login}");
    assert_eq!(login["span"]["tsih"], r.tsih, "{login}");

    // A bad value in the config names the key and starts nothing.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlog_format = \"xml\"\n").unwrap();
    let data = dir.path().join("data");
    let err = TestServer::try_start_at(&data, &["--config", cfg.to_str().unwrap()])
        .err()
        .expect("a bad log_format is refused");
    assert!(err.contains("server.log_format"), "{err}");
}
