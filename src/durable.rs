//! Durable writes, in one place.
//!
//! Every store in the data dir writes through a [`Disk`]: the catalog
//! (`admin::store`), a primary set's state (`replication::sender`), the tracking state
//! (`tracking::persist`), and the secondary's receiver store
//! (`replication::recovery`); the activity log reserves its space through it. [`OsDisk`] does the operations on `std::fs`; the tests'
//! `FaultDisk` stops after any step as a crash or a power cut would, or fails a step
//! with an error (ENOSPC, EIO), so each store's crash tests run against the same
//! operations it performs in production.
//!
//! [`replace_on`] and [`replace_with_on`] replace a file durably: write a temporary
//! file beside it (mode 0600), fsync it, rename it over the file, fsync the directory.
//! After a crash the file holds the old content or the new, whole; a failed replacement
//! leaves the old file and no temporary one behind. [`replace`] and [`replace_with`]
//! do it on the real disk.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The durable steps a store takes. Each returns the operation's own `io::Error`;
/// callers name the file.
pub trait Disk: Debug + Send + Sync {
    /// Creates `path` (mode 0600), or truncates it, open for reading and writing.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Writes all of `buf` at `at` of `file` (which is `path`).
    fn write_at(&self, file: &File, path: &Path, buf: &[u8], at: u64) -> io::Result<()>;
    /// Writes all of `buf` at `at` of `file` past the page cache, through `direct`: the
    /// same file opened with [`open_direct`]. `buf`'s address, `at` and the length are
    /// multiples of [`DIRECT_ALIGN`]. Not durable before `sync`, like `write_at`.
    fn write_direct(
        &self,
        direct: &File,
        file: &File,
        path: &Path,
        buf: &[u8],
        at: u64,
    ) -> io::Result<()>;
    /// Makes what was written to `file` durable (fsync).
    fn sync(&self, file: &File, path: &Path) -> io::Result<()>;
    /// Sets the length of `file`.
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// Reserves the blocks of `len` bytes at `at` without changing the file's size
    /// (fallocate, KEEP_SIZE): writes there later need no new space.
    fn reserve(&self, file: &File, path: &Path, at: u64, len: u64) -> io::Result<()>;
    /// Makes `len` bytes at `at` a hole; `Ok(false)` where the file system cannot.
    fn punch(&self, file: &File, path: &Path, at: u64, len: u64) -> io::Result<bool>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsyncs the directory `dir`, so a rename or a new or removed entry in it is durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes `path`; one that is not there is fine.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(path)
    }

    fn write_at(&self, file: &File, _path: &Path, buf: &[u8], at: u64) -> io::Result<()> {
        file.write_all_at(buf, at)
    }

    fn write_direct(
        &self,
        direct: &File,
        _file: &File,
        _path: &Path,
        buf: &[u8],
        at: u64,
    ) -> io::Result<()> {
        direct.write_all_at(buf, at)
    }

    fn sync(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn set_len(&self, file: &File, _path: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn reserve(&self, file: &File, _path: &Path, at: u64, len: u64) -> io::Result<()> {
        fallocate(file, libc::FALLOC_FL_KEEP_SIZE, at, len)
    }

    fn punch(&self, file: &File, _path: &Path, at: u64, len: u64) -> io::Result<bool> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(file, mode, at, len) {
            Ok(()) => Ok(true),
            Err(e) => match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(false),
                _ => Err(e),
            },
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// What a write past the page cache aligns to: its buffer's address, offset and
/// length. 4 KiB covers every logical block size Linux file systems use.
pub const DIRECT_ALIGN: usize = 4096;

/// The smallest extent worth writing or reading past the page cache. Each such I/O
/// is one synchronous request to the device: below this, its fixed cost in time and
/// CPU exceeds copying through the cache, and a cut of scattered 4 KiB pages applied
/// past it took 2.6 s instead of 0.5 (and more of the secondary's CPU).
pub const DIRECT_MIN: u64 = 64 << 10;

/// Whether an extent of `len` bytes at `at` goes past the page cache (from an aligned
/// buffer): aligned as `O_DIRECT` requires, and at least [`DIRECT_MIN`]. Its pieces
/// (any multiple of [`DIRECT_ALIGN`]) go the same way.
pub fn goes_direct(at: u64, len: u64) -> bool {
    let a = DIRECT_ALIGN as u64;
    at.is_multiple_of(a) && len.is_multiple_of(a) && len >= DIRECT_MIN
}

/// Opens `path` for reading and writing past the page cache (`O_DIRECT`); `None`
/// where the file system does not take it (tmpfs before Linux 6.6), and buffered I/O
/// is the way.
pub fn open_direct(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A reusable buffer for writes past the page cache: [`AlignedBuf::fill`] copies data
/// to an address aligned to [`DIRECT_ALIGN`] (a `Vec` promises no more than a byte).
#[derive(Debug, Default)]
pub struct AlignedBuf(Vec<u8>);

impl AlignedBuf {
    /// `len` bytes of the buffer (grown as needed) at an aligned address.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        if self.0.len() < len + DIRECT_ALIGN {
            self.0 = vec![0; len + DIRECT_ALIGN];
        }
        let start = self.0.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.0[start..start + len]
    }

    /// `data` copied into the buffer, at an aligned address.
    pub fn fill(&mut self, data: &[u8]) -> &[u8] {
        let out = self.get(data.len());
        out.copy_from_slice(data);
        out
    }
}

/// Reads into `buf` from `at` of `file` until `buf` is full or the file ends; returns
/// how many bytes it read (what lies past the end is left as it was).
pub fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The multiple of [`DIRECT_ALIGN`] at or below `n`.
fn align_down(n: u64) -> u64 {
    n - n % DIRECT_ALIGN as u64
}

/// Appends to a file from a position, through a [`Disk`]. Given the file's `O_DIRECT`
/// handle ([`open_direct`]) it writes past the page cache: it gathers the bytes in an
/// aligned buffer and writes whole blocks, and [`Appender::flush`] writes the last,
/// partial one padded with zeros and then cuts the file back to what was appended
/// (that block is written again, whole, when more follows). Without one it writes
/// each piece as it comes. Either way nothing is durable before the file's `sync`,
/// and what was appended since the last flush is in memory only.
#[derive(Debug)]
pub struct Appender {
    direct: Option<File>,
    buf: AlignedBuf,
    /// Bytes in `buf`, which go at `base`.
    fill: usize,
    /// Where `buf` goes in the file: a multiple of [`DIRECT_ALIGN`] when direct.
    base: u64,
    /// Bytes were appended since the last flush.
    unflushed: bool,
}

impl Appender {
    /// What the buffer holds before it is written out (direct only).
    const CAPACITY: usize = 1 << 20;

    /// Appends to `file` at `at`. Going direct, the part of the block before `at` is
    /// read back first: the appender writes whole blocks.
    pub fn new(file: &File, direct: Option<File>, at: u64) -> io::Result<Self> {
        let mut appender = Appender {
            direct,
            buf: AlignedBuf::default(),
            fill: 0,
            base: at,
            unflushed: false,
        };
        if appender.direct.is_some() {
            let base = align_down(at);
            let head = (at - base) as usize;
            let buf = appender.buf.get(Self::CAPACITY);
            file.read_exact_at(&mut buf[..head], base)?;
            appender.base = base;
            appender.fill = head;
        }
        Ok(appender)
    }

    /// Where the next byte appended goes.
    pub fn position(&self) -> u64 {
        self.base + self.fill as u64
    }

    /// Appends `data` to `file` (which is `path`).
    pub fn append(
        &mut self,
        disk: &dyn Disk,
        file: &File,
        path: &Path,
        mut data: &[u8],
    ) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            disk.write_at(file, path, data, self.base)?;
            self.base += data.len() as u64;
            return Ok(());
        };
        self.unflushed |= !data.is_empty();
        while !data.is_empty() {
            let buf = self.buf.get(Self::CAPACITY);
            let n = data.len().min(Self::CAPACITY - self.fill);
            buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == Self::CAPACITY {
                disk.write_direct(direct, file, path, buf, self.base)?;
                self.base += Self::CAPACITY as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Writes out what was appended, so the file holds it (not yet durably) and is
    /// as long as [`Appender::position`].
    pub fn flush(&mut self, disk: &dyn Disk, file: &File, path: &Path) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return Ok(());
        };
        if !self.unflushed || self.fill == 0 {
            self.unflushed = false;
            return Ok(());
        }
        let whole = align_down(self.fill as u64) as usize;
        let padded = if whole == self.fill {
            whole
        } else {
            whole + DIRECT_ALIGN
        };
        let end = self.base + self.fill as u64;
        let buf = self.buf.get(Self::CAPACITY);
        buf[self.fill..padded].fill(0);
        disk.write_direct(direct, file, path, &buf[..padded], self.base)?;
        if padded != self.fill {
            disk.set_len(file, path, end)?;
        }
        // The whole blocks are out for good; the partial one is written again later.
        buf.copy_within(whole..self.fill, 0);
        self.base += whole as u64;
        self.fill -= whole;
        self.unflushed = false;
        Ok(())
    }
}

