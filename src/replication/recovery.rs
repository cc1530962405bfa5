//! The receiver's storage for one replication set on the secondary: the staging log of
//! the cut being received, the commit and apply of a whole cut, and the recovery points
//! (undo logs) kept behind it. No networking: the receiver feeds it extents.
//!
//! # The promise (DESIGN.md, "Replication")
//!
//! Extents of cut N are appended to a staging log. The cut's end record fsyncs the log
//! and commits it (an end record appended and fsynced). Applying a committed cut first
//! saves the old content of every byte range it writes (an undo log, fsynced and renamed
//! into place), then writes the new data and fsyncs the volumes, then records the new
//! state atomically. The undo log is the recovery point of cut N-1. After a crash the
//! volumes are at the last committed cut or roll forward to it, never in between:
//! applying a committed staging log is idempotent, and the undo log is rewritten only
//! when it was not complete, which means no volume write had started.
//!
//! The first cut of a generation has no previous cut: its undo log would restore
//! "before the first cut", which is no consistent image, so none is written and no
//! recovery point is kept for it. The same holds with `keep == 1`.
//!
//! # The first cut goes in place
//!
//! While the set has no current cut and no recovery point (a new set, or after a
//! reset), the volumes hold nothing a failover could use, so there is nothing for a
//! staging log to protect. The cut that begins then is written straight into the
//! volumes, and its staging log (flagged "in place" in its header) holds only a
//! `placed` record per extent, no data: the records say which extents are durable in
//! the volumes, for resuming the cut. Every [`StoreConfig::checkpoint_bytes`] of data (and before
//! the commit, and before a resume reports its count) the volumes are fsynced first,
//! then the records of the extents written since are appended and the log fsynced, so
//! a record is never durable before the data it stands for. The end record follows
//! the last records; the state saying the cut is current follows the end record.
//! After a crash before the end record is durable the store has no current cut and
//! no recovery point, as before the cut began; what the volumes hold past the last
//! durable record is no cut and claimed as none. Resuming rewrites every extent after
//! the durable ones, and a different cut replaces the log and rewrites the volumes
//! whole (a cut over an empty set is a full one: every page, holes as zero records),
//! so either way the volumes end at exactly the cut that commits.
//!
//! Its data extents aligned to 4 KiB and of at least [`durable::DIRECT_MIN`] go past
//! the page cache (`O_DIRECT`, from one aligned buffer), as do a committed cut's data
//! when it is applied and an undo log's in a roll back: written once and not read
//! back soon, they would only push the secondary's cache out and pay a copy into it,
//! the larger part of its CPU for a first cut (and far more on a VM whose free memory
//! the host reclaims). Smaller extents go through the cache: one synchronous request
//! each would cost more than the copy. The fsyncs are the same either way.
//!
//! The logs go past the page cache too, for the same reason: the staging log and the
//! undo logs are written through a [`durable::Appender`] (whole blocks from an aligned
//! buffer; at a flush, the partial last block padded and the file cut back to its
//! length) and read through a [`durable::BlockReader`], and the old content an undo
//! log saves is read from the volumes past the cache for the same extents. Of an
//! incremental cut's 1 GiB this took the secondary from 5–12 CPU seconds (most of it
//! first touches of new cache pages) to about 2. The format is the same. A staging
//! log holds what was put up to the last flush (a resume, a commit, or the store
//! closing); what a kill loses past it is staged again, as a torn tail would be.
//!
//! # Files in the set's directory
//!
//! The directory belongs to the store: at open it removes `*.tmp` files and undo logs
//! of no recovery point. If a damaged file makes `open` fail,
//! [`ReceiverStore::open_reset`] starts the set over (as a restart would).
//!
//! - `state.json`, replaced atomically (temp, fsync, rename, fsync dir): the volumes
//!   (names and sizes), the generation, the current cut, the recovery points (newest
//!   first), a roll back in progress, and whether the next cut must start a new
//!   generation (after a roll back the volumes no longer hold the cut deltas build on).
//! - `staging.log`: the cut being received. A 48-byte header, then records.
//! - `undo-<cut>.log`: the recovery point of `<cut>`: the content that cut had in the
//!   ranges the next cut wrote. Written as `undo-<cut>.log.tmp` and renamed when whole.
//!
//! Both logs share one format (little-endian):
//! - header: magic (`TWLNSTAG` or `TWLNUNDO`), version u32, volume count u32,
//!   generation u64, cut u64, taken_unix u64, flags u32 (bit 0: an in-place staging
//!   log; no other bit is set), crc32c of the 44 bytes before;
//! - record header, 32 bytes: tag u8 (1 data, 2 zero, 3 end, 4 placed), 3 zero bytes, then `a` u32,
//!   `b` u64, `c` u64, `d` u32, and a crc32c of the 28 bytes before, seeded with the log
//!   header's crc (so a record from another log never validates). For data and zero
//!   records `a` is the volume index, `b` the byte offset, `c` the length and `d` the
//!   crc32c of the data (0 for zero records); a data record is followed by its `c` bytes.
//!   A placed record (in-place logs only, which hold no data or zero records) has the
//!   same fields as a data or zero record (`d` is 0 for zeros) and no bytes after it:
//!   the extent is in the volume already.
//!   The end record has `a` = the `keep` count of the commit (staging log; 0 for undo),
//!   `b` = the number of records before it, `c` = the bytes they cover, `d` = 0.
//!
//! A torn tail (a record whose header crc or data crc fails, or that is cut short) ends
//! the log: in a staging log without an end record the extents before it stay staged and
//! the rest is truncated, so the same cut resumes from there.
//!
//! # Recovery points
//!
//! [`ReceiverStore::recovery_points`] lists the current cut first (`undo_bytes == 0`: the
//! volumes hold it) and then the older points that have an undo log. `keep` counts them
//! all, so `keep == 3` keeps the current cut and two undo logs; `keep == 0` acts as 1.
//!
//! Memory is bounded: extents are streamed to and from the logs in chunks of at most
//! [`CHUNK`] bytes, never a whole cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::views::PointViews;
use crate::durable::{self, Appender, BlockReader, Disk};

/// Largest piece copied at once between a log and a volume.
pub const CHUNK: usize = 1 << 20;

/// How a [`ReceiverStore`] paces its durable steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Data written in place between two checkpoints of a first cut (volumes fsynced,
    /// then the records of what they hold appended to the log and fsynced). Tests pass
    /// a small value, so their crashes cross checkpoints.
    pub checkpoint_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            checkpoint_bytes: 256 << 20,
        }
    }
}

const STATE_FILE: &str = "state.json";
const STAGING_FILE: &str = "staging.log";
const STAGING_MAGIC: [u8; 8] = *b"TWLNSTAG";
const UNDO_MAGIC: [u8; 8] = *b"TWLNUNDO";
const LOG_VERSION: u32 = 1;
const STATE_VERSION: u32 = 1;
const LOG_HEADER: usize = 48;
const RECORD_HEADER: usize = 32;
const TAG_DATA: u8 = 1;
const TAG_ZERO: u8 = 2;
const TAG_END: u8 = 3;
const TAG_PLACED: u8 = 4;
/// Header flag of a staging log whose extents went straight into the volumes.
const FLAG_IN_PLACE: u32 = 1;

/// One volume of the set on this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeTarget {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The content of one extent.
#[derive(Debug, Clone, Copy)]
pub enum ExtentData<'a> {
    Data(&'a [u8]),
    /// Zeros (an unmapped or all-zero range) of `len` bytes.
    Zero {
        len: u64,
    },
}

impl ExtentData<'_> {
    fn len(&self) -> u64 {
        match self {
            ExtentData::Data(d) => d.len() as u64,
            ExtentData::Zero { len } => *len,
        }
    }
}

/// Which cut: the generation (bumped by a restart) and the cut id within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutMeta {
    pub generation: u64,
    pub cut: u64,
    pub taken_unix: u64,
}

/// A cut the volumes can be rolled back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    pub cut: u64,
    pub taken_unix: u64,
    /// Size of its undo log; 0 for the current cut, which the volumes hold.
    pub undo_bytes: u64,
}

