//! Failover on the secondary, between two twinlun processes on loopback: `promote`
//! racing a cut that arrives while it runs (every promoted image is exactly one
//! committed cut, the one it reports, and stays so), `promote` refusing a volume of a
//! group set, secondaries keeping the primary's geometry, and `replication delete
//! --force` with the peer gone.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::dependent::{after_writes, dependent_writer_counted, generations, BLOCK, BLOCKS};
use common::pair::{create_set, pair, pair_via, replicate, show, wait_cycles};
use common::raw::RawClient;
use common::{wait_until, TestServer};
use twinlun::iscsi::pdu::Digests;

const IQN: &str = "iqn.2026-11.test:promote";
const INITIATOR: &str = "iqn.2026-11.test:promote-filler";

/// A relay toward the secondary that can hold back the rest of a cut: once a
/// connection has forwarded `hold_at` bytes from the primary, what the primary sends
/// next is buffered (read, so the primary finishes sending and waits for the answer)
/// until `release`, then written at once. The secondary then stages, commits and
/// applies the cut while the test promotes.
struct HoldRelay {
    addr: SocketAddr,
    hold_at: Arc<AtomicU64>,
    /// Bytes buffered by the holding connection.
    held: Arc<AtomicU64>,
    holding: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

impl HoldRelay {
    fn start(target: SocketAddr) -> HoldRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = HoldRelay {
            addr: listener.local_addr().unwrap(),
            hold_at: Arc::default(),
            held: Arc::default(),
            holding: Arc::default(),
            release: Arc::default(),
        };
        let (hold_at, held, holding, release) = (
            relay.hold_at.clone(),
            relay.held.clone(),
            relay.holding.clone(),
            relay.release.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let gate = Gate {
                    hold_at: hold_at.clone(),
                    held: held.clone(),
                    holding: holding.clone(),
                    release: release.clone(),
                };
                std::thread::spawn(move || forward(client, server, Some(gate)));
                std::thread::spawn(move || forward(s2, c2, None));
            }
        });
        relay
    }

    /// The next connection that forwards `bytes` from the primary holds the rest.
    fn hold_after(&self, bytes: u64) {
        self.release.store(false, Ordering::Release);
        self.held.store(0, Ordering::Release);
        self.holding.store(false, Ordering::Release);
        self.hold_at.store(bytes, Ordering::Release);
    }

    fn release(&self) {
        self.release.store(true, Ordering::Release);
    }
}

struct Gate {
    hold_at: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    holding: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
}

