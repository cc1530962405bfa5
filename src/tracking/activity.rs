//! The activity log: what makes write tracking survive a crash (DESIGN.md, "Crash
//! safety of tracking").
//!
//! The dirty map lives in memory and a clean shutdown saves it exactly. For a crash, the
//! volume is divided into extents of [`EXTENT_BYTES`]. Before a write lands in an extent
//! that is not yet *hot* in the current epoch, a record naming the extent is appended
//! to the epoch's log and synced; writers that need records at the same moment share
//! one sync (group commit). The in-memory hot set learns an extent only once its record
//! is durable, so no write can get past without one.
//!
//! Epochs: a cut that takes the dirty maps (a replication cut) ends the current epoch
//! and starts one with nothing hot. The files of the epochs a cut ended are deleted
//! once the peer has committed that cut and the primary has recorded it
//! ([`ActivityLog::forget_through`]); until then they cover the cut's frozen pages,
//! which a failed transfer gives back to the dirty map.
//!
//! Until then they also cover new writes to their extents: an extent hot in an ended
//! epoch whose file is still there is *carried*, and a write to it in the new epoch
//! needs no record and no sync of its own (the first writes after a cut would
//! otherwise wait for a sync per extent while the cut ships, which is when initiators
//! feel it most). The log remembers which carried extents were written;
//! [`ActivityLog::forget_through`] records those in the current epoch's log, durably,
//! before it deletes the files that covered them, and from then on a write to a carried
//! extent that was not written records as usual.
//!
//! Files, in the volume's state directory:
//! - `al-<epoch>.log`: records of 8 bytes, the extent index and the crc32c of its four
//!   bytes, both little-endian;
//! - `al-<epoch>.pages`: a roaring bitmap of pages, written when the log starts (the
//!   pages already dirty when the volume opened).
//!
//! After a crash the dirty pages are everything these files name: the pages of each
//! recorded extent and each listed page. That is more than changed, never less, and
//! bounded by the extents written since the last committed cut.
//!
//! Space is reserved ahead (DRBD preallocates its activity log the same way): a log
//! started with [`ActivityLog::start_reserved`] creates the current epoch's log and the
//! next epoch's (a spare, taken at the next rotation) with the blocks of one record
//! per extent of the volume allocated (fallocate, keeping the size), which is the most
//! an epoch appends. Recording a write then needs no new blocks, so with the file
//! system full the overwrites of allocated blocks keep going; what still needs space
//! (the next spare, made by the first flush of an epoch) fails with its cause named.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use roaring::RoaringBitmap;
use tokio::sync::Notify;

use super::persist::{self, io_err, remove_if_present, sync_dir};
use super::{PageIndex, PageSize, TrackingError};
use crate::durable::{Disk, OsDisk};

/// The unit the log records: 4 MiB, so a 1 GiB volume has 256 extents.
pub const EXTENT_BYTES: u64 = 4 << 20;
const RECORD: usize = 8;

/// The activity log of one volume.
#[derive(Debug)]
pub struct ActivityLog {
    dir: PathBuf,
    pages_per_extent: u32,
    /// Bytes reserved in each epoch's log ahead of its records; 0: none.
    reserve: u64,
    state: Mutex<State>,
    /// Woken when a flush ends, well or not.
    flushed: Notify,
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    /// Extents whose record in this epoch's log is durable.
    hot: RoaringBitmap,
    /// Extents waiting for the flush after the one in progress.
    queued: RoaringBitmap,
    /// A writer is appending and syncing records.
    flushing: bool,
    /// This epoch's log, once created.
    file: Option<Arc<File>>,
    /// The next epoch's log, created with its space reserved: the epoch and the file.
    spare: Option<(u64, Arc<File>)>,
    /// Ended epochs whose files are still there, with the extents their logs record.
    ended: BTreeMap<u64, RoaringBitmap>,
    /// The union of `ended`: extents a write may touch without a record of its own.
    carried: RoaringBitmap,
    /// Carried extents written without a record of their own, by the epoch they were
    /// written in. Those of epochs a committed cut ended are in that cut; the others
    /// are recorded before the files that cover them go.
    touched: BTreeMap<u64, RoaringBitmap>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Log,
    Pages,
    /// A pages file an interrupted write left behind.
    Temp,
}

fn log_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("al-{epoch}.log"))
}

fn pages_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("al-{epoch}.pages"))
}

