//! The replication sets this node runs: a task per primary set (`sender`), a receiver
//! store per secondary set (`recovery`), and the schedules that ask primaries for
//! cycles. One owner for all of it; the node reaches it through these methods and it
//! reaches the node through [`Host`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::host::ChangeRefused;
use super::host::Host;
use super::peer::PeerConn;
use super::rate::{Bucket, Limits};
use super::recovery::{ReceiverStore, ReceiverSummary, RecoveryPoint, StoreConfig, VolumeTarget};
use super::sender::{spec_and_peer, PrimarySet, PrimaryState};
use super::status::{SetState, SetStatus};
use super::views::{PointView, PointViews};
use super::wire::{Fork, MemberVolume, Message, RemoteVolume, WireError};
use super::ReplicationError;
use crate::catalog::{Compression, PeerSpec, ReplicationRole, ReplicationSpec};
use crate::events::Emitter;
use crate::throttle::AuthThrottle;

/// What an admin asks of a running primary set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Restart Replication: the secondary drops its recovery points, a full cycle follows.
    Restart,
    Suspend,
    Resume,
    /// Abandon the running cycle.
    Abort,
}

/// How often the schedule loop looks at the clock.
const SCHEDULE_TICK: Duration = Duration::from_millis(250);

/// A secondary set: its store, locked while a cut is received or applied, and the
/// summary it publishes, which queries read instead.
struct Receiver {
    store: Arc<tokio::sync::Mutex<ReceiverStore>>,
    summary: Arc<Mutex<ReceiverSummary>>,
    /// The points DR drill LUNs pin, and their views.
    views: Arc<PointViews>,
    /// The store's volumes, in its order.
    volumes: Vec<String>,
}

/// A peer connection on the secondary's listener, as the holder of the sets it works
/// on: its id, and the signal that stops it.
#[derive(Clone)]
pub struct PeerConnHandle {
    id: u64,
    stop: Arc<tokio::sync::Notify>,
}

impl PeerConnHandle {
    /// A handle for a new connection (ids are unique for the process's life).
    pub fn new() -> PeerConnHandle {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        PeerConnHandle {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stop: Arc::default(),
        }
    }

    /// Resolves once a newer connection (or a promote) superseded this one: the
    /// connection's task then drops everything it holds.
    pub async fn superseded(&self) {
        self.stop.notified().await
    }
}

impl Default for PeerConnHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Which connection works on each secondary set now, and the sets a promote has
/// fenced off from peers while it rolls back.
#[derive(Default)]
struct Holders {
    by_set: HashMap<String, PeerConnHandle>,
    fenced: HashSet<String>,
}

/// Every replication set of the node.
#[derive(Default)]
pub struct Sets {
    host: OnceLock<Weak<dyn Host>>,
    primaries: Mutex<HashMap<String, Arc<PrimarySet>>>,
    receivers: Mutex<HashMap<String, Receiver>>,
    /// Secondary sets' connections (session reinstatement, see [`Sets::claim`]).
    holders: Mutex<Holders>,
    /// Failed peer authentications per source address (`throttle`).
    pub auth_throttle: Mutex<AuthThrottle>,
    /// Where primaries report status changes and cycles (`ctl events`).
    events: Emitter,
    /// Where primary sets count what they ship.
    metrics: Arc<crate::metrics::Registry>,
    /// Byte ranges per volume a promote's roll back undid, from `stop_receiver` to
    /// `promote_here`.
    rolled_back: Mutex<HashMap<String, VolumeRanges>>,
    /// Each peer's `--max-rate` bucket, shared by every set sending to it.
    peer_limits: Mutex<HashMap<String, Arc<Bucket>>>,
}

impl Sets {
    /// Sets whose primaries report their status changes and cycles to `events` and
    /// count what they ship into `metrics` (the node's registry).
    pub fn new(events: Emitter, metrics: Arc<crate::metrics::Registry>) -> Sets {
        Sets {
            events,
            metrics,
            ..Sets::default()
        }
    }

    /// Starts every set of the catalog (after the volumes opened) and the schedules.
    pub fn start(self: &Arc<Self>, host: Weak<dyn Host>) {
        let _ = self.host.set(host);
        let Some(h) = self.host() else { return };
        let names: Vec<String> = h.catalog().read().replications.keys().cloned().collect();
        drop(h);
        for name in names {
            self.start_set(&name);
        }
        tokio::spawn(run_schedules(Arc::downgrade(self)));
    }

