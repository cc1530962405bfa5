//! The catalog on disk: `DATA_DIR/catalog.json`, replaced atomically on every change
//! (write a temp file, fsync it, rename over the old one, fsync the directory), so a
//! crash leaves either the old catalog or the new one, never a mix.
//!
//! The file holds CHAP secrets: it is created mode 0600.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::durable::{Disk, OsDisk, ReplaceError};

pub const CATALOG_FILE: &str = "catalog.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid catalog: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn catalog_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CATALOG_FILE)
}

/// Creates the data dir (mode 0700: it holds secrets and volume images) if missing.
pub fn ensure_data_dir(data_dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))
}

/// Loads the catalog; `None` if the data dir has none yet.
pub fn load(data_dir: &Path) -> Result<Option<Catalog>, StoreError> {
    let path = catalog_path(data_dir);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StoreError::Parse { path, source })
}

/// Saves the catalog atomically (`durable::replace`).
pub fn save(data_dir: &Path, catalog: &Catalog) -> Result<(), StoreError> {
    save_on(&OsDisk, data_dir, catalog)
}

fn save_on(disk: &dyn Disk, data_dir: &Path, catalog: &Catalog) -> Result<(), StoreError> {
    let dst = catalog_path(data_dir);
    let mut text = serde_json::to_vec_pretty(catalog).map_err(|source| StoreError::Parse {
        path: dst.clone(),
        source,
    })?;
    text.push(b'\n');
    crate::durable::replace_on(disk, &dst, &text).map_err(|e| match e {
        ReplaceError::Io { path, source } => StoreError::Io { path, source },
        ReplaceError::Fill(never) => match never {},
    })
}

/// fsync a directory so a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::durable::sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ChapSpec, GroupSpec, LunSpec};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut c = Catalog::embedded_default(0xdead_beef_0123_4567);
        let t = c.targets.get_mut(Catalog::DEMO_TARGET).unwrap();
        t.acl.insert("iqn.1994-05.com.redhat:client".into());
        t.chap = Some(ChapSpec {
            user: "u".into(),
            secret: "0123456789ab".into(),
            mutual_user: None,
            mutual_secret: None,
        });
        t.luns.insert(
            7,
            LunSpec {
                volume: "demo".into(),
                read_only: true,
                removable: true,
            },
        );
        c.volumes.get_mut("demo").unwrap().page_size = 256 << 10;
        c.groups.insert(
            "g".into(),
            GroupSpec {
                volumes: vec!["demo".into()],
                replication_set: Some("dr1".into()),
            },
        );
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c.clone()));
        let mode = fs::metadata(catalog_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!crate::durable::tmp_path(&catalog_path(dir.path())).exists());

        // A second save replaces the first.
        c.targets.clear();
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c));
    }

    #[test]
    fn a_catalog_saved_before_groups_and_page_sizes_loads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            catalog_path(dir.path()),
            br#"{"volumes":{"demo":{"size":1073741824,"block_size":512,"id":42,"path":"volumes/demo.img"}},"targets":{}}"#,
        )
        .unwrap();
        let c = load(dir.path()).unwrap().unwrap();
        assert_eq!(c.volumes["demo"].page_size, 4096);
        assert!(c.groups.is_empty());
        // Saved again, it carries both.
        save(dir.path(), &c).unwrap();
        let text = fs::read_to_string(catalog_path(dir.path())).unwrap();
        assert!(
            text.contains("\"page_size\": 4096") && text.contains("\"groups\""),
            "{text}"
        );
        assert_eq!(load(dir.path()).unwrap(), Some(c));
    }

    #[test]
    fn corrupt_catalog_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(catalog_path(dir.path()), b"{ not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("catalog.json"), "{e}");
    }

    #[test]
    fn a_crash_or_an_error_in_a_save_leaves_the_old_catalog_or_the_new_one() {
        let old = Catalog::embedded_default(1);
        let mut new = old.clone();
        new.targets.clear();
        crate::durable::fault::check_save(
            |dir| save(dir, &old).unwrap(),
            |disk, dir| save_on(disk, dir, &new),
            |dir| load(dir).unwrap(),
            &[Some(old.clone()), Some(new.clone())],
        );
    }
}
