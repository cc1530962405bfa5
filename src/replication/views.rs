//! Recovery points read in place, for DR drill LUNs (`lun map IQN LUN VOLUME@rp:ID`).
//!
//! A secondary volume's point ID reads as the volume's current content with the undo
//! logs of ID and of every newer point laid over it, newest first: each byte ends with
//! its value at ID, the overlay a roll back writes, done at read time. Nothing is copied,
//! and the set goes on receiving.
//!
//! A mapped point is pinned. While any point of a set is pinned, its store writes an
//! undo log for every cut it applies (even with `keep 1`) and prunes no point at or after
//! the oldest pin. The store hands each undo log to the views before it writes the cut's
//! data into the volumes, so a read that saw new data in the volume finds the old in a
//! log: read the volume first, then lay the logs over it (as snapshots do).
//!
//! A point goes only when the set's history is rewritten under it (a roll back past it,
//! a reset for a new generation, the set retired or deleted): its views then answer every
//! read with an error. Promote and delete refuse while a point is pinned.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use super::recovery::{undo_extents, RecoveryError, RecoveryPoint, UndoExtent};

/// One undo log's extents for each volume, by start offset: the old content of what the
/// cut after its point wrote.
#[derive(Debug)]
pub struct LogIndex {
    cut: u64,
    file: File,
    path: PathBuf,
    /// Per volume: offset → (length, where the bytes are in the log; `None` for zeros).
    volumes: Vec<BTreeMap<u64, (u64, Option<u64>)>>,
    /// The longest extent: a lookup starts this far before the range it covers.
    longest: u64,
}

