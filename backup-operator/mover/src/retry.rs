//! When and how long S3 requests are retried, and how long one may take.
//!
//! Temporary failures (5xx incl. 503 SlowDown, 429, connection errors and
//! resets, timeouts) are retried with jittered exponential backoff (0.5 s
//! doubling to 30 s) for up to 5 minutes in all, so an outage or throttling
//! of a few minutes does not fail a long backup. One request may take
//! `30 s + size / 512 KiB/s` (doubled on each retry, at most 4x), so large
//! packs on slow links get the time they need while a stalled small request
//! is given up quickly.
//!
//! Environment (tests, unusual networks): `MOVER_S3_RETRIES` caps the number
//! of retries, `MOVER_S3_RETRY_SECONDS` the total time (default 300),
//! `MOVER_S3_TIMEOUT_SECONDS` the base timeout (default 30).

use std::time::Duration;

use crate::crypto::random_u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Total time from the first attempt after which no retry starts.
    pub budget: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Time allowed for a request without a body.
    pub base_timeout: Duration,
    /// Slowest transfer rate tolerated (bytes per second) before a timeout.
    pub min_rate: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: u32::MAX,
            budget: Duration::from_secs(300),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            base_timeout: Duration::from_secs(30),
            min_rate: 512 * 1024,
        }
    }
}

impl RetryPolicy {
    pub fn from_env() -> Self {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut p = Self::default();
        if let Some(n) = num("MOVER_S3_RETRIES") {
            p.max_retries = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(s) = num("MOVER_S3_RETRY_SECONDS") {
            p.budget = Duration::from_secs(s);
        }
        if let Some(s) = num("MOVER_S3_TIMEOUT_SECONDS").filter(|s| *s > 0) {
            p.base_timeout = Duration::from_secs(s);
        }
        p
    }

    /// The same policy with a total of at most `budget` (quick checks).
    pub fn capped(mut self, budget: Duration) -> Self {
        self.budget = self.budget.min(budget);
        self
    }

    /// Backoff before retry number `retry` (1-based), without jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        (self.first_delay * factor).min(self.max_delay)
    }

    /// `d` with full jitter in its upper half (spreads throttled clients).
    pub fn jittered(d: Duration) -> Duration {
        let half = d / 2;
        let ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(random_u64() % (ms + 1))
    }

    /// Time allowed for attempt `attempt` (0-based) moving `bytes` of body.
    pub fn timeout(&self, bytes: u64, attempt: u32) -> Duration {
        let transfer = Duration::from_millis(bytes.saturating_mul(1000) / self.min_rate.max(1));
        (self.base_timeout + transfer) * (1u32 << attempt.min(2))
    }

    /// Whether to retry after `retries` retries, `elapsed` since the first
    /// attempt, with the next backoff `next`.
    pub fn retry_again(&self, retries: u32, elapsed: Duration, next: Duration) -> bool {
        retries < self.max_retries && elapsed + next <= self.budget
    }
}

/// Whether an S3 error is worth retrying: opendal marks 5xx, 429, SlowDown,
/// connection errors and body read errors (resets) temporary.
pub fn retryable(e: &opendal::Error) -> bool {
    e.is_temporary() || e.kind() == opendal::ErrorKind::RateLimited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budget_is_about_five_minutes() {
        let p = RetryPolicy::default();
        let mut total = Duration::ZERO;
        let mut retries = 0;
        while p.retry_again(retries, total, p.delay(retries + 1)) {
            retries += 1;
            total += p.delay(retries);
        }
        assert!(total > Duration::from_secs(240) && total <= Duration::from_secs(300));
        assert!(retries >= 10, "{retries}");
        assert_eq!(p.delay(1), Duration::from_millis(500));
        assert_eq!(p.delay(2), Duration::from_secs(1));
        assert_eq!(p.delay(40), Duration::from_secs(30));
    }

    #[test]
    fn retry_count_cap() {
        let p = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        assert!(p.retry_again(1, Duration::ZERO, p.delay(2)));
        assert!(!p.retry_again(2, Duration::ZERO, p.delay(3)));
        let quick = RetryPolicy::default().capped(Duration::from_secs(5));
        assert!(!quick.retry_again(0, Duration::from_secs(5), quick.delay(1)));
    }

    #[test]
    fn timeouts_scale_with_size_and_attempts() {
        let p = RetryPolicy::default();
        assert_eq!(p.timeout(0, 0), Duration::from_secs(30));
        assert_eq!(p.timeout(16 << 20, 0), Duration::from_secs(62));
        assert_eq!(p.timeout(16 << 20, 1), Duration::from_secs(124));
        assert_eq!(p.timeout(16 << 20, 9), Duration::from_secs(248));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = RetryPolicy::jittered(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }

    #[test]
    fn temporary_errors_are_retried() {
        let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "503").set_temporary();
        assert!(retryable(&e));
        let e = opendal::Error::new(opendal::ErrorKind::RateLimited, "SlowDown");
        assert!(retryable(&e));
        let e = opendal::Error::new(opendal::ErrorKind::NotFound, "404");
        assert!(!retryable(&e));
        let e = opendal::Error::new(opendal::ErrorKind::ConditionNotMatch, "412");
        assert!(!retryable(&e));
    }
}
