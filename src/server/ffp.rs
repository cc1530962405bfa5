//! Full feature phase of one connection: the task that owns the socket's read side.
//! It reads PDUs, feeds the session core (`iscsi::session`: CmdSN window, Data-Out
//! collection, task management, logout, timers) with the time, and carries out what
//! the core returns: SCSI commands run in spawned tasks, PDUs go to the writer, the
//! connection closes (RFC 7143 §4.2, §6, §11).
//!
//! The reader side owns this state (`&mut self`, no locks on the per-command path);
//! volume I/O runs in spawned tasks that answer through the writer channel.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::iscsi::params::{ConnParams, SessionParams};
use crate::iscsi::pdu::{
    Bhs, DataOut, FrameError, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, Reject,
    RejectReason, ScsiCommand, TextRequest, TmfRequest, TmfResponse, RESERVED_TAG,
};
use crate::iscsi::session::dataout::{Action, BurstLimits, Collector, Discard, NewTransfer};
use crate::iscsi::session::logout::{self, LogoutDecision};
pub use crate::iscsi::session::timers::DATA_OUT_TIMEOUT;
use crate::iscsi::session::timers::{Timeout, TimerAction, Timers};
use crate::iscsi::session::tmf::{self, Affected, TaskState};
use crate::iscsi::session::window::{Arrival, CmdSlot, Immediate, Sequencer, Window};
use crate::iscsi::session::TransferTags;
use crate::iscsi::Request;
use crate::scsi::{self, Plan, Sense, Status};
use crate::server::budget::{WriteBudget, WriteBudgets};
use crate::server::exec::{self, Reply, SESSION_READ_BUDGET};
use crate::server::frames::{FrameReader, ReadError};
use crate::server::luns::{LunHandle, LunView};
use crate::server::registry::SessionEntry;
use crate::server::writer::{Hold, Outgoing, Stat};
use crate::server::xcopy::{self, CopyResults, Requester};
use crate::server::Shared;

/// The most a single command may move (what VPD Block Limits announces); larger
/// transfers get INVALID FIELD IN CDB.
pub const MAX_TRANSFER: u64 = scsi::MAX_TRANSFER_BYTES as u64;
/// A task whose I/O is running in a spawned task.
struct Running {
    /// Tells this task from a later one that reuses its tag.
    id: u64,
    lun: u64,
    aborted: Arc<AtomicBool>,
    done: watch::Receiver<bool>,
}

type RunningMap = Arc<Mutex<HashMap<u32, Running>>>;

/// A running task's tag, held by its answer: the tag is free again once the final PDU
/// has been handed to the socket (or the answer dropped), not before.
struct TagGuard {
    running: RunningMap,
    itt: u32,
    id: u64,
}

impl Drop for TagGuard {
    fn drop(&mut self) {
        let mut running = self.running.lock();
        if running.get(&self.itt).is_some_and(|r| r.id == self.id) {
            running.remove(&self.itt);
        }
    }
}

/// A command's place in the queue for Data-Out budget.
#[derive(Debug, Clone, Copy)]
struct BudgetTicket {
    itt: u32,
    bytes: u32,
    id: u64,
}

/// Waiting for Data-Out budget for the command at the head of the queue.
type BudgetWait = Pin<Box<dyn Future<Output = Option<WriteBudget>> + Send + Sync>>;

enum WriteKind {
    Write {
        lba: u64,
        fua: bool,
    },
    Unmap,
    WriteSame {
        lba: u64,
        blocks: u64,
        unmap: bool,
    },
    Verify {
        lba: u64,
        blocks: u32,
    },
    ModeSelect {
        ten: bool,
    },
    PersistentReserveOut {
        sa: u8,
        scope_type: u8,
    },
    ExtendedCopy,
    /// COMPARE AND WRITE, ORWRITE, WRITE ATOMIC: run holding their range exclusively.
    Exclusive(exec::ExclusiveWrite),
    /// SANITIZE OVERWRITE with its parameter list.
    Sanitize {
        immed: bool,
    },
}

/// What the connection attaches to a command while the core collects its Data-Out.
struct Collecting {
    lun: Option<Arc<LunHandle>>,
    kind: WriteKind,
    /// Permits for the solicited data, taken before the first R2T (`server::budget`).
    budget: Option<WriteBudget>,
    /// The command's own transfer length, for the residual.
    spdtl: u64,
    reply: Reply,
}

/// Answers one Text request of the connection (SendTargets and friends) with its Text
/// Response or a Reject; long answers continue over further requests (RFC 7143 §11.10).
pub type TextHandler = Box<dyn FnMut(&TextRequest) -> Pdu + Send + Sync>;

pub enum End {
    /// The connection should close now.
    Close,
}

/// What a connection brings to its full feature phase.
pub struct Setup<R> {
    pub node: Arc<Shared>,
    pub reader: FrameReader<R>,
    pub out: mpsc::Sender<Outgoing>,
    pub window: Arc<Window>,
    pub session: SessionParams,
    pub conn: ConnParams,
    pub cid: u16,
    pub discovery: bool,
    pub luns: LunView,
    pub entry: Arc<SessionEntry>,
    pub stop: watch::Receiver<bool>,
    /// Answers Text requests (SendTargets) for this connection.
    pub text: TextHandler,
    /// The connection's socket as the session sees it: whether the initiator's TCP has
    /// taken what was sent (an unanswered ping to a live host waits longer).
    pub presence: Arc<super::presence::ConnPresence>,
}

