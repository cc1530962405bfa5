//! [`TrackedVolume`]: what the write path and the replicator hold per volume.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use roaring::RoaringBitmap;

use super::activity::{self, ActivityLog};
use super::cow::CowConfig;
use super::dirty::DirtyMap;
use super::gate::{WriteGate, WriteGuard};
use super::snapshot::{SnapshotInfo, SnapshotSet};
use super::{persist, CutId, PageIndex, PageSize, TrackingError};

/// Tracking state of one volume: its dirty map, write gate and snapshots.
#[derive(Debug)]
pub struct TrackedVolume {
    name: Arc<str>,
    size: u64,
    page_size: PageSize,
    pages: u32,
    dirty: DirtyMap,
    gate: WriteGate,
    snapshots: SnapshotSet,
    /// Durable record of the extents written since the last committed cut; absent for
    /// a volume tracked in memory only ([`TrackedVolume::new`]).
    activity: Option<ActivityLog>,
}

impl TrackedVolume {
    /// Tracking for a volume of `size` bytes. `name` orders the volumes of a group when a
    /// cut closes their gates, and names the snapshots' spill files.
    pub fn new(
        name: &str,
        size: u64,
        page_size: PageSize,
        cow: CowConfig,
    ) -> Result<Self, TrackingError> {
        Self::with_dirty(name, size, page_size, cow, RoaringBitmap::new())
    }

