//! The writing half of a connection: one task owns the socket's write side, stamps the
//! sequence numbers every target PDU carries, and batches PDUs into few writes.
//!
//! Stamping here, at the moment of sending, keeps StatSN in send order whatever order
//! tasks finish in (RFC 7143 §4.2.2.2), and lets every PDU carry the freshest
//! ExpCmdSN/MaxCmdSN window (§4.2.2.1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::iscsi::pdu::{Digests, Pdu};
pub use crate::iscsi::session::window::{CmdSlot, Window};

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

/// What a PDU keeps alive until the writer has copied it into its send buffer: the
/// byte budget of the data it carries, the task tag it ends. Dropped right after
/// encoding, before the bytes reach the socket, so an initiator that reuses a tag as
/// soon as it sees the answer never finds it still taken.
#[derive(Default)]
pub struct Hold(Vec<Box<dyn Send + Sync>>);

impl Hold {
    pub fn push<T: Send + Sync + 'static>(&mut self, t: T) {
        self.0.push(Box::new(t));
    }
}

/// One PDU to send. `slot`, when present, is the command's place in the CmdSN window:
/// it is released just before the PDU is stamped, so the PDU itself already opens the
/// window for the next command.
pub struct Outgoing {
    pub pdu: Pdu,
    pub stat: Stat,
    pub slot: Option<CmdSlot>,
    pub hold: Hold,
}

impl Outgoing {
    pub fn new(pdu: Pdu, stat: Stat) -> Outgoing {
        Outgoing {
            pdu,
            stat,
            slot: None,
            hold: Hold::default(),
        }
    }

    /// A status-bearing PDU that ends the command holding `slot`.
    pub fn ending(pdu: Pdu, slot: Option<CmdSlot>, hold: Hold) -> Outgoing {
        Outgoing {
            pdu,
            stat: Stat::Advance,
            slot,
            hold,
        }
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
                hold,
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
            drop(pdu);
            drop(hold);
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
