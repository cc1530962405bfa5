//! The composition root: one twinlun process's state and the wiring between its layers.
//!
//! The node owns the data dir, the catalog, the open volumes and the cut coordinator,
//! and hands each layer what it needs through that layer's own interface: the iSCSI
//! server gets [`server::Shared`] (catalog, volumes, sessions, budgets), replication
//! gets [`replication::Host`](crate::replication::host::Host) and runs its sets in
//! [`Sets`], admin gets [`admin::Host`](crate::admin::Host). No layer below imports
//! this module.
//!
//! Startup (see `main.rs`): `admin::startup::prepare` gives the catalog (files created,
//! saved), `Engine::start`, `Node::new`, `Node::open_volumes`, `Node::start_replication`.
//! Admin changes go through `Node::apply`. At shutdown, `Node::stop_replication`,
//! `Node::save_tracking`, `Node::sync_volumes`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::admin::apply::{volume_file, Host, RuntimeInfo, TakeSnapshotError, TakenSnapshot};
use crate::admin::protocol::PeerCheckView;
use crate::admin::{Request, Response};
use crate::catalog::{Catalog, VolumeSpec};
use crate::catalog::{PeerSpec, ReplicationSpec};
use crate::events::{Bus, Emitter, Subscription};
use crate::iscsi::SessionInfo;
use crate::replication::host::{ChangeRefused, SecondaryRequest};
use crate::replication::peer::PeerConn;
use crate::replication::recovery::RecoveryPoint;
use crate::replication::status::SetStatus;
use crate::replication::tls::{Tls, TlsError};
use crate::replication::wire::RemoteVolume;
use crate::replication::{Control, ReplicationError, Sets};
use crate::server::Shared;
use crate::tracking::{
    CowConfig, CutCoordinator, CutId, CutOptions, MemoryBudget, PageSize, SnapshotInfo,
    SnapshotScope, TrackedVolume,
};
use crate::volume::{Engine, Volume, VolumeError};

mod scrape;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open volume '{name}': {source}")]
    OpenVolume {
        name: String,
        #[source]
        source: VolumeError,
    },
}

/// Open volumes by name; kept in step with `catalog.volumes`.
pub type Volumes = RwLock<HashMap<String, Arc<Volume>>>;

pub struct Node {
    pub data_dir: PathBuf,
    pub engine: Engine,
    /// The model. Mutated only by `admin` (validate, persist atomically, then swap).
    pub catalog: Arc<RwLock<Catalog>>,
    pub volumes: Arc<Volumes>,
    /// What the iSCSI connections serve from (shares `catalog` and `volumes`).
    pub iscsi: Arc<Shared>,
    /// The replication sets: primaries' tasks, secondaries' stores, schedules.
    pub replication: Arc<Sets>,
    started: Instant,
    /// Serializes admin changes (read catalog, persist, swap).
    changes: Mutex<()>,
    listen: RwLock<Vec<SocketAddr>>,
    admin_socket: RwLock<Option<PathBuf>>,
    /// The replication listener's bound address, for `status`.
    replication_listen: RwLock<Option<SocketAddr>>,
    /// Memory all snapshot copy-on-write stores share before they spill to files.
    cow_budget: Arc<MemoryBudget>,
    /// False when serving without write tracking (`--no-write-tracking`, to measure
    /// what tracking costs): no snapshots then.
    tracking: bool,
    /// Hands out cut ids node-wide, so a volume's snapshots never share one, and
    /// serializes cuts.
    cuts: CutCoordinator,
    /// State changes for `ctl events`: the iSCSI sessions, the replication sets and
    /// admin's snapshot and promote handlers each hold an emitter of it.
    events: Bus,
    /// Every counter of the node; each layer got only its own handles.
    pub metrics: Arc<crate::metrics::Registry>,
    /// The replication link's key and certificate (`load_tls`, or at first use).
    tls: Mutex<Option<Arc<Tls>>>,
    /// The node itself, for work it hands to a blocking thread (pins to save).
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
}

