//! Saving tracking state for a clean restart. Every file is written atomically (temp
//! file, fsync, rename, fsync of the directory).
//!
//! A volume's state directory (its own, shared with nothing else) holds:
//! - `dirty.roaring`: the active dirty bitmap, roaring's portable format;
//! - `snap-<cut>.cow`, one per snapshot: a header ([`SNAP_MAGIC`], version, page size,
//!   cut, time taken, the two bitmaps' lengths; little-endian), the bitmap of kept pages,
//!   the bitmap of its scope (absent for a whole-volume snapshot), then the kept pages
//!   in page order;
//! - `clean`: written last by a save, removed by a load once it has read everything (a
//!   load that fails leaves all in place). Without it the state is from before a
//!   crash, and a snapshot or bitmap in it may miss writes: it is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roaring::RoaringBitmap;

use super::cow::{CowConfig, CowStore};
use super::{CutId, TrackingError};
use crate::durable::{tmp_path, Disk, DiskWriter, OsDisk};

pub const SNAP_MAGIC: [u8; 8] = *b"TWLNSNAP";
const SNAP_VERSION: u32 = 1;
/// magic, version, page bytes, cut, taken_at seconds and nanoseconds, kept bitmap
/// length, scope bitmap length (`NO_SCOPE` for a whole-volume snapshot).
const SNAP_HEADER: usize = 8 + 4 + 4 + 8 + 8 + 4 + 8 + 8;
const NO_SCOPE: u64 = u64::MAX;
pub(crate) const DIRTY_FILE: &str = "dirty.roaring";
pub(crate) const CLEAN_FILE: &str = "clean";

fn snap_file(cut: CutId) -> String {
    format!("snap-{}.cow", cut.0)
}

/// fsync the directory holding `path`, so its creation, removal or rename is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), TrackingError> {
    sync_dir_on(&OsDisk, path)
}

fn sync_dir_on(disk: &dyn Disk, path: &Path) -> Result<(), TrackingError> {
    let dir = crate::durable::parent_dir(path);
    disk.sync_dir(dir).map_err(io_err(dir))
}

