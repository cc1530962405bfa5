//! Snapshots of one volume: the content it had at a cut, kept by copying each page's old
//! content into a [`CowStore`] on its first overwrite after the cut.
//!
//! Every page is preserved on first overwrite, not only the pages dirty at the cut: that
//! keeps the rule simple and a snapshot reads as the whole volume at its cut.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use roaring::RoaringBitmap;

use super::cow::{CowConfig, CowStats, CowStore};
use super::{persist, CutId, PageIndex, TrackingError};

static SPILL_SEQ: AtomicU64 = AtomicU64::new(0);

/// Pages [`SnapshotSet::overlay`] lays over a buffer per hold of the set's lock.
const OVERLAY_BATCH: PageIndex = 16;

/// What a snapshot reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub cut: CutId,
    pub taken_at: SystemTime,
    /// Pages preserved and the bytes they take in memory and in the spill file.
    pub stats: CowStats,
    /// Pages it keeps readable, `None` for the whole volume.
    pub scope_pages: Option<u64>,
    /// The store failed to keep a page (spill file error): the snapshot no longer reads
    /// as its cut and only deleting it makes sense. Writes went on regardless.
    pub invalidated: bool,
}

#[derive(Debug)]
struct Snapshot {
    cut: CutId,
    taken_at: SystemTime,
    /// `None` once invalidated (its memory and file are released at once).
    store: Option<CowStore>,
    /// The pages it keeps readable; `None` for the whole volume.
    scope: Option<RoaringBitmap>,
}

impl Snapshot {
    fn in_scope(&self, page: PageIndex) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(page))
    }

    fn needs(&self, page: PageIndex) -> bool {
        self.in_scope(page) && self.store.as_ref().is_some_and(|s| !s.contains(page))
    }
}

/// The live snapshots of one volume.
#[derive(Debug)]
pub(crate) struct SnapshotSet {
    volume: std::sync::Arc<str>,
    page_bytes: usize,
    cow: CowConfig,
    snapshots: Mutex<Vec<Snapshot>>,
    /// Number of snapshots, read without the lock on the write path.
    live: AtomicUsize,
}

impl SnapshotSet {
    pub(crate) fn new(volume: std::sync::Arc<str>, page_bytes: usize, cow: CowConfig) -> Self {
        SnapshotSet {
            volume,
            page_bytes,
            cow,
            snapshots: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
        }
    }

    /// Starts a snapshot at `cut`. The caller holds the volume's write gate closed and
    /// drained, so no write straddles the snapshot's instant.
    pub(crate) fn create(
        &self,
        cut: CutId,
        taken_at: SystemTime,
        scope: Option<RoaringBitmap>,
    ) -> Result<(), TrackingError> {
        let mut snaps = self.snapshots.lock();
        if snaps.iter().any(|s| s.cut == cut) {
            return Err(TrackingError::SnapshotExists { cut });
        }
        // The sequence number keeps names apart when two volume names sanitize alike.
        let seq = SPILL_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.cut-{}.{}.cow", sanitize(&self.volume), cut.0, seq);
        snaps.push(Snapshot {
            cut,
            taken_at,
            store: Some(CowStore::new(self.cow.clone(), self.page_bytes, &name)),
            scope,
        });
        self.live.store(snaps.len(), Ordering::Release);
        Ok(())
    }

    pub(crate) fn delete(&self, cut: CutId) -> Result<SnapshotInfo, TrackingError> {
        let mut snaps = self.snapshots.lock();
        let at = snaps
            .iter()
            .position(|s| s.cut == cut)
            .ok_or(TrackingError::NoSuchSnapshot { cut })?;
        let snap = snaps.remove(at);
        self.live.store(snaps.len(), Ordering::Release);
        drop(snaps);
        Ok(info(&snap))
        // `snap` drops here: memory released, spill file removed.
    }

    pub(crate) fn list(&self) -> Vec<SnapshotInfo> {
        self.snapshots.lock().iter().map(info).collect()
    }

