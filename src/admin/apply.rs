//! Carrying out admin requests against the live node.
//!
//! Every change follows one path: under the change lock, copy the catalog, apply the
//! request to the copy (`change`, pure: all validation happens here), then `commit`:
//! create a new volume's file and open it, save the new catalog atomically, and only
//! then swap it in. A refused request returns before anything is touched; a failure
//! during commit undoes what commit did, so the catalog, the files and the open
//! volumes stay in step.
//!
//! Semantics an admin can rely on:
//! - `volume delete` is refused while the volume is mapped (the error names every
//!   target and LUN); it deletes the backing file.
//! - `target delete` is refused while sessions are logged in to the target (`busy`),
//!   and while it still maps LUNs (`in_use`, naming them): unmapping is an explicit step,
//!   like deleting a volume. Its ACL and CHAP go with it.
//! - `lun unmap`, `acl remove` and `chap` changes are allowed with sessions logged in:
//!   the server reads the catalog at each login and each command, so they take effect
//!   for new logins (ACL, CHAP) and at the next command (LUNs).
//! - An empty ACL means any initiator may log in.
//! - A volume's tracking page size (4K..1M, a power of two, 4K by default) is fixed at
//!   creation.
//! - Volume groups: a volume belongs to at most one group (adding it to a second one is
//!   refused, naming the first); a group has one or more volumes, in the order they were
//!   named and added (the order of a cut), so `group create` needs at least one and
//!   removing the last volume is refused: `group delete` is the way to drop a group.
//!   `group delete` keeps the volumes. `volume delete` is refused while the volume is
//!   in a group. While a group is in a replication set, `group add`, `group remove` and
//!   `group delete` are refused, naming the set.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock};

use super::protocol::{
    ChapView, CutStatsView, ErrorCode, GroupView, LunView, MappingView, PeerCheckView,
    ReplicationView, Request, Response, SnapshotMappingView, SnapshotView, SnapshotVolumeView,
    StatusView, TargetView, VolumeView,
};
use super::replication as repl;
use super::store::{self, StoreError};
use super::time::rfc3339_utc;
use super::validate::{self, format_size, ValidationError};
use crate::catalog::{
    split_snapshot_ref, Catalog, ChapSpec, GroupSpec, LunSpec, PeerSpec, ReplicationRole,
    ReplicationSpec, SnapshotSpec, TargetSpec, VolumeSpec,
};
use crate::iscsi::SessionInfo;
use crate::replication::recovery::RecoveryPoint;
use crate::replication::status::SetStatus;
use crate::replication::wire::RemoteVolume;
use crate::replication::ReplicationError;
use crate::tracking::{CutError, SnapshotInfo};
use crate::volume::VolumeError;

/// What `apply` needs from the running node. `Node` implements it; tests use a fake.
pub trait Host: Sync {
    fn data_dir(&self) -> &Path;
    fn catalog(&self) -> &RwLock<Catalog>;
    /// Serializes changes: held from reading the catalog to swapping in the new one.
    fn change_lock(&self) -> &Mutex<()>;
    /// Opens the (already created) backing file of a new volume and starts serving it.
    fn open_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), VolumeError>;
    /// Stops serving a volume that left the catalog, and removes its tracking state.
    fn close_volume(&self, name: &str, spec: &VolumeSpec);
    /// Pages of an open volume written since its last cut (write tracking).
    fn dirty_pages(&self, _name: &str) -> Option<u64> {
        None
    }
    fn sessions(&self) -> Vec<SessionInfo>;
    fn runtime(&self) -> RuntimeInfo;
    /// Takes a snapshot of `volumes` at one instant: their write gates close in name
    /// order, writes in flight drain, each volume starts keeping old pages. Their dirty
    /// pages are left for replication.
    fn take_snapshot(&self, volumes: &[String]) -> Result<TakenSnapshot, TakeSnapshotError>;
    /// Drops snapshot `cut` of each of `volumes` that has it, freeing its kept pages.
    fn drop_snapshot(&self, volumes: &[String], cut: u64);
    /// What snapshot `cut` of `volume` keeps; `None` when the volume does not have it
    /// (its state was lost in a crash).
    fn snapshot_usage(&self, volume: &str, cut: u64) -> Option<SnapshotInfo>;
    /// Connects to a peer, proves the secret both ways, measures the round trip.
    fn peer_check(&self, name: &str, peer: &PeerSpec) -> PeerCheckView {
        let _ = peer;
        PeerCheckView {
            name: name.into(),
            addr: peer.addr.clone(),
            reachable: false,
            authenticated: false,
            protocol_version: None,
            compress: Vec::new(),
            rtt_us: None,
            error: Some(ReplicationError::Unavailable.to_string()),
        }
    }
    /// Creates the secondary side of a new primary set on its peer.
    fn replication_create_remote(
        &self,
        _name: &str,
        _spec: &ReplicationSpec,
        _peer: &PeerSpec,
        _volumes: Vec<RemoteVolume>,
    ) -> Result<(), ReplicationError> {
        Err(ReplicationError::Unavailable)
    }
    /// Deletes the secondary side of a primary set on its peer.
    fn replication_delete_remote(
        &self,
        _name: &str,
        _spec: &ReplicationSpec,
        _peer: &PeerSpec,
    ) -> Result<(), ReplicationError> {
        Err(ReplicationError::Unavailable)
    }
    /// A set was saved in the catalog: start running it.
    fn replication_started(&self, _name: &str) {}
    /// A set is leaving the catalog: stop it (a running cycle is abandoned, nothing
    /// is lost) and drop its local state.
    fn replication_stopped(&self, _name: &str, _spec: &ReplicationSpec) {}
    /// `replicate`: start a cycle now, or queue one by the set's policy.
    fn replicate(&self, name: &str) -> Result<String, ReplicationError> {
        Err(ReplicationError::NotPrimary(name.into()))
    }
    /// What a running set reports of itself (state, cuts, progress).
    fn replication_status(&self, _name: &str) -> Option<SetStatus> {
        None
    }
    /// `restart`, `suspend`, `resume`, `abort` of a primary set.
    fn replication_control(
        &self,
        name: &str,
        _action: Control,
    ) -> Result<String, ReplicationError> {
        Err(ReplicationError::NotPrimary(name.into()))
    }
    /// Rolls a secondary set's volumes back to `cut` (promote at an older point).
    fn roll_back(&self, name: &str, _cut: u64) -> Result<(), ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
    /// A secondary set's recovery points, newest first.
    fn recovery_points(&self, name: &str) -> Result<Vec<RecoveryPoint>, ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
}

/// What `replication_control` does to a primary set.
pub use crate::replication::Control;

