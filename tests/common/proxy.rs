//! A TCP proxy for fault injection: forwards to a target, optionally throttling the
//! client-to-target direction, and can cut every connection at once.
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
}

impl Proxy {
    pub fn start(target: SocketAddr, bytes_per_sec: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let trip = Arc::new(AtomicU64::new(0));
        let (r, c, t) = (rate.clone(), conns.clone(), trip.clone());
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
                std::thread::spawn(move || pump(client, server, Some(limits)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Proxy {
            addr,
            rate,
            trip,
            conns,
        }
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

fn pump(mut from: TcpStream, mut to: TcpStream, limits: Option<Limits>) {
    let mut buf = vec![0u8; 16 * 1024];
    let start = Instant::now();
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