pub struct Ffp<R> {
    node: Arc<Shared>,
    reader: FrameReader<R>,
    out: mpsc::Sender<Outgoing>,
    session: SessionParams,
    conn: ConnParams,
    cid: u16,
    discovery: bool,
    luns: LunView,
    entry: Arc<SessionEntry>,
    stop: watch::Receiver<bool>,
    text: TextHandler,
    /// Commands in CmdSN order; holds those that arrived early, with their headers
    /// (for a Reject).
    order: Sequencer<(Request, Bhs)>,
    /// Commands collecting their Data-Out.
    collecting: Collector<Collecting>,
    tags: TransferTags,
    timers: Timers,
    running: RunningMap,
    next_task_id: u64,
    /// Bytes of Data-In this session may hold.
    read_budget: Arc<Semaphore>,
    writes: WriteBudgets,
    /// Commands waiting for Data-Out budget, first come first served.
    budget_queue: VecDeque<BudgetTicket>,
    next_ticket: u64,
    budget_wait: Option<BudgetWait>,
    /// Finished EXTENDED COPY outcomes kept for RECEIVE COPY RESULTS.
    copies: Arc<CopyResults>,
    presence: Arc<super::presence::ConnPresence>,
}

impl<R: AsyncRead + Unpin> Ffp<R> {
    pub fn new(setup: Setup<R>) -> Self {
        let Setup {
            node,
            reader,
            out,
            window,
            session,
            conn,
            cid,
            discovery,
            luns,
            entry,
            stop,
            text,
            presence,
        } = setup;
        let writes = WriteBudgets::new(node.write_budget.clone());
        let collecting = Collector::new(BurstLimits::from(&session));
        let mut luns = luns;
        luns.bind(&entry.initiator, entry.isid);
        Ffp {
            node,
            reader,
            out,
            session,
            conn,
            cid,
            discovery,
            luns,
            entry,
            stop,
            text,
            order: Sequencer::new(window),
            collecting,
            tags: TransferTags::default(),
            timers: Timers::new(Instant::now()),
            running: Arc::new(Mutex::new(HashMap::new())),
            next_task_id: 0,
            read_budget: Arc::new(Semaphore::new(SESSION_READ_BUDGET as usize)),
            writes,
            copies: Arc::default(),
            budget_queue: VecDeque::new(),
            next_ticket: 0,
            budget_wait: None,
            presence,
        }
    }

    /// Serve until logout, a fatal protocol error, a dead peer, or a stop request.
    pub async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut bytes_in = 0u64;
            let res = tokio::select! {
                r = self.reader.next(&mut bytes_in) => Some(r),
                _ = self.stop.changed() => {
                    debug!("session stopped from outside");
                    break;
                }
                b = wait_budget(&mut self.budget_wait), if self.budget_wait.is_some() => {
                    self.budget_wait = None;
                    self.budget_granted(b).await;
                    continue;
                }
                _ = tick.tick() => None,
            };
            self.entry
                .traffic
                .bytes_in
                .fetch_add(bytes_in, Ordering::Relaxed);
            let Some(res) = res else {
                if self.on_tick(Instant::now()).await.is_err() {
                    break;
                }
                continue;
            };
            self.timers.on_receive(Instant::now());
            let pdu = match res {
                Ok(p) => p,
                Err(e) => {
                    if self.read_error(e).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let bhs = pdu.bhs;
            match Request::parse(pdu) {
                Ok(req) => {
                    if let Err(End::Close) = self.receive(req, bhs).await {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "malformed PDU");
                    self.reject(RejectReason::InvalidPduField, bhs).await;
                }
            }
        }
        self.abort_all(None);
        // I_T nexus loss (SAM-5 6.3.4): RESERVE reservations and preventions go.
        self.luns.nexus_lost();
    }

    async fn read_error(&mut self, e: ReadError) -> Result<(), End> {
        match e {
            ReadError::Closed => {
                debug!("initiator closed the connection");
                Err(End::Close)
            }
            // §7.8: a data digest error loses only that PDU's payload.
            ReadError::Frame(FrameError::DataDigest { bhs }) => {
                warn!("data digest error");
                self.reject(RejectReason::DataDigestError, *bhs).await;
                Ok(())
            }
            // The length of what follows cannot be trusted: the stream is lost.
            ReadError::Frame(FrameError::DataSegmentTooLong { len, max, bhs }) => {
                warn!(len, max, "data segment beyond MaxRecvDataSegmentLength");
                self.reject(RejectReason::ProtocolError, *bhs).await;
                Err(End::Close)
            }
            ReadError::Frame(FrameError::HeaderDigest) => {
                warn!("header digest error; closing the connection");
                Err(End::Close)
            }
            ReadError::Truncated => {
                debug!("connection closed in the middle of a PDU");
                Err(End::Close)
            }
            ReadError::Io(e) => {
                debug!(error = %e, "read failed");
                Err(End::Close)
            }
        }
    }