/// A snapshot's cut as the host took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenSnapshot {
    pub cut: u64,
    /// Unix seconds.
    pub created: u64,
    pub pause: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TakeSnapshotError {
    #[error("volume '{0}' is not open")]
    NotOpen(String),
    #[error("volume '{0}' is served without write tracking (--no-write-tracking)")]
    NoTracking(String),
    #[error(transparent)]
    Cut(#[from] CutError),
}

/// Facts about the running process for `status`.
#[derive(Debug, Clone, Default)]
pub struct RuntimeInfo {
    pub engine: String,
    pub listen: Vec<String>,
    pub admin_socket: Option<String>,
    pub uptime_secs: u64,
    /// Consistent cuts taken so far (snapshots, replication cycles) and the pauses
    /// they imposed on writers.
    pub cuts: CutStatsView,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no volume named '{0}'")]
    NoVolume(String),
    #[error("no target named '{0}'")]
    NoTarget(String),
    #[error("no group named '{0}'")]
    NoGroup(String),
    #[error("volume '{volume}' is not in group '{group}'")]
    NotInGroup { group: String, volume: String },
    #[error("target '{iqn}' has no LUN {lun}")]
    NoLun { iqn: String, lun: u64 },
    #[error("initiator '{initiator}' is not in the ACL of target '{iqn}'")]
    NotInAcl { iqn: String, initiator: String },
    #[error("target '{0}' has no CHAP configured")]
    NoChap(String),
    #[error("volume '{0}' already exists")]
    VolumeExists(String),
    #[error("target '{0}' already exists")]
    TargetExists(String),
    #[error("group '{0}' already exists")]
    GroupExists(String),
    #[error("volume '{volume}' is already in group '{group}'")]
    AlreadyInGroup { group: String, volume: String },
    #[error("volume '{volume}' is in group '{other}'; a volume belongs to at most one group (remove it from '{other}' first)")]
    InOtherGroup { volume: String, other: String },
    #[error("no snapshot named '{0}'")]
    NoSnapshot(String),
    #[error("snapshot '{0}' already exists")]
    SnapshotExists(String),
    #[error("snapshot '{snapshot}' does not hold volume '{volume}' (it holds {volumes})")]
    NotInSnapshot {
        snapshot: String,
        volume: String,
        volumes: String,
    },
    #[error("volume '{name}' has snapshots ({snapshots}); delete them first")]
    VolumeHasSnapshots { name: String, snapshots: String },
    #[error("snapshot '{name}' is mapped ({mappings}); unmap it first")]
    SnapshotMapped { name: String, mappings: String },
    #[error("no peer named '{0}'")]
    NoPeer(String),
    #[error("peer '{0}' already exists")]
    PeerExists(String),
    #[error("peer '{name}' is used by replication set(s) {sets}; delete them first")]
    PeerInUse { name: String, sets: String },
    #[error("no replication set named '{0}'")]
    NoSet(String),
    #[error("replication set '{0}' already exists")]
    SetExists(String),
    #[error("volume '{volume}' is in group '{group}': replicate the group (--group {group}), which is cut as one")]
    ReplicateGroup { volume: String, group: String },
    #[error("volume '{volume}' is already in replication set '{set}'")]
    AlreadyReplicated { volume: String, set: String },
    #[error("volume '{volume}' is a secondary of replication set '{set}'; {what}")]
    SecondaryVolume {
        volume: String,
        set: String,
        what: &'static str,
    },
    #[error("volume '{volume}' is in replication set '{set}'; delete the set first")]
    VolumeReplicated { volume: String, set: String },
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("restart deletes every recovery point of '{0}' on the secondary and ships all written data again; the secondary is not ready for failover until that copy commits. Run it again with --yes to do it")]
    RestartUnconfirmed(String),
    #[error("no secondary replication set holds {0}")]
    NotASecondary(String),
    #[error("replication set '{0}' has no committed cut here yet: its volumes are not a consistent image of the primary, so they cannot be promoted; let a replication cycle finish first")]
    NoCommittedCut(String),
    #[error("schedule task '{0}' already exists")]
    TaskExists(String),
    #[error("no schedule task named '{0}'")]
    NoTask(String),
    #[error("replication set '{name}' is scheduled by task(s) {tasks}; delete them first")]
    SetScheduled { name: String, tasks: String },
    #[error("cannot take snapshot '{name}': {source}")]
    TakeSnapshot {
        name: String,
        #[source]
        source: TakeSnapshotError,
    },
    #[error("volume '{name}' is in group '{group}'; remove it from the group first")]
    VolumeGrouped { name: String, group: String },
    #[error("volume '{volume}' is the last one in group '{group}'; a group keeps at least one volume (use `group delete {group}`)")]
    LastInGroup { group: String, volume: String },
    #[error("group '{group}' is in replication set '{set}'; {what}")]
    GroupReplicated {
        group: String,
        set: String,
        what: &'static str,
    },
    #[error("LUN {lun} of target '{iqn}' already maps volume '{volume}'; unmap it first")]
    LunTaken {
        iqn: String,
        lun: u64,
        volume: String,
    },
    #[error("initiator '{initiator}' is already in the ACL of target '{iqn}'")]
    AlreadyInAcl { iqn: String, initiator: String },
    #[error("backing file {0} already exists; move it away or choose another volume name")]
    FileExists(PathBuf),
    #[error("volume '{name}' is mapped ({mappings}); unmap it first")]
    VolumeMapped { name: String, mappings: String },
    #[error("target '{iqn}' still maps {luns}; unmap them first")]
    TargetHasLuns { iqn: String, luns: String },
    #[error("target '{iqn}' has sessions logged in from {initiators}; log them out first")]
    TargetBusy { iqn: String, initiators: String },
    #[error("cannot create {path}: {source}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open volume '{name}': {source}")]
    OpenVolume {
        name: String,
        #[source]
        source: VolumeError,
    },
    #[error("cannot save the catalog: {0}")]
    Save(#[from] StoreError),
}

impl AdminError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AdminError::Invalid(_) => ErrorCode::Invalid,
            AdminError::NoVolume(_)
            | AdminError::NoTarget(_)
            | AdminError::NoGroup(_)
            | AdminError::NotInGroup { .. }
            | AdminError::NoLun { .. }
            | AdminError::NotInAcl { .. }
            | AdminError::NoChap(_)
            | AdminError::NoSnapshot(_)
            | AdminError::NotInSnapshot { .. }
            | AdminError::NoPeer(_)
            | AdminError::NoSet(_) => ErrorCode::NotFound,
            AdminError::VolumeExists(_)
            | AdminError::TargetExists(_)
            | AdminError::GroupExists(_)
            | AdminError::AlreadyInGroup { .. }
            | AdminError::LunTaken { .. }
            | AdminError::AlreadyInAcl { .. }
            | AdminError::SnapshotExists(_)
            | AdminError::PeerExists(_)
            | AdminError::SetExists(_)
            | AdminError::FileExists(_) => ErrorCode::AlreadyExists,
            AdminError::VolumeMapped { .. }
            | AdminError::TargetHasLuns { .. }
            | AdminError::InOtherGroup { .. }
            | AdminError::VolumeGrouped { .. }
            | AdminError::LastInGroup { .. }
            | AdminError::GroupReplicated { .. }
            | AdminError::VolumeHasSnapshots { .. }
            | AdminError::SnapshotMapped { .. }
            | AdminError::PeerInUse { .. }
            | AdminError::ReplicateGroup { .. }
            | AdminError::AlreadyReplicated { .. }
            | AdminError::SecondaryVolume { .. }
            | AdminError::VolumeReplicated { .. } => ErrorCode::InUse,
            AdminError::Replication(e) => replication_code(e),
            AdminError::RestartUnconfirmed(_) | AdminError::NoCommittedCut(_) => ErrorCode::Invalid,
            AdminError::NotASecondary(_) | AdminError::NoTask(_) => ErrorCode::NotFound,
            AdminError::TaskExists(_) => ErrorCode::AlreadyExists,
            AdminError::SetScheduled { .. } => ErrorCode::InUse,
            AdminError::TargetBusy { .. } => ErrorCode::Busy,
            // Writes did not drain in time, or another cut holds a gate: try again.
            AdminError::TakeSnapshot {
                source: TakeSnapshotError::Cut(CutError::Gate { .. }),
                ..
            } => ErrorCode::Busy,
            AdminError::TakeSnapshot { .. } => ErrorCode::Io,
            AdminError::CreateFile { .. } | AdminError::OpenVolume { .. } | AdminError::Save(_) => {
                ErrorCode::Io
            }
        }
    }
}

fn replication_code(e: &ReplicationError) -> ErrorCode {
    match e {
        ReplicationError::AuthRefused { .. } | ReplicationError::PeerUnproven { .. } => {
            ErrorCode::AuthFailed
        }
        ReplicationError::Discarded(_) | ReplicationError::Suspended(_) => ErrorCode::Busy,
        ReplicationError::NotRunning(_) => ErrorCode::NotFound,
        ReplicationError::NotPrimary(_) | ReplicationError::NotSecondary(_) => ErrorCode::Invalid,
        ReplicationError::Remote { .. } => ErrorCode::Refused,
        _ => ErrorCode::Unreachable,
    }
}

impl From<AdminError> for Response {
    fn from(e: AdminError) -> Response {
        Response::error(e.code(), e.to_string())
    }
}

/// What `commit` must do besides saving the catalog.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    CreateVolume {
        name: String,
        spec: VolumeSpec,
    },
    DeleteVolume {
        name: String,
        spec: VolumeSpec,
    },
    /// Take the cut, record it in the catalog's entry `name`, then save.
    CreateSnapshot {
        name: String,
    },
    /// Save, then drop the snapshot's kept pages.
    DeleteSnapshot {
        volumes: Vec<String>,
        cut: u64,
    },
    /// Create the secondary side on the peer, save, start the set.
    CreateReplication {
        name: String,
    },
    /// Stop the set, delete the peer's side (primary), save.
    DeleteReplication {
        name: String,
        spec: ReplicationSpec,
    },
}

