//! Consistent cuts of a volume group (DESIGN.md, "Consistent cuts"): close every gate in
//! a fixed order, drain, freeze each dirty map (and start snapshots when asked), reopen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use roaring::RoaringBitmap;

use super::gate::{GateError, WriteGate};
use super::volume::TrackedVolume;
use super::TrackingError;

/// Identifies a cut; monotonic per coordinator (per replication set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CutId(pub u64);

#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("a cut needs at least one volume")]
    EmptyGroup,
    #[error("volume {volume} appears twice in the group")]
    DuplicateVolume { volume: Arc<str> },
    /// The gate was busy or did not drain in time; every gate was reopened.
    #[error("write gate of volume {volume}")]
    Gate {
        volume: Arc<str>,
        #[source]
        source: GateError,
    },
    /// Starting a snapshot failed; every gate was reopened and the dirty maps restored.
    #[error("snapshot of volume {volume}")]
    Snapshot {
        volume: Arc<str>,
        #[source]
        source: TrackingError,
    },
}

/// Which pages the snapshot a cut starts keeps readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotScope {
    /// No snapshot.
    None,
    /// The whole volume as at the cut.
    Volume,
    /// Only the pages the cut froze (what a replication ships): writes to other pages
    /// copy nothing. Pages sent can be let go with [`TrackedVolume::release_snapshot_pages`].
    Frozen,
}

#[derive(Clone, Copy, Debug)]
pub struct CutOptions {
    /// Longest the gates may stay closed waiting for writes in flight.
    pub timeout: Duration,
    /// Also start a snapshot (id = the cut id) of every volume at the cut.
    pub snapshot: SnapshotScope,
    /// Take each volume's dirty map into the cut (a replication cycle). An admin
    /// snapshot leaves the maps alone: the pages stay dirty for the next replication.
    pub freeze_dirty: bool,
}

/// The pages of one volume written between the previous cut and this one.
#[derive(Debug)]
pub struct FrozenVolume {
    pub volume: Arc<str>,
    pub dirty: RoaringBitmap,
    /// The activity-log epoch this cut ended (a cut that took the dirty map, of a
    /// volume with a log): its records cover `dirty` until the cut is committed.
    pub epoch: Option<u64>,
}

/// One consistent instant across a group.
#[derive(Debug)]
pub struct Cut {
    pub id: CutId,
    pub at: SystemTime,
    /// How long writers were held off.
    pub pause: Duration,
    /// In gate order (by volume name).
    pub volumes: Vec<FrozenVolume>,
}

impl Cut {
    /// Puts the frozen bits back into the volumes' active maps (the transfer failed).
    /// `volumes` may be in any order; volumes not in the cut are ignored.
    pub fn merge_back(&self, volumes: &[&TrackedVolume]) {
        self.each_volume(volumes, |v, frozen| v.dirty().merge_back(&frozen.dirty));
    }

    /// Calls `f` for each volume of the cut found in `volumes` (any order).
    fn each_volume(
        &self,
        volumes: &[&TrackedVolume],
        mut f: impl FnMut(&TrackedVolume, &FrozenVolume),
    ) {
        for frozen in &self.volumes {
            if let Some(v) = volumes.iter().find(|v| *v.name() == frozen.volume) {
                f(v, frozen);
            }
        }
    }

    /// The peer committed this cut and the caller recorded that durably: the activity
    /// records that covered its frozen pages are no longer needed. `volumes` may be in
    /// any order. Failing to delete only leaves more to resend after a crash.
    pub fn committed(&self, volumes: &[&TrackedVolume]) {
        self.each_volume(volumes, |v, frozen| {
            let Some(epoch) = frozen.epoch else { return };
            if let Err(e) = v.forget_activity_through(epoch) {
                tracing::warn!(volume = %frozen.volume, error = %crate::chain::ErrorChain(&e), "cannot delete old activity records");
            }
        });
    }
}

/// Pauses imposed by cuts, successful or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauseStats {
    pub last: Option<Duration>,
    pub max: Duration,
    pub cuts: u64,
    pub failures: u64,
}

/// Takes the cuts of one replication set.
#[derive(Debug)]
pub struct CutCoordinator {
    /// Held for a whole cut, so ids are handed out in order without gaps.
    serial: tokio::sync::Mutex<()>,
    next: AtomicU64,
    stats: Mutex<PauseStats>,
    /// Every cut's pause, for the metrics endpoint (none in unit tests).
    pauses: Option<Arc<crate::metrics::Histogram>>,
}

/// Reopens gates on every way out, including the cut's future being dropped mid-drain.
struct Reopen<'a>(Vec<&'a WriteGate>);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        for gate in &self.0 {
            gate.open();
        }
    }
}

