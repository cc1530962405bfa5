//! The admin socket protocol: one JSON object per line each way.
//!
//! A request is an object tagged by `cmd`; a response is an object tagged by `result`.
//! In Rust a request is a `Query`, a `Change` or an `Action` (see `Request`); on the wire
//! its kind does not show.
//! Secrets go in (`chap_set`) but never come back out.
//!
//! | request (`cmd` and fields)                                   | response `result`          |
//! |--------------------------------------------------------------|----------------------------|
//! | `status`                                                     | `status` (StatusView)      |
//! | `volume_create` name, size (bytes or "10G"), block_size=512, | `volume` (VolumeView)      |
//! |   page_size=4096 (bytes or "64K": tracking page, 4K..1M)     |                            |
//! | `volume_list`                                                | `volumes` {volumes: [..]}  |
//! | `volume_show` name                                           | `volume`                   |
//! | `volume_delete` name                                         | `done` {message}           |
//! | `group_create` name, volumes (one or more, in order)         | `group` (GroupView)        |
//! | `group_list`                                                 | `groups` {groups: [..]}    |
//! | `group_show` name                                            | `group`                    |
//! | `group_add` / `group_remove` name, volume                    | `group`                    |
//! | `group_delete` name                                          | `done`                     |
//! | `target_create` iqn                                          | `target` (TargetView)      |
//! | `target_list`                                                | `targets` {targets: [..]}  |
//! | `target_show` iqn                                            | `target`                   |
//! | `target_delete` iqn                                          | `done`                     |
//! | `lun_map` iqn, lun, volume, read_only=false, removable=false | `done`                     |
//! | `lun_unmap` iqn, lun                                         | `done`                     |
//! | `acl_add` / `acl_remove` iqn, initiator                      | `done`                     |
//! | `chap_set` iqn, user, secret, mutual_user?, mutual_secret?   | `done`                     |
//! | `chap_clear` iqn                                             | `done`                     |
//! | `session_list`                                               | `sessions` {sessions: [..]}|
//! | `snapshot_create` name, volume XOR group                     | `snapshot` (SnapshotView)  |
//! | `snapshot_list`                                              | `snapshots` {snapshots: [..]}|
//! | `snapshot_show` name                                         | `snapshot`                 |
//! | `snapshot_delete` name                                       | `done`                     |
//! | `peer_create` name, addr, secret, max_rate?                  | `peer` (PeerView)          |
//! | `peer_update` name, max_rate? ("50M"; "none": no cap),       | `done`                     |
//! |   accept_new_key?                                            |                            |
//! | `peer_list` / `peer_check` name / `peer_delete` name         | `peers` / `peer_check` / `done` |
//! | `peer_show` name                                             | `peer` (PeerView)          |
//! | `replication_create` name, volume XOR group, peer, every?,   | `replication`              |
//! |   queue_policy?, keep?, target_prefix?, compress?, max_rate? |                            |
//! | `replication_modify` name, every? ("none"), keep?,           | `done`                     |
//! |   queue_policy?, max_rate? ("none"), compress?               |                            |
//! | `replication_list` / `replication_show` name                 | `replications` / `replication` |
//! | `replication_delete` name                                    | `done`                     |
//! | `replicate` name                                             | `done`                     |
//! | `recovery_points` name (on the secondary)                    | `recovery_points`          |
//! | `events` (a stream: see below)                               | `event`, one line each     |
//! | `port_group_set` group (1 = first portal), state (`active-   | `done`                     |
//! |   optimized`, `active-non-optimized`, `standby`, `unavailable`)|                          |
//!
//! `events` turns the connection into a stream until either side closes it: no more
//! requests are read, and the server writes one `{"result":"event","at_unix_ms":MS,
//! "kind":KIND,...}` line per state change (`crate::events::EventKind`: the kinds and
//! their fields). The first line is `kind` `subscribed`: every event after it reaches
//! this reader. A reader slower than the events gets `kind` `lagged` with the number
//! it `missed`, never holds up the node.
//!
//! Any request may instead get `{"result":"error","code":CODE,"message":TEXT}`, CODE one
//! of `ErrorCode` in snake_case. Examples:
//!
//! ```text
//! > {"cmd":"volume_create","name":"db","size":"10G","block_size":4096}
//! < {"result":"volume","name":"db","size":10737418240,"block_size":4096,"page_size":4096,"id":"dfb187fcb7ea5ce4","path":"volumes/dfb187fcb7ea5ce4.img","allocated":0,"group":null,"mappings":[]}
//! > {"cmd":"group_create","name":"app","volumes":["db","logs"]}
//! < {"result":"group","name":"app","volumes":["db","logs"],"size":11811160064,"replication_set":null}
//! > {"cmd":"volume_delete","name":"demo"}
//! < {"result":"error","code":"in_use","message":"volume 'demo' is mapped (iqn.2026-11.io.twinlun:demo LUN 0); unmap it first"}
//! ```

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::validate::{de_size, default_block_size};

