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
//!
//! The handlers live by object kind, each file with its queries, its changes, the
//! commit of its effects and its tests: `volume`, `group`, `target` (targets, LUNs,
//! ACLs, CHAP), `snapshot`, `peer`, `replication` (sets and their actions), `schedule`,
//! `status` (the node and its sessions). `errors` maps every refusal to its wire code.
//! This file dispatches: `query`, `act` and `change` each match their kind of request
//! whole, so a new request does not compile until it is handled.

use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::protocol::{Action, Change, CutStatsView, PeerCheckView, Query, Request, Response};
use super::replication as repl;
use super::store::{self, StoreError};
use crate::catalog::{Catalog, PeerSpec, ReplicationSpec, VolumeSpec};
use crate::events::{Emitter, Subscription};
use crate::iscsi::SessionInfo;
use crate::replication::recovery::RecoveryPoint;
use crate::replication::status::SetStatus;
use crate::replication::wire::RemoteVolume;
use crate::replication::ReplicationError;
use crate::tracking::{CutError, SnapshotInfo};
use crate::volume::VolumeError;

mod errors;
#[cfg(test)]
mod fake;
mod group;
mod peer;
mod replication;
mod schedule;
mod snapshot;
mod status;
mod target;
mod volume;

pub use errors::AdminError;
pub(crate) use group::volume_or_group;
pub use volume::{
    create_and_open_volume, create_volume_file, discard_volume, new_volume_spec, volume_file,
};

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
            local_key: None,
            pinned_key: peer.pinned_key.clone(),
            presented_key: None,
            tls_version: None,
            cipher: None,
            error: Some(ReplicationError::Unavailable.to_string()),
        }
    }
    /// The last authenticated link with a peer since the node started.
    fn peer_link(&self, _name: &str) -> Option<super::protocol::LinkView> {
        None
    }
    /// `peer update --accept-new-key`: connects to the peer and authenticates whatever
    /// key it presents; returns that key, or why it could not.
    fn peer_present_key(&self, _name: &str, _peer: &PeerSpec) -> Result<String, ReplicationError> {
        Err(ReplicationError::Unavailable)
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
    /// Restart Replication of a group set with other volumes, its first step: stops
    /// the set and has the peer change its side (`Sets::restart_members_remote`); on
    /// success the set stays stopped until `replication_started`.
    fn replication_members_remote(
        &self,
        _name: &str,
        _spec: &ReplicationSpec,
        _peer: &PeerSpec,
        _add: Vec<crate::replication::wire::MemberVolume>,
        _remove: Vec<String>,
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
    /// Settles a `replication modify` with the set's peer before it is saved: the peer
    /// must decode `codec`, and its side keeps `keep` recovery points from now on.
    fn replication_modify_remote(
        &self,
        _name: &str,
        _spec: &ReplicationSpec,
        _peer: &PeerSpec,
        _keep: Option<u32>,
        _codec: Option<crate::catalog::Compression>,
    ) -> Result<(), ReplicationError> {
        Err(ReplicationError::Unavailable)
    }
    /// A set's settings changed in the catalog: the running set applies them now.
    fn replication_modified(&self, _name: &str) {}
    /// A peer's settings changed in the catalog: the sets sending to it apply them now.
    fn peer_updated(&self, _name: &str) {}
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
    /// Failover, first step: the secondary set stops receiving and records `fork` as a
    /// primary's state (`replication::Sets::promote_here`).
    fn promote_set(
        &self,
        name: &str,
        _spec: &ReplicationSpec,
        _fork: crate::replication::wire::Fork,
        _resync_all: bool,
        _switchover: bool,
    ) -> Result<(), ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
    /// Failover, last step: the catalog says primary; the set runs as one (held).
    fn promoted(&self, _name: &str, _spec: &ReplicationSpec) {}
    /// The catalog change of a promote failed: the set is a secondary again.
    fn promote_undone(&self, _name: &str, _spec: &ReplicationSpec) {}
    /// `resolve` of a set whose promote is not settled (split brain).
    fn resolve(&self, name: &str, _keep_local: bool) -> Result<String, ReplicationError> {
        Err(ReplicationError::NotPromoted(name.into()))
    }
    /// `switchover` of a primary set.
    fn switchover(&self, name: &str) -> Result<String, ReplicationError> {
        Err(ReplicationError::NotPrimary(name.into()))
    }
    /// `failback` of a set promoted here.
    fn failback(&self, name: &str) -> Result<String, ReplicationError> {
        Err(ReplicationError::NotPromoted(name.into()))
    }
    /// The first step of a promote: fences the secondary set from its peer, waits for
    /// (or gives up) a cut in flight, rolls back to `point` if given, and stops the set
    /// receiving; returns the cut the volumes hold (`None` before the first commit,
    /// and then the set receives on). Blocking.
    fn stop_receiver(
        &self,
        name: &str,
        _point: Option<u64>,
    ) -> Result<Option<crate::replication::recovery::CutMeta>, ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
    /// The promote failed after `stop_receiver`: the set receives again.
    fn resume_receiver(&self, _name: &str) {}
    /// Pins recovery point `cut` of secondary set `name` for a drill LUN. Blocking
    /// (waits for a cut being applied).
    fn pin_point(&self, name: &str, _cut: u64) -> Result<(), ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
    /// A drill LUN of point `cut` of `name` went.
    fn unpin_point(&self, _name: &str, _cut: u64) {}
    /// A secondary set's recovery points, newest first.
    fn recovery_points(&self, name: &str) -> Result<Vec<RecoveryPoint>, ReplicationError> {
        Err(ReplicationError::NotSecondary(name.into()))
    }
    /// Where snapshot and promotion events go (`ctl events`); connected to nothing
    /// unless the host has a bus.
    fn events(&self) -> Emitter {
        Emitter::none()
    }
    /// A new reader of the node's events (`ctl events`); `None` when the host has no
    /// bus.
    fn subscribe_events(&self) -> Option<Subscription> {
        None
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
    /// The replication listener's bound address, when the node has one.
    pub replication_listen: Option<String>,
    /// This node's replication TLS key fingerprint.
    pub tls_key: Option<String>,
    pub uptime_secs: u64,
    /// Consistent cuts taken so far (snapshots, replication cycles) and the pauses
    /// they imposed on writers.
    pub cuts: CutStatsView,
}

/// What `commit` must do besides saving the catalog.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A LUN maps recovery point `cut` of secondary set `set`: pin it, then save.
    PinPoint {
        set: String,
        cut: u64,
    },
    /// A LUN mapping recovery point `cut` of `set` went: save, then unpin it.
    UnpinPoint {
        set: String,
        cut: u64,
    },
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
        name: String,
        volumes: Vec<String>,
        cut: u64,
    },
    /// Create the secondary side on the peer, save, start the set.
    CreateReplication {
        name: String,
    },
    /// Stop the set, delete the peer's side (primary, unless `force`), save.
    DeleteReplication {
        name: String,
        spec: ReplicationSpec,
        force: bool,
    },
    /// Settle with the peer what needs it (its `keep`; that it decodes `codec`), save,
    /// then apply the new settings to the running set.
    ModifyReplication {
        name: String,
        keep: Option<u32>,
        codec: Option<crate::catalog::Compression>,
    },
    /// Save (with `accept_new_key`: pinning the key the peer presents now, its pin
    /// cleared in the new catalog), then the sets sending to the peer apply its new
    /// settings.
    UpdatePeer {
        name: String,
        accept_new_key: bool,
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
    match req {
        Request::Query(q) => {
            let catalog = host.catalog().read().clone();
            query(host, &catalog, q)
        }
        Request::Action(a) => {
            let catalog = host.catalog().read().clone();
            act(host, &catalog, a)
        }
        Request::Change(req) => {
            let _serial = host.change_lock().lock();
            let mut new = host.catalog().read().clone();
            let sessions = host.sessions();
            let (effect, response) = change(&mut new, req, &sessions, &mut rand::random::<u64>)?;
            Ok(commit(host, new, effect)?.unwrap_or(response))
        }
    }
}

/// Answers a query from a copy of the catalog and the running node.
fn query<H: Host + ?Sized>(host: &H, c: &Catalog, q: Query) -> Result<Response, AdminError> {
    match q {
        Query::Status => Ok(status::status(host, c)),
        Query::SessionList => Ok(status::sessions(host)),
        Query::VolumeList => Ok(volume::list(host, c)),
        Query::VolumeShow { name } => volume::show(host, c, name),
        Query::GroupList => Ok(group::list(c)),
        Query::GroupShow { name } => group::show(c, name),
        Query::TargetList => Ok(target::list(host, c)),
        Query::TargetShow { iqn } => target::show(host, c, iqn),
        Query::SnapshotList => Ok(snapshot::list(host, c)),
        Query::SnapshotShow { name } => snapshot::show(host, c, name),
        Query::PeerList => Ok(peer::list(c)),
        Query::PeerShow { name } => peer::show(host, c, name),
        Query::PeerCheck { name } => peer::check(host, c, name),
        Query::ReplicationList => Ok(replication::list(host, c)),
        Query::ReplicationShow { name } => replication::show(host, c, name),
        Query::RecoveryPoints { name } => replication::recovery_points(host, c, name),
        Query::ScheduleList => Ok(schedule::list(c)),
        Query::ConfigExport { with_secrets } => super::export::response(c, with_secrets),
    }
}

/// Carries out an action on a running replication set; `c` is a copy of the catalog.
fn act<H: Host + ?Sized>(host: &H, c: &Catalog, a: Action) -> Result<Response, AdminError> {
    match a {
        Action::Replicate { name } => replication::replicate(host, c, name),
        Action::Restart {
            name,
            yes,
            add_volumes,
            remove_volumes,
        } => replication::restart(host, c, name, yes, add_volumes, remove_volumes),
        Action::Suspend { name } => replication::control(host, c, name, Control::Suspend),
        Action::Resume { name } => replication::control(host, c, name, Control::Resume),
        Action::Abort { name } => replication::control(host, c, name, Control::Abort),
        Action::Promote {
            volume,
            group,
            recovery_point,
        } => replication::promote(host, volume, group, recovery_point),
        Action::Failback { name } => Ok(done(repl::failback(host, &name)?)),
        Action::Switchover { name } => Ok(done(repl::switchover(host, &name)?)),
        Action::Resolve { name, keep } => Ok(done(repl::resolve(host, &name, keep)?)),
        Action::VolumeClone { name, from } => volume::clone_point(host, name, &from),
    }
}

/// Applies a change request to `c`, validating everything. Pure apart from drawing
/// volume ids from `new_id`. On error `c` may be partly changed: callers pass a copy.
pub fn change(
    c: &mut Catalog,
    req: Change,
    sessions: &[SessionInfo],
    new_id: &mut dyn FnMut() -> u64,
) -> Result<(Effect, Response), AdminError> {
    match req {
        Change::VolumeCreate {
            name,
            size,
            block_size,
            page_size,
            provisioning,
            allow_sanitize,
        } => volume::create(
            c,
            name,
            size,
            block_size,
            page_size,
            provisioning,
            allow_sanitize,
            new_id,
        ),
        Change::VolumeDelete { name } => volume::delete(c, name),
        Change::GroupCreate { name, volumes } => group::create(c, name, volumes),
        Change::GroupAdd { name, volume } => group::add(c, name, volume),
        Change::GroupRemove { name, volume } => group::remove(c, name, volume),
        Change::GroupDelete { name } => group::delete(c, name),
        Change::TargetCreate { iqn } => target::create(c, iqn, sessions),
        Change::TargetDelete { iqn } => target::delete(c, iqn, sessions),
        Change::LunMap {
            iqn,
            lun,
            volume,
            read_only,
            removable,
        } => target::lun_map(c, iqn, lun, volume, read_only, removable),
        Change::LunUnmap { iqn, lun } => target::lun_unmap(c, iqn, lun),
        Change::AclAdd { iqn, initiator } => target::acl_add(c, iqn, initiator),
        Change::AclRemove { iqn, initiator } => target::acl_remove(c, iqn, initiator),
        Change::ChapSet {
            iqn,
            user,
            secret,
            mutual_user,
            mutual_secret,
        } => target::chap_set(c, iqn, user, secret, mutual_user, mutual_secret),
        Change::ChapClear { iqn } => target::chap_clear(c, iqn),
        Change::SnapshotCreate {
            name,
            volume,
            group,
        } => snapshot::create(c, name, volume, group),
        Change::SnapshotDelete { name } => snapshot::delete(c, name),
        // Peers, sets and schedules change in `admin::replication`.
        Change::PeerCreate {
            name,
            addr,
            secret,
            max_rate,
        } => repl::peer_create(c, name, addr, secret.0, max_rate),
        Change::PeerDelete { name } => repl::peer_delete(c, name),
        Change::PeerUpdate(u) => repl::peer_update(c, u),
        Change::ReplicationCreate(a) => repl::replication_create(c, a),
        Change::ReplicationModify(m) => repl::replication_modify(c, m),
        Change::ReplicationDelete { name, force } => repl::replication_delete(c, name, force),
        Change::ScheduleAdd {
            task,
            set,
            start,
            every,
        } => repl::schedule_add(c, task, set, start, every),
        Change::ScheduleModify {
            task,
            set,
            start,
            every,
        } => repl::schedule_modify(c, task, set, start, every),
        Change::ScheduleDelete { task } => repl::schedule_delete(c, task),
        Change::PortGroupSet { group, state } => target::port_group_set(c, group, state),
    }
}

/// Carries out what a change needs besides the new catalog, and installs the catalog.
/// Returns the response that replaces `change`'s when a new object's view shows what
/// only the commit knows (a snapshot's cut id and time, a set's status).
fn commit<H: Host + ?Sized>(
    host: &H,
    new: Catalog,
    effect: Effect,
) -> Result<Option<Response>, AdminError> {
    match effect {
        Effect::None => {
            install(host, new)?;
            Ok(None)
        }
        Effect::CreateVolume { name, spec } => {
            volume::commit_create(host, new, &name, &spec)?;
            Ok(None)
        }
        Effect::PinPoint { set, cut } => {
            host.pin_point(&set, cut)?;
            if let Err(e) = install(host, new) {
                host.unpin_point(&set, cut);
                return Err(e.into());
            }
            Ok(None)
        }
        Effect::UnpinPoint { set, cut } => {
            install(host, new)?;
            host.unpin_point(&set, cut);
            Ok(None)
        }
        Effect::DeleteVolume { name, spec } => {
            volume::commit_delete(host, new, &name, &spec)?;
            Ok(None)
        }
        Effect::CreateSnapshot { name } => snapshot::commit_create(host, new, &name).map(Some),
        Effect::DeleteSnapshot { name, volumes, cut } => {
            snapshot::commit_delete(host, new, &name, &volumes, cut)?;
            Ok(None)
        }
        Effect::CreateReplication { name } => {
            replication::commit_create(host, new, &name).map(Some)
        }
        Effect::DeleteReplication { name, spec, force } => {
            replication::commit_delete(host, new, &name, spec, force)?;
            Ok(None)
        }
        Effect::ModifyReplication { name, keep, codec } => {
            replication::commit_modify(host, new, &name, keep, codec)?;
            Ok(None)
        }
        Effect::UpdatePeer {
            name,
            accept_new_key,
        } => {
            let pinned = if accept_new_key {
                Some(peer::commit_accept_new_key(host, new, &name)?)
            } else {
                install(host, new)?;
                None
            };
            host.peer_updated(&name);
            Ok(pinned)
        }
    }
}

/// Saves `new` atomically, then makes it the live catalog.
fn install<H: Host + ?Sized>(host: &H, new: Catalog) -> Result<(), StoreError> {
    store::save(host.data_dir(), &new)?;
    *host.catalog().write() = new;
    Ok(())
}

fn done(message: String) -> Response {
    Response::Done { message }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn concurrent_changes_are_serialized() {
        let f = Fake::new();
        std::thread::scope(|sc| {
            for t in 0..4 {
                let f = &f;
                sc.spawn(move || {
                    for i in 0..8 {
                        let r = apply(f, vcreate(&format!("v{t}-{i}"), 4096, 512).into());
                        assert!(!r.is_error(), "{r:?}");
                    }
                });
            }
        });
        assert_eq!(f.catalog.read().volumes.len(), 33);
        assert_eq!(*f.catalog.read(), f.on_disk());
        assert_eq!(f.open.lock().len(), 33);
    }
}
