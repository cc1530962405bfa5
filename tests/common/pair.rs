//! Two twinlun processes that replicate to each other on loopback, and what tests ask
//! of their sets: the pair (directly or through a fault-injecting proxy), creating a
//! set, waiting for cycles, progress and convergence.

use std::time::Duration;

use serde_json::Value;

use super::proxy::Proxy;
use super::{free_port, wait_until, Launch, TestServer};

/// The secret both nodes of a pair share.
pub const SECRET: &str = "replication-secret-1";

/// A primary and a secondary that name each other with the same secret; the
/// primary reaches the secondary at `via` when given (a proxy), else directly.
pub fn pair_via(
    via: impl FnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
) -> (TestServer, TestServer) {
    pair_launched(TestServer::launch(), via)
}

/// `pair_via` with the primary started from `primary` (its environment, say).
pub fn pair_launched(
    primary: Launch,
    via: impl FnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
) -> (TestServer, TestServer) {
    pair_of(primary, TestServer::launch(), via)
}

/// `pair_via` with both nodes started from what the test prepared.
pub fn pair_of(
    primary: Launch,
    secondary: Launch,
    via: impl FnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
) -> (TestServer, TestServer) {
    let primary_repl = format!("127.0.0.1:{}", free_port());
    let secondary_repl = format!("127.0.0.1:{}", free_port());
    let p = primary
        .args(&["--replication-listen", &primary_repl])
        .start();
    let s = secondary
        .args(&["--replication-listen", &secondary_repl])
        .start();
    let target = via(s.repl_addr.expect("secondary replication address"));
    p.ctl_ok(&[
        "peer",
        "create",
        "dr",
        &target.to_string(),
        "--secret",
        SECRET,
    ]);
    s.ctl_ok(&["peer", "create", "prod", &primary_repl, "--secret", SECRET]);
    (p, s)
}

/// `pair_via` a throttling proxy carrying `bytes_per_sec` toward the secondary.
pub fn pair_throttled(bytes_per_sec: u64) -> (TestServer, TestServer, Proxy) {
    let mut proxy = None;
    let (p, s) = pair_via(|target| {
        let px = Proxy::start(target, bytes_per_sec);
        let addr = px.addr;
        proxy = Some(px);
        addr
    });
    (p, s, proxy.expect("pair_via calls the closure"))
}

pub fn pair() -> (TestServer, TestServer) {
    pair_via(|a| a)
}

pub fn show(s: &TestServer, set: &str) -> Value {
    s.ctl_json(&["replication", "show", set])
}

/// Waits until the set has run `cycles` cycles and is not running; panics on a
/// timeout or when the set reports an error.
pub fn wait_cycles(p: &TestServer, set: &str, cycles: u64) -> Value {
    let what = format!("cycle {cycles} of {set}");
    wait_until(&what, Duration::from_secs(120), || {
        let v = show(p, set);
        if v["cycles"].as_u64().unwrap() >= cycles && v["status"] != "replicating" {
            assert_eq!(v["status"], "ready", "{v}");
            return Ok(v);
        }
        assert!(v["error"].is_null(), "cycle failed: {v}");
        Err(v.to_string())
    })
}

/// `replicate` and wait for that cycle; returns its `last_cycle`.
pub fn replicate(p: &TestServer, set: &str) -> Value {
    let before = show(p, set)["cycles"].as_u64().unwrap();
    p.ctl_ok(&["replicate", set]);
    wait_cycles(p, set, before + 1)["last_cycle"].clone()
}

/// `replication create SET ARGS... --peer dr` on the primary.
pub fn create_set(p: &TestServer, set: &str, args: &[&str]) {
    let mut all = vec!["replication", "create", set, "--peer", "dr"];
    all.extend_from_slice(args);
    p.ctl_ok(&all);
}

/// `replication create r --volume v --peer dr` on the primary, with `extra` options.
pub fn create_set_of_v(p: &TestServer, extra: &[&str]) {
    let mut args = vec!["--volume", "v"];
    args.extend_from_slice(extra);
    create_set(p, "r", &args);
}

/// Waits until the running cycle of `set` has shipped at least `bytes`.
pub fn wait_progress(p: &TestServer, set: &str, bytes: u64) {
    let what = format!("{set}'s running cycle to ship {bytes} bytes");
    wait_until(&what, Duration::from_secs(60), || {
        let v = show(p, set);
        if v["progress"]["bytes_done"].as_u64().unwrap_or(0) >= bytes {
            return Ok(());
        }
        Err(v.to_string())
    })
}

/// Waits (through failed attempts) until `set` has committed `cycles` cycles and is
/// ready; returns its view.
pub fn wait_converged(p: &TestServer, set: &str, cycles: u64) -> Value {
    let what = format!("{set} to converge at {cycles} cycles, ready");
    wait_until(&what, Duration::from_secs(120), || {
        let v = show(p, set);
        if v["cycles"] == cycles && v["status"] == "ready" {
            return Ok(v);
        }
        Err(v.to_string())
    })
}

/// Status transitions a set reports, oldest first, without their times.
pub fn statuses(p: &TestServer, set: &str) -> Vec<String> {
    show(p, set)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().split(' ').nth(1).unwrap().to_string())
        .collect()
}
