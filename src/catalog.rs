//! The persisted model of what this node serves: volumes, volume groups, targets, LUN
//! maps, ACLs, CHAP.
//!
//! The catalog is plain data. `admin` mutates it (validated, then persisted atomically
//! in the data dir); `server` reads it to decide what a login may see.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Everything an admin configured, as saved in `DATA_DIR/catalog.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Keyed by target IQN.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetSpec>,
    /// Volume groups, keyed by name: the unit of a consistent cut. A volume belongs to
    /// at most one group. Absent from catalogs written before groups existed.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    /// Point-in-time snapshots, keyed by name. Their kept pages live in the tracking
    /// state of each volume, which a clean shutdown saves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, SnapshotSpec>,
    /// Other twinlun nodes replication talks to, keyed by the name this node gives them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, PeerSpec>,
    /// Replication sets this node is the primary or the secondary of, keyed by set name
    /// (the same on both sides).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replications: BTreeMap<String, ReplicationSpec>,
    /// Scheduled replications, keyed by task name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// ALUA access states an admin set, by target port group (portal N of `serve
    /// --listen`, from 1, is group N). A group not listed is active/optimized.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_groups: BTreeMap<u16, PortGroupState>,
    /// DR drill copies on a secondary, keyed by the reference LUNs map them by
    /// (`VOLUME@rp:ID`): each a read-only copy of a recovery point, made when first
    /// mapped and removed with its last mapping. Not in `volumes`: no admin command
    /// other than `lun map`/`unmap` sees them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drills: BTreeMap<String, VolumeSpec>,
}

/// The asymmetric access state of a target port group (SPC-4 5.15.2.4), as an admin
/// sets it with `ctl port-group set`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortGroupState {
    /// Every command served, the path to prefer.
    #[default]
    ActiveOptimized,
    /// Every command served, a path to use when no optimized one is left.
    ActiveNonOptimized,
    /// Identity and mode pages served; media access answers NOT READY, TARGET PORT IN
    /// STANDBY STATE.
    Standby,
    /// Only INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS and REQUEST SENSE served.
    Unavailable,
}

impl PortGroupState {
    pub fn name(self) -> &'static str {
        match self {
            PortGroupState::ActiveOptimized => "active-optimized",
            PortGroupState::ActiveNonOptimized => "active-non-optimized",
            PortGroupState::Standby => "standby",
            PortGroupState::Unavailable => "unavailable",
        }
    }
}

/// A named task that runs `replicate SET` at `start` and then every `every_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub set: String,
    /// Unix seconds of the first run.
    pub start: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
}

impl ScheduleSpec {
    /// The last due time at or before `now`, if any.
    pub fn last_due(&self, now: u64) -> Option<u64> {
        if now < self.start {
            return None;
        }
        Some(match self.every_secs {
            Some(e) if e > 0 => self.start + (now - self.start) / e * e,
            _ => self.start,
        })
    }

    /// The next due time after `now`, if any.
    pub fn next_due(&self, now: u64) -> Option<u64> {
        if now < self.start {
            return Some(self.start);
        }
        let e = self.every_secs.filter(|e| *e > 0)?;
        Some(self.start + ((now - self.start) / e + 1) * e)
    }
}

/// Another twinlun's replication listener and the secret both sides share.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// `HOST:PORT` of its replication listener (on a secondary: where failback goes).
    pub addr: String,
    pub secret: String,
    /// Cap on what all sets to this peer send together, bytes/s (`--max-rate`);
    /// none: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
    /// The fingerprint (`sha256:` + hex of its SubjectPublicKeyInfo) of the TLS key the
    /// peer presented at the first authenticated contact; a connection presenting
    /// another is refused until `peer update --accept-new-key`. None until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_key: Option<String>,
}

impl std::fmt::Debug for PeerSpec {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSpec")
            .field("addr", &self.addr)
            .field("max_rate", &self.max_rate)
            .field("pinned_key", &self.pinned_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationRole {
    Primary,
    Secondary,
}

impl std::fmt::Display for ReplicationRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicationRole::Primary => "primary",
            ReplicationRole::Secondary => "secondary",
        })
    }
}

/// What `replicate` does while a cycle runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueuePolicy {
    /// Refuse the request and say so.
    Discard,
    /// Keep at most one request queued.
    #[default]
    QueueLatest,
}

impl QueuePolicy {
    /// The name an admin types and sees (as serde spells it).
    pub fn name(self) -> &'static str {
        match self {
            QueuePolicy::Discard => "discard",
            QueuePolicy::QueueLatest => "queue-latest",
        }
    }
}

