//! The disaster-recovery loop between two real twinlun processes: an unplanned promote
//! of the secondary, the old primary coming back and learning it, and `failback`
//! shipping only what either side changed since their common cut.

mod common;

use std::time::Duration;

use common::pair::{create_set, pair, replicate, show, wait_cycles};
use common::{kill9, observe_for, qemu_io, wait_until, DEMO_IQN};

const PAGE: u64 = 4096;

#[test]
fn an_unplanned_promote_fails_back_shipping_only_the_union_of_changed_pages() {
    let (mut p, s) = pair();
    p.ctl_ok(&["volume", "create", "va", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    let url = p.url(DEMO_IQN, 1);
    create_set(&p, "rs", &["--volume", "va"]);
    qemu_io(&url, &["write -P 0x11 0 32m"]);
    let first = replicate(&p, "rs");
    let common_cut = first["cut_id"].as_u64().unwrap();

    // Writes the secondary never gets: the primary dies before another cycle.
    qemu_io(&url, &["write -P 0x22 40m 1m"]);
    kill9(&mut p);

    // Unplanned failover: the set stays on the secondary, promoted and held.
    let out = s.ctl_ok(&["promote", "--volume", "va"]);
    assert!(out.contains("failback rs"), "{out}");
    let v = show(&s, "rs");
    assert_eq!(v["status"], "promoted", "{v}");
    assert_eq!(v["role"], "primary", "{v}");
    assert_eq!(v["common_cut"], common_cut, "{v}");
    let (_, err) = s.ctl_refused(&["replicate", "rs"]);
    assert!(
        err["message"].as_str().unwrap().contains("failback"),
        "{err}"
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    // 1,000 pages written on the new primary, partly over the old primary's divergent
    // range (40M..41M) and partly not.
    qemu_io(&s.url(DEMO_IQN, 1), &["write -P 0x33 38m 4000k"]);

    // The old primary comes back, tries a cycle, and learns it was superseded.
    p.restart();
    p.ctl_ok(&["replicate", "rs"]);
    let v = wait_until(
        "the old primary to learn of the promote",
        Duration::from_secs(60),
        || {
            let v = show(&p, "rs");
            if v["status"] == "peer-promoted" {
                return Ok(v);
            }
            Err(v.to_string())
        },
    );
    assert_eq!(v["common_cut"], common_cut, "{v}");
    let diverged = v["pages_since_common_cut"].as_u64().unwrap();
    assert!(
        diverged >= (1 << 20) / PAGE,
        "the old primary wrote 1 MiB since: {v}"
    );
    assert!(v["error"].is_null(), "{v}");
    // It stops trying: no cycle and no retry while nobody acts.
    let cycles = v["cycles"].as_u64().unwrap();
    observe_for(
        "the old primary to stay put",
        Duration::from_secs(3),
        || {
            let v = show(&p, "rs");
            (v["status"] == "peer-promoted" && v["cycles"] == cycles && v["next_retry"].is_null())
                .then_some(())
                .ok_or_else(|| v.to_string())
        },
    );
    let (_, err) = p.ctl_refused(&["replicate", "rs"]);
    assert!(
        err["message"].as_str().unwrap().contains("failback"),
        "{err}"
    );
    let before_failback = std::fs::read(p.volume_file("va")).unwrap();

    // Failback from the promoted side.
    let out = s.ctl_ok(&["failback", "rs"]);
    let kept = format!("va.before-failback-{common_cut}");
    assert!(out.contains(&kept), "{out}");
    let v = wait_cycles(&s, "rs", 1);
    // Pages travel as data, or as zero records where the new primary holds zeros (the
    // old primary wrote where the new one never did).
    let c = &v["last_cycle"];
    let data = c["data_bytes"].as_u64().unwrap();
    let covered = data + c["zero_bytes"].as_u64().unwrap();
    let union_bound = (diverged + 1000) * PAGE;
    assert!(
        covered as f64 <= 1.05 * union_bound as f64,
        "shipped {covered} bytes of pages, the union is at most {union_bound}: {c}"
    );
    assert!(
        covered >= diverged.max(1000) * PAGE,
        "the old primary's {diverged} pages and the new one's 1000 must all be shipped: {c}"
    );
    assert!(data < 32 << 20, "far below the data written: {c}");
    eprintln!(
        "failback shipped {data} data bytes and {} zero bytes for {diverged} divergent pages and 1000 written on the new primary",
        covered - data
    );

    // The two sides are byte-equal, and the old primary's content before the failback
    // is in the kept volume.
    assert!(
        std::fs::read(p.volume_file("va")).unwrap() == std::fs::read(s.volume_file("va")).unwrap(),
        "the old primary does not hold the new primary's content"
    );
    assert!(
        std::fs::read(p.volume_file(&kept)).unwrap() == before_failback,
        "the kept volume is not the old primary's content before the failback"
    );
    let pv = show(&p, "rs");
    assert_eq!(pv["role"], "secondary", "{pv}");

    // Replication goes on from the new primary, incrementally.
    qemu_io(&s.url(DEMO_IQN, 1), &["write -P 0x44 0 64k"]);
    let next = replicate(&s, "rs");
    assert!(next["data_bytes"].as_u64().unwrap() <= 64 << 10, "{next}");
    assert!(
        std::fs::read(p.volume_file("va")).unwrap() == std::fs::read(s.volume_file("va")).unwrap(),
        "the next cut did not reach the old primary"
    );
}
