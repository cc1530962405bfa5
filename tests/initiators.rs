//! The real server against real initiators on loopback: libiscsi's tools, QEMU's iSCSI
//! driver (qemu-img, qemu-io), CHAP, ACLs, digests, and a restart that keeps state.

mod common;

use std::io::Write;

use common::{qemu_io, run, run_ok, wait_until, TestServer, DEMO_IQN};

#[test]
fn libiscsi_tools_see_the_demo_target() {
    let s = TestServer::start();
    let ls = run_ok("iscsi-ls", &["-s", &format!("iscsi://{}", s.addr)]);
    assert!(
        ls.contains(DEMO_IQN),
        "iscsi-ls did not list the demo target:\n{ls}"
    );
    assert!(ls.contains("Lun:0"), "iscsi-ls did not show LUN 0:\n{ls}");

    let inq = run_ok("iscsi-inq", &[&s.url(DEMO_IQN, 0)]);
    assert!(
        inq.contains("TWINLUN"),
        "standard INQUIRY lacks the vendor:\n{inq}"
    );
    let serial = run_ok("iscsi-inq", &["-e", "1", "-c", "128", &s.url(DEMO_IQN, 0)]);
    assert!(
        serial.to_lowercase().contains("serial"),
        "no unit serial page:\n{serial}"
    );
    let ids = run_ok("iscsi-inq", &["-e", "1", "-c", "131", &s.url(DEMO_IQN, 0)]);
    assert!(ids.contains("NAA"), "no NAA designator in VPD 0x83:\n{ids}");

    let cap = run_ok("iscsi-readcapacity16", &[&s.url(DEMO_IQN, 0)]);
    assert!(cap.contains("1073741824"), "capacity is not 1 GiB:\n{cap}");
}

#[test]
fn qemu_io_patterns_round_trip() {
    let s = TestServer::start();
    let url = s.url(DEMO_IQN, 0);
    // Sizes that exercise immediate data, unsolicited Data-Out, and R2T sequences
    // (MaxBurstLength), at aligned and odd-block offsets.
    qemu_io(
        &url,
        &[
            "write -P 0xa5 0 4k",
            "write -P 0x5a 4096 64k",
            "write -P 0x3c 1m 4m",
            "write -P 0x11 7680 512",
            "read -P 0xa5 0 4k",
            "read -P 0x5a 4096 3584",
            "read -P 0x11 7680 512",
            "read -P 0x5a 8192 61440",
            "read -P 0x3c 1m 4m",
            "read -P 0 100m 1m",
        ],
    );
    // A second connection sees the same data.
    qemu_io(&url, &["read -P 0x3c 2m 1m"]);
}

#[test]
fn qemu_img_convert_and_compare_a_random_image() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("random.img");
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&img, &data).unwrap();
    let url = s.url(DEMO_IQN, 0);
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            img.to_str().unwrap(),
            &url,
        ],
    );
    // qemu-img compare reads the whole image back; the tail beyond 24 MiB must be zero.
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
            &url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Images are identical"),
        "compare failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// QEMU's driver asks for CRC32C header digests (libiscsi has no data digests; the