    /// The timers' turn: ping an idle initiator, give up on a dead one or on a task
    /// whose data never comes (`iscsi::session::timers`).
    async fn on_tick(&mut self, now: Instant) -> Result<(), End> {
        let stalled = self.collecting.stalled();
        // An initiator that stopped mid-PDU is broken, not idle: the long wait is only
        // for one between PDUs whose host took the ping. Asked only while a ping waits
        // for its answer.
        let delivered = self.timers.ping_outstanding().is_some()
            && !self.reader.mid_frame()
            && self.presence.delivered();
        for action in self.timers.poll(now, stalled, &mut self.tags, delivered) {
            match action {
                TimerAction::SendPing { ttt } => {
                    let nop = NopIn {
                        lun: 0,
                        itt: RESERVED_TAG,
                        ttt,
                        stat_sn: 0,
                        exp_cmd_sn: 0,
                        max_cmd_sn: 0,
                        data: Bytes::new(),
                    };
                    self.send(Outgoing::new(nop.to_pdu(), Stat::Peek)).await;
                }
                TimerAction::Close(Timeout::PingUnanswered) => {
                    warn!("initiator did not answer a NOP-In ping; closing the connection");
                    return Err(End::Close);
                }
                TimerAction::Close(Timeout::DataOut(s)) => {
                    warn!(
                        itt = s.itt,
                        received = s.received,
                        needed = s.needed,
                        "no Data-Out for {DATA_OUT_TIMEOUT:?}; closing the connection"
                    );
                    return Err(End::Close);
                }
            }
        }
        Ok(())
    }

    async fn send(&self, o: Outgoing) {
        let _ = self.out.send(o).await;
    }

    async fn reject(&self, reason: RejectReason, header: Bhs) {
        let r = Reject {
            reason: reason as u8,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn: 0,
            header,
        };
        // §11.17: a Reject advances StatSN like any response.
        self.send(Outgoing::new(r.to_pdu(), Stat::Advance)).await;
    }

    /// Ordering by CmdSN (§4.2.2.1): deliver in order, hold what comes early, drop what
    /// is outside the window.
    async fn receive(&mut self, req: Request, bhs: Bhs) -> Result<(), End> {
        let ordered = match &req {
            Request::ScsiCommand(c) => Some((c.immediate, c.cmd_sn)),
            Request::Tmf(t) => Some((t.immediate, t.cmd_sn)),
            Request::Text(t) => Some((t.immediate, t.cmd_sn)),
            Request::Logout(l) => Some((l.immediate, l.cmd_sn)),
            // A NOP-Out answering our ping carries no CmdSN of its own.
            Request::NopOut(n) if n.itt != RESERVED_TAG => Some((n.immediate, n.cmd_sn)),
            _ => None,
        };
        match ordered {
            None => self.deliver(req, bhs, None).await,
            Some((true, _)) => {
                // §4.2.2.1: an immediate command's CmdSN may lie outside the window, but
                // what it may hold is bounded all the same (§3.2.2.1): a few per
                // connection, else Reject "too many immediate commands" (§11.17.1).
                let kind = match req {
                    Request::Tmf(_) => Immediate::TaskManagement,
                    _ => Immediate::Other,
                };
                match self.order.on_immediate(kind) {
                    Some(slot) => self.deliver(req, bhs, Some(slot)).await,
                    None => {
                        debug!(?kind, "too many immediate commands outstanding; rejected");
                        self.reject(RejectReason::ImmediateCommandReject, bhs).await;
                        Ok(())
                    }
                }
            }
            Some((false, sn)) => match self.order.on_command(sn, (req, bhs)) {
                Arrival::Deliver(ready) => {
                    for ((req, bhs), slot) in ready {
                        self.deliver(req, bhs, Some(slot)).await?;
                    }
                    Ok(())
                }
                Arrival::Held => {
                    let exp = self.order.window().exp_cmd_sn();
                    debug!(cmd_sn = sn, exp, "command arrived early; held");
                    Ok(())
                }
                Arrival::Duplicate => {
                    let exp = self.order.window().exp_cmd_sn();
                    debug!(cmd_sn = sn, exp, "duplicate of a held command ignored");
                    Ok(())
                }
                Arrival::Ignored { exp, max } => {
                    debug!(
                        cmd_sn = sn,
                        exp, max, "command outside the CmdSN window ignored"
                    );
                    Ok(())
                }
            },
        }
    }

    /// The queue's head got its Data-Out budget: its R2Ts may go out now. Then serve the
    /// next commands in order, as far as the budgets allow.
    async fn budget_granted(&mut self, b: Option<WriteBudget>) {
        if let Some(t) = self.budget_queue.pop_front() {
            if let Some(b) = b {
                self.give_budget(t, b).await;
            }
        }
        while let Some(&t) = self.budget_queue.front() {
            if !self.waits_for_budget(t) {
                // Aborted or ended while it waited.
                self.budget_queue.pop_front();
                continue;
            }
            match self.writes.try_take(t.bytes) {
                Some(b) => {
                    self.budget_queue.pop_front();
                    self.give_budget(t, b).await;
                }
                None => {
                    self.budget_wait = Some(Box::pin(self.writes.clone().take(t.bytes)));
                    return;
                }
            }
        }
    }

    fn waits_for_budget(&self, t: BudgetTicket) -> bool {
        self.collecting.awaits(t.itt, t.id)
    }

    async fn give_budget(&mut self, t: BudgetTicket, b: WriteBudget) {
        if !self.waits_for_budget(t) {
            return;
        }
        if let Some(c) = self.collecting.task_mut(t.itt) {
            c.budget = Some(b);
        }
        self.collecting.fund(t.itt, Instant::now());
        let actions = self.collecting.step(t.itt, &mut self.tags);
        self.perform(actions).await;
    }