use crate::iscsi::SessionInfo;

/// Longest request line the server reads, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Every request name, as spelled in `cmd`; lets the server tell an unknown command
/// from a known one with bad arguments.
pub const COMMANDS: &[&str] = &[
    "status",
    "volume_create",
    "volume_list",
    "volume_show",
    "volume_delete",
    "volume_clone",
    "group_create",
    "group_list",
    "group_show",
    "group_add",
    "group_remove",
    "group_delete",
    "target_create",
    "target_list",
    "target_show",
    "target_delete",
    "lun_map",
    "lun_unmap",
    "acl_add",
    "acl_remove",
    "chap_set",
    "chap_clear",
    "session_list",
    "snapshot_create",
    "snapshot_list",
    "snapshot_show",
    "snapshot_delete",
    "peer_create",
    "peer_list",
    "peer_check",
    "peer_show",
    "peer_update",
    "peer_delete",
    "replication_create",
    "replication_modify",
    "replication_list",
    "replication_show",
    "replication_delete",
    "replicate",
    "recovery_points",
    "restart",
    "suspend",
    "resume",
    "abort",
    "promote",
    "failback",
    "switchover",
    "resolve",
    "schedule_add",
    "schedule_list",
    "schedule_modify",
    "schedule_delete",
    "config_export",
    "port_group_set",
];

/// Requests that turn the connection into a stream (`Stream`): not in `COMMANDS`,
/// whose requests get exactly one response each.
pub const STREAMS: &[&str] = &["events"];

/// A streaming request: after it the server only writes, one line per item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stream {
    /// State changes as they happen (`ctl events`).
    Events,
}

/// One line of an `events` stream: the event tagged `"result":"event"`, like every
/// other line the server writes.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    pub result: &'static str,
    #[serde(flatten)]
    pub event: &'a crate::events::Event,
}

impl<'a> EventLine<'a> {
    pub fn new(event: &'a crate::events::Event) -> EventLine<'a> {
        EventLine {
            result: "event",
            event,
        }
    }
}

/// A CHAP secret: serialized as a plain string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A request: what it reads, changes or sets going decides how `apply` carries it out.
/// On the wire it is one object tagged by `cmd` whatever its kind (`{"cmd":"status"}`):
/// the kinds exist for the compiler, so that each handler matches its own kind whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Request {
    Query(Query),
    Change(Change),
    Action(Action),
}

/// Reads the catalog and the running node; changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    Status,
    VolumeList,
    VolumeShow {
        name: String,
    },
    GroupList,
    GroupShow {
        name: String,
    },
    TargetList,
    TargetShow {
        iqn: String,
    },
    SessionList,
    SnapshotList,
    SnapshotShow {
        name: String,
    },
    PeerList,
    /// The peer's address, pinned key, sets, and its last authenticated link.
    PeerShow {
        name: String,
    },
    /// Connects, proves the secret both ways, reports version and round-trip time.
    PeerCheck {
        name: String,
    },
    ReplicationList,
    ReplicationShow {
        name: String,
    },
    /// On the secondary: the set's recovery points.
    RecoveryPoints {
        name: String,
    },
    ScheduleList,
    /// The node's configuration as a `serve --config` file (`admin::export`); secrets
    /// are masked unless `with_secrets`.
    ConfigExport {
        #[serde(default)]
        with_secrets: bool,
    },
}

