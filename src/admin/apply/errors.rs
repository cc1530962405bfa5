//! Why a request was refused, and the one place each reason gets its wire code.
//!
//! Every match below names every variant of the error it maps, down to the errors of
//! the layers it wraps (replication, cuts, the recovery store): a new variant does not
//! compile until it is given a code. `Io` is the code of local failures (a file, an
//! fsync, the recovery store); `Unreachable` is only for a peer that cannot be reached
//! or stops answering.

use std::path::PathBuf;

use super::super::protocol::{ErrorCode, Response};
use super::super::store::StoreError;
use super::super::validate::ValidationError;
use super::TakeSnapshotError;
use crate::replication::recovery::RecoveryError;
use crate::replication::ReplicationError;
use crate::tracking::CutError;
use crate::volume::VolumeError;

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
    #[error("replication set '{set}' replicates volume '{volume}', not a group: only a group set changes its volumes through restart (replicate a group to grow it later)")]
    NotAGroupSet { set: String, volume: String },
    #[error("volume '{0}' is named twice in --add-volume/--remove-volume")]
    MemberTwice(String),
    #[error("the change would leave replication set '{set}' (group '{group}') with no volume; a set keeps at least one (delete the set to stop replicating)")]
    SetEmptied { set: String, group: String },
    #[error("no secondary replication set holds {0}")]
    NotASecondary(String),
    #[error("'{0}' names no recovery point: give VOLUME@rp:ID, ID one of those `recovery-points SET` lists on this secondary")]
    BadPointRef(String),
    /// A group is promoted whole, at one cut, or not at all.
    #[error(
        "volume '{volume}' belongs to group '{group}' of set '{set}': promote --group {group}"
    )]
    PromoteGrouped {
        volume: String,
        group: String,
        set: String,
    },
    #[error("replication set '{0}' has no committed cut here yet: its volumes are not a consistent image of the primary, so they cannot be promoted; let a replication cycle finish first")]
    NoCommittedCut(String),
    #[error("replication modify '{0}': nothing to change (give --every or --no-every, --keep, --queue-policy, --max-rate or --no-max-rate, or --compress)")]
    NothingToModify(String),
    #[error("replication set '{0}' is the secondary side here: modify it on its primary, which tells this side what it needs")]
    ModifyOnSecondary(String),
    #[error(
        "peer update '{0}': nothing to change (give --max-rate, --no-max-rate or --accept-new-key)"
    )]
    NothingToUpdate(String),
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
    #[error("volume '{volume}' is a copy-on-write clone of {from} (a DR drill): it cannot be replicated")]
    CloneNotReplicated { volume: String, from: String },
    #[error("replication set '{set}' has recovery points in use by DR drills here ({luns}); `lun unmap` the LUNs and `volume delete` the clones first")]
    DrillLuns { set: String, luns: String },
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
    /// The catalog holds a value a TOML file cannot carry (`ctl config export`).
    #[error("cannot write the configuration as TOML: {0}")]
    Export(#[source] toml::ser::Error),
}

