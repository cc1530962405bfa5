//! Full feature phase of one connection: the CmdSN window with out-of-order arrival,
//! SCSI commands with immediate, unsolicited and R2T-solicited data, task management,
//! NOP pings, text and logout (RFC 7143 §4.2, §6, §11).
//!
//! The reader side owns this state (`&mut self`, no locks on the per-command path);
//! volume I/O runs in spawned tasks that answer through the writer channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::iscsi::params::{ConnParams, SessionParams};
use crate::iscsi::pdu::logout::logout_reason;
use crate::iscsi::pdu::tmf::tmf_response;
use crate::iscsi::pdu::{
    Bhs, DataOut, FrameError, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, R2t, Reject,
    RejectReason, ScsiCommand, TextRequest, TmfFunction, TmfRequest, TmfResponse, RESERVED_TAG,
};
use crate::iscsi::{serial, Request};
use crate::scsi::{self, Plan, Sense, Status};
use crate::server::budget::{WriteBudget, WriteBudgets};
use crate::server::exec::{self, Reply, SESSION_READ_BUDGET};
use crate::server::frames::{FrameReader, ReadError};
use crate::server::luns::{LunHandle, LunView};
use crate::server::registry::SessionEntry;
use crate::server::writer::{CmdSlot, Hold, Immediate, Outgoing, Stat, Window};
use crate::server::Shared;

/// The most a single command may move (what VPD Block Limits announces); larger
/// transfers get INVALID FIELD IN CDB.
pub const MAX_TRANSFER: u64 = scsi::MAX_TRANSFER_BYTES as u64;
/// Send a NOP-In ping after this long without hearing from the initiator.
const PING_IDLE: Duration = Duration::from_secs(5);
/// Close the connection if a ping goes unanswered this long.
const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Close the connection if a task asked for data gets none for this long.
pub const DATA_OUT_TIMEOUT: Duration = Duration::from_secs(20);

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
    Write { lba: u64, fua: bool },
    Verify { lba: u64, blocks: u32 },
    ModeSelect { ten: bool },
}

/// A command collecting its Data-Out.
struct Collecting {
    lun: Option<Arc<LunHandle>>,
    kind: WriteKind,
    /// Filled as data arrives: it never holds more than came, or than the permits in
    /// `budget` cover.
    buf: BytesMut,
    /// Permits for the solicited data, taken before the first R2T (`server::budget`).
    budget: Option<WriteBudget>,
    /// The command waits in the budget queue under this ticket; no R2T goes out
    /// before it is served.
    awaiting_budget: Option<u64>,
    /// Unsolicited data must end here (§13.14 FirstBurstLength, or the immediate data
    /// alone with the F bit).
    unsolicited_limit: u32,
    /// Bytes to collect: the command's own transfer (SPDTL), cut to the EDTL.
    needed: u32,
    /// The command's own transfer length, for the residual.
    spdtl: u64,
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
    /// Take and drop the unsolicited data, then answer this way instead of running.
    discard: Option<Discard>,
    reply: Reply,
    /// When the task last made progress: created, its R2Ts sent, or data came.
    progress: Instant,
}

