//! The copy-on-write store of one snapshot: the old content of pages overwritten after
//! its cut. Pages live in memory while a shared [`MemoryBudget`] allows, then in an
//! append-only file in the spill directory. Dropping the store frees its memory and
//! removes its file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{PageIndex, TrackingError};

/// Bytes of preserved pages all stores sharing it may keep in memory.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    /// Bytes the stores sharing this budget keep in spill files (what did not fit),
    /// counted here so metrics read one atomic instead of every store's lock.
    spilled: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes of spill files of the live stores sharing this budget.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Removes spill files a crashed process left in `dir` (names `<volume>.cut-<id>.<n>.cow`);
/// call it at startup, before any snapshot exists. Returns how many it removed.
pub fn remove_stale_spill_files(dir: &Path) -> Result<usize, TrackingError> {
    let io = |source| TrackingError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".cow") && name.contains(".cut-") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| TrackingError::Io { path, source })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Where copy-on-write stores keep their pages.
#[derive(Clone, Debug)]
pub struct CowConfig {
    pub budget: Arc<MemoryBudget>,
    /// Directory for spill files (the data dir, or a folder in it).
    pub spill_dir: PathBuf,
}

#[derive(Debug)]
enum Slot {
    /// A page's place in the store's [`Slab`].
    Memory(u32),
    File(u64),
}

/// Pages a slab chunk holds: one allocation per chunk, not per page (a copy-on-write
/// fault happens on an initiator's write path, and a heap allocation per page there
/// cost about a tenth of the server's CPU while a snapshot was live).
const CHUNK_PAGES: usize = 64;

/// The memory of a store's in-memory pages: chunks of [`CHUNK_PAGES`] pages, with the
/// places of removed pages reused before a new chunk is allocated.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Box<[u8]>>,
    /// Places handed out so far (free ones included).
    used: u32,
    free: Vec<u32>,
}

impl Slab {
    fn page(&self, place: u32, page_bytes: usize) -> &[u8] {
        let (chunk, within) = (place as usize / CHUNK_PAGES, place as usize % CHUNK_PAGES);
        &self.chunks[chunk][within * page_bytes..(within + 1) * page_bytes]
    }

    fn page_mut(&mut self, place: u32, page_bytes: usize) -> &mut [u8] {
        let (chunk, within) = (place as usize / CHUNK_PAGES, place as usize % CHUNK_PAGES);
        &mut self.chunks[chunk][within * page_bytes..(within + 1) * page_bytes]
    }

    /// Stores `data` (one page) and returns its place.
    fn insert(&mut self, data: &[u8]) -> u32 {
        let place = self.take(data.len());
        self.page_mut(place, data.len()).copy_from_slice(data);
        place
    }

    /// A place for one page of `page_bytes`, its content whatever was there.
    fn take(&mut self, page_bytes: usize) -> u32 {
        match self.free.pop() {
            Some(place) => place,
            None => {
                let place = self.used;
                if place as usize == self.chunks.len() * CHUNK_PAGES {
                    self.chunks
                        .push(vec![0u8; CHUNK_PAGES * page_bytes].into_boxed_slice());
                }
                self.used += 1;
                place
            }
        }
    }

    fn remove(&mut self, place: u32) {
        self.free.push(place);
    }
}

/// Counters a store reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CowStats {
    pub pages: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
}

#[derive(Debug)]
pub struct CowStore {
    page_bytes: usize,
    config: CowConfig,
    spill_path: PathBuf,
    spill: Option<File>,
    spill_len: u64,
    slots: HashMap<PageIndex, Slot>,
    slab: Slab,
    memory_bytes: u64,
    /// False once a save has written a state file over the spill file's path.
    remove_on_drop: bool,
}

impl CowStore {
    /// An empty store; its spill file, `spill_name` in the spill directory, is created
    /// on the first page that does not fit the memory budget.
    pub fn new(config: CowConfig, page_bytes: usize, spill_name: &str) -> Self {
        let spill_path = config.spill_dir.join(spill_name);
        CowStore {
            page_bytes,
            config,
            spill_path,
            spill: None,
            spill_len: 0,
            slots: HashMap::new(),
            slab: Slab::default(),
            memory_bytes: 0,
            remove_on_drop: true,
        }
    }

