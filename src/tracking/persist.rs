//! Saving a dirty bitmap for a clean restart: roaring's portable format, written
//! atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;

use super::TrackingError;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TrackingError + '_ {
    move |source| TrackingError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bitmap` to `path` so that after a crash `path` holds either the old or the
/// new bitmap, whole.
pub fn save_bitmap(path: &Path, bitmap: &RoaringBitmap) -> Result<(), TrackingError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = BufWriter::new(file);
    bitmap.serialize_into(&mut w).map_err(io_err(&tmp))?;
    w.flush().map_err(io_err(&tmp))?;
    let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Reads a bitmap [`save_bitmap`] wrote; `Ok(None)` when there is none.
pub fn load_bitmap(path: &Path) -> Result<Option<RoaringBitmap>, TrackingError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    RoaringBitmap::deserialize_from(BufReader::new(file))
        .map(Some)
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.dirty");
        assert!(load_bitmap(&path).unwrap().is_none());
        let mut b = RoaringBitmap::new();
        b.insert_range(10..5000);
        b.insert(1 << 30);
        save_bitmap(&path, &b).unwrap();
        assert_eq!(load_bitmap(&path).unwrap().unwrap(), b);
        save_bitmap(&path, &RoaringBitmap::new()).unwrap();
        assert!(load_bitmap(&path).unwrap().unwrap().is_empty());
        fs::write(&path, b"not a bitmap at all").unwrap();
        assert!(matches!(load_bitmap(&path), Err(TrackingError::Io { .. })));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );
    }
}
