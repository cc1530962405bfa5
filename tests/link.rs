//! The replication link: TLS 1.3 on every peer connection, secret proofs bound to the
//! TLS session, key pinning both ways, and a listener that bounds connections before
//! they authenticate. Real processes, real sockets.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pair::{create_set_of_v, pair, pair_via, replicate, show};
use common::proxy::Proxy;
use common::{qemu_io, wait_until, TestServer, DEMO_IQN};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use twinlun::replication::tls::Tls;

/// 1 MiB of noise, as a file for `qemu-io write -s`, and its bytes.
fn random_pattern(dir: &std::path::Path) -> (String, Vec<u8>) {
    let pattern: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    let path = dir.join("pattern");
    std::fs::write(&path, &pattern).unwrap();
    (path.display().to_string(), pattern)
}

/// How many of `pattern`'s 64-byte aligned chunks occur anywhere in `haystack`.
fn chunks_found(pattern: &[u8], haystack: &[u8]) -> usize {
    use std::collections::{HashMap, HashSet};
    let chunks: HashSet<&[u8]> = pattern.chunks_exact(64).collect();
    // Candidates by their first 8 bytes, then the whole chunk.
    let mut by_prefix: HashMap<[u8; 8], Vec<&[u8]>> = HashMap::new();
    for c in &chunks {
        by_prefix
            .entry(c[..8].try_into().unwrap())
            .or_default()
            .push(c);
    }
    let mut found = HashSet::new();
    for i in 0..haystack.len().saturating_sub(63) {
        let prefix: [u8; 8] = haystack[i..i + 8].try_into().unwrap();
        if let Some(cands) = by_prefix.get(&prefix) {
            for c in cands {
                if &haystack[i..i + 64] == *c {
                    found.insert(*c);
                }
            }
        }
    }
    found.len()
}

/// `volume v` (64 MiB) mapped as LUN 1 on the primary; returns its URL.
fn volume_v(p: &TestServer) -> String {
    p.ctl_ok(&["volume", "create", "v", "--size", "64M"]);
    p.ctl_ok(&["lun", "map", DEMO_IQN, "1", "v"]);
    p.url(DEMO_IQN, 1)
}

#[test]
fn a_capture_of_the_link_holds_none_of_the_data_shipped() {
    let mut proxy = None;
    let (p, s) = pair_via(|target| {
        let px = Proxy::start(target, 0);
        let addr = px.addr;
        proxy = Some(px);
        addr
    });
    let proxy = proxy.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, pattern) = random_pattern(dir.path());
    // The detector finds the pattern where it is in clear.
    assert_eq!(chunks_found(&pattern, &pattern), 1 << 14);
    let url = volume_v(&p);
    qemu_io(&url, &[format!("write -s {file} 4m 1m")]);
    proxy.record();
    create_set_of_v(&p, &["--compress", "none"]);
    let cycle = replicate(&p, "r");
    assert!(cycle["data_bytes"].as_u64().unwrap() >= 1 << 20, "{cycle}");
    let captured = proxy.captured();
    assert!(
        captured.len() > 1 << 20,
        "the capture holds {} bytes: the cycle went another way",
        captured.len()
    );
    assert_eq!(
        chunks_found(&pattern, &captured),
        0,
        "the link carried the volume's data in clear"
    );
    // And the secondary has it: the bytes went, encrypted.
    let got = std::fs::read(s.volume_file("v")).unwrap();
    assert!(
        got[4 << 20..5 << 20] == pattern[..],
        "the secondary differs"
    );
}

