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
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr, bytes_per_sec: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (r, c) = (rate.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let rate = r.clone();
                std::thread::spawn(move || pump(client, server, Some(rate)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Proxy { addr, rate, conns }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Release);
    }

    /// Closes every connection through the proxy (new ones still work).
    pub fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
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
        if let Some(r) = &rate {
            let r = r.load(Ordering::Acquire);
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
