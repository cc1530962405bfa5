//! `twinlun ctl` as admins script it (issue 14), against the real binary and real
//! servers: exit statuses (`peer check` among them), a reader that closes the pipe,
//! `watch --json`, `--until-ready` and `--timeout`, error messages that carry their
//! causes once, where ctl finds the admin socket and what it says when it cannot,
//! human units in tables and raw numbers in `--json`, `status`'s replication lines, and
//! a start refused for a port in use that leaves no data dir behind.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{bin, free_port, wait_until, TestServer};

const SECRET: &str = "ctl-test-secret-1";

/// A primary and a secondary naming each other (`dr` on the primary, `prod` on the
/// secondary), and a replication set `r` of the primary's 8 MiB volume `v` run every
/// 5 minutes.
fn pair_with_set() -> (TestServer, TestServer) {
    let p = TestServer::start_with(&["--replication-listen", "127.0.0.1:0"]);
    let s = TestServer::start_with(&["--replication-listen", "127.0.0.1:0"]);
    let p_repl = p
        .repl_addr
        .expect("primary replication address")
        .to_string();
    let s_repl = s
        .repl_addr
        .expect("secondary replication address")
        .to_string();
    p.ctl_ok(&["peer", "create", "dr", &s_repl, "--secret", SECRET]);
    s.ctl_ok(&["peer", "create", "prod", &p_repl, "--secret", SECRET]);
    p.ctl_ok(&["volume", "create", "v", "--size", "8M"]);
    p.ctl_ok(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
        "--every",
        "5m",
    ]);
    (p, s)
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `twinlun ctl ARGS...` with `TWINLUN_SOCKET` set to `env` (or unset), run in `cwd`.
fn ctl_env(args: &[&str], env: Option<&Path>, cwd: &Path) -> Output {
    let mut c = Command::new(bin());
    c.arg("ctl")
        .args(args)
        .env_remove("TWINLUN_SOCKET")
        .current_dir(cwd)
        .stdin(Stdio::null());
    if let Some(socket) = env {
        c.env("TWINLUN_SOCKET", socket);
    }
    c.output().expect("run twinlun ctl")
}

/// Kills a child left running when a test fails, so no process outlives it.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What an exited child wrote on its piped stdout and stderr.
fn outputs(child: &mut Reap) -> (String, String) {
    let read = |pipe: Option<&mut dyn Read>| {
        let mut text = String::new();
        if let Some(p) = pipe {
            p.read_to_string(&mut text)
                .expect("read the child's output");
        }
        text
    };
    let out = read(child.0.stdout.as_mut().map(|p| p as &mut dyn Read));
    let err = read(child.0.stderr.as_mut().map(|p| p as &mut dyn Read));
    (out, err)
}

/// Waits for `child` to exit within `within` (failing, and killing it, past that).
fn exit_within(child: &mut Reap, within: Duration, what: &str) -> ExitStatus {
    wait_until(what, within, || match child.0.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err("still running".into()),
        Err(e) => panic!("waiting for {what}: {e}"),
    })
}