    /// Ask for the Data-Out budget of command `itt` (its R2Ts wait for it).
    fn request_budget(&mut self, itt: u32, bytes: u32) {
        if self.budget_queue.is_empty() {
            if let Some(b) = self.writes.try_take(bytes) {
                if let Some(c) = self.collecting.task_mut(itt) {
                    c.budget = Some(b);
                }
                self.collecting.fund(itt, Instant::now());
                return;
            }
        }
        debug!(
            itt,
            bytes,
            available = self.writes.session_available(),
            "write waits for Data-Out budget"
        );
        let id = self.next_ticket;
        self.next_ticket += 1;
        self.collecting.await_funding(itt, id);
        self.budget_queue.push_back(BudgetTicket { itt, bytes, id });
        if self.budget_wait.is_none() {
            self.budget_wait = Some(Box::pin(self.writes.clone().take(bytes)));
        }
    }

    async fn deliver(&mut self, req: Request, bhs: Bhs, slot: Option<CmdSlot>) -> Result<(), End> {
        match req {
            Request::ScsiCommand(cmd) => {
                if self.discovery {
                    // §4.3: a discovery session carries only Text, Logout and NOP.
                    drop(slot);
                    self.reject(RejectReason::ProtocolError, bhs).await;
                    return Ok(());
                }
                self.command(cmd, slot).await;
                Ok(())
            }
            Request::DataOut(d) => {
                self.data_out(d, bhs).await;
                Ok(())
            }
            Request::NopOut(n) => {
                self.nop_out(n, slot).await;
                Ok(())
            }
            Request::Tmf(t) => self.tmf(t, slot).await,
            Request::Text(t) => {
                let pdu = (self.text)(&t);
                self.send(Outgoing::ending(pdu, slot, Hold::default()))
                    .await;
                Ok(())
            }
            Request::Logout(l) => self.logout(l, slot).await,
            Request::Login(_) => {
                // §6.1: Login only during the login phase.
                self.reject(RejectReason::ProtocolError, bhs).await;
                Err(End::Close)
            }
            Request::Snack(_) => {
                // ErrorRecoveryLevel 0: no SNACK support (§11.16).
                self.reject(RejectReason::SnackReject, bhs).await;
                Ok(())
            }
            Request::Unknown(op) => {
                debug!(opcode = op.0, "unknown opcode");
                self.reject(RejectReason::CommandNotSupported, bhs).await;
                Ok(())
            }
        }
    }

