//! The persisted model of what this node serves: volumes, targets, LUN maps, ACLs, CHAP.
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

impl Catalog {
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
                path: "volumes/demo.img".into(),
            },
        );
        let mut t = TargetSpec::default();
        t.luns.insert(
            0,
            LunSpec {
                volume: "demo".into(),
                read_only: false,
            },
        );
        c.targets.insert(Self::DEMO_TARGET.into(), t);
        c
    }

    /// Targets and LUNs that map `volume`.
    pub fn mappings_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.targets.iter().flat_map(move |(iqn, t)| {
            t.luns
                .iter()
                .filter(move |(_, l)| l.volume == volume)
                .map(move |(lun, _)| (iqn.as_str(), *lun))
        })
    }
}