/// guest test covers those). The target's session list must show them negotiated
/// while the I/O runs. (QEMU 7.2 crashes on the `?header_digest=` URL form, even
/// against tgt, so the option form is used.)
#[test]
fn header_digest_through_qemu() {
    let s = TestServer::start();
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={},target={},lun=0,header-digest=crc32c",
        s.addr, DEMO_IQN
    );
    common::require_tool("qemu-io");
    // qemu-io reads its commands from stdin here: the session stays logged in between
    // the write and the read, for as long as the probe takes.
    let mut child = std::process::Command::new("qemu-io")
        .args(["--image-opts", &opts])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start qemu-io");
    let mut commands = child.stdin.take().expect("qemu-io stdin");
    writeln!(commands, "write -P 0x77 0 256k").expect("send to qemu-io");
    let sessions = wait_until(
        "a session that negotiated HeaderDigest",
        std::time::Duration::from_secs(10),
        || {
            let o = s.ctl(&["--json", "session", "list"]);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            if text.contains("HeaderDigest") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    writeln!(commands, "read -P 0x77 0 256k").expect("send to qemu-io");
    writeln!(commands, "quit").expect("send to qemu-io");
    drop(commands);
    let out = child.wait_with_output().expect("run qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io failed:\n{text}"
    );
    assert!(
        sessions.contains(r#"["HeaderDigest","CRC32C"]"#),
        "the session did not negotiate CRC32C header digests: {sessions}"
    );
}

#[test]
fn chap_one_way_mutual_and_wrong_secret() {
    let s = TestServer::start();
    s.ctl_ok(&[
        "chap",
        "set",
        DEMO_IQN,
        "--user",
        "alice",
        "--secret",
        "alice-secret-12",
    ]);
    let good = format!("iscsi://alice%alice-secret-12@{}/{}/0", s.addr, DEMO_IQN);
    let inq = run_ok("iscsi-inq", &[&good]);
    assert!(inq.contains("TWINLUN"));

    let bad = format!("iscsi://alice%wrong-secret-99@{}/{}/0", s.addr, DEMO_IQN);
    let out = run("iscsi-inq", &[&bad]);
    assert!(!out.status.success(), "a wrong CHAP secret logged in");
    let none = run("iscsi-inq", &[&s.url(DEMO_IQN, 0)]);
    assert!(
        !none.status.success(),
        "login without CHAP succeeded on a CHAP target"
    );

    s.ctl_ok(&[
        "chap",
        "set",
        DEMO_IQN,
        "--user",
        "alice",
        "--secret",
        "alice-secret-12",
        "--mutual-user",
        "target",
        "--mutual-secret",
        "target-secret-34",
    ]);
    let mutual = format!(
        "iscsi://alice%alice-secret-12@{}/{}/0?target_user=target&target_password=target-secret-34",
        s.addr, DEMO_IQN
    );
    let inq = run_ok("iscsi-inq", &[&mutual]);
    assert!(inq.contains("TWINLUN"));
    let wrong_mutual = format!(
        "iscsi://alice%alice-secret-12@{}/{}/0?target_user=target&target_password=not-the-secret",
        s.addr, DEMO_IQN
    );
    let out = run("iscsi-inq", &[&wrong_mutual]);
    assert!(
        !out.status.success(),
        "initiator accepted a target that failed mutual CHAP"
    );

    s.ctl_ok(&["chap", "clear", DEMO_IQN]);
    run_ok("iscsi-inq", &[&s.url(DEMO_IQN, 0)]);
}

#[test]
fn acl_refuses_other_initiators() {
    let s = TestServer::start();
    let allowed = "iqn.2026-11.test:allowed";
    s.ctl_ok(&["acl", "add", DEMO_IQN, allowed]);
    run_ok("iscsi-inq", &["-i", allowed, &s.url(DEMO_IQN, 0)]);
    let out = run(
        "iscsi-inq",
        &["-i", "iqn.2026-11.test:stranger", &s.url(DEMO_IQN, 0)],
    );
    assert!(
        !out.status.success(),
        "an initiator outside the ACL logged in"
    );
    // Discovery only shows what the initiator may use.
    let ls = run_ok(
        "iscsi-ls",
        &[
            "-i",
            "iqn.2026-11.test:stranger",
            &format!("iscsi://{}", s.addr),
        ],
    );
    assert!(
        !ls.contains(DEMO_IQN),
        "discovery showed a target the ACL forbids:\n{ls}"
    );
    s.ctl_ok(&["acl", "remove", DEMO_IQN, allowed]);
    run_ok(
        "iscsi-inq",
        &["-i", "iqn.2026-11.test:stranger", &s.url(DEMO_IQN, 0)],
    );
}

#[test]
fn restart_keeps_volumes_maps_and_data() {
    let mut s = TestServer::start();
    s.ctl_ok(&[
        "volume",
        "create",
        "keep",
        "--size",
        "64M",
        "--block-size",
        "4096",
    ]);
    s.ctl_ok(&["target", "create", "iqn.2026-11.test:keep"]);
    s.ctl_ok(&["lun", "map", "iqn.2026-11.test:keep", "3", "keep"]);
    let url = s.url("iqn.2026-11.test:keep", 3);
    qemu_io(&url, &["write -P 0x42 8k 1m"]);
    s.restart();
    let cap = run_ok("iscsi-readcapacity16", &[&url]);
    assert!(cap.contains("67108864"), "size lost across restart:\n{cap}");
    assert!(
        cap.contains("4096"),
        "block size lost across restart:\n{cap}"
    );
    qemu_io(&url, &["read -P 0x42 8k 1m", "read -P 0 0 8k"]);
    let vols = s.ctl_ok(&["volume", "list"]);
    assert!(vols.contains("keep") && vols.contains("demo"), "{vols}");
}

#[test]
fn read_only_lun_refuses_writes() {
    use bytes::Bytes;
    use twinlun::iscsi::pdu::{Digests, Opcode, ScsiCommand, ScsiResponse};

    let s = TestServer::start();
    s.ctl_ok(&["target", "create", "iqn.2026-11.test:ro"]);
    s.ctl_ok(&[
        "lun",
        "map",
        "iqn.2026-11.test:ro",
        "0",
        "demo",
        "--read-only",
    ]);
    let url = s.url("iqn.2026-11.test:ro", 0);
    // QEMU sees the write-protect bit and refuses a read-write open...
    let out = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &url]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("write protected"),
        "{text}"
    );
    // ...reads work...
    let out = run_ok(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0 0 4k", &url],
    );
    assert!(!out.contains("failed"), "{out}");
    // ...and a WRITE(10) sent anyway gets DATA PROTECT, WRITE PROTECTED.
    let mut c = common::raw::RawClient::connect(s.addr);
    c.login(
        "iqn.2026-11.test:ro-writer",
        "iqn.2026-11.test:ro",
        Digests::default(),
    );
    let mut status = None;
    for attempt in 0..2 {
        // The first command after login may collect the power-on unit attention.
        let itt = c.next_itt();
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: false,
            write: true,
            attr: 1,
            lun: 0,
            itt,
            expected_len: 512,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
            cdb: Bytes::from_static(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            bidi_read_len: None,
            data: Bytes::from(vec![0xeeu8; 512]),
        };
        c.send(&cmd.to_pdu());
        c.cmd_sn += 1;
        let p = c.recv().expect("response to WRITE(10)");
        assert_eq!(p.bhs.opcode(), Opcode::SCSI_RESPONSE);
        let r = ScsiResponse::from_pdu(&p).unwrap();
        c.exp_stat_sn = r.stat_sn.wrapping_add(1);
        assert_eq!(
            r.status, 0x02,
            "WRITE on a read-only LUN must be CHECK CONDITION"
        );
        let key = r.sense[2] & 0x0f;
        if key == 0x06 && attempt == 0 {
            continue;
        }
        status = Some((key, r.sense[12], r.sense[13]));
        break;
    }
    assert_eq!(
        status,
        Some((0x07, 0x27, 0x00)),
        "expected DATA PROTECT, WRITE PROTECTED"
    );
    let out = run_ok(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0 0 4k", &url],
    );
    assert!(
        !out.contains("failed"),
        "the refused write changed data: {out}"
    );
}

