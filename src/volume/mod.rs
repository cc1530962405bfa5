//! Volumes: a sparse file of fixed size served through an io engine.
//!
//! CONTRACT (implemented by the volume work; the server codes against it):
//! - `EngineKind::{Auto, Uring, Threads}` with `FromStr` ("auto", "uring", "threads").
//! - `Engine::start(kind) -> Result<Engine, VolumeError>`: cheap `Clone` handle, shared by
//!   all volumes; `Auto` tries io_uring and falls back to threads. `Engine::name()`.
//! - `Volume::open_or_create(path, size, block_size, engine)`: sparse file, created if absent.
//! - `Volume::read(offset, len) -> Bytes`, `Volume::write(offset, Bytes, fua)`,
//!   `Volume::flush()`, all async; `Volume::sync_blocking()` for shutdown.

use std::path::Path;

use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
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
    #[error("range {offset}+{len} is beyond the volume size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Auto,
    Uring,
    Threads,
}

#[derive(Clone)]
pub struct Engine;

impl Engine {
    pub fn start(_kind: EngineKind) -> Result<Engine, VolumeError> {
        todo!()
    }
    pub fn name(&self) -> &'static str {
        todo!()
    }
}

pub struct Volume;

impl Volume {
    pub fn open_or_create(
        _path: &Path,
        _size: u64,
        _block_size: u32,
        _engine: Engine,
    ) -> Result<Volume, VolumeError> {
        todo!()
    }
    pub fn size(&self) -> u64 {
        todo!()
    }
    pub fn block_size(&self) -> u32 {
        todo!()
    }
    pub async fn read(&self, _offset: u64, _len: usize) -> Result<Bytes, VolumeError> {
        todo!()
    }
    pub async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), VolumeError> {
        todo!()
    }
    pub async fn flush(&self) -> Result<(), VolumeError> {
        todo!()
    }
    pub fn sync_blocking(&self) -> Result<(), VolumeError> {
        todo!()
    }
}
