//! Connections that die without a word: a relay stops forwarding a live replication
//! connection mid-cut without closing it (as a vanished host or a dropped flow does),
//! while new connections still pass. The secondary must keep answering `ctl`, bound
//! its reads, let the primary's next attempt supersede the dead connection, and
//! promote without waiting for it.

mod common;

use std::time::{Duration, Instant};

use common::pair::{create_set_of_v, pair_of, replicate, show};
use common::proxy::Proxy;
use common::{qemu_io, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;

/// What every `ctl` query must answer within, stall or not.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A pair whose primary reaches the secondary through a relay of the test's; the
/// secondary starts with `secondary_env`.
fn stallable_pair(secondary_env: &[(&str, &str)]) -> (TestServer, TestServer, Proxy) {
    let mut secondary = TestServer::launch();
    for (k, v) in secondary_env {
        secondary = secondary.env(k, v);
    }
    let mut proxy = None;
    let (p, s) = pair_of(TestServer::launch(), secondary, |target| {
        let px = Proxy::start(target, 0);
        let addr = px.addr;
        proxy = Some(px);
        addr
    });
    (p, s, proxy.expect("the closure ran"))
}

/// A 64 MiB volume `v` at LUN 1 with 8 MiB written, in set `r` (keeping 4 points),
/// after its first cycle. Returns the cut id and the secondary's file at that cut.
fn first_cycle(p: &TestServer, s: &TestServer) -> (u64, Vec<u8>) {
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(&p.url(DEMO_IQN, 1), &["write -P 0x41 0 8m"]);
    create_set_of_v(p, &["--keep", "4"]);
    replicate(p, "r");
    let cut = show(s, "r")["last_cut_id"]
        .as_u64()
        .expect("a committed cut");
    (cut, std::fs::read(s.volume_file("v")).unwrap())
}

/// Latencies of the secondary's `ctl` answers while the link is stalled.
#[derive(Default)]
struct Latencies {
    queries: usize,
    worst: Duration,
    worst_query: String,
    /// Every cut the secondary said it was at.
    cuts_seen: Vec<u64>,
}

impl Latencies {
    /// Runs one `ctl` query on `s`, failing the test when it takes
    /// [`ANSWER_WITHIN`] or more.
    fn timed(&mut self, s: &TestServer, args: &[&str]) -> std::process::Output {
        let start = Instant::now();
        let out = s.ctl(args);
        let took = start.elapsed();
        assert!(
            took < ANSWER_WITHIN,
            "`ctl {}` on the secondary took {took:?} during the stall",
            args.join(" ")
        );
        self.queries += 1;
        if took > self.worst {
            self.worst = took;
            self.worst_query = args.join(" ");
        }
        out
    }

    /// `replication show`, `recovery-points` and a refused promote on the secondary,
    /// each timed; the set stays at a whole committed cut.
    fn probe(&mut self, s: &TestServer) {
        let out = self.timed(s, &["--json", "replication", "show", "r"]);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cut = v["last_cut_id"].as_u64().expect("a committed cut");
        if self.cuts_seen.last() != Some(&cut) {
            self.cuts_seen.push(cut);
        }
        let out = self.timed(s, &["--json", "recovery-points", "r"]);
        assert!(out.status.success(), "{out:?}");
        let points: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!points["points"].as_array().unwrap().is_empty(), "{points}");
        // A promote at a point the set does not have is refused, touching nothing.
        let out = self.timed(
            s,
            &["promote", "--volume", "v", "--recovery-point", "999999"],
        );
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no recovery point for cut 999999"),
            "unexpected refusal: {err}"
        );
    }
}

