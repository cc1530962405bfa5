//! The writing half of a connection: one task owns the socket's write side, stamps the
//! sequence numbers every target PDU carries, and batches PDUs into few writes.
//!
//! Stamping here, at the moment of sending, keeps StatSN in send order whatever order
//! tasks finish in (RFC 7143 §4.2.2.2), and lets every PDU carry the freshest
//! ExpCmdSN/MaxCmdSN window (§4.2.2.1).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::iscsi::serial;

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

/// Immediate commands outstanding at once per connection, each kind (RFC 7143 §3.2.2.1:
/// "a target MUST be able to handle at least one immediate task management command and
/// one immediate non-task-management command per connection at any time"). More are
/// refused with Reject "too many immediate commands" (§11.17.1, reason 0x06).
pub const IMMEDIATE_ALLOWANCE: u32 = 4;

/// Which allowance an immediate command counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Immediate {
    TaskManagement,
    Other,
}

/// The command window shared by the reader (which advances ExpCmdSN) and the writer
/// (which stamps it). MaxCmdSN = base + completed + depth - 1: it grows as commands
/// complete, never shrinks, and bounds the commands queued at the target to `depth`.
pub struct Window {
    exp_cmd_sn: AtomicU32,
    completed: AtomicU32,
    base: u32,
    depth: u32,
    /// Immediate commands outstanding: task management, others.
    immediate: [AtomicU32; 2],
}

impl Window {
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Arc<Window> {
        Arc::new(Window {
            exp_cmd_sn: AtomicU32::new(exp_cmd_sn),
            completed: AtomicU32::new(0),
            base: exp_cmd_sn,
            depth,
            immediate: [AtomicU32::new(0), AtomicU32::new(0)],
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

    /// RFC 7143 §4.2.2.1: "For non-immediate commands, the CmdSN field can take any
    /// value from ExpCmdSN to MaxCmdSN inclusive." With every slot taken, MaxCmdSN is
    /// ExpCmdSN - 1 and nothing is admitted, not even CmdSN = ExpCmdSN.
    pub fn admits(&self, cmd_sn: u32) -> bool {
        let exp = self.exp_cmd_sn();
        serial::le(exp, cmd_sn) && serial::le(cmd_sn, self.max_cmd_sn())
    }

    /// A place for an immediate command (§3.2.2.1), if its allowance is not used up.
    pub fn try_immediate(self: &Arc<Self>, kind: Immediate) -> Option<CmdSlot> {
        let counter = &self.immediate[kind as usize];
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < IMMEDIATE_ALLOWANCE).then_some(n + 1)
            })
            .ok()?;
        Some(CmdSlot {
            window: self.clone(),
            immediate: Some(kind),
        })
    }

    /// Immediate commands of `kind` outstanding now.
    pub fn immediate_outstanding(&self, kind: Immediate) -> u32 {
        self.immediate[kind as usize].load(Ordering::Acquire)
    }
}

/// A command's place in the window (or in the immediate allowance); dropping it
/// completes the command.
pub struct CmdSlot {
    window: Arc<Window>,
    immediate: Option<Immediate>,
}

impl CmdSlot {
    /// The place of the non-immediate command just taken at ExpCmdSN.
    pub fn new(w: &Arc<Window>) -> CmdSlot {
        CmdSlot {
            window: w.clone(),
            immediate: None,
        }
    }
}

impl Drop for CmdSlot {
    fn drop(&mut self) {
        match self.immediate {
            None => {
                self.window.completed.fetch_add(1, Ordering::AcqRel);
            }
            Some(kind) => {
                self.window.immediate[kind as usize].fetch_sub(1, Ordering::AcqRel);
            }
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

    #[test]
    fn window_admits_only_exp_to_max() {
        let w = Window::new(10, 2);
        assert!(w.admits(10) && w.admits(11));
        assert!(!w.admits(12), "beyond MaxCmdSN");
        assert!(!w.admits(9), "a duplicate below ExpCmdSN");
        let a = CmdSlot::new(&w);
        w.set_exp_cmd_sn(11);
        let b = CmdSlot::new(&w);
        w.set_exp_cmd_sn(12);
        // Both places taken: MaxCmdSN = ExpCmdSN - 1, so even ExpCmdSN is refused.
        assert_eq!(w.max_cmd_sn(), 11);
        assert!(!w.admits(12));
        drop(a);
        assert!(w.admits(12));
        drop(b);
    }

    #[test]
    fn window_wraps() {
        let w = Window::new(u32::MAX, 3);
        assert!(w.admits(u32::MAX) && w.admits(0) && w.admits(1));
        assert!(!w.admits(2) && !w.admits(u32::MAX - 1));
    }

    #[test]
    fn immediate_allowance_is_bounded_per_kind() {
        let w = Window::new(1, 8);
        let held: Vec<CmdSlot> = (0..IMMEDIATE_ALLOWANCE)
            .map(|_| {
                w.try_immediate(Immediate::Other)
                    .expect("within the allowance")
            })
            .collect();
        assert!(w.try_immediate(Immediate::Other).is_none());
        // Task management keeps its own allowance.
        let tmf = w.try_immediate(Immediate::TaskManagement);
        assert!(tmf.is_some());
        // Immediate commands leave the CmdSN window alone.
        assert_eq!(w.max_cmd_sn(), 8);
        drop(held);
        assert_eq!(w.immediate_outstanding(Immediate::Other), 0);
        assert_eq!(w.max_cmd_sn(), 8);
        assert!(w.try_immediate(Immediate::Other).is_some());
    }
}