    pub fn contains(&self, page: PageIndex) -> bool {
        self.slots.contains_key(&page)
    }

    /// Keeps `old` (exactly one page) as the content of `page`. A page already kept
    /// stays as first kept: its first overwrite after the cut is the one that counts.
    pub fn put(&mut self, page: PageIndex, old: &[u8]) -> Result<(), TrackingError> {
        if old.len() != self.page_bytes {
            return Err(TrackingError::PageLength {
                got: old.len(),
                want: self.page_bytes,
            });
        }
        if self.slots.contains_key(&page) {
            return Ok(());
        }
        let bytes = self.page_bytes as u64;
        let slot = if self.config.budget.try_reserve(bytes) {
            self.memory_bytes += bytes;
            Slot::Memory(self.slab.insert(old))
        } else {
            let at = self.spill_len;
            let file = self.spill_file()?;
            file.write_all_at(old, at)
                .map_err(|source| TrackingError::Io {
                    path: self.spill_path.clone(),
                    source,
                })?;
            self.spill_len += bytes;
            self.config
                .budget
                .spilled
                .fetch_add(bytes, Ordering::Relaxed);
            Slot::File(at)
        };
        self.slots.insert(page, slot);
        Ok(())
    }

    /// Keeps the content `fill` writes into a page-sized buffer as the content of
    /// `page`: in memory the buffer is the page's place in the store, so the old
    /// content is read once, straight where it is kept (this runs on an initiator's
    /// write path). A page already kept is left as it is and `fill` is not called.
    /// When `fill` fails nothing is kept and its error comes back as `Err(Ok(e))`;
    /// `Err(Err(e))` is the store's own failure.
    pub fn put_with<F>(
        &mut self,
        page: PageIndex,
        fill: F,
    ) -> Result<(), Result<std::io::Error, TrackingError>>
    where
        F: FnOnce(&mut [u8]) -> std::io::Result<()>,
    {
        if self.slots.contains_key(&page) {
            return Ok(());
        }
        let bytes = self.page_bytes as u64;
        if !self.config.budget.try_reserve(bytes) {
            let mut buf = vec![0; self.page_bytes];
            fill(&mut buf).map_err(Ok)?;
            return self.put(page, &buf).map_err(Err);
        }
        let place = self.slab.take(self.page_bytes);
        if let Err(e) = fill(self.slab.page_mut(place, self.page_bytes)) {
            self.slab.remove(place);
            self.config.budget.release(bytes);
            return Err(Ok(e));
        }
        self.memory_bytes += bytes;
        self.slots.insert(page, Slot::Memory(place));
        Ok(())
    }

    /// Forgets `page`: its memory goes back to the budget at once; a page in the spill
    /// file leaves a hole there until the store is dropped.
    pub fn remove(&mut self, page: PageIndex) {
        if let Some(Slot::Memory(place)) = self.slots.remove(&page) {
            self.slab.remove(place);
            let bytes = self.page_bytes as u64;
            self.memory_bytes -= bytes;
            self.config.budget.release(bytes);
        }
    }

    /// The kept content of `page` when it is kept in memory.
    pub fn page_in_memory(&self, page: PageIndex) -> Option<&[u8]> {
        match self.slots.get(&page) {
            Some(Slot::Memory(place)) => Some(self.slab.page(*place, self.page_bytes)),
            _ => None,
        }
    }

    /// Copies the kept content of `page` into `buf` (one page long). `Ok(false)` when the
    /// page was never kept.
    pub fn get(&self, page: PageIndex, buf: &mut [u8]) -> Result<bool, TrackingError> {
        if buf.len() != self.page_bytes {
            return Err(TrackingError::PageLength {
                got: buf.len(),
                want: self.page_bytes,
            });
        }
        match self.slots.get(&page) {
            None => Ok(false),
            Some(Slot::Memory(place)) => {
                buf.copy_from_slice(self.slab.page(*place, self.page_bytes));
                Ok(true)
            }
            Some(Slot::File(at)) => {
                let io = |source| TrackingError::Io {
                    path: self.spill_path.clone(),
                    source,
                };
                let file = self
                    .spill
                    .as_ref()
                    .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
                file.read_exact_at(buf, *at).map_err(io)?;
                Ok(true)
            }
        }
    }

