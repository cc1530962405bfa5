//! The TOML config given with `twinlun serve --config FILE`.
//!
//! ```toml
//! [server]                          # optional; command-line flags win over it
//! data_dir = "/var/lib/twinlun"     # relative paths are relative to this file's folder
//! listen = ["0.0.0.0:3260"]
//! admin_socket = "/run/twinlun/admin.sock"
//! engine = "auto"                   # auto | uring | threads
//! log_format = "text"               # text | json (one JSON object per line, for log shippers)
//!
//! [[volume]]
//! name = "db"
//! size = "10G"                      # or a number of bytes
//! block_size = 4096                 # 512 (default) or 4096
//! page_size = "64K"                 # write-tracking page: 4K (default) to 1M, a power of two
//! provisioning = "thick"            # thin (default, sparse) or thick (preallocated)
//! allow_sanitize = false            # offer SANITIZE on its LUNs (default no)
//!
//! [[group]]                         # optional: volumes cut together (snapshots, replication)
//! name = "app"
//! volumes = ["db"]                  # one or more, in cut order; a volume is in at most one group
//!
//! [[target]]
//! iqn = "iqn.2026-11.com.example:db"
//! acl = ["iqn.1994-05.com.redhat:client1"]   # optional; empty or absent = see below
//! [target.chap]                     # optional
//! user = "client1"
//! secret = "12to16bytes!"
//! mutual_user = "target"            # optional, with mutual_secret
//! mutual_secret = "another-secret"
//! [[target.lun]]
//! lun = 0
//! volume = "db"
//! read_only = false                 # optional
//! removable = false                 # optional: removable medium (RMB; eject, load)
//!
//! [[peer]]                          # another twinlun's replication listener
//! name = "dr"
//! addr = "dr.example:3261"
//! secret = "at-least-12-bytes"
//! max_rate = "100M"                 # optional: cap on all sets to it, bytes/s (K, M, G)
//!
//! [[replication]]                   # a set this node is one side of
//! name = "app-dr"
//! role = "primary"                  # primary | secondary
//! peer = "dr"
//! group = "app"                     # or volume = "db": exactly one
//! remote_volumes = ["db"]           # optional: the peer's names, in set order (default: the same)
//! every = "5m"                      # optional, primary only: s, m, h or d
//! queue_policy = "queue-latest"     # optional: discard | queue-latest
//! keep = 8                          # recovery points the secondary keeps
//! compress = "none"                 # optional, primary only: zstd | lz4 | none
//! max_rate = "50M"                  # optional, primary only: cap in bytes/s (K, M, G)
//!
//! [[schedule]]                      # replicate a primary set at a time, then every interval
//! task = "nightly"
//! set = "app-dr"
//! start = "2026-11-22T04:00:00Z"    # RFC 3339 UTC, or "now" (the time of each start)
//! every = "1d"                      # optional: without it the task runs once
//! ```
//!
//! How the config combines with the catalog saved in the data dir: the config is an
//! overlay applied at every start. Every object it declares is created if missing and
//! its declared attributes are set to the config's values: a volume is created (and
//! must keep its size, block size and page size afterwards: twinlun never resizes at
//! start; a volume that omits `page_size` keeps whatever it has), a group is created or
//! its volume list set to the config's (refused while it is in a replication set), a
//! target is created, each declared LUN is mapped (replacing another mapping of that
//! LUN number), and `acl` / `chap`, when present, replace the target's. Anything the
//! config does not mention is left as the catalog has it, so objects and changes made
//! with `twinlun ctl` persist across restarts. With a config and no saved catalog the
//! server starts from an empty catalog (no demo target).
//!
//! Peers, replication sets and schedules declare what `ctl config export` found on a
//! node, so a node can be rebuilt from a file. A peer is created or its address and
//! secret set. A replication set records this node's side of a set whose other side
//! already exists on the peer (nothing is sent to the peer at start: a set made with
//! `ctl replication create` is the way to create both sides); it is created if missing,
//! and when it exists its role, peer, volumes, remote volumes, keep and compression must
//! be the config's (only `every`, `queue_policy` and `max_rate` change; `ctl
//! replication modify` changes the others on both sides). A schedule is created or
//! set to the config's values. A secret that `config export` masked
//! ([`MASKED_SECRET`]) is refused, naming its key, rather than served as a password.
//!
//! Errors name the file and the key: `twinlun.toml: target[0].lun[1].volume: no volume named 'x'`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::catalog::{
    Catalog, ChapSpec, Compression, LunSpec, PeerSpec, QueuePolicy, ReplicationRole,
    ReplicationSpec, ScheduleSpec, VolumeSpec, DEFAULT_PAGE_SIZE,
};
use crate::validate::{self, de_size, default_block_size};
use crate::volume::EngineKind;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Syntax {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    /// A key is unknown or its value is wrong; `key` is a path like `target[0].lun[1].volume`.
    #[error("{file}: {key}: {message}")]
    Key {
        file: String,
        key: String,
        message: String,
    },
}

/// What `ctl config export` writes in place of a secret unless asked for secrets. A
/// file holding it is refused at load, naming the key: serving it as a password would
/// lock every initiator and peer out without saying why.
pub const MASKED_SECRET: &str = "<masked: export with --with-secrets>";

/// A whole config file. It serializes to the TOML it parses from (`to_toml`), which is
/// how `ctl config export` writes one: the exporter and the loader share these structs
/// so they cannot drift apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The file it was read from, for error messages.
    #[serde(skip)]
    pub file: String,
    #[serde(skip_serializing_if = "ServerConfig::is_empty")]
    pub server: ServerConfig,
    #[serde(rename = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeConfig>,
    #[serde(rename = "group", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
    #[serde(rename = "target", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetConfig>,
    #[serde(rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    #[serde(rename = "replication", skip_serializing_if = "Vec::is_empty")]
    pub replications: Vec<ReplicationConfig>,
    #[serde(rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<SocketAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineChoice>,
    /// Accept replication from peers on this address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_listen: Option<SocketAddr>,
    /// How log lines are written to stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// How the server writes its log to stderr: `text` for a person, `json` (one object
/// per line with level, target, fields and spans) for a log shipper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format '{s}' (text or json)")),
        }
    }
}

impl ServerConfig {
    /// True when it sets nothing (then an exported file has no `[server]`).
    pub fn is_empty(&self) -> bool {
        *self == ServerConfig::default()
    }
}

/// The io engine as named in the config and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    #[default]
    Auto,
    Uring,
    Threads,
}

