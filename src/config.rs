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
//! Errors name the file and the key: `twinlun.toml: target[0].lun[1].volume: no volume named 'x'`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::catalog::{Catalog, ChapSpec, LunSpec, VolumeSpec, DEFAULT_PAGE_SIZE};
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, for error messages.
    pub file: String,
    pub server: ServerConfig,
    pub volumes: Vec<VolumeConfig>,
    pub groups: Vec<GroupConfig>,
    pub targets: Vec<TargetConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<Vec<SocketAddr>>,
    pub admin_socket: Option<PathBuf>,
    pub engine: Option<EngineChoice>,
    /// Accept replication from peers on this address.
    pub replication_listen: Option<SocketAddr>,
    /// How log lines are written to stderr.
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics (GET /metrics) on this address.
    pub metrics_listen: Option<SocketAddr>,
}

/// How the server writes its log to stderr: `text` for a person, `json` (one object
/// per line with level, target, fields and spans) for a log shipper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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

/// The io engine as named in the config and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Tracking page size; `None` means 4 KiB for a new volume and "keep" for an
    /// existing one.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub page_size: Option<u64>,
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub iqn: String,
    /// `None`: keep the catalog's ACL. `Some(empty)`: open to any initiator.
    pub acl: Option<Vec<String>>,
    pub chap: Option<ChapConfig>,
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

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    pub mutual_user: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub lun: u64,
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
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
        if let Some(k) = top.keys().next() {
            return Err(cx.err(
                k.clone(),
                "unknown key (expected server, volume, group or target)",
            ));
        }
        Ok(c)
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
                        },
                    );
                }
            }
        }
        self.overlay_groups(catalog)?;
        for (i, t) in self.targets.iter().enumerate() {
            for (j, l) in t.luns.iter().enumerate() {
                if !catalog.volumes.contains_key(&l.volume) {
                    return Err(cx.err(
                        format!("target[{i}].lun[{j}].volume"),
                        format!("no volume named '{}'", l.volume),
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
                    },
                );
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
                page_size: Some(64 << 10)
            }
        );
        assert_eq!(c.volumes[1].block_size, 512);
        let t = &c.targets[0];
        assert_eq!(
            t.luns[1],
            LunConfig {
                lun: 1,
                volume: "logs".into(),
                read_only: true
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
