//! The Linux kernel initiator (open-iscsi in a small QEMU TCG guest) against the real
//! server: discovery, login plain and with CRC32C digests, O_DIRECT pattern I/O, a
//! filesystem, a snapshot of that filesystem taken while it is mounted, logout; and
//! QEMU's own iSCSI client attaching a LUN as a virtio disk.
//! The guest is built by vm-images/build.sh (scripts/test.sh runs it first).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{kill9, repo_root, require_tool, TestServer, DEMO_IQN};

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

/// Bytes the file at `path` has allocated.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("volume file").blocks() * 512
}

/// The Linux initiator's discards (fstrim of a mounted ext4, blkdiscard of a range) and
/// those of a QEMU drive with `discard=unmap` reach the backing files, which give the
/// space back; the next replication cycle ships those ranges as zero records and the
/// secondary's file shrinks the same way and still equals the primary's.
#[test]
fn guest_discards_shrink_the_file_and_the_secondary() {
    use common::pair::{create_set, pair, replicate};
    const MIB: u64 = 1 << 20;
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "vt", "--size", "256M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "vt"]);
    p.ctl_ok(&["volume", "create", "vq", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "2", "vq"]);
    create_set(&p, "t", &["--volume", "vt"]);
    let drive = p.url(DEMO_IQN, 2);
    let guest = |test: &str| {
        run_guest(
            &p,
            &[
                "--test",
                test,
                "--lun",
                "1",
                "--qemu-drive-url",
                &drive,
                "--vda-offset-mib",
                "16",
            ],
        )
    };
    // ext4 on the first 128 MiB with a 32 MiB file, 32 MiB raw at 192 MiB, 8 MiB on vq.
    guest("trimfill");
    replicate(&p, "t");
    let (pf, sf, qf) = (
        p.volume_file("vt"),
        s.volume_file("vt"),
        p.volume_file("vq"),
    );
    let (p_full, s_full, q_full) = (allocated(&pf), allocated(&sf), allocated(&qf));
    assert!(p_full >= 64 * MIB, "64 MiB written, {p_full} allocated");
    assert!(
        q_full >= 8 * MIB,
        "8 MiB written on the QEMU drive, {q_full} allocated"
    );

    // rm + fstrim of the file, blkdiscard of the raw range and of the drive's 8 MiB.
    guest("trim");
    let p_after = allocated(&pf);
    let freed = p_full.saturating_sub(p_after);
    // 64 MiB discarded; ext4 rounds the trimmed free space to its block groups and
    // keeps its own metadata, so about that, give or take a few MiB.
    assert!(
        (60 * MIB..=72 * MIB).contains(&freed),
        "the guest discarded about 64 MiB, the file gave back {freed} ({p_full} -> {p_after})"
    );
    let q_after = allocated(&qf);
    assert!(
        q_after + 8 * MIB <= q_full + MIB,
        "the QEMU drive's 8 MiB discard did not reach the file: {q_full} -> {q_after}"
    );

    let cycle = replicate(&p, "t");
    let zeros = cycle["zero_bytes"].as_u64().expect("zero_bytes");
    let data = cycle["data_bytes"].as_u64().expect("data_bytes");
    assert!(
        zeros >= 60 * MIB,
        "the discarded ranges must travel as zero records: {cycle}"
    );
    assert!(
        data <= 8 * MIB,
        "only the filesystem's own updates travel as data: {cycle}"
    );
    let s_after = allocated(&sf);
    let s_freed = s_full.saturating_sub(s_after);
    assert!(
        s_freed + 2 * MIB >= freed,
        "the secondary's file kept its space: {s_full} -> {s_after}, the primary gave back {freed}"
    );
    assert!(
        std::fs::read(&pf).unwrap() == std::fs::read(&sf).unwrap(),
        "the secondary differs from the primary after the discards"
    );
    eprintln!(
        "guest discards: primary {p_full} -> {p_after}, secondary {s_full} -> {s_after}, \
         drive {q_full} -> {q_after}; the cycle shipped {zeros} zero and {data} data bytes"
    );
}

/// The files `fscheck` found, from its `GUEST-INFO files:` line.
fn files_seen(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find_map(|l| l.split("GUEST-INFO files:").nth(1))
        .unwrap_or_else(|| panic!("fscheck printed no file list:\n{stdout}"));
    let mut names: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    names.sort();
    names
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn guest_ext4_fails_over_to_the_secondary_and_back() {
    use common::pair::{create_set, pair, replicate, wait_cycles};
    let (mut p, s) = pair();
    p.ctl_ok(&["volume", "create", "vf", "--size", "128M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "vf"]);
    create_set(&p, "f", &["--volume", "vf"]);
    let guest = |node: &TestServer, lun: &str, test: &str, append: &str| {
        run_guest_with(
            node,
            &["--test", test, "--lun", lun, "--append", append],
            &mut |what| Err(format!("this scenario expects no GUEST-WAIT, got `{what}`")),
        )
    };
    // ext4 with files a-1..a-5, a cut; then b-1..b-5 the secondary never gets.
    guest(&p, "1", "fsfiles", "twinlun.mkfs=1 twinlun.files=a:5");
    replicate(&p, "f");
    guest(&p, "1", "fsfiles", "twinlun.files=b:5");
    kill9(&mut p);

    // Failover: the promoted volume is a clean filesystem at the cut.
    s.ctl_ok(&["promote", "--volume", "vf"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "vf"]);
    let out = guest(&s, "1", "fscheck", "twinlun.files=c:3");
    assert_eq!(
        files_seen(&out),
        names("a", 5),
        "the promoted volume holds the cut"
    );

    // Failback: the old primary becomes the secondary and reads what was written
    // after the failover; what it wrote after the cut is kept aside.
    p.restart();
    let out = s.ctl_ok(&["failback", "f"]);
    assert!(out.contains("vf.before-failback-"), "{out}");
    wait_cycles(&s, "f", 1);
    let out = guest(&p, "1", "fscheck", "twinlun.ro=1");
    let mut want = names("a", 5);
    want.extend(names("c", 3));
    assert_eq!(files_seen(&out), want, "the old primary after failback");
    let kept = out_kept(&p);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "2", &kept, "--read-only"]);
    let out = guest(&p, "2", "fscheck", "twinlun.ro=1");
    let mut want = names("a", 5);
    want.extend(names("b", 5));
    assert_eq!(files_seen(&out), want, "the kept divergent writes");
}

/// The volume a failback kept the old primary's content in.
fn out_kept(p: &TestServer) -> String {
    let v = p.ctl_json(&["volume", "list"]);
    v["volumes"]
        .as_array()
        .expect("volume list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with("vf.before-failback-"))
        .expect("a kept volume")
        .to_string()
}
