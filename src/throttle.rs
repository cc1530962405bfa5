//! Slowing down secret guessing: a growing delay per source address (and, for iSCSI,
//! per initiator name) after failed CHAP logins and failed replication peer
//! authentications (RFC 7143 §12.1.3 leaves brute force to the implementation; RFC
//! 1994 §5 warns the secret must resist guessing). The node keeps one throttle for
//! CHAP and one for peers.
//!
//! Pure policy, time passed in (quinn-proto style): the connection task asks
//! [`AuthThrottle::delay`] before a CHAP response is checked, sleeps that long in its
//! own task only, and reports the outcome with [`AuthThrottle::failed`] or
//! [`AuthThrottle::succeeded`]. The delay comes before the check, whatever its outcome,
//! so a guesser cannot learn early that a guess failed by the answer's absence.
//!
//! Bounded both ways: the delay never exceeds [`Policy::cap`], so an attacker using a
//! legitimate initiator's name or address slows it down by at most that much per
//! login, never locks it out; and the map keeps at most [`Policy::capacity`] sources,
//! evicting the least recently failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Who a failure counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Address(IpAddr),
    Initiator(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The delay after the first failure; it doubles with each further one.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// Failures older than this are forgotten.
    pub forget_after: Duration,
    /// Most sources remembered.
    pub capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(4),
            forget_after: Duration::from_secs(600),
            capacity: 4096,
        }
    }
}

impl Policy {
    /// The delay owed after `failures` recent failures: none, then base, 2*base, ...
    /// up to the cap.
    pub fn delay_after(&self, failures: u32) -> Duration {
        match failures {
            0 => Duration::ZERO,
            n => {
                let doublings = (n - 1).min(20);
                self.base.saturating_mul(1 << doublings).min(self.cap)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

#[derive(Debug)]
pub struct AuthThrottle {
    policy: Policy,
    entries: HashMap<Source, Entry>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        AuthThrottle::new(Policy::default())
    }
}

impl AuthThrottle {
    pub fn new(policy: Policy) -> AuthThrottle {
        AuthThrottle {
            policy,
            entries: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Recent failures of `source` at `now`.
    pub fn failures(&self, source: &Source, now: Instant) -> u32 {
        self.entries
            .get(source)
            .filter(|e| now.saturating_duration_since(e.last) < self.policy.forget_after)
            .map_or(0, |e| e.failures)
    }

    /// How long to wait before checking a CHAP response from these sources: the
    /// largest delay any of them owes.
    pub fn delay(&self, sources: &[Source], now: Instant) -> Duration {
        let worst = sources
            .iter()
            .map(|s| self.failures(s, now))
            .max()
            .unwrap_or(0);
        self.policy.delay_after(worst)
    }

    /// A CHAP login from these sources failed; returns the failure count now recorded
    /// (the largest among the sources).
    pub fn failed(&mut self, sources: &[Source], now: Instant) -> u32 {
        let mut worst = 0;
        for s in sources {
            let failures = self.failures(s, now).saturating_add(1);
            if !self.entries.contains_key(s) {
                self.make_room(now);
            }
            self.entries.insert(
                s.clone(),
                Entry {
                    failures,
                    last: now,
                },
            );
            worst = worst.max(failures);
        }
        worst
    }

    /// A CHAP login from these sources succeeded: their failures are forgotten.
    pub fn succeeded(&mut self, sources: &[Source]) {
        for s in sources {
            self.entries.remove(s);
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keep the map within capacity: drop forgotten entries, then the stalest.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.policy.capacity {
            return;
        }
        let forget = self.policy.forget_after;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < forget);
        while self.entries.len() >= self.policy.capacity.max(1) {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Source {
        Source::Address(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn delay_doubles_from_base_up_to_the_cap() {
        let p = Policy::default();
        let ms = |n| p.delay_after(n).as_millis();
        assert_eq!(
            (0..8).map(ms).collect::<Vec<_>>(),
            [0, 100, 200, 400, 800, 1600, 3200, 4000]
        );
        assert_eq!(p.delay_after(u32::MAX), p.cap);
    }

    #[test]
    fn failures_count_per_source_and_the_worst_decides() {
        let mut t = AuthThrottle::default();
        let now = Instant::now();
        let attacker = [addr(1), Source::Initiator("iqn.x".into())];
        for _ in 0..3 {
            t.failed(&attacker, now);
        }
        assert_eq!(t.delay(&attacker, now), Duration::from_millis(400));
        // Another address with another name owes nothing.
        let other = [addr(2), Source::Initiator("iqn.y".into())];
        assert_eq!(t.delay(&other, now), Duration::ZERO);
        // The same name from another address owes what the name owes, bounded.
        let same_name = [addr(2), Source::Initiator("iqn.x".into())];
        assert_eq!(t.delay(&same_name, now), Duration::from_millis(400));
        for _ in 0..50 {
            t.failed(&attacker, now);
        }
        assert_eq!(
            t.delay(&same_name, now),
            t.policy().cap,
            "never more than the cap"
        );
    }

    #[test]
    fn failures_decay_with_time_and_success() {
        let mut t = AuthThrottle::default();
        let now = Instant::now();
        let s = [addr(1)];
        t.failed(&s, now);
        t.failed(&s, now);
        assert_eq!(t.delay(&s, now), Duration::from_millis(200));
        let later = now + Policy::default().forget_after;
        assert_eq!(
            t.delay(&s, later),
            Duration::ZERO,
            "forgotten after a while"
        );
        assert_eq!(t.failed(&s, later), 1, "counting starts over");
        t.succeeded(&s);
        assert_eq!(t.delay(&s, later), Duration::ZERO);
        assert!(t.is_empty());
    }

    #[test]
    fn the_map_stays_bounded() {
        let mut t = AuthThrottle::new(Policy {
            capacity: 16,
            ..Policy::default()
        });
        let start = Instant::now();
        for i in 0..1000u32 {
            let now = start + Duration::from_millis(i as u64);
            t.failed(&[Source::Initiator(format!("iqn.{i}"))], now);
            assert!(t.len() <= 16);
        }
        // The most recent sources are the ones kept.
        let now = start + Duration::from_secs(1);
        assert_eq!(t.failures(&Source::Initiator("iqn.999".into()), now), 1);
        assert_eq!(t.failures(&Source::Initiator("iqn.0".into()), now), 0);
    }
}
