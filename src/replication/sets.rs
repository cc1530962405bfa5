//! The replication sets this node runs: a task per primary set (`sender`), a receiver
//! store per secondary set (`recovery`), and the schedules that ask primaries for
//! cycles. One owner for all of it; the node reaches it through these methods and it
//! reaches the node through [`Host`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::host::Host;
use super::peer::PeerConn;
use super::recovery::{ReceiverStore, ReceiverSummary, RecoveryPoint, VolumeTarget};
use super::sender::PrimarySet;
use super::status::{SetState, SetStatus};
use super::wire::{Message, RemoteVolume};
use super::ReplicationError;
use crate::catalog::{PeerSpec, ReplicationRole, ReplicationSpec};
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

/// Every replication set of the node.
#[derive(Default)]
pub struct Sets {
    host: OnceLock<Weak<dyn Host>>,
    primaries: Mutex<HashMap<String, Arc<PrimarySet>>>,
    receivers: Mutex<HashMap<String, Receiver>>,
    /// Failed peer authentications per source address (`throttle`).
    pub auth_throttle: Mutex<AuthThrottle>,
    /// Where primaries report status changes and cycles (`ctl events`).
    events: Emitter,
    /// Where primary sets count what they ship.
    metrics: Arc<crate::metrics::Registry>,
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
                let set = PrimarySet::start(
                    Arc::downgrade(&host),
                    name,
                    dir,
                    self.events.clone(),
                    self.metrics.set(name),
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
                self.receivers.lock().remove(name);
            }
        }
        self.metrics.remove_set(name);
        let Some(host) = self.host() else { return };
        let dir = set_dir(&*host, spec);
        if let Err(e) =
            crate::datadir::remove_object_dir(host.data_dir(), crate::datadir::REPLICATION, &dir)
        {
            tracing::warn!(set = %name, error = %crate::chain::ErrorChain(&e), "cannot remove replication state");
        }
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
    /// blocking thread): it waits for a cut being received and rewrites the volumes.
    pub fn roll_back(&self, name: &str, cut: u64) -> Result<(), ReplicationError> {
        let store = self
            .receiver(name)
            .ok_or_else(|| ReplicationError::NotSecondary(name.into()))?;
        let mut store = store.blocking_lock();
        store
            .roll_back_to(cut)
            .map_err(|e| ReplicationError::Recovery {
                set: name.into(),
                source: Box::new(e),
            })
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
