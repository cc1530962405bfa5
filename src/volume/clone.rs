//! Copy-on-write clones: a volume whose file holds only what was written to it, every
//! other byte read from a base image (a DR drill's clone of a recovery point).
//!
//! The unit is the grain, 4 KiB, the file system's block: a grain is written when the
//! volume's file holds it (allocated), so what was written survives a restart without a
//! map of its own. A write that covers part of a grain not written yet first reads the
//! rest of the grain from the base and writes the whole grain; the volume holds whole
//! grains for every command on a clone (exclusively for such a write), so two writes to
//! parts of one grain cannot lose each other. A deallocation writes zeros (a hole would
//! read the base again). Reads take the set of written grains before they read the
//! file: a grain written meanwhile reads as before it, never as a mix.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::RwLock;
use roaring::RoaringBitmap;

/// The clone's unit: whole grains are read from the base or from the file.
pub const GRAIN: u64 = 4096;

/// What a clone reads where it was never written.
pub trait BaseImage: Send + Sync {
    /// The base's `buf.len()` bytes at `offset`. Blocking.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

pub(super) struct CloneBase {
    image: Arc<dyn BaseImage>,
    /// Grains the volume's file holds: its allocated blocks at open, and every grain
    /// written since.
    written: RwLock<RoaringBitmap>,
}

impl CloneBase {
    /// The clone whose file is `file` (`size` bytes) over `image`.
    pub(super) fn open(file: &File, size: u64, image: Arc<dyn BaseImage>) -> io::Result<Self> {
        if size.div_ceil(GRAIN) > u64::from(u32::MAX) {
            return Err(io::Error::other("a clone of over 16 TiB is not supported"));
        }
        let mut written = RoaringBitmap::new();
        for (offset, len, mapped) in super::allocation(file, 0, size)? {
            if mapped {
                // A partly allocated grain was written whole (writes cover whole grains).
                written.insert_range(grain_range(offset, len));
            }
        }
        Ok(CloneBase {
            image,
            written: RwLock::new(written),
        })
    }

    /// `[offset, offset + len)` widened to whole grains.
    pub(super) fn widen(offset: u64, len: u64) -> (u64, u64) {
        let start = offset / GRAIN * GRAIN;
        let end = (offset + len).div_ceil(GRAIN) * GRAIN;
        (start, end - start)
    }

    /// A write of `[offset, offset + len)` covers part of a grain not written yet: it
    /// must read the rest of that grain from the base first.
    pub(super) fn needs_fill(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let written = self.written.read();
        let partial = |g: u64| {
            let (lo, hi) = (g * GRAIN, (g + 1) * GRAIN);
            (offset > lo || end < hi) && !written.contains(g as u32)
        };
        partial(offset / GRAIN) || partial((end - 1) / GRAIN)
    }

    /// The parts of `[offset, offset + len)` in grains not written yet, in order.
    pub(super) fn unwritten(&self, offset: u64, len: u64) -> Vec<Range<u64>> {
        let end = offset + len;
        let written = self.written.read();
        let mut out: Vec<Range<u64>> = Vec::new();
        for g in offset / GRAIN..end.div_ceil(GRAIN) {
            if written.contains(g as u32) {
                continue;
            }
            let r = (g * GRAIN).max(offset)..((g + 1) * GRAIN).min(end);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Reads the base into the parts of `buf` (which holds the bytes at `offset`) that
    /// `holes` names (from [`CloneBase::unwritten`]).
    pub(super) fn fill(&self, offset: u64, buf: &mut [u8], holes: &[Range<u64>]) -> io::Result<()> {
        for h in holes {
            let part = &mut buf[(h.start - offset) as usize..(h.end - offset) as usize];
            self.image.read(h.start, part)?;
        }
        Ok(())
    }

    /// Whole grains `[offset, offset + len)` are in the file now.
    pub(super) fn mark(&self, offset: u64, len: u64) {
        self.written.write().insert_range(grain_range(offset, len));
    }
}

/// The grains `[offset, offset + len)` touches.
fn grain_range(offset: u64, len: u64) -> Range<u32> {
    (offset / GRAIN) as u32..(offset + len).div_ceil(GRAIN) as u32
}