    pub fn stats(&self) -> CowStats {
        CowStats {
            pages: self.slots.len() as u64,
            memory_bytes: self.memory_bytes,
            file_bytes: self.slots.len() as u64 * self.page_bytes as u64 - self.memory_bytes,
        }
    }

    pub fn spill_path(&self) -> &Path {
        &self.spill_path
    }

    /// A save replaced the file at `saved` (a rename over it): if that is this store's
    /// spill path, the file there is no longer this store's to remove.
    pub(crate) fn saved_as(&mut self, saved: &Path) {
        if self.spill_path == saved {
            self.remove_on_drop = false;
        }
    }

    /// The pages kept, for saving the store.
    pub(crate) fn pages(&self) -> roaring::RoaringBitmap {
        self.slots.keys().copied().collect()
    }

    /// A store over a file saved by [`super::persist`]: the pages of `kept`, in order,
    /// one after another from `data_start`. New pages are appended to the same file,
    /// which the store owns from now on (it removes it when dropped).
    pub(crate) fn from_saved(
        config: CowConfig,
        page_bytes: usize,
        path: PathBuf,
        file: File,
        kept: &roaring::RoaringBitmap,
        data_start: u64,
    ) -> Self {
        let bytes = page_bytes as u64;
        let spill_len = data_start + kept.len() * bytes;
        config
            .budget
            .spilled
            .fetch_add(spill_len, Ordering::Relaxed);
        let slots: HashMap<PageIndex, Slot> = kept
            .iter()
            .enumerate()
            .map(|(rank, page)| (page, Slot::File(data_start + rank as u64 * bytes)))
            .collect();
        CowStore {
            page_bytes,
            config,
            spill_path: path,
            spill: Some(file),
            spill_len,
            slots,
            slab: Slab::default(),
            memory_bytes: 0,
            remove_on_drop: true,
        }
    }

    fn spill_file(&mut self) -> Result<&File, TrackingError> {
        if self.spill.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::durable::PRIVATE_FILE)
                .open(&self.spill_path)
                .map_err(|source| TrackingError::Io {
                    path: self.spill_path.clone(),
                    source,
                })?;
            self.spill = Some(file);
        }
        // The branch above just filled it.
        Ok(self.spill.as_ref().expect("spill file opened above"))
    }
}