impl EngineChoice {
    pub fn kind(self) -> EngineKind {
        match self {
            EngineChoice::Auto => EngineKind::Auto,
            EngineChoice::Uring => EngineKind::Uring,
            EngineChoice::Threads => EngineKind::Threads,
        }
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "uring" => Ok(EngineChoice::Uring),
            "threads" => Ok(EngineChoice::Threads),
            _ => Err(format!("unknown engine '{s}' (auto, uring or threads)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Tracking page size; `None` means 4 KiB for a new volume and "keep" for an
    /// existing one.
    #[serde(
        default,
        deserialize_with = "de_opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub page_size: Option<u64>,
    /// "thin" or "thick"; fixed at creation. `None` means thin for a new volume and
    /// "keep" for an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<crate::catalog::Provisioning>,
    /// Offer SANITIZE on the volume's LUNs; fixed at creation. `None`: no for a new
    /// volume, "keep" for an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_sanitize: Option<bool>,
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub volumes: Vec<String>,
}

/// Serialized as the `[[target]]` table it is read from (`RawTarget`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetConfig {
    pub iqn: String,
    /// `None`: keep the catalog's ACL. `Some(empty)`: open to any initiator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapConfig>,
    #[serde(rename = "lun", skip_serializing_if = "Vec::is_empty")]
    pub luns: Vec<LunConfig>,
}

/// A `[[target]]` table as written; `lun` and `chap` are read separately so their
/// errors can name their index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    iqn: String,
    acl: Option<Vec<String>>,
    chap: Option<toml::Value>,
    #[serde(default)]
    lun: Vec<toml::Value>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual_user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub lun: u64,
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
    /// A removable medium (INQUIRY RMB; START STOP UNIT ejects and loads it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removable: bool,
}

/// A `[[peer]]`: another twinlun's replication listener and the secret both share.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub addr: String,
    pub secret: String,
    /// Cap on what all sets to the peer send together ("100M": bytes/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
    /// The peer's pinned TLS key (`sha256:...`, as `peer show` prints it); absent: the
    /// pin the node has is kept, or the first authenticated contact pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_key: Option<String>,
}

impl std::fmt::Debug for PeerConfig {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A `[[replication]]`: this node's side of a replication set (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    pub name: String,
    pub role: ReplicationRole,
    pub peer: String,
    /// The set's volume; exactly one of `volume` and `group`, as with `ctl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The peer's names for the set's volumes, in set order; absent: the same names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_volumes: Option<Vec<String>>,
    /// Interval between scheduled cycles ("30s", "5m", "1h", "1d"), primary only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(default)]
    pub queue_policy: QueuePolicy,
    /// Recovery points the secondary keeps. Required: a default here could silently
    /// differ from the peer's.
    pub keep: u32,
    #[serde(default)]
    pub compress: Compression,
    /// Cap on what the set sends ("50M": bytes/s), primary only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<String>,
}

/// A `[[schedule]]`: a task running `replicate SET` at `start`, then every `every`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub task: String,
    pub set: String,
    /// RFC 3339 in UTC, or "now" (the time the config is applied, at each start).
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

