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
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{EngineKind, VolumeError};

/// Requests queued towards an engine before `submit` waits (backpressure to the caller).
const CHANNEL_DEPTH: usize = 1024;

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
    /// `None` only while dropping, so the engine sees the channel closed before it is woken.
    tx: Option<mpsc::Sender<Request>>,
    /// Set for io_uring: the ring thread sleeps in the kernel and needs an explicit wake.
    waker: Option<Arc<uring::Waker>>,
}

impl Drop for Shared {
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

impl Engine {
    /// Starts an engine. `Auto` tries io_uring and falls back to the thread pool; which one
    /// runs, and why a fallback happened, is logged here once.
    pub fn start(kind: EngineKind) -> Result<Engine, VolumeError> {
        match kind {
            EngineKind::Uring => {
                let e = Self::start_uring()?;
                tracing::info!(engine = "io_uring", requested = %kind, "io engine started");
                Ok(e)
            }
            EngineKind::Threads => {
                let e = Self::start_threads()?;
                tracing::info!(engine = "threads", requested = %kind, workers = threads::WORKERS, "io engine started");
                Ok(e)
            }
            EngineKind::Auto => match Self::start_uring() {
                Ok(e) => {
                    tracing::info!(engine = "io_uring", requested = %kind, "io engine started");
                    Ok(e)
                }
                Err(why) => {
                    let e = Self::start_threads()?;
                    tracing::info!(
                        engine = "threads",
                        requested = %kind,
                        workers = threads::WORKERS,
                        fallback_reason = %why,
                        "io engine started: io_uring unavailable, using the thread pool"
                    );
                    Ok(e)
                }
            },
        }
    }

    fn start_uring() -> Result<Engine, VolumeError> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let waker = uring::start(rx)?;
        Ok(Engine {
            shared: Arc::new(Shared {
                name: "io_uring",
                tx: Some(tx),
                waker: Some(waker),
            }),
        })
    }

    fn start_threads() -> Result<Engine, VolumeError> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        threads::start(rx)?;
        Ok(Engine {
            shared: Arc::new(Shared {
                name: "threads",
                tx: Some(tx),
                waker: None,
            }),
        })
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
        let tx = self.shared.tx.as_ref().ok_or(VolumeError::EngineStopped)?;
        let (reply, done) = oneshot::channel();
        tx.send(Request { file, op, reply })
            .await
            .map_err(|_| VolumeError::EngineStopped)?;
        if let Some(w) = &self.shared.waker {
            w.wake_if_sleeping();
        }
        done.await.map_err(|_| VolumeError::EngineStopped)
    }
}
