//! Volumes: a sparse file of fixed size served through an io engine.
//!
//! CONTRACT (the server codes against it):
//! - `EngineKind::{Auto, Uring, Threads}` with `FromStr` ("auto", "uring", "threads") and
//!   `Display`.
//! - `Engine::start(kind) -> Result<Engine, VolumeError>`: cheap `Clone` handle, shared by
//!   all volumes; `Auto` tries io_uring and falls back to threads. `Engine::name()`.
//! - `Volume::open_or_create(path, size, block_size, engine)`: sparse file, created if absent.
//! - `Volume::read(offset, len) -> Bytes`, `Volume::write(offset, Bytes, fua)`,
//!   `Volume::flush()`, all async; `Volume::sync_blocking()` for shutdown.
//!
//! Layout: `engine` holds the two io engines (io_uring on one dedicated ring thread, and a
//! pool of pread/pwrite threads), both fed through bounded request channels and answering
//! through a oneshot per request. By default the io_uring engine sends buffered writes to
//! its own pwrite pool (see [`EngineConfig::uring_writes_on_pool`]): ext4 cannot do them
//! asynchronously, and io_uring's fallback serializes them. [`Volume`] owns the file,
//! checks ranges and turns engine errors into [`VolumeError`].

pub mod clone;
mod engine;
mod inline;
mod ranges;
// The layout STYLE.md names: src/volume/volume.rs holds `Volume`.
#[allow(clippy::module_inception)]
mod volume;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use clone::BaseImage;
pub use engine::{Engine, EngineConfig, SLOW_IO_MS};
pub use volume::{allocation, Exclusive, Volume};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("write tracking failed")]
    Tracking(#[source] crate::tracking::TrackingError),
    #[error("the volume is served without write tracking")]
    NotTracked,
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("io engine stopped")]
    EngineStopped,
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[source] std::io::Error),
    #[error("io_uring lacks opcode {opcode} (kernel too old?)")]
    UringOpcodeMissing { opcode: &'static str },
    #[error("could not start the io engine thread: {0}")]
    EngineSpawn(#[source] std::io::Error),
    #[error("range {offset}+{len} is beyond the volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("{path} holds {file_size} bytes, more than the volume size {size}")]
    FileTooLarge {
        path: String,
        file_size: u64,
        size: u64,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: String },
    #[error("invalid geometry: size {size} with block size {block_size} (block size must be a power of two from 512 to 65536, size a non-zero multiple of it)")]
    InvalidGeometry { size: u64, block_size: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring when the kernel allows it, else threads.
    #[default]
    Auto,
    Uring,
    Threads,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown io engine (expected auto, uring or threads)")]
pub struct UnknownEngineKind;

impl FromStr for EngineKind {
    type Err = UnknownEngineKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineKind::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(EngineKind::Uring),
            "threads" | "thread" => Ok(EngineKind::Threads),
            _ => Err(UnknownEngineKind),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Auto => "auto",
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        })
    }
}
