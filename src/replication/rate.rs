//! Rate limits of the replication link (`--max-rate`): token buckets per set and per
//! peer, consulted before each extent is sent (DESIGN.md, "The replication link").
//!
//! A bucket fills at its rate up to [`BURST`] worth of bytes. A sender takes an
//! extent's wire bytes when the balance is not negative, even if the extent is larger
//! than the balance: the balance goes into debt, and the next sender waits until the
//! debt is paid. So one extent (at most 1 MiB) always passes, bursts stay within a
//! quarter second of the rate plus one extent, and over any longer window the bytes
//! sent stay within the rate: the debt is never forgiven, so there is no drift.
//!
//! The rate lives in an atomic read on every acquire: a change (`replication modify`,
//! `peer update`) applies to the next extent, and wakes a sender sleeping for tokens so
//! it recomputes its wait at the new rate. A bucket without a cap costs one relaxed
//! load per extent.
//!
//! [`Tokens`] and [`Meter`] are pure (time passed in) and tested with an injected
//! clock; [`Bucket`] puts `Tokens` behind a lock and sleeps on the runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The most a bucket saves up while senders are idle: a quarter second of its rate.
pub const BURST: Duration = Duration::from_millis(250);

/// A bucket's balance at an instant, in bytes (negative: debt).
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    balance: f64,
    at: Instant,
}

impl Tokens {
    /// An empty bucket at `now`: the first extent passes as debt.
    pub fn new(now: Instant) -> Tokens {
        Tokens {
            balance: 0.0,
            at: now,
        }
    }

    /// Adds what `rate` bytes/s earned since the last update, up to the burst.
    fn refill(&mut self, rate: u64, now: Instant) {
        if now > self.at {
            let earned = rate as f64 * (now - self.at).as_secs_f64();
            self.balance = (self.balance + earned).min(burst(rate));
            self.at = now;
        }
    }

    /// Takes `bytes` at `now` at `rate` (bytes/s, not 0): `None` when taken (into
    /// debt if need be), else how long until the balance is no longer negative.
    pub fn take(&mut self, rate: u64, bytes: u64, now: Instant) -> Option<Duration> {
        self.refill(rate, now);
        if self.balance >= 0.0 {
            self.balance -= bytes as f64;
            return None;
        }
        // At least a millisecond: a wait rounded to zero would spin.
        let secs = -self.balance / rate as f64;
        Some(Duration::from_secs_f64(secs).max(Duration::from_millis(1)))
    }

    /// The rate changes from `old` to `new` at `now` (either may be 0: no cap). What
    /// was earned at the old rate is kept, savings are capped at the new burst, and a
    /// debt stays to be paid at the new rate. Leaving "no cap" starts from empty.
    pub fn rerate(&mut self, old: u64, new: u64, now: Instant) {
        if old == 0 {
            *self = Tokens::new(now);
            return;
        }
        self.refill(old, now);
        if new != 0 {
            self.balance = self.balance.min(burst(new));
        }
    }

    /// The balance in bytes (negative: debt), for tests.
    pub fn balance(&self) -> f64 {
        self.balance
    }
}

/// The runtime's clock (which a test may pause), as the instant `Tokens` counts in.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn burst(rate: u64) -> f64 {
    rate as f64 * BURST.as_secs_f64()
}

/// One cap: a set's or a peer's. Shared by every sender it limits.
#[derive(Debug)]
pub struct Bucket {
    /// Bytes per second; 0: no cap. Written under `tokens`' lock, read on every acquire.
    rate: AtomicU64,
    tokens: Mutex<Tokens>,
    /// Wakes senders waiting for tokens when the rate changes.
    changed: tokio::sync::Notify,
}