/// Copy-on-write memory shared by all snapshots of the node.
const COW_MEMORY: u64 = 256 << 20;
/// How long a clean shutdown waits for writes in flight before saving tracking state.
const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a snapshot's cut holds writers off waiting for writes in flight; past it the
/// gates reopen and the snapshot is refused (`busy`).
const CUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Node {
    /// A node serving `catalog` from `data_dir`. No volume is open yet: call
    /// `open_volumes` (or `open_volume` per volume).
    pub fn new(data_dir: PathBuf, engine: Engine, catalog: Catalog) -> Node {
        let catalog = Arc::new(RwLock::new(catalog));
        let volumes = Arc::new(Volumes::default());
        let events = Bus::default();
        let metrics = crate::metrics::Registry::new();
        let reservations_in = data_dir.clone();
        let replication = Arc::new(Sets::new(events.emitter(), metrics.clone()));
        Node {
            data_dir,
            engine,
            iscsi: Arc::new(
                Shared::new(
                    catalog.clone(),
                    volumes.clone(),
                    events.emitter(),
                    metrics.node.clone(),
                )
                .persist_reservations_in(reservations_in)
                .with_points(Arc::new(DrillPoints {
                    sets: replication.clone(),
                    catalog: catalog.clone(),
                })),
            ),
            catalog,
            volumes,
            replication,
            started: Instant::now(),
            changes: Mutex::new(()),
            listen: RwLock::new(Vec::new()),
            admin_socket: RwLock::new(None),
            replication_listen: RwLock::new(None),
            cow_budget: MemoryBudget::new(COW_MEMORY),
            tracking: true,
            events,
            cuts: CutCoordinator::new(CutId(1))
                .with_pause_histogram(metrics.node.cut_pause.clone()),
            metrics,
            tls: Mutex::new(None),
            me: std::sync::OnceLock::new(),
        }
    }

    /// Loads this node's TLS identity from `DATA_DIR/tls/`, making it at first start;
    /// `serve` calls it before any listener or set runs, so a damaged key stops the
    /// start rather than the first cycle.
    pub fn load_tls(&self) -> Result<Arc<Tls>, TlsError> {
        let mut slot = self.tls.lock();
        if let Some(t) = &*slot {
            return Ok(t.clone());
        }
        let t = Arc::new(Tls::load_or_create(&self.data_dir)?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// This node's key fingerprint, when its identity is loaded.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.tls.lock().as_ref().map(|t| t.fingerprint.clone())
    }

    /// Pins `fingerprint` for `peer` unless it has a pin already, as an admin change
    /// would: under the change lock, saved, then swapped in.
    fn save_pin(&self, peer: &str, fingerprint: &str) {
        let _serial = self.changes.lock();
        let mut new = self.catalog.read().clone();
        match new.peers.get_mut(peer) {
            Some(p) if p.pinned_key.is_none() => p.pinned_key = Some(fingerprint.to_string()),
            _ => return,
        }
        if let Err(e) = crate::admin::store::save(&self.data_dir, &new) {
            tracing::warn!(peer = %peer, error = %crate::chain::ErrorChain(&e), "cannot save the peer's pinned key: the next contact pins it");
            return;
        }
        *self.catalog.write() = new;
    }

    /// Starts every replication set of the catalog (after `open_volumes`).
    pub fn start_replication(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        let me: Arc<dyn crate::replication::Host> = self.clone();
        self.replication.start(Arc::downgrade(&me));
    }

    /// Stops every primary set's task (a cycle in flight puts its pages back into the
    /// dirty maps); call before saving tracking at shutdown.
    pub async fn stop_replication(&self) {
        self.replication.stop().await;
    }

    /// Runs `f` on the runtime from a blocking admin thread.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Handle::current().block_on(f)
    }

    /// Serve without write tracking: no dirty pages, no snapshots. For measuring what
    /// tracking costs; call before opening volumes.
    pub fn without_tracking(mut self) -> Node {
        self.tracking = false;
        self
    }

    /// The open volumes, named, taken out of the lock.
    fn open_volume_list(&self) -> Vec<(String, Arc<Volume>)> {
        self.volumes
            .read()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Where a volume's tracking state (dirty bitmap, snapshot stores) lives.
    fn tracking_dir(&self, spec: &VolumeSpec) -> PathBuf {
        crate::datadir::tracking_dir(&self.data_dir, spec.id)
    }

    /// Dirty pages of a volume since its last cut, if it is open.
    pub fn dirty_pages(&self, name: &str) -> Option<u64> {
        let v = self.volumes.read().get(name).cloned()?;
        v.tracking().map(|t| t.dirty().count())
    }

    /// Clean shutdown of write tracking: each volume's gate closes (after the writes in
    /// flight) and its dirty bitmap and snapshots are saved, so the next start carries
    /// on exactly. Call after the iSCSI sessions are closed. Logs failures.
    pub async fn save_tracking(&self) {
        let volumes = self.open_volume_list();
        for (name, v) in volumes {
            let spec = {
                let c = self.catalog.read();
                c.volumes.get(&name).cloned()
            };
            let Some(spec) = spec else {
                continue;
            };
            if let Some(t) = v.tracking() {
                let dir = self.tracking_dir(&spec);
                if let Err(e) = t.close_and_save(&dir, SAVE_TIMEOUT).await {
                    tracing::error!(volume = %name, error = %crate::chain::ErrorChain(&e), "saving write tracking failed");
                }
            }
        }
    }

    /// Opens one volume's backing file through the engine and puts it in `volumes`.
    /// The only place volumes are opened: at startup and on `volume create`.
    pub fn open_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), VolumeError> {
        let path = volume_file(&self.data_dir, spec);
        let io = self.metrics.volume(name);
        let mut volume =
            Volume::open_or_create(&path, spec.size, spec.block_size, self.engine.clone())?
                .with_metrics(io.clone());
        if spec.provisioning.is_thick() {
            volume = volume.preallocate()?;
        }
        if spec.allow_sanitize {
            volume = volume.allow_sanitize();
        }
        if let Some(point) = &spec.clone_of {
            volume = volume.with_base(Arc::new(PointBase {
                sets: self.replication.clone(),
                catalog: self.catalog.clone(),
                data_dir: self.data_dir.clone(),
                point: point.clone(),
                open: Mutex::new(None),
            }))?;
        }
        scrape::refresh_allocated(&path, &io);
        if !self.tracking {
            crate::tracking::persist::mark_untracked(&self.tracking_dir(spec))
                .map_err(VolumeError::Tracking)?;
            self.volumes
                .write()
                .insert(name.to_string(), Arc::new(volume));
            return Ok(());
        }
        let dir = self.tracking_dir(spec);
        let page_size = PageSize::new(spec.page_size).map_err(VolumeError::Tracking)?;
        let cow = CowConfig {
            budget: self.cow_budget.clone(),
            spill_dir: dir.clone(),
        };
        let (tracking, crashed) = TrackedVolume::open(name, spec.size, page_size, cow, &dir)
            .map_err(VolumeError::Tracking)?;
        if crashed {
            tracing::warn!(
                volume = %name,
                dirty_pages = tracking.dirty().count(),
                "write tracking was not saved cleanly (crash?): the pages the activity log names count as changed"
            );
        }
        let volume = volume.with_tracking(Arc::new(tracking));
        self.volumes
            .write()
            .insert(name.to_string(), Arc::new(volume));
        Ok(())
    }

    /// Opens every volume of the catalog; stops at the first that fails, naming it.
    pub fn open_volumes(&self) -> Result<(), NodeError> {
        // Copies of recovery points an older build made for DR drill LUNs: drill
        // LUNs read their points in place now, so the copies go.
        let old_drills = std::mem::take(&mut self.catalog.write().drills);
        for spec in old_drills.values() {
            let path = self.data_dir.join(&spec.path);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old drill copy");
                }
            }
        }
        let specs: Vec<(String, VolumeSpec)> = {
            let c = self.catalog.read();
            c.volumes
                .iter()
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect()
        };
        for (name, spec) in specs {
            self.open_volume(&name, &spec)
                .map_err(|source| NodeError::OpenVolume { name, source })?;
        }
        self.reconcile_snapshots();
        Ok(())
    }

    /// After the volumes opened: cut ids resume past every id in use, and snapshots
    /// the catalog does not name (a cut whose catalog save failed) are dropped.
    /// Catalog snapshots whose state was lost in a crash stay listed as `lost`.
    fn reconcile_snapshots(&self) {
        let catalog = self.catalog.read().clone();
        for s in catalog.snapshots.values() {
            self.cuts.advance_past(CutId(s.cut));
        }
        let volumes = self.open_volume_list();
        for (name, v) in volumes {
            let Some(t) = v.tracking() else { continue };
            for info in t.snapshots() {
                self.cuts.advance_past(info.cut);
                let named = catalog
                    .snapshots
                    .values()
                    .any(|s| s.cut == info.cut.0 && s.covers(&name));
                if !named {
                    tracing::warn!(volume = %name, cut = info.cut.0, "dropping a snapshot the catalog does not name");
                    let _ = t.delete_snapshot(info.cut);
                }
            }
        }
        for (name, s) in &catalog.snapshots {
            let lost: Vec<&str> = s
                .volumes
                .iter()
                .filter(|v| self.snapshot_usage(v, s.cut).is_none())
                .map(String::as_str)
                .collect();
            if !lost.is_empty() {
                tracing::warn!(snapshot = %name, volumes = ?lost,
                    "snapshot state was lost (not saved by a clean shutdown); delete it");
            }
        }
    }

    /// The tracking of an open volume.
    fn tracked(&self, name: &str) -> Result<Arc<TrackedVolume>, TakeSnapshotError> {
        let v = self
            .volumes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| TakeSnapshotError::NotOpen(name.to_string()))?;
        v.tracking()
            .cloned()
            .ok_or_else(|| TakeSnapshotError::NoTracking(name.to_string()))
    }

    fn snapshot_usage(&self, volume: &str, cut: u64) -> Option<SnapshotInfo> {
        let t = self.tracked(volume).ok()?;
        t.snapshots().into_iter().find(|s| s.cut == CutId(cut))
    }

    /// Takes a snapshot cut of `volumes`; async core of `Host::take_snapshot`.
    pub async fn take_snapshot_async(
        &self,
        volumes: &[String],
    ) -> Result<TakenSnapshot, TakeSnapshotError> {
        let tracked = volumes
            .iter()
            .map(|v| self.tracked(v))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&TrackedVolume> = tracked.iter().map(|t| &**t).collect();
        let options = CutOptions {
            timeout: CUT_TIMEOUT,
            snapshot: SnapshotScope::Volume,
            freeze_dirty: false,
        };
        let cut = self.cuts.cut_group(&refs, options).await?;
        Ok(TakenSnapshot {
            cut: cut.id.0,
            created: crate::time::unix_secs(cut.at),
            pause: cut.pause,
        })
    }

    /// Flushes every open volume to stable storage (clean shutdown). Logs failures.
    pub fn sync_volumes(&self) {
        let volumes = self.open_volume_list();
        for (name, v) in volumes {
            if let Err(e) = v.sync_blocking() {
                tracing::error!(volume = %name, error = %crate::chain::ErrorChain(&e), "sync at shutdown failed");
            }
        }
    }

    /// Carries out one admin request (validated, persisted, then applied). Blocking:
    /// call it from a blocking context.
    pub fn apply(&self, req: Request) -> Response {
        crate::admin::apply(self, req)
    }

    /// Records the bound iSCSI addresses, for `status`.
    pub fn set_listen_addrs(&self, addrs: Vec<SocketAddr>) {
        *self.listen.write() = addrs;
    }

    /// Records the admin socket path, for `status`.
    pub fn set_admin_socket(&self, path: PathBuf) {
        *self.admin_socket.write() = Some(path);
    }

    /// Records where the replication listener is bound, for `status`.
    pub fn set_replication_listen(&self, addr: SocketAddr) {
        *self.replication_listen.write() = Some(addr);
    }
}

