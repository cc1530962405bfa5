//! Block-range locks of one volume: what makes COMPARE AND WRITE (SBC-4 5.3), ORWRITE
//! and WRITE ATOMIC one uninterrupted step against every other command on their
//! blocks, from any session.
//!
//! Every read and write of the volume holds a *shared* lock on its byte range while it
//! runs; shared locks never wait for each other, so ordinary I/O keeps its concurrency.
//! A read-modify-write holds an *exclusive* lock: it waits for the I/O already on its
//! range and keeps any new I/O there waiting until it is done. Waiters are served in
//! arrival order among the ranges they overlap (an exclusive waiter holds back a later
//! shared one), so a stream of writes cannot starve a compare and write.
//!
//! The lock is taken before the write gate of tracking (`TrackedVolume::begin_write`)
//! and released after it: a cut that closes the gate only waits for writes that already
//! hold their ranges, never for one waiting on a range, so the two cannot deadlock.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How a range is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain reads and writes: they share a range with each other.
    Shared,
    /// Read-modify-write: nobody else on the range meanwhile.
    Exclusive,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    start: u64,
    end: u64,
    mode: Mode,
    granted: bool,
    /// Woken when a waiting entry is granted.
    wake: Option<Arc<Notify>>,
}

impl Entry {
    fn conflicts(&self, start: u64, end: u64, mode: Mode) -> bool {
        self.start < end
            && start < self.end
            && (self.mode == Mode::Exclusive || mode == Mode::Exclusive)
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Holders and waiters in arrival order: an entry is granted when no entry before it
    /// conflicts with it.
    entries: Vec<Entry>,
}

impl Table {
    /// Grant every waiter that no earlier entry conflicts with any more.
    fn grant_waiters(&mut self) {
        for i in 0..self.entries.len() {
            if self.entries[i].granted {
                continue;
            }
            let (start, end, mode) = {
                let e = &self.entries[i];
                (e.start, e.end, e.mode)
            };
            if self.entries[..i]
                .iter()
                .any(|e| e.conflicts(start, end, mode))
            {
                continue;
            }
            let e = &mut self.entries[i];
            e.granted = true;
            if let Some(w) = e.wake.take() {
                w.notify_one();
            }
        }
    }
}

/// The range locks of one volume.
#[derive(Debug, Default)]
pub struct RangeLocks {
    table: Mutex<Table>,
}

impl RangeLocks {
    /// Holds `[start, end)` in `mode` until the guard is dropped (also when the future is
    /// dropped while it waits: the place in the queue is given up).
    pub async fn lock(&self, start: u64, end: u64, mode: Mode) -> RangeGuard<'_> {
        let (guard, wake) = {
            let mut t = self.table.lock();
            let id = t.next_id;
            t.next_id += 1;
            let granted = !t.entries.iter().any(|e| e.conflicts(start, end, mode));
            let wake = (!granted).then(|| Arc::new(Notify::new()));
            t.entries.push(Entry {
                id,
                start,
                end,
                mode,
                granted,
                wake: wake.clone(),
            });
            (RangeGuard { locks: self, id }, wake)
        };
        if let Some(w) = wake {
            // `notify_one` stores a permit if it comes before this wait starts.
            w.notified().await;
        }
        guard
    }

    /// Entries held or waited for (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().entries.len()
    }
}

/// A held (or, while its `lock` future is pending, awaited) range.
#[derive(Debug)]
#[must_use = "the range is only held while the guard lives"]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.locks.table.lock();
        if let Some(i) = t.entries.iter().position(|e| e.id == self.id) {
            t.entries.remove(i);
        }
        t.grant_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// True when `fut` is still pending after the runtime has had every chance to run it.
    async fn pending<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> bool {
        tokio::select! {
            biased;
            _ = fut => false,
            _ = tokio::task::yield_now() => true,
        }
    }

    #[tokio::test]
    async fn shared_holders_overlap_and_exclusive_waits_for_them() {
        let l = RangeLocks::default();
        let a = l.lock(0, 100, Mode::Shared).await;
        let b = l.lock(50, 150, Mode::Shared).await;
        let x = l.lock(90, 95, Mode::Exclusive);
        tokio::pin!(x);
        assert!(pending(x.as_mut()).await);
        drop(a);
        assert!(pending(x.as_mut()).await, "b still holds 90..95");
        drop(b);
        let held = tokio::time::timeout(Duration::from_secs(5), x)
            .await
            .unwrap();
        // A disjoint range is not held back by the exclusive holder.
        let _c = l.lock(95, 200, Mode::Shared).await;
        let y = l.lock(94, 96, Mode::Shared);
        tokio::pin!(y);
        assert!(pending(y.as_mut()).await);
        drop(held);
        let _y = tokio::time::timeout(Duration::from_secs(5), y)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiting_exclusive_holds_back_later_shared_on_its_range() {
        let l = RangeLocks::default();
        let a = l.lock(0, 10, Mode::Shared).await;
        let x = l.lock(0, 10, Mode::Exclusive);
        tokio::pin!(x);
        assert!(pending(x.as_mut()).await);
        let s = l.lock(5, 6, Mode::Shared);
        tokio::pin!(s);
        assert!(
            pending(s.as_mut()).await,
            "arrived after the exclusive waiter"
        );
        drop(a);
        let xg = tokio::time::timeout(Duration::from_secs(5), x)
            .await
            .unwrap();
        assert!(pending(s.as_mut()).await);
        drop(xg);
        let _s = tokio::time::timeout(Duration::from_secs(5), s)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_no_entry_and_blocks_nobody() {
        let l = RangeLocks::default();
        let a = l.lock(0, 10, Mode::Exclusive).await;
        {
            let w = l.lock(0, 10, Mode::Exclusive);
            tokio::pin!(w);
            assert!(pending(w.as_mut()).await);
        }
        assert_eq!(l.len(), 1);
        drop(a);
        assert_eq!(l.len(), 0);
        let _b = tokio::time::timeout(Duration::from_secs(5), l.lock(0, 10, Mode::Exclusive))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exclusive_read_modify_write_never_loses_an_increment() {
        let l = Arc::new(RangeLocks::default());
        let value = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (l, value) = (l.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let _g = l.lock(0, 512, Mode::Exclusive).await;
                    let v = value.load(std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    value.store(v + 1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(value.load(std::sync::atomic::Ordering::Relaxed), 2000);
    }
}