fn parse_name(name: &str) -> Option<(u64, Kind)> {
    let rest = name.strip_prefix("al-")?;
    let (epoch, kind) = if let Some(e) = rest.strip_suffix(".log") {
        (e, Kind::Log)
    } else if let Some(e) = rest.strip_suffix(".pages") {
        (e, Kind::Pages)
    } else {
        (rest.strip_suffix(".pages.tmp")?, Kind::Temp)
    };
    Some((epoch.parse().ok()?, kind))
}

/// The activity files in `dir`, by epoch.
fn files(dir: &Path) -> Result<Vec<(u64, Kind, PathBuf)>, TrackingError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some((epoch, kind)) = entry.file_name().to_str().and_then(parse_name) {
            out.push((epoch, kind, entry.path()));
        }
    }
    out.sort_by_key(|(epoch, _, _)| *epoch);
    Ok(out)
}

/// True when `dir` holds an activity log.
pub fn exists(dir: &Path) -> Result<bool, TrackingError> {
    Ok(files(dir)?.iter().any(|(_, kind, _)| *kind != Kind::Temp))
}

/// Pages per extent for `page_size` (4 to 1024).
pub fn pages_per_extent(page_size: PageSize) -> u32 {
    (EXTENT_BYTES / u64::from(page_size.bytes())) as u32
}

/// The pages the activity log in `dir` names, for a volume of `pages` pages: what may
/// have changed since the last committed cut. `Ok(None)` when there is no log. A file
/// that cannot be read as written gives every page (more than needed, never less).
pub fn recover(
    dir: &Path,
    pages: u32,
    page_size: PageSize,
) -> Result<Option<RoaringBitmap>, TrackingError> {
    let found = files(dir)?;
    if !found.iter().any(|(_, kind, _)| *kind != Kind::Temp) {
        return Ok(None);
    }
    let per = pages_per_extent(page_size);
    let mut all = RoaringBitmap::new();
    all.insert_range(0..pages);
    let mut out = RoaringBitmap::new();
    for (_, kind, path) in &found {
        match kind {
            Kind::Temp => {}
            Kind::Pages => match persist::load_bitmap(path) {
                Ok(Some(b)) if b.max().is_none_or(|m| m < pages) => out |= b,
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!(path = %path.display(), "unreadable activity file: every page counts as changed");
                    return Ok(Some(all));
                }
            },
            Kind::Log => {
                let bytes = fs::read(path).map_err(io_err(path))?;
                // A partial record at the end is a record whose sync never finished, so
                // its write never happened.
                for rec in bytes.chunks_exact(RECORD) {
                    let extent = rec[..4].try_into().map(u32::from_le_bytes);
                    let crc = rec[4..].try_into().map(u32::from_le_bytes);
                    let first = extent.map(|e| u64::from(e) * u64::from(per));
                    match (extent, crc, first) {
                        (Ok(e), Ok(c), Ok(first))
                            if c == crc32c::crc32c(&e.to_le_bytes())
                                && first < u64::from(pages) =>
                        {
                            let end = (first + u64::from(per)).min(u64::from(pages));
                            out.insert_range(first as u32..end as u32);
                        }
                        _ => {
                            tracing::warn!(path = %path.display(), "damaged activity record: every page counts as changed");
                            return Ok(Some(all));
                        }
                    }
                }
            }
        }
    }
    Ok(Some(out))
}

/// Removes the activity log from `dir` (the volume is served untracked).
pub fn discard(dir: &Path) -> Result<(), TrackingError> {
    for (_, _, path) in files(dir)? {
        remove_if_present(&path)?;
    }
    Ok(())
}

impl ActivityLog {
    /// Starts the log of a volume that opens with `dirty` pages: a new epoch past every
    /// one in `dir`, whose pages file lists `dirty`. Older files go once that is durable.
    pub fn start(
        dir: &Path,
        page_size: PageSize,
        dirty: &RoaringBitmap,
    ) -> Result<Self, TrackingError> {
        Self::start_inner(dir, page_size, dirty, 0)
    }

    /// [`ActivityLog::start`] for a volume of `volume_bytes`, with the space of the
    /// current epoch's log and of the next one's reserved now (see the module
    /// documentation): a file system that fills up later does not stop recording.
    pub fn start_reserved(
        dir: &Path,
        page_size: PageSize,
        dirty: &RoaringBitmap,
        volume_bytes: u64,
    ) -> Result<Self, TrackingError> {
        let extents = volume_bytes.div_ceil(EXTENT_BYTES).max(1);
        let reserve = (extents * RECORD as u64).next_multiple_of(4096);
        Self::start_inner(dir, page_size, dirty, reserve)
    }