impl Host for Node {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    fn catalog(&self) -> &RwLock<Catalog> {
        &self.catalog
    }
    fn change_lock(&self) -> &Mutex<()> {
        &self.changes
    }
    fn open_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), VolumeError> {
        Node::open_volume(self, name, spec)
    }
    fn close_volume(&self, name: &str, spec: &VolumeSpec) {
        // In-flight commands hold their own Arc; the file closes when the last one ends.
        self.volumes.write().remove(name);
        self.metrics.remove_volume(name);
        let dir = self.tracking_dir(spec);
        if let Err(e) =
            crate::datadir::remove_object_dir(&self.data_dir, crate::datadir::TRACKING, &dir)
        {
            tracing::warn!(volume = %name, error = %crate::chain::ErrorChain(&e), "cannot remove tracking state");
        }
        // Its reservations go with it: a volume made later has another id.
        self.iscsi.lu_states.forget(spec.id);
        if let Err(e) = crate::datadir::remove_reservations_file(&self.data_dir, spec.id) {
            tracing::warn!(volume = %name, error = %crate::chain::ErrorChain(&e), "cannot remove saved reservations");
        }
    }
    fn dirty_pages(&self, name: &str) -> Option<u64> {
        Node::dirty_pages(self, name)
    }
    fn take_snapshot(&self, volumes: &[String]) -> Result<TakenSnapshot, TakeSnapshotError> {
        // `apply` runs on a blocking thread of the runtime.
        tokio::runtime::Handle::current().block_on(self.take_snapshot_async(volumes))
    }
    fn drop_snapshot(&self, volumes: &[String], cut: u64) {
        for v in volumes {
            if let Ok(t) = self.tracked(v) {
                if let Err(e) = t.delete_snapshot(CutId(cut)) {
                    tracing::debug!(volume = %v, cut, error = %e, "no snapshot state to drop");
                }
            }
        }
    }
    fn snapshot_usage(&self, volume: &str, cut: u64) -> Option<SnapshotInfo> {
        Node::snapshot_usage(self, volume, cut)
    }
    fn peer_check(&self, name: &str, peer: &PeerSpec) -> PeerCheckView {
        let mut view = PeerCheckView {
            name: name.into(),
            addr: peer.addr.clone(),
            reachable: false,
            authenticated: false,
            protocol_version: None,
            compress: Vec::new(),
            rtt_us: None,
            local_key: self.tls_fingerprint(),
            pinned_key: peer.pinned_key.clone(),
            presented_key: None,
            tls_version: None,
            cipher: None,
            error: None,
        };
        let result = self.block_on(async {
            let mut conn = PeerConn::connect(self, name, peer).await?;
            Ok::<_, ReplicationError>((conn.ping().await?, conn.codecs, conn.link))
        });
        if let Some(seen) = crate::replication::Host::tls(self)
            .ok()
            .and_then(|t| t.seen(name))
        {
            view.tls_version = Some(seen.version);
            view.cipher = Some(seen.cipher);
        }
        match result {
            Ok((rtt, codecs, link)) => {
                view.presented_key = Some(link.presented);
                view.tls_version = Some(link.version);
                view.cipher = Some(link.cipher);
                if view.pinned_key.is_none() {
                    view.pinned_key = view.presented_key.clone();
                }
                view.reachable = true;
                view.authenticated = true;
                view.protocol_version = Some(crate::replication::wire::PROTOCOL_VERSION);
                view.compress = codecs.iter().map(|c| c.to_string()).collect();
                view.rtt_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                view.reachable = !matches!(
                    e,
                    ReplicationError::Connect { .. } | ReplicationError::Timeout { .. }
                );
                if let ReplicationError::Version { theirs, .. } = e {
                    view.protocol_version = Some(theirs);
                }
                if let ReplicationError::KeyChanged { presented, .. } = &e {
                    view.presented_key = Some(presented.clone());
                } else {
                    view.tls_version = None;
                    view.cipher = None;
                }
                let mut why = crate::chain::ErrorChain(&e).to_string();
                // Something answered, but not as a replication listener does (an
                // iSCSI portal, a web server): say what the address was expected to be.
                if matches!(
                    e,
                    ReplicationError::Wire { .. }
                        | ReplicationError::Unexpected { .. }
                        | ReplicationError::Handshake { .. }
                ) {
                    why.push_str(&format!(
                        " (is {} a twinlun replication listener?)",
                        peer.addr
                    ));
                }
                view.error = Some(why);
            }
        }
        view
    }
    fn peer_link(&self, name: &str) -> Option<crate::admin::protocol::LinkView> {
        let seen = self.tls.lock().as_ref()?.seen(name)?;
        Some(crate::admin::protocol::LinkView {
            presented_key: seen.presented,
            tls_version: seen.version,
            cipher: seen.cipher,
            at: crate::time::rfc3339_utc(seen.at_unix),
        })
    }
    fn peer_present_key(&self, name: &str, peer: &PeerSpec) -> Result<String, ReplicationError> {
        let tls = crate::replication::Host::tls(self)?;
        self.block_on(async {
            let mut conn = PeerConn::open(&tls, name, peer).await?;
            conn.ping().await?;
            Ok(conn.link.presented)
        })
    }
    fn replication_create_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        volumes: Vec<RemoteVolume>,
    ) -> Result<(), ReplicationError> {
        self.block_on(self.replication.create_remote(name, spec, peer, volumes))
    }
    fn replication_members_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        add: Vec<crate::replication::wire::MemberVolume>,
        remove: Vec<String>,
    ) -> Result<(), ReplicationError> {
        self.block_on(
            self.replication
                .restart_members_remote(name, spec, peer, add, remove),
        )
    }
    fn replication_delete_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
    ) -> Result<(), ReplicationError> {
        self.block_on(self.replication.delete_remote(name, spec, peer))
    }
    fn replication_modify_remote(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        peer: &PeerSpec,
        keep: Option<u32>,
        codec: Option<crate::catalog::Compression>,
    ) -> Result<(), ReplicationError> {
        self.block_on(
            self.replication
                .modify_remote(name, spec, peer, keep, codec),
        )
    }
    fn replication_modified(&self, name: &str) {
        self.replication.settings_changed(name);
    }
    fn peer_updated(&self, name: &str) {
        self.replication.peer_changed(name);
    }
    fn replication_started(&self, name: &str) {
        self.replication.start_set(name);
    }
    fn replication_stopped(&self, name: &str, spec: &ReplicationSpec) {
        self.block_on(self.replication.stop_set(name, spec));
    }
    fn replicate(&self, name: &str) -> Result<String, ReplicationError> {
        self.replication.replicate(name)
    }
    fn replication_status(&self, name: &str) -> Option<SetStatus> {
        self.replication.status(name)
    }
    fn replication_control(&self, name: &str, action: Control) -> Result<String, ReplicationError> {
        self.replication.control(name, action)
    }
    fn roll_back(&self, name: &str, cut: u64) -> Result<(), ReplicationError> {
        self.replication.roll_back(name, cut)
    }
    fn promote_set(
        &self,
        name: &str,
        spec: &ReplicationSpec,
        fork: crate::replication::wire::Fork,
        resync_all: bool,
        switchover: bool,
    ) -> Result<(), ReplicationError> {
        self.block_on(
            self.replication
                .promote_here(name, spec, fork, resync_all, switchover),
        )
    }
    fn switchover(&self, name: &str) -> Result<String, ReplicationError> {
        self.block_on(self.replication.switchover(name))
    }
    fn promoted(&self, name: &str, spec: &ReplicationSpec) {
        self.replication.promoted(name, spec);
    }
    fn promote_undone(&self, name: &str, spec: &ReplicationSpec) {
        self.replication.promote_undone(name, spec);
    }
    fn failback(&self, name: &str) -> Result<String, ReplicationError> {
        self.block_on(self.replication.failback(name, false))
    }
    fn resolve(&self, name: &str, keep_local: bool) -> Result<String, ReplicationError> {
        self.block_on(self.replication.resolve(name, keep_local))
    }
    fn stop_receiver(
        &self,
        name: &str,
        point: Option<u64>,
    ) -> Result<Option<crate::replication::recovery::CutMeta>, ReplicationError> {
        self.replication.stop_receiver(name, point)
    }
    fn resume_receiver(&self, name: &str) {
        self.replication.resume_receiver(name);
    }
    fn recovery_points(&self, name: &str) -> Result<Vec<RecoveryPoint>, ReplicationError> {
        self.replication.recovery_points(name)
    }
    fn pin_point(&self, name: &str, cut: u64) -> Result<(), ReplicationError> {
        self.replication.pin_point(name, cut)
    }
    fn unpin_point(&self, name: &str, cut: u64) {
        self.replication.unpin_point(name, cut)
    }
    fn sessions(&self) -> Vec<SessionInfo> {
        self.iscsi.sessions.list()
    }
    fn events(&self) -> Emitter {
        self.events.emitter()
    }
    fn subscribe_events(&self) -> Option<Subscription> {
        Some(self.events.subscribe())
    }
    fn runtime(&self) -> RuntimeInfo {
        RuntimeInfo {
            engine: self.engine.name().to_string(),
            listen: self.listen.read().iter().map(ToString::to_string).collect(),
            admin_socket: self
                .admin_socket
                .read()
                .as_ref()
                .map(|p| p.display().to_string()),
            replication_listen: self.replication_listen.read().map(|a| a.to_string()),
            tls_key: self.tls_fingerprint(),
            uptime_secs: self.started.elapsed().as_secs(),
            cuts: {
                let st = self.cuts.stats();
                let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                crate::admin::protocol::CutStatsView {
                    taken: st.cuts,
                    failed: st.failures,
                    last_pause_us: st.last.map(us),
                    max_pause_us: us(st.max),
                }
            },
        }
    }
}