/// Seconds as the largest of d, h, m, s that divides them: what `parse_duration`
/// reads back to the same number.
pub fn format_duration(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Refuses a secret that `config export` masked, naming its key.
fn unmasked(cx: &Ctx<'_>, key: &str, secret: &str) -> Result<(), ConfigError> {
    if secret == MASKED_SECRET {
        return Err(cx.err(
            key,
            "the secret was masked by `ctl config export`: write the secret here, or export with --with-secrets",
        ));
    }
    Ok(())
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Key {
            file: self.file.to_string(),
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// Deserializes one table, naming `key` (and the field, where serde says which) on error.
    fn typed<T: DeserializeOwned>(&self, key: &str, v: toml::Value) -> Result<T, ConfigError> {
        let table = v.as_table().cloned();
        let Some(table) = table else {
            return Err(self.err(key, format!("expected a table, found {}", v.type_str())));
        };
        // Check each field alone first so a bad value names its key; then the whole.
        for (k, val) in &table {
            let mut one = toml::Table::new();
            one.insert(k.clone(), val.clone());
            if let Err(e) = T::deserialize(toml::Value::Table(one)) {
                let msg = e.message().trim().to_string();
                if !msg.starts_with("missing field") {
                    let field_key = if msg.starts_with("unknown field") {
                        key.to_string()
                    } else {
                        format!("{key}.{k}")
                    };
                    return Err(self.err(field_key, msg));
                }
            }
        }
        T::deserialize(toml::Value::Table(table)).map_err(|e| self.err(key, e.message().trim()))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut c = Config::parse(&text, &file)?;
        // Relative paths in [server] are relative to the config file's folder.
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [&mut c.server.data_dir, &mut c.server.admin_socket]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// Parses and validates a config; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file };
        let mut top: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Syntax {
            file: file.to_string(),
            source,
        })?;
        let mut c = Config {
            file: file.to_string(),
            ..Config::default()
        };
        if let Some(v) = top.remove("server") {
            c.server = cx.typed("server", v)?;
            if matches!(&c.server.listen, Some(l) if l.is_empty()) {
                return Err(cx.err("server.listen", "needs at least one address"));
            }
        }
        if let Some(v) = top.remove("volume") {
            for (i, v) in array(&cx, "volume", v)?.into_iter().enumerate() {
                let key = format!("volume[{i}]");
                let vol: VolumeConfig = cx.typed(&key, v)?;
                validate::check_volume_name(&vol.name)
                    .map_err(|e| cx.err(format!("{key}.name"), e))?;
                validate::check_geometry(vol.size, vol.block_size)
                    .map_err(|e| cx.err(format!("{key}.size"), e))?;
                if let Some(p) = vol.page_size {
                    validate::check_page_size(p)
                        .map_err(|e| cx.err(format!("{key}.page_size"), e))?;
                }
                if c.volumes.iter().any(|o| o.name == vol.name) {
                    return Err(cx.err(
                        format!("{key}.name"),
                        format!("volume '{}' is declared twice", vol.name),
                    ));
                }
                c.volumes.push(vol);
            }
        }
        if let Some(v) = top.remove("group") {
            for (i, v) in array(&cx, "group", v)?.into_iter().enumerate() {
                let key = format!("group[{i}]");
                let g: GroupConfig = cx.typed(&key, v)?;
                validate::check_group_name(&g.name)
                    .map_err(|e| cx.err(format!("{key}.name"), e))?;
                if c.groups.iter().any(|o| o.name == g.name) {
                    return Err(cx.err(
                        format!("{key}.name"),
                        format!("group '{}' is declared twice", g.name),
                    ));
                }
                if g.volumes.is_empty() {
                    return Err(cx.err(
                        format!("{key}.volumes"),
                        validate::ValidationError::GroupEmpty,
                    ));
                }
                for (j, vol) in g.volumes.iter().enumerate() {
                    let vkey = format!("{key}.volumes[{j}]");
                    validate::check_volume_name(vol).map_err(|e| cx.err(&vkey, e))?;
                    if g.volumes[..j].contains(vol) {
                        return Err(
                            cx.err(&vkey, validate::ValidationError::VolumeTwice(vol.clone()))
                        );
                    }
                    if let Some(o) = c.groups.iter().find(|o| o.volumes.contains(vol)) {
                        return Err(cx.err(
                            &vkey,
                            format!(
                                "volume '{vol}' is also in group '{}'; a volume belongs to at most one group",
                                o.name
                            ),
                        ));
                    }
                }
                c.groups.push(g);
            }
        }
        if let Some(v) = top.remove("target") {
            for (i, v) in array(&cx, "target", v)?.into_iter().enumerate() {
                let t = target(&cx, &format!("target[{i}]"), v)?;
                if c.targets.iter().any(|o| o.iqn == t.iqn) {
                    return Err(cx.err(
                        format!("target[{i}].iqn"),
                        format!("target '{}' is declared twice", t.iqn),
                    ));
                }
                c.targets.push(t);
            }
        }
        if let Some(v) = top.remove("peer") {
            for (i, v) in array(&cx, "peer", v)?.into_iter().enumerate() {
                let key = format!("peer[{i}]");
                let p: PeerConfig = cx.typed(&key, v)?;
                validate::check_peer_name(&p.name).map_err(|e| cx.err(format!("{key}.name"), e))?;
                validate::check_peer_addr(&p.addr).map_err(|e| cx.err(format!("{key}.addr"), e))?;
                unmasked(&cx, &format!("{key}.secret"), &p.secret)?;
                if let Some(k) = &p.pinned_key {
                    validate::check_key_fingerprint(k)
                        .map_err(|e| cx.err(format!("{key}.pinned_key"), e))?;
                }
                validate::check_peer_secret(&p.secret)
                    .map_err(|e| cx.err(format!("{key}.secret"), e))?;
                if let Some(r) = &p.max_rate {
                    validate::parse_rate(r).map_err(|e| cx.err(format!("{key}.max_rate"), e))?;
                }
                if c.peers.iter().any(|o| o.name == p.name) {
                    return Err(cx.err(
                        format!("{key}.name"),
                        format!("peer '{}' is declared twice", p.name),
                    ));
                }
                c.peers.push(p);
            }
        }
        if let Some(v) = top.remove("replication") {
            for (i, v) in array(&cx, "replication", v)?.into_iter().enumerate() {
                let r = replication(&cx, &format!("replication[{i}]"), v)?;
                if c.replications.iter().any(|o| o.name == r.name) {
                    return Err(cx.err(
                        format!("replication[{i}].name"),
                        format!("replication set '{}' is declared twice", r.name),
                    ));
                }
                c.replications.push(r);
            }
        }
        if let Some(v) = top.remove("schedule") {
            for (i, v) in array(&cx, "schedule", v)?.into_iter().enumerate() {
                let key = format!("schedule[{i}]");
                let s: ScheduleConfig = cx.typed(&key, v)?;
                validate::check_task_name(&s.task).map_err(|e| cx.err(format!("{key}.task"), e))?;
                validate::check_set_name(&s.set).map_err(|e| cx.err(format!("{key}.set"), e))?;
                validate::parse_start(&s.start, 0)
                    .map_err(|e| cx.err(format!("{key}.start"), e))?;
                if let Some(e) = &s.every {
                    validate::parse_duration(e).map_err(|e| cx.err(format!("{key}.every"), e))?;
                }
                if c.schedules.iter().any(|o| o.task == s.task) {
                    return Err(cx.err(
                        format!("{key}.task"),
                        format!("schedule task '{}' is declared twice", s.task),
                    ));
                }
                c.schedules.push(s);
            }
        }
        if let Some(k) = top.keys().next() {
            return Err(cx.err(
                k.clone(),
                "unknown key (expected server, volume, group, target, peer, replication or schedule)",
            ));
        }
        Ok(c)
    }

    /// The config as a TOML file that [`Config::parse`] reads back to the same config.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Applies the config to `catalog` (see the module doc). New volumes get ids from
    /// `new_id`; their files are not created here.
    pub fn overlay(
        &self,
        catalog: &mut Catalog,
        new_id: &mut dyn FnMut() -> u64,
    ) -> Result<(), ConfigError> {
        let cx = Ctx { file: &self.file };
        for (i, v) in self.volumes.iter().enumerate() {
            match catalog.volumes.get(&v.name) {
                Some(existing) => {
                    if existing.size != v.size || existing.block_size != v.block_size {
                        return Err(cx.err(
                            format!("volume[{i}].size"),
                            format!(
                                "volume '{}' already exists with size {} and block size {}; twinlun does not resize or reformat volumes",
                                v.name, existing.size, existing.block_size
                            ),
                        ));
                    }
                    if let Some(a) = v.allow_sanitize.filter(|a| *a != existing.allow_sanitize) {
                        return Err(cx.err(
                            format!("volume[{i}].allow_sanitize"),
                            format!(
                                "volume '{}' already exists with allow_sanitize = {}, not {a}; it is fixed at creation",
                                v.name, existing.allow_sanitize
                            ),
                        ));
                    }
                    if let Some(p) = v.provisioning.filter(|p| *p != existing.provisioning) {
                        return Err(cx.err(
                            format!("volume[{i}].provisioning"),
                            format!(
                                "volume '{}' already exists {}, not {}; provisioning is fixed at creation",
                                v.name,
                                existing.provisioning.as_str(),
                                p.as_str()
                            ),
                        ));
                    }
                    if let Some(p) = v.page_size.filter(|p| *p != u64::from(existing.page_size)) {
                        return Err(cx.err(
                            format!("volume[{i}].page_size"),
                            format!(
                                "volume '{}' already exists with page size {}, not {p}; the tracking page size is fixed at creation",
                                v.name, existing.page_size
                            ),
                        ));
                    }
                }
                None => {
                    let id = loop {
                        let id = new_id();
                        if id != 0 && !catalog.volumes.values().any(|o| o.id == id) {
                            break id;
                        }
                    };
                    catalog.volumes.insert(
                        v.name.clone(),
                        VolumeSpec {
                            size: v.size,
                            block_size: v.block_size,
                            id,
                            path: crate::datadir::volume_file_rel(id),
                            page_size: match v.page_size {
                                // Parse checked it: a power of two up to 1 MiB.
                                Some(p) => u32::try_from(p).expect("at most 1 MiB"),
                                None => DEFAULT_PAGE_SIZE,
                            },
                            provisioning: v.provisioning.unwrap_or_default(),
                            allow_sanitize: v.allow_sanitize.unwrap_or(false),
                            clone_of: None,
                        },
                    );
                }
            }
        }
        self.overlay_groups(catalog)?;
        for p in &self.peers {
            let pinned_key = p.pinned_key.clone().or_else(|| {
                catalog
                    .peers
                    .get(&p.name)
                    .and_then(|o| o.pinned_key.clone())
            });
            catalog.peers.insert(
                p.name.clone(),
                PeerSpec {
                    addr: p.addr.clone(),
                    secret: p.secret.clone(),
                    // Parse checked it.
                    max_rate: p
                        .max_rate
                        .as_deref()
                        .and_then(|r| validate::parse_rate(r).ok()),
                    pinned_key,
                },
            );
        }
        for (i, r) in self.replications.iter().enumerate() {
            self.overlay_replication(catalog, &format!("replication[{i}]"), r)?;
        }
        let now = crate::time::unix_secs(std::time::SystemTime::now());
        for (i, s) in self.schedules.iter().enumerate() {
            let key = format!("schedule[{i}]");
            match catalog.replications.get(&s.set) {
                Some(r) if r.role == ReplicationRole::Primary => {}
                Some(_) => {
                    return Err(cx.err(
                        format!("{key}.set"),
                        format!("replication set '{}' is the secondary side here: only its primary runs cycles", s.set),
                    ))
                }
                None => {
                    return Err(cx.err(
                        format!("{key}.set"),
                        format!("no replication set named '{}'", s.set),
                    ))
                }
            }
            let start = validate::parse_start(&s.start, now)
                .map_err(|e| cx.err(format!("{key}.start"), e))?;
            let every_secs = (s.every.as_deref())
                .map(validate::parse_duration)
                .transpose()
                .map_err(|e| cx.err(format!("{key}.every"), e))?;
            catalog.schedules.insert(
                s.task.clone(),
                ScheduleSpec {
                    set: s.set.clone(),
                    start,
                    every_secs,
                },
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            for (j, l) in t.luns.iter().enumerate() {
                if !catalog.volumes.contains_key(&l.volume) {
                    return Err(cx.err(
                        format!("target[{i}].lun[{j}].volume"),
                        format!("no volume named '{}'", l.volume),
                    ));
                }
                // As `ctl lun map`: a secondary volume changes only by replication.
                if !l.read_only && catalog.is_secondary(&l.volume) {
                    let set = catalog
                        .replication_of(&l.volume)
                        .map(|(s, _)| s.to_string());
                    return Err(cx.err(
                        format!("target[{i}].lun[{j}].read_only"),
                        format!(
                            "volume '{}' is the secondary side of replication set '{}': map it with read_only = true (it becomes writable when promoted)",
                            l.volume,
                            set.unwrap_or_default()
                        ),
                    ));
                }
            }
            let spec = catalog.targets.entry(t.iqn.clone()).or_default();
            if let Some(acl) = &t.acl {
                spec.acl = acl.iter().cloned().collect::<BTreeSet<_>>();
            }
            if let Some(ch) = &t.chap {
                spec.chap = Some(ChapSpec {
                    user: ch.user.clone(),
                    secret: ch.secret.clone(),
                    mutual_user: ch.mutual_user.clone(),
                    mutual_secret: ch.mutual_secret.clone(),
                });
            }
            for l in &t.luns {
                spec.luns.insert(
                    l.lun,
                    LunSpec {
                        volume: l.volume.clone(),
                        read_only: l.read_only,
                        removable: l.removable,
                    },
                );
            }
        }
        Ok(())
    }

    /// Creates a declared set, or checks that the existing one is the same set (see the
    /// module doc) and sets what may change.
    fn overlay_replication(
        &self,
        catalog: &mut Catalog,
        key: &str,
        r: &ReplicationConfig,
    ) -> Result<(), ConfigError> {
        let cx = Ctx { file: &self.file };
        if !catalog.peers.contains_key(&r.peer) {
            return Err(cx.err(format!("{key}.peer"), format!("no peer named '{}'", r.peer)));
        }
        let (volumes, source) = match (&r.volume, &r.group) {
            (Some(v), None) => {
                let k = format!("{key}.volume");
                if !catalog.volumes.contains_key(v) {
                    return Err(cx.err(k, format!("no volume named '{v}'")));
                }
                if let Some(g) = catalog.group_of(v) {
                    return Err(cx.err(
                        k,
                        format!(
                            "volume '{v}' is in group '{g}': replicate the group (group = \"{g}\")"
                        ),
                    ));
                }
                (vec![v.clone()], k)
            }
            (None, Some(g)) => {
                let k = format!("{key}.group");
                match catalog.groups.get(g) {
                    Some(spec) => (spec.volumes.clone(), k),
                    None => return Err(cx.err(k, format!("no group named '{g}'"))),
                }
            }
            _ => return Err(cx.err(key, validate::ValidationError::SetSource)),
        };
        let remote = r.remote_volumes.clone().unwrap_or_else(|| volumes.clone());
        if remote.len() != volumes.len() {
            return Err(cx.err(
                format!("{key}.remote_volumes"),
                format!(
                    "names {} volumes; the set has {} ({})",
                    remote.len(),
                    volumes.len(),
                    volumes.join(", ")
                ),
            ));
        }
        for v in &volumes {
            if let Some((set, _)) = catalog.replication_of(v) {
                if set != r.name {
                    return Err(cx.err(
                        &source,
                        format!("volume '{v}' is already in replication set '{set}'"),
                    ));
                }
            }
        }
        let every_secs = (r.every.as_deref())
            .map(validate::parse_duration)
            .transpose()
            .map_err(|e| cx.err(format!("{key}.every"), e))?;
        let mut spec = ReplicationSpec {
            id: 0,
            role: r.role,
            peer: r.peer.clone(),
            group: r.group.clone(),
            volumes,
            remote_volumes: remote,
            every_secs,
            queue_policy: r.queue_policy,
            keep: r.keep,
            compress: r.compress,
            // Parse checked it.
            max_rate: r
                .max_rate
                .as_deref()
                .and_then(|r| validate::parse_rate(r).ok()),
        };
        match catalog.replications.get_mut(&r.name) {
            Some(existing) => {
                let fixed = |s: &ReplicationSpec| {
                    (
                        s.role,
                        s.peer.clone(),
                        s.group.clone(),
                        s.volumes.clone(),
                        s.remote_volumes.clone(),
                        s.keep,
                        s.compress,
                    )
                };
                if fixed(existing) != fixed(&spec) {
                    return Err(cx.err(
                        key,
                        format!(
                            "replication set '{}' already exists with another role, peer, volumes, keep or compression; only every and queue_policy can change (delete the set with ctl to declare it anew)",
                            r.name
                        ),
                    ));
                }
                existing.every_secs = spec.every_secs;
                existing.queue_policy = spec.queue_policy;
                existing.max_rate = spec.max_rate;
            }
            None => {
                spec.id = catalog.new_set_id();
                catalog.replications.insert(r.name.clone(), spec);
            }
        }
        if let Some(g) = &r.group {
            let spec = catalog.groups.get_mut(g).expect("looked up above");
            match &spec.replication_set {
                Some(other) if *other != r.name => {
                    return Err(cx.err(
                        format!("{key}.group"),
                        format!("group '{g}' is already in replication set '{other}'"),
                    ))
                }
                _ => spec.replication_set = Some(r.name.clone()),
            }
        }
        Ok(())
    }

    /// Sets each declared group's volume list, then checks that no volume ends up in two
    /// groups (a config group against one made with `ctl`).
    fn overlay_groups(&self, catalog: &mut Catalog) -> Result<(), ConfigError> {
        let cx = Ctx { file: &self.file };
        let mut groups = catalog.groups.clone();
        for (i, g) in self.groups.iter().enumerate() {
            for (j, v) in g.volumes.iter().enumerate() {
                if !catalog.volumes.contains_key(v) {
                    return Err(cx.err(
                        format!("group[{i}].volumes[{j}]"),
                        format!("no volume named '{v}'"),
                    ));
                }
            }
            let spec = groups.entry(g.name.clone()).or_default();
            if let Some(set) = &spec.replication_set {
                if spec.volumes != g.volumes {
                    return Err(cx.err(
                        format!("group[{i}].volumes"),
                        format!(
                            "group '{}' is in replication set '{set}'; its volumes cannot change while it is",
                            g.name
                        ),
                    ));
                }
            }
            spec.volumes = g.volumes.clone();
        }
        for (i, g) in self.groups.iter().enumerate() {
            for (j, v) in g.volumes.iter().enumerate() {
                let other = groups
                    .iter()
                    .find(|(name, o)| **name != g.name && o.volumes.contains(v));
                if let Some((other, _)) = other {
                    return Err(cx.err(
                        format!("group[{i}].volumes[{j}]"),
                        format!(
                            "volume '{v}' is in group '{other}'; a volume belongs to at most one group"
                        ),
                    ));
                }
            }
        }
        catalog.groups = groups;
        Ok(())
    }
}

fn array(cx: &Ctx<'_>, key: &str, v: toml::Value) -> Result<Vec<toml::Value>, ConfigError> {
    match v {
        toml::Value::Array(a) => Ok(a),
        other => Err(cx.err(
            key,
            format!(
                "expected an array of tables ([[{key}]]), found {}",
                other.type_str()
            ),
        )),
    }
}

fn target(cx: &Ctx<'_>, key: &str, v: toml::Value) -> Result<TargetConfig, ConfigError> {
    let raw: RawTarget = cx.typed(key, v)?;
    validate::check_iscsi_name(&raw.iqn).map_err(|e| cx.err(format!("{key}.iqn"), e))?;
    if let Some(acl) = &raw.acl {
        for (i, ini) in acl.iter().enumerate() {
            validate::check_iscsi_name(ini).map_err(|e| cx.err(format!("{key}.acl[{i}]"), e))?;
        }
    }
    let chap = match raw.chap {
        None => None,
        Some(v) => {
            let k = format!("{key}.chap");
            let ch: ChapConfig = cx.typed(&k, v)?;
            unmasked(cx, &format!("{k}.secret"), &ch.secret)?;
            if let Some(ms) = &ch.mutual_secret {
                unmasked(cx, &format!("{k}.mutual_secret"), ms)?;
            }
            let mutual = match (&ch.mutual_user, &ch.mutual_secret) {
                (Some(u), Some(s)) => Some((u.as_str(), s.as_str())),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(cx.err(
                        format!("{k}.mutual_secret"),
                        "missing: mutual CHAP needs mutual_user and mutual_secret",
                    ))
                }
                (None, Some(_)) => {
                    return Err(cx.err(
                        format!("{k}.mutual_user"),
                        "missing: mutual CHAP needs mutual_user and mutual_secret",
                    ))
                }
            };
            let notes =
                validate::check_chap(&ch.user, &ch.secret, mutual).map_err(|e| cx.err(&k, e))?;
            for n in notes {
                tracing::warn!(file = cx.file, key = %k, "{n}");
            }
            Some(ch)
        }
    };
    let mut luns: Vec<LunConfig> = Vec::new();
    for (j, v) in raw.lun.into_iter().enumerate() {
        let k = format!("{key}.lun[{j}]");
        let l: LunConfig = cx.typed(&k, v)?;
        validate::check_lun(l.lun).map_err(|e| cx.err(format!("{k}.lun"), e))?;
        if luns.iter().any(|o| o.lun == l.lun) {
            return Err(cx.err(
                format!("{k}.lun"),
                format!("LUN {} is declared twice", l.lun),
            ));
        }
        luns.push(l);
    }
    Ok(TargetConfig {
        iqn: raw.iqn,
        acl: raw.acl,
        chap,
        luns,
    })
}

/// A `[[replication]]` table, checked as `ctl replication create` checks its arguments.
fn replication(cx: &Ctx<'_>, key: &str, v: toml::Value) -> Result<ReplicationConfig, ConfigError> {
    let r: ReplicationConfig = cx.typed(key, v)?;
    validate::check_set_name(&r.name).map_err(|e| cx.err(format!("{key}.name"), e))?;
    validate::check_peer_name(&r.peer).map_err(|e| cx.err(format!("{key}.peer"), e))?;
    match (&r.volume, &r.group) {
        (Some(v), None) => {
            validate::check_volume_name(v).map_err(|e| cx.err(format!("{key}.volume"), e))?
        }
        (None, Some(g)) => {
            validate::check_group_name(g).map_err(|e| cx.err(format!("{key}.group"), e))?
        }
        _ => return Err(cx.err(key, validate::ValidationError::SetSource)),
    }
    if let Some(remote) = &r.remote_volumes {
        for (j, v) in remote.iter().enumerate() {
            validate::check_volume_name(v)
                .map_err(|e| cx.err(format!("{key}.remote_volumes[{j}]"), e))?;
        }
    }
    if let Some(e) = &r.every {
        validate::parse_duration(e).map_err(|e| cx.err(format!("{key}.every"), e))?;
    }
    if r.keep == 0 {
        return Err(cx.err(format!("{key}.keep"), "must be at least 1"));
    }
    if let Some(rate) = &r.max_rate {
        validate::parse_rate(rate).map_err(|e| cx.err(format!("{key}.max_rate"), e))?;
    }
    if r.role == ReplicationRole::Secondary {
        if r.every.is_some() {
            return Err(cx.err(
                format!("{key}.every"),
                "a secondary runs no cycles of its own (the primary's schedule decides)",
            ));
        }
        if !r.compress.is_none() {
            return Err(cx.err(
                format!("{key}.compress"),
                "a secondary decodes what the primary sends: compression is the primary's",
            ));
        }
        if r.max_rate.is_some() {
            return Err(cx.err(
                format!("{key}.max_rate"),
                "a secondary sends no cuts: the cap is the primary's",
            ));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{GroupSpec, TargetSpec};

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:3260", "[::1]:3260"]
engine = "threads"
log_format = "json"

[[volume]]
name = "db"
size = "10G"
block_size = 4096
page_size = "64K"

[[volume]]
name = "logs"
size = 1073741824

[[group]]
name = "app"
volumes = ["db", "logs"]

[[target]]
iqn = "iqn.2026-11.com.example:db"
acl = ["iqn.1994-05.com.redhat:client1"]
[target.chap]
user = "client1"
secret = "0123456789ab"
[[target.lun]]
lun = 0
volume = "db"
[[target.lun]]
lun = 1
volume = "logs"
read_only = true
removable = true
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.server.engine, Some(EngineChoice::Threads));
        assert_eq!(c.server.log_format, Some(LogFormat::Json));
        assert_eq!(c.server.listen.as_ref().unwrap().len(), 2);
        assert_eq!(
            c.volumes[0],
            VolumeConfig {
                name: "db".into(),
                size: 10 << 30,
                block_size: 4096,
                page_size: Some(64 << 10),
                provisioning: None,
                allow_sanitize: None,
            }
        );
        assert_eq!(c.volumes[1].block_size, 512);
        let t = &c.targets[0];
        assert_eq!(
            t.luns[1],
            LunConfig {
                lun: 1,
                volume: "logs".into(),
                read_only: true,
                removable: true,
            }
        );
        assert_eq!(t.chap.as_ref().unwrap().user, "client1");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases: &[(&str, &str)] = &[
            ("bogus = 1", "t.toml: bogus: unknown key"),
            ("[server]\nlisten = 5", "t.toml: server.listen:"),
            ("[server]\nport = 5", "t.toml: server: unknown field `port`"),
            ("[server]\nengine = \"fast\"", "t.toml: server.engine:"),
            ("[server]\nlog_format = \"xml\"", "t.toml: server.log_format: unknown variant `xml`"),
            ("[server]\nlisten = [\"nope\"]", "t.toml: server.listen:"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\nsise = 3", "t.toml: volume[0]: unknown field `sise`"),
            ("[[volume]]\nname = \"a\"", "t.toml: volume[0]: missing field `size`"),
            ("[[volume]]\nname = \"a\"\nsize = \"1Q\"", "t.toml: volume[0].size:"),
            ("[[volume]]\nname = \"a\"\nsize = 1000", "t.toml: volume[0].size: size 1000 is not a multiple"),
            ("[[volume]]\nname = \"a/b\"\nsize = \"1G\"", "t.toml: volume[0].name: invalid volume name"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\nblock_size = \"x\"", "t.toml: volume[0].block_size:"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\n[[volume]]\nname = \"a\"\nsize = \"1G\"", "t.toml: volume[1].name: volume 'a' is declared twice"),
            ("volume = 3", "t.toml: volume: expected an array of tables"),
            ("[[target]]\niqn = \"nope\"", "t.toml: target[0].iqn: invalid iSCSI name"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\nacl = [\"bad\"]", "t.toml: target[0].acl[0]:"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[[target.lun]]\nlun = 0\nvolume = \"v\"\nro = true", "t.toml: target[0].lun[0]: unknown field `ro`"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[[target.lun]]\nlun = 0\nvolume = 3", "t.toml: target[0].lun[0].volume:"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[[target.lun]]\nlun = 99999\nvolume = \"v\"", "t.toml: target[0].lun[0].lun: LUN 99999"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[target.chap]\nuser = \"u\"\nsecret = \"\"", "t.toml: target[0].chap: invalid CHAP"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[target.chap]\nuser = \"u\"\nsecret = \"0123456789ab\"\nmutual_user = \"m\"", "t.toml: target[0].chap.mutual_secret: missing"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[target.chap]\nuser = \"u\"\nsecret = \"0123456789ab\"\npassword = \"x\"", "t.toml: target[0].chap: unknown field `password`"),
            ("[[target]\n", "t.toml: TOML parse error"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\nprovisioning = \"fat\"", "t.toml: volume[0].provisioning"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\npage_size = \"2K\"", "t.toml: volume[0].page_size: page size 2048 is not supported"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\npage_size = \"2M\"", "t.toml: volume[0].page_size: page size 2097152"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\npage_size = 12288", "t.toml: volume[0].page_size: page size 12288"),
            ("[[volume]]\nname = \"a\"\nsize = \"1G\"\npage_size = \"big\"", "t.toml: volume[0].page_size: invalid size"),
            ("group = 1", "t.toml: group: expected an array of tables"),
            ("[[group]]\nname = \"g\"", "t.toml: group[0]: missing field `volumes`"),
            ("[[group]]\nname = \"g\"\nvolumes = [\"a\"]\nset = \"x\"", "t.toml: group[0]: unknown field `set`"),
            ("[[group]]\nname = \"g/h\"\nvolumes = [\"a\"]", "t.toml: group[0].name: invalid group name"),
            ("[[group]]\nname = \"g\"\nvolumes = []", "t.toml: group[0].volumes: a group needs at least one volume"),
            ("[[group]]\nname = \"g\"\nvolumes = \"a\"", "t.toml: group[0].volumes:"),
            ("[[group]]\nname = \"g\"\nvolumes = [\"a\", \"b/c\"]", "t.toml: group[0].volumes[1]: invalid volume name"),
            ("[[group]]\nname = \"g\"\nvolumes = [\"a\", \"a\"]", "t.toml: group[0].volumes[1]: volume 'a' is listed twice"),
            ("[[group]]\nname = \"g\"\nvolumes = [\"a\"]\n[[group]]\nname = \"g\"\nvolumes = [\"b\"]", "t.toml: group[1].name: group 'g' is declared twice"),
            ("[[group]]\nname = \"g\"\nvolumes = [\"a\"]\n[[group]]\nname = \"h\"\nvolumes = [\"b\", \"a\"]", "t.toml: group[1].volumes[1]: volume 'a' is also in group 'g'"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n  got:  {got}\n  want: {want}..."
            );
        }
    }

    #[test]
    fn peers_sets_and_schedules_errors_name_keys() {
        let peer =
            "[[peer]]\nname = \"dr\"\naddr = \"127.0.0.1:3261\"\nsecret = \"0123456789abc\"\n";
        let set = "[[replication]]\nname = \"s\"\nrole = \"primary\"\npeer = \"dr\"\nkeep = 2\n";
        let cases: &[(String, &str)] = &[
            ("[[peer]]\nname = \"dr\"\naddr = \"x\"\nsecret = \"0123456789abc\"".into(), "t.toml: peer[0].addr: invalid peer address"),
            ("[[peer]]\nname = \"dr\"\naddr = \"h:1\"\nsecret = \"short\"".into(), "t.toml: peer[0].secret: invalid peer secret"),
            (format!("[[peer]]\nname = \"dr\"\naddr = \"h:1\"\nsecret = \"{MASKED_SECRET}\""), "t.toml: peer[0].secret: the secret was masked"),
            (format!("{peer}{peer}"), "t.toml: peer[1].name: peer 'dr' is declared twice"),
            (format!("{peer}pinned_key = \"sha256:abc\""), "t.toml: peer[0].pinned_key: invalid key fingerprint 'sha256:abc'"),
            (format!("{peer}pinned_key = \"md5:{}\"", "a".repeat(64)), "t.toml: peer[0].pinned_key: invalid key fingerprint"),
            ("[[peer]]\nname = \"dr\"\naddr = \"h:1\"".into(), "t.toml: peer[0]: missing field `secret`"),
            (format!("{set}volume = \"v\"\ngroup = \"g\""), "t.toml: replication[0]: a replication set is of one volume or of one group"),
            (set.to_string(), "t.toml: replication[0]: a replication set is of one volume or of one group"),
            (format!("{set}volume = \"v\"\nevery = \"5x\""), "t.toml: replication[0].every: invalid duration"),
            (format!("{set}volume = \"v\"\ncompress = \"gzip\""), "t.toml: replication[0].compress:"),
            (format!("{set}volume = \"v\"\nqueue_policy = \"all\""), "t.toml: replication[0].queue_policy:"),
            (format!("{set}volume = \"v\"\nmax_rate = \"fast\""), "t.toml: replication[0].max_rate: invalid --max-rate 'fast'"),
            (format!("{set}volume = \"v\"\nmax_rate = \"100K\""), "t.toml: replication[0].max_rate: invalid --max-rate '100K': the lowest rate"),
            ("[[replication]]\nname = \"s\"\nrole = \"secondary\"\npeer = \"dr\"\nkeep = 1\nvolume = \"v\"\nmax_rate = \"5M\"".into(), "t.toml: replication[0].max_rate: a secondary sends no cuts"),
            ("[[peer]]\nname = \"dr\"\naddr = \"h:1\"\nsecret = \"0123456789abc\"\nmax_rate = \"0\"".into(), "t.toml: peer[0].max_rate: invalid --max-rate '0'"),
            ("[[replication]]\nname = \"s\"\nrole = \"primary\"\npeer = \"dr\"\nkeep = 0\nvolume = \"v\"".into(), "t.toml: replication[0].keep: must be at least 1"),
            ("[[replication]]\nname = \"s\"\nrole = \"boss\"\npeer = \"dr\"\nkeep = 1\nvolume = \"v\"".into(), "t.toml: replication[0].role:"),
            ("[[replication]]\nname = \"s\"\nrole = \"secondary\"\npeer = \"dr\"\nkeep = 1\nvolume = \"v\"\nevery = \"1h\"".into(), "t.toml: replication[0].every: a secondary runs no cycles"),
            (format!("{set}volume = \"v\"\nremote_volumes = [\"a/b\"]"), "t.toml: replication[0].remote_volumes[0]: invalid volume name"),
            (format!("{set}volume = \"v\"\nsecret = \"x\""), "t.toml: replication[0]: unknown field `secret`"),
            ("[[schedule]]\ntask = \"a,b\"\nset = \"s\"\nstart = \"now\"".into(), "t.toml: schedule[0].task: invalid task name"),
            ("[[schedule]]\ntask = \"t\"\nset = \"s\"\nstart = \"tomorrow\"".into(), "t.toml: schedule[0].start: invalid start time"),
            ("[[schedule]]\ntask = \"t\"\nset = \"s\"\nstart = \"now\"\nevery = \"0s\"".into(), "t.toml: schedule[0].every: invalid duration"),
            ("[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[target.chap]\nuser = \"u\"\nsecret = \"0123456789ab\"\nmutual_user = \"m\"\nmutual_secret = \"<masked: export with --with-secrets>\"".into(), "t.toml: target[0].chap.mutual_secret: the secret was masked"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}\n  got:  {got}\n  want: {want}..."
            );
        }
    }

    #[test]
    fn a_declared_pin_is_set_and_an_undeclared_one_kept() {
        let fp = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let peer =
            "[[peer]]\nname = \"dr\"\naddr = \"127.0.0.1:3261\"\nsecret = \"0123456789abc\"\n";
        let mut cat = Catalog::default();
        let overlay = |text: &str, cat: &mut Catalog| {
            Config::parse(text, "c.toml")
                .unwrap()
                .overlay(cat, &mut || panic!("no new ids"))
                .unwrap();
        };
        overlay(peer, &mut cat);
        assert_eq!(cat.peers["dr"].pinned_key, None);
        overlay(&format!("{peer}pinned_key = \"{}\"\n", fp('a')), &mut cat);
        assert_eq!(cat.peers["dr"].pinned_key, Some(fp('a')));
        // A config that does not name the pin leaves the one the node made.
        overlay(peer, &mut cat);
        assert_eq!(cat.peers["dr"].pinned_key, Some(fp('a')));
        overlay(&format!("{peer}pinned_key = \"{}\"\n", fp('b')), &mut cat);
        assert_eq!(cat.peers["dr"].pinned_key, Some(fp('b')));
    }

    #[test]
    fn overlay_of_sets_and_schedules_checks_what_ctl_checks() {
        let base = "[[volume]]\nname = \"a\"\nsize = \"1M\"\n[[volume]]\nname = \"b\"\nsize = \"1M\"\n[[group]]\nname = \"g\"\nvolumes = [\"a\"]\n[[peer]]\nname = \"dr\"\naddr = \"127.0.0.1:3261\"\nsecret = \"0123456789abc\"\n";
        let overlay = |extra: &str| {
            let c = Config::parse(&format!("{base}{extra}"), "c.toml").unwrap();
            let mut cat = Catalog::default();
            let mut n = 0;
            c.overlay(&mut cat, &mut || {
                n += 1;
                n
            })
            .map(|()| cat)
            .map_err(|e| e.to_string())
        };
        let set = |body: &str| format!("[[replication]]\nname = \"s\"\nkeep = 2\n{body}\n");
        let cases = [
            (set("role = \"primary\"\npeer = \"nope\"\nvolume = \"b\""), "c.toml: replication[0].peer: no peer named 'nope'"),
            (set("role = \"primary\"\npeer = \"dr\"\nvolume = \"x\""), "c.toml: replication[0].volume: no volume named 'x'"),
            (set("role = \"primary\"\npeer = \"dr\"\nvolume = \"a\""), "c.toml: replication[0].volume: volume 'a' is in group 'g': replicate the group"),
            (set("role = \"primary\"\npeer = \"dr\"\ngroup = \"h\""), "c.toml: replication[0].group: no group named 'h'"),
            (set("role = \"primary\"\npeer = \"dr\"\ngroup = \"g\"\nremote_volumes = [\"x\", \"y\"]"), "c.toml: replication[0].remote_volumes: names 2 volumes; the set has 1 (a)"),
            (format!("{}[[replication]]\nname = \"t\"\nkeep = 2\nrole = \"primary\"\npeer = \"dr\"\ngroup = \"g\"\n", set("role = \"primary\"\npeer = \"dr\"\ngroup = \"g\"")), "c.toml: replication[1].group: volume 'a' is already in replication set 's'"),
            (format!("{}[[schedule]]\ntask = \"n\"\nset = \"x\"\nstart = \"now\"\n", set("role = \"primary\"\npeer = \"dr\"\nvolume = \"b\"")), "c.toml: schedule[0].set: no replication set named 'x'"),
            (format!("{}[[schedule]]\ntask = \"n\"\nset = \"s\"\nstart = \"now\"\n", set("role = \"secondary\"\npeer = \"dr\"\nvolume = \"b\"")), "c.toml: schedule[0].set: replication set 's' is the secondary side here"),
            (format!("{}[[target]]\niqn = \"iqn.2026-11.io.x:t\"\n[[target.lun]]\nlun = 0\nvolume = \"b\"\n", set("role = \"secondary\"\npeer = \"dr\"\nvolume = \"b\"")), "c.toml: target[0].lun[0].read_only: volume 'b' is the secondary side of replication set 's'"),
        ];
        for (extra, want) in cases {
            let got = overlay(&extra).unwrap_err();
            assert!(
                got.starts_with(want),
                "for {extra:?}\n  got:  {got}\n  want: {want}..."
            );
        }
        // A good one: the group is marked, the set is numbered, and a second start
        // with another `every` changes only that; another `keep` is refused.
        let good = set("role = \"primary\"\npeer = \"dr\"\ngroup = \"g\"\nevery = \"90m\"");
        let mut cat = overlay(&good).unwrap();
        assert_eq!(cat.groups["g"].replication_set.as_deref(), Some("s"));
        let r = cat.replications["s"].clone();
        assert!(r.id != 0 && r.every_secs == Some(5400) && r.remote_volumes == ["a"]);
        let again =
            Config::parse(&format!("{base}{}", good.replace("90m", "2h")), "c.toml").unwrap();
        again
            .overlay(&mut cat, &mut || panic!("no new ids"))
            .unwrap();
        assert_eq!(cat.replications["s"].every_secs, Some(7200));
        assert_eq!(cat.replications["s"].id, r.id);
        let other = Config::parse(
            &format!("{base}{}", good.replace("keep = 2", "keep = 4")),
            "c.toml",
        )
        .unwrap();
        let e = other.overlay(&mut cat, &mut || 9).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "c.toml: replication[0]: replication set 's' already exists with another"
            ),
            "{e}"
        );
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(86_400 * 2), "2d");
        assert_eq!(format_duration(61), "61s");
    }

    #[test]
    fn overlay_creates_and_updates_but_keeps_admin_objects() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        let mut cat = Catalog::embedded_default(1);
        // An admin-made ACL entry on the demo target and a LUN on the config target.
        cat.targets
            .get_mut(Catalog::DEMO_TARGET)
            .unwrap()
            .acl
            .insert("iqn.2001-04.com.example:x".into());
        let mut admin_target = TargetSpec::default();
        admin_target.luns.insert(
            5,
            LunSpec {
                volume: "demo".into(),
                read_only: false,
                removable: false,
            },
        );
        cat.targets
            .insert("iqn.2026-11.com.example:db".into(), admin_target);
        let mut n = 100;
        c.overlay(&mut cat, &mut || {
            n += 1;
            n
        })
        .unwrap();
        assert_eq!(cat.volumes["db"].id, 101);
        let logs = &cat.volumes["logs"];
        assert_eq!(logs.path, crate::datadir::volume_file_rel(logs.id));
        let t = &cat.targets["iqn.2026-11.com.example:db"];
        assert_eq!(
            t.luns.len(),
            3,
            "config LUNs 0 and 1 added, admin LUN 5 kept"
        );
        assert_eq!(t.acl.len(), 1);
        assert!(t.chap.is_some());
        assert_eq!(cat.targets[Catalog::DEMO_TARGET].acl.len(), 1);

        // Applying again changes nothing (ids are stable).
        let before = cat.clone();
        c.overlay(&mut cat, &mut || panic!("no new ids")).unwrap();
        assert_eq!(cat, before);
    }

    #[test]
    fn overlay_errors_name_keys() {
        let text = "[[target]]\niqn = \"iqn.2026-11.io.x:a\"\n[[target.lun]]\nlun = 0\nvolume = \"demo\"\n[[target.lun]]\nlun = 1\nvolume = \"x\"";
        let c = Config::parse(text, "c.toml").unwrap();
        let mut cat = Catalog::embedded_default(1);
        let e = c.overlay(&mut cat, &mut || 5).unwrap_err().to_string();
        assert_eq!(e, "c.toml: target[0].lun[1].volume: no volume named 'x'");

        let c = Config::parse("[[volume]]\nname = \"demo\"\nsize = \"2G\"", "c.toml").unwrap();
        let e = c.overlay(&mut cat, &mut || 5).unwrap_err().to_string();
        assert!(
            e.starts_with("c.toml: volume[0].size: volume 'demo' already exists"),
            "{e}"
        );
    }

    #[test]
    fn overlay_sets_page_sizes_and_groups() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        let mut cat = Catalog::embedded_default(1);
        let mut n = 10;
        c.overlay(&mut cat, &mut || {
            n += 1;
            n
        })
        .unwrap();
        assert_eq!(cat.volumes["db"].page_size, 64 << 10);
        assert_eq!(cat.volumes["logs"].page_size, 4096, "4 KiB by default");
        assert_eq!(cat.groups["app"].volumes, ["db", "logs"]);
        // A group made with ctl is kept; the config's group is set to its list again.
        cat.groups.insert(
            "mine".into(),
            GroupSpec {
                volumes: vec!["demo".into()],
                replication_set: None,
            },
        );
        cat.groups.get_mut("app").unwrap().volumes.pop();
        c.overlay(&mut cat, &mut || panic!("no new ids")).unwrap();
        assert_eq!(cat.groups["app"].volumes, ["db", "logs"]);
        assert_eq!(cat.groups["mine"].volumes, ["demo"]);

        // Omitting page_size keeps an existing volume's; naming another is an error.
        let keep = Config::parse(
            "[[volume]]\nname = \"db\"\nsize = \"10G\"\nblock_size = 4096",
            "c.toml",
        )
        .unwrap();
        keep.overlay(&mut cat, &mut || 5).unwrap();
        assert_eq!(cat.volumes["db"].page_size, 64 << 10);
        let other = Config::parse(
            "[[volume]]\nname = \"db\"\nsize = \"10G\"\nblock_size = 4096\npage_size = \"4K\"",
            "c.toml",
        )
        .unwrap();
        let e = other.overlay(&mut cat, &mut || 5).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "c.toml: volume[0].page_size: volume 'db' already exists with page size 65536"
            ),
            "{e}"
        );
    }

    #[test]
    fn overlay_group_errors_name_keys() {
        let mut cat = Catalog::embedded_default(1);
        let c = Config::parse(
            "[[group]]\nname = \"g\"\nvolumes = [\"demo\", \"x\"]",
            "c.toml",
        )
        .unwrap();
        let e = c.overlay(&mut cat, &mut || 5).unwrap_err().to_string();
        assert_eq!(e, "c.toml: group[0].volumes[1]: no volume named 'x'");

        // A volume in a group made with ctl cannot join a config group.
        cat.groups.insert(
            "mine".into(),
            GroupSpec {
                volumes: vec!["demo".into()],
                replication_set: None,
            },
        );
        let c = Config::parse("[[group]]\nname = \"g\"\nvolumes = [\"demo\"]", "c.toml").unwrap();
        let e = c
            .overlay(&mut cat.clone(), &mut || 5)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml: group[0].volumes[0]: volume 'demo' is in group 'mine'; a volume belongs to at most one group"
        );

        // A group in a replication set keeps its volumes.
        cat.groups.get_mut("mine").unwrap().replication_set = Some("dr1".into());
        let c = Config::parse(
            "[[volume]]\nname = \"v\"\nsize = \"1M\"\n[[group]]\nname = \"mine\"\nvolumes = [\"demo\", \"v\"]",
            "c.toml",
        )
        .unwrap();
        let e = c
            .overlay(&mut cat.clone(), &mut || 5)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml: group[0].volumes: group 'mine' is in replication set 'dr1'; its volumes cannot change while it is"
        );
        // Declaring it as it is changes nothing and is fine.
        let same =
            Config::parse("[[group]]\nname = \"mine\"\nvolumes = [\"demo\"]", "c.toml").unwrap();
        let before = cat.clone();
        same.overlay(&mut cat, &mut || 5).unwrap();
        assert_eq!(cat, before);
    }

    #[test]
    fn server_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\ndata_dir = \"d\"\nadmin_socket = \"/run/x.sock\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.server.data_dir, Some(dir.path().join("d")));
        assert_eq!(c.server.admin_socket, Some(PathBuf::from("/run/x.sock")));
        let e = Config::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/twinlun.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.volumes.is_empty() && !c.targets.is_empty());
        let mut cat = Catalog::default();
        let mut n = 0;
        c.overlay(&mut cat, &mut || {
            n += 1;
            n
        })
        .unwrap();
        assert_eq!(cat.groups["app"].volumes, ["db", "scratch"]);
        assert_eq!(cat.volumes["db"].page_size, 64 << 10);
    }
}
