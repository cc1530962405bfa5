//! Durable replacement of a file, in one place: write a temporary file beside it
//! (mode 0600), fsync it, rename it over the file, fsync the directory. After a crash
//! the file holds the old content or the new, whole; a failed replacement leaves the
//! old file and no temporary one behind.
//!
//! The catalog (`admin::store`), a primary set's state (`replication::sender`) and the
//! tracking state (`tracking::persist`) are saved through it. The secondary's receiver
//! store keeps its own path through its `Disk` interface, which its crash tests
//! interrupt at every durable step.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a replacement failed: an I/O step (naming the file it was on), or the caller's
/// own writer.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError<E: std::error::Error + 'static = std::convert::Infallible> {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fill(E),
}

/// The temporary file a replacement of `path` writes first: `path` + `.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// fsync the directory `dir`, so a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`, durably.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    replace_with(path, |w| {
        w.write_all(bytes).map_err(|source| ReplaceError::Io {
            path: tmp_path(path),
            source,
        })
    })
    .map_err(|e| match e {
        ReplaceError::Fill(inner) => inner,
        ReplaceError::Io { path, source } => ReplaceError::Io { path, source },
    })
}

/// Replaces `path` with what `fill` writes, durably; for contents too large to hold
/// in memory at once (a snapshot's kept pages).
pub fn replace_with<E, F>(path: &Path, fill: F) -> Result<(), ReplaceError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(&mut BufWriter<File>) -> Result<(), E>,
{
    let tmp = tmp_path(path);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplaceError::Io { path, source }
    };
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        fill(&mut w).map_err(ReplaceError::Fill)?;
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        sync_dir(dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, thiserror::Error)]
    #[error("the writer gave up")]
    struct GaveUp;

    #[test]
    fn a_replacement_is_whole_private_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn a_failed_replacement_keeps_the_old_file_and_removes_the_temp_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"old").unwrap();
        let e = replace_with(&path, |w| {
            w.write_all(b"half").unwrap();
            Err(GaveUp)
        })
        .unwrap_err();
        assert!(matches!(e, ReplaceError::Fill(GaveUp)));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!tmp_path(&path).exists());
        // An I/O failure names the file it was on.
        let e = replace(&dir.path().join("missing/state.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing/state.json.tmp"), "{e}");
    }
}