/// Carries out one request. Never panics on bad input; every refusal is an error response.
pub fn apply<H: Host + ?Sized>(host: &H, req: Request) -> Response {
    match execute(host, req) {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

fn execute<H: Host + ?Sized>(host: &H, req: Request) -> Result<Response, AdminError> {
    if !req.is_change() {
        let catalog = host.catalog().read().clone();
        return query(host, &catalog, &req);
    }
    let _serial = host.change_lock().lock();
    let old = host.catalog().read().clone();
    let mut new = old.clone();
    let sessions = host.sessions();
    let (effect, response) = change(&mut new, req, &sessions, &mut rand::random::<u64>)?;
    let created = match &effect {
        Effect::CreateSnapshot { name } => Some((true, name.clone())),
        Effect::CreateReplication { name } => Some((false, name.clone())),
        _ => None,
    };
    commit(host, new, effect)?;
    // A new object's view shows what only the commit knows (cut id, time, status).
    if let Some((snapshot, name)) = created {
        let c = host.catalog().read().clone();
        return Ok(if snapshot {
            Response::Snapshot(snapshot_view(host, &c, &name))
        } else {
            Response::Replication(Box::new(full_replication_view(host, &c, &name)))
        });
    }
    Ok(response)
}

fn query<H: Host + ?Sized>(host: &H, c: &Catalog, req: &Request) -> Result<Response, AdminError> {
    let sessions = host.sessions();
    Ok(match req {
        Request::Status => {
            let rt = host.runtime();
            Response::Status(StatusView {
                version: env!("CARGO_PKG_VERSION").into(),
                data_dir: host.data_dir().display().to_string(),
                engine: rt.engine,
                listen: rt.listen,
                admin_socket: rt.admin_socket,
                uptime_secs: rt.uptime_secs,
                cuts: rt.cuts,
                volumes: c.volumes.len(),
                groups: c.groups.len(),
                targets: c.targets.len(),
                sessions: sessions.len(),
            })
        }
        Request::VolumeList => Response::Volumes {
            volumes: c.volumes.keys().map(|n| volume_view(host, c, n)).collect(),
        },
        Request::VolumeShow { name } => {
            if !c.volumes.contains_key(name) {
                return Err(AdminError::NoVolume(name.clone()));
            }
            Response::Volume(volume_view(host, c, name))
        }
        Request::GroupList => Response::Groups {
            groups: c.groups.keys().map(|n| group_view(c, n)).collect(),
        },
        Request::GroupShow { name } => {
            if !c.groups.contains_key(name) {
                return Err(AdminError::NoGroup(name.clone()));
            }
            Response::Group(group_view(c, name))
        }
        Request::TargetList => Response::Targets {
            targets: c
                .targets
                .keys()
                .map(|iqn| target_view(c, iqn, &sessions))
                .collect(),
        },
        Request::TargetShow { iqn } => {
            if !c.targets.contains_key(iqn) {
                return Err(AdminError::NoTarget(iqn.clone()));
            }
            Response::Target(target_view(c, iqn, &sessions))
        }
        Request::SessionList => Response::Sessions { sessions },
        Request::SnapshotList => Response::Snapshots {
            snapshots: c
                .snapshots
                .keys()
                .map(|n| snapshot_view(host, c, n))
                .collect(),
        },
        Request::SnapshotShow { name } => {
            if !c.snapshots.contains_key(name) {
                return Err(AdminError::NoSnapshot(name.clone()));
            }
            Response::Snapshot(snapshot_view(host, c, name))
        }
        Request::PeerList => Response::Peers {
            peers: c.peers.keys().map(|n| repl::peer_view(c, n)).collect(),
        },
        Request::PeerCheck { name } => {
            let peer = c
                .peers
                .get(name)
                .ok_or_else(|| AdminError::NoPeer(name.clone()))?;
            Response::PeerCheck(host.peer_check(name, peer))
        }
        Request::ReplicationList => Response::Replications {
            replications: c
                .replications
                .keys()
                .map(|n| full_replication_view(host, c, n))
                .collect(),
        },
        Request::ReplicationShow { name } => {
            if !c.replications.contains_key(name) {
                return Err(AdminError::NoSet(name.clone()));
            }
            Response::Replication(Box::new(full_replication_view(host, c, name)))
        }
        Request::Replicate { name } => {
            if !c.replications.contains_key(name) {
                return Err(AdminError::NoSet(name.clone()));
            }
            done(host.replicate(name)?)
        }
        Request::Restart { name, yes } => {
            if !c.replications.contains_key(name) {
                return Err(AdminError::NoSet(name.clone()));
            }
            if !yes {
                return Err(AdminError::RestartUnconfirmed(name.clone()));
            }
            done(host.replication_control(name, Control::Restart)?)
        }
        Request::Suspend { name } | Request::Resume { name } | Request::Abort { name } => {
            if !c.replications.contains_key(name) {
                return Err(AdminError::NoSet(name.clone()));
            }
            let action = match req {
                Request::Suspend { .. } => Control::Suspend,
                Request::Resume { .. } => Control::Resume,
                _ => Control::Abort,
            };
            done(host.replication_control(name, action)?)
        }
        Request::Promote {
            volume,
            group,
            recovery_point,
        } => done(repl::promote(
            host,
            volume.as_deref(),
            group.as_deref(),
            *recovery_point,
        )?),
        Request::ScheduleList => Response::Schedules {
            schedules: repl::schedule_views(c),
        },
        Request::RecoveryPoints { name } => {
            if !c.replications.contains_key(name) {
                return Err(AdminError::NoSet(name.clone()));
            }
            Response::RecoveryPoints {
                set: name.clone(),
                points: host
                    .recovery_points(name)?
                    .into_iter()
                    .map(repl::recovery_point_view)
                    .collect(),
            }
        }
        _ => unreachable!("is_change() covers every other request"),
    })
}

/// Backing file of a volume: `spec.path` relative to the data dir unless absolute.
pub fn volume_file(data_dir: &Path, spec: &VolumeSpec) -> PathBuf {
    data_dir.join(&spec.path)
}

fn volume_view<H: Host + ?Sized>(host: &H, c: &Catalog, name: &str) -> VolumeView {
    let spec = &c.volumes[name];
    let allocated = fs::metadata(volume_file(host.data_dir(), spec))
        .ok()
        .map(|m| m.blocks() * 512);
    VolumeView {
        name: name.into(),
        size: spec.size,
        block_size: spec.block_size,
        page_size: spec.page_size,
        dirty_pages: host.dirty_pages(name),
        id: format!("{:016x}", spec.id),
        path: spec.path.clone(),
        allocated,
        group: c.group_of(name).map(str::to_string),
        mappings: c
            .targets
            .iter()
            .flat_map(|(iqn, t)| {
                t.luns
                    .iter()
                    .filter(|(_, l)| l.volume == name)
                    .map(|(lun, l)| MappingView {
                        target: iqn.clone(),
                        lun: *lun,
                        read_only: l.read_only,
                    })
            })
            .collect(),
    }
}

fn snapshot_view<H: Host + ?Sized>(host: &H, c: &Catalog, name: &str) -> SnapshotView {
    let spec = &c.snapshots[name];
    let volumes: Vec<SnapshotVolumeView> = spec
        .volumes
        .iter()
        .map(|v| match host.snapshot_usage(v, spec.cut) {
            Some(info) => SnapshotVolumeView {
                volume: v.clone(),
                state: if info.invalidated {
                    "invalidated"
                } else {
                    "ok"
                }
                .into(),
                pages_preserved: info.stats.pages,
                memory_bytes: info.stats.memory_bytes,
                file_bytes: info.stats.file_bytes,
            },
            None => SnapshotVolumeView {
                volume: v.clone(),
                state: "lost".into(),
                pages_preserved: 0,
                memory_bytes: 0,
                file_bytes: 0,
            },
        })
        .collect();
    // The worst state of its volumes is the snapshot's.
    let state = ["lost", "invalidated"]
        .into_iter()
        .find(|bad| volumes.iter().any(|v| v.state == *bad))
        .unwrap_or("ok");
    SnapshotView {
        name: name.into(),
        group: spec.group.clone(),
        cut_id: spec.cut,
        created: rfc3339_utc(spec.created),
        pause_us: spec.pause_us,
        state: state.into(),
        pages_preserved: volumes.iter().map(|v| v.pages_preserved).sum(),
        bytes_used: volumes.iter().map(|v| v.memory_bytes + v.file_bytes).sum(),
        volumes,
        mappings: c
            .snapshot_mappings(name)
            .map(|(volume, target, lun)| SnapshotMappingView {
                volume: volume.into(),
                target: target.into(),
                lun,
            })
            .collect(),
    }
}

fn full_replication_view<H: Host + ?Sized>(host: &H, c: &Catalog, name: &str) -> ReplicationView {
    let mut v = repl::replication_view(c, name);
    if let Some(st) = host.replication_status(name) {
        repl::add_status(&mut v, st);
    }
    v
}

fn group_view(c: &Catalog, name: &str) -> GroupView {
    let g = &c.groups[name];
    GroupView {
        name: name.into(),
        volumes: g.volumes.clone(),
        size: g
            .volumes
            .iter()
            .filter_map(|v| c.volumes.get(v))
            .map(|v| v.size)
            .sum(),
        replication_set: g.replication_set.clone(),
    }
}

/// A group whose membership may change: it exists and is in no replication set.
fn group_for_change<'a>(
    c: &'a mut Catalog,
    name: &str,
    what: &'static str,
) -> Result<&'a mut GroupSpec, AdminError> {
    let g = c
        .groups
        .get_mut(name)
        .ok_or_else(|| AdminError::NoGroup(name.to_string()))?;
    if let Some(set) = &g.replication_set {
        return Err(AdminError::GroupReplicated {
            group: name.to_string(),
            set: set.clone(),
            what,
        });
    }
    Ok(g)
}

/// A volume that may join `group`: it exists and is in no group yet.
fn check_joinable(c: &Catalog, group: &str, volume: &str) -> Result<(), AdminError> {
    if !c.volumes.contains_key(volume) {
        return Err(AdminError::NoVolume(volume.to_string()));
    }
    match c.group_of(volume) {
        None => Ok(()),
        Some(g) if g == group => Err(AdminError::AlreadyInGroup {
            group: group.to_string(),
            volume: volume.to_string(),
        }),
        Some(other) => Err(AdminError::InOtherGroup {
            volume: volume.to_string(),
            other: other.to_string(),
        }),
    }
}

fn target_view(c: &Catalog, iqn: &str, sessions: &[SessionInfo]) -> TargetView {
    let t = &c.targets[iqn];
    TargetView {
        iqn: iqn.into(),
        luns: t
            .luns
            .iter()
            .map(|(lun, l)| LunView {
                lun: *lun,
                volume: l.volume.clone(),
                read_only: l.read_only,
            })
            .collect(),
        acl: t.acl.iter().cloned().collect(),
        chap: t.chap.as_ref().map(|ch| ChapView {
            user: ch.user.clone(),
            mutual_user: ch.mutual_user.clone(),
        }),
        sessions: sessions.iter().filter(|s| s.target == iqn).count(),
    }
}

fn target_mut<'a>(c: &'a mut Catalog, iqn: &str) -> Result<&'a mut TargetSpec, AdminError> {
    c.targets
        .get_mut(iqn)
        .ok_or_else(|| AdminError::NoTarget(iqn.to_string()))
}

fn done(message: String) -> Response {
    Response::Done { message }
}