    async fn nop_out(&mut self, n: NopOut, slot: Option<CmdSlot>) {
        if n.itt == RESERVED_TAG {
            // An answer to our ping (§11.18.1); nothing goes back.
            return;
        }
        let nop = NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data: echo(n.data, self.conn.max_send_data_segment_length),
        };
        self.send(Outgoing::ending(nop.to_pdu(), slot, Hold::default()))
            .await;
    }

    fn reply(&self, cmd: &ScsiCommand, slot: Option<CmdSlot>, aborted: Arc<AtomicBool>) -> Reply {
        Reply {
            out: self.out.clone(),
            itt: cmd.itt,
            lun: cmd.lun,
            edtl: cmd.expected_len,
            read: cmd.read,
            max_segment: self.conn.max_send_data_segment_length,
            max_burst: self.session.max_burst_length,
            aborted,
            slot,
            hold: Hold::default(),
            arrived: std::time::Instant::now(),
        }
    }

    /// True while a task of this session holds `itt`: collecting its data or running.
    fn tag_in_use(&self, itt: u32) -> bool {
        self.collecting.contains(itt) || self.running.lock().contains_key(&itt)
    }

    async fn command(&mut self, cmd: ScsiCommand, slot: Option<CmdSlot>) {
        if self.tag_in_use(cmd.itt) {
            // RFC 7143 §11.1.4 / §11.2.1.8: the ITT identifies the task and must be
            // unique among the session's outstanding tasks. SAM-5 5.10: a command whose
            // tag is already in use is an overlapped command, answered CHECK CONDITION,
            // ABORTED COMMAND, OVERLAPPED COMMANDS ATTEMPTED (4Eh/00h); it never runs.
            warn!(itt = cmd.itt, "task tag already in use: overlapped command");
            let reply = self.reply(&cmd, slot, Arc::new(AtomicBool::new(false)));
            return reply
                .respond(scsi::Response::check(Sense::overlapped_commands()))
                .await;
        }
        let lun = decode_lun(cmd.lun);
        // Only REPORT LUNS reads the target's LUN list: skip the catalog walk on the
        // I/O path.
        let luns = if cmd.cdb.first() == Some(&scsi::op::REPORT_LUNS) {
            self.luns.lun_list(&self.node)
        } else {
            Vec::new()
        };
        let aborted = Arc::new(AtomicBool::new(false));
        let reply = self.reply(&cmd, slot, aborted.clone());
        // SPC-4 5.15.2.4: a port group in standby or unavailable refuses what its
        // state does not serve (a pending unit attention is reported first).
        let refusal = scsi::alua::refused(self.luns.access_state(&self.node), &cmd.cdb);
        let resolved = self.luns.resolve(&self.node, lun);
        let (handle, plan) = match (resolved, refusal) {
            // SBC-4 4.34.1: while a SANITIZE runs, only INQUIRY, REPORT LUNS and
            // REQUEST SENSE are answered, from any session. A pending unit attention
            // is reported first (SAM-5 5.14: the next command other than those three
            // reports it), so a session that logs in during a sanitize clears its
            // POWER ON with its first command, as initiators expect after a login.
            (Some((h, ua)), _)
                if h.volume.sanitizing()
                    && !matches!(
                        cmd.cdb.first(),
                        Some(
                            &(scsi::op::INQUIRY | scsi::op::REPORT_LUNS | scsi::op::REQUEST_SENSE)
                        )
                    ) =>
            {
                let sense = ua.pop().unwrap_or_else(Sense::sanitize_in_progress);
                (Some(h), Plan::Respond(scsi::Response::check(sense)))
            }
            (Some((h, ua)), Some(refused)) => {
                let sense = ua.pop().unwrap_or(refused);
                (Some(h), Plan::Respond(scsi::Response::check(sense)))
            }
            (Some((h, ua)), None) => {
                let plan = scsi::plan(
                    &cmd.cdb,
                    scsi::Context {
                        lu: Some(&h.lu),
                        luns: &luns,
                        ua: Some(ua),
                    },
                );
                // A switchover is moving the volume to the peer: what changes blocks
                // waits for it, as in an ALUA transition.
                let plan = if plan.changes_blocks() && h.volume.fenced() {
                    Plan::Respond(scsi::Response::check(scsi::alua::transitioning()))
                } else {
                    plan
                };
                (Some(h), plan)
            }
            (None, _) => (
                None,
                scsi::plan(
                    &cmd.cdb,
                    scsi::Context {
                        lu: None,
                        luns: &luns,
                        ua: None,
                    },
                ),
            ),
        };
        // WRITE SAME moves exactly one block (none with NDOB): any other EDTL is a
        // command the initiator got wrong, refused before a byte is written.
        let plan = match (plan, &handle) {
            (Plan::WriteSame { ndob, .. }, Some(h))
                if cmd.expected_len != if ndob { 0 } else { h.volume.block_size() } =>
            {
                Plan::Respond(scsi::Response::check(
                    Sense::invalid_field_in_information_unit(),
                ))
            }
            // COMPARE AND WRITE cannot use part of its data: the EDTL must be exactly
            // both instances, else NUMBER OF LOGICAL BLOCKS is wrong (as libiscsi expects).
            (p @ Plan::CompareAndWrite { .. }, Some(h))
                if u64::from(cmd.expected_len) != p.transfer_bytes(h.volume.block_size()) =>
            {
                Plan::Respond(scsi::Response::check(Sense::invalid_field_in_cdb(13)))
            }
            (plan, _) => plan,
        };
        match (plan, handle) {
            // Unsolicited data is still on its way: take it before answering, so it
            // does not arrive for a task that no longer exists.
            (Plan::Respond(resp), _) if cmd.write && !cmd.final_bit => {
                let transfer = NewTransfer {
                    itt: cmd.itt,
                    lun: cmd.lun,
                    edtl: cmd.expected_len,
                    needed: 0,
                    immediate: Bytes::new(),
                    final_bit: false,
                    discard: Some(Discard::Respond(resp)),
                };
                let c = Collecting {
                    lun: None,
                    kind: WriteKind::ModeSelect { ten: false },
                    budget: None,
                    spdtl: 0,
                    reply,
                };
                self.collecting.start(transfer, c, Instant::now());
                let actions = self.collecting.step(cmd.itt, &mut self.tags);
                self.perform(actions).await;
            }
            (Plan::Respond(resp), _) => reply.respond(resp).await,
            (Plan::Read { lba, blocks, fua }, Some(h)) => {
                // The decoder refuses transfers beyond the Block Limits it announces;
                // this guards the allocation should the two ever disagree.
                if blocks as u64 * h.volume.block_size() as u64 > MAX_TRANSFER {
                    return reply
                        .respond(scsi::Response::check(Sense::invalid_field_in_cdb(7)))
                        .await;
                }
                let budget = self.read_budget.clone();
                self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                    exec::read(reply, h, lba, blocks, fua, budget)
                });
            }
            (Plan::Sync, Some(h)) => {
                self.spawn(cmd.itt, lun, aborted, reply, |reply| exec::sync(reply, h))
            }
            (Plan::SyncImmed, Some(h)) => self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                exec::sync_immed(reply, h)
            }),
            (Plan::Prefetch { lba, blocks }, Some(h)) => {
                self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                    exec::prefetch(reply, h, lba, blocks)
                })
            }
            (
                Plan::Verify {
                    lba,
                    blocks,
                    bytchk: false,
                },
                Some(h),
            ) => {
                let budget = self.read_budget.clone();
                self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                    exec::verify(reply, h, lba, blocks, None, 0, 0, budget)
                });
            }
            (Plan::Write { lba, blocks, fua }, Some(h)) => {
                let needed = blocks as u64 * h.volume.block_size() as u64;
                self.collect(cmd, h, WriteKind::Write { lba, fua }, needed, reply)
                    .await;
            }
            (
                Plan::Verify {
                    lba,
                    blocks,
                    bytchk: true,
                },
                Some(h),
            ) => {
                let needed = blocks as u64 * h.volume.block_size() as u64;
                self.collect(cmd, h, WriteKind::Verify { lba, blocks }, needed, reply)
                    .await;
            }
            (Plan::Unmap { len }, Some(h)) => {
                self.collect(cmd, h, WriteKind::Unmap, len as u64, reply)
                    .await;
            }
            (
                Plan::WriteSame {
                    lba,
                    blocks,
                    unmap,
                    ndob: true,
                },
                Some(h),
            ) => self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                exec::write_same(reply, h, lba, blocks, unmap, None, 0, 0)
            }),
            (
                Plan::WriteSame {
                    lba,
                    blocks,
                    unmap,
                    ndob: false,
                },
                Some(h),
            ) => {
                let needed = h.volume.block_size() as u64;
                let kind = WriteKind::WriteSame { lba, blocks, unmap };
                self.collect(cmd, h, kind, needed, reply).await;
            }
            (Plan::LbaStatus { lba, alloc }, Some(h)) => {
                self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                    exec::lba_status(reply, h, lba, alloc)
                })
            }
            (Plan::ModeSelect { ten, len }, Some(h)) => {
                self.collect(cmd, h, WriteKind::ModeSelect { ten }, len as u64, reply)
                    .await;
            }
            (
                Plan::PersistentReserveOut {
                    sa,
                    scope_type,
                    len,
                },
                Some(h),
            ) => {
                let kind = WriteKind::PersistentReserveOut { sa, scope_type };
                self.collect(cmd, h, kind, len as u64, reply).await;
            }
            (Plan::ExtendedCopy { len }, Some(h)) => {
                self.collect(cmd, h, WriteKind::ExtendedCopy, len as u64, reply)
                    .await;
            }
            (Plan::ReportTargetPortGroups { extended, alloc }, Some(_)) => {
                let groups = self.luns.port_groups(&self.node);
                reply
                    .respond(scsi::alua::target_port_groups_data(
                        &groups, extended, alloc,
                    ))
                    .await
            }
            (Plan::CopyStatus { list_id, alloc }, Some(_)) => {
                let outcome = self.copies.get(list_id);
                reply.respond(scsi::copy_status_data(outcome, alloc)).await
            }
            (
                Plan::Sanitize {
                    kind: scsi::SanitizeKind::Overwrite { len },
                    immed,
                },
                Some(h),
            ) => {
                self.collect(cmd, h, WriteKind::Sanitize { immed }, len as u64, reply)
                    .await;
            }
            (
                Plan::Sanitize {
                    kind: scsi::SanitizeKind::Erase,
                    immed,
                },
                Some(h),
            ) => self.spawn(cmd.itt, lun, aborted, reply, |reply| {
                exec::sanitize(reply, h, None, immed, 0, 0)
            }),
            (
                p
                @ (Plan::CompareAndWrite { .. } | Plan::OrWrite { .. } | Plan::WriteAtomic { .. }),
                Some(h),
            ) => {
                let needed = p.transfer_bytes(h.volume.block_size());
                let Some(kind) = exec::ExclusiveWrite::of(&p) else {
                    return;
                };
                self.collect(cmd, h, WriteKind::Exclusive(kind), needed, reply)
                    .await;
            }
            // A plan that needs a volume for a LUN that has none cannot come from a
            // correct decoder; answer as for an unmapped LUN rather than panic.
            (_, None) => {
                reply
                    .respond(scsi::Response::check(Sense::lu_not_supported()))
                    .await
            }
        }
    }

    /// Run a task in its own tokio task; its tag stays taken until its answer is out.
    fn spawn<F, Fut>(
        &mut self,
        itt: u32,
        lun: u64,
        aborted: Arc<AtomicBool>,
        mut reply: Reply,
        make: F,
    ) where
        F: FnOnce(Reply) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (done_tx, done_rx) = watch::channel(false);
        let id = self.next_task_id;
        self.next_task_id += 1;
        self.running.lock().insert(
            itt,
            Running {
                id,
                lun,
                aborted,
                done: done_rx,
            },
        );
        reply.hold.push(TagGuard {
            running: self.running.clone(),
            itt,
            id,
        });
        let fut = make(reply);
        // The session's span (initiator, target, tsih) goes with the task.
        tokio::spawn(
            async move {
                fut.await;
                debug!(itt, "task answered");
                let _ = done_tx.send(true);
            }
            .in_current_span(),
        );
    }

    /// Start collecting a command's Data-Out: immediate data, then unsolicited Data-Out
    /// up to FirstBurstLength, then R2Ts for the rest (§4.2.5.2, §11.8).
    async fn collect(
        &mut self,
        cmd: ScsiCommand,
        lun: Arc<LunHandle>,
        kind: WriteKind,
        needed: u64,
        reply: Reply,
    ) {
        if needed > MAX_TRANSFER {
            return reply
                .respond(scsi::Response::check(Sense::invalid_field_in_cdb(7)))
                .await;
        }
        let spdtl = needed;
        let edtl = cmd.expected_len;
        // EDTL shorter than the command's transfer (§11.4.5.1 overflow): a write
        // proceeds with the whole blocks the EDTL covers and reports the overflow
        // (FCP-4 9.4.2 a); anything that cannot be cut that way is refused once its
        // unsolicited data is in (FCP-4 9.4.2 b).
        let bs = lun.volume.block_size() as u64;
        let (needed, discard) = if (edtl as u64) < spdtl {
            match kind {
                WriteKind::Write { .. } if (edtl as u64).is_multiple_of(bs) => (edtl as u64, None),
                _ => (0, Some(Discard::Overflow)),
            }
        } else {
            (spdtl, None)
        };
        let needed = needed as u32;
        if needed == 0 && discard.is_none() {
            // Nothing to collect: e.g. MODE SELECT with a zero parameter list.
            if let WriteKind::ModeSelect { ten } = kind {
                let resp = lun.lu.mode_select(ten, &[]);
                return reply.respond(resp).await;
            }
            return reply.status(Status::Good, None, 0, spdtl).await;
        }
        let itt = cmd.itt;
        let transfer = NewTransfer {
            itt,
            lun: cmd.lun,
            edtl,
            needed,
            immediate: cmd.data,
            final_bit: cmd.final_bit,
            discard,
        };
        let c = Collecting {
            lun: Some(lun),
            kind,
            budget: None,
            spdtl,
            reply,
        };
        let solicit = self.collecting.start(transfer, c, Instant::now());
        // The data to solicit is paid for, all of it, before the first R2T: a command
        // that starts collecting can always finish (`server::budget`).
        if solicit > 0 {
            self.request_budget(itt, solicit);
        }
        let actions = self.collecting.step(itt, &mut self.tags);
        self.perform(actions).await;
    }

    /// Carry out what the Data-Out core asks (`iscsi::session::dataout`).
    async fn perform(&mut self, actions: Vec<Action<Collecting>>) {
        for action in actions {
            match action {
                Action::SendR2t(r2t) => self.send(Outgoing::new(r2t.to_pdu(), Stat::Peek)).await,
                Action::Incomplete { task, .. } => {
                    let reply = task.reply;
                    tokio::spawn(
                        async move {
                            reply
                                .status(
                                    Status::CheckCondition,
                                    Some(&Sense::invalid_field_in_information_unit()),
                                    0,
                                    0,
                                )
                                .await
                        }
                        .in_current_span(),
                    );
                }
                Action::Discarded {
                    discard: Discard::Overflow,
                    task,
                    ..
                } => {
                    tokio::spawn(task.reply.write_overflow(task.spdtl).in_current_span());
                }
                Action::Discarded {
                    discard: Discard::Respond(resp),
                    task,
                    ..
                } => {
                    tokio::spawn(task.reply.respond(resp).in_current_span());
                }
                Action::Run {
                    itt,
                    data,
                    r2t_sn,
                    task,
                } => self.run_collected(itt, data, r2t_sn, task),
            }
        }
    }

    /// Run a command whose Data-Out has all come.
    fn run_collected(&mut self, itt: u32, data: Bytes, r2t_sn: u32, task: Collecting) {
        let Collecting {
            lun,
            kind,
            budget,
            spdtl,
            reply,
        } = task;
        let Some(lun) = lun else { return };
        let aborted = reply.aborted.clone();
        let l = decode_lun(reply.lun);
        let read_budget = self.read_budget.clone();
        match kind {
            // The Data-Out permits stay held until the volume has the data.
            WriteKind::Write { lba, fua } => self.spawn(itt, l, aborted, reply, |reply| {
                let fut = exec::write(reply, lun, lba, data, fua, r2t_sn, spdtl);
                async move {
                    fut.await;
                    drop(budget);
                }
            }),
            WriteKind::Verify { lba, blocks } => self.spawn(itt, l, aborted, reply, |reply| {
                let fut = exec::verify(
                    reply,
                    lun,
                    lba,
                    blocks,
                    Some(data),
                    r2t_sn,
                    spdtl,
                    read_budget,
                );
                async move {
                    fut.await;
                    drop(budget);
                }
            }),
            WriteKind::Unmap => self.spawn(itt, l, aborted, reply, |reply| {
                let fut = exec::unmap(reply, lun, data, r2t_sn, spdtl);
                async move {
                    fut.await;
                    drop(budget);
                }
            }),
            WriteKind::WriteSame { lba, blocks, unmap } => {
                self.spawn(itt, l, aborted, reply, |reply| {
                    let fut =
                        exec::write_same(reply, lun, lba, blocks, unmap, Some(data), r2t_sn, spdtl);
                    async move {
                        fut.await;
                        drop(budget);
                    }
                })
            }
            WriteKind::ModeSelect { ten } => {
                let resp = lun.lu.mode_select(ten, &data);
                tokio::spawn(reply.respond(resp).in_current_span());
            }
            WriteKind::PersistentReserveOut { sa, scope_type } => {
                let node = self.node.clone();
                // The budget is only the parameter list's few bytes: given back now.
                drop(budget);
                self.spawn(itt, l, aborted, reply, |reply| {
                    exec::persistent_reserve_out(
                        reply, node, lun, sa, scope_type, data, r2t_sn, spdtl,
                    )
                })
            }
            WriteKind::ExtendedCopy => {
                let node = self.node.clone();
                let who = Requester {
                    target: self.luns.target().to_owned(),
                    initiator: self.entry.initiator.clone(),
                };
                let copies = self.copies.clone();
                self.spawn(itt, l, aborted, reply, |reply| {
                    let fut = xcopy::extended_copy(reply, node, who, data, copies, r2t_sn, spdtl);
                    async move {
                        fut.await;
                        drop(budget);
                    }
                })
            }
            WriteKind::Sanitize { immed } => self.spawn(itt, l, aborted, reply, |reply| {
                let fut = exec::sanitize(reply, lun, Some(data), immed, r2t_sn, spdtl);
                async move {
                    fut.await;
                    drop(budget);
                }
            }),
            WriteKind::Exclusive(kind) => self.spawn(itt, l, aborted, reply, |reply| {
                let fut = exec::exclusive_write(reply, lun, kind, data, r2t_sn, spdtl);
                async move {
                    fut.await;
                    drop(budget);
                }
            }),
        }
    }

    /// A Data-Out PDU (§11.7): the core routes it to its task by ITT and TTT.
    async fn data_out(&mut self, d: DataOut, bhs: Bhs) {
        match self
            .collecting
            .on_data_out(&d, Instant::now(), &mut self.tags)
        {
            Ok(actions) => self.perform(actions).await,
            Err(reason) => self.reject(reason, bhs).await,
        }
    }

    /// Abort this session's tasks on `lun` (all LUNs if None); returns what to wait for.
    fn abort_all(&mut self, lun: Option<u64>) -> Vec<watch::Receiver<bool>> {
        self.collecting
            .retain(|raw| lun.is_some_and(|l| decode_lun(raw) != l));
        let running = self.running.lock();
        running
            .values()
            .filter(|r| lun.is_none_or(|l| r.lun == l))
            .map(|r| {
                r.aborted.store(true, Ordering::Release);
                r.done.clone()
            })
            .collect()
    }

    /// Where the task holding `itt` stands, for ABORT TASK.
    fn task_state(&self, itt: u32) -> TaskState {
        if self.collecting.contains(itt) {
            TaskState::Collecting
        } else if self.running.lock().contains_key(&itt) {
            TaskState::Running
        } else {
            TaskState::Unknown
        }
    }

    async fn tmf(&mut self, t: TmfRequest, slot: Option<CmdSlot>) -> Result<(), End> {
        let lun = decode_lun(t.lun);
        let lun_exists = self.luns.resolve(&self.node, lun).is_some();
        let d = tmf::decide(
            &t,
            lun,
            lun_exists,
            self.task_state(t.referenced_tag),
            self.order.window().exp_cmd_sn(),
        );
        let wait = match d.affected {
            Affected::Nothing => vec![],
            Affected::Task(tag) => {
                if self.collecting.remove(tag).is_some() {
                    vec![]
                } else if let Some(r) = self.running.lock().get(&tag) {
                    r.aborted.store(true, Ordering::Release);
                    vec![r.done.clone()]
                } else {
                    vec![]
                }
            }
            Affected::Lun(l) => self.abort_all(Some(l)),
            Affected::All => self.abort_all(None),
        };
        if d.reset_lun {
            if let Some((h, _)) = self.luns.resolve(&self.node, lun) {
                h.resets.fetch_add(1, Ordering::AcqRel);
            }
            self.luns.reset_lus(&self.node, Some(lun));
        }
        if d.reset_target {
            self.node.sessions.reset_target(self.luns.target());
            self.luns.reset_lus(&self.node, None);
        }
        let response = d.response;
        info!(function = ?t.function, lun, response, "task management");
        let r = TmfResponse {
            response,
            itt: t.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        };
        let out = self.out.clone();
        // §4.2.3.3 (and SAM): answer only once the affected tasks have ended.
        let respond = async move {
            for mut w in wait {
                let _ = w.wait_for(|d| *d).await;
            }
            let _ = out
                .send(Outgoing::ending(r.to_pdu(), slot, Hold::default()))
                .await;
        };
        if d.close {
            respond.await;
            return Err(End::Close);
        }
        tokio::spawn(respond.in_current_span());
        Ok(())
    }

    async fn logout(&mut self, l: LogoutRequest, slot: Option<CmdSlot>) -> Result<(), End> {
        let decision = logout::decide(&l, self.cid);
        if decision == LogoutDecision::Close {
            // Let running commands finish and answer before the logout response.
            let waits: Vec<_> = self
                .running
                .lock()
                .values()
                .map(|r| r.done.clone())
                .collect();
            for mut w in waits {
                let _ = w.wait_for(|d| *d).await;
            }
            // The nexus ends before the initiator hears so: its next session must find
            // the RESERVE and PREVENT of this one gone.
            self.luns.nexus_lost();
        }
        let r = LogoutResponse {
            response: decision.response(),
            itt: l.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: 0,
            time2retain: 0,
        };
        self.send(Outgoing::ending(r.to_pdu(), slot, Hold::default()))
            .await;
        if decision == LogoutDecision::Close {
            info!("logout");
            Err(End::Close)
        } else {
            Ok(())
        }
    }
}

/// Wait for the pending budget request; never resolves when there is none.
async fn wait_budget(w: &mut Option<BudgetWait>) -> Option<WriteBudget> {
    match w {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The NOP-In answer's ping data: RFC 7143 §11.18.5, "Ping data is reflected in the
/// NOP-In Response. The length of the reflected data is limited to
/// MaxRecvDataSegmentLength", the initiator's, which every PDU to it respects
/// (§13.12). Longer ping data is echoed up to that length.
pub fn echo(data: Bytes, max_send_data_segment_length: u32) -> Bytes {
    let max = max_send_data_segment_length as usize;
    if data.len() > max {
        debug!(
            len = data.len(),
            max, "ping data longer than the initiator accepts; echo truncated"
        );
        data.slice(..max)
    } else {
        data
    }
}

/// The LUN number from the 8-byte LUN field; an addressing form we do not use maps to
/// a LUN that is never mapped, so it is answered as such.
pub fn decode_lun(raw: u64) -> u64 {
    scsi::decode_lun(raw.to_be_bytes()).unwrap_or(u64::MAX)
}
