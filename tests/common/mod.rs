//! Test harness: the real `twinlun` binary on an ephemeral port with a fresh data dir,
//! driven through `twinlun ctl`, and helpers to run real initiator tools against it.
#![allow(dead_code)]

pub mod dependent;
pub mod pair;
pub mod proxy;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Every iSCSI listen address the last start announced, as printed.
    pub addrs: Vec<String>,
    /// The banner of the last start: every stdout line, up to its last attach hint.
    pub banner: Vec<String>,
    /// Everything the server wrote to stderr (all its starts), also echoed to the
    /// test's own stderr.
    stderr: Arc<Mutex<String>>,
}

/// How long a server gets to start or stop.
const START_WITHIN: Duration = Duration::from_secs(60);
const STOP_WITHIN: Duration = Duration::from_secs(30);

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

/// A server about to start: data dir, arguments and environment, then
/// [`Launch::start`] or [`Launch::try_start`].
pub struct Launch {
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// Serve from this data dir (which the caller keeps) instead of a fresh temp one.
    pub fn data_dir(mut self, dir: &Path) -> Launch {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// More `serve` arguments.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// One more environment variable for the server (kept for restarts).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> TestServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server and waits for its whole banner; `Err` says why it did not
    /// start (exit status, stdout, stderr).
    pub fn try_start(self) -> Result<TestServer, String> {
        let (data_dir, tmp) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                (tmp.path().join("data"), Some(tmp))
            }
        };
        let mut s = TestServer {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            repl_addr: None,
            socket: data_dir.join("admin.sock"),
            data_dir,
            _tmp: tmp,
            extra: self.args,
            env: self.env,
            addrs: Vec::new(),
            banner: Vec::new(),
            stderr: Arc::new(Mutex::new(String::new())),
        };
        s.try_spawn("127.0.0.1:0")?;
        Ok(s)
    }
}