/// Applies a change request to `c`, validating everything. Pure apart from drawing
/// volume ids from `new_id`. On error `c` may be partly changed: callers pass a copy.
pub fn change(
    c: &mut Catalog,
    req: Request,
    sessions: &[SessionInfo],
    new_id: &mut dyn FnMut() -> u64,
) -> Result<(Effect, Response), AdminError> {
    match req {
        Request::VolumeCreate {
            name,
            size,
            block_size,
            page_size,
        } => {
            validate::check_volume_name(&name)?;
            validate::check_geometry(size, block_size)?;
            validate::check_page_size(page_size)?;
            let page_size = u32::try_from(page_size).expect("check_page_size caps it at 1 MiB");
            if c.volumes.contains_key(&name) {
                return Err(AdminError::VolumeExists(name));
            }
            let spec = new_volume_spec(c, size, block_size, page_size, new_id);
            let id = spec.id;
            c.volumes.insert(name.clone(), spec.clone());
            let view = VolumeView {
                name: name.clone(),
                size,
                block_size,
                page_size,
                dirty_pages: Some(0),
                id: format!("{id:016x}"),
                path: spec.path.clone(),
                allocated: Some(0),
                group: None,
                mappings: Vec::new(),
            };
            Ok((Effect::CreateVolume { name, spec }, Response::Volume(view)))
        }
        Request::VolumeDelete { name } => {
            if !c.volumes.contains_key(&name) {
                return Err(AdminError::NoVolume(name));
            }
            let mappings: Vec<String> = c
                .mappings_of(&name)
                .map(|(iqn, lun)| format!("{iqn} LUN {lun}"))
                .collect();
            if !mappings.is_empty() {
                return Err(AdminError::VolumeMapped {
                    name,
                    mappings: mappings.join(", "),
                });
            }
            if let Some(group) = c.group_of(&name) {
                let group = group.to_string();
                return Err(AdminError::VolumeGrouped { name, group });
            }
            if let Some((set, _)) = c.replication_of(&name) {
                let set = set.to_string();
                return Err(AdminError::VolumeReplicated { volume: name, set });
            }
            let snapshots: Vec<&str> = c.snapshots_of(&name).collect();
            if !snapshots.is_empty() {
                let snapshots = snapshots.join(", ");
                return Err(AdminError::VolumeHasSnapshots { name, snapshots });
            }
            let spec = c.volumes.remove(&name).expect("presence checked above");
            let msg = format!("deleted volume '{name}' and its file {}", spec.path);
            Ok((Effect::DeleteVolume { name, spec }, done(msg)))
        }
        Request::GroupCreate { name, volumes } => {
            validate::check_group_name(&name)?;
            validate::check_group_volumes(&volumes)?;
            if c.groups.contains_key(&name) {
                return Err(AdminError::GroupExists(name));
            }
            for v in &volumes {
                check_joinable(c, &name, v)?;
            }
            c.groups.insert(
                name.clone(),
                GroupSpec {
                    volumes,
                    replication_set: None,
                },
            );
            Ok((Effect::None, Response::Group(group_view(c, &name))))
        }
        Request::GroupAdd { name, volume } => {
            group_for_change(
                c,
                &name,
                "volumes cannot be added to it while it is (delete the set first)",
            )?;
            check_joinable(c, &name, &volume)?;
            c.groups
                .get_mut(&name)
                .expect("group_for_change found it")
                .volumes
                .push(volume);
            Ok((Effect::None, Response::Group(group_view(c, &name))))
        }
        Request::GroupRemove { name, volume } => {
            let g = group_for_change(
                c,
                &name,
                "volumes cannot be removed from it while it is (delete the set first)",
            )?;
            let Some(at) = g.volumes.iter().position(|v| *v == volume) else {
                return Err(AdminError::NotInGroup {
                    group: name,
                    volume,
                });
            };
            if g.volumes.len() == 1 {
                return Err(AdminError::LastInGroup {
                    group: name,
                    volume,
                });
            }
            g.volumes.remove(at);
            Ok((Effect::None, Response::Group(group_view(c, &name))))
        }
        Request::GroupDelete { name } => {
            group_for_change(c, &name, "delete the set first")?;
            let g = c.groups.remove(&name).expect("group_for_change found it");
            Ok((
                Effect::None,
                done(format!(
                    "deleted group '{name}'; its volumes are kept ({})",
                    g.volumes.join(", ")
                )),
            ))
        }
        Request::TargetCreate { iqn } => {
            validate::check_iscsi_name(&iqn)?;
            if c.targets.contains_key(&iqn) {
                return Err(AdminError::TargetExists(iqn));
            }
            c.targets.insert(iqn.clone(), TargetSpec::default());
            let view = target_view(c, &iqn, sessions);
            Ok((Effect::None, Response::Target(view)))
        }
        Request::TargetDelete { iqn } => {
            let t = c
                .targets
                .get(&iqn)
                .ok_or_else(|| AdminError::NoTarget(iqn.clone()))?;
            let logged_in: Vec<&str> = sessions
                .iter()
                .filter(|s| s.target == iqn)
                .map(|s| s.initiator.as_str())
                .collect();
            if !logged_in.is_empty() {
                return Err(AdminError::TargetBusy {
                    iqn,
                    initiators: logged_in.join(", "),
                });
            }
            if !t.luns.is_empty() {
                let luns: Vec<String> = t
                    .luns
                    .iter()
                    .map(|(n, l)| format!("LUN {n} ({})", l.volume))
                    .collect();
                return Err(AdminError::TargetHasLuns {
                    iqn,
                    luns: luns.join(", "),
                });
            }
            c.targets.remove(&iqn);
            Ok((Effect::None, done(format!("deleted target '{iqn}'"))))
        }
        Request::LunMap {
            iqn,
            lun,
            volume,
            read_only,
        } => {
            validate::check_lun(lun)?;
            let (base, snapshot) = split_snapshot_ref(&volume);
            if !c.volumes.contains_key(base) {
                return Err(AdminError::NoVolume(base.to_string()));
            }
            if !read_only && snapshot.is_none() && c.is_secondary(base) {
                let set = c.replication_of(base).map(|(s, _)| s.to_string());
                return Err(AdminError::SecondaryVolume {
                    volume: base.to_string(),
                    set: set.unwrap_or_default(),
                    what: "map it --read-only (it becomes writable when promoted)",
                });
            }
            // A snapshot reads as its cut: it is never writable.
            let read_only = read_only || snapshot.is_some();
            if let Some(snap) = snapshot {
                let spec = c
                    .snapshots
                    .get(snap)
                    .ok_or_else(|| AdminError::NoSnapshot(snap.to_string()))?;
                if !spec.covers(base) {
                    return Err(AdminError::NotInSnapshot {
                        snapshot: snap.to_string(),
                        volume: base.to_string(),
                        volumes: spec.volumes.join(", "),
                    });
                }
            }
            let t = target_mut(c, &iqn)?;
            if let Some(existing) = t.luns.get(&lun) {
                return Err(AdminError::LunTaken {
                    iqn,
                    lun,
                    volume: existing.volume.clone(),
                });
            }
            t.luns.insert(
                lun,
                LunSpec {
                    volume: volume.clone(),
                    read_only,
                },
            );
            let ro = if read_only { " read-only" } else { "" };
            let what = if volume.contains('@') {
                "snapshot"
            } else {
                "volume"
            };
            Ok((
                Effect::None,
                done(format!(
                    "mapped {what} '{volume}' as LUN {lun} of '{iqn}'{ro}"
                )),
            ))
        }
        Request::LunUnmap { iqn, lun } => {
            let t = target_mut(c, &iqn)?;
            let Some(old) = t.luns.remove(&lun) else {
                return Err(AdminError::NoLun { iqn, lun });
            };
            Ok((
                Effect::None,
                done(format!(
                    "unmapped LUN {lun} (volume '{}') of '{iqn}'",
                    old.volume
                )),
            ))
        }
        Request::AclAdd { iqn, initiator } => {
            validate::check_iscsi_name(&initiator)?;
            let t = target_mut(c, &iqn)?;
            if !t.acl.insert(initiator.clone()) {
                return Err(AdminError::AlreadyInAcl { iqn, initiator });
            }
            Ok((
                Effect::None,
                done(format!("allowed '{initiator}' to log in to '{iqn}'")),
            ))
        }
        Request::AclRemove { iqn, initiator } => {
            let t = target_mut(c, &iqn)?;
            if !t.acl.remove(&initiator) {
                return Err(AdminError::NotInAcl { iqn, initiator });
            }
            let open = if t.acl.is_empty() {
                "; the ACL is now empty: any initiator may log in"
            } else {
                ""
            };
            Ok((
                Effect::None,
                done(format!(
                    "removed '{initiator}' from the ACL of '{iqn}'{open}"
                )),
            ))
        }
        Request::ChapSet {
            iqn,
            user,
            secret,
            mutual_user,
            mutual_secret,
        } => {
            let mutual = match (&mutual_user, &mutual_secret) {
                (Some(u), Some(s)) => Some((u.as_str(), s.0.as_str())),
                (None, None) => None,
                _ => {
                    return Err(ValidationError::Chap(
                        "mutual CHAP needs both a mutual user and a mutual secret",
                    )
                    .into())
                }
            };
            let notes = validate::check_chap(&user, &secret.0, mutual)?;
            let kind = if mutual.is_some() {
                "mutual CHAP"
            } else {
                "CHAP"
            };
            let t = target_mut(c, &iqn)?;
            t.chap = Some(ChapSpec {
                user: user.clone(),
                secret: secret.0,
                mutual_user,
                mutual_secret: mutual_secret.map(|s| s.0),
            });
            let mut msg = format!("set {kind} for '{iqn}' (user {user})");
            for n in notes {
                msg.push_str("; note: ");
                msg.push_str(&n);
            }
            Ok((Effect::None, done(msg)))
        }
        Request::ChapClear { iqn } => {
            let t = target_mut(c, &iqn)?;
            if t.chap.take().is_none() {
                return Err(AdminError::NoChap(iqn));
            }
            Ok((Effect::None, done(format!("cleared CHAP of '{iqn}'"))))
        }
        Request::SnapshotCreate {
            name,
            volume,
            group,
        } => {
            validate::check_snapshot_name(&name)?;
            let volumes = match (volume, group.as_ref()) {
                (Some(v), None) => {
                    if !c.volumes.contains_key(&v) {
                        return Err(AdminError::NoVolume(v));
                    }
                    vec![v]
                }
                (None, Some(g)) => c
                    .groups
                    .get(g)
                    .ok_or_else(|| AdminError::NoGroup(g.clone()))?
                    .volumes
                    .clone(),
                _ => return Err(ValidationError::SnapshotSource.into()),
            };
            if c.snapshots.contains_key(&name) {
                return Err(AdminError::SnapshotExists(name));
            }
            if let Some(v) = volumes.iter().find(|v| c.is_secondary(v)) {
                let set = c.replication_of(v).map(|(s, _)| s.to_string());
                return Err(AdminError::SecondaryVolume {
                    volume: v.clone(),
                    set: set.unwrap_or_default(),
                    what: "it changes only by replication: its recovery points are its snapshots",
                });
            }
            // The cut fills in `cut`, `created` and `pause_us` (commit).
            c.snapshots.insert(
                name.clone(),
                SnapshotSpec {
                    group,
                    volumes,
                    cut: 0,
                    created: 0,
                    pause_us: 0,
                },
            );
            Ok((Effect::CreateSnapshot { name }, done(String::new())))
        }
        Request::SnapshotDelete { name } => {
            if !c.snapshots.contains_key(&name) {
                return Err(AdminError::NoSnapshot(name));
            }
            let mappings: Vec<String> = c
                .snapshot_mappings(&name)
                .map(|(v, iqn, lun)| format!("{v}@{name} as {iqn} LUN {lun}"))
                .collect();
            if !mappings.is_empty() {
                return Err(AdminError::SnapshotMapped {
                    name,
                    mappings: mappings.join(", "),
                });
            }
            let spec = c.snapshots.remove(&name).expect("presence checked above");
            Ok((
                Effect::DeleteSnapshot {
                    volumes: spec.volumes,
                    cut: spec.cut,
                },
                done(format!(
                    "deleted snapshot '{name}'; its kept pages are freed"
                )),
            ))
        }
        Request::PeerCreate { name, addr, secret } => repl::peer_create(c, name, addr, secret.0),
        Request::PeerDelete { name } => repl::peer_delete(c, name),
        Request::ReplicationCreate {
            name,
            volume,
            group,
            peer,
            every,
            queue_policy,
            keep,
            target_prefix,
            compress,
        } => repl::replication_create(
            c,
            repl::CreateArgs {
                name,
                volume,
                group,
                peer,
                every,
                queue_policy,
                keep,
                target_prefix,
                compress,
            },
        ),
        Request::ReplicationDelete { name } => repl::replication_delete(c, name),
        Request::ScheduleAdd {
            task,
            set,
            start,
            every,
        } => repl::schedule_add(c, task, set, start, every),
        Request::ScheduleModify {
            task,
            set,
            start,
            every,
        } => repl::schedule_modify(c, task, set, start, every),
        Request::ScheduleDelete { task } => repl::schedule_delete(c, task),
        Request::Status
        | Request::VolumeList
        | Request::VolumeShow { .. }
        | Request::GroupList
        | Request::GroupShow { .. }
        | Request::TargetList
        | Request::TargetShow { .. }
        | Request::SessionList
        | Request::SnapshotList
        | Request::SnapshotShow { .. }
        | Request::PeerList
        | Request::PeerCheck { .. }
        | Request::ReplicationList
        | Request::ReplicationShow { .. }
        | Request::Replicate { .. }
        | Request::RecoveryPoints { .. }
        | Request::Restart { .. }
        | Request::Suspend { .. }
        | Request::Resume { .. }
        | Request::Abort { .. }
        | Request::Promote { .. }
        | Request::ScheduleList => unreachable!("queries are not changes"),
    }
}