/// A relay on the path: passes TCP through, or, when `terminate` is set, terminates
/// TLS with its own key on both legs (as a man in the middle who owns a certificate
/// would) and relays the plaintext between them.
struct Relay {
    addr: SocketAddr,
    terminate: Arc<AtomicBool>,
    /// Connections relayed with TLS terminated.
    intercepted: Arc<AtomicUsize>,
    _key: tempfile::TempDir,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let key = tempfile::tempdir().unwrap();
        let tls = Arc::new(Tls::load_or_create(key.path()).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let terminate = Arc::new(AtomicBool::new(false));
        let intercepted = Arc::new(AtomicUsize::new(0));
        let (t, n) = (terminate.clone(), intercepted.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    let (tls, t, n) = (tls.clone(), t.clone(), n.clone());
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        if !t.load(Ordering::Acquire) {
                            let (mut a, mut b) = (client, server);
                            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                            return;
                        }
                        let Ok(mut a) = tls.acceptor().accept(client).await else {
                            return;
                        };
                        let Ok(mut b) = tls.connector().connect(Tls::server_name(), server).await
                        else {
                            return;
                        };
                        n.fetch_add(1, Ordering::AcqRel);
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    });
                }
            });
        });
        Relay {
            addr,
            terminate,
            intercepted,
            _key: key,
        }
    }
}

#[test]
fn a_relay_that_terminates_tls_cannot_authenticate_either_way() {
    let mut relay = None;
    let (p, s) = pair_via(|target| {
        let r = Relay::start(target);
        let addr = r.addr;
        relay = Some(r);
        addr
    });
    let relay = relay.unwrap();
    let url = volume_v(&p);
    qemu_io(&url, &["write -P 0x31 0 1m"]);

    // Nothing pinned yet, and still the relay gets nowhere: the proofs are bound to
    // the TLS session, and the relay's two sessions differ.
    let volumes = s.ctl_json(&["volume", "list"]);
    relay.terminate.store(true, Ordering::Release);
    let (out, v) = p.ctl_refused(&[
        "replication",
        "create",
        "r",
        "--volume",
        "v",
        "--peer",
        "dr",
    ]);
    assert_eq!(v["code"], "auth_failed", "{out}");
    assert!(out.contains("authentication failed"), "{out}");
    assert!(relay.intercepted.load(Ordering::Acquire) >= 1);
    assert_eq!(
        s.ctl_json(&["volume", "list"]),
        volumes,
        "the secondary created something for an unauthenticated request"
    );
    assert!(s.ctl_json(&["peer", "show", "prod"])["pinned_key"].is_null());
    assert!(p.ctl_json(&["peer", "show", "dr"])["pinned_key"].is_null());

    // Through plain TCP the set is made and a cycle commits.
    relay.terminate.store(false, Ordering::Release);
    create_set_of_v(&p, &["--compress", "none"]);
    replicate(&p, "r");
    let points = s.ctl_json(&["recovery-points", "r"])["points"].clone();

    // The relay terminates TLS again: the cycle fails with an authentication error,
    // and nothing reaches the secondary.
    qemu_io(&url, &["write -P 0x32 0 1m"]);
    relay.terminate.store(true, Ordering::Release);
    let before = relay.intercepted.load(Ordering::Acquire);
    p.ctl_ok(&["replicate", "r"]);
    let failed = wait_until(
        "the cycle through the relay to fail",
        Duration::from_secs(60),
        || {
            let v = show(&p, "r");
            match v["error"].as_str() {
                Some(e) => Ok(e.to_string()),
                None => Err(v.to_string()),
            }
        },
    );
    assert!(failed.contains("authentication failed"), "{failed}");
    assert!(relay.intercepted.load(Ordering::Acquire) > before);
    assert_eq!(s.ctl_json(&["recovery-points", "r"])["points"], points);
    let secondary = std::fs::read(s.volume_file("v")).unwrap();
    assert!(
        secondary[..1 << 20].iter().all(|b| *b == 0x31),
        "the secondary changed"
    );
    let r = show(&p, "r");
    assert_eq!(r["cycles"], 1, "{r}");
}

fn key_of(node: &TestServer) -> String {
    node.ctl_json(&["status"])["tls_key"]
        .as_str()
        .expect("status shows this node's key")
        .to_string()
}

/// Waits until the set shows an error, returns it.
fn set_error(p: &TestServer, set: &str) -> String {
    wait_until("the set to show an error", Duration::from_secs(60), || {
        let v = show(p, set);
        match v["error"].as_str() {
            Some(e) => Ok(e.to_string()),
            None => Err(v.to_string()),
        }
    })
}

