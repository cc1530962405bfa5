//! A cycle gives way to the initiators: the sender works a share of the time that
//! shrinks as the initiators' load grows, and pauses for the rest, so shipping a cut
//! (reading, checksumming, sending, and on a shared machine the peer's receiving)
//! does not take the CPU and disk the initiators' I/O is waiting for. With no
//! initiator I/O a cycle runs flat out; with the node saturated it works [`MIN_SHARE`]
//! of the time. DRBD's resync controller slows resync down while application I/O is
//! seen in the same spirit; `--max-rate` caps bytes on the wire, this caps the time a
//! cycle competes.
//!
//! The load is the mean number of initiator I/Os in flight since the last chunk: the
//! time they spent in the target over the time that passed (Little's law), from one
//! node-wide counter the volumes add each completed read's and write's time to, from
//! its command's arrival to completion. A queue depth of one that never drains, or any
//! deeper queue, is a load of 1 or more.
//!
//! No I/O here: the sender reports each chunk and sleeps for what it is told.

use std::time::{Duration, Instant};

/// The least part of the time a cycle works, however busy the initiators: a
/// saturated primary still ships (about 25 MB/s beside 4 KiB QD32 writers on two
/// cores). A tenth cost those writers about a tenth of their IOPS, a quarter a quarter:
/// the cycle's reading and sending, and on one machine the peer's receiving, compete
/// with them for the same cores.
pub const MIN_SHARE: f64 = 0.05;

/// The longest single pause: a chunk that took long (a slow peer) does not stop the
/// cycle for long after it.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// The part of the time a cycle may work beside initiators keeping `load` I/Os in
/// flight on average: the time they leave, `1 - load`, and at least [`MIN_SHARE`].
pub fn share(load: f64) -> f64 {
    (1.0 - load).clamp(MIN_SHARE, 1.0)
}

#[derive(Debug)]
pub struct Pacer {
    /// The node's summed initiator time in the target (ns) when last asked, and when.
    last_io_nanos: u64,
    last_at: Instant,
    /// When the work being measured began (the end of the last pause).
    working_since: Instant,
    /// All pauses of this cycle.
    pub paused: Duration,
}

impl Pacer {
    /// `io_nanos`: the node's summed initiator time in the target so far (it only grows).
    pub fn new(io_nanos: u64, now: Instant) -> Pacer {
        Pacer {
            last_io_nanos: io_nanos,
            last_at: now,
            working_since: now,
            paused: Duration::ZERO,
        }
    }

    /// A chunk was sent at `now`, the node's summed initiator time in the target being
    /// `io_nanos`: how long to pause before the next one. Zero when no initiator I/O
    /// completed since the last call (the cycle had the machine to itself), or when the
    /// initiators left it time enough.
    pub fn after_chunk(&mut self, io_nanos: u64, now: Instant) -> Duration {
        let worked = now.saturating_duration_since(self.working_since);
        let span = now
            .saturating_duration_since(self.last_at)
            .as_nanos()
            .max(1) as f64;
        let load = io_nanos.saturating_sub(self.last_io_nanos) as f64 / span;
        self.last_io_nanos = io_nanos;
        self.last_at = now;
        let share = share(load);
        if share >= 1.0 {
            self.working_since = now;
            return Duration::ZERO;
        }
        let pause = worked.mul_f64((1.0 - share) / share).min(MAX_PAUSE);
        self.working_since = now + pause;
        self.paused += pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `chunks` chunks of `work` each beside initiators keeping `load` I/Os in
    /// flight, and returns the part of the time the cycle worked.
    fn worked_share(load: f64, work: Duration, chunks: u32) -> f64 {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        let (mut now, mut io) = (t0, 0u64);
        for _ in 0..chunks {
            now += work;
            io += (work.as_nanos() as f64 * load) as u64;
            let pause = p.after_chunk(io, now);
            now += pause;
            io += (pause.as_nanos() as f64 * load) as u64;
        }
        (work * chunks).as_secs_f64() / (now - t0).as_secs_f64()
    }

    #[test]
    fn the_share_is_the_time_the_initiators_leave_and_at_least_the_minimum() {
        assert_eq!(share(0.0), 1.0);
        assert!((share(0.25) - 0.75).abs() < 1e-12);
        assert_eq!(share(0.96), MIN_SHARE);
        assert_eq!(share(32.0), MIN_SHARE);
    }

    #[test]
    fn idle_initiators_mean_no_pause() {
        let t0 = Instant::now();
        let mut p = Pacer::new(7 * MS, t0);
        for i in 1..10u32 {
            assert_eq!(
                p.after_chunk(7 * MS, t0 + Duration::from_millis(3 * u64::from(i))),
                Duration::ZERO
            );
        }
        assert_eq!(p.paused, Duration::ZERO);
    }

    #[test]
    fn saturating_initiators_keep_the_cycle_to_the_minimum_share() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        // 2 ms of work beside 32 I/Os in flight, then 38 ms of pause.
        assert_eq!(
            p.after_chunk(64 * MS, t0 + Duration::from_millis(2)),
            Duration::from_millis(38)
        );
        let share = worked_share(32.0, Duration::from_millis(2), 100);
        assert!((share - MIN_SHARE).abs() < 1e-3, "share {share}");
    }

    #[test]
    fn a_light_load_slows_the_cycle_in_proportion() {
        // A tenth of an I/O in flight on average: the cycle works nine tenths.
        let share = worked_share(0.1, Duration::from_millis(2), 200);
        assert!((share - 0.9).abs() < 0.01, "share {share}");
        // Half: half.
        let share = worked_share(0.5, Duration::from_millis(2), 200);
        assert!((share - 0.5).abs() < 0.01, "share {share}");
    }

    #[test]
    fn a_slow_chunk_pauses_at_most_the_cap_and_idle_resets() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(p.after_chunk(4_000 * MS, now), MAX_PAUSE);
        // Initiators went quiet: the time since is not counted against the next busy chunk.
        let later = now + MAX_PAUSE + Duration::from_secs(1);
        assert_eq!(p.after_chunk(4_000 * MS, later), Duration::ZERO);
        let next = later + Duration::from_millis(1);
        // 1 ms beside two I/Os in flight: 19 ms of pause.
        assert_eq!(p.after_chunk(4_002 * MS, next), Duration::from_millis(19));
    }
}