    /// The node, while it lives.
    pub fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.get().and_then(Weak::upgrade)
    }

    /// Stops every primary set's task (a cycle in flight puts its pages back into the
    /// dirty maps); call before saving tracking at shutdown.
    pub async fn stop(&self) {
        let sets: Vec<Arc<PrimarySet>> = self.primaries.lock().drain().map(|(_, s)| s).collect();
        for s in sets {
            s.stop().await;
        }
    }

    /// Starts the set `name` of the catalog: a primary's task, or a secondary's store.
    pub fn start_set(&self, name: &str) {
        let Some(host) = self.host() else { return };
        let Some(spec) = host.catalog().read().replications.get(name).cloned() else {
            return;
        };
        let dir = set_dir(&*host, &spec);
        match spec.role {
            ReplicationRole::Primary => {
                let peer_rate = host
                    .catalog()
                    .read()
                    .peers
                    .get(&spec.peer)
                    .and_then(|p| p.max_rate);
                let peer = self.peer_bucket(&spec.peer, peer_rate);
                // A bucket left from a peer deleted and made again takes today's cap.
                peer.set_rate(peer_rate);
                let limits = Limits {
                    set: Bucket::new(spec.max_rate),
                    peer,
                };
                let set = PrimarySet::start(
                    Arc::downgrade(&host),
                    name,
                    dir,
                    self.events.clone(),
                    self.metrics.set(name),
                    limits,
                );
                self.primaries.lock().insert(name.to_string(), set);
            }
            ReplicationRole::Secondary => {
                let targets: Vec<VolumeTarget> = {
                    let c = host.catalog().read();
                    spec.volumes
                        .iter()
                        .filter_map(|v| {
                            c.volumes.get(v).map(|vs| VolumeTarget {
                                name: v.clone(),
                                path: host.data_dir().join(&vs.path),
                                size: vs.size,
                            })
                        })
                        .collect()
                };
                let pins = {
                    let c = host.catalog().read();
                    c.drill_pins(&spec.volumes)
                };
                let views = Arc::new(PointViews::new(
                    &dir,
                    targets.iter().map(|t| t.size).collect(),
                    pins,
                ));
                let volumes = targets.iter().map(|t| t.name.clone()).collect();
                match ReceiverStore::open_with_views(
                    &dir,
                    targets,
                    StoreConfig::default(),
                    views.clone(),
                ) {
                    Ok(store) => {
                        let summary = store.summary();
                        let store = Arc::new(tokio::sync::Mutex::new(store));
                        self.receivers.lock().insert(
                            name.to_string(),
                            Receiver {
                                store,
                                summary,
                                views,
                                volumes,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(set = %name, error = %crate::chain::ErrorChain(&e), "cannot open the secondary's replication state");
                    }
                }
            }
        }
    }

    /// The set was deleted from the catalog: its task or store stops and its saved
    /// state goes.
    pub async fn stop_set(&self, name: &str, spec: &ReplicationSpec) {
        match spec.role {
            ReplicationRole::Primary => {
                let set = self.primaries.lock().remove(name);
                if let Some(set) = set {
                    set.stop().await;
                }
            }
            ReplicationRole::Secondary => {
                // Peers are kept off the set from here on; a connection receiving a
                // cut stops, and one applying a cut finishes (disk time, not the
                // network's) before the state goes.
                self.holders.lock().fenced.insert(name.to_string());
                self.supersede(name);
            }
        }
        let receiver = self.receivers.lock().remove(name);
        // The set's directory goes with the store locked and retired: a connection
        // that fetched the store before it left the map finds it refusing everything.
        let held = match receiver {
            Some(r) => {
                let mut st = r.store.lock_owned().await;
                st.close();
                Some(st)
            }
            None => None,
        };
        self.metrics.remove_set(name);
        if let Some(host) = self.host() {
            let dir = set_dir(&*host, spec);
            if let Err(e) = crate::datadir::remove_object_dir(
                host.data_dir(),
                crate::datadir::REPLICATION,
                &dir,
            ) {
                tracing::warn!(set = %name, error = %crate::chain::ErrorChain(&e), "cannot remove replication state");
            }
        }
        drop(held);
        self.holders.lock().fenced.remove(name);
    }

    /// `conn` works on the secondary set `set` from now on. A connection that held it
    /// is stopped, as iSCSI reinstates a session: a primary that retries after its
    /// host or link vanished (no FIN or RST came) must not wait for the old
    /// connection, which would otherwise keep the set's store until a read timeout.
    /// The stopped connection's cut in flight is left as a broken connection leaves it
    /// (staged extents kept, nothing committed), and its store lock released once
    /// the extents it queued are written. `false` while a promote has the set.
    pub fn claim(&self, set: &str, conn: &PeerConnHandle) -> bool {
        let mut h = self.holders.lock();
        if h.fenced.contains(set) {
            return false;
        }
        if let Some(old) = h.by_set.insert(set.to_string(), conn.clone()) {
            if old.id != conn.id {
                tracing::warn!(set = %set, "a newer connection of the peer supersedes the one working on this set: stopping the older one");
                old.stop.notify_one();
            }
        }
        true
    }

    /// A connection ended: it holds no set any more.
    pub fn release(&self, conn: &PeerConnHandle) {
        self.holders.lock().by_set.retain(|_, c| c.id != conn.id);
    }

    /// Stops the connection working on `set`, if any.
    fn supersede(&self, set: &str) {
        if let Some(old) = self.holders.lock().by_set.remove(set) {
            old.stop.notify_one();
        }
    }

    /// The bucket of `peer`'s cap, made with `rate` when it has none yet.
    fn peer_bucket(&self, peer: &str, rate: Option<u64>) -> Arc<Bucket> {
        self.peer_limits
            .lock()
            .entry(peer.to_string())
            .or_insert_with(|| Bucket::new(rate))
            .clone()
    }

    /// A set's settings changed in the catalog (`replication modify`): its cap applies
    /// to the next extent (a sender waiting for tokens recomputes at once), its
    /// interval at once; codec, queue policy and keep are read where they act.
    pub fn settings_changed(&self, name: &str) {
        let Some(host) = self.host() else { return };
        let Some(rate) = host
            .catalog()
            .read()
            .replications
            .get(name)
            .map(|r| r.max_rate)
        else {
            return;
        };
        if let Ok(set) = self.primary(name) {
            set.limits().set.set_rate(rate);
            set.reread();
        }
    }

    /// A peer's settings changed in the catalog (`peer update`): its cap applies to
    /// every set sending to it from the next extent on.
    pub fn peer_changed(&self, peer: &str) {
        let Some(host) = self.host() else { return };
        let rate = host
            .catalog()
            .read()
            .peers
            .get(peer)
            .and_then(|p| p.max_rate);
        self.peer_bucket(peer, rate).set_rate(rate);
    }

    /// What `replication modify` must settle with the peer before it is saved: that
    /// the peer decodes `compress`, and the new `keep` of its recovery points.
    pub async fn modify_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        keep: Option<u32>,
        compress: Option<Compression>,
    ) -> Result<(), ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        let mut conn = PeerConn::connect(&*host, &spec.peer, peer).await?;
        if let Some(c) = compress {
            if !conn.accepts(c) {
                return Err(ReplicationError::Codec {
                    peer: spec.peer.clone(),
                    codec: c,
                });
            }
        }
        if let Some(keep) = keep {
            conn.expect_ok(&Message::ModifySet {
                set: name.to_string(),
                keep,
            })
            .await?;
        }
        Ok(())
    }

    /// The receiver store of a secondary set.
    pub fn receiver(&self, set: &str) -> Option<Arc<tokio::sync::Mutex<ReceiverStore>>> {
        self.receivers.lock().get(set).map(|r| r.store.clone())
    }

    /// Pins recovery point `cut` of secondary set `set` for one more drill LUN; refused
    /// when the set has no such point. Waits for a cut being applied, not for one
    /// being received.
    pub fn pin_point(&self, set: &str, cut: u64) -> Result<(), ReplicationError> {
        let views = self.views(set)?;
        views.pin(cut).map_err(|e| recovery_error(set, e))
    }

    /// A drill LUN of point `cut` of `set` went.
    pub fn unpin_point(&self, set: &str, cut: u64) {
        if let Ok(views) = self.views(set) {
            views.unpin(cut);
        }
    }

    /// Point `cut` of the secondary volume `volume` of `set`, read in place (the point
    /// must be pinned). Blocking: it may index undo logs.
    pub fn point_view(
        &self,
        set: &str,
        volume: &str,
        cut: u64,
    ) -> Result<Arc<PointView>, ReplicationError> {
        let (views, index) = {
            let receivers = self.receivers.lock();
            let r = receivers
                .get(set)
                .ok_or_else(|| ReplicationError::NotSecondary(set.into()))?;
            let index = r.volumes.iter().position(|v| v == volume);
            (r.views.clone(), index)
        };
        let index = index.ok_or_else(|| ReplicationError::NotSecondary(set.into()))?;
        views
            .view(index as u32, cut)
            .map_err(|e| recovery_error(set, e))
    }

    fn views(&self, set: &str) -> Result<Arc<PointViews>, ReplicationError> {
        self.receivers
            .lock()
            .get(set)
            .map(|r| r.views.clone())
            .ok_or_else(|| ReplicationError::NotSecondary(set.into()))
    }

    /// Refuses what would rewrite the history of a set under pinned points.
    pub fn check_unpinned(&self, set: &str) -> Result<(), ReplicationError> {
        let pinned = self.views(set).map(|v| v.pinned()).unwrap_or_default();
        if pinned.is_empty() {
            return Ok(());
        }
        Err(ReplicationError::PointsPinned {
            set: set.to_string(),
            points: pinned
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// What a secondary set last published (generation, current cut, recovery
    /// points), without waiting for its store.
    pub fn receiver_summary(&self, set: &str) -> Option<ReceiverSummary> {
        let summary = self.receivers.lock().get(set)?.summary.clone();
        let s = summary.lock().clone();
        Some(s)
    }

    fn primary(&self, name: &str) -> Result<Arc<PrimarySet>, ReplicationError> {
        self.primaries
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ReplicationError::NotPrimary(name.into()))
    }

    /// `replicate`: starts a cycle of a primary set, or queues one by its policy.
    pub fn replicate(&self, name: &str) -> Result<String, ReplicationError> {
        let policy = self
            .host()
            .and_then(|h| {
                h.catalog()
                    .read()
                    .replications
                    .get(name)
                    .map(|r| r.queue_policy)
            })
            .unwrap_or_default();
        self.primary(name)?.request(policy)
    }

    /// Restart, suspend, resume or abort a primary set.
    pub fn control(&self, name: &str, action: Control) -> Result<String, ReplicationError> {
        let set = self.primary(name)?;
        match action {
            Control::Restart => set.restart(),
            Control::Suspend => set.suspend(true),
            Control::Resume => set.suspend(false),
            Control::Abort => set.abort(),
        }
    }

    /// The runtime status of a set, primary or secondary; never waits for a cycle or
    /// a cut being received.
    pub fn status(&self, name: &str) -> Option<SetStatus> {
        let primary = self.primaries.lock().get(name).cloned();
        if let Some(set) = primary {
            let mut st = set.status();
            if matches!(
                st.state,
                SetState::Promoted | SetState::PeerPromoted | SetState::SplitBrain
            ) {
                st.pages_since_fork = self.host().map(|h| {
                    let volumes = h
                        .catalog()
                        .read()
                        .replications
                        .get(name)
                        .map(|r| r.volumes.clone())
                        .unwrap_or_default();
                    volumes
                        .iter()
                        .filter_map(|v| h.volume(v))
                        .filter_map(|v| v.tracking().map(|t| t.dirty().count()))
                        .sum()
                });
            }
            return Some(st);
        }
        let summary = self.receiver_summary(name)?;
        let mut st = SetStatus {
            generation: summary.generation,
            ..SetStatus::default()
        };
        if let Some(cur) = summary.current {
            st.state = SetState::Ready;
            st.last_cut = Some(cur.cut);
            st.last_cut_unix = Some(cur.taken_unix);
        }
        Some(st)
    }

    /// Rolls a secondary set back to its recovery point `cut`. Blocking (call from a
    /// blocking thread): it rewrites the volumes. A point the set does not have is
    /// refused from the published summary, touching nothing. Otherwise this is a
    /// failover: a cut being received is given up (its connection is stopped, so a
    /// stalled primary cannot hold the promote), peers are kept off the set until the
    /// roll back is done, and only a cut being applied is waited for (disk time).
    pub fn roll_back(&self, name: &str, cut: u64) -> Result<(), ReplicationError> {
        self.check_unpinned(name)?;
        let store = self.fence(name, Some(cut))?;
        let result = store
            .blocking_lock()
            .roll_back_to(cut)
            .map_err(|e| recovery_error(name, e));
        self.holders.lock().fenced.remove(name);
        result
    }

    /// The first step of a promote: stops the secondary set's receiver for good, so
    /// that what the promote reports is what the volumes hold. Peers are fenced off
    /// the set (a retrying primary is refused), the connection receiving a cut is
    /// stopped (its staged extents never reach the volumes), a cut being applied is
    /// waited for (disk time, under the store's lock: a committed cut is applied
    /// whole), then, still under the lock, the volumes are rolled back to `point` if
    /// asked and the store retired, so a connection that fetched the store before the
    /// fence can do nothing with it. Returns the cut the volumes hold; `None` (before
    /// the first cut committed: a partial copy) leaves the set receiving again, as
    /// does any error. Blocking (call from a blocking thread). The fence holds until
    /// [`Sets::stop_set`] removes the set, or [`Sets::resume_receiver`] undoes this.
    pub fn stop_receiver(
        &self,
        name: &str,
        point: Option<u64>,
    ) -> Result<Option<super::recovery::CutMeta>, ReplicationError> {
        self.check_unpinned(name)?;
        let store = self.fence(name, point)?;
        let mut st = store.blocking_lock();
        let result = match point {
            Some(cut) => {
                // What the roll back undoes is what the old primary holds and this
                // side no longer does: a failback ships it.
                match st.ranges_since(cut) {
                    Ok(r) => {
                        self.rolled_back.lock().insert(name.to_string(), r);
                    }
                    Err(e) => {
                        tracing::warn!(set = %name, error = %crate::chain::ErrorChain(&e), "cannot list what the roll back undoes: a failback ships all written data");
                    }
                }
                st.roll_back_to(cut)
            }
            None => Ok(()),
        }
        .and_then(|()| st.retire());
        match result {
            Ok(Some(at)) => Ok(Some(at)),
            Ok(None) => {
                st.unretire();
                drop(st);
                self.holders.lock().fenced.remove(name);
                Ok(None)
            }
            Err(e) => {
                drop(st);
                self.holders.lock().fenced.remove(name);
                Err(recovery_error(name, e))
            }
        }
    }

    /// Undoes [`Sets::stop_receiver`] when the promote failed after it: the set
    /// receives again, as it was.
    pub fn resume_receiver(&self, name: &str) {
        if let Some(store) = self.receiver(name) {
            store.blocking_lock().unretire();
        }
        self.holders.lock().fenced.remove(name);
    }

    /// Fences the secondary set `name` off from peer connections and stops the one
    /// working on it; `point`, when given, must be one the set has (checked from the
    /// published summary first, so a refusal touches nothing and waits for nothing).
    fn fence(
        &self,
        name: &str,
        point: Option<u64>,
    ) -> Result<Arc<tokio::sync::Mutex<ReceiverStore>>, ReplicationError> {
        let store = self
            .receiver(name)
            .ok_or_else(|| ReplicationError::NotSecondary(name.into()))?;
        if let Some(cut) = point {
            let known = self
                .receiver_summary(name)
                .is_some_and(|s| s.points.iter().any(|p| p.cut == cut));
            if !known {
                return Err(recovery_error(
                    name,
                    super::recovery::RecoveryError::UnknownPoint { cut },
                ));
            }
        }
        self.holders.lock().fenced.insert(name.to_string());
        self.supersede(name);
        Ok(store)
    }

    /// Failover, step one: the secondary set `name` stops receiving (connections
    /// superseded, peers fenced off, a cut being applied waited for) and its primary
    /// state is written, recording `fork`. The receiver's files stay until
    /// [`Sets::promoted`] (the catalog must say primary first); [`Sets::promote_undone`]
    /// puts the receiver back when it cannot.
    pub async fn promote_here(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        fork: Fork,
        resync_all: bool,
        switchover: bool,
    ) -> Result<(), ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        self.check_unpinned(name)?;
        self.holders.lock().fenced.insert(name.to_string());
        self.supersede(name);
        let receiver = self.receivers.lock().remove(name);
        if let Some(r) = receiver {
            drop(r.store.lock().await);
        }
        // The pages a roll back undid, as the tracking pages of each volume.
        let rolled = self.rolled_back.lock().remove(name);
        let rolled_back = rolled.filter(|_| resync_all).map(|ranges| {
            spec.volumes
                .iter()
                .zip(ranges)
                .map(|(v, ranges)| {
                    let mut pages = roaring::RoaringBitmap::new();
                    if let Some(t) = host.volume(v).and_then(|vol| vol.tracking().cloned()) {
                        for (offset, len) in ranges {
                            if let Ok(r) = t.pages_of(offset, len) {
                                pages.insert_range(r);
                            }
                        }
                    }
                    super::wire::pages_to_hex(&pages)
                })
                .collect::<Vec<_>>()
        });
        let resync_all = resync_all && rolled_back.is_none();
        let state = PrimaryState {
            generation: fork.generation,
            issued_cut: Some(fork.cut),
            rolled_back,
            fork: Some(fork),
            // A switchover: the old primary holds exactly the fork's cut and becomes
            // the secondary at once, so the first cut ships this side's writes alone.
            awaiting_failback: !switchover,
            resync: switchover.then(|| {
                let none = super::wire::pages_to_hex(&roaring::RoaringBitmap::new());
                vec![none; spec.volumes.len()]
            }),
            resync_all,
            ..PrimaryState::default()
        };
        // The pages written from here on are what this side changed since the fork.
        for v in &spec.volumes {
            if let Some(t) = host.volume(v).and_then(|vol| vol.tracking().cloned()) {
                t.dirty().take();
            }
        }
        let dir = set_dir(&*host, spec);
        super::sender::save_state(&dir, &state).map_err(|source| ReplicationError::State {
            set: name.to_string(),
            source,
        })
    }

    /// Failover, last step (the catalog says primary): the receiver's files go and the
    /// set's primary task starts, held until `failback`.
    pub fn promoted(&self, name: &str, spec: &ReplicationSpec) {
        if let Some(host) = self.host() {
            remove_receiver_files(&set_dir(&*host, spec));
        }
        self.holders.lock().fenced.remove(name);
        self.start_set(name);
    }

    /// The catalog could not be changed: the set stays a secondary, as it was.
    pub fn promote_undone(&self, name: &str, spec: &ReplicationSpec) {
        if let Some(host) = self.host() {
            let _ = std::fs::remove_file(super::sender::state_path(&set_dir(&*host, spec)));
        }
        self.holders.lock().fenced.remove(name);
        self.start_set(name);
    }

    /// The fork of a set promoted here that has not failed back yet.
    pub fn fork_of(&self, name: &str) -> Option<Fork> {
        let st = self.primaries.lock().get(name)?.saved_state();
        st.fork.filter(|_| st.awaiting_failback)
    }

    /// `failback` on the promoted side: the old primary (the set's peer) keeps its
    /// divergent writes aside, becomes the secondary and says which pages it wrote
    /// since its last committed cut; the first cut of this side's generation ships the
    /// union of those and this side's own writes since the promote.
    pub async fn failback(&self, name: &str, resolve: bool) -> Result<String, ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        let set = self.primary(name)?;
        let st = set.saved_state();
        // On the old primary: the promoted side carries the failback out.
        if let (Some(fork), false) = (st.peer_promoted, resolve) {
            if st.split_brain {
                return Err(ReplicationError::SplitBrain {
                    set: name.to_string(),
                    fork,
                });
            }
            return Box::pin(self.resolve(name, false)).await;
        }
        let (Some(fork), true) = (st.fork, st.awaiting_failback) else {
            return Err(ReplicationError::NotPromoted(name.to_string()));
        };
        if st.split_brain && !resolve {
            return Err(ReplicationError::SplitBrain {
                set: name.to_string(),
                fork,
            });
        }
        let (spec, peer) = spec_and_peer(&*host, name)?;
        let mut conn = PeerConn::connect(&*host, &spec.peer, &peer).await?;
        let answer = conn
            .request(&Message::Failback {
                set: name.to_string(),
                fork,
                resolve,
            })
            .await?;
        let Message::Divergent { pages, kept } = answer else {
            return Err(conn.refusal(answer));
        };
        let divergent: u64 = pages
            .iter()
            .filter_map(|h| super::wire::pages_from_hex(h))
            .map(|b| b.len())
            .sum();
        let resync = (!st.resync_all).then(|| union_pages(&pages, st.rolled_back.as_deref()));
        set.update_state(|st| {
            st.awaiting_failback = false;
            st.split_brain = false;
            st.resync = resync.clone();
        })?;
        set.request(crate::catalog::QueuePolicy::QueueLatest)?;
        let how = if resync.is_some() {
            format!("the first cut ships the {divergent} pages it wrote since cut {} and the pages written here since the promote", fork.cut)
        } else {
            "this side was promoted at an older recovery point: the first cut ships all written data".to_string()
        };
        Ok(format!(
            "failed back '{name}': peer '{}' is its secondary now; its content before the failback is kept in {}; {how}",
            spec.peer,
            if kept.is_empty() { "-".to_string() } else { kept.join(", ") },
        ))
    }

    /// `Failback` from the peer, on the old primary: its task stops, the pages it wrote
    /// since its last committed cut are collected, `demote` keeps its content aside and
    /// makes the set a secondary in the catalog, and a fresh receiver at the fork's
    /// generation takes the first cut. Returns the pages and the kept volumes.
    pub async fn demote_here(
        &self,
        name: &str,
        peer: &str,
        fork: Fork,
        resolve: bool,
    ) -> Result<(Vec<String>, Vec<String>), ChangeRefused> {
        let host = self.host().ok_or("replication does not run on this node")?;
        let spec = host
            .catalog()
            .read()
            .replications
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no set '{name}' here"))?;
        if spec.role != ReplicationRole::Primary || spec.peer != peer {
            return Err(
                format!("set '{name}' here is not a primary replicating to this peer").into(),
            );
        }
        let set = self
            .primary(name)
            .map_err(|e| Box::new(e) as ChangeRefused)?;
        let st = set.saved_state();
        if st.generation != fork.parent {
            return Err(format!(
                "set '{name}' here is at generation {}, and the peer's promote forked generation {}: the histories do not meet (resolve by hand)",
                st.generation, fork.parent
            )
            .into());
        }
        if st.fork.is_some() && st.awaiting_failback {
            return Err(format!("set '{name}' was promoted here too: split brain").into());
        }
        if st.split_brain && !resolve {
            return Err(format!(
                "split brain in '{name}': this side wrote after the peer's promote; only `resolve` decides which side survives"
            )
            .into());
        }
        // The task stops; a cut in flight puts its pages back into the dirty maps.
        let stopped = self.primaries.lock().remove(name);
        if let Some(s) = &stopped {
            s.stop().await;
        }
        let (kept, pages) = self
            .become_secondary(&host, name, &spec, fork, true)
            .await?;
        Ok((pages.iter().map(super::wire::pages_to_hex).collect(), kept))
    }

    /// The old primary, its task stopped, becomes the secondary of the fork's
    /// generation: its volumes are fenced (block changes get NOT READY, in transition),
    /// `demote` (keeping its content aside when `keep`) changes the catalog and maps the
    /// LUNs read-only, its primary state goes, its dirty maps are taken (and returned:
    /// every page written since its last committed cut, none after, as the fence held)
    /// and the receiver adopts the common cut, on which the first cut builds (its undo
    /// log is the kept content). When the catalog cannot change, the
    /// primary task runs again.
    async fn become_secondary(
        &self,
        host: &Arc<dyn Host>,
        name: &str,
        spec: &ReplicationSpec,
        fork: Fork,
        keep: bool,
    ) -> Result<(Vec<String>, Vec<roaring::RoaringBitmap>), ChangeRefused> {
        let set_fenced = fencer(&**host, spec);
        set_fenced(true);
        let demote = {
            let host = host.clone();
            let name = name.to_string();
            tokio::task::spawn_blocking(move || host.demote(&name, fork.cut, keep)).await
        };
        let kept = match demote {
            Ok(Ok(kept)) => kept,
            Ok(Err(e)) => {
                set_fenced(false);
                self.start_set(name);
                return Err(e);
            }
            Err(e) => {
                set_fenced(false);
                self.start_set(name);
                return Err(Box::new(e));
            }
        };
        let _ = std::fs::remove_file(super::sender::state_path(&set_dir(&**host, spec)));
        let taken: Vec<roaring::RoaringBitmap> = spec
            .volumes
            .iter()
            .map(|v| {
                host.volume(v)
                    .and_then(|vol| vol.tracking().map(|t| t.dirty().take()))
                    .unwrap_or_default()
            })
            .collect();
        // The LUNs are read-only now: writes get DATA PROTECT, as on any secondary.
        set_fenced(false);
        self.start_set(name);
        let store = self
            .receiver(name)
            .ok_or_else(|| format!("set '{name}': the secondary's store did not open"))?;
        let mut store = store.lock().await;
        let common = super::recovery::CutMeta {
            generation: fork.generation,
            cut: fork.cut,
            taken_unix: fork.promoted_ms / 1000,
        };
        tokio::task::block_in_place(|| store.adopt(common))
            .map_err(|e| Box::new(e) as ChangeRefused)?;
        Ok((kept, taken))
    }

    /// `switchover SET` on the primary (planned, both sides up): the set's LUNs stop
    /// taking writes, a final cut ships, the peer promotes at exactly that cut and this
    /// side becomes its secondary; nothing diverges, so nothing ships twice.
    pub async fn switchover(&self, name: &str) -> Result<String, ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        let set = self.primary(name)?;
        set.check_may_ship()?;
        let (spec, peer) = spec_and_peer(&*host, name)?;
        let refused_from = std::time::Instant::now();
        // Block changes are refused at once (NOT READY, in transition), then the LUNs
        // become read-only, as a secondary's are.
        let set_fenced = fencer(&*host, &spec);
        set_fenced(true);
        let fenced = {
            let host = host.clone();
            let name = name.to_string();
            match tokio::task::spawn_blocking(move || host.fence(&name)).await {
                Ok(Ok(luns)) => luns,
                Ok(Err(e)) => {
                    set_fenced(false);
                    return Err(ReplicationError::Fence(e.to_string()));
                }
                Err(e) => {
                    set_fenced(false);
                    return Err(ReplicationError::Fence(e.to_string()));
                }
            }
        };
        let unfence = || async {
            let host = host.clone();
            let luns = fenced.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || host.unfence(&luns)).await {
                tracing::error!(set = %name, error = %e, "cannot let the set's LUNs take writes again");
            }
            set_fenced(false);
        };
        // The final cut: everything written before the fence. A write that passed its
        // LUN's check before the fence and reached the volume after the cut leaves its
        // page dirty: another cut then ships it, so the last cut has it all.
        let mut cut = None;
        for _ in 0..5 {
            match set.cycle_now().await {
                Ok(c) => cut = Some(c),
                Err(e) => {
                    unfence().await;
                    return Err(e);
                }
            }
            let dirty: u64 = spec
                .volumes
                .iter()
                .filter_map(|v| host.volume(v))
                .filter_map(|v| v.tracking().map(|t| t.dirty().count()))
                .sum();
            if dirty == 0 {
                break;
            }
            cut = None;
        }
        let Some(cut) = cut else {
            unfence().await;
            return Err(ReplicationError::Fence(
                "writes kept arriving after the LUNs were made read-only".to_string(),
            ));
        };
        let st = set.saved_state();
        let fork = Fork {
            generation: st.generation + 1 + u64::from(rand::random::<u32>()),
            parent: st.generation,
            cut,
            promoted_ms: super::wire::now_ms(),
        };
        let asked = async {
            let mut conn = PeerConn::connect(&*host, &spec.peer, &peer).await?;
            conn.expect_ok(&Message::Switchover {
                set: name.to_string(),
                fork,
            })
            .await
        };
        if let Err(e) = asked.await {
            unfence().await;
            return Err(e);
        }
        // The peer is the primary now: this side follows it.
        let stopped = self.primaries.lock().remove(name);
        if let Some(s) = &stopped {
            s.stop().await;
        }
        let became = self.become_secondary(&host, name, &spec, fork, false).await;
        // Read-only LUNs refuse writes from here on, as a secondary's do.
        set_fenced(false);
        if let Err(e) = became {
            tracing::error!(set = %name, error = %e, "switchover: the peer is the primary, and this side could not become its secondary");
            return Err(ReplicationError::Fence(e.to_string()));
        }
        let refused = refused_from.elapsed();
        Ok(format!(
            "switched over '{name}' at cut {cut}: peer '{}' is its primary now (generation {}), this side its secondary; writes were refused here for {} ms, and the LUNs stay read-only",
            spec.peer,
            fork.generation,
            refused.as_millis()
        ))
    }

    /// The old primary found it wrote after this side's promote: the set shows split
    /// brain here too, and `failback` waits for `resolve`.
    pub fn note_split_brain(&self, name: &str, fork: Fork) -> Result<(), ChangeRefused> {
        let set = self
            .primary(name)
            .map_err(|e| Box::new(e) as ChangeRefused)?;
        if set.saved_state().fork != Some(fork) {
            return Err(format!("set '{name}' was not promoted here at that fork").into());
        }
        set.update_state(|st| st.split_brain = true)
            .map_err(|e| Box::new(e) as ChangeRefused)
    }

    /// `resolve SET --keep local|peer`, on either side of a promote that is not settled
    /// (split brain, or a failback not run yet). On the promoted side, keeping local is
    /// a failback; keeping the peer makes this side the old primary's secondary again,
    /// its writes since the promote kept aside. On the old primary it asks the promoted
    /// side to do the same with the sides swapped.
    pub async fn resolve(&self, name: &str, keep_local: bool) -> Result<String, ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        let set = self.primary(name)?;
        let st = set.saved_state();
        if st.fork.is_some() && st.awaiting_failback {
            return if keep_local {
                self.failback(name, true).await
            } else {
                self.yield_to_peer(&host, name).await
            };
        }
        if st.peer_promoted.is_none() {
            return Err(ReplicationError::NotPromoted(name.to_string()));
        }
        let (spec, peer) = spec_and_peer(&*host, name)?;
        let mut conn = PeerConn::connect(&*host, &spec.peer, &peer).await?;
        match conn
            .request(&Message::Resolve {
                set: name.to_string(),
                keep_yours: !keep_local,
            })
            .await?
        {
            Message::Done { message } => Ok(format!("peer '{}': {message}", spec.peer)),
            other => Err(conn.refusal(other)),
        }
    }

    /// `resolve --keep peer` on the promoted side: its content goes aside, it becomes
    /// the old primary's secondary again, and the old primary ships the union of both
    /// sides' changes since the common cut.
    async fn yield_to_peer(
        &self,
        host: &Arc<dyn Host>,
        name: &str,
    ) -> Result<String, ReplicationError> {
        let set = self.primary(name)?;
        let st = set.saved_state();
        let fork = st
            .fork
            .ok_or_else(|| ReplicationError::NotPromoted(name.into()))?;
        let (spec, peer) = spec_and_peer(&**host, name)?;
        // Reachable first: nothing changes here when the old primary is not.
        let mut conn = PeerConn::connect(&**host, &spec.peer, &peer).await?;
        let stopped = self.primaries.lock().remove(name);
        if let Some(s) = &stopped {
            s.stop().await;
        }
        let back = Fork {
            generation: fork.parent,
            ..fork
        };
        let (kept, taken) = self
            .become_secondary(host, name, &spec, back, true)
            .await
            .map_err(|e| ReplicationError::Fence(e.to_string()))?;
        let pages: Vec<String> = taken.iter().map(super::wire::pages_to_hex).collect();
        let pages = union_pages(&pages, st.rolled_back.as_deref());
        conn.expect_ok(&Message::TakeBack {
            set: name.to_string(),
            fork,
            pages: (!st.resync_all).then_some(pages),
            kept: kept.clone(),
        })
        .await?;
        Ok(format!(
            "resolved '{name}' for peer '{}': it is the primary again and this side its secondary; this side's content before is kept in {}",
            spec.peer,
            if kept.is_empty() { "-".to_string() } else { kept.join(", ") },
        ))
    }

    /// `TakeBack` on the old primary: the promoted side yielded; the first cut of the
    /// set's generation ships `pages` (or all written data) with this side's changes.
    pub fn take_back(
        &self,
        name: &str,
        fork: Fork,
        pages: Option<Vec<String>>,
    ) -> Result<(), ChangeRefused> {
        let set = self
            .primary(name)
            .map_err(|e| Box::new(e) as ChangeRefused)?;
        if set.saved_state().peer_promoted != Some(fork) {
            return Err(format!("set '{name}' here does not know that promote").into());
        }
        set.update_state(|st| {
            st.peer_promoted = None;
            st.split_brain = false;
            st.last_cut = None;
            st.last_cut_unix = None;
            st.resync = pages.clone();
        })
        .map_err(|e| Box::new(e) as ChangeRefused)?;
        set.request(crate::catalog::QueuePolicy::QueueLatest)
            .map_err(|e| Box::new(e) as ChangeRefused)?;
        Ok(())
    }

    /// A secondary set's recovery points, the current one first.
    pub fn recovery_points(&self, name: &str) -> Result<Vec<RecoveryPoint>, ReplicationError> {
        self.receiver_summary(name)
            .map(|s| s.points)
            .ok_or_else(|| ReplicationError::NotSecondary(name.into()))
    }

    /// Asks the peer to create the secondary side of a new set.
    pub async fn create_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        volumes: Vec<RemoteVolume>,
    ) -> Result<(), ReplicationError> {
        let host = self.host().ok_or(ReplicationError::Unavailable)?;
        let mut conn = PeerConn::connect(&*host, &spec.peer, peer).await?;
        conn.expect_ok(&Message::CreateSet {
            set: name.to_string(),
            peer: spec.peer.clone(),
            group: spec.group.clone(),
            volumes,
            keep: spec.keep,
        })
        .await
    }

    /// Asks the peer to delete its side of a set; the set's cycles stop first, so
    /// none runs against a set being deleted. If the peer refuses, nothing changed
    /// and the set runs on.
    pub async fn delete_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
    ) -> Result<(), ReplicationError> {
        let running = self.primaries.lock().remove(name);
        if let Some(set) = running {
            set.stop().await;
            self.primaries.lock().insert(name.to_string(), set);
        }
        let result = async {
            let host = self.host().ok_or(ReplicationError::Unavailable)?;
            let mut conn = PeerConn::connect(&*host, &spec.peer, peer).await?;
            conn.expect_ok(&Message::DeleteSet {
                set: name.to_string(),
            })
            .await
        }
        .await;
        if result.is_err() {
            self.primaries.lock().remove(name);
            self.start_set(name);
        }
        result
    }
}