#[test]
fn a_stalled_link_holds_no_ctl_query_and_the_next_attempt_converges() {
    let (p, s, proxy) = stallable_pair(&[]);
    let url = p.url(DEMO_IQN, 1);
    let (cut1, at_cut1) = first_cycle(&p, &s);

    // 24 MiB to ship; the relay stalls the cycle's connection after 8 MiB of it.
    qemu_io(&url, &["write -P 0x42 8m 24m"]);
    proxy.stall_after(8 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_until(
        "the relay to stall the cycle's connection",
        Duration::from_secs(60),
        || match proxy.stalled() {
            0 => Err(show(&p, "r").to_string()),
            _ => Ok(()),
        },
    );
    let stalled = Instant::now();
    // Throughout the stall (the primary gives its attempt up after its 30 s answer
    // timeout, then retries) and until the set converges, the secondary answers.
    let mut seen = Latencies::default();
    let done = wait_until(
        "the set to converge after the stall",
        Duration::from_secs(150),
        || {
            seen.probe(&s);
            let v = show(&p, "r");
            if v["cycles"] == 2 && v["status"] == "ready" {
                return Ok(v);
            }
            Err(v.to_string())
        },
    );
    println!(
        "{} ctl queries on the secondary during the stall, the slowest (`{}`) in {:?}; \
         converged {:?} after the stall",
        seen.queries,
        seen.worst_query,
        seen.worst,
        stalled.elapsed()
    );
    assert!(seen.queries >= 30, "too few queries to cover the stall");
    // The attempt the relay stalled, then the one retry that completed the cycle.
    assert_eq!(done["last_cycle"]["attempts"], 2, "{done}");
    let cut2 = done["last_cut_id"].as_u64().unwrap();
    assert_eq!(show(&s, "r")["last_cut_id"], cut2);
    // The secondary went from the first cut to the second, never anywhere else.
    assert!(
        seen.cuts_seen == [cut1] || seen.cuts_seen == [cut1, cut2],
        "cuts seen: {:?}",
        seen.cuts_seen
    );
    assert!(
        s.stderr().contains("supersedes"),
        "the retry did not supersede the stalled connection"
    );
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == std::fs::read(s.volume_file("v")).unwrap(),
        "the secondary's file differs from the primary's"
    );

    // Last step: a failover while the next cycle's connection is stalled. The promote
    // stops the cut in flight instead of waiting for it, and the volume holds exactly
    // the first cut's content.
    qemu_io(&url, &["write -P 0x43 0 16m"]);
    proxy.stall_after(4 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_until(
        "the relay to stall the next cycle's connection",
        Duration::from_secs(60),
        || match proxy.stalled() {
            1 => Err(show(&p, "r").to_string()),
            _ => Ok(()),
        },
    );
    let start = Instant::now();
    s.ctl_ok(&[
        "promote",
        "--volume",
        "v",
        "--recovery-point",
        &cut1.to_string(),
    ]);
    let took = start.elapsed();
    println!("promote to cut {cut1} during a stall took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "promote took {took:?} during a stall"
    );
    assert!(
        std::fs::read(s.volume_file("v")).unwrap() == at_cut1,
        "the promoted volume is not the first cut's content"
    );
}

/// A secondary whose commit takes longer than the primary's 30 s answer timeout (a
/// slow disk, here a 35 s wait before the commit) is not a dead peer: it says every
/// few seconds that it is still committing, and the cycle commits in its first
/// attempt, with no error on the way.
#[test]
fn a_commit_slower_than_the_answer_timeout_completes_in_its_first_attempt() {
    let (p, s, _proxy) = stallable_pair(&[("TWINLUN_TEST_COMMIT_DELAY_MS", "35000")]);
    let (cut, image) = first_cycle(&p, &s);
    let v = show(&p, "r");
    let c = &v["last_cycle"];
    assert_eq!(c["attempts"], 1, "{v}");
    assert!(c["seconds"].as_f64().unwrap() >= 35.0, "{v}");
    assert_eq!(v["last_cut_id"], cut, "{v}");
    assert!(image == std::fs::read(p.volume_file("v")).unwrap());
}

#[test]
fn a_silent_primary_is_given_up_by_the_secondary() {
    // The secondary's bound on a cut in flight, made short for the test (60 s
    // otherwise); the primary's own answer timeout stays 30 s.
    let limit_ms = "2000";
    let (p, s, proxy) = stallable_pair(&[("TWINLUN_TEST_CUT_READ_LIMIT_MS", limit_ms)]);
    let url = p.url(DEMO_IQN, 1);
    first_cycle(&p, &s);
    qemu_io(&url, &["write -P 0x44 8m 24m"]);
    proxy.stall_after(8 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_until(
        "the relay to stall the cycle's connection",
        Duration::from_secs(60),
        || match proxy.stalled() {
            0 => Err(show(&p, "r").to_string()),
            _ => Ok(()),
        },
    );
    let stalled = Instant::now();
    let mut seen = Latencies::default();
    wait_until(
        "the secondary to give the silent connection up",
        Duration::from_secs(20),
        || {
            seen.probe(&s);
            let log = s.stderr();
            match log.contains("the peer sent nothing for 2 s") {
                true => Ok(()),
                false => Err("no read timeout logged yet".into()),
            }
        },
    );
    let gave_up = stalled.elapsed();
    println!("the secondary gave the stalled connection up {gave_up:?} after the stall");
    // Well before the primary's own 30 s answer timeout ends its attempt.
    assert!(gave_up < Duration::from_secs(20), "{gave_up:?}");
    assert_ne!(
        show(&p, "r")["cycles"],
        2,
        "the stalled attempt cannot have committed"
    );
    // The primary's retry then finds the store free and converges.
    let done = wait_until(
        "the set to converge after the stall",
        Duration::from_secs(150),
        || {
            seen.probe(&s);
            let v = show(&p, "r");
            if v["cycles"] == 2 && v["status"] == "ready" {
                return Ok(v);
            }
            Err(v.to_string())
        },
    );
    assert_eq!(done["last_cycle"]["attempts"], 2, "{done}");
    let at_cut2 = std::fs::read(s.volume_file("v")).unwrap();
    assert!(
        std::fs::read(p.volume_file("v")).unwrap() == at_cut2,
        "the secondary's file differs from the primary's"
    );

    // Last step: a failover at the latest point while the next cut is stalled midway:
    // the cut in flight is given up, the volume stays at the second cut.
    qemu_io(&url, &["write -P 0x45 0 16m"]);
    proxy.stall_after(4 << 20);
    p.ctl_ok(&["replicate", "r"]);
    wait_until(
        "the relay to stall the next cycle's connection",
        Duration::from_secs(60),
        || match proxy.stalled() {
            1 => Err(show(&p, "r").to_string()),
            _ => Ok(()),
        },
    );
    let start = Instant::now();
    s.ctl_ok(&["promote", "--volume", "v"]);
    let took = start.elapsed();
    println!("promote at the latest point during a stall took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "promote took {took:?} during a stall"
    );
    assert!(
        std::fs::read(s.volume_file("v")).unwrap() == at_cut2,
        "the promoted volume is not the last committed cut's content"
    );
    s.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    qemu_io(
        &s.url(DEMO_IQN, 1),
        &["write -P 0x46 0 1m", "read -P 0x46 0 1m"],
    );
}