/// Reads a file at any offset; given its `O_DIRECT` handle, past the page cache, in
/// aligned blocks of up to a MiB kept for the reads that follow. For logs written
/// past the page cache ([`Appender`]) and read back once: through the cache, each
/// page read would be a new page of memory filled and soon dropped.
#[derive(Debug)]
pub struct BlockReader<'a> {
    file: &'a File,
    direct: Option<File>,
    buf: AlignedBuf,
    /// The bytes of the file at `start` that `buf` holds.
    start: u64,
    len: usize,
}

impl<'a> BlockReader<'a> {
    /// The most one read from the file takes.
    const WINDOW: usize = 1 << 20;
    /// The least, for a read that skips ahead (past a record's data it does not
    /// want); one that goes on where the last ended takes a whole window, so a log of
    /// small records is read a MiB at a time, not a block per record.
    const MIN_READ: u64 = 128 << 10;

    /// Reads `file`, which is `path`, past the page cache where its file system allows.
    pub fn open(file: &'a File, path: &Path) -> io::Result<Self> {
        Ok(BlockReader {
            file,
            direct: open_direct(path)?,
            buf: AlignedBuf::default(),
            start: 0,
            len: 0,
        })
    }

    /// Fills `out` from `at`; `UnexpectedEof` when the file ends first.
    pub fn read_exact_at(&mut self, mut out: &mut [u8], mut at: u64) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return self.file.read_exact_at(out, at);
        };
        while !out.is_empty() {
            let held = self.start..self.start + self.len as u64;
            if !held.contains(&at) {
                // The blocks covering as much of the rest as the window takes.
                let sequential = at == held.end && self.len > 0;
                let start = align_down(at);
                let least = if sequential {
                    Self::WINDOW as u64
                } else {
                    Self::MIN_READ
                };
                let want = (at - start + out.len() as u64)
                    .next_multiple_of(DIRECT_ALIGN as u64)
                    .clamp(least, Self::WINDOW as u64) as usize;
                let got = read_up_to(direct, self.buf.get(want), start)?;
                (self.start, self.len) = (start, got);
                if at >= start + got as u64 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let from = (at - self.start) as usize;
            let n = out.len().min(self.len - from);
            let held = self.buf.get(self.len);
            out[..n].copy_from_slice(&held[from..from + n]);
            out = &mut out[n..];
            at += n as u64;
        }
        Ok(())
    }
}