    fn start_inner(
        dir: &Path,
        page_size: PageSize,
        dirty: &RoaringBitmap,
        reserve: u64,
    ) -> Result<Self, TrackingError> {
        crate::durable::create_private_dir(dir).map_err(io_err(dir))?;
        let old = files(dir)?;
        let epoch = old.last().map_or(1, |(e, _, _)| e + 1);
        persist::save_bitmap(&pages_path(dir, epoch), dirty)?;
        for (e, _, path) in &old {
            if *e < epoch {
                remove_if_present(path)?;
            }
        }
        let (file, spare) = if reserve > 0 {
            let file = create_log(dir, epoch, reserve)?;
            let spare = create_log(dir, epoch + 1, reserve)?;
            (Some(file), Some((epoch + 1, spare)))
        } else {
            (None, None)
        };
        Ok(ActivityLog {
            dir: dir.to_owned(),
            pages_per_extent: pages_per_extent(page_size),
            reserve,
            state: Mutex::new(State {
                epoch,
                file,
                spare,
                ..State::default()
            }),
            flushed: Notify::new(),
        })
    }

    /// Makes sure the extents of `pages` are recorded in this epoch's log before the
    /// caller writes them. Call it inside the volume's write gate: a cut's drain then
    /// waits for it, and the epoch cannot change under it.
    pub async fn record(&self, pages: Range<PageIndex>) -> Result<(), TrackingError> {
        if pages.is_empty() {
            return Ok(());
        }
        let per = self.pages_per_extent;
        let extents = pages.start / per..(pages.end - 1) / per + 1;
        loop {
            let step = {
                let mut s = self.state.lock();
                if s.hot.contains_range(extents.clone()) {
                    return Ok(());
                }
                // The usual write after a cut: extents the ended epoch recorded and this
                // one has not. They need only a note in `touched`, as below, but without
                // new bitmaps made under the lock on every such write.
                if s.carried.contains_range(extents.clone())
                    && s.hot.range_cardinality(extents.clone()) == 0
                {
                    let epoch = s.epoch;
                    let touched = s.touched.entry(epoch).or_default();
                    if !touched.contains_range(extents.clone()) {
                        touched.insert_range(extents);
                    }
                    return Ok(());
                }
                let mut missing = RoaringBitmap::new();
                missing.insert_range(extents.clone());
                missing -= &s.hot;
                // Under the lock, so `forget_through` sees it before it deletes the
                // file that covers the write.
                let carried = &missing & &s.carried;
                missing -= &carried;
                if !carried.is_empty() {
                    let epoch = s.epoch;
                    *s.touched.entry(epoch).or_default() |= carried;
                }
                if missing.is_empty() {
                    return Ok(());
                }
                s.queued |= missing;
                if s.flushing {
                    // A future from `notified` hears `notify_waiters` from its creation.
                    Err(self.flushed.notified())
                } else {
                    s.flushing = true;
                    let batch = std::mem::take(&mut s.queued) - &s.hot;
                    // The first flush of an epoch makes the next epoch's spare.
                    let spare = (self.reserve > 0 && s.spare.is_none()).then_some(s.epoch + 1);
                    Ok((s.epoch, s.file.clone(), batch, spare))
                }
            };
            let (epoch, file, batch, spare) = match step {
                Ok(flush) => flush,
                Err(flushed) => {
                    flushed.await;
                    continue;
                }
            };
            // Ends the flush on every way out, a dropped future included.
            let _done = FlushDone(self);
            let dir = self.dir.clone();
            let records = batch.clone();
            let reserve = self.reserve;
            let appended = tokio::task::spawn_blocking(move || {
                let file = append(&dir, epoch, file, &records)?;
                // The records are durable whatever becomes of the spare: a spare that
                // cannot be made now is tried again at the next flush.
                let spare = spare.map(|e| (e, create_log(&dir, e, reserve)));
                Ok::<_, TrackingError>((file, spare))
            })
            .await;
            let (file, spare) = appended.map_err(|e| TrackingError::Io {
                path: log_path(&self.dir, epoch),
                source: io::Error::other(e.to_string()),
            })??;
            let mut s = self.state.lock();
            if s.epoch == epoch {
                s.hot |= batch;
                s.file = Some(file);
            }
            match spare {
                Some((e, Ok(spare))) if s.epoch < e => s.spare = Some((e, spare)),
                Some((e, Err(err))) => {
                    tracing::warn!(epoch = e, error = %crate::chain::ErrorChain(&err), "cannot reserve the next activity log: the first write after the next cut needs new space");
                }
                _ => {}
            }
        }
    }