/// Changes the catalog: validated on a copy, saved, then swapped in (`apply::change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    VolumeCreate {
        name: String,
        /// Bytes; on the wire also accepted as a string with a unit ("10G").
        #[serde(deserialize_with = "de_size")]
        size: u64,
        #[serde(default = "default_block_size")]
        block_size: u32,
        /// Tracking page size in bytes (checked by `apply`: 4K..1M, a power of two); on
        /// the wire also accepted as a string with a unit ("64K").
        #[serde(default = "default_page_size", deserialize_with = "de_size")]
        page_size: u64,
        /// "thin" (default) or "thick" (preallocated, fully provisioned).
        #[serde(default, skip_serializing_if = "crate::catalog::Provisioning::is_thin")]
        provisioning: crate::catalog::Provisioning,
        /// Offer SANITIZE on the volume's LUNs.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_sanitize: bool,
    },
    VolumeDelete {
        name: String,
    },
    GroupCreate {
        name: String,
        /// Member volumes, in cut order. Missing or empty is refused (`invalid`).
        #[serde(default)]
        volumes: Vec<String>,
    },
    GroupAdd {
        name: String,
        volume: String,
    },
    GroupRemove {
        name: String,
        volume: String,
    },
    GroupDelete {
        name: String,
    },
    TargetCreate {
        iqn: String,
    },
    TargetDelete {
        iqn: String,
    },
    LunMap {
        iqn: String,
        lun: u64,
        /// A volume, or `VOLUME@SNAPSHOT` for a snapshot (always mapped read-only).
        volume: String,
        #[serde(default)]
        read_only: bool,
        /// A removable medium: INQUIRY RMB, START STOP UNIT ejects and loads it.
        #[serde(default)]
        removable: bool,
    },
    LunUnmap {
        iqn: String,
        lun: u64,
    },
    AclAdd {
        iqn: String,
        initiator: String,
    },
    AclRemove {
        iqn: String,
        initiator: String,
    },
    ChapSet {
        iqn: String,
        user: String,
        secret: Secret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mutual_user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mutual_secret: Option<Secret>,
    },
    ChapClear {
        iqn: String,
    },
    /// A point-in-time snapshot of one volume or of every volume of a group at one
    /// instant. Exactly one of `volume` and `group`.
    SnapshotCreate {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        volume: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    SnapshotDelete {
        name: String,
    },
    /// Another twinlun's replication listener and the secret both sides share.
    PeerCreate {
        name: String,
        addr: String,
        secret: Secret,
        /// Cap on what all sets to this peer send together ("50M": bytes/s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_rate: Option<String>,
    },
    PeerDelete {
        name: String,
    },
    /// Changes what is given of a peer (`PeerUpdate`): each field given changes, the
    /// others stay.
    PeerUpdate(PeerUpdate),
    /// Binds a volume or a group (exactly one) to a peer; creates the secondary volumes
    /// on the peer.
    ReplicationCreate(ReplicationCreate),
    /// Changes a primary set's settings (on both sides where it matters); each field
    /// given changes, the others stay.
    ReplicationModify(ReplicationModify),
    ReplicationDelete {
        name: String,
        /// Delete only this side, without asking the peer (a peer gone for good).
        #[serde(default)]
        force: bool,
    },
    /// A task that runs `replicate SET` at `start` (RFC 3339 UTC or "now"), then every
    /// `every` if given.
    ScheduleAdd {
        task: String,
        set: String,
        start: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<String>,
    },
    /// Changes what is given; `every: "none"` makes it run once.
    ScheduleModify {
        task: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        set: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every: Option<String>,
    },
    ScheduleDelete {
        task: String,
    },
    /// Sets the ALUA access state of a target port group (portal N is group N).
    PortGroupSet {
        group: u16,
        state: crate::catalog::PortGroupState,
    },
}

/// Which side `resolve` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveKeep {
    Local,
    Peer,
}

/// Acts on a running replication set: starts, stops or gives up cycles, or promotes a
/// secondary (which drops the set from the catalog through its own path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Start a cycle now (the queue policy decides when one runs).
    Replicate {
        name: String,
    },
    /// Restart Replication; refused without `yes` (it deletes every recovery point on
    /// the secondary).
    /// With `add_volumes` or `remove_volumes` (a group set only) the restart also
    /// changes the group's volumes, on both sides.
    Restart {
        name: String,
        #[serde(default)]
        yes: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        add_volumes: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove_volumes: Vec<String>,
    },
    Suspend {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Abandon the running cycle; the secondary stays at its last recovery point.
    Abort {
        name: String,
    },
    /// On the secondary: make a secondary volume or group an ordinary writable one, at
    /// the latest recovery point or at `recovery_point`.
    /// On the promoted side: the old primary keeps its divergent writes aside and
    /// becomes the secondary; only the pages changed on either side since the common
    /// cut are shipped.
    Failback {
        name: String,
    },
    /// On the primary, both sides up: fence the set's LUNs, ship a final cut, the peer
    /// promotes at exactly it and the set reverses direction.
    Switchover {
        name: String,
    },
    /// After a split brain (or instead of a failback), on either side: which side's
    /// data survives; the other's writes since the common cut are kept aside.
    Resolve {
        name: String,
        keep: ResolveKeep,
    },
    Promote {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        volume: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovery_point: Option<u64>,
    },
    /// On the secondary, for a DR drill: a new writable volume `name` holding a
    /// recovery point, `from` = `VOLUME@rp:ID`; the set and the point are untouched.
    VolumeClone {
        name: String,
        from: String,
    },
}

