//! When a volume's small buffered writes run on the caller's thread and when they go to
//! the engine: the rule, without I/O (the volume times its writes and asks).
//!
//! An inline write is a memcpy into cached pages and costs less than the engine's two
//! thread hand-offs. When the kernel throttles dirty pages or the file needs real I/O,
//! writes sleep, and sleeping on a runtime thread holds up every session on it: then
//! writes go to the engine for a while. A slow write alone does not say that: on a busy
//! machine the writing thread is often preempted in the middle of a write until the
//! next scheduler tick (4 ms here, several times a second while a replication cycle
//! ships), and sending every write through the engine for a second after each of those
//! made writes slower, not faster. So inline writes stop after one write that stalled
//! for long, or when slow writes took more than a quarter of the recent past.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// An inline write slower than this counts as slow.
pub(crate) const SLOW: Duration = Duration::from_millis(2);
/// The recent past slow writes are summed over ...
pub(crate) const WINDOW: Duration = Duration::from_millis(250);
/// ... and the sum that stops inline writes: a quarter of it.
pub(crate) const SLOW_IN_WINDOW: Duration = Duration::from_millis(WINDOW.as_millis() as u64 / 4);
/// An inline write slower than this stops inline writes at once: no preemption lasts so
/// long on a machine that still serves its initiators.
pub(crate) const STALL: Duration = Duration::from_millis(20);
/// How long writes then go to the engine. Short: a stall is often a one-off (a journal
/// commit the write waited for), and when the kernel keeps throttling, the next inline
/// writes find out soon enough.
pub(crate) const BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(crate) struct InlineWrites {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    off_until: Option<Instant>,
    /// The recent slow writes (their ends and how long they took), oldest first.
    slow: Vec<(Instant, Duration)>,
}

impl InlineWrites {
    /// Whether a write starting at `now` may run inline.
    pub(crate) fn allowed(&self, now: Instant) -> bool {
        let mut st = self.state.lock();
        match st.off_until {
            Some(until) if now < until => false,
            Some(_) => {
                st.off_until = None;
                true
            }
            None => true,
        }
    }

    /// An inline write started at `start` took `took`. True when it turned inline writes
    /// off (for the caller to log).
    pub(crate) fn record(&self, start: Instant, took: Duration) -> bool {
        if took <= SLOW {
            return false;
        }
        let mut st = self.state.lock();
        let end = start + took;
        st.slow
            .retain(|&(e, _)| end.saturating_duration_since(e) < WINDOW);
        st.slow.push((end, took));
        let slow: Duration = st.slow.iter().map(|&(_, t)| t).sum();
        if took > STALL || slow > SLOW_IN_WINDOW {
            st.slow.clear();
            st.off_until = Some(end + BACKOFF);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fast_writes_and_preempted_ones_stay_inline() {
        let w = InlineWrites::default();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(!w.record(t0 + i * MS, Duration::from_micros(5)));
        }
        // Writes held up by a scheduler tick, 40 a second for two seconds.
        for i in 0..80u32 {
            assert!(!w.record(t0 + 1000 * MS + i * 25 * MS, 4 * MS));
        }
        assert!(w.allowed(t0 + 3000 * MS));
    }

    #[test]
    fn slow_writes_taking_a_quarter_of_the_time_turn_inline_off_for_the_backoff() {
        let w = InlineWrites::default();
        let t0 = Instant::now();
        // Throttled writes of 5 ms, one after the other: 62 ms of them is enough.
        let mut at = t0;
        for _ in 0..12 {
            assert!(!w.record(at, 5 * MS));
            at += 5 * MS;
        }
        assert!(w.record(at, 5 * MS));
        let end = at + 5 * MS;
        assert!(!w.allowed(end));
        assert!(!w.allowed(end + BACKOFF - MS));
        assert!(w.allowed(end + BACKOFF));
        // The sum started over.
        assert!(!w.record(end + BACKOFF, 5 * MS));
        assert!(w.allowed(end + BACKOFF + 6 * MS));
    }

    #[test]
    fn slow_writes_older_than_the_window_do_not_count() {
        let w = InlineWrites::default();
        let t0 = Instant::now();
        for i in 0..40u32 {
            // 10 ms of slow writes every 50 ms: a fifth of the time, never a quarter.
            assert!(!w.record(t0 + i * 50 * MS, 10 * MS), "write {i}");
        }
    }

    #[test]
    fn one_stall_turns_inline_off_at_once() {
        let w = InlineWrites::default();
        let t0 = Instant::now();
        assert!(w.record(t0, STALL + MS));
        assert!(!w.allowed(t0 + STALL + 2 * MS));
        assert!(w.allowed(t0 + STALL + MS + BACKOFF));
    }
}