impl LogIndex {
    fn open(cut: u64, path: &Path, sizes: &[u64]) -> Result<LogIndex, RecoveryError> {
        let file = File::open(path).map_err(|source| RecoveryError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut volumes = vec![BTreeMap::new(); sizes.len()];
        let mut longest = 0;
        for e in undo_extents(&file, path, cut, sizes)? {
            let UndoExtent {
                volume,
                offset,
                len,
                data_at,
            } = e;
            if let Some(v) = volumes.get_mut(volume as usize) {
                v.insert(offset, (len, data_at));
                longest = longest.max(len);
            }
        }
        Ok(LogIndex {
            cut,
            file,
            path: path.to_owned(),
            volumes,
            longest,
        })
    }

    /// Lays this log's bytes for `volume` over `buf`, which holds `buf.len()` bytes at
    /// `offset`.
    fn overlay(&self, volume: u32, offset: u64, buf: &mut [u8]) -> Result<(), RecoveryError> {
        let Some(map) = self.volumes.get(volume as usize) else {
            return Ok(());
        };
        let end = offset + buf.len() as u64;
        let from = offset.saturating_sub(self.longest.saturating_sub(1));
        for (&at, &(len, data_at)) in map.range(from..end) {
            let (lo, hi) = (at.max(offset), (at + len).min(end));
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match data_at {
                None => dst.fill(0),
                Some(pos) => self
                    .file
                    .read_exact_at(dst, pos + (lo - at))
                    .map_err(|source| RecoveryError::Io {
                        path: self.path.clone(),
                        source,
                    })?,
            }
        }
        Ok(())
    }
}

/// Why a view no longer reads its point.
#[derive(Debug, Clone, thiserror::Error)]
#[error("recovery point {cut} is gone: {why}")]
pub struct PointGone {
    pub cut: u64,
    pub why: &'static str,
}

#[derive(Debug)]
struct ViewLogs {
    /// Every indexed log at or after the view's point, oldest first.
    logs: Vec<Arc<LogIndex>>,
    gone: Option<&'static str>,
}

/// One volume's recovery point, as a drill LUN reads it.
#[derive(Debug)]
pub struct PointView {
    cut: u64,
    volume: u32,
    logs: Mutex<ViewLogs>,
}

impl PointView {
    /// `buf` holds the volume's current bytes at `offset`, read just now: lays over
    /// them every log of the point, so they read as at the point.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) -> Result<(), PointGone> {
        let logs = {
            let l = self.logs.lock();
            if let Some(why) = l.gone {
                return Err(PointGone { cut: self.cut, why });
            }
            l.logs.clone()
        };
        // Newest first, so the oldest log holding a byte has the last word.
        for log in logs.iter().rev() {
            if let Err(e) = log.overlay(self.volume, offset, buf) {
                tracing::warn!(cut = self.cut, error = %crate::chain::ErrorChain(&e), "cannot read an undo log for a recovery point");
                return Err(PointGone {
                    cut: self.cut,
                    why: "its undo log cannot be read",
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Pinned points and how many mappings pin each.
    pins: BTreeMap<u64, usize>,
    /// What can be pinned: the store's current cut and its older points.
    current: Option<u64>,
    points: BTreeSet<u64>,
    /// A cut is being applied: pins wait (what it keeps and prunes is being decided).
    applying: bool,
    /// Undo logs indexed so far, by point.
    logs: BTreeMap<u64, Arc<LogIndex>>,
    views: Vec<Weak<PointView>>,
}

/// The pins and views of one secondary set; shared by its store and the drill LUNs.
#[derive(Debug)]
pub struct PointViews {
    dir: PathBuf,
    sizes: Vec<u64>,
    inner: Mutex<Inner>,
    applied: Condvar,
}

impl PointViews {
    /// The registry of the set whose store lives in `dir`, its volumes of `sizes`,
    /// with the points its mappings pin (`pins`, cuts, repeated per mapping).
    pub fn new(dir: &Path, sizes: Vec<u64>, pins: impl IntoIterator<Item = u64>) -> Self {
        let mut inner = Inner::default();
        for cut in pins {
            *inner.pins.entry(cut).or_default() += 1;
        }
        PointViews {
            dir: dir.to_owned(),
            sizes,
            inner: Mutex::new(inner),
            applied: Condvar::new(),
        }
    }

    /// Pins point `cut` for one more mapping; refused when the set has no such point.
    /// Waits for a cut being applied.
    pub fn pin(&self, cut: u64) -> Result<(), RecoveryError> {
        let mut inner = self.inner.lock();
        while inner.applying {
            self.applied.wait(&mut inner);
        }
        if inner.current != Some(cut) && !inner.points.contains(&cut) {
            return Err(RecoveryError::UnknownPoint { cut });
        }
        *inner.pins.entry(cut).or_default() += 1;
        Ok(())
    }

    /// One mapping of `cut` went.
    pub fn unpin(&self, cut: u64) {
        let mut inner = self.inner.lock();
        if let Some(n) = inner.pins.get_mut(&cut) {
            *n -= 1;
            if *n == 0 {
                inner.pins.remove(&cut);
            }
        }
        let oldest = inner.pins.keys().next().copied();
        inner.logs.retain(|&c, _| oldest.is_some_and(|o| c >= o));
    }

    /// The pinned points, oldest first.
    pub fn pinned(&self) -> Vec<u64> {
        self.inner.lock().pins.keys().copied().collect()
    }

    /// A view of `volume` (its index in the store) at point `cut`, which must be pinned.
    pub fn view(&self, volume: u32, cut: u64) -> Result<Arc<PointView>, RecoveryError> {
        let mut inner = self.inner.lock();
        let known = inner.current == Some(cut) || inner.points.contains(&cut);
        if !known || !inner.pins.contains_key(&cut) {
            return Err(RecoveryError::UnknownPoint { cut });
        }
        let wanted: Vec<u64> = inner.points.range(cut..).copied().collect();
        let mut logs = Vec::with_capacity(wanted.len());
        for c in wanted {
            let log = match inner.logs.get(&c) {
                Some(l) => l.clone(),
                None => {
                    let path = self.dir.join(super::recovery::undo_name(c));
                    let l = Arc::new(LogIndex::open(c, &path, &self.sizes)?);
                    inner.logs.insert(c, l.clone());
                    l
                }
            };
            logs.push(log);
        }
        let view = Arc::new(PointView {
            cut,
            volume,
            logs: Mutex::new(ViewLogs { logs, gone: None }),
        });
        inner.views.retain(|w| w.strong_count() > 0);
        inner.views.push(Arc::downgrade(&view));
        Ok(view)
    }

    // ---- the store's side ------------------------------------------------------------

    /// A cut's apply starts: whether any point is pinned (then it writes an undo log
    /// whatever `keep` says). Pins wait until [`PointViews::end_apply`].
    pub(super) fn begin_apply(&self) -> bool {
        let mut inner = self.inner.lock();
        inner.applying = true;
        !inner.pins.is_empty()
    }

    /// The apply is over (done or failed).
    pub(super) fn end_apply(&self) {
        self.inner.lock().applying = false;
        self.applied.notify_all();
    }

    /// Of `points` (newest first, the point just made first), those to keep: the newest
    /// `keep - 1`, and every one at or after the oldest pin.
    pub(super) fn keep(&self, mut points: Vec<RecoveryPoint>, keep: u32) -> Vec<RecoveryPoint> {
        let inner = self.inner.lock();
        let oldest = inner.pins.keys().next().copied();
        let mut i = 0;
        points.retain(|p| {
            i += 1;
            i < keep as usize || oldest.is_some_and(|o| p.cut >= o)
        });
        points
    }

    /// The undo log of point `cut` is whole in the store's directory and the cut after
    /// it is about to be written into the volumes: every view gets it first.
    pub(super) fn add_log(&self, cut: u64) -> Result<(), RecoveryError> {
        let mut inner = self.inner.lock();
        if inner.pins.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(super::recovery::undo_name(cut));
        let log = Arc::new(LogIndex::open(cut, &path, &self.sizes)?);
        inner.logs.insert(cut, log.clone());
        inner.views.retain(|w| w.strong_count() > 0);
        for view in inner.views.iter().filter_map(Weak::upgrade) {
            let mut l = view.logs.lock();
            if view.cut <= cut && !l.logs.iter().any(|x| x.cut == cut) {
                l.logs.push(log.clone());
                l.logs.sort_by_key(|x| x.cut);
            }
        }
        Ok(())
    }

    /// The store's committed state changed: `current` and the points it keeps. Logs of
    /// points gone are dropped from every view; a view whose point is gone reads no
    /// more.
    pub(super) fn set_points(
        &self,
        current: Option<u64>,
        points: &[RecoveryPoint],
        why: &'static str,
    ) {
        let mut inner = self.inner.lock();
        inner.current = current;
        inner.points = points.iter().map(|p| p.cut).collect();
        let keep: BTreeSet<u64> = inner.points.clone();
        inner.logs.retain(|c, _| keep.contains(c));
        inner.views.retain(|w| w.strong_count() > 0);
        for view in inner.views.iter().filter_map(Weak::upgrade) {
            let mut l = view.logs.lock();
            l.logs.retain(|x| keep.contains(&x.cut));
            let alive = current == Some(view.cut) || keep.contains(&view.cut);
            if !alive && l.gone.is_none() {
                tracing::warn!(
                    cut = view.cut,
                    reason = why,
                    "a mapped recovery point is gone; its drill LUN fails every read"
                );
                l.gone = Some(why);
            }
        }
    }
}