    /// True when snapshot `cut` exists and still reads as its cut.
    pub(crate) fn is_readable(&self, cut: CutId) -> bool {
        self.snapshots
            .lock()
            .iter()
            .any(|s| s.cut == cut && s.store.is_some())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    /// Preserves, in every live snapshot that has not kept it yet, the current content
    /// of each page in `pages`, read through `read_old(page, buf)` (one page; bytes past
    /// the volume's end must read as zeros). Called under the write gate, before the
    /// write lands. A page is copied once per snapshot, and read once for all of them.
    pub(crate) fn before_write<F>(
        &self,
        pages: Range<PageIndex>,
        mut read_old: F,
    ) -> Result<(), TrackingError>
    where
        F: FnMut(PageIndex, &mut [u8]) -> io::Result<()>,
    {
        if self.is_empty() {
            return Ok(());
        }
        // The lock is held across the copies: a second writer of the same page must not
        // pass before the old content is safe.
        let mut snaps = self.snapshots.lock();
        let mut buf: Option<Vec<u8>> = None;
        for page in pages {
            let mut needing = snaps.iter_mut().filter(|s| s.needs(page));
            let Some(first) = needing.next() else {
                continue;
            };
            if needing.next().is_none() {
                // One snapshot needs it (the usual case: a set's cut): the old content
                // is read straight into that store's memory.
                let kept = match first.store.as_mut() {
                    Some(store) => store.put_with(page, |b| read_old(page, b)),
                    None => Ok(()),
                };
                match kept {
                    Ok(()) => {}
                    Err(Ok(source)) => return Err(TrackingError::ReadOld { page, source }),
                    Err(Err(error)) => invalidate(&self.volume, first, &error),
                }
                continue;
            }
            let buf = buf.get_or_insert_with(|| vec![0; self.page_bytes]);
            read_old(page, buf).map_err(|source| TrackingError::ReadOld { page, source })?;
            for snap in snaps.iter_mut().filter(|s| s.needs(page)) {
                let Some(store) = snap.store.as_mut() else {
                    continue;
                };
                if let Err(error) = store.put(page, buf) {
                    invalidate(&self.volume, snap, &error);
                }
            }
        }
        Ok(())
    }

    /// Reads `page` as it was at `cut` into `buf` (one page). `read_current` reads the
    /// volume's current content of the page; it runs without any lock held.
    ///
    /// Why reading first and checking second is right: a write to the page after the cut
    /// lands only after its old content is in the store (under the set's lock). If the
    /// store holds the page when we look, we use the store. If it does not, no write to
    /// the page had started when we looked, and so none had landed while we read.
    pub(crate) fn read_page<F>(
        &self,
        cut: CutId,
        page: PageIndex,
        buf: &mut [u8],
        read_current: F,
    ) -> Result<(), TrackingError>
    where
        F: FnOnce(&mut [u8]) -> io::Result<()>,
    {
        if buf.len() != self.page_bytes {
            return Err(TrackingError::PageLength {
                got: buf.len(),
                want: self.page_bytes,
            });
        }
        read_current(buf).map_err(|source| TrackingError::ReadCurrent { page, source })?;
        let snaps = self.snapshots.lock();
        let (snap, store) = readable(&snaps, cut)?;
        if !snap.in_scope(page) {
            return Err(TrackingError::NotInSnapshot { cut, page });
        }
        store.get(page, buf)?;
        Ok(())
    }

    /// Turns `buf`, the volume's current content at byte `offset` (read before this
    /// call), into the snapshot's content there: every page overwritten since the cut
    /// is replaced by its kept copy. The argument of [`SnapshotSet::read_page`] holds
    /// for each page of the range on its own, so the set's lock is taken for
    /// [`OVERLAY_BATCH`] pages at a time: a replication cycle overlays a MiB per chunk,
    /// and writers waiting to keep a page must not wait for all of it. Every page of the
    /// range must be in scope.
    pub(crate) fn overlay(
        &self,
        cut: CutId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TrackingError> {
        if buf.is_empty() {
            return Ok(());
        }
        let page_bytes = self.page_bytes as u64;
        let first = (offset / page_bytes) as PageIndex;
        let last = ((offset + buf.len() as u64 - 1) / page_bytes) as PageIndex;
        let mut batch_start = first;
        while batch_start <= last {
            let batch_end = last.min(batch_start.saturating_add(OVERLAY_BATCH - 1));
            let snaps = self.snapshots.lock();
            let (snap, store) = readable(&snaps, cut)?;
            for page in batch_start..=batch_end {
                if !snap.in_scope(page) {
                    return Err(TrackingError::NotInSnapshot { cut, page });
                }
                match store.page_in_memory(page) {
                    Some(kept) => lay(offset, buf, page, page_bytes, kept),
                    // Kept in the spill file.
                    None if store.contains(page) => {
                        let mut copy = vec![0; self.page_bytes];
                        store.get(page, &mut copy)?;
                        lay(offset, buf, page, page_bytes, &copy);
                    }
                    None => {}
                }
            }
            drop(snaps);
            batch_start = batch_end + 1;
        }
        Ok(())
    }

    /// Lets go of `pages` in snapshot `cut` (a replication sent them): they stop being
    /// readable and their kept copies are freed. `all_pages` is the volume's page count,
    /// to narrow a whole-volume snapshot.
    pub(crate) fn release(
        &self,
        cut: CutId,
        pages: &RoaringBitmap,
        all_pages: u32,
    ) -> Result<(), TrackingError> {
        let mut snaps = self.snapshots.lock();
        let snap = snaps
            .iter_mut()
            .find(|s| s.cut == cut)
            .ok_or(TrackingError::NoSuchSnapshot { cut })?;
        let scope = snap.scope.get_or_insert_with(|| {
            let mut all = RoaringBitmap::new();
            all.insert_range(0..all_pages);
            all
        });
        *scope -= pages;
        if let Some(store) = snap.store.as_mut() {
            for page in pages {
                store.remove(page);
            }
        }
        Ok(())
    }
}

impl SnapshotSet {
    /// Saves the dirty bitmap and every valid snapshot into `dir` (see
    /// [`super::persist`]). An invalidated snapshot is not saved.
    pub(crate) fn save(&self, dir: &Path, dirty: &RoaringBitmap) -> Result<(), TrackingError> {
        let mut snaps = self.snapshots.lock();
        let mut saved: Vec<persist::SavedSnapshot<'_>> = snaps
            .iter_mut()
            .filter_map(|s| {
                let (cut, taken_at, scope) = (s.cut, s.taken_at, s.scope.as_ref());
                s.store.as_mut().map(|store| persist::SavedSnapshot {
                    cut,
                    taken_at,
                    scope,
                    store,
                })
            })
            .collect();
        persist::save_state(dir, dirty, &mut saved, self.page_bytes)
    }

    /// Takes snapshots loaded from a saved state.
    pub(crate) fn restore(&self, loaded: Vec<persist::LoadedSnapshot>) {
        let mut snaps = self.snapshots.lock();
        for l in loaded {
            snaps.push(Snapshot {
                cut: l.cut,
                taken_at: l.taken_at,
                scope: l.scope.clone(),
                store: Some(l.into_store(self.cow.clone())),
            });
        }
        snaps.sort_by_key(|s| s.cut);
        self.live.store(snaps.len(), Ordering::Release);
    }
}

/// Snapshot `cut` and its store, or why it cannot be read (gone, or invalidated).
fn readable(snaps: &[Snapshot], cut: CutId) -> Result<(&Snapshot, &CowStore), TrackingError> {
    let snap = snaps
        .iter()
        .find(|s| s.cut == cut)
        .ok_or(TrackingError::NoSuchSnapshot { cut })?;
    let store = snap
        .store
        .as_ref()
        .ok_or(TrackingError::SnapshotInvalidated { cut })?;
    Ok((snap, store))
}

/// Copies the part of `kept` (the whole of `page`) that falls inside `buf`, the bytes
/// at `offset`, over `buf`.
fn lay(offset: u64, buf: &mut [u8], page: PageIndex, page_bytes: u64, kept: &[u8]) {
    let page_start = u64::from(page) * page_bytes;
    let from = offset.max(page_start);
    let to = (offset + buf.len() as u64).min(page_start + page_bytes);
    let (b0, b1) = ((from - offset) as usize, (to - offset) as usize);
    let (p0, p1) = ((from - page_start) as usize, (to - page_start) as usize);
    buf[b0..b1].copy_from_slice(&kept[p0..p1]);
}

/// A store that failed loses its snapshot: losing the snapshot beats failing the
/// initiator's write.
fn invalidate(volume: &str, snap: &mut Snapshot, error: &TrackingError) {
    tracing::error!(volume = %volume, cut = snap.cut.0, %error,
        "copy-on-write store failed; snapshot invalidated");
    snap.store = None;
}

fn info(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        cut: s.cut,
        taken_at: s.taken_at,
        stats: s.store.as_ref().map(CowStore::stats).unwrap_or_default(),
        scope_pages: s.scope.as_ref().map(RoaringBitmap::len),
        invalidated: s.store.is_none(),
    }
}

/// A volume name as a file name part: anything but `[A-Za-z0-9._-]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
