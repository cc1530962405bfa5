//! Asynchronous replication to a peer twinlun (DESIGN.md, "Replication").
//!
//! - `wire`: the peer protocol (frames, control messages, extents, secret proofs).
//! - `compress`: the codecs data extents may travel in (zstd, LZ4).
//! - `peer`: the client end of a peer connection (connect, authenticate, requests).
//! - `idle`: bounds on silent peer connections (read limits, TCP keepalive).
//! - `rate`: the token buckets of `--max-rate` (per set, per peer) and the rate meter.
//! - `readahead`: the listener's read buffer under TLS, made once a peer authenticated.
//! - `sender`: the primary side of a set: cycles of cuts shipped to the peer.
//! - `listener`: the secondary side: authenticated connections applying cuts.
//! - `recovery`: the secondary's staging log, undo logs and recovery points.
//! - `views`: recovery points pinned and read in place by DR drill LUNs.
//! - `tls`: the link's TLS 1.3: this node's key, the verifiers, fingerprints, the
//!   channel binding the secret proofs cover.
//! - `sets`: every set of the node (primaries, secondaries, schedules), `host`: what
//!   replication needs of the node, `status`: what a set reports.

pub mod compress;
pub mod host;
pub mod idle;
pub mod listener;
pub mod pace;
pub mod peer;
pub mod rate;
pub mod readahead;
pub mod recovery;
pub mod sender;
pub mod sets;
pub mod status;
pub mod tls;
pub mod views;
pub mod wire;

pub use host::Host;
pub use sets::{Control, Sets};

use wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot reach peer '{peer}' at {addr}")]
    Connect {
        peer: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Also what a build before TLS (plaintext) makes of our TLS: it closes.
    #[error("talking to peer '{peer}': the TLS handshake failed")]
    Handshake {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS link with peer '{peer}'")]
    Link {
        peer: String,
        #[source]
        source: tls::LinkError,
    },
    #[error("this node's TLS identity")]
    Identity(#[source] std::sync::Arc<tls::TlsError>),
    #[error("peer '{peer}' presented TLS key {presented}, but {pinned} is pinned: refused. If the peer's key was regenerated on purpose, run `twinlun ctl peer update {peer} --accept-new-key` on this node")]
    KeyChanged {
        peer: String,
        pinned: String,
        presented: String,
    },
    #[error("peer '{peer}' refused our proof of the secret: authentication failed (are the secrets the same on both sides?)")]
    AuthRefused { peer: String },
    #[error("peer '{peer}' did not prove it knows the secret: authentication failed")]
    PeerUnproven { peer: String },
    #[error("peer '{peer}' speaks replication protocol version {theirs}; this node speaks {ours}")]
    Version {
        peer: String,
        theirs: u32,
        ours: u32,
    },
    #[error("talking to peer '{peer}'")]
    Wire {
        peer: String,
        #[source]
        source: WireError,
    },
    #[error("peer '{peer}' refused: {message}")]
    Remote {
        peer: String,
        code: wire::ErrorCode,
        message: String,
    },
    #[error("peer '{peer}' answered out of turn")]
    Unexpected { peer: String },
    #[error("peer '{peer}' did not answer within {secs} s")]
    Timeout { peer: String, secs: u64 },
    #[error("replication does not run on this node")]
    Unavailable,
    #[error("replication set '{0}' is not a primary set running here")]
    NotPrimary(String),
    #[error("replication set '{0}' is not a secondary set here")]
    NotSecondary(String),
    #[error("replication set '{set}': recovery points {points} are in use by DR drills here (drill LUNs or clones); `lun unmap` the LUNs and `volume delete` the clones first")]
    PointsPinned { set: String, points: String },
    #[error("a cycle of '{0}' is running and its queue policy is discard: the request is dropped")]
    Discarded(String),
    #[error("cannot take the cut")]
    Cut(#[source] Box<crate::tracking::CutError>),
    #[error("cannot find the allocated extents of volume '{volume}'")]
    Read {
        volume: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading volume '{volume}'")]
    ReadVolume {
        volume: String,
        #[source]
        source: Box<crate::volume::VolumeError>,
    },
    #[error("reading the cut of volume '{volume}'")]
    Snapshot {
        volume: String,
        #[source]
        source: Box<crate::tracking::TrackingError>,
    },
    #[error("the replication set is stopping")]
    Stopping,
    #[error("compressing extents")]
    Encode(#[source] tokio::task::JoinError),
    #[error("peer '{peer}' does not decode {codec} (an older build?): the set's compression stays as it is")]
    Codec {
        peer: String,
        codec: crate::catalog::Compression,
    },
    #[error("replication set '{0}' is suspended (`resume` it first)")]
    Suspended(String),
    #[error("no cycle of '{0}' is running")]
    NotRunning(String),
    #[error("recovery store of set '{set}'")]
    Recovery {
        set: String,
        #[source]
        source: Box<recovery::RecoveryError>,
    },
    #[error("peer '{peer}' was promoted at cut {} of this side's generation: this side is the old primary and ships nothing more (`failback` makes it the secondary)", fork.cut)]
    PeerPromoted { peer: String, fork: wire::Fork },
    #[error("replication set '{0}' was promoted here: it ships nothing until `failback {0}` makes the old primary its secondary")]
    AwaitingFailback(String),
    #[error("replication set '{set}': its peer was promoted at cut {cut}; run `failback {set}` (its writes since then are kept aside) or `resolve`")]
    PeerWasPromoted { set: String, cut: u64 },
    #[error("replication set '{0}' was not promoted here (or has failed back already): `failback` runs on the promoted side")]
    NotPromoted(String),
    #[error("split brain in '{set}': both sides wrote after their common cut {}; nothing resumes until `resolve {set} --keep local|peer`", fork.cut)]
    SplitBrain { set: String, fork: wire::Fork },
    #[error("switchover: {0}")]
    Fence(String),
    #[error("peer '{peer}' closed the connection when asked to change the volumes of set '{set}': a build without membership changes? Nothing changed; update the peer, or delete and create the set again")]
    MembersUnsupported { peer: String, set: String },
    #[error("cannot save the state of replication set '{set}'")]
    State {
        set: String,
        #[source]
        source: std::io::Error,
    },
}