    /// Ends the current epoch and returns it. Call with the volume's gate closed and
    /// drained, as the cut takes the dirty map.
    pub fn rotate(&self) -> u64 {
        let mut s = self.state.lock();
        let ended = s.epoch;
        s.epoch += 1;
        let hot = std::mem::take(&mut s.hot);
        s.carried |= &hot;
        s.ended.insert(ended, hot);
        s.queued.clear();
        s.file = match s.spare.take() {
            Some((e, file)) if e == s.epoch => Some(file),
            _ => None,
        };
        ended
    }

    /// Deletes the files of every epoch up to `epoch` (never the current one): a cut
    /// that ended `epoch` is committed by the peer and recorded by the primary. The
    /// carried extents written since are recorded in the current epoch first.
    pub fn forget_through(&self, epoch: u64) -> Result<(), TrackingError> {
        let (current, upto, touched) = {
            let mut s = self.state.lock();
            let current = s.epoch;
            let upto = epoch.min(current.saturating_sub(1));
            // From here a write to an extent of those epochs records as usual.
            s.ended.retain(|e, _| *e > upto);
            s.carried = s
                .ended
                .values()
                .fold(RoaringBitmap::new(), |acc, b| acc | b);
            // Writes of epochs up to `upto` are in the committed cut.
            let later = s.touched.split_off(&(upto + 1));
            s.touched.clear();
            let touched = later
                .into_values()
                .fold(RoaringBitmap::new(), |acc, b| acc | b);
            (current, upto, touched)
        };
        if !touched.is_empty() {
            let file = self.state.lock().file.clone();
            match append(&self.dir, current, file, &touched) {
                Ok(file) => {
                    let mut s = self.state.lock();
                    if s.epoch == current {
                        s.hot |= &touched;
                        s.file.get_or_insert(file);
                    } else if let Some(hot) = s.ended.get_mut(&current) {
                        // A cut ended the epoch meanwhile: its file covers them.
                        *hot |= &touched;
                        s.carried |= &touched;
                    }
                }
                Err(e) => {
                    // Nothing is deleted: the old files still cover these writes.
                    *self.state.lock().touched.entry(current).or_default() |= touched;
                    return Err(e);
                }
            }
        }
        let found = files(&self.dir)?;
        // A log with no file at all would read as no log (every page changed): the
        // current epoch gets an empty pages file before the older files go.
        if !found
            .iter()
            .any(|(e, kind, _)| *e == current && *kind != Kind::Temp)
        {
            persist::save_bitmap(&pages_path(&self.dir, current), &RoaringBitmap::new())?;
        }
        for (e, _, path) in found {
            if e <= upto {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Extents recorded in the current epoch.
    pub fn hot_extents(&self) -> u64 {
        self.state.lock().hot.len()
    }
}

struct FlushDone<'a>(&'a ActivityLog);

impl Drop for FlushDone<'_> {
    fn drop(&mut self) {
        self.0.state.lock().flushing = false;
        self.0.flushed.notify_waiters();
    }
}

/// Creates the (empty) log of `epoch` with `reserve` bytes of space allocated past
/// its end, durably: the file, then its name.
fn create_log(dir: &Path, epoch: u64, reserve: u64) -> Result<Arc<File>, TrackingError> {
    let path = log_path(dir, epoch);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    let reserved = OsDisk
        .reserve(&file, &path, 0, reserve)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&path))
        .and_then(|()| sync_dir(&path));
    if let Err(e) = reserved {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(Arc::new(file))
}