/// What `replication create` names: a volume or a group (exactly one), the peer, and
/// the set's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub peer: String,
    /// Interval between cycles ("30s", "5m", "1h"); none: only on `replicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default)]
    pub queue_policy: crate::catalog::QueuePolicy,
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// How data extents travel: `zstd`, `lz4` or `none` (the default).
    #[serde(default)]
    pub compress: crate::catalog::Compression,
    /// Prefix of the secondary volumes' names (default: the same names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_prefix: Option<String>,
    /// Cap on what the set sends ("50M": bytes/s); none: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
}

/// What `replication modify` changes: the fields given (at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationModify {
    pub name: String,
    /// A new interval ("30s", "5m"), or "none": cycles only on `replicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_policy: Option<crate::catalog::QueuePolicy>,
    /// A new cap ("50M": bytes/s), or "none": no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<crate::catalog::Compression>,
}

/// What `peer update` changes: the fields given (at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerUpdate {
    pub name: String,
    /// A new cap on what all sets to the peer send together ("50M": bytes/s), or
    /// "none": no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    /// Trust the key the peer presents now: if it answers, its key is pinned after a
    /// full channel-bound authentication; if not, the pin is cleared and the next
    /// authenticated contact pins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_new_key: bool,
}

/// Recovery points a secondary keeps unless told otherwise.
pub fn default_keep() -> u32 {
    8
}

impl Request {
    /// True for requests applied as catalog changes (validated on a copy, saved, then
    /// swapped in).
    pub fn is_change(&self) -> bool {
        matches!(self, Request::Change(_))
    }
}

impl From<Query> for Request {
    fn from(q: Query) -> Request {
        Request::Query(q)
    }
}

impl From<Change> for Request {
    fn from(c: Change) -> Request {
        Request::Change(c)
    }
}

impl From<Action> for Request {
    fn from(a: Action) -> Request {
        Request::Action(a)
    }
}

/// Which of `Query`, `Change` and `Action` a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Change,
    Action,
}

impl Kind {
    /// The kind of the request `cmd` names; `None` when it names none. (A test checks
    /// this against the three enums, both ways.)
    pub fn of(cmd: &str) -> Option<Kind> {
        Some(match cmd {
            "status" | "volume_list" | "volume_show" | "group_list" | "group_show"
            | "target_list" | "target_show" | "session_list" | "snapshot_list"
            | "snapshot_show" | "peer_list" | "peer_show" | "peer_check" | "replication_list"
            | "replication_show" | "recovery_points" | "schedule_list" | "config_export" => {
                Kind::Query
            }
            "volume_create" | "volume_delete" | "group_create" | "group_add" | "group_remove"
            | "group_delete" | "target_create" | "target_delete" | "lun_map" | "lun_unmap"
            | "acl_add" | "acl_remove" | "chap_set" | "chap_clear" | "snapshot_create"
            | "snapshot_delete" | "peer_create" | "peer_update" | "peer_delete"
            | "replication_create" | "replication_modify" | "replication_delete"
            | "schedule_add" | "schedule_modify" | "schedule_delete" | "port_group_set" => {
                Kind::Change
            }
            "replicate" | "restart" | "suspend" | "resume" | "abort" | "promote" | "failback"
            | "switchover" | "resolve" | "volume_clone" => Kind::Action,
            _ => return None,
        })
    }
}

/// Reads the `cmd` tag, then the fields as the kind it names: the messages are those of
/// one tagged enum (`unknown variant `x`, expected one of ...`, `missing field `name``).
impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Request, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let cmd = match value.get("cmd") {
            None => return Err(D::Error::missing_field("cmd")),
            Some(serde_json::Value::String(cmd)) => cmd,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "invalid type: {other}, expected a command name"
                )))
            }
        };
        let kind = Kind::of(cmd).ok_or_else(|| D::Error::unknown_variant(cmd, COMMANDS))?;
        let request = match kind {
            Kind::Query => Query::deserialize(value).map(Request::Query),
            Kind::Change => Change::deserialize(value).map(Request::Change),
            Kind::Action => Action::deserialize(value).map(Request::Action),
        };
        request.map_err(D::Error::custom)
    }
}

