//! The io engines. Both take [`Request`]s over one bounded channel and answer each through
//! its own oneshot, so a volume does not care which one runs.
//!
//! - [`uring`]: one dedicated thread owns an io_uring. Buffers and the file stay in its
//!   in-flight table until the completion arrives.
//! - [`threads`]: a pool of worker threads doing `pread`/`pwrite`; the fallback where
//!   io_uring cannot be set up, or when asked for.

mod threads;
mod uring;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{EngineKind, VolumeError};

/// Requests queued towards an engine before `submit` waits (backpressure to the caller).
const CHANNEL_DEPTH: usize = 1024;

/// Set in the environment of a build with the `fault-injection` feature (the tests'),
/// every read, write and flush answers this many milliseconds after the file did, as on
/// a slow disk; volumes then skip their inline RWF_NOWAIT attempts, so every operation
/// is delayed. Other builds do not look at it.
pub const SLOW_IO_MS: &str = "TWINLUN_TEST_SLOW_IO_MS";

#[cfg(test)]
thread_local! {
    /// Makes io_uring setup fail for engines started on this thread, as on a kernel
    /// without it.
    pub(crate) static FAIL_URING_FOR_TEST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What to do on a file.
#[derive(Debug)]
pub(crate) enum Op {
    /// Read `len` bytes at `offset`; bytes past the end of the file read as zeros.
    Read { offset: u64, len: usize },
    /// Write `data` at `offset`; `fua` makes it durable before it completes.
    Write { offset: u64, data: Bytes, fua: bool },
    /// fdatasync.
    Flush,
}

/// One operation and where its outcome goes. Reads answer with the bytes read; writes and
/// flushes with an empty `Bytes`.
pub(crate) struct Request {
    pub(crate) file: Arc<File>,
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<io::Result<Bytes>>,
}

/// A handle on the process's io engine. Cloning is cheap; the engine stops when the last
/// handle (including those held by volumes) is dropped.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    name: &'static str,
    /// One per ring thread (io_uring) or one for the whole pool (threads). Requests are
    /// spread over the lanes round-robin; they carry no ordering between them (a flush is
    /// an fdatasync of the file, which covers writes completed on any lane).
    lanes: Vec<Lane>,
    next: AtomicUsize,
    /// When set, writes go here instead (see `EngineConfig::uring_writes_on_pool`).
    write_lane: Option<Lane>,
    /// See `EngineConfig::inline_nowait`.
    inline_nowait: bool,
    /// Added to every operation's completion ([`SLOW_IO_MS`]); `None` outside tests.
    slow_completion: Option<Duration>,
}

struct Lane {
    /// `None` only while dropping, so the engine sees the channel closed before it is woken.
    tx: Option<mpsc::Sender<Request>>,
    /// Set for io_uring: the ring thread sleeps in the kernel and needs an explicit wake.
    waker: Option<Arc<uring::Waker>>,
}

impl Drop for Lane {
    // Also runs for the lanes already started when a later ring fails to start.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = &self.waker {
            w.wake_always();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// Tuning of an engine; `Default` is what `Engine::start` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// io_uring: ring threads. Requests are spread over them round-robin.
    pub rings: usize,
    /// Thread pool: worker threads (also the io_uring engine's write pool).
    pub workers: usize,
    /// io_uring: run writes on a pool of `workers` pwrite threads, reads and flushes on
    /// the ring. Filesystems without async buffered writes (ext4 among them) make io_uring
    /// punt every buffered write to its io-wq, which serializes writes to one file on a
    /// single kernel worker per ring: measured on ext4 here, that was 1.5-2x slower than
    /// the pool at 4 KiB QD32 and slower at QD1 too (one more thread hop).
    pub uring_writes_on_pool: bool,
    /// Try each read first on the calling thread with RWF_NOWAIT: the kernel completes
    /// it from the page cache without sleeping, or says EAGAIN and the request goes to
    /// the engine as usual. A cached 4 KiB read then costs one syscall instead of two
    /// thread hand-offs; an uncached one costs one failed syscall more. Non-FUA writes
    /// are tried the same way where the filesystem supports RWF_NOWAIT for buffered
    /// writes (ext4 does not: EOPNOTSUPP, remembered per volume).
    pub inline_nowait: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rings: uring::RINGS,
            workers: threads::WORKERS,
            uring_writes_on_pool: true,
            inline_nowait: true,
        }
    }
}

impl Engine {
    /// Starts an engine with the default tuning. `Auto` tries io_uring and falls back to
    /// the thread pool; which one runs, and why a fallback happened, is logged here once.
    pub fn start(kind: EngineKind) -> Result<Engine, VolumeError> {
        Self::start_with(kind, EngineConfig::default())
    }

