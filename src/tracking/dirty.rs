//! The active dirty bitmap of one volume.

use std::ops::Range;

use parking_lot::Mutex;
use roaring::RoaringBitmap;

use super::PageIndex;

/// The pages of one volume written since the last cut.
///
/// Marking takes a short uncontended lock and makes no syscall. It allocates nothing when
/// the pages are already set (checked first: the common case for a hot working set), and
/// otherwise only when roaring has to create a container for a new 64 Ki-page chunk or
/// grow an array container's vector; both are rare and amortized, not per write.
#[derive(Debug, Default)]
pub struct DirtyMap {
    active: Mutex<RoaringBitmap>,
    /// When a page was last marked (Unix milliseconds; 0: not since this process
    /// started). A peer's promote earlier than this means both sides wrote after their
    /// common cut: split brain. Reading the clock goes through the vDSO, no syscall.
    last_mark_ms: std::sync::atomic::AtomicU64,
}

impl DirtyMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map that starts with `bitmap` (a saved bitmap after a restart).
    pub fn from_bitmap(bitmap: RoaringBitmap) -> Self {
        DirtyMap {
            active: Mutex::new(bitmap),
            last_mark_ms: Default::default(),
        }
    }

    /// Marks `pages` dirty.
    pub fn mark(&self, pages: Range<PageIndex>) {
        if pages.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_mark_ms
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        let mut active = self.active.lock();
        if pages.len() == 1 {
            // `insert` checks membership before touching the container.
            active.insert(pages.start);
        } else if !active.contains_range(pages.clone()) {
            active.insert_range(pages);
        }
    }

    /// Swaps in an empty bitmap and returns the pages marked since the last take: the
    /// frozen set of a cut. Call it with the volume's write gate closed and drained.
    pub fn take(&self) -> RoaringBitmap {
        std::mem::take(&mut *self.active.lock())
    }

    /// Puts back the frozen pages of a cut whose transfer failed, so none is lost.
    pub fn merge_back(&self, frozen: &RoaringBitmap) {
        *self.active.lock() |= frozen;
    }

    /// When a page was last marked, Unix milliseconds (0: not since this process
    /// started).
    pub fn last_mark_ms(&self) -> u64 {
        self.last_mark_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.active.lock().len()
    }

    pub fn contains(&self, page: PageIndex) -> bool {
        self.active.lock().contains(page)
    }

    /// A copy of the active bitmap (for saving it, or for status).
    pub fn snapshot(&self) -> RoaringBitmap {
        self.active.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_take_merge_back() {
        let d = DirtyMap::new();
        d.mark(0..0);
        assert_eq!(d.count(), 0);
        d.mark(3..4);
        d.mark(3..4);
        d.mark(10..20);
        d.mark(12..15);
        assert_eq!(d.count(), 11);
        assert!(d.contains(3) && d.contains(19) && !d.contains(20));

        let frozen = d.take();
        assert_eq!(frozen.len(), 11);
        assert_eq!(d.count(), 0);

        d.mark(19..22);
        d.merge_back(&frozen);
        assert_eq!(d.count(), 13);
        let all: Vec<u32> = d.snapshot().iter().collect();
        let want: Vec<u32> = std::iter::once(3).chain(10..22).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn marks_across_roaring_chunks() {
        let d = DirtyMap::new();
        d.mark(65530..65540);
        d.mark(u32::MAX - 1..u32::MAX);
        assert_eq!(d.count(), 11);
        assert!(d.contains(u32::MAX - 1));
    }
}