pub fn default_page_size() -> u64 {
    u64::from(crate::catalog::DEFAULT_PAGE_SIZE)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// A change was made; `message` says what, for a human.
    Done {
        message: String,
    },
    Status(StatusView),
    Volume(VolumeView),
    Volumes {
        volumes: Vec<VolumeView>,
    },
    Group(GroupView),
    Groups {
        groups: Vec<GroupView>,
    },
    Target(TargetView),
    Targets {
        targets: Vec<TargetView>,
    },
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    Snapshot(SnapshotView),
    Snapshots {
        snapshots: Vec<SnapshotView>,
    },
    Peer(PeerView),
    Peers {
        peers: Vec<PeerView>,
    },
    PeerCheck(PeerCheckView),
    Replication(Box<ReplicationView>),
    Replications {
        replications: Vec<ReplicationView>,
    },
    RecoveryPoints {
        set: String,
        points: Vec<RecoveryPointView>,
    },
    Schedules {
        schedules: Vec<ScheduleView>,
    },
    /// A config file (TOML) that recreates the node's objects.
    ConfigExport {
        toml: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Response::Error { .. })
    }
}

/// Machine-readable error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON, or not a request object, or its fields are wrong.
    BadRequest,
    /// `cmd` names no command.
    UnknownCommand,
    /// The request line is longer than `MAX_LINE`.
    TooLong,
    /// The peer's uid is neither root nor the server's.
    PermissionDenied,
    /// A value is malformed: name, size, IQN, secret, LUN number.
    Invalid,
    NotFound,
    AlreadyExists,
    /// The object is referenced by another (a mapped volume, a target with LUNs).
    InUse,
    /// Sessions are logged in to the target.
    Busy,
    /// The change was valid but the disk said no (creating a file, saving the catalog).
    Io,
    /// A peer did not prove the shared secret, or refused ours.
    AuthFailed,
    /// A peer could not be reached or stopped answering.
    Unreachable,
    /// A peer refused the request.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub data_dir: String,
    pub engine: String,
    pub listen: Vec<String>,
    pub admin_socket: Option<String>,
    pub uptime_secs: u64,
    /// Cuts taken since start and the pauses they imposed on writers.
    #[serde(default)]
    pub cuts: CutStatsView,
    pub volumes: usize,
    pub groups: usize,
    pub targets: usize,
    pub sessions: usize,
    /// Where peers reach this node's replication listener, when it has one.
    #[serde(default)]
    pub replication_listen: Option<String>,
    /// This node's replication TLS key (`sha256:...`): what its peers pin.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// The node's peers, replication sets and snapshots, as their lists show them:
    /// `status` is the one answer that says what a node is doing.
    #[serde(default)]
    pub peers: Vec<PeerView>,
    #[serde(default)]
    pub replications: Vec<ReplicationView>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotView>,
    /// The ALUA state of each portal's target port group (portal N is group N).
    #[serde(default)]
    pub port_groups: Vec<PortGroupView>,
}

/// A target port group as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortGroupView {
    pub group: u16,
    /// The portal in the group, when one is being served.
    pub portal: Option<String>,
    pub state: crate::catalog::PortGroupState,
}

/// A peer as shown: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub addr: String,
    /// Replication sets using it.
    pub sets: Vec<String>,
    /// Cap on what all sets to it send together, bytes/s (none: no cap).
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// The peer's TLS key pinned at first contact (`sha256:...`); none yet.
    #[serde(default)]
    pub pinned_key: Option<String>,
    /// This node's own key (`peer show`), to compare with what the peer pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_key: Option<String>,
    /// The last authenticated link with the peer since this node started, either way
    /// (`peer show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_link: Option<LinkView>,
}