    /// [`Engine::start`] with explicit tuning.
    pub fn start_with(kind: EngineKind, config: EngineConfig) -> Result<Engine, VolumeError> {
        let rings = config.rings.max(1);
        let workers = config.workers.max(1);
        let uring = match kind {
            EngineKind::Threads => None,
            EngineKind::Uring => Some(Self::start_uring(rings, &config)?),
            EngineKind::Auto => match Self::start_uring(rings, &config) {
                Ok(e) => Some(e),
                Err(why) => {
                    let e = Self::start_threads(workers, config.inline_nowait)?;
                    tracing::info!(
                        engine = e.name(),
                        requested = %kind,
                        workers,
                        fallback_reason = %why,
                        "io engine started: io_uring unavailable, using the thread pool"
                    );
                    return Ok(e);
                }
            },
        };
        let e = match uring {
            Some(e) => {
                tracing::info!(
                    engine = e.name(),
                    requested = %kind,
                    rings,
                    writes_on_pool = config.uring_writes_on_pool,
                    "io engine started"
                );
                e
            }
            None => {
                let e = Self::start_threads(workers, config.inline_nowait)?;
                tracing::info!(engine = e.name(), requested = %kind, workers, "io engine started");
                e
            }
        };
        Ok(e)
    }

    fn start_uring(rings: usize, config: &EngineConfig) -> Result<Engine, VolumeError> {
        #[cfg(test)]
        if FAIL_URING_FOR_TEST.with(std::cell::Cell::get) {
            let e = io::Error::from_raw_os_error(libc::ENOSYS);
            return Err(VolumeError::UringUnavailable(e));
        }
        let mut lanes = Vec::with_capacity(rings);
        for _ in 0..rings {
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let waker = uring::start(rx)?;
            lanes.push(Lane {
                tx: Some(tx),
                waker: Some(waker),
            });
        }
        let write_lane = if config.uring_writes_on_pool {
            Some(Self::pool_lane(config.workers.max(1))?)
        } else {
            None
        };
        Ok(Engine::from_lanes(
            "io_uring",
            lanes,
            write_lane,
            config.inline_nowait,
        ))
    }

    fn start_threads(workers: usize, inline_nowait: bool) -> Result<Engine, VolumeError> {
        let lane = Self::pool_lane(workers)?;
        Ok(Engine::from_lanes(
            "threads",
            vec![lane],
            None,
            inline_nowait,
        ))
    }

    fn pool_lane(workers: usize) -> Result<Lane, VolumeError> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        threads::start(rx, workers)?;
        Ok(Lane {
            tx: Some(tx),
            waker: None,
        })
    }

    fn from_lanes(
        name: &'static str,
        lanes: Vec<Lane>,
        write_lane: Option<Lane>,
        inline_nowait: bool,
    ) -> Engine {
        let slow_completion = slow_completion_for_test();
        Engine {
            shared: Arc::new(Shared {
                name,
                lanes,
                next: AtomicUsize::new(0),
                write_lane,
                inline_nowait: inline_nowait && slow_completion.is_none(),
                slow_completion,
            }),
        }
    }

    /// Whether volumes try RWF_NOWAIT I/O on the caller's thread first.
    pub fn inline_nowait(&self) -> bool {
        self.shared.inline_nowait
    }

    /// An engine that has died: its channel is closed (`accept: false`), or it takes
    /// requests and drops them unanswered, as a thread that panicked would (`accept: true`).
    #[cfg(test)]
    pub(crate) fn dead_for_test(accept: bool) -> Engine {
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        if accept {
            std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        }
        let lane = Lane {
            tx: Some(tx),
            waker: None,
        };
        Engine::from_lanes("dead", vec![lane], None, false)
    }

    /// "io_uring" or "threads".
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// Runs `op` on `file`. The outer error means the engine is gone; the inner one is the
    /// operation's own failure.
    ///
    /// If the caller stops waiting, the operation still runs to completion (the engine owns
    /// its buffers), its result is dropped.
    pub(crate) async fn submit(
        &self,
        file: Arc<File>,
        op: Op,
    ) -> Result<io::Result<Bytes>, VolumeError> {
        let lane = match (&op, &self.shared.write_lane) {
            (Op::Write { .. }, Some(lane)) => lane,
            _ => {
                let lanes = &self.shared.lanes;
                let i = match lanes.len() {
                    0 | 1 => 0,
                    n => self.shared.next.fetch_add(1, Ordering::Relaxed) % n,
                };
                lanes.get(i).ok_or(VolumeError::EngineStopped)?
            }
        };
        let tx = lane.tx.as_ref().ok_or(VolumeError::EngineStopped)?;
        let (reply, done) = oneshot::channel();
        tx.send(Request { file, op, reply })
            .await
            .map_err(|_| VolumeError::EngineStopped)?;
        if let Some(w) = &lane.waker {
            w.wake_if_sleeping();
        }
        let outcome = done.await.map_err(|_| VolumeError::EngineStopped);
        if let Some(late) = self.shared.slow_completion {
            tokio::time::sleep(late).await;
        }
        outcome
    }
}

/// The completion delay [`SLOW_IO_MS`] asks for, in a build with the `fault-injection`
/// feature; logged once per engine, since it makes every operation slow.
#[cfg(feature = "fault-injection")]
fn slow_completion_for_test() -> Option<Duration> {
    let ms: u64 = std::env::var(SLOW_IO_MS).ok()?.parse().ok()?;
    tracing::warn!(
        delay_ms = ms,
        "{SLOW_IO_MS} is set: every volume read, write and flush answers late"
    );
    Some(Duration::from_millis(ms))
}

#[cfg(not(feature = "fault-injection"))]
fn slow_completion_for_test() -> Option<Duration> {
    None
}
