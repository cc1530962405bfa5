//! Thin volumes through a real initiator (QEMU's iSCSI driver discards with UNMAP and
//! zeroes with WRITE SAME + UNMAP): the backing file gives the space back, a snapshot
//! keeps what was discarded, and replication ships the discarded range as zero records
//! that make the secondary's file shrink the same way.

mod common;

use common::pair::{create_set_of_v, pair, replicate};
use common::{qemu_io, qemu_io_read_only, TestServer, DEMO_IQN};

const MIB: u64 = 1 << 20;

/// Bytes the file at `path` has allocated.
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn discards_give_the_space_back_and_snapshots_keep_the_old_content() {
    let s = TestServer::start();
    s.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = s.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x5a 0 16m"]);
    let file = s.volume_file("v");
    let full = allocated(&file);
    assert!(full >= 16 * MIB, "16 MiB written, {full} allocated");

    let snap = s.ctl_json(&["snapshot", "create", "s1", "--volume", "v"]);
    assert_eq!(snap["state"], "ok", "{snap}");
    // UNMAP of 8 MiB, and a WRITE SAME with UNMAP of 2 MiB ("write -z -u").
    qemu_io(&url, &["discard 0 8m", "write -z -u 12m 2m"]);
    let after = allocated(&file);
    assert!(
        after <= full - 10 * MIB && after >= full - 10 * MIB - MIB,
        "10 MiB discarded: {full} -> {after} allocated"
    );
    qemu_io_read_only(
        &url,
        &[
            "read -P 0 0 8m",
            "read -P 0x5a 8m 4m",
            "read -P 0 12m 2m",
            "read -P 0x5a 14m 2m",
        ],
    );
    // The snapshot still reads the discarded pages as they were.
    s.ctl_ok(&["lun", "map", DEMO_IQN, "2", "v@s1"]);
    qemu_io_read_only(&s.url(DEMO_IQN, 2), &["read -P 0x5a 0 16m"]);
    let shown = s.ctl_json(&["volume", "show", "v"]);
    assert_eq!(shown["allocated"], after, "{shown}");
}

#[test]
fn replication_ships_discards_as_records_and_the_secondary_shrinks_too() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    let url = p.url(DEMO_IQN, 1);
    qemu_io(&url, &["write -P 0x33 0 32m"]);
    create_set_of_v(&p, &[]);
    let first = replicate(&p, "r");
    assert_eq!(first["data_bytes"], 32 * MIB, "{first}");
    let (pf, sf) = (p.volume_file("v"), s.volume_file("v"));
    let (p_full, s_full) = (allocated(&pf), allocated(&sf));
    assert!(s_full >= 32 * MIB, "{s_full}");

    qemu_io(&url, &["discard 4m 20m", "write -P 0x44 30m 1m"]);
    let second = replicate(&p, "r");
    // The discarded 20 MiB travel as zero records: bytes of data only for the write.
    assert_eq!(second["data_bytes"], MIB, "{second}");
    assert_eq!(second["zero_bytes"], 20 * MIB, "{second}");
    let (p_after, s_after) = (allocated(&pf), allocated(&sf));
    assert!(p_after <= p_full - 20 * MIB + MIB, "{p_full} -> {p_after}");
    assert!(
        s_after <= s_full - 20 * MIB + MIB,
        "the secondary's file kept its space: {s_full} -> {s_after}"
    );
    assert!(std::fs::read(&pf).unwrap() == std::fs::read(&sf).unwrap());
}
