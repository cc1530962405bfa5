//! A TCP proxy for fault injection: forwards to a target, optionally throttling the
//! client-to-target direction, and can cut every connection at once, or stall one
//! (stop forwarding either way without closing, as a vanished host does). It also
//! keeps every byte it forwarded, both ways (`captured`), for tests of what the link
//! shows.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub addr: SocketAddr,
    /// Bytes per second client to target; 0 = unlimited.
    rate: Arc<AtomicU64>,
    /// Once a connection has forwarded this many bytes client to target, every
    /// connection is cut (once); 0 = unarmed.
    trip: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Once a connection has forwarded this many bytes client to target, it stalls
    /// (once; later connections pass); 0 = unarmed.
    stall_at: Arc<AtomicU64>,
    /// Connections stalled so far.
    stalled: Arc<AtomicU64>,
    /// Every byte forwarded, either way, in the order each pump moved it, once
    /// `record` was called (None before: most tests move far too much to keep).
    tap: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr, bytes_per_sec: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let trip = Arc::new(AtomicU64::new(0));
        let stall_at = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicU64::new(0));
        let tap: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (r, c, t, tp) = (rate.clone(), conns.clone(), trip.clone(), tap.clone());
        let (sa, sd) = (stall_at.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let stall = Arc::new(AtomicBool::new(false));
                let limits = Limits {
                    rate: r.clone(),
                    trip: t.clone(),
                    conns: c.clone(),
                    stall_at: sa.clone(),
                    stalled: sd.clone(),
                };
                let stall2 = stall.clone();
                let (tap_in, tap_out) = (tp.clone(), tp.clone());
                std::thread::spawn(move || pump(client, server, Some(limits), stall, tap_in));
                std::thread::spawn(move || pump(s2, c2, None, stall2, tap_out));
            }
        });
        Proxy {
            addr,
            rate,
            trip,
            conns,
            stall_at,
            stalled,
            tap,
        }
    }

    /// Stalls the first connection that has forwarded `bytes` from its client: from
    /// then on it forwards nothing either way and closes nothing, while later
    /// connections pass (a host that vanished mid-transfer, then a new path).
    pub fn stall_after(&self, bytes: u64) {
        self.stall_at.store(bytes, Ordering::Release);
    }

    /// How many connections have stalled.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Acquire)
    }

    /// Keeps every byte forwarded from now on, both directions.
    pub fn record(&self) {
        self.tap.lock().unwrap().get_or_insert_with(Vec::new);
    }

    /// Every byte forwarded since `record`.
    pub fn captured(&self) -> Vec<u8> {
        self.tap.lock().unwrap().clone().unwrap_or_default()
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Release);
    }

    /// Closes every connection through the proxy (new ones still work).
    pub fn cut(&self) {
        cut(&self.conns);
    }

    /// Cuts every connection as soon as one has forwarded `bytes` from its client
    /// (once; later connections pass): a cut at a known point of a transfer, whatever
    /// the machine's load.
    pub fn cut_after(&self, bytes: u64) {
        self.trip.store(bytes, Ordering::Release);
    }

    /// Whether a `cut_after` has fired (or none was armed).
    pub fn tripped(&self) -> bool {
        self.trip.load(Ordering::Acquire) == 0
    }
}

fn cut(conns: &Mutex<Vec<TcpStream>>) {
    for s in conns.lock().unwrap().drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// What the client-to-target direction obeys.
struct Limits {
    rate: Arc<AtomicU64>,
    trip: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stall_at: Arc<AtomicU64>,
    stalled: Arc<AtomicU64>,
}

/// A stalled direction: holds its sockets open and moves nothing, for the rest of the
/// test process (the thread only parks; it decides nothing).
fn hold(from: TcpStream, to: TcpStream) -> ! {
    let _keep = (from, to);
    loop {
        std::thread::park();
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limits: Option<Limits>,
    stall: Arc<AtomicBool>,
    tap: Arc<Mutex<Option<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            // A stalled connection passes no close either.
            Ok(0) | Err(_) if stall.load(Ordering::Acquire) => hold(from, to),
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stall.load(Ordering::Acquire) {
            hold(from, to);
        }
        if let Some(t) = tap.lock().unwrap().as_mut() {
            t.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        moved += n as u64;
        if let Some(l) = &limits {
            let at = l.stall_at.load(Ordering::Acquire);
            if at > 0
                && moved >= at
                && l.stall_at
                    .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                stall.store(true, Ordering::Release);
                l.stalled.fetch_add(1, Ordering::AcqRel);
                hold(from, to);
            }
            let trip = l.trip.load(Ordering::Acquire);
            if trip > 0
                && moved >= trip
                && l.trip
                    .compare_exchange(trip, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                cut(&l.conns);
                break;
            }
            let r = l.rate.load(Ordering::Acquire);
            if r > 0 {
                let due = Duration::from_secs_f64(moved as f64 / r as f64);
                let elapsed = start.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