impl Sets {
    /// The first step of a Restart Replication that changes a group set's volumes:
    /// the set's cycles stop (a cut in flight puts its pages back into the dirty maps),
    /// then the peer changes its side (`RestartMembers`: its recovery points go and
    /// its volumes follow `add` and `remove`, by its names) for the generation after
    /// ours. On success the set stays stopped: the caller saves the new membership and
    /// starts it again (`start_set`), then restarts it. If the peer refuses or cannot
    /// be reached, nothing changed and the set runs on as it was.
    pub async fn restart_members_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        add: Vec<MemberVolume>,
        remove: Vec<String>,
    ) -> Result<(), ReplicationError> {
        let set = self.primary(name)?;
        if set.suspended() {
            return Err(ReplicationError::Suspended(name.to_string()));
        }
        self.primaries.lock().remove(name);
        set.stop().await;
        let generation = set.generation() + 1;
        drop(set);
        let result = async {
            let host = self.host().ok_or(ReplicationError::Unavailable)?;
            let mut conn = PeerConn::connect(&*host, &spec.peer, peer).await?;
            let asked = conn
                .expect_ok(&Message::RestartMembers {
                    set: name.to_string(),
                    generation,
                    add,
                    remove,
                })
                .await;
            match asked {
                Err(ReplicationError::Wire { source, .. }) if closed(&source) => {
                    Err(ReplicationError::MembersUnsupported {
                        peer: spec.peer.clone(),
                        set: name.to_string(),
                    })
                }
                other => other,
            }
        }
        .await;
        if result.is_err() {
            self.start_set(name);
        }
        result
    }
}