/// Creates a new volume's sparse backing file with std (create_new: never clobbers an
/// existing file), then fsyncs its directory.
pub fn create_volume_file(path: &Path, size: u64) -> Result<(), AdminError> {
    let err = |source| AdminError::CreateFile {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(AdminError::FileExists(path.to_path_buf()))
        }
        Err(e) => return Err(err(e)),
    };
    if let Err(e) = f.set_len(size).and_then(|()| f.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    store::sync_dir(dir).map_err(|e| match e {
        StoreError::Io { source, .. } => err(source),
        other => AdminError::Save(other),
    })
}

/// The spec of a new volume with a fresh id. Ids name the LU to initiators (NAA
/// designator): never reuse a live one, never 0.
pub fn new_volume_spec(
    c: &Catalog,
    size: u64,
    block_size: u32,
    page_size: u32,
    new_id: &mut dyn FnMut() -> u64,
) -> VolumeSpec {
    let id = loop {
        let id = new_id();
        if id != 0 && !c.volumes.values().any(|v| v.id == id) {
            break id;
        }
    };
    VolumeSpec {
        size,
        block_size,
        id,
        path: crate::datadir::volume_file_rel(id),
        page_size,
    }
}

/// Stops serving a volume that left the catalog (or never made it in) and removes its
/// backing file and tracking state, only ever under their own folders of the data dir.
/// The catalog no longer has the volume: a leftover file is only disk space, so a
/// failure is logged.
pub fn discard_volume<H: Host + ?Sized>(host: &H, name: &str, spec: &VolumeSpec) {
    host.close_volume(name, spec);
    let file = volume_file(host.data_dir(), spec);
    if let Err(e) = crate::datadir::remove_volume_file(host.data_dir(), &file) {
        tracing::warn!(volume = %name, error = %e, "cannot delete volume file");
    }
}

/// Creates a new volume's backing file and starts serving it; on failure nothing is
/// left behind. Returns the file's path.
pub fn create_and_open_volume<H: Host + ?Sized>(
    host: &H,
    name: &str,
    spec: &VolumeSpec,
) -> Result<PathBuf, AdminError> {
    let file = volume_file(host.data_dir(), spec);
    create_volume_file(&file, spec.size)?;
    if let Err(source) = host.open_volume(name, spec) {
        let _ = fs::remove_file(&file);
        return Err(AdminError::OpenVolume {
            name: name.to_string(),
            source,
        });
    }
    Ok(file)
}

