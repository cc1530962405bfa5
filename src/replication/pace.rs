//! A cycle gives way to the initiators: while they do I/O on this node, the sender
//! works at most [`SHARE`] of the time and pauses for the rest, so shipping a cut
//! (reading, checksumming, sending, and on a shared machine the peer's receiving)
//! does not take the CPU and disk the initiators' writes are waiting for. With no
//! initiator I/O a cycle runs flat out. DRBD's resync controller slows resync down
//! while application I/O is seen in the same way; `--max-rate` caps bytes on the wire,
//! this caps the time a cycle competes.
//!
//! No I/O here: the sender reports each chunk and sleeps for what it is told.

use std::time::{Duration, Instant};

/// The part of the time a cycle may work while initiators are busy. A tenth: at a
/// quarter, a cycle still shipped 100 MB/s or more beside 4 KiB QD32 writers, and on
/// two cores that cost the writers about a quarter of their IOPS (more than the
/// copy-on-write of the pages they overwrote); a cycle under load takes longer
/// instead, and runs flat out again as soon as the initiators pause.
pub const SHARE: f64 = 0.1;

/// The longest single pause: a chunk that took long (a slow peer) does not stop the
/// cycle for long after it.
const MAX_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Pacer {
    share: f64,
    /// The node's initiator I/O count when last asked.
    last_ops: u64,
    /// When the work being measured began (the end of the last pause).
    working_since: Instant,
    /// All pauses of this cycle.
    pub paused: Duration,
}

impl Pacer {
    pub fn new(ops: u64, now: Instant) -> Pacer {
        Pacer::with_share(SHARE, ops, now)
    }

    pub fn with_share(share: f64, ops: u64, now: Instant) -> Pacer {
        Pacer {
            share: share.clamp(0.01, 1.0),
            last_ops: ops,
            working_since: now,
            paused: Duration::ZERO,
        }
    }

    /// A chunk was sent at `now`, the node's initiator I/O count being `ops`: how long
    /// to pause before the next one. Zero when no initiator I/O completed since the
    /// last call (the cycle had the machine to itself).
    pub fn after_chunk(&mut self, ops: u64, now: Instant) -> Duration {
        let worked = now.saturating_duration_since(self.working_since);
        let busy = ops != self.last_ops;
        self.last_ops = ops;
        if !busy {
            self.working_since = now;
            return Duration::ZERO;
        }
        let pause = worked
            .mul_f64((1.0 - self.share) / self.share)
            .min(MAX_PAUSE);
        self.working_since = now + pause;
        self.paused += pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_initiators_mean_no_pause() {
        let t0 = Instant::now();
        let mut p = Pacer::new(7, t0);
        for i in 1..10u32 {
            assert_eq!(
                p.after_chunk(7, t0 + Duration::from_millis(3 * u64::from(i))),
                Duration::ZERO
            );
        }
        assert_eq!(p.paused, Duration::ZERO);
    }

    #[test]
    fn busy_initiators_keep_the_cycle_to_a_tenth_of_the_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        // 3 ms of work, then 27 ms of pause.
        assert_eq!(
            p.after_chunk(1, t0 + Duration::from_millis(3)),
            Duration::from_millis(27)
        );
    }

    #[test]
    fn busy_initiators_keep_the_cycle_to_its_share() {
        let t0 = Instant::now();
        let mut p = Pacer::with_share(0.25, 0, t0);
        let mut now = t0;
        let mut ops = 0;
        let mut worked = Duration::ZERO;
        for _ in 0..100 {
            let chunk = Duration::from_millis(2);
            now += chunk;
            worked += chunk;
            ops += 50;
            now += p.after_chunk(ops, now);
        }
        // 2 ms of work, then 6 ms of pause: a quarter of the time.
        let share = worked.as_secs_f64() / (now - t0).as_secs_f64();
        assert!((share - 0.25).abs() < 1e-6, "share {share}");
        assert_eq!(p.paused, Duration::from_millis(600));
    }

    #[test]
    fn a_slow_chunk_pauses_at_most_the_cap_and_idle_resets() {
        let t0 = Instant::now();
        let mut p = Pacer::with_share(0.25, 0, t0);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(p.after_chunk(1, now), MAX_PAUSE);
        // Initiators went quiet: the time since is not counted against the next busy chunk.
        let later = now + MAX_PAUSE + Duration::from_secs(1);
        assert_eq!(p.after_chunk(1, later), Duration::ZERO);
        let next = later + Duration::from_millis(1);
        assert_eq!(p.after_chunk(2, next), Duration::from_millis(3));
    }
}
