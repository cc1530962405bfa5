//! The Linux kernel initiator (open-iscsi in a small QEMU TCG guest) against the real
//! server: discovery, login plain and with CRC32C digests, O_DIRECT pattern I/O, a
//! filesystem, a snapshot of that filesystem taken while it is mounted, logout; and
//! QEMU's own iSCSI client attaching a LUN as a virtio disk.
//! The guest is built by vm-images/build.sh (scripts/test.sh runs it first).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{repo_root, require_tool, TestServer, DEMO_IQN};

/// Runs vm-images/run-guest.sh against `s` and asserts a pass. Every `GUEST-WAIT WHAT`
/// line the guest prints goes to `on_wait(WHAT)` as it arrives, while the guest waits;
/// an `Err` from it fails the test once the guest is done (the guest's own wait times
/// out and fails too). Returns the guest's `GUEST-*` lines.
fn run_guest_with(
    s: &TestServer,
    args: &[&str],
    on_wait: &mut dyn FnMut(&str) -> Result<(), String>,
) -> String {
    require_tool("qemu-system-x86_64");
    let script = repo_root().join("vm-images/run-guest.sh");
    let port = s.port().to_string();
    let mut child = Command::new(&script)
        .args([
            "--portal-port",
            &port,
            "--iqn",
            DEMO_IQN,
            "--timeout",
            "900",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vm-images/run-guest.sh");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    // run-guest.sh echoes each GUEST-* line as the guest prints it.
    let mut stdout = String::new();
    let mut host_errors = Vec::new();
    let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    for line in lines.map_while(Result::ok) {
        eprintln!("{line}");
        if let Some(what) = line.strip_prefix("GUEST-WAIT ") {
            if let Err(e) = on_wait(what) {
                eprintln!("host side of `{line}` failed: {e}");
                host_errors.push(format!("{line}: {e}"));
            }
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = child.wait().expect("wait for run-guest.sh");
    let stderr = stderr_reader.join().unwrap_or_default();
    eprintln!("{stderr}");
    assert!(
        host_errors.is_empty(),
        "the host side of the guest's handshake failed: {host_errors:?}\n{stdout}\n{stderr}"
    );
    assert!(
        status.success(),
        "guest scenario failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("GUEST-RESULT pass"),
        "guest did not report a pass:\n{stdout}"
    );
    stdout
}

fn run_guest(s: &TestServer, args: &[&str]) {
    run_guest_with(s, args, &mut |what| {
        Err(format!("this scenario expects no GUEST-WAIT, got `{what}`"))
    });
}

/// `ctl ARGS` that must succeed, as a `Result` so a failure reaches the guest's log
/// instead of unwinding while the guest still runs.
fn ctl_try(s: &TestServer, args: &[&str]) -> Result<String, String> {
    let o = s.ctl(args);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "twinlun ctl {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[test]
fn linux_initiator_and_qemu_drive() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "vda", "--size", "128M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "vda"]);
    // Plain login, plus QEMU's own client attaching LUN 1 as /dev/vda.
    let url = s.url(DEMO_IQN, 1);
    run_guest(
        &s,
        &["--lun", "0", "--digest", "none", "--qemu-drive-url", &url],
    );

    // CRC32C header and data digests, and a snapshot of the guest's mounted
    // filesystem on LUN 0 (volume `demo`), taken when the guest asks for it: after it
    // wrote and synced snap/before, before it writes snap/after and overwrites
    // snap/before. Mapping the snapshot as LUN 2 is what lets the guest go on.
    const SNAP: &str = "guest-cut";
    const SNAP_LUN: &str = "2";
    let mut asked = 0;
    let out = run_guest_with(
        &s,
        &[
            "--lun",
            "0",
            "--digest",
            "crc32c",
            "--snapshot-lun",
            SNAP_LUN,
        ],
        &mut |what| {
            asked += 1;
            let lun = what
                .strip_prefix("snapshot lun ")
                .ok_or_else(|| format!("unknown request `{what}`"))?;
            if lun != SNAP_LUN || asked > 1 {
                return Err(format!("unexpected request #{asked} `{what}`"));
            }
            ctl_try(&s, &["snapshot", "create", SNAP, "--volume", "demo"])?;
            ctl_try(&s, &["lun", "map", DEMO_IQN, lun, &format!("demo@{SNAP}")])?;
            Ok(())
        },
    );
    assert_eq!(asked, 1, "the guest never asked for the snapshot:\n{out}");
    for step in ["snap-before", "snap-wait", "snap-after", "snap-check"] {
        assert!(
            out.contains(&format!("GUEST-STEP {step} ok")),
            "guest step {step} did not pass:\n{out}"
        );
    }

    // The guest's writes after the cut overwrote pages the snapshot holds.
    let shown = s.ctl_ok(&["--json", "snapshot", "show", SNAP]);
    let v: serde_json::Value = serde_json::from_str(&shown).expect("snapshot show --json");
    assert_eq!(v["state"], "ok", "{shown}");
    let preserved = v["pages_preserved"].as_u64().expect("pages_preserved");
    assert!(
        preserved > 0,
        "no pages preserved after the guest's writes: {shown}"
    );
    eprintln!("snapshot {SNAP}: {preserved} pages preserved");
    let refused = s.ctl(&["snapshot", "delete", SNAP]);
    assert!(
        !refused.status.success(),
        "deleting a mapped snapshot must be refused"
    );
    s.ctl_ok(&["lun", "unmap", DEMO_IQN, SNAP_LUN]);
    s.ctl_ok(&["snapshot", "delete", SNAP]);
    let left = s.ctl_ok(&["--json", "snapshot", "list"]);
    let v: serde_json::Value = serde_json::from_str(&left).expect("snapshot list --json");
    assert_eq!(v["snapshots"], serde_json::json!([]), "{left}");
}
