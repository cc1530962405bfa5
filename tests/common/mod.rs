//! Test harness: the real `twinlun` binary on an ephemeral port with a fresh data dir,
//! driven through `twinlun ctl`, and helpers to run real initiator tools against it.
#![allow(dead_code)]

pub mod dependent;
pub mod proxy;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const DEMO_IQN: &str = "iqn.2026-11.io.twinlun:demo";

pub struct TestServer {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    /// The replication listener, when started with `--replication-listen`.
    pub repl_addr: Option<SocketAddr>,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub extra: Vec<String>,
    /// Extra environment for the next spawn.
    pub env: Vec<(String, String)>,
    /// Where the server's stderr goes (appended across restarts); inherited if None.
    pub stderr_log: Option<PathBuf>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_twinlun")
}

/// Fail loudly when a tool the test needs is missing: scripts/test.sh installs them.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{name}` is not installed (scripts/test.sh installs it)"
    );
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut s = Self::at(data_dir, extra);
        s._tmp = Some(tmp);
        s.spawn("127.0.0.1:0");
        s
    }

    /// As `start_with`, with the server's stderr kept in a file (`stderr_text` reads
    /// it), so a test can look for panics in the server's log.
    pub fn start_logged(extra: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut s = Self::at(data_dir, extra);
        s.stderr_log = Some(tmp.path().join("stderr.log"));
        s._tmp = Some(tmp);
        s.spawn("127.0.0.1:0");
        s
    }

    /// What the server wrote to stderr so far (needs `start_logged`).
    pub fn stderr_text(&self) -> String {
        let path = self
            .stderr_log
            .as_ref()
            .expect("stderr_text needs a server started with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).expect("read the server's stderr log"))
            .into_owned()
    }

    /// A server on an existing data dir (which the caller keeps).
    pub fn start_at(data_dir: &Path, extra: &[&str]) -> TestServer {
        let mut s = Self::at(data_dir.to_path_buf(), extra);
        s.spawn("127.0.0.1:0");
        s
    }

    fn at(data_dir: PathBuf, extra: &[&str]) -> TestServer {
        TestServer {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            repl_addr: None,
            socket: data_dir.join("admin.sock"),
            data_dir,
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            stderr_log: None,
        }
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(path) = &self.stderr_log {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the server's stderr log");
            cmd.stderr(log);
        }
        let mut child = cmd.spawn().expect("spawn twinlun serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut socket = None;
        while addr.is_none() || socket.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("twinlun serve did not announce its address in 30 s");
            if let Some(a) = line.strip_prefix("twinlun: listening on ") {
                addr = Some(a.trim().parse().expect("listen address"));
            } else if let Some(p) = line.strip_prefix("twinlun: admin socket ") {
                socket = Some(PathBuf::from(p.trim()));
            } else if let Some(a) = line.strip_prefix("twinlun: replication listening on ") {
                self.repl_addr = Some(a.trim().parse().expect("replication address"));
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.addr = addr.unwrap();
        self.socket = socket.unwrap();
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, iqn: &str, lun: u64) -> String {
        format!("iscsi://{}/{}/{}", self.addr, iqn, lun)
    }

    /// `twinlun ctl --socket S ARGS...`; returns the output whatever the exit code.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run twinlun ctl")
    }

    /// `ctl` that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "twinlun ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Stop with SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), 15);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("twinlun did not stop within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stop and start again on the same data dir and port.
    pub fn restart(&mut self) {
        self.stop();
        let listen = self.addr.to_string();
        self.spawn(&listen);
    }

    pub fn data_path(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }

    /// `volume show NAME --json`.
    pub fn volume_view(&self, name: &str) -> serde_json::Value {
        let out = self.ctl_ok(&["--json", "volume", "show", name]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("volume show {name}: {e}: {out}"))
    }

    /// A volume's backing file, as the server reports it (files are named by ids).
    pub fn volume_file(&self, name: &str) -> PathBuf {
        let v = self.volume_view(name);
        self.data_dir.join(v["path"].as_str().expect("volume path"))
    }

    /// A volume's tracking state folder (`tracking/ID`).
    pub fn tracking_dir(&self, name: &str) -> PathBuf {
        let v = self.volume_view(name);
        self.data_dir
            .join("tracking")
            .join(v["id"].as_str().expect("volume id"))
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run a command, returning its output; panics with the command line if it cannot start.
pub fn run(prog: &str, args: &[&str]) -> Output {
    require_tool(prog);
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A port nothing listens on right now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stop with SIGKILL (a crash) and wait.
pub fn kill9(s: &mut TestServer) {
    if let Some(mut c) = s.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
