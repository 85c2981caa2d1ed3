//! Backoff schedule for retried handlers.

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
    /// The delay before retry number `attempt` (0-based). Saturating: no
    /// base, cap or attempt count can overflow (or panic).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base.max(Duration::from_millis(1));
        let max = self.max.max(base);
        // 2^attempt, saturating: past 2^31 every base exceeds any cap anyway.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let plain = base.saturating_mul(factor).min(max);
        if !self.jitter {
            return plain;
        }
        // `try_from`: near `Duration::MAX` the float product can round up.
        let extra = Duration::try_from_secs_f64(plain.as_secs_f64() * rand::random::<f64>())
            .unwrap_or(plain);
        plain.saturating_add(extra).min(max)
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

    #[test]
    fn extreme_values_do_not_panic() {
        for jitter in [false, true] {
            let b = Backoff {
                base: Duration::MAX,
                max: Duration::MAX,
                jitter,
            };
            assert_eq!(b.delay(0), Duration::MAX);
            assert_eq!(b.delay(u32::MAX), Duration::MAX);
            let b = Backoff {
                base: Duration::from_secs(1),
                max: Duration::MAX,
                jitter,
            };
            assert!(b.delay(u32::MAX) >= Duration::from_secs(1 << 31));
            let zero = Backoff {
                base: Duration::ZERO,
                max: Duration::ZERO,
                jitter,
            };
            assert_eq!(zero.delay(5), Duration::from_millis(1));
        }
    }
}