/// The peer ended the connection rather than answer (what a build that does not know
/// a message does).
fn closed(e: &WireError) -> bool {
    match e {
        WireError::Closed => true,
        WireError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        _ => false,
    }
}

fn recovery_error(set: &str, e: super::recovery::RecoveryError) -> ReplicationError {
    ReplicationError::Recovery {
        set: set.into(),
        source: Box::new(e),
    }
}

/// Where a set keeps its state.
/// Fences (`true`) or unfences the set's volumes against block changes
/// (`Volume::set_fenced`), for a switchover or a side becoming the secondary.
fn fencer(host: &dyn Host, spec: &ReplicationSpec) -> impl Fn(bool) {
    let volumes: Vec<_> = spec.volumes.iter().filter_map(|v| host.volume(v)).collect();
    move |on| {
        for v in &volumes {
            v.set_fenced(on);
        }
    }
}

/// Byte ranges (offset, length) per volume of a set, in the set's order.
type VolumeRanges = Vec<Vec<(u64, u64)>>;

/// Per volume, the union of two lists of page bitmaps (hex); `more` may be absent.
fn union_pages(pages: &[String], more: Option<&[String]>) -> Vec<String> {
    pages
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut p = super::wire::pages_from_hex(h).unwrap_or_default();
            if let Some(m) = more
                .and_then(|m| m.get(i))
                .and_then(|h| super::wire::pages_from_hex(h))
            {
                p |= m;
            }
            super::wire::pages_to_hex(&p)
        })
        .collect()
}