fn forward(mut from: TcpStream, mut to: TcpStream, gate: Option<Gate>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        moved += n as u64;
        let Some(g) = &gate else { continue };
        let at = g.hold_at.load(Ordering::Acquire);
        if at == 0
            || moved < at
            || g.hold_at
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        // Hold: keep reading what the primary sends, forward none of it until released.
        g.holding.store(true, Ordering::Release);
        let mut kept = Vec::new();
        from.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut closed = false;
        while !g.release.load(Ordering::Acquire) {
            match from.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    g.held.store(kept.len() as u64, Ordering::Release);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while !closed && !g.release.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(5));
        }
        from.set_read_timeout(None).unwrap();
        if to.write_all(&kept).is_err() || closed {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The filler volume's size: its rewrite makes the raced cut long enough to apply
/// (undo log, data, fsyncs) that a promote lands in it.
const FILLER: usize = 4 << 20;

/// Fills volume `c` (LUN 2) with `byte`, 64 KiB per WRITE.
fn fill(p: &TestServer, byte: u8) {
    let mut c = RawClient::connect(p.addr);
    c.login(INITIATOR, IQN, Digests::default());
    let chunk = vec![byte; 64 << 10];
    for i in 0..FILLER / chunk.len() {
        c.write10(2, (i * chunk.len() / BLOCK) as u32, &chunk, BLOCK);
    }
}

/// What the secondary's files hold of a, b and c: the number of dependent writes the
/// images of a and b are the state after (checked consistent), and the single byte
/// every byte of c holds (checked whole).
fn image(s: &TestServer, what: &str) -> (usize, u8) {
    let a = generations(0, &std::fs::read(s.volume_file("a")).unwrap());
    let b = generations(1, &std::fs::read(s.volume_file("b")).unwrap());
    for i in 0..BLOCKS {
        assert!(
            b[i] <= a[i],
            "{what}: B[{i}] at pass {} but A only at {}",
            b[i],
            a[i]
        );
    }
    let k: usize = a.iter().chain(&b).map(|&g| usize::from(g)).sum();
    assert_eq!((a, b), after_writes(k), "{what}: a and b are not one cut");
    let c = std::fs::read(s.volume_file("c")).unwrap();
    let first = c[0];
    let mixed = c.iter().filter(|&&x| x != first).count();
    assert_eq!(
        mixed, 0,
        "{what}: c is torn ({mixed} bytes differ from {first:#x})"
    );
    (k, first)
}

fn wait_writes(written: &AtomicUsize, n: usize) {
    wait_until(
        &format!("{n} writes"),
        Duration::from_secs(30),
        || match written.load(Ordering::Acquire) {
            w if w >= n => Ok(()),
            w => Err(format!("{w} writes")),
        },
    )
}

/// The cut a promote's answer names ("... at cut 12, its latest recovery point: ...").
fn promoted_cut(answer: &str) -> u64 {
    let at = answer.find(" at cut ").expect(answer) + " at cut ".len();
    answer[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cut in {answer:?}"))
}

/// One trial: a fresh group a, b, c replicated with `keep`; two cycles commit, then a
/// third (c rewritten whole, the dependent writer running) is held back by the relay,
/// released, and `promote --group g` runs `jitter` later, while it is received,
/// staged, committed or applied. The promoted image must be exactly cut 2 or cut 3,
/// the one the promote named, and stay so after the primary's next attempt.
/// Returns whether the promote landed after cut 3 committed, and how long it took.
fn trial(
    p: &TestServer,
    s: &TestServer,
    relay: &HoldRelay,
    keep: u32,
    t: u8,
    jitter: Duration,
) -> (bool, Duration) {
    for (v, size) in [("a", "256K"), ("b", "256K"), ("c", "4M")] {
        p.ctl_ok(&["volume", "create", v, "--size", size]);
    }
    p.ctl_ok(&["group", "create", "g", "a", "b", "c"]);
    for (lun, v) in ["a", "b", "c"].iter().enumerate() {
        p.ctl_ok(&["lun", "map", IQN, &lun.to_string(), v]);
    }
    let (old, new) = (0x40 + t, 0x80 + t);
    fill(p, old);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let (_control, control_rx) = mpsc::channel();
    let writer = {
        let (stop, addr, written) = (stop.clone(), p.addr, written.clone());
        std::thread::spawn(move || dependent_writer_counted(addr, IQN, stop, control_rx, written))
    };
    create_set(p, "rs", &["--group", "g", "--keep", &keep.to_string()]);
    replicate(p, "rs");
    wait_writes(&written, written.load(Ordering::Acquire) + 2);
    replicate(p, "rs");
    let cut2 = show(p, "rs")["last_cut_id"].as_u64().unwrap();
    let (k2, c2) = image(s, &format!("trial {t}: cut 2"));
    assert_eq!(c2, old);

    fill(p, new);
    wait_writes(&written, written.load(Ordering::Acquire) + 2);
    relay.hold_after(1 << 20);
    p.ctl_ok(&["replicate", "rs"]);
    wait_until(
        "the relay to hold the rest of the cut",
        Duration::from_secs(60),
        || match relay.held.load(Ordering::Acquire) {
            h if h >= (FILLER as u64) - (1 << 20) => Ok(()),
            h => Err(format!(
                "holding {}, {h} bytes held",
                relay.holding.load(Ordering::Acquire)
            )),
        },
    );
    relay.release();
    // Scatters the promote over the cut's staging, commit and apply; whatever moment
    // it lands on, the same must hold.
    std::thread::sleep(jitter);
    let started = std::time::Instant::now();
    let answer = s.ctl_ok(&["promote", "--group", "g"]);
    let took = started.elapsed();
    let cut = promoted_cut(&answer);
    let what = format!("trial {t} (keep {keep}, promote {jitter:?} after the release)");
    let (k, c) = image(s, &what);
    if cut == cut2 {
        assert_eq!(
            (k, c),
            (k2, old),
            "{what}: promoted at cut 2 but holds another image"
        );
    } else {
        assert!(
            cut > cut2,
            "{what}: promoted at cut {cut}, before cut 2 ({cut2})"
        );
        assert_eq!(c, new, "{what}: promoted at cut {cut} but c is cut 2's");
        assert!(
            k > k2,
            "{what}: promoted at cut {cut} but a and b are cut 2's"
        );
    }

    // The primary's next attempt learns of the promote (its writer went on after it:
    // a split brain); nothing changes the image.
    p.ctl(&["replicate", "rs"]);
    wait_until(
        "the primary's next attempt to meet the promote",
        Duration::from_secs(60),
        || {
            let v = show(p, "rs");
            if v["status"] == "split-brain" || v["status"] == "peer-promoted" {
                return Ok(());
            }
            Err(v.to_string())
        },
    );
    assert_eq!(
        image(s, &what),
        (k, c),
        "{what}: the promoted image changed"
    );
    stop.store(true, Ordering::Release);
    writer.join().unwrap();

    for node in [p, s] {
        node.ctl_ok(&["replication", "delete", "rs", "--force"]);
    }
    for lun in 0..3 {
        p.ctl_ok(&["lun", "unmap", IQN, &lun.to_string()]);
    }
    for node in [p, s] {
        node.ctl_ok(&["group", "delete", "g"]);
        for v in ["a", "b", "c"] {
            node.ctl_ok(&["volume", "delete", v]);
        }
    }
    println!("{what}: promoted at cut {cut} (cut 2 was {cut2}) in {took:?}");
    (cut > cut2, took)
}

#[test]
fn promote_racing_an_arriving_cut_holds_exactly_the_cut_it_reports() {
    let mut relay = None;
    let (p, s) = pair_via(|target| {
        let r = HoldRelay::start(target);
        let addr = r.addr;
        relay = Some(r);
        addr
    });
    let relay = relay.expect("pair_via calls the closure");
    p.ctl_ok(&["target", "create", IQN]);
    let mut t = 0u8;
    for keep in [1u32, 4] {
        let (mut newer, mut slowest) = (0, Duration::ZERO);
        for i in 0..20u64 {
            t += 1;
            let jitter = Duration::from_millis((i * 7) % 50);
            let (new, took) = trial(&p, &s, &relay, keep, t, jitter);
            newer += usize::from(new);
            slowest = slowest.max(took);
        }
        println!(
            "keep {keep}: {newer} of 20 promotes held the raced cut, {} the one before; slowest promote {slowest:?}",
            20 - newer
        );
    }
}

#[test]
fn promote_names_exactly_what_it_promotes_and_secondaries_keep_geometry() {
    let (p, s) = pair();
    p.ctl_ok(&[
        "volume",
        "create",
        "db",
        "--size",
        "4M",
        "--block-size",
        "4096",
        "--page-size",
        "64K",
    ]);
    p.ctl_ok(&["volume", "create", "log", "--size", "1M"]);
    p.ctl_ok(&["group", "create", "g", "db", "log"]);
    create_set(&p, "rs", &["--group", "g", "--target-prefix", "dr-"]);
    for (v, block, page) in [("dr-db", 4096, 65536), ("dr-log", 512, 4096)] {
        let view = s.volume_view(v);
        assert_eq!(view["block_size"], block, "{view}");
        assert_eq!(view["page_size"], page, "{view}");
    }
    replicate(&p, "rs");
    replicate(&p, "rs");
    let points = s.ctl_json(&["recovery-points", "rs"]);

    let (err, _) = s.ctl_refused(&["promote", "--volume", "dr-db"]);
    assert!(
        err.contains("volume 'dr-db' belongs to group 'g' of set 'rs': promote --group g"),
        "{err}"
    );
    // Nothing changed: the set is there with its points, the volume still secondary.
    assert_eq!(s.ctl_json(&["recovery-points", "rs"]), points);
    assert_eq!(show(&s, "rs")["role"], "secondary");
    let (err, _) = s.ctl_refused(&["lun", "map", "iqn.2026-11.io.twinlun:demo", "3", "dr-db"]);
    assert!(err.contains("secondary"), "{err}");

    let answer = s.ctl_ok(&["promote", "--group", "g"]);
    assert!(
        answer.contains("promoted dr-db, dr-log of set 'rs' at cut "),
        "{answer}"
    );
    let view = s.volume_view("dr-db");
    assert_eq!(view["page_size"], 65536, "{view}");
}

#[test]
fn delete_force_removes_a_set_whose_peer_is_gone_on_either_side() {
    let (mut p, mut s) = pair();
    p.ctl_ok(&["volume", "create", "v", "--size", "1M"]);
    p.ctl_ok(&["lun", "map", "iqn.2026-11.io.twinlun:demo", "1", "v"]);
    let mut c = RawClient::connect(p.addr);
    c.login(INITIATOR, "iqn.2026-11.io.twinlun:demo", Digests::default());
    c.write10(1, 0, &[0x5a; 4096], BLOCK);
    create_set(&p, "rs", &["--volume", "v"]);
    replicate(&p, "rs");
    c.write10(1, 8, &[0x6b; 4096], BLOCK);
    replicate(&p, "rs");
    let repl_dir = |n: &TestServer| {
        std::fs::read_dir(n.data_path("replication"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(repl_dir(&p), 1);
    assert_eq!(repl_dir(&s), 1);
    assert_eq!(wait_cycles(&p, "rs", 2)["status"], "ready");

    // The secondary goes away: without --force the primary still needs it.
    s.stop();
    let (err, _) = p.ctl_refused(&["replication", "delete", "rs"]);
    assert!(err.contains("peer 'dr'"), "{err}");
    assert_eq!(show(&p, "rs")["role"], "primary");
    let answer = p.ctl_ok(&["replication", "delete", "rs", "--force"]);
    assert!(answer.contains("here only"), "{answer}");
    let (err, _) = p.ctl_refused(&["replication", "show", "rs"]);
    assert!(err.contains("rs"), "{err}");
    assert_eq!(repl_dir(&p), 0, "the primary's set state is left behind");
    // v is a plain volume: it can join a group and be written.
    p.ctl_ok(&["group", "create", "after", "v"]);
    c.write10(1, 16, &[0x7c; 4096], BLOCK);

    // The secondary comes back with the primary gone: --force drops its side too,
    // recovery points included; the volume stays with the last cut's content.
    p.stop();
    s.restart();
    assert_eq!(
        s.ctl_json(&["recovery-points", "rs"])["points"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.ctl_ok(&["replication", "delete", "rs", "--force"]);
    assert_eq!(
        repl_dir(&s),
        0,
        "the secondary's recovery points are left behind"
    );
    let file = std::fs::read(s.volume_file("v")).unwrap();
    assert!(file[..4096].iter().all(|&b| b == 0x5a));
    assert!(file[8 * 512..8 * 512 + 4096].iter().all(|&b| b == 0x6b));
    s.ctl_ok(&["lun", "map", "iqn.2026-11.io.twinlun:demo", "1", "v"]);
}

#[test]
fn a_drill_clone_holds_the_recovery_point_while_cycles_go_on_and_leaves_it_untouched() {
    let (p, s) = pair();
    let demo = "iqn.2026-11.io.twinlun:demo";
    p.ctl_ok(&[
        "volume",
        "create",
        "v",
        "--size",
        "8M",
        "--page-size",
        "64K",
    ]);
    p.ctl_ok(&["lun", "map", demo, "1", "v"]);
    let mut c = RawClient::connect(p.addr);
    c.login(INITIATOR, demo, Digests::default());
    // 64 KiB at each of a few offsets, a different byte per round.
    let write_round = |c: &mut RawClient, round: u8| {
        for (i, at) in [0u32, 2048, 5000, 9000, 16000].iter().enumerate() {
            let lba = at + u32::from(round) * 16 + i as u32;
            c.write10(
                1,
                lba,
                &vec![round.wrapping_mul(31).wrapping_add(i as u8); 64 << 10],
                BLOCK,
            );
        }
    };
    create_set(&p, "rs", &["--volume", "v", "--keep", "8"]);
    write_round(&mut c, 1);
    replicate(&p, "rs");
    write_round(&mut c, 2);
    replicate(&p, "rs");
    // Nothing is written between this cut and the read: the file is the cut.
    let point = show(&p, "rs")["last_cut_id"].as_u64().unwrap();
    let at_point = std::fs::read(p.volume_file("v")).unwrap();
    for round in 3..6 {
        write_round(&mut c, round);
        replicate(&p, "rs");
    }
    let now = std::fs::read(p.volume_file("v")).unwrap();
    assert!(now != at_point, "the later cycles changed nothing");

    let from = format!("v@rp:{point}");
    let view = s.ctl_json(&["volume", "clone", "drill", "--from", &from]);
    assert_eq!(view["page_size"], 65536, "{view}");
    assert_eq!(view["clone_of"], from.as_str(), "{view}");
    // Copy-on-write: the clone's file holds nothing yet.
    let allocated = |s: &TestServer, v: &str| {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(s.volume_file(v)).unwrap()) * 512
    };
    assert_eq!(allocated(&s, "drill"), 0, "the clone copied data");
    // Through a LUN it reads as the point, and it is writable: a whole 4 KiB and one
    // 512-byte block inside a 4 KiB grain the clone does not hold yet.
    s.ctl_ok(&["target", "create", IQN]);
    s.ctl_ok(&["lun", "map", IQN, "0", "drill"]);
    let mut d = RawClient::connect(s.addr);
    d.login(INITIATOR, IQN, Digests::default());
    let read_all = |d: &mut RawClient| {
        let mut image = Vec::new();
        for at in (0..(8 << 20) / BLOCK).step_by(128) {
            image.extend(d.read10(0, at as u32, 128, BLOCK));
        }
        image
    };
    assert!(read_all(&mut d) == at_point, "the clone is not the point");
    let mut model = at_point.clone();
    d.write10(0, 0, &[0xee; 4096], BLOCK);
    model[..4096].fill(0xee);
    let one = 2048 * BLOCK + 3 * BLOCK;
    d.write10(0, (one / BLOCK) as u32, &[0x5a; BLOCK], BLOCK);
    model[one..one + BLOCK].fill(0x5a);
    assert!(
        read_all(&mut d) == model,
        "the clone's writes read back wrong"
    );
    assert!(
        allocated(&s, "drill") <= 64 << 10,
        "the clone holds more than it was written"
    );
    // Replication goes on, and the point is as it was: the clone still reads it where
    // it was not written, and a second clone equals it.
    write_round(&mut c, 6);
    replicate(&p, "rs");
    assert!(read_all(&mut d) == model, "a cycle changed the clone");
    s.ctl_ok(&["volume", "clone", "drill2", "--from", &from]);
    s.ctl_ok(&["lun", "map", IQN, "1", "drill2"]);
    let mut second = Vec::new();
    for at in (0..(8 << 20) / BLOCK).step_by(128) {
        second.extend(d.read10(1, at as u32, 128, BLOCK));
    }
    assert!(second == at_point, "the point changed");
    assert!(
        std::fs::read(s.volume_file("v")).unwrap() == std::fs::read(p.volume_file("v")).unwrap(),
        "the secondary no longer follows the primary"
    );
    // While clones hold the point, promote and delete of the set are refused.
    let (err, _) = s.ctl_refused(&["promote", "--volume", "v"]);
    assert!(err.contains("volume delete"), "{err}");
    let (err, _) = s.ctl_refused(&["replication", "delete", "rs"]);
    assert!(err.contains("clone 'drill'"), "{err}");
    // A restart keeps what the clone holds and what it reads from the point.
    drop(d);
    let mut s = s;
    s.restart();
    let mut d = RawClient::connect(s.addr);
    d.login(INITIATOR, IQN, Digests::default());
    assert!(read_all(&mut d) == model, "a restart changed the clone");
    write_round(&mut c, 7);
    replicate(&p, "rs");
    assert!(
        read_all(&mut d) == model,
        "a cycle after the restart changed the clone"
    );
    drop(d);
    // Deleted, the clones hold the point no longer: with keep 1 the next cycle prunes it.
    for (lun, clone) in [("0", "drill"), ("1", "drill2")] {
        s.ctl_ok(&["lun", "unmap", IQN, lun]);
        s.ctl_ok(&["volume", "delete", clone]);
    }
    p.ctl_ok(&["replication", "modify", "rs", "--keep", "1"]);
    write_round(&mut c, 8);
    replicate(&p, "rs");
    let points = s.ctl_json(&["recovery-points", "rs"]);
    assert!(
        !points.to_string().contains(&format!("\"cut_id\":{point},")),
        "the point outlived its clones: {points}"
    );
    // Bad references are refused, creating nothing.
    for bad in ["v", "v@rp:x", "v@rp:999999", "nope@rp:1"] {
        let (err, _) = s.ctl_refused(&["volume", "clone", "drill3", "--from", bad]);
        assert!(!err.is_empty());
    }
    let (err, _) = p.ctl_refused(&["volume", "clone", "x", "--from", &from]);
    assert!(err.contains("no secondary"), "{err}");
    let (err, _) = s.ctl_refused(&["volume", "show", "drill3"]);
    assert!(err.contains("drill3"), "{err}");
}

#[test]
fn a_drill_lun_reads_a_recovery_point_exactly_while_three_more_cycles_arrive() {
    // Files in the data dir as large as the volume (4 MiB) or larger.
    fn big_files(s: &TestServer) -> Vec<std::path::PathBuf> {
        let mut big = Vec::new();
        let mut dirs = vec![s.data_path("")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    dirs.push(e.path());
                } else if meta.len() >= 4 << 20 {
                    big.push(e.path());
                }
            }
        }
        big.sort();
        big
    }
    let (p, s) = pair();
    let demo = "iqn.2026-11.io.twinlun:demo";
    p.ctl_ok(&["volume", "create", "v", "--size", "4M"]);
    p.ctl_ok(&["lun", "map", demo, "1", "v"]);
    let mut c = RawClient::connect(p.addr);
    c.login(INITIATOR, demo, Digests::default());
    let blocks = (4 << 20) / BLOCK;
    // Round r writes 64 KiB of byte r at a place of its own and over a shared region.
    let write_round = |c: &mut RawClient, r: u8| {
        c.write10(1, u32::from(r) * 1024, &vec![r; 64 << 10], BLOCK);
        c.write10(1, 4000, &vec![r; 64 << 10], BLOCK);
    };
    create_set(&p, "rs", &["--volume", "v", "--keep", "2"]);
    write_round(&mut c, 1);
    replicate(&p, "rs");
    // Nothing is written between this cut and the read: the file is the cut.
    let point = show(&p, "rs")["last_cut_id"].as_u64().unwrap();
    let at_point = std::fs::read(p.volume_file("v")).unwrap();
    write_round(&mut c, 2);
    replicate(&p, "rs");

    s.ctl_ok(&["target", "create", IQN]);
    let big_before = big_files(&s);
    let drill = format!("v@rp:{point}");
    let answer = s.ctl_ok(&["lun", "map", IQN, "0", &drill]);
    assert!(answer.contains("read-only"), "{answer}");
    let mut d = RawClient::connect(s.addr);
    d.login(INITIATOR, IQN, Digests::default());
    let read_all = |d: &mut RawClient| {
        let mut image = Vec::new();
        for at in (0..blocks).step_by(128) {
            image.extend(d.read10(0, at as u32, 128, BLOCK));
        }
        image
    };
    assert!(
        read_all(&mut d) == at_point,
        "the drill LUN is not the point"
    );
    // Three more cycles arrive and are applied. The LUN reads the point throughout,
    // and the mapping keeps the point, which keep 2 would have pruned.
    let has_point = |s: &TestServer| {
        let points = s.ctl_json(&["recovery-points", "rs"]);
        points.to_string().contains(&format!("\"cut_id\":{point},"))
    };
    for r in 3..6 {
        write_round(&mut c, r);
        replicate(&p, "rs");
        assert!(
            read_all(&mut d) == at_point,
            "the drill LUN changed after round {r}"
        );
    }
    assert!(has_point(&s), "the mapped point was pruned");
    // `recovery-points` says what keeps it.
    let points = s.ctl_json(&["recovery-points", "rs"]);
    let pinned = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cut_id"] == point)
        .unwrap()["pinned_by"]
        .clone();
    assert_eq!(
        pinned,
        serde_json::json!([format!("{IQN} LUN 0")]),
        "{points}"
    );
    let table = String::from_utf8(s.ctl(&["recovery-points", "rs"]).stdout).unwrap();
    assert!(
        table.contains("PINNED BY") && table.contains(&format!("{IQN} LUN 0")),
        "{table}"
    );
    assert!(
        std::fs::read(s.volume_file("v")).unwrap() == std::fs::read(p.volume_file("v")).unwrap(),
        "the secondary stopped following the primary"
    );
    // Nothing was copied: no new file of the volume's size.
    assert_eq!(big_files(&s), big_before, "a copy of the volume was made");
    // What would rewrite the point's history is refused while it is mapped, naming
    // the way out, and changes nothing.
    let (err, _) = s.ctl_refused(&["promote", "--volume", "v"]);
    assert!(err.contains("lun unmap"), "{err}");
    let (err, _) = s.ctl_refused(&["replication", "delete", "rs"]);
    assert!(err.contains("lun unmap") && err.contains(&drill), "{err}");
    // So are a switchover and a delete asked by the primary; it keeps serving writes.
    let (err, _) = p.ctl_refused(&["switchover", "rs"]);
    assert!(err.contains("lun unmap"), "{err}");
    let (err, _) = p.ctl_refused(&["replication", "delete", "rs"]);
    assert!(err.contains("lun unmap"), "{err}");
    write_round(&mut c, 6);
    replicate(&p, "rs");
    assert!(read_all(&mut d) == at_point, "a refusal changed the drill");
    // The point is read in place again after a restart, quietly.
    drop(d);
    let mut s = s;
    s.restart();
    let unsaved = s
        .stderr()
        .lines()
        .filter(|l| l.contains("not saved cleanly"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        unsaved.is_empty(),
        "tracking not saved at shutdown: {unsaved:?}"
    );
    let mut d = RawClient::connect(s.addr);
    d.login(INITIATOR, IQN, Digests::default());
    assert!(
        read_all(&mut d) == at_point,
        "the drill LUN changed across a restart"
    );
    // Read-only: a write answers DATA PROTECT and changes nothing.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[8] = 1;
    let o = d.scsi(0, &cdb, &[0xaa; BLOCK], 0);
    assert_eq!(o.sense_key(), Some(0x7), "status {:#x}", o.status);
    assert!(read_all(&mut d) == at_point);
    // Unmapped, the point is kept no longer: the next cycle prunes it (keep 2).
    assert!(has_point(&s), "a restart lost the mapped point");
    drop(d);
    s.ctl_ok(&["lun", "unmap", IQN, "0"]);
    write_round(&mut c, 7);
    replicate(&p, "rs");
    assert!(!has_point(&s), "the point outlived its last mapping");
    // A point that is not there, and a primary's volume, are refused.
    let (err, _) = s.ctl_refused(&["lun", "map", IQN, "0", "v@rp:999999"]);
    assert!(err.contains("999999"), "{err}");
    let (err, _) = p.ctl_refused(&["lun", "map", demo, "5", &drill]);
    assert!(err.contains("no secondary"), "{err}");
    // A restart asked on the primary would take every point: while one is mapped, the
    // secondary refuses the reset naming the way out, and the point stays.
    let latest = show(&p, "rs")["last_cut_id"].as_u64().unwrap();
    s.ctl_ok(&["lun", "map", IQN, "0", &format!("v@rp:{latest}")]);
    p.ctl_ok(&["restart", "rs", "--yes"]);
    wait_until(
        "the primary's restart to be refused over the drill",
        std::time::Duration::from_secs(60),
        || {
            let v = show(&p, "rs");
            v["error"]
                .to_string()
                .contains("lun unmap")
                .then_some(())
                .ok_or_else(|| v.to_string())
        },
    );
    let points = s.ctl_json(&["recovery-points", "rs"]);
    assert!(
        points
            .to_string()
            .contains(&format!("\"cut_id\":{latest},")),
        "a refused reset took the point: {points}"
    );
}
