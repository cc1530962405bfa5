//! Collecting a command's Data-Out (RFC 7143 §4.2.5.2, §11.7, §11.8): immediate data,
//! then unsolicited Data-Out up to FirstBurstLength, then R2Ts for the rest, at most
//! MaxOutstandingR2T at once and MaxBurstLength each.
//!
//! The collector holds one transfer per task tag, with what the caller attaches to it
//! (`T`: the answer, the volume, the byte budget). Events go in (`start`, `fund`,
//! `on_data_out`), `Action`s come out; time is passed in.

use std::collections::HashMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};

use super::TransferTags;
use crate::iscsi::params::SessionParams;
use crate::iscsi::pdu::{DataOut, R2t, RejectReason, RESERVED_TAG};
use crate::scsi::{self, Sense};

/// The negotiated limits that shape a transfer (§13.13, §13.14, §13.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstLimits {
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u16,
}

impl From<&SessionParams> for BurstLimits {
    fn from(p: &SessionParams) -> BurstLimits {
        BurstLimits {
            first_burst_length: p.first_burst_length,
            max_burst_length: p.max_burst_length,
            max_outstanding_r2t: p.max_outstanding_r2t,
        }
    }
}

/// Why a transfer's data is taken and dropped instead of used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// EDTL shorter than the command's transfer (write overflow).
    Overflow,
    /// The command failed before its data came (bad LBA, write protect, a DataSN
    /// gap, ...): answer this way once the data committed to has drained.
    Respond(scsi::Response),
}

/// A new transfer, from the command PDU.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub itt: u32,
    /// The LUN field as the command carried it (R2Ts echo it).
    pub lun: u64,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    /// Bytes to collect: the command's own transfer, cut to the EDTL; 0 when the data
    /// is only to be drained.
    pub needed: u32,
    /// The command's immediate data.
    pub immediate: Bytes,
    /// The command's F bit: no unsolicited Data-Out follows.
    pub final_bit: bool,
    pub discard: Option<Discard>,
}

/// What the collector asks of its caller.
#[derive(Debug)]
pub enum Action<T> {
    /// Send this R2T (StatSN peeked, not taken).
    SendR2t(R2t),
    /// Every byte is here: run the command with `data`.
    Run {
        itt: u32,
        data: Bytes,
        /// R2Ts sent for it (the ExpDataSN of its SCSI Response).
        r2t_sn: u32,
        task: T,
    },
    /// The data has drained: answer as `discard` says.
    Discarded { itt: u32, discard: Discard, task: T },
    /// Every R2T was answered yet bytes are missing: the initiator sent less than
    /// asked. The task fails (INVALID FIELD IN INFORMATION UNIT).
    Incomplete { itt: u32, task: T },
}

/// Where the permits for a transfer's solicited data stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Funding {
    /// None needed (nothing to solicit), or not asked for yet.
    None,
    /// Queued under this ticket; no R2T goes out before it is served.
    Awaiting(u64),
    /// Held: R2Ts may go out, and the buffer may take the whole transfer at once.
    Held,
}

/// One outstanding R2T: the range asked for, what has come, the DataSN expected next.
#[derive(Debug, Clone)]
struct Solicited {
    offset: u32,
    len: u32,
    got: u32,
    next_sn: u32,
}

struct Transfer<T> {
    lun: u64,
    /// Filled as data arrives: it never holds more than came, or than the permits
    /// cover.
    buf: BytesMut,
    funding: Funding,
    /// Unsolicited data must end here (§13.14 FirstBurstLength, or the immediate data
    /// alone with the F bit).
    unsolicited_limit: u32,
    needed: u32,
    edtl: u32,
    received: u32,
    /// The initiator has finished its unsolicited data (F bit seen, or none was due).
    unsolicited_done: bool,
    /// Next offset to ask for with an R2T.
    next_offset: u32,
    /// Outstanding R2Ts by TTT.
    r2ts: HashMap<u32, Solicited>,
    /// DataSN expected next in the unsolicited burst.
    unsolicited_sn: u32,
    r2t_sn: u32,
    discard: Option<Discard>,
    /// When the task last made progress: created, funded, or data came.
    progress: Instant,
    task: T,
}

