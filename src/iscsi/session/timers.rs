//! Connection timing: NOP-In pings to an idle initiator, and the deadlines after
//! which the connection is given up (an unanswered ping, a task whose data never
//! comes). Time is passed in; nothing here reads a clock.

use std::time::{Duration, Instant};

use super::dataout::Stalled;
use super::TransferTags;

/// Send a NOP-In ping after this long without hearing from the initiator.
pub const PING_IDLE: Duration = Duration::from_secs(5);
/// Close the connection if a ping goes unanswered this long.
pub const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Close the connection if a task asked for data gets none for this long.
pub const DATA_OUT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a connection is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A NOP-In ping went unanswered for `PING_TIMEOUT`.
    PingUnanswered,
    /// A task that holds its Data-Out budget (or was asked for data) got none for
    /// `DATA_OUT_TIMEOUT`.
    DataOut(Stalled),
}

/// What the timers ask of the connection, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Send an unsolicited NOP-In (ITT reserved) with this TTT; the initiator must
    /// answer it (§11.19).
    SendPing { ttt: u32 },
    /// Close the connection.
    Close(Timeout),
}

#[derive(Debug, Clone)]
pub struct Timers {
    /// The ping outstanding: its TTT and when it went out.
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
}

impl Timers {
    pub fn new(now: Instant) -> Timers {
        Timers {
            ping: None,
            last_rx: now,
        }
    }

    /// Anything came from the initiator (a PDU, or a PDU's worth of error): it is
    /// alive, and any ping is answered.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping = None;
    }

    /// The ping outstanding, if any: its TTT.
    pub fn ping_outstanding(&self) -> Option<u32> {
        self.ping.map(|(ttt, _)| ttt)
    }

    /// Check the deadlines at `now`. `stalled` is the transfer that has waited longest
    /// for data (`Collector::stalled`).
    pub fn poll(
        &mut self,
        now: Instant,
        stalled: Option<Stalled>,
        tags: &mut TransferTags,
    ) -> Vec<TimerAction> {
        let mut out = Vec::new();
        match self.ping {
            Some((_, sent)) if now.duration_since(sent) > PING_TIMEOUT => {
                out.push(TimerAction::Close(Timeout::PingUnanswered));
                return out;
            }
            Some(_) => {}
            None if now.duration_since(self.last_rx) >= PING_IDLE => {
                let ttt = tags.allocate();
                self.ping = Some((ttt, now));
                out.push(TimerAction::SendPing { ttt });
            }
            None => {}
        }
        // At ErrorRecoveryLevel 0 the connection is dropped (RFC 7143 §7.1.4.1:
        // recovery is at the session level), which ends its tasks and gives their
        // budget back, so an initiator that answers pings but never sends the data it
        // owes cannot hold the node's write budget forever.
        if let Some(s) = stalled {
            if now.duration_since(s.since) >= DATA_OUT_TIMEOUT {
                out.push(TimerAction::Close(Timeout::DataOut(s)));
            }
        }
        out
    }
}
