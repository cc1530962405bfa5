//! A volume: one sparse file of fixed size, read and written through the io engine.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::engine::{Engine, Op};
use super::VolumeError;

pub struct Volume {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    block_size: u32,
    engine: Engine,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("engine", &self.engine.name())
            .finish()
    }
}

impl Volume {
    /// Opens the backing file at `path`, creating it (and its parent directory) as a sparse
    /// file of `size` bytes if absent. An existing shorter file is extended (sparsely); an
    /// existing longer one is refused, as shrinking would drop data.
    pub fn open_or_create(
        path: &Path,
        size: u64,
        block_size: u32,
        engine: Engine,
    ) -> Result<Volume, VolumeError> {
        if !block_size.is_power_of_two()
            || !(512..=65536).contains(&block_size)
            || size == 0
            || !size.is_multiple_of(u64::from(block_size))
        {
            return Err(VolumeError::InvalidGeometry { size, block_size });
        }
        let io_err = |source: io::Error| VolumeError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(VolumeError::NotAFile {
                path: path.display().to_string(),
            });
        }
        let file_size = meta.len();
        if file_size > size {
            return Err(VolumeError::FileTooLarge {
                path: path.display().to_string(),
                file_size,
                size,
            });
        }
        if file_size < size {
            // set_len past the end leaves a hole: no blocks are allocated.
            file.set_len(size).map_err(io_err)?;
        }
        Ok(Volume {
            path: path.to_path_buf(),
            file: Arc::new(file),
            size,
            block_size,
            engine,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The engine this volume runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads `len` bytes at `offset`. Never-written ranges read as zeros.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
        self.check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.run(Op::Read { offset, len }).await
    }

    /// Writes `data` at `offset`. With `fua`, the data is on stable storage when this
    /// returns (RWF_DSYNC, or write + fdatasync).
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), VolumeError> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.run(Op::Write { offset, data, fua }).await.map(drop)
    }

    /// Makes every completed write durable (fdatasync).
    pub async fn flush(&self) -> Result<(), VolumeError> {
        self.run(Op::Flush).await.map(drop)
    }

    /// fdatasync on the calling thread, without the engine: for shutdown, when the engine
    /// may already be stopping. Blocks.
    pub fn sync_blocking(&self) -> Result<(), VolumeError> {
        self.file.sync_data().map_err(|e| self.io_error(e))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    async fn run(&self, op: Op) -> Result<Bytes, VolumeError> {
        self.engine
            .submit(Arc::clone(&self.file), op)
            .await?
            .map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: io::Error) -> VolumeError {
        VolumeError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}
