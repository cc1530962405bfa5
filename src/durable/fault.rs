//! A [`Disk`] for tests that crashes or fails where it is told.
//!
//! Every operation is one step. [`FaultDisk::crash_after`] makes the `k`-th step and
//! every one after it fail with an injected crash, as if the process died there: a
//! write at the crash tears (its first half lands). With a [`PowerCut`], the crash also
//! loses what a power cut may lose: every write since its file's last fsync, and every
//! rename since its directory's last fsync. [`FaultDisk::fail_at`] makes one step fail
//! with an OS error (ENOSPC, EIO) and the rest go on.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{parent_dir, Disk, OsDisk};

/// The error of every step from an injected crash on.
#[derive(Debug, thiserror::Error)]
#[error("injected crash")]
pub struct InjectedCrash;

/// True when `e` is a [`FaultDisk`]'s injected crash.
pub fn is_crash(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InjectedCrash>())
}

/// The cuts a crash test tries: a process crash, and power cuts losing unsynced
/// writes, renames, or both.
pub const CUTS: [PowerCut; 4] = [
    PowerCut {
        lose_writes: false,
        lose_renames: false,
    },
    PowerCut {
        lose_writes: true,
        lose_renames: false,
    },
    PowerCut {
        lose_writes: false,
        lose_renames: true,
    },
    PowerCut::ALL,
];

/// What an injected crash loses besides the step it stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerCut {
    /// Writes to a file since its last fsync.
    pub lose_writes: bool,
    /// Renames since the last fsync of the directory.
    pub lose_renames: bool,
}

impl PowerCut {
    /// Everything a power cut may lose.
    pub const ALL: PowerCut = PowerCut {
        lose_writes: true,
        lose_renames: true,
    };
}

#[derive(Debug)]
struct UnsyncedWrite {
    path: PathBuf,
    at: u64,
    old: Vec<u8>,
    old_len: u64,
}

