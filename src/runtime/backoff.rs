//! The one exponential backoff: provision and fence retries, a failed stop's next claim, the
//! retries within a stop, and reconcile errors all grow the same way.

use std::time::Duration;

/// `base` before the second attempt, doubled for each one after, never more than `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay after failed attempt number `attempt` (from 1): base × 2^(attempt-1), capped;
    /// the doubling stops at 2^16 (a cap of `Duration::MAX` then still bounds the wait). Exact,
    /// so that pure decisions and their tests can rely on it.
    pub fn delay(self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(16);
        self.base.saturating_mul(1 << exp).min(self.cap)
    }

    /// [`Backoff::delay`] spread over ±10% (still at most `cap`), so that workspaces that failed
    /// together do not all retry in the same instant.
    pub fn jittered(self, attempt: u32) -> Duration {
        self.delay(attempt).mul_f64(rand::random_range(0.9..=1.1)).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let policy = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let ms = |attempt| policy.delay(attempt).as_millis();
        assert_eq!(ms(0), 500, "no failure yet: the base");
        assert_eq!(ms(1), 500);
        assert_eq!(ms(2), 1_000);
        assert_eq!(ms(3), 2_000);
        assert_eq!(ms(5), 8_000);
        assert_eq!(ms(6), 10_000, "capped");
        assert_eq!(ms(100), 10_000, "capped");
        assert_eq!(ms(u32::MAX), 10_000, "no overflow");
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX, "saturates instead of overflowing");
        let uncapped = Backoff::new(Duration::from_millis(200), Duration::MAX);
        assert_eq!(uncapped.delay(3), Duration::from_millis(800));
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for attempt in 1..10 {
            let (exact, jittered) = (b.delay(attempt), b.jittered(attempt));
            assert!(jittered >= exact.mul_f64(0.9) && jittered <= exact.mul_f64(1.1).min(b.cap), "{jittered:?}");
        }
    }
}