#[test]
fn many_sessions_and_luns_at_once() {
    let s = TestServer::start();
    for i in 1..=4 {
        let name = format!("multi{i}");
        s.ctl_ok(&["volume", "create", &name, "--size", "64M"]);
        s.ctl_ok(&["lun", "map", DEMO_IQN, &i.to_string(), &name]);
    }
    // Eight sessions at once: two per LUN, each on its own region with its own pattern.
    let workers: Vec<_> = (0..8u32)
        .map(|w| {
            let url = s.url(DEMO_IQN, (w % 4 + 1) as u64);
            std::thread::spawn(move || {
                let pat = format!("0x{:02x}", 0x40 + w);
                let off = format!("{}m", (w / 4) * 16);
                qemu_io(
                    &url,
                    &[
                        &format!("write -P {pat} {off} 8m"),
                        &format!("read -P {pat} {off} 8m"),
                    ],
                );
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a session's I/O failed");
    }
    // Each LUN holds exactly its two sessions' patterns.
    for lun in 1..=4u32 {
        let url = s.url(DEMO_IQN, lun as u64);
        let a = format!("read -P 0x{:02x} 0 8m", 0x40 + lun - 1);
        let b = format!("read -P 0x{:02x} 16m 8m", 0x40 + lun + 3);
        qemu_io(&url, &[&a, &b, "read -P 0 8m 8m"]);
    }
}
