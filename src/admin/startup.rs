//! The catalog a server starts with.
//!
//! 1. `DATA_DIR/catalog.json` if there is one; else, without a config, the embedded
//!    default (a 1 GiB volume `demo` at LUN 0 of `iqn.2026-11.io.twinlun:demo`), and
//!    with a config, an empty catalog.
//! 2. The config, if any, is overlaid (`Config::overlay`).
//! 3. Backing files: a volume new in this start gets its sparse file created; a volume
//!    that was already saved must still have its file, at the saved size (twinlun never
//!    silently serves zeros where data used to be).
//! 4. The result is saved atomically, then returned for `Node::new`.
//! 5. Data dirs written before names stopped being paths kept tracking state in
//!    `tracking/NAME` and replication state in `replication/SET`: those folders move,
//!    once, to their id-named places (`datadir`), after the ids are saved, and the log
//!    says so. Volume files stay where the catalog records them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::apply::{create_volume_file, volume_file, AdminError};
use super::store::{self, StoreError};
use super::validate;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{catalog}: {source}")]
    Catalog {
        catalog: PathBuf,
        #[source]
        source: CatalogError,
    },
    #[error("volume '{name}': its backing file {path} is missing; restore it, or remove the volume from {catalog}")]
    MissingFile {
        name: String,
        path: PathBuf,
        catalog: PathBuf,
    },
    #[error(
        "volume '{name}': its backing file {path} is {actual} bytes, the catalog says {expected}"
    )]
    WrongSize {
        name: String,
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("volume '{name}': {path}: {source}")]
    Stat {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume '{name}': {source}")]
    Create {
        name: String,
        #[source]
        source: AdminError,
    },
}

/// Prepares and saves the starting catalog (see the module doc).
pub fn prepare(data_dir: &Path, config: Option<&Config>) -> Result<Catalog, StartupError> {
    store::ensure_data_dir(data_dir)?;
    let saved = store::load(data_dir)?;
    if let Some(c) = &saved {
        c.check().map_err(|source| StartupError::Catalog {
            catalog: store::catalog_path(data_dir),
            source,
        })?;
    }
    let existing: BTreeSet<String> = saved
        .iter()
        .flat_map(|c| c.volumes.keys().cloned())
        .collect();
    let mut catalog = match (saved, config) {
        (Some(c), _) => c,
        (None, Some(_)) => Catalog::default(),
        (None, None) => Catalog::embedded_default(new_id()),
    };
    if let Some(cfg) = config {
        cfg.overlay(&mut catalog, &mut new_id)?;
    }
    for (name, spec) in &catalog.volumes {
        let path = volume_file(data_dir, spec);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == spec.size => {}
            Ok(m) => {
                return Err(StartupError::WrongSize {
                    name: name.clone(),
                    path,
                    actual: m.len(),
                    expected: spec.size,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if existing.contains(name) {
                    return Err(StartupError::MissingFile {
                        name: name.clone(),
                        path,
                        catalog: store::catalog_path(data_dir),
                    });
                }
                create_volume_file(&path, spec.size).map_err(|source| StartupError::Create {
                    name: name.clone(),
                    source,
                })?;
                tracing::info!(volume = %name, path = %path.display(), size = spec.size, "created volume file");
            }
            Err(source) => {
                return Err(StartupError::Stat {
                    name: name.clone(),
                    path,
                    source,
                })
            }
        }
    }
    let unnumbered: Vec<String> = (catalog.replications.iter())
        .filter(|(_, r)| r.id == 0)
        .map(|(n, _)| n.clone())
        .collect();
    for name in unnumbered {
        let id = catalog.new_set_id();
        catalog
            .replications
            .get_mut(&name)
            .expect("listed above")
            .id = id;
    }
    store::save(data_dir, &catalog)?;
    move_name_folders(data_dir, &catalog);
    Ok(catalog)
}

/// Step 5 of the module doc: moves `tracking/NAME` and `replication/SET` folders of an
/// older data dir to `tracking/ID` and `replication/ID`. Only names that pass today's
/// rule are looked at (never `.` or `..`), only real folders move, nothing is
/// overwritten; what cannot move is logged and left where it is.
fn move_name_folders(data_dir: &Path, catalog: &Catalog) {
    use crate::datadir;
    let volumes = catalog.volumes.iter().map(|(n, v)| {
        (
            datadir::TRACKING,
            "tracking state of volume",
            n,
            datadir::tracking_dir(data_dir, v.id),
        )
    });
    let sets = catalog.replications.iter().map(|(n, r)| {
        (
            datadir::REPLICATION,
            "replication state of set",
            n,
            datadir::replication_dir(data_dir, r.id),
        )
    });
    let mut moved_in = BTreeSet::new();
    for (kind, what, name, to) in volumes.chain(sets) {
        if validate::check_name(name).is_err() {
            continue;
        }
        let from = data_dir.join(kind).join(name);
        if from == to {
            continue;
        }
        match std::fs::symlink_metadata(&from) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        if to.exists() {
            tracing::warn!(from = %from.display(), to = %to.display(), "{what} '{name}': both the old and the new folder exist; the old one is left as it is");
            continue;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                tracing::info!(from = %from.display(), to = %to.display(), "moved the {what} '{name}' to its id-named folder (names are no longer paths)");
                moved_in.insert(kind);
            }
            Err(e) => {
                tracing::error!(from = %from.display(), to = %to.display(), error = %e, "cannot move the {what} '{name}'")
            }
        }
    }
    for kind in moved_in {
        if let Err(e) = store::sync_dir(&data_dir.join(kind)) {
            tracing::warn!(error = %e, "cannot sync a folder after moving state into it");
        }
    }
}