/// Asks for a cycle (one may be retrying already) and waits until `cycles` committed
/// and the set is ready without an error.
fn converge(p: &TestServer, set: &str, cycles: u64) {
    let _ = p.ctl(&["replicate", set]);
    wait_until("the set to converge", Duration::from_secs(120), || {
        let v = show(p, set);
        if v["cycles"].as_u64().unwrap() >= cycles && v["status"] == "ready" && v["error"].is_null()
        {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
}

/// Stops `node`, deletes its key, starts it again: a node whose key was regenerated.
fn regenerate_key(node: &mut TestServer) -> String {
    let old = key_of(node);
    node.stop();
    std::fs::remove_dir_all(node.data_path("tls")).unwrap();
    node.restart();
    let new = key_of(node);
    assert_ne!(old, new);
    new
}

#[test]
fn a_changed_key_is_refused_until_accepted_on_either_side() {
    let (mut p, mut s) = pair();
    let url = volume_v(&p);
    qemu_io(&url, &["write -P 0x41 0 1m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    let (p_key, s_key) = (key_of(&p), key_of(&s));
    assert!(p_key.starts_with("sha256:") && p_key.len() == 71, "{p_key}");
    // Pinned at first contact, each side the other's key.
    let dr = p.ctl_json(&["peer", "show", "dr"]);
    assert_eq!(dr["pinned_key"], s_key.as_str(), "{dr}");
    assert_eq!(dr["local_key"], p_key.as_str(), "{dr}");
    assert_eq!(dr["last_link"]["presented_key"], s_key.as_str(), "{dr}");
    assert_eq!(dr["last_link"]["tls_version"], "TLSv1.3", "{dr}");
    let prod = wait_until(
        "the secondary to pin the primary",
        Duration::from_secs(10),
        || {
            let v = s.ctl_json(&["peer", "show", "prod"]);
            if v["pinned_key"].is_string() {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    assert_eq!(prod["pinned_key"], p_key.as_str(), "{prod}");
    let check = p.ctl_json(&["peer", "check", "dr"]);
    assert_eq!(check["presented_key"], s_key.as_str(), "{check}");
    assert_eq!(check["pinned_key"], s_key.as_str(), "{check}");
    assert_eq!(check["tls_version"], "TLSv1.3", "{check}");
    assert!(
        check["cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{check}"
    );
    let human = p.ctl_ok(&["peer", "show", "dr"]);
    assert!(human.contains(&s_key) && human.contains(&p_key), "{human}");

    // The secondary's key is regenerated: the primary refuses it, naming both keys
    // and the fix, until the admin accepts it.
    let s_new = regenerate_key(&mut s);
    qemu_io(&url, &["write -P 0x42 0 1m"]);
    p.ctl_ok(&["replicate", "r"]);
    let e = set_error(&p, "r");
    for want in [
        s_key.as_str(),
        s_new.as_str(),
        "peer update dr --accept-new-key",
    ] {
        assert!(e.contains(want), "{want} missing from: {e}");
    }
    let check = p.ctl(&["peer", "check", "dr"]);
    assert!(!check.status.success(), "peer check passed a changed key");
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains(&s_new) && check.contains(&s_key), "{check}");
    assert_eq!(show(&p, "r")["cycles"], 1);
    let out = p.ctl_ok(&["peer", "update", "dr", "--accept-new-key"]);
    assert!(out.contains(&s_new), "{out}");
    assert_eq!(
        p.ctl_json(&["peer", "show", "dr"])["pinned_key"],
        s_new.as_str()
    );
    converge(&p, "r", 2);

    // The primary's key is regenerated: now the secondary's listener refuses it.
    let p_new = regenerate_key(&mut p);
    qemu_io(&url, &["write -P 0x43 0 1m"]);
    p.ctl_ok(&["replicate", "r"]);
    let e = set_error(&p, "r");
    for want in [
        p_key.as_str(),
        p_new.as_str(),
        "peer update prod --accept-new-key",
    ] {
        assert!(e.contains(want), "{want} missing from: {e}");
    }
    assert_eq!(show(&p, "r")["cycles"], 2);
    // The primary answers on its own listener: the secondary pins what it presents.
    let out = s.ctl_ok(&["peer", "update", "prod", "--accept-new-key"]);
    assert!(out.contains(&p_new), "{out}");
    converge(&p, "r", 3);
    let got = std::fs::read(s.volume_file("v")).unwrap();
    assert!(got[..1 << 20].iter().all(|b| *b == 0x43));
}

#[test]
fn accepting_a_new_key_of_a_silent_peer_clears_the_pin_for_the_next_contact() {
    let (mut p, mut s) = pair();
    let url = volume_v(&p);
    qemu_io(&url, &["write -P 0x51 0 64k"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    let s_new = regenerate_key(&mut s);
    s.stop();
    let out = p.ctl_ok(&["peer", "update", "dr", "--accept-new-key"]);
    assert!(out.contains("pin cleared"), "{out}");
    assert!(p.ctl_json(&["peer", "show", "dr"])["pinned_key"].is_null());
    // The pin survives a restart as it is (none), and the next contact pins.
    p.restart();
    assert!(p.ctl_json(&["peer", "show", "dr"])["pinned_key"].is_null());
    s.restart();
    replicate(&p, "r");
    assert_eq!(
        p.ctl_json(&["peer", "show", "dr"])["pinned_key"],
        s_new.as_str()
    );
    // And `update` with nothing to change is a usage error naming what it takes.
    let o = p.ctl(&["peer", "update", "dr"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--accept-new-key"),
        "{o:?}"
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The first bytes a TLS client sends: a whole ClientHello record.
fn client_hello(tls: &Tls) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, mut s) = tokio::io::duplex(1 << 16);
        let connect = tls.connector().connect(Tls::server_name(), c);
        let read = async {
            let mut buf = vec![0u8; 1 << 16];
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap();
            buf.truncate(n);
            buf
        };
        tokio::select! {
            _ = connect => unreachable!("no server answers"),
            hello = read => hello,
        }
    })
}

#[test]
fn strangers_before_authentication_cannot_crowd_out_or_bloat_the_listener() {
    let (p, s) = pair();
    let url = volume_v(&p);
    qemu_io(&url, &["write -P 0x61 0 1m"]);
    create_set_of_v(&p, &[]);
    replicate(&p, "r");
    let target = s.repl_addr.unwrap();
    let pid = s.child.as_ref().unwrap().id();
    let rss_before = vm_rss_kib(pid);

    let key = tempfile::tempdir().unwrap();
    let tls = Arc::new(Tls::load_or_create(key.path()).unwrap());
    let hello = client_hello(&tls);
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    // How long each lived, from connect to the listener closing it.
    let lifetimes = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    // Each stranger's connection, held open by the test; a task per connection
    // counts it closed when the listener closes it.
    let mut held = Vec::new();
    rt.block_on(async {
        for i in 0..500usize {
            let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
            let born = Instant::now();
            let closed = closed.clone();
            let lifetimes = lifetimes.clone();
            match i % 4 {
                // Silent.
                0 => held.push(tokio::spawn(async move {
                    let mut tcp = tcp;
                    let mut b = [0u8; 64];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut tcp, &mut b).await {
                        if n == 0 {
                            break;
                        }
                    }
                    lifetimes.lock().unwrap().push(born.elapsed());
                    closed.fetch_add(1, Ordering::AcqRel);
                })),
                // A ClientHello cut midway.
                1 => {
                    let mut tcp = tcp;
                    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
                    held.push(tokio::spawn(async move {
                        let mut b = [0u8; 64];
                        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut tcp, &mut b).await {
                            if n == 0 {
                                break;
                            }
                        }
                        lifetimes.lock().unwrap().push(born.elapsed());
                        closed.fetch_add(1, Ordering::AcqRel);
                    }));
                }
                // After TLS, a Hello and then nothing; or a frame header announcing a
                // MiB with a few bytes of body.
                kind => {
                    let connector = tls.connector();
                    held.push(tokio::spawn(async move {
                        if let Ok(mut t) = connector.connect(Tls::server_name(), tcp).await {
                            let frame = if kind == 2 {
                                let body = format!(
                                    r#"{{"msg":"hello","version":2,"nonce":"{}"}}"#,
                                    "ab".repeat(32)
                                );
                                let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
                                f.push(1);
                                f.extend_from_slice(body.as_bytes());
                                f
                            } else {
                                let mut f = ((1u32 << 20) + 1).to_be_bytes().to_vec();
                                f.push(2);
                                f.extend_from_slice(&[7u8; 100]);
                                f
                            };
                            let _ = t.write_all(&frame).await;
                            let _ = t.flush().await;
                            let mut b = [0u8; 256];
                            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut t, &mut b).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        lifetimes.lock().unwrap().push(born.elapsed());
                        closed.fetch_add(1, Ordering::AcqRel);
                    }));
                }
            }
        }
    });
    // Beyond the 64 that may wait, the listener closed them (the oldest first).
    wait_until(
        "the listener to close all but 64 strangers",
        Duration::from_secs(60),
        || {
            let n = closed.load(Ordering::Acquire);
            if n >= 500 - 64 {
                Ok(())
            } else {
                Err(format!("{n} closed"))
            }
        },
    );
    // They were dropped for newer ones (or for a frame over the bound), not left to
    // time out: all but the last 64 closed well within the handshake bound.
    let quick = lifetimes
        .lock()
        .unwrap()
        .iter()
        .filter(|d| **d < Duration::from_secs(9))
        .count();
    assert!(quick >= 500 - 64, "only {quick} closed within 9 s");
    let rss_flooded = vm_rss_kib(pid);
    println!("VmRSS before {rss_before} KiB, after 500 strangers {rss_flooded} KiB");
    assert!(
        rss_flooded <= rss_before + 10 * 1024,
        "VmRSS grew from {rss_before} to {rss_flooded} KiB"
    );

    // A real peer still gets in, while the last strangers wait.
    qemu_io(&url, &["write -P 0x62 0 1m"]);
    let cycle = replicate(&p, "r");
    assert!(cycle["data_bytes"].as_u64().unwrap() >= 1 << 20, "{cycle}");

    // Every stranger is gone within the handshake bound.
    wait_until("every stranger closed", Duration::from_secs(30), || {
        let n = closed.load(Ordering::Acquire);
        if n == 500 {
            Ok(())
        } else {
            Err(format!("{n} closed"))
        }
    });
    let rss_after = vm_rss_kib(pid);
    println!("VmRSS after the strangers left {rss_after} KiB");
    assert!(rss_after <= rss_before + 10 * 1024);
    drop(held);

    // A silent connection alone is closed by the listener within 10 s.
    let mut silent = std::net::TcpStream::connect(target).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 16];
    let n = silent
        .read(&mut b)
        .expect("the listener closes, not the timeout");
    let took = t0.elapsed();
    assert_eq!(n, 0, "EOF");
    assert!(
        took <= Duration::from_secs(12),
        "a silent connection lived {took:?}"
    );
    println!("a silent connection was closed after {took:?}");
    let v: Value = show(&p, "r");
    assert_eq!(v["status"], "ready", "{v}");
}

/// A build from before TLS sends its Hello in plaintext: it gets the version refusal in
/// its own framing, saying both versions, and nothing else happens.
#[test]
fn a_plaintext_peer_gets_the_version_refusal() {
    use std::io::Write;
    let s = TestServer::start_with(&["--replication-listen", "127.0.0.1:0"]);
    let mut c = std::net::TcpStream::connect(s.repl_addr.unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = format!(
        r#"{{"msg":"hello","version":1,"nonce":"{}"}}"#,
        "cd".repeat(32)
    );
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(body.as_bytes());
    c.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer.get(4), Some(&1u8), "a control frame: {answer:?}");
    let v: Value = serde_json::from_slice(&answer[5..]).unwrap();
    assert_eq!(v["msg"], "error", "{v}");
    assert_eq!(v["code"], "version", "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains('2') && m.contains('1'), "{m}");
}