impl CutCoordinator {
    /// A coordinator whose first cut is `first` (one past the last cut a restart saved).
    pub fn new(first: CutId) -> Self {
        CutCoordinator {
            serial: tokio::sync::Mutex::new(()),
            next: AtomicU64::new(first.0),
            stats: Mutex::new(PauseStats::default()),
            pauses: None,
        }
    }

    /// Also records every cut's pause (successful or not: writers waited either way)
    /// in `pauses`.
    pub fn with_pause_histogram(mut self, pauses: Arc<crate::metrics::Histogram>) -> Self {
        self.pauses = Some(pauses);
        self
    }

    pub fn stats(&self) -> PauseStats {
        *self.stats.lock()
    }

    /// Makes the next cut's id at least one past `taken` (ids found after a restart).
    pub fn advance_past(&self, taken: CutId) {
        self.next
            .fetch_max(taken.0.saturating_add(1), Ordering::AcqRel);
    }

    /// The id the next successful cut gets.
    pub fn next_id(&self) -> CutId {
        CutId(self.next.load(Ordering::Acquire))
    }

    /// Takes a cut of `volumes`. On error every gate is open again, no dirty bit is
    /// lost, no snapshot was created and no cut id was used.
    pub async fn cut_group(
        &self,
        volumes: &[&TrackedVolume],
        options: CutOptions,
    ) -> Result<Cut, CutError> {
        let mut ordered: Vec<&TrackedVolume> = volumes.to_vec();
        ordered.sort_by(|a, b| a.name().cmp(b.name()));
        if ordered.is_empty() {
            return Err(CutError::EmptyGroup);
        }
        if let Some(w) = ordered.windows(2).find(|w| w[0].name() == w[1].name()) {
            return Err(CutError::DuplicateVolume {
                volume: w[0].name().clone(),
            });
        }

        let _serial = self.serial.lock().await;
        let started = Instant::now();
        let result = self.cut_closed(&ordered, options, started).await;
        let pause = started.elapsed();
        if let Some(h) = &self.pauses {
            h.observe(pause);
        }
        let mut stats = self.stats.lock();
        stats.last = Some(pause);
        stats.max = stats.max.max(pause);
        match result {
            Ok(mut cut) => {
                stats.cuts += 1;
                cut.pause = pause;
                tracing::debug!(
                    cut = cut.id.0,
                    volumes = cut.volumes.len(),
                    pause_us = pause.as_micros() as u64,
                    "cut taken"
                );
                Ok(cut)
            }
            Err(e) => {
                stats.failures += 1;
                tracing::warn!(error = %crate::chain::ErrorChain(&e), pause_us = pause.as_micros() as u64, "cut failed; gates reopened");
                Err(e)
            }
        }
    }

    async fn cut_closed(
        &self,
        ordered: &[&TrackedVolume],
        options: CutOptions,
        started: Instant,
    ) -> Result<Cut, CutError> {
        let deadline = started + options.timeout;
        let mut reopen = Reopen(Vec::with_capacity(ordered.len()));
        let gate_error = |v: &TrackedVolume, source| CutError::Gate {
            volume: v.name().clone(),
            source,
        };
        for v in ordered {
            v.gate().close().map_err(|e| gate_error(v, e))?;
            reopen.0.push(v.gate());
        }
        for v in ordered {
            v.gate()
                .drain(deadline)
                .await
                .map_err(|e| gate_error(v, e))?;
        }

        // Every gate is closed and drained: this is the instant.
        let id = CutId(self.next.load(Ordering::Acquire));
        let at = SystemTime::now();
        let volumes: Vec<FrozenVolume> = ordered
            .iter()
            .map(|v| {
                let (dirty, epoch) = if options.freeze_dirty {
                    (v.dirty().take(), v.rotate_activity())
                } else {
                    (RoaringBitmap::new(), None)
                };
                FrozenVolume {
                    volume: v.name().clone(),
                    dirty,
                    epoch,
                }
            })
            .collect();
        if options.snapshot != SnapshotScope::None {
            for (i, (v, frozen)) in ordered.iter().zip(&volumes).enumerate() {
                let scope = match options.snapshot {
                    SnapshotScope::Frozen => Some(frozen.dirty.clone()),
                    _ => None,
                };
                if let Err(source) = v.create_snapshot(id, at, scope) {
                    // Undo under the same closed gates: the active maps are empty.
                    for earlier in &ordered[..i] {
                        let _ = earlier.delete_snapshot(id);
                    }
                    for (v, frozen) in ordered.iter().zip(&volumes) {
                        v.dirty().merge_back(&frozen.dirty);
                    }
                    return Err(CutError::Snapshot {
                        volume: v.name().clone(),
                        source,
                    });
                }
            }
        }
        self.next.fetch_add(1, Ordering::AcqRel);
        drop(reopen);
        Ok(Cut {
            id,
            at,
            pause: Duration::ZERO,
            volumes,
        })
    }
}
