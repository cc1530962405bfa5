//! The Linux kernel initiator (open-iscsi in a small QEMU TCG guest) against the real
//! server: discovery, login plain and with CRC32C digests, O_DIRECT pattern I/O, a
//! filesystem, logout; and QEMU's own iSCSI client attaching a LUN as a virtio disk.
//! The guest is built by vm-images/build.sh (scripts/test.sh runs it first).

mod common;

use std::process::Command;

use common::{repo_root, require_tool, TestServer, DEMO_IQN};

fn run_guest(s: &TestServer, args: &[&str]) {
    require_tool("qemu-system-x86_64");
    let script = repo_root().join("vm-images/run-guest.sh");
    let port = s.port().to_string();
    let out = Command::new(&script)
        .args([
            "--portal-port",
            &port,
            "--iqn",
            DEMO_IQN,
            "--timeout",
            "900",
        ])
        .args(args)
        .output()
        .expect("run vm-images/run-guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "guest scenario failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("GUEST-RESULT pass"),
        "guest did not report a pass:\n{stdout}"
    );
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
    // CRC32C header and data digests.
    run_guest(&s, &["--lun", "0", "--digest", "crc32c"]);
}
