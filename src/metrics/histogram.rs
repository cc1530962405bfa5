//! A fixed-bucket histogram of durations that writers update with relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts of observations per bucket, their sum and their number. Buckets are kept
/// per bucket (not cumulative) so an observation touches one slot; a snapshot adds
/// them up.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in nanoseconds, ascending; observations above the last go to the
    /// implicit +Inf bucket at the end of `counts`.
    bounds_ns: Vec<u64>,
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

/// A histogram read at one moment, cumulative as Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The buckets' upper bounds in seconds (the histogram's own, so a page can format
    /// them once for every series that shares them).
    pub bounds: &'static [f64],
    /// Observations at or below each bound; +Inf's is `count`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds` are the buckets' upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = super::nanos(d);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for n in &self.counts[..self.bounds.len()] {
            acc += n.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        acc += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: acc,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_add_up() {
        static B: &[f64] = &[0.001, 0.01];
        let h = Histogram::new(B);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.bounds, B);
        assert_eq!(s.cumulative, vec![2, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 2.0065).abs() < 1e-9);
    }
}
