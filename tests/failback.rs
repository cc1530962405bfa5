//! The disaster-recovery loop between two real twinlun processes: an unplanned promote
//! of the secondary, the old primary coming back and learning it, and `failback`
//! shipping only what either side changed since their common cut.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dependent::{after_writes, block, generations, BLOCK, BLOCKS};
use common::pair::{create_set, pair, pair_throttled, replicate, show, wait_cycles, wait_progress};
use common::raw::RawClient;
use common::{kill9, observe_for, qemu_io, wait_until, TestServer, DEMO_IQN};
use twinlun::iscsi::pdu::Digests;

const PAGE: u64 = 4096;

#[test]
fn an_unplanned_promote_fails_back_shipping_only_the_union_of_changed_pages() {
    // The link to the secondary goes through a proxy, slowed later so that the primary
    // dies while a cycle ships.
    let (mut p, s, proxy) = pair_throttled(0);
    p.ctl_ok(&["volume", "create", "va", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    let url = p.url(DEMO_IQN, 1);
    create_set(&p, "rs", &["--volume", "va"]);
    qemu_io(&url, &["write -P 0x11 0 32m"]);
    let first = replicate(&p, "rs");
    let common_cut = first["cut_id"].as_u64().unwrap();

    // Writes the secondary never gets: the primary dies while the cycle that ships
    // them is under way.
    qemu_io(&url, &["write -P 0x22 40m 1m"]);
    proxy.set_rate(256 << 10);
    p.ctl_ok(&["replicate", "rs"]);
    wait_progress(&p, "rs", 64 << 10);
    kill9(&mut p);
    // What the dead primary left in socket buffers must not reach the secondary: the
    // whole cycle could be queued there, its commit included, and the secondary would
    // then hold the cut this test has it miss.
    proxy.cut();
    proxy.set_rate(0);

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
        Duration::from_secs(30),
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

    // Failback, run on the old primary (the promoted side carries it out).
    let out = p.ctl_ok(&["failback", "rs"]);
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
        read_through_lun(&p, &kept) == before_failback,
        "the kept volume is not the old primary's content before the failback"
    );
    // Copy-on-write: the kept volume took no copy of the 33 MiB written.
    let kept_view = p.volume_view(&kept);
    assert!(
        kept_view["allocated"].as_u64().unwrap() < 1 << 20,
        "the kept volume copied data: {kept_view}"
    );
    assert_eq!(
        kept_view["clone_of"],
        format!("va@rp:{common_cut}"),
        "{kept_view}"
    );
    // The point it reads is kept for it, and says so.
    let points = p.ctl_json(&["recovery-points", "rs"]);
    let pinned: Vec<&serde_json::Value> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pt| !pt["pinned_by"].is_null())
        .collect();
    assert_eq!(pinned.len(), 1, "{points}");
    assert_eq!(pinned[0]["cut_id"], common_cut, "{points}");
    assert_eq!(
        pinned[0]["pinned_by"],
        serde_json::json!([format!("clone '{kept}'")]),
        "{points}"
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

/// Dependent writes through LUNs 0 (A) and 1 (B) until one is refused: A[i] then B[i],
/// each acknowledged before the next. Returns the writes acknowledged and the sense
/// key, ASC and ASCQ of the refusal.
fn writer_until_refused(
    addr: std::net::SocketAddr,
    iqn: &str,
    written: &AtomicUsize,
) -> (usize, (u8, u8, u8)) {
    let mut c = RawClient::connect(addr);
    c.login("iqn.2026-11.test:writer", iqn, Digests::default());
    let mut writes = 0;
    for gen in 1..=255u8 {
        for i in 0..BLOCKS {
            for vol in 0..2u8 {
                let mut cdb = [0u8; 10];
                cdb[0] = 0x2a;
                cdb[2..6].copy_from_slice(&(i as u32).to_be_bytes());
                cdb[8] = 1;
                let mut o = c.scsi(u64::from(vol), &cdb, &block(vol, i, gen), 0);
                // A unit attention (the first command of a session, a mode change)
                // is reported once: the write is sent again.
                while o.sense_key() == Some(0x06) {
                    o = c.scsi(u64::from(vol), &cdb, &block(vol, i, gen), 0);
                }
                if o.status != 0 {
                    let kcq = (
                        o.sense_key().unwrap_or(0),
                        o.sense.get(12).copied().unwrap_or(0),
                        o.sense.get(13).copied().unwrap_or(0),
                    );
                    return (writes, kcq);
                }
                writes += 1;
                written.store(writes, Ordering::Release);
            }
        }
    }
    panic!("the writer was never refused");
}

fn images(s: &TestServer) -> (Vec<u8>, Vec<u8>) {
    (
        generations(0, &std::fs::read(s.volume_file("a")).unwrap()),
        generations(1, &std::fs::read(s.volume_file("b")).unwrap()),
    )
}

fn map_writable(s: &TestServer, iqn: &str) {
    for (lun, v) in [("0", "a"), ("1", "b")] {
        s.ctl_ok(&["lun", "unmap", iqn, lun]);
        s.ctl_ok(&["lun", "map", iqn, lun, v]);
    }
}

fn equal_sides(p: &TestServer, s: &TestServer) {
    for v in ["a", "b"] {
        assert!(
            std::fs::read(p.volume_file(v)).unwrap() == std::fs::read(s.volume_file(v)).unwrap(),
            "volume {v} differs between the sides"
        );
    }
}

#[test]
fn a_switchover_under_dependent_writes_reverses_the_set_at_its_final_cut_and_back() {
    let (p, s) = pair();
    let iqn = "iqn.2026-11.test:sw";
    for v in ["a", "b"] {
        p.ctl_ok(&["volume", "create", v, "--size", "256K"]);
    }
    p.ctl_ok(&["group", "create", "g", "a", "b"]);
    for n in [&p, &s] {
        n.ctl_ok(&["target", "create", iqn]);
    }
    p.ctl_ok(&["lun", "map", iqn, "0", "a"]);
    p.ctl_ok(&["lun", "map", iqn, "1", "b"]);
    create_set(&p, "sw", &["--group", "g"]);
    s.ctl_ok(&["lun", "map", iqn, "0", "a", "--read-only"]);
    s.ctl_ok(&["lun", "map", iqn, "1", "b", "--read-only"]);
    replicate(&p, "sw");

    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (addr, written) = (p.addr, written.clone());
        std::thread::spawn(move || writer_until_refused(addr, iqn, &written))
    };
    wait_until("the writer to get going", Duration::from_secs(60), || {
        let n = written.load(Ordering::Acquire);
        (n >= 300).then_some(()).ok_or(n.to_string())
    });
    let out = p.ctl_ok(&["switchover", "sw"]);
    assert!(out.contains("switched over 'sw' at cut"), "{out}");
    eprintln!("{out}");
    // The writer's writes are refused from the switch on; every write it had
    // acknowledged is in the final cut, and nothing after it.
    let (acknowledged, kcq) = writer.join().unwrap();
    // During the switch: NOT READY, ASYMMETRIC ACCESS STATE TRANSITION (retried by
    // initiators); a writer descheduled past the switch meets the secondary's
    // read-only LUN (DATA PROTECT) instead.
    assert!(
        kcq == (0x02, 0x04, 0x0A) || kcq.0 == 0x07,
        "writes at the switch are refused as in transition: {kcq:02x?}"
    );
    let (a, b) = images(&s);
    assert_eq!(
        (a, b),
        after_writes(acknowledged),
        "the new primary is not the final cut"
    );
    equal_sides(&p, &s);
    let (sv, pv) = (show(&s, "sw"), show(&p, "sw"));
    assert_eq!(sv["role"], "primary", "{sv}");
    assert_eq!(pv["role"], "secondary", "{pv}");

    // Writes on the new primary replicate back, shipping only what changed.
    map_writable(&s, iqn);
    let mut c = RawClient::connect(s.addr);
    c.login("iqn.2026-11.test:writer", iqn, Digests::default());
    c.write10(0, 0, &block(0, 0, 200), BLOCK);
    c.write10(1, 0, &block(1, 0, 200), BLOCK);
    let back = replicate(&s, "sw");
    assert!(
        back["data_bytes"].as_u64().unwrap() + back["zero_bytes"].as_u64().unwrap() <= 2 * PAGE,
        "only the two written pages ship: {back}"
    );
    equal_sides(&p, &s);

    // And back again.
    let out = s.ctl_ok(&["switchover", "sw"]);
    assert!(out.contains("switched over"), "{out}");
    equal_sides(&p, &s);
    assert_eq!(show(&p, "sw")["role"], "primary");
    map_writable(&p, iqn);
    let mut c = RawClient::connect(p.addr);
    c.login("iqn.2026-11.test:writer", iqn, Digests::default());
    c.write10(0, 1, &block(0, 1, 201), BLOCK);
    let again = replicate(&p, "sw");
    assert!(again["data_bytes"].as_u64().unwrap() <= PAGE, "{again}");
    equal_sides(&p, &s);
}

/// Waits until `set` on `n` shows `status`; returns its view. The bound covers a
/// primary whose link was dead for a while: its next attempt comes after the retry
/// delay (at most 60 s, doubling from 2 s) and may itself wait 30 s for an answer.
fn wait_status(n: &TestServer, set: &str, status: &str) -> serde_json::Value {
    wait_until(
        &format!("{set} to show {status}"),
        Duration::from_secs(150),
        || {
            let v = show(n, set);
            if v["status"] == status {
                return Ok(v);
            }
            Err(v.to_string())
        },
    )
}

#[test]
fn a_split_brain_stops_both_sides_until_resolve_which_ships_only_changed_pages() {
    split_brain_resolved(false);
}

#[test]
fn a_split_brain_resolved_for_the_old_primary_makes_the_promoted_side_yield() {
    split_brain_resolved(true);
}

/// Both sides write after the promote; `resolve` on the old primary keeps the promoted
/// side's data (`--keep peer`), or its own (`keep_local`): the loser's content is kept
/// aside (copy-on-write), only the union of changed pages ships, and the sides end equal.
fn split_brain_resolved(keep_local: bool) {
    let (p, s, proxy) = pair_throttled(0);
    p.ctl_ok(&["volume", "create", "va", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    create_set(&p, "rs", &["--volume", "va"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x11 0 16m"]);
    let common_cut = replicate(&p, "rs")["cut_id"].as_u64().unwrap();

    // The link goes dead (a byte a second toward the secondary: no handshake gets
    // through): the primary's cycle fails and is retried, and it goes on serving
    // writes, while the secondary is promoted and written.
    proxy.set_rate(1);
    p.ctl_ok(&["replicate", "rs"]);
    wait_until(
        "the primary's cycle to fail over the dead link",
        Duration::from_secs(120),
        || {
            let v = show(&p, "rs");
            (v["status"] == "error").then_some(()).ok_or(v.to_string())
        },
    );
    s.ctl_ok(&["promote", "--volume", "va"]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    qemu_io(&s.url(DEMO_IQN, 1), &["write -P 0x55 20m 1m"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x66 30m 512k"]);

    // The link is back: the primary's next attempt finds the fork, and both sides stop.
    proxy.set_rate(0);
    proxy.cut();
    let pv = wait_status(&p, "rs", "split-brain");
    let sv = wait_status(&s, "rs", "split-brain");
    assert_eq!(pv["common_cut"], common_cut, "{pv}");
    assert_eq!(sv["common_cut"], common_cut, "{sv}");
    let p_pages = pv["pages_since_common_cut"].as_u64().unwrap();
    let s_pages = sv["pages_since_common_cut"].as_u64().unwrap();
    assert!(p_pages >= 128 && s_pages >= 256, "{pv} {sv}");
    let (p_image, s_image) = (
        std::fs::read(p.volume_file("va")).unwrap(),
        std::fs::read(s.volume_file("va")).unwrap(),
    );
    let cycles = (pv["cycles"].clone(), sv["cycles"].clone());
    observe_for("neither side to resume", Duration::from_secs(2), || {
        let (pv, sv) = (show(&p, "rs"), show(&s, "rs"));
        (pv["status"] == "split-brain"
            && sv["status"] == "split-brain"
            && (pv["cycles"].clone(), sv["cycles"].clone()) == cycles)
            .then_some(())
            .ok_or_else(|| format!("{pv} {sv}"))
    });
    assert!(std::fs::read(p.volume_file("va")).unwrap() == p_image);
    assert!(std::fs::read(s.volume_file("va")).unwrap() == s_image);
    for n in [&p, &s] {
        let (_, err) = n.ctl_refused(&["replicate", "rs"]);
        assert!(
            err["message"].as_str().unwrap().contains("resolve"),
            "{err}"
        );
    }
    let (_, err) = s.ctl_refused(&["failback", "rs"]);
    assert!(
        err["message"].as_str().unwrap().contains("split brain"),
        "{err}"
    );

    // Resolved from the old primary's side, keeping the promoted side's data or its own.
    let kept = format!("va.before-failback-{common_cut}");
    let keep = if keep_local { "local" } else { "peer" };
    let (winner, loser, won_image, lost_image) = if keep_local {
        (&p, &s, &p_image, &s_image)
    } else {
        (&s, &p, &s_image, &p_image)
    };
    // The winner's last cycle before the resolve: the resolve's own cycle can commit
    // before `resolve` returns, so it is told apart by its cut, not counted after.
    let last_before = show(winner, "rs")["last_cycle"]["cut_id"].clone();
    let out = p.ctl_ok(&["resolve", "rs", "--keep", keep]);
    if !keep_local {
        assert!(out.contains(&kept), "{out}");
    }
    let v = wait_until("the resolve's cycle", Duration::from_secs(120), || {
        let v = show(winner, "rs");
        assert!(v["error"].is_null(), "cycle failed: {v}");
        let cut = &v["last_cycle"]["cut_id"];
        match cut.as_u64() {
            Some(c) if *cut != last_before && c > common_cut && v["status"] == "ready" => Ok(v),
            _ => Err(v.to_string()),
        }
    });
    let c = &v["last_cycle"];
    let covered = c["data_bytes"].as_u64().unwrap() + c["zero_bytes"].as_u64().unwrap();
    let union_bound = (p_pages + s_pages) * PAGE;
    assert!(
        covered as f64 <= 1.05 * union_bound as f64 && covered >= (128 + 256) * PAGE,
        "shipped {covered} bytes of pages for a union of at most {union_bound}: {c}"
    );
    eprintln!("resolve shipped {covered} bytes of pages for {p_pages} + {s_pages} changed pages");
    assert!(
        std::fs::read(loser.volume_file("va")).unwrap() == *won_image,
        "the sides do not hold the kept side's data"
    );
    assert!(
        read_through_lun(loser, &kept) == *lost_image,
        "the loser's data is not in the kept volume"
    );
    assert_eq!(show(loser, "rs")["role"], "secondary");
    assert_eq!(show(winner, "rs")["role"], "primary");
}

#[test]
fn a_failback_after_a_promote_at_an_older_point_ships_what_the_roll_back_undid() {
    let (p, s) = pair();
    p.ctl_ok(&["volume", "create", "va", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    let url = p.url(DEMO_IQN, 1);
    create_set(&p, "rs", &["--volume", "va", "--keep", "4"]);
    qemu_io(&url, &["write -P 0x11 0 8m"]);
    let first = replicate(&p, "rs")["cut_id"].as_u64().unwrap();
    // Two more cuts, 1 MiB and 512 KiB, that the promote rolls back.
    qemu_io(&url, &["write -P 0x22 16m 1m"]);
    replicate(&p, "rs");
    qemu_io(&url, &["write -P 0x33 24m 512k"]);
    replicate(&p, "rs");

    s.ctl_ok(&[
        "promote",
        "--volume",
        "va",
        "--recovery-point",
        &first.to_string(),
    ]);
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "va"]);
    qemu_io(&s.url(DEMO_IQN, 1), &["write -P 0x44 32m 256k"]);
    p.ctl_ok(&["replicate", "rs"]);
    wait_status(&p, "rs", "peer-promoted");

    s.ctl_ok(&["failback", "rs"]);
    let v = wait_cycles(&s, "rs", 1);
    let c = &v["last_cycle"];
    let covered = c["data_bytes"].as_u64().unwrap() + c["zero_bytes"].as_u64().unwrap();
    // The rolled-back 1.5 MiB and the 256 KiB written since: 448 pages, not the 8 MiB
    // (and more) of written data.
    let union = (256 + 128 + 64) * PAGE;
    assert!(
        covered >= union && covered as f64 <= 1.05 * union as f64,
        "shipped {covered} bytes of pages for a union of {union}: {c}"
    );
    assert!(
        std::fs::read(p.volume_file("va")).unwrap() == std::fs::read(s.volume_file("va")).unwrap(),
        "the old primary does not hold the new primary's content"
    );
}

/// The whole of volume `v` of `node` as an initiator reads it (mapped read-only as LUN 9
/// of the demo target for the read): a copy-on-write clone's file is not its content.
fn read_through_lun(node: &TestServer, v: &str) -> Vec<u8> {
    node.ctl_ok(&["lun", "map", DEMO_IQN, "9", v, "--read-only"]);
    let size = node.volume_view(v)["size"].as_u64().unwrap() as usize;
    let mut c = RawClient::connect(node.addr);
    c.login("iqn.2026-11.test:kept-reader", DEMO_IQN, Digests::default());
    let mut out = Vec::with_capacity(size);
    for at in (0..size / BLOCK).step_by(128) {
        out.extend(c.read10(9, at as u32, 128, BLOCK));
    }
    drop(c);
    node.ctl_ok(&["lun", "unmap", DEMO_IQN, "9"]);
    out
}