/// What an authenticated TLS link with a peer showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The key the peer presented.
    pub presented_key: String,
    pub tls_version: String,
    pub cipher: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCheckView {
    pub name: String,
    pub addr: String,
    pub reachable: bool,
    pub authenticated: bool,
    pub protocol_version: Option<u32>,
    /// Codecs the peer decodes in extents (`--compress` of a set using it); empty for
    /// a build without compression.
    #[serde(default)]
    pub compress: Vec<String>,
    pub rtt_us: Option<u64>,
    /// This node's key, the peer's pinned key, and the one it presented now (shown
    /// also when it differs from the pin: the check then fails).
    #[serde(default)]
    pub local_key: Option<String>,
    #[serde(default)]
    pub pinned_key: Option<String>,
    #[serde(default)]
    pub presented_key: Option<String>,
    /// `TLSv1.3` and the cipher suite of the check's connection.
    #[serde(default)]
    pub tls_version: Option<String>,
    #[serde(default)]
    pub cipher: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub task: String,
    pub set: String,
    pub start: String,
    pub every_secs: Option<u64>,
    /// The next time it runs (none: it ran once and is done).
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPointView {
    pub cut_id: u64,
    pub time: String,
    pub time_unix: u64,
    /// Bytes its undo log keeps.
    pub size: u64,
    /// DR drills that pin it (drill LUNs, clones): it is kept, whatever `keep` says,
    /// while any does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned_by: Vec<String>,
}

/// Bytes one cycle shipped, by kind; how far a running one is.
pub use crate::replication::status::{CycleProgress as CycleProgressView, CycleStats as CycleView};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationView {
    pub name: String,
    pub role: crate::catalog::ReplicationRole,
    pub peer: String,
    pub group: Option<String>,
    pub volumes: Vec<String>,
    pub remote_volumes: Vec<String>,
    pub every_secs: Option<u64>,
    pub queue_policy: crate::catalog::QueuePolicy,
    pub keep: u32,
    /// How data extents travel to the peer (`none` on a secondary).
    #[serde(default)]
    pub compress: crate::catalog::Compression,
    /// The set's own cap, bytes/s (none: no cap).
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Its peer's cap on all sets to it, bytes/s (primary; none: no cap).
    #[serde(default)]
    pub peer_max_rate: Option<u64>,
    /// The cap that binds: the lower of the two.
    #[serde(default)]
    pub effective_max_rate: Option<u64>,
    /// Wire bytes per second over the last seconds, while a cycle ships.
    #[serde(default)]
    pub current_rate: Option<u64>,
    pub status: crate::replication::status::SetState,
    pub generation: u64,
    pub last_cut_id: Option<u64>,
    pub last_cut_time: Option<String>,
    /// Seconds since the last committed cut was taken.
    pub lag_secs: Option<u64>,
    pub progress: Option<CycleProgressView>,
    pub last_cycle: Option<CycleView>,
    pub cycles: u64,
    /// Requests waiting (queue-latest keeps at most one).
    pub queued: u32,
    pub error: Option<String>,
    pub next_retry: Option<String>,
    /// Status transitions, oldest first: "TIME STATUS".
    #[serde(default)]
    pub events: Vec<String>,
    /// While a promote is unsettled (`promoted`, `peer-promoted`): the cut both sides
    /// last shared, the generation the promote made, and the pages this side wrote since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_cut: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_since_common_cut: Option<u64>,
}

impl Eq for ReplicationView {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutStatsView {
    pub taken: u64,
    /// Cuts that gave up (writes did not drain in time) and reopened the gates.
    pub failed: u64,
    /// The last cut's pause, microseconds (none before the first).
    pub last_pause_us: Option<u64>,
    pub max_pause_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    /// Write-tracking page size in bytes, fixed at creation.
    pub page_size: u32,
    /// Thin or thick, fixed at creation.
    #[serde(default)]
    pub provisioning: crate::catalog::Provisioning,
    /// Pages written since the last cut (None when the volume is not open).
    #[serde(default)]
    pub dirty_pages: Option<u64>,
    /// The stable 64-bit id as 16 hex digits (JSON numbers lose precision past 2^53).
    pub id: String,
    /// Backing file as recorded in the catalog (relative to the data dir unless absolute).
    pub path: String,
    /// Bytes actually allocated by the sparse file, when it could be stat'ed.
    pub allocated: Option<u64>,
    /// The volume group it belongs to, if any.
    pub group: Option<String>,
    pub mappings: Vec<MappingView>,
    /// A copy-on-write clone: the recovery point it reads where it was not written
    /// (`VOLUME@rp:ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    /// Member volumes in cut order.
    pub volumes: Vec<String>,
    /// Sum of the members' sizes in bytes.
    pub size: u64,
    /// The replication set the group is in; while set, membership cannot change.
    pub replication_set: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub name: String,
    /// The group it was taken of, when it was a group snapshot.
    pub group: Option<String>,
    /// The cut it reads as (one instant across all its volumes).
    pub cut_id: u64,
    /// When it was taken: RFC 3339, UTC.
    pub created: String,
    /// How long writers to its volumes were held off while it was taken, microseconds.
    pub pause_us: u64,
    /// `ok`; `lost` (its state did not survive a crash: delete it); `invalidated` (its
    /// copy-on-write store failed: delete it).
    pub state: String,
    /// Pages kept because they were overwritten after the cut, over all volumes.
    pub pages_preserved: u64,
    /// Bytes those pages take, in memory and in spill files.
    pub bytes_used: u64,
    pub volumes: Vec<SnapshotVolumeView>,
    /// LUNs that map one of its volumes (`VOLUME@SNAPSHOT`).
    pub mappings: Vec<SnapshotMappingView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotVolumeView {
    pub volume: String,
    pub state: String,
    pub pages_preserved: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMappingView {
    pub volume: String,
    pub target: String,
    pub lun: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingView {
    pub target: String,
    pub lun: u64,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    pub iqn: String,
    pub luns: Vec<LunView>,
    /// Initiators allowed to log in; empty means open to all.
    pub acl: Vec<String>,
    /// CHAP names only; secrets are never returned.
    pub chap: Option<ChapView>,
    pub sessions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunView {
    pub lun: u64,
    pub volume: String,
    pub read_only: bool,
    #[serde(default)]
    pub removable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapView {
    pub user: String,
    pub mutual_user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shapes() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"volume_create","name":"db","size":"10G"}"#).unwrap();
        assert_eq!(
            r,
            Request::from(Change::VolumeCreate {
                name: "db".into(),
                size: 10 << 30,
                block_size: 512,
                page_size: 4096,
                provisioning: crate::catalog::Provisioning::Thin,
                allow_sanitize: false,
            })
        );
        let r: Request = serde_json::from_str(
            r#"{"cmd":"volume_create","name":"db","size":4096,"block_size":4096,"page_size":"64K"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::from(Change::VolumeCreate {
                name: "db".into(),
                size: 4096,
                block_size: 4096,
                page_size: 64 << 10,
                provisioning: crate::catalog::Provisioning::Thin,
                allow_sanitize: false,
            })
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"group_create","name":"g","volumes":["a","b"]}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::from(Change::GroupCreate {
                name: "g".into(),
                volumes: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            serde_json::to_string(&Request::from(Change::GroupAdd {
                name: "g".into(),
                volume: "c".into()
            }))
            .unwrap(),
            r#"{"cmd":"group_add","name":"g","volume":"c"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::from(Query::Status)).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let bad = serde_json::from_str::<Request>(r#"{"cmd":"volume_show","name":"x","extra":1}"#);
        assert!(bad.is_err(), "unknown fields are refused");
        // `replication create`'s fields sit beside `cmd`, as before they had a struct.
        let create = r#"{"cmd":"replication_create","name":"r","volume":"v","peer":"p","queue_policy":"discard","keep":3,"compress":"none"}"#;
        let Ok(Request::Change(Change::ReplicationCreate(a))) = serde_json::from_str(create) else {
            panic!("{create} does not parse")
        };
        assert_eq!(
            (a.name.as_str(), a.keep, a.group.as_deref()),
            ("r", 3, None)
        );
        assert_eq!(
            serde_json::to_string(&Request::from(Change::ReplicationCreate(a))).unwrap(),
            create
        );
        let bad = serde_json::from_str::<Request>(
            r#"{"cmd":"replication_create","name":"r","peer":"p","colour":"red"}"#,
        );
        assert!(
            bad.is_err(),
            "unknown fields of replication_create are refused"
        );
        // (Unit variants ignore extra fields in serde: `server::parse_request` refuses them.)
    }

    #[test]
    fn response_wire_shapes() {
        let e = Response::error(ErrorCode::NotFound, "no volume named 'x'");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"result":"error","code":"not_found","message":"no volume named 'x'"}"#
        );
        let d = Response::Done {
            message: "ok".into(),
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let g = Response::Group(GroupView {
            name: "app".into(),
            volumes: vec!["db".into(), "logs".into()],
            size: 11 << 30,
            replication_set: None,
        });
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"result":"group","name":"app","volumes":["db","logs"],"size":11811160064,"replication_set":null}"#
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let r = Request::from(Change::ChapSet {
            iqn: "iqn.2026-11.io.twinlun:x".into(),
            user: "u".into(),
            secret: Secret("topsecret123".into()),
            mutual_user: None,
            mutual_secret: None,
        });
        assert!(!format!("{r:?}").contains("topsecret"));
    }

    #[test]
    fn command_list_matches_enum() {
        for c in COMMANDS {
            let v = serde_json::json!({ "cmd": c });
            let err = serde_json::from_value::<Request>(v)
                .err()
                .map(|e| e.to_string());
            assert!(
                !err.unwrap_or_default().contains("unknown variant"),
                "{c} should be a known command"
            );
        }
    }

    /// The names an enum's own tag accepts, read off serde's error for an unknown one.
    fn tags_of<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let err = serde_json::from_value::<T>(serde_json::json!({ "cmd": "" }))
            .unwrap_err()
            .to_string();
        let listed = err
            .split_once("expected")
            .expect("serde lists the variants")
            .1;
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_command_has_one_kind_and_every_variant_a_command() {
        let kinds = [
            (Kind::Query, tags_of::<Query>()),
            (Kind::Change, tags_of::<Change>()),
            (Kind::Action, tags_of::<Action>()),
        ];
        let mut all: Vec<&str> = Vec::new();
        for (kind, tags) in &kinds {
            assert!(!tags.is_empty());
            for t in tags {
                assert_eq!(Kind::of(t), Some(*kind), "{t}");
                all.push(t);
            }
        }
        all.sort_unstable();
        let mut commands = COMMANDS.to_vec();
        commands.sort_unstable();
        assert_eq!(all, commands, "COMMANDS lists each variant once");
        assert_eq!(Kind::of("frobnicate"), None);
    }

    #[test]
    fn each_kind_keeps_the_one_wire_shape() {
        let cases = [
            (Request::from(Query::Status), r#"{"cmd":"status"}"#),
            (
                Request::from(Query::RecoveryPoints { name: "r".into() }),
                r#"{"cmd":"recovery_points","name":"r"}"#,
            ),
            (
                Request::from(Change::LunUnmap {
                    iqn: "iqn.2026-11.io.twinlun:t".into(),
                    lun: 3,
                }),
                r#"{"cmd":"lun_unmap","iqn":"iqn.2026-11.io.twinlun:t","lun":3}"#,
            ),
            (
                Request::from(Action::Restart {
                    name: "r".into(),
                    yes: true,
                    add_volumes: vec![],
                    remove_volumes: vec![],
                }),
                r#"{"cmd":"restart","name":"r","yes":true}"#,
            ),
            // Only the settings given travel; "none" removes one.
            (
                Request::from(Change::ReplicationModify(ReplicationModify {
                    name: "r".into(),
                    every: Some("none".into()),
                    keep: Some(3),
                    max_rate: Some("50M".into()),
                    ..ReplicationModify::default()
                })),
                r#"{"cmd":"replication_modify","name":"r","every":"none","keep":3,"max_rate":"50M"}"#,
            ),
            (
                Request::from(Change::PeerUpdate(PeerUpdate {
                    name: "dr".into(),
                    max_rate: Some("none".into()),
                    accept_new_key: false,
                })),
                r#"{"cmd":"peer_update","name":"dr","max_rate":"none"}"#,
            ),
        ];
        for (req, line) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), line);
            assert_eq!(
                serde_json::from_str::<Request>(line).unwrap(),
                req,
                "{line}"
            );
        }
        assert!(Request::from(Change::ChapClear { iqn: "x".into() }).is_change());
        assert!(!Request::from(Query::Status).is_change());
        assert!(!Request::from(Action::Abort { name: "r".into() }).is_change());
    }

    #[test]
    fn errors_name_the_command_and_the_key() {
        let err = |v: serde_json::Value| {
            serde_json::from_value::<Request>(v)
                .unwrap_err()
                .to_string()
        };
        let m = err(serde_json::json!({"cmd": "frobnicate"}));
        assert!(
            m.contains("unknown variant `frobnicate`, expected one of `status`, `volume_create`"),
            "{m}"
        );
        assert!(
            m.contains("`schedule_delete`"),
            "every command is listed: {m}"
        );
        let m = err(serde_json::json!({"cmd": "volume_show"}));
        assert_eq!(m, "missing field `name`");
        let m = err(serde_json::json!({"cmd": "volume_show", "name": "x", "extra": 1}));
        assert!(
            m.starts_with("unknown field `extra`, expected `name`"),
            "{m}"
        );
        let m = err(serde_json::json!({"cmd": "restart", "name": "r", "yes": "please"}));
        assert!(m.contains("invalid type") && m.contains("please"), "{m}");
        let m = err(serde_json::json!({"cmd": "volume_create", "name": "x", "size": "12Q"}));
        assert!(m.contains("unit"), "{m}");
        assert_eq!(err(serde_json::json!({"name": "x"})), "missing field `cmd`");
        let m = err(serde_json::json!({"cmd": 7}));
        assert!(m.contains("invalid type") && m.contains('7'), "{m}");
    }
}
