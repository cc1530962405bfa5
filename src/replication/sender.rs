//! The primary side of a replication set: a task per set that runs cycles on request
//! (`replicate`, the set's interval, retries), each a consistent cut of the set's
//! volumes shipped to the peer as extents of changed pages.
//!
//! A cycle: cut the volumes (dirty maps frozen into the cut, a snapshot keeps the
//! frozen pages' content while writers go on), connect, `BeginCut`, the extents,
//! `EndCut`, wait for `Committed` (a secondary still writing says `Committing` every
//! few seconds, so a slow disk is not taken for a dead peer). Then the snapshot is
//! dropped and the cut is the set's last. If anything fails, the frozen bits go back
//! into the dirty maps, so the next cycle ships them again: nothing is ever dropped.
//! The first cycle of a generation is full: all allocated extents of each volume file
//! as data, holes as zero records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::host::Host;
use super::pace::Pacer;
use super::peer::PeerConn;
use super::rate::{Limits, Meter};
use super::status::{CycleProgress, CycleStats, SetState, SetStatus, StateChange};
use super::wire::{self, EncodedExtent, Extent, ExtentKind, Fork, Message, MAX_EXTENT};
use super::ReplicationError;
use crate::catalog::{Compression, QueuePolicy};
use crate::events::{Emitter, EventKind};
use crate::time::unix_secs;
use crate::tracking::{CutOptions, SnapshotScope, TrackedVolume};
use crate::volume::Volume;

/// Set in the environment of a build with the `fault-injection` feature (the tests'),
/// the primary aborts right after the peer commits a cut and before it records that (a
/// test of the crash window in between). Other builds do not have it.
#[cfg(feature = "fault-injection")]
pub const CRASH_BEFORE_RECORD: &str = "TWINLUN_TEST_CRASH_BEFORE_RECORDING_COMMIT";

