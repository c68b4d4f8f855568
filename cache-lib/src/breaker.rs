//! Circuit breaker and rate-limited logging for an unreliable Redis.
//!
//! After a failure the breaker stays open for a cooling period during which
//! request paths skip Redis entirely (no timeout is added to requests while
//! Redis is dead); then one request probes, and its success closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Breaker {
    base: Instant,
    cooldown: Duration,
    /// Milliseconds since `base` until which Redis is skipped; 0 = closed.
    open_until: AtomicU64,
    /// When the current half-open probe started (ms since `base`); 0 = none.
    probe_started: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(cooldown: Duration) -> Self {
        Self {
            base: Instant::now(),
            cooldown,
            open_until: AtomicU64::new(0),
            probe_started: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "never".
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Whether a request path may use Redis now.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        // Half-open: one probe at a time; a probe whose caller vanished
        // without reporting is forgotten after another cooling period.
        let started = self.probe_started.load(Ordering::Acquire);
        if started != 0 && now.saturating_sub(started) < self.cooldown.as_millis() as u64 {
            return false;
        }
        self.probe_started
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Returns true if this closed an open breaker (Redis came back).
    pub(crate) fn success(&self) -> bool {
        if self.open_until.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.probe_started.store(0, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Returns true if this opened a closed breaker.
    pub(crate) fn failure(&self) -> bool {
        let until = self.now_ms() + self.cooldown.as_millis().max(1) as u64;
        self.probe_started.store(0, Ordering::Release);
        self.open_until.swap(until, Ordering::AcqRel) == 0
    }
}

/// Lets one warning through per interval and counts the rest.
pub(crate) struct LogLimiter {
    base: Instant,
    interval: Duration,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            base: Instant::now(),
            interval,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(number of warnings suppressed since the last one)` if this one
    /// may be logged.
    pub(crate) fn permit(&self) -> Option<u64> {
        let now = self.base.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Acquire);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_skips_redis_while_cooling_then_lets_one_probe_through() {
        let b = Breaker::new(Duration::from_millis(30));
        assert!(b.allow());
        assert!(b.failure());
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after cooling");
        assert!(!b.allow(), "only one probe at a time");
        assert!(b.success());
        assert!(b.allow());
        assert!(!b.is_open());
    }

    #[test]
    fn limiter_lets_one_warning_through_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(l.permit(), Some(0));
        assert_eq!(l.permit(), None);
        assert_eq!(l.permit(), None);
    }
}
