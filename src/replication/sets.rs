//! The replication sets this node runs: a task per primary set (`sender`), a receiver
//! store per secondary set (`recovery`), and the schedules that ask primaries for
//! cycles. One owner for all of it; the node reaches it through these methods and it
//! reaches the node through [`Host`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::host::Host;
use super::peer::PeerConn;
use super::rate::{Bucket, Limits};
use super::recovery::{ReceiverStore, ReceiverSummary, RecoveryPoint, VolumeTarget};
use super::sender::PrimarySet;
use super::status::{SetState, SetStatus};
use super::wire::{Message, RemoteVolume};
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
                match ReceiverStore::open(&dir, targets) {
                    Ok(store) => {
                        let summary = store.summary();
                        let store = Arc::new(tokio::sync::Mutex::new(store));
                        self.receivers
                            .lock()
                            .insert(name.to_string(), Receiver { store, summary });
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
            return Some(set.status());
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
        let store = self.fence(name, point)?;
        let mut st = store.blocking_lock();
        let result = match point {
            Some(cut) => st.roll_back_to(cut),
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

    /// Writes recovery point `cut` of the secondary volume `volume` of set `name` into
    /// `dest` (a new file), for a DR drill's copy: the set keeps receiving, its point
    /// is untouched. Blocking; it holds the set's store for the copy, so a cut waits
    /// (and a cut being received is waited for) meanwhile.
    pub fn export_point(
        &self,
        name: &str,
        volume: &str,
        cut: u64,
        dest: &std::path::Path,
    ) -> Result<(), ReplicationError> {
        let store = self
            .receiver(name)
            .ok_or_else(|| ReplicationError::NotSecondary(name.into()))?;
        let known = self
            .receiver_summary(name)
            .is_some_and(|s| s.points.iter().any(|p| p.cut == cut));
        if !known {
            return Err(recovery_error(
                name,
                super::recovery::RecoveryError::UnknownPoint { cut },
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dest)
            .map_err(|source| {
                recovery_error(
                    name,
                    super::recovery::RecoveryError::Io {
                        path: dest.to_owned(),
                        source,
                    },
                )
            })?;
        let result = store.blocking_lock().export_point(cut, volume, &file, dest);
        result.map_err(|e| recovery_error(name, e))
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

fn recovery_error(set: &str, e: super::recovery::RecoveryError) -> ReplicationError {
    ReplicationError::Recovery {
        set: set.into(),
        source: Box::new(e),
    }
}

/// Where a set keeps its state.
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