impl Drop for CowStore {
    fn drop(&mut self) {
        self.config.budget.release(self.memory_bytes);
        self.config
            .budget
            .spilled
            .fetch_sub(self.spill_len, Ordering::Relaxed);
        if self.spill.take().is_some() && self.remove_on_drop {
            if let Err(error) = std::fs::remove_file(&self.spill_path) {
                tracing::warn!(path = %self.spill_path.display(), %error, "could not remove copy-on-write spill file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; 4096]
    }

    #[test]
    fn memory_then_file_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(2 * 4096);
        let config = CowConfig {
            budget: budget.clone(),
            spill_dir: dir.path().to_owned(),
        };
        let mut store = CowStore::new(config.clone(), 4096, "a.cow");
        for p in 0..5u32 {
            store.put(p * 7, &page(p as u8 + 1)).unwrap();
        }
        // A second put of a kept page keeps the first content.
        store.put(0, &page(99)).unwrap();
        let stats = store.stats();
        assert_eq!(
            stats,
            CowStats {
                pages: 5,
                memory_bytes: 2 * 4096,
                file_bytes: 3 * 4096
            }
        );
        assert_eq!(budget.used(), 2 * 4096);
        assert_eq!(budget.spilled(), 3 * 4096);
        let path = store.spill_path().to_owned();
        assert!(path.exists());

        let mut buf = page(0);
        for p in 0..5u32 {
            assert!(store.get(p * 7, &mut buf).unwrap());
            assert_eq!(buf, page(p as u8 + 1));
        }
        assert!(!store.get(1, &mut buf).unwrap());
        assert!(matches!(
            store.put(1, &[0; 10]),
            Err(TrackingError::PageLength {
                got: 10,
                want: 4096
            })
        ));

        // A second store gets nothing from the exhausted budget: straight to file.
        let mut other = CowStore::new(config, 4096, "b.cow");
        other.put(1, &page(5)).unwrap();
        assert_eq!(other.stats().memory_bytes, 0);
        assert_eq!(budget.spilled(), 4 * 4096);

        drop(store);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.spilled(), 4096);
        assert!(!path.exists());
        drop(other);
        assert_eq!(budget.spilled(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn put_with_reads_in_place_and_a_failed_read_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(2 * 4096);
        let config = CowConfig {
            budget: budget.clone(),
            spill_dir: dir.path().to_owned(),
        };
        let mut store = CowStore::new(config, 4096, "w.cow");
        store
            .put_with(3, |b| {
                b.fill(3);
                Ok(())
            })
            .unwrap();
        // Kept already: the fill is not called again.
        store.put_with(3, |_| panic!("read twice")).unwrap();
        let failed = store.put_with(4, |_| Err(std::io::Error::other("disk gone")));
        assert!(matches!(failed, Err(Ok(e)) if e.to_string() == "disk gone"));
        assert_eq!(budget.used(), 4096, "a failed read gives its page back");
        assert!(!store.contains(4));
        store
            .put_with(5, |b| {
                b.fill(5);
                Ok(())
            })
            .unwrap();
        // The budget is spent: the next page goes to the spill file.
        store
            .put_with(6, |b| {
                b.fill(6);
                Ok(())
            })
            .unwrap();
        assert_eq!(store.stats().file_bytes, 4096);
        let mut buf = page(0);
        for p in [3u32, 5, 6] {
            assert!(store.get(p, &mut buf).unwrap());
            assert_eq!(buf, page(p as u8));
        }
    }

    #[test]
    fn pages_in_memory_span_chunks_and_removed_places_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(u64::MAX);
        let config = CowConfig {
            budget: budget.clone(),
            spill_dir: dir.path().to_owned(),
        };
        let mut store = CowStore::new(config, 4096, "s.cow");
        let n = (CHUNK_PAGES * 2 + 3) as u32;
        for p in 0..n {
            store.put(p, &page(p as u8)).unwrap();
        }
        assert_eq!(store.slab.chunks.len(), 3);
        for p in (0..n).step_by(2) {
            store.remove(p);
        }
        // New pages take the removed ones' places: no new chunk.
        for p in (0..n).step_by(2) {
            store.put(1000 + p, &page(200 - p as u8)).unwrap();
        }
        assert_eq!(store.slab.chunks.len(), 3);
        assert_eq!(budget.used(), u64::from(n) * 4096);
        let mut buf = page(0);
        for p in 0..n {
            if p % 2 == 1 {
                assert!(store.get(p, &mut buf).unwrap());
                assert_eq!(buf, page(p as u8), "page {p}");
            } else {
                assert!(!store.get(p, &mut buf).unwrap());
                assert!(store.get(1000 + p, &mut buf).unwrap());
                assert_eq!(buf, page(200 - p as u8), "page {}", 1000 + p);
            }
        }
        drop(store);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn stale_spill_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "vol.cut-3.0.cow",
            "a_b.cut-9.12.cow",
            "snap-3.cow",
            "dirty.roaring",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_spill_files(dir.path()).unwrap(), 2);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["dirty.roaring", "snap-3.cow"]);
        assert_eq!(
            remove_stale_spill_files(&dir.path().join("none")).unwrap(),
            0
        );
    }

    #[test]
    fn spill_error_is_reported_not_panicked() {
        let config = CowConfig {
            budget: MemoryBudget::new(0),
            spill_dir: PathBuf::from("/nonexistent/twinlun-tracking-test"),
        };
        let mut store = CowStore::new(config, 4096, "x.cow");
        assert!(matches!(
            store.put(0, &page(1)),
            Err(TrackingError::Io { .. })
        ));
        assert_eq!(store.stats().pages, 0);
    }
}
