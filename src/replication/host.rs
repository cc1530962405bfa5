//! What replication needs from the node that runs it, and nothing more: the catalog
//! (plain data, read only), the open volumes, the node-wide cut coordinator, and the
//! catalog changes a primary asks of its secondary. The composition root
//! (`crate::node`) implements it; tests can implement it with a fake.

use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use super::tls::Tls;
use super::wire::{MemberVolume, RemoteVolume};
use super::ReplicationError;
use crate::catalog::Catalog;
use crate::tracking::CutCoordinator;
use crate::volume::Volume;

/// Why the node refused a catalog change a peer asked for; its message goes back to
/// the peer as it is.
pub type ChangeRefused = Box<dyn std::error::Error + Send + Sync>;

/// A primary asks this node to hold the secondary side of a new set.
#[derive(Debug, Clone)]
pub struct SecondaryRequest {
    pub set: String,
    /// The peer (as this node names it) that asked, which owns the set from now on.
    pub peer: String,
    /// The group the primary replicates, if it replicates one.
    pub group: Option<String>,
    pub volumes: Vec<RemoteVolume>,
    /// Recovery points to keep.
    pub keep: u32,
}

/// A primary restarts replication of a group set with other volumes: this node's side
/// of the set gains `add` and loses `remove` (its own names) and starts `generation`
/// with no recovery point.
#[derive(Debug, Clone)]
pub struct MembersRequest {
    pub set: String,
    pub generation: u64,
    pub add: Vec<MemberVolume>,
    pub remove: Vec<String>,
}

pub trait Host: Send + Sync + 'static {
    /// The node's data dir: sets keep their state under `replication/SET-ID/`.
    fn data_dir(&self) -> &Path;
    /// The catalog: sets, peers and volumes. Read only here; changes go through the
    /// methods below.
    fn catalog(&self) -> &RwLock<Catalog>;
    /// An open volume, by name.
    fn volume(&self, name: &str) -> Option<Arc<Volume>>;
    /// Hands out cut ids node-wide (snapshots and sets never share one) and serializes
    /// cuts.
    fn cuts(&self) -> &CutCoordinator;
    /// Creates the secondary side of a set: its volumes (and group) and the set, saved
    /// in the catalog. Blocking (it fsyncs).
    fn accept_secondary(&self, req: SecondaryRequest) -> Result<(), ChangeRefused>;
    /// The primary deleted a set: its secondary side goes; the volumes stay. Blocking.
    fn drop_secondary(&self, set: &str) -> Result<(), ChangeRefused>;
    /// Failback reached the old primary: keep each volume's content aside when `keep`
    /// (a copy, named after the fork's `cut`), map the set's LUNs read-only and make the set a
    /// secondary in the catalog. Returns the kept volumes' names.
    fn demote(&self, set: &str, cut: u64, keep: bool) -> Result<Vec<String>, ChangeRefused>;
    /// Switchover: the set's writable LUNs become read-only; returns them (target, LUN).
    fn fence(&self, set: &str) -> Result<Vec<(String, u64)>, ChangeRefused>;
    /// A switchover that could not finish: those LUNs take writes again.
    fn unfence(&self, luns: &[(String, u64)]) -> Result<(), ChangeRefused>;
    /// Switchover reached the secondary: promote at exactly `fork.cut`, not held.
    fn promote_switchover(&self, set: &str, fork: super::wire::Fork) -> Result<(), ChangeRefused>;
    /// Changes the membership of a secondary set (`restart --add-volume/--remove-volume`
    /// on its primary): the whole change is checked against the catalog first, and a
    /// refusal changes nothing; then `reset` drops the set's recovery points (the
    /// store's volumes change, so none of them can be rolled back to), the new volumes
    /// are created, the catalog saved and the set's store reopened over its new
    /// volumes. Blocking.
    fn restart_secondary_members(
        &self,
        req: &MembersRequest,
        reset: &mut dyn FnMut() -> Result<(), ReplicationError>,
    ) -> Result<(), ChangeRefused>;
    /// The time the reads and writes initiators have completed on this node's volumes
    /// so far spent in the target (command arrival to completion), summed, in
    /// nanoseconds: a cycle gives way to them as it grows. A host that does not count
    /// (a test's) keeps it at 0, and its cycles never give way.
    fn foreground_io_nanos(&self) -> u64 {
        0
    }
    /// The primary changed how many recovery points the secondary keeps (saved in the
    /// catalog; the next commit prunes to it). Blocking.
    fn modify_secondary(&self, set: &str, keep: u32) -> Result<(), ChangeRefused>;
    /// This node's TLS identity (`DATA_DIR/tls/`), the same for every connection.
    fn tls(&self) -> Result<Arc<Tls>, ReplicationError>;
    /// Records `fingerprint` as the pinned key of `peer` if it has none yet: the first
    /// authenticated contact. Returns at once; the catalog is saved in the background,
    /// after any admin change in progress (which may be the one making this contact).
    fn pin_peer_key(&self, peer: &str, fingerprint: &str);
}