impl<T> Transfer<T> {
    /// Copy arrived data to its offset. The buffer grows only to what has come (all of
    /// the transfer at once when the permits for it are held), never ahead of the data.
    fn place(&mut self, from: usize, data: &[u8]) {
        let to = from + data.len();
        if self.buf.len() < to {
            let want = if self.funding == Funding::Held {
                (self.needed as usize).max(to)
            } else {
                to
            };
            self.buf.reserve(want - self.buf.len());
            self.buf.resize(to, 0);
        }
        self.buf[from..to].copy_from_slice(data);
    }
}

/// A task asked for data that has made no progress since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    pub itt: u32,
    pub since: Instant,
    pub received: u32,
    pub needed: u32,
}

/// The transfers of one connection, by task tag.
pub struct Collector<T> {
    limits: BurstLimits,
    tasks: HashMap<u32, Transfer<T>>,
}

impl<T> Collector<T> {
    pub fn new(limits: BurstLimits) -> Collector<T> {
        Collector {
            limits,
            tasks: HashMap::new(),
        }
    }

    pub fn contains(&self, itt: u32) -> bool {
        self.tasks.contains_key(&itt)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// What the caller attached to task `itt`.
    pub fn task_mut(&mut self, itt: u32) -> Option<&mut T> {
        self.tasks.get_mut(&itt).map(|t| &mut t.task)
    }

    /// Start collecting. Returns the bytes to solicit with R2Ts, which must be paid
    /// for (`fund`) before the first R2T, or 0. Follow with `step`.
    pub fn start(&mut self, new: NewTransfer, task: T, now: Instant) -> u32 {
        let NewTransfer {
            itt,
            lun,
            edtl,
            needed,
            immediate,
            final_bit,
            discard,
        } = new;
        let imm = immediate.len().min(needed as usize);
        // What the initiator may send before any R2T: immediate data, plus unsolicited
        // Data-Out up to FirstBurstLength unless the command said F (§4.2.5.2).
        let unsolicited_end = if final_bit {
            immediate.len() as u32
        } else {
            self.limits.first_burst_length.min(edtl)
        };
        let t = Transfer {
            lun,
            // Nothing is allocated ahead of the data: the buffer grows as data comes.
            buf: BytesMut::from(&immediate[..imm]),
            funding: Funding::None,
            unsolicited_limit: unsolicited_end,
            needed,
            edtl,
            received: imm as u32,
            unsolicited_done: final_bit,
            next_offset: unsolicited_end.min(needed),
            r2ts: HashMap::new(),
            unsolicited_sn: 0,
            r2t_sn: 0,
            discard,
            progress: now,
            task,
        };
        let solicit = if t.discard.is_none() && t.next_offset < t.needed {
            t.needed - t.next_offset
        } else {
            0
        };
        self.tasks.insert(itt, t);
        solicit
    }

    /// Task `itt` waits in the caller's budget queue under `ticket`.
    pub fn await_funding(&mut self, itt: u32, ticket: u64) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.funding = Funding::Awaiting(ticket);
        }
    }

    /// True while task `itt` waits for funding under `ticket` (not aborted, not ended,
    /// not a later task reusing the tag).
    pub fn awaits(&self, itt: u32, ticket: u64) -> bool {
        self.tasks
            .get(&itt)
            .is_some_and(|t| t.funding == Funding::Awaiting(ticket))
    }

    /// The permits for task `itt`'s solicited data are held: its R2Ts may go out.
    /// Follow with `step`.
    pub fn fund(&mut self, itt: u32, now: Instant) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.funding = Funding::Held;
            t.progress = now;
        }
    }

    /// Send what R2Ts task `itt` may have out, and end it if all its data is here.
    pub fn step(&mut self, itt: u32, tags: &mut TransferTags) -> Vec<Action<T>> {
        let mut out = Vec::new();
        if let Some(mut t) = self.tasks.remove(&itt) {
            self.issue_r2ts(itt, &mut t, tags, &mut out);
            self.settle(itt, t, &mut out);
        }
        out
    }

    /// A Data-Out PDU (§11.7): route it to its task by ITT and TTT. An error is the
    /// reason to Reject the PDU with; the task, if any, goes on as before it.
    pub fn on_data_out(
        &mut self,
        d: &DataOut,
        now: Instant,
        tags: &mut TransferTags,
    ) -> Result<Vec<Action<T>>, RejectReason> {
        let mut out = Vec::new();
        let Some(mut c) = self.tasks.remove(&d.itt) else {
            debug!(itt = d.itt, "Data-Out for an unknown task");
            return Err(RejectReason::InvalidPduField);
        };
        let len = d.data.len() as u32;
        let end = d.buffer_offset as u64 + len as u64;
        let valid_ttt = if d.ttt == RESERVED_TAG {
            // §13.14: unsolicited data stays within FirstBurstLength.
            !c.unsolicited_done && end <= c.unsolicited_limit as u64
        } else {
            // A solicited PDU must fall inside the range its R2T asked for.
            c.r2ts.get(&d.ttt).is_some_and(|r| {
                d.buffer_offset >= r.offset && end <= r.offset as u64 + r.len as u64
            })
        };
        // §11.7.5/§11.8.4: data beyond the EDTL or for no open solicitation is a
        // protocol error.
        if !valid_ttt || end > c.edtl as u64 {
            debug!(
                itt = d.itt,
                ttt = d.ttt,
                offset = d.buffer_offset,
                len,
                "Data-Out out of bounds"
            );
            self.tasks.insert(d.itt, c);
            return Err(RejectReason::ProtocolError);
        }
        // §11.7.4: DataSN counts the PDUs of each sequence (each R2T, and the
        // unsolicited burst) from 0. At ErrorRecoveryLevel 0 a gap cannot be mended by
        // recovery R2Ts, so the task ends in CHECK CONDITION once the data the
        // initiator already committed to has drained; no more R2Ts go out for it.
        let want_sn = match c.r2ts.get(&d.ttt) {
            Some(r) => r.next_sn,
            None => c.unsolicited_sn,
        };
        if d.data_sn != want_sn && c.discard.is_none() {
            warn!(
                itt = d.itt,
                data_sn = d.data_sn,
                want_sn,
                "Data-Out DataSN out of sequence"
            );
            c.discard = Some(Discard::Respond(scsi::Response::check(
                Sense::data_phase_error(),
            )));
            c.next_offset = c.needed;
        }
        c.progress = now;
        if c.discard.is_none() && (d.buffer_offset as u64) < c.needed as u64 {
            let from = d.buffer_offset as usize;
            let to = (end as usize).min(c.needed as usize);
            c.place(from, &d.data[..to - from]);
            c.received += (to - from) as u32;
        }
        if d.ttt == RESERVED_TAG {
            c.unsolicited_sn += 1;
            if d.final_bit {
                c.unsolicited_done = true;
            }
        } else if let Some(r) = c.r2ts.get_mut(&d.ttt) {
            r.got += len;
            r.next_sn += 1;
            if d.final_bit || r.got >= r.len {
                c.r2ts.remove(&d.ttt);
                self.issue_r2ts(d.itt, &mut c, tags, &mut out);
            }
        }
        self.settle(d.itt, c, &mut out);
        Ok(out)
    }

    /// End task `itt` (aborted): what was attached to it comes back.
    pub fn remove(&mut self, itt: u32) -> Option<T> {
        self.tasks.remove(&itt).map(|t| t.task)
    }

    /// Keep only the tasks whose LUN field `keep` accepts; the others end.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.tasks.retain(|_, t| keep(t.lun));
    }

    /// The task asked for data (or owing unsolicited data) that has waited longest
    /// without progress. A task still waiting for its budget has been asked for
    /// nothing yet and does not count.
    pub fn stalled(&self) -> Option<Stalled> {
        self.tasks
            .iter()
            .filter(|(_, t)| !matches!(t.funding, Funding::Awaiting(_)))
            .min_by_key(|(_, t)| t.progress)
            .map(|(&itt, t)| Stalled {
                itt,
                since: t.progress,
                received: t.received,
                needed: t.needed,
            })
    }

    fn issue_r2ts(
        &self,
        itt: u32,
        c: &mut Transfer<T>,
        tags: &mut TransferTags,
        out: &mut Vec<Action<T>>,
    ) {
        if c.funding != Funding::Held {
            return;
        }
        let max_out = self.limits.max_outstanding_r2t.max(1) as usize;
        while c.r2ts.len() < max_out && c.next_offset < c.needed {
            let len = (c.needed - c.next_offset).min(self.limits.max_burst_length);
            let ttt = tags.allocate();
            c.r2ts.insert(
                ttt,
                Solicited {
                    offset: c.next_offset,
                    len,
                    got: 0,
                    next_sn: 0,
                },
            );
            out.push(Action::SendR2t(R2t {
                lun: c.lun,
                itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn: c.r2t_sn,
                buffer_offset: c.next_offset,
                desired_len: len,
            }));
            c.r2t_sn += 1;
            c.next_offset += len;
        }
    }

    /// Keep collecting, or end the task once everything is here.
    fn settle(&mut self, itt: u32, c: Transfer<T>, out: &mut Vec<Action<T>>) {
        let complete = c.unsolicited_done && c.r2ts.is_empty() && c.next_offset >= c.needed;
        if !complete {
            self.tasks.insert(itt, c);
            return;
        }
        match c.discard {
            Some(discard) => out.push(Action::Discarded {
                itt,
                discard,
                task: c.task,
            }),
            None if c.received < c.needed => {
                warn!(
                    itt,
                    received = c.received,
                    needed = c.needed,
                    "write data incomplete"
                );
                out.push(Action::Incomplete { itt, task: c.task });
            }
            None => {
                let mut buf = c.buf;
                buf.resize(c.needed as usize, 0);
                out.push(Action::Run {
                    itt,
                    data: buf.freeze(),
                    r2t_sn: c.r2t_sn,
                    task: c.task,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ITT: u32 = 0x10;
    const U: u32 = RESERVED_TAG;

    /// An action, reduced to what a test compares.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        /// ttt, R2TSN, offset, length
        R2t(u32, u32, u32, u32),
        Reject(RejectReason),
        /// data length, R2Ts sent
        Run(usize, u32),
        Overflow,
        /// sense key, ASC, ASCQ of the answer
        Respond(u8, u8, u8),
        Incomplete,
    }

    /// One event fed to the collector.
    enum Ev {
        /// Pay for the solicited data, then step.
        Fund,
        /// A Data-Out: TTT, DataSN, offset, length, F bit.
        Data(u32, u32, u32, u32, bool),
        /// A Data-Out for another task.
        DataFor(u32),
    }
    use Ev::*;

    fn reduce(actions: Vec<Action<()>>) -> Vec<Out> {
        actions
            .into_iter()
            .map(|a| match a {
                Action::SendR2t(r) => {
                    assert_eq!((r.itt, r.lun), (ITT, 0x0001_0000_0000_0000));
                    Out::R2t(r.ttt, r.r2t_sn, r.buffer_offset, r.desired_len)
                }
                Action::Run {
                    itt, data, r2t_sn, ..
                } => {
                    assert_eq!(itt, ITT);
                    // Each byte carries its offset (mod 251), so misplaced data shows.
                    for (i, b) in data.iter().enumerate() {
                        assert_eq!(*b, (i % 251) as u8, "byte {i}");
                    }
                    Out::Run(data.len(), r2t_sn)
                }
                Action::Discarded {
                    discard: Discard::Overflow,
                    ..
                } => Out::Overflow,
                Action::Discarded {
                    discard: Discard::Respond(r),
                    ..
                } => {
                    let s = r.sense.expect("an answer with sense");
                    Out::Respond(s.key, s.asc, s.ascq)
                }
                Action::Incomplete { .. } => Out::Incomplete,
            })
            .collect()
    }

    fn payload(offset: u32, len: u32) -> Bytes {
        (offset..offset + len).map(|i| (i % 251) as u8).collect()
    }

    struct Case {
        name: &'static str,
        /// FirstBurstLength, MaxBurstLength, MaxOutstandingR2T
        limits: (u32, u32, u16),
        /// EDTL, bytes needed, immediate data length, F bit on the command
        cmd: (u32, u32, u32, bool),
        discard: Option<Discard>,
        /// Bytes to solicit that `start` reports
        solicit: u32,
        /// What `step` right after `start` gives
        first: Vec<Out>,
        events: Vec<(Ev, Vec<Out>)>,
        /// Still collecting at the end
        open: bool,
    }

    fn run(c: Case) {
        let now = Instant::now();
        let (first_burst_length, max_burst_length, max_outstanding_r2t) = c.limits;
        let mut col: Collector<()> = Collector::new(BurstLimits {
            first_burst_length,
            max_burst_length,
            max_outstanding_r2t,
        });
        let mut tags = TransferTags::default();
        let (edtl, needed, imm, final_bit) = c.cmd;
        let solicit = col.start(
            NewTransfer {
                itt: ITT,
                lun: 0x0001_0000_0000_0000,
                edtl,
                needed,
                immediate: payload(0, imm),
                final_bit,
                discard: c.discard,
            },
            (),
            now,
        );
        assert_eq!(solicit, c.solicit, "{}: bytes to solicit", c.name);
        assert_eq!(
            reduce(col.step(ITT, &mut tags)),
            c.first,
            "{}: first",
            c.name
        );
        let mut rejected = Vec::new();
        for (i, (ev, want)) in c.events.into_iter().enumerate() {
            let got = match ev {
                Fund => {
                    col.fund(ITT, now);
                    col.step(ITT, &mut tags)
                }
                Data(ttt, data_sn, offset, len, final_bit) => {
                    let d = DataOut {
                        final_bit,
                        lun: 0,
                        itt: ITT,
                        ttt,
                        exp_stat_sn: 0,
                        data_sn,
                        buffer_offset: offset,
                        data: payload(offset, len),
                    };
                    match col.on_data_out(&d, now, &mut tags) {
                        Ok(actions) => actions,
                        Err(reason) => {
                            rejected.push(reason);
                            vec![]
                        }
                    }
                }
                DataFor(itt) => {
                    let d = DataOut {
                        final_bit: true,
                        lun: 0,
                        itt,
                        ttt: U,
                        exp_stat_sn: 0,
                        data_sn: 0,
                        buffer_offset: 0,
                        data: payload(0, 512),
                    };
                    match col.on_data_out(&d, now, &mut tags) {
                        Ok(actions) => actions,
                        Err(reason) => {
                            rejected.push(reason);
                            vec![]
                        }
                    }
                }
            };
            let mut got = reduce(got);
            got.extend(rejected.drain(..).map(Out::Reject));
            assert_eq!(got, want, "{}: event {i}", c.name);
        }
        assert_eq!(col.contains(ITT), c.open, "{}: still collecting", c.name);
    }

    #[test]
    fn data_out_table() {
        use Out::*;
        let k = 1024;
        let cases = vec![
            Case {
                name: "R2Ts split by MaxBurstLength, one outstanding",
                limits: (8 * k, 4 * k, 1),
                cmd: (12 * k, 12 * k, 0, true),
                discard: None,
                solicit: 12 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 4 * k)]),
                    (Data(1, 0, 0, 4 * k, true), vec![R2t(2, 1, 4 * k, 4 * k)]),
                    (
                        Data(2, 0, 4 * k, 4 * k, true),
                        vec![R2t(3, 2, 8 * k, 4 * k)],
                    ),
                    (Data(3, 0, 8 * k, 2 * k, false), vec![]),
                    (
                        Data(3, 1, 10 * k, 2 * k, true),
                        vec![Run(12 * k as usize, 3)],
                    ),
                ],
                open: false,
            },
            Case {
                name: "MaxOutstandingR2T 2: two R2Ts at once, the next as one completes",
                limits: (8 * k, 4 * k, 2),
                cmd: (12 * k, 12 * k, 0, true),
                discard: None,
                solicit: 12 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 4 * k), R2t(2, 1, 4 * k, 4 * k)]),
                    (
                        Data(2, 0, 4 * k, 4 * k, true),
                        vec![R2t(3, 2, 8 * k, 4 * k)],
                    ),
                    (Data(1, 0, 0, 4 * k, true), vec![]),
                    (
                        Data(3, 0, 8 * k, 4 * k, true),
                        vec![Run(12 * k as usize, 3)],
                    ),
                ],
                open: false,
            },
            Case {
                name: "immediate, then unsolicited to FirstBurstLength, then an R2T",
                limits: (8 * k, 64 * k, 1),
                cmd: (16 * k, 16 * k, 2 * k, false),
                discard: None,
                solicit: 8 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 8 * k, 8 * k)]),
                    (Data(U, 0, 2 * k, 6 * k, true), vec![]),
                    (
                        Data(1, 0, 8 * k, 8 * k, true),
                        vec![Run(16 * k as usize, 1)],
                    ),
                ],
                open: false,
            },
            Case {
                name: "all of it immediate with F: runs at once, no R2T",
                limits: (8 * k, 64 * k, 1),
                cmd: (4 * k, 4 * k, 4 * k, true),
                discard: None,
                solicit: 0,
                first: vec![Run(4 * k as usize, 0)],
                events: vec![],
                open: false,
            },
            Case {
                name: "no R2T before the budget is held",
                limits: (0, 64 * k, 1),
                cmd: (8 * k, 8 * k, 0, true),
                discard: None,
                solicit: 8 * k,
                first: vec![],
                events: vec![
                    (
                        Data(1, 0, 0, 512, true),
                        vec![Reject(RejectReason::ProtocolError)],
                    ),
                    (Fund, vec![R2t(1, 0, 0, 8 * k)]),
                ],
                open: true,
            },
            Case {
                name: "solicited data at the wrong offset is refused, the task goes on",
                limits: (0, 4 * k, 1),
                cmd: (4 * k, 4 * k, 0, true),
                discard: None,
                solicit: 4 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 4 * k)]),
                    (
                        Data(1, 0, 4 * k, 512, true),
                        vec![Reject(RejectReason::ProtocolError)],
                    ),
                    (
                        Data(1, 0, 3 * k, 2 * k, true),
                        vec![Reject(RejectReason::ProtocolError)],
                    ),
                    (Data(1, 0, 0, 4 * k, true), vec![Run(4 * k as usize, 1)]),
                ],
                open: false,
            },
            Case {
                name: "unsolicited data beyond FirstBurstLength",
                limits: (4 * k, 64 * k, 1),
                cmd: (8 * k, 8 * k, 0, false),
                discard: None,
                solicit: 4 * k,
                first: vec![],
                events: vec![(
                    Data(U, 0, 4 * k, 512, false),
                    vec![Reject(RejectReason::ProtocolError)],
                )],
                open: true,
            },
            Case {
                name: "unsolicited data after the command's F bit",
                limits: (64 * k, 64 * k, 1),
                cmd: (8 * k, 8 * k, 512, true),
                discard: None,
                solicit: 8 * k - 512,
                first: vec![],
                events: vec![(
                    Data(U, 0, 512, 512, false),
                    vec![Reject(RejectReason::ProtocolError)],
                )],
                open: true,
            },
            Case {
                name: "data beyond the EDTL (overflow)",
                limits: (64 * k, 64 * k, 1),
                cmd: (4 * k, 4 * k, 0, false),
                discard: None,
                solicit: 0,
                first: vec![],
                events: vec![
                    (
                        Data(U, 0, 0, 8 * k, true),
                        vec![Reject(RejectReason::ProtocolError)],
                    ),
                    (Data(U, 0, 0, 4 * k, true), vec![Run(4 * k as usize, 0)]),
                ],
                open: false,
            },
            Case {
                name: "unknown TTT, unknown ITT",
                limits: (0, 64 * k, 1),
                cmd: (4 * k, 4 * k, 0, true),
                discard: None,
                solicit: 4 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 4 * k)]),
                    (
                        Data(7, 0, 0, 4 * k, true),
                        vec![Reject(RejectReason::ProtocolError)],
                    ),
                    (
                        DataFor(ITT + 1),
                        vec![Reject(RejectReason::InvalidPduField)],
                    ),
                ],
                open: true,
            },
            Case {
                name: "DataSN gap: the data drains, then CHECK CONDITION, no more R2Ts",
                limits: (0, 8 * k, 1),
                cmd: (16 * k, 16 * k, 0, true),
                discard: None,
                solicit: 16 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 8 * k)]),
                    (Data(1, 1, 0, 4 * k, false), vec![]),
                    (
                        Data(1, 1, 4 * k, 4 * k, true),
                        vec![Respond(0x0b, 0x4b, 0x00)],
                    ),
                ],
                open: false,
            },
            Case {
                name: "unsolicited DataSN gap",
                limits: (8 * k, 8 * k, 1),
                cmd: (8 * k, 8 * k, 0, false),
                discard: None,
                solicit: 0,
                first: vec![],
                events: vec![
                    (Data(U, 0, 0, 4 * k, false), vec![]),
                    (
                        Data(U, 2, 4 * k, 4 * k, true),
                        vec![Respond(0x0b, 0x4b, 0x00)],
                    ),
                ],
                open: false,
            },
            Case {
                name: "F bit ends an R2T's sequence short: the task is incomplete",
                limits: (0, 8 * k, 1),
                cmd: (8 * k, 8 * k, 0, true),
                discard: None,
                solicit: 8 * k,
                first: vec![],
                events: vec![
                    (Fund, vec![R2t(1, 0, 0, 8 * k)]),
                    (Data(1, 0, 0, 4 * k, true), vec![Incomplete]),
                ],
                open: false,
            },
            Case {
                name: "overflow: unsolicited data drains, then the overflow answer",
                limits: (8 * k, 8 * k, 1),
                cmd: (8 * k, 0, 0, false),
                discard: Some(Discard::Overflow),
                solicit: 0,
                first: vec![],
                events: vec![
                    (Data(U, 0, 0, 4 * k, false), vec![]),
                    (Data(U, 1, 4 * k, 4 * k, true), vec![Overflow]),
                ],
                open: false,
            },
            Case {
                name: "a failed command with F answers at once",
                limits: (8 * k, 8 * k, 1),
                cmd: (8 * k, 0, 0, true),
                discard: Some(Discard::Respond(scsi::Response::check(
                    Sense::data_phase_error(),
                ))),
                solicit: 0,
                first: vec![Respond(0x0b, 0x4b, 0x00)],
                events: vec![],
                open: false,
            },
        ];
        for c in cases {
            run(c);
        }
    }

    #[test]
    fn funding_queue_and_stalls() {
        let t0 = Instant::now();
        let mut col: Collector<u8> = Collector::new(BurstLimits {
            first_burst_length: 0,
            max_burst_length: 4096,
            max_outstanding_r2t: 1,
        });
        let mut tags = TransferTags::default();
        let new = |itt| NewTransfer {
            itt,
            lun: 0,
            edtl: 4096,
            needed: 4096,
            immediate: Bytes::new(),
            final_bit: true,
            discard: None,
        };
        assert_eq!(col.start(new(1), 1, t0), 4096);
        col.await_funding(1, 7);
        assert!(col.step(1, &mut tags).is_empty(), "no R2T while waiting");
        assert!(col.awaits(1, 7) && !col.awaits(1, 8));
        assert_eq!(col.stalled(), None, "waiting for budget is not a stall");
        let t1 = t0 + Duration::from_secs(3);
        col.fund(1, t1);
        assert!(!col.awaits(1, 7));
        assert_eq!(reduce_ttts(col.step(1, &mut tags)), vec![1]);
        let s = col.stalled().expect("asked for data");
        assert_eq!((s.itt, s.since, s.received, s.needed), (1, t1, 0, 4096));
        // The oldest of several.
        col.start(new(2), 2, t0);
        assert_eq!(col.stalled().map(|s| s.itt), Some(2));
        // Abort by LUN, then by tag.
        col.retain(|lun| lun != 0);
        assert!(col.is_empty());
        col.start(new(3), 3, t0);
        assert_eq!(col.remove(3), Some(3));
        assert_eq!(col.remove(3), None);
    }

    fn reduce_ttts(actions: Vec<Action<u8>>) -> Vec<u32> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::SendR2t(r) => Some(r.ttt),
                _ => None,
            })
            .collect()
    }
}