impl crate::replication::Host for Node {
    fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    fn catalog(&self) -> &RwLock<Catalog> {
        &self.catalog
    }
    fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes.read().get(name).cloned()
    }
    fn cuts(&self) -> &CutCoordinator {
        &self.cuts
    }
    fn accept_secondary(&self, req: SecondaryRequest) -> Result<(), ChangeRefused> {
        crate::admin::replication::accept_secondary(
            self,
            &req.set,
            &req.peer,
            req.group.as_deref(),
            &req.volumes,
            req.keep,
        )
        .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn drop_secondary(&self, set: &str) -> Result<(), ChangeRefused> {
        crate::admin::replication::drop_secondary(self, set)
            .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn demote(&self, set: &str, cut: u64, keep: bool) -> Result<Vec<String>, ChangeRefused> {
        crate::admin::replication::demote(self, set, cut, keep)
            .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn fence(&self, set: &str) -> Result<Vec<(String, u64)>, ChangeRefused> {
        crate::admin::replication::fence(self, set).map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn unfence(&self, luns: &[(String, u64)]) -> Result<(), ChangeRefused> {
        crate::admin::replication::unfence(self, luns).map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn promote_switchover(
        &self,
        set: &str,
        fork: crate::replication::wire::Fork,
    ) -> Result<(), ChangeRefused> {
        crate::admin::replication::promote_switchover(self, set, fork)
            .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn restart_secondary_members(
        &self,
        req: &crate::replication::host::MembersRequest,
        reset: &mut dyn FnMut() -> Result<(), ReplicationError>,
    ) -> Result<(), ChangeRefused> {
        crate::admin::replication::restart_secondary_members(
            self,
            &req.set,
            &req.add,
            &req.remove,
            reset,
        )
        .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn foreground_io_nanos(&self) -> u64 {
        self.metrics.foreground_io_nanos()
    }
    fn modify_secondary(&self, set: &str, keep: u32) -> Result<(), ChangeRefused> {
        crate::admin::replication::modify_secondary(self, set, keep)
            .map_err(|e| Box::new(e) as ChangeRefused)
    }
    fn tls(&self) -> Result<Arc<Tls>, ReplicationError> {
        self.load_tls()
            .map_err(|e| ReplicationError::Identity(Arc::new(e)))
    }
    fn pin_peer_key(&self, peer: &str, fingerprint: &str) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let (peer, fingerprint) = (peer.to_string(), fingerprint.to_string());
        tokio::task::spawn_blocking(move || me.save_pin(&peer, &fingerprint));
    }
}

/// DR drill LUNs' recovery points, from the secondary sets' views.
struct DrillPoints {
    sets: Arc<Sets>,
    catalog: Arc<RwLock<Catalog>>,
}

impl crate::server::PointSource for DrillPoints {
    fn view(&self, volume: &str, cut: u64) -> Option<Arc<dyn crate::server::PointOverlay>> {
        let set = self.catalog.read().replication_of(volume)?.0.to_string();
        match self.sets.point_view(&set, volume, cut) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(set = %set, volume = %volume, cut, error = %crate::chain::ErrorChain(&e), "a drill LUN's recovery point cannot be read");
                None
            }
        }
    }
}

impl crate::server::PointOverlay for crate::replication::views::PointView {
    fn overlay(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        crate::replication::views::PointView::overlay(self, offset, buf).map_err(|e| e.to_string())
    }
}

/// A copy-on-write clone's base: recovery point `point` (`VOLUME@rp:ID`) of a secondary
/// volume, found when first read (the set's store opens after the volumes).
struct PointBase {
    sets: Arc<Sets>,
    catalog: Arc<RwLock<Catalog>>,
    data_dir: PathBuf,
    point: String,
    open: Mutex<Option<Arc<OpenPoint>>>,
}

/// A clone base found: the secondary volume's file and the point's view.
type OpenPoint = (std::fs::File, Arc<crate::replication::views::PointView>);

impl PointBase {
    fn resolve(&self) -> std::io::Result<Arc<OpenPoint>> {
        if let Some(open) = self.open.lock().as_ref() {
            return Ok(open.clone());
        }
        let gone = |why: String| std::io::Error::other(format!("clone base {}: {why}", self.point));
        let (volume, cut) = crate::catalog::split_point_ref(&self.point)
            .ok_or_else(|| gone("not a recovery point".into()))?;
        let (set, path) = {
            let c = self.catalog.read();
            let set = c
                .replication_of(volume)
                .map(|(s, _)| s.to_string())
                .ok_or_else(|| gone("the volume is in no replication set".into()))?;
            let spec = c
                .volumes
                .get(volume)
                .ok_or_else(|| gone("no such volume".into()))?;
            (set, volume_file(&self.data_dir, spec))
        };
        let view = self
            .sets
            .point_view(&set, volume, cut)
            .map_err(|e| gone(crate::chain::ErrorChain(&e).to_string()))?;
        let file = std::fs::File::open(&path)?;
        let open = Arc::new((file, view));
        *self.open.lock() = Some(open.clone());
        Ok(open)
    }
}

impl crate::volume::BaseImage for PointBase {
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let open = self.resolve()?;
        let (file, view) = &*open;
        let done = crate::durable::read_up_to(file, buf, offset)?;
        buf[done..].fill(0);
        view.overlay(offset, buf)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}