impl Bucket {
    /// A bucket of `rate` bytes/s (`None`: no cap).
    pub fn new(rate: Option<u64>) -> Arc<Bucket> {
        Arc::new(Bucket {
            rate: AtomicU64::new(rate.unwrap_or(0)),
            tokens: Mutex::new(Tokens::new(now())),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The cap, bytes/s (`None`: no cap).
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r != 0)
    }

    /// Changes the cap; senders waiting for tokens recompute their wait at once.
    pub fn set_rate(&self, rate: Option<u64>) {
        let new = rate.unwrap_or(0);
        {
            let mut t = self.tokens.lock();
            let old = self.rate.load(Ordering::Relaxed);
            if old == new {
                return;
            }
            t.rerate(old, new, now());
            self.rate.store(new, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Waits until `bytes` may be sent under this cap, and takes them.
    pub async fn acquire(&self, bytes: u64) {
        if self.rate.load(Ordering::Relaxed) == 0 {
            return;
        }
        loop {
            // Registered before the rate is read: a change after the read still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut t = self.tokens.lock();
                match self.rate.load(Ordering::Relaxed) {
                    0 => None,
                    rate => t.take(rate, bytes, now()),
                }
            };
            let Some(wait) = wait else { return };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }
}

/// The caps one set's sender honours: its own and its peer's.
#[derive(Debug, Clone)]
pub struct Limits {
    pub set: Arc<Bucket>,
    pub peer: Arc<Bucket>,
}

impl Limits {
    /// Waits until both caps let `bytes` through, and takes them from both.
    pub async fn acquire(&self, bytes: u64) {
        self.set.acquire(bytes).await;
        self.peer.acquire(bytes).await;
    }

    /// The cap that binds: the lower of the set's and the peer's.
    pub fn effective(&self) -> Option<u64> {
        effective(self.set.rate(), self.peer.rate())
    }
}

/// The lower of two caps, either of which may be absent.
pub fn effective(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Bytes sent over the last [`Meter::WINDOW`]: the rate a set reports while it ships.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    total: u64,
    /// `(when, total then)`, oldest first, at least [`Meter::STEP`] apart.
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    /// How far back the rate looks.
    pub const WINDOW: Duration = Duration::from_secs(3);
    /// Samples are kept this far apart, so the memory is bounded.
    const STEP: Duration = Duration::from_millis(100);

    /// Starts measuring at `now` (a new cycle).
    pub fn start(&mut self, now: Instant) {
        self.total = 0;
        self.samples.clear();
        self.samples.push_back((now, 0));
    }

    /// `bytes` were sent at `now`.
    pub fn add(&mut self, bytes: u64, now: Instant) {
        self.total += bytes;
        match self.samples.back() {
            Some((at, _)) if now.saturating_duration_since(*at) < Self::STEP => {}
            _ => self.samples.push_back((now, self.total)),
        }
        // Keep one sample at or before the window's start: the base of the rate.
        while self.samples.len() > 2
            && now.saturating_duration_since(self.samples[1].0) >= Self::WINDOW
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the last window at `now` (from the start when younger).
    pub fn rate(&self, now: Instant) -> f64 {
        let Some(&(mut at, mut base)) = self.samples.front() else {
            return 0.0;
        };
        // The newest sample at or before the window's start, if any.
        for &(t, b) in &self.samples {
            if now.saturating_duration_since(t) >= Self::WINDOW {
                (at, base) = (t, b);
            }
        }
        let secs = now.saturating_duration_since(at).as_secs_f64();
        if secs < 0.05 {
            return 0.0;
        }
        (self.total - base) as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sends `extent`-byte extents as fast as the bucket lets them through for `secs`
    /// seconds of an injected clock; returns when each one went (seconds from start).
    fn drive(rate: u64, extent: u64, secs: f64) -> Vec<f64> {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        let mut now = t0;
        let mut sent = Vec::new();
        let end = t0 + Duration::from_secs_f64(secs);
        while now < end {
            match t.take(rate, extent, now) {
                None => sent.push((now - t0).as_secs_f64()),
                Some(wait) => now += wait,
            }
        }
        sent
    }

    #[test]
    fn a_steady_sender_gets_the_rate_within_one_extent_over_any_window() {
        for (rate, extent) in [(20 * MIB, MIB), (5 * MIB, MIB), (100 * MIB, 64 << 10)] {
            let sent = drive(rate, extent, 30.0);
            // Every 10 s window, sliding by extents: within 10 % of the rate.
            for (i, &start) in sent.iter().enumerate() {
                if start + 10.0 > 30.0 {
                    break;
                }
                let n = sent[i..].iter().take_while(|&&t| t < start + 10.0).count() as u64;
                let bytes = n * extent;
                let want = rate * 10;
                assert!(
                    bytes.abs_diff(want) * 10 <= want,
                    "rate {rate}: {bytes} bytes in the 10 s from {start}"
                );
                // And never more than the rate plus one extent plus the burst.
                assert!(bytes <= want + extent + rate / 4, "{bytes}");
            }
            // No drift: over the whole run, the rate to within one extent.
            let total = sent.len() as u64 * extent;
            assert!(total <= rate * 30 + extent, "{total}");
            assert!(total + extent >= rate * 30, "{total}");
        }
    }

    #[test]
    fn one_extent_passes_as_debt_and_the_next_waits_for_it() {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        // A 1 MiB extent at 1 MiB/s passes at once, although nothing was saved.
        assert_eq!(t.take(MIB, MIB, t0), None);
        assert_eq!(t.balance(), -(MIB as f64));
        // The next one waits a second for the debt.
        let wait = t.take(MIB, MIB, t0).expect("in debt");
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        let half = t0 + Duration::from_millis(500);
        let wait = t.take(MIB, MIB, half).expect("still in debt");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(t.take(MIB, MIB, t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn idle_time_saves_no_more_than_a_quarter_second() {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        let rate = 20 * MIB;
        // An hour idle: the balance is capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        t.refill(rate, later);
        assert_eq!(t.balance(), rate as f64 / 4.0);
        // So at once: the burst plus one extent, then a wait.
        let mut sent = 0;
        while t.take(rate, MIB, later).is_none() {
            sent += MIB;
        }
        assert_eq!(sent, rate / 4 + MIB);
    }

    #[test]
    fn a_new_rate_applies_to_the_debt_and_the_savings() {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        assert_eq!(t.take(5 * MIB, 5 * MIB, t0), None);
        // 5 MiB of debt at 5 MiB/s is a second; at 50 MiB/s a tenth.
        assert!(t.take(5 * MIB, MIB, t0).unwrap() >= Duration::from_millis(999));
        t.rerate(5 * MIB, 50 * MIB, t0);
        let wait = t.take(50 * MIB, MIB, t0).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Savings shrink to the new, lower burst.
        let later = t0 + Duration::from_secs(10);
        t.rerate(50 * MIB, MIB, later);
        assert_eq!(t.balance(), MIB as f64 / 4.0);
        // Leaving "no cap" starts from an empty bucket.
        t.rerate(0, MIB, later + Duration::from_secs(99));
        assert_eq!(t.balance(), 0.0);
    }

    #[test]
    fn the_lower_cap_binds() {
        assert_eq!(effective(None, None), None);
        assert_eq!(effective(Some(5), None), Some(5));
        assert_eq!(effective(None, Some(7)), Some(7));
        assert_eq!(effective(Some(9), Some(7)), Some(7));
    }

    #[test]
    fn the_meter_reports_the_last_seconds() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        m.start(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 10 MiB/s for 5 s, one MiB every 100 ms.
        for i in 1..=50 {
            m.add(MIB, at(i * 100));
        }
        let r = m.rate(at(5000));
        assert!((r - 10.0 * MIB as f64).abs() < 0.01 * MIB as f64, "{r}");
        // Then 1 MiB/s: after 3 s the window holds only the new pace.
        for i in 1..=30 {
            m.add(MIB / 10, at(5000 + i * 100));
        }
        let r = m.rate(at(8000));
        assert!((r - MIB as f64).abs() < 0.01 * MIB as f64, "{r}");
        assert!(m.samples.len() <= 40, "bounded: {}", m.samples.len());
        // Young: the rate since the start.
        m.start(t0);
        m.add(MIB, at(500));
        assert!((m.rate(at(1000)) - MIB as f64).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sender_wakes_when_the_rate_changes() {
        let b = Bucket::new(Some(MIB));
        b.acquire(10 * MIB).await; // 10 s of debt at 1 MiB/s
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(MIB).await })
        };
        // Let it start waiting, then lift the cap: it goes without the 10 s.
        tokio::task::yield_now().await;
        let before = tokio::time::Instant::now();
        b.set_rate(None);
        waiter.await.unwrap();
        assert!(before.elapsed() < Duration::from_millis(10));
        assert_eq!(b.rate(), None);
        // Unlimited: no wait at all.
        b.acquire(u64::MAX).await;
    }
}