#[derive(Debug)]
struct UnsyncedRename {
    from: PathBuf,
    to: PathBuf,
    /// What `to` held before, when it existed.
    old_to: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct FaultDisk {
    steps: AtomicU64,
    /// `u64::MAX`: never.
    crash_after: AtomicU64,
    crashed: AtomicBool,
    cut: Mutex<PowerCut>,
    /// The step that fails, and its errno.
    fail: Mutex<Option<(u64, i32)>>,
    writes: Mutex<Vec<UnsyncedWrite>>,
    renames: Mutex<Vec<UnsyncedRename>>,
}

impl Default for FaultDisk {
    fn default() -> Self {
        FaultDisk {
            steps: AtomicU64::new(0),
            crash_after: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
            cut: Mutex::default(),
            fail: Mutex::default(),
            writes: Mutex::default(),
            renames: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultDisk {
    /// Counting from now, the `k`-th step (0 is the next) and all after it crash,
    /// losing what `cut` says.
    pub fn crash_after(&self, k: u64, cut: PowerCut) {
        self.steps.store(0, Ordering::Relaxed);
        self.crashed.store(false, Ordering::Relaxed);
        *lock(&self.cut) = cut;
        self.crash_after.store(k, Ordering::Relaxed);
    }

    /// Counting from now, the `k`-th step fails with `errno`, doing nothing.
    pub fn fail_at(&self, k: u64, errno: i32) {
        self.steps.store(0, Ordering::Relaxed);
        *lock(&self.fail) = Some((k, errno));
    }

    /// No more crashes or failures.
    pub fn disarm(&self) {
        self.crash_after.store(u64::MAX, Ordering::Relaxed);
        *lock(&self.fail) = None;
    }

    /// Steps taken since the last `crash_after` or `fail_at`.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// True once a crash has happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::Relaxed)
    }

    fn step(&self) -> io::Result<()> {
        let n = self.steps.fetch_add(1, Ordering::Relaxed);
        if n >= self.crash_after.load(Ordering::Relaxed) {
            if !self.crashed.swap(true, Ordering::Relaxed) {
                self.power_cut();
            }
            return Err(io::Error::other(InjectedCrash));
        }
        if let Some((k, errno)) = *lock(&self.fail) {
            if k == n {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }

    /// Undoes what the power cut loses, newest first.
    fn power_cut(&self) {
        let cut = *lock(&self.cut);
        if cut.lose_renames {
            let mut renames = lock(&self.renames);
            while let Some(r) = renames.pop() {
                if r.to.exists() {
                    let _ = fs::rename(&r.to, &r.from);
                }
                if let Some(old) = r.old_to {
                    let _ = OsDisk.create(&r.to).and_then(|f| f.write_all_at(&old, 0));
                }
            }
        }
        if cut.lose_writes {
            let mut writes = lock(&self.writes);
            while let Some(u) = writes.pop() {
                let Ok(file) = OpenOptions::new().write(true).open(&u.path) else {
                    continue;
                };
                let _ = file.write_all_at(&u.old, u.at);
                if file.metadata().is_ok_and(|m| m.len() > u.old_len) {
                    let _ = file.set_len(u.old_len);
                }
            }
        }
    }

    /// Notes what a write to `path` at `at` will overwrite.
    fn note_write(&self, file: &File, path: &Path, at: u64, len: usize) {
        if !lock(&self.cut).lose_writes {
            return;
        }
        let old_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let keep = old_len.saturating_sub(at).min(len as u64) as usize;
        let mut old = vec![0; keep];
        let _ = file.read_exact_at(&mut old, at);
        lock(&self.writes).push(UnsyncedWrite {
            path: path.to_owned(),
            at,
            old,
            old_len,
        });
    }

    /// `path` was fsynced, removed or recreated: its earlier writes cannot be lost.
    fn forget_writes(&self, path: &Path) {
        lock(&self.writes).retain(|u| u.path != path);
    }

    /// The step of a write of `buf` at `at` of `file`: at an injected crash its first
    /// half lands; otherwise what it overwrites is noted for a power cut to restore.
    fn step_write(&self, file: &File, path: &Path, buf: &[u8], at: u64) -> io::Result<()> {
        self.step().inspect_err(|e| {
            if is_crash(e) {
                let _ = file.write_all_at(&buf[..buf.len() / 2], at);
            }
        })?;
        self.note_write(file, path, at, buf.len());
        Ok(())
    }
}

impl Disk for FaultDisk {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.step()?;
        self.forget_writes(path);
        OsDisk.create(path)
    }

    fn write_at(&self, file: &File, path: &Path, buf: &[u8], at: u64) -> io::Result<()> {
        self.step_write(file, path, buf, at)?;
        file.write_all_at(buf, at)
    }

    /// Records the write as `write_at` does (a crash tears it through `file`), then
    /// writes through `direct`.
    fn write_direct(
        &self,
        direct: &File,
        file: &File,
        path: &Path,
        buf: &[u8],
        at: u64,
    ) -> io::Result<()> {
        self.step_write(file, path, buf, at)?;
        OsDisk.write_direct(direct, file, path, buf, at)
    }

    fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        self.step()?;
        file.sync_all()?;
        self.forget_writes(path);
        Ok(())
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.step()?;
        OsDisk.set_len(file, path, len)
    }

    fn reserve(&self, file: &File, path: &Path, at: u64, len: u64) -> io::Result<()> {
        self.step()?;
        OsDisk.reserve(file, path, at, len)
    }

    fn punch(&self, file: &File, path: &Path, at: u64, len: u64) -> io::Result<bool> {
        self.step()?;
        OsDisk.punch(file, path, at, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        let old_to = fs::read(to).ok();
        fs::rename(from, to)?;
        for u in lock(&self.writes).iter_mut() {
            if u.path == from {
                u.path = to.to_owned();
            }
        }
        lock(&self.renames).push(UnsyncedRename {
            from: from.to_owned(),
            to: to.to_owned(),
            old_to,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        OsDisk.sync_dir(dir)?;
        lock(&self.renames).retain(|r| parent_dir(&r.to) != dir);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        self.step()?;
        self.forget_writes(path);
        OsDisk.remove(path)
    }
}

/// The crash and error tests of one store's save, run in a fresh directory each time:
/// `prepare` saves the old state, `save` saves the new one through a [`FaultDisk`],
/// and `load` reads the directory back as a fresh start would.
///
/// - A crash at every step, under every cut in [`CUTS`]: `load` gives one of `accept`
///   (the old state or the new one; a store may list what else a restart handles).
/// - ENOSPC and EIO at every step: the save fails with an error whose cause chain
///   says the OS error, `load` gives one of `accept`, and no temporary file is left.
pub fn check_save<T, E>(
    prepare: impl Fn(&Path),
    save: impl Fn(&dyn Disk, &Path) -> Result<(), E>,
    load: impl Fn(&Path) -> T,
    accept: &[T],
) where
    T: PartialEq + std::fmt::Debug,
    E: std::error::Error + 'static,
{
    for cut in CUTS {
        for k in 0.. {
            let dir = tempfile::tempdir().expect("temp dir");
            prepare(dir.path());
            let disk = FaultDisk::default();
            disk.crash_after(k, cut);
            let result = save(&disk, dir.path());
            let got = load(dir.path());
            assert!(accept.contains(&got), "crash at step {k} {cut:?}: {got:?}");
            if !disk.crashed() {
                if let Err(e) = result {
                    panic!("no crash at step {k}, yet: {}", chain(&e));
                }
                break;
            }
        }
    }
    for errno in [libc::ENOSPC, libc::EIO] {
        let cause = io::Error::from_raw_os_error(errno).to_string();
        for k in 0.. {
            let dir = tempfile::tempdir().expect("temp dir");
            prepare(dir.path());
            let disk = FaultDisk::default();
            disk.fail_at(k, errno);
            let result = save(&disk, dir.path());
            let got = load(dir.path());
            assert!(accept.contains(&got), "{cause} at step {k}: {got:?}");
            let temps: Vec<_> = fs::read_dir(dir.path())
                .expect("read dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(temps.is_empty(), "{cause} at step {k}: {temps:?} left");
            match result {
                Ok(()) => {
                    assert!(k >= disk.steps(), "{cause} at step {k} was not reported");
                    break;
                }
                Err(e) => {
                    let text = chain(&e);
                    assert!(text.contains(&cause), "{cause} at step {k}: {text}");
                }
            }
        }
    }
}

/// An error and its causes, as a log line prints them.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