    /// As [`TrackedVolume::new`], starting from a saved dirty bitmap (after a restart).
    pub fn with_dirty(
        name: &str,
        size: u64,
        page_size: PageSize,
        cow: CowConfig,
        dirty: RoaringBitmap,
    ) -> Result<Self, TrackingError> {
        let pages = page_size.page_count(size)?;
        if dirty.max().is_some_and(|m| m >= pages) {
            return Err(TrackingError::SavedBitmapTooLarge { pages });
        }
        let name: Arc<str> = name.into();
        Ok(TrackedVolume {
            snapshots: SnapshotSet::new(name.clone(), page_size.bytes() as usize, cow),
            name,
            size,
            page_size,
            pages,
            dirty: DirtyMap::from_bitmap(dirty),
            gate: WriteGate::new(),
            activity: None,
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    pub fn page_count(&self) -> u32 {
        self.pages
    }

    pub fn dirty(&self) -> &DirtyMap {
        &self.dirty
    }

    pub fn gate(&self) -> &WriteGate {
        &self.gate
    }

    /// The pages `len` bytes at `offset` touch, checked against the volume size.
    pub fn pages_of(&self, offset: u64, len: u64) -> Result<Range<PageIndex>, TrackingError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(self.page_size.pages_of(offset, len)),
            _ => Err(TrackingError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// The write path, step one: enter the gate (waiting while a cut holds it closed),
    /// record the extents in the activity log (a sync, only for the first write to an
    /// extent since the last replication cut), preserve old content for live snapshots,
    /// mark the pages dirty. Write the data while holding the returned guard, then drop
    /// it.
    ///
    /// `read_old(page, buf)` reads one page of current content (zeros past the end of
    /// the volume); it is only called when a live snapshot has not kept that page yet.
    /// It runs with the snapshot lock held, synchronously. On error nothing is marked
    /// and the write must not be done.
    pub async fn begin_write<F>(
        &self,
        offset: u64,
        len: u64,
        read_old: F,
    ) -> Result<WriteGuard<'_>, TrackingError>
    where
        F: FnMut(PageIndex, &mut [u8]) -> io::Result<()>,
    {
        let pages = self.pages_of(offset, len)?;
        let guard = self.gate.enter().await;
        if let Some(log) = &self.activity {
            log.record(pages.clone()).await?;
        }
        self.write_entered(pages, read_old)?;
        Ok(guard)
    }

    fn write_entered<F>(&self, pages: Range<PageIndex>, read_old: F) -> Result<(), TrackingError>
    where
        F: FnMut(PageIndex, &mut [u8]) -> io::Result<()>,
    {
        self.snapshots.before_write(pages.clone(), read_old)?;
        self.dirty.mark(pages);
        Ok(())
    }

    /// True when a write needs no `read_old` at all (no snapshot is live).
    pub fn has_snapshots(&self) -> bool {
        !self.snapshots.is_empty()
    }

    /// Reads `page` as it was at the cut of snapshot `cut` into `buf` (one page).
    /// `read_current(buf)` reads the page's current content (zeros past the end of the
    /// volume); it runs without any lock held, and its result is replaced by the kept
    /// copy when the page was overwritten since the cut.
    pub fn read_snapshot_page<F>(
        &self,
        cut: CutId,
        page: PageIndex,
        buf: &mut [u8],
        read_current: F,
    ) -> Result<(), TrackingError>
    where
        F: FnOnce(&mut [u8]) -> io::Result<()>,
    {
        if page >= self.pages {
            return Err(TrackingError::PageOutOfRange {
                page,
                pages: self.pages,
            });
        }
        self.snapshots.read_page(cut, page, buf, read_current)
    }

    /// Makes `buf`, the volume's current content read at byte `offset` *before* this
    /// call (by any means, without locks), read as snapshot `cut` did at its cut: the
    /// read path of a snapshot LUN. The range must lie inside the volume and the
    /// snapshot's scope.
    pub fn overlay_snapshot(
        &self,
        cut: CutId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TrackingError> {
        self.pages_of(offset, buf.len() as u64)?;
        self.snapshots.overlay(cut, offset, buf)
    }

    /// True when snapshot `cut` exists and still reads as its cut.
    pub fn has_snapshot(&self, cut: CutId) -> bool {
        self.snapshots.is_readable(cut)
    }

    /// Deletes a snapshot: frees its memory and removes its spill file.
    pub fn delete_snapshot(&self, cut: CutId) -> Result<SnapshotInfo, TrackingError> {
        self.snapshots.delete(cut)
    }

    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshots.list()
    }

    /// Clean shutdown: closes the gate (waiting up to `timeout` for writes in flight),
    /// saves the dirty bitmap and the snapshots into `dir` (this volume's own state
    /// directory) and leaves the gate closed for good: a write after the save would
    /// make it stale. On error the gate is reopened.
    pub async fn close_and_save(&self, dir: &Path, timeout: Duration) -> Result<(), TrackingError> {
        self.gate
            .close_and_drain(timeout)
            .await
            .map_err(TrackingError::Gate)?;
        let saved = self.snapshots.save(dir, &self.dirty.snapshot());
        if saved.is_err() {
            self.gate.open();
        }
        saved
    }

    /// Tracking for a volume restarting after a clean shutdown: the state saved in `dir`
    /// by [`TrackedVolume::close_and_save`], or a fresh state when `dir` holds none.
    /// [`TrackingError::UncleanState`] when the state there is from before a crash.
    pub fn load(
        name: &str,
        size: u64,
        page_size: PageSize,
        cow: CowConfig,
        dir: &Path,
    ) -> Result<Self, TrackingError> {
        let page_bytes = page_size.bytes() as usize;
        match persist::load_state(dir, page_bytes)? {
            Some(state) => Self::from_state(name, size, page_size, cow, state),
            None => Self::new(name, size, page_size, cow),
        }
    }

    fn from_state(
        name: &str,
        size: u64,
        page_size: PageSize,
        cow: CowConfig,
        state: persist::LoadedState,
    ) -> Result<Self, TrackingError> {
        let pages = page_size.page_count(size)?;
        if state
            .snapshots
            .iter()
            .any(|s| s.kept.max().is_some_and(|m| m >= pages))
            || state.snapshots.iter().any(|s| {
                s.scope
                    .as_ref()
                    .and_then(RoaringBitmap::max)
                    .is_some_and(|m| m >= pages)
            })
        {
            return Err(TrackingError::SavedBitmapTooLarge { pages });
        }
        let volume = Self::with_dirty(name, size, page_size, cow, state.dirty)?;
        volume.snapshots.restore(state.snapshots);
        Ok(volume)
    }

    /// Startup of a served volume, with its state in `dir`: what a clean shutdown saved,
    /// or after a crash every page the activity log names (returned `true`), or a fresh
    /// state. Either way the activity log starts and a live state stays on disk, so a
    /// crash from now on is found at the next start. State from a crash without an
    /// activity log (an older version, or a volume served untracked) counts every page
    /// as changed.
    pub fn open(
        name: &str,
        size: u64,
        page_size: PageSize,
        cow: CowConfig,
        dir: &Path,
    ) -> Result<(Self, bool), TrackingError> {
        let page_bytes = page_size.bytes() as usize;
        let loaded = match persist::load_state(dir, page_bytes) {
            Ok(Some(state)) => Some(Self::from_state(name, size, page_size, cow.clone(), state)?),
            // No saved state but a log: a crash between clearing one and writing another.
            Ok(None) if !activity::exists(dir)? => {
                Some(Self::new(name, size, page_size, cow.clone())?)
            }
            Ok(None) | Err(TrackingError::UncleanState { .. }) => None,
            Err(e) => return Err(e),
        };
        let (mut volume, crashed) = match loaded {
            Some(v) => (v, false),
            None => {
                let pages = page_size.page_count(size)?;
                let dirty = activity::recover(dir, pages, page_size)?.unwrap_or_else(|| {
                    let mut all = RoaringBitmap::new();
                    all.insert_range(0..pages);
                    all
                });
                persist::discard_state(dir)?;
                (Self::with_dirty(name, size, page_size, cow, dirty)?, true)
            }
        };
        volume.activity = Some(ActivityLog::start_reserved(
            dir,
            page_size,
            &volume.dirty.snapshot(),
            size,
        )?);
        persist::ensure_live_state(dir)?;
        Ok((volume, crashed))
    }

    /// Ends the activity log's epoch at a cut that takes the dirty map (the gate is
    /// closed and drained); `None` without a log.
    pub(crate) fn rotate_activity(&self) -> Option<u64> {
        self.activity.as_ref().map(ActivityLog::rotate)
    }

    /// The cut that ended activity epoch `epoch` is committed by the peer and recorded:
    /// the log's files up to that epoch go.
    pub fn forget_activity_through(&self, epoch: u64) -> Result<(), TrackingError> {
        match &self.activity {
            Some(log) => log.forget_through(epoch),
            None => Ok(()),
        }
    }

    /// Extents recorded in the activity log's current epoch (0 without a log).
    pub fn hot_extents(&self) -> u64 {
        self.activity.as_ref().map_or(0, ActivityLog::hot_extents)
    }

    /// Lets go of `pages` of snapshot `cut` once they are no longer needed (sent and
    /// acknowledged): they stop being readable, their copies are freed, and writes to
    /// them stop copying.
    pub fn release_snapshot_pages(
        &self,
        cut: CutId,
        pages: &RoaringBitmap,
    ) -> Result<(), TrackingError> {
        self.snapshots.release(cut, pages, self.pages)
    }

    /// Called by a cut with this volume's gate closed and drained.
    pub(crate) fn create_snapshot(
        &self,
        cut: CutId,
        at: SystemTime,
        scope: Option<RoaringBitmap>,
    ) -> Result<(), TrackingError> {
        self.snapshots.create(cut, at, scope)
    }
}
