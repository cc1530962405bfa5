//! Dependent writes across two volumes for consistency tests: block i of A is written
//! and acknowledged before block i of B, pass after pass, so any consistent cut is the
//! state after exactly some number of writes.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use twinlun::iscsi::pdu::Digests;

use super::raw::RawClient;

pub const BLOCK: usize = 512;
/// Blocks per volume: 256 KiB volumes.
pub const BLOCKS: usize = 512;

/// Block `i` of volume `vol` (0 = A, 1 = B) as written in pass `gen` (1..): a header
/// naming it, then `gen` repeated. Never written reads as zeros: generation 0.
pub fn block(vol: u8, i: usize, gen: u8) -> Vec<u8> {
    let mut b = vec![gen; BLOCK];
    b[..4].copy_from_slice(&[vol, (i >> 8) as u8, i as u8, gen]);
    b
}

/// The generation of each block of an image of volume `vol`.
pub fn generations(vol: u8, image: &[u8]) -> Vec<u8> {
    image
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, b)| {
            if b.iter().all(|&x| x == 0) {
                return 0;
            }
            let gen = b[3];
            assert_eq!(b, &block(vol, i, gen)[..], "volume {vol} block {i} is torn");
            gen
        })
        .collect()
}

/// The generations after the first `k` writes of the sequence A[0] B[0] A[1] B[1] ...,
/// pass after pass.
pub fn after_writes(k: usize) -> (Vec<u8>, Vec<u8>) {
    let (passes, rest) = (k / (2 * BLOCKS), k % (2 * BLOCKS));
    let gen = |slot: usize| (passes + usize::from(slot < rest)) as u8;
    (
        (0..BLOCKS).map(|i| gen(2 * i)).collect(),
        (0..BLOCKS).map(|i| gen(2 * i + 1)).collect(),
    )
}

/// Volumes A and B as read at one moment.
pub type Images = (Vec<u8>, Vec<u8>);

pub enum Control {
    Pause(mpsc::Sender<()>),
    Resume,
}

/// Writes A[i], waits for GOOD, then B[i], for i = 0.. in passes 1, 2, ... until
/// `stop`; between writes it obeys `control` (a paused writer has nothing in flight).
pub fn dependent_writer(
    addr: std::net::SocketAddr,
    iqn: &str,
    stop: Arc<AtomicBool>,
    control: mpsc::Receiver<Control>,
) -> usize {
    dependent_writer_counted(addr, iqn, stop, control, Arc::new(AtomicUsize::new(0)))
}

/// [`dependent_writer`] that also publishes its count of acknowledged writes in
/// `written`, for a test to wait on.
pub fn dependent_writer_counted(
    addr: std::net::SocketAddr,
    iqn: &str,
    stop: Arc<AtomicBool>,
    control: mpsc::Receiver<Control>,
    written: Arc<AtomicUsize>,
) -> usize {
    let mut c = RawClient::connect(addr);
    c.login("iqn.2026-11.test:writer", iqn, Digests::default());
    let mut writes = 0;
    'passes: for gen in 1..=255u8 {
        for i in 0..BLOCKS {
            for vol in 0..2u8 {
                if stop.load(Ordering::Acquire) {
                    break 'passes;
                }
                if let Ok(Control::Pause(paused)) = control.try_recv() {
                    paused.send(()).unwrap();
                    while !matches!(control.recv(), Ok(Control::Resume) | Err(_)) {}
                }
                c.write10(u64::from(vol), i as u32, &block(vol, i, gen), BLOCK);
                writes += 1;
                written.store(writes, Ordering::Release);
            }
        }
    }
    writes
}