/// How a set's data extents travel to the peer (`replication create --compress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// As read.
    #[default]
    None,
    /// zstd at a fast level: the better ratio.
    Zstd,
    /// LZ4 block format: the cheaper in CPU.
    Lz4,
}

impl Compression {
    /// Every value, in the order they are listed to an admin.
    pub const ALL: [Compression; 3] = [Compression::Zstd, Compression::Lz4, Compression::None];

    /// The name an admin types and sees.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    /// The value named `s` (as [`Compression::name`] spells it).
    pub fn parse(s: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn is_none(&self) -> bool {
        *self == Compression::None
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A volume or a group bound to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSpec {
    /// Names the set's state folder (`replication/ID`), never its name. Each side
    /// picks its own. Catalogs written before ids existed load with 0, and startup
    /// gives the set an id and moves its folder (`admin::startup`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    pub role: ReplicationRole,
    pub peer: String,
    /// The group replicated (on the secondary: the group its volumes were put in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// This side's volumes, in set order.
    pub volumes: Vec<String>,
    /// The other side's names for them, in the same order.
    pub remote_volumes: Vec<String>,
    /// Seconds between scheduled cycles (primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    #[serde(default)]
    pub queue_policy: QueuePolicy,
    /// Recovery points the secondary keeps.
    pub keep: u32,
    /// How data extents travel (primary). Absent from catalogs written before it
    /// existed, and left out when `none` so an older build still reads the catalog.
    #[serde(default, skip_serializing_if = "Compression::is_none")]
    pub compress: Compression,
    /// Cap on what this set sends, bytes/s (`--max-rate`, primary); none: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Size in bytes, a multiple of `block_size`.
    pub size: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Stable 64-bit identifier, used for the NAA designator (VPD 0x83) and serial.
    pub id: u64,
    /// Backing file. Relative paths are relative to the data dir.
    pub path: String,
    /// Write-tracking page size in bytes: a power of two from 4 KiB to 1 MiB, fixed at
    /// creation. Catalogs written before it existed load with the 4 KiB default.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Thin (a sparse file, the default) or thick (preallocated, answers as fully
    /// provisioned). Fixed at creation; absent from the JSON when thin.
    #[serde(default, skip_serializing_if = "Provisioning::is_thin")]
    pub provisioning: Provisioning,
    /// SANITIZE is offered on its LUNs (it wipes the whole volume from one CDB, so
    /// only where the admin said so at creation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_sanitize: bool,
    /// A copy-on-write clone of a secondary volume's recovery point (`VOLUME@rp:ID`,
    /// `volume clone --from`): what its file does not hold reads from the point, which
    /// stays pinned while the clone exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<String>,
}

/// How a volume's blocks are provisioned (SBC-4 4.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    /// A sparse file: blocks are allocated when written, UNMAP gives them back (LBPME).
    #[default]
    Thin,
    /// Every block allocated at creation (fallocate); UNMAP is not supported and a
    /// deallocation zeroes in place, so the file never shrinks.
    Thick,
}

impl Provisioning {
    pub fn is_thin(&self) -> bool {
        *self == Provisioning::Thin
    }

    pub fn is_thick(&self) -> bool {
        *self == Provisioning::Thick
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Provisioning::Thin => "thin",
            Provisioning::Thick => "thick",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provisioning (expected thin or thick)")]
pub struct UnknownProvisioning;

impl std::str::FromStr for Provisioning {
    type Err = UnknownProvisioning;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "thin" => Ok(Provisioning::Thin),
            "thick" => Ok(Provisioning::Thick),
            _ => Err(UnknownProvisioning),
        }
    }
}

/// The tracking page size of a volume created without one: 4 KiB.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// Smallest and largest tracking page sizes.
pub const MIN_PAGE_SIZE: u32 = 4096;
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

pub fn default_page_size() -> u32 {
    DEFAULT_PAGE_SIZE
}

/// A volume group: volumes cut together at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Member volumes in the order they were added: the order their write gates close
    /// in at a cut. Never empty, never a volume twice.
    pub volumes: Vec<String>,
    /// The replication set this group is in, if any. While it is set, volumes cannot be
    /// added to or removed from the group, and the group cannot be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_set: Option<String>,
}

/// A snapshot of a volume, or of a group's volumes at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    /// The group it was taken of, if it was a group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its volumes (one for a volume snapshot), in gate order.
    pub volumes: Vec<String>,
    /// The cut it reads as: the id of the snapshot in each volume's tracking state.
    pub cut: u64,
    /// Unix time it was taken, seconds.
    pub created: u64,
    /// Writers' pause while it was taken, microseconds.
    pub pause_us: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Catalog {
    /// A random id no replication set of the catalog has, never 0.
    pub fn new_set_id(&self) -> u64 {
        loop {
            let id = rand::random::<u64>();
            if id != 0 && !self.replications.values().any(|r| r.id == id) {
                return id;
            }
        }
    }
}

impl SnapshotSpec {
    /// True when it holds `volume`.
    pub fn covers(&self, volume: &str) -> bool {
        self.volumes.iter().any(|v| v == volume)
    }
}

/// A LUN's volume field: a volume, or `VOLUME@SNAPSHOT` for a snapshot of it.
/// Names never contain `@`.
/// `VOLUME@rp:ID`: a secondary volume's recovery point ID, as `lun map` and `volume
/// clone --from` name it. Snapshot names cannot hold `:`, so no snapshot reads so.
pub fn split_point_ref(r: &str) -> Option<(&str, u64)> {
    let (volume, point) = r.split_once("@rp:")?;
    let cut = point.parse().ok()?;
    (!volume.is_empty()).then_some((volume, cut))
}

/// Whether a LUN's volume reference names a recovery point (a DR drill copy).
pub fn is_point_ref(r: &str) -> bool {
    split_snapshot_ref(r)
        .1
        .is_some_and(|s| s.starts_with("rp:"))
}

pub fn split_snapshot_ref(volume: &str) -> (&str, Option<&str>) {
    match volume.split_once('@') {
        Some((v, s)) => (v, Some(s)),
        None => (volume, None),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default)]
    pub luns: BTreeMap<u64, LunSpec>,
    /// Initiator IQNs allowed to log in. Empty means open to any initiator.
    #[serde(default)]
    pub acl: BTreeSet<String>,
    #[serde(default)]
    pub chap: Option<ChapSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
    /// Removable medium: INQUIRY reports RMB, START STOP UNIT ejects and loads it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removable: bool,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSpec {
    /// Name the initiator must present (CHAP_N).
    pub user: String,
    pub secret: String,
    /// For mutual CHAP: the name and secret the target answers with.
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for ChapSpec {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSpec")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual_user)
            .finish_non_exhaustive()
    }
}