/// Longest a cut holds writers off.
const CUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delays after a failed cycle: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What survives a restart of the primary, in `DATA_DIR/replication/SET/primary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrimaryState {
    pub generation: u64,
    /// The last cut the peer committed in this generation.
    pub last_cut: Option<u64>,
    pub last_cut_unix: Option<u64>,
    pub cycles: u64,
    pub last_cycle: Option<CycleStats>,
    /// `suspend`ed: no cycle runs until `resume`.
    #[serde(default)]
    pub suspended: bool,
    /// The highest cut id this set has sent the peer, saved before the cut is: after a
    /// restart, new cuts get higher ids, so the peer never takes a new cut for one it
    /// committed or staged before.
    #[serde(default)]
    pub issued_cut: Option<u64>,
    /// This side was promoted (failover) and forked the set's history here.
    #[serde(default)]
    pub fork: Option<Fork>,
    /// Promoted and not failed back yet: no cycle runs until `failback` has made the old
    /// primary the secondary and told which pages it wrote since the common cut.
    #[serde(default)]
    pub awaiting_failback: bool,
    /// What the first cut of this generation ships instead of all written data (after a
    /// failback): per volume, the union of both sides' pages changed since the common
    /// cut, hex as `wire::pages_to_hex`.
    #[serde(default)]
    pub resync: Option<Vec<String>>,
    /// The peer said it was promoted (this side is the old primary): no cycle runs.
    #[serde(default)]
    pub peer_promoted: Option<Fork>,
    /// Promoted at an older recovery point than the latest: the old primary may hold
    /// cuts this side rolled back, so the failback's first cut ships all written data.
    #[serde(default)]
    pub resync_all: bool,
    /// Promoted at an older recovery point: per volume, the pages the roll back undid
    /// (hex as `wire::pages_to_hex`), which the old primary holds newer content of, so
    /// the failback ships them too.
    #[serde(default)]
    pub rolled_back: Option<Vec<String>>,
    /// Both sides wrote after their common cut: nothing runs until `resolve`.
    #[serde(default)]
    pub split_brain: bool,
}

#[derive(Debug, Default)]
struct Live {
    running: bool,
    /// `restart --yes` asked; cleared once the secondary dropped its recovery points.
    restart: bool,
    /// `replicate` asked for a cycle (a wake-up without it only re-reads the schedule).
    requested: bool,
    /// Status transitions, oldest first (at most [`EVENTS`]).
    events: std::collections::VecDeque<StateChange>,
    last_state: Option<SetState>,
    queued: u32,
    progress: Option<CycleProgress>,
    error: Option<String>,
    next_retry: Option<SystemTime>,
    started: Option<Instant>,
    /// What a failed attempt shipped before it failed.
    partial: Option<CycleStats>,
    /// Cycles that ended, committed or not.
    attempts: u64,
}

/// One primary set's runtime.
pub struct PrimarySet {
    name: String,
    dir: PathBuf,
    state: Mutex<PrimaryState>,
    live: Mutex<Live>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    /// `abort`: the running cycle is abandoned (its pages stay dirty).
    abort: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The cut of a failed attempt, resumed by the next.
    pending: Mutex<Option<Pending>>,
    /// Status changes and cycles, for `ctl events`.
    events: Emitter,
    /// What committed cycles shipped and how many failed, for the metrics endpoint.
    counters: Arc<crate::metrics::SetCounters>,
    /// The set's and its peer's `--max-rate`, taken before each extent is sent.
    limits: Limits,
    /// Bumped at every status note (cycle ends among them), for `cycle_now`.
    changes: tokio::sync::watch::Sender<u64>,
    /// Wire bytes sent over the last seconds (the rate `replication show` reports).
    meter: Mutex<Meter>,
}

/// Status transitions a set remembers for `replication show`.
const EVENTS: usize = 32;

impl PrimarySet {
    /// Loads the set's saved state (or a fresh one) and starts its task.
    /// `dir` is the set's own state folder.
    /// Its status changes and cycles go to `events`; `counters` is the set's handle in
    /// the node's metrics registry; `limits` its rate caps.
    pub fn start(
        host: Weak<dyn Host>,
        name: &str,
        dir: PathBuf,
        events: Emitter,
        counters: Arc<crate::metrics::SetCounters>,
        limits: Limits,
    ) -> Arc<PrimarySet> {
        let state = load_state(&dir).unwrap_or_else(|e| {
            tracing::warn!(set = name, error = %crate::chain::ErrorChain(&e), "replication state unreadable: starting a new generation");
            PrimaryState::default()
        });
        if let (Some(id), Some(h)) = (state.issued_cut.max(state.last_cut), host.upgrade()) {
            h.cuts().advance_past(crate::tracking::CutId(id));
        }
        let set = Arc::new(PrimarySet {
            name: name.to_string(),
            dir,
            state: Mutex::new(state),
            live: Mutex::new(Live::default()),
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            task: Mutex::new(None),
            pending: Mutex::new(None),
            events,
            counters,
            limits,
            meter: Mutex::new(Meter::default()),
            changes: tokio::sync::watch::Sender::new(0),
        });
        let span = tracing::info_span!("set", set = %name);
        let task = tokio::spawn(run(host, set.clone()).instrument(span));
        *set.task.lock() = Some(task);
        set
    }

    /// `replicate`: start a cycle, or queue one by the set's policy.
    pub fn request(&self, policy: QueuePolicy) -> Result<String, ReplicationError> {
        self.check_may_ship()?;
        if self.state.lock().suspended {
            return Err(ReplicationError::Suspended(self.name.clone()));
        }
        let mut live = self.live.lock();
        if !live.running {
            live.next_retry = None;
            live.requested = true;
            drop(live);
            self.wake.notify_one();
            return Ok(format!("replication of '{}' started", self.name));
        }
        match policy {
            QueuePolicy::Discard => Err(ReplicationError::Discarded(self.name.clone())),
            QueuePolicy::QueueLatest if live.queued == 0 => {
                live.queued = 1;
                Ok(format!(
                    "a cycle of '{}' is running; one more is queued to follow it",
                    self.name
                ))
            }
            QueuePolicy::QueueLatest => Ok(format!(
                "a cycle of '{}' is running and one is already queued; it covers this request",
                self.name
            )),
        }
    }

    /// Restart Replication: the secondary drops every recovery point, a new generation
    /// starts and all written data is shipped again.
    pub fn restart(&self) -> Result<String, ReplicationError> {
        self.check_may_ship()?;
        if self.state.lock().suspended {
            return Err(ReplicationError::Suspended(self.name.clone()));
        }
        self.events.emit_with(|| EventKind::Restart {
            set: self.name.clone(),
        });
        let mut live = self.live.lock();
        live.restart = true;
        live.next_retry = None;
        if live.running {
            self.abort.store(true, Ordering::Release);
            live.queued = 1;
        }
        drop(live);
        self.note_status();
        self.wake.notify_one();
        Ok(format!(
            "restarting replication of '{}': the secondary's recovery points are deleted and all written data is shipped again",
            self.name
        ))
    }

    /// The set's generation now (the one a restart's first step moves past).
    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// `suspend`ed: no cycle runs, and no restart either.
    pub fn suspended(&self) -> bool {
        self.state.lock().suspended
    }

    /// Suspends or resumes the set (saved: survives a restart).
    pub fn suspend(&self, on: bool) -> Result<String, ReplicationError> {
        let mut st = self.state.lock();
        st.suspended = on;
        let saved = st.clone();
        drop(st);
        save_state(&self.dir, &saved).map_err(|source| ReplicationError::State {
            set: self.name.clone(),
            source,
        })?;
        if on {
            self.abort.store(true, Ordering::Release);
            self.live.lock().queued = 0;
        }
        self.note_status();
        self.wake.notify_one();
        Ok(if on {
            format!("suspended '{}': no cycle runs until `resume`", self.name)
        } else {
            format!("resumed '{}'", self.name)
        })
    }

    /// Abandons the running cycle: the secondary stays at its last recovery point.
    pub fn abort(&self) -> Result<String, ReplicationError> {
        let mut live = self.live.lock();
        live.queued = 0;
        if !live.running {
            return Err(ReplicationError::NotRunning(self.name.clone()));
        }
        self.abort.store(true, Ordering::Release);
        Ok(format!(
            "aborting the running cycle of '{}'; the secondary stays at its last recovery point",
            self.name
        ))
    }

    /// Runs a cycle now (or waits for the running one and then runs one) and returns
    /// the cut it committed; the cycle's error when it fails.
    pub async fn cycle_now(&self) -> Result<u64, ReplicationError> {
        let mut changes = self.changes.subscribe();
        let before = self.state.lock().cycles;
        let attempts = self.live.lock().attempts;
        self.request(QueuePolicy::QueueLatest)?;
        loop {
            {
                let st = self.state.lock();
                let live = self.live.lock();
                if live.attempts > attempts && !live.running && live.queued == 0 {
                    return match (&live.error, st.last_cut) {
                        (None, Some(cut)) if st.cycles > before => Ok(cut),
                        (Some(e), _) => Err(ReplicationError::Fence(format!(
                            "the final cycle failed: {e}"
                        ))),
                        _ => Err(ReplicationError::Fence(
                            "the final cycle was abandoned".to_string(),
                        )),
                    };
                }
            }
            if self.stopping() {
                return Err(ReplicationError::Stopping);
            }
            let _ = changes.changed().await;
        }
    }

    /// Cycles run only while neither side's promote is unsettled.
    pub fn check_may_ship(&self) -> Result<(), ReplicationError> {
        let st = self.state.lock();
        if st.split_brain {
            if let Some(fork) = st.fork.or(st.peer_promoted) {
                return Err(ReplicationError::SplitBrain {
                    set: self.name.clone(),
                    fork,
                });
            }
        }
        if st.awaiting_failback {
            return Err(ReplicationError::AwaitingFailback(self.name.clone()));
        }
        if let Some(f) = st.peer_promoted {
            return Err(ReplicationError::PeerWasPromoted {
                set: self.name.clone(),
                cut: f.cut,
            });
        }
        Ok(())
    }

    /// Whether a promote on either side is unsettled (no cycle may run).
    fn held(&self) -> bool {
        self.check_may_ship().is_err()
    }

    /// A copy of the saved state.
    pub fn saved_state(&self) -> PrimaryState {
        self.state.lock().clone()
    }

    /// Changes the saved state with `f` and saves it; on a failed save nothing changes.
    pub fn update_state(&self, f: impl FnOnce(&mut PrimaryState)) -> Result<(), ReplicationError> {
        let mut st = self.state.lock();
        let mut new = st.clone();
        f(&mut new);
        save_state(&self.dir, &new).map_err(|source| ReplicationError::State {
            set: self.name.clone(),
            source,
        })?;
        *st = new;
        drop(st);
        self.note_status();
        self.wake.notify_one();
        Ok(())
    }

    /// Records a status transition for `replication show`.
    fn note_status(&self) {
        self.changes.send_modify(|n| *n += 1);
        let state = self.state_now();
        let mut live = self.live.lock();
        if live.last_state != Some(state) {
            let from = live.last_state.replace(state);
            live.events.push_back(StateChange {
                at_unix: unix_secs(SystemTime::now()),
                state,
            });
            while live.events.len() > EVENTS {
                live.events.pop_front();
            }
            let error = live.error.clone().filter(|_| state == SetState::Error);
            drop(live);
            self.events.emit_with(|| EventKind::SetStatus {
                set: self.name.clone(),
                from: from.map(|f| f.as_str().to_string()),
                to: state.as_str().to_string(),
                error,
            });
        }
    }

    /// Stops the task: a running cycle is abandoned (its pages stay dirty).
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!(set = %self.name, "replication task did not stop in 15 s");
            }
        }
        // A cut kept for the next attempt lives in memory only: its pages go back into
        // the dirty maps, which a clean shutdown saves.
        let kept = self.pending.lock().take();
        if let Some(p) = kept {
            abandon(p);
        }
    }

    /// The set's rate caps (its own and its peer's), which `replication modify` and
    /// `peer update` change at runtime.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Something the running task reads from the catalog changed (`every`): it looks
    /// again now rather than at its next wake-up.
    pub fn reread(&self) {
        self.wake.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Where the set stands now.
    fn state_now(&self) -> SetState {
        let (suspended, has_cut, awaiting, peer_promoted, split) = {
            let st = self.state.lock();
            (
                st.suspended,
                st.last_cut.is_some(),
                st.awaiting_failback,
                st.peer_promoted.is_some(),
                st.split_brain,
            )
        };
        let live = self.live.lock();
        if split {
            SetState::SplitBrain
        } else if awaiting {
            SetState::Promoted
        } else if peer_promoted {
            SetState::PeerPromoted
        } else if live.restart {
            SetState::StartReplication
        } else if suspended {
            SetState::Suspended
        } else if live.running {
            SetState::Replicating
        } else if live.error.is_some() {
            SetState::Error
        } else if has_cut {
            SetState::Ready
        } else {
            SetState::Unsynchronized
        }
    }

    /// The set's runtime status.
    pub fn status(&self) -> SetStatus {
        let state = self.state_now();
        let st = self.state.lock().clone();
        let live = self.live.lock();
        SetStatus {
            state,
            generation: st.generation,
            last_cut: st.last_cut,
            last_cut_unix: st.last_cut_unix,
            cycles: st.cycles,
            last_cycle: st.last_cycle,
            progress: live.progress,
            current_rate: live
                .progress
                .map(|_| self.meter.lock().rate(Instant::now()) as u64),
            queued: live.queued,
            error: live.error.clone(),
            next_retry_unix: live.next_retry.map(unix_secs),
            events: live.events.iter().copied().collect(),
            fork: st.fork,
            peer_fork: st.peer_promoted,
            pages_since_fork: None,
        }
    }
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("primary.json")
}

fn load_state(dir: &Path) -> Result<PrimaryState, std::io::Error> {
    match std::fs::read(state_path(dir)) {
        Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrimaryState::default()),
        Err(e) => Err(e),
    }
}

/// Saves the state durably (`durable::replace`); an error names the file.
pub fn save_state(dir: &Path, st: &PrimaryState) -> Result<(), std::io::Error> {
    save_state_on(&crate::durable::OsDisk, dir, st)
}

fn save_state_on(
    disk: &dyn crate::durable::Disk,
    dir: &Path,
    st: &PrimaryState,
) -> Result<(), std::io::Error> {
    crate::durable::create_private_dir(dir)?;
    let json = serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?;
    crate::durable::replace_on(disk, &state_path(dir), &json).map_err(|e| match e {
        crate::durable::ReplaceError::Io { path, source } => {
            std::io::Error::new(source.kind(), format!("{}: {source}", path.display()))
        }
        crate::durable::ReplaceError::Fill(never) => match never {},
    })
}

async fn run(host: Weak<dyn Host>, set: Arc<PrimarySet>) {
    let mut failures = 0u32;
    set.note_status();
    loop {
        let every = host.upgrade().and_then(|n| {
            n.catalog()
                .read()
                .replications
                .get(&set.name)
                .and_then(|r| r.every_secs)
        });
        let suspended = set.state.lock().suspended;
        let (queued, retry_at, restart) = {
            let mut live = set.live.lock();
            // A request queued behind a running cycle asks for a cut after that one.
            // If that cycle failed, its cut is still pending: the retry that resumes it
            // keeps to its schedule and leaves the request queued for the cycle after.
            let pending = set.pending.lock().is_some();
            let q = live.queued > 0 && !suspended && !(pending && live.next_retry.is_some());
            if q && !pending {
                live.queued -= 1;
            }
            (q, live.next_retry, live.restart)
        };
        // Due: a queued request or a pending restart at once; else a retry, the
        // schedule, or a request, whichever comes first.
        let due_now = queued || (restart && !suspended);
        if !due_now {
            let wait = match (suspended, retry_at, every) {
                (true, _, _) => None,
                (false, Some(t), _) => {
                    Some(t.duration_since(SystemTime::now()).unwrap_or_default())
                }
                (false, None, Some(secs)) => Some(Duration::from_secs(secs)),
                (false, None, None) => None,
            };
            let timed_out = match wait {
                Some(d) => tokio::time::timeout(d, set.wake.notified()).await.is_err(),
                None => {
                    set.wake.notified().await;
                    false
                }
            };
            if set.stopping() {
                break;
            }
            // Woken without a request (resume, suspend, abort): only re-read the
            // schedule.
            let requested = std::mem::take(&mut set.live.lock().requested);
            if !timed_out && !requested && !set.live.lock().restart {
                set.note_status();
                continue;
            }
        }
        if set.stopping() {
            break;
        }
        if set.state.lock().suspended || set.held() {
            set.live.lock().restart = false;
            set.note_status();
            continue;
        }
        let Some(n) = host.upgrade() else { break };
        set.abort.store(false, Ordering::Release);
        {
            let mut live = set.live.lock();
            live.running = true;
            live.requested = false;
            live.started = Some(Instant::now());
            live.next_retry = None;
        }
        set.note_status();
        // The cut id is recorded once the cycle has its cut (`cycle`).
        let span = tracing::info_span!("cycle", set = %set.name, cut = tracing::field::Empty);
        let attempt = Instant::now();
        let result = async {
            if set.live.lock().restart {
                reset_secondary(&*n, &set).await?;
            }
            set.note_status();
            cycle(&*n, &set).await
        }
        .instrument(span)
        .await;
        drop(n);
        let aborted = set.abort.swap(false, Ordering::AcqRel);
        {
            let mut live = set.live.lock();
            live.running = false;
            live.attempts += 1;
            live.progress = None;
            match result {
                Ok(()) => {
                    failures = 0;
                    live.error = None;
                }
                Err(ReplicationError::SplitBrain { fork, .. }) => {
                    tracing::error!(set = %set.name, cut = fork.cut, "split brain: the peer was promoted and this side wrote after the promote; nothing resumes until `resolve`");
                    live.error = None;
                    drop(live);
                    if let Err(e) = set.update_state(|st| {
                        st.peer_promoted = Some(fork);
                        st.split_brain = true;
                    }) {
                        tracing::error!(set = %set.name, error = %crate::chain::ErrorChain(&e), "cannot record the split brain");
                    }
                    set.note_status();
                    continue;
                }
                Err(ReplicationError::PeerPromoted { peer, fork }) => {
                    tracing::warn!(set = %set.name, peer = %peer, cut = fork.cut, "the peer was promoted: this side is the old primary and ships nothing more");
                    live.error = None;
                    drop(live);
                    if let Err(e) = set.update_state(|st| st.peer_promoted = Some(fork)) {
                        tracing::error!(set = %set.name, error = %crate::chain::ErrorChain(&e), "cannot record that the peer was promoted");
                    }
                    // The cut that met the promote goes; its pages stay dirty.
                    if let Some(p) = set.pending.lock().take() {
                        abandon(p);
                    }
                    set.note_status();
                    continue;
                }
                Err(e) if set.stopping() || aborted => {
                    tracing::info!(set = %set.name, error = %e, "cycle abandoned");
                    set.events.emit_with(|| EventKind::CycleAbandoned {
                        set: set.name.clone(),
                        reason: error_chain(&e),
                    });
                }
                Err(e) => {
                    let delay = RETRY_FIRST
                        .saturating_mul(1 << failures.min(5))
                        .min(RETRY_MAX);
                    failures += 1;
                    set.counters.failed();
                    tracing::warn!(set = %set.name, error = %crate::chain::ErrorChain(&e), retry_in_s = delay.as_secs(), "replication cycle failed");
                    live.error = Some(error_chain(&e));
                    live.next_retry = Some(SystemTime::now() + delay);
                    let cut = set.pending.lock().as_ref().map(|p| p.cut.id.0);
                    set.events.emit_with(|| EventKind::CycleFailed {
                        set: set.name.clone(),
                        cut,
                        error: error_chain(&e),
                        retry_in_secs: Some(delay.as_secs()),
                        seconds: attempt.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        set.note_status();
        if set.stopping() {
            break;
        }
    }
}

/// The first step of Restart Replication: the secondary drops every recovery point
/// and staged data for a new generation; the next cycle is full.
async fn reset_secondary(node: &dyn Host, set: &PrimarySet) -> Result<(), ReplicationError> {
    let (spec, peer) = spec_and_peer(node, &set.name)?;
    let generation = set.state.lock().generation + 1;
    let mut conn = PeerConn::connect(node, &spec.peer, &peer).await?;
    conn.expect_ok(&Message::Reset {
        set: set.name.clone(),
        generation,
    })
    .await?;
    let mut st = set.state.lock();
    st.generation = generation;
    st.last_cut = None;
    st.last_cut_unix = None;
    let saved = st.clone();
    drop(st);
    save_state(&set.dir, &saved).map_err(|source| ReplicationError::State {
        set: set.name.clone(),
        source,
    })?;
    set.live.lock().restart = false;
    tracing::info!(set = %set.name, generation, "secondary reset: a new generation starts");
    Ok(())
}

/// A set's spec and its peer's, from the catalog.
pub(super) fn spec_and_peer(
    node: &dyn Host,
    name: &str,
) -> Result<(crate::catalog::ReplicationSpec, crate::catalog::PeerSpec), ReplicationError> {
    let c = node.catalog().read();
    let spec = c
        .replications
        .get(name)
        .cloned()
        .ok_or_else(|| ReplicationError::NotPrimary(name.into()))?;
    let peer = c
        .peers
        .get(&spec.peer)
        .cloned()
        .ok_or_else(|| ReplicationError::NotPrimary(name.into()))?;
    Ok((spec, peer))
}

/// An error and its sources, for status.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::chain::ErrorChain(e).to_string()
}

/// One run of pages of one volume to ship: data (read through the snapshot) or a
/// range known to be a hole (a zero record).
struct Run {
    volume: u32,
    pages: std::ops::Range<u32>,
    hole: bool,
}

/// A cut taken and not yet committed by the peer: kept across failed attempts so the
/// next one resumes it (the peer says how many extents it staged), and so a commit
/// whose answer was lost is recognised instead of shipped again.
struct Pending {
    cut: crate::tracking::Cut,
    generation: u64,
    base: Option<u64>,
    plan: Vec<Run>,
    total: u64,
    /// Data bytes shipped by earlier attempts.
    shipped: CycleStats,
    tracked: Vec<Arc<TrackedVolume>>,
}

/// Gives a pending cut up: its pages go back into the dirty maps, its snapshot goes.
fn abandon(p: Pending) {
    abandon_cut(p.cut, &p.tracked);
}

async fn cycle(node: &dyn Host, set: &PrimarySet) -> Result<(), ReplicationError> {
    let (spec, peer) = spec_and_peer(node, &set.name)?;
    let volumes: Vec<Arc<Volume>> = spec
        .volumes
        .iter()
        .map(|v| node.volume(v))
        .collect::<Option<_>>()
        .ok_or_else(|| ReplicationError::NotPrimary(set.name.clone()))?;
    let tracked: Vec<Arc<TrackedVolume>> = volumes
        .iter()
        .map(|v| v.tracking().cloned())
        .collect::<Option<_>>()
        .ok_or(ReplicationError::Unavailable)?;
    let (generation, base) = {
        let st = set.state.lock();
        (st.generation, st.last_cut)
    };
    let kept = set.pending.lock().take();
    let kept = match kept {
        Some(p) if p.generation == generation && p.base == base => Some(p),
        Some(p) => {
            abandon(p);
            None
        }
        None => None,
    };

    // Connect first: a cut is only worth taking when the peer is there.
    let mut conn = match PeerConn::connect(node, &spec.peer, &peer).await {
        Ok(c) => c,
        Err(e) => {
            *set.pending.lock() = kept;
            return Err(e);
        }
    };
    let resumed = kept.is_some();
    let mut p = match kept {
        Some(p) => {
            tracing::info!(cut = p.cut.id.0, "resuming the pending cut");
            p
        }
        None => {
            let resync = match base {
                None => set.state.lock().resync.clone(),
                Some(_) => None,
            };
            let p = new_pending(
                node,
                &spec.volumes,
                &volumes,
                &tracked,
                generation,
                base,
                resync.as_deref(),
            )
            .await?;
            let mut st = set.state.lock();
            st.issued_cut = Some(p.cut.id.0);
            let saved = st.clone();
            drop(st);
            if let Err(source) = save_state(&set.dir, &saved) {
                abandon(p);
                return Err(ReplicationError::State {
                    set: set.name.clone(),
                    source,
                });
            }
            p
        }
    };
    let how = if conn.accepts(spec.compress) {
        spec.compress
    } else {
        tracing::warn!(
            peer = %spec.peer,
            compress = %spec.compress,
            "the peer does not decode this codec (an older build?): extents travel uncompressed"
        );
        Compression::None
    };
    tracing::Span::current().record("cut", p.cut.id.0);
    set.events.emit_with(|| EventKind::CycleStarted {
        set: set.name.clone(),
        cut: p.cut.id.0,
        full: base.is_none(),
        resumed,
        bytes_total: p.total,
    });
    let started = Instant::now();
    let shipped = tokio::select! {
        r = ship(node, set, &mut conn, &volumes, &tracked, &spec.volumes, &p, how) => r,
        _ = wait_stop(set) => Err(ReplicationError::Stopping),
    };
    match shipped {
        Ok(stats) => {
            // Fault injection for the tests: die between the peer's commit and our
            // record of it.
            #[cfg(feature = "fault-injection")]
            if std::env::var_os(CRASH_BEFORE_RECORD).is_some() {
                tracing::error!("{CRASH_BEFORE_RECORD} is set: aborting");
                std::process::abort();
            }
            for t in &tracked {
                let _ = t.delete_snapshot(p.cut.id);
            }
            let mut total = p.shipped;
            total.cut_id = stats.cut_id;
            total.full = stats.full;
            total.data_bytes += stats.data_bytes;
            total.wire_data_bytes += stats.wire_data_bytes;
            total.compress = stats.compress;
            total.record_bytes += stats.record_bytes;
            total.zero_bytes += stats.zero_bytes;
            total.overhead_bytes += stats.overhead_bytes;
            total.seconds += started.elapsed().as_secs_f64();
            total.attempts += 1;
            total.final_attempt_data_bytes = stats.data_bytes;
            let cut_unix = unix_secs(p.cut.at);
            let mut st = set.state.lock();
            st.last_cut = Some(p.cut.id.0);
            st.last_cut_unix = Some(cut_unix);
            st.resync = None;
            st.cycles += 1;
            st.last_cycle = Some(total);
            let saved = st.clone();
            drop(st);
            set.counters.committed(crate::metrics::ShippedBytes {
                data: total.data_bytes,
                wire: total.wire_data_bytes + total.record_bytes + total.overhead_bytes,
                records: total.record_bytes,
            });
            match save_state(&set.dir, &saved) {
                Ok(()) => {
                    let refs: Vec<&TrackedVolume> = tracked.iter().map(|t| &**t).collect();
                    p.cut.committed(&refs);
                }
                // The peer has the cut; only our record of it is missing. The activity
                // records stay: after a crash they make the next cycle resend more.
                Err(e) => {
                    tracing::error!(set = %set.name, error = %crate::chain::ErrorChain(&e), "cannot save replication state")
                }
            }
            tracing::info!(
                cut = p.cut.id.0,
                data_bytes = total.data_bytes,
                wire_data_bytes = total.wire_data_bytes,
                records = total.record_bytes,
                seconds = total.seconds,
                "cycle committed"
            );
            set.events.emit_with(|| EventKind::CycleCommitted {
                set: set.name.clone(),
                cut: p.cut.id.0,
                full: total.full,
                data_bytes: total.data_bytes,
                wire_data_bytes: total.wire_data_bytes,
                record_bytes: total.record_bytes,
                zero_bytes: total.zero_bytes,
                seconds: total.seconds,
                attempts: total.attempts,
            });
            Ok(())
        }
        Err(e) if set.stopping() || set.abort.load(Ordering::Acquire) => {
            abandon(p);
            Err(e)
        }
        Err(ReplicationError::PeerPromoted { peer, fork }) => {
            abandon(p);
            // Written here after the peer's promote: both sides diverged. The peer
            // hears it too, so that neither side resumes on its own.
            let wrote_after = tracked
                .iter()
                .any(|t| t.dirty().last_mark_ms() > fork.promoted_ms);
            if wrote_after {
                let told = conn
                    .expect_ok(&Message::SplitBrain {
                        set: set.name.clone(),
                        fork,
                    })
                    .await;
                if let Err(e) = told {
                    tracing::warn!(set = %set.name, error = %crate::chain::ErrorChain(&e), "cannot tell the peer of the split brain");
                }
                return Err(ReplicationError::SplitBrain {
                    set: set.name.clone(),
                    fork,
                });
            }
            Err(ReplicationError::PeerPromoted { peer, fork })
        }
        Err(e) => {
            // Keep the cut: the next attempt resumes it.
            if let Some(partial) = set.live.lock().partial.take() {
                p.shipped.data_bytes += partial.data_bytes;
                p.shipped.wire_data_bytes += partial.wire_data_bytes;
                p.shipped.record_bytes += partial.record_bytes;
                p.shipped.zero_bytes += partial.zero_bytes;
                p.shipped.seconds += started.elapsed().as_secs_f64();
            }
            p.shipped.attempts += 1;
            *set.pending.lock() = Some(p);
            Err(e)
        }
    }
}

/// Takes a new cut of the set and plans what it ships.
async fn new_pending(
    node: &dyn Host,
    names: &[String],
    volumes: &[Arc<Volume>],
    tracked: &[Arc<TrackedVolume>],
    generation: u64,
    base: Option<u64>,
    resync: Option<&[String]>,
) -> Result<Pending, ReplicationError> {
    let full = base.is_none();
    // After a failback the peer holds the common cut plus its own divergent pages: the
    // first cut ships the union of both sides' changes since then, not all written data.
    let resync: Option<Vec<RoaringBitmap>> = resync.map(|hexes| {
        (0..names.len())
            .map(|i| {
                hexes
                    .get(i)
                    .and_then(|h| wire::pages_from_hex(h))
                    .unwrap_or_default()
            })
            .collect()
    });
    let refs: Vec<&TrackedVolume> = tracked.iter().map(|t| &**t).collect();
    let cut = node
        .cuts()
        .cut_group(
            &refs,
            CutOptions {
                timeout: CUT_TIMEOUT,
                snapshot: if full {
                    SnapshotScope::Volume
                } else {
                    SnapshotScope::Frozen
                },
                freeze_dirty: true,
            },
        )
        .await
        .map_err(|e| ReplicationError::Cut(Box::new(e)))?;
    let mut plan: Vec<Run> = Vec::new();
    let mut total = 0u64;
    for (i, (v, t)) in volumes.iter().zip(tracked).enumerate() {
        // The cut's frozen maps are in name order; the set's order is the wire's.
        let mut data = cut
            .volumes
            .iter()
            .find(|f| *f.volume == *names[i])
            .map(|f| f.dirty.clone())
            .unwrap_or_default();
        let page = u64::from(t.page_size().bytes());
        if let Some(r) = &resync {
            data |= &r[i];
            total += data.len() * page;
            plan.extend(runs(i as u32, t.page_count(), &data, false));
            continue;
        }
        if full {
            match allocated_pages(v.path(), v.size(), page) {
                Ok(alloc) => data |= alloc,
                Err(source) => {
                    abandon_cut(cut, tracked);
                    return Err(ReplicationError::Read {
                        volume: names[i].clone(),
                        source,
                    });
                }
            }
        }
        total += data.len() * page;
        plan.extend(runs(i as u32, t.page_count(), &data, full));
    }
    Ok(Pending {
        cut,
        generation,
        base,
        plan,
        total,
        shipped: CycleStats::default(),
        tracked: tracked.to_vec(),
    })
}

fn abandon_cut(cut: crate::tracking::Cut, tracked: &[Arc<TrackedVolume>]) {
    let refs: Vec<&TrackedVolume> = tracked.iter().map(|t| &**t).collect();
    cut.merge_back(&refs);
    for t in tracked {
        let _ = t.delete_snapshot(cut.id);
    }
}

async fn wait_stop(set: &PrimarySet) {
    while !set.stopping() && !set.abort.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pages of `path` (a volume file of `size` bytes) inside allocated extents
/// (SEEK_DATA/SEEK_HOLE).
fn allocated_pages(path: &Path, size: u64, page: u64) -> Result<RoaringBitmap, std::io::Error> {
    let f = std::fs::File::open(path)?;
    let mut pages = RoaringBitmap::new();
    for (from, len, mapped) in crate::volume::allocation(&f, 0, size)? {
        if mapped {
            pages.insert_range((from / page) as u32..(from + len).div_ceil(page) as u32);
        }
    }
    Ok(pages)
}

/// Runs of the pages to ship: for a full cycle every page (allocated or dirty ones as
/// data, the rest as holes); otherwise the dirty pages.
fn runs(volume: u32, pages: u32, data: &RoaringBitmap, full: bool) -> Vec<Run> {
    let max_pages = pages.max(1);
    let mut out = Vec::new();
    let mut push = |range: std::ops::Range<u32>, hole: bool| {
        if !range.is_empty() {
            out.push(Run {
                volume,
                pages: range,
                hole,
            });
        }
    };
    let mut at = 0u32;
    let mut iter = data.iter().peekable();
    while let Some(first) = iter.next() {
        if first >= max_pages {
            break;
        }
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().expect("peeked");
        }
        if full {
            push(at..first, true);
        }
        push(first..last + 1, false);
        at = last + 1;
    }
    if full {
        push(at..pages, true);
    }
    out
}

/// Ships a pending cut: `BeginCut`, the extents the peer has not staged yet, `EndCut`.
/// Extents come out in the same order on every attempt (the plan and the snapshot are
/// fixed), so the peer's count of staged extents says where to go on. Data extents
/// travel compressed with `how` where that makes them smaller.
#[allow(clippy::too_many_arguments)]
async fn ship(
    node: &dyn Host,
    set: &PrimarySet,
    conn: &mut PeerConn,
    volumes: &[Arc<Volume>],
    tracked: &[Arc<TrackedVolume>],
    names: &[String],
    p: &Pending,
    how: Compression,
) -> Result<CycleStats, ReplicationError> {
    let cut = p.cut.id;
    let full = p.base.is_none();
    set.live.lock().progress = Some(CycleProgress {
        cut_id: cut.0,
        bytes_total: p.total,
        ..Default::default()
    });
    let sent_before = conn.sent;
    let mut stats = CycleStats {
        cut_id: cut.0,
        full,
        compress: how,
        ..Default::default()
    };
    let remote_volumes = node
        .catalog()
        .read()
        .replications
        .get(&set.name)
        .map(|r| r.remote_volumes.clone())
        .unwrap_or_default();
    let skip = match conn
        .request(&Message::BeginCut {
            set: set.name.clone(),
            generation: p.generation,
            cut: cut.0,
            taken_unix: unix_secs(p.cut.at),
            full,
            base: p.base,
            volumes: remote_volumes,
        })
        .await?
    {
        Message::Begun { extents, .. } => extents,
        // An earlier attempt's commit whose answer was lost.
        Message::Committed { cut: c } if c == cut.0 => {
            tracing::info!(cut = c, "the peer had committed the cut already");
            return Ok(stats);
        }
        other => return Err(conn.refusal(other)),
    };
    let started = Instant::now();
    set.meter.lock().start(started);
    let mut index = 0u64;
    let mut done = 0u64;
    let report = |done: u64| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        set.live.lock().progress = Some(CycleProgress {
            cut_id: cut.0,
            bytes_done: done,
            bytes_total: p.total,
            rate_bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| p.total.saturating_sub(done) as f64 / rate),
        });
    };
    // The chunk read before the current one (and its length): sent while the current
    // one compresses, so compressing overlaps sending. Frames still go out in order.
    let mut ahead: Option<(Batch, u64)> = None;
    let mut pacer = Pacer::new(node.foreground_io_nanos(), Instant::now());
    for run in &p.plan {
        let v = &volumes[run.volume as usize];
        let t = &tracked[run.volume as usize];
        let page = u64::from(t.page_size().bytes());
        let start = u64::from(run.pages.start) * page;
        let end = (u64::from(run.pages.end) * page).min(v.size());
        if run.hole {
            if let Some((batch, len)) = ahead.take() {
                send_batch(set, conn, &mut stats, batch).await?;
                done += len;
                report(done);
            }
            if index >= skip {
                let e = Extent {
                    volume: run.volume,
                    offset: start,
                    kind: ExtentKind::Zero { len: end - start },
                    crc: 0,
                };
                send_paced(set, conn, &wire::encode_extent(&e, Compression::None)).await?;
                stats.record_bytes += Extent::overhead();
                stats.zero_bytes += end - start;
            }
            index += 1;
            continue;
        }
        let chunk = (MAX_EXTENT as u64 / page).max(1) * page;
        let mut off = start;
        while off < end {
            let len = chunk.min(end - off);
            let data =
                v.read(off, len as usize)
                    .await
                    .map_err(|e| ReplicationError::ReadVolume {
                        volume: names[run.volume as usize].clone(),
                        source: Box::new(e),
                    })?;
            // The read's buffer is ours alone: the snapshot goes over it, not over a copy.
            let mut buf = data
                .try_into_mut()
                .unwrap_or_else(|data| bytes::BytesMut::from(&data[..]));
            t.overlay_snapshot(cut, off, &mut buf)
                .map_err(|e| ReplicationError::Snapshot {
                    volume: names[run.volume as usize].clone(),
                    source: Box::new(e),
                })?;
            let buf = buf.freeze();
            // Runs of zero and non-zero pages: zeros travel as records. Extents the
            // peer staged in an earlier attempt are not sent again.
            let pieces = zero_runs(&buf, page as usize);
            let first = index;
            index += pieces.len() as u64;
            let todo: Pieces = pieces
                .into_iter()
                .enumerate()
                .filter(|(i, _)| first + *i as u64 >= skip)
                .map(|(_, p)| p)
                .collect();
            let batch = if how.is_none() {
                let encoded = encode(run.volume, off, &buf, &todo, how);
                Batch::Ready(todo, encoded)
            } else {
                // Compressing a MiB takes milliseconds: not on a runtime thread.
                let volume = run.volume;
                // The cycle's span (set, cut) goes with the work to its thread.
                let span = tracing::Span::current();
                Batch::Compressing(tokio::task::spawn_blocking(move || {
                    let _in_cycle = span.enter();
                    let encoded = encode(volume, off, &buf, &todo, how);
                    (todo, encoded)
                }))
            };
            if let Some((previous, previous_len)) = ahead.replace((batch, len)) {
                send_batch(set, conn, &mut stats, previous).await?;
                done += previous_len;
                report(done);
                let pause = pacer.after_chunk(node.foreground_io_nanos(), Instant::now());
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            off += len;
        }
    }
    if let Some((batch, len)) = ahead.take() {
        send_batch(set, conn, &mut stats, batch).await?;
        done += len;
        report(done);
    }
    let end = conn
        .request_while(
            &Message::EndCut {
                set: set.name.clone(),
                cut: cut.0,
                extents: index,
                keepalive: true,
            },
            |m| matches!(m, Message::Committing { cut: c } if *c == cut.0),
        )
        .await;
    match end {
        Ok(Message::Committed { cut: c }) if c == cut.0 => {}
        Ok(other) => return Err(conn.refusal(other)),
        Err(e) => {
            set.live.lock().partial = Some(stats);
            return Err(e);
        }
    }
    if !pacer.paused.is_zero() {
        tracing::debug!(paused = ?pacer.paused, "the cycle gave way to initiator I/O");
    }
    let wire_total = conn.sent - sent_before;
    stats.overhead_bytes = wire_total.saturating_sub(stats.wire_data_bytes + stats.record_bytes);
    Ok(stats)
}

/// Sends an extent once the set's and the peer's caps let its wire bytes through.
async fn send_paced(
    set: &PrimarySet,
    conn: &mut PeerConn,
    e: &EncodedExtent,
) -> Result<(), ReplicationError> {
    let bytes = e.wire_len();
    set.limits.acquire(bytes).await;
    set.meter.lock().add(bytes, Instant::now());
    conn.send_extent(e).await
}

/// Ranges of a chunk and whether each is zeros.
type Pieces = Vec<(std::ops::Range<usize>, bool)>;

/// The frames of one chunk read from a volume, with the pieces they are of.
enum Batch {
    Ready(Pieces, Vec<EncodedExtent>),
    /// Being compressed on a blocking thread.
    Compressing(tokio::task::JoinHandle<(Pieces, Vec<EncodedExtent>)>),
}

/// Sends a chunk's frames in order, counting them into `stats` (left in the set's
/// `partial` when sending fails).
async fn send_batch(
    set: &PrimarySet,
    conn: &mut PeerConn,
    stats: &mut CycleStats,
    batch: Batch,
) -> Result<(), ReplicationError> {
    let (pieces, encoded) = match batch {
        Batch::Ready(pieces, encoded) => (pieces, encoded),
        Batch::Compressing(task) => task.await.map_err(ReplicationError::Encode)?,
    };
    for ((range, zero), e) in pieces.into_iter().zip(encoded) {
        if zero {
            stats.record_bytes += Extent::overhead();
            stats.zero_bytes += range.len() as u64;
        } else {
            stats.data_bytes += range.len() as u64;
            stats.wire_data_bytes += e.payload.len() as u64;
        }
        if let Err(e) = send_paced(set, conn, &e).await {
            set.live.lock().partial = Some(*stats);
            return Err(e);
        }
    }
    Ok(())
}

/// Splits a chunk read from a volume into runs of zero and non-zero pages (`page`
/// bytes, the last one possibly shorter): `(range in the chunk, zero)`.
fn zero_runs(buf: &[u8], page: usize) -> Pieces {
    let step = |q: usize| page.min(buf.len() - q);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let zero = is_zero(&buf[at..at + step(at)]);
        let mut q = at + step(at);
        while q < buf.len() && is_zero(&buf[q..q + step(q)]) == zero {
            q += step(q);
        }
        out.push((at..q, zero));
        at = q;
    }
    out
}

/// The frames of `pieces` of a chunk read at `off` of volume `volume`: zero records,
/// and data extents (crc32c of the data as read) compressed with `how` where that
/// makes them smaller.
fn encode(
    volume: u32,
    off: u64,
    buf: &Bytes,
    pieces: &[(std::ops::Range<usize>, bool)],
    how: Compression,
) -> Vec<EncodedExtent> {
    pieces
        .iter()
        .map(|(range, zero)| {
            let offset = off + range.start as u64;
            let e = if *zero {
                Extent {
                    volume,
                    offset,
                    kind: ExtentKind::Zero {
                        len: range.len() as u64,
                    },
                    crc: 0,
                }
            } else {
                let d = buf.slice(range.clone());
                Extent {
                    volume,
                    offset,
                    crc: crc32c::crc32c(&d),
                    kind: ExtentKind::Data(d),
                }
            };
            wire::encode_extent(&e, how)
        })
        .collect()
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_full_and_incremental() {
        let mut d = RoaringBitmap::new();
        d.insert_range(2..4);
        d.insert(7);
        let r: Vec<(std::ops::Range<u32>, bool)> = runs(0, 10, &d, true)
            .into_iter()
            .map(|r| (r.pages, r.hole))
            .collect();
        assert_eq!(
            r,
            vec![
                (0..2, true),
                (2..4, false),
                (4..7, true),
                (7..8, false),
                (8..10, true)
            ]
        );
        let r: Vec<(std::ops::Range<u32>, bool)> = runs(0, 10, &d, false)
            .into_iter()
            .map(|r| (r.pages, r.hole))
            .collect();
        assert_eq!(r, vec![(2..4, false), (7..8, false)]);
        assert!(runs(0, 10, &RoaringBitmap::new(), false).is_empty());
    }

    #[test]
    fn allocated_pages_follow_the_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8192).unwrap();
        f.write_all_at(&[1u8; 100], 65536 + 5).unwrap();
        f.sync_all().unwrap();
        let pages = allocated_pages(&p, 1 << 20, 4096).unwrap();
        assert_eq!(pages.iter().collect::<Vec<_>>(), vec![2, 16]);
    }

    #[test]
    fn zero_runs_split_by_page_and_keep_a_short_tail() {
        let mut b = vec![0u8; 4 * 4096 + 100];
        b[4096 + 7] = 1; // page 1
        b[2 * 4096] = 1; // page 2
        b[4 * 4096 + 99] = 1; // the short tail
        assert_eq!(
            zero_runs(&b, 4096),
            vec![
                (0..4096, true),
                (4096..3 * 4096, false),
                (3 * 4096..4 * 4096, true),
                (4 * 4096..4 * 4096 + 100, false)
            ]
        );
        assert!(zero_runs(&[], 4096).is_empty());
    }

    #[test]
    fn encoded_pieces_keep_the_crc_of_the_data_as_read() {
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i / 64 % 3) as u8 + 1).collect();
        let buf = Bytes::from(data);
        let pieces = vec![(0..4096, false), (4096..3 * 4096, false)];
        for how in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let enc = encode(2, 1 << 20, &buf, &pieces, how);
            assert_eq!(enc.len(), 2);
            for (e, (range, _)) in enc.iter().zip(&pieces) {
                assert_eq!(e.codec, how);
                let mut frame = e.head.to_vec();
                frame.extend_from_slice(&e.payload);
                let wire::Frame::Extent(x) =
                    wire::decode_body(Bytes::from(frame[4..].to_vec())).unwrap()
                else {
                    panic!("not an extent")
                };
                assert_eq!(x.offset, (1 << 20) + range.start as u64);
                assert_eq!(x.crc, crc32c::crc32c(&buf[range.clone()]));
                assert_eq!(x.kind, ExtentKind::Data(buf.slice(range.clone())));
            }
        }
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0u8; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn a_crash_or_an_error_in_a_save_leaves_the_old_state_or_the_new_one() {
        let old = PrimaryState {
            generation: 7,
            last_cut: Some(3),
            ..PrimaryState::default()
        };
        let new = PrimaryState {
            last_cut: Some(4),
            issued_cut: Some(5),
            ..old.clone()
        };
        let show = |st: PrimaryState| serde_json::to_string(&st).unwrap();
        crate::durable::fault::check_save(
            |dir| save_state(dir, &old).unwrap(),
            |disk, dir| save_state_on(disk, dir, &new),
            |dir| show(load_state(dir).unwrap()),
            &[show(old.clone()), show(new.clone())],
        );
    }
}