fn new_id() -> u64 {
    rand::random::<u64>() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_data_dir_gets_the_demo_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let c = prepare(&data, None).unwrap();
        assert_eq!(c.volumes.len(), 1);
        assert!(c.targets.contains_key(Catalog::DEMO_TARGET));
        let file = data.join(&c.volumes["demo"].path);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 30);
        // Restart: same catalog, same id.
        assert_eq!(prepare(&data, None).unwrap(), c);
        // A lost file is an error, not a silent new empty volume.
        std::fs::remove_file(&file).unwrap();
        let e = prepare(&data, None).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        // So is a file of the wrong size.
        std::fs::write(&file, b"short").unwrap();
        let e = prepare(&data, None).unwrap_err().to_string();
        assert!(e.contains("5 bytes"), "{e}");
    }

    #[test]
    fn name_folders_of_an_older_data_dir_move_to_their_ids_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut c = prepare(&data, None).unwrap();
        let demo = c.volumes["demo"].clone();
        // As an older release left it: tracking state under the volume's name, and a
        // volume named `..` whose "folder" would be the data dir itself.
        std::fs::create_dir_all(data.join("tracking/demo")).unwrap();
        std::fs::write(data.join("tracking/demo/dirty.roaring"), b"bits").unwrap();
        let mut dots = demo.clone();
        dots.id = demo.id ^ 1;
        dots.path = "volumes/dots.img".into();
        dots.size = 1 << 20;
        create_volume_file(&data.join(&dots.path), dots.size).unwrap();
        c.volumes.insert("..".into(), dots);
        store::save(&data, &c).unwrap();

        prepare(&data, None).unwrap();
        let moved = crate::datadir::tracking_dir(&data, demo.id).join("dirty.roaring");
        assert_eq!(std::fs::read(moved).unwrap(), b"bits");
        assert!(!data.join("tracking/demo").exists());
        assert!(data.join("catalog.json").exists() && data.join("volumes").exists());
        // A second start finds nothing to move and changes nothing.
        let before = store::load(&data).unwrap();
        prepare(&data, None).unwrap();
        assert_eq!(store::load(&data).unwrap(), before);
    }

    #[test]
    fn config_overlays_an_empty_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[volume]]\nname = \"v\"\nsize = \"1M\"\n[[target]]\niqn = \"iqn.2026-11.io.x:t\"\n[[target.lun]]\nlun = 0\nvolume = \"v\"";
        let cfg = Config::parse(text, "c.toml").unwrap();
        let c = prepare(dir.path(), Some(&cfg)).unwrap();
        assert_eq!(c.volumes.keys().collect::<Vec<_>>(), ["v"]);
        assert_eq!(c.targets.keys().collect::<Vec<_>>(), ["iqn.2026-11.io.x:t"]);
        assert!(dir.path().join(&c.volumes["v"].path).exists());
        assert_eq!(store::load(dir.path()).unwrap(), Some(c));
    }

    #[test]
    fn a_hand_edited_catalog_that_breaks_the_group_rules_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = prepare(dir.path(), None).unwrap();
        c.groups.insert(
            "g".into(),
            crate::catalog::GroupSpec {
                volumes: vec!["demo".into(), "gone".into()],
                replication_set: None,
            },
        );
        store::save(dir.path(), &c).unwrap();
        let e = prepare(dir.path(), None).unwrap_err().to_string();
        assert!(
            e.ends_with("catalog.json: group 'g' names volume 'gone', which does not exist"),
            "{e}"
        );
        // Groups that keep the rules survive a restart.
        c.groups.get_mut("g").unwrap().volumes.pop();
        store::save(dir.path(), &c).unwrap();
        assert_eq!(prepare(dir.path(), None).unwrap(), c);
    }

    #[test]
    fn config_error_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let before = prepare(dir.path(), None).unwrap();
        let cfg = Config::parse(
            "[[target]]\niqn = \"iqn.2026-11.io.x:t\"\n[[target.lun]]\nlun = 0\nvolume = \"nope\"",
            "c.toml",
        )
        .unwrap();
        let e = prepare(dir.path(), Some(&cfg)).unwrap_err().to_string();
        assert_eq!(e, "c.toml: target[0].lun[0].volume: no volume named 'nope'");
        assert_eq!(store::load(dir.path()).unwrap(), Some(before));
    }
}