impl TestServer {
    /// A server to be started: `TestServer::launch().args(..).env(..).start()`.
    pub fn launch() -> Launch {
        Launch {
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestServer {
        Self::launch().args(extra).start()
    }

    /// A server on an existing data dir (which the caller keeps).
    pub fn start_at(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::try_start_at(data_dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TestServer::start_at`] for a start that may be refused: `Err` holds the exit
    /// status, stdout and stderr.
    pub fn try_start_at(data_dir: &Path, extra: &[&str]) -> Result<TestServer, String> {
        Self::launch().data_dir(data_dir).args(extra).try_start()
    }

    fn spawn(&mut self, listen: &str) {
        self.try_spawn(listen).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `serve` and waits until it has announced its addresses and printed its
    /// whole banner; on an early exit, returns what it said.
    fn try_spawn(&mut self, listen: &str) -> Result<(), String> {
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn twinlun serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_done = {
            let (stderr, sink) = (child.stderr.take().unwrap(), self.stderr.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            })
        };
        let deadline = Instant::now() + START_WITHIN;
        let (mut addrs, mut socket, mut lines) = (Vec::new(), None, Vec::new());
        // The banner ends with the admin socket line when no target is declared, else
        // with the `qemu:` hint of the last target (main.rs `print_banner`).
        let mut targets: Option<usize> = None;
        loop {
            let hints = lines
                .iter()
                .filter(|l: &&String| l.starts_with("twinlun:   qemu: "))
                .count();
            if targets == Some(hints) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let status = match e {
                        // stdout closed: the server has exited, or is about to.
                        mpsc::RecvTimeoutError::Disconnected => child.wait().ok(),
                        mpsc::RecvTimeoutError::Timeout => {
                            let _ = child.kill();
                            child.wait().ok()
                        }
                    };
                    let _ = stderr_done.join();
                    return Err(format!(
                        "twinlun serve did not start within {START_WITHIN:?} (exit: {status:?})\n\
                         stdout: {lines:?}\nstderr:\n{}",
                        self.stderr()
                    ));
                }
            };
            if let Some(a) = line.strip_prefix("twinlun: listening on ") {
                addrs.push(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("twinlun: replication listening on ") {
                self.repl_addr = Some(a.trim().parse().expect("replication address"));
            } else if let Some(p) = line.strip_prefix("twinlun: admin socket ") {
                let p = PathBuf::from(p.trim());
                // The banner is printed before the socket serves, and in one go: the
                // targets it lists are the ones the server answers with.
                targets = Some(target_count(&p));
                socket = Some(p);
            }
            lines.push(line);
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.addr = addrs
            .first()
            .expect("the banner names a listen address")
            .parse()
            .expect("listen address");
        self.addrs = addrs;
        self.banner = lines;
        self.socket = socket.expect("the banner names the admin socket");
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, iqn: &str, lun: u64) -> String {
        format!("iscsi://{}/{}/{}", self.addr, iqn, lun)
    }

    /// `twinlun ctl --socket S ARGS...`; returns the output whatever the exit code.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.socket, args)
    }

    /// `ctl --json ARGS...` that must succeed; returns the parsed answer.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl_ok(&full);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// `ctl --json ARGS...` that must be refused (exit code 1, `twinlun ctl: ` error on
    /// stderr); returns the stderr and the JSON error answer.
    pub fn ctl_refused(&self, args: &[&str]) -> (String, serde_json::Value) {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "ctl {args:?} should be refused; stderr: {err}"
        );
        assert!(err.starts_with("twinlun ctl: "), "{err}");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("--json prints the error response");
        assert_eq!(v["result"], "error");
        (err, v)
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
        if self.child.is_some() {
            self.stop_status();
        }
    }

    /// Stop with SIGTERM, wait, and return how the server exited; panics if it was not
    /// running or did not exit in time.
    pub fn stop_status(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("the server is running");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            if let Some(status) = c.try_wait().expect("wait for twinlun") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("twinlun did not stop within {STOP_WITHIN:?} of SIGTERM");
            }
            // Paces the wait for the exit; the deadline alone decides a failure.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server has written to stderr so far (its log), across restarts.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
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

/// `twinlun ctl --socket SOCKET ARGS...` (stdin closed); the output whatever the exit code.
pub fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run twinlun ctl")
}

/// How many targets the server on `socket` lists (one raw admin request).
fn target_count(socket: &Path) -> usize {
    use std::io::Write;
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    writeln!(conn, r#"{{"cmd":"target_list"}}"#).expect("send target_list");
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .expect("read the target_list answer");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("target_list: {e}: {line}"));
    v["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("target_list answered {v}"))
        .len()
}

/// Polls `probe` (every 50 ms) until it returns `Ok`, and returns that value; after
/// `within`, panics naming `what` was awaited and the last state `probe` described in
/// its `Err`.
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(state) => assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; last seen: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An explicit bounded observation: checks `invariant` (every 50 ms) for `period`,
/// panicking at the first violation with what it saw. For "nothing more happens"
/// claims no state can prove: it shows the claim held for `period`, no more.
pub fn observe_for(
    what: &str,
    period: Duration,
    mut invariant: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + period;
    loop {
        if let Err(seen) = invariant() {
            panic!("{what} did not hold while observed for {period:?}: {seen}");
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `qemu-io -f raw -c CMD... URL`, in batches of 200 commands (qemu-io takes them as
/// arguments); asserts it succeeded and reported no failure (a pattern mismatch
/// among them). Returns its output.
pub fn qemu_io<S: AsRef<str>>(url: &str, cmds: &[S]) -> String {
    qemu_io_opts(&[], url, cmds)
}

/// [`qemu_io`] opening the image read-only (`-r`).
pub fn qemu_io_read_only<S: AsRef<str>>(url: &str, cmds: &[S]) -> String {
    qemu_io_opts(&["-r"], url, cmds)
}

fn qemu_io_opts<S: AsRef<str>>(opts: &[&str], url: &str, cmds: &[S]) -> String {
    let mut all = String::new();
    for batch in cmds.chunks(200) {
        let mut args: Vec<&str> = opts.to_vec();
        args.extend(["-f", "raw"]);
        for c in batch {
            args.push("-c");
            args.push(c.as_ref());
        }
        args.push(url);
        let out = run_ok("qemu-io", &args);
        assert!(
            !out.contains("failed") && !out.contains("Pattern verification"),
            "qemu-io {:?} reported a failure:\n{out}",
            batch.iter().map(AsRef::as_ref).collect::<Vec<_>>()
        );
        all.push_str(&out);
    }
    all
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

/// A tmpfs of a fixed size mounted for one test, unmounted when dropped (declare it
/// before the server, so the server stops first).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        require_tool("mount");
        require_tool("umount");
        std::fs::create_dir_all(dir).expect("mount point");
        let dir_s = dir.to_str().expect("utf-8 path");
        run_ok(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir_s],
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system has no block left.
pub fn fill_up(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let mut total = 0u64;
    for chunk in [1usize << 20, 4096] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}