impl AdminError {
    /// The wire code of this refusal. Every match here names every variant: a new error
    /// does not compile until it has its code.
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
            | AdminError::DrillLuns { .. }
            | AdminError::CloneNotReplicated { .. }
            | AdminError::InOtherGroup { .. }
            | AdminError::VolumeGrouped { .. }
            | AdminError::LastInGroup { .. }
            | AdminError::GroupReplicated { .. }
            | AdminError::VolumeHasSnapshots { .. }
            | AdminError::SnapshotMapped { .. }
            | AdminError::PeerInUse { .. }
            | AdminError::ReplicateGroup { .. }
            | AdminError::PromoteGrouped { .. }
            | AdminError::AlreadyReplicated { .. }
            | AdminError::SecondaryVolume { .. }
            | AdminError::VolumeReplicated { .. } => ErrorCode::InUse,
            AdminError::Replication(e) => replication_code(e),
            AdminError::RestartUnconfirmed(_)
            | AdminError::NotAGroupSet { .. }
            | AdminError::MemberTwice(_)
            | AdminError::SetEmptied { .. }
            | AdminError::NothingToModify(_)
            | AdminError::ModifyOnSecondary(_)
            | AdminError::NothingToUpdate(_)
            | AdminError::NoCommittedCut(_)
            | AdminError::BadPointRef(_)
            | AdminError::Export(_) => ErrorCode::Invalid,
            AdminError::NotASecondary(_) | AdminError::NoTask(_) => ErrorCode::NotFound,
            AdminError::TaskExists(_) => ErrorCode::AlreadyExists,
            AdminError::SetScheduled { .. } => ErrorCode::InUse,
            AdminError::TargetBusy { .. } => ErrorCode::Busy,
            AdminError::TakeSnapshot { source, .. } => take_snapshot_code(source),
            AdminError::CreateFile { .. } | AdminError::OpenVolume { .. } | AdminError::Save(_) => {
                ErrorCode::Io
            }
        }
    }
}

fn replication_code(e: &ReplicationError) -> ErrorCode {
    match e {
        ReplicationError::AuthRefused { .. }
        | ReplicationError::PeerUnproven { .. }
        | ReplicationError::KeyChanged { .. }
        | ReplicationError::Link { .. }
        | ReplicationError::Remote {
            code: crate::replication::wire::ErrorCode::KeyChanged,
            ..
        } => ErrorCode::AuthFailed,
        // The peer cannot be reached, speaks another protocol, or stopped answering
        // as it should.
        ReplicationError::Connect { .. }
        | ReplicationError::Version { .. }
        | ReplicationError::Wire { .. }
        | ReplicationError::Unexpected { .. }
        | ReplicationError::Timeout { .. }
        | ReplicationError::Handshake { .. } => ErrorCode::Unreachable,
        ReplicationError::Remote { .. }
        | ReplicationError::Codec { .. }
        | ReplicationError::PeerPromoted { .. }
        | ReplicationError::Fence(_)
        | ReplicationError::MembersUnsupported { .. } => ErrorCode::Refused,
        ReplicationError::PointsPinned { .. } => ErrorCode::InUse,
        // A promote on one side is unsettled: `failback` or `resolve` first.
        ReplicationError::AwaitingFailback(_)
        | ReplicationError::PeerWasPromoted { .. }
        | ReplicationError::NotPromoted(_)
        | ReplicationError::SplitBrain { .. } => ErrorCode::Invalid,
        // Try again later: a cycle runs, the set is suspended or stopping.
        ReplicationError::Discarded(_)
        | ReplicationError::Suspended(_)
        | ReplicationError::Stopping => ErrorCode::Busy,
        ReplicationError::NotRunning(_) => ErrorCode::NotFound,
        // Asked of a node or set that does not do it.
        ReplicationError::Unavailable
        | ReplicationError::NotPrimary(_)
        | ReplicationError::NotSecondary(_) => ErrorCode::Invalid,
        ReplicationError::Cut(e) => cut_code(e),
        ReplicationError::Recovery { source, .. } => recovery_code(source),
        // Local failures: reading a volume or its cut, compressing, saving state.
        ReplicationError::Read { .. }
        | ReplicationError::ReadVolume { .. }
        | ReplicationError::Snapshot { .. }
        | ReplicationError::Encode(_)
        | ReplicationError::Identity(_)
        | ReplicationError::State { .. } => ErrorCode::Io,
    }
}

fn take_snapshot_code(e: &TakeSnapshotError) -> ErrorCode {
    match e {
        TakeSnapshotError::NotOpen(_) | TakeSnapshotError::NoTracking(_) => ErrorCode::Io,
        TakeSnapshotError::Cut(e) => cut_code(e),
    }
}

fn cut_code(e: &CutError) -> ErrorCode {
    match e {
        // Writes did not drain in time, or another cut holds a gate: try again.
        CutError::Gate { .. } => ErrorCode::Busy,
        CutError::EmptyGroup | CutError::DuplicateVolume { .. } | CutError::Snapshot { .. } => {
            ErrorCode::Io
        }
    }
}