fn commit<H: Host + ?Sized>(host: &H, new: Catalog, effect: Effect) -> Result<(), AdminError> {
    let dir = host.data_dir();
    match effect {
        Effect::None => {
            store::save(dir, &new)?;
            *host.catalog().write() = new;
        }
        Effect::CreateVolume { name, spec } => {
            create_and_open_volume(host, &name, &spec)?;
            if let Err(e) = store::save(dir, &new) {
                discard_volume(host, &name, &spec);
                return Err(e.into());
            }
            *host.catalog().write() = new;
            tracing::info!(volume = %name, size = %format_size(spec.size), "volume created");
        }
        Effect::DeleteVolume { name, spec } => {
            store::save(dir, &new)?;
            *host.catalog().write() = new;
            discard_volume(host, &name, &spec);
            tracing::info!(volume = %name, "volume deleted");
        }
        Effect::CreateSnapshot { name } => {
            let mut new = new;
            let spec = new
                .snapshots
                .get_mut(&name)
                .expect("change inserted the snapshot");
            let taken =
                host.take_snapshot(&spec.volumes)
                    .map_err(|source| AdminError::TakeSnapshot {
                        name: name.clone(),
                        source,
                    })?;
            spec.cut = taken.cut;
            spec.created = taken.created;
            spec.pause_us = u64::try_from(taken.pause.as_micros()).unwrap_or(u64::MAX);
            let volumes = spec.volumes.clone();
            if let Err(e) = store::save(dir, &new) {
                host.drop_snapshot(&volumes, taken.cut);
                return Err(e.into());
            }
            *host.catalog().write() = new;
            tracing::info!(snapshot = %name, cut = taken.cut, pause_us = taken.pause.as_micros() as u64, "snapshot taken");
        }
        Effect::DeleteSnapshot { volumes, cut } => {
            store::save(dir, &new)?;
            *host.catalog().write() = new;
            host.drop_snapshot(&volumes, cut);
        }
        Effect::CreateReplication { name } => {
            let spec = new.replications[&name].clone();
            let peer = new.peers[&spec.peer].clone();
            let volumes: Vec<RemoteVolume> = spec
                .volumes
                .iter()
                .zip(&spec.remote_volumes)
                .map(|(local, remote)| RemoteVolume {
                    name: remote.clone(),
                    size: new.volumes[local].size,
                    block_size: new.volumes[local].block_size,
                })
                .collect();
            host.replication_create_remote(&name, &spec, &peer, volumes)?;
            if let Err(e) = store::save(dir, &new) {
                if let Err(undo) = host.replication_delete_remote(&name, &spec, &peer) {
                    tracing::warn!(set = %name, error = %undo, "cannot undo the peer's side");
                }
                return Err(e.into());
            }
            *host.catalog().write() = new;
            host.replication_started(&name);
            tracing::info!(set = %name, peer = %spec.peer, "replication set created");
        }
        Effect::DeleteReplication { name, spec } => {
            if spec.role == ReplicationRole::Primary {
                let peer = new.peers[&spec.peer].clone();
                host.replication_delete_remote(&name, &spec, &peer)?;
            }
            store::save(dir, &new)?;
            *host.catalog().write() = new;
            host.replication_stopped(&name, &spec);
            tracing::info!(set = %name, "replication set deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::protocol::Secret;
    use std::collections::HashSet;

    /// A node without io: records which volumes are open.
    struct Fake {
        dir: tempfile::TempDir,
        catalog: RwLock<Catalog>,
        lock: Mutex<()>,
        open: Mutex<HashSet<String>>,
        sessions: Mutex<Vec<SessionInfo>>,
        fail_open: bool,
        /// Snapshot state the fake volumes hold: (volume, cut).
        snaps: Mutex<std::collections::BTreeSet<(String, u64)>>,
        next_cut: Mutex<u64>,
        fail_cut: bool,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let catalog = Catalog::embedded_default(42);
            create_volume_file(&volume_file(dir.path(), &catalog.volumes["demo"]), 1 << 30)
                .unwrap();
            store::save(dir.path(), &catalog).unwrap();
            Fake {
                dir,
                catalog: RwLock::new(catalog),
                lock: Mutex::new(()),
                open: Mutex::new(["demo".to_string()].into()),
                sessions: Mutex::new(Vec::new()),
                fail_open: false,
                snaps: Mutex::new(Default::default()),
                next_cut: Mutex::new(1),
                fail_cut: false,
            }
        }
        fn on_disk(&self) -> Catalog {
            store::load(self.dir.path()).unwrap().unwrap()
        }
        #[allow(clippy::type_complexity)]
        fn snapshot(
            &self,
        ) -> (
            Catalog,
            Catalog,
            HashSet<String>,
            Vec<String>,
            std::collections::BTreeSet<(String, u64)>,
        ) {
            let mut files: Vec<String> = fs::read_dir(self.dir.path().join("volumes"))
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            (
                self.catalog.read().clone(),
                self.on_disk(),
                self.open.lock().clone(),
                files,
                self.snaps.lock().clone(),
            )
        }
        /// Applies a request that must be refused with `code`, and checks nothing changed.
        fn refuse(&self, req: Request, code: ErrorCode) -> String {
            let before = self.snapshot();
            let r = apply(self, req.clone());
            let Response::Error { code: got, message } = r else {
                panic!("{req:?} should be refused, got {r:?}");
            };
            assert_eq!(got, code, "{req:?}: {message}");
            assert_eq!(
                self.snapshot(),
                before,
                "{req:?} was refused but changed something"
            );
            message
        }
        fn ok(&self, req: Request) -> Response {
            let r = apply(self, req.clone());
            assert!(!r.is_error(), "{req:?} failed: {r:?}");
            assert_eq!(
                *self.catalog.read(),
                self.on_disk(),
                "memory and disk differ after {req:?}"
            );
            r
        }
    }

    impl Host for Fake {
        fn data_dir(&self) -> &Path {
            self.dir.path()
        }
        fn catalog(&self) -> &RwLock<Catalog> {
            &self.catalog
        }
        fn change_lock(&self) -> &Mutex<()> {
            &self.lock
        }
        fn open_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), VolumeError> {
            if self.fail_open {
                return Err(VolumeError::EngineStopped);
            }
            assert!(
                volume_file(self.dir.path(), spec).exists(),
                "file is created before open"
            );
            self.open.lock().insert(name.into());
            Ok(())
        }
        fn close_volume(&self, name: &str, _spec: &VolumeSpec) {
            self.open.lock().remove(name);
        }
        fn sessions(&self) -> Vec<SessionInfo> {
            self.sessions.lock().clone()
        }
        fn runtime(&self) -> RuntimeInfo {
            RuntimeInfo {
                engine: "fake".into(),
                ..Default::default()
            }
        }
        fn take_snapshot(&self, volumes: &[String]) -> Result<TakenSnapshot, TakeSnapshotError> {
            if self.fail_cut {
                return Err(TakeSnapshotError::Cut(CutError::EmptyGroup));
            }
            let mut next = self.next_cut.lock();
            let cut = *next;
            *next += 1;
            for v in volumes {
                self.snaps.lock().insert((v.clone(), cut));
            }
            Ok(TakenSnapshot {
                cut,
                created: 1_795_321_625,
                pause: std::time::Duration::from_micros(250),
            })
        }
        fn drop_snapshot(&self, volumes: &[String], cut: u64) {
            for v in volumes {
                self.snaps.lock().remove(&(v.clone(), cut));
            }
        }
        fn snapshot_usage(&self, volume: &str, cut: u64) -> Option<SnapshotInfo> {
            self.snaps
                .lock()
                .contains(&(volume.to_string(), cut))
                .then_some(SnapshotInfo {
                    cut: crate::tracking::CutId(cut),
                    taken_at: std::time::SystemTime::UNIX_EPOCH,
                    stats: crate::tracking::CowStats {
                        pages: 3,
                        memory_bytes: 3 * 4096,
                        file_bytes: 0,
                    },
                    scope_pages: None,
                    invalidated: false,
                })
        }
    }

    const T: &str = "iqn.2026-11.io.twinlun:t1";
    const INI: &str = "iqn.1994-05.com.redhat:client1";

    fn vcreate(name: &str, size: u64, bs: u32) -> Request {
        Request::VolumeCreate {
            name: name.into(),
            size,
            block_size: bs,
            page_size: 4096,
        }
    }
    fn tcreate(iqn: &str) -> Request {
        Request::TargetCreate { iqn: iqn.into() }
    }
    fn map(iqn: &str, lun: u64, vol: &str) -> Request {
        Request::LunMap {
            iqn: iqn.into(),
            lun,
            volume: vol.into(),
            read_only: false,
        }
    }
    fn chap(user: &str, secret: &str, mutual: Option<(&str, &str)>) -> Request {
        Request::ChapSet {
            iqn: T.into(),
            user: user.into(),
            secret: Secret(secret.into()),
            mutual_user: mutual.map(|m| m.0.into()),
            mutual_secret: mutual.map(|m| Secret(m.1.into())),
        }
    }
    fn session(target: &str) -> SessionInfo {
        SessionInfo {
            target: target.into(),
            initiator: INI.into(),
            isid: "400001370000".into(),
            tsih: 1,
            connections: 1,
            negotiated: vec![("HeaderDigest".into(), "None".into())],
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn volume_create_show_list_delete() {
        let f = Fake::new();
        let r = f.ok(vcreate("db", 10 << 20, 4096));
        let Response::Volume(v) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (v.name.as_str(), v.size, v.block_size),
            ("db", 10 << 20, 4096)
        );
        let id = f.catalog.read().volumes["db"].id;
        // Files are named by ids, never by names.
        assert_eq!(v.path, crate::datadir::volume_file_rel(id));
        let file = f.dir.path().join(&v.path);
        assert_eq!(fs::metadata(&file).unwrap().len(), 10 << 20);
        assert!(f.open.lock().contains("db"));
        assert_ne!(id, 0);
        assert_eq!(v.id, format!("{id:016x}"));

        let Response::Volume(shown) = f.ok(Request::VolumeShow { name: "db".into() }) else {
            panic!()
        };
        assert_eq!(shown.size, 10 << 20);
        let Response::Volumes { volumes } = f.ok(Request::VolumeList) else {
            panic!()
        };
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["db", "demo"]);
        assert_eq!(
            volumes[1].mappings.len(),
            1,
            "demo is mapped by the default target"
        );

        f.ok(Request::VolumeDelete { name: "db".into() });
        assert!(!file.exists());
        assert!(!f.open.lock().contains("db"));
        assert!(!f.catalog.read().volumes.contains_key("db"));
    }

    #[test]
    fn volume_create_refusals_change_nothing() {
        let f = Fake::new();
        f.refuse(vcreate("demo", 1 << 20, 512), ErrorCode::AlreadyExists);
        f.refuse(vcreate("bad/name", 1 << 20, 512), ErrorCode::Invalid);
        f.refuse(vcreate("", 1 << 20, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 0, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 1000, 512), ErrorCode::Invalid);
        f.refuse(vcreate("x", 1 << 20, 1024), ErrorCode::Invalid);
        f.refuse(vcreate("x", 6144, 4096), ErrorCode::Invalid);
        // Names are not paths: a stray file named like the volume is not its file,
        // and is left alone.
        fs::write(f.dir.path().join("volumes/stray.img"), b"keep me").unwrap();
        f.ok(vcreate("stray", 1 << 20, 512));
        assert_eq!(
            fs::read(f.dir.path().join("volumes/stray.img")).unwrap(),
            b"keep me"
        );
        // An existing file where a new volume's file would go is never clobbered.
        let taken = f.dir.path().join("volumes/taken.img");
        fs::write(&taken, b"keep me").unwrap();
        assert!(matches!(
            create_volume_file(&taken, 1 << 20),
            Err(AdminError::FileExists(_))
        ));
        assert_eq!(fs::read(&taken).unwrap(), b"keep me");
    }

    #[test]
    fn volume_create_undone_when_open_fails() {
        let mut f = Fake::new();
        f.fail_open = true;
        // `refuse` checks that the folder of volume files is as it was.
        f.refuse(vcreate("x", 1 << 20, 512), ErrorCode::Io);
    }

    #[test]
    fn volume_delete_refusals() {
        let f = Fake::new();
        f.refuse(
            Request::VolumeDelete {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
        let m = f.refuse(
            Request::VolumeDelete {
                name: "demo".into(),
            },
            ErrorCode::InUse,
        );
        assert!(
            m.contains(Catalog::DEMO_TARGET) && m.contains("LUN 0"),
            "{m}"
        );
        assert!(f
            .dir
            .path()
            .join(&f.catalog.read().volumes["demo"].path)
            .exists());
        f.refuse(
            Request::VolumeShow {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
    }

    #[test]
    fn target_lifecycle_and_refusals() {
        let f = Fake::new();
        let Response::Target(t) = f.ok(tcreate(T)) else {
            panic!()
        };
        assert_eq!(t.iqn, T);
        assert!(t.luns.is_empty() && t.acl.is_empty() && t.chap.is_none());
        f.refuse(tcreate(T), ErrorCode::AlreadyExists);
        f.refuse(tcreate("iqn.bad"), ErrorCode::Invalid);
        f.refuse(tcreate("target1"), ErrorCode::Invalid);
        let Response::Targets { targets } = f.ok(Request::TargetList) else {
            panic!()
        };
        assert_eq!(targets.len(), 2);

        f.ok(map(T, 3, "demo"));
        let m = f.refuse(Request::TargetDelete { iqn: T.into() }, ErrorCode::InUse);
        assert!(m.contains("LUN 3"), "{m}");
        f.ok(Request::LunUnmap {
            iqn: T.into(),
            lun: 3,
        });

        f.sessions.lock().push(session(T));
        let m = f.refuse(Request::TargetDelete { iqn: T.into() }, ErrorCode::Busy);
        assert!(m.contains(INI), "{m}");
        f.sessions.lock().clear();

        f.ok(Request::TargetDelete { iqn: T.into() });
        f.refuse(Request::TargetDelete { iqn: T.into() }, ErrorCode::NotFound);
        f.refuse(Request::TargetShow { iqn: T.into() }, ErrorCode::NotFound);
    }

    #[test]
    fn lun_map_unmap_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        f.ok(Request::LunMap {
            iqn: T.into(),
            lun: 1,
            volume: "demo".into(),
            read_only: true,
        });
        let Response::Target(t) = f.ok(Request::TargetShow { iqn: T.into() }) else {
            panic!()
        };
        assert_eq!(
            t.luns,
            vec![LunView {
                lun: 1,
                volume: "demo".into(),
                read_only: true
            }]
        );
        let m = f.refuse(map(T, 1, "demo"), ErrorCode::AlreadyExists);
        assert!(m.contains("demo"), "{m}");
        f.refuse(map(T, 2, "nope"), ErrorCode::NotFound);
        f.refuse(
            map("iqn.2026-11.io.twinlun:nope", 2, "demo"),
            ErrorCode::NotFound,
        );
        f.refuse(map(T, validate::MAX_LUN + 1, "demo"), ErrorCode::Invalid);
        f.refuse(
            Request::LunUnmap {
                iqn: T.into(),
                lun: 9,
            },
            ErrorCode::NotFound,
        );
        f.refuse(
            Request::LunUnmap {
                iqn: "iqn.2026-11.io.x:y".into(),
                lun: 0,
            },
            ErrorCode::NotFound,
        );
        f.ok(Request::LunUnmap {
            iqn: T.into(),
            lun: 1,
        });
        assert!(f.catalog.read().targets[T].luns.is_empty());
    }

    #[test]
    fn acl_add_remove_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        let add = Request::AclAdd {
            iqn: T.into(),
            initiator: INI.into(),
        };
        f.ok(add.clone());
        assert!(f.catalog.read().targets[T].acl.contains(INI));
        f.refuse(add, ErrorCode::AlreadyExists);
        f.refuse(
            Request::AclAdd {
                iqn: T.into(),
                initiator: "bob".into(),
            },
            ErrorCode::Invalid,
        );
        f.refuse(
            Request::AclAdd {
                iqn: "iqn.2026-11.io.x:none".into(),
                initiator: INI.into(),
            },
            ErrorCode::NotFound,
        );
        let Response::Done { message } = f.ok(Request::AclRemove {
            iqn: T.into(),
            initiator: INI.into(),
        }) else {
            panic!()
        };
        assert!(message.contains("any initiator"), "{message}");
        f.refuse(
            Request::AclRemove {
                iqn: T.into(),
                initiator: INI.into(),
            },
            ErrorCode::NotFound,
        );
    }

    #[test]
    fn chap_set_clear_and_refusals() {
        let f = Fake::new();
        f.ok(tcreate(T));
        f.refuse(chap("", "0123456789ab", None), ErrorCode::Invalid);
        f.refuse(chap("u", "", None), ErrorCode::Invalid);
        f.refuse(
            chap("u", "0123456789ab", Some(("m", "0123456789ab"))),
            ErrorCode::Invalid,
        );
        let half = Request::ChapSet {
            iqn: T.into(),
            user: "u".into(),
            secret: Secret("0123456789ab".into()),
            mutual_user: Some("m".into()),
            mutual_secret: None,
        };
        f.refuse(half, ErrorCode::Invalid);
        f.refuse(Request::ChapClear { iqn: T.into() }, ErrorCode::NotFound);

        let Response::Done { message } = f.ok(chap("u", "short", None)) else {
            panic!()
        };
        assert!(
            message.contains("note") && !message.contains("short"),
            "{message}"
        );
        f.ok(chap("u", "0123456789ab", Some(("m", "ba9876543210"))));
        let Response::Target(t) = f.ok(Request::TargetShow { iqn: T.into() }) else {
            panic!()
        };
        assert_eq!(
            t.chap,
            Some(ChapView {
                user: "u".into(),
                mutual_user: Some("m".into())
            })
        );
        let json = serde_json::to_string(&f.ok(Request::TargetList)).unwrap();
        assert!(
            !json.contains("0123456789ab") && !json.contains("ba9876543210"),
            "{json}"
        );
        assert_eq!(
            f.on_disk().targets[T].chap.as_ref().unwrap().secret,
            "0123456789ab"
        );

        f.ok(Request::ChapClear { iqn: T.into() });
        assert!(f.catalog.read().targets[T].chap.is_none());
    }

    #[test]
    fn status_and_sessions() {
        let f = Fake::new();
        f.sessions.lock().push(session(Catalog::DEMO_TARGET));
        let Response::Status(s) = f.ok(Request::Status) else {
            panic!()
        };
        assert_eq!((s.volumes, s.targets, s.sessions), (1, 1, 1));
        assert_eq!(s.engine, "fake");
        let Response::Sessions { sessions } = f.ok(Request::SessionList) else {
            panic!()
        };
        assert_eq!(sessions, vec![session(Catalog::DEMO_TARGET)]);
        let Response::Targets { targets } = f.ok(Request::TargetList) else {
            panic!()
        };
        assert_eq!(targets[0].sessions, 1);
    }

    #[test]
    fn concurrent_changes_are_serialized() {
        let f = Fake::new();
        std::thread::scope(|sc| {
            for t in 0..4 {
                let f = &f;
                sc.spawn(move || {
                    for i in 0..8 {
                        let r = apply(f, vcreate(&format!("v{t}-{i}"), 4096, 512));
                        assert!(!r.is_error(), "{r:?}");
                    }
                });
            }
        });
        assert_eq!(f.catalog.read().volumes.len(), 33);
        assert_eq!(*f.catalog.read(), f.on_disk());
        assert_eq!(f.open.lock().len(), 33);
    }

    fn vcreate_paged(name: &str, page_size: u64) -> Request {
        Request::VolumeCreate {
            name: name.into(),
            size: 4 << 20,
            block_size: 512,
            page_size,
        }
    }
    fn gcreate(name: &str, vols: &[&str]) -> Request {
        Request::GroupCreate {
            name: name.into(),
            volumes: vols.iter().map(|v| v.to_string()).collect(),
        }
    }
    fn gadd(name: &str, vol: &str) -> Request {
        Request::GroupAdd {
            name: name.into(),
            volume: vol.into(),
        }
    }
    fn gremove(name: &str, vol: &str) -> Request {
        Request::GroupRemove {
            name: name.into(),
            volume: vol.into(),
        }
    }
    fn group_of(f: &Fake, group: &str) -> GroupView {
        match f.ok(Request::GroupShow { name: group.into() }) {
            Response::Group(g) => g,
            other => panic!("{other:?}"),
        }
    }
    fn volume_of(f: &Fake, name: &str) -> VolumeView {
        match f.ok(Request::VolumeShow { name: name.into() }) {
            Response::Volume(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn page_size_is_chosen_at_creation_and_shown() {
        let f = Fake::new();
        let Response::Volume(v) = f.ok(vcreate("a", 1 << 20, 512)) else {
            panic!()
        };
        assert_eq!(v.page_size, 4096, "4 KiB by default");
        let Response::Volume(v) = f.ok(vcreate_paged("b", 64 << 10)) else {
            panic!()
        };
        assert_eq!(v.page_size, 64 << 10);
        f.ok(vcreate_paged("c", 1 << 20));
        assert_eq!(f.catalog.read().volumes["b"].page_size, 64 << 10);
        assert_eq!(f.on_disk().volumes["c"].page_size, 1 << 20);
        assert_eq!(volume_of(&f, "b").page_size, 64 << 10);
        let Response::Volumes { volumes } = f.ok(Request::VolumeList) else {
            panic!()
        };
        let pages: Vec<u32> = volumes.iter().map(|v| v.page_size).collect();
        assert_eq!(pages, [4096, 64 << 10, 1 << 20, 4096]);
        for bad in [0, 512, 2048, 6144, 3 << 12, 2 << 20, 1 << 40] {
            let m = f.refuse(vcreate_paged("x", bad), ErrorCode::Invalid);
            assert!(m.contains("page size"), "{m}");
        }
    }

    #[test]
    fn group_lifecycle() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        let Response::Group(g) = f.ok(gcreate("g", &["b", "a"])) else {
            panic!()
        };
        assert_eq!(
            g,
            GroupView {
                name: "g".into(),
                volumes: vec!["b".into(), "a".into()],
                size: 2 << 20,
                replication_set: None,
            },
            "volumes keep the order given"
        );
        assert_eq!(group_of(&f, "g"), g);
        assert_eq!(volume_of(&f, "a").group.as_deref(), Some("g"));
        assert_eq!(volume_of(&f, "c").group, None);

        let Response::Group(g) = f.ok(gadd("g", "c")) else {
            panic!()
        };
        assert_eq!(g.volumes, ["b", "a", "c"], "added at the end");
        let Response::Group(g) = f.ok(gremove("g", "a")) else {
            panic!()
        };
        assert_eq!(g.volumes, ["b", "c"]);
        assert_eq!(volume_of(&f, "a").group, None);

        f.ok(gcreate("h", &["a"]));
        let Response::Groups { groups } = f.ok(Request::GroupList) else {
            panic!()
        };
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["g", "h"]);
        let Response::Status(s) = f.ok(Request::Status) else {
            panic!()
        };
        assert_eq!(s.groups, 2);

        let Response::Done { message } = f.ok(Request::GroupDelete { name: "g".into() }) else {
            panic!()
        };
        assert!(message.contains("kept"), "{message}");
        assert!(!f.catalog.read().groups.contains_key("g"));
        for v in ["b", "c"] {
            assert!(f.catalog.read().volumes.contains_key(v), "volumes stay");
            assert_eq!(volume_of(&f, v).group, None);
        }
        // Out of its group, a volume can be deleted again.
        f.ok(Request::VolumeDelete { name: "b".into() });
    }

    #[test]
    fn group_refusals_change_nothing() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        f.ok(gcreate("g", &["a", "b"]));

        f.refuse(gcreate("bad/name", &["c"]), ErrorCode::Invalid);
        f.refuse(gcreate("", &["c"]), ErrorCode::Invalid);
        let m = f.refuse(gcreate("h", &[]), ErrorCode::Invalid);
        assert!(m.contains("at least one volume"), "{m}");
        let m = f.refuse(gcreate("h", &["c", "c"]), ErrorCode::Invalid);
        assert!(m.contains("twice"), "{m}");
        let m = f.refuse(gcreate("h", &["c", "nope"]), ErrorCode::NotFound);
        assert!(m.contains("nope"), "{m}");
        f.refuse(gcreate("g", &["c"]), ErrorCode::AlreadyExists);
        let m = f.refuse(gcreate("h", &["c", "a"]), ErrorCode::InUse);
        assert!(m.contains("'a'") && m.contains("group 'g'"), "{m}");

        f.refuse(gadd("nope", "c"), ErrorCode::NotFound);
        f.refuse(gadd("g", "nope"), ErrorCode::NotFound);
        let m = f.refuse(gadd("g", "a"), ErrorCode::AlreadyExists);
        assert!(m.contains("already in group 'g'"), "{m}");
        f.ok(gcreate("h", &["c"]));
        let m = f.refuse(gadd("h", "a"), ErrorCode::InUse);
        assert!(m.contains("in group 'g'"), "{m}");

        f.refuse(gremove("nope", "a"), ErrorCode::NotFound);
        let m = f.refuse(gremove("g", "c"), ErrorCode::NotFound);
        assert!(m.contains("not in group 'g'"), "{m}");
        let m = f.refuse(gremove("h", "c"), ErrorCode::InUse);
        assert!(m.contains("last") && m.contains("group delete h"), "{m}");

        f.refuse(
            Request::GroupDelete {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );
        f.refuse(
            Request::GroupShow {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
        );

        let m = f.refuse(Request::VolumeDelete { name: "a".into() }, ErrorCode::InUse);
        assert!(m.contains("group 'g'"), "{m}");
        assert!(f
            .dir
            .path()
            .join(&f.catalog.read().volumes["a"].path)
            .exists());
    }

    #[test]
    fn a_group_in_a_replication_set_keeps_its_volumes() {
        let f = Fake::new();
        for v in ["a", "b", "c"] {
            f.ok(vcreate(v, 1 << 20, 512));
        }
        f.ok(gcreate("g", &["a", "b"]));
        // The replication work sets this field; here the catalog is edited by hand.
        {
            let mut c = f.catalog.write();
            c.groups.get_mut("g").unwrap().replication_set = Some("dr1".into());
            store::save(f.dir.path(), &c).unwrap();
        }
        assert_eq!(group_of(&f, "g").replication_set.as_deref(), Some("dr1"));
        for req in [
            gadd("g", "c"),
            gremove("g", "b"),
            Request::GroupDelete { name: "g".into() },
        ] {
            let m = f.refuse(req, ErrorCode::InUse);
            assert!(m.contains("group 'g' is in replication set 'dr1'"), "{m}");
        }
        // Its volumes still cannot be deleted out from under it.
        let m = f.refuse(Request::VolumeDelete { name: "a".into() }, ErrorCode::InUse);
        assert!(m.contains("group 'g'"), "{m}");
    }

    #[test]
    fn volume_ids_are_unique_and_nonzero() {
        let mut c = Catalog::embedded_default(7);
        let mut ids = [0u64, 7, 7, 9].into_iter();
        let (effect, _) = change(&mut c, vcreate("x", 4096, 512), &[], &mut || {
            ids.next().unwrap()
        })
        .unwrap();
        let Effect::CreateVolume { spec, .. } = effect else {
            panic!()
        };
        assert_eq!(spec.id, 9);
    }

    fn screate(name: &str, volume: Option<&str>, group: Option<&str>) -> Request {
        Request::SnapshotCreate {
            name: name.into(),
            volume: volume.map(Into::into),
            group: group.map(Into::into),
        }
    }

    fn snapshot_of(f: &Fake, name: &str) -> SnapshotView {
        match f.ok(Request::SnapshotShow { name: name.into() }) {
            Response::Snapshot(s) => s,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn snapshot_lifecycle_and_refusals() {
        let f = Fake::new();
        f.ok(vcreate("a", 1 << 20, 512));
        f.ok(vcreate("b", 1 << 20, 512));
        f.ok(gcreate("g", &["b", "a"]));
        f.ok(tcreate(T));

        // A volume snapshot and a group snapshot, each at its own cut.
        let Response::Snapshot(one) = f.ok(screate("one", Some("a"), None)) else {
            panic!()
        };
        assert_eq!(one.cut_id, 1);
        assert_eq!(one.created, "2026-11-22T04:27:05Z");
        assert_eq!(one.pause_us, 250);
        assert_eq!(one.state, "ok");
        assert_eq!(one.group, None);
        let both = snapshot_of(&f, "one");
        assert_eq!(both, one);
        let Response::Snapshot(grp) = f.ok(screate("both", None, Some("g"))) else {
            panic!()
        };
        assert_eq!(grp.cut_id, 2);
        assert_eq!(grp.group.as_deref(), Some("g"));
        let vols: Vec<&str> = grp.volumes.iter().map(|v| v.volume.as_str()).collect();
        assert_eq!(vols, ["b", "a"]);
        assert_eq!(grp.pages_preserved, 6);
        assert_eq!(grp.bytes_used, 6 * 4096);
        let Response::Snapshots { snapshots } = f.ok(Request::SnapshotList) else {
            panic!()
        };
        assert_eq!(snapshots.len(), 2);

        // Refusals change nothing.
        f.refuse(screate("one", Some("b"), None), ErrorCode::AlreadyExists);
        f.refuse(screate("x", Some("nope"), None), ErrorCode::NotFound);
        f.refuse(screate("x", None, Some("nope")), ErrorCode::NotFound);
        let m = f.refuse(screate("x", Some("a"), Some("g")), ErrorCode::Invalid);
        assert!(m.contains("exactly one of --volume and --group"), "{m}");
        f.refuse(screate("x", None, None), ErrorCode::Invalid);
        f.refuse(screate("a@b", Some("a"), None), ErrorCode::Invalid);
        f.refuse(
            Request::SnapshotShow { name: "x".into() },
            ErrorCode::NotFound,
        );
        f.refuse(
            Request::SnapshotDelete { name: "x".into() },
            ErrorCode::NotFound,
        );
        f.ok(vcreate("c", 1 << 20, 512));
        f.ok(screate("three", Some("c"), None));
        let m = f.refuse(Request::VolumeDelete { name: "c".into() }, ErrorCode::InUse);
        assert!(m.contains("has snapshots (three)"), "{m}");
        f.ok(Request::SnapshotDelete {
            name: "three".into(),
        });
        f.ok(Request::VolumeDelete { name: "c".into() });

        // Mapping VOLUME@SNAPSHOT: always read-only; only volumes the snapshot holds.
        f.ok(map(T, 1, "a@both"));
        assert!(f.catalog.read().targets[T].luns[&1].read_only);
        f.refuse(map(T, 2, "b@one"), ErrorCode::NotFound);
        f.refuse(map(T, 2, "a@nope"), ErrorCode::NotFound);
        f.refuse(map(T, 2, "nope@one"), ErrorCode::NotFound);
        assert_eq!(snapshot_of(&f, "both").mappings.len(), 1);
        let m = f.refuse(
            Request::SnapshotDelete {
                name: "both".into(),
            },
            ErrorCode::InUse,
        );
        assert!(m.contains("a@both as"), "{m}");

        // Deleting frees the state of every volume.
        f.ok(Request::LunUnmap {
            iqn: T.into(),
            lun: 1,
        });
        f.ok(Request::SnapshotDelete {
            name: "both".into(),
        });
        assert!(!f.snaps.lock().iter().any(|(_, cut)| *cut == 2));
        assert_eq!(f.snaps.lock().len(), 1);
        f.ok(Request::SnapshotDelete { name: "one".into() });
        assert!(f.snaps.lock().is_empty());
    }

    #[test]
    fn a_snapshot_whose_state_is_gone_shows_lost_and_a_failed_cut_changes_nothing() {
        let mut f = Fake::new();
        f.ok(screate("s", Some("demo"), None));
        f.snaps.lock().clear();
        assert_eq!(snapshot_of(&f, "s").state, "lost");
        f.fail_cut = true;
        f.refuse(screate("t", Some("demo"), None), ErrorCode::Io);
        f.fail_cut = false;
    }
}