impl Collecting {
    /// Copy arrived data to its offset. The buffer grows only to what has come (all of
    /// the transfer at once when the permits for it are held), never ahead of the data.
    fn place(&mut self, from: usize, data: &[u8]) {
        let to = from + data.len();
        if self.buf.len() < to {
            let want = if self.budget.is_some() {
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

/// One outstanding R2T: the range asked for, what has come, the DataSN expected next.
struct Solicited {
    offset: u32,
    len: u32,
    got: u32,
    next_sn: u32,
}

enum Discard {
    /// EDTL shorter than the command's transfer (write overflow).
    Overflow,
    /// The command failed before its data came (bad LBA, write protect, ...).
    Respond(scsi::Response),
}

/// Answers one Text request of the connection (SendTargets and friends) with its Text
/// Response or a Reject; long answers continue over further requests (RFC 7143 §11.10).
pub type TextHandler = Box<dyn FnMut(&TextRequest) -> Pdu + Send + Sync>;

pub enum End {
    /// The connection should close now.
    Close,
}

pub struct Ffp<R> {
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
    /// Commands that arrived ahead of their CmdSN, with their headers (for a Reject).
    pending: BTreeMap<u32, (Request, Bhs)>,
    collecting: HashMap<u32, Collecting>,
    running: RunningMap,
    next_task_id: u64,
    /// Bytes of Data-In this session may hold.
    read_budget: Arc<Semaphore>,
    writes: WriteBudgets,
    /// Commands waiting for Data-Out budget, first come first served.
    budget_queue: VecDeque<BudgetTicket>,
    next_ticket: u64,
    budget_wait: Option<BudgetWait>,
    next_ttt: u32,
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
}

impl<R: AsyncRead + Unpin> Ffp<R> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Arc<Shared>,
        reader: FrameReader<R>,
        out: mpsc::Sender<Outgoing>,
        window: Arc<Window>,
        session: SessionParams,
        conn: ConnParams,
        cid: u16,
        discovery: bool,
        luns: LunView,
        entry: Arc<SessionEntry>,
        stop: watch::Receiver<bool>,
        text: TextHandler,
    ) -> Self {
        let writes = WriteBudgets::new(node.write_budget.clone());
        Ffp {
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
            pending: BTreeMap::new(),
            collecting: HashMap::new(),
            running: Arc::new(Mutex::new(HashMap::new())),
            next_task_id: 0,
            read_budget: Arc::new(Semaphore::new(SESSION_READ_BUDGET as usize)),
            writes,
            budget_queue: VecDeque::new(),
            next_ticket: 0,
            budget_wait: None,
            next_ttt: 1,
            ping: None,
            last_rx: Instant::now(),
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
                if self.check_ping().await.is_err() || self.data_out_overdue() {
                    break;
                }
                continue;
            };
            self.last_rx = Instant::now();
            self.ping = None;
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

    /// A task that holds its Data-Out budget (or was asked for data) and got none for
    /// `DATA_OUT_TIMEOUT`: at ErrorRecoveryLevel 0 the connection is dropped (RFC 7143
    /// §7.1.4.1: recovery is at the session level), which ends its tasks and gives their
    /// budget back, so an initiator that answers pings but never sends the data it
    /// owes cannot hold the node's write budget forever. A task still waiting for the
    /// budget has been asked for nothing yet and does not count.
    fn data_out_overdue(&self) -> bool {
        let now = Instant::now();
        let overdue = self.collecting.iter().find(|(_, c)| {
            c.awaiting_budget.is_none() && now.duration_since(c.progress) >= DATA_OUT_TIMEOUT
        });
        match overdue {
            Some((itt, c)) => {
                warn!(
                    itt,
                    received = c.received,
                    needed = c.needed,
                    "no Data-Out for {DATA_OUT_TIMEOUT:?}; closing the connection"
                );
                true
            }
            None => false,
        }
    }

    async fn check_ping(&mut self) -> Result<(), End> {
        let now = Instant::now();
        match self.ping {
            Some((_, sent)) if now.duration_since(sent) > PING_TIMEOUT => {
                warn!("initiator did not answer a NOP-In ping; closing the connection");
                Err(End::Close)
            }
            Some(_) => Ok(()),
            None if now.duration_since(self.last_rx) >= PING_IDLE => {
                let ttt = self.new_ttt();
                let nop = NopIn {
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    data: Bytes::new(),
                };
                self.ping = Some((ttt, now));
                self.send(Outgoing::new(nop.to_pdu(), Stat::Peek)).await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
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
                match self.window.try_immediate(kind) {
                    Some(slot) => self.deliver(req, bhs, Some(slot)).await,
                    None => {
                        debug!(?kind, "too many immediate commands outstanding; rejected");
                        self.reject(RejectReason::ImmediateCommandReject, bhs).await;
                        Ok(())
                    }
                }
            }
            Some((false, sn)) => {
                let exp = self.window.exp_cmd_sn();
                let max = self.window.max_cmd_sn();
                if !self.window.admits(sn) {
                    // §4.2.2.1: "The target MUST silently ignore any non-immediate
                    // command outside of this range or non-immediate duplicates within
                    // the range." Nothing is kept of it.
                    debug!(
                        cmd_sn = sn,
                        exp, max, "command outside the CmdSN window ignored"
                    );
                    Ok(())
                } else if sn == exp {
                    self.advance(req, bhs).await?;
                    while let Some((next, b)) = self.pending.remove(&self.window.exp_cmd_sn()) {
                        self.advance(next, b).await?;
                    }
                    Ok(())
                } else {
                    // Inside the window, ahead of ExpCmdSN: the window bounds what is held.
                    match self.pending.entry(sn) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            debug!(cmd_sn = sn, exp, "duplicate of a held command ignored");
                        }
                        std::collections::btree_map::Entry::Vacant(v) => {
                            debug!(cmd_sn = sn, exp, "command arrived early; held");
                            v.insert((req, bhs));
                        }
                    }
                    Ok(())
                }
            }
        }
    }

    async fn advance(&mut self, req: Request, bhs: Bhs) -> Result<(), End> {
        let slot = CmdSlot::new(&self.window);
        self.window
            .set_exp_cmd_sn(self.window.exp_cmd_sn().wrapping_add(1));
        self.deliver(req, bhs, Some(slot)).await
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
        self.collecting
            .get(&t.itt)
            .is_some_and(|c| c.awaiting_budget == Some(t.id))
    }

    async fn give_budget(&mut self, t: BudgetTicket, b: WriteBudget) {
        if !self.waits_for_budget(t) {
            return;
        }
        let Some(mut c) = self.collecting.remove(&t.itt) else {
            return;
        };
        c.awaiting_budget = None;
        c.budget = Some(b);
        c.progress = Instant::now();
        self.issue_r2ts(t.itt, &mut c).await;
        self.settle(t.itt, c);
    }

    /// Ask for the Data-Out budget of command `itt` (its R2Ts wait for it).
    fn request_budget(&mut self, itt: u32, c: &mut Collecting, bytes: u32) {
        if self.budget_queue.is_empty() {
            if let Some(b) = self.writes.try_take(bytes) {
                c.budget = Some(b);
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
        c.awaiting_budget = Some(id);
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
        }
    }

    /// True while a task of this session holds `itt`: collecting its data or running.
    fn tag_in_use(&self, itt: u32) -> bool {
        self.collecting.contains_key(&itt) || self.running.lock().contains_key(&itt)
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
        let resolved = self.luns.resolve(&self.node, lun);
        let (handle, plan) = match resolved {
            Some((h, ua)) => {
                let plan = scsi::plan(
                    &cmd.cdb,
                    scsi::Context {
                        lu: Some(&h.lu),
                        luns: &luns,
                        ua: Some(ua),
                    },
                );
                (Some(h), plan)
            }
            None => (
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
        match (plan, handle) {
            // Unsolicited data is still on its way: take it before answering, so it
            // does not arrive for a task that no longer exists.
            (Plan::Respond(resp), _) if cmd.write && !cmd.final_bit => {
                let edtl = cmd.expected_len;
                let c = Collecting {
                    lun: None,
                    kind: WriteKind::ModeSelect { ten: false },
                    buf: BytesMut::new(),
                    budget: None,
                    awaiting_budget: None,
                    unsolicited_limit: self.session.first_burst_length.min(edtl),
                    needed: 0,
                    spdtl: 0,
                    edtl,
                    received: 0,
                    unsolicited_done: false,
                    next_offset: 0,
                    r2ts: HashMap::new(),
                    unsolicited_sn: 0,
                    r2t_sn: 0,
                    discard: Some(Discard::Respond(resp)),
                    reply,
                    progress: Instant::now(),
                };
                self.settle(cmd.itt, c);
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
            (Plan::ModeSelect { ten, len }, Some(h)) => {
                self.collect(cmd, h, WriteKind::ModeSelect { ten }, len as u64, reply)
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
        tokio::spawn(async move {
            fut.await;
            let _ = done_tx.send(true);
        });
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
        let imm = cmd.data.len().min(needed as usize);
        // Nothing is allocated ahead of the data: the buffer grows as data comes.
        let buf = BytesMut::from(&cmd.data[..imm]);
        // What the initiator may send before any R2T: immediate data, plus unsolicited
        // Data-Out up to FirstBurstLength unless the command said F (§4.2.5.2).
        let unsolicited_end = if cmd.final_bit {
            cmd.data.len() as u32
        } else {
            self.session.first_burst_length.min(edtl)
        };
        let mut c = Collecting {
            lun: Some(lun),
            kind,
            buf,
            budget: None,
            awaiting_budget: None,
            unsolicited_limit: unsolicited_end,
            needed,
            spdtl,
            edtl,
            received: imm as u32,
            unsolicited_done: cmd.final_bit,
            next_offset: unsolicited_end.min(needed),
            r2ts: HashMap::new(),
            unsolicited_sn: 0,
            r2t_sn: 0,
            discard,
            reply,
            progress: Instant::now(),
        };
        // The data to solicit is paid for, all of it, before the first R2T: a command
        // that starts collecting can always finish (`server::budget`).
        if c.discard.is_none() && c.next_offset < c.needed {
            let solicited = needed - c.next_offset;
            self.request_budget(cmd.itt, &mut c, solicited);
        }
        self.issue_r2ts(cmd.itt, &mut c).await;
        self.settle(cmd.itt, c);
    }

    async fn issue_r2ts(&mut self, itt: u32, c: &mut Collecting) {
        if c.budget.is_none() {
            return;
        }
        let max_out = self.session.max_outstanding_r2t.max(1) as usize;
        while c.r2ts.len() < max_out && c.next_offset < c.needed {
            let len = (c.needed - c.next_offset).min(self.session.max_burst_length);
            let ttt = self.new_ttt();
            let r2t = R2t {
                lun: c.reply.lun,
                itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn: c.r2t_sn,
                buffer_offset: c.next_offset,
                desired_len: len,
            };
            c.r2ts.insert(
                ttt,
                Solicited {
                    offset: c.next_offset,
                    len,
                    got: 0,
                    next_sn: 0,
                },
            );
            c.r2t_sn += 1;
            c.next_offset += len;
            self.send(Outgoing::new(r2t.to_pdu(), Stat::Peek)).await;
        }
    }

    /// Keep collecting, or run the command once everything is here.
    fn settle(&mut self, itt: u32, c: Collecting) {
        let complete = c.unsolicited_done && c.r2ts.is_empty() && c.next_offset >= c.needed;
        if !complete || (c.discard.is_none() && c.received < c.needed) {
            if complete {
                // Every R2T answered yet bytes are missing: the initiator sent less
                // than asked. Treat as a protocol failure of this task.
                warn!(
                    itt,
                    received = c.received,
                    needed = c.needed,
                    "write data incomplete"
                );
                let reply = c.reply;
                tokio::spawn(async move {
                    reply
                        .status(
                            Status::CheckCondition,
                            Some(&Sense::invalid_field_in_information_unit()),
                            0,
                            0,
                        )
                        .await
                });
                return;
            }
            self.collecting.insert(itt, c);
            return;
        }
        let Collecting {
            lun,
            kind,
            mut buf,
            budget,
            r2t_sn,
            discard,
            reply,
            spdtl,
            needed,
            ..
        } = c;
        match discard {
            Some(Discard::Overflow) => {
                tokio::spawn(reply.write_overflow(spdtl));
                return;
            }
            Some(Discard::Respond(resp)) => {
                tokio::spawn(reply.respond(resp));
                return;
            }
            None => {}
        }
        let Some(lun) = lun else { return };
        let aborted = reply.aborted.clone();
        let l = decode_lun(reply.lun);
        buf.resize(needed as usize, 0);
        let data = buf.freeze();
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
            WriteKind::ModeSelect { ten } => {
                let resp = lun.lu.mode_select(ten, &data);
                tokio::spawn(reply.respond(resp));
            }
        }
    }

    /// A Data-Out PDU (§11.7): route it to its task by ITT and TTT.
    async fn data_out(&mut self, d: DataOut, bhs: Bhs) {
        let Some(mut c) = self.collecting.remove(&d.itt) else {
            debug!(itt = d.itt, "Data-Out for an unknown task");
            return self.reject(RejectReason::InvalidPduField, bhs).await;
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
            self.collecting.insert(d.itt, c);
            return self.reject(RejectReason::ProtocolError, bhs).await;
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
        c.progress = Instant::now();
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
                self.issue_r2ts(d.itt, &mut c).await;
            }
        }
        self.settle(d.itt, c);
    }

    /// Abort this session's tasks on `lun` (all LUNs if None); returns what to wait for.
    fn abort_all(&mut self, lun: Option<u64>) -> Vec<watch::Receiver<bool>> {
        self.collecting
            .retain(|_, c| lun.is_some_and(|l| decode_lun(c.reply.lun) != l));
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

    async fn tmf(&mut self, t: TmfRequest, slot: Option<CmdSlot>) -> Result<(), End> {
        let lun = decode_lun(t.lun);
        let lun_exists = self.luns.resolve(&self.node, lun).is_some();
        let mut close = false;
        let (response, wait) = match t.function {
            TmfFunction::AbortTask => {
                if self.collecting.remove(&t.referenced_tag).is_some() {
                    (tmf_response::COMPLETE, vec![])
                } else if let Some(r) = self.running.lock().get(&t.referenced_tag) {
                    r.aborted.store(true, Ordering::Release);
                    (tmf_response::COMPLETE, vec![r.done.clone()])
                } else if serial::lt(t.ref_cmd_sn, self.window.exp_cmd_sn()) {
                    // Already answered (§11.5.1 note: the task is gone).
                    (tmf_response::TASK_DOES_NOT_EXIST, vec![])
                } else {
                    (tmf_response::COMPLETE, vec![])
                }
            }
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
                if lun_exists {
                    (tmf_response::COMPLETE, self.abort_all(Some(lun)))
                } else {
                    (tmf_response::LUN_DOES_NOT_EXIST, vec![])
                }
            }
            TmfFunction::LogicalUnitReset => {
                if let Some((h, _)) = self.luns.resolve(&self.node, lun) {
                    let wait = self.abort_all(Some(lun));
                    h.resets.fetch_add(1, Ordering::AcqRel);
                    (tmf_response::COMPLETE, wait)
                } else {
                    (tmf_response::LUN_DOES_NOT_EXIST, vec![])
                }
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                let wait = self.abort_all(None);
                self.node.sessions.reset_target(self.luns.target());
                close = t.function == TmfFunction::TargetColdReset;
                (tmf_response::COMPLETE, wait)
            }
            TmfFunction::ClearAca => (tmf_response::NOT_SUPPORTED, vec![]),
            TmfFunction::TaskReassign => (tmf_response::REASSIGN_NOT_SUPPORTED, vec![]),
            TmfFunction::Other(_) => (tmf_response::REJECTED, vec![]),
        };
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
        if close {
            respond.await;
            return Err(End::Close);
        }
        tokio::spawn(respond);
        Ok(())
    }

    async fn logout(&mut self, l: LogoutRequest, slot: Option<CmdSlot>) -> Result<(), End> {
        let response = match l.reason {
            logout_reason::CLOSE_SESSION => 0,
            logout_reason::CLOSE_CONNECTION if l.cid == self.cid => 0,
            logout_reason::CLOSE_CONNECTION => 1,
            // §11.15.1: "connection recovery is not supported" at ERL 0.
            _ => 2,
        };
        if response == 0 {
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
        }
        let r = LogoutResponse {
            response,
            itt: l.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: 0,
            time2retain: 0,
        };
        self.send(Outgoing::ending(r.to_pdu(), slot, Hold::default()))
            .await;
        if response == 0 {
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