/// What is staged of a cut that is not committed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedProgress {
    pub meta: CutMeta,
    /// Extents staged, in the order they were put.
    pub extents: u64,
    /// Bytes they cover (data and zero ranges).
    pub bytes: u64,
    /// Volume index and end offset of the last extent staged.
    pub last_end: Option<(u32, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid replication state file", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is damaged: {what}", path.display())]
    Corrupt { path: PathBuf, what: &'static str },
    #[error("the volumes of the set in {} differ from those its recovery points were taken of", dir.display())]
    VolumesChanged { dir: PathBuf },
    #[error("no volume {volume} in a set of {count}")]
    NoSuchVolume { volume: u32, count: usize },
    #[error("extent {offset}+{len} is beyond the size {size} of volume {volume}")]
    OutOfRange {
        volume: u32,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("empty extent at {offset} of volume {volume}")]
    EmptyExtent { volume: u32, offset: u64 },
    #[error("extent {offset}+{len} of volume {volume}: crc32c {actual:#010x}, expected {expected:#010x}")]
    CrcMismatch {
        volume: u32,
        offset: u64,
        len: u64,
        expected: u32,
        actual: u32,
    },
    #[error("generation {generation} is older than the set's generation {current}")]
    StaleGeneration { generation: u64, current: u64 },
    #[error("cut {cut} is not newer than the applied cut {current}")]
    StaleCut { cut: u64, current: u64 },
    #[error("the volumes were rolled back: the next cut must start a generation newer than {generation}")]
    NeedsNewGeneration { generation: u64 },
    #[error("no cut is being staged")]
    NotStaging,
    #[error("no recovery point for cut {cut}")]
    UnknownPoint { cut: u64 },
    /// A promote took the set's volumes over: nothing more is received or applied.
    #[error("the set is being promoted here: it takes no more cuts")]
    Retired,
    /// A test's simulated crash: the store must be dropped and reopened.
    #[cfg(test)]
    #[error("injected crash")]
    InjectedCrash,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| {
        #[cfg(test)]
        if durable::fault::is_crash(&source) {
            return RecoveryError::InjectedCrash;
        }
        RecoveryError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VolumeState {
    name: String,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    version: u32,
    generation: u64,
    volumes: Vec<VolumeState>,
    current: Option<CutMeta>,
    /// Older than `current`, newest first; each has `undo-<cut>.log`.
    points: Vec<RecoveryPoint>,
    /// A roll back to this cut is under way: finish it before anything else.
    rolling_back_to: Option<u64>,
    /// The volumes were rolled back: the next cut must be of a newer generation.
    needs_new_generation: bool,
    /// The roll back under way is to the cut the primary computes from (it never
    /// recorded the newer one): the generation goes on.
    #[serde(default)]
    rollback_for_base: bool,
}

impl State {
    fn fresh(volumes: &[Volume]) -> Self {
        State {
            version: STATE_VERSION,
            generation: 0,
            volumes: volume_states(volumes),
            current: None,
            points: Vec::new(),
            rolling_back_to: None,
            needs_new_generation: false,
            rollback_for_base: false,
        }
    }
}

fn volume_states(volumes: &[Volume]) -> Vec<VolumeState> {
    volumes
        .iter()
        .map(|v| VolumeState {
            name: v.target.name.clone(),
            size: v.target.size,
        })
        .collect()
}

/// Every write, fsync, rename and removal the store makes goes through its
/// [`durable::Disk`], so a test can stop the store after its k-th step as a crash or
/// a power cut would (`durable::fault`). This adapter names the file in each error.
/// In test builds the disk is a [`durable::fault::FaultDisk`], disarmed until a test
/// arms it.
#[derive(Debug, Clone)]
struct StoreDisk(Arc<dyn Disk>, #[cfg(test)] Arc<durable::fault::FaultDisk>);

impl Default for StoreDisk {
    #[cfg(not(test))]
    fn default() -> Self {
        StoreDisk(Arc::new(durable::OsDisk))
    }

    #[cfg(test)]
    fn default() -> Self {
        let fault = Arc::new(durable::fault::FaultDisk::default());
        StoreDisk(fault.clone(), fault)
    }
}

/// What a test's crash loses: with `power_loss`, every write and rename not yet
/// made durable.
#[cfg(test)]
fn power_cut(power_loss: bool) -> durable::fault::PowerCut {
    if power_loss {
        durable::fault::PowerCut::ALL
    } else {
        durable::fault::PowerCut::default()
    }
}

impl StoreDisk {
    fn write_at(&self, file: &File, path: &Path, buf: &[u8], at: u64) -> Result<(), RecoveryError> {
        self.0.write_at(file, path, buf, at).map_err(io_err(path))
    }

    fn write_direct(
        &self,
        direct: &File,
        file: &File,
        path: &Path,
        buf: &[u8],
        at: u64,
    ) -> Result<(), RecoveryError> {
        self.0
            .write_direct(direct, file, path, buf, at)
            .map_err(io_err(path))
    }

    fn sync(&self, file: &File, path: &Path) -> Result<(), RecoveryError> {
        self.0.sync(file, path).map_err(io_err(path))
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> Result<(), RecoveryError> {
        self.0.set_len(file, path, len).map_err(io_err(path))
    }

    fn create(&self, path: &Path) -> Result<File, RecoveryError> {
        self.0.create(path).map_err(io_err(path))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), RecoveryError> {
        self.0.sync_dir(dir).map_err(io_err(dir))
    }

    /// Removes `path`; one that is not there is fine.
    fn remove(&self, path: &Path) -> Result<(), RecoveryError> {
        self.0.remove(path).map_err(io_err(path))
    }

    /// Makes `len` bytes at `at` read as zeros: a punched hole, or written zeros where
    /// the file system cannot punch.
    fn zero(&self, file: &File, path: &Path, at: u64, len: u64) -> Result<(), RecoveryError> {
        if !self.0.punch(file, path, at, len).map_err(io_err(path))? {
            let zeros = vec![0u8; CHUNK.min(len as usize)];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                self.write_at(file, path, &zeros[..n], at + done)?;
                done += n as u64;
            }
        }
        Ok(())
    }
}

// ---- log format -------------------------------------------------------------------

fn encode_log_header(
    magic: [u8; 8],
    meta: &CutMeta,
    volume_count: u32,
    flags: u32,
) -> ([u8; LOG_HEADER], u32) {
    let mut h = [0u8; LOG_HEADER];
    h[..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&volume_count.to_le_bytes());
    h[16..24].copy_from_slice(&meta.generation.to_le_bytes());
    h[24..32].copy_from_slice(&meta.cut.to_le_bytes());
    h[32..40].copy_from_slice(&meta.taken_unix.to_le_bytes());
    h[40..44].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32c::crc32c(&h[..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    (h, crc)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads the header of a log: the cut, the volume count, the header's crc and whether
/// the log is in place; `None` when it is missing, torn or of another kind.
fn read_log_header(file: &File, magic: [u8; 8]) -> io::Result<Option<(CutMeta, u32, u32, bool)>> {
    let mut h = [0u8; LOG_HEADER];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let crc = crc32c::crc32c(&h[..44]);
    let flags = le_u32(&h, 40);
    if h[..8] != magic || le_u32(&h, 8) != LOG_VERSION || le_u32(&h, 44) != crc {
        return Ok(None);
    }
    // Only a staging log can be in place; unknown flags are another format.
    let in_place = match flags {
        0 => false,
        FLAG_IN_PLACE if magic == STAGING_MAGIC => true,
        _ => return Ok(None),
    };
    let meta = CutMeta {
        generation: le_u64(&h, 16),
        cut: le_u64(&h, 24),
        taken_unix: le_u64(&h, 32),
    };
    Ok(Some((meta, le_u32(&h, 12), crc, in_place)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// `len` bytes at `data_at` in the log go to `offset` of `volume`.
    Data {
        volume: u32,
        offset: u64,
        len: u64,
        data_at: u64,
    },
    Zero {
        volume: u32,
        offset: u64,
        len: u64,
    },
    /// In an in-place log: `len` bytes at `offset` of `volume` are durable there.
    Placed {
        volume: u32,
        offset: u64,
        len: u64,
    },
    End {
        keep: u32,
        records: u64,
        bytes: u64,
    },
}

fn encode_record(seed: u32, tag: u8, a: u32, b: u64, c: u64, d: u32) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[0] = tag;
    h[4..8].copy_from_slice(&a.to_le_bytes());
    h[8..16].copy_from_slice(&b.to_le_bytes());
    h[16..24].copy_from_slice(&c.to_le_bytes());
    h[24..28].copy_from_slice(&d.to_le_bytes());
    let crc = crc32c::crc32c_append(seed, &h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads the record at `at`: the record and where the next one starts, or `None` when
/// it is torn or invalid (the log ends before it). With `verify`, a data record's bytes
/// are read (through `buf`) and checked against its crc. An in-place log holds placed
/// records where another holds data and zero records.
fn read_record(
    file: &mut BlockReader<'_>,
    at: u64,
    seed: u32,
    sizes: &[u64],
    in_place: bool,
    verify: bool,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(Record, u64)>> {
    let mut h = [0u8; RECORD_HEADER];
    match file.read_exact_at(&mut h, at) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if le_u32(&h, 28) != crc32c::crc32c_append(seed, &h[..28]) || h[1..4] != [0, 0, 0] {
        return Ok(None);
    }
    let (a, b, c, d) = (le_u32(&h, 4), le_u64(&h, 8), le_u64(&h, 16), le_u32(&h, 24));
    let next = at + RECORD_HEADER as u64;
    let in_range = |volume: u32, offset: u64, len: u64| {
        len > 0
            && sizes
                .get(volume as usize)
                .is_some_and(|&size| offset.checked_add(len).is_some_and(|end| end <= size))
    };
    match h[0] {
        TAG_PLACED if in_place && in_range(a, b, c) => {
            let record = Record::Placed {
                volume: a,
                offset: b,
                len: c,
            };
            Ok(Some((record, next)))
        }
        TAG_DATA if !in_place && in_range(a, b, c) => {
            if verify {
                let mut crc = 0u32;
                let mut done = 0u64;
                while done < c {
                    let n = (c - done).min(CHUNK as u64) as usize;
                    buf.resize(n, 0);
                    match file.read_exact_at(&mut buf[..n], next + done) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                        Err(e) => return Err(e),
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    done += n as u64;
                }
                if crc != d {
                    return Ok(None);
                }
            }
            let record = Record::Data {
                volume: a,
                offset: b,
                len: c,
                data_at: next,
            };
            Ok(Some((record, next + c)))
        }
        TAG_ZERO if !in_place && in_range(a, b, c) && d == 0 => {
            let record = Record::Zero {
                volume: a,
                offset: b,
                len: c,
            };
            Ok(Some((record, next)))
        }
        TAG_END if d == 0 => {
            let record = Record::End {
                keep: a,
                records: b,
                bytes: c,
            };
            Ok(Some((record, next)))
        }
        _ => Ok(None),
    }
}

/// What a scan of a whole log found.
#[derive(Debug, Clone, Copy)]
struct Scan {
    meta: CutMeta,
    seed: u32,
    /// Length of the valid prefix (through the end record if there is one).
    valid_len: u64,
    records: u64,
    bytes: u64,
    last_end: Option<(u32, u64)>,
    /// `Some(keep)` when a valid end record closes the log.
    end: Option<u32>,
    /// The extents are in the volumes already (placed records).
    in_place: bool,
}

/// Scans the log at `path`, verifying every record; `None` when its header is invalid.
fn scan_log(
    file: &File,
    path: &Path,
    magic: [u8; 8],
    sizes: &[u64],
) -> Result<Option<Scan>, RecoveryError> {
    let Some((meta, count, seed, in_place)) = read_log_header(file, magic).map_err(io_err(path))?
    else {
        return Ok(None);
    };
    if count as usize != sizes.len() {
        return Ok(None);
    }
    let mut scan = Scan {
        meta,
        seed,
        valid_len: LOG_HEADER as u64,
        records: 0,
        bytes: 0,
        last_end: None,
        end: None,
        in_place,
    };
    let mut reader = BlockReader::open(file, path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    while let Some((record, next)) = read_record(
        &mut reader,
        scan.valid_len,
        seed,
        sizes,
        in_place,
        true,
        &mut buf,
    )
    .map_err(io_err(path))?
    {
        match record {
            Record::Data {
                volume,
                offset,
                len,
                ..
            }
            | Record::Zero {
                volume,
                offset,
                len,
            }
            | Record::Placed {
                volume,
                offset,
                len,
            } => {
                scan.records += 1;
                scan.bytes += len;
                scan.last_end = Some((volume, offset + len));
                scan.valid_len = next;
            }
            Record::End {
                keep,
                records,
                bytes,
            } => {
                if records == scan.records && bytes == scan.bytes {
                    scan.end = Some(keep);
                    scan.valid_len = next;
                }
                break;
            }
        }
    }
    Ok(Some(scan))
}

/// Calls `each` for every record of a log a scan found valid, up to its end record,
/// with the reader of the log for a data record's bytes.
fn for_each_record<F>(
    file: &File,
    path: &Path,
    scan: &Scan,
    sizes: &[u64],
    mut each: F,
) -> Result<(), RecoveryError>
where
    F: FnMut(Record, &mut BlockReader<'_>) -> Result<(), RecoveryError>,
{
    let mut reader = BlockReader::open(file, path).map_err(io_err(path))?;
    let mut at = LOG_HEADER as u64;
    let mut buf = Vec::new();
    for _ in 0..scan.records {
        let (record, next) = read_record(
            &mut reader,
            at,
            scan.seed,
            sizes,
            scan.in_place,
            false,
            &mut buf,
        )
        .map_err(io_err(path))?
        .ok_or(RecoveryError::Corrupt {
            path: path.to_owned(),
            what: "a record changed after it was verified",
        })?;
        each(record, &mut reader)?;
        at = next;
    }
    Ok(())
}

/// Starts writing back a range just written, without waiting for it: the disk works
/// while the next extents arrive, and the checkpoint's fsync finds little left to do.
/// Only a hint: an error here changes nothing (the fsync reports what matters).
fn start_writeback(file: &File, at: u64, len: u64) {
    if let (Ok(off), Ok(n)) = (i64::try_from(at), i64::try_from(len)) {
        // SAFETY: sync_file_range on a file descriptor we own for the call's duration;
        // it takes no pointers.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// Reads `buf.len()` bytes at `at` of a volume; what lies past its end reads as zeros.
fn read_volume(file: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<(), RecoveryError> {
    let done = durable::read_up_to(file, buf, at).map_err(io_err(path))?;
    buf[done..].fill(0);
    Ok(())
}

// ---- the store ----------------------------------------------------------------------

#[derive(Debug)]
struct Volume {
    target: VolumeTarget,
    file: File,
    /// The same file for writes past the page cache (`None` where the file system
    /// does not take them): data written once and not read back soon (see the module
    /// documentation) need not fill the secondary's memory, nor pay a copy into it.
    direct: Option<File>,
}

#[derive(Debug)]
struct Staging {
    file: File,
    /// Appends the records, past the page cache where the file system allows; its
    /// position is where the next record goes.
    appender: Appender,
    meta: CutMeta,
    seed: u32,
    extents: u64,
    bytes: u64,
    last_end: Option<(u32, u64)>,
    /// `Some(keep)` once the end record is durable.
    committed: Option<u32>,
    /// The extents go straight into the volumes (the first cut over an empty set).
    in_place: bool,
    /// In place: the placed records of the extents written since the last checkpoint,
    /// appended to the log at the next one (after the volumes are fsynced).
    pending: Vec<u8>,
    /// In place: data bytes written since the last checkpoint.
    unsynced: u64,
}

impl Staging {
    fn progress(&self) -> StagedProgress {
        StagedProgress {
            meta: self.meta,
            extents: self.extents,
            bytes: self.bytes,
            last_end: self.last_end,
        }
    }

    fn scan(&self) -> Scan {
        Scan {
            meta: self.meta,
            seed: self.seed,
            valid_len: self.appender.position(),
            records: self.extents,
            bytes: self.bytes,
            last_end: self.last_end,
            end: self.committed,
            in_place: self.in_place,
        }
    }
}

/// What queries show of a secondary set (`replication show`, `recovery-points`):
/// published by the store each time its committed state changes, and read without
/// the store's lock, so a query never waits for a cut being received or applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverSummary {
    pub generation: u64,
    pub current: Option<CutMeta>,
    /// The current cut first, then the older recovery points.
    pub points: Vec<RecoveryPoint>,
}

/// The receiving side of one replication set. See the module documentation.
#[derive(Debug)]
pub struct ReceiverStore {
    dir: PathBuf,
    volumes: Vec<Volume>,
    state: State,
    summary: Arc<parking_lot::Mutex<ReceiverSummary>>,
    staging: Option<Staging>,
    disk: StoreDisk,
    config: StoreConfig,
    /// An operation failed part way: the files are the truth, reload them (which runs
    /// crash recovery) before the next operation.
    needs_reload: bool,
    /// A promote holds the volumes ([`ReceiverStore::retire`]): whoever locks the
    /// store after it (a connection that fetched the store before the fence) must not
    /// stage, apply, reset or roll back anything.
    retired: bool,
    /// The points DR drill LUNs pin and read in place (`views`).
    views: Option<Arc<PointViews>>,
    /// Where an extent written past the page cache is copied first (aligned).
    aligned: durable::AlignedBuf,
}

impl Drop for ReceiverStore {
    /// A cut part staged stays in the log for the next open to resume: what is still
    /// in memory is written out (at best: what does not reach the file is sent again,
    /// as after a kill). An in-place cut counts only its checkpoints anyway.
    fn drop(&mut self) {
        if self.needs_reload || self.retired {
            return;
        }
        if let Some(s) = self.staging.as_mut().filter(|s| !s.in_place) {
            let path = self.dir.join(STAGING_FILE);
            let _ = s.appender.flush(&*self.disk.0, &s.file, &path);
        }
    }
}

/// One extent of an undo log: `len` bytes of `volume` at `offset`, found at `data_at`
/// in the log (`None`: zeros).
#[derive(Debug, Clone, Copy)]
pub(super) struct UndoExtent {
    pub volume: u32,
    pub offset: u64,
    pub len: u64,
    pub data_at: Option<u64>,
}

/// The extents of the whole, verified undo log of point `cut` in `file`, in log order.
pub(super) fn undo_extents(
    file: &File,
    path: &Path,
    cut: u64,
    sizes: &[u64],
) -> Result<Vec<UndoExtent>, RecoveryError> {
    let scan = scan_log(file, path, UNDO_MAGIC, sizes)?
        .filter(|s| s.end.is_some() && s.meta.cut == cut)
        .ok_or(RecoveryError::Corrupt {
            path: path.to_owned(),
            what: "undo log incomplete or of another cut",
        })?;
    log_extents(file, path, &scan, sizes)
}

/// The data and zero extents of a log a scan verified, in log order.
fn log_extents(
    file: &File,
    path: &Path,
    scan: &Scan,
    sizes: &[u64],
) -> Result<Vec<UndoExtent>, RecoveryError> {
    let mut out = Vec::new();
    for_each_record(file, path, scan, sizes, |record, _| {
        match record {
            Record::Data {
                volume,
                offset,
                len,
                data_at,
            } => out.push(UndoExtent {
                volume,
                offset,
                len,
                data_at: Some(data_at),
            }),
            Record::Zero {
                volume,
                offset,
                len,
            } => out.push(UndoExtent {
                volume,
                offset,
                len,
                data_at: None,
            }),
            Record::Placed { .. } | Record::End { .. } => {}
        }
        Ok(())
    })?;
    Ok(out)
}

pub(super) fn undo_name(cut: u64) -> String {
    format!("undo-{cut}.log")
}

/// A durable replacement's error as the store's: the file and its cause, or what the
/// store's own writer returned.
fn from_replace(e: durable::ReplaceError<RecoveryError>) -> RecoveryError {
    match e {
        durable::ReplaceError::Io { path, source } => io_err(&path)(source),
        durable::ReplaceError::Fill(e) => e,
    }
}

impl ReceiverStore {
    /// Opens (creating) the set's state in `dir`; volumes in a fixed order (index =
    /// position). Runs crash recovery first: a roll back under way is finished, a
    /// committed-but-not-fully-applied cut is rolled forward (re-applied from the staging
    /// log; the undo log is rewritten only if it was not complete, i.e. before any volume
    /// write); an uncommitted staging log is kept for resume, less any torn tail.
    ///
    /// The volume files must exist; one shorter than its size is extended (sparse).
    pub fn open(dir: &Path, volumes: Vec<VolumeTarget>) -> Result<Self, RecoveryError> {
        Self::open_with(dir, volumes, StoreConfig::default())
    }

    /// [`ReceiverStore::open`] with a pacing of its own.
    pub fn open_with(
        dir: &Path,
        volumes: Vec<VolumeTarget>,
        config: StoreConfig,
    ) -> Result<Self, RecoveryError> {
        let mut store = Self::open_files(dir, volumes, StoreDisk::default(), config)?;
        store.reload()?;
        Ok(store)
    }

    /// Opens the set in `dir` without running recovery and resets it at once (see
    /// [`ReceiverStore::reset`]): the way out for a replica whose state cannot be
    /// recovered (a damaged `state.json`, staging or undo log makes `open` fail).
    pub fn open_reset(
        dir: &Path,
        volumes: Vec<VolumeTarget>,
        generation: u64,
    ) -> Result<Self, RecoveryError> {
        let mut store =
            Self::open_files(dir, volumes, StoreDisk::default(), StoreConfig::default())?;
        store.reset_inner(generation, None)?;
        Ok(store)
    }

    fn open_files(
        dir: &Path,
        volumes: Vec<VolumeTarget>,
        disk: StoreDisk,
        config: StoreConfig,
    ) -> Result<Self, RecoveryError> {
        if !dir.is_dir() {
            crate::durable::create_private_dir(dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(parent))?;
            }
        }
        let mut opened = Vec::with_capacity(volumes.len());
        for target in volumes {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&target.path)
                .map_err(io_err(&target.path))?;
            let len = file.metadata().map_err(io_err(&target.path))?.len();
            if len < target.size {
                file.set_len(target.size).map_err(io_err(&target.path))?;
            }
            let direct = durable::open_direct(&target.path).map_err(io_err(&target.path))?;
            opened.push(Volume {
                target,
                file,
                direct,
            });
        }
        let state = State::fresh(&opened);
        let summary = Arc::new(parking_lot::Mutex::new(ReceiverSummary::default()));
        let mut store = ReceiverStore {
            dir: dir.to_owned(),
            volumes: opened,
            state: State::fresh(&[]),
            summary,
            staging: None,
            disk,
            config,
            needs_reload: true,
            retired: false,
            views: None,
            aligned: durable::AlignedBuf::default(),
        };
        store.set_state(state);
        Ok(store)
    }

    /// Takes `state` as the store's state and publishes what queries show of it (and
    /// what drill LUNs may pin).
    fn set_state(&mut self, state: State) {
        self.state = state;
        let summary = ReceiverSummary {
            generation: self.state.generation,
            current: self.state.current,
            points: self.recovery_points(),
        };
        if let Some(views) = &self.views {
            views.set_points(
                self.state.current.map(|c| c.cut),
                &self.state.points,
                "the set's history no longer holds it (rolled back past it, restarted or promoted)",
            );
        }
        *self.summary.lock() = summary;
    }

    /// [`ReceiverStore::open_with`] for a set whose points drill LUNs pin: `views`
    /// holds the pins before recovery runs, so nothing it applies prunes them.
    pub fn open_with_views(
        dir: &Path,
        volumes: Vec<VolumeTarget>,
        config: StoreConfig,
        views: Arc<PointViews>,
    ) -> Result<Self, RecoveryError> {
        let mut store = Self::open_files(dir, volumes, StoreDisk::default(), config)?;
        store.views = Some(views);
        store.reload()?;
        Ok(store)
    }

    /// The set's volumes here, in the order extents number them.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.iter().map(|v| v.target.name.clone()).collect()
    }

    /// The published summary: read it without locking the store.
    pub fn summary(&self) -> Arc<parking_lot::Mutex<ReceiverSummary>> {
        self.summary.clone()
    }

    /// `open` with a test's crash at the `k`-th durable step of its recovery.
    #[cfg(test)]
    fn open_crashing(
        dir: &Path,
        volumes: Vec<VolumeTarget>,
        config: StoreConfig,
        k: u64,
        power_loss: bool,
    ) -> Result<Self, RecoveryError> {
        let disk = StoreDisk::default();
        disk.1.crash_after(k, power_cut(power_loss));
        let mut store = Self::open_files(dir, volumes, disk, config)?;
        store.reload()?;
        store.disk.1.disarm();
        Ok(store)
    }

    /// A promote takes the volumes over: from now on every operation that would write
    /// them or the set's state is refused ([`RecoveryError::Retired`]). An operation
    /// that failed part way is finished first (a committed cut rolled forward, a roll
    /// back completed), so the volumes hold exactly the cut returned. Any staged,
    /// uncommitted cut is left as is (it never touched the volumes).
    pub fn retire(&mut self) -> Result<Option<CutMeta>, RecoveryError> {
        self.check_live()?;
        self.reload_if_needed()?;
        self.retired = true;
        self.views_gone();
        Ok(self.state.current)
    }

    /// The set is going away: like [`ReceiverStore::retire`], without settling
    /// anything first (its state is about to be removed).
    pub fn close(&mut self) {
        self.retired = true;
        self.views_gone();
    }

    /// The volumes are no longer this store's: no view reads them as a point.
    fn views_gone(&self) {
        if let Some(v) = &self.views {
            v.set_points(None, &[], "the set was promoted or deleted here");
        }
    }

    /// The promote that retired the store failed: the set receives again.
    pub fn unretire(&mut self) {
        self.retired = false;
    }

    fn check_live(&self) -> Result<(), RecoveryError> {
        if self.retired {
            return Err(RecoveryError::Retired);
        }
        Ok(())
    }

    /// The last applied cut (None before the first).
    pub fn current(&self) -> Option<&CutMeta> {
        self.state.current.as_ref()
    }

    /// The set's generation: that of the current cut, or the one `reset` started.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    /// What is staged and not yet committed, for resuming the same cut. For a cut
    /// written in place, the extents written (durable or not: `begin` makes them durable
    /// before it reports them).
    pub fn staged(&self) -> Option<StagedProgress> {
        self.staging
            .as_ref()
            .filter(|s| s.committed.is_none())
            .map(Staging::progress)
    }

    /// Starts staging `meta` (cut must be > current's within the same generation, or the
    /// generation is newer). If the same cut (same generation, id and time) is already
    /// staged, keeps it (resume) and returns its progress; a different staged cut is
    /// discarded. While the set has no current cut and no recovery point, the cut is
    /// written in place (see the module documentation); the progress of a resumed cut
    /// counts only extents that are durable.
    pub fn begin(&mut self, meta: CutMeta) -> Result<StagedProgress, RecoveryError> {
        self.check_live()?;
        self.reload_if_needed()?;
        let state = &self.state;
        if meta.generation < state.generation {
            return Err(RecoveryError::StaleGeneration {
                generation: meta.generation,
                current: state.generation,
            });
        }
        if meta.generation == state.generation {
            if state.needs_new_generation {
                return Err(RecoveryError::NeedsNewGeneration {
                    generation: state.generation,
                });
            }
            if let Some(current) = &state.current {
                if meta.cut <= current.cut {
                    return Err(RecoveryError::StaleCut {
                        cut: meta.cut,
                        current: current.cut,
                    });
                }
            }
        }
        if let Some(staging) = &self.staging {
            if staging.meta == meta {
                let result = self.checkpoint();
                self.note(result)?;
                let staging = self.staging.as_ref().ok_or(RecoveryError::NotStaging)?;
                return Ok(staging.progress());
            }
        }
        let result = self.start_staging(meta);
        self.note(result)
    }

    fn start_staging(&mut self, meta: CutMeta) -> Result<StagedProgress, RecoveryError> {
        self.staging = None;
        let path = self.dir.join(STAGING_FILE);
        self.disk.remove(&path)?;
        let in_place = self.state.current.is_none()
            && self.state.points.is_empty()
            && self.state.rolling_back_to.is_none();
        let flags = if in_place { FLAG_IN_PLACE } else { 0 };
        let file = self.disk.create(&path)?;
        let direct = durable::open_direct(&path).map_err(io_err(&path))?;
        let mut appender = Appender::new(&file, direct, 0).map_err(io_err(&path))?;
        let (header, seed) =
            encode_log_header(STAGING_MAGIC, &meta, self.volumes.len() as u32, flags);
        appender
            .append(&*self.disk.0, &file, &path, &header)
            .and_then(|()| appender.flush(&*self.disk.0, &file, &path))
            .map_err(io_err(&path))?;
        let staging = Staging {
            file,
            appender,
            meta,
            seed,
            extents: 0,
            bytes: 0,
            last_end: None,
            committed: None,
            in_place,
            pending: Vec::new(),
            unsynced: 0,
        };
        let progress = staging.progress();
        self.staging = Some(staging);
        Ok(progress)
    }

    /// Appends one extent of volume `volume` (index) at byte `offset`, after checking
    /// `crc32c` of the data bytes (ignored for `Zero`) and that the range is non-empty and
    /// inside the volume. A refused extent stages nothing. Not yet durable. In place, the
    /// extent is written to the volume, and every [`StoreConfig::checkpoint_bytes`] the extents
    /// written so far are made durable.
    pub fn put(
        &mut self,
        volume: u32,
        offset: u64,
        data: ExtentData<'_>,
        crc32c: u32,
    ) -> Result<(), RecoveryError> {
        self.check_live()?;
        self.reload_if_needed()?;
        let len = data.len();
        let size = self
            .volumes
            .get(volume as usize)
            .ok_or(RecoveryError::NoSuchVolume {
                volume,
                count: self.volumes.len(),
            })?
            .target
            .size;
        if len == 0 {
            return Err(RecoveryError::EmptyExtent { volume, offset });
        }
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(RecoveryError::OutOfRange {
                volume,
                offset,
                len,
                size,
            });
        }
        let (tag, crc) = match data {
            ExtentData::Data(bytes) => {
                let actual = crc32c::crc32c(bytes);
                if actual != crc32c {
                    return Err(RecoveryError::CrcMismatch {
                        volume,
                        offset,
                        len,
                        expected: crc32c,
                        actual,
                    });
                }
                (TAG_DATA, actual)
            }
            ExtentData::Zero { .. } => (TAG_ZERO, 0),
        };
        let staging = match &mut self.staging {
            Some(s) if s.committed.is_none() => s,
            _ => return Err(RecoveryError::NotStaging),
        };
        if staging.in_place {
            let v = &self.volumes[volume as usize];
            let result = match (data, &v.direct) {
                (ExtentData::Data(bytes), Some(direct)) if durable::goes_direct(offset, len) => {
                    let buf = self.aligned.fill(bytes);
                    self.disk
                        .write_direct(direct, &v.file, &v.target.path, buf, offset)
                }
                (ExtentData::Data(bytes), _) => self
                    .disk
                    .write_at(&v.file, &v.target.path, bytes, offset)
                    .map(|()| start_writeback(&v.file, offset, len)),
                (ExtentData::Zero { len }, _) => {
                    self.disk.zero(&v.file, &v.target.path, offset, len)
                }
            };
            if result.is_ok() {
                let header = encode_record(staging.seed, TAG_PLACED, volume, offset, len, crc);
                staging.pending.extend_from_slice(&header);
                staging.unsynced += if tag == TAG_DATA { len } else { 0 };
                staging.extents += 1;
                staging.bytes += len;
                staging.last_end = Some((volume, offset + len));
            }
            let due = staging.unsynced >= self.config.checkpoint_bytes;
            let result = result.and_then(|()| if due { self.checkpoint() } else { Ok(()) });
            return self.note(result);
        }
        let path = self.dir.join(STAGING_FILE);
        let header = encode_record(staging.seed, tag, volume, offset, len, crc);
        let disk = &*self.disk.0;
        let mut result = staging.appender.append(disk, &staging.file, &path, &header);
        if let (Ok(()), ExtentData::Data(bytes)) = (&result, data) {
            result = staging.appender.append(disk, &staging.file, &path, bytes);
        }
        let result = result.map_err(io_err(&path));
        if result.is_ok() {
            staging.extents += 1;
            staging.bytes += len;
            staging.last_end = Some((volume, offset + len));
        }
        self.note(result)
    }

    /// The end record: fsync the staging log and commit it (durably), then apply it:
    /// write the undo log of every range the cut overwrites (old content; fsync), write
    /// the new data (fsync the volume files), make the undo log the recovery point of the
    /// previous cut, prune to `keep` recovery points (the current cut counts as one),
    /// drop the staging log. Once the commit is durable, a failure later is finished by
    /// the next operation or the next `open`.
    pub fn commit_and_apply(&mut self, keep: usize) -> Result<(), RecoveryError> {
        self.check_live()?;
        self.reload_if_needed()?;
        let keep = u32::try_from(keep.max(1)).unwrap_or(u32::MAX);
        let result = self.commit(keep).and_then(|()| self.apply_committed());
        self.note(result)
    }

    /// Puts every extent staged so far in the log file, for a resume or a restart
    /// to find. In place, also durably: the volumes are fsynced first, then their
    /// placed records appended to the log and the log fsynced: a record is never
    /// durable before the data it stands for.
    fn checkpoint(&mut self) -> Result<(), RecoveryError> {
        let path = self.dir.join(STAGING_FILE);
        match &mut self.staging {
            Some(s) if s.in_place && s.committed.is_none() && !s.pending.is_empty() => {}
            Some(s) if !s.in_place && s.committed.is_none() => {
                return s
                    .appender
                    .flush(&*self.disk.0, &s.file, &path)
                    .map_err(io_err(&path));
            }
            _ => return Ok(()),
        }
        self.sync_volumes()?;
        let staging = self.staging.as_mut().ok_or(RecoveryError::NotStaging)?;
        let disk = &*self.disk.0;
        staging
            .appender
            .append(disk, &staging.file, &path, &staging.pending)
            .and_then(|()| staging.appender.flush(disk, &staging.file, &path))
            .map_err(io_err(&path))?;
        self.disk.sync(&staging.file, &path)?;
        staging.pending.clear();
        staging.unsynced = 0;
        Ok(())
    }

    fn commit(&mut self, keep: u32) -> Result<(), RecoveryError> {
        self.checkpoint()?;
        let path = self.dir.join(STAGING_FILE);
        let staging = match &mut self.staging {
            Some(s) if s.committed.is_none() => s,
            _ => return Err(RecoveryError::NotStaging),
        };
        // The records first, then the end record: an end record is never durable
        // before what it closes.
        let disk = &*self.disk.0;
        staging
            .appender
            .flush(disk, &staging.file, &path)
            .map_err(io_err(&path))?;
        self.disk.sync(&staging.file, &path)?;
        let end = encode_record(
            staging.seed,
            TAG_END,
            keep,
            staging.extents,
            staging.bytes,
            0,
        );
        staging
            .appender
            .append(disk, &staging.file, &path, &end)
            .and_then(|()| staging.appender.flush(disk, &staging.file, &path))
            .map_err(io_err(&path))?;
        self.disk.sync(&staging.file, &path)?;
        staging.committed = Some(keep);
        Ok(())
    }

    /// Newest first: the current cut (`undo_bytes == 0`), then the older points.
    pub fn recovery_points(&self) -> Vec<RecoveryPoint> {
        let current = self.state.current.iter().map(|c| RecoveryPoint {
            cut: c.cut,
            taken_unix: c.taken_unix,
            undo_bytes: 0,
        });
        current.chain(self.state.points.iter().copied()).collect()
    }

    /// Restart Replication: delete every recovery point and staged data; `current`
    /// becomes None and the set's generation `generation` (not older than the set's).
    /// The volumes' content is left as is; the next cut of the new generation rewrites
    /// all written data. Works without reloading first, so it also clears a committed
    /// cut that cannot be applied.
    pub fn reset(&mut self, generation: u64) -> Result<(), RecoveryError> {
        self.check_live()?;
        if generation < self.state.generation {
            return Err(RecoveryError::StaleGeneration {
                generation,
                current: self.state.generation,
            });
        }
        let result = self.reset_inner(generation, None);
        self.note(result)
    }

    /// The old primary of a failback or a switchover takes the set as its secondary:
    /// [`ReceiverStore::reset`] to `current.generation`, except that the volumes count as
    /// holding cut `current`, the common cut (an old primary's own writes after it are
    /// among the pages the first cut ships). That first cut builds on it: it is staged,
    /// and applied with an undo log when points are kept or pinned, so point
    /// `current.cut` then reads as what the volumes held before it (a failback's
    /// copy-on-write record of the old primary's content).
    pub fn adopt(&mut self, current: CutMeta) -> Result<(), RecoveryError> {
        self.check_live()?;
        if current.generation < self.state.generation {
            return Err(RecoveryError::StaleGeneration {
                generation: current.generation,
                current: self.state.generation,
            });
        }
        let result = self.reset_inner(current.generation, Some(current));
        self.note(result)
    }

    fn reset_inner(
        &mut self,
        generation: u64,
        current: Option<CutMeta>,
    ) -> Result<(), RecoveryError> {
        let mut state = State::fresh(&self.volumes);
        state.generation = generation;
        state.current = current;
        self.save_state(&state)?;
        self.set_state(state);
        self.staging = None;
        self.disk.remove(&self.dir.join(STAGING_FILE))?;
        self.remove_unreferenced()?;
        self.needs_reload = false;
        Ok(())
    }

    /// Promote at an older point: apply undo logs newest first until the volumes hold
    /// exactly cut `cut`'s content (durably, crash-safe: a crash midway rolls back on to
    /// `cut` at the next open), drop newer points and any staged cut. Afterwards only a
    /// newer generation can be received (the cuts that follow were taken on top of
    /// content the volumes no longer hold). Rolling back to the current cut does nothing.
    pub fn roll_back_to(&mut self, cut: u64) -> Result<(), RecoveryError> {
        self.roll_back(cut, false)
    }

    /// [`ReceiverStore::roll_back_to`] the cut an incremental cut of the current
    /// generation is computed from: the primary crashed after this side committed a
    /// newer cut and before it recorded that, so it resends everything since `cut`.
    /// The generation goes on.
    pub fn roll_back_to_base(&mut self, cut: u64) -> Result<(), RecoveryError> {
        self.roll_back(cut, true)
    }

    fn roll_back(&mut self, cut: u64, for_base: bool) -> Result<(), RecoveryError> {
        self.check_live()?;
        self.reload_if_needed()?;
        if self.state.current.is_some_and(|c| c.cut == cut) {
            return Ok(());
        }
        if !self.state.points.iter().any(|p| p.cut == cut) {
            return Err(RecoveryError::UnknownPoint { cut });
        }
        let result = self.start_roll_back(cut, for_base);
        self.note(result)
    }

    fn start_roll_back(&mut self, cut: u64, for_base: bool) -> Result<(), RecoveryError> {
        self.staging = None;
        self.disk.remove(&self.dir.join(STAGING_FILE))?;
        let mut state = self.state.clone();
        state.rolling_back_to = Some(cut);
        state.rollback_for_base = for_base;
        self.save_state(&state)?;
        self.set_state(state);
        self.finish_roll_back(cut)
    }

    /// Applies the undo logs of every point from the newest down to `cut`. Starting over
    /// from any partly rolled-back state gives the same result: a byte ends with the
    /// value of the oldest of these logs that holds it, which is its value at `cut`, and
    /// a byte none holds was not written since.
    fn finish_roll_back(&mut self, cut: u64) -> Result<(), RecoveryError> {
        let generation = self.state.generation;
        let target = *self
            .state
            .points
            .iter()
            .rfind(|p| p.cut >= cut)
            .ok_or(RecoveryError::UnknownPoint { cut })?;
        // Verify every log before the first write, so damage stops nothing half way.
        let logs = self.undo_logs_from(cut)?;
        for (path, file, scan) in &logs {
            self.copy_records(file, path, scan)?;
        }
        self.sync_volumes()?;
        let mut state = self.state.clone();
        state.current = Some(CutMeta {
            generation,
            cut: target.cut,
            taken_unix: target.taken_unix,
        });
        state.points.retain(|p| p.cut < cut);
        state.rolling_back_to = None;
        state.needs_new_generation = !state.rollback_for_base;
        state.rollback_for_base = false;
        self.save_state(&state)?;
        self.set_state(state);
        self.remove_unreferenced()
    }

    // ---- recovery -------------------------------------------------------------------

    fn note<T>(&mut self, result: Result<T, RecoveryError>) -> Result<T, RecoveryError> {
        if result.is_err() {
            self.needs_reload = true;
        }
        result
    }

    fn reload_if_needed(&mut self) -> Result<(), RecoveryError> {
        if self.needs_reload {
            self.reload()?;
        }
        Ok(())
    }

    /// Reads the state back from the files and finishes whatever a crash (or a failed
    /// operation) left half done.
    fn reload(&mut self) -> Result<(), RecoveryError> {
        self.staging = None;
        let state_path = self.dir.join(STATE_FILE);
        let volumes = volume_states(&self.volumes);
        match fs::read(&state_path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|source| RecoveryError::StateFile {
                        path: state_path.clone(),
                        source,
                    })?;
                if state.version != STATE_VERSION {
                    return Err(RecoveryError::Corrupt {
                        path: state_path,
                        what: "unknown state version",
                    });
                }
                self.set_state(state);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let state = State::fresh(&self.volumes);
                self.disk.remove(&self.dir.join(STAGING_FILE))?;
                self.save_state(&state)?;
                self.set_state(state);
            }
            Err(e) => return Err(io_err(&state_path)(e)),
        }
        if self.state.volumes != volumes {
            let empty = self.state.current.is_none()
                && self.state.points.is_empty()
                && self.state.rolling_back_to.is_none();
            if !empty {
                return Err(RecoveryError::VolumesChanged {
                    dir: self.dir.clone(),
                });
            }
            let mut state = self.state.clone();
            state.volumes = volumes;
            self.disk.remove(&self.dir.join(STAGING_FILE))?;
            self.save_state(&state)?;
            self.set_state(state);
        }
        if let Some(cut) = self.state.rolling_back_to {
            self.disk.remove(&self.dir.join(STAGING_FILE))?;
            self.finish_roll_back(cut)?;
        }
        self.recover_staging()?;
        self.remove_unreferenced()?;
        self.needs_reload = false;
        Ok(())
    }

    fn recover_staging(&mut self) -> Result<(), RecoveryError> {
        let path = self.dir.join(STAGING_FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let Some(scan) = scan_log(&file, &path, STAGING_MAGIC, &self.sizes())? else {
            return self.disk.remove(&path);
        };
        let state = &self.state;
        let stale = scan.meta.generation < state.generation
            || (scan.meta.generation == state.generation
                && (state.needs_new_generation
                    || state.current.is_some_and(|c| c.cut >= scan.meta.cut)));
        if stale {
            // Applied already (the crash came before its removal), or obsolete.
            return self.disk.remove(&path);
        }
        if scan.in_place && (state.current.is_some() || !state.points.is_empty()) {
            // Never written: a cut goes in place only while there is nothing to keep.
            return Err(RecoveryError::Corrupt {
                path,
                what: "a cut written in place over a cut the set keeps",
            });
        }
        if scan.end.is_none() {
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len != scan.valid_len {
                self.disk.set_len(&file, &path, scan.valid_len)?;
            }
        }
        let direct = durable::open_direct(&path).map_err(io_err(&path))?;
        let appender = Appender::new(&file, direct, scan.valid_len).map_err(io_err(&path))?;
        self.staging = Some(Staging {
            file,
            appender,
            meta: scan.meta,
            seed: scan.seed,
            extents: scan.records,
            bytes: scan.bytes,
            last_end: scan.last_end,
            committed: scan.end,
            in_place: scan.in_place,
            pending: Vec::new(),
            unsynced: 0,
        });
        if scan.end.is_some() {
            self.apply_committed()?;
        }
        Ok(())
    }

    /// Applies the committed staging log; safe to run again from the start after a
    /// crash at any point. New pins wait meanwhile.
    fn apply_committed(&mut self) -> Result<(), RecoveryError> {
        let pinned = self.views.as_ref().is_some_and(|v| v.begin_apply());
        let result = self.apply_committed_pinned(pinned);
        if let Some(v) = &self.views {
            v.end_apply();
        }
        result
    }

    /// `pinned`: drill LUNs pin a point, so the cut gets an undo log whatever the keep.
    fn apply_committed_pinned(&mut self, pinned: bool) -> Result<(), RecoveryError> {
        let staging = self.staging.as_ref().ok_or(RecoveryError::NotStaging)?;
        let keep = staging.committed.ok_or(RecoveryError::NotStaging)?;
        let meta = staging.meta;
        let scan = staging.scan();
        let staging_path = self.dir.join(STAGING_FILE);
        if scan.in_place {
            // The volumes hold the cut durably: every placed record was written after
            // the volumes were fsynced, and the end record after the last of them.
            return self.finish_apply(meta, Vec::new());
        }
        // The previous cut, when this one builds on it.
        let prev = self
            .state
            .current
            .filter(|c| c.generation == meta.generation && !self.state.needs_new_generation);
        let mut points = Vec::new();
        if let Some(prev) = prev {
            if keep >= 2 || pinned {
                let undo_bytes = match self.complete_undo(&prev)? {
                    Some(bytes) => bytes,
                    None => self.write_undo(&prev, &scan)?,
                };
                // The views have the old content before the volumes lose it.
                if let Some(v) = &self.views {
                    v.add_log(prev.cut)?;
                }
                points.push(RecoveryPoint {
                    cut: prev.cut,
                    taken_unix: prev.taken_unix,
                    undo_bytes,
                });
            }
            points.extend(self.state.points.iter().copied());
        }
        let points = match &self.views {
            Some(v) => v.keep(points, keep),
            None => {
                points.truncate(keep as usize - 1);
                points
            }
        };
        let staging = self.staging.as_ref().ok_or(RecoveryError::NotStaging)?;
        self.copy_records(&staging.file, &staging_path, &scan)?;
        self.sync_volumes()?;
        self.finish_apply(meta, points)
    }

    /// The volumes hold `meta` durably: make it current with `points` behind it, and
    /// drop the staging log.
    fn finish_apply(
        &mut self,
        meta: CutMeta,
        points: Vec<RecoveryPoint>,
    ) -> Result<(), RecoveryError> {
        let staging_path = self.dir.join(STAGING_FILE);
        let mut state = self.state.clone();
        state.generation = meta.generation;
        state.current = Some(meta);
        state.points = points;
        state.rolling_back_to = None;
        state.rollback_for_base = false;
        state.needs_new_generation = false;
        self.save_state(&state)?;
        self.set_state(state);
        self.staging = None;
        self.disk.remove(&staging_path)?;
        self.remove_unreferenced()
    }

    /// The size of `undo-<prev>.log` when it is whole and of `prev`.
    fn complete_undo(&self, prev: &CutMeta) -> Result<Option<u64>, RecoveryError> {
        let path = self.dir.join(undo_name(prev.cut));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let whole = scan_log(&file, &path, UNDO_MAGIC, &self.sizes())?
            .is_some_and(|s| s.end.is_some() && s.meta == *prev);
        if !whole {
            return Ok(None);
        }
        Ok(Some(file.metadata().map_err(io_err(&path))?.len()))
    }

    /// Saves the volumes' content in every range the staged cut writes as the undo log
    /// of `prev`; returns its size. Runs before any volume write of the cut.
    fn write_undo(&self, prev: &CutMeta, staged: &Scan) -> Result<u64, RecoveryError> {
        let staging = self.staging.as_ref().ok_or(RecoveryError::NotStaging)?;
        let staging_path = self.dir.join(STAGING_FILE);
        let path = self.dir.join(undo_name(prev.cut));
        let tmp = durable::tmp_path(&path);
        let (header, seed) = encode_log_header(UNDO_MAGIC, prev, self.volumes.len() as u32, 0);
        let mut at = 0u64;
        let mut buf = durable::AlignedBuf::default();
        durable::replace_with_direct_on(&*self.disk.0, &path, |w| {
            let mut put = |bytes: &[u8]| {
                at += bytes.len() as u64;
                w.write_all(bytes).map_err(io_err(&tmp))
            };
            put(&header)?;
            let (mut records, mut bytes) = (0u64, 0u64);
            for_each_record(
                &staging.file,
                &staging_path,
                staged,
                &self.sizes(),
                |record, _| {
                    let (volume, offset, len) = match record {
                        Record::Data {
                            volume,
                            offset,
                            len,
                            ..
                        }
                        | Record::Zero {
                            volume,
                            offset,
                            len,
                        } => (volume, offset, len),
                        // An in-place log has no undo log (there is no cut before it).
                        Record::Placed { .. } | Record::End { .. } => return Ok(()),
                    };
                    let v = &self.volumes[volume as usize];
                    // A large extent's pages are not cached (written past the cache):
                    // read past it too.
                    let from = match &v.direct {
                        Some(d) if durable::goes_direct(offset, len) => d,
                        _ => &v.file,
                    };
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(CHUNK as u64) as usize;
                        let old = buf.get(n);
                        read_volume(from, &v.target.path, old, offset + done)?;
                        let zero = old.iter().all(|&b| b == 0);
                        let (tag, crc) = if zero {
                            (TAG_ZERO, 0)
                        } else {
                            (TAG_DATA, crc32c::crc32c(old))
                        };
                        put(&encode_record(
                            seed,
                            tag,
                            volume,
                            offset + done,
                            n as u64,
                            crc,
                        ))?;
                        if !zero {
                            put(old)?;
                        }
                        records += 1;
                        bytes += n as u64;
                        done += n as u64;
                    }
                    Ok(())
                },
            )?;
            put(&encode_record(seed, TAG_END, 0, records, bytes, 0))
        })
        .map_err(from_replace)?;
        Ok(at)
    }

    /// Writes every record of a verified log to the volumes, in log order: the data
    /// of large aligned extents past the page cache where the volume takes it (as a
    /// first cut's extents are).
    fn copy_records(&self, file: &File, path: &Path, scan: &Scan) -> Result<(), RecoveryError> {
        let mut buf = durable::AlignedBuf::default();
        let sizes = self.sizes();
        for_each_record(file, path, scan, &sizes, |record, log| match record {
            Record::Data {
                volume,
                offset,
                len,
                data_at,
            } => {
                let v = &self.volumes[volume as usize];
                let direct = v
                    .direct
                    .as_ref()
                    .filter(|_| durable::goes_direct(offset, len));
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let chunk = buf.get(n);
                    log.read_exact_at(chunk, data_at + done)
                        .map_err(io_err(path))?;
                    let at = offset + done;
                    match direct {
                        Some(direct) => {
                            self.disk
                                .write_direct(direct, &v.file, &v.target.path, chunk, at)?
                        }
                        None => self.disk.write_at(&v.file, &v.target.path, chunk, at)?,
                    }
                    done += n as u64;
                }
                Ok(())
            }
            Record::Zero {
                volume,
                offset,
                len,
            } => {
                let v = &self.volumes[volume as usize];
                self.disk.zero(&v.file, &v.target.path, offset, len)
            }
            // In the volume already.
            Record::Placed { .. } | Record::End { .. } => Ok(()),
        })
    }

    /// The byte ranges, per volume (in the store's order), that the cuts after `cut`
    /// wrote: what a roll back to `cut` rewrites (the records of the undo logs of `cut`
    /// and of every newer point). Read before the roll back, which deletes those logs:
    /// a failback ships these pages too, since the old primary holds the newer cuts.
    pub fn ranges_since(&mut self, cut: u64) -> Result<Vec<Vec<(u64, u64)>>, RecoveryError> {
        self.reload_if_needed()?;
        let sizes = self.sizes();
        let mut out = vec![Vec::new(); self.volumes.len()];
        for (path, file, scan) in self.undo_logs_from(cut)? {
            for e in log_extents(&file, &path, &scan, &sizes)? {
                if let Some(v) = out.get_mut(e.volume as usize) {
                    v.push((e.offset, e.len));
                }
            }
        }
        Ok(out)
    }

    /// The undo logs of recovery point `cut` and every newer one, newest first, each
    /// opened and verified whole (of this generation, of its point, with its end
    /// record): what a roll back to `cut` applies, in that order.
    fn undo_logs_from(&self, cut: u64) -> Result<Vec<(PathBuf, File, Scan)>, RecoveryError> {
        let sizes = self.sizes();
        let generation = self.state.generation;
        let mut logs = Vec::new();
        for point in self.state.points.iter().filter(|p| p.cut >= cut) {
            let path = self.dir.join(undo_name(point.cut));
            let file = File::open(&path).map_err(io_err(&path))?;
            let scan = scan_log(&file, &path, UNDO_MAGIC, &sizes)?
                .filter(|s| s.end.is_some())
                .filter(|s| s.meta.generation == generation && s.meta.cut == point.cut)
                .ok_or(RecoveryError::Corrupt {
                    path: path.clone(),
                    what: "undo log incomplete or of another cut",
                })?;
            logs.push((path, file, scan));
        }
        Ok(logs)
    }

    fn sync_volumes(&self) -> Result<(), RecoveryError> {
        for v in &self.volumes {
            self.disk.sync(&v.file, &v.target.path)?;
        }
        Ok(())
    }

    fn sizes(&self) -> Vec<u64> {
        self.volumes.iter().map(|v| v.target.size).collect()
    }

    /// Replaces `state.json` atomically.
    fn save_state(&self, state: &State) -> Result<(), RecoveryError> {
        let path = self.dir.join(STATE_FILE);
        let mut text =
            serde_json::to_vec_pretty(state).map_err(|source| RecoveryError::StateFile {
                path: path.clone(),
                source,
            })?;
        text.push(b'\n');
        durable::replace_on(&*self.disk.0, &path, &text).map_err(|e| match e {
            durable::ReplaceError::Io { path, source } => io_err(&path)(source),
            durable::ReplaceError::Fill(never) => match never {},
        })
    }

    /// Removes temp files and undo logs of no recovery point.
    fn remove_unreferenced(&self) -> Result<(), RecoveryError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let unreferenced = name.ends_with(".tmp")
                || name
                    .strip_prefix("undo-")
                    .and_then(|n| n.strip_suffix(".log"))
                    .is_some_and(|n| !self.state.points.iter().any(|p| n == p.cut.to_string()));
            if unreferenced {
                self.disk.remove(&entry.path())?;
                removed = true;
            }
        }
        if removed {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// A test's failure: the store's `k`-th durable step from now fails with `errno`
    /// (ENOSPC, EIO) without doing anything; the steps after it go on.
    #[cfg(test)]
    fn fail_at(&self, k: u64, errno: i32) {
        self.disk.1.fail_at(k, errno);
    }

    /// A test's crash: the store's `k`-th durable step from now (counting writes,
    /// fsyncs, renames and removals) fails, a write there tearing in half; with
    /// `power_loss` every write and rename not made durable since is lost too.
    #[cfg(test)]
    fn crash_after(&self, k: u64, power_loss: bool) {
        self.disk.1.crash_after(k, power_cut(power_loss));
    }
}

#[cfg(test)]
mod tests;
