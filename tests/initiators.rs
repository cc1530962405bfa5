//! The real server against real initiators on loopback: libiscsi's tools, QEMU's iSCSI
//! driver (qemu-img, qemu-io), CHAP, ACLs, digests, and a restart that keeps state.

mod common;

use common::{run, run_ok, TestServer, DEMO_IQN};

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
    let serial = run_ok("iscsi-inq", &["-e", "1", "-c", "0x80", &s.url(DEMO_IQN, 0)]);
    assert!(
        serial.to_lowercase().contains("serial"),
        "no unit serial page:\n{serial}"
    );
    let ids = run_ok("iscsi-inq", &["-e", "1", "-c", "0x83", &s.url(DEMO_IQN, 0)]);
    assert!(ids.contains("NAA"), "no NAA designator in VPD 0x83:\n{ids}");

    let cap = run_ok("iscsi-readcapacity16", &[&s.url(DEMO_IQN, 0)]);
    assert!(cap.contains("1073741824"), "capacity is not 1 GiB:\n{cap}");
}

fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let out = run_ok("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed"),
        "qemu-io reported a failure:\n{out}"
    );
    out
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

#[test]
fn header_digest_through_libiscsi() {
    let s = TestServer::start();
    let url = format!("{}?header_digest=crc32c", s.url(DEMO_IQN, 0));
    qemu_io(&url, &["write -P 0x77 0 256k", "read -P 0x77 0 256k"]);
    let inq = run_ok("iscsi-inq", &[&url]);
    assert!(inq.contains("TWINLUN"));
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
    let good = format!("iscsi://alice%25alice-secret-12@{}/{}/0", s.addr, DEMO_IQN);
    let inq = run_ok("iscsi-inq", &[&good]);
    assert!(inq.contains("TWINLUN"));

    let bad = format!("iscsi://alice%25wrong-secret-99@{}/{}/0", s.addr, DEMO_IQN);
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
        "iscsi://alice%25alice-secret-12@{}/{}/0?target_user=target&target_password=target-secret-34",
        s.addr, DEMO_IQN
    );
    let inq = run_ok("iscsi-inq", &[&mutual]);
    assert!(inq.contains("TWINLUN"));
    let wrong_mutual = format!(
        "iscsi://alice%25alice-secret-12@{}/{}/0?target_user=target&target_password=not-the-secret",
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
    let out = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &url]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success()
            || text.contains("failed")
            || text.contains("ermission")
            || text.contains("read-only")
            || text.contains("Read-only"),
        "a write to a read-only LUN was not refused:\n{text}"
    );
    qemu_io(&url, &["read -P 0 0 4k"]);
}