/// `fallocate(2)` with `mode` on `len` bytes of `file` from `at`; offsets past what
/// the call takes are EINVAL.
pub fn fallocate(file: &File, mode: libc::c_int, at: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(at), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on a file descriptor `file` owns for the call's duration; it
    // takes no pointers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

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

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The mode of every directory the server makes under the data dir: volume data,
/// snapshots' old content, undo logs and secrets live there, so nobody else may even
/// list them.
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of every file the server makes under the data dir (see [`PRIVATE_DIR`]).
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` and any missing parent with mode 0700, whatever the umask lets
/// through (the umask can only take bits away): the one way stores make directories,
/// so their content is private by construction. One that exists is left as it is
/// (a start fixes older ones: `datadir::make_private`).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// fsync the directory `dir`, so a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes`, durably, on the real disk.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    replace_on(&OsDisk, path, bytes)
}

/// Replaces `path` with `bytes`, durably, through `disk`.
pub fn replace_on(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    replace_with_on(disk, path, |w| {
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

/// Replaces `path` with what `fill` writes, durably, on the real disk; for contents
/// too large to hold in memory at once (a snapshot's kept pages).
pub fn replace_with<E, F>(path: &Path, fill: F) -> Result<(), ReplaceError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(&mut DiskWriter<'_>) -> Result<(), E>,
{
    replace_with_on(&OsDisk, path, fill)
}

/// Replaces `path` with what `fill` writes, durably, through `disk`.
pub fn replace_with_on<E, F>(disk: &dyn Disk, path: &Path, fill: F) -> Result<(), ReplaceError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(&mut DiskWriter<'_>) -> Result<(), E>,
{
    replace_through(disk, path, false, fill)
}

/// [`replace_with_on`], writing past the page cache where the file system allows
/// (an [`Appender`]): for large files written once and seldom read (a secondary's
/// undo logs), which would only fill memory.
pub fn replace_with_direct_on<E, F>(
    disk: &dyn Disk,
    path: &Path,
    fill: F,
) -> Result<(), ReplaceError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(&mut DiskWriter<'_>) -> Result<(), E>,
{
    replace_through(disk, path, true, fill)
}

fn replace_through<E, F>(
    disk: &dyn Disk,
    path: &Path,
    direct: bool,
    fill: F,
) -> Result<(), ReplaceError<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(&mut DiskWriter<'_>) -> Result<(), E>,
{
    let tmp = tmp_path(path);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplaceError::Io { path, source }
    };
    let result = (|| {
        let file = disk.create(&tmp).map_err(io_err(&tmp))?;
        let appender = if direct {
            match open_direct(&tmp).map_err(io_err(&tmp))? {
                Some(d) => Some(Appender::new(&file, Some(d), 0).map_err(io_err(&tmp))?),
                None => None,
            }
        } else {
            None
        };
        let mut w = DiskWriter::new(disk, &file, &tmp, appender);
        fill(&mut w).map_err(ReplaceError::Fill)?;
        w.flush().map_err(io_err(&tmp))?;
        drop(w);
        disk.sync(&file, &tmp).map_err(io_err(&tmp))?;
        drop(file);
        disk.rename(&tmp, path).map_err(io_err(path))?;
        let dir = parent_dir(path);
        disk.sync_dir(dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = disk.remove(&tmp);
    }
    result
}

/// A buffered writer onto a file through a [`Disk`], from offset 0: what a
/// replacement's `fill` writes into.
pub struct DiskWriter<'a> {
    disk: &'a dyn Disk,
    file: &'a File,
    path: &'a Path,
    /// Where the buffered bytes go.
    at: u64,
    buf: Vec<u8>,
    /// Past the page cache: the appender buffers instead.
    direct: Option<Appender>,
}

impl<'a> DiskWriter<'a> {
    const CAPACITY: usize = 256 << 10;

    fn new(disk: &'a dyn Disk, file: &'a File, path: &'a Path, direct: Option<Appender>) -> Self {
        DiskWriter {
            disk,
            file,
            path,
            at: 0,
            buf: Vec::new(),
            direct,
        }
    }
}

impl Write for DiskWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(a) = &mut self.direct {
            a.append(self.disk, self.file, self.path, data)?;
            return Ok(data.len());
        }
        if self.buf.len() + data.len() > Self::CAPACITY {
            self.flush()?;
        }
        if data.len() >= Self::CAPACITY {
            self.disk.write_at(self.file, self.path, data, self.at)?;
            self.at += data.len() as u64;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(a) = &mut self.direct {
            return a.flush(self.disk, self.file, self.path);
        }
        if !self.buf.is_empty() {
            self.disk
                .write_at(self.file, self.path, &self.buf, self.at)?;
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod fault;

#[cfg(test)]
mod tests {
    use super::fault::{is_crash, FaultDisk, CUTS};
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

    /// Bytes that tell one offset from another.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    #[test]
    fn an_appender_past_the_page_cache_writes_exactly_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = OsDisk.create(&path).unwrap();
        let direct = open_direct(&path)
            .unwrap()
            .expect("O_DIRECT on the test's disk");
        let mut a = Appender::new(&file, Some(direct), 0).unwrap();
        let mut want = Vec::new();
        // Pieces of every size around a block and the buffer, flushed at odd places:
        // whole blocks, a padded last block cut back, that block written again.
        let sizes = [1, 31, 4096, 4095, 48, (1 << 20) + 7, 3, 8192, 2 << 20, 100];
        for (i, n) in sizes.into_iter().enumerate() {
            let piece = pattern(n, i as u8);
            a.append(&OsDisk, &file, &path, &piece).unwrap();
            want.extend_from_slice(&piece);
            assert_eq!(a.position(), want.len() as u64);
            if i % 3 == 1 {
                a.flush(&OsDisk, &file, &path).unwrap();
                assert_eq!(fs::read(&path).unwrap(), want, "after piece {i}");
            }
        }
        a.flush(&OsDisk, &file, &path).unwrap();
        a.flush(&OsDisk, &file, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), want);
        // Going on from an unaligned end of an existing file, as a resumed log does.
        drop(a);
        let direct = open_direct(&path).unwrap();
        let mut a = Appender::new(&file, direct, want.len() as u64).unwrap();
        let more = pattern(5000, 99);
        a.append(&OsDisk, &file, &path, &more).unwrap();
        a.flush(&OsDisk, &file, &path).unwrap();
        want.extend_from_slice(&more);
        assert_eq!(fs::read(&path).unwrap(), want);
        // And a block reader gives the same bytes back at any offset, in any size.
        let mut r = BlockReader::open(&file, &path).unwrap();
        assert!(r.direct.is_some());
        for (at, n) in [
            (0, 48),
            (47, 4100),
            (4095, 2),
            (1 << 20, (1 << 20) + 3),
            (5, 1),
        ] {
            let mut out = vec![0; n];
            r.read_exact_at(&mut out, at as u64).unwrap();
            assert_eq!(out, want[at..at + n], "{n} bytes at {at}");
        }
        let end = want.len() as u64;
        let mut out = vec![0; 10];
        let e = r.read_exact_at(&mut out, end - 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_old_file_or_the_new_one() {
        // Large enough for several buffered writes.
        let new: Vec<u8> = (0..(600u32 << 10)).map(|i| (i % 251) as u8).collect();
        for cut in CUTS {
            for k in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("state.json");
                replace(&path, b"old").unwrap();
                let disk = FaultDisk::default();
                disk.crash_after(k, cut);
                let result = replace_on(&disk, &path, &new);
                let got = fs::read(&path).unwrap();
                assert!(got == b"old" || got == new, "k {k} {cut:?}: a mix");
                if !disk.crashed() {
                    result.unwrap();
                    assert_eq!(got, new);
                    assert!(!tmp_path(&path).exists());
                    break;
                }
                match result {
                    Err(ReplaceError::Io { source, .. }) => assert!(is_crash(&source)),
                    other => panic!("k {k}: {other:?}"),
                }
                // Once renamed, the new file stays unless the cut loses the rename.
                if k >= 4 && !cut.lose_renames {
                    assert_eq!(got, new, "k {k} {cut:?}");
                }
                let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "k {k} {cut:?}");
            }
        }
    }

    #[test]
    fn an_error_at_any_step_before_the_rename_keeps_the_old_file_and_says_why() {
        for errno in [libc::ENOSPC, libc::EIO] {
            for k in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("state.json");
                replace(&path, b"old").unwrap();
                let disk = FaultDisk::default();
                disk.fail_at(k, errno);
                let result = replace_on(&disk, &path, b"new");
                let taken = disk.steps();
                match result {
                    Ok(()) => {
                        assert!(k >= taken, "k {k}: the failure was not reported");
                        assert_eq!(fs::read(&path).unwrap(), b"new");
                        break;
                    }
                    Err(ReplaceError::Io { path: on, source }) => {
                        assert_eq!(source.raw_os_error(), Some(errno), "k {k}");
                        // Create, write, fsync and rename fail before the file is
                        // replaced: the old one stays; a failed directory fsync comes
                        // after it.
                        let want: &[u8] = if k < 4 { b"old" } else { b"new" };
                        assert_eq!(fs::read(&path).unwrap(), want, "k {k}");
                        assert!(!tmp_path(&path).exists(), "k {k}: temp file left");
                        let shown =
                            ReplaceError::<std::convert::Infallible>::Io { path: on, source }
                                .to_string();
                        let cause = io::Error::from_raw_os_error(errno).to_string();
                        assert!(shown.contains(&cause), "k {k}: {shown}");
                    }
                    Err(ReplaceError::Fill(never)) => match never {},
                }
            }
        }
    }
}
