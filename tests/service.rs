//! Running under systemd: `contrib/systemd/twinlun.service` passes `systemd-analyze
//! verify`, and `serve` speaks the notify protocol to a `NOTIFY_SOCKET` of the test's
//! own: READY=1 once the portal and the admin socket accept connections, WATCHDOG=1
//! at half of WATCHDOG_USEC, STOPPING=1 at SIGTERM.

mod common;

use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, free_port, repo_root, require_tool, TestServer};

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    require_tool("man");
    let unit = std::fs::read_to_string(repo_root().join("contrib/systemd/twinlun.service"))
        .expect("contrib/systemd/twinlun.service");
    let installed = "/usr/local/bin/twinlun";
    assert!(
        unit.contains(&format!("ExecStart={installed} serve")),
        "the unit runs {installed}"
    );
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=twinlun",
        "--data-dir /var/lib/twinlun",
        "RuntimeDirectory=twinlun",
        "--admin-socket /run/twinlun/admin.sock",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
    ] {
        assert!(unit.contains(line), "the unit has no '{}'", line.trim());
    }
    // verify checks that ExecStart's program exists and that the man page named in
    // Documentation= is installed: point it at this build and at pages `twinlun man`
    // writes. Nothing else in the unit changes.
    let dir = tempfile::tempdir().unwrap();
    let unit_path = dir.path().join("twinlun.service");
    std::fs::write(&unit_path, unit.replace(installed, bin())).unwrap();
    let man1 = dir.path().join("man/man1");
    let out = Command::new(bin())
        .args(["man", "--dir", man1.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        // Not about the unit: systemd is not PID 1 in this container.
        .filter(|l| !l.contains("System has not been booted with systemd"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
}

/// A notify socket the test owns: every datagram is read as it arrives; on READY=1 the
/// reader connects to the portal and to the admin socket at once and records whether
/// each accepted.
struct Notifications {
    rx: mpsc::Receiver<(String, Option<(bool, bool)>)>,
}

impl Notifications {
    fn listen(socket: &std::path::Path, portal: String, admin: std::path::PathBuf) -> Self {
        let sock = UnixDatagram::bind(socket).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let probe = msg.lines().any(|l| l == "READY=1").then(|| {
                    (
                        TcpStream::connect(&portal).is_ok(),
                        UnixStream::connect(&admin).is_ok(),
                    )
                });
                if tx.send((msg, probe)).is_err() {
                    break;
                }
            }
        });
        Notifications { rx }
    }

    /// The next message with a line `line`, and the messages before it.
    fn until(&self, line: &str, within: Duration) -> (String, Option<(bool, bool)>, Vec<String>) {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((msg, probe)) if msg.lines().any(|l| l == line) => return (msg, probe, before),
                Ok((msg, _)) => before.push(msg),
                Err(e) => panic!("no {line} within {within:?} ({e}); got {before:?}"),
            }
        }
    }
}

#[test]
fn serve_notifies_ready_after_its_portal_listens_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notify = dir.path().join("notify.sock");
    let portal = format!("127.0.0.1:{}", free_port());
    let n = Notifications::listen(&notify, portal.clone(), data.join("admin.sock"));
    let mut s = TestServer::launch()
        .data_dir(&data)
        .args(&["--listen", &portal])
        .env("NOTIFY_SOCKET", notify.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();

    let (ready, probe, before) = n.until("READY=1", Duration::from_secs(30));
    assert!(
        before.is_empty(),
        "READY=1 is the first message: {before:?}"
    );
    assert_eq!(
        probe,
        Some((true, true)),
        "at READY=1 the portal {portal} and the admin socket accept connections"
    );
    assert!(
        ready.contains(&portal),
        "the status names the portals: {ready}"
    );

    // Pings at half of WATCHDOG_USEC (200 ms): two come well within 5 s.
    let started = Instant::now();
    for _ in 0..2 {
        let (_, _, others) = n.until("WATCHDOG=1", Duration::from_secs(5));
        assert!(others.is_empty(), "only pings while serving: {others:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(s.stderr().contains("systemd watchdog on"), "{}", s.stderr());

    s.stop();
    let (_, _, between) = n.until("STOPPING=1", Duration::from_secs(10));
    assert!(
        between.iter().all(|m| m == "WATCHDOG=1"),
        "nothing but pings before STOPPING=1: {between:?}"
    );
}

#[test]
fn no_notify_socket_means_no_notifications_and_a_bad_one_is_refused() {
    // Without NOTIFY_SOCKET serve runs as always (every other test starts it so).
    let dir = tempfile::tempdir().unwrap();
    let e = TestServer::launch()
        .data_dir(&dir.path().join("data"))
        .env("NOTIFY_SOCKET", "relative/notify.sock")
        .try_start()
        .err()
        .expect("a relative NOTIFY_SOCKET is refused");
    assert!(
        e.contains(
            "NOTIFY_SOCKET 'relative/notify.sock' is neither a path nor an abstract socket name"
        ),
        "{e}"
    );
}