/// Appends one record per extent to the log of `epoch` and makes them durable.
fn append(
    dir: &Path,
    epoch: u64,
    file: Option<Arc<File>>,
    extents: &RoaringBitmap,
) -> Result<Arc<File>, TrackingError> {
    let path = log_path(dir, epoch);
    let mut records = Vec::with_capacity(extents.len() as usize * RECORD);
    for e in extents {
        let bytes = e.to_le_bytes();
        records.extend_from_slice(&bytes);
        records.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    }
    match file {
        Some(file) => {
            (&*file).write_all(&records).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            Ok(file)
        }
        None => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::durable::PRIVATE_FILE)
                .open(&path)
                .map_err(io_err(&path))?;
            (&file).write_all(&records).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            // The new name must survive a crash along with its records.
            sync_dir(&path)?;
            Ok(Arc::new(file))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_range(extents: Range<u32>) -> Range<u32> {
        extents.start * 1024..extents.end * 1024
    }

    #[tokio::test]
    async fn records_survive_and_rotation_and_forgetting_bound_them() {
        let dir = tempfile::tempdir().unwrap();
        let pages = 100 * 1024 + 10; // 100 whole extents of 4 KiB pages and a part
        assert_eq!(recover(dir.path(), pages, PageSize::DEFAULT).unwrap(), None);
        let mut carried = RoaringBitmap::new();
        carried.insert(5);
        let log = ActivityLog::start(dir.path(), PageSize::DEFAULT, &carried).unwrap();
        log.record(3000..3001).await.unwrap(); // extent 2
        log.record(1023..1025).await.unwrap(); // extents 0 and 1
        log.record(100 * 1024 + 9..100 * 1024 + 10).await.unwrap(); // the part extent
        assert_eq!(log.hot_extents(), 4);
        let got = recover(dir.path(), pages, PageSize::DEFAULT)
            .unwrap()
            .unwrap();
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(0..3));
        want.insert_range(100 * 1024..pages);
        assert_eq!(got, want);

        // A new epoch: earlier records stay until the cut is committed.
        let ended = log.rotate();
        log.record(page_range(7..8)).await.unwrap();
        want.insert_range(page_range(7..8));
        assert_eq!(
            recover(dir.path(), pages, PageSize::DEFAULT).unwrap(),
            Some(want)
        );
        log.forget_through(ended).unwrap();
        let after = recover(dir.path(), pages, PageSize::DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(
            after.iter().collect::<Vec<_>>(),
            page_range(7..8).collect::<Vec<_>>()
        );
        // Never the current epoch.
        log.forget_through(u64::MAX).unwrap();
        assert_eq!(
            recover(dir.path(), pages, PageSize::DEFAULT).unwrap(),
            Some(after.clone())
        );

        // A restart starts past every epoch and carries the pages over in one file.
        drop(log);
        let log = ActivityLog::start(dir.path(), PageSize::DEFAULT, &after).unwrap();
        assert_eq!(log.hot_extents(), 0);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("al-{}.pages", ended + 2)]);
        assert_eq!(
            recover(dir.path(), pages, PageSize::DEFAULT).unwrap(),
            Some(after)
        );
    }

    #[tokio::test]
    async fn carried_extents_skip_the_sync_and_stay_covered_past_forget() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pages = 16 * 1024;
        let log = ActivityLog::start(d, PageSize::DEFAULT, &RoaringBitmap::new()).unwrap();
        log.record(page_range(1..3)).await.unwrap();
        let ended = log.rotate();
        // Extent 1 again: the ended epoch's file covers it, nothing is appended.
        log.record(page_range(1..2)).await.unwrap();
        assert!(!log_path(d, ended + 1).exists());
        assert_eq!(log.hot_extents(), 0);
        // Extent 5 was never hot: it records as before.
        log.record(page_range(5..6)).await.unwrap();
        let len = |e| fs::metadata(log_path(d, e)).unwrap().len();
        assert_eq!(len(ended + 1), RECORD as u64);
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(1..3));
        want.insert_range(page_range(5..6));
        assert_eq!(recover(d, pages, PageSize::DEFAULT).unwrap(), Some(want));

        // The cut is committed: the written carried extent is recorded in the current
        // epoch before the old file goes; the unwritten one (2) is covered no more.
        log.forget_through(ended).unwrap();
        assert!(!log_path(d, ended).exists());
        assert_eq!(len(ended + 1), 2 * RECORD as u64);
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(1..2));
        want.insert_range(page_range(5..6));
        assert_eq!(
            recover(d, pages, PageSize::DEFAULT).unwrap(),
            Some(want.clone())
        );
        assert_eq!(log.hot_extents(), 2);
        // Extent 2 is no longer carried: a write to it records.
        log.record(page_range(2..3)).await.unwrap();
        assert_eq!(len(ended + 1), 3 * RECORD as u64);
        want.insert_range(page_range(2..3));
        assert_eq!(recover(d, pages, PageSize::DEFAULT).unwrap(), Some(want));
    }

    #[tokio::test]
    async fn writes_carried_across_two_cuts_survive_forgetting_both() {
        // A failed transfer leaves an ended epoch's file; the next cut ends another
        // and its commit forgets both: every carried write must still be covered.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pages = 16 * 1024;
        let log = ActivityLog::start(d, PageSize::DEFAULT, &RoaringBitmap::new()).unwrap();
        log.record(page_range(3..4)).await.unwrap();
        log.rotate();
        log.record(page_range(3..4)).await.unwrap(); // carried from the first epoch
        let second = log.rotate();
        log.record(page_range(3..4)).await.unwrap(); // still carried
        log.forget_through(second).unwrap();
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(3..4));
        assert_eq!(recover(d, pages, PageSize::DEFAULT).unwrap(), Some(want));
        assert!(log_path(d, second + 1).exists());
    }

    #[tokio::test]
    async fn torn_tail_is_ignored_and_damage_counts_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActivityLog::start(
            dir.path(),
            PageSize::new(1 << 20).unwrap(),
            &RoaringBitmap::new(),
        )
        .unwrap();
        log.record(9..10).await.unwrap(); // 4 pages an extent: extent 2
        let path = log_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let page = PageSize::new(1 << 20).unwrap();
        let got = recover(dir.path(), 16, page).unwrap().unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), vec![8, 9, 10, 11]);
        f.write_all(&[4, 5, 6, 7, 8]).unwrap(); // now a whole record with a bad crc
        assert_eq!(recover(dir.path(), 16, page).unwrap().unwrap().len(), 16);
        discard(dir.path()).unwrap();
        assert_eq!(recover(dir.path(), 16, page).unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_all_get_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            ActivityLog::start(dir.path(), PageSize::DEFAULT, &RoaringBitmap::new()).unwrap(),
        );
        let mut tasks = Vec::new();
        for w in 0..16u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20u32 {
                    let extent = (w * 7 + i * 3) % 64;
                    log.record(extent * 1024 + 5..extent * 1024 + 6)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = recover(dir.path(), 64 * 1024, PageSize::DEFAULT)
            .unwrap()
            .unwrap();
        let mut want = RoaringBitmap::new();
        for w in 0..16u32 {
            for i in 0..20u32 {
                want.insert_range(page_range((w * 7 + i * 3) % 64..(w * 7 + i * 3) % 64 + 1));
            }
        }
        assert_eq!(got, want);
        assert_eq!(log.hot_extents(), want.len() / 1024);
        // Each extent recorded once, since a writer waits for a flush in progress.
        let bytes = fs::metadata(log_path(dir.path(), 1)).unwrap().len();
        assert_eq!(bytes, want.len() / 1024 * RECORD as u64);
    }

    #[tokio::test]
    async fn reserved_logs_have_their_space_before_any_record() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 16 extents: 128 bytes of records, a page reserved.
        let log =
            ActivityLog::start_reserved(d, PageSize::DEFAULT, &RoaringBitmap::new(), 64 << 20)
                .unwrap();
        let reserved = |epoch: u64| {
            let m = fs::metadata(log_path(d, epoch)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
            (m.len(), m.blocks() * 512 >= 4096)
        };
        // The current epoch's log and the next one's, empty, their blocks allocated.
        assert_eq!(reserved(1), (0, true));
        assert_eq!(reserved(2), (0, true));
        assert_eq!(
            recover(d, 16 * 1024, PageSize::DEFAULT).unwrap(),
            Some(RoaringBitmap::new())
        );
        log.record(page_range(3..4)).await.unwrap();
        assert_eq!(reserved(1), (RECORD as u64, true));
        // The next epoch appends to the spare; its first flush reserves the one after.
        assert_eq!(log.rotate(), 1);
        assert!(!log_path(d, 3).exists());
        log.record(page_range(5..6)).await.unwrap();
        assert_eq!(reserved(2), (RECORD as u64, true));
        assert_eq!(reserved(3), (0, true));
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(3..4));
        want.insert_range(page_range(5..6));
        assert_eq!(
            recover(d, 16 * 1024, PageSize::DEFAULT).unwrap(),
            Some(want)
        );
        log.forget_through(1).unwrap();
        let mut want = RoaringBitmap::new();
        want.insert_range(page_range(5..6));
        assert_eq!(
            recover(d, 16 * 1024, PageSize::DEFAULT).unwrap(),
            Some(want.clone())
        );
        // A restart starts past the spare and removes it with the rest.
        drop(log);
        let _log = ActivityLog::start_reserved(d, PageSize::DEFAULT, &want, 64 << 20).unwrap();
        assert_eq!(reserved(4), (0, true));
        assert_eq!(reserved(5), (0, true));
        assert!(!log_path(d, 3).exists() && !log_path(d, 2).exists());
        assert_eq!(
            recover(d, 16 * 1024, PageSize::DEFAULT).unwrap(),
            Some(want)
        );
    }
}
