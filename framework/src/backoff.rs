//! Backoff schedule for retried handlers.

use backon::BackoffBuilder;
use std::time::Duration;

/// Exponential backoff parameters of one handler.
///
/// The delay before retry number `n` (0-based: the first retry is `n = 0`) is
/// `base * 2^n`, capped at `max`, plus (with jitter) a random extra of up to
/// the same amount, and the result is capped at `max` again. The schedule is
/// computed from the persisted retry count, so it survives restarts; it resets
/// when the handler succeeds (a new cause starts with zero retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Whether random jitter is added.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base.max(Duration::from_millis(1));
        let max = self.max.max(base);
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(base)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        // Past ~40 doublings every realistic base is above any max anyway.
        let n = attempt.min(64) as usize;
        builder.build().nth(n).unwrap_or(max).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_without_jitter_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter: false,
        };
        let got: Vec<u64> = (0..6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(1000), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(60),
            jitter: true,
        };
        for n in 0..8u32 {
            let plain = Duration::from_millis(100 * (1 << n));
            for _ in 0..20 {
                let d = b.delay(n);
                assert!(d >= plain && d <= plain * 2, "attempt {n}: {d:?}");
            }
        }
        assert!(b.delay(30) <= Duration::from_secs(60));
    }
}