/// A secondary's recovery store, as an admin request meets it (promote, rolling back).
fn recovery_code(e: &RecoveryError) -> ErrorCode {
    match e {
        RecoveryError::UnknownPoint { .. } => ErrorCode::NotFound,
        RecoveryError::Retired => ErrorCode::Busy,
        // The store's files, and the extents and cuts it refuses from a primary (which
        // the primary sees as the peer's refusal): here, a local failure.
        RecoveryError::Io { .. }
        | RecoveryError::StateFile { .. }
        | RecoveryError::Corrupt { .. }
        | RecoveryError::VolumesChanged { .. }
        | RecoveryError::NoSuchVolume { .. }
        | RecoveryError::OutOfRange { .. }
        | RecoveryError::EmptyExtent { .. }
        | RecoveryError::CrcMismatch { .. }
        | RecoveryError::StaleGeneration { .. }
        | RecoveryError::StaleCut { .. }
        | RecoveryError::NeedsNewGeneration { .. }
        | RecoveryError::NotStaging => ErrorCode::Io,
        #[cfg(test)]
        RecoveryError::InjectedCrash => ErrorCode::Io,
    }
}

impl From<AdminError> for Response {
    /// The message carries every cause once, innermost last: `recovery store of set
    /// 'r'` alone does not say that the recovery point asked for does not exist.
    fn from(e: AdminError) -> Response {
        Response::error(e.code(), crate::chain::ErrorChain(&e).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::GateError;

    fn io() -> std::io::Error {
        std::io::Error::other("disk on fire")
    }

    fn code(e: ReplicationError) -> ErrorCode {
        AdminError::Replication(e).code()
    }

    #[test]
    fn local_failures_are_io_and_only_peers_are_unreachable() {
        let set = || "r".to_string();
        assert_eq!(
            code(ReplicationError::State {
                set: set(),
                source: io()
            }),
            ErrorCode::Io
        );
        let recovery = |e| ReplicationError::Recovery {
            set: set(),
            source: Box::new(e),
        };
        let fsync = RecoveryError::Io {
            path: PathBuf::from("undo.log"),
            source: io(),
        };
        assert_eq!(code(recovery(fsync)), ErrorCode::Io);
        assert_eq!(
            code(recovery(RecoveryError::UnknownPoint { cut: 7 })),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(ReplicationError::Read {
                volume: "v".into(),
                source: io()
            }),
            ErrorCode::Io
        );
        assert_eq!(
            code(ReplicationError::Connect {
                peer: "p".into(),
                addr: "192.0.2.1:3261".into(),
                source: io()
            }),
            ErrorCode::Unreachable
        );
        assert_eq!(
            code(ReplicationError::Timeout {
                peer: "p".into(),
                secs: 30
            }),
            ErrorCode::Unreachable
        );
        assert_eq!(code(ReplicationError::Stopping), ErrorCode::Busy);
        assert_eq!(code(ReplicationError::Unavailable), ErrorCode::Invalid);
    }

    #[test]
    fn a_busy_gate_is_busy_wherever_the_cut_was_taken() {
        let gate = || CutError::Gate {
            volume: "v".into(),
            source: GateError::AlreadyClosed,
        };
        assert_eq!(
            code(ReplicationError::Cut(Box::new(gate()))),
            ErrorCode::Busy
        );
        let snapshot = |source| AdminError::TakeSnapshot {
            name: "s".into(),
            source,
        };
        assert_eq!(
            snapshot(TakeSnapshotError::Cut(gate())).code(),
            ErrorCode::Busy
        );
        assert_eq!(
            snapshot(TakeSnapshotError::Cut(CutError::EmptyGroup)).code(),
            ErrorCode::Io
        );
        assert_eq!(
            snapshot(TakeSnapshotError::NotOpen("v".into())).code(),
            ErrorCode::Io
        );
    }
}
