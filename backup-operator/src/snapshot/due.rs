//! When the operator itself takes a snapshot (method `Snapshot` runs no
//! CronJob): the CronJob controller's rule, per PVC.
//!
//! The last run is the newest scheduled time a snapshot of the PVC was taken
//! for (or the policy's creation when there is none). If at least one
//! scheduled time passed since then, exactly one run is due now, for the
//! newest of those times: after downtime that is one catch-up run, never a
//! burst of the missed ones. A failed snapshot counts as a run, so a failing
//! snapshot is not retried in a loop: the next try is the next scheduled time.

use crate::schedule::Schedule;
use jiff::Timestamp;

/// What the schedule says at `now` for one PVC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The scheduled time to take a snapshot for now (the newest one missed).
    pub run_for: Option<Timestamp>,
    /// The next scheduled time strictly after `now` (`status.nextRunTime`).
    pub next_run: Option<Timestamp>,
}

/// Evaluates `schedule` at `now`.
///
/// * `not_before`: runs at or before this time are never due (the policy's
///   creation, or a recorded `lastBackupTime`).
/// * `last_run`: the newest scheduled time a snapshot exists for.
pub fn evaluate(
    schedule: &Schedule,
    not_before: Timestamp,
    last_run: Option<Timestamp>,
    now: Timestamp,
) -> Due {
    let floor = last_run.map_or(not_before, |l| l.max(not_before));
    Due {
        run_for: schedule.last_due(floor, now),
        next_run: schedule.next_after(now),
    }
}

/// The earliest of the given wake-up times that is still relevant.
pub fn earliest(times: impl IntoIterator<Item = Option<Timestamp>>) -> Option<Timestamp> {
    times.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::snapshot::test_support::{hourly, ts};

    #[test]
    fn nothing_due_right_after_creation() {
        let d = evaluate(
            &hourly(),
            ts("2026-01-01T10:05:00Z"),
            None,
            ts("2026-01-01T10:30:00Z"),
        );
        assert_eq!(d.run_for, None);
        assert_eq!(d.next_run, Some(ts("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn due_at_the_scheduled_time() {
        let d = evaluate(
            &hourly(),
            ts("2026-01-01T10:05:00Z"),
            None,
            ts("2026-01-01T11:00:00Z"),
        );
        assert_eq!(d.run_for, Some(ts("2026-01-01T11:00:00Z")));
        assert_eq!(d.next_run, Some(ts("2026-01-01T12:00:00Z")));
    }

    #[test]
    fn not_due_again_once_taken() {
        let d = evaluate(
            &hourly(),
            ts("2026-01-01T10:05:00Z"),
            Some(ts("2026-01-01T11:00:00Z")),
            ts("2026-01-01T11:00:30Z"),
        );
        assert_eq!(d.run_for, None);
    }

    #[test]
    fn one_catch_up_run_after_downtime_never_a_burst() {
        // Last snapshot at 11:00, operator down until 16:20: five runs missed.
        let s = hourly();
        let created = ts("2026-01-01T10:05:00Z");
        let d = evaluate(
            &s,
            created,
            Some(ts("2026-01-01T11:00:00Z")),
            ts("2026-01-01T16:20:00Z"),
        );
        assert_eq!(
            d.run_for,
            Some(ts("2026-01-01T16:00:00Z")),
            "only the newest missed run"
        );
        // After taking it, nothing else is due until 17:00.
        let d2 = evaluate(
            &s,
            created,
            Some(ts("2026-01-01T16:00:00Z")),
            ts("2026-01-01T16:20:01Z"),
        );
        assert_eq!(d2.run_for, None);
        assert_eq!(d2.next_run, Some(ts("2026-01-01T17:00:00Z")));
    }

    #[test]
    fn a_failed_run_counts_so_no_retry_loop() {
        // The 11:00 snapshot failed; at 11:00:10 and 11:59 nothing is due.
        let s = hourly();
        let created = ts("2026-01-01T10:05:00Z");
        for now in ["2026-01-01T11:00:10Z", "2026-01-01T11:59:59Z"] {
            assert_eq!(
                evaluate(&s, created, Some(ts("2026-01-01T11:00:00Z")), ts(now)).run_for,
                None,
                "{now}"
            );
        }
    }

    #[test]
    fn recorded_last_backup_time_is_a_floor() {
        // Retention deleted every snapshot (maxDays), but the status remembers
        // the last run: no immediate re-run.
        let d = evaluate(
            &hourly(),
            ts("2026-01-01T11:00:00Z"),
            None,
            ts("2026-01-01T11:30:00Z"),
        );
        assert_eq!(d.run_for, None);
    }

    #[test]
    fn time_zones_follow_the_schedule() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).expect("valid");
        let d = evaluate(
            &s,
            ts("2026-01-01T00:00:00Z"),
            None,
            ts("2026-01-02T01:00:00Z"),
        );
        assert_eq!(d.run_for, Some(ts("2026-01-02T01:00:00Z")));
    }

    #[test]
    fn earliest_ignores_none() {
        assert_eq!(
            earliest([
                None,
                Some(ts("2026-01-01T00:00:02Z")),
                Some(ts("2026-01-01T00:00:01Z"))
            ]),
            Some(ts("2026-01-01T00:00:01Z"))
        );
        assert_eq!(earliest([None, None]), None);
    }
}