#[test]
fn peer_check_exits_non_zero_unless_the_peer_can_be_used() {
    let (p, s) = pair_with_set();
    let o = p.ctl(&["peer", "check", "dr"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains("authenticated:    yes"), "{o:?}");

    // The wrong secret: the check's table on stdout, the reason on stderr, status 1.
    let s_repl = s.repl_addr.unwrap().to_string();
    p.ctl_ok(&[
        "peer",
        "create",
        "wrong",
        &s_repl,
        "--secret",
        "not-the-right-one",
    ]);
    let o = p.ctl(&["peer", "check", "wrong"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(stdout_of(&o).contains("authenticated:    no"), "{o:?}");
    // With --json the answer is on stdout, whole, and the status is still 1.
    let o = p.ctl(&["--json", "peer", "check", "wrong"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("the check's JSON");
    assert_eq!(
        (v["reachable"].as_bool(), v["authenticated"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );

    // Unreachable: our words, then the OS's, once.
    let gone = format!("127.0.0.1:{}", free_port());
    p.ctl_ok(&["peer", "create", "gone", &gone, "--secret", SECRET]);
    let o = p.ctl(&["peer", "check", "gone"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "twinlun ctl: cannot reach peer 'gone' at {gone}: {}",
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED)
        )
    );

    // Something that is not a replication listener (the secondary's iSCSI portal):
    // the cause follows "talking to peer", and what the address should have been.
    let portal = s.addr.to_string();
    p.ctl_ok(&["peer", "create", "portal", &portal, "--secret", SECRET]);
    let o = p.ctl(&["peer", "check", "portal"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("twinlun ctl: talking to peer 'portal': ")
            && err
                .trim_end()
                .ends_with(&format!("(is {portal} a twinlun replication listener?)")),
        "{err}"
    );
    // A refusal is 1, a usage error 2, no server 3.
    assert_eq!(p.ctl(&["peer", "check", "nope"]).status.code(), Some(1));
    assert_eq!(p.ctl(&["peer", "check"]).status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let o = common::ctl_at(&dir.path().join("none.sock"), &["peer", "check", "dr"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr_of(&o));
}

#[test]
fn a_reader_that_closes_the_pipe_ends_ctl_quietly() {
    let (p, _s) = pair_with_set();
    // The case as typed: `ctl watch r | head -n 1`. The set does not change, so ctl
    // prints nothing more: it must notice the closed pipe without writing.
    let script = format!(
        "set -o pipefail; '{}' ctl --socket '{}' watch r | head -n 1",
        bin(),
        p.socket.display()
    );
    let mut child = Reap(
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash"),
    );
    let status = exit_within(
        &mut child,
        Duration::from_secs(30),
        "ctl watch r | head -n 1",
    );
    let (out, err) = outputs(&mut child);
    assert!(
        status.success(),
        "ctl's status in the pipeline: {status}; stderr: {err}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(err, "", "nothing on stderr, no panic");

    // Every other print path, into a pipe whose reader is already gone: nothing on
    // stderr, and the command's own status (0 done, 1 refused).
    let cases: [(&[&str], i32); 7] = [
        (&["status"], 0),
        (&["--json", "status"], 0),
        (&["volume", "list"], 0),
        (&["replication", "show", "r"], 0),
        (&["--json", "watch", "r"], 0),
        (&["--json", "replication", "show", "nope"], 1),
        (&["--json", "peer", "check", "dr"], 0),
    ];
    for (args, code) in cases {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut child = Reap(
            Command::new(bin())
                .arg("ctl")
                .arg("--socket")
                .arg(&p.socket)
                .args(args)
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(Stdio::piped())
                .spawn()
                .expect("ctl"),
        );
        let status = exit_within(
            &mut child,
            Duration::from_secs(30),
            "ctl into a closed pipe",
        );
        let (_, err) = outputs(&mut child);
        assert_eq!(status.code(), Some(code), "{args:?}: {err}");
        if code == 0 {
            assert_eq!(err, "", "{args:?}");
        } else {
            assert!(
                err.starts_with("twinlun ctl: no replication set named 'nope'"),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn watch_honours_json_until_ready_and_timeout() {
    let (p, mut s) = pair_with_set();
    p.ctl_ok(&["replicate", "r"]);
    let o = p.ctl(&["--json", "watch", "r", "--until-ready", "--timeout", "2m"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let lines: Vec<Value> = stdout_of(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for v in &lines {
        assert_eq!(
            (v["result"].as_str(), v["name"].as_str()),
            (Some("replication"), Some("r"))
        );
    }
    assert_eq!(lines.last().unwrap()["status"], "ready");

    // A set that does not get ready (suspended) until --timeout: status 4 and why.
    p.ctl_ok(&["suspend", "r"]);
    let o = p.ctl(&["watch", "r", "--until-ready", "--timeout", "1s"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(
        err.trim_end(),
        "twinlun ctl: watch: gave up after 1s: replication set 'r' is suspended, not ready"
    );
    assert!(stdout_of(&o).contains("suspended"), "{o:?}");
    p.ctl_ok(&["resume", "r"]);

    // A set in error: --until-ready ends with status 1 and the set's reason.
    s.stop();
    p.ctl_ok(&["replicate", "r"]);
    wait_until("the set to fail its cycle", Duration::from_secs(60), || {
        let v = p.ctl_json(&["replication", "show", "r"]);
        if v["status"] == "error" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    let o = p.ctl(&["watch", "r", "--until-ready", "--timeout", "2m"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("twinlun ctl: replication set 'r' is in error: ")
            && err.contains("cannot reach peer 'dr'"),
        "{err}"
    );
    // A set that does not exist: refused, 1.
    let o = p.ctl(&["watch", "nope"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
}

#[test]
fn errors_say_each_cause_once_innermost_last() {
    let (p, s) = pair_with_set();
    p.ctl_ok(&["replicate", "r"]);
    p.ctl_ok(&["watch", "r", "--until-ready", "--timeout", "2m"]);
    let o = s.ctl(&["promote", "--volume", "v", "--recovery-point", "99"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "twinlun ctl: recovery store of set 'r': no recovery point for cut 99"
    );
    // And the JSON answer carries the same message.
    let (_, v) = s.ctl_refused(&["promote", "--volume", "v", "--recovery-point", "99"]);
    assert_eq!(
        v["message"],
        "recovery store of set 'r': no recovery point for cut 99"
    );
    assert_eq!(v["code"], "not_found");
}

#[test]
fn a_start_refused_for_a_port_in_use_creates_nothing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let in_use = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    let dir = tempfile::tempdir().unwrap();
    for (flag, said) in [
        (
            "--listen",
            format!("cannot listen on {busy_addr}: {in_use}"),
        ),
        (
            "--replication-listen",
            format!("cannot listen for replication on {busy_addr}: {in_use}"),
        ),
        (
            "--metrics-listen",
            format!("cannot listen for metrics on {busy_addr}: {in_use}"),
        ),
    ] {
        let fresh = dir.path().join(format!("fresh{flag}"));
        let e = TestServer::try_start_at(&fresh, &[flag, &busy_addr])
            .err()
            .unwrap_or_else(|| panic!("serve {flag} {busy_addr} started on a port in use"));
        assert!(e.contains(&format!("twinlun: error: {said}\n")), "{e}");
        assert_eq!(e.matches(&in_use).count(), 1, "the OS's words once: {e}");
        assert!(!fresh.exists(), "{} was created", fresh.display());
    }
    // An existing, empty data dir stays empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = TestServer::try_start_at(&empty, &["--listen", &busy_addr]).err();
    assert!(e.is_some(), "started on a port in use");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn the_socket_comes_from_the_flag_the_config_or_the_environment() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let socket = s.socket.canonicalize().unwrap();
    let sock = socket.to_str().unwrap();
    let ok = |o: &Output| {
        assert_eq!(o.status.code(), Some(0), "{}", stderr_of(o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
        assert_eq!(v["result"], "status");
    };
    let bogus = cwd.join("bogus.sock");

    // TWINLUN_SOCKET alone.
    ok(&ctl_env(&["--json", "status"], Some(&socket), cwd));
    // --config: its admin_socket, else its data_dir's admin.sock.
    let by_socket = cwd.join("by-socket.toml");
    std::fs::write(&by_socket, format!("[server]\nadmin_socket = \"{sock}\"\n")).unwrap();
    let data = s.data_dir.canonicalize().unwrap();
    let by_data_dir = cwd.join("by-data-dir.toml");
    std::fs::write(
        &by_data_dir,
        format!("[server]\ndata_dir = \"{}\"\n", data.display()),
    )
    .unwrap();
    for cfg in [&by_socket, &by_data_dir] {
        let cfg = cfg.to_str().unwrap();
        // The flag wins over the environment.
        ok(&ctl_env(
            &["--json", "--config", cfg, "status"],
            Some(&bogus),
            cwd,
        ));
    }
    ok(&ctl_env(
        &["--json", "--socket", sock, "status"],
        Some(&bogus),
        cwd,
    ));
    // --socket wins over --config.
    let cfg = by_data_dir.to_str().unwrap();
    let o = ctl_env(
        &[
            "--socket",
            bogus.to_str().unwrap(),
            "--config",
            cfg,
            "status",
        ],
        None,
        cwd,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr_of(&o));

    // What is wrong with the path, said as such (status 3).
    let fails = |args: &[&str], env: Option<&Path>, says: &str| {
        let o = ctl_env(args, env, cwd);
        let err = stderr_of(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("twinlun ctl: {says}")),
            "{args:?}: {err}"
        );
    };
    fails(
        &["status"],
        None,
        "no admin socket at ./twinlun-data/admin.sock (is `twinlun serve` running",
    );
    fails(
        &["status"],
        Some(&bogus),
        &format!("no admin socket at {}", bogus.display()),
    );
    fails(
        &["status"],
        Some(&data),
        &format!("{} is a directory, not the admin socket", data.display()),
    );
    let catalog = data.join("catalog.json");
    fails(
        &["--socket", catalog.to_str().unwrap(), "status"],
        None,
        &format!("{} is not a socket", catalog.display()),
    );
    // A config that does not load: its error, as a usage error (2).
    let broken = cwd.join("broken.toml");
    std::fs::write(&broken, "[server]\nno_such_key = 1\n").unwrap();
    let o = ctl_env(&["--config", broken.to_str().unwrap(), "status"], None, cwd);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn tables_use_human_units_json_raw_numbers_and_status_shows_replication() {
    let (p, s) = pair_with_set();
    let repl = p.repl_addr.unwrap().to_string();
    let s_repl = s.repl_addr.unwrap().to_string();
    p.ctl_ok(&["replicate", "r"]);
    p.ctl_ok(&["watch", "r", "--until-ready", "--timeout", "2m"]);
    p.ctl_ok(&["snapshot", "create", "before", "--volume", "v"]);

    let line = |text: &str, key: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no line '{key}' in:\n{text}"))
            .to_string()
    };
    // Human units in tables, raw numbers in JSON.
    let show = p.ctl_ok(&["replication", "show", "r"]);
    assert_eq!(line(&show, "every:"), "every:         5m", "{show}");
    assert_eq!(p.ctl_json(&["replication", "show", "r"])["every_secs"], 300);
    let list = p.ctl_ok(&["volume", "list"]);
    assert!(line(&list, "v ").contains(" 8.0 MiB "), "{list}");
    assert_eq!(p.ctl_json(&["volume", "show", "v"])["size"], 8 << 20);
    let status = p.ctl_ok(&["status"]);
    let uptime = line(&status, "uptime:");
    let value = uptime.trim_start_matches("uptime:").trim();
    assert!(
        value.ends_with('s') || value.ends_with('m'),
        "uptime in human units: {status}"
    );
    assert!(p.ctl_json(&["status"])["uptime_secs"].is_u64());

    // status: the replication listener, peers, sets and snapshots, a line each.
    assert_eq!(
        line(&status, "replication listen:"),
        format!("replication listen: {repl}")
    );
    assert_eq!(line(&status, "peers:"), "peers:              1", "{status}");
    assert_eq!(line(&status, "  dr "), format!("  dr {s_repl} (sets r)"));
    assert_eq!(line(&status, "replication sets:"), "replication sets:   1");
    assert!(
        line(&status, "  r ").starts_with("  r primary, ready, peer dr, last cut 1, lag "),
        "{status}"
    );
    assert_eq!(line(&status, "snapshots:"), "snapshots:          1");
    assert!(
        line(&status, "  before ").starts_with("  before of volume v, cut 2, "),
        "{status}"
    );
    let st = p.ctl_json(&["status"]);
    assert_eq!(st["replication_listen"], repl.as_str());
    assert_eq!(st["peers"][0]["name"], "dr");
    assert_eq!(st["replications"][0]["name"], "r");
    assert_eq!(st["replications"][0]["status"], "ready");
    assert_eq!(st["snapshots"][0]["name"], "before");
    let secondary = s.ctl_ok(&["status"]);
    assert!(
        line(&secondary, "  r ").starts_with("  r secondary, ready, peer prod"),
        "{secondary}"
    );

    // Sizes with a decimal point: taken when they are whole bytes, else said so.
    let v = p.ctl_json(&["volume", "create", "big", "--size", "1.5G"]);
    assert_eq!(v["size"], 1536u64 << 20);
    let o = p.ctl(&["volume", "create", "odd", "--size", "1.3K"]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid size '1.3K': not a whole number of bytes"),
        "{err}"
    );
    assert!(!err.contains("unknown unit"), "{err}");
    // A whole number of bytes that is not a whole number of blocks: the server says so.
    let (err, _) = p.ctl_refused(&[
        "volume",
        "create",
        "odd",
        "--size",
        "1.5K",
        "--block-size",
        "4096",
    ]);
    assert!(
        err.contains("not a multiple of the block size 4096"),
        "{err}"
    );
}
