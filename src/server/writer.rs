//! The writing half of a connection: one task owns the socket's write side, stamps the
//! sequence numbers every target PDU carries, and batches PDUs into few writes.
//!
//! Stamping here, at the moment of sending, keeps StatSN in send order whatever order
//! tasks finish in (RFC 7143 §4.2.2.2), and lets every PDU carry the freshest
//! ExpCmdSN/MaxCmdSN window (§4.2.2.1).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::iscsi::pdu::{Digests, Pdu};

/// How the writer treats the StatSN field (bytes 24..28 of every target PDU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// A status-bearing PDU: takes the next StatSN.
    Advance,
    /// Carries the next StatSN without taking it (R2T, unsolicited NOP-In, Reject of
    /// a non-command, Async).
    Peek,
    /// The field is reserved (Data-In without status): leave it as it is.
    Leave,
}

/// One PDU to send. `slot`, when present, is the command's place in the CmdSN window:
/// it is released just before the PDU is stamped, so the PDU itself already opens the
/// window for the next command.
pub struct Outgoing {
    pub pdu: Pdu,
    pub stat: Stat,
    pub slot: Option<CmdSlot>,
}

impl Outgoing {
    pub fn new(pdu: Pdu, stat: Stat) -> Outgoing {
        Outgoing {
            pdu,
            stat,
            slot: None,
        }
    }
}

/// The command window shared by the reader (which advances ExpCmdSN) and the writer
/// (which stamps it). MaxCmdSN = base + completed + depth - 1: it grows as commands
/// complete, never shrinks, and bounds the commands queued at the target to `depth`.
pub struct Window {
    exp_cmd_sn: AtomicU32,
    completed: AtomicU32,
    base: u32,
    depth: u32,
}

impl Window {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Arc<Window> {
        Arc::new(Window {
            exp_cmd_sn: AtomicU32::new(exp_cmd_sn),
            completed: AtomicU32::new(0),
            base: exp_cmd_sn,
            depth,
        })
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.load(Ordering::Acquire)
    }
    pub fn set_exp_cmd_sn(&self, v: u32) {
        self.exp_cmd_sn.store(v, Ordering::Release);
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.base
            .wrapping_add(self.completed.load(Ordering::Acquire))
            .wrapping_add(self.depth - 1)
    }
}

/// A command's place in the window; dropping it completes the command.
pub struct CmdSlot(Arc<Window>);

impl CmdSlot {
    pub fn new(w: &Arc<Window>) -> CmdSlot {
        CmdSlot(w.clone())
    }
}

impl Drop for CmdSlot {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Ordering::AcqRel);
    }
}

/// Counters shown by `session list`.
#[derive(Default)]
pub struct Traffic {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Largest batch gathered before a write.
const BATCH_BYTES: usize = 512 * 1024;

/// Send PDUs until the channel closes or the socket fails. Returns the next StatSN.
pub async fn run<W: tokio::io::AsyncWrite + Unpin>(
    mut sock: W,
    mut rx: mpsc::Receiver<Outgoing>,
    window: Arc<Window>,
    mut stat_sn: u32,
    digests: Digests,
    traffic: Arc<Traffic>,
) -> std::io::Result<u32> {
    let mut buf = BytesMut::with_capacity(BATCH_BYTES);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let Outgoing {
                mut pdu,
                stat,
                slot,
            } = out;
            drop(slot);
            match stat {
                Stat::Advance => {
                    pdu.bhs.set_u32(24, stat_sn);
                    stat_sn = stat_sn.wrapping_add(1);
                }
                Stat::Peek => pdu.bhs.set_u32(24, stat_sn),
                Stat::Leave => {}
            }
            pdu.bhs.set_u32(28, window.exp_cmd_sn());
            pdu.bhs.set_u32(32, window.max_cmd_sn());
            pdu.encode(digests, &mut buf);
            if buf.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        traffic
            .bytes_out
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        sock.write_all(&buf).await?;
        buf.clear();
    }
    sock.flush().await?;
    Ok(stat_sn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_opens_as_commands_complete() {
        let w = Window::new(10, 4);
        assert_eq!(w.max_cmd_sn(), 13);
        let a = CmdSlot::new(&w);
        let b = CmdSlot::new(&w);
        w.set_exp_cmd_sn(12);
        assert_eq!(w.max_cmd_sn(), 13);
        drop(a);
        assert_eq!(w.max_cmd_sn(), 14);
        drop(b);
        assert_eq!(w.max_cmd_sn(), 15);
    }
}
