//! Where an object's files live in the data dir, in one place.
//!
//! Names are data, never paths: every object that has files keeps them under a path
//! made from its id, so no name an admin or a peer sends can point anywhere else.
//!
//! ```text
//! DATA_DIR/catalog.json
//! DATA_DIR/volumes/<volume id>.img     (volumes made before ids: volumes/NAME.img, as the catalog records)
//! DATA_DIR/tracking/<volume id>/       dirty bitmap, activity log, snapshot stores
//! DATA_DIR/replication/<set id>/       a primary's or a secondary's replication state
//! ```
//!
//! Ids print as 16 lowercase hex digits. Removing an object's files goes through
//! [`remove_object_dir`] / [`remove_volume_file`], which resolve the path first and
//! refuse anything that is not directly under the object kind's own folder.

use std::io;
use std::path::{Path, PathBuf};

/// Folder of the volume files.
pub const VOLUMES: &str = "volumes";
/// Folder of the per-volume tracking state.
pub const TRACKING: &str = "tracking";
/// Folder of the per-set replication state.
pub const REPLICATION: &str = "replication";

/// An object id as it appears in paths.
pub fn id_name(id: u64) -> String {
    format!("{id:016x}")
}

/// The catalog path (relative to the data dir) of a new volume's backing file.
pub fn volume_file_rel(id: u64) -> String {
    format!("{VOLUMES}/{}.img", id_name(id))
}

/// Where a volume's tracking state lives.
pub fn tracking_dir(data_dir: &Path, volume_id: u64) -> PathBuf {
    data_dir.join(TRACKING).join(id_name(volume_id))
}

/// Where a replication set's state lives (on either side).
pub fn replication_dir(data_dir: &Path, set_id: u64) -> PathBuf {
    data_dir.join(REPLICATION).join(id_name(set_id))
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{path}: refusing to remove it: it is not directly under {root}")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `path` resolved, if it is directly inside `DATA_DIR/kind` (resolved too). A path
/// that does not exist gives `Ok(None)`.
fn resolve_inside(
    data_dir: &Path,
    kind: &str,
    path: &Path,
) -> Result<Option<PathBuf>, RemoveError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError::Io { path, source }
    };
    let root = data_dir.join(kind);
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let root = root.canonicalize().map_err(io_err(&root))?;
    if resolved.parent() != Some(root.as_path()) {
        return Err(RemoveError::Outside {
            path: path.to_path_buf(),
            root,
        });
    }
    Ok(Some(resolved))
}

/// Removes an object's directory (`DATA_DIR/kind/ID`) and what it holds; refuses a
/// path that does not resolve to a directory directly under `DATA_DIR/kind`. A missing
/// directory is not an error.
pub fn remove_object_dir(data_dir: &Path, kind: &str, dir: &Path) -> Result<(), RemoveError> {
    remove_inside(data_dir, kind, dir, |p| std::fs::remove_dir_all(p))
}

/// Removes a volume's backing file; refuses one that does not resolve to a file
/// directly under `DATA_DIR/volumes`. A missing file is not an error.
pub fn remove_volume_file(data_dir: &Path, file: &Path) -> Result<(), RemoveError> {
    remove_inside(data_dir, VOLUMES, file, |p| std::fs::remove_file(p))
}

/// `remove` on `path` once it resolves directly inside `DATA_DIR/kind`.
fn remove_inside(
    data_dir: &Path,
    kind: &str,
    path: &Path,
    remove: fn(&Path) -> io::Result<()>,
) -> Result<(), RemoveError> {
    let Some(resolved) = resolve_inside(data_dir, kind, path)? else {
        return Ok(());
    };
    match remove(&resolved) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_of_ids() {
        let d = Path::new("/d");
        assert_eq!(volume_file_rel(0xab), "volumes/00000000000000ab.img");
        assert_eq!(
            tracking_dir(d, 1),
            Path::new("/d/tracking/0000000000000001")
        );
        assert_eq!(
            replication_dir(d, u64::MAX),
            Path::new("/d/replication/ffffffffffffffff")
        );
    }

    #[test]
    fn removal_stays_inside_its_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("tracking/0000000000000001")).unwrap();
        std::fs::write(d.join("tracking/0000000000000001/dirty.roaring"), b"x").unwrap();
        std::fs::write(d.join("catalog.json"), b"{}").unwrap();
        std::fs::create_dir_all(d.join("replication")).unwrap();

        // `..`, `.`, the folder itself and a symlink out are refused; nothing goes.
        for bad in [
            "tracking/..",
            "tracking/.",
            "tracking",
            "tracking/../replication",
        ] {
            let e = remove_object_dir(d, TRACKING, &d.join(bad)).unwrap_err();
            assert!(matches!(e, RemoveError::Outside { .. }), "{bad}: {e}");
        }
        std::os::unix::fs::symlink(d, d.join("tracking/link")).unwrap();
        assert!(remove_object_dir(d, TRACKING, &d.join("tracking/link")).is_err());
        std::fs::create_dir_all(d.join("volumes")).unwrap();
        assert!(remove_volume_file(d, &d.join("catalog.json")).is_err());
        assert!(remove_volume_file(d, &d.join("volumes/../catalog.json")).is_err());
        assert!(d.join("catalog.json").exists());
        assert!(d.join("tracking/0000000000000001/dirty.roaring").exists());

        // The object's own directory goes; a missing one is fine.
        remove_object_dir(d, TRACKING, &tracking_dir(d, 1)).unwrap();
        assert!(!tracking_dir(d, 1).exists());
        remove_object_dir(d, TRACKING, &tracking_dir(d, 1)).unwrap();
        remove_object_dir(d, REPLICATION, &replication_dir(d, 7)).unwrap();
    }
}