/// A rule of the catalog a hand-edited `catalog.json` breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("volume '{volume}': page size {page_size} is not a power of two from 4K to 1M")]
    PageSize { volume: String, page_size: u32 },
    #[error("group '{0}' has no volumes")]
    GroupEmpty(String),
    #[error("group '{group}' names volume '{volume}', which does not exist")]
    GroupNoVolume { group: String, volume: String },
    #[error("volume '{volume}' is in two groups, '{first}' and '{second}'")]
    InTwoGroups {
        volume: String,
        first: String,
        second: String,
    },
    #[error("snapshot '{snapshot}' names volume '{volume}', which does not exist")]
    SnapshotNoVolume { snapshot: String, volume: String },
    #[error("replication set '{set}' names volume '{volume}', which does not exist")]
    ReplicationNoVolume { set: String, volume: String },
    #[error("replication set '{set}' names peer '{peer}', which does not exist")]
    ReplicationNoPeer { set: String, peer: String },
}

impl Catalog {
    /// Checks the rules `admin` keeps, for a catalog read from disk: page sizes in range,
    /// every group non-empty and naming existing volumes, no volume in two groups (nor
    /// twice in one).
    pub fn check(&self) -> Result<(), CatalogError> {
        for (name, v) in &self.volumes {
            let p = v.page_size;
            if !p.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&p) {
                return Err(CatalogError::PageSize {
                    volume: name.clone(),
                    page_size: p,
                });
            }
        }
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (group, g) in &self.groups {
            if g.volumes.is_empty() {
                return Err(CatalogError::GroupEmpty(group.clone()));
            }
            for v in &g.volumes {
                if !self.volumes.contains_key(v) {
                    return Err(CatalogError::GroupNoVolume {
                        group: group.clone(),
                        volume: v.clone(),
                    });
                }
                if let Some(first) = owner.insert(v, group) {
                    return Err(CatalogError::InTwoGroups {
                        volume: v.clone(),
                        first: first.to_string(),
                        second: group.clone(),
                    });
                }
            }
        }
        for (set, r) in &self.replications {
            if let Some(v) = r.volumes.iter().find(|v| !self.volumes.contains_key(*v)) {
                return Err(CatalogError::ReplicationNoVolume {
                    set: set.clone(),
                    volume: v.clone(),
                });
            }
            if !self.peers.contains_key(&r.peer) {
                return Err(CatalogError::ReplicationNoPeer {
                    set: set.clone(),
                    peer: r.peer.clone(),
                });
            }
        }
        for (name, s) in &self.snapshots {
            if let Some(v) = s.volumes.iter().find(|v| !self.volumes.contains_key(*v)) {
                return Err(CatalogError::SnapshotNoVolume {
                    snapshot: name.clone(),
                    volume: v.clone(),
                });
            }
        }
        Ok(())
    }

    /// The target IQN served when a data dir is new and no config is given.
    pub const DEMO_TARGET: &'static str = "iqn.2026-11.io.twinlun:demo";

    /// The embedded default: a 1 GiB sparse volume `demo` at LUN 0 of the demo target,
    /// open to any initiator, no CHAP.
    pub fn embedded_default(id: u64) -> Catalog {
        let mut c = Catalog::default();
        c.volumes.insert(
            "demo".into(),
            VolumeSpec {
                size: 1 << 30,
                block_size: 512,
                id,
                path: crate::datadir::volume_file_rel(id),
                page_size: DEFAULT_PAGE_SIZE,
                provisioning: Provisioning::Thin,
                allow_sanitize: false,
                clone_of: None,
            },
        );
        let mut t = TargetSpec::default();
        t.luns.insert(
            0,
            LunSpec {
                volume: "demo".into(),
                read_only: false,
                removable: false,
            },
        );
        c.targets.insert(Self::DEMO_TARGET.into(), t);
        c
    }

    /// The group `volume` belongs to, if any.
    pub fn group_of(&self, volume: &str) -> Option<&str> {
        self.groups
            .iter()
            .find(|(_, g)| g.volumes.iter().any(|v| v == volume))
            .map(|(name, _)| name.as_str())
    }

    /// Targets and LUNs that map `volume` (a volume name or `VOLUME@SNAPSHOT`).
    pub fn mappings_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.targets.iter().flat_map(move |(iqn, t)| {
            t.luns
                .iter()
                .filter(move |(_, l)| l.volume == volume)
                .map(move |(lun, _)| (iqn.as_str(), *lun))
        })
    }

    /// LUNs that map a volume of snapshot `snapshot`: (volume, target, LUN).
    pub fn snapshot_mappings<'a>(
        &'a self,
        snapshot: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, u64)> + 'a {
        self.targets.iter().flat_map(move |(iqn, t)| {
            t.luns
                .iter()
                .filter_map(move |(lun, l)| match split_snapshot_ref(&l.volume) {
                    (v, Some(s)) if s == snapshot => Some((v, iqn.as_str(), *lun)),
                    _ => None,
                })
        })
    }

    /// The replication set `volume` is in, with its spec.
    pub fn replication_of(&self, volume: &str) -> Option<(&str, &ReplicationSpec)> {
        self.replications
            .iter()
            .find(|(_, r)| r.volumes.iter().any(|v| v == volume))
            .map(|(n, r)| (n.as_str(), r))
    }

    /// True when `volume` is the secondary copy of a replication set: never writable.
    pub fn is_secondary(&self, volume: &str) -> bool {
        self.replication_of(volume)
            .is_some_and(|(_, r)| r.role == ReplicationRole::Secondary)
    }

    /// The LUNs mapping a recovery point (`V@rp:ID`, a DR drill) of one of `volumes`:
    /// (target, LUN, reference).
    pub fn drill_luns(&self, volumes: &[String]) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        for (iqn, t) in &self.targets {
            for (lun, l) in &t.luns {
                if split_point_ref(&l.volume).is_some_and(|(v, _)| volumes.iter().any(|x| x == v)) {
                    out.push((iqn.clone(), *lun, l.volume.clone()));
                }
            }
        }
        out
    }

    /// The copy-on-write clones of a recovery point of one of `volumes`: (clone,
    /// reference).
    pub fn drill_clones(&self, volumes: &[String]) -> Vec<(String, String)> {
        self.volumes
            .iter()
            .filter_map(|(name, v)| {
                let r = v.clone_of.as_ref()?;
                let (base, _) = split_point_ref(r)?;
                volumes
                    .iter()
                    .any(|x| x == base)
                    .then(|| (name.clone(), r.clone()))
            })
            .collect()
    }

    /// What pins recovery points of `volumes`: each drill LUN and clone, as (the point,
    /// what it is, e.g. `clone 'x'`, its reference `VOLUME@rp:ID`).
    pub fn drill_pinners(&self, volumes: &[String]) -> Vec<(u64, String, String)> {
        let luns = self
            .drill_luns(volumes)
            .into_iter()
            .map(|(iqn, lun, r)| (format!("{iqn} LUN {lun}"), r));
        let clones = self
            .drill_clones(volumes)
            .into_iter()
            .map(|(name, r)| (format!("clone '{name}'"), r));
        luns.chain(clones)
            .filter_map(|(who, r)| Some((split_point_ref(&r)?.1, who, r)))
            .collect()
    }

    /// What keeps recovery points of `volumes` pinned, for a refusal: drill LUNs and
    /// clones.
    pub fn drill_users(&self, volumes: &[String]) -> Vec<String> {
        self.drill_pinners(volumes)
            .into_iter()
            .map(|(_, who, r)| format!("{who} ({r})"))
            .collect()
    }

    /// The points the drill LUNs and clones of `volumes` pin, once per user.
    pub fn drill_pins(&self, volumes: &[String]) -> Vec<u64> {
        self.drill_pinners(volumes)
            .into_iter()
            .map(|(cut, _, _)| cut)
            .collect()
    }

    /// Snapshots that hold `volume`.
    pub fn snapshots_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.snapshots
            .iter()
            .filter(move |(_, s)| s.covers(volume))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_from_before_groups_and_page_sizes_loads() {
        let old = r#"{
  "volumes": {
    "demo": { "size": 1073741824, "block_size": 512, "id": 42, "path": "volumes/demo.img" }
  },
  "targets": {}
}"#;
        let c: Catalog = serde_json::from_str(old).unwrap();
        assert_eq!(c.volumes["demo"].page_size, DEFAULT_PAGE_SIZE);
        assert!(c.groups.is_empty());
    }

    #[test]
    fn a_replication_set_from_before_compression_loads_and_saves_the_same() {
        let old = r#"{"role":"primary","peer":"dr","volumes":["a"],"remote_volumes":["a"],"queue_policy":"discard","keep":8}"#;
        let spec: ReplicationSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.compress, Compression::None);
        // `none` stays out of the file, so an older build still reads it.
        assert_eq!(serde_json::to_string(&spec).unwrap(), old);
        let mut zstd = spec.clone();
        zstd.compress = Compression::Zstd;
        let json = serde_json::to_string(&zstd).unwrap();
        assert!(json.ends_with(r#""keep":8,"compress":"zstd"}"#), "{json}");
        assert_eq!(
            serde_json::from_str::<ReplicationSpec>(&json).unwrap(),
            zstd
        );
        for c in Compression::ALL {
            assert_eq!(Compression::parse(c.name()), Some(c));
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        for q in [QueuePolicy::Discard, QueuePolicy::QueueLatest] {
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.name())
            );
        }
        assert_eq!(Compression::parse("gzip"), None);
        assert_eq!(Compression::parse("ZSTD"), None);
    }

    #[test]
    fn check_finds_hand_edits_that_break_the_rules() {
        let mut c = Catalog::embedded_default(1);
        assert_eq!(c.check(), Ok(()));
        c.volumes.get_mut("demo").unwrap().page_size = 3000;
        assert!(matches!(c.check(), Err(CatalogError::PageSize { .. })));
        c.volumes.get_mut("demo").unwrap().page_size = 1 << 20;
        let group = |vols: &[&str]| GroupSpec {
            volumes: vols.iter().map(|v| v.to_string()).collect(),
            replication_set: None,
        };
        c.groups.insert("g".into(), group(&[]));
        assert_eq!(c.check(), Err(CatalogError::GroupEmpty("g".into())));
        c.groups.insert("g".into(), group(&["demo", "gone"]));
        assert!(matches!(c.check(), Err(CatalogError::GroupNoVolume { .. })));
        c.groups.insert("g".into(), group(&["demo"]));
        assert_eq!(c.check(), Ok(()));
        c.groups.insert("h".into(), group(&["demo"]));
        assert_eq!(
            c.check().unwrap_err().to_string(),
            "volume 'demo' is in two groups, 'g' and 'h'"
        );
        c.groups.remove("h");
        c.groups.insert("g".into(), group(&["demo", "demo"]));
        assert!(matches!(c.check(), Err(CatalogError::InTwoGroups { .. })));
    }

    #[test]
    fn group_of_finds_the_group() {
        let mut c = Catalog::embedded_default(1);
        assert_eq!(c.group_of("demo"), None);
        c.groups.insert(
            "g".into(),
            GroupSpec {
                volumes: vec!["demo".into()],
                replication_set: None,
            },
        );
        assert_eq!(c.group_of("demo"), Some("g"));
        assert_eq!(c.group_of("other"), None);
        // The reserved field stays out of the file until it is used.
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("replication_set"), "{json}");
    }
}
