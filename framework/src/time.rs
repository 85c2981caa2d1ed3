//! Saturating time arithmetic: any `Duration` (up to `Duration::MAX`) a user
//! passes as a delay, interval or timeout must never panic.

use jiff::Timestamp;
use std::time::Duration;
use tokio::time::Instant;

/// About 30 years: what "never" means for a monotonic deadline (as tokio's
/// own far-future sleeps). Far enough that nothing fires, small enough that
/// adding it to `Instant::now()` cannot overflow.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, capped at [`FAR_FUTURE`] from now.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now + d.min(FAR_FUTURE)
}

/// `Instant::now() + d`, saturating (see [`after`]).
pub(crate) fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

/// `ts + d` on the wall clock, saturating at the largest timestamp.
pub(crate) fn ts_after(ts: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|s| ts.checked_add(s).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Milliseconds of `d`, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let ts = Timestamp::now();
        assert_eq!(ts_after(ts, Duration::MAX), Timestamp::MAX);
        assert_eq!(
            ts_after(ts, Duration::from_secs(1)),
            ts + jiff::SignedDuration::from_secs(1)
        );
        assert_eq!(
            ts_after(Timestamp::MAX, Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
