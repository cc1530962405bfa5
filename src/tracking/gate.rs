//! The write gate of one volume: counts writes in flight, and lets a cut close it, wait
//! for those writes to finish, and open it again.
//!
//! Writers that arrive while the gate is closed wait on a [`Notify`] (they do not spin)
//! until it opens. Closing is bounded: [`WriteGate::drain`] gives up at a deadline and the
//! caller reopens, so the I/O path never wedges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    /// Another cut holds the gate closed.
    #[error("the write gate is already closed by another cut")]
    AlreadyClosed,
    /// Writes in flight did not finish in time; the gate was reopened.
    #[error("{in_flight} writes still in flight after {waited:?}; gate reopened")]
    DrainTimeout { in_flight: u64, waited: Duration },
}

/// How long one close-and-drain held writers off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause {
    pub duration: Duration,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    in_flight: u64,
}

#[derive(Debug, Default)]
pub struct WriteGate {
    state: Mutex<State>,
    /// Woken when the gate opens: writers waiting to enter.
    opened: Notify,
    /// Woken when the last write in flight leaves a closed gate.
    drained: Notify,
}

impl WriteGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters the gate for one write, waiting while it is closed. Hold the guard until
    /// the write has landed (and its pages are marked and preserved).
    pub async fn enter(&self) -> WriteGuard<'_> {
        self.wait_enter().await;
        WriteGuard { gate: self }
    }

    /// [`WriteGate::enter`] for a gate behind an `Arc`, with a guard that can move into a
    /// spawned task.
    pub async fn enter_owned(self: Arc<Self>) -> OwnedWriteGuard {
        self.wait_enter().await;
        OwnedWriteGuard { gate: self }
    }

    /// Enters without waiting, or `None` while the gate is closed.
    pub fn try_enter(&self) -> Option<WriteGuard<'_>> {
        // Lazily: a guard built for nothing would count a write out on drop.
        self.try_count_in().then(|| WriteGuard { gate: self })
    }

    /// Counts one write in if the gate is open.
    fn try_count_in(&self) -> bool {
        let mut s = self.state.lock();
        if s.closed {
            return false;
        }
        s.in_flight += 1;
        true
    }

    async fn wait_enter(&self) {
        // The common case: open, one short lock, nothing registered.
        if self.try_count_in() {
            return;
        }
        loop {
            // Register for the wake-up before looking at the state again, so an `open`
            // between the check and the await is not missed.
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.try_count_in() {
                return;
            }
            opened.await;
        }
    }

    fn leave(&self) {
        let mut s = self.state.lock();
        s.in_flight -= 1;
        if s.closed && s.in_flight == 0 {
            // `notify_one` keeps a permit if the drainer is between its check and its
            // await; a stale permit only causes one extra check.
            self.drained.notify_one();
        }
    }

    /// Closes the gate to new writes. Writes already inside continue.
    pub fn close(&self) -> Result<(), GateError> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(GateError::AlreadyClosed);
        }
        s.closed = true;
        Ok(())
    }

    /// After [`WriteGate::close`]: waits until no write is in flight, or until `deadline`.
    /// On timeout the gate stays closed: the caller reopens it (a group cut reopens every
    /// gate it closed).
    pub async fn drain(&self, deadline: Instant) -> Result<(), GateError> {
        let started = Instant::now();
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let in_flight = self.state.lock().in_flight;
            if in_flight == 0 {
                return Ok(());
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                let in_flight = self.state.lock().in_flight;
                if in_flight == 0 {
                    return Ok(());
                }
                return Err(GateError::DrainTimeout {
                    in_flight,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Opens the gate and wakes every waiting writer. Opening an open gate does nothing.
    pub fn open(&self) {
        self.state.lock().closed = false;
        self.opened.notify_waiters();
    }

    /// Closes, drains within `timeout` and reopens on failure. On success the gate is
    /// left closed for the caller to do its work and [`WriteGate::open`] it.
    pub async fn close_and_drain(&self, timeout: Duration) -> Result<Pause, GateError> {
        let started = Instant::now();
        self.close()?;
        // Reopens on timeout, and if this future is dropped while draining.
        let reopen = ReopenOnDrop(self);
        self.drain(started + timeout).await?;
        std::mem::forget(reopen);
        Ok(Pause {
            duration: started.elapsed(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub fn in_flight(&self) -> u64 {
        self.state.lock().in_flight
    }
}

struct ReopenOnDrop<'a>(&'a WriteGate);

impl Drop for ReopenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// One write inside the gate; leaving happens on drop.
#[derive(Debug)]
#[must_use = "the write is only counted while the guard is held"]
pub struct WriteGuard<'a> {
    gate: &'a WriteGate,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

/// [`WriteGuard`] holding its gate by `Arc`.
#[derive(Debug)]
#[must_use = "the write is only counted while the guard is held"]
pub struct OwnedWriteGuard {
    gate: Arc<WriteGate>,
}

impl Drop for OwnedWriteGuard {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn drain_waits_for_writes_entered_before_close() {
        let gate = Arc::new(WriteGate::new());
        let guard = gate.clone().enter_owned().await;
        let g2 = gate.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
        });
        let pause = g2.close_and_drain(Duration::from_secs(5)).await.unwrap();
        assert!(pause.duration >= Duration::from_millis(40), "{pause:?}");
        assert_eq!(gate.in_flight(), 0);
        assert!(gate.is_closed());
        assert_eq!(gate.close(), Err(GateError::AlreadyClosed));
        gate.open();
        release.await.unwrap();
    }

    #[tokio::test]
    async fn writer_after_close_waits_until_open() {
        let gate = Arc::new(WriteGate::new());
        gate.close_and_drain(Duration::from_secs(1)).await.unwrap();
        assert!(gate.try_enter().is_none());
        let entered = Arc::new(AtomicU64::new(0));
        let (g, e) = (gate.clone(), entered.clone());
        let writer = tokio::spawn(async move {
            let _guard = g.clone().enter_owned().await;
            e.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(entered.load(Ordering::SeqCst), 0, "entered a closed gate");
        gate.open();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("writer still waiting after open")
            .unwrap();
        assert_eq!(entered.load(Ordering::SeqCst), 1);
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn drain_timeout_reopens_and_reports() {
        let gate = WriteGate::new();
        let held = gate.enter().await;
        let err = gate
            .close_and_drain(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, GateError::DrainTimeout { in_flight: 1, .. }));
        assert!(!gate.is_closed(), "gate must reopen after a failed drain");
        let second = gate.try_enter().expect("writes flow after the timeout");
        drop(second);
        drop(held);
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_and_repeated_cuts_never_deadlock() {
        let gate = Arc::new(WriteGate::new());
        let writes = Arc::new(AtomicU64::new(0));
        // Writers between enter and leave, counted by the writers themselves.
        let inside = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..8 {
            let (g, w, i, s) = (gate.clone(), writes.clone(), inside.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                while !s.load(Ordering::Relaxed) {
                    let guard = g.enter().await;
                    i.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    w.fetch_add(1, Ordering::Relaxed);
                    i.fetch_sub(1, Ordering::SeqCst);
                    drop(guard);
                }
            }));
        }
        let mut cuts = 0;
        let run = async {
            for _ in 0..200 {
                let before = writes.load(Ordering::Relaxed);
                while writes.load(Ordering::Relaxed) == before {
                    tokio::task::yield_now().await;
                }
                if gate.close_and_drain(Duration::from_secs(5)).await.is_ok() {
                    assert_eq!(gate.in_flight(), 0);
                    assert_eq!(
                        inside.load(Ordering::SeqCst),
                        0,
                        "a writer is inside a drained gate"
                    );
                    tokio::task::yield_now().await;
                    assert_eq!(
                        inside.load(Ordering::SeqCst),
                        0,
                        "a writer entered a closed gate"
                    );
                    cuts += 1;
                    gate.open();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("cuts wedged");
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("writer wedged")
                .unwrap();
        }
        assert_eq!(cuts, 200);
        assert!(writes.load(Ordering::Relaxed) >= 200);
        assert_eq!(gate.in_flight(), 0);
    }
}