/// Writes `path` atomically with what `fill` writes (`durable::replace_with_on`).
fn write_atomic<F>(disk: &dyn Disk, path: &Path, fill: F) -> Result<(), TrackingError>
where
    F: FnOnce(&mut DiskWriter<'_>) -> Result<(), TrackingError>,
{
    crate::durable::replace_with_on(disk, path, fill).map_err(|e| match e {
        crate::durable::ReplaceError::Io { path, source } => TrackingError::Io { path, source },
        crate::durable::ReplaceError::Fill(e) => e,
    })
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TrackingError + '_ {
    move |source| TrackingError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bitmap` to `path` so that after a crash `path` holds either the old or the
/// new bitmap, whole.
pub fn save_bitmap(path: &Path, bitmap: &RoaringBitmap) -> Result<(), TrackingError> {
    save_bitmap_on(&OsDisk, path, bitmap)
}

fn save_bitmap_on(
    disk: &dyn Disk,
    path: &Path,
    bitmap: &RoaringBitmap,
) -> Result<(), TrackingError> {
    let tmp = tmp_path(path);
    write_atomic(disk, path, |w| {
        bitmap.serialize_into(w).map_err(io_err(&tmp))
    })
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

/// One snapshot to save.
pub(crate) struct SavedSnapshot<'a> {
    pub cut: CutId,
    pub taken_at: SystemTime,
    pub scope: Option<&'a RoaringBitmap>,
    pub store: &'a mut CowStore,
}

fn serialize(bitmap: &RoaringBitmap, path: &Path) -> Result<Vec<u8>, TrackingError> {
    let mut out = Vec::with_capacity(bitmap.serialized_size());
    bitmap.serialize_into(&mut out).map_err(io_err(path))?;
    Ok(out)
}

/// Saves one snapshot's store at `path` (`snap-<cut>.cow` in the state directory).
fn save_snapshot(
    disk: &dyn Disk,
    path: &Path,
    snap: &SavedSnapshot<'_>,
    page_bytes: usize,
) -> Result<(), TrackingError> {
    let tmp = tmp_path(path);
    let kept = snap.store.pages();
    let kept_bytes = serialize(&kept, &tmp)?;
    let scope_bytes = snap.scope.map(|s| serialize(s, &tmp)).transpose()?;
    let since = snap.taken_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    write_atomic(disk, path, |w| {
        let mut header = Vec::with_capacity(SNAP_HEADER);
        header.extend_from_slice(&SNAP_MAGIC);
        header.extend_from_slice(&SNAP_VERSION.to_le_bytes());
        header.extend_from_slice(&(page_bytes as u32).to_le_bytes());
        header.extend_from_slice(&snap.cut.0.to_le_bytes());
        header.extend_from_slice(&since.as_secs().to_le_bytes());
        header.extend_from_slice(&since.subsec_nanos().to_le_bytes());
        header.extend_from_slice(&(kept_bytes.len() as u64).to_le_bytes());
        let scope_len = scope_bytes.as_ref().map_or(NO_SCOPE, |b| b.len() as u64);
        header.extend_from_slice(&scope_len.to_le_bytes());
        w.write_all(&header).map_err(io_err(&tmp))?;
        w.write_all(&kept_bytes).map_err(io_err(&tmp))?;
        if let Some(scope) = &scope_bytes {
            w.write_all(scope).map_err(io_err(&tmp))?;
        }
        let mut page = vec![0; page_bytes];
        for p in &kept {
            snap.store.get(p, &mut page)?;
            w.write_all(&page).map_err(io_err(&tmp))?;
        }
        Ok(())
    })
}

/// A snapshot read back by [`load_snapshot`]. Its file becomes the spill file of a
/// store only in [`LoadedSnapshot::into_store`], so a load that fails part way deletes
/// nothing.
pub(crate) struct LoadedSnapshot {
    pub cut: CutId,
    pub taken_at: SystemTime,
    pub kept: RoaringBitmap,
    pub scope: Option<RoaringBitmap>,
    path: PathBuf,
    file: File,
    data_start: u64,
    page_bytes: usize,
}

impl LoadedSnapshot {
    pub(crate) fn into_store(self, config: CowConfig) -> CowStore {
        CowStore::from_saved(
            config,
            self.page_bytes,
            self.path,
            self.file,
            &self.kept,
            self.data_start,
        )
    }
}

/// Reads `snap-<cut>.cow` at `path`; the store keeps using the file for its pages.
pub(crate) fn load_snapshot(
    path: &Path,
    page_bytes: usize,
) -> Result<LoadedSnapshot, TrackingError> {
    let corrupt = || TrackingError::CorruptState {
        path: path.to_owned(),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut header = [0u8; SNAP_HEADER];
    file.read_exact_at(&mut header, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt()
        } else {
            io_err(path)(e)
        }
    })?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    if header[..8] != SNAP_MAGIC || u32_at(8) != SNAP_VERSION {
        return Err(corrupt());
    }
    if u32_at(12) as usize != page_bytes {
        return Err(TrackingError::SavedPageSize {
            path: path.to_owned(),
            saved: u32_at(12),
        });
    }
    let cut = CutId(u64_at(16));
    let taken_at = UNIX_EPOCH + Duration::new(u64_at(24), u32_at(32).min(999_999_999));
    let kept_len = u64_at(36);
    let scope_len = match u64_at(44) {
        NO_SCOPE => None,
        n => Some(n),
    };
    let data_start = (SNAP_HEADER as u64)
        .checked_add(kept_len)
        .and_then(|n| n.checked_add(scope_len.unwrap_or(0)))
        .filter(|&end| end <= len)
        .ok_or_else(corrupt)?;
    // Both lengths are bounded by the file's, checked above.
    let read_bitmap = |at: u64, n: u64| -> Result<RoaringBitmap, TrackingError> {
        let mut bytes = vec![0; n as usize];
        file.read_exact_at(&mut bytes, at).map_err(io_err(path))?;
        RoaringBitmap::deserialize_from(&bytes[..]).map_err(|_| corrupt())
    };
    let kept = read_bitmap(SNAP_HEADER as u64, kept_len)?;
    let scope = scope_len
        .map(|n| read_bitmap(SNAP_HEADER as u64 + kept_len, n))
        .transpose()?;
    if data_start + kept.len() * page_bytes as u64 != len {
        return Err(corrupt());
    }
    Ok(LoadedSnapshot {
        cut,
        taken_at,
        kept,
        scope,
        path: path.to_owned(),
        file,
        data_start,
        page_bytes,
    })
}

/// Everything a volume's state directory held at a clean shutdown.
pub(crate) struct LoadedState {
    pub dirty: RoaringBitmap,
    pub snapshots: Vec<LoadedSnapshot>,
}

fn is_state_file(name: &str) -> bool {
    name == DIRTY_FILE
        || name == CLEAN_FILE
        || (name.starts_with("snap-") && (name.ends_with(".cow") || name.ends_with(".cow.tmp")))
        || name == "dirty.roaring.tmp"
        || name == "clean.tmp"
}

fn state_files(dir: &Path) -> Result<Vec<String>, TrackingError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if is_state_file(name) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Saves the dirty bitmap and the snapshots into `dir`, then marks the state clean.
/// The caller holds the volume's gate closed: nothing may change during or after.
pub(crate) fn save_state(
    dir: &Path,
    dirty: &RoaringBitmap,
    snapshots: &mut [SavedSnapshot<'_>],
    page_bytes: usize,
) -> Result<(), TrackingError> {
    save_state_on(&OsDisk, dir, dirty, snapshots, page_bytes)
}

fn save_state_on(
    disk: &dyn Disk,
    dir: &Path,
    dirty: &RoaringBitmap,
    snapshots: &mut [SavedSnapshot<'_>],
    page_bytes: usize,
) -> Result<(), TrackingError> {
    crate::durable::create_private_dir(dir).map_err(io_err(dir))?;
    let clean = dir.join(CLEAN_FILE);
    // The clean marker goes first, durably: a crash from here on finds the state
    // unclean and counts the activity log, never a half-saved state as clean.
    remove_on(disk, &clean)?;
    sync_dir_on(disk, &clean)?;
    for snap in snapshots.iter_mut() {
        let path = dir.join(snap_file(snap.cut));
        save_snapshot(disk, &path, snap, page_bytes)?;
        // A store loaded from this directory had its file replaced just now.
        snap.store.saved_as(&path);
    }
    // Snapshots deleted since an earlier save must not come back.
    let keep: Vec<String> = snapshots.iter().map(|s| snap_file(s.cut)).collect();
    for name in state_files(dir)? {
        if name.starts_with("snap-") && !keep.contains(&name) {
            remove_on(disk, &dir.join(&name))?;
        }
    }
    save_bitmap_on(disk, &dir.join(DIRTY_FILE), dirty)?;
    write_atomic(disk, &clean, |_| Ok(()))
}

/// Loads what [`save_state`] saved, and removes the clean marker (the state is live
/// again: a crash from now on must not find it clean). `Ok(None)` when `dir` holds no
/// state.
pub(crate) fn load_state(
    dir: &Path,
    page_bytes: usize,
) -> Result<Option<LoadedState>, TrackingError> {
    let names = state_files(dir)?;
    if names.is_empty() {
        return Ok(None);
    }
    if !names.iter().any(|n| n == CLEAN_FILE) {
        return Err(TrackingError::UncleanState {
            dir: dir.to_owned(),
        });
    }
    let dirty_path = dir.join(DIRTY_FILE);
    let dirty =
        load_bitmap(&dirty_path)?.ok_or(TrackingError::CorruptState { path: dirty_path })?;
    let mut snapshots = Vec::new();
    for name in names
        .iter()
        .filter(|n| n.starts_with("snap-") && n.ends_with(".cow"))
    {
        snapshots.push(load_snapshot(&dir.join(name), page_bytes)?);
    }
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        remove_if_present(&dir.join(name))?;
    }
    let clean = dir.join(CLEAN_FILE);
    remove_if_present(&clean)?;
    sync_dir(&clean)?;
    Ok(Some(LoadedState { dirty, snapshots }))
}

/// Leaves a live state in `dir` when it holds none: an empty dirty bitmap without the
/// clean marker, so that a crash before the first clean save is found at the next start
/// (an absent state would read as "nothing changed").
pub(crate) fn ensure_live_state(dir: &Path) -> Result<(), TrackingError> {
    if !state_files(dir)?.is_empty() {
        return Ok(());
    }
    crate::durable::create_private_dir(dir).map_err(io_err(dir))?;
    save_bitmap(&dir.join(DIRTY_FILE), &RoaringBitmap::new())
}

/// A volume served without tracking: writes now go unrecorded, so whatever `dir` holds
/// stops counting as clean, the activity log goes, and the next tracked start counts
/// every page as changed.
pub fn mark_untracked(dir: &Path) -> Result<(), TrackingError> {
    ensure_live_state(dir)?;
    let clean = dir.join(CLEAN_FILE);
    remove_if_present(&clean)?;
    sync_dir(&clean)?;
    super::activity::discard(dir)
}

/// Removes every tracking state file from `dir` (after [`TrackingError::UncleanState`],
/// once the caller has arranged a full resynchronization).
pub fn discard_state(dir: &Path) -> Result<(), TrackingError> {
    for name in state_files(dir)? {
        remove_if_present(&dir.join(name))?;
    }
    Ok(())
}

pub(crate) fn remove_if_present(path: &Path) -> Result<(), TrackingError> {
    remove_on(&OsDisk, path)
}

fn remove_on(disk: &dyn Disk, path: &Path) -> Result<(), TrackingError> {
    disk.remove(path).map_err(io_err(path))
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

    #[test]
    fn a_crash_or_an_error_in_a_save_leaves_the_old_state_the_new_one_or_none_clean() {
        let mut old = RoaringBitmap::new();
        old.insert_range(0..100);
        let mut new = old.clone();
        new.insert_range(5000..6000);
        #[derive(Debug, PartialEq)]
        enum Found {
            Dirty(RoaringBitmap),
            /// Not clean: the next start counts the activity log.
            Unclean,
        }
        let load = |dir: &Path| match load_state(dir, 4096) {
            Ok(Some(state)) => {
                assert!(state.snapshots.is_empty());
                let found = Found::Dirty(state.dirty);
                // Put the clean marker back: load_state took it.
                write_atomic(&OsDisk, &dir.join(CLEAN_FILE), |_| Ok(())).unwrap();
                found
            }
            Ok(None) => panic!("the state is gone"),
            Err(TrackingError::UncleanState { .. }) => Found::Unclean,
            Err(e) => panic!("{e}"),
        };
        crate::durable::fault::check_save(
            |dir| save_state(dir, &old, &mut [], 4096).unwrap(),
            |disk, dir| save_state_on(disk, dir, &new, &mut [], 4096),
            load,
            &[
                Found::Dirty(old.clone()),
                Found::Dirty(new.clone()),
                Found::Unclean,
            ],
        );
        // Saving the bitmap alone: old or new, whole.
        let path = |dir: &Path| dir.join(DIRTY_FILE);
        crate::durable::fault::check_save(
            |dir| save_bitmap(&path(dir), &old).unwrap(),
            |disk, dir| save_bitmap_on(disk, &path(dir), &new),
            |dir| load_bitmap(&path(dir)).unwrap(),
            &[Some(old.clone()), Some(new.clone())],
        );
    }
}
