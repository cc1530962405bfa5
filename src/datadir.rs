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
//! DATA_DIR/reservations/<LU id>.json   persistent reservations kept through power loss (APTPL)
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
/// Folder of the persistent reservations preserved through power loss (APTPL), one
/// file per logical unit.
pub const RESERVATIONS: &str = "reservations";

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

/// Where the persistent reservations of logical unit `lu_id` are preserved (APTPL).
pub fn reservations_file(data_dir: &Path, lu_id: u64) -> PathBuf {
    data_dir
        .join(RESERVATIONS)
        .join(format!("{}.json", id_name(lu_id)))
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

/// Removes the saved persistent reservations of logical unit `lu_id` (its volume is
/// gone); a missing file is not an error.
pub fn remove_reservations_file(data_dir: &Path, lu_id: u64) -> Result<(), RemoveError> {
    let file = reservations_file(data_dir, lu_id);
    remove_inside(data_dir, RESERVATIONS, &file, |p| std::fs::remove_file(p))
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

/// A file or folder of the data dir that could not be looked at or made private.
#[derive(Debug, thiserror::Error)]
#[error("cannot make {path} private to this user")]
pub struct PrivateError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What [`make_private`] found readable by others and made private.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MadePrivate {
    /// The data dir's own mode before, when it let others in.
    pub data_dir_mode: Option<u32>,
    /// Files and folders under it that let others in (an older version made them so,
    /// or someone changed them), with their old modes.
    pub entries: Vec<(PathBuf, u32)>,
}

/// Takes every permission of group and others away under `data_dir` (itself
/// included): volume images, snapshots' old content, undo logs, the catalog's secrets.
/// Stores make their files private by construction (`durable::create_private_dir`,
/// mode 0600 files); this is for a data dir made beforehand (`mkdir` under umask 022)
/// or written by an older version, once at start. Symbolic links are not followed:
/// what they point to is not ours to change.
pub fn make_private(data_dir: &Path) -> Result<MadePrivate, PrivateError> {
    let mut out = MadePrivate::default();
    let mut todo = vec![data_dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let io_err = |source| PrivateError {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Gone between listing and looking: nothing left to protect.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if mode & 0o077 != 0 {
            let private = if kind.is_dir() {
                (mode & !0o077) | crate::durable::PRIVATE_DIR
            } else {
                mode & !0o077
            };
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(private))
                .map_err(io_err)?;
            if path == data_dir {
                out.data_dir_mode = Some(mode);
            } else {
                out.entries.push((path.clone(), mode));
            }
        }
        if kind.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err)? {
                todo.push(entry.map_err(io_err)?.path());
            }
        }
    }
    Ok(out)
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

    #[test]
    fn make_private_takes_others_out_of_everything_once() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::create_dir_all(d.join("tracking/0000000000000001")).unwrap();
        std::fs::write(d.join("tracking/0000000000000001/spill"), b"old data").unwrap();
        std::fs::write(d.join("catalog.json"), b"{}").unwrap();
        std::fs::write(t.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), d.join("link")).unwrap();
        set(&d, 0o755);
        set(&d.join("tracking"), 0o755);
        set(&d.join("tracking/0000000000000001"), 0o750);
        set(&d.join("tracking/0000000000000001/spill"), 0o644);
        set(&d.join("catalog.json"), 0o600);
        set(&t.path().join("outside"), 0o644);

        let made = make_private(&d).unwrap();
        assert_eq!(made.data_dir_mode, Some(0o755));
        let mut fixed: Vec<(String, u32)> = made
            .entries
            .iter()
            .map(|(p, m)| (p.strip_prefix(&d).unwrap().display().to_string(), *m))
            .collect();
        fixed.sort();
        assert_eq!(
            fixed,
            [
                ("tracking".to_string(), 0o755),
                ("tracking/0000000000000001".to_string(), 0o750),
                ("tracking/0000000000000001/spill".to_string(), 0o644),
            ]
        );
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("tracking")), 0o700);
        assert_eq!(mode(&d.join("tracking/0000000000000001")), 0o700);
        assert_eq!(mode(&d.join("tracking/0000000000000001/spill")), 0o600);
        assert_eq!(mode(&d.join("catalog.json")), 0o600);
        // A link's target is not the data dir's to change.
        assert_eq!(mode(&t.path().join("outside")), 0o644);
        // Once private, a second start finds nothing to say.
        assert_eq!(make_private(&d).unwrap(), MadePrivate::default());
    }
}