/// Removes what a receiver keeps in a set's folder (state, staging and undo logs),
/// leaving a primary's state file.
fn remove_receiver_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path != super::sender::state_path(dir) && path.is_file() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

pub fn set_dir(host: &dyn Host, spec: &ReplicationSpec) -> PathBuf {
    crate::datadir::replication_dir(host.data_dir(), spec.id)
}

/// Runs schedule tasks: each due time of a task calls `replicate` on its set once (the
/// set's queue policy applies). Due times that passed while the node was down are not
/// made up for.
async fn run_schedules(sets: Weak<Sets>) {
    let mut fired: HashMap<String, u64> = HashMap::new();
    let mut first = true;
    loop {
        let Some(s) = sets.upgrade() else { break };
        let Some(host) = s.host() else { break };
        let now = crate::time::unix_secs(std::time::SystemTime::now());
        let schedules = host.catalog().read().schedules.clone();
        drop(host);
        fired.retain(|t, _| schedules.contains_key(t));
        for (task, sched) in &schedules {
            let Some(due) = sched.last_due(now) else {
                continue;
            };
            match fired.get(task) {
                Some(&f) if f >= due => {}
                None if first => {
                    fired.insert(task.clone(), due);
                }
                _ => {
                    fired.insert(task.clone(), due);
                    match s.replicate(&sched.set) {
                        Ok(m) => tracing::info!(task = %task, set = %sched.set, "{m}"),
                        Err(e) => {
                            tracing::warn!(task = %task, set = %sched.set, error = %e, "scheduled replication not started")
                        }
                    }
                }
            }
        }
        first = false;
        drop(s);
        tokio::time::sleep(SCHEDULE_TICK).await;
    }
}
