//! Write tracking: which pages of a volume changed since the last cut, consistent cuts
//! across a volume group, and snapshots that read as a volume at its cut.
//!
//! CONTRACT (the server and the replicator code against it):
//! - Per volume, one [`TrackedVolume`] (`Arc`-shared): its [`PageSize`] (4 KiB to 1 MiB,
//!   fixed at creation), [`DirtyMap`], [`WriteGate`] and snapshots.
//! - Write path, for every command that changes blocks (WRITE, WRITE SAME, UNMAP,
//!   COMPARE AND WRITE, ...): `let guard = vol.begin_write(offset, len, read_old).await?;`
//!   then write the data, then drop `guard`. `begin_write` waits while a cut holds the
//!   gate, preserves old page content for live snapshots (calling `read_old` only then)
//!   and marks the pages. No syscall and no allocation per write when no snapshot needs
//!   a copy.
//! - Cuts: [`CutCoordinator::cut_group`] closes the gates in name order, drains within
//!   the timeout (or reopens and fails: I/O never wedges), takes each dirty map into a
//!   [`Cut`] with a monotonic [`CutId`], optionally starts a snapshot per volume
//!   ([`SnapshotScope`]), reopens. [`PauseStats`] keeps the pauses (last, max). A failed
//!   transfer calls [`Cut::merge_back`].
//! - Snapshots: [`TrackedVolume::read_snapshot_page`] reads a page as at the cut;
//!   [`TrackedVolume::release_snapshot_pages`] lets go of pages already sent;
//!   [`TrackedVolume::delete_snapshot`] frees everything; [`TrackedVolume::snapshots`]
//!   reports. Copy-on-write stores share a [`MemoryBudget`] and spill to files in
//!   [`CowConfig::spill_dir`] ([`remove_stale_spill_files`] at startup).
//! - Clean restart: [`TrackedVolume::close_and_save`] at shutdown (the gate stays
//!   closed), [`TrackedVolume::load`] at startup. State saved before a crash is refused
//!   ([`TrackingError::UncleanState`]); [`persist::discard_state`] clears it.
//! - Crash safety: a volume opened with [`TrackedVolume::open`] keeps an
//!   [`activity::ActivityLog`]: the first write to a 4 MiB extent after a replication
//!   cut waits for a durable record (group-committed). After a crash, `open` counts the
//!   recorded extents as dirty. A replication calls [`Cut::committed`] once the peer
//!   committed the cut and the primary saved that, which deletes the records.

pub mod activity;
pub mod cow;
pub mod cut;
pub mod dirty;
pub mod gate;
pub mod page;
pub mod persist;
mod snapshot;
mod volume;

#[cfg(test)]
mod model_tests;

use std::io;
use std::path::PathBuf;

pub use cow::{remove_stale_spill_files, CowConfig, CowStats, MemoryBudget};
pub use cut::{
    Cut, CutCoordinator, CutError, CutId, CutOptions, FrozenVolume, PauseStats, SnapshotScope,
};
pub use dirty::DirtyMap;
pub use gate::{GateError, OwnedWriteGuard, Pause, WriteGate, WriteGuard};
pub use page::{PageIndex, PageSize};
pub use snapshot::SnapshotInfo;
pub use volume::TrackedVolume;

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("page size {bytes} is not a power of two from 4 KiB to 1 MiB")]
    InvalidPageSize { bytes: u32 },
    #[error("a volume of {size} bytes has too many pages of {page_size} bytes to track")]
    VolumeTooLarge { size: u64, page_size: u32 },
    #[error("range {offset}+{len} is beyond the volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("page {page} is beyond the volume's {pages} pages")]
    PageOutOfRange { page: PageIndex, pages: u32 },
    #[error("buffer of {got} bytes where a page of {want} bytes was expected")]
    PageLength { got: usize, want: usize },
    #[error("saved dirty bitmap names pages beyond the volume's {pages} pages")]
    SavedBitmapTooLarge { pages: u32 },
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the old content of page {page} for a snapshot")]
    ReadOld {
        page: PageIndex,
        #[source]
        source: io::Error,
    },
    #[error("reading the current content of page {page}")]
    ReadCurrent {
        page: PageIndex,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid saved tracking file", path.display())]
    CorruptState { path: PathBuf },
    #[error("{} was saved with pages of {saved} bytes", path.display())]
    SavedPageSize { path: PathBuf, saved: u32 },
    /// Saved state without the clean-shutdown marker: it may miss writes made before a
    /// crash, so it is not used. The caller falls back to a full resynchronization.
    #[error("tracking state in {} is not from a clean shutdown", dir.display())]
    UncleanState { dir: PathBuf },
    #[error("write gate")]
    Gate(#[source] GateError),
    #[error("page {page} is outside the snapshot at cut {}", cut.0)]
    NotInSnapshot { cut: CutId, page: PageIndex },
    #[error("no snapshot at cut {}", cut.0)]
    NoSuchSnapshot { cut: CutId },
    #[error("a snapshot at cut {} already exists", cut.0)]
    SnapshotExists { cut: CutId },
    #[error("the snapshot at cut {} was invalidated by a copy-on-write store failure", cut.0)]
    SnapshotInvalidated { cut: CutId },
}
