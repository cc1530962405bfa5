//! A TCP proxy for fault injection: forwards to a target, optionally throttling the
//! client-to-target direction, and can cut every connection at once. It also keeps
//! every byte it forwarded, both ways (`captured`), for tests of what the link shows.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
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
        let tap: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (r, c, t, tp) = (rate.clone(), conns.clone(), trip.clone(), tap.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let limits = Limits {
                    rate: r.clone(),
                    trip: t.clone(),
                    conns: c.clone(),
                };
                let (tap_in, tap_out) = (tp.clone(), tp.clone());
                std::thread::spawn(move || pump(client, server, Some(limits), tap_in));
                std::thread::spawn(move || pump(s2, c2, None, tap_out));
            }
        });
        Proxy {
            addr,
            rate,
            trip,
            conns,
            tap,
        }
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
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limits: Option<Limits>,
    tap: Arc<Mutex<Option<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(t) = tap.lock().unwrap().as_mut() {
            t.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        moved += n as u64;
        if let Some(l) = &limits {
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
