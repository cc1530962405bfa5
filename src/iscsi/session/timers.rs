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
/// Close it only after this long when the initiator's TCP acknowledged the ping: the
/// host is up and the initiator program has not read yet. libiscsi's synchronous API
/// reads only inside a call, and its conformance suite sleeps 60 s between TEST UNIT
/// READY polls; a target that dropped such a connection at 30 s would have it log
/// straight back in (a new session, a new unit attention) at every poll, for ever.
pub const PING_TIMEOUT_DELIVERED: Duration = Duration::from_secs(300);
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
    /// for data (`Collector::stalled`); `delivered`: the initiator's TCP has
    /// acknowledged everything sent, the ping included (an unanswered ping then waits
    /// [`PING_TIMEOUT_DELIVERED`], not [`PING_TIMEOUT`]).
    pub fn poll(
        &mut self,
        now: Instant,
        stalled: Option<Stalled>,
        tags: &mut TransferTags,
        delivered: bool,
    ) -> Vec<TimerAction> {
        let mut out = Vec::new();
        let limit = if delivered {
            PING_TIMEOUT_DELIVERED
        } else {
            PING_TIMEOUT
        };
        match self.ping {
            Some((_, sent)) if now.duration_since(sent) > limit => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One step: at this many milliseconds after the start, either hear from the
    /// initiator or poll with a transfer stalled since the given millisecond.
    enum Ev {
        Receive(u64),
        Poll(u64, Option<u64>),
        /// A poll while the initiator's TCP has acknowledged everything sent.
        PollDelivered(u64),
    }
    use Ev::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Ping(u32),
        PingUnanswered,
        /// Since when the task was stalled, in ms
        DataOverdue(u64),
    }

    type Case = (&'static str, Vec<(Ev, Vec<Out>)>);

    #[test]
    fn timers_table() {
        use Out::*;
        const S: u64 = 1000;
        let cases: Vec<Case> = vec![
            (
                "quiet, then a ping when idle for PING_IDLE, once",
                vec![
                    (Poll(4 * S, None), vec![]),
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (Poll(6 * S, None), vec![]),
                ],
            ),
            (
                "a ping unanswered for more than PING_TIMEOUT closes",
                vec![
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (Poll(35 * S, None), vec![]),
                    (Poll(35 * S + 1, None), vec![PingUnanswered]),
                ],
            ),
            (
                "an answer clears the ping; the next goes out after PING_IDLE more",
                vec![
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (Receive(6 * S), vec![]),
                    (Poll(10 * S, None), vec![]),
                    (Poll(11 * S, None), vec![Ping(2)]),
                    (Poll(40 * S, None), vec![]),
                ],
            ),
            (
                "a transfer without data for DATA_OUT_TIMEOUT closes",
                vec![
                    (Receive(18 * S), vec![]),
                    (Poll(19 * S, Some(0)), vec![]),
                    (Poll(20 * S - 1, Some(0)), vec![]),
                    (Receive(20 * S - 1), vec![]),
                    (Poll(20 * S, Some(0)), vec![DataOverdue(0)]),
                ],
            ),
            (
                "a transfer that made progress is not overdue",
                vec![
                    (Receive(21 * S), vec![]),
                    (Poll(21 * S, Some(2 * S)), vec![]),
                    (Poll(22 * S, Some(2 * S)), vec![DataOverdue(2 * S)]),
                ],
            ),
            (
                "ping due and data overdue together: ping, then close",
                vec![(Poll(20 * S, Some(0)), vec![Ping(1), DataOverdue(0)])],
            ),
            (
                "a ping the initiator's host took waits PING_TIMEOUT_DELIVERED",
                vec![
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (PollDelivered(36 * S), vec![]),
                    (PollDelivered(305 * S), vec![]),
                    (PollDelivered(305 * S + 1), vec![PingUnanswered]),
                ],
            ),
            (
                "taken and then owed again: the short deadline holds",
                vec![
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (PollDelivered(40 * S), vec![]),
                    (Poll(40 * S, None), vec![PingUnanswered]),
                ],
            ),
            (
                "an unanswered ping closes before the data deadline is looked at",
                vec![
                    (Poll(5 * S, None), vec![Ping(1)]),
                    (Poll(36 * S, Some(0)), vec![PingUnanswered]),
                ],
            ),
        ];
        for (name, events) in cases {
            let t0 = Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let mut timers = Timers::new(t0);
            let mut tags = TransferTags::default();
            for (i, (ev, want)) in events.into_iter().enumerate() {
                let got: Vec<Out> = match ev {
                    Receive(ms) => {
                        timers.on_receive(at(ms));
                        assert_eq!(timers.ping_outstanding(), None);
                        vec![]
                    }
                    Poll(ms, _) | PollDelivered(ms) => {
                        let (stalled, delivered) = match ev {
                            Poll(_, stalled) => (stalled, false),
                            _ => (None, true),
                        };
                        let stalled = stalled.map(|since| Stalled {
                            itt: 9,
                            since: at(since),
                            received: 0,
                            needed: 4096,
                        });
                        timers
                            .poll(at(ms), stalled, &mut tags, delivered)
                            .into_iter()
                            .map(|a| match a {
                                TimerAction::SendPing { ttt } => {
                                    assert_eq!(timers.ping_outstanding(), Some(ttt));
                                    Ping(ttt)
                                }
                                TimerAction::Close(Timeout::PingUnanswered) => PingUnanswered,
                                TimerAction::Close(Timeout::DataOut(s)) => {
                                    assert_eq!(s.itt, 9);
                                    DataOverdue(s.since.duration_since(t0).as_millis() as u64)
                                }
                            })
                            .collect()
                    }
                };
                assert_eq!(got, want, "{name}: event {i}");
            }
        }
    }

    #[test]
    fn transfer_tags_skip_the_reserved_tag() {
        let mut tags = TransferTags::default();
        assert_eq!(tags.allocate(), 1);
        let mut tags = TransferTags { next: 0xffff_fffe };
        assert_eq!(tags.allocate(), 0xffff_fffe);
        assert_eq!(tags.allocate(), 1);
    }
}
