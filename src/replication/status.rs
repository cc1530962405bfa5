//! What a replication set reports about itself: its state and its cycles, as typed
//! values. The admin layer shows them; nothing here knows how.

use serde::{Deserialize, Serialize};

use crate::catalog::Compression;

/// Where a set stands (`replication show`'s `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetState {
    /// No cut has reached the peer in this generation yet.
    #[default]
    Unsynchronized,
    /// `restart` asked: the secondary drops its recovery points, then a full cycle.
    StartReplication,
    /// A cycle is running.
    Replicating,
    /// The peer holds a consistent cut (on a secondary: it has a recovery point).
    Ready,
    /// `suspend`ed: no cycle runs until `resume`.
    Suspended,
    /// The last cycle failed; a retry is due.
    Error,
    /// Promoted here (failover): nothing ships until `failback` makes the old primary
    /// the secondary.
    Promoted,
    /// The peer was promoted: this side is the old primary; no cycle runs.
    PeerPromoted,
    /// Both sides took writes after their common cut: nothing runs until `resolve`.
    SplitBrain,
}

impl SetState {
    /// The name an admin reads and types.
    pub fn as_str(self) -> &'static str {
        match self {
            SetState::Unsynchronized => "unsynchronized",
            SetState::StartReplication => "start-replication",
            SetState::Replicating => "replicating",
            SetState::Ready => "ready",
            SetState::Suspended => "suspended",
            SetState::Error => "error",
            SetState::Promoted => "promoted",
            SetState::PeerPromoted => "peer-promoted",
            SetState::SplitBrain => "split-brain",
        }
    }
}

impl std::fmt::Display for SetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes one cycle shipped, by kind. Saved in the primary's state file: fields added
/// later default to 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleStats {
    pub cut_id: u64,
    /// Page content shipped (as read, before any compression).
    pub data_bytes: u64,
    /// Bytes that page content took on the wire (compressed or not): `data_bytes`
    /// over this is the compression ratio. 0 in cycles recorded before it existed.
    #[serde(default)]
    pub wire_data_bytes: u64,
    /// The codec data extents were offered to (`none` when the set does not compress
    /// or the peer does not decode it); extents it did not shrink travelled as read.
    #[serde(default)]
    pub compress: Compression,
    /// Bytes of zero/discard records (their headers: the zeros do not travel).
    pub record_bytes: u64,
    /// Framing, extent headers and control messages.
    pub overhead_bytes: u64,
    /// Bytes the zero records stand for.
    pub zero_bytes: u64,
    pub seconds: f64,
    pub full: bool,
    /// Attempts it took (a cut cut off midway resumes in the next attempt).
    #[serde(default)]
    pub attempts: u32,
    /// Data bytes the last attempt shipped (less than `data_bytes` when it resumed
    /// what an earlier attempt had staged on the peer).
    #[serde(default)]
    pub final_attempt_data_bytes: u64,
}

// Durations are finite numbers, never NaN: equality is total.
impl Eq for CycleStats {}

/// How far the running cycle is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleProgress {
    pub cut_id: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
}

// Rates and durations are finite numbers, never NaN: equality is total.
impl Eq for CycleProgress {}

/// A status transition: when (Unix seconds) and into what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub at_unix: u64,
    pub state: SetState,
}

/// The runtime status of one set, as the set itself knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetStatus {
    pub state: SetState,
    pub generation: u64,
    /// The last cut the peer committed (on a secondary: its current recovery point).
    pub last_cut: Option<u64>,
    pub last_cut_unix: Option<u64>,
    pub cycles: u64,
    pub last_cycle: Option<CycleStats>,
    pub progress: Option<CycleProgress>,
    /// Wire bytes per second over the last seconds, while a cycle ships.
    pub current_rate: Option<u64>,
    /// Requests waiting (queue-latest keeps at most one).
    pub queued: u32,
    /// Why the last cycle failed, with its causes.
    pub error: Option<String>,
    pub next_retry_unix: Option<u64>,
    /// Status transitions, oldest first.
    pub events: Vec<StateChange>,
    /// This side's promote, which forked the set's history.
    pub fork: Option<super::wire::Fork>,
    /// The peer's promote, as the peer told this side (the old primary).
    pub peer_fork: Option<super::wire::Fork>,
    /// Pages this side wrote since its last committed cut, while a promote is unsettled
    /// (what a failback keeps aside on the old primary, or ships from the new one).
    pub pages_since_fork: Option<u64>,
}
